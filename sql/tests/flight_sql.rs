//! The Flight SQL service end to end: a tonic server on a free port over a small in-memory
//! `SnapshotSource` (six beacons in the realtime index plus one system table), driven by
//! arrow-flight's own `FlightSqlServiceClient` as ADBC/JDBC would drive it.

use std::sync::Arc;

use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    CommandGetDbSchemas, CommandGetTables, CommandStatementQuery, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{FlightDescriptor, FlightInfo, IpcMessage, Ticket};
use datafusion::arrow::array::{
    Array, AsArray, DictionaryArray, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{
    DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit, UInt32Type,
};
use datafusion::arrow::util::pretty::pretty_format_batches;
use futures::StreamExt;
use prost::Message;
use tidemark_catalog::DatasourceSpec;
use tidemark_catalog::event::extract;
use tidemark_catalog::spec::DEMO_BEACONS_SPEC;
use tidemark_sql::SqlState;
use tidemark_sql::flight::flight_service;
use tidemark_storage::rollup::RollupIndex;
use tidemark_storage::segment::table_schema;
use tidemark_storage::snapshot::{SnapshotSource, TableSnapshot};
use tonic::transport::{Channel, Endpoint, Server, server::TcpIncoming};

/// 2026-11-26T00:00:00Z
const START_MS: i64 = 1_795_651_200_000;

#[derive(Debug)]
struct Fixture {
    snapshot: TableSnapshot,
    datasources: RecordBatch,
}

impl SnapshotSource for Fixture {
    fn table_names(&self) -> Vec<String> {
        vec!["beacons".into()]
    }
    fn snapshot(&self, table: &str) -> Option<TableSnapshot> {
        (table == "beacons").then(|| self.snapshot.clone())
    }
    fn system_table_names(&self) -> Vec<String> {
        vec!["datasources".into()]
    }
    fn system_table(&self, name: &str) -> Option<RecordBatch> {
        (name == "datasources").then(|| self.datasources.clone())
    }
}

/// (merchant, country, device, latency) per beacon; the first two roll up into one row.
const BEACONS: [(&str, &str, Option<&str>, f64); 6] = [
    ("m1", "DE", Some("mobile"), 10.0),
    ("m1", "DE", Some("mobile"), 20.0),
    ("m1", "FR", Some("desktop"), 30.0),
    ("m2", "DE", Some("mobile"), 40.0),
    ("m2", "US", None, 50.0),
    ("m3", "US", Some("desktop"), 60.0),
];

fn fixture() -> Fixture {
    let spec = DatasourceSpec::from_json(DEMO_BEACONS_SPEC).expect("demo spec");
    let json: Vec<serde_json::Value> = BEACONS
        .iter()
        .enumerate()
        .map(|(i, (merchant, country, device, latency))| {
            let mut b = serde_json::json!({
                "ts": START_MS + i as i64 * 1000,
                "merchant_id": merchant,
                "app": "shop",
                "event": "view",
                "page": "/",
                "country": country,
                "user_id": format!("u{i}"),
                "latency_ms": latency,
            });
            if let Some(d) = device {
                b["device"] = serde_json::json!(d);
            }
            b
        })
        .collect();
    let mut index = RollupIndex::new(&spec);
    for b in &json {
        index.add(&extract(&spec, b).expect("valid beacon"));
    }
    let schema = Arc::new(table_schema(&spec));
    let realtime = index
        .to_record_batch(&spec, schema)
        .expect("realtime batch");
    let snapshot = TableSnapshot {
        spec,
        log_position: 1,
        segments: vec![],
        realtime: vec![realtime],
        unreadable: vec![],
    };

    // A system table with a dictionary column, like the datasource dimensions.
    let datasources = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new(
                "name",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                false,
            ),
            Field::new("events", DataType::Int64, false),
        ])),
        vec![
            Arc::new(DictionaryArray::<Int32Type>::from_iter(["beacons"])),
            Arc::new(Int64Array::from(vec![BEACONS.len() as i64])),
        ],
    )
    .expect("sys batch");
    Fixture {
        snapshot,
        datasources,
    }
}

type Client = FlightSqlServiceClient<Channel>;

