//! Graceful shutdown: a [`ShutdownToken`] to signal it and a [`TaskRegistry`] to
//! wait for it.
//!
//! Every task the runtime spawns is named and tracked. At shutdown,
//! [`TaskRegistry::join_all`] waits for them **at most** the deadline: tasks that
//! finish are reported as finished, tasks that panicked are reported with their
//! panic message (a panic is never dropped), and tasks still running at the
//! deadline are aborted and reported by name. A registry built
//! [`with_observer`](TaskRegistry::with_observer) also reports each panic the
//! moment it happens, as an [`Event::TaskPanicked`].
//!
//! ```
//! use std::time::Duration;
//! use keel::clock::SystemClock;
//! use keel::shutdown::{ShutdownToken, TaskRegistry};
//! # async fn demo() {
//! let token = ShutdownToken::new();
//! let tasks = TaskRegistry::new(token.clone());
//! let t = token.clone();
//! tasks.spawn("ticker", async move { t.wait().await });
//! token.trigger();
//! let report = tasks.join_all(&SystemClock::new(), Duration::from_secs(1)).await;
//! assert!(report.is_clean());
//! # }
//! ```

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::events::{emit, Event, SharedObserver};

/// A cloneable shutdown signal. Children are triggered with their parent.
#[derive(Clone, Debug, Default)]
pub struct ShutdownToken(CancellationToken);

impl ShutdownToken {
    /// A new, untriggered token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Signal shutdown to this token and all its children. Idempotent.
    pub fn trigger(&self) {
        self.0.cancel();
    }

    /// Whether shutdown was signalled.
    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Wait until shutdown is signalled.
    pub async fn wait(&self) {
        self.0.cancelled().await;
    }

    /// A token triggered with this one but also triggerable on its own.
    pub fn child(&self) -> ShutdownToken {
        ShutdownToken(self.0.child_token())
    }
}

/// How a tracked task ended, as reported by [`TaskRegistry::join_all`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinReport {
    /// Tasks that returned on their own.
    pub finished: Vec<String>,
    /// Tasks that panicked, with the panic message.
    pub panicked: Vec<(String, String)>,
    /// Tasks still running at the deadline, which were aborted.
    pub aborted: Vec<String>,
}

impl JoinReport {
    /// Nothing panicked and nothing had to be aborted.
    pub fn is_clean(&self) -> bool {
        self.panicked.is_empty() && self.aborted.is_empty()
    }
}

struct Tracked {
    name: String,
    handle: JoinHandle<Option<String>>,
}

/// Named, tracked tasks joined with one deadline. See the [module docs](self).
#[derive(Clone)]
pub struct TaskRegistry {
    token: ShutdownToken,
    tasks: Arc<Mutex<Vec<Tracked>>>,
    /// Where a panic is reported the moment it happens, with the node's name.
    observer: Option<(SharedObserver, String)>,
}

impl std::fmt::Debug for TaskRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskRegistry")
            .field("tasks", &self.len())
            .finish()
    }
}

impl TaskRegistry {
    /// An empty registry whose tasks shut down with `token`.
    pub fn new(token: ShutdownToken) -> Self {
        Self {
            token,
            tasks: Arc::default(),
            observer: None,
        }
    }

    /// Report every panic to `observer` as [`Event::TaskPanicked`] when it
    /// happens, so a panic in a task nobody joins yet is still seen.
    pub fn with_observer(mut self, observer: SharedObserver, node: impl Into<String>) -> Self {
        self.observer = Some((observer, node.into()));
        self
    }

    /// A separate registry for tasks that stop with `token`, reporting panics
    /// where this one does.
    pub fn child(&self, token: ShutdownToken) -> TaskRegistry {
        TaskRegistry {
            token,
            tasks: Arc::default(),
            observer: self.observer.clone(),
        }
    }

    /// The token the registry's tasks should watch.
    pub fn token(&self) -> &ShutdownToken {
        &self.token
    }

    fn tasks(&self) -> MutexGuard<'_, Vec<Tracked>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawn a tracked task. A panic inside it is caught and reported by `join_all`
    /// instead of tearing down the runtime or vanishing.
    pub fn spawn<F>(&self, name: impl Into<String>, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let name = name.into();
        let observer = self.observer.clone();
        let task = name.clone();
        #[cfg(feature = "coverage")]
        let token = self.token.clone();
        let handle = tokio::spawn(async move {
            let panicked = CatchUnwind(Box::pin(fut)).await;
            #[cfg(feature = "coverage")]
            crate::sometimes!(
                panicked.is_some() && token.is_triggered(),
                "panic_during_shutdown"
            );
            if let (Some(message), Some((observer, node))) = (&panicked, &observer) {
                let event = Event::TaskPanicked {
                    task,
                    message: message.clone(),
                };
                emit(observer.as_ref(), node, event);
            }
            panicked
        });
        self.tasks().push(Tracked { name, handle });
    }

