//! Publisher keys with rights to some datasources and tags, against the real binary: a
//! datasource outside the key's grants is refused whole (403), a tag outside them rejects its
//! line with a reason that names the key and the tag, kept in `sys.rejects` with code 10.

use serde_json::{Value, json};

use crate::harness::TestNode;
use crate::now_ms;

fn post(node: &TestNode, path: &str, token: &str, body: &[u8]) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let r = node.post(
        path,
        body,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
    );
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

fn spec(name: &str) -> Value {
    json!({
        "name": name,
        "timestamp": {"field": "ts"},
        "granularity": {"query": "PT1M", "segment": "PT1H"},
        "dimensions": ["merchant_id", "page", "country"],
        "metrics": [{"name": "count", "type": "count"}],
        "tenant": "merchant_id",
    })
}

#[test]
fn a_publisher_key_publishes_only_its_datasources_and_tags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    let (code, out, err) = node.cli(&["keys", "create", "--name", "root", "--role", "admin"]);
    assert_eq!(code, 0, "{err}");
    let admin = out.trim().to_string();
    for ds in ["shop", "other"] {
        let (status, v) = post(
            &node,
            "/v1/datasources",
            &admin,
            spec(ds).to_string().as_bytes(),
        );
        assert!(status == 200 || status == 201, "{v}");
    }

    // From the CLI: `shop` with two tags; a second key with every tag of `shop`.
    let cli = |args: &[&str]| {
        let mut full = vec!["keys", "create", "--json"];
        full.extend_from_slice(args);
        let out = std::process::Command::new(crate::harness::tidemark_bin())
            .args(&full)
            .args(["--url", &format!("http://{}", node.http)])
            .env("TIDEMARK_TOKEN", &admin)
            .output()
            .expect("run tidemark");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        (
            v["id"].as_str().unwrap_or_default().to_string(),
            v["token"].as_str().unwrap_or_default().to_string(),
            v,
        )
    };
    let (app_id, app, shown) = cli(&[
        "--name",
        "shop app",
        "--role",
        "publisher",
        "--publish",
        "shop=merchant_id,page",
    ]);
    assert_eq!(
        shown["publish"],
        json!({"shop": ["merchant_id", "page"]}),
        "{shown}"
    );
    let (_, wide, _) = cli(&[
        "--name",
        "shop tool",
        "--role",
        "publisher",
        "--publish",
        "shop",
    ]);

    // A datasource outside the grants: refused whole, nothing stored.
    let ts = now_ms() - 60_000;
    let line = |extra: Value| {
        let mut b = json!({"ts": ts, "merchant_id": "m1", "page": "/"});
        if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        b.to_string()
    };
    let (status, v) = post(&node, "/v1/beacons/other", &app, line(json!({})).as_bytes());
    assert_eq!(status, 403, "{v}");
    assert_eq!(
        v["error"],
        format!("API key {app_id} may not publish to datasource \"other\"; it may publish to shop")
    );

    // A tag outside the grants rejects its line; the others go in.
    let body = [
        line(json!({})),
        line(json!({"country": "FR"})),
        line(json!({"page": "/x"})),
    ]
    .join("\n");
    let (status, v) = post(&node, "/v1/beacons/shop", &app, body.as_bytes());
    assert_eq!(status, 200, "{v}");
    let reason = format!(
        "API key {app_id} may not publish tag \"country\" to \"shop\"; ask an admin for a key with that right"
    );
    assert_eq!(v["accepted"], 2, "{v}");
    assert_eq!(
        v["rejected"],
        json!([{"index": 1, "reason": reason}]),
        "{v}"
    );
    // The wider key may send every tag of shop, and still nothing to `other`.
    let (status, v) = post(
        &node,
        "/v1/beacons/shop",
        &wide,
        line(json!({"country": "DE"})).as_bytes(),
    );
    assert_eq!((status, v["accepted"].as_i64()), (200, Some(1)), "{v}");
    assert_eq!(
        post(
            &node,
            "/v1/beacons/other",
            &wide,
            line(json!({})).as_bytes()
        )
        .0,
        403
    );

    let auth = format!("Bearer {admin}");
    let r = node.post(
        "/v1/sql",
        b"SELECT code, reason FROM sys.rejects WHERE datasource = 'shop'",
        &[("Authorization", &auth)],
    );
    assert_eq!(
        r.json(),
        json!([{"code": 10, "reason": reason}]),
        "{}",
        r.body
    );
    let r = node.post(
        "/v1/sql",
        b"SELECT SUM(\"count\") AS n FROM shop",
        &[("Authorization", &auth)],
    );
    assert_eq!(r.json(), json!([{"n": 3}]));

    // Grants belong to publisher keys only, and name real grants.
    let (status, v) = post(
        &node,
        "/v1/keys",
        &admin,
        json!({"name": "x", "role": "analyst", "publish": {"shop": "*"}})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("publish: only publisher keys carry publish grants")
    );
    let (status, v) = post(
        &node,
        "/v1/keys",
        &admin,
        json!({"name": "x", "role": "publisher", "publish": {"shop": "all"}})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("publish.shop: \"all\" is not a grant"),
        "{v}"
    );
}

