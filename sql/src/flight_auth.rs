//! Who may call Flight SQL. Every call, DoGet included, carries the caller's API key: a bearer
//! token (`authorization: Bearer tmk_…`), or basic credentials whose password is the key (for
//! clients such as ADBC that log in with a user name and password). A tonic interceptor checks
//! it before any handler runs; the handshake answers with the bearer token to use next.
//!
//! Invariant: tickets and prepared-statement handles carry only SQL text and are planned again
//! under the caller of each DoGet, so a ticket confers no rights of its own: it is bound to
//! whoever presents it, and a caller without the right to query cannot use one.

use std::sync::Arc;

use base64::Engine as _;
use tidemark_catalog::access::{Action, Denied, Principal};
use tonic::{Request, Status};

/// Checks API keys against the catalog; the binary injects it (none: every call is allowed).
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    fn authenticate(&self, token: Option<&str>) -> Result<Principal, Denied>;
    /// Called for each refused credential, for metrics.
    fn refused(&self) {}
}

/// The key a request presents, from its `authorization` metadata.
pub fn presented_token<T>(request: &Request<T>) -> Result<Option<String>, Status> {
    let Some(value) = request.metadata().get("authorization") else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization header is not ASCII"))?;
    token_of(value)
}

/// The key in an `authorization` value: a bearer token, or basic credentials' password.
fn token_of(value: &str) -> Result<Option<String>, Status> {
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Some(rest.trim().to_string()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        // Padding optional: Go's Flight client (ADBC) sends unpadded base64.
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(rest.trim().trim_end_matches('='))
            .map_err(|_| Status::unauthenticated("basic credentials are not valid base64"))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| Status::unauthenticated("basic credentials are not UTF-8"))?;
        let (_user, password) = text
            .split_once(':')
            .ok_or_else(|| Status::unauthenticated("basic credentials must be user:password"))?;
        return Ok(Some(password.to_string()));
    }
    Err(Status::unauthenticated(
        "the authorization header must be `Bearer <API key>` or basic credentials",
    ))
}

/// The interceptor in front of every Flight SQL call.
#[derive(Debug, Clone)]
pub struct FlightAuth(pub Option<Arc<dyn Authenticator>>);

impl tonic::service::Interceptor for FlightAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let Some(auth) = &self.0 else {
            return Ok(request);
        };
        let token = presented_token(&request)?;
        let principal = auth.authenticate(token.as_deref()).map_err(|denied| {
            auth.refused();
            Status::unauthenticated(denied.to_string())
        })?;
        if !principal.allows(Action::Query) {
            return Err(Status::permission_denied(
                principal.forbidden(Action::Query),
            ));
        }
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// Wraps the Flight service so that a call refused for its credentials (gRPC status 16,
/// UNAUTHENTICATED) is answered only after a delay, which slows down guessing keys. The
/// interceptor cannot wait (it is synchronous); this runs around it. It also lets a key
/// created a moment ago through another node work here at once: a key this node does not know
/// yet makes it catch up with the leader's commit (a read index) before the interceptor looks.
#[derive(Debug, Clone)]
pub struct DelayRefusals<S> {
    pub inner: S,
    pub delay: std::time::Duration,
    pub catch_up: Option<(Arc<dyn Authenticator>, Arc<dyn crate::ReadBarrier>)>,
}

/// Whether `headers` present a key this node does not know (yet).
fn unknown_key(auth: &dyn Authenticator, headers: &tonic::codegen::http::HeaderMap) -> bool {
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Ok(Some(token)) = token_of(value) else {
        return false;
    };
    matches!(
        auth.authenticate(Some(&token)),
        Err(Denied::UnknownKey { .. })
    )
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for DelayRefusals<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody, ResBody> tonic::codegen::Service<tonic::codegen::http::Request<ReqBody>>
    for DelayRefusals<S>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<ReqBody>,
            Response = tonic::codegen::http::Response<ResBody>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<ReqBody>) -> Self::Future {
        let delay = self.delay;
        let barrier = match &self.catch_up {
            Some((auth, barrier)) if unknown_key(auth.as_ref(), request.headers()) => {
                Some(barrier.clone())
            }
            _ => None,
        };
        let Some(barrier) = barrier else {
            let answer = self.inner.call(request);
            return Box::pin(async move {
                let response = answer.await?;
                if response
                    .headers()
                    .get("grpc-status")
                    .is_some_and(|v| v.as_bytes() == b"16")
                {
                    tokio::time::sleep(delay).await;
                }
                Ok(response)
            });
        };
        // The service polled ready is the one that must be called: take it, leave a clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), barrier.wait()).await;
            let response = inner.call(request).await?;
            if response
                .headers()
                .get("grpc-status")
                .is_some_and(|v| v.as_bytes() == b"16")
            {
                tokio::time::sleep(delay).await;
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use tidemark_catalog::access::Role;
    use tonic::codegen::Service;
    use tonic::codegen::http::{Request as HttpRequest, Response as HttpResponse};

    /// Knows the key only after the barrier ran (as a follower that has not applied it yet).
    #[derive(Debug, Default)]
    struct Lagging(AtomicBool);

    impl Authenticator for Lagging {
        fn authenticate(&self, _token: Option<&str>) -> Result<Principal, Denied> {
            if self.0.load(Ordering::SeqCst) {
                Ok(Principal::Key {
                    id: "k".into(),
                    role: Role::Analyst,
                    scope: Default::default(),
                })
            } else {
                Err(Denied::UnknownKey { id: "k".into() })
            }
        }
    }

    #[derive(Debug)]
    struct CatchUp(Arc<Lagging>);

    impl crate::ReadBarrier for CatchUp {
        fn wait(&self) -> futures::future::BoxFuture<'static, Result<(), String>> {
            self.0.0.store(true, Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        }
    }

    /// Answers whether the key was known when the call reached it.
    #[derive(Debug, Clone)]
    struct Probe(Arc<Lagging>);

    impl Service<HttpRequest<()>> for Probe {
        type Response = HttpResponse<bool>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<HttpResponse<bool>, std::convert::Infallible>>;

        fn poll_ready(
            &mut self,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: HttpRequest<()>) -> Self::Future {
            std::future::ready(Ok(HttpResponse::new(
                self.0.authenticate(Some("x")).is_ok(),
            )))
        }
    }

    #[tokio::test]
    async fn an_unknown_key_waits_for_the_leader_commit_before_the_check() {
        let auth = Arc::new(Lagging::default());
        let mut service = DelayRefusals {
            inner: Probe(auth.clone()),
            delay: std::time::Duration::ZERO,
            catch_up: Some((
                auth.clone() as Arc<dyn Authenticator>,
                Arc::new(CatchUp(auth.clone())) as _,
            )),
        };
        let token = format!("Bearer tmk_aaaaaaaaaaaa_{}", "0".repeat(64));
        let request = HttpRequest::builder()
            .header("authorization", token)
            .body(())
            .expect("request");
        let known = service.call(request).await.expect("answer").into_body();
        assert!(known, "the check ran after catching up");
    }
}
