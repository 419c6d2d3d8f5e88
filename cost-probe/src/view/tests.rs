#![expect(
    clippy::float_cmp,
    reason = "sums of a few exactly representable dollar amounts compare exactly"
)]
use std::collections::BTreeMap;

use ratatui::{Terminal, backend::TestBackend};

use super::*;
use crate::rules::Rules;

/// 2026-12-01T00:00:00Z in unix seconds.
const T0: i64 = 1_796_083_200;

fn stamp(sec: i64) -> String {
    humantime::format_rfc3339_nanos(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(sec as u64),
    )
    .to_string()
}

/// A request record line as the NDJSON sink writes one (the fields the view reads).
fn request(model: &str, end_sec: i64, ms: f64, joules: f64, usd: f64) -> String {
    format!(
        r#"{{"v":1,"type":"request","start":"{}","end":"{}","duration_ms":{ms},"comm":"srv","http":{{"method":"POST","path":"/v1/chat/completions","status":200}},"model":"{model}","energy_j":{{"gpu":0,"cpu":{joules},"dram":0,"total":{joules}}},"cost_usd":{{"energy":{usd},"total":{usd}}},"tags":{{"team":"t-{model}"}},"flags":[]}}"#,
        stamp(end_sec),
        stamp(end_sec)
    )
}

fn live(by: &str, started_sec: i64) -> Live {
    let rules = Rules::builtin().unwrap();
    Live::new(
        vec![by.parse().unwrap()],
        Prices::from_rules(&rules, None),
        started_sec * NS,
    )
}

#[test]
fn seconds_window_keeps_the_last_minute_only() {
    let mut s = Seconds::default();
    s.add(T0, 1.0);
    s.add(T0 + 1, 2.0);
    s.add(T0 + 1, 0.5);
    assert_eq!(s.sum(T0 + 1), 3.5);
    // Second T0 leaves the window when T0+60 enters it.
    assert_eq!(s.sum(T0 + 59), 3.5);
    assert_eq!(s.sum(T0 + 60), 2.5);
    // A second that reuses T0's slot replaces it; an older one is dropped.
    s.add(T0 + 60, 4.0);
    s.add(T0, 9.0);
    assert_eq!(s.sum(T0 + 60), 6.5);
    let series = s.series(T0 + 60);
    assert_eq!(series.len(), WINDOW_SECS as usize);
    assert_eq!(series[WINDOW_SECS as usize - 1], 4.0);
    assert_eq!(series[WINDOW_SECS as usize - 60], 2.5);
    assert_eq!(series.iter().filter(|v| **v > 0.0).count(), 2);
}

#[test]
fn usd_per_min_is_over_the_covered_window_not_extrapolated() {
    let mut l = live("model", T0);
    l.line(request("a", T0 + 5, 10.0, 2.0, 0.001).as_bytes());
    l.line(request("a", T0 + 9, 10.0, 2.0, 0.002).as_bytes());
    // 10 s into the run: $0.003 over 10 s is $0.018 a minute.
    let now = (T0 + 10) * NS;
    assert_eq!(l.window_secs(now), 10.0);
    assert!((l.usd_per_min(now) - 0.018).abs() < 1e-12);
    // 2 minutes in, both requests are out of the 60 s window; the totals keep them.
    let later = (T0 + 120) * NS;
    assert_eq!(l.window_secs(later), 60.0);
    assert_eq!(l.usd_per_min(later), 0.0);
    assert_eq!(l.rows(later)[0].usd_per_min, 0.0);
    assert!((l.totals().cost_usd - 0.003).abs() < 1e-12);
    assert_eq!(l.totals().requests, 2);
}

