//! Shared helpers for the integration tests: a proxy in front of mock
//! backends (everything on port 0), a raw HTTP/1.1 client over
//! `std::net::TcpStream` with read timeouts, misbehaving raw backends, and
//! `wait_until` for waiting on a condition with a deadline instead of sleeping.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use percore::config::DriverChoice;
use percore::mock_backend::{MockBackend, MockConfig};
use percore::pool::BackendId;
use percore::runtime::{self, DriverKind};
use percore::{Config, Server};

/// Every read or write a test makes gives up after this: a hang fails the
/// test instead of blocking it forever.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Worker cores of the proxy under test: more than one, so that requests
/// really cross cores (SO_REUSEPORT spreads connections over them).
pub const WORKERS: usize = 2;

// ---------------------------------------------------------------------------
// Drivers
// ---------------------------------------------------------------------------

/// Runs each listed test body once per monoio driver, as two `#[test]`s
/// named `<name>::uring` and `<name>::epoll`.
///
/// Where io_uring is unavailable, the `uring` case runs with `Auto` (which
/// falls back to epoll) and says so on stderr; set `PERCORE_REQUIRE_URING=1`
/// to make it fail instead (`.ci/run` sets it wherever the kernel allows
/// io_uring).
// Not every test file runs I/O tests under both drivers.
#[allow(unused_macros)]
macro_rules! both_drivers {
    ($( $(#[$meta:meta])* fn $name:ident($driver:ident) $body:block )*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                fn body($driver: percore::config::DriverChoice) $body

                $(#[$meta])*
                #[test]
                fn uring() {
                    body(crate::common::uring_choice())
                }

                $(#[$meta])*
                #[test]
                fn epoll() {
                    body(percore::config::DriverChoice::Epoll)
                }
            }
        )*
    };
}

/// `Uring` when this kernel allows io_uring, else `Auto`, reported on stderr
/// (never a silent pass under another driver's name).
pub fn uring_choice() -> DriverChoice {
    match runtime::probe(DriverChoice::Uring) {
        Ok(_) => DriverChoice::Uring,
        Err(error) => {
            if std::env::var_os("PERCORE_REQUIRE_URING").is_some() {
                panic!("PERCORE_REQUIRE_URING is set but {error}");
            }
            eprintln!("WARNING: {error}; the io_uring case runs with driver Auto (epoll fallback)");
            DriverChoice::Auto
        }
    }
}

/// The driver kind a choice resolves to on this machine.
pub fn driver_kind(choice: DriverChoice) -> DriverKind {
    runtime::probe(choice).expect("driver probe")
}

/// Logs to the test output when `RUST_LOG` is set (debugging aid).
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

// ---------------------------------------------------------------------------
// Proxy and mock backends
// ---------------------------------------------------------------------------

/// A config for tests: everything on 127.0.0.1 port 0, `WORKERS` cores, no
/// active health checks (their probes would count as backend requests);
/// `tests/health.rs` turns them on.
pub fn test_config(driver: DriverChoice, backends: Vec<String>) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        backends: backends.into_iter().map(Into::into).collect(),
        workers: Some(WORKERS),
        driver,
        connect_timeout: Duration::from_secs(2),
        mock_backends: vec![],
        health_checks: false,
        ..Config::default()
    }
}

/// Starts a proxy and checks that it runs the driver that was asked for.
pub fn start_server(config: Config) -> Server {
    init_logging();
    assert!(
        !config.backends.is_empty(),
        "tests always name their backends"
    );
    let choice = config.driver;
    let server = Server::start(config).expect("proxy starts");
    match (choice, server.driver()) {
        (DriverChoice::Epoll, DriverKind::Epoll)
        | (DriverChoice::Uring, DriverKind::Uring | DriverKind::UringTuned)
        | (DriverChoice::Auto, _) => {}
        (asked, got) => panic!("asked for driver {asked:?}, the proxy runs {got:?}"),
    }
    server
}

/// Starts a mock backend named `name` on port 0.
pub fn start_mock(driver: DriverChoice, name: &str) -> MockBackend {
    start_mock_with(driver, name, Duration::ZERO)
}

