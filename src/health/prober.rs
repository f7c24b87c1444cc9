//! The process's one active prober: a task on the control plane's thread,
//! beside the admin API (never on a worker core), probing every backend
//! every `interval` with a little jitter so many backends' probes spread
//! out, one task per probe so a frozen backend delays nothing else. It
//! sleeps until the next probe is due or its doorbell rings: the cores ring
//! it with a passive ejection, the pool with a backend added or removed (a
//! new one is probed at once), a reload with new settings, and shutdown.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::pool::{BackendId, ControlPlane};

use monoio::net::TcpStream;

use super::probe::{probe, request};

/// The shortest sleep between looks for due probes: probes due within a
/// few milliseconds of each other go out on one wake-up.
const BATCH: Duration = Duration::from_millis(10);
/// The sleep when no probe is due at all (no backends): only the doorbell
/// wakes the prober then, in practice.
const NOTHING_DUE: Duration = Duration::from_secs(3600);

struct Schedule {
    next: Instant,
    in_flight: Rc<Cell<bool>>,
    /// The probe's request, built once.
    request: Rc<[u8]>,
    /// The connection the last probe left open, for the next.
    kept: Rc<Cell<Option<TcpStream>>>,
}

/// Probes the pool's backends until `shutdown` is set; a task on the
/// control plane's runtime.
pub async fn run_prober(plane: Arc<ControlPlane>, shutdown: Arc<AtomicBool>) {
    let mut settings = plane.health.settings();
    let mut jitter = Jitter::seeded();
    let mut schedules: HashMap<BackendId, Schedule> = HashMap::new();
    let mut seen_version = u64::MAX;
    let mut bell = match plane.health.take_prober_bell() {
        Some(bell) => bell.local(),
        None => {
            tracing::error!("a second prober was started; it does not run");
            return;
        }
    };
    while !shutdown.load(Ordering::Acquire) {
        plane.apply_ejections();
        let now = Instant::now();
        let latest = plane.health.settings();
        if latest.path != settings.path {
            // A reload changed the path: every request is built anew.
            schedules.clear();
            seen_version = u64::MAX;
        }
        settings = latest;
        if plane.version() != seen_version {
            let snapshot = plane.snapshot();
            seen_version = snapshot.version;
            // A removed backend stops being probed; its record goes (after
            // the admin API's reply to the removal has shown it).
            schedules.retain(|id, _| {
                let kept = snapshot.backends.iter().any(|(b, _)| b.id == *id);
                if !kept {
                    plane.health.forget(*id);
                }
                kept
            });
            for (backend, _) in &snapshot.backends {
                schedules.entry(backend.id).or_insert_with(|| Schedule {
                    next: now,
                    in_flight: Rc::new(Cell::new(false)),
                    request: request(&backend.authority, &settings.path).into(),
                    kept: Rc::new(Cell::new(None)),
                });
            }
        }
        let due: Vec<BackendId> = schedules
            .iter()
            .filter(|(_, schedule)| schedule.next <= now && !schedule.in_flight.get())
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(backend) = plane.backend(id) else {
                continue;
            };
            let schedule = schedules.get_mut(&id).expect("due ids come from the map");
            schedule.next = now + jitter.spread(settings.interval);
            schedule.in_flight.set(true);
            let (in_flight, kept) = (schedule.in_flight.clone(), schedule.kept.clone());
            let (plane, request, timeout) =
                (plane.clone(), schedule.request.clone(), settings.timeout);
            monoio::spawn(async move {
                let (result, reusable) = probe(kept.take(), backend.addr, &request, timeout).await;
                kept.set(reusable);
                plane.record_probe(backend.id, &backend.url, &result);
                in_flight.set(false);
            });
        }
        let next_due = schedules.values().map(|schedule| schedule.next).min();
        let now = Instant::now();
        let nap = next_due.map_or(NOTHING_DUE, |due| due.saturating_duration_since(now));
        monoio::select! {
            _ = monoio::time::sleep(nap.max(BATCH)) => {}
            _ = bell.rung() => {}
        }
    }
}

/// ±10 % of the interval, from a xorshift generator: probes of backends
/// added together drift apart instead of firing in one burst.
struct Jitter(u64);

impl Jitter {
    fn seeded() -> Jitter {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |since| since.subsec_nanos() as u64);
        Jitter(nanos | 1)
    }

    fn spread(&mut self, interval: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        // A factor in 0.9..1.1, in thousandths.
        let permille = 900 + (self.0 % 201);
        interval * permille as u32 / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        let mut jitter = Jitter::seeded();
        let interval = Duration::from_secs(2);
        let spread: Vec<Duration> = (0..1000).map(|_| jitter.spread(interval)).collect();
        assert!(
            spread
                .iter()
                .all(|d| *d >= interval * 9 / 10 && *d <= interval * 11 / 10)
        );
        assert!(spread.iter().any(|d| *d != spread[0]), "not constant");
    }
}
