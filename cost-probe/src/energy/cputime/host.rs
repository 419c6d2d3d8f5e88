//! The host's busy CPU time, from cpuidle residency where the kernel offers it.
//!
//! `/proc/stat` counts in `USER_HZ` ticks (10 ms), and with tick-based accounting its busy
//! figures are themselves sampled at `HZ`. The cpuidle driver's per-state `time` files count the
//! residency of every finished idle period in µs, so busy = elapsed − idle per CPU is exact to
//! the µs for CPUs that left idle during the interval. A CPU that stayed in one state the whole
//! interval (no idle exit) is ambiguous from cpuidle alone: it either ran all along or is still
//! idle, and cpuidle will book that idle only when the period ends. For those CPUs the interval
//! takes `/proc/stat`'s per-CPU idle (which does include the ongoing idle period), and the idle
//! so booked early is remembered (`credit`) and taken off when cpuidle books the period.
use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::HostCpu;
use crate::{
    energy::{EnergyError, ReadAt, parse_u64, read_into},
    units::Nanos,
};

/// Beyond this many cpuidle `time` files (online CPUs × idle states) a tick reads `/proc/stat`
/// only. Each file is one `pread` (≈ 1.5 µs measured on the 2-vCPU development VM, see
/// docs/design.md "CPU time"), so 24 files keep the host side near 40 µs per tick; a host with
/// more CPUs gets tick resolution, where its many CPUs make a 10 ms tick a small part of the
/// interval's busy time anyway.
pub const MAX_CPUIDLE_FILES: usize = 24;

/// Which mechanism measured an interval's host busy time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BusySource {
    /// Elapsed time minus cpuidle residency (µs), `/proc/stat` only for CPUs that never left an
    /// idle state during the interval.
    Cpuidle,
    /// `/proc/stat` busy ticks (10 ms).
    #[default]
    ProcStat,
}

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

    fn parse(fields: &[u8]) -> Option<Self> {
        let mut f = [0u64; 8];
        let mut n = 0;
        for field in fields.split(|&b| b == b' ').filter(|s| !s.is_empty()) {
            if n == f.len() {
                break;
            }
            f[n] = parse_u64(field)?;
            n += 1;
        }
        // Kernels since 2.6.11 print at least eight fields.
        (n >= 4).then_some(Self {
            user: f[0],
            nice: f[1],
            system: f[2],
            idle: f[3],
            iowait: f[4],
            irq: f[5],
            softirq: f[6],
            steal: f[7],
        })
    }
}

/// Parses `/proc/stat` content: the aggregate `cpu` line, and each `cpuN` line found in `buf`
/// handed to `per_cpu` (the buffer may end before them). Returns the aggregate and the number of
/// `cpuN` lines seen.
pub fn parse_proc_stat_cpus(
    r: impl io::Read,
    buf: &mut [u8],
    mut per_cpu: impl FnMut(u32, CpuTicks),
) -> io::Result<(CpuTicks, u32)> {
    let bytes = read_into(r, buf)?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "no cpu line in /proc/stat");
    let mut lines = bytes.split(|&b| b == b'\n');
    let first = lines.next().ok_or_else(bad)?;
    let total = first
        .strip_prefix(b"cpu ")
        .and_then(CpuTicks::parse)
        .ok_or_else(bad)?;
    let mut cpus = 0;
    for line in lines.take_while(|l| l.starts_with(b"cpu")) {
        let Some(sp) = line.iter().position(|&b| b == b' ') else {
            break;
        };
        let (Some(n), Some(t)) = (parse_u64(&line[3..sp]), CpuTicks::parse(&line[sp..])) else {
            // A line cut off by the end of the buffer.
            break;
        };
        per_cpu(n as u32, t);
        cpus += 1;
    }
    Ok((total, cpus))
}

/// Parses the aggregate `cpu` line; see [`parse_proc_stat_cpus`].
pub fn parse_proc_stat(r: impl io::Read, buf: &mut [u8]) -> io::Result<(CpuTicks, u32)> {
    parse_proc_stat_cpus(r, buf, |_, _| {})
}

/// Parses a sysfs CPU list (`0-3,8,10-11`).
#[must_use]
pub fn parse_cpu_list(s: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<u32>().ok()?..=b.parse::<u32>().ok()?),
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

