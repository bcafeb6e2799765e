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
    let Some(value) = request.metadata().get("authorization") else { return Ok(None) };
    let value = value.to_str().map_err(|_| Status::unauthenticated("the authorization header is not ASCII"))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Some(rest.trim().to_string()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        // Padding optional: Go's Flight client (ADBC) sends unpadded base64.
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(rest.trim().trim_end_matches('='))
            .map_err(|_| Status::unauthenticated("basic credentials are not valid base64"))?;
        let text = String::from_utf8(bytes).map_err(|_| Status::unauthenticated("basic credentials are not UTF-8"))?;
        let (_user, password) =
            text.split_once(':').ok_or_else(|| Status::unauthenticated("basic credentials must be user:password"))?;
        return Ok(Some(password.to_string()));
    }
    Err(Status::unauthenticated("the authorization header must be `Bearer <API key>` or basic credentials"))
}

/// The interceptor in front of every Flight SQL call.
#[derive(Debug, Clone)]
pub struct FlightAuth(pub Option<Arc<dyn Authenticator>>);

impl tonic::service::Interceptor for FlightAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let Some(auth) = &self.0 else { return Ok(request) };
        let token = presented_token(&request)?;
        let principal = auth.authenticate(token.as_deref()).map_err(|denied| {
            auth.refused();
            Status::unauthenticated(denied.to_string())
        })?;
        if !principal.allows(Action::Query) {
            return Err(Status::permission_denied(principal.forbidden(Action::Query)));
        }
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// Wraps the Flight service so that a call refused for its credentials (gRPC status 16,
/// UNAUTHENTICATED) is answered only after a delay, which slows down guessing keys. The
/// interceptor cannot wait (it is synchronous); this runs around it.
#[derive(Debug, Clone)]
pub struct DelayRefusals<S> {
    pub inner: S,
    pub delay: std::time::Duration,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for DelayRefusals<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody, ResBody> tonic::codegen::Service<tonic::codegen::http::Request<ReqBody>> for DelayRefusals<S>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<ReqBody>,
            Response = tonic::codegen::http::Response<ResBody>,
        >,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<ReqBody>) -> Self::Future {
        let answer = self.inner.call(request);
        let delay = self.delay;
        Box::pin(async move {
            let response = answer.await?;
            if response.headers().get("grpc-status").is_some_and(|v| v.as_bytes() == b"16") {
                tokio::time::sleep(delay).await;
            }
            Ok(response)
        })
    }
}
