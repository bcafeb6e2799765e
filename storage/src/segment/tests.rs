//! Round trips of every column type, bitmap lookups, and corruption detection.

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type, TimestampMillisecondType};
use proptest::prelude::*;
use roaring::RoaringBitmap;
use serde_json::json;
use tidemark_catalog::DatasourceSpec;
use tidemark_catalog::event::extract;

use super::*;
use crate::rollup::RollupIndex;
use crate::rollup::state::{DistinctMerger, QuantileMerger};

fn spec() -> DatasourceSpec {
    DatasourceSpec::from_json(
        r#"{"name":"t","timestamp":{"field":"ts"},"granularity":{"query":"PT1M","segment":"PT1H"},
           "dimensions":["m","page"],
           "metrics":[{"name":"count","type":"count"},{"name":"n","type":"longSum","field":"n"},
                      {"name":"amt","type":"doubleSum","field":"amt"},
                      {"name":"lo","type":"min","field":"amt"},{"name":"hi","type":"max","field":"amt"},
                      {"name":"users","type":"hll","field":"u"},{"name":"lat","type":"tdigest","field":"amt"}],
           "clustering":["m"]}"#,
    )
    .expect("valid")
}

fn id() -> SegmentId {
    SegmentId {
        datasource: "t".into(),
        interval_start_ms: 0,
        interval_end_ms: 3_600_000,
        version: "v1".into(),
        shard: 0,
    }
}

/// One beacon: (minute, merchant, page or null, n, amt or absent, user)
type Beacon = (i64, u8, Option<u8>, i64, Option<i32>, u16);

fn build(beacons: &[Beacon]) -> (DatasourceSpec, RollupIndex) {
    let spec = spec();
    let mut idx = RollupIndex::new(&spec);
    for &(minute, m, page, n, amt, u) in beacons {
        let mut v =
            json!({"ts": minute * 60_000 + 7, "m": format!("m{m}"), "n": n, "u": format!("u{u}")});
        if let Some(p) = page {
            v["page"] = json!(format!("/p{p}"));
        }
        if let Some(a) = amt {
            v["amt"] = json!(f64::from(a) / 4.0);
        }
        idx.add(&extract(&spec, &v).expect("valid beacon"));
    }
    (spec, idx)
}

