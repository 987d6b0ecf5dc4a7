//! Swarm shapes: the scenario a swarm seed actually runs, drawn from the seed.
//!
//! A scenario with `swarm = true` is a template. Each seed draws its own shape
//! from it, as swarm testing does: node count, fault-phase length, workload size
//! and mix, `claim_ahead`, watcher loops and their periods, shutdown deadlines,
//! and a fault profile. Three seeds in four take two catalog scenarios' fault
//! profiles as their *focus* (every kind either has, at one of the two's rates)
//! and mix a few of the template's other kinds in; the rest mix the template's
//! kinds alone, each on or off, each at its own share of the rate, in a
//! sub-range of each range. So swarm reaches every rate the catalog uses, every
//! pair of its races, and many combinations it does not.
//!
//! ```
//! let swarm = scenarios::by_name("swarm").expect("in the catalog");
//! let a = sim::plan::shape::concrete(&swarm, 7);
//! assert!(!a.swarm, "a drawn shape is an ordinary scenario");
//! assert_eq!(*a, *sim::plan::shape::concrete(&swarm, 7), "the seed decides");
//! assert!((1..=sim::plan::shape::SWARM_NODES_MAX).contains(&a.nodes));
//! ```
//!
//! A shape is a pure function of the template and the seed, drawn from a random
//! stream of its own; the fault plan, the workload and turmoil then draw from
//! theirs, so `sim replay --scenario swarm --seed N` reruns seed N exactly.
//!
//! No rule holds clocks back: a shape may draw jumps and skews of any size
//! next to partitions, pauses and claimed-ahead jobs, because storage's clock
//! alone judges leases and claims (issue 18; before it, swarm kept clocks
//! within the claim margin of each other, and seed 200942 showed why: a
//! claimed-ahead job started 620 ms after a rescuer 16 s ahead revoked it).

use std::borrow::Cow;
use std::sync::OnceLock;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scenarios::{Faults, Scenario, Workload};

/// Salt of the shape's random stream, apart from the plan's and turmoil's.
const SHAPE_SALT: u64 = 0x7377_6172_6d73_6870;

/// Most nodes a swarm seed runs: enough for two leaders' worth of churn and a
/// replacement on top, few enough that a seed stays cheap.
pub const SWARM_NODES_MAX: u32 = 5;
/// Shortest and longest fault phase, seconds: long enough for a lease to move
/// a few times, short enough that long phases do not dominate a sweep's time.
const FAULT_PHASE_S: [u64; 2] = [30, 90];
/// Share of seeds that take catalog scenarios' fault profiles as focus.
const FOCUS_SHARE: f64 = 0.75;
/// Chance a focused seed keeps each of the focus's node count, phase length,
/// workload and loops (else it draws its own).
const FOCUS_KEEP: f64 = 0.75;
/// Chance each template kind is mixed in: on its own, and beside a focus
/// (lower, so the focus's race is not drowned).
const MIX_ON: f64 = 0.5;
const MIX_ON_BESIDE_FOCUS: f64 = 0.15;
/// Share of focused seeds that pair their focus with a second profile
/// ([`pair_of`]): every one. Pairs reach each declared rare state 1.1 to 1.7
/// times as often as single focus; on seeds the choice never saw they catch
/// the rarest planted bugs only a little sooner, one a little later
/// (docs/simulator.md, *Why pairs*).
const PAIR_SHARE: f64 = 1.0;
/// Watcher loop periods are drawn in steps of this many ms, from 100 ms to 1 s.
const LOOP_PERIOD_STEP_MS: u64 = 50;

/// The scenario `scenario` runs under `seed`: itself unless it is a swarm
/// template, else the shape the seed draws (with `swarm` off, so drawing again
/// is a no-op).
pub fn concrete(scenario: &Scenario, seed: u64) -> Cow<'_, Scenario> {
    if !scenario.swarm {
        return Cow::Borrowed(scenario);
    }
    Cow::Owned(draw(scenario, seed))
}

/// The catalog's fixed scenarios, the profiles a swarm seed may focus on.
fn profiles() -> &'static [Scenario] {
    static PROFILES: OnceLock<Vec<Scenario>> = OnceLock::new();
    PROFILES.get_or_init(|| scenarios::all().into_iter().filter(|s| !s.swarm).collect())
}