struct IdleCpu {
    cpu: u32,
    /// One kept-open `time` file per idle state.
    states: Vec<File>,
    /// Sum of the states' residency at the last tick, µs.
    idle_us: u64,
    /// `/proc/stat` idle + iowait of this CPU now and at the last tick, ticks.
    stat_idle: u64,
    last_stat_idle: u64,
    seen: bool,
    /// Idle booked from `/proc/stat` ahead of cpuidle, ns.
    credit: u64,
}

/// The host side of [`super::CpuTimeSource`].
pub(super) struct HostClock {
    stat_path: PathBuf,
    stat: File,
    buf: Vec<u8>,
    tick_ns: u64,
    /// sysfs CPU dir (`/sys/devices/system/cpu`); `None` reads `/proc/stat` only.
    sys_cpu: Option<PathBuf>,
    online: Option<(File, Vec<u8>)>,
    idle: Vec<IdleCpu>,
    /// Why cpuidle is not used, when it is not.
    fallback: Option<String>,
    last_at: Nanos,
    last: CpuTicks,
    busy: Nanos,
    total: Nanos,
    cpus: u32,
}

const STAT_HEAD: usize = 512;
/// `/proc/stat` bytes per `cpuN` line, with room for ten 20-digit fields.
const STAT_LINE: usize = 224;

impl HostClock {
    pub(super) fn open(proc_root: &Path, sys_cpu: Option<&Path>) -> Result<Self, EnergyError> {
        let stat_path = proc_root.join("stat");
        let stat = File::open(&stat_path).map_err(|e| EnergyError::io(&stat_path, e))?;
        // Read enough to see every cpuN line (thousands of CPUs) once, at start-up.
        let mut big = vec![0u8; 1 << 20];
        let (last, cpus) = parse_proc_stat(ReadAt::start(&stat), &mut big)
            .map_err(|e| EnergyError::io(&stat_path, e))?;
        let ticks = procfs::ticks_per_second().max(1);
        let mut host = Self {
            stat_path,
            stat,
            buf: vec![0; STAT_HEAD],
            tick_ns: 1_000_000_000 / ticks,
            sys_cpu: sys_cpu.map(Path::to_owned),
            online: None,
            idle: Vec::new(),
            fallback: None,
            last_at: Nanos::ZERO,
            last,
            busy: Nanos::ZERO,
            total: Nanos::ZERO,
            cpus: cpus.max(1),
        };
        host.open_cpuidle();
        Ok(host)
    }

    /// The mechanism intervals use now, with the reason when it is the fallback.
    pub(super) fn source(&self) -> (BusySource, Option<&str>) {
        match &self.fallback {
            None => (BusySource::Cpuidle, None),
            Some(why) => (BusySource::ProcStat, Some(why)),
        }
    }

    pub(super) fn cpus(&self) -> u32 {
        self.cpus
    }

    fn open_cpuidle(&mut self) {
        self.idle.clear();
        self.online = None;
        match self.try_open_cpuidle() {
            Ok(()) => {
                self.fallback = None;
                self.buf.resize(STAT_HEAD + STAT_LINE * self.idle.len(), 0);
            }
            Err(why) => {
                self.idle.clear();
                self.fallback = Some(why);
                self.buf.truncate(STAT_HEAD);
            }
        }
    }

