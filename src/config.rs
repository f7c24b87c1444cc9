//! Settings: the JSON config file, CLI overrides and their validation. Every
//! mistake becomes one `ConfigError` naming the setting, never a panic.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::balance::StrategyKind;
use crate::health::{HealthSettings, Thresholds};
use crate::pool::{BackendUrlError, parse_backend_url};
use crate::proxy::ProxySettings;

/// Which monoio driver the workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DriverChoice {
    /// io_uring where the kernel allows it, else epoll.
    #[default]
    Auto,
    Uring,
    Epoll,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Proxy listener, one SO_REUSEPORT socket per worker.
    pub listen: SocketAddr,
    /// Admin API listener.
    pub admin: SocketAddr,
    /// Backend URLs (`http://host:port`). Empty: start the three mock backends.
    pub backends: Vec<String>,
    pub strategy: StrategyKind,
    /// Worker threads; `None`: one per core in the process's affinity mask.
    pub workers: Option<usize>,
    pub driver: DriverChoice,
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,
    #[serde(with = "duration_text")]
    pub response_timeout: Duration,
    #[serde(with = "duration_text")]
    pub request_head_timeout: Duration,
    #[serde(with = "duration_text")]
    pub idle_timeout: Duration,
    #[serde(with = "duration_text")]
    pub upstream_idle_timeout: Duration,
    pub max_idle_per_backend: usize,
    /// Active health checks on (the prober runs); passive detection is
    /// governed by `passive_failures` alone.
    pub health_checks: bool,
    /// Active health checks: `GET` of this path on every backend.
    pub health_path: String,
    #[serde(with = "duration_text")]
    pub health_interval: Duration,
    #[serde(with = "duration_text")]
    pub health_timeout: Duration,
    /// Consecutive passing checks that bring a backend up.
    pub health_rise: u32,
    /// Consecutive failed checks that take a backend down.
    pub health_fall: u32,
    /// Failed requests in a row (on one core) that eject a backend; 0: off.
    pub passive_failures: u32,
    /// A backend that comes up ramps to its full share over this; 0: off.
    #[serde(with = "duration_text")]
    pub slow_start: Duration,
    /// Where the seed topology's mock backends listen when no backend is configured.
    pub mock_backends: Vec<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        let proxy = ProxySettings::default();
        let health = HealthSettings::default();
        Config {
            listen: "0.0.0.0:8080".parse().expect("literal address"),
            admin: "127.0.0.1:8081".parse().expect("literal address"),
            backends: Vec::new(),
            strategy: StrategyKind::RoundRobin,
            workers: None,
            driver: DriverChoice::Auto,
            connect_timeout: proxy.connect_timeout,
            response_timeout: proxy.response_timeout,
            request_head_timeout: proxy.request_head_timeout,
            idle_timeout: proxy.idle_timeout,
            upstream_idle_timeout: proxy.upstream_idle_timeout,
            max_idle_per_backend: proxy.max_idle_per_backend,
            health_checks: health.enabled,
            health_path: health.path,
            health_interval: health.interval,
            health_timeout: health.timeout,
            health_rise: health.thresholds.rise,
            health_fall: health.thresholds.fall,
            passive_failures: health.passive_failures,
            slow_start: health.slow_start,
            mock_backends: ["127.0.0.1:8082", "127.0.0.1:8083", "127.0.0.1:8084"]
                .map(|a| a.parse().expect("literal address"))
                .to_vec(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error(transparent)]
    BackendUrl(#[from] BackendUrlError),
    #[error("duplicate backend {0}")]
    DuplicateBackend(String),
    #[error("workers must be at least 1")]
    ZeroWorkers,
    #[error("{0} must be greater than zero")]
    ZeroTimeout(&'static str),
    #[error("health_path {0:?} must start with /")]
    HealthPath(String),
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: display,
            source,
        })
    }

    /// Checks everything that can be checked before binding sockets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.workers == Some(0) {
            return Err(ConfigError::ZeroWorkers);
        }
        let mut seen = Vec::new();
        for url in &self.backends {
            let (canonical, _, _) = parse_backend_url(url)?;
            if seen.contains(&canonical) {
                return Err(ConfigError::DuplicateBackend(canonical));
            }
            seen.push(canonical);
        }
        for (name, value) in [
            ("connect_timeout", self.connect_timeout),
            ("response_timeout", self.response_timeout),
            ("request_head_timeout", self.request_head_timeout),
            ("idle_timeout", self.idle_timeout),
            ("upstream_idle_timeout", self.upstream_idle_timeout),
            ("health_interval", self.health_interval),
            ("health_timeout", self.health_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroTimeout(name));
            }
        }
        for (name, value) in [
            ("health_rise", self.health_rise),
            ("health_fall", self.health_fall),
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroTimeout(name));
            }
        }
        let path_ok = self.health_path.starts_with('/')
            && self.health_path.bytes().all(|b| b.is_ascii_graphic());
        if !path_ok {
            return Err(ConfigError::HealthPath(self.health_path.clone()));
        }
        Ok(())
    }

    pub fn health_settings(&self) -> HealthSettings {
        HealthSettings {
            path: self.health_path.clone(),
            interval: self.health_interval,
            timeout: self.health_timeout,
            thresholds: Thresholds {
                rise: self.health_rise,
                fall: self.health_fall,
            },
            passive_failures: self.passive_failures,
            slow_start: self.slow_start,
            enabled: self.health_checks,
        }
    }

    pub fn proxy_settings(&self) -> ProxySettings {
        ProxySettings {
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            request_head_timeout: self.request_head_timeout,
            idle_timeout: self.idle_timeout,
            upstream_idle_timeout: self.upstream_idle_timeout,
            max_idle_per_backend: self.max_idle_per_backend,
            ..ProxySettings::default()
        }
    }
}

