//! Raw export: a datasource's events of an interval, read from the raw log, written as Parquet
//! partitioned by UTC date (`<dir>/date=YYYY-MM-DD/part-<start>-<end>.parquet`), so Spark,
//! DuckDB or any Parquet engine can read history. Each row is one event that counts under the
//! rules in force now: its time, its dimensions as standardised, and where it came from
//! (partition, offset, log position, publisher) with the beacon exactly as received.
//!
//! The plan is taken under the engine lock (which raw batches, which rules); the files are
//! read and written off it. Batches applied after the plan are not part of the export.
//!
//! An export is a copy job (`copies.rs`): each date's file streams to Parquet a batch of rows
//! at a time (memory stays bounded however long the interval), progress counts raw batches
//! read, and a cancel stops it and removes its files.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow_array::builder::{
    Int64Builder, StringBuilder, TimestampMillisecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use tidemark_catalog::DatasourceSpec;
use tidemark_catalog::event::DimValue;
use tidemark_catalog::standardise::{TagRules, standardise_json};

use super::Engine;
use super::copies::{CopyRun, Pace};
use crate::reindex::Source;
use crate::{Error, Result};
use tidemark_storage::raw::partition_log::read_stored_into;
use tidemark_storage::raw::record_batch;

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
    /// Raw batches read, and their bytes.
    pub batches: u64,
    pub bytes_read: u64,
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
            .state
            .catalog
            .get(datasource)
            .filter(|e| e.deleted.is_none())
            .ok_or_else(|| Error::NotFound(format!("datasource {datasource:?} does not exist")))?;
        let ds = self.state.datasources.get(&entry.id).ok_or_else(|| {
            Error::NotFound(format!(
                "datasource {datasource:?} has no data on this node"
            ))
        })?;
        if let Some(h) = ds.raw_horizon_ms.filter(|h| start_ms < *h) {
            return Err(Error::Invalid(format!(
                "raw retention has removed {datasource:?}'s raw events before {h} ms; export from there on"
            )));
        }
        Ok(ExportPlan {
            spec: entry.current().clone(),
            rules: self.state.rules.get(
                &self.state.catalog,
                datasource,
                self.state.applied_position,
            ),
            start_ms,
            end_ms,
            sources: ds.reindex_sources(start_ms, end_ms, self.state.applied_position),
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
        columns.extend(
            self.dims
                .iter_mut()
                .map(|d| Arc::new(d.finish()) as ArrayRef),
        );
        columns.push(Arc::new(self.partition.finish()));
        columns.push(Arc::new(self.offset.finish()));
        columns.push(Arc::new(self.position.finish()));
        columns.push(Arc::new(self.publisher.finish()));
        columns.push(Arc::new(self.payload.finish()));
        RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| Error::Internal(format!("export batch: {e}")))
    }
}

