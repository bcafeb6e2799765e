//! The admin gRPC service against the real binary: the same checks and answers as its HTTP
//! twin (keys, roles, not found), and changes made through it audited under the caller's key.

use serde_json::{Value, json};
use tidemark_proto::admin::admin_client::AdminClient;
use tidemark_proto::admin::{Empty, Json, Name, TagJson};
use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::harness::TestNode;

fn with_key<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(t) = token
        && let Ok(v) = MetadataValue::try_from(format!("Bearer {t}"))
    {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

fn parse(answer: Result<tonic::Response<Json>, tonic::Status>) -> Value {
    let json = answer
        .unwrap_or_else(|s| panic!("{:?}: {}", s.code(), s.message()))
        .into_inner()
        .json;
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

#[test]
fn the_admin_grpc_service_answers_as_its_http_twin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    let (code, out, err) = node.cli(&["keys", "create", "--name", "root", "--role", "admin"]);
    assert_eq!(code, 0, "{err}");
    let admin = out.trim().to_string();
    let admin_id = admin.get(4..16).unwrap_or_default().to_string();

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut client = AdminClient::connect(format!("http://{}", node.flight)).await.expect("connect");

        let refused = client.list_datasources(with_key(Empty {}, None)).await.err().expect("no key");
        assert_eq!(refused.code(), Code::Unauthenticated);
        assert!(refused.message().contains("this node requires an API key"), "{}", refused.message());

        let spec = json!({
            "name": "grpc_ds",
            "timestamp": {"field": "ts"},
            "granularity": {"query": "PT1M", "segment": "PT1H"},
            "dimensions": ["m"],
            "metrics": [{"name": "count", "type": "count"}],
        });
        let created = parse(client.create_datasource(with_key(Json { json: spec.to_string() }, Some(&admin))).await);
        assert_eq!(created["name"], "grpc_ds", "{created}");
        let shown = parse(client.get_datasource(with_key(Name { name: "grpc_ds".into() }, Some(&admin))).await);
        assert_eq!(shown["name"], "grpc_ds", "{shown}");
        let missing =
            client.get_datasource(with_key(Name { name: "nope".into() }, Some(&admin))).await.err().expect("404");
        assert_eq!(missing.code(), Code::NotFound);
        assert!(missing.message().contains("\"nope\""), "{}", missing.message());
        let bad = client
            .create_datasource(with_key(Json { json: "{\"name\": 1}".into() }, Some(&admin)))
            .await
            .err()
            .expect("400");
        assert_eq!(bad.code(), Code::InvalidArgument, "{}", bad.message());

        // Keys over gRPC; an analyst key may read but not manage keys.
        let key = parse(
            client
                .create_key(with_key(Json { json: json!({"name": "bi", "role": "analyst"}).to_string() }, Some(&admin)))
                .await,
        );
        let analyst = key["token"].as_str().unwrap_or_default().to_string();
        let listed = parse(client.list_datasources(with_key(Empty {}, Some(&analyst))).await);
        assert!(listed.as_array().is_some_and(|a| a.iter().any(|d| d["name"] == "grpc_ds")), "{listed}");
        // The DBA calls: segments, jobs, a deletion with a bad condition.
        let segments = parse(client.list_segments(with_key(Name { name: "grpc_ds".into() }, Some(&analyst))).await);
        assert_eq!(segments, json!([]), "{segments}");
        let jobs = parse(client.list_jobs(with_key(Empty {}, Some(&analyst))).await);
        assert!(jobs.is_array(), "{jobs}");
        let condition = json!({"datasource": "grpc_ds", "where": "merchant_id = m1"}).to_string();
        let bad = client.delete(with_key(Json { json: condition }, Some(&admin))).await.err().expect("400");
        assert_eq!(bad.code(), Code::InvalidArgument, "{}", bad.message());
        assert!(bad.message().contains("m1 is not a value; quote text as 'm1'"), "{}", bad.message());
        let denied = client.list_keys(with_key(Empty {}, Some(&analyst))).await.err().expect("403");
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert!(denied.message().contains("may not manage API keys"), "{}", denied.message());

        // A merchant reader's key reads nothing through the admin service: no
        // datasource list, segment, job or cluster figure of other merchants' data.
        let key = parse(
            client
                .create_key(with_key(
                    Json { json: json!({"name": "m1", "role": "merchant_reader", "tenants": ["m1"]}).to_string() },
                    Some(&admin),
                ))
                .await,
        );
        let merchant = key["token"].as_str().unwrap_or_default().to_string();
        let refusals = [
            client.list_datasources(with_key(Empty {}, Some(&merchant))).await.err(),
            client.list_segments(with_key(Name { name: "grpc_ds".into() }, Some(&merchant))).await.err(),
            client.list_jobs(with_key(Empty {}, Some(&merchant))).await.err(),
            client.cluster_status(with_key(Empty {}, Some(&merchant))).await.err(),
        ];
        for refused in refusals {
            let status = refused.expect("a merchant key is refused");
            assert_eq!(status.code(), Code::PermissionDenied, "{}", status.message());
            assert!(status.message().contains("role merchant_reader"), "{}", status.message());
        }

        // Governance through gRPC lands in the audit log under the caller's key.
        parse(client.create_domain(with_key(Json { json: json!({"name": "shop"}).to_string() }, Some(&admin))).await);
        let tag = json!({"name": "store", "kind": "dimension", "type": "string", "description": "a store"});
        parse(
            client
                .put_tag(with_key(
                    TagJson { domain: "shop".into(), tag: "store".into(), json: tag.to_string() },
                    Some(&admin),
                ))
                .await,
        );
        let status = parse(client.cluster_status(with_key(Empty {}, Some(&analyst))).await);
        assert!(status.get("leader").is_some() || status.get("members").is_some(), "{status}");
    });

    let auth = format!("Bearer {admin}");
    let r = node.post(
        "/v1/sql",
        b"SELECT actor, op, object FROM sys.audit WHERE op IN ('create_domain', 'put_tag') ORDER BY log_position",
        &[("Authorization", &auth)],
    );
    let actor = format!("key:{admin_id}");
    assert_eq!(
        r.json(),
        json!([
            {"actor": actor, "op": "create_domain", "object": "domain:shop"},
            {"actor": actor, "op": "put_tag", "object": "tag:shop/store"},
        ]),
        "{}",
        r.body
    );
}
