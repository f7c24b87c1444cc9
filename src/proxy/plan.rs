//! What both halves of an exchange share: the request's plan (its framing,
//! the head to send upstream), where the upload stands, and the signal by
//! which the download side asks the upload side to watch the client.

use std::cell::Cell;
use std::ops::Range;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};

use crate::http1::{BodyFraming, Version};
use crate::pool::{Backend, BackendId, LocalBackend};
use crate::sys;

/// What is known of a request once its head is read and a backend picked.
pub(super) struct Plan {
    pub(super) framing: BodyFraming,
    pub(super) version: Version,
    pub(super) keep_alive: bool,
    pub(super) is_head: bool,
    pub(super) expect_continue: bool,
    /// A WebSocket upgrade was offered to the backend: a 101 switches the
    /// connection to a tunnel.
    pub(super) websocket: bool,
    /// Safe to send again after a reused connection failed: idempotent and bodiless.
    pub(super) retryable: bool,
    pub(super) first_pick: Option<Rc<LocalBackend>>,
    /// Length of the head in `up_head`, before any coalesced body bytes.
    pub(super) head_len: usize,
    /// Where the head carries a backend's own authority as its Host (the
    /// request had none: HTTP/1.0), and which backend's.
    pub(super) backend_host: Option<BackendHost>,
}

pub(super) struct BackendHost {
    pub(super) range: Range<usize>,
    pub(super) backend: BackendId,
}

impl Plan {
    pub(super) fn has_body(&self) -> bool {
        !matches!(self.framing, BodyFraming::None | BodyFraming::Length(0))
    }

    /// Makes a head that names a backend as its Host name `backend`, so a
    /// retry on another backend does not carry the first one's authority.
    /// `up_head` holds the head (and perhaps coalesced body bytes).
    pub(super) fn retarget_head(&mut self, up_head: &mut Vec<u8>, backend: &Backend) {
        let Some(host) = self.backend_host.as_mut() else {
            return;
        };
        if host.backend == backend.id {
            return;
        }
        let new_end = host.range.start + backend.authority.len();
        up_head.splice(host.range.clone(), backend.authority.iter().copied());
        self.head_len = self.head_len + new_end - host.range.end;
        host.range.end = new_end;
        host.backend = backend.id;
    }
}

/// Where the upload stands, read by the download side and by `forward`.
pub(super) struct UploadProgress {
    phase: Cell<UploadPhase>,
    /// The whole request body has been read from the client, so the client
    /// connection is at a message boundary.
    request_read: Cell<bool>,
    /// The client has sent body bytes (or they came with the head).
    body_started: Cell<bool>,
    /// The client waits for a 100 (Continue) before sending its body.
    expect_continue: bool,
    /// Writes of request bytes the backend has accepted: while these move,
    /// a long upload is progress, not a backend that fails to answer.
    upstream_writes: Cell<u64>,
    /// The upstream socket, whose unsent queue shows progress within a write.
    upstream_fd: RawFd,
    /// Raised by the download side once the response is late: the upload
    /// side then watches the client for a close. The download's timer
    /// serves both, so a fast exchange sets one timer, not two.
    pub(super) watch_client: Signal,
}

/// What the upload side is doing, which decides what dropping it costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UploadPhase {
    /// Writing from `up_head` (head, coalesced or re-chunked body); the
    /// client buffer is untouched. Safe to drop.
    Sending,
    /// Reading request body bytes from the client. The read owns the client
    /// buffer: dropping it loses the buffer.
    AwaitingBody,
    /// Writing body bytes straight from the client buffer. Dropping it
    /// loses the buffer too.
    ForwardingBody,
    /// Everything sent; waiting before watching the client. Safe to drop.
    Sent,
    /// A cancellable read watches the client: cancel, then await it.
    Watching,
}

impl UploadProgress {
    pub(super) fn new(plan: &Plan, upstream_fd: RawFd) -> UploadProgress {
        UploadProgress {
            phase: Cell::new(UploadPhase::Sending),
            request_read: Cell::new(!plan.has_body()),
            body_started: Cell::new(false),
            expect_continue: plan.expect_continue,
            upstream_writes: Cell::new(0),
            upstream_fd,
            watch_client: Signal::default(),
        }
    }

    pub(super) fn phase(&self) -> UploadPhase {
        self.phase.get()
    }

    pub(super) fn set_phase(&self, phase: UploadPhase) {
        self.phase.set(phase);
    }

