//! RAPL through the perf `power` PMU, the second path to the same counters as powercap (it
//! works where powercap is absent or its files are unreadable but perf is allowed).
//!
//! Layout (kernel `arch/x86/events/rapl.c`, `Documentation/ABI/testing/sysfs-bus-event_source-
//! devices-events`): `power/type` holds the dynamic PMU type, `power/cpumask` one CPU per
//! package, and `power/events/energy-{cores,pkg,ram,gpu,psys}` hold `event=0x..` with `.scale`
//! (joules per count, 2^-32) and `.unit` (`Joules`) beside them. The kernel keeps the counts in
//! 64 bits (it folds the 32-bit MSR wraps itself), so they never wrap here.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;

use super::{
    Counter, CounterRange, Domain, DomainClass, DomainIdx, EnergyError, EnergySource, Reading,
    ReadingFlags, Scaler, SourceKind, TickCtx, read_text,
};
use crate::units::MicroJoules;

/// One event file of the PMU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PmuEvent {
    /// File name, e.g. `energy-pkg`.
    pub name: String,
    pub config: Option<u64>,
    pub scale: Option<String>,
    pub unit: Option<String>,
    /// Why it cannot be used, if it cannot.
    pub problem: Option<String>,
}

/// What `/sys/bus/event_source/devices/power` says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pmu {
    pub dir: PathBuf,
    pub present: bool,
    pub pmu_type: Option<u32>,
    /// One CPU per package (or die), in order; index i is socket i.
    pub cpus: Vec<usize>,
    pub events: Vec<PmuEvent>,
}

/// Parses a sysfs CPU list such as `0,28` or `0-1,4`.
#[must_use]
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?);
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

/// Parses an event spec like `event=0x02`; other terms (umask…) are not used by RAPL.
fn parse_event_config(text: &str) -> Option<u64> {
    let mut config = None;
    for term in text.trim().split(',') {
        let (k, v) = term.split_once('=')?;
        if k != "event" {
            return None;
        }
        let v = v.trim();
        config = Some(match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok()?,
            None => v.parse().ok()?,
        });
    }
    config
}

/// Reads the power PMU's description under `event_source_root`.
pub fn discover(event_source_root: &Path) -> Result<Pmu, EnergyError> {
    let dir = event_source_root.join("power");
    let mut pmu = Pmu {
        dir: dir.clone(),
        present: dir.join("type").exists(),
        pmu_type: None,
        cpus: Vec::new(),
        events: Vec::new(),
    };
    if !pmu.present {
        return Ok(pmu);
    }
    let ty = read_text(&dir.join("type"))?;
    pmu.pmu_type = Some(ty.parse().map_err(|_| EnergyError::Parse {
        path: dir.join("type"),
        what: "PMU type",
    })?);
    let mask = read_text(&dir.join("cpumask"))?;
    pmu.cpus = parse_cpu_list(&mask).ok_or_else(|| EnergyError::Parse {
        path: dir.join("cpumask"),
        what: "cpumask",
    })?;
    let events_dir = dir.join("events");
    let Ok(entries) = std::fs::read_dir(&events_dir) else {
        return Ok(pmu);
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("energy-") && !n.contains('.'))
        .collect();
    names.sort();
    for name in names {
        let spec = read_text(&events_dir.join(&name)).ok();
        let scale = read_text(&events_dir.join(format!("{name}.scale"))).ok();
        let unit = read_text(&events_dir.join(format!("{name}.unit"))).ok();
        let config = spec.as_deref().and_then(parse_event_config);
        let problem = if config.is_none() {
            Some(format!("cannot parse event spec {spec:?}"))
        } else if unit.as_deref() != Some("Joules") {
            Some(format!("unit is {unit:?}, expected Joules"))
        } else if scale
            .as_deref()
            .and_then(Scaler::from_joules_per_count)
            .is_none()
        {
            Some(format!("cannot parse scale {scale:?}"))
        } else if event_identity(&name, 0).is_none() {
            Some("unknown RAPL event".to_owned())
        } else {
            None
        };
        pmu.events.push(PmuEvent {
            name,
            config,
            scale,
            unit,
            problem,
        });
    }
    Ok(pmu)
}

