//! What nodes believed, and how far their clocks were off, read back from a
//! history in true (simulated) time: the shared ground of the checkers that
//! judge beliefs rather than what storage accepted.
//!
//! A node's elector reports the end of its trust window with every grant and
//! renewal (`trusted_for_ms`), measured on the node's monotonic clock from the
//! event. A [`Belief`] is one such report, cut short by whatever ended the
//! tenure first (`TermLost`, a crash, a reboot, a returned shutdown). Together a
//! node's beliefs for a term are the instants at which `Elector::holds(term)`
//! said yes.

use std::collections::BTreeMap;

use keel::events::Event;
use keel::storage::Term;

use crate::run::history::{Ev, HarnessEvent, Record};
use crate::world::db::DB_HOST;

/// One stretch of true time in which `host` trusted `term`: from a grant or
/// renewal to the end of the window it reported, or the tenure's end if sooner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Belief {
    pub host: String,
    pub term: Term,
    /// The `TermWon` or `TermRenewed` record that reported it.
    pub seq: usize,
    pub from_ms: u64,
    pub until_ms: u64,
    /// The record that ended the tenure, if any did before `until_ms`.
    pub ended_by: Option<usize>,
}

/// Every belief in `history`, in history order. A window's length is the
/// node's own time: on a clock running slow it lasts longer in true time.
pub(crate) fn beliefs(history: &[Record]) -> Vec<Belief> {
    beliefs_on(history, &Offsets::of(history))
}

/// [`beliefs`], with the history's clocks already read.
pub(crate) fn beliefs_on(history: &[Record], offsets: &Offsets) -> Vec<Belief> {
    let mut out: Vec<Belief> = Vec::new();
    // Per host: the term it leads and the indexes (into `out`) of its beliefs.
    let mut open: BTreeMap<&str, (Term, Vec<usize>)> = BTreeMap::new();
    let close = |out: &mut Vec<Belief>, idx: Vec<usize>, r: &Record| {
        for i in idx {
            if out[i].until_ms > r.at_ms {
                out[i].until_ms = r.at_ms.max(out[i].from_ms);
                out[i].ended_by = Some(r.seq);
            }
        }
    };
    for r in history {
        let host = r.host.as_str();
        let (term, trusted_for_ms) = match &r.ev {
            Ev::Node(Event::TermWon {
                term,
                trusted_for_ms,
            }) => {
                if let Some((_, idx)) = open.remove(host) {
                    close(&mut out, idx, r);
                }
                open.insert(host, (*term, Vec::new()));
                (*term, *trusted_for_ms)
            }
            Ev::Node(Event::TermRenewed {
                term,
                trusted_for_ms,
            }) if open.get(host).is_some_and(|(t, _)| t == term) => (*term, *trusted_for_ms),
            Ev::Node(Event::TermLost { term, .. })
                if open.get(host).is_some_and(|(t, _)| t == term) =>
            {
                if let Some((_, idx)) = open.remove(host) {
                    close(&mut out, idx, r);
                }
                continue;
            }
            Ev::Harness(HarnessEvent::Crash | HarnessEvent::NodeBoot { .. })
            | Ev::Node(Event::ShutdownEnded { .. }) => {
                if let Some((_, idx)) = open.remove(host) {
                    close(&mut out, idx, r);
                }
                continue;
            }
            _ => continue,
        };
        if let Some((_, idx)) = open.get_mut(host) {
            idx.push(out.len());
        }
        out.push(Belief {
            host: host.to_owned(),
            term,
            seq: r.seq,
            from_ms: r.at_ms,
            until_ms: offsets.true_after(host, r.at_ms, trusted_for_ms),
            ended_by: None,
        });
    }
    out
}

/// Each host's wall-clock offset from true time: a step function set at every
/// boot (`NodeBoot.skew_ms`) and moved by every `ClockJump`, plus what the
/// host's rate error (`ClockRate`) has built up. A replacement process runs
/// on the machine of the node it replaces, so it shares that node's clock,
/// jumps and rate included.
///
/// Steps and drift count differently: a step of storage's clock is keel's
/// documented limit and excuses what it causes (`storage_moved`), while a
/// rate error within the runtime's `clock_drift_max_ppm` is for the runtime's
/// margins to absorb and excuses nothing; it only moves where each clock reads.
#[derive(Debug, Default)]
pub(crate) struct Offsets {
    steps: BTreeMap<String, Vec<(u64, i64)>>,
    /// Per machine: `(since_ms, ppm)`, in time order.
    rates: BTreeMap<String, Vec<(u64, i64)>>,
    /// Replacement host → the node whose clock it reads.
    machine: BTreeMap<String, String>,
}

