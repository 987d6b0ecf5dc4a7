//! The chaos plan: every fault of a run, drawn from a seed before it starts,
//! printed at the start and written with the result.
//!
//! A plan repeats a run's faults, not its interleaving: real processes on a
//! real database schedule as the machine does. Faults of one kind never overlap
//! on one process, so each has a clear start and end. A fault the harness
//! carries out (link faults and signals) may be aimed at `leader`: whichever
//! process holds the lease at that moment, read from the database, or the
//! named process if none does. One line per fault, the
//! same text [`ChaosPlan`]'s `Display` writes and `FromStr` reads:
//!
//! ```text
//! seed 7 processes 3 fault_ms 60000 heal_ms 30000
//! 0 skew p2 -4200ms
//! 1200 partition p1 3000ms
//! 5100 pause leader p3 9000ms       # SIGSTOP whoever leads then (p3 if nobody)
//! 8000 kill p2 down 1500ms          # SIGKILL, restarted 1.5 s later
//! 9300 terminate p1 deadline 2000ms down 1000ms
//! 12000 drop_replies p3 800ms       # requests applied, replies lost
//! 15000 delay p1 300ms for 4000ms
//! 20000 reset p2                    # every connection of p2 reset
//! 25000 clock_jump p1 90000ms for 10000ms
//! 31000 hook_fail p2 60% delay 4000ms for 8000ms
//! 33000 hook_fail all 100% delay 3000ms for 25000ms  # every process's hooks
//! 40000 db_clock_jump db 15000ms for 6000ms  # storage's clock steps
//! ```
//!
//! ```
//! use chaos::plan::{ChaosPlan, PlanConfig};
//! let plan = ChaosPlan::generate(&PlanConfig::default(), 7);
//! assert_eq!(plan.to_string().parse::<ChaosPlan>(), Ok(plan));
//! ```

use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sim::plan::faults::Words;

/// One fault on one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChaosKind {
    /// The process's proxy holds every byte for `dur_ms`.
    Partition {
        /// How long.
        dur_ms: u64,
    },
    /// The process's proxy delays each chunk by `ms` for `dur_ms`.
    Delay {
        /// Per chunk.
        ms: u64,
        /// How long.
        dur_ms: u64,
    },
    /// The process's proxy forwards requests and drops replies for `dur_ms`.
    DropReplies {
        /// How long.
        dur_ms: u64,
    },
    /// The process's proxy resets every connection at once.
    Reset,
    /// SIGKILL, and a new process under the same name `down_ms` later.
    Kill {
        /// Downtime.
        down_ms: u64,
    },
    /// SIGSTOP, and SIGCONT `dur_ms` later: a process that wakes believing
    /// it still leads and holds its claims.
    Pause {
        /// How long.
        dur_ms: u64,
    },
    /// SIGTERM: a graceful shutdown within `deadline_ms`, and a new process
    /// `down_ms` after it exited.
    Terminate {
        /// The shutdown deadline.
        deadline_ms: u64,
        /// Downtime after exit.
        down_ms: u64,
    },
    /// The process's wall clock steps `jump_ms` (negative: back), and back
    /// `dur_ms` later.
    ClockJump {
        /// How far.
        jump_ms: i64,
        /// For how long.
        dur_ms: u64,
    },
    /// Storage's clock (the database server's, as every process computes it)
    /// steps `jump_ms`, and back `dur_ms` later: an NTP step on the database
    /// host. Written `db_clock_jump db`; its process is unused.
    DbClockJump {
        /// How far.
        jump_ms: i64,
        /// For how long.
        dur_ms: u64,
    },
    /// `pct` percent of the process's maintainer start hooks fail, each after
    /// `delay_ms`, for `dur_ms`.
    HookFail {
        /// Share, in percent.
        pct: u64,
        /// How long a failing call takes.
        delay_ms: u64,
        /// How long.
        dur_ms: u64,
    },
}

/// Kinds in drawing order; an index into [`PlanConfig::rates_per_min`].
pub const KINDS: [&str; KIND_COUNT] = [
    "partition",
    "delay",
    "drop_replies",
    "reset",
    "kill",
    "pause",
    "terminate",
    "clock_jump",
    "hook_fail",
    "db_clock_jump",
];

/// How many fault kinds there are.
pub const KIND_COUNT: usize = 10;

