//! The dashboard's pages and actions. maud escapes every value it renders.

use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use keel::admin::JobDetail;
use keel::storage::{JobFilter, JobId, JobState, StorageError};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;

use super::{same_secret, text, App, REFRESH_SECS};
use crate::render::{admin_said, cancel_said, one_line, span_ms, time, time_or_dash};

/// Jobs per page.
const PAGE_JOBS: u32 = 50;

const STYLE: &str = include_str!("style.css");

fn storage_failed(e: StorageError) -> Response {
    let status = match e {
        StorageError::Invalid { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    text(status, format!("{e}\n"))
}

/// Every page: the navigation, an optional notice, and auto-refresh.
fn layout(title: &str, refresh: bool, notice: Option<&str>, body: Markup) -> Response {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if refresh { meta http-equiv="refresh" content=(REFRESH_SECS); }
                title { (title) " · keel" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                nav {
                    strong { "keel" }
                    a href="/" { "Queues" }
                    a href="/jobs" { "Jobs" }
                    a href="/leader" { "Leader" }
                    a href="/periodic" { "Periodic" }
                    a href="/metrics" { "Metrics" }
                }
                main {
                    h1 { (title) }
                    @if let Some(notice) = notice { p.notice role="status" { (notice) } }
                    (body)
                }
            }
        }
    };
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page.into_string(),
    )
        .into_response()
}

#[derive(Deserialize, Default)]
pub(crate) struct Refresh {
    refresh: Option<String>,
    done: Option<String>,
}

impl Refresh {
    fn on(&self) -> bool {
        self.refresh.as_deref() != Some("off")
    }
}

fn state_cell(state: JobState) -> Markup {
    html! { span class=(format!("state {}", state.as_str())) { (state.as_str()) } }
}

pub(crate) async fn queues(State(app): State<Arc<App>>, Query(q): Query<Refresh>) -> Response {
    let queues = match app.admin.queues().await {
        Ok(queues) => queues,
        Err(e) => return storage_failed(e),
    };
    let body = html! {
        @if queues.is_empty() { p { "No queue has jobs or settings yet." } }
        @else {
            table #queues {
                thead { tr {
                    th { "queue" } th { "status" } th { "workers" }
                    @for s in JobState::ALL { th { (s.as_str()) } }
                    @if !app.read_only { th { "action" } }
                } }
                tbody { @for queue in &queues { tr {
                    td { a href={ "/jobs?queue=" (queue.name) } { (queue.name) } }
                    td { @if queue.paused { span.state.paused { "paused" } } @else { "active" } }
                    td { (queue.workers.map_or_else(|| "default".to_owned(), |w| w.to_string())) }
                    @for s in JobState::ALL {
                        td.num { a href={ "/jobs?queue=" (queue.name) "&state=" (s.as_str()) } { (queue.counts.get(s)) } }
                    }
                    @if !app.read_only { td {
                        form method="post" action={ "/queues/" (queue.name) "/" (if queue.paused { "resume" } else { "pause" }) } {
                            input type="hidden" name="csrf" value=(app.csrf);
                            button type="submit" { (if queue.paused { "Resume" } else { "Pause" }) }
                        }
                    } }
                } } }
            }
        }
    };
    layout("Queues", q.on(), q.done.as_deref(), body)
}

#[derive(Deserialize, Default)]
pub(crate) struct JobsQuery {
    state: Option<String>,
    queue: Option<String>,
    kind: Option<String>,
    before: Option<u64>,
    refresh: Option<String>,
}

/// `""` and absent are the same: no filter.
fn filled(value: &Option<String>) -> Option<String> {
    value.clone().filter(|v| !v.is_empty())
}

