//! Backend failures logged at `warn`, as nginx logs its upstream errors, but
//! at most one line per second per core: a backend that fails under load
//! must not turn the log into the bottleneck. Each line counts the failures
//! left out since the last one.

use std::cell::Cell;
use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct FailureLog {
    next_at: Cell<Option<Instant>>,
    left_out: Cell<u64>,
}

impl FailureLog {
    /// Whether a failure at `now` may be logged, and if so how many were
    /// left out before it.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        match self.next_at.get() {
            Some(next) if now < next => {
                self.left_out.set(self.left_out.get() + 1);
                None
            }
            _ => {
                self.next_at.set(Some(now + INTERVAL));
                Some(self.left_out.replace(0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_counting_the_rest() {
        let log = FailureLog::default();
        let start = Instant::now();
        assert_eq!(log.admit(start), Some(0));
        for _ in 0..5 {
            assert_eq!(log.admit(start + Duration::from_millis(500)), None);
        }
        assert_eq!(log.admit(start + Duration::from_millis(1000)), Some(5));
        assert_eq!(log.admit(start + Duration::from_millis(1001)), None);
        assert_eq!(log.admit(start + Duration::from_millis(2500)), Some(1));
    }
}
