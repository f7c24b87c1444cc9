//! The data path: one task per client connection, on the core that accepted it.
//!
//! Per request: read and validate the head (`http1::request`), pick a backend
//! (`pool`), take an idle upstream connection or open one (`upstream`), then
//! run the upload (client → backend body) and the download (backend → client
//! response) concurrently, so that neither side's flow control can stall the
//! other. Everything a request touches lives in this core: no lock, no atomic
//! read-modify-write, and only pooled buffers.
//!
//! Failures before the response starts become a status code (502, 503, 504);
//! after it starts, the client connection is aborted, never ended cleanly on a
//! cut body. A client that disappears takes its upstream exchange with it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent, Canceller, Splitable,
};
use monoio::net::TcpStream;
use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};

use crate::buffer::BufferPool;
use crate::failure_log::FailureLog;
use crate::http1::chunked::{ChunkSizeLine, LAST_CHUNK, write_chunk_size};
use crate::http1::rewrite::{self, ClientBody, ForwardFields};
use crate::http1::{
    BodyFraming, ChunkedDecoder, ResponseFraming, Version, header_slots, request, response,
};
use crate::metrics::ActiveGuard;
use crate::pool::{BackendId, ControlPlane, LocalBackend, LocalPool, MAX_ATTEMPTS};
use crate::ticker::{TICK, Ticker};
use crate::upstream::{self, UpstreamConn};

/// Data-path settings, the same on every core.
#[derive(Debug, Clone, Copy)]
pub struct ProxySettings {
    /// Opening a backend connection; on expiry the next backend is tried.
    pub connect_timeout: Duration,
    /// Waiting for the response head, and between reads of a response body (504).
    pub response_timeout: Duration,
    /// From the first byte of a request head to its end (408).
    pub request_head_timeout: Duration,
    /// A client keep-alive connection waiting for its next request.
    pub idle_timeout: Duration,
    /// An idle pooled upstream connection is closed after this.
    pub upstream_idle_timeout: Duration,
    /// Idle upstream connections kept per backend per core.
    pub max_idle_per_backend: usize,
    /// Size of each pooled I/O buffer, and so the largest request head.
    pub buffer_size: usize,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            request_head_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            upstream_idle_timeout: Duration::from_secs(30),
            max_idle_per_backend: 1024,
            buffer_size: 16 * 1024,
        }
    }
}

/// A client connection idle this long is parked: its serving task (a few KB)
/// ends and a small one waits for the next request, so that thousands of
/// idle keep-alive connections cost little memory. Busy ones never park.
const PARK_AFTER: Duration = Duration::from_millis(250);
const PARK_TICKS: u32 = (PARK_AFTER.as_millis() / TICK.as_millis()) as u32;
/// Per-connection buffer for the wait between requests; a request head that
/// does not fit continues in a pooled buffer (nginx's
/// client_header_buffer_size is 1 KiB too).
const IDLE_BUFFER: usize = 1024;
/// A parked connection's buffer: the first bytes of a request wake it, the
/// rest is read into a pooled buffer.
const PARKED_BUFFER: usize = 128;

/// While a slow backend thinks, the client connection is watched for a close
/// (so the exchange is abandoned at once). Watching costs two operations (a
/// read and its cancellation), so it starts only once a response is this late
/// (20 to 21 ticks, 100-105 ms). Queueing under load must not trigger it:
/// with 5 ms, 1,000 connections at saturation (responses 30-60 ms late)
/// watched nearly every request, 5.55 io_uring operations per request
/// instead of about 4.
const WATCH_TICKS: u32 = 20;

/// Response bodies are relayed through buffers of this size: a 64 KiB body
/// and its head take one read and one write (with 64 KiB exactly, the head
/// pushed the body's last bytes into a second read and write: 6.1 io_uring
/// operations per 64 KiB response instead of 4.8).
const RELAY_BUFFER: usize = 68 * 1024;
/// Free space kept in front of the backend's bytes for the client's head.
const HEADROOM: usize = 1024;
/// Bodies up to this size are copied after the head; larger ones get the head
/// moved in front of them instead.
const COALESCE_COPY_MAX: usize = 2048;

/// Room before a relayed read for its chunk-size line (hex digits and CRLF).
const CHUNK_SIZE_ROOM: usize = 16;

/// Free buffers a core keeps of each kind after a burst, until `trim`.
/// With 64 kept, 1,000 concurrent 64 KiB responses kept allocating and
/// faulting in fresh buffers: 7,631 minor faults in 4 s of wrk -c1000
/// against 2,649 with this cap.
const MAX_FREE_BUFFERS: usize = 1024;

/// 1xx responses relayed before the final one; more is a broken backend.
const MAX_INTERIM: usize = 16;

/// Everything a core's connections share.
pub struct CoreContext {
    pub pool: Rc<LocalPool>,
    /// Buffers for backend responses (`RELAY_BUFFER` plus headroom).
    relay_buffers: BufferPool,
    /// Client connections open on this core, so shutdown can close them,
    /// with the idle deadline of those that are parked: a sweep closes the
    /// expired ones, so a parked connection needs no timer of its own (a
    /// monoio timer is 640 bytes, twice the rest of a parked connection).
    open_connections: RefCell<HashMap<RawFd, OpenConnection>>,
    parked_total: Cell<u64>,
    pub plane: Arc<ControlPlane>,
    pub settings: ProxySettings,
    /// Coarse timers for the waits every request makes (see `ticker`).
    pub ticker: Rc<Ticker>,
    pub buffers: BufferPool,
    request_seq: Cell<u64>,
    request_id_prefix: u32,
    failure_log: FailureLog,
}

impl CoreContext {
    pub fn new(
        pool: Rc<LocalPool>,
        plane: Arc<ControlPlane>,
        settings: ProxySettings,
    ) -> Rc<CoreContext> {
        let started =
            plane.started.elapsed().as_nanos() as u32 ^ std::process::id().rotate_left(16);
        Rc::new(CoreContext {
            open_connections: RefCell::new(HashMap::new()),
            parked_total: Cell::new(0),
            relay_buffers: BufferPool::new(RELAY_BUFFER + HEADROOM, MAX_FREE_BUFFERS),
            buffers: BufferPool::new(settings.buffer_size, MAX_FREE_BUFFERS),
            pool,
            plane,
            settings,
            ticker: Ticker::new(),
            request_seq: Cell::new(0),
            request_id_prefix: started ^ unix_seconds(),
            failure_log: FailureLog::default(),
        })
    }

    fn core(&self) -> usize {
        self.pool.core()
    }

