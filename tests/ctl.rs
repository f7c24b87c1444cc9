//! `percore ctl` as an operator runs it: the built binary against an
//! in-process proxy, for every subcommand in text and `--json`, plus the
//! admin token (401 without it, through raw requests and through ctl), and
//! an unreachable proxy. Exit status and output are what is checked.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::process::{Command, Output};

use common::*;
use percore::config::AdminToken;
use serde_json::Value;

const TOKEN: &str = "t0ken-for-tests_Only";

/// Runs `percore ctl ARGS --admin ADDR`, without the token variable of the
/// environment the tests run in.
fn ctl(admin: SocketAddr, args: &[&str]) -> Output {
    ctl_env(admin, args, None)
}

fn ctl_env(admin: SocketAddr, args: &[&str], token_env: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_percore"));
    command
        .arg("ctl")
        .args(args)
        .args(["--admin", &admin.to_string()])
        .env_remove("PERCORE_ADMIN_TOKEN")
        .env("RUST_LOG", "off");
    if let Some(token) = token_env {
        command.env("PERCORE_ADMIN_TOKEN", token);
    }
    command.output().expect("percore ctl runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Succeeded: exit 0, nothing on stderr; returns stdout.
fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}{}",
        output.status.code(),
        stdout(&output),
        stderr(&output)
    );
    assert_eq!(stderr(&output), "");
    stdout(&output)
}

