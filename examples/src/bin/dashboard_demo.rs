//! A small busy service for the dashboard to show: what `ci/dashboard-check`
//! drives in a browser, and a way to see `keel serve` with something to look at.
//!
//! ```sh
//! cargo run -p keel-examples --bin dashboard_demo -- --sqlite demo.db &
//! cargo run -p keel-cli -- --db demo.db serve        # http://127.0.0.1:8080/
//! ```
//!
//! Queue `default` gets an email, a report and an image job whose first
//! attempt is discarded (retry it from the dashboard and it completes);
//! queue `mail` gets a new email every half second (pause it and they wait);
//! a periodic digest fires every 10 s.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use keel::clock::SystemClock;
use keel::jobs::{JobCtx, Outcome, Runtime};
use keel::storage::EnqueueRequest;
use keel_examples::StoreArgs;
use serde_json::{json, Value};

const DEFAULT_DB: &str = "keel-dashboard-demo.db";
/// How often queue `mail` gets a new job.
const MAIL_EVERY: Duration = Duration::from_millis(500);

#[derive(Parser)]
#[command(about = "A busy little service for the keel dashboard to show")]
struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// Exit on its own after this many seconds instead of waiting for Ctrl-C.
    #[arg(long, value_name = "SECS")]
    run_for: Option<u64>,
}

async fn send_email(_ctx: JobCtx, _payload: Value) -> Outcome {
    tokio::time::sleep(Duration::from_millis(100)).await;
    Outcome::Completed
}

/// Discards its first attempt with a message that looks like markup: the
/// dashboard must show it as text. A retried job completes.
async fn resize_image(ctx: JobCtx, _payload: Value) -> Outcome {
    if ctx.attempt == 1 {
        return Outcome::Discard("<script>alert('x')</script> image too large".into());
    }
    Outcome::Completed
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let storage = match args.store.open(DEFAULT_DB, 4).await {
        Ok(storage) => storage,
        Err(e) => {
            eprintln!("error: cannot open storage: {e}");
            return ExitCode::FAILURE;
        }
    };
    let digest = EnqueueRequest::new("send_email", json!({"to": "ops@example.com"}));
    let runtime = Runtime::builder("demo", storage, Arc::new(SystemClock::new()))
        .queue("default", 2)
        .queue("mail", 1)
        .handler("send_email", send_email)
        .handler("resize_image", resize_image)
        .periodic("digest", Duration::from_secs(10), digest)
        .build()
        .and_then(|rt| rt.start());
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start keel: {e}");
            return ExitCode::FAILURE;
        }
    };
    let first = [
        EnqueueRequest::new("send_email", json!({"to": "<b>ada</b>@example.com"})),
        EnqueueRequest::new("resize_image", json!({"file": "huge.png", "width": 9000})),
        EnqueueRequest::new("send_email", json!({"to": "bob@example.com"})),
    ];
    for job in first {
        if let Err(e) = runtime.enqueue(job).await {
            eprintln!("enqueue failed: {e}");
        }
    }
    println!("dashboard demo running");
    let run_for = args
        .run_for
        .map(Duration::from_secs)
        .unwrap_or(Duration::MAX);
    let stop = tokio::time::sleep(run_for);
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(MAIL_EVERY);
    let mut n = 0u64;
    loop {
        tokio::select! {
            biased;
            _ = tokio::signal::ctrl_c() => break,
            () = &mut stop => break,
            _ = tick.tick() => {
                n += 1;
                let job = EnqueueRequest::new("send_email", json!({"to": format!("user{n}@example.com")}))
                    .queue("mail");
                if let Err(e) = runtime.enqueue(job).await {
                    eprintln!("enqueue failed: {e}");
                }
            }
        }
    }
    let report = runtime.shutdown(Duration::from_secs(5)).await;
    if report.tasks.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
