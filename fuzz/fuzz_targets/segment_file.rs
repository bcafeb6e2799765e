//! A crafted segment file through the reader: open (every checksum, length and offset
//! check), then every column, every dictionary and the bitmap index. The input edits a real
//! segment's footer and data, and the checksums are recomputed (`reseal`), as an attacker
//! would, so edits reach the checks behind them. Any input must end in Ok or Err: a panic,
//! an abort, a read outside the file or a huge allocation is a finding.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tidemark_catalog::DatasourceSpec;
use tidemark_catalog::event::extract;
use tidemark_storage::rollup::RollupIndex;
use tidemark_storage::segment::format::reseal;
use tidemark_storage::segment::{Segment, SegmentId, SegmentMeta, write_segment};

/// A real segment with every column kind: two dimensions (one with nulls), every metric
/// type and both sketches.
fn seed() -> &'static Vec<u8> {
    static SEED: OnceLock<Vec<u8>> = OnceLock::new();
    SEED.get_or_init(|| {
        let spec = DatasourceSpec::from_json(
            r#"{"name":"t","timestamp":{"field":"ts"},"granularity":{"query":"PT1M","segment":"PT1H"},
               "dimensions":["m","page"],
               "metrics":[{"name":"count","type":"count"},{"name":"n","type":"longSum","field":"n"},
                          {"name":"amt","type":"doubleSum","field":"amt"},
                          {"name":"users","type":"hll","field":"u"},{"name":"lat","type":"tdigest","field":"amt"}]}"#,
        )
        .expect("a valid spec");
        let mut idx = RollupIndex::new(&spec);
        for i in 0..40i64 {
            let mut v = serde_json::json!({"ts": (i % 9) * 60_000, "m": format!("m{}", i % 4), "n": i, "u": format!("u{}", i % 7), "amt": i as f64 / 3.0});
            if i % 3 != 0 {
                v["page"] = serde_json::json!(format!("/p{}", i % 5));
            }
            idx.add(&extract(&spec, &v).expect("a valid beacon"));
        }
        let id = SegmentId { datasource: "t".into(), interval_start_ms: 0, interval_end_ms: 3_600_000, version: "v".into(), shard: 0 };
        let path = scratch();
        write_segment(&path, id, &spec, &idx).expect("write the seed");
        std::fs::read(&path).expect("read the seed")
    })
}

fn scratch() -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("tidemark-fuzz-segment-{}", std::process::id()))
}

/// One edit: 10 input bytes, `[what, which, value: u64 le]`.
fn edit(meta: &mut SegmentMeta, what: u8, which: u8, value: u64) {
    let n = meta.columns.len().max(1);
    let col = &mut meta.columns[usize::from(which) % n];
    let nb = col.buffers.len().max(1);
    match what % 7 {
        0 => col.start = value,
        1 => col.end = value,
        2 => {
            if let Some(b) = col.buffers.get_mut(usize::from(which >> 4) % nb) {
                b.offset = value;
            }
        }
        3 => {
            if let Some(b) = col.buffers.get_mut(usize::from(which >> 4) % nb) {
                b.len = value;
            }
        }
        4 => meta.rows = value,
        5 => col.cardinality = Some(value),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = seed().clone();
    let edits: Vec<(u8, u8, u64)> = data
        .chunks_exact(10)
        .map(|c| {
            (
                c[0],
                c[1],
                u64::from_le_bytes(c[2..10].try_into().unwrap_or_default()),
            )
        })
        .collect();
    // Edits of kind 6 overwrite a data byte instead (position from the value).
    let data_len = bytes.len().saturating_sub(64).max(1);
    for &(what, which, value) in &edits {
        if what % 7 == 6 {
            let at = 16 + (value as usize) % data_len;
            if let Some(b) = bytes.get_mut(at) {
                *b = which;
            }
        }
    }
    let sealed = reseal(&mut bytes, |meta| {
        for &(what, which, value) in &edits {
            edit(meta, what, which, value);
        }
    });
    if sealed.is_none() {
        return;
    }
    let path = scratch();
    if std::fs::write(&path, &bytes).is_err() {
        return;
    }
    let Ok(segment) = Segment::open(&path) else {
        return;
    };
    let _ = segment.schema();
    for col in &segment.meta().columns {
        let _ = segment.column(&col.name);
    }
    for dim in &segment.meta().dimensions {
        if let Ok(dict) = segment.dictionary(dim) {
            let values: Vec<Option<&str>> =
                dict.iter().take(8).chain([None, Some("absent")]).collect();
            let _ = segment.rows_matching(dim, &values);
        }
    }
});