/// Failed with exit 1 and one `percore ctl:` line on stderr; returns it.
fn failed(output: Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    assert_eq!(stdout(&output), "");
    let message = stderr(&output);
    assert!(
        message.starts_with("percore ctl: ") && message.lines().count() == 1,
        "{message}"
    );
    message
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn pool_urls(proxy: &Proxy) -> Vec<String> {
    let snapshot = proxy.server.control().snapshot();
    snapshot
        .backends
        .iter()
        .map(|(b, _)| b.url.clone())
        .collect()
}

both_drivers! {
    fn status_shows_every_backend_with_latency(driver) {
        let proxy = Proxy::start(driver, 2);
        let admin = proxy.server.admin_addr();
        for _ in 0..6 {
            assert_eq!(proxy.client().get("/delay/5").status, 200);
        }
        // Latency reaches the 10-second window within a second.
        let recorded = || json(&ok(ctl(admin, &["status", "--json"])))["backends"]
            .as_array().unwrap().iter().all(|b| b["latency_10s"]["count"] == 3);
        assert!(wait_until(std::time::Duration::from_secs(5), recorded));
        let text = ok(ctl(admin, &["status"]));
        let lines: Vec<&str> = text.lines().collect();
        let version = proxy.server.control().snapshot().version;
        assert!(lines[0].starts_with(&format!("strategy round_robin, pool version {version}, 2 worker cores")), "{text}");
        for header in ["BACKEND", "STATE", "WEIGHT", "IN FLIGHT", "REQUESTS", "FAILURES", "P50 10s", "P99 10s", "LAST CHECK"] {
            assert!(lines[2].contains(header), "{text}");
        }
        for mock in &proxy.mocks {
            let row = lines.iter().find(|line| line.contains(&mock.url())).unwrap_or_else(|| panic!("{text}"));
            let cells: Vec<&str> = row.split_whitespace().collect();
            // ID, BACKEND, STATE, WEIGHT, IN FLIGHT, REQUESTS, FAILURES, P50, P99, LAST CHECK
            assert_eq!(&cells[2..7], ["up", "1", "0", "3", "0"], "{row}");
            assert!(cells[7].ends_with("ms") && cells[8].ends_with("ms"), "{row}");
            assert_eq!(cells[9], "-", "{row}");
        }
        let document = json(&ok(ctl(admin, &["status", "--json"])));
        assert_eq!(document["strategy"], "round_robin");
        let p50 = document["backends"][0]["latency_10s"]["p50_us"].as_u64().unwrap();
        assert!((5_000..100_000).contains(&p50), "{document}");
    }

    fn add_remove_and_strategy_change_the_pool(driver) {
        let proxy = Proxy::start(driver, 1);
        let admin = proxy.server.admin_addr();
        let extra = start_mock(driver, "extra");
        let text = ok(ctl(admin, &["add", &extra.url(), "--weight", "3"]));
        assert!(text.starts_with(&format!("added backend 2 {} (weight 3)", extra.url())), "{text}");
        assert!(pool_urls(&proxy).contains(&extra.url()));
        let message = failed(ctl(admin, &["add", &extra.url()]));
        assert!(message.contains("409") && message.contains("already"), "{message}");
        let message = failed(ctl(admin, &["add", "http://127.0.0.1:1", "--weight", "0"]));
        assert!(message.contains("400") && message.contains("weight"), "{message}");

        let removed = json(&ok(ctl(admin, &["remove", "2", "--json"])));
        assert_eq!((removed["id"].as_u64(), removed["state"].as_str()), (Some(2), Some("draining")));
        assert!(!pool_urls(&proxy).contains(&extra.url()));
        let added = json(&ok(ctl(admin, &["add", &extra.url(), "--json"])));
        assert_eq!((added["id"].as_u64(), added["weight"].as_u64()), (Some(3), Some(1)));
        let text = ok(ctl(admin, &["remove", &extra.url()]));
        assert!(text.starts_with(&format!("removed backend 3 {}", extra.url())), "{text}");
        assert!(!pool_urls(&proxy).contains(&extra.url()));
        let message = failed(ctl(admin, &["remove", "99"]));
        assert!(message.contains("404"), "{message}");

        let text = ok(ctl(admin, &["strategy", "least_connections"]));
        assert_eq!(text, "strategy least_connections (was round_robin); every core uses it\n");
        let answer = json(&ok(ctl(admin, &["strategy", "round_robin", "--json"])));
        assert_eq!((answer["strategy"].as_str(), answer["previous"].as_str()), (Some("round_robin"), Some("least_connections")));
        let message = failed(ctl(admin, &["strategy", "fastest"]));
        assert!(message.contains("400") && message.contains("least_connections"), "{message}");
    }

    fn histograms_print_percentiles_and_bars(driver) {
        let proxy = Proxy::start(driver, 1);
        let admin = proxy.server.admin_addr();
        // Three in the 20-50 ms bucket, one far below.
        for delay in [30, 30, 30, 1] {
            assert_eq!(proxy.client().get(&format!("/delay/{delay}")).status, 200);
        }
        let recorded = || json(&ok(ctl(admin, &["histograms", "--window", "all", "--json"])))["overall"]["count"] == 4;
        assert!(wait_until(std::time::Duration::from_secs(5), recorded));
        let text = ok(ctl(admin, &["histograms", "--window", "all"]));
        assert!(text.starts_with("latency over window all"), "{text}");
        let header = text.lines().find(|l| l.contains("COUNT")).unwrap_or_else(|| panic!("{text}"));
        for column in ["MEAN", "P50", "P90", "P99", "P99.9", "MAX"] {
            assert!(header.contains(column), "{text}");
        }
        let overall = text.lines().find(|l| l.starts_with("overall")).unwrap();
        assert_eq!(overall.split_whitespace().nth(1), Some("4"), "{text}");
        let bars: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with("<=")).collect();
        assert!(bars.len() >= 2, "{text}");
        // Three samples in the fullest bucket: the longest bar.
        let longest = bars.iter().max_by_key(|b| b.matches('#').count()).unwrap();
        assert!(longest.ends_with("| 3") && longest.matches('#').count() == 40, "{text}");
        let message = failed(ctl(admin, &["histograms", "--window", "5m"]));
        assert!(message.contains("400") && message.contains("1s, 10s, 60s, all"), "{message}");
        let document = json(&ok(ctl(admin, &["histograms", "--json"])));
        assert_eq!(document["window"], "60s");
    }

    fn an_admin_token_is_required_when_set(driver) {
        let proxy = Proxy::start_with(driver, 1, |config| {
            config.admin_token = Some(AdminToken::new(TOKEN).unwrap());
        });
        let admin = proxy.server.admin_addr();
        let request = |authorization: Option<&str>| {
            let mut request = "GET /status HTTP/1.1\r\nHost: admin\r\n".to_string();
            if let Some(value) = authorization {
                request.push_str(&format!("Authorization: {value}\r\n"));
            }
            request.push_str("\r\n");
            Client::connect(admin).request(request.as_bytes())
        };
        for refused in [None, Some("Bearer wrong"), Some(&format!("Basic {TOKEN}")[..]), Some(&format!("Bearer {TOKEN}x")[..]), Some("Bearer")] {
            let response = request(refused);
            assert_eq!(response.status, 401, "{refused:?}");
            assert_eq!(response.header("www-authenticate"), Some("Bearer realm=\"percore-admin\""));
            let document: Value = serde_json::from_slice(&response.body).unwrap();
            assert!(document["error"].as_str().unwrap().contains("Bearer"), "{document}");
            assert!(!response.body_text().contains(TOKEN));
        }
        let response = request(Some(&format!("bearer {TOKEN}")));
        assert_eq!(response.status, 200);
        assert!(!response.body_text().contains(TOKEN), "the status document shows the token");
        // Every path, including the ones that read no pool state.
        for path in ["/healthz", "/metrics", "/histograms", "/nope"] {
            let response = Client::connect(admin).request(&get(path));
            assert_eq!(response.status, 401, "{path}");
        }
        let message = failed(ctl(admin, &["status"]));
        assert!(message.contains("401") && message.contains("Bearer"), "{message}");
        let message = failed(ctl(admin, &["status", "--token", "wrong"]));
        assert!(message.contains("401"), "{message}");
        assert!(ok(ctl(admin, &["status", "--token", TOKEN])).contains("BACKEND"));
        assert!(ok(ctl_env(admin, &["strategy", "least_connections"], Some(TOKEN))).contains("least_connections"));
    }
}

#[test]
fn an_unreachable_proxy_is_a_clear_error() {
    let refused = refused_url();
    let addr: SocketAddr = refused.trim_start_matches("http://").parse().unwrap();
    for args in [
        &["status"][..],
        &["add", "http://127.0.0.1:9"],
        &["remove", "1"],
        &["strategy", "round_robin"],
        &["histograms"],
    ] {
        let message = failed(ctl(addr, args));
        assert!(
            message.contains(&format!("cannot reach the admin API at {addr}")),
            "{message}"
        );
        assert!(message.to_lowercase().contains("refused"), "{message}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for args in [
        &["frobnicate"][..],
        &["remove"],
        &["add", "http://127.0.0.1:9", "--weight", "heavy"],
    ] {
        let output = ctl(addr, args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}
