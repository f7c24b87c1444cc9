//! The admin API (control plane), on the control plane's thread and monoio
//! runtime (shared with the health prober; see `server`), so that no
//! operator request ever runs on a worker core. The contract is
//! `docs/admin-api.md`.
//!
//! - `connection`: HTTP/1.1 per connection, with monoio-http's h1 codec,
//!   plus what it lacks: size limits, timeouts, keep-alive rules.
//! - `routes`: paths, methods, JSON bodies, errors; pool changes reply only
//!   once every core has applied them.
//! - `report`: the status document and the Prometheus exposition, read from
//!   the pool snapshot and the per-core counters.
//! - `traffic`: what the traffic did: `GET /histograms`, and the latency,
//!   response and error families of `GET /metrics`.
//!
//! With an admin token configured, every request needs it as a bearer
//! token (`connection::authorize`), or gets 401.
//!
//! Not filled yet, because what they report does not exist yet: the
//! health-check fields `last_check` and `transitions` (always null).

mod connection;
mod report;
mod routes;
mod traffic;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use monoio::io::Canceller;

use crate::doorbell::Bell;
use monoio::net::TcpStream;

use crate::accept::accept_loop;
use crate::config::AdminToken;
use crate::pool::ControlPlane;

/// Admin connections open at once; more are answered 503 and closed.
/// Operators and scripts need a handful; the cap keeps a runaway script from
/// exhausting the process's file descriptors, which the workers share.
const MAX_CONNECTIONS: usize = 256;

/// The answer to a connection over `MAX_CONNECTIONS`, written without
/// reading its request.
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 48\r\n\r\n{\"error\": \"too many admin connections are open\"}";
/// On shutdown, how long open connections get to notice and close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How often the cores' finished latency intervals are filed, so that their
/// channel holds about a second's worth between reads.
const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// What every admin connection shares, on the control plane's thread only.
pub(crate) struct AdminContext {
    pub plane: Arc<ControlPlane>,
    pub token: Option<AdminToken>,
    pub stopping: StopSignal,
    open_connections: Cell<usize>,
}

/// Serves the admin API on `listener` (non-blocking: monoio's epoll driver
/// needs it) until `shutdown` is set and `bell` rung, then gives open
/// connections a moment to close.
pub async fn serve(
    listener: TcpListener,
    plane: Arc<ControlPlane>,
    token: Option<AdminToken>,
    shutdown: Arc<AtomicBool>,
    bell: Bell,
) {
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "admin API cannot register its listener");
            return;
        }
    };
    let context = Rc::new(AdminContext {
        plane,
        token,
        stopping: StopSignal::default(),
        open_connections: Cell::new(0),
    });
    let canceller = Canceller::new();
    let stop_accepting = canceller.handle();
    monoio::spawn(watch_shutdown(shutdown, bell, context.clone(), canceller));
    monoio::spawn(collect_latency(context.clone()));

    accept_loop(
        &listener,
        stop_accepting,
        || context.stopping.is_set(),
        "admin",
        |stream, peer| admit(&context, stream, peer),
    )
    .await;
    // Connections saw the stop signal; let them close their sockets before
    // the runtime (and with it any task still pending) goes away.
    let deadline = Instant::now() + CLOSE_GRACE;
    while context.open_connections.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Serves an accepted admin connection, or refuses it with a 503 when
/// `MAX_CONNECTIONS` are open.
fn admit(context: &Rc<AdminContext>, stream: TcpStream, peer: SocketAddr) {
    if context.open_connections.get() >= MAX_CONNECTIONS {
        tracing::warn!(%peer, limit = MAX_CONNECTIONS, "admin connection refused: too many open");
        monoio::spawn(refuse(stream));
        return;
    }
    let _ = stream.set_nodelay(true);
    context
        .open_connections
        .set(context.open_connections.get() + 1);
    let context = context.clone();
    monoio::spawn(async move {
        connection::serve(stream, &context).await;
        context
            .open_connections
            .set(context.open_connections.get() - 1);
    });
}

/// A lingering close, bounded: the reply, a FIN, then what the client sent
/// is read and dropped, since closing with it unread would reset the reply
/// away.
async fn refuse(mut stream: TcpStream) {
    use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
    let linger = async {
        stream.write_all(TOO_MANY).await.0?;
        stream.shutdown().await?;
        let mut buf = vec![0u8; 4096];
        for _ in 0..16 {
            let (result, returned) = stream.read(buf).await;
            buf = returned;
            if result? == 0 {
                break;
            }
        }
        io::Result::Ok(())
    };
    let _ = monoio::time::timeout(Duration::from_secs(1), linger).await;
}

/// Files the cores' latency intervals once a second until the API stops.
async fn collect_latency(context: Rc<AdminContext>) {
    while !context.stopping.is_set() {
        monoio::select! {
            _ = monoio::time::sleep(COLLECT_EVERY) => context.plane.latency.collect(),
            _ = context.stopping.wait() => return,
        }
    }
}

async fn watch_shutdown(
    shutdown: Arc<AtomicBool>,
    bell: Bell,
    context: Rc<AdminContext>,
    canceller: Canceller,
) {
    let mut bell = bell.local();
    while !shutdown.load(Ordering::Acquire) {
        bell.rung().await;
    }
    context.stopping.set();
    canceller.cancel();
}

/// The shutdown flag as this runtime's tasks await it: set once by
/// `watch_shutdown`, which wakes every waiting task. A wait that ends any
/// other way (its `select!` lost) takes its waker back out, so idle
/// keep-alive connections coming and going leave nothing behind.
#[derive(Default)]
pub(crate) struct StopSignal {
    set: Cell<bool>,
    waiting: RefCell<Vec<(u64, Waker)>>,
    next_wait: Cell<u64>,
}

impl StopSignal {
    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    fn set(&self) {
        self.set.set(true);
        for (_, waker) in self.waiting.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Completes once the admin API is stopping.
    pub fn wait(&self) -> StopWait<'_> {
        StopWait {
            signal: self,
            id: None,
        }
    }
}

pub(crate) struct StopWait<'a> {
    signal: &'a StopSignal,
    id: Option<u64>,
}

impl Future for StopWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let signal = self.signal;
        if signal.set.get() {
            return Poll::Ready(());
        }
        let mut waiting = signal.waiting.borrow_mut();
        match self.id {
            Some(id) => {
                if let Some((_, waker)) = waiting.iter_mut().find(|(entry, _)| *entry == id) {
                    waker.clone_from(cx.waker());
                }
            }
            None => {
                let id = signal.next_wait.get();
                signal.next_wait.set(id + 1);
                waiting.push((id, cx.waker().clone()));
                drop(waiting);
                self.id = Some(id);
            }
        }
        Poll::Pending
    }
}

impl Drop for StopWait<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.signal
                .waiting
                .borrow_mut()
                .retain(|(entry, _)| *entry != id);
        }
    }
}
