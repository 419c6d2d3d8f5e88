//! `cargo xtask gpu-check`: cost-probe on a real GPU server, checked against NVML and against the
//! server's own per-request compute log.
//!
//! The check itself is `tests/gpu/gpu_check.py` (stdlib, torch and nvidia-ml-py only), so that a
//! GPU machine without a Rust toolchain runs it the same way with a carried release binary:
//! `python3 tests/gpu/gpu_check.py --bin target/release/cost-probe --out DIR`. This builds that
//! binary and runs the script, passing its exit code through (0 pass, 1 a comparison out of
//! tolerance, 2 bad input or a missing prerequisite).
use std::{path::Path, process::Command};

use anyhow::Context as _;

/// The check script, relative to the workspace root.
pub const SCRIPT: &str = "tests/gpu/gpu_check.py";
/// The release binary the script attaches.
const BIN: &str = "target/release/cost-probe";

/// Builds the release binary unless `no_build`, then runs the script; returns its exit code.
pub fn run(out: &Path, no_build: bool, script_args: &[String]) -> anyhow::Result<i32> {
    if !no_build {
        super::setup(false)?;
        super::build_release()?;
    }
    if !super::have("python3") {
        eprintln!("gpu-check: python3 is not installed");
        return Ok(2);
    }
    let mut cmd = Command::new("python3");
    cmd.arg(SCRIPT)
        .args(["--bin", BIN, "--out"])
        .arg(out)
        .args(script_args);
    eprintln!("+ {}", super::show(&cmd));
    let status = cmd
        .status()
        .with_context(|| format!("spawning {}", super::show(&cmd)))?;
    // A script killed by a signal has no code: report it as a failed check, not as bad input.
    Ok(status.code().unwrap_or(1))
}
