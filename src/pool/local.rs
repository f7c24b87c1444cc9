//! One core's view of the pool, applied from snapshots: which backends it
//! may pick, its idle upstream connections to each, and the passive health
//! detection that only this core writes (failures in a row, a local
//! exclusion the moment they reach the threshold, reported to the control
//! plane which ejects the backend on every core).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Backend, BackendId, BackendState, PoolSnapshot};
use crate::balance::{Balancer, Candidate, SharedCursor, Strategy, StrategyKind};
use crate::config::ProxySettings;
use crate::health::{Ejection, PassiveLink};
use crate::upstream::IdleConnections;

/// A backend with this many requests in flight or fewer is never avoided as
/// frozen: at low load shares are noise.
pub const FROZEN_FLOOR: u64 = 8;
/// A backend is avoided as frozen while its requests in flight exceed this
/// many times its weighted share of all requests in flight.
pub const FROZEN_FACTOR: u64 = 2;
/// A local exclusion lasts at most this long without word from the control
/// plane (the first ejection's back-off).
const LOCAL_EXCLUSION: Duration = crate::health::state::EJECTION_BASE;

/// A backend as one core sees it: shared identity plus this core's idle
/// upstream connections and passive-failure count.
pub struct LocalBackend {
    pub backend: Arc<Backend>,
    pub state: Cell<BackendState>,
    pub idle: IdleConnections,
    /// Failed requests in a row on this core.
    failures_in_row: Cell<u32>,
    /// Excluded by this core after `threshold` failures in a row, until the
    /// control plane's snapshot marks it down (or this passes).
    excluded_until: Cell<Option<Instant>>,
    /// While in slow start: when it came up.
    warming_since: Cell<Option<Instant>>,
}

impl LocalBackend {
    fn new(backend: Arc<Backend>, state: BackendState) -> LocalBackend {
        LocalBackend {
            backend,
            state: Cell::new(state),
            idle: IdleConnections::default(),
            failures_in_row: Cell::new(0),
            excluded_until: Cell::new(None),
            warming_since: Cell::new(None),
        }
    }

    fn excluded(&self, now: Instant) -> bool {
        self.excluded_until.get().is_some_and(|until| until > now)
    }
}

impl Candidate for Rc<LocalBackend> {
    #[inline]
    fn load(&self) -> u64 {
        self.backend.in_flight()
    }

    #[inline]
    fn weight(&self) -> u32 {
        self.backend.weight()
    }
}

/// One core's view of the pool, applied from snapshots.
pub struct LocalPool {
    core: usize,
    round_robin: SharedCursor,
    version: Cell<u64>,
    backends: RefCell<Vec<Rc<LocalBackend>>>,
    balancer: RefCell<Balancer>,
    passive: RefCell<Option<PassiveLink>>,
    slow_start: Cell<Duration>,
    /// Drives slow start's admission (a xorshift state).
    dice: Cell<u64>,
    /// The data path's settings, as the newest snapshot carried them (a
    /// reload changes them between requests).
    settings: Cell<ProxySettings>,
}

/// A pick bounded to `MAX_ATTEMPTS` backends per request.
pub const MAX_ATTEMPTS: usize = 64;

/// The backends one request has tried, in order: what `pick` must skip.
///
/// Not a zeroed array: the slots live in the request's future, a few KB that
/// each client connection keeps, and zeroing 512 bytes of it per request
/// touched eight cache lines that with a thousand busy connections were
/// cold (callgrind's cache simulation: 5 of 84 last-level misses per
/// request). Only the slots in use are written.
pub struct Tried {
    ids: [std::mem::MaybeUninit<BackendId>; MAX_ATTEMPTS],
    len: usize,
}

