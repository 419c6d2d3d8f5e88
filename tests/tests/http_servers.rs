//! cost-probe attached to real servers on loopback, checked against what the clients saw and
//! what the servers logged. Run as root through `cargo xtask test`.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use cost_probe_tests::{Attach, Client, Nginx, Server, path_status, quality_flags, require_kernel};
use serde_json::Value;

fn multiset<T: Ord>(items: impl IntoIterator<Item = T>) -> BTreeMap<T, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_default() += 1;
    }
    m
}

/// nginx access-log lines (`$request_uri $status`) as (path without query, status).
fn logged(nginx: &Nginx) -> BTreeMap<(String, u64), usize> {
    multiset(nginx.access_log().iter().map(|l| {
        let (uri, status) = l.rsplit_once(' ').expect("log format");
        (
            uri.split('?').next().unwrap().to_owned(),
            status.parse().unwrap(),
        )
    }))
}

const PAGE: &[u8] = b"<html><body>hello from nginx</body></html>\n";

#[test]
fn nginx_keepalive_spans_match_client_exactly() {
    require_kernel!();
    let nginx = Nginx::start(1, &[("index.html", PAGE), ("a.txt", b"a")]);
    let probe = Attach::start(nginx.master.pid(), &[]);
    let mut expected = Vec::new();
    let handles: Vec<_> = (0..4)
        .map(|c| {
            let port = nginx.port;
            thread::spawn(move || {
                let mut client = Client::connect(port);
                let mut seen = Vec::new();
                for i in 0..50 {
                    let path = match (c + i) % 3 {
                        0 => "/index.html",
                        1 => "/a.txt",
                        _ => "/missing",
                    };
                    let r = client.get(path);
                    seen.push((path.to_owned(), u64::from(r.status)));
                }
                seen
            })
        })
        .collect();
    for h in handles {
        expected.extend(h.join().unwrap());
    }
    let records = probe.stop();
    let spans = records.requests();
    assert_eq!(
        spans.len(),
        200,
        "one span per request the client completed"
    );
    assert_eq!(
        multiset(spans.iter().map(|r| path_status(r))),
        multiset(expected)
    );
    assert_eq!(
        multiset(spans.iter().map(|r| path_status(r))),
        logged(&nginx)
    );
    for s in &spans {
        assert_eq!(s["protocol"], "http1");
        assert_eq!(s["http"]["method"], "GET");
        assert!(quality_flags(s).is_empty(), "{s}");
        assert_eq!(s["conn"]["local"], format!("127.0.0.1:{}", nginx.port));
        assert!(s["duration_ms"].as_f64().unwrap() >= 0.0);
    }
    // The 200s carried their body: bytes out exceed the page size.
    let page = spans
        .iter()
        .find(|s| s["http"]["path"] == "/index.html")
        .unwrap();
    assert!(page["bytes"]["out"].as_u64().unwrap() > PAGE.len() as u64);
    assert_eq!(records.summary()["totals"]["requests"], 200);
    assert_eq!(records.summary()["totals"]["lost_events"], 0);
}

#[test]
fn nginx_under_wrk_matches_the_access_log() {
    require_kernel!();
    let nginx = Nginx::start(1, &[("index.html", PAGE)]);
    let probe = Attach::start(nginx.master.pid(), &[]);
    let out = Command::new("wrk")
        .args(["-t2", "-c10", "-d2s"])
        .arg(format!("http://127.0.0.1:{}/index.html", nginx.port))
        .output()
        .expect("wrk (cargo xtask setup --test-deps)");
    assert!(out.status.success());
    let records = probe.stop();
    let spans = records.requests();
    let log = logged(&nginx);
    let served: usize = log.values().sum();
    eprintln!("wrk: {}", String::from_utf8_lossy(&out.stdout));
    eprintln!(
        "nginx served {served} requests; cost-probe saw {}",
        spans.len()
    );
    assert!(served > 1000, "load too small to mean anything: {served}");
    let lost = records.summary()["totals"]["lost_events"].as_u64().unwrap();
    assert_eq!(lost, 0, "ring buffer dropped events");
    assert_eq!(multiset(spans.iter().map(|r| path_status(r))), log);
}

