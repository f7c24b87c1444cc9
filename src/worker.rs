//! Worker cores: one OS thread per core, pinned with core_affinity, each
//! running its own monoio runtime with its own SO_REUSEPORT listener, its own
//! view of the pool and its own buffers. Between requests each core applies
//! the pool snapshots the control plane fanned out, and reports the version;
//! the control plane's doorbell wakes it for them, so an idle core sleeps.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::Receiver;
use monoio::io::Canceller;
use monoio::net::TcpStream;

use crate::accept::{accept_loop, accept_queued};
use crate::config::ProxySettings;
use crate::pool::{ControlPlane, Inbox, LocalPool, PoolSnapshot};
use crate::proxy::{CoreContext, serve_client};
use crate::runtime::{self, DriverKind};

/// How long shutdown waits for closed connections' tasks to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How often a core sweeps: latency interval, expired connections, unused
/// buffers (see `sweep_parked`).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub struct WorkerSpec {
    pub index: usize,
    pub core_id: Option<core_affinity::CoreId>,
    pub listener: TcpListener,
    /// Pool snapshots, and the bell rung for them and for shutdown or drain.
    pub inbox: Inbox,
    pub plane: Arc<ControlPlane>,
    pub settings: ProxySettings,
    pub driver: DriverKind,
    /// Close everything now.
    pub shutdown: Arc<AtomicBool>,
    /// Drain gracefully: take nothing new, let what is in flight finish
    /// within `settings.shutdown_grace`.
    pub drain: Arc<AtomicBool>,
}

/// Starts a worker thread.
pub fn spawn(spec: WorkerSpec) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(format!("percore-w{}", spec.index)).spawn(move || {
        if let Some(core_id) = spec.core_id
            && !core_affinity::set_for_current(core_id)
        {
            tracing::warn!(worker = spec.index, core = core_id.id, "could not pin worker to its core; running unpinned");
        }
        let index = spec.index;
        let driver = spec.driver;
        if let Err(error) = runtime::block_on(driver, runtime::WORKER_RING, move || run_core(spec)) {
            tracing::error!(worker = index, %error, driver = driver.name(), "worker could not start its runtime");
        }
    })
}

async fn run_core(spec: WorkerSpec) {
    let WorkerSpec {
        index,
        listener,
        inbox,
        plane,
        settings,
        shutdown,
        drain,
        ..
    } = spec;
    let pool = LocalPool::new(index, plane.round_robin.clone());
    apply_updates(&pool, &inbox.updates, &plane);
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(worker = index, %error, "cannot register the listener");
            return;
        }
    };
    let core = CoreContext::new(pool.clone(), plane.clone(), settings);
    let canceller = Canceller::new();
    let stop_accepting = canceller.handle();
    monoio::spawn(core.ticker.clone().drive());
    monoio::spawn(sweep_parked(core.clone(), shutdown.clone()));
    monoio::spawn(control_loop(
        pool.clone(),
        inbox,
        plane,
        [shutdown.clone(), drain.clone()],
        canceller,
    ));

    let name = format!("worker {index}");
    let admit = |stream, peer| admit(&core, stream, peer);
    accept_loop(
        &listener,
        stop_accepting,
        || shutdown.load(Ordering::Acquire) || drain.load(Ordering::Acquire),
        &name,
        admit,
    )
    .await;
    if !shutdown.load(Ordering::Acquire) {
        drain_gracefully(&core, listener, &shutdown, index).await;
    } else {
        drop(listener);
    }

    // The last partial second's samples still count in `all`.
    core.recorder.rotate(Instant::now());
    // Shutdown: close every client connection and idle upstream
    // connection, and give the driver a few turns so the sockets' close
    // operations run before the runtime goes away.
    core.close_connections();
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while core.open_connections() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(2)).await;
    }
    pool.prune_idle(Instant::now(), Duration::ZERO);
    monoio::time::sleep(Duration::from_millis(10)).await;
}

/// Serves a new client connection, or resets it at once when this worker
/// holds `max_connections` already (the open ones keep being served).
fn admit(core: &Rc<CoreContext>, stream: TcpStream, peer: SocketAddr) {
    core.plane
        .workers
        .core(core.pool.core())
        .accepted_connections
        .add(1);
    if core.open_connections() >= core.settings().max_connections {
        crate::sys::reset_connection(stream.as_raw_fd());
        core.count_refused_connection();
        return;
    }
    monoio::spawn(serve_client(stream, peer, core.clone()));
}