impl ChaosKind {
    /// Its position in [`KINDS`] (and in [`PlanConfig::rates_per_min`]).
    pub fn index(&self) -> usize {
        match self {
            ChaosKind::Partition { .. } => 0,
            ChaosKind::Delay { .. } => 1,
            ChaosKind::DropReplies { .. } => 2,
            ChaosKind::Reset => 3,
            ChaosKind::Kill { .. } => 4,
            ChaosKind::Pause { .. } => 5,
            ChaosKind::Terminate { .. } => 6,
            ChaosKind::ClockJump { .. } => 7,
            ChaosKind::HookFail { .. } => 8,
            ChaosKind::DbClockJump { .. } => 9,
        }
    }

    /// Whether the harness carries it out (a link fault or a signal), so it can
    /// be aimed at whoever leads then; clock jumps (a process's or storage's)
    /// and hook faults are carried out by the processes themselves, from the
    /// plan they read at start.
    pub fn harness_carried(&self) -> bool {
        !matches!(
            self,
            ChaosKind::ClockJump { .. }
                | ChaosKind::HookFail { .. }
                | ChaosKind::DbClockJump { .. }
        )
    }

    /// How long the fault lasts (a kill or shutdown: until the process is back).
    pub fn dur_ms(&self) -> u64 {
        match *self {
            ChaosKind::Partition { dur_ms }
            | ChaosKind::Delay { dur_ms, .. }
            | ChaosKind::DropReplies { dur_ms }
            | ChaosKind::Pause { dur_ms }
            | ChaosKind::ClockJump { dur_ms, .. }
            | ChaosKind::HookFail { dur_ms, .. }
            | ChaosKind::DbClockJump { dur_ms, .. } => dur_ms,
            ChaosKind::Kill { down_ms } => down_ms,
            ChaosKind::Terminate {
                deadline_ms,
                down_ms,
            } => deadline_ms + down_ms,
            ChaosKind::Reset => 0,
        }
    }
}

/// A fault at an offset from the run's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChaosFault {
    /// When, in ms since the run started.
    pub at_ms: u64,
    /// Which process (0-based; `p1` is 0).
    pub process: usize,
    /// Aimed at whichever process leads when it starts (`process` if none).
    pub leader: bool,
    /// Aimed at every process at once (`hook_fail all`: a dependency every
    /// maintainer's start hook needs is down).
    pub all: bool,
    /// What.
    pub kind: ChaosKind,
}

/// How a plan is drawn: rates per minute of the fault phase, ranges in ms.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanConfig {
    /// Worker processes.
    pub processes: usize,
    /// The fault phase.
    pub fault_ms: u64,
    /// The heal phase after it, with faults stopped.
    pub heal_ms: u64,
    /// Per kind, in [`KINDS`] order, across all processes.
    pub rates_per_min: [f64; KIND_COUNT],
    /// Partitions, drop-reply windows and delays last this long: past the
    /// 5 s lease and the 10 s stale threshold in some draws.
    pub link_ms: [u64; 2],
    /// Per-chunk delay.
    pub delay_ms: [u64; 2],
    /// Pauses: past the 5 s lease in most draws, past the 10 s stale
    /// threshold (a frozen worker's claims rescued) in some.
    pub pause_ms: [u64; 2],
    /// Downtime after a kill or a shutdown.
    pub down_ms: [u64; 2],
    /// Graceful shutdown deadlines.
    pub deadline_ms: [u64; 2],
    /// Clock jumps, either way.
    pub jump_ms: [u64; 2],
    /// Steps of storage's clock, either way: past the 10 s stale threshold
    /// in some draws.
    pub db_jump_ms: [u64; 2],
    /// Largest starting skew of a process's wall clock, either way.
    pub skew_ms_max: u64,
    /// Windows of failing start hooks.
    pub hook_window_ms: [u64; 2],
    /// How long a failing start hook call takes.
    pub hook_delay_ms: [u64; 2],
    /// Share of start hook calls that fail in a window, in percent: a term
    /// won inside one often spends every start attempt.
    pub hook_fail_pct: [u64; 2],
    /// Share of the faults the harness carries out that are aimed at the
    /// leader, in percent.
    pub leader_pct: u64,
    /// Share of hook faults that hit every process at once, in percent.
    pub hook_all_pct: u64,
}

