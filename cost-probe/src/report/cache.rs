//! Cache opportunity, exact match only: requests whose `request_hash` (method, target and body;
//! headers left out) was seen before in the window, and the $ and J they cost. The first of a
//! set of identical requests is not a repeat; each later one is, in its own group. A cache that
//! matches on meaning (similar prompts) would find more; this counts only byte-equal requests.
use rustc_hash::FxHashSet;
use serde::Serialize;

/// Distinct hashes remembered. A `u64` set of this size is about 9.4 MiB (2^20 buckets of 9
/// bytes); past it, a hash not already remembered cannot be told first or repeat and is counted
/// as `unknown`, while repeats of remembered hashes are still found.
pub const MAX_DISTINCT: usize = 500_000;

pub const METHOD: &str = "exact match: the same method, target (path and query) and body bytes \
                          as an earlier request in the window, headers left out; the first of \
                          identical requests is not a repeat; requests without a request_hash \
                          (body not captured whole, older records) are not counted";

/// Which hashes were seen.
#[derive(Debug, Default)]
pub struct Seen {
    hashes: FxHashSet<u64>,
}

/// What one request is, by its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    First,
    Repeat,
    /// Not remembered, and the set is full.
    Unknown,
}

impl Seen {
    pub fn check(&mut self, hash: u64) -> Kind {
        if self.hashes.contains(&hash) {
            Kind::Repeat
        } else if self.hashes.len() < MAX_DISTINCT {
            self.hashes.insert(hash);
            Kind::First
        } else {
            Kind::Unknown
        }
    }
}

/// Per group and in total.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub hashed: u64,
    pub repeats: u64,
    pub unknown: u64,
    pub repeat_usd: f64,
    pub repeat_j: f64,
}

impl Tally {
    pub fn add(&mut self, kind: Kind, usd: Option<f64>, j: Option<f64>) {
        self.hashed += 1;
        match kind {
            Kind::First => {}
            Kind::Unknown => self.unknown += 1,
            Kind::Repeat => {
                self.repeats += 1;
                self.repeat_usd += usd.unwrap_or(0.0);
                self.repeat_j += j.unwrap_or(0.0);
            }
        }
    }
}

/// The report's `cache_opportunity`.
#[derive(Debug, Serialize)]
pub struct CacheReport {
    pub method: &'static str,
    pub distinct_cap: usize,
    /// Requests that carried a hash.
    pub hashed_requests: u64,
    pub repeats: u64,
    /// Hashed requests seen after the cap was reached whose hash was not remembered.
    pub unknown: u64,
    pub repeat_usd: f64,
    pub repeat_j: f64,
    /// Repeats' $ as a part of all requests' cost, 0–1.
    pub share_of_cost: Option<f64>,
    pub groups: Vec<GroupCache>,
}

#[derive(Debug, Serialize)]
pub struct GroupCache {
    pub key: Vec<String>,
    pub hashed_requests: u64,
    pub repeats: u64,
    pub unknown: u64,
    pub repeat_usd: f64,
    pub repeat_j: f64,
}

impl CacheReport {
    #[must_use]
    pub fn of<'a>(
        total: &Tally,
        total_cost: f64,
        groups: impl Iterator<Item = (&'a [String], &'a Tally)>,
    ) -> Self {
        Self {
            method: METHOD,
            distinct_cap: MAX_DISTINCT,
            hashed_requests: total.hashed,
            repeats: total.repeats,
            unknown: total.unknown,
            repeat_usd: total.repeat_usd,
            repeat_j: total.repeat_j,
            share_of_cost: (total_cost > 0.0).then(|| total.repeat_usd / total_cost),
            groups: groups
                .map(|(key, t)| GroupCache {
                    key: key.to_vec(),
                    hashed_requests: t.hashed,
                    repeats: t.repeats,
                    unknown: t.unknown,
                    repeat_usd: t.repeat_usd,
                    repeat_j: t.repeat_j,
                })
                .collect(),
        }
    }
}
