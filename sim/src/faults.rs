//! The fault plan: every fault of a run, drawn from the seed before it starts.
//!
//! The plan is plain data (a time-ordered list), so a run's faults can be printed,
//! compared between runs and, later, shrunk. Only the harness acts on it, between
//! simulation steps; the runtime under test never sees the plan, only its effects.

use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scenarios::Scenario;

/// Salt that separates the plan's random stream from turmoil's, which uses the
/// seed directly.
const PLAN_SALT: u64 = 0x6b65_656c_706c_616e;

/// One injected fault on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Cut the node off from the database host for `dur_ms`.
    Partition {
        /// How long.
        dur_ms: u64,
    },
    /// Crash the node and restart it `down_ms` later.
    Bounce {
        /// How long it stays down.
        down_ms: u64,
    },
    /// For `dur_ms`, `pct` percent of the database host's requests suffer `fault`
    /// (the target is ignored: there is one database).
    Storage {
        /// What happens to an affected request.
        fault: crate::db::StorageFault,
        /// Share affected, in percent.
        pct: u64,
        /// For how long.
        dur_ms: u64,
    },
    /// The next tick of loop `index` on the node panics.
    LoopPanic {
        /// Which loop (index into the scenario's loops).
        index: usize,
    },
    /// The next tick of loop `index` on the node takes `ms`.
    SlowTick {
        /// Which loop.
        index: usize,
        /// How long the tick takes.
        ms: u64,
    },
    /// The node shuts its runtime down gracefully within `deadline_ms`, and
    /// starts it again `down_ms` after that (a deploy).
    Shutdown {
        /// The shutdown deadline.
        deadline_ms: u64,
        /// Downtime after the shutdown returned.
        down_ms: u64,
    },
    /// The node's wall clock jumps `jump_ms` ahead, and back `dur_ms` later.
    ClockJump {
        /// How far.
        jump_ms: i64,
        /// For how long.
        dur_ms: u64,
    },
    /// For `window_ms`, `fail_pct` percent of the node's start hook calls fail
    /// after `delay_ms`.
    HookFault {
        /// How long the window lasts.
        window_ms: u64,
        /// How long each failing call takes.
        delay_ms: u64,
        /// Share of calls that fail, in percent.
        fail_pct: u64,
    },
}

/// Which node a fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// A fixed node (index into the node list).
    Node(usize),
    /// Whichever node holds the leader lease when the fault starts (resolved by
    /// the harness from the database's state; skipped when nobody leads). Faults
    /// aimed at the leader are what make leadership races likely.
    Leader,
    /// A node in the middle of a maintainer start attempt when the fault starts
    /// (resolved from the history), else the leader: the moment stale retries
    /// are born.
    Starting,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Node(i) => write!(f, "n{}", i + 1),
            Target::Leader => f.write_str("leader"),
            Target::Starting => f.write_str("starting"),
        }
    }
}

/// A fault at a simulated time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// When it starts, in simulated ms since the run started.
    pub at_ms: u64,
    /// Which node.
    pub target: Target,
    /// What.
    pub kind: FaultKind,
}

