//! What the traffic did: `GET /histograms` (latency summaries per window,
//! overall and per backend) and the traffic families of `GET /metrics`:
//! request and upstream duration histograms, responses by status class,
//! retries, connect errors, timeouts and accepted connections per core.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::report::{family, sample};
use crate::latency::{Latencies, STATUS_CLASSES, Window, WindowLatency};
use crate::metrics::CoreCounter;
use crate::pool::{Backend, BackendId, ControlPlane, PoolSnapshot};

/// The `window` of a `/histograms` query; `60s` when there is none.
pub fn window_from_query(query: Option<&str>) -> Result<Window, String> {
    let mut window = Window::Minute;
    for pair in query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
    {
        match pair.split_once('=') {
            Some(("window", value)) => window = value.parse()?,
            _ => {
                return Err(format!(
                    "unknown query parameter {pair:?}; only window, one of 1s, 10s, 60s, all"
                ));
            }
        }
    }
    Ok(window)
}

/// `GET /histograms`, as `shared/admin-api.md` shows it, plus `upstream`
/// (request head sent to response head received) in the same shape.
#[derive(Debug, Serialize)]
pub struct HistogramsDocument {
    pub window: &'static str,
    pub unit: &'static str,
    pub overall: Summary,
    pub backends: BTreeMap<String, Summary>,
    pub upstream: UpstreamSummaries,
}

#[derive(Debug, Serialize)]
pub struct UpstreamSummaries {
    pub overall: Summary,
    pub backends: BTreeMap<String, Summary>,
}

/// One histogram in microseconds. An empty one is all zeros.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    /// To 0.1 µs.
    pub mean: f64,
    /// Samples per bucket of a 1-2-5 series (`le_us`: the bucket's upper
    /// bound), from the first bucket that holds any to the last: the
    /// distribution's shape, for `percore ctl histograms`.
    pub distribution: Vec<Bucket>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Bucket {
    pub le_us: u64,
    pub count: u64,
}

impl Summary {
    pub fn new(histogram: &Histogram<u64>) -> Summary {
        if histogram.is_empty() {
            return Summary {
                count: 0,
                min: 0,
                p50: 0,
                p90: 0,
                p99: 0,
                p999: 0,
                max: 0,
                mean: 0.0,
                distribution: Vec::new(),
            };
        }
        let at = |quantile| histogram.value_at_quantile(quantile);
        Summary {
            count: histogram.len(),
            min: histogram.min(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: histogram.max(),
            mean: (histogram.mean() * 10.0).round() / 10.0,
            distribution: distribution(histogram),
        }
    }
}

/// The bucket bounds of the 1-2-5 series from 1 µs up.
fn one_two_five() -> impl Iterator<Item = u64> {
    (0..19u32).flat_map(|exponent| [1, 2, 5].map(|step| step * 10u64.pow(exponent)))
}

fn distribution(histogram: &Histogram<u64>) -> Vec<Bucket> {
    let mut buckets: Vec<Bucket> = Vec::new();
    let mut bounds = one_two_five();
    let mut bound = bounds.next().unwrap_or(u64::MAX);
    for recorded in histogram.iter_recorded() {
        let value = recorded.value_iterated_to();
        while value > bound {
            // Between the first and the last bucket, empty ones are shown.
            if buckets.last().is_some_and(|last| last.le_us != bound) {
                buckets.push(Bucket {
                    le_us: bound,
                    count: 0,
                });
            }
            bound = bounds.next().unwrap_or(u64::MAX);
        }
        match buckets.last_mut() {
            Some(last) if last.le_us == bound => last.count += recorded.count_at_value(),
            _ => buckets.push(Bucket {
                le_us: bound,
                count: recorded.count_at_value(),
            }),
        }
    }
    // Trailing empty buckets were never pushed: a bucket is pushed empty
    // only when a later value passes it.
    buckets
}

/// The live backends' ids and urls, in pool order.
fn live_backends(snapshot: &PoolSnapshot) -> Vec<(BackendId, &str)> {
    snapshot
        .backends
        .iter()
        .map(|(backend, _)| (backend.id, backend.url.as_str()))
        .collect()
}

pub fn histograms(plane: &ControlPlane, window: Window) -> HistogramsDocument {
    let snapshot = plane.snapshot();
    let live = live_backends(&snapshot);
    let ids: Vec<BackendId> = live.iter().map(|(id, _)| *id).collect();
    let latency = plane.latency.window(window, &ids);
    let per_backend = |pick: fn(&Latencies) -> &Histogram<u64>| -> BTreeMap<String, Summary> {
        latency
            .backends
            .iter()
            .filter_map(|(id, latencies)| {
                let url = live.iter().find(|(live_id, _)| live_id == id)?.1;
                Some((url.to_string(), Summary::new(pick(latencies))))
            })
            .collect()
    };
    HistogramsDocument {
        window: window.name(),
        unit: "us",
        overall: Summary::new(&latency.overall.total),
        backends: per_backend(|l| &l.total),
        upstream: UpstreamSummaries {
            overall: Summary::new(&latency.overall.upstream),
            backends: per_backend(|l| &l.upstream),
        },
    }
}

/// Upper bounds of the Prometheus duration histograms, in seconds.
const DURATION_BUCKETS_S: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 60.0,
];

