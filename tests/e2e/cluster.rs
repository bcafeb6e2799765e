//! Three `tidemark serve` processes on 127.0.0.1–3 as one Raft cluster: writes through any
//! node, the leader SIGKILLed and restarted while writers keep going, and at the end every
//! acknowledged event present exactly once on every node.
//!
//! `TIDEMARK_CHAOS_KILLS` sets the number of leader kills (default 20); with
//! `TIDEMARK_CHAOS_FOLLOWERS=1` every second round also kills or pauses a follower. The longer
//! run is `bash dev/chaos-long` (200 leader kills against a release server, `TIDEMARK_BIN`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tidemark_catalog::spec::DEMO_BEACONS_SPEC;
use tidemark_loadgen::Beacon;

use crate::harness::{MemberAddrs, TestNode};
use crate::{ndjson, now_ms, traffic};

struct Cluster {
    dirs: Vec<TempDir>,
    addrs: Vec<MemberAddrs>,
    nodes: Vec<Option<TestNode>>,
    extra: Vec<&'static str>,
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections_per_host(0)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

fn get_json(agent: &ureq::Agent, url: &str) -> Option<serde_json::Value> {
    let mut r = agent.get(url).call().ok()?;
    let text = r.body_mut().read_to_string().ok()?;
    serde_json::from_str(&text).ok()
}

impl Cluster {
    /// Node 1 starts the cluster; nodes 2 and 3 join through it.
    fn start() -> Cluster {
        Self::start_with(&[])
    }

