//! The NDJSON sink: one JSON object per record per line, to stdout, a file or a unix socket.
use std::{
    fs::OpenOptions,
    io::{self, Write},
};

use super::{
    OutputTarget, Record, Sink,
    records::{Body, Envelope},
};

/// Records as JSON lines. A closed reader (`| head`) marks the sink closed instead of failing.
/// Any other write error names the output, and fails the sink: it is returned once, and the
/// sink writes nothing more (the run ends on it; the summary cannot be written there either).
///
/// Lines are serialized straight into one reused buffer, written out when it passes [`BATCH`]
/// and at every flush (the consumer loop flushes after each pass, so a record waits at most
/// one pass, about 10 ms, after its interval is attributed).
pub struct NdjsonSink {
    target: OutputTarget,
    out: Box<dyn Write + Send>,
    closed: bool,
    failed: bool,
    buf: Vec<u8>,
}

/// Bytes of lines buffered before a write: the records of one 100 ms interval at ~3,000
/// requests/s in one `write(2)`.
const BATCH: usize = 256 * 1024;

fn open(target: &OutputTarget) -> io::Result<Box<dyn Write + Send>> {
    Ok(match target {
        OutputTarget::Stdout => Box::new(io::stdout()),
        OutputTarget::Discard => Box::new(io::sink()),
        OutputTarget::Unix(sock) => Box::new(std::os::unix::net::UnixStream::connect(sock)?),
        OutputTarget::File(p) => {
            let mut f = OpenOptions::new().create(true).append(true).open(p)?;
            // An empty write still reaches the file's driver: /dev/full and read-only /proc
            // files (which root can open) refuse it here, before the probe is loaded, rather
            // than at the first flush. A regular file takes it as a no-op.
            let _empty = f
                .write(&[])
                .map_err(|e| io::Error::new(e.kind(), format!("not writable: {e}")))?;
            Box::new(f)
        }
    })
}

impl NdjsonSink {
    pub fn new(target: OutputTarget) -> io::Result<Self> {
        let out = open(&target)?;
        Ok(Self::with_writer(target, out))
    }

    fn with_writer(target: OutputTarget, out: Box<dyn Write + Send>) -> Self {
        Self {
            out,
            target,
            closed: false,
            failed: false,
            buf: Vec::with_capacity(BATCH + 4096),
        }
    }

    fn body<T: Body>(&mut self, body: &T) -> io::Result<()> {
        let at = self.buf.len();
        if let Err(e) = serde_json::to_writer(&mut self.buf, &Envelope::new(body)) {
            // No half line: what was buffered before stays whole.
            self.buf.truncate(at);
            return Err(e.into());
        }
        self.buf.push(b'\n');
        self.write_if_full()
    }

    fn write_if_full(&mut self) -> io::Result<()> {
        if self.buf.len() < BATCH {
            return Ok(());
        }
        let r = self.out.write_all(&self.buf);
        self.buf.clear();
        self.check(r)
    }

    fn check(&mut self, r: io::Result<()>) -> io::Result<()> {
        match r {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                let to = match &self.target {
                    OutputTarget::Stdout => "stdout".to_owned(),
                    t => t.to_string(),
                };
                Err(io::Error::new(
                    e.kind(),
                    format!("writing records to {to}: {e}"),
                ))
            }
            Ok(()) => Ok(()),
        }
    }
}

impl Sink for NdjsonSink {
    fn write(&mut self, record: &Record<'_>) -> io::Result<()> {
        if self.closed || self.failed {
            return Ok(());
        }
        match *record {
            // The hot path: written without serde's generic machinery (see `json`).
            Record::Request { record, .. } => {
                record.write_json(&mut self.buf);
                self.buf.push(b'\n');
                self.write_if_full()
            }
            Record::Interval { record, .. } => self.body(record),
            Record::Lost(r) => self.body(r),
            Record::Alert(r) => self.body(r),
            Record::Summary(r) => self.body(r),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.closed || self.failed {
            return Ok(());
        }
        let r = self
            .out
            .write_all(&self.buf)
            .and_then(|()| self.out.flush());
        self.buf.clear();
        self.check(r)
    }

    fn closed(&self) -> bool {
        self.closed
    }

    /// Reopens the output file (after logrotate moved it); stdout and sockets stay as they are.
    fn reopen(&mut self) -> io::Result<()> {
        if matches!(self.target, OutputTarget::File(_)) {
            self.flush()?;
            self.out = open(&self.target)?;
            self.failed = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::records::LostRecord;

    fn lost() -> LostRecord {
        LostRecord {
            time: "2026-01-01T00:00:00Z".into(),
            events: 1,
            export_spans: None,
        }
    }

    /// Regression (#10.8): `--output /proc/version` or `/dev/full` failed with a bare
    /// `Input/output error (os error 5)` after attaching, naming no path (twice in the agent).
    /// Both are refused when the output opens, naming it.
    #[test]
    fn unwritable_output_file_fails_at_open() {
        let e = NdjsonSink::new(OutputTarget::File("/dev/full".into()))
            .err()
            .expect("/dev/full refuses even an empty write");
        assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
        assert!(e.to_string().starts_with("not writable: "), "{e}");
        // Root opens /proc/version and the write fails (EIO); anyone else cannot open it.
        assert!(NdjsonSink::new(OutputTarget::File("/proc/version".into())).is_err());
        let dir = tempfile::tempdir().unwrap();
        let ok = NdjsonSink::new(OutputTarget::File(dir.path().join("r.ndjson")));
        assert!(ok.is_ok());
    }

    /// #10.8: a write error later in the run names the output, and is reported once: the failed
    /// sink writes nothing more, so the summary at the end cannot fail a second time.
    #[test]
    fn write_error_names_the_output_once() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let mut sink =
            NdjsonSink::with_writer(OutputTarget::File("/dev/full".into()), Box::new(full));
        let rec = lost();
        sink.write(&Record::Lost(&rec)).unwrap();
        let e = sink.flush().unwrap_err();
        assert_eq!(
            e.to_string(),
            "writing records to /dev/full: No space left on device (os error 28)"
        );
        assert!(!sink.closed(), "a full disk is not a reader that went away");
        sink.write(&Record::Lost(&rec)).unwrap();
        sink.flush().unwrap();
    }
}
