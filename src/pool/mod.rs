//! The server pool: the authoritative list of backends on the control plane,
//! and each core's local view of it.
//!
//! Changes (add, remove, up/down, strategy) are made under a `parking_lot`
//! lock on the control plane, which then fans an immutable, versioned
//! `PoolSnapshot` out to every core over a `crossbeam` channel and rings the
//! core's doorbell. A core applies the newest snapshot between requests and
//! publishes the version it applied, so a caller (admin API, health checker)
//! can wait until every core routes by it. Requests already in flight keep the
//! backend they picked.

mod local;

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender};
use parking_lot::Mutex;
use serde::Serialize;

pub use local::{FROZEN_FACTOR, FROZEN_FLOOR, LocalBackend, LocalPool, MAX_ATTEMPTS, Tried};

use crate::balance::{SharedCursor, StrategyKind};
use crate::config::ProxySettings;
use crate::doorbell::{Bell, Doorbell, doorbell};
use crate::health::{HealthBoard, HealthSettings, PassiveLink};
use crate::latency::LatencyWindows;
use crate::metrics::{BackendCounters, PerCore, WorkerStats};
use crate::reload::Reloader;

pub type BackendId = u64;

/// A backend's identity and counters, shared by all cores.
#[derive(Debug)]
pub struct Backend {
    pub id: BackendId,
    /// Canonical `http://host:port`.
    pub url: String,
    pub addr: SocketAddr,
    /// `host:port` as configured, the Host of requests that arrive without one.
    pub authority: Box<[u8]>,
    /// Its share of the load (1 to 1000); a reload may change it, then a
    /// new snapshot makes the cores rebuild their order.
    pub weight: AtomicU32,
    pub counters: PerCore<BackendCounters>,
}

impl Backend {
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Requests in flight, summed over cores.
    pub fn in_flight(&self) -> u64 {
        self.counters.sum(|c| &c.in_flight)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    Up,
    Down,
    /// Removed from selection; in-flight requests finish.
    Draining,
}

/// An immutable pool state; each core applies the newest it has received.
#[derive(Debug)]
pub struct PoolSnapshot {
    pub version: u64,
    pub strategy: StrategyKind,
    pub backends: Vec<(Arc<Backend>, BackendState)>,
    /// Backends in slow start, with when they came up.
    pub warming: Vec<(BackendId, Instant)>,
    /// Passive detection's settings and channel; `None` in snapshots made
    /// for reports.
    pub passive: Option<PassiveLink>,
    /// The data path's settings (timeouts, limits), so that a reload
    /// reaches every core the way pool changes do.
    pub settings: ProxySettings,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendUrlError {
    #[error("backend url {0:?} must start with http://")]
    Scheme(String),
    #[error("backend url {0:?} must be http://host:port with no path")]
    Shape(String),
    #[error("backend url {0:?}: the port must be 1-65535")]
    Port(String),
    #[error("backend url {0:?}: cannot resolve host")]
    Resolve(String),
}

/// Parses `http://host:port` (port defaults to 80) into a canonical url,
/// the authority and a resolved address.
pub fn parse_backend_url(url: &str) -> Result<(String, String, SocketAddr), BackendUrlError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| BackendUrlError::Scheme(url.to_string()))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let bad_char =
        |c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'));
    if authority.is_empty() || authority.contains(bad_char) {
        return Err(BackendUrlError::Shape(url.to_string()));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.ends_with(':') && !port.contains(']'))
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let port = with_port.rsplit_once(':').map_or("", |(_, port)| port);
    if port.parse::<u16>().map_or(true, |port| port == 0) {
        return Err(BackendUrlError::Port(url.to_string()));
    }
    let addr = with_port
        .to_socket_addrs()
        .map_err(|_| BackendUrlError::Resolve(url.to_string()))?
        .next()
        .ok_or_else(|| BackendUrlError::Resolve(url.to_string()))?;
    Ok((format!("http://{authority}"), authority.to_string(), addr))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error(transparent)]
    Url(#[from] BackendUrlError),
    #[error("backend {0} is already in the pool")]
    Duplicate(String),
    #[error("backend {0} is percore's own proxy or admin listener")]
    Loop(String),
    #[error("no backend {0}")]
    Unknown(String),
    #[error("weight {0} is out of range 1..=1000")]
    Weight(u32),
}

/// What one core receives from the control plane: the snapshots, and the
/// bell rung after each is sent (and on shutdown or drain).
pub struct Inbox {
    pub updates: Receiver<Arc<PoolSnapshot>>,
    pub bell: Bell,
}

struct PoolState {
    version: u64,
    strategy: StrategyKind,
    backends: Vec<(Arc<Backend>, BackendState)>,
    next_id: BackendId,
    /// When each backend last came up or joined, while within slow start.
    warming: HashMap<BackendId, Instant>,
    settings: ProxySettings,
}

