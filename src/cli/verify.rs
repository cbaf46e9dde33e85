//! `herald verify`: audit an export or a data directory offline.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, EXIT_OK, EXIT_PROBLEMS};
use crate::audit::verify::{AuditOptions, AuditReport, audit_path};
use crate::core::crypto::ChannelKey;
use crate::identity::TrustAnchor;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// An export file or a node's data directory.
    pub path: PathBuf,
    #[command(flatten)]
    pub keys: AuditKeys,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What an offline audit trusts and reads with (shared by `verify` and
/// `saga history`).
#[derive(Debug, Args)]
pub struct AuditKeys {
    /// The cluster CA certificate every author must chain to.
    #[arg(long)]
    pub ca: PathBuf,
    /// A revocation list to honour.
    #[arg(long)]
    pub revoked: Option<PathBuf>,
    /// A channel key file (`channel-NAME.key`, repeatable); with any given,
    /// every encrypted event must decrypt under one of them.
    #[arg(long = "channel-key", value_name = "FILE")]
    pub channel_keys: Vec<PathBuf>,
}

impl AuditKeys {
    /// Loads the CA, revocation list and channel keys; a progress bar only
    /// on a terminal and not for JSON output.
    pub fn options(&self, json: bool) -> Result<AuditOptions, CliError> {
        let trust = TrustAnchor::load(&self.ca, self.revoked.as_deref())?;
        let channel_keys = self
            .channel_keys
            .iter()
            .map(|p| crate::identity::load_channel_key(&channel_name(p), p))
            .collect::<Result<Vec<ChannelKey>, _>>()?;
        Ok(AuditOptions {
            trust,
            channel_keys,
            progress: !json && std::io::stderr().is_terminal(),
        })
    }
}

pub fn run(args: VerifyArgs) -> Result<u8, CliError> {
    let options = args.keys.options(args.json)?;
    let report = audit_path(&args.path, &options)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        print_report(&mut out, &report)?;
    }
    Ok(if report.valid { EXIT_OK } else { EXIT_PROBLEMS })
}

/// `channel-NAME.key` names channel NAME; any other file is named by its stem.
fn channel_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    stem.strip_prefix("channel-").unwrap_or(&stem).to_string()
}

/// The human-readable report.
pub fn print_report(out: &mut impl Write, report: &AuditReport) -> std::io::Result<()> {
    writeln!(
        out,
        "{} {} ({} events, {} feeds{})",
        report.kind,
        report.source,
        report.events,
        report.feeds.len(),
        report
            .exporter
            .as_ref()
            .map(|e| format!(", written by {e}"))
            .unwrap_or_default()
    )?;
    writeln!(
        out,
        "{:<16} {:>8} {:>8} {:<18} {:<27} {:<27} STATUS",
        "FEED", "EVENTS", "HEAD", "HEAD HASH", "FIRST", "LAST"
    )?;
    for f in &report.feeds {
        writeln!(
            out,
            "{:<16} {:>8} {:>8} {:<18} {:<27} {:<27} {}",
            f.service,
            f.events,
            f.head_seq.map(|s| s.to_string()).unwrap_or("-".into()),
            f.head_hash.as_deref().map(|h| &h[..16]).unwrap_or("-"),
            f.first_timestamp.as_deref().unwrap_or("-"),
            f.last_timestamp.as_deref().unwrap_or("-"),
            f.status
        )?;
    }
    for p in &report.problems {
        writeln!(
            out,
            "problem: feed {} seq {} ({}): {} check failed: expected {}, found {}",
            p.feed.as_deref().unwrap_or("?"),
            p.seq.map(|s| s.to_string()).unwrap_or("?".into()),
            p.location,
            p.check,
            p.expected,
            p.found
        )?;
    }
    if report.problems_total > report.problems.len() as u64 {
        writeln!(
            out,
            "... and {} more problems",
            report.problems_total - report.problems.len() as u64
        )?;
    }
    if report.valid {
        writeln!(out, "VALID: every event of every feed verified")
    } else {
        writeln!(out, "INVALID: {} problem(s) found", report.problems_total)
    }
}