impl Default for PlanConfig {
    /// Three processes, a minute of faults and 50 s of heal (what `no_lost_jobs`
    /// needs to judge, 48.9 s with the chaos settings), every
    /// kind on: what the issue's 60 s runs use.
    fn default() -> Self {
        Self {
            processes: 3,
            fault_ms: 60_000,
            heal_ms: 50_000,
            rates_per_min: [4.0, 2.0, 2.0, 1.0, 1.5, 3.0, 1.5, 1.5, 3.0, 1.0],
            link_ms: [500, 12_000],
            delay_ms: [20, 1_500],
            pause_ms: [1_000, 16_000],
            down_ms: [500, 4_000],
            deadline_ms: [500, 3_000],
            jump_ms: [1_000, 120_000],
            db_jump_ms: [2_000, 30_000],
            skew_ms_max: 10_000,
            hook_window_ms: [10_000, 40_000],
            hook_fail_pct: [70, 100],
            hook_delay_ms: [200, 6_000],
            leader_pct: 40,
            hook_all_pct: 50,
        }
    }
}

/// Every fault of one run. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChaosPlan {
    /// The seed it was drawn from.
    pub seed: u64,
    /// Worker processes.
    pub processes: usize,
    /// The fault phase, ms.
    pub fault_ms: u64,
    /// The heal phase, ms.
    pub heal_ms: u64,
    /// Each process's wall-clock skew for the run.
    pub skews_ms: Vec<i64>,
    /// Faults in start order.
    pub faults: Vec<ChaosFault>,
}

fn draw(rng: &mut ChaCha8Rng, [lo, hi]: [u64; 2]) -> u64 {
    rng.random_range(lo..=hi.max(lo))
}

impl ChaosPlan {
    /// The plan `cfg` draws under `seed`.
    pub fn generate(cfg: &PlanConfig, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let skew = i64::try_from(cfg.skew_ms_max).unwrap_or(i64::MAX);
        let skews_ms = (0..cfg.processes)
            .map(|_| rng.random_range(-skew..=skew))
            .collect();
        let mut busy_until = vec![[0u64; KIND_COUNT]; cfg.processes];
        let mut faults = Vec::new();
        for second in 0..cfg.fault_ms / 1000 {
            for (k, rate) in cfg.rates_per_min.iter().enumerate() {
                if *rate <= 0.0 || !rng.random_bool((rate / 60.0).clamp(0.0, 1.0)) {
                    continue;
                }
                let at_ms = second * 1000 + rng.random_range(0..1000);
                let process = rng.random_range(0..cfg.processes.max(1));
                let kind = Self::draw_kind(k, cfg, &mut rng);
                // Storage's clock is one for all: its steps never overlap.
                let process = if k == 9 { 0 } else { process };
                let leader = kind.harness_carried() && rng.random_range(0..100) < cfg.leader_pct;
                let all = matches!(kind, ChaosKind::HookFail { .. })
                    && rng.random_range(0..100) < cfg.hook_all_pct;
                let process = if all { 0 } else { process };
                if at_ms < busy_until[process][k] {
                    continue;
                }
                busy_until[process][k] = at_ms + kind.dur_ms();
                faults.push(ChaosFault {
                    at_ms,
                    process,
                    leader,
                    all,
                    kind,
                });
            }
        }
        Self {
            seed,
            processes: cfg.processes,
            fault_ms: cfg.fault_ms,
            heal_ms: cfg.heal_ms,
            skews_ms,
            faults,
        }
    }

    fn draw_kind(k: usize, cfg: &PlanConfig, rng: &mut ChaCha8Rng) -> ChaosKind {
        match k {
            0 => ChaosKind::Partition {
                dur_ms: draw(rng, cfg.link_ms),
            },
            1 => ChaosKind::Delay {
                ms: draw(rng, cfg.delay_ms),
                dur_ms: draw(rng, cfg.link_ms),
            },
            2 => ChaosKind::DropReplies {
                dur_ms: draw(rng, cfg.link_ms),
            },
            3 => ChaosKind::Reset,
            4 => ChaosKind::Kill {
                down_ms: draw(rng, cfg.down_ms),
            },
            5 => ChaosKind::Pause {
                dur_ms: draw(rng, cfg.pause_ms),
            },
            6 => ChaosKind::Terminate {
                deadline_ms: draw(rng, cfg.deadline_ms),
                down_ms: draw(rng, cfg.down_ms),
            },
            7 => {
                let jump = i64::try_from(draw(rng, cfg.jump_ms)).unwrap_or(i64::MAX);
                ChaosKind::ClockJump {
                    jump_ms: if rng.random_bool(0.5) { -jump } else { jump },
                    dur_ms: draw(rng, cfg.link_ms),
                }
            }
            9 => {
                let jump = i64::try_from(draw(rng, cfg.db_jump_ms)).unwrap_or(i64::MAX);
                ChaosKind::DbClockJump {
                    jump_ms: if rng.random_bool(0.5) { -jump } else { jump },
                    dur_ms: draw(rng, cfg.link_ms),
                }
            }
            _ => ChaosKind::HookFail {
                pct: draw(rng, cfg.hook_fail_pct),
                delay_ms: draw(rng, cfg.hook_delay_ms),
                dur_ms: draw(rng, cfg.hook_window_ms),
            },
        }
    }

