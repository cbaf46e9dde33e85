//! Live trust updates: a running node rereads its CA file, revocation list,
//! certificate and key, and channel keyrings (on SIGHUP, or when `herald
//! reload` asks through the client endpoint), and closes the peer
//! connections whose certificate is no longer trusted.
//!
//! All or nothing: every file is read and checked first; if any is bad the
//! error names it and why, and nothing changes. Otherwise the store takes
//! the new state first (ingest admits authors with the new anchor, new
//! events use the newest channel key generations, a renewed certificate is
//! appended to the feed), then the TLS state (new handshakes present the
//! new certificate and check peers against the new anchor), and last the
//! live peer connections are checked again.
//!
//! Peer certificates also expire while connected: every
//! [`PEER_CERT_RECHECK_INTERVAL_MS`] the node checks its live peer
//! connections again, without a reload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Inner;
use crate::clock;
use crate::core::cert::AuthorCert;
use crate::core::wire::close;
use crate::identity::{IdentityError, NodeIdentity};
use crate::net::{self, NetError, TlsIdentity};
use crate::store::{LogError, TrustUpdate};

/// How often a node checks its live peer connections' certificates again
/// (revocation and validity window), so a peer certificate that expires
/// while connected drops within this interval without a reload.
pub const PEER_CERT_RECHECK_INTERVAL_MS: u64 = 60_000;

/// Why a reload was refused. Every variant means nothing changed: the node
/// keeps the trust state it had.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A file is missing, unreadable or malformed, or a certificate is not
    /// admitted (the message names the file and the reason).
    #[error("reload refused, nothing changed: {0}")]
    Files(#[from] IdentityError),
    /// The certificate is for another key than the feed's.
    #[error(
        "reload refused, nothing changed: the certificate {} is for another key ({new}) than this node's feed ({current}), and no key transition authorization for it sits next to it (NAME.transition): rotate with `herald keygen rotate` (or recover with `herald keygen recover`), or restore the certificate and key of the feed's key",
        .cert.display()
    )]
    OtherKey {
        cert: PathBuf,
        current: String,
        new: String,
    },
    /// The new TLS configuration could not be built.
    #[error("reload refused, nothing changed: {0}")]
    Tls(#[from] NetError),
    /// The store refused the new state or could not append the renewal.
    #[error("reload refused, nothing changed: {0}")]
    Store(#[from] LogError),
    #[error("reload refused, nothing changed: {0}")]
    Task(String),
}

/// A peer connection a reload (or the periodic check) closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedConnection {
    /// The peer's service name.
    pub peer: String,
    /// Why its certificate is no longer trusted.
    pub reason: String,
}

/// What a successful reload installed (`herald reload --json` prints it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub service: String,
    /// The CA file read.
    pub ca: String,
    /// The revocation list read, if the config names one.
    pub revoked: Option<String>,
    /// Entries of the revocation list.
    pub revoked_entries: usize,
    /// The node's certificate as reloaded: serial (hex) and end of validity
    /// (microseconds since the Unix epoch).
    pub certificate_serial: String,
    pub certificate_not_after_us: u64,
    /// The sequence number of the certificate renewal appended to the
    /// node's feed, if the reloaded certificate lasts longer than the
    /// feed's current one.
    pub renewal_seq: Option<u64>,
    /// The sequence number of the key transition appended to the node's
    /// feed, if the reloaded certificate is for a new key (`herald keygen
    /// rotate` or `recover`).
    #[serde(default)]
    pub transition_seq: Option<u64>,
    /// Key generations per channel.
    pub channels: BTreeMap<String, usize>,
    /// Peer connections closed because their certificate is no longer
    /// trusted.
    pub closed: Vec<ClosedConnection>,
}

/// What a reloaded node certificate means for this node's feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdentityChange {
    /// The feed's key: the same certificate, or a renewal (the store
    /// appends a renewal event if it lasts longer than the feed's current
    /// certificate).
    SameKey,
    /// Another key, with the authorization for the move next to the
    /// certificate: the store appends a key transition (it checks the
    /// authorization against the feed's key or the CA).
    NewKey,
}

/// Decides what the reloaded identity `reloaded` (from `cert_path`) means
/// for a node whose feed runs under `current`. The one place this is
/// decided: the same key is taken (a renewal or no change); another key
/// is a key transition when its authorization is there, refused when not.
pub(crate) fn apply_node_identity(
    current: &AuthorCert,
    reloaded: &NodeIdentity,
    cert_path: &Path,
) -> Result<IdentityChange, ReloadError> {
    if reloaded.cert.public_key != current.public_key && reloaded.transition.is_some() {
        return Ok(IdentityChange::NewKey);
    }
    if reloaded.cert.public_key != current.public_key {
        return Err(ReloadError::OtherKey {
            cert: cert_path.to_path_buf(),
            current: hex::encode(current.public_key),
            new: hex::encode(reloaded.cert.public_key),
        });
    }
    Ok(IdentityChange::SameKey)
}

/// Rereads the node's trust files and installs them (see the module
/// documentation). One reload runs at a time. Logs the outcome: info on
/// success, warn on a refusal.
pub(crate) async fn reload(inner: &Arc<Inner>) -> Result<ReloadReport, ReloadError> {
    let _one_at_a_time = inner.reload_lock.lock().await;
    let outcome = reload_now(inner).await;
    match &outcome {
        Ok(report) => tracing::info!(
            service = %report.service,
            certificate_serial = %report.certificate_serial,
            revoked_entries = report.revoked_entries,
            renewal_seq = ?report.renewal_seq,
            transition_seq = ?report.transition_seq,
            closed = report.closed.len(),
            "reloaded the CA, revocation list, certificate and channel keys"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "reload refused; the node keeps its current trust state")
        }
    }
    outcome
}

