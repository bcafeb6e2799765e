//! Starts the real `tidemark` binary on free loopback ports and talks to it over HTTP.

use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::wire_capture;

pub(crate) struct TestNode {
    child: Option<Child>,
    pub(crate) http: String,
    pub(crate) flight: String,
    pub(crate) kafka: String,
    pub(crate) raft: String,
    log: PathBuf,
    agent: ureq::Agent,
    /// The CA a TLS node's certificate chains to; `None`: plain HTTP.
    pub(crate) ca: Option<PathBuf>,
}

/// The Python with the test clients (Flight SQL, Kafka) that `dev/test` installs.
pub(crate) fn python() -> PathBuf {
    if let Ok(p) = std::env::var("TIDEMARK_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let venv = PathBuf::from(home).join(".cache/tidemark-venv/bin/python");
    assert!(
        venv.exists(),
        "this test needs the Python clients; run `bash dev/test`, which installs them into {}",
        venv.display()
    );
    venv
}

fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A port that is free now, below the kernel's ephemeral range (32768–60999 on Linux): a
/// port the kernel hands out is one an outgoing connection (the nodes talk to each other)
/// can take before the node binds it. Random, so parallel tests rarely pick the same one.
fn free_port_on(ip: &str) -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEED: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = t
        ^ u64::from(std::process::id()).rotate_left(32)
        ^ SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20_000 + (x % 12_000) as u16;
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip} between 20000 and 32000");
}

/// Four different free ports on `ip` (a node's HTTP, Flight, Kafka and Raft): each draw is
/// free now, but two draws can pick the same one.
fn four_free_ports(ip: &str) -> [u16; 4] {
    let mut ports = [0u16; 4];
    let mut n = 0;
    while n < 4 {
        let p = free_port_on(ip);
        if !ports[..n].contains(&p) {
            ports[n] = p;
            n += 1;
        }
    }
    ports
}

/// A cluster member's fixed addresses, so it can be restarted where the others expect it.
#[derive(Debug, Clone)]
pub(crate) struct MemberAddrs {
    pub(crate) node_id: u64,
    pub(crate) http: String,
    pub(crate) flight: String,
    pub(crate) kafka: String,
    pub(crate) raft: String,
}

impl MemberAddrs {
    /// Member `node_id` listens on 127.0.0.<node_id>, on free ports.
    pub(crate) fn new(node_id: u64) -> MemberAddrs {
        let ip = format!("127.0.0.{node_id}");
        let ports = four_free_ports(&ip);
        MemberAddrs {
            node_id,
            http: format!("{ip}:{}", ports[0]),
            flight: format!("{ip}:{}", ports[1]),
            kafka: format!("{ip}:{}", ports[2]),
            raft: format!("{ip}:{}", ports[3]),
        }
    }
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: String,
    pub(crate) headers: Vec<(String, String)>,
}

impl Reply {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl TestNode {
    pub(crate) fn start(data_dir: &Path) -> TestNode {
        Self::start_with(data_dir, &[])
    }

    pub(crate) fn start_with(data_dir: &Path, extra: &[&str]) -> TestNode {
        Self::start_inner(data_dir, extra, None)
    }

