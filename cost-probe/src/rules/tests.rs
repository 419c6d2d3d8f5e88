#![expect(
    clippy::float_cmp,
    reason = "values parsed from TOML literals compare exactly"
)]

use super::schema::{AnomalyMetric, GpuPricing, Period};
use super::*;

fn load(text: &str) -> Result<Rules, RulesError> {
    Rules::from_sources([("dir/10-site.toml", text)])
}

fn err(text: &str) -> String {
    load(text).unwrap_err().to_string()
}

#[test]
fn builtin_rules_parse_with_documented_defaults() {
    let r = Rules::builtin().unwrap();
    assert_eq!(r.energy.pue, 1.56);
    assert_eq!(r.attribution, LedgerConfig::default());
    assert_eq!(r.gpu_for("NVIDIA H100 80GB HBM3").0, "h100");
    assert_eq!(r.gpu_for("NVIDIA L40S").0, "l40s");
    assert_eq!(r.gpu_for("NVIDIA A100-SXM4-80GB").0, "a100");
    assert_eq!(r.gpu_for("NVIDIA A10G").0, "a10");
    assert_eq!(r.gpu_for("Tesla V100").0, "default");
    assert!(r.budgets.is_empty() && r.targets.is_empty());
    assert_eq!(r.network.egress_usd_per_gb, 0.0);
}

#[test]
fn files_merge_in_order_over_defaults() {
    let r = Rules::from_sources([
        ("a.toml", "[energy]\npue = 1.2\n[[budget]]\nname = \"a\"\nperiod = \"day\"\namount_usd = 10\n"),
        (
            "b.toml",
            "[energy]\nprice_usd_per_kwh = 0.3\n[gpu.h100]\npurchase_usd = 25000\nyears = 4\n\
             [attribution]\nidle = \"amortize\"\nsplit = \"tokens\"\nidle_power = 55\n\
             [[budget]]\nname = \"b\"\nperiod = \"month\"\namount_usd = 100\nalert_at = [0.5, 1.0]\n\
             tags = { team = \"ml\" }\n",
        ),
    ])
    .unwrap();
    assert_eq!(r.energy.pue, 1.2);
    assert_eq!(r.energy.price_usd_per_kwh, 0.3);
    assert_eq!(r.energy.carbon_g_per_kwh, 367.0);
    assert_eq!(
        r.gpu["h100"].pricing,
        GpuPricing::Amortized {
            purchase_usd: 25_000.0,
            years: 4.0,
            utilization: 1.0
        }
    );
    let c = r.ledger_config();
    assert_eq!(
        (c.idle, c.split, c.idle_power),
        (
            IdleMode::Amortize,
            SplitMode::Tokens,
            IdlePower::Watts(55.0)
        )
    );
    assert_eq!(r.budgets.len(), 2);
    assert_eq!(r.budgets[0].alert_at, [0.7, 0.9, 1.0]);
    assert_eq!(r.budgets[1].period, Period::Month);
    assert_eq!(r.budgets[1].tags["team"], "ml");
    assert_eq!(r.sources.len(), 3);
}

#[test]
fn anomaly_and_target_rules_parse() {
    let r = load(
        "[[anomaly]]\nname = \"spike\"\nmetric = \"cost_per_request\"\nfactor = 3\nwindow = \"1h\"\n\
         [[target]]\nname = \"vllm\"\ncomm = \"python*\"\ncmdline = \"vllm\\\\.entrypoints\"\nport = 8000\n",
    )
    .unwrap();
    assert_eq!(r.anomalies[0].metric, AnomalyMetric::CostPerRequest);
    assert_eq!(r.anomalies[0].window, Duration::from_hours(1));
    let t = &r.targets[0];
    assert!(t.comm.as_ref().unwrap().is_match("python3"));
    assert!(
        t.cmdline
            .as_ref()
            .unwrap()
            .is_match("python -m vllm.entrypoints.openai.api_server")
    );
    assert_eq!(t.port, Some(8000));
}

#[test]
fn malformed_toml_names_file_line_and_column() {
    let e = err("[energy]\npue = 1.3\nprice_usd_per_kwh = = 2\n");
    assert!(e.starts_with("dir/10-site.toml:3:"), "{e}");
}

#[test]
fn unknown_key_is_rejected_with_its_line() {
    let e = err("\n[energy]\npue = 1.3\nprice_usd_per_kwhh = 0.2\n");
    assert!(e.starts_with("dir/10-site.toml:4:1: "), "{e}");
    assert!(e.contains("unknown field `price_usd_per_kwhh`"), "{e}");
    let e = err("[attribution]\nidel = \"amortize\"\n");
    assert!(e.starts_with("dir/10-site.toml:2:1: "), "{e}");
    let e = err("[sla]\nx = 1\n");
    assert!(e.contains("unknown field `sla`"), "{e}");
}