    /// Shuts down every open client connection: their pending reads end
    /// and their tasks finish, closing the sockets.
    pub fn close_connections(&self) {
        for &fd in self.open_connections.borrow().keys() {
            // SAFETY: the fd stays open until its Connection is dropped, which
            // removes it from this set first; shutdown(2) does not close it.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }

    pub fn open_connections(&self) -> usize {
        self.open_connections.borrow().len()
    }

    /// Shuts down parked connections idle past their deadline (their parked
    /// read ends and they close), and resets those whose client has taken no
    /// response bytes for the idle timeout (their pending write fails), as
    /// nginx's `send_timeout` does. Called once a second by the core's sweep.
    ///
    /// A write counts as moving while it is not the one seen last time, or
    /// the socket's unsent queue changed: one write can wait on a large part
    /// of the send buffer draining, so a client reading slowly but steadily
    /// is not reset.
    pub fn close_expired(&self, now: Instant) {
        let send_timeout = self.settings.idle_timeout;
        for (&fd, open) in self.open_connections.borrow_mut().iter_mut() {
            if open.parked_until.is_some_and(|deadline| deadline <= now) {
                // SAFETY: as in `close_connections`.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
            let writes = open.writes.get();
            if writes % 2 == 0 {
                open.write_seen = None;
                continue;
            }
            let unsent = unsent_bytes(fd);
            match open.write_seen {
                Some(seen) if seen.writes == writes && seen.unsent == unsent => {
                    if now.saturating_duration_since(seen.at) >= send_timeout {
                        reset_connection(fd);
                    }
                }
                _ => {
                    open.write_seen = Some(WriteSeen {
                        writes,
                        unsent,
                        at: now,
                    })
                }
            }
        }
    }

    /// Frees the buffers that no connection needed in the last interval;
    /// returns the bytes freed.
    pub fn trim_buffers(&self) -> usize {
        self.relay_buffers.trim() + self.buffers.trim()
    }

    /// Connections parked on this core since it started.
    pub fn parked_total(&self) -> u64 {
        self.parked_total.get()
    }

    fn set_parked(&self, fd: RawFd, deadline: Option<Instant>) {
        self.parked_total
            .set(self.parked_total.get() + u64::from(deadline.is_some()));
        if let Some(entry) = self.open_connections.borrow_mut().get_mut(&fd) {
            entry.parked_until = deadline;
        }
    }
}

/// What the core's sweep knows of an open client connection.
struct OpenConnection {
    /// While parked: when its idle timeout ends.
    parked_until: Option<Instant>,
    /// The connection's write count (see `ClientOutput`).
    writes: Rc<Cell<u64>>,
    /// A pending write as the sweep last saw it move.
    write_seen: Option<WriteSeen>,
}

#[derive(Clone, Copy)]
struct WriteSeen {
    writes: u64,
    unsent: libc::c_int,
    at: Instant,
}

/// The client connection's write half. Its write count is shared with the
/// core's sweep, which resets a client that stops reading: one look a
/// second instead of a timer per write.
struct ClientOutput {
    wr: TcpOwnedWriteHalf,
    /// Incremented as each write starts and as it ends (or is dropped):
    /// odd while one is pending.
    writes: Rc<Cell<u64>>,
}

impl ClientOutput {
    async fn write_all<T: IoBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        struct Pending<'a>(&'a Cell<u64>);
        impl Drop for Pending<'_> {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        self.writes.set(self.writes.get() + 1);
        let _pending = Pending(&self.writes);
        self.wr.write_all(buf).await
    }
}

fn unix_seconds() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

/// Serves one client connection until it closes, fails or times out.
pub async fn serve_client(stream: TcpStream, peer: SocketAddr, core: Rc<CoreContext>) {
    // Heads and small bodies are written whole; Nagle would only delay them.
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let (rd, wr) = stream.into_split();
    core.plane
        .workers
        .core(core.core())
        .active_connections
        .add(1);
    let writes = Rc::new(Cell::new(0));
    core.open_connections.borrow_mut().insert(
        fd,
        OpenConnection {
            parked_until: None,
            writes: writes.clone(),
            write_seen: None,
        },
    );
    let conn = Connection {
        fd,
        input: ClientInput {
            rd,
            buf: Vec::new(),
            pos: 0,
            idle_buf: Vec::new(),
        },
        output: ClientOutput { wr, writes },
        client_ip: peer.ip().to_canonical().to_string().into_boxed_str(),
        request_id: Vec::new(),
        up_head: Vec::new(),
        canceller: Canceller::new(),
        core,
    };
    // A new connection starts parked: until its first bytes arrive it costs
    // a small task, not a serving one.
    let timeout = conn.core.settings.idle_timeout;
    park(conn, timeout).await;
}

/// Serves requests until the connection closes, or idles long enough to be
/// parked: then this (large) task ends and a small one waits for the next
/// request, so idle keep-alive connections hold little memory.
async fn serve(mut conn: Connection) {
    loop {
        if conn.input.pending().is_empty() {
            match conn.wait_for_request().await {
                Wait::Data => {}
                Wait::Closed => return,
                Wait::Park => {
                    let timeout = conn.core.settings.idle_timeout.saturating_sub(PARK_AFTER);
                    monoio::spawn(park(conn, timeout));
                    return;
                }
            }
        }
        if !conn.handle_request().await {
            return;
        }
    }
}

/// A parked connection: no pooled buffer, a small read waits for the next
/// request (for at most `timeout`), then a serving task resumes with the
/// bytes that arrived.
async fn park(mut conn: Connection, timeout: Duration) {
    let core = conn.core.clone();
    conn.up_head = Vec::new();
    conn.request_id = Vec::new();
    conn.input.idle_buf = Vec::with_capacity(PARKED_BUFFER);
    core.set_parked(conn.fd, Some(Instant::now() + timeout));
    let n = match conn.input.read_idle().await {
        Ok(n) if n > 0 => n,
        _ => return,
    };
    core.set_parked(conn.fd, None);
    conn.input.resume(&core.buffers, n);
    conn.input.idle_buf = Vec::with_capacity(IDLE_BUFFER);
    // Boxed to break the type cycle serve -> park -> serve; once per wake-up.
    let resumed: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> = Box::pin(serve(conn));
    monoio::spawn(resumed);
}

enum Wait {
    Data,
    Closed,
    Park,
}

/// Bytes read from the client; `buf[pos..]` is not consumed yet.
struct ClientInput {
    rd: TcpOwnedReadHalf,
    /// A pooled buffer while a request is being read or forwarded; empty
    /// (given back to the core's pool) while the connection is idle.
    buf: Vec<u8>,
    pos: usize,
    /// The connection's own small buffer for waiting between requests, so an
    /// idle keep-alive connection holds 1 KiB rather than a pooled buffer.
    idle_buf: Vec<u8>,
}

impl ClientInput {
    /// Idle: gives the pooled buffer back (nothing is pending in it).
    fn release(&mut self, pool: &BufferPool) {
        pool.give(std::mem::take(&mut self.buf));
        self.pos = 0;
    }

    /// Moves what `read_idle` received into a pooled buffer.
    fn resume(&mut self, pool: &BufferPool, n: usize) {
        self.buf = pool.take();
        self.buf.extend_from_slice(&self.idle_buf[..n]);
        self.idle_buf.clear();
    }

    /// Reads the first bytes of the next request into the small buffer.
    async fn read_idle(&mut self) -> io::Result<usize> {
        let (result, idle_buf) = self.rd.read(std::mem::take(&mut self.idle_buf)).await;
        self.idle_buf = idle_buf;
        result
    }

