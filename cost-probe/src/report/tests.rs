use super::*;

fn prices() -> Prices {
    Prices {
        usd_per_kwh: 0.1,
        pue: 2.0,
        carbon_g_per_kwh: 300.0,
        gpu_usd_per_hour: 3.0,
        cpu_usd_per_core_hour: 0.05,
        egress_usd_per_gb: 0.0,
    }
}

fn config(by: &[&str], top: usize) -> ReportConfig {
    ReportConfig {
        by: by.iter().map(|k| k.parse().unwrap()).collect(),
        since: None,
        until: None,
        top,
        prices: prices(),
        budgets: Vec::new(),
    }
}

fn request(start: &str, model: &str, team: &str, ms: f64, j: f64, usd: f64, tokens: u64) -> String {
    format!(
        r#"{{"v":1,"type":"request","start":"{start}","end":"{start}","duration_ms":{ms},"pid":1,"comm":"srv","conn":{{}},"protocol":"http1","http":{{"method":"POST","path":"/v1/chat/completions","status":200}},"bytes":{{"in":1,"out":2}},"first_chunk_ms":{ttft},"model":"{model}","tokens":{{"prompt":{p},"completion":{c}}},"energy_j":{{"gpu":{j},"cpu":0.0,"dram":0.0,"total":{j}}},"attribution":{{"method":"stream"}},"cost_usd":{{"energy":0.0,"capacity":{usd},"total":{usd}}},"co2_g":0.5,"tags":{{"team":"{team}"}},"flags":["streamed"]}}"#,
        ttft = ms / 10.0,
        p = tokens / 2,
        c = tokens - tokens / 2,
    )
}

fn feed(agg: &mut Aggregator, lines: &[String]) {
    for l in lines {
        agg.line(l.as_bytes()).unwrap();
    }
}

#[test]
fn groups_sum_share_and_price_per_token_known_answers() {
    let mut agg = Aggregator::new(config(&["team"], 2));
    feed(
        &mut agg,
        &[
            request("2026-01-01T00:00:00Z", "a", "x", 100.0, 1.0, 0.01, 100),
            request("2026-01-01T00:00:01Z", "a", "x", 300.0, 3.0, 0.03, 200),
            request("2026-01-01T00:00:02Z", "b", "y", 200.0, 2.0, 0.06, 0),
        ],
    );
    let r = agg.finish();
    assert_eq!(r.groups.len(), 2);
    let (y, x) = (&r.groups[0], &r.groups[1]);
    assert_eq!(y.key, ["y"]);
    assert_eq!(x.key, ["x"]);
    assert_eq!(x.requests, 2);
    assert!((x.cost_usd - 0.04).abs() < 1e-12);
    assert!((x.share.unwrap() - 0.4).abs() < 1e-12);
    assert!((y.share.unwrap() - 0.6).abs() < 1e-12);
    // 0.04 $ over 300 tokens; the request without tokens has no $/1k tokens.
    assert!((x.usd_per_1k_tokens.unwrap() - 0.04 / 0.3).abs() < 1e-12);
    assert_eq!(y.usd_per_1k_tokens, None);
    assert!((x.j_per_request.unwrap() - 2.0).abs() < 1e-12);
    assert!((x.latency_p99_ms.unwrap() - 300.0).abs() < 300.0 * 0.01);
    assert!((x.ttft_p50_ms.unwrap() - 10.0).abs() < 0.1);
    assert_eq!(r.totals.requests, 3);
    assert!((r.totals.cost_usd - 0.1).abs() < 1e-12);
    assert!((r.totals.usd_per_1k_tokens.unwrap() - 0.04 / 0.3).abs() < 1e-12);
    assert_eq!(r.top.len(), 2);
    assert!((r.top[0].cost_usd - 0.06).abs() < 1e-12);
    assert!((r.top[1].cost_usd - 0.03).abs() < 1e-12);
    assert_eq!(r.from.as_deref(), Some("2026-01-01T00:00:00.000000000Z"));
}