/// Our domain id and class for an event on socket `socket`; `psys` is platform-wide.
fn event_identity(name: &str, socket: usize) -> Option<(String, DomainClass)> {
    let (stem, class) = match name {
        "energy-pkg" => ("package", DomainClass::CpuPackage),
        "energy-ram" => ("dram", DomainClass::Dram),
        "energy-cores" => ("core", DomainClass::Core),
        // PP1: integrated graphics, the part powercap calls `uncore`.
        "energy-gpu" => ("uncore", DomainClass::Uncore),
        "energy-psys" => return Some(("rapl:psys".to_owned(), DomainClass::Psys)),
        _ => return None,
    };
    Some((format!("rapl:{stem}-{socket}"), class))
}

/// Opens one system-wide counter of the PMU on `cpu`.
///
/// perf-event 0.4 has no variant for dynamic PMUs, so the type and config go straight into the
/// builder's `perf_event_attr`. Its defaults set `exclude_kernel` and `exclude_hv`, which
/// uncore-style PMUs like RAPL reject with EINVAL, so every exclude bit is cleared.
pub fn open_counter(
    pmu_type: u32,
    config: u64,
    cpu: usize,
) -> std::io::Result<perf_event::Counter> {
    let mut b = perf_event::Builder::new().any_pid().one_cpu(cpu);
    {
        let attrs = b.attrs_mut();
        attrs.type_ = pmu_type;
        attrs.config = config;
    }
    b.exclude_kernel(false)
        .exclude_hv(false)
        .exclude_idle(false)
        .exclude_user(false);
    let mut c = b.build()?;
    c.enable()?;
    Ok(c)
}

/// Result of trying one event on one CPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OpenAttempt {
    pub event: String,
    pub cpu: usize,
    pub id: String,
    /// `None` when it opened and read.
    pub error: Option<String>,
}

struct Open {
    counter: perf_event::Counter,
    tracker: Counter,
    scaler: Scaler,
    total: MicroJoules,
    failed: bool,
}

/// Reads the RAPL events of the perf power PMU.
pub struct PerfPowerSource {
    domains: Vec<Domain>,
    open: Vec<Open>,
    attempts: Vec<OpenAttempt>,
}

impl PerfPowerSource {
    /// Opens every usable event once per package (psys once) and keeps those that advance within
    /// `window` (zero keeps all). Fails with [`EnergyError::Unavailable`], in words, when none does.
    pub fn open(pmu: &Pmu, window: Duration) -> Result<Self, EnergyError> {
        if pmu.pmu_type.is_none() {
            return Err(EnergyError::Unavailable(describe_absence(pmu, &[])));
        }
        let me = Self::open_all(pmu, window);
        if me.open.is_empty() {
            return Err(EnergyError::Unavailable(describe_absence(
                pmu,
                &me.attempts,
            )));
        }
        Ok(me)
    }

    /// Opens what it can, recording every attempt; may end up with nothing open.
    fn open_all(pmu: &Pmu, window: Duration) -> Self {
        let mut me = Self {
            domains: Vec::new(),
            open: Vec::new(),
            attempts: Vec::new(),
        };
        let Some(ty) = pmu.pmu_type else {
            return me;
        };
        for ev in pmu.events.iter().filter(|e| e.problem.is_none()) {
            let (Some(config), Some(scale)) = (ev.config, ev.scale.as_deref()) else {
                continue;
            };
            for (socket, &cpu) in pmu.cpus.iter().enumerate() {
                if ev.name == "energy-psys" && socket > 0 {
                    break;
                }
                let Some((id, class)) = event_identity(&ev.name, socket) else {
                    continue;
                };
                let opened = open_counter(ty, config, cpu).and_then(|mut c| {
                    let first = c.read()?;
                    Ok((c, first))
                });
                match opened {
                    Ok((counter, first)) => {
                        let mut tracker = Counter::new(CounterRange::Monotonic);
                        tracker.observe(first);
                        me.attempts.push(OpenAttempt {
                            event: ev.name.clone(),
                            cpu,
                            id: id.clone(),
                            error: None,
                        });
                        me.domains.push(Domain {
                            id,
                            class,
                            source: SourceKind::PerfPower,
                            label: format!("perf power/{}/ on cpu{cpu}", ev.name),
                            flags: ReadingFlags::default(),
                            note: None,
                        });
                        me.open.push(Open {
                            counter,
                            tracker,
                            scaler: Scaler::from_joules_per_count(scale)
                                .unwrap_or_else(|| Scaler::new(0, 1)),
                            total: MicroJoules(0),
                            failed: false,
                        });
                    }
                    Err(e) => me.attempts.push(OpenAttempt {
                        event: ev.name.clone(),
                        cpu,
                        id,
                        error: Some(describe_open_error(&e)),
                    }),
                }
            }
        }
        me.drop_stuck(window);
        me
    }

