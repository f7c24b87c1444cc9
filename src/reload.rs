//! Rereading the configuration while running (SIGHUP, `POST /reload`,
//! `percore ctl reload`). What changed in the backends (added; removed, which
//! drains them: requests in flight keep their connection; reweighted), the
//! strategy, the data path's timeouts and limits, and the health settings is
//! applied through the same versioned snapshots as the admin API's changes.
//! What cannot change in a running process is named in one log line and left
//! as it is. A file that does not parse or validate changes nothing.

use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use crate::balance::StrategyKind;
use crate::config::{Config, ConfigError, ProxySettings};
use crate::health::HealthSettings;
use crate::pool::{BackendId, ControlPlane, PoolError, parse_backend_url};

/// Where a reload reads the configuration from: the `--config` file with
/// the command line's flags applied again, validated.
pub type ConfigSource = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}; the running configuration stays")]
    Config(#[from] ConfigError),
    #[error("backend {url}: {source}; the running configuration stays")]
    Backend { url: String, source: PoolError },
}

/// What a reload changed, as logged and as `POST /reload` answers.
#[derive(Debug, Default, Serialize)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub reweighted: Vec<String>,
    pub strategy: Option<StrategyKind>,
    /// Data-path and health settings that changed.
    pub settings: Vec<&'static str>,
    /// Settings that differ in the file but cannot change live.
    pub not_live: Vec<&'static str>,
    /// The pool version every change is in.
    pub version: u64,
}

pub struct Reloader {
    source: ConfigSource,
    /// The configuration in force; reloads are serialised by its lock.
    running: Mutex<Config>,
}

impl Reloader {
    pub fn new(source: ConfigSource, running: Config) -> Arc<Reloader> {
        Arc::new(Reloader {
            source,
            running: Mutex::new(running),
        })
    }

    /// Rereads and applies; logs the outcome either way.
    pub fn reload(&self, plane: &ControlPlane) -> Result<ReloadReport, ReloadError> {
        let result = self.apply(plane);
        match &result {
            Ok(report) => {
                tracing::info!(added = ?report.added, removed = ?report.removed, reweighted = ?report.reweighted, strategy = ?report.strategy, settings = ?report.settings, version = report.version, "configuration reloaded");
                if !report.not_live.is_empty() {
                    tracing::warn!(settings = ?report.not_live, "reload: these cannot change while running and were left as they are (restart, or hand over, to change them)");
                }
            }
            Err(error) => tracing::error!(%error, "reload rejected"),
        }
        result
    }

    fn apply(&self, plane: &ControlPlane) -> Result<ReloadReport, ReloadError> {
        let new = (self.source)()?;
        let mut running = self.running.lock();
        let mut report = ReloadReport {
            not_live: not_live(&running, &new),
            ..ReloadReport::default()
        };
        // No backend named means the seed topology's mock backends: which
        // ones run cannot change live (`not_live`), so the pool stays.
        if !running.backends.is_empty() && !new.backends.is_empty() {
            apply_backends(plane, &new, &mut report)?;
        }
        if new.strategy != plane.snapshot().strategy {
            plane.set_strategy(new.strategy);
            report.strategy = Some(new.strategy);
        }
        let settings = new.proxy_settings();
        report.settings = changed_proxy_settings(&plane.proxy_settings(), &settings);
        let mut health = new.health_settings();
        // Whether a prober runs is fixed at start (`not_live`).
        health.enabled = plane.health.settings().enabled;
        let health_changed = changed_health_settings(&plane.health.settings(), &health);
        if !health_changed.is_empty() {
            plane.health.set_settings(health);
            report.settings.extend(health_changed);
        }
        // One more snapshot carries the settings (and the health link) to
        // every core, after the pool changes.
        report.version = plane.set_proxy_settings(settings);
        *running = new;
        Ok(report)
    }
}