fn draw(template: &Scenario, seed: u64) -> Scenario {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ SHAPE_SALT);
    let profiles = profiles();
    let focus = (!profiles.is_empty() && rng.random_bool(FOCUS_SHARE))
        .then(|| &profiles[rng.random_range(0..profiles.len())]);
    let mut pair_rng = ChaCha8Rng::seed_from_u64(seed ^ PAIR_SALT);
    let pair = focus.and_then(|f| pair_of(f, &mut pair_rng));
    let mut s = template.clone();
    s.swarm = false;
    s.shape_seed = Some(seed);
    s.faults = faults(template, focus, &mut rng, seed);
    if let (Some(f), Some(p)) = (focus, pair) {
        overlay(&mut s.faults, &f.faults, &p.faults, &mut pair_rng);
    }
    let keep = |rng: &mut ChaCha8Rng| focus.is_some() && rng.random_bool(FOCUS_KEEP);
    s.nodes = match focus {
        Some(f) if keep(&mut rng) => f.nodes.max(pair.map_or(0, |p| p.nodes)),
        _ => rng.random_range(1..=SWARM_NODES_MAX),
    };
    s.duration_s = match focus {
        Some(f) if keep(&mut rng) => f.duration_s.max(pair.map_or(0, |p| p.duration_s)),
        _ => rng.random_range(FAULT_PHASE_S[0]..=FAULT_PHASE_S[1]),
    };
    s.workload = match focus {
        Some(f) if keep(&mut rng) => match (&f.workload, pair.and_then(|p| p.workload.as_ref())) {
            (Some(a), Some(b)) => Some(merge_workloads(a, b)),
            (a, b) => a.clone().or_else(|| b.cloned()),
        },
        _ => template.workload.as_ref().map(|w| {
            let mut w = workload(w, s.duration_s, &mut rng);
            later_knobs(&mut w, seed);
            w
        }),
    };
    if let Some(w) = s.workload.as_mut() {
        fit_to_capacity(w, s.nodes, s.duration_s);
    }
    s.loops = match focus {
        Some(f) if !f.loops.is_empty() && keep(&mut rng) => {
            let mut loops = f.loops.clone();
            add_unnamed(&mut loops, pair.map_or(&[][..], |p| &p.loops[..]));
            loops
        }
        _ => loops(&mut rng),
    };
    s.heal_s = heal_s(template, focus, s.workload.as_ref(), s.nodes);
    s.heal_s = s.heal_s.max(pair.map_or(0, |p| p.heal_s));
    s.description = describe(focus, pair, &s);
    debug_assert!(s.validate().is_ok(), "a drawn shape is valid: {s:?}");
    s
}

/// Salt of the second focus's own stream: drawn apart, so seeds without a
/// focus kept every draw of their shapes when pairs came.
const PAIR_SALT: u64 = 0x7061_6972;

/// The second catalog profile a focused seed pairs with its focus, or `None`.
///
/// Bugs nobody wrote a scenario for live where two known races meet (claims
/// held ahead under a drifting clock, a cancel during a slow storage reply), so
/// a focused seed takes a second profile in [`PAIR_SHARE`] of draws. The two
/// are equals ([`overlay`]): each fault kind either has comes from one of them,
/// and where the focus's size and workload are kept, they are merged with the
/// second's (the larger node count and phase, each workload share at the
/// higher of the two).
fn pair_of(focus: &Scenario, rng: &mut ChaCha8Rng) -> Option<&'static Scenario> {
    let others: Vec<&Scenario> = profiles().iter().filter(|p| p.name != focus.name).collect();
    (!others.is_empty() && rng.random_bool(PAIR_SHARE))
        .then(|| others[rng.random_range(0..others.len())])
}

/// Two profiles' faults as one: a kind only one of them has comes from it, a
/// kind both have from either (a coin per kind), in place of what was mixed
/// in; the biases that aim faults at the leader or a starting node, and the
/// clock rates, come from either as a whole. So each profile's race keeps its
/// own ranges as often as the other's, whichever was drawn first.
fn overlay(f: &mut Faults, first: &Faults, second: &Faults, rng: &mut ChaCha8Rng) {
    for kind in KINDS {
        let (a, b) = ((kind.get)(first), (kind.get)(second));
        if b > 0.0 && (a == 0.0 || rng.random_bool(0.5)) {
            (kind.copy)(f, second);
        }
    }
    if rng.random_bool(0.5) {
        f.leader_bias = second.leader_bias;
        f.starting_bias = second.starting_bias;
        f.skew_ms_max = second.skew_ms_max;
        f.db_skew_ms_max = second.db_skew_ms_max;
    }
    if second.drift_ppm_max > 0 && (first.drift_ppm_max == 0 || rng.random_bool(0.5)) {
        f.drift_ppm_max = second.drift_ppm_max;
        f.drift_rare_pct = second.drift_rare_pct;
        f.drift_rare_ppm_max = second.drift_rare_ppm_max;
    }
}