impl Fault {
    /// When the fault ends.
    pub fn end_ms(&self) -> u64 {
        self.at_ms
            + match self.kind {
                FaultKind::Partition { dur_ms } => dur_ms,
                FaultKind::Bounce { down_ms } => down_ms,
                FaultKind::HookFault { window_ms, .. } => window_ms,
                FaultKind::ClockJump { dur_ms, .. } => dur_ms,
                FaultKind::Storage { dur_ms, .. } => dur_ms,
                FaultKind::Shutdown {
                    deadline_ms,
                    down_ms,
                } => deadline_ms + down_ms,
                // One-shot: armed at the start, consumed by the next tick.
                FaultKind::LoopPanic { .. } | FaultKind::SlowTick { .. } => 0,
            }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let node = self.target;
        match self.kind {
            FaultKind::Partition { dur_ms } => {
                write!(f, "{} partition {node} {dur_ms}ms", self.at_ms)
            }
            FaultKind::Bounce { down_ms } => write!(f, "{} bounce {node} {down_ms}ms", self.at_ms),
            FaultKind::Storage { fault, pct, dur_ms } => {
                write!(f, "{} storage {fault:?} {pct}% for {dur_ms}ms", self.at_ms)
            }
            FaultKind::Shutdown {
                deadline_ms,
                down_ms,
            } => {
                write!(
                    f,
                    "{} shutdown {node} deadline {deadline_ms}ms down {down_ms}ms",
                    self.at_ms
                )
            }
            FaultKind::LoopPanic { index } => {
                write!(f, "{} loop_panic {node} loop {index}", self.at_ms)
            }
            FaultKind::SlowTick { index, ms } => {
                write!(f, "{} slow_tick {node} loop {index} {ms}ms", self.at_ms)
            }
            FaultKind::ClockJump { jump_ms, dur_ms } => {
                write!(
                    f,
                    "{} clock_jump {node} {jump_ms}ms for {dur_ms}ms",
                    self.at_ms
                )
            }
            FaultKind::HookFault {
                window_ms,
                delay_ms,
                fail_pct,
            } => {
                write!(
                    f,
                    "{} hook_fault {node} {window_ms}ms delay {delay_ms}ms fail {fail_pct}%",
                    self.at_ms
                )
            }
        }
    }
}

/// Every fault and skew of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultPlan {
    /// Wall-clock skew per node, in ms.
    pub skews_ms: Vec<i64>,
    /// Faults, ordered by start time.
    pub faults: Vec<Fault>,
}

fn draw(rng: &mut ChaCha8Rng, [lo, hi]: [u64; 2]) -> u64 {
    rng.random_range(lo..=hi)
}

/// Each fault kind's rate per minute. In a swarm scenario every seed draws its
/// own mix, as swarm testing does: each kind is switched off with probability
/// one half, and otherwise runs at a random share of the scenario's rate, so
/// some seeds see one kind of fault alone and others see many at once.
fn swarm_rates(scenario: &Scenario, rng: &mut ChaCha8Rng) -> [f64; 8] {
    let f = &scenario.faults;
    let mut rates = [
        f.partitions_per_min,
        f.bounces_per_min,
        f.hook_faults_per_min,
        f.clock_jumps_per_min,
        f.storage_faults_per_min,
        f.shutdowns_per_min,
        f.loop_panics_per_min,
        f.slow_ticks_per_min,
    ];
    if scenario.swarm {
        for rate in &mut rates {
            let on = rng.random_bool(0.5);
            *rate = if on {
                *rate * rng.random_range(0.2..=1.0)
            } else {
                0.0
            };
        }
    }
    rates
}

fn storage_fault(rng: &mut ChaCha8Rng, f: &scenarios::Faults) -> FaultKind {
    use crate::db::StorageFault;
    let modes = &f.storage_fault_modes;
    let mode = modes
        .get(rng.random_range(0..modes.len().max(1)))
        .map_or("error", String::as_str);
    let fault = match mode {
        "lost_reply" => StorageFault::LostReply,
        "slow" => StorageFault::Slow {
            ms: draw(rng, f.slow_storage_ms),
        },
        _ => StorageFault::Error,
    };
    FaultKind::Storage {
        fault,
        pct: draw(rng, f.storage_fault_pct),
        dur_ms: draw(rng, f.storage_fault_ms),
    }
}

