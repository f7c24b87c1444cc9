//! Requests the proxy must refuse before forwarding a byte: each gets its
//! status code and a closed connection, and the backend never sees it.

#[macro_use]
mod common;

use common::*;
use percore::http1::{MAX_HEADERS, MAX_REQUEST_FIELDS};
use std::time::{Duration, Instant};

/// Sends `request` on a fresh connection; checks the status, that the
/// connection closes, and that nothing reached the backend.
fn expect_refused(proxy: &Proxy, name: &str, request: &[u8], status: u16) -> Result<(), String> {
    let before = proxy.total_mock_requests();
    let mut client = proxy.client();
    client.send(request);
    let response = client
        .try_read_response(false)
        .map_err(|e| format!("{name}: no response: {e}"))?;
    if response.status != status {
        return Err(format!(
            "{name}: status {} (expected {status})\n{}",
            response.status, response.head
        ));
    }
    let (rest, _) = client.read_to_end();
    if !rest.is_empty() {
        return Err(format!(
            "{name}: {} bytes after the {status} instead of a close: {:?}",
            rest.len(),
            String::from_utf8_lossy(&rest)
        ));
    }
    let after = proxy.total_mock_requests();
    if after != before {
        return Err(format!(
            "{name}: forwarded to the backend ({before} -> {after} requests)"
        ));
    }
    Ok(())
}

fn check_all(proxy: &Proxy, cases: &[(&str, Vec<u8>, u16)]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(name, request, status)| expect_refused(proxy, name, request, *status).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // The proxy still serves a well-formed request.
    assert_eq!(proxy.client().get("/fine").status, 200);
}

