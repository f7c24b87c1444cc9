//! The control plane's latency store: the cores' finished intervals of the
//! last minute, kept sparse (only the buckets that hold samples), plus every
//! sample since start merged into one set of histograms. A window is read by
//! merging its intervals into fresh histograms.
//!
//! A window of W seconds holds the intervals that ended within the last W
//! seconds: W seconds of samples from each core that had traffic, the newest
//! of them up to a second old (a core rotates once a second).

use std::collections::VecDeque;
use std::str::FromStr;
use std::time::Instant;

use crossbeam::channel::{Receiver, Sender};
use hdrhistogram::Histogram;
use parking_lot::Mutex;

use super::{Interval, Latencies};
use crate::pool::BackendId;

/// The windows the admin API serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    OneSecond,
    TenSeconds,
    Minute,
    /// Since the proxy started.
    All,
}

impl Window {
    pub const ALL: [Window; 4] = [
        Window::OneSecond,
        Window::TenSeconds,
        Window::Minute,
        Window::All,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Window::OneSecond => "1s",
            Window::TenSeconds => "10s",
            Window::Minute => "60s",
            Window::All => "all",
        }
    }

    fn millis(self) -> Option<u64> {
        match self {
            Window::OneSecond => Some(1_000),
            Window::TenSeconds => Some(10_000),
            Window::Minute => Some(60_000),
            Window::All => None,
        }
    }
}

impl FromStr for Window {
    type Err = String;

    fn from_str(text: &str) -> Result<Window, String> {
        Window::ALL
            .into_iter()
            .find(|window| window.name() == text)
            .ok_or_else(|| format!("unknown window {text:?}; use one of 1s, 10s, 60s, all"))
    }
}

/// The longest window: intervals older than this are dropped.
const KEPT_MS: u64 = 60_000;

/// The control plane's side of the latency histograms.
pub struct LatencyWindows {
    sender: Sender<Interval>,
    receiver: Receiver<Interval>,
    started: Instant,
    store: Mutex<Store>,
}

#[derive(Default)]
struct Store {
    /// Intervals of the last minute, roughly in the order they ended.
    recent: VecDeque<Filed>,
    /// Every sample since start; a removed backend's entry goes on the next read.
    all: WindowLatency,
}

/// An interval as kept: when it ended, and its histograms' non-empty buckets.
struct Filed {
    ended_ms: u64,
    overall: SparseLatencies,
    backends: Vec<(BackendId, SparseLatencies)>,
}

struct SparseLatencies {
    total: Vec<(u64, u64)>,
    upstream: Vec<(u64, u64)>,
    total_sum_us: u64,
}

impl SparseLatencies {
    fn new(latencies: &Latencies) -> SparseLatencies {
        SparseLatencies {
            total: sparse(&latencies.total),
            upstream: sparse(&latencies.upstream),
            total_sum_us: latencies.total_sum_us,
        }
    }

    fn add_to(&self, latencies: &mut Latencies) {
        add_sparse(&mut latencies.total, &self.total);
        add_sparse(&mut latencies.upstream, &self.upstream);
        latencies.total_sum_us = latencies.total_sum_us.saturating_add(self.total_sum_us);
    }
}

/// (a value of the bucket, its count) for every bucket that holds samples:
/// recorded again into a histogram of the same precision, each lands in the
/// same bucket.
fn sparse(histogram: &Histogram<u64>) -> Vec<(u64, u64)> {
    histogram
        .iter_recorded()
        .map(|bucket| (bucket.value_iterated_to(), bucket.count_at_value()))
        .collect()
}

fn add_sparse(histogram: &mut Histogram<u64>, buckets: &[(u64, u64)]) {
    for &(value, count) in buckets {
        // Auto-resizing, and values are capped at `MAX_RECORDED_US`.
        let _ = histogram.record_n(value, count);
    }
}

/// A window's histograms, merged over cores and intervals.
#[derive(Debug, Clone, Default)]
pub struct WindowLatency {
    pub overall: Latencies,
    /// Backends with samples in the window, by id.
    pub backends: Vec<(BackendId, Latencies)>,
}

impl WindowLatency {
    fn backend(&mut self, id: BackendId) -> &mut Latencies {
        let index = match self.backends.iter().position(|(entry, _)| *entry == id) {
            Some(index) => index,
            None => {
                self.backends.push((id, Latencies::default()));
                self.backends.len() - 1
            }
        };
        &mut self.backends[index].1
    }
}

impl Default for LatencyWindows {
    fn default() -> Self {
        let (sender, receiver) = crossbeam::channel::unbounded();
        LatencyWindows {
            sender,
            receiver,
            started: Instant::now(),
            store: Mutex::new(Store::default()),
        }
    }
}

impl LatencyWindows {
    /// Where a core sends its finished intervals.
    pub fn sender(&self) -> Sender<Interval> {
        self.sender.clone()
    }

