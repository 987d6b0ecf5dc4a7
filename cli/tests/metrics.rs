//! keel's `metrics` feature, as `keel serve`'s Prometheus recorder renders it:
//! a runtime's jobs enqueued, started and finished per queue, kind and
//! outcome, attempt durations, and leadership.

use std::sync::Arc;
use std::time::Duration;

use keel::clock::SystemClock;
use keel::jobs::{JobCtx, Outcome, Runtime};
use keel::storage::{EnqueueRequest, MemStorage, SharedStorage};
use serde_json::{json, Value};

async fn ok(_ctx: JobCtx, _payload: Value) -> Outcome {
    Outcome::Completed
}

async fn flaky(ctx: JobCtx, _payload: Value) -> Outcome {
    if ctx.attempt == 1 {
        Outcome::Failed("first try fails".into())
    } else {
        Outcome::Completed
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_counts_its_jobs_and_leadership() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder in this test binary");

    let storage: SharedStorage = Arc::new(MemStorage::new());
    let mut cfg = keel::jobs::JobsConfig::default();
    cfg.retry.base = Duration::from_millis(10);
    cfg.retry.jitter_ratio = 0.0;
    let runtime = Runtime::builder("m1", storage.clone(), Arc::new(SystemClock::new()))
        .queue("default", 2)
        .handler("ok", ok)
        .handler("flaky", flaky)
        .jobs_config(cfg)
        .build()
        .and_then(|rt| rt.start())
        .expect("start");
    for kind in ["ok", "ok", "flaky"] {
        runtime
            .enqueue(EnqueueRequest::new(kind, json!({})))
            .await
            .expect("enqueue");
    }
    let mut rendered = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let counts = storage.count_by_state().await.expect("counts");
        rendered = handle.render();
        if counts.get(keel::storage::JobState::Completed) == 3 && rendered.contains("keel_leader") {
            break;
        }
    }
    runtime.shutdown(Duration::from_secs(2)).await;
    let has = |needle: &str| {
        assert!(rendered.contains(needle), "no {needle:?} in\n{rendered}");
    };
    let line = |name: &str, labels: &[&str]| {
        rendered
            .lines()
            .find(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{rendered}"))
            .rsplit(' ')
            .next()
            .expect("a value")
            .to_owned()
    };
    let queue = "messaging_destination_name=\"default\"";
    assert_eq!(
        line(
            "messaging_client_sent_messages",
            &[queue, "keel_job_kind=\"ok\""]
        ),
        "2"
    );
    assert_eq!(
        line(
            "messaging_client_sent_messages",
            &["keel_job_kind=\"flaky\""]
        ),
        "1"
    );
    assert_eq!(
        line(
            "messaging_client_consumed_messages",
            &["keel_job_kind=\"flaky\""]
        ),
        "2"
    );
    assert_eq!(
        line(
            "keel_jobs_finished",
            &["keel_job_kind=\"flaky\"", "keel_job_outcome=\"failed\""]
        ),
        "1"
    );
    assert_eq!(
        line(
            "keel_jobs_finished",
            &["keel_job_kind=\"ok\"", "keel_job_outcome=\"completed\""]
        ),
        "2"
    );
    has("messaging_process_duration");
    has("keel_leader{keel_lease=");
}
