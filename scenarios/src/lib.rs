//! The Keel scenario catalog, as data.
//!
//! A scenario is a TOML file in `catalog/`: how many nodes, how long the fault
//! phase and the heal phase run, which faults at which rates, and which invariants
//! must hold. The simulator reads scenarios and knows nothing about any one of
//! them; adding a scenario is adding a file to `catalog/` ([`CATALOG`] is
//! generated from the directory at build time).
//!
//! ```
//! let s = scenarios::by_name("leadership_flap").expect("in the catalog");
//! assert_eq!(s.nodes, 3);
//! assert!(scenarios::by_name("nope").is_err());
//! ```

#![warn(missing_docs)]

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Every scenario's source, by file name, sorted.
pub const CATALOG: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/catalog.rs"));

/// Largest node count a scenario may ask for: the simulator steps every host on
/// every tick, and past this a run stops being quick.
pub const NODES_MAX: u32 = 16;

/// One scenario. Field meanings are the TOML keys.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Unique name, used on the command line.
    pub name: String,
    /// One line on what it exercises.
    pub description: String,
    /// Number of node hosts (the database host comes on top).
    pub nodes: u32,
    /// Length of the fault (safety) phase, simulated seconds.
    pub duration_s: u64,
    /// Length of the heal (liveness) phase, simulated seconds.
    pub heal_s: u64,
    /// Seeds `cargo test -p sim` runs by default.
    pub default_seeds: u64,
    /// Invariant checkers that must hold, by name.
    pub invariants: Vec<String>,
    /// Fault rates.
    pub faults: Faults,
    /// Jobs to run, if the scenario runs any.
    #[serde(default)]
    pub workload: Option<Workload>,
    /// Swarm testing: each seed switches fault kinds on or off and draws their
    /// rates, up to the rates given here.
    #[serde(default)]
    pub swarm: bool,
    /// Periodic loops each node runs under keel's `Watcher`: `[name, period_ms]`.
    #[serde(default)]
    pub loops: Vec<(String, u64)>,
    /// Rare states (`keel::coverage::STATES`) this scenario exists to reach: a
    /// scenario whose default seeds never reach one tests nothing of it, and
    /// `cargo test -p sim` fails.
    #[serde(default)]
    pub reach: Vec<String>,
    /// The file a user's scenario was loaded from ([`Scenario::load`]); `None`
    /// for the catalog's. Replay commands name it, since no rebuild knows it.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The seed this scenario's shape was drawn from, when it is a swarm seed's
    /// drawn shape (`sim::shape`); `None` for the catalog's and a user's. A run
    /// may keep a shape under another seed (`sim hunt` reseeds one), and its
    /// fault script then names both.
    #[serde(skip)]
    pub shape_seed: Option<u64>,
}

/// The jobs a scenario runs: how many, when, and how their handlers behave.
/// Percentages are of all jobs and are drawn per job from the seed.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Jobs enqueued during the fault phase.
    pub jobs: u32,
    /// Jobs are enqueued at times spread over this many seconds from the start.
    pub enqueue_window_s: u64,
    /// Workers per node on the one queue.
    pub workers: u32,
    /// Attempts per job.
    pub max_attempts: u32,
    /// Share enqueued twice under one unique key.
    #[serde(default)]
    pub unique_pct: u32,
    /// Share scheduled 1 to 10 s ahead.
    #[serde(default)]
    pub scheduled_pct: u32,
    /// Share whose handler fails its first one or two attempts.
    #[serde(default)]
    pub fail_pct: u32,
    /// Share whose handler panics on its first attempt.
    #[serde(default)]
    pub panic_pct: u32,
    /// Share whose handler runs slowly (`slow_ms`).
    #[serde(default)]
    pub slow_pct: u32,
    /// How long a slow handler runs, `[min, max]` ms.
    #[serde(default = "slow_default")]
    pub slow_ms: [u64; 2],
    /// Share whose handler works `slow_ms` and ignores every request to stop.
    #[serde(default)]
    pub stubborn_pct: u32,
    /// Share whose handler works `slow_ms` and panics if asked to stop: a
    /// shutdown then meets a panicking handler.
    #[serde(default)]
    pub panic_on_stop_pct: u32,
    /// Share whose handler fails every attempt, so the job is discarded when
    /// its attempts run out.
    #[serde(default)]
    pub exhaust_pct: u32,
    /// Share whose handler hangs until cancelled (the workload cancels them).
    #[serde(default)]
    pub hang_pct: u32,
    /// Share of the other jobs the workload also cancels at a random moment.
    #[serde(default)]
    pub cancel_pct: u32,
    /// Share that writes a fenced effect.
    #[serde(default)]
    pub effect_pct: u32,
    /// Periodic schedules: `[name, every_s]`.
    #[serde(default)]
    pub periodic: Vec<(String, u64)>,
    /// Cron schedules: `[name, expression]` (with seconds, UTC).
    #[serde(default)]
    pub cron: Vec<(String, String)>,
    /// Jobs each worker claims ahead of the one it runs (keel's
    /// `JobsConfig::claim_ahead`; 0 claims one at a time).
    #[serde(default)]
    pub claim_ahead: u32,
}