#[test]
fn nginx_with_two_workers_is_traced_through_its_master() {
    require_kernel!();
    let nginx = Nginx::start(2, &[("index.html", PAGE)]);
    let workers = nginx.workers();
    assert_eq!(workers.len(), 2);
    let probe = Attach::start(nginx.master.pid(), &[]);
    // Many short connections so both workers accept some.
    for _ in 0..60 {
        let mut c = Client::connect(nginx.port);
        assert_eq!(c.get("/index.html").status, 200);
    }
    let records = probe.stop();
    let spans = records.requests();
    assert_eq!(spans.len(), 60);
    assert_eq!(
        multiset(spans.iter().map(|r| path_status(r))),
        logged(&nginx)
    );
    for s in &spans {
        let pid = u32::try_from(s["pid"].as_u64().unwrap()).unwrap();
        assert!(
            workers.contains(&pid),
            "span from pid {pid}, workers {workers:?}"
        );
        assert_eq!(s["comm"], "nginx");
    }
}

#[test]
fn pipelined_requests_on_one_connection() {
    require_kernel!();
    for server in ["python", "nginx"] {
        let (port, pid, _keep): (u16, u32, Box<dyn std::any::Any>) = if server == "python" {
            let s = Server::python_sse();
            (s.port, s.proc.pid(), Box::new(s))
        } else {
            let n = Nginx::start(1, &[("a", b"1"), ("b", b"22"), ("c", b"333")]);
            (n.port, n.master.pid(), Box::new(n))
        };
        let paths: &[&str] = if server == "python" {
            &[
                "/fixed?size=1",
                "/chunked?n=2",
                "/fixed?size=3",
                "/nope",
                "/fixed?size=5",
            ]
        } else {
            &["/a", "/b", "/c", "/nope", "/a"]
        };
        let probe = Attach::start(pid, &[]);
        let mut c = Client::connect(port);
        let raw = paths.iter().fold(String::new(), |mut raw, p| {
            let _ = write!(raw, "GET {p} HTTP/1.1\r\nHost: t\r\n\r\n");
            raw
        });
        let sent = c.send(raw.as_bytes());
        let statuses: Vec<u16> = paths.iter().map(|_| c.read_response(sent).status).collect();
        let records = probe.stop();
        let spans = records.requests();
        let got: Vec<(String, u64)> = spans.iter().map(|r| path_status(r)).collect();
        let want: Vec<(String, u64)> = paths
            .iter()
            .zip(&statuses)
            .map(|(p, s)| (p.split('?').next().unwrap().to_owned(), u64::from(*s)))
            .collect();
        assert_eq!(got, want, "{server}: spans in pipeline order");
        // All five arrived in one read, so they share a start; they end in order.
        assert!(
            spans.iter().all(|s| s["start"] == spans[0]["start"]),
            "{server}"
        );
        let ends: Vec<&str> = spans.iter().map(|s| s["end"].as_str().unwrap()).collect();
        assert!(ends.windows(2).all(|w| w[0] <= w[1]), "{server}: {ends:?}");
    }
}

#[test]
fn sse_stream_chunks_and_latency_match_the_client() {
    const N: usize = 8;
    require_kernel!();
    let server = Server::python_sse();
    let probe = Attach::start(server.proc.pid(), &[]);
    let mut client = Client::connect(server.port);
    let mut client_ms = Vec::new();
    for _ in 0..15 {
        let r = client.get(&format!("/stream?n={N}&delay_ms=15"));
        assert_eq!(r.chunks.len(), N);
        client_ms.push((r.done - r.sent).as_secs_f64() * 1e3);
    }
    let records = probe.stop();
    let spans = records.requests();
    assert_eq!(spans.len(), 15);
    let mut diffs = Vec::new();
    for (s, c) in spans.iter().zip(&client_ms) {
        assert_eq!(s["chunks"], N, "{s}");
        assert!(s["flags"].as_array().unwrap().contains(&"streamed".into()));
        let d = s["duration_ms"].as_f64().unwrap();
        let ttfb = s["ttfb_ms"].as_f64().unwrap();
        let first_chunk = s["first_chunk_ms"].as_f64().unwrap();
        assert!(ttfb < first_chunk && first_chunk < d, "{s}");
        // The span lasts to the last chunk: N chunks 15 ms apart.
        assert!(
            d >= (N as f64) * 15.0 * 0.9,
            "span ends at the last chunk: {d} ms"
        );
        diffs.push((d - c).abs());
    }
    diffs.sort_by(f64::total_cmp);
    let median = diffs[diffs.len() / 2];
    eprintln!(
        "span vs client latency: median |diff| {median:.3} ms over {} requests",
        diffs.len()
    );
    assert!(median < 1.0, "median |span - client| = {median} ms");
}