#[test]
fn rows_group_like_report_and_sort_by_the_chosen_column() {
    let mut l = live("model", T0);
    // "cheap": many cheap fast requests; "dear": one slow expensive one.
    for i in 0..4 {
        l.line(request("cheap", T0 + 1 + i, 5.0, 1.0, 0.0001).as_bytes());
    }
    l.line(request("dear", T0 + 2, 900.0, 50.0, 0.01).as_bytes());
    let now = (T0 + 30) * NS;
    let rows = l.rows(now);
    assert_eq!(
        rows.iter().map(|r| r.group.as_str()).collect::<Vec<_>>(),
        ["dear", "cheap"]
    );
    let dear = &rows[0];
    assert_eq!(dear.requests, 1);
    assert_eq!(dear.joules_per_request, Some(50.0));
    assert_eq!(dear.usd_per_request, Some(0.01));
    assert!((dear.usd_per_min - 0.01 / 30.0 * 60.0).abs() < 1e-12);
    assert!((rows[1].p50_ms.unwrap() - 5.0).abs() < 0.1);

    l.sort = SortBy::UsdPerMin.next();
    assert_eq!(l.sort, SortBy::Requests);
    assert_eq!(l.rows(now)[0].group, "cheap");
    l.sort = SortBy::P50;
    assert_eq!(l.rows(now)[0].group, "dear");
    assert_eq!(l.sort.next(), SortBy::UsdPerMin);

    // A tag key groups by the tags' value, as `report --by team` does.
    let mut t = live("team", T0);
    t.line(request("a", T0 + 1, 1.0, 1.0, 0.1).as_bytes());
    assert_eq!(t.rows(now)[0].group, "t-a");
}

#[test]
fn in_flight_counts_per_group_and_lists_the_oldest_first() {
    let mut l = live("model", T0);
    l.line(request("a", T0 + 1, 1.0, 1.0, 0.1).as_bytes());
    let open = |id, start, model: Option<&str>| InFlight {
        id,
        start,
        method: Some("POST".into()),
        path: Some("/v1/completions".into()),
        model: model.map(str::to_owned),
        comm: "srv".into(),
        tags: BTreeMap::new(),
    };
    let reqs = [
        open(1, 7_000_000_000, Some("a")),
        open(2, 2_000_000_000, Some("b")),
        open(3, 9_000_000_000, None),
        open(4, 8_000_000_000, Some("a")),
    ];
    l.set_in_flight(10_000_000_000, &reqs);
    assert_eq!(l.in_flight_count(), 4);
    assert_eq!(l.oldest_in_flight(2), [("b", 8.0), ("a", 3.0)]);
    let rows = l.rows((T0 + 2) * NS);
    let count = |g: &str| rows.iter().find(|r| r.group == g).unwrap().in_flight;
    assert_eq!((count("a"), count("b"), count("-")), (2, 1, 1));
    // The next snapshot replaces the last one.
    l.set_in_flight(11_000_000_000, &[]);
    assert_eq!(l.in_flight_count(), 0);
    assert!(l.rows((T0 + 2) * NS).iter().all(|r| r.in_flight == 0));
}

