//! The enqueue signal: one dedicated connection `LISTEN`s on the schema's channel
//! and wakes idle workers for every `NOTIFY` another process's enqueue sends.
//!
//! A missed notification only costs a worker its poll interval, so the listener
//! reconnects with backoff and wakes everyone after each reconnect (whatever was
//! sent while it was away is covered by that one wake-up).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{AsyncMessage, Client, Config, Connection, NoTls, Socket};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::error_chain;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

type PgConnection = Connection<Socket, NoTlsStream>;

/// Open the first listening connection, then hand it to a task that keeps one
/// open until the returned guard is dropped.
pub(super) async fn start(
    config: Config,
    channel: String,
    notify: Arc<Notify>,
) -> Result<DropGuard, String> {
    let (client, connection) = open(&config, &channel).await?;
    let cancel = CancellationToken::new();
    tokio::spawn(run(
        config,
        channel,
        notify,
        cancel.clone(),
        client,
        connection,
    ));
    Ok(cancel.drop_guard())
}

/// Connect and `LISTEN`, driving the connection while the command runs.
async fn open(config: &Config, channel: &str) -> Result<(Client, PgConnection), String> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(|e| error_chain(&e))?;
    let sql = format!("LISTEN \"{channel}\"");
    let listened = {
        let listen = client.batch_execute(&sql);
        tokio::pin!(listen);
        let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx)).fuse();
        loop {
            tokio::select! {
                biased;
                done = &mut listen => break done.map_err(|e| error_chain(&e)),
                message = messages.next() => match message {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Err(error_chain(&e)),
                    None => break Err("connection closed during LISTEN".to_owned()),
                },
            }
        }
    };
    listened.map(|()| (client, connection))
}

/// Forward notifications until cancelled; reopen the connection when it drops.
async fn run(
    config: Config,
    channel: String,
    notify: Arc<Notify>,
    cancel: CancellationToken,
    client: Client,
    connection: PgConnection,
) {
    let mut current = Some((client, connection));
    let mut backoff = BACKOFF_MIN;
    loop {
        let Some((client, connection)) = current.take() else {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            match open(&config, &channel).await {
                Ok(opened) => {
                    backoff = BACKOFF_MIN;
                    notify.notify_waiters();
                    current = Some(opened);
                }
                Err(reason) => tracing::warn!(%reason, "enqueue listener cannot reconnect"),
            }
            continue;
        };
        if forward(connection, &notify, &cancel).await {
            return;
        }
        drop(client);
        tracing::warn!(
            channel,
            "enqueue listener lost its connection; reconnecting"
        );
    }
}

/// Wake waiters for each notification. Returns `true` when cancelled, `false`
/// when the connection ended.
async fn forward(
    mut connection: PgConnection,
    notify: &Notify,
    cancel: &CancellationToken,
) -> bool {
    let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx)).fuse();
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return true,
            message = messages.next() => match message {
                // One worker per enqueue; a worker that finds work wakes the
                // next (worker_loop), so a batch still spreads over all of them.
                Some(Ok(AsyncMessage::Notification(_))) => notify.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %error_chain(&e), "enqueue listener connection failed");
                    return false;
                }
                None => return false,
            },
        }
    }
}
