//! `tidemark governance …`: the tag registry from the command line, a thin client over
//! `/v1/governance` on a running node.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::Client;
use crate::{UrlArg, print_json, read_spec};

#[derive(Debug, Subcommand)]
pub(crate) enum GovernanceCmd {
    /// Governance domains: the sets of datasources a tag registry governs.
    #[command(subcommand)]
    Domain(DomainCmd),
    /// Tags of a domain: kind, type, status, aliases, required forms.
    #[command(subcommand)]
    Tag(TagCmd),
    /// How long each form of a datasource's data is kept.
    #[command(subcommand)]
    Retention(RetentionCmd),
    /// What a key means in each domain: a tag, an alias, or unknown with the closest tag.
    Suggest {
        tag: String,
        #[arg(long, conflicts_with = "datasource")]
        domain: Option<String>,
        #[arg(long)]
        datasource: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        url: UrlArg,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RetentionCmd {
    /// Replace a datasource's retention rule; a form left out is kept forever.
    Set {
        datasource: String,
        /// Raw log (ISO-8601 period such as P30D).
        #[arg(long)]
        raw: Option<String>,
        /// Rolled-up segments.
        #[arg(long)]
        segments: Option<String>,
        #[arg(long)]
        rejects: Option<String>,
        #[arg(long)]
        fulltext: Option<String>,
        /// Only say what the rule would remove now (intervals, files, events, bytes).
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        url: UrlArg,
    },
    /// One datasource's rule, or every rule set.
    Show {
        datasource: Option<String>,
        #[command(flatten)]
        url: UrlArg,
    },
}

#[derive(Debug, Args)]
pub(crate) struct DomainFields {
    #[arg(long, default_value = "")]
    description: String,
    /// A datasource the domain governs (repeat for several).
    #[arg(long = "datasource")]
    datasources: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DomainCmd {
    Create {
        name: String,
        #[command(flatten)]
        fields: DomainFields,
        #[command(flatten)]
        url: UrlArg,
    },
    /// Replace a domain's description and datasources.
    Update {
        name: String,
        #[command(flatten)]
        fields: DomainFields,
        #[command(flatten)]
        url: UrlArg,
    },
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        url: UrlArg,
    },
    Show {
        name: String,
        #[command(flatten)]
        url: UrlArg,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TagCmd {
    /// Create or replace a tag from a JSON file (`-` for standard input), e.g.
    /// {"name": "account_number", "kind": "dimension", "type": "string", "status": "approved",
    /// "aliases": ["acct_num"]}.
    Put {
        domain: String,
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        url: UrlArg,
    },
    List {
        domain: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        url: UrlArg,
    },
    Show {
        domain: String,
        tag: String,
        #[command(flatten)]
        url: UrlArg,
    },
    /// Remove a proposed tag (deprecate an approved one instead).
    Remove {
        domain: String,
        tag: String,
        #[command(flatten)]
        url: UrlArg,
    },
}

/// Percent-encodes a path segment or query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn domain_body(name: &str, f: &DomainFields) -> Vec<u8> {
    json!({"name": name, "description": f.description, "datasources": f.datasources})
        .to_string()
        .into_bytes()
}

pub(crate) fn run(cmd: GovernanceCmd) -> Result<()> {
    match cmd {
        GovernanceCmd::Domain(DomainCmd::Create { name, fields, url }) => {
            let body = domain_body(&name, &fields);
            let reply = Client::new(&url.url).send(
                "POST",
                "/v1/governance/domains",
                "application/json",
                &[],
                &body,
            )?;
            print_json(&reply.ok()?.body)
        }
        GovernanceCmd::Domain(DomainCmd::Update { name, fields, url }) => {
            let body = domain_body(&name, &fields);
            let path = format!("/v1/governance/domains/{}", enc(&name));
            let reply = Client::new(&url.url).send("PUT", &path, "application/json", &[], &body)?;
            print_json(&reply.ok()?.body)
        }
        GovernanceCmd::Domain(DomainCmd::List { json, url }) => {
            let reply = Client::new(&url.url).get("/v1/governance/domains")?.ok()?;
            if json {
                return print_json(&reply.body);
            }
            let v: Value = serde_json::from_slice(&reply.body)?;
            println!("{:<24} {:>5}  DATASOURCES", "DOMAIN", "TAGS");
            for d in v.as_array().into_iter().flatten() {
                let datasources: Vec<&str> = d["datasources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                println!(
                    "{:<24} {:>5}  {}",
                    d["name"].as_str().unwrap_or_default(),
                    d["tags"].as_array().map_or(0, Vec::len),
                    datasources.join(", ")
                );
            }
            Ok(())
        }
        GovernanceCmd::Domain(DomainCmd::Show { name, url }) => {
            let reply = Client::new(&url.url)
                .get(&format!("/v1/governance/domains/{}", enc(&name)))?
                .ok()?;
            print_json(&reply.body)
        }
        GovernanceCmd::Tag(TagCmd::Put { domain, file, url }) => {
            let body = read_spec(&file)?;
            let tag: Value = serde_json::from_slice(&body)?;
            let name = tag.get("name").and_then(Value::as_str).ok_or_else(|| {
                anyhow::anyhow!("the tag file must name the tag (\"name\": \"account_number\")")
            })?;
            let path = format!("/v1/governance/domains/{}/tags/{}", enc(&domain), enc(name));
            let reply = Client::new(&url.url).send("PUT", &path, "application/json", &[], &body)?;
            print_json(&reply.ok()?.body)
        }
        GovernanceCmd::Tag(TagCmd::List { domain, json, url }) => {
            let reply = Client::new(&url.url)
                .get(&format!("/v1/governance/domains/{}/tags", enc(&domain)))?
                .ok()?;
            if json {
                return print_json(&reply.body);
            }
            let v: Value = serde_json::from_slice(&reply.body)?;
            println!(
                "{:<24} {:<10} {:<9} {:<10} ALIASES",
                "TAG", "KIND", "TYPE", "STATUS"
            );
            for t in v.as_array().into_iter().flatten() {
                let t = &t["tag"];
                let aliases: Vec<&str> = t["aliases"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                println!(
                    "{:<24} {:<10} {:<9} {:<10} {}",
                    t["name"].as_str().unwrap_or_default(),
                    t["kind"].as_str().unwrap_or_default(),
                    t["type"].as_str().unwrap_or_default(),
                    t["status"].as_str().unwrap_or_default(),
                    aliases.join(", ")
                );
            }
            Ok(())
        }
        GovernanceCmd::Tag(TagCmd::Show { domain, tag, url }) => {
            let path = format!("/v1/governance/domains/{}/tags/{}", enc(&domain), enc(&tag));
            print_json(&Client::new(&url.url).get(&path)?.ok()?.body)
        }
        GovernanceCmd::Tag(TagCmd::Remove { domain, tag, url }) => {
            let path = format!("/v1/governance/domains/{}/tags/{}", enc(&domain), enc(&tag));
            print_json(&Client::new(&url.url).delete(&path)?.ok()?.body)
        }
        GovernanceCmd::Retention(RetentionCmd::Set {
            datasource,
            raw,
            segments,
            rejects,
            fulltext,
            dry_run,
            url,
        }) => {
            let body =
                json!({ "raw": raw, "segments": segments, "rejects": rejects, "fulltext": fulltext }).to_string();
            let dry = if dry_run { "?dry_run=true" } else { "" };
            let path = format!("/v1/governance/retention/{}{dry}", enc(&datasource));
            print_json(
                &Client::new(&url.url)
                    .send("PUT", &path, "application/json", &[], body.as_bytes())?
                    .ok()?
                    .body,
            )
        }
        GovernanceCmd::Retention(RetentionCmd::Show { datasource, url }) => {
            let path = match datasource {
                Some(d) => format!("/v1/governance/retention/{}", enc(&d)),
                None => "/v1/governance/retention".to_string(),
            };
            print_json(&Client::new(&url.url).get(&path)?.ok()?.body)
        }
        GovernanceCmd::Suggest {
            tag,
            domain,
            datasource,
            json,
            url,
        } => {
            let mut path = format!("/v1/governance/suggest?tag={}", enc(&tag));
            if let Some(d) = domain {
                path.push_str(&format!("&domain={}", enc(&d)));
            }
            if let Some(d) = datasource {
                path.push_str(&format!("&datasource={}", enc(&d)));
            }
            let reply = Client::new(&url.url).get(&path)?.ok()?;
            if json {
                return print_json(&reply.body);
            }
            let v: Value = serde_json::from_slice(&reply.body)?;
            for a in v["answers"].as_array().into_iter().flatten() {
                println!("{}", a["message"].as_str().unwrap_or_default());
            }
            Ok(())
        }
    }
}
