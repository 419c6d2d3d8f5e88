//! `top`: attach's pipeline with one more sink, the live view, drawn on the terminal.
//!
//! Two threads. The run's thread is attach's consumer loop, unchanged but for a
//! [`view::sink::ViewSink`] beside the NDJSON sink and a [`Control`] that also sends the
//! requests in flight about twice a second. This thread owns the terminal: it drains the queue
//! into a [`Live`], redraws each second, reads keys, and after the run's thread has written the
//! summary restores the terminal and prints it. Nothing the run writes to stderr while the view
//! is up may draw over it: stderr goes to a pipe, its last line shows in the footer, and all of
//! it is written out once the terminal is back.
use std::{
    io::{BufRead, Write},
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc::RecvTimeoutError,
    },
    time::{Duration, Instant},
};

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use super::{
    Control, RuntimeError, Session,
    attach::{self, Attach, AttachConfig},
};
use crate::{
    pricing::Prices,
    report::GroupKey,
    units::monotonic_now,
    view::{
        InFlight, Live,
        draw::{self, Context},
        sink::{self, Msg, Receiver, Sender, ViewSink},
    },
};

/// A validated `top` invocation.
pub struct TopConfig {
    pub attach: AttachConfig,
    pub by: Vec<GroupKey>,
    /// Prices the idle energy (the rules' energy price).
    pub prices: Prices,
}

/// How often the in-flight requests are sent, and the view redrawn.
const IN_FLIGHT_EVERY: Duration = Duration::from_millis(500);
const REDRAW_EVERY: Duration = Duration::from_secs(1);
/// stderr lines kept while the view is up (the last ones win).
const STDERR_LINES: usize = 1000;

/// Attach's control, plus the in-flight snapshots for the view.
struct TopControl {
    attach: Attach,
    tx: Sender,
    last: Option<Instant>,
    buf: Vec<InFlight>,
}

impl Control for TopControl {
    fn after_drain(&mut self, session: &mut Session, exited: &[u32], check: bool) -> bool {
        if self.last.is_none_or(|l| l.elapsed() >= IN_FLIGHT_EVERY) {
            self.last = Some(Instant::now());
            session.tracer.in_flight(&mut self.buf);
            self.tx.send(Msg::InFlight {
                at: monotonic_now().0,
                requests: self.buf.clone(),
            });
        }
        self.attach.after_drain(session, exited, check)
    }
}