fn schema(spec: &DatasourceSpec) -> Arc<Schema> {
    let mut fields = vec![Field::new(
        tidemark_catalog::spec::TIME_COLUMN,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        false,
    )];
    fields.extend(
        spec.dimensions
            .iter()
            .map(|d| Field::new(d, DataType::Utf8, true)),
    );
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

/// Rows buffered per date before they go to its Parquet writer as one batch.
const ROWS_PER_BATCH: u64 = 64 * 1024;
/// Rows per Parquet row group: bounds what each open writer holds in memory.
const ROWS_PER_GROUP: usize = 256 * 1024;

/// One UTC date's file being written: rows buffer in `builder`, go to `writer` a batch at a
/// time, into `tmp`, renamed to `path` once every date is written.
struct DayFile {
    date: String,
    builder: DayBuilder,
    writer: ArrowWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    rows: u64,
}

impl DayFile {
    fn flush(&mut self, schema: &Arc<Schema>, dims: usize) -> Result<()> {
        let builder = std::mem::replace(&mut self.builder, DayBuilder::new(dims));
        let batch = builder.finish(schema)?;
        self.writer
            .write(&batch)
            .map_err(|e| parquet_error(&self.tmp, e))
    }
}

fn parquet_error(path: &Path, e: parquet::errors::ParquetError) -> Error {
    Error::Internal(format!("writing {}: {e}", path.display()))
}

/// Reads the plan's raw batches and writes one Parquet file per UTC date under `dir`,
/// counting progress on `run` (batches and their bytes) and pacing reads to `bytes_per_s`.
/// Files are written under temporary names carrying the job id and renamed only once all are
/// whole; a date file already in `dir` is never overwritten (the export fails, naming it). An
/// export cancelled or failing part way removes every file it created, and nothing else.
pub fn run_export(
    plan: &ExportPlan,
    dir: &Path,
    job: u64,
    run: &CopyRun,
    bytes_per_s: Option<u64>,
) -> Result<ExportReport> {
    let existed = dir.exists();
    let mut days: BTreeMap<i64, DayFile> = BTreeMap::new();
    let mut created = Vec::new();
    let report = write_days(plan, dir, job, run, bytes_per_s, &mut days, &mut created)
        .and_then(|skipped| finish_days(days, skipped, &mut created))
        .map(|mut r| {
            r.batches = plan.sources.len() as u64;
            r.bytes_read = plan
                .sources
                .iter()
                .map(|s| u64::from(s.entry.entry_len))
                .sum();
            r
        });
    if report.is_err() {
        crate::backup::remove_written(dir, &created, !existed);
    }
    report
}

/// A date file an export of [`start_ms`, `end_ms`) would write that `dir` already holds (an
/// earlier export of the same interval): checked before a job starts, and again as each file
/// is created.
pub fn existing_output(dir: &Path, start_ms: i64, end_ms: i64) -> Option<PathBuf> {
    let name = format!("part-{start_ms}-{end_ms}.parquet");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|day| day.file_name().to_string_lossy().starts_with("date="))
        .map(|day| day.path().join(&name))
        .find(|path| path.exists())
}

/// The temporary file of job `job`'s export for `path`.
fn temporary(path: &Path, job: u64) -> PathBuf {
    path.with_extension(format!("parquet.{job}.tmp"))
}

/// Removes the temporary files job `job`'s export left under `dir` (its node stopped
/// mid-export); answers how many. Date files renamed into place are whole and stay.
pub fn remove_temporary(dir: &Path, job: u64) -> usize {
    let suffix = format!(".parquet.{job}.tmp");
    let mut removed = Vec::new();
    for day in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !day.file_name().to_string_lossy().starts_with("date=") {
            continue;
        }
        for f in std::fs::read_dir(day.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.file_name().to_string_lossy().ends_with(&suffix) {
                removed.push(f.path());
            }
        }
    }
    crate::backup::remove_written(dir, &removed, false);
    removed.len()
}

