//! The tag registry end to end against the binary: domains and tags over REST and the CLI,
//! beacons standardised at apply (aliases renamed, unknown tags dropped or rejected with a
//! suggestion, wrong types rejected), `sys.rejects`, metrics, suggestions for tools, errors
//! that name the problem, and all of it surviving a restart.

use serde_json::json;

use crate::harness::TestNode;
use crate::now_ms;

const PAYMENTS: &str = r#"{"name": "payments", "timestamp": {"field": "ts"},
  "granularity": {"query": "PT1M", "segment": "PT1H"},
  "dimensions": ["merchant_id", "account_number", "country"],
  "metrics": [{"name": "count", "type": "count"},
              {"name": "amount_sum", "type": "doubleSum", "field": "amount"},
              {"name": "qty", "type": "longSum", "field": "qty"},
              {"name": "users", "type": "hll", "field": "user_id"}]}"#;

const TAGS: [&str; 8] = [
    r#"{"name":"ts","kind":"timestamp","type":"timestamp","status":"approved","aliases":["time"]}"#,
    r#"{"name":"merchant_id","kind":"dimension","type":"string","status":"approved","required_in":["rollup"]}"#,
    r#"{"name":"account_number","kind":"dimension","type":"string","status":"approved","aliases":["acct_num"],
        "owner_team":"payments-core","description":"The merchant's account"}"#,
    r#"{"name":"country","kind":"dimension","type":"string","status":"approved"}"#,
    r#"{"name":"amount","kind":"field","type":"double","status":"approved"}"#,
    r#"{"name":"qty","kind":"field","type":"long","status":"approved"}"#,
    r#"{"name":"user_id","kind":"field","type":"any","status":"approved"}"#,
    r#"{"name":"coupon","kind":"dimension","type":"string","status":"proposed"}"#,
];

fn tag_name(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json).expect("tag JSON")["name"]
        .as_str()
        .expect("name")
        .to_string()
}

