//! `herald status`: peers (connected, backlog, retries, last error, last
//! acknowledgement) and feed heads, from the running node or, when it is
//! not running, from its store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, EXIT_OK};
use crate::audit::verify::format_timestamp;
use crate::config::NodeConfig;
use crate::node::client::{ClientRequest, ClientResponse, NodeClient};
use crate::node::expiry::CertificateExpiry;
use crate::node::{CheckpointStatus, NodeStatus, PeerState};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The node's config file.
    #[arg(long)]
    pub config: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: StatusArgs) -> Result<u8, CliError> {
    let config = NodeConfig::load(&args.config)?;
    let status = if crate::store::is_locked(&config.data_dir) {
        running_status(&config)?
    } else {
        offline_status(&args.config, &config)?
    };
    if args.json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        print_status(&status);
    }
    Ok(EXIT_OK)
}

fn running_status(config: &NodeConfig) -> Result<NodeStatus, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = NodeClient::connect(config).await?;
        let mut json = None;
        let answer = client
            .request(&ClientRequest::Status, |r| match r {
                ClientResponse::Status(s) => {
                    json = Some(s);
                    Ok(())
                }
                ClientResponse::Error(e) => Err(e),
                _ => Err("unexpected answer to a status request".into()),
            })
            .await;
        // Close on every path, so the node frees this tool's slot at once.
        client.finish().await;
        answer?;
        let json = json.ok_or("the node sent no status")?;
        Ok(serde_json::from_str(&json)?)
    })
}

/// The status a stopped node's store can tell: heads, and per peer the
/// backlog against the last persisted acknowledgements.
fn offline_status(config_path: &Path, config: &NodeConfig) -> Result<NodeStatus, CliError> {
    // A node that never ran has no store and no status: exit 2 (a script
    // polling until the node is up must not take this for a status).
    let conn = super::open_store_read_only(config_path, config)?;
    let feeds = crate::store::read_heads_from(&conn)?;
    let cursors = crate::store::read_peer_cursors(&conn)?;
    let mut acked: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
    for c in &cursors {
        acked.insert(
            (c.peer.as_str(), c.feed.as_str()),
            (c.acked_seq, c.acked_at_us),
        );
    }
    let peers = config
        .peers
        .iter()
        .map(|p| {
            // As the running node counts it: every feed but the peer's own.
            let backlog = feeds
                .iter()
                .filter(|f| f.feed != p.name)
                .map(|f| match acked.get(&(p.name.as_str(), f.feed.as_str())) {
                    Some((seq, _)) => f.seq.saturating_sub(*seq),
                    None => f.seq + 1,
                })
                .sum();
            let last_ack_at_us = cursors
                .iter()
                .filter(|c| c.peer == p.name)
                .map(|c| c.acked_at_us)
                .max();
            PeerState {
                name: p.name.clone(),
                address: p.address.to_string(),
                connected: false,
                backlog,
                retries: 0,
                last_error: Some("node is not running".into()),
                last_ack_at_us,
            }
        })
        .collect();
    // Not load_identity: that refuses an expired certificate, which is just
    // what status must be able to show.
    let now_us = crate::clock::now_us();
    let trust = crate::identity::TrustAnchor::load(&config.ca, config.revoked.as_deref())?;
    let certificate = crate::identity::read_cert_pem(&config.cert)
        .and_then(|der| {
            trust.admit_author(&config.service, &der).map_err(|source| {
                crate::identity::IdentityError::Certificate {
                    path: config.cert.clone(),
                    source,
                }
            })
        })
        .map(|c| crate::node::expiry::node_expiry(&config.service, c.not_after_us, now_us))?;
    let cluster = crate::core::checkpoint::cluster_id(&trust.ca_public_key());
    let stored: Vec<std::sync::Arc<crate::store::StoredCheckpoint>> =
        crate::store::read_checkpoints(&conn)?
            .into_iter()
            .map(std::sync::Arc::new)
            .collect();
    Ok(NodeStatus {
        service: config.service.clone(),
        running: false,
        peers,
        feeds,
        healthy: true,
        problems: Vec::new(),
        recovering: false,
        checkpoints: CheckpointStatus::from_stored(&cluster, &stored),
        outbox_sources: config
            .outbox_sources
            .iter()
            .map(|s| offline_link(&s.name, s.url.as_ref(), &s.table))
            .collect(),
        inbox_sinks: config
            .inbox_sinks
            .iter()
            .map(|s| offline_link(&s.name, s.url.as_ref(), &s.table))
            .collect(),
        certificate: Some(certificate),
        ca: crate::node::expiry::ca_expiry(&trust, now_us),
        feed_key: offline_feed_key(&conn, &trust, &config.service)?,
    })
}

