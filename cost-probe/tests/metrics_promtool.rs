//! The Prometheus exposition passes `promtool check metrics` (parse and lint), with every
//! family populated. promtool comes from the `prometheus` Debian package, which
//! `cargo xtask setup --test-deps` installs; without it the test prints why and passes.
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use cost_probe::alerts::{AlertEngine, Observation};
use cost_probe::attribution::{CapacitySplit, DomainId, EnergyKind, IdleSource, IntervalSplit};
use cost_probe::output::metrics::{Metrics, RequestObs, SpanTable};
use cost_probe::rules::{RequestInfo, Rules};
use cost_probe::units::{MicroJoules, Nanos};

fn populated() -> Metrics {
    let rules = Rules::from_sources([(
        "site.toml",
        "[[tag]]\nmodel = \"llama*\"\nset = { team = \"ml\" }\n\
         [[budget]]\nname = \"ml-hourly\"\nperiod = \"hour\"\namount_usd = 1\ntags = { team = \"ml\" }\n",
    )])
    .unwrap();
    let tagger = rules.tagger();
    let mut metrics = Metrics::new(&rules, 50);
    let mut alerts = AlertEngine::new(&rules);
    for i in 0..200u32 {
        let path = format!("/v1/route{}/{}", i % 70, 1000 + i);
        let model = ["llama-3-8b", "mistral-7b"][i as usize % 2];
        let method = ["POST", "GET", "BREW"][i as usize % 3];
        let tags = tagger.tags(&RequestInfo {
            method: Some(method),
            path: Some(&path),
            model: Some(model),
            ..Default::default()
        });
        let cost = 0.01 * f64::from(i % 7);
        metrics.observe_request(&RequestObs {
            method: Some(method),
            path: Some(&path),
            status: Some([200, 404, 503][i as usize % 3]),
            model: Some(model),
            tags: &tags,
            duration_s: 0.01 * f64::from(i),
            energy_j: Some(f64::from(i)),
            cost_usd: Some(cost),
            tokens: (i % 4 != 0).then_some(u64::from(i)),
        });
        let fired = alerts.observe(&Observation {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + u64::from(i)),
            cost_usd: Some(cost),
            energy_j: Some(f64::from(i)),
            tags: &tags,
        });
        for a in &fired {
            metrics.alert(a);
        }
    }
    for (d, domain) in ["gpu:0", "rapl:package-0"].iter().enumerate() {
        metrics.observe_interval(
            domain,
            &IntervalSplit {
                domain: DomainId(d as u32),
                class: EnergyKind::Gpu,
                start: Nanos(0),
                end: Nanos(100_000_000),
                measured: MicroJoules(10_000_000),
                attributed: MicroJoules(5_000_000),
                idle: MicroJoules(3_000_000),
                other: MicroJoules(2_000_000),
                static_energy: MicroJoules(3_000_000),
                idle_power_uw: 30_000_000,
                idle_source: IdleSource::Learned,
                active_requests: 2,
                capacity: CapacitySplit::default(),
            },
        );
    }
    metrics.lost(12);
    metrics.sampler(Duration::from_micros(80), 1);
    metrics.span_overflow(SpanTable::Conns, 2);
    metrics
}

#[test]
fn promtool_accepts_the_exposition() {
    let text = populated().encode();
    assert!(
        text.contains("cost_probe_alerts_total{"),
        "no alert fired:\n{text}"
    );
    assert!(text.contains("endpoint=\"other\""), "cap never folded");
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("SKIPPED: promtool not installed (cargo xtask setup --test-deps)");
            return;
        }
        Err(e) => panic!("running promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "promtool check metrics: exit {:?}; said: {said:?}",
        out.status.code()
    );
    assert!(
        out.status.success(),
        "promtool rejected the exposition:\n{said}\n{text}"
    );
}
