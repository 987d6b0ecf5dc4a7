//! I2 `exactly_once_effects`: the invariant, its reasons and limits are on [`ExactlyOnceEffects`].

use std::collections::BTreeMap;

use keel::storage::JobId;

use super::{CheckCtx, Checker, Violation};
use crate::run::history::{DbEvent, Ev, Record};

/// I2 `exactly_once_effects`: a fenced effect is applied once per job, whatever
/// the faults.
///
/// Storage records an `EffectApplied { job, attempt, key }` each time it writes a
/// fenced effect. For every `(job, key)` there is at most one such record, across
/// attempts, workers and hosts; a second one is a violation whose witnesses are
/// the first and the second record (a third is reported against the first again).
pub struct ExactlyOnceEffects;

const NAME: &str = "exactly_once_effects";

impl Checker for ExactlyOnceEffects {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, history: &[Record], _ctx: &CheckCtx) -> Vec<Violation> {
        let mut first: BTreeMap<(JobId, &str), (u32, &Record)> = BTreeMap::new();
        let mut out = Vec::new();
        for r in history {
            let Ev::Db(DbEvent::EffectApplied { job, attempt, key }) = &r.ev else {
                continue;
            };
            match first.get(&(*job, key.as_str())) {
                Some((earlier, prev)) => out.push(Violation {
                    invariant: NAME,
                    at_ms: r.at_ms,
                    message: format!(
                        "effect {key:?} of {job} applied by attempt {attempt} after attempt {earlier} applied it"
                    ),
                    witnesses: vec![(*prev).clone(), r.clone()],
                }),
                None => {
                    first.insert((*job, key.as_str()), (*attempt, r));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkers::test_support::{ctx, H};

    fn effect(job: u64, attempt: u32, key: &str) -> DbEvent {
        DbEvent::EffectApplied {
            job: JobId(job),
            attempt,
            key: key.into(),
        }
    }

    #[test]
    fn one_write_per_job_and_key_passes() {
        let h = H::new()
            .db(1, effect(1, 1, "charge"))
            .db(2, effect(1, 2, "email"))
            .db(3, effect(2, 1, "charge"));
        assert!(ExactlyOnceEffects.check(&h.0, &ctx(10)).is_empty());
    }

    #[test]
    fn fires_when_a_retried_attempt_applies_the_same_effect_again() {
        let h = H::new()
            .db(1, effect(1, 1, "charge"))
            .db(2, effect(2, 1, "charge"))
            .db(3, effect(1, 2, "charge"));
        let v = ExactlyOnceEffects.check(&h.0, &ctx(10));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].message.contains(
                "effect \"charge\" of job-1 applied by attempt 2 after attempt 1 applied it"
            ),
            "{}",
            v[0]
        );
        let seqs: Vec<usize> = v[0].witnesses.iter().map(|w| w.seq).collect();
        assert_eq!(seqs, vec![0, 2]);
    }
}
