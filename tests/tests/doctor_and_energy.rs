//! `cost-probe doctor` against this host's facts, and energy attribution end to end.
use std::{path::Path, process::Command, thread};

use cost_probe_tests::{Attach, Client, Server, bin, require_kernel};
use serde_json::Value;

fn nvml_present() -> bool {
    Command::new("sh")
        .args(["-c", "ldconfig -p | grep -q libnvidia-ml.so.1"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn doctor_reports_what_this_host_can_do() {
    require_kernel!();
    let out = Command::new(bin())
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).expect("doctor --json is JSON");
    assert_eq!(
        out.status.code(),
        Some(0),
        "attach works here, so doctor exits 0"
    );
    assert_eq!(report["tracing"]["attach_works"], true);
    let items = report["tracing"]["items"].as_array().unwrap();
    let probe = items.iter().find(|i| i["what"] == "eBPF probe").unwrap();
    assert_eq!(probe["ok"], true, "{probe}");
    // Energy: the report must match the host, never invent a source.
    assert_eq!(report["energy"]["nvml"]["loaded"], nvml_present());
    let powercap = Path::new("/sys/class/powercap").exists();
    assert_eq!(report["energy"]["rapl"]["present"], powercap);
    if !powercap && !nvml_present() {
        // This machine kind: no GPU, no RAPL → the CPU model, said in words.
        assert_eq!(report["energy"]["cpu_energy_source"], "cpu-model");
        let words = report["energy"]["cpu_energy"].as_str().unwrap();
        assert!(words.contains("estimated"), "{words}");
        let human = Command::new(bin()).arg("doctor").output().unwrap();
        let text = String::from_utf8_lossy(&human.stdout);
        assert!(text.contains("No NVIDIA GPU"), "{text}");
        assert!(text.contains("No RAPL"), "{text}");
        assert!(text.contains("will work on this host"), "{text}");
    }
}

#[test]
fn request_energy_adds_up_to_the_interval_records() {
    require_kernel!();
    let server = Server::python_sse();
    let probe = Attach::start(server.proc.pid(), &["--interval", "50"]);
    let port = server.port;
    let clients: Vec<_> = (0..3)
        .map(|c| {
            thread::spawn(move || {
                let mut client = Client::connect(port);
                for i in 0..10 {
                    // Streams (mostly waiting) and large bodies (real CPU work: the target's
                    // CPU time is counted in 10 ms ticks, so an idle-ish server may get none).
                    if i % 2 == 0 {
                        let n = 3 + (c * 5 + i) % 9;
                        let r = client.get(&format!("/stream?n={n}&delay_ms=8"));
                        assert_eq!(r.chunks.len(), n);
                    } else {
                        let r = client.get("/fixed?size=20000000");
                        assert_eq!(r.body.len(), 20_000_000);
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let records = probe.stop();
    let requests = records.requests();
    let intervals = records.of_type("interval");
    assert_eq!(requests.len(), 30);
    assert!(
        intervals.len() >= 5,
        "sampled at 20 Hz: {}",
        intervals.len()
    );
    let mut request_j = 0.0;
    for r in &requests {
        let e = r["energy_j"]["total"]
            .as_f64()
            .expect("energy_j on every request");
        let c = &r["cost_usd"];
        assert!(e >= 0.0 && c["total"].as_f64().unwrap() >= c["energy"].as_f64().unwrap());
        assert!(r["co2_g"].as_f64().unwrap() >= 0.0);
        assert!(
            r["flags"]
                .as_array()
                .unwrap()
                .contains(&"estimated_cpu".into()),
            "{r}"
        );
        request_j += e;
    }
    let (mut attributed, mut measured) = (0.0, 0.0);
    for iv in &intervals {
        let m: f64 = iv["measured_j"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .sum();
        let parts = iv["attributed_j"].as_f64().unwrap()
            + iv["idle_j"].as_f64().unwrap()
            + iv["other_j"].as_f64().unwrap();
        assert!(
            (m - parts).abs() < 1e-5,
            "interval does not conserve energy: {iv}"
        );
        attributed += iv["attributed_j"].as_f64().unwrap();
        measured += m;
    }
    eprintln!(
        "measured {measured:.4} J, attributed to requests {attributed:.4} J, sum of request records {request_j:.4} J"
    );
    assert!(
        attributed > 0.0,
        "the server did work while requests were active"
    );
    assert!(
        (request_j - attributed).abs() < 1e-5 * requests.len() as f64,
        "requests {request_j} J vs intervals {attributed} J"
    );
    let totals = &records.summary()["totals"];
    assert!((totals["energy_j"].as_f64().unwrap() - request_j).abs() < 1e-5 * 30.0);
    assert!(totals["idle_j"].as_f64().is_some() && totals["other_j"].as_f64().is_some());
}