#[test]
fn chunked_transfer_encoding_counts_chunks() {
    require_kernel!();
    let server = Server::python_sse();
    let probe = Attach::start(server.proc.pid(), &[]);
    let mut client = Client::connect(server.port);
    for n in [1, 7, 40] {
        let r = client.get(&format!("/chunked?n={n}"));
        assert_eq!(r.chunks.len(), n);
    }
    let records = probe.stop();
    let chunks: Vec<u64> = records
        .requests()
        .iter()
        .map(|s| s["chunks"].as_u64().unwrap())
        .collect();
    assert_eq!(chunks, [1, 7, 40]);
}

#[test]
fn request_per_connection_clients() {
    require_kernel!();
    let server = Server::python_sse();
    let probe = Attach::start(server.proc.pid(), &[]);
    let mut peers = Vec::new();
    for i in 0..30 {
        let mut c = Client::connect(server.port);
        let sent = c.send(
            format!("GET /fixed?size={i} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        let r = c.read_response(sent);
        assert_eq!(r.body.len(), i);
        peers.push(i);
    }
    let records = probe.stop();
    let spans = records.requests();
    assert_eq!(spans.len(), 30);
    let mut ports: Vec<&str> = spans
        .iter()
        .map(|s| s["conn"]["peer"].as_str().unwrap())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 30, "one connection per request");
}

/// Also: each record's egress is its response bytes at the rules' price, and two identical
/// POSTs (the first and the last) share a `request_hash` that no other body has.
#[test]
fn openai_style_model_and_tokens_equal_what_the_client_got() {
    require_kernel!();
    let server = Server::python_sse();
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("egress.toml"),
        "[network]\negress_usd_per_gb = 0.09\n",
    )
    .unwrap();
    let probe = Attach::start(
        server.proc.pid(),
        &["--rules", rules.path().to_str().unwrap()],
    );
    let mut client = Client::connect(server.port);
    let mut want = Vec::new();
    for (stream, n) in [(true, 5), (false, 3), (true, 12), (false, 1), (true, 5)] {
        let body = format!(
            r#"{{"model":"demo-{n}","stream":{stream},"max_tokens":{n},"messages":[{{"role":"user","content":"hi there"}}]}}"#
        );
        let r = client.post_json("/v1/chat/completions", &body);
        let text = String::from_utf8(r.body).unwrap();
        // The usage object the client received (last data chunk, or the body).
        let usage_json = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: ").or(Some(l)))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|v| v.get("usage").cloned())
            .expect("usage in the response");
        want.push((
            format!("demo-{n}"),
            usage_json["prompt_tokens"].as_u64().unwrap(),
            usage_json["completion_tokens"].as_u64().unwrap(),
        ));
    }
    let records = probe.stop();
    let got: Vec<(String, u64, u64)> = records
        .requests()
        .iter()
        .map(|s| {
            (
                s["model"].as_str().unwrap().to_owned(),
                s["tokens"]["prompt"].as_u64().unwrap(),
                s["tokens"]["completion"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want);
    let requests = records.requests();
    for r in &requests {
        let (egress, out) = (
            r["cost_usd"]["egress"].as_f64().unwrap(),
            r["bytes"]["out"].as_u64().unwrap(),
        );
        let expected = out as f64 / 1e9 * 0.09;
        assert!(
            out > 0 && (egress - expected).abs() <= expected * 1e-9,
            "{r}"
        );
        let parts = ["energy", "capacity", "egress"].map(|k| r["cost_usd"][k].as_f64().unwrap());
        let total = r["cost_usd"]["total"].as_f64().unwrap();
        assert!(
            (parts.iter().sum::<f64>() - total).abs() <= total * 1e-9,
            "{r}"
        );
    }
    let hash = |i: usize| requests[i]["request_hash"].as_str().unwrap().to_owned();
    assert_eq!(hash(0), hash(4), "two identical POSTs");
    let distinct: std::collections::BTreeSet<String> = (0..4).map(hash).collect();
    assert_eq!(distinct.len(), 4, "different bodies hash apart");
}

#[test]
fn attach_ends_with_a_summary_when_the_target_exits() {
    require_kernel!();
    let server = Server::python_sse();
    let probe = Attach::start(server.proc.pid(), &[]);
    let mut c = Client::connect(server.port);
    assert_eq!(c.get("/fixed?size=3").status, 200);
    // A request in flight when the server dies is flushed as partial.
    c.send(b"GET /stream?n=50&delay_ms=100 HTTP/1.1\r\nHost: t\r\n\r\n");
    thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    server.proc.signal(libc::SIGKILL);
    let records = probe.wait(Duration::from_secs(10));
    eprintln!("attach exited {:?} after the target", started.elapsed());
    let spans = records.requests();
    assert_eq!(spans.len(), 2);
    assert!(quality_flags(spans[0]).is_empty(), "{}", spans[0]);
    assert!(
        spans[1]["flags"]
            .as_array()
            .unwrap()
            .contains(&"partial".into()),
        "{}",
        spans[1]
    );
    assert_eq!(records.summary()["totals"]["partial_requests"], 1);
}

#[test]
fn a_missing_pid_is_one_clear_line_and_exit_2() {
    let out = Command::new(cost_probe_tests::bin())
        .args(["attach", "--pid", "999999999"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim(), "cost-probe: no process with pid 999999999");
    assert!(out.stdout.is_empty());
}

/// Regression: a server already blocking in accept(2) when we attach (thread-per-connection
/// servers such as llama.cpp's cpp-httplib) lost its next connection, when the kernel side
/// paired enter and exit tracepoints and never saw that accept's enter. The `sys_exit` program
/// reads the arguments from the saved registers, and /proc classifies the socket.
#[test]
fn connection_accepted_by_a_blocking_accept_that_began_before_attach() {
    require_kernel!();
    let script = r#"
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
print("listening", s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()                       # blocks: entered before the probe attached
    data = b""
    while b"\r\n\r\n" not in data:
        data += c.recv(1024)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    c.close()
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]);
    let server = Server::start(cmd, Duration::from_secs(10));
    let probe = Attach::start(server.proc.pid(), &[]);
    let mut peers = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(server.port);
        peers.push(c.local_addr());
        assert_eq!(c.get("/first").status, 200);
    }
    let records = probe.stop();
    let spans = records.requests();
    assert_eq!(
        spans.len(),
        3,
        "the first connection after attach is traced too"
    );
    for (s, peer) in spans.iter().zip(&peers) {
        assert_eq!(s["http"]["path"], "/first");
        assert_eq!(s["conn"]["peer"], peer.to_string());
        assert_eq!(s["conn"]["local"], format!("127.0.0.1:{}", server.port));
    }
}

/// A connection accepted before attach whose thread is already blocked in recv(2) when we
/// attach: the request that wakes it is traced (its arguments come from the registers saved at
/// entry, not from an enter we never saw).
#[test]
fn request_read_by_a_recv_that_began_before_attach() {
    require_kernel!();
    let script = r#"
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
print("listening", s.getsockname()[1], flush=True)
c, _ = s.accept()
while True:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(1024)                # blocks: entered before the probe attached
        if not chunk:
            raise SystemExit
        data += chunk
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]);
    let server = Server::start(cmd, Duration::from_secs(10));
    let mut c = Client::connect(server.port);
    // Let the server accept and block in recv before the probe exists.
    thread::sleep(Duration::from_millis(300));
    let probe = Attach::start(server.proc.pid(), &[]);
    assert_eq!(c.get("/after-attach").status, 200);
    assert_eq!(c.get("/second").status, 200);
    let records = probe.stop();
    let paths: Vec<&str> = records
        .requests()
        .iter()
        .map(|r| r["http"]["path"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(paths, ["/after-attach", "/second"]);
}

/// Regression (#10.14): `attach --pid` of an nginx master that was killed (`SIGKILL`) exited although its
/// workers kept serving, and their later requests had no record.
#[test]
fn attach_keeps_tracing_workers_after_their_master_is_killed() {
    require_kernel!();
    let nginx = Nginx::start(2, &[("a", b"ok")]);
    let workers = nginx.workers();
    assert_eq!(workers.len(), 2);
    let probe = Attach::start(nginx.master.pid(), &[]);
    nginx.master.signal(libc::SIGKILL);
    // The workers still hold the listening socket and keep answering.
    let mut c = Client::connect(nginx.port);
    for _ in 0..10 {
        assert_eq!(c.get("/a").status, 200);
    }
    drop(c);
    thread::sleep(Duration::from_millis(300));
    for &w in &workers {
        // SAFETY: plain kill(2) of the test's own nginx workers.
        unsafe { libc::kill(w as i32, libc::SIGKILL) };
    }
    // Attach ends by itself once the last traced process is gone, with every request recorded.
    let records = probe.wait(Duration::from_secs(10));
    let logged = nginx.access_log().len();
    assert_eq!(logged, 10);
    assert_eq!(
        records.requests().len(),
        logged,
        "one record per request served"
    );
    assert!(records.summary().is_object());
}