    /// Drops counters that do not move within `window`. VMs commonly list RAPL events that
    /// open fine and count nothing (the hypervisor does not pass the MSRs through); reporting
    /// their 0 J as a measurement would hide the CPU model fallback.
    fn drop_stuck(&mut self, window: Duration) {
        if self.open.is_empty() || window.is_zero() {
            return;
        }
        let first: Vec<Option<u64>> = self
            .open
            .iter_mut()
            .map(|o| o.counter.read().ok())
            .collect();
        std::thread::sleep(window);
        let mut keep = first.iter().map(|_| true).collect::<Vec<_>>();
        for (i, (o, a)) in self.open.iter_mut().zip(&first).enumerate() {
            let b = o.counter.read().ok();
            if b.is_none() || b == *a {
                keep[i] = false;
                let id = &self.domains[i].id;
                if let Some(att) = self.attempts.iter_mut().find(|t| &t.id == id) {
                    att.error = Some(format!(
                        "opens, but counted nothing in {} ms: the hypervisor or CPU does not \
                         update this RAPL counter",
                        window.as_millis()
                    ));
                }
            }
        }
        let mut k = keep.iter();
        self.open.retain(|_| *k.next().unwrap_or(&false));
        let mut k = keep.iter();
        self.domains.retain(|_| *k.next().unwrap_or(&false));
    }

    /// Every open tried, including failures, for the doctor.
    #[must_use]
    pub fn attempts(&self) -> &[OpenAttempt] {
        &self.attempts
    }
}

/// Tries to open every event without keeping anything; for the doctor.
#[must_use]
pub fn probe(pmu: &Pmu, window: Duration) -> Vec<OpenAttempt> {
    PerfPowerSource::open_all(pmu, window).attempts
}

fn describe_open_error(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => format!(
            "{e}: not allowed (need root or CAP_PERFMON; see /proc/sys/kernel/perf_event_paranoid)"
        ),
        Some(libc::ENOENT | libc::EOPNOTSUPP | libc::EINVAL) => {
            format!("{e}: the kernel lists the event but the CPU does not count it (usual in VMs)")
        }
        _ => e.to_string(),
    }
}

/// Why the PMU gives us nothing, in words.
#[must_use]
pub fn describe_absence(pmu: &Pmu, attempts: &[OpenAttempt]) -> String {
    if !pmu.present {
        return format!("No perf power PMU: {} does not exist", pmu.dir.display());
    }
    if pmu.events.is_empty() {
        return "perf power PMU present but it lists no energy events".to_owned();
    }
    if let Some(a) = attempts.iter().find_map(|a| a.error.as_deref()) {
        return format!("perf power PMU present but no event is usable: {a}");
    }
    "perf power PMU present but none of its events is usable".to_owned()
}

impl EnergySource for PerfPowerSource {
    fn kind(&self) -> SourceKind {
        SourceKind::PerfPower
    }

    fn domains(&self) -> &[Domain] {
        &self.domains
    }