/// A mock backend that delays every answer (other than /health) by `delay`.
pub fn start_mock_with(driver: DriverChoice, name: &str, delay: Duration) -> MockBackend {
    let config = MockConfig {
        name: Some(name.to_string()),
        delay,
        driver: driver_kind(driver),
        ..MockConfig::new("127.0.0.1:0".parse().unwrap())
    };
    MockBackend::start(config).expect("mock backend starts")
}

/// A proxy in front of `count` mock backends named `mock0`, `mock1`, ...
pub struct Proxy {
    // Declared first so it is dropped first: the proxy closes its upstream
    // connections before the backends go away.
    pub server: Server,
    pub mocks: Vec<MockBackend>,
}

impl Proxy {
    pub fn start(driver: DriverChoice, mocks: usize) -> Proxy {
        Proxy::start_with(driver, mocks, |_| {})
    }

    /// As `start`, with the config adjusted by `tweak` (timeouts, strategy).
    pub fn start_with(
        driver: DriverChoice,
        mocks: usize,
        tweak: impl FnOnce(&mut Config),
    ) -> Proxy {
        let mocks: Vec<MockBackend> = (0..mocks)
            .map(|i| start_mock(driver, &format!("mock{i}")))
            .collect();
        let mut config = test_config(driver, mocks.iter().map(MockBackend::url).collect());
        tweak(&mut config);
        Proxy {
            server: start_server(config),
            mocks,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.proxy_addr()
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr())
    }

    /// Requests (other than /health) each mock has received.
    pub fn mock_requests(&self) -> Vec<u64> {
        self.mocks.iter().map(MockBackend::requests).collect()
    }

    pub fn total_mock_requests(&self) -> u64 {
        self.mock_requests().iter().sum()
    }

    pub fn mock_connections(&self) -> Vec<u64> {
        self.mocks
            .iter()
            .map(|m| m.counters().connections.load(Ordering::Relaxed))
            .collect()
    }

    /// The pool id of the backend at `url`.
    pub fn backend_id(&self, url: &str) -> BackendId {
        backend_id(&self.server, url)
    }
}

/// The pool id of the backend at `url`.
pub fn backend_id(server: &Server, url: &str) -> BackendId {
    server
        .control()
        .snapshot()
        .backends
        .iter()
        .find(|(backend, _)| backend.url == url)
        .map(|(backend, _)| backend.id)
        .unwrap_or_else(|| panic!("no backend {url} in the pool"))
}

/// Waits until every core routes by pool version `version`.
pub fn wait_applied(server: &Server, version: u64) {
    assert!(
        server
            .control()
            .wait_applied(version, Duration::from_secs(5)),
        "cores did not apply pool version {version} within 5 s"
    );
}

/// A URL nothing listens on: a port bound then released (connects are refused).
pub fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------

/// Polls `condition` until it holds (`true`) or `timeout` passes (`false`).
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 client
// ---------------------------------------------------------------------------

/// How a response body was delimited on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// No body by the rules (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    /// Chunked, with the chunk sizes seen (the last chunk's 0 excluded).
    Chunked(Vec<usize>),
    /// Read to the connection's close.
    Close,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub framing: Framing,
    /// The head as received, for failure messages.
    pub head: String,
}

impl Response {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether `Connection` lists `option`.
    pub fn connection_has(&self, option: &str) -> bool {
        self.headers_named("connection")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|o| o.trim().eq_ignore_ascii_case(option))
    }
}

/// A request that a test sends whole.
pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").into_bytes()
}

pub fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: test.local\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// Encodes `body` as chunks of the given sizes (cycled), then the last chunk.
pub fn chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].min(rest.len());
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
        i += 1;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A head of `start` (its first line and fields, CRLF-ended), then one
