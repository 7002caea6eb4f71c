//! A fixed-bucket RTT histogram: bounded memory, additive across shards and windows.

/// Upper bounds of the buckets, in microseconds; the last bucket is unbounded.
/// Roughly 1-2.5-5 steps from 50 µs to 10 s (the Prometheus histogram uses the same bounds).
pub const BOUNDS_US: [i64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Histogram {
    pub buckets: [u64; BOUNDS_US.len() + 1],
    pub count: u64,
    pub sum_us: i64,
    pub min_us: i64,
    pub max_us: i64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: [0; BOUNDS_US.len() + 1], count: 0, sum_us: 0, min_us: i64::MAX, max_us: i64::MIN }
    }
}

impl Histogram {
    pub fn record(&mut self, us: i64) {
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_us += us;
        self.min_us = self.min_us.min(us);
        self.max_us = self.max_us.max(us);
    }

    pub fn add(&mut self, o: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a += b;
        }
        self.count += o.count;
        self.sum_us += o.sum_us;
        self.min_us = self.min_us.min(o.min_us);
        self.max_us = self.max_us.max(o.max_us);
    }

    pub fn min_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| self.min_us as f64 / 1000.0)
    }
    pub fn max_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| self.max_us as f64 / 1000.0)
    }
    pub fn mean_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_us as f64 / self.count as f64 / 1000.0)
    }

    /// The q-quantile (0..=1) in ms, interpolated linearly inside its bucket
    /// (as Prometheus's `histogram_quantile` does) and clamped to the observed
    /// min and max, so its error is at most the bucket's width.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let lo = if i == 0 { 0 } else { BOUNDS_US[i - 1] };
                let hi = BOUNDS_US.get(i).copied().unwrap_or(self.max_us);
                let frac = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
                let v = lo as f64 + (hi - lo) as f64 * frac;
                return Some(v.clamp(self.min_us as f64, self.max_us as f64) / 1000.0);
            }
            seen += n;
        }
        self.max_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_min_max_mean() {
        let mut h = Histogram::default();
        for us in [40, 50, 51, 20_000, 20_000_000] {
            h.record(us);
        }
        assert_eq!(h.buckets[0], 2, "50 µs is inside the first bucket (le 50)");
        assert_eq!(h.buckets[1], 1);
        assert_eq!(h.buckets[8], 1, "20 ms: le 25 ms");
        assert_eq!(h.buckets[17], 1, "over 10 s");
        assert_eq!((h.min_ms(), h.max_ms()), (Some(0.04), Some(20_000.0)));
        assert_eq!(h.mean_ms(), Some((40 + 50 + 51 + 20_000 + 20_000_000) as f64 / 5.0 / 1000.0));
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket_and_stay_in_range() {
        let mut h = Histogram::default();
        for _ in 0..100 {
            h.record(30_000); // bucket (25 ms, 50 ms]
        }
        // Clamped to the observed range: all samples are 30 ms.
        assert_eq!(h.quantile_ms(0.5), Some(30.0));
        let mut h = Histogram::default();
        for us in (1..=100).map(|i| i * 1_000) {
            h.record(us);
        }
        let p50 = h.quantile_ms(0.5).unwrap();
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((25.0..=50.0).contains(&p50), "{p50}");
        assert!((50.0..=100.0).contains(&p99), "{p99}");
        assert_eq!(Histogram::default().quantile_ms(0.5), None);
    }

    #[test]
    fn adding_is_the_same_as_recording_together() {
        let (mut a, mut b, mut all) = (Histogram::default(), Histogram::default(), Histogram::default());
        for (i, us) in [5, 500, 5_000, 50_000, 70, 9].into_iter().enumerate() {
            if i % 2 == 0 {
                a.record(us)
            } else {
                b.record(us)
            }
            all.record(us);
        }
        a.add(&b);
        assert_eq!(a, all);
    }
}
