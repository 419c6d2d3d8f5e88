//! Recorded kernel events (`cost-probe attach --record`) from `tests/fixtures/`, comment lines
//! skipped.
use cost_probe::probe::OwnedEvent;

pub fn events(name: &str) -> Vec<OwnedEvent> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("fixture line"))
        .collect()
}
