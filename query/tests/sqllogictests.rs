//! Runs `tests/slt/*.slt` against a fixture: a day's slice of generated merchant traffic,
//! partly persisted as segments (two shards in one hour) and partly in the realtime index,
//! plus `raw_beacons`, the same events unaggregated. Expected values are computed from
//! `raw_beacons` by DataFusion's own operators (an independent oracle), or are exact constants
//! of the fixture; sketch results are asserted as bounds.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::catalog::{MemTable, MemorySchemaProvider, SchemaProvider};
use datafusion::prelude::SessionContext;
use sqllogictest::{DBOutput, DefaultColumnType};
use tidemark_catalog::DatasourceSpec;
use tidemark_catalog::event::extract;
use tidemark_catalog::spec::DEMO_BEACONS_SPEC;
use tidemark_loadgen::{Beacon, Traffic, TrafficConfig};
use tidemark_query::SessionLimits;
use tidemark_query::scope::Scope;
use tidemark_storage::rollup::RollupIndex;
use tidemark_storage::segment::{Segment, SegmentId, table_schema, write_segment};
use tidemark_storage::snapshot::{SnapshotSource, TableSnapshot};

/// 2026-11-26T00:00:00Z
pub const FIXTURE_START_MS: i64 = 1_795_651_200_000;
const HOUR_MS: i64 = 3_600_000;
pub const FIXTURE_EVENTS: usize = 30_000;
/// The merchants a `scoped_*.slt` session may read.
const SCOPED_TENANTS: [&str; 2] = ["m00003", "m00042"];

#[derive(Debug)]
struct Fixture {
    snapshot: TableSnapshot,
}

impl SnapshotSource for Fixture {
    fn table_names(&self) -> Vec<String> {
        vec!["beacons".into()]
    }
    fn snapshot(&self, table: &str) -> Option<TableSnapshot> {
        (table == "beacons").then(|| self.snapshot.clone())
    }
    fn system_table_names(&self) -> Vec<String> {
        vec![]
    }
    fn system_table(&self, _name: &str) -> Option<RecordBatch> {
        None
    }
}

fn beacons() -> Vec<(Beacon, serde_json::Value)> {
    let mut traffic = Traffic::new(&TrafficConfig {
        seed: 7,
        merchants: 100,
        skew: 1.1,
    });
    traffic
        .batch(FIXTURE_START_MS, 3 * HOUR_MS, FIXTURE_EVENTS)
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let mut json = b.to_json();
            if i % 97 == 0 {
                // Some beacons lack a dimension: it must read as null.
                if let Some(obj) = json.as_object_mut() {
                    obj.remove("device");
                }
            }
            (b, json)
        })
        .collect()
}

