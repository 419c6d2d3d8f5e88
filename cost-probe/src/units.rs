//! Units as types: integer microjoules and nanoseconds through the core, f64 only at pricing and
//! output.
use std::ops::{Add, AddAssign, Sub};

use serde::Serialize;

/// Energy in microjoules (the unit of RAPL and NVML counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct MicroJoules(pub u64);

/// A duration or a `CLOCK_MONOTONIC` instant in nanoseconds (the clock of `bpf_ktime_get_ns`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Nanos(pub u64);

impl MicroJoules {
    #[must_use]
    pub fn joules(self) -> f64 {
        self.0 as f64 / 1e6
    }
    #[must_use]
    pub fn saturating_sub(self, rhs: Self) -> Self {
        Self(self.0.saturating_sub(rhs.0))
    }
}

impl Nanos {
    pub const ZERO: Self = Self(0);
    #[must_use]
    pub fn from_secs_f64(s: f64) -> Self {
        Self((s * 1e9) as u64)
    }
    #[must_use]
    pub fn secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }
    #[must_use]
    pub fn millis_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }
    #[must_use]
    pub fn saturating_sub(self, rhs: Self) -> Self {
        Self(self.0.saturating_sub(rhs.0))
    }
}

macro_rules! arith {
    ($t:ty) => {
        impl Add for $t {
            type Output = Self;
            fn add(self, rhs: Self) -> Self {
                Self(self.0 + rhs.0)
            }
        }
        impl AddAssign for $t {
            fn add_assign(&mut self, rhs: Self) {
                self.0 += rhs.0;
            }
        }
        impl Sub for $t {
            type Output = Self;
            fn sub(self, rhs: Self) -> Self {
                Self(self.0 - rhs.0)
            }
        }
    };
}
arith!(MicroJoules);
arith!(Nanos);

/// `CLOCK_MONOTONIC` now: the same clock as `bpf_ktime_get_ns`, so energy samples and eBPF
/// events share one time line.
#[must_use]
pub fn monotonic_now() -> Nanos {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a timespec into the pointer we pass; CLOCK_MONOTONIC is always
    // available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    Nanos(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}