/// A graceful drain: the connections already waiting in the listener's
/// queue are accepted and served (closing the listener would reset them),
/// the listener closes, idle connections close, and requests in flight get
/// until the shutdown grace to finish, each answered with
/// `Connection: close`.
async fn drain_gracefully(
    core: &Rc<CoreContext>,
    listener: monoio::net::TcpListener,
    shutdown: &AtomicBool,
    index: usize,
) {
    let queued = accept_queued(&listener, |stream, peer| admit(core, stream, peer));
    drop(listener);
    core.start_draining();
    let open = core.open_connections();
    let started = Instant::now();
    let deadline = started + core.settings().shutdown_grace;
    while core.open_connections() > 0
        && Instant::now() < deadline
        && !shutdown.load(Ordering::Acquire)
    {
        monoio::time::sleep(DRAIN_CHECK).await;
        core.close_idle(started.elapsed() >= FRESH_GRACE);
    }
    let cut = core.open_connections();
    if cut > 0 {
        tracing::warn!(
            worker = index,
            open,
            queued,
            cut,
            "drain: connections still open at the end of the grace period are closed"
        );
    } else {
        tracing::info!(
            worker = index,
            open,
            queued,
            "drain: every connection finished"
        );
    }
}

/// How often a draining core looks for connections gone idle.
const DRAIN_CHECK: Duration = Duration::from_millis(10);
/// How long a drain waits for the first request of a connection accepted
/// just before it (a client that connected sends at once; one that only
/// preconnected would otherwise hold the drain for the head deadline).
const FRESH_GRACE: Duration = Duration::from_secs(1);

/// Once a second: hands the second's latency samples to the control plane,
/// closes parked client connections whose idle timeout has passed and resets
/// clients that stopped reading (see `close_expired`), so an idle timeout is
/// honoured to within a second, closes idle upstream connections past theirs,
/// frees the buffers that went unused for that second, and publishes the
/// core's count of parked connections to its `WorkerStats`.
async fn sweep_parked(core: Rc<CoreContext>, shutdown: Arc<AtomicBool>) {
    let mut parked_before = 0;
    let mut wave_before = false;
    while !shutdown.load(Ordering::Acquire) {
        monoio::time::sleep(SWEEP_EVERY).await;
        let now = Instant::now();
        // The latency interval ends here: a second's samples go to the
        // control plane (see `latency`).
        core.recorder.rotate(now);
        core.close_expired(now);
        core.pool
            .prune_idle(now, core.settings().upstream_idle_timeout);
        let freed = core.trim_buffers();
        let parked = core.parked_total();
        core.plane
            .workers
            .core(core.pool.core())
            .parked_total
            .set(parked);
        let wave = parked - parked_before >= TRIM_AFTER_PARKED;
        // Once more after a wave, for the connections that parked at its end.
        if wave || wave_before || freed >= TRIM_AFTER_FREED {
            crate::memory::release_freed_memory();
        }
        parked_before = parked;
        wave_before = wave;
    }
}

/// Connections parked within a second that make it worth handing freed
/// memory back to the OS.
const TRIM_AFTER_PARKED: u64 = 1000;

/// Buffer bytes freed by one sweep that make it worth the same.
const TRIM_AFTER_FREED: usize = 1 << 20;

/// Applies pool updates and stops the accept loop on shutdown or drain,
/// each as soon as the control plane rings.
async fn control_loop(
    pool: Rc<LocalPool>,
    inbox: Inbox,
    plane: Arc<ControlPlane>,
    [shutdown, drain]: [Arc<AtomicBool>; 2],
    canceller: Canceller,
) {
    let Inbox { updates, bell } = inbox;
    let mut bell = bell.local();
    let mut canceller = Some(canceller);
    loop {
        bell.rung().await;
        if shutdown.load(Ordering::Acquire) {
            if let Some(canceller) = canceller.take() {
                canceller.cancel();
            }
            return;
        }
        // A drain stops the accept loop but keeps applying updates: the
        // requests still in flight may retry on other backends.
        if drain.load(Ordering::Acquire)
            && let Some(canceller) = canceller.take()
        {
            canceller.cancel();
        }
        apply_updates(&pool, &updates, &plane);
    }
}

/// Applies the newest pending snapshot and publishes the applied version.
fn apply_updates(pool: &LocalPool, updates: &Receiver<Arc<PoolSnapshot>>, plane: &ControlPlane) {
    if let Some(newest) = updates.try_iter().max_by_key(|snapshot| snapshot.version) {
        pool.apply(&newest);
    }
    plane
        .workers
        .core(pool.core())
        .applied_version
        .set(pool.version());
}

/// Binds one listening socket per worker on `addr`, all with SO_REUSEPORT so
/// the kernel spreads connections over the cores. Port 0 binds the first
/// socket to a free port and the rest to the same one.
pub fn bind_listeners(
    addr: SocketAddr,
    count: usize,
    handover: bool,
) -> std::io::Result<Vec<TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() != 0 && !handover {
        // SO_REUSEPORT would silently share a port another process of this
        // user holds; a plain bind first makes "in use" an error. A
        // handover wants exactly that sharing, so it skips the check.
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into())?;
    }
    let mut bound = addr;
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = Socket::new(
            Domain::for_address(bound),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&bound.into())?;
        socket.listen(4096)?;
        let listener: TcpListener = socket.into();
        bound = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}
