//! `tidemark backup` and `tidemark restore`. A backup is taken by a running node (a thin
//! client over `POST /v1/backup`); a restore is local and offline: it makes a new data
//! directory from a backup, which `tidemark serve` then starts as a one-node cluster.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use crate::UrlArg;
use crate::client::Client;

#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// A new (or empty) absolute directory on the node's host.
    #[arg(long)]
    to: String,
    #[command(flatten)]
    copy: crate::jobs::CopyArgs,
    #[command(flatten)]
    url: UrlArg,
}

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The backup directory.
    #[arg(long)]
    from: PathBuf,
    /// The new node's data directory (must not exist or be empty).
    #[arg(long)]
    data_dir: PathBuf,
    /// The addresses the restored node will serve on (as `tidemark serve` is then started).
    #[arg(long, default_value_t = 1)]
    node_id: u64,
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_addr: String,
    #[arg(long, default_value = "127.0.0.1:9092")]
    kafka_addr: String,
    #[arg(long, default_value = "127.0.0.1:9093")]
    raft_addr: String,
}

pub(crate) fn backup(args: BackupArgs) -> Result<()> {
    let what = format!("this node's state to {}", args.to);
    args.copy.run(
        &Client::new(&args.url.url),
        "/v1/backup",
        json!({ "to": args.to }),
        &what,
    )
}

pub(crate) fn restore(args: RestoreArgs) -> Result<()> {
    crate::owner_only_files();
    let member = tidemark_raft::Member {
        raft: args.raft_addr.clone(),
        http: args.http_addr.clone(),
        kafka: args.kafka_addr.clone(),
    };
    let restored =
        tidemark_raft::restore::restore(&args.from, &args.data_dir, args.node_id, member)
            .with_context(|| {
                format!(
                    "restoring {} into {}",
                    args.from.display(),
                    args.data_dir.display()
                )
            })?;
    println!("{}", serde_json::to_string_pretty(&restored)?);
    if !restored.checked {
        eprintln!(
            "warning: this backup predates per-file checksums (manifest format 1): its files were copied unchecked"
        );
    }
    eprintln!(
        "restored position {}; start it with: tidemark serve --data-dir {} --node-id {} --http-addr {} --kafka-addr {} --raft-addr {}",
        restored.position,
        args.data_dir.display(),
        args.node_id,
        args.http_addr,
        args.kafka_addr,
        args.raft_addr
    );
    Ok(())
}