    fn try_open_cpuidle(&mut self) -> Result<(), String> {
        let Some(sys) = &self.sys_cpu else {
            return Err("cpuidle not configured".to_owned());
        };
        let online_path = sys.join("online");
        let text = std::fs::read_to_string(&online_path)
            .map_err(|e| format!("{}: {e}", online_path.display()))?;
        let cpus = parse_cpu_list(&text)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| format!("{}: cannot parse {text:?}", online_path.display()))?;
        let mut files = 0;
        for &cpu in &cpus {
            let dir = sys.join(format!("cpu{cpu}/cpuidle"));
            let mut states = Vec::new();
            for k in 0.. {
                let Ok(f) = File::open(dir.join(format!("state{k}/time"))) else {
                    break;
                };
                states.push(f);
            }
            if states.is_empty() {
                return Err(format!("no cpuidle states under {}", dir.display()));
            }
            files += states.len();
            if files > MAX_CPUIDLE_FILES {
                return Err(format!(
                    "more than {MAX_CPUIDLE_FILES} cpuidle files ({} CPUs): \
                     reading them every tick would cost more than it gains",
                    cpus.len()
                ));
            }
            let mut idle = IdleCpu {
                cpu,
                states,
                idle_us: 0,
                stat_idle: 0,
                last_stat_idle: 0,
                seen: false,
                credit: 0,
            };
            idle.idle_us =
                read_idle_us(&idle.states).map_err(|e| format!("{}: {e}", dir.display()))?;
            self.idle.push(idle);
        }
        let online = File::open(&online_path).map_err(|e| e.to_string())?;
        self.online = Some((online, text.into_bytes()));
        self.cpus = cpus.len() as u32;
        Ok(())
    }

    /// Reads the host's CPU time at `now` and folds this interval into the running totals.
    pub(super) fn sample(&mut self, now: Nanos) -> Result<HostCpu, EnergyError> {
        let idle = &mut self.idle;
        for c in idle.iter_mut() {
            c.seen = false;
        }
        let mut i = 0;
        let (cur, _) = parse_proc_stat_cpus(ReadAt::start(&self.stat), &mut self.buf, |n, t| {
            // Both lists are in CPU order.
            while i < idle.len() && idle[i].cpu < n {
                i += 1;
            }
            if let Some(c) = idle.get_mut(i).filter(|c| c.cpu == n) {
                c.stat_idle = t.idle + t.iowait;
                c.seen = true;
            }
        })
        .map_err(|e| EnergyError::io(&self.stat_path, e))?;
        let first = self.last_at == Nanos::ZERO;
        let elapsed = now.saturating_sub(self.last_at).0;
        let ticks = |a: u64, b: u64| a.saturating_sub(b) * self.tick_ns;
        let mut source = BusySource::ProcStat;
        let (mut busy, mut total) = (
            ticks(cur.busy(), self.last.busy()),
            ticks(cur.total(), self.last.total()),
        );
        if self.fallback.is_none() {
            match self.cpuidle_interval(elapsed, ticks(cur.steal, self.last.steal)) {
                Ok(Some(b)) => {
                    busy = b;
                    total = elapsed * u64::from(self.cpus);
                    source = BusySource::Cpuidle;
                }
                // CPUs went on- or offline: this interval is /proc/stat's; the next uses the new
                // set (reopening allocates, which only hotplug pays for).
                Ok(None) => self.open_cpuidle(),
                Err(e) => {
                    log::warn!("cpuidle unreadable, host busy time falls back to /proc/stat: {e}");
                    self.idle.clear();
                    self.fallback = Some(format!("cpuidle unreadable: {e}"));
                    self.buf.truncate(STAT_HEAD);
                }
            }
        }
        if !first {
            self.busy += Nanos(busy.min(total));
            self.total += Nanos(total);
        }
        self.last = cur;
        self.last_at = now;
        Ok(HostCpu {
            at: now,
            busy: self.busy,
            total: self.total,
            cpus: self.cpus,
            busy_source: source,
        })
    }

    /// Busy ns of the interval from cpuidle, or `None` when the online CPUs changed.
    fn cpuidle_interval(&mut self, elapsed: u64, steal: u64) -> io::Result<Option<u64>> {
        if let Some((file, raw)) = &self.online {
            let mut b = [0u8; 256];
            if read_into(ReadAt::start(file), &mut b)? != raw.as_slice() {
                return Ok(None);
            }
        }
        let tick_ns = self.tick_ns;
        let mut busy = 0u64;
        for c in &mut self.idle {
            if !c.seen {
                return Ok(None);
            }
            let idle_us = read_idle_us(&c.states)?;
            let booked = idle_us.saturating_sub(c.idle_us) * 1_000;
            let stat_idle = c.stat_idle.saturating_sub(c.last_stat_idle) * tick_ns;
            c.idle_us = idle_us;
            c.last_stat_idle = c.stat_idle;
            let idle = if booked > 0 {
                // Idle periods ended in this interval; the part of them already booked from
                // /proc/stat is not booked twice.
                let fresh = booked.saturating_sub(c.credit);
                c.credit = 0;
                fresh
            } else {
                // No idle exit: running all along or idle all along (or since some point).
                // /proc/stat's per-CPU idle tells which, at tick resolution.
                let idle = stat_idle.min(elapsed);
                c.credit += idle;
                idle
            };
            busy += elapsed - idle.min(elapsed);
        }
        Ok(Some(busy.saturating_sub(steal)))
    }
}

fn read_idle_us(states: &[File]) -> io::Result<u64> {
    let mut sum = 0;
    let mut buf = [0u8; 32];
    for f in states {
        let bytes = read_into(ReadAt::start(f), &mut buf)?;
        sum += parse_u64(bytes)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "cpuidle time"))?;
    }
    Ok(sum)
}