/// Parses `250ms`, `5s`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?} (use e.g. 500ms, 5s, 2m)"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {text:?} (use ms, s or m)"
            ));
        }
    };
    if !seconds.is_finite() || seconds > 86_400.0 * 365.0 {
        return Err(format!("duration {text:?} out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

mod duration_text {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}ms", value.as_millis()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn json_file_settings() {
        let config: Config = serde_json::from_str(
            r#"{"listen": "127.0.0.1:9000", "backends": ["http://127.0.0.1:9001"], "strategy": "least_connections", "connect_timeout": "250ms"}"#,
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.strategy, StrategyKind::LeastConnections);
        assert_eq!(config.connect_timeout, Duration::from_millis(250));
        assert_eq!(config.admin, Config::default().admin);
        config.validate().unwrap();
        let config: Config = serde_json::from_str(
            r#"{"health_path": "/ready", "health_interval": "500ms", "health_timeout": "200ms", "health_rise": 1, "health_fall": 2, "passive_failures": 0, "slow_start": "30s"}"#,
        )
        .unwrap();
        config.validate().unwrap();
        let health = config.health_settings();
        assert_eq!(
            (health.path.as_str(), health.interval, health.timeout),
            (
                "/ready",
                Duration::from_millis(500),
                Duration::from_millis(200)
            )
        );
        assert_eq!(
            (
                health.thresholds.rise,
                health.thresholds.fall,
                health.passive_failures
            ),
            (1, 2, 0)
        );
        assert_eq!(health.slow_start, Duration::from_secs(30));
        for bad in [
            r#"{"health_fall": 0}"#,
            r#"{"health_interval": "0s"}"#,
            r#"{"health_path": "ready"}"#,
        ] {
            let config: Config = serde_json::from_str(bad).unwrap();
            assert!(config.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn invalid_settings_are_named() {
        let error = serde_json::from_str::<Config>(r#"{"strategy": "fastest"}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("fastest"), "{error}");
        let error = serde_json::from_str::<Config>(r#"{"listen_on": 1}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("listen_on"), "{error}");
        let config = Config {
            workers: Some(0),
            ..Config::default()
        };
        assert!(matches!(config.validate(), Err(ConfigError::ZeroWorkers)));
        let config = Config {
            backends: vec!["ftp://x".into()],
            ..Config::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("ftp://x")
        );
    }
}
