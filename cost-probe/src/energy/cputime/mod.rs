//! CPU time of the target and of the host, to split CPU energy between them.
//!
//! Both sides are read at the finest resolution the kernel offers, so a request that burns a
//! few milliseconds of CPU shows up in the 100 ms interval it ran in (with `/proc` clock ticks
//! a 5 ms burst read as 0 or 10 ms):
//! - the target through its process CPU clock ([`clock::PosixCpuClock`], ns, all threads live
//!   and exited, one syscall per tgid);
//! - the host as elapsed time minus cpuidle residency ([`host`], µs), or `/proc/stat` ticks where
//!   cpuidle is missing or too many files to read every tick. [`HostCpu::busy_source`] says
//!   which one measured each interval.
//!
//! docs/design.md "CPU time" has the measured costs and the limits.
use std::{io::Read, path::Path};

use serde::Serialize;

use super::{EnergyError, read_into};
use crate::units::Nanos;

pub mod clock;
pub mod host;

pub use clock::{GroupClock, PidStatClock, PosixCpuClock};
use host::HostClock;
pub use host::{
    BusySource, CpuTicks, MAX_CPUIDLE_FILES, parse_cpu_list, parse_proc_stat, parse_proc_stat_cpus,
};

/// Where the kernel lists CPUs and their cpuidle states.
pub const SYS_CPU: &str = "/sys/devices/system/cpu";

/// Parses `utime + stime` (fields 14 and 15, clock ticks) of a `/proc/PID/stat` line. The
/// command name may hold spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_pid_stat(r: impl Read, buf: &mut [u8]) -> std::io::Result<u64> {
    let bytes = read_into(r, buf)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed /proc/PID/stat");
    let close = bytes.iter().rposition(|&b| b == b')').ok_or_else(bad)?;
    // After ")": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    // utime(14) stime(15).
    let mut fields = bytes[close + 1..]
        .split(|&b| b == b' ')
        .filter(|s| !s.is_empty());
    let utime = fields.nth(11).and_then(super::parse_u64).ok_or_else(bad)?;
    let stime = fields.next().and_then(super::parse_u64).ok_or_else(bad)?;
    Ok(utime + stime)
}

/// Host CPU time read on a tick. `busy` and `total` are running sums of each interval's figures
/// since the source opened (zero at the first tick), so the difference of two readings is the
/// busy/total time between them whichever mechanism measured each interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostCpu {
    /// `CLOCK_MONOTONIC` time of the read.
    pub at: Nanos,
    /// Time all CPUs spent running something (steal excluded).
    pub busy: Nanos,
    /// All CPU time: elapsed × online CPUs (cpuidle), or `/proc/stat`'s busy + idle + iowait +
    /// steal.
    pub total: Nanos,
    /// Online logical CPUs.
    pub cpus: u32,
    /// What measured the interval that ended at this read.
    pub busy_source: BusySource,
}

/// CPU time sample for one tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CpuSample {
    pub host: HostCpu,
    /// CPU time used by the target's tgids since they were added (monotone; an exited tgid
    /// keeps what it used up to its last reading).
    pub target: Nanos,
    /// Target tgids still alive.
    pub target_alive: u32,
}

struct Target {
    tgid: u32,
    alive: bool,
    last: Nanos,
}

/// Reads the host's busy time and the target's CPU time on each tick.
pub struct CpuTimeSource {
    host: HostClock,
    clock: Box<dyn GroupClock>,
    targets: Vec<Target>,
    /// Target CPU time accumulated over all tgids ever tracked.
    target: Nanos,
    /// Added to host busy time so far: intervals in which the host read less busy than the
    /// target ran (see [`CpuTimeSource::sample`]).
    raised: Nanos,
    /// Host busy (raised) and target time at the previous sample.
    prev: Option<(Nanos, Nanos)>,
}

// A /proc/PID/stat line is < 1 KiB (52 fields; the command name is at most 64 bytes).
const PID_STAT: usize = 1024;

