//! Flight SQL with a real client from another ecosystem: Python's adbc-driver-flightsql and
//! pyarrow (installed by `dev/test`), compared with exact answers computed here.

use std::collections::BTreeMap;
use std::process::Command;

use crate::harness::{TestNode, python};
use crate::{ndjson, now_ms, traffic};

#[test]
fn adbc_flight_sql_client_reads_exact_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    let events = traffic(21, 40, now_ms() - 20 * 60_000, 10 * 60_000, 3_000);
    let r = node.post("/v1/beacons/beacons", &ndjson(&events), &[]);
    assert_eq!(r.json()["accepted"], 3000, "{}", r.body);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/adbc_client.py");
    let out = Command::new(python())
        .arg(script)
        .arg(format!("grpc://{}", node.flight))
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "adbc client failed:\n{stdout}\n{stderr}\nnode log:\n{}",
        node.log_text()
    );
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));

    let mut per_country: BTreeMap<String, i64> = BTreeMap::new();
    for b in &events {
        *per_country.entry(b.country.to_string()).or_default() += 1;
    }
    let got: BTreeMap<String, i64> = v["per_country"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(-1)))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(got, per_country);
    assert_eq!(v["total_prepared"], 3000);
    let purchases = events.iter().filter(|b| b.event == "purchase").count() as i64;
    assert_eq!(v["purchases"], purchases);
    let tables: Vec<String> = v["tables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect();
    assert!(tables.contains(&"public.beacons".to_string()), "{tables:?}");
    assert!(tables.contains(&"sys.segments".to_string()), "{tables:?}");
}
