//! `sys.rejects`: events that were not rolled up, with the reason, kept in a bounded table
//! (the newest `rejects_max`), and counted forever per datasource.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Bytes of a rejected beacon kept for display; the raw log holds it whole.
pub(crate) const PAYLOAD_BYTES_MAX: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectRow {
    pub datasource: String,
    pub partition: u32,
    /// Offset of the record in the partition's raw log (-1 if it never reached it).
    pub offset: i64,
    pub log_position: u64,
    pub writer_time_ms: i64,
    pub record_index: u32,
    pub code: u8,
    pub reason: String,
    pub payload: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RejectsTable {
    rows: VecDeque<RejectRow>,
    rows_max: usize,
}

impl RejectsTable {
    pub fn new(rows_max: usize) -> Self {
        RejectsTable {
            rows: VecDeque::new(),
            rows_max,
        }
    }

    pub fn set_bound(&mut self, rows_max: usize) {
        self.rows_max = rows_max;
        self.trim();
    }

    pub fn push(&mut self, row: RejectRow) {
        self.rows.push_back(row);
        self.trim();
    }

    fn trim(&mut self) {
        while self.rows.len() > self.rows_max {
            self.rows.pop_front();
        }
    }

    pub fn rows(&self) -> impl Iterator<Item = &RejectRow> {
        self.rows.iter()
    }

    /// Removes `name`'s rejects received before `cutoff_ms`; returns how many.
    pub fn remove_before(&mut self, name: &str, cutoff_ms: i64) -> usize {
        let before = self.rows.len();
        self.rows
            .retain(|r| r.datasource != name || r.writer_time_ms >= cutoff_ms);
        before - self.rows.len()
    }

    /// [`Self::count_before`] and the bytes of those rows' beacons.
    pub fn measure_before(&self, name: &str, cutoff_ms: i64) -> (u64, u64) {
        self.rows
            .iter()
            .filter(|r| r.datasource == name && r.writer_time_ms < cutoff_ms)
            .fold((0, 0), |(n, b), r| (n + 1, b + r.payload.len() as u64))
    }

    /// How many of `name`'s rejects were received before `cutoff_ms`.
    pub fn count_before(&self, name: &str, cutoff_ms: i64) -> usize {
        self.rows
            .iter()
            .filter(|r| r.datasource == name && r.writer_time_ms < cutoff_ms)
            .count()
    }

    /// Removes `name`'s rejects of the records at `records` (partition, offset), and those
    /// whose beacon `matches` (those that never reached the raw log, and, after a restart
    /// replayed a deletion whose raw rewrite was already in place, the rest); returns how
    /// many.
    pub fn remove_records(
        &mut self,
        name: &str,
        records: &std::collections::BTreeSet<(u32, i64)>,
        matches: impl Fn(&str) -> bool,
    ) -> usize {
        let before = self.rows.len();
        self.rows.retain(|r| {
            let gone = r.datasource == name
                && ((r.offset >= 0 && records.contains(&(r.partition, r.offset)))
                    || matches(&r.payload));
            !gone
        });
        before - self.rows.len()
    }

    pub fn remove_datasource(&mut self, name: &str) {
        self.rows.retain(|r| r.datasource != name);
    }
}

/// The beacon text for display, cut at a character boundary.
pub(crate) fn payload_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.len() <= PAYLOAD_BYTES_MAX {
        return text.into_owned();
    }
    let mut end = PAYLOAD_BYTES_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
