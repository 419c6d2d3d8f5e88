//! `cargo xtask bench overhead`: what tracing costs the traced server, per request.
//!
//! nginx (1 worker) serves a tiny file under wrk keep-alive load, the worst case for a syscall
//! tracer (a few µs of work per request, 3–4 traced syscalls). Modes alternate round by round,
//! in an order that rotates each round, so drift on these shared machines and the position in a
//! round hit all of them alike:
//! - `untraced`: nothing attached;
//! - `bpftrace`: a minimal counter on the same syscall tracepoints, filtered to the worker —
//!   the floor any syscall tracer pays;
//! - `cost-probe`: `cost-probe attach` on the master (so the worker is traced as a descendant);
//! - `+otlp` (with `COST_PROBE_BENCH_OTLP=1`): the same, exporting every span and the metrics
//!   over OTLP/HTTP to a receiver in this process that answers 200 without decoding.
//!
//! The figure is the worker's CPU time per request from /proc/PID/schedstat (ns, steadier than
//! throughput on 2 shared cores), plus cost-probe's own CPU time per request, also as a share of
//! the same round's untraced worker's. `--header-bytes N` sends production-size headers.
use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use cost_probe_tests::{
    Attach, Client, Nginx, Proc,
    otlp::{Mode, Receiver},
};

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

pub fn run(which: &str, secs: u64, rounds: u32, header_bytes: usize) -> anyhow::Result<()> {
    match which {
        "overhead" => overhead(secs, rounds, header_bytes),
        "host-tax" => host_tax(secs, rounds),
        "soak" => soak(secs),
        "micro" => crate::run(crate::cargo().args(["bench", "-p", "cost-probe"])),
        "instructions" => instructions(),
        other => {
            bail!("unknown benchmark {other:?} (overhead, host-tax, soak, micro, instructions)")
        }
    }
}

/// Passes of the consumer bench counted by `instructions` (3,200 requests each).
const COUNTED_PASSES: u32 = 20;

/// `cargo xtask bench instructions`: the consumer bench's instructions per request, counted by
/// callgrind inside its `Replay::pass` only (after an uncounted warm-up). Unlike CPU time on
/// these VMs, the count does not drift: it tells a change to the consumer's hot path from the
/// machine's mood in one run. It leaves out what the count cannot see (cache misses, the ring,
/// the kernel's side of `write(2)`); `overhead` measures those. A second count runs the span
/// builder alone on the same events, which splits the whole into what comes before the meter
/// and what comes after it.
fn instructions() -> anyhow::Result<()> {
    crate::apt_install(&["valgrind"])?;
    let (whole, requests) = count_instructions("whole")?;
    let (spans, spans_requests) = count_instructions("spans")?;
    ensure!(
        spans_requests == requests,
        "the two stages carried different requests ({requests}, {spans_requests})"
    );
    let per = |n: u64| n / requests.max(1);
    let report = format!(
        "consumer: {} instructions per request ({whole} over {requests} requests in \
         {COUNTED_PASSES} passes; per function: callgrind_annotate --inclusive=yes {})\n\
         \x20 spans alone (HTTP heads, framing, payload scanners): {}\n\
         \x20 the rest (meter, ledger, pricing, tags, record, summary): {}",
        per(whole),
        callgrind_out("whole").display(),
        per(spans),
        per(whole.saturating_sub(spans)),
    );
    println!("{report}");
    Ok(())
}

fn callgrind_out(stage: &str) -> std::path::PathBuf {
    crate::workspace_root().join(format!("target/callgrind.consumer.{stage}.out"))
}

