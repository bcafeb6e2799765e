//! A merchant key sees nothing of another merchant: a differential suite of generated
//! queries.
//!
//! `iso_all` holds four merchants' events; `iso_one` holds only the scoped merchant's, sent
//! the same way. Every other merchant's rows carry canaries: each of their dimension values
//! contains `zqx7`, and their amounts and latencies are unique numbers. The generator
//! (`isolation_gen.rs`) writes queries over `{t}`; each runs as the merchant's key over
//! `iso_all` (HTTP JSON, CSV and Arrow IPC, Flight SQL statements and prepared statements)
//! and as an admin key over `iso_one` (HTTP JSON and Flight SQL). Deterministic queries
//! must answer the same rows (as multisets) both ways, and fail both ways or neither; and no
//! byte of any answer, error or metadata reply the merchant gets may hold a canary (apart
//! from literals its own SQL names): raw response bytes are scanned, not decoded values.
//!
//! `TIDEMARK_ISOLATION_QUERIES` (default 500) and `TIDEMARK_ISOLATION_SEED` (default: from
//! the clock, printed) set the run; `dev/isolation-long` runs 100,000 against a release build.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetExportedKeys, CommandGetImportedKeys, CommandGetPrimaryKeys, CommandGetSqlInfo,
    CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo, CommandPreparedStatementQuery,
    CommandStatementQuery, ProstMessageExt,
};
use arrow_flight::{Action, FlightData, FlightDescriptor, Ticket};
use datafusion::arrow::array::RecordBatch;
use futures::TryStreamExt;
use prost::Message;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::harness::TestNode;
use crate::isolation_gen::{Compare, DIMENSIONS, GenQuery, Generator, Vocabulary};

const MERCHANT: &str = "ma01";
const OTHERS: [&str; 3] = ["B", "C", "D"];
/// Every canary string holds this; none of the scoped merchant's values do.
const MARK: &str = "zqx7";
const MINUTES: i64 = 12;

fn spec(name: &str) -> Value {
    json!({
        "name": name,
        "timestamp": {"field": "ts"},
        "granularity": {"query": "PT1M", "segment": "PT1M"},
        "dimensions": DIMENSIONS,
        "metrics": [{"name": "count", "type": "count"},
                    {"name": "revenue", "type": "doubleSum", "field": "amount"},
                    {"name": "lat_min", "type": "min", "field": "latency_ms"},
                    {"name": "lat_max", "type": "max", "field": "latency_ms"},
                    {"name": "users", "type": "hll", "field": "user_id"},
                    {"name": "lat_td", "type": "tdigest", "field": "latency_ms"}],
        "tenant": "merchant_id",
        // One partition: the two datasources split the scoped merchant's events into the
        // same rollup rows.
        "partitions": 1,
        "late_window": "PT1M",
    })
}

/// The canaries of the other merchants: strings and numbers.
#[derive(Debug, Default)]
struct Canaries {
    strings: Vec<String>,
    /// The numbers' bit patterns (f64).
    numbers: std::collections::HashSet<u64>,
}

/// The events: the scoped merchant's ordinary ones and the others' canaries.
fn events(start_ms: i64, canaries: &mut Canaries) -> (Vec<Value>, Vec<Value>) {
    let mut own = Vec::new();
    let pages = ["/a/home", "/a/cart", "/a/buy", "/a/help"];
    for i in 0..240i64 {
        let mut e = json!({
            "ts": start_ms + (i % MINUTES) * 60_000 + i,
            "merchant_id": MERCHANT,
            "page": pages[(i % 4) as usize],
            "country": if i % 3 == 0 { "FR" } else { "DE" },
            "app": if i % 5 == 0 { "pos" } else { "shop" },
            "amount": (i % 7) as f64 + 0.5,
            "latency_ms": 10.0 + (i % 50) as f64,
            "user_id": format!("ua-{}", i % 23),
        });
        if i % 4 != 3 {
            e["device"] = json!(if i % 2 == 0 { "ios" } else { "web" });
        }
        own.push(e);
    }
    let mut all = own.clone();
    for (m, other) in OTHERS.iter().enumerate() {
        let merchant = format!("{MARK}m{other}");
        let country = format!("{MARK}c{other}");
        let device = format!("{MARK}d{other}");
        let app = format!("{MARK}a{other}");
        canaries.strings.extend([
            merchant.clone(),
            country.clone(),
            device.clone(),
            app.clone(),
        ]);
        for i in 0..200i64 {
            let page = format!("/{MARK}p-{other}-{}", i % 5);
            // Unique, exact in binary, and far from anything the scoped merchant's sums reach.
            let amount = 73_219_467.8125 + (m as i64 * 1000 + i) as f64;
            let latency = 91_357_113.4375 + (m as i64 * 1000 + i) as f64;
            canaries
                .numbers
                .extend([amount.to_bits(), latency.to_bits()]);
            if i < 5 {
                canaries.strings.push(page.clone());
            }
            all.push(json!({
                "ts": start_ms + (i % MINUTES) * 60_000 + 500 + i,
                "merchant_id": merchant, "page": page, "country": country, "device": device, "app": app,
                "amount": amount, "latency_ms": latency, "user_id": format!("{MARK}u-{other}-{i}"),
            }));
        }
    }
    (all, own)
}

