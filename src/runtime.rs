//! Building a monoio runtime on the chosen driver: io_uring with
//! COOP_TASKRUN and SINGLE_ISSUER, plain io_uring where the kernel refuses
//! those flags, and monoio's epoll driver where io_uring is unavailable
//! altogether (old kernels, seccomp in containers).
//!
//! DEFER_TASKRUN is left out on purpose: saturated, it saves at most a few
//! percent of CPU per request, but with monoio 0.2.4's timed waits the loop
//! can sleep through completions until its next timer, a stall of whole
//! timer periods under load. The figures are in docs/performance-notes.md.

use std::future::Future;
use std::io;

use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::config::DriverChoice;

/// Submission queue entries of a worker core's ring; completions in flight
/// are not bounded by it. (With epoll: the events one wait can return.)
pub const WORKER_RING: u32 = 4096;
/// The same for the control plane's thread (admin API and health prober),
/// which has a few operations in flight, not thousands. The rings are mapped and
/// resident from the start, and their size is the entries' (64 bytes each)
/// plus the completion queue's (twice as many, 16 bytes each): 404 KiB at
/// 4,096 entries, 26 KiB at 256. A burst of more submissions than this is
/// submitted in batches, and the kernel holds completions that overflow.
pub const CONTROL_RING: u32 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    /// io_uring with COOP_TASKRUN + SINGLE_ISSUER.
    UringTuned,
    /// io_uring with monoio's default ring set-up.
    Uring,
    Epoll,
}

impl DriverKind {
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::UringTuned => "io_uring (coop_taskrun, single_issuer)",
            DriverKind::Uring => "io_uring (default ring set-up)",
            DriverKind::Epoll => "epoll",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("io_uring driver requested but unavailable: {0}")]
pub struct UringUnavailable(io::Error);

fn tuned_builder() -> io_uring::Builder {
    let mut builder = io_uring::IoUring::builder();
    builder.setup_coop_taskrun().setup_single_issuer();
    builder
}

/// Finds the best driver this kernel allows for `choice`, by building a
/// small ring of each kind.
pub fn probe(choice: DriverChoice) -> Result<DriverKind, UringUnavailable> {
    // On a thread of its own: a ring's teardown can leave task work that
    // interrupts the caller's next blocking syscall with EINTR.
    std::thread::spawn(move || probe_here(choice))
        .join()
        .unwrap_or(Ok(DriverKind::Epoll))
}

fn probe_here(choice: DriverChoice) -> Result<DriverKind, UringUnavailable> {
    if choice == DriverChoice::Epoll {
        return Ok(DriverKind::Epoll);
    }
    if tuned_builder().build(8).is_ok() {
        return Ok(DriverKind::UringTuned);
    }
    match io_uring::IoUring::new(8) {
        Ok(_) => Ok(DriverKind::Uring),
        Err(error) if choice == DriverChoice::Uring => Err(UringUnavailable(error)),
        Err(error) => {
            tracing::warn!(%error, "io_uring is unavailable; falling back to the epoll driver");
            Ok(DriverKind::Epoll)
        }
    }
}

/// Runs `make()`'s future to completion on a new runtime of `kind` with
/// `entries` ring entries, on the calling thread (the ring must be created
/// by the thread that uses it).
pub fn block_on<F, Fut>(kind: DriverKind, entries: u32, make: F) -> io::Result<Fut::Output>
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    match kind {
        DriverKind::UringTuned | DriverKind::Uring => {
            let mut builder = RuntimeBuilder::<IoUringDriver>::new().with_entries(entries);
            if kind == DriverKind::UringTuned {
                builder = builder.uring_builder(tuned_builder());
            }
            let mut runtime: monoio::Runtime<TimeDriver<IoUringDriver>> =
                builder.enable_timer().build()?;
            Ok(runtime.block_on(make()))
        }
        DriverKind::Epoll => {
            let mut runtime: monoio::Runtime<TimeDriver<LegacyDriver>> =
                RuntimeBuilder::<LegacyDriver>::new()
                    .with_entries(entries)
                    .enable_timer()
                    .build()?;
            Ok(runtime.block_on(make()))
        }
    }
}
