//! The command line (clap derive): `percore` serves the proxy topology,
//! `percore backend` runs one mock backend, `percore ctl` drives a running
//! proxy over its admin API (`ctl`). Flags override the config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::balance::StrategyKind;
use crate::config::{AdminToken, Config, ConfigError, DriverChoice};

#[derive(Debug, Parser)]
#[command(
    name = "percore",
    version,
    about = "Thread-per-core HTTP/1.1 reverse proxy and load balancer"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one mock backend: GET /health answers 200, other requests are echoed.
    Backend(BackendArgs),
    /// Operate a running percore over its admin API.
    Ctl(CtlArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// JSON config file with the same settings; flags override it.
    #[arg(long, value_name = "FILE.json")]
    pub config: Option<PathBuf>,
    /// Proxy listen address [default: 0.0.0.0:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Admin API listen address [default: 127.0.0.1:8081].
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Backend URL, http://host:port (repeatable). None: start three mock backends.
    #[arg(long = "backend", value_name = "URL")]
    pub backends: Vec<String>,
    /// Share the listen address with a percore already serving it, which a
    /// SIGTERM then drains: a zero-downtime handover (see the README).
    #[arg(long)]
    pub handover: bool,
    /// Load-balancing strategy [default: round_robin].
    #[arg(long, value_enum)]
    pub strategy: Option<StrategyKind>,
    /// Worker threads, one pinned per core [default: cores in the affinity mask].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// I/O driver [default: auto, io_uring with epoll fallback].
    #[arg(long, value_enum)]
    pub driver: Option<DriverChoice>,
    /// Backend connect timeout (e.g. 5s, 500ms, 1m 30s) [default: 5s].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub connect_timeout: Option<Duration>,
    /// Upstream response-head timeout, also between body reads [default: 60s].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub response_timeout: Option<Duration>,
    /// Deadline for a client to send a whole request head [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub request_head_timeout: Option<Duration>,
    /// Idle client keep-alive connection, between requests [default: 60s].
    #[arg(long, alias = "idle-timeout", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub client_idle_timeout: Option<Duration>,
    /// A client that sends no request body bytes this long gets a 408 [default: 60s].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub client_body_timeout: Option<Duration>,
    /// A client that accepts no response bytes this long is reset [default: 60s].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub send_timeout: Option<Duration>,
    /// Client connections one worker holds at most; more are reset at once [default: 65536].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// How long SIGTERM/SIGINT let requests in flight finish [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub shutdown_grace: Option<Duration>,
    /// A WebSocket tunnel silent both ways this long is closed [default: 1h].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub tunnel_idle_timeout: Option<Duration>,
    /// Idle pooled upstream connection timeout [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub upstream_idle_timeout: Option<Duration>,
    /// Require `Authorization: Bearer TOKEN` on every admin request. The
    /// environment variable keeps it out of the process list.
    #[arg(
        long,
        env = "PERCORE_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<String>,
    /// Turn the active health checks off (passive detection stays).
    #[arg(long)]
    pub no_health_checks: bool,
    /// Path of the active health check's GET [default: /health].
    #[arg(long, value_name = "PATH")]
    pub health_path: Option<String>,
    /// Time between health checks of a backend [default: 2s].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub health_interval: Option<Duration>,
    /// A health check without a 2xx within this fails [default: 1s].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub health_timeout: Option<Duration>,
    /// Consecutive passing checks that bring a backend up [default: 2].
    #[arg(long, value_name = "N")]
    pub health_rise: Option<u32>,
    /// Consecutive failed checks that take a backend down [default: 3].
    #[arg(long, value_name = "N")]
    pub health_fall: Option<u32>,
    /// Failed requests in a row that eject a backend at once; 0: off [default: 5].
    #[arg(long, value_name = "N")]
    pub passive_failures: Option<u32>,
    /// Ramp a backend that comes up to its full share over this; 0: off [default: 0].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub slow_start: Option<Duration>,
}

impl ServeArgs {
    /// The config file (or defaults) with these flags applied, validated.
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(admin) = self.admin {
            config.admin = admin;
        }
        config.handover |= self.handover;
        if !self.backends.is_empty() {
            config.backends = self.backends.iter().cloned().map(Into::into).collect();
        }
        if let Some(strategy) = self.strategy {
            config.strategy = strategy;
        }
        if self.workers.is_some() {
            config.workers = self.workers;
        }
        if let Some(driver) = self.driver {
            config.driver = driver;
        }
        if let Some(max_connections) = self.max_connections {
            config.max_connections = max_connections;
        }
        let timeouts = [
            (self.connect_timeout, &mut config.connect_timeout),
            (self.response_timeout, &mut config.response_timeout),
            (self.request_head_timeout, &mut config.request_head_timeout),
            (self.client_idle_timeout, &mut config.client_idle_timeout),
            (self.client_body_timeout, &mut config.client_body_timeout),
            (self.send_timeout, &mut config.send_timeout),
            (self.tunnel_idle_timeout, &mut config.tunnel_idle_timeout),
            (self.shutdown_grace, &mut config.shutdown_grace),
            (
                self.upstream_idle_timeout,
                &mut config.upstream_idle_timeout,
            ),
            (self.health_interval, &mut config.health_interval),
            (self.health_timeout, &mut config.health_timeout),
            (self.slow_start, &mut config.slow_start),
        ];
        for (flag, setting) in timeouts {
            if let Some(value) = flag {
                *setting = value;
            }
        }
        if let Some(token) = &self.admin_token {
            config.admin_token = Some(AdminToken::new(token)?);
        }
        let counts = [
            (self.health_rise, &mut config.health_rise),
            (self.health_fall, &mut config.health_fall),
            (self.passive_failures, &mut config.passive_failures),
        ];
        for (flag, setting) in counts {
            if let Some(value) = flag {
                *setting = value;
            }
        }
        if self.no_health_checks {
            config.health_checks = false;
        }
        if let Some(path) = &self.health_path {
            config.health_path = path.clone();
        }
        config.validate()?;
        Ok(config)
    }
}

