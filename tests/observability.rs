//! Latency histograms and metrics as an operator reads them: `GET
//! /histograms` for every window after requests of known delay (the mock
//! backend's `/delay/MS`), its 400 for a bad window, and `GET /metrics` read
//! by a real Prometheus text parser, with the duration histograms, response
//! classes, retries, connect errors, timeouts and accepted connections
//! checked against what the test did. Under both drivers.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use prometheus_parse::{Sample, Scrape, Value as Metric};
use serde_json::Value;

/// How far above a backend's delay a recorded percentile may be: the time
/// at the proxy and the test's own scheduling on a busy machine.
const SLACK_US: u64 = 20_000;

fn admin_get(admin: SocketAddr, path: &str) -> Response {
    Client::connect(admin).request(&get(path))
}

fn histograms(admin: SocketAddr, window: &str) -> Value {
    let response = admin_get(admin, &format!("/histograms?window={window}"));
    assert_eq!(response.status, 200, "{}", response.body_text());
    serde_json::from_slice(&response.body).unwrap()
}

fn within(value: &Value, low_us: u64, high_us: u64) -> bool {
    value
        .as_u64()
        .is_some_and(|v| (low_us..=high_us).contains(&v))
}

fn scrape(admin: SocketAddr) -> Scrape {
    let response = admin_get(admin, "/metrics");
    assert_eq!(response.status, 200);
    let text = response.body_text();
    let lines = text.lines().map(|line| Ok(line.to_string()));
    let scrape = Scrape::parse(lines).expect("the exposition parses");
    // The parser skips what it cannot read: count what it kept.
    let sample_lines = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let kept: usize = scrape
        .samples
        .iter()
        .map(|s| match &s.value {
            Metric::Histogram(buckets) => buckets.len(),
            _ => 1,
        })
        .sum();
    assert_eq!(kept, sample_lines, "every sample line parses:\n{text}");
    scrape
}

fn find<'s>(scrape: &'s Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<&'s Sample> {
    scrape.samples.iter().find(|sample| {
        sample.metric == metric && labels.iter().all(|(k, v)| sample.labels.get(k) == Some(*v))
    })
}

fn number(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    match find(scrape, metric, labels).map(|s| &s.value) {
        Some(Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v)) => *v,
        other => panic!("{metric} {labels:?}: {other:?}"),
    }
}