impl Tried {
    pub fn new() -> Tried {
        Tried {
            ids: [const { std::mem::MaybeUninit::uninit() }; MAX_ATTEMPTS],
            len: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len == MAX_ATTEMPTS
    }

    /// Adds `id`; `false` (and nothing added) once `MAX_ATTEMPTS` are in.
    pub fn push(&mut self, id: BackendId) -> bool {
        if self.is_full() {
            return false;
        }
        self.ids[self.len].write(id);
        self.len += 1;
        true
    }

    /// Forgets the last one, to try it again.
    pub fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }

    pub fn as_slice(&self) -> &[BackendId] {
        // SAFETY: the first `len` slots were written by `push`, and
        // `MaybeUninit<u64>` has `u64`'s layout.
        unsafe { std::slice::from_raw_parts(self.ids.as_ptr().cast(), self.len) }
    }
}

impl Default for Tried {
    fn default() -> Tried {
        Tried::new()
    }
}

impl LocalPool {
    pub fn new(core: usize, round_robin: SharedCursor) -> Rc<LocalPool> {
        Rc::new(LocalPool {
            core,
            version: Cell::new(0),
            backends: RefCell::new(Vec::new()),
            balancer: RefCell::new(Balancer::new(StrategyKind::default(), &round_robin)),
            round_robin,
            passive: RefCell::new(None),
            slow_start: Cell::new(Duration::ZERO),
            dice: Cell::new(0x9e37_79b9_7f4a_7c15 ^ (core as u64 + 1)),
            settings: Cell::new(ProxySettings::default()),
        })
    }

    /// The data path's settings in force on this core.
    #[inline]
    pub fn settings(&self) -> ProxySettings {
        self.settings.get()
    }

    pub fn core(&self) -> usize {
        self.core
    }

    pub fn version(&self) -> u64 {
        self.version.get()
    }

    /// Applies a snapshot newer than the current view, keeping the idle
    /// connections and passive counts of backends that stay.
    pub fn apply(&self, snapshot: &PoolSnapshot) {
        if snapshot.version <= self.version.get() {
            return;
        }
        let mut backends = self.backends.borrow_mut();
        let previous = std::mem::take(&mut *backends);
        for (backend, state) in &snapshot.backends {
            let local = match previous.iter().find(|local| local.backend.id == backend.id) {
                Some(local) => local.clone(),
                None => Rc::new(LocalBackend::new(backend.clone(), *state)),
            };
            // The control plane has ruled on it: a backend that came back
            // (or was never ejected) starts counting afresh.
            if *state == BackendState::Up && local.state.get() != BackendState::Up {
                local.excluded_until.set(None);
                local.failures_in_row.set(0);
            }
            local.state.set(*state);
            local.warming_since.set(
                snapshot
                    .warming
                    .iter()
                    .find(|(id, _)| *id == backend.id)
                    .map(|(_, since)| *since),
            );
            backends.push(local);
        }
        let mut balancer = self.balancer.borrow_mut();
        if balancer.kind() != snapshot.strategy {
            *balancer = Balancer::new(snapshot.strategy, &self.round_robin);
        }
        balancer.prepare(&backends);
        self.slow_start.set(
            snapshot
                .passive
                .as_ref()
                .map_or(Duration::ZERO, |link| link.slow_start),
        );
        *self.passive.borrow_mut() = snapshot.passive.clone();
        self.settings.set(snapshot.settings);
        self.version.set(snapshot.version);
    }

