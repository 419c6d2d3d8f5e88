//! Wrap-aware hardware counters and exact unit scaling.
//!
//! Wrap-around is handled here and nowhere else: every source feeds its raw readings through a
//! [`Counter`] and publishes a monotone total, so nothing downstream ever sees a wrap.
use serde::Serialize;

use crate::units::MicroJoules;

/// The value range of a raw counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CounterRange {
    /// Counts `0..=max` then wraps to 0, like RAPL's `energy_uj` with `max = max_energy_range_uj`.
    ///
    /// The kernel's true modulus is `max + one hardware energy unit` (its max is `0xffff_ffff`
    /// units); sysfs does not expose the unit, so each wrap may be off by less than one unit
    /// (~61 µJ on Intel packages), which is far below anything we report.
    WrapsAfter(u64),
    /// A 64-bit counter that does not wrap in practice (NVML total energy, perf counts). A
    /// decrease means the counter was reset (driver reload); the new value is counted from zero.
    Monotonic,
}

/// A raw counter followed over time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    range: CounterRange,
    last: Option<u64>,
    wraps: u64,
    resets: u64,
}

impl Counter {
    #[must_use]
    pub const fn new(range: CounterRange) -> Self {
        Self {
            range,
            last: None,
            wraps: 0,
            resets: 0,
        }
    }

    /// The increase from raw reading `prev` to raw reading `cur` within `range`.
    ///
    /// Exact as long as the counter is read at least once per wrap period (minutes for RAPL
    /// even at full load, so a 10 Hz sampler never loses an interval).
    #[must_use]
    pub const fn delta(range: CounterRange, prev: u64, cur: u64) -> u64 {
        if cur >= prev {
            return cur - prev;
        }
        match range {
            // `prev > cur` so this cannot overflow: (max - prev) + cur + 1 <= max.
            CounterRange::WrapsAfter(max) => {
                if prev > max {
                    // The counter cannot legally hold `prev`; treat like a reset rather than
                    // inventing energy.
                    cur
                } else {
                    (max - prev) + cur + 1
                }
            }
            CounterRange::Monotonic => cur,
        }
    }

    /// Feeds the next raw reading; returns the increase since the previous one (0 for the first).
    pub fn observe(&mut self, raw: u64) -> u64 {
        let Some(prev) = self.last.replace(raw) else {
            return 0;
        };
        if raw < prev {
            match self.range {
                CounterRange::WrapsAfter(_) => self.wraps += 1,
                CounterRange::Monotonic => self.resets += 1,
            }
        }
        Self::delta(self.range, prev, raw)
    }

    #[must_use]
    pub const fn range(&self) -> CounterRange {
        self.range
    }

    /// Wrap-arounds seen so far.
    #[must_use]
    pub const fn wraps(&self) -> u64 {
        self.wraps
    }

    /// Resets (decreases of a monotonic counter) seen so far.
    #[must_use]
    pub const fn resets(&self) -> u64 {
        self.resets
    }
}

/// Converts counts of some unit to microjoules by an exact rational factor, carrying the
/// remainder so that rounding never accumulates (a long run loses less than one microjoule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scaler {
    num: u128,
    den: u128,
    rem: u128,
}

impl Scaler {
    /// `num / den` microjoules per count.
    #[must_use]
    pub fn new(num: u128, den: u128) -> Self {
        assert!(den > 0, "scale denominator must be positive");
        let g = gcd(num, den);
        let g = g.max(1);
        Self {
            num: num / g,
            den: den / g,
            rem: 0,
        }
    }

    /// Parses a perf `.scale` file value (joules per count, decimal such as
    /// `2.3283064365386962890625e-10`) exactly, without going through `f64`.
    #[must_use]
    pub fn from_joules_per_count(text: &str) -> Option<Self> {
        let text = text.trim();
        let (mantissa, exp) = match text.find(['e', 'E']) {
            Some(i) => (&text[..i], text[i + 1..].parse::<i32>().ok()?),
            None => (text, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let mut digits: u128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            if !b.is_ascii_digit() {
                return None;
            }
            digits = digits.checked_mul(10)?.checked_add(u128::from(b - b'0'))?;
        }
        // value = digits * 10^(exp - frac.len()) J = digits * 10^(exp - frac.len() + 6) µJ
        let pow = exp
            .checked_sub(i32::try_from(frac.len()).ok()?)?
            .checked_add(6)?;
        if pow >= 0 {
            let m = 10u128.checked_pow(pow.unsigned_abs())?;
            Some(Self::new(digits.checked_mul(m)?, 1))
        } else {
            let d = 10u128.checked_pow(pow.unsigned_abs())?;
            Some(Self::new(digits, d))
        }
    }

    /// Converts `counts` (an increase, not a running total) to microjoules.
    pub fn step(&mut self, counts: u64) -> MicroJoules {
        let n = u128::from(counts)
            .checked_mul(self.num)
            .map_or(u128::MAX, |v| v.saturating_add(self.rem));
        let q = n / self.den;
        self.rem = n % self.den;
        MicroJoules(u64::try_from(q).unwrap_or(u64::MAX))
    }
}

const fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A real RAPL package range (seen in powercap dumps of Intel server hosts).
    const PKG_MAX: u64 = 262_143_328_850;

