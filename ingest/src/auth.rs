//! Who may call which HTTP route: the bearer token is checked against the catalog's keys
//! before any handler runs (and before a follower forwards a write, after which the leader
//! checks it again), and the route's [`Action`] against the caller's role.
//!
//! Invariants: no route runs without a [`Principal`] in its request extensions, and the map
//! from route to action ([`action_for`]) is the only place that decides what a route needs.
//! `GET /health` is open: a load balancer must see it without a key.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tidemark_catalog::access::{Action, Denied, Principal};

use crate::IngestState;

/// What a request needs; `None` for routes open to anyone.
pub fn action_for(method: &Method, path: &str) -> Option<Action> {
    let read = method == Method::GET || method == Method::HEAD;
    let action = match path {
        "/health" => return None,
        "/metrics" | "/v1/cluster" => Action::Monitor,
        "/v1/sql" => Action::Query,
        "/v1/governance/suggest" => Action::Suggest,
        // A copy's log entries come from the node that runs it, with the node token.
        "/v1/cluster/read-index" | "/v1/cluster/init-producer" | "/v1/jobs/copies" => {
            Action::Internal
        }
        p if p.starts_with("/v1/beacons/") => Action::Publish,
        p if p == "/v1/datasources" || p.starts_with("/v1/datasources/") => {
            if read {
                Action::ReadCatalog
            } else {
                Action::ManageDatasources
            }
        }
        p if p.starts_with("/v1/governance/") => {
            if read {
                Action::ReadCatalog
            } else {
                Action::ManageGovernance
            }
        }
        p if p == "/v1/keys" || p.starts_with("/v1/keys/") => Action::ManageKeys,
        p if (p == "/v1/segments" || p.starts_with("/v1/segments/")) && read => Action::Monitor,
        p if p.starts_with("/v1/segments/")
            || p == "/v1/reindex"
            || p == "/v1/compact"
            || p == "/v1/delete"
            || p == "/v1/export"
            || p == "/v1/backup" =>
        {
            Action::ManageDatasources
        }
        // A copy's live progress, asked of the node running it by the node a DBA asked.
        p if p.starts_with("/v1/jobs/") && p.ends_with("/progress") => Action::Internal,
        p if p == "/v1/jobs" || p.starts_with("/v1/jobs/") => {
            if read {
                Action::Monitor
            } else {
                Action::ManageDatasources
            }
        }
        // Membership, leader transfer, fault injection, and any path not listed above.
        _ => Action::ManageCluster,
    };
    Some(action)
}

/// The bearer token of a request, if any (`Authorization: Bearer <token>`).
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, &'static str> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| "the Authorization header is not ASCII")?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(token.trim())),
        _ => Err("the Authorization header must be `Bearer <API key>`"),
    }
}

fn unauthorized(message: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"tidemark\"")],
        Json(json!({ "error": message })),
    )
        .into_response()
}

/// Middleware on every HTTP route: authenticates the caller and checks the route's action.
pub async fn authenticate(State(s): State<IngestState>, mut req: Request, next: Next) -> Response {
    let action = action_for(req.method(), req.uri().path());
    let token = match bearer(req.headers()) {
        Ok(t) => t,
        Err(message) => return unauthorized(message),
    };
    let secret = s.node.cluster_secret().expose();
    let check = || {
        s.node
            .engine()
            .read()
            .catalog()
            .access()
            .authenticate(token, Some(secret))
    };
    let mut principal = check();
    // A key created a moment ago through another node may not be applied here yet: catch up
    // with what the leader has committed (a read index) and look again, so a new key works
    // on every node at once. Only unknown keys pay for the round trip.
    if matches!(principal, Err(Denied::UnknownKey { .. }))
        && action.is_some()
        && s.node.read_barrier().await.is_ok()
    {
        principal = check();
    }
    let principal = match (principal, action) {
        (Ok(p), _) => p,
        // An open route ignores credentials it cannot use.
        (Err(_), None) => Principal::Anonymous,
        (Err(denied), Some(_)) => {
            s.node
                .metrics()
                .auth_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Slows down guessing; the connection's other requests wait their own turn.
            tokio::time::sleep(s.failed_login_delay).await;
            return unauthorized(&denied.to_string());
        }
    };
    if let Some(action) = action
        && !principal.allows(action)
    {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({ "error": principal.forbidden(action) })),
        )
            .into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_needs_the_action_of_its_job() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(action_for(&get, "/health"), None);
        assert_eq!(action_for(&post, "/v1/beacons/shop"), Some(Action::Publish));
        assert_eq!(
            action_for(&get, "/v1/datasources/shop"),
            Some(Action::ReadCatalog)
        );
        assert_eq!(
            action_for(&Method::DELETE, "/v1/datasources/shop"),
            Some(Action::ManageDatasources)
        );
        assert_eq!(
            action_for(&get, "/v1/governance/suggest"),
            Some(Action::Suggest)
        );
        assert_eq!(
            action_for(&Method::PUT, "/v1/governance/domains/d/tags/t"),
            Some(Action::ManageGovernance)
        );
        assert_eq!(action_for(&get, "/v1/keys"), Some(Action::ManageKeys));
        assert_eq!(
            action_for(&post, "/v1/cluster/join"),
            Some(Action::ManageCluster)
        );
        assert_eq!(
            action_for(&get, "/v1/cluster/read-index"),
            Some(Action::Internal)
        );
        assert_eq!(
            action_for(&Method::POST, "/v1/jobs/copies"),
            Some(Action::Internal)
        );
        assert_eq!(
            action_for(&get, "/v1/jobs/12/progress"),
            Some(Action::Internal)
        );
        assert_eq!(action_for(&get, "/v1/jobs/12"), Some(Action::Monitor));
        assert_eq!(action_for(&get, "/nowhere"), Some(Action::ManageCluster));
    }

    #[test]
    fn only_bearer_tokens_are_read() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), Ok(None));
        h.insert(
            header::AUTHORIZATION,
            "Bearer tmk_x".parse().expect("header"),
        );
        assert_eq!(bearer(&h), Ok(Some("tmk_x")));
        h.insert(
            header::AUTHORIZATION,
            "Basic dXNlcjpwdw==".parse().expect("header"),
        );
        assert!(bearer(&h).is_err());
    }
}