impl CpuTimeSource {
    /// The real sources: `proc_root/stat`, cpuidle under [`SYS_CPU`], the process CPU clock.
    ///
    /// # Errors
    /// When `proc_root/stat` cannot be read or parsed.
    pub fn open(proc_root: &Path) -> Result<Self, EnergyError> {
        Self::with_sources(
            proc_root,
            Some(Path::new(SYS_CPU)),
            Box::new(PosixCpuClock::new()),
        )
    }

    /// Like [`CpuTimeSource::open`] with the cpuidle root (`None`: `/proc/stat` only) and the
    /// target clock chosen by the caller (tests, and the benchmark comparing mechanisms).
    ///
    /// # Errors
    /// When `proc_root/stat` cannot be read or parsed.
    pub fn with_sources(
        proc_root: &Path,
        sys_cpu: Option<&Path>,
        clock: Box<dyn GroupClock>,
    ) -> Result<Self, EnergyError> {
        Ok(Self {
            host: HostClock::open(proc_root, sys_cpu)?,
            clock,
            targets: Vec::new(),
            target: Nanos::ZERO,
            raised: Nanos::ZERO,
            prev: None,
        })
    }

    /// Replaces the set of target tgids. Tgids already tracked keep their baseline; new ones
    /// start counting from now; gone ones keep what they were counted for.
    pub fn set_targets(&mut self, tgids: &[u32]) {
        let clock = &mut self.clock;
        self.targets.retain(|t| {
            let keep = tgids.contains(&t.tgid);
            if !keep {
                clock.close(t.tgid);
            }
            keep
        });
        for &tgid in tgids {
            if self.targets.iter().any(|t| t.tgid == tgid) {
                continue;
            }
            let (alive, last) = match self.clock.open(tgid) {
                Ok(now) => (true, now),
                Err(e) => {
                    log::warn!("target pid {tgid}: CPU time not readable: {e}");
                    (false, Nanos::ZERO)
                }
            };
            self.targets.push(Target { tgid, alive, last });
        }
    }

    /// Online CPUs.
    #[must_use]
    pub fn cpus(&self) -> u32 {
        self.host.cpus()
    }

    /// How host busy time is measured now, and why not through cpuidle when it is not.
    #[must_use]
    pub fn busy_source(&self) -> (BusySource, Option<&str>) {
        self.host.source()
    }

    /// Both mechanisms in words, for the doctor and the sampler's status.
    #[must_use]
    pub fn describe(&self) -> String {
        let host = match self.host.source() {
            (BusySource::Cpuidle, _) => {
                "host busy time from cpuidle residency (µs), /proc/stat for CPUs that stayed in one \
                 state"
                    .to_owned()
            }
            (BusySource::ProcStat, why) => format!(
                "host busy time from /proc/stat (10 ms ticks; {})",
                why.unwrap_or("cpuidle not used")
            ),
        };
        format!("{} CPUs; {}; {host}", self.cpus(), self.clock.describe())
    }

