//! The record section codecs of Kafka RecordBatch v2 (attributes bits 0-2): gzip, snappy,
//! lz4 and zstd, decompressed with a hard cap on the output.
//!
//! The cap is the point of this module: a few kilobytes of zeros compress a thousandfold, so a
//! batch is never inflated into an unbounded buffer (the codecs' one-shot helpers, and the
//! `kafka-protocol` crate's, allocate whatever the stream asks for). Every codec is read as a
//! stream through `Read::take(cap + 1)`, so at most `cap + 1` bytes are ever produced.
//!
//! Snappy comes in two framings on the Kafka wire: the Java client writes snappy-java's
//! "xerial" stream (a magic header, then length-prefixed blocks), librdkafka writes one raw
//! snappy block. Both are accepted, as the Java broker does. lz4 is the standard LZ4 frame
//! format (KIP-57).

use std::io::Read;

use crate::error::{Error, Result};

pub const NONE: u8 = 0;
pub const GZIP: u8 = 1;
pub const SNAPPY: u8 = 2;
pub const LZ4: u8 = 3;
pub const ZSTD: u8 = 4;

const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";

pub fn codec_name(codec: u8) -> &'static str {
    match codec {
        NONE => "none",
        GZIP => "gzip",
        SNAPPY => "snappy",
        LZ4 => "lz4",
        ZSTD => "zstd",
        _ => "unknown",
    }
}

/// Decompresses a record section, refusing output beyond `cap` bytes.
pub fn decompress(codec: u8, input: &[u8], cap: usize) -> Result<Vec<u8>> {
    let out = match codec {
        NONE => return Ok(input.to_vec()),
        GZIP => read_capped(flate2::read::MultiGzDecoder::new(input), codec, cap)?,
        SNAPPY => snappy(input, cap)?,
        LZ4 => read_capped(lz4_flex::frame::FrameDecoder::new(input), codec, cap)?,
        ZSTD => {
            let decoder =
                zstd::stream::read::Decoder::with_buffer(input).map_err(|e| corrupt(codec, &e))?;
            read_capped(decoder, codec, cap)?
        }
        other => return Err(Error::UnsupportedCompression { codec: other }),
    };
    Ok(out)
}

/// Compresses a record section (the load tool and tests produce compressed batches).
pub fn compress(codec: u8, input: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let io = |e: std::io::Error| {
        Error::bad_batch(format!("{} compression failed: {e}", codec_name(codec)))
    };
    match codec {
        NONE => Ok(input.to_vec()),
        GZIP => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(input).map_err(io)?;
            enc.finish().map_err(io)
        }
        SNAPPY => snap::raw::Encoder::new()
            .compress_vec(input)
            .map_err(|e| Error::bad_batch(format!("snappy compression failed: {e}"))),
        LZ4 => {
            let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
            enc.write_all(input).map_err(io)?;
            enc.finish()
                .map_err(|e| Error::bad_batch(format!("lz4 compression failed: {e}")))
        }
        ZSTD => zstd::stream::encode_all(input, 1).map_err(io),
        other => Err(Error::UnsupportedCompression { codec: other }),
    }
}

fn read_capped(reader: impl Read, codec: u8, cap: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    reader
        .take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(codec, &e))?;
    if out.len() > cap {
        return Err(too_large(codec, cap));
    }
    Ok(out)
}

fn snappy(input: &[u8], cap: usize) -> Result<Vec<u8>> {
    if !input.starts_with(XERIAL_MAGIC) {
        return snappy_block(input, cap, 0);
    }
    // Xerial: magic(8) version(4) compatible(4), then blocks of (length i32 BE, raw snappy).
    let mut pos = 16;
    let mut out = Vec::new();
    while pos < input.len() {
        let len = input
            .get(pos..pos + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| Error::bad_batch("snappy (xerial) block length is truncated"))?;
        pos += 4;
        let block = input
            .get(pos..pos + len)
            .ok_or_else(|| Error::bad_batch("snappy (xerial) block runs past the end"))?;
        pos += len;
        let part = snappy_block(block, cap, out.len())?;
        out.extend_from_slice(&part);
    }
    Ok(out)
}

/// One raw snappy block; `already` bytes were produced before it.
fn snappy_block(block: &[u8], cap: usize, already: usize) -> Result<Vec<u8>> {
    // The block states its decompressed length up front, so the cap is checked before allocating.
    let len =
        snap::raw::decompress_len(block).map_err(|e| Error::bad_batch(format!("snappy: {e}")))?;
    if already.saturating_add(len) > cap {
        return Err(too_large(SNAPPY, cap));
    }
    snap::raw::Decoder::new()
        .decompress_vec(block)
        .map_err(|e| Error::bad_batch(format!("snappy: {e}")))
}

fn corrupt(codec: u8, e: &dyn std::fmt::Display) -> Error {
    Error::bad_batch(format!(
        "{} record section does not decompress: {e}",
        codec_name(codec)
    ))
}

fn too_large(codec: u8, cap: usize) -> Error {
    Error::bad_batch(format!(
        "{} record section decompresses to more than {cap} bytes, the per-batch limit; send smaller batches",
        codec_name(codec)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips() {
        let data: Vec<u8> = (0..50_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for codec in [NONE, GZIP, SNAPPY, LZ4, ZSTD] {
            let packed = compress(codec, &data).expect("compresses");
            let unpacked = decompress(codec, &packed, data.len()).expect("decompresses");
            assert_eq!(unpacked, data, "{}", codec_name(codec));
        }
    }

    #[test]
    fn output_beyond_the_cap_is_refused_not_allocated() {
        let zeros = vec![0u8; 4 << 20];
        for codec in [GZIP, SNAPPY, LZ4, ZSTD] {
            let packed = compress(codec, &zeros).expect("compresses");
            assert!(packed.len() < 300_000, "{} packs zeros", codec_name(codec));
            let err = decompress(codec, &packed, 1 << 20)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains("more than 1048576 bytes"),
                "{}: {err}",
                codec_name(codec)
            );
        }
    }

    #[test]
    fn xerial_framed_snappy_is_accepted() {
        let data = b"hello hello hello hello kafka".repeat(100);
        let block = snap::raw::Encoder::new()
            .compress_vec(&data)
            .expect("compresses");
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend_from_slice(&1i32.to_be_bytes());
        framed.extend_from_slice(&1i32.to_be_bytes());
        for half in [&block[..], &block[..]] {
            framed.extend_from_slice(&(half.len() as u32).to_be_bytes());
            framed.extend_from_slice(half);
        }
        let out = decompress(SNAPPY, &framed, 1 << 20).expect("decompresses");
        assert_eq!(out, [data.clone(), data].concat());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for codec in [GZIP, SNAPPY, LZ4, ZSTD] {
            assert!(decompress(codec, b"\x82SNAPPY\x00garbage-garbage", 1 << 20).is_err());
        }
        assert!(matches!(
            decompress(7, b"", 10),
            Err(Error::UnsupportedCompression { codec: 7 })
        ));
    }
}