#[test]
fn kafka_clients_log_in_with_api_keys_and_keep_to_their_grants() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    let (code, out, err) = node.cli(&["keys", "create", "--name", "root", "--role", "admin"]);
    assert_eq!(code, 0, "{err}");
    let admin = out.trim().to_string();
    for ds in ["shop", "other"] {
        let (status, v) = post(
            &node,
            "/v1/datasources",
            &admin,
            spec(ds).to_string().as_bytes(),
        );
        assert!(status == 200 || status == 201, "{v}");
    }
    let key = |body: Value| {
        let (status, v) = post(&node, "/v1/keys", &admin, body.to_string().as_bytes());
        assert_eq!(status, 201, "{v}");
        (
            v["id"].as_str().unwrap_or_default().to_string(),
            v["token"].as_str().unwrap_or_default().to_string(),
        )
    };
    let (pub_id, publisher) = key(
        json!({"name": "pos", "role": "publisher", "publish": {"shop": ["merchant_id", "page"]}}),
    );
    let (analyst_id, analyst) = key(json!({"name": "bi", "role": "analyst"}));
    let (merchant_id, merchant) =
        key(json!({"name": "m1", "role": "merchant_reader", "tenants": ["m1"]}));

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/kafka_sasl.py");
    let out = std::process::Command::new(crate::harness::python())
        .arg(script)
        .args([
            &node.kafka,
            &pub_id,
            &publisher,
            &analyst_id,
            &analyst,
            &merchant_id,
            &merchant,
        ])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{stdout}\n{stderr}\nnode log:\n{}",
        node.log_text()
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));

    // SCRAM-SHA-256 (librdkafka): both records are acknowledged; the one with a tag outside
    // the grant is rejected at apply (the datasource's policy skips bad records).
    assert_eq!(v["scram_shop"], json!([null, null]), "{v:#}");
    let other = v["scram_other"][0]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(other.contains("authorization"), "{v:#}");
    // PLAIN (kafka-python) on loopback.
    assert_eq!(v["plain_shop"], json!([null]), "{v:#}");
    for case in ["wrong_password", "plain_wrong_key", "no_login"] {
        assert!(v[case].is_string(), "{case} must fail: {v:#}");
    }
    // An analyst key reads the raw stream back: all three records, as produced.
    let pages: Vec<&str> = v["consumed"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["page"].as_str())
        .collect();
    assert_eq!(pages.len(), 3, "{v:#}");
    assert!(pages.contains(&"/plain"), "{v:#}");
    // A merchant reader's key logs in, but Kafka names no datasource to it.
    assert!(
        v["merchant_metadata"]["error"].is_string(),
        "a merchant key listed topics: {v:#}"
    );

    let auth = format!("Bearer {admin}");
    let r = node.post(
        "/v1/sql",
        b"SELECT code, reason FROM sys.rejects WHERE datasource = 'shop'",
        &[("Authorization", &auth)],
    );
    let reason = format!(
        "API key {pub_id} may not publish tag \"country\" to \"shop\"; ask an admin for a key with that right"
    );
    assert_eq!(
        r.json(),
        json!([{"code": 10, "reason": reason}]),
        "{}",
        r.body
    );
    let r = node.post(
        "/v1/sql",
        b"SELECT SUM(\"count\") AS n FROM shop",
        &[("Authorization", &auth)],
    );
    assert_eq!(r.json(), json!([{"n": 2}]));
    let log = node.log_text();
    assert!(
        log.contains("kafka SASL login refused"),
        "failed logins are logged"
    );
    assert!(
        log.contains(&format!("the secret of API key {pub_id} is wrong")),
        "the SCRAM proof was checked"
    );
    assert!(
        log.contains("API key 000000000000 does not exist on this node"),
        "the PLAIN key was checked"
    );
    assert!(
        log.contains(&format!(
            "Metadata refused: API key {merchant_id} (role merchant_reader) may not publish events"
        )),
        "the merchant key's Metadata request was refused by role"
    );
}

