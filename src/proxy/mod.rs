//! The data path: one task per client connection, on the core that accepted
//! it. This file is the client connection's loop: wait for a request (parking
//! an idle connection in a small task), read and validate its head, hand it
//! to an exchange, answer what percore answers itself, keep alive or close.
//!
//! Per request: the head is parsed by `http1::request`, a backend picked
//! from this core's view of the pool, and `exchange` runs the upload (client
//! → backend body) and the download (backend → client response)
//! concurrently. What a request touches lives in this core (`Rc` and
//! `Cell`, pooled buffers, per-core counters that only this core writes),
//! with one exception: round-robin's cursor, shared by all cores so that
//! they make one rotation, costs one atomic `fetch_add` per pick.
//!
//! - `core`: what a core's connections share, and the once-a-second sweep.
//! - `client`: the client connection's input and output halves.
//! - `plan`: what the two halves of an exchange share.
//! - `exchange`: pick, checkout, retries, and the two halves raced.
//! - `upload`, `download`: one half each, one function per framing.

mod client;
mod core;
mod download;
mod exchange;
mod plan;
mod tunnel;
mod upload;

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::{Canceller, Splitable};
use monoio::net::TcpStream;

pub use self::core::CoreContext;
use client::{ClientInput, ClientOutput};
use exchange::{Exchange, Outcome};
use plan::{BackendHost, Plan};
use tunnel::Tunnel;

use crate::http1::rewrite::{self, ForwardFields};
use crate::http1::{BodyFraming, MAX_REQUEST_FIELDS, header_slots, request};
use crate::pool::BackendId;
use crate::sys;
use crate::ticker::TICK;

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

/// Serves one client connection until it closes, fails or times out. The
/// connection is set up (and counted open) when this is called; the future
/// is its parked wait for a first request (see `park`).
#[allow(clippy::manual_async_fn)]
pub fn serve_client(
    stream: TcpStream,
    peer: SocketAddr,
    core: Rc<CoreContext>,
) -> impl Future<Output = ()> + 'static {
    // Heads and small bodies are written whole; Nagle would only delay them.
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let (rd, wr) = stream.into_split();
    core.plane.workers.core(core.core()).open_connections.add(1);
    let writes = Rc::new(Cell::new(0));
    core.open(fd, writes.clone());
    let conn = Connection {
        fd,
        input: ClientInput::new(rd),
        output: ClientOutput::new(wr, writes),
        client_ip: peer.ip().to_canonical().to_string().into_boxed_str(),
        core,
    };
    // A new connection starts parked: until its first bytes arrive it costs
    // a small task, not a serving one. It owes a request head from the
    // start, so the head deadline holds it, not the longer keep-alive one.
    let timeout = conn.core.settings().request_head_timeout;
    park(conn, timeout)
}

/// Serves requests until the connection closes, or idles long enough to be
/// parked: then this (large) task ends and a small one waits for the next
/// request, so idle keep-alive connections hold little memory.
async fn serve(conn: Connection) {
    let mut serving = Serving {
        conn,
        request_id: Vec::new(),
        up_head: Vec::new(),
        canceller: Canceller::new(),
        request_started: Instant::now(),
    };
    loop {
        if serving.conn.input.pending().is_empty() {
            // In a drain, an idle connection still gets `PARK_AFTER` to
            // bring a request (answered with `Connection: close`): a client
            // told keep-alive before the drain may be sending one now.
            match serving.wait_for_request().await {
                Wait::Data => {}
                Wait::Closed => return,
                Wait::Park if serving.conn.core.is_draining() => return,
                Wait::Park => {
                    let timeout = serving
                        .conn
                        .core
                        .settings()
                        .client_idle_timeout
                        .saturating_sub(PARK_AFTER);
                    monoio::spawn(park(serving.conn, timeout));
                    return;
                }
            }
        }
        if !serving.handle_request().await {
            return;
        }
    }
}

/// A parked connection: no pooled buffer, a small read waits for the next
/// request (for at most `timeout`, enforced by the core's sweep), then a
/// serving task resumes with the bytes that arrived.
///
/// Not an `async fn`: that keeps its arguments twice in its future (the
/// argument and the local it is moved into), and each parked connection's
/// task would hold a second, dead `Connection` and fill a larger jemalloc
/// size class (see the test below). The same goes for
/// `serve_client`, whose task a connection that never sends a request keeps.
#[allow(clippy::manual_async_fn)]
fn park(mut conn: Connection, timeout: Duration) -> impl Future<Output = ()> + 'static {
    conn.input.idle_buf = Vec::with_capacity(PARKED_BUFFER);
    conn.core
        .set_parked(conn.fd, Some(Instant::now() + timeout));
    async move {
        let n = match conn.input.read_idle().await {
            Ok(n) if n > 0 => n,
            _ => return,
        };
        conn.core.set_parked(conn.fd, None);
        conn.input.resume(&conn.core.buffers, n);
        conn.input.idle_buf = Vec::with_capacity(IDLE_BUFFER);
        // Boxed to break the type cycle serve -> park -> serve; once per wake-up.
        let resumed: Pin<Box<dyn Future<Output = ()>>> = Box::pin(serve(conn));
        monoio::spawn(resumed);
    }
}