#[test]
fn invalid_values_name_their_line() {
    let e = err("[energy]\n\npue = 0.8\n");
    assert!(e.starts_with("dir/10-site.toml:3:7: "), "{e}");
    assert!(e.contains("pue must be between 1.0 and 5.0"), "{e}");
    let e = err("[energy]\nprice_usd_per_kwh = -1\n");
    assert!(e.starts_with("dir/10-site.toml:2:"), "{e}");
    let e = err("[attribution]\nidle = \"sometimes\"\n");
    assert!(e.starts_with("dir/10-site.toml:2:"), "{e}");
    let e = err("[attribution]\nidle_power = \"guess\"\n");
    assert!(
        e.starts_with("dir/10-site.toml:2:") && e.contains("learned"),
        "{e}"
    );
    let e = err("[attribution]\nidle_percentile = 101\n");
    assert!(e.starts_with("dir/10-site.toml:2:"), "{e}");
}

#[test]
fn gpu_pricing_must_be_one_way() {
    let e = err("[gpu.h100]\nusd_per_hour = 2\npurchase_usd = 30000\nyears = 3\n");
    assert!(e.starts_with("dir/10-site.toml:"), "{e}");
    assert!(e.contains("either usd_per_hour"), "{e}");
    let e = err("[gpu.h100]\npurchase_usd = 30000\n");
    assert!(e.contains("needs years"), "{e}");
    let e = err("[gpu.h100]\nusd_per_hour = 2\nutilisation = 0.5\n");
    assert!(e.contains("unknown field `utilisation`"), "{e}");
}

#[test]
fn bad_tag_rules_are_rejected() {
    let e = err("[[tag]]\npath_regex = \"([\"\nset = { a = \"b\" }\n");
    assert!(
        e.starts_with("dir/10-site.toml:2:") && e.contains("invalid regex"),
        "{e}"
    );
    let e = err("[[tag]]\npath = \"/x\"\nset = { \"bad-name\" = \"b\" }\n");
    assert!(e.contains("not a valid label name"), "{e}");
    let e = err("[[tag]]\npath = \"/x\"\nset = {}\n");
    assert!(e.contains("at least one entry"), "{e}");
}

#[test]
fn bad_budgets_anomalies_and_targets_are_rejected() {
    let b = "[[budget]]\nname = \"x\"\nperiod = \"day\"\namount_usd = 5\n";
    let e = err(&format!("{b}{b}"));
    assert!(
        e.starts_with(
            "dir/10-site.toml:6:8: duplicate budget name \"x\" (first at dir/10-site.toml:2:8)"
        ),
        "{e}"
    );
    let e = err("[[budget]]\nname = \"x\"\nperiod = \"week\"\namount_usd = 5\n");
    assert!(e.starts_with("dir/10-site.toml:3:"), "{e}");
    let e =
        err("[[budget]]\nname = \"x\"\nperiod = \"day\"\namount_usd = 5\nalert_at = [0.9, 0.5]\n");
    assert!(e.contains("strictly increasing"), "{e}");
    let e = err("[[budget]]\nname = \"x\"\nperiod = \"day\"\namount_usd = 0\n");
    assert!(e.contains("> 0"), "{e}");
    let e = err(
        "[[anomaly]]\nname = \"a\"\nmetric = \"cost_per_request\"\nfactor = 0.5\nwindow = \"1h\"\n",
    );
    assert!(
        e.starts_with("dir/10-site.toml:4:") && e.contains("factor"),
        "{e}"
    );
    let e = err(
        "[[anomaly]]\nname = \"a\"\nmetric = \"cost_per_request\"\nfactor = 2\nwindow = \"soon\"\n",
    );
    assert!(e.starts_with("dir/10-site.toml:5:"), "{e}");
    let e = err("[[target]]\nname = \"t\"\n");
    assert!(e.contains("at least one of comm, cmdline, port"), "{e}");
}

#[test]
fn cpu_idle_above_max_is_rejected() {
    let e = err("[cpu]\nidle_watts_per_core = 9\n");
    assert!(e.contains("exceeds max_watts_per_core"), "{e}");
}