fn slow_default() -> [u64; 2] {
    [1000, 5000]
}

/// Fault rates and shapes. Rates are per minute of the fault phase; ranges are
/// inclusive `[min, max]` in milliseconds.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Partitions between one node and the database host.
    pub partitions_per_min: f64,
    /// How long a partition lasts.
    pub partition_ms: [u64; 2],
    /// Crash-and-restart of one node.
    pub bounces_per_min: f64,
    /// How long a crashed node stays down.
    pub down_ms: [u64; 2],
    /// Windows in which one node's maintainer start hooks fail.
    pub hook_faults_per_min: f64,
    /// How long such a window lasts.
    pub hook_fault_window_ms: [u64; 2],
    /// How long a failing hook call takes before it returns its error.
    pub hook_delay_ms: [u64; 2],
    /// Largest wall-clock skew of a node, either direction.
    pub skew_ms_max: u64,
    /// Share of partitions and bounces aimed at whichever node leads when the
    /// fault starts, rather than at a fixed node (`0.0..=1.0`).
    #[serde(default)]
    pub leader_bias: f64,
    /// Share of partitions and bounces aimed at a node that is in the middle of a
    /// maintainer start attempt (the leader when none is), `0.0..=1.0`; together
    /// with `leader_bias` at most 1.
    #[serde(default)]
    pub starting_bias: f64,
    /// Percentage of hook calls that fail inside a hook-fault window, `[min, max]`
    /// drawn per window (100: every call fails).
    #[serde(default = "always")]
    pub hook_fail_pct: [u64; 2],
    /// Forward jumps of one node's wall clock (stepped back when they end).
    #[serde(default)]
    pub clock_jumps_per_min: f64,
    /// How far a clock jumps.
    #[serde(default)]
    pub clock_jump_ms: [u64; 2],
    /// How long a jumped clock stays ahead.
    #[serde(default)]
    pub clock_jump_dur_ms: [u64; 2],
    /// Share of clock jumps that step the clock back instead, in percent.
    #[serde(default)]
    pub clock_jump_back_pct: u64,
    /// Share of clock jumps that hit the database host's clock (storage's, the
    /// one that judges leases and claims) rather than a node's, in percent.
    #[serde(default)]
    pub db_clock_jump_pct: u64,
    /// Largest wall-clock skew of the database host, either direction.
    #[serde(default)]
    pub db_skew_ms_max: u64,
    /// Windows in which the database host misbehaves.
    #[serde(default)]
    pub storage_faults_per_min: f64,
    /// How long such a window lasts.
    #[serde(default)]
    pub storage_fault_ms: [u64; 2],
    /// Share of requests affected in a window, in percent.
    #[serde(default)]
    pub storage_fault_pct: [u64; 2],
    /// What a window does, drawn per window: any of `error`, `lost_reply`,
    /// `slow` (applied late), `slow_reply` (applied at once, answered late).
    #[serde(default)]
    pub storage_fault_modes: Vec<String>,
    /// Delay of a `slow` window (and of a `slow_reply` one unless
    /// `slow_reply_ms` is set).
    #[serde(default)]
    pub slow_storage_ms: [u64; 2],
    /// Delay of a `slow_reply` window's replies; `[0, 0]` takes
    /// `slow_storage_ms`.
    #[serde(default)]
    pub slow_reply_ms: [u64; 2],
    /// How long each node's storage client waits for a reply before the
    /// outcome is unknown, in ms: one number, or `[min, max]` drawn per run
    /// (0: the simulator's 1 s default).
    #[serde(default, deserialize_with = "one_or_range")]
    pub storage_timeout_ms: [u64; 2],
    /// Largest clock-rate error of a host, either way, in parts per million:
    /// each host, the database's too, draws its rate from `±drift_ppm_max`.
    /// One oscillator drives both of a host's clocks, so its sleeps, timeouts,
    /// trust windows and wall time all run fast or slow by it.
    #[serde(default)]
    pub drift_ppm_max: u64,
    /// Share of rate draws, in percent, taken from `±drift_rare_ppm_max`
    /// instead: the rare host far off (a VM under steal time).
    #[serde(default)]
    pub drift_rare_pct: u64,
    /// The rare hosts' largest rate error, in ppm.
    #[serde(default)]
    pub drift_rare_ppm_max: u64,
    /// Rate changes per minute: one host's rate turns to a fresh draw for a
    /// while, then back.
    #[serde(default)]
    pub drift_changes_per_min: f64,
    /// How long a changed rate lasts.
    #[serde(default)]
    pub drift_change_ms: [u64; 2],
    /// Injected panics in one tick of one node's watcher loop.
    #[serde(default)]
    pub loop_panics_per_min: f64,
    /// Slow ticks: one tick of one node's loop takes `slow_tick_ms`.
    #[serde(default)]
    pub slow_ticks_per_min: f64,
    /// How long a slow tick takes.
    #[serde(default)]
    pub slow_tick_ms: [u64; 2],
    /// Graceful shutdowns (and restarts) of one node.
    #[serde(default)]
    pub shutdowns_per_min: f64,
    /// The shutdown deadline.
    #[serde(default)]
    pub shutdown_deadline_ms: [u64; 2],
    /// How long the node stays down after its shutdown returned.
    #[serde(default)]
    pub shutdown_down_ms: [u64; 2],
    /// Process pauses (SIGSTOP, a VM freeze) per minute: no steps, no timers, no
    /// replies, then the process resumes with its clocks jumped by the pause.
    #[serde(default)]
    pub pauses_per_min: f64,
    /// How long a pause lasts.
    #[serde(default)]
    pub pause_ms: [u64; 2],
    /// In-place restarts of a live node's maintainer per minute (the elector
    /// keeps its term; work stays in flight).
    #[serde(default)]
    pub maintainer_restarts_per_min: f64,
    /// In-place restarts of a live node's whole runtime per minute: shut down
    /// within a deadline and start again at once in the same process, as a new
    /// incarnation.
    #[serde(default)]
    pub runtime_restarts_per_min: f64,
    /// The shutdown deadline of an in-place runtime restart.
    #[serde(default)]
    pub restart_deadline_ms: [u64; 2],
    /// Replacements per minute: a new process starts under a node's name while
    /// the old one is paused or partitioned (half each), as a StatefulSet
    /// starts `worker-0` again; the old one then resumes, and after an overlap
    /// the replacement is stopped.
    #[serde(default)]
    pub replaces_per_min: f64,
    /// How long the old process stays paused or partitioned.
    #[serde(default)]
    pub replace_ms: [u64; 2],
    /// How long both run after the old one came back.
    #[serde(default)]
    pub replace_overlap_ms: [u64; 2],
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