/// Attaches, then shows the view until `q`/Ctrl-C, a signal (`stop`), or the target's exit.
/// Returns the run's result; the summary is printed on stdout once the terminal is restored.
pub fn run(config: &TopConfig, stop: &Arc<AtomicBool>) -> Result<(), RuntimeError> {
    let (tx, rx) = sink::channel(sink::QUEUE);
    let (session, attach) =
        attach::start(&config.attach, vec![Box::new(ViewSink::new(tx.clone()))])?;
    let title = format!(
        "cost-probe top: pid {} ({})",
        config.attach.pid,
        session.proc.comm(config.attach.pid)
    );
    let run_stop = stop.clone();
    let runner = std::thread::Builder::new()
        .name("cost-probe-run".into())
        .spawn(move || {
            let mut control = TopControl {
                attach,
                tx,
                last: None,
                buf: Vec::new(),
            };
            session.run(&mut control, &run_stop)
        })
        .map_err(|e| RuntimeError::Run(format!("cannot start the run's thread: {e}").into()))?;

    let started = unix_now();
    let mut live = Live::new(config.by.clone(), config.prices, started);
    let captured = Captured::start();
    let shown = show(&mut live, &rx, stop, &title, captured.as_ref());
    // The view may have ended on a terminal error: the run still has to stop and finish.
    stop.store(true, Ordering::Relaxed);
    drain_until_done(&mut live, &rx);
    let result = runner
        .join()
        .unwrap_or_else(|_| Err(RuntimeError::Run("the run's thread panicked".into())));
    // Puts stderr back and writes what was captured.
    drop(captured);
    if let Err(e) = shown {
        eprintln!("cost-probe: the view failed: {e}");
    }
    if let Some(s) = live.summary() {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{s}").and_then(|()| out.flush());
    }
    result
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn apply(live: &mut Live, msg: Msg) {
    match msg {
        Msg::Line(l) => live.line(&l),
        Msg::InFlight { at, requests } => live.set_in_flight(at, &requests),
    }
}

/// After the view: everything the run still sends (the last requests, the summary), until it
/// has ended.
fn drain_until_done(live: &mut Live, rx: &Receiver) {
    while let Ok(msg) = rx.rx.recv() {
        apply(live, msg);
    }
}

/// The view's loop on the terminal; restores the terminal however it ends.
fn show(
    live: &mut Live,
    rx: &Receiver,
    stop: &AtomicBool,
    title: &str,
    captured: Option<&Captured>,
) -> std::io::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let result = (|| {
        let mut ctx = Context {
            title: title.to_owned(),
            message: None,
        };
        let mut last_draw: Option<Instant> = None;
        let mut dropped = 0;
        loop {
            let mut dirty = false;
            while event::poll(Duration::ZERO)? {
                if let Event::Key(k) = event::read()?
                    && k.kind == KeyEventKind::Press
                {
                    match k.code {
                        KeyCode::Char('q') => return Ok(()),
                        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                            return Ok(());
                        }
                        KeyCode::Char('s') => {
                            live.sort = live.sort.next();
                            dirty = true;
                        }
                        _ => {}
                    }
                } else {
                    // A resize: ratatui redraws the whole screen at the new size.
                    dirty = true;
                }
            }
            match rx.rx.recv_timeout(Duration::from_millis(50)) {
                Ok(msg) => {
                    apply(live, msg);
                    while let Ok(msg) = rx.rx.try_recv() {
                        apply(live, msg);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                // The run ended (the target exited, a signal, --duration).
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let now_dropped = rx.dropped();
            live.dropped(now_dropped - dropped);
            dropped = now_dropped;
            if dirty || last_draw.is_none_or(|t| t.elapsed() >= REDRAW_EVERY) {
                ctx.message = captured.and_then(Captured::last);
                terminal.draw(|f| draw::draw(f, live, &ctx, unix_now()))?;
                last_draw = Some(Instant::now());
            }
        }
    })();
    ratatui::restore();
    result
}

/// stderr, sent to a pipe while the view is up. Dropping it (also while unwinding from a panic
/// in the view, whose message went into the pipe) puts stderr back and writes what was captured.
struct Captured {
    saved: OwnedFd,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Captured {
    /// Redirects fd 2 into a pipe read by a thread; `None` (stderr left alone) when that fails.
    fn start() -> Option<Self> {
        let saved = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
        let (reader, writer) = std::io::pipe().ok()?;
        std::io::stderr().flush().ok()?;
        // SAFETY: dup2 on two descriptors this process owns; fd 2 is replaced atomically.
        if unsafe { libc::dup2(writer.as_raw_fd(), 2) } < 0 {
            return None;
        }
        drop(writer);
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::Builder::new()
            .name("cost-probe-stderr".into())
            .spawn(move || {
                for line in std::io::BufReader::new(reader).lines() {
                    let Ok(line) = line else { break };
                    let mut l = sink
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if l.len() == STDERR_LINES {
                        l.remove(0);
                    }
                    l.push(line);
                }
            })
            .ok()?;
        Some(Self {
            saved,
            lines,
            reader: Some(reader),
        })
    }

    fn last(&self) -> Option<String> {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .last()
            .cloned()
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        let _ = std::io::stderr().flush();
        // SAFETY: as in `start`; closing the pipe's last write end ends the reader thread.
        unsafe { libc::dup2(self.saved.as_raw_fd(), 2) };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let lines = self
            .lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut err = std::io::stderr().lock();
        for l in lines.iter() {
            let _ = writeln!(err, "{l}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Seek as _};

    use super::*;

    /// Regression: a panic in the view wrote its message into the capture pipe, and unwinding
    /// skipped the replay, so the user saw a restored terminal and no reason.
    #[test]
    fn what_stderr_got_before_a_panic_in_the_view_is_written_out_while_unwinding() {
        let mut file = tempfile::tempfile().unwrap();
        let saved = std::io::stderr().as_fd().try_clone_to_owned().unwrap();
        // SAFETY: fd 2 pointed at a file this test owns, then put back below.
        assert!(unsafe { libc::dup2(file.as_raw_fd(), 2) } >= 0);
        let unwound = std::panic::catch_unwind(|| {
            let _captured = Captured::start().expect("capturing stderr");
            let mut err = std::io::stderr();
            let _ = err.write_all(b"cost-probe: view: boom\n");
            let _ = err.flush();
            panic!("the view failed");
        });
        // SAFETY: as above.
        unsafe { libc::dup2(saved.as_raw_fd(), 2) };
        assert!(unwound.is_err());
        let mut got = String::new();
        file.rewind().unwrap();
        file.read_to_string(&mut got).unwrap();
        assert!(got.contains("cost-probe: view: boom"), "stderr got {got:?}");
    }
}
