//! The pure health state machine of one backend: rise/fall thresholds over
//! probe results, passive ejection with a doubling back-off, the last
//! transitions with timestamps. No I/O and no clock of its own: every call
//! takes `now`, so tests drive it step by step.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Transitions kept per backend for `/status`.
pub const TRANSITIONS_KEPT: usize = 16;
/// The first passive ejection lasts this long; each repeat doubles it.
pub const EJECTION_BASE: Duration = Duration::from_secs(5);
/// The longest passive ejection.
pub const EJECTION_CAP: Duration = Duration::from_secs(60);

/// Why a probe failed, as the transition log line and `/status` say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeFailure {
    Refused,
    Timeout,
    Status(u16),
    Malformed,
    Io(String),
}

impl std::fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeFailure::Refused => f.write_str("connection refused"),
            ProbeFailure::Timeout => f.write_str("timeout"),
            ProbeFailure::Status(status) => write!(f, "status {status}"),
            ProbeFailure::Malformed => f.write_str("malformed response"),
            ProbeFailure::Io(error) => f.write_str(error),
        }
    }
}

/// One probe's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// `Ok(status)` for a 2xx, else why it failed.
    pub outcome: Result<u16, ProbeFailure>,
    pub latency: Duration,
    pub at: SystemTime,
}

/// `last_check` in `/status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LastCheck {
    pub ok: bool,
    /// The response's status, when one arrived.
    pub status: Option<u16>,
    pub latency_us: u64,
    pub at_unix_ms: u64,
    /// Why the check failed; absent when it passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One entry of `transitions` in `/status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Transition {
    pub from: &'static str,
    pub to: &'static str,
    pub at_unix_ms: u64,
    pub reason: String,
}

/// A state change the caller must publish and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flip {
    pub up: bool,
    pub reason: String,
}

/// Thresholds of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone)]
pub struct HealthRecord {
    up: bool,
    passes: u32,
    failures: u32,
    last_check: Option<LastCheck>,
    transitions: VecDeque<Transition>,
    /// While passively ejected: the earliest moment probes may bring it back.
    ejected_until: Option<Instant>,
    /// Ejections in a row: each doubles the back-off; reset once the
    /// backend has stayed up for `EJECTION_CAP`.
    ejections: u32,
    up_since: Option<Instant>,
    /// Probes since the backend joined: passed, failed (for `/metrics`).
    probes: [u64; 2],
}