/// Starts the service on 127.0.0.1:0 and connects a client to it.
async fn start() -> Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let state = SqlState {
        source: Arc::new(fixture()),
        barrier: None,
        auth: None,
        gate: tidemark_sql::limits::QueryGate::new(Default::default()),
    };
    tokio::spawn(
        Server::builder()
            .add_service(flight_service(state, std::time::Duration::ZERO))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let channel = Endpoint::try_from(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    FlightSqlServiceClient::new(channel)
}

/// Fetches the one endpoint of `info`, checking that what DoGet sends has exactly the schema
/// the FlightInfo announced.
async fn fetch(client: &mut Client, info: FlightInfo) -> (SchemaRef, Vec<RecordBatch>) {
    assert_eq!(info.endpoint.len(), 1, "one endpoint");
    let announced: SchemaRef =
        Arc::new(info.clone().try_decode_schema().expect("FlightInfo schema"));
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let mut stream = client.do_get(ticket).await.expect("do_get");
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.expect("batch");
        assert_eq!(
            batch.schema(),
            announced,
            "batch schema differs from FlightInfo schema"
        );
        batches.push(batch);
    }
    let sent = stream.schema().cloned().expect("DoGet sent a schema");
    assert_eq!(
        sent, announced,
        "DoGet schema differs from FlightInfo schema"
    );
    (announced, batches)
}

async fn query(client: &mut Client, sql: &str) -> (SchemaRef, Vec<RecordBatch>) {
    let info = client
        .execute(sql.to_string(), None)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    fetch(client, info).await
}

fn pretty(batches: &[RecordBatch]) -> String {
    pretty_format_batches(batches).expect("format").to_string()
}