/// Adds, removes and reweights so the pool matches `new.backends`; an add
/// the pool refuses undoes the adds before it.
fn apply_backends(
    plane: &ControlPlane,
    new: &Config,
    report: &mut ReloadReport,
) -> Result<(), ReloadError> {
    let current = plane.snapshot().backends;
    let mut wanted = Vec::new();
    for entry in &new.backends {
        // Validated already: the url parses.
        let (url, _, _) =
            parse_backend_url(entry.url()).map_err(|error| ReloadError::Config(error.into()))?;
        wanted.push((url, entry.weight()));
    }
    let mut added: Vec<BackendId> = Vec::new();
    for (url, weight) in &wanted {
        match current.iter().find(|(backend, _)| &backend.url == url) {
            Some((backend, _)) if backend.weight() != *weight => {
                plane.set_weight(backend.id, *weight);
                report.reweighted.push(url.clone());
            }
            Some(_) => {}
            None => match plane.add_backend(url, *weight) {
                Ok((backend, _)) => {
                    added.push(backend.id);
                    report.added.push(url.clone());
                }
                Err(source) => {
                    for id in added {
                        let _ = plane.remove_backend(id);
                    }
                    return Err(ReloadError::Backend {
                        url: url.clone(),
                        source,
                    });
                }
            },
        }
    }
    for (backend, _) in &current {
        if !wanted.iter().any(|(url, _)| url == &backend.url) {
            let _ = plane.remove_backend(backend.id);
            report.removed.push(backend.url.clone());
        }
    }
    Ok(())
}

/// The settings a running process keeps: its sockets, threads and driver.
fn not_live(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut names = Vec::new();
    let mut differs = |name, changed: bool| {
        if changed {
            names.push(name);
        }
    };
    differs("listen", running.listen != new.listen);
    differs("admin", running.admin != new.admin);
    differs("workers", running.workers != new.workers);
    differs("driver", running.driver != new.driver);
    differs("mock_backends", running.mock_backends != new.mock_backends);
    differs(
        "backends (the mock topology)",
        running.backends.is_empty() != new.backends.is_empty(),
    );
    differs("health_checks", running.health_checks != new.health_checks);
    differs("admin_token", running.admin_token != new.admin_token);
    names
}

fn changed_proxy_settings(old: &ProxySettings, new: &ProxySettings) -> Vec<&'static str> {
    [
        (
            "connect_timeout",
            old.connect_timeout != new.connect_timeout,
        ),
        (
            "response_timeout",
            old.response_timeout != new.response_timeout,
        ),
        (
            "request_head_timeout",
            old.request_head_timeout != new.request_head_timeout,
        ),
        (
            "client_idle_timeout",
            old.client_idle_timeout != new.client_idle_timeout,
        ),
        (
            "client_body_timeout",
            old.client_body_timeout != new.client_body_timeout,
        ),
        ("send_timeout", old.send_timeout != new.send_timeout),
        (
            "tunnel_idle_timeout",
            old.tunnel_idle_timeout != new.tunnel_idle_timeout,
        ),
        (
            "upstream_idle_timeout",
            old.upstream_idle_timeout != new.upstream_idle_timeout,
        ),
        (
            "max_idle_per_backend",
            old.max_idle_per_backend != new.max_idle_per_backend,
        ),
        (
            "max_connections",
            old.max_connections != new.max_connections,
        ),
        ("shutdown_grace", old.shutdown_grace != new.shutdown_grace),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

fn changed_health_settings(old: &HealthSettings, new: &HealthSettings) -> Vec<&'static str> {
    [
        ("health_path", old.path != new.path),
        ("health_interval", old.interval != new.interval),
        ("health_timeout", old.timeout != new.timeout),
        ("health_rise", old.thresholds.rise != new.thresholds.rise),
        ("health_fall", old.thresholds.fall != new.thresholds.fall),
        (
            "passive_failures",
            old.passive_failures != new.passive_failures,
        ),
        ("slow_start", old.slow_start != new.slow_start),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}
