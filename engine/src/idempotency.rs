//! The idempotency window: an `Idempotency-Key` (scoped to a datasource and, from command
//! format 6 on, to the publisher's key) makes a retried batch count once and get the original
//! answer; the same key with a different body is a conflict. One publisher's keys therefore
//! never refuse or stand in for another's.
//!
//! A scoped key is stored as `scope NUL key`: NUL cannot occur in an HTTP header value, so it
//! never equals an unscoped key (those of older entries), and checkpoints keep their form.
//!
//! Invariant: expiry uses the writer time stamped on log entries, never the local clock, so
//! every replica (and every replay) keeps and forgets the same keys.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// What a batch's apply answered; replayed to a retry with the same key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome {
    pub accepted: u32,
    /// Rejected request lines, ascending.
    pub rejected: Vec<RejectedLine>,
    /// Where each part was stored.
    pub parts: Vec<PartOutcome>,
    pub log_position: u64,
    /// Keys that are not tags of the datasource's governance domain, left out of the events
    /// that carried them (the `drop` policy), in the order first met; at most
    /// [`DROPPED_TAGS_LISTED`] distinct keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped_tags: Vec<DroppedTagCount>,
}

pub const DROPPED_TAGS_LISTED: usize = 100;

/// One key dropped from a batch's events, how many events carried it, and what to tell the
/// publisher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedTagCount {
    pub tag: String,
    pub count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartOutcome {
    pub partition: u32,
    pub base_offset: i64,
    pub last_offset: i64,
    /// The batch was a retry an idempotent producer already stored: offsets are the original's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// The part was refused at apply; nothing of it was stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<PartError>,
}

/// Why apply refused one part of an entry. Decided from the entry's bytes and applied state
/// only, so every replica refuses the same parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartError {
    /// The idempotent producer's epoch or sequence does not fit (see `producers`).
    Sequence(crate::producers::SequenceError),
    /// The batch's records do not decode (bad framing, bad compression, over the size cap).
    CorruptBatch { reason: String },
}

impl std::fmt::Display for PartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartError::Sequence(e) => e.fmt(f),
            PartError::CorruptBatch { reason } => write!(f, "corrupt batch: {reason}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedLine {
    pub index: u32,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    pub body_hash: u64,
    pub writer_time_ms: i64,
    pub outcome: BatchOutcome,
}

/// What the window says about a batch with a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    New,
    /// A retry of a batch already applied: answer with its outcome, apply nothing.
    Retry(BatchOutcome),
    /// The key was used for a different body.
    Conflict,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(into = "WindowRecord", from = "WindowRecord")]
pub struct IdempotencyWindow {
    window_ms: i64,
    keys_max: usize,
    entries: BTreeMap<(String, String), Remembered>,
    /// Keys in the order they were remembered (writer time is monotonic), for expiry.
    order: VecDeque<(i64, String, String)>,
}

/// The on-disk form: JSON maps need string keys, so entries travel as a list.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WindowRecord {
    window_ms: i64,
    keys_max: usize,
    entries: Vec<(String, String, Remembered)>,
    order: VecDeque<(i64, String, String)>,
}

impl From<IdempotencyWindow> for WindowRecord {
    fn from(w: IdempotencyWindow) -> Self {
        WindowRecord {
            window_ms: w.window_ms,
            keys_max: w.keys_max,
            entries: w
                .entries
                .into_iter()
                .map(|((ds, k), r)| (ds, k, r))
                .collect(),
            order: w.order,
        }
    }
}

impl From<WindowRecord> for IdempotencyWindow {
    fn from(r: WindowRecord) -> Self {
        IdempotencyWindow {
            window_ms: r.window_ms,
            keys_max: r.keys_max,
            entries: r
                .entries
                .into_iter()
                .map(|(ds, k, v)| ((ds, k), v))
                .collect(),
            order: r.order,
        }
    }
}

