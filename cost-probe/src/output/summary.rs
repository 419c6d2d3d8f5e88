//! The `summary` record: per group, HDR percentiles of latency, energy and cost, and totals.
use std::{
    collections::BTreeMap,
    hash::{Hash, Hasher},
};

use hdrhistogram::Histogram;
use rustc_hash::{FxHashMap, FxHasher};
use serde::Serialize;

/// A distribution kept as integers of `1/scale` units (3 significant figures).
#[derive(Clone, Debug)]
pub struct Dist {
    hist: Histogram<u64>,
    scale: f64,
    total: f64,
}

/// Percentiles of a distribution, in the caller's units.
#[derive(Serialize, Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub total: f64,
}

impl Dist {
    /// `scale`: integer steps per unit (1e3 for ms recorded in µs).
    #[must_use]
    pub fn new(scale: f64) -> Self {
        Self {
            hist: Histogram::new(3).expect("3 significant figures is valid"),
            scale,
            total: 0.0,
        }
    }

    pub fn record(&mut self, v: f64) {
        let v = v.max(0.0);
        self.total += v;
        // Auto-resizing histogram: recording cannot fail for finite values.
        // Rounded by adding a half and truncating (`f64::round` is a libm call; v ≥ 0 here).
        let _ = self.hist.record((v * self.scale + 0.5) as u64);
    }

    #[must_use]
    pub fn percentiles(&self) -> Percentiles {
        let q = |p: f64| self.hist.value_at_quantile(p) as f64 / self.scale;
        Percentiles {
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            max: self.hist.max() as f64 / self.scale,
            total: self.total,
        }
    }
}

/// What a group is keyed by.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct GroupKey {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

impl GroupKey {
    /// Whether this is the key of the borrowed fields (no owned key built to compare).
    fn is(&self, path: Option<&str>, model: Option<&str>, tags: &BTreeMap<String, String>) -> bool {
        self.path.as_deref() == path && self.model.as_deref() == model && &self.tags == tags
    }
}

#[derive(Debug)]
struct Group {
    count: u64,
    latency_ms: Dist,
    energy_j: Option<Dist>,
    cost_usd: Option<Dist>,
    tokens: u64,
}

impl Group {
    /// One request's sample, here and in the run's totals.
    fn add(&mut self, s: Sample, totals: &mut Totals, tokens: &mut u64, token_cost: &mut f64) {
        self.count += 1;
        totals.requests += 1;
        self.latency_ms.record(s.latency_ms);
        if let Some(e) = s.energy_j {
            self.energy_j
                .get_or_insert_with(|| Dist::new(1e6))
                .record(e);
            *totals.energy_j.get_or_insert(0.0) += e;
        }
        if let Some(c) = s.cost_usd {
            self.cost_usd
                .get_or_insert_with(|| Dist::new(1e12))
                .record(c);
            *totals.cost_usd.get_or_insert(0.0) += c;
            if let Some(t) = s.tokens {
                self.tokens += t;
                *tokens += t;
                *token_cost += c;
            }
        }
    }
}

/// One request's numbers, as the summary sees them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub latency_ms: f64,
    pub energy_j: Option<f64>,
    pub cost_usd: Option<f64>,
    pub tokens: Option<u64>,
}

/// What the exporter did with the run's spans, for the summary (`totals.otlp`).
#[derive(Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Accepted by the receiver.
    pub spans_sent: u64,
    /// Never delivered: the queue was full, retries ran out, the receiver rejected them, or the
    /// run ended before they could be sent. Counted exactly, one per span.
    pub spans_dropped: u64,
    /// Not exported because the caller's `traceparent` said its trace is not sampled.
    pub spans_unsampled: u64,
}

/// Totals beside the groups.
#[derive(Serialize, Debug, Default, Clone, Copy, PartialEq)]
pub struct Totals {
    pub requests: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy_j: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// Energy measured while no request was active ("idle waste").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_j: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_usd: Option<f64>,
    /// Energy of other processes on the same devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_j: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usd_per_1k_tokens: Option<f64>,
    pub lost_events: u64,
    pub partial_requests: u64,
    /// Requests counted in the `(other)` group because there were too many groups.
    #[serde(skip_serializing_if = "is_zero")]
    pub folded_groups: u64,
    /// What the OTLP exporter did with the run's spans, when one ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<ExportStats>,
}

#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if signature"
)]
fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Groups kept before new ones fold into one `(other)` group.
pub const MAX_GROUPS: usize = 10_000;

/// Accumulates the summary over a run.
#[derive(Debug, Default)]
pub struct Summary {
    /// Keyed by a hash of the borrowed key, so a known group costs no allocation per request.
    groups: FxHashMap<u64, Vec<(GroupKey, Group)>>,
    count: usize,
    pub totals: Totals,
    tokens: u64,
    token_cost: f64,
}

fn key_hash(path: Option<&str>, model: Option<&str>, tags: &BTreeMap<String, String>) -> u64 {
    let mut h = FxHasher::default();
    (path, model, tags).hash(&mut h);
    h.finish()
}

#[derive(Serialize, Debug)]
struct GroupOut<'a> {
    #[serde(flatten)]
    key: &'a GroupKey,
    count: u64,
    latency_ms: Percentiles,
    #[serde(skip_serializing_if = "Option::is_none")]
    energy_j: Option<Percentiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost_usd: Option<Percentiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usd_per_1k_tokens: Option<f64>,
}

/// The `summary` record.
#[derive(Serialize, Debug)]
pub struct SummaryRecord<'a> {
    pub start: String,
    pub end: String,
    groups: Vec<GroupOut<'a>>,
    pub totals: Totals,
}