/// Per-backend counters beyond requests and failures, by name and help.
const BACKEND_COUNTERS: [(&str, &str); 4] = [
    (
        "percore_backend_retries_total",
        "Attempts sent here after an attempt failed.",
    ),
    (
        "percore_backend_connect_errors_total",
        "Connections not opened, timeouts included.",
    ),
    (
        "percore_backend_connect_timeouts_total",
        "Connections not opened in time.",
    ),
    (
        "percore_backend_response_timeouts_total",
        "Responses that did not arrive in time.",
    ),
];

/// Appends the traffic families to a `/metrics` exposition.
pub fn write_metrics(out: &mut String, plane: &ControlPlane, snapshot: &PoolSnapshot) {
    let live = live_backends(snapshot);
    let ids: Vec<BackendId> = live.iter().map(|(id, _)| *id).collect();
    let all = plane.latency.window(Window::All, &ids);
    write_durations(out, snapshot, &all);

    family(
        out,
        "percore_backend_responses_total",
        "counter",
        "Responses relayed in full from this backend, by status class.",
    );
    for (backend, _) in &snapshot.backends {
        let (id, url) = (backend.id.to_string(), backend.url.as_str());
        for (class, name) in STATUS_CLASSES.iter().enumerate() {
            let count = backend.counters.sum(|core| &core.responses[class]);
            let labels = [("id", id.as_str()), ("url", url), ("code", name)];
            sample(out, "percore_backend_responses_total", &labels, count);
        }
    }
    type Read = fn(&crate::metrics::BackendCounters) -> &CoreCounter;
    let reads: [Read; 4] = [
        |c| &c.retries,
        |c| &c.connect_errors,
        |c| &c.connect_timeouts,
        |c| &c.response_timeouts,
    ];
    let counters = BACKEND_COUNTERS.into_iter().zip(reads);
    for ((name, help), read) in counters {
        family(out, name, "counter", help);
        for (backend, _) in &snapshot.backends {
            let id = backend.id.to_string();
            let labels = [("id", id.as_str()), ("url", backend.url.as_str())];
            sample(out, name, &labels, backend.counters.sum(read));
        }
    }

    family(
        out,
        "percore_local_responses_total",
        "counter",
        "Responses percore answered itself (refusals, and errors when no backend answered), by status class.",
    );
    for (class, name) in STATUS_CLASSES.iter().enumerate() {
        let count = plane.workers.sum(|worker| &worker.local_responses[class]);
        sample(
            out,
            "percore_local_responses_total",
            &[("code", name)],
            count,
        );
    }
    family(
        out,
        "percore_worker_accepted_connections_total",
        "counter",
        "Client connections this worker core accepted (SO_REUSEPORT's spread).",
    );
    for (core, stats) in plane.workers.iter().enumerate() {
        let core = core.to_string();
        let labels = [("core", core.as_str())];
        let count = stats.accepted_connections.get();
        sample(
            out,
            "percore_worker_accepted_connections_total",
            &labels,
            count,
        );
    }
}