#[test]
fn intervals_lost_and_summary_fill_the_header() {
    let mut l = live("model", T0);
    l.line(br#"{"v":1,"type":"interval","start":"x","end":"y","measured_j":{},"attributed_j":1.0,"idle_j":3.6,"other_j":0,"active_requests":0,"domains":[{"domain":"cpu","idle_w":5.5},{"domain":"gpu0","idle_w":30.0}],"sampler_us":1}"#);
    l.line(br#"{"v":1,"type":"lost","time":"2026-12-01T00:00:00Z","events":7}"#);
    l.line(b"not json");
    let t = l.totals();
    assert_eq!(t.idle_j, 3.6);
    assert_eq!(t.idle_w, 35.5);
    assert!(t.idle_usd > 0.0);
    assert_eq!(t.lost_events, 7);
    assert_eq!(t.unreadable, 1);
    assert!(l.summary().is_none());
    l.line(br#"{"v":1,"type":"summary","totals":{"requests":0}}"#);
    assert!(l.summary().unwrap().contains("\"summary\""));
}

#[test]
fn usd_has_three_significant_figures_and_no_exponent() {
    assert_eq!(draw::usd(0.0), "0");
    assert_eq!(draw::usd(0.000_123_4), "0.000123");
    assert_eq!(draw::usd(1.234_5), "1.23");
    assert_eq!(draw::usd(1234.6), "1235");
}

/// The view drawn on a 120 × 24 terminal at `now` (unix ns), line by line.
fn screen(l: &Live, now: i64) -> Vec<String> {
    let mut term = Terminal::new(TestBackend::new(120, 24)).unwrap();
    let ctx = draw::Context {
        title: "cost-probe top: pid 1 (srv)".into(),
        message: Some("cost-probe: hello".into()),
    };
    term.draw(|f| draw::draw(f, l, &ctx, now)).unwrap();
    let buf = term.backend().buffer();
    (0..buf.area.height)
        .map(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol())
                .collect::<String>()
        })
        .collect()
}

#[test]
fn draw_shows_header_rows_in_flight_and_sparkline() {
    let mut l = live("model", T0);
    l.line(request("llama", T0 + 3, 12.0, 4.0, 0.0005).as_bytes());
    l.line(request("llama", T0 + 5, 12.0, 4.0, 0.0005).as_bytes());
    l.set_in_flight(
        5_000_000_000,
        &[InFlight {
            id: 9,
            start: 2_500_000_000,
            method: None,
            path: None,
            model: Some("llama".into()),
            comm: "srv".into(),
            tags: BTreeMap::new(),
        }],
    );
    let text = screen(&l, (T0 + 6) * NS);
    let all = text.join("\n");
    assert!(text[0].starts_with("cost-probe top: pid 1 (srv)"), "{all}");
    assert!(all.contains("requests 2 (partial 0)"), "{all}");
    assert!(all.contains("in flight 1   oldest: llama 2.5 s"), "{all}");
    let row = text
        .iter()
        .find(|l| l.trim_start().starts_with("llama"))
        .unwrap_or_else(|| panic!("{all}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    // group, requests, in flight, $/min (0.001 over 6 s), J/request, $/request, p50.
    assert_eq!(
        cols[..6],
        ["llama", "2", "1", "0.0100", "4.000", "0.000500"]
    );
    assert!(all.contains("$ per second, last 60 s"), "{all}");
    // Two seconds with spend draw full bars at the right end of the sparkline.
    let bars = text.iter().filter(|l| l.contains('█')).count();
    assert!(bars > 0, "{all}");
    assert!(
        all.contains("q quit   s sort (by $/min)   | cost-probe: hello"),
        "{all}"
    );
}

/// A view that stops draining must not stall the run: the queue drops what it cannot take,
/// counts it, and the view says how many records it missed; once drained it takes again.
#[test]
fn a_full_view_queue_drops_without_blocking_and_the_view_says_how_many_it_missed() {
    let (tx, rx) = sink::channel(2);
    for i in 0..5 {
        tx.send(sink::Msg::Line(
            request("llama", T0 + 1 + i, 12.0, 4.0, 0.0005).into_bytes(),
        ));
    }
    assert_eq!(rx.dropped(), 3);
    let mut l = live("model", T0);
    while let Ok(msg) = rx.rx.try_recv() {
        let sink::Msg::Line(line) = msg else {
            panic!("only lines were sent")
        };
        l.line(&line);
    }
    l.dropped(rx.dropped());
    let all = screen(&l, (T0 + 6) * NS).join("\n");
    assert!(all.contains("requests 2 (partial 0)"), "{all}");
    assert!(all.contains("view missed 3 records"), "{all}");
    tx.send(sink::Msg::Line(
        request("llama", T0 + 7, 12.0, 4.0, 0.0005).into_bytes(),
    ));
    assert_eq!(rx.dropped(), 3);
    assert!(rx.rx.try_recv().is_ok());
}