impl Offsets {
    pub(crate) fn of(history: &[Record]) -> Self {
        let mut o = Self::default();
        for r in history {
            if let Ev::Harness(HarnessEvent::ReplacementStarted { node }) = &r.ev {
                o.machine.insert(r.host.clone(), node.clone());
            }
            let node = o.node(&r.host).to_owned();
            if let Ev::Harness(HarnessEvent::ClockRate { ppm }) = r.ev {
                o.rates.entry(node).or_default().push((r.at_ms, ppm));
                continue;
            }
            let next = match r.ev {
                Ev::Harness(HarnessEvent::NodeBoot { skew_ms, .. }) => skew_ms,
                Ev::Harness(HarnessEvent::ClockJump { jump_ms }) => {
                    let now = o
                        .steps
                        .get(&node)
                        .and_then(|s| s.last())
                        .map_or(0, |(_, o)| *o);
                    now + jump_ms
                }
                _ => continue,
            };
            o.steps.entry(node).or_default().push((r.at_ms, next));
        }
        o
    }

    fn node<'a>(&'a self, host: &'a str) -> &'a str {
        self.machine.get(host).map_or(host, String::as_str)
    }

    /// How far `host`'s rate error has put its clocks ahead of true time
    /// (negative: behind) at `at_ms`, in ms: the same sum `SimClock` makes.
    pub(crate) fn drift_ms(&self, host: &str, at_ms: u64) -> i64 {
        let Some(rates) = self.rates.get(self.node(host)) else {
            return 0;
        };
        let (mut offset_ns, mut since, mut ppm) = (0i128, 0u64, 0i64);
        for (at, next) in rates.iter().take_while(|(at, _)| *at <= at_ms) {
            offset_ns += i128::from(at - since) * 1_000_000 * i128::from(ppm) / 1_000_000;
            (since, ppm) = (*at, *next);
        }
        offset_ns += i128::from(at_ms - since) * 1_000_000 * i128::from(ppm) / 1_000_000;
        i64::try_from(offset_ns.div_euclid(1_000_000)).unwrap_or(i64::MAX)
    }

    /// The true instant at which `host`'s own clock has seen `host_ms` pass
    /// since `from_ms` (`from_ms + host_ms` on a clock keeping time).
    pub(crate) fn true_after(&self, host: &str, from_ms: u64, host_ms: u64) -> u64 {
        let Some(rates) = self.rates.get(self.node(host)) else {
            return from_ms.saturating_add(host_ms);
        };
        // Walk the rate segments from `from_ms`, spending host time in each.
        let rate_at = |t: u64| {
            rates
                .iter()
                .take_while(|(at, _)| *at <= t)
                .last()
                .map_or(0, |(_, p)| *p)
        };
        let (mut t, mut left) = (from_ms, u128::from(host_ms) * 1_000_000);
        for (at, _) in rates.iter().filter(|(at, _)| *at > from_ms) {
            let per_ms = u128::try_from(1_000_000 + rate_at(t)).unwrap_or(0);
            let span = u128::from(at - t) * per_ms;
            if span >= left {
                break;
            }
            left -= span;
            t = *at;
        }
        let per_ms = u128::try_from(1_000_000 + rate_at(t)).unwrap_or(1).max(1);
        t.saturating_add(u64::try_from(left.div_ceil(per_ms)).unwrap_or(u64::MAX))
    }

    /// `host`'s rate error at `at_ms`, in ppm.
    pub(crate) fn rate_ppm(&self, host: &str, at_ms: u64) -> i64 {
        let rates = self.rates.get(self.node(host)).into_iter().flatten();
        rates
            .take_while(|(at, _)| *at <= at_ms)
            .last()
            .map_or(0, |(_, p)| *p)
    }

    /// The largest rate error any host had in the run, in ppm.
    pub(crate) fn drift_max_ppm(&self) -> u64 {
        let all = self.rates.values().flatten();
        all.map(|(_, p)| p.unsigned_abs()).max().unwrap_or(0)
    }