    /// A node serving HTTPS, Flight SQL over TLS and Kafka over TLS with `cert`/`key`, which
    /// `ca` signs (the client side trusts `ca`).
    pub(crate) fn start_tls(
        data_dir: &Path,
        ca: &Path,
        cert: &Path,
        key: &Path,
        extra: &[&str],
    ) -> TestNode {
        let (cert, key) = (
            cert.to_string_lossy().into_owned(),
            key.to_string_lossy().into_owned(),
        );
        let mut args = vec!["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
        args.extend(extra);
        Self::start_inner(data_dir, &args, Some(ca))
    }

    fn start_inner(data_dir: &Path, extra: &[&str], ca: Option<&Path>) -> TestNode {
        for _ in 0..3 {
            let addrs = MemberAddrs::new(1);
            let mut node = Self::spawn(data_dir, &addrs, extra);
            if let Some(ca) = ca {
                node.trust(ca);
            }
            // Another process can take a port between our check and the node's bind.
            let deadline = Instant::now() + Duration::from_secs(2);
            let exited = loop {
                if let Some(Ok(Some(status))) = node.child.as_mut().map(Child::try_wait) {
                    break Some(status);
                }
                if Instant::now() > deadline || node_answers(&node) {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if exited.is_some() && node.log_text().contains("Address already in use") {
                continue;
            }
            node.wait_healthy();
            return node;
        }
        panic!("three attempts to start tidemark found a port in use");
    }

    /// Starts (or restarts) a cluster member; `join` is another member's HTTP address. It does
    /// not wait: a joining node is healthy only once it has a leader.
    pub(crate) fn start_member(
        data_dir: &Path,
        addrs: &MemberAddrs,
        join: Option<&str>,
        extra: &[&str],
    ) -> TestNode {
        let id = addrs.node_id.to_string();
        let mut args = vec!["--node-id", &id];
        if let Some(j) = join {
            args.extend(["--join", j]);
        }
        args.extend(extra);
        Self::spawn(data_dir, addrs, &args)
    }

    /// A single node that may hold at most `fds_max` open files (`ulimit -n`), for tests of
    /// what the node does when it runs out.
    pub(crate) fn start_with_fd_limit(data_dir: &Path, fds_max: u32, extra: &[&str]) -> TestNode {
        let node = Self::spawn_limited(data_dir, &MemberAddrs::new(1), extra, Some(fds_max));
        node.wait_healthy();
        node
    }

    /// A cluster member started with `secret` as its cluster secret (none: without one)
    /// instead of the one every other test node shares.
    pub(crate) fn start_member_with_secret(
        data_dir: &Path,
        addrs: &MemberAddrs,
        join: Option<&str>,
        secret: Option<&str>,
    ) -> TestNode {
        let id = addrs.node_id.to_string();
        let mut args = vec!["--node-id", &id];
        if let Some(j) = join {
            args.extend(["--join", j]);
        }
        Self::spawn_with(data_dir, addrs, &args, None, Some(secret))
    }

    fn spawn(data_dir: &Path, addrs: &MemberAddrs, extra: &[&str]) -> TestNode {
        Self::spawn_limited(data_dir, addrs, extra, None)
    }

    fn spawn_limited(
        data_dir: &Path,
        addrs: &MemberAddrs,
        extra: &[&str],
        fds_max: Option<u32>,
    ) -> TestNode {
        Self::spawn_with(data_dir, addrs, extra, fds_max, None)
    }

    /// `secret`: `None` for the shared [`CLUSTER_SECRET`], `Some(s)` for `s` (`Some(None)`:
    /// no secret at all).
    fn spawn_with(
        data_dir: &Path,
        addrs: &MemberAddrs,
        extra: &[&str],
        fds_max: Option<u32>,
        secret: Option<Option<&str>>,
    ) -> TestNode {
        let (http, flight, kafka) = (
            addrs.http.clone(),
            addrs.flight.clone(),
            addrs.kafka.clone(),
        );
        std::fs::create_dir_all(data_dir).expect("data dir");
        let log = data_dir.join(format!("node-{}.log", free_port()));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut command = match fds_max {
            None => Command::new(tidemark_bin()),
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(tidemark_bin());
                c
            }
        };
        let child = command
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args([
                "--http-addr",
                &http,
                "--flight-addr",
                &flight,
                "--kafka-addr",
                &kafka,
                "--raft-addr",
                &addrs.raft,
            ])
            .args(if extra.contains(&"--tick-interval-ms") {
                &[][..]
            } else {
                &["--tick-interval-ms", "200"][..]
            })
            .args(extra)
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "1")
            .env_remove("TIDEMARK_CLUSTER_SECRET")
            .envs(
                secret
                    .unwrap_or(Some(CLUSTER_SECRET))
                    .map(|s| ("TIDEMARK_CLUSTER_SECRET", s)),
            )
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn tidemark");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // No pooled connections: a test that makes the node close one (an over-size body)
            // must not see the next request fail on the dead socket.
            .max_idle_connections_per_host(0)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        TestNode {
            child: Some(child),
            http,
            flight,
            kafka,
            raft: addrs.raft.clone(),
            log,
            agent,
            ca: None,
        }
    }

    /// Speaks HTTPS to the node from here on, trusting `ca`.
    pub(crate) fn trust(&mut self, ca: &Path) {
        let pem = std::fs::read(ca).expect("read the CA");
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        let roots = ureq::tls::RootCerts::new_with_certs(&certs);
        self.agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_connections_per_host(0)
            .timeout_global(Some(Duration::from_secs(60)))
            .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
            .build()
            .into();
        self.ca = Some(ca.to_path_buf());
    }

    /// The node's URL for `path` (https once it trusts a CA).
    pub(crate) fn url(&self, path: &str) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.http)
    }

