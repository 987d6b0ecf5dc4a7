//! The recorded history of a run: every event of every host, in order.
//!
//! Three sources write here: the nodes (keel's own [`keel::events::Event`]s, via
//! [`HostObserver`]), the database host ([`DbEvent`], what storage actually
//! applied), and the harness ([`HarnessEvent`], the faults it injected). The
//! invariant checkers read nothing else. The vector order is the order in which
//! the single simulation thread observed the events; `at_ms` is simulated time.

use std::sync::{Arc, Mutex, MutexGuard};

use keel::events::{Event, Observer};
use keel::storage::{JobId, JobState, Term};
use serde::{Deserialize, Serialize};

/// What the database host applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DbEvent {
    /// A lease grant: `holder` now leads `term`.
    LeaseGranted {
        /// The new holder.
        holder: String,
        /// The new term.
        term: Term,
        /// The term whose lease was still live when this grant replaced it
        /// (storage re-grants a live lease only to its own holder).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        evicted: Option<Term>,
    },
    /// A renewal extended `holder`'s grant of `term` to a full TTL from now
    /// on storage's clock.
    LeaseRenewed {
        /// The holder.
        holder: String,
        /// The term renewed.
        term: Term,
    },
    /// A resign took effect.
    ResignApplied {
        /// Who resigned.
        holder: String,
        /// The term resigned.
        term: Term,
    },
    /// A term-fenced maintenance write was accepted.
    HeartbeatAccepted {
        /// The writer.
        holder: String,
        /// The term it wrote for.
        term: Term,
    },
    /// An enqueue inserted a new job (not a unique-key duplicate).
    JobInserted {
        /// The new job.
        job: JobId,
    },
    /// The job just inserted asked not to run before `due_ms` on storage's
    /// clock; recorded only for a scheduled request (`scheduled_at`, or
    /// `scheduled_in` from storage's clock as it inserted the job).
    JobScheduled {
        /// The new job.
        job: JobId,
        /// Its due time on storage's clock, in ms since the simulation's epoch.
        due_ms: i64,
    },
    /// A claim moved `job` to running as attempt `attempt`, owned by `owner`.
    ClaimApplied {
        /// The job.
        job: JobId,
        /// The attempt the claim made (the fencing token).
        attempt: u32,
        /// The claiming worker.
        owner: String,
        /// The job's attempt budget as the claim found it (a snooze or a
        /// shutdown's give-back adds one).
        max_attempts: u32,
        /// The claim's first heartbeat, stamped by storage's clock (the
        /// database host's) when it applied the claim, in ms since the
        /// simulation's epoch.
        heartbeat_ms: i64,
        /// When the claimer called storage, in true time (ms since the run
        /// began): the harness's record of the request, not keel's.
        #[serde(default)]
        issued_ms: u64,
    },
    /// A finalize of `(job, attempt)` was applied; the job is now in `state`.
    FinalizeApplied {
        /// The job.
        job: JobId,
        /// The attempt finalized.
        attempt: u32,
        /// The state the job moved to.
        state: JobState,
    },
    /// A fenced effect was written (the first write of `key` for `job`).
    EffectApplied {
        /// The job.
        job: JobId,
        /// The attempt that wrote it.
        attempt: u32,
        /// The effect's key.
        key: String,
    },
    /// The rescuer revoked the stale claim `(job, attempt)`.
    RescueApplied {
        /// The job.
        job: JobId,
        /// The revoked attempt.
        attempt: u32,
        /// When the rescuer called storage, in true time (ms since the run
        /// began).
        #[serde(default)]
        issued_ms: u64,
    },
    /// A cancel moved a job that was not running straight to cancelled.
    CancelApplied {
        /// The job.
        job: JobId,
    },
    /// A periodic firing inserted `job` for slot `slot_ms` of schedule `name`.
    PeriodicInserted {
        /// The schedule.
        name: String,
        /// The slot (wall-clock ms).
        slot_ms: i64,
        /// The job inserted.
        job: JobId,
    },
}

impl DbEvent {
    /// The job this event concerns, if any.
    pub fn job(&self) -> Option<JobId> {
        match self {
            DbEvent::LeaseGranted { .. }
            | DbEvent::LeaseRenewed { .. }
            | DbEvent::ResignApplied { .. }
            | DbEvent::HeartbeatAccepted { .. } => None,
            DbEvent::JobInserted { job }
            | DbEvent::JobScheduled { job, .. }
            | DbEvent::ClaimApplied { job, .. }
            | DbEvent::FinalizeApplied { job, .. }
            | DbEvent::EffectApplied { job, .. }
            | DbEvent::RescueApplied { job, .. }
            | DbEvent::CancelApplied { job }
            | DbEvent::PeriodicInserted { job, .. } => Some(*job),
        }
    }
}