/// Reads every batch into the dates' writers; answers the records skipped.
fn write_days(
    plan: &ExportPlan,
    dir: &Path,
    job: u64,
    run: &CopyRun,
    bytes_per_s: Option<u64>,
    days: &mut BTreeMap<i64, DayFile>,
    created: &mut Vec<PathBuf>,
) -> Result<u64> {
    let spec = &plan.spec;
    let rules = plan.rules.as_deref();
    let schema = schema(spec);
    let dims = spec.dimensions.len();
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROWS_PER_GROUP))
        .build();
    let progress = &run.progress;
    progress
        .batches_total
        .store(plan.sources.len() as u64, Ordering::Relaxed);
    progress.bytes_total.store(
        plan.sources
            .iter()
            .map(|s| u64::from(s.entry.entry_len))
            .sum(),
        Ordering::Relaxed,
    );
    let mut pace = Pace::new(bytes_per_s);
    let mut skipped = 0;
    let mut buf = Vec::new();
    for source in &plan.sources {
        run.check("export")?;
        let (frame, at) = read_stored_into(&source.file, &source.path, &source.entry, &mut buf)?;
        let (_, records) = record_batch::decode_records(&buf[at..])?;
        for (i, (offset, record)) in records.iter().enumerate() {
            let value = record.value.as_deref().unwrap_or_default();
            let refused = frame.verdicts.iter().any(|v| v.record_index == i as u32);
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
            let day_number = event.time_ms.div_euclid(DAY_MS);
            let day = match days.entry(day_number) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let date = civil_date(day_number);
                    let day_dir = dir.join(format!("date={date}"));
                    std::fs::create_dir_all(&day_dir).map_err(Error::io(&day_dir))?;
                    let path =
                        day_dir.join(format!("part-{}-{}.parquet", plan.start_ms, plan.end_ms));
                    if path.exists() {
                        return Err(Error::Invalid(format!(
                            "{} already exists (an earlier export?); export into a new directory or remove it",
                            path.display()
                        )));
                    }
                    let tmp = temporary(&path, job);
                    let out = File::create_new(&tmp).map_err(Error::io(&tmp))?;
                    created.push(tmp.clone());
                    let writer = ArrowWriter::try_new(out, schema.clone(), Some(props.clone()))
                        .map_err(|e| parquet_error(&tmp, e))?;
                    v.insert(DayFile {
                        date,
                        builder: DayBuilder::new(dims),
                        writer,
                        tmp,
                        path,
                        rows: 0,
                    })
                }
            };
            let b = &mut day.builder;
            b.time.append_value(event.time_ms);
            for (col, v) in b.dims.iter_mut().zip(&event.dims) {
                match v {
                    Some(v) => col.append_value(dim_text(v)),
                    None => col.append_null(),
                }
            }
            b.partition.append_value(source.partition);
            b.offset.append_value(*offset);
            b.position.append_value(source.position);
            b.publisher.append_option(frame.publisher.as_deref());
            b.payload.append_value(String::from_utf8_lossy(value));
            b.rows += 1;
            day.rows += 1;
            if b.rows >= ROWS_PER_BATCH {
                day.flush(&schema, dims)?;
            }
        }
        progress
            .events
            .store(days.values().map(|d| d.rows).sum(), Ordering::Relaxed);
        progress.rejected.store(skipped, Ordering::Relaxed);
        progress.batches_done.fetch_add(1, Ordering::Relaxed);
        let len = u64::from(source.entry.entry_len);
        run.add_bytes(len);
        pace.spend(len, run);
    }
    run.check("export")?;
    for day in days.values_mut() {
        if day.builder.rows > 0 {
            day.flush(&schema, dims)?;
        }
    }
    Ok(skipped)
}

/// Closes every date's file and renames it into place.
fn finish_days(
    days: BTreeMap<i64, DayFile>,
    skipped: u64,
    created: &mut Vec<PathBuf>,
) -> Result<ExportReport> {
    let mut closed = Vec::with_capacity(days.len());
    for (_, day) in days {
        let DayFile {
            date,
            writer,
            tmp,
            path,
            rows,
            ..
        } = day;
        writer.close().map_err(|e| parquet_error(&tmp, e))?;
        closed.push((date, tmp, path, rows));
    }
    let mut report = ExportReport {
        files: Vec::new(),
        rows: 0,
        bytes: 0,
        skipped,
        batches: 0,
        bytes_read: 0,
    };
    for (date, tmp, path, rows) in closed {
        if path.exists() {
            return Err(Error::Invalid(format!(
                "{} appeared during the export; export into a new directory",
                path.display()
            )));
        }
        std::fs::rename(&tmp, &path).map_err(Error::io(&path))?;
        created.push(path.clone());
        let bytes = std::fs::metadata(&path).map_err(Error::io(&path))?.len();
        report.rows += rows;
        report.bytes += bytes;
        report.files.push(ExportedFile {
            path,
            date,
            rows,
            bytes,
        });
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