    /// How many faults of each kind, in [`KINDS`] order: the harness's table.
    pub fn counts(&self) -> [usize; KIND_COUNT] {
        let mut out = [0; KIND_COUNT];
        for f in &self.faults {
            out[f.kind.index()] += 1;
        }
        out
    }
}

impl fmt::Display for ChaosFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.at_ms;
        let p = match (self.all, self.leader) {
            (true, _) => "all".to_owned(),
            (false, true) => format!("leader p{}", self.process + 1),
            (false, false) => format!("p{}", self.process + 1),
        };
        match self.kind {
            ChaosKind::Partition { dur_ms } => write!(f, "{at} partition {p} {dur_ms}ms"),
            ChaosKind::Delay { ms, dur_ms } => {
                write!(f, "{at} delay {p} {ms}ms for {dur_ms}ms")
            }
            ChaosKind::DropReplies { dur_ms } => write!(f, "{at} drop_replies {p} {dur_ms}ms"),
            ChaosKind::Reset => write!(f, "{at} reset {p}"),
            ChaosKind::Kill { down_ms } => write!(f, "{at} kill {p} down {down_ms}ms"),
            ChaosKind::Pause { dur_ms } => write!(f, "{at} pause {p} {dur_ms}ms"),
            ChaosKind::Terminate {
                deadline_ms,
                down_ms,
            } => write!(
                f,
                "{at} terminate {p} deadline {deadline_ms}ms down {down_ms}ms"
            ),
            ChaosKind::ClockJump { jump_ms, dur_ms } => {
                write!(f, "{at} clock_jump {p} {jump_ms}ms for {dur_ms}ms")
            }
            ChaosKind::DbClockJump { jump_ms, dur_ms } => {
                write!(f, "{at} db_clock_jump db {jump_ms}ms for {dur_ms}ms")
            }
            ChaosKind::HookFail {
                pct,
                delay_ms,
                dur_ms,
            } => write!(
                f,
                "{at} hook_fail {p} {pct}% delay {delay_ms}ms for {dur_ms}ms"
            ),
        }
    }
}

impl fmt::Display for ChaosPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} processes {} fault_ms {} heal_ms {}",
            self.seed, self.processes, self.fault_ms, self.heal_ms
        )?;
        for (i, skew) in self.skews_ms.iter().enumerate() {
            writeln!(f, "0 skew p{} {skew}ms", i + 1)?;
        }
        for fault in &self.faults {
            writeln!(f, "{fault}")?;
        }
        Ok(())
    }
}

/// A plan line that does not parse: its 1-based line and what is wrong,
/// naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("plan line {line}: {reason}")]
pub struct PlanError {
    /// The 1-based line.
    pub line: usize,
    /// What is wrong, starting with the field.
    pub reason: String,
}

/// The process a plan line names (`p1` is 0), one of `processes`.
fn process(word: &str, processes: usize) -> Result<usize, String> {
    let n: usize = word
        .strip_prefix('p')
        .and_then(|n| n.parse().ok())
        .filter(|n| (1..=processes).contains(n))
        .ok_or_else(|| format!("process: {word:?} is not one of p1..p{processes}"))?;
    Ok(n - 1)
}

