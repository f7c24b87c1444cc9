//! Round-robin: each pick starts one past the previous start, and the first
//! eligible backend from there wins, so a down backend's share spreads over
//! the ones after it.
//!
//! The cursor is shared by all cores (one relaxed `fetch_add` per request on
//! its own cache line), unlike the other strategies' per-core state: with
//! per-core cursors, consecutive connections that the kernel hands to
//! different cores can hit the same backend, and users read round-robin as
//! "the backends in turn" across the whole proxy, as HAProxy does it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam::utils::CachePadded;

use super::{Candidate, Strategy};

/// The rotation shared by every core's `RoundRobin`.
pub type SharedCursor = Arc<CachePadded<AtomicUsize>>;

#[derive(Default)]
pub struct RoundRobin {
    cursor: SharedCursor,
}

impl RoundRobin {
    pub fn new(cursor: SharedCursor) -> Self {
        RoundRobin { cursor }
    }
}

impl Strategy for RoundRobin {
    #[inline]
    fn pick<C: Candidate>(
        &self,
        candidates: &[C],
        mut eligible: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        let count = candidates.len();
        if count == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % count;
        (0..count)
            .map(|offset| (start + offset) % count)
            .find(|&index| eligible(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::fixed;

    #[test]
    fn rotates_and_skips_ineligible() {
        let backends = fixed(&[0, 0, 0]);
        let rr = RoundRobin::default();
        let picks: Vec<_> = (0..6)
            .map(|_| rr.pick(&backends, |_| true).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let picks: Vec<_> = (0..4)
            .map(|_| rr.pick(&backends, |i| i != 1).unwrap())
            .collect();
        assert_eq!(picks, [0, 2, 2, 0]);
        assert_eq!(rr.pick(&backends, |_| false), None);
        assert_eq!(rr.pick(&fixed(&[]), |_| true), None);
    }
}
