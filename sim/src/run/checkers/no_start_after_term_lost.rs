//! `no_start_after_term_lost`: the invariant, its reasons and limits are on [`NoStartAfterTermLost`].

use std::collections::BTreeMap;

use keel::events::Event;
use keel::storage::Term;

use super::{last_each, node_event, CheckCtx, Checker, Violation};
use crate::run::history::Record;

/// `no_start_after_term_lost`: losing a term cancels its start. Once a node
/// reports `TermLost { T }`, its maintainer begins no further start attempt
/// for `T` (`keel::maintenance` design note: "Losing `T` cancels `T`'s start:
/// no further attempt begins"). An attempt already in flight may finish; a new
/// `MaintainerStartAttempt { T }` on that host later than `HEARD_WITHIN_MS`
/// after the loss breaks the promise, even though term fencing keeps whatever
/// it starts out of storage.
///
/// A node never wins a term twice, and a replacement process runs on a host of
/// its own, so no later event makes an attempt for `T` legitimate again.
pub struct NoStartAfterTermLost;

/// How long after its elector reports the loss a maintainer may still begin
/// an attempt: the maintainer hears of it through a watch channel on the same
/// runtime, within the simulation step the loss happened in or the next (two
/// 20 ms steps). A frozen process runs nothing, so frozen time is not counted.
pub const HEARD_WITHIN_MS: u64 = 2 * 20;

impl Checker for NoStartAfterTermLost {
    fn name(&self) -> &'static str {
        "no_start_after_term_lost"
    }

    fn check(&self, history: &[Record], _ctx: &CheckCtx) -> Vec<Violation> {
        // Per host, the terms it lost and when.
        let mut lost: BTreeMap<(&str, Term), &Record> = BTreeMap::new();
        let mut out = Vec::new();
        for r in history {
            let host = r.host.as_str();
            match node_event(r) {
                Some(Event::TermLost { term, .. }) => {
                    lost.entry((host, *term)).or_insert(r);
                }
                Some(Event::MaintainerStartAttempt { term, attempt }) => {
                    let Some(loss) = lost.get(&(host, *term)) else {
                        continue;
                    };
                    let frozen = super::frozen_ms(history, host, loss.at_ms, r.at_ms);
                    let after = r.at_ms.saturating_sub(loss.at_ms).saturating_sub(frozen);
                    if after <= HEARD_WITHIN_MS {
                        continue;
                    }
                    let mut witnesses = last_each(
                        &history[..loss.seq],
                        host,
                        &[&|e| matches!(e, Event::TermWon { term: t, .. } if t == term)],
                    );
                    witnesses.push((*loss).clone());
                    witnesses.push(r.clone());
                    out.push(Violation {
                        invariant: "no_start_after_term_lost",
                        at_ms: r.at_ms,
                        message: format!(
                            "{host} began start attempt {attempt} for {term} {after}ms after it lost {term}"
                        ),
                        witnesses,
                    });
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkers::test_support::{ctx, lost, won, H};

    fn attempt(t: u64, attempt: u32) -> Event {
        Event::MaintainerStartAttempt {
            term: Term(t),
            attempt,
        }
    }

    #[test]
    fn attempts_while_the_term_is_held_or_as_its_loss_is_heard_pass() {
        let h = H::new()
            .node(0, "n1", won(3))
            .node(10, "n1", attempt(3, 1))
            .node(2_000, "n1", attempt(3, 2))
            .node(3_000, "n1", lost(3))
            .node(3_020, "n1", attempt(3, 3))
            .node(5_000, "n2", attempt(3, 1));
        assert!(NoStartAfterTermLost.check(&h.0, &ctx(10_000)).is_empty());
    }

    #[test]
    fn fires_when_a_retry_begins_after_the_term_was_lost() {
        let h = H::new()
            .node(0, "n1", won(3))
            .node(10, "n1", attempt(3, 1))
            .node(3_000, "n1", lost(3))
            .node(4_500, "n1", attempt(3, 2));
        let v = NoStartAfterTermLost.check(&h.0, &ctx(10_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message
                .contains("n1 began start attempt 2 for T3 1500ms after it lost T3"),
            "{}",
            v[0].message
        );
        let seqs: Vec<usize> = v[0].witnesses.iter().map(|w| w.seq).collect();
        assert_eq!(seqs, vec![0, 2, 3], "won, lost, the late attempt");
    }
}
