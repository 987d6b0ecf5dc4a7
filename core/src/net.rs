//! The network seam: byte streams to and from named addresses.
//!
//! Production uses [`TokioNetwork`] (plain TCP). The simulator implements the same
//! trait on `turmoil::net`, so partitions, delays and replies lost after a request
//! was applied reach the runtime exactly as a real network delivers them. Anything
//! in `keel` that talks to another machine (the remote storage client in the
//! simulator, the PostgreSQL adapter) opens its connections here.

use std::io;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

/// A connected, bidirectional byte stream.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ByteStream for T {}

/// A boxed byte stream.
pub type BoxStream = Box<dyn ByteStream>;

/// Accepts inbound byte streams.
#[async_trait]
pub trait Listener: Send {
    /// Wait for the next inbound connection; returns the stream and the peer's address.
    async fn accept(&mut self) -> io::Result<(BoxStream, String)>;
}

/// The network seam. See the [module docs](self).
#[async_trait]
pub trait Network: Send + Sync + 'static {
    /// Open a stream to `addr` (`host:port`).
    async fn connect(&self, addr: &str) -> io::Result<BoxStream>;

    /// Listen for streams on `addr` (`host:port`).
    async fn listen(&self, addr: &str) -> io::Result<Box<dyn Listener>>;
}

/// The production network: tokio TCP.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioNetwork;

struct TokioListener(tokio::net::TcpListener);

#[async_trait]
impl Listener for TokioListener {
    async fn accept(&mut self) -> io::Result<(BoxStream, String)> {
        let (stream, peer) = self.0.accept().await?;
        stream.set_nodelay(true)?;
        Ok((Box::new(stream), peer.to_string()))
    }
}

#[async_trait]
impl Network for TokioNetwork {
    async fn connect(&self, addr: &str) -> io::Result<BoxStream> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Box::new(stream))
    }

    async fn listen(&self, addr: &str) -> io::Result<Box<dyn Listener>> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        Ok(Box::new(TokioListener(listener)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn tokio_network_round_trips_bytes_on_loopback() {
        let net = TokioNetwork;
        let probe = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = probe.local_addr().expect("addr").to_string();
        drop(probe);
        let mut listener = net.listen(&addr).await.expect("listen");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.expect("read");
            s.write_all(&buf).await.expect("write");
        });
        let mut c = net.connect(&addr).await.expect("connect");
        c.write_all(b"keel").await.expect("write");
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"keel");
        server.await.expect("server");
    }
}
