#![expect(
    clippy::float_cmp,
    reason = "sample values are small integers or literals that round-trip exactly"
)]

use std::collections::{BTreeMap, BTreeSet};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::attribution::{CapacitySplit, DomainId, EnergyKind, IdleSource};
use crate::units::{MicroJoules, Nanos};

fn rules() -> Rules {
    Rules::from_sources([(
        "t.toml",
        "[[tag]]\nmodel = \"llama*\"\nset = { team = \"ml\" }\n",
    )])
    .unwrap()
}

fn obs<'a>(path: &'a str, tags: &'a BTreeMap<String, String>) -> RequestObs<'a> {
    RequestObs {
        method: Some("POST"),
        path: Some(path),
        status: Some(200),
        model: Some("llama-3-8b"),
        tags,
        duration_s: 0.25,
        energy_j: Some(12.5),
        cost_usd: Some(0.5),
        tokens: Some(100),
    }
}

/// A checker for the Prometheus 0.0.4 text format, strict enough to catch what promtool would:
/// every sample belongs to a family declared by `# TYPE` (with `_bucket`/`_sum`/`_count` for
/// histograms), names and labels are well formed, values are floats.
type Samples = BTreeMap<String, Vec<(BTreeMap<String, String>, f64)>>;

fn parse_exposition(text: &str) -> Samples {
    let name_ok = |n: &str| {
        let mut c = n.chars();
        c.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Samples::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap();
            assert!(name_ok(name), "{line}");
            assert!(["counter", "gauge", "histogram"].contains(&ty), "{line}");
            assert!(types.insert(name.into(), ty.into()).is_none(), "dup {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            assert!(name_ok(rest.split(' ').next().unwrap()), "{line}");
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap();
                let mut labels = BTreeMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").unwrap();
                    let v = v.strip_suffix('"').unwrap_or(v);
                    assert!(name_ok(k) && !v.contains(['"', '\\', '\n']), "{line}");
                    assert!(labels.insert(k.to_owned(), v.to_owned()).is_none());
                }
                (name, labels)
            }
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample without TYPE: {line}");
        samples
            .entry(name.to_owned())
            .or_default()
            .push((labels, value));
    }
    samples
}

#[test]
fn exposition_parses_as_prometheus_text() {
    let rules = rules();
    let mut m = Metrics::new(&rules, DEFAULT_MAX_SERIES);
    let tags = rules.tagger().tags(&crate::rules::RequestInfo {
        path: Some("/v1/chat/completions"),
        model: Some("llama-3-8b"),
        ..Default::default()
    });
    m.observe_request(&obs("/v1/chat/completions", &tags));
    m.observe_interval(
        "gpu:0",
        &IntervalSplit {
            domain: DomainId(0),
            class: EnergyKind::Gpu,
            start: Nanos(0),
            end: Nanos(100_000_000),
            measured: MicroJoules(30_000_000),
            attributed: MicroJoules(20_000_000),
            idle: MicroJoules(6_000_000),
            other: MicroJoules(4_000_000),
            static_energy: MicroJoules(6_000_000),
            idle_power_uw: 60_000_000,
            idle_source: IdleSource::Fixed,
            active_requests: 1,
            capacity: CapacitySplit::default(),
        },
    );
    m.lost(3);
    m.sampler(Duration::from_micros(150), 2);
    m.span_overflow(SpanTable::OpenSpans, 1);
    let s = parse_exposition(&m.encode());
    let req = &s["cost_probe_requests_total"][0].0;
    assert_eq!(req["endpoint"], "/v1/chat/completions");
    assert_eq!(req["tag_endpoint"], "chat");
    assert_eq!(req["team"], "ml");
    assert_eq!(req["status_class"], "2xx");
    assert_eq!(s["cost_probe_lost_events_total"][0].1, 3.0);
    assert_eq!(s["cost_probe_sampler_tick_seconds"][0].1, 0.000_15);
    assert_eq!(s["cost_probe_request_duration_seconds_count"][0].1, 1.0);
    let idle = s["cost_probe_domain_energy_joules_total"]
        .iter()
        .find(|(l, _)| l["split"] == "idle")
        .unwrap();
    assert_eq!((idle.0["domain"].as_str(), idle.1), ("gpu:0", 6.0));
    // The OpenMetrics form ends with EOF and names counter families without `_total`.
    let om = m.encode_openmetrics();
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE cost_probe_requests counter"));
}

#[test]
fn label_sets_are_capped_and_overflow_is_counted() {
    let cap = 20;
    let mut m = Metrics::new(&rules(), cap);
    let none = BTreeMap::new();
    for i in 0..500 {
        let path = format!("/route{i}");
        let mut o = obs(&path, &none);
        o.status = Some([200, 404, 500][i % 3]);
        m.observe_request(&o);
    }
    let s = parse_exposition(&m.encode());
    for family in [
        "cost_probe_requests_total",
        "cost_probe_cost_usd_total",
        "cost_probe_request_duration_seconds_count",
        "cost_probe_cost_per_1k_tokens_usd",
    ] {
        let sets: BTreeSet<_> = s[family].iter().map(|(l, _)| l.clone()).collect();
        assert!(sets.len() <= cap, "{family}: {} series", sets.len());
        assert!(sets.iter().any(|l| l["endpoint"] == "other"));
    }
    let total: f64 = s["cost_probe_requests_total"].iter().map(|(_, v)| v).sum();
    assert_eq!(total, 500.0, "folding must not lose requests");
    let overflow = &s["cost_probe_series_overflow_total"][0];
    assert_eq!(overflow.0["family"], "requests");
    assert!(overflow.1 >= 400.0);
}

