//! Failures and the status codes a client sees: no backend (503), backends
//! unreachable (next tried, else 502), slow (504), broken answers (502),
//! cut responses (client connection aborted), no resending of a request that
//! is not safe to resend, and a client that leaves taking its upstream
//! exchange with it.

#[macro_use]
mod common;

use common::*;
use percore::Config;
use percore::http1::{MAX_HEADERS, MAX_RESPONSE_FIELDS};
use percore::pool::BackendState;
use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Reads a response that must never complete: the connection ends first.
fn expect_cut(client: &mut Client, what: &str) {
    match client.try_read_response(false) {
        Ok(response) => panic!(
            "{what}: got a complete response, expected the connection aborted:\n{}({} body bytes)",
            response.head,
            response.body.len()
        ),
        Err(error) => assert!(
            matches!(
                error.kind(),
                ErrorKind::UnexpectedEof
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
            ),
            "{what}: expected EOF or reset mid-body, got {error}"
        ),
    }
}

/// A GET from an HTTP/1.1 client and one from an HTTP/1.0 client, each on
/// a new connection, must both see the response cut.
fn expect_cut_for_both_versions(server: &percore::Server, what: &str) {
    let mut client = Client::connect(server.proxy_addr());
    client.send(&get("/"));
    expect_cut(&mut client, &format!("{what}, HTTP/1.1 client"));
    let mut old = Client::connect(server.proxy_addr());
    old.send(b"GET / HTTP/1.0\r\n\r\n");
    expect_cut(&mut old, &format!("{what}, HTTP/1.0 client"));
}

