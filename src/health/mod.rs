//! Health: the settings, the control plane's record of every backend's
//! health (probe results, transitions, ejections) and the link from the data
//! path's passive detection to it. The state machine is pure (`state`); one
//! prober task for the whole process drives it (`prober`), and every flip
//! is published to the cores as a pool snapshot like any other change.

mod probe;
mod prober;
pub mod state;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use crossbeam::channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};

pub use prober::run_prober;
pub use state::{HealthRecord, LastCheck, ProbeResult, Thresholds, Transition};

use crate::doorbell::{Bell, Doorbell, doorbell};
use crate::pool::{BackendId, BackendState, ControlPlane};

/// Active and passive health-check settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// Path of the probe's `GET`.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub thresholds: Thresholds,
    /// Failed requests in a row on one core that eject a backend at once.
    pub passive_failures: u32,
    /// How long a backend that comes up takes to reach its full share.
    pub slow_start: Duration,
    /// `false`: no prober runs (backends stay as the admin API sets them).
    pub enabled: bool,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            path: "/health".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            thresholds: Thresholds { rise: 2, fall: 3 },
            passive_failures: 5,
            slow_start: Duration::ZERO,
            enabled: true,
        }
    }
}

/// A core's report that a backend failed `failures` requests in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub id: BackendId,
    pub failures: u32,
}

/// What each core needs of the health settings, carried by every snapshot.
#[derive(Debug, Clone)]
pub struct PassiveLink {
    /// 0: passive detection off.
    pub threshold: u32,
    pub slow_start: Duration,
    pub ejections: Sender<Ejection>,
    /// Rung after an ejection is sent: the prober applies it at once.
    pub prober: Doorbell,
}

/// The control plane's health records, one per backend in the pool.
pub struct HealthBoard {
    /// Changed by a reload; the prober reads them each round.
    settings: RwLock<HealthSettings>,
    records: Mutex<HashMap<BackendId, HealthRecord>>,
    ejections_tx: Sender<Ejection>,
    ejections_rx: Receiver<Ejection>,
    /// Wakes the prober: a new or removed backend, new settings, an
    /// ejection, shutdown.
    prober: Doorbell,
    /// The prober's end, taken by the task that probes.
    prober_bell: Mutex<Option<Bell>>,
}

impl HealthBoard {
    pub fn new(settings: HealthSettings) -> HealthBoard {
        let (ejections_tx, ejections_rx) = crossbeam::channel::unbounded();
        let (prober, bell) = doorbell();
        HealthBoard {
            settings: RwLock::new(settings),
            records: Mutex::new(HashMap::new()),
            ejections_tx,
            ejections_rx,
            prober,
            prober_bell: Mutex::new(Some(bell)),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> HealthSettings {
        self.settings.read().clone()
    }

    /// Replaces the settings: the prober uses them from its next round, the
    /// cores (passive detection, slow start) from the next snapshot.
    pub fn set_settings(&self, settings: HealthSettings) {
        *self.settings.write() = settings;
        self.wake_prober();
    }

    /// Makes the prober look now at the pool, the settings, the ejections
    /// and the shutdown flag.
    pub fn wake_prober(&self) {
        self.prober.ring();
    }

    /// The bell `wake_prober` rings, for the one prober; `None` once taken.
    pub fn take_prober_bell(&self) -> Option<Bell> {
        self.prober_bell.lock().take()
    }

    pub fn link(&self) -> PassiveLink {
        let settings = self.settings.read();
        PassiveLink {
            threshold: settings.passive_failures,
            slow_start: settings.slow_start,
            ejections: self.ejections_tx.clone(),
            prober: self.prober.clone(),
        }
    }

    /// `last_check` and `transitions` of a backend, for `/status`.
    pub fn view(&self, id: BackendId) -> (Option<LastCheck>, Vec<Transition>) {
        self.records
            .lock()
            .get(&id)
            .map_or((None, Vec::new()), |record| {
                (record.last_check().cloned(), record.transitions())
            })
    }

    /// Probes of backend `id` that passed and that failed.
    pub fn probe_totals(&self, id: BackendId) -> [u64; 2] {
        self.records
            .lock()
            .get(&id)
            .map_or([0, 0], HealthRecord::probe_totals)
    }

    pub(crate) fn forget(&self, id: BackendId) {
        self.records.lock().remove(&id);
    }
}

fn log_flip(url: &str, up: bool, reason: &str) {
    if up {
        tracing::info!(backend = url, "backend {url} UP after {reason}");
    } else {
        tracing::warn!(backend = url, "backend {url} DOWN after {reason}");
    }
}

impl ControlPlane {
    /// Counts a probe of backend `id`; publishes and logs a flip. Returns
    /// the new pool version when the state flipped.
    pub fn record_probe(&self, id: BackendId, url: &str, result: &ProbeResult) -> Option<u64> {
        let thresholds = self.health.settings.read().thresholds;
        let flip = {
            let mut records = self.health.records.lock();
            // A probe of a backend removed meanwhile counts for nothing.
            if !self.contains(id) {
                return None;
            }
            let record = records.entry(id).or_default();
            record.record_probe(result, thresholds, Instant::now())?
        };
        log_flip(url, flip.up, &flip.reason);
        let state = if flip.up {
            BackendState::Up
        } else {
            BackendState::Down
        };
        self.set_state(id, state)
    }

    /// Ejects a backend that failed requests in a row on a core's data path.
    pub fn eject(&self, ejection: Ejection) -> Option<u64> {
        let url = self.url_of(ejection.id)?;
        let flip = self
            .health
            .records
            .lock()
            .entry(ejection.id)
            .or_default()
            .eject(ejection.failures, SystemTime::now(), Instant::now())?;
        log_flip(&url, flip.up, &flip.reason);
        self.set_state(ejection.id, BackendState::Down)
    }

    /// Applies the cores' pending ejections; returns how many flipped.
    pub fn apply_ejections(&self) -> usize {
        let pending: Vec<Ejection> = self.health.ejections_rx.try_iter().collect();
        pending
            .into_iter()
            .filter(|ejection| self.eject(*ejection).is_some())
            .count()
    }
}
