//! The fault proxy in front of a real PostgreSQL: a request whose reply the
//! proxy drops is applied all the same (an ambiguous commit), and keel's pool
//! recovers once the proxy resets the connection. Runs only when `KEEL_PG_URL`
//! is set; without it the test says so by name and passes.
//!
//! A dropped reply makes a commit ambiguous only when the whole request went
//! out before it: a lone claim is one autocommitted round trip once its
//! statement is prepared on the connection, while a transaction waits for its
//! `BEGIN`'s reply and so never commits under the fault.

use std::sync::Arc;
use std::time::Duration;

use chaos::proxy::{FaultProxy, LinkFault};
use keel::storage::{EnqueueRequest, JobStore, PostgresOptions, PostgresStorage};

async fn drop_schema(url: &str, schema: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("admin connection");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .expect("drop schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_reply_is_an_ambiguous_commit_on_postgres() {
    let Ok(url) = std::env::var("KEEL_PG_URL") else {
        eprintln!(
            "SKIPPED a_dropped_reply_is_an_ambiguous_commit_on_postgres: KEEL_PG_URL not set"
        );
        return;
    };
    let schema = format!("keel_chaos_proxy_{}", std::process::id());
    drop_schema(&url, &schema).await;
    let server = chaos::pg::server_addr(&url)
        .await
        .expect("KEEL_PG_URL's server");
    let via = |port| chaos::pg::via_port(&url, port).expect("a proxied URL");
    let proxy = FaultProxy::start(server).await.expect("proxy");
    // One connection, so the warm-up prepares the claim statement on it.
    let options = || {
        PostgresOptions::new()
            .schema(&schema)
            .pool_size(1)
            .listen(false)
    };
    let proxied = Arc::new(
        PostgresStorage::connect_with(&via(proxy.addr().port()), options())
            .await
            .expect("connect through the proxy"),
    );
    let direct = PostgresStorage::connect_with(&url, options())
        .await
        .expect("connect directly");
    let job = || EnqueueRequest::new("chaos", serde_json::json!({}));

    let first = proxied
        .enqueue(job())
        .await
        .expect("a healthy enqueue")
        .id();
    let second = proxied
        .enqueue(job())
        .await
        .expect("a healthy enqueue")
        .id();
    let warm = proxied
        .claim("default", "w", 1)
        .await
        .expect("a healthy claim");
    assert_eq!(warm.iter().map(|j| j.id).collect::<Vec<_>>(), [first]);
    proxy.set(LinkFault::DropReplies);
    let lost = tokio::time::timeout(Duration::from_secs(2), proxied.claim("default", "w", 1)).await;
    assert!(lost.is_err(), "no reply comes back: {lost:?}");
    assert!(proxy.stats().replies_dropped >= 1);
    // The server applied it: the job is claimed though its caller never heard.
    let claimed = direct
        .get_job(second)
        .await
        .expect("read")
        .expect("the job");
    assert_eq!(
        claimed.attempt, 1,
        "the unanswered claim committed: {claimed:?}"
    );
    assert_eq!(claimed.owner.as_deref(), Some("w"));

    proxy.set(LinkFault::Healthy);
    assert!(
        proxy.stats().resets >= 1,
        "the out-of-step connection was reset"
    );
    let recovered = async {
        loop {
            if let Ok(outcome) = proxied.enqueue(job()).await {
                return outcome;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let third = tokio::time::timeout(Duration::from_secs(10), recovered)
        .await
        .expect("the pool reconnects after the reset");
    assert!(third.id().0 > second.0);
    drop(proxied);
    drop_schema(&url, &schema).await;
}