impl Summary {
    pub fn add(&mut self, key: &GroupKey, s: Sample) {
        self.add_with(key.path.as_deref(), key.model.as_deref(), &key.tags, s);
    }

    /// Like [`Self::add`], allocating the group key only for a group not seen before (this is
    /// on the per-request path). Past [`MAX_GROUPS`] groups, new ones fold into `(other)`.
    pub fn add_with(
        &mut self,
        path: Option<&str>,
        model: Option<&str>,
        tags: &BTreeMap<String, String>,
        s: Sample,
    ) {
        let empty = BTreeMap::new();
        let mut hash = key_hash(path, model, tags);
        // A known group (nearly every request): one lookup.
        if let Some(bucket) = self.groups.get_mut(&hash)
            && let Some((_, g)) = bucket.iter_mut().find(|(k, _)| k.is(path, model, tags))
        {
            g.add(s, &mut self.totals, &mut self.tokens, &mut self.token_cost);
            return;
        }
        let mut key = (path, model, tags);
        // A new group: past the limit, it folds into `(other)`.
        if self.count >= MAX_GROUPS {
            self.totals.folded_groups += 1;
            key = (Some("(other)"), None, &empty);
            hash = key_hash(key.0, key.1, key.2);
        }
        let bucket = self.groups.entry(hash).or_default();
        let idx = match bucket.iter().position(|(k, _)| k.is(key.0, key.1, key.2)) {
            Some(i) => i,
            None => {
                self.count += 1;
                bucket.push((
                    GroupKey {
                        path: key.0.map(str::to_owned),
                        model: key.1.map(str::to_owned),
                        tags: key.2.clone(),
                    },
                    Group {
                        count: 0,
                        latency_ms: Dist::new(1e3),
                        energy_j: None,
                        cost_usd: None,
                        tokens: 0,
                    },
                ));
                bucket.len() - 1
            }
        };
        bucket[idx]
            .1
            .add(s, &mut self.totals, &mut self.tokens, &mut self.token_cost);
    }

    #[must_use]
    pub fn record(&self, start: String, end: String) -> SummaryRecord<'_> {
        let mut totals = self.totals;
        totals.usd_per_1k_tokens =
            (self.tokens > 0).then(|| self.token_cost / self.tokens as f64 * 1000.0);
        SummaryRecord {
            start,
            end,
            groups: {
                let mut all: Vec<(&GroupKey, &Group)> = self
                    .groups
                    .values()
                    .flatten()
                    .map(|(k, g)| (k, g))
                    .collect();
                all.sort_by(|a, b| a.0.cmp(b.0));
                all
            }
            .into_iter()
            .map(|(key, g)| GroupOut {
                key,
                count: g.count,
                latency_ms: g.latency_ms.percentiles(),
                energy_j: g.energy_j.as_ref().map(Dist::percentiles),
                cost_usd: g.cost_usd.as_ref().map(Dist::percentiles),
                usd_per_1k_tokens: (g.tokens > 0).then(|| {
                    g.cost_usd.as_ref().map_or(0.0, |c| c.total) / g.tokens as f64 * 1000.0
                }),
            })
            .collect(),
            totals,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_per_group() {
        let mut s = Summary::default();
        let key = |p: &str| GroupKey {
            path: Some(p.into()),
            model: None,
            tags: BTreeMap::new(),
        };
        for i in 1..=100 {
            s.add(
                &key("/a"),
                Sample {
                    latency_ms: f64::from(i),
                    ..Sample::default()
                },
            );
        }
        s.add(
            &key("/b"),
            Sample {
                latency_ms: 5.0,
                ..Sample::default()
            },
        );
        let rec = s.record("a".into(), "b".into());
        let v = serde_json::to_value(crate::output::records::Envelope::new(&rec)).unwrap();
        assert_eq!(v["type"], "summary");
        assert_eq!(v["totals"]["requests"], 101);
        let a = &v["groups"][0];
        assert_eq!(a["path"], "/a");
        assert_eq!(a["count"], 100);
        // HDR keeps 3 significant figures: percentiles are exact to 0.1 %, totals exactly.
        let close = |v: &serde_json::Value, want: f64| {
            let v = v.as_f64().unwrap();
            assert!((v - want).abs() <= want * 1e-3, "{v} vs {want}");
        };
        close(&a["latency_ms"]["p50"], 50.0);
        close(&a["latency_ms"]["p99"], 99.0);
        close(&a["latency_ms"]["max"], 100.0);
        assert_eq!(a["latency_ms"]["total"], 5050.0);
        assert!(a.get("energy_j").is_none());
    }

    #[test]
    fn groups_are_capped_and_overflow_is_counted() {
        let mut s = Summary::default();
        let tags = BTreeMap::new();
        for i in 0..MAX_GROUPS + 5 {
            let p = format!("/u/{i}");
            s.add_with(Some(&p), None, &tags, Sample::default());
        }
        // A known group still counts into itself after the cap.
        s.add_with(Some("/u/3"), None, &tags, Sample::default());
        assert_eq!(s.totals.folded_groups, 5);
        let v = serde_json::to_value(s.record("a".into(), "b".into())).unwrap();
        let groups = v["groups"].as_array().unwrap();
        assert_eq!(groups.len(), MAX_GROUPS + 1);
        let other = groups.iter().find(|g| g["path"] == "(other)").unwrap();
        assert_eq!(other["count"], 5);
        assert_eq!(
            groups.iter().find(|g| g["path"] == "/u/3").unwrap()["count"],
            2
        );
    }
}
