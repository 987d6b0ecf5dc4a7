//! `periodic_fires_due_slot`: the invariant, its reasons and limits are on [`PeriodicFiresDueSlot`].

use keel::events::Event;

use super::belief::Offsets;
use super::{CheckCtx, Checker, Violation};
use crate::run::history::{DbEvent, Ev, Record};
use crate::world::db::DB_HOST;

/// `periodic_fires_due_slot`: a periodic schedule fires the latest slot due at
/// each tick of the leader's enqueuer, and never a slot before its time
/// (`PeriodicJob::slot`: "the latest slot at or before `now`").
///
/// * **Due slot fired.** Once faults have stopped and the cluster converged
///   (`heal_at_ms + converge_bound_ms`), each enqueuer tick
///   (`LeaderActed { service: "periodic_enqueuer" }` on host `h` at `t`) makes
///   the slot due on storage's clock at `t` fired by `t` plus a round trip
///   (the enqueuer reads storage's clock, `JobStore::time`, each round): its
///   `PeriodicInserted` exists by then (fired at this tick or an earlier one).
///   Judged for the scenario's fixed-period schedules (`workload.periodic`);
///   a cron slot may be skipped by design past `CRON_CATCH_UP`.
/// * **No slot early.** A leader inserts no slot (`PeriodicFired { inserted:
///   true }` on its host) later than storage's clock when it reported the
///   insert, judged always. The leader's own clock has no say.
pub struct PeriodicFiresDueSlot;

const NAME: &str = "periodic_fires_due_slot";

/// How long after its tick each schedule's insert may take: the enqueuer
/// fires the schedules in turn, one storage call each, and a call may take up
/// to the storage client's 1 s request timeout (swarm seed 3003635: three
/// schedules, the third inserted 520 ms after the tick, under a 500 ms bound
/// for all).
pub const FIRE_WITHIN_MS_PER_SCHEDULE: u64 = 1_000;

impl Checker for PeriodicFiresDueSlot {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, history: &[Record], ctx: &CheckCtx) -> Vec<Violation> {
        let offsets = Offsets::of(history);
        let mut out = early_slots(history, &offsets, ctx);
        out.extend(unfired_slots(history, &offsets, ctx));
        out.sort_by_key(|v| v.at_ms);
        out
    }
}

/// Storage's wall clock at true time `at_ms`, in ms since the Unix epoch.
fn storage_clock(offsets: &Offsets, ctx: &CheckCtx, at_ms: u64) -> i64 {
    ctx.epoch_unix_ms + offsets.storage_ms(at_ms)
}

fn is_enqueuer_tick(r: &Record) -> bool {
    matches!(&r.ev, Ev::Node(Event::LeaderActed { service, .. }) if service == "periodic_enqueuer")
}

/// Slots a leader inserted (`PeriodicFired { inserted: true }` on its host)
/// that were later than storage's clock at the enqueuer round that fired them.
fn early_slots(history: &[Record], offsets: &Offsets, ctx: &CheckCtx) -> Vec<Violation> {
    let mut last_tick: std::collections::BTreeMap<&str, &Record> = Default::default();
    let mut out = Vec::new();
    for r in history {
        if is_enqueuer_tick(r) {
            last_tick.insert(r.host.as_str(), r);
            continue;
        }
        let Ev::Node(Event::PeriodicFired {
            name,
            slot_ms,
            inserted: true,
            ..
        }) = &r.ev
        else {
            continue;
        };
        let Some(tick) = last_tick.get(r.host.as_str()) else {
            continue;
        };
        // The slot was read off storage's clock between the tick and the
        // report of the insert (each schedule fires in turn, a round trip
        // each): at most that clock at the report, whatever it jumped through.
        let ahead = offsets.ahead_on(DB_HOST, tick.at_ms, r.at_ms);
        let clock =
            ctx.epoch_unix_ms + i64::try_from(r.at_ms).unwrap_or(i64::MAX) + ahead + STAMP_SLACK_MS;
        if *slot_ms <= clock {
            continue;
        }
        out.push(Violation {
            invariant: NAME,
            at_ms: r.at_ms,
            message: format!(
                "{} fired slot {slot_ms} of {name} (its tick at {}ms), {}ms before storage's clock reached it",
                r.host,
                tick.at_ms,
                slot_ms - clock
            ),
            witnesses: vec![(*tick).clone(), r.clone()],
        });
    }
    out
}

