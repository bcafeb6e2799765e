//! `tidemark reindex|compact|delete|export` and `tidemark jobs`: long jobs from the command
//! line, a thin client over `/v1/reindex`, `/v1/compact`, `/v1/delete`, `/v1/export` and
//! `/v1/jobs`. A job command waits for the job to end (a new version published, a copy
//! written), showing its progress as a bar on a terminal (raw batches, or bytes for a copy;
//! plain lines otherwise), and fails if the job is cancelled.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::Client;
use crate::{UrlArg, print_json};

#[derive(Debug, Args)]
pub(crate) struct ReindexArgs {
    #[arg(long)]
    datasource: String,
    /// START/END: RFC 3339 times, dates (midnight UTC) or epoch milliseconds, widened to whole
    /// segments.
    #[arg(long)]
    interval: String,
    /// Start the job and print it, without waiting for it to publish.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    url: UrlArg,
}

#[derive(Debug, Args)]
pub(crate) struct CompactArgs {
    #[arg(long)]
    datasource: String,
    /// START/END, widened to whole segments; only intervals with several shards (or at a
    /// finer granularity than asked) are rewritten.
    #[arg(long)]
    interval: String,
    /// Roll up to this coarser query granularity (e.g. PT15M), sketches merged.
    #[arg(long)]
    granularity: Option<String>,
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    url: UrlArg,
}

#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    #[arg(long)]
    datasource: String,
    /// Which beacons: tags compared with =, !=, IN (…), IS [NOT] NULL, joined with AND, OR,
    /// NOT and parentheses, e.g. "merchant_id = 'm1'" or "user_id IN ('u1', 'u2')". Aliases
    /// count as their tag.
    #[arg(long = "where", value_name = "CONDITION")]
    condition: String,
    /// Only beacons with event times in START/END (widened to whole segments); all if absent.
    #[arg(long)]
    interval: Option<String>,
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    url: UrlArg,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    #[arg(long)]
    datasource: String,
    /// START/END: RFC 3339 times, dates (midnight UTC) or epoch milliseconds.
    #[arg(long)]
    interval: String,
    #[arg(long, default_value = "parquet")]
    format: String,
    /// An absolute directory on the node's host; files go to DIR/date=YYYY-MM-DD/.
    #[arg(long)]
    to: String,
    #[command(flatten)]
    copy: CopyArgs,
    #[command(flatten)]
    url: UrlArg,
}

/// How an export or backup runs.
#[derive(Debug, Args)]
pub(crate) struct CopyArgs {
    /// Read at most this many bytes per second, so serving keeps its disk bandwidth.
    #[arg(long, value_name = "BYTES")]
    max_bytes_per_s: Option<u64>,
    /// Start the job and print it, without waiting for it to finish.
    #[arg(long)]
    no_wait: bool,
}

