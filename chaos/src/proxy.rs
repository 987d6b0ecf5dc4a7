//! A TCP fault proxy on loopback: what a network does to a database client.
//!
//! Each worker process reaches PostgreSQL through its own [`FaultProxy`], and
//! the harness sets the proxy's [`LinkFault`] as its plan says. A fault covers
//! every connection through the proxy, the pool's and the LISTEN connection's
//! alike:
//!
//! ```text
//! worker ──▶ 127.0.0.1:<proxy> ──▶ PostgreSQL
//!            Healthy      bytes flow both ways
//!            Partition    nothing flows, new connections wait; held bytes
//!                         flow after (TCP retransmits across a short cut)
//!            Delay(d)     every chunk waits d, each way, in order
//!            DropReplies  requests reach the server, replies vanish; when the
//!                         fault ends those connections are reset (RST): a
//!                         commit the client never hears about
//! ```
//!
//! [`FaultProxy::reset`] resets every open connection at once (a middlebox or
//! server restart). The proxy binds 127.0.0.1 only and stops with its value.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

/// What the link through a proxy does now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkFault {
    /// Bytes flow both ways.
    Healthy,
    /// Nothing flows either way and new connections wait until it ends.
    Partition,
    /// Every chunk waits this long before it is forwarded, each way.
    Delay(Duration),
    /// Client bytes reach the server; server bytes are dropped, and each
    /// connection that lost one is reset when the fault ends.
    DropReplies,
}

/// What a proxy did, for the harness's table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted.
    pub connections: u64,
    /// Connections reset by the proxy.
    pub resets: u64,
    /// Server-to-client chunks dropped.
    pub replies_dropped: u64,
}

#[derive(Default)]
struct Shared {
    /// Open connections by id: their task, and whether a reply was dropped.
    open: Mutex<BTreeMap<u64, (AbortHandle, bool)>>,
    next_id: AtomicU64,
    connections: AtomicU64,
    resets: AtomicU64,
    replies_dropped: AtomicU64,
}

impl Shared {
    fn open(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (AbortHandle, bool)>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Abort the connections `which` picks; their sockets close with RST.
    fn reset_where(&self, which: impl Fn(bool) -> bool) -> usize {
        let mut open = self.open();
        let ids: Vec<u64> = open
            .iter()
            .filter(|(_, (_, lost))| which(*lost))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            if let Some((task, _)) = open.remove(id) {
                task.abort();
            }
        }
        self.resets.fetch_add(ids.len() as u64, Ordering::Relaxed);
        ids.len()
    }
}

