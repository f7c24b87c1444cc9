//! Latency histograms, recorded per core and merged when read.
//!
//! - `recorder`: each worker core's own plain `Histogram`s (no lock and no
//!   atomic shared across cores on the request path), rotated once a second
//!   by the core's sweep; finished intervals go to the control plane over a
//!   crossbeam channel.
//! - `windows`: the control plane's side: the intervals of the last minute
//!   (for the `1s`, `10s` and `60s` windows) and everything since start
//!   (`all`), merged with `Histogram::add` semantics when a window is read.
//!
//! A core that sleeps (no traffic) sends nothing and holds nobody up, which
//! is why this is not hdrhistogram's `SyncHistogram`: its `refresh` waits
//! for every recorder to write again.
//!
//! Values are microseconds at 3 significant digits: a recorded value is off
//! by at most 0.1 %.

mod recorder;
mod windows;

use hdrhistogram::Histogram;

pub use recorder::{Interval, Recorder};
pub use windows::{LatencyWindows, Window, WindowLatency};

/// Significant decimal digits every histogram keeps.
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// Larger values are recorded as this (an hour, in µs), so that one absurd
/// sample cannot grow a histogram's buckets without bound.
pub const MAX_RECORDED_US: u64 = 3_600_000_000;

/// An empty histogram of microseconds. It grows its buckets to the largest
/// value recorded (a few tens of KiB for values up to seconds).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new(SIGNIFICANT_DIGITS).expect("3 significant digits is a valid precision")
}

/// Total time at the proxy and upstream time, for one backend or overall.
#[derive(Debug, Clone)]
pub struct Latencies {
    /// First byte of the request head read to last byte of the response written.
    pub total: Histogram<u64>,
    /// Request head sent upstream to the response head received; only for
    /// responses relayed from a backend.
    pub upstream: Histogram<u64>,
    /// Sum of `total`'s samples, exact (the histogram's own mean is within
    /// its precision), for Prometheus' `_sum`.
    pub total_sum_us: u64,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            total: new_histogram(),
            upstream: new_histogram(),
            total_sum_us: 0,
        }
    }
}

impl Latencies {
    /// Values are at most `MAX_RECORDED_US` (see `micros`). Not
    /// `saturating_record`: that clamps to the histogram's current range
    /// instead of growing it.
    #[inline]
    fn record(&mut self, total_us: u64, upstream_us: Option<u64>) {
        record(&mut self.total, total_us);
        self.total_sum_us = self.total_sum_us.saturating_add(total_us);
        if let Some(upstream_us) = upstream_us {
            record(&mut self.upstream, upstream_us);
        }
    }

    fn is_empty(&self) -> bool {
        self.total.is_empty() && self.upstream.is_empty()
    }

    /// Adds `other`'s samples to these.
    fn merge(&mut self, other: &Latencies) {
        merge_into(&mut self.total, &other.total);
        merge_into(&mut self.upstream, &other.upstream);
        self.total_sum_us = self.total_sum_us.saturating_add(other.total_sum_us);
    }

    fn reset(&mut self) {
        self.total.reset();
        self.upstream.reset();
        self.total_sum_us = 0;
    }
}

/// Records `value_us`, growing the histogram's range when it must (the
/// first time a core sees a value of a larger magnitude).
#[inline]
fn record(histogram: &mut Histogram<u64>, value_us: u64) {
    // Auto-resizing, up to `MAX_RECORDED_US`: cannot fail.
    let _ = histogram.record(value_us.min(MAX_RECORDED_US));
}

/// `Histogram::add`, which only fails when the target cannot grow to the
/// source's values; every histogram here auto-resizes and holds values up to
/// `MAX_RECORDED_US`, so a failure is a bug in this module.
fn merge_into(target: &mut Histogram<u64>, source: &Histogram<u64>) {
    if let Err(error) = target.add(source) {
        debug_assert!(false, "latency histograms merge: {error}");
    }
}

/// Microseconds of `duration`, capped at `MAX_RECORDED_US`.
#[inline]
pub fn micros(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .min(MAX_RECORDED_US)
}

/// Index of an HTTP status' class (1xx..5xx) in the per-class counters;
/// anything outside 100..=599 counts as 5xx (percore never sends one).
#[inline]
pub fn status_class(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 4,
    }
}

/// The status classes' names, by `status_class` index.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn large_values_grow_the_range_instead_of_clamping() {
        let mut latencies = Latencies::default();
        latencies.record(micros(Duration::from_millis(40)), Some(5_000_000));
        latencies.record(micros(Duration::from_secs(7_200)), None);
        assert!((40_000..=40_040).contains(&latencies.total.min()));
        assert!(
            (MAX_RECORDED_US..=MAX_RECORDED_US + MAX_RECORDED_US / 1000)
                .contains(&latencies.total.max())
        );
        assert!((5_000_000..=5_005_000).contains(&latencies.upstream.max()));
        assert_eq!(latencies.total_sum_us, 40_000 + MAX_RECORDED_US);
    }

    #[test]
    fn status_classes() {
        assert_eq!(
            [
                status_class(101),
                status_class(204),
                status_class(304),
                status_class(404),
                status_class(503)
            ],
            [0, 1, 2, 3, 4]
        );
        assert_eq!(status_class(0), 4);
        assert_eq!(STATUS_CLASSES[status_class(200)], "2xx");
    }
}