/// The key of `service`'s feed as its store holds it (none before its
/// genesis).
fn offline_feed_key(
    conn: &rusqlite::Connection,
    trust: &crate::identity::TrustAnchor,
    service: &str,
) -> Result<Option<crate::node::FeedKeyStatus>, CliError> {
    use rusqlite::OptionalExtension;
    let current: Option<Vec<u8>> = conn
        .query_row(
            "SELECT genesis_cert FROM feeds WHERE feed = ?1",
            [service],
            |r| r.get(0),
        )
        .optional()
        .map_err(crate::store::LogError::from)?;
    let Some(der) = current else {
        return Ok(None);
    };
    let public_key = trust
        .admit_author(service, &der)
        .map(|c| hex::encode(c.public_key))
        .unwrap_or_else(|e| format!("(certificate not admitted: {e})"));
    let transitions = crate::store::transitions::read_feed(conn, service)?
        .iter()
        .map(|t| t.seq)
        .collect();
    Ok(Some(crate::node::FeedKeyStatus {
        public_key,
        transitions,
    }))
}

/// A configured source or sink of a node that is not running.
fn offline_link(
    name: &str,
    url: Option<&crate::config::DbUrl>,
    table: &str,
) -> crate::outbox::DbLinkStatus {
    crate::outbox::DbLinkStatus {
        name: name.to_string(),
        backend: url
            .and_then(|u| crate::outbox::Backend::of(u.expose()).ok())
            .map(|b| b.name().to_string())
            .unwrap_or_default(),
        url: url.map(|u| u.redacted()).unwrap_or_default(),
        table: table.to_string(),
        last_error: Some("node is not running".into()),
        ..Default::default()
    }
}

fn print_links(title: &str, links: &[crate::outbox::DbLinkStatus]) {
    if links.is_empty() {
        return;
    }
    println!(
        "{:<16} {:<9} {:<20} {:<10} {:>8} {:>8} {:>8} {:>8} LAST ERROR",
        title, "DATABASE", "TABLE", "STATE", "BACKLOG", "PER SEC", "SKIPPED", "RETRIES"
    );
    for l in links {
        println!(
            "{:<16} {:<9} {:<20} {:<10} {:>8} {:>8} {:>8} {:>8} {}",
            l.name,
            l.backend,
            l.table,
            if l.connected { "connected" } else { "down" },
            l.backlog,
            l.per_second,
            l.skipped,
            l.retries,
            l.last_error.as_deref().unwrap_or("-")
        );
    }
}

/// One line per certificate: `certificate: valid until T (N days left)`,
/// then `  WARNING: ...` within 30 days of its end or after it.
fn print_expiry(label: &str, e: Option<&CertificateExpiry>) {
    let Some(e) = e else {
        return;
    };
    if e.days_left < 0 {
        println!("{label}: EXPIRED at {}", e.not_after);
    } else {
        println!(
            "{label}: valid until {} ({} days left)",
            e.not_after, e.days_left
        );
    }
    if let Some(w) = &e.warning {
        println!("  WARNING: {w}");
    }
}

fn print_status(s: &NodeStatus) {
    println!(
        "node {} ({})",
        s.service,
        if s.running { "running" } else { "not running" }
    );
    if s.running {
        println!(
            "health: {}{}",
            if s.healthy { "ok" } else { "UNHEALTHY" },
            if s.recovering {
                " (recovering its own feed; not proclaiming yet)"
            } else {
                ""
            }
        );
        for p in &s.problems {
            println!(
                "  {} {}: {} (since {})",
                if p.permanent { "FATAL" } else { "retrying" },
                p.task,
                p.reason,
                format_timestamp(p.since_us)
            );
        }
    }
    print_expiry("certificate", s.certificate.as_ref());
    print_expiry("ca", s.ca.as_ref());
    if let Some(key) = &s.feed_key {
        let transitions = match key.transitions.as_slice() {
            [] => "no key transitions".to_string(),
            seqs => format!(
                "key transitions at seq {}",
                seqs.iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        println!("feed key: {} ({transitions})", key.public_key);
    }
    println!(
        "{:<16} {:<22} {:<10} {:>8} {:>8} {:<28} LAST ERROR",
        "PEER", "ADDRESS", "STATE", "BACKLOG", "RETRIES", "LAST ACK"
    );
    for p in &s.peers {
        println!(
            "{:<16} {:<22} {:<10} {:>8} {:>8} {:<28} {}",
            p.name,
            p.address,
            if p.connected { "connected" } else { "down" },
            p.backlog,
            p.retries,
            p.last_ack_at_us.map(format_timestamp).unwrap_or("-".into()),
            p.last_error.as_deref().unwrap_or("-")
        );
    }
    print_links("OUTBOX SOURCE", &s.outbox_sources);
    print_links("INBOX SINK", &s.inbox_sinks);
    println!("{:<16} {:>10} {:<66} STATUS", "FEED", "HEAD", "HASH");
    for f in &s.feeds {
        println!(
            "{:<16} {:>10} {:<66} {}",
            f.feed,
            f.seq,
            hex::encode(f.hash),
            f.status
        );
    }
    println!(
        "{:<16} {:>10} {:<18} COSIGNED BY",
        "CHECKPOINT", "SIZE", "ROOT"
    );
    for c in &s.checkpoints {
        println!(
            "{:<16} {:>10} {:<18} {}",
            c.feed,
            c.size,
            c.root.get(..16).unwrap_or(&c.root),
            if c.cosigners.is_empty() {
                "-".to_string()
            } else {
                c.cosigners.join(", ")
            }
        );
    }
}
