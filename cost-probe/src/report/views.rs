//! What the HTML report draws beyond the table: the energy split over time, $/1k tokens per
//! model whatever `--by` is, and the latency and J-per-request distributions of all requests.
//!
//! Collected only when asked for ([`super::Aggregator::with_views`]), so a plain `report` pays one
//! branch per record for it. Memory is fixed like the rest of the report's: the series are
//! [`Series`] (at most 4,096 buckets each), the models are capped like the groups, and the
//! distributions are the groups' HDR histograms merged at the end.
use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;

use super::{
    Group, MAX_GROUPS, NONE, OTHER,
    forecast::{BASE_NS as GRID_NS, Series},
    histogram,
    record::{self, Line},
};

const MAX_PIECES: i64 = 64;

/// Cost and tokens of the requests of one model that reported tokens.
#[derive(Debug, Default, Clone, Copy)]
struct TokenCost {
    usd: f64,
    tokens: u64,
}

/// The aggregator's share of the views, fed record by record.
#[derive(Debug, Default)]
pub(super) struct Collector {
    attributed: Series,
    idle: Series,
    other: Series,
    models: FxHashMap<String, TokenCost>,
}

impl Collector {
    /// An interval record that starts at `at` (ns). Its energy is spread over the 100 ms grid
    /// the series are bucketed on, in proportion to its overlap with each step: intervals are
    /// ~100 ms long but not aligned to the grid, and booking each at its start would leave some
    /// buckets empty and give others two.
    pub(super) fn interval(&mut self, at: i64, l: &Line) {
        let end = l
            .end
            .as_deref()
            .and_then(record::unix_nanos)
            .filter(|e| *e > at)
            .unwrap_or(at + 1);
        let j = [l.attributed_j, l.idle_j, l.other_j].map(|x| x.unwrap_or(0.0));
        let len = (end - at) as f64;
        // A long interval is cut in at most MAX_PIECES steps, not aligned to the grid.
        let step = GRID_NS.max((end - at) / MAX_PIECES + 1);
        let mut from = at;
        while from < end {
            let to = if step == GRID_NS {
                (from.div_euclid(GRID_NS) + 1) * GRID_NS
            } else {
                from + step
            }
            .min(end);
            let share = (to - from) as f64 / len;
            self.attributed.add(from, j[0] * share);
            self.idle.add(from, j[1] * share);
            self.other.add(from, j[2] * share);
            from = to;
        }
    }

    /// A priced request that reported `tokens` (> 0).
    pub(super) fn tokens(&mut self, model: Option<&str>, usd: f64, tokens: u64) {
        let model = model.unwrap_or(NONE);
        let entry = match self.models.get_mut(model) {
            Some(e) => e,
            None => {
                let key = if self.models.len() < MAX_GROUPS {
                    model
                } else {
                    OTHER
                };
                self.models.entry(key.to_owned()).or_default()
            }
        };
        entry.usd += usd;
        entry.tokens += tokens;
    }

    /// The views, given the groups (whose spend series move here and whose histograms are
    /// merged) and the observed window.
    pub(super) fn finish(
        self,
        window: Option<(i64, i64)>,
        groups: Vec<(Vec<String>, f64, Series)>,
        merged: Merged,
    ) -> Views {
        let mut usd_per_1k_tokens: Vec<(String, f64)> = self
            .models
            .into_iter()
            .filter(|(_, c)| c.tokens > 0)
            .map(|(m, c)| (m, c.usd * 1000.0 / c.tokens as f64))
            .collect();
        usd_per_1k_tokens.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Views {
            window,
            spend: groups,
            attributed_j: self.attributed,
            idle_j: self.idle,
            other_j: self.other,
            usd_per_1k_tokens,
            latency_us: merged.latency_us,
            energy_uj: merged.energy_uj,
        }
    }
}

/// All groups' distributions, merged as the groups are finished.
#[derive(Debug)]
pub(super) struct Merged {
    latency_us: Histogram<u64>,
    energy_uj: Histogram<u64>,
}

