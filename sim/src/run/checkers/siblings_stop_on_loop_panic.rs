//! `siblings_stop_on_loop_panic`: the invariant, its reasons and limits are on [`SiblingsStopOnLoopPanic`].

use keel::events::Event;

use super::{CheckCtx, Checker, Violation};
use crate::run::history::{Ev, HarnessEvent, Record};

/// `siblings_stop_on_loop_panic`: when one of a watcher's loops panics, the
/// watcher stops the others (`keel::watcher`: "the first to end signals the
/// others; all are drained"). After `LoopPanicInjected { X }` on host `h` at
/// `t`, no other loop of `h` begins a tick later than `t` plus
/// `STOP_SLACK_MS` until the watcher is started again, which its first tick
/// of `X` shows (the simulated node restarts a failed watcher after a second),
/// or the host crashes, reboots or shuts down. A sibling in the middle of a
/// tick may finish it; it must not begin another.
///
/// `panics_surfaced` judges that the panic is reported; this checker judges
/// what the watcher does about it, which a history of storage writes never
/// shows.
pub struct SiblingsStopOnLoopPanic;

/// How long after a loop's panic a sibling may still begin a tick: the
/// watcher triggers the siblings' stop when it joins the panicked task, in
/// the step of the panic or the next (two 20 ms steps).
pub const STOP_SLACK_MS: u64 = 2 * 20;

const NAME: &str = "siblings_stop_on_loop_panic";

impl Checker for SiblingsStopOnLoopPanic {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, history: &[Record], _ctx: &CheckCtx) -> Vec<Violation> {
        history
            .iter()
            .filter_map(|r| {
                let Ev::Harness(HarnessEvent::LoopPanicInjected { name }) = &r.ev else {
                    return None;
                };
                let late = late_sibling_tick(history, r, name)?;
                let Ev::Node(Event::LoopTick { name: sibling, .. }) = &late.ev else {
                    return None;
                };
                Some(Violation {
                    invariant: NAME,
                    at_ms: late.at_ms,
                    message: format!(
                        "{}: loop {sibling} began a tick {}ms after its sibling {name} panicked",
                        r.host,
                        late.at_ms - r.at_ms
                    ),
                    witnesses: vec![r.clone(), late.clone()],
                })
            })
            .collect()
    }
}

/// The first tick of a sibling of `panicked` on `panic`'s host that began
/// after the stop slack and before the watcher started again. A restarted
/// watcher ticks every loop at once, so a sibling's tick in the same
/// millisecond as one of `panicked` is the restart, whichever is recorded
/// first.
fn late_sibling_tick<'a>(
    history: &'a [Record],
    panic: &Record,
    panicked: &str,
) -> Option<&'a Record> {
    let later = || {
        history[panic.seq + 1..]
            .iter()
            .filter(|e| e.host == panic.host)
    };
    let ticks_of = |e: &Record, at_ms: u64| {
        e.at_ms == at_ms
            && matches!(&e.ev, Ev::Node(Event::LoopTick { name, .. }) if name == panicked)
    };
    for e in later() {
        match &e.ev {
            Ev::Node(Event::LoopTick { name, .. }) if name == panicked => return None,
            Ev::Node(Event::LoopTick { .. }) if e.at_ms > panic.at_ms + STOP_SLACK_MS => {
                let restart = later().any(|x| ticks_of(x, e.at_ms));
                return (!restart).then_some(e);
            }
            Ev::Node(Event::ShutdownBegan { .. })
            | Ev::Harness(HarnessEvent::Crash | HarnessEvent::NodeBoot { .. }) => return None,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkers::test_support::{ctx, H};

    fn tick(name: &str) -> Event {
        Event::LoopTick {
            name: name.into(),
            period_ms: 200,
        }
    }
    fn panicked(name: &str) -> HarnessEvent {
        HarnessEvent::LoopPanicInjected { name: name.into() }
    }

    #[test]
    fn siblings_that_stop_until_the_watcher_restarts_pass() {
        let h = H::new()
            .node(0, "n1", tick("poll"))
            .node(0, "n1", tick("sync"))
            .node(200, "n1", tick("poll"))
            .harness(200, "n1", panicked("poll"))
            .node(220, "n1", tick("sync"))
            .node(1_300, "n1", tick("sync"))
            .node(1_300, "n1", tick("poll"))
            .node(1_400, "n2", tick("sync"));
        assert!(SiblingsStopOnLoopPanic.check(&h.0, &ctx(5_000)).is_empty());
    }

    #[test]
    fn fires_when_a_sibling_ticks_on_after_a_panic() {
        let h = H::new()
            .node(0, "n1", tick("poll"))
            .node(0, "n1", tick("sync"))
            .harness(100, "n1", panicked("poll"))
            .node(400, "n1", tick("sync"));
        let v = SiblingsStopOnLoopPanic.check(&h.0, &ctx(5_000));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message
                .contains("loop sync began a tick 300ms after its sibling poll panicked"),
            "{}",
            v[0].message
        );
    }
}
