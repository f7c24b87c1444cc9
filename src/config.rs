//! Settings: the JSON config file, CLI overrides and their validation, and
//! the data-path settings (`ProxySettings`) they produce. Every mistake
//! becomes one `ConfigError` naming the setting, never a panic. Durations use
//! one syntax everywhere, humantime's (`500ms`, `5s`, `2m`, `1h 30m`), in
//! flags and in the file alike; a bare number is refused, since it would not
//! say its unit.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::balance::StrategyKind;
use crate::health::{HealthSettings, Thresholds};
use crate::pool::{BackendUrlError, parse_backend_url};

/// Data-path settings, the same on every core.
#[derive(Debug, Clone, Copy)]
pub struct ProxySettings {
    /// Opening a backend connection; on expiry the next backend is tried.
    pub connect_timeout: Duration,
    /// Waiting for the response head, and between reads of a response body (504).
    pub response_timeout: Duration,
    /// From the first byte of a request head to its end (408).
    pub request_head_timeout: Duration,
    /// A client keep-alive connection waiting for its next request.
    pub client_idle_timeout: Duration,
    /// A client that sends no request body bytes for this long gets a 408.
    pub client_body_timeout: Duration,
    /// A client that accepts no response bytes for this long is reset
    /// (as nginx's `send_timeout`).
    pub send_timeout: Duration,
    /// A WebSocket tunnel with no bytes either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// An idle pooled upstream connection is closed after this.
    pub upstream_idle_timeout: Duration,
    /// Idle upstream connections kept per backend per core.
    pub max_idle_per_backend: usize,
    /// Size of each pooled I/O buffer, and so the largest request head.
    pub buffer_size: usize,
    /// Client connections one worker holds at most; past it new ones are
    /// reset at once while the open ones are served.
    pub max_connections: usize,
    /// How long a graceful shutdown lets requests in flight finish.
    pub shutdown_grace: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            request_head_timeout: Duration::from_secs(30),
            client_idle_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            tunnel_idle_timeout: Duration::from_secs(3600),
            upstream_idle_timeout: Duration::from_secs(30),
            max_idle_per_backend: 1024,
            buffer_size: 16 * 1024,
            max_connections: 65_536,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// The longest timeout accepted: a deadline must stay representable as an
/// `Instant`, and a year is already "never" for a proxy.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 86_400);

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
    /// Backends: `"http://host:port"`, or `{"url": ..., "weight": N}`.
    /// Empty: start the three mock backends.
    pub backends: Vec<BackendEntry>,
    pub strategy: StrategyKind,
    /// Worker threads; `None`: one per core in the process's affinity mask.
    pub workers: Option<usize>,
    pub driver: DriverChoice,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_head_timeout: Duration,
    /// `idle_timeout` is its former name, still accepted.
    #[serde(with = "humantime_serde", alias = "idle_timeout")]
    pub client_idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub client_body_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub tunnel_idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub upstream_idle_timeout: Duration,
    pub max_idle_per_backend: usize,
    /// Client connections per worker; past it new ones are reset at once.
    pub max_connections: usize,
    /// How long SIGTERM/SIGINT let requests in flight finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Active health checks on (the prober runs); passive detection is
    /// governed by `passive_failures` alone.
    pub health_checks: bool,
    /// Active health checks: `GET` of this path on every backend.
    pub health_path: String,
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub health_timeout: Duration,
    /// Consecutive passing checks that bring a backend up.
    pub health_rise: u32,
    /// Consecutive failed checks that take a backend down.
    pub health_fall: u32,
    /// Failed requests in a row (on one core) that eject a backend; 0: off.
    pub passive_failures: u32,
    /// A backend that comes up ramps to its full share over this; 0: off.
    #[serde(with = "humantime_serde")]
    pub slow_start: Duration,
    /// Where the seed topology's mock backends listen when no backend is configured.
    pub mock_backends: Vec<SocketAddr>,
    /// Share the proxy's listen address with a percore already serving it
    /// (a zero-downtime handover); otherwise an address in use is an error.
    pub handover: bool,
    /// When set, every admin request must carry `Authorization: Bearer <token>`.
    pub admin_token: Option<AdminToken>,
}

/// A configured backend: its URL, or its URL and weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BackendEntry {
    Url(String),
    Weighted(WeightedBackend),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedBackend {
    pub url: String,
    pub weight: u32,
}

impl BackendEntry {
    pub fn url(&self) -> &str {
        match self {
            BackendEntry::Url(url) | BackendEntry::Weighted(WeightedBackend { url, .. }) => url,
        }
    }

    /// Its share of the load; 1 unless given.
    pub fn weight(&self) -> u32 {
        match self {
            BackendEntry::Url(_) => 1,
            BackendEntry::Weighted(backend) => backend.weight,
        }
    }
}

impl From<String> for BackendEntry {
    fn from(url: String) -> Self {
        BackendEntry::Url(url)
    }
}

impl From<&str> for BackendEntry {
    fn from(url: &str) -> Self {
        BackendEntry::Url(url.to_string())
    }
}

/// The admin API's bearer token. Its `Debug` is redacted, so the token never
/// reaches a log line or a printed `Config`; it is compared in constant time.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AdminToken(String);