impl FaultPlan {
    /// The plan for `scenario` under `seed`. Faults of one kind never overlap on
    /// one node, so each has a clear start and end in the history.
    pub fn generate(scenario: &Scenario, seed: u64) -> FaultPlan {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ PLAN_SALT);
        let nodes = scenario.nodes as usize;
        let f = &scenario.faults;
        let rates = swarm_rates(scenario, &mut rng);
        let skew = i64::try_from(f.skew_ms_max).unwrap_or(i64::MAX);
        let skews_ms = (0..nodes).map(|_| rng.random_range(-skew..=skew)).collect();
        // Per target (each node, then "leader", then "starting") and kind: when the last fault of
        // that kind ends.
        let mut busy_until = vec![[0u64; 8]; nodes + 2];
        let loops = scenario.loops.len().max(1);
        let mut faults = Vec::new();
        for second in 0..scenario.duration_s {
            for (kind, rate) in rates.iter().copied().enumerate() {
                if rate <= 0.0 || !rng.random_bool((rate / 60.0).clamp(0.0, 1.0)) {
                    continue;
                }
                let at_ms = second * 1000 + rng.random_range(0..1000);
                // Hook faults only matter to a node that is about to start its
                // maintainer, so they are never aimed at the sitting leader.
                let aim: f64 = rng.random();
                let target = if kind == 4 {
                    Target::Node(0)
                } else if kind == 2 || aim >= f.leader_bias + f.starting_bias {
                    Target::Node(rng.random_range(0..nodes))
                } else if aim < f.leader_bias {
                    Target::Leader
                } else {
                    Target::Starting
                };
                let slot = match target {
                    Target::Node(i) => i,
                    Target::Leader => nodes,
                    Target::Starting => nodes + 1,
                };
                let kind_value = match kind {
                    0 => FaultKind::Partition {
                        dur_ms: draw(&mut rng, f.partition_ms),
                    },
                    1 => FaultKind::Bounce {
                        down_ms: draw(&mut rng, f.down_ms),
                    },
                    4 => storage_fault(&mut rng, f),
                    6 => FaultKind::LoopPanic {
                        index: rng.random_range(0..loops),
                    },
                    7 => FaultKind::SlowTick {
                        index: rng.random_range(0..loops),
                        ms: draw(&mut rng, f.slow_tick_ms),
                    },
                    5 => FaultKind::Shutdown {
                        deadline_ms: draw(&mut rng, f.shutdown_deadline_ms),
                        down_ms: draw(&mut rng, f.shutdown_down_ms),
                    },
                    3 => FaultKind::ClockJump {
                        jump_ms: i64::try_from(draw(&mut rng, f.clock_jump_ms)).unwrap_or(i64::MAX),
                        dur_ms: draw(&mut rng, f.clock_jump_dur_ms),
                    },
                    _ => FaultKind::HookFault {
                        window_ms: draw(&mut rng, f.hook_fault_window_ms),
                        delay_ms: draw(&mut rng, f.hook_delay_ms),
                        fail_pct: draw(&mut rng, f.hook_fail_pct),
                    },
                };
                if at_ms < busy_until[slot][kind] {
                    continue;
                }
                let fault = Fault {
                    at_ms,
                    target,
                    kind: kind_value,
                };
                busy_until[slot][kind] = fault.end_ms();
                faults.push(fault);
            }
        }
        faults.sort_by_key(|f| (f.at_ms, f.target));
        FaultPlan { skews_ms, faults }
    }
}

impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, skew) in self.skews_ms.iter().enumerate() {
            writeln!(f, "0 skew n{} {skew}ms", i + 1)?;
        }
        for fault in &self.faults {
            writeln!(f, "{fault}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_plan_and_faults_do_not_overlap_per_kind() {
        let s = scenarios::by_name("stale_retries").expect("scenario");
        let a = FaultPlan::generate(&s, 9);
        assert_eq!(a, FaultPlan::generate(&s, 9));
        assert_ne!(a, FaultPlan::generate(&s, 10));
        assert!(!a.faults.is_empty());
        for (i, x) in a.faults.iter().enumerate() {
            for y in &a.faults[i + 1..] {
                let same = x.target == y.target
                    && std::mem::discriminant(&x.kind) == std::mem::discriminant(&y.kind);
                assert!(!same || y.at_ms >= x.end_ms(), "{x} overlaps {y}");
            }
        }
    }
}
