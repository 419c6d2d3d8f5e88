//! `cost-probe agent`: discovery, re-attach after a restart, SIGHUP reload, Prometheus.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use cost_probe_tests::{Client, Proc, Records, Server, bin, free_port, require_kernel, workspace};
use serde_json::Value;

/// A running agent whose stderr lines arrive on a channel.
struct Agent {
    proc: Proc,
    lines: mpsc::Receiver<(Instant, String)>,
    out: std::path::PathBuf,
}

impl Agent {
    fn start(rules: &Path, out: &Path, metrics: u16) -> Self {
        Self::start_with(rules, out, metrics, 200)
    }

    /// With /proc scanned every `discover_ms`.
    fn start_with(rules: &Path, out: &Path, metrics: u16, discover_ms: u64) -> Self {
        let mut child = Command::new(bin())
            .args(["agent", "--rules"])
            .arg(rules)
            .args([
                "--metrics",
                &format!("127.0.0.1:{metrics}"),
                "--discover",
                &discover_ms.to_string(),
                "--output",
            ])
            .arg(out)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agent");
        let err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[agent] {l}");
                let _ = tx.send((Instant::now(), l));
            }
        });
        let agent = Self {
            proc: Proc { child },
            lines,
            out: out.to_path_buf(),
        };
        agent.wait_for("agent running", Duration::from_secs(30));
        agent
    }

    /// Waits for a stderr line containing `needle`; returns when it was printed.
    fn wait_for(&self, needle: &str, timeout: Duration) -> Instant {
        self.wait_line(needle, timeout).0
    }

    /// Like `wait_for`, also returning the line.
    fn wait_line(&self, needle: &str, timeout: Duration) -> (Instant, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((t, l)) if l.contains(needle) => return (t, l),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("agent did not print {needle:?} within {timeout:?}")
                }
            }
        }
    }

    fn stop(mut self) -> Records {
        thread::sleep(Duration::from_millis(300));
        self.proc.signal(libc::SIGTERM);
        let status = self.proc.child.wait().unwrap();
        assert!(status.success(), "agent exited with {status} on SIGTERM");
        let text = std::fs::read_to_string(&self.out).unwrap();
        Records(
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
        )
    }
}

fn write_rules(dir: &Path, port: u16) {
    std::fs::write(
        dir.join("10-targets.toml"),
        format!("[[target]]\nname = \"sse\"\ncmdline = \"sse_server\\\\.py {port}\"\n"),
    )
    .unwrap();
}

