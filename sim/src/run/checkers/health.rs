//! What kept a host from reaching storage, and which host each process ran
//! on: the harness's faults read back from the history, for checkers that
//! excuse a node's silence when it could not have spoken.

use std::collections::BTreeMap;

use keel::events::Event;

use crate::run::history::{Ev, HarnessEvent, Record};

/// Each holder id's host, from its `RuntimeStarted`: a replacement process
/// running under a node's name is found on its own host.
#[derive(Default)]
pub(crate) struct Hosts<'a> {
    by_holder: BTreeMap<&'a str, &'a str>,
}

impl<'a> Hosts<'a> {
    pub(crate) fn of(history: &'a [Record]) -> Self {
        let mut out = Hosts::default();
        for r in history {
            out.note(r);
        }
        out
    }

    /// Take in `r` if it starts a process.
    fn note(&mut self, r: &'a Record) {
        if let Ev::Node(Event::RuntimeStarted { holder }) = &r.ev {
            self.by_holder.insert(holder.as_str(), r.host.as_str());
        }
    }

    /// The host a worker's owner id (`holder/queue/slot`) ran on; its node's
    /// name when no `RuntimeStarted` names the holder.
    pub(crate) fn of_owner(&self, owner: &'a str) -> &'a str {
        let holder = owner.split('/').next().unwrap_or(owner);
        self.by_holder
            .get(holder)
            .copied()
            .unwrap_or_else(|| holder.split('#').next().unwrap_or(holder))
    }
}

/// What could keep a live process from reaching storage: per host, when its
/// process ended or began to (crash, shutdown, restart), and the stretches
/// `[from, to]` it was cut off or frozen; and when storage was faulty.
#[derive(Default)]
pub(crate) struct Impaired<'a> {
    /// Per host: stretches cut off from the database or frozen.
    transient: BTreeMap<&'a str, Vec<(u64, u64)>>,
    /// Per host: when a process of it ended or began to.
    ended: BTreeMap<&'a str, Vec<u64>>,
    /// Storage faults, for every node.
    storage: Vec<(u64, u64)>,
    /// Each holder id's host.
    pub(crate) hosts: Hosts<'a>,
}

impl<'a> Impaired<'a> {
    pub(crate) fn of(history: &'a [Record]) -> Self {
        let mut out = Impaired::default();
        let mut open: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        let mut storage_since: Option<u64> = None;
        for r in history {
            out.hosts.note(r);
            let host = r.host.as_str();
            let (opens, closes): (Option<&str>, Option<&str>) = match &r.ev {
                Ev::Harness(HarnessEvent::Partition { .. }) => (Some("cut"), None),
                Ev::Harness(HarnessEvent::Repair { .. }) => (None, Some("cut")),
                Ev::Harness(HarnessEvent::Paused) => (Some("paused"), None),
                Ev::Harness(HarnessEvent::Resumed) => (None, Some("paused")),
                Ev::Harness(HarnessEvent::Crash | HarnessEvent::RestartAsked { .. })
                | Ev::Node(Event::ShutdownBegan { .. }) => {
                    out.ended.entry(host).or_default().push(r.at_ms);
                    (None, None)
                }
                Ev::Harness(HarnessEvent::StorageFault { .. }) => {
                    storage_since.get_or_insert(r.at_ms);
                    (None, None)
                }
                Ev::Harness(HarnessEvent::StorageHealed) => {
                    if let Some(from) = storage_since.take() {
                        out.storage.push((from, r.at_ms));
                    }
                    (None, None)
                }
                _ => (None, None),
            };
            if let Some(kind) = opens {
                open.entry((host, kind)).or_insert(r.at_ms);
            }
            if let Some(kind) = closes {
                if let Some(from) = open.remove(&(host, kind)) {
                    out.transient.entry(host).or_default().push((from, r.at_ms));
                }
            }
        }
        for ((host, _), from) in open {
            out.transient
                .entry(host)
                .or_default()
                .push((from, u64::MAX));
        }
        if let Some(from) = storage_since {
            out.storage.push((from, u64::MAX));
        }
        out
    }

    /// Whether a process of `host` ended or began to (crash, shutdown,
    /// restart) at some instant of `[from_ms, to_ms]`.
    pub(crate) fn ended_within(&self, host: &str, from_ms: u64, to_ms: u64) -> bool {
        self.ended
            .get(host)
            .is_some_and(|at| at.iter().any(|t| (from_ms..=to_ms).contains(t)))
    }

    /// Whether `host` was cut off from the database or frozen, or storage was
    /// faulty, at some instant of `[from_ms, to_ms]`.
    pub(crate) fn during(&self, host: &str, from_ms: u64, to_ms: u64) -> bool {
        let overlaps = |(a, b): &(u64, u64)| *a <= to_ms && *b >= from_ms;
        self.storage.iter().any(overlaps)
            || self
                .transient
                .get(host)
                .is_some_and(|spans| spans.iter().any(overlaps))
    }
}
