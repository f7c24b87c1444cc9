//! What the admin API reports: the status document (`GET /status`), a
//! backend's object, and the Prometheus text exposition (`GET /metrics`).
//! Everything is read from one pool snapshot plus the per-core counters,
//! summed when read; nothing here writes.

use std::fmt::Write;

use serde::Serialize;

use crate::balance::StrategyKind;
use crate::health::{LastCheck, Transition};
use crate::metrics::WorkerStats;
use crate::pool::{Backend, BackendId, BackendState, ControlPlane, PoolSnapshot};

/// `GET /status`, field for field as `docs/admin-api.md` shows it.
#[derive(Debug, Serialize)]
pub struct StatusDocument {
    pub version: u64,
    pub strategy: StrategyKind,
    pub strategies: Vec<String>,
    pub uptime_s: f64,
    pub workers: Vec<WorkerView>,
    pub backends: Vec<BackendView>,
}

#[derive(Debug, Serialize)]
pub struct WorkerView {
    pub core: usize,
    pub applied_version: u64,
    /// Client connections open on the core (the contract's name).
    #[serde(rename = "active_connections")]
    pub open_connections: u64,
    pub requests: u64,
    /// Client connections parked on the core since it started.
    pub parked_total: u64,
}

/// A backend as the API shows it: in `/status`, and as the reply to adding
/// or removing one.
#[derive(Debug, Serialize)]
pub struct BackendView {
    pub id: BackendId,
    pub url: String,
    pub weight: u32,
    pub state: BackendState,
    /// Requests in flight; the sum of `in_flight_per_core` (summed here, so
    /// the two always agree even while cores are counting). The contract
    /// names both fields `active_…`.
    #[serde(rename = "active_connections")]
    pub in_flight: u64,
    #[serde(rename = "active_per_core")]
    pub in_flight_per_core: Vec<u64>,
    pub requests: u64,
    pub failures: u64,
    /// The latest health check; null until the first one.
    pub last_check: Option<LastCheck>,
    /// The last 16 up/down flips, oldest first.
    pub transitions: Vec<Transition>,
    /// Only in the reply to a removal: whether its in-flight requests had
    /// finished when the reply was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drained: Option<bool>,
}

impl BackendView {
    pub fn new(plane: &ControlPlane, backend: &Backend, state: BackendState) -> BackendView {
        let (last_check, transitions) = plane.health.view(backend.id);
        let in_flight_per_core: Vec<u64> = backend
            .counters
            .iter()
            .map(|core| core.in_flight.get())
            .collect();
        BackendView {
            id: backend.id,
            url: backend.url.clone(),
            weight: backend.weight(),
            state,
            in_flight: in_flight_per_core.iter().sum(),
            in_flight_per_core,
            requests: backend.counters.sum(|core| &core.requests),
            failures: backend.counters.sum(|core| &core.failures),
            last_check,
            transitions,
            drained: None,
        }
    }
}

pub fn status(plane: &ControlPlane) -> StatusDocument {
    let snapshot = plane.snapshot();
    StatusDocument {
        version: snapshot.version,
        strategy: snapshot.strategy,
        strategies: StrategyKind::all().iter().map(|kind| kind.name()).collect(),
        uptime_s: uptime_seconds(plane),
        workers: plane
            .workers
            .iter()
            .enumerate()
            .map(|(core, stats)| WorkerView {
                core,
                applied_version: stats.applied_version.get(),
                open_connections: stats.open_connections.get(),
                requests: stats.requests.get(),
                parked_total: stats.parked_total.get(),
            })
            .collect(),
        backends: snapshot
            .backends
            .iter()
            .map(|(backend, state)| BackendView::new(plane, backend, *state))
            .collect(),
    }
}

/// Seconds since start, to the millisecond.
fn uptime_seconds(plane: &ControlPlane) -> f64 {
    plane.started.elapsed().as_millis() as f64 / 1000.0
}

/// The Content-Type of `GET /metrics`.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const BACKEND_STATES: [(BackendState, &str); 3] = [
    (BackendState::Up, "up"),
    (BackendState::Down, "down"),
    (BackendState::Draining, "draining"),
];

