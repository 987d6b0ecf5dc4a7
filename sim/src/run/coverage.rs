//! Coverage over a seed set: which rare states (`keel::sometimes!` markers) a
//! scenario's runs reached, and in how many seeds.
//!
//! Most states are the runtime's own markers; a few ([`HARNESS_STATES`]) are
//! facts about the simulated world that no runtime code can see, such as a
//! host whose clock runs at the wrong rate, read from the history after a run.
//!
//! A scenario declares in `reach` the states it exists to reach. One seed need
//! not reach them all; its default seed set must, or the scenario tests nothing
//! of what it claims. `cargo test -p sim` enforces that on the default seeds and
//! `sim sweep` prints the tally under its summary.

use std::cell::RefCell;
use std::collections::BTreeMap;

use scenarios::Scenario;

/// Hits of one state whose times a run keeps ([`Marks`]): the first few say
/// when a race began, and a state hit all run long needs no more.
pub const MARK_TIMES_PER_STATE_MAX: usize = 8;

/// When a run reached each rare state: the simulated times, in ms, of its
/// first [`MARK_TIMES_PER_STATE_MAX`] hits, by state. The guided search
/// (`sim hunt`) branches from these moments.
pub type Marks = BTreeMap<String, Vec<u64>>;

thread_local! {
    /// This thread's run's marks, while [`start_marks`] is in force.
    static MARKS: RefCell<BTreeMap<&'static str, Vec<u64>>> = const { RefCell::new(BTreeMap::new()) };
}

/// Stamp one hit with the simulated time (the observer [`start_marks`] sets).
fn stamp(state: &'static str) {
    let at_ms =
        turmoil::sim_elapsed().map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    MARKS.with(|m| {
        let mut marks = m.borrow_mut();
        let times = marks.entry(state).or_default();
        if times.len() < MARK_TIMES_PER_STATE_MAX {
            times.push(at_ms);
        }
    });
}

/// Start recording this thread's marks afresh: call before a run, with
/// `keel::coverage::reset`.
pub fn start_marks() {
    MARKS.with(|m| m.borrow_mut().clear());
    keel::coverage::observe(Some(stamp));
}

/// Stop recording and take the marks recorded since [`start_marks`].
pub fn take_marks() -> Marks {
    keel::coverage::observe(None);
    let marks = MARKS.with(|m| std::mem::take(&mut *m.borrow_mut()));
    marks.into_iter().map(|(s, t)| (s.to_owned(), t)).collect()
}

/// A scenario's `reach` names a state `keel::coverage::STATES` does not list.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("scenario {scenario} declares unknown state {name:?} in reach; valid: {valid}")]
pub struct UnknownState {
    /// The scenario.
    pub scenario: String,
    /// The name it gave.
    pub name: String,
    /// Every valid state name.
    pub valid: String,
}

/// States of the simulated world rather than of the runtime, with what each
/// means; counted from a run's history by [`harness_states`].
pub const HARNESS_STATES: &[(&str, &str)] = &[(
    "drifting_host_held_lease",
    "a node believed it led while its clock ran at least 1% fast or slow",
)];

/// A host's clock is "drifting" for coverage from this rate error on, in ppm:
/// ten thousand times what NTP allows, and past where a margin left for skew
/// alone would hold.
const DRIFTING_PPM: u64 = 10_000;

/// Whether `name` is a runtime state or a harness state.
pub fn is_known(name: &str) -> bool {
    keel::coverage::is_known(name) || HARNESS_STATES.iter().any(|(n, _)| *n == name)
}

/// The harness states `history` reached, with how many times.
pub fn harness_states(history: &[crate::run::history::Record]) -> BTreeMap<String, u64> {
    let offsets = crate::run::checkers::belief::Offsets::of(history);
    let drifting = crate::run::checkers::belief::beliefs_on(history, &offsets)
        .iter()
        .filter(|b| offsets.rate_ppm(&b.host, b.from_ms).unsigned_abs() >= DRIFTING_PPM)
        .count();
    let mut out = BTreeMap::new();
    if drifting > 0 {
        out.insert("drifting_host_held_lease".to_owned(), drifting as u64);
    }
    out
}