fn vocabulary(start_ms: i64, canaries: &Canaries) -> Vocabulary {
    let own = vec![
        ("merchant_id", vec![MERCHANT.to_string()]),
        (
            "page",
            ["/a/home", "/a/cart", "/a/buy", "/a/help"]
                .map(String::from)
                .to_vec(),
        ),
        ("country", vec!["FR".into(), "DE".into()]),
        ("device", vec!["ios".into(), "web".into()]),
        ("app", vec!["shop".into(), "pos".into()]),
    ];
    let of = |prefix: &str| -> Vec<String> {
        canaries
            .strings
            .iter()
            .filter(|s| s.starts_with(prefix))
            .cloned()
            .collect()
    };
    let canary = vec![
        ("merchant_id", of(&format!("{MARK}m"))),
        ("page", of(&format!("/{MARK}p"))),
        ("country", of(&format!("{MARK}c"))),
        ("device", of(&format!("{MARK}d"))),
        ("app", of(&format!("{MARK}a"))),
    ];
    Vocabulary {
        own,
        canaries: canary,
        start_ms,
        minutes: MINUTES,
    }
}

/// Where a canary shows in `bytes` that the SQL did not name itself, if anywhere.
fn leak(bytes: &[u8], sql: &str, canaries: &Canaries) -> Option<String> {
    let mut text = bytes.to_vec();
    // A literal the query names may come back (an error quoting it, an EXPLAIN's filter).
    for s in canaries.strings.iter().filter(|s| sql.contains(s.as_str())) {
        text = remove_all(&text, s.as_bytes());
    }
    let context = |at: usize| {
        String::from_utf8_lossy(&text[at.saturating_sub(60)..(at + 60).min(text.len())])
            .into_owned()
    };
    if let Some(at) = find(&text, MARK.as_bytes()) {
        return Some(format!("a canary string: …{}…", context(at)));
    }
    let numbers = &canaries.numbers;
    // As text (JSON, CSV, an error): every run of digits and dots that reads as one of them.
    let mut i = 0;
    while i < text.len() {
        if !text[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < text.len() && (text[i].is_ascii_digit() || text[i] == b'.') {
            i += 1;
        }
        let n = std::str::from_utf8(&text[start..i])
            .ok()
            .and_then(|t| t.parse::<f64>().ok());
        if n.is_some_and(|n| numbers.contains(&n.to_bits())) {
            return Some(format!("a canary number as text: …{}…", context(start)));
        }
    }
    // As an Arrow buffer's bytes, at any offset.
    for (at, w) in text.windows(8).enumerate() {
        let bits = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        if numbers.contains(&bits) {
            return Some(format!(
                "the canary number {} as bytes at offset {at}",
                f64::from_bits(bits)
            ));
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn remove_all(haystack: &[u8], needle: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

/// An answer as JSON rows, or the error text.
pub(crate) type Answer = Result<Vec<Value>, String>;

fn json_rows(batches: &[RecordBatch]) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    let mut w = datafusion::arrow::json::ArrayWriter::new(&mut out);
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    w.write_batches(&refs).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    if out.is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_slice(&out).map_err(|e| e.to_string())?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// A Flight SQL client that keeps the raw bytes of every reply.
pub(crate) struct Flight {
    rt: tokio::runtime::Runtime,
    client: FlightServiceClient<Channel>,
    auth: Option<String>,
}

impl Flight {
    /// A client sending `token` as its bearer key (none: a node without keys).
    pub(crate) fn connect(addr: &str, token: Option<&str>) -> Flight {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let channel = rt
            .block_on(
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .expect("uri")
                    .connect(),
            )
            .expect("connect to Flight SQL");
        Flight {
            rt,
            client: FlightServiceClient::new(channel),
            auth: token.map(|t| format!("Bearer {t}")),
        }
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(v) = self.auth.as_ref().and_then(|a| a.parse().ok()) {
            r.metadata_mut().insert("authorization", v);
        }
        r
    }

    /// The command's answer (raw bytes of FlightInfo and every FlightData, and the decoded
    /// batches), or the error's text (also the raw bytes).
    fn call(&mut self, cmd: Any) -> (Vec<u8>, Result<Vec<RecordBatch>, String>) {
        let descriptor = FlightDescriptor::new_cmd(cmd.encode_to_vec());
        let mut raw = Vec::new();
        let info = match self
            .rt
            .block_on(self.client.get_flight_info(self.request(descriptor)))
        {
            Ok(i) => i.into_inner(),
            Err(s) => {
                raw.extend_from_slice(s.message().as_bytes());
                return (raw, Err(s.message().to_string()));
            }
        };
        raw.extend(info.encode_to_vec());
        let mut data: Vec<FlightData> = Vec::new();
        for endpoint in &info.endpoint {
            let ticket = endpoint
                .ticket
                .clone()
                .unwrap_or_else(|| Ticket::new(Vec::new()));
            let stream = match self.rt.block_on(self.client.do_get(self.request(ticket))) {
                Ok(s) => s.into_inner(),
                Err(s) => {
                    raw.extend_from_slice(s.message().as_bytes());
                    return (raw, Err(s.message().to_string()));
                }
            };
            match self.rt.block_on(stream.try_collect::<Vec<FlightData>>()) {
                Ok(d) => data.extend(d),
                Err(s) => {
                    raw.extend_from_slice(s.message().as_bytes());
                    return (raw, Err(s.message().to_string()));
                }
            }
        }
        for d in &data {
            raw.extend_from_slice(&d.data_header);
            raw.extend_from_slice(&d.data_body);
            raw.extend_from_slice(&d.app_metadata);
        }
        let decoded = FlightRecordBatchStream::new_from_flight_data(futures::stream::iter(
            data.into_iter().map(Ok),
        ));
        let batches = self
            .rt
            .block_on(decoded.try_collect::<Vec<RecordBatch>>())
            .map_err(|e| e.to_string());
        (raw, batches)
    }

    /// The statement as a prepared statement: created (its reply, with the result's schema,
    /// is scanned too), run, closed.
    pub(crate) fn prepared(&mut self, sql: &str) -> (Vec<u8>, Answer) {
        let create = ActionCreatePreparedStatementRequest {
            query: sql.to_string(),
            transaction_id: None,
        };
        let (mut raw, result) =
            self.action("CreatePreparedStatement", create.as_any().encode_to_vec());
        let created = match result.and_then(|bodies| {
            let body = bodies
                .first()
                .ok_or("CreatePreparedStatement answered nothing")?
                .clone();
            let any = Any::decode(body.as_slice()).map_err(|e| e.to_string())?;
            any.unpack::<ActionCreatePreparedStatementResult>()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "not an ActionCreatePreparedStatementResult".to_string())
        }) {
            Ok(created) => created,
            Err(e) => return (raw, Err(e)),
        };
        let handle = created.prepared_statement_handle.clone();
        let cmd = CommandPreparedStatementQuery {
            prepared_statement_handle: handle.clone(),
        }
        .as_any();
        let (run_raw, batches) = self.call(cmd);
        raw.extend(run_raw);
        let close = ActionClosePreparedStatementRequest {
            prepared_statement_handle: handle,
        };
        let (close_raw, _) = self.action("ClosePreparedStatement", close.as_any().encode_to_vec());
        raw.extend(close_raw);
        (raw, batches.and_then(|b| json_rows(&b)))
    }

    /// A DoAction's result bodies (also as raw bytes), or the error's text.
    fn action(&mut self, kind: &str, body: Vec<u8>) -> (Vec<u8>, Result<Vec<Vec<u8>>, String>) {
        let action = Action {
            r#type: kind.to_string(),
            body: body.into(),
        };
        let mut raw = Vec::new();
        let stream = match self
            .rt
            .block_on(self.client.do_action(self.request(action)))
        {
            Ok(s) => s.into_inner(),
            Err(s) => {
                raw.extend_from_slice(s.message().as_bytes());
                return (raw, Err(s.message().to_string()));
            }
        };
        match self
            .rt
            .block_on(stream.try_collect::<Vec<arrow_flight::Result>>())
        {
            Ok(results) => {
                let bodies: Vec<Vec<u8>> = results.into_iter().map(|r| r.body.to_vec()).collect();
                for b in &bodies {
                    raw.extend_from_slice(b);
                }
                (raw, Ok(bodies))
            }
            Err(s) => {
                raw.extend_from_slice(s.message().as_bytes());
                (raw, Err(s.message().to_string()))
            }
        }
    }

    /// Starts a statement's DoGet, reads its first message, then `wait`s on `hold` while the
    /// stream is open and drops it (a client going away mid-answer).
    pub(crate) fn abandon(&mut self, sql: &str, hold: impl FnOnce()) {
        let cmd = CommandStatementQuery {
            query: sql.to_string(),
            transaction_id: None,
        }
        .as_any();
        let descriptor = FlightDescriptor::new_cmd(cmd.encode_to_vec());
        let info = self
            .rt
            .block_on(self.client.get_flight_info(self.request(descriptor)))
            .expect("FlightInfo");
        let ticket = info.into_inner().endpoint[0]
            .ticket
            .clone()
            .expect("a ticket");
        let mut stream = self
            .rt
            .block_on(self.client.do_get(self.request(ticket)))
            .expect("DoGet")
            .into_inner();
        let _ = self.rt.block_on(stream.message());
        hold();
        drop(stream);
        // The reset goes out when the client's runtime next runs its connection.
        self.rt
            .block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
    }

    pub(crate) fn query(&mut self, sql: &str) -> (Vec<u8>, Answer) {
        let cmd = CommandStatementQuery {
            query: sql.to_string(),
            transaction_id: None,
        }
        .as_any();
        let (raw, batches) = self.call(cmd);
        (raw, batches.and_then(|b| json_rows(&b)))
    }
}

fn http(node: &TestNode, token: &str, sql: &str, accept: &str) -> (u16, Vec<u8>) {
    let auth = format!("Bearer {token}");
    node.post_raw(
        "/v1/sql",
        sql.as_bytes(),
        &[
            ("Authorization", &auth),
            ("Accept", accept),
            ("Content-Type", "text/plain"),
        ],
    )
}

fn http_json(status: u16, bytes: &[u8]) -> Answer {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    if status == 200 {
        Ok(v.as_array().cloned().unwrap_or_default())
    } else {
        Err(v["error"].as_str().unwrap_or_default().to_string())
    }
}

fn ipc_rows(bytes: &[u8]) -> Answer {
    let reader =
        datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| e.to_string())?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    json_rows(&batches)
}

/// A row's sort key: text fields as they are, doubles rounded (they may differ in the last
/// digits between the two sides), so equal rows line up.
fn row_key(row: &Value) -> String {
    let Some(o) = row.as_object() else {
        return row.to_string();
    };
    let mut text = String::new();
    let mut doubles = String::new();
    for (k, v) in o {
        match v {
            Value::Number(n) if n.is_f64() => {
                doubles.push_str(&format!("{k}={:.2e};", n.as_f64().unwrap_or(0.0)))
            }
            _ => text.push_str(&format!("{k}={v};")),
        }
    }
    text + &doubles
}

fn same_rows(a: &[Value], b: &[Value], tolerance: f64) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("{} rows against {}", a.len(), b.len()));
    }
    let sorted = |rows: &[Value]| {
        let mut r = rows.to_vec();
        r.sort_by_key(row_key);
        r
    };
    for (x, y) in sorted(a).iter().zip(sorted(b).iter()) {
        let (Some(xo), Some(yo)) = (x.as_object(), y.as_object()) else {
            return Err(format!("not rows: {x} / {y}"));
        };
        if xo.keys().ne(yo.keys()) {
            return Err(format!("{x} against {y}"));
        }
        for (k, xv) in xo {
            let yv = &yo[k];
            let equal = match (xv.as_f64(), yv.as_f64()) {
                (Some(p), Some(q)) if xv.is_f64() || yv.is_f64() => {
                    (p - q).abs() <= tolerance * p.abs().max(q.abs()).max(1.0)
                }
                _ => xv == yv,
            };
            if !equal {
                return Err(format!("{x} against {y} (field {k})"));
            }
        }
    }
    Ok(())
}

