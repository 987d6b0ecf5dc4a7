//! The fault plan: every fault of a run, drawn from the seed before it starts.
//!
//! The plan is plain data (a time-ordered list), so a run's faults can be printed,
//! compared between runs and, later, shrunk. Only the harness acts on it, between
//! simulation steps; the runtime under test never sees the plan, only its effects.

use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scenarios::Scenario;

use crate::world::db::StorageFault;

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
        fault: crate::world::db::StorageFault,
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
    /// The host's clock rate turns `ppm` fast (negative: slow) for `dur_ms`,
    /// then back to the rate it drew for the run (NTP slewing hard, a VM
    /// under steal time, a migration to other hardware).
    Drift {
        /// The rate error meanwhile, in parts per million.
        ppm: i64,
        /// For how long.
        dur_ms: u64,
    },
    /// Freeze the node's process for `dur_ms` (SIGSTOP/SIGCONT, a VM freeze):
    /// no timers, no sends, no replies; then it resumes with both clocks
    /// jumped by the pause.
    Pause {
        /// How long.
        dur_ms: u64,
    },
    /// Stop the node's maintainer and run it again in place, while its elector
    /// keeps its term and its workers keep running.
    RestartMaintainer,
    /// Shut the node's runtime down within `deadline_ms` and start the same
    /// runtime again at once in the same process, as a new incarnation.
    RestartRuntime {
        /// The shutdown deadline.
        deadline_ms: u64,
    },
    /// Start a replacement process under the node's name (its own host,
    /// `nIr`, and its own incarnation) while the old one is paused, or
    /// partitioned when `partitioned`, for `dur_ms`; both then run for
    /// `overlap_ms`, and the replacement is crashed.
    Replace {
        /// How long the old process is away.
        dur_ms: u64,
        /// How long both run once it is back.
        overlap_ms: u64,
        /// Partitioned rather than paused.
        partitioned: bool,
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
    /// The database host itself: only its clock jumps and drifts (storage's
    /// clock, the one that judges leases and claims).
    Db,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Node(i) => write!(f, "n{}", i + 1),
            Target::Leader => f.write_str("leader"),
            Target::Starting => f.write_str("starting"),
            Target::Db => f.write_str("db"),
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
                FaultKind::Drift { dur_ms, .. } => dur_ms,
                FaultKind::Storage { dur_ms, .. } => dur_ms,
                FaultKind::Pause { dur_ms } => dur_ms,
                FaultKind::RestartRuntime { deadline_ms } => deadline_ms,
                FaultKind::RestartMaintainer => 0,
                FaultKind::Replace {
                    dur_ms, overlap_ms, ..
                } => dur_ms + overlap_ms,
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
            FaultKind::Pause { dur_ms } => write!(f, "{} pause {node} {dur_ms}ms", self.at_ms),
            FaultKind::RestartMaintainer => write!(f, "{} restart_maintainer {node}", self.at_ms),
            FaultKind::Replace {
                dur_ms,
                overlap_ms,
                partitioned,
            } => {
                let away = if partitioned { "partition" } else { "pause" };
                write!(
                    f,
                    "{} replace {node} {away} {dur_ms}ms overlap {overlap_ms}ms",
                    self.at_ms
                )
            }
            FaultKind::RestartRuntime { deadline_ms } => write!(
                f,
                "{} restart_runtime {node} deadline {deadline_ms}ms",
                self.at_ms
            ),
            FaultKind::Storage { fault, pct, dur_ms } => {
                let mode = match fault {
                    StorageFault::Error => "error".to_owned(),
                    StorageFault::LostReply => "lost_reply".to_owned(),
                    StorageFault::Slow { ms } => format!("slow:{ms}ms"),
                    StorageFault::SlowReply { ms } => format!("slow_reply:{ms}ms"),
                };
                write!(f, "{} storage {mode} {pct}% for {dur_ms}ms", self.at_ms)
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
            FaultKind::Drift { ppm, dur_ms } => {
                write!(f, "{} drift {node} {ppm}ppm for {dur_ms}ms", self.at_ms)
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
    /// Wall-clock skew of the database host (storage's clock), in ms.
    pub db_skew_ms: i64,
    /// Clock-rate error per node for the run, in ppm (drift faults change it
    /// for a while).
    pub drifts_ppm: Vec<i64>,
    /// Clock-rate error of the database host, in ppm.
    pub db_drift_ppm: i64,
    /// How long every node's storage client waits for a reply, in ms (0: the
    /// scenario's fixed timeout, or the simulator's default).
    pub request_timeout_ms: u64,
    /// Faults, ordered by start time.
    pub faults: Vec<Fault>,
}

fn draw(rng: &mut ChaCha8Rng, [lo, hi]: [u64; 2]) -> u64 {
    rng.random_range(lo..=hi)
}

/// Where a fault goes, given a uniform draw `aim`: the sitting leader, a node
/// mid-start, or (past both biases) a node drawn at random.
fn aimed(rng: &mut ChaCha8Rng, f: &scenarios::Faults, nodes: usize, aim: f64) -> Target {
    if aim >= f.leader_bias + f.starting_bias {
        Target::Node(rng.random_range(0..nodes))
    } else if aim < f.leader_bias {
        Target::Leader
    } else {
        Target::Starting
    }
}

/// The slot of `target` in a per-target table: each node, then "leader", then
/// "starting", then the database host.
fn target_slot(target: Target, nodes: usize) -> usize {
    match target {
        Target::Node(i) => i,
        Target::Leader => nodes,
        Target::Starting => nodes + 1,
        Target::Db => nodes + 2,
    }
}

/// Slots in a per-target table for `nodes` nodes ([`target_slot`]).
fn target_slots(nodes: usize) -> usize {
    nodes + 3
}

fn storage_fault(rng: &mut ChaCha8Rng, f: &scenarios::Faults) -> FaultKind {
    let modes = &f.storage_fault_modes;
    let mode = modes
        .get(rng.random_range(0..modes.len().max(1)))
        .map_or("error", String::as_str);
    let fault = match mode {
        "lost_reply" => StorageFault::LostReply,
        "slow" => StorageFault::Slow {
            ms: draw(rng, f.slow_storage_ms),
        },
        "slow_reply" => StorageFault::SlowReply {
            ms: draw(
                rng,
                if f.slow_reply_ms == [0, 0] {
                    f.slow_storage_ms
                } else {
                    f.slow_reply_ms
                },
            ),
        },
        _ => StorageFault::Error,
    };
    FaultKind::Storage {
        fault,
        pct: draw(rng, f.storage_fault_pct),
        dur_ms: draw(rng, f.storage_fault_ms),
    }
}

/// Fault kinds a plan draws, by index: the order of `shape::KINDS` and of the
/// scenario's rate fields (partitions, bounces, hook faults, clock jumps,
/// storage faults, shutdowns, loop panics, slow ticks, then the process
/// faults: pauses, maintainer restarts, runtime restarts, replacements; then
/// drift changes, drawn from a stream of their own too).
pub const KIND_COUNT: usize = 13;
/// Index of the first process fault kind (drawn from a stream of its own).
const PROCESS_KINDS_FROM: usize = 8;
/// Index of drift changes (drawn from a stream of their own).
const DRIFT_KIND: usize = 12;

/// The index of `kind` in the order [`KIND_COUNT`] describes.
pub fn kind_index(kind: &FaultKind) -> usize {
    match kind {
        FaultKind::Partition { .. } => 0,
        FaultKind::Bounce { .. } => 1,
        FaultKind::HookFault { .. } => 2,
        FaultKind::ClockJump { .. } => 3,
        FaultKind::Storage { .. } => 4,
        FaultKind::Shutdown { .. } => 5,
        FaultKind::LoopPanic { .. } => 6,
        FaultKind::SlowTick { .. } => 7,
        FaultKind::Pause { .. } => 8,
        FaultKind::RestartMaintainer => 9,
        FaultKind::RestartRuntime { .. } => 10,
        FaultKind::Replace { .. } => 11,
        FaultKind::Drift { .. } => DRIFT_KIND,
    }
}

/// Where a fault of kind index `kind` goes. Storage faults hit the one
/// database (recorded as `n1`); hook faults only matter to a node about to
/// start its maintainer, so they are never aimed at the sitting leader.
pub(crate) fn draw_target(
    kind: usize,
    rng: &mut ChaCha8Rng,
    f: &scenarios::Faults,
    nodes: usize,
) -> Target {
    let aim: f64 = rng.random();
    match kind {
        4 => Target::Node(0),
        2 => Target::Node(rng.random_range(0..nodes)),
        // Drawn only when the scenario asks, so other plans keep their stream.
        3 if f.db_clock_jump_pct > 0 && rng.random_range(0..100) < f.db_clock_jump_pct => {
            Target::Db
        }
        // Storage's clock drifts as often as any one node's.
        DRIFT_KIND if rng.random_range(0..=nodes) == nodes => Target::Db,
        _ => aimed(rng, f, nodes, aim),
    }
}

/// A fault of kind index `kind` with its parameters drawn from `f`'s ranges;
/// loop faults pick one of `loops` loops.
pub(crate) fn draw_kind(
    kind: usize,
    rng: &mut ChaCha8Rng,
    f: &scenarios::Faults,
    loops: usize,
) -> FaultKind {
    match kind {
        0 => FaultKind::Partition {
            dur_ms: draw(rng, f.partition_ms),
        },
        1 => FaultKind::Bounce {
            down_ms: draw(rng, f.down_ms),
        },
        2 => FaultKind::HookFault {
            window_ms: draw(rng, f.hook_fault_window_ms),
            delay_ms: draw(rng, f.hook_delay_ms),
            fail_pct: draw(rng, f.hook_fail_pct),
        },
        3 => {
            let jump_ms = i64::try_from(draw(rng, f.clock_jump_ms)).unwrap_or(i64::MAX);
            let dur_ms = draw(rng, f.clock_jump_dur_ms);
            // Drawn only when the scenario asks, so other plans keep their stream.
            let back =
                f.clock_jump_back_pct > 0 && rng.random_range(0..100) < f.clock_jump_back_pct;
            FaultKind::ClockJump {
                jump_ms: if back { -jump_ms } else { jump_ms },
                dur_ms,
            }
        }
        4 => storage_fault(rng, f),
        5 => FaultKind::Shutdown {
            deadline_ms: draw(rng, f.shutdown_deadline_ms),
            down_ms: draw(rng, f.shutdown_down_ms),
        },
        6 => FaultKind::LoopPanic {
            index: rng.random_range(0..loops),
        },
        7 => FaultKind::SlowTick {
            index: rng.random_range(0..loops),
            ms: draw(rng, f.slow_tick_ms),
        },
        8 => FaultKind::Pause {
            dur_ms: draw(rng, f.pause_ms),
        },
        9 => FaultKind::RestartMaintainer,
        10 => FaultKind::RestartRuntime {
            deadline_ms: draw(rng, f.restart_deadline_ms),
        },
        DRIFT_KIND => FaultKind::Drift {
            ppm: draw_ppm(rng, f),
            dur_ms: draw(rng, f.drift_change_ms),
        },
        _ => FaultKind::Replace {
            dur_ms: draw(rng, f.replace_ms),
            overlap_ms: draw(rng, f.replace_overlap_ms),
            partitioned: rng.random_bool(0.5),
        },
    }
}

impl FaultPlan {
    /// The plan for `scenario` under `seed`. Faults of one kind never overlap on
    /// one node, so each has a clear start and end in the history.
    /// A swarm template draws its seed's shape first ([`crate::plan::shape`]).
    pub fn generate(scenario: &Scenario, seed: u64) -> FaultPlan {
        let scenario = &*crate::plan::shape::concrete(scenario, seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ PLAN_SALT);
        let nodes = scenario.nodes as usize;
        let f = &scenario.faults;
        let rates = [
            f.partitions_per_min,
            f.bounces_per_min,
            f.hook_faults_per_min,
            f.clock_jumps_per_min,
            f.storage_faults_per_min,
            f.shutdowns_per_min,
            f.loop_panics_per_min,
            f.slow_ticks_per_min,
        ];
        let skew = i64::try_from(f.skew_ms_max).unwrap_or(i64::MAX);
        let skews_ms = (0..nodes).map(|_| rng.random_range(-skew..=skew)).collect();
        let db_skew = i64::try_from(f.db_skew_ms_max).unwrap_or(i64::MAX);
        let db_skew_ms = if db_skew > 0 {
            rng.random_range(-db_skew..=db_skew)
        } else {
            0
        };
        let mut faults = timeline(&mut rng, scenario, &rates, 0);
        faults.extend(process_faults(scenario, seed));
        let time = TimeDraws::generate(scenario, seed);
        faults.extend(time.faults);
        faults.sort_by_key(|f| (f.at_ms, f.target));
        FaultPlan {
            skews_ms,
            db_skew_ms,
            drifts_ppm: time.drifts_ppm,
            db_drift_ppm: time.db_drift_ppm,
            request_timeout_ms: time.request_timeout_ms,
            faults,
        }
    }

    /// The largest clock-rate error any host has at any point of the run, in
    /// ppm: what the checkers allow for when they turn a host's durations into
    /// true time.
    pub fn drift_max_ppm(&self) -> u64 {
        let changes = self.faults.iter().filter_map(|f| match f.kind {
            FaultKind::Drift { ppm, .. } => Some(ppm),
            _ => None,
        });
        let all = self.drifts_ppm.iter().copied().chain([self.db_drift_ppm]);
        all.chain(changes).map(i64::unsigned_abs).max().unwrap_or(0)
    }

    /// The lines before the faults: skews, rates and the request timeout,
    /// zero ones left out unless `with_zero_skews` (a printed plan lists every
    /// node's skew; a shrunk script only what is set).
    pub fn header(&self, with_zero_skews: bool) -> String {
        let mut out = String::new();
        for (i, skew) in self.skews_ms.iter().enumerate() {
            if with_zero_skews || *skew != 0 {
                out.push_str(&format!("0 skew n{} {skew}ms\n", i + 1));
            }
        }
        if self.db_skew_ms != 0 {
            out.push_str(&format!("0 skew db {}ms\n", self.db_skew_ms));
        }
        for (i, ppm) in self.drifts_ppm.iter().enumerate() {
            if *ppm != 0 {
                out.push_str(&format!("0 drift n{} {ppm}ppm\n", i + 1));
            }
        }
        if self.db_drift_ppm != 0 {
            out.push_str(&format!("0 drift db {}ppm\n", self.db_drift_ppm));
        }
        if self.request_timeout_ms != 0 {
            out.push_str(&format!(
                "0 request_timeout {}ms\n",
                self.request_timeout_ms
            ));
        }
        out
    }
}

/// Salt of the clock-rate and timeout draws' own random stream: a scenario
/// without drift or a timeout range draws exactly the plan it drew before.
const TIME_SALT: u64 = 0x6472_6966_7473;

/// A rate error drawn from `f`: within `drift_ppm_max` either way, or in
/// `drift_rare_pct` of draws within `drift_rare_ppm_max`.
fn draw_ppm(rng: &mut ChaCha8Rng, f: &scenarios::Faults) -> i64 {
    let rare = f.drift_rare_pct > 0 && rng.random_range(0..100) < f.drift_rare_pct;
    let max = if rare {
        f.drift_rare_ppm_max
    } else {
        f.drift_ppm_max
    };
    let max = i64::try_from(max).unwrap_or(i64::MAX);
    rng.random_range(-max..=max)
}

/// What a plan draws about time itself: each host's rate, rate changes, and
/// the storage client's timeout.
struct TimeDraws {
    drifts_ppm: Vec<i64>,
    db_drift_ppm: i64,
    request_timeout_ms: u64,
    faults: Vec<Fault>,
}

impl TimeDraws {
    fn generate(scenario: &Scenario, seed: u64) -> Self {
        let f = &scenario.faults;
        let nodes = scenario.nodes as usize;
        let mut out = TimeDraws {
            drifts_ppm: vec![0; nodes],
            db_drift_ppm: 0,
            request_timeout_ms: 0,
            faults: Vec::new(),
        };
        let drifts = f.drift_ppm_max > 0 || f.drift_rare_pct > 0;
        let [lo, hi] = f.storage_timeout_ms;
        if !drifts && lo == hi {
            return out;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ TIME_SALT);
        if lo != hi {
            out.request_timeout_ms = rng.random_range(lo..=hi);
        }
        if !drifts {
            return out;
        }
        out.drifts_ppm = (0..nodes).map(|_| draw_ppm(&mut rng, f)).collect();
        out.db_drift_ppm = draw_ppm(&mut rng, f);
        out.faults = timeline(&mut rng, scenario, &[f.drift_changes_per_min], DRIFT_KIND);
        out
    }
}

/// Salt of the process faults' own random stream: drawn apart from the other
/// kinds, so a scenario without them draws exactly the plan it drew before.
const PROCESS_SALT: u64 = 0x7061_7573_6573;

/// Pauses and in-place restarts: per second and kind, a draw at the kind's
/// rate, aimed like the other faults (a fixed node, the leader, a node mid-start).
fn process_faults(scenario: &Scenario, seed: u64) -> Vec<Fault> {
    let f = &scenario.faults;
    let rates = [
        f.pauses_per_min,
        f.maintainer_restarts_per_min,
        f.runtime_restarts_per_min,
        f.replaces_per_min,
    ];
    if rates.iter().all(|r| *r <= 0.0) {
        return Vec::new();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ PROCESS_SALT);
    timeline(&mut rng, scenario, &rates, PROCESS_KINDS_FROM)
}

/// Faults over the fault phase: each second, for each kind (index
/// `first_kind + i` for `rates[i]`), a draw at its per-minute rate, then its
/// time in the second, target and parameters. Faults of one kind never
/// overlap on one target, so each has a clear start and end in the history.
fn timeline(
    rng: &mut ChaCha8Rng,
    scenario: &Scenario,
    rates: &[f64],
    first_kind: usize,
) -> Vec<Fault> {
    let f = &scenario.faults;
    let nodes = scenario.nodes as usize;
    let loops = scenario.loops.len().max(1);
    // Per target (each node, "leader", "starting", the database) and kind:
    // when the last fault of that kind ends.
    let mut busy_until = vec![vec![0u64; rates.len()]; target_slots(nodes)];
    let mut faults = Vec::new();
    for second in 0..scenario.duration_s {
        for (i, rate) in rates.iter().copied().enumerate() {
            if rate <= 0.0 || !rng.random_bool((rate / 60.0).clamp(0.0, 1.0)) {
                continue;
            }
            let at_ms = second * 1000 + rng.random_range(0..1000);
            let target = draw_target(first_kind + i, rng, f, nodes);
            let slot = target_slot(target, nodes);
            let kind = draw_kind(first_kind + i, rng, f, loops);
            if at_ms < busy_until[slot][i] {
                continue;
            }
            let fault = Fault {
                at_ms,
                target,
                kind,
            };
            busy_until[slot][i] = fault.end_ms();
            faults.push(fault);
        }
    }
    faults
}

impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header(true))?;
        for fault in &self.faults {
            writeln!(f, "{fault}")?;
        }
        Ok(())
    }
}

