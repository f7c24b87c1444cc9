//! Settings: the JSON config file, CLI overrides and their validation. Every
//! mistake becomes one `ConfigError` naming the setting, never a panic.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::balance::StrategyKind;
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
    /// Where the seed topology's mock backends listen when no backend is configured.
    pub mock_backends: Vec<SocketAddr>,
    /// When set, every admin request must carry `Authorization: Bearer <token>`.
    pub admin_token: Option<AdminToken>,
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
            mock_backends: ["127.0.0.1:8082", "127.0.0.1:8083", "127.0.0.1:8084"]
                .map(|a| a.parse().expect("literal address"))
                .to_vec(),
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
    #[error("workers must be at least 1")]
    ZeroWorkers,
    #[error("{0} must be greater than zero")]
    ZeroTimeout(&'static str),
    #[error("admin_token must be 1 to 4096 visible ASCII characters, without spaces")]
    AdminToken,
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
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroTimeout(name));
            }
        }
        if let Some(token) = &self.admin_token {
            token.validate()?;
        }
        Ok(())
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
