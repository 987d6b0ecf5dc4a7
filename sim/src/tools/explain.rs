//! `sim explain`: one run's history as a single self-contained HTML page.
//!
//! A violation report names a few witness records; this page puts them in
//! context. A timeline has one lane per host: leadership terms as coloured
//! bands, job attempts as bars coloured by outcome, faults as marks, and the
//! violation's witnesses circled. Below it, every record sits in a table that
//! filters as you type.
//!
//! The SVG is drawn here rather than in the browser, so the page reads without
//! scripts and tests can check it as text. The inline script only filters,
//! cross-highlights, and records what the browser laid out (`data-rendered` on
//! the body: lanes with a non-empty box), which `ci/explain-check` reads from
//! a headless browser. Nothing is fetched: styles, script and SVG are inline.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use keel::events::Event;
use keel::storage::JobState;

use crate::run::checkers::Violation;
use crate::run::history::{DbEvent, Ev, HarnessEvent, Record};
use crate::run::runner::{RunResult, HARNESS_HOST};
use crate::world::db::DB_HOST;
use crate::world::workload::CLIENT_HOST;

/// Width of the host-name column, px.
const LABEL_W: f64 = 90.0;
/// Width of the plotted time range, px.
const PLOT_W: f64 = 1500.0;
/// Height of the term band at the top of a lane, px.
const TERM_H: f64 = 16.0;
/// Height of one row of job bars, px.
const ROW_H: f64 = 12.0;
/// Job rows a lane may stack before bars share the last row.
const MAX_ROWS: usize = 6;
/// Height of the strip for fault and event marks, px.
const MARK_H: f64 = 18.0;
/// Space above the first lane for the axis, px.
const AXIS_H: f64 = 28.0;

/// What the page header says about the run.
#[derive(Clone, Debug)]
pub struct Meta {
    /// Scenario name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// The planted bug, or `none`.
    pub plant: String,
    /// The storage engine.
    pub storage: String,
    /// The run's trace hash.
    pub trace_hash: u64,
}

/// The page for a finished run.
pub fn render_html(result: &RunResult) -> String {
    let spec = &result.spec;
    let meta = Meta {
        scenario: spec.scenario.name.clone(),
        seed: spec.seed,
        plant: spec.plant.map_or_else(|| "none".into(), |b| b.to_string()),
        storage: spec.storage.to_string(),
        trace_hash: result.trace_hash,
    };
    render(&meta, &result.history, &result.violations)
}

/// Escape `s` for HTML text and attribute values (double- or single-quoted).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A time span on one lane: a term, a job attempt, or a fault in effect.
#[derive(Clone, Debug)]
struct Span {
    host: String,
    start: u64,
    end: u64,
    /// The record that opened it: what a click on it selects.
    seq: usize,
    label: String,
    /// CSS classes after the kind's own.
    class: String,
    title: String,
    /// Fill colour, when the class does not fix it (terms).
    fill: Option<String>,
}

/// A point event on one lane.
#[derive(Clone, Debug)]
struct Mark {
    host: String,
    at: u64,
    seq: usize,
    /// CSS class: which kind of mark.
    kind: &'static str,
    /// The glyph drawn.
    glyph: Glyph,
    title: String,
}

#[derive(Clone, Copy, Debug)]
enum Glyph {
    Cross,
    Diamond,
    Up,
    Down,
    Dot,
    Bolt,
}

/// Everything the timeline draws, derived from the history.
#[derive(Debug, Default)]
struct Model {
    hosts: Vec<String>,
    end_ms: u64,
    terms: Vec<Span>,
    services: Vec<Span>,
    jobs: Vec<Span>,
    faults: Vec<Span>,
    marks: Vec<Mark>,
    /// Global vertical rules: `(at, class, label)`.
    rules: Vec<(u64, &'static str, String)>,
}

/// Node lanes first in numeric order (`n2` before `n10`), then the database,
/// the client and the harness.
fn lane_order(host: &str) -> (u8, usize, String) {
    let rank = match host {
        h if h == DB_HOST => 1,
        h if h == CLIENT_HOST => 2,
        h if h == HARNESS_HOST => 3,
        _ => 0,
    };
    (rank, host.len(), host.to_owned())
}

fn job_class(state: JobState, result: &str) -> &'static str {
    if result != "applied" {
        return "lost";
    }
    match state {
        JobState::Completed => "ok",
        JobState::Retryable | JobState::Available | JobState::Scheduled => "retry",
        JobState::Cancelled | JobState::Discarded => "dead",
        JobState::Running => "open",
    }
}

/// An attempt being run: opened by a claim, closed by its finalize.
struct OpenJob {
    start: u64,
    end: u64,
    seq: usize,
    outcome: Option<String>,
    class: &'static str,
}

