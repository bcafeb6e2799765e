//! Kafka RecordBatch v2 (magic 2): the raw log's unit of storage, written and read as Kafka
//! defines it (KIP-98), so stored bytes can be served to Kafka consumers unchanged.
//!
//! Written by hand rather than with `kafka-protocol`'s encoder because the raw log works on
//! the stored bytes themselves: it patches the base offset in place (it is outside the CRC,
//! which is why Kafka can do the same) and checks the CRC without decoding records.
//!
//! ```text
//!  0 baseOffset i64 | 8 batchLength i32 | 12 partitionLeaderEpoch i32 | 16 magic i8 = 2
//! 17 crc u32 (CRC32C of bytes 21..end) | 21 attributes i16 | 23 lastOffsetDelta i32
//! 27 baseTimestamp i64 | 35 maxTimestamp i64 | 43 producerId i64 | 51 producerEpoch i16
//! 53 baseSequence i32 | 57 recordCount i32 | 61 records...
//! ```
//! All header integers are big-endian; record fields are zigzag varints.

use crate::error::{Error, Result};
use crate::raw::compression;

pub const HEADER_LEN: usize = 61;
/// Bytes before `batchLength`'s count starts: baseOffset + batchLength.
pub const LOG_OVERHEAD: usize = 12;
const CRC_START: usize = 21;
pub const MAGIC: i8 = 2;

/// One record as produced: key, value, headers and its timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// The fixed header of a batch, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    pub fn compression(&self) -> u8 {
        (self.attributes & 0x07) as u8
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }

    /// Total bytes of the batch including baseOffset and batchLength.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    i32::from_be_bytes(a)
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads the batch length from the first 12 bytes, to know how many bytes a batch takes.
pub fn peek_total_len(prefix: &[u8]) -> Result<usize> {
    if prefix.len() < LOG_OVERHEAD {
        return Err(Error::bad_batch(format!(
            "{} bytes is too short for a batch header",
            prefix.len()
        )));
    }
    let len = be_i32(prefix, 8);
    if len < (HEADER_LEN - LOG_OVERHEAD) as i32 {
        return Err(Error::bad_batch(format!(
            "batchLength {len} is shorter than a v2 header"
        )));
    }
    Ok(LOG_OVERHEAD + len as usize)
}

/// Decodes and checks a whole batch: length, magic and CRC32C.
pub fn parse_header(batch: &[u8]) -> Result<BatchHeader> {
    let total = peek_total_len(batch)?;
    if batch.len() != total {
        return Err(Error::bad_batch(format!(
            "batchLength says {total} bytes but {} were given",
            batch.len()
        )));
    }
    let magic = batch[16] as i8;
    if magic != MAGIC {
        return Err(Error::bad_batch(format!(
            "magic {magic} is not supported; only RecordBatch v2 (magic 2)"
        )));
    }
    let crc = be_i32(batch, 17) as u32;
    let actual = crc32c::crc32c(&batch[CRC_START..]);
    if crc != actual {
        return Err(Error::bad_batch(format!(
            "CRC32C mismatch: header says {crc:#010x}, bytes give {actual:#010x}"
        )));
    }
    let header = BatchHeader {
        base_offset: be_i64(batch, 0),
        batch_length: be_i32(batch, 8),
        partition_leader_epoch: be_i32(batch, 12),
        crc,
        attributes: be_i16(batch, 21),
        last_offset_delta: be_i32(batch, 23),
        base_timestamp: be_i64(batch, 27),
        max_timestamp: be_i64(batch, 35),
        producer_id: be_i64(batch, 43),
        producer_epoch: be_i16(batch, 51),
        base_sequence: be_i32(batch, 53),
        record_count: be_i32(batch, 57),
    };
    if header.record_count < 0 || header.last_offset_delta < 0 {
        return Err(Error::bad_batch(
            "negative record count or last offset delta",
        ));
    }
    Ok(header)
}