fn build(dir: &Path) -> (Fixture, RecordBatch) {
    let spec = DatasourceSpec::from_json(DEMO_BEACONS_SPEC).expect("demo spec");
    let events = beacons();
    let hour = |b: &Beacon| (b.ts_ms - FIXTURE_START_MS) / HOUR_MS;
    // Hour 0 as two shards (as a late chunk would make), hour 1 as one, hour 2 in realtime.
    let mut shards = [
        RollupIndex::new(&spec),
        RollupIndex::new(&spec),
        RollupIndex::new(&spec),
    ];
    let mut realtime = RollupIndex::new(&spec);
    for (i, (b, json)) in events.iter().enumerate() {
        let e = extract(&spec, json).expect("generated beacons are valid");
        match hour(b) {
            0 => shards[i % 2].add(&e),
            1 => shards[2].add(&e),
            _ => realtime.add(&e),
        }
    }
    let mut segments = Vec::new();
    for (i, idx) in shards.iter().enumerate() {
        let h = if i < 2 { 0 } else { 1 };
        let id = SegmentId {
            datasource: "beacons".into(),
            interval_start_ms: FIXTURE_START_MS + h * HOUR_MS,
            interval_end_ms: FIXTURE_START_MS + (h + 1) * HOUR_MS,
            version: "v1".into(),
            shard: (i % 2) as u32,
        };
        let path = dir.join(format!("{id}.seg"));
        write_segment(&path, id, &spec, idx).expect("write segment");
        segments.push(Arc::new(Segment::open(&path).expect("open segment")));
    }
    let schema = Arc::new(table_schema(&spec));
    let rt = realtime
        .to_record_batch(&spec, schema)
        .expect("realtime batch");
    let snapshot = TableSnapshot {
        spec,
        log_position: 1,
        segments,
        realtime: vec![rt],
        unreadable: vec![],
    };

    let raw_schema = Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("merchant_id", DataType::Utf8, false),
        Field::new("app", DataType::Utf8, false),
        Field::new("event", DataType::Utf8, false),
        Field::new("page", DataType::Utf8, false),
        Field::new("country", DataType::Utf8, false),
        Field::new("device", DataType::Utf8, true),
        Field::new("user_id", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, true),
        Field::new("latency_ms", DataType::Float64, false),
    ]));
    let col = |f: &dyn Fn(&Beacon) -> String| {
        StringArray::from_iter_values(events.iter().map(|(b, _)| f(b)))
    };
    let raw = RecordBatch::try_new(
        raw_schema,
        vec![
            Arc::new(
                TimestampMillisecondArray::from_iter_values(events.iter().map(|(b, _)| b.ts_ms))
                    .with_timezone("UTC"),
            ),
            Arc::new(col(&|b| b.merchant_id.clone())),
            Arc::new(col(&|b| b.app.to_string())),
            Arc::new(col(&|b| b.event.to_string())),
            Arc::new(col(&|b| b.page.clone())),
            Arc::new(col(&|b| b.country.to_string())),
            Arc::new(StringArray::from_iter(events.iter().map(|(b, json)| {
                json.get("device").map(|_| b.device.to_string())
            }))),
            Arc::new(col(&|b| b.user_id.clone())),
            Arc::new(Float64Array::from_iter(
                events.iter().map(|(b, _)| b.amount),
            )),
            Arc::new(Float64Array::from_iter_values(
                events.iter().map(|(b, _)| b.latency_ms),
            )),
        ],
    )
    .expect("raw batch");
    (Fixture { snapshot }, raw)
}

struct Db {
    ctx: SessionContext,
}

