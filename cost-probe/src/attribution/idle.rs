//! Learned idle power: a low percentile of whole-device power over intervals with no request
//! active (method and rationale in the module docs of `attribution`).

use super::MIN_IDLE_SAMPLES;

#[derive(Clone, Debug)]
pub(super) struct IdleLearner {
    /// Ring of power samples in microwatts; grows to `cap` then overwrites the oldest.
    ring: Vec<u64>,
    next: usize,
    cap: usize,
    percentile: u8,
    cached: Option<u64>,
    dirty: bool,
    /// Reused for selection so estimating allocates only while the ring first grows.
    scratch: Vec<u64>,
}

impl IdleLearner {
    pub(super) fn new(cap: usize, percentile: u8) -> Self {
        Self {
            ring: Vec::new(),
            next: 0,
            cap: cap.max(1),
            percentile: percentile.min(100),
            cached: None,
            dirty: false,
            scratch: Vec::new(),
        }
    }

    pub(super) fn observe(&mut self, microwatts: u64) {
        if self.ring.len() < self.cap {
            self.ring.push(microwatts);
        } else {
            self.ring[self.next] = microwatts;
        }
        self.next = (self.next + 1) % self.cap;
        self.dirty = true;
    }

    /// The percentile, recomputed only after new samples (idle intervals are the cheap ones).
    pub(super) fn estimate(&mut self) -> Option<u64> {
        if self.dirty {
            self.dirty = false;
            self.cached = if self.ring.len() < MIN_IDLE_SAMPLES {
                None
            } else {
                self.scratch.clear();
                self.scratch.extend_from_slice(&self.ring);
                // Nearest-rank percentile.
                let n = self.scratch.len();
                let rank = (usize::from(self.percentile) * n).div_ceil(100).clamp(1, n) - 1;
                Some(*self.scratch.select_nth_unstable(rank).1)
            };
        }
        self.cached
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_min_samples_then_takes_low_percentile() {
        let mut l = IdleLearner::new(100, 5);
        for _ in 0..MIN_IDLE_SAMPLES - 1 {
            l.observe(70_000_000);
        }
        assert_eq!(l.estimate(), None);
        for w in 0..96u64 {
            l.observe(60_000_000 + w * 1_000_000);
        }
        // 100 samples: 4 at 70 W, 96 from 60..=155 W; the 5th smallest is 64 W.
        assert_eq!(l.estimate(), Some(64_000_000));
    }

    #[test]
    fn ring_forgets_old_samples() {
        let mut l = IdleLearner::new(10, 0);
        for _ in 0..10 {
            l.observe(1);
        }
        for _ in 0..10 {
            l.observe(50);
        }
        assert_eq!(l.estimate(), Some(50));
    }
}