#[test]
fn load_dir_reads_toml_files_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("20-b.toml"), "[energy]\npue = 1.3\n").unwrap();
    std::fs::write(dir.path().join("10-a.toml"), "[energy]\npue = 1.9\n").unwrap();
    std::fs::write(dir.path().join("notes.md"), "not rules").unwrap();
    let r = Rules::load_dir(dir.path()).unwrap();
    assert_eq!(r.energy.pue, 1.3);
    assert_eq!(r.sources.len(), 3);
    std::fs::write(dir.path().join("30-c.toml"), "[energy]\n\npue = \"high\"\n").unwrap();
    let e = Rules::load_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains("30-c.toml:3:7: "), "{e}");
    let missing = Rules::load_dir(&dir.path().join("nope")).unwrap_err();
    assert!(matches!(missing, RulesError::Io { .. }));
}

#[test]
fn tagger_applies_matching_rules_in_order() {
    let r = load(
        "[[tag]]\npath = \"/v1/*\"\nmethod = \"post\"\nset = { team = \"ml\", endpoint = \"$path\" }\n\
         [[tag]]\nmodel = \"llama*\"\nport = 8000\nset = { family = \"llama\", model_id = \"$model\" }\n\
         [[tag]]\ncmdline = \"--served-model-name\\\\s+prod\"\nset = { team = \"prod\" }\n",
    )
    .unwrap();
    let t = r.tagger();
    let req = RequestInfo {
        method: Some("POST"),
        path: Some("/v1/chat/completions?stream=true"),
        port: Some(8000),
        model: Some("llama-3-8b"),
        comm: Some("python3"),
        cmdline: Some("vllm serve --served-model-name  prod"),
    };
    let tags = t.tags(&req);
    // The built-in rule said "chat"; this file's later rule wins.
    assert_eq!(tags["endpoint"], "/v1/chat/completions");
    assert_eq!(tags["team"], "prod");
    assert_eq!(tags["family"], "llama");
    assert_eq!(tags["model_id"], "llama-3-8b");
    let other = t.tags(&RequestInfo {
        method: Some("GET"),
        path: Some("/v1/users/123"),
        port: Some(9000),
        ..RequestInfo::default()
    });
    assert!(other.is_empty(), "{other:?}");
    let custom = t.tags(&RequestInfo {
        method: Some("POST"),
        path: Some("/v1/users/123"),
        ..RequestInfo::default()
    });
    assert_eq!(custom["endpoint"], "/v1/users/:id");
}

#[test]
fn path_normalizer_bounds_cardinality() {
    let r = load(
        "[paths]\nmax_segments = 4\n[[paths.rewrite]]\nmatch = \"^/v1/files/[^/]+\"\nto = \"/v1/files/:file\"\n",
    )
    .unwrap();
    let n = r.tagger();
    let n = n.normalizer();
    assert_eq!(n.normalize("/v1/users/123"), "/v1/users/:id");
    assert_eq!(
        n.normalize("/v1/users/123/orders/9?x=1"),
        "/v1/users/:id/orders/*"
    );
    assert_eq!(
        n.normalize("/v1/jobs/0b7f4a5e-3c1d-4e2f-9a8b-1c2d3e4f5a6b"),
        "/v1/jobs/:id"
    );
    assert_eq!(n.normalize("/v1/blobs/deadbeefdeadbeef00"), "/v1/blobs/:id");
    assert_eq!(
        n.normalize("/v1/chat/chatcmpl-9aB3xYz81LmQ2"),
        "/v1/chat/:id"
    );
    assert_eq!(n.normalize("/v1/files/report.pdf"), "/v1/files/:file");
    assert_eq!(n.normalize("/v1/models/gpt-4o"), "/v1/models/gpt-4o");
    assert_eq!(n.normalize(""), "/");
    assert_eq!(n.normalize("//health/"), "/health");
}

