//! Mock backends: real HTTP/1.1 servers for the demo topology, the tests and
//! the benchmarks. `GET /health` answers 200; other requests get a short body
//! naming the backend and echoing method, path and X-Request-Id; a request
//! body is echoed back, streamed, so large bodies can be pushed through.
//!
//! Paths with test behaviours: `/bytes/N` (N bytes, Content-Length),
//! `/chunked/N` (N bytes, chunked), `/close/N` (N bytes, close-delimited),
//! `/status/CODE`, `/delay/MS`. Counters let tests see what reached it.
//!
//! It parses with percore's own `http1` framing rather than monoio-http,
//! whose codec buffers whole bodies: echoing a 1 GiB upload must stream.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use monoio::io::{AsyncWriteRentExt, Canceller};
use monoio::net::{TcpListener, TcpStream};

use crate::buffer::{read_spare, read_spare_cancelable};
use crate::http1::chunked::{LAST_CHUNK, write_chunk_size};
use crate::http1::rewrite::{push_decimal, reason_phrase};
use crate::http1::{BodyFraming, ChunkedDecoder, header_slots, request};
use crate::runtime::{self, DriverKind};

/// Bodies up to this size are read whole and answered with Content-Length;
/// larger ones are echoed while they arrive.
const BUFFERED_ECHO: usize = 64 * 1024;
const FILL: [u8; 16 * 1024] = [b'x'; 16 * 1024];
const CHUNKED: &[u8] = b"Transfer-Encoding: chunked\r\n";

#[derive(Debug, Clone)]
pub struct MockConfig {
    pub listen: SocketAddr,
    /// Defaults to `backend-PORT`.
    pub name: Option<String>,
    /// Delay before answering each request other than /health.
    pub delay: Duration,
    /// Status of answers to requests other than /health.
    pub status: u16,
    pub driver: DriverKind,
}

impl MockConfig {
    pub fn new(listen: SocketAddr) -> MockConfig {
        MockConfig {
            listen,
            name: None,
            delay: Duration::ZERO,
            status: 200,
            driver: DriverKind::Epoll,
        }
    }
}

/// What reached a mock backend.
#[derive(Debug, Default)]
pub struct MockCounters {
    /// Requests other than /health.
    pub requests: AtomicU64,
    pub health_checks: AtomicU64,
    pub connections: AtomicU64,
    /// Requests whose connection closed while the backend was still delaying.
    pub abandoned: AtomicU64,
}

pub struct MockBackend {
    addr: SocketAddr,
    name: String,
    counters: Arc<MockCounters>,
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    name: String,
    delay: Duration,
    status: u16,
    counters: Arc<MockCounters>,
    /// Open connections, so that stopping closes them.
    open: RefCell<HashSet<RawFd>>,
}

impl MockBackend {
    /// Binds (errors come back here) and serves on a thread of its own.
    pub fn start(config: MockConfig) -> io::Result<MockBackend> {
        let listener = std::net::TcpListener::bind(config.listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let name = config
            .name
            .clone()
            .unwrap_or_else(|| format!("backend-{}", addr.port()));
        let counters = Arc::new(MockCounters::default());
        let shutdown = Arc::new(AtomicBool::new(false));
        let shared = Shared {
            name: name.clone(),
            delay: config.delay,
            status: config.status,
            counters: counters.clone(),
            open: RefCell::default(),
        };
        let stop = shutdown.clone();
        let driver = config.driver;
        let thread = std::thread::Builder::new()
            .name(format!("mock-{}", addr.port()))
            .spawn(move || {
                let result =
                    runtime::block_on(driver, move || accept_loop(listener, Rc::new(shared), stop));
                if let Err(error) = result {
                    tracing::error!(%error, "mock backend could not start its runtime");
                }
            })?;
        Ok(MockBackend {
            addr,
            name,
            counters,
            shutdown,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn counters(&self) -> &MockCounters {
        &self.counters
    }

    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::Relaxed)
    }

    /// Stops accepting and closes every connection.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    /// Blocks until the backend stops (for `percore backend`).
    pub fn wait(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn stop_and_join(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.shutdown.store(true, Ordering::Release);
            // Wake the accept loop so it sees the flag.
            let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            let _ = thread.join();
        }
    }
}

impl Drop for MockBackend {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    shared: Rc<Shared>,
    shutdown: Arc<AtomicBool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "mock backend cannot register its listener");
            return;
        }
    };
    loop {
        let accepted = listener.accept().await;
        if shutdown.load(Ordering::Acquire) {
            break;
        }
        match accepted {
            Ok((stream, _)) => {
                shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                monoio::spawn(serve(stream, shared.clone()));
            }
            Err(_) => monoio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    // Stopped: close the listener and every connection (like a killed
    // server), and let the driver run their close operations.
    drop(listener);
    for &fd in shared.open.borrow().iter() {
        // SAFETY: fds leave the set before their streams are dropped.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !shared.open.borrow().is_empty() && std::time::Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(2)).await;
    }
    monoio::time::sleep(Duration::from_millis(10)).await;
}

/// Keeps a connection in `Shared::open` while it lives.
struct OpenGuard<'a> {
    shared: &'a Shared,
    fd: RawFd,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.shared.open.borrow_mut().remove(&self.fd);
    }
}