fn parse_line(w: &mut Words<'_>, processes: usize) -> Result<Line, String> {
    let at = w.next("time")?;
    let at_ms: u64 = at
        .parse()
        .map_err(|_| format!("time: {at:?} is not a whole number of ms"))?;
    let kind = w.next("fault")?;
    let mut word = w.next("process")?;
    let leader = word == "leader";
    if leader {
        word = w.next("process")?;
    }
    let all = word == "all";
    let process = match (kind, word) {
        ("db_clock_jump", "db") | ("hook_fail", "all") => 0,
        ("db_clock_jump", other) => {
            return Err(format!("process: a db_clock_jump names db, not {other:?}"))
        }
        _ => process(word, processes)?,
    };
    let ms = |w: &mut Words<'_>, field: &str| w.number::<u64>(field, "ms");
    let kind = match kind {
        "skew" if !leader => return Ok(Line::Skew(process, w.number("skew", "ms")?)),
        "partition" => ChaosKind::Partition {
            dur_ms: ms(w, "duration")?,
        },
        "delay" => {
            let per = ms(w, "delay")?;
            w.literal("for")?;
            ChaosKind::Delay {
                ms: per,
                dur_ms: ms(w, "duration")?,
            }
        }
        "drop_replies" => ChaosKind::DropReplies {
            dur_ms: ms(w, "duration")?,
        },
        "reset" => ChaosKind::Reset,
        "kill" => {
            w.literal("down")?;
            ChaosKind::Kill {
                down_ms: ms(w, "downtime")?,
            }
        }
        "pause" => ChaosKind::Pause {
            dur_ms: ms(w, "duration")?,
        },
        "terminate" => {
            w.literal("deadline")?;
            let deadline_ms = ms(w, "deadline")?;
            w.literal("down")?;
            ChaosKind::Terminate {
                deadline_ms,
                down_ms: ms(w, "downtime")?,
            }
        }
        "clock_jump" => {
            let jump_ms = w.number("jump", "ms")?;
            w.literal("for")?;
            ChaosKind::ClockJump {
                jump_ms,
                dur_ms: ms(w, "duration")?,
            }
        }
        "db_clock_jump" => {
            let jump_ms = w.number("jump", "ms")?;
            w.literal("for")?;
            ChaosKind::DbClockJump {
                jump_ms,
                dur_ms: ms(w, "duration")?,
            }
        }
        "hook_fail" => {
            let pct = w.number("share", "%")?;
            w.literal("delay")?;
            let delay_ms = ms(w, "delay")?;
            w.literal("for")?;
            ChaosKind::HookFail {
                pct,
                delay_ms,
                dur_ms: ms(w, "duration")?,
            }
        }
        other => {
            return Err(format!(
                "fault: unknown kind {other:?}; valid: skew, {}",
                KINDS.join(", ")
            ))
        }
    };
    if leader && !kind.harness_carried() {
        return Err(format!(
            "process: a {} is carried out by the process itself and cannot be aimed at the leader",
            KINDS[kind.index()]
        ));
    }
    Ok(Line::Fault(ChaosFault {
        at_ms,
        process,
        leader,
        all,
        kind,
    }))
}

enum Line {
    Skew(usize, i64),
    Fault(ChaosFault),
}

impl std::str::FromStr for ChaosPlan {
    type Err = PlanError;

