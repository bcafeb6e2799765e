//! The admin gRPC service (`proto/admin.proto`): the HTTP management API's twin. Each call
//! becomes the request its HTTP twin would be and runs through the node's own router,
//! in-process, so key checks, leader forwarding, audit records and answers are the same code
//! for both doors and cannot drift apart.
//!
//! Invariants: the caller's `authorization` metadata is the HTTP request's `Authorization`
//! header, nothing else is taken from the gRPC call's metadata; an HTTP status becomes the gRPC
//! code a gRPC client expects (401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 NOT_FOUND, …),
//! with the HTTP answer's error text as the message.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use tidemark_proto::admin::admin_server::{Admin, AdminServer};
use tidemark_proto::admin::{Empty, Json, Name, NamedJson, SegmentRef, SuggestRequest, TagJson};
use tonic::{Request, Response, Status};
use tower::ServiceExt;

/// Answers larger than this are refused rather than buffered (listings are far smaller).
const ANSWER_BYTES_MAX: usize = 64 * 1024 * 1024;

#[derive(Clone)]
pub struct AdminService {
    router: Router,
}

impl std::fmt::Debug for AdminService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminService")
    }
}

/// The service over `router` (the node's HTTP router, with its key check).
pub fn admin_service(router: Router) -> AdminServer<AdminService> {
    AdminServer::new(AdminService { router })
}

/// Percent-encodes a path segment or query value (names are identifiers, but a caller may
/// send anything, and it must not change the route).
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The gRPC status of an HTTP answer: the admin service serves the HTTP API's answers, so
/// it reads their status back as a class and answers with that class's gRPC code.
fn status_of(code: StatusCode, message: String) -> Status {
    let class = tidemark_catalog::StatusClass::from_http_status(code.as_u16());
    Status::new(tonic::Code::from_i32(class.grpc_code()), message)
}

