//! Upstream connections: connecting with a timeout, and the per-core pool of
//! idle keep-alive connections to each backend. A connection goes back to the
//! pool only after an exchange whose framing was fully honoured on both sides;
//! anything in doubt is closed instead.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use monoio::io::Splitable;
use monoio::net::TcpStream;
use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};

/// A connection to a backend, split so the request body can be sent while
/// the response is read (a backend may answer before reading the whole body).
pub struct UpstreamConn {
    pub rd: TcpOwnedReadHalf,
    pub wr: TcpOwnedWriteHalf,
    fd: RawFd,
    /// Taken from the idle pool rather than freshly connected: the backend
    /// may have closed it meanwhile.
    pub reused: bool,
}

impl UpstreamConn {
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Whether the backend closed (or wrote to) this idle connection. The
    /// check costs a syscall, so the caller may spare it on
    /// a connection reused within a tick for a request that can be resent.
    pub fn is_stale(&self) -> bool {
        crate::sys::closed_or_readable(self.fd)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} timed out")]
    Timeout { addr: SocketAddr },
    #[error("connect to {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
}

/// Opens a new connection with TCP_NODELAY (heads and small bodies go out at once).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<UpstreamConn, ConnectError> {
    let stream = match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Err(_) => return Err(ConnectError::Timeout { addr }),
        Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
        Ok(Ok(stream)) => stream,
    };
    stream
        .set_nodelay(true)
        .map_err(|source| ConnectError::Io { addr, source })?;
    let fd = stream.as_raw_fd();
    let (rd, wr) = stream.into_split();
    Ok(UpstreamConn {
        rd,
        wr,
        fd,
        reused: false,
    })
}

struct Idle {
    conn: UpstreamConn,
    since: Instant,
}

/// One core's idle connections to one backend, most recently used last.
#[derive(Default)]
pub struct IdleConnections {
    conns: RefCell<Vec<Idle>>,
}

impl IdleConnections {
    /// The warmest idle connection that has not outlived `idle_timeout`,
    /// and how long it has been idle (by the caller's clock).
    pub fn take(&self, now: Instant, idle_timeout: Duration) -> Option<(UpstreamConn, Duration)> {
        let mut conns = self.conns.borrow_mut();
        while let Some(idle) = conns.pop() {
            let idle_for = now.saturating_duration_since(idle.since);
            if idle_for < idle_timeout {
                let mut conn = idle.conn;
                conn.reused = true;
                return Some((conn, idle_for));
            }
        }
        None
    }

    /// Returns a connection after a clean exchange; closes it if `max_idle` are kept already.
    pub fn put(&self, conn: UpstreamConn, now: Instant, max_idle: usize) {
        let mut conns = self.conns.borrow_mut();
        if conns.len() < max_idle {
            conns.push(Idle { conn, since: now });
        }
    }

    /// Closes connections idle for `idle_timeout` or longer.
    pub fn prune(&self, now: Instant, idle_timeout: Duration) {
        self.conns
            .borrow_mut()
            .retain(|idle| now.duration_since(idle.since) < idle_timeout);
    }

    pub fn len(&self) -> usize {
        self.conns.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
