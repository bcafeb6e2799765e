//! The tidemark frame stored before each raw batch: what the node knew when it applied the
//! batch. Fetch never sends it; reprocessing reads it to honour the binding edge verdicts.
//!
//! ```text
//! version u8 = 1 | flags u8 | log_position u64 | writer_time_ms i64 | catalog_version u64
//! min_event_ms i64 | max_event_ms i64 | publisher_len u16 | publisher utf8
//! verdict_count u32 | verdict_count x (record_index u32 | code u8 | reason_len u16 | reason utf8)
//! ```
//! Little-endian. On disk it sits inside an entry `frame_len u32 | frame_crc u32 | frame |
//! batch` (see `raw/README.md`). `min_event_ms > max_event_ms` means no record had a usable
//! event time.

use crate::error::{Error, Result};

pub const FRAME_VERSION: u8 = 1;

/// A binding verdict made at the edge about one record: it holds in every replay and reindex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub record_index: u32,
    /// A stable reject code (see `tidemark_catalog::RejectReason::code`).
    pub code: u8,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The log position (Raft index) the batch came from.
    pub log_position: u64,
    /// The time the writer stamped on the entry; apply uses it instead of the local clock.
    pub writer_time_ms: i64,
    /// The catalog version (log position of the last catalog change) in force at apply.
    pub catalog_version: u64,
    pub min_event_ms: i64,
    pub max_event_ms: i64,
    /// The publisher's API key id, if the write was authenticated.
    pub publisher: Option<String>,
    pub verdicts: Vec<Verdict>,
}

impl Frame {
    pub fn has_event_times(&self) -> bool {
        self.min_event_ms <= self.max_event_ms
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(FRAME_VERSION);
        out.push(0);
        out.extend_from_slice(&self.log_position.to_le_bytes());
        out.extend_from_slice(&self.writer_time_ms.to_le_bytes());
        out.extend_from_slice(&self.catalog_version.to_le_bytes());
        out.extend_from_slice(&self.min_event_ms.to_le_bytes());
        out.extend_from_slice(&self.max_event_ms.to_le_bytes());
        let publisher = self.publisher.as_deref().unwrap_or("");
        put_str(out, publisher);
        out.extend_from_slice(&(self.verdicts.len() as u32).to_le_bytes());
        for v in &self.verdicts {
            out.extend_from_slice(&v.record_index.to_le_bytes());
            out.push(v.code);
            put_str(out, &v.reason);
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Frame> {
        let mut r = Reader { buf, pos: 0 };
        let version = r.u8()?;
        if version != FRAME_VERSION {
            return Err(Error::bad_batch(format!(
                "raw frame version {version} is newer than this node understands ({FRAME_VERSION})"
            )));
        }
        let _flags = r.u8()?;
        let log_position = r.u64()?;
        let writer_time_ms = r.u64()? as i64;
        let catalog_version = r.u64()?;
        let min_event_ms = r.u64()? as i64;
        let max_event_ms = r.u64()? as i64;
        let publisher = r.string()?;
        let count = r.u32()?;
        let mut verdicts = Vec::with_capacity(count.min(1 << 16) as usize);
        for _ in 0..count {
            let record_index = r.u32()?;
            let code = r.u8()?;
            let reason = r.string()?;
            verdicts.push(Verdict {
                record_index,
                code,
                reason,
            });
        }
        if r.pos != buf.len() {
            return Err(Error::bad_batch("raw frame has trailing bytes"));
        }
        Ok(Frame {
            log_position,
            writer_time_ms,
            catalog_version,
            min_event_ms,
            max_event_ms,
            publisher: if publisher.is_empty() {
                None
            } else {
                Some(publisher)
            },
            verdicts,
        })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Publisher ids and reasons are short; longer text is cut at a char boundary.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let b = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or_else(|| Error::bad_batch("raw frame is truncated"))?;
        self.pos += n;
        Ok(b)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn string(&mut self) -> Result<String> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        let len = u16::from_le_bytes(a) as usize;
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| Error::bad_batch("raw frame text is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(pos in any::<u64>(), wt in any::<i64>(), cv in any::<u64>(), lo in any::<i64>(), hi in any::<i64>(),
                      publisher in proptest::option::of("[a-z0-9]{1,12}"),
                      verdicts in proptest::collection::vec((any::<u32>(), any::<u8>(), ".{0,40}"), 0..5)) {
            let frame = Frame {
                log_position: pos, writer_time_ms: wt, catalog_version: cv, min_event_ms: lo, max_event_ms: hi,
                publisher,
                verdicts: verdicts.into_iter().map(|(record_index, code, reason)| Verdict { record_index, code, reason }).collect(),
            };
            let mut buf = Vec::new();
            frame.encode(&mut buf);
            prop_assert_eq!(Frame::decode(&buf).expect("decodes"), frame);
            prop_assert!(Frame::decode(&buf[..buf.len() - 1]).is_err());
        }
    }
}
