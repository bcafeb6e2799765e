//! API keys and roles: who may do what at every door. Keys are catalog state, created and
//! revoked by catalog commands, so every node of a cluster authenticates the same callers.
//!
//! Invariants:
//! - Only a SHA-256 of each secret is stored (in the log, checkpoints and snapshots). Secrets
//!   are 256 random bits generated at the edge, so a fast hash is the right one (no password
//!   stretching is needed for tokens nobody chose) and comparing digests leaks nothing usable.
//! - Once a key has been created, every door that checks keys requires one, for good:
//!   revoking keys never reopens a node, and the last admin key cannot be revoked.
//! - What a role may do is one pure function, [`Role::allows`], used by HTTP and Flight alike.
//!
//! Tokens look like `tmk_<id>_<secret>` (12 and 64 lowercase hex digits). Nodes of a cluster
//! call each other's internal routes with `tmk_node_<cluster secret>`: the secret comes from
//! each node's configuration and is never in the log (`tidemark_raft::cluster_secret`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::LogPosition;
use crate::error::{Error, Result, SpecProblem};

pub const TOKEN_PREFIX: &str = "tmk_";
/// A node's token to another node's internal routes: this prefix, then the cluster secret.
pub const NODE_TOKEN_PREFIX: &str = "tmk_node_";
pub const KEY_ID_LEN: usize = 12;
pub const SECRET_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including keys and cluster membership.
    Admin,
    /// The tag registry and retention; reads datasource specs.
    GovernanceEditor,
    /// Sends beacons; asks for tag suggestions.
    Publisher,
    /// Reads everything: SQL, specs, governance, metrics.
    Analyst,
    /// SQL over the rows of its tenants only (values of each datasource's tenant dimension);
    /// datasources without a tenant dimension and the system tables are invisible to it.
    MerchantReader,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::GovernanceEditor,
        Role::Publisher,
        Role::Analyst,
        Role::MerchantReader,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::GovernanceEditor => "governance_editor",
            Role::Publisher => "publisher",
            Role::Analyst => "analyst",
            Role::MerchantReader => "merchant_reader",
        }
    }

    pub fn allows(self, action: Action) -> bool {
        use Action::*;
        match self {
            Role::Admin => true,
            Role::GovernanceEditor => matches!(action, ReadCatalog | Suggest | ManageGovernance),
            Role::Publisher => matches!(action, Publish | Suggest),
            Role::Analyst => matches!(action, Query | ReadRaw | ReadCatalog | Suggest | Monitor),
            Role::MerchantReader => matches!(action, Query),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request does, as far as access is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send beacons (HTTP) or records (Kafka).
    Publish,
    /// Run SQL (HTTP and Flight SQL), system tables included.
    Query,
    /// Read the raw event stream: Kafka Fetch, offsets and consumer groups.
    ReadRaw,
    /// Read datasource specs and the tag registry.
    ReadCatalog,
    /// `GET /v1/governance/suggest`, for tools that check tags before sending.
    Suggest,
    /// Create, change or delete datasources.
    ManageDatasources,
    /// Change the tag registry and retention.
    ManageGovernance,
    /// Create, list and revoke API keys.
    ManageKeys,
    /// Membership changes, leader transfer, fault injection.
    ManageCluster,
    /// Metrics and cluster status.
    Monitor,
    /// Node-to-node calls (read index, producer ids).
    Internal,
}

impl Action {
    pub fn describe(self) -> &'static str {
        match self {
            Action::Publish => "publish events",
            Action::Query => "run queries",
            Action::ReadRaw => "read the raw event stream (Kafka Fetch and consumer groups)",
            Action::ReadCatalog => "read datasource specs and the tag registry",
            Action::Suggest => "ask for tag suggestions",
            Action::ManageDatasources => "manage datasources",
            Action::ManageGovernance => "change governance",
            Action::ManageKeys => "manage API keys",
            Action::ManageCluster => "manage the cluster",
            Action::Monitor => "read metrics and cluster status",
            Action::Internal => "make node-to-node calls",
        }
    }
}

/// An API key as the catalog keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// SHA-256 of the secret, lowercase hex.
    pub secret_sha256: String,
    #[serde(default, skip_serializing_if = "KeyScope::is_empty")]
    pub scope: KeyScope,
    /// What a Kafka client's SASL/SCRAM-SHA-256 login is checked against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scram: Option<ScramCredential>,
    pub created_at: LogPosition,
    pub created_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<LogPosition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<i64>,
}

