//! Kafka SASL: who a connection is. SaslHandshake (v1) picks the mechanism, SaslAuthenticate
//! carries its messages (KIP-152). Two mechanisms, both checking tidemark API keys:
//!
//! - `PLAIN` (RFC 4616): the password is the API key's token (`tmk_<id>_<secret>`); the
//!   username is not checked, as with Flight SQL's basic credentials. It sends the token in
//!   the clear, so it is offered only on TLS connections (SASL_SSL) and to loopback peers.
//! - `SCRAM-SHA-256` (RFC 5802, 7677): the username is the key id and the password the token;
//!   the node checks a proof against the key's stored verifier and never sees the token.
//!
//! Invariants: once the node has keys, a connection does nothing but ApiVersions and SASL
//! until it has logged in (the connection enforces it); a failed login answers
//! SASL_AUTHENTICATION_FAILED naming the problem, after the node's failed-login delay, and
//! the client must start over with a new handshake.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tidemark_catalog::access::{Access, ApiKey, Denied, Principal, ScramCredential, TOKEN_PREFIX};

pub(crate) const PLAIN: &str = "PLAIN";
pub(crate) const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// RFC 7677's minimum; see [`ScramCredential`].
pub const SCRAM_ITERATIONS: u32 = 4096;

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length, so `new_from_slice` cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key"));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The SCRAM verifier of `password` with `salt`: what the catalog keeps.
pub fn scram_credential(password: &str, salt: &[u8], iterations: u32) -> ScramCredential {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    let server_key = hmac(&salted, b"Server Key");
    ScramCredential {
        salt: B64.encode(salt),
        iterations,
        stored_key: tidemark_catalog::access::hex(&stored_key),
        server_key: tidemark_catalog::access::hex(&server_key),
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (s.len() % 2 == 0).then_some(())?;
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Where a connection's login stands.
#[derive(Debug, Default)]
pub(crate) enum Sasl {
    /// No handshake yet (or a failed login: start over).
    #[default]
    Start,
    /// A handshake chose this mechanism; its first SaslAuthenticate is due.
    Chosen(&'static str),
    /// SCRAM after the server-first message: the final client message is due.
    ScramSent {
        key_id: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Done(Principal),
}

/// A login step's outcome: bytes for the client, or a refusal naming why.
pub(crate) type Step = Result<Vec<u8>, String>;

impl Sasl {
    pub(crate) fn principal(&self) -> Option<&Principal> {
        match self {
            Sasl::Done(p) => Some(p),
            _ => None,
        }
    }

    /// The mechanisms offered to a client; PLAIN only where `plain_allowed` (a TLS connection,
    /// or a loopback peer).
    pub(crate) fn mechanisms(plain_allowed: bool) -> Vec<&'static str> {
        if plain_allowed {
            vec![PLAIN, SCRAM_SHA_256]
        } else {
            vec![SCRAM_SHA_256]
        }
    }

    /// SaslHandshake: `Err` lists what is offered.
    pub(crate) fn handshake(&mut self, mechanism: &str, plain_allowed: bool) -> Result<(), String> {
        let offered = Self::mechanisms(plain_allowed);
        match offered.iter().find(|m| **m == mechanism) {
            Some(m) => {
                *self = Sasl::Chosen(m);
                Ok(())
            }
            None if mechanism == PLAIN => Err(format!(
                "SASL PLAIN sends the API key in the clear: it is offered over TLS (security.protocol=SASL_SSL) \
                 or on loopback only; use {SCRAM_SHA_256}"
            )),
            None => Err(format!(
                "SASL mechanism {mechanism:?} is not supported; use {}",
                offered.join(" or ")
            )),
        }
    }

    /// One SaslAuthenticate message. On `Err` the login is over and the state starts again.
    /// `nonce` is this node's fresh random part for a SCRAM exchange.
    pub(crate) fn authenticate(&mut self, access: &Access, bytes: &[u8], nonce: &str) -> Step {
        let state = std::mem::take(self);
        let result = match state {
            Sasl::Start | Sasl::Done(_) => {
                Err("send SaslHandshake before SaslAuthenticate".to_string())
            }
            Sasl::Chosen(PLAIN) => plain(access, bytes).map(|p| {
                *self = Sasl::Done(p);
                Vec::new()
            }),
            Sasl::Chosen(_) => scram_first(access, bytes, nonce).map(|(next, answer)| {
                *self = next;
                answer
            }),
            Sasl::ScramSent {
                key_id,
                client_first_bare,
                server_first,
                nonce,
            } => scram_final(
                access,
                &key_id,
                &client_first_bare,
                &server_first,
                &nonce,
                bytes,
            )
            .map(|(p, answer)| {
                *self = Sasl::Done(p);
                answer
            }),
        };
        if result.is_err() {
            *self = Sasl::Start;
        }
        result
    }
}

fn denied(d: Denied) -> String {
    d.to_string()
}

/// `authzid NUL authcid NUL password`: the password is the token.
fn plain(access: &Access, bytes: &[u8]) -> Result<Principal, String> {
    let mut parts = bytes.split(|b| *b == 0);
    let (_authzid, _user, password) = match (parts.next(), parts.next(), parts.next(), parts.next())
    {
        (Some(a), Some(u), Some(p), None) => (a, u, p),
        _ => return Err("a SASL PLAIN message is authzid NUL username NUL password".into()),
    };
    let token = std::str::from_utf8(password)
        .map_err(|_| "the SASL PLAIN password is not UTF-8".to_string())?;
    if !token.starts_with(TOKEN_PREFIX) {
        return Err(format!(
            "the SASL PLAIN password must be an API key ({TOKEN_PREFIX}…)"
        ));
    }
    access.authenticate(Some(token), None).map_err(denied)
}

/// The value of attribute `name` (`n=…`) in a SCRAM message.
fn attr<'a>(message: &'a str, name: char) -> Option<&'a str> {
    message
        .split(',')
        .find_map(|a| a.strip_prefix(name)?.strip_prefix('='))
}

/// A key usable for SCRAM, by id.
fn scram_key<'a>(
    access: &'a Access,
    id: &str,
) -> Result<(&'a ApiKey, &'a ScramCredential), String> {
    let key = access
        .key(id)
        .ok_or_else(|| denied(Denied::UnknownKey { id: id.to_string() }))?;
    if key.revoked_at.is_some() {
        return Err(denied(Denied::Revoked { id: id.to_string() }));
    }
    let cred = key.scram.as_ref().ok_or_else(|| {
        format!("API key {id} was created before SCRAM logins existed; create a new key, or use PLAIN on loopback")
    })?;
    Ok((key, cred))
}