/// One line of a fault script: a node's clock skew, or a fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanLine {
    /// `0 skew nI Xms`: node `I`'s wall clock runs `X` ms off for the whole run.
    Skew {
        /// Node index (0-based; `n1` is 0).
        node: usize,
        /// The skew.
        ms: i64,
    },
    /// `0 skew db Xms`: the database host's wall clock runs `X` ms off.
    DbSkew {
        /// The skew.
        ms: i64,
    },
    /// `0 drift nI Xppm` / `0 drift db Xppm`: a host's clock rate error for
    /// the run (`node` is `None` for the database host).
    Drift {
        /// Node index, or `None` for the database host.
        node: Option<usize>,
        /// The rate error.
        ppm: i64,
    },
    /// `0 request_timeout Xms`: every node's storage client timeout.
    RequestTimeout {
        /// The timeout.
        ms: u64,
    },
    /// A fault, in the form [`Fault`]'s `Display` writes.
    Fault(Fault),
}

/// The words of one plan line, read front to back; errors (`"field: why"`)
/// name the field. Shared with the chaos harness's plan.
pub struct Words<'a> {
    words: std::str::SplitWhitespace<'a>,
}

impl<'a> Words<'a> {
    /// The words of `line`.
    pub fn new(line: &'a str) -> Self {
        Self {
            words: line.split_whitespace(),
        }
    }

