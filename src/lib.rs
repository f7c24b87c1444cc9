//! percore: a thread-per-core HTTP/1.1 reverse proxy and load balancer on
//! monoio (io_uring).
//!
//! # Layout
//! In the order a request flows:
//! - [`cli`], [`config`]: command line and JSON settings, validated up front,
//!   and the data path's settings (`ProxySettings`) made from them.
//! - [`server`]: starts the topology: workers, the control plane's thread
//!   (admin API and health prober), mock backends.
//! - [`worker`]: one pinned thread per core with its own SO_REUSEPORT listener,
//!   applying pool updates between requests.
//! - [`accept`]: the accept loop (with backoff on errors) of the proxy's and
//!   the admin API's listeners.
//! - [`runtime`]: monoio runtime per core: tuned io_uring, or epoll fallback.
//! - [`proxy`]: the data path, one task per client connection: the client
//!   loop and parking (`proxy/mod.rs`), per-core context and sweep
//!   (`core`), client I/O (`client`), one request's trip with retries
//!   (`exchange`), the request body up (`upload`) and the response down
//!   (`download`), and what the two halves share (`plan`).
//! - [`http1`]: pure HTTP/1.1 framing: request/response heads, chunked coding,
//!   header rewriting. No I/O.
//! - [`pool`]: authoritative backend pool (control plane) and each core's view,
//!   linked by versioned snapshots over crossbeam channels.
//! - [`doorbell`]: how the control plane wakes a core (or its own prober and
//!   admin API) at once for news, so that nothing polls while idle.
//! - [`balance`]: the `Strategy` trait and its strategies, one file each.
//! - [`health`]: the one active prober (a task on the control plane's
//!   thread, beside the admin API), the rise/fall state machine,
//!   passive ejection and the transitions `/status` shows.
//! - [`upstream`]: backend connections and the per-core idle keep-alive pool.
//! - [`buffer`]: per-core pool of I/O buffers, and reads that append to one.
//! - [`sys`]: raw socket calls monoio lacks (reset, unsent queue, peek).
//! - [`ticker`]: coarse per-core timers for the waits every request makes.
//! - [`metrics`]: per-core counters, summed when read.
//! - [`latency`]: per-core latency histograms, rotated every second and
//!   merged into the 1s/10s/60s/all windows on the control plane.
//! - [`failure_log`]: backend failures at `warn`, rate-limited per core.
//! - [`memory`]: the allocator (jemalloc) and handing freed pages back.
//! - [`admin`]: the admin API on the control plane.
//! - [`mock_backend`]: the mock backends used by the demo, tests and benches.
//! - [`signals`]: SIGTERM/SIGINT drain gracefully, SIGHUP reloads.
//! - [`reload`]: rereading the configuration while running.
//! - [`ctl`]: `percore ctl`, the operator's client of the admin API.

pub mod accept;
pub mod admin;
pub mod balance;
pub mod buffer;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod doorbell;
pub mod failure_log;
pub mod health;
pub mod http1;
pub mod latency;
pub mod memory;
pub mod metrics;
pub mod mock_backend;
pub mod pool;
pub mod proxy;
pub mod reload;
pub mod runtime;
pub mod server;
pub mod signals;
pub mod sys;
pub mod ticker;
pub mod upstream;
pub mod worker;

pub use config::Config;
pub use server::{Server, StartError};

/// Starts the topology and serves until a signal drains it; `source`
/// rereads the configuration for a reload (SIGHUP, `POST /reload`).
pub fn run(config: Config, source: reload::ConfigSource) -> Result<(), StartError> {
    server::raise_fd_limit();
    let caught = signals::catch().map_err(StartError::Thread)?;
    let grace = config.shutdown_grace;
    let reloader = reload::Reloader::new(source, config.clone());
    let server = Server::start(config)?;
    let plane = server.control().clone();
    let _ = plane.reloader.set(reloader.clone());
    let reload = move || {
        let _ = reloader.reload(&plane);
    };
    caught
        .handle(server.drain_handle(), grace, reload)
        .map_err(StartError::Thread)?;
    server.wait();
    tracing::info!("percore stopped");
    Ok(())
}