/// `GET /metrics`: Prometheus text exposition format 0.0.4. Backends are
/// labelled by `id` and `url`; a removed backend's series end with it.
pub fn metrics(plane: &ControlPlane) -> String {
    let snapshot = plane.snapshot();
    let mut out = String::with_capacity(4096);
    write_pool_metrics(&mut out, plane, &snapshot);
    write_worker_metrics(&mut out, plane);
    write_backend_metrics(&mut out, plane, &snapshot);
    super::traffic::write_metrics(&mut out, plane, &snapshot);
    out
}

fn write_pool_metrics(out: &mut String, plane: &ControlPlane, snapshot: &PoolSnapshot) {
    family(
        out,
        "percore_pool_version",
        "gauge",
        "Version of the backend pool and strategy; increases on every change.",
    );
    sample(out, "percore_pool_version", &[], snapshot.version);
    family(
        out,
        "percore_uptime_seconds",
        "gauge",
        "Seconds since the proxy started.",
    );
    sample(out, "percore_uptime_seconds", &[], uptime_seconds(plane));
    family(
        out,
        "percore_strategy",
        "gauge",
        "Load-balancing strategy: 1 for the one in use.",
    );
    for &kind in StrategyKind::all() {
        sample(
            out,
            "percore_strategy",
            &[("strategy", &kind.name())],
            u8::from(kind == snapshot.strategy),
        );
    }
}

fn write_worker_metrics(out: &mut String, plane: &ControlPlane) {
    type WorkerCounter = fn(&WorkerStats) -> u64;
    let worker_families: [(&str, &str, &str, WorkerCounter); 5] = [
        (
            "percore_worker_applied_version",
            "gauge",
            "Pool version this worker core routes by.",
            |w| w.applied_version.get(),
        ),
        (
            "percore_worker_open_connections",
            "gauge",
            "Client connections open on this worker core.",
            |w| w.open_connections.get(),
        ),
        (
            "percore_worker_parked_connections_total",
            "counter",
            "Client connections parked (waiting for a request in a small task) on this worker core since it started.",
            |w| w.parked_total.get(),
        ),
        (
            "percore_worker_requests_total",
            "counter",
            "Requests this worker core has answered, forwarded or refused.",
            |w| w.requests.get(),
        ),
        (
            "percore_worker_refused_connections_total",
            "counter",
            "Client connections reset on arrival because this worker core held max_connections.",
            |w| w.refused_connections.get(),
        ),
    ];
    for (name, kind, help, read) in worker_families {
        family(out, name, kind, help);
        for (core, stats) in plane.workers.iter().enumerate() {
            sample(out, name, &[("core", &core.to_string())], read(stats));
        }
    }
}

fn write_backend_metrics(out: &mut String, plane: &ControlPlane, snapshot: &PoolSnapshot) {
    let backends: Vec<(String, BackendView)> = snapshot
        .backends
        .iter()
        .map(|(backend, state)| {
            (
                backend.id.to_string(),
                BackendView::new(plane, backend, *state),
            )
        })
        .collect();
    type BackendValue = fn(&BackendView) -> u64;
    let backend_families: [(&str, &str, &str, BackendValue); 4] = [
        (
            "percore_backend_requests_total",
            "counter",
            "Requests sent to this backend.",
            |b| b.requests,
        ),
        (
            "percore_backend_failures_total",
            "counter",
            "Connect failures and broken exchanges with this backend.",
            |b| b.failures,
        ),
        (
            "percore_backend_in_flight_requests",
            "gauge",
            "Requests in flight to this backend, over all cores.",
            |b| b.in_flight,
        ),
        (
            "percore_backend_weight",
            "gauge",
            "Relative capacity of this backend (1 to 1000).",
            |b| u64::from(b.weight),
        ),
    ];
    for (name, kind, help, read) in backend_families {
        family(out, name, kind, help);
        for (id, view) in &backends {
            sample(out, name, &[("id", id), ("url", &view.url)], read(view));
        }
    }
    family(
        out,
        "percore_backend_state",
        "gauge",
        "Backend state: 1 for the state it is in (up, down, draining).",
    );
    for (id, view) in &backends {
        for (state, name) in BACKEND_STATES {
            sample(
                out,
                "percore_backend_state",
                &[("id", id), ("url", &view.url), ("state", name)],
                u8::from(view.state == state),
            );
        }
    }
    family(
        out,
        "percore_backend_health_checks_total",
        "counter",
        "Active health checks of this backend, by result.",
    );
    for (id, view) in &backends {
        let totals = plane.health.probe_totals(view.id);
        for (result, count) in ["pass", "fail"].into_iter().zip(totals) {
            sample(
                out,
                "percore_backend_health_checks_total",
                &[("id", id), ("url", &view.url), ("result", result)],
                count,
            );
        }
    }
}