    #[test]
    fn rapl_wrap_is_counted_across_the_top() {
        let r = CounterRange::WrapsAfter(PKG_MAX);
        assert_eq!(Counter::delta(r, PKG_MAX - 10, 5), 16);
        assert_eq!(Counter::delta(r, PKG_MAX, 0), 1);
        assert_eq!(Counter::delta(r, 100, 250), 150);
    }

    #[test]
    fn monotonic_decrease_is_a_reset_not_a_huge_delta() {
        let mut c = Counter::new(CounterRange::Monotonic);
        assert_eq!(c.observe(5_000), 0);
        assert_eq!(c.observe(7_000), 2_000);
        assert_eq!(c.observe(300), 300);
        assert_eq!(c.resets(), 1);
    }

    #[test]
    fn impossible_prev_above_max_is_not_inflated() {
        assert_eq!(Counter::delta(CounterRange::WrapsAfter(1000), 5000, 10), 10);
    }

    #[test]
    fn full_u64_range_does_not_overflow() {
        let r = CounterRange::WrapsAfter(u64::MAX);
        assert_eq!(Counter::delta(r, u64::MAX, 0), 1);
        assert_eq!(Counter::delta(r, 1, 0), u64::MAX);
    }

    #[test]
    fn perf_rapl_scale_is_exact() {
        // The scale the kernel's RAPL PMU publishes: 2^-32 J per count.
        let mut s = Scaler::from_joules_per_count("2.3283064365386962890625e-10").unwrap();
        // 2^32 counts = 1 J exactly.
        assert_eq!(s.step(1 << 32), MicroJoules(1_000_000));
        // Remainders carry: 2^12 counts is 0.95367… µJ; 1<<20 such steps make 2^32 counts.
        let mut sum = 0;
        for _ in 0..(1 << 20) {
            sum += s.step(1 << 12).0;
        }
        assert_eq!(sum, 1_000_000);
    }

    #[test]
    fn scale_parser_handles_plain_and_bad_values() {
        assert_eq!(
            Scaler::from_joules_per_count("1e-3").unwrap().step(7),
            MicroJoules(7_000)
        );
        assert_eq!(
            Scaler::from_joules_per_count("0.5").unwrap().step(3),
            MicroJoules(1_500_000)
        );
        assert!(Scaler::from_joules_per_count("abc").is_none());
        assert!(Scaler::from_joules_per_count("").is_none());
        assert!(Scaler::from_joules_per_count("1e-400").is_none());
    }

    proptest! {
        /// For any trace of increments below the range, with the counter wrapping as often as
        /// it likes, the summed deltas are the true energy.
        #[test]
        fn summed_deltas_equal_true_total(
            max in 1u64..=u64::MAX,
            start_frac in 0.0f64..1.0,
            steps in proptest::collection::vec(0.0f64..1.0, 0..200),
        ) {
            let modulus = u128::from(max) + 1;
            let start = ((start_frac * max as f64) as u64).min(max);
            let mut counter = Counter::new(CounterRange::WrapsAfter(max));
            counter.observe(start);
            let mut raw = u128::from(start);
            let mut truth: u128 = 0;
            let mut summed: u128 = 0;
            for f in steps {
                // Increment strictly below the modulus (the counter's range).
                let inc = ((f * max as f64) as u128).min(modulus - 1);
                truth += inc;
                raw = (raw + inc) % modulus;
                summed += u128::from(counter.observe(raw as u64));
            }
            prop_assert_eq!(summed, truth);
        }

        /// Small ranges wrap on almost every step; the sum must still be exact.
        #[test]
        fn summed_deltas_exact_for_tiny_ranges(
            max in 1u64..64,
            incs in proptest::collection::vec(0u64..64, 0..300),
        ) {
            let mut counter = Counter::new(CounterRange::WrapsAfter(max));
            counter.observe(0);
            let (mut raw, mut truth, mut summed) = (0u64, 0u64, 0u64);
            for inc in incs {
                let inc = inc % (max + 1);
                truth += inc;
                raw = (raw + inc) % (max + 1);
                summed += counter.observe(raw);
            }
            prop_assert_eq!(summed, truth);
        }

        /// Scaling in steps equals scaling the total at once (no drift from remainders).
        #[test]
        fn scaler_steps_sum_to_scaled_total(
            num in 1u128..1_000_000, den in 1u128..1_000_000,
            steps in proptest::collection::vec(0u64..1_000_000_000, 0..100),
        ) {
            let mut s = Scaler::new(num, den);
            let stepped: u128 = steps.iter().map(|&c| u128::from(s.step(c).0)).sum();
            let total: u128 = steps.iter().map(|&c| u128::from(c)).sum();
            prop_assert_eq!(stepped, total * num / den);
        }
    }
}