/// Two focuses' workloads as one: each size and share at the higher of the
/// two (behaviour shares scaled back to 100% in all), handler lengths over
/// both ranges, and both sets of periodic and cron jobs.
fn merge_workloads(a: &Workload, b: &Workload) -> Workload {
    let mut w = a.clone();
    w.jobs = a.jobs.max(b.jobs);
    w.enqueue_window_s = a.enqueue_window_s.max(b.enqueue_window_s);
    w.workers = a.workers.max(b.workers);
    w.max_attempts = a.max_attempts.max(b.max_attempts);
    w.claim_ahead = a.claim_ahead.max(b.claim_ahead);
    w.unique_pct = a.unique_pct.max(b.unique_pct);
    w.scheduled_pct = a.scheduled_pct.max(b.scheduled_pct);
    w.cancel_pct = a.cancel_pct.max(b.cancel_pct);
    w.effect_pct = a.effect_pct.max(b.effect_pct);
    w.fail_pct = a.fail_pct.max(b.fail_pct);
    w.panic_pct = a.panic_pct.max(b.panic_pct);
    w.slow_pct = a.slow_pct.max(b.slow_pct);
    w.hang_pct = a.hang_pct.max(b.hang_pct);
    w.stubborn_pct = a.stubborn_pct.max(b.stubborn_pct);
    w.panic_on_stop_pct = a.panic_on_stop_pct.max(b.panic_on_stop_pct);
    w.exhaust_pct = a.exhaust_pct.max(b.exhaust_pct);
    normalize_behaviours(&mut w);
    w.slow_ms = [
        a.slow_ms[0].min(b.slow_ms[0]),
        a.slow_ms[1].max(b.slow_ms[1]),
    ];
    add_unnamed(&mut w.periodic, &b.periodic);
    add_unnamed(&mut w.cron, &b.cron);
    w
}

/// Append the `(name, _)` entries of `from` whose name `into` lacks: a pair's
/// loops, periodic and cron jobs, each run once under its name.
fn add_unnamed<T: Clone>(into: &mut Vec<(String, T)>, from: &[(String, T)]) {
    for entry in from {
        if !into.iter().any(|(name, _)| *name == entry.0) {
            into.push(entry.clone());
        }
    }
}

/// Scale a workload's behaviour shares down to 100% in all, if they sum higher.
fn normalize_behaviours(w: &mut Workload) {
    let behaviours = [
        &mut w.fail_pct,
        &mut w.panic_pct,
        &mut w.slow_pct,
        &mut w.hang_pct,
        &mut w.stubborn_pct,
        &mut w.panic_on_stop_pct,
        &mut w.exhaust_pct,
    ];
    let sum: u32 = behaviours.iter().map(|p| **p).sum();
    if sum > 100 {
        for p in behaviours {
            *p = *p * 100 / sum;
        }
    }
}

/// The fault profile: the focus's kinds at its rates and ranges, and the
/// template's others mixed in.
fn faults(
    template: &Scenario,
    focus: Option<&Scenario>,
    rng: &mut ChaCha8Rng,
    seed: u64,
) -> Faults {
    let t = &template.faults;
    let mut f = t.clone();
    let on_share = if focus.is_some() {
        MIX_ON_BESIDE_FOCUS
    } else {
        MIX_ON
    };
    for kind in KINDS {
        let focused = focus.map(|s| &s.faults).filter(|ff| (kind.get)(ff) > 0.0);
        match focused {
            Some(ff) => (kind.copy)(&mut f, ff),
            None => {
                let rate = (kind.rate)(&mut f);
                *rate = if *rate > 0.0 && rng.random_bool(on_share) {
                    *rate * rng.random_range(0.2..=1.0)
                } else {
                    0.0
                };
                (kind.narrow)(&mut f, rng);
            }
        }
    }
    match focus {
        Some(s) => {
            f.leader_bias = s.faults.leader_bias;
            f.starting_bias = s.faults.starting_bias;
            f.skew_ms_max = s.faults.skew_ms_max;
            f.db_skew_ms_max = s.faults.db_skew_ms_max;
        }
        None => {
            f.leader_bias = rng.random_range(0.0..=1.0);
            f.starting_bias = rng.random_range(0.0..=1.0 - f.leader_bias);
            f.skew_ms_max = rng.random_range(0..=t.skew_ms_max);
            f.db_skew_ms_max = rng.random_range(0..=t.db_skew_ms_max);
        }
    }
    rates(&mut f, t, focus, seed);
    f
}

/// Salt of the clock-rate shape's own stream: drawn apart, so adding rates
/// left every other part of a seed's shape as it was.
const RATE_SALT: u64 = 0x0072_6174_6573;