impl Default for Merged {
    fn default() -> Self {
        Self {
            latency_us: histogram(),
            energy_uj: histogram(),
        }
    }
}

impl Merged {
    pub(super) fn add(&mut self, g: &Group) {
        // Both sides auto-resize, so adding cannot fail for a value out of range.
        let _ = self.latency_us.add(&g.latency_us);
        let _ = self.energy_uj.add(&g.energy_uj);
    }
}

/// What the HTML report's charts are drawn from.
#[derive(Debug)]
pub struct Views {
    /// First and last record time (ns), as in [`super::Report::from`] and `to`.
    pub window: Option<(i64, i64)>,
    /// Each group's key, cost and priced spend over time, in no particular order.
    pub spend: Vec<(Vec<String>, f64, Series)>,
    /// Joules per time bucket, from the interval records.
    pub attributed_j: Series,
    pub idle_j: Series,
    pub other_j: Series,
    /// Per model (whatever `--by` is), highest first; models without tokens are left out.
    pub usd_per_1k_tokens: Vec<(String, f64)>,
    pub latency_us: Histogram<u64>,
    pub energy_uj: Histogram<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_off_the_grid_is_spread_over_the_steps_it_covers() {
        let mut c = Collector::default();
        let l: Line = serde_json::from_str(
            r#"{"type":"interval","start":"1970-01-01T00:00:00.05Z","end":"1970-01-01T00:00:00.3Z","attributed_j":1.0,"idle_j":2.0,"other_j":5.0}"#,
        )
        .unwrap();
        c.interval(50_000_000, &l);
        let got: Vec<(i64, f64)> = c.other.points().map(|(t, _, j)| (t, j)).collect();
        // 50 ms, 100 ms and 100 ms of a 250 ms interval.
        assert_eq!(got.len(), 3);
        for ((t, j), (want_t, want_j)) in
            got.iter()
                .zip([(0, 1.0), (100_000_000, 2.0), (200_000_000, 2.0)])
        {
            assert_eq!(*t, want_t);
            assert!((j - want_j).abs() < 1e-12, "{got:?}");
        }
        let sum = |s: &Series| s.points().map(|p| p.2).sum::<f64>();
        assert!((sum(&c.attributed) - 1.0).abs() < 1e-12);
        assert!((sum(&c.idle) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn a_long_interval_is_cut_in_bounded_steps() {
        let mut c = Collector::default();
        let l: Line = serde_json::from_str(
            r#"{"type":"interval","start":"1970-01-01T00:00:00Z","end":"1970-01-02T00:00:00Z","idle_j":64.0}"#,
        )
        .unwrap();
        c.interval(0, &l);
        let n = c.idle.points().filter(|p| p.2 > 0.0).count();
        assert!(n <= MAX_PIECES as usize, "{n}");
        assert!((c.idle.points().map(|p| p.2).sum::<f64>() - 64.0).abs() < 1e-9);
    }

    #[test]
    fn models_past_the_cap_fold_into_other() {
        let mut c = Collector::default();
        for i in 0..MAX_GROUPS - 1 {
            c.tokens(Some(&format!("m{i}")), 1.0, 1000);
        }
        c.tokens(None, 3.0, 1000);
        c.tokens(Some("late"), 5.0, 1000);
        c.tokens(Some("m0"), 1.0, 1000);
        let v = c.finish(None, Vec::new(), Merged::default());
        assert_eq!(v.usd_per_1k_tokens.len(), MAX_GROUPS + 1);
        let get = |m: &str| {
            v.usd_per_1k_tokens
                .iter()
                .find(|(k, _)| k == m)
                .map(|e| e.1)
        };
        assert_eq!(get("m0"), Some(1.0));
        assert_eq!(get(NONE), Some(3.0));
        assert_eq!(get("late"), None);
        assert_eq!(get(OTHER), Some(5.0));
        assert_eq!(v.usd_per_1k_tokens[0].0, OTHER, "highest first");
    }
}
