//! The database host: `MemStorage` served to the nodes over the network seam.
//!
//! Nodes talk to storage the way a production service talks to its database: over
//! a byte stream that can stall, break, or lose a reply after the request was
//! applied. The wire format is a 4-byte big-endian length followed by a JSON body;
//! one request is in flight per connection.
//!
//! [`RemoteStorage`] is keel's [`LeaseStore`] on the client side. Its error mapping
//! is the point of the exercise: a request that could not be sent is
//! [`StorageError::Unavailable`]; once bytes left, any failure (timeout, reset,
//! lost reply) is [`StorageError::Ambiguous`], because the database may have
//! applied it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keel::clock::{SharedClock, Timestamp};
use keel::net::{BoxStream, Network};
use keel::storage::{Lease, LeaseStore, MemStorage, StorageError, StorageResult, Term};
use serde::{Deserialize, Serialize};
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

/// One storage call on the wire. Fields mirror the [`LeaseStore`] method arguments.
#[allow(missing_docs)]
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// [`LeaseStore::try_acquire`].
    TryAcquire {
        name: String,
        holder: String,
        ttl_ms: u64,
        now: Timestamp,
    },
    /// [`LeaseStore::renew`].
    Renew {
        name: String,
        holder: String,
        term: Term,
        ttl_ms: u64,
        now: Timestamp,
    },
    /// [`LeaseStore::resign`].
    Resign {
        name: String,
        holder: String,
        term: Term,
    },
    /// [`LeaseStore::get_lease`].
    GetLease { name: String },
    /// [`LeaseStore::maintenance_heartbeat`].
    Heartbeat {
        name: String,
        holder: String,
        term: Term,
        now: Timestamp,
    },
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// A lease, or none.
    Lease(Option<Lease>),
    /// A yes/no answer.
    Bool(bool),
    /// Storage refused the call.
    Err(StorageError),
}

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

/// Apply one request to the model and record what it changed.
async fn apply(store: &MemStorage, history: &History, req: Request) -> Response {
    let record = |ev: DbEvent| history.push(DB_HOST, Ev::Db(ev));
    match req {
        Request::TryAcquire {
            name,
            holder,
            ttl_ms,
            now,
        } => {
            match store
                .try_acquire(&name, &holder, Duration::from_millis(ttl_ms), now)
                .await
            {
                Ok(lease) => {
                    if let Some(l) = &lease {
                        record(DbEvent::LeaseGranted {
                            holder,
                            term: l.term,
                        });
                    }
                    Response::Lease(lease)
                }
                Err(e) => Response::Err(e),
            }
        }
        Request::Renew {
            name,
            holder,
            term,
            ttl_ms,
            now,
        } => {
            let r = store
                .renew(&name, &holder, term, Duration::from_millis(ttl_ms), now)
                .await;
            r.map_or_else(Response::Err, Response::Bool)
        }
        Request::Resign { name, holder, term } => match store.resign(&name, &holder, term).await {
            Ok(applied) => {
                if applied {
                    record(DbEvent::ResignApplied { holder, term });
                }
                Response::Bool(applied)
            }
            Err(e) => Response::Err(e),
        },
        Request::GetLease { name } => store
            .get_lease(&name)
            .await
            .map_or_else(Response::Err, Response::Lease),
        Request::Heartbeat {
            name,
            holder,
            term,
            now,
        } => match store.maintenance_heartbeat(&name, &holder, term, now).await {
            Ok(accepted) => {
                if accepted {
                    record(DbEvent::HeartbeatAccepted { holder, term });
                }
                Response::Bool(accepted)
            }
            Err(e) => Response::Err(e),
        },
    }
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
                let response = match serde_json::from_slice::<Request>(&body) {
                    Ok(req) => apply(&store, &history, req).await,
                    Err(e) => Response::Err(StorageError::Backend(format!("bad request: {e}"))),
                };
                let Ok(bytes) = serde_json::to_vec(&response) else {
                    return;
                };
                if write_frame(&mut stream, &bytes).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// keel storage on the far side of the simulated network. See the
/// [module docs](self).
pub struct RemoteStorage {
    net: Arc<dyn Network>,
    addr: String,
    clock: SharedClock,
    request_timeout: Duration,
    conn: Mutex<Option<BoxStream>>,
}

impl RemoteStorage {
    /// How long a request may wait for its reply before the outcome is ambiguous.
    pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);

    /// A client for the database host at `addr`.
    pub fn new(
        net: Arc<dyn Network>,
        addr: String,
        clock: SharedClock,
        request_timeout: Duration,
    ) -> Self {
        Self {
            net,
            addr,
            clock,
            request_timeout,
            conn: Mutex::new(None),
        }
    }

    async fn call(&self, req: Request) -> StorageResult<Response> {
        let body = serde_json::to_vec(&req).map_err(|e| StorageError::Backend(e.to_string()))?;
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
        let parsed = reply.and_then(|bytes| {
            serde_json::from_slice::<Response>(&bytes).map_err(|e| e.to_string())
        });
        match parsed {
            Ok(response) => {
                *slot = Some(stream);
                match response {
                    Response::Err(e) => Err(e),
                    response => Ok(response),
                }
            }
            // The request may have been applied, and the stream may still carry its
            // late reply, so the stream is dropped rather than reused.
            Err(why) => Err(StorageError::Ambiguous(why)),
        }
    }

    async fn call_bool(&self, req: Request) -> StorageResult<bool> {
        match self.call(req).await? {
            Response::Bool(b) => Ok(b),
            other => Err(StorageError::Backend(format!("unexpected reply {other:?}"))),
        }
    }

    async fn call_lease(&self, req: Request) -> StorageResult<Option<Lease>> {
        match self.call(req).await? {
            Response::Lease(l) => Ok(l),
            other => Err(StorageError::Backend(format!("unexpected reply {other:?}"))),
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl LeaseStore for RemoteStorage {
    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> StorageResult<Option<Lease>> {
        let req = Request::TryAcquire {
            name: name.into(),
            holder: holder.into(),
            ttl_ms: ms(ttl),
            now,
        };
        self.call_lease(req).await
    }

    async fn renew(
        &self,
        name: &str,
        holder: &str,
        term: Term,
        ttl: Duration,
        now: Timestamp,
    ) -> StorageResult<bool> {
        let req = Request::Renew {
            name: name.into(),
            holder: holder.into(),
            term,
            ttl_ms: ms(ttl),
            now,
        };
        self.call_bool(req).await
    }

    async fn resign(&self, name: &str, holder: &str, term: Term) -> StorageResult<bool> {
        self.call_bool(Request::Resign {
            name: name.into(),
            holder: holder.into(),
            term,
        })
        .await
    }

    async fn get_lease(&self, name: &str) -> StorageResult<Option<Lease>> {
        self.call_lease(Request::GetLease { name: name.into() })
            .await
    }

    async fn maintenance_heartbeat(
        &self,
        name: &str,
        holder: &str,
        term: Term,
        now: Timestamp,
    ) -> StorageResult<bool> {
        let req = Request::Heartbeat {
            name: name.into(),
            holder: holder.into(),
            term,
            now,
        };
        self.call_bool(req).await
    }
}
