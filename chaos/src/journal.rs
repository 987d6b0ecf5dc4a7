//! The history of a chaos run: each process appends the simulator's own
//! [`Record`]s to a journal file of its own, and [`merge`] reads them back as
//! one history the simulator's checkers judge unchanged.
//!
//! One JSON line per event, written with a single `write` on a file opened for
//! appending, so a process killed with SIGKILL leaves every line it finished
//! and at most one torn line at the end, which [`merge`] drops and counts.
//! Each line carries two times:
//!
//! ```text
//! {"seq":7,"at_ms":15012,"host":"n2","event":"term_won","term":3,"trusted_for_ms":3998,"clock_ms":1767225915012}
//!           ^ the machine's true time since the run began      the process's own (skewed) wall clock ^
//! ```
//!
//! All processes run on one machine, so the machine's clock orders their
//! events; `clock_ms` is what the process believed, for the witnesses.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use keel::clock::SharedClock;
use keel::events::{Event, Observer};
use serde::{Deserialize, Serialize};
use sim::run::history::{Ev, Record, Sink};

/// One journal line: a record, its true time in µs since the run began (the
/// order a merge keeps), and the writer's own wall clock.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    #[serde(flatten)]
    record: Record,
    #[serde(default)]
    at_us: i64,
    clock_ms: i64,
}

/// The machine's wall clock in Unix ms: the true time of a chaos run.
pub fn machine_now_ms() -> i64 {
    machine_now_us() / 1000
}

/// The machine's wall clock in Unix µs.
// Real processes on one machine: its clock is the one every journal shares.
#[allow(clippy::disallowed_methods)]
pub fn machine_now_us() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

/// One process's journal. Also an [`Observer`], so a keel runtime records its
/// events into it directly.
pub struct Journal {
    host: String,
    /// The run's start on the machine's clock, in Unix ms.
    epoch_unix_ms: i64,
    /// The process's own clock (skewed, jumping), read beside the true time.
    clock: SharedClock,
    file: Mutex<File>,
    seq: AtomicUsize,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Append to `path` (created if missing) as `host`, for a run that began
    /// at `epoch_unix_ms` on the machine's clock.
    pub fn open(
        path: &Path,
        host: &str,
        epoch_unix_ms: i64,
        clock: SharedClock,
    ) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            host: host.to_owned(),
            epoch_unix_ms,
            clock,
            file: Mutex::new(file),
            seq: AtomicUsize::new(0),
        })
    }

    /// Append `ev`, stamped now. A write error is reported to `tracing`, not
    /// to the caller: a runtime's observer must not fail, and the harness
    /// counts what the journal holds.
    pub fn push(&self, ev: Ev) {
        self.push_as(&self.host, ev);
    }

    /// Append `ev` as happening on `host`: the harness's journal records what
    /// it did to each process (kills, pauses, jumps) under that process's name.
    pub fn push_as(&self, host: &str, ev: Ev) {
        let at_us = machine_now_us().saturating_sub(self.epoch_unix_ms * 1000);
        let line = Line {
            record: Record {
                seq: self.seq.fetch_add(1, Ordering::SeqCst),
                at_ms: u64::try_from(at_us / 1000).unwrap_or(0),
                host: host.to_owned(),
                ev,
            },
            at_us,
            clock_ms: self.clock.now().as_millis(),
        };
        let mut text = match serde_json::to_string(&line) {
            Ok(text) => text,
            Err(e) => return tracing::warn!(error = %e, "journal: unserializable event"),
        };
        text.push('\n');
        // One write per line: a kill leaves whole lines and at most one torn.
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(text.as_bytes()) {
            tracing::warn!(error = %e, host = %self.host, "journal: write failed");
        }
    }
}

impl Sink for Journal {
    fn push(&self, host: &str, ev: Ev) {
        self.push_as(host, ev);
    }
}

impl Observer for Journal {
    fn record(&self, event: &Event) {
        self.push(Ev::Node(event.clone()));
    }
}

/// The journals of a run read back as one history.
#[derive(Debug, Default)]
pub struct Merged {
    /// Every record, in true-time order, `seq` renumbered from 0.
    pub records: Vec<Record>,
    /// Each record's writer's own wall clock, by index into `records`.
    pub clock_ms: Vec<i64>,
    /// Lines dropped: a torn last line per file (a process killed mid-write).
    pub torn: usize,
}

/// A journal line that is not a record, other than a torn last line.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A complete line did not parse: the journal is not one this harness wrote.
    #[error("{}:{line}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// The parser's complaint.
        reason: String,
    },
}

/// Read `paths` into one history ordered by true time (ties: file order, then
/// each file's own order). A last line without its newline is a torn write and
/// is dropped; any other bad line is an error naming its file and line.
pub fn merge(paths: &[PathBuf]) -> Result<Merged, MergeError> {
    merge_with(paths, Vec::new())
}