    /// Reads host and target CPU time. Allocation-free (CPU hotplug aside).
    ///
    /// # Errors
    /// When `/proc/stat` cannot be read; an unreadable target is not an error (it exited).
    pub fn sample(&mut self, now: Nanos) -> Result<CpuSample, EnergyError> {
        let host = self.host.sample(now)?;
        let mut alive = 0;
        for t in &mut self.targets {
            if !t.alive {
                continue;
            }
            match self.clock.read(t.tgid) {
                Ok(ns) => {
                    // The clock is monotone per process; saturating keeps a misbehaving source
                    // from ever producing a negative interval.
                    self.target += ns.saturating_sub(t.last);
                    t.last = t.last.max(ns);
                    alive += 1;
                }
                Err(_) => {
                    t.alive = false;
                    self.clock.close(t.tgid);
                }
            }
        }
        // The host was busy at least as long as the target ran. The two come from different
        // clocks read at different instants (cpuidle residency booked when an idle period ends,
        // /proc/stat ticks for a CPU still asleep; the process clock in ns), so an interval can
        // read the host below the target. Raising the host's figure here, where both the CPU
        // power model and the target's share read it, keeps them consistent: the model never
        // draws less dynamic energy than the target's own CPU time implies.
        let mut host = host;
        host.busy = Nanos(host.busy.0.saturating_add(self.raised.0));
        if let Some((busy, target)) = self.prev {
            let d_busy = host.busy.0.saturating_sub(busy.0);
            let d_target = self.target.0.saturating_sub(target.0);
            if d_target > d_busy {
                self.raised = Nanos(self.raised.0 + (d_target - d_busy));
                host.busy = Nanos(host.busy.0 + (d_target - d_busy));
            }
        }
        self.prev = Some((host.busy, self.target));
        Ok(CpuSample {
            host,
            target: self.target,
            target_alive: alive,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, io, path::PathBuf};

    use procfs::{FromBufReadSI as _, FromRead as _};

    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/energy")
            .join(name)
    }

    // proc_stat_vm_{a,b}: /proc/stat of the development VM "vm" (Debian, 2 vCPU, kernel
    // 6.18.44), captured ~2.2 s apart with one CPU busy in between.
    #[test]
    fn proc_stat_fixture_matches_procfs_crate() {
        let text = std::fs::read(fixture("proc_stat_vm_a")).unwrap();
        let mut buf = [0u8; 4096];
        let (ticks, cpus) = parse_proc_stat(&text[..], &mut buf).unwrap();
        assert_eq!(cpus, 2);
        let info = procfs::ExplicitSystemInfo {
            boot_time_secs: 0,
            ticks_per_second: 100,
            page_size: 4096,
            is_little_endian: true,
        };
        let reference = procfs::KernelStats::from_buf_read(&text[..], &info).unwrap();
        assert_eq!(ticks.user, reference.total.user);
        assert_eq!(ticks.idle, reference.total.idle);
        assert_eq!(ticks.steal, reference.total.steal.unwrap());
        assert_eq!(reference.cpu_time.len(), 2);
    }

    #[test]
    fn busy_share_between_two_captures() {
        let mut buf = [0u8; 4096];
        let a = parse_proc_stat(
            &std::fs::read(fixture("proc_stat_vm_a")).unwrap()[..],
            &mut buf,
        )
        .unwrap()
        .0;
        let b = parse_proc_stat(
            &std::fs::read(fixture("proc_stat_vm_b")).unwrap()[..],
            &mut buf,
        )
        .unwrap()
        .0;
        let busy = b.busy() - a.busy();
        let total = b.total() - a.total();
        // One of two CPUs was spinning for about half the window.
        assert_eq!((busy, total), (101, 440));
    }

    // pid_stat_vm_python_threads: /proc/self/stat of a python3 process on the same VM that had
    // run (and joined) two CPU-burning threads; the leader's line includes the exited threads.
    #[test]
    fn pid_stat_fixture_matches_procfs_crate() {
        let text = std::fs::read(fixture("pid_stat_vm_python_threads")).unwrap();
        let mut buf = [0u8; PID_STAT];
        let ticks = parse_pid_stat(&text[..], &mut buf).unwrap();
        let reference = procfs::process::Stat::from_read(&text[..]).unwrap();
        assert_eq!(ticks, reference.utime + reference.stime);
        assert_eq!(ticks, 65);
    }

    #[test]
    fn comm_with_spaces_and_parens_is_skipped_correctly() {
        // pid_stat_vm_self with the command name replaced by a hostile one.
        let real = std::fs::read_to_string(fixture("pid_stat_vm_self")).unwrap();
        let after = &real[real.rfind(')').unwrap()..];
        let line = format!("8373 (a) b (c) d{after}");
        let mut buf = [0u8; PID_STAT];
        let reference = procfs::process::Stat::from_read(line.as_bytes()).unwrap();
        assert_eq!(
            parse_pid_stat(line.as_bytes(), &mut buf).unwrap(),
            reference.utime + reference.stime
        );
    }

    #[test]
    fn truncated_lines_are_errors_not_zeros() {
        let mut buf = [0u8; 64];
        assert!(parse_pid_stat(&b"12 (x) R 1 2 3"[..], &mut buf).is_err());
        assert!(parse_proc_stat(&b"intr 1 2 3\n"[..], &mut buf).is_err());
    }

    /// Live: this test process burns CPU on a second thread; the target total must grow by it
    /// and the thread's time must be counted even after it exits.
    #[test]
    fn live_target_counts_all_threads() {
        let mut src = CpuTimeSource::open(Path::new("/proc")).unwrap();
        let me = std::process::id();
        src.set_targets(&[me]);
        // Real timestamps: with cpuidle, host busy is elapsed × CPUs less idle time.
        let before = src.sample(crate::units::monotonic_now()).unwrap();
        // Burn until the thread itself has 300 ms of CPU: wall time would be flaky on a loaded
        // two-core box where the thread gets only part of each second.
        std::thread::spawn(|| {
            let thread_cpu = || {
                let mut ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: clock_gettime writes into the timespec we pass.
                unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
                ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
            };
            while thread_cpu() < 300_000_000 {
                std::hint::black_box(0u64);
            }
        })
        .join()
        .unwrap();
        let after = src.sample(crate::units::monotonic_now()).unwrap();
        let used = after.target.saturating_sub(before.target);
        // The process clock counts the joined thread's 300 ms exactly (plus other test threads).
        assert!(used >= Nanos(300_000_000), "{used:?}");
        assert_eq!(after.target_alive, 1);
        assert!(after.host.busy > before.host.busy);
        assert!(after.host.cpus >= 1);
    }

    #[test]
    fn exited_target_keeps_its_time_and_stops_counting() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .spawn()
            .unwrap();
        let mut src = CpuTimeSource::open(Path::new("/proc")).unwrap();
        src.set_targets(&[child.id()]);
        let first = src.sample(Nanos(1)).unwrap();
        assert_eq!(first.target_alive, 1);
        child.wait().unwrap();
        let after = src.sample(Nanos(2)).unwrap();
        assert_eq!(after.target_alive, 0);
        assert!(after.target >= first.target);
        src.set_targets(&[]);
        assert_eq!(src.sample(Nanos(3)).unwrap().target, after.target);
    }

