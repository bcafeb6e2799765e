//! An accept loop to hand tonic as its stream of connections, for the Raft port and the
//! Flight SQL port. It does what tonic's own `TcpIncoming` does not: every connection must
//! get a place from the caller's `admit` (a connection limit) or is closed at once, and an
//! accept that fails (out of descriptors) waits and retries with backoff instead of spinning
//! a core (tonic 0.14 `continue`s at once).
//!
//! Invariant: a [`GatedStream`] holds its place for as long as tonic holds the connection;
//! dropping it frees the place.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// A connection `admit` gave a place `P`.
#[derive(Debug)]
pub struct GatedStream<P> {
    io: TcpStream,
    _place: P,
}

/// The connections `listener` accepts that `admit` gives a place (the others are closed at
/// once; `admit` counts and logs its refusals). `port` names the port in the log.
pub fn incoming<P, A>(
    listener: TcpListener,
    port: &'static str,
    admit: A,
) -> impl Stream<Item = std::io::Result<GatedStream<P>>> + Send + 'static
where
    P: Send + Unpin + 'static,
    A: Fn(std::net::SocketAddr) -> Option<P> + Send + Sync + 'static,
{
    let admit = Arc::new(admit);
    futures::stream::unfold((listener, admit), move |(listener, admit)| async move {
        let mut retry = RETRY_MIN;
        loop {
            let (io, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                // One client's connection failed before it was accepted: not the port's trouble.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    if retry == RETRY_MIN {
                        tracing::warn!(error = %e, port, "a port cannot accept connections; retrying");
                    }
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                    continue;
                }
            };
            if retry != RETRY_MIN {
                tracing::info!(port, "the port accepts connections again");
                retry = RETRY_MIN;
            }
            // A refused connection is closed here.
            let Some(place) = admit(peer) else { continue };
            // Small answers (an AppendEntries reply, a FlightInfo) go out at once, not after
            // the peer's delayed ACK (Nagle: 40 ms on every few commits).
            let _ = io.set_nodelay(true);
            return Some((Ok(GatedStream { io, _place: place }), (listener, admit)));
        }
    })
}

impl<P> Connected for GatedStream<P> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl<P: Unpin> AsyncRead for GatedStream<P> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<P: Unpin> AsyncWrite for GatedStream<P> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
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

/// A plain count of open connections with a ceiling: the Raft port's limit (its peers are
/// few, so no per-address split). A [`CountedPlace`] gives its place back when dropped.
#[derive(Debug, Clone)]
pub struct Counter {
    open: Arc<std::sync::atomic::AtomicUsize>,
    max: usize,
    refused: Arc<std::sync::atomic::AtomicU64>,
}

/// A place taken from a [`Counter`].
#[derive(Debug)]
pub struct CountedPlace(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for CountedPlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Counter {
    pub fn new(max: usize) -> Counter {
        Counter {
            open: Arc::default(),
            max,
            refused: Arc::default(),
        }
    }

    /// A place, or none when `max` connections are open (logged at the 1st, 2nd, 4th, …
    /// refusal).
    pub fn admit(&self, peer: std::net::SocketAddr) -> Option<CountedPlace> {
        use std::sync::atomic::Ordering;
        let taken = self
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            });
        if taken.is_ok() {
            return Some(CountedPlace(self.open.clone()));
        }
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(%peer, refused = n, max = self.max, "the Raft port has its most connections open; closing new ones");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_admits_up_to_its_ceiling_and_a_dropped_place_frees_one() {
        let c = Counter::new(2);
        let peer: std::net::SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let a = c.admit(peer).expect("first");
        let _b = c.admit(peer).expect("second");
        assert!(c.admit(peer).is_none());
        drop(a);
        assert!(c.admit(peer).is_some());
    }
}
