//! The cluster secret: what every Raft RPC carries, so only the cluster's members can append
//! entries, vote, or read snapshot and data files (raw beacons among them) from this port,
//! with or without TLS. The same secret is the node token other nodes present to this one's
//! internal HTTP routes (`tmk_node_<secret>`). It is a bearer secret: off loopback, mutual
//! TLS is what keeps it from the network.
//!
//! It comes from configuration or the environment and lives in memory only: never in the
//! replicated log, a checkpoint or a backup (a joining node has none of those yet, and a
//! backup must not carry the key to the cluster it came from). A node given none draws a
//! random one, which is enough for a single node and refuses every peer.
//!
//! Invariant: a presented secret is compared by SHA-256 digest, so the time a comparison
//! takes says nothing about the secret.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The gRPC metadata key that carries the secret on every Raft RPC.
pub const METADATA_KEY: &str = "x-tidemark-cluster-secret";
/// The shortest secret accepted.
pub const SECRET_LEN_MIN: usize = 16;
const SECRET_LEN_MAX: usize = 1024;

/// The cluster's shared secret.
#[derive(Clone)]
pub struct ClusterSecret {
    secret: Arc<str>,
    digest: [u8; 32],
    generated: bool,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSecret")
            .field("generated", &self.generated)
            .finish_non_exhaustive()
    }
}

impl ClusterSecret {
    /// A secret given by an operator, or why it is not usable.
    pub fn new(secret: &str) -> Result<ClusterSecret, String> {
        let len = secret.chars().count();
        if !(SECRET_LEN_MIN..=SECRET_LEN_MAX).contains(&len) {
            return Err(format!(
                "must be {SECRET_LEN_MIN} to {SECRET_LEN_MAX} characters long, not {len}"
            ));
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("may hold only printable ASCII characters without spaces".into());
        }
        Ok(Self::of(secret, false))
    }

    /// A random secret for a node that was given none: only this process knows it.
    pub fn random() -> Result<ClusterSecret, String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| format!("no random bits from the OS: {e}"))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self::of(&hex, true))
    }

    fn of(secret: &str, generated: bool) -> ClusterSecret {
        ClusterSecret {
            secret: Arc::from(secret),
            digest: Sha256::digest(secret.as_bytes()).into(),
            generated,
        }
    }

    /// Whether the node drew it itself (so no other node can know it).
    pub fn is_generated(&self) -> bool {
        self.generated
    }

    /// The secret itself, to present to a peer.
    pub fn expose(&self) -> &str {
        &self.secret
    }

    /// Whether `presented` is the secret.
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest == self.digest
    }

    /// Adds the secret to every outgoing Raft RPC.
    #[cfg(test)]
    pub(crate) fn presenter(&self) -> Present {
        Present(Some(self.clone()))
    }

    /// Refuses every incoming Raft RPC without the secret.
    pub(crate) fn checker(&self) -> Check {
        Check(self.clone())
    }
}

/// Adds the secret, if there is one, to outgoing RPCs (none: a peer will refuse them).
#[derive(Debug, Clone, Default)]
pub struct Present(pub(crate) Option<ClusterSecret>);

impl Interceptor for Present {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let Some(secret) = &self.0 else {
            return Ok(req);
        };
        let value = MetadataValue::try_from(secret.expose())
            .map_err(|_| Status::internal("the cluster secret is not a valid gRPC header value"))?;
        req.metadata_mut().insert(METADATA_KEY, value);
        Ok(req)
    }
}

/// Refuses incoming RPCs that do not carry the secret.
#[derive(Debug, Clone)]
pub struct Check(ClusterSecret);

impl Interceptor for Check {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let presented = req
            .metadata()
            .get(METADATA_KEY)
            .and_then(|v| v.to_str().ok());
        match presented {
            Some(s) if self.0.matches(s) => Ok(req),
            Some(_) => Err(Status::unauthenticated(
                "wrong cluster secret: every node of a cluster needs the same cluster_secret (or TIDEMARK_CLUSTER_SECRET)",
            )),
            None => Err(Status::unauthenticated(
                "this is a tidemark Raft port: RPCs need the cluster secret (cluster_secret, or TIDEMARK_CLUSTER_SECRET)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_checked_by_value_and_shape() {
        let s = ClusterSecret::new("correct-horse-battery-staple").expect("valid");
        assert!(s.matches("correct-horse-battery-staple"));
        assert!(!s.matches("correct-horse-battery-stapl"));
        assert!(ClusterSecret::new("short").is_err());
        assert!(ClusterSecret::new("has a space in it, see").is_err());
        let r = ClusterSecret::random().expect("random");
        assert!(r.is_generated() && r.expose().len() == 64);
        assert!(
            !format!("{s:?}").contains("horse"),
            "Debug never shows the secret"
        );
    }

    #[test]
    fn the_checker_refuses_a_missing_or_wrong_secret_and_takes_the_right_one() {
        let s = ClusterSecret::new("0123456789abcdef0123").expect("valid");
        let mut check = s.checker();
        assert_eq!(
            check
                .call(Request::new(()))
                .map(|_| ())
                .map_err(|e| e.code()),
            Err(tonic::Code::Unauthenticated)
        );
        let other = ClusterSecret::new("fedcba98765432100123").expect("valid");
        let wrong = other.presenter().call(Request::new(())).expect("present");
        assert!(check.call(wrong).is_err());
        let right = s.presenter().call(Request::new(())).expect("present");
        assert!(check.call(right).is_ok());
    }
}
