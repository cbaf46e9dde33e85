//! `herald keygen`: create the cluster CA (and roll it over), node and
//! client certificates, channel keys, renew and revoke certificates, rotate
//! and recover node keys. Prints one line per file written
//! (or, with `--json`, one JSON object `{"written": [...]}`); never prints key
//! material.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::{CliError, EXIT_OK};
use crate::identity;

/// Default validity of a CA certificate, in days.
pub const CA_DAYS_DEFAULT: u32 = 3650;
/// Default validity of a node or client certificate, in days.
pub const LEAF_DAYS_DEFAULT: u32 = 365;

#[derive(Debug, Subcommand)]
pub enum KeygenCommand {
    /// Create the cluster CA: DIR/ca.crt and DIR/ca.key (Ed25519, self-signed); with --rollover add a new CA to the bundle DIR/ca.crt, with --retire N retire CA N of it.
    Ca(CaArgs),
    /// Issue a node certificate DIR/NAME.crt and key DIR/NAME.key, signed by the CA in DIR.
    Node(LeafArgs),
    /// Issue a client certificate (clientAuth only: cannot serve or author events), e.g. for an HTTPS client of a node's API.
    Client(LeafArgs),
    /// Create a channel key DIR/channel-NAME.key (32 random bytes as hex, mode 0600), or with --rotate add a new key generation to it.
    Channel(ChannelArgs),
    /// Revoke DIR/NAME.crt by adding it to DIR/revoked.toml.
    Revoke(RevokeArgs),
    /// Renew node certificate DIR/NAME.crt for the same key DIR/NAME.key (signed by the CA in DIR); the node uses it from its next `herald reload` or restart.
    Renew(RenewArgs),
    /// Planned key rotation: a new key DIR/NAME.key and certificate DIR/NAME.crt, authorized by the old key (kept as DIR/NAME.prev.key) in DIR/NAME.transition; the node moves its feed to the new key on its next `herald reload` or restart.
    Rotate(TransitionArgs),
    /// Key recovery after a compromise: a new key and certificate for NAME, whose revoked certificate's feed moves to it by an authorization signed with the CA key (DIR/NAME.transition).
    Recover(TransitionArgs),
}