    /// The next word, which `field` names.
    pub fn next(&mut self, field: &str) -> Result<&'a str, String> {
        self.words.next().ok_or_else(|| format!("{field}: missing"))
    }

    /// The next word, which must be `word`.
    pub fn literal(&mut self, word: &str) -> Result<(), String> {
        match self.next(word)? {
            w if w == word => Ok(()),
            w => Err(format!("expected {word:?}, found {w:?}")),
        }
    }

    /// The next word as a number followed by `unit` (`"5ms"`, `"30%"`).
    pub fn number<T: std::str::FromStr>(&mut self, field: &str, unit: &str) -> Result<T, String> {
        let word = self.next(field)?;
        word.strip_suffix(unit)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("{field}: {word:?} is not a number followed by {unit:?}"))
    }

    fn ms(&mut self, field: &str) -> Result<u64, String> {
        self.number(field, "ms")
    }

    fn target(&mut self) -> Result<Target, String> {
        let word = self.next("target")?;
        parse_target(word).ok_or_else(|| {
            format!("target: {word:?} is not a node (n1, n2, ...), leader or starting")
        })
    }

    /// No word left.
    pub fn end(mut self) -> Result<(), String> {
        match self.words.next() {
            None => Ok(()),
            Some(w) => Err(format!("unexpected {w:?} at the end of the line")),
        }
    }
}