/// The 1-based line of `field` (`key`, `table.key` or `table`) in a scenario's
/// TOML text: where a user looks to fix it.
fn line_of(text: &str, field: &str) -> Option<usize> {
    let (table, key) = match field.split_once('.') {
        Some((table, key)) => (table, Some(key)),
        None if text.lines().any(|l| l.trim() == format!("[{field}]")) => (field, None),
        None => ("", Some(field)),
    };
    let mut current = "";
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim();
            if key.is_none() && current == table {
                return Some(i + 1);
            }
            continue;
        }
        let written = line
            .split_once('=')
            .is_some_and(|(k, _)| Some(k.trim()) == key);
        if written && current == table {
            return Some(i + 1);
        }
    }
    None
}

fn always() -> [u64; 2] {
    [100, 100]
}

/// A range written as one number (`3000`, read as `[3000, 3000]`) or as
/// `[min, max]`.
fn one_or_range<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u64; 2], D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrRange {
        One(u64),
        Range([u64; 2]),
    }
    Ok(match OneOrRange::deserialize(d)? {
        OneOrRange::One(n) => [n, n],
        OneOrRange::Range(r) => r,
    })
}

/// The most a scenario's hosts may drift, in ppm: keel's own limit on what a
/// configuration may claim to tolerate (`keel::clock::CLOCK_DRIFT_MAX_PPM_LIMIT`).
pub const DRIFT_PPM_MAX: u64 = 200_000;

