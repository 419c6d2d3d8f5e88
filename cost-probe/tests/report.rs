//! `report` against the records of a real run (tests/fixtures/report/README.md says how it was made).
use std::{io::Write, path::PathBuf};

use cost_probe::{
    pricing::Prices,
    report::{self, Aggregator, Input, ReportConfig},
    rules::Rules,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/report")
        .join(name)
}

fn run(inputs: &[Input], by: &[&str]) -> report::Report {
    let mut agg = Aggregator::new(ReportConfig {
        by: by.iter().map(|k| k.parse().unwrap()).collect(),
        since: None,
        until: None,
        top: 5,
        prices: Prices::from_rules(&Rules::builtin().unwrap(), None),
        budgets: Vec::new(),
    });
    report::read_inputs(inputs, &mut agg).unwrap();
    agg.finish()
}

fn golden(name: &str, got: &str) {
    let path = fixture(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap();
    assert_eq!(got, want, "{name} differs; UPDATE_GOLDEN=1 rewrites it");
}

#[test]
fn golden_table_and_json_by_team_and_model() {
    let r = run(&[Input::File(fixture("demo.ndjson"))], &["team", "model"]);
    golden("report.team-model.txt", &report::table(&r));
    golden(
        "report.team-model.json",
        &(serde_json::to_string_pretty(&r).unwrap() + "\n"),
    );
}

/// The report's sums, recomputed here from the records with `serde_json::Value`: the golden files
/// pin the format, this pins the arithmetic.
#[test]
fn totals_agree_with_the_records() {
    let text = std::fs::read_to_string(fixture("demo.ndjson")).unwrap();
    let (mut n, mut usd, mut idle, mut search) = (0u64, 0.0, 0.0, 0u64);
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        match v["type"].as_str().unwrap() {
            "request" => {
                n += 1;
                usd += v["cost_usd"]["total"].as_f64().unwrap();
                search += u64::from(v["tags"]["team"] == "search");
            }
            "interval" => idle += v["idle_j"].as_f64().unwrap(),
            _ => {}
        }
    }
    let r = run(&[Input::File(fixture("demo.ndjson"))], &["team"]);
    assert_eq!(r.totals.requests, n);
    assert!((r.totals.cost_usd - usd).abs() <= usd * 1e-12);
    assert!((r.totals.idle_j - idle).abs() <= idle * 1e-12);
    let g = r.groups.iter().find(|g| g.key == ["search"]).unwrap();
    assert_eq!(g.requests, search);
    let shares: f64 = r.groups.iter().map(|g| g.share.unwrap()).sum();
    assert!((shares - 1.0).abs() < 1e-12);
}

/// A gzipped copy (two members, as `gzip -c >>` appends) reads as the plain file twice.
#[test]
fn gzip_input_is_detected_by_its_magic() {
    let plain = std::fs::read(fixture("demo.ndjson")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("records.log.1");
    let mut f = std::fs::File::create(&gz).unwrap();
    for _ in 0..2 {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&plain).unwrap();
        f.write_all(&e.finish().unwrap()).unwrap();
    }
    drop(f);
    let once = run(&[Input::File(fixture("demo.ndjson"))], &["model"]);
    let twice = run(&[Input::File(gz)], &["model"]);
    assert_eq!(twice.totals.requests, 2 * once.totals.requests);
    assert!((twice.totals.cost_usd - 2.0 * once.totals.cost_usd).abs() < 1e-15);
}

#[test]
fn a_glob_expands_in_its_directory_and_an_empty_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for n in ["a.ndjson", "b.ndjson", "c.txt"] {
        std::fs::copy(fixture("demo.ndjson"), dir.path().join(n)).unwrap();
    }
    let pat = dir.path().join("*.ndjson");
    let got = Input::expand(pat.to_str().unwrap()).unwrap();
    assert_eq!(got.len(), 2);
    let none = dir.path().join("*.gz");
    assert!(Input::expand(none.to_str().unwrap()).is_err());
    assert_eq!(Input::expand("-").unwrap(), [Input::Stdin]);
}

/// Bad input is one line naming the file and line, and `report` exits 2.
#[test]
fn a_line_that_is_not_a_record_names_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.ndjson");
    std::fs::write(
        &p,
        "{\"v\":1,\"type\":\"lost\",\"time\":\"t\",\"events\":1}\n{oops\n",
    )
    .unwrap();
    let mut agg = Aggregator::new(ReportConfig {
        by: vec!["model".parse().unwrap()],
        since: None,
        until: None,
        top: 0,
        prices: Prices::from_rules(&Rules::builtin().unwrap(), None),
        budgets: Vec::new(),
    });
    let e = report::read_inputs(&[Input::File(p.clone())], &mut agg)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("{}:2: not a record: ", p.display())),
        "{e}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cost-probe"))
        .args(["report", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}