impl ApiKey {
    /// The key as listings and the audit log show it: never the secret's digest.
    pub fn public_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "tenants": self.scope.tenants,
            "publish": self.scope.publish,
            "created_at": self.created_at,
            "created_ms": self.created_ms,
            "revoked": self.revoked_at.is_some(),
            "revoked_ms": self.revoked_ms,
        })
    }
}

/// A key to create, as the edge logs it (the secret already hashed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub secret_sha256: String,
    #[serde(default, skip_serializing_if = "KeyScope::is_empty")]
    pub scope: KeyScope,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scram: Option<ScramCredential>,
}

/// A key's SCRAM-SHA-256 verifier (RFC 5802): the password is the whole token. Derived at the
/// edge from the secret with a random salt, so like the digest it cannot give the token back;
/// the secret's 256 random bits make the iteration count a formality, kept at RFC 7677's
/// minimum of 4096 because clients refuse fewer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScramCredential {
    /// Base64.
    pub salt: String,
    pub iterations: u32,
    /// Hex: H(HMAC(SaltedPassword, "Client Key")).
    pub stored_key: String,
    /// Hex: HMAC(SaltedPassword, "Server Key").
    pub server_key: String,
}

/// What a key is limited to beyond its role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyScope {
    /// merchant_reader: the values of each datasource's tenant dimension whose rows the key
    /// may read (at least one; a merchant group may have several).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
    /// publisher: the datasources it may publish to and, for each, the tags; absent: every
    /// datasource and tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<BTreeMap<String, TagGrant>>,
}

impl KeyScope {
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty() && self.publish.is_none()
    }

    /// What this key may publish to `datasource`.
    pub fn publish_right(&self, datasource: &str) -> PublishRight<'_> {
        match &self.publish {
            None => PublishRight::Any,
            Some(grants) => match grants.get(datasource) {
                None => PublishRight::Nothing,
                Some(TagGrant::All(_)) => PublishRight::Any,
                Some(TagGrant::Only(tags)) => PublishRight::Tags(tags),
            },
        }
    }

    /// The datasources a restricted publisher key may publish to, for messages.
    pub fn publishable(&self) -> Vec<&str> {
        self.publish
            .iter()
            .flat_map(|g| g.keys().map(String::as_str))
            .collect()
    }
}

/// The tags a publisher key may send to one datasource: `"*"` for all, or their names
/// (aliases resolve to their tag before the check; the timestamp field is always allowed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TagGrant {
    /// Must be `"*"`.
    All(String),
    Only(Vec<String>),
}

/// What a caller may publish to one datasource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRight<'a> {
    /// Every tag.
    Any,
    /// These tags only (and the timestamp field).
    Tags(&'a [String]),
    /// Nothing: the datasource is not among the key's grants.
    Nothing,
}

/// Longest tenant value a key may name (tenant values are dimension values).
const TENANT_LEN_MAX: usize = 256;

/// Changes to the keys (`op`: create_key, revoke_key, set_node_secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AccessCommand {
    CreateKey {
        key: NewKey,
    },
    RevokeKey {
        id: String,
    },
    /// Logged by releases before the cluster secret, once, before the first key:
    /// a node token in plain text. Such entries still decode and apply, as nothing: the
    /// secret they carry is never kept and no longer lets anyone in (nodes present the
    /// cluster secret from their configuration instead).
    SetNodeSecret {
        secret: String,
    },
}

/// Who made a request, once its credentials are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credentials, on a node with no keys: everything is allowed (loopback only).
    Anonymous,
    Key {
        id: String,
        role: Role,
        scope: std::sync::Arc<KeyScope>,
    },
    /// Another node of the cluster.
    Node,
}

impl Principal {
    pub fn allows(&self, action: Action) -> bool {
        match self {
            Principal::Anonymous => true,
            Principal::Key { role, .. } => role.allows(action),
            // Internal calls, and a node draining its spool of beacons it accepted (and
            // authenticated) while there was no quorum.
            Principal::Node => matches!(action, Action::Internal | Action::Publish),
        }
    }

    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        match self {
            Principal::Anonymous => "anonymous".into(),
            Principal::Key { id, .. } => format!("key:{id}"),
            Principal::Node => "node".into(),
        }
    }

    /// The refusal for `action`, naming the caller, its role and what it tried.
    pub fn forbidden(&self, action: Action) -> String {
        match self {
            Principal::Key { id, role, .. } => {
                let allowed: Vec<&str> = Role::ALL
                    .iter()
                    .filter(|r| r.allows(action))
                    .map(|r| r.as_str())
                    .collect();
                let roles = match allowed.split_last() {
                    Some((last, rest)) if !rest.is_empty() => {
                        format!("{} or {last}", rest.join(", "))
                    }
                    _ => allowed.join(""),
                };
                format!(
                    "API key {id} (role {role}) may not {}; that needs role {roles}",
                    action.describe()
                )
            }
            Principal::Node => format!("the node token may not {}", action.describe()),
            Principal::Anonymous => format!("anonymous callers may not {}", action.describe()),
        }
    }
}

