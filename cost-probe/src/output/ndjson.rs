//! The NDJSON sink: one JSON object per record per line, to stdout, a file or a unix socket.
use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
};

use super::{
    OutputTarget, Record, Sink,
    records::{Body, Envelope},
};

/// Records as JSON lines. A closed reader (`| head`) marks the sink closed instead of failing.
pub struct NdjsonSink {
    target: OutputTarget,
    out: BufWriter<Box<dyn Write + Send>>,
    closed: bool,
    line: Vec<u8>,
}

fn open(target: &OutputTarget) -> io::Result<Box<dyn Write + Send>> {
    Ok(match target {
        OutputTarget::Stdout => Box::new(io::stdout()),
        OutputTarget::Unix(sock) => Box::new(std::os::unix::net::UnixStream::connect(sock)?),
        OutputTarget::File(p) => Box::new(OpenOptions::new().create(true).append(true).open(p)?),
    })
}

impl NdjsonSink {
    pub fn new(target: OutputTarget) -> io::Result<Self> {
        Ok(Self {
            out: BufWriter::with_capacity(64 * 1024, open(&target)?),
            target,
            closed: false,
            line: Vec::with_capacity(1024),
        })
    }

    fn body<T: Body>(&mut self, body: &T) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, &Envelope::new(body))?;
        self.line.push(b'\n');
        let r = self.out.write_all(&self.line);
        self.check(r)
    }

    fn check(&mut self, r: io::Result<()>) -> io::Result<()> {
        match r {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            r => r,
        }
    }
}

impl Sink for NdjsonSink {
    fn write(&mut self, record: &Record<'_>) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        match *record {
            // The hot path: written without serde's generic machinery (see `json`).
            Record::Request { record, .. } => {
                self.line.clear();
                record.write_json(&mut self.line);
                self.line.push(b'\n');
                let r = self.out.write_all(&self.line);
                self.check(r)
            }
            Record::Interval { record, .. } => self.body(record),
            Record::Lost(r) => self.body(r),
            Record::Alert(r) => self.body(r),
            Record::Summary(r) => self.body(r),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let r = self.out.flush();
        self.check(r)
    }

    fn closed(&self) -> bool {
        self.closed
    }

    /// Reopens the output file (after logrotate moved it); stdout and sockets stay as they are.
    fn reopen(&mut self) -> io::Result<()> {
        if matches!(self.target, OutputTarget::File(_)) {
            self.flush()?;
            self.out = BufWriter::with_capacity(64 * 1024, open(&self.target)?);
        }
        Ok(())
    }
}
