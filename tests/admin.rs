//! The admin API as an operator sees it (`docs/admin-api.md`): the status
//! document, adding and removing backends with traffic through the proxy
//! following at once, strategy switches, every error status, Prometheus
//! metrics, and a prompt shutdown. Everything on port 0, under both drivers.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// The admin listener of a running proxy, one connection per request.
struct Admin(SocketAddr);

impl Admin {
    fn of(proxy: &Proxy) -> Admin {
        Admin(proxy.server.admin_addr())
    }

    fn send(&self, request: &[u8]) -> Response {
        Client::connect(self.0).request(request)
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: admin.local\r\n");
        if let Some(body) = body {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(body.unwrap_or_default());
        self.send(request.as_bytes())
    }

    /// Calls, expects JSON back, returns the status and the document.
    fn json(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let response = self.call(method, path, body);
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{}",
            response.head
        );
        let document = serde_json::from_slice(&response.body).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: body is not JSON ({e}): {}",
                response.body_text()
            )
        });
        (response.status, document)
    }

    fn status(&self) -> Value {
        let (status, document) = self.json("GET", "/status", None);
        assert_eq!(status, 200, "{document}");
        document
    }

    /// The error sentence of a JSON error reply with status `expected`.
    fn error(&self, method: &str, path: &str, body: Option<&str>, expected: u16) -> String {
        let (status, document) = self.json(method, path, body);
        assert_eq!(status, expected, "{method} {path} {body:?}: {document}");
        let message = document["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error sentence: {document}"));
        assert!(!message.is_empty());
        assert_eq!(
            document.as_object().map(|o| o.len()),
            Some(1),
            "an error is only {{\"error\": ...}}: {document}"
        );
        message.to_string()
    }
}