#[derive(Debug)]
struct DbError(String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for DbError {}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Db {
    type Error = DbError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        let df = tidemark_query::sql(&self.ctx, sql)
            .await
            .map_err(|e| DbError(e.to_string()))?;
        let batches = df.collect().await.map_err(|e| DbError(e.to_string()))?;
        let mut rows = Vec::new();
        let mut types = Vec::new();
        for batch in &batches {
            if types.is_empty() {
                types = batch
                    .schema()
                    .fields()
                    .iter()
                    .map(|_| DefaultColumnType::Any)
                    .collect();
            }
            for r in 0..batch.num_rows() {
                let mut row = Vec::with_capacity(batch.num_columns());
                for c in batch.columns() {
                    row.push(if c.is_null(r) {
                        "NULL".to_string()
                    } else {
                        array_value_to_string(c, r).map_err(|e| DbError(e.to_string()))?
                    });
                }
                rows.push(row);
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fixture, raw) = build(dir.path());
    let source: Arc<dyn SnapshotSource> = Arc::new(fixture);
    let files = {
        let mut f: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/slt"))
            .expect("slt dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "slt"))
            .collect();
        f.sort();
        f
    };
    let (mut passed, mut failed) = (0usize, 0usize);
    for file in &files {
        let source = source.clone();
        let raw = raw.clone();
        // Files named scoped_* run as a merchant reader of two merchants.
        let scope = if file
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("scoped_"))
        {
            Scope::tenants(SCOPED_TENANTS.iter().map(|t| t.to_string()))
        } else {
            Scope::All
        };
        let mut runner = sqllogictest::Runner::new(move || {
            let ctx = tidemark_query::new_session_with(
                source.clone(),
                SessionLimits::default(),
                scope.clone(),
            );
            let raw_table =
                MemTable::try_new(raw.schema(), vec![vec![raw.clone()]]).expect("raw table");
            let fixture = Arc::new(MemorySchemaProvider::new());
            fixture
                .register_table("raw_beacons".into(), Arc::new(raw_table))
                .expect("register raw");
            if let Some(catalog) = ctx.catalog(tidemark_query::CATALOG) {
                catalog
                    .register_schema("fixture", fixture)
                    .expect("register fixture schema");
            }
            async move { Ok::<_, DbError>(Db { ctx }) }
        });
        runner.with_column_validator(sqllogictest::default_column_validator);
        match runner.run_file_async(file).await {
            Ok(()) => {
                println!("ok      {}", file.display());
                passed += 1;
            }
            Err(e) => {
                println!("FAILED  {}\n{e}", file.display());
                failed += 1;
            }
        }
    }
    let checks = [
        (
            "explain shows segment pruning",
            explain_shows_pruning(source.clone()).await,
        ),
        (
            "a scoped EXPLAIN counts only the scope's segments and rows",
            scoped_explain_counts_only_scoped_rows(source.clone()).await,
        ),
        (
            "a scoped answer's dictionaries and IPC bytes hold only the scope's values",
            scoped_answers_hold_only_scoped_values(source.clone()).await,
        ),
    ];
    for (name, result) in checks {
        match result {
            Ok(()) => {
                println!("ok      {name}");
                passed += 1;
            }
            Err(e) => {
                println!("FAILED  {name}: {e}");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 || passed == 0 {
        std::process::exit(1);
    }
}

/// `EXPLAIN` names what the scan pruned: a one-hour filter keeps the one segment of hour 1
/// (the two shards of hour 0 go by time) and a page filter narrows rows by bitmap.
async fn explain_shows_pruning(source: Arc<dyn SnapshotSource>) -> Result<(), String> {
    let ctx = tidemark_query::new_session(source);
    let df = tidemark_query::sql(
        &ctx,
        "EXPLAIN SELECT SUM(\"count\") FROM beacons WHERE __time >= TIMESTAMP '2026-11-26T01:00:00Z' \
         AND __time < TIMESTAMP '2026-11-26T02:00:00Z' AND page = '/checkout'",
    )
    .await
    .map_err(|e| e.to_string())?;
    let batches = df.collect().await.map_err(|e| e.to_string())?;
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
        .map_err(|e| e.to_string())?
        .to_string();
    for needle in [
        "TidemarkScanExec: datasource=beacons",
        "segments=1/3 (pruned by time: 2, by bitmap: 0)",
        "pruning=[__time=[2026-11-26T01:00:00.000Z, 2026-11-26T02:00:00.000Z) AND page IN ('/checkout')]",
    ] {
        if !text.contains(needle) {
            return Err(format!("plan lacks {needle:?}:\n{text}"));
        }
    }
    // Rows read are the bitmap's selection, far fewer than the segment holds.
    let read = text
        .split("segment_rows=")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .and_then(|n| n.parse::<u64>().ok());
    match read {
        Some(n) if n > 0 && n < 2000 => Ok(()),
        other => Err(format!(
            "expected a small bitmap selection, read {other:?}:\n{text}"
        )),
    }
}

/// `EXPLAIN` of a scoped session reports the scope's rows, not the table's: its row counts equal
/// the scoped rows (computed from the segments' own rows of those merchants), so the size of
/// other merchants' data never shows.
async fn scoped_explain_counts_only_scoped_rows(
    source: Arc<dyn SnapshotSource>,
) -> Result<(), String> {
    let all = tidemark_query::new_session(source.clone());
    let in_scope = format!("merchant_id IN ('{}')", SCOPED_TENANTS.join("', '"));
    // Segment rows (hours 0 and 1) of the two merchants, read by an unscoped session.
    let rows = collect_text(
        &all,
        &format!("SELECT COUNT(*) FROM beacons WHERE {in_scope} AND __time < TIMESTAMP '2026-11-26T02:00:00Z'"),
    )
    .await?;
    let realtime = collect_text(
        &all,
        &format!("SELECT COUNT(*) FROM beacons WHERE {in_scope} AND __time >= TIMESTAMP '2026-11-26T02:00:00Z'"),
    )
    .await?;
    let scoped = tidemark_query::new_session_with(
        source,
        SessionLimits::default(),
        Scope::tenants(SCOPED_TENANTS.iter().map(|t| t.to_string())),
    );
    let plan = collect_text(&scoped, "EXPLAIN SELECT SUM(\"count\") FROM beacons").await?;
    for needle in [
        format!("segment_rows={}/{}", rows.trim(), rows.trim()),
        format!("realtime_rows={}", realtime.trim()),
    ] {
        if !plan.contains(&needle) {
            return Err(format!("plan lacks {needle:?}:\n{plan}"));
        }
    }
    Ok(())
}

/// A scoped session's answer, as batches and as the Arrow IPC stream `POST /v1/sql` writes
/// from them, holds no value of rows outside the scope: every dictionary value is one that the
/// scope's own rows hold (read by an unscoped session), and no other merchant's id appears
/// anywhere in the bytes. Dimension columns come from segments (hours 0 and 1) and the
/// realtime index (hour 2) alike.
async fn scoped_answers_hold_only_scoped_values(
    source: Arc<dyn SnapshotSource>,
) -> Result<(), String> {
    use std::collections::{BTreeMap, BTreeSet};

    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::ipc::writer::StreamWriter;
    let all = tidemark_query::new_session(source.clone());
    let in_scope = format!("merchant_id IN ('{}')", SCOPED_TENANTS.join("', '"));
    let mut allowed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for dim in ["merchant_id", "app", "event", "page", "country", "device"] {
        let sql = format!(
            "SELECT DISTINCT CAST({dim} AS VARCHAR) FROM beacons WHERE {in_scope} AND {dim} IS NOT NULL"
        );
        let batches = tidemark_query::sql(&all, &sql)
            .await
            .map_err(|e| e.to_string())?
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        let values = allowed.entry(dim.to_string()).or_default();
        for b in &batches {
            for row in 0..b.num_rows() {
                values.insert(array_value_to_string(b.column(0), row).map_err(|e| e.to_string())?);
            }
        }
    }
    let scoped = tidemark_query::new_session_with(
        source,
        SessionLimits::default(),
        Scope::tenants(SCOPED_TENANTS.iter().map(|t| t.to_string())),
    );
    for sql in [
        "SELECT merchant_id, app, event, page, country, device FROM beacons",
        "SELECT merchant_id, page FROM beacons LIMIT 1",
        "SELECT * FROM beacons WHERE __time >= TIMESTAMP '2026-11-26T02:00:00Z' LIMIT 3",
        "SELECT * FROM beacons WHERE __time < TIMESTAMP '2026-11-26T02:00:00Z' LIMIT 3",
    ] {
        let batches = tidemark_query::sql(&scoped, sql)
            .await
            .map_err(|e| e.to_string())?
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        let schema = batches
            .first()
            .ok_or(format!("{sql}: no batches"))?
            .schema();
        for batch in &batches {
            for (field, column) in schema.fields().iter().zip(batch.columns()) {
                let Some(dict) = column.as_any_dictionary_opt() else {
                    continue;
                };
                let ok = allowed
                    .get(field.name())
                    .ok_or(format!("{sql}: unexpected dictionary {}", field.name()))?;
                for i in 0..dict.values().len() {
                    let v = array_value_to_string(dict.values(), i).map_err(|e| e.to_string())?;
                    if !ok.contains(&v) {
                        return Err(format!(
                            "{sql}: column {}'s dictionary holds {v:?}, no row of the scope's",
                            field.name()
                        ));
                    }
                }
            }
        }
        let mut ipc = Vec::new();
        let mut writer = StreamWriter::try_new(&mut ipc, &schema).map_err(|e| e.to_string())?;
        for batch in &batches {
            writer.write(batch).map_err(|e| e.to_string())?;
        }
        writer.finish().map_err(|e| e.to_string())?;
        drop(writer);
        let text = String::from_utf8_lossy(&ipc);
        for m in (0..100)
            .map(|i| format!("m{i:05}"))
            .filter(|m| !SCOPED_TENANTS.contains(&m.as_str()))
        {
            if text.contains(&m) {
                return Err(format!("{sql}: the Arrow IPC answer names merchant {m}"));
            }
        }
    }
    Ok(())
}

/// The first column of the first row, as text (or the pretty-printed plan for EXPLAIN).
async fn collect_text(ctx: &SessionContext, sql: &str) -> Result<String, String> {
    let batches = tidemark_query::sql(ctx, sql)
        .await
        .map_err(|e| e.to_string())?
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    if sql.starts_with("EXPLAIN") {
        return datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .map(|t| t.to_string())
            .map_err(|e| e.to_string());
    }
    let batch = batches.first().ok_or("no rows")?;
    array_value_to_string(batch.column(0), 0).map_err(|e| e.to_string())
}