/// Runs one generated query both ways; the problems found, if any.
fn check(
    q: &GenQuery,
    node: &TestNode,
    tokens: (&str, &str),
    flights: (&mut Flight, &mut Flight),
    canaries: &Canaries,
    answered: &mut usize,
) -> Vec<String> {
    let (merchant, admin) = tokens;
    let (sql, copy_sql) = (q.sql("iso_all"), q.sql("iso_one"));
    let mut problems = Vec::new();
    let mut scan = |door: &str, bytes: &[u8]| {
        if let Some(l) = leak(bytes, &sql, canaries) {
            problems.push(format!("{door}: {l}"));
        }
    };
    let (status, json_bytes) = http(node, merchant, &sql, "application/json");
    *answered += usize::from(status == 200);
    scan("HTTP JSON", &json_bytes);
    let (_, csv) = http(node, merchant, &sql, "text/csv");
    scan("HTTP CSV", &csv);
    let (ipc_status, ipc) = http(node, merchant, &sql, "application/vnd.apache.arrow.stream");
    scan("HTTP Arrow IPC", &ipc);
    let (flight_raw, flight_rows) = flights.0.query(&sql);
    scan("Flight SQL", &flight_raw);
    let (prepared_raw, prepared_rows) = flights.0.prepared(&sql);
    scan("Flight SQL prepared statement", &prepared_raw);

    let Compare::Multiset { tolerance } = q.compare else {
        return problems;
    };
    let mine = http_json(status, &json_bytes);
    let (copy_status, copy_bytes) = http(node, admin, &copy_sql, "application/json");
    let copy = http_json(copy_status, &copy_bytes);
    let (_, copy_flight) = flights.1.query(&copy_sql);
    let mut compare = |door: &str, a: &Answer, b: &Answer| match (a, b) {
        (Ok(x), Ok(y)) => {
            if let Err(e) = same_rows(x, y, tolerance) {
                problems.push(format!(
                    "{door}: the merchant's answer differs from the copy's: {e}"
                ));
            }
        }
        (Err(_), Err(_)) => {}
        (Ok(_), Err(e)) => problems.push(format!(
            "{door}: the copy fails ({e}), the merchant's query does not"
        )),
        (Err(e), Ok(_)) => problems.push(format!(
            "{door}: the merchant's query fails ({e}), the copy's does not"
        )),
    };
    compare("HTTP JSON", &mine, &copy);
    compare("Flight SQL", &flight_rows, &copy_flight);
    compare(
        "Flight SQL prepared statement",
        &prepared_rows,
        &copy_flight,
    );
    if ipc_status == 200 {
        compare("HTTP Arrow IPC against JSON", &ipc_rows(&ipc), &mine);
    }
    problems
}