impl AdminToken {
    /// A token is 1 to 4096 visible ASCII characters (no spaces), so that
    /// it fits an `Authorization` header as written.
    pub fn new(token: &str) -> Result<AdminToken, ConfigError> {
        let token = AdminToken(token.to_string());
        token.validate()?;
        Ok(token)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let text = &self.0;
        if text.is_empty() || text.len() > 4096 || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::AdminToken);
        }
        Ok(())
    }

    /// Whether `presented` is this token. Constant time in the bytes
    /// compared, so that response times do not reveal a matching prefix.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0.as_bytes().ct_eq(presented))
    }

    /// The token itself, to send (`percore ctl`).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
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
            client_idle_timeout: proxy.client_idle_timeout,
            client_body_timeout: proxy.client_body_timeout,
            send_timeout: proxy.send_timeout,
            tunnel_idle_timeout: proxy.tunnel_idle_timeout,
            upstream_idle_timeout: proxy.upstream_idle_timeout,
            max_idle_per_backend: proxy.max_idle_per_backend,
            max_connections: proxy.max_connections,
            shutdown_grace: proxy.shutdown_grace,
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
            handover: false,
            admin_token: None,
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
    #[error("backend {0}: weight {1} is not between 1 and 1000")]
    Weight(String, u32),
    #[error("max_connections must be at least 1")]
    ZeroMaxConnections,
    #[error("workers must be at least 1")]
    ZeroWorkers,
    #[error("{0} must be greater than zero")]
    ZeroTimeout(&'static str),
    #[error("{0} must be at most a year")]
    TimeoutTooLong(&'static str),
    #[error("admin_token must be 1 to 4096 visible ASCII characters, without spaces")]
    AdminToken,
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
        if self.max_connections == 0 {
            return Err(ConfigError::ZeroMaxConnections);
        }
        let mut seen = Vec::new();
        for backend in &self.backends {
            let (canonical, _, _) = parse_backend_url(backend.url())?;
            if seen.contains(&canonical) {
                return Err(ConfigError::DuplicateBackend(canonical));
            }
            if !(1..=1000).contains(&backend.weight()) {
                return Err(ConfigError::Weight(canonical, backend.weight()));
            }
            seen.push(canonical);
        }
        for (name, value) in [
            ("connect_timeout", self.connect_timeout),
            ("response_timeout", self.response_timeout),
            ("request_head_timeout", self.request_head_timeout),
            ("client_idle_timeout", self.client_idle_timeout),
            ("client_body_timeout", self.client_body_timeout),
            ("send_timeout", self.send_timeout),
            ("tunnel_idle_timeout", self.tunnel_idle_timeout),
            ("upstream_idle_timeout", self.upstream_idle_timeout),
            ("shutdown_grace", self.shutdown_grace),
            ("health_interval", self.health_interval),
            ("health_timeout", self.health_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroTimeout(name));
            }
            if value > MAX_TIMEOUT {
                return Err(ConfigError::TimeoutTooLong(name));
            }
        }
        if let Some(token) = &self.admin_token {
            token.validate()?;
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
            client_idle_timeout: self.client_idle_timeout,
            client_body_timeout: self.client_body_timeout,
            send_timeout: self.send_timeout,
            tunnel_idle_timeout: self.tunnel_idle_timeout,
            upstream_idle_timeout: self.upstream_idle_timeout,
            max_idle_per_backend: self.max_idle_per_backend,
            max_connections: self.max_connections,
            shutdown_grace: self.shutdown_grace,
            ..ProxySettings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_json(text: &str) -> Result<Config, String> {
        serde_json::from_str::<Config>(text).map_err(|error| error.to_string())
    }

    #[test]
    fn durations_need_a_unit_in_the_file() {
        for (text, expected) in [
            ("250ms", Duration::from_millis(250)),
            ("5s", Duration::from_secs(5)),
            ("2m", Duration::from_secs(120)),
            ("1h 30m", Duration::from_secs(5400)),
        ] {
            let config = from_json(&format!(r#"{{"send_timeout": "{text}"}}"#)).unwrap();
            assert_eq!(config.send_timeout, expected, "{text}");
        }
        for bad in [r#""5""#, "5", r#""fast""#, r#""-1s""#] {
            let error = from_json(&format!(r#"{{"connect_timeout": {bad}}}"#)).unwrap_err();
            assert!(error.contains("line 1"), "{bad}: {error}");
        }
        let config = from_json(r#"{"connect_timeout": "2years"}"#).unwrap();
        assert!(matches!(
            config.validate(),
            Err(ConfigError::TimeoutTooLong("connect_timeout"))
        ));
    }

    #[test]
    fn idle_timeout_is_the_old_name_of_client_idle_timeout() {
        let config = from_json(r#"{"idle_timeout": "7s"}"#).unwrap();
        assert_eq!(config.client_idle_timeout, Duration::from_secs(7));
        assert_eq!(config.send_timeout, Duration::from_secs(60));
        assert_eq!(config.client_body_timeout, Duration::from_secs(60));
        let settings = config.proxy_settings();
        assert_eq!(settings.client_idle_timeout, Duration::from_secs(7));
        let error =
            from_json(r#"{"idle_timeout": "7s", "client_idle_timeout": "8s"}"#).unwrap_err();
        assert!(error.contains("duplicate"), "{error}");
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

    #[test]
    fn admin_token_is_checked_and_never_printed() {
        let config: Config = serde_json::from_str(r#"{"admin_token": "s3cret-Token"}"#).unwrap();
        config.validate().unwrap();
        let token = config.admin_token.as_ref().unwrap();
        assert!(token.matches(b"s3cret-Token"));
        assert!(!token.matches(b"s3cret-Toke"));
        assert!(!token.matches(b"s3cret-TokeN"));
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
        for bad in [r#"{"admin_token": ""}"#, r#"{"admin_token": "two words"}"#] {
            let config: Config = serde_json::from_str(bad).unwrap();
            assert!(
                matches!(config.validate(), Err(ConfigError::AdminToken)),
                "{bad}"
            );
        }
        assert!(AdminToken::new("t\u{e9}").is_err());
    }
}