/// Regression (#10.6): `max_watts_per_core = 1e308` and `price_usd_per_kwh = 1e308` were
/// accepted; intervals then alternated between 1e13 J and 0 J and percentiles saturated. Every
/// number of the schema has a range now, reported at its line and column.
#[test]
fn rules_reject_1e308_watts_and_prices_and_every_number_out_of_range() {
    let e = err("[cpu]\nmax_watts_per_core = 1e308\n");
    assert_eq!(
        e,
        "dir/10-site.toml:2:22: power per core must be between 0 and 1000 W, got 1e308"
    );
    let e = err("[energy]\nprice_usd_per_kwh = 1e308\n");
    assert_eq!(
        e,
        "dir/10-site.toml:2:21: an electricity price must be between 0 and 10 $/kWh, got 1e308"
    );
    for (text, what) in [
        ("[energy]\nprice_usd_per_kwh = 11\n", "electricity price"),
        ("[energy]\nprice_usd_per_kwh = nan\n", "electricity price"),
        ("[energy]\ncarbon_g_per_kwh = 2001\n", "carbon intensity"),
        ("[energy]\ncarbon_g_per_kwh = -1\n", "carbon intensity"),
        ("[energy]\npue = inf\n", "pue"),
        ("[cpu]\nusd_per_core_hour = 1e6\n", "per core-hour"),
        ("[cpu]\nidle_watts_per_core = -0.5\n", "power per core"),
        ("[cpu]\nmax_watts_per_core = inf\n", "power per core"),
        ("[gpu.h100]\nusd_per_hour = 1e308\n", "per GPU-hour"),
        (
            "[gpu.h100]\nusd_per_hour = 2\nidle_watts = 1e9\n",
            "idle power",
        ),
        (
            "[gpu.h100]\npurchase_usd = 1e12\nyears = 3\n",
            "purchase price",
        ),
        (
            "[gpu.h100]\npurchase_usd = 30000\nyears = 1e-300\n",
            "per GPU-hour",
        ),
        ("[gpu.h100]\npurchase_usd = 30000\nyears = 0\n", "years"),
        ("[gpu.h100]\npurchase_usd = 30000\nyears = 51\n", "years"),
        (
            "[gpu.h100]\npurchase_usd = 30000\nyears = 3\nutilization = 1e-300\n",
            "per GPU-hour",
        ),
        ("[attribution]\nidle_power = 1e308\n", "idle_power"),
        ("[attribution]\nidle_power = -1\n", "idle_power"),
        (
            "[attribution]\nidle_window = 1000000000000\n",
            "count from 1",
        ),
        ("[attribution]\nmax_open_spans = 0\n", "count from 1"),
        ("[paths]\nmax_segments = 65\n", "count from 1"),
        ("[network]\negress_usd_per_gb = -0.01\n", "egress price"),
        ("[network]\negress_usd_per_gb = nan\n", "egress price"),
        ("[network]\negress_usd_per_gb = 11\n", "egress price"),
        (
            "[[budget]]\nname = \"b\"\nperiod = \"day\"\namount_usd = 1e308\n",
            "budget",
        ),
        (
            "[[anomaly]]\nname = \"a\"\nmetric = \"cost_per_request\"\nfactor = 1e308\nwindow = \"1h\"\n",
            "factor",
        ),
        (
            "[[anomaly]]\nname = \"a\"\nmetric = \"cost_per_request\"\nfactor = 2\nwindow = \"1000years\"\n",
            "366 days",
        ),
    ] {
        let e = err(text);
        assert!(
            e.starts_with("dir/10-site.toml:") && e.contains(what),
            "{text:?}: {e}"
        );
        assert!(e.len() < 200 && !e.contains('\n'), "one short line: {e}");
    }
    // The largest values allowed still load, and give finite prices.
    let r = load(
        "[energy]\nprice_usd_per_kwh = 10\ncarbon_g_per_kwh = 2000\npue = 5\n\
         [cpu]\nusd_per_core_hour = 10\nidle_watts_per_core = 1000\nmax_watts_per_core = 1000\n\
         [gpu.h100]\npurchase_usd = 30000\nyears = 0.1\nidle_watts = 2000\n",
    )
    .unwrap();
    assert!(r.gpu["h100"].usd_per_hour().is_finite());
    assert_eq!(r.cpu.max_watts_per_core, 1000.0);
    let r = load("[network]\negress_usd_per_gb = 0.09\n").unwrap();
    assert_eq!(r.network.egress_usd_per_gb, 0.09);
}

/// Regression (#10.11): a dangling or looping `*.toml` symlink in the rules directory was
/// skipped silently.
#[test]
fn dangling_or_looping_toml_symlink_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("10-a.toml"), "[energy]\npue = 1.3\n").unwrap();
    let dangling = dir.path().join("20-gone.toml");
    std::os::unix::fs::symlink(dir.path().join("missing.toml"), &dangling).unwrap();
    let e = Rules::load_dir(dir.path()).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "{}: cannot follow symlink to {}: ",
            dangling.display(),
            dir.path().join("missing.toml").display()
        )),
        "{e}"
    );
    std::fs::remove_file(&dangling).unwrap();
    let looping = dir.path().join("30-loop.toml");
    std::os::unix::fs::symlink(&looping, &looping).unwrap();
    let e = Rules::load_dir(dir.path()).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}: ", looping.display())), "{e}");
    assert!(e.contains("symbolic links"), "{e}");
    std::fs::remove_file(&looping).unwrap();
    // A symlink to a real file is read; a directory named *.toml is not a rules file.
    std::os::unix::fs::symlink(
        dir.path().join("10-a.toml"),
        dir.path().join("40-link.toml"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("50-dir.toml")).unwrap();
    let r = Rules::load_dir(dir.path()).unwrap();
    assert_eq!(r.sources.len(), 3);
}