#[test]
fn a_merchant_key_sees_nothing_of_other_merchants_in_generated_queries() {
    let queries: usize = std::env::var("TIDEMARK_ISOLATION_QUERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let seed: u64 = std::env::var("TIDEMARK_ISOLATION_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!(
        "isolation: seed {seed} (TIDEMARK_ISOLATION_SEED={seed} replays it), {queries} queries"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    let post = |path: &str, token: Option<&str>, body: &[u8]| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        node.post(path, body, &headers)
    };
    let r = post(
        "/v1/keys",
        None,
        json!({"name": "root", "role": "admin"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let admin = r.json()["token"].as_str().unwrap_or_default().to_string();
    let body = json!({"name": "ma01 dashboard", "role": "merchant_reader", "tenants": [MERCHANT]});
    let r = post("/v1/keys", Some(&admin), body.to_string().as_bytes());
    assert_eq!(r.status, 201, "{}", r.body);
    let merchant = r.json()["token"].as_str().unwrap_or_default().to_string();
    for name in ["iso_all", "iso_one"] {
        let r = post(
            "/v1/datasources",
            Some(&admin),
            spec(name).to_string().as_bytes(),
        );
        assert!(r.status == 200 || r.status == 201, "{}", r.body);
    }

    let now = crate::now_ms();
    let start_ms = now - now.rem_euclid(60_000) - MINUTES * 60_000;
    let mut canaries = Canaries::default();
    let (all, own) = events(start_ms, &mut canaries);
    for (name, events) in [("iso_all", &all), ("iso_one", &own)] {
        let body: Vec<u8> = events
            .iter()
            .flat_map(|e| format!("{e}\n").into_bytes())
            .collect();
        let r = post(&format!("/v1/beacons/{name}"), Some(&admin), &body);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["accepted"], json!(events.len()), "{}", r.body);
    }
    // Both datasources hold segments (closed minutes) and realtime rows before the run.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, b) = http(
            &node,
            &admin,
            "SELECT datasource, COUNT(*) AS n FROM sys.segments GROUP BY datasource",
            "application/json",
        );
        let seg: Vec<Value> = serde_json::from_slice(&b).unwrap_or_default();
        if seg.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no segments in both datasources: {}",
            String::from_utf8_lossy(&b)
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    let mut merchant_flight = Flight::connect(&node.flight, Some(&merchant));
    let mut admin_flight = Flight::connect(&node.flight, Some(&admin));
    let mut failures: Vec<String> = Vec::new();

    // The Flight SQL metadata calls, as the merchant.
    let metadata: Vec<(&str, Any)> = vec![
        ("GetCatalogs", CommandGetCatalogs {}.as_any()),
        (
            "GetDbSchemas",
            CommandGetDbSchemas {
                catalog: None,
                db_schema_filter_pattern: None,
            }
            .as_any(),
        ),
        (
            "GetTables",
            CommandGetTables {
                catalog: None,
                db_schema_filter_pattern: None,
                table_name_filter_pattern: None,
                table_types: vec![],
                include_schema: true,
            }
            .as_any(),
        ),
        ("GetTableTypes", CommandGetTableTypes {}.as_any()),
        ("GetSqlInfo", CommandGetSqlInfo { info: vec![] }.as_any()),
        (
            "GetXdbcTypeInfo",
            CommandGetXdbcTypeInfo { data_type: None }.as_any(),
        ),
    ];
    // The key calls name a table: the merchant's own, and the copy it may also see.
    let mut metadata = metadata;
    for table in ["iso_all", "iso_one"] {
        let (catalog, db_schema, table) = (
            Some("tidemark".to_string()),
            Some("public".to_string()),
            table.to_string(),
        );
        metadata.extend([
            (
                "GetPrimaryKeys",
                CommandGetPrimaryKeys {
                    catalog: catalog.clone(),
                    db_schema: db_schema.clone(),
                    table: table.clone(),
                }
                .as_any(),
            ),
            (
                "GetExportedKeys",
                CommandGetExportedKeys {
                    catalog: catalog.clone(),
                    db_schema: db_schema.clone(),
                    table: table.clone(),
                }
                .as_any(),
            ),
            (
                "GetImportedKeys",
                CommandGetImportedKeys {
                    catalog,
                    db_schema,
                    table,
                }
                .as_any(),
            ),
        ]);
    }
    for (name, cmd) in metadata {
        let (raw, _) = merchant_flight.call(cmd);
        if let Some(l) = leak(&raw, "", &canaries) {
            failures.push(format!("Flight SQL {name}: {l}"));
        }
    }

    let vocab = vocabulary(start_ms, &canaries);
    let mut generator = Generator::new(seed, &vocab);
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    let mut compared = 0usize;
    let mut answered = 0usize;
    let mut problems = 0usize;
    let started = Instant::now();
    for i in 0..queries {
        let q = generator.next_query();
        *by_kind.entry(q.kind).or_default() += 1;
        compared += usize::from(q.compare != Compare::CanaryOnly);
        for p in check(
            &q,
            &node,
            (&merchant, &admin),
            (&mut merchant_flight, &mut admin_flight),
            &canaries,
            &mut answered,
        ) {
            problems += 1;
            if failures.len() < 20 {
                failures.push(format!(
                    "query {i} ({}): {}\n    {p}",
                    q.kind,
                    q.sql("iso_all")
                ));
            }
        }
        if (i + 1) % 5000 == 0 {
            // A long run reports as it goes: a run stopped early still says how far it got.
            eprintln!(
                "isolation: {} of {queries} queries in {:.0} s, {problems} problems so far",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!(
        "isolation: {queries} queries in {:.1} s ({answered} answered, the rest refused with an error; {compared} \
         compared as multisets, the rest by canary scan only): {by_kind:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "seed {seed}: {} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