/// The authoritative pool, owned by the control plane.
pub struct ControlPlane {
    state: Mutex<PoolState>,
    /// Each core's snapshot channel and doorbell.
    outboxes: Vec<(Sender<Arc<PoolSnapshot>>, Doorbell)>,
    pub workers: PerCore<WorkerStats>,
    pub started: Instant,
    /// Round-robin's rotation, shared by the cores.
    pub round_robin: SharedCursor,
    /// percore's own listeners, which are never a backend: proxying to the
    /// proxy loops, and proxying to the admin API would expose it.
    own_listeners: Mutex<Vec<SocketAddr>>,
    /// The cores' latency intervals, merged when read.
    pub latency: LatencyWindows,
    /// Health records, settings and the passive-ejection channel.
    pub health: HealthBoard,
    /// Rereads the configuration (SIGHUP, `POST /reload`); set when percore
    /// runs from its command line.
    pub reloader: OnceLock<Arc<Reloader>>,
}

impl ControlPlane {
    /// A pool for `cores` workers; returns the receivers, one per core.
    pub fn new(cores: usize, strategy: StrategyKind) -> (Arc<ControlPlane>, Vec<Inbox>) {
        ControlPlane::with_health(cores, strategy, HealthSettings::default())
    }

    /// As `new`, with health-check settings.
    pub fn with_health(
        cores: usize,
        strategy: StrategyKind,
        health: HealthSettings,
    ) -> (Arc<ControlPlane>, Vec<Inbox>) {
        let (outboxes, inboxes): (Vec<_>, Vec<_>) = (0..cores)
            .map(|_| {
                let (sender, updates) = crossbeam::channel::unbounded();
                let (doorbell, bell) = doorbell();
                ((sender, doorbell), Inbox { updates, bell })
            })
            .unzip();
        let plane = ControlPlane {
            state: Mutex::new(PoolState {
                version: 0,
                strategy,
                backends: Vec::new(),
                next_id: 1,
                warming: HashMap::new(),
                settings: ProxySettings::default(),
            }),
            outboxes,
            workers: PerCore::new(cores),
            started: Instant::now(),
            round_robin: SharedCursor::default(),
            own_listeners: Mutex::new(Vec::new()),
            latency: LatencyWindows::default(),
            reloader: OnceLock::new(),
            health: HealthBoard::new(health),
        };
        (Arc::new(plane), inboxes)
    }

    pub fn cores(&self) -> usize {
        self.outboxes.len()
    }

    /// Rings every core's doorbell: for a change outside the snapshots
    /// (shutdown, drain) that the cores should see now.
    pub fn wake_cores(&self) {
        for (_, doorbell) in &self.outboxes {
            doorbell.ring();
        }
    }

    /// Records percore's own listening addresses, refused as backends.
    pub fn set_own_listeners(&self, addrs: &[SocketAddr]) {
        *self.own_listeners.lock() = addrs.to_vec();
    }

    /// Whether `addr` reaches one of percore's own listeners: the same
    /// address, or loopback or the unspecified address (which Linux connects
    /// to the local host) against a listener on the unspecified address or
    /// loopback. Other addresses of this host are not detected.
    fn is_own_listener(&self, addr: SocketAddr) -> bool {
        let local = |ip: std::net::IpAddr| ip.is_loopback() || ip.is_unspecified();
        // IPv4-mapped IPv6 addresses compare as the IPv4 ones they carry.
        let ip = addr.ip().to_canonical();
        self.own_listeners.lock().iter().any(|own| {
            let own_ip = own.ip().to_canonical();
            own.port() == addr.port()
                && (own_ip == ip
                    || own_ip.is_unspecified() && local(ip)
                    || ip.is_unspecified() && local(own_ip))
        })
    }

    /// Adds a backend in state `up`; returns it and the new version.
    pub fn add_backend(&self, url: &str, weight: u32) -> Result<(Arc<Backend>, u64), PoolError> {
        if !(1..=1000).contains(&weight) {
            return Err(PoolError::Weight(weight));
        }
        let (url, authority, addr) = parse_backend_url(url)?;
        if self.is_own_listener(addr) {
            return Err(PoolError::Loop(url));
        }
        let mut state = self.state.lock();
        // The same address under another name is the same backend.
        if state
            .backends
            .iter()
            .any(|(b, _)| b.url == url || b.addr == addr)
        {
            return Err(PoolError::Duplicate(url));
        }
        let backend = Arc::new(Backend {
            id: state.next_id,
            url,
            addr,
            authority: authority.into_bytes().into_boxed_slice(),
            weight: AtomicU32::new(weight),
            counters: PerCore::new(self.cores()),
        });
        state.next_id += 1;
        state.backends.push((backend.clone(), BackendState::Up));
        state.warming.insert(backend.id, Instant::now());
        let version = self.publish(&mut state);
        Ok((backend, version))
    }

