//! A merchant-scoped key against the real binary: the adversarial SQL suite
//! (`merchant_scope.py`, through ADBC Flight SQL) must see only its merchant's rows, and the
//! HTTP SQL door applies the same scope.

use std::process::Command;

use serde_json::{Value, json};

use crate::harness::{TestNode, python};

fn create_key(node: &TestNode, token: Option<&str>, body: Value) -> String {
    let mut headers = vec![("Content-Type", "application/json".to_string())];
    if let Some(t) = token {
        headers.push(("Authorization", format!("Bearer {t}")));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = node.post("/v1/keys", body.to_string().as_bytes(), &headers);
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["token"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_merchant_key_sees_only_its_own_rows_through_every_sql_shape() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    let admin = create_key(&node, None, json!({"name": "root", "role": "admin"}));
    let auth = format!("Bearer {admin}");
    let datasources = [
        json!({
            "name": "shop",
            "timestamp": {"field": "ts"},
            "granularity": {"query": "PT1M", "segment": "PT1M"},
            "dimensions": ["merchant_id", "page", "country"],
            "metrics": [{"name": "count", "type": "count"},
                        {"name": "revenue", "type": "doubleSum", "field": "amount"},
                        {"name": "users", "type": "hll", "field": "user_id"}],
            "tenant": "merchant_id",
            "late_window": "PT1M",
        }),
        json!({
            "name": "internal",
            "timestamp": {"field": "ts"},
            "granularity": {"query": "PT1M", "segment": "PT1H"},
            "dimensions": ["team"],
            "metrics": [{"name": "count", "type": "count"}],
        }),
    ];
    for spec in datasources {
        let r = node.post(
            "/v1/datasources",
            spec.to_string().as_bytes(),
            &[("Authorization", &auth)],
        );
        assert!(r.status == 200 || r.status == 201, "{}", r.body);
    }
    let analyst = create_key(
        &node,
        Some(&admin),
        json!({"name": "bi", "role": "analyst"}),
    );
    let merchant = create_key(
        &node,
        Some(&admin),
        json!({"name": "m1 dashboard", "role": "merchant_reader", "tenants": ["m1"]}),
    );

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/merchant_scope.py");
    let out = Command::new(python())
        .arg(script)
        .arg(&node.http)
        .arg(format!("grpc://{}", node.flight))
        .args([&admin, &analyst, &merchant])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}\nnode log:\n{}", node.log_text()));
    assert_eq!(report["failures"], json!([]), "{report:#}");
    assert!(report["cases"].as_u64().unwrap_or(0) >= 30, "{report}");
    assert!(out.status.success(), "{stdout}\n{stderr}");

    // The HTTP SQL door applies the same scope.
    let bearer = format!("Bearer {merchant}");
    let r = node.post(
        "/v1/sql",
        b"SELECT DISTINCT merchant_id FROM shop",
        &[("Authorization", &bearer)],
    );
    assert_eq!(
        (r.status, r.json()),
        (200, json!([{"merchant_id": "m1"}])),
        "{}",
        r.body
    );
    let r = node.post(
        "/v1/sql",
        b"SELECT * FROM sys.audit",
        &[("Authorization", &bearer)],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("sys.audit' not found"), "{}", r.body);
    // And nothing but SQL: specs and metrics are the analyst's.
    let r = node.get_with("/v1/datasources", &[("Authorization", &bearer)]);
    assert_eq!(r.status, 403, "{}", r.body);
}