    pub(crate) fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = self.try_get("/health")
                && r.status == 200
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("tidemark did not become healthy; log:\n{}", self.log_text());
    }

    pub(crate) fn log_text(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    fn finish(
        method: &str,
        path: &str,
        sent: &[u8],
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Reply, ureq::Error> {
        let mut resp = match r {
            Ok(resp) => resp,
            Err(e) => {
                wire_capture::record(method, path, sent, 0, e.to_string().as_bytes());
                return Err(e);
            }
        };
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()?;
        wire_capture::record(method, path, sent, status, body.as_bytes());
        Ok(Reply {
            status,
            body,
            headers,
        })
    }

    pub(crate) fn try_get(&self, path: &str) -> Result<Reply, ureq::Error> {
        Self::finish("GET", path, b"", self.agent.get(&self.url(path)).call())
    }

    pub(crate) fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.agent.get(&self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::finish("GET", path, b"", req.call()).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub(crate) fn get(&self, path: &str) -> Reply {
        self.try_get(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub(crate) fn delete(&self, path: &str) -> Reply {
        Self::finish(
            "DELETE",
            path,
            b"",
            self.agent.delete(&self.url(path)).call(),
        )
        .unwrap_or_else(|e| panic!("DELETE {path}: {e}"))
    }

    pub(crate) fn try_post(
        &self,
        path: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<Reply, ureq::Error> {
        let mut req = self.agent.post(&self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::finish("POST", path, body, req.send(body))
    }

    pub(crate) fn post(&self, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Reply {
        self.try_post(path, body, headers).unwrap_or_else(|e| {
            // A transport error is the node's to explain: show the end of its log.
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            // A panic in the node names itself; otherwise the last lines tell.
            let at = lines
                .iter()
                .position(|l| l.contains("panicked at"))
                .unwrap_or(lines.len().saturating_sub(30));
            let tail = lines[at..]
                .iter()
                .take(30)
                .copied()
                .collect::<Vec<_>>()
                .join("\n");
            panic!("POST {path}: {e}\nnode log:\n{tail}")
        })
    }

    /// A POST whose answer may be binary (Arrow IPC): its status and bytes, as sent.
    pub(crate) fn post_raw(
        &self,
        path: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> (u16, Vec<u8>) {
        let (status, bytes) = self.try_post_raw(path, body, headers);
        (
            status,
            bytes.unwrap_or_else(|e| panic!("POST {path}: {e}\nnode log:\n{}", self.log_text())),
        )
    }

    /// A POST's status and its body's bytes, or the error that cut the body.
    pub(crate) fn try_post_raw(
        &self,
        path: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> (u16, Result<Vec<u8>, ureq::Error>) {
        let mut req = self.agent.post(&self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = req
            .send(body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}\nnode log:\n{}", self.log_text()));
        let status = resp.status().as_u16();
        let answer = resp.body_mut().with_config().limit(1 << 30).read_to_vec();
        match &answer {
            Ok(bytes) => wire_capture::record("POST", path, body, status, bytes),
            Err(e) => wire_capture::record("POST", path, body, status, e.to_string().as_bytes()),
        }
        (status, answer)
    }

    pub(crate) fn put_with(&self, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Reply {
        let mut req = self.agent.put(&self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::finish("PUT", path, body, req.send(body))
            .unwrap_or_else(|e| panic!("PUT {path}: {e}"))
    }

    pub(crate) fn put(&self, path: &str, body: &[u8]) -> Reply {
        Self::finish(
            "PUT",
            path,
            body,
            self.agent.put(&self.url(path)).send(body),
        )
        .unwrap_or_else(|e| panic!("PUT {path}: {e}"))
    }

    /// Rows of a SQL query as JSON objects.
    pub(crate) fn sql(&self, query: &str) -> Vec<serde_json::Value> {
        let r = self.post(
            "/v1/sql",
            query.as_bytes(),
            &[("Content-Type", "text/plain")],
        );
        assert_eq!(r.status, 200, "{query}: {}", r.body);
        r.json().as_array().cloned().unwrap_or_default()
    }

    /// One number from a one-row, one-column query.
    pub(crate) fn sql_i64(&self, query: &str) -> i64 {
        let rows = self.sql(query);
        rows.first()
            .and_then(|r| r.as_object())
            .and_then(|o| o.values().next())
            .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
            .unwrap_or_else(|| panic!("{query}: no number in {rows:?}"))
    }

    /// Runs the CLI against this node.
    pub(crate) fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(tidemark_bin())
            .args(args)
            .env("TIDEMARK_URL", self.url(""))
            .env(
                "TIDEMARK_CA_CERT",
                self.ca.as_deref().unwrap_or(Path::new("")),
            )
            .output()
            .expect("run tidemark CLI");
        let code = out.status.code().unwrap_or(-1);
        let mut answer = out.stdout.clone();
        answer.extend_from_slice(b"\n-- stderr --\n");
        answer.extend_from_slice(&out.stderr);
        wire_capture::record("CLI", &args.join(" "), b"", code as u16, &answer);
        (
            code,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The node's resident memory in KiB (Linux /proc).
    pub(crate) fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().map(|c| c.id()).unwrap_or_default();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a node that stalls (a long GC-like pause, a
    /// stuck disk) without its sockets closing.
    pub(crate) fn pause(&self, stopped: bool) {
        if let Some(c) = self.child.as_ref() {
            let signal = if stopped { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill")
                .arg(signal)
                .arg(c.id().to_string())
                .status();
        }
    }

    /// SIGKILL: no shutdown path runs.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits up to `timeout` for the node to exit on its own: its exit code (None: still
    /// running, or killed by a signal).
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGTERM and wait for a clean exit (`None`: it had to be killed, and the end of its log
    /// is printed, so a slow or stuck shutdown says where it was).
    pub(crate) fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        // Generous: a full suite on two cores can slow a clean shutdown (the last checkpoint's
        // fsyncs, Raft's shutdown) well past what it takes alone.
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        let log = self.log_text();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        eprintln!(
            "the node did not stop within 90 s of SIGTERM; its log ends:\n{}",
            tail.join("\n")
        );
        None
    }
}

fn node_answers(node: &TestNode) -> bool {
    node.try_get("/health").is_ok()
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The cluster secret every test node shares unless a test says otherwise.
pub(crate) const CLUSTER_SECRET: &str = "e2e-cluster-secret-0123456789";

/// The binary under test: this build's, or `TIDEMARK_BIN` (the long chaos run uses a release
/// build, so a 200-kill run measures the server rather than debug-build overhead).
pub(crate) fn tidemark_bin() -> std::path::PathBuf {
    std::env::var_os("TIDEMARK_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tidemark").into())
}

/// A sample's value in Prometheus text: the line `name value`.
pub(crate) fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}
