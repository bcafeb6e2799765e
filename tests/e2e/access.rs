//! API keys and roles against the real binary: the first key turns authentication on, every
//! role is tried against every HTTP door and Flight SQL (through ADBC), changes land in
//! `sys.audit` with their actor, revocation works at once, keys survive a restart, and a node
//! without keys refuses to listen off loopback.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{TestNode, python, tidemark_bin};
use crate::{ndjson, now_ms, traffic};

const NEEDS_KEY: &str = "this node requires an API key: send `Authorization: Bearer tmk_…` (create keys with `tidemark keys create`)";

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// One HTTP call as `token` (none: anonymous): status and JSON body (`null` if not JSON).
fn call(
    node: &TestNode,
    method: &str,
    path: &str,
    body: &[u8],
    token: Option<&str>,
) -> (u16, Value) {
    let url = format!("http://{}{path}", node.http);
    let auth = token.map(|t| format!("Bearer {t}"));
    let a = agent();
    let result = match method {
        "GET" => {
            let mut r = a.get(&url);
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.call()
        }
        "DELETE" => {
            let mut r = a.delete(&url);
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.call()
        }
        _ => {
            let mut r = if method == "PUT" {
                a.put(&url)
            } else {
                a.post(&url)
            };
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.send(body)
        }
    };
    let mut resp = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn spec(name: &str) -> String {
    json!({
        "name": name,
        "timestamp": {"field": "ts"},
        "granularity": {"query": "PT1M", "segment": "PT1H"},
        "dimensions": ["m"],
        "metrics": [{"name": "count", "type": "count"}],
    })
    .to_string()
}

fn metric(node: &TestNode, token: &str, name: &str) -> f64 {
    let url = format!("http://{}/metrics", node.http);
    let mut resp = agent()
        .get(&url)
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .expect("metrics");
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    crate::harness::metric_value(&text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn keys_and_roles_guard_every_door_and_changes_are_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = TestNode::start(dir.path());

    // No keys yet: the node is open (it listens on loopback only).
    assert_eq!(call(&node, "GET", "/v1/datasources", b"", None).0, 200);
    // The first admin key, from the CLI, without a key.
    let (code, out, err) = node.cli(&["keys", "create", "--name", "root", "--role", "admin"]);
    assert_eq!(code, 0, "{err}");
    let admin = out.trim().to_string();
    let admin_id = admin.get(4..16).unwrap_or_default().to_string();
    assert!(
        admin.starts_with("tmk_") && admin.len() == 4 + 12 + 1 + 64,
        "{admin}"
    );

    // From now on every door but /health needs a key.
    let (status, body) = call(&node, "GET", "/v1/datasources", b"", None);
    assert_eq!((status, body["error"].as_str()), (401, Some(NEEDS_KEY)));
    assert_eq!(call(&node, "GET", "/health", b"", None).0, 200);
    let (code, _, err) = node.cli(&["keys", "list"]);
    assert_ne!(code, 0);
    assert!(err.contains(&format!("HTTP 401: {NEEDS_KEY}")), "{err}");
    let mut http_401s = 2;

    let mut tokens: BTreeMap<&str, String> = BTreeMap::new();
    let mut ids: BTreeMap<&str, String> = BTreeMap::new();
    tokens.insert("admin", admin.clone());
    ids.insert("admin", admin_id.clone());
    for role in [
        "governance_editor",
        "publisher",
        "analyst",
        "merchant_reader",
    ] {
        let mut body = json!({"name": role, "role": role});
        if role == "merchant_reader" {
            body["tenants"] = json!(["m1"]);
        }
        let (status, v) = call(
            &node,
            "POST",
            "/v1/keys",
            body.to_string().as_bytes(),
            Some(&admin),
        );
        assert_eq!(status, 201, "{v}");
        assert_eq!(v["role"], role);
        assert!(v.get("secret_sha256").is_none(), "{v}");
        tokens.insert(role, v["token"].as_str().unwrap_or_default().to_string());
        ids.insert(role, v["id"].as_str().unwrap_or_default().to_string());
    }
    // A merchant reader needs its tenants; other roles may not have any.
    let (status, v) = call(
        &node,
        "POST",
        "/v1/keys",
        br#"{"name":"m1","role":"merchant_reader"}"#,
        Some(&admin),
    );
    assert_eq!(status, 400);
    let e = v["error"].as_str().unwrap_or_default();
    assert!(
        e.contains("tenants: a merchant_reader key needs at least one tenant"),
        "{v}"
    );
    let (status, v) = call(
        &node,
        "POST",
        "/v1/keys",
        br#"{"name":"a","role":"analyst","tenants":["m1"]}"#,
        Some(&admin),
    );
    assert_eq!(status, 400);
    let e = v["error"].as_str().unwrap_or_default();
    assert!(
        e.contains("tenants: only merchant_reader keys are scoped to tenants"),
        "{v}"
    );

    // The role x door matrix. Allowed calls must not be refused (and are 2xx where they can
    // be); refused ones are 401 for bad credentials and 403 naming the role otherwise.
    let wrong = format!("tmk_{}_{}", admin_id, "0".repeat(64));
    let callers: Vec<(&str, Option<String>)> = vec![
        ("anonymous", None),
        ("wrong_secret", Some(wrong)),
        ("admin", Some(admin.clone())),
        (
            "governance_editor",
            tokens.get("governance_editor").cloned(),
        ),
        ("publisher", tokens.get("publisher").cloned()),
        ("analyst", tokens.get("analyst").cloned()),
        ("merchant_reader", tokens.get("merchant_reader").cloned()),
    ];
    let beacons = ndjson(&traffic(5, 3, now_ms() - 60_000, 30_000, 4));
    type Door<'a> = (&'a str, &'a str, String, Vec<u8>, &'a [&'a str], bool);
    let doors = |who: &str| -> Vec<Door<'_>> {
        vec![
            (
                "publish",
                "POST",
                "/v1/beacons/beacons".into(),
                beacons.clone(),
                &["admin", "publisher"],
                true,
            ),
            (
                "sql",
                "POST",
                "/v1/sql".into(),
                b"SELECT 1 AS one".to_vec(),
                &["admin", "analyst", "merchant_reader"],
                true,
            ),
            (
                "list datasources",
                "GET",
                "/v1/datasources".into(),
                vec![],
                &["admin", "governance_editor", "analyst"],
                true,
            ),
            (
                "create datasource",
                "POST",
                "/v1/datasources".into(),
                spec(&format!("ds_{who}")).into_bytes(),
                &["admin"],
                true,
            ),
            (
                "create domain",
                "POST",
                "/v1/governance/domains".into(),
                json!({"name": format!("dom_{who}")})
                    .to_string()
                    .into_bytes(),
                &["admin", "governance_editor"],
                true,
            ),
            (
                "suggest",
                "GET",
                "/v1/governance/suggest?tag=acct".into(),
                vec![],
                &["admin", "governance_editor", "publisher", "analyst"],
                true,
            ),
            (
                "list keys",
                "GET",
                "/v1/keys".into(),
                vec![],
                &["admin"],
                true,
            ),
            (
                "metrics",
                "GET",
                "/metrics".into(),
                vec![],
                &["admin", "analyst"],
                false,
            ),
            (
                "cluster status",
                "GET",
                "/v1/cluster".into(),
                vec![],
                &["admin", "analyst"],
                true,
            ),
            (
                "transfer leader",
                "POST",
                "/v1/cluster/transfer-leader".into(),
                br#"{"node_id":7}"#.to_vec(),
                &["admin"],
                false,
            ),
            (
                "read index",
                "GET",
                "/v1/cluster/read-index".into(),
                vec![],
                &["admin"],
                true,
            ),
        ]
    };
    for (who, token) in &callers {
        for (door, method, path, body, allowed, must_succeed) in doors(who) {
            let (status, v) = call(&node, method, &path, &body, token.as_deref());
            let what = format!("{who} -> {door} ({method} {path}): {status} {v}");
            if allowed.contains(who) {
                assert!(status != 401 && status != 403, "{what}");
                if must_succeed {
                    assert!((200..300).contains(&status), "{what}");
                }
            } else if token.is_none() {
                assert_eq!(
                    (status, v["error"].as_str()),
                    (401, Some(NEEDS_KEY)),
                    "{what}"
                );
                http_401s += 1;
            } else if *who == "wrong_secret" {
                let expected = format!("the secret of API key {admin_id} is wrong");
                assert_eq!(
                    (status, v["error"].as_str()),
                    (401, Some(expected.as_str())),
                    "{what}"
                );
                http_401s += 1;
            } else {
                assert_eq!(status, 403, "{what}");
                let e = v["error"].as_str().unwrap_or_default();
                let prefix = format!("API key {} (role {who}) may not ", ids[who]);
                assert!(
                    e.starts_with(&prefix) && e.contains("; that needs role admin"),
                    "{what}"
                );
            }
        }
    }
    // A copy's entry names the user its node authenticated: no key may write one, and so
    // no key may put another user's name in the audit log.
    let forged = json!({"op": "abandon", "job": 1, "actor": "someone else"}).to_string();
    let (status, v) = call(
        &node,
        "POST",
        "/v1/jobs/copies",
        forged.as_bytes(),
        Some(&admin),
    );
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("node-to-node route")),
        "{v}"
    );
    let analyst = tokens["analyst"].clone();
    let (status, v) = call(
        &node,
        "POST",
        "/v1/sql",
        b"SELECT 1 AS one",
        Some(&tokens["publisher"]),
    );
    assert_eq!(status, 403);
    assert_eq!(
        v["error"].as_str(),
        Some(
            format!(
                "API key {} (role publisher) may not run queries; that needs role admin, analyst or merchant_reader",
                ids["publisher"]
            )
            .as_str()
        )
    );

    // A tag changed twice by the governance editor: the audit log has both, before and after.
    let ge = tokens["governance_editor"].clone();
    let tag = |description: &str| {
        json!({"name": "store", "kind": "dimension", "type": "string", "description": description})
            .to_string()
    };
    for d in ["first", "second"] {
        let (status, v) = call(
            &node,
            "PUT",
            "/v1/governance/domains/dom_admin/tags/store",
            tag(d).as_bytes(),
            Some(&ge),
        );
        assert!((200..300).contains(&status), "{status} {v}");
    }

    // sys.audit: who did what, in log order, exactly.
    let (status, rows) = call(
        &node,
        "POST",
        "/v1/sql",
        b"SELECT actor, op, object FROM sys.audit ORDER BY log_position",
        Some(&analyst),
    );
    assert_eq!(status, 200, "{rows}");
    let got: Vec<(String, String, String)> = rows
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (s("actor"), s("op"), s("object"))
        })
        .collect();
    let key = |role: &str| format!("key:{}", ids[role]);
    let row = |a: &str, op: &str, o: &str| (a.to_string(), op.to_string(), o.to_string());
    let expected = vec![
        row("system", "create_datasource", "datasource:beacons"),
        row("anonymous", "create_key", &key("admin")),
        row(&key("admin"), "create_key", &key("governance_editor")),
        row(&key("admin"), "create_key", &key("publisher")),
        row(&key("admin"), "create_key", &key("analyst")),
        row(&key("admin"), "create_key", &key("merchant_reader")),
        row(&key("admin"), "create_datasource", "datasource:ds_admin"),
        row(&key("admin"), "create_domain", "domain:dom_admin"),
        row(
            &key("governance_editor"),
            "create_domain",
            "domain:dom_governance_editor",
        ),
        row(&key("governance_editor"), "put_tag", "tag:dom_admin/store"),
        row(&key("governance_editor"), "put_tag", "tag:dom_admin/store"),
    ];
    assert_eq!(got, expected);
    let (_, rows) = call(
        &node,
        "POST",
        "/v1/sql",
        b"SELECT before, after FROM sys.audit WHERE op IN ('put_tag', 'create_key') ORDER BY log_position",
        Some(&analyst),
    );
    let rows = rows.as_array().cloned().unwrap_or_default();
    let parse = |v: &Value| {
        v.as_str()
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
            .unwrap_or(Value::Null)
    };
    let (first_put, second_put) = (&rows[rows.len() - 2], &rows[rows.len() - 1]);
    assert_eq!(first_put["before"], Value::Null);
    assert_eq!(parse(&first_put["after"])["description"], "first");
    assert_eq!(parse(&second_put["before"])["description"], "first");
    assert_eq!(parse(&second_put["after"])["description"], "second");
    assert!(
        rows.iter()
            .all(|r| !r.to_string().contains("secret_sha256")),
        "no digest in the audit log: {rows:?}"
    );

    // Flight SQL through ADBC: bearer and basic credentials, a role without queries, no key.
    let failures_before = metric(&node, &admin, "tidemark_auth_failures_total");
    assert_eq!(failures_before, http_401s as f64);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/adbc_auth.py");
    let out = Command::new(python())
        .arg(script)
        .arg(format!("grpc://{}", node.flight))
        .arg(&analyst)
        .arg(&tokens["publisher"])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let audit_rows = expected.len() as i64;
    assert_eq!(v["bearer_analyst"]["ok"], audit_rows, "{v}");
    assert_eq!(v["basic_analyst"]["ok"], audit_rows, "{v}");
    let error = |case: &str| v[case]["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error("bearer_publisher")
            .contains("may not run queries; that needs role admin, analyst or merchant_reader"),
        "{v}"
    );
    assert!(
        error("no_key").contains("this node requires an API key"),
        "{v}"
    );
    assert!(
        error("wrong_key").contains("API key 000000000000 does not exist on this node"),
        "{v}"
    );
    assert!(metric(&node, &admin, "tidemark_auth_failures_total") > failures_before);

    // Revocation takes effect at once; the last admin key cannot go.
    let (status, v) = call(
        &node,
        "DELETE",
        &format!("/v1/keys/{}", ids["publisher"]),
        b"",
        Some(&admin),
    );
    assert_eq!((status, v["revoked"].as_bool()), (200, Some(true)), "{v}");
    let (status, v) = call(
        &node,
        "POST",
        "/v1/beacons/beacons",
        &beacons,
        Some(&tokens["publisher"]),
    );
    let revoked = format!("API key {} was revoked", ids["publisher"]);
    assert_eq!((status, v["error"].as_str()), (401, Some(revoked.as_str())));
    let (status, v) = call(
        &node,
        "DELETE",
        &format!("/v1/keys/{admin_id}"),
        b"",
        Some(&admin),
    );
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("is the last admin key")),
        "{v}"
    );

    // Keys and the audit log survive a restart.
    node.stop();
    let node = TestNode::start(dir.path());
    assert_eq!(
        call(&node, "POST", "/v1/sql", b"SELECT 1 AS one", None).0,
        401
    );
    let (status, rows) = call(
        &node,
        "POST",
        "/v1/sql",
        b"SELECT COUNT(*) AS n FROM sys.audit",
        Some(&analyst),
    );
    assert_eq!(
        (status, rows[0]["n"].as_i64()),
        (200, Some(audit_rows + 1)),
        "{rows}"
    );
    let (status, _) = call(
        &node,
        "POST",
        "/v1/beacons/beacons",
        &beacons,
        Some(&tokens["publisher"]),
    );
    assert_eq!(status, 401);
}

#[test]
fn a_node_without_keys_refuses_to_listen_off_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(tidemark_bin())
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args([
            "--http-addr",
            "0.0.0.0:0",
            "--flight-addr",
            "127.0.0.1:0",
            "--kafka-addr",
            "127.0.0.1:0",
        ])
        .args(["--raft-addr", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tidemark");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tidemark kept running on 0.0.0.0 without keys");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(!status.success());
    assert!(
        err.contains("http_addr 0.0.0.0:")
            && err.contains("is not a loopback address, and this node has no API keys"),
        "{err}"
    );
}