impl Model {
    fn build(history: &[Record]) -> Model {
        let mut m = Model {
            end_ms: history.last().map_or(0, |r| r.at_ms).max(1),
            ..Model::default()
        };
        let mut hosts: Vec<String> = history.iter().map(|r| r.host.clone()).collect();
        hosts.sort_by_key(|h| lane_order(h));
        hosts.dedup();
        m.hosts = hosts;

        // Open spans, keyed by host (and term, job or fault identity).
        let mut terms: BTreeMap<String, (u64, u64, usize)> = BTreeMap::new();
        let mut services: BTreeMap<(String, u64), (u64, usize)> = BTreeMap::new();
        let mut jobs: BTreeMap<(String, u64, u32), OpenJob> = BTreeMap::new();
        let mut faults: BTreeMap<(String, String), (u64, usize, String)> = BTreeMap::new();

        for r in history {
            let host = r.host.as_str();
            let at = r.at_ms;
            let mut mark = |kind, glyph, title: String| {
                m.marks.push(Mark {
                    host: r.host.clone(),
                    at,
                    seq: r.seq,
                    kind,
                    glyph,
                    title,
                });
            };
            match &r.ev {
                Ev::Node(e) => match e {
                    Event::TermWon { term, .. } => {
                        if let Some(prev) = terms.remove(host) {
                            m.terms.push(term_span(host, prev, at, "next term won"));
                        }
                        terms.insert(host.to_owned(), (term.0, at, r.seq));
                    }
                    Event::TermLost { term, reason }
                        if terms.get(host).is_some_and(|t| t.0 == term.0) =>
                    {
                        if let Some(prev) = terms.remove(host) {
                            m.terms.push(term_span(host, prev, at, reason));
                        }
                    }
                    Event::MaintainerStarted { term } => {
                        services.insert((host.to_owned(), term.0), (at, r.seq));
                        mark("maint", Glyph::Up, format!("maintainer started for {term}"));
                    }
                    Event::MaintainerStopped { asked_by, affected } => {
                        if let Some((start, seq)) = services.remove(&(host.to_owned(), affected.0))
                        {
                            m.services
                                .push(service_span(host, affected.0, start, at, seq));
                        }
                        let cross = asked_by != affected;
                        mark(
                            if cross { "maint cross" } else { "maint" },
                            Glyph::Down,
                            format!("maintainer of {affected} stopped, asked by {asked_by}"),
                        );
                    }
                    Event::MaintainerStartFailed { term, error, .. } => {
                        mark(
                            "maint fail",
                            Glyph::Dot,
                            format!("start for {term} failed: {error}"),
                        );
                    }
                    Event::MaintainerRetriesExhausted { term } => {
                        mark(
                            "maint fail",
                            Glyph::Cross,
                            format!("gave up starting {term}"),
                        );
                    }
                    Event::ResignRequested { term } => {
                        mark("resign", Glyph::Dot, format!("resign of {term} requested"));
                    }
                    Event::Resigned { term, accepted } => {
                        mark(
                            "resign",
                            Glyph::Down,
                            format!("resigned {term}, accepted: {accepted}"),
                        );
                    }
                    Event::TaskPanicked { task, message } => {
                        mark(
                            "panic",
                            Glyph::Bolt,
                            format!("task {task} panicked: {message}"),
                        );
                    }
                    Event::ShutdownBegan { deadline_ms } => {
                        mark(
                            "shutdown",
                            Glyph::Down,
                            format!("shutdown began, deadline {deadline_ms} ms"),
                        );
                    }
                    Event::ShutdownEnded { aborted, released } => {
                        mark(
                            "shutdown",
                            Glyph::Up,
                            format!("shutdown ended; aborted {aborted:?}, released {released:?}"),
                        );
                    }
                    Event::JobClaimed { job, attempt } => {
                        jobs.insert(
                            (host.to_owned(), job.0, *attempt),
                            OpenJob {
                                start: at,
                                end: at,
                                seq: r.seq,
                                outcome: None,
                                class: "open",
                            },
                        );
                    }
                    Event::HandlerEnded {
                        job,
                        attempt,
                        outcome,
                    } => {
                        if let Some(o) = jobs.get_mut(&(host.to_owned(), job.0, *attempt)) {
                            o.end = at;
                            o.outcome
                                .get_or_insert_with(|| format!("handler {outcome}"));
                        }
                    }
                    Event::ClaimLost { job, attempt } => {
                        if let Some(o) = jobs.get_mut(&(host.to_owned(), job.0, *attempt)) {
                            o.end = at;
                            o.outcome = Some("claim lost".into());
                            o.class = "lost";
                        }
                    }
                    Event::JobFinalized {
                        job,
                        attempt,
                        state,
                        result,
                    } => {
                        if let Some(o) = jobs.remove(&(host.to_owned(), job.0, *attempt)) {
                            let class = if o.class == "lost" {
                                "lost"
                            } else {
                                job_class(*state, result)
                            };
                            let outcome = format!("finalized {state:?} ({result})");
                            m.jobs
                                .push(job_span(host, job.0, *attempt, o, at, outcome, class));
                        }
                    }
                    _ => {}
                },
                Ev::Db(e) => match e {
                    DbEvent::LeaseGranted { holder, term, .. } => {
                        mark(
                            "lease",
                            Glyph::Diamond,
                            format!("lease {term} granted to {holder}"),
                        );
                    }
                    DbEvent::ResignApplied { holder, term } => {
                        mark(
                            "resign",
                            Glyph::Down,
                            format!("resign of {term} by {holder} applied"),
                        );
                    }
                    DbEvent::RescueApplied { job, attempt, .. } => {
                        mark(
                            "rescue",
                            Glyph::Dot,
                            format!("rescued {job} attempt {attempt}"),
                        );
                    }
                    _ => {}
                },
                Ev::Harness(e) => match e {
                    HarnessEvent::NodeBoot { boot, skew_ms } => {
                        if *boot > 1 {
                            mark(
                                "fault boot",
                                Glyph::Up,
                                format!("boot {boot}, skew {skew_ms} ms"),
                            );
                        }
                    }
                    HarnessEvent::Crash => {
                        mark("fault crash", Glyph::Cross, "crashed".into());
                        if let Some(prev) = terms.remove(host) {
                            m.terms.push(term_span(host, prev, at, "crash"));
                        }
                        let keys: Vec<_> =
                            services.keys().filter(|k| k.0 == host).cloned().collect();
                        for k in keys {
                            if let Some((start, seq)) = services.remove(&k) {
                                m.services.push(service_span(host, k.1, start, at, seq));
                            }
                        }
                        let keys: Vec<_> = jobs.keys().filter(|k| k.0 == host).cloned().collect();
                        for k in keys {
                            if let Some(o) = jobs.remove(&k) {
                                let outcome = o.outcome.clone().unwrap_or_else(|| "crashed".into());
                                m.jobs
                                    .push(job_span(host, k.1, k.2, o, at, outcome, "lost"));
                            }
                        }
                    }
                    HarnessEvent::Partition { peer } => {
                        let key = (host.to_owned(), format!("partition {peer}"));
                        faults.insert(key, (at, r.seq, "partition".into()));
                        mark(
                            "fault partition",
                            Glyph::Bolt,
                            format!("link to {peer} cut"),
                        );
                    }
                    HarnessEvent::Repair { peer } => {
                        close_fault(&mut m, &mut faults, host, &format!("partition {peer}"), at);
                    }
                    HarnessEvent::Paused => {
                        let key = (host.to_owned(), "pause".to_owned());
                        faults.insert(key, (at, r.seq, "pause".into()));
                        mark("fault pause", Glyph::Bolt, "process frozen".into());
                    }
                    HarnessEvent::Resumed => close_fault(&mut m, &mut faults, host, "pause", at),
                    HarnessEvent::ReplacementStarted { node } => mark(
                        "fault boot",
                        Glyph::Up,
                        format!("replacement process for {node} started"),
                    ),
                    HarnessEvent::RestartAsked { what, deadline_ms } => mark(
                        "fault restart",
                        Glyph::Up,
                        format!("restart {what} in place (deadline {deadline_ms} ms)"),
                    ),
                    HarnessEvent::HookFault { delay_ms, fail_pct } => {
                        faults.insert((host.to_owned(), "hook".into()), (at, r.seq, "hook".into()));
                        mark(
                            "fault hook",
                            Glyph::Bolt,
                            format!("{fail_pct}% of start hooks fail after {delay_ms} ms"),
                        );
                    }
                    HarnessEvent::HookHealed => close_fault(&mut m, &mut faults, host, "hook", at),
                    HarnessEvent::StorageFault { fault, pct } => {
                        faults.insert(
                            (host.to_owned(), "storage".into()),
                            (at, r.seq, "storage".into()),
                        );
                        mark(
                            "fault storage",
                            Glyph::Bolt,
                            format!("{pct}% of storage requests: {fault}"),
                        );
                    }
                    HarnessEvent::StorageHealed => {
                        close_fault(&mut m, &mut faults, host, "storage", at);
                    }
                    HarnessEvent::ClockJump { jump_ms } => {
                        mark(
                            "fault clock",
                            Glyph::Diamond,
                            format!("wall clock jumped {jump_ms:+} ms"),
                        );
                    }
                    HarnessEvent::ClockRate { ppm } => {
                        mark(
                            "fault clock",
                            Glyph::Diamond,
                            format!("clock rate {ppm:+} ppm"),
                        );
                    }
                    HarnessEvent::HealPhase => {
                        m.rules.push((at, "heal", "heal phase".into()));
                    }
                    HarnessEvent::HandlerPanicInjected { job, attempt } => {
                        mark(
                            "panic",
                            Glyph::Bolt,
                            format!("handler of {job} attempt {attempt} panics"),
                        );
                    }
                    HarnessEvent::LoopPanicInjected { name } => {
                        mark("panic", Glyph::Bolt, format!("loop {name} panics"));
                    }
                    HarnessEvent::JobsUnfinished { jobs } => {
                        if !jobs.is_empty() {
                            mark(
                                "fault unfinished",
                                Glyph::Cross,
                                format!("unfinished at the end: {jobs:?}"),
                            );
                        }
                    }
                    HarnessEvent::End => {}
                },
            }
        }

        let end = m.end_ms;
        for (host, prev) in std::mem::take(&mut terms) {
            m.terms.push(term_span(&host, prev, end, "held at the end"));
        }
        for ((host, term), (start, seq)) in std::mem::take(&mut services) {
            m.services.push(service_span(&host, term, start, end, seq));
        }
        for ((host, job, attempt), o) in std::mem::take(&mut jobs) {
            let outcome = o.outcome.clone().unwrap_or_else(|| "not finalized".into());
            let class = o.class;
            m.jobs
                .push(job_span(&host, job, attempt, o, end, outcome, class));
        }
        for ((host, _), (start, seq, kind)) in std::mem::take(&mut faults) {
            m.faults.push(fault_span(&host, start, end, seq, &kind));
        }
        m
    }
}