pub(super) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

pub(super) fn sample(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    value: impl std::fmt::Display,
) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (index, (label, text)) in labels.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_label(out, text);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Label values escape backslash, double quote and line feed (exposition
/// format 0.0.4).
fn escape_label(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane_with_two_backends() -> std::sync::Arc<ControlPlane> {
        let (plane, _receivers) = ControlPlane::new(2, StrategyKind::RoundRobin);
        let (first, _) = plane.add_backend("http://127.0.0.1:9001", 1).unwrap();
        plane.add_backend("http://127.0.0.1:9002", 5).unwrap();
        first.counters.core(0).requests.add(3);
        first.counters.core(1).requests.add(4);
        first.counters.core(1).failures.add(1);
        first.counters.core(1).in_flight.add(2);
        plane.workers.core(1).requests.add(9);
        plane.set_state(first.id, BackendState::Down);
        plane
    }

    #[test]
    fn status_document_sums_cores() {
        let plane = plane_with_two_backends();
        let document = serde_json::to_value(status(&plane)).unwrap();
        assert_eq!(document["version"], 3);
        assert_eq!(document["strategy"], "round_robin");
        assert_eq!(
            document["strategies"],
            serde_json::json!(["round_robin", "least_connections"])
        );
        assert_eq!(
            document["workers"][1],
            serde_json::json!({"core": 1, "applied_version": 0, "active_connections": 0, "requests": 9, "parked_total": 0})
        );
        let first = &document["backends"][0];
        assert_eq!(first["url"], "http://127.0.0.1:9001");
        assert_eq!(first["state"], "down");
        assert_eq!(
            (first["requests"].as_u64(), first["failures"].as_u64()),
            (Some(7), Some(1))
        );
        assert_eq!(first["active_per_core"], serde_json::json!([0, 2]));
        assert_eq!(first["active_connections"], 2);
        assert!(first["last_check"].is_null() && first["transitions"] == serde_json::json!([]));
        assert!(first.get("drained").is_none());
        assert_eq!(document["backends"][1]["weight"], 5);
    }

    #[test]
    fn metrics_are_exposition_lines() {
        let plane = plane_with_two_backends();
        let text = metrics(&plane);
        for line in text.lines() {
            if line.starts_with('#') {
                assert!(
                    line.starts_with("# HELP percore_") || line.starts_with("# TYPE percore_"),
                    "{line}"
                );
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(series.starts_with("percore_"), "{line}");
        }
        assert!(text.contains("percore_pool_version 3\n"), "{text}");
        assert!(
            text.contains(
                "percore_backend_requests_total{id=\"1\",url=\"http://127.0.0.1:9001\"} 7\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "percore_backend_state{id=\"1\",url=\"http://127.0.0.1:9001\",state=\"down\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("percore_worker_requests_total{core=\"1\"} 9\n"),
            "{text}"
        );
        assert!(
            text.contains("percore_strategy{strategy=\"round_robin\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "m", &[("l", "a\"b\\c\nd")], 1);
        assert_eq!(out, "m{l=\"a\\\"b\\\\c\\nd\"} 1\n");
    }
}
