//! percore: a thread-per-core HTTP/1.1 reverse proxy and load balancer on
//! monoio (io_uring).
//!
//! # Layout
//! In the order a request flows:
//! - [`cli`], [`config`]: command line and JSON settings, validated up front.
//! - [`server`]: starts the topology: control plane, workers, admin, mock backends.
//! - [`worker`]: one pinned thread per core with its own SO_REUSEPORT listener,
//!   applying pool updates between requests.
//! - [`runtime`]: monoio runtime per core: tuned io_uring, or epoll fallback.
//! - [`proxy`]: the data path, one task per client connection: head, pick,
//!   forward, stream both ways, failures to status codes.
//! - [`http1`]: pure HTTP/1.1 framing: request/response heads, chunked coding,
//!   header rewriting. No I/O.
//! - [`pool`]: authoritative backend pool (control plane) and each core's view,
//!   linked by versioned snapshots over crossbeam channels.
//! - [`balance`]: the `Strategy` trait and its strategies, one file each.
//! - [`health`]: the one active prober thread, the rise/fall state machine,
//!   passive ejection and the transitions `/status` shows.
//! - [`upstream`]: backend connections and the per-core idle keep-alive pool.
//! - [`buffer`]: per-core pool of I/O buffers.
//! - [`ticker`]: coarse per-core timers for the waits every request makes.
//! - [`metrics`]: per-core counters, summed when read.
//! - [`failure_log`]: backend failures at `warn`, rate-limited per core.
//! - [`memory`]: the allocator (jemalloc) and handing freed pages back.
//! - [`admin`]: the admin API on the control plane.
//! - [`mock_backend`]: the mock backends used by the demo, tests and benches.

pub mod admin;
pub mod balance;
pub mod buffer;
pub mod cli;
pub mod config;
pub mod failure_log;
pub mod health;
pub mod http1;
pub mod memory;
pub mod metrics;
pub mod mock_backend;
pub mod pool;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod ticker;
pub mod upstream;
pub mod worker;

pub use config::Config;
pub use server::{Server, StartError};

/// Starts the topology and serves until the process is stopped.
pub fn run(config: Config) -> Result<(), StartError> {
    server::raise_fd_limit();
    Server::start(config)?.wait();
    Ok(())
}
