//! The service contract and the term-tagged handles that make cross-term teardown
//! impossible to write.

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::clock::SharedClock;
use crate::events::{emit, Event, SharedObserver};
use crate::leadership::Elector;
use crate::shutdown::{ShutdownToken, TaskRegistry};
use crate::storage::{SharedStorage, StorageError, Term};

/// Why a service failed to start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The service's own start hook refused.
    #[error("service {service} failed to start: {reason}")]
    Start {
        /// The service.
        service: String,
        /// What it said.
        reason: String,
    },
    /// Storage failed during start.
    #[error("storage failed during start: {0}")]
    Storage(#[from] StorageError),
    /// The start did not finish within the attempt timeout.
    #[error("start timed out")]
    Timeout,
}

/// What a service gets when it starts for a term.
#[derive(Clone)]
pub struct ServiceCtx {
    /// The term this service runs for; fence every write with it.
    pub term: Term,
    /// The lease the term belongs to.
    pub lease_name: String,
    /// This node's holder id.
    pub holder: String,
    /// Triggered when the term's services stop.
    pub token: ShutdownToken,
    /// Spawn the service's loops here so they stop with the term.
    pub tasks: TaskRegistry,
    /// Time.
    pub clock: SharedClock,
    /// Storage.
    pub storage: SharedStorage,
    /// Where the service reports what it did.
    pub observer: SharedObserver,
    /// The elector that won `term`: [`leads`](Self::leads) asks it.
    pub elector: Arc<Elector>,
}

impl ServiceCtx {
    /// Whether this node still leads `term` right now, inside its trust window.
    ///
    /// Storage fences every write with the term, but nothing fences an act
    /// outside it (an email, a call to another system). The term's token is
    /// triggered only once the maintainer hears that the term is gone, and a
    /// process thawing from a freeze may run a loop before it hears: ask this
    /// immediately before each such act, and skip the act when it says no.
    pub fn leads(&self) -> bool {
        self.elector.holds(self.term)
    }

    /// Record that `service` acts for the term now, after [`leads`](Self::leads)
    /// said yes: the simulator checks every act lies inside the trust window.
    pub fn report_act(&self, service: &str) {
        let event = Event::LeaderActed {
            service: service.to_owned(),
            term: self.term,
        };
        emit(self.observer.as_ref(), &self.holder, event);
    }
}

/// A maintenance service run by the leader. See the [module docs](super).
#[async_trait]
pub trait Service: Send + Sync + 'static {
    /// A stable name for logs.
    fn name(&self) -> &str;

    /// Start for `ctx.term`: return once running, with loops spawned into
    /// `ctx.tasks`. May be slow; should honour `ctx.token`.
    async fn start(&self, ctx: &ServiceCtx) -> Result<(), ServiceError>;
}

/// The services started for one term: their stop token and their tasks.
#[derive(Debug)]
pub struct TermServices {
    term: Term,
    token: ShutdownToken,
    tasks: TaskRegistry,
}

impl TermServices {
    /// An empty set for `term`; its loops go into `tasks` and stop with its token.
    pub fn new(term: Term, tasks: TaskRegistry) -> Self {
        let token = tasks.token().clone();
        Self { term, token, tasks }
    }

    /// The term these services run for.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The registry services spawn their loops into.
    pub fn tasks(&self) -> &TaskRegistry {
        &self.tasks
    }

    /// The token that stops these services.
    pub fn token(&self) -> &ShutdownToken {
        &self.token
    }

    /// Stop every loop now.
    pub fn stop(self) {
        self.token.trigger();
        self.tasks.abort_all();
    }
}

/// One run of the maintainer working for one term: what a start attempt is
/// bound to. The run matters as much as the term: a maintainer stopped and run
/// again inside one term must not accept what the stopped run's attempt starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tenure {
    /// Which `Maintainer::run` (counted from 1 per maintainer).
    pub(crate) run: u64,
    /// The term.
    pub(crate) term: Term,
}

#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// The tenure the maintainer currently wants running, if any.
    pub(crate) wanted: Option<Tenure>,
    /// What runs, and the tenure that installed it.
    pub(crate) running: Option<(Tenure, TermServices)>,
}

/// The shared maintainer slot, seen through one term of one maintainer run.
/// Everything an attempt for `term` can do to the slot goes through this handle,
/// and the handle only ever acts on its own term and run.
#[derive(Clone)]
pub struct TermHandle {
    tenure: Tenure,
    holder: String,
    slot: Arc<Mutex<Slot>>,
    observer: SharedObserver,
}

impl TermHandle {
    pub(crate) fn new(
        tenure: Tenure,
        holder: String,
        slot: Arc<Mutex<Slot>>,
        observer: SharedObserver,
    ) -> Self {
        Self {
            tenure,
            holder,
            slot,
            observer,
        }
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The term this handle acts for.
    pub fn term(&self) -> Term {
        self.tenure.term
    }

    /// Publish `services` as the running maintainer, if the maintainer still wants
    /// this term in this run and nothing runs. Otherwise stop them and return
    /// `false`.
    pub fn install(&self, services: TermServices) -> bool {
        let term = self.tenure.term;
        assert_eq!(services.term, term, "a handle installs only its own term");
        let mut slot = self.slot();
        let wanted = slot.wanted == Some(self.tenure);
        crate::sometimes!(
            !wanted && slot.wanted.is_some_and(|w| w.term == term),
            "start_attempt_outlived_its_run"
        );
        if wanted && slot.running.is_none() {
            slot.running = Some((self.tenure, services));
            drop(slot);
            emit(
                self.observer.as_ref(),
                &self.holder,
                Event::MaintainerStarted { term },
            );
            return true;
        }
        drop(slot);
        services.stop();
        false
    }

    /// Stop the running services if, and only if, this term's run installed them.
    pub fn stop(&self) {
        let mut slot = self.slot();
        if slot
            .running
            .as_ref()
            .is_some_and(|(t, _)| *t == self.tenure)
        {
            let running = slot.running.take().map(|(_, s)| s);
            drop(slot);
            self.stop_running(running);
        }
    }

    /// Planted `cross_term_stop`: stop whatever runs, whichever term started it.
    #[cfg(feature = "planted-bugs")]
    pub(crate) fn stop_whatever_runs(&self) {
        let running = self.slot().running.take().map(|(_, s)| s);
        self.stop_running(running);
    }

    fn stop_running(&self, running: Option<TermServices>) {
        if let Some(services) = running {
            let affected = services.term;
            services.stop();
            let event = Event::MaintainerStopped {
                asked_by: self.tenure.term,
                affected,
            };
            emit(self.observer.as_ref(), &self.holder, event);
        }
    }
}
