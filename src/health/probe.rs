//! One active health probe: `GET <path>` on a fresh connection with
//! `Connection: close`, a pass being a 2xx status line within the timeout.
//! A small hand client: a probe needs only the status line, so it reads
//! until the first line ends and drops the connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::state::{ProbeFailure, ProbeResult};

/// A status line longer than this is malformed.
const MAX_STATUS_LINE: usize = 1024;

/// Probes `addr` once; never fails, the failure is the result.
pub async fn probe(addr: SocketAddr, authority: &[u8], path: &str, timeout: Duration) -> ProbeResult {
    let at = SystemTime::now();
    let started = Instant::now();
    let outcome = match monoio::time::timeout(timeout, exchange(addr, authority, path)).await {
        Err(_) => Err(ProbeFailure::Timeout),
        Ok(outcome) => outcome,
    };
    ProbeResult {
        outcome,
        latency: started.elapsed(),
        at,
    }
}

async fn exchange(addr: SocketAddr, authority: &[u8], path: &str) -> Result<u16, ProbeFailure> {
    let stream = TcpStream::connect_addr(addr).await.map_err(io_failure)?;
    let mut request = Vec::with_capacity(96 + path.len());
    request.extend_from_slice(b"GET ");
    request.extend_from_slice(path.as_bytes());
    request.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    request.extend_from_slice(authority);
    request.extend_from_slice(b"\r\nUser-Agent: percore-health\r\nConnection: close\r\n\r\n");
    let mut stream = stream;
    let (result, _) = stream.write_all(request).await;
    result.map_err(io_failure)?;
    let mut head = Vec::new();
    loop {
        let buf = Vec::with_capacity(512);
        let (result, buf) = stream.read(buf).await;
        let read = result.map_err(io_failure)?;
        if read == 0 {
            return parse_status_line(&head).ok_or(ProbeFailure::Malformed);
        }
        head.extend_from_slice(&buf[..read]);
        if head.contains(&b'\n') || head.len() > MAX_STATUS_LINE {
            let status = parse_status_line(&head).ok_or(ProbeFailure::Malformed)?;
            return if (200..300).contains(&status) {
                Ok(status)
            } else {
                Err(ProbeFailure::Status(status))
            };
        }
    }
}

fn io_failure(error: std::io::Error) -> ProbeFailure {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => ProbeFailure::Refused,
        std::io::ErrorKind::TimedOut => ProbeFailure::Timeout,
        _ => ProbeFailure::Io(error.to_string()),
    }
}

/// The status of `HTTP/1.x NNN ...` ending in a line feed (RFC 9112 §4).
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let end = head.iter().position(|&b| b == b'\n')?;
    let line = head[..end].strip_suffix(b"\r").unwrap_or(&head[..end]);
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ') {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503\r\n"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), None, "unterminated");
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 20x OK\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 OK\r\n"), None);
    }
}
