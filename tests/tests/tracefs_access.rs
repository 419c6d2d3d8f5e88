//! `attach` by a non-root user with `CAP_BPF` and `CAP_PERFMON` when tracefs is mounted mode 0700
//! (the default): the syscall tracepoints are attached by their tracefs ids, so the user is told
//! what is wrong and what to do, and the way out it names works. Runs as root (it drops to uid
//! 65534 with `setpriv`) through `cargo xtask test`.
use std::{
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::{Command, Output},
};

use cost_probe_tests::{Proc, bin, require_kernel};

/// tracefs at the usual place, mounted and closed to others; `None` (with a note) otherwise.
fn closed_tracefs() -> Option<std::fs::Metadata> {
    let tracefs = Path::new("/sys/kernel/tracing");
    match std::fs::metadata(tracefs) {
        Ok(m) if !tracefs.join("events/syscalls").is_dir() || m.mode() & 0o007 != 0 => {
            eprintln!(
                "SKIPPED: tracefs is not mounted at {} or others may read it (mode {:o})",
                tracefs.display(),
                m.mode() & 0o7777
            );
            None
        }
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("SKIPPED: {}: {e}", tracefs.display());
            None
        }
    }
}

/// `cost-probe attach` of a `sleep` for a second as uid 65534 with the capabilities `caps`.
fn attach_as_nobody(caps: &str) -> Output {
    let target = Proc {
        child: Command::new("sleep").arg("30").spawn().expect("sleep"),
    };
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg(bin())
        .args(["attach", "--duration", "1", "--pid"])
        .arg(target.pid().to_string())
        .output()
        .expect("setpriv (util-linux)")
}

/// Regression (#10.12, attach side): with `CAP_BPF` and `CAP_PERFMON` and tracefs mounted mode 0700,
/// `attach` said "cannot mount tracefs" — it is mounted; this user may not read it.
#[test]
fn attach_with_bpf_caps_and_a_closed_tracefs_says_what_is_wrong_and_what_to_do() {
    require_kernel!();
    let Some(meta) = closed_tracefs() else {
        return;
    };
    let out = attach_as_nobody("+bpf,+perfmon");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("cannot mount"), "{err}");
    for want in [
        format!(
            "tracefs is mounted at /sys/kernel/tracing but not readable by this user (mode {:04o}, \
             owner uid {})",
            meta.mode() & 0o7777,
            meta.uid()
        ),
        "CAP_BPF and CAP_PERFMON are not enough".into(),
        "CAP_DAC_READ_SEARCH".into(),
    ] {
        assert!(err.contains(&want), "{want:?} not in {err:?}");
    }
}

/// The way out the message names first that needs no change to the mount: `CAP_DAC_READ_SEARCH`
/// with `CAP_BPF` and `CAP_PERFMON` attaches and ends with a summary.
#[test]
fn attach_with_bpf_caps_and_dac_read_search_works_with_a_closed_tracefs() {
    require_kernel!();
    if closed_tracefs().is_none() {
        return;
    }
    let out = attach_as_nobody("+bpf,+perfmon,+dac_read_search");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().any(|l| l.contains("\"type\":\"summary\"")),
        "{stdout}"
    );
}