    /// Picks a backend that is up, not excluded by passive detection and
    /// not in `tried`; one that the strategy chose but that is frozen (while
    /// others can take the load) or not admitted by slow start is passed
    /// over for the next one that is neither, if any. `None` when every
    /// backend is down: the caller answers 503 without trying to connect.
    ///
    /// The checks run on the chosen backend only, not on every candidate:
    /// least-connections already scans all of them, and a per-candidate
    /// check doubled its cost per pick.
    pub fn pick(&self, tried: &[BackendId], now: Instant) -> Option<Rc<LocalBackend>> {
        let backends = self.backends.borrow();
        let balancer = self.balancer.borrow();
        let usable = |i: usize| {
            let local: &LocalBackend = &backends[i];
            local.state.get() == BackendState::Up
                && !tried.contains(&local.backend.id)
                && !local.excluded(now)
        };
        // Least-connections never chooses a backend far above its share.
        let watch_frozen = balancer.kind() == StrategyKind::RoundRobin;
        let welcome = |i: usize| {
            self.admitted(&backends[i], now)
                && !(watch_frozen && self.frozen(&backends, i, &usable))
        };
        let first = balancer.pick(&backends, usable)?;
        let index = if welcome(first) {
            first
        } else {
            balancer
                .pick(&backends, |i| i != first && usable(i) && welcome(i))
                .unwrap_or(first)
        };
        Some(backends[index].clone())
    }

    /// Whether backend `i` holds far more requests in flight than its
    /// weighted share: more than `FROZEN_FLOOR` and more than
    /// `FROZEN_FACTOR` times `total_in_flight * weight / total_weight` over
    /// the usable backends. A backend that stopped answering collects every
    /// request sent its way; this keeps new ones away until the prober's
    /// timeouts mark it down. Sums only when the backend passes the floor.
    fn frozen(
        &self,
        backends: &[Rc<LocalBackend>],
        i: usize,
        usable: &impl Fn(usize) -> bool,
    ) -> bool {
        let load = backends[i].load();
        if load <= FROZEN_FLOOR {
            return false;
        }
        let (mut total_load, mut total_weight, mut others) = (0u64, 0u64, 0);
        for (j, other) in backends.iter().enumerate() {
            if usable(j) {
                total_load += other.load();
                total_weight += u64::from(other.weight());
                others += usize::from(j != i);
            }
        }
        others > 0
            && load * total_weight > FROZEN_FACTOR * total_load * u64::from(backends[i].weight())
    }

    /// Slow start: a backend that came up `t` ago admits a pick with
    /// probability `t / slow_start` (at least 1 in 20), so its share grows
    /// linearly over the window.
    fn admitted(&self, local: &LocalBackend, now: Instant) -> bool {
        let Some(since) = local.warming_since.get() else {
            return true;
        };
        let slow_start = self.slow_start.get();
        let elapsed = now.saturating_duration_since(since);
        if slow_start.is_zero() || elapsed >= slow_start {
            return true;
        }
        let permille = (elapsed.as_millis() * 1000 / slow_start.as_millis()).max(50) as u64;
        let mut x = self.dice.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.dice.set(x);
        x % 1000 < permille
    }

    /// A request to `backend` failed on this core (connect failure, reset,
    /// response timeout). At `threshold` failures in a row the backend is
    /// excluded here at once and reported to the control plane, which ejects
    /// it on every core.
    pub fn record_failure(&self, backend: &LocalBackend, now: Instant) {
        let passive = self.passive.borrow();
        let Some(link) = passive.as_ref().filter(|link| link.threshold > 0) else {
            return;
        };
        let failures = backend.failures_in_row.get().saturating_add(1);
        backend.failures_in_row.set(failures);
        if failures >= link.threshold && !backend.excluded(now) {
            backend.excluded_until.set(Some(now + LOCAL_EXCLUSION));
            // The control plane outlives the cores; a send fails only at exit.
            let _ = link.ejections.send(Ejection {
                id: backend.backend.id,
                failures,
            });
            link.prober.ring();
        }
    }

    /// A response came back from `backend`: its failures are no longer in a row.
    #[inline]
    pub fn record_success(&self, backend: &LocalBackend) {
        if backend.failures_in_row.get() != 0 {
            backend.failures_in_row.set(0);
        }
    }

    /// Drops idle upstream connections older than `idle_timeout`.
    pub fn prune_idle(&self, now: Instant, idle_timeout: Duration) {
        for local in self.backends.borrow().iter() {
            local.idle.prune(now, idle_timeout);
        }
    }

    pub fn len(&self) -> usize {
        self.backends.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
