//! Raw export: a datasource's events of an interval, read from the raw log, written as Parquet
//! partitioned by UTC date (`<dir>/date=YYYY-MM-DD/part-<start>-<end>.parquet`), so Spark,
//! DuckDB or any Parquet engine can read history. Each row is one event that counts under the
//! rules in force now: its time, its dimensions as standardised, and where it came from
//! (partition, offset, log position, publisher) with the beacon exactly as received.
//!
//! The plan is taken under the engine lock (which raw batches, which rules); the files are
//! read and written off it. Batches applied after the plan are not part of the export.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, StringBuilder, TimestampMillisecondBuilder, UInt32Builder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use tidemark_catalog::DatasourceSpec;
use tidemark_catalog::event::DimValue;
use tidemark_catalog::standardise::{TagRules, standardise_json};

use super::Engine;
use crate::engine::reindex::Source;
use crate::error::{Error, Result};
use crate::raw::partition_log::read_stored;
use crate::raw::record_batch;

const DAY_MS: i64 = 86_400_000;

/// What an export reads, fixed under the engine lock.
#[derive(Debug)]
pub struct ExportPlan {
    spec: DatasourceSpec,
    rules: Option<Arc<TagRules>>,
    start_ms: i64,
    end_ms: i64,
    sources: Vec<Source>,
}

/// What an export wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    pub files: Vec<ExportedFile>,
    pub rows: u64,
    pub bytes: u64,
    /// Records in the interval's batches that do not count (refused, or failing the current
    /// rules), left out.
    pub skipped: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportedFile {
    pub path: PathBuf,
    pub date: String,
    pub rows: u64,
    pub bytes: u64,
}

impl Engine {
    /// The export of `datasource`'s events in [`start_ms`, `end_ms`) as of now.
    pub fn export_plan(&self, datasource: &str, start_ms: i64, end_ms: i64) -> Result<ExportPlan> {
        let entry = self
            .catalog
            .get(datasource)
            .filter(|e| e.deleted.is_none())
            .ok_or_else(|| Error::NotFound(format!("datasource {datasource:?} does not exist")))?;
        let ds = self
            .datasources
            .get(&entry.id)
            .ok_or_else(|| Error::NotFound(format!("datasource {datasource:?} has no data on this node")))?;
        if let Some(h) = ds.raw_horizon_ms.filter(|h| start_ms < *h) {
            return Err(Error::Invalid(format!(
                "raw retention has removed {datasource:?}'s raw events before {h} ms; export from there on"
            )));
        }
        Ok(ExportPlan {
            spec: entry.current().clone(),
            rules: self.rules.get(&self.catalog, datasource, self.applied_position),
            start_ms,
            end_ms,
            sources: ds.reindex_sources(start_ms, end_ms, self.applied_position),
        })
    }
}

/// One UTC date's rows being built.
struct DayBuilder {
    time: TimestampMillisecondBuilder,
    dims: Vec<StringBuilder>,
    partition: UInt32Builder,
    offset: Int64Builder,
    position: UInt64Builder,
    publisher: StringBuilder,
    payload: StringBuilder,
    rows: u64,
}

impl DayBuilder {
    fn new(dims: usize) -> Self {
        DayBuilder {
            time: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            dims: (0..dims).map(|_| StringBuilder::new()).collect(),
            partition: UInt32Builder::new(),
            offset: Int64Builder::new(),
            position: UInt64Builder::new(),
            publisher: StringBuilder::new(),
            payload: StringBuilder::new(),
            rows: 0,
        }
    }

    fn finish(mut self, schema: &Arc<Schema>) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = vec![Arc::new(self.time.finish())];
        columns.extend(self.dims.iter_mut().map(|d| Arc::new(d.finish()) as ArrayRef));
        columns.push(Arc::new(self.partition.finish()));
        columns.push(Arc::new(self.offset.finish()));
        columns.push(Arc::new(self.position.finish()));
        columns.push(Arc::new(self.publisher.finish()));
        columns.push(Arc::new(self.payload.finish()));
        RecordBatch::try_new(schema.clone(), columns).map_err(|e| Error::Internal(format!("export batch: {e}")))
    }
}

