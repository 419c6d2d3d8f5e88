//! CPU time of the target and of the host, from procfs, to split CPU energy between them.
//!
//! `/proc/PID/stat` of a thread-group leader already sums all its threads, live and exited
//! (the kernel's `thread_group_cputime`), so one file per tgid covers every thread. The hot-path
//! parsers are hand-written over a stack buffer (no allocation per tick); the `procfs` crate
//! supplies the tick rate and serves as the reference parser in tests.
use std::{
    fs::File,
    io::{self, Read},
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{EnergyError, ReadAt, read_into};
use crate::units::Nanos;

/// The `cpu` line of `/proc/stat`, in clock ticks (`USER_HZ`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CpuTicks {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTicks {
    /// Ticks this host's CPUs spent running something. `guest` is already inside `user`; steal
    /// is time the hypervisor gave to someone else, so it is not our busy time.
    #[must_use]
    pub fn busy(&self) -> u64 {
        self.user + self.nice + self.system + self.irq + self.softirq
    }

    /// All ticks, busy or not.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.busy() + self.idle + self.iowait + self.steal
    }
}

/// Parses the aggregate `cpu` line at the start of `/proc/stat` content. Returns the ticks and
/// the number of `cpuN` lines found in `buf` (0 when the buffer ended before them).
pub fn parse_proc_stat(r: impl Read, buf: &mut [u8]) -> io::Result<(CpuTicks, u32)> {
    let bytes = read_into(r, buf)?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "no cpu line in /proc/stat");
    let mut lines = bytes.split(|&b| b == b'\n');
    let first = lines.next().ok_or_else(bad)?;
    let rest = first.strip_prefix(b"cpu ").ok_or_else(bad)?;
    let mut f = [0u64; 8];
    let mut n = 0;
    for field in rest.split(|&b| b == b' ').filter(|s| !s.is_empty()) {
        if n == f.len() {
            break;
        }
        f[n] = super::parse_u64(field).ok_or_else(bad)?;
        n += 1;
    }
    // Kernels since 2.6.11 print at least eight fields.
    if n < 4 {
        return Err(bad());
    }
    let cpus = lines
        .take_while(|l| l.starts_with(b"cpu"))
        .filter(|l| l.get(3).is_some_and(u8::is_ascii_digit))
        .count() as u32;
    Ok((
        CpuTicks {
            user: f[0],
            nice: f[1],
            system: f[2],
            idle: f[3],
            iowait: f[4],
            irq: f[5],
            softirq: f[6],
            steal: f[7],
        },
        cpus,
    ))
}

/// Parses `utime + stime` (fields 14 and 15, clock ticks) of a `/proc/PID/stat` line. The
/// command name may hold spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_pid_stat(r: impl Read, buf: &mut [u8]) -> io::Result<u64> {
    let bytes = read_into(r, buf)?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/stat");
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

/// Host CPU time, cumulative since boot, read on a tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostCpu {
    /// `CLOCK_MONOTONIC` time of the read.
    pub at: Nanos,
    /// Time all CPUs spent busy (see [`CpuTicks::busy`]).
    pub busy: Nanos,
    /// All CPU time (busy + idle + iowait + steal).
    pub total: Nanos,
    /// Logical CPUs at start-up (the `cpuN` lines of `/proc/stat`).
    pub cpus: u32,
}

/// CPU time sample for one tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CpuSample {
    pub host: HostCpu,
    /// CPU time used by the target's tgids since they were added (monotone; an exited tgid
    /// keeps what it used up to its last sample).
    pub target: Nanos,
    /// Target tgids still alive.
    pub target_alive: u32,
}

struct Target {
    tgid: u32,
    file: Option<File>,
    last_ticks: u64,
}

/// Reads `/proc/stat` and the target's `/proc/PID/stat` files, kept open between ticks.
pub struct CpuTimeSource {
    root: PathBuf,
    stat: File,
    ticks_per_sec: u64,
    cpus: u32,
    targets: Vec<Target>,
    /// Target ticks accumulated over all tgids ever tracked.
    target_ticks: u64,
}

