//! What a core's client connections share: the local pool view, buffers,
//! the ticker, request ids, and the set of open connections that the
//! once-a-second sweep looks over (parked idle deadlines, stalled writes).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::buffer::BufferPool;
use crate::config::ProxySettings;
use crate::failure_log::FailureLog;
use crate::latency::Recorder;
use crate::pool::{ControlPlane, LocalPool};
use crate::sys;
use crate::ticker::Ticker;

/// Response bodies are relayed through buffers of this size, so that a
/// 64 KiB body and its head take one read and one write (with exactly
/// 64 KiB the head pushes the body's last bytes into a second pair).
pub(super) const RELAY_BUFFER: usize = 68 * 1024;
/// Free space kept in front of the backend's bytes for the client's head.
pub(super) const HEADROOM: usize = 1024;
/// Free buffers a core keeps of each kind after a burst, until `trim`: a
/// burst of large concurrent responses should not allocate and fault in
/// fresh buffers each time.
const MAX_FREE_BUFFERS: usize = 1024;

/// Everything a core's connections share.
pub struct CoreContext {
    pub pool: Rc<LocalPool>,
    /// Buffers for backend responses (`RELAY_BUFFER` plus headroom).
    pub(super) relay_buffers: BufferPool,
    /// Client connections open on this core, so shutdown can close them,
    /// with the idle deadline of those that are parked: a sweep closes the
    /// expired ones, so a parked connection needs no timer of its own (a
    /// monoio timer is 640 bytes, twice the rest of a parked connection).
    open_connections: RefCell<HashMap<RawFd, OpenConnection>>,
    parked_total: Cell<u64>,
    /// A graceful shutdown is under way: responses close their connection,
    /// idle connections are closed, nothing new is accepted.
    draining: Cell<bool>,
    pub plane: Arc<ControlPlane>,
    /// Coarse timers for the waits every request makes (see `ticker`).
    pub ticker: Rc<Ticker>,
    pub buffers: BufferPool,
    request_seq: Cell<u64>,
    /// `prefix-core-` of every request id this core generates: the same
    /// for the whole run, so it is formatted once.
    request_id_prefix: Box<[u8]>,
    pub(super) failure_log: FailureLog,
    /// This core's latency histograms and response counts.
    pub recorder: Recorder,
}

/// What the core's sweep knows of an open client connection.
struct OpenConnection {
    /// While parked: when its idle timeout ends.
    parked_until: Option<Instant>,
    /// Parked before its first request: a drain lets it send that one.
    fresh: bool,
    /// The connection's write count (see `client::ClientOutput`).
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

impl CoreContext {
    pub fn new(
        pool: Rc<LocalPool>,
        plane: Arc<ControlPlane>,
        settings: ProxySettings,
    ) -> Rc<CoreContext> {
        let started =
            plane.started.elapsed().as_nanos() as u32 ^ std::process::id().rotate_left(16);
        let request_id_prefix = request_id_prefix(started ^ unix_seconds(), pool.core());
        Rc::new(CoreContext {
            recorder: Recorder::new(pool.core(), plane.clone()),
            open_connections: RefCell::new(HashMap::new()),
            parked_total: Cell::new(0),
            draining: Cell::new(false),
            relay_buffers: BufferPool::keeping(RELAY_BUFFER + HEADROOM, MAX_FREE_BUFFERS, HEADROOM),
            buffers: BufferPool::new(settings.buffer_size, MAX_FREE_BUFFERS),
            pool,
            plane,
            ticker: Ticker::new(),
            request_seq: Cell::new(0),
            request_id_prefix,
            failure_log: FailureLog::default(),
        })
    }

    /// The data path's settings in force (see `LocalPool::settings`).
    #[inline]
    pub fn settings(&self) -> ProxySettings {
        self.pool.settings()
    }

    pub(super) fn core(&self) -> usize {
        self.pool.core()
    }

    /// Shuts down every open client connection: their pending reads end
    /// and their tasks finish, closing the sockets.
    pub fn close_connections(&self) {
        for &fd in self.open_connections.borrow().keys() {
            // The fd stays open until its Connection is dropped, which
            // removes it from this set first.
            sys::shutdown(fd);
        }
    }

    pub fn open_connections(&self) -> usize {
        self.open_connections.borrow().len()
    }