/// The seed's clock rates: a focus's own, else on in three seeds in four, at
/// a share of the template's bounds (a focus without drift keeps the
/// template's too, at the same odds: drift is the ground every fault stands
/// on, not a fault of its own).
fn rates(f: &mut Faults, t: &Faults, focus: Option<&Scenario>, seed: u64) {
    if let Some(s) = focus.filter(|s| s.faults.drift_ppm_max > 0) {
        f.drift_ppm_max = s.faults.drift_ppm_max;
        f.drift_rare_pct = s.faults.drift_rare_pct;
        f.drift_rare_ppm_max = s.faults.drift_rare_ppm_max;
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ RATE_SALT);
    if t.drift_ppm_max == 0 || !rng.random_bool(0.75) {
        (f.drift_ppm_max, f.drift_rare_pct, f.drift_changes_per_min) = (0, 0, 0.0);
        return;
    }
    f.drift_ppm_max = rng.random_range(1..=t.drift_ppm_max);
    f.drift_rare_pct = rng.random_range(0..=t.drift_rare_pct);
}

/// The rate of fault kind `index` (in [`crate::plan::faults::KIND_COUNT`] order) in `f`.
pub fn kind_rate(f: &Faults, index: usize) -> f64 {
    KINDS.get(index).map_or(0.0, |k| (k.get)(f))
}

/// One fault kind: its rate, how to take it (rate and ranges) from a focus,
/// and how to narrow the template's ranges for one seed.
struct Kind {
    get: fn(&Faults) -> f64,
    rate: fn(&mut Faults) -> &mut f64,
    copy: fn(&mut Faults, &Faults),
    narrow: fn(&mut Faults, &mut ChaCha8Rng),
}

/// A sub-range of `[lo, hi]`, drawn: some seeds see only short faults of a
/// kind, others only long ones.
fn narrow(range: &mut [u64; 2], rng: &mut ChaCha8Rng) {
    let [lo, hi] = *range;
    if lo < hi && rng.random_bool(0.5) {
        let a = rng.random_range(lo..=hi);
        let b = rng.random_range(lo..=hi);
        *range = [a.min(b), a.max(b)];
    }
}

