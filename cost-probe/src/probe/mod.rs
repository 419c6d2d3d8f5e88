//! Loading the eBPF program, attaching its tracepoints, and reading its ring buffer.
pub mod event;
mod ring;
pub mod tracefs;

use std::{os::fd::AsFd, path::PathBuf, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use cost_probe_common::{ConnKey, TpOffsets};

pub use self::event::{ConnId, Direction, Event, OwnedEvent};

/// The object built by build.rs (empty when built with `AYA_BUILD_SKIP=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cost-probe"));

/// Syscalls whose exit the `sys_exit` program handles: every data syscall and accept. Each has
/// its own `syscalls:sys_exit_*` tracepoint, so the host's other syscalls run no program at all.
const EXIT_SYSCALLS: &[&str] = &[
    "sys_exit_read",
    "sys_exit_recvfrom",
    "sys_exit_readv",
    "sys_exit_recvmsg",
    "sys_exit_write",
    "sys_exit_sendto",
    "sys_exit_writev",
    "sys_exit_sendmsg",
    "sys_exit_sendfile64",
    "sys_exit_accept",
    "sys_exit_accept4",
];

/// (program, category, tracepoints it attaches to).
const PROGRAMS: &[(&str, &str, &[&str])] = &[
    ("sys_exit", "syscalls", EXIT_SYSCALLS),
    ("enter_close", "syscalls", &["sys_enter_close"]),
    ("sched_fork", "sched", &["sched_process_fork"]),
    ("sched_exit", "sched", &["sched_process_exit"]),
];

/// The agent's exec watch (see [`Probe::watch_exec`]).
const EXEC: (&str, &str, &str) = ("sched_exec", "sched", "sched_process_exec");

/// Every tracefs tracepoint the probe attaches to, as `category/name` (for `doctor`; the
/// `sys_exit` program reads the task's saved registers through BTF-typed helpers, so it needs
/// vmlinux BTF too, which `doctor` checks).
pub fn tracepoints() -> impl Iterator<Item = (&'static str, &'static str)> {
    PROGRAMS
        .iter()
        .flat_map(|(_, cat, tps)| tps.iter().map(move |tp| (*cat, *tp)))
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "this cost-probe was built without its eBPF program (AYA_BUILD_SKIP); rebuild after `cargo xtask setup`"
    )]
    NoObject,
    #[error(
        "tracing needs root, or CAP_BPF and CAP_PERFMON (and CAP_SYS_ADMIN to mount tracefs); this process has {0}"
    )]
    Privileges(String),
    #[error(
        "tracefs is not mounted, and mounting it at {path} failed: {source}; mount it once as \
         root (`mount -t tracefs nodev {path}`) or run with CAP_SYS_ADMIN"
    )]
    Tracefs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", tracefs::unreadable_message(path, *mode, *uid))]
    TracefsUnreadable { path: PathBuf, mode: u32, uid: u32 },
    #[error("kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF) is needed: {0}")]
    Btf(String),
    #[error("tracepoint format {path}: {why}")]
    Format { path: PathBuf, why: String },
    #[error("loading the eBPF program: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: String,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("mapping the ring buffer: {0}")]
    MapRing(std::io::Error),
    #[error("polling the ring buffer: {0}")]
    Poll(std::io::Error),
}

/// Effective capabilities of this process (bit n = capability n), from /proc/self/status.
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Checks privileges before touching the kernel so the user gets one clear line.
pub fn check_privileges() -> Result<(), ProbeError> {
    const CAP_SYS_ADMIN: u64 = 21;
    const CAP_PERFMON: u64 = 38;
    const CAP_BPF: u64 = 39;
    let caps = effective_caps();
    let has = |c: u64| caps & (1 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        Ok(())
    } else {
        Err(ProbeError::Privileges(format!(
            "CapEff={caps:#x} (uid {})",
            // SAFETY: no preconditions.
            unsafe { libc::geteuid() }
        )))
    }
}

/// A loaded and attached probe.
pub struct Probe {
    // Keeps the programs and their links alive.
    ebpf: Ebpf,
    /// Owns the ring's fd (polled for wake-ups); records are read through `reader`.
    _ring: RingBuf<MapData>,
    reader: ring::Reader,
    lost: PerCpuArray<MapData, u64>,
    targets: BpfHashMap<MapData, u32, u8>,
    conns: BpfHashMap<MapData, ConnKey, u64>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    lost_seen: u64,
}

