//! Energy sources: cumulative energy per domain (`gpu:0`, `rapl:package-0`, `cpu:model`, …),
//! stamped on `CLOCK_MONOTONIC` so samples line up with eBPF events.
//!
//! Every source implements [`EnergySource`] and reports cumulative, wrap-free totals; the only
//! place hardware counter wrap-around is handled is [`Counter::delta`]. A tick writes readings into
//! a caller-owned `Vec` that is reused, so steady-state sampling does not allocate.
//!
//! Which source measures what:
//! - [`nvml`]: each NVIDIA GPU (total-energy counter, else power integrated over time).
//! - [`rapl`]: CPU package / DRAM / psys zones through powercap sysfs.
//! - [`perf_power`]: the same RAPL counters through the perf `power` PMU (used when powercap is
//!   missing or unreadable).
//! - [`cpu_model`]: an estimate from host CPU utilisation (see `cputime`) when the host has no
//!   RAPL.
//! - [`cputime`]: CPU time of the target vs the host, to split CPU energy.
//!
//! [`sampler`] ties them together; [`doctor`] explains what works on this host.
use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::FileExt,
    path::PathBuf,
};

use serde::Serialize;

use crate::units::{MicroJoules, Nanos};

pub mod counter;
pub mod cpu_model;
pub mod cputime;
pub mod doctor;
pub mod nvml;
pub mod perf_power;
pub mod rapl;
pub mod sampler;

pub use counter::{Counter, CounterRange, Scaler};

/// What physical thing a domain measures. Attribution needs this to avoid double counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainClass {
    Gpu,
    CpuPackage,
    Dram,
    /// Whole platform (`SoC` and more) on client parts; it contains the package.
    Psys,
    /// Cores only (RAPL PP0); a part of the package.
    Core,
    /// Integrated graphics / uncore (RAPL PP1); a part of the package.
    Uncore,
    /// Estimated by the CPU power model.
    CpuModel,
}

impl DomainClass {
    /// Whether this domain's energy can be summed with the other additive domains without
    /// counting the same joules twice (core/uncore sit inside the package, psys contains it).
    #[must_use]
    pub fn is_additive(self) -> bool {
        matches!(
            self,
            Self::Gpu | Self::CpuPackage | Self::Dram | Self::CpuModel
        )
    }
}

/// Where a reading came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    Nvml,
    Powercap,
    PerfPower,
    CpuModel,
}

/// How trustworthy a reading is; carried on every reading so records can say so.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct ReadingFlags {
    /// Energy is power integrated over time (no hardware energy counter).
    pub integrated: bool,
    /// Energy comes from a model, not a measurement.
    pub estimated: bool,
}

/// One energy domain, fixed for the life of a sampler.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Domain {
    /// Stable id used in records: `gpu:0`, `rapl:package-0`, `rapl:dram-1`, `rapl:psys`, `cpu:model`.
    pub id: String,
    pub class: DomainClass,
    pub source: SourceKind,
    /// What a person would call it: GPU model and UUID, sysfs zone path, perf event.
    pub label: String,
    pub flags: ReadingFlags,
    /// Caveat worth showing next to the numbers (e.g. NVML's 1 s power averaging).
    pub note: Option<String>,
}

/// Index of a [`Domain`] in the sampler's domain table ([`sampler::Snapshot::domains`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct DomainIdx(pub u16);

/// One domain read at one instant.
///
/// `total` is monotone for the life of the source (wraps already folded in), so the energy between
/// any two readings of a domain is `b.total - a.total`, even across snapshots a consumer skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Reading {
    pub domain: DomainIdx,
    /// `CLOCK_MONOTONIC` time of the read.
    pub at: Nanos,
    /// Energy since the source started.
    pub total: MicroJoules,
    /// Energy since this domain's previous reading (zero on the first).
    pub delta: MicroJoules,
    pub flags: ReadingFlags,
}

/// Power in integer milliwatts (NVML's unit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct MilliWatts(pub u64);

