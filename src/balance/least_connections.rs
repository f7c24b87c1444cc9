//! Least-connections: the eligible backend with the fewest requests in flight
//! (summed over every core's slot), relative to its weight. The scan starts at
//! a rotating offset so that ties, common at low load, spread evenly instead
//! of all landing on the first backend.

use std::cell::Cell;

use super::{Candidate, Strategy};

#[derive(Default)]
pub struct LeastConnections {
    tie_offset: Cell<usize>,
}

impl Strategy for LeastConnections {
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
        let start = self.tie_offset.get() % count;
        self.tie_offset.set(start + 1);
        let mut best: Option<(usize, u64, u64)> = None;
        for offset in 0..count {
            let index = (start + offset) % count;
            if !eligible(index) {
                continue;
            }
            let candidate = &candidates[index];
            let (load, weight) = (candidate.load(), u64::from(candidate.weight().max(1)));
            // load/weight < best_load/best_weight, without division.
            let better = match best {
                None => true,
                Some((_, best_load, best_weight)) => load * best_weight < best_load * weight,
            };
            if better {
                best = Some((index, load, weight));
                if load == 0 {
                    break;
                }
            }
        }
        best.map(|(index, _, _)| index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{Fixed, fixed};

    #[test]
    fn picks_least_loaded_eligible() {
        let lc = LeastConnections::default();
        let backends = fixed(&[5, 2, 9]);
        assert_eq!(lc.pick(&backends, |_| true), Some(1));
        assert_eq!(lc.pick(&backends, |i| i != 1), Some(0));
        assert_eq!(lc.pick(&backends, |_| false), None);
    }

    #[test]
    fn ties_rotate() {
        let lc = LeastConnections::default();
        let backends = fixed(&[0, 0, 0]);
        let picks: Vec<_> = (0..3)
            .map(|_| lc.pick(&backends, |_| true).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2]);
    }

    #[test]
    fn weight_scales_load() {
        let lc = LeastConnections::default();
        let backends = [Fixed { load: 4, weight: 1 }, Fixed { load: 6, weight: 3 }];
        assert_eq!(lc.pick(&backends, |_| true), Some(1));
    }
}