const KINDS: [Kind; 13] = [
    Kind {
        get: |f| f.partitions_per_min,
        rate: |f| &mut f.partitions_per_min,
        copy: |f, s| {
            f.partitions_per_min = s.partitions_per_min;
            f.partition_ms = s.partition_ms;
        },
        narrow: |f, rng| narrow(&mut f.partition_ms, rng),
    },
    Kind {
        get: |f| f.bounces_per_min,
        rate: |f| &mut f.bounces_per_min,
        copy: |f, s| {
            f.bounces_per_min = s.bounces_per_min;
            f.down_ms = s.down_ms;
        },
        narrow: |f, rng| narrow(&mut f.down_ms, rng),
    },
    Kind {
        get: |f| f.hook_faults_per_min,
        rate: |f| &mut f.hook_faults_per_min,
        copy: |f, s| {
            f.hook_faults_per_min = s.hook_faults_per_min;
            f.hook_fault_window_ms = s.hook_fault_window_ms;
            f.hook_delay_ms = s.hook_delay_ms;
            f.hook_fail_pct = s.hook_fail_pct;
        },
        narrow: |f, rng| {
            narrow(&mut f.hook_fault_window_ms, rng);
            narrow(&mut f.hook_delay_ms, rng);
            narrow(&mut f.hook_fail_pct, rng);
        },
    },
    Kind {
        get: |f| f.clock_jumps_per_min,
        rate: |f| &mut f.clock_jumps_per_min,
        copy: |f, s| {
            f.clock_jumps_per_min = s.clock_jumps_per_min;
            f.clock_jump_ms = s.clock_jump_ms;
            f.clock_jump_dur_ms = s.clock_jump_dur_ms;
            f.clock_jump_back_pct = s.clock_jump_back_pct;
            f.db_clock_jump_pct = s.db_clock_jump_pct;
        },
        narrow: |f, rng| {
            narrow(&mut f.clock_jump_ms, rng);
            narrow(&mut f.clock_jump_dur_ms, rng);
        },
    },
    Kind {
        get: |f| f.storage_faults_per_min,
        rate: |f| &mut f.storage_faults_per_min,
        copy: |f, s| {
            f.storage_faults_per_min = s.storage_faults_per_min;
            f.storage_fault_ms = s.storage_fault_ms;
            f.storage_fault_pct = s.storage_fault_pct;
            f.storage_fault_modes = s.storage_fault_modes.clone();
            f.slow_storage_ms = s.slow_storage_ms;
            f.slow_reply_ms = s.slow_reply_ms;
            f.storage_timeout_ms = s.storage_timeout_ms;
        },
        narrow: |f, rng| {
            narrow(&mut f.storage_fault_ms, rng);
            narrow(&mut f.storage_fault_pct, rng);
            narrow(&mut f.slow_storage_ms, rng);
            // One mode alone in half the seeds: lost replies alone are what
            // ambiguous_commits runs on.
            if f.storage_fault_modes.len() > 1 && rng.random_bool(0.5) {
                let one = rng.random_range(0..f.storage_fault_modes.len());
                f.storage_fault_modes = vec![f.storage_fault_modes[one].clone()];
            }
        },
    },
    Kind {
        get: |f| f.shutdowns_per_min,
        rate: |f| &mut f.shutdowns_per_min,
        copy: |f, s| {
            f.shutdowns_per_min = s.shutdowns_per_min;
            f.shutdown_deadline_ms = s.shutdown_deadline_ms;
            f.shutdown_down_ms = s.shutdown_down_ms;
        },
        narrow: |f, rng| {
            narrow(&mut f.shutdown_deadline_ms, rng);
            narrow(&mut f.shutdown_down_ms, rng);
        },
    },
    Kind {
        get: |f| f.loop_panics_per_min,
        rate: |f| &mut f.loop_panics_per_min,
        copy: |f, s| f.loop_panics_per_min = s.loop_panics_per_min,
        narrow: |_, _| {},
    },
    Kind {
        get: |f| f.slow_ticks_per_min,
        rate: |f| &mut f.slow_ticks_per_min,
        copy: |f, s| {
            f.slow_ticks_per_min = s.slow_ticks_per_min;
            f.slow_tick_ms = s.slow_tick_ms;
        },
        narrow: |f, rng| narrow(&mut f.slow_tick_ms, rng),
    },
    Kind {
        get: |f| f.pauses_per_min,
        rate: |f| &mut f.pauses_per_min,
        copy: |f, s| {
            f.pauses_per_min = s.pauses_per_min;
            f.pause_ms = s.pause_ms;
        },
        narrow: |f, rng| narrow(&mut f.pause_ms, rng),
    },
    Kind {
        get: |f| f.maintainer_restarts_per_min,
        rate: |f| &mut f.maintainer_restarts_per_min,
        copy: |f, s| f.maintainer_restarts_per_min = s.maintainer_restarts_per_min,
        narrow: |_, _| {},
    },
    Kind {
        get: |f| f.runtime_restarts_per_min,
        rate: |f| &mut f.runtime_restarts_per_min,
        copy: |f, s| {
            f.runtime_restarts_per_min = s.runtime_restarts_per_min;
            f.restart_deadline_ms = s.restart_deadline_ms;
        },
        narrow: |f, rng| narrow(&mut f.restart_deadline_ms, rng),
    },
    Kind {
        get: |f| f.replaces_per_min,
        rate: |f| &mut f.replaces_per_min,
        copy: |f, s| {
            f.replaces_per_min = s.replaces_per_min;
            f.replace_ms = s.replace_ms;
            f.replace_overlap_ms = s.replace_overlap_ms;
        },
        narrow: |f, rng| {
            narrow(&mut f.replace_ms, rng);
            narrow(&mut f.replace_overlap_ms, rng);
        },
    },
    Kind {
        get: |f| f.drift_changes_per_min,
        rate: |f| &mut f.drift_changes_per_min,
        copy: |f, s| {
            f.drift_changes_per_min = s.drift_changes_per_min;
            f.drift_change_ms = s.drift_change_ms;
        },
        narrow: |f, rng| narrow(&mut f.drift_change_ms, rng),
    },
];

/// A share in percent, on in half the seeds: up to `max_pct`.
fn some_pct(rng: &mut ChaCha8Rng, max_pct: u32) -> u32 {
    if rng.random_bool(0.5) {
        rng.random_range(1..=max_pct)
    } else {
        0
    }
}

/// Most claimed-ahead jobs a swarm worker holds: the catalog's largest.
const CLAIM_AHEAD_MAX: u32 = 3;

/// A workload drawn around the template's: its size, mix and handler lengths
/// vary per seed, up to the largest shares any catalog scenario uses.
fn workload(t: &Workload, duration_s: u64, rng: &mut ChaCha8Rng) -> Workload {
    let mut w = t.clone();
    w.jobs = rng.random_range(10..=100);
    w.enqueue_window_s = rng.random_range(duration_s / 3..=duration_s * 5 / 6).max(1);
    w.workers = rng.random_range(1..=3);
    w.max_attempts = rng.random_range(5..=10);
    w.claim_ahead = if rng.random_bool(0.5) {
        0
    } else {
        rng.random_range(1..=CLAIM_AHEAD_MAX)
    };
    w.unique_pct = some_pct(rng, 20);
    w.scheduled_pct = some_pct(rng, 15);
    w.fail_pct = some_pct(rng, 15);
    w.panic_pct = some_pct(rng, 30);
    w.slow_pct = some_pct(rng, 50);
    w.hang_pct = some_pct(rng, 5);
    w.stubborn_pct = some_pct(rng, 20);
    w.panic_on_stop_pct = some_pct(rng, 30);
    w.cancel_pct = some_pct(rng, 30);
    w.effect_pct = rng.random_range(30..=80);
    w.exhaust_pct = 0; // drawn later, by `later_knobs`, within what is left
    normalize_behaviours(&mut w);
    let lo = rng.random_range(300..=3000);
    w.slow_ms = [lo, rng.random_range(lo..=15_000)];
    w.periodic = Vec::new();
    if rng.random_bool(0.6) {
        w.periodic.push(("digest".into(), 10));
    }
    if rng.random_bool(0.3) {
        w.periodic.push(("fast".into(), rng.random_range(2..=9)));
    }
    w.cron = Vec::new();
    if rng.random_bool(0.2) {
        w.cron.push(("cron3s".into(), "*/3 * * * * *".into()));
    }
    w
}