    /// Counts a connection reset because this worker held
    /// `max_connections`, and says so at most once a second.
    pub fn count_refused_connection(&self) {
        let stats = self.plane.workers.core(self.core());
        stats.refused_connections.add(1);
        if let Some(left_out) = self.failure_log.admit(self.ticker.now()) {
            let max_connections = self.settings().max_connections;
            tracing::warn!(
                worker = self.core(),
                max_connections,
                left_out,
                "connection limit reached: new connections are reset"
            );
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Starts a graceful drain: from now on responses close their
    /// connection and idle ones close; see `close_idle`.
    pub fn start_draining(&self) {
        self.draining.set(true);
        self.close_idle(false);
    }

    /// Ends the idle wait of parked connections (their read returns EOF and
    /// they close). Those that have not sent their first request yet were
    /// accepted, so they are served, once, unless `fresh_too`: the drain
    /// gives them a moment, not the whole head deadline. Only the read
    /// side is shut: a response being written still completes. Connections
    /// idle but not parked park within `PARK_AFTER` and are closed then.
    pub fn close_idle(&self, fresh_too: bool) {
        for (&fd, open) in self.open_connections.borrow().iter() {
            if open.parked_until.is_some() && (fresh_too || !open.fresh) {
                sys::shutdown_read(fd);
            }
        }
    }

    /// Shuts down parked connections idle past their deadline (their parked
    /// read ends and they close), and resets those whose client has taken no
    /// response bytes for the send timeout (their pending write fails), as
    /// nginx's `send_timeout` does. Called once a second by the core's sweep.
    ///
    /// A write counts as moving while it is not the one seen last time, or
    /// the socket's unsent queue changed: one write can wait on a large part
    /// of the send buffer draining, so a client reading slowly but steadily
    /// is not reset.
    pub fn close_expired(&self, now: Instant) {
        let send_timeout = self.settings().send_timeout;
        for (&fd, open) in self.open_connections.borrow_mut().iter_mut() {
            if open.parked_until.is_some_and(|deadline| deadline <= now) {
                sys::shutdown(fd);
            }
            let writes = open.writes.get();
            if writes % 2 == 0 {
                open.write_seen = None;
                continue;
            }
            let unsent = sys::unsent_bytes(fd);
            match open.write_seen {
                Some(seen) if seen.writes == writes && seen.unsent == unsent => {
                    if now.saturating_duration_since(seen.at) >= send_timeout {
                        sys::reset_connection(fd);
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

    /// Registers a new client connection with its shared write count.
    pub(super) fn open(&self, fd: RawFd, writes: Rc<Cell<u64>>) {
        self.open_connections.borrow_mut().insert(
            fd,
            OpenConnection {
                parked_until: None,
                fresh: true,
                writes,
                write_seen: None,
            },
        );
    }

    pub(super) fn close(&self, fd: RawFd) {
        self.open_connections.borrow_mut().remove(&fd);
    }

    /// Marks a connection parked until `deadline`, or awake with `None`
    /// (it has a request, so it is no longer fresh).
    pub(super) fn set_parked(&self, fd: RawFd, deadline: Option<Instant>) {
        self.parked_total
            .set(self.parked_total.get() + u64::from(deadline.is_some()));
        if let Some(entry) = self.open_connections.borrow_mut().get_mut(&fd) {
            entry.parked_until = deadline;
            entry.fresh &= deadline.is_some();
        }
    }

    /// Appends a request id unique within this process run: start-time
    /// prefix, core, sequence.
    pub(super) fn generate_request_id(&self, out: &mut Vec<u8>) {
        let seq = self.request_seq.get();
        self.request_seq.set(seq + 1);
        out.extend_from_slice(&self.request_id_prefix);
        push_hex(out, seq, 1);
    }
}

fn request_id_prefix(run: u32, core: usize) -> Box<[u8]> {
    let mut prefix = Vec::new();
    push_hex(&mut prefix, u64::from(run), 8);
    prefix.push(b'-');
    push_hex(&mut prefix, core as u64, 1);
    prefix.push(b'-');
    prefix.into_boxed_slice()
}

fn unix_seconds() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

fn push_hex(out: &mut Vec<u8>, value: u64, min_digits: usize) {
    let digits = (16 - value.leading_zeros() as usize / 4)
        .max(min_digits)
        .max(1);
    let mut text = [0u8; 16];
    for (i, byte) in text[..digits].iter_mut().enumerate() {
        let shift = (digits - 1 - i) * 4;
        *byte = b"0123456789abcdef"[((value >> shift) & 0xf) as usize];
    }
    out.extend_from_slice(&text[..digits]);
}
