//! The rules loader on arbitrary text, as one file or split into two: every input deserialized
//! and validated as a rules file (`schema::RulesFile`, what `Rules::from_sources` reads each
//! file with), one input in eight also through `Rules::from_sources` (the merge over the
//! built-in defaults).
//!
//! Invariants: no panic; a file that does not deserialize alone makes `from_sources` fail; an error is a `RulesError` whose message names the file it is about;
//! rules that load are usable (the tagger, the path normalizer and the GPU lookup run on them)
//! and every number in them is finite (each is validated while it is read: a `1e308`, `inf` or
//! `nan` must be an error, never a rule).
#![no_main]

use cost_probe::{
    attribution::IdlePower,
    rules::{RequestInfo, Rules, schema::RulesFile},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    // Bit 0: two files, split at a character boundary (bits 4-7 say where).
    let files: Vec<(&str, &str)> = if mode & 1 == 0 {
        vec![("f.toml", text.as_ref())]
    } else {
        let mut at = usize::from(mode >> 4) * text.len() / 16;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let (a, b) = text.split_at(at);
        vec![("f.toml", a), ("g.toml", b)]
    };
    // Every input: each file deserialized and validated alone, as `from_sources` reads each
    // (`RulesFile`: every value checked while it is read, regexes compiled).
    let alone: Vec<bool> = files
        .iter()
        .map(|(_, t)| toml::from_str::<RulesFile>(t).is_ok())
        .collect();
    // One input in eight (bits 1-3 zero) goes on through `from_sources`: the merge over the
    // built-in defaults, whose TOML parse and regexes, the same every time, are most of an
    // execution's time when they run.
    if mode & 0b1110 != 0 {
        return;
    }
    match Rules::from_sources(files.iter().copied()) {
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with("f.toml") || msg.starts_with("g.toml"),
                "error names no input file: {msg}"
            );
        }
        Ok(rules) => {
            assert!(
                alone.iter().all(|&ok| ok),
                "from_sources took a file that does not deserialize alone"
            );
            use_rules(&rules);
        }
    }
});

fn use_rules(r: &Rules) {
    let finite = [
        r.energy.price_usd_per_kwh,
        r.energy.pue,
        r.energy.carbon_g_per_kwh,
        r.cpu.usd_per_core_hour,
        r.cpu.idle_watts_per_core,
        r.cpu.max_watts_per_core,
    ];
    assert!(finite.iter().all(|v| v.is_finite()), "{finite:?}");
    if let IdlePower::Watts(w) = r.attribution.idle_power {
        assert!(w.is_finite(), "idle_power {w}");
    }
    for (name, g) in &r.gpu {
        let h = g.usd_per_hour();
        assert!(h.is_finite() && h >= 0.0, "gpu {name}: {h} $/h");
        assert!(g.idle_watts.is_none_or(f64::is_finite), "gpu {name}");
    }
    for b in &r.budgets {
        assert!(b.amount_usd.is_finite(), "budget {}", b.name);
        assert!(
            b.alert_at.iter().all(|v| v.is_finite()),
            "budget {}",
            b.name
        );
    }
    for a in &r.anomalies {
        assert!(a.factor.is_finite(), "anomaly {}", a.name);
    }
    let _ = r.gpu_for("NVIDIA H100 80GB HBM3");
    let _ = r.ledger_config();
    let tagger = r.tagger();
    for (method, path, model) in [
        ("POST", "/v1/chat/completions?x=1", "llama-3"),
        (
            "GET",
            "/users/12345/items/550e8400-e29b-41d4-a716-446655440000",
            "",
        ),
        ("", "", ""),
        ("GET", "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p", "m"),
    ] {
        let info = RequestInfo {
            method: Some(method),
            path: Some(path),
            port: Some(8080),
            model: Some(model),
            comm: Some("python3"),
            cmdline: Some("python3 -m vllm.entrypoints.openai.api_server"),
        };
        let _ = tagger.tags(&info);
        let _ = tagger.normalizer().normalize(path);
    }
}