// /proc/stat's first line is < 250 bytes; the rest is read only to count CPUs at start.
const STAT_HEAD: usize = 512;
const PID_STAT: usize = 1024;

impl CpuTimeSource {
    pub fn open(proc_root: &Path) -> Result<Self, EnergyError> {
        let path = proc_root.join("stat");
        let stat = File::open(&path).map_err(|e| EnergyError::io(&path, e))?;
        // Read enough to see every cpuN line (~60-100 bytes each, so thousands of CPUs) once,
        // at start-up.
        let mut big = vec![0u8; 1 << 20];
        let (_, cpus) = parse_proc_stat(ReadAt::start(&stat), &mut big)
            .map_err(|e| EnergyError::io(&path, e))?;
        Ok(Self {
            root: proc_root.to_owned(),
            stat,
            ticks_per_sec: procfs::ticks_per_second().max(1),
            cpus: cpus.max(1),
            targets: Vec::new(),
            target_ticks: 0,
        })
    }

    /// Replaces the set of target tgids. Tgids already tracked keep their baseline; new ones
    /// start counting from now; gone ones keep what they were counted for.
    pub fn set_targets(&mut self, tgids: &[u32]) {
        self.targets.retain(|t| tgids.contains(&t.tgid));
        for &tgid in tgids {
            if self.targets.iter().any(|t| t.tgid == tgid) {
                continue;
            }
            let path = self.root.join(tgid.to_string()).join("stat");
            let file = File::open(&path).ok();
            let mut buf = [0u8; PID_STAT];
            let last_ticks = file
                .as_ref()
                .and_then(|f| parse_pid_stat(ReadAt::start(f), &mut buf).ok())
                .unwrap_or(0);
            if file.is_none() {
                log::warn!("target pid {tgid}: {} not readable", path.display());
            }
            self.targets.push(Target {
                tgid,
                file,
                last_ticks,
            });
        }
    }

    #[must_use]
    pub fn cpus(&self) -> u32 {
        self.cpus
    }

    fn ticks_to_nanos(&self, ticks: u64) -> Nanos {
        Nanos((u128::from(ticks) * 1_000_000_000 / u128::from(self.ticks_per_sec)) as u64)
    }

    /// Reads host and target CPU time. Allocation-free.
    pub fn sample(&mut self, now: Nanos) -> Result<CpuSample, EnergyError> {
        let mut buf = [0u8; STAT_HEAD];
        let (host, _) = parse_proc_stat(ReadAt::start(&self.stat), &mut buf)
            .map_err(|e| EnergyError::io(self.root.join("stat"), e))?;
        let mut alive = 0;
        let mut pbuf = [0u8; PID_STAT];
        for t in &mut self.targets {
            let Some(file) = &t.file else { continue };
            // A kept-open stat file of an exited process fails with ESRCH instead of silently
            // showing a reused pid.
            match parse_pid_stat(ReadAt::start(file), &mut pbuf) {
                Ok(ticks) => {
                    self.target_ticks += ticks.saturating_sub(t.last_ticks);
                    t.last_ticks = ticks;
                    alive += 1;
                }
                Err(_) => t.file = None,
            }
        }
        Ok(CpuSample {
            host: HostCpu {
                at: now,
                busy: self.ticks_to_nanos(host.busy()),
                total: self.ticks_to_nanos(host.total()),
                cpus: self.cpus,
            },
            target: self.ticks_to_nanos(self.target_ticks),
            target_alive: alive,
        })
    }
}

#[cfg(test)]
mod tests {
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
        let before = src.sample(Nanos(1)).unwrap();
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
        let after = src.sample(Nanos(2)).unwrap();
        let used = after.target.saturating_sub(before.target);
        // USER_HZ ticks are 10 ms; allow for rounding at both ends.
        assert!(used >= Nanos(270_000_000), "{used:?}");
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
}
