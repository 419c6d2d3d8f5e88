//! `cargo xtask bench overhead`: what tracing costs the traced server, per request.
//!
//! nginx (1 worker) serves a tiny file under wrk keep-alive load, the worst case for a syscall
//! tracer (a few µs of work per request, 3–4 traced syscalls). Modes alternate round by round so
//! drift on these shared machines hits all of them alike:
//! - `untraced`: nothing attached;
//! - `bpftrace`: a minimal counter on the same syscall tracepoints, filtered to the worker —
//!   the floor any syscall tracer pays;
//! - `cost-probe`: `cost-probe attach` on the master (so the worker is traced as a descendant).
//!
//! The figure is the worker's CPU time per request from /proc/PID/schedstat (ns, steadier than
//! throughput on 2 shared cores), plus cost-probe's own CPU time per request.
use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use cost_probe_tests::{Attach, Nginx, Proc};

/// Syscall tracepoints cost-probe attaches (the bpftrace floor uses the same set).
const TRACEPOINTS: &[&str] = &[
    "read",
    "recvfrom",
    "readv",
    "recvmsg",
    "write",
    "sendto",
    "writev",
    "sendmsg",
    "sendfile64",
    "accept",
    "accept4",
    "close",
];

pub fn run(which: &str, secs: u64, rounds: u32) -> anyhow::Result<()> {
    match which {
        "overhead" => overhead(secs, rounds),
        "micro" => crate::run(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
                "bench",
                "-p",
                "cost-probe",
            ]),
        ),
        other => bail!("unknown benchmark {other:?} (overhead, micro)"),
    }
}

/// CPU time (ns) of every thread of `pid`.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Runs wrk and returns the requests it completed.
fn wrk(port: u16, secs: u64) -> anyhow::Result<u64> {
    let out = Command::new("wrk")
        .args(["-t1", "-c8", &format!("-d{secs}s")])
        .arg(format!("http://127.0.0.1:{port}/t"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let l = l.trim();
            l.contains("requests in")
                .then(|| l.split_whitespace().next()?.parse().ok())
                .flatten()
        })
        .with_context(|| format!("no request count in wrk output:\n{text}"))
}

#[derive(Default, Clone)]
struct Totals {
    requests: u64,
    worker_ns: u64,
    tracer_ns: u64,
}

fn bpftrace(worker: u32) -> anyhow::Result<Proc> {
    let probes: Vec<String> = TRACEPOINTS
        .iter()
        .flat_map(|s| {
            [
                format!("tracepoint:syscalls:sys_enter_{s}"),
                format!("tracepoint:syscalls:sys_exit_{s}"),
            ]
        })
        .collect();
    let script = format!(
        "{} /pid == {worker}/ {{ @n = count(); }}",
        probes.join(",\n")
    );
    let mut child = Command::new("bpftrace")
        .args(["-q", "-e", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning bpftrace")?;
    // bpftrace attaches before it starts running the script; give it time to load.
    std::thread::sleep(Duration::from_secs(3));
    if let Some(status) = child.try_wait()? {
        bail!("bpftrace exited early: {status}");
    }
    Ok(Proc { child })
}

fn overhead(secs: u64, rounds: u32) -> anyhow::Result<()> {
    crate::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "build",
            "--release",
            "-p",
            "cost-probe",
        ]),
    )?;
    // SAFETY: std::env::set_var before spawning threads of our own.
    unsafe { std::env::set_var("COST_PROBE_BIN", "target/release/cost-probe") };
    let nginx = Nginx::start(1, &[("t", b"ok")]);
    let worker = *nginx.workers().first().context("nginx has no worker")?;
    let modes = ["untraced", "bpftrace", "cost-probe"];
    let mut totals = vec![Totals::default(); modes.len()];
    wrk(nginx.port, 1)?; // warm-up
    for round in 0..rounds {
        for (m, mode) in modes.iter().enumerate() {
            let tracer: Option<(u32, Box<dyn FnOnce()>)> = match *mode {
                "bpftrace" => {
                    let p = bpftrace(worker)?;
                    Some((p.pid(), Box::new(move || drop(p))))
                }
                "cost-probe" => {
                    let a = Attach::start(nginx.master.pid(), &[]);
                    Some((a.pid(), Box::new(move || drop(a.stop()))))
                }
                _ => None,
            };
            let tracer_pid = tracer.as_ref().map(|t| t.0);
            let (w0, t0) = (cpu_ns(worker), tracer_pid.map_or(0, cpu_ns));
            let n = wrk(nginx.port, secs)?;
            let (w1, t1) = (cpu_ns(worker), tracer_pid.map_or(0, cpu_ns));
            if let Some((_, stop)) = tracer {
                stop();
            }
            let t = &mut totals[m];
            t.requests += n;
            t.worker_ns += w1 - w0;
            t.tracer_ns += t1 - t0;
            eprintln!(
                "round {round} {mode:>10}: {n} requests, worker {:.2} µs/req, tracer {:.2} µs/req",
                (w1 - w0) as f64 / n as f64 / 1e3,
                (t1 - t0) as f64 / n as f64 / 1e3
            );
        }
    }
    let per = |t: &Totals, ns: u64| ns as f64 / t.requests as f64 / 1e3;
    let base = per(&totals[0], totals[0].worker_ns);
    let mut report = String::from(
        "mode        requests/s   worker µs/req   added µs/req   ratio   tracer µs/req\n",
    );
    for (mode, t) in modes.iter().zip(&totals) {
        let w = per(t, t.worker_ns);
        let _ = writeln!(
            report,
            "{mode:<10} {:>11.0} {w:>15.2} {:>14.2} {:>7.3} {:>15.2}",
            t.requests as f64 / (secs * u64::from(rounds)) as f64,
            w - base,
            w / base,
            per(t, t.tracer_ns),
        );
    }
    println!("{report}");
    std::fs::create_dir_all("target/bench")?;
    std::fs::write("target/bench/overhead.txt", &report)?;
    Ok(())
}