fn parse_target(word: &str) -> Option<Target> {
    match word {
        "leader" => Some(Target::Leader),
        "starting" => Some(Target::Starting),
        "db" => Some(Target::Db),
        _ => {
            let n: usize = word.strip_prefix('n')?.parse().ok()?;
            n.checked_sub(1).map(Target::Node)
        }
    }
}

fn parse_storage_mode(word: &str) -> Result<StorageFault, String> {
    match word {
        "error" => Ok(StorageFault::Error),
        "lost_reply" => Ok(StorageFault::LostReply),
        _ => {
            let ms = |prefix: &str| {
                word.strip_prefix(prefix)
                    .and_then(|ms| ms.strip_suffix("ms"))
                    .and_then(|ms| ms.parse().ok())
            };
            ms("slow:")
                .map(|ms| StorageFault::Slow { ms })
                .or_else(|| ms("slow_reply:").map(|ms| StorageFault::SlowReply { ms }))
                .ok_or_else(|| {
                    format!(
                        "storage mode: {word:?} is not error, lost_reply, slow:<n>ms or \
                         slow_reply:<n>ms"
                    )
                })
        }
    }
}

impl std::str::FromStr for PlanLine {
    type Err = String;

    /// Parse one line as [`FaultPlan`]'s `Display` writes it, so a printed plan
    /// reads back unchanged.
    fn from_str(line: &str) -> Result<Self, String> {
        let mut w = Words::new(line);
        let at = w.next("time")?;
        let at_ms: u64 = at
            .parse()
            .map_err(|_| format!("time: {at:?} is not a whole number of simulated ms"))?;
        let kind_word = w.next("fault")?;
        if kind_word == "skew" {
            let line = match w.target()? {
                Target::Node(node) => PlanLine::Skew {
                    node,
                    ms: w.number("skew", "ms")?,
                },
                Target::Db => PlanLine::DbSkew {
                    ms: w.number("skew", "ms")?,
                },
                _ => {
                    return Err("target: a skew belongs to one host (n1, n2, ..., db)".into());
                }
            };
            w.end()?;
            return Ok(line);
        }
        // `0 drift n1 200ppm` is the run's rate; `at drift n1 200ppm for Xms`
        // a drift fault.
        if kind_word == "drift" && !line.contains(" for ") {
            let node = match w.target()? {
                Target::Node(node) => Some(node),
                Target::Db => None,
                _ => return Err("target: a rate belongs to one host (n1, n2, ..., db)".into()),
            };
            let ppm = w.number("drift", "ppm")?;
            w.end()?;
            check_ppm(ppm)?;
            return Ok(PlanLine::Drift { node, ppm });
        }
        if kind_word == "request_timeout" {
            let ms = w.ms("request_timeout")?;
            w.end()?;
            if ms == 0 {
                return Err("request_timeout: must be positive".into());
            }
            return Ok(PlanLine::RequestTimeout { ms });
        }
        let (target, kind) = match kind_word {
            "drift" => {
                let target = w.target()?;
                let ppm = w.number("drift", "ppm")?;
                check_ppm(ppm)?;
                w.literal("for")?;
                (
                    target,
                    FaultKind::Drift {
                        ppm,
                        dur_ms: w.ms("duration")?,
                    },
                )
            }
            "partition" => (
                w.target()?,
                FaultKind::Partition {
                    dur_ms: w.ms("duration")?,
                },
            ),
            "bounce" => (
                w.target()?,
                FaultKind::Bounce {
                    down_ms: w.ms("downtime")?,
                },
            ),
            "storage" => {
                let fault = parse_storage_mode(w.next("storage mode")?)?;
                let pct = w.number("share", "%")?;
                w.literal("for")?;
                let dur_ms = w.ms("duration")?;
                (Target::Node(0), FaultKind::Storage { fault, pct, dur_ms })
            }
            "shutdown" => {
                let target = w.target()?;
                w.literal("deadline")?;
                let deadline_ms = w.ms("deadline")?;
                w.literal("down")?;
                let down_ms = w.ms("downtime")?;
                (
                    target,
                    FaultKind::Shutdown {
                        deadline_ms,
                        down_ms,
                    },
                )
            }
            "loop_panic" => {
                let target = w.target()?;
                w.literal("loop")?;
                (
                    target,
                    FaultKind::LoopPanic {
                        index: w.number("loop", "")?,
                    },
                )
            }
            "slow_tick" => {
                let target = w.target()?;
                w.literal("loop")?;
                let index = w.number("loop", "")?;
                (
                    target,
                    FaultKind::SlowTick {
                        index,
                        ms: w.ms("tick length")?,
                    },
                )
            }
            "clock_jump" => {
                let target = w.target()?;
                let jump_ms = w.number("jump", "ms")?;
                w.literal("for")?;
                (
                    target,
                    FaultKind::ClockJump {
                        jump_ms,
                        dur_ms: w.ms("duration")?,
                    },
                )
            }
            "pause" => (
                w.target()?,
                FaultKind::Pause {
                    dur_ms: w.ms("duration")?,
                },
            ),
            "restart_maintainer" => (w.target()?, FaultKind::RestartMaintainer),
            "replace" => {
                let target = w.target()?;
                let partitioned = match w.next("away")? {
                    "pause" => false,
                    "partition" => true,
                    other => return Err(format!("away: {other:?} is not pause or partition")),
                };
                let dur_ms = w.ms("duration")?;
                w.literal("overlap")?;
                let overlap_ms = w.ms("overlap")?;
                (
                    target,
                    FaultKind::Replace {
                        dur_ms,
                        overlap_ms,
                        partitioned,
                    },
                )
            }
            "restart_runtime" => {
                let target = w.target()?;
                w.literal("deadline")?;
                (
                    target,
                    FaultKind::RestartRuntime {
                        deadline_ms: w.ms("deadline")?,
                    },
                )
            }
            "hook_fault" => {
                let target = w.target()?;
                let window_ms = w.ms("window")?;
                w.literal("delay")?;
                let delay_ms = w.ms("delay")?;
                w.literal("fail")?;
                let fail_pct = w.number("fail share", "%")?;
                (
                    target,
                    FaultKind::HookFault {
                        window_ms,
                        delay_ms,
                        fail_pct,
                    },
                )
            }
            other => {
                return Err(format!(
                    "fault: unknown kind {other:?}; valid: skew, drift, request_timeout, \
                     partition, bounce, storage, shutdown, loop_panic, slow_tick, clock_jump, \
                     hook_fault, pause, restart_maintainer, restart_runtime, replace"
                ))
            }
        };
        w.end()?;
        Ok(PlanLine::Fault(Fault {
            at_ms,
            target,
            kind,
        }))
    }
}

