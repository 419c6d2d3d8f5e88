//! `doctor`: what this host can trace and measure, and why not.
use std::{fmt::Write as _, path::Path};

use serde::Serialize;

use crate::{
    energy::{self, Roots},
    probe::{self, Probe, ProbeError, tracefs},
};

/// One check with its verdict in words.
#[derive(Debug, Serialize)]
pub struct Item {
    pub ok: bool,
    pub what: String,
    pub detail: String,
}

/// The tracing section.
#[derive(Debug, Serialize)]
pub struct TracingReport {
    pub kernel: String,
    pub items: Vec<Item>,
    /// Whether `cost-probe attach` can work on this host.
    pub attach_works: bool,
}

/// Everything `doctor` says.
#[derive(Debug, Serialize)]
pub struct Report {
    pub tracing: TracingReport,
    pub energy: energy::doctor::EnergyReport,
}

impl Report {
    /// Checks tracing (ending with a real load of the probe) and every energy source.
    #[must_use]
    pub fn new() -> Self {
        Self {
            tracing: tracing(),
            energy: energy::doctor::report(&Roots::default()),
        }
    }

    /// The report for a person.
    #[must_use]
    pub fn render(&self) -> String {
        render(&self.tracing, &self.energy)
    }
}

impl Default for Report {
    fn default() -> Self {
        Self::new()
    }
}

fn item(ok: bool, what: &str, detail: impl Into<String>) -> Item {
    Item {
        ok,
        what: what.to_owned(),
        detail: detail.into(),
    }
}

/// Checks everything `attach` needs, ending with a real load of the probe.
#[must_use]
#[expect(
    clippy::too_many_lines,
    reason = "a flat list of checks, each a few lines"
)]
pub fn tracing() -> TracingReport {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned());
    let mut items = Vec::new();
    let privileged = probe::check_privileges();
    items.push(match &privileged {
        Ok(()) => item(
            true,
            "privileges",
            "can load eBPF programs (CAP_BPF+CAP_PERFMON or root)",
        ),
        Err(e) => item(false, "privileges", e.to_string()),
    });
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    items.push(item(
        btf,
        "BTF",
        if btf {
            "/sys/kernel/btf/vmlinux present (the sys_exit program reads saved registers through it)"
        } else {
            "no /sys/kernel/btf/vmlinux: the sys_exit program reads the task's saved registers \
             through BTF-typed helpers and cannot load (needs a kernel built with \
             CONFIG_DEBUG_INFO_BTF)"
        },
    ));
    let root = match tracefs::lookup() {
        tracefs::Lookup::Found(r) => {
            items.push(item(true, "tracefs", format!("mounted at {}", r.display())));
            Some(r)
        }
        tracefs::Lookup::Unreadable { path, mode, uid } => {
            items.push(item(
                false,
                "tracefs",
                tracefs::unreadable_message(&path, mode, uid),
            ));
            None
        }
        tracefs::Lookup::Missing if privileged.is_ok() => match tracefs::ensure_mounted() {
            Ok(r) => {
                items.push(item(
                    true,
                    "tracefs",
                    format!("was not mounted; mounted it at {}", r.display()),
                ));
                Some(r)
            }
            Err(e) => {
                items.push(item(false, "tracefs", e.to_string()));
                None
            }
        },
        tracefs::Lookup::Missing => {
            items.push(item(
                false,
                "tracefs",
                "not mounted, and mounting it needs CAP_SYS_ADMIN",
            ));
            None
        }
    };
    if let Some(root) = &root {
        let missing: Vec<String> = probe::tracepoints()
            .filter(|(c, tp)| !root.join("events").join(c).join(tp).join("format").exists())
            .map(|(c, tp)| format!("{c}:{tp}"))
            .collect();
        let n = probe::tracepoints().count();
        items.push(if missing.is_empty() {
            item(
                true,
                "tracepoints",
                format!("all {n} tracefs tracepoints present (syscalls, sched)"),
            )
        } else {
            item(
                false,
                "tracepoints",
                format!("missing: {}", missing.join(", ")),
            )
        });
    }
    let kprobes = Path::new("/sys/kernel/tracing/kprobe_events").exists();
    items.push(item(
        true,
        "kprobes",
        if kprobes {
            "available (not used)"
        } else {
            "not available on this kernel (not needed: cost-probe uses tracepoints only)"
        },
    ));
    // The decisive check: load and attach the real program, then let it go.
    let load = if privileged.is_ok() && root.is_some() {
        match Probe::load() {
            Ok(p) => {
                drop(p);
                item(
                    true,
                    "eBPF probe",
                    "loaded and attached (every tracepoint), then detached",
                )
            }
            Err(e @ ProbeError::NoObject) => item(false, "eBPF probe", e.to_string()),
            Err(e) => item(false, "eBPF probe", format!("the kernel refused it: {e}")),
        }
    } else {
        item(false, "eBPF probe", "not tried (see above)")
    };
    let attach_works = load.ok;
    items.push(load);
    TracingReport {
        kernel,
        items,
        attach_works,
    }
}

fn render(t: &TracingReport, e: &energy::doctor::EnergyReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Request tracing (kernel {})", t.kernel);
    for i in &t.items {
        let _ = writeln!(
            s,
            "  [{}] {:<12} {}",
            if i.ok { " ok " } else { "FAIL" },
            i.what,
            i.detail
        );
    }
    let _ = writeln!(
        s,
        "  => {}\n",
        if t.attach_works {
            "`cost-probe attach --pid PID` will work on this host."
        } else {
            "`cost-probe attach` cannot work here until the failures above are fixed."
        }
    );
    s.push_str(&energy::doctor::render_human(e));
    s
}
