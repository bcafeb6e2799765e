//! `tidemark datasource create|list|show|update|delete` and `/v1/datasources`, end to end.

use crate::harness::TestNode;
use crate::now_ms;

pub(crate) const SHOPS: &str = r#"{"name": "shops", "timestamp": {"field": "ts"},
  "granularity": {"query": "PT1M", "segment": "PT1H"},
  "dimensions": ["merchant_id", "page"],
  "metrics": [{"name": "count", "type": "count"}, {"name": "qty", "type": "longSum", "field": "qty"}],
  "tenant": "merchant_id", "partitions": 2}"#;

#[test]
fn datasource_lifecycle_through_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    let spec_file = dir.path().join("shops.json");
    std::fs::write(&spec_file, SHOPS).expect("write spec");
    let file = spec_file.to_string_lossy().to_string();

    let (code, out, err) = node.cli(&["datasource", "create", "--file", &file]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"shops\""), "{out}");
    let (code, _, err) = node.cli(&["datasource", "create", "--file", &file]);
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");

    // A spec error names the field.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, SHOPS.replace("\"longSum\"", "\"longsum\"")).expect("write");
    let (code, _, err) = node.cli(&["datasource", "create", "--file", &bad.to_string_lossy()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("metrics[1]") && err.contains("longsum"),
        "{err}"
    );

    let (code, out, _) = node.cli(&["datasource", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("beacons") && out.contains("shops"), "{out}");
    let (_, out, _) = node.cli(&["datasource", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json listing");
    assert_eq!(v.as_array().map(|a| a.len()), Some(2));

    let t = now_ms() - 60_000;
    let body = format!(
        "{{\"ts\": {t}, \"merchant_id\": \"a\", \"page\": \"/\", \"qty\": 2}}\n{{\"ts\": {t}, \"merchant_id\": \"b\", \"qty\": 3}}"
    );
    let r = node.post("/v1/beacons/shops", body.as_bytes(), &[]);
    assert_eq!(r.json()["accepted"], 2, "{}", r.body);

    // Update adds a dimension; rows from before read it as null.
    let updated = dir.path().join("shops2.json");
    std::fs::write(
        &updated,
        SHOPS.replace("\"page\"]", "\"page\", \"campaign\"]"),
    )
    .expect("write");
    let (code, out, err) = node.cli(&[
        "datasource",
        "update",
        "shops",
        "--file",
        &updated.to_string_lossy(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let body =
        format!("{{\"ts\": {t}, \"merchant_id\": \"a\", \"campaign\": \"spring\", \"qty\": 5}}");
    assert_eq!(
        node.post("/v1/beacons/shops", body.as_bytes(), &[]).status,
        200
    );
    let rows = node.sql(
        "SELECT campaign, SUM(qty) AS q FROM shops GROUP BY campaign ORDER BY campaign NULLS FIRST",
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[0]["campaign"].is_null());
    assert_eq!(rows[0]["q"], 5);
    assert_eq!(rows[1]["campaign"], "spring");
    assert_eq!(rows[1]["q"], 5);
    let (_, out, _) = node.cli(&["datasource", "show", "shops"]);
    assert!(out.contains("versions:    2"), "{out}");

    // Removing a dimension is refused with the reason.
    let shrunk = dir.path().join("shops3.json");
    std::fs::write(
        &shrunk,
        SHOPS.replace("[\"merchant_id\", \"page\"]", "[\"merchant_id\"]"),
    )
    .expect("write");
    let (code, _, err) = node.cli(&[
        "datasource",
        "update",
        "shops",
        "--file",
        &shrunk.to_string_lossy(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("\"page\" cannot be removed"), "{err}");

    // Delete hides at once; after the grace period the name is free for a new datasource.
    let (code, out, err) = node.cli(&["datasource", "delete", "shops", "--grace", "PT1S"]);
    assert_eq!(code, 0, "{out}{err}");
    let r = node.post("/v1/sql", b"SELECT COUNT(*) FROM shops", &[]);
    assert_eq!(r.status, 400, "{}", r.body);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, _, err) = node.cli(&["datasource", "create", "--file", &file]);
        if code == 0 {
            break;
        }
        assert!(err.contains("purged"), "{err}");
        assert!(
            std::time::Instant::now() < deadline,
            "name never freed: {err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        node.sql_i64("SELECT COUNT(*) FROM shops"),
        0,
        "a new incarnation starts empty"
    );
    assert!(
        !dir.path().join("datasources").join("ds2").exists()
            || node.sql_i64("SELECT COUNT(*) FROM sys.segments WHERE datasource = 'shops'") == 0
    );
}

#[test]
fn datasource_rest_errors_are_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    let spec =
        tidemark_catalog::spec::DEMO_BEACONS_SPEC.replace("\"partitions\": 3", "\"partitions\": 2");
    let r = node.put("/v1/datasources/beacons", spec.as_bytes());
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap_or_default()
            .contains("partitions can only grow"),
        "{}",
        r.body
    );
    let r = node.put(
        "/v1/datasources/other",
        tidemark_catalog::spec::DEMO_BEACONS_SPEC.as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = node.delete("/v1/datasources/nope");
    assert_eq!(r.status, 404, "{}", r.body);
    let r = node.post(
        "/v1/datasources",
        br#"{"name": "x y", "timestamp": {"field": ""}, "granularity": {"query": "PT1M", "segment": "PT1H"}}"#,
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let fields: Vec<String> = r.json()["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["field"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        fields,
        vec!["name".to_string(), "timestamp.field".to_string()],
        "{}",
        r.body
    );
}
