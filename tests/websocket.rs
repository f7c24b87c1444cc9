//! WebSocket tunnelling: a handshake is forwarded with its upgrade fields,
//! and after the backend's 101 bytes flow both ways unchanged; any other
//! answer keeps the connection HTTP, a 101 nobody asked for is a 502, other
//! upgrades are not offered, and a silent tunnel closes after its timeout.

#[macro_use]
mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

const HANDSHAKE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// Reads a response head from `stream`; returns it and the bytes after it.
fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            let rest = buf.split_off(at + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
        let n = stream.read(&mut chunk).expect("reading a response head");
        assert!(
            n > 0,
            "EOF before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn has_field(head: &str, name: &str, value: &str) -> bool {
    head.lines().any(|line| {
        line.split_once(':').is_some_and(|(n, v)| {
            n.eq_ignore_ascii_case(name) && v.trim().eq_ignore_ascii_case(value)
        })
    })
}

both_drivers! {
    fn a_websocket_echo_carries_a_mebibyte_each_way_intact(driver) {
        let mock = start_mock(driver, "ws");
        let server = start_server(test_config(driver, vec![mock.url()]));
        let mut stream = TcpStream::connect(server.proxy_addr()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Bytes of the new protocol sent right behind the handshake must
        // follow it through the tunnel.
        let mut first = HANDSHAKE.to_vec();
        first.extend_from_slice(b"early");
        stream.write_all(&first).unwrap();
        let (head, mut received) = read_head(&mut stream);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(has_field(&head, "upgrade", "websocket"), "{head}");
        assert!(has_field(&head, "connection", "upgrade"), "{head}");
        // RFC 6455 §1.3's example key and its accept value.
        assert!(has_field(&head, "sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");

        let payload = pattern(1 << 20);
        let writer = {
            let mut stream = stream.try_clone().unwrap();
            let payload = payload.clone();
            std::thread::spawn(move || {
                for piece in payload.chunks(10_000) {
                    stream.write_all(piece).unwrap();
                }
                stream.shutdown(Shutdown::Write).unwrap();
            })
        };
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = stream.read(&mut chunk).expect("reading the echo");
            if n == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..n]);
        }
        writer.join().unwrap();
        let mut expected = b"early".to_vec();
        expected.extend_from_slice(&payload);
        assert_eq!(received.len(), expected.len(), "echoed bytes");
        assert!(received == expected, "the echo differs from what was sent");
    }

    fn a_backend_declining_the_upgrade_leaves_the_connection_http(driver) {
        let backend = RawBackend::ok();
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        let response = client.request(HANDSHAKE);
        assert_eq!(response.status, 200, "{}", response.head);
        assert!(!response.has_header("upgrade"), "{}", response.head);
        // Still HTTP both ways: the next request is parsed and forwarded as one.
        assert_eq!(client.get("/after").status, 200);
        let requests = backend.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].header("upgrade").as_deref(), Some("websocket"));
        assert_eq!(requests[1].path, "/after");
    }

    fn a_101_nobody_offered_is_a_502(driver) {
        let backend = RawBackend::respond_with(&b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nframes"[..]);
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        let response = client.get("/plain");
        assert_eq!(response.status, 502, "{}", response.head);
        assert!(!response.body_text().contains("frames"));
    }

    fn other_upgrades_are_not_offered_to_the_backend(driver) {
        let backend = RawBackend::ok();
        let server = start_server(test_config(driver, vec![backend.url()]));
        let mut client = Client::connect(server.proxy_addr());
        let h2c = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
        assert_eq!(client.request(h2c).status, 200);
        // A websocket offer on a request with a body is not one either.
        let with_body = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\nhi";
        assert_eq!(client.request(with_body).status, 200);
        for request in backend.requests() {
            assert_eq!(request.header("upgrade"), None, "{request:?}");
            assert_eq!(request.header("http2-settings"), None, "{request:?}");
            assert!(request.header("connection").is_none_or(|c| !c.to_ascii_lowercase().contains("upgrade")), "{request:?}");
        }
    }

    fn a_silent_tunnel_is_closed_after_its_idle_timeout(driver) {
        let mock = start_mock(driver, "ws");
        let mut config = test_config(driver, vec![mock.url()]);
        config.tunnel_idle_timeout = Duration::from_millis(300);
        let server = start_server(config);
        let mut stream = TcpStream::connect(server.proxy_addr()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(HANDSHAKE).unwrap();
        let (head, _) = read_head(&mut stream);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        // Traffic keeps it open past the timeout ...
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(150));
            stream.write_all(b"ping").unwrap();
            let mut echo = [0u8; 4];
            stream.read_exact(&mut echo).unwrap();
            assert_eq!(&echo, b"ping");
        }
        // ... silence closes it.
        let silent_since = Instant::now();
        let mut byte = [0u8; 1];
        let n = stream.read(&mut byte).unwrap_or(0);
        assert_eq!(n, 0, "the tunnel sent bytes instead of closing");
        let waited = silent_since.elapsed();
        assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(5), "closed after {waited:?}");
    }
}