impl CopyArgs {
    /// Starts the copy (`body` is its request) as a job and follows it to its end.
    pub(crate) fn run(
        &self,
        client: &Client,
        path: &str,
        mut body: Value,
        what: &str,
    ) -> Result<()> {
        body["wait"] = json!(false);
        if let Some(rate) = self.max_bytes_per_s {
            body["max_bytes_per_s"] = json!(rate);
        }
        let reply = client
            .send(
                "POST",
                path,
                "application/json",
                &[],
                body.to_string().as_bytes(),
            )?
            .ok()?;
        if self.no_wait {
            return print_json(&reply.body);
        }
        wait(client, &reply.body, what)
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum JobsCmd {
    /// Every job the node remembers, newest last.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        url: UrlArg,
    },
    /// One job.
    Show {
        id: u64,
        #[command(flatten)]
        url: UrlArg,
    },
    /// Abandon a running job: the old version stays, nothing of the new one is published.
    Cancel {
        id: u64,
        #[command(flatten)]
        url: UrlArg,
    },
}

fn progress_line(j: &Value) -> String {
    let (kind, state) = (
        j["kind"].as_str().unwrap_or("job"),
        j["state"].as_str().unwrap_or("?"),
    );
    match kind {
        "backup" => format!("{kind} {state}, {} files", j["files_written"]),
        "export" => format!("{kind} {state}, {} rows", j["events"]),
        "delete" => format!("{kind} {state}, {} records deleted", j["events"]),
        _ => format!("{kind} {state}, {} events", j["events"]),
    }
}

/// Whether job `j` counts its progress in bytes (a copy) rather than raw batches.
fn in_bytes(j: &Value) -> bool {
    matches!(j["kind"].as_str(), Some("backup" | "export"))
}

pub(crate) fn reindex(args: ReindexArgs) -> Result<()> {
    let client = Client::new(&args.url.url);
    let body = json!({ "datasource": args.datasource, "interval": args.interval }).to_string();
    let reply = client
        .send(
            "POST",
            "/v1/reindex",
            "application/json",
            &[],
            body.as_bytes(),
        )?
        .ok()?;
    if args.no_wait {
        return print_json(&reply.body);
    }
    wait(&client, &reply.body, &format!("{:?}", args.datasource))
}

pub(crate) fn compact(args: CompactArgs) -> Result<()> {
    let client = Client::new(&args.url.url);
    let mut body = json!({ "datasource": args.datasource, "interval": args.interval });
    if let Some(g) = &args.granularity {
        body["granularity"] = json!(g);
    }
    let reply = client
        .send(
            "POST",
            "/v1/compact",
            "application/json",
            &[],
            body.to_string().as_bytes(),
        )?
        .ok()?;
    if args.no_wait {
        return print_json(&reply.body);
    }
    wait(&client, &reply.body, &format!("{:?}", args.datasource))
}

pub(crate) fn delete(args: DeleteArgs) -> Result<()> {
    let client = Client::new(&args.url.url);
    let mut body = json!({ "datasource": args.datasource, "where": args.condition });
    if let Some(i) = &args.interval {
        body["interval"] = json!(i);
    }
    let reply = client
        .send(
            "POST",
            "/v1/delete",
            "application/json",
            &[],
            body.to_string().as_bytes(),
        )?
        .ok()?;
    if args.no_wait {
        return print_json(&reply.body);
    }
    wait(&client, &reply.body, &format!("{:?}", args.datasource))
}

pub(crate) fn export(args: ExportArgs) -> Result<()> {
    let body = json!({ "datasource": args.datasource, "interval": args.interval, "format": args.format, "to": args.to });
    args.copy.run(
        &Client::new(&args.url.url),
        "/v1/export",
        body,
        &format!("{:?}", args.datasource),
    )
}

/// Follows a started job until it is published (printing it) or cancelled (an error).
pub(crate) fn wait(client: &Client, started: &[u8], what: &str) -> Result<()> {
    let job: Value = serde_json::from_slice(started)?;
    let id = job["id"].as_u64().unwrap_or_default();
    eprintln!(
        "started {} job {id} of {what}",
        job["kind"].as_str().unwrap_or("?")
    );
    let bytes = in_bytes(&job);
    let (done, total, template) = match bytes {
        true => (
            "bytes_done",
            "bytes_total",
            "{bar:40} {bytes}/{total_bytes}  {elapsed_precise}  {msg}",
        ),
        false => (
            "batches_done",
            "batches_total",
            "{bar:40} {pos}/{len} batches  {elapsed_precise}  {msg}",
        ),
    };
    // A bar on a terminal; indicatif draws nothing elsewhere, so logs get a line per change.
    let bar = ProgressBar::new(job[total].as_u64().unwrap_or(0));
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    let plain = bar.is_hidden();
    let mut last = (String::new(), std::time::Instant::now());
    let mut failures = 0;
    loop {
        // A node busy or between leaders for a moment does not end the wait: the job goes on.
        let reply = client.get(&format!("/v1/jobs/{id}")).and_then(|r| r.ok());
        let j: Value = match reply {
            Ok(r) => {
                failures = 0;
                serde_json::from_slice(&r.body)?
            }
            Err(e) if failures < 25 => {
                failures += 1;
                tracing::debug!(error = %e, "asking for job {id} again");
                std::thread::sleep(Duration::from_millis(400));
                continue;
            }
            Err(e) => {
                return Err(e.context(format!(
                    "following job {id} (it may still be running: tidemark jobs show {id})"
                )));
            }
        };
        let line = progress_line(&j);
        bar.set_length(j[total].as_u64().unwrap_or(0));
        bar.set_position(j[done].as_u64().unwrap_or(0));
        bar.set_message(line.clone());
        // Without a terminal: a line when the state changes, and every few seconds of progress.
        if plain && (line != last.0 || last.1.elapsed() >= Duration::from_secs(5)) {
            let unit = if bytes { "bytes" } else { "batches" };
            eprintln!("job {id}: {}/{} {unit}, {line}", j[done], j[total]);
            last = (line, std::time::Instant::now());
        }
        match j["state"].as_str() {
            Some("published") => {
                bar.finish();
                println!("{}", serde_json::to_string_pretty(&j)?);
                return Ok(());
            }
            Some("cancelled") => {
                bar.abandon();
                bail!(
                    "job {id} was cancelled: {}",
                    j["error"].as_str().unwrap_or("no reason given")
                );
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

pub(crate) fn run(cmd: JobsCmd) -> Result<()> {
    match cmd {
        JobsCmd::List { json, url } => {
            let reply = Client::new(&url.url).get("/v1/jobs")?.ok()?;
            if json {
                return print_json(&reply.body);
            }
            let jobs: Value = serde_json::from_slice(&reply.body)?;
            println!(
                "{:<10} {:<8} {:<14} {:<10} {:>9} {:>12} {:>9}",
                "id", "kind", "datasource", "state", "batches", "events", "segments"
            );
            for j in jobs.as_array().into_iter().flatten() {
                println!(
                    "{:<10} {:<8} {:<14} {:<10} {:>9} {:>12} {:>9}",
                    j["id"],
                    j["kind"].as_str().unwrap_or_default(),
                    j["datasource"].as_str().unwrap_or_default(),
                    j["state"].as_str().unwrap_or_default(),
                    format!("{}/{}", j["batches_done"], j["batches_total"]),
                    j["events"],
                    j["segments_published"]
                );
            }
            Ok(())
        }
        JobsCmd::Show { id, url } => print_json(
            &Client::new(&url.url)
                .get(&format!("/v1/jobs/{id}"))?
                .ok()?
                .body,
        ),
        JobsCmd::Cancel { id, url } => print_json(
            &Client::new(&url.url)
                .send(
                    "POST",
                    &format!("/v1/jobs/{id}/cancel"),
                    "application/json",
                    &[],
                    b"",
                )?
                .ok()?
                .body,
        ),
    }
}