/// What the harness did to the world.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HarnessEvent {
    /// A host's software (re)started; `boot` counts from 1.
    NodeBoot {
        /// Boot number.
        boot: u32,
        /// This host's wall-clock skew.
        skew_ms: i64,
    },
    /// The host was crashed.
    Crash,
    /// The link between this host and `peer` was cut.
    Partition {
        /// The other side.
        peer: String,
    },
    /// The link between this host and `peer` was repaired.
    Repair {
        /// The other side.
        peer: String,
    },
    /// `fail_pct` percent of start hook calls on this host now fail after `delay_ms`.
    HookFault {
        /// How long a hook call takes before it fails.
        delay_ms: u64,
        /// Share of calls that fail, in percent.
        fail_pct: u64,
    },
    /// Start hooks on this host work again.
    HookHealed,
    /// The host's process was frozen (SIGSTOP, a VM freeze).
    Paused,
    /// The host's process runs again, its clocks jumped by the pause.
    Resumed,
    /// A replacement process for `node` started on this host, under `node`'s
    /// name.
    ReplacementStarted {
        /// The node it replaces.
        node: String,
    },
    /// The harness asked the host to restart `what` in place (`maintainer`, or
    /// `runtime` within `deadline_ms`).
    RestartAsked {
        /// Which component.
        what: String,
        /// The shutdown deadline of a runtime restart (0 for the maintainer).
        deadline_ms: u64,
    },
    /// `pct` percent of storage requests now suffer `fault`.
    StorageFault {
        /// `error`, `lost_reply` or `slow:<ms>`.
        fault: String,
        /// Share of requests affected, in percent.
        pct: u64,
    },
    /// Storage serves normally again.
    StorageHealed,
    /// This host's wall clock jumped by `jump_ms` (negative: back).
    ClockJump {
        /// The jump.
        jump_ms: i64,
    },
    /// This host's clocks run `ppm` parts per million fast (negative: slow)
    /// from here on: recorded at 0 for a run's drawn rate and at every change.
    ClockRate {
        /// The rate error.
        ppm: i64,
    },
    /// Faults stopped; liveness must converge from here.
    HealPhase,
    /// A simulated handler running attempt `attempt` of `job` on this host is
    /// about to panic on purpose (recorded just before the panic).
    HandlerPanicInjected {
        /// The job.
        job: JobId,
        /// The attempt.
        attempt: u32,
    },
    /// A simulated loop `name` on this host is about to panic on purpose
    /// (recorded just before the panic).
    LoopPanicInjected {
        /// The loop's name.
        name: String,
    },
    /// At the end of the run, these jobs were not in a terminal state.
    JobsUnfinished {
        /// The unfinished jobs, by id.
        jobs: Vec<JobId>,
    },
    /// The run ended.
    End,
}

/// One recorded event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ev {
    /// From a node's keel runtime.
    Node(Event),
    /// From the database host.
    Db(DbEvent),
    /// From the harness.
    Harness(HarnessEvent),
}

/// An event with its place and time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the history.
    pub seq: usize,
    /// Simulated time in milliseconds since the run started.
    pub at_ms: u64,
    /// The host it happened on (`db` for the database host).
    pub host: String,
    /// What happened.
    #[serde(flatten)]
    pub ev: Ev,
}

impl Record {
    /// The record as one JSON line (no newline).
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"unserializable\":\"{e}\"}}"))
    }
}

/// The shared, append-only history of one run.
#[derive(Clone, Debug, Default)]
pub struct History(Arc<Mutex<Vec<Record>>>);

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    fn records(&self) -> MutexGuard<'_, Vec<Record>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append an event at simulated time `at_ms`.
    ///
    /// The harness reads time between steps and hosts read it during a step, so
    /// the two can disagree by one tick; the record keeps time non-decreasing.
    pub fn push_at(&self, at_ms: u64, host: &str, ev: Ev) {
        let mut records = self.records();
        let at_ms = records.last().map_or(at_ms, |last| last.at_ms.max(at_ms));
        let seq = records.len();
        records.push(Record {
            seq,
            at_ms,
            host: host.to_owned(),
            ev,
        });
    }

    /// Append an event from inside a simulated host, at the simulation's time.
    pub fn push(&self, host: &str, ev: Ev) {
        let at = turmoil::sim_elapsed().unwrap_or_default();
        self.push_at(u64::try_from(at.as_millis()).unwrap_or(u64::MAX), host, ev);
    }

    /// A copy of every record so far.
    pub fn snapshot(&self) -> Vec<Record> {
        self.records().clone()
    }

    /// Reads the records so far in place: a mid-run look need not copy them all.
    pub fn read<R>(&self, f: impl FnOnce(&[Record]) -> R) -> R {
        f(&self.records())
    }

    /// Every record so far, moved out: the end of a run, where a copy would be
    /// the run's largest allocation. Later pushes start a new, unread history.
    pub fn take(&self) -> Vec<Record> {
        std::mem::take(&mut *self.records())
    }
}

