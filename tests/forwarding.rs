//! What reaches the backend and what comes back: method, target, headers and
//! body forwarded; the proxy fields (X-Forwarded-*, Via, X-Request-Id) added;
//! hop-by-hop fields removed; keep-alive and pipelining on the client side;
//! upstream connections reused.

#[macro_use]
mod common;

use common::*;
use std::time::Duration;

both_drivers! {
    fn method_path_query_and_body_reach_the_backend(driver) {
        let proxy = Proxy::start(driver, 1);
        let mut client = proxy.client();
        for method in ["GET", "DELETE", "OPTIONS"] {
            let response = client.request(format!("{method} /some/path?a=1&b=two HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes());
            assert_eq!(response.status, 200, "{}", response.head);
            assert_eq!(response.header("x-backend"), Some("mock0"));
            let body = response.body_text();
            assert!(body.starts_with(&format!("backend=mock0 method={method} path=/some/path?a=1&b=two ")), "{body}");
        }
        for method in ["POST", "PUT", "PATCH"] {
            let payload = format!("payload of a {method}");
            let request = format!("{method} /echo HTTP/1.1\r\nHost: test.local\r\nContent-Length: {}\r\n\r\n{payload}", payload.len());
            let response = client.request(request.as_bytes());
            assert_eq!(response.status, 200, "{}", response.head);
            assert_eq!(response.body_text(), payload);
        }
        assert_eq!(proxy.mock_requests(), vec![6]);
    }

    fn headers_and_body_arrive_as_sent(driver) {
        let backend = RawBackend::ok();
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        let body = pattern(3000);
        let mut request = format!(
            "PUT /items/7?x=%20y HTTP/1.1\r\nHost: shop.example:8080\r\nX-Custom: some value\r\nAccept: */*\r\nCookie: a=1; b=2\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        let response = client.request(&request);
        assert_eq!((response.status, response.body_text().as_str()), (200, "ok"), "{}", response.head);

        let received = backend.requests();
        assert_eq!(received.len(), 1);
        let upstream = &received[0];
        assert!(upstream.head.starts_with("PUT /items/7?x=%20y HTTP/1.1\r\n"), "{}", upstream.head);
        assert_eq!(upstream.headers_named("host"), vec!["shop.example:8080"]);
        assert_eq!(upstream.header("x-custom").as_deref(), Some("some value"));
        assert_eq!(upstream.header("accept").as_deref(), Some("*/*"));
        assert_eq!(upstream.header("cookie").as_deref(), Some("a=1; b=2"));
        assert_eq!(upstream.header("content-length"), Some(body.len().to_string()));
        assert_eq!(upstream.body, body);
    }

    fn options_max_forwards_is_counted_down_and_answered_at_zero(driver) {
        let backend = RawBackend::ok();
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        let response = client.request(b"OPTIONS * HTTP/1.1\r\nHost: a\r\nMax-Forwards: 3\r\n\r\n");
        assert_eq!((response.status, response.body_text().as_str()), (200, "ok"), "{}", response.head);
        assert_eq!(backend.requests()[0].headers_named("max-forwards"), vec!["2"]);

        let response = client.request(b"OPTIONS /x HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\n\r\n");
        assert_eq!(response.status, 200, "{}", response.head);
        assert!(response.header("allow").is_some_and(|allow| allow.contains("OPTIONS")), "{}", response.head);
        assert_eq!(backend.request_count(), 1, "an OPTIONS with Max-Forwards: 0 was forwarded");
        assert_eq!(client.get("/").status, 200, "the connection stays usable");

        // Other methods may ignore it: forwarded as received.
        client.request(b"GET / HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\n\r\n");
        assert_eq!(backend.requests().last().unwrap().headers_named("max-forwards"), vec!["0"]);
        let response = Client::connect(server.proxy_addr())
            .request(b"OPTIONS / HTTP/1.1\r\nHost: a\r\nMax-Forwards: x\r\n\r\n");
        assert_eq!(response.status, 400, "{}", response.head);
    }

    fn forwarding_fields_are_added(driver) {
        let backend = RawBackend::ok();
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());

        // No incoming X-Forwarded-For: this client only.
        let response = client.request(b"GET /a HTTP/1.1\r\nHost: shop.example:8080\r\n\r\n");
        assert_eq!(response.status, 200);
        assert_eq!(response.headers_named("via"), vec!["1.1 percore"], "{}", response.head);

        // An incoming one is appended to; spoofed Proto and Host are replaced.
        let response = client.request(
            b"GET /b HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n\r\n",
        );
        assert_eq!(response.status, 200);

        let received = backend.requests();
        assert_eq!(received.len(), 2);
        let first = &received[0];
        assert_eq!(first.headers_named("x-forwarded-for"), vec!["127.0.0.1"], "{}", first.head);
        assert_eq!(first.headers_named("x-forwarded-proto"), vec!["http"], "{}", first.head);
        assert_eq!(first.headers_named("x-forwarded-host"), vec!["shop.example:8080"], "{}", first.head);
        assert_eq!(first.headers_named("via"), vec!["1.1 percore"], "{}", first.head);

        let second = &received[1];
        assert_eq!(second.headers_named("x-forwarded-for"), vec!["10.1.2.3, 127.0.0.1"], "{}", second.head);
        assert_eq!(second.headers_named("x-forwarded-proto"), vec!["http"], "{}", second.head);
        assert_eq!(second.headers_named("x-forwarded-host"), vec!["shop.example"], "{}", second.head);
    }

    fn hop_by_hop_fields_are_removed_both_ways(driver) {
        let backend = RawBackend::respond_with(
            &b"HTTP/1.1 200 OK\r\nConnection: X-Resp-Secret\r\nX-Resp-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok"[..],
        );
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        let response = client.request(
            b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\nProxy-Connection: keep-alive\r\nX-Public: p\r\n\r\n",
        );
        assert_eq!(response.status, 200, "{}", response.head);
        for name in ["x-resp-secret", "keep-alive", "proxy-connection"] {
            assert!(!response.has_header(name), "{name} reached the client:\n{}", response.head);
        }
        assert!(!response.connection_has("x-resp-secret"), "{}", response.head);
        assert_eq!(response.header("x-kept"), Some("yes"));

        let upstream = &backend.requests()[0];
        for name in ["x-secret", "keep-alive", "te", "trailer", "upgrade", "proxy-connection"] {
            assert!(upstream.headers_named(name).is_empty(), "{name} was forwarded:\n{}", upstream.head);
        }
        assert!(
            upstream.headers_named("connection").iter().all(|v| !v.to_ascii_lowercase().contains("x-secret")),
            "{}",
            upstream.head
        );
        assert_eq!(upstream.header("x-public").as_deref(), Some("p"));
        // The client's connection stays usable.
        assert_eq!(client.get("/again").status, 200);
    }

    fn request_id_generated_when_absent_and_kept_when_given(driver) {
        let proxy = Proxy::start(driver, 1);
        let mut client = proxy.client();
        let mut generated = Vec::new();
        for _ in 0..3 {
            let response = client.get("/id");
            assert_eq!(response.status, 200);
            let ids = response.headers_named("x-request-id");
            assert_eq!(ids.len(), 1, "one X-Request-Id expected:\n{}", response.head);
            let id = ids[0].to_string();
            assert!(!id.is_empty());
            // The mock names the id it received.
            assert!(response.body_text().contains(&format!("request_id={id}\n")), "upstream saw another id: {}", response.body_text());
            generated.push(id);
        }
        generated.sort();
        generated.dedup();
        assert_eq!(generated.len(), 3, "generated ids must differ: {generated:?}");

        let response = client.request(b"GET /id HTTP/1.1\r\nHost: a\r\nX-Request-Id: given-abc-123\r\n\r\n");
        assert_eq!(response.headers_named("x-request-id"), vec!["given-abc-123"]);
        assert!(response.body_text().ends_with("request_id=given-abc-123\n"), "{}", response.body_text());
        // Unless the client's Connection header makes it hop-by-hop.
        let response = client.request(b"GET /id HTTP/1.1\r\nHost: a\r\nConnection: X-Request-Id\r\nX-Request-Id: hop-456\r\n\r\n");
        let ids = response.headers_named("x-request-id");
        assert!(ids.len() == 1 && ids[0] != "hop-456", "{}", response.head);

        // Also on a response the backend does not tag itself.
        let backend = RawBackend::ok();
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        let response = client.get("/untagged");
        let id = response.header("x-request-id").expect("X-Request-Id added to the response").to_string();
        assert_eq!(backend.requests()[0].headers_named("x-request-id"), vec![id]);
        let response = client.request(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: mine\r\n\r\n");
        assert_eq!(response.headers_named("x-request-id"), vec!["mine"]);
        assert_eq!(backend.requests()[1].headers_named("x-request-id"), vec!["mine"]);
    }

    fn absolute_form_target_is_made_origin_form(driver) {
        let backend = RawBackend::ok();
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        let response = client.request(b"GET http://origin.example:81/p?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n");
        assert_eq!(response.status, 200);
        let upstream = &backend.requests()[0];
        assert!(upstream.head.starts_with("GET /p?q=1 HTTP/1.1\r\n"), "{}", upstream.head);
        assert_eq!(upstream.headers_named("host"), vec!["origin.example:81"]);
    }

    fn http10_client_without_host(driver) {
        let backend = RawBackend::ok();
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        let response = client.request(b"GET /old HTTP/1.0\r\n\r\n");
        assert_eq!((response.status, response.body_text().as_str()), (200, "ok"));
        client.expect_closed();
        let upstream = &backend.requests()[0];
        assert!(upstream.head.starts_with("GET /old HTTP/1.1\r\n"), "{}", upstream.head);
        assert_eq!(upstream.headers_named("host").len(), 1, "a Host is supplied upstream:\n{}", upstream.head);
        assert_eq!(upstream.headers_named("via"), vec!["1.0 percore"]);

        // HTTP/1.0 with keep-alive asked for: kept, and said so.
        let mut client = Client::connect(server.proxy_addr());
        let response = client.request(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(response.status, 200);
        assert!(response.connection_has("keep-alive"), "{}", response.head);
        let response = client.request(b"GET /old2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(response.status, 200);
    }

    fn many_requests_on_one_connection_reuse_one_upstream_connection(driver) {
        let proxy = Proxy::start(driver, 1);
        let mut client = proxy.client();
        for i in 0..50 {
            let response = client.get(&format!("/n/{i}"));
            assert_eq!(response.status, 200);
            assert!(response.body_text().contains(&format!("path=/n/{i} ")), "{}", response.body_text());
            assert!(!response.connection_has("close"), "{}", response.head);
        }
        assert_eq!(proxy.mock_requests(), vec![50]);
        assert_eq!(proxy.mock_connections(), vec![1], "one client connection, one core: one upstream connection");
    }

    fn upstream_connections_stay_few_across_client_connections(driver) {
        let proxy = Proxy::start(driver, 1);
        for round in 0..20 {
            let mut client = proxy.client();
            for i in 0..5 {
                assert_eq!(client.get(&format!("/r/{round}/{i}")).status, 200);
            }
        }
        assert_eq!(proxy.mock_requests(), vec![100]);
        let connections = proxy.mock_connections()[0];
        assert!(connections <= 2 * WORKERS as u64, "{connections} upstream connections for 100 sequential requests on {WORKERS} cores");
    }

    fn pipelined_requests_are_answered_in_order(driver) {
        let proxy = Proxy::start(driver, 1);
        let mut client = proxy.client();
        let mut batch = Vec::new();
        for i in 0..4 {
            batch.extend_from_slice(&get(&format!("/pipe/{i}")));
        }
        batch.extend_from_slice(&post("/pipe/post", b"pipelined body"));
        batch.extend_from_slice(b"HEAD /bytes/10 HTTP/1.1\r\nHost: a\r\n\r\n");
        batch.extend_from_slice(b"GET /pipe/last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        client.send(&batch);
        for i in 0..4 {
            let response = client.read_response();
            assert_eq!(response.status, 200);
            assert!(response.body_text().contains(&format!("path=/pipe/{i} ")), "response {i} out of order: {}", response.body_text());
        }
        assert_eq!(client.read_response().body_text(), "pipelined body");
        let head = client.read_head_response();
        assert_eq!((head.status, head.header("content-length")), (200, Some("10")));
        let last = client.read_response();
        assert!(last.body_text().contains("path=/pipe/last "), "{}", last.body_text());
        assert!(last.connection_has("close"), "{}", last.head);
        client.expect_closed();
    }

    fn client_connection_idles_open_between_requests(driver) {
        let proxy = Proxy::start(driver, 1);
        let mut client = proxy.client();
        assert_eq!(client.get("/first").status, 200);
        assert!(client.is_open_after(Duration::from_millis(200)));
        assert_eq!(client.get("/second").status, 200);
    }
}

both_drivers! {
    fn an_idle_keep_alive_connection_is_parked_and_resumes(driver) {
        // An idle connection hands over to a small task after 250 ms; the
        // first bytes of its next request must wake it and reach the backend,
        // also when they arrive in pieces. The test's is the proxy's only
        // client connection: it parks once on arrival, then once per idle
        // wait (the count is published by each core's once-a-second sweep).
        let proxy = Proxy::start(driver, 1);
        let parked = || proxy.server.control().workers.sum(|w| &w.parked_total);
        let mut client = proxy.client();
        assert_eq!(client.get("/first").status, 200);
        assert!(wait_until(Duration::from_secs(5), || parked() == 2), "the idle connection was not parked: {} parks", parked());
        let response = client.get("/after-idle");
        assert_eq!(response.status, 200, "{}", response.head);
        assert!(response.body_text().contains("path=/after-idle "), "{}", response.body_text());
        assert!(wait_until(Duration::from_secs(5), || parked() == 3), "not parked again after resuming: {} parks", parked());
        client.send(b"GET /in-pie");
        // Not a synchronisation: a gap so that the head arrives as two reads.
        std::thread::sleep(Duration::from_millis(50));
        let response = client.request(b"ces HTTP/1.1\r\nHost: test.local\r\n\r\n");
        assert_eq!(response.status, 200, "{}", response.head);
        assert!(response.body_text().contains("path=/in-pieces "), "{}", response.body_text());
    }

    fn a_new_connection_that_waits_before_its_first_request_is_served(driver) {
        let proxy = Proxy::start(driver, 1);
        let mut client = proxy.client();
        std::thread::sleep(std::time::Duration::from_millis(400));
        let long_path = format!("/{}", "p".repeat(3000));
        let response = client.get(&long_path);
        assert_eq!(response.status, 200, "{}", response.head);
        assert!(response.body_text().contains(&long_path), "head longer than the parked buffer must arrive whole");
    }

    fn a_small_body_written_after_its_head_reaches_the_client_with_it(driver) {
        // nginx serving a file writes the head and the body separately.
        let backend = RawBackend::start(|mut conn: RawConn| {
            while conn.read_request().is_some() {
                conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n");
                std::thread::sleep(Duration::from_millis(1));
                conn.write(b"0123456789abcdef");
            }
        });
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        // The client waits in its read: a head sent on its own would be
        // all that read returns.
        let whole = (0..5)
            .filter(|_| {
                client.send(&get("/"));
                let first = read_once(&mut client);
                let response = client.read_response_after(first.clone());
                assert_eq!(response.status, 200, "{}", response.head);
                assert_eq!(response.body, b"0123456789abcdef");
                first.ends_with(b"0123456789abcdef")
            })
            .count();
        assert!(whole >= 3, "only {whole} of 5 responses arrived in one piece");
    }

    fn a_body_that_stalls_after_its_head_does_not_hold_the_head_back(driver) {
        let backend = RawBackend::start(|mut conn: RawConn| {
            while conn.read_request().is_some() {
                conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n");
                std::thread::sleep(Duration::from_millis(400));
                conn.write(b"late");
            }
        });
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        let sent = std::time::Instant::now();
        client.send(&get("/"));
        let first = read_once(&mut client);
        let head_after = sent.elapsed();
        assert!(first.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&first));
        assert!(head_after < Duration::from_millis(200), "the head came after {head_after:?}, with the body");
        let response = client.read_response_after(first);
        assert_eq!(response.body, b"late");
    }

    fn a_small_body_cut_before_the_head_went_out_is_answered_502(driver) {
        let backend = RawBackend::answer_then_close(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b".to_vec());
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        let response = client.get("/");
        assert_eq!(response.status, 502, "{}", response.head);
    }
}

/// One read from the proxy: what arrived by the time the first bytes did.
fn read_once(client: &mut Client) -> Vec<u8> {
    let mut buf = vec![0; 4096];
    let n = read_retrying(&mut client.stream, &mut buf).expect("reading from the proxy");
    buf.truncate(n);
    buf
}
