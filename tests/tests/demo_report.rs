//! `cost-probe demo --output FILE` (what `cargo xtask demo` runs) ends with the report's table of
//! the records it wrote, writes the HTML report beside them, and `report --json` on that file
//! agrees with the records, cache opportunity included (#13).
use std::process::Command;

use cost_probe_tests::{bin, require_kernel};
use serde_json::Value;

#[test]
fn demo_ends_with_the_report_of_its_records() {
    require_kernel!();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("demo.ndjson");
    // A stale file must not add to this run's records.
    std::fs::write(&file, "stale\n").unwrap();
    let out = Command::new(bin())
        .args(["demo", "--requests", "8", "--concurrency", "2", "--output"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let requests: Vec<&Value> = records.iter().filter(|r| r["type"] == "request").collect();
    assert_eq!(requests.len(), 8);
    assert!(stdout.starts_with("8 requests (8 priced)"), "{stdout}");
    let total = stdout.lines().find(|l| l.starts_with("total")).unwrap();
    assert_eq!(total.split_whitespace().nth(1), Some("8"), "{total}");
    assert!(stdout.contains("idle waste: "), "{stdout}");
    // The HTML report beside the records: one page with the six charts, no script.
    let page = std::fs::read_to_string(file.with_extension("html")).unwrap();
    assert_eq!(page.matches("<svg").count(), 6, "{page}");
    assert!(!page.contains("<script"));

    let json = Command::new(bin())
        .args(["report", "--json", "--by", "model"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(json.status.success());
    let r: Value = serde_json::from_slice(&json.stdout).unwrap();
    let usd: f64 = requests
        .iter()
        .map(|q| q["cost_usd"]["total"].as_f64().unwrap())
        .sum();
    assert_eq!(r["totals"]["requests"], 8);
    let got = r["totals"]["cost_usd"].as_f64().unwrap();
    assert!((got - usd).abs() <= usd * 1e-9, "{got} vs {usd}");
    let per_model: u64 = r["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(per_model, 8);
    // Each client's fourth request is the same FAQ: two asked, the second a repeat.
    assert_eq!(r["cache_opportunity"]["hashed_requests"], 8);
    assert_eq!(r["cache_opportunity"]["repeats"], 1);
    assert!(
        stdout.contains("cache opportunity (exact match only"),
        "{stdout}"
    );
}