impl Probe {
    /// Loads the program with this kernel's tracepoint offsets and attaches every tracepoint.
    pub fn load() -> Result<Self, ProbeError> {
        if OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        check_privileges()?;
        raise_memlock();
        // The `sys_exit` program's helpers return BTF-typed kernel pointers: without vmlinux BTF
        // the verifier refuses it with a less helpful message.
        if let Err(e) = std::fs::metadata("/sys/kernel/btf/vmlinux") {
            return Err(ProbeError::Btf(e.to_string()));
        }
        let root = tracefs::ensure_mounted()?;
        let syscalls: Vec<&str> = tracepoints()
            .filter(|(c, _)| *c == "syscalls")
            .map(|(_, tp)| tp)
            .collect();
        let offsets: TpOffsets = tracefs::offsets(&root, &syscalls)?;
        log::debug!("tracepoint offsets: {offsets:?}");
        let mut ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &offsets, true)
            .load(OBJECT)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::debug!("eBPF logger unavailable: {e}");
                None
            }
        };
        for (name, category, tps) in PROGRAMS {
            let prog: &mut TracePoint = program(&mut ebpf, name)?;
            prog.load().map_err(|source| ProbeError::Program {
                name: (*name).into(),
                source,
            })?;
            for tp in *tps {
                prog.attach(category, tp)
                    .map_err(|source| ProbeError::Program {
                        name: format!("{name} → {category}:{tp}"),
                        source,
                    })?;
            }
        }
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
        };
        let ring = RingBuf::try_from(take(&mut ebpf, "EVENTS")?)?;
        let reader = ring::Reader::new(ring.as_fd(), cost_probe_common::RING_BYTES as usize)
            .map_err(ProbeError::MapRing)?;
        let lost = PerCpuArray::try_from(take(&mut ebpf, "LOST")?)?;
        let targets = BpfHashMap::try_from(take(&mut ebpf, "TARGETS")?)?;
        let conns = BpfHashMap::try_from(take(&mut ebpf, "CONNS")?)?;
        Ok(Self {
            ebpf,
            _ring: ring,
            reader,
            lost,
            targets,
            conns,
            logger,
            lost_seen: 0,
        })
    }

    /// Also reports every exec on the host ([`Event::Exec`]), so the agent checks a new process
    /// against its target rules at once.
    pub fn watch_exec(&mut self) -> Result<(), ProbeError> {
        let (name, category, tp) = EXEC;
        let prog: &mut TracePoint = program(&mut self.ebpf, name)?;
        prog.load()
            .and_then(|()| prog.attach(category, tp).map(drop))
            .map_err(|source| ProbeError::Program {
                name: format!("{name} → {category}:{tp}"),
                source,
            })
    }

    /// Starts tracing a process (by tgid).
    pub fn add_target(&mut self, tgid: u32) -> Result<(), ProbeError> {
        self.targets.insert(tgid, 1, 0)?;
        Ok(())
    }

    /// The traced process ids the kernel holds now: the targets added, and every process they
    /// forked since (exits remove them). May briefly include thread ids of live processes.
    #[must_use]
    pub fn targets(&self) -> Vec<u32> {
        self.targets.keys().filter_map(Result::ok).collect()
    }

    /// Registers a connection that was accepted before attach (found in /proc by `host::ProcFs`).
    pub fn add_conn(&mut self, conn: ConnId) -> Result<(), ProbeError> {
        let key = ConnKey {
            tgid: conn.tgid,
            fd: conn.fd as u32,
        };
        self.conns.insert(key, conn.id, 0)?;
        Ok(())
    }

    /// Stops tracing a connection the kernel could not classify and userspace found not TCP.
    pub fn forget_conn(&mut self, conn: ConnId) {
        let key = ConnKey {
            tgid: conn.tgid,
            fd: conn.fd as u32,
        };
        let _ = self.conns.remove(&key);
    }

    /// Waits up to `timeout` for the kernel to signal that the ring is filling, then hands every
    /// waiting record to `f`. Returns the number of records. The kernel wakes us only when a
    /// large batch has built up, so callers call this on a short timer.
    pub fn poll(&mut self, timeout: Duration, f: impl FnMut(&[u8])) -> Result<usize, ProbeError> {
        if !timeout.is_zero() {
            let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
            self.reader.wait(ms).map_err(ProbeError::Poll)?;
        }
        if let Some(logger) = self.logger.as_mut() {
            logger.flush();
        }
        Ok(self.reader.drain(f))
    }

    /// Records dropped in the kernel since the last call (ring buffer full).
    pub fn take_lost(&mut self) -> Result<u64, ProbeError> {
        let total: u64 = self.lost.get(&0, 0)?.iter().sum();
        let new = total.saturating_sub(self.lost_seen);
        self.lost_seen = total;
        Ok(new)
    }
}

/// The program `name` from the loaded object, as the program type it must be.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, ProbeError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| ProbeError::Format {
            path: PathBuf::from(name),
            why: "program missing from the object".into(),
        })?
        .try_into()
        .map_err(|source| ProbeError::Program {
            name: name.into(),
            source,
        })
}

fn raise_memlock() {
    // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones use memcg.
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to a local.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const rlim) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK");
    }
}