/// A scripted rate must be one a clock could have.
fn check_ppm(ppm: i64) -> Result<(), String> {
    let limit = crate::world::clock::DRIFT_PPM_LIMIT;
    if ppm.abs() > limit {
        return Err(format!("drift: {ppm}ppm is past ±{limit}ppm"));
    }
    Ok(())
}

impl FaultPlan {
    /// No fault, no skew, no drift, for `nodes` nodes.
    pub fn quiet(nodes: usize) -> FaultPlan {
        FaultPlan {
            skews_ms: vec![0; nodes],
            db_skew_ms: 0,
            drifts_ppm: vec![0; nodes],
            db_drift_ppm: 0,
            request_timeout_ms: 0,
            faults: Vec::new(),
        }
    }

    /// Assemble a plan from parsed lines for `nodes` nodes (skews not given are
    /// zero). Faults are put in time order; a skew or fixed target past the last
    /// node is an error naming it.
    pub fn from_lines(nodes: usize, lines: Vec<PlanLine>) -> Result<FaultPlan, String> {
        let mut plan = FaultPlan::quiet(nodes);
        for line in lines {
            match line {
                PlanLine::Skew { node, ms } => {
                    let slot = plan.skews_ms.get_mut(node).ok_or_else(|| {
                        format!("skew: n{} is past the last node n{nodes}", node + 1)
                    })?;
                    *slot = ms;
                }
                PlanLine::DbSkew { ms } => plan.db_skew_ms = ms,
                PlanLine::Drift { node: None, ppm } => plan.db_drift_ppm = ppm,
                PlanLine::Drift {
                    node: Some(node),
                    ppm,
                } => {
                    let slot = plan.drifts_ppm.get_mut(node).ok_or_else(|| {
                        format!("drift: n{} is past the last node n{nodes}", node + 1)
                    })?;
                    *slot = ppm;
                }
                PlanLine::RequestTimeout { ms } => plan.request_timeout_ms = ms,
                PlanLine::Fault(fault) => {
                    if let Target::Node(i) = fault.target {
                        if i >= nodes && !matches!(fault.kind, FaultKind::Storage { .. }) {
                            return Err(format!(
                                "target: n{} is past the last node n{nodes}",
                                i + 1
                            ));
                        }
                    }
                    plan.faults.push(fault);
                }
            }
        }
        plan.faults.sort_by_key(|f| (f.at_ms, f.target));
        Ok(plan)
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
        let back: Vec<PlanLine> = a
            .to_string()
            .lines()
            .map(|l| l.parse().unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        assert_eq!(FaultPlan::from_lines(a.skews_ms.len(), back), Ok(a.clone()));
        for (i, x) in a.faults.iter().enumerate() {
            for y in &a.faults[i + 1..] {
                let same = x.target == y.target
                    && std::mem::discriminant(&x.kind) == std::mem::discriminant(&y.kind);
                assert!(!same || y.at_ms >= x.end_ms(), "{x} overlaps {y}");
            }
        }
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_text() {
        let swarm = scenarios::by_name("swarm").expect("scenario");
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..40 {
            for fault in FaultPlan::generate(&swarm, seed).faults {
                let text = fault.to_string();
                assert_eq!(text.parse(), Ok(PlanLine::Fault(fault.clone())), "{text}");
                seen.insert(text.split_whitespace().nth(1).map(str::to_owned));
            }
        }
        assert_eq!(seen.len(), 13, "every fault kind drawn: {seen:?}");
    }

    /// `clock_skew` draws ten-minute skews and jumps either way, on the
    /// database host too; its plans, `0 skew db` included, read back whole.
    #[test]
    fn clock_plans_reach_the_database_host_and_step_both_ways() {
        let s = scenarios::by_name("clock_skew").expect("scenario");
        let (mut db_jumps, mut back_jumps, mut db_skews) = (0, 0, 0);
        for seed in 0..20 {
            let plan = FaultPlan::generate(&s, seed);
            db_skews += usize::from(plan.db_skew_ms != 0);
            for f in &plan.faults {
                if let FaultKind::ClockJump { jump_ms, .. } = f.kind {
                    assert!(jump_ms.unsigned_abs() <= 600_000, "{f}");
                    back_jumps += usize::from(jump_ms < 0);
                    db_jumps += usize::from(f.target == Target::Db);
                }
            }
            assert_reads_back(plan);
        }
        assert!(db_jumps > 0 && back_jumps > 0 && db_skews > 0);
        let slow: PlanLine = "10 storage slow_reply:1500ms 30% for 2000ms"
            .parse()
            .expect("parses");
        assert!(matches!(
            slow,
            PlanLine::Fault(Fault {
                kind: FaultKind::Storage {
                    fault: StorageFault::SlowReply { ms: 1_500 },
                    ..
                },
                ..
            })
        ));
    }

    /// `plan`, printed and parsed line by line, is `plan` again.
    fn assert_reads_back(plan: FaultPlan) {
        let back: Vec<PlanLine> = plan
            .to_string()
            .lines()
            .map(|l| l.parse().unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        assert_eq!(FaultPlan::from_lines(plan.skews_ms.len(), back), Ok(plan));
    }

    /// `clock_drift` draws a rate per host, changes of rate (on the database
    /// host too) and a timeout per run; scenarios without them draw none, so
    /// their plans are the ones they drew before rates existed.
    #[test]
    fn drift_plans_set_every_host_s_rate_and_read_back_whole() {
        let s = scenarios::by_name("clock_drift").expect("scenario");
        let (mut changes, mut db_changes, mut rare, mut timeouts) = (0, 0, 0, Vec::new());
        for seed in 0..20 {
            let plan = FaultPlan::generate(&s, seed);
            assert!(plan.drift_max_ppm() <= 100_000, "{plan}");
            rare += plan.drifts_ppm.iter().filter(|p| p.abs() > 30_000).count();
            timeouts.push(plan.request_timeout_ms);
            for f in &plan.faults {
                if let FaultKind::Drift { .. } = f.kind {
                    changes += 1;
                    db_changes += usize::from(f.target == Target::Db);
                }
            }
            assert_reads_back(plan);
        }
        assert!(changes > 0 && db_changes > 0 && rare > 0);
        assert!(
            timeouts.iter().all(|t| (300..=8_000).contains(t)),
            "{timeouts:?}"
        );
        assert!(timeouts.iter().any(|t| *t < 1_000) && timeouts.iter().any(|t| *t > 3_000));
        let quiet = FaultPlan::generate(&scenarios::by_name("clock_skew").expect("s"), 3);
        assert_eq!(quiet.drift_max_ppm(), 0);
        assert_eq!(quiet.request_timeout_ms, 0);
    }

    #[test]
    fn bad_lines_name_the_field() {
        let err = |l: &str| l.parse::<PlanLine>().expect_err(l);
        assert!(err("x partition n1 5ms").starts_with("time:"));
        assert!(err("10 partition n0 5ms").starts_with("target:"));
        assert!(err("10 partition n1 5").starts_with("duration:"));
        assert!(err("10 melt n1").starts_with("fault: unknown kind"));
        assert!(err("10 storage slow 5% for 1ms").starts_with("storage mode:"));
        assert!(err("10 bounce n2 5ms extra").contains("unexpected"));
        assert!(err("0 skew leader 5ms").starts_with("target:"));
        assert_eq!("0 skew db -5ms".parse(), Ok(PlanLine::DbSkew { ms: -5 }));
        assert!(err("0 drift n1 5ms").starts_with("drift:"));
        assert!(err("0 drift n1 900000ppm").starts_with("drift:"));
        assert!(err("0 drift leader 5ppm").starts_with("target:"));
        assert!(err("0 request_timeout 0ms").starts_with("request_timeout:"));
        assert_eq!(
            "0 drift db -2500ppm".parse(),
            Ok(PlanLine::Drift {
                node: None,
                ppm: -2_500
            })
        );
        let fault: PlanLine = "10 partition n3 5ms".parse().expect("parses");
        assert!(FaultPlan::from_lines(2, vec![fault])
            .expect_err("n3 of 2")
            .contains("n3"));
    }
}