impl MilliWatts {
    #[must_use]
    pub fn from_watts(w: f64) -> Self {
        Self((w.max(0.0) * 1000.0).round() as u64)
    }
    #[must_use]
    pub fn watts(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

/// Where each hardware interface lives. Tests point these at temp dirs; the defaults are the real
/// host paths.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Roots {
    /// procfs (`/proc`).
    pub proc: PathBuf,
    /// powercap class dir (`/sys/class/powercap`).
    pub powercap: PathBuf,
    /// perf PMU dir (`/sys/bus/event_source/devices`).
    pub event_source: PathBuf,
    /// NVML library to load; `None` means the driver's `libnvidia-ml.so.1` on the loader path.
    pub nvml_lib: Option<PathBuf>,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            proc: PathBuf::from("/proc"),
            powercap: PathBuf::from("/sys/class/powercap"),
            event_source: PathBuf::from("/sys/bus/event_source/devices"),
            nvml_lib: None,
        }
    }
}

/// Errors of the energy module. Per-domain read failures during sampling are not errors: the
/// domain is skipped (or disabled with one warning) and the rest keep going.
#[derive(Debug, thiserror::Error)]
pub enum EnergyError {
    #[error(transparent)]
    Nvml(#[from] nvml_wrapper::error::NvmlError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: cannot parse {what}", path.display())]
    Parse { path: PathBuf, what: &'static str },
    /// The source exists in principle but nothing on this host can be read through it.
    #[error("{0}")]
    Unavailable(String),
}

impl EnergyError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// What the sampler hands each source on a tick.
#[derive(Clone, Copy, Debug)]
pub struct TickCtx<'a> {
    /// `CLOCK_MONOTONIC` now, taken just before this source is read.
    pub now: Nanos,
    /// Host CPU time read this tick, for sources that model energy from utilisation.
    pub cpu: Option<&'a cputime::HostCpu>,
}

/// A source of cumulative energy for one or more domains.
pub trait EnergySource: Send {
    fn kind(&self) -> SourceKind;
    /// The domains this source reports; fixed after construction.
    fn domains(&self) -> &[Domain];
    /// Appends one reading per domain that could be read now, `domain` being its index in
    /// [`EnergySource::domains`]. Must not allocate once `out` has grown to size. A domain that
    /// fails is skipped (and disabled with one warning if the failure is permanent).
    fn sample(&mut self, ctx: &TickCtx<'_>, out: &mut Vec<Reading>);
}

/// `Read` over a file at a fixed offset, with `pread` so a kept-open sysfs/procfs file is
/// regenerated on every read without reopening it (no path lookup, no allocation per tick).
pub(crate) struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
}

impl<'a> ReadAt<'a> {
    pub(crate) fn start(file: &'a File) -> Self {
        Self { file, pos: 0 }
    }
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Reads until `buf` is full or EOF; returns the filled prefix.
pub(crate) fn read_into(mut r: impl Read, buf: &mut [u8]) -> io::Result<&[u8]> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(&buf[..n])
}

/// Parses a decimal `u64` with surrounding ASCII whitespace (sysfs values end in `\n`).
pub(crate) fn parse_u64(bytes: &[u8]) -> Option<u64> {
    let s = bytes.trim_ascii();
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Reads a whole small sysfs text file, trimmed (discovery only, not per tick).
pub(crate) fn read_text(path: &std::path::Path) -> Result<String, EnergyError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| EnergyError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_u64_accepts_sysfs_values_only() {
        assert_eq!(parse_u64(b"262143328850\n"), Some(262_143_328_850));
        assert_eq!(parse_u64(b"  7 "), Some(7));
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"-1\n"), None);
        assert_eq!(parse_u64(b"99999999999999999999999"), None);
    }

    #[test]
    fn only_non_overlapping_classes_are_additive() {
        assert!(DomainClass::CpuPackage.is_additive());
        assert!(DomainClass::Dram.is_additive());
        assert!(!DomainClass::Psys.is_additive());
        assert!(!DomainClass::Core.is_additive());
    }

    #[test]
    fn milliwatts_from_watts_rounds() {
        assert_eq!(MilliWatts::from_watts(69.9996), MilliWatts(70_000));
        assert_eq!(MilliWatts::from_watts(-3.0), MilliWatts(0));
    }
}