fn term_span(host: &str, (term, start, seq): (u64, u64, usize), end: u64, why: &str) -> Span {
    Span {
        host: host.to_owned(),
        start,
        end,
        seq,
        label: format!("T{term}"),
        class: String::new(),
        title: format!("{host} led T{term} from {start} to {end} ms ({why})"),
        fill: Some(format!("hsl({}, 70%, 78%)", (term * 67) % 360)),
    }
}

fn service_span(host: &str, term: u64, start: u64, end: u64, seq: usize) -> Span {
    Span {
        host: host.to_owned(),
        start,
        end,
        seq,
        label: String::new(),
        class: String::new(),
        title: format!("maintainer services of T{term} ran {start}..{end} ms"),
        fill: None,
    }
}

fn job_span(
    host: &str,
    job: u64,
    attempt: u32,
    o: OpenJob,
    end: u64,
    outcome: String,
    class: &str,
) -> Span {
    let end = end.max(o.end);
    Span {
        host: host.to_owned(),
        start: o.start,
        end,
        seq: o.seq,
        label: format!("j{job}/{attempt}"),
        class: class.to_owned(),
        title: format!(
            "job-{job} attempt {attempt} on {host}, {}..{end} ms: {outcome}",
            o.start
        ),
        fill: None,
    }
}

