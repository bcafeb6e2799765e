//! One Kafka request frame (without its size prefix) through the door's decoding: header,
//! API and version checks, the bounds walk, then kafka-protocol's decoder. Any input must
//! end in Ok or Err: a panic, an abort or a huge allocation is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tidemark_ingest::kafka::decode_frame(data);
});