impl AdminService {
    /// Runs `method path` with `body` as the caller of `request`.
    async fn call<T>(
        &self,
        request: &Request<T>,
        method: Method,
        path: String,
        body: String,
    ) -> Result<Response<Json>, Status> {
        let mut http = axum::http::Request::builder().method(method).uri(&path);
        if let Some(auth) = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
        {
            http = http.header(header::AUTHORIZATION, auth);
        }
        if !body.is_empty() {
            http = http.header(header::CONTENT_TYPE, "application/json");
        }
        let http = http
            .body(Body::from(body))
            .map_err(|e| Status::invalid_argument(format!("bad request: {e}")))?;
        let answer = self
            .router
            .clone()
            .oneshot(http)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let code = answer.status();
        let bytes = axum::body::to_bytes(answer.into_body(), ANSWER_BYTES_MAX)
            .await
            .map_err(|e| Status::internal(format!("cannot read the answer of {path}: {e}")))?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if code.is_success() {
            return Ok(Response::new(Json { json: text }));
        }
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(text);
        Err(status_of(code, message))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_datasources(&self, r: Request<Empty>) -> Result<Response<Json>, Status> {
        self.call(&r, Method::GET, "/v1/datasources".into(), String::new())
            .await
    }

    async fn get_datasource(&self, r: Request<Name>) -> Result<Response<Json>, Status> {
        let path = format!("/v1/datasources/{}", enc(&r.get_ref().name));
        self.call(&r, Method::GET, path, String::new()).await
    }

    async fn create_datasource(&self, r: Request<Json>) -> Result<Response<Json>, Status> {
        let body = r.get_ref().json.clone();
        self.call(&r, Method::POST, "/v1/datasources".into(), body)
            .await
    }

    async fn update_datasource(&self, r: Request<NamedJson>) -> Result<Response<Json>, Status> {
        let (path, body) = (
            format!("/v1/datasources/{}", enc(&r.get_ref().name)),
            r.get_ref().json.clone(),
        );
        self.call(&r, Method::PUT, path, body).await
    }

    async fn delete_datasource(&self, r: Request<NamedJson>) -> Result<Response<Json>, Status> {
        let mut path = format!("/v1/datasources/{}", enc(&r.get_ref().name));
        let options = r.get_ref().json.trim();
        if !options.is_empty() {
            let v: serde_json::Value = serde_json::from_str(options).map_err(|e| {
                Status::invalid_argument(format!(
                    "json must be {{\"grace\": \"PT1H\"}} or empty: {e}"
                ))
            })?;
            if let Some(grace) = v.get("grace").and_then(|g| g.as_str()) {
                path.push_str(&format!("?grace={}", enc(grace)));
            }
        }
        self.call(&r, Method::DELETE, path, String::new()).await
    }

    async fn list_domains(&self, r: Request<Empty>) -> Result<Response<Json>, Status> {
        self.call(
            &r,
            Method::GET,
            "/v1/governance/domains".into(),
            String::new(),
        )
        .await
    }

    async fn get_domain(&self, r: Request<Name>) -> Result<Response<Json>, Status> {
        let path = format!("/v1/governance/domains/{}", enc(&r.get_ref().name));
        self.call(&r, Method::GET, path, String::new()).await
    }

    async fn create_domain(&self, r: Request<Json>) -> Result<Response<Json>, Status> {
        let body = r.get_ref().json.clone();
        self.call(&r, Method::POST, "/v1/governance/domains".into(), body)
            .await
    }

    async fn update_domain(&self, r: Request<NamedJson>) -> Result<Response<Json>, Status> {
        let (path, body) = (
            format!("/v1/governance/domains/{}", enc(&r.get_ref().name)),
            r.get_ref().json.clone(),
        );
        self.call(&r, Method::PUT, path, body).await
    }

    async fn list_tags(&self, r: Request<Name>) -> Result<Response<Json>, Status> {
        let path = format!("/v1/governance/domains/{}/tags", enc(&r.get_ref().name));
        self.call(&r, Method::GET, path, String::new()).await
    }

    async fn put_tag(&self, r: Request<TagJson>) -> Result<Response<Json>, Status> {
        let t = r.get_ref();
        let (path, body) = (
            format!(
                "/v1/governance/domains/{}/tags/{}",
                enc(&t.domain),
                enc(&t.tag)
            ),
            t.json.clone(),
        );
        self.call(&r, Method::PUT, path, body).await
    }

    async fn remove_tag(&self, r: Request<TagJson>) -> Result<Response<Json>, Status> {
        let t = r.get_ref();
        let path = format!(
            "/v1/governance/domains/{}/tags/{}",
            enc(&t.domain),
            enc(&t.tag)
        );
        self.call(&r, Method::DELETE, path, String::new()).await
    }

    async fn suggest(&self, r: Request<SuggestRequest>) -> Result<Response<Json>, Status> {
        let s = r.get_ref();
        let mut query = vec![format!("tag={}", enc(&s.tag))];
        if !s.domain.is_empty() {
            query.push(format!("domain={}", enc(&s.domain)));
        }
        if !s.datasource.is_empty() {
            query.push(format!("datasource={}", enc(&s.datasource)));
        }
        let path = format!("/v1/governance/suggest?{}", query.join("&"));
        self.call(&r, Method::GET, path, String::new()).await
    }

    async fn list_retention(&self, r: Request<Empty>) -> Result<Response<Json>, Status> {
        self.call(
            &r,
            Method::GET,
            "/v1/governance/retention".into(),
            String::new(),
        )
        .await
    }

    async fn get_retention(&self, r: Request<Name>) -> Result<Response<Json>, Status> {
        let path = format!("/v1/governance/retention/{}", enc(&r.get_ref().name));
        self.call(&r, Method::GET, path, String::new()).await
    }

    async fn put_retention(&self, r: Request<NamedJson>) -> Result<Response<Json>, Status> {
        let (path, body) = (
            format!("/v1/governance/retention/{}", enc(&r.get_ref().name)),
            r.get_ref().json.clone(),
        );
        self.call(&r, Method::PUT, path, body).await
    }

    async fn verify_segments(&self, r: Request<Name>) -> Result<Response<Json>, Status> {
        let path = format!("/v1/segments/verify?datasource={}", enc(&r.get_ref().name));
        self.call(&r, Method::POST, path, String::new()).await
    }

    async fn list_segments(&self, r: Request<Name>) -> Result<Response<Json>, Status> {
        let path = format!("/v1/segments?datasource={}", enc(&r.get_ref().name));
        self.call(&r, Method::GET, path, String::new()).await
    }

    async fn get_segment(&self, r: Request<SegmentRef>) -> Result<Response<Json>, Status> {
        let s = r.get_ref();
        let path = format!("/v1/segments/{}/{}", enc(&s.datasource), enc(&s.segment));
        self.call(&r, Method::GET, path, String::new()).await
    }

    async fn drop_segments(&self, r: Request<Json>) -> Result<Response<Json>, Status> {
        let body = r.get_ref().json.clone();
        self.call(&r, Method::POST, "/v1/segments/drop".into(), body)
            .await
    }

    async fn reindex(&self, r: Request<Json>) -> Result<Response<Json>, Status> {
        let body = r.get_ref().json.clone();
        self.call(&r, Method::POST, "/v1/reindex".into(), body)
            .await
    }

    async fn compact(&self, r: Request<Json>) -> Result<Response<Json>, Status> {
        let body = r.get_ref().json.clone();
        self.call(&r, Method::POST, "/v1/compact".into(), body)
            .await
    }

    async fn delete(&self, r: Request<Json>) -> Result<Response<Json>, Status> {
        let body = r.get_ref().json.clone();
        self.call(&r, Method::POST, "/v1/delete".into(), body).await
    }

    async fn export(&self, r: Request<Json>) -> Result<Response<Json>, Status> {
        let body = r.get_ref().json.clone();
        self.call(&r, Method::POST, "/v1/export".into(), body).await
    }

    async fn backup(&self, r: Request<Json>) -> Result<Response<Json>, Status> {
        let body = r.get_ref().json.clone();
        self.call(&r, Method::POST, "/v1/backup".into(), body).await
    }

    async fn list_jobs(&self, r: Request<Empty>) -> Result<Response<Json>, Status> {
        self.call(&r, Method::GET, "/v1/jobs".into(), String::new())
            .await
    }

    async fn get_job(&self, r: Request<Name>) -> Result<Response<Json>, Status> {
        let path = format!("/v1/jobs/{}", enc(&r.get_ref().name));
        self.call(&r, Method::GET, path, String::new()).await
    }

    async fn cancel_job(&self, r: Request<Name>) -> Result<Response<Json>, Status> {
        let path = format!("/v1/jobs/{}/cancel", enc(&r.get_ref().name));
        self.call(&r, Method::POST, path, String::new()).await
    }

    async fn create_key(&self, r: Request<Json>) -> Result<Response<Json>, Status> {
        let body = r.get_ref().json.clone();
        self.call(&r, Method::POST, "/v1/keys".into(), body).await
    }

    async fn list_keys(&self, r: Request<Empty>) -> Result<Response<Json>, Status> {
        self.call(&r, Method::GET, "/v1/keys".into(), String::new())
            .await
    }

    async fn revoke_key(&self, r: Request<Name>) -> Result<Response<Json>, Status> {
        let path = format!("/v1/keys/{}", enc(&r.get_ref().name));
        self.call(&r, Method::DELETE, path, String::new()).await
    }

    async fn cluster_status(&self, r: Request<Empty>) -> Result<Response<Json>, Status> {
        self.call(&r, Method::GET, "/v1/cluster".into(), String::new())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_change_the_route() {
        assert_eq!(enc("shop_events"), "shop_events");
        assert_eq!(enc("../keys?x=1"), "..%2Fkeys%3Fx%3D1");
        assert_eq!(
            status_of(StatusCode::FORBIDDEN, "no".into()).code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            status_of(StatusCode::UNAUTHORIZED, "no".into()).code(),
            tonic::Code::Unauthenticated
        );
    }
}