/// A scenario that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The TOML did not parse.
    #[error("scenario file {file}: {source}")]
    Parse {
        /// The catalog file.
        file: String,
        /// The parser's complaint.
        source: toml::de::Error,
    },
    /// A field has a value that cannot work.
    #[error("scenario {scenario}: {field}{}: {reason}", at_line(*line))]
    Invalid {
        /// The scenario.
        scenario: String,
        /// The field.
        field: &'static str,
        /// The field's 1-based line in the file, when it is written there.
        line: Option<usize>,
        /// Why.
        reason: String,
    },
    /// A scenario file could not be read.
    #[error("scenario file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The reader's complaint.
        source: std::io::Error,
    },
    /// No scenario has that name.
    #[error("unknown scenario {given:?}; valid: {}", valid.join(", "))]
    Unknown {
        /// The name given.
        given: String,
        /// Every scenario name.
        valid: Vec<String>,
    },
}

impl Scenario {
    /// Parse and validate one scenario file.
    pub fn parse(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|source| ScenarioError::Parse {
            file: file.to_owned(),
            source,
        })?;
        match s.validate() {
            Err(ScenarioError::Invalid {
                scenario,
                field,
                reason,
                ..
            }) => Err(ScenarioError::Invalid {
                line: line_of(text, field),
                scenario,
                field,
                reason,
            }),
            other => other.map(|()| s),
        }
    }

    /// Load a user's scenario file: parsed and validated like the catalog's,
    /// with [`Scenario::source`] set so replay commands can name the file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut s = Scenario::parse(&path.display().to_string(), &text)?;
        s.source = Some(path.to_owned());
        Ok(s)
    }

    /// Check that every field has a value that can work (what [`Scenario::parse`]
    /// checks after parsing); the error names the field.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |field, reason: String| {
            Err(ScenarioError::Invalid {
                scenario: self.name.clone(),
                field,
                line: None,
                reason,
            })
        };
        if !(1..=NODES_MAX).contains(&self.nodes) {
            return bad(
                "nodes",
                format!("must be 1..={NODES_MAX}, got {}", self.nodes),
            );
        }
        if self.duration_s == 0 {
            return bad("duration_s", "must be positive".into());
        }
        if self.default_seeds == 0 {
            return bad("default_seeds", "must be positive".into());
        }
        if let Some((name, _)) = self.loops.iter().find(|(_, period_ms)| *period_ms == 0) {
            return bad("loops", format!("{name}: period_ms must be positive"));
        }
        let loop_faults = self.faults.loop_panics_per_min + self.faults.slow_ticks_per_min;
        if loop_faults > 0.0 && self.loops.is_empty() {
            return bad("loops", "loop faults need at least one loop".into());
        }
        if let Some(w) = &self.workload {
            w.validate().or_else(|(field, reason)| bad(field, reason))?;
        }
        if let Some((i, name)) = self
            .reach
            .iter()
            .enumerate()
            .find(|(i, name)| self.reach[..*i].contains(name))
        {
            return bad("reach", format!("{name:?} is declared twice (entry {i})"));
        }
        let f = &self.faults;
        for (field, [lo, hi]) in [
            ("faults.partition_ms", f.partition_ms),
            ("faults.down_ms", f.down_ms),
            ("faults.hook_fault_window_ms", f.hook_fault_window_ms),
            ("faults.hook_delay_ms", f.hook_delay_ms),
            ("faults.hook_fail_pct", f.hook_fail_pct),
            ("faults.clock_jump_ms", f.clock_jump_ms),
            ("faults.clock_jump_dur_ms", f.clock_jump_dur_ms),
            ("faults.storage_fault_ms", f.storage_fault_ms),
            ("faults.storage_fault_pct", f.storage_fault_pct),
            ("faults.slow_storage_ms", f.slow_storage_ms),
            ("faults.slow_reply_ms", f.slow_reply_ms),
            ("faults.shutdown_deadline_ms", f.shutdown_deadline_ms),
            ("faults.shutdown_down_ms", f.shutdown_down_ms),
            ("faults.slow_tick_ms", f.slow_tick_ms),
            ("faults.storage_timeout_ms", f.storage_timeout_ms),
            ("faults.drift_change_ms", f.drift_change_ms),
        ] {
            if lo > hi {
                return bad(field, format!("min {lo} exceeds max {hi}"));
            }
        }
        if !(0.0..=1.0).contains(&f.leader_bias) || !(0.0..=1.0).contains(&f.starting_bias) {
            return bad(
                "faults.leader_bias",
                "leader_bias and starting_bias must be in 0..=1".into(),
            );
        }
        if f.leader_bias + f.starting_bias > 1.0 {
            return bad(
                "faults.starting_bias",
                "leader_bias + starting_bias must be at most 1".into(),
            );
        }
        if let Some(m) = f
            .storage_fault_modes
            .iter()
            .find(|m| !["error", "lost_reply", "slow", "slow_reply"].contains(&m.as_str()))
        {
            return bad(
                "faults.storage_fault_modes",
                format!("{m:?} is not one of error, lost_reply, slow, slow_reply"),
            );
        }
        if f.storage_faults_per_min > 0.0 && f.storage_fault_modes.is_empty() {
            return bad(
                "faults.storage_fault_modes",
                "must name at least one mode when storage faults are on".into(),
            );
        }
        for (field, ppm) in [
            ("faults.drift_ppm_max", f.drift_ppm_max),
            ("faults.drift_rare_ppm_max", f.drift_rare_ppm_max),
        ] {
            if ppm > DRIFT_PPM_MAX {
                return bad(
                    field,
                    format!("must be at most {DRIFT_PPM_MAX} (20%), got {ppm}"),
                );
            }
        }
        if f.drift_changes_per_min > 0.0 && f.drift_change_ms[1] == 0 {
            return bad(
                "faults.drift_change_ms",
                "must be positive when drift changes are on".into(),
            );
        }
        for (field, pct) in [
            ("faults.clock_jump_back_pct", f.clock_jump_back_pct),
            ("faults.db_clock_jump_pct", f.db_clock_jump_pct),
            ("faults.drift_rare_pct", f.drift_rare_pct),
        ] {
            if pct > 100 {
                return bad(field, format!("must be at most 100, got {pct}"));
            }
        }
        if f.hook_fail_pct[1] > 100 || f.storage_fault_pct[1] > 100 {
            return bad(
                "faults.hook_fail_pct",
                format!("must be at most 100, got {}", f.hook_fail_pct[1]),
            );
        }
        for (field, rate) in [
            ("faults.partitions_per_min", f.partitions_per_min),
            ("faults.bounces_per_min", f.bounces_per_min),
            ("faults.hook_faults_per_min", f.hook_faults_per_min),
            ("faults.clock_jumps_per_min", f.clock_jumps_per_min),
            ("faults.storage_faults_per_min", f.storage_faults_per_min),
            ("faults.shutdowns_per_min", f.shutdowns_per_min),
            ("faults.loop_panics_per_min", f.loop_panics_per_min),
            ("faults.slow_ticks_per_min", f.slow_ticks_per_min),
            ("faults.drift_changes_per_min", f.drift_changes_per_min),
        ] {
            if !(0.0..=600.0).contains(&rate) {
                return bad(field, format!("must be in 0..=600, got {rate}"));
            }
        }
        Ok(())
    }
}

