//! Round-robin, weighted smoothly: the order nginx's smooth weighted
//! round-robin produces (weights 5,1,1 give a,a,b,a,c,a,a rather than five
//! a's in a row), precomputed from each pool snapshot into a sequence of
//! backend indices. An ineligible backend's turn goes to the next entry in
//! the sequence, so shares among the rest keep their weights.
//!
//! The cursor is shared by all cores (one relaxed `fetch_add` per request on
//! its own cache line) and indexes the sequence, which every core builds
//! identically from the same snapshot: with per-core cursors, consecutive
//! connections that the kernel hands to different cores can hit the same
//! backend, and users read round-robin as "the backends in turn" across the
//! whole proxy, as HAProxy does it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam::utils::CachePadded;

use super::{Candidate, Strategy};

/// The rotation shared by every core's `RoundRobin`.
pub type SharedCursor = Arc<CachePadded<AtomicUsize>>;

#[derive(Default)]
pub struct RoundRobin {
    cursor: SharedCursor,
    /// Backend indices in smooth weighted order; empty: plain rotation.
    sequence: Vec<u32>,
    /// How many candidates the sequence was built for: with any other
    /// count (a caller that did not `prepare`), plain rotation.
    built_for: usize,
}

impl RoundRobin {
    pub fn new(cursor: SharedCursor) -> Self {
        RoundRobin {
            cursor,
            sequence: Vec::new(),
            built_for: 0,
        }
    }

    /// Builds the sequence for these candidates' weights.
    pub fn prepare<C: Candidate>(&mut self, candidates: &[C]) {
        let weights: Vec<u64> = candidates
            .iter()
            .map(|c| u64::from(c.weight().max(1)))
            .collect();
        self.sequence = smooth_sequence(&weights);
        self.built_for = candidates.len();
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One period of nginx's smooth weighted round-robin: each turn every
/// backend's current weight grows by its weight, the largest (first on ties)
/// is picked and loses the total. The period is the total weight over the
/// weights' greatest common divisor.
pub fn smooth_sequence(weights: &[u64]) -> Vec<u32> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|w| (w / divisor) as i64).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut sequence = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (index, weight) in weights.iter().enumerate() {
            current[index] += weight;
            if current[index] > current[best] {
                best = index;
            }
        }
        current[best] -= total;
        sequence.push(best as u32);
    }
    sequence
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
        let turn = self.cursor.fetch_add(1, Ordering::Relaxed);
        let sequence = &self.sequence;
        let start = if !sequence.is_empty() && self.built_for == count {
            // Follow the sequence a little way (bounded: a long sequence of
            // ineligible backends must not cost a walk of all of it).
            let len = sequence.len();
            let position = turn % len;
            let steps = len.min(2 * count + 8);
            if let Some(index) = (0..steps)
                .map(|step| sequence[(position + step) % len] as usize)
                .find(|&index| eligible(index))
            {
                return Some(index);
            }
            sequence[position] as usize
        } else {
            turn % count
        };
        (0..count)
            .map(|offset| (start + offset) % count)
            .find(|&index| eligible(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{Fixed, fixed};

    fn weighted(weights: &[u32]) -> Vec<Fixed> {
        weights
            .iter()
            .map(|&weight| Fixed { load: 0, weight })
            .collect()
    }

    #[test]
    fn smooth_weighted_order_as_nginx() {
        assert_eq!(smooth_sequence(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_sequence(&[1, 1, 1]), [0, 1, 2]);
        assert_eq!(smooth_sequence(&[10, 20]), [1, 0, 1], "reduced by the gcd");
        assert!(smooth_sequence(&[]).is_empty());
        let backends = weighted(&[5, 1, 1]);
        let mut rr = RoundRobin::default();
        rr.prepare(&backends);
        let picks: Vec<_> = (0..14)
            .map(|_| rr.pick(&backends, |_| true).unwrap())
            .collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn weights_hold_when_one_is_ineligible() {
        let backends = weighted(&[1, 2, 3, 4]);
        let mut rr = RoundRobin::default();
        rr.prepare(&backends);
        let mut counts = [0; 4];
        for _ in 0..10_000 {
            counts[rr.pick(&backends, |i| i != 3).unwrap()] += 1;
        }
        assert_eq!(counts[3], 0);
        // 1:2:3 among the rest, to within 5 %.
        for (index, weight) in [(0, 1.0), (1, 2.0), (2, 3.0)] {
            let share = f64::from(counts[index]) / 10_000.0;
            assert!((share - weight / 6.0).abs() < 0.05, "{counts:?}");
        }
    }

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