/// Once the heal converged: enqueuer ticks whose due slot was not fired by the
/// tick plus [`FIRE_WITHIN_MS_PER_SCHEDULE`] for each schedule.
fn unfired_slots(history: &[Record], offsets: &Offsets, ctx: &CheckCtx) -> Vec<Violation> {
    let inserts: Vec<(&Record, &str, i64)> = history
        .iter()
        .filter_map(|r| match &r.ev {
            Ev::Db(DbEvent::PeriodicInserted { name, slot_ms, .. }) => {
                Some((r, name.as_str(), *slot_ms))
            }
            _ => None,
        })
        .collect();
    let from_ms = ctx.heal_at_ms + ctx.converge_bound_ms;
    let schedules = u64::try_from(ctx.periodic_every_ms.len()).unwrap_or(u64::MAX);
    let fire_within_ms = FIRE_WITHIN_MS_PER_SCHEDULE.saturating_mul(schedules);
    // A tick in the run's last moments may fire after the history ends.
    let judged = |r: &&Record| {
        r.at_ms >= from_ms && r.at_ms + fire_within_ms <= ctx.end_at_ms && is_enqueuer_tick(r)
    };
    let mut out = Vec::new();
    for tick in history.iter().filter(judged) {
        // A host's events are stamped up to a step late: the tick may have
        // read its clock a step before its stamp, one slot earlier.
        let now_ms = storage_clock(offsets, ctx, tick.at_ms) - STAMP_SLACK_MS;
        for (name, every_ms) in &ctx.periodic_every_ms {
            let every = i64::try_from(*every_ms).unwrap_or(i64::MAX).max(1);
            let due = now_ms.div_euclid(every) * every;
            let fired = inserts.iter().any(|(r, n, slot)| {
                n == name && *slot == due && r.at_ms <= tick.at_ms + fire_within_ms
            });
            if fired {
                continue;
            }
            out.push(Violation {
                invariant: NAME,
                at_ms: tick.at_ms + fire_within_ms,
                message: format!(
                    "{}'s enqueuer ticked at {}ms with slot {due} of {name} due, and it was not fired",
                    tick.host, tick.at_ms
                ),
                witnesses: vec![tick.clone()],
            });
        }
    }
    out
}

/// Slack for the history stamping a host's events up to one 20 ms step late.
const STAMP_SLACK_MS: i64 = 20;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkers::test_support::{ctx, H};
    use keel::storage::{JobId, Term};

    /// The test context's epoch is 0 and its one schedule, `digest`, fires
    /// every 10 s; it heals at `end / 2` and converges 20 s later.
    fn tick() -> Event {
        Event::LeaderActed {
            service: "periodic_enqueuer".into(),
            term: Term(1),
        }
    }
    fn fired(slot_ms: i64) -> DbEvent {
        DbEvent::PeriodicInserted {
            name: "digest".into(),
            slot_ms,
            job: JobId(1),
        }
    }

    #[test]
    fn each_due_slot_fired_at_its_tick_passes() {
        // End 60 s: judged from 50 s, for ticks up to 59.5 s.
        let h = H::new()
            .node(50_050, "n1", tick())
            .db(50_080, fired(50_000))
            .node(55_000, "n1", tick())
            .node(59_400, "n1", tick());
        assert!(PeriodicFiresDueSlot.check(&h.0, &ctx(60_000)).is_empty());
    }

    #[test]
    fn fires_on_a_due_slot_left_unfired_or_a_slot_fired_early() {
        let h = H::new()
            .node(50_050, "n1", tick())
            .db(50_080, fired(60_000))
            .node(
                50_090,
                "n1",
                Event::PeriodicFired {
                    name: "digest".into(),
                    slot_ms: 60_000,
                    term: Term(1),
                    job: JobId(1),
                    inserted: true,
                },
            );
        let v = PeriodicFiresDueSlot.check(&h.0, &ctx(60_000));
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(
            v[0].message
                .contains("n1 fired slot 60000 of digest (its tick at 50050ms), 9890ms before"),
            "{}",
            v[0].message
        );
        assert!(
            v[1].message
                .contains("slot 50000 of digest due, and it was not fired"),
            "{}",
            v[1].message
        );
    }
}