fn sum(scrape: &Scrape, metric: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .map(|s| match s.value {
            Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

both_drivers! {
    fn histograms_report_known_delays_in_every_window(driver) {
        let proxy = Proxy::start(driver, 2);
        let admin = proxy.server.admin_addr();
        // 12 requests of 10 ms, then 12 of 40 ms, each on its own connection
        // so that both cores record.
        for delay in [10, 40] {
            for _ in 0..12 {
                let response = proxy.client().get(&format!("/delay/{delay}"));
                assert_eq!(response.status, 200, "{}", response.head);
            }
        }
        for window in ["10s", "60s", "all"] {
            let complete = || histograms(admin, window)["overall"]["count"] == 24;
            assert!(wait_until(Duration::from_secs(5), complete), "window {window}: {}", histograms(admin, window));
            let document = histograms(admin, window);
            assert_eq!((document["window"].as_str(), document["unit"].as_str()), (Some(window), Some("us")));
            let overall = &document["overall"];
            // Half the samples are 10 ms, half 40 ms.
            assert!(within(&overall["min"], 10_000, 10_000 + SLACK_US), "{document}");
            assert!(within(&overall["p50"], 10_000, 10_000 + SLACK_US), "{document}");
            assert!(within(&overall["p90"], 40_000, 40_000 + SLACK_US), "{document}");
            assert!(within(&overall["p99"], 40_000, 140_000), "{document}");
            assert!(within(&overall["p999"], 40_000, 140_000), "{document}");
            assert!(overall["max"].as_u64() >= overall["p99"].as_u64(), "{document}");
            let mean = overall["mean"].as_f64().unwrap();
            assert!((25_000.0..25_000.0 + SLACK_US as f64).contains(&mean), "{document}");
            let backends = document["backends"].as_object().unwrap();
            assert_eq!(backends.len(), 2, "{document}");
            let mut count = 0;
            for mock in &proxy.mocks {
                let backend = &backends[&mock.url()];
                assert_eq!(backend["count"].as_u64(), Some(mock.requests()), "{document}");
                assert!(within(&backend["min"], 10_000, 10_000 + SLACK_US), "{document}");
                assert!(within(&backend["max"], 40_000, 140_000), "{document}");
                count += backend["count"].as_u64().unwrap();
            }
            assert_eq!(count, 24);
            // Upstream time is within the time at the proxy.
            let upstream = &document["upstream"]["overall"];
            assert_eq!(upstream["count"], 24);
            assert!(within(&upstream["p50"], 10_000, overall["p50"].as_u64().unwrap()), "{document}");
            let distribution = overall["distribution"].as_array().unwrap();
            let in_buckets: u64 = distribution.iter().map(|b| b["count"].as_u64().unwrap()).sum();
            assert_eq!(in_buckets, 24, "{document}");
        }
        // The last second's window holds an interval of this traffic until
        // it is a second old.
        let mut seen = Value::Null;
        let last_second = || {
            seen = histograms(admin, "1s");
            seen["overall"]["count"].as_u64().is_some_and(|count| count > 0)
        };
        assert!(wait_until(Duration::from_secs(5), last_second), "1s window stayed empty");
        assert_eq!(seen["window"], "1s");
        assert!(seen["overall"]["count"].as_u64().unwrap() <= 24, "{seen}");
        assert!(within(&seen["overall"]["min"], 10_000, 40_000 + SLACK_US), "{seen}");
        // The default window is a minute.
        let response = admin_get(admin, "/histograms");
        let document: Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!((response.status, document["window"].as_str()), (200, Some("60s")));
    }

    fn a_bad_window_is_400(driver) {
        let proxy = Proxy::start(driver, 1);
        let admin = proxy.server.admin_addr();
        for query in ["window=5m", "window=", "window=1S", "span=10s"] {
            let response = admin_get(admin, &format!("/histograms?{query}"));
            assert_eq!(response.status, 400, "{query}: {}", response.body_text());
            let document: Value = serde_json::from_slice(&response.body).unwrap();
            let message = document["error"].as_str().unwrap();
            assert!(message.contains("1s, 10s, 60s, all"), "{message}");
        }
        let response = Client::connect(admin).request(&post("/histograms", b"{}"));
        assert_eq!((response.status, response.header("allow")), (405, Some("GET")));
    }

    fn metrics_parse_and_count_what_happened(driver) {
        let refused = refused_url();
        let proxy = Proxy::start_with(driver, 2, |config| {
            config.backends.push(refused.clone().into());
            config.response_timeout = Duration::from_millis(300);
        });
        let admin = proxy.server.admin_addr();
        let mut connections = 0;
        // Every request succeeds: one that picks the refused backend is
        // retried on another (the refused one is then avoided for a while).
        for i in 0..9 {
            let response = proxy.client().get(&format!("/delay/{}", 2 + i % 3));
            connections += 1;
            assert_eq!(response.status, 200, "{}", response.head);
        }
        // A response timeout (504) and a refusal percore answers itself (400).
        let response = proxy.client().get("/delay/2000");
        connections += 1;
        assert_eq!(response.status, 504, "{}", response.head);
        let response = proxy.client().request(b"GET / HTTP/1.1\r\n\r\n");
        connections += 1;
        assert_eq!(response.status, 400, "{}", response.head);
        let relayed = || histograms(admin, "all")["overall"]["count"] == 11;
        assert!(wait_until(Duration::from_secs(5), relayed), "{}", histograms(admin, "all"));
        // Counters are written as requests finish; wait for the last one.
        let settled = || sum(&scrape(admin), "percore_local_responses_total") == 2.0;
        assert!(wait_until(Duration::from_secs(5), settled));

        let scrape = scrape(admin);
        assert!(scrape.docs.contains_key("percore_request_duration_seconds"));
        let mut relayed = 0.0;
        for mock in &proxy.mocks {
            let (url, id) = (mock.url(), proxy.backend_id(&mock.url()).to_string());
            let labels = [("id", id.as_str()), ("url", url.as_str())];
            let Some(Metric::Histogram(buckets)) = find(&scrape, "percore_request_duration_seconds", &labels).map(|s| &s.value) else {
                panic!("no duration histogram for {url}");
            };
            let count = number(&scrape, "percore_request_duration_seconds_count", &labels);
            assert_eq!(buckets.last().map(|b| (b.less_than, b.count)), Some((f64::INFINITY, count)));
            assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count && w[0].less_than < w[1].less_than), "{buckets:?}");
            // 2 to 4 ms each: nothing under 1 ms, everything under 250 ms.
            let under = |le: f64| buckets.iter().find(|b| b.less_than == le).map(|b| b.count);
            assert_eq!(under(0.001), Some(0.0), "{buckets:?}");
            assert_eq!(under(0.25), Some(count), "{buckets:?}");
            let seconds = number(&scrape, "percore_request_duration_seconds_sum", &labels);
            assert!(seconds >= 0.002 * count && seconds < 0.25 * count, "{seconds} for {count}");
            let ok = number(&scrape, "percore_backend_responses_total", &[labels[0], labels[1], ("code", "2xx")]);
            assert_eq!(ok, count);
            relayed += count;
            assert_eq!(number(&scrape, "percore_upstream_duration_seconds_count", &labels), count);
        }
        assert_eq!(relayed, 9.0);
        let refused_id = proxy.backend_id(&refused).to_string();
        let refused_labels = [("id", refused_id.as_str()), ("url", refused.as_str())];
        assert!(number(&scrape, "percore_backend_connect_errors_total", &refused_labels) >= 1.0);
        assert_eq!(number(&scrape, "percore_backend_connect_timeouts_total", &refused_labels), 0.0);
        assert_eq!(sum(&scrape, "percore_backend_retries_total"), sum(&scrape, "percore_backend_connect_errors_total"));
        assert_eq!(sum(&scrape, "percore_backend_response_timeouts_total"), 1.0);
        assert_eq!(number(&scrape, "percore_local_responses_total", &[("code", "5xx")]), 1.0);
        assert_eq!(number(&scrape, "percore_local_responses_total", &[("code", "4xx")]), 1.0);
        assert_eq!(sum(&scrape, "percore_worker_accepted_connections_total"), f64::from(connections));
        for core in 0..WORKERS {
            assert!(find(&scrape, "percore_worker_accepted_connections_total", &[("core", &core.to_string())]).is_some());
        }
    }
}