enum Wait {
    Data,
    Closed,
    Park,
}

/// The request head as read, or what percore answers itself.
enum Prepared {
    Ready(Plan),
    Incomplete,
    Refuse(request::RequestError),
    /// An OPTIONS with Max-Forwards: 0, answered here.
    AnswerOptions {
        keep_alive: bool,
    },
}

/// What a client connection keeps for its whole life, parked or served:
/// every byte here is held by each idle connection.
struct Connection {
    fd: RawFd,
    input: ClientInput,
    output: ClientOutput,
    client_ip: Box<str>,
    core: Rc<CoreContext>,
}

/// A connection being served, with what only its requests use. A parked
/// connection keeps none of it: with these fields its task took a 384-byte
/// allocation rather than 320, and the canceller two small ones more (its
/// shared state, and the table it keeps once it has cancelled a read).
struct Serving {
    conn: Connection,
    /// The current request's id, sent upstream and returned to the client.
    request_id: Vec<u8>,
    /// The head to send upstream, kept whole so a safe request can be resent.
    up_head: Vec<u8>,
    /// Cancels this connection's idle read or client watch; replaced after use.
    canceller: Canceller,
    /// When the current request's handling began (its first bytes read):
    /// the start of the time it spends at the proxy.
    request_started: Instant,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.core.buffers.give(std::mem::take(&mut self.input.buf));
        self.core
            .plane
            .workers
            .core(self.core.core())
            .open_connections
            .sub(1);
        self.core.close(self.fd);
    }
}