    /// Read a plan as `Display` writes it.
    fn from_str(text: &str) -> Result<Self, PlanError> {
        // `#` starts a comment; blank lines are skipped.
        let mut lines = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or_default())
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let err = |line: usize, reason: String| PlanError { line, reason };
        let (i, head) = lines
            .next()
            .ok_or_else(|| err(1, "header: missing".into()))?;
        let mut w = Words::new(head);
        let field = |w: &mut Words<'_>, name: &str| -> Result<u64, String> {
            w.literal(name)?;
            let v = w.next(name)?;
            v.parse()
                .map_err(|_| format!("{name}: {v:?} is not a whole number"))
        };
        let header = (|| {
            let seed = field(&mut w, "seed")?;
            let processes = usize::try_from(field(&mut w, "processes")?).unwrap_or(0);
            let fault_ms = field(&mut w, "fault_ms")?;
            let heal_ms = field(&mut w, "heal_ms")?;
            Ok::<_, String>((seed, processes, fault_ms, heal_ms))
        })()
        .map_err(|r| err(i + 1, r))?;
        let (seed, processes, fault_ms, heal_ms) = header;
        if processes == 0 {
            return Err(err(i + 1, "processes: must be positive".into()));
        }
        let mut plan = ChaosPlan {
            seed,
            processes,
            fault_ms,
            heal_ms,
            skews_ms: vec![0; processes],
            faults: Vec::new(),
        };
        for (i, raw) in lines {
            let mut w = Words::new(raw);
            let parsed = parse_line(&mut w, processes).and_then(|l| w.end().map(|()| l));
            match parsed.map_err(|r| err(i + 1, r))? {
                Line::Skew(p, ms) => plan.skews_ms[p] = ms,
                Line::Fault(f) => plan.faults.push(f),
            }
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_decides_the_plan_and_its_text_reads_back() {
        let cfg = PlanConfig::default();
        let a = ChaosPlan::generate(&cfg, 7);
        assert_eq!(a, ChaosPlan::generate(&cfg, 7));
        assert_ne!(a, ChaosPlan::generate(&cfg, 8));
        for seed in 0..20 {
            let plan = ChaosPlan::generate(&cfg, seed);
            assert_eq!(plan.to_string().parse::<ChaosPlan>(), Ok(plan.clone()));
            for (i, x) in plan.faults.iter().enumerate() {
                assert!(x.at_ms < cfg.fault_ms, "{x}");
                for y in &plan.faults[i + 1..] {
                    let same = x.process == y.process && x.kind.index() == y.kind.index();
                    assert!(
                        !same || y.at_ms >= x.at_ms + x.kind.dur_ms(),
                        "{x} overlaps {y}"
                    );
                }
            }
        }
        let mut drawn = [0; KIND_COUNT];
        for seed in 0..20 {
            for (sum, n) in drawn
                .iter_mut()
                .zip(ChaosPlan::generate(&cfg, seed).counts())
            {
                *sum += n;
            }
        }
        assert!(
            drawn.iter().all(|n| *n > 0),
            "every kind is drawn: {drawn:?}"
        );
    }

    #[test]
    fn a_bad_line_names_its_line_and_field() {
        let head = "seed 1 processes 2 fault_ms 1000 heal_ms 1000\n";
        let err = |body: &str| {
            format!("{head}{body}")
                .parse::<ChaosPlan>()
                .expect_err(body)
        };
        let field = |body: &str| {
            let e = err(body);
            assert_eq!(e.line, 2, "{e}");
            e.reason.split(':').next().unwrap_or_default().to_owned()
        };
        assert_eq!(field("10 kill p3 down 5ms"), "process");
        assert_eq!(field("x kill p1 down 5ms"), "time");
        assert_eq!(field("10 melt p1"), "fault");
        assert_eq!(field("10 kill p1 down 5"), "downtime");
        assert!(err("10 kill p1 down 5ms extra")
            .reason
            .contains("unexpected \"extra\""));
        assert_eq!(field("10 hook_fail p1 60 delay 5ms for 5ms"), "share");
        assert_eq!(field("10 clock_jump leader p1 5ms for 5ms"), "process");
        assert_eq!(field("10 skew leader p1 5ms"), "fault");
        assert_eq!(field("10 kill all down 5ms"), "process");
        let header = "seed x processes 2".parse::<ChaosPlan>().expect_err("seed");
        assert_eq!(
            (header.line, header.reason.split(':').next()),
            (1, Some("seed"))
        );
        let ok = format!("{head}# a note\n10 kill p2 down 5ms # killed\n").parse::<ChaosPlan>();
        assert_eq!(ok.map(|p| p.faults.len()), Ok(1));
    }
}

/// A worker process's wall clock under its plan: the machine's clock plus the
/// process's skew, plus every clock jump of the plan in effect now. Monotonic
/// time and sleeps are the machine's (tokio's), as on a real host whose wall
/// clock an NTP step moves.
///
/// The process carries out its own jumps: the harness cannot reach into its
/// memory, so each process reads its part of the plan at start and applies it
/// against the run's epoch on the machine's clock.
#[derive(Clone, Debug)]
pub struct PlannedClock {
    epoch_unix_ms: i64,
    skew_ms: i64,
    /// `(from_ms, until_ms, jump_ms)` since the epoch.
    jumps: Vec<(u64, u64, i64)>,
}

impl PlannedClock {
    /// Process `process`'s clock in `plan`, for a run that began at
    /// `epoch_unix_ms` on the machine's clock.
    pub fn new(plan: &ChaosPlan, process: usize, epoch_unix_ms: i64) -> Self {
        let jumps = plan
            .faults
            .iter()
            .filter(|f| f.process == process)
            .filter_map(|f| match f.kind {
                ChaosKind::ClockJump { jump_ms, dur_ms } => {
                    // Faults stop when the heal phase begins.
                    Some((f.at_ms, (f.at_ms + dur_ms).min(plan.fault_ms), jump_ms))
                }
                _ => None,
            })
            .collect();
        Self {
            epoch_unix_ms,
            skew_ms: plan.skews_ms.get(process).copied().unwrap_or(0),
            jumps,
        }
    }