impl IdempotencyWindow {
    pub fn new(window_ms: i64, keys_max: usize) -> Self {
        IdempotencyWindow {
            window_ms,
            keys_max,
            entries: BTreeMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn set_bounds(&mut self, window_ms: i64, keys_max: usize) {
        self.window_ms = window_ms;
        self.keys_max = keys_max;
    }

    /// A scoped key not seen in its scope may still be a retry of a batch an older release
    /// remembered unscoped (before an upgrade, within the window): the same body under the
    /// same key is that retry; another body is new, since it may come from another publisher.
    pub fn check(&self, datasource: &str, scope: Option<&str>, key: &str, body_hash: u64) -> Seen {
        let ds = datasource.to_string();
        match self.entries.get(&(ds.clone(), scoped(scope, key))) {
            Some(r) if r.body_hash == body_hash => Seen::Retry(r.outcome.clone()),
            Some(_) => Seen::Conflict,
            None if scope.is_none() => Seen::New,
            None => match self.entries.get(&(ds, key.to_string())) {
                Some(r) if r.body_hash == body_hash => Seen::Retry(r.outcome.clone()),
                _ => Seen::New,
            },
        }
    }

    pub fn remember(
        &mut self,
        datasource: &str,
        scope: Option<&str>,
        key: &str,
        body_hash: u64,
        writer_time_ms: i64,
        outcome: BatchOutcome,
    ) {
        let k = (datasource.to_string(), scoped(scope, key));
        self.order
            .push_back((writer_time_ms, k.0.clone(), k.1.clone()));
        self.entries.insert(
            k,
            Remembered {
                body_hash,
                writer_time_ms,
                outcome,
            },
        );
    }

    /// Forgets keys older than the window at writer time `now_ms`, and the oldest beyond the bound.
    pub fn expire(&mut self, now_ms: i64) {
        while let Some((t, ds, key)) = self.order.front() {
            let too_old = *t < now_ms.saturating_sub(self.window_ms);
            if !too_old && self.order.len() <= self.keys_max {
                break;
            }
            let k = (ds.clone(), key.clone());
            if self.entries.get(&k).is_some_and(|r| r.writer_time_ms == *t) {
                self.entries.remove(&k);
            }
            self.order.pop_front();
        }
    }

    pub fn remove_datasource(&mut self, name: &str) {
        self.entries.retain(|(ds, _), _| ds != name);
        self.order.retain(|(_, ds, _)| ds != name);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The window's key for `key` within `scope` (see the module doc).
fn scoped(scope: Option<&str>, key: &str) -> String {
    match scope {
        None => key.to_string(),
        Some(s) => format!("{s}\0{key}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_conflicts_and_expiry_follow_writer_time() {
        let mut w = IdempotencyWindow::new(1000, 10);
        let out = BatchOutcome {
            accepted: 3,
            ..BatchOutcome::default()
        };
        assert_eq!(w.check("ds", None, "k", 1), Seen::New);
        w.remember("ds", None, "k", 1, 100, out.clone());
        assert_eq!(w.check("ds", None, "k", 1), Seen::Retry(out));
        assert_eq!(w.check("ds", None, "k", 2), Seen::Conflict);
        assert_eq!(
            w.check("other", None, "k", 2),
            Seen::New,
            "keys are scoped to a datasource"
        );
        w.expire(1100);
        assert_eq!(w.len(), 1);
        w.expire(1101);
        assert_eq!(w.check("ds", None, "k", 1), Seen::New);
    }

    #[test]
    fn publishers_keys_never_meet_and_unscoped_keys_stay_shared() {
        let mut w = IdempotencyWindow::new(1000, 10);
        let a = BatchOutcome {
            accepted: 1,
            ..BatchOutcome::default()
        };
        let b = BatchOutcome {
            accepted: 2,
            ..BatchOutcome::default()
        };
        w.remember("ds", Some("aaaaaaaaaaaa"), "k", 1, 100, a.clone());
        assert_eq!(
            w.check("ds", Some("bbbbbbbbbbbb"), "k", 2),
            Seen::New,
            "another publisher's key is free"
        );
        w.remember("ds", Some("bbbbbbbbbbbb"), "k", 2, 101, b.clone());
        assert_eq!(w.check("ds", Some("aaaaaaaaaaaa"), "k", 1), Seen::Retry(a));
        assert_eq!(w.check("ds", Some("bbbbbbbbbbbb"), "k", 2), Seen::Retry(b));
        assert_eq!(
            w.check("ds", None, "k", 1),
            Seen::New,
            "an unscoped key (older entries) is its own"
        );
        // A batch an older release remembered unscoped: its retry by body is still a retry,
        // another body under that key is new (it may be another publisher's).
        let old = BatchOutcome {
            accepted: 9,
            ..BatchOutcome::default()
        };
        w.remember("ds", None, "legacy", 5, 102, old.clone());
        assert_eq!(
            w.check("ds", Some("aaaaaaaaaaaa"), "legacy", 5),
            Seen::Retry(old)
        );
        assert_eq!(w.check("ds", Some("aaaaaaaaaaaa"), "legacy", 6), Seen::New);
        // The checkpoint form is unchanged: a window written before scopes reads back.
        let old = r#"{"window_ms":1000,"keys_max":10,"entries":[["ds","k",{"body_hash":7,"writer_time_ms":5,"outcome":{"accepted":4,"rejected":[],"parts":[],"log_position":9}}]],"order":[[5,"ds","k"]]}"#;
        let read: IdempotencyWindow =
            serde_json::from_str(old).expect("an older checkpoint's window");
        assert!(matches!(read.check("ds", None, "k", 7), Seen::Retry(o) if o.accepted == 4));
    }
}
