//! One core's recorder: plain histograms owned by the core (`RefCell`, no
//! atomics), one interval at a time. The core's once-a-second sweep calls
//! `rotate`, which hands the finished interval to the control plane and
//! starts the next one in the same buffers.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::Sender;

use super::{Latencies, micros, status_class};
use crate::pool::{Backend, BackendId, ControlPlane};

/// What one core recorded over one interval (about a second).
#[derive(Debug, Clone)]
pub struct Interval {
    /// When the core rotated it; the control plane files it by this.
    pub ended: Instant,
    pub overall: Latencies,
    pub backends: Vec<(BackendId, Latencies)>,
}

/// The data path's hook for latencies and response counts, one per core.
pub struct Recorder {
    core: usize,
    plane: Arc<ControlPlane>,
    current: RefCell<Current>,
    sink: Sender<Interval>,
}

/// The interval being recorded. A relayed response is recorded once, in its
/// backend's histograms; the overall ones are built at `rotate` (the
/// responses percore answered itself, plus every backend's), so the request
/// path pays for two histogram records rather than four.
#[derive(Default)]
struct Current {
    /// Responses percore answered itself (time at the proxy only).
    local: Latencies,
    /// A handful of backends: a linear search beats hashing.
    backends: Vec<(BackendId, Latencies)>,
    /// Kept between rotations so the overall sum reuses its buffers.
    overall: Latencies,
}

impl Recorder {
    pub fn new(core: usize, plane: Arc<ControlPlane>) -> Recorder {
        let sink = plane.latency.sender();
        Recorder {
            core,
            plane,
            current: RefCell::new(Current::default()),
            sink,
        }
    }

    /// A response relayed from `backend` in full: its status, the time at
    /// the proxy (`total`) and the time upstream (request head sent to
    /// response head received).
    #[inline]
    pub fn record_response(
        &self,
        backend: &Backend,
        status: u16,
        total: Duration,
        upstream: Duration,
    ) {
        backend.counters.core(self.core).responses[status_class(status)].add(1);
        let (total, upstream) = (micros(total), micros(upstream));
        let mut current = self.current.borrow_mut();
        let index = match current
            .backends
            .iter()
            .position(|(id, _)| *id == backend.id)
        {
            Some(index) => index,
            None => {
                current.backends.push((backend.id, Latencies::default()));
                current.backends.len() - 1
            }
        };
        current.backends[index].1.record(total, Some(upstream));
    }

    /// A response percore answered itself (a refusal, or a 502/503/504 when
    /// no backend answered): counted by status class, and its time at the
    /// proxy goes into the overall histogram only.
    #[inline]
    pub fn record_local(&self, status: u16, total: Duration) {
        self.plane.workers.core(self.core).local_responses[status_class(status)].add(1);
        self.current.borrow_mut().local.record(micros(total), None);
    }

    /// A request sent again, to `backend`, after a failed attempt.
    #[inline]
    pub fn count_retry(&self, backend: &Backend) {
        backend.counters.core(self.core).retries.add(1);
    }

    /// A connection to `backend` that could not be opened.
    #[inline]
    pub fn count_connect_error(&self, backend: &Backend, timed_out: bool) {
        let counters = backend.counters.core(self.core);
        counters.connect_errors.add(1);
        if timed_out {
            counters.connect_timeouts.add(1);
        }
    }

    /// `backend` did not send its response (head or body) in time.
    #[inline]
    pub fn count_response_timeout(&self, backend: &Backend) {
        backend.counters.core(self.core).response_timeouts.add(1);
    }

    /// Ends the current interval: hands what it recorded (if anything) to
    /// the control plane and starts the next in the same buffers. Backends
    /// that had no sample in it are forgotten (a removed one stays so).
    pub fn rotate(&self, now: Instant) {
        let mut current = self.current.borrow_mut();
        let current = &mut *current;
        current
            .backends
            .retain(|(_, latencies)| !latencies.is_empty());
        if current.local.is_empty() && current.backends.is_empty() {
            return;
        }
        current.overall.reset();
        current.overall.merge(&current.local);
        for (_, latencies) in &current.backends {
            current.overall.merge(latencies);
        }
        let interval = Interval {
            ended: now,
            overall: current.overall.clone(),
            backends: current.backends.clone(),
        };
        current.local.reset();
        for (_, latencies) in &mut current.backends {
            latencies.reset();
        }
        // The receiver lives in the control plane, which this recorder keeps
        // alive: the send cannot fail.
        let _ = self.sink.send(interval);
    }
}
