#![expect(
    clippy::float_cmp,
    reason = "thresholds and scripted values compare exactly"
)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::*;

/// 2024-02-29T12:00:00Z: a leap day, so month bounds are exercised too.
const NOON: u64 = 1_709_208_000;

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn budget(period: Period, amount: f64, alert_at: &[f64], tags: &[(&str, &str)]) -> Budget {
    Budget {
        name: "daily".into(),
        period,
        amount_usd: amount,
        alert_at: alert_at.to_vec(),
        tags: tags
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
    }
}

fn anomaly(factor: f64, window: Duration) -> Anomaly {
    Anomaly {
        name: "spike".into(),
        metric: AnomalyMetric::CostPerRequest,
        factor,
        window,
        tags: BTreeMap::new(),
    }
}

fn spend(
    engine: &mut AlertEngine,
    secs: u64,
    cost: f64,
    tags: &BTreeMap<String, String>,
) -> Vec<Alert> {
    engine.observe(&Observation {
        time: at(secs),
        cost_usd: Some(cost),
        energy_j: None,
        tags,
    })
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
}

#[test]
fn budget_alert_fires_exactly_once_per_threshold_crossing() {
    let mut e = AlertEngine::from_parts(&[budget(Period::Day, 100.0, &[0.7, 0.9, 1.0], &[])], &[]);
    let none = BTreeMap::new();
    let mut fired = Vec::new();
    // 20 requests of $10 over the day: crossings after the 7th, 9th and 10th.
    for i in 0..20u64 {
        for a in spend(&mut e, NOON + i * 60, 10.0, &none) {
            fired.push((i, a.threshold, a.observed));
        }
    }
    assert_eq!(fired, [(6, 0.7, 70.0), (8, 0.9, 90.0), (9, 1.0, 100.0)]);
}

#[test]
fn one_large_request_fires_every_threshold_it_crosses() {
    let mut e = AlertEngine::from_parts(&[budget(Period::Hour, 10.0, &[0.5, 0.7, 0.9], &[])], &[]);
    let none = BTreeMap::new();
    let a = spend(&mut e, NOON, 8.0, &none);
    assert_eq!(
        a.iter().map(|a| a.threshold).collect::<Vec<_>>(),
        [0.5, 0.7]
    );
    assert!(spend(&mut e, NOON + 1, 0.5, &none).is_empty());
    assert_eq!(spend(&mut e, NOON + 2, 0.5, &none)[0].threshold, 0.9);
    assert!(spend(&mut e, NOON + 3, 100.0, &none).is_empty());
}

#[test]
fn period_rollover_rearms_every_threshold() {
    let mut e = AlertEngine::from_parts(&[budget(Period::Day, 10.0, &[0.5, 1.0], &[])], &[]);
    let none = BTreeMap::new();
    assert_eq!(spend(&mut e, NOON, 12.0, &none).len(), 2);
    // A late request from the previous day counts toward today and fires nothing again.
    assert!(spend(&mut e, NOON - 86_400, 5.0, &none).is_empty());
    let next = spend(&mut e, NOON + 86_400, 6.0, &none);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].observed, 6.0);
    assert_eq!(
        next[0].period_start.as_deref(),
        Some("2024-03-01T00:00:00Z")
    );
    assert_eq!(next[0].period_end.as_deref(), Some("2024-03-02T00:00:00Z"));
}

#[test]
fn budget_counts_only_requests_with_its_tags() {
    let mut e = AlertEngine::from_parts(
        &[budget(Period::Month, 10.0, &[1.0], &[("team", "ml")])],
        &[],
    );
    let ml = tags(&[("team", "ml"), ("endpoint", "chat")]);
    let web = tags(&[("team", "web")]);
    assert!(spend(&mut e, NOON, 50.0, &web).is_empty());
    assert!(spend(&mut e, NOON, 9.0, &ml).is_empty());
    let a = spend(&mut e, NOON, 1.0, &ml);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].tags, tags(&[("team", "ml")]));
    assert_eq!(a[0].period, Some("month"));
    assert_eq!(a[0].period_start.as_deref(), Some("2024-02-01T00:00:00Z"));
}

#[test]
fn unknown_or_broken_costs_are_skipped() {
    let mut e = AlertEngine::from_parts(&[budget(Period::Day, 1.0, &[1.0], &[])], &[]);
    let none = BTreeMap::new();
    for c in [f64::NAN, f64::INFINITY, -5.0] {
        assert!(spend(&mut e, NOON, c, &none).is_empty());
    }
    let obs = Observation {
        time: at(NOON),
        cost_usd: None,
        energy_j: Some(1.0),
        tags: &none,
    };
    assert!(e.observe(&obs).is_empty());
    assert_eq!(spend(&mut e, NOON, 1.0, &none).len(), 1);
}

#[test]
fn period_bounds_follow_utc_calendar() {
    assert_eq!(
        period_bounds(Period::Month, 1_702_641_600), // 2023-12-15T12:00:00Z
        (1_701_388_800, 1_704_067_200)               // 2023-12-01 .. 2024-01-01
    );
    assert_eq!(
        period_bounds(Period::Month, NOON as i64),
        (1_706_745_600, 1_709_251_200) // 2024-02-01 .. 2024-03-01 (leap year)
    );
    assert_eq!(
        period_bounds(Period::Hour, NOON as i64 + 1799),
        (NOON as i64, NOON as i64 + 3600)
    );
    assert_eq!(period_bounds(Period::Day, -1), (-86_400, 0));
    assert_eq!(period_bounds(Period::Month, -1), (-2_678_400, 0)); // December 1969
}

