//! What this host can measure, and why not: data for `cost-probe doctor`.
use std::{fmt::Write as _, path::PathBuf, time::Duration};

use serde::Serialize;

use super::{
    Roots, SourceKind,
    cputime::CpuTimeSource,
    nvml::{NvmlBackend, NvmlError, RealNvml, explain_init_error},
    perf_power::{self, OpenAttempt},
    rapl::{self, ZoneStatus},
};

/// Outcome of one capability check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum Check {
    Works,
    NotSupported,
    Failed(String),
}

impl<T> From<Result<T, NvmlError>> for Check {
    fn from(r: Result<T, NvmlError>) -> Self {
        match r {
            Ok(_) => Self::Works,
            Err(NvmlError::NotSupported) => Self::NotSupported,
            Err(e) => Self::Failed(e.to_string()),
        }
    }
}

impl Check {
    fn words(&self) -> String {
        match self {
            Self::Works => "works".to_owned(),
            Self::NotSupported => "not supported".to_owned(),
            Self::Failed(why) => format!("fails ({why})"),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct GpuReport {
    pub index: u32,
    pub name: Option<String>,
    pub uuid: Option<String>,
    pub power_limit_w: Option<f64>,
    pub energy_counter: Check,
    pub power_usage: Check,
    pub utilization: Check,
    pub process_utilization: Check,
    pub running_processes: Check,
    /// How its energy will be measured, in words.
    pub energy_method: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct NvmlReport {
    pub loaded: bool,
    pub message: String,
    pub gpus: Vec<GpuReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ZoneReport {
    pub zone: String,
    pub name: String,
    pub id: String,
    pub readable: bool,
    pub status: String,
    pub max_energy_range_uj: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RaplReport {
    pub root: PathBuf,
    pub present: bool,
    pub zones: Vec<ZoneReport>,
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct PerfEventReport {
    pub name: String,
    pub config: Option<u64>,
    pub problem: Option<String>,
    pub opens: Vec<OpenAttempt>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PerfReport {
    pub present: bool,
    pub pmu_type: Option<u32>,
    pub cpus: Vec<usize>,
    pub events: Vec<PerfEventReport>,
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct CpuTimeReport {
    pub proc_root: PathBuf,
    pub works: bool,
    pub cpus: u32,
    pub message: String,
}

/// The energy section of `cost-probe doctor`.
#[derive(Clone, Debug, Serialize)]
pub struct EnergyReport {
    pub nvml: NvmlReport,
    pub rapl: RaplReport,
    pub perf_power: PerfReport,
    pub cpu_time: CpuTimeReport,
    /// What will measure CPU energy: powercap, perf-power, cpu-model, or nothing.
    pub cpu_energy_source: Option<SourceKind>,
    pub cpu_energy: String,
}

/// Probes the real host under `roots`.
#[must_use]
pub fn report(roots: &Roots) -> EnergyReport {
    let nvml =
        RealNvml::init(roots.nvml_lib.as_deref()).map(|b| Box::new(b) as Box<dyn NvmlBackend>);
    report_with_nvml(roots, nvml)
}

/// Like [`report`] with a given NVML backend (or its init error).
#[must_use]
pub fn report_with_nvml(
    roots: &Roots,
    nvml: Result<Box<dyn NvmlBackend>, NvmlError>,
) -> EnergyReport {
    report_inner(roots, nvml, rapl::LIVENESS_WINDOW)
}

fn report_inner(
    roots: &Roots,
    nvml: Result<Box<dyn NvmlBackend>, NvmlError>,
    window: Duration,
) -> EnergyReport {
    let nvml = nvml_report(nvml);
    let rapl = rapl_report(roots, window);
    let perf_power = perf_report(roots, window);
    let cpu_time = match CpuTimeSource::open(&roots.proc) {
        Ok(c) => CpuTimeReport {
            proc_root: roots.proc.clone(),
            works: true,
            cpus: c.cpus(),
            message: c.describe(),
        },
        Err(e) => CpuTimeReport {
            proc_root: roots.proc.clone(),
            works: false,
            cpus: 0,
            message: format!("CPU time unreadable, so CPU energy cannot be split: {e}"),
        },
    };
    let perf_opened = perf_power
        .events
        .iter()
        .flat_map(|e| &e.opens)
        .any(|o| o.error.is_none());
    let (cpu_energy_source, cpu_energy) = if rapl.zones.iter().any(|z| z.readable) {
        (
            Some(SourceKind::Powercap),
            "CPU energy measured by RAPL through powercap".to_owned(),
        )
    } else if perf_opened {
        (
            Some(SourceKind::PerfPower),
            "CPU energy measured by RAPL through the perf power PMU".to_owned(),
        )
    } else if cpu_time.works {
        (
            Some(SourceKind::CpuModel),
            "No RAPL here: CPU energy is estimated by the CPU power model (idle and max watts \
             per CPU from rules × host CPU utilisation from cpuidle residency, /proc/stat as the \
             fallback); records flag it as estimated"
                .to_owned(),
        )
    } else {
        (None, "CPU energy is not measured".to_owned())
    };
    EnergyReport {
        nvml,
        rapl,
        perf_power,
        cpu_time,
        cpu_energy_source,
        cpu_energy,
    }
}

fn nvml_report(nvml: Result<Box<dyn NvmlBackend>, NvmlError>) -> NvmlReport {
    let mut b = match nvml {
        Ok(b) => b,
        Err(e) => {
            return NvmlReport {
                loaded: false,
                message: explain_init_error(&e),
                gpus: Vec::new(),
            };
        }
    };
    let count = match b.device_count() {
        Ok(n) => n,
        Err(e) => {
            return NvmlReport {
                loaded: true,
                message: format!(
                    "NVML loaded but cannot count GPUs ({e}), so GPU energy is not measured"
                ),
                gpus: Vec::new(),
            };
        }
    };
    let mut gpus = Vec::new();
    let mut scratch = Vec::new();
    let mut pids = Vec::new();
    for index in 0..count {
        let energy_counter = Check::from(b.total_energy_mj(index));
        let power_usage = Check::from(b.power_usage(index));
        let energy_method = match (&energy_counter, &power_usage) {
            (Check::Works, _) => "total-energy counter".to_owned(),
            (_, Check::Works) => {
                "power integrated over time (no energy counter on this GPU)".to_owned()
            }
            _ => "not measured (no energy counter and no power reading)".to_owned(),
        };
        gpus.push(GpuReport {
            index,
            name: b.name(index).ok(),
            uuid: b.uuid(index).ok(),
            power_limit_w: b.power_limit(index).ok().map(super::MilliWatts::watts),
            energy_counter,
            power_usage,
            utilization: Check::from(b.utilization(index)),
            process_utilization: Check::from(b.process_utilization(index, 0, &mut scratch)),
            running_processes: Check::from(b.running_compute_pids(index, &mut pids)),
            energy_method,
        });
    }
    NvmlReport {
        loaded: true,
        message: if count == 0 {
            "NVML loaded but reports no GPUs".to_owned()
        } else {
            format!("{count} NVIDIA GPU(s)")
        },
        gpus,
    }
}

fn rapl_report(roots: &Roots, window: Duration) -> RaplReport {
    match rapl::discover(&roots.powercap) {
        Ok(mut d) => {
            rapl::check_advancing(&mut d, window);
            let message = if d.readable().next().is_some() {
                format!("{} RAPL zone(s) readable", d.readable().count())
            } else {
                rapl::describe_absence(&d)
            };
            RaplReport {
                root: d.root.clone(),
                present: d.present,
                zones: d
                    .zones
                    .iter()
                    .map(|z| ZoneReport {
                        zone: z.zone.clone(),
                        name: z.name.clone(),
                        id: z.id.clone(),
                        readable: z.status == ZoneStatus::Readable,
                        status: z.status.describe(),
                        max_energy_range_uj: z.max_energy_range_uj,
                    })
                    .collect(),
                message,
            }
        }
        Err(e) => RaplReport {
            root: roots.powercap.clone(),
            present: true,
            zones: Vec::new(),
            message: format!("RAPL powercap unreadable: {e}"),
        },
    }
}

fn perf_report(roots: &Roots, window: Duration) -> PerfReport {
    let pmu = match perf_power::discover(&roots.event_source) {
        Ok(p) => p,
        Err(e) => {
            return PerfReport {
                present: true,
                pmu_type: None,
                cpus: Vec::new(),
                events: Vec::new(),
                message: format!("perf power PMU unreadable: {e}"),
            };
        }
    };
    let attempts = if pmu.present {
        perf_power::probe(&pmu, window)
    } else {
        Vec::new()
    };
    let message = if attempts.iter().any(|a| a.error.is_none()) {
        format!(
            "{} RAPL event(s) can be counted",
            attempts.iter().filter(|a| a.error.is_none()).count()
        )
    } else {
        perf_power::describe_absence(&pmu, &attempts)
    };
    PerfReport {
        present: pmu.present,
        pmu_type: pmu.pmu_type,
        cpus: pmu.cpus.clone(),
        events: pmu
            .events
            .iter()
            .map(|e| PerfEventReport {
                name: e.name.clone(),
                config: e.config,
                problem: e.problem.clone(),
                opens: attempts
                    .iter()
                    .filter(|a| a.event == e.name)
                    .cloned()
                    .collect(),
            })
            .collect(),
        message,
    }
}

/// The report as a person reads it.
#[must_use]
pub fn render_human(r: &EnergyReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "GPU energy (NVML)");
    let _ = writeln!(s, "  {}", r.nvml.message);
    for g in &r.nvml.gpus {
        let _ = writeln!(
            s,
            "  gpu:{} {} ({}){}",
            g.index,
            g.name.as_deref().unwrap_or("unknown model"),
            g.uuid.as_deref().unwrap_or("uuid unknown"),
            g.power_limit_w
                .map(|w| format!(", power limit {w:.0} W"))
                .unwrap_or_default()
        );
        let _ = writeln!(s, "    energy measured by: {}", g.energy_method);
        let _ = writeln!(
            s,
            "    energy counter {}; power {}; utilisation {}; per-process utilisation {}; \
             running processes {}",
            g.energy_counter.words(),
            g.power_usage.words(),
            g.utilization.words(),
            g.process_utilization.words(),
            g.running_processes.words()
        );
    }
    let _ = writeln!(
        s,
        "CPU energy (RAPL via powercap, {})",
        r.rapl.root.display()
    );
    let _ = writeln!(s, "  {}", r.rapl.message);
    for z in &r.rapl.zones {
        let id = if z.id.is_empty() { "-" } else { z.id.as_str() };
        let _ = writeln!(s, "  {id:<20} {} ({}): {}", z.zone, z.name, z.status);
    }
    let _ = writeln!(s, "CPU energy (RAPL via perf power PMU)");
    let _ = writeln!(s, "  {}", r.perf_power.message);
    for e in &r.perf_power.events {
        let config = e
            .config
            .map(|c| format!("event=0x{c:02x}"))
            .unwrap_or_default();
        match (&e.problem, e.opens.first()) {
            (Some(p), _) => {
                let _ = writeln!(s, "  {} {config}: not usable: {p}", e.name);
            }
            (None, Some(o)) => {
                let state = o
                    .error
                    .as_deref()
                    .map_or("counts".to_owned(), |er| format!("not usable: {er}"));
                let _ = writeln!(s, "  {} {config} on cpu{}: {state}", e.name, o.cpu);
            }
            (None, None) => {
                let _ = writeln!(s, "  {} {config}", e.name);
            }
        }
    }
    let _ = writeln!(s, "CPU time ({})", r.cpu_time.proc_root.display());
    let _ = writeln!(s, "  {}", r.cpu_time.message);
    let _ = writeln!(s, "CPU energy in use");
    let _ = writeln!(s, "  {}", r.cpu_energy);
    s
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::energy::nvml::replay::ReplayNvml;

    fn roots(powercap: PathBuf) -> Roots {
        Roots {
            proc: "/proc".into(),
            powercap,
            event_source: "/nonexistent/event_source".into(),
            nvml_lib: None,
        }
    }

    #[test]
    fn bare_vm_report_names_every_gap() {
        let r = report_with_nvml(
            &roots("/nonexistent/powercap".into()),
            Err(NvmlError::LibraryNotFound),
        );
        assert_eq!(r.cpu_energy_source, Some(SourceKind::CpuModel));
        let text = render_human(&r);
        assert!(
            text.contains(
                "No NVIDIA GPU: libnvidia-ml.so.1 not found, so GPU energy is not measured"
            )
        );
        assert!(text.contains("No RAPL: /nonexistent/powercap does not exist"));
        assert!(text.contains("No perf power PMU"));
        assert!(text.contains("estimated by the CPU power model"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["nvml"]["loaded"], false);
        assert_eq!(json["cpu_energy_source"], "cpu-model");
    }

    #[test]
    fn gpus_and_rapl_zones_are_listed_with_what_works() {
        let tmp = tempfile::tempdir().unwrap();
        let z = tmp.path().join("intel-rapl:0");
        fs::create_dir_all(&z).unwrap();
        fs::write(z.join("name"), "package-0\n").unwrap();
        fs::write(z.join("energy_uj"), "123\n").unwrap();
        fs::write(z.join("max_energy_range_uj"), "262143328850\n").unwrap();
        // A live counter: the doctor rejects zones that do not move.
        let energy = z.join("energy_uj");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = std::sync::Arc::clone(&stop);
        let writer = std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                // Replace atomically so no read sees a half-written file.
                let tmp = energy.with_extension("new");
                fs::write(&tmp, format!("{}\n", 123 + i * 1000)).unwrap();
                fs::rename(&tmp, &energy).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let replay = ReplayNvml::fixture("p100_power_only.ndjson");
        // A long window so a loaded machine cannot starve the writer through all of it.
        let r = report_inner(
            &roots(tmp.path().to_owned()),
            Ok(Box::new(replay)),
            Duration::from_millis(300),
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert_eq!(r.cpu_energy_source, Some(SourceKind::Powercap));
        let g = &r.nvml.gpus[0];
        assert_eq!(g.energy_counter, Check::NotSupported);
        assert_eq!(g.power_usage, Check::Works);
        assert_eq!(g.power_limit_w, Some(250.0));
        let text = render_human(&r);
        assert!(text.contains("gpu:0 Tesla P100-PCIE-16GB"));
        assert!(text.contains("power integrated over time"));
        assert!(text.contains("rapl:package-0"));
        assert!(text.contains("readable"));
    }

    /// The real host: must not panic, whatever it has.
    #[test]
    fn real_host_report_renders() {
        let text = render_human(&report(&Roots::default()));
        eprintln!("{text}");
        assert!(text.contains("CPU energy in use"));
    }
}