    fn start_with(extra: &[&'static str]) -> Cluster {
        let mut dirs: Vec<TempDir> = (0..3)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect();
        // For a post-mortem of a failed long run: the nodes' data directories and logs stay.
        if std::env::var_os("TIDEMARK_KEEP_TEST_DIRS").is_some() {
            for d in &mut dirs {
                d.disable_cleanup(true);
                eprintln!("keeping {}", d.path().display());
            }
        }
        let addrs: Vec<MemberAddrs> = (1..=3).map(MemberAddrs::new).collect();
        let first = TestNode::start_member(dirs[0].path(), &addrs[0], None, extra);
        first.wait_healthy();
        let mut nodes = vec![Some(first)];
        for i in 1..3 {
            nodes.push(Some(TestNode::start_member(
                dirs[i].path(),
                &addrs[i],
                Some(&addrs[0].http),
                extra,
            )));
        }
        let c = Cluster {
            dirs,
            addrs,
            nodes,
            extra: extra.to_vec(),
        };
        c.wait_for(Duration::from_secs(90), "three voters", |s| {
            s["voters"].as_object().is_some_and(|v| v.len() == 3) && s["leader"].is_u64()
        });
        c
    }

    fn node(&self, i: usize) -> &TestNode {
        self.nodes[i].as_ref().expect("node is running")
    }

    /// The cluster status from the leader if one answers (only it knows how far each member
    /// is), else from the first running node that answers.
    fn status(&self) -> Option<serde_json::Value> {
        let a = agent(Duration::from_secs(2));
        let all: Vec<serde_json::Value> = self
            .nodes
            .iter()
            .flatten()
            .filter_map(|n| get_json(&a, &format!("http://{}/v1/cluster", n.http)))
            .collect();
        let leader = all.iter().find(|s| s["state"] == "leader").cloned();
        leader.or_else(|| all.into_iter().next())
    }

    fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status()
                && ok(&s)
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "cluster never reached: {what}; last status {:?}{}",
                self.status(),
                self.logs_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Index of the node every running node agrees leads.
    fn leader(&self) -> usize {
        let s = self.wait_for(Duration::from_secs(60), "a leader", |s| {
            s["leader"].is_u64()
        });
        (s["leader"].as_u64().unwrap_or(1) - 1) as usize
    }

    /// The last lines of every running node's log, for a failure message.
    fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(n) = n else { continue };
            let text = n.log_text();
            let tail: Vec<&str> = text
                .lines()
                .filter(|l| !l.contains("HeartbeatWorker") && !l.contains("h2::proto"))
                .rev()
                .take(lines)
                .collect();
            let health = n
                .try_get("/health")
                .map(|r| r.body)
                .unwrap_or_else(|e| e.to_string());
            // A panic anywhere in the log matters more than the tail: print it and what followed.
            let all: Vec<&str> = text.lines().collect();
            for (at, _) in all
                .iter()
                .enumerate()
                .filter(|(_, l)| l.contains("panicked at"))
                .take(3)
            {
                out.push_str(&format!("\n--- node {} PANIC at log line {at}\n", i + 1));
                for l in all.iter().skip(at.saturating_sub(3)).take(20) {
                    out.push_str(&l.chars().take(400).collect::<String>());
                    out.push('\n');
                }
            }
            out.push_str(&format!(
                "\n--- node {} health {health} (last {lines} lines)\n",
                i + 1
            ));
            for l in tail.iter().rev() {
                out.push_str(&l.chars().take(300).collect::<String>());
                out.push('\n');
            }
        }
        out
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut n) = self.nodes[i].take() {
            n.kill9();
        }
    }

    fn restart(&mut self, i: usize) {
        let join = (i != 0).then(|| self.addrs[0].http.clone());
        self.nodes[i] = Some(TestNode::start_member(
            self.dirs[i].path(),
            &self.addrs[i],
            join.as_deref(),
            &self.extra,
        ));
    }

    /// Starts node `i` asking the member at `via` to add it (a wiped node joins afresh).
    fn start_joining(&mut self, i: usize, via: usize) {
        let via = self.addrs[via].http.clone();
        self.nodes[i] = Some(TestNode::start_member(
            self.dirs[i].path(),
            &self.addrs[i],
            Some(&via),
            &self.extra,
        ));
    }

    /// What each node holds that differs from `expected`, key by key (for a failure message).
    fn divergence(&self, table: &str, expected: &BTreeMap<String, (i64, f64)>) -> String {
        let want: i64 = expected.values().map(|v| v.0).sum();
        let mut out = format!(
            "not every node holds every acknowledged event exactly once; expected {want} events\n"
        );
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(n) = n else { continue };
            let got = aggregates(n, table);
            let events: i64 = got.values().map(|v| v.0).sum();
            out.push_str(&format!("node {} holds {events} events", i + 1));
            let keys: std::collections::BTreeSet<&String> =
                got.keys().chain(expected.keys()).collect();
            let diffs: Vec<String> = keys
                .into_iter()
                .filter(|k| got.get(*k) != expected.get(*k))
                .map(|k| {
                    format!(
                        "{k}: {:?} where {:?} was expected",
                        got.get(k),
                        expected.get(k)
                    )
                })
                .collect();
            out.push_str(&format!("; {} keys differ\n", diffs.len()));
            for d in diffs.iter().take(15) {
                out.push_str(&format!("    {d}\n"));
            }
        }
        out
    }

    /// Waits until every node reports the same exact aggregates of `beacons`.
    fn converged(&self, expected: &BTreeMap<String, (i64, f64)>) {
        self.converged_in("beacons", expected)
    }

    fn converged_in(&self, table: &str, expected: &BTreeMap<String, (i64, f64)>) {
        let deadline = Instant::now() + Duration::from_secs(90);
        for n in &self.nodes {
            let n = n.as_ref().expect("all nodes run at the end");
            n.wait_healthy();
            loop {
                let got = aggregates(n, table);
                if &got == expected {
                    break;
                }
                if Instant::now() >= deadline {
                    panic!("{}", self.divergence(table, expected));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Per merchant: events and total amount (amounts in cents, so sums are exact).
/// A node still catching up may not know the table yet: that reads as no rows.
fn aggregates(n: &TestNode, table: &str) -> BTreeMap<String, (i64, f64)> {
    let q = format!(
        "SELECT merchant_id, SUM(\"count\") AS c, SUM(amount_sum) AS a FROM {table} GROUP BY merchant_id"
    );
    let r = n.post("/v1/sql", q.as_bytes(), &[("Content-Type", "text/plain")]);
    if r.status != 200 && r.body.contains("not found") {
        return BTreeMap::new();
    }
    assert_eq!(r.status, 200, "{q}: {}", r.body);
    r.json()
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            let m = r["merchant_id"].as_str().unwrap_or_default().to_string();
            (
                m,
                (
                    r["c"].as_i64().unwrap_or(-1),
                    (r["a"].as_f64().unwrap_or(0.0) * 100.0).round(),
                ),
            )
        })
        .collect()
}

fn expected(batches: &[Vec<Beacon>], acked: &[usize]) -> BTreeMap<String, (i64, f64)> {
    let mut out: BTreeMap<String, (i64, f64)> = BTreeMap::new();
    for &i in acked {
        for b in &batches[i] {
            let e = out.entry(b.merchant_id.clone()).or_default();
            e.0 += 1;
            e.1 += b.amount.unwrap_or(0.0) * 100.0;
        }
    }
    out.values_mut().for_each(|v| v.1 = v.1.round());
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn three_nodes_forward_writes_and_agree() {
    let c = Cluster::start();
    let leader = c.leader();
    let follower = (leader + 1) % 3;
    let batches: Vec<Vec<Beacon>> = (0..4)
        .map(|i| traffic(7000 + i, 20, now_ms() - 600_000, 600_000, 200))
        .collect();
    for (i, b) in batches.iter().enumerate() {
        // Through a follower: it forwards to the leader and answers with the leader's answer.
        let r = c.node(follower).post(
            "/v1/beacons/beacons",
            &ndjson(b),
            &[("Idempotency-Key", &format!("fw-{i}"))],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["accepted"], 200, "{}", r.body);
    }
    c.converged(&expected(&batches, &[0, 1, 2, 3]));
    // Read-your-writes: a read on any node right after an acknowledged write sees it.
    let count = "SELECT SUM(\"count\") AS n FROM beacons";
    let mut total = 800;
    let ryw: Vec<Vec<Beacon>> = (0..3)
        .map(|k| traffic(7200 + k, 20, now_ms() - 600_000, 600_000, 50))
        .collect();
    for (k, i) in [follower, leader, (leader + 2) % 3].into_iter().enumerate() {
        let r = c.node(leader).post(
            "/v1/beacons/beacons",
            &ndjson(&ryw[k]),
            &[("Idempotency-Key", &format!("ryw-{k}"))],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        total += 50;
        let r = c.node(i).post(
            "/v1/sql",
            count.as_bytes(),
            &[
                ("Content-Type", "text/plain"),
                ("tidemark-consistency", "read-your-writes"),
            ],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()[0]["n"], total, "node {} read its writes", i + 1);
    }
    let r = c.node(follower).post(
        "/v1/sql",
        count.as_bytes(),
        &[("tidemark-consistency", "eventual-ish")],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("read-your-writes"), "{}", r.body);
    for i in 0..3 {
        let h = c.node(i).get("/health").json();
        assert_eq!(h["writes"], true, "{h}");
        assert_eq!(h["leader"].as_u64(), Some(leader as u64 + 1), "{h}");
        assert_eq!(
            h["role"],
            if i == leader { "leader" } else { "follower" },
            "{h}"
        );
    }
    // A datasource change through a follower reaches every node's catalog.
    let spec = crate::datasources::SHOPS;
    let r = c.node(follower).post(
        "/v1/datasources",
        spec.as_bytes(),
        &[("Content-Type", "application/json")],
    );
    assert!(r.status == 200 || r.status == 201, "{}", r.body);
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(60);
        while c.node(i).get("/v1/datasources/shops").status != 200 {
            assert!(
                Instant::now() < deadline,
                "node {} never saw the new datasource",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The CLI shows the three members and who leads.
    let (code, out, err) = c.node(follower).cli(&["cluster", "status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("leader") && out.matches("127.0.0.").count() >= 9,
        "{out}"
    );

    // Leadership moves on request, and writes follow it.
    let target = (leader + 2) % 3;
    let (code, out, err) =
        c.node(follower)
            .cli(&["cluster", "transfer-leader", &(target + 1).to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(c.leader(), target);
    let more = vec![traffic(7100, 20, now_ms() - 600_000, 600_000, 100)];
    let r = c.node(leader).post(
        "/v1/beacons/beacons",
        &ndjson(&more[0]),
        &[("Idempotency-Key", "fw-after")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let mut all = batches.clone();
    all.extend(more);
    all.extend(ryw);
    c.converged(&expected(&all, &[0, 1, 2, 3, 4, 5, 6, 7]));

    // With API keys: a key created through a follower works on every node; a follower
    // forwards the caller's key with a write, and asks the leader for a read index with the
    // node token; every node holds the same audit log.
    let follower = (c.leader() + 1) % 3;
    let (code, out, err) = c
        .node(follower)
        .cli(&["keys", "create", "--name", "root", "--role", "admin"]);
    assert_eq!(code, 0, "{err}");
    let auth = format!("Bearer {}", out.trim());
    let audit = "SELECT log_position, actor, op, object FROM sys.audit ORDER BY log_position";
    let mut logs = Vec::new();
    for i in 0..3 {
        let r = c.node(i).post(
            "/v1/sql",
            audit.as_bytes(),
            &[
                ("Authorization", &auth),
                ("tidemark-consistency", "read-your-writes"),
            ],
        );
        assert_eq!(r.status, 200, "node {}: {}", i + 1, r.body);
        logs.push(r.json());
    }
    // The demo datasource, `shops`, the key (nodes keep no secret in the log, so no row for one).
    assert!(
        logs[0].as_array().is_some_and(|rows| rows.len() >= 3),
        "{}",
        logs[0]
    );
    assert!(
        !logs[0].to_string().contains("set_node_secret"),
        "{}",
        logs[0]
    );
    assert!(
        logs.iter().all(|l| *l == logs[0]),
        "audit logs differ: {logs:?}"
    );
    let last = traffic(7300, 20, now_ms() - 600_000, 600_000, 10);
    let r = c
        .node(follower)
        .post("/v1/beacons/beacons", &ndjson(&last), &[]);
    assert_eq!(r.status, 401, "{}", r.body);
    let r = c.node(follower).post(
        "/v1/beacons/beacons",
        &ndjson(&last),
        &[("Authorization", &auth)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Sets node `i`'s transport faults: the peers (node ids) it cannot reach.
fn cut_off(c: &Cluster, i: usize, unreachable: &[usize]) {
    let ids: Vec<u64> = unreachable.iter().map(|j| *j as u64 + 1).collect();
    let body = serde_json::json!({ "unreachable": ids }).to_string();
    let r = c.node(i).post(
        "/v1/test/faults",
        body.as_bytes(),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn a_partitioned_leader_acknowledges_nothing_and_the_majority_goes_on() {
    let mut c = Cluster::start_with(&["--test-faults"]);
    let old = c.leader();
    let majority = [(old + 1) % 3, (old + 2) % 3];
    let old_term = c.status().and_then(|s| s["term"].as_u64()).unwrap_or(0);
    let batches: Vec<Vec<Beacon>> = (0..5)
        .map(|i| traffic(9100 + i, 12, now_ms() - 600_000, 600_000, 100))
        .collect();
    let post = |node: &TestNode, i: usize, timeout: Duration| {
        agent(timeout)
            .post(&format!("http://{}/v1/beacons/beacons", node.http))
            .header("Idempotency-Key", &format!("part-{i}"))
            .send(&ndjson(&batches[i])[..])
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    post(c.node(old), 0, Duration::from_secs(10));

    cut_off(&c, old, &majority);
    for &m in &majority {
        cut_off(&c, m, &[old]);
    }
    // The old leader cannot commit: a write sent to it is not acknowledged.
    let minority = post(c.node(old), 1, Duration::from_secs(3));
    assert_ne!(minority, 200, "an isolated leader acknowledged a write");

    // The majority elects a leader of a later term and goes on.
    let a = agent(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_status = loop {
        let s = get_json(
            &a,
            &format!("http://{}/v1/cluster", c.node(majority[0]).http),
        );
        if let Some(s) = s.filter(|s| s["leader"].as_u64().is_some_and(|l| l != old as u64 + 1)) {
            break s;
        }
        assert!(Instant::now() < deadline, "the majority elected no leader");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        new_status["term"].as_u64().unwrap_or(0) > old_term,
        "a new leader needs a new term: {new_status}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while post(c.node(majority[0]), 2, Duration::from_secs(5)) != 200 {
        assert!(Instant::now() < deadline, "the majority took no write");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Still cut off, the old leader acknowledges nothing: now that it has heard from no
    // quorum for a while, it spools beacons instead (202 "spooled", never the normal ack),
    // with the client's key or one of its own.
    assert_eq!(
        post(c.node(old), 1, Duration::from_secs(10)),
        202,
        "an isolated node must not acknowledge a write"
    );
    for (i, key) in [(3, Some("part-3")), (4, None)] {
        let mut req = agent(Duration::from_secs(10))
            .post(&format!("http://{}/v1/beacons/beacons", c.node(old).http));
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let mut r = req
            .send(&ndjson(&batches[i])[..])
            .expect("the isolated node answers");
        let body = r.body_mut().read_to_string().unwrap_or_default();
        assert_eq!(r.status(), 202, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            (v["spooled"].as_bool(), v["beacons"].as_u64()),
            (Some(true), Some(100)),
            "{body}"
        );
        if let Some(k) = key {
            assert_eq!(v["idempotency_key"], k, "{body}");
        }
    }
    assert_eq!(metric(c.node(old), "tidemark_spool_batches"), 3);

    // The spool is on disk: a kill -9 loses nothing of it. Restarted and healed, the old
    // leader follows; the write it never acknowledged is retried with its key and counts once.
    c.kill(old);
    for &m in &majority {
        cut_off(&c, m, &[]);
    }
    c.restart(old);
    let deadline = Instant::now() + Duration::from_secs(30);
    while post(c.node(old), 1, Duration::from_secs(5)) != 200 {
        assert!(
            Instant::now() < deadline,
            "after healing, the write was never taken"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The spooled batches drain to the new leader once healed, and count once (batch 1 was
    // spooled, maybe more than once while the node rejoined, and retried with its key).
    c.converged(&expected(&batches, &[0, 1, 2, 3, 4]));
    let n = c.node(old);
    assert_eq!(metric(n, "tidemark_spool_batches"), 0);
    // Counters restart with the process: the three spooled before the kill drained after it.
    let (spooled, drained) = (
        metric(n, "tidemark_spool_spooled_total"),
        metric(n, "tidemark_spool_drained_total"),
    );
    assert!(drained == 3 + spooled, "{}", n.get("/metrics").body);
}

#[test]
fn a_killed_follower_catches_up_and_a_wiped_node_rejoins() {
    let mut c = Cluster::start();
    let leader = c.leader();
    let (follower, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let batches: Vec<Vec<Beacon>> = (0..4)
        .map(|i| traffic(8000 + i, 15, now_ms() - 600_000, 600_000, 300))
        .collect();
    let post = |c: &Cluster, i: usize| {
        let r = c.node(leader).post(
            "/v1/beacons/beacons",
            &ndjson(&batches[i]),
            &[("Idempotency-Key", &format!("cu-{i}"))],
        );
        assert_eq!(r.status, 200, "{}", r.body);
    };

    // Two of three still commit; the follower catches up from the leader's log on restart.
    c.kill(follower);
    post(&c, 0);
    post(&c, 1);
    c.restart(follower);
    c.converged(&expected(&batches, &[0, 1]));

    // A node that lost its disk: removed from the cluster, wiped, and joined again as new.
    c.kill(other);
    let (code, out, err) = c
        .node(leader)
        .cli(&["cluster", "remove", &(other + 1).to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    c.wait_for(Duration::from_secs(30), "two voters", |s| {
        s["voters"].as_object().is_some_and(|v| v.len() == 2)
    });
    post(&c, 2);
    let dir = c.dirs[other].path().to_path_buf();
    wipe(&dir);
    c.start_joining(other, leader);
    c.wait_for(Duration::from_secs(60), "three voters again", |s| {
        s["voters"]
            .as_object()
            .is_some_and(|v| v.len() == 3 && v.contains_key(&(other + 1).to_string()))
    });
    post(&c, 3);
    c.converged(&expected(&batches, &[0, 1, 2, 3]));
}

/// Empties a node's data directory (a lost disk).
fn wipe(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).expect("data dir").flatten() {
        let p = entry.path();
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
}

/// A counter from a node's `/metrics`.
fn metric(n: &TestNode, name: &str) -> u64 {
    crate::harness::metric_value(&n.get("/metrics").body, name).map_or(0, |v| v as u64)
}

/// Every published segment file under a node's data directory: relative path → CRC-32C.
fn segment_files(dir: &std::path::Path) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let root = dir.join("datasources");
    for ds in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(ds.path().join("segments"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "seg") {
                let rel = p
                    .strip_prefix(&root)
                    .map(|r| r.display().to_string())
                    .unwrap_or_default();
                out.insert(rel, crc32c::crc32c(&std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out
}

/// A one-minute-segment datasource, so events minutes old persist at the next tick.
fn minute_datasource(c: &Cluster, name: &str) {
    let spec = DEMO_BEACONS_SPEC
        .replace("\"beacons\"", &format!("\"{name}\""))
        .replace("\"segment\": \"PT1H\"", "\"segment\": \"PT1M\"")
        .replace("\"PT10M\"", "\"PT1M\"");
    let r = c.node(c.leader()).post(
        "/v1/datasources",
        spec.as_bytes(),
        &[("Content-Type", "application/json")],
    );
    assert!(r.status == 200 || r.status == 201, "{}", r.body);
}

#[test]
fn nodes_behind_the_purged_log_catch_up_by_snapshot_with_its_data_files() {
    // A snapshot every 30 entries, 5 kept: a node that misses a few dozen writes can only
    // catch up by snapshot.
    let mut c = Cluster::start_with(&[
        "--snapshot-every-entries",
        "30",
        "--entries-kept-after-snapshot",
        "5",
    ]);
    let leader = c.leader();
    let (behind, wiped) = ((leader + 1) % 3, (leader + 2) % 3);
    minute_datasource(&c, "snap");
    // Events 5 to 30 minutes old: their minutes are closed, so segments are written.
    let start = now_ms() - 30 * 60_000;
    let batches: Vec<Vec<Beacon>> = (0..90)
        .map(|i| traffic(9500 + i, 12, start, 25 * 60_000, 40))
        .collect();
    let post = |c: &Cluster, range: std::ops::Range<usize>| {
        for i in range {
            let r = c.node(leader).post(
                "/v1/beacons/snap",
                &ndjson(&batches[i]),
                &[("Idempotency-Key", &format!("snap-{i}"))],
            );
            assert_eq!(r.status, 200, "{}", r.body);
        }
    };
    let purged_past = |c: &Cluster, index: u64| {
        c.wait_for(Duration::from_secs(60), "the leader purged its log", |s| {
            s["purged_index"].as_u64().is_some_and(|p| p > index)
        });
    };

    // A follower that was down while the leader snapshotted and purged: it restarts with its
    // old data and reuses what it holds.
    let at_kill = c
        .status()
        .and_then(|s| s["applied_index"].as_u64())
        .unwrap_or(0);
    c.kill(behind);
    post(&c, 0..40);
    purged_past(&c, at_kill + 5);
    c.restart(behind);

    // A node that lost its disk: removed, wiped, joined again; it fetches every file.
    c.wait_for(Duration::from_secs(60), "three voters in step", |s| {
        let applied = s["applied_index"].as_u64().unwrap_or(0);
        s["replication"]
            .as_object()
            .is_some_and(|r| r.values().all(|v| v.as_u64().unwrap_or(0) + 50 >= applied))
    });
    c.kill(wiped);
    let (code, out, err) = c
        .node(leader)
        .cli(&["cluster", "remove", &(wiped + 1).to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    c.wait_for(Duration::from_secs(30), "two voters", |s| {
        s["voters"].as_object().is_some_and(|v| v.len() == 2)
    });
    let at_removal = c
        .status()
        .and_then(|s| s["applied_index"].as_u64())
        .unwrap_or(0);
    post(&c, 40..70);
    purged_past(&c, at_removal + 5);
    let dir = c.dirs[wiped].path().to_path_buf();
    wipe(&dir);
    c.start_joining(wiped, leader);
    c.wait_for(Duration::from_secs(90), "three voters again", |s| {
        s["voters"]
            .as_object()
            .is_some_and(|v| v.len() == 3 && v.contains_key(&(wiped + 1).to_string()))
    });
    post(&c, 70..90);
    let all: Vec<usize> = (0..90).collect();
    c.converged_in("snap", &expected(&batches, &all));

    for i in [behind, wiped] {
        let n = c.node(i);
        assert!(
            metric(n, "tidemark_raft_snapshots_installed_total") >= 1,
            "node {} installed no snapshot",
            i + 1
        );
    }
    let fetched = |i: usize| {
        let n = c.node(i);
        let names = [
            "installed_total",
            "files_fetched_total",
            "bytes_fetched_total",
            "files_reused_total",
        ];
        names.map(|m| {
            metric(
                n,
                &format!(
                    "tidemark_raft_snapshot{}_{m}",
                    if m == "installed_total" { "s" } else { "" }
                ),
            )
        })
    };
    eprintln!(
        "snapshot [installed, files fetched, bytes fetched, files reused]: behind {:?}, wiped {:?}",
        fetched(behind),
        fetched(wiped)
    );
    assert!(fetched(wiped)[2] > 0, "the wiped node fetched no data");
    assert!(
        metric(c.node(leader), "tidemark_raft_snapshot_bytes_served_total") > 0,
        "the leader served no data"
    );

    // Replicas agree byte for byte: every segment, fetched or written here, on every node.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let files: Vec<BTreeMap<String, u32>> =
            c.dirs.iter().map(|d| segment_files(d.path())).collect();
        if !files[0].is_empty() && files.iter().all(|f| f == &files[0]) {
            break;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = c
                .nodes
                .iter()
                .flatten()
                .map(|n| {
                    n.log_text()
                        .lines()
                        .filter(|l| {
                            l.contains("snapshot") || l.contains("ERROR") || l.contains("WARN")
                        })
                        .take(30)
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .collect();
            panic!(
                "segment files differ between nodes (leader {leader}, behind {behind}, wiped {wiped}): {files:?}\n{}",
                logs.join("\n----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    // A reindex: every replica (the one that fetched everything by snapshot included) builds
    // the same new version from its own raw log, and switches at the same log entry.
    let interval = format!("{}/{}", start - 60_000, now_ms());
    let (code, out, err) =
        c.node(leader)
            .cli(&["reindex", "--datasource", "snap", "--interval", &interval]);
    assert_eq!(code, 0, "{out}{err}");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let version = job["id"].as_u64().unwrap_or_default().to_string();
    c.converged_in("snap", &expected(&batches, &all));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let versions: Vec<Vec<serde_json::Value>> = (0..3)
            .map(|i| {
                c.node(i)
                    .sql("SELECT DISTINCT version FROM sys.segments WHERE datasource = 'snap'")
            })
            .collect();
        let files: Vec<BTreeMap<String, u32>> =
            c.dirs.iter().map(|d| segment_files(d.path())).collect();
        let new_only = versions
            .iter()
            .all(|v| v.len() == 1 && v[0]["version"] == version.as_str());
        if new_only && files.iter().all(|f| f == &files[0]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas differ after the reindex: {versions:?} {files:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // An export taken on a follower: it runs there (its host's disk), its job is logged
    // through the leader, and every replica knows it, written.
    let copies_dir = tempfile::tempdir().expect("tempdir");
    // Paced, it runs long enough to watch from the leader (which asks the follower for its
    // progress) and to cancel there: the follower stops it and removes its files.
    let paced_dir = copies_dir.path().join("paced");
    let paced_text = paced_dir.to_string_lossy().into_owned();
    let (code, out, err) = c.node(behind).cli(&[
        "export",
        "--datasource",
        "snap",
        "--interval",
        "0/9999999999999",
        "--to",
        &paced_text,
        "--no-wait",
        "--max-bytes-per-s",
        "2000",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let paced: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let paced_id = paced["id"].as_u64().unwrap_or_default();
    let leader = c.leader();
    assert_ne!(leader, behind, "the export ran on a follower");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = c.node(leader).get(&format!("/v1/jobs/{paced_id}")).json();
        if j["state"] == "running" && j["bytes_done"].as_u64() > Some(0) {
            assert!(j["bytes_done"].as_u64() < j["bytes_total"].as_u64(), "{j}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the leader never showed the follower's progress: {j}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, out, err) = c
        .node(leader)
        .cli(&["jobs", "cancel", &paced_id.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while crate::crash::walk(&paced_dir).into_iter().next().is_some() {
        assert!(
            Instant::now() < deadline,
            "the follower left {:?}",
            crate::crash::walk(&paced_dir)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 0..3 {
        assert_eq!(
            c.node(i).get(&format!("/v1/jobs/{paced_id}")).json()["state"],
            "cancelled",
            "node {i}"
        );
    }

    let export_dir = copies_dir.path().join("export");
    let export_text = export_dir.to_string_lossy().into_owned();
    let (code, out, err) = c.node(behind).cli(&[
        "export",
        "--datasource",
        "snap",
        "--interval",
        "0/9999999999999",
        "--to",
        &export_text,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let export: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    assert_eq!(export["state"], "published", "{export}");
    assert_eq!(
        export["events"].as_i64(),
        Some(all.iter().map(|i| batches[*i].len() as i64).sum()),
        "{export}"
    );
    let export_id = export["id"].as_u64().unwrap_or_default();
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let j = c.node(i).get(&format!("/v1/jobs/{export_id}")).json();
            if j["state"] == "published" {
                assert!(
                    j["destination"]
                        .as_str()
                        .is_some_and(|d| d.contains(&export_text)),
                    "{j}"
                );
                assert_eq!(j["events"], export["events"], "node {i}: {j}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} never saw the export written: {j}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // A deletion, asked of a follower: every replica takes the merchant out of its own raw
    // log and rebuilds the same segments, switching at one log entry. It names the export.
    let mut want = expected(&batches, &all);
    let (victim, _) = want
        .iter()
        .max_by_key(|(_, v)| v.0)
        .map(|(m, v)| (m.clone(), *v))
        .unwrap_or_default();
    want.remove(&victim);
    let condition = format!("merchant_id = '{victim}'");
    let (code, out, err) =
        c.node(behind)
            .cli(&["delete", "--datasource", "snap", "--where", &condition]);
    assert_eq!(code, 0, "{out}{err}");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let deleted = expected(&batches, &all).get(&victim).map_or(0, |v| v.0);
    assert_eq!(job["events"].as_i64(), Some(deleted), "{job}");
    let copies = job["copies_before"].as_array().cloned().unwrap_or_default();
    assert!(
        copies
            .iter()
            .any(|c| c.as_str().is_some_and(|c| c.contains(&export_text))),
        "{job}"
    );
    c.converged_in("snap", &want);
    let needle = format!("\"merchant_id\":\"{victim}\"");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let files: Vec<BTreeMap<String, u32>> =
            c.dirs.iter().map(|d| segment_files(d.path())).collect();
        let holding: Vec<std::path::PathBuf> = c
            .dirs
            .iter()
            .flat_map(|d| crate::crash::walk(&d.path().join("datasources")))
            .filter(|p| p.extension().is_some_and(|e| e == "raw"))
            .filter(|p| {
                String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).contains(&needle)
            })
            .collect();
        if holding.is_empty() && files.iter().all(|f| f == &files[0]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas differ after the deletion: {holding:?} {files:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn leader_kills_lose_no_acknowledged_write() {
    let kills: usize = std::env::var("TIDEMARK_CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut c = Cluster::start();
    // One-minute segments with a one-minute late window: intervals close and persist all
    // through the run (persist decisions race the kills too), and a restart replays only the
    // last minutes of raw log instead of everything since the hour began.
    minute_datasource(&c, "chaos");
    // Batch i is generated from i and the time it was first sent, so writers never run out
    // and the check regenerates exactly what was sent.
    let first_sent = Arc::new(Mutex::new(BTreeMap::<usize, i64>::new()));
    let batch = {
        let first_sent = first_sent.clone();
        move |i: usize| {
            let ts = *first_sent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(i)
                .or_insert_with(now_ms);
            traffic(90_000 + i as u64, 25, ts - 1000, 1000, 50)
        }
    };
    let acked = Arc::new(Mutex::new(Vec::<(usize, Instant)>::new()));
    let last_refusal = Arc::new(Mutex::new(String::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let urls: Vec<String> = c
        .addrs
        .iter()
        .map(|a| format!("http://{}/v1/beacons/chaos", a.http))
        .collect();
    // A real Kafka client too: librdkafka, idempotent, acks=all, all three brokers to start from.
    let stopfile = c.dirs[0].path().join("stop-kafka-producer");
    let bootstrap = c
        .addrs
        .iter()
        .map(|a| a.kafka.clone())
        .collect::<Vec<_>>()
        .join(",");
    let kafka_producer = std::process::Command::new(crate::harness::python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/e2e/kafka_clients.py"
        ))
        .args(["produce_until", &bootstrap, "chaos"])
        .arg(&stopfile)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the Kafka producer");
    let mut writers = Vec::new();
    for w in 0..2 {
        let (acked, stop, next, urls) = (acked.clone(), stop.clone(), next.clone(), urls.clone());
        let batch = batch.clone();
        let last_refusal = last_refusal.clone();
        writers.push(std::thread::spawn(move || {
            let agent = agent(Duration::from_secs(5));
            let mut target = w;
            while !stop.load(Ordering::SeqCst) {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let body = ndjson(&batch(i));
                // The same batch and key until some node acknowledges it: a retry after a lost
                // answer must count once.
                loop {
                    let r = agent
                        .post(&urls[target % urls.len()])
                        .header("Idempotency-Key", &format!("chaos-{i}"))
                        .send(&body[..]);
                    match r {
                        Ok(resp) if resp.status() == 200 => {
                            acked
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push((i, Instant::now()));
                            break;
                        }
                        Ok(mut resp) => {
                            let body = resp.body_mut().read_to_string().unwrap_or_default();
                            *last_refusal.lock().unwrap_or_else(|p| p.into_inner()) =
                                format!("{}: {body}", resp.status());
                        }
                        Err(e) => {
                            *last_refusal.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string()
                        }
                    }
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    target += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }));
    }

    let followers_too = std::env::var_os("TIDEMARK_CHAOS_FOLLOWERS").is_some();
    let (mut follower_kills, mut follower_pauses) = (0, 0);
    let mut failovers = Vec::new();
    // What came just before each leader kill, to tell slow failovers apart.
    let mut slow: Vec<(f64, usize, &str)> = Vec::new();
    for k in 0..kills {
        let mut before_kill = "leader kill only";
        if followers_too && k % 2 == 1 {
            // A follower fault while the leader keeps leading: a kill -9 and restart, or a
            // 3 s SIGSTOP (its connections stay open and silent). Writes go on through the
            // other two nodes; the follower must catch up before the next leader kill.
            let leader = c.leader();
            let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
            let f = followers[(k / 2) % 2];
            if (k / 4) % 2 == 0 {
                c.kill(f);
                std::thread::sleep(Duration::from_millis(500));
                c.restart(f);
                follower_kills += 1;
                before_kill = "after a follower kill";
            } else {
                c.node(f).pause(true);
                std::thread::sleep(Duration::from_secs(3));
                c.node(f).pause(false);
                follower_pauses += 1;
                before_kill = "after a follower pause";
            }
            let id = f as u64 + 1;
            c.wait_for(
                Duration::from_secs(180),
                "the faulted follower caught up",
                |s| {
                    let leader_last = s["last_log_index"].as_u64().unwrap_or(0);
                    s["replication"]
                        .get(id.to_string())
                        .and_then(|v| v.as_u64())
                        .is_some_and(|m| m + 50 >= leader_last)
                },
            );
        }
        let leader = c.leader();
        let before = acked.lock().unwrap_or_else(|p| p.into_inner()).len();
        let killed_at = Instant::now();
        // Wall-clock time, to line up with the node logs and the Kafka producer's failures.
        println!(
            "chaos: kill {k}: node {} at {} ms ({before_kill})",
            leader + 1,
            now_ms()
        );
        c.kill(leader);
        // Failover: from the kill to the next acknowledged write.
        let deadline = killed_at + Duration::from_secs(30);
        let failover = loop {
            let first_after = acked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .skip(before)
                .find(|(_, t)| *t > killed_at)
                .map(|(_, t)| *t);
            if let Some(t) = first_after {
                break t.duration_since(killed_at);
            }
            assert!(
                Instant::now() < deadline,
                "kill {k}: no write acknowledged within 30 s of killing node {}; last refusal {}; status {:?}{}",
                leader + 1,
                last_refusal.lock().unwrap_or_else(|p| p.into_inner()),
                c.status(),
                c.logs_tail(40)
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        failovers.push(failover.as_secs_f64());
        slow.push((failover.as_secs_f64(), k, before_kill));
        c.restart(leader);
        // The next kill needs a quorum without the next leader: wait until the restarted node
        // is a voter that holds the log again.
        let id = leader as u64 + 1;
        // A restart rebuilds the realtime index from the raw log, which grows with the run.
        c.wait_for(
            Duration::from_secs(180),
            "the restarted node caught up",
            |s| {
                let leader_last = s["last_log_index"].as_u64().unwrap_or(0);
                s["replication"]
                    .get(id.to_string())
                    .and_then(|v| v.as_u64())
                    .is_some_and(|m| m + 50 >= leader_last)
            },
        );
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        let _ = w.join();
    }
    std::fs::write(&stopfile, b"").expect("stop file");
    let out = kafka_producer.wait_with_output().expect("Kafka producer");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "Kafka producer ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        report["undelivered"], 0,
        "every produced record is acknowledged in the end: {report}"
    );
    assert_eq!(
        report["errors"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );
    let kafka_delivered: BTreeMap<String, i64> = report["delivered"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let kafka_total: i64 = kafka_delivered.values().sum();
    assert_eq!(report["produced"].as_i64(), Some(kafka_total), "{report}");
    assert!(kafka_total > 0, "{report}");
    let acked: Vec<usize> = acked
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(i, _)| *i)
        .collect();
    assert!(
        acked.len() >= kills,
        "writers were acknowledged only {} times",
        acked.len()
    );
    let mut unique = acked.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), acked.len(), "a batch was acknowledged twice");
    // Batches in flight when the writers stopped may have been applied without an answer;
    // finish them with their keys, so the expected total is exact.
    let leader = c.leader();
    let taken = next.load(Ordering::SeqCst);
    let in_flight: Vec<usize> = (0..taken).filter(|i| !unique.contains(i)).collect();
    assert!(
        in_flight.len() <= 2,
        "only the two writers' last batches can be unanswered: {in_flight:?}"
    );
    let mut done = unique.clone();
    for &i in &in_flight {
        let r = c.node(leader).post(
            "/v1/beacons/chaos",
            &ndjson(&batch(i)),
            &[("Idempotency-Key", &format!("chaos-{i}"))],
        );
        if r.status == 200 {
            done.push(i);
        }
    }
    let generated: Vec<Vec<Beacon>> = (0..taken).map(batch).collect();
    let mut want = expected(&generated, &done);
    for (m, n) in &kafka_delivered {
        want.insert(m.clone(), (*n, (*n * 100) as f64));
    }
    c.converged_in("chaos", &want);

    failovers.sort_by(f64::total_cmp);
    slow.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!(
        "chaos: {follower_kills} follower kills and {follower_pauses} follower pauses besides"
    );
    for (secs, k, what) in slow.iter().take(3) {
        println!(
            "chaos: slowest failovers: kill {k} ({what}) {:.0} ms",
            secs * 1000.0
        );
    }
    println!(
        "chaos: {kills} leader kills, {} HTTP batches ({} events) and {kafka_total} Kafka records acknowledged, each counted once on all 3 nodes; failover p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        acked.len(),
        acked.len() * 50,
        percentile(&failovers, 0.5) * 1000.0,
        percentile(&failovers, 0.99) * 1000.0,
        failovers.last().copied().unwrap_or(f64::NAN) * 1000.0
    );
}

/// Flips one byte of `path` at `at`, as a failing disk or a stray write would.
fn flip_byte(path: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for damage");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read the byte");
    b[0] ^= 0x20;
    f.write_all_at(&b, at).expect("write the byte");
    f.sync_all().expect("sync");
}

/// The first raw log file of partition `p` of datasource directory `ds` (as `ds9`).
fn first_raw_file(dir: &std::path::Path, ds: &str, p: u32) -> std::path::PathBuf {
    let raw = dir
        .join("datasources")
        .join(ds)
        .join("raw")
        .join(p.to_string());
    let mut files: Vec<_> = std::fs::read_dir(&raw)
        .expect("raw dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "raw"))
        .collect();
    files.sort();
    files.into_iter().next().expect("a raw log file")
}

#[test]
fn the_scrubber_finds_damaged_files_and_repairs_them_from_a_replica() {
    // A pass every 300 ms, so the test does not wait on the hourly default.
    let mut c = Cluster::start_with(&["--scrub-interval-ms", "300"]);
    let leader = c.leader();
    let follower = (leader + 1) % 3;
    let witness = (leader + 2) % 3;
    minute_datasource(&c, "scrub");
    // Events 5 to 30 minutes old: their minutes are closed, so segments are written.
    let start = now_ms() - 30 * 60_000;
    let batches: Vec<Vec<Beacon>> = (0..40)
        .map(|i| traffic(7700 + i, 12, start, 25 * 60_000, 40))
        .collect();
    for (i, b) in batches.iter().enumerate() {
        let r = c.node(leader).post(
            "/v1/beacons/scrub",
            &ndjson(b),
            &[("Idempotency-Key", &format!("scrub-{i}"))],
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let want = expected(&batches, &(0..batches.len()).collect::<Vec<_>>());
    c.converged_in("scrub", &want);
    let dirs: Vec<std::path::PathBuf> = c.dirs.iter().map(|d| d.path().to_path_buf()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let segments = loop {
        let all: Vec<BTreeMap<String, u32>> = dirs.iter().map(|d| segment_files(d)).collect();
        if all[0].len() >= 3 && all.iter().all(|s| s == &all[0]) {
            break all[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "segments never agreed on all nodes: {all:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let seg_names: Vec<&String> = segments.keys().collect();
    let root = |i: usize| dirs[i].join("datasources");

    // Damage: one segment on a follower; one segment and one raw log file on the leader.
    // Byte 64 is the first column's first buffer (after the 16-byte header, aligned to 64);
    // byte 30 of a raw log file is inside the first entry's frame.
    let follower_seg = root(follower).join(seg_names[0]);
    let leader_seg = root(leader).join(seg_names[1]);
    let ds_dir = seg_names[0]
        .split('/')
        .next()
        .expect("a datasource directory");
    let leader_raw = first_raw_file(&dirs[leader], ds_dir, 0);
    let found_before: Vec<u64> = (0..3)
        .map(|i| metric(c.node(i), "tidemark_scrub_damaged_found_total"))
        .collect();
    assert_eq!(
        found_before,
        vec![0, 0, 0],
        "whole files are not reported damaged"
    );
    flip_byte(&follower_seg, 64);
    flip_byte(&leader_seg, 64);
    flip_byte(&leader_raw, 30);

    // Found and repaired on both nodes; the damaged leader handed leadership over.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = [
            metric(c.node(follower), "tidemark_scrub_damaged_found_total"),
            metric(c.node(leader), "tidemark_scrub_damaged_found_total"),
        ];
        let repaired = [
            metric(c.node(follower), "tidemark_scrub_repaired_total"),
            metric(c.node(leader), "tidemark_scrub_repaired_total"),
        ];
        let damaged_now = [
            metric(c.node(follower), "tidemark_scrub_damaged_files"),
            metric(c.node(leader), "tidemark_scrub_damaged_files"),
        ];
        if found[0] >= 1
            && found[1] >= 2
            && repaired[0] >= 1
            && repaired[1] >= 2
            && damaged_now == [0, 0]
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "damage not found and repaired within 60 s: found {found:?}, repaired {repaired:?}, still damaged {damaged_now:?}{}",
            c.logs_tail(20)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // (Which node leads afterwards depends on timing: the transfer target may have been the
    // damaged follower, which then hands over in turn; once both are repaired either may lead.)
    assert!(
        metric(c.node(leader), "tidemark_scrub_leader_handovers_total") >= 1,
        "the leader that found damaged data handed leadership over"
    );
    c.leader();
    assert_eq!(
        metric(c.node(witness), "tidemark_scrub_damaged_found_total"),
        0,
        "the untouched node found nothing"
    );

    // The repaired files are byte for byte the replicas' again, and queries on every node
    // (served from the repaired segments) give the exact answers.
    assert_eq!(
        segment_files(&dirs[follower]),
        segments,
        "the follower's segments match the replicas' again"
    );
    assert_eq!(
        segment_files(&dirs[leader]),
        segments,
        "the old leader's segments match the replicas' again"
    );
    let raw_rel = leader_raw
        .strip_prefix(&dirs[leader])
        .expect("under the data dir");
    let repaired_raw = std::fs::read(&leader_raw).expect("repaired raw file");
    let witness_raw = std::fs::read(dirs[witness].join(raw_rel)).expect("the witness's raw file");
    assert!(
        witness_raw.starts_with(&repaired_raw) && repaired_raw.len() > 30,
        "the repaired raw log file holds the replica's bytes ({} and {} bytes)",
        repaired_raw.len(),
        witness_raw.len()
    );
    c.converged_in("scrub", &want);
    // The repaired node still takes writes through whoever leads now.
    let extra = traffic(7799, 12, start, 25 * 60_000, 40);
    let r = c.node(leader).post(
        "/v1/beacons/scrub",
        &ndjson(&extra),
        &[("Idempotency-Key", "scrub-extra")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let mut sent = batches.clone();
    sent.push(extra);
    let want = expected(&sent, &(0..sent.len()).collect::<Vec<_>>());
    c.converged_in("scrub", &want);

    // A segment damaged while its node is down: the node still starts (a damaged segment
    // used to stop it at start-up), and repairs it from a replica at once, not at the next
    // pass.
    c.kill(witness);
    flip_byte(&root(witness).join(seg_names[2]), 64);
    c.restart(witness);
    c.node(witness).wait_healthy();
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(c.node(witness), "tidemark_scrub_repaired_total") < 1
        || metric(c.node(witness), "tidemark_scrub_damaged_files") != 0
    {
        assert!(
            Instant::now() < deadline,
            "the restarted node never repaired its segment{}",
            c.logs_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all: Vec<BTreeMap<String, u32>> = dirs.iter().map(|d| segment_files(d)).collect();
        if all.iter().all(|s| s == &all[0]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted node's segments differ from the replicas': {all:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.converged_in("scrub", &want);
}

#[test]
fn spooled_beacons_drain_under_their_publishers_rights() {
    let c = Cluster::start_with(&["--test-faults"]);
    let old = c.leader();
    let majority = [(old + 1) % 3, (old + 2) % 3];
    let (code, out, err) = c
        .node(old)
        .cli(&["keys", "create", "--name", "root", "--role", "admin"]);
    assert_eq!(code, 0, "{err}");
    let admin = format!("Bearer {}", out.trim());
    let as_admin = |i: usize, path: &str, body: &serde_json::Value| {
        let r = c.node(i).post(
            path,
            body.to_string().as_bytes(),
            &[("Authorization", &admin)],
        );
        (r.status, r.json())
    };
    let spec = serde_json::json!({
        "name": "spooled",
        "timestamp": {"field": "ts"},
        "granularity": {"query": "PT1M", "segment": "PT1H"},
        "dimensions": ["merchant_id", "page", "country"],
        "metrics": [{"name": "count", "type": "count"}],
        "tenant": "merchant_id",
    });
    let (status, v) = as_admin(old, "/v1/datasources", &spec);
    assert_eq!(status, 201, "{v}");
    let publisher = serde_json::json!({"name": "app", "role": "publisher", "publish": {"spooled": ["merchant_id", "page"]}});
    let (status, key) = as_admin(old, "/v1/keys", &publisher);
    assert_eq!(status, 201, "{key}");
    let (app_id, app) = (
        key["id"].as_str().unwrap_or_default().to_string(),
        format!("Bearer {}", key["token"].as_str().unwrap_or_default()),
    );
    // Every node knows both keys before the leader is cut off.
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while c
            .node(i)
            .get_with("/v1/cluster", &[("Authorization", &app)])
            .status
            == 401
        {
            assert!(
                Instant::now() < deadline,
                "node {} never learned the key",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // The leader is cut off from the other two, which elect a new one.
    let faults = |i: usize, ids: &[usize]| {
        let ids: Vec<u64> = ids.iter().map(|j| *j as u64 + 1).collect();
        let (status, v) = as_admin(
            i,
            "/v1/test/faults",
            &serde_json::json!({ "unreachable": ids }),
        );
        assert_eq!(status, 200, "{v}");
    };
    faults(old, &majority);
    for &m in &majority {
        faults(m, &[old]);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c
            .node(majority[0])
            .get_with("/v1/cluster", &[("Authorization", &admin)])
            .json();
        if s["leader"].as_u64().is_some_and(|l| l != old as u64 + 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the majority elected no leader: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The publisher's beacons reach the cut-off node, which spools them; one carries a tag
    // outside the key's grant.
    let ts = now_ms() - 60_000;
    let lines = [
        serde_json::json!({"ts": ts, "merchant_id": "m1", "page": "/a"}),
        serde_json::json!({"ts": ts, "merchant_id": "m1", "page": "/b"}),
        serde_json::json!({"ts": ts, "merchant_id": "m2", "page": "/a"}),
        serde_json::json!({"ts": ts, "merchant_id": "m2", "country": "DE"}),
    ];
    let body: Vec<String> = lines.iter().map(ToString::to_string).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let headers = [
            ("Authorization", app.as_str()),
            ("Idempotency-Key", "spooled-1"),
        ];
        if let Ok(r) =
            c.node(old)
                .try_post("/v1/beacons/spooled", body.join("\n").as_bytes(), &headers)
            && r.status == 202
        {
            assert_eq!(r.json()["spooled"], true, "{}", r.body);
            break;
        }
        assert!(Instant::now() < deadline, "the cut-off node never spooled");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Healed, the node drains its spool to the new leader under the publisher's rights: three
    // beacons count, the fourth is refused for its tag, naming the key, in sys.rejects.
    for i in 0..3 {
        faults(i, &[]);
    }
    let sql = |q: &str| {
        let r = c.node(majority[0]).post(
            "/v1/sql",
            q.as_bytes(),
            &[("Authorization", &admin), ("Content-Type", "text/plain")],
        );
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        r.json()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while sql("SELECT COALESCE(SUM(\"count\"), 0) AS n FROM spooled")[0]["n"] != 3 {
        assert!(
            Instant::now() < deadline,
            "the spool never drained:\n{}",
            c.node(old).log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let rejects = sql("SELECT code, reason FROM sys.rejects WHERE datasource = 'spooled'");
    assert_eq!(rejects.as_array().map_or(0, Vec::len), 1, "{rejects}");
    assert_eq!(rejects[0]["code"], 10, "{rejects}");
    let reason = rejects[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("API key {app_id} may not publish tag \"country\"")),
        "{reason}"
    );
}
