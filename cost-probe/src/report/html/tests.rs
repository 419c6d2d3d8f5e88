use super::*;
use crate::{
    pricing::Prices,
    report::{Aggregator, ReportConfig},
};

fn config(by: &[&str]) -> ReportConfig {
    ReportConfig {
        by: by.iter().map(|k| k.parse().unwrap()).collect(),
        since: None,
        until: None,
        top: 5,
        prices: Prices {
            usd_per_kwh: 0.1,
            pue: 1.5,
            carbon_g_per_kwh: 300.0,
            gpu_usd_per_hour: 3.0,
            cpu_usd_per_core_hour: 0.05,
            egress_usd_per_gb: 0.0,
        },
        budgets: Vec::new(),
    }
}

/// A request record whose strings are given as JSON string literals (quotes included).
fn request(start: &str, model: &str, team: &str, path: &str) -> String {
    format!(
        r#"{{"v":1,"type":"request","start":"{start}","end":"{start}","duration_ms":12.5,"comm":"srv","http":{{"method":"POST","path":{path},"status":200}},"model":{model},"tokens":{{"prompt":10,"completion":20}},"energy_j":{{"total":0.5}},"cost_usd":{{"total":0.002}},"co2_g":0.1,"tags":{{"team":{team}}}}}"#
    )
}

fn interval(start: &str, end: &str) -> String {
    format!(
        r#"{{"v":1,"type":"interval","start":"{start}","end":"{end}","attributed_j":0.3,"idle_j":0.1,"other_j":0.6}}"#
    )
}

fn page_of(by: &[&str], lines: &[String]) -> String {
    let mut agg = Aggregator::new(config(by)).with_views();
    for l in lines {
        agg.line(l.as_bytes()).unwrap();
    }
    page(&agg.finish()).unwrap()
}

#[test]
fn record_strings_cannot_inject_markup() {
    let hostile = [
        request(
            "2026-01-01T00:00:00Z",
            r#""<img src=x onerror=alert(1)>""#,
            r#""<script>alert('team')</script>""#,
            r#""/a\"><script>alert(2)</script>""#,
        ),
        request(
            "2026-01-01T00:00:01Z",
            r#""</style><script>alert(3)</script>""#,
            r#""]]><svg onload=alert(4)>""#,
            r#""/b""#,
        ),
        interval("2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z"),
    ];
    for by in [&["team"][..], &["model", "path"]] {
        let html = page_of(by, &hostile);
        let lower = html.to_ascii_lowercase();
        assert!(!lower.contains("<script"), "{by:?}: a <script> element");
        assert!(!lower.contains("<img"), "{by:?}: an <img> element");
        // The handlers are there as text only: no element but the six charts' <svg>.
        assert_eq!(lower.matches("<svg").count(), 6, "{by:?}: an <svg> element");
        // One <style> element, the page's own.
        assert_eq!(lower.matches("</style>").count(), 1, "{by:?}");
        // Escaped, in the tables (maud) and in the charts' labels (plotters).
        assert!(html.contains("&lt;script&gt;alert("), "{by:?}");
    }
}

#[test]
fn every_chart_is_an_svg_in_its_fixed_place() {
    let lines: Vec<String> = (0..20)
        .flat_map(|i| {
            let s = format!("2026-01-01T00:00:{i:02}Z");
            let e = format!("2026-01-01T00:00:{:02}Z", i + 1);
            [request(&s, r#""m""#, r#""x""#, r#""/p""#), interval(&s, &e)]
        })
        .collect();
    let html = page_of(&["team"], &lines);
    assert_eq!(html.matches("<svg").count(), 6);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("default-src 'none'"));
    for (i, id) in [
        "chart-cost",
        "chart-energy",
        "chart-tokens",
        "chart-latency",
        "chart-joules",
        "chart-budget",
    ]
    .iter()
    .enumerate()
    {
        let (x, y) = chart_position(i);
        let at = html
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("{id} missing"));
        let figure = &html[at..html[at..].find("</figure>").unwrap() + at];
        assert!(
            figure.contains(&format!(
                "left:{x}px;top:{y}px;width:{CHART_WIDTH}px;height:{CHART_HEIGHT}px"
            )),
            "{id}"
        );
        assert_eq!(figure.matches("<svg").count(), 1, "{id}");
        // Data was drawn: a filled shape in the palette, not only axes and text.
        assert!(
            figure.contains("fill=\"#1F77B4\"") || figure.contains("fill=\"#FF7F0E\""),
            "{id}"
        );
    }
    assert!(html.contains("<table class=\"groups\">"));
}

#[test]
fn a_report_of_nothing_still_draws_every_chart() {
    let html = page_of(&["model"], &[]);
    assert_eq!(html.matches("<svg").count(), 6);
    assert!(html.contains("no records with a time"));
}

#[test]
fn a_report_read_without_views_is_refused() {
    let r = Aggregator::new(config(&["model"])).finish();
    assert!(matches!(page(&r), Err(HtmlError::NoViews)));
}