async fn reload_now(inner: &Arc<Inner>) -> Result<ReloadReport, ReloadError> {
    let config = &inner.config;
    // Read and check everything before anything changes.
    let (trust, identity) = config.load_identity(clock::now_us())?;
    let channels = config.load_channel_keys()?;
    let current = inner.tls.identity();
    // Same key, or a new key with its authorization (the store appends the
    // transition); anything else is refused here.
    apply_node_identity(current.cert(), &identity, &config.cert)?;
    let tls_identity = TlsIdentity::from_files(&config.cert, &config.key, Arc::new(trust.clone()))?
        .with_clock(current.clock());
    let server = net::server_config(&tls_identity)?;
    let tls_state = inner.tls.prepare(tls_identity)?;
    let mut generations = BTreeMap::new();
    for key in &channels {
        *generations.entry(key.name().to_string()).or_insert(0) += 1;
    }
    let mut report = ReloadReport {
        service: inner.service.clone(),
        ca: config.ca.display().to_string(),
        revoked: config.revoked.as_ref().map(|p| p.display().to_string()),
        revoked_entries: trust.revoked().len(),
        certificate_serial: identity.cert.serial_hex(),
        certificate_not_after_us: identity.cert.not_after_us,
        renewal_seq: None,
        transition_seq: None,
        channels: generations,
        closed: Vec::new(),
    };
    // The store first: it may refuse (a default channel gone, a renewal
    // that cannot be committed), and then nothing else changed either.
    let log = Arc::clone(&inner.log);
    let update = TrustUpdate {
        trust,
        identity,
        channels,
    };
    let stored = tokio::task::spawn_blocking(move || log.reload(update))
        .await
        .map_err(|e| ReloadError::Task(e.to_string()))??;
    report.renewal_seq = stored.renewal_seq;
    report.transition_seq = stored.transition_seq;

    inner.endpoint.set_server_config(Some(server));
    inner.tls.install(tls_state);
    report.closed = close_untrusted(inner);
    Ok(report)
}

/// Closes every live peer connection whose certificate the current trust
/// anchor no longer admits (revoked, or no longer from the CA) or whose
/// validity window no longer holds, with `close::UNAUTHORIZED` and the
/// reason, and logs each. Returns what it closed.
pub(crate) fn close_untrusted(inner: &Inner) -> Vec<ClosedConnection> {
    let trust = inner.tls.trust();
    let now_us = (inner.tls.identity().clock())();
    let live: Vec<(String, quinn::Connection)> = match inner.connections.lock() {
        Ok(c) => c
            .iter()
            .map(|(name, (conn, _))| (name.clone(), conn.clone()))
            .collect(),
        Err(_) => return Vec::new(),
    };
    let mut closed = Vec::new();
    for (peer, conn) in live {
        let verdict = net::authenticated_peer(&conn, &trust).and_then(|p| {
            p.cert
                .check_time(now_us)
                .map_err(|e| NetError::Unauthorized {
                    reason: format!("certificate refused: {e}"),
                })
        });
        let Err(e) = verdict else { continue };
        let reason = match e {
            NetError::Unauthorized { reason } => reason,
            other => other.to_string(),
        };
        tracing::warn!(%peer, %reason, "closing the connection: the peer's certificate is no longer trusted");
        let mut message = format!("certificate no longer trusted: {reason}");
        truncate_at_char(&mut message, net::CLOSE_REASON_BYTES_MAX);
        if let Ok(mut why) = inner.closed_untrusted.lock() {
            why.insert(conn.stable_id(), message.clone());
        }
        conn.close(close::UNAUTHORIZED.into(), message.as_bytes());
        closed.push(ClosedConnection { peer, reason });
    }
    closed
}

/// Checks the live peer connections every [`PEER_CERT_RECHECK_INTERVAL_MS`]
/// until shutdown (certificates that expire while connected).
pub(crate) async fn recheck_peers(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.clone();
    let interval = Duration::from_millis(PEER_CERT_RECHECK_INTERVAL_MS);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        close_untrusted(&inner);
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary.
fn truncate_at_char(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_for_another_key_is_refused_naming_rotation() {
        let dir = tempfile::tempdir().unwrap();
        crate::config::init_cluster(
            dir.path(),
            &["a".to_string(), "b".to_string()],
            17500,
            30,
            false,
        )
        .unwrap();
        let keys = dir.path().join("keys");
        let trust = crate::identity::TrustAnchor::load(&keys.join("ca.crt"), None).unwrap();
        let now = clock::now_us();
        let a =
            NodeIdentity::load("a", &keys.join("a.key"), &keys.join("a.crt"), &trust, now).unwrap();
        assert_eq!(
            apply_node_identity(&a.cert, &a, &keys.join("a.crt")).unwrap(),
            IdentityChange::SameKey
        );
        let b =
            NodeIdentity::load("b", &keys.join("b.key"), &keys.join("b.crt"), &trust, now).unwrap();
        let e = apply_node_identity(&a.cert, &b, &keys.join("b.crt")).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("another key") && text.contains("keygen rotate"),
            "{text}"
        );
        assert!(
            text.contains("b.crt") && text.contains("nothing changed"),
            "{text}"
        );
    }

    #[test]
    fn close_reasons_are_cut_on_a_character_boundary() {
        let mut s = "é".repeat(200);
        truncate_at_char(&mut s, 255);
        assert_eq!(s.len(), 254);
        let mut short = "ok".to_string();
        truncate_at_char(&mut short, 255);
        assert_eq!(short, "ok");
    }
}
