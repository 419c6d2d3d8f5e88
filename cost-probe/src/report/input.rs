//! Where records come from: files (gzip or not, told by their first bytes), globs, stdin.
use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

use super::{Aggregator, ReportError};
use crate::rules::schema::Glob;

/// One input as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

impl Input {
    /// `-` is stdin; a name with `*` or `?` in its last component is a glob over its directory
    /// (shells expand globs already; this is for quoted ones and for scripts); anything else is a
    /// file.
    pub fn expand(arg: &str) -> Result<Vec<Self>, ReportError> {
        if arg == "-" {
            return Ok(vec![Self::Stdin]);
        }
        let path = Path::new(arg);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !name.contains(['*', '?']) {
            return Ok(vec![Self::File(path.to_owned())]);
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let glob = Glob::try_from(name.to_owned()).map_err(|_| ReportError::NoMatch(arg.into()))?;
        let entries = std::fs::read_dir(&dir).map_err(|err| ReportError::Io {
            path: dir.display().to_string(),
            err,
        })?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_str().is_some_and(|n| glob.0.is_match(n)))
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        if found.is_empty() {
            return Err(ReportError::NoMatch(arg.into()));
        }
        // Rotated logs sort oldest-last by name; order does not change the report, only which of
        // two equally expensive requests is listed first.
        found.sort();
        Ok(found.into_iter().map(Self::File).collect())
    }

    fn name(&self) -> String {
        match self {
            Self::Stdin => "<stdin>".into(),
            Self::File(p) => p.display().to_string(),
        }
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

fn open(input: &Input) -> Result<Box<dyn BufRead>, ReportError> {
    let io = |err| ReportError::Io {
        path: input.name(),
        err,
    };
    let raw: Box<dyn Read> = match input {
        Input::Stdin => Box::new(std::io::stdin().lock()),
        Input::File(p) => Box::new(File::open(p).map_err(io)?),
    };
    let mut buf = BufReader::with_capacity(1 << 20, raw);
    let gz = buf.fill_buf().map_err(io)?.starts_with(&GZIP_MAGIC);
    Ok(if gz {
        // logrotate and `gzip -c >>` both make multi-member files.
        Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::bufread::MultiGzDecoder::new(buf),
        ))
    } else {
        Box::new(buf)
    })
}

/// Feeds every line of every input to `agg`, in order. The first line that is not a record
/// stops the read with its file and line number.
pub fn read_inputs(inputs: &[Input], agg: &mut Aggregator) -> Result<(), ReportError> {
    for input in inputs {
        read_from(&input.name(), open(input)?, agg)?;
    }
    Ok(())
}

/// Feeds every line of one reader to `agg`; `name` is what errors call it. Lines are read in
/// place from the reader's buffer; only a line split across two fills is copied.
pub fn read_from(name: &str, mut r: impl BufRead, agg: &mut Aggregator) -> Result<(), ReportError> {
    let mut split = Vec::new();
    let mut n = 0u64;
    let mut feed = |line: &[u8], agg: &mut Aggregator| {
        n += 1;
        agg.line(line).map_err(|message| ReportError::BadLine {
            input: name.to_owned(),
            line: n,
            message,
        })
    };
    loop {
        let buf = r.fill_buf().map_err(|err| ReportError::Io {
            path: name.to_owned(),
            err,
        })?;
        if buf.is_empty() {
            if !split.is_empty() {
                feed(&split, agg)?;
            }
            return Ok(());
        }
        let mut at = 0;
        for nl in memchr::memchr_iter(b'\n', buf) {
            if split.is_empty() {
                feed(&buf[at..nl], agg)?;
            } else {
                split.extend_from_slice(&buf[at..nl]);
                feed(&split, agg)?;
                split.clear();
            }
            at = nl + 1;
        }
        split.extend_from_slice(&buf[at..]);
        let len = buf.len();
        r.consume(len);
    }
}