#[test]
fn endpoint_is_the_normalized_path_never_the_raw_one() {
    let mut m = Metrics::new(&rules(), DEFAULT_MAX_SERIES);
    let none = BTreeMap::new();
    m.observe_request(&obs("/v1/users/12345/files?token=secret", &none));
    let mut o = obs("/x", &none);
    o.method = Some("BREW");
    o.model = Some("evil\"model\\\nname");
    o.status = None;
    m.observe_request(&o);
    let text = m.encode();
    assert!(!text.contains("secret") && !text.contains("12345"));
    let s = parse_exposition(&text);
    let sets: Vec<_> = s["cost_probe_requests_total"]
        .iter()
        .map(|(l, _)| l)
        .collect();
    assert!(sets.iter().any(|l| l["endpoint"] == "/v1/users/:id/files"));
    let odd = sets.iter().find(|l| l["endpoint"] == "/x").unwrap();
    assert_eq!(odd["method"], "other");
    assert_eq!(odd["model"], "evil_model__name");
    assert!(
        !odd.contains_key("status_class"),
        "unknown status is left out"
    );
}

#[test]
fn per_thousand_gauges_follow_the_counters() {
    let mut m = Metrics::new(&rules(), DEFAULT_MAX_SERIES);
    let none = BTreeMap::new();
    for _ in 0..4 {
        m.observe_request(&obs("/v1/embeddings", &none));
    }
    let mut unknown_tokens = obs("/v1/embeddings", &none);
    unknown_tokens.tokens = None;
    unknown_tokens.cost_usd = Some(1.0);
    m.observe_request(&unknown_tokens);
    let s = parse_exposition(&m.encode());
    // 5 requests cost $3 → $600 per 1000; tokens: $2 over 400 known tokens → $5 per 1000.
    assert!((s["cost_probe_cost_per_1k_requests_usd"][0].1 - 600.0).abs() < 1e-9);
    assert!((s["cost_probe_cost_per_1k_tokens_usd"][0].1 - 5.0).abs() < 1e-9);
    assert_eq!(s["cost_probe_tokens_total"][0].1, 400.0);
}

#[test]
fn span_stats_and_alerts_are_counted() {
    let mut m = Metrics::new(&rules(), DEFAULT_MAX_SERIES);
    let mut stats = spans::Stats {
        conn_overflow: 5,
        ..Default::default()
    };
    m.span_stats(&stats);
    stats.conn_overflow = 7;
    stats.queue_overflow = 1;
    m.span_stats(&stats);
    m.alert(&sample_alert());
    let s = parse_exposition(&m.encode());
    let by_table: BTreeMap<_, _> = s["cost_probe_span_overflow_total"]
        .iter()
        .map(|(l, v)| (l["table"].clone(), *v))
        .collect();
    assert_eq!(by_table["conns"], 7.0);
    assert_eq!(by_table["queue"], 1.0);
    let a = &s["cost_probe_alerts_total"][0];
    assert_eq!(
        (a.0["rule"].as_str(), a.0["kind"].as_str(), a.1),
        ("daily", "budget", 1.0)
    );
}

fn sample_alert() -> Alert {
    let budget = crate::rules::Budget {
        name: "daily".into(),
        period: crate::rules::schema::Period::Day,
        amount_usd: 1.0,
        alert_at: vec![1.0],
        tags: BTreeMap::new(),
    };
    let mut engine = crate::alerts::AlertEngine::from_parts(&[budget], &[]);
    let none = BTreeMap::new();
    engine
        .observe(&crate::alerts::Observation {
            time: std::time::SystemTime::UNIX_EPOCH,
            cost_usd: Some(2.0),
            energy_j: None,
            tags: &none,
        })
        .remove(0)
}

async fn get(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn http_endpoint_serves_metrics_and_404s_the_rest() {
    let metrics = Arc::new(Mutex::new(Metrics::new(&rules(), DEFAULT_MAX_SERIES)));
    metrics.lock().unwrap().lost(1);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_listener(listener, metrics));

    let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(ok.contains("Content-Type: text/plain; version=0.0.4"));
    assert!(ok.contains("cost_probe_lost_events_total 1"));
    let (head, body) = ok.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(&format!("Content-Length: {}", body.len())));

    let om = get(
        addr,
        "GET /metrics?x=1 HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n",
    )
    .await;
    assert!(om.contains("application/openmetrics-text") && om.ends_with("# EOF\n"));

    let head_only = get(addr, "HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert!(head_only.ends_with("\r\n\r\n"), "HEAD has no body");
    assert!(
        get(addr, "GET / HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404")
    );
    let post = get(addr, "POST /metrics HTTP/1.1\r\n\r\n").await;
    assert!(post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET, HEAD"));
    assert!(
        get(addr, "\x01garbage\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400")
    );
    server.abort();
}

#[test]
fn counter_families_are_renamed_for_the_text_format() {
    let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\n# UNIT a_requests x\n\
              a_requests_total 1\n# HELP g G.\n# TYPE g gauge\ng 2\n# EOF\n";
    assert_eq!(
        openmetrics_to_text(om),
        "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\n\
         a_requests_total 1\n# HELP g G.\n# TYPE g gauge\ng 2\n"
    );
}
