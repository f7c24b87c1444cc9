//! Doorbells: how another thread wakes a core's event loop at once, without
//! the core polling for it. The news itself travels on its own path (a
//! crossbeam channel, an atomic flag); the bell only says "look now".
//!
//! A ring writes one byte to a socket pair whose other end the owning
//! runtime reads, with io_uring or epoll alike. Rings between two looks
//! coalesce into that one byte, so a burst of pool updates costs the core
//! one wake-up, and an idle core sleeps until there is something to see.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// If a bell cannot be waited on (never seen so far), its owner looks this
/// often instead, as it did before bells.
const FALLBACK_POLL: Duration = Duration::from_millis(10);

/// A new bell and the doorbell that rings it. If the socket pair cannot be
/// made (out of file descriptors), the bell's owner looks on a timer.
pub fn doorbell() -> (Doorbell, Bell) {
    let (tx, rx) = match socket_pair() {
        Ok((tx, rx)) => (Some(tx), Some(rx)),
        Err(error) => {
            warn_broken(&error);
            (None, None)
        }
    };
    let shared = Arc::new(Shared {
        tx,
        pending: AtomicBool::new(false),
    });
    let bell = Bell {
        shared: shared.clone(),
        rx,
    };
    (Doorbell(shared), bell)
}

fn socket_pair() -> io::Result<(StdUnixStream, StdUnixStream)> {
    let (tx, rx) = StdUnixStream::pair()?;
    // A full buffer only means a ring is waiting already: never block on it.
    tx.set_nonblocking(true)?;
    // monoio's epoll driver needs it; io_uring does not mind.
    rx.set_nonblocking(true)?;
    Ok((tx, rx))
}

struct Shared {
    tx: Option<StdUnixStream>,
    /// A byte is on its way that the owner has not yet answered.
    pending: AtomicBool,
}

/// Rings a bell from any thread.
#[derive(Clone)]
pub struct Doorbell(Arc<Shared>);

impl std::fmt::Debug for Doorbell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Doorbell")
    }
}

impl Doorbell {
    /// Wakes the bell's owner. Call it after making the change the owner
    /// should see: the owner looks after the ring reaches it.
    pub fn ring(&self) {
        if !self.0.pending.swap(true, Ordering::AcqRel)
            && let Some(tx) = &self.0.tx
            && let Err(error) = (&*tx).write(&[1])
            && error.kind() != io::ErrorKind::WouldBlock
        {
            // No byte is on its way: let the next ring try again rather
            // than wait for an answer to this one.
            self.0.pending.store(false, Ordering::Release);
        }
    }
}

/// The receiving end, made on any thread and sent to its owner, which
/// registers it with its runtime (`local`).
pub struct Bell {
    shared: Arc<Shared>,
    rx: Option<StdUnixStream>,
}

impl Bell {
    /// Registers the bell with the calling thread's runtime.
    pub fn local(self) -> LocalBell {
        let rx = self
            .rx
            .and_then(|std| match monoio::net::UnixStream::from_std(std) {
                Ok(stream) => Some(stream),
                Err(error) => {
                    warn_broken(&error);
                    None
                }
            });
        LocalBell {
            shared: self.shared,
            rx,
        }
    }
}

/// A bell its owner waits on. `rx` is `None` if the bell could not be made
/// or waited on (never seen so far): the owner then looks every
/// `FALLBACK_POLL`.
pub struct LocalBell {
    shared: Arc<Shared>,
    rx: Option<monoio::net::UnixStream>,
}

impl LocalBell {
    /// Completes at the next ring, or at once if one came since the last
    /// call completed; the caller then looks at what changed. Safe to drop
    /// unfinished (a `select!` that another branch won): it waits for
    /// readiness and consumes nothing until it completes.
    pub async fn rung(&mut self) {
        loop {
            let Some(stream) = &self.rx else {
                return monoio::time::sleep(FALLBACK_POLL).await;
            };
            if drain(stream.as_raw_fd()) {
                // Acquire pairs with the ring's swap: what the ringer changed
                // before ringing is visible to the caller's look. A ring after
                // this swap sends a new byte.
                self.shared.pending.swap(false, Ordering::AcqRel);
                return;
            }
            if let Err(error) = stream.readable(false).await {
                warn_broken(&error);
                self.rx = None;
            }
        }
    }
}

fn warn_broken(error: &io::Error) {
    tracing::warn!(%error, every = ?FALLBACK_POLL, "a wake-up channel failed; looking for updates on a timer instead");
}

/// Reads every byte waiting on the non-blocking `fd`; whether there was any.
/// (Never end of file: the bell itself holds the sending end, in `Shared`.)
fn drain(fd: RawFd) -> bool {
    let mut buf = [0u8; 64];
    let mut any = false;
    loop {
        // SAFETY: `fd` is the bell's open socket; at most `buf.len()` bytes
        // are written into `buf`.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n <= 0 {
            return any;
        }
        any = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{self, DriverKind};
    use std::time::Instant;

    fn on_each_driver(test: fn() -> std::pin::Pin<Box<dyn Future<Output = ()>>>) {
        let best = runtime::probe(crate::config::DriverChoice::Auto).expect("probe");
        for driver in [DriverKind::Epoll, best] {
            runtime::block_on(driver, runtime::CONTROL_RING, test).expect("runtime");
        }
    }

    /// Whether `rung()` completes within `within`.
    async fn rings_within(bell: &mut LocalBell, within: Duration) -> bool {
        monoio::time::timeout(within, bell.rung()).await.is_ok()
    }

    #[test]
    fn a_ring_from_another_thread_wakes_the_owner_at_once() {
        on_each_driver(|| {
            Box::pin(async {
                let (doorbell, bell) = doorbell();
                let mut bell = bell.local();
                for _ in 0..3 {
                    let ringer = doorbell.clone();
                    let rang = Instant::now();
                    let thread = std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(20));
                        ringer.ring();
                    });
                    assert!(rings_within(&mut bell, Duration::from_secs(5)).await);
                    let waited = rang.elapsed();
                    thread.join().unwrap();
                    assert!(
                        waited >= Duration::from_millis(20),
                        "woke before the ring: {waited:?}"
                    );
                }
            })
        });
    }

    #[test]
    fn rings_before_a_look_coalesce_into_one_wake_up() {
        on_each_driver(|| {
            Box::pin(async {
                let (doorbell, bell) = doorbell();
                let mut bell = bell.local();
                assert!(
                    !rings_within(&mut bell, Duration::from_millis(30)).await,
                    "rang unrung"
                );
                for _ in 0..100 {
                    doorbell.ring();
                }
                assert!(rings_within(&mut bell, Duration::from_secs(1)).await);
                assert!(
                    !rings_within(&mut bell, Duration::from_millis(30)).await,
                    "100 rings woke the owner twice"
                );
                doorbell.ring();
                assert!(
                    rings_within(&mut bell, Duration::from_secs(1)).await,
                    "a later ring was lost"
                );
            })
        });
    }
}
