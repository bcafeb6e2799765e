//! `tidemark keys …`: API keys from the command line, a thin client over `/v1/keys`. The
//! first key can be created without one while the node has none (loopback only); after that
//! every call needs an admin key in `TIDEMARK_TOKEN`.

use anyhow::Result;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::Client;
use crate::{UrlArg, print_json};

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCmd {
    /// Create a key and print its token (shown only once).
    Create {
        /// A name for people: who or what uses the key.
        #[arg(long)]
        name: String,
        /// admin, governance_editor, publisher, analyst or merchant_reader.
        #[arg(long)]
        role: String,
        /// For merchant_reader: a value of the tenant dimension (e.g. a merchant_id) whose rows
        /// the key may read; repeat for several.
        #[arg(long = "tenant")]
        tenants: Vec<String>,
        /// For publisher: a datasource it may publish to, as `DATASOURCE` (every tag) or
        /// `DATASOURCE=tag,tag` (only those tags); repeat for several. Without it a publisher
        /// may publish everything.
        #[arg(long = "publish")]
        publish: Vec<String>,
        /// Print the whole answer as JSON instead of the token alone.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        url: UrlArg,
    },
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        url: UrlArg,
    },
    /// Revoke a key by id: it stops working on every node at once.
    Revoke {
        id: String,
        #[command(flatten)]
        url: UrlArg,
    },
}

pub(crate) fn run(cmd: KeysCmd) -> Result<()> {
    match cmd {
        KeysCmd::Create {
            name,
            role,
            tenants,
            publish,
            json,
            url,
        } => {
            let mut body = json!({ "name": name, "role": role });
            if !tenants.is_empty() {
                body["tenants"] = json!(tenants);
            }
            if !publish.is_empty() {
                let mut grants = serde_json::Map::new();
                for p in &publish {
                    let grant = match p.split_once('=') {
                        None => json!("*"),
                        Some((_, tags)) => {
                            json!(tags.split(',').map(str::trim).collect::<Vec<_>>())
                        }
                    };
                    grants.insert(p.split('=').next().unwrap_or_default().to_string(), grant);
                }
                body["publish"] = Value::Object(grants);
            }
            let body = body.to_string();
            let reply = Client::new(&url.url)
                .send("POST", "/v1/keys", "application/json", &[], body.as_bytes())?
                .ok()?;
            if json {
                return print_json(&reply.body);
            }
            let v: Value = serde_json::from_slice(&reply.body)?;
            println!("{}", v["token"].as_str().unwrap_or_default());
            eprintln!(
                "key {} ({}): the token is shown only now; keep it secret",
                v["id"].as_str().unwrap_or("?"),
                role
            );
            Ok(())
        }
        KeysCmd::List { json, url } => {
            let reply = Client::new(&url.url).get("/v1/keys")?.ok()?;
            if json {
                return print_json(&reply.body);
            }
            let v: Value = serde_json::from_slice(&reply.body)?;
            println!("{:<14} {:<18} {:<8} name", "id", "role", "revoked");
            for k in v.as_array().into_iter().flatten() {
                println!(
                    "{:<14} {:<18} {:<8} {}",
                    k["id"].as_str().unwrap_or_default(),
                    k["role"].as_str().unwrap_or_default(),
                    if k["revoked"].as_bool().unwrap_or(false) {
                        "yes"
                    } else {
                        "no"
                    },
                    k["name"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        KeysCmd::Revoke { id, url } => print_json(
            &Client::new(&url.url)
                .delete(&format!("/v1/keys/{id}"))?
                .ok()?
                .body,
        ),
    }
}