fn fault_span(host: &str, start: u64, end: u64, seq: usize, kind: &str) -> Span {
    Span {
        host: host.to_owned(),
        start,
        end,
        seq,
        label: String::new(),
        class: kind.to_owned(),
        title: format!("{kind} fault on {host}, {start}..{end} ms"),
        fill: None,
    }
}

fn close_fault(
    m: &mut Model,
    open: &mut BTreeMap<(String, String), (u64, usize, String)>,
    host: &str,
    key: &str,
    at: u64,
) {
    if let Some((start, seq, kind)) = open.remove(&(host.to_owned(), key.to_owned())) {
        m.faults.push(fault_span(host, start, at, seq, &kind));
    }
}

/// A round axis step giving about ten ticks over `end_ms`.
fn tick_step(end_ms: u64) -> u64 {
    let raw = (end_ms / 10).max(1);
    let mut step = 1;
    while step * 10 <= raw {
        step *= 10;
    }
    [1, 2, 5, 10]
        .into_iter()
        .map(|k| k * step)
        .find(|s| *s >= raw)
        .unwrap_or(step * 10)
}

/// Where each lane sits: `(top, height, job rows)` per host, and each job's row.
struct Layout {
    lanes: BTreeMap<String, (f64, f64)>,
    job_rows: Vec<usize>,
    height: f64,
}

impl Model {
    fn x(&self, at: u64) -> f64 {
        LABEL_W + PLOT_W * (at as f64) / (self.end_ms as f64)
    }

    fn layout(&self) -> Layout {
        // Greedy rows per host: a bar goes in the first row whose last bar
        // ended (with a 2 px gap) before it starts.
        let mut row_ends: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let mut job_rows = Vec::with_capacity(self.jobs.len());
        for j in &self.jobs {
            let (x0, x1) = (self.x(j.start), self.x(j.end).max(self.x(j.start) + 2.0));
            let ends = row_ends.entry(j.host.as_str()).or_default();
            let row = match ends.iter().position(|e| *e + 2.0 <= x0) {
                Some(i) => i,
                None if ends.len() < MAX_ROWS => {
                    ends.push(0.0);
                    ends.len() - 1
                }
                None => MAX_ROWS - 1,
            };
            if let Some(e) = ends.get_mut(row) {
                *e = e.max(x1);
            }
            job_rows.push(row);
        }
        let mut lanes = BTreeMap::new();
        let mut top = AXIS_H;
        for h in &self.hosts {
            let rows = row_ends.get(h.as_str()).map_or(0, Vec::len);
            let height = TERM_H + MARK_H + ROW_H * rows as f64 + 8.0;
            lanes.insert(h.clone(), (top, height));
            top += height + 4.0;
        }
        Layout {
            lanes,
            job_rows,
            height: top + 4.0,
        }
    }
}

fn glyph_path(g: Glyph) -> &'static str {
    match g {
        Glyph::Cross => "M-5,-5L5,5M5,-5L-5,5",
        Glyph::Diamond => "M0,-6L5,0L0,6L-5,0Z",
        Glyph::Up => "M0,-6L5,4L-5,4Z",
        Glyph::Down => "M0,6L5,-4L-5,-4Z",
        Glyph::Dot => "M-3,0a3,3 0 1,0 6,0a3,3 0 1,0 -6,0",
        Glyph::Bolt => "M1,-7L-4,1L0,1L-1,7L4,-1L0,-1Z",
    }
}

