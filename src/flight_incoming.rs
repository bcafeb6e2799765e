//! The Flight SQL port's accept loop, handed to tonic as its stream of connections. It does
//! what tonic's own `TcpIncoming` does not: every connection passes the door's
//! [`ConnectionGate`] (`[flight]` limits, lowered to the node's descriptor budget), and an
//! accept that fails (out of descriptors) waits and retries instead of spinning.
//!
//! Invariant: a [`GatedStream`] holds its gate place for as long as tonic holds the
//! connection; dropping it frees the place.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tidemark_ingest::connections::{ConnectionGate, ConnectionPlace};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// A client connection admitted by the gate.
#[derive(Debug)]
pub(crate) struct GatedStream {
    io: TcpStream,
    _place: ConnectionPlace,
}

/// The connections `listener` accepts that `gate` admits (others are closed at once).
pub(crate) fn incoming(
    listener: TcpListener,
    gate: Arc<ConnectionGate>,
) -> impl Stream<Item = std::io::Result<GatedStream>> + Send + 'static {
    futures::stream::unfold((listener, gate), |(listener, gate)| async move {
        let mut retry = RETRY_MIN;
        loop {
            let (io, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    if retry == RETRY_MIN {
                        tracing::warn!(error = %e, "the Flight SQL port cannot accept connections; retrying");
                    }
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                    continue;
                }
            };
            if retry != RETRY_MIN {
                tracing::info!("the Flight SQL port accepts connections again");
                retry = RETRY_MIN;
            }
            // A refused connection is closed here; the gate counts and logs it.
            let Ok(place) = gate.admit(peer.ip()) else { continue };
            // Small answers (FlightInfo, prepared statements) go out at once, not after the
            // client's delayed ACK.
            let _ = io.set_nodelay(true);
            return Some((Ok(GatedStream { io, _place: place }), (listener, gate)));
        }
    })
}

impl Connected for GatedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for GatedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for GatedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
