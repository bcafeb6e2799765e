//! `tidemark segments …`: what a DBA sees of a node's segments. `list` reads `sys.segments`
//! over SQL; `verify` has the node check every column checksum now.

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::Value;

use crate::client::Client;
use crate::{UrlArg, print_json};

#[derive(Debug, Subcommand)]
pub(crate) enum SegmentsCmd {
    /// Published segments, by datasource and interval: version, shard, rows, bytes.
    List {
        #[arg(long)]
        datasource: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        url: UrlArg,
    },
    /// One segment: its columns, their encodings, sizes and checksums.
    Show {
        #[arg(long)]
        datasource: String,
        /// The segment id, as `segments list` shows it.
        segment: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        url: UrlArg,
    },
    /// Take the whole segment intervals inside START/END out of the timeline (segments and
    /// realtime rows; the raw log keeps its batches, so a reindex can bring them back).
    Drop {
        #[arg(long)]
        datasource: String,
        /// START/END: RFC 3339 times, dates (midnight UTC) or epoch milliseconds.
        #[arg(long)]
        interval: String,
        #[command(flatten)]
        url: UrlArg,
    },
    /// Check every checksum of every column of a datasource's segments on this node.
    Verify {
        #[arg(long)]
        datasource: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        url: UrlArg,
    },
}

fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub(crate) fn run(cmd: SegmentsCmd) -> Result<()> {
    match cmd {
        SegmentsCmd::Show {
            datasource,
            segment,
            json,
            url,
        } => {
            let reply = Client::new(&url.url)
                .get(&format!("/v1/segments/{datasource}/{segment}"))?
                .ok()?;
            if json {
                return print_json(&reply.body);
            }
            let v: Value = serde_json::from_slice(&reply.body)?;
            println!(
                "{} (version {}, shard {}): {} rows, {} events, {} bytes, granularity {}",
                v["segment"].as_str().unwrap_or_default(),
                v["version"].as_str().unwrap_or_default(),
                v["shard"],
                v["rows"],
                v["events"],
                v["bytes"],
                v["query_granularity"].as_str().unwrap_or("?")
            );
            println!(
                "{:<20} {:<10} {:>10} {:>12} {:>9}  encoding",
                "column", "kind", "bytes", "cardinality", "nulls"
            );
            for c in v["columns"].as_array().into_iter().flatten() {
                println!(
                    "{:<20} {:<10} {:>10} {:>12} {:>9}  {}",
                    c["name"].as_str().unwrap_or_default(),
                    c["kind"].as_str().unwrap_or_default(),
                    c["bytes"],
                    c["cardinality"]
                        .as_u64()
                        .map(|n| n.to_string())
                        .unwrap_or_default(),
                    c["null_count"],
                    c["encoding"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        SegmentsCmd::Drop {
            datasource,
            interval,
            url,
        } => {
            let body =
                serde_json::json!({ "datasource": datasource, "interval": interval }).to_string();
            let reply = Client::new(&url.url)
                .send(
                    "POST",
                    "/v1/segments/drop",
                    "application/json",
                    &[],
                    body.as_bytes(),
                )?
                .ok()?;
            print_json(&reply.body)
        }
        SegmentsCmd::List {
            datasource,
            json,
            url,
        } => {
            let filter = datasource
                .map(|d| format!(" WHERE datasource = {}", quoted(&d)))
                .unwrap_or_default();
            let sql = format!(
                "SELECT datasource, segment_id, interval_start, interval_end, version, shard, rows, events, bytes \
                 FROM sys.segments{filter} ORDER BY datasource, interval_start, version, shard"
            );
            let reply = Client::new(&url.url)
                .send("POST", "/v1/sql", "text/plain", &[], sql.as_bytes())?
                .ok()?;
            if json {
                return print_json(&reply.body);
            }
            let rows: Value = serde_json::from_slice(&reply.body)?;
            println!(
                "{:<12} {:<24} {:<26} {:>5} {:>9} {:>10} {:>11}",
                "datasource", "interval_start", "version", "shard", "rows", "events", "bytes"
            );
            for r in rows.as_array().into_iter().flatten() {
                println!(
                    "{:<12} {:<24} {:<26} {:>5} {:>9} {:>10} {:>11}",
                    r["datasource"].as_str().unwrap_or_default(),
                    r["interval_start"].as_str().unwrap_or_default(),
                    r["version"].as_str().unwrap_or_default(),
                    r["shard"],
                    r["rows"],
                    r["events"],
                    r["bytes"]
                );
            }
            Ok(())
        }
        SegmentsCmd::Verify {
            datasource,
            json,
            url,
        } => {
            let path = format!("/v1/segments/verify?datasource={datasource}");
            let reply = Client::new(&url.url)
                .send("POST", &path, "application/json", &[], b"")?
                .ok()?;
            let v: Value = serde_json::from_slice(&reply.body)?;
            if json {
                print_json(&reply.body)?;
            } else {
                for r in v["results"].as_array().into_iter().flatten() {
                    match r["ok"].as_bool() {
                        Some(true) => {
                            println!("ok       {}", r["segment"].as_str().unwrap_or_default())
                        }
                        _ => println!(
                            "DAMAGED  {}: {}",
                            r["segment"].as_str().unwrap_or_default(),
                            r["error"].as_str().unwrap_or_default()
                        ),
                    }
                }
            }
            let damaged = v["damaged"].as_u64().unwrap_or(0);
            if damaged > 0 {
                bail!(
                    "{damaged} of {} segments of {datasource:?} are damaged on this node",
                    v["segments"]
                );
            }
            Ok(())
        }
    }
}