fn schema(spec: &DatasourceSpec) -> Arc<Schema> {
    let mut fields = vec![Field::new(
        tidemark_catalog::spec::TIME_COLUMN,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        false,
    )];
    fields.extend(spec.dimensions.iter().map(|d| Field::new(d, DataType::Utf8, true)));
    fields.push(Field::new("_partition", DataType::UInt32, false));
    fields.push(Field::new("_offset", DataType::Int64, false));
    fields.push(Field::new("_log_position", DataType::UInt64, false));
    fields.push(Field::new("_publisher", DataType::Utf8, true));
    fields.push(Field::new("_payload", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

/// `YYYY-MM-DD` of a UTC day number (days since 1970-01-01), by Howard Hinnant's algorithm.
fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Reads the plan's raw batches and writes one Parquet file per UTC date under `dir`.
pub fn run_export(plan: &ExportPlan, dir: &Path) -> Result<ExportReport> {
    let spec = &plan.spec;
    let rules = plan.rules.as_deref();
    let schema = schema(spec);
    let mut days: BTreeMap<i64, DayBuilder> = BTreeMap::new();
    let mut skipped = 0;
    for source in &plan.sources {
        let stored = read_stored(&source.file, &source.path, &source.entry)?;
        let (_, records) = record_batch::decode_records(&stored.batch)?;
        for (i, (offset, record)) in records.iter().enumerate() {
            let value = record.value.as_deref().unwrap_or_default();
            let refused = stored.frame.verdicts.iter().any(|v| v.record_index == i as u32);
            let event = match standardise_json(spec, rules, value) {
                Ok(s) if !refused => s.event,
                _ => {
                    skipped += 1;
                    continue;
                }
            };
            if event.time_ms < plan.start_ms || event.time_ms >= plan.end_ms {
                continue;
            }
            let day =
                days.entry(event.time_ms.div_euclid(DAY_MS)).or_insert_with(|| DayBuilder::new(spec.dimensions.len()));
            day.time.append_value(event.time_ms);
            for (b, v) in day.dims.iter_mut().zip(&event.dims) {
                match v {
                    Some(v) => b.append_value(dim_text(v)),
                    None => b.append_null(),
                }
            }
            day.partition.append_value(source.partition);
            day.offset.append_value(*offset);
            day.position.append_value(source.position);
            day.publisher.append_option(stored.frame.publisher.as_deref());
            day.payload.append_value(String::from_utf8_lossy(value));
            day.rows += 1;
        }
    }
    let mut report = ExportReport { files: Vec::new(), rows: 0, bytes: 0, skipped };
    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    for (day, builder) in days {
        let date = civil_date(day);
        let rows = builder.rows;
        let batch = builder.finish(&schema)?;
        let day_dir = dir.join(format!("date={date}"));
        std::fs::create_dir_all(&day_dir).map_err(Error::io(&day_dir))?;
        let path = day_dir.join(format!("part-{}-{}.parquet", plan.start_ms, plan.end_ms));
        let tmp = path.with_extension("parquet.tmp");
        let out = File::create(&tmp).map_err(Error::io(&tmp))?;
        let parquet_error =
            |e: parquet::errors::ParquetError| Error::Internal(format!("writing {}: {e}", tmp.display()));
        let mut writer = ArrowWriter::try_new(out, schema.clone(), Some(props.clone())).map_err(parquet_error)?;
        writer.write(&batch).map_err(parquet_error)?;
        writer.close().map_err(parquet_error)?;
        std::fs::rename(&tmp, &path).map_err(Error::io(&path))?;
        let bytes = std::fs::metadata(&path).map_err(Error::io(&path))?.len();
        report.rows += rows;
        report.bytes += bytes;
        report.files.push(ExportedFile { path, date, rows, bytes });
    }
    Ok(report)
}

fn dim_text(v: &DimValue<'_>) -> String {
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(1_795_651_200_000 / DAY_MS), "2026-11-26");
        assert_eq!(civil_date(-1), "1969-12-31");
        assert_eq!(civil_date(11_016), "2000-02-29");
    }
}
