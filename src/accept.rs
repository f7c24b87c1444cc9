//! The accept loop that the proxy's and the admin API's listeners share:
//! accept until stopped; when the process is out of file descriptors, refuse
//! the waiting connections at once (a reserved descriptor makes room to take
//! each one and reset it) instead of leaving them hanging, say so at most
//! once a second, and back off instead of spinning.

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use monoio::io::CancelHandle;
use monoio::net::{TcpListener, TcpStream};

use crate::sys;

/// How long an accept error pauses the loop: long enough not to spin on a
/// full descriptor table, short enough that a freed descriptor is used soon.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// At most one log line per this interval for repeated accept errors.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(1);

/// Hands each accepted connection to `serve` until an accept is cancelled
/// through `stop` (or fails) while `stopping` says so. `listener_name`
/// names the listener in logs.
pub async fn accept_loop(
    listener: &TcpListener,
    stop: CancelHandle,
    stopping: impl Fn() -> bool,
    listener_name: &str,
    mut serve: impl FnMut(TcpStream, SocketAddr),
) {
    let mut last_error_log: Option<Instant> = None;
    let mut reserve = Reserve::open();
    loop {
        match listener.cancelable_accept(stop.clone()).await {
            Ok((stream, peer)) => serve(stream, peer),
            Err(_) if stopping() => return,
            Err(error) => {
                let out_of_descriptors =
                    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                let refused = if out_of_descriptors {
                    reserve.refuse_waiting(listener.as_raw_fd())
                } else {
                    0
                };
                if last_error_log.is_none_or(|at| at.elapsed() > ERROR_LOG_EVERY) {
                    tracing::warn!(listener = listener_name, %error, refused, "accept failed");
                    last_error_log = Some(Instant::now());
                }
                monoio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
}

/// Accepts every connection already waiting in the listener's queue without
/// blocking, so that closing the listener does not reset them.
pub fn accept_queued(
    listener: &TcpListener,
    mut serve: impl FnMut(TcpStream, SocketAddr),
) -> usize {
    let mut accepted = 0;
    while let Some(fd) = accept_now(listener.as_raw_fd()) {
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        if let Ok(stream) = TcpStream::from_std(stream) {
            accepted += 1;
            serve(stream, peer);
        }
    }
    accepted
}

/// One waiting connection, accepted without blocking; `None` when the queue
/// is empty or the accept fails.
fn accept_now(listener: RawFd) -> Option<RawFd> {
    // SAFETY: `listener` is an open listening socket owned by the caller;
    // null address pointers ask for no peer address.
    let fd = unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    (fd >= 0).then_some(fd)
}

/// One descriptor held back for the moment the table is full: closing it
/// makes room to accept a waiting connection, only to reset it, so the
/// client hears "no" at once rather than waiting on a queue nobody drains.
struct Reserve(Option<OwnedFd>);

impl Reserve {
    fn open() -> Reserve {
        Reserve(File::open("/dev/null").ok().map(OwnedFd::from))
    }

    /// Frees the reserved descriptor, resets the connections waiting on
    /// `listener` through the slot it leaves (at most 64 at a time, so a
    /// flood cannot hold the loop), and reserves it again; returns how many.
    fn refuse_waiting(&mut self, listener: RawFd) -> usize {
        self.0 = None;
        let mut refused = 0;
        while refused < 64 {
            let Some(fd) = accept_now(listener) else {
                break;
            };
            sys::reset_connection(fd);
            // SAFETY: `fd` came from accept4 and is closed once, here.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            refused += 1;
        }
        *self = Reserve::open();
        refused
    }
}