/// Check that every state `scenario` declares in `reach` is a known one.
pub fn check_reach(scenario: &Scenario) -> Result<(), UnknownState> {
    let unknown = scenario.reach.iter().find(|name| !is_known(name));
    match unknown {
        None => Ok(()),
        Some(name) => Err(UnknownState {
            scenario: scenario.name.clone(),
            name: name.clone(),
            valid: keel::coverage::STATES
                .iter()
                .chain(HARNESS_STATES)
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// How many seeds of a sweep reached each state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Seeds that produced a run (a run that could not finish has no coverage).
    pub seeds: u64,
    /// Seeds that reached each state at least once, by state.
    pub reached: BTreeMap<String, u64>,
}

impl Tally {
    /// Count one seed's run, given its `RunResult::coverage`.
    pub fn add(&mut self, coverage: &BTreeMap<String, u64>) {
        self.seeds += 1;
        for (state, hits) in coverage {
            if *hits > 0 {
                *self.reached.entry(state.clone()).or_insert(0) += 1;
            }
        }
    }

    /// Seeds that reached `state`.
    pub fn seeds_reaching(&self, state: &str) -> u64 {
        self.reached.get(state).copied().unwrap_or(0)
    }

    /// The states `scenario` declares that no seed reached, in declared order.
    pub fn unreached<'a>(&self, scenario: &'a Scenario) -> Vec<&'a str> {
        let declared = scenario.reach.iter().map(String::as_str);
        declared.filter(|s| self.seeds_reaching(s) == 0).collect()
    }

    /// One line per state: the declared ones first (flagged when no seed reached
    /// them), then every other state some seed reached.
    pub fn lines(&self, scenario: &Scenario) -> Vec<String> {
        let declared = &scenario.reach;
        let line = |state: &str, note: &str| {
            let n = self.seeds_reaching(state);
            format!("{state:<36} {n:>4}/{:<4} {note}", self.seeds)
                .trim_end()
                .to_owned()
        };
        let mut out: Vec<String> = declared
            .iter()
            .map(|s| match self.seeds_reaching(s) {
                0 => line(s, "declared, NEVER REACHED"),
                _ => line(s, "declared"),
            })
            .collect();
        let others = self.reached.keys().filter(|s| !declared.contains(s));
        out.extend(others.map(|s| line(s, "")));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(reach: &[&str]) -> Scenario {
        let mut s = scenarios::by_name("stale_retries").expect("in the catalog");
        s.reach = reach.iter().map(|r| (*r).to_owned()).collect();
        s
    }

    #[test]
    fn a_scenario_declaring_an_unknown_state_is_rejected_with_the_valid_names() {
        assert_eq!(check_reach(&scenario(&["ambiguous_finalize"])), Ok(()));
        let err = check_reach(&scenario(&["ambiguous_finalize", "no_such_state"]))
            .expect_err("unknown state");
        assert_eq!(err.name, "no_such_state");
        let text = err.to_string();
        assert!(text.contains("stale_retries"), "{text}");
        assert!(text.contains("stale_retry_after_term_change"), "{text}");
    }

    #[test]
    fn the_tally_counts_seeds_not_hits_and_flags_declared_states_never_reached() {
        let s = scenario(&["ambiguous_finalize", "cancel_races_finish"]);
        let mut tally = Tally::default();
        let run = |pairs: &[(&str, u64)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect::<BTreeMap<_, _>>()
        };
        tally.add(&run(&[
            ("ambiguous_finalize", 7),
            ("slow_tick_outlasts_period", 1),
        ]));
        tally.add(&run(&[("ambiguous_finalize", 1)]));
        tally.add(&run(&[]));
        assert_eq!(tally.seeds, 3);
        assert_eq!(tally.seeds_reaching("ambiguous_finalize"), 2);
        assert_eq!(tally.unreached(&s), ["cancel_races_finish"]);
        let lines = tally.lines(&s);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].starts_with("ambiguous_finalize") && lines[0].contains("2/3"));
        assert!(lines[1].contains("0/3") && lines[1].contains("NEVER REACHED"));
        assert!(
            lines[2].starts_with("slow_tick_outlasts_period") && !lines[2].contains("declared")
        );
    }
}
