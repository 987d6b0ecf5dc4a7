//! `TurmoilNetwork`: keel's network seam on turmoil's simulated TCP.

use std::io;

use async_trait::async_trait;
use keel::net::{BoxStream, Listener, Network};

/// The simulated network. Connections to a partitioned host are refused at once;
/// bytes in flight on a link that breaks are lost (turmoil has no retransmit).
#[derive(Clone, Copy, Debug, Default)]
pub struct TurmoilNetwork;

struct TurmoilListener(turmoil::net::TcpListener);

#[async_trait]
impl Listener for TurmoilListener {
    async fn accept(&mut self) -> io::Result<(BoxStream, String)> {
        let (stream, peer) = self.0.accept().await?;
        Ok((Box::new(stream), peer.to_string()))
    }
}

#[async_trait]
impl Network for TurmoilNetwork {
    async fn connect(&self, addr: &str) -> io::Result<BoxStream> {
        let stream = turmoil::net::TcpStream::connect(addr).await?;
        Ok(Box::new(stream))
    }

    async fn listen(&self, addr: &str) -> io::Result<Box<dyn Listener>> {
        let listener = turmoil::net::TcpListener::bind(addr).await?;
        Ok(Box::new(TurmoilListener(listener)))
    }
}
