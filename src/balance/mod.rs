//! Load-balancing strategies behind one `Strategy` trait, dispatched statically
//! through `Balancer`. A strategy only orders candidates: the caller's
//! `eligible` predicate skips backends that are down, draining or already
//! tried, so strategies never know about health (as pingora's `BackendIter`).
//! Strategy state lives per core, in `Cell`s, except round-robin's rotation
//! (see `round_robin.rs` for why).

mod least_connections;
mod round_robin;

pub use least_connections::LeastConnections;
pub use round_robin::{RoundRobin, SharedCursor, smooth_sequence};

use serde::{Deserialize, Serialize};

/// What a strategy needs to know about one backend.
pub trait Candidate {
    /// Requests in flight to this backend, summed over all cores.
    fn load(&self) -> u64;
    /// Relative capacity, 1..=1000.
    fn weight(&self) -> u32;
}

pub trait Strategy {
    /// Picks the index of one backend for which `eligible` holds, or `None`.
    fn pick<C: Candidate>(
        &self,
        candidates: &[C],
        eligible: impl FnMut(usize) -> bool,
    ) -> Option<usize>;
}

/// The strategies by name, as the CLI, the config file and the admin API
/// spell them: clap's `ValueEnum` and serde derive the same `snake_case`
/// names from the variants (a test pins that they agree), so `--help` lists
/// them and a new strategy needs no name table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum StrategyKind {
    /// The backends in turn, across all cores.
    #[default]
    RoundRobin,
    /// The backend with the fewest requests in flight (all cores), per weight.
    LeastConnections,
}

impl StrategyKind {
    /// Every strategy, in declaration order.
    pub fn all() -> &'static [StrategyKind] {
        <StrategyKind as clap::ValueEnum>::value_variants()
    }

    /// The strategy's name, e.g. `round_robin`.
    pub fn name(self) -> String {
        self.to_string()
    }

    /// Comma-separated valid names, for error messages.
    pub fn valid_names() -> String {
        let names: Vec<String> = StrategyKind::all().iter().map(|kind| kind.name()).collect();
        names.join(", ")
    }
}

impl std::fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = clap::ValueEnum::to_possible_value(self).expect("no variant is skipped");
        f.write_str(value.get_name())
    }
}

impl std::str::FromStr for StrategyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <StrategyKind as clap::ValueEnum>::from_str(s, false).map_err(|_| {
            format!(
                "unknown strategy {s:?} (valid: {})",
                StrategyKind::valid_names()
            )
        })
    }
}

/// A core's strategy with its state; switching kind resets the state.
pub enum Balancer {
    RoundRobin(RoundRobin),
    LeastConnections(LeastConnections),
}

impl Balancer {
    pub fn new(kind: StrategyKind, cursor: &SharedCursor) -> Balancer {
        match kind {
            StrategyKind::RoundRobin => Balancer::RoundRobin(RoundRobin::new(cursor.clone())),
            StrategyKind::LeastConnections => {
                Balancer::LeastConnections(LeastConnections::default())
            }
        }
    }

    /// Precomputes what the strategy needs for a new set of candidates.
    pub fn prepare<C: Candidate>(&mut self, candidates: &[C]) {
        if let Balancer::RoundRobin(strategy) = self {
            strategy.prepare(candidates);
        }
    }

    pub fn kind(&self) -> StrategyKind {
        match self {
            Balancer::RoundRobin(_) => StrategyKind::RoundRobin,
            Balancer::LeastConnections(_) => StrategyKind::LeastConnections,
        }
    }
}

impl Strategy for Balancer {
    #[inline]
    fn pick<C: Candidate>(
        &self,
        candidates: &[C],
        eligible: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        match self {
            Balancer::RoundRobin(strategy) => strategy.pick(candidates, eligible),
            Balancer::LeastConnections(strategy) => strategy.pick(candidates, eligible),
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::Candidate;

    /// A backend stand-in with a fixed load.
    pub struct Fixed {
        pub load: u64,
        pub weight: u32,
    }

    impl Candidate for Fixed {
        fn load(&self) -> u64 {
            self.load
        }
        fn weight(&self) -> u32 {
            self.weight
        }
    }

    pub fn fixed(loads: &[u64]) -> Vec<Fixed> {
        loads
            .iter()
            .map(|&load| Fixed { load, weight: 1 })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &kind in StrategyKind::all() {
            assert_eq!(kind.name().parse::<StrategyKind>(), Ok(kind));
            assert_eq!(
                serde_json::to_string(&kind).unwrap(),
                format!("\"{}\"", kind.name())
            );
        }
        let error = "fastest".parse::<StrategyKind>().unwrap_err();
        assert!(error.contains("round_robin, least_connections"), "{error}");
    }
}