/// Why credentials were not accepted (an HTTP 401 / gRPC UNAUTHENTICATED).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error(
        "this node requires an API key: send `Authorization: Bearer tmk_…` (create keys with `tidemark keys create`)"
    )]
    Missing,
    #[error("the API key is malformed: expected tmk_<12 hex digits>_<64 hex digits>")]
    Malformed,
    #[error("API key {id} does not exist on this node")]
    UnknownKey { id: String },
    #[error("API key {id} was revoked")]
    Revoked { id: String },
    #[error("the secret of API key {id} is wrong")]
    WrongSecret { id: String },
    #[error("the node token is wrong")]
    WrongNodeToken,
}

/// The API keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "AccessRecord")]
pub struct Access {
    keys: BTreeMap<String, ApiKey>,
    /// A `SetNodeSecret` entry of an older release was applied: a second one is refused, as
    /// that release refused it, so replaying such a log decides as it did. The secret
    /// itself is never kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    node_secret_set: bool,
}

/// How [`Access`] is read: checkpoints of releases before the cluster secret hold the
/// node secret itself, which is dropped here (only that there was one is kept).
#[derive(Deserialize)]
struct AccessRecord {
    keys: BTreeMap<String, ApiKey>,
    #[serde(default)]
    node_secret_set: bool,
    #[serde(default)]
    node_secret: Option<String>,
}