/// [`merge`], with `extra` events from elsewhere (storage's, read from the
/// database: `(µs since the run began, host, event)`) placed by their time;
/// at equal times they come first.
pub fn merge_with(paths: &[PathBuf], extra: Vec<(i64, String, Ev)>) -> Result<Merged, MergeError> {
    let mut all: Vec<(i64, usize, usize, Line)> = extra
        .into_iter()
        .enumerate()
        .map(|(i, (at_us, host, ev))| {
            let at_ms = u64::try_from(at_us.max(0) / 1000).unwrap_or(0);
            let record = Record {
                seq: 0,
                at_ms,
                host,
                ev,
            };
            (
                at_us,
                0,
                i,
                Line {
                    record,
                    at_us,
                    clock_ms: 0,
                },
            )
        })
        .collect();
    let mut torn = 0;
    for (file_index, path) in paths.iter().enumerate() {
        let text = std::fs::read_to_string(path).map_err(|source| MergeError::Read {
            path: path.clone(),
            source,
        })?;
        let complete = match text.rfind('\n') {
            Some(end) => &text[..=end],
            None => "",
        };
        torn += usize::from(complete.len() < text.len());
        for (i, raw) in complete.lines().enumerate() {
            let line: Line = serde_json::from_str(raw).map_err(|e| MergeError::Corrupt {
                path: path.clone(),
                line: i + 1,
                reason: e.to_string(),
            })?;
            all.push((line.at_us, file_index + 1, i, line));
        }
    }
    all.sort_by_key(|(at, file, i, _)| (*at, *file, *i));
    let mut merged = Merged {
        torn,
        ..Merged::default()
    };
    for (seq, (_, _, _, mut line)) in all.into_iter().enumerate() {
        line.record.seq = seq;
        merged.records.push(line.record);
        merged.clock_ms.push(line.clock_ms);
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keel::clock::{ManualClock, Timestamp};
    use keel::storage::Term;

    use super::*;

    /// One epoch for every journal of a test, as the harness hands one to
    /// every process of a run.
    fn epoch() -> i64 {
        static EPOCH: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
        *EPOCH.get_or_init(machine_now_ms)
    }

    fn journal(dir: &Path, host: &str, clock_ms: i64) -> (PathBuf, Journal) {
        let path = dir.join(format!("{host}.jsonl"));
        let clock = Arc::new(ManualClock::new(Timestamp(clock_ms)));
        let j = Journal::open(&path, host, epoch(), clock).expect("open");
        (path, j)
    }

    #[test]
    fn journals_merge_in_true_time_and_a_torn_last_line_is_dropped() {
        let dir = tempfile::tempdir().expect("dir");
        let (a_path, a) = journal(dir.path(), "n1", 5_000);
        let (b_path, b) = journal(dir.path(), "n2", -7_000);
        a.record(&Event::TermWon {
            term: Term(1),
            trusted_for_ms: 4_000,
        });
        std::thread::sleep(std::time::Duration::from_millis(5));
        b.record(&Event::TermLost {
            term: Term(0),
            reason: "shutdown".into(),
        });
        // A process killed in the middle of its next line.
        let mut f = OpenOptions::new().append(true).open(&b_path).expect("open");
        f.write_all(b"{\"seq\":1,\"at_ms\":9").expect("write");
        let merged = merge(&[a_path, b_path]).expect("merge");
        assert_eq!(merged.torn, 1);
        let hosts: Vec<_> = merged.records.iter().map(|r| r.host.as_str()).collect();
        assert_eq!(hosts, ["n1", "n2"]);
        assert_eq!(merged.records[1].seq, 1, "renumbered");
        assert_eq!(merged.clock_ms, [5_000, -7_000], "each writer's own clock");
        assert!(merged.records[0].at_ms <= merged.records[1].at_ms);
    }

    #[test]
    fn a_bad_line_before_the_end_names_its_file_and_line() {
        let dir = tempfile::tempdir().expect("dir");
        let (path, j) = journal(dir.path(), "n1", 0);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"not json\n").expect("write");
        j.record(&Event::TermWon {
            term: Term(1),
            trusted_for_ms: 1,
        });
        let err = merge(&[path]).expect_err("corrupt");
        assert!(err.to_string().contains("n1.jsonl:1"), "{err}");
    }

    /// The checkers judge a merged history as they judge a simulated one: a
    /// maintainer starting a term its node already lost, across two journals.
    #[test]
    fn the_simulators_checkers_judge_a_merged_history() {
        let dir = tempfile::tempdir().expect("dir");
        let (a_path, a) = journal(dir.path(), "n1", 0);
        let (b_path, b) = journal(dir.path(), "n2", 0);
        a.record(&Event::TermWon {
            term: Term(1),
            trusted_for_ms: 4_000,
        });
        b.record(&Event::TermWon {
            term: Term(2),
            trusted_for_ms: 4_000,
        });
        a.record(&Event::TermLost {
            term: Term(1),
            reason: "lease_moved_on".into(),
        });
        std::thread::sleep(std::time::Duration::from_millis(60));
        a.record(&Event::MaintainerStartAttempt {
            term: Term(1),
            attempt: 2,
        });
        let merged = merge(&[a_path, b_path]).expect("merge");
        let checker = sim::run::checkers::by_name("no_start_after_term_lost").expect("checker");
        let ctx = sim::run::runner::check_ctx(
            &sim::world::node::Timing::standard(),
            &scenarios::by_name("zombies").expect("scenario"),
            merged.records.last().map_or(0, |r| r.at_ms),
        );
        let found = checker.check(&merged.records, &ctx);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].invariant, "no_start_after_term_lost");
    }
}