    /// As `read_idle`, cancellable without losing bytes.
    async fn read_idle_cancelable(&mut self, cancel: CancelHandle) -> io::Result<usize> {
        let (result, idle_buf) = self
            .rd
            .cancelable_read(std::mem::take(&mut self.idle_buf), cancel)
            .await;
        self.idle_buf = idle_buf;
        result
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    fn is_full(&self) -> bool {
        self.pos == 0 && self.buf.len() == self.buf.capacity()
    }

    /// Moves pending bytes to the front when the free tail is short.
    fn make_room(&mut self) {
        if self.pos > 0 && self.buf.capacity() - self.buf.len() < self.buf.capacity() / 4 {
            self.buf.copy_within(self.pos.., 0);
            self.buf.truncate(self.buf.len() - self.pos);
            self.pos = 0;
        }
    }

    /// Reads more bytes after the pending ones; `Ok(0)` is EOF.
    async fn read_more(&mut self) -> io::Result<usize> {
        self.make_room();
        let buf = std::mem::take(&mut self.buf);
        let (len, cap) = (buf.len(), buf.capacity());
        let (result, slice) = self.rd.read(buf.slice_mut(len..cap)).await;
        self.buf = slice.into_inner();
        result
    }

    /// As `read_more`, but cancellable without losing bytes: a cancelled read
    /// returns `ECANCELED` with the buffer (and any bytes that raced in).
    async fn read_more_cancelable(&mut self, cancel: CancelHandle) -> io::Result<usize> {
        self.make_room();
        let buf = std::mem::take(&mut self.buf);
        let (len, cap) = (buf.len(), buf.capacity());
        let (result, slice) = self
            .rd
            .cancelable_read(buf.slice_mut(len..cap), cancel)
            .await;
        self.buf = slice.into_inner();
        result
    }
}

struct Connection {
    fd: RawFd,
    input: ClientInput,
    output: ClientOutput,
    client_ip: Box<str>,
    /// The current request's id, sent upstream and returned to the client.
    request_id: Vec<u8>,
    /// The head to send upstream, kept whole so a safe request can be resent.
    up_head: Vec<u8>,
    /// Cancels this connection's idle read or client watch; replaced after use.
    canceller: Canceller,
    core: Rc<CoreContext>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.core.buffers.give(std::mem::take(&mut self.input.buf));
        self.core
            .plane
            .workers
            .core(self.core.core())
            .active_connections
            .sub(1);
        self.core.open_connections.borrow_mut().remove(&self.fd);
    }
}

/// What is known of a request once its head is read and a backend picked.
struct Plan {
    framing: BodyFraming,
    version: Version,
    keep_alive: bool,
    is_head: bool,
    expect_continue: bool,
    /// Safe to send again after a reused connection failed: idempotent and bodiless.
    retryable: bool,
    first_pick: Option<Rc<LocalBackend>>,
    /// Length of the head in `up_head`, before any coalesced body bytes.
    head_len: usize,
}

impl Plan {
    fn has_body(&self) -> bool {
        !matches!(self.framing, BodyFraming::None | BodyFraming::Length(0))
    }
}

enum Prepared {
    Ready(Plan),
    Incomplete,
    Refuse(request::RequestError),
    /// An OPTIONS with Max-Forwards: 0, answered here.
    AnswerOptions {
        keep_alive: bool,
    },
}

/// How an exchange ended.
enum Outcome {
    /// The response was relayed in full.
    Relayed { keep_client: bool },
    /// Nothing reached the client yet: answer with this status.
    Failed {
        status: u16,
        message: &'static str,
        keep_client: bool,
    },
    /// The client is gone, or the response was cut after it started.
    Abort,
}

impl Connection {
    /// Waits for the first bytes of the next request.
    async fn wait_for_request(&mut self) -> Wait {
        let core = self.core.clone();
        self.input.release(&core.buffers);
        let idle_timeout = core.settings.idle_timeout;
        if idle_timeout <= PARK_AFTER {
            return match monoio::time::timeout(idle_timeout, self.input.read_idle()).await {
                Ok(Ok(n)) if n > 0 => {
                    self.input.resume(&core.buffers, n);
                    Wait::Data
                }
                _ => Wait::Closed,
            };
        }
        let cancel = self.canceller.handle();
        let result = {
            let mut read = std::pin::pin!(self.input.read_idle_cancelable(cancel));
            monoio::select! {
                biased;
                result = &mut read => result,
                _ = core.ticker.wait(PARK_TICKS) => {
                    self.canceller = std::mem::take(&mut self.canceller).cancel();
                    read.await
                }
            }
        };
        match result {
            Ok(n) if n > 0 => {
                self.input.resume(&core.buffers, n);
                Wait::Data
            }
            Err(error) if error.raw_os_error() == Some(libc::ECANCELED) => Wait::Park,
            _ => Wait::Closed,
        }
    }

    /// Reads, forwards and answers one request; `false` to close the connection.
    async fn handle_request(&mut self) -> bool {
        self.request_id.clear();
        let mut head_deadline: Option<Instant> = None;
        let plan = loop {
            match self.prepare() {
                Prepared::Ready(plan) => break plan,
                Prepared::Refuse(error) => {
                    self.count_request();
                    // Its Display is the client-facing sentence (refusals only).
                    self.respond_local(error.status(), &error.to_string(), true)
                        .await;
                    return false;
                }
                Prepared::AnswerOptions { keep_alive } => {
                    self.count_request();
                    let message = "OPTIONS answered by percore (Max-Forwards: 0)";
                    return self.respond_local(200, message, !keep_alive).await && keep_alive;
                }
                Prepared::Incomplete => {}
            }
            if self.input.is_full() {
                self.count_request();
                // The request line alone does not fit: its target is too long
                // (RFC 9112 §3: 414); otherwise the header section is (431).
                if memchr::memchr(b'\n', self.input.pending()).is_none() {
                    self.respond_local(414, "request target too long", true)
                        .await;
                } else {
                    self.respond_local(431, "request head too large", true)
                        .await;
                }
                return false;
            }
            let deadline = *head_deadline
                .get_or_insert_with(|| Instant::now() + self.core.settings.request_head_timeout);
            match monoio::time::timeout_at(deadline.into(), self.input.read_more()).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return false,
                Err(_) => {
                    self.count_request();
                    self.respond_local(408, "request head not received in time", true)
                        .await;
                    return false;
                }
            }
        };
        self.count_request();
        match self.exchange(&plan).await {
            Outcome::Relayed { keep_client } => keep_client,
            Outcome::Failed {
                status,
                message,
                keep_client,
            } => self.respond_local(status, message, !keep_client).await && keep_client,
            Outcome::Abort => {
                // A reset, not a FIN: a close-delimited body must not look complete.
                reset_connection(self.fd);
                false
            }
        }
    }

    /// Counts a request this core answered (forwarded or refused).
    fn count_request(&self) {
        self.core
            .plane
            .workers
            .core(self.core.core())
            .requests
            .add(1);
    }