/// Salt of the stream the workload knobs added after shapes first shipped
/// draw from.
const LATER_KNOBS_SALT: u64 = 0x6c61_7465_726b_6e62;

/// Workload knobs added after swarm's shapes first shipped, drawn from a
/// stream of their own so that every other draw of every seed's shape stays
/// what it was: `exhaust_pct` (jobs that fail until their attempts run out,
/// up to 5%, in half the seeds, within what the other behaviours leave).
fn later_knobs(w: &mut Workload, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ LATER_KNOBS_SALT);
    let taken =
        w.fail_pct + w.panic_pct + w.slow_pct + w.hang_pct + w.stubborn_pct + w.panic_on_stop_pct;
    w.exhaust_pct = some_pct(&mut rng, 5).min(100u32.saturating_sub(taken));
}

/// Most handler time a seed's jobs may ask of one worker slot, in percent of
/// the fault phase. The catalog's busiest workloads ask 33 to 37 s per slot in
/// a 60 s phase and drain in its heal phase; more than this and a seed with one
/// node and one worker fails `no_lost_jobs` for want of workers, not for a bug
/// (swarm seed 1000002617: 1 worker, a 38 s phase, 40 s of work).
const WORK_PER_SLOT_PCT_OF_PHASE: u64 = 65;
/// Fewest jobs a shaped workload keeps.
const JOBS_MIN: u32 = 5;

/// Mean handler time one of `w`'s jobs asks of a worker slot, in ms.
fn per_job_ms(w: &Workload) -> u64 {
    let mean_slow_ms = (w.slow_ms[0] + w.slow_ms[1]) / 2;
    let long_pct = u64::from(w.slow_pct + w.stubborn_pct + w.panic_on_stop_pct);
    // A hanging job waits for its cancel: 2.5 to 15 s after its enqueue.
    100 + long_pct * mean_slow_ms / 100 + u64::from(w.hang_pct) * 8_750 / 100
}

/// Handler time `w`'s jobs ask of each of `nodes` nodes' worker slots, in ms.
fn work_per_slot_ms(w: &Workload, nodes: u32) -> u64 {
    let slots = u64::from(nodes * w.workers).max(1);
    u64::from(w.jobs) * per_job_ms(w) / slots
}

/// Trim `w`'s jobs to what `nodes` nodes' workers can run in `duration_s`.
fn fit_to_capacity(w: &mut Workload, nodes: u32, duration_s: u64) {
    let slots = u64::from(nodes * w.workers);
    let per_slot_ms = duration_s * 1000 * WORK_PER_SLOT_PCT_OF_PHASE / 100;
    let fits = per_slot_ms * slots / per_job_ms(w);
    w.jobs = w
        .jobs
        .min(u32::try_from(fits).unwrap_or(u32::MAX))
        .max(JOBS_MIN);
}

/// Heal time a shaped workload needs on top of a scenario's own heal phase,
/// in seconds: the time claimed-ahead jobs can wait in a worker's hand behind
/// slow ones, and the work the faults may have left undone beyond what the
/// heal's own drain allowance ([`crate::run::runner::JOBS_DRAIN_MS`]) covers. The
/// faults can leave all of it: a one-node shape whose only node is partitioned
/// or paused for most of the phase runs almost nothing before the heal (swarm
/// seed 7000961: 1 node, 1 worker, 52 s of work per slot, three 19 s
/// partitions; 19 jobs were still queued 60 s into a 60 s heal, the worker
/// busy throughout).
fn extra_heal_s(w: &Workload, nodes: u32) -> u64 {
    let hand_wait_ms = u64::from(w.claim_ahead) * w.slow_ms[1];
    let backlog_ms = work_per_slot_ms(w, nodes).saturating_sub(crate::run::runner::JOBS_DRAIN_MS);
    (hand_wait_ms + backlog_ms).div_ceil(1000)
}