    pub(super) fn request_read(&self) -> bool {
        self.request_read.get()
    }

    pub(super) fn set_request_read(&self, read: bool) {
        self.request_read.set(read);
    }

    pub(super) fn set_body_started(&self, started: bool) {
        self.body_started.set(started);
    }

    pub(super) fn count_upstream_write(&self) {
        self.upstream_writes.set(self.upstream_writes.get() + 1);
    }

    /// The backend may be waiting for body bytes the client has not sent:
    /// not the backend's delay, unless the client itself waits for a 100
    /// (Continue) and has sent no body yet.
    pub(super) fn client_owes_body(&self) -> bool {
        self.phase.get() == UploadPhase::AwaitingBody
            && (self.body_started.get() || !self.expect_continue)
    }

    /// A mark for `advanced`: the backend's intake as of now.
    pub(super) fn intake_mark(&self) -> (u64, libc::c_int) {
        (
            self.upstream_writes.get(),
            sys::unsent_bytes(self.upstream_fd),
        )
    }

    /// Whether the backend took request bytes since `mark`, which is moved
    /// on: a write completed, or the socket's unsent queue shrank (one write
    /// can wait for a large part of the send buffer to drain).
    pub(super) fn advanced(&self, mark: &mut (u64, libc::c_int)) -> bool {
        let now = self.intake_mark();
        let advanced = now.0 != mark.0 || now.1 < mark.1;
        *mark = now;
        advanced
    }
}

/// A flag one task raises and another awaits, waking the waiter: sound
/// whichever tasks the two sides run in.
#[derive(Default)]
pub(super) struct Signal {
    raised: Cell<bool>,
    waiter: Cell<Option<Waker>>,
}

impl Signal {
    pub(super) fn raise(&self) {
        self.raised.set(true);
        if let Some(waker) = self.waiter.take() {
            waker.wake();
        }
    }

    pub(super) fn is_raised(&self) -> bool {
        self.raised.get()
    }

    pub(super) async fn raised(&self) {
        std::future::poll_fn(|cx| {
            if self.raised.get() {
                return Poll::Ready(());
            }
            // Cloned once: the waiter polls from the same task each time.
            let waker = match self.waiter.take() {
                Some(waker) if waker.will_wake(cx.waker()) => waker,
                _ => cx.waker().clone(),
            };
            self.waiter.set(Some(waker));
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raised_signal_wakes_a_waiter_in_another_task() {
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let signal = Rc::new(Signal::default());
            let waiter = monoio::spawn({
                let signal = signal.clone();
                async move {
                    signal.raised().await;
                    true
                }
            });
            // Let the waiter block first, so only the wake can resume it.
            monoio::time::sleep(std::time::Duration::from_millis(5)).await;
            assert!(!signal.is_raised());
            signal.raise();
            let woke = monoio::time::timeout(std::time::Duration::from_secs(5), waiter).await;
            assert_eq!(woke.ok(), Some(true), "the waiter was not woken");
        });
    }

    fn plan_with_host(range: Range<usize>, backend: BackendId) -> Plan {
        Plan {
            framing: BodyFraming::None,
            version: Version::Http10,
            keep_alive: false,
            is_head: false,
            expect_continue: false,
            websocket: false,
            retryable: true,
            first_pick: None,
            head_len: 0,
            backend_host: Some(BackendHost { range, backend }),
        }
    }

    #[test]
    fn retarget_rewrites_the_backend_authority_once() {
        let mut head = b"GET / HTTP/1.1\r\nHost: 10.0.0.1:80\r\nVia: 1.0 percore\r\n\r\n".to_vec();
        let start = 22;
        let mut plan = plan_with_host(start..start + 11, 1);
        plan.head_len = head.len();
        let backend = Backend {
            id: 2,
            url: "http://127.0.0.1:65000".into(),
            addr: "127.0.0.1:65000".parse().unwrap(),
            authority: b"127.0.0.1:65000"[..].into(),
            weight: 1.into(),
            counters: crate::metrics::PerCore::new(1),
        };
        plan.retarget_head(&mut head, &backend);
        assert_eq!(
            head,
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1:65000\r\nVia: 1.0 percore\r\n\r\n"
        );
        assert_eq!(plan.head_len, head.len());
        // Same backend again: nothing changes.
        plan.retarget_head(&mut head, &backend);
        assert_eq!(plan.head_len, head.len());
        assert!(head.starts_with(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:65000\r\n"));
    }
}
