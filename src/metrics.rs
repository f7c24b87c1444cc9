//! Per-core statistics: counters in cache-padded slots that only their own
//! core writes (plain load + store, no locked read-modify-write on the request
//! path) and that the control plane sums when read.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam::utils::CachePadded;

/// A counter written by exactly one core.
#[derive(Default, Debug)]
pub struct CoreCounter(AtomicU64);

impl CoreCounter {
    /// Only the owning core calls this: a single writer needs no atomic RMW.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Release);
    }
}

/// One slot per core, each on its own cache line.
#[derive(Debug)]
pub struct PerCore<T> {
    slots: Box<[CachePadded<T>]>,
}

impl<T: Default> PerCore<T> {
    pub fn new(cores: usize) -> Self {
        PerCore {
            slots: (0..cores).map(|_| CachePadded::new(T::default())).collect(),
        }
    }
}

impl<T> PerCore<T> {
    #[inline]
    pub fn core(&self, core: usize) -> &T {
        &self.slots[core]
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|slot| &**slot)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

impl<T> PerCore<T> {
    /// Sums one counter over all cores.
    pub fn sum(&self, counter: impl Fn(&T) -> &CoreCounter) -> u64 {
        self.iter().map(|slot| counter(slot).get()).sum()
    }
}

/// What each worker core reports about itself.
#[derive(Default, Debug)]
pub struct WorkerStats {
    /// Client connections open on this core.
    pub open_connections: CoreCounter,
    /// Client connections parked on this core since it started (idle
    /// keep-alive connections handed to a small task), published by the
    /// core's once-a-second sweep.
    pub parked_total: CoreCounter,
    /// Requests this core has answered (forwarded or refused).
    pub requests: CoreCounter,
    /// The pool version this core has applied.
    pub applied_version: CoreCounter,
    /// Connections reset on arrival because the core held `max_connections`.
    pub refused_connections: CoreCounter,
    /// Client connections this core's listener accepted (SO_REUSEPORT's
    /// spread over the cores).
    pub accepted_connections: CoreCounter,
    /// Responses percore answered itself, by status class (1xx..5xx).
    pub local_responses: [CoreCounter; 5],
}

/// Per-backend, per-core counters.
#[derive(Default, Debug)]
pub struct BackendCounters {
    /// Requests in flight to the backend: least-connections' load.
    pub in_flight: CoreCounter,
    pub requests: CoreCounter,
    /// Connect failures and broken exchanges.
    pub failures: CoreCounter,
    /// Responses relayed from the backend in full, by status class (1xx..5xx).
    pub responses: [CoreCounter; 5],
    /// Attempts sent to this backend after an earlier attempt failed.
    pub retries: CoreCounter,
    /// Connections that could not be opened, timeouts included.
    pub connect_errors: CoreCounter,
    pub connect_timeouts: CoreCounter,
    /// Response heads or bodies that did not arrive in time.
    pub response_timeouts: CoreCounter,
}

/// Counts a request in flight: increments a core counter, and decrements it
/// when dropped, so that every exit path of the request (including
/// cancellation) balances its increment.
pub struct InFlightGuard<'a>(&'a CoreCounter);

impl<'a> InFlightGuard<'a> {
    pub fn new(counter: &'a CoreCounter) -> Self {
        counter.add(1);
        InFlightGuard(counter)
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.sub(1);
    }
}