/// An `Idempotency-Key` belongs to the publisher key that sent it. Another
/// publisher using the same key string on the same datasource is neither refused (422) nor
/// answered with the first publisher's batch, and each one's retries still count once, also
/// after a restart (the window is replicated state, replayed from the log).
#[test]
fn each_publishers_idempotency_keys_are_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = TestNode::start(dir.path());
    let (code, out, err) = node.cli(&["keys", "create", "--name", "root", "--role", "admin"]);
    assert_eq!(code, 0, "{err}");
    let admin = out.trim().to_string();
    let (status, v) = post(
        &node,
        "/v1/datasources",
        &admin,
        spec("shop").to_string().as_bytes(),
    );
    assert!(status == 200 || status == 201, "{v}");
    let key = |name: &str| {
        let body = json!({"name": name, "role": "publisher", "publish": {"shop": "*"}});
        let (status, v) = post(&node, "/v1/keys", &admin, body.to_string().as_bytes());
        assert_eq!(status, 201, "{v}");
        v["token"].as_str().unwrap_or_default().to_string()
    };
    let (a, b) = (key("app a"), key("app b"));
    let ts = now_ms() - 60_000;
    let lines = |n: usize, merchant: &str| {
        (0..n)
            .map(|i| json!({"ts": ts + i as i64, "merchant_id": merchant}).to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (body_a, body_b) = (lines(2, "ma"), lines(3, "mb"));
    let send = |token: &str, body: &str| {
        let auth = format!("Bearer {token}");
        let r = node.post(
            "/v1/beacons/shop",
            body.as_bytes(),
            &[("Authorization", &auth), ("Idempotency-Key", "batch-1")],
        );
        (
            r.status,
            serde_json::from_str::<Value>(&r.body).unwrap_or(Value::Null),
        )
    };
    let total = |node: &TestNode| {
        let auth = format!("Bearer {admin}");
        let r = node.post(
            "/v1/sql",
            b"SELECT SUM(\"count\") AS n FROM shop",
            &[("Authorization", &auth)],
        );
        r.json()[0]["n"].as_i64().unwrap_or(-1)
    };

    let (status, first_a) = send(&a, &body_a);
    assert_eq!(
        (status, first_a["accepted"].as_i64()),
        (200, Some(2)),
        "{first_a}"
    );
    let (status, first_b) = send(&b, &body_b);
    assert_eq!(
        (status, first_b["accepted"].as_i64()),
        (200, Some(3)),
        "B's batch is B's own: {first_b}"
    );
    assert_ne!(first_b["replayed"], true, "{first_b}");
    assert_eq!(total(&node), 5);

    for (token, body, first) in [(&a, &body_a, &first_a), (&b, &body_b, &first_b)] {
        let (status, again) = send(token, body);
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["replayed"], true, "{again}");
        assert_eq!(
            again["log_position"], first["log_position"],
            "each retry gets its own original answer"
        );
    }
    assert_eq!(total(&node), 5);
    // A publisher's own key with another body is still a conflict.
    let (status, v) = send(&a, &body_b);
    assert_eq!(status, 422, "{v}");

    // After a restart (the window is in the checkpoint) the keys are still each one's own.
    assert_eq!(node.stop(), Some(0));
    node = TestNode::start(dir.path());
    for (token, body, first) in [(&a, &body_a, &first_a), (&b, &body_b, &first_b)] {
        let auth = format!("Bearer {token}");
        let r = node.post(
            "/v1/beacons/shop",
            body.as_bytes(),
            &[("Authorization", &auth), ("Idempotency-Key", "batch-1")],
        );
        let again: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        assert_eq!(
            (r.status, &again["replayed"]),
            (200, &json!(true)),
            "{again}"
        );
        assert_eq!(again["log_position"], first["log_position"]);
    }
    assert_eq!(total(&node), 5);
}
