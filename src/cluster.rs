//! `tidemark cluster …` (membership commands against a node's HTTP API) and the start-up
//! join of a node started with `--join`.

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tidemark_ingest::Node;

use crate::client::Client;

#[derive(Debug, Args)]
pub(crate) struct UrlArg {
    /// HTTP address of any member; membership changes are forwarded to the leader.
    #[arg(long, env = "TIDEMARK_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCmd {
    /// Show the members, who leads, and how far each member's log is.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        url: UrlArg,
    },
    /// Add a node as a learner: it receives the log but does not vote.
    AddLearner {
        #[arg(long)]
        node_id: u64,
        /// The new node's Raft address.
        #[arg(long)]
        raft: String,
        /// The new node's HTTP address.
        #[arg(long)]
        http: String,
        /// The Kafka address clients should use for the new node.
        #[arg(long)]
        kafka: String,
        #[command(flatten)]
        url: UrlArg,
    },
    /// Make a learner a voter.
    Promote {
        node_id: u64,
        #[command(flatten)]
        url: UrlArg,
    },
    /// Remove a node from the cluster.
    Remove {
        node_id: u64,
        #[command(flatten)]
        url: UrlArg,
    },
    /// Hand leadership to another voter (for maintenance of the current leader).
    TransferLeader {
        node_id: u64,
        #[command(flatten)]
        url: UrlArg,
    },
}

fn post(url: &str, path: &str, body: &Value) -> Result<Value> {
    post_with(&Client::new(url), path, body)
}

fn post_with(client: &Client, path: &str, body: &Value) -> Result<Value> {
    let reply = client
        .send(
            "POST",
            path,
            "application/json",
            &[],
            body.to_string().as_bytes(),
        )?
        .ok()?;
    Ok(serde_json::from_slice(&reply.body)?)
}

/// How this node speaks to its peers' HTTP ports (the scheme they serve, the CA to trust).
#[derive(Debug, Clone)]
pub(crate) struct PeerHttp {
    pub(crate) scheme: &'static str,
    pub(crate) ca: Option<std::path::PathBuf>,
}

pub(crate) fn run(cmd: ClusterCmd) -> Result<()> {
    let done = |v: Value| {
        println!("{}", v.get("ok").and_then(Value::as_str).unwrap_or("done"));
    };
    match cmd {
        ClusterCmd::Status { json, url } => {
            let reply = Client::new(&url.url).get("/v1/cluster")?.ok()?;
            let status: Value = serde_json::from_slice(&reply.body)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
        }
        ClusterCmd::AddLearner {
            node_id,
            raft,
            http,
            kafka,
            url,
        } => {
            done(post(
                &url.url,
                "/v1/cluster/learners",
                &json!({ "node_id": node_id, "raft": raft, "http": http, "kafka": kafka }),
            )?);
        }
        ClusterCmd::Promote { node_id, url } => done(post(
            &url.url,
            "/v1/cluster/promote",
            &json!({ "node_id": node_id }),
        )?),
        ClusterCmd::Remove { node_id, url } => done(post(
            &url.url,
            "/v1/cluster/remove",
            &json!({ "node_id": node_id }),
        )?),
        ClusterCmd::TransferLeader { node_id, url } => done(post(
            &url.url,
            "/v1/cluster/transfer-leader",
            &json!({ "node_id": node_id }),
        )?),
    }
    Ok(())
}

fn print_status(s: &Value) {
    let leader = s.get("leader").and_then(Value::as_u64);
    println!(
        "asked node {} ({}), term {}, leader {}",
        s["node_id"],
        s["state"].as_str().unwrap_or("?"),
        s["term"],
        leader
            .map(|l| l.to_string())
            .unwrap_or_else(|| "none".into())
    );
    println!(
        "log: last {} committed {} applied {} snapshot {} purged {}",
        s["last_log_index"],
        s["committed_index"],
        s["applied_index"],
        s["snapshot_index"],
        s["purged_index"]
    );
    println!(
        "{:<6} {:<8} {:<22} {:<22} {:<22} {:>10}",
        "node", "role", "http", "kafka", "raft", "matched"
    );
    for (kind, key) in [("voter", "voters"), ("learner", "learners")] {
        let Some(members) = s.get(key).and_then(Value::as_object) else {
            continue;
        };
        for (id, m) in members {
            let role = if leader.map(|l| l.to_string()).as_deref() == Some(id) {
                "leader"
            } else {
                kind
            };
            let matched = s
                .get("replication")
                .and_then(|r| r.get(id))
                .map(|v| {
                    if v.is_null() {
                        "-".to_string()
                    } else {
                        v.to_string()
                    }
                })
                .unwrap_or_else(|| "?".into());
            println!(
                "{:<6} {:<8} {:<22} {:<22} {:<22} {:>10}",
                id,
                role,
                m["http"].as_str().unwrap_or(""),
                m["kafka"].as_str().unwrap_or(""),
                m["raft"].as_str().unwrap_or(""),
                matched
            );
        }
    }
    if let Some(f) = s.get("fatal").and_then(Value::as_str) {
        println!("STOPPED: {f}");
    }
}

/// Makes sure the cluster knows this node at the addresses it was started with: a node given
/// `--join` asks the member at `join` to add it (the leader adds it as a learner, waits until
/// it caught up, then makes it a voter); a member restarted on other addresses has the leader
/// record them. Retries until the membership shows this node as it is.
pub(crate) fn announce_in_background(node: Node, join: Option<String>, peer: PeerHttp) {
    tokio::spawn(async move {
        let replica = node.replica().clone();
        let me = replica.me().clone();
        let id = replica.node_id();
        let body = json!({ "node_id": id, "raft": me.raft, "http": me.http, "kafka": me.kafka });
        loop {
            let status = replica.status();
            if status.voters.get(&id) == Some(&me) {
                return;
            }
            let known = status.voters.contains_key(&id) || status.learners.contains_key(&id);
            let outcome = if known && replica.is_leader() {
                replica
                    .update_member(id, me.clone())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            } else {
                // Through the leader once this node knows it, else the member it was told to join.
                let via = replica
                    .leader()
                    .filter(|(l, _)| *l != id)
                    .map(|(_, m)| m.http)
                    .or_else(|| join.clone());
                match via {
                    None => Err("waiting for a leader".to_string()),
                    Some(via) => {
                        let url = if via.starts_with("http") {
                            via
                        } else {
                            format!("{}://{via}", peer.scheme)
                        };
                        let (b, ca) = (body.clone(), peer.ca.clone());
                        let join = move || {
                            post_with(
                                &Client::with_ca(&url, ca.as_deref()),
                                "/v1/cluster/join",
                                &b,
                            )
                        };
                        match tokio::task::spawn_blocking(join).await {
                            Ok(r) => r.map(|_| ()).map_err(|e| format!("{e:#}")),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                }
            };
            match outcome {
                Ok(()) => {
                    tracing::info!(node_id = id, "the cluster knows this node at its addresses")
                }
                Err(e) => {
                    tracing::info!(node_id = id, reason = %e, "announcing this node to the cluster; will retry")
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}
