//! `no_task_panics`: the invariant, its reasons and limits are on [`NoTaskPanics`].

use keel::events::Event;

use super::{node_event, CheckCtx, Checker, Violation};
use crate::run::history::Record;

/// `no_task_panics`: no task of the runtime under test panics. keel catches a
/// panicking task and reports it (`TaskPanicked`) rather than losing it; in the
/// simulator any such report is a bug in keel, shown with the panic message.
pub struct NoTaskPanics;

impl Checker for NoTaskPanics {
    fn name(&self) -> &'static str {
        "no_task_panics"
    }

    fn check(&self, history: &[Record], _ctx: &CheckCtx) -> Vec<Violation> {
        history
            .iter()
            .filter_map(|r| match node_event(r) {
                Some(Event::TaskPanicked { task, message }) => Some(Violation {
                    invariant: "no_task_panics",
                    at_ms: r.at_ms,
                    message: format!("{}: task {task} panicked: {message}", r.host),
                    witnesses: vec![r.clone()],
                }),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::checkers::test_support::{ctx, won, H};

    #[test]
    fn fires_on_a_reported_panic() {
        let h = H::new().node(1, "n1", won(1)).node(
            2,
            "n1",
            Event::TaskPanicked {
                task: "elector".into(),
                message: "boom".into(),
            },
        );
        let v = NoTaskPanics.check(&h.0, &ctx(10));
        assert_eq!(v.len(), 1);
        assert!(v[0].message.contains("task elector panicked: boom"));
        assert!(NoTaskPanics.check(&h.0[..1], &ctx(10)).is_empty());
    }
}