/// The range `workload` draws each of the script's workload knobs from
/// ([`crate::plan::script::WORKLOAD_KEYS`], by key).
pub fn knob_range(key: &str) -> Option<[u32; 2]> {
    Some(match key {
        "workers" => [1, 3],
        "claim_ahead" => [0, CLAIM_AHEAD_MAX],
        "fail_pct" => [0, 15],
        "panic_pct" | "panic_on_stop_pct" | "cancel_pct" => [0, 30],
        "slow_pct" => [0, 50],
        "hang_pct" | "exhaust_pct" => [0, 5],
        "stubborn_pct" | "unique_pct" => [0, 20],
        "effect_pct" => [30, 80],
        "scheduled_pct" => [0, 15],
        _ => return None,
    })
}

/// Set workload knob `key` of a drawn shape to `value`, keeping the shape's
/// rules: jobs trimmed to what the workers can run, and the heal phase grown
/// or shrunk with what the workload needs of it (`extra_heal_s`). `None` when
/// the shape runs no jobs, the key is unknown, or the result is invalid.
pub fn reshape(shape: &Scenario, key: &str, value: u32) -> Option<Scenario> {
    let (_, field) = crate::plan::script::WORKLOAD_KEYS
        .iter()
        .find(|(k, _)| *k == key)?;
    let mut s = shape.clone();
    let nodes = s.nodes;
    let w = s.workload.as_mut()?;
    let before_s = extra_heal_s(w, nodes);
    *field(w) = value;
    fit_to_capacity(w, nodes, s.duration_s);
    let after_s = extra_heal_s(w, nodes);
    s.heal_s = (s.heal_s + after_s).saturating_sub(before_s);
    s.validate().is_ok().then_some(s)
}

/// One to three watcher loops, each with a period of 100 ms to 1 s.
fn loops(rng: &mut ChaCha8Rng) -> Vec<(String, u64)> {
    let count = rng.random_range(1..=3);
    ["poll", "sync", "report"][..count]
        .iter()
        .map(|name| {
            let steps = rng.random_range(2..=20);
            ((*name).to_owned(), steps * LOOP_PERIOD_STEP_MS)
        })
        .collect()
}

/// The heal phase: the longer of the template's and the focus's, plus what
/// the workload needs on top ([`extra_heal_s`]).
fn heal_s(template: &Scenario, focus: Option<&Scenario>, w: Option<&Workload>, nodes: u32) -> u64 {
    let base = focus.map_or(template.heal_s, |f| f.heal_s.max(template.heal_s));
    base + w.map_or(0, |w| extra_heal_s(w, nodes))
}

/// A drawn shape in a few lines, for `sim replay`: the focus, the size, the
/// workload and every fault kind that is on.
pub fn summary(s: &Scenario) -> String {
    let mut out = format!(
        "{}\n  loops {:?}, heal {} s",
        s.description, s.loops, s.heal_s
    );
    if let Some(w) = &s.workload {
        out.push_str(&format!(
            "\n  workload: {} jobs over {} s, {} workers, {} attempts, slow {:?} ms, \
             fail {}% panic {}% slow {}% hang {}% stubborn {}% panic_on_stop {}% exhaust {}% cancel {}%",
            w.jobs,
            w.enqueue_window_s,
            w.workers,
            w.max_attempts,
            w.slow_ms,
            w.fail_pct,
            w.panic_pct,
            w.slow_pct,
            w.hang_pct,
            w.stubborn_pct,
            w.panic_on_stop_pct,
            w.exhaust_pct,
            w.cancel_pct
        ));
    }
    let on: Vec<String> = KINDS
        .iter()
        .zip(KIND_NAMES)
        .filter(|(k, _)| (k.get)(&s.faults) > 0.0)
        .map(|(k, name)| format!("{name} {:.1}/min", (k.get)(&s.faults)))
        .collect();
    out.push_str(&format!("\n  faults: {}", on.join(", ")));
    out
}

/// The rate fields of [`KINDS`], in order.
const KIND_NAMES: [&str; 12] = [
    "partitions",
    "bounces",
    "hook_faults",
    "clock_jumps",
    "storage_faults",
    "shutdowns",
    "loop_panics",
    "slow_ticks",
    "pauses",
    "maintainer_restarts",
    "runtime_restarts",
    "replaces",
];

