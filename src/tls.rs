//! TLS for the node's listeners (rustls with the ring provider): the certificate files are
//! read and checked once, before any port listens, so a bad file fails the start naming it.
//! HTTP is served by axum over [`TlsListener`]; Flight SQL and the admin service by tonic's
//! own TLS; the Kafka listener takes a `tokio_rustls::TlsAcceptor`.
//!
//! Invariant: a handshake never blocks the accept loop (each runs in its own task with a
//! timeout), so a silent or slow client cannot hold a port.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::config::TlsSection;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The node's certificate material, read and checked.
#[derive(Clone)]
pub(crate) struct Loaded {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Option<Vec<u8>>,
    pub(crate) section: TlsSection,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process's provider, for what builds rustls configs without naming one
/// (tonic). Idempotent.
pub(crate) fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Loaded {
    /// Reads the files `section` names; `None` when TLS is off.
    pub(crate) fn load(section: &TlsSection) -> Result<Option<Loaded>> {
        let (Some(cert), Some(key)) = (&section.cert, &section.key) else {
            return Ok(None);
        };
        let read = |p: &Path, what: &str| {
            std::fs::read(p).with_context(|| format!("cannot read tls.{what} {}", p.display()))
        };
        let loaded = Loaded {
            cert_pem: read(cert, "cert")?,
            key_pem: read(key, "key")?,
            ca_pem: section.ca.as_deref().map(|p| read(p, "ca")).transpose()?,
            section: section.clone(),
        };
        // Build once now: a certificate that does not match its key fails the start.
        loaded
            .server_config(&[])
            .with_context(|| format!("tls.cert {} / tls.key {}", cert.display(), key.display()))?;
        if let Some(ca) = &section.ca {
            loaded
                .roots()
                .with_context(|| format!("tls.ca {}", ca.display()))?;
        }
        Ok(Some(loaded))
    }

    fn certs(&self) -> Result<Vec<CertificateDer<'static>>> {
        let certs: Vec<_> =
            CertificateDer::pem_slice_iter(&self.cert_pem).collect::<Result<_, _>>()?;
        if certs.is_empty() {
            bail!("no PEM certificate in the file");
        }
        Ok(certs)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(&self.key_pem)
            .context("no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file")
    }

    fn roots(&self) -> Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_deref().unwrap_or_default()) {
            roots.add(c?)?;
        }
        if roots.is_empty() {
            bail!("no PEM certificate in the file");
        }
        Ok(roots)
    }

    /// A server config presenting this node's certificate, offering `alpn`.
    pub(crate) fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.certs()?, self.key()?)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// The HTTP listener's acceptor (HTTP/2 and HTTP/1.1 by ALPN), if HTTP TLS is on.
    pub(crate) fn http(&self) -> Result<Option<tokio_rustls::TlsAcceptor>> {
        if !self.section.http {
            return Ok(None);
        }
        Ok(Some(self.server_config(&[b"h2", b"http/1.1"])?.into()))
    }

    /// The Kafka listener's acceptor, if Kafka TLS is on.
    pub(crate) fn kafka(&self) -> Result<Option<tokio_rustls::TlsAcceptor>> {
        if !self.section.kafka {
            return Ok(None);
        }
        Ok(Some(self.server_config(&[])?.into()))
    }

    /// Mutual TLS for Raft between nodes, when the cluster's CA is given.
    pub(crate) fn peers(&self) -> Option<tidemark_raft::peer_tls::PeerTls> {
        let ca = self.ca_pem.as_deref()?;
        Some(tidemark_raft::peer_tls::PeerTls::new(
            &self.cert_pem,
            &self.key_pem,
            ca,
            self.section.peer_name.as_deref(),
        ))
    }

    /// How this node reaches peers' HTTPS ports (forwarded writes), when HTTP TLS is on.
    pub(crate) fn peer_https(&self) -> Result<Option<tidemark_ingest::forward::PeerHttps>> {
        let (true, Some(ca)) = (self.section.http, self.ca_pem.as_deref()) else {
            return Ok(None);
        };
        tidemark_ingest::forward::PeerHttps::new(ca, self.section.peer_name.clone())
            .map(Some)
            .map_err(|e| anyhow::anyhow!("tls.ca: {e}"))
    }

    /// tonic's TLS for the Flight SQL port, if on.
    pub(crate) fn flight(&self) -> Option<tonic::transport::ServerTlsConfig> {
        self.section.flight.then(|| {
            tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(
                    &self.cert_pem,
                    &self.key_pem,
                ))
                .timeout(HANDSHAKE_TIMEOUT)
        })
    }
}

/// A TCP listener whose connections arrive with their TLS handshake done, for `axum::serve`.
pub(crate) struct TlsListener {
    connections: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// `gate` counts a connection from its accept, through its handshake: handshakes that
    /// never finish are bounded like any other connection. (Once handed to the serve loop,
    /// the connection is counted there.)
    pub(crate) fn new(
        tcp: TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        gate: std::sync::Arc<tidemark_ingest::connections::ConnectionGate>,
    ) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, connections) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let (socket, peer) = tokio::select! {
                    accepted = tcp.accept() => match accepted {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "accepting an HTTPS connection failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    // axum stopped serving: close the port.
                    _ = tx.closed() => return,
                };
                let Ok(place) = gate.admit(peer.ip()) else {
                    // Closed at once; the gate counted and logged it.
                    continue;
                };
                let _ = socket.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await;
                    drop(place);
                    match handshake {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { connections, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        match self.connections.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