fn arb_beacons() -> impl Strategy<Value = Vec<Beacon>> {
    proptest::collection::vec(
        (
            0i64..60,
            0u8..5,
            proptest::option::of(0u8..4),
            -5i64..50,
            proptest::option::of(-100i32..1000),
            0u16..40,
        ),
        1..300,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Whatever goes in, the segment's columns hold the same per-group aggregates as an
    /// independent computation over the raw beacons.
    #[test]
    fn segment_round_trips_every_column_type(beacons in arb_beacons()) {
        let (spec, idx) = build(&beacons);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.seg");
        let written = write_segment(&path, id(), &spec, &idx).expect("write");
        let seg = Segment::open(&path).expect("open");
        prop_assert_eq!(seg.meta(), &written.meta);
        prop_assert_eq!(seg.rows(), idx.rows());
        prop_assert_eq!(seg.meta().events, beacons.len() as u64);

        let time = seg.column("__time").expect("time");
        let time = time.as_primitive::<TimestampMillisecondType>();
        let m = seg.column("m").expect("m");
        let m = m.as_dictionary::<Int32Type>();
        let m_values = m.values().as_string::<i32>();
        let page = seg.column("page").expect("page");
        let page = page.as_dictionary::<Int32Type>();
        let page_values = page.values().as_string::<i32>();
        let count = seg.column("count").expect("count");
        let count = count.as_primitive::<Int64Type>();
        let n = seg.column("n").expect("n");
        let n = n.as_primitive::<Int64Type>();
        let amt = seg.column("amt").expect("amt");
        let amt = amt.as_primitive::<Float64Type>();
        let lo = seg.column("lo").expect("lo");
        let lo = lo.as_primitive::<Float64Type>();
        let users = seg.column("users").expect("users");
        let users = users.as_binary::<i32>();

        // Rows are sorted by merchant then time.
        let keys: Vec<(String, i64)> = (0..seg.rows()).map(|r| (m_values.value(m.keys().value(r) as usize).to_string(), time.value(r))).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        prop_assert_eq!(&keys, &sorted);

        for r in 0..seg.rows() {
            let merchant = m_values.value(m.keys().value(r) as usize);
            let page_name = if page.keys().is_null(r) { None } else { Some(page_values.value(page.keys().value(r) as usize).to_string()) };
            let group: Vec<&Beacon> = beacons.iter().filter(|b| {
                format!("m{}", b.1) == merchant && b.0 * 60_000 == time.value(r) && b.2.map(|p| format!("/p{p}")) == page_name
            }).collect();
            prop_assert_eq!(count.value(r), group.len() as i64);
            prop_assert_eq!(n.value(r), group.iter().map(|b| b.3).sum::<i64>());
            let amts: Vec<f64> = group.iter().filter_map(|b| b.4.map(|a| f64::from(a) / 4.0)).collect();
            prop_assert_eq!(amt.value(r), amts.iter().sum::<f64>());
            if amts.is_empty() {
                prop_assert!(lo.is_null(r));
            } else {
                prop_assert_eq!(lo.value(r), amts.iter().copied().fold(f64::INFINITY, f64::min));
            }
            let mut dm = DistinctMerger::new(12);
            dm.merge_encoded(users.value(r)).expect("decode");
            let mut distinct: Vec<u16> = group.iter().map(|b| b.5).collect();
            distinct.sort_unstable();
            distinct.dedup();
            prop_assert_eq!(dm.estimate(), distinct.len() as f64, "40 users at most: states stay exact");
        }

        // Bitmap index agrees with the keys.
        for p in 0..4u8 {
            let name = format!("/p{p}");
            let hits = seg.rows_matching("page", &[Some(&name)]).expect("bitmap");
            let expected: Vec<u32> = (0..seg.rows() as u32).filter(|&r| !page.keys().is_null(r as usize) && page_values.value(page.keys().value(r as usize) as usize) == name).collect();
            prop_assert_eq!(hits.iter().collect::<Vec<_>>(), expected);
        }
        let nulls = seg.rows_matching("page", &[None]).expect("null bitmap");
        prop_assert_eq!(nulls.len() as usize, page.keys().null_count());
        prop_assert!(seg.rows_matching("page", &[Some("/nope")]).expect("miss").is_empty());
    }
}

#[test]
fn quantile_column_round_trips_through_sketch_and_exact_states() {
    let beacons: Vec<Beacon> = (0..500)
        .map(|i| (0, (i % 2) as u8, None, 1, Some(i), 1))
        .collect();
    let (spec, idx) = build(&beacons);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("q.seg");
    write_segment(&path, id(), &spec, &idx).expect("write");
    let seg = Segment::open(&path).expect("open");
    let lat = seg.column("lat").expect("lat");
    let lat = lat.as_binary::<i32>();
    let mut q = QuantileMerger::new(100);
    for r in 0..seg.rows() {
        q.merge_encoded(lat.value(r)).expect("decode");
    }
    // amt = i/4 for i in 0..500: the exact median is 62.375.
    let median = q.quantile(0.5).expect("some");
    assert!((median - 62.375).abs() < 1.5, "median {median}");
}

#[test]
fn a_corrupted_byte_is_named_by_its_column() {
    let (spec, idx) = build(&[(1, 1, Some(1), 3, Some(8), 2), (2, 2, None, 4, None, 3)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.seg");
    let written = write_segment(&path, id(), &spec, &idx).expect("write");
    let amt = written.meta.column("amt").expect("amt column").clone();
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[amt.start as usize + 3] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    let err = Segment::open(&path)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("checksum mismatch in column amt"), "{err}");

    bytes.truncate(bytes.len() - 1);
    std::fs::write(&path, &bytes).expect("write");
    let err = Segment::open(&path)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn same_index_writes_identical_bytes() {
    let beacons: Vec<Beacon> = (0..200)
        .map(|i| {
            (
                i % 7,
                (i % 3) as u8,
                Some((i % 4) as u8),
                i,
                Some(i as i32),
                (i % 50) as u16,
            )
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let (spec, a) = build(&beacons);
    let (_, b) = build(&beacons);
    write_segment(&dir.path().join("a.seg"), id(), &spec, &a).expect("write");
    write_segment(&dir.path().join("b.seg"), id(), &spec, &b).expect("write");
    let a = std::fs::read(dir.path().join("a.seg")).expect("read");
    let b = std::fs::read(dir.path().join("b.seg")).expect("read");
    assert_eq!(a, b);
}

/// A crafted file: a real segment whose footer `edit` changes (and whose data `poke`
/// changes), every checksum then recomputed, as an attacker would.
fn crafted(
    edit: impl FnOnce(&mut SegmentMeta),
    poke: impl FnOnce(&SegmentMeta, &mut Vec<u8>),
) -> (tempfile::TempDir, std::path::PathBuf) {
    let (spec, idx) = build(&[
        (1, 1, Some(1), 3, Some(8), 2),
        (2, 2, None, 4, None, 3),
        (3, 1, Some(2), 5, Some(1), 4),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("crafted.seg");
    let written = write_segment(&path, id(), &spec, &idx).expect("write");
    let mut bytes = std::fs::read(&path).expect("read");
    poke(&written.meta, &mut bytes);
    format::reseal(&mut bytes, edit).expect("a footer to edit");
    std::fs::write(&path, &bytes).expect("write");
    (dir, path)
}

fn buffer_mut<'a>(
    meta: &'a mut SegmentMeta,
    column: &str,
    role: format::BufferRole,
) -> &'a mut format::BufferRef {
    let col = meta
        .columns
        .iter_mut()
        .find(|c| c.name == column)
        .expect("column");
    col.buffers
        .iter_mut()
        .find(|b| b.role == role)
        .expect("buffer")
}

fn refused(path: &std::path::Path, expected: &str) {
    match Segment::open(path) {
        Err(crate::Error::Corrupt { reason, .. }) => assert!(reason.contains(expected), "{reason}"),
        Err(e) => panic!("expected a corrupt-segment error naming {expected:?}, got {e}"),
        Ok(_) => panic!("a crafted segment opened ({expected})"),
    }
}

/// Each of these once panicked, or read outside the mapping (the first:
/// `offset + len` wrapped past the bounds check in a release build).
#[test]
fn crafted_lengths_and_offsets_are_refused_without_a_panic() {
    use format::BufferRole::*;
    let (_d, p) = crafted(
        |m| {
            let b = buffer_mut(m, "amt", Values);
            b.len = u64::MAX - b.offset + 1;
        },
        |_, _| {},
    );
    refused(&p, "buffer Values of column amt is misplaced");

    let (_d, p) = crafted(|m| m.rows = 1 << 40, |_, _| {});
    refused(&p, "cannot hold");
    let (_d, p) = crafted(|m| m.rows = u64::MAX, |_, _| {});
    refused(&p, "");

    let (_d, p) = crafted(
        |m| {
            m.columns
                .iter_mut()
                .filter(|c| c.name == "page")
                .for_each(|c| c.cardinality = Some(u64::MAX))
        },
        |_, _| {},
    );
    refused(&p, "page");

    let (_d, p) = crafted(|m| buffer_mut(m, "page", Validity).len = 0, |_, _| {});
    refused(&p, "validity bitmap of 0 bytes");

    // Dictionary offsets that decrease (the data is changed; the footer is not).
    let (_d, p) = crafted(
        |_| {},
        |meta, bytes| {
            let offsets = meta
                .column("m")
                .and_then(|c| c.buffer(DictOffsets))
                .expect("dictionary offsets");
            let at = offsets.offset as usize + 4;
            bytes[at..at + 4].copy_from_slice(&i32::MAX.to_le_bytes());
        },
    );
    refused(&p, "offsets are negative or decreasing");

    // A sketch column whose first offset is negative.
    let (_d, p) = crafted(
        |_| {},
        |meta, bytes| {
            let offsets = meta
                .column("users")
                .and_then(|c| c.buffer(Offsets))
                .expect("sketch offsets");
            let at = offsets.offset as usize;
            bytes[at..at + 4].copy_from_slice(&(-8i32).to_le_bytes());
        },
    );
    refused(&p, "offsets are negative or decreasing");
}

/// The bitmap index is read only by filters: a crafted one is an error there, not a panic
/// and not rows from outside the segment.
#[test]
fn a_crafted_bitmap_index_is_an_error_when_read() {
    use format::BufferRole::*;
    let (_d, p) = crafted(
        |_| {},
        |meta, bytes| {
            let offsets = meta
                .column("m")
                .and_then(|c| c.buffer(BitmapOffsets))
                .expect("bitmap offsets");
            let at = offsets.offset as usize + 8;
            bytes[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        },
    );
    let seg = Segment::open(&p).expect("the bitmap index is not read at open");
    let err = seg
        .rows_matching("m", &[Some("m1")])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("lies outside its buffer"), "{err}");

    // A bitmap naming row 1000 of a 3-row segment.
    let (_d, p) = crafted(
        |_| {},
        |meta, bytes| {
            let col = meta.column("m").expect("m");
            let offsets = col.buffer(BitmapOffsets).expect("bitmap offsets");
            let bitmaps = col.buffer(Bitmaps).expect("bitmaps");
            let at = offsets.offset as usize;
            let start = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes")) as usize;
            let end =
                u64::from_le_bytes(bytes[at + 8..at + 16].try_into().expect("8 bytes")) as usize;
            let mut forged = Vec::new();
            RoaringBitmap::from_iter([1000u32])
                .serialize_into(&mut forged)
                .expect("serialize");
            assert!(
                forged.len() <= end - start,
                "the forged bitmap fits where the first one was"
            );
            let base = bitmaps.offset as usize + start;
            bytes[base..base + forged.len()].copy_from_slice(&forged);
        },
    );
    let seg = Segment::open(&p).expect("open");
    let err = seg
        .rows_matching("m", &[Some("m1")])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("names rows past the segment's 3"), "{err}");
}