fn metric(node: &TestNode, name: &str) -> u64 {
    crate::harness::metric_value(&node.get("/metrics").body, name)
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[test]
fn tags_are_standardised_at_apply_and_suggested_to_tools() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = TestNode::start(dir.path());
    let r = node.post(
        "/v1/datasources",
        PAYMENTS.as_bytes(),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(r.status, 201, "{}", r.body);

    // A domain through the CLI, its tags over REST.
    let (code, out, err) = node.cli(&[
        "governance",
        "domain",
        "create",
        "payments",
        "--datasource",
        "payments",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    for t in TAGS {
        let r = node.put(
            &format!("/v1/governance/domains/payments/tags/{}", tag_name(t)),
            t.as_bytes(),
        );
        assert_eq!(r.status, 201, "{t}: {}", r.body);
    }
    let r = node.put(
        "/v1/governance/domains/payments/tags/country",
        TAGS[3].as_bytes(),
    );
    assert_eq!(
        (r.status, r.json()["changed"].clone()),
        (200, json!(false)),
        "the same tag again changes nothing"
    );

    // An alias is renamed; an unknown key is dropped and named, with a suggestion.
    let now = now_ms();
    let beacons = [
        json!({"time": now, "merchant_id": "m1", "acct_num": "A-1", "amount": 2.5, "user_id": "u1"}),
        json!({"ts": now, "merchant_id": "m1", "acct_nm": "A-2", "qty": 3}),
    ];
    let body: String = beacons.iter().map(|b| format!("{b}\n")).collect();
    let r = node.post("/v1/beacons/payments", body.as_bytes(), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = r.json();
    assert_eq!(answer["accepted"], 2, "{answer}");
    assert_eq!(
        answer["dropped_tags"],
        json!([{"tag": "acct_nm", "count": 1, "suggestion": "account_number",
                "message": "tag \"acct_nm\" is not in domain \"payments\" and was dropped (did you mean \"account_number\"?)"}])
    );
    let rows = node.sql(
        "SELECT account_number, SUM(\"count\") AS n FROM payments GROUP BY account_number ORDER BY account_number NULLS LAST",
    );
    assert_eq!(
        serde_json::Value::Array(rows),
        json!([{"account_number": "A-1", "n": 1}, {"n": 1}])
    );
    assert_eq!(node.sql_i64("SELECT SUM(qty) FROM payments"), 3);
    assert_eq!(metric(&node, "tidemark_tags_dropped_total"), 1);

    // Under the reject policy an unknown tag and a wrong type reject the beacon, exactly why.
    let strict = PAYMENTS.replace(
        "\"name\": \"payments\",",
        "\"name\": \"payments\", \"unknown_tags\": \"reject\",",
    );
    let r = node.put("/v1/datasources/payments", strict.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let body = format!(
        "{}\n{}\n{}\n",
        json!({"ts": now, "merchant_id": "m2", "acct_nm": "x"}),
        json!({"ts": now, "merchant_id": "m2", "amount": "12"}),
        json!({"ts": now, "merchant_id": "m2", "coupon": "SPRING"}),
    );
    let r = node.post("/v1/beacons/payments", body.as_bytes(), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let reasons: Vec<String> = r.json()["rejected"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| x["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    let expected = [
        "unknown tag \"acct_nm\" in domain \"payments\" (did you mean \"account_number\"?)",
        "tag \"amount\" must be a finite number (type double), got a string",
        "unknown tag \"coupon\" in domain \"payments\" (proposed, not yet approved)",
    ];
    assert_eq!(reasons, expected);
    let rejects = node
        .sql("SELECT code, reason FROM sys.rejects WHERE datasource = 'payments' ORDER BY log_position, record_index");
    let got: Vec<(i64, String)> = rejects
        .iter()
        .map(|r| {
            (
                r["code"].as_i64().unwrap_or(-1),
                r["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (7, expected[0].to_string()),
            (8, expected[1].to_string()),
            (7, expected[2].to_string())
        ]
    );

    // Tools ask what a key means.
    let r = node.get("/v1/governance/suggest?tag=acct_nm");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"tag": "acct_nm", "answers": [{"domain": "payments", "status": "unknown", "suggestion": "account_number",
               "message": "unknown tag \"acct_nm\" in domain \"payments\" (did you mean \"account_number\"?)"}]})
    );
    let r = node.get("/v1/governance/suggest?tag=acct_num&datasource=payments");
    assert_eq!(
        r.json()["answers"][0],
        json!({"domain": "payments", "status": "alias", "tag": "account_number",
               "message": "\"acct_num\" is an alias of tag \"account_number\" in domain \"payments\"; it is renamed at ingest"})
    );
    let r = node.get("/v1/governance/suggest");
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"],
        "the tag parameter is required, e.g. /v1/governance/suggest?tag=acct_num"
    );
    let r = node.get("/v1/governance/suggest?tag=x&domain=nope");
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (404, json!("governance domain \"nope\" does not exist"))
    );
    let r = node.get("/v1/governance/suggest?tag=x&datasource=beacons");
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json()["error"],
        "datasource \"beacons\" is in no governance domain"
    );
    let (code, out, err) = node.cli(&["governance", "suggest", "Account-Number"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "unknown tag \"Account-Number\" in domain \"payments\" (did you mean \"account_number\"?)"
    );

    // Restart: the registry and what it did survive.
    node.stop();
    let node = TestNode::start(dir.path());
    let r = node.get("/v1/governance/domains/payments/tags/account_number");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["tag"]["aliases"], json!(["acct_num"]));
    assert_eq!(r.json()["versions"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        node.sql_i64("SELECT SUM(\"count\") FROM payments WHERE account_number = 'A-1'"),
        1
    );
    let rows =
        node.sql("SELECT tag, kind, type, status, aliases FROM sys.tags WHERE domain = 'payments' AND tag LIKE 'acc%'");
    assert_eq!(
        serde_json::Value::Array(rows),
        json!([{"tag": "account_number", "kind": "dimension", "type": "string", "status": "approved", "aliases": "acct_num"}])
    );
    assert_eq!(
        node.sql_i64("SELECT COUNT(*) FROM sys.tags WHERE domain = 'payments'"),
        8
    );
    let (code, out, _) = node.cli(&["governance", "tag", "list", "payments"]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("account_number") && l.contains("acct_num")),
        "{out}"
    );
}

#[test]
fn governance_errors_name_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    let r = node.post(
        "/v1/datasources",
        PAYMENTS.as_bytes(),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = node.post(
        "/v1/governance/domains",
        br#"{"name": "payments", "datasources": ["payments"]}"#,
        &[("Content-Type", "application/json")],
    );
    assert_eq!(r.status, 201, "{}", r.body);

    // A malformed tag: the field is named.
    let r = node.put(
        "/v1/governance/domains/payments/tags/amount",
        br#"{"kind": "field", "type": "decimal"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["problems"][0]["field"], "type", "{}", r.body);
    let r = node.put(
        "/v1/governance/domains/payments/tags/when",
        br#"{"kind": "timestamp", "type": "string", "aliases": ["when"]}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let problems = r.json()["problems"].clone();
    let fields: Vec<&str> = problems
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["field"].as_str())
        .collect();
    assert_eq!(fields, vec!["type", "aliases[0]"], "{}", r.body);

    // A tag required as a rollup dimension the datasource lacks.
    let r = node.put(
        "/v1/governance/domains/payments/tags/store",
        br#"{"kind": "dimension", "type": "string", "status": "approved", "required_in": ["rollup"]}"#,
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(
        r.json()["problems"][0]["message"],
        "tag \"store\" is required as a rollup dimension, but datasource \"payments\" does not list it in dimensions; add it to the spec first"
    );

    // Aliases are unique in a domain; approved tags are deprecated, not removed.
    let r = node.put(
        "/v1/governance/domains/payments/tags/amount",
        br#"{"kind": "field", "type": "double", "status": "approved"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = node.put(
        "/v1/governance/domains/payments/tags/amt",
        br#"{"kind": "field", "type": "double", "aliases": ["amount"]}"#,
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(
        r.json()["problems"][0]["message"],
        "\"amount\" is already the tag \"amount\" in domain \"payments\""
    );
    let r = node.delete("/v1/governance/domains/payments/tags/amount");
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap_or_default()
            .contains("only a proposed tag can be removed (deprecate it instead)"),
        "{}",
        r.body
    );
    let r = node.put(
        "/v1/governance/domains/payments/tags/amount",
        br#"{"name": "amt", "kind": "field", "type": "any"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("renaming is not supported"), "{}", r.body);
    // A datasource belongs to one domain; unknown domains and tags are 404.
    let r = node.post(
        "/v1/governance/domains",
        br#"{"name": "sales", "datasources": ["payments"]}"#,
        &[("Content-Type", "application/json")],
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body.contains("a datasource belongs to one domain"),
        "{}",
        r.body
    );
    assert_eq!(node.get("/v1/governance/domains/nope").status, 404);
    assert_eq!(
        node.get("/v1/governance/domains/payments/tags/nope").status,
        404
    );
    let (code, _, err) = node.cli(&["governance", "tag", "remove", "payments", "amount"]);
    assert_ne!(code, 0);
    assert!(err.contains("deprecate it instead"), "{err}");
}

#[test]
fn retention_is_stored_per_datasource_and_form_and_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    // No rule: every form is kept forever.
    let r = node.get("/v1/governance/retention/beacons");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["retention"],
        serde_json::json!({"raw": null, "segments": null, "rejects": null, "fulltext": null})
    );

    let (code, out, err) = node.cli(&[
        "governance",
        "retention",
        "set",
        "beacons",
        "--raw",
        "P30D",
        "--segments",
        "P400D",
        "--rejects",
        "P7D",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        v["retention"],
        serde_json::json!({"raw": "P30D", "segments": "P400D", "rejects": "P7D", "fulltext": null})
    );
    let rows = node.sql("SELECT datasource, raw, segments, rejects, fulltext FROM sys.retention");
    assert_eq!(
        rows,
        vec![
            // JSON rows leave out nulls: fulltext is kept forever.
            serde_json::json!({"datasource": "beacons", "raw": "P30D", "segments": "P400D", "rejects": "P7D"})
        ]
    );
    // A shorter raw retention: the audit log has both rules, before and after.
    let r = node.put(
        "/v1/governance/retention/beacons",
        br#"{"raw":"P7D","segments":"P400D"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let rows =
        node.sql("SELECT op, object, before, after FROM sys.audit WHERE op = 'put_retention' ORDER BY log_position");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["before"], serde_json::Value::Null);
    assert_eq!(rows[1]["object"], "retention:beacons");
    let before: serde_json::Value =
        serde_json::from_str(rows[1]["before"].as_str().unwrap_or("null")).expect("json");
    let after: serde_json::Value =
        serde_json::from_str(rows[1]["after"].as_str().unwrap_or("null")).expect("json");
    assert_eq!(
        (
            before["raw"].as_str(),
            after["raw"].as_str(),
            after["rejects"].as_str()
        ),
        (Some("P30D"), Some("P7D"), None)
    );

    // Bad input names the problem.
    let r = node.put("/v1/governance/retention/beacons", br#"{"raw":"30 days"}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.json()["error"].as_str().is_some_and(
            |e| e.starts_with("invalid retention rule: raw: invalid period \"30 days\"")
        ),
        "{}",
        r.body
    );
    let r = node.put("/v1/governance/retention/nope", br#"{"raw":"P1D"}"#);
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"], "datasource \"nope\" does not exist");
}

/// A governance editor's key answered 200 to `{"raw": "PT1M", "segments":
/// "PT1M", "rejects": "PT1M"}`, after which the leader dropped every older interval and
/// raw file. Shortening a rule is an admin's change, and no rule reaches inside the late
/// window (PT10M by default), where events are still being written.
#[test]
fn shortening_retention_is_an_admins_change_and_never_reaches_inside_the_late_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    let key = |name: &str, role: &str, auth: Option<&str>| {
        let body = serde_json::json!({ "name": name, "role": role }).to_string();
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        let r = node.post("/v1/keys", body.as_bytes(), &headers);
        assert_eq!(r.status, 201, "{}", r.body);
        format!("Bearer {}", r.json()["token"].as_str().unwrap_or_default())
    };
    let admin = key("root", "admin", None);
    let editor = key("ed", "governance_editor", Some(&admin));
    let put = |auth: &str, body: &str| {
        node.put_with(
            "/v1/governance/retention/beacons",
            body.as_bytes(),
            &[("Authorization", auth)],
        )
    };
    let error =
        |r: &crate::harness::Reply| r.json()["error"].as_str().unwrap_or_default().to_string();

    // From forever to a limit: shorter, so the editor may not; the admin may.
    let r = put(
        &editor,
        r#"{"raw": "PT1M", "segments": "PT1M", "rejects": "PT1M"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        error(&r),
        "raw: PT1M is shorter than beacons's late window PT10M: it would remove data still being written; \
         keep every form at least PT10M"
    );
    let r = put(&editor, r#"{"raw": "P30D"}"#);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        error(&r),
        "raw: shortening retention (forever to P30D) removes history that cannot be rebuilt: an admin key's change \
         (this key may lengthen rules)"
    );
    assert_eq!(put(&admin, r#"{"raw": "P30D"}"#).status, 200);
    // Lengthening is the editor's to do; shortening again is not.
    assert_eq!(put(&editor, r#"{"raw": "P60D"}"#).status, 200);
    let r = put(&editor, r#"{"raw": "P7D"}"#);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = put(&admin, r#"{"raw": "PT5M"}"#);
    assert_eq!(
        r.status, 400,
        "the late window binds admins too: {}",
        r.body
    );
    let rule = node
        .get_with(
            "/v1/governance/retention/beacons",
            &[("Authorization", &admin)],
        )
        .json();
    assert_eq!(rule["retention"]["raw"], "P60D", "{rule}");
}
