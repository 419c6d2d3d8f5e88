//! Sinks: NDJSON records (stdout or a file) and the wall clock they are stamped with.
mod json;
pub mod metrics;
pub mod records;
pub mod summary;

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::Serialize;

/// Converts `CLOCK_MONOTONIC` ns (eBPF and sampler time) to wall time, once, at the sink.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// realtime − monotonic, in ns.
    offset: i128,
}

impl WallClock {
    #[must_use]
    pub fn now() -> Self {
        // Take the pair with the smallest gap between the two reads.
        let mut best = (u128::MAX, 0i128);
        for _ in 0..5 {
            let a = crate::units::monotonic_now().0;
            let real = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let b = crate::units::monotonic_now().0;
            let gap = u128::from(b - a);
            if gap < best.0 {
                best = (gap, real as i128 - i128::from(a + (b - a) / 2));
            }
        }
        Self { offset: best.1 }
    }

    #[must_use]
    pub fn fixed(offset_ns: i128) -> Self {
        Self { offset: offset_ns }
    }

    #[must_use]
    pub fn system_time(&self, mono_ns: u64) -> SystemTime {
        let real = i128::from(mono_ns) + self.offset;
        SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(real.max(0)).unwrap_or(0))
    }

    /// RFC 3339 UTC with nanoseconds.
    #[must_use]
    pub fn rfc3339(&self, mono_ns: u64) -> String {
        humantime::format_rfc3339_nanos(self.system_time(mono_ns)).to_string()
    }

    /// Like [`Self::rfc3339`], into a stack buffer, reusing the date and time of day when the
    /// second is the one formatted last (records come in time order, a few per millisecond):
    /// no allocation on the per-request path.
    pub fn stamp(&self, mono_ns: u64, cache: &mut SecondCache) -> Stamp {
        let t = self.system_time(mono_ns);
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        if cache.secs != Some(d.as_secs()) {
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs());
            // "YYYY-MM-DDTHH:MM:SSZ" → keep up to the seconds.
            let s = humantime::format_rfc3339_seconds(whole).to_string();
            s.trim_end_matches('Z').clone_into(&mut cache.prefix);
            cache.secs = Some(d.as_secs());
        }
        let mut st = Stamp {
            buf: [0; STAMP_LEN],
            len: 0,
        };
        let p = cache.prefix.as_bytes();
        let n = p.len().min(STAMP_LEN - 11);
        st.buf[..n].copy_from_slice(&p[..n]);
        st.buf[n] = b'.';
        let mut ns = d.subsec_nanos();
        for i in (0..9).rev() {
            st.buf[n + 1 + i] = b'0' + (ns % 10) as u8;
            ns /= 10;
        }
        st.buf[n + 10] = b'Z';
        st.len = (n + 11) as u8;
        st
    }
}

const STAMP_LEN: usize = 40;

/// An RFC 3339 timestamp in a stack buffer (see [`WallClock::stamp`]).
#[derive(Clone, Copy)]
pub struct Stamp {
    buf: [u8; STAMP_LEN],
    len: u8,
}

impl Stamp {
    #[must_use]
    pub fn as_str(&self) -> &str {
        // The buffer holds ASCII written by `WallClock::stamp` (humantime's digits and
        // separators, then ours); an invalid prefix cannot happen, and would show as empty.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::fmt::Debug for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Stamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The formatted second of the last timestamp (see [`WallClock::stamp`]).
#[derive(Debug, Default, Clone)]
pub struct SecondCache {
    secs: Option<u64>,
    prefix: String,
}

/// Where records go: `-` for stdout, else a file (appended; reopened on request for logrotate).
pub struct Sink {
    path: Option<PathBuf>,
    out: BufWriter<Box<dyn Write + Send>>,
    /// The reader went away (closed pipe): stop writing, exit normally.
    pub closed: bool,
    line: Vec<u8>,
}

fn open(path: Option<&Path>) -> io::Result<Box<dyn Write + Send>> {
    Ok(match path {
        None => Box::new(io::stdout()),
        Some(p) => match p.to_str().and_then(|s| s.strip_prefix("unix:")) {
            // A log shipper's listening socket (Vector `socket` source, Fluent Bit `unix`).
            Some(sock) => Box::new(std::os::unix::net::UnixStream::connect(sock)?),
            None => Box::new(OpenOptions::new().create(true).append(true).open(p)?),
        },
    })
}

impl Sink {
    pub fn new(path: &str) -> io::Result<Self> {
        let path = (path != "-").then(|| PathBuf::from(path));
        Ok(Self {
            out: BufWriter::with_capacity(64 * 1024, open(path.as_deref())?),
            path,
            closed: false,
            line: Vec::with_capacity(1024),
        })
    }

    /// Reopens the output file (after logrotate moved it); no-op for stdout.
    pub fn reopen(&mut self) -> io::Result<()> {
        if self.path.is_some() {
            self.flush()?;
            self.out = BufWriter::with_capacity(64 * 1024, open(self.path.as_deref())?);
        }
        Ok(())
    }

    /// Writes one `request` record as a JSON line (see [`json`]).
    pub fn write_request(&mut self, record: &records::RequestRecord<'_>) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        self.line.clear();
        record.write_json(&mut self.line);
        self.line.push(b'\n');
        let r = self.out.write_all(&self.line);
        self.check(r)
    }

    /// Writes one record as a JSON line.
    pub fn write<T: Serialize>(&mut self, record: &T) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        self.line.clear();
        serde_json::to_writer(&mut self.line, record)?;
        self.line.push(b'\n');
        let r = self.out.write_all(&self.line);
        self.check(r)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let r = self.out.flush();
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

/// Opens a file for `--record` (raw events, one JSON line each).
pub fn record_file(path: &Path) -> io::Result<BufWriter<File>> {
    Ok(BufWriter::new(File::create(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_rfc3339_equals_humantime() {
        let clock = WallClock::fixed(1_795_000_000_123_456_789);
        let mut cache = SecondCache::default();
        for ns in [
            0,
            1,
            999_999_999,
            1_000_000_000,
            86_400_000_000_123,
            86_400_000_000_124,
        ] {
            assert_eq!(clock.stamp(ns, &mut cache).as_str(), clock.rfc3339(ns));
        }
    }
}
