//! Latency histograms (microseconds) and their summaries.

use std::fmt;
use std::sync::OnceLock;
use std::time::Instant;

use hdrhistogram::Histogram;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the harness started: the clock every timestamp in a
/// payload is read from (one process, one monotonic clock).
pub fn now_us() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A latency histogram in microseconds, 3 significant figures, auto-resizing.
#[derive(Clone, Debug)]
pub struct Lat(Histogram<u64>);

impl Default for Lat {
    fn default() -> Self {
        Lat::new()
    }
}

impl Lat {
    /// An empty histogram.
    pub fn new() -> Self {
        let mut h = Histogram::new(3).expect("3 significant figures is valid");
        h.auto(true);
        Lat(h)
    }

    /// Records one latency; zero is recorded as 1 µs (the resolution).
    pub fn record(&mut self, us: u64) {
        // With auto-resize on, recording cannot fail.
        let _ = self.0.record(us.max(1));
    }

    /// Adds every sample of `other`.
    pub fn add(&mut self, other: &Lat) {
        let _ = self.0.add(&other.0);
    }

    /// The summary: count and percentiles.
    pub fn summary(&self) -> Summary {
        if self.0.is_empty() {
            return Summary::default();
        }
        Summary {
            count: self.0.len(),
            p50: self.0.value_at_quantile(0.50),
            p90: self.0.value_at_quantile(0.90),
            p99: self.0.value_at_quantile(0.99),
            p999: self.0.value_at_quantile(0.999),
            max: self.0.max(),
            mean: self.0.mean(),
        }
    }
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n={} p50={} p90={} p99={} p99.9={} max={}",
            self.count,
            fmt_us(self.p50 as f64),
            fmt_us(self.p90 as f64),
            fmt_us(self.p99 as f64),
            fmt_us(self.p999 as f64),
            fmt_us(self.max as f64)
        )
    }
}

/// A duration in microseconds in a readable unit.
pub fn fmt_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_a_uniform_spread() {
        let mut h = Lat::new();
        for v in 1..=1000 {
            h.record(v);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50, 500);
        assert_eq!(s.p90, 900);
        assert_eq!(s.p99, 990);
        assert_eq!(s.p999, 999);
        assert_eq!(s.max, 1000);
        assert!((s.mean - 500.5).abs() < 0.5);
    }

    #[test]
    fn empty_and_merged() {
        assert_eq!(Lat::new().summary(), Summary::default());
        let mut a = Lat::new();
        let mut b = Lat::new();
        a.record(0); // clamped to the 1 µs resolution
        b.record(3_000_000); // large values resize
        a.add(&b);
        let s = a.summary();
        assert_eq!(s.count, 2);
        assert_eq!(s.p50, 1);
        assert!(s.max >= 3_000_000 && s.max < 3_010_000, "{}", s.max);
    }

    #[test]
    fn units() {
        assert_eq!(fmt_us(12.0), "12 µs");
        assert_eq!(fmt_us(1500.0), "1.50 ms");
        assert_eq!(fmt_us(2_500_000.0), "2.50 s");
    }

    #[test]
    fn clock_moves_forward() {
        let a = now_us();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(now_us() >= a + 1000);
    }
}