    /// Removes a backend from selection; in-flight requests keep their connection.
    pub fn remove_backend(&self, id: BackendId) -> Result<(Arc<Backend>, u64), PoolError> {
        let mut state = self.state.lock();
        let index = state
            .backends
            .iter()
            .position(|(b, _)| b.id == id)
            .ok_or_else(|| PoolError::Unknown(id.to_string()))?;
        let (backend, _) = state.backends.remove(index);
        state.warming.remove(&id);
        let version = self.publish(&mut state);
        Ok((backend, version))
    }

    /// Marks a backend up or down (health checker); `None` if it is gone.
    pub fn set_state(&self, id: BackendId, new_state: BackendState) -> Option<u64> {
        let mut state = self.state.lock();
        let entry = state.backends.iter_mut().find(|(b, _)| b.id == id)?;
        if entry.1 == new_state {
            return Some(state.version);
        }
        entry.1 = new_state;
        if new_state == BackendState::Up {
            state.warming.insert(id, Instant::now());
        }
        Some(self.publish(&mut state))
    }

    /// Changes a backend's weight; the new version, or `None` if it is gone
    /// or the weight is out of range.
    pub fn set_weight(&self, id: BackendId, weight: u32) -> Option<u64> {
        if !(1..=1000).contains(&weight) {
            return None;
        }
        let mut state = self.state.lock();
        let (backend, _) = state.backends.iter().find(|(b, _)| b.id == id)?;
        backend.weight.store(weight, Ordering::Relaxed);
        Some(self.publish(&mut state))
    }

    /// Sets the data path's settings on every core; the new version.
    pub fn set_proxy_settings(&self, settings: ProxySettings) -> u64 {
        let mut state = self.state.lock();
        state.settings = settings;
        self.publish(&mut state)
    }

    /// The data path's settings in force.
    pub fn proxy_settings(&self) -> ProxySettings {
        self.state.lock().settings
    }

    /// Switches strategy; returns the previous one and the new version.
    pub fn set_strategy(&self, strategy: StrategyKind) -> (StrategyKind, u64) {
        let mut state = self.state.lock();
        let previous = std::mem::replace(&mut state.strategy, strategy);
        (previous, self.publish(&mut state))
    }

    /// Ends slow start for every backend: those configured at start take
    /// their full share at once.
    pub fn settle(&self) -> u64 {
        let mut state = self.state.lock();
        state.warming.clear();
        self.publish(&mut state)
    }

    /// The current state, as a snapshot (for status reports).
    pub fn snapshot(&self) -> PoolSnapshot {
        let state = self.state.lock();
        PoolSnapshot {
            version: state.version,
            strategy: state.strategy,
            backends: state.backends.clone(),
            warming: Vec::new(),
            passive: None,
            settings: state.settings,
        }
    }

    pub fn version(&self) -> u64 {
        self.state.lock().version
    }

    /// The backend with `id`, if it is in the pool.
    pub fn backend(&self, id: BackendId) -> Option<Arc<Backend>> {
        let state = self.state.lock();
        state
            .backends
            .iter()
            .find(|(b, _)| b.id == id)
            .map(|(b, _)| b.clone())
    }

    pub fn contains(&self, id: BackendId) -> bool {
        self.backend(id).is_some()
    }

    pub fn url_of(&self, id: BackendId) -> Option<String> {
        self.backend(id).map(|b| b.url.clone())
    }

    /// Bumps the version and sends the new snapshot to every core.
    fn publish(&self, state: &mut PoolState) -> u64 {
        state.version += 1;
        let slow_start = self.health.settings().slow_start;
        let now = Instant::now();
        state
            .warming
            .retain(|_, since| now.saturating_duration_since(*since) < slow_start);
        let snapshot = Arc::new(PoolSnapshot {
            version: state.version,
            strategy: state.strategy,
            backends: state.backends.clone(),
            warming: state
                .warming
                .iter()
                .map(|(id, since)| (*id, *since))
                .collect(),
            passive: Some(self.health.link()),
            settings: state.settings,
        });
        for (sender, doorbell) in &self.outboxes {
            // A core that has exited (shutdown) has dropped its receiver: nothing to update.
            let _ = sender.send(snapshot.clone());
            doorbell.ring();
        }
        // The prober probes a new backend at once, and forgets a removed one.
        self.health.wake_prober();
        state.version
    }

    /// Whether every core routes by `version` (or a later one) now; never
    /// waits.
    pub fn is_applied(&self, version: u64) -> bool {
        self.workers
            .iter()
            .all(|w| w.applied_version.get() >= version)
    }

    /// Waits until every core has applied `version`; `false` on timeout.
    pub fn wait_applied(&self, version: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_applied(version) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests;
