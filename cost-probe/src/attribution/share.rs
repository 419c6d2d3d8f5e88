//! Processor sharing over work windows, and exact integer splits.

/// Fixed-point scale of the processor-sharing integral (per-capita time).
const PS_SHIFT: u32 = 32;

/// Which part of a request's work a stretch of time is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Prefill,
    Decode,
}

/// One stretch `[start, end)` of one member's work inside an interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Item {
    pub member: u32,
    pub phase: Phase,
    pub start: u64,
    pub end: u64,
}

/// Scratch for [`Sharer::run`], reused across intervals so the steady state does not allocate.
#[derive(Debug, Default)]
pub struct Sharer {
    sweep: Vec<(u64, bool, u32)>,
    start: Vec<u128>,
    /// Per item, after [`Sharer::run`]: its processor-sharing integral (fixed point).
    pub shares: Vec<u128>,
}

impl Sharer {
    /// Processor sharing within `[from, to)`: at each instant the work is shared equally by the
    /// items live at that instant. Fills [`Sharer::shares`] (one per item) and returns the time
    /// at least one item was live.
    pub fn run(&mut self, items: &[Item], from: u64, to: u64) -> u64 {
        let n = items.len();
        self.sweep.clear();
        self.start.clear();
        self.start.resize(n, 0);
        self.shares.clear();
        self.shares.resize(n, u128::MAX);
        // Only boundaries inside the interval need sorting: items live at its start are live
        // from the outset, items still live at its end close with the final segment.
        let mut live = 0u64;
        for (k, it) in items.iter().enumerate() {
            let (s, e) = (it.start.max(from), it.end.min(to));
            if e <= s {
                self.shares[k] = 0;
                continue;
            }
            if s > from {
                self.sweep.push((s, true, k as u32));
            } else {
                live += 1;
            }
            if e < to {
                self.sweep.push((e, false, k as u32));
            }
        }
        // Ends sort before starts at the same instant (false < true): a zero-length gap.
        self.sweep.sort_unstable();
        let (mut integral, mut prev, mut busy) = (0u128, from, 0u64);
        for &(t, is_start, k) in self.sweep.iter().chain([&(to, false, u32::MAX)]) {
            if live > 0 && t > prev {
                let len = t - prev;
                busy += len;
                // Under 2^32 ns (4.3 s) the shifted length fits in 64 bits, and a 64-bit
                // division is many times cheaper than the 128-bit one; same quotient.
                integral += if len >> (64 - PS_SHIFT) == 0 {
                    u128::from((len << PS_SHIFT) / live)
                } else {
                    (u128::from(len) << PS_SHIFT) / u128::from(live)
                };
            }
            prev = t;
            if k == u32::MAX {
                break;
            }
            if is_start {
                live += 1;
                self.start[k as usize] = integral;
            } else {
                live -= 1;
                self.shares[k as usize] = integral - self.start[k as usize];
            }
        }
        for (share, start) in self.shares.iter_mut().zip(&self.start) {
            if *share == u128::MAX {
                *share = integral - start;
            }
        }
        busy
    }
}

/// Shifts weights right until their sum fits in 64 bits, so `amount × w` (amount < 2^64) cannot
/// overflow u128; returns the new sum. Shifting keeps every part a floor of a fraction ≤ 1 of the
/// amount, so conservation is unaffected; only a request's share of a huge total loses low bits.
pub fn normalize(weights: &mut [u128]) -> u128 {
    let mut total = weights.iter().fold(0u128, |a, &w| a.saturating_add(w));
    if total > u128::from(u64::MAX) {
        let shift = 128 - total.leading_zeros() - 64;
        total = 0;
        for w in weights.iter_mut() {
            *w >>= shift;
            total += *w;
        }
    }
    total
}

/// Splits `amount` by `weights` exactly: `out[k] = ⌊amount × w_k / Σw⌋`, and the few units the
/// floors leave over go to the heaviest weight, so `Σ out == amount` whenever any weight is
/// positive. With every weight zero nothing is given (`out` all zero) and the caller decides.
pub fn exact_split(amount: u64, weights: &mut [u128], out: &mut Vec<u64>) -> u64 {
    out.clear();
    let total = normalize(weights);
    if total == 0 {
        out.resize(weights.len(), 0);
        return 0;
    }
    let mut given = 0u64;
    let mut heaviest = 0;
    // `normalize` brought the sum under 2^64.
    let total64 = total as u64;
    for (k, &w) in weights.iter().enumerate() {
        // In 64 bits when the product fits (µJ × ns of one interval mostly does): the same
        // floor, without the 128-bit division.
        let part = match u64::try_from(w).ok().and_then(|w| amount.checked_mul(w)) {
            Some(p) => p / total64,
            None => (u128::from(amount) * w / total) as u64,
        };
        out.push(part);
        given += part;
        if w > weights[heaviest] {
            heaviest = k;
        }
    }
    out[heaviest] += amount - given;
    amount
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn item(member: u32, start: u64, end: u64) -> Item {
        Item {
            member,
            phase: Phase::Decode,
            start,
            end,
        }
    }

    #[test]
    fn two_overlapping_share_the_overlap_equally() {
        let mut s = Sharer::default();
        let busy = s.run(&[item(0, 0, 100), item(1, 50, 200)], 0, 100);
        assert_eq!(busy, 100);
        // 0 alone for 50, both for 50: 75 against 25.
        let (a, b) = (s.shares[0] >> PS_SHIFT, s.shares[1] >> PS_SHIFT);
        assert_eq!((a, b), (75, 25));
    }

    #[test]
    fn gaps_are_not_busy() {
        let mut s = Sharer::default();
        let busy = s.run(&[item(0, 10, 20), item(1, 40, 50)], 0, 100);
        assert_eq!(busy, 20);
    }

    proptest! {
        #[test]
        fn exact_split_gives_all_or_nothing(
            amount in 0u64..u64::MAX,
            weights in proptest::collection::vec(0u128..u128::MAX / 4, 0..20),
        ) {
            let mut w = weights.clone();
            let mut out = Vec::new();
            let given = exact_split(amount, &mut w, &mut out);
            prop_assert_eq!(out.len(), weights.len());
            let sum: u128 = out.iter().map(|&x| u128::from(x)).sum();
            prop_assert_eq!(sum, u128::from(given));
            if weights.iter().any(|&x| x > 0) && normalize(&mut weights.clone()) > 0 {
                prop_assert_eq!(given, amount);
            } else {
                prop_assert_eq!(given, 0);
            }
            for (k, &wk) in w.iter().enumerate() {
                if wk == 0 && w.iter().any(|&x| x > 0) {
                    // A zero weight gets nothing (the leftover goes to the heaviest).
                    prop_assert_eq!(out[k], 0);
                }
            }
        }

        #[test]
        fn shares_add_up_to_busy_time(
            spans in proptest::collection::vec((0u64..1000, 0u64..1000), 1..12),
        ) {
            let items: Vec<Item> = spans
                .iter()
                .enumerate()
                .map(|(k, &(a, b))| item(k as u32, a.min(b), a.max(b)))
                .collect();
            let mut s = Sharer::default();
            let busy = s.run(&items, 100, 900);
            let total: u128 = s.shares.iter().sum();
            // Each segment adds len << SHIFT / live per live item: the sum is busy << SHIFT,
            // less at most one unit per item per segment of rounding.
            let exact = u128::from(busy) << PS_SHIFT;
            prop_assert!(total <= exact);
            prop_assert!(exact - total <= (items.len() as u128) * (2 * items.len() as u128 + 2));
        }
    }
}
