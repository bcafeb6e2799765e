//! Client-facing ports: reserved before the node starts, listening only once it can answer.
//!
//! A node's start replays the raw log and can take seconds. A socket that listens through
//! that time lets the kernel accept connections nobody answers: a Kafka client waits out its
//! request timeout on ApiVersions before it tries another broker. A socket that is bound but
//! not yet listening refuses connections at once, and still fails a port in use at start.

use std::net::SocketAddr;

use anyhow::{Context, Result, anyhow};
use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel queues before the node accepts them.
const BACKLOG: u32 = 1024;

/// A port bound for this node and not yet listening.
#[derive(Debug)]
pub(crate) struct Reserved {
    socket: TcpSocket,
    addr: SocketAddr,
    what: &'static str,
}

impl Reserved {
    /// Binds `addr` (`host:port`; the first address it resolves to) without listening.
    pub(crate) async fn bind(addr: &str, what: &'static str) -> Result<Reserved> {
        let resolved = tokio::net::lookup_host(addr)
            .await
            .with_context(|| format!("cannot resolve {addr} ({what})"))?
            .next()
            .ok_or_else(|| anyhow!("{addr} ({what}) resolves to no address"))?;
        let socket = if resolved.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .with_context(|| format!("cannot open a socket for {addr} ({what})"))?;
        // As TcpListener::bind does: a restarted node must not wait out TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket
            .bind(resolved)
            .with_context(|| format!("cannot listen on {addr} ({what})"))?;
        let addr = socket.local_addr()?;
        Ok(Reserved { socket, addr, what })
    }

    /// The bound address (with the port the system chose, if it was 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts accepting connections.
    pub(crate) fn listen(self) -> Result<TcpListener> {
        let (addr, what) = (self.addr, self.what);
        self.socket
            .listen(BACKLOG)
            .with_context(|| format!("cannot listen on {addr} ({what})"))
    }
}

/// Safe defaults: a node with no API keys serves loopback only, since anyone who can reach
/// it may do anything. With keys, every client door authenticates (Kafka clients by SASL,
/// PLAIN only over TLS off loopback). Raft RPC carries no API key: off loopback it must be
/// mutual TLS (`peer_tls`), or anyone who reaches it could write into the replicated log.
pub(crate) fn check_exposure(
    listeners: &[(&str, SocketAddr)],
    keys: bool,
    peer_tls: bool,
) -> Result<()> {
    for (what, addr) in listeners {
        if addr.ip().is_loopback() {
            continue;
        }
        if *what == "raft_addr" && !peer_tls {
            return Err(anyhow!(
                "raft_addr {addr} is not a loopback address, and Raft between nodes is not mutual TLS, so anyone \
                 who can reach it could write into the cluster's log. Give every node the cluster's CA and its \
                 certificate (--tls-ca, --tls-cert, --tls-key), or keep raft_addr on loopback"
            ));
        }
        if !keys {
            return Err(anyhow!(
                "{what} {addr} is not a loopback address, and this node has no API keys, so anyone who can reach \
                 it could read, write and manage everything. Start it on loopback, create an admin key \
                 (`tidemark keys create --name admin --role admin`), then restart it on {addr}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_loopback_needs_keys() {
        let lo: SocketAddr = "127.0.0.2:80".parse().expect("addr");
        let public: SocketAddr = "10.1.2.3:80".parse().expect("addr");
        assert!(
            check_exposure(
                &[("http_addr", lo), ("kafka_addr", lo), ("raft_addr", lo)],
                false,
                false
            )
            .is_ok()
        );
        let err = check_exposure(&[("http_addr", public)], false, true)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with(
                "http_addr 10.1.2.3:80 is not a loopback address, and this node has no API keys"
            ),
            "{err}"
        );
        assert!(check_exposure(&[("http_addr", public)], true, false).is_ok());
        assert!(check_exposure(&[("kafka_addr", public)], true, false).is_ok());
        let err = check_exposure(&[("raft_addr", public)], true, false)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("Raft between nodes is not mutual TLS"),
            "{err}"
        );
        assert!(check_exposure(&[("raft_addr", public)], true, true).is_ok());
    }
}
