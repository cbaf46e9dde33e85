//! `herald reload`: ask the running node to reread its CA file, revocation
//! list, certificate and key, and channel keyrings (what SIGHUP does), and
//! print its answer.
//!
//! Exit codes: 0 the node installed the new files; 1 the node refused them
//! (the message names the file and the reason; nothing changed, the node
//! keeps running on its current trust state); 2 the node could not be
//! asked (not running, unreachable, a CA file the tool itself cannot read).

use std::path::PathBuf;

use clap::Args;

use super::{CliError, EXIT_OK, EXIT_PROBLEMS};
use crate::clock::format_timestamp;
use crate::config::NodeConfig;
use crate::node::client::{ClientRequest, ClientResponse, NodeClient};
use crate::node::reload::ReloadReport;

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// The node's config file.
    #[arg(long)]
    pub config: PathBuf,
    /// Print one JSON object: `{"reloaded": true, "report": {...}}` or
    /// `{"reloaded": false, "error": "..."}`.
    #[arg(long)]
    pub json: bool,
}

/// The node's answer.
enum Answer {
    Reloaded(ReloadReport),
    Refused(String),
}

pub fn run(args: ReloadArgs) -> Result<u8, CliError> {
    let config = NodeConfig::load(&args.config)?;
    if !crate::store::is_locked(&config.data_dir) {
        return Err(format!(
            "node {} is not running; start it with `herald node --config {}`",
            config.service,
            args.config.display()
        )
        .into());
    }
    let answer = ask(&config)?;
    match answer {
        Answer::Reloaded(report) => {
            if args.json {
                let out = serde_json::json!({ "reloaded": true, "report": report });
                println!("{out}");
            } else {
                print_report(&report);
            }
            Ok(EXIT_OK)
        }
        Answer::Refused(error) => {
            if args.json {
                let out = serde_json::json!({ "reloaded": false, "error": error });
                println!("{out}");
            } else {
                eprintln!("herald: error: node {}: {error}", config.service);
            }
            Ok(EXIT_PROBLEMS)
        }
    }
}

fn ask(config: &NodeConfig) -> Result<Answer, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = NodeClient::connect_without_revocations(config).await?;
        let mut answer = None;
        let outcome = client
            .request(&ClientRequest::Reload, |r| match r {
                ClientResponse::Reloaded(json) => {
                    let report = serde_json::from_str(&json)
                        .map_err(|e| format!("the node's reload report does not parse: {e}"))?;
                    answer = Some(Answer::Reloaded(report));
                    Ok(())
                }
                ClientResponse::Error(e) => {
                    answer = Some(Answer::Refused(e));
                    Ok(())
                }
                _ => Err("unexpected answer to a reload request".into()),
            })
            .await;
        // Close on every path, so the node frees this tool's slot at once.
        client.finish().await;
        outcome?;
        answer.ok_or_else(|| "the node sent no answer to the reload request".into())
    })
}

fn print_report(r: &ReloadReport) {
    println!("node {} reloaded its trust files", r.service);
    println!("  CA: {}", r.ca);
    match &r.revoked {
        Some(path) => println!("  revocation list: {path} ({} entries)", r.revoked_entries),
        None => println!("  revocation list: none configured"),
    }
    println!(
        "  certificate: serial {}, valid until {}",
        r.certificate_serial,
        format_timestamp(r.certificate_not_after_us)
    );
    if let Some(seq) = r.transition_seq {
        println!(
            "  key transition appended to the feed at seq {seq}: the feed continues under the new key"
        );
    }
    match r.renewal_seq {
        Some(seq) => println!("  renewal appended to the feed at seq {seq}"),
        None if r.transition_seq.is_none() => println!("  feed certificate unchanged"),
        None => {}
    }
    let channels: Vec<String> = r
        .channels
        .iter()
        .map(|(name, n)| format!("{name} ({n} generation{})", if *n == 1 { "" } else { "s" }))
        .collect();
    println!("  channels: {}", channels.join(", "));
    if r.closed.is_empty() {
        println!("  closed connections: none");
    }
    for c in &r.closed {
        println!("  closed connection to {}: {}", c.peer, c.reason);
    }
}