/// client-first `n,,n=<key id>,r=<client nonce>` → server-first `r=<nonce>,s=<salt>,i=<n>`.
fn scram_first(
    access: &Access,
    bytes: &[u8],
    server_nonce: &str,
) -> Result<(Sasl, Vec<u8>), String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "the SCRAM client-first message is not UTF-8".to_string())?;
    let bare = text
        .strip_prefix("n,,")
        .or_else(|| text.strip_prefix("y,,"))
        .ok_or_else(|| {
            "SCRAM channel binding and authorization ids are not supported; start with \"n,,\""
                .to_string()
        })?;
    let user = attr(bare, 'n').ok_or("the SCRAM client-first message has no username (n=)")?;
    let client_nonce = attr(bare, 'r').ok_or("the SCRAM client-first message has no nonce (r=)")?;
    // Usernames escape ',' and '=' (RFC 5802 5.1); key ids never contain them.
    let id = user
        .strip_prefix(TOKEN_PREFIX)
        .and_then(|rest| rest.get(..12))
        .unwrap_or(user);
    let (_, cred) = scram_key(access, id)?;
    let nonce = format!("{client_nonce}{server_nonce}");
    let server_first = format!("r={nonce},s={},i={}", cred.salt, cred.iterations);
    let next = Sasl::ScramSent {
        key_id: id.to_string(),
        client_first_bare: bare.to_string(),
        server_first: server_first.clone(),
        nonce,
    };
    Ok((next, server_first.into_bytes()))
}

/// client-final `c=biws,r=<nonce>,p=<proof>` → server-final `v=<signature>`.
fn scram_final(
    access: &Access,
    key_id: &str,
    client_first_bare: &str,
    server_first: &str,
    nonce: &str,
    bytes: &[u8],
) -> Result<(Principal, Vec<u8>), String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "the SCRAM client-final message is not UTF-8".to_string())?;
    let (without_proof, proof) = text
        .rsplit_once(",p=")
        .ok_or("the SCRAM client-final message has no proof (p=)")?;
    if attr(without_proof, 'r') != Some(nonce) {
        return Err("the SCRAM client-final nonce does not match this exchange".into());
    }
    let proof = B64
        .decode(proof)
        .map_err(|_| "the SCRAM proof is not base64".to_string())?;
    let (key, cred) = scram_key(access, key_id)?;
    let stored_key = unhex(&cred.stored_key).ok_or("the stored SCRAM key is damaged")?;
    let server_key = unhex(&cred.server_key).ok_or("the stored SCRAM key is damaged")?;
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let client_signature = hmac(&stored_key, auth_message.as_bytes());
    if proof.len() != client_signature.len() {
        return Err(denied(Denied::WrongSecret {
            id: key_id.to_string(),
        }));
    }
    let client_key: Vec<u8> = proof
        .iter()
        .zip(client_signature)
        .map(|(p, s)| p ^ s)
        .collect();
    let computed: [u8; 32] = Sha256::digest(&client_key).into();
    if computed.as_slice() != stored_key.as_slice() {
        return Err(denied(Denied::WrongSecret {
            id: key_id.to_string(),
        }));
    }
    let server_signature = hmac(&server_key, auth_message.as_bytes());
    let principal = Principal::Key {
        id: key.id.clone(),
        role: key.role,
        scope: std::sync::Arc::new(key.scope.clone()),
    };
    Ok((
        principal,
        format!("v={}", B64.encode(server_signature)).into_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's SCRAM-SHA-256 example exchange, checked against our verifier.
    #[test]
    fn the_rfc_7677_example_logs_in() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let cred = scram_credential("pencil", &salt, 4096);
        let client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let without_proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let stored = unhex(&cred.stored_key).expect("hex");
        let server = unhex(&cred.server_key).expect("hex");
        // The client's proof from the RFC: ClientKey XOR ClientSignature.
        let proof = B64
            .decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .expect("proof");
        let signature = hmac(&stored, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        assert_eq!(Sha256::digest(&client_key).as_slice(), stored.as_slice());
        assert_eq!(
            B64.encode(hmac(&server, auth_message.as_bytes())),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn plain_is_offered_only_on_loopback() {
        let mut s = Sasl::default();
        assert!(s.handshake(PLAIN, true).is_ok());
        let err = Sasl::default()
            .handshake(PLAIN, false)
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("offered over TLS (security.protocol=SASL_SSL) or on loopback only"),
            "{err}"
        );
        let err = Sasl::default()
            .handshake("GSSAPI", true)
            .err()
            .unwrap_or_default();
        assert_eq!(
            err,
            "SASL mechanism \"GSSAPI\" is not supported; use PLAIN or SCRAM-SHA-256"
        );
    }
}
