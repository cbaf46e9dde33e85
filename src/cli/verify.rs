//! `herald verify`: audit an export or a data directory offline, or check a
//! proof file (`herald prove`) with the CA alone.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, EXIT_OK, EXIT_PROBLEMS};
use crate::audit::proof::{self, ProofKind, ProofOptions};
use crate::audit::verify::{AuditOptions, AuditReport, audit_path};
use crate::core::crypto::ChannelKey;
use crate::identity::TrustAnchor;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// An export file, a node's data directory, or a proof file.
    pub path: PathBuf,
    #[command(flatten)]
    pub keys: AuditKeys,
    /// Require every feed's checkpoint to cover all its events and carry
    /// valid cosignatures by at least K other certified nodes (for a proof:
    /// by K of the --witness-cert nodes).
    #[arg(long, value_name = "K")]
    pub witnesses: Option<usize>,
    /// A witness's node certificate (repeatable; proof files only): its
    /// cosignatures of the proof's checkpoint are counted.
    #[arg(long = "witness-cert", value_name = "FILE")]
    pub witness_certs: Vec<PathBuf>,
    /// For a consistency proof: the earlier checkpoint (a checkpoint note or
    /// a proof file of the same feed) the proof starts from.
    #[arg(long, value_name = "OLD")]
    pub since: Option<PathBuf>,
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
    /// A channel key file (`channel-NAME.key`, repeatable), every key
    /// generation it holds (a rotated channel's file is its keyring); with
    /// any given, every encrypted event must decrypt under one of them.
    #[arg(long = "channel-key", value_name = "FILE")]
    pub channel_keys: Vec<PathBuf>,
}

impl AuditKeys {
    /// Loads the CA, revocation list and channel keys; a progress bar only
    /// on a terminal and not for JSON output.
    pub fn options(&self, json: bool) -> Result<AuditOptions, CliError> {
        let trust = TrustAnchor::load(&self.ca, self.revoked.as_deref())?;
        let mut channel_keys: Vec<ChannelKey> = Vec::new();
        for p in &self.channel_keys {
            channel_keys.extend(crate::identity::load_channel_keyring(&channel_name(p), p)?);
        }
        Ok(AuditOptions {
            trust,
            channel_keys,
            progress: !json && std::io::stderr().is_terminal(),
        })
    }
}

pub fn run(args: VerifyArgs) -> Result<u8, CliError> {
    let options = args.keys.options(args.json)?;
    if let Some(kind) = proof_file_kind(&args.path)? {
        return run_proof(&args, &options, kind);
    }
    if !args.witness_certs.is_empty() || args.since.is_some() {
        return Err(format!(
            "--witness-cert and --since apply to proof files; {} is not one (an export or data directory carries its witnesses' certificates)",
            args.path.display()
        )
        .into());
    }
    let mut report = audit_path(&args.path, &options)?;
    if let Some(k) = args.witnesses {
        report.require_witnesses(k);
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        print_report(&mut out, &report)?;
    }
    Ok(if report.valid { EXIT_OK } else { EXIT_PROBLEMS })
}

/// The kind of proof file `path` is, from its first line; `None` for a
/// directory or any other file (an export).
fn proof_file_kind(path: &Path) -> Result<Option<ProofKind>, CliError> {
    use std::io::Read;
    if path.is_dir() {
        return Ok(None);
    }
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut head = Vec::with_capacity(64);
    file.take(64)
        .read_to_end(&mut head)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(proof::proof_kind(&head))
}

/// Reads a proof file, refusing one over [`proof::PROOF_FILE_BYTES_MAX`].
fn read_bounded(path: &Path) -> Result<Vec<u8>, CliError> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(proof::PROOF_FILE_BYTES_MAX as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() > proof::PROOF_FILE_BYTES_MAX {
        return Err(format!(
            "{} is over {} bytes, larger than any proof file",
            path.display(),
            proof::PROOF_FILE_BYTES_MAX
        )
        .into());
    }
    Ok(bytes)
}