/// `X-Field-N: v` for each N in `numbers`, the empty line and `body`.
pub fn with_filler_fields(start: &[u8], numbers: std::ops::Range<usize>, body: &[u8]) -> Vec<u8> {
    let mut head = start.to_vec();
    for i in numbers {
        head.extend_from_slice(format!("X-Field-{i}: v\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(body);
    head
}

/// Deterministic, non-repeating-looking test payload.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ ((i >> 8) as u8))
        .collect()
}

/// `read`, retried when a signal interrupts it (std does not retry `read`).
pub fn read_retrying(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// How a connection ended when read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Eof,
    Reset,
}

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to proxy {addr}: {e}"));
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// A client over a stream connected (and set up) by the caller.
    pub fn from_stream(stream: TcpStream) -> Client {
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("writing to the proxy: {e}"));
    }

    /// Sends a GET and reads its response.
    pub fn get(&mut self, path: &str) -> Response {
        self.send(&get(path));
        self.read_response()
    }

    /// Sends a whole request and reads the (final) response.
    pub fn request(&mut self, request: &[u8]) -> Response {
        self.send(request);
        self.read_response()
    }

    /// Sends a whole request and reads its response, errors returned.
    pub fn try_request(&mut self, request: &[u8]) -> io::Result<Response> {
        self.stream.write_all(request)?;
        self.try_read_response(false)
    }

    /// Reads one response to a non-HEAD request; panics on timeout or EOF.
    pub fn read_response(&mut self) -> Response {
        self.try_read_response(false)
            .unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    /// Reads one response whose first bytes, `already`, the test read itself.
    pub fn read_response_after(&mut self, mut already: Vec<u8>) -> Response {
        already.append(&mut self.buf);
        self.buf = already;
        self.read_response()
    }

    /// Reads one response to a HEAD request (no body whatever the framing).
    pub fn read_head_response(&mut self) -> Response {
        self.try_read_response(true)
            .unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    /// Reads one response (interim 1xx ones included, as their own response).
    /// A timeout is `ErrorKind::TimedOut`; a connection that ends before the
    /// response is complete is `UnexpectedEof` or the reset error.
    pub fn try_read_response(&mut self, head_request: bool) -> io::Result<Response> {
        let head_end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at + 4;
            }
            if self.buf.len() > 64 * 1024 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response head over 64 KiB",
                ));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "EOF in response head after {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        };
        let head: Vec<u8> = self.buf.drain(..head_end).collect();
        let head = String::from_utf8(head).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, "response head is not UTF-8")
        })?;
        let mut lines = head[..head.len() - 4].split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_string();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
        let reason = parts.next().unwrap_or_default().to_string();
        if !version.starts_with("HTTP/1.") {
            return Err(invalid(format!("bad status line {status_line:?}")));
        }
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
            if name.is_empty()
                || name.contains([' ', '\t', '\n', '\r'])
                || value.contains(['\r', '\n'])
            {
                return Err(invalid(format!("bad header line {line:?}")));
            }
            headers.push((name.to_string(), value.trim().to_string()));
        }
        let mut response = Response {
            version,
            status,
            reason,
            headers,
            body: Vec::new(),
            framing: Framing::None,
            head,
        };

        if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(response);
        }
        let chunked = response.headers_named("transfer-encoding").iter().any(|v| {
            v.split(',')
                .any(|c| c.trim().eq_ignore_ascii_case("chunked"))
        });
        if chunked {
            let mut sizes = Vec::new();
            loop {
                let line = self.read_line()?;
                let size_text = line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size_text, 16)
                    .map_err(|_| invalid(format!("bad chunk size line {line:?}")))?;
                if size == 0 {
                    // Trailer section, then the final CRLF.
                    while !self.read_line()?.is_empty() {}
                    break;
                }
                sizes.push(size);
                self.read_exact_into(size, &mut response.body)?;
                if !self.read_line()?.is_empty() {
                    return Err(invalid("chunk data not followed by CRLF".into()));
                }
            }
            response.framing = Framing::Chunked(sizes);
        } else if let Some(length) = response.header("content-length") {
            let length: u64 = length
                .parse()
                .map_err(|_| invalid(format!("bad Content-Length {length:?}")))?;
            self.read_exact_into(length as usize, &mut response.body)?;
            response.framing = Framing::Length(length);
        } else {
            let mut body = std::mem::take(&mut self.buf);
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match read_retrying(&mut self.stream, &mut chunk) {
                    Ok(0) => break,
                    Ok(n) => body.extend_from_slice(&chunk[..n]),
                    Err(e) if is_timeout(&e) => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "timed out reading a close-delimited body",
                        ));
                    }
                    Err(e) => return Err(e),
                }
            }
            response.body = body;
            response.framing = Framing::Close;
        }
        Ok(response)
    }

    /// Reads the final response, returning the interim (1xx) ones before it.
    pub fn read_final_response(&mut self) -> (Vec<Response>, Response) {
        let mut interim = Vec::new();
        loop {
            let response = self.read_response();
            if (100..200).contains(&response.status) {
                interim.push(response);
            } else {
                return (interim, response);
            }
        }
    }

    /// Reads until the proxy closes the connection; the bytes and how it ended.
    /// Panics if it does not close within `IO_TIMEOUT`.
    pub fn read_to_end(&mut self) -> (Vec<u8>, End) {
        let mut bytes = std::mem::take(&mut self.buf);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match read_retrying(&mut self.stream, &mut chunk) {
                Ok(0) => return (bytes, End::Eof),
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                Err(e) if is_timeout(&e) => panic!(
                    "the proxy did not close the connection within {IO_TIMEOUT:?} (read {} bytes)",
                    bytes.len()
                ),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (bytes, End::Reset),
                Err(e) => panic!("reading to the end: {e}"),
            }
        }
    }

    /// Asserts that the proxy closes the connection with nothing more to read.
    pub fn expect_closed(&mut self) {
        let (bytes, _) = self.read_to_end();
        assert!(
            bytes.is_empty(),
            "expected the connection to close, got {} more bytes: {:?}",
            bytes.len(),
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        );
    }

    /// Whether the connection is still open: nothing to read within `wait`,
    /// and no EOF.
    pub fn is_open_after(&mut self, wait: Duration) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut byte = [0u8; 1];
        let open = match read_retrying(&mut self.stream, &mut byte) {
            Ok(0) => false,
            Ok(_) => {
                self.buf.push(byte[0]);
                true
            }
            Err(e) => is_timeout(&e),
        };
        self.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        open
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        match read_retrying(&mut self.stream, &mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Err(e) if is_timeout(&e) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no response within {IO_TIMEOUT:?}"),
            )),
            Err(e) => Err(e),
        }
    }

    fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(at) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..at + 2).collect();
                return Ok(String::from_utf8_lossy(&line[..at]).into_owned());
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF in a chunked body",
                ));
            }
        }
    }

    fn read_exact_into(&mut self, n: usize, out: &mut Vec<u8>) -> io::Result<()> {
        let start = out.len();
        while out.len() - start < n {
            if self.buf.is_empty() && self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {} of {n} body bytes", out.len() - start),
                ));
            }
            let take = self.buf.len().min(n - (out.len() - start));
            out.extend(self.buf.drain(..take));
        }
        Ok(())
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// Raw (misbehaving) backends
// ---------------------------------------------------------------------------

