//! 64 MiB bodies both ways through the proxy, content verified, within a
//! deadline: the proxy streams (it cannot buffer a whole body in its 16 KiB
//! buffers) and neither direction's flow control stalls the other.

#[macro_use]
mod common;

use common::*;
use std::io::Write;
use std::time::{Duration, Instant};

const SIZE: usize = 64 * 1024 * 1024;
/// Generous for an unoptimised build on two shared cores; a stall is caught
/// sooner by the client's read timeout.
const DEADLINE: Duration = Duration::from_secs(40);
/// A prime period, so the pattern never lines up with any buffer size.
const PERIOD: usize = 65_521;

fn block() -> Vec<u8> {
    pattern(2 * PERIOD)
}

/// Checks that `body` is the repeating pattern, by slices (memcmp, not a
/// byte loop: this is an unoptimised build).
fn is_pattern(body: &[u8], block: &[u8]) -> bool {
    body.chunks(PERIOD)
        .all(|piece| piece == &block[..piece.len()])
}

both_drivers! {
    fn upload_64_mib_is_echoed(driver) {
        let proxy = Proxy::start(driver, 1);
        let mut client = proxy.client();
        let started = Instant::now();
        client.send(format!("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes());
        // The mock echoes while it reads: write and read at the same time.
        let mut writer = client.stream.try_clone().unwrap();
        let block = block();
        let upload = {
            let block = block.clone();
            std::thread::spawn(move || {
                let mut sent = 0;
                while sent < SIZE {
                    let n = PERIOD.min(SIZE - sent);
                    writer.write_all(&block[..n])?;
                    sent += n;
                }
                Ok::<usize, std::io::Error>(sent)
            })
        };
        let response = client.read_response();
        let elapsed = started.elapsed();
        assert_eq!(upload.join().unwrap().expect("upload written"), SIZE);
        assert_eq!(response.status, 200, "{}", response.head);
        assert_eq!(response.body.len(), SIZE);
        assert!(is_pattern(&response.body, &block), "echoed body differs from what was sent");
        assert!(elapsed < DEADLINE, "64 MiB echo took {elapsed:?}");
        // The echo starts before the upload ends, so the proxy may close the
        // client connection afterwards; then it must have said so.
        if response.connection_has("close") {
            client.expect_closed();
            client = proxy.client();
        }
        assert_eq!(client.get("/after").status, 200);
    }

    fn download_64_mib(driver) {
        let proxy = Proxy::start(driver, 1);
        let mut client = proxy.client();
        let started = Instant::now();
        let response = client.get(&format!("/bytes/{SIZE}"));
        let elapsed = started.elapsed();
        assert_eq!(response.status, 200, "{}", response.head);
        assert_eq!(response.header("content-length"), Some(SIZE.to_string().as_str()));
        assert_eq!(response.body.len(), SIZE);
        let fill = vec![b'x'; 64 * 1024];
        assert!(response.body.chunks(fill.len()).all(|piece| piece == &fill[..piece.len()]), "body is not all 'x'");
        assert!(elapsed < DEADLINE, "64 MiB download took {elapsed:?}");
        assert_eq!(client.get("/after").status, 200);
    }

    fn chunked_download_8_mib(driver) {
        let proxy = Proxy::start(driver, 1);
        let mut client = proxy.client();
        let size = 8 * 1024 * 1024;
        let response = client.get(&format!("/chunked/{size}"));
        assert_eq!(response.status, 200);
        assert!(matches!(response.framing, Framing::Chunked(_)));
        assert_eq!(response.body.len(), size);
        assert!(response.body.iter().all(|&b| b == b'x'));
    }
}