both_drivers! {
    fn all_backends_removed_gives_503_with_retry_after(driver) {
        let proxy = Proxy::start(driver, 2);
        let mut client = proxy.client();
        assert_eq!(client.get("/").status, 200);
        let mut version = 0;
        for mock in &proxy.mocks {
            let id = proxy.backend_id(&mock.url());
            version = proxy.server.control().remove_backend(id).expect("remove backend").1;
        }
        wait_applied(&proxy.server, version);
        for _ in 0..3 {
            let response = client.get("/");
            assert_eq!(response.status, 503, "{}", response.head);
            assert!(response.has_header("retry-after"), "{}", response.head);
        }
        let before = proxy.total_mock_requests();
        let mut fresh = proxy.client();
        assert_eq!(fresh.get("/").status, 503);
        assert_eq!(proxy.total_mock_requests(), before);
    }

    fn all_backends_down_gives_503_until_one_is_up(driver) {
        let proxy = Proxy::start(driver, 2);
        let control = proxy.server.control();
        let ids: Vec<_> = proxy.mocks.iter().map(|m| proxy.backend_id(&m.url())).collect();
        let mut version = 0;
        for &id in &ids {
            version = control.set_state(id, BackendState::Down).expect("known backend");
        }
        wait_applied(&proxy.server, version);
        let mut client = proxy.client();
        let response = client.get("/");
        assert_eq!(response.status, 503, "{}", response.head);
        assert!(response.has_header("retry-after"), "{}", response.head);
        assert_eq!(proxy.total_mock_requests(), 0);

        let version = control.set_state(ids[1], BackendState::Up).unwrap();
        wait_applied(&proxy.server, version);
        let mut client = proxy.client();
        for _ in 0..4 {
            let response = client.get("/");
            assert_eq!(response.status, 200);
            assert_eq!(response.header("x-backend"), Some("mock1"));
        }
    }

    fn refused_backend_is_skipped(driver) {
        let mock = start_mock(driver, "alive");
        let server = start_server(test_config(driver, vec![refused_url(), mock.url(), refused_url()]));
        for i in 0..6 {
            let mut client = Client::connect(server.proxy_addr());
            let response = client.get(&format!("/fresh/{i}"));
            assert_eq!(response.status, 200, "request {i}: {}", response.head);
            assert_eq!(response.header("x-backend"), Some("alive"));
        }
        let mut client = Client::connect(server.proxy_addr());
        for i in 0..6 {
            assert_eq!(client.get(&format!("/kept/{i}")).status, 200);
            // Nothing was sent to a refused backend: even a POST moves on.
            let response = client.request(&post("/p", b"once"));
            assert_eq!((response.status, response.body_text().as_str()), (200, "once"));
        }
        assert_eq!(mock.requests(), 18);
    }

    fn all_backends_refused_gives_502(driver) {
        let server = start_server(test_config(driver, vec![refused_url(), refused_url()]));
        let mut client = Client::connect(server.proxy_addr());
        let response = client.get("/");
        assert_eq!(response.status, 502, "{}", response.head);
        let mut client = Client::connect(server.proxy_addr());
        assert_eq!(client.request(&post("/", b"x")).status, 502);
    }

    fn slow_response_head_gives_504(driver) {
        let proxy = Proxy::start_with(driver, 1, |config| config.response_timeout = Duration::from_millis(300));
        let mut client = proxy.client();
        let started = Instant::now();
        let response = client.get("/delay/2000");
        let elapsed = started.elapsed();
        assert_eq!(response.status, 504, "{}", response.head);
        assert!(elapsed >= Duration::from_millis(250), "504 after only {elapsed:?}");
        assert!(elapsed < Duration::from_millis(1500), "504 took {elapsed:?} (response_timeout 300 ms)");
        // The proxy gave up on the exchange: the backend sees it abandoned.
        assert!(
            wait_until(Duration::from_secs(1), || proxy.mocks[0].counters().abandoned.load(Ordering::Relaxed) == 1),
            "the slow exchange was not closed upstream"
        );
    }

    fn backend_closing_before_answering_gives_502(driver) {
        let backend = RawBackend::close_before_answer();
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        let response = client.get("/");
        assert_eq!(response.status, 502, "{}", response.head);
    }

    fn backend_resetting_gives_502(driver) {
        let backend = RawBackend::reset_on_accept();
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        assert_eq!(client.get("/").status, 502);
    }

    fn garbage_response_gives_502(driver) {
        let backend = RawBackend::respond_with(&b"this is not HTTP at all\r\n\r\n"[..]);
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        let response = client.get("/");
        assert_eq!(response.status, 502, "{}", response.head);
        assert!(!response.body_text().contains("not HTTP"), "garbage relayed: {}", response.body_text());
    }

    fn a_response_at_the_field_limit_is_relayed_within_max_headers_and_one_more_gives_502(driver) {
        let response_with = |fields: usize| {
            with_filler_fields(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", 1..fields, b"ok")
        };
        let backend = RawBackend::respond_with(response_with(MAX_RESPONSE_FIELDS));
        let server = start_server(test_config(driver, vec![backend.url()]));
        let response = Client::connect(server.proxy_addr()).get("/");
        assert_eq!(response.status, 200, "{}", response.head);
        assert_eq!(response.body_text(), "ok");
        let fields = response.headers.len();
        assert!(fields > MAX_RESPONSE_FIELDS && fields <= MAX_HEADERS, "{fields} fields relayed");

        let backend = RawBackend::respond_with(response_with(MAX_RESPONSE_FIELDS + 1));
        let server = start_server(test_config(driver, vec![backend.url()]));
        let response = Client::connect(server.proxy_addr()).get("/");
        assert_eq!(response.status, 502, "{}", response.head);
    }

    fn response_with_length_and_chunked_gives_502(driver) {
        let backend = RawBackend::respond_with(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        );
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        let response = client.get("/");
        assert_eq!(response.status, 502, "{}", response.head);

        let conflicting = RawBackend::respond_with(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"[..]);
        let server = start_server(test_config(driver, vec![conflicting.url()]));
        let mut client = Client::connect(server.proxy_addr());
        assert_eq!(client.get("/").status, 502);
    }

    fn response_cut_mid_body_aborts_the_client_connection(driver) {
        let mut cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
        cut.extend_from_slice(&[b'y'; 1000]);
        let backend = RawBackend::answer_then_close(cut);
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        client.send(&get("/"));
        expect_cut(&mut client, "Content-Length body cut");

        let mut chunks = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        chunks.extend_from_slice(b"400\r\n");
        chunks.extend_from_slice(&[b'z'; 1024]);
        chunks.extend_from_slice(b"\r\n");
        let backend = RawBackend::answer_then_close(chunks);
        let server = start_server(test_config(driver, vec![backend.url()]));
        // De-chunked for HTTP/1.0, the body is close-delimited: a clean close
        // would make the truncated body look complete, so it ends in a reset.
        expect_cut_for_both_versions(&server, "chunked body cut");
    }

    fn post_is_never_sent_twice(driver) {
        // Answers GETs; closes on a POST without answering.
        let handler = |mut conn: RawConn| {
            while let Some(request) = conn.read_request() {
                if request.method == "POST" {
                    return;
                }
                conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
        };
        let first = RawBackend::start(handler);
        let second = RawBackend::start(handler);
        let server = start_server(test_config(driver, vec![first.url(), second.url()]));
        let posts = || first.requests().iter().chain(second.requests().iter()).filter(|r| r.method == "POST").count();

        // On fresh upstream connections.
        let mut client = Client::connect(server.proxy_addr());
        let response = client.request(&post("/order", b"buy 1"));
        assert_eq!(response.status, 502, "{}", response.head);
        assert_eq!(posts(), 1, "the POST reached the backends more than once");

        // On pooled ones: GETs first leave idle connections behind.
        let mut client = Client::connect(server.proxy_addr());
        for _ in 0..4 {
            assert_eq!(client.get("/warm").status, 200);
        }
        let response = client.request(&post("/order", b"buy 2"));
        assert_eq!(response.status, 502, "{}", response.head);
        assert_eq!(posts(), 2, "the second POST reached the backends more than once");
    }

    fn get_is_retried_when_a_pooled_connection_went_stale(driver) {
        // One response per connection, then a close the response did not announce.
        let backend = RawBackend::answer_then_close(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..]);
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        for i in 1..=3 {
            assert_eq!(client.get("/").status, 200, "GET {i}");
            assert!(wait_until(Duration::from_secs(2), || backend.open_handlers() == 0), "backend did not close");
        }
        // A POST is not resent, so the proxy must not send it on the stale connection either.
        let response = client.request(&post("/p", b"body"));
        assert_eq!(response.status, 200, "{}", response.head);
        assert_eq!(backend.requests().iter().filter(|r| r.method == "POST").count(), 1);
    }

    fn get_is_retried_when_a_pooled_connection_is_reset(driver) {
        // Answers the first request on each connection; resets the
        // connection when a second one arrives (as a backend whose idle
        // timeout fires just as the request comes in).
        let backend = RawBackend::start(|mut conn| {
            if conn.read_request().is_some() {
                conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                if conn.read_request().is_some() {
                    conn.reset();
                }
            }
        });
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        for i in 1..=3 {
            let response = client.get(&format!("/{i}"));
            assert_eq!(response.status, 200, "GET {i} (a reset before any response byte is safe to retry for a GET):\n{}{}", response.head, response.body_text());
        }
    }

    fn client_leaving_abandons_the_upstream_exchange(driver) {
        let proxy = Proxy::start(driver, 1);
        let started = Instant::now();
        let mut client = proxy.client();
        client.send(&get("/delay/3000"));
        assert!(wait_until(Duration::from_secs(2), || proxy.mock_requests()[0] == 1), "request did not reach the mock");
        std::thread::sleep(Duration::from_millis(100)); // the scenario: the client gives up after 100 ms
        drop(client);
        assert!(
            wait_until(Duration::from_millis(1500), || proxy.mocks[0].counters().abandoned.load(Ordering::Relaxed) == 1),
            "the upstream exchange was not abandoned within 1.5 s of the client leaving"
        );
        assert!(started.elapsed() < Duration::from_millis(2500), "abandoned only after {:?}", started.elapsed());
    }

    fn client_leaving_mid_upload_abandons_the_upstream_exchange(driver) {
        let backend = RawBackend::never_answer();
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        client.send(b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\npartial body");
        assert!(wait_until(Duration::from_secs(2), || backend.request_count() == 1), "request did not reach the backend");
        drop(client);
        // never_answer's handler returns once the proxy closes its side.
        assert!(
            wait_until(Duration::from_secs(2), || backend.open_handlers() == 0),
            "the proxy kept the upstream connection open after the client left mid-upload"
        );
    }

    fn unsolicited_bytes_on_an_idle_upstream_connection_never_reach_a_client(driver) {
        // Answers each request with its own path; after /a it also sends a
        // second, unrequested response, as a broken backend might: a little
        // later, so that it lands on the connection once the proxy has put it
        // back in its idle pool.
        let stray_sent = Arc::new(AtomicBool::new(false));
        let flag = stray_sent.clone();
        let backend = RawBackend::start(move |mut conn| {
            while let Some(request) = conn.read_request() {
                let path = request.path.clone();
                conn.write(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}", path.len()).as_bytes());
                if path == "/a" {
                    std::thread::sleep(Duration::from_millis(100));
                    conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray");
                    flag.store(true, Ordering::Release);
                }
            }
        });
        let server = start_server(test_config(driver, vec![backend.url()]));
        assert_eq!(Client::connect(server.proxy_addr()).get("/a").body_text(), "/a");
        // Over loopback, bytes written are in the proxy's receive queue.
        assert!(wait_until(Duration::from_secs(5), || stray_sent.load(Ordering::Acquire)), "the backend never sent its stray response");
        for path in ["/b", "/c", "/d"] {
            let response = Client::connect(server.proxy_addr()).get(path);
            assert_eq!((response.status, response.body_text().as_str()), (200, path), "{}", response.head);
        }
    }

    fn a_backends_idle_408_is_not_handed_to_the_next_request(driver) {
        // As backends that announce their keep-alive timeout with a 408.
        let backend = RawBackend::start(|mut conn| {
            if conn.read_request().is_some() {
                conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                std::thread::sleep(Duration::from_millis(100));
                conn.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
            }
        });
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        for i in 1..=3 {
            let response = client.get("/");
            assert_eq!(response.status, 200, "GET {i}: {}", response.head);
            assert!(wait_until(Duration::from_secs(2), || backend.open_handlers() == 0), "backend did not close");
        }
    }

    fn a_pooled_connection_the_backend_closed_costs_no_delay(driver) {
        let backend = RawBackend::answer_then_close(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..]);
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        assert_eq!(client.get("/").status, 200);
        for method in ["GET", "HEAD", "POST"] {
            assert!(wait_until(Duration::from_secs(2), || backend.open_handlers() == 0), "backend did not close");
            let started = Instant::now();
            let request = format!("{method} / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
            client.send(request.as_bytes());
            let response = if method == "HEAD" { client.read_head_response() } else { client.read_response() };
            assert_eq!(response.status, 200, "{method}: {}", response.head);
            let elapsed = started.elapsed();
            assert!(elapsed < Duration::from_millis(500), "{method} took {elapsed:?}");
        }
    }

    fn close_delimited_body_cut_by_a_reset_is_never_passed_off_as_complete(driver) {
        let backend = RawBackend::start(|mut conn| {
            if conn.read_request().is_some() {
                conn.write(b"HTTP/1.1 200 OK\r\n\r\npartial body");
                std::thread::sleep(Duration::from_millis(50));
                conn.reset();
            }
        });
        let server = start_server(test_config(driver, vec![backend.url()]));
        // Re-chunked for HTTP/1.1 (no last chunk), close-delimited for 1.0 (a reset).
        expect_cut_for_both_versions(&server, "close-delimited body reset");
    }

    fn broken_framing_found_before_anything_was_relayed_gives_502(driver) {
        let cases: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        ];
        for raw in cases {
            let backend = RawBackend::answer_then_close(raw);
            let server = start_server(test_config(driver, vec![backend.url()]));
            let response = Client::connect(server.proxy_addr()).get("/");
            assert_eq!(response.status, 502, "{:?} gave:\n{}", String::from_utf8_lossy(raw), response.head);
        }
    }

    fn too_many_interim_responses_end_in_a_final_502(driver) {
        let mut raw = b"HTTP/1.1 102 Processing\r\n\r\n".repeat(17);
        raw.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let backend = RawBackend::answer_then_close(raw);
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        client.send(&get("/"));
        let (interim, last) = client.read_final_response();
        assert!(interim.len() <= 16 && interim.iter().all(|r| r.status == 102), "{interim:?}");
        assert_eq!(last.status, 502, "{}", last.head);
    }

    fn a_client_stalling_its_upload_gets_408_not_504(driver) {
        let backend = RawBackend::never_answer();
        let config = Config {
            response_timeout: Duration::from_millis(300),
            client_body_timeout: Duration::from_millis(1200),
            ..test_config(driver, vec![backend.url()])
        };
        let server = start_server(config);
        let mut client = Client::connect(server.proxy_addr());
        let started = Instant::now();
        let response = client.request(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc");
        assert_eq!(response.status, 408, "after {:?}:\n{}", started.elapsed(), response.head);
        assert!(started.elapsed() >= Duration::from_millis(1000), "408 after only {:?}", started.elapsed());

        // A client waiting for 100 (Continue) before its body owes nothing yet.
        let mut client = Client::connect(server.proxy_addr());
        let started = Instant::now();
        let response = client.request(b"POST /upload HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(response.status, 504, "after {:?}:\n{}", started.elapsed(), response.head);
        assert!(started.elapsed() < Duration::from_millis(1000), "504 only after {:?}", started.elapsed());

        // With the whole request sent, a silent backend is the backend's fault.
        let mut client = Client::connect(server.proxy_addr());
        let response = client.request(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!(response.status, 504, "{}", response.head);
    }

    fn a_client_that_stops_reading_is_reset_after_the_send_timeout(driver) {
        // A backend with a large body that would wait long for buffer space.
        let backend = RawBackend::start(|mut conn| {
            conn.stream.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
            if conn.read_request().is_some() && conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 500000000\r\n\r\n") {
                let block = vec![b'x'; 1 << 16];
                while conn.write(&block) {}
            }
        });
        let config = Config { send_timeout: Duration::from_millis(1000), ..test_config(driver, vec![backend.url()]) };
        let server = start_server(config);
        let mut client = Client::connect(server.proxy_addr());
        client.send(&get("/"));
        // Reading slowly but steadily for three send timeouts is no stall.
        let mut chunk = vec![0u8; 1 << 20];
        let started = Instant::now();
        let mut received = 0usize;
        while started.elapsed() < Duration::from_millis(3000) {
            match std::io::Read::read(&mut client.stream, &mut chunk[..4 * 1024]) {
                Ok(n) if n > 0 => received += n,
                other => panic!("a slow but steady reader was cut off after {received} bytes: {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Not reading: the proxy's writes stall once the socket buffers fill.
        std::thread::sleep(Duration::from_millis(3000));
        let mut received = 0usize;
        let end = loop {
            match std::io::Read::read(&mut client.stream, &mut chunk) {
                Ok(0) => break "EOF",
                Ok(n) => received += n,
                Err(error) if error.kind() == ErrorKind::ConnectionReset => break "reset",
                Err(error) => panic!("after {received} bytes: {error}"),
            }
        };
        assert_eq!(end, "reset", "after {received} bytes");
        assert!(received < 100_000_000, "{received} bytes arrived: the proxy kept writing");
        assert!(
            wait_until(Duration::from_secs(2), || backend.open_handlers() == 0),
            "the upstream connection stayed open"
        );
    }

    fn a_long_upload_to_a_slowly_reading_backend_is_not_a_504(driver) {
        // Reads the head, then the 4 MB body 64 KiB at a time, 20 ms apart
        // (about 1.3 s), then answers: far past the 300 ms response timeout,
        // but the backend keeps taking bytes all along.
        let backend = RawBackend::start(|mut conn| {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if std::io::Read::read(&mut conn.stream, &mut byte).unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let mut left = 4 << 20;
            let mut block = vec![0u8; 1 << 16];
            while left > 0 {
                std::thread::sleep(Duration::from_millis(20));
                match std::io::Read::read(&mut conn.stream, &mut block[..left.min(1 << 16)]) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => left -= n,
                }
            }
            conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        });
        let config = Config { response_timeout: Duration::from_millis(300), ..test_config(driver, vec![backend.url()]) };
        let server = start_server(config);
        let mut client = Client::connect(server.proxy_addr());
        let started = Instant::now();
        let response = client.request(&post("/upload", &vec![b'u'; 4 << 20]));
        assert_eq!((response.status, response.body_text().as_str()), (200, "ok"), "after {:?}:\n{}", started.elapsed(), response.head);
        assert!(started.elapsed() > Duration::from_millis(600), "the backend read faster than planned: {:?}", started.elapsed());
    }
    fn a_hostless_request_retried_elsewhere_names_the_backend_it_reaches(driver) {
        // An HTTP/1.0 request without Host gets the picked backend's
        // authority as its Host; when that backend refuses, the retry on the
        // next one must not carry the first one's authority.
        let backend = RawBackend::start(|mut conn| {
            while conn.read_request().is_some() {
                if !conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") {
                    return;
                }
            }
        });
        let refused = refused_url();
        let server = start_server(test_config(driver, vec![refused.clone(), backend.url()]));
        // Round-robin over two backends: one of the first two requests
        // picks the refused backend first.
        for i in 0..2 {
            let mut client = Client::connect(server.proxy_addr());
            client.send(format!("GET /old/{i} HTTP/1.0\r\n\r\n").as_bytes());
            let response = client.read_response();
            assert_eq!(response.status, 200, "request {i}: {}", response.head);
        }
        let snapshot = server.control().snapshot();
        let refused_failures: u64 = snapshot
            .backends
            .iter()
            .filter(|(b, _)| b.url == refused)
            .map(|(b, _)| b.counters.sum(|c| &c.failures))
            .sum();
        assert!(refused_failures >= 1, "no request was retried after the refused backend");
        let hosts: Vec<_> = backend.requests().iter().map(|r| r.header("host")).collect();
        assert_eq!(hosts.len(), 2);
        for host in hosts {
            assert_eq!(host.as_deref(), Some(backend.addr().to_string().as_str()));
        }
    }
    fn a_safe_request_unanswered_on_a_fresh_connection_is_resent_once_elsewhere(driver) {
        // One backend takes each request and closes without a byte of answer
        // (a process dying with connections in its queue); the other answers.
        let dying = RawBackend::close_before_answer();
        let alive = RawBackend::ok();
        // Passive ejection would take the dying backend out after a few
        // failures; this test is about each request's own retry.
        let mut config = test_config(driver, vec![dying.url(), alive.url()]);
        config.passive_failures = 0;
        let server = start_server(config);
        let sent = |backend: &RawBackend, method: &str| {
            backend.requests().iter().filter(|r| r.method == method).count()
        };
        for i in 0..4 {
            let mut client = Client::connect(server.proxy_addr());
            let response = client.get(&format!("/get/{i}"));
            assert_eq!(response.status, 200, "GET {i}: {}", response.head);
        }
        assert!(sent(&dying, "GET") >= 1, "no GET went to the dying backend first");
        assert_eq!(sent(&alive, "GET"), 4);
        // A POST the client marks as idempotent is resent too ...
        let marked = b"POST /pay HTTP/1.1\r\nHost: x\r\nIdempotency-Key: 7\r\nContent-Length: 0\r\n\r\n";
        for i in 0..2 {
            let mut client = Client::connect(server.proxy_addr());
            let response = client.request(marked);
            assert_eq!(response.status, 200, "marked POST {i}: {}", response.head);
        }
        // ... but a plain one is never sent twice: one of two goes to the
        // dying backend first and gets a 502.
        let statuses: Vec<u16> = (0..2)
            .map(|_| Client::connect(server.proxy_addr()).request(&post("/order", b"")).status)
            .collect();
        assert!(statuses.contains(&502), "{statuses:?}");
        let plain_posts = dying.requests().iter().chain(alive.requests().iter())
            .filter(|r| r.method == "POST" && r.header("idempotency-key").is_none())
            .count();
        assert_eq!(plain_posts, 2, "a plain POST reached the backends more than once");
    }
}