    /// Parses the pending head, picks a first backend and writes the upstream
    /// head. Synchronous: the parsed head borrows the input buffer.
    fn prepare(&mut self) -> Prepared {
        let mut headers = header_slots();
        let head = match request::parse(self.input.pending(), &mut headers) {
            Ok(Some(head)) => head,
            Ok(None) => return Prepared::Incomplete,
            Err(error) => return Prepared::Refuse(error),
        };
        self.request_id.clear();
        // A client's id is kept unless its Connection header made it hop-by-hop.
        let client_id = rewrite::find_request_id(head.headers)
            .filter(|_| !head.connection.names("x-request-id"));
        match client_id {
            Some(id) => self.request_id.extend_from_slice(id),
            None => generate_request_id(&mut self.request_id, &self.core),
        }
        if head.max_forwards == Some(0) {
            // The last hop allowed: percore is the final recipient (RFC 9110
            // §7.6.2). A body it does not read ends the connection.
            let bodiless = matches!(head.framing, BodyFraming::None | BodyFraming::Length(0));
            let keep_alive = head.keep_alive && bodiless;
            let head_len = head.head_len;
            self.input.consume(head_len);
            return Prepared::AnswerOptions { keep_alive };
        }
        let first_pick = self.core.pool.pick(&[], self.core.ticker.now());
        let backend_authority = first_pick
            .as_ref()
            .map_or(&b"localhost"[..], |b| &b.backend.authority);
        self.up_head.clear();
        let fields = ForwardFields {
            client_ip: self.client_ip.as_bytes(),
            request_id: &self.request_id,
            backend_authority,
        };
        rewrite::write_request_head(&mut self.up_head, &head, &fields);
        let plan = Plan {
            framing: head.framing,
            version: head.version,
            keep_alive: head.keep_alive,
            is_head: head.is_head(),
            expect_continue: head.expect_continue,
            retryable: head.is_idempotent()
                && matches!(head.framing, BodyFraming::None | BodyFraming::Length(0)),
            first_pick,
            head_len: self.up_head.len(),
        };
        let head_len = head.head_len;
        self.input.consume(head_len);
        Prepared::Ready(plan)
    }

    /// Logs a backend's failure (rate-limited, see `failure_log`).
    fn log_failure(&self, backend: &LocalBackend, error: &DownloadError, what: &str) {
        if let Some(left_out) = self.core.failure_log.admit(self.core.ticker.now()) {
            tracing::warn!(backend = %backend.backend.url, %error, left_out, "{what}");
        }
    }

    /// Sends a response percore generated; `false` if the client is gone.
    async fn respond_local(&mut self, status: u16, message: &str, close: bool) -> bool {
        if self.request_id.is_empty() {
            generate_request_id(&mut self.request_id, &self.core);
        }
        let mut out = std::mem::take(&mut self.up_head);
        out.clear();
        rewrite::write_local_response(&mut out, status, message, &self.request_id, close);
        let (result, out) = self.output.write_all(out).await;
        self.up_head = out;
        result.is_ok()
    }

    /// Forwards the request to backends until one answers or none is left.
    async fn exchange(&mut self, plan: &Plan) -> Outcome {
        let core = self.core.clone();
        let mut tried = [0 as BackendId; MAX_ATTEMPTS];
        let mut tried_count = 0;
        let mut stale_retries = 0;
        let mut next = plan.first_pick.clone();
        loop {
            let backend = match next
                .take()
                .or_else(|| core.pool.pick(&tried[..tried_count], core.ticker.now()))
            {
                Some(backend) => backend,
                None if tried_count == 0 => {
                    return Outcome::Failed {
                        status: 503,
                        message: "no backend available",
                        keep_client: !plan.has_body() && plan.keep_alive,
                    };
                }
                None => {
                    return Outcome::Failed {
                        status: 502,
                        message: "no backend could be reached",
                        keep_client: !plan.has_body() && plan.keep_alive,
                    };
                }
            };
            if tried_count == MAX_ATTEMPTS {
                return Outcome::Failed {
                    status: 502,
                    message: "no backend could be reached",
                    keep_client: false,
                };
            }
            tried[tried_count] = backend.backend.id;
            tried_count += 1;
            let counters = backend.backend.counters.core(core.core());
            // Active from the pick, so a backend being drained counts the
            // requests still connecting to it.
            let _active = ActiveGuard::new(&counters.active);
            let conn = match self.checkout(&backend, plan).await {
                Ok(conn) => conn,
                Err(error) => {
                    counters.failures.add(1);
                    core.pool.record_failure(&backend, Instant::now());
                    if let Some(left_out) = core.failure_log.admit(core.ticker.now()) {
                        tracing::warn!(backend = %backend.backend.url, %error, left_out, "connect failed; trying the next backend");
                    }
                    continue;
                }
            };
            counters.requests.add(1);
            match self.forward(plan, conn, &backend).await {
                Forwarded::Done {
                    keep_client,
                    reusable,
                } => {
                    core.pool.record_success(&backend);
                    if let Some(conn) = reusable {
                        backend.idle.put(
                            conn,
                            core.ticker.now(),
                            core.settings.max_idle_per_backend,
                        );
                    }
                    return Outcome::Relayed { keep_client };
                }
                Forwarded::Stale if stale_retries < 2 && self.up_head.len() >= plan.head_len => {
                    // The backend closed a pooled connection before answering a
                    // request that is safe to resend: its other idle connections
                    // are likely stale too. Retry it on a fresh connection.
                    stale_retries += 1;
                    backend.idle.prune(Instant::now(), Duration::ZERO);
                    tried_count -= 1;
                    next = Some(backend.clone());
                }
                Forwarded::Unanswered if self.up_head.len() >= plan.head_len => {
                    counters.failures.add(1);
                    core.pool.record_failure(&backend, Instant::now());
                }
                Forwarded::Stale | Forwarded::Unanswered => {
                    counters.failures.add(1);
                    if let Some(left_out) = core.failure_log.admit(core.ticker.now()) {
                        tracing::warn!(backend = %backend.backend.url, left_out, "backend closed pooled connections before answering; 502");
                    }
                    return Outcome::Failed {
                        status: 502,
                        message: "backend closed the connection",
                        keep_client: plan.keep_alive,
                    };
                }
                Forwarded::Failed {
                    status,
                    message,
                    keep_client,
                } => {
                    counters.failures.add(1);
                    // A reset or bad response (502) or a response timeout
                    // (504) counts against the backend; 400/408 are the client's.
                    if status >= 502 {
                        core.pool.record_failure(&backend, Instant::now());
                    }
                    return Outcome::Failed {
                        status,
                        message,
                        keep_client,
                    };
                }
                Forwarded::Abort => return Outcome::Abort,
            }
        }
    }

    /// An idle pooled connection, or a new one. A pooled connection is
    /// checked first: one the backend closed is skipped rather than tried,
    /// and one with unread bytes (a late or unsolicited response, the 408
    /// some backends send when their keep-alive ends) would hand those bytes
    /// to this request as its answer, so it is closed unused. The check costs
    /// a syscall, so a connection returned within the same tick is reused
    /// unchecked for a request that can be resent, as nginx reuses one at
    /// once; under load nearly every reuse is that fast.
    async fn checkout(
        &self,
        backend: &LocalBackend,
        plan: &Plan,
    ) -> Result<UpstreamConn, upstream::ConnectError> {
        let settings = &self.core.settings;
        let now = self.core.ticker.now();
        while let Some((conn, idle_for)) = backend.idle.take(now, settings.upstream_idle_timeout) {
            if (plan.retryable && idle_for < TICK) || !conn.is_stale() {
                return Ok(conn);
            }
        }
        upstream::connect(backend.backend.addr, settings.connect_timeout).await
    }

