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

use monoio::io::AsyncWriteRentExt;
use monoio::net::{TcpListener, TcpStream};

use crate::buffer::read_spare;
use crate::http1::{BodyFraming, header_slots, request};
use crate::runtime::{self, DriverKind};

mod routes;

use routes::answer;

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
                let result = runtime::block_on(driver, runtime::WORKER_RING, move || {
                    accept_loop(listener, Rc::new(shared), stop)
                });
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