/// Where a host's own harness events go: the simulator's shared [`History`],
/// or a chaos worker process's journal file.
pub trait Sink: Send + Sync {
    /// Record `ev` as happening on `host` now.
    fn push(&self, host: &str, ev: Ev);
}

impl Sink for History {
    fn push(&self, host: &str, ev: Ev) {
        History::push(self, host, ev);
    }
}

/// Records one host's keel events into the history.
#[derive(Clone, Debug)]
pub struct HostObserver {
    host: String,
    history: History,
}

impl HostObserver {
    /// An observer for `host`.
    pub fn new(host: &str, history: History) -> Self {
        Self {
            host: host.to_owned(),
            history,
        }
    }
}

impl Observer for HostObserver {
    fn record(&self, event: &Event) {
        self.history.push(&self.host, Ev::Node(event.clone()));
    }
}

/// A stable 64-bit FNV-1a hash of a history's JSON lines: the run's trace hash.
/// Hand-rolled rather than `DefaultHasher`, whose output may change between Rust
/// releases, so recorded hashes stay comparable.
pub fn trace_hash(records: &[Record]) -> u64 {
    let mut hasher = FnvWriter(FNV_OFFSET);
    for r in records {
        // Hashing the JSON as it is written, not a String per record; the
        // bytes are `to_json`'s, so the hash is the same.
        if serde_json::to_writer(&mut hasher, r).is_err() {
            hasher.0 = fnv1a(hasher.0, r.to_json().as_bytes());
        }
        hasher.0 = fnv1a(hasher.0, b"\n");
    }
    hasher.0
}

/// An `io::Write` that folds the bytes written into an FNV-1a hash.
struct FnvWriter(u64);

impl std::io::Write for FnvWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 = fnv1a(self.0, bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// FNV-1a's starting state.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Continue an FNV-1a hash from `hash` over `bytes`; chaining calls hashes the
/// concatenation.
pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0100_0000_01b3;
    bytes
        .iter()
        .fold(hash, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_serialize_flat_and_hash_stably() {
        let h = History::new();
        h.push_at(
            5,
            "n1",
            Ev::Node(Event::TermWon {
                term: Term(3),
                trusted_for_ms: 4_000,
            }),
        );
        h.push_at(
            6,
            "db",
            Ev::Db(DbEvent::LeaseGranted {
                holder: "n1".into(),
                term: Term(3),
                evicted: None,
            }),
        );
        let records = h.snapshot();
        assert_eq!(
            records[0].to_json(),
            r#"{"seq":0,"at_ms":5,"host":"n1","event":"term_won","term":3,"trusted_for_ms":4000}"#
        );
        let back: Record = serde_json::from_str(&records[1].to_json()).expect("parses");
        assert_eq!(back, records[1]);
        assert_eq!(trace_hash(&records), trace_hash(&h.snapshot()));
        assert_ne!(trace_hash(&records), trace_hash(&records[..1]));
        // The streamed hash is the hash of the JSON lines, as it always was.
        let lines: String = records.iter().map(|r| r.to_json() + "\n").collect();
        assert_eq!(trace_hash(&records), fnv1a(FNV_OFFSET, lines.as_bytes()));
    }

    #[test]
    fn job_records_round_trip_as_their_own_kind() {
        let events = [
            Ev::Db(DbEvent::FinalizeApplied {
                job: JobId(2),
                attempt: 3,
                state: JobState::Discarded,
            }),
            Ev::Db(DbEvent::PeriodicInserted {
                name: "report".into(),
                slot_ms: -5,
                job: JobId(4),
            }),
            Ev::Harness(HarnessEvent::JobsUnfinished {
                jobs: vec![JobId(1), JobId(9)],
            }),
            Ev::Harness(HarnessEvent::HandlerPanicInjected {
                job: JobId(1),
                attempt: 1,
            }),
        ];
        let h = History::new();
        for ev in events {
            h.push_at(1, "n1", ev);
        }
        let records = h.snapshot();
        assert_eq!(
            records[0].to_json(),
            r#"{"seq":0,"at_ms":1,"host":"n1","event":"finalize_applied","job":2,"attempt":3,"state":"discarded"}"#
        );
        for r in &records {
            let back: Record = serde_json::from_str(&r.to_json()).expect("parses");
            assert_eq!(&back, r);
        }
    }
}