/// Checks a proof file and prints what it proves (exit 0), or why it does
/// not verify (exit 1).
fn run_proof(args: &VerifyArgs, options: &AuditOptions, kind: ProofKind) -> Result<u8, CliError> {
    let bytes = read_bounded(&args.path)?;
    let witness_certs = args
        .witness_certs
        .iter()
        .map(|p| crate::identity::read_cert_pem(p))
        .collect::<Result<Vec<_>, _>>()?;
    let since = match (&args.since, kind) {
        (Some(p), ProofKind::Consistency) => Some(read_bounded(p)?),
        (Some(_), ProofKind::Inclusion) => {
            return Err("--since applies to consistency proofs; this is an inclusion proof".into());
        }
        (None, _) => None,
    };
    let proof_options = ProofOptions {
        trust: &options.trust,
        channel_keys: &options.channel_keys,
        witness_certs: &witness_certs,
        witnesses: args.witnesses,
    };
    let source = args.path.display().to_string();
    let outcome = match kind {
        ProofKind::Inclusion => proof::verify_inclusion_proof(&bytes, &proof_options)
            .map(|r| (serde_json::to_value(&r), print_inclusion(&source, &r))),
        ProofKind::Consistency => {
            proof::verify_consistency_proof(&bytes, since.as_deref(), &proof_options)
                .map(|r| (serde_json::to_value(&r), print_consistency(&source, &r)))
        }
    };
    let kind_name = match kind {
        ProofKind::Inclusion => "inclusion-proof",
        ProofKind::Consistency => "consistency-proof",
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok((value, text)) => {
            if args.json {
                let mut value = value?;
                value["kind"] = serde_json::json!(kind_name);
                value["source"] = serde_json::json!(source);
                value["valid"] = serde_json::json!(true);
                writeln!(out, "{value}")?;
            } else {
                write!(out, "{text}")?;
            }
            Ok(EXIT_OK)
        }
        Err(e) => {
            if args.json {
                let value = serde_json::json!({
                    "kind": kind_name, "source": source, "valid": false,
                    "check": e.check(), "error": e.to_string(),
                });
                writeln!(out, "{value}")?;
            } else {
                writeln!(out, "{kind_name} {source}")?;
                writeln!(out, "INVALID: {} check failed: {e}", e.check())?;
            }
            Ok(EXIT_PROBLEMS)
        }
    }
}

fn print_inclusion(source: &str, r: &proof::InclusionReport) -> String {
    let e = &r.event;
    let meta: Vec<String> = e.meta.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let payload = match (&e.payload, e.payload_state.as_str()) {
        (Some(p), _) => p.clone(),
        (None, "pruned") => "(not in the proof: left out to fit; its hash is in the header)".into(),
        (None, state) => format!("({state}; pass --channel-key to read it)"),
    };
    format!(
        "inclusion-proof {source}
event     {}/{} {}
id        {}
time      {}
meta      {}
hash      {}
payload   {payload}
{}VALID: event {}/{} is in {}'s feed at index {} under a checkpoint signed by {}
",
        e.feed,
        e.seq,
        e.event_type,
        e.id,
        e.timestamp,
        meta.join(" "),
        e.hash,
        checkpoint_lines(&r.checkpoint),
        e.feed,
        e.seq,
        e.feed,
        r.index,
        e.feed
    )
}

fn print_consistency(source: &str, r: &proof::ConsistencyReport) -> String {
    let verdict = if r.consistency_checked {
        format!(
            "VALID: {}'s checkpoint of size {} extends its checkpoint of size {} (root {})
",
            r.feed,
            r.checkpoint.size,
            r.old_size,
            r.old_root.as_deref().unwrap_or("?")
        )
    } else {
        format!(
            "VALID: {}'s checkpoint of size {} is signed by {}; to check that it extends an earlier checkpoint of size {}, pass that checkpoint with --since FILE
",
            r.feed, r.checkpoint.size, r.feed, r.old_size
        )
    };
    format!(
        "consistency-proof {source}
feed      {} from size {}
{}{verdict}",
        r.feed,
        r.old_size,
        checkpoint_lines(&r.checkpoint)
    )
}

fn checkpoint_lines(c: &proof::CheckpointSummary) -> String {
    format!(
        "checkpoint {} size {} root {}
cosigners {}
",
        c.origin,
        c.size,
        c.root,
        if c.cosigners.is_empty() {
            "none of the given witnesses (--witness-cert)".to_string()
        } else {
            c.cosigners.join(", ")
        }
    )
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
        "{} {} ({}{} events, {} feeds{})",
        report.kind,
        report.source,
        report
            .format
            .map(|f| format!("format {f}, "))
            .unwrap_or_default(),
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
    for f in &report.feeds {
        if let Some(c) = &f.checkpoint {
            writeln!(
                out,
                "checkpoint: feed {} size {} root {}{} cosigned by {}",
                f.service,
                c.size,
                &c.root[..16],
                if c.verified {
                    ""
                } else {
                    " (failed its checks)"
                },
                if c.cosigners.is_empty() {
                    "no other node".to_string()
                } else {
                    format!("{} ({})", c.cosigners.len(), c.cosigners.join(", "))
                }
            )?;
        }
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