    /// The offsets `host` had at some instant of `[from_ms, to_ms]`.
    fn within(&self, host: &str, from_ms: u64, to_ms: u64) -> Vec<i64> {
        let Some(steps) = self.steps.get(self.node(host)) else {
            return vec![0];
        };
        let before = steps
            .iter()
            .rev()
            .find(|(at, _)| *at <= from_ms)
            .map_or(0, |(_, o)| *o);
        let during = steps
            .iter()
            .filter(|(at, _)| *at > from_ms && *at <= to_ms)
            .map(|(_, o)| *o);
        std::iter::once(before).chain(during).collect()
    }

    /// How far `host`'s wall clock fell back, at worst, from where it was at
    /// some instant of `[stamped_from_ms, from_ms]` (when a stamp was read) to
    /// some instant of `[from_ms, to_ms]` (0 when it never went below).
    pub(crate) fn fell_back_on(
        &self,
        host: &str,
        stamped_from_ms: u64,
        from_ms: u64,
        to_ms: u64,
    ) -> i64 {
        let at_start = self
            .within(host, stamped_from_ms.min(from_ms), from_ms)
            .into_iter()
            .max()
            .unwrap_or(0);
        let least = self
            .within(host, from_ms, to_ms)
            .into_iter()
            .min()
            .unwrap_or(0);
        (at_start - least).max(0)
    }

    /// The furthest `host`'s wall clock ran ahead of true time at some instant of
    /// `[from_ms, to_ms]` (negative when it ran behind throughout).
    pub(crate) fn ahead_on(&self, host: &str, from_ms: u64, to_ms: u64) -> i64 {
        // Drift is monotone between rate changes, so its extremes fall on
        // the span's ends and its changes.
        let changes = self.rates.get(self.node(host)).into_iter().flatten();
        let at = changes
            .map(|(at, _)| *at)
            .filter(|at| (from_ms..=to_ms).contains(at));
        let drift = [from_ms, to_ms]
            .into_iter()
            .chain(at)
            .map(|t| self.drift_ms(host, t))
            .max()
            .unwrap_or(0);
        let steps = self.within(host, from_ms, to_ms).into_iter().max();
        steps.unwrap_or(0) + drift
    }
}

/// Storage's clock: the database host's offset from true time, from its
/// `ClockJump` records (its skew is a jump at 0). Storage judges every stored
/// time on this clock, so only its steps, never the nodes' clocks, can make a
/// hold look older or younger than it is.
impl Offsets {
    /// Storage's wall time at true time `at_ms`, in ms since the epoch.
    pub(crate) fn storage_ms(&self, at_ms: u64) -> i64 {
        let offset = self.within(DB_HOST, at_ms, at_ms)[0] + self.drift_ms(DB_HOST, at_ms);
        i64::try_from(at_ms).unwrap_or(i64::MAX) + offset
    }

    /// How far storage's clock stepped, at worst, between instants of
    /// `[from_ms, to_ms]` (0 when it kept true time): the error a comparison of
    /// two of its stamps taken in that span may make.
    pub(crate) fn storage_moved(&self, from_ms: u64, to_ms: u64) -> u64 {
        let all = self.within(DB_HOST, from_ms, to_ms);
        let (lo, hi) = (all.iter().min(), all.iter().max());
        lo.zip(hi).map_or(0, |(lo, hi)| hi.abs_diff(*lo))
    }

    /// When the last step back of storage's clock has been made up: its time
    /// plus the step, for the latest such end (0 when it never stepped back).
    /// Until then storage's clock reads behind where it read before, so leases
    /// and claims last longer and due times come later than the runtime's
    /// liveness bounds count on.
    pub(crate) fn storage_caught_up_ms(&self) -> u64 {
        let Some(steps) = self.steps.get(DB_HOST) else {
            return 0;
        };
        steps
            .windows(2)
            .filter(|w| w[1].1 < w[0].1)
            .map(|w| w[1].0 + w[0].1.abs_diff(w[1].1))
            .max()
            .unwrap_or(0)
    }

    /// How far storage's clock fell back, at worst, from some instant of
    /// `[from_ms, to_ms]` to a later one (0 when it never went below).
    pub(crate) fn storage_fell_back(&self, from_ms: u64, to_ms: u64) -> i64 {
        self.fell_back_on(DB_HOST, from_ms, from_ms, to_ms)
    }
}

