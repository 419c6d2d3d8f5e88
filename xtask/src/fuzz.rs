//! `cargo xtask fuzz [--secs N] [TARGET…]`: the cargo-fuzz targets in `fuzz/`, each for N
//! seconds from its committed corpus, and what libFuzzer says it ran.
//!
//! The targets build with nightly's coverage instrumentation and no sanitizer (`-s none`): the
//! code under test is safe Rust, so panics and the invariants the targets assert are what a run
//! looks for, and without a sanitizer builds and executions are several times faster.
//! `fuzz/` is its own workspace (its own `Cargo.lock` and `target/`), so nothing here touches
//! the root build.
//!
//! A run reads `fuzz/corpus/TARGET` (committed, kept small with `cargo fuzz cmin`) and writes
//! what it finds to `fuzz/target/corpus/TARGET`, so the committed corpus changes only when
//! someone minimizes new inputs into it. A crash or a failed invariant leaves its input in
//! `fuzz/artifacts/TARGET/` and fails the command.
use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{run as run_cmd, show, succeeds};

/// Every target in `fuzz/fuzz_targets/`.
pub const TARGETS: [&str; 4] = ["spans", "scanners", "rules", "record"];
/// cargo-fuzz, built with `--locked`, like bpf-linker.
const CARGO_FUZZ: &str = "0.13.2";
/// An input that runs longer than this is reported as a hang (a crash).
const TIMEOUT_SECS: u64 = 10;

/// Runs each of `targets` (all of them when empty) for `secs` seconds.
pub fn run(secs: u64, targets: &[String]) -> anyhow::Result<()> {
    let targets: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    if let Some(t) = targets.iter().find(|t| !TARGETS.contains(t)) {
        bail!(
            "no fuzz target {t:?}: the targets are {}",
            TARGETS.join(", ")
        );
    }
    install()?;
    // The fuzz crate is outside the root workspace, so `cargo fmt --all` does not see it.
    run_cmd(
        Command::new("cargo")
            .args(["fmt", "--check", "--manifest-path", "fuzz/Cargo.toml"])
            .env_remove("CARGO"),
    )?;
    // One build for every target (they share the instrumented cost-probe).
    run_cmd(cargo_fuzz().args(["build", "-s", "none"]))?;
    for t in targets {
        target(t, secs)?;
    }
    Ok(())
}

/// `cargo +nightly fuzz` with the environment a nested cargo needs: not the stable cargo
/// that runs xtask, and no eBPF object (the targets never load one).
fn cargo_fuzz() -> Command {
    let mut c = Command::new("cargo");
    c.args(["+nightly", "fuzz"])
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("AYA_BUILD_SKIP", "1");
    c
}

/// Nightly and cargo-fuzz at its pinned version, each only if missing.
fn install() -> anyhow::Result<()> {
    if !succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .env_remove("CARGO")
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout).trim() == format!("cargo-fuzz {CARGO_FUZZ}")
        });
    if !have {
        run_cmd(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ,
            "--locked",
            "--force",
        ]))?;
    }
    Ok(())
}

/// What libFuzzer reported at the end of a run.
#[derive(Debug, Default, PartialEq, Eq)]
struct Stats {
    executions: u64,
    per_sec: u64,
}

/// `stat::number_of_executed_units` and `stat::average_exec_per_sec` from libFuzzer's
/// `-print_final_stats=1` lines.
fn final_stats(log: &str) -> Option<Stats> {
    let stat = |name: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some(Stats {
        executions: stat("stat::number_of_executed_units:")?,
        per_sec: stat("stat::average_exec_per_sec:").unwrap_or(0),
    })
}

fn target(name: &str, secs: u64) -> anyhow::Result<()> {
    let committed = PathBuf::from(format!("fuzz/corpus/{name}"));
    let found = PathBuf::from(format!("fuzz/target/corpus/{name}"));
    fs::create_dir_all(&found).with_context(|| format!("creating {}", found.display()))?;
    let log_path = PathBuf::from(format!("fuzz/target/fuzz-{name}.log"));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = cargo_fuzz();
    // The first corpus directory is where libFuzzer writes new inputs.
    cmd.args(["run", "-s", "none", name])
        .arg(&found)
        .arg(&committed)
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-timeout={TIMEOUT_SECS}"))
        .arg("-print_final_stats=1")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    eprintln!("+ {} (log: {})", show(&cmd), log_path.display());
    let started = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("spawning {}", show(&cmd)))?;
    let elapsed = started.elapsed().as_secs_f64();
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        for l in tail.into_iter().rev() {
            eprintln!("  {l}");
        }
        bail!(
            "fuzz target {name} failed ({status}); the input is in fuzz/artifacts/{name}/, \
             rerun it with `cargo +nightly fuzz run -s none {name} <input>`"
        );
    }
    let ran =
        final_stats(&text).with_context(|| format!("no final stats in {}", log_path.display()))?;
    println!(
        "fuzz {name}: {} executions in {elapsed:.0} s ({} per s), no crash; new inputs in {}",
        ran.executions,
        ran.per_sec,
        found.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn reads_libfuzzers_final_stats() {
        let log = "#1024\tpulse  cov: 12\nDone 4 runs in 1 second(s)\n\
                   stat::number_of_executed_units: 527100\n\
                   stat::average_exec_per_sec:     8640\n\
                   stat::new_units_added:          12\n";
        assert_eq!(
            final_stats(log),
            Some(Stats {
                executions: 527_100,
                per_sec: 8640
            })
        );
        assert_eq!(final_stats("INFO: Seed: 1\n"), None);
    }

    #[test]
    fn every_target_has_a_source_and_a_corpus() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for t in TARGETS {
            assert!(
                root.join(format!("fuzz/fuzz_targets/{t}.rs")).is_file(),
                "{t}"
            );
            assert!(root.join(format!("fuzz/corpus/{t}")).is_dir(), "{t}");
        }
    }
}