    fn sample(&mut self, ctx: &TickCtx<'_>, out: &mut Vec<Reading>) {
        for (i, o) in self.open.iter_mut().enumerate() {
            if o.failed {
                continue;
            }
            match o.counter.read() {
                Ok(raw) => {
                    let delta = o.scaler.step(o.tracker.observe(raw));
                    o.total += delta;
                    out.push(Reading {
                        domain: DomainIdx(i as u16),
                        at: ctx.now,
                        total: o.total,
                        delta,
                        flags: ReadingFlags::default(),
                    });
                }
                Err(e) => {
                    o.failed = true;
                    log::warn!("perf {}: read failed, disabled: {e}", self.domains[i].label);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// A two-socket Intel server's PMU as the kernel's rapl.c publishes it: the type number is
    /// assigned at boot (9 on the development VM), cpumask has the first CPU of each package,
    /// events carry the 2^-32 J scale and event codes from rapl.c (cores 1, pkg 2, ram 3,
    /// gpu 4, psys 5).
    fn server_pmu(root: &Path, events: &[(&str, &str)]) {
        let dir = root.join("power");
        fs::create_dir_all(dir.join("events")).unwrap();
        fs::write(dir.join("type"), "9\n").unwrap();
        fs::write(dir.join("cpumask"), "0,28\n").unwrap();
        for (name, spec) in events {
            fs::write(dir.join("events").join(name), format!("{spec}\n")).unwrap();
            fs::write(
                dir.join("events").join(format!("{name}.scale")),
                "2.3283064365386962890625e-10\n",
            )
            .unwrap();
            fs::write(dir.join("events").join(format!("{name}.unit")), "Joules\n").unwrap();
        }
    }

    #[test]
    fn two_socket_server_events_are_discovered() {
        let tmp = tempfile::tempdir().unwrap();
        server_pmu(
            tmp.path(),
            &[("energy-pkg", "event=0x02"), ("energy-ram", "event=0x03")],
        );
        let pmu = discover(tmp.path()).unwrap();
        assert_eq!(pmu.pmu_type, Some(9));
        assert_eq!(pmu.cpus, [0, 28]);
        let cfg: Vec<_> = pmu
            .events
            .iter()
            .map(|e| (e.name.as_str(), e.config))
            .collect();
        assert_eq!(cfg, [("energy-pkg", Some(2)), ("energy-ram", Some(3))]);
        assert!(pmu.events.iter().all(|e| e.problem.is_none()));
        assert_eq!(event_identity("energy-ram", 1).unwrap().0, "rapl:dram-1");
    }

    #[test]
    fn pmu_without_events_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        server_pmu(tmp.path(), &[]);
        let pmu = discover(tmp.path()).unwrap();
        assert!(pmu.present && pmu.events.is_empty());
        let err = PerfPowerSource::open(&pmu, Duration::ZERO)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("lists no energy events"), "{err}");
    }

    #[test]
    fn missing_pmu_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let pmu = discover(tmp.path()).unwrap();
        assert!(!pmu.present);
        assert!(describe_absence(&pmu, &[]).contains("No perf power PMU"));
    }

    #[test]
    fn bad_unit_or_spec_marks_event_unusable() {
        let tmp = tempfile::tempdir().unwrap();
        server_pmu(tmp.path(), &[("energy-pkg", "event=0x02,umask=0x1")]);
        fs::write(tmp.path().join("power/events/energy-pkg.unit"), "Watts\n").unwrap();
        let pmu = discover(tmp.path()).unwrap();
        assert!(pmu.events[0].problem.is_some());
    }

    #[test]
    fn cpu_lists_parse_ranges() {
        assert_eq!(parse_cpu_list("0-1,4\n").unwrap(), [0, 1, 4]);
        assert_eq!(parse_cpu_list("0").unwrap(), [0]);
        assert!(parse_cpu_list("x").is_none());
    }

    /// This host's real PMU: discovery must not fail; opening may (VMs list psys but cannot
    /// count it), and then the reason must be in words.
    #[test]
    fn real_host_pmu_is_described() {
        let pmu = discover(Path::new("/sys/bus/event_source/devices")).unwrap();
        match PerfPowerSource::open(&pmu, crate::energy::rapl::LIVENESS_WINDOW) {
            Ok(mut src) => {
                let mut out = Vec::new();
                let ctx = |t| TickCtx {
                    now: crate::units::Nanos(t),
                    cpu: None,
                };
                src.sample(&ctx(1), &mut out);
                std::thread::sleep(std::time::Duration::from_millis(200));
                out.clear();
                src.sample(&ctx(2), &mut out);
                eprintln!("perf power opened: {:?}; 200 ms: {out:?}", src.attempts());
                assert_eq!(out.len(), src.domains().len());
            }
            Err(e) => {
                let msg = e.to_string();
                eprintln!("perf power unavailable: {msg}");
                assert!(msg.contains("perf power PMU"), "{msg}");
            }
        }
    }
}