/// Per host: the holder id its process held leases as at each point, from its
/// `RuntimeStarted` records.
pub(crate) fn holder_at<'a>(history: &'a [Record], host: &str, seq: usize) -> &'a str {
    history[..seq]
        .iter()
        .rev()
        .filter(|r| r.host == host)
        .find_map(|r| match &r.ev {
            Ev::Node(Event::RuntimeStarted { holder }) => Some(holder.as_str()),
            _ => None,
        })
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkers::test_support::{lost, renewed, won_for, H};

    #[test]
    fn beliefs_end_at_their_window_or_the_tenure_whichever_is_first() {
        let h = H::new()
            .node(100, "n1", won_for(1, 4_000))
            .node(1_100, "n1", renewed(1, 4_000))
            .node(2_000, "n1", lost(1))
            .node(3_000, "n1", renewed(1, 4_000));
        let b = beliefs(&h.0);
        assert_eq!(b.len(), 2, "a renewal of a term no longer led is no belief");
        assert_eq!((b[0].from_ms, b[0].until_ms), (100, 2_000));
        assert_eq!((b[1].from_ms, b[1].until_ms), (1_100, 2_000));
        assert_eq!(b[1].ended_by, Some(2));
        let paused = H::new().node(0, "n1", won_for(1, 4_000));
        assert_eq!(beliefs(&paused.0)[0].until_ms, 4_000);
    }

    #[test]
    fn offsets_follow_boots_and_jumps() {
        let h = H::new()
            .harness(
                0,
                "n1",
                HarnessEvent::NodeBoot {
                    boot: 1,
                    skew_ms: -300,
                },
            )
            .harness(
                0,
                "n2",
                HarnessEvent::NodeBoot {
                    boot: 1,
                    skew_ms: 200,
                },
            )
            .harness(5_000, "n2", HarnessEvent::ClockJump { jump_ms: 1_500 })
            .harness(9_000, "n2", HarnessEvent::ClockJump { jump_ms: -1_500 });
        let o = Offsets::of(&h.0);
        assert_eq!(o.ahead_on("n1", 0, 1_000), -300);
        assert_eq!(o.ahead_on("n2", 4_000, 6_000), 1_700);
        assert_eq!(o.ahead_on("n2", 9_500, 10_000), 200);
        assert_eq!(o.fell_back_on("n2", 5_000, 5_000, 9_000), 1_500);
        let replaced = H::new()
            .harness(
                0,
                "n2",
                HarnessEvent::NodeBoot {
                    boot: 1,
                    skew_ms: 100,
                },
            )
            .harness(
                0,
                "n3",
                HarnessEvent::NodeBoot {
                    boot: 1,
                    skew_ms: 0,
                },
            )
            .harness(1_000, "n2", HarnessEvent::ClockJump { jump_ms: 2_000 })
            .harness(
                2_000,
                "n2r",
                HarnessEvent::ReplacementStarted { node: "n2".into() },
            )
            .harness(
                2_000,
                "n2r",
                HarnessEvent::NodeBoot {
                    boot: 1,
                    skew_ms: 2_100,
                },
            )
            .harness(3_000, "n2", HarnessEvent::ClockJump { jump_ms: -2_000 });
        let o = Offsets::of(&replaced.0);
        assert_eq!(
            o.ahead_on("n2r", 4_000, 5_000),
            100,
            "n2r's clock came back with n2's"
        );
    }

    #[test]
    fn storages_clock_is_the_database_hosts() {
        let h = H::new()
            .harness(0, DB_HOST, HarnessEvent::ClockJump { jump_ms: 600_000 })
            .harness(5_000, DB_HOST, HarnessEvent::ClockJump { jump_ms: -2_000 })
            .harness(6_000, "n1", HarnessEvent::ClockJump { jump_ms: 9_000 });
        let o = Offsets::of(&h.0);
        assert_eq!(o.storage_ms(1_000), 601_000);
        assert_eq!(o.storage_ms(5_000), 603_000);
        assert_eq!(o.storage_moved(1_000, 4_000), 0, "a skew is no step");
        assert_eq!(
            o.storage_moved(1_000, 7_000),
            2_000,
            "the nodes' jumps are not storage's"
        );
        assert_eq!(o.storage_fell_back(1_000, 7_000), 2_000);
        assert_eq!(
            o.storage_caught_up_ms(),
            7_000,
            "the 2 s step back, made up"
        );
    }
}