    /// Storage's clock under `plan`, or `None` if the plan never steps it:
    /// the machine's clock plus every `db_clock_jump` in effect, computed alike
    /// in every process (all run on one machine). Handed to keel's storage
    /// ([`keel::storage::PostgresOptions::clock`],
    /// [`keel::storage::SqliteOptions::clock`]) only when the plan steps it:
    /// the harness cannot step the server's own clock without stepping the
    /// machine's.
    pub fn storage(plan: &ChaosPlan, epoch_unix_ms: i64) -> Option<Self> {
        let jumps: Vec<_> = plan
            .faults
            .iter()
            .filter_map(|f| match f.kind {
                ChaosKind::DbClockJump { jump_ms, dur_ms } => {
                    Some((f.at_ms, (f.at_ms + dur_ms).min(plan.fault_ms), jump_ms))
                }
                _ => None,
            })
            .collect();
        (!jumps.is_empty()).then_some(Self {
            epoch_unix_ms,
            skew_ms: 0,
            jumps,
        })
    }

    /// How far this clock reads from the machine's at `elapsed_ms` into the
    /// run: the skew plus the jumps in effect.
    pub fn offset_at(&self, elapsed_ms: u64) -> i64 {
        let jumped = self
            .jumps
            .iter()
            .filter(|(from, until, _)| (*from..*until).contains(&elapsed_ms))
            .map(|(_, _, jump)| *jump)
            .sum::<i64>();
        self.skew_ms + jumped
    }
}

impl keel::clock::Clock for PlannedClock {
    fn now(&self) -> keel::clock::Timestamp {
        let machine = crate::journal::machine_now_ms();
        let elapsed = u64::try_from(machine - self.epoch_unix_ms).unwrap_or(0);
        keel::clock::Timestamp(machine + self.offset_at(elapsed))
    }

    fn monotonic(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }

    fn sleep(&self, d: std::time::Duration) -> keel::clock::Sleep {
        Box::pin(tokio::time::sleep(d))
    }
}

#[cfg(test)]
mod clock_tests {
    use keel::clock::Clock;

    use super::*;

    #[test]
    fn storage_steps_only_when_the_plan_steps_it_and_never_past_the_heal() {
        let head = "seed 1 processes 2 fault_ms 10000 heal_ms 0\n";
        let quiet: ChaosPlan = format!("{head}1000 clock_jump p1 5000ms for 2000ms\n")
            .parse()
            .expect("plan");
        assert!(
            PlannedClock::storage(&quiet, 0).is_none(),
            "a process's jump is not storage's"
        );
        let stepped: ChaosPlan = format!("{head}8000 db_clock_jump db 15000ms for 9000ms\n")
            .parse()
            .expect("plan");
        let db = PlannedClock::storage(&stepped, 0).expect("stepped");
        assert_eq!(db.offset_at(7_999), 0);
        assert_eq!(db.offset_at(8_000), 15_000);
        assert_eq!(db.offset_at(10_000), 0, "faults stop when the heal begins");
    }

    #[test]
    fn a_process_clock_carries_its_skew_and_its_own_jumps_only() {
        let text = "seed 1 processes 2 fault_ms 60000 heal_ms 0\n\
                    0 skew p1 -300ms\n\
                    0 skew p2 500ms\n\
                    1000 clock_jump p1 90000ms for 2000ms\n\
                    1500 clock_jump p2 -4000ms for 1000ms\n";
        let plan: ChaosPlan = text.parse().expect("plan");
        let p1 = PlannedClock::new(&plan, 0, 0);
        assert_eq!(p1.offset_at(999), -300);
        assert_eq!(p1.offset_at(1_000), 89_700, "jumped");
        assert_eq!(p1.offset_at(2_999), 89_700);
        assert_eq!(p1.offset_at(3_000), -300, "and back");
        let p2 = PlannedClock::new(&plan, 1, 0);
        assert_eq!(p2.offset_at(1_600), -3_500, "its own jump, not p1's");
        // Read live, it is the machine's clock plus the offset.
        let live = PlannedClock::new(&plan, 1, crate::journal::machine_now_ms());
        let off = live.now().as_millis() - crate::journal::machine_now_ms();
        assert!((499..=501).contains(&off), "{off}");
    }
}