pub(crate) async fn jobs(State(app): State<Arc<App>>, Query(q): Query<JobsQuery>) -> Response {
    let state = match filled(&q.state)
        .map(|s| JobState::parse(&s).ok_or(s))
        .transpose()
    {
        Ok(state) => state,
        Err(s) => return text(StatusCode::BAD_REQUEST, format!("unknown state {s:?}\n")),
    };
    let filter = JobFilter {
        states: state.into_iter().collect(),
        queue: filled(&q.queue),
        kind: filled(&q.kind),
        before: q.before.map(JobId),
        limit: PAGE_JOBS,
    };
    let page = match app.admin.jobs(filter.clone()).await {
        Ok(page) => page,
        Err(e) => return storage_failed(e),
    };
    let older = page.next.map(|next| {
        format!(
            "/jobs?state={}&queue={}&kind={}&before={}",
            state.map_or("", |s| s.as_str()),
            encode(filter.queue.as_deref().unwrap_or("")),
            encode(filter.kind.as_deref().unwrap_or("")),
            next.0
        )
    });
    let body = html! {
        form.filters method="get" action="/jobs" {
            label { "state " select name="state" {
                option value="" { "any" }
                @for s in JobState::ALL {
                    option value=(s.as_str()) selected[state == Some(s)] { (s.as_str()) }
                }
            } }
            label { "queue " input name="queue" value=(filter.queue.as_deref().unwrap_or("")); }
            label { "kind " input name="kind" value=(filter.kind.as_deref().unwrap_or("")); }
            button type="submit" { "Filter" }
        }
        @if page.jobs.is_empty() { p { "No job matches." } }
        @else {
            table #jobs {
                thead { tr {
                    th { "id" } th { "state" } th { "queue" } th { "kind" } th { "attempt" }
                    th { "scheduled" } th { "last error" }
                } }
                tbody { @for j in &page.jobs { tr {
                    td { a href={ "/jobs/" (j.id.0) } { (j.id.0) } }
                    td { (state_cell(j.state)) }
                    td { (j.queue) }
                    td { (j.kind) }
                    td.num { (j.attempt) "/" (j.max_attempts) }
                    td { (time(j.scheduled_at)) }
                    td.error { (j.errors.last().map_or_else(String::new, |e| one_line(e, 80))) }
                } } }
            }
        }
        @if let Some(older) = older { p { a rel="next" href=(older) { "Older jobs →" } } }
    };
    let on = q.refresh.as_deref() != Some("off") && q.before.is_none();
    layout("Jobs", on, None, body)
}

/// Percent-encode a query value (names are plain, but a filter may not be).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

async fn detail(app: &App, id: u64) -> Result<JobDetail, Response> {
    match app.admin.job(JobId(id)).await {
        Ok(Some(detail)) => Ok(detail),
        Ok(None) => Err(text(StatusCode::NOT_FOUND, format!("no job {id}\n"))),
        Err(e) => Err(storage_failed(e)),
    }
}

/// The actions a job in `state` offers.
fn actions(state: JobState) -> &'static [&'static str] {
    match state {
        JobState::Running => &["cancel"],
        s if s.is_terminal() => &["retry"],
        _ => &["retry", "cancel", "discard"],
    }
}

