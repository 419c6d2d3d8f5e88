//! OTLP export (#12): cost-probe attached to a real server exports one SERVER span per request
//! to a receiver that decodes the official protobuf schema; spans join the caller's trace; a
//! receiver that answers 503 for a while loses nothing; one gone longer than the queue holds
//! costs exactly the spans counted as dropped. Run as root through `cargo xtask test`.
use std::{
    collections::HashSet,
    fmt::Write as _,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use cost_probe_tests::{
    Attach, Client, Server, bin,
    otlp::{Data, KeyValue, Metric, Mode, Receiver, Resource, Value, attr_f64, attr_int, attr_str},
    require_kernel, workspace,
};

fn usage_server() -> Server {
    let mut cmd = Command::new("python3");
    cmd.arg(workspace().join("tests/servers/usage_server.py"))
        .arg("0");
    Server::start(cmd, Duration::from_secs(10))
}

/// One chat completion on `c`, with `traceparent` when given; the model is `model-{i % 2}`.
fn chat(c: &mut Client, i: usize, traceparent: Option<&str>) {
    let body = format!(
        r#"{{"model":"model-{}","messages":[{{"role":"user","content":"{}"}}],"max_tokens":{},"response_size":1024,"usage_at":"end","split":true}}"#,
        i % 2,
        "q".repeat(i * 13 % 200),
        5 + i
    );
    let tp = traceparent.map_or(String::new(), |t| format!("traceparent: {t}\r\n"));
    let sent = c.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
             {tp}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let r = c.read_response(sent);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

fn trace_id(i: usize) -> String {
    format!(
        "{:032x}",
        0xabc0_0000_0000_0000_0000_0000_0000_0000_u128 + i as u128
    )
}

fn parent_id(i: usize) -> String {
    format!("{:016x}", 0x1100_0000_0000_0000_u64 + i as u64)
}

/// The span's figure is the record's, to the bit: the record prints the shortest form that reads
/// back, and `serde_json` reads it back exactly (`float_roundtrip`, on in the workspace; without
/// it, 9.860066666666667e-8 read as 9.86006666666667e-8 and CI failed).
fn same(span: Option<f64>, record: Option<f64>) {
    assert_eq!(
        span.map(f64::to_bits),
        record.map(f64::to_bits),
        "{span:?} vs {record:?}"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut out, x| {
        let _ = write!(out, "{x:02x}");
        out
    })
}

/// Requests of the first test: half with the caller's trace context.
const N: usize = 12;
/// Requests of the 503 test.
const N_503: usize = 30;
/// Requests while the receiver is down, and after it is back.
const DOWN: usize = 60;
const AFTER: usize = 10;

/// Fast batches and metrics, so a test waits seconds, not the defaults' minutes.
const FAST: [(&str, &str); 2] = [
    ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
];

/// The traced process's resource, with the operator's attributes.
fn check_resource(res: &Resource, pid: u32) {
    let r = &res.attributes;
    assert_eq!(attr_str(r, "service.name"), Some("chat-backend"));
    assert_eq!(attr_int(r, "process.pid"), Some(i64::from(pid)));
    assert!(attr_str(r, "host.name").is_some_and(|h| !h.is_empty()));
    assert!(attr_str(r, "process.executable.name").is_some_and(|e| e.starts_with("python")));
    assert!(
        attr_str(r, "process.command_line").is_some_and(|c| c.contains("usage_server.py")),
        "{r:?}"
    );
    assert_eq!(attr_str(r, "deployment.environment"), Some("test"));
    assert_eq!(attr_str(r, "team"), Some("ml infra"));
}

/// The last metrics export (at the end of the run) covers every request.
fn check_metrics(metrics: &[Metric]) {
    let hist_count = |name: &str| -> u64 {
        metrics
            .iter()
            .filter(|m| m.name == name)
            .flat_map(|m| match &m.data {
                Some(Data::Histogram(h)) => h.data_points.iter().map(|p| p.count).collect(),
                _ => Vec::new(),
            })
            .sum()
    };
    assert_eq!(hist_count("gen_ai.server.request.duration"), N as u64 + 1);
    assert_eq!(hist_count("http.server.request.duration"), N as u64 + 1);
    assert_eq!(hist_count("gen_ai.client.token.usage"), 2 * (N as u64 + 1));
    assert_eq!(hist_count("cost_probe.request.energy"), N as u64 + 1);
    for name in [
        "cost_probe.energy",
        "cost_probe.cost",
        "cost_probe.domain.energy",
    ] {
        assert!(
            metrics
                .iter()
                .any(|m| m.name == name && matches!(m.data, Some(Data::Sum(_)))),
            "{name} missing: {:?}",
            metrics.iter().map(|m| &m.name).collect::<Vec<_>>()
        );
    }
}

/// The span's cost attributes are the request record's.
fn check_cost(a: &[KeyValue], rec: &serde_json::Value) {
    let energy = rec["energy_j"]["total"].as_f64().expect("priced record");
    same(attr_f64(a, "cost_probe.energy.total_j"), Some(energy));
    same(
        attr_f64(a, "cost_probe.cost.total_usd"),
        rec["cost_usd"]["total"].as_f64(),
    );
    same(attr_f64(a, "cost_probe.co2_g"), rec["co2_g"].as_f64());
    assert_eq!(
        attr_str(a, "cost_probe.attribution.method"),
        rec["attribution"]["method"].as_str()
    );
    assert!(matches!(
        cost_probe_tests::otlp::attr(a, "cost_probe.flags"),
        None | Some(Value::ArrayValue(_))
    ));
}

#[test]
fn spans_join_the_callers_trace_with_http_genai_and_cost_attributes() {
    require_kernel!();
    let rx = Receiver::start(Mode::Accept);
    let server = usage_server();
    let endpoint = rx.endpoint();
    let mut env = FAST.to_vec();
    env.extend([
        ("OTEL_SERVICE_NAME", "chat-backend"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test,team=ml%20infra",
        ),
    ]);
    let probe = Attach::start_env(
        &bin(),
        server.proc.pid(),
        &["--otlp-endpoint", &endpoint],
        &env,
    );
    let mut c = Client::connect(server.port);
    let client_port = c.local_addr().port();
    for i in 0..N {
        let tp = (i % 2 == 0).then(|| format!("00-{}-{}-01", trace_id(i), parent_id(i)));
        chat(&mut c, i, tp.as_deref());
    }
    // The caller's trace is not sampled: no span of ours would have a parent to hang from.
    chat(
        &mut c,
        N,
        Some(&format!("00-{}-{}-00", trace_id(99), parent_id(99))),
    );
    let records = probe.stop();
    let requests = records.requests();
    assert_eq!(requests.len(), N + 1);
    let otlp = &records.summary()["totals"]["otlp"];
    assert_eq!(otlp["spans_sent"], N as u64, "{otlp}");
    assert_eq!(otlp["spans_dropped"], 0, "{otlp}");
    assert_eq!(otlp["spans_unsampled"], 1, "{otlp}");

    let spans = rx.spans();
    assert_eq!(spans.len(), N, "one span per sampled request");
    let mut trace_ids = HashSet::new();
    let mut joined = 0;
    for (res, s) in &spans {
        check_resource(res, server.proc.pid());

        let a = &s.attributes;
        assert_eq!(s.kind, 2, "SERVER");
        assert_eq!(s.name, "POST");
        assert!(s.end_time_unix_nano > s.start_time_unix_nano);
        assert_eq!(attr_str(a, "http.request.method"), Some("POST"));
        assert_eq!(attr_str(a, "url.path"), Some("/v1/chat/completions"));
        assert_eq!(attr_int(a, "http.response.status_code"), Some(200));
        assert_eq!(attr_str(a, "server.address"), Some("127.0.0.1"));
        assert_eq!(attr_int(a, "server.port"), Some(i64::from(server.port)));
        assert_eq!(attr_str(a, "client.address"), Some("127.0.0.1"));
        assert_eq!(attr_int(a, "client.port"), Some(i64::from(client_port)));
        assert_eq!(attr_str(a, "network.protocol.version"), Some("1.1"));
        assert_eq!(attr_str(a, "gen_ai.operation.name"), Some("chat"));
        let model = attr_str(a, "gen_ai.response.model").expect("model");
        let out = attr_int(a, "gen_ai.usage.output_tokens").expect("output tokens");
        let input = attr_int(a, "gen_ai.usage.input_tokens").expect("input tokens");
        // The request record this span was made from: same tokens and model, same joules.
        let rec = requests
            .iter()
            .find(|q| {
                q["tokens"]["completion"].as_i64() == Some(out)
                    && q["tokens"]["prompt"].as_i64() == Some(input)
                    && q["model"].as_str() == Some(model)
            })
            .unwrap_or_else(|| panic!("no record for span {s:?}"));
        check_cost(a, rec);
        // Which request: the output tokens say (max_tokens = 5 + i).
        let i = usize::try_from(out - 5).unwrap();
        if i % 2 == 0 {
            assert_eq!(
                hex(&s.trace_id),
                trace_id(i),
                "span {i} joins the caller's trace"
            );
            assert_eq!(
                hex(&s.parent_span_id),
                parent_id(i),
                "child of the caller's span"
            );
            assert_eq!(s.flags & 0x3ff, 0x301, "sampled, remote parent");
            joined += 1;
        } else {
            assert!(s.parent_span_id.is_empty(), "a root span");
            assert_eq!(s.trace_id.len(), 16);
            assert!(s.trace_id.iter().any(|&b| b != 0));
        }
        assert_eq!(s.span_id.len(), 8);
        trace_ids.insert(s.trace_id.clone());
    }
    assert_eq!(joined, N / 2);
    assert_eq!(trace_ids.len(), N, "every request its own trace");

    check_metrics(&rx.last_metrics());
}

#[test]
fn receiver_answering_503_for_a_while_loses_no_span() {
    require_kernel!();
    let rx = Receiver::start(Mode::Unavailable);
    let server = usage_server();
    let endpoint = rx.endpoint();
    let probe = Attach::start_env(
        &bin(),
        server.proc.pid(),
        &["--otlp-endpoint", &endpoint],
        &FAST,
    );
    let mut c = Client::connect(server.port);
    let started = Instant::now();
    for i in 0..N_503 {
        chat(&mut c, i, None);
        thread::sleep(Duration::from_millis(50));
    }
    // Down for about 3 s in all, with retries (Retry-After: 1) meanwhile.
    thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
    assert!(
        rx.refused() > 0,
        "the exporter tried while the receiver refused"
    );
    rx.set_mode(Mode::Accept);
    assert!(
        rx.wait_for_spans(N_503, Duration::from_secs(20)),
        "got {} of {N_503} spans after recovery",
        rx.distinct_span_ids()
    );
    let records = probe.stop();
    assert_eq!(records.requests().len(), N_503);
    let otlp = &records.summary()["totals"]["otlp"];
    assert_eq!(otlp["spans_sent"], N_503 as u64, "{otlp}");
    assert_eq!(otlp["spans_dropped"], 0, "{otlp}");
    assert_eq!(rx.distinct_span_ids(), N_503);
}

#[test]
fn receiver_down_longer_than_the_queue_holds_drops_are_counted_exactly() {
    require_kernel!();
    let rx = Receiver::start(Mode::Down);
    let server = usage_server();
    let endpoint = rx.endpoint();
    let mut env = FAST.to_vec();
    env.extend([
        ("OTEL_BSP_MAX_QUEUE_SIZE", "8"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4"),
    ]);
    let probe = Attach::start_env(
        &bin(),
        server.proc.pid(),
        &["--otlp-endpoint", &endpoint],
        &env,
    );
    let mut client = Client::connect(server.port);
    for i in 0..DOWN {
        chat(&mut client, i, None);
        thread::sleep(Duration::from_millis(20));
    }
    assert!(rx.refused() > 0);
    rx.set_mode(Mode::Accept);
    // Still healthy: it traces and exports once the receiver is back.
    thread::sleep(Duration::from_secs(3));
    for i in 0..AFTER {
        chat(&mut client, DOWN + i, None);
    }
    assert!(
        rx.wait_for_spans(AFTER, Duration::from_secs(20)),
        "spans after recovery"
    );
    let records = probe.stop();
    let total = records.requests().len();
    assert_eq!(total, DOWN + AFTER);
    let otlp = &records.summary()["totals"]["otlp"];
    eprintln!(
        "summary totals.otlp: {otlp}; exports refused: {}",
        rx.refused()
    );
    let sent = otlp["spans_sent"].as_u64().unwrap();
    let dropped = otlp["spans_dropped"].as_u64().unwrap();
    assert_eq!(sent + dropped, total as u64, "{otlp}");
    assert!(
        dropped > 0,
        "the queue (8) cannot hold {DOWN} spans: {otlp}"
    );
    assert_eq!(rx.distinct_span_ids() as u64, sent, "{otlp}");
    // And in `lost` records while the run goes on (the drops of the last moments, after the
    // last interval, are in the summary only).
    let in_lost: u64 = records
        .of_type("lost")
        .iter()
        .filter_map(|r| r["export_spans"].as_u64())
        .sum();
    assert!(
        (1..=dropped).contains(&in_lost),
        "lost records say {in_lost} of {dropped} dropped spans"
    );
    // The drops are in the metrics too.
    let metrics = rx.last_metrics();
    let metric = metrics
        .iter()
        .find(|m| m.name == "cost_probe.otlp.dropped_spans")
        .expect("dropped-spans metric");
    let Some(Data::Sum(sum)) = &metric.data else {
        panic!("{metric:?}")
    };
    let v = match sum.data_points[0].value {
        Some(cost_probe_tests::otlp::NumberValue::AsDouble(v)) => v,
        ref other => panic!("{other:?}"),
    };
    assert!((1.0..=dropped as f64).contains(&v), "{v} vs {dropped}");
}

#[test]
fn malformed_otel_variables_are_one_line_and_exit_2() {
    for (k, v) in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization"),
        ("OTEL_RESOURCE_ATTRIBUTES", "a=%zz%ff"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "many"),
    ] {
        let mut env = vec![(k, v)];
        if k != "OTEL_EXPORTER_OTLP_ENDPOINT" {
            env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"));
        }
        let out = Command::new(bin())
            .args([
                "attach",
                "--pid",
                &std::process::id().to_string(),
                "--duration",
                "1",
            ])
            .envs(env.iter().copied())
            .output()
            .expect("run cost-probe");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{k}={v}: {err}");
        assert_eq!(err.lines().count(), 1, "{k}={v}: {err}");
        assert!(err.contains(k) || err.contains("otlp"), "{k}={v}: {err}");
    }
    let out = Command::new(bin())
        .args(["agent", "--rules", ".", "--otlp-endpoint", "ftp://x"])
        .output()
        .expect("run cost-probe");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// The agent exports too, configured by the environment alone; rules tags ride along.
#[test]
fn agent_exports_spans_configured_by_otel_variables() {
    require_kernel!();
    let rx = Receiver::start(Mode::Accept);
    let server = usage_server();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("10-targets.toml"),
        "[[target]]\nname = \"chat\"\ncmdline = \"usage_server\\\\.py\"\n",
    )
    .unwrap();
    let out = dir.path().join("out.ndjson");
    let endpoint = rx.endpoint();
    let mut child = Command::new(bin())
        .args(["agent", "--metrics", "off", "--rules"])
        .arg(dir.path())
        .arg("--output")
        .arg(&out)
        .envs(FAST)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let err = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    thread::spawn(move || {
        use std::io::BufRead as _;
        for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("[agent] {l}");
            let _ = tx.send(l);
        }
    });
    let want = format!("tracing pid {}", server.proc.pid());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = lines
            .recv_timeout(left)
            .expect("the agent did not start tracing the server");
        if l.contains(&want) {
            break;
        }
    }
    let mut c = Client::connect(server.port);
    for i in 0..4 {
        let tp = (i % 2 == 0).then(|| format!("00-{}-{}-01", trace_id(i), parent_id(i)));
        chat(&mut c, i, tp.as_deref());
    }
    thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "agent exited with {status}");
    let text = std::fs::read_to_string(&out).unwrap();
    let summary: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["type"] == "summary")
        .expect("summary");
    assert_eq!(summary["totals"]["otlp"]["spans_sent"], 4, "{summary}");
    let spans = rx.spans();
    assert_eq!(spans.len(), 4);
    let mut joined = 0;
    for (res, s) in &spans {
        assert_eq!(
            attr_int(&res.attributes, "process.pid"),
            Some(i64::from(server.proc.pid()))
        );
        assert_eq!(
            attr_str(&s.attributes, "cost_probe.tag.target"),
            Some("chat")
        );
        let i = usize::try_from(attr_int(&s.attributes, "gen_ai.usage.output_tokens").unwrap() - 5)
            .unwrap();
        if i % 2 == 0 {
            assert_eq!(hex(&s.trace_id), trace_id(i));
            assert_eq!(hex(&s.parent_span_id), parent_id(i));
            joined += 1;
        }
    }
    assert_eq!(joined, 2);
}
