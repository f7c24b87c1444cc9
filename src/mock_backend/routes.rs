//! The mock backend's answers, by route: `/health`, `/bytes/N`,
//! `/chunked/N`, `/close/N`, `/status/CODE`, `/delay/MS`, `/ws` (a
//! WebSocket echo), and any request body echoed back.

use std::io;
use std::time::Duration;

use monoio::io::Canceller;

use super::{BUFFERED_ECHO, CHUNKED, Conn, FILL, Request, Shared};
use crate::buffer::read_spare_cancelable;
use crate::http1::chunked::{LAST_CHUNK, write_chunk_size};
use crate::http1::rewrite::{push_decimal, reason_phrase};
use crate::http1::{BodyFraming, ChunkedDecoder};
use std::sync::atomic::Ordering;

/// Answers one request; `Ok(false)` when the connection must close.
pub(super) async fn answer(
    conn: &mut Conn,
    request: &Request,
    shared: &Shared,
) -> io::Result<bool> {
    if request.path == "/health" {
        shared
            .counters
            .health_checks
            .fetch_add(1, Ordering::Relaxed);
        write_head(conn, 200, Some(3), request, shared, &[]);
        conn.out.extend_from_slice(b"ok\n");
        conn.flush().await?;
        return Ok(true);
    }
    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    let (route, argument) = split_route(&request.path);
    let delay = if route == "delay" {
        Duration::from_millis(argument.unwrap_or(0))
    } else {
        shared.delay
    };
    if !delay.is_zero() && !delay_watching(conn, delay).await {
        shared.counters.abandoned.fetch_add(1, Ordering::Relaxed);
        return Ok(false);
    }
    if route == "ws" {
        return match &request.websocket_key {
            Some(key) => echo_websocket(conn, key).await.map(|()| false),
            None => {
                let message = b"GET /ws needs a WebSocket handshake\n";
                write_head(
                    conn,
                    426,
                    Some(message.len() as u64),
                    request,
                    shared,
                    b"Upgrade: websocket\r\nConnection: upgrade\r\n",
                );
                conn.out.extend_from_slice(message);
                conn.flush().await.map(|()| true)
            }
        };
    }
    let status = match (route, argument) {
        ("status", Some(code)) if (200..=599).contains(&code) => code as u16,
        _ => shared.status,
    };
    let bodiless = request.method == "HEAD" || status == 204 || status == 304;

    if !matches!(request.framing, BodyFraming::None | BodyFraming::Length(0)) {
        if request.expect_continue {
            conn.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            conn.flush().await?;
        }
        return echo(conn, request, shared, status).await;
    }
    match (route, argument) {
        ("bytes", Some(n)) => {
            write_head(conn, status, Some(n), request, shared, &[]);
            if !bodiless {
                send_fill(conn, n).await?;
            }
            conn.flush().await?;
        }
        ("chunked", Some(n)) => {
            write_head(conn, status, None, request, shared, CHUNKED);
            if !bodiless {
                let mut left = n as usize;
                while left > 0 {
                    let piece = left.min(1000);
                    write_chunk_size(&mut conn.out, piece);
                    conn.out.extend_from_slice(&FILL[..piece]);
                    conn.out.extend_from_slice(b"\r\n");
                    left -= piece;
                    if conn.out.len() >= 32 * 1024 {
                        conn.flush().await?;
                    }
                }
                conn.out.extend_from_slice(LAST_CHUNK);
            }
            conn.flush().await?;
        }
        ("close", Some(n)) => {
            write_head(
                conn,
                status,
                None,
                request,
                shared,
                b"Connection: close\r\n",
            );
            if !bodiless {
                send_fill(conn, n).await?;
            }
            conn.flush().await?;
            return Ok(false);
        }
        _ => {
            let body = format!(
                "backend={} method={} path={} request_id={}\n",
                shared.name, request.method, request.path, request.request_id
            );
            let length = if status == 204 || status == 304 {
                None
            } else {
                Some(body.len() as u64)
            };
            write_head(conn, status, length, request, shared, &[]);
            if !bodiless {
                conn.out.extend_from_slice(body.as_bytes());
            }
            conn.flush().await?;
        }
    }
    Ok(true)
}

/// Answers a WebSocket handshake with a 101 (RFC 6455 §4.2.2), then sends
/// back every byte it receives, unparsed, until the peer closes.
async fn echo_websocket(conn: &mut Conn, key: &str) -> io::Result<()> {
    use base64::Engine;
    let mut digest = sha1_smol::Sha1::new();
    digest.update(key.trim().as_bytes());
    digest.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(digest.digest().bytes());
    conn.out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    conn.out.extend_from_slice(accept.as_bytes());
    conn.out.extend_from_slice(b"\r\n\r\n");
    conn.flush().await?;
    loop {
        if !conn.buf.is_empty() {
            conn.out.append(&mut conn.buf);
            conn.flush().await?;
        }
        if conn.read_more().await? == 0 {
            return Ok(());
        }
    }
}