/// Sets the base offset in place. The CRC does not cover it, so the batch stays valid.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Recomputes the batch CRC after the bytes it covers (attributes onward) were changed.
pub fn refresh_crc(batch: &mut [u8]) {
    if batch.len() < HEADER_LEN {
        return;
    }
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Sets the idempotent producer fields of a batch in place and recomputes its CRC (the load
/// tool resends one prepared batch under fresh sequence numbers without recompressing it).
pub fn restamp_producer(
    batch: &mut [u8],
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) {
    if batch.len() < HEADER_LEN {
        return;
    }
    batch[43..51].copy_from_slice(&producer_id.to_be_bytes());
    batch[51..53].copy_from_slice(&producer_epoch.to_be_bytes());
    batch[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    refresh_crc(batch);
}

/// Sets the partition leader epoch in place (also outside the CRC).
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[12..16].copy_from_slice(&epoch.to_be_bytes());
}

/// Builds an uncompressed batch of `records` with base offset 0 and no producer id.
pub fn encode(records: &[Record]) -> Vec<u8> {
    encode_with_producer(records, -1, -1, -1)
}

pub fn encode_with_producer(
    records: &[Record],
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) -> Vec<u8> {
    let base_ts = records.iter().map(|r| r.timestamp_ms).min().unwrap_or(-1);
    let max_ts = records.iter().map(|r| r.timestamp_ms).max().unwrap_or(-1);
    let mut out = Vec::with_capacity(HEADER_LEN + records.len() * 64);
    out.extend_from_slice(&0i64.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes()); // batchLength, patched below
    out.extend_from_slice(&0i32.to_be_bytes()); // partitionLeaderEpoch
    out.push(MAGIC as u8);
    out.extend_from_slice(&0u32.to_be_bytes()); // crc, patched below
    out.extend_from_slice(&0i16.to_be_bytes()); // attributes: no compression, CreateTime
    out.extend_from_slice(&(records.len().saturating_sub(1) as i32).to_be_bytes());
    out.extend_from_slice(&base_ts.to_be_bytes());
    out.extend_from_slice(&max_ts.to_be_bytes());
    out.extend_from_slice(&producer_id.to_be_bytes());
    out.extend_from_slice(&producer_epoch.to_be_bytes());
    out.extend_from_slice(&base_sequence.to_be_bytes());
    out.extend_from_slice(&(records.len() as i32).to_be_bytes());
    let mut body = Vec::with_capacity(64);
    for (i, r) in records.iter().enumerate() {
        body.clear();
        body.push(0); // record attributes
        put_varlong(&mut body, r.timestamp_ms - base_ts);
        put_varint(&mut body, i as i32);
        put_bytes(&mut body, r.key.as_deref());
        put_bytes(&mut body, r.value.as_deref());
        put_varint(&mut body, r.headers.len() as i32);
        for (k, v) in &r.headers {
            put_bytes(&mut body, Some(k.as_bytes()));
            put_bytes(&mut body, v.as_deref());
        }
        put_varint(&mut out, body.len() as i32);
        out.extend_from_slice(&body);
    }
    let batch_len = (out.len() - LOG_OVERHEAD) as i32;
    out[8..12].copy_from_slice(&batch_len.to_be_bytes());
    refresh_crc(&mut out);
    out
}

/// Decompressed record sections larger than this are refused at apply. The edge refuses far
/// smaller ones first (its configurable limit), so this only guards against a hostile log.
pub const DECOMPRESSED_BYTES_CEILING: usize = 1 << 30;

/// The smallest encoded record: length, attributes, timestamp delta, offset delta, key, value
/// and header count, one byte each. Bounds how many records a section can hold.
const MIN_RECORD_BYTES: usize = 7;

/// Decodes the records of a stored batch, decompressing its record section if it is
/// compressed. Offsets are `base_offset + offsetDelta`. A stored batch may have gaps (records
/// a deletion took out, as after Kafka's compaction): offset deltas only have to increase
/// and stay within `lastOffsetDelta`.
pub fn decode_records(batch: &[u8]) -> Result<(BatchHeader, Vec<(i64, Record)>)> {
    decode(batch, DECOMPRESSED_BYTES_CEILING, false)
}

/// Decodes a produced batch, refusing a record section that decompresses to more than `cap`
/// bytes. Also checks what Kafka's broker checks of a produced batch: the records are
/// numbered 0, 1, 2, ... and `lastOffsetDelta` is the last of them, so offsets stay dense.
pub fn decode_records_capped(
    batch: &[u8],
    cap: usize,
) -> Result<(BatchHeader, Vec<(i64, Record)>)> {
    decode(batch, cap, true)
}

fn decode(batch: &[u8], cap: usize, dense: bool) -> Result<(BatchHeader, Vec<(i64, Record)>)> {
    let header = parse_header(batch)?;
    let section = &batch[HEADER_LEN..];
    let inflated;
    let body = if header.compression() == compression::NONE {
        section
    } else {
        inflated = compression::decompress(header.compression(), section, cap)?;
        &inflated[..]
    };
    let mut cur = Cursor { buf: body, pos: 0 };
    let count = header.record_count as usize;
    if count > body.len() / MIN_RECORD_BYTES + 1 {
        return Err(Error::bad_batch(format!(
            "recordCount {count} cannot fit in a record section of {} bytes",
            body.len()
        )));
    }
    if (dense && header.last_offset_delta as usize + 1 != count.max(1))
        || header.last_offset_delta < 0
        || count > header.last_offset_delta as usize + 1
    {
        return Err(Error::bad_batch(format!(
            "lastOffsetDelta {} does not match recordCount {count}",
            header.last_offset_delta
        )));
    }
    let mut previous_delta = -1i32;
    let mut records = Vec::with_capacity(count);
    for i in 0..count {
        let len = cur.varint()?;
        if len < 0 {
            return Err(Error::bad_batch("negative record length"));
        }
        let end = cur.pos + len as usize;
        if end > cur.buf.len() {
            return Err(Error::bad_batch("record runs past the end of the batch"));
        }
        cur.pos += 1; // record attributes, unused
        let ts_delta = cur.varlong()?;
        let offset_delta = cur.varint()?;
        if dense && offset_delta as usize != i {
            return Err(Error::bad_batch(format!(
                "record {i} has offset delta {offset_delta}; expected {i}"
            )));
        }
        if offset_delta <= previous_delta || offset_delta > header.last_offset_delta {
            return Err(Error::bad_batch(format!(
                "record {i} has offset delta {offset_delta} after {previous_delta} (lastOffsetDelta {})",
                header.last_offset_delta
            )));
        }
        previous_delta = offset_delta;
        let key = cur.bytes()?;
        let value = cur.bytes()?;
        let header_count = cur.varint()?;
        if header_count < 0 || header_count as usize > end.saturating_sub(cur.pos) {
            return Err(Error::bad_batch(format!(
                "record {i} declares {header_count} headers that cannot fit"
            )));
        }
        let mut headers = Vec::with_capacity(header_count as usize);
        for _ in 0..header_count {
            let k = cur
                .bytes()?
                .ok_or_else(|| Error::bad_batch("null header key"))?;
            let k =
                String::from_utf8(k).map_err(|_| Error::bad_batch("header key is not UTF-8"))?;
            headers.push((k, cur.bytes()?));
        }
        if cur.pos != end {
            return Err(Error::bad_batch("record length does not match its fields"));
        }
        records.push((
            header.base_offset + i64::from(offset_delta),
            Record {
                timestamp_ms: header.base_timestamp + ts_delta,
                key,
                value,
                headers,
            },
        ));
    }
    Ok((header, records))
}

/// Builds a batch of `records` whose record section is compressed with `codec` (see
/// [`compression`]); the load tool and tests use it to produce what Kafka clients send.
pub fn encode_compressed(
    records: &[Record],
    codec: u8,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) -> Result<Vec<u8>> {
    let plain = encode_with_producer(records, producer_id, producer_epoch, base_sequence);
    if codec == compression::NONE {
        return Ok(plain);
    }
    let packed = compression::compress(codec, &plain[HEADER_LEN..])?;
    let mut out = Vec::with_capacity(HEADER_LEN + packed.len());
    out.extend_from_slice(&plain[..HEADER_LEN]);
    out.extend_from_slice(&packed);
    let attributes = i16::from(codec);
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    let batch_len = (out.len() - LOG_OVERHEAD) as i32;
    out[8..12].copy_from_slice(&batch_len.to_be_bytes());
    refresh_crc(&mut out);
    Ok(out)
}

/// Rebuilds a stored batch keeping only the records at `keep` (indexes into its decoded
/// records, increasing): each keeps its offset delta, so offsets do not move and the dropped
/// ones become gaps, as Kafka's log compaction leaves them. The header (base offset,
/// `lastOffsetDelta`, timestamps, producer id, epoch and base sequence, attributes) is kept;
/// the record section is compressed again with the batch's own codec. Keeping nothing
/// leaves an empty batch, which Kafka also keeps so the offsets it covered stay accounted for.
pub fn retain_records(batch: &[u8], keep: &[usize]) -> Result<Vec<u8>> {
    let (header, records) = decode_records(batch)?;
    let mut body = Vec::with_capacity(batch.len());
    let mut record = Vec::with_capacity(64);
    for &i in keep {
        let (offset, r) = records.get(i).ok_or_else(|| {
            Error::bad_batch(format!(
                "record {i} is past the batch's {} records",
                records.len()
            ))
        })?;
        record.clear();
        record.push(0);
        put_varlong(&mut record, r.timestamp_ms - header.base_timestamp);
        put_varint(&mut record, (offset - header.base_offset) as i32);
        put_bytes(&mut record, r.key.as_deref());
        put_bytes(&mut record, r.value.as_deref());
        put_varint(&mut record, r.headers.len() as i32);
        for (k, v) in &r.headers {
            put_bytes(&mut record, Some(k.as_bytes()));
            put_bytes(&mut record, v.as_deref());
        }
        put_varint(&mut body, record.len() as i32);
        body.extend_from_slice(&record);
    }
    let section = match header.compression() {
        compression::NONE => body,
        codec => compression::compress(codec, &body)?,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + section.len());
    out.extend_from_slice(&batch[..HEADER_LEN]);
    out.extend_from_slice(&section);
    out[57..61].copy_from_slice(&(keep.len() as i32).to_be_bytes());
    let batch_len = (out.len() - LOG_OVERHEAD) as i32;
    out[8..12].copy_from_slice(&batch_len.to_be_bytes());
    refresh_crc(&mut out);
    Ok(out)
}

fn put_varint(out: &mut Vec<u8>, v: i32) {
    put_uvarint(out, ((v << 1) ^ (v >> 31)) as u32 as u64);
}
fn put_varlong(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}
fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i32);
            out.extend_from_slice(b);
        }
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn uvarint(&mut self, max_bytes: usize) -> Result<u64> {
        let mut v: u64 = 0;
        for i in 0..max_bytes {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| Error::bad_batch("varint runs past the end"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::bad_batch("varint is too long"))
    }
    fn varint(&mut self) -> Result<i32> {
        let u = self.uvarint(5)? as u32;
        Ok(((u >> 1) as i32) ^ -((u & 1) as i32))
    }
    fn varlong(&mut self) -> Result<i64> {
        let u = self.uvarint(10)?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }
    fn bytes(&mut self) -> Result<Option<Vec<u8>>> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        let end = self.pos.saturating_add(len as usize);
        let b = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| Error::bad_batch("field runs past the end of the batch"))?;
        self.pos = end;
        Ok(Some(b.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            -1_000_000i64..1_000_000,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
            proptest::collection::vec(
                (
                    "[a-z]{0,8}",
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
                ),
                0..3,
            ),
        )
            .prop_map(|(ts, key, value, headers)| Record {
                timestamp_ms: 1_700_000_000_000 + ts,
                key,
                value,
                headers,
            })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(records in proptest::collection::vec(arb_record(), 1..20), base in 0i64..1_000_000_000) {
            let mut batch = encode(&records);
            set_base_offset(&mut batch, base);
            let (header, decoded) = decode_records(&batch).expect("decodes");
            prop_assert_eq!(header.base_offset, base);
            prop_assert_eq!(header.last_offset(), base + records.len() as i64 - 1);
            prop_assert_eq!(decoded.len(), records.len());
            for (i, (offset, r)) in decoded.into_iter().enumerate() {
                prop_assert_eq!(offset, base + i as i64);
                prop_assert_eq!(&r, &records[i]);
            }
        }

        #[test]
        fn any_flipped_byte_after_crc_start_is_caught(records in proptest::collection::vec(arb_record(), 1..5), pick in any::<prop::sample::Index>()) {
            let mut batch = encode(&records);
            let at = CRC_START + pick.index(batch.len() - CRC_START);
            batch[at] ^= 0x40;
            prop_assert!(parse_header(&batch).is_err());
        }
    }

    #[test]
    fn compressed_batches_decode_to_the_same_records() {
        let records: Vec<Record> = (0..300)
            .map(|i| Record {
                timestamp_ms: 1_700_000_000_000 + i,
                key: Some(format!("m{}", i % 7).into_bytes()),
                value: Some(format!("{{\"n\":{i}}}").into_bytes()),
                headers: vec![("h".into(), Some(b"v".to_vec()))],
            })
            .collect();
        for codec in [
            compression::GZIP,
            compression::SNAPPY,
            compression::LZ4,
            compression::ZSTD,
        ] {
            let mut batch = encode_compressed(&records, codec, 7, 1, 40).expect("encodes");
            set_base_offset(&mut batch, 1000);
            let (header, decoded) = decode_records(&batch).expect("decodes");
            assert_eq!(header.compression(), codec);
            assert_eq!(
                (
                    header.producer_id,
                    header.producer_epoch,
                    header.base_sequence
                ),
                (7, 1, 40)
            );
            let got: Vec<Record> = decoded.iter().map(|(_, r)| r.clone()).collect();
            assert_eq!(got, records, "{}", compression::codec_name(codec));
            assert_eq!(decoded.last().map(|(o, _)| *o), Some(1299));
            assert!(
                decode_records_capped(&batch, 100).is_err(),
                "the cap applies"
            );
        }
    }

    #[test]
    fn restamped_batches_keep_a_valid_crc() {
        let records = vec![
            Record {
                timestamp_ms: 5,
                key: None,
                value: Some(b"{}".to_vec()),
                headers: vec![]
            };
            3
        ];
        let mut batch = encode_compressed(&records, compression::LZ4, -1, -1, -1).expect("encodes");
        restamp_producer(&mut batch, 42, 3, 900);
        let h = parse_header(&batch).expect("CRC still valid");
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (42, 3, 900)
        );
    }

    #[test]
    fn retained_records_keep_their_offsets_and_the_batch_its_span() {
        let records: Vec<Record> = (0..5)
            .map(|i| Record {
                timestamp_ms: 1000 + i,
                key: Some(vec![i as u8]),
                value: Some(format!("v{i}").into_bytes()),
                headers: vec![("h".into(), Some(b"x".to_vec()))],
            })
            .collect();
        for codec in [compression::NONE, compression::GZIP, compression::ZSTD] {
            let mut batch = encode_compressed(&records, codec, 7, 1, 30).expect("encodes");
            set_base_offset(&mut batch, 100);
            let kept = retain_records(&batch, &[1, 3]).expect("rewrites");
            let (h, decoded) = decode_records(&kept).expect("decodes with gaps");
            assert_eq!(
                (h.base_offset, h.last_offset_delta, h.record_count),
                (100, 4, 2)
            );
            assert_eq!(
                (
                    h.producer_id,
                    h.producer_epoch,
                    h.base_sequence,
                    h.compression()
                ),
                (7, 1, 30, codec)
            );
            assert_eq!(
                decoded,
                vec![(101, records[1].clone()), (103, records[3].clone())]
            );
            assert!(
                decode_records_capped(&kept, 1 << 20).is_err(),
                "a produced batch must be dense"
            );
            let empty = retain_records(&batch, &[]).expect("rewrites");
            let (h, decoded) = decode_records(&empty).expect("an empty batch decodes");
            assert_eq!((h.last_offset(), decoded.len()), (104, 0));
        }
    }

    #[test]
    fn a_huge_declared_record_count_is_refused_before_allocating() {
        let mut batch = encode(&[Record {
            timestamp_ms: 1,
            key: None,
            value: None,
            headers: vec![],
        }]);
        batch[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        batch[23..27].copy_from_slice(&(i32::MAX - 1).to_be_bytes());
        refresh_crc(&mut batch);
        let err = decode_records(&batch)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("cannot fit"), "{err}");
    }

    #[test]
    fn known_bytes_match_kafka_layout() {
        let batch = encode(&[Record {
            timestamp_ms: 1000,
            key: None,
            value: Some(b"hi".to_vec()),
            headers: vec![],
        }]);
        // Record: attrs 0, tsDelta 0, offsetDelta 0, key -1 (0x01), value len 2 (0x04) 'h' 'i', 0 headers.
        assert_eq!(
            &batch[HEADER_LEN..],
            &[0x10, 0, 0, 0, 0x01, 0x04, b'h', b'i', 0]
        );
        assert_eq!(batch[16], 2);
        assert_eq!(be_i32(&batch, 8) as usize, batch.len() - 12);
        assert_eq!(be_i64(&batch, 43), -1, "no producer id");
    }
}
