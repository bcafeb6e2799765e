//! The raw log: every accepted batch, exactly as received, per datasource partition. See
//! `raw/README.md` for the byte layout.

pub mod compression;
pub mod frame;
pub mod partition_log;
pub mod record_batch;