    /// A clock that replays scripted readings: `None` is a process that has gone.
    struct Scripted(VecDeque<Option<u64>>);

    impl GroupClock for Scripted {
        fn open(&mut self, _: u32) -> io::Result<Nanos> {
            self.read(0)
        }
        fn read(&mut self, _: u32) -> io::Result<Nanos> {
            self.0
                .pop_front()
                .flatten()
                .map(Nanos)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))
        }
        fn close(&mut self, _: u32) {}
        fn describe(&self) -> &'static str {
            "scripted"
        }
    }

    #[test]
    fn host_busy_is_never_below_the_targets_cpu_time() {
        // A /proc/stat that does not move: the host reads idle while the target ran 4 ms.
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(fixture("proc_stat_vm_a"), dir.path().join("stat")).unwrap();
        let script = [Some(0), Some(5_000_000), Some(9_000_000)];
        let mut src = CpuTimeSource::with_sources(
            dir.path(),
            None,
            Box::new(Scripted(script.into_iter().collect())),
        )
        .unwrap();
        src.set_targets(&[7]);
        let a = src.sample(Nanos(1)).unwrap();
        let b = src.sample(Nanos(2)).unwrap();
        assert_eq!(b.target.0 - a.target.0, 4_000_000);
        assert_eq!(b.host.busy.0 - a.host.busy.0, 4_000_000);
    }

    #[test]
    fn target_deltas_never_negative_and_exit_keeps_last_reading() {
        // 100 → 50 (a clock that went backwards) → 180 → gone → (never read again).
        let script = [Some(100), Some(50), Some(180), None, Some(10_000)];
        let mut src = CpuTimeSource::with_sources(
            Path::new("/proc"),
            None,
            Box::new(Scripted(script.into_iter().collect())),
        )
        .unwrap();
        src.set_targets(&[7]);
        let mut seen = Vec::new();
        for i in 1..=4 {
            let s = src.sample(Nanos(i)).unwrap();
            seen.push((s.target.0, s.target_alive));
        }
        assert_eq!(seen, [(0, 1), (80, 1), (80, 0), (80, 0)]);
    }
}