/// Options shared by every keygen command.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Print one JSON object instead of one line per file.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CaArgs {
    /// Key directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Validity in days.
    #[arg(long, default_value_t = CA_DAYS_DEFAULT)]
    pub days: u32,
    /// Overwrite existing files.
    #[arg(long, conflicts_with_all = ["rollover", "retire"])]
    pub force: bool,
    /// Start a CA rollover: create a new CA, DIR/ca-N.key and DIR/ca-N.crt
    /// (N its number in the bundle), and append its certificate to the
    /// bundle DIR/ca.crt. Never overwrites a key.
    #[arg(long, conflicts_with = "retire")]
    pub rollover: bool,
    /// End a CA rollover: mark CA N (1 is the first certificate of
    /// DIR/ca.crt) retired from now. Its certificates then verify feed
    /// history dated up to now and nothing else.
    #[arg(long, value_name = "N")]
    pub retire: Option<usize>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct LeafArgs {
    /// Key directory holding ca.crt and ca.key.
    #[arg(long)]
    pub dir: PathBuf,
    /// Sign with this CA key (default DIR/ca.key), e.g. DIR/ca-2.key after
    /// `keygen ca --rollover`; its CA must be a current CA of DIR/ca.crt.
    #[arg(long, value_name = "PATH")]
    pub ca_key: Option<PathBuf>,
    /// Service name: a DNS label ([a-z0-9-], 1 to 63 bytes).
    #[arg(long)]
    pub name: String,
    /// Validity in days.
    #[arg(long, default_value_t = LEAF_DAYS_DEFAULT)]
    pub days: u32,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ChannelArgs {
    /// Key directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Channel name: a DNS label ([a-z0-9-], 1 to 63 bytes).
    #[arg(long)]
    pub name: String,
    /// Overwrite an existing key.
    #[arg(long, conflicts_with = "rotate")]
    pub force: bool,
    /// Add a new key generation to the existing DIR/channel-NAME.key, keeping
    /// the older ones (nodes encrypt new events under it after a restart;
    /// events under older generations stay readable).
    #[arg(long)]
    pub rotate: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// Key directory holding NAME.crt; the list is DIR/revoked.toml.
    #[arg(long)]
    pub dir: PathBuf,
    /// Name of the certificate to revoke.
    #[arg(long)]
    pub name: String,
    /// Cut-off: keep the events of NAME's feed before this sequence number
    /// valid and refuse those from it on (for a stolen key: the first
    /// sequence number the owner did not write). Without --from-seq and
    /// --from the certificate is revoked outright, with its whole feed.
    #[arg(long, value_name = "SEQ")]
    pub from_seq: Option<u64>,
    /// Cut-off by time (RFC 3339, e.g. 2026-12-01T00:00:00Z): refuse events
    /// of NAME's feed timestamped at or after it. Events carry their
    /// author's clock, which a thief can set back: prefer --from-seq.
    #[arg(long, value_name = "TIME", value_parser = parse_cutoff_time)]
    pub from: Option<u64>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Parses an RFC 3339 time into microseconds since the Unix epoch.
fn parse_cutoff_time(text: &str) -> Result<u64, String> {
    let time = humantime::parse_rfc3339_weak(text).map_err(|e| {
        format!("{text:?} is not an RFC 3339 time (e.g. 2026-12-01T00:00:00Z): {e}")
    })?;
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{text:?} is before 1970"))?;
    u64::try_from(since.as_micros()).map_err(|_| format!("{text:?} is too far in the future"))
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    /// Key directory holding ca.crt, ca.key, NAME.crt and NAME.key.
    #[arg(long)]
    pub dir: PathBuf,
    /// Service name of the node whose certificate is renewed.
    #[arg(long)]
    pub name: String,
    /// Sign with this CA key (default DIR/ca.key), e.g. DIR/ca-2.key to move
    /// the node to the new CA of a rollover; its CA must be a current CA of
    /// DIR/ca.crt.
    #[arg(long, value_name = "PATH")]
    pub ca_key: Option<PathBuf>,
    /// Validity from now, in days (the old not_before is kept).
    #[arg(long, default_value_t = LEAF_DAYS_DEFAULT)]
    pub days: u32,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct TransitionArgs {
    /// Key directory holding ca.crt, the CA key, NAME.crt (and, to rotate,
    /// NAME.key).
    #[arg(long)]
    pub dir: PathBuf,
    /// Service name of the node whose key is replaced.
    #[arg(long)]
    pub name: String,
    /// Sign the new certificate (and, for a recovery, the authorization)
    /// with this CA key (default DIR/ca.key), e.g. DIR/ca-2.key after a CA
    /// rollover; its CA must be a current CA of DIR/ca.crt.
    #[arg(long, value_name = "PATH")]
    pub ca_key: Option<PathBuf>,
    /// Validity of the new certificate from now, in days.
    #[arg(long, default_value_t = LEAF_DAYS_DEFAULT)]
    pub days: u32,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn run(cmd: KeygenCommand) -> Result<u8, CliError> {
    let (written, output) = match cmd {
        KeygenCommand::Ca(a) if a.rollover => {
            let rolled = identity::rollover_ca(&a.dir, a.days)?;
            if a.output.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "written": [display(&rolled.key), display(&rolled.cert), display(&rolled.bundle)],
                        "ca": rolled.number,
                        "subject": rolled.subject,
                    })
                );
            } else {
                println!("wrote {}", rolled.key.display());
                println!("wrote {}", rolled.cert.display());
                println!(
                    "wrote {} (CA {} added: {}; issue under it with --ca-key {})",
                    rolled.bundle.display(),
                    rolled.number,
                    rolled.subject,
                    rolled.key.display()
                );
            }
            return Ok(EXIT_OK);
        }
        KeygenCommand::Ca(CaArgs {
            dir,
            retire: Some(number),
            output,
            ..
        }) => {
            let retired = identity::retire_ca(&dir, number)?;
            let at = crate::clock::format_timestamp(retired.retired_at_us);
            if output.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "written": [display(&retired.bundle)],
                        "ca": retired.number,
                        "subject": retired.subject,
                        "retired_at": at,
                        "retired_at_us": retired.retired_at_us,
                    })
                );
            } else {
                println!(
                    "wrote {} (CA {} retired at {at}: {}; destroy its key or move it offline)",
                    retired.bundle.display(),
                    retired.number,
                    retired.subject
                );
            }
            return Ok(EXIT_OK);
        }
        KeygenCommand::Ca(a) => (identity::create_ca(&a.dir, a.days, a.force)?, a.output),
        KeygenCommand::Node(a) => (
            identity::issue_node_with_ca(&a.dir, &a.name, a.days, a.force, a.ca_key.as_deref())?,
            a.output,
        ),
        KeygenCommand::Client(a) => (
            identity::issue_client_with_ca(&a.dir, &a.name, a.days, a.force, a.ca_key.as_deref())?,
            a.output,
        ),
        KeygenCommand::Channel(a) if a.rotate => {
            let rotated = identity::rotate_channel(&a.dir, &a.name)?;
            let key_id = hex::encode(rotated.key_id);
            if a.output.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "written": [display(&rotated.path)],
                        "channel": a.name,
                        "generation": rotated.generation,
                        "key_id": key_id,
                    })
                );
            } else {
                println!(
                    "wrote {} (channel {}: generation {}, key id {key_id}; run `herald reload` on the nodes holding it (or restart them) to encrypt new events under it)",
                    rotated.path.display(),
                    a.name,
                    rotated.generation
                );
            }
            return Ok(EXIT_OK);
        }
        KeygenCommand::Channel(a) => (
            vec![identity::create_channel(&a.dir, &a.name, a.force)?],
            a.output,
        ),
        KeygenCommand::Renew(a) => (
            vec![identity::renew_node_with_ca(
                &a.dir,
                &a.name,
                a.days,
                a.ca_key.as_deref(),
            )?],
            a.output,
        ),
        KeygenCommand::Rotate(a) => {
            let done = identity::rotate_node_key(&a.dir, &a.name, a.days, a.ca_key.as_deref())?;
            print_transition(&done, a.output.json);
            return Ok(EXIT_OK);
        }
        KeygenCommand::Recover(a) => {
            let done = identity::recover_node_key(&a.dir, &a.name, a.days, a.ca_key.as_deref())?;
            print_transition(&done, a.output.json);
            return Ok(EXIT_OK);
        }
        KeygenCommand::Revoke(a) => {
            let cutoff =
                (a.from_seq.is_some() || a.from.is_some()).then_some(crate::core::cert::Cutoff {
                    from_seq: a.from_seq,
                    from_us: a.from,
                });
            let (path, changed) = identity::revoke_with_status(&a.dir, &a.name, cutoff)?;
            if !changed {
                if a.output.json {
                    let path = display(&path);
                    println!(
                        "{}",
                        serde_json::json!({ "written": [], "unchanged": [path] })
                    );
                } else {
                    println!(
                        "unchanged {} ({} is already revoked)",
                        path.display(),
                        a.name
                    );
                }
                return Ok(EXIT_OK);
            }
            (vec![path], a.output)
        }
    };
    print_written(&written, output.json);
    Ok(EXIT_OK)
}