    /// One exchange on one upstream connection: upload and download run
    /// concurrently; the client is watched while a slow backend thinks.
    async fn forward(
        &mut self,
        plan: &Plan,
        mut conn: UpstreamConn,
        backend: &LocalBackend,
    ) -> Forwarded {
        let core = self.core.clone();
        let settings = core.settings;
        let progress = UploadProgress {
            phase: Cell::new(UploadPhase::Sending),
            request_read: Cell::new(!plan.has_body()),
            watch_client: Cell::new(false),
            awaiting_body: Cell::new(false),
            body_started: Cell::new(false),
            expect_continue: plan.expect_continue,
            writes: Cell::new(0),
            upstream_fd: conn.fd(),
        };
        let response_started = Cell::new(false);
        // Odd while a write to the client is pending (see `ClientOutput`):
        // one dropped half-way, such as an interim response, leaves the
        // client no room for an answer of our own.
        let client_writes = self.output.writes.clone();
        let client_mid_write = || client_writes.get() % 2 == 1;
        let watch = self.canceller.handle();
        let mut response_buf = core.relay_buffers.take();
        let mut scratch = core.buffers.take();

        let (download_result, upload_sent, client_reusable) = {
            let Connection {
                input,
                output,
                up_head,
                request_id,
                canceller,
                ..
            } = &mut *self;
            // Pinned where they are created: a `let` first would give each
            // future a second slot in this one, and a copy.
            let mut upload = std::pin::pin!(upload(
                input,
                &mut conn.wr,
                up_head,
                plan,
                &progress,
                watch,
                &settings
            ));
            let mut download = std::pin::pin!(download(
                &mut conn.rd,
                output,
                DownloadBuffers {
                    response: &mut response_buf,
                    scratch: &mut scratch
                },
                plan,
                request_id,
                &progress,
                &response_started,
                &settings,
                &core.ticker,
            ));
            let mut upload_result: Option<Result<(), UploadError>> = None;
            let download_result = loop {
                monoio::select! {
                    biased;
                    result = &mut download => break result,
                    result = &mut upload, if upload_result.is_none() => {
                        match result {
                            Err(UploadError::ClientGone) => return Forwarded::Abort,
                            Err(UploadError::BadChunked) if response_started.get() || client_mid_write() => return Forwarded::Abort,
                            Err(UploadError::BadChunked) => {
                                return Forwarded::Failed { status: 400, message: "malformed chunked request body", keep_client: false };
                            }
                            Err(UploadError::ClientTimeout) if response_started.get() || client_mid_write() => return Forwarded::Abort,
                            Err(UploadError::ClientTimeout) => {
                                return Forwarded::Failed { status: 408, message: "request body not received in time", keep_client: false };
                            }
                            // The backend stopped reading: its answer (or close) comes on the download side.
                            Err(UploadError::UpstreamWrite) | Ok(()) => {}
                        }
                        upload_result = Some(result);
                    }
                }
            };

            // The response is done (or failed). Settle the upload side:
            // `sent` = the whole request reached the backend (upstream reusable),
            // `client_ok` = the client's input is intact at a message boundary.
            // A stale pooled connection, or a fresh one reset before any
            // response byte: the request will be resent, so let
            // the head write finish (it fails at once on a closed socket) to
            // get `up_head` back rather than dropping it with the future.
            let resend =
                plan.retryable && matches!(download_result, Err(DownloadError::NoResponse(_)));
            if resend && upload_result.is_none() && progress.phase.get() == UploadPhase::Sending {
                // Only until the head write is done: after it the upload
                // waits for the (finished) download and would never end.
                let head_written = std::future::poll_fn(|cx| match upload.as_mut().poll(cx) {
                    Poll::Ready(result) => Poll::Ready(Some(result)),
                    Poll::Pending if progress.phase.get() != UploadPhase::Sending => {
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                });
                if let Ok(Some(result)) =
                    monoio::time::timeout(Duration::from_secs(1), head_written).await
                {
                    upload_result = Some(result);
                }
            }
            let (sent, client_ok) = match upload_result {
                Some(Ok(())) => (true, true),
                Some(Err(_)) => (false, progress.request_read.get()),
                None => match progress.phase.get() {
                    UploadPhase::Sending => (false, progress.request_read.get()),
                    // An operation owns the client buffer: dropping it loses
                    // whatever it holds, so the client connection must close.
                    UploadPhase::Reading => (false, false),
                    UploadPhase::Sent => (true, true),
                    UploadPhase::Watching => {
                        *canceller = std::mem::take(canceller).cancel();
                        let watched = upload.as_mut().await;
                        (true, watched.is_ok())
                    }
                },
            };
            (
                download_result,
                sent,
                client_ok && progress.request_read.get(),
            )
        };
        core.relay_buffers.give(response_buf);
        core.buffers.give(scratch);

        match download_result {
            Ok(relayed) => {
                let reusable = (relayed.upstream_reusable && upload_sent).then_some(conn);
                Forwarded::Done {
                    keep_client: relayed.keep_client && client_reusable,
                    reusable,
                }
            }
            Err(error) if response_started.get() => {
                if !matches!(error, DownloadError::Client) {
                    self.log_failure(
                        backend,
                        &error,
                        "response cut after it started; client connection reset",
                    );
                }
                Forwarded::Abort
            }
            Err(DownloadError::NoResponse(_)) if conn.reused && plan.retryable => Forwarded::Stale,
            Err(DownloadError::NoResponse(_)) if plan.retryable => Forwarded::Unanswered,
            Err(error) => {
                if !matches!(error, DownloadError::Client) {
                    self.log_failure(backend, &error, "backend failed; answered with an error");
                }
                Forwarded::Failed {
                    status: error.status(),
                    message: error.message(),
                    keep_client: client_reusable && plan.keep_alive,
                }
            }
        }
    }
}

/// Resets the connection at once (RST): `connect` to an AF_UNSPEC address
/// disconnects a TCP socket (connect(2)). A close with SO_LINGER 0 would not
/// do: monoio's write half shuts the socket down (FIN) when dropped, before
/// the close.
fn reset_connection(fd: RawFd) {
    // SAFETY: `fd` is the open client socket owned by the calling connection;
    // an all-zero sockaddr is a valid AF_UNSPEC address of the size passed.
    unsafe {
        let mut addr: libc::sockaddr = std::mem::zeroed();
        addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(
            fd,
            &raw const addr,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        );
    }
}

/// A request id unique within this process run: start-time prefix, core, sequence.
fn generate_request_id(out: &mut Vec<u8>, core: &CoreContext) {
    let seq = core.request_seq.get();
    core.request_seq.set(seq + 1);
    push_hex(out, u64::from(core.request_id_prefix), 8);
    out.push(b'-');
    push_hex(out, core.core() as u64, 1);
    out.push(b'-');
    push_hex(out, seq, 1);
}

fn push_hex(out: &mut Vec<u8>, value: u64, min_digits: usize) {
    let digits = (16 - value.leading_zeros() as usize / 4)
        .max(min_digits)
        .max(1);
    for shift in (0..digits).rev() {
        out.push(b"0123456789abcdef"[((value >> (shift * 4)) & 0xf) as usize]);
    }
}

enum Forwarded {
    Done {
        keep_client: bool,
        reusable: Option<UpstreamConn>,
    },
    /// A reused connection closed before any response byte; safe to resend.
    Stale,
    /// A fresh connection closed or reset before any response byte (a
    /// backend dying with connections in its backlog); safe to resend to
    /// another backend.
    Unanswered,
    Failed {
        status: u16,
        message: &'static str,
        keep_client: bool,
    },
    Abort,
}

/// Where the upload stands, read by the download side and by `forward`.
struct UploadProgress {
    phase: Cell<UploadPhase>,
    /// The whole request body has been read from the client, so the client
    /// connection is at a message boundary.
    request_read: Cell<bool>,
    /// Set by the download side once the response is `WATCH_TICKS` late:
    /// the upload side then watches the client. The download's timer serves
    /// both, so a fast exchange sets one timer, not two.
    watch_client: Cell<bool>,
    /// The upload waits for request body bytes from the client: the backend
    /// may be waiting for them too, so its response time is not running,
    /// unless the client waits for the backend's 100 (Continue) first.
    awaiting_body: Cell<bool>,
    body_started: Cell<bool>,
    expect_continue: bool,
    /// Writes of request bytes the backend has accepted: while these move,
    /// a long upload is progress, not a backend that fails to answer.
    writes: Cell<u64>,
    /// The upstream socket, whose unsent queue shows progress within a write.
    upstream_fd: RawFd,
}

impl UploadProgress {
    /// The backend may be waiting for body bytes the client has not sent:
    /// not the backend's delay, unless the client itself waits for a 100
    /// (Continue) and has sent no body yet.
    fn client_owes_body(&self) -> bool {
        self.awaiting_body.get() && (self.body_started.get() || !self.expect_continue)
    }