/// A request as a raw backend received it.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// The head, request line to the final CRLF CRLF included.
    pub head: String,
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

impl RawRequest {
    /// Every value of header `name` in the received head.
    pub fn headers_named(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers_named(name).into_iter().next()
    }
}

/// One accepted connection of a raw backend.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    requests: Arc<Mutex<Vec<RawRequest>>>,
}

impl RawConn {
    /// Reads one request (head and Content-Length or chunked body) and records
    /// it; `None` at EOF, on a timeout or an error.
    pub fn read_request(&mut self) -> Option<RawRequest> {
        let head_end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at + 4;
            }
            if !self.fill() {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let mut parts = head.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut request = RawRequest {
            head,
            method,
            path,
            body: Vec::new(),
        };
        // Recorded as soon as the head is in: a test counts requests that arrived.
        let index = {
            let mut requests = self.requests.lock().unwrap();
            requests.push(request.clone());
            requests.len() - 1
        };
        if let Some(length) = request.header("content-length") {
            let length: usize = length.parse().ok()?;
            while self.buf.len() < length {
                if !self.fill() {
                    return None;
                }
            }
            request.body = self.buf.drain(..length).collect();
        } else if request
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            loop {
                let line = self.read_line()?;
                let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
                if size == 0 {
                    while !self.read_line()?.is_empty() {}
                    break;
                }
                while self.buf.len() < size + 2 {
                    if !self.fill() {
                        return None;
                    }
                }
                request.body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
            }
        }
        self.requests.lock().unwrap()[index].body = request.body.clone();
        Some(request)
    }

    pub fn write(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Reads and discards until the peer closes (or the read timeout).
    pub fn drain_until_closed(&mut self) {
        while self.fill() {}
    }

    /// Closes with a TCP reset (SO_LINGER 0) instead of a FIN.
    pub fn reset(self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
        drop(self.stream);
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match read_retrying(&mut self.stream, &mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    fn read_line(&mut self) -> Option<String> {
        loop {
            if let Some(at) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..at + 2).collect();
                return Some(String::from_utf8_lossy(&line[..at]).into_owned());
            }
            if !self.fill() {
                return None;
            }
        }
    }
}

