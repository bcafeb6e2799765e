//! A small HTTP client for the CLI commands that talk to a running node (`sql`,
//! `datasource`, `demo`, …). It sends the API key in `TIDEMARK_TOKEN`, if set, as a bearer
//! token (a node with keys refuses callers without one).

use anyhow::{Context, Result, anyhow};

#[derive(Debug, Clone)]
pub(crate) struct Client {
    base: String,
    agent: ureq::Agent,
    /// `Authorization` header value.
    auth: Option<String>,
}

/// A response: status and body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body if the status is 2xx, else an error carrying the server's message.
    pub(crate) fn ok(self) -> Result<Reply> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let msg = serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| self.text());
        Err(anyhow!("HTTP {}: {msg}", self.status))
    }
}

const RESPONSE_BYTES_MAX: u64 = 1 << 30;

impl Client {
    pub(crate) fn new(base: &str) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let auth = std::env::var("TIDEMARK_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .map(|t| format!("Bearer {}", t.trim()));
        Client { base: base.trim_end_matches('/').to_string(), agent, auth }
    }

    fn finish(&self, url: &str, r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Reply> {
        let mut resp = r.with_context(|| format!("cannot reach tidemark at {url}; is `tidemark serve` running?"))?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().with_config().limit(RESPONSE_BYTES_MAX).read_to_vec()?;
        Ok(Reply { status, body })
    }

    pub(crate) fn get(&self, path: &str) -> Result<Reply> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.get(&url);
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        self.finish(&url, req.call())
    }

    pub(crate) fn delete(&self, path: &str) -> Result<Reply> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.delete(&url);
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        self.finish(&url, req.call())
    }

    pub(crate) fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Reply> {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "PUT" => self.agent.put(&url),
            _ => self.agent.post(&url),
        }
        .header("Content-Type", content_type);
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.finish(&url, req.send(body))
    }
}