fn bad_400() -> Vec<(&'static str, Vec<u8>, u16)> {
    let cases: Vec<(&str, &[u8])> = vec![
        ("Content-Length with Transfer-Encoding", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("Transfer-Encoding with Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
        ("differing Content-Lengths", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        ("differing Content-Length list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!"),
        ("non-numeric Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n"),
        ("negative Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"),
        ("signed Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello"),
        ("hex Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello"),
        ("overflowing Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
        ("Transfer-Encoding not ending in chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        ("chunked applied twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
        ("malformed chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
        ("chunk size overflow", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        ("whitespace before colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-Foo : bar\r\n\r\n"),
        ("whitespace before colon in Host", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-Foo: one\r\n  two\r\n\r\n"),
        ("NUL in a header value", b"GET / HTTP/1.1\r\nHost: a\r\nX-Foo: a\0b\r\n\r\n"),
        ("CR inside a header value", b"GET / HTTP/1.1\r\nHost: a\r\nX-Foo: a\rb\r\n\r\n"),
        ("bare LF line endings", b"GET / HTTP/1.1\nHost: a\n\n"),
        ("bare LF after one header", b"GET / HTTP/1.1\r\nHost: a\nX-Foo: b\r\n\r\n"),
        ("missing Host in HTTP/1.1", b"GET / HTTP/1.1\r\nX-Foo: b\r\n\r\n"),
        ("two Host fields", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("Transfer-Encoding in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("malformed request line", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"),
    ];
    cases
        .into_iter()
        .map(|(name, request)| (name, request.to_vec(), 400))
        .collect()
}

both_drivers! {
    fn malformed_requests_get_400_and_are_not_forwarded(driver) {
        let proxy = Proxy::start(driver, 1);
        check_all(&proxy, &bad_400());
    }

    fn unsupported_version_and_codings(driver) {
        let proxy = Proxy::start(driver, 1);
        check_all(
            &proxy,
            &[
                ("HTTP/2.0 request line", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n".to_vec(), 505),
                ("HTTP/3.0 request line", b"GET / HTTP/3.0\r\nHost: a\r\n\r\n".to_vec(), 505),
                ("gzip, chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec(), 501),
            ],
        );
    }

    fn oversized_head_gets_431(driver) {
        let proxy = Proxy::start(driver, 1);
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'b', 17 * 1024));
        big.extend_from_slice(b"\r\n\r\n");
        let many = with_filler_fields(b"GET / HTTP/1.1\r\nHost: a\r\n", 0..1200, b"");
        check_all(&proxy, &[("17 KiB header", big, 431), ("1200 header fields", many, 431)]);
    }

    fn a_request_at_the_field_limit_is_forwarded_within_max_headers_and_one_more_gets_431(driver) {
        let backend = RawBackend::respond_with(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..]);
        let server = start_server(test_config(driver, vec![backend.url()]));
        // An OPTIONS with Max-Forwards, a body and X-Forwarded-For: fields
        // percore restates, beside the ones it adds.
        let start = b"OPTIONS /x HTTP/1.1\r\nHost: a\r\nMax-Forwards: 5\r\nContent-Length: 2\r\nX-Forwarded-For: 192.0.2.1\r\n";
        let request = |fields: usize| with_filler_fields(start, 4..fields, b"ok");
        let response = Client::connect(server.proxy_addr()).request(&request(MAX_REQUEST_FIELDS));
        assert_eq!(response.status, 200, "{}", response.head);
        let forwarded = &backend.requests()[0];
        // The request line, the fields, then the two empty pieces after the final CRLF CRLF.
        let fields = forwarded.head.split("\r\n").count() - 3;
        assert!(fields > MAX_REQUEST_FIELDS && fields <= MAX_HEADERS, "{fields} fields forwarded");

        let response = Client::connect(server.proxy_addr()).request(&request(MAX_REQUEST_FIELDS + 1));
        assert_eq!(response.status, 431, "{}", response.head);
        assert_eq!(backend.request_count(), 1, "the refused request reached the backend");
    }

    fn a_head_that_fits_but_not_once_forwarded_gets_431(driver) {
        let backend = RawBackend::respond_with(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..]);
        let server = start_server(test_config(driver, vec![backend.url()]));
        let limit = percore::config::ProxySettings::default().buffer_size;
        // A head of `size` bytes, nearly all of it one field.
        let request = |size: usize| {
            let start = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Big: ";
            let mut request = start.to_vec();
            request.extend(std::iter::repeat_n(b'b', size - start.len() - 4));
            request.extend_from_slice(b"\r\n\r\n");
            request
        };
        // Room for what percore adds: forwarded, and within the limit.
        let response = Client::connect(server.proxy_addr()).request(&request(limit - 400));
        assert_eq!(response.status, 200, "{}", response.head);
        let forwarded = backend.requests()[0].head.len();
        assert!(forwarded > limit - 400 && forwarded <= limit, "{forwarded}-byte head forwarded");

        // Within the limit as received, over it as forwarded.
        let response = Client::connect(server.proxy_addr()).request(&request(limit - 20));
        assert_eq!(response.status, 431, "{}", response.head);
        assert!(response.body_text().contains("once forwarded"), "{}", response.body_text());
        assert_eq!(backend.request_count(), 1, "the refused request reached the backend");
    }

    fn overlong_request_target_gets_414(driver) {
        let proxy = Proxy::start(driver, 1);
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'u', 17 * 1024));
        long.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
        check_all(&proxy, &[("17 KiB target", long, 414)]);
    }

    fn stalled_head_gets_408(driver) {
        let proxy = Proxy::start_with(driver, 1, |config| config.request_head_timeout = Duration::from_millis(300));
        let mut client = proxy.client();
        let started = Instant::now();
        client.send(b"GET /stalled HTTP/1.1\r\nHost: a\r\nX-Partial: ");
        let response = client.read_response();
        let elapsed = started.elapsed();
        assert_eq!(response.status, 408, "{}", response.head);
        assert!(elapsed >= Duration::from_millis(250) && elapsed < Duration::from_millis(2000), "408 after {elapsed:?} (timeout 300 ms)");
        client.expect_closed();
        assert_eq!(proxy.total_mock_requests(), 0);
    }

    fn head_sent_slowly_within_the_timeout_is_served(driver) {
        let proxy = Proxy::start_with(driver, 1, |config| config.request_head_timeout = Duration::from_millis(1000));
        let mut client = proxy.client();
        for piece in [&b"GET /slow"[..], b"ly HTTP/1.1\r\n", b"Host: a\r\n", b"\r\n"] {
            client.send(piece);
            std::thread::sleep(Duration::from_millis(50)); // the scenario: a client that trickles its head
        }
        assert_eq!(client.read_response().status, 200);
    }
}
