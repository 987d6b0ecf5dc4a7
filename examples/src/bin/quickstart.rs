//! Keel in one page: two handlers, a periodic job, a few enqueues, graceful shutdown.
//!
//! ```sh
//! cargo run -p keel-examples --bin quickstart                    # SQLite: ./keel-quickstart.db
//! cargo run -p keel-examples --bin quickstart -- --postgres postgres://postgres@127.0.0.1:5432/test
//! cargo run -p keel-examples --bin quickstart -- --run-for 10    # stop by itself after 10 s
//! ```
//!
//! Ctrl-C shuts down gracefully: no new claims, running handlers get a deadline
//! to finish, and whatever outlasts it is given back for another node to run.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use keel::clock::SystemClock;
use keel::jobs::{JobCtx, Outcome, Runtime};
use keel::storage::{EnqueueOutcome, EnqueueRequest};
use keel_examples::{PrintObserver, StoreArgs};
use serde_json::{json, Value};

const DEFAULT_DB: &str = "keel-quickstart.db";

#[derive(Parser)]
#[command(about = "Keel's quick start: a few jobs on SQLite or PostgreSQL")]
struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// Exit on its own after this many seconds instead of waiting for Ctrl-C.
    #[arg(long, value_name = "SECS")]
    run_for: Option<u64>,
}

// docs: begin handlers
/// Sends an email at most once, however often the job runs: the "sent" effect is
/// fenced by the job's claim and written once per job.
async fn send_email(ctx: JobCtx, payload: Value) -> Outcome {
    match ctx.effect("sent", payload.clone()).await {
        Ok(result) => {
            println!("  send_email {} to {}: {result:?}", ctx.job, payload["to"]);
            Outcome::Completed
        }
        // Storage trouble: fail the attempt; the retry will find the effect if it was written.
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Fails the first two attempts on big images to show retries with backoff.
async fn resize_image(ctx: JobCtx, payload: Value) -> Outcome {
    let width = payload["width"].as_u64().unwrap_or(0);
    if width > 4000 && ctx.attempt < 3 {
        return Outcome::Failed(format!("out of memory at {width}px"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    Outcome::Completed
}
// docs: end handlers

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    println!("opening {}", args.store.describe(DEFAULT_DB));
    let storage = match args.store.open(DEFAULT_DB, 4).await {
        Ok(storage) => storage,
        Err(e) => {
            // OpenError says what to fix: a bad URL, an unreachable server, a locked file...
            eprintln!("error: cannot open storage: {e}");
            return ExitCode::FAILURE;
        }
    };

    // docs: begin runtime
    let digest = EnqueueRequest::new("send_email", json!({"to": "ops@example.com"}));
    let runtime = Runtime::builder("quickstart", storage, Arc::new(SystemClock::new()))
        .queue("default", 4)
        .handler("send_email", send_email)
        .handler("resize_image", resize_image)
        // Fired once per slot cluster-wide, by whichever node leads.
        .periodic("ops-digest", Duration::from_secs(5), digest)
        .observer(Arc::new(PrintObserver))
        .build()
        .and_then(|rt| rt.start());
    // docs: end runtime
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start keel: {e}");
            return ExitCode::FAILURE;
        }
    };

    let jobs = [
        EnqueueRequest::new("send_email", json!({"to": "ada@example.com"})),
        EnqueueRequest::new("resize_image", json!({"file": "cat.png", "width": 800})),
        EnqueueRequest::new("resize_image", json!({"file": "huge.png", "width": 9000})),
        // The same unique key twice: the second enqueue answers with the first job.
        // (Rerun on the same database and both are duplicates: the key holds
        // while the job is retained.)
        EnqueueRequest::new("send_email", json!({"to": "bob@example.com"}))
            .unique_key("welcome:bob"),
        EnqueueRequest::new("send_email", json!({"to": "bob@example.com"}))
            .unique_key("welcome:bob"),
    ];
    for job in jobs {
        let kind = job.kind.clone();
        match runtime.enqueue(job).await {
            Ok(EnqueueOutcome::Inserted(job)) => println!("enqueue {kind}: inserted {job}"),
            Ok(EnqueueOutcome::Duplicate(job)) => println!("enqueue {kind}: duplicate of {job}"),
            Err(e) => eprintln!("enqueue {kind} failed: {e}"),
        }
    }

    let run_for = args.run_for.map(Duration::from_secs);
    match run_for {
        Some(d) => println!("running for {}s", d.as_secs()),
        None => println!("running; Ctrl-C to stop"),
    }
    tokio::select! {
        biased;
        _ = tokio::signal::ctrl_c() => println!("Ctrl-C"),
        () = tokio::time::sleep(run_for.unwrap_or(Duration::MAX)), if run_for.is_some() => {}
    }

    // docs: begin shutdown
    let report = runtime.shutdown(Duration::from_secs(10)).await;
    let clean = report.tasks.is_clean();
    println!("shutdown: clean={clean} {report:?}");
    // docs: end shutdown
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