fn dedent(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The status a GetFlightInfo for `sql` fails with (through the raw gRPC client, so the code
/// is visible).
async fn statement_error(client: &mut Client, sql: &str) -> tonic::Status {
    let cmd = CommandStatementQuery {
        query: sql.into(),
        transaction_id: None,
    };
    let descriptor = FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec());
    match client.inner_mut().get_flight_info(descriptor).await {
        Ok(_) => panic!("{sql}: expected an error"),
        Err(status) => status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_queries() {
    let mut client = start().await;

    let (schema, batches) =
        query(&mut client, r#"SELECT SUM("count") AS events FROM beacons"#).await;
    assert_eq!(schema.field(0).data_type(), &DataType::Int64);
    let total: i64 = batches
        .iter()
        .map(|b| {
            b.column(0)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .value(0)
        })
        .sum();
    assert_eq!(total, BEACONS.len() as i64);

    // Dimensions are dictionaries inside tidemark and plain strings on the wire.
    let (schema, batches) = query(
        &mut client,
        r#"SELECT merchant_id, SUM("count") AS events, MAX(latency_max) AS slowest
           FROM beacons GROUP BY merchant_id ORDER BY merchant_id"#,
    )
    .await;
    assert_eq!(schema.field(0).data_type(), &DataType::Utf8);
    assert_eq!(
        pretty(&batches),
        dedent(
            "+-------------+--------+---------+
             | merchant_id | events | slowest |
             +-------------+--------+---------+
             | m1          | 3      | 30.0    |
             | m2          | 2      | 50.0    |
             | m3          | 1      | 60.0    |
             +-------------+--------+---------+"
        )
    );

    // The first two beacons share every dimension and the minute, so they are one row.
    let (_, batches) = query(&mut client, "SELECT COUNT(*) AS rows FROM beacons").await;
    assert_eq!(
        pretty(&batches),
        dedent("+------+\n| rows |\n+------+\n| 5    |\n+------+")
    );

    // A missing dimension reads as NULL.
    let (_, batches) = query(
        &mut client,
        r#"SELECT merchant_id FROM beacons WHERE device IS NULL"#,
    )
    .await;
    assert_eq!(
        pretty(&batches),
        dedent(
            "+-------------+\n| merchant_id |\n+-------------+\n| m2          |\n+-------------+"
        )
    );

    // No rows: the schema still arrives, with every dimension as Utf8.
    let (schema, batches) = query(&mut client, "SELECT * FROM beacons WHERE country = 'XX'").await;
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    assert_eq!(
        schema.field(0).data_type(),
        &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
    );
    for name in ["merchant_id", "app", "event", "page", "country", "device"] {
        assert_eq!(
            schema.field_with_name(name).expect("dimension").data_type(),
            &DataType::Utf8,
            "{name}"
        );
    }
    assert_eq!(
        schema
            .field_with_name("users_hll")
            .expect("sketch")
            .data_type(),
        &DataType::Binary
    );

    // System tables, dictionary columns included.
    let (schema, batches) = query(&mut client, "SELECT name, events FROM sys.datasources").await;
    assert_eq!(schema.field(0).data_type(), &DataType::Utf8);
    assert_eq!(
        pretty(&batches),
        dedent(
            "+---------+--------+\n| name    | events |\n+---------+--------+\n| beacons | 6      |\n+---------+--------+"
        )
    );

    // The ticket is self-contained: a fresh connection can redeem a hand-made one.
    let mut other = start().await;
    let ticket = TicketStatementQuery {
        statement_handle: r#"SELECT SUM("count") AS n FROM beacons"#.into(),
    };
    let mut stream = other
        .do_get(Ticket::new(ticket.as_any().encode_to_vec()))
        .await
        .expect("do_get");
    let mut batches = Vec::new();
    while let Some(b) = stream.next().await {
        batches.push(b.expect("batch"));
    }
    assert_eq!(
        pretty(&batches),
        dedent("+---+\n| n |\n+---+\n| 6 |\n+---+")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements() {
    let mut client = start().await;
    let mut stmt = client
        .prepare(
            r#"SELECT country, SUM("count") AS events FROM beacons GROUP BY country ORDER BY country"#.into(),
            None,
        )
        .await
        .expect("prepare");
    let dataset = stmt.dataset_schema().expect("dataset schema").clone();
    assert_eq!(dataset.field(0).data_type(), &DataType::Utf8);
    assert_eq!(dataset.field(1).data_type(), &DataType::Int64);
    assert!(
        stmt.parameter_schema()
            .expect("parameter schema")
            .fields()
            .is_empty()
    );

    // Executed twice: handles are reusable.
    for _ in 0..2 {
        let info = stmt.execute().await.expect("execute");
        let (schema, batches) = fetch(&mut client, info).await;
        assert_eq!(
            schema.as_ref(),
            &dataset,
            "prepared schema differs from the result schema"
        );
        assert_eq!(
            pretty(&batches),
            dedent(
                "+---------+--------+
                 | country | events |
                 +---------+--------+
                 | DE      | 3      |
                 | FR      | 1      |
                 | US      | 2      |
                 +---------+--------+"
            )
        );
    }
    stmt.close().await.expect("close");

    // Bound parameters are refused with a clear message.
    let mut stmt = client
        .prepare("SELECT COUNT(*) FROM beacons".into(), None)
        .await
        .expect("prepare");
    let params = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("$1", DataType::Utf8, false)])),
        vec![Arc::new(StringArray::from(vec!["DE"]))],
    )
    .expect("params");
    stmt.set_parameters(params).expect("set parameters");
    let err = stmt
        .execute()
        .await
        .expect_err("parameters are not supported");
    assert!(err.to_string().contains("bound parameters"), "{err}");

    // So is a statement with placeholders, at prepare time.
    let err = client
        .prepare(
            "SELECT COUNT(*) FROM beacons WHERE country = $1".into(),
            None,
        )
        .await
        .expect_err("placeholders are not supported");
    assert!(err.to_string().contains("parameters"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors() {
    let mut client = start().await;

    let status = statement_error(&mut client, "SELEC 1").await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");

    let status = statement_error(&mut client, "SELECT * FROM nope").await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert!(status.message().contains("nope"), "{status}");

    let status = statement_error(
        &mut client,
        "INSERT INTO beacons (merchant_id) VALUES ('m9')",
    )
    .await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert!(status.message().contains("/v1/beacons"), "{status}");

    // A ticket that is not SQL text.
    let ticket = TicketStatementQuery {
        statement_handle: vec![0xff, 0xfe].into(),
    };
    let status = match client
        .inner_mut()
        .do_get(Ticket::new(ticket.as_any().encode_to_vec()))
        .await
    {
        Ok(_) => panic!("expected an error"),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");

    // Updates are refused: reads must be run as queries, writes say how data gets in.
    let err = client
        .execute_update("SELECT 1".into(), None)
        .await
        .expect_err("read-only");
    assert!(err.to_string().contains("run it as a query"), "{err}");
    let err = client
        .execute_update("DELETE FROM beacons".into(), None)
        .await
        .expect_err("read-only");
    assert!(err.to_string().contains("tidemark delete"), "{err}");

    let err = client
        .begin_transaction()
        .await
        .expect_err("no transactions");
    assert!(err.to_string().contains("no transactions"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata() {
    let mut client = start().await;

    assert!(
        client
            .handshake("anyone", "anything")
            .await
            .expect("handshake")
            .is_empty()
    );

    let info = client.get_catalogs().await.expect("catalogs");
    let (_, batches) = fetch(&mut client, info).await;
    assert_eq!(
        pretty(&batches),
        dedent(
            "+--------------+\n| catalog_name |\n+--------------+\n| tidemark     |\n+--------------+"
        )
    );

    let info = client
        .get_db_schemas(CommandGetDbSchemas::default())
        .await
        .expect("schemas");
    let (_, batches) = fetch(&mut client, info).await;
    assert_eq!(
        pretty(&batches),
        dedent(
            "+--------------+----------------+
             | catalog_name | db_schema_name |
             +--------------+----------------+
             | tidemark     | public         |
             | tidemark     | sys            |
             +--------------+----------------+"
        )
    );
    let info = client
        .get_db_schemas(CommandGetDbSchemas {
            catalog: None,
            db_schema_filter_pattern: Some("pub%".into()),
        })
        .await
        .expect("schemas");
    let (_, batches) = fetch(&mut client, info).await;
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);

    let info = client
        .get_tables(CommandGetTables::default())
        .await
        .expect("tables");
    let (_, batches) = fetch(&mut client, info).await;
    assert_eq!(
        pretty(&batches),
        dedent(
            "+--------------+----------------+-------------+--------------+
             | catalog_name | db_schema_name | table_name  | table_type   |
             +--------------+----------------+-------------+--------------+
             | tidemark     | public         | beacons     | TABLE        |
             | tidemark     | sys            | datasources | SYSTEM TABLE |
             +--------------+----------------+-------------+--------------+"
        )
    );

    // Filters: table types, schema and table name patterns, catalog.
    let tables = |cmd: CommandGetTables| {
        let mut client = client.clone();
        async move {
            let info = client.get_tables(cmd).await.expect("tables");
            let (_, batches) = fetch(&mut client, info).await;
            batches
                .iter()
                .flat_map(|b| {
                    let names = b.column(2).as_string::<i32>();
                    (0..b.num_rows())
                        .map(|i| names.value(i).to_string())
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        }
    };
    let only = |f: fn(&mut CommandGetTables)| {
        let mut cmd = CommandGetTables::default();
        f(&mut cmd);
        cmd
    };
    assert_eq!(
        tables(only(|c| c.table_types = vec!["SYSTEM TABLE".into()])).await,
        ["datasources"]
    );
    assert_eq!(
        tables(only(|c| c.table_types = vec!["TABLE".into()])).await,
        ["beacons"]
    );
    assert_eq!(
        tables(only(|c| c.db_schema_filter_pattern = Some("sys".into()))).await,
        ["datasources"]
    );
    assert_eq!(
        tables(only(
            |c| c.table_name_filter_pattern = Some("bea_ons".into())
        ))
        .await,
        ["beacons"]
    );
    assert_eq!(
        tables(only(|c| c.catalog = Some("tidemark".into())))
            .await
            .len(),
        2
    );
    assert!(
        tables(only(|c| c.catalog = Some("other".into())))
            .await
            .is_empty()
    );

    // include_schema: the table schema is the one a SELECT * announces.
    let cmd = CommandGetTables {
        table_name_filter_pattern: Some("bea%".into()),
        include_schema: true,
        ..Default::default()
    };
    let info = client.get_tables(cmd).await.expect("tables");
    let (_, batches) = fetch(&mut client, info).await;
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let bytes = batches[0].column(4).as_binary::<i32>().value(0).to_vec();
    let table_schema = Schema::try_from(IpcMessage(bytes.into())).expect("table schema");
    let (select_schema, _) = query(&mut client, "SELECT * FROM beacons LIMIT 0").await;
    assert_eq!(&table_schema, select_schema.as_ref());

    let cmd = CommandGetTables {
        db_schema_filter_pattern: Some("sys".into()),
        include_schema: true,
        ..Default::default()
    };
    let info = client.get_tables(cmd).await.expect("tables");
    let (_, batches) = fetch(&mut client, info).await;
    let bytes = batches[0].column(4).as_binary::<i32>().value(0).to_vec();
    let sys_schema = Schema::try_from(IpcMessage(bytes.into())).expect("table schema");
    assert_eq!(sys_schema.field(0).data_type(), &DataType::Utf8);

    let info = client.get_table_types().await.expect("table types");
    let (_, batches) = fetch(&mut client, info).await;
    let mut types: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let t = b.column(0).as_string::<i32>();
            (0..t.len())
                .map(|i| t.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    types.sort();
    assert_eq!(types, ["SYSTEM TABLE", "TABLE"]);

    let info = client
        .get_sql_info(vec![
            SqlInfo::FlightSqlServerName,
            SqlInfo::FlightSqlServerReadOnly,
        ])
        .await
        .expect("sql info");
    let (_, batches) = fetch(&mut client, info).await;
    let names: Vec<u32> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<UInt32Type>().values().to_vec())
        .collect();
    assert_eq!(
        names,
        [
            SqlInfo::FlightSqlServerName as u32,
            SqlInfo::FlightSqlServerReadOnly as u32
        ]
    );
    let text = pretty(&batches);
    assert!(text.contains("tidemark"), "{text}");

    let info = client
        .get_xdbc_type_info(Default::default())
        .await
        .expect("type info");
    let (_, batches) = fetch(&mut client, info).await;
    assert!(pretty(&batches).contains("VARCHAR"));

    let info = client
        .get_primary_keys(Default::default())
        .await
        .expect("primary keys");
    let (_, batches) = fetch(&mut client, info).await;
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
}