fn split_route(path: &str) -> (&str, Option<u64>) {
    let path = path.split('?').next().unwrap_or("");
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let route = parts.next().unwrap_or("");
    (route, parts.next().and_then(|n| n.parse().ok()))
}

fn write_head(
    conn: &mut Conn,
    status: u16,
    length: Option<u64>,
    request: &Request,
    shared: &Shared,
    extra: &[u8],
) {
    let out = &mut conn.out;
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: text/plain\r\nX-Backend: ");
    out.extend_from_slice(shared.name.as_bytes());
    out.extend_from_slice(b"\r\n");
    if !request.request_id.is_empty() {
        out.extend_from_slice(b"X-Request-Id: ");
        out.extend_from_slice(request.request_id.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(length) = length {
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(out, length);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
}

async fn send_fill(conn: &mut Conn, n: u64) -> io::Result<()> {
    let mut left = n;
    while left > 0 {
        let piece = left.min(FILL.len() as u64) as usize;
        conn.out.extend_from_slice(&FILL[..piece]);
        left -= piece as u64;
        if conn.out.len() >= 64 * 1024 || left == 0 {
            conn.flush().await?;
        }
    }
    Ok(())
}

/// Sleeps for `delay` while watching the connection; `false` if it closed.
/// The watching read is cancelled, not dropped, so no byte is lost.
async fn delay_watching(conn: &mut Conn, delay: Duration) -> bool {
    let deadline = monoio::time::Instant::now() + delay;
    loop {
        if conn.buf.len() == conn.buf.capacity() {
            // Body or pipelined bytes filled the buffer: just wait.
            monoio::time::sleep_until(deadline).await;
            return true;
        }
        let canceller = Canceller::new();
        let mut read = std::pin::pin!(read_spare_cancelable(
            &mut conn.stream,
            &mut conn.buf,
            canceller.handle()
        ));
        let result = monoio::select! {
            biased;
            done = &mut read => done,
            _ = monoio::time::sleep_until(deadline) => {
                canceller.cancel();
                read.await
            }
        };
        match result {
            Ok(0) => return false,
            Ok(_) => {}
            Err(error) if error.raw_os_error() == Some(libc::ECANCELED) => return true,
            Err(_) => return false,
        }
    }
}

/// Echoes the request body: whole with Content-Length when it is small,
/// streamed (same length, or re-chunked) when it is not.
async fn echo(
    conn: &mut Conn,
    request: &Request,
    shared: &Shared,
    status: u16,
) -> io::Result<bool> {
    match request.framing {
        BodyFraming::Length(length) if length as usize <= BUFFERED_ECHO => {
            while (conn.buf.len() as u64) < length {
                if conn.read_more().await? == 0 {
                    return Ok(false);
                }
            }
            write_head(conn, status, Some(length), request, shared, &[]);
            conn.out.extend(conn.buf.drain(..length as usize));
            conn.flush().await?;
            Ok(true)
        }
        BodyFraming::Length(length) => {
            write_head(conn, status, Some(length), request, shared, &[]);
            conn.flush().await?;
            let mut left = length;
            loop {
                let take = (conn.buf.len() as u64).min(left) as usize;
                conn.out.extend(conn.buf.drain(..take));
                left -= take as u64;
                conn.flush().await?;
                if left == 0 {
                    return Ok(true);
                }
                if conn.read_more().await? == 0 {
                    return Ok(false);
                }
            }
        }
        BodyFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            let mut body = Vec::new();
            let mut streaming = false;
            loop {
                let mut consumed = 0;
                while consumed < conn.buf.len() && !decoder.is_done() {
                    let Ok(step) = decoder.step(&conn.buf[consumed..]) else {
                        conn.out.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                        conn.flush().await?;
                        return Ok(false);
                    };
                    body.extend_from_slice(&conn.buf[consumed..][step.data]);
                    consumed += step.consumed;
                }
                conn.buf.drain(..consumed);
                if !streaming && (decoder.is_done() && body.len() <= BUFFERED_ECHO) {
                    write_head(conn, status, Some(body.len() as u64), request, shared, &[]);
                    conn.out.extend_from_slice(&body);
                    conn.flush().await?;
                    return Ok(true);
                }
                if !streaming && body.len() > BUFFERED_ECHO {
                    write_head(conn, status, None, request, shared, CHUNKED);
                    streaming = true;
                }
                if streaming {
                    if !body.is_empty() {
                        write_chunk_size(&mut conn.out, body.len());
                        conn.out.extend_from_slice(&body);
                        conn.out.extend_from_slice(b"\r\n");
                        body.clear();
                    }
                    if decoder.is_done() {
                        conn.out.extend_from_slice(LAST_CHUNK);
                    }
                    conn.flush().await?;
                    if decoder.is_done() {
                        return Ok(true);
                    }
                }
                if conn.read_more().await? == 0 {
                    return Ok(false);
                }
            }
        }
        BodyFraming::None => Ok(true),
    }
}