#[test]
fn idle_energy_is_priced_like_requests_energy() {
    let mut agg = Aggregator::new(config(&["model"], 0));
    // 3.6 MJ = 1 kWh IT energy; × PUE 2 × 0.1 $/kWh = 0.2 $.
    agg.line(br#"{"v":1,"type":"interval","start":"2026-01-01T00:00:00Z","end":"2026-01-01T00:00:01Z","measured_j":{"gpu:0":3600010.0},"attributed_j":4.0,"idle_j":3600000.0,"other_j":6.0,"active_requests":0,"domains":[],"sampler_us":1.0}"#).unwrap();
    agg.line(br#"{"v":1,"type":"lost","time":"2026-01-01T00:00:01Z","events":7}"#)
        .unwrap();
    agg.line(br#"{"v":1,"type":"summary","groups":[],"totals":{}}"#)
        .unwrap();
    let t = agg.finish().totals;
    assert!((t.idle_usd - 0.2).abs() < 1e-9, "{}", t.idle_usd);
    assert_eq!((t.intervals, t.lost_events), (1, 7));
    assert!((t.attributed_j - 4.0).abs() < 1e-12 && (t.other_j - 6.0).abs() < 1e-12);
}

#[test]
fn since_and_until_keep_a_half_open_window() {
    let mut c = config(&["model"], 0);
    c.since = record::unix_nanos("2026-01-01T00:00:01Z");
    c.until = record::unix_nanos("2026-01-01T00:00:02Z");
    let mut agg = Aggregator::new(c);
    feed(
        &mut agg,
        &[
            request("2026-01-01T00:00:00.999Z", "a", "x", 1.0, 1.0, 1.0, 1),
            request("2026-01-01T00:00:01Z", "a", "x", 1.0, 1.0, 2.0, 1),
            request("2026-01-01T00:00:02Z", "a", "x", 1.0, 1.0, 4.0, 1),
        ],
    );
    let r = agg.finish();
    assert_eq!(r.totals.requests, 1);
    assert!((r.totals.cost_usd - 2.0).abs() < 1e-12);
    assert_eq!(r.totals.outside_window, 2);
}

#[test]
fn groups_past_the_cap_fold_into_other() {
    let mut agg = Aggregator::new(config(&["team"], 0));
    for i in 0..=MAX_GROUPS {
        agg.line(
            request(
                "2026-01-01T00:00:00Z",
                "m",
                &format!("t{i}"),
                1.0,
                1.0,
                1.0,
                1,
            )
            .as_bytes(),
        )
        .unwrap();
    }
    let r = agg.finish();
    assert_eq!(r.groups.len(), MAX_GROUPS + 1);
    assert!(r.groups.iter().any(|g| g.key == [OTHER] && g.requests == 1));
}

#[test]
fn a_missing_key_is_a_dash_and_a_bad_line_an_error() {
    let mut agg = Aggregator::new(config(&["model", "region"], 0));
    agg.line(br#"{"v":1,"type":"request","duration_ms":1.0}"#)
        .unwrap();
    agg.line(b"  \n").unwrap();
    assert!(agg.line(b"{\"v\":1,\"type\":").is_err());
    assert!(agg.line(b"not json").is_err());
    let r = agg.finish();
    assert_eq!(r.groups[0].key, ["-", "-"]);
    assert_eq!(r.groups[0].usd_per_request, None);
}

#[test]
fn group_keys_are_checked_at_the_edge() {
    assert_eq!("model".parse::<GroupKey>(), Ok(GroupKey::Model));
    assert_eq!("team".parse::<GroupKey>(), Ok(GroupKey::Tag("team".into())));
    assert!("".parse::<GroupKey>().is_err());
    assert!("a b".parse::<GroupKey>().is_err());
}

#[test]
fn sig3_keeps_three_significant_digits() {
    assert_eq!(render::sig3(0.0), "0");
    assert_eq!(render::sig3(123.456), "123");
    assert_eq!(render::sig3(1.23456), "1.23");
    assert_eq!(render::sig3(0.00707), "0.00707");
    assert_eq!(render::sig3(1.26e-7), "1.26e-7");
    assert_eq!(render::sig3(2.5e7), "2.50e7");
}

fn interval(start: &str, end: &str) -> String {
    format!(
        r#"{{"v":1,"type":"interval","start":"{start}","end":"{end}","measured_j":{{}},"attributed_j":0.0,"idle_j":0.0,"other_j":0.0,"active_requests":0,"domains":[],"sampler_us":1.0}}"#
    )
}

/// Four minutes of records from 2026-01-10T00:00:00Z: 24 sub-windows of 10 s (100 buckets of
/// 100 ms each, so they align exactly), `per_second` requests of 0.6 $ a second in those
/// `active` selects.
fn window(active: impl Fn(i64) -> bool, per_second: i64, config: ReportConfig) -> Report {
    let mut agg = Aggregator::new(config);
    let t0 = record::unix_nanos("2026-01-10T00:00:00Z").unwrap();
    agg.line(interval("2026-01-10T00:00:00Z", "2026-01-10T00:04:00Z").as_bytes())
        .unwrap();
    for sec in 0..240 {
        if !active(sec / 10) {
            continue;
        }
        for k in 0..per_second {
            let t = t0 + sec * 1_000_000_000 + k * 200_000_000;
            let s = humantime::format_rfc3339_nanos(
                std::time::UNIX_EPOCH + std::time::Duration::from_nanos(t as u64),
            )
            .to_string();
            agg.line(request(&s, "a", "x", 1.0, 1.0, 0.6, 1).as_bytes())
                .unwrap();
        }
    }
    agg.finish()
}

/// Seconds from the window's end (00:04) to 2026-02-01.
const LEFT_IN_MONTH: f64 = 21.0 * 86_400.0 + 86_400.0 - 240.0;

#[test]
fn forecast_at_a_steady_rate_is_exact_with_no_spread() {
    let r = window(|_| true, 1, config(&["model"], 0));
    let p = r.month_end.unwrap();
    // 240 × 0.6 $ over 240 s = 0.6 $/s = 2,160 $/h.
    assert!((p.spent_usd - 144.0).abs() < 1e-9);
    assert!((p.usd_per_hour - 2160.0).abs() < 1e-6);
    let want = 144.0 + 0.6 * LEFT_IN_MONTH;
    assert!((p.projected_usd - want).abs() < 1e-6, "{p:?}");
    assert!((p.projected_low_usd.unwrap() - want).abs() < 1e-6, "{p:?}");
    assert!((p.projected_high_usd.unwrap() - want).abs() < 1e-6, "{p:?}");
    assert_eq!(p.period_end, "2026-02-01T00:00:00Z");
    assert_eq!(r.groups[0].month_end.as_ref(), Some(&p));
}

#[test]
fn forecast_range_is_the_spread_of_sub_window_rates() {
    // Every other sub-window at twice the rate: the same mean, sub-window rates of 0 and 1.2 $/s.
    let r = window(|j| j % 2 == 0, 2, config(&["model"], 0));
    let p = r.month_end.unwrap();
    assert!((p.spent_usd - 144.0).abs() < 1e-9);
    assert!(
        (p.projected_usd - (144.0 + 0.6 * LEFT_IN_MONTH)).abs() < 1e-6,
        "{p:?}"
    );
    assert!((p.projected_low_usd.unwrap() - 144.0).abs() < 1e-6, "{p:?}");
    let high = 144.0 + 1.2 * LEFT_IN_MONTH;
    assert!((p.projected_high_usd.unwrap() - high).abs() < 1e-6, "{p:?}");
}

#[test]
fn a_budget_counts_only_its_tags_and_its_period() {
    let mut c = config(&["model"], 0);
    c.budgets = vec![
        Budget {
            name: "team-x-day".into(),
            period: crate::rules::schema::Period::Day,
            amount_usd: 100_000.0,
            alert_at: vec![1.0],
            tags: [("team".to_owned(), "x".to_owned())].into(),
        },
        Budget {
            name: "team-y-hour".into(),
            period: crate::rules::schema::Period::Hour,
            amount_usd: 1.0,
            alert_at: vec![1.0],
            tags: [("team".to_owned(), "y".to_owned())].into(),
        },
    ];
    let r = window(|_| true, 1, c);
    let (x, y) = (&r.budgets[0], &r.budgets[1]);
    assert_eq!(x.projection.period_start, "2026-01-10T00:00:00Z");
    assert!((x.projection.spent_usd - 144.0).abs() < 1e-9);
    let want = 144.0 + 0.6 * (86_400.0 - 240.0);
    assert!((x.projection.projected_usd - want).abs() < 1e-6);
    assert!((x.used - 144.0 / 100_000.0).abs() < 1e-12);
    assert!((x.projected_used - want / 100_000.0).abs() < 1e-9);
    assert!(y.projection.spent_usd.abs() < 1e-12 && y.projection.projected_usd.abs() < 1e-12);
}

#[test]
fn a_window_shorter_than_24_buckets_has_no_range() {
    let mut agg = Aggregator::new(config(&["model"], 0));
    agg.line(request("2026-01-10T00:00:00Z", "a", "x", 1.0, 1.0, 1.0, 1).as_bytes())
        .unwrap();
    agg.line(request("2026-01-10T00:00:01Z", "a", "x", 1.0, 1.0, 1.0, 1).as_bytes())
        .unwrap();
    let p = agg.finish().month_end.unwrap();
    assert_eq!((p.projected_low_usd, p.projected_high_usd), (None, None));
    assert!((p.usd_per_hour - 7200.0).abs() < 1e-6);
}

#[test]
fn a_series_past_its_bucket_cap_coarsens_and_keeps_every_dollar() {
    let mut s = forecast::Series::default();
    // Out of order, over ~5 days of 100 ms buckets.
    for i in (0..5000i64).rev() {
        s.add(i * 86_400_000_000, 1.0);
    }
    let pts: Vec<_> = s.points().collect();
    assert!(pts.len() <= 4096);
    assert!((pts.iter().map(|p| p.2).sum::<f64>() - 5000.0).abs() < 1e-9);
}

#[test]
fn lines_split_across_reader_fills_are_read_whole() {
    let text = format!(
        "{}\n\n{}",
        request("2026-01-01T00:00:00Z", "a", "x", 100.0, 1.0, 0.01, 100),
        request("2026-01-01T00:00:01Z", "b", "x", 100.0, 1.0, 0.02, 100)
    );
    for cap in [1, 7, 64, 1 << 20] {
        let mut agg = Aggregator::new(config(&["model"], 0));
        read_from(
            "t",
            std::io::BufReader::with_capacity(cap, text.as_bytes()),
            &mut agg,
        )
        .unwrap();
        let r = agg.finish();
        assert_eq!(r.totals.requests, 2, "capacity {cap}");
        assert!((r.totals.cost_usd - 0.03).abs() < 1e-12, "capacity {cap}");
    }
    let mut agg = Aggregator::new(config(&["model"], 0));
    let err = read_from(
        "t",
        std::io::BufReader::with_capacity(5, &b"\n\n{\"type\":\n"[..]),
        &mut agg,
    );
    assert!(
        err.unwrap_err()
            .to_string()
            .starts_with("t:3: not a record")
    );
}

/// `request(…)` with a `request_hash` and an egress part of its cost.
fn hashed(start: &str, team: &str, j: f64, usd: f64, hash: u64, egress: f64) -> String {
    request(start, "m", team, 10.0, j, usd, 10)
        .replacen(
            r#","bytes":"#,
            &format!(r#","request_hash":"{hash:016x}","bytes":"#),
            1,
        )
        .replacen(r#""total":"#, &format!(r#""egress":{egress},"total":"#), 2)
}

#[test]
fn three_of_one_prompt_are_two_repeats_and_their_cost() {
    let mut agg = Aggregator::new(config(&["team"], 0));
    let mut lines = Vec::new();
    // 10 requests: the prompt 0xabc three times (at 0.01, 0.02, 0.04 $), seven distinct others.
    for (i, (hash, team, usd, j)) in [
        (0xabc, "x", 0.01, 1.0),
        (1, "x", 0.5, 5.0),
        (0xabc, "y", 0.02, 2.0),
        (2, "x", 0.5, 5.0),
        (3, "y", 0.5, 5.0),
        (0xabc, "x", 0.04, 4.0),
        (4, "x", 0.5, 5.0),
        (5, "x", 0.5, 5.0),
        (6, "y", 0.5, 5.0),
        (7, "y", 0.5, 5.0),
    ]
    .into_iter()
    .enumerate()
    {
        lines.push(hashed(
            &format!("2026-01-01T00:00:0{i}Z"),
            team,
            j,
            usd,
            hash,
            0.0,
        ));
    }
    // One without a hash (body not captured whole) is neither first nor repeat.
    lines.push(request("2026-01-01T00:00:10Z", "m", "x", 1.0, 1.0, 0.01, 1));
    feed(&mut agg, &lines);
    let r = agg.finish();
    let c = &r.cache_opportunity;
    assert_eq!((c.hashed_requests, c.repeats, c.unknown), (10, 2, 0));
    // The first (0.01 $, 1 J) is not a repeat; the two later ones are.
    assert!((c.repeat_usd - 0.06).abs() < 1e-12, "{c:?}");
    assert!((c.repeat_j - 6.0).abs() < 1e-12, "{c:?}");
    assert!((c.share_of_cost.unwrap() - 0.06 / r.totals.cost_usd).abs() < 1e-12);
    let by = |k: &str| c.groups.iter().find(|g| g.key == [k]).unwrap();
    assert_eq!((by("x").repeats, by("y").repeats), (1, 1));
    assert!((by("x").repeat_usd - 0.04).abs() < 1e-12);
    assert!((by("y").repeat_usd - 0.02).abs() < 1e-12);
    assert!(table(&r).contains("cache opportunity (exact match only"));
}

#[test]
fn hashes_past_the_cap_are_unknown_and_remembered_ones_still_repeat() {
    let mut seen = cache::Seen::default();
    for h in 0..cache::MAX_DISTINCT as u64 {
        assert_eq!(seen.check(h), cache::Kind::First);
    }
    assert_eq!(seen.check(u64::MAX), cache::Kind::Unknown);
    assert_eq!(seen.check(u64::MAX), cache::Kind::Unknown);
    assert_eq!(seen.check(7), cache::Kind::Repeat);
}

#[test]
fn egress_sums_per_group_and_in_total() {
    let mut agg = Aggregator::new(config(&["team"], 0));
    feed(
        &mut agg,
        &[
            hashed("2026-01-01T00:00:00Z", "x", 1.0, 0.25, 1, 0.09),
            hashed("2026-01-01T00:00:01Z", "x", 1.0, 0.25, 2, 0.01),
            hashed("2026-01-01T00:00:02Z", "y", 1.0, 0.25, 3, 0.0),
        ],
    );
    let r = agg.finish();
    assert!((r.totals.egress_usd - 0.1).abs() < 1e-12);
    assert_eq!(r.totals.bytes_out, 6);
    let x = r.groups.iter().find(|g| g.key == ["x"]).unwrap();
    assert!((x.egress_usd - 0.1).abs() < 1e-12);
    assert!(table(&r).contains("egress: 6 bytes out, $0.100 (part of cost)"));
}