impl Serving {
    /// Waits for the first bytes of the next request.
    async fn wait_for_request(&mut self) -> Wait {
        let core = self.conn.core.clone();
        self.conn.input.release(&core.buffers);
        let idle_timeout = core.settings().client_idle_timeout;
        if idle_timeout <= PARK_AFTER {
            return match monoio::time::timeout(idle_timeout, self.conn.input.read_idle()).await {
                Ok(Ok(n)) if n > 0 => {
                    self.conn.input.resume(&core.buffers, n);
                    Wait::Data
                }
                _ => Wait::Closed,
            };
        }
        let cancel = self.canceller.handle();
        let result = {
            let mut read = std::pin::pin!(self.conn.input.read_idle_cancelable(cancel));
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
                self.conn.input.resume(&core.buffers, n);
                Wait::Data
            }
            Err(error) if error.raw_os_error() == Some(libc::ECANCELED) => Wait::Park,
            _ => Wait::Closed,
        }
    }

    /// Reads, forwards and answers one request; `false` to close the connection.
    async fn handle_request(&mut self) -> bool {
        self.request_started = Instant::now();
        let mut plan = match self.read_head().await {
            Ok(plan) => plan,
            Err(keep_client) => return keep_client,
        };
        self.count_request();
        let mut exchange = Exchange {
            core: &self.conn.core,
            input: &mut self.conn.input,
            output: &mut self.conn.output,
            up_head: &mut self.up_head,
            request_id: &self.request_id,
            canceller: &mut self.canceller,
            request_started: self.request_started,
        };
        match exchange.run(&mut plan).await {
            Outcome::Relayed { keep_client } => keep_client,
            Outcome::Failed {
                status,
                message,
                keep_client,
            } => self.respond_local(status, message, !keep_client).await && keep_client,
            Outcome::Abort => {
                // A reset, not a FIN: a close-delimited body must not look complete.
                sys::reset_connection(self.conn.fd);
                false
            }
            Outcome::Switched { upstream } => {
                let tunnel = Tunnel {
                    input: &mut self.conn.input,
                    output: &mut self.conn.output,
                    upstream,
                    buffers: &self.conn.core.buffers,
                    idle_timeout: self.conn.core.settings().tunnel_idle_timeout,
                };
                let end = tunnel.run().await;
                tracing::debug!(?end, "WebSocket tunnel ended");
                false
            }
        }
    }

    /// Reads a whole request head within the head deadline, answering what
    /// percore answers itself. `Err(keep_client)` when there is nothing to
    /// forward.
    async fn read_head(&mut self) -> Result<Plan, bool> {
        self.request_id.clear();
        let mut head_deadline: Option<Instant> = None;
        loop {
            match self.prepare() {
                Prepared::Ready(plan) => return Ok(plan),
                Prepared::Refuse(error) => {
                    self.count_request();
                    // Its Display is the client-facing sentence (refusals only).
                    self.respond_local(error.status(), &error.to_string(), true)
                        .await;
                    return Err(false);
                }
                Prepared::AnswerOptions { keep_alive } => {
                    self.count_request();
                    let message = "OPTIONS answered by percore (Max-Forwards: 0)";
                    let written = self.respond_local(200, message, !keep_alive).await;
                    return Err(written && keep_alive);
                }
                Prepared::Incomplete => {}
            }
            if self.conn.input.is_full() {
                self.count_request();
                // The request line alone does not fit: its target is too long
                // (RFC 9112 §3: 414); otherwise the header section is (431).
                let (status, message) =
                    if memchr::memchr(b'\n', self.conn.input.pending()).is_none() {
                        (414, "request target too long")
                    } else {
                        (431, "request head too large")
                    };
                self.respond_local(status, message, true).await;
                return Err(false);
            }
            let deadline = *head_deadline.get_or_insert_with(|| {
                Instant::now() + self.conn.core.settings().request_head_timeout
            });
            match monoio::time::timeout_at(deadline.into(), self.conn.input.read_more()).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Err(false),
                Err(_) => {
                    self.count_request();
                    self.respond_local(408, "request head not received in time", true)
                        .await;
                    return Err(false);
                }
            }
        }
    }

    /// Counts a request this core answered (forwarded or refused).
    fn count_request(&self) {
        self.conn
            .core
            .plane
            .workers
            .core(self.conn.core.core())
            .requests
            .add(1);
    }

    /// Parses the pending head, picks a first backend and writes the upstream
    /// head. Synchronous: the parsed head borrows the input buffer.
    fn prepare(&mut self) -> Prepared {
        let mut headers = header_slots();
        let slots = &mut headers[..MAX_REQUEST_FIELDS];
        let head = match request::parse(self.conn.input.pending(), slots) {
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
            None => self.conn.core.generate_request_id(&mut self.request_id),
        }
        let bodiless = matches!(head.framing, BodyFraming::None | BodyFraming::Length(0));
        if head.max_forwards == Some(0) {
            // The last hop allowed: percore is the final recipient (RFC 9110
            // §7.6.2). A body it does not read ends the connection.
            let keep_alive = head.keep_alive && bodiless && !self.conn.core.is_draining();
            let head_len = head.head_len;
            self.conn.input.consume(head_len);
            return Prepared::AnswerOptions { keep_alive };
        }
        let first_pick = self.conn.core.pool.pick(&[], self.conn.core.ticker.now());
        let backend_authority = first_pick
            .as_ref()
            .map_or(&b"localhost"[..], |b| &b.backend.authority);
        self.up_head.clear();
        let fields = ForwardFields {
            client_ip: self.conn.client_ip.as_bytes(),
            request_id: &self.request_id,
            backend_authority,
        };
        let host_range = rewrite::write_request_head(&mut self.up_head, &head, &fields);
        if self.up_head.len() > self.conn.core.settings().buffer_size {
            // Forwarded within the head limit percore accepts itself, as
            // with the field count (HAProxy keeps tune.maxrewrite for this).
            return Prepared::Refuse(request::RequestError::ForwardedHeadTooLarge);
        }
        let backend_host = host_range.map(|range| BackendHost {
            range,
            // No backend yet ("localhost"): whichever is picked rewrites it.
            backend: first_pick.as_ref().map_or(BackendId::MAX, |b| b.backend.id),
        });
        let plan = Plan {
            framing: head.framing,
            version: head.version,
            // A drain answers every request with `Connection: close`.
            keep_alive: head.keep_alive && !self.conn.core.is_draining(),
            is_head: head.is_head(),
            expect_continue: head.expect_continue,
            websocket: head.websocket,
            retryable: head.is_idempotent() && bodiless,
            first_pick,
            head_len: self.up_head.len(),
            backend_host,
        };
        let head_len = head.head_len;
        self.conn.input.consume(head_len);
        Prepared::Ready(plan)
    }

    /// Sends a response percore generated; `false` if the client is gone.
    async fn respond_local(&mut self, status: u16, message: &str, close: bool) -> bool {
        if self.request_id.is_empty() {
            self.conn.core.generate_request_id(&mut self.request_id);
        }
        let mut out = std::mem::take(&mut self.up_head);
        out.clear();
        rewrite::write_local_response(&mut out, status, message, &self.request_id, close);
        let (result, out) = self.conn.output.write_all(out).await;
        self.up_head = out;
        let total = self.request_started.elapsed();
        self.conn.core.recorder.record_local(status, total);
        result.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// monoio's task around a future: header (state, vtable, owner) and
    /// trailer (the join waker).
    const TASK_OVERHEAD: usize = 40;

    fn future_size<A, B, F: Future>(_: fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle keep-alive connection is one parked task, which jemalloc
    /// rounds up to a size class; 10,000 idle connections hold 10,000 of
    /// them. A field added to `Connection`, or `park` turned back into an
    /// `async fn` (which keeps its `Connection` twice), shows here first.
    #[test]
    fn a_parked_connection_fits_a_320_byte_task() {
        let task = TASK_OVERHEAD + future_size(park);
        assert!(task <= 320, "parked task of {task} bytes");
    }
}