/// Prints what a key rotation or recovery wrote: one `wrote PATH` line each
/// and what to do next, or one JSON object.
fn print_transition(done: &identity::NodeKeyTransition, json: bool) {
    let name = &done.service;
    if json {
        let written: Vec<String> = done.written.iter().map(|p| display(p)).collect();
        println!(
            "{}",
            serde_json::json!({
                "written": written,
                "kind": done.kind.name(),
                "service": name,
                "public_key": hex::encode(done.public_key),
                "serial": hex::encode(&done.serial),
            })
        );
        return;
    }
    for p in &done.written {
        println!("wrote {}", p.display());
    }
    let copy = match done.kind {
        crate::core::transition::TransitionKind::Rotation => String::new(),
        crate::core::transition::TransitionKind::Recovery => format!(
            "copy {}, {} and {} to node {name}, then ",
            done.key.display(),
            done.cert.display(),
            done.transition.display()
        ),
    };
    println!(
        "{copy}run `herald reload --config C` on node {name} (or send it SIGHUP, or restart it) to move its feed to the new key"
    );
}

/// Prints the written paths: one line each, or `{"written": [...]}`.
pub(crate) fn print_written(paths: &[PathBuf], json: bool) {
    if json {
        let list: Vec<String> = paths.iter().map(|p| display(p)).collect();
        println!("{}", serde_json::json!({ "written": list }));
    } else {
        for p in paths {
            println!("wrote {}", p.display());
        }
    }
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
