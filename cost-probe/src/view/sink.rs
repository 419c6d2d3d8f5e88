//! The sink that feeds the live view: every record as the NDJSON line the NDJSON sink writes,
//! over a bounded queue to the view's thread.
use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, TrySendError},
    },
};

use super::InFlight;
use crate::output::{
    Record, Sink,
    records::{Body, Envelope},
};

/// What the run's thread tells the view's.
#[derive(Debug)]
pub enum Msg {
    /// One record line (no newline).
    Line(Vec<u8>),
    /// The requests in flight at monotonic ns `at`.
    InFlight { at: u64, requests: Vec<InFlight> },
}

/// Messages queued before the run's thread drops them rather than wait (the view drains every
/// 100 ms; a full queue means it is stuck, and the run must not be).
pub const QUEUE: usize = 65_536;

/// The sending end, shared by the sink and the in-flight snapshots. Never blocks: a message the
/// queue cannot take is counted, and the count reaches the view with the next one that fits.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl Sender {
    pub fn send(&self, msg: Msg) {
        // A full queue loses the message; a gone view (it quit first) needs nothing.
        if let Err(TrySendError::Full(_)) = self.tx.try_send(msg) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The view's end: the messages, and a count of those the queue could not take.
pub struct Receiver {
    pub rx: mpsc::Receiver<Msg>,
    dropped: Arc<AtomicU64>,
}

impl Receiver {
    /// Messages lost to a full queue so far.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A queue of at most `capacity` messages. The receiver sees it disconnected once every
/// [`Sender`] is dropped (the run is over).
#[must_use]
pub fn channel(capacity: usize) -> (Sender, Receiver) {
    let (tx, rx) = mpsc::sync_channel(capacity);
    let dropped = Arc::<AtomicU64>::default();
    (
        Sender {
            tx,
            dropped: dropped.clone(),
        },
        Receiver { rx, dropped },
    )
}

/// Sends every record to the view as its NDJSON line.
pub struct ViewSink {
    tx: Sender,
}

impl ViewSink {
    #[must_use]
    pub fn new(tx: Sender) -> Self {
        Self { tx }
    }

    fn body<T: Body>(&self, body: &T) -> io::Result<()> {
        self.tx
            .send(Msg::Line(serde_json::to_vec(&Envelope::new(body))?));
        Ok(())
    }
}

impl Sink for ViewSink {
    fn write(&mut self, record: &Record<'_>) -> io::Result<()> {
        match *record {
            Record::Request { record, .. } => {
                let mut line = Vec::with_capacity(512);
                record.write_json(&mut line);
                self.tx.send(Msg::Line(line));
                Ok(())
            }
            Record::Interval { record, .. } => self.body(record),
            Record::Lost(r) => self.body(r),
            Record::Alert(r) => self.body(r),
            Record::Summary(r) => self.body(r),
        }
    }
}