#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    #[command(subcommand)]
    pub command: CtlCommand,
    /// Admin API address (host:port).
    #[arg(
        long = "admin",
        id = "ctl_admin",
        global = true,
        default_value = "127.0.0.1:8081",
        value_name = "ADDR"
    )]
    pub admin: String,
    /// Admin token, when the proxy requires one.
    #[arg(
        long,
        global = true,
        env = "PERCORE_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Print the admin API's JSON instead of text, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Backends as a table: state, weight, in flight, requests, failures,
    /// p50 and p99 over the last 10 s, last health check.
    Status,
    /// Add a backend.
    Add {
        /// http://host:port
        url: String,
        /// Relative capacity, 1 to 1000 [default: 1].
        #[arg(long)]
        weight: Option<u32>,
    },
    /// Remove a backend by url or id; its requests in flight finish first.
    Remove {
        /// http://host:port, or the backend's numeric id
        backend: String,
    },
    /// Switch the load-balancing strategy.
    Strategy {
        /// round_robin, least_connections, ...
        name: String,
    },
    /// Reread the proxy's configuration file, as SIGHUP does.
    Reload,
    /// Latency percentiles and distribution, overall and per backend.
    Histograms {
        /// 1s, 10s, 60s or all.
        #[arg(long, default_value = "60s")]
        window: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct BackendArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8082")]
    pub listen: SocketAddr,
    /// Name reported in responses [default: backend-PORT].
    #[arg(long)]
    pub name: Option<String>,
    /// Delay before answering each request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Status code of answers to requests other than /health.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(200..=599))]
    pub status: u16,
    /// I/O driver.
    #[arg(long, value_enum, default_value_t = DriverChoice::Auto)]
    pub driver: DriverChoice,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_defaults() {
        let cli = Cli::try_parse_from([
            "percore",
            "--backend",
            "http://127.0.0.1:1",
            "--backend",
            "http://127.0.0.1:2",
            "--workers",
            "2",
            "--strategy",
            "least_connections",
            "--connect-timeout",
            "200ms",
            "--health-interval",
            "250ms",
            "--health-fall",
            "4",
            "--slow-start",
            "10s",
        ])
        .unwrap();
        let config = cli.serve.to_config().unwrap();
        assert_eq!(config.backends.len(), 2);
        assert_eq!(config.workers, Some(2));
        assert_eq!(config.strategy, StrategyKind::LeastConnections);
        assert_eq!(config.connect_timeout, Duration::from_millis(200));
        assert_eq!(config.health_interval, Duration::from_millis(250));
        assert_eq!((config.health_fall, config.health_rise), (4, 2));
        assert_eq!(config.slow_start, Duration::from_secs(10));
    }

    #[test]
    fn timeout_flags_take_the_file_syntax() {
        let cli = Cli::try_parse_from([
            "percore",
            "--idle-timeout",
            "2s",
            "--client-body-timeout",
            "1m 30s",
            "--send-timeout",
            "750ms",
        ])
        .unwrap();
        let config = cli.serve.to_config().unwrap();
        assert_eq!(config.client_idle_timeout, Duration::from_secs(2));
        assert_eq!(config.client_body_timeout, Duration::from_secs(90));
        assert_eq!(config.send_timeout, Duration::from_millis(750));
        for bad in ["5", "fast", "0s"] {
            let parsed = Cli::try_parse_from(["percore", "--connect-timeout", bad]);
            assert!(
                parsed.is_err() || parsed.unwrap().serve.to_config().is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(Cli::try_parse_from(["percore", "--strategy", "random"]).is_err());
        assert!(Cli::try_parse_from(["percore", "--listen", "nowhere"]).is_err());
        let cli = Cli::try_parse_from(["percore", "--workers", "0"]).unwrap();
        assert!(cli.serve.to_config().is_err());
    }

    #[test]
    fn backend_subcommand() {
        let cli = Cli::try_parse_from([
            "percore",
            "backend",
            "--listen",
            "127.0.0.1:9",
            "--delay-ms",
            "5",
            "--status",
            "503",
        ])
        .unwrap();
        let Some(Command::Backend(args)) = cli.command else {
            panic!("not a backend command")
        };
        assert_eq!((args.delay_ms, args.status), (5, 503));
    }

    #[test]
    fn admin_token_flag() {
        let cli = Cli::try_parse_from(["percore", "--admin-token", "abc123"]).unwrap();
        let config = cli.serve.to_config().unwrap();
        assert!(config.admin_token.unwrap().matches(b"abc123"));
        let cli = Cli::try_parse_from(["percore", "--admin-token", "a b"]).unwrap();
        assert!(cli.serve.to_config().is_err());
    }

    #[test]
    fn ctl_subcommands() {
        let cli = Cli::try_parse_from([
            "percore",
            "ctl",
            "add",
            "http://127.0.0.1:9",
            "--weight",
            "3",
            "--admin",
            "127.0.0.1:1",
            "--json",
        ])
        .unwrap();
        let Some(Command::Ctl(args)) = cli.command else {
            panic!("not a ctl command")
        };
        assert_eq!(args.admin, "127.0.0.1:1");
        assert!(args.json);
        assert!(matches!(
            args.command,
            CtlCommand::Add {
                weight: Some(3),
                ..
            }
        ));
        assert!(Cli::try_parse_from(["percore", "ctl", "frobnicate"]).is_err());
        assert!(Cli::try_parse_from(["percore", "ctl", "remove"]).is_err());
    }
}