impl Workload {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.workers == 0 || self.workers > 64 {
            return Err((
                "workload.workers",
                format!("must be 1..=64, got {}", self.workers),
            ));
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err((
                "workload.max_attempts",
                format!("must be 1..=100, got {}", self.max_attempts),
            ));
        }
        let behaviours = self.fail_pct
            + self.panic_pct
            + self.slow_pct
            + self.hang_pct
            + self.stubborn_pct
            + self.panic_on_stop_pct
            + self.exhaust_pct;
        if behaviours > 100 {
            return Err((
                "workload",
                format!("fail+panic+slow+hang+stubborn+panic_on_stop+exhaust is {behaviours}%, over 100%"),
            ));
        }
        for (field, pct) in [
            ("workload.unique_pct", self.unique_pct),
            ("workload.scheduled_pct", self.scheduled_pct),
            ("workload.cancel_pct", self.cancel_pct),
            ("workload.effect_pct", self.effect_pct),
        ] {
            if pct > 100 {
                return Err((field, format!("must be 0..=100, got {pct}")));
            }
        }
        if self.slow_ms[0] > self.slow_ms[1] {
            return Err(("workload.slow_ms", "min exceeds max".into()));
        }
        if let Some((name, _)) = self.periodic.iter().find(|(_, every)| *every == 0) {
            return Err((
                "workload.periodic",
                format!("{name}: every_s must be positive"),
            ));
        }
        Ok(())
    }
}