fn describe(focus: Option<&Scenario>, pair: Option<&Scenario>, s: &Scenario) -> String {
    let mut focus = focus.map_or("none".to_owned(), |f| f.name.clone());
    if let Some(p) = pair {
        focus = format!("{focus} + {}", p.name);
    }
    let jobs = s.workload.as_ref().map_or(0, |w| w.jobs);
    let ahead = s.workload.as_ref().map_or(0, |w| w.claim_ahead);
    format!(
        "swarm shape: focus {focus}, {} nodes, {} s of faults, {jobs} jobs, claim_ahead {ahead}",
        s.nodes, s.duration_s
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn swarm() -> Scenario {
        scenarios::by_name("swarm").expect("in the catalog")
    }

    #[test]
    fn shapes_are_valid_vary_per_seed_and_leave_fixed_scenarios_alone() {
        let t = swarm();
        let (mut nodes, mut focus, mut ahead) = (
            std::collections::BTreeSet::new(),
            std::collections::BTreeSet::new(),
            std::collections::BTreeSet::new(),
        );
        for seed in 0..2_000 {
            let s = concrete(&t, seed).into_owned();
            s.validate().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert!(!s.swarm);
            assert_eq!(s.invariants, t.invariants, "swarm checks every invariant");
            nodes.insert(s.nodes);
            focus.insert(s.description.split(',').next().map(str::to_owned));
            ahead.insert(s.workload.as_ref().map(|w| w.claim_ahead));
        }
        assert_eq!(nodes.len(), SWARM_NODES_MAX as usize, "{nodes:?}");
        let n = profiles().len();
        assert_eq!(
            focus.len(),
            n * (n - 1) + 1,
            "every pair and none: {focus:?}"
        );
        assert!(ahead.len() >= 4, "{ahead:?}");
        let flap = scenarios::by_name("leadership_flap").expect("in the catalog");
        assert!(matches!(concrete(&flap, 3), Cow::Borrowed(_)));
    }

    /// A paired seed runs every fault kind either profile has, at one of
    /// their rates.
    #[test]
    fn a_paired_seed_runs_both_profiles_races() {
        let t = swarm();
        let mut pairs = 0;
        for seed in 0..400 {
            let s = concrete(&t, seed);
            let Some((_, names)) = s.description.split_once("focus ") else {
                continue;
            };
            let names = names.split(',').next().unwrap_or_default();
            let Some((a, b)) = names.split_once(" + ") else {
                continue;
            };
            pairs += 1;
            let (a, b) = (
                scenarios::by_name(a).expect("a profile"),
                scenarios::by_name(b).expect("a profile"),
            );
            assert_ne!(a.name, b.name, "seed {seed} pairs a profile with itself");
            for k in &KINDS {
                let (ra, rb, got) = ((k.get)(&a.faults), (k.get)(&b.faults), (k.get)(&s.faults));
                if ra > 0.0 || rb > 0.0 {
                    assert!(got == ra || got == rb, "seed {seed}: {}", s.description);
                    assert!(got > 0.0, "seed {seed}: {}", s.description);
                }
            }
        }
        assert!(
            pairs >= 200,
            "focused seeds pair their focus: {pairs} of 400"
        );
    }

    /// Any two profiles' workloads merge into a valid one that keeps each
    /// one's ingredients: the higher cancel share and claim-ahead, both
    /// handler-length ranges, both sets of periodic jobs.
    #[test]
    fn two_profiles_workloads_merge_into_a_valid_one() {
        let t = swarm();
        for a in profiles() {
            for b in profiles() {
                let (Some(wa), Some(wb)) = (&a.workload, &b.workload) else {
                    continue;
                };
                let w = merge_workloads(wa, wb);
                let mut s = t.clone();
                s.swarm = false;
                s.workload = Some(w.clone());
                s.validate()
                    .unwrap_or_else(|e| panic!("{} + {}: {e}", a.name, b.name));
                assert_eq!(w.cancel_pct, wa.cancel_pct.max(wb.cancel_pct));
                assert_eq!(w.claim_ahead, wa.claim_ahead.max(wb.claim_ahead));
                assert!(w.slow_ms[0] <= wa.slow_ms[0].min(wb.slow_ms[0]));
                assert!(w.slow_ms[1] >= wa.slow_ms[1].max(wb.slow_ms[1]));
                for p in wa.periodic.iter().chain(&wb.periodic) {
                    assert!(w.periodic.iter().any(|q| q.0 == p.0), "{}", p.0);
                }
            }
        }
    }

    /// Swarm reaches every rate and combination the catalog uses: for each
    /// profile, some seed runs its faults at its rates, ranges and biases.
    #[test]
    fn every_catalog_profile_is_some_seed_s_fault_profile() {
        let t = swarm();
        for p in profiles() {
            let found = (0..4_000).any(|seed| {
                let s = concrete(&t, seed);
                let f = &s.faults;
                let q = &p.faults;
                KINDS
                    .iter()
                    .all(|k| (k.get)(q) == 0.0 || (k.get)(f) == (k.get)(q))
                    && f.leader_bias == q.leader_bias
                    && f.starting_bias == q.starting_bias
                    && s.nodes == p.nodes
            });
            assert!(found, "no swarm seed of 0..4000 runs {}'s profile", p.name);
        }
    }
}