pub(crate) async fn job(
    State(app): State<Arc<App>>,
    Path(id): Path<u64>,
    Query(q): Query<Refresh>,
) -> Response {
    let detail = match detail(&app, id).await {
        Ok(d) => d,
        Err(response) => return response,
    };
    let j = &detail.job;
    let body = html! {
        dl.fields {
            dt { "state" } dd { (state_cell(j.state)) }
            dt { "kind" } dd { (j.kind) }
            dt { "queue" } dd { a href={ "/jobs?queue=" (j.queue) } { (j.queue) } }
            dt { "attempt" } dd { (j.attempt) " of " (j.max_attempts) }
            dt { "priority" } dd { (j.priority) }
            dt { "created" } dd { (time(j.created_at)) }
            dt { "scheduled" } dd { (time(j.scheduled_at)) }
            dt { "finished" } dd { (time_or_dash(j.finalized_at)) }
            @if let Some(owner) = &j.owner { dt { "running on" } dd { (owner) ", last heartbeat " (time_or_dash(j.heartbeat_at)) } }
            @if j.cancel_requested { dt { "cancel" } dd { "requested: its worker stops at its next heartbeat" } }
            @if let Some(key) = &j.unique_key { dt { "unique key" } dd { (key) } }
        }
        @if !app.read_only {
            p.actions { @for action in actions(j.state) {
                a.button href={ "/jobs/" (j.id.0) "/confirm/" (action) } { (action) }
            } }
        }
        h2 { "Attempts" }
        @if j.attempts.is_empty() { p { "Not attempted yet." } }
        @else {
            ol.timeline #attempts { @for a in &j.attempts {
                li class=(a.outcome.map_or("running", |o| o.as_str())) {
                    strong { "#" (a.attempt) " " (a.outcome.map_or("running", |o| o.as_str())) }
                    " on " (a.owner) ", started " (time(a.started_at))
                    @if let Some(end) = a.ended_at { ", took " (span_ms(end.0 - a.started_at.0)) }
                    @if let Some(error) = &a.error { pre.error { (error) } }
                }
            } }
        }
        @if !j.errors.is_empty() {
            h2 { "Errors, newest last" }
            ul #errors { @for e in &j.errors { li { pre.error { (e) } } } }
        }
        h2 { "Payload" }
        pre #payload { (serde_json::to_string_pretty(&j.payload).unwrap_or_default()) }
        @if !detail.effects.is_empty() {
            h2 { "Effects" }
            table #effects {
                thead { tr { th { "key" } th { "value" } } }
                tbody { @for (k, v) in &detail.effects { tr { td { (k) } td { code { (v) } } } } }
            }
        }
    };
    let refresh = q.on() && !j.state.is_terminal();
    layout(&format!("Job {}", j.id.0), refresh, q.done.as_deref(), body)
}

pub(crate) async fn confirm(
    State(app): State<Arc<App>>,
    Path((id, action)): Path<(u64, String)>,
) -> Response {
    if app.read_only {
        return text(
            StatusCode::FORBIDDEN,
            "this dashboard is read-only\n".into(),
        );
    }
    let detail = match detail(&app, id).await {
        Ok(d) => d,
        Err(response) => return response,
    };
    let said = match action.as_str() {
        "retry" => "run it again, due now",
        "cancel" => "cancel it (a running job stops at its worker's next heartbeat)",
        "discard" => "end it as discarded",
        _ => return text(StatusCode::NOT_FOUND, format!("no action {action:?}\n")),
    };
    let body = html! {
        p { "Job " (id) " (" (detail.job.kind) ", " (detail.job.state.as_str()) "): " (said) "?" }
        form method="post" action={ "/jobs/" (id) "/" (action) } {
            input type="hidden" name="csrf" value=(app.csrf);
            button #confirm type="submit" { "Yes, " (action) }
            " "
            a href={ "/jobs/" (id) } { "No, go back" }
        }
    };
    layout(&format!("Confirm {action}"), false, None, body)
}

#[derive(Deserialize)]
pub(crate) struct ActionForm {
    csrf: String,
}

fn check_token(app: &App, form: &ActionForm) -> Option<Response> {
    (!same_secret(&form.csrf, &app.csrf)).then(|| {
        text(
            StatusCode::FORBIDDEN,
            "missing or stale form token: reload the page and try again\n".into(),
        )
    })
}

fn after(path: String, notice: &str) -> Response {
    Redirect::to(&format!("{path}?done={}", encode(notice))).into_response()
}