fn python_on(port: u16) -> Server {
    let mut cmd = Command::new("python3");
    cmd.arg(workspace().join("tests/servers/sse_server.py"))
        .arg(port.to_string());
    Server::start(cmd, Duration::from_secs(10))
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

#[test]
fn agent_reattaches_after_a_restart_and_loses_no_completed_request() {
    require_kernel!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_rules(dir.path(), port);
    let agent = Agent::start(dir.path(), &dir.path().join("out.ndjson"), free_port());
    let first = python_on(port);
    agent.wait_for("tracing pid", Duration::from_secs(5));
    let mut c = Client::connect(port);
    for _ in 0..5 {
        assert_eq!(c.get("/stream?n=3&delay_ms=2").status, 200);
    }
    first.proc.signal(libc::SIGKILL);
    drop(first);
    let restarted = python_on(port);
    let listening = Instant::now();
    let attached = agent.wait_for(
        &format!("tracing pid {}", restarted.proc.pid()),
        Duration::from_secs(5),
    );
    let took = attached.saturating_duration_since(listening);
    eprintln!("re-attached {took:?} after the restarted server listened");
    assert!(took < Duration::from_secs(2), "re-attach took {took:?}");
    let mut c = Client::connect(port);
    for _ in 0..4 {
        assert_eq!(c.get("/fixed?size=7").status, 200);
    }
    let records = agent.stop();
    let spans = records.requests();
    let paths: Vec<&str> = spans
        .iter()
        .map(|s| s["http"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths.iter().filter(|p| **p == "/stream").count(),
        5,
        "before the kill"
    );
    assert_eq!(
        paths.iter().filter(|p| **p == "/fixed").count(),
        4,
        "after the restart"
    );
    assert!(spans.iter().all(|s| s["tags"]["target"] == "sse"));
    assert!(
        spans
            .iter()
            .all(|s| !s["flags"].as_array().unwrap().contains(&"partial".into()))
    );
}

#[test]
fn broken_rules_on_reload_name_the_line_and_records_continue() {
    require_kernel!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_rules(dir.path(), port);
    let server = python_on(port);
    let agent = Agent::start(dir.path(), &dir.path().join("out.ndjson"), free_port());
    agent.wait_for("tracing pid", Duration::from_secs(5));
    assert_eq!(Client::connect(port).get("/fixed?size=1").status, 200);
    // Let the first request be priced and written, then rotate the file as logrotate would.
    thread::sleep(Duration::from_millis(400));
    let rotated = dir.path().join("out.ndjson.1");
    std::fs::rename(dir.path().join("out.ndjson"), &rotated).unwrap();
    std::fs::write(dir.path().join("20-bad.toml"), "[energy]\npue = 0.5\n").unwrap();
    agent.proc.signal(libc::SIGHUP);
    let (_, line) = agent.wait_line("20-bad.toml:2:7", Duration::from_secs(5));
    assert!(line.contains("pue must be between 1.0 and 5.0"), "{line}");
    assert!(line.contains("keeping the previous rules"), "{line}");
    assert_eq!(Client::connect(port).get("/fixed?size=2").status, 200);
    let records = agent.stop();
    assert_eq!(
        records.requests().len(),
        1,
        "records continue, in the reopened file"
    );
    assert_eq!(records.requests()[0]["http"]["path"], "/fixed");
    let old = std::fs::read_to_string(&rotated).unwrap();
    let in_old = old.matches("\"type\":\"request\"").count();
    assert_eq!(in_old, 1, "the first request stayed in the rotated file");
    drop(server);
}

/// The first value of an instant query against Prometheus' HTTP API.
fn prometheus_query(port: u16, q: &str) -> Option<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let enc: String = q
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    write!(
        s,
        "GET /api/v1/query?query={enc} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (_, body) = resp.split_once("\r\n\r\n")?;
    let v: Value = serde_json::from_str(body).ok()?;
    let first = v["data"]["result"].as_array()?.first()?.clone();
    first["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_the_agent() {
    require_kernel!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_rules(dir.path(), port);
    let server = python_on(port);
    let metrics = free_port();
    let agent = Agent::start(dir.path(), &dir.path().join("out.ndjson"), metrics);
    agent.wait_for("tracing pid", Duration::from_secs(5));
    let mut c = Client::connect(port);
    for _ in 0..7 {
        assert_eq!(c.get("/stream?n=2&delay_ms=1").status, 200);
    }
    // Let the held requests be priced (one energy interval) before scraping.
    thread::sleep(Duration::from_millis(400));

    // The exposition passes promtool.
    let exposition = http_get(metrics, "/metrics");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup --test-deps installs prometheus)");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus server scrapes it; its HTTP API must return our series.
    let prom_port = free_port();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: cost-probe\n    static_configs: [{{targets: ['127.0.0.1:{metrics}']}}]\n"
        ),
    )
    .unwrap();
    let prom = Proc {
        child: Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let query = "sum(cost_probe_requests_total{endpoint=\"/stream\"})";
    let value = loop {
        assert!(
            Instant::now() < deadline,
            "Prometheus never returned the series"
        );
        thread::sleep(Duration::from_millis(500));
        if let Some(v) = prometheus_query(prom_port, query) {
            break v;
        }
    };
    assert_eq!(
        value.round() as u64,
        7,
        "Prometheus sees the 7 requests: {value}"
    );
    drop(prom);
    let records = agent.stop();
    assert_eq!(records.requests().len(), 7);
    drop(server);
}

#[test]
fn budget_alert_fires_once_per_threshold() {
    require_kernel!();
    let dir = tempfile::tempdir().unwrap();
    // The demo server burns CPU per token, so its requests have a cost; a budget so small that
    // the scripted requests cross its thresholds.
    std::fs::write(
        dir.path().join("10-targets.toml"),
        "[[target]]\nname = \"demo\"\ncmdline = \"cost-probe demo-server\"\n\n\
         [[budget]]\nname = \"tiny\"\nperiod = \"day\"\namount_usd = 0.0000002\nalert_at = [0.5, 1.0, 2.0]\n",
    )
    .unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("demo-server");
    let server = Server::start(cmd, Duration::from_secs(10));
    let agent = Agent::start(dir.path(), &dir.path().join("out.ndjson"), free_port());
    agent.wait_for("tracing pid", Duration::from_secs(5));
    // The target's CPU time comes from /proc in 10 ms ticks; with 10–29 tokens a request the
    // whole script sometimes ran between ticks (spend 0, about one run in ten). 40–59 tokens
    // make it several ticks every time.
    let mut c = Client::connect(server.port);
    for i in 0..20 {
        let body = format!(
            r#"{{"model":"demo-large","max_tokens":{},"stream":true}}"#,
            40 + i
        );
        assert_eq!(c.post_json("/v1/chat/completions", &body).status, 200);
    }
    let records = agent.stop();
    let spent: f64 = records
        .requests()
        .iter()
        .map(|r| r["cost_usd"]["total"].as_f64().unwrap())
        .sum();
    let alerts = records.of_type("alert");
    let thresholds: Vec<f64> = alerts
        .iter()
        .map(|a| a["threshold"].as_f64().unwrap())
        .collect();
    eprintln!(
        "spent ${spent:.9} on {} requests against a $0.0000002 budget; alerts at {thresholds:?}",
        records.requests().len()
    );
    let crossed: Vec<f64> = [0.5, 1.0, 2.0]
        .into_iter()
        .filter(|f| spent >= f * 2e-7)
        .collect();
    assert!(
        !crossed.is_empty(),
        "the scripted spend must cross a threshold"
    );
    assert_eq!(
        thresholds, crossed,
        "each crossed threshold fires exactly once"
    );
    for a in &alerts {
        assert_eq!(a["rule"], "tiny");
        assert_eq!(a["kind"], "budget");
    }
}

/// Regression (#10.13): a server restarted and loaded at once lost its first requests (no record,
/// no `lost` record) until the next /proc scan found it. The kernel reports execs, so the new
/// process is checked against the target rules at once: here the periodic scan is a minute
/// away, so only the exec can find it.
#[test]
fn a_restarted_server_is_traced_from_its_first_request() {
    require_kernel!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_rules(dir.path(), port);
    let out = dir.path().join("records.ndjson");
    let agent = Agent::start_with(dir.path(), &out, free_port(), 60_000);
    // Long after the agent's first scan: the next one is a minute away.
    thread::sleep(Duration::from_secs(1));
    let server = python_on(port);
    // The first request goes out the moment the server listens.
    for i in 0..20 {
        assert_eq!(
            http_get(port, &format!("/fixed?size={}", i + 1)).len(),
            i + 1
        );
    }
    let pid = server.proc.pid();
    let records = agent.stop();
    let mine: Vec<&Value> = records
        .requests()
        .into_iter()
        .filter(|r| r["pid"] == pid)
        .collect();
    assert_eq!(
        mine.len(),
        20,
        "every request of the new server has a record"
    );
    assert!(records.of_type("lost").is_empty());
}

/// Regression (#10.3): `agent --output - | head -1` kept tracing and discarding records forever,
/// saying nothing. A reader that goes away ends the run normally, as it does for `attach`.
#[test]
fn the_agent_stops_when_its_output_reader_goes_away() {
    require_kernel!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_rules(dir.path(), port);
    let server = python_on(port);
    let mut child = Command::new(bin())
        .args(["agent", "--rules"])
        .arg(dir.path())
        .args(["--metrics", "off", "--output", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    // Interval records flow as soon as the sampler runs; requests make more.
    http_get(server.port, "/fixed?size=1");
    stdout.read_line(&mut first).unwrap();
    assert!(first.starts_with('{'), "{first}");
    drop(stdout);
    exits_while_traffic_flows(&mut child, server.port, "its reader went away");
}

/// Regression (#10.3): the same for a `unix:` sink whose reader closed.
#[test]
fn the_agent_stops_when_its_unix_socket_reader_closes() {
    require_kernel!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_rules(dir.path(), port);
    let server = python_on(port);
    let sock = dir.path().join("records.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut child = Command::new(bin())
        .args(["agent", "--rules"])
        .arg(dir.path())
        .args(["--metrics", "off", "--output"])
        .arg(format!("unix:{}", sock.display()))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent");
    let (conn, _) = listener.accept().unwrap();
    let mut reader = BufReader::new(conn);
    let mut first = String::new();
    http_get(server.port, "/fixed?size=1");
    reader.read_line(&mut first).unwrap();
    assert!(first.starts_with('{'), "{first}");
    drop(reader);
    drop(listener);
    exits_while_traffic_flows(&mut child, server.port, "its socket's reader closed");
}

/// Sends requests (each one makes records to write) until the agent exits, within 10 s, and
/// checks that it exited cleanly.
fn exits_while_traffic_flows(child: &mut std::process::Child, port: u16, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        http_get(port, "/fixed?size=1");
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent kept running after {why}");
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}