#[test]
fn anomaly_fires_once_per_excursion_after_baseline() {
    let mut e = AlertEngine::from_parts(&[], &[anomaly(3.0, Duration::from_hours(1))]);
    let g = tags(&[("endpoint", "chat")]);
    // Spikes before the baseline has MIN_BASELINE_SAMPLES values are not judged.
    assert!(spend(&mut e, NOON, 50.0, &g).is_empty());
    let mut t = NOON;
    for _ in 1..MIN_BASELINE_SAMPLES {
        t += 1;
        assert!(spend(&mut e, t, 1.0, &g).is_empty());
    }
    let mut fired = Vec::new();
    for (i, cost) in [5.0, 6.0, 7.0, 1.0, 2.9, 5.0, 1.0].into_iter().enumerate() {
        t += 1;
        for a in spend(&mut e, t, cost, &g) {
            fired.push((i, a.observed, a.baseline));
        }
    }
    assert_eq!(fired, [(0, 5.0, Some(1.0)), (5, 5.0, Some(1.0))]);
}

#[test]
fn anomaly_groups_by_tags_and_forgets_outside_the_window() {
    let mut e = AlertEngine::from_parts(&[], &[anomaly(2.0, Duration::from_mins(1))]);
    let chat = tags(&[("endpoint", "chat")]);
    let embed = tags(&[("endpoint", "embeddings")]);
    for i in 0..MIN_BASELINE_SAMPLES as u64 {
        spend(&mut e, NOON + i, 10.0, &chat);
        spend(&mut e, NOON + i, 0.1, &embed);
    }
    // 1.0 is ten times the embeddings baseline but far below chat's.
    let a = spend(&mut e, NOON + 30, 1.0, &embed);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].tags, embed);
    assert_eq!(a[0].kind, AlertKind::Anomaly);
    assert!(spend(&mut e, NOON + 30, 1.0, &chat).is_empty());
    // An hour later the window is empty again: no baseline, no alert.
    assert!(spend(&mut e, NOON + 3600, 100.0, &chat).is_empty());
}

#[test]
fn energy_anomaly_reads_joules() {
    let mut rule = anomaly(2.0, Duration::from_mins(10));
    rule.metric = AnomalyMetric::EnergyPerRequest;
    let mut e = AlertEngine::from_parts(&[], &[rule]);
    let none = BTreeMap::new();
    let obs = |s: u64, j: f64| Observation {
        time: at(s),
        cost_usd: Some(1e9),
        energy_j: Some(j),
        tags: &none,
    };
    for i in 0..MIN_BASELINE_SAMPLES as u64 {
        assert!(e.observe(&obs(NOON + i, 100.0)).is_empty());
    }
    let a = e.observe(&obs(NOON + 100, 250.0));
    assert_eq!(a[0].metric, "energy_per_request");
    assert_eq!(a[0].limit, 200.0);
}

#[test]
fn alert_serializes_as_the_alert_record_body() {
    let mut e =
        AlertEngine::from_parts(&[budget(Period::Day, 2.0, &[0.5], &[("team", "ml")])], &[]);
    let a = spend(&mut e, NOON, 1.5, &tags(&[("team", "ml")]));
    let v = serde_json::to_value(&a[0]).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "time": "2024-02-29T12:00:00.000000000Z",
            "rule": "daily", "kind": "budget", "metric": "cost_usd",
            "threshold": 0.5, "observed": 1.5, "limit": 1.0, "amount_usd": 2.0,
            "period": "day", "period_start": "2024-02-29T00:00:00Z",
            "period_end": "2024-03-01T00:00:00Z", "tags": {"team": "ml"}
        })
    );
}

#[test]
fn median_of_even_and_odd_counts() {
    let mut s = Vec::new();
    assert_eq!(median([3.0, 1.0, 2.0].into_iter(), &mut s), 2.0);
    assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter(), &mut s), 2.5);
    assert_eq!(median(std::iter::empty(), &mut s), 0.0);
}

proptest! {
    #[test]
    fn alerts_per_period_never_exceed_thresholds(
        steps in prop::collection::vec((0u64..5_400, 0.0f64..40.0), 1..200),
        hourly in any::<bool>(),
    ) {
        let thresholds = [0.5, 0.7, 0.9, 1.0, 1.5];
        let period = if hourly { Period::Hour } else { Period::Day };
        let mut e = AlertEngine::from_parts(&[budget(period, 100.0, &thresholds, &[])], &[]);
        let none = BTreeMap::new();
        let mut per_period: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut t = NOON;
        for (dt, cost) in steps {
            t += dt;
            for a in spend(&mut e, t, cost, &none) {
                per_period.entry(a.period_start.clone().unwrap()).or_default().push(a.threshold);
            }
        }
        for fired in per_period.values() {
            prop_assert!(fired.len() <= thresholds.len());
            // Each threshold at most once, in order.
            prop_assert!(fired.windows(2).all(|w| w[0] < w[1]));
        }
    }
}