impl Default for HealthRecord {
    /// A new backend starts up (it is routed to at once, as before health
    /// checks existed) and is probed at once.
    fn default() -> Self {
        HealthRecord {
            up: true,
            passes: 0,
            failures: 0,
            last_check: None,
            transitions: VecDeque::new(),
            ejected_until: None,
            ejections: 0,
            up_since: None,
            probes: [0, 0],
        }
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

impl HealthRecord {
    pub fn is_up(&self) -> bool {
        self.up
    }

    pub fn last_check(&self) -> Option<&LastCheck> {
        self.last_check.as_ref()
    }

    pub fn transitions(&self) -> Vec<Transition> {
        self.transitions.iter().cloned().collect()
    }

    /// When the backend last came up (for slow start); `None` for one up
    /// since it joined at start.
    pub fn up_since(&self) -> Option<Instant> {
        self.up_since
    }

    /// Counts one probe; returns the flip it causes, if any.
    /// Probes that passed and that failed since the backend joined.
    pub fn probe_totals(&self) -> [u64; 2] {
        self.probes
    }

    pub fn record_probe(
        &mut self,
        result: &ProbeResult,
        thresholds: Thresholds,
        now: Instant,
    ) -> Option<Flip> {
        self.probes[usize::from(result.outcome.is_err())] += 1;
        self.last_check = Some(LastCheck {
            ok: result.outcome.is_ok(),
            status: match &result.outcome {
                Ok(status) | Err(ProbeFailure::Status(status)) => Some(*status),
                Err(_) => None,
            },
            latency_us: result.latency.as_micros() as u64,
            at_unix_ms: unix_ms(result.at),
            error: result.outcome.as_ref().err().map(ToString::to_string),
        });
        if self.up
            && self
                .up_since
                .is_some_and(|since| now - since >= EJECTION_CAP)
        {
            self.ejections = 0;
        }
        match &result.outcome {
            Ok(_) => {
                self.failures = 0;
                self.passes = self.passes.saturating_add(1);
                let ejected = self.ejected_until.is_some_and(|until| now < until);
                if !self.up && !ejected && self.passes >= thresholds.rise {
                    let reason = format!("{} consecutive passing checks", self.passes);
                    self.ejected_until = None;
                    return Some(self.flip(true, reason, result.at, now));
                }
            }
            Err(failure) => {
                self.passes = 0;
                self.failures = self.failures.saturating_add(1);
                if self.up && self.failures >= thresholds.fall {
                    let reason = format!("{} consecutive failures: {failure}", self.failures);
                    return Some(self.flip(false, reason, result.at, now));
                }
            }
        }
        None
    }

    /// Ejects the backend after `failures` passive failures in a row on the
    /// data path; returns the flip, or `None` if it was already down.
    pub fn eject(&mut self, failures: u32, at: SystemTime, now: Instant) -> Option<Flip> {
        if !self.up {
            return None;
        }
        let backoff = self.backoff();
        self.ejections = self.ejections.saturating_add(1);
        self.ejected_until = Some(now + backoff);
        self.passes = 0;
        let reason = format!(
            "{failures} consecutive request failures (ejected for {}s)",
            backoff.as_secs()
        );
        Some(self.flip(false, reason, at, now))
    }

    /// The back-off the next ejection would get.
    pub fn backoff(&self) -> Duration {
        let doublings = self.ejections.min(8);
        (EJECTION_BASE * 2u32.pow(doublings)).min(EJECTION_CAP)
    }

    fn flip(&mut self, up: bool, reason: String, at: SystemTime, now: Instant) -> Flip {
        let (from, to) = if up { ("down", "up") } else { ("up", "down") };
        self.up = up;
        self.up_since = up.then_some(now);
        if self.transitions.len() == TRANSITIONS_KEPT {
            self.transitions.pop_front();
        }
        self.transitions.push_back(Transition {
            from,
            to,
            at_unix_ms: unix_ms(at),
            reason: reason.clone(),
        });
        Flip { up, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds { rise: 2, fall: 3 };

    fn pass() -> ProbeResult {
        ProbeResult {
            outcome: Ok(200),
            latency: Duration::from_micros(150),
            at: SystemTime::now(),
        }
    }

    fn fail(failure: ProbeFailure) -> ProbeResult {
        ProbeResult {
            outcome: Err(failure),
            latency: Duration::from_millis(1),
            at: SystemTime::now(),
        }
    }

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_passes() {
        let mut record = HealthRecord::default();
        let now = Instant::now();
        assert_eq!(
            record.record_probe(&fail(ProbeFailure::Refused), T, now),
            None
        );
        assert_eq!(
            record.record_probe(&fail(ProbeFailure::Refused), T, now),
            None
        );
        let flip = record
            .record_probe(&fail(ProbeFailure::Refused), T, now)
            .unwrap();
        assert!(!flip.up);
        assert_eq!(flip.reason, "3 consecutive failures: connection refused");
        assert!(!record.is_up());
        // More failures while down: no second flip.
        assert_eq!(
            record.record_probe(&fail(ProbeFailure::Timeout), T, now),
            None
        );
        assert_eq!(record.record_probe(&pass(), T, now), None);
        let flip = record.record_probe(&pass(), T, now).unwrap();
        assert_eq!(
            (flip.up, flip.reason.as_str()),
            (true, "2 consecutive passing checks")
        );
        let transitions = record.transitions();
        assert_eq!(transitions.len(), 2);
        assert_eq!((transitions[0].from, transitions[0].to), ("up", "down"));
        assert_eq!((transitions[1].from, transitions[1].to), ("down", "up"));
    }

    #[test]
    fn one_failure_between_passes_does_not_flip() {
        let mut record = HealthRecord::default();
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(record.record_probe(&pass(), T, now), None);
            assert_eq!(
                record.record_probe(&fail(ProbeFailure::Status(503)), T, now),
                None
            );
            assert_eq!(
                record.record_probe(&fail(ProbeFailure::Timeout), T, now),
                None
            );
        }
        assert!(record.is_up() && record.transitions().is_empty());
        let last = record.last_check().unwrap();
        assert_eq!((last.ok, last.error.as_deref()), (false, Some("timeout")));
        record.record_probe(&fail(ProbeFailure::Status(503)), T, now);
        assert_eq!(record.last_check().unwrap().status, Some(503));
    }

    #[test]
    fn ejection_backs_off_doubling_to_the_cap() {
        let mut record = HealthRecord::default();
        let mut now = Instant::now();
        let mut backoffs = Vec::new();
        for _ in 0..6 {
            backoffs.push(record.backoff().as_secs());
            assert!(record.eject(5, SystemTime::now(), now).is_some());
            assert_eq!(
                record.eject(5, SystemTime::now(), now),
                None,
                "already down"
            );
            // Passing probes within the back-off do not bring it back.
            record.record_probe(&pass(), T, now);
            assert_eq!(record.record_probe(&pass(), T, now), None);
            now += record.backoff();
            assert!(record.record_probe(&pass(), T, now).unwrap().up);
        }
        assert_eq!(backoffs, [5, 10, 20, 40, 60, 60]);
        // A minute up forgets the ejections.
        now += EJECTION_CAP;
        record.record_probe(&pass(), T, now);
        assert_eq!(record.backoff(), EJECTION_BASE);
    }

    #[test]
    fn keeps_the_last_sixteen_transitions() {
        let mut record = HealthRecord::default();
        let now = Instant::now();
        for _ in 0..20 {
            for _ in 0..3 {
                record.record_probe(&fail(ProbeFailure::Malformed), T, now);
            }
            for _ in 0..2 {
                record.record_probe(&pass(), T, now);
            }
        }
        let transitions = record.transitions();
        assert_eq!(transitions.len(), TRANSITIONS_KEPT);
        assert_eq!(transitions[15].to, "up");
        assert!(transitions[14].reason.ends_with("malformed response"));
    }
}