/// The request and upstream duration histograms, per live backend, from
/// every sample since start (Prometheus histograms are cumulative).
fn write_durations(out: &mut String, snapshot: &PoolSnapshot, all: &WindowLatency) {
    let families: [(&str, &str, bool); 2] = [
        (
            "percore_request_duration_seconds",
            "Time at the proxy, first byte of the request head read to last byte of the response written, of responses relayed from this backend.",
            true,
        ),
        (
            "percore_upstream_duration_seconds",
            "Time upstream, request head sent to response head received.",
            false,
        ),
    ];
    for (name, help, total) in families {
        family(out, name, "histogram", help);
        for (id, latencies) in &all.backends {
            let Some(backend) = find(snapshot, *id) else {
                continue;
            };
            let histogram = if total {
                &latencies.total
            } else {
                &latencies.upstream
            };
            let sum_us = if total {
                latencies.total_sum_us as f64
            } else {
                // Not kept exactly: the histogram's mean is within its 0.1 %.
                histogram.mean() * histogram.len() as f64
            };
            write_histogram(out, name, backend, histogram, sum_us);
        }
    }
}

fn find(snapshot: &PoolSnapshot, id: BackendId) -> Option<&Backend> {
    snapshot
        .backends
        .iter()
        .map(|(backend, _)| &**backend)
        .find(|backend| backend.id == id)
}

fn write_histogram(
    out: &mut String,
    name: &str,
    backend: &Backend,
    histogram: &Histogram<u64>,
    sum_us: f64,
) {
    let id = backend.id.to_string();
    let url = backend.url.as_str();
    let bucket = format!("{name}_bucket");
    for le in DURATION_BUCKETS_S {
        let le_us = (le * 1e6).round() as u64;
        let count = if histogram.is_empty() {
            0
        } else {
            histogram.count_between(0, le_us)
        };
        let le = le.to_string();
        sample(
            out,
            &bucket,
            &[("id", &id), ("url", url), ("le", &le)],
            count,
        );
    }
    let labels = [("id", id.as_str()), ("url", url)];
    let count = histogram.len();
    sample(
        out,
        &bucket,
        &[("id", &id), ("url", url), ("le", "+Inf")],
        count,
    );
    sample(out, &format!("{name}_sum"), &labels, sum_us / 1e6);
    sample(out, &format!("{name}_count"), &labels, count);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::new_histogram;

    #[test]
    fn queries() {
        assert_eq!(window_from_query(None), Ok(Window::Minute));
        assert_eq!(window_from_query(Some("window=1s")), Ok(Window::OneSecond));
        assert_eq!(window_from_query(Some("window=all")), Ok(Window::All));
        assert!(
            window_from_query(Some("window=2s"))
                .unwrap_err()
                .contains("2s")
        );
        assert!(
            window_from_query(Some("span=1s"))
                .unwrap_err()
                .contains("span")
        );
    }

    #[test]
    fn summaries_and_distribution() {
        let mut histogram = new_histogram();
        for value in [90, 150, 180, 400, 5_300] {
            histogram.record(value).unwrap();
        }
        let summary = Summary::new(&histogram);
        assert_eq!((summary.count, summary.min), (5, 90));
        // The top of 5,300's bucket: within the histogram's 0.1 %.
        assert!((5_300..=5_306).contains(&summary.max), "{}", summary.max);
        assert_eq!(summary.p50, 180);
        assert_eq!(
            summary.distribution,
            [
                (100, 1),
                (200, 2),
                (500, 1),
                (1_000, 0),
                (2_000, 0),
                (5_000, 0),
                (10_000, 1)
            ]
            .map(|(le_us, count)| Bucket { le_us, count })
        );
        let empty = Summary::new(&new_histogram());
        assert_eq!((empty.count, empty.p99), (0, 0));
        assert!(empty.distribution.is_empty());
    }
}
