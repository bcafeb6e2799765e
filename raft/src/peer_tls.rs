//! Mutual TLS between cluster nodes for Raft RPC (AppendEntries, votes, snapshot and scrub
//! file transfers): every node presents its certificate and accepts only peers whose
//! certificate the cluster's CA signed, so nothing but a member can replicate into or read
//! from a node's log.

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// The two sides of a node's peer TLS, built from PEM bytes.
#[derive(Debug, Clone)]
pub struct PeerTls {
    pub(crate) server: ServerTlsConfig,
    pub(crate) client: ClientTlsConfig,
}

impl PeerTls {
    /// `cert`/`key`: this node's identity; `ca`: the CA that signs every member's; `peer_name`:
    /// the name checked in a peer's certificate (default: the address's host, an IP SAN).
    pub fn new(cert: &[u8], key: &[u8], ca: &[u8], peer_name: Option<&str>) -> PeerTls {
        let identity = Identity::from_pem(cert, key);
        let server = ServerTlsConfig::new()
            .identity(identity.clone())
            .client_ca_root(Certificate::from_pem(ca))
            .timeout(std::time::Duration::from_secs(10));
        let mut client = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(identity);
        if let Some(name) = peer_name {
            client = client.domain_name(name);
        }
        PeerTls { server, client }
    }
}

/// An endpoint for a peer's Raft address: `https://` with the client side of `tls`, or plain.
pub(crate) fn endpoint(
    addr: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, tonic::transport::Error> {
    match tls {
        None => Endpoint::from_shared(format!("http://{addr}")),
        Some(t) => Endpoint::from_shared(format!("https://{addr}"))?.tls_config(t.clone()),
    }
}
