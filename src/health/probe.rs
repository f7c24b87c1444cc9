//! One active health probe: `GET <path>`, a pass being a `2xx` final
//! response within the timeout. The connection is kept for the next probe
//! when the answer's framing allows it (Content-Length, keep-alive): a new
//! connection per probe doubled the prober's CPU (the handshake and close on
//! both ends of a loopback connection are charged to the prober's thread).
//! A kept connection the backend closed meanwhile is replaced by a fresh one
//! within the same probe, so an idle-timeout on the backend never fails one.

use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::state::{ProbeFailure, ProbeResult};
use crate::http1::response::{self, ResponseFraming};

/// A health response (head and body) larger than this is read to its end
/// only to be judged; its connection is not kept.
const MAX_RESPONSE: usize = 16 * 1024;
/// Header lines a health response may carry.
const MAX_HEADERS: usize = 32;

/// Probes `addr` once, on `kept` if given; never fails, the failure is the
/// result. Returns the connection when it may serve the next probe.
pub async fn probe(
    kept: Option<TcpStream>,
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> (ProbeResult, Option<TcpStream>) {
    let at = SystemTime::now();
    let started = Instant::now();
    let attempt = async {
        if let Some(stream) = kept {
            match exchange(stream, request).await {
                // Closed while idle: not the backend's health, ask again.
                Err(Exchange::Unanswered) => {}
                done => return done,
            }
        }
        let stream = TcpStream::connect_addr(addr).await.map_err(io_failure)?;
        exchange(stream, request).await
    };
    let (outcome, reusable) = match monoio::time::timeout(timeout, attempt).await {
        Err(_) => (Err(ProbeFailure::Timeout), None),
        Ok(Ok((status, reusable))) => (judge(status), reusable),
        Ok(Err(Exchange::Failed(failure))) => (Err(failure), None),
        Ok(Err(Exchange::Unanswered)) => (
            Err(ProbeFailure::Io("closed before answering".into())),
            None,
        ),
    };
    let result = ProbeResult {
        outcome,
        latency: started.elapsed(),
        at,
    };
    (result, reusable)
}

/// The request a probe sends, built once.
pub fn request(authority: &[u8], path: &str) -> Vec<u8> {
    let mut request = Vec::with_capacity(64 + authority.len() + path.len());
    request.extend_from_slice(b"GET ");
    request.extend_from_slice(path.as_bytes());
    request.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    request.extend_from_slice(authority);
    request.extend_from_slice(b"\r\nUser-Agent: percore-health\r\n\r\n");
    request
}

fn judge(status: u16) -> Result<u16, ProbeFailure> {
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(ProbeFailure::Status(status))
    }
}

enum Exchange {
    /// Closed or reset before any response byte.
    Unanswered,
    Failed(ProbeFailure),
}

impl From<ProbeFailure> for Exchange {
    fn from(failure: ProbeFailure) -> Self {
        Exchange::Failed(failure)
    }
}

/// One request and its final response; the status and, if its framing
/// allows, the connection for the next probe.
async fn exchange(
    mut stream: TcpStream,
    request: &[u8],
) -> Result<(u16, Option<TcpStream>), Exchange> {
    let (result, _) = stream.write_all(request.to_vec()).await;
    result.map_err(|_| Exchange::Unanswered)?;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let read = read_more(&mut stream, &mut buf).await;
        if read == Some(0) || read.is_none() {
            return Err(if buf.is_empty() {
                Exchange::Unanswered
            } else {
                Exchange::Failed(ProbeFailure::Malformed)
            });
        }
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let head = match response::parse(&buf, &mut headers, false) {
            Ok(None) if buf.len() < MAX_RESPONSE => continue,
            Ok(Some(head)) if head.is_interim() => {
                let head_len = head.head_len;
                buf.drain(..head_len);
                continue;
            }
            Ok(Some(head)) => head,
            Ok(None) | Err(_) => return Err(ProbeFailure::Malformed.into()),
        };
        let (status, keep_alive, head_len) = (head.status, head.keep_alive, head.head_len);
        let body = match head.framing {
            ResponseFraming::None => 0,
            ResponseFraming::Length(length) if head_len + length as usize <= MAX_RESPONSE => {
                length as usize
            }
            // Judged by its status line; the body is not worth reading.
            _ => return Ok((status, None)),
        };
        while buf.len() < head_len + body {
            if !matches!(read_more(&mut stream, &mut buf).await, Some(1..)) {
                return Ok((status, None));
            }
        }
        let clean = keep_alive && buf.len() == head_len + body;
        return Ok((status, clean.then_some(stream)));
    }
}

/// Appends what one read returns; `None` on an error.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let chunk = Vec::with_capacity(2048);
    let (result, chunk) = stream.read(chunk).await;
    let read = result.ok()?;
    buf.extend_from_slice(&chunk[..read]);
    Some(read)
}

fn io_failure(error: std::io::Error) -> ProbeFailure {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => ProbeFailure::Refused,
        std::io::ErrorKind::TimedOut => ProbeFailure::Timeout,
        _ => ProbeFailure::Io(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_verdict() {
        assert_eq!(
            request(b"127.0.0.1:8082", "/health"),
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:8082\r\nUser-Agent: percore-health\r\n\r\n"
        );
        assert_eq!(judge(204), Ok(204));
        assert_eq!(judge(503), Err(ProbeFailure::Status(503)));
        assert_eq!(judge(301), Err(ProbeFailure::Status(301)));
    }
}
