//! A produced RecordBatch v2 through the apply path's decoder: header, CRC, capped
//! decompression (gzip, snappy, lz4, zstd) and record framing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_storage::raw::record_batch::{decode_records_capped, parse_header};

fuzz_target!(|data: &[u8]| {
    // Fix up what a random input almost never gets right (the length, the magic byte, the
    // CRC), so inputs reach decompression and the record decoder; the codec comes from the
    // attributes byte the fuzzer chose.
    let mut batch = data.to_vec();
    if batch.len() >= 61 {
        let len = (batch.len() - 12) as i32;
        batch[8..12].copy_from_slice(&len.to_be_bytes());
        batch[16] = 2;
        batch[22] %= 5;
        let crc = crc32c_of(&batch[21..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
    }
    if parse_header(&batch).is_ok() {
        let _ = decode_records_capped(&batch, 1 << 20);
    }
});

/// CRC32C (Castagnoli), bitwise: slow but dependency-free, fine for fuzz inputs.
fn crc32c_of(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}