/// A parsed request, owned so the buffer can be reused while answering.
struct Request {
    method: String,
    path: String,
    request_id: String,
    framing: BodyFraming,
    keep_alive: bool,
    expect_continue: bool,
    /// A WebSocket handshake's Sec-WebSocket-Key, when the request is one.
    websocket_key: Option<String>,
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl Conn {
    async fn read_more(&mut self) -> io::Result<usize> {
        if self.buf.len() == self.buf.capacity() {
            self.buf.reserve(self.buf.capacity());
        }
        let end = self.buf.capacity();
        read_spare(&mut self.stream, &mut self.buf, end).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        let (result, out) = self.stream.write_all(std::mem::take(&mut self.out)).await;
        self.out = out;
        self.out.clear();
        result.map(drop)
    }
}

async fn serve(stream: TcpStream, shared: Rc<Shared>) {
    let fd = stream.as_raw_fd();
    shared.open.borrow_mut().insert(fd);
    let _open = OpenGuard {
        shared: &shared,
        fd,
    };
    let mut conn = Conn {
        stream,
        buf: Vec::with_capacity(16 * 1024),
        out: Vec::with_capacity(16 * 1024),
    };
    loop {
        let request = loop {
            let mut headers = header_slots();
            match request::parse(&conn.buf, &mut headers) {
                Ok(Some(head)) => {
                    let request = Request {
                        method: head.method.to_string(),
                        path: head.path.to_string(),
                        request_id: crate::http1::rewrite::find_request_id(head.headers)
                            .map(|id| String::from_utf8_lossy(id).into_owned())
                            .unwrap_or_default(),
                        framing: head.framing,
                        keep_alive: head.keep_alive,
                        expect_continue: head.headers.iter().any(|h| {
                            h.name.eq_ignore_ascii_case("expect")
                                && h.value.eq_ignore_ascii_case(b"100-continue")
                        }),
                        websocket_key: head
                            .headers
                            .iter()
                            .find(|h| {
                                head.websocket && h.name.eq_ignore_ascii_case("sec-websocket-key")
                            })
                            .map(|h| String::from_utf8_lossy(h.value).into_owned()),
                    };
                    let head_len = head.head_len;
                    conn.buf.drain(..head_len);
                    break request;
                }
                Ok(None) => {}
                Err(error) => {
                    conn.out.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    let _ = conn.flush().await;
                    tracing::debug!(%error, "mock backend refused a request");
                    return;
                }
            }
            match conn.read_more().await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        };
        match answer(&mut conn, &request, &shared).await {
            Ok(true) if request.keep_alive => {}
            _ => return,
        }
    }
}

/// Answers one request; `Ok(false)` when the connection must close.
async fn answer(conn: &mut Conn, request: &Request, shared: &Shared) -> io::Result<bool> {
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