/// The status document's entry for the backend at `url`.
fn backend_entry(status: &Value, url: &str) -> Option<Value> {
    status["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["url"] == url)
        .cloned()
}

/// Sends `count` requests through the proxy, each on a new connection (so
/// they spread over the cores), and checks each succeeded.
fn proxy_requests(proxy: &Proxy, count: usize) {
    for i in 0..count {
        let response = proxy.client().get(&format!("/r{i}"));
        assert_eq!(response.status, 200, "{}", response.head);
    }
}

both_drivers! {
    fn status_document_describes_pool_and_workers(driver) {
        let proxy = Proxy::start(driver, 2);
        let admin = Admin::of(&proxy);
        proxy_requests(&proxy, 6);

        let status = admin.status();
        assert!(status["version"].as_u64().unwrap() >= 2, "two backends were added: {status}");
        assert_eq!(status["strategy"], "round_robin");
        assert_eq!(status["strategies"], json!(["round_robin", "least_connections"]));
        assert!(status["uptime_s"].as_f64().unwrap() >= 0.0);

        let workers = status["workers"].as_array().unwrap();
        assert_eq!(workers.len(), WORKERS);
        for (core, worker) in workers.iter().enumerate() {
            assert_eq!(worker["core"], core);
            assert_eq!(worker["applied_version"], status["version"], "{worker}");
            assert!(worker["active_connections"].is_u64() && worker["requests"].is_u64(), "{worker}");
        }
        let answered: u64 = workers.iter().map(|w| w["requests"].as_u64().unwrap()).sum();
        assert_eq!(answered, 6);

        let backends = status["backends"].as_array().unwrap();
        assert_eq!(backends.len(), 2);
        let mut ids = Vec::new();
        for (backend, mock) in backends.iter().zip(&proxy.mocks) {
            assert_eq!(backend["url"], mock.url());
            assert_eq!((&backend["weight"], &backend["state"]), (&json!(1), &json!("up")));
            assert_eq!(backend["requests"].as_u64(), Some(mock.requests()), "{backend}");
            assert_eq!(backend["failures"], 0);
            let per_core = backend["active_per_core"].as_array().unwrap();
            assert_eq!(per_core.len(), WORKERS);
            let sum: u64 = per_core.iter().map(|n| n.as_u64().unwrap()).sum();
            assert_eq!(backend["active_connections"].as_u64(), Some(sum));
            // Healthy all along: no transition; a check, if one ran yet, passed.
            assert_eq!(backend["transitions"], json!([]), "{backend}");
            assert!(backend["last_check"].is_null() || backend["last_check"]["ok"] == json!(true), "{backend}");
            ids.push(backend["id"].as_u64().unwrap());
        }
        assert_ne!(ids[0], ids[1]);
        assert_eq!(proxy.total_mock_requests(), 6);
    }

    fn an_added_backend_takes_traffic_as_soon_as_the_reply_arrives(driver) {
        let proxy = Proxy::start(driver, 1);
        let admin = Admin::of(&proxy);
        let added = start_mock(driver, "added");
        let version_before = admin.status()["version"].as_u64().unwrap();

        let body = format!(r#"{{"url": "{}", "weight": 3}}"#, added.url());
        let (status, object) = admin.json("POST", "/backends", Some(&body));
        assert_eq!(status, 201, "{object}");
        assert_eq!(object["url"], added.url());
        assert_eq!((&object["weight"], &object["state"], &object["requests"]), (&json!(3), &json!("up"), &json!(0)));
        let id = object["id"].as_u64().unwrap();
        assert!(id > proxy.backend_id(&proxy.mocks[0].url()), "ids only grow");

        // No waiting: the 201 means every core already routes to it, so of
        // two requests taking turns, one reaches it.
        proxy_requests(&proxy, 2);
        assert_eq!(added.requests(), 1, "the added backend's turn went elsewhere (mock counters {:?})", proxy.mock_requests());
        proxy_requests(&proxy, 4);
        assert_eq!(added.requests() + proxy.total_mock_requests(), 6);

        let status = admin.status();
        assert!(status["version"].as_u64().unwrap() > version_before);
        assert!(status["workers"].as_array().unwrap().iter().all(|w| w["applied_version"] == status["version"]));
        let entry = backend_entry(&status, &added.url()).expect("the added backend is listed");
        assert_eq!(entry["id"], id);
        assert_eq!(entry["requests"].as_u64(), Some(added.requests()));

        // Without a weight it is 1; a trailing slash is the same backend.
        let other = start_mock(driver, "other");
        let (status, object) = admin.json("POST", "/backends", Some(&format!(r#"{{"url": "{}/"}}"#, other.url())));
        assert_eq!((status, &object["weight"], &object["url"]), (201, &json!(1), &json!(other.url())), "{object}");
        admin.error("POST", "/backends", Some(&format!(r#"{{"url": "{}"}}"#, other.url())), 409);
        drop(proxy);
    }

    fn adding_refuses_bad_bodies(driver) {
        let proxy = Proxy::start(driver, 1);
        let admin = Admin::of(&proxy);
        let existing = proxy.mocks[0].url();
        let duplicate = admin.error("POST", "/backends", Some(&format!(r#"{{"url": "{existing}"}}"#)), 409);
        assert!(duplicate.contains(&existing), "{duplicate}");
        for body in [
            "",
            "{",
            "[1, 2]",
            r#"{"weight": 2}"#,
            r#"{"url": 8080}"#,
            r#"{"url": "http://127.0.0.1:9", "wieght": 2}"#,
            r#"{"url": "https://127.0.0.1:9"}"#,
            r#"{"url": "http://127.0.0.1:9/path"}"#,
            r#"{"url": "127.0.0.1:9"}"#,
            r#"{"url": "http://127.0.0.1:9", "weight": 0}"#,
            r#"{"url": "http://127.0.0.1:9", "weight": 1001}"#,
            r#"{"url": "http://127.0.0.1:9", "weight": -1}"#,
            r#"{"url": "http://127.0.0.1:9", "weight": 1.5}"#,
            r#"{"url": "http://127.0.0.1:9", "weight": "2"}"#,
        ] {
            admin.error("POST", "/backends", Some(body), 400);
        }
        let weight = admin.error("POST", "/backends", Some(r#"{"url": "http://127.0.0.1:9", "weight": 0}"#), 400);
        assert!(weight.contains("weight"), "{weight}");
        // The same backend under another name.
        let alias = existing.replace("127.0.0.1", "127.1");
        admin.error("POST", "/backends", Some(&format!(r#"{{"url": "{alias}"}}"#)), 409);
        // percore's own listeners: a proxy loop, or the admin API exposed.
        let admin_addr = proxy.server.admin_addr();
        for own in [proxy.addr(), admin_addr] {
            let refused = admin.error("POST", "/backends", Some(&format!(r#"{{"url": "http://{own}"}}"#)), 400);
            assert!(refused.contains("own"), "{refused}");
        }
        admin.error("POST", "/backends", Some(r#"{"url": "http://127.0.0.1:0"}"#), 400);
        let status = admin.status();
        assert_eq!(status["backends"].as_array().unwrap().len(), 1, "nothing was added: {status}");
    }

    fn a_removed_backend_gets_no_more_requests(driver) {
        let proxy = Proxy::start(driver, 3);
        let admin = Admin::of(&proxy);
        let [first, second, third] = [0, 1, 2].map(|i| proxy.mocks[i].url());
        let second_id = proxy.backend_id(&second);
        let third_id = proxy.backend_id(&third);

        let (status, object) = admin.json("DELETE", "/backends", Some(&format!(r#"{{"url": "{second}"}}"#)));
        assert_eq!(status, 200, "{object}");
        assert_eq!((&object["id"], &object["url"]), (&json!(second_id), &json!(second)));
        assert_eq!((&object["state"], &object["drained"], &object["active_connections"]), (&json!("draining"), &json!(true), &json!(0)));
        let (status, object) = admin.json("DELETE", &format!("/backends/{third_id}"), None);
        assert_eq!((status, &object["url"]), (200, &json!(third)), "{object}");

        // No waiting: the 200 means no core picks them any more.
        let before = proxy.mock_requests();
        proxy_requests(&proxy, 6);
        assert_eq!(proxy.mock_requests(), vec![before[0] + 6, before[1], before[2]]);
        let status = admin.status();
        let urls: Vec<&Value> = status["backends"].as_array().unwrap().iter().map(|b| &b["url"]).collect();
        assert_eq!(urls, vec![&json!(first)]);

        // Gone is gone, by url or by id; ids are not reused.
        admin.error("DELETE", "/backends", Some(&format!(r#"{{"url": "{second}"}}"#)), 404);
        admin.error("DELETE", "/backends", Some(&format!(r#"{{"id": {second_id}}}"#)), 404);
        admin.error("DELETE", &format!("/backends/{third_id}"), None, 404);
        admin.error("DELETE", "/backends/99999", None, 404);
        admin.error("DELETE", "/backends/not-a-number", None, 404);
        let (status, object) = admin.json("POST", "/backends", Some(&format!(r#"{{"url": "{second}"}}"#)));
        assert_eq!(status, 201);
        assert!(object["id"].as_u64().unwrap() > third_id, "a new id: {object}");

        for body in ["", "{}", r#"{"url": 5}"#, r#"{"id": "one"}"#, r#"{"id": -1}"#, &format!(r#"{{"url": "{first}", "id": 1}}"#), r#"{"name": "x"}"#] {
            admin.error("DELETE", "/backends", Some(body), 400);
        }
        assert!(backend_entry(&admin.status(), &first).is_some(), "a refused removal removed nothing");
    }

    fn removal_replies_once_in_flight_requests_finish(driver) {
        let proxy = Proxy::start(driver, 1);
        let admin = Admin::of(&proxy);
        let url = proxy.mocks[0].url();
        let id = proxy.backend_id(&url);
        let proxy_addr = proxy.addr();
        let in_flight = std::thread::spawn(move || Client::connect(proxy_addr).get("/delay/400"));
        assert!(
            wait_until(Duration::from_secs(5), || backend_entry(&admin.status(), &url).is_some_and(|b| b["active_connections"] == 1)),
            "the slow request never showed as in flight"
        );

        let (status, object) = admin.json("DELETE", &format!("/backends/{id}"), None);
        assert_eq!(status, 200, "{object}");
        assert_eq!((&object["drained"], &object["active_connections"], &object["requests"]), (&json!(true), &json!(0), &json!(1)), "{object}");
        let response = in_flight.join().unwrap();
        assert_eq!(response.status, 200, "the in-flight request finished normally: {}", response.head);
        // With no backend left, the proxy refuses instead of using the removed one.
        assert_eq!(proxy.client().get("/after").status, 503);
        assert_eq!(proxy.mock_requests(), vec![1]);
    }

    fn strategy_switches_are_reported(driver) {
        let proxy = Proxy::start(driver, 2);
        let admin = Admin::of(&proxy);
        let version = admin.status()["version"].as_u64().unwrap();

        let (status, reply) = admin.json("POST", "/strategy", Some(r#"{"strategy": "least_connections"}"#));
        assert_eq!(status, 200, "{reply}");
        assert_eq!((&reply["strategy"], &reply["previous"]), (&json!("least_connections"), &json!("round_robin")));
        let status = admin.status();
        assert_eq!(status["strategy"], "least_connections");
        assert!(status["version"].as_u64().unwrap() > version);
        assert!(status["workers"].as_array().unwrap().iter().all(|w| w["applied_version"] == status["version"]));
        proxy_requests(&proxy, 4);

        let (_, reply) = admin.json("POST", "/strategy", Some(r#"{"strategy": "round_robin"}"#));
        assert_eq!((&reply["strategy"], &reply["previous"]), (&json!("round_robin"), &json!("least_connections")));
        // Round-robin again: consecutive requests take turns.
        let before = proxy.mock_requests();
        proxy_requests(&proxy, 4);
        let after = proxy.mock_requests();
        assert_eq!((after[0] - before[0], after[1] - before[1]), (2, 2));

        let unknown = admin.error("POST", "/strategy", Some(r#"{"strategy": "fastest"}"#), 400);
        assert!(unknown.contains("fastest") && unknown.contains("round_robin") && unknown.contains("least_connections"), "{unknown}");
        for body in ["", r#"{"strategy": 1}"#, r#"{"name": "round_robin"}"#, "round_robin"] {
            admin.error("POST", "/strategy", Some(body), 400);
        }
        assert_eq!(admin.status()["strategy"], "round_robin");
    }

    fn unknown_paths_and_wrong_methods(driver) {
        let proxy = Proxy::start(driver, 1);
        let admin = Admin::of(&proxy);
        for path in ["/", "/nope", "/status/", "/backends/1/x", "/histograms/", "/histogram?window=10s"] {
            admin.error("GET", path, None, 404);
        }
        for (method, path, allow) in [
            ("POST", "/status", "GET"),
            ("POST", "/histograms", "GET"),
            ("DELETE", "/metrics", "GET"),
            ("PUT", "/healthz", "GET"),
            ("GET", "/backends", "POST, DELETE"),
            ("PUT", "/backends", "POST, DELETE"),
            ("GET", "/backends/1", "DELETE"),
            ("GET", "/strategy", "POST"),
        ] {
            let response = admin.call(method, path, None);
            assert_eq!(response.status, 405, "{method} {path}: {}", response.head);
            assert_eq!(response.header("allow"), Some(allow), "{method} {path}");
            let document: Value = serde_json::from_slice(&response.body).unwrap();
            assert!(document["error"].as_str().unwrap().contains(method), "{document}");
        }
    }

    fn oversized_and_malformed_requests(driver) {
        let proxy = Proxy::start(driver, 1);
        let admin = Admin::of(&proxy);
        let limit = 64 * 1024;

        // Exactly the limit is read and parsed (whitespace is valid JSON padding).
        let mut body = br#"{"strategy": "least_connections"}"#.to_vec();
        body.resize(limit, b' ');
        let response = admin.send(&post("/strategy", &body));
        assert_eq!(response.status, 200, "{}", response.body_text());

        // One byte over, whole body sent: refused, and the refusal arrives intact.
        body.push(b' ');
        let response = admin.send(&post("/strategy", &body));
        assert_eq!(response.status, 413, "{}", response.head);
        assert!(response.body_text().contains("error"));
        assert!(response.connection_has("close"));

        // Declared too large, body never sent: refused from the head alone.
        let response = admin.send(b"POST /backends HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000000\r\n\r\n");
        assert_eq!(response.status, 413, "{}", response.head);

        // Chunked: counted as it is decoded.
        let mut request = b"POST /backends HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        request.extend_from_slice(&chunked(&vec![b' '; limit + 100], &[8000]));
        assert_eq!(admin.send(&request).status, 413);
        let mut request = b"POST /strategy HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        request.extend_from_slice(&chunked(br#"{"strategy": "round_robin"}"#, &[5]));
        assert_eq!(admin.send(&request).status, 200);

        // Not HTTP, ambiguous framing, or a head over the limit.
        for request in [
            &b"NOT HTTP AT ALL\r\n\r\n"[..],
            b"GET /status HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"POST /strategy HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            b"POST /strategy HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST /strategy HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let response = admin.send(request);
            assert_eq!(response.status, 400, "{}", response.head);
            let message = serde_json::from_slice::<Value>(&response.body).unwrap()["error"].as_str().unwrap().to_string();
            assert!(message.starts_with("malformed HTTP request: ") && !message.contains("http2"), "{message}");
            assert!(response.connection_has("close"));
        }
        let huge_header = format!("GET /status HTTP/1.1\r\nHost: a\r\nX-Padding: {}\r\n\r\n", "x".repeat(32 * 1024));
        assert_eq!(admin.send(huge_header.as_bytes()).status, 431);

        // Still serving after all that.
        assert_eq!(admin.status()["strategy"], "round_robin");
    }

    fn connections_keep_alive_until_asked_to_close(driver) {
        let proxy = Proxy::start(driver, 1);
        let mut client = Client::connect(proxy.server.admin_addr());
        for _ in 0..3 {
            let response = client.get("/healthz");
            assert_eq!((response.status, response.body_text().as_str()), (200, "ok"));
            assert!(!response.connection_has("close"));
        }
        let response = client.request(&post("/strategy", br#"{"strategy": "round_robin"}"#));
        assert_eq!(response.status, 200);
        // An error answered by the API (not the HTTP layer) keeps the connection.
        assert_eq!(client.get("/nope").status, 404);
        let response = client.request(b"GET /status HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert_eq!(response.status, 200);
        assert!(response.connection_has("close"));
        assert!(client.read_to_end().0.is_empty());

        // HTTP/1.0 closes unless it asks for keep-alive.
        let mut client = Client::connect(proxy.server.admin_addr());
        assert_eq!(client.request(b"GET /healthz HTTP/1.0\r\n\r\n").status, 200);
        assert!(client.read_to_end().0.is_empty());
        let mut client = Client::connect(proxy.server.admin_addr());
        assert_eq!(client.request(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").status, 200);
        assert_eq!(client.request(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").status, 200);
    }

    fn metrics_are_prometheus_text(driver) {
        let proxy = Proxy::start(driver, 2);
        let admin = Admin::of(&proxy);
        proxy_requests(&proxy, 5);
        // A core counts a request as in flight until just after its last
        // byte is written, so the client may read it before the count drops.
        let idle = || admin.status()["backends"].as_array().unwrap().iter().all(|b| b["active_connections"] == 0);
        assert!(wait_until(Duration::from_secs(5), idle), "requests still in flight");
        let response = admin.call("GET", "/metrics", None);
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
        let text = response.body_text();

        let mut samples: Vec<(String, f64)> = Vec::new();
        for line in text.lines() {
            if let Some(comment) = line.strip_prefix("# ") {
                assert!(comment.starts_with("HELP percore_") || comment.starts_with("TYPE percore_"), "{line}");
                if let Some(kind) = comment.strip_prefix("TYPE ") {
                    assert!(kind.ends_with(" counter") || kind.ends_with(" gauge") || kind.ends_with(" histogram"), "{line}");
                }
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample line: {line:?}"));
            let name_end = series.find('{').unwrap_or(series.len());
            assert!(series[..name_end].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{line}");
            if name_end < series.len() {
                assert!(series.ends_with('}'), "{line}");
            }
            samples.push((series.to_string(), value.parse().unwrap_or_else(|_| panic!("value of {line:?}"))));
        }
        let value = |series: &str| samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v);
        let sum = |prefix: &str| samples.iter().filter(|(s, _)| s.starts_with(prefix)).map(|(_, v)| v).sum::<f64>();

        let version = admin.status()["version"].as_f64().unwrap();
        assert_eq!(value("percore_pool_version"), Some(version));
        assert_eq!(sum("percore_worker_requests_total{"), 5.0);
        assert_eq!(sum("percore_backend_requests_total{"), 5.0);
        assert_eq!(sum("percore_backend_failures_total{"), 0.0);
        assert_eq!(value(r#"percore_strategy{strategy="round_robin"}"#), Some(1.0));
        for mock in &proxy.mocks {
            let id = proxy.backend_id(&mock.url());
            let labels = format!(r#"id="{id}",url="{}""#, mock.url());
            assert_eq!(value(&format!("percore_backend_requests_total{{{labels}}}")), Some(mock.requests() as f64), "{text}");
            assert_eq!(value(&format!("percore_backend_in_flight_requests{{{labels}}}")), Some(0.0));
            assert_eq!(value(&format!(r#"percore_backend_state{{{labels},state="up"}}"#)), Some(1.0));
        }
        for core in 0..WORKERS {
            assert_eq!(value(&format!(r#"percore_worker_applied_version{{core="{core}"}}"#)), Some(version));
            assert!(value(&format!(r#"percore_worker_open_connections{{core="{core}"}}"#)).is_some(), "{text}");
            assert!(value(&format!(r#"percore_worker_parked_connections_total{{core="{core}"}}"#)).is_some(), "{text}");
        }
    }

    fn healthz_says_ok(driver) {
        let proxy = Proxy::start(driver, 1);
        let response = Admin::of(&proxy).call("GET", "/healthz", None);
        assert_eq!((response.status, response.body_text().as_str()), (200, "ok"));
    }

    fn shutdown_is_prompt_with_admin_connections_open(driver) {
        let proxy = Proxy::start(driver, 1);
        let mut idle = Client::connect(proxy.server.admin_addr());
        assert_eq!(idle.get("/healthz").status, 200);
        let mut half_sent = Client::connect(proxy.server.admin_addr());
        half_sent.send(b"POST /strategy HTTP/1.1\r\nHost: a\r\nContent-Length: 50\r\n\r\n{\"stra");

        let Proxy { server, mocks } = proxy;
        let started = Instant::now();
        server.shutdown();
        assert!(started.elapsed() < Duration::from_secs(2), "shutdown took {:?}", started.elapsed());
        assert!(idle.read_to_end().0.is_empty(), "the idle admin connection is closed");
        assert!(half_sent.read_to_end().0.is_empty(), "so is one in the middle of a request");
        drop(mocks);
    }

    fn connections_over_the_cap_get_503(driver) {
        let proxy = Proxy::start(driver, 1);
        let admin = Admin::of(&proxy);
        // Each holds a slot with half a head.
        let holders: Vec<Client> = (0..256)
            .map(|_| {
                let mut client = Client::connect(proxy.server.admin_addr());
                client.send(b"GET /status HTTP/1.1\r\n");
                client
            })
            .collect();
        assert!(
            wait_until(Duration::from_secs(2), || admin.call("GET", "/healthz", None).status == 503),
            "a connection over the cap was not answered 503"
        );
        let refused = admin.call("GET", "/healthz", None);
        assert_eq!(refused.header("retry-after"), Some("1"), "{}", refused.head);
        assert!(refused.body_text().contains("too many"), "{}", refused.body_text());
        drop(holders);
        assert!(
            wait_until(Duration::from_secs(2), || admin.call("GET", "/healthz", None).status == 200),
            "the API did not recover once the slots were freed"
        );
    }
}