pub(crate) async fn act_on_job(
    State(app): State<Arc<App>>,
    Path((id, action)): Path<(u64, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Some(refused) = check_token(&app, &form) {
        return refused;
    }
    let job = JobId(id);
    let said = match action.as_str() {
        "retry" => app.admin.retry(job).await.map(admin_said),
        "discard" => app.admin.discard(job).await.map(admin_said),
        "cancel" => app.admin.cancel(job).await.map(cancel_said),
        _ => return text(StatusCode::NOT_FOUND, format!("no action {action:?}\n")),
    };
    match said {
        Ok(said) => after(format!("/jobs/{id}"), &format!("{action}: {said}")),
        Err(e) => storage_failed(e),
    }
}

pub(crate) async fn act_on_queue(
    State(app): State<Arc<App>>,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Some(refused) = check_token(&app, &form) {
        return refused;
    }
    let done = match action.as_str() {
        "pause" => app.admin.pause(&name).await,
        "resume" => app.admin.resume(&name).await,
        _ => return text(StatusCode::NOT_FOUND, format!("no action {action:?}\n")),
    };
    match done {
        Ok(()) => after("/".into(), &format!("queue {name}: {action}d")),
        Err(e) => storage_failed(e),
    }
}

pub(crate) async fn leader(State(app): State<Arc<App>>, Query(q): Query<Refresh>) -> Response {
    let (leases, now) = match (app.admin.leases().await, app.admin.time().await) {
        (Ok(leases), Ok(now)) => (leases, now),
        (Err(e), _) | (_, Err(e)) => return storage_failed(e),
    };
    let body = html! {
        @if leases.is_empty() { p { "No lease was ever granted: no node has led yet." } }
        @else {
            table #leases {
                thead { tr { th { "lease" } th { "term" } th { "holder" } th { "expires" } th { "status" } } }
                tbody { @for l in &leases { tr {
                    td { (l.name) }
                    td.num { (l.term.0) }
                    td { (l.holder.as_deref().unwrap_or("-")) }
                    td { (time(l.expires_at)) }
                    td { @if l.is_live(now) { "leading, " (span_ms(l.expires_at.0 - now.0)) " left" }
                         @else if l.holder.is_some() { "expired " (span_ms(now.0 - l.expires_at.0)) " ago" }
                         @else { "resigned" } }
                } } }
            }
        }
    };
    layout("Leader", q.on(), None, body)
}

pub(crate) async fn periodic(State(app): State<Arc<App>>, Query(q): Query<Refresh>) -> Response {
    let schedules = match app.admin.periodic().await {
        Ok(s) => s,
        Err(e) => return storage_failed(e),
    };
    let body = html! {
        @if schedules.is_empty() { p { "No periodic schedule has fired yet." } }
        @else {
            table #periodic {
                thead { tr { th { "name" } th { "schedule" } th { "queue" } th { "kind" }
                             th { "last slot" } th { "last job" } th { "next slot" } } }
                tbody { @for p in &schedules { tr {
                    td { (p.record.name) }
                    td { code { (p.record.schedule) } }
                    td { (p.record.queue) }
                    td { (p.record.kind) }
                    td { (time(p.record.last_slot)) }
                    td { a href={ "/jobs/" (p.record.last_job.0) } { (p.record.last_job.0) } }
                    td { (time_or_dash(p.next_slot)) }
                } } }
            }
        }
    };
    layout("Periodic schedules", q.on(), None, body)
}

/// Prometheus text: this process's recorder (the runtime's counters, when a
/// runtime runs here), with queue depth and lease terms read from storage at
/// each scrape.
pub(crate) async fn metrics(State(app): State<Arc<App>>) -> Response {
    use keel::metrics::{LABEL_LEASE, LABEL_QUEUE, LABEL_STATE, QUEUE_DEPTH};
    let queues = match app.admin.queues().await {
        Ok(q) => q,
        Err(e) => return storage_failed(e),
    };
    for queue in &queues {
        for state in JobState::ALL {
            metrics::gauge!(QUEUE_DEPTH, LABEL_QUEUE => queue.name.clone(), LABEL_STATE => state.as_str())
                .set(queue.counts.get(state) as f64);
        }
    }
    if let Ok(leases) = app.admin.leases().await {
        for lease in leases {
            metrics::gauge!("keel.lease.term", LABEL_LEASE => lease.name).set(lease.term.0 as f64);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

pub(crate) async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        PreEscaped(STYLE).into_string(),
    )
        .into_response()
}