    /// Number of tasks tracked and not yet joined.
    pub fn len(&self) -> usize {
        self.tasks().len()
    }

    /// Whether no task is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Abort every tracked task without waiting. Reports nothing; use `join_all`
    /// where the outcome matters.
    pub fn abort_all(&self) {
        for t in self.tasks().drain(..) {
            t.handle.abort();
        }
    }

    /// Wait for every tracked task, for at most `deadline` in total; abort and
    /// report the stragglers. Does not trigger the token: trigger it first.
    pub async fn join_all(&self, clock: &dyn Clock, deadline: Duration) -> JoinReport {
        let tasks: Vec<Tracked> = std::mem::take(&mut *self.tasks());
        let expires = clock.monotonic() + deadline;
        let mut report = JoinReport::default();
        for mut t in tasks {
            let left = expires.saturating_duration_since(clock.monotonic());
            let outcome = tokio::select! {
                biased;
                r = &mut t.handle => Some(r),
                () = clock.sleep(left) => None,
            };
            match outcome {
                Some(Ok(None)) => report.finished.push(t.name),
                Some(Ok(Some(panic))) => report.panicked.push((t.name, panic)),
                Some(Err(e)) if e.is_panic() => report
                    .panicked
                    .push((t.name, panic_message(e.into_panic()))),
                Some(Err(_)) => report.aborted.push(t.name),
                None => {
                    t.handle.abort();
                    report.aborted.push(t.name);
                }
            }
        }
        for (name, msg) in &report.panicked {
            tracing::error!(task = %name, panic = %msg, "tracked task panicked");
        }
        for name in &report.aborted {
            tracing::warn!(task = %name, "tracked task outlived the shutdown deadline; aborted");
        }
        report
    }
}

/// Render a panic payload as text.
pub fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "panic with a non-string payload".to_owned(),
        },
    }
}

/// Runs a future, turning a panic during a poll into `Some(message)`.
pub struct CatchUnwind<F>(pub Pin<Box<F>>);

impl<F: Future<Output = ()>> Future for CatchUnwind<F> {
    type Output = Option<String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => Poll::Ready(None),
            Err(payload) => Poll::Ready(Some(panic_message(payload))),
        }
    }
}

/// Run `fut`, turning a panic during any of its polls into `Err(message)`.
pub async fn catch_panic<F: Future>(fut: F) -> Result<F::Output, String> {
    CatchPanic(Box::pin(fut)).await
}

struct CatchPanic<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => Poll::Ready(Err(panic_message(payload))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    #[tokio::test(start_paused = true)]
    async fn join_all_reports_finished_panicked_and_aborted_by_name() {
        let token = ShutdownToken::new();
        let tasks = TaskRegistry::new(token.clone());
        let t = token.clone();
        tasks.spawn("polite", async move { t.wait().await });
        tasks.spawn("panicky", async { panic!("boom") });
        tasks.spawn("stubborn", async {
            tokio::time::sleep(Duration::from_secs(3600)).await
        });
        token.trigger();
        let clock = SystemClock::new();
        let started = clock.monotonic();
        let report = tasks.join_all(&clock, Duration::from_secs(2)).await;
        assert!(clock.monotonic() - started <= Duration::from_secs(2));
        assert_eq!(report.finished, vec!["polite".to_owned()]);
        assert_eq!(
            report.panicked,
            vec![("panicky".to_owned(), "boom".to_owned())]
        );
        assert_eq!(report.aborted, vec!["stubborn".to_owned()]);
        assert!(!report.is_clean());
        assert!(tasks.is_empty());
    }

    #[derive(Default)]
    struct Seen(std::sync::Mutex<Vec<Event>>);

    impl crate::events::Observer for Seen {
        fn record(&self, event: &Event) {
            self.0.lock().expect("lock").push(event.clone());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_is_reported_when_it_happens_by_children_too() {
        let seen = Arc::new(Seen::default());
        let tasks = TaskRegistry::new(ShutdownToken::new()).with_observer(seen.clone(), "n1");
        let child = tasks.child(ShutdownToken::new());
        child.spawn("service_loop", async { panic!("bad tick") });
        tokio::time::sleep(Duration::from_millis(1)).await;
        let events = seen.0.lock().expect("lock").clone();
        assert_eq!(
            events,
            vec![Event::TaskPanicked {
                task: "service_loop".into(),
                message: "bad tick".into()
            }]
        );
        assert!(tasks.is_empty(), "children track their own tasks");
        assert_eq!(child.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn child_token_follows_parent_but_not_the_reverse() {
        let parent = ShutdownToken::new();
        let child = parent.child();
        child.trigger();
        assert!(!parent.is_triggered());
        let child2 = parent.child();
        parent.trigger();
        assert!(child2.is_triggered());
    }
}