/// The timeline as inline SVG.
fn svg(m: &Model, violations: &[Violation]) -> String {
    let lay = m.layout();
    let width = LABEL_W + PLOT_W + 20.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg id="timeline" width="{width}" height="{h}" viewBox="0 0 {width} {h}" data-x0="{LABEL_W}" data-px-per-ms="{ppm}" role="img" aria-label="timeline">"#,
        h = lay.height,
        ppm = PLOT_W / m.end_ms as f64,
    );
    // Axis.
    let step = tick_step(m.end_ms);
    s.push_str(r#"<g class="axis">"#);
    let mut t = 0;
    while t <= m.end_ms {
        let x = m.x(t);
        let label = if step >= 1000 {
            format!("{}s", t / 1000)
        } else {
            format!("{t}ms")
        };
        let _ = write!(
            s,
            r#"<line x1="{x:.1}" x2="{x:.1}" y1="{y0}" y2="{y1}"/><text x="{x:.1}" y="14">{label}</text>"#,
            y0 = AXIS_H - 6.0,
            y1 = lay.height,
        );
        t += step;
    }
    s.push_str("</g>");

    for host in &m.hosts {
        let Some(&(top, height)) = lay.lanes.get(host) else {
            continue;
        };
        let h = escape(host);
        let _ = write!(
            s,
            r#"<g class="lane" data-host="{h}" transform="translate(0,{top})"><rect class="lane-bg" x="0" y="0" width="{w}" height="{height}"/><text class="lane-label" x="8" y="{ly}">{h}</text>"#,
            w = LABEL_W + PLOT_W,
            ly = height / 2.0 + 4.0,
        );
        for f in m.faults.iter().filter(|f| &f.host == host) {
            span_rect(&mut s, m, f, "fault-span", 0.0, height, None);
        }
        for t in m.terms.iter().filter(|t| &t.host == host) {
            span_rect(&mut s, m, t, "term", 2.0, TERM_H - 2.0, Some(&t.label));
        }
        for sv in m.services.iter().filter(|t| &t.host == host) {
            span_rect(&mut s, m, sv, "services", TERM_H - 4.0, 3.0, None);
        }
        for (j, row) in m
            .jobs
            .iter()
            .zip(&lay.job_rows)
            .filter(|(j, _)| &j.host == host)
        {
            let y = TERM_H + 2.0 + ROW_H * *row as f64;
            span_rect(&mut s, m, j, "job", y, ROW_H - 2.0, Some(&j.label));
        }
        let my = height - MARK_H / 2.0 - 2.0;
        for mk in m.marks.iter().filter(|k| &k.host == host) {
            let _ = write!(
                s,
                r#"<g class="mark {kind}" data-seq="{seq}" transform="translate({x:.1},{my})"><title>{t}</title><path d="{d}"/></g>"#,
                kind = mk.kind,
                seq = mk.seq,
                x = m.x(mk.at),
                t = escape(&format!("#{} {} ms: {}", mk.seq, mk.at, mk.title)),
                d = glyph_path(mk.glyph),
            );
        }
        s.push_str("</g>");
    }

    // Global rules and the violations on top of every lane.
    for (at, class, label) in &m.rules {
        let x = m.x(*at);
        let _ = write!(
            s,
            r#"<g class="rule {class}"><line x1="{x:.1}" x2="{x:.1}" y1="{y0}" y2="{y1}"/><text x="{tx:.1}" y="{ty}">{l}</text></g>"#,
            y0 = AXIS_H - 6.0,
            y1 = lay.height,
            tx = x + 3.0,
            ty = AXIS_H - 8.0,
            l = escape(label),
        );
    }
    for (i, v) in violations.iter().enumerate() {
        let x = m.x(v.at_ms);
        let _ = write!(
            s,
            r#"<g class="violation-marker" data-violation="{i}"><title>{t}</title><line x1="{x:.1}" x2="{x:.1}" y1="{y0}" y2="{y1}"/></g>"#,
            t = escape(&format!(
                "{} violated at {} ms: {}",
                v.invariant, v.at_ms, v.message
            )),
            y0 = AXIS_H - 6.0,
            y1 = lay.height,
        );
        for w in &v.witnesses {
            let Some(&(top, height)) = lay.lanes.get(&w.host) else {
                continue;
            };
            let _ = write!(
                s,
                r#"<circle class="witness" data-seq="{seq}" data-violation="{i}" cx="{x:.1}" cy="{cy:.1}" r="9"><title>{t}</title></circle>"#,
                seq = w.seq,
                x = m.x(w.at_ms),
                cy = top + height / 2.0,
                t = escape(&format!("witness of {}: {}", v.invariant, w.to_json())),
            );
        }
    }
    s.push_str(r#"<line id="cursor" x1="0" x2="0" y1="0" y2="0"/></svg>"#);
    s
}

fn span_rect(
    s: &mut String,
    m: &Model,
    sp: &Span,
    kind: &str,
    y: f64,
    h: f64,
    label: Option<&str>,
) {
    let x0 = m.x(sp.start);
    let w = (m.x(sp.end) - x0).max(2.0);
    let fill = sp
        .fill
        .as_ref()
        .map(|f| format!(r#" style="fill:{}""#, escape(f)))
        .unwrap_or_default();
    let _ = write!(
        s,
        r#"<g class="{kind} {class}" data-seq="{seq}"><title>{t}</title><rect x="{x0:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}"{fill}/>"#,
        class = escape(&sp.class),
        seq = sp.seq,
        t = escape(&sp.title),
    );
    // Labels only where they fit (about 6 px per character).
    if let Some(l) = label.filter(|l| w > 6.5 * l.len() as f64 + 4.0) {
        let _ = write!(
            s,
            r#"<text x="{tx:.1}" y="{ty:.1}">{l}</text>"#,
            tx = x0 + 3.0,
            ty = y + h - 2.0,
            l = escape(l),
        );
    }
    s.push_str("</g>");
}

/// The event name of a record (its JSON `event` tag).
fn event_name(r: &Record) -> String {
    serde_json::to_value(&r.ev)
        .ok()
        .and_then(|v| v.get("event").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

/// The whole page for a run's metadata, history and violations.
pub fn render(meta: &Meta, history: &[Record], violations: &[Violation]) -> String {
    let model = Model::build(history);
    let verdict = if violations.is_empty() {
        "all invariants held".to_owned()
    } else {
        format!("{} violation(s)", violations.len())
    };
    let witness_seqs: std::collections::BTreeSet<usize> = violations
        .iter()
        .flat_map(|v| v.witnesses.iter().map(|w| w.seq))
        .collect();
    let mut p = String::with_capacity(history.len() * 200 + 16_384);
    let title = format!("sim explain: {} seed {}", meta.scenario, meta.seed);
    let _ = write!(
        p,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body data-rendered=\"0\">",
        escape(&title)
    );
    let _ = write!(
        p,
        r#"<header><h1>{t}</h1><dl><dt>scenario</dt><dd>{sc}</dd><dt>seed</dt><dd>{seed}</dd><dt>plant</dt><dd>{pl}</dd><dt>storage</dt><dd>{st}</dd><dt>trace hash</dt><dd><code>{hash:016x}</code></dd><dt>events</dt><dd>{n}</dd><dt>verdict</dt><dd class="verdict {vc}">{verdict}</dd></dl></header>"#,
        t = escape(&title),
        sc = escape(&meta.scenario),
        seed = meta.seed,
        pl = escape(&meta.plant),
        st = escape(&meta.storage),
        hash = meta.trace_hash,
        n = history.len(),
        vc = if violations.is_empty() {
            "clean"
        } else {
            "violated"
        },
    );
    if !violations.is_empty() {
        p.push_str(r#"<section id="violations"><h2>Violations</h2>"#);
        for (i, v) in violations.iter().enumerate() {
            let _ = write!(
                p,
                r#"<div class="violation" data-violation="{i}"><p><b>{inv}</b> at {at} ms: {msg}</p><ul>"#,
                inv = escape(v.invariant),
                at = v.at_ms,
                msg = escape(&v.message),
            );
            for w in &v.witnesses {
                let _ = write!(
                    p,
                    r##"<li><a href="#e{seq}" data-seq="{seq}">#{seq}</a> {at} ms {host}: <code>{json}</code></li>"##,
                    seq = w.seq,
                    at = w.at_ms,
                    host = escape(&w.host),
                    json = escape(&w.to_json()),
                );
            }
            p.push_str("</ul></div>");
        }
        p.push_str("</section>");
    }
    p.push_str(r#"<section id="timeline-box"><h2>Timeline</h2>"#);
    p.push_str(LEGEND);
    p.push_str(r#"<div class="scroll">"#);
    p.push_str(&svg(&model, violations));
    p.push_str("</div></section>");

    p.push_str(r#"<section id="table-box"><h2>Events</h2><p><input id="filter" type="search" placeholder="filter: words all must match, e.g. n2 job_claimed" size="50"> <span id="shown"></span></p><table id="events"><thead><tr><th>seq</th><th>at ms</th><th>host</th><th>event</th><th>record</th></tr></thead><tbody>"#);
    for r in history {
        let w = if witness_seqs.contains(&r.seq) {
            r#" class="witness-row""#
        } else {
            ""
        };
        let _ = write!(
            p,
            r#"<tr id="e{seq}" data-seq="{seq}" data-at="{at}"{w}><td>{seq}</td><td>{at}</td><td>{host}</td><td>{ev}</td><td><code>{json}</code></td></tr>"#,
            seq = r.seq,
            at = r.at_ms,
            host = escape(&r.host),
            ev = escape(&event_name(r)),
            json = escape(&r.to_json()),
        );
    }
    p.push_str("</tbody></table></section>");
    let _ = writeln!(p, "<script>{SCRIPT}</script></body></html>");
    p
}

const LEGEND: &str = r#"<p class="legend"><span class="sw term-sw"></span>term held (band, label T<i>n</i>; dark strip: maintainer services) <span class="sw ok"></span>job completed <span class="sw retry"></span>retry <span class="sw dead"></span>discarded/cancelled <span class="sw lost"></span>lost/stale/crashed <span class="sw open"></span>not finalized <span class="sw fault-sw"></span>fault in effect <span class="sw wit"></span>violation witness. Hover for details; click a mark or a row to link them.</p>"#;

const STYLE: &str = r#"
body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:18px;margin:0 0 6px}h2{font-size:15px;margin:16px 0 6px}
dl{display:flex;flex-wrap:wrap;gap:4px 14px;margin:0}dt{color:#666}dd{margin:0 0 0 -10px;font-weight:600}
.verdict.clean{color:#1b7f2a}.verdict.violated{color:#c62828}
#violations{border:2px solid #c62828;background:#fff3f3;padding:6px 12px;border-radius:4px}
#violations ul{margin:4px 0;padding-left:18px}#violations code{font-size:11px;word-break:break-all}
.scroll{overflow-x:auto;background:#fff;border:1px solid #ddd}
svg text{font-size:10px;fill:#333;pointer-events:none}
.axis line{stroke:#e4e4e4}.axis text{text-anchor:middle;fill:#777}
.lane-bg{fill:#f6f7f9;stroke:#e0e0e0}.lane-label{font-size:13px;font-weight:600}
.term rect{stroke:#555;stroke-width:.5}.services rect{fill:#37474f}
.job rect{stroke:#333;stroke-width:.4}.job text{font-size:9px}
.ok rect,.sw.ok{fill:#66bb6a;background:#66bb6a}.retry rect,.sw.retry{fill:#ffa726;background:#ffa726}
.dead rect,.sw.dead{fill:#9e9e9e;background:#9e9e9e}.lost rect,.sw.lost{fill:#ef5350;background:#ef5350}
.open rect,.sw.open{fill:#9575cd;background:#9575cd}
.fault-span rect{fill:#ffcdd2;opacity:.55}.fault-span.hook rect{fill:#ffe0b2}.fault-span.storage rect{fill:#d1c4e9}
.mark path{fill:#607d8b;stroke:#263238;stroke-width:.6}.mark{cursor:pointer}
.mark.lease path{fill:#42a5f5}.mark.maint path{fill:#26a69a}.mark.cross path,.mark.fail path{fill:#ff7043}
.mark.fault path{fill:#e53935}.mark.crash path{stroke:#b71c1c;stroke-width:2.5}.mark.panic path{fill:#ffeb3b;stroke:#f57f17}
.mark.clock path{fill:#ab47bc}.mark.shutdown path{fill:#8d6e63}.mark.resign path{fill:#90a4ae}
.rule line{stroke:#1b7f2a;stroke-dasharray:4 3}.rule text{fill:#1b7f2a}
.violation-marker line{stroke:#c62828;stroke-width:2;stroke-dasharray:6 3}
.witness{fill:none;stroke:#c62828;stroke-width:2.5;cursor:pointer}
.selected rect,.selected path,circle.selected{stroke:#000!important;stroke-width:2.5!important}
#cursor{stroke:#1565c0;stroke-width:1.5}
.legend .sw{display:inline-block;width:14px;height:10px;border:1px solid #555;margin:0 3px 0 10px;vertical-align:middle}
.sw.term-sw{background:hsl(67,70%,78%)}.sw.fault-sw{background:#ffcdd2}.sw.wit{border:2px solid #c62828;border-radius:50%}
table{border-collapse:collapse;width:100%;background:#fff;font-size:12px}
th,td{border-bottom:1px solid #eee;padding:2px 6px;text-align:left;vertical-align:top}
th{position:sticky;top:0;background:#eceff1}td code{font-size:11px;word-break:break-all}
tr{cursor:pointer}tr:hover{background:#f1f8ff}tr.witness-row{background:#ffebee}tr.selected{background:#fff59d}
"#;

const SCRIPT: &str = r#"
(function () {
  var rows = Array.prototype.slice.call(document.querySelectorAll('#events tbody tr'));
  var texts = rows.map(function (r) { return r.textContent.toLowerCase(); });
  var filter = document.getElementById('filter');
  var shown = document.getElementById('shown');
  var svg = document.getElementById('timeline');
  var cursor = document.getElementById('cursor');
  function apply() {
    var words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    var n = 0;
    rows.forEach(function (r, i) {
      var ok = words.every(function (w) { return texts[i].indexOf(w) >= 0; });
      r.hidden = !ok;
      if (ok) n++;
    });
    shown.textContent = n + ' of ' + rows.length + ' events';
  }
  function select(seq) {
    document.querySelectorAll('.selected').forEach(function (e) { e.classList.remove('selected'); });
    document.querySelectorAll('[data-seq="' + seq + '"]').forEach(function (e) {
      if (e.tagName !== 'A') e.classList.add('selected');
    });
    var row = document.getElementById('e' + seq);
    if (row && svg && cursor) {
      var x = parseFloat(svg.dataset.x0) + parseFloat(row.dataset.at) * parseFloat(svg.dataset.pxPerMs);
      cursor.setAttribute('x1', x); cursor.setAttribute('x2', x);
      cursor.setAttribute('y2', svg.getAttribute('height'));
    }
    return row;
  }
  filter.addEventListener('input', apply);
  rows.forEach(function (r) {
    r.addEventListener('click', function () {
      select(r.dataset.seq);
      var mark = svg && svg.querySelector('[data-seq="' + r.dataset.seq + '"]');
      (mark || cursor).scrollIntoView({ block: 'nearest', inline: 'center' });
    });
  });
  document.querySelectorAll('svg [data-seq], #violations a[data-seq]').forEach(function (m) {
    m.addEventListener('click', function (ev) {
      ev.preventDefault();
      var row = select(m.dataset.seq);
      if (row) { row.hidden = false; row.scrollIntoView({ block: 'center' }); }
    });
  });
  apply();
  var drawn = Array.prototype.filter.call(document.querySelectorAll('svg g.lane'), function (g) {
    var b = g.getBoundingClientRect();
    return b.width > 0 && b.height > 0;
  });
  document.body.dataset.rendered = String(drawn.length);
  document.body.dataset.witnesses = String(document.querySelectorAll('svg .witness').length);
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use keel::storage::{JobId, Term};

    fn rec(seq: usize, at_ms: u64, host: &str, ev: Ev) -> Record {
        Record {
            seq,
            at_ms,
            host: host.into(),
            ev,
        }
    }

    /// Two nodes and the database: n1 leads T1, runs job 7, gets cut off from
    /// the database; the violation names two records.
    fn small() -> (Meta, Vec<Record>, Vec<Violation>) {
        let history = vec![
            rec(
                0,
                0,
                "n1",
                Ev::Harness(HarnessEvent::NodeBoot {
                    boot: 1,
                    skew_ms: 0,
                }),
            ),
            rec(
                1,
                0,
                "n2",
                Ev::Harness(HarnessEvent::NodeBoot {
                    boot: 1,
                    skew_ms: 5,
                }),
            ),
            rec(
                2,
                100,
                "db",
                Ev::Db(DbEvent::LeaseGranted {
                    holder: "n1".into(),
                    term: Term(1),
                    evicted: None,
                }),
            ),
            rec(
                3,
                110,
                "n1",
                Ev::Node(Event::TermWon {
                    term: Term(1),
                    trusted_for_ms: 4_000,
                }),
            ),
            rec(
                4,
                500,
                "n2",
                Ev::Node(Event::JobClaimed {
                    job: JobId(7),
                    attempt: 1,
                }),
            ),
            rec(
                5,
                1_500,
                "n1",
                Ev::Harness(HarnessEvent::Partition { peer: "db".into() }),
            ),
            rec(
                6,
                2_000,
                "n2",
                Ev::Node(Event::JobFinalized {
                    job: JobId(7),
                    attempt: 1,
                    state: JobState::Completed,
                    result: "applied".into(),
                }),
            ),
            rec(
                7,
                4_000,
                "n1",
                Ev::Node(Event::TermLost {
                    term: Term(1),
                    reason: "trust_window_expired".into(),
                }),
            ),
            rec(
                8,
                4_500,
                "n1",
                Ev::Harness(HarnessEvent::Repair { peer: "db".into() }),
            ),
            rec(
                9,
                5_000,
                "n1",
                Ev::Node(Event::TaskPanicked {
                    task: "<script>alert(1)</script>".into(),
                    message: "a & b".into(),
                }),
            ),
        ];
        let violations = vec![Violation {
            invariant: "one_leader_per_term",
            at_ms: 4_000,
            message: "n1 <lost> T1 \"early\"".into(),
            witnesses: vec![history[3].clone(), history[7].clone()],
        }];
        let meta = Meta {
            scenario: "tiny".into(),
            seed: 42,
            plant: "none".into(),
            storage: "mem".into(),
            trace_hash: 0xabc,
        };
        (meta, history, violations)
    }

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("plain n1"), "plain n1");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn tick_steps_are_round() {
        assert_eq!(tick_step(100_000), 10_000);
        assert_eq!(tick_step(35_000), 5_000);
        assert_eq!(tick_step(1), 1);
        assert_eq!(tick_step(150), 20);
    }

    #[test]
    fn page_shows_lanes_terms_jobs_faults_and_witnesses() {
        let (meta, history, violations) = small();
        let html = render(&meta, &history, &violations);
        for host in ["n1", "n2", "db"] {
            assert!(
                html.contains(&format!(r#"<g class="lane" data-host="{host}""#)),
                "lane {host}"
            );
        }
        assert_eq!(html.matches(r#"<g class="lane""#).count(), 3);
        // Nodes come before the database.
        let n1 = html.find(r#"data-host="n1""#).unwrap_or(usize::MAX);
        let db = html.find(r#"data-host="db""#).unwrap_or(0);
        assert!(n1 < db);
        assert!(
            html.contains(r#"<g class="term " data-seq="3">"#),
            "term band"
        );
        assert!(html.contains("n1 led T1 from 110 to 4000 ms (trust_window_expired)"));
        assert!(
            html.contains(r#"<g class="job ok" data-seq="4">"#),
            "job bar"
        );
        assert!(html.contains("job-7 attempt 1 on n2, 500..2000 ms"));
        assert!(html.contains(r#"<g class="fault-span partition" data-seq="5">"#));
        assert!(html.contains(r#"<g class="mark fault partition" data-seq="5""#));
        assert!(html.contains(r#"<circle class="witness" data-seq="3""#));
        assert!(html.contains(r#"<circle class="witness" data-seq="7""#));
        assert!(html.contains(r#"class="violation-marker""#));
        assert!(html.contains(r#"<tr id="e7" data-seq="7" data-at="4000" class="witness-row">"#));
        assert!(html.contains("1 violation(s)"));
        assert!(html.contains("0000000000000abc"));
        // Every record has its row.
        assert_eq!(html.matches("<tr id=\"e").count(), history.len());
    }

    #[test]
    fn page_escapes_text_and_fetches_nothing() {
        let (meta, history, violations) = small();
        let html = render(&meta, &history, &violations);
        assert!(!html.contains("<script>alert"), "raw markup from a record");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("n1 &lt;lost&gt; T1 &quot;early&quot;"));
        assert_eq!(html.matches("<script>").count(), 1, "only our own script");
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(!html.contains(" src=") && !html.contains("<link"));
    }

    #[test]
    fn open_spans_end_with_the_run_and_crashes_cut_them() {
        let history = vec![
            rec(
                0,
                0,
                "n1",
                Ev::Node(Event::TermWon {
                    term: Term(2),
                    trusted_for_ms: 4_000,
                }),
            ),
            rec(
                1,
                10,
                "n1",
                Ev::Node(Event::JobClaimed {
                    job: JobId(1),
                    attempt: 2,
                }),
            ),
            rec(2, 50, "n1", Ev::Harness(HarnessEvent::Crash)),
            rec(
                3,
                60,
                "n2",
                Ev::Node(Event::TermWon {
                    term: Term(3),
                    trusted_for_ms: 4_000,
                }),
            ),
            rec(4, 90, "sim", Ev::Harness(HarnessEvent::End)),
        ];
        let m = Model::build(&history);
        assert_eq!(m.hosts, ["n1", "n2", "sim"]);
        let spans: Vec<_> = m
            .terms
            .iter()
            .map(|t| (t.host.as_str(), t.start, t.end))
            .collect();
        assert_eq!(spans, [("n1", 0, 50), ("n2", 60, 90)]);
        assert_eq!(m.jobs.len(), 1);
        assert_eq!((m.jobs[0].end, m.jobs[0].class.as_str()), (50, "lost"));
    }
}
