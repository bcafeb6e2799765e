//! A small HTTP client for the CLI commands that talk to a running node (`sql`,
//! `datasource`, `demo`, …). It sends the API key in `TIDEMARK_TOKEN`, if set, as a bearer
//! token (a node with keys refuses callers without one). For `https://` it trusts the CA in
//! `TIDEMARK_CA_CERT` (a PEM file), or the public web roots without it.

use anyhow::{Context, Result, anyhow};

#[derive(Debug, Clone)]
pub(crate) struct Client {
    base: String,
    agent: ureq::Agent,
    /// `Authorization` header value.
    auth: Option<String>,
    /// Why the CA file could not be used: every request fails with it.
    ca_error: Option<String>,
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
        let ca = std::env::var_os("TIDEMARK_CA_CERT")
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from);
        Client::with_ca(base, ca.as_deref())
    }

    /// A client trusting the CA in the PEM file `ca` for `https://`.
    pub(crate) fn with_ca(base: &str, ca: Option<&std::path::Path>) -> Client {
        let mut config = ureq::Agent::config_builder().http_status_as_error(false);
        let mut ca_error = None;
        if let Some(path) = ca {
            match std::fs::read(path) {
                Ok(pem) => {
                    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                        .filter_map(|item| match item {
                            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                            _ => None,
                        })
                        .collect();
                    if certs.is_empty() {
                        ca_error = Some(format!(
                            "TIDEMARK_CA_CERT {} holds no PEM certificate",
                            path.display()
                        ));
                    }
                    let roots = ureq::tls::RootCerts::new_with_certs(&certs);
                    config = config
                        .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build());
                }
                Err(e) => {
                    ca_error = Some(format!(
                        "cannot read TIDEMARK_CA_CERT {}: {e}",
                        path.display()
                    ))
                }
            }
        }
        let agent: ureq::Agent = config.build().into();
        let auth = std::env::var("TIDEMARK_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .map(|t| format!("Bearer {}", t.trim()));
        Client {
            base: base.trim_end_matches('/').to_string(),
            agent,
            auth,
            ca_error,
        }
    }

    fn finish(
        &self,
        url: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Reply> {
        if let Some(e) = &self.ca_error {
            return Err(anyhow!("{e}"));
        }
        let mut resp = r.with_context(|| {
            format!("cannot reach tidemark at {url}; is `tidemark serve` running?")
        })?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(RESPONSE_BYTES_MAX)
            .read_to_vec()?;
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
