//! Message framing through the proxy: chunked bodies both ways, bodiless
//! responses (HEAD, 204, 304, 1xx), close-delimited responses, and responses
//! re-framed for HTTP/1.0 clients.

#[macro_use]
mod common;

use common::*;

both_drivers! {
    fn chunked_upload_is_echoed_byte_for_byte(driver) {
        let proxy = Proxy::start(driver, 1);
        let mut client = proxy.client();
        // Small: the mock buffers it and answers with Content-Length.
        // Large: the mock streams it back chunked.
        for (len, sizes) in [(1usize, &[1usize][..]), (10_000, &[1, 7, 4096, 333]), (300_000, &[65_536, 1, 20_000])] {
            let body = pattern(len);
            let mut request = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            request.extend_from_slice(&chunked(&body, sizes));
            let response = client.request(&request);
            assert_eq!(response.status, 200, "{}", response.head);
            assert_eq!(response.body.len(), len, "{}", response.head);
            assert!(response.body == body, "echoed body of {len} bytes differs");
            // A response that starts before the upload ends may close the
            // connection (the proxy cannot know the rest will come); it says so.
            if response.connection_has("close") {
                client.expect_closed();
                client = proxy.client();
            }
        }
        // Chunk extensions and a trailer section are accepted and stripped.
        let response = client.request(b"POST /ext HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
        assert_eq!((response.status, response.body_text().as_str()), (200, "hello world"));
        assert_eq!(proxy.mock_requests(), vec![4]);
    }

    fn chunked_upload_reaches_the_backend_chunked(driver) {
        let backend = RawBackend::ok();
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        let body = pattern(5000);
        let mut request = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        request.extend_from_slice(&chunked(&body, &[100, 900]));
        assert_eq!(client.request(&request).status, 200);
        let upstream = &backend.requests()[0];
        assert_eq!(upstream.headers_named("transfer-encoding"), vec!["chunked"], "{}", upstream.head);
        assert!(upstream.headers_named("content-length").is_empty(), "{}", upstream.head);
        assert!(upstream.body == body);
    }

    fn chunked_response_is_relayed_chunked(driver) {
        let proxy = Proxy::start(driver, 1);
        let mut client = proxy.client();
        for n in [1usize, 999, 1000, 5000, 200_000] {
            let response = client.get(&format!("/chunked/{n}"));
            assert_eq!(response.status, 200, "{}", response.head);
            assert!(matches!(response.framing, Framing::Chunked(_)), "expected a chunked response, got {:?}:\n{}", response.framing, response.head);
            assert!(!response.has_header("content-length"), "{}", response.head);
            assert_eq!(response.body.len(), n);
            assert!(response.body.iter().all(|&b| b == b'x'));
        }
        // And the connection is still in step.
        assert_eq!(client.get("/after").status, 200);
    }

    fn chunked_response_with_extensions_and_trailers_is_re_encoded(driver) {
        let backend = RawBackend::respond_with(
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=\"q\"\r\nabc\r\n0000004\r\ndefg\r\n0\r\nX-Checksum: 1\r\n\r\n"[..],
        );
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        for _ in 0..2 {
            let response = client.get("/");
            assert_eq!(response.status, 200);
            assert_eq!(response.body_text(), "abcdefg");
            assert!(matches!(response.framing, Framing::Chunked(_)), "{}", response.head);
        }
    }

    fn chunked_response_to_http10_client_is_close_delimited(driver) {
        let proxy = Proxy::start(driver, 1);
        let mut client = proxy.client();
        let response = client.request(b"GET /chunked/5000 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(response.status, 200, "{}", response.head);
        assert!(!response.has_header("transfer-encoding"), "HTTP/1.0 clients do not know chunked:\n{}", response.head);
        assert!(!response.has_header("content-length"), "{}", response.head);
        assert_eq!(response.framing, Framing::Close);
        assert_eq!(response.body.len(), 5000);
        assert!(response.body.iter().all(|&b| b == b'x'));
    }

    fn head_response_has_no_body_and_keeps_content_length(driver) {
        let proxy = Proxy::start(driver, 1);
        let mut client = proxy.client();
        client.send(b"HEAD /bytes/1234 HTTP/1.1\r\nHost: a\r\n\r\n");
        let response = client.read_head_response();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-length"), Some("1234"), "{}", response.head);
        // No body bytes slipped through: the next response parses.
        let next = client.get("/bytes/3");
        assert_eq!((next.status, next.body_text().as_str()), (200, "xxx"));

        client.send(b"HEAD /chunked/100 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(client.read_head_response().status, 200);
        let next = client.get("/bytes/2");
        assert_eq!((next.status, next.body_text().as_str()), (200, "xx"));
    }

    fn no_content_and_not_modified_have_no_body(driver) {
        let proxy = Proxy::start(driver, 1);
        let mut client = proxy.client();
        for status in [204u16, 304] {
            let response = client.get(&format!("/status/{status}"));
            assert_eq!(response.status, status, "{}", response.head);
            assert!(response.body.is_empty());
            if status == 204 {
                assert!(!response.has_header("content-length") && !response.has_header("transfer-encoding"), "{}", response.head);
            }
            let next = client.get("/bytes/4");
            assert_eq!((next.status, next.body_text().as_str()), (200, "xxxx"), "after a {status}");
        }
    }

    fn not_modified_keeps_the_representation_length(driver) {
        let backend = RawBackend::respond_with(&b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 1234\r\n\r\n"[..]);
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        let response = client.get("/cached");
        assert_eq!(response.status, 304);
        assert_eq!(response.header("content-length"), Some("1234"), "{}", response.head);
        assert_eq!(response.header("etag"), Some("\"v1\""));
        assert_eq!(client.get("/cached").status, 304, "connection still in step");
    }

    fn interim_responses_reach_http11_clients_only(driver) {
        let backend = RawBackend::respond_with(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone"[..],
        );
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        client.send(&post("/form", b"data"));
        let (interim, last) = client.read_final_response();
        assert_eq!(interim.iter().map(|r| r.status).collect::<Vec<_>>(), vec![100, 103]);
        assert_eq!(interim[1].header("link"), Some("</style.css>; rel=preload"));
        assert_eq!((last.status, last.body_text().as_str()), (200, "done"));
        client.send(&get("/next"));
        let (interim, last) = client.read_final_response();
        assert_eq!((interim.len(), last.status), (2, 200), "the next exchange on the same connection");

        let mut old = Client::connect(server.proxy_addr());
        old.send(b"GET / HTTP/1.0\r\n\r\n");
        let response = old.read_response();
        assert_eq!((response.status, response.body_text().as_str()), (200, "done"), "HTTP/1.0 clients get no 1xx");
    }

    fn expect_continue_upload_through_the_mock(driver) {
        let proxy = Proxy::start(driver, 1);
        let mut client = proxy.client();
        let body = pattern(2000);
        let mut request = format!("PUT /put HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        request.extend_from_slice(&body);
        client.send(&request);
        let (interim, last) = client.read_final_response();
        assert!(interim.iter().all(|r| r.status == 100), "{interim:?}");
        assert_eq!(last.status, 200);
        assert!(last.body == body);
    }

    fn close_delimited_response_is_chunked_for_http11_clients(driver) {
        // nginx does the same: the end of the body (or its truncation) stays
        // visible to the client, and its connection stays open.
        let proxy = Proxy::start(driver, 1);
        let mut client = proxy.client();
        for n in [0usize, 10, 100_000] {
            let response = client.get(&format!("/close/{n}"));
            assert_eq!(response.status, 200, "{}", response.head);
            assert!(matches!(response.framing, Framing::Chunked(_)), "{}", response.head);
            assert_eq!(response.body.len(), n);
            assert!(response.body.iter().all(|&b| b == b'x'));
        }
        assert_eq!(client.get("/").status, 200, "the client connection stays usable");

        let mut old = proxy.client();
        old.send(b"GET /close/100000 HTTP/1.0\r\n\r\n");
        let response = old.read_response();
        assert_eq!(response.framing, Framing::Close, "{}", response.head);
        assert_eq!(response.body.len(), 100_000);
    }
}