/// A backend made of a std `TcpListener` and one thread per connection, each
/// running `handler`. Records every request head it reads. Dropping it closes
/// its listener and every connection, and joins its threads.
pub struct RawBackend {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<RawRequest>>>,
    connections: Arc<AtomicUsize>,
    /// Handlers still running.
    active: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// A clone of each open connection, so that dropping the backend can
    /// close them; a handler's connection really closes when its clone here
    /// is dropped too, after the handler returns.
    open: Arc<Mutex<Vec<(usize, TcpStream)>>>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl RawBackend {
    pub fn start(handler: impl Fn(RawConn) + Send + Sync + 'static) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(handler);
        let acceptor = {
            let (requests, connections, active, stop, open, threads) = (
                requests.clone(),
                connections.clone(),
                active.clone(),
                stop.clone(),
                open.clone(),
                threads.clone(),
            );
            std::thread::Builder::new()
                .name(format!("raw-{}", addr.port()))
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::Acquire) {
                            return;
                        }
                        let Ok(stream) = stream else { continue };
                        let number = connections.fetch_add(1, Ordering::Relaxed);
                        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                        stream.set_nodelay(true).unwrap();
                        if let Ok(clone) = stream.try_clone() {
                            open.lock().unwrap().push((number, clone));
                        }
                        let conn = RawConn {
                            stream,
                            buf: Vec::new(),
                            requests: requests.clone(),
                        };
                        let handler = handler.clone();
                        active.fetch_add(1, Ordering::AcqRel);
                        let (active, open) = (active.clone(), open.clone());
                        let thread = std::thread::spawn(move || {
                            handler(conn);
                            // Last reference: this closes the socket (RST if the handler set linger 0).
                            open.lock().unwrap().retain(|(n, _)| *n != number);
                            active.fetch_sub(1, Ordering::AcqRel);
                        });
                        threads.lock().unwrap().push(thread);
                    }
                })
                .unwrap()
        };
        RawBackend {
            addr,
            requests,
            connections,
            active,
            stop,
            open,
            threads,
            acceptor: Some(acceptor),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests whose head arrived, in order.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Connections whose handler is still running (a finished handler's
    /// connection is closed).
    pub fn open_handlers(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    // Ready-made behaviours ------------------------------------------------

    /// Answers every request on a connection with `response` (keep-alive).
    pub fn respond_with(response: impl Into<Vec<u8>>) -> RawBackend {
        let response = response.into();
        RawBackend::start(move |mut conn| {
            while conn.read_request().is_some() {
                if !conn.write(&response) {
                    return;
                }
            }
        })
    }

    /// Answers `200 OK` with a short body and keeps the connection open.
    pub fn ok() -> RawBackend {
        RawBackend::respond_with(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..])
    }

    /// Reads the request, then closes without answering.
    pub fn close_before_answer() -> RawBackend {
        RawBackend::start(|mut conn| {
            let _ = conn.read_request();
        })
    }

    /// Reads the request and never answers (until the proxy closes).
    pub fn never_answer() -> RawBackend {
        RawBackend::start(|mut conn| {
            if conn.read_request().is_some() {
                conn.drain_until_closed();
            }
        })
    }

    /// Reads the request, sends `bytes`, then closes.
    pub fn answer_then_close(bytes: impl Into<Vec<u8>>) -> RawBackend {
        let bytes = bytes.into();
        RawBackend::start(move |mut conn| {
            if conn.read_request().is_some() {
                conn.write(&bytes);
            }
        })
    }

    /// Accepts, then resets the connection at once.
    pub fn reset_on_accept() -> RawBackend {
        RawBackend::start(|conn| conn.reset())
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for (_, stream) in self.open.lock().unwrap().iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let threads: Vec<_> = self.threads.lock().unwrap().drain(..).collect();
        for thread in threads {
            let _ = thread.join();
        }
    }
}
