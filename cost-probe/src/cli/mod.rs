//! Subcommands, one file each.
pub mod agent;
pub mod attach;
pub mod demo;
pub mod doctor;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio::signal::unix::{SignalKind, signal};

/// Sets `stop` on SIGINT or SIGTERM.
pub fn stop_on_signals(stop: &Arc<AtomicBool>) {
    for kind in [SignalKind::interrupt(), SignalKind::terminate()] {
        let stop = stop.clone();
        match signal(kind) {
            Ok(mut s) => {
                tokio::spawn(async move {
                    s.recv().await;
                    stop.store(true, Ordering::Relaxed);
                });
            }
            Err(e) => log::warn!("cannot handle signal {kind:?}: {e}"),
        }
    }
}