    /// Files the intervals the cores have sent. The admin thread calls this
    /// once a second, so the channel holds a second's worth at most, and
    /// before every read.
    pub fn collect(&self) {
        let mut store = self.store.lock();
        let store = &mut *store;
        for interval in self.receiver.try_iter() {
            store.all.overall.merge(&interval.overall);
            for (id, latencies) in &interval.backends {
                store.all.backend(*id).merge(latencies);
            }
            store.recent.push_back(Filed {
                ended_ms: self.millis_at(interval.ended),
                overall: SparseLatencies::new(&interval.overall),
                backends: interval
                    .backends
                    .iter()
                    .map(|(id, latencies)| (*id, SparseLatencies::new(latencies)))
                    .collect(),
            });
        }
        let now_ms = self.millis_at(Instant::now());
        store
            .recent
            .retain(|filed| filed.ended_ms + KEPT_MS > now_ms);
    }

    /// The window's histograms, for the backends in `live` (removed
    /// backends' samples stay in `overall`).
    pub fn window(&self, window: Window, live: &[BackendId]) -> WindowLatency {
        self.collect();
        let mut store = self.store.lock();
        store.all.backends.retain(|(id, _)| live.contains(id));
        let Some(span_ms) = window.millis() else {
            return store.all.clone();
        };
        let now_ms = self.millis_at(Instant::now());
        let mut merged = WindowLatency::default();
        for filed in store
            .recent
            .iter()
            .filter(|filed| filed.ended_ms + span_ms > now_ms)
        {
            filed.overall.add_to(&mut merged.overall);
            for (id, latencies) in &filed.backends {
                if live.contains(id) {
                    latencies.add_to(merged.backend(*id));
                }
            }
        }
        merged
    }

    fn millis_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn interval(ended: Instant, backend: BackendId, samples_us: &[u64]) -> Interval {
        let mut latencies = Latencies::default();
        for &sample in samples_us {
            latencies.record(sample, Some(sample / 2));
        }
        Interval {
            ended,
            overall: latencies.clone(),
            backends: vec![(backend, latencies)],
        }
    }

    #[test]
    fn window_names() {
        for window in Window::ALL {
            assert_eq!(window.name().parse::<Window>(), Ok(window));
        }
        let error = "5m".parse::<Window>().unwrap_err();
        assert!(error.contains("1s, 10s, 60s, all"), "{error}");
    }

    #[test]
    fn windows_hold_what_ended_within_them() {
        let windows = LatencyWindows::default();
        let now = Instant::now() + Duration::from_secs(120);
        // Filed relative to `started`: pretend the reads happen at `now`.
        let sender = windows.sender();
        sender
            .send(interval(now - Duration::from_secs(30), 1, &[1000; 10]))
            .unwrap();
        sender
            .send(interval(now - Duration::from_secs(5), 1, &[2000; 20]))
            .unwrap();
        sender
            .send(interval(now - Duration::from_millis(500), 2, &[3000; 30]))
            .unwrap();
        sender
            .send(interval(now - Duration::from_secs(90), 2, &[9000; 5]))
            .unwrap();
        let store_now = windows.millis_at(now);
        // `window` reads the clock; check the filter against `now` by hand.
        windows.collect();
        let store = windows.store.lock();
        let within = |span_ms: u64| -> u64 {
            store
                .recent
                .iter()
                .filter(|filed| filed.ended_ms + span_ms > store_now)
                .map(|filed| filed.overall.total.iter().map(|(_, c)| c).sum::<u64>())
                .sum()
        };
        // The 90-second-old interval is not yet a minute old for the real clock.
        assert_eq!(within(1_000), 30);
        assert_eq!(within(10_000), 50);
        assert_eq!(within(60_000), 60);
        assert_eq!(store.all.overall.total.len(), 65);
        assert_eq!(
            store.all.overall.total_sum_us,
            10_000 + 40_000 + 90_000 + 45_000
        );
    }

    #[test]
    fn reads_merge_and_drop_removed_backends() {
        let windows = LatencyWindows::default();
        let sender = windows.sender();
        let now = Instant::now();
        sender.send(interval(now, 1, &[100, 200, 300])).unwrap();
        sender.send(interval(now, 2, &[1_000, 2_000])).unwrap();
        let read = windows.window(Window::TenSeconds, &[1, 2]);
        assert_eq!(read.overall.total.len(), 5);
        assert_eq!(read.overall.upstream.max(), 1_000);
        assert_eq!(read.backends.len(), 2);
        let all = windows.window(Window::All, &[2]);
        assert_eq!(all.overall.total.len(), 5);
        assert_eq!(all.backends.len(), 1);
        assert_eq!(all.backends[0].1.total.value_at_quantile(0.5), 1_000);
        let read = windows.window(Window::OneSecond, &[1]);
        assert_eq!(read.backends[0].1.total.len(), 3);
        assert_eq!(read.backends[0].1.total.max(), 300);
    }
}