impl From<AccessRecord> for Access {
    fn from(r: AccessRecord) -> Self {
        Access {
            keys: r.keys,
            node_secret_set: r.node_secret_set || r.node_secret.is_some(),
        }
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `secret`, lowercase hex.
pub fn sha256_hex(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Splits `tmk_<id>_<secret>` into id and secret.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (is_hex(id, KEY_ID_LEN) && is_hex(secret, SECRET_LEN)).then_some((id, secret))
}

impl Access {
    /// Whether callers must present a key: from the first key created on.
    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &ApiKey> {
        self.keys.values()
    }

    pub fn key(&self, id: &str) -> Option<&ApiKey> {
        self.keys.get(id)
    }

    /// Checks a bearer token (`None`: no credentials sent). A node token is accepted only
    /// where the caller passes the cluster secret (`node_secret`: node-to-node HTTP routes).
    pub fn authenticate(
        &self,
        token: Option<&str>,
        node_secret: Option<&str>,
    ) -> std::result::Result<Principal, Denied> {
        let Some(token) = token else {
            return if self.required() {
                Err(Denied::Missing)
            } else {
                Ok(Principal::Anonymous)
            };
        };
        if let Some(secret) = token.strip_prefix(NODE_TOKEN_PREFIX) {
            return match node_secret {
                // Compared as digests: the time a comparison takes says nothing of the secret.
                Some(s) if sha256_hex(s) == sha256_hex(secret) => Ok(Principal::Node),
                _ => Err(Denied::WrongNodeToken),
            };
        }
        let (id, secret) = parse_token(token).ok_or(Denied::Malformed)?;
        let key = self
            .keys
            .get(id)
            .ok_or_else(|| Denied::UnknownKey { id: id.to_string() })?;
        if key.revoked_at.is_some() {
            return Err(Denied::Revoked { id: id.to_string() });
        }
        if sha256_hex(secret) != key.secret_sha256 {
            return Err(Denied::WrongSecret { id: id.to_string() });
        }
        Ok(Principal::Key {
            id: key.id.clone(),
            role: key.role,
            scope: std::sync::Arc::new(key.scope.clone()),
        })
    }

    pub fn check(&self, cmd: &AccessCommand) -> Result<()> {
        match cmd {
            AccessCommand::CreateKey { key } => {
                let mut problems = Vec::new();
                let mut problem = |field: &str, message: String| {
                    problems.push(SpecProblem {
                        field: field.into(),
                        message,
                    });
                };
                if !is_hex(&key.id, KEY_ID_LEN) {
                    problem("id", format!("must be {KEY_ID_LEN} lowercase hex digits"));
                }
                if key.name.trim().is_empty()
                    || key.name.len() > 128
                    || key.name.chars().any(char::is_control)
                {
                    problem(
                        "name",
                        "must be 1 to 128 characters, without control characters".into(),
                    );
                }
                if !is_hex(&key.secret_sha256, 64) {
                    problem("secret_sha256", "must be 64 lowercase hex digits".into());
                }
                if let Some(c) = &key.scram
                    && (!is_hex(&c.stored_key, 64)
                        || !is_hex(&c.server_key, 64)
                        || c.iterations < 4096
                        || c.salt.is_empty())
                {
                    problem(
                        "scram",
                        "needs a salt, at least 4096 iterations and 64-hex-digit keys".into(),
                    );
                }
                let tenants = &key.scope.tenants;
                if key.role == Role::MerchantReader && tenants.is_empty() {
                    problem(
                        "tenants",
                        "a merchant_reader key needs at least one tenant: the values of the tenant dimension \
                         (e.g. merchant_id) whose rows it may read"
                            .into(),
                    );
                }
                if key.role != Role::MerchantReader && !tenants.is_empty() {
                    problem(
                        "tenants",
                        format!(
                            "only merchant_reader keys are scoped to tenants; a {} key reads by its role",
                            key.role
                        ),
                    );
                }
                for t in tenants {
                    if t.is_empty() || t.len() > TENANT_LEN_MAX || t.chars().any(char::is_control) {
                        problem(
                            "tenants",
                            format!(
                                "{t:?} must be 1 to {TENANT_LEN_MAX} bytes, without control characters"
                            ),
                        );
                    }
                }
                if let Some(grants) = &key.scope.publish {
                    if key.role != Role::Publisher {
                        problem(
                            "publish",
                            format!(
                                "only publisher keys carry publish grants; a {} key publishes by its role",
                                key.role
                            ),
                        );
                    }
                    if grants.is_empty() {
                        problem(
                            "publish",
                            "name at least one datasource (omit \"publish\" for all)".into(),
                        );
                    }
                    for (ds, grant) in grants {
                        if ds.is_empty() {
                            problem("publish", "a datasource name is empty".into());
                        }
                        match grant {
                            TagGrant::All(star) if star != "*" => problem(
                                &format!("publish.{ds}"),
                                format!("{star:?} is not a grant: give \"*\" (every tag) or a list of tag names"),
                            ),
                            TagGrant::Only(tags) if tags.is_empty() || tags.iter().any(|t| t.is_empty()) => problem(
                                &format!("publish.{ds}"),
                                "list at least one tag name, none of them empty (\"*\" grants every tag)".into(),
                            ),
                            _ => {}
                        }
                    }
                }
                if !problems.is_empty() {
                    return Err(Error::InvalidKey(problems));
                }
                if self.keys.contains_key(&key.id) {
                    return Err(Error::KeyExists { id: key.id.clone() });
                }
                Ok(())
            }
            AccessCommand::RevokeKey { id } => {
                let key = self
                    .keys
                    .get(id)
                    .ok_or_else(|| Error::UnknownKey { id: id.clone() })?;
                let other_admin = self
                    .keys
                    .values()
                    .any(|k| k.id != *id && k.role == Role::Admin && k.revoked_at.is_none());
                if key.role == Role::Admin && key.revoked_at.is_none() && !other_admin {
                    return Err(Error::LastAdminKey { id: id.clone() });
                }
                Ok(())
            }
            // Old entries only: they apply as nothing but the mark (see the variant).
            AccessCommand::SetNodeSecret { secret } => {
                if self.node_secret_set {
                    return Err(Error::KeyExists { id: "node".into() });
                }
                if !is_hex(secret, SECRET_LEN) {
                    return Err(Error::InvalidKey(vec![SpecProblem {
                        field: "secret".into(),
                        message: format!("must be {SECRET_LEN} lowercase hex digits"),
                    }]));
                }
                Ok(())
            }
        }
    }

    /// Applies a checked command. Revoking a revoked key changes nothing.
    pub fn apply(
        &mut self,
        position: LogPosition,
        writer_time_ms: i64,
        cmd: &AccessCommand,
    ) -> Result<()> {
        self.check(cmd)?;
        match cmd {
            AccessCommand::CreateKey { key } => {
                self.keys.insert(
                    key.id.clone(),
                    ApiKey {
                        id: key.id.clone(),
                        name: key.name.clone(),
                        role: key.role,
                        secret_sha256: key.secret_sha256.clone(),
                        scope: key.scope.clone(),
                        scram: key.scram.clone(),
                        created_at: position,
                        created_ms: writer_time_ms,
                        revoked_at: None,
                        revoked_ms: None,
                    },
                );
            }
            AccessCommand::RevokeKey { id } => {
                if let Some(k) = self.keys.get_mut(id)
                    && k.revoked_at.is_none()
                {
                    k.revoked_at = Some(position);
                    k.revoked_ms = Some(writer_time_ms);
                }
            }
            AccessCommand::SetNodeSecret { .. } => self.node_secret_set = true,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn new_key(id: &str, role: Role) -> AccessCommand {
        AccessCommand::CreateKey {
            key: NewKey {
                id: id.into(),
                name: format!("{role} key"),
                role,
                secret_sha256: sha256_hex(SECRET),
                scope: KeyScope::default(),
                scram: None,
            },
        }
    }

    #[test]
    fn an_old_node_secret_entry_applies_as_nothing_and_lets_no_one_in() {
        let mut a = Access::default();
        a.apply(3, 10, &new_key("aaaaaaaaaaaa", Role::Admin))
            .expect("admin");
        let old = "a".repeat(64);
        a.apply(
            4,
            11,
            &AccessCommand::SetNodeSecret {
                secret: old.clone(),
            },
        )
        .expect("old entries still apply");
        let json = serde_json::to_string(&a).expect("json");
        assert!(!json.contains(&old), "the plaintext is not kept: {json}");
        let token = format!("{NODE_TOKEN_PREFIX}{old}");
        assert_eq!(
            a.authenticate(Some(&token), None),
            Err(Denied::WrongNodeToken)
        );
        assert_eq!(
            a.authenticate(Some(&token), Some("the-cluster-secret")),
            Err(Denied::WrongNodeToken)
        );
        let node = format!("{NODE_TOKEN_PREFIX}the-cluster-secret");
        assert_eq!(
            a.authenticate(Some(&node), Some("the-cluster-secret")),
            Ok(Principal::Node)
        );
        assert_eq!(
            a.authenticate(Some(&node), None),
            Err(Denied::WrongNodeToken),
            "only where the caller allows"
        );
        // A checkpoint of an older release, with the plaintext, still reads.
        let older = format!("{{\"keys\": {{}}, \"node_secret\": \"{old}\"}}");
        let read: Access = serde_json::from_str(&older).expect("an old checkpoint's access");
        let json = serde_json::to_string(&read).expect("json");
        assert!(
            !json.contains(&old) && json.contains("\"node_secret_set\":true"),
            "{json}"
        );
        // As the older release did, a second node secret entry is refused (replay decides alike).
        assert!(
            a.check(&AccessCommand::SetNodeSecret {
                secret: "b".repeat(64)
            })
            .is_err()
        );
        let mut read = read;
        assert!(
            read.apply(
                5,
                12,
                &AccessCommand::SetNodeSecret {
                    secret: "b".repeat(64)
                }
            )
            .is_err()
        );
    }

    #[test]
    fn keys_authenticate_by_secret_and_stay_required_once_created() {
        let mut a = Access::default();
        assert_eq!(a.authenticate(None, None), Ok(Principal::Anonymous));
        a.apply(3, 10, &new_key("aaaaaaaaaaaa", Role::Admin))
            .expect("admin");
        a.apply(4, 11, &new_key("bbbbbbbbbbbb", Role::Analyst))
            .expect("analyst");
        assert_eq!(a.authenticate(None, None), Err(Denied::Missing));
        let token = format!("tmk_bbbbbbbbbbbb_{SECRET}");
        assert_eq!(
            a.authenticate(Some(&token), None),
            Ok(Principal::Key {
                id: "bbbbbbbbbbbb".into(),
                role: Role::Analyst,
                scope: Default::default()
            })
        );
        let wrong = format!("tmk_bbbbbbbbbbbb_{}", "f".repeat(64));
        assert_eq!(
            a.authenticate(Some(&wrong), None),
            Err(Denied::WrongSecret {
                id: "bbbbbbbbbbbb".into()
            })
        );
        assert_eq!(
            a.authenticate(Some("Bearer x"), None),
            Err(Denied::Malformed)
        );
        let unknown = format!("tmk_cccccccccccc_{SECRET}");
        assert_eq!(
            a.authenticate(Some(&unknown), None),
            Err(Denied::UnknownKey {
                id: "cccccccccccc".into()
            })
        );

        a.apply(
            5,
            12,
            &AccessCommand::RevokeKey {
                id: "bbbbbbbbbbbb".into(),
            },
        )
        .expect("revoke");
        assert_eq!(
            a.authenticate(Some(&token), None),
            Err(Denied::Revoked {
                id: "bbbbbbbbbbbb".into()
            })
        );
        assert_eq!(a.key("bbbbbbbbbbbb").and_then(|k| k.revoked_at), Some(5));
        // The last admin key stays.
        let err = a
            .check(&AccessCommand::RevokeKey {
                id: "aaaaaaaaaaaa".into(),
            })
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "API key aaaaaaaaaaaa is the last admin key; create another admin key before revoking it, \
                 or nobody could manage this cluster"
            )
        );
        assert_eq!(
            a.authenticate(None, None),
            Err(Denied::Missing),
            "revoking never reopens the node"
        );
    }

    #[test]
    fn roles_allow_what_their_job_needs() {
        let analyst = Principal::Key {
            id: "k".into(),
            role: Role::Analyst,
            scope: Default::default(),
        };
        assert!(analyst.allows(Action::Query) && !analyst.allows(Action::Publish));
        assert_eq!(
            analyst.forbidden(Action::Publish),
            "API key k (role analyst) may not publish events; that needs role admin or publisher"
        );
        assert!(Principal::Node.allows(Action::Internal) && !Principal::Node.allows(Action::Query));
        assert!(
            Principal::Node.allows(Action::Publish),
            "spool drains forward beacons as the node"
        );
        let publisher = Principal::Key {
            id: "p".into(),
            role: Role::Publisher,
            scope: Default::default(),
        };
        assert!(publisher.allows(Action::Suggest) && !publisher.allows(Action::ReadCatalog));
    }

    #[test]
    fn publish_grants_name_datasources_and_tags() {
        let scope: KeyScope =
            serde_json::from_str(r#"{"publish": {"shop": ["page", "country"], "app": "*"}}"#)
                .expect("scope");
        let tags = ["page".to_string(), "country".to_string()];
        assert_eq!(scope.publish_right("shop"), PublishRight::Tags(&tags));
        assert_eq!(scope.publish_right("app"), PublishRight::Any);
        assert_eq!(scope.publish_right("other"), PublishRight::Nothing);
        assert_eq!(scope.publishable(), ["app", "shop"]);
        assert_eq!(
            KeyScope::default().publish_right("anything"),
            PublishRight::Any
        );
        let mut a = Access::default();
        let key = |role: Role, scope: KeyScope| AccessCommand::CreateKey {
            key: NewKey {
                id: "aaaaaaaaaaaa".into(),
                name: "k".into(),
                role,
                secret_sha256: sha256_hex(SECRET),
                scope,
                scram: None,
            },
        };
        let err = a
            .check(&key(Role::Analyst, scope.clone()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("publish: only publisher keys carry publish grants"),
            "{err}"
        );
        a.apply(1, 1, &key(Role::Publisher, scope.clone()))
            .expect("publisher");
        let token = format!("tmk_aaaaaaaaaaaa_{SECRET}");
        match a.authenticate(Some(&token), None) {
            Ok(Principal::Key { scope: s, .. }) => assert_eq!(*s, scope),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_keys_are_refused_with_each_problem() {
        let a = Access::default();
        let cmd = AccessCommand::CreateKey {
            key: NewKey {
                id: "XYZ".into(),
                name: " ".into(),
                role: Role::MerchantReader,
                secret_sha256: "00".into(),
                scope: KeyScope::default(),
                scram: None,
            },
        };
        let err = a
            .check(&cmd)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with(
                "invalid API key: id: must be 12 lowercase hex digits; name: must be 1 to 128"
            ),
            "{err}"
        );
        assert!(
            err.contains("secret_sha256: must be 64 lowercase hex digits"),
            "{err}"
        );
        assert!(
            err.contains("tenants: a merchant_reader key needs at least one tenant"),
            "{err}"
        );
        let json = serde_json::to_string(&new_key("aaaaaaaaaaaa", Role::Publisher)).expect("json");
        assert!(
            json.starts_with(
                r#"{"op":"create_key","key":{"id":"aaaaaaaaaaaa","name":"publisher key","role":"publisher""#
            )
        );
    }
}
