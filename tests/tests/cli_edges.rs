//! Bad input and hostile conditions at the edges of the command line (issue #10): each is one
//! clear `cost-probe: …` line on stderr, exit code 2 when the run never started, and a run that
//! ends by a signal still ends with its summary. Tests that load the probe run as root through
//! `cargo xtask test`; the others need no kernel.
use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use cost_probe_tests::{Attach, Client, Server, bin, require_kernel};

/// Runs cost-probe to completion.
fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin().display()))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts exit code 2 and a single stderr line, and returns that line.
fn one_line_exit_2(out: &Output) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("cost-probe: "), "{err}");
    err.trim_end().to_owned()
}

/// A rules directory with `files` (name, text).
fn rules_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// A child whose stderr lines arrive on a channel (echoed for the test log).
struct Lines {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Lines {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                eprintln!("[cost-probe] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for a line containing `text`; panics after 30 s.
    fn wait_for(&self, text: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(l) if l.contains(text) => return l,
                Ok(_) => {}
                Err(e) => panic!("no stderr line with {text:?}: {e}"),
            }
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for exit; returns the exit code and every stderr line not read yet.
    fn finish(mut self) -> (Option<i32>, Vec<String>) {
        let status = self.child.wait().unwrap();
        (status.code(), self.lines.iter().collect())
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Regression (#10.4): `--duration=-1`, `inf`, `NaN` and `1e300` panicked in a tokio worker
/// (`cannot convert float seconds to Duration`) and the run then ignored the duration.
#[test]
fn duration_minus_1_inf_nan_1e300_is_one_line_and_exit_2() {
    let pid = std::process::id().to_string();
    for (value, why) in [
        ("-1", "the number of seconds must be above 0"),
        ("0", "the number of seconds must be above 0"),
        ("inf", "the number of seconds must be finite"),
        ("NaN", "the number of seconds must be finite"),
        ("1e300", "at most 31536000 seconds (a year)"),
        ("soon", "expected a number of seconds"),
    ] {
        let out = run(&["attach", "--pid", &pid, &format!("--duration={value}")]);
        assert_eq!(
            one_line_exit_2(&out),
            format!("cost-probe: invalid value '{value}' for '--duration <SECONDS>': {why}")
        );
        assert!(out.stdout.is_empty());
    }
    // Also as two arguments: `-1` is the value, not an unknown flag.
    let out = run(&["attach", "--pid", &pid, "--duration", "-1"]);
    assert_eq!(
        one_line_exit_2(&out),
        "cost-probe: invalid value '-1' for '--duration <SECONDS>': the number of seconds must \
         be above 0"
    );
}

/// Regression (#10.5): `--pid` of a non-leader thread was accepted and recorded nothing.
#[test]
fn pid_of_a_thread_is_refused_naming_its_process() {
    let (tid_tx, tid_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let t = thread::spawn(move || {
        // SAFETY: gettid(2) has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        let _ = done_rx.recv();
    });
    let tid = tid_rx.recv().unwrap();
    let pid = std::process::id();
    let out = run(&["attach", "--pid", &tid.to_string()]);
    drop(done_tx);
    t.join().unwrap();
    assert_eq!(
        one_line_exit_2(&out),
        format!("cost-probe: pid {tid} is a thread of process {pid}: attach to {pid}")
    );
}

/// Regression (#10.5): `--pid 2` traced kthreadd and its kernel threads.
#[test]
fn pid_of_a_kernel_thread_is_refused() {
    // In a pid namespace pid 2 is no kernel thread, and kernel threads are not visible.
    let comm = std::fs::read_to_string("/proc/2/comm").unwrap_or_default();
    if comm.trim() != "kthreadd" {
        eprintln!("SKIPPED: pid 2 is not kthreadd here ({comm:?})");
        return;
    }
    assert_eq!(
        one_line_exit_2(&run(&["attach", "--pid", "2"])),
        "cost-probe: pid 2 is a kernel thread (kthreadd): nothing to trace"
    );
}

/// Regression (#10.6): rules accepted `max_watts_per_core = 1e308` and
/// `price_usd_per_kwh = 1e308`.
#[test]
fn rules_with_1e308_watts_or_price_exit_2_naming_file_line_and_column() {
    let pid = std::process::id().to_string();
    for (text, at, message) in [
        (
            "[cpu]\nmax_watts_per_core = 1e308\n",
            "2:22",
            "power per core must be between 0 and 1000 W, got 1e308",
        ),
        (
            "# site tariff\n[energy]\nprice_usd_per_kwh = 1e308\n",
            "3:21",
            "an electricity price must be between 0 and 10 $/kWh, got 1e308",
        ),
    ] {
        let dir = rules_dir(&[("10-site.toml", text)]);
        let d = dir.path().to_str().unwrap();
        let out = run(&["attach", "--pid", &pid, "--rules", d]);
        assert_eq!(
            one_line_exit_2(&out),
            format!("cost-probe: rules: {d}/10-site.toml:{at}: {message}")
        );
    }
}

/// Regression (#10.11): a dangling or looping `*.toml` symlink in the rules directory was
/// skipped silently. It stops `attach` and `agent` at start.
#[test]
fn dangling_or_looping_toml_symlink_in_rules_dir_exits_2_naming_it() {
    let pid = std::process::id().to_string();
    let dir = rules_dir(&[(
        "10-target.toml",
        "[[target]]\nname = \"t\"\ncmdline = \"no-such-server\"\n",
    )]);
    let d = dir.path().to_str().unwrap();
    let dangling = dir.path().join("20-gone.toml");
    std::os::unix::fs::symlink(dir.path().join("missing.toml"), &dangling).unwrap();
    let want = format!(
        "cost-probe: rules: {d}/20-gone.toml: cannot follow symlink to {d}/missing.toml: No such \
         file or directory (os error 2)"
    );
    assert_eq!(
        one_line_exit_2(&run(&["attach", "--pid", &pid, "--rules", d])),
        want
    );
    assert_eq!(
        one_line_exit_2(&run(&["agent", "--rules", d, "--metrics", "off"])),
        want
    );
    std::fs::remove_file(&dangling).unwrap();
    let looping = dir.path().join("30-loop.toml");
    std::os::unix::fs::symlink(&looping, &looping).unwrap();
    let line = one_line_exit_2(&run(&["agent", "--rules", d, "--metrics", "off"]));
    assert!(
        line.starts_with(&format!("cost-probe: rules: {d}/30-loop.toml: ")),
        "{line}"
    );
}

/// #10.11, the agent's reload: a dangling symlink that appears later fails the SIGHUP reload
/// with the file named, and the agent keeps the rules it has.
#[test]
fn dangling_toml_symlink_on_agent_reload_keeps_the_previous_rules() {
    require_kernel!();
    let dir = rules_dir(&[(
        "10-target.toml",
        "[[target]]\nname = \"t\"\ncmdline = \"no-such-server\"\n",
    )]);
    let d = dir.path().to_str().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["agent", "--rules", d, "--metrics", "off", "--output"])
        .arg(out.path().join("records.ndjson"));
    let agent = Lines::spawn(cmd);
    agent.wait_for("agent running");
    std::os::unix::fs::symlink(
        dir.path().join("missing.toml"),
        dir.path().join("20-gone.toml"),
    )
    .unwrap();
    agent.signal(libc::SIGHUP);
    let line = agent.wait_for("keeping the previous rules");
    assert_eq!(
        line,
        format!(
            "cost-probe: rules: {d}/20-gone.toml: cannot follow symlink to {d}/missing.toml: No \
             such file or directory (os error 2); keeping the previous rules"
        )
    );
    agent.signal(libc::SIGINT);
    let (code, _) = agent.finish();
    assert_eq!(code, Some(0));
}

/// Regression (#10.8): `--output /proc/version` or `/dev/full` failed with a bare
/// `Input/output error (os error 5)`, exit 1, only after attaching, naming no path (twice in
/// the agent). The output is opened (and tried with an empty write) before the probe loads.
#[test]
fn output_proc_version_or_dev_full_fails_before_attaching_naming_the_path() {
    let pid = std::process::id().to_string();
    let dir = rules_dir(&[(
        "10-target.toml",
        "[[target]]\nname = \"t\"\ncmdline = \"no-such-server\"\n",
    )]);
    let d = dir.path().to_str().unwrap();
    for output in ["/proc/version", "/dev/full"] {
        for args in [
            vec!["attach", "--pid", &pid, "--output", output],
            vec![
                "agent",
                "--rules",
                d,
                "--metrics",
                "off",
                "--output",
                output,
            ],
        ] {
            let line = one_line_exit_2(&run(&args));
            // Root can open /proc/version (the empty write fails); anyone else cannot open it.
            assert!(
                line.starts_with(&format!("cost-probe: cannot open {output}: ")),
                "{args:?}: {line}"
            );
        }
    }
}

/// #10.8, a write that fails during the run (here the file-size limit, as a full disk would):
/// exit 1, and one line that names the output, not a second one from the summary.
#[test]
fn write_error_during_the_run_names_the_output_once() {
    require_kernel!();
    let server = Server::python_sse();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("records.ndjson");
    let mut cmd = Command::new(bin());
    cmd.args([
        "attach",
        "--pid",
        &server.proc.pid().to_string(),
        "--output",
    ])
    .arg(&out);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // Writes past 1 byte fail with EFBIG instead of killing the process.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: 1,
                rlim_max: 1,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &raw const limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let probe = Lines::spawn(cmd);
    probe.wait_for("tracing pid");
    assert_eq!(
        Client::connect(server.port).get("/fixed?size=3").status,
        200
    );
    let (code, rest) = probe.finish();
    let errors: Vec<&String> = rest.iter().filter(|l| l.contains("records")).collect();
    assert_eq!(
        errors,
        [&format!(
            "cost-probe: writing records to {}: File too large (os error 27)",
            out.display()
        )],
        "{rest:?}"
    );
    assert_eq!(code, Some(1));
}

/// Regression (#10.10): SIGHUP ended `attach` with exit 129, no summary, and the last
/// interval's records lost. A hangup ends the run as SIGINT does.
#[test]
fn sighup_ends_attach_with_its_records_and_summary() {
    require_kernel!();
    let server = Server::python_sse();
    let probe = Attach::start(server.proc.pid(), &[]);
    let mut c = Client::connect(server.port);
    assert_eq!(c.get("/fixed?size=3").status, 200);
    // Let the consumer drain what the kernel already has (it polls every 10 ms).
    thread::sleep(Duration::from_millis(100));
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(probe.pid() as i32, libc::SIGHUP) };
    // `wait` asserts exit code 0.
    let records = probe.wait(Duration::from_secs(30));
    assert_eq!(records.requests().len(), 1);
    assert_eq!(records.summary()["totals"]["requests"], 1);
}

/// Regression (#10.12): `doctor` as an unprivileged user said "tracefs not mounted" when it is
/// mounted with mode 0700 (the default).
#[test]
fn doctor_unprivileged_says_tracefs_is_mounted_but_not_readable() {
    use std::os::unix::fs::MetadataExt as _;
    require_kernel!();
    let tracefs = Path::new("/sys/kernel/tracing");
    let Ok(meta) = std::fs::metadata(tracefs) else {
        eprintln!("SKIPPED: no /sys/kernel/tracing");
        return;
    };
    if !tracefs.join("events/syscalls").is_dir() || meta.mode() & 0o007 != 0 {
        eprintln!(
            "SKIPPED: tracefs is not mounted at {} or others may read it (mode {:o})",
            tracefs.display(),
            meta.mode() & 0o7777
        );
        return;
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin())
        .arg("doctor")
        .output()
        .expect("setpriv (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "attach cannot work: {text}");
    let line = text
        .lines()
        .find(|l| l.contains("] tracefs "))
        .unwrap_or_else(|| panic!("no tracefs line: {text}"));
    assert!(!line.contains("not mounted"), "{line}");
    assert!(
        line.contains(&format!(
            "mounted at /sys/kernel/tracing but not readable by this user (mode {:04o}, owner \
             uid {})",
            meta.mode() & 0o7777,
            meta.uid()
        )),
        "{line}"
    );
}