/// A fault proxy to one upstream. See the [module docs](self).
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<LinkFault>,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("fault", &*self.fault.borrow())
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// A healthy proxy to `upstream`, listening on a free port of 127.0.0.1.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (fault, _) = watch::channel(LinkFault::Healthy);
        let shared = Arc::new(Shared::default());
        let accept = tokio::spawn(accept_loop(
            listener,
            upstream,
            fault.subscribe(),
            shared.clone(),
        ));
        Ok(Self {
            addr,
            fault,
            shared,
            accept,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The fault in effect.
    pub fn fault(&self) -> LinkFault {
        *self.fault.borrow()
    }

    /// Put `fault` in effect. Leaving [`LinkFault::DropReplies`] resets the
    /// connections that lost a reply: their byte streams are out of step.
    pub fn set(&self, fault: LinkFault) {
        let was = self.fault.send_replace(fault);
        if was == LinkFault::DropReplies && fault != LinkFault::DropReplies {
            self.shared.reset_where(|lost| lost);
        }
    }

    /// Reset every open connection now; returns how many.
    pub fn reset(&self) -> usize {
        self.shared.reset_where(|_| true)
    }

    /// What the proxy did so far.
    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        ProxyStats {
            connections: s.connections.load(Ordering::Relaxed),
            resets: s.resets.load(Ordering::Relaxed),
            replies_dropped: s.replies_dropped.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.reset_where(|_| true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    fault: watch::Receiver<LinkFault>,
    shared: Arc<Shared>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors, say: back off rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        // Registered under the lock before it can finish and deregister.
        let mut open = shared.open();
        let task = tokio::spawn(connection(
            id,
            client,
            upstream,
            fault.clone(),
            shared.clone(),
        ));
        open.insert(id, (task.abort_handle(), false));
    }
}

/// One proxied connection: wait out a partition, connect upstream, pump both
/// ways until either side closes.
async fn connection(
    id: u64,
    client: TcpStream,
    upstream: SocketAddr,
    mut fault: watch::Receiver<LinkFault>,
    shared: Arc<Shared>,
) {
    let _ = async {
        flowing(&mut fault).await;
        let server = TcpStream::connect(upstream).await?;
        // Dropped sockets (a reset, an abort) send RST rather than FIN.
        client.set_zero_linger()?;
        server.set_zero_linger()?;
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        tokio::select! {
            r = pump(cr, sw, fault.clone(), None) => r,
            r = pump(sr, cw, fault, Some((id, &shared))) => r,
        }
    }
    .await;
    shared.open().remove(&id);
}

/// Wait until the link is not partitioned.
async fn flowing(fault: &mut watch::Receiver<LinkFault>) {
    while *fault.borrow_and_update() == LinkFault::Partition {
        if fault.changed().await.is_err() {
            return;
        }
    }
}

/// Bytes from `from` to `to` under the fault in effect; `down` names the
/// connection when this is the server-to-client side, whose chunks
/// [`LinkFault::DropReplies`] drops.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut fault: watch::Receiver<LinkFault>,
    down: Option<(u64, &Shared)>,
) -> io::Result<()> {
    // One chunk at a time: a held or delayed chunk holds the ones behind it,
    // as a TCP stream does.
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        flowing(&mut fault).await;
        let now = *fault.borrow();
        match (now, down) {
            (LinkFault::Delay(d), _) => tokio::time::sleep(d).await,
            (LinkFault::DropReplies, Some((id, shared))) => {
                shared.replies_dropped.fetch_add(1, Ordering::Relaxed);
                if let Some(conn) = shared.open().get_mut(&id) {
                    conn.1 = true;
                }
                continue;
            }
            _ => {}
        }
        to.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes each chunk and counts the bytes it received.
    async fn echo() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(AtomicU64::new(0));
        let counted = received.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        counted.fetch_add(n as u64, Ordering::SeqCst);
                    }
                });
            }
        });
        (addr, received)
    }

    async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await?;
        Ok(back)
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_healthy_proxy_forwards_both_ways() {
        let (up, _) = echo().await;
        let proxy = FaultProxy::start(up).await.expect("proxy");
        assert!(proxy.addr().ip().is_loopback());
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut s, b"ping").await.expect("echo"), b"ping");
        assert_eq!(proxy.stats().connections, 1);
    }

    #[tokio::test]
    async fn a_partition_holds_bytes_until_it_heals() {
        let (up, received) = echo().await;
        let proxy = FaultProxy::start(up).await.expect("proxy");
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        round_trip(&mut s, b"a").await.expect("healthy");
        proxy.set(LinkFault::Partition);
        s.write_all(b"held").await.expect("write");
        let mut one = [0u8; 4];
        let cut = tokio::time::timeout(Duration::from_millis(200), s.read_exact(&mut one)).await;
        assert!(cut.is_err(), "nothing comes back through a partition");
        assert_eq!(received.load(Ordering::SeqCst), 1, "nor reaches the server");
        proxy.set(LinkFault::Healthy);
        tokio::time::timeout(WAIT, s.read_exact(&mut one))
            .await
            .expect("delivered after the heal")
            .expect("read");
        assert_eq!(&one, b"held");
    }

    #[tokio::test]
    async fn a_delay_slows_each_chunk_each_way() {
        let (up, _) = echo().await;
        let proxy = FaultProxy::start(up).await.expect("proxy");
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        proxy.set(LinkFault::Delay(Duration::from_millis(100)));
        let began = tokio::time::Instant::now();
        round_trip(&mut s, b"slow").await.expect("echo");
        assert!(began.elapsed() >= Duration::from_millis(200), "two delays");
    }

    #[tokio::test]
    async fn dropped_replies_reach_the_server_and_end_in_a_reset() {
        let (up, received) = echo().await;
        let proxy = FaultProxy::start(up).await.expect("proxy");
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        round_trip(&mut s, b"a").await.expect("healthy");
        proxy.set(LinkFault::DropReplies);
        s.write_all(b"commit").await.expect("write");
        let applied = async {
            while received.load(Ordering::SeqCst) < 7 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(WAIT, applied)
            .await
            .expect("the request reached the server");
        // Its reply never comes; when the fault ends the connection is reset.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(proxy.stats().replies_dropped >= 1);
        proxy.set(LinkFault::Healthy);
        let mut buf = [0u8; 6];
        let read = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("the reset arrives");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "no reply, only the end: {read:?}"
        );
        assert_eq!(proxy.stats().resets, 1);
        // A new connection works.
        let mut again = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut again, b"b").await.expect("echo"), b"b");
    }

    #[tokio::test]
    async fn reset_ends_every_open_connection() {
        let (up, _) = echo().await;
        let proxy = FaultProxy::start(up).await.expect("proxy");
        let mut a = TcpStream::connect(proxy.addr()).await.expect("connect");
        let mut b = TcpStream::connect(proxy.addr()).await.expect("connect");
        round_trip(&mut a, b"a").await.expect("a");
        round_trip(&mut b, b"b").await.expect("b");
        assert_eq!(proxy.reset(), 2);
        for s in [&mut a, &mut b] {
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(WAIT, s.read(&mut buf))
                .await
                .expect("ends");
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        }
    }
}