    /// Whether the backend took request bytes since `mark`, which is moved
    /// on: a write completed, or the socket's unsent queue shrank (one write
    /// can wait for a large part of the send buffer to drain).
    fn advanced(&self, mark: &mut (u64, libc::c_int)) -> bool {
        let now = (self.writes.get(), unsent_bytes(self.upstream_fd));
        let advanced = now.0 != mark.0 || now.1 < mark.1;
        *mark = now;
        advanced
    }
}

/// Bytes in a socket's send queue not yet acknowledged (TIOCOUTQ); 0 if unknown.
fn unsent_bytes(fd: RawFd) -> libc::c_int {
    let mut unsent: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one c_int to the pointer given; `fd` is the
    // open upstream socket of the exchange in progress.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &raw mut unsent) } < 0 {
        return 0;
    }
    unsent
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UploadPhase {
    /// Writing from `up_head` (head, coalesced or re-chunked body); the
    /// client buffer is untouched. Safe to drop.
    Sending,
    /// An I/O operation owns the client buffer (reading the body, or
    /// writing body bytes straight from it). Dropping loses the buffer.
    Reading,
    /// Everything sent; waiting before watching the client. Safe to drop.
    Sent,
    /// A cancellable read watches the client: cancel, then await it.
    Watching,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UploadError {
    ClientGone,
    ClientTimeout,
    BadChunked,
    UpstreamWrite,
}

/// Sends the head and the request body upstream, then watches the client.
async fn upload(
    input: &mut ClientInput,
    wr: &mut TcpOwnedWriteHalf,
    up_head: &mut Vec<u8>,
    plan: &Plan,
    progress: &UploadProgress,
    watch: CancelHandle,
    settings: &ProxySettings,
) -> Result<(), UploadError> {
    let phase = &progress.phase;
    progress.body_started.set(!input.pending().is_empty());
    up_head.truncate(plan.head_len);
    match plan.framing {
        BodyFraming::None | BodyFraming::Length(0) => write_upstream(wr, up_head, progress).await?,
        BodyFraming::Length(length) => {
            // Coalesce the body bytes already read with the head: one write.
            let mut remaining = length;
            let take = input
                .pending()
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            up_head.extend_from_slice(&input.pending()[..take]);
            input.consume(take);
            remaining -= take as u64;
            progress.request_read.set(remaining == 0);
            write_upstream(wr, up_head, progress).await?;
            while remaining > 0 {
                phase.set(UploadPhase::Reading);
                read_body(input, progress, settings).await?;
                let take = input
                    .pending()
                    .len()
                    .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                progress.request_read.set(take as u64 == remaining);
                let buf = std::mem::take(&mut input.buf);
                let start = input.pos;
                let (result, slice) = wr.write_all(buf.slice(start..start + take)).await;
                input.buf = slice.into_inner();
                // Consumed even if the write failed: `request_read` already
                // says these bytes were read, and left in the buffer they
                // would be parsed as the client's next request.
                input.consume(take);
                remaining -= take as u64;
                result.map_err(|_| UploadError::UpstreamWrite)?;
                progress.writes.set(progress.writes.get() + 1);
            }
        }
        BodyFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            loop {
                decode_into(&mut decoder, input, up_head).map_err(|_| UploadError::BadChunked)?;
                progress.request_read.set(decoder.is_done());
                if !up_head.is_empty() {
                    phase.set(UploadPhase::Sending);
                    write_upstream(wr, up_head, progress).await?;
                    up_head.clear();
                }
                if decoder.is_done() {
                    break;
                }
                phase.set(UploadPhase::Reading);
                read_body(input, progress, settings).await?;
            }
        }
    }

    phase.set(UploadPhase::Sent);
    // Both halves of the exchange are polled whenever its task wakes, so the
    // flag set by the download side is seen without a waker of its own.
    std::future::poll_fn(|_| {
        if progress.watch_client.get() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    if input.buf.len() == input.buf.capacity() {
        // Pipelined requests fill the buffer: the client is evidently there.
        return Ok(());
    }
    phase.set(UploadPhase::Watching);
    let result = input.read_more_cancelable(watch).await;
    phase.set(UploadPhase::Sent);
    match result {
        Ok(0) => Err(UploadError::ClientGone),
        Ok(_) => Ok(()),
        Err(error) if error.raw_os_error() == Some(libc::ECANCELED) => Ok(()),
        Err(_) => Err(UploadError::ClientGone),
    }
}

async fn write_upstream(
    wr: &mut TcpOwnedWriteHalf,
    buf: &mut Vec<u8>,
    progress: &UploadProgress,
) -> Result<(), UploadError> {
    let (result, written) = wr.write_all(std::mem::take(buf)).await;
    *buf = written;
    result.map_err(|_| UploadError::UpstreamWrite)?;
    progress.writes.set(progress.writes.get() + 1);
    Ok(())
}

/// Reads more of the request body; EOF mid-body means the client left.
async fn read_body(
    input: &mut ClientInput,
    progress: &UploadProgress,
    settings: &ProxySettings,
) -> Result<(), UploadError> {
    progress.awaiting_body.set(true);
    let result = monoio::time::timeout(settings.idle_timeout, input.read_more()).await;
    progress.awaiting_body.set(false);
    match result {
        Ok(Ok(n)) if n > 0 => {
            progress.body_started.set(true);
            Ok(())
        }
        Ok(_) => Err(UploadError::ClientGone),
        Err(_) => Err(UploadError::ClientTimeout),
    }
}

/// Decodes the pending chunked bytes into canonical chunks appended to `out`.
fn decode_into(
    decoder: &mut ChunkedDecoder,
    input: &mut ClientInput,
    out: &mut Vec<u8>,
) -> Result<(), crate::http1::ChunkedError> {
    let mut consumed = 0;
    let pending = input.pending();
    while consumed < pending.len() && !decoder.is_done() {
        let step = decoder.step(&pending[consumed..])?;
        if !step.data.is_empty() {
            write_chunk_size(out, step.data.len());
            out.extend_from_slice(&pending[consumed..][step.data]);
            out.extend_from_slice(b"\r\n");
        }
        consumed += step.consumed;
    }
    if decoder.is_done() {
        out.extend_from_slice(LAST_CHUNK);
    }
    input.consume(consumed);
    Ok(())
}

struct DownloadBuffers<'a> {
    /// Bytes read from the backend.
    response: &'a mut Vec<u8>,
    /// What is written to the client: heads, coalesced and re-chunked bodies.
    scratch: &'a mut Vec<u8>,
}

struct Relayed {
    upstream_reusable: bool,
    keep_client: bool,
}

#[derive(Debug, thiserror::Error)]
enum DownloadError {
    #[error("backend did not answer in time")]
    Timeout,
    #[error("backend closed the connection")]
    Closed,
    /// Closed or reset before a single byte of a response: on a reused
    /// connection, the backend dropped it while idle, and a safe request
    /// can be resent.
    #[error("backend closed the connection before answering: {0}")]
    NoResponse(Box<DownloadError>),
    #[error("backend connection failed: {0}")]
    Io(io::Error),
    #[error(transparent)]
    Head(#[from] response::ResponseError),
    #[error("malformed chunked response body")]
    BadChunked,
    #[error("client connection failed")]
    Client,
}

impl DownloadError {
    fn status(&self) -> u16 {
        match self {
            DownloadError::Timeout => 504,
            _ => 502,
        }
    }

    fn message(&self) -> &'static str {
        match self {
            DownloadError::Timeout => "backend did not answer in time",
            DownloadError::Closed | DownloadError::Io(_) | DownloadError::NoResponse(_) => {
                "backend closed the connection"
            }
            DownloadError::Head(_) | DownloadError::BadChunked => {
                "backend sent an invalid response"
            }
            DownloadError::Client => "client connection failed",
        }
    }
}

/// Reads more from the backend into `buf` after its bytes; `Closed` at EOF.
async fn read_upstream(
    rd: &mut TcpOwnedReadHalf,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<usize, DownloadError> {
    let end = buf.capacity();
    read_upstream_into(rd, buf, end, timeout).await
}

/// As `read_upstream`, filling `buf` up to index `end` at most.
async fn read_upstream_into(
    rd: &mut TcpOwnedReadHalf,
    buf: &mut Vec<u8>,
    end: usize,
    timeout: Duration,
) -> Result<usize, DownloadError> {
    let owned = std::mem::take(buf);
    let len = owned.len();
    let (result, slice) =
        match monoio::time::timeout(timeout, rd.read(owned.slice_mut(len..end))).await {
            Ok(read) => read,
            Err(_) => return Err(DownloadError::Timeout),
        };
    *buf = slice.into_inner();
    read_outcome(result)
}

/// Reads response-head bytes until `deadline` (504). A response that is
/// `WATCH_TICKS` late flags the upload side to watch the client. Each time
/// the deadline passes it moves on by a timeout if the client still owes body
/// bytes (the upload has its own timeout, 408) or the backend took request
/// bytes since the last look (a long upload): the backend gets one to two
/// timeouts after the last request byte it took, then a 504.
async fn read_head_bytes(
    rd: &mut TcpOwnedReadHalf,
    buf: &mut Vec<u8>,
    progress: &UploadProgress,
    ticker: &Ticker,
    deadline: &mut Instant,
    timeout: Duration,
) -> Result<usize, DownloadError> {
    let owned = std::mem::take(buf);
    let (len, cap) = (owned.len(), owned.capacity());
    let mut read = std::pin::pin!(rd.read(owned.slice_mut(len..cap)));
    if !progress.watch_client.get() {
        monoio::select! {
            biased;
            (result, slice) = read.as_mut() => {
                *buf = slice.into_inner();
                return read_outcome(result);
            }
            _ = ticker.wait(WATCH_TICKS) => progress.watch_client.set(true),
        }
    }
    let mut mark = (progress.writes.get(), unsent_bytes(progress.upstream_fd));
    let (result, slice) = loop {
        match monoio::time::timeout_at((*deadline).into(), read.as_mut()).await {
            Ok(done) => break done,
            Err(_) if progress.client_owes_body() || progress.advanced(&mut mark) => {
                *deadline = ticker.now() + timeout;
            }
            Err(_) => return Err(DownloadError::Timeout),
        }
    };
    *buf = slice.into_inner();
    read_outcome(result)
}

/// A backend read's result: EOF is `Closed`.
fn read_outcome(result: io::Result<usize>) -> Result<usize, DownloadError> {
    match result {
        Ok(0) => Err(DownloadError::Closed),
        Ok(n) => Ok(n),
        Err(error) => Err(DownloadError::Io(error)),
    }
}

async fn write_client(
    wr: &mut ClientOutput,
    buf: &mut Vec<u8>,
    range: std::ops::Range<usize>,
) -> Result<(), DownloadError> {
    let owned = std::mem::take(buf);
    let (result, slice) = wr.write_all(owned.slice(range)).await;
    *buf = slice.into_inner();
    result.map(drop).map_err(|_| DownloadError::Client)
}

/// Reads the response from the backend and relays it to the client.
#[allow(clippy::too_many_arguments)]
async fn download(
    rd: &mut TcpOwnedReadHalf,
    wr: &mut ClientOutput,
    bufs: DownloadBuffers<'_>,
    plan: &Plan,
    request_id: &[u8],
    progress: &UploadProgress,
    response_started: &Cell<bool>,
    settings: &ProxySettings,
    ticker: &Ticker,
) -> Result<Relayed, DownloadError> {
    let DownloadBuffers {
        response: buf,
        scratch,
    } = bufs;
    let mut head_deadline = ticker.now() + settings.response_timeout;
    // The backend's bytes land after HEADROOM free bytes, where the client's
    // head can be put right before the first body bytes: one write, and no
    // copy of the body.
    buf.clear();
    buf.resize(HEADROOM, 0);
    let mut interim = 0;
    let (framing, body_start, client_body, upstream_keep_alive, keep_client) = loop {
        // Read until a whole head is buffered.
        let parsed = loop {
            if buf.len() > HEADROOM {
                let mut headers = header_slots();
                if let Some(head) = response::parse(&buf[HEADROOM..], &mut headers, plan.is_head)? {
                    let client_body = match head.framing {
                        ResponseFraming::None => ClientBody::None,
                        ResponseFraming::Length(n) => ClientBody::Length(n),
                        // A close-delimited body is chunked for HTTP/1.1
                        // clients, as nginx does: its end (or its truncation)
                        // stays visible and the client connection stays open.
                        ResponseFraming::Chunked | ResponseFraming::UntilClose
                            if plan.version == Version::Http11 =>
                        {
                            ClientBody::Chunked
                        }
                        ResponseFraming::Chunked | ResponseFraming::UntilClose => {
                            ClientBody::UntilClose
                        }
                    };
                    let keep_client = plan.keep_alive
                        && client_body != ClientBody::UntilClose
                        && progress.request_read.get();
                    scratch.clear();
                    rewrite::write_response_head(
                        scratch,
                        &head,
                        request_id,
                        client_body,
                        plan.version,
                        !keep_client,
                    );
                    break (
                        head.is_interim(),
                        head.framing,
                        HEADROOM + head.head_len,
                        client_body,
                        head.keep_alive,
                        keep_client,
                    );
                }
            }
            if buf.len() - HEADROOM >= settings.buffer_size {
                return Err(response::ResponseError::HeadTooLarge.into());
            }
            match read_head_bytes(
                rd,
                buf,
                progress,
                ticker,
                &mut head_deadline,
                settings.response_timeout,
            )
            .await
            {
                Ok(_) => {}
                Err(error @ (DownloadError::Closed | DownloadError::Io(_)))
                    if buf.len() == HEADROOM && interim == 0 =>
                {
                    return Err(DownloadError::NoResponse(Box::new(error)));
                }
                Err(error) => return Err(error),
            }
        };
        let (is_interim, framing, head_end, client_body, upstream_keep_alive, keep_client) = parsed;
        if !is_interim {
            break (
                framing,
                head_end,
                client_body,
                upstream_keep_alive,
                keep_client,
            );
        }
        interim += 1;
        if interim > MAX_INTERIM {
            return Err(response::ResponseError::Malformed.into());
        }
        // 1xx go to HTTP/1.1 clients only (RFC 9110 §15.2). They do not
        // start the response: a final 502 can still follow them.
        if plan.version == Version::Http11 {
            let len = scratch.len();
            write_client(wr, scratch, 0..len).await?;
        }
        buf.drain(HEADROOM..head_end);
    };

    // Set before the first write of the final head: until then a failure
    // (such as a chunked body garbled in the head's own packet) can still be
    // answered with a 502.
    let mut clean = true;
    match framing {
        ResponseFraming::None => {
            clean = buf.len() == body_start;
            response_started.set(true);
            let len = scratch.len();
            write_client(wr, scratch, 0..len).await?;
        }
        ResponseFraming::Length(length) => {
            // The head and the first body bytes go out in one write: small
            // bodies are copied after the head, large ones get the head put
            // in front of them.
            let available = buf.len() - body_start;
            let take = available.min(usize::try_from(length).unwrap_or(usize::MAX));
            clean = available <= take;
            let mut remaining = length - take as u64;
            response_started.set(true);
            if take <= COALESCE_COPY_MAX || scratch.len() > body_start {
                scratch.extend_from_slice(&buf[body_start..body_start + take]);
                let len = scratch.len();
                write_client(wr, scratch, 0..len).await?;
            } else {
                let head_start = body_start - scratch.len();
                buf[head_start..body_start].copy_from_slice(scratch);
                write_client(wr, buf, head_start..body_start + take).await?;
            }
            while remaining > 0 {
                buf.clear();
                let n = read_upstream(rd, buf, settings.response_timeout).await?;
                let take = n.min(usize::try_from(remaining).unwrap_or(usize::MAX));
                clean = n <= take;
                write_client(wr, buf, 0..take).await?;
                remaining -= take as u64;
            }
        }
        ResponseFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            let chunked_out = client_body == ClientBody::Chunked;
            let mut start = body_start;
            loop {
                let mut consumed = start;
                while consumed < buf.len() && !decoder.is_done() {
                    // Never grow `scratch`: its pooled capacity bounds each
                    // step, with room kept for a chunk-size line and CRLFs.
                    let room = scratch.capacity().saturating_sub(scratch.len() + 32);
                    if room == 0 {
                        break;
                    }
                    let end = buf.len().min(consumed + room);
                    let step = decoder
                        .step(&buf[consumed..end])
                        .map_err(|_| DownloadError::BadChunked)?;
                    let data = &buf[consumed..][step.data];
                    if !data.is_empty() {
                        if chunked_out {
                            write_chunk_size(scratch, data.len());
                        }
                        scratch.extend_from_slice(data);
                        if chunked_out {
                            scratch.extend_from_slice(b"\r\n");
                        }
                    }
                    consumed += step.consumed;
                }
                if decoder.is_done() {
                    clean = consumed == buf.len();
                    if chunked_out {
                        scratch.extend_from_slice(LAST_CHUNK);
                    }
                }
                if !scratch.is_empty() {
                    response_started.set(true);
                    let len = scratch.len();
                    write_client(wr, scratch, 0..len).await?;
                    scratch.clear();
                }
                if decoder.is_done() {
                    break;
                }
                if consumed < buf.len() {
                    start = consumed;
                    continue;
                }
                buf.clear();
                start = 0;
                read_upstream(rd, buf, settings.response_timeout).await?;
            }
        }
        ResponseFraming::UntilClose => {
            // Only a clean EOF ends the body; a reset or timeout is an error,
            // and the client sees the body cut (no last chunk, or a reset).
            let chunked_out = client_body == ClientBody::Chunked;
            let first = buf.len() - body_start;
            if chunked_out && first > 0 {
                write_chunk_size(scratch, first);
            }
            scratch.extend_from_slice(&buf[body_start..]);
            if chunked_out && first > 0 {
                scratch.extend_from_slice(b"\r\n");
            }
            response_started.set(true);
            let len = scratch.len();
            write_client(wr, scratch, 0..len).await?;
            // Chunked: each read lands after room for its chunk-size line and
            // leaves room for its CRLF, so it goes out in one write.
            let (prefix, suffix) = if chunked_out {
                (CHUNK_SIZE_ROOM, 2)
            } else {
                (0, 0)
            };
            loop {
                buf.clear();
                buf.resize(prefix, 0);
                let end = buf.capacity() - suffix;
                match read_upstream_into(rd, buf, end, settings.response_timeout).await {
                    Ok(n) if chunked_out => {
                        let line = ChunkSizeLine::new(n);
                        let start = prefix - line.as_bytes().len();
                        buf[start..prefix].copy_from_slice(line.as_bytes());
                        buf.extend_from_slice(b"\r\n");
                        let len = buf.len();
                        write_client(wr, buf, start..len).await?;
                    }
                    Ok(n) => write_client(wr, buf, 0..n).await?,
                    Err(DownloadError::Closed) => break,
                    Err(error) => return Err(error),
                }
            }
            if chunked_out {
                scratch.clear();
                scratch.extend_from_slice(LAST_CHUNK);
                let len = scratch.len();
                write_client(wr, scratch, 0..len).await?;
            }
            clean = false;
        }
    }
    Ok(Relayed {
        upstream_reusable: upstream_keep_alive && clean,
        keep_client,
    })
}
