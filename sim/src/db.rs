//! The database host: `MemStorage` served to the nodes over the network seam.
//!
//! Nodes talk to storage the way a production service talks to its database: over
//! a byte stream that can stall, break, or lose a reply after the request was
//! applied. The wire format is a 4-byte big-endian length followed by a JSON body;
//! one request is in flight per connection.
//!
//! [`RemoteStorage`] is keel's storage on the client side: keel's
//! [`ops::Remote`] over the [`Wire`] transport. Its error mapping is the point of
//! the exercise: a request that could not be sent is [`StorageError::Unavailable`];
//! once bytes left, any failure (timeout, reset, lost reply) is
//! [`StorageError::Ambiguous`], because the database may have applied it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keel::clock::SharedClock;
use keel::net::{BoxStream, Network};
use keel::storage::ops::{self, Op, Remote, Reply, Transport};
use keel::storage::{MemStorage, StorageError, StorageResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::history::{DbEvent, Ev, History};

/// The database host's name in the simulation.
pub const DB_HOST: &str = "db";
/// The port it serves storage on.
pub const DB_PORT: u16 = 7000;
/// Largest frame either side accepts: far above any lease message, small enough
/// that a corrupt length cannot make a host allocate gigabytes.
pub const FRAME_BYTES_MAX: u32 = 1 << 20;

async fn write_frame(stream: &mut BoxStream, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("frame too large"))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

async fn read_frame(stream: &mut BoxStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

/// Record what `op` changed in the database, judged by its reply.
fn record(history: &History, op: &Op, reply: &Reply) {
    let event = match (op, reply) {
        (Op::TryAcquire { holder, .. }, Reply::Lease(Some(lease))) => DbEvent::LeaseGranted {
            holder: holder.clone(),
            term: lease.term,
        },
        (Op::Resign { holder, term, .. }, Reply::Bool(true)) => DbEvent::ResignApplied {
            holder: holder.clone(),
            term: *term,
        },
        (Op::MaintenanceHeartbeat { holder, term, .. }, Reply::Bool(true)) => {
            DbEvent::HeartbeatAccepted {
                holder: holder.clone(),
                term: *term,
            }
        }
        _ => return,
    };
    history.push(DB_HOST, Ev::Db(event));
}

/// Serve `store` on `DB_PORT` until the host stops.
pub async fn serve(
    net: Arc<dyn Network>,
    store: Arc<MemStorage>,
    history: History,
) -> io::Result<()> {
    let mut listener = net.listen(&format!("0.0.0.0:{DB_PORT}")).await?;
    loop {
        let (mut stream, _peer) = listener.accept().await?;
        let store = store.clone();
        let history = history.clone();
        tokio::spawn(async move {
            // A connection ends when the peer goes away or sends garbage; either way
            // the node's client sees a broken stream and reconnects.
            while let Ok(body) = read_frame(&mut stream).await {
                let reply = match serde_json::from_slice::<Op>(&body) {
                    Ok(op) => {
                        let reply = ops::apply(store.as_ref(), op.clone()).await;
                        record(&history, &op, &reply);
                        reply
                    }
                    Err(e) => Reply::Err(StorageError::Backend(format!("bad request: {e}"))),
                };
                let Ok(bytes) = serde_json::to_vec(&reply) else {
                    return;
                };
                if write_frame(&mut stream, &bytes).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// How long a request may wait for its reply before the outcome is ambiguous.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);

/// keel storage on the far side of the simulated network. See the
/// [module docs](self).
pub type RemoteStorage = Remote<Wire>;

/// A [`RemoteStorage`] for the database host at `addr`.
pub fn remote_storage(
    net: Arc<dyn Network>,
    addr: String,
    clock: SharedClock,
    request_timeout: Duration,
) -> RemoteStorage {
    Remote(Wire {
        net,
        addr,
        clock,
        request_timeout,
        conn: Mutex::new(None),
    })
}

/// The transport: one framed JSON request and reply at a time per connection.
pub struct Wire {
    net: Arc<dyn Network>,
    addr: String,
    clock: SharedClock,
    request_timeout: Duration,
    conn: Mutex<Option<BoxStream>>,
}

#[async_trait]
impl Transport for Wire {
    async fn call(&self, op: Op) -> StorageResult<Reply> {
        let body = serde_json::to_vec(&op).map_err(|e| StorageError::Backend(e.to_string()))?;
        // One request at a time per connection. The stream is taken out of the slot
        // for the exchange and put back only after a complete one: if the caller
        // drops this future mid-exchange (a `select` deadline), the stream goes with
        // it, and no later request can read this request's late reply.
        let mut slot = self.conn.lock().await;
        let mut stream = match slot.take() {
            Some(stream) => stream,
            None => {
                let connect = self.net.connect(&self.addr);
                tokio::select! {
                    biased;
                    r = connect => r.map_err(|e| StorageError::Unavailable(e.to_string()))?,
                    () = self.clock.sleep(self.request_timeout) => {
                        return Err(StorageError::Unavailable("connect timed out".into()));
                    }
                }
            }
        };
        let exchange = async {
            write_frame(&mut stream, &body).await?;
            read_frame(&mut stream).await
        };
        let reply = tokio::select! {
            biased;
            r = exchange => r.map_err(|e| e.to_string()),
            () = self.clock.sleep(self.request_timeout) => Err("reply timed out".to_owned()),
        };
        match reply
            .and_then(|bytes| serde_json::from_slice::<Reply>(&bytes).map_err(|e| e.to_string()))
        {
            Ok(reply) => {
                *slot = Some(stream);
                Ok(reply)
            }
            // The request may have been applied, and the stream may still carry its
            // late reply, so the stream is dropped rather than reused.
            Err(why) => Err(StorageError::Ambiguous(why)),
        }
    }
}