/// Instructions callgrind counts in `COUNTED_PASSES` passes of the consumer bench's `stage`,
/// and the requests those passes carried.
fn count_instructions(stage: &str) -> anyhow::Result<(u64, u64)> {
    let runner = format!(
        "target.'cfg(all())'.runner=['valgrind', '--tool=callgrind', \
         '--toggle-collect=consumer::Replay::pass', '--callgrind-out-file={}']",
        callgrind_out(stage).display()
    );
    let mut cmd = crate::cargo();
    cmd.args(["--config", &runner])
        .args(["bench", "-p", "cost-probe", "--bench", "consumer"])
        .env("COST_PROBE_BENCH_PASSES", COUNTED_PASSES.to_string())
        .env("COST_PROBE_BENCH_STAGE", stage);
    eprintln!("+ {}", crate::show(&cmd));
    let out = cmd
        .output()
        .context("running the consumer bench under callgrind")?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    if !out.status.success() {
        bail!(
            "the consumer bench ({stage}) under callgrind failed ({}):\n{stderr}",
            out.status
        );
    }
    let number = |text: &str, key: &str| -> Option<u64> {
        let rest = &text[text.find(key)? + key.len()..];
        let digits: String = rest
            .trim_start_matches([' ', ':'])
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == ',')
            .filter(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    let requests = number(&stdout, "requests ").context("the bench printed no request count")?;
    // One count per process callgrind reports on; a forked child that exits without exec
    // reports 0.
    let collected = stderr
        .match_indices("Collected")
        .filter_map(|(at, _)| number(&stderr[at..], "Collected"))
        .max()
        .context("callgrind printed no count")?;
    Ok((collected, requests))
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
fn wrk(port: u16, secs: u64, header_bytes: usize) -> anyhow::Result<u64> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c8", &format!("-d{secs}s")]);
    // Production-shaped headers: lines of at most 4 KiB (nginx's default buffers take 8 KiB a
    // line), like a JWT, cookies and gateway headers.
    let mut left = header_bytes;
    let mut i = 0;
    while left > 0 {
        let n = left.min(4096);
        cmd.arg("-H").arg(format!(
            "x-pad-{i}: {}",
            "a".repeat(n.saturating_sub(12).max(1))
        ));
        left -= n;
        i += 1;
    }
    let out = cmd
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

fn overhead(secs: u64, rounds: u32, header_bytes: usize) -> anyhow::Result<()> {
    crate::build_release()?;
    // SAFETY: std::env::set_var before spawning threads of our own.
    unsafe { std::env::set_var("COST_PROBE_BIN", "target/release/cost-probe") };
    let nginx = Nginx::start(1, &[("t", b"ok")]);
    let worker = *nginx.workers().first().context("nginx has no worker")?;
    // COST_PROBE_BENCH_ALT=path adds a fourth mode, another build of cost-probe, to compare two
    // versions in one run.
    let alt = std::env::var_os("COST_PROBE_BENCH_ALT").map(std::path::PathBuf::from);
    let mut modes = vec!["untraced", "bpftrace", "cost-probe"];
    if alt.is_some() {
        modes.push("alt");
    }
    let receiver =
        std::env::var_os("COST_PROBE_BENCH_OTLP").map(|_| Receiver::start(Mode::Discard));
    let endpoint = receiver.as_ref().map(Receiver::endpoint);
    if receiver.is_some() {
        modes.push("+otlp");
    }
    let mut totals = vec![Totals::default(); modes.len()];
    // Per round and mode: (worker µs/req, tracer µs/req).
    let mut per_round: Vec<Vec<(f64, f64)>> = Vec::new();
    wrk(nginx.port, 1, header_bytes)?; // warm-up
    for round in 0..rounds {
        let mut this_round = vec![(0.0, 0.0); modes.len()];
        // The order rotates round by round: a mode that always ran first (or right after
        // another) would carry that position's drift into every round (A/B runs of two builds
        // read higher for whichever ran first).
        for k in 0..modes.len() {
            let m = (k + round as usize) % modes.len();
            let mode = &modes[m];
            let tracer: Option<(u32, Box<dyn FnOnce()>)> = match *mode {
                "bpftrace" => {
                    let p = bpftrace(worker)?;
                    Some((p.pid(), Box::new(move || drop(p))))
                }
                "cost-probe" => {
                    let a = Attach::start(nginx.master.pid(), &[]);
                    Some((a.pid(), Box::new(move || drop(a.stop()))))
                }
                "+otlp" => {
                    let ep = endpoint
                        .as_deref()
                        .context("otlp mode without a receiver")?;
                    let bin = std::path::Path::new("target/release/cost-probe");
                    let a = Attach::start_env(
                        bin,
                        nginx.master.pid(),
                        &["--otlp-endpoint", ep],
                        &[("OTEL_METRIC_EXPORT_INTERVAL", "1000")],
                    );
                    Some((
                        a.pid(),
                        Box::new(move || {
                            let r = a.stop();
                            eprintln!("  otlp: {}", r.summary()["totals"]["otlp"]);
                        }),
                    ))
                }
                "alt" => {
                    let bin = alt.as_deref().context("alt mode without a binary")?;
                    let a = Attach::start_with(bin, nginx.master.pid(), &[]);
                    Some((a.pid(), Box::new(move || drop(a.stop()))))
                }
                _ => None,
            };
            let tracer_pid = tracer.as_ref().map(|t| t.0);
            let (w0, t0) = (cpu_ns(worker), tracer_pid.map_or(0, cpu_ns));
            let n = wrk(nginx.port, secs, header_bytes)?;
            let (w1, t1) = (cpu_ns(worker), tracer_pid.map_or(0, cpu_ns));
            if let Some((_, stop)) = tracer {
                stop();
            }
            let t = &mut totals[m];
            t.requests += n;
            t.worker_ns += w1 - w0;
            t.tracer_ns += t1 - t0;
            let (w, tr) = (
                (w1 - w0) as f64 / n as f64 / 1e3,
                (t1 - t0) as f64 / n as f64 / 1e3,
            );
            this_round[m] = (w, tr);
            eprintln!(
                "round {round} {mode:>10}: {n} requests, worker {w:.2} µs/req, tracer {tr:.2} µs/req"
            );
        }
        per_round.push(this_round);
    }
    let report = overhead_report(&modes, &totals, &per_round, secs, rounds);
    println!("{report}");
    std::fs::create_dir_all("target/bench")?;
    std::fs::write("target/bench/overhead.txt", &report)?;
    Ok(())
}

/// The overhead table: totals over all rounds, then per-round medians against each round's
/// untraced run, then each tracer's own CPU against the untraced worker's.
fn overhead_report(
    modes: &[&str],
    totals: &[Totals],
    per_round: &[Vec<(f64, f64)>],
    secs: u64,
    rounds: u32,
) -> String {
    let per = |t: &Totals, ns: u64| ns as f64 / t.requests as f64 / 1e3;
    let base = per(&totals[0], totals[0].worker_ns);
    let mut report = String::from(
        "mode        requests/s   worker µs/req   added µs/req   ratio   tracer µs/req\n",
    );
    for (mode, t) in modes.iter().zip(totals) {
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
    // The machine's speed drifts between rounds (shared host); a round's modes run back to back,
    // so each mode compared with the same round's untraced run, median over rounds, is the
    // figure least moved by that drift.
    let _ = writeln!(
        report,
        "\nper round, against that round's untraced run (median of {rounds} rounds):\n\
         mode        added µs/req   ratio   tracer µs/req"
    );
    let mut own_cpu = String::new();
    for (m, mode) in modes.iter().enumerate().skip(1) {
        let own = median(per_round.iter().map(|r| r[m].1 / r[0].0).collect());
        if own > 0.0 {
            let _ = writeln!(
                own_cpu,
                "{mode:<10} own CPU per request: {:.1} % of the same round's untraced worker's",
                own * 100.0
            );
        }
    }
    for (m, mode) in modes.iter().enumerate().skip(1) {
        let added = median(per_round.iter().map(|r| r[m].0 - r[0].0).collect());
        let ratio = median(per_round.iter().map(|r| r[m].0 / r[0].0).collect());
        let tracer = median(per_round.iter().map(|r| r[m].1).collect());
        let _ = writeln!(
            report,
            "{mode:<10} {added:>14.2} {ratio:>7.3} {tracer:>15.2}"
        );
    }
    report.push('\n');
    report.push_str(&own_cpu);
    report
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => f64::midpoint(v[n / 2 - 1], v[n / 2]),
    }
}

/// 4 clients at ~500 requests/s each on keep-alive connections replaced every 200 requests.
fn soak_clients(
    port: u16,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    sent: &std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Vec<std::thread::JoinHandle<()>> {
    use std::sync::atomic::Ordering;
    (0..4)
        .map(|c| {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let paths = ["/a", "/b", "/missing", "/a?x=1"];
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut client = Client::connect(port);
                    for _ in 0..200 {
                        let _ = client.get(paths[((i + c) % 4) as usize]);
                        i += 1;
                        sent.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            })
        })
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// `cargo xtask bench soak --secs N`: the agent under steady load (loopback only, bounded in
/// time): nginx with 2 workers, 4 clients at a fixed pace on keep-alive connections that are
/// replaced every 200 requests, mixed paths and statuses. Reports agent RSS over time and its CPU
/// per request; the agent's tables are capped, so RSS must level off.
fn soak(secs: u64) -> anyhow::Result<()> {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    };
    let secs = secs.max(60);
    crate::build_release()?;
    let nginx = Nginx::start(2, &[("a", b"alpha"), ("b", &[b'b'; 4096])]);
    let dir = tempfile::tempdir()?;
    let conf = nginx.dir.path().display().to_string();
    std::fs::write(
        dir.path().join("10-soak.toml"),
        format!("[[target]]\nname = \"soak\"\ncomm = \"nginx\"\ncmdline = \"{conf}\"\n"),
    )?;
    let out = std::path::Path::new("target/bench/soak.ndjson");
    std::fs::create_dir_all("target/bench")?;
    let _ = std::fs::remove_file(out);
    let metrics = cost_probe_tests::free_port();
    let agent = Proc {
        child: Command::new("target/release/cost-probe")
            .args(["agent", "--rules"])
            .arg(dir.path())
            .args(["--metrics", &format!("127.0.0.1:{metrics}"), "--output"])
            .arg(out)
            .stderr(Stdio::null())
            .spawn()
            .context("spawning the agent")?,
    };
    std::thread::sleep(Duration::from_secs(3));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let clients = soak_clients(nginx.port, &stop, &sent);
    let pid = agent.pid();
    let started = std::time::Instant::now();
    let (cpu0, mut samples) = (cpu_ns(pid), Vec::new());
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(10));
        let line = format!(
            "t={:>4}s requests={:>8} agent_rss={} KiB",
            started.elapsed().as_secs(),
            sent.load(Ordering::Relaxed),
            rss_kib(pid)
        );
        eprintln!("{line}");
        samples.push((started.elapsed().as_secs(), rss_kib(pid)));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let requests = sent.load(Ordering::Relaxed);
    let cpu = cpu_ns(pid) - cpu0;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    drop(agent);
    let recorded = std::fs::read_to_string(out)?
        .lines()
        .filter(|l| l.contains("\"type\":\"request\""))
        .count();
    let after_warmup = samples.iter().find(|(t, _)| *t >= 60).map_or(0, |s| s.1);
    let last = samples.last().map_or(0, |s| s.1);
    let mut report = String::new();
    let _ = writeln!(
        report,
        "soak: {secs} s, {requests} requests sent, {recorded} request records"
    );
    let _ = writeln!(
        report,
        "agent CPU: {:.2} µs per request; RSS {} KiB at 60 s, {} KiB at the end ({:+} KiB)",
        cpu as f64 / requests.max(1) as f64 / 1e3,
        after_warmup,
        last,
        last as i64 - after_warmup as i64
    );
    for (t, rss) in &samples {
        let _ = writeln!(report, "  t={t:>4}s rss={rss} KiB");
    }
    println!("{report}");
    std::fs::write("target/bench/soak.txt", &report)?;
    Ok(())
}

/// `cargo xtask bench host-tax`: what tracing one process costs every *other* process on the
/// host. Any syscall tracepoint switches the syscall slow path on for every task (the kernel's
/// `TIF_SYSCALL_TRACEPOINT` flag), and every syscall then passes the tracepoint hooks, which test
/// the syscall number against the attached ones.
///
/// nginx (idle) is the traced process; this process is the unrelated one, timing a tight loop of
/// `getppid(2)`, the cheapest syscall. Modes alternate round by round, in an order that rotates:
/// - `untraced`;
/// - `bpftrace-1tp`: one `syscalls:sys_enter_close` tracepoint filtered to the nginx worker —
///   the "one-tracepoint bpftrace", enter side only;
/// - `bpftrace-2tp`: `sys_enter_close` and `sys_exit_read`, filtered — the like-for-like floor:
///   a tracer that needs return values (bytes read) pays the exit side too, as cost-probe does;
/// - `bpftrace-exit`: `sys_exit_read` alone — what a tracer with no enter-side hook at all
///   would pay (cost-probe keeps close at its enter: see `cost-probe-ebpf`);
/// - `cost-probe` (and `alt` with `COST_PROBE_BENCH_ALT`): `cost-probe attach` on nginx.
fn host_tax(secs: u64, rounds: u32) -> anyhow::Result<()> {
    crate::build_release()?;
    let nginx = Nginx::start(1, &[("t", b"ok")]);
    let worker = *nginx.workers().first().context("nginx has no worker")?;
    let alt = std::env::var_os("COST_PROBE_BENCH_ALT").map(std::path::PathBuf::from);
    let mut modes = vec![
        "untraced",
        "bpftrace-1tp",
        "bpftrace-2tp",
        "bpftrace-exit",
        "cost-probe",
    ];
    if alt.is_some() {
        modes.push("alt");
    }
    let bin = std::path::PathBuf::from("target/release/cost-probe");
    let mut per_round: Vec<Vec<f64>> = Vec::new();
    for round in 0..rounds {
        let mut this_round = vec![0.0; modes.len()];
        // Rotated, as in `overhead`: no mode always runs first or after the same one.
        for k in 0..modes.len() {
            let m = (k + round as usize) % modes.len();
            let mode = modes[m];
            let stop: Option<Box<dyn FnOnce()>> = match mode {
                "bpftrace-1tp" => {
                    let p = bpftrace_script(&format!(
                        "tracepoint:syscalls:sys_enter_close /pid == {worker}/ {{ @n = count(); }}"
                    ))?;
                    Some(Box::new(move || drop(p)))
                }
                "bpftrace-2tp" => {
                    let p = bpftrace_script(&format!(
                        "tracepoint:syscalls:sys_enter_close, tracepoint:syscalls:sys_exit_read \
                         /pid == {worker}/ {{ @n = count(); }}"
                    ))?;
                    Some(Box::new(move || drop(p)))
                }
                "bpftrace-exit" => {
                    let p = bpftrace_script(&format!(
                        "tracepoint:syscalls:sys_exit_read /pid == {worker}/ {{ @n = count(); }}"
                    ))?;
                    Some(Box::new(move || drop(p)))
                }
                "cost-probe" => {
                    let a = Attach::start_with(&bin, nginx.master.pid(), &[]);
                    Some(Box::new(move || drop(a.stop())))
                }
                "alt" => {
                    let b = alt.as_deref().context("alt mode without a binary")?;
                    let a = Attach::start_with(b, nginx.master.pid(), &[]);
                    Some(Box::new(move || drop(a.stop())))
                }
                _ => None,
            };
            let ns = getppid_ns(Duration::from_secs(secs));
            if let Some(stop) = stop {
                stop();
            }
            eprintln!("round {round} {mode:>13}: getppid {ns:.1} ns/call");
            this_round[m] = ns;
        }
        per_round.push(this_round);
    }
    let report = host_tax_report(&modes, &per_round, secs);
    println!("{report}");
    std::fs::create_dir_all("target/bench")?;
    std::fs::write("target/bench/host-tax.txt", &report)?;
    Ok(())
}

/// Each mode's added ns per call against the same round's untraced run (median over rounds), and
/// as a multiple of each bpftrace floor's (modes 1 and 2).
fn host_tax_report(modes: &[&str], per_round: &[Vec<f64>], secs: u64) -> String {
    let rounds = per_round.len();
    let added = |m: usize| median(per_round.iter().map(|r| r[m] - r[0]).collect());
    let (floor1, floor2) = (added(1), added(2));
    let mut report = format!(
        "host tax: an unrelated process's getppid(2), median of {rounds} rounds of {secs} s\n\
         mode           ns/call   added ns   × 1tp added   × 2tp added\n"
    );
    for (m, mode) in modes.iter().enumerate() {
        let ns = median(per_round.iter().map(|r| r[m]).collect());
        let a = if m == 0 { 0.0 } else { added(m) };
        let _ = writeln!(
            report,
            "{mode:<14} {ns:>8.1} {a:>10.1} {:>13.2} {:>13.2}",
            a / floor1,
            a / floor2
        );
    }
    let _ = writeln!(report, "\nper round, added ns (same round's untraced run):");
    for (m, mode) in modes.iter().enumerate().skip(1) {
        let row: Vec<String> = per_round
            .iter()
            .map(|r| format!("{:.1}", r[m] - r[0]))
            .collect();
        let _ = writeln!(report, "{mode:<14} {}", row.join(" "));
    }
    report
}

/// Cost of `getppid(2)` in a tight loop for about `for_`, as the median of 20 slices. Each slice
/// is timed in this thread's CPU time, not wall time: on a machine shared with other builds a
/// preemption would otherwise count as syscall time (untraced rounds ranged from 170 to 370
/// ns/call by the wall clock in one run).
fn getppid_ns(for_: Duration) -> f64 {
    const CALLS: u32 = 20_000;
    let slices = 20;
    let per_slice = for_ / slices;
    let mut means = Vec::new();
    for _ in 0..slices {
        let (wall, cpu0) = (std::time::Instant::now(), thread_cpu_ns());
        let mut calls = 0u64;
        while wall.elapsed() < per_slice {
            for _ in 0..CALLS {
                // SAFETY: getppid has no arguments and no failure mode.
                unsafe { libc::syscall(libc::SYS_getppid) };
            }
            calls += u64::from(CALLS);
        }
        means.push((thread_cpu_ns() - cpu0) as f64 / calls as f64);
    }
    median(means)
}

/// This thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a local.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn bpftrace_script(script: &str) -> anyhow::Result<Proc> {
    let mut child = Command::new("bpftrace")
        .args(["-q", "-e", script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning bpftrace")?;
    std::thread::sleep(Duration::from_secs(3));
    if let Some(status) = child.try_wait()? {
        bail!("bpftrace exited early: {status}");
    }
    Ok(Proc { child })
}
