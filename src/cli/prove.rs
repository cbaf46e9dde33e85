//! `herald prove`: write an inclusion proof of one event, or a consistency
//! proof of a feed's latest checkpoint, from the node's store (read-only:
//! works beside a running node).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, EXIT_OK};
use crate::audit::proof::{self, ProofTarget};
use crate::config::NodeConfig;

#[derive(Debug, Args)]
pub struct ProveArgs {
    /// The node's config file.
    #[arg(long)]
    pub config: PathBuf,
    /// The event to prove, by id (a UUID).
    #[arg(long, conflicts_with_all = ["feed", "seq", "consistency"])]
    pub event: Option<String>,
    /// The feed of the event (with --seq) or of the checkpoint (with --consistency).
    #[arg(long)]
    pub feed: Option<String>,
    /// The event's sequence number in --feed.
    #[arg(long, requires = "feed", conflicts_with = "consistency")]
    pub seq: Option<u64>,
    /// Prove that --feed's latest checkpoint extends its tree of OLD_SIZE events.
    #[arg(long, value_name = "OLD_SIZE", requires = "feed")]
    pub consistency: Option<u64>,
    /// Write the proof to FILE (else to stdout).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print a JSON summary (with the proof text when there is no --out).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ProveArgs) -> Result<u8, CliError> {
    let config = NodeConfig::load(&args.config)?;
    let conn = super::open_store_read_only(&args.config, &config)?;
    let (text, summary) = match (&args.event, &args.feed, args.seq, args.consistency) {
        (Some(id), _, _, _) => {
            let id = uuid::Uuid::parse_str(id)
                .map_err(|e| format!("--event {id:?} is not an event id (a UUID): {e}"))?;
            inclusion(&conn, &ProofTarget::Id(*id.as_bytes()))?
        }
        (None, Some(feed), Some(seq), None) => {
            inclusion(&conn, &ProofTarget::FeedSeq(feed.clone(), seq))?
        }
        (None, Some(feed), None, Some(old)) => {
            let written = proof::prove_consistency(&conn, feed, old)?;
            (written.text.clone(), serde_json::to_value(&written)?)
        }
        _ => {
            return Err(
                "say what to prove: --event ID, --feed F --seq N, or --feed F --consistency OLD_SIZE"
                    .into(),
            );
        }
    };
    match &args.out {
        Some(path) => {
            write_atomically(path, &text)?;
            if args.json {
                let mut summary = summary;
                summary["path"] = serde_json::json!(path.display().to_string());
                println!("{summary}");
            } else {
                println!("{}", describe(&summary, path));
            }
        }
        None if args.json => {
            let mut summary = summary;
            summary["proof"] = serde_json::json!(text);
            println!("{summary}");
        }
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(EXIT_OK)
}

fn inclusion(
    conn: &rusqlite::Connection,
    target: &ProofTarget,
) -> Result<(String, serde_json::Value), CliError> {
    let written = proof::prove_inclusion(conn, target)?;
    Ok((written.text.clone(), serde_json::to_value(&written)?))
}

/// One line saying what was written.
fn describe(summary: &serde_json::Value, path: &Path) -> String {
    let feed = summary["feed"].as_str().unwrap_or("?");
    match summary.get("seq") {
        Some(seq) => format!(
            "wrote the inclusion proof of {feed}/{seq} under its checkpoint of size {} ({} hashes{}) to {}",
            summary["checkpoint_size"],
            summary["hashes"],
            if summary["payload_pruned"] == true {
                "; payload left out to fit, its hash stays in the header"
            } else {
                ""
            },
            path.display()
        ),
        None => format!(
            "wrote the consistency proof of {feed} from size {} to {} ({} hashes) to {}",
            summary["old_size"],
            summary["new_size"],
            summary["hashes"],
            path.display()
        ),
    }
}

/// Writes under a temporary name and renames, so `path` is whole or absent.
fn write_atomically(path: &Path, text: &str) -> Result<(), CliError> {
    let tmp = path.with_extension("partial");
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    std::fs::write(&tmp, text).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    Ok(())
}