/// Every scenario in the catalog, in catalog order.
///
/// # Panics
///
/// If a catalog file is broken: the catalog ships with the crate, and its test
/// loads every file.
pub fn all() -> Vec<Scenario> {
    CATALOG
        .iter()
        .map(|(file, text)| {
            Scenario::parse(file, text).unwrap_or_else(|e| panic!("broken catalog: {e}"))
        })
        .collect()
}

/// The scenario called `name`.
pub fn by_name(name: &str) -> Result<Scenario, ScenarioError> {
    let all = all();
    let valid = all.iter().map(|s| s.name.clone()).collect();
    all.into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ScenarioError::Unknown {
            given: name.to_owned(),
            valid,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalog_file_loads_and_names_are_unique() {
        let all = all();
        assert_eq!(all.len(), CATALOG.len());
        let mut names: Vec<_> = all.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        for (file, _) in CATALOG {
            assert!(
                all.iter().any(|s| format!("{}.toml", s.name) == *file),
                "{file} is named after its scenario"
            );
        }
    }

    #[test]
    fn bad_scenarios_name_the_field() {
        let flap = CATALOG
            .iter()
            .find(|(f, _)| *f == "leadership_flap.toml")
            .expect("in catalog")
            .1;
        let text = flap.replace("nodes = 3", "nodes = 0");
        let err = Scenario::parse("x.toml", &text).expect_err("zero nodes");
        assert!(err.to_string().contains("nodes"), "{err}");
        let text = flap.replace("partition_ms = [500, 7000]", "partition_ms = [7000, 500]");
        let err = Scenario::parse("x.toml", &text).expect_err("inverted range");
        assert!(err.to_string().contains("faults.partition_ms"), "{err}");
        let text = flap.replace("[faults]", "reach = [\"x\", \"x\"]\n[faults]");
        let err = Scenario::parse("x.toml", &text).expect_err("a state declared twice");
        assert!(err.to_string().contains("reach"), "{err}");
        let text = flap.replace("partition_ms = [500, 7000]", "partition_ms = [7000, 500]");
        let err = Scenario::parse("x.toml", &text).expect_err("inverted range");
        let line = 1 + flap
            .lines()
            .position(|l| l.starts_with("partition_ms"))
            .expect("there");
        assert!(err.to_string().contains(&format!("(line {line})")), "{err}");
        let err = Scenario::parse("x.toml", &flap.replace("nodes = 3", "nodes = \"3\""))
            .expect_err("a string");
        assert!(
            err.to_string().contains("nodes") && err.to_string().contains("line"),
            "{err}"
        );
        let err = by_name("nope").expect_err("unknown");
        let listed = err.to_string();
        for s in all() {
            assert!(listed.contains(&s.name), "{listed} lists {}", s.name);
        }
    }
}
