//! The shell around the replication connection: per peer connection, two
//! tasks pump frames between QUIC and one sans-IO [`Connection`] (which owns
//! the protocol state), commit what arrives through the log's verifying
//! ingest, and read and send what the connection asks for.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Inner, PeerState};
use crate::clock;
use crate::core::checkpoint::Equivocation;
use crate::core::crypto::Hash;
use crate::core::query::QueryRequest;
pub use crate::core::replication::PEER_FRAMES_PER_SECOND_MAX;
use crate::core::replication::{
    CheckpointOffer, Connection, ProtocolError, Received, SendRange, frames,
};
use crate::core::verify::{Check, Rejection};
use crate::core::wire::{FeedPosition, PeerMessage, Seal, close};
use crate::net::{self, NetError};
use crate::store::{CheckpointOutcome, EvidenceOutcome, FeedHead, IngestPolicy};

/// How often acknowledged cursors are persisted for `herald status` (the
/// protocol itself needs no persisted cursor: `Hello` re-establishes it).
pub const ACK_PERSIST_INTERVAL_MS: u64 = 500;
/// How long the accepting side waits for the dialer's replication stream.
pub const REPLICATION_STREAM_WAIT_MS: u64 = 10_000;

/// First frame on every bidirectional stream: what the stream is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum StreamOpen {
    /// The replication stream (opened once, by the dialling side).
    Replication,
    /// A synchronous query; the answer is one `SignedQueryResult` frame.
    Query(QueryRequest),
}

/// Why a peer connection ended.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("{0}")]
    Version(String),
    #[error("peer sent an event that failed verification: {0}")]
    Verification(Rejection),
    #[error("peer sent a checkpoint or evidence that failed verification: {0}")]
    Checkpoint(crate::core::checkpoint::CheckpointError),
    #[error("store: {0}")]
    Store(#[from] crate::store::LogError),
    #[error("shutting down")]
    Shutdown,
    #[error("peer did not open the replication stream in time")]
    NoReplicationStream,
}

impl PeerError {
    /// The QUIC close code that tells the peer why.
    pub fn close_code(&self) -> u32 {
        match self {
            PeerError::Net(e) => net::close_code(e),
            PeerError::Protocol(_) => close::PROTOCOL_VIOLATION,
            PeerError::Version(_) => close::VERSION_MISMATCH,
            PeerError::Verification(_) | PeerError::Checkpoint(_) => close::VERIFICATION_FAILED,
            // Our own store failing is not the peer's fault.
            PeerError::Shutdown | PeerError::Store(_) => close::SHUTDOWN,
            PeerError::NoReplicationStream => close::PROTOCOL_VIOLATION,
        }
    }
}

/// Whether a rejected event proves the sender misbehaved. An honest peer
/// sends each feed in order from what we acknowledged, over one ordered
/// stream, so a gap, an event of a feed we never got a genesis for, an
/// event of this node's own feed beyond its head (no honest peer holds
/// more of it than this node), or anything failing a cryptographic or
/// structural check is its fault. Duplicates and forks are not (forks are
/// the author's doing and are kept as evidence), nor is a relay forwarding
/// another branch of a forked feed: the store's ingest skips those
/// ([`IngestPolicy::tolerates`]) and only reports the rest.
pub fn is_misbehaviour(r: &Rejection) -> bool {
    !matches!(r.check, Check::Duplicate | Check::Fork)
}

/// Runs replication on `conn` until it ends; returns why.
pub(crate) async fn run_connection(
    inner: Arc<Inner>,
    conn: quinn::Connection,
    peer: String,
    dialer: bool,
) -> PeerError {
    let (repl_tx, repl_rx) = tokio::sync::oneshot::channel();
    let acceptor = tokio::spawn(super::streams::accept_streams(
        inner.clone(),
        conn.clone(),
        peer.clone(),
        (!dialer).then_some(repl_tx),
    ));
    let result = async {
        let (send, recv) = if dialer {
            let (mut send, recv) = conn.open_bi().await.map_err(NetError::from)?;
            net::write_frame(&mut send, &StreamOpen::Replication).await?;
            (send, recv)
        } else {
            match tokio::time::timeout(Duration::from_millis(REPLICATION_STREAM_WAIT_MS), repl_rx)
                .await
            {
                Ok(Ok(streams)) => streams,
                _ => return Err(PeerError::NoReplicationStream),
            }
        };
        replicate(&inner, &peer, send, recv).await
    }
    .await;
    acceptor.abort();
    let error = match result {
        Ok(()) => PeerError::Shutdown,
        Err(e) => e,
    };
    conn.close(error.close_code().into(), error.to_string().as_bytes());
    error
}

/// The connection's replication state, shared by its two halves. The
/// [`Connection`] is the single owner of protocol state; each half locks it
/// only for calls into the machine, never across IO, so the inbound half
/// never waits for the outbound half's writes and two nodes sending to each
/// other cannot deadlock on full flow-control windows.
struct Shared {
    conn: std::sync::Mutex<Connection>,
    /// Tells the outbound half the machine has something new to send.
    wake: tokio::sync::Notify,
}

/// Replication on one connection: an inbound half that reads, verifies and
/// commits, and an outbound half that sends what the peer lacks and our
/// acknowledgements, both driving one [`Connection`]. Returns when either
/// half ends.
async fn replicate(
    inner: &Arc<Inner>,
    peer: &str,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<(), PeerError> {
    let shared = Arc::new(Shared {
        conn: std::sync::Mutex::new(Connection::over_reliable_transport(
            &inner.service,
            peer,
            clock::now_us(),
        )),
        wake: tokio::sync::Notify::new(),
    });
    let mut inbound = tokio::spawn(inbound(
        inner.clone(),
        peer.to_string(),
        recv,
        shared.clone(),
    ));
    let mut outbound = tokio::spawn(outbound(
        inner.clone(),
        peer.to_string(),
        send,
        shared.clone(),
    ));
    let result = tokio::select! {
        r = &mut inbound => r,
        r = &mut outbound => r,
    };
    inbound.abort();
    outbound.abort();
    // However the session ended (either half first, an error, shutdown),
    // what the peer acknowledged is persisted: the half that would have
    // persisted it may have been aborted mid-way.
    let acked = lock(&shared).acknowledged().clone();
    if !acked.is_empty() {
        inner.metrics.acknowledged(peer, &acked);
        persist_acks(inner, peer, &acked);
    }
    result.unwrap_or_else(|e| Err(PeerError::Protocol(format!("replication task failed: {e}"))))
}

/// Frames read from a peer that may wait to be checked and applied. The
/// reader stops when the queue is full, so QUIC flow control pushes back on
/// the peer instead of memory growing.
pub const INBOUND_FRAMES_QUEUED_MAX: usize = 8;
/// Most events one ingest takes when frames queued up while the previous
/// ingest committed. A receiver that falls behind catches up in bigger
/// commits (one fsync and one batch verification for several frames)
/// instead of paying per-frame costs on a backlog.
pub const INGEST_COALESCE_EVENTS_MAX: usize = crate::core::limits::COMMIT_BATCH_EVENTS_MAX;
/// Most envelope bytes one ingest gathers from queued frames, so large
/// events cannot make a receiver hold many frames' worth at once (a single
/// frame may still exceed it; it is applied alone).
pub const INGEST_COALESCE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Ends the frame reader when the inbound half returns, however it returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads frames off the stream into `queue` until the stream ends or fails
/// (sent on as the last item) or the inbound half stops listening.
async fn read_frames(
    mut recv: quinn::RecvStream,
    queue: tokio::sync::mpsc::Sender<Result<Option<PeerMessage>, NetError>>,
) {
    loop {
        let frame = net::read_frame::<PeerMessage>(&mut recv).await;
        let last = !matches!(frame, Ok(Some(_)));
        if queue.send(frame).await.is_err() || last {
            return;
        }
    }
}

/// Reads frames, checks them through the connection, verifies and commits
/// events. Events of frames that queued up while an ingest ran are applied
/// together.
async fn inbound(
    inner: Arc<Inner>,
    peer: String,
    recv: quinn::RecvStream,
    shared: Arc<Shared>,
) -> Result<(), PeerError> {
    let peer = peer.as_str();
    let (queue, mut frames) = tokio::sync::mpsc::channel(INBOUND_FRAMES_QUEUED_MAX);
    let _reader = AbortOnDrop(tokio::spawn(read_frames(recv, queue)));
    let mut shutdown = inner.shutdown.clone();
    let mut pending = Gathered::default();
    loop {
        let next = if pending.envelopes.is_empty() {
            tokio::select! {
                frame = frames.recv() => frame,
                _ = shutdown.changed() => return Err(PeerError::Shutdown),
            }
        } else if pending.wants_more() {
            match frames.try_recv() {
                Ok(frame) => Some(frame),
                // Nothing more queued: apply what was gathered.
                Err(_) => {
                    apply_pending(&inner, peer, &mut pending, &shared).await?;
                    continue;
                }
            }
        } else {
            apply_pending(&inner, peer, &mut pending, &shared).await?;
            continue;
        };
        let message = match next {
            Some(Ok(Some(m))) => m,
            Some(Ok(None)) | None => {
                apply_pending(&inner, peer, &mut pending, &shared).await?;
                return Err(PeerError::Protocol("replication stream ended".into()));
            }
            Some(Err(e)) => {
                apply_pending(&inner, peer, &mut pending, &shared).await?;
                return Err(PeerError::Net(e));
            }
        };
        // Acknowledgements matter only for feeds this node holds.
        let held = match &message {
            PeerMessage::Ack { .. } => Some(held_feeds(&inner)?),
            _ => None,
        };
        let received = lock(&shared).handle_message(clock::now_us(), message, |feed| {
            held.as_ref().is_none_or(|held| held.contains(feed))
        });
        match received {
            Ok(Received::Nothing) => shared.wake.notify_one(),
            Ok(Received::Established { own_head }) => {
                if let Ok(mut reported) = inner.own_feed_reported.lock() {
                    reported.insert(peer.to_string(), own_head);
                }
                shared.wake.notify_one();
            }
            Ok(Received::Events(envelopes, seals)) => pending.add(envelopes, seals),
            Ok(Received::Fork(first, second)) => {
                // Keep the stream's order: what came before is applied first.
                apply_pending(&inner, peer, &mut pending, &shared).await?;
                check_evidence(&inner, peer, first, second).await?;
            }
            Ok(Received::Checkpoint(note)) => {
                // Checked against the tree the events before it built.
                apply_pending(&inner, peer, &mut pending, &shared).await?;
                check_checkpoint(&inner, peer, note).await?;
            }
            Ok(Received::Equivocation(evidence)) => {
                apply_pending(&inner, peer, &mut pending, &shared).await?;
                check_equivocation(&inner, peer, *evidence).await?;
            }
            Err(e @ ProtocolError::Version { .. }) => {
                return Err(PeerError::Version(e.to_string()));
            }
            Err(e @ ProtocolError::Flood) => {
                tracing::warn!(peer, "peer flooded the replication stream; disconnecting");
                return Err(PeerError::Protocol(e.to_string()));
            }
            Err(e) => return Err(PeerError::Protocol(e.to_string())),
        }
    }
}

/// Events of queued frames, and their seals, gathered for one ingest.
#[derive(Debug, Default)]
struct Gathered {
    envelopes: Vec<Vec<u8>>,
    seals: Vec<Seal>,
    bytes: usize,
}

impl Gathered {
    fn add(&mut self, envelopes: Vec<Vec<u8>>, seals: Vec<Seal>) {
        self.bytes += envelopes.iter().map(Vec::len).sum::<usize>();
        self.envelopes.extend(envelopes);
        self.seals.extend(seals);
    }

    /// Whether another queued frame may join (within the coalescing limits).
    fn wants_more(&self) -> bool {
        self.envelopes.len() < INGEST_COALESCE_EVENTS_MAX && self.bytes < INGEST_COALESCE_BYTES_MAX
    }

    fn take(&mut self) -> (Vec<Vec<u8>>, Vec<Seal>) {
        self.bytes = 0;
        (
            std::mem::take(&mut self.envelopes),
            std::mem::take(&mut self.seals),
        )
    }
}

/// Applies the gathered events (if any) and tells the connection, which
/// then owes the peer an acknowledgement.
async fn apply_pending(
    inner: &Arc<Inner>,
    peer: &str,
    pending: &mut Gathered,
    shared: &Shared,
) -> Result<(), PeerError> {
    if pending.envelopes.is_empty() {
        return Ok(());
    }
    let (envelopes, seals) = pending.take();
    // Feeds this peer holds another branch of, skipped from where they part.
    let skipped = lock(shared)
        .skipped_feeds()
        .iter()
        .map(|(feed, seq)| (feed.clone(), *seq))
        .collect();
    let policy = IngestPolicy::from_peer(peer, skipped);
    let skip_from = apply(inner, peer, envelopes, seals, policy).await?;
    lock(shared).handle_ingested(&skip_from);
    shared.wake.notify_one();
    Ok(())
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Connection> {
    // A poisoned lock only means another task panicked mid-update of plain
    // data; the data is still usable.
    shared.conn.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends `Hello`, then whatever the connection asks: acknowledgements,
/// events the peer lacks, evidence and checkpoints.
async fn outbound(
    inner: Arc<Inner>,
    peer: String,
    mut send: quinn::SendStream,
    shared: Arc<Shared>,
) -> Result<(), PeerError> {
    let inner = &inner;
    let peer = peer.as_str();
    let mut changes = inner.log.changes();
    let mut shutdown = inner.shutdown.clone();
    let hello = lock(&shared).hello(&positions(&local_heads(inner)?));
    net::write_frame(&mut send, &hello).await?;
    let mut last_persist = tokio::time::Instant::now();
    // Acknowledgements not persisted yet (the interval had not passed):
    // persisted when it has, even if the peer acknowledges nothing more.
    let mut unpersisted: Option<BTreeMap<String, u64>> = None;
    let result = loop {
        // One read of the heads serves the acknowledgement, the sends and
        // the comparison.
        let local = local_heads(inner)?;
        let heads: BTreeMap<String, u64> = local.iter().map(|p| (p.feed.clone(), p.seq)).collect();
        let (ack, acked, backlog, ranges) = {
            let mut conn = lock(&shared);
            let ack = if conn.ack_due() {
                conn.poll_ack(&positions(&local))
            } else {
                None
            };
            let acked = conn
                .take_ack_progress()
                .then(|| conn.acknowledged().clone());
            let backlog = conn.backlog(&heads);
            let ranges = conn.poll_send(clock::now_us(), &heads);
            (ack, acked, backlog, ranges)
        };
        if let Some(acked) = acked {
            update_status(inner, peer, |s| s.last_ack_at_us = Some(clock::now_us()));
            inner.metrics.acknowledged(peer, &acked);
            unpersisted = Some(acked);
        }
        let persist_interval = Duration::from_millis(ACK_PERSIST_INTERVAL_MS);
        if last_persist.elapsed() >= persist_interval
            && let Some(acked) = unpersisted.take()
        {
            last_persist = tokio::time::Instant::now();
            persist_acks(inner, peer, &acked);
        }
        if let Some(ack) = ack
            && let Err(e) = net::write_frame(&mut send, &ack).await
        {
            break Err(e.into());
        }
        update_status(inner, peer, |s| s.backlog = backlog);
        if let Err(e) = send_missing(inner, &shared, ranges, &mut send).await {
            break Err(e);
        }
        // After the sends, so comparing histories (which may read the
        // store) never delays delivery. A feed found to diverge is held
        // back from the next send on; what went out before is skipped by
        // the peer, which tolerates another branch from a relay.
        if let Err(e) = compare_histories(inner, peer, &shared, &local, &mut send).await {
            break Err(e);
        }
        if let Err(e) = share_fork_evidence(inner, &shared, &local, &mut send).await {
            break Err(e);
        }
        if let Err(e) = send_checkpoints(inner, &shared, &mut send).await {
            break Err(e);
        }
        if let Err(e) = share_equivocations(inner, &shared, &local, &mut send).await {
            break Err(e);
        }
        let wake_at = lock(&shared).poll_timeout();
        let timer = wake_at
            .map(|at| Duration::from_micros(at.saturating_sub(clock::now_us())))
            .unwrap_or(Duration::from_secs(3600));
        let persist_in = persist_interval.saturating_sub(last_persist.elapsed());
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(persist_in), if unpersisted.is_some() => {}
            _ = changes.changed() => {}
            _ = tokio::time::sleep(timer) => {
                // Also wakes for relays and checkpoints coming due; the
                // connection rewinds only when acknowledgements really stalled.
                if lock(&shared).handle_timeout(clock::now_us()) {
                    update_status(inner, peer, |s| s.retries += 1);
                }
            }
            _ = shutdown.changed() => break Err(PeerError::Shutdown),
        }
    };
    // `replicate` persists the acknowledgements once both halves stopped.
    result
}

/// Compares the peer's reported positions with our history. Where the
/// peer holds a different event at a sequence number we hold (a split
/// view: the author showed each of us another history), we stop sending
/// that feed from there and send our event at that point: the peer's
/// ingest then holds two validly signed events at one position, records
/// them as fork evidence and passes it on to every node, this one
/// included. A position beyond our head cannot be compared here; the peer
/// compares ours.
async fn compare_histories(
    inner: &Arc<Inner>,
    peer: &str,
    shared: &Shared,
    local: &[FeedHead],
    send: &mut quinn::SendStream,
) -> Result<(), PeerError> {
    let ours: BTreeMap<String, (u64, Hash)> = local
        .iter()
        .map(|h| (h.feed.clone(), (h.seq, h.hash)))
        .collect();
    let candidates = lock(shared).poll_compare(&ours);
    let mut to_read = Vec::new();
    let mut to_compare = Vec::new();
    for (position, head_hash) in candidates {
        if head_hash.is_some() {
            to_compare.push((position, head_hash));
        } else if let Some(hash) = recent_own_hash(inner, &position.feed, position.seq) {
            to_compare.push((position, Some(hash)));
        } else {
            to_read.push(position);
        }
    }
    if !to_read.is_empty() {
        let log = inner.log.clone();
        let keys: Vec<(String, u64)> = to_read.iter().map(|p| (p.feed.clone(), p.seq)).collect();
        let hashes = tokio::task::spawn_blocking(move || log.hashes_at(&keys))
            .await
            .map_err(|e| PeerError::Protocol(format!("read task failed: {e}")))??;
        to_compare.extend(to_read.into_iter().zip(hashes));
    }
    for (position, held) in to_compare {
        let Some(held) = held else { continue };
        if !lock(shared).diverges(&position, &held) {
            continue;
        }
        tracing::warn!(
            peer,
            feed = %position.feed,
            seq = position.seq,
            theirs = %hex::encode(&position.hash[..8]),
            ours = %hex::encode(&held[..8]),
            "split view: the peer holds another event of this feed at a position this node holds; sending ours as fork evidence"
        );
        let log = inner.log.clone();
        let (feed, seq) = (position.feed.clone(), position.seq);
        let event = tokio::task::spawn_blocking(move || log.pruned_event_at(&feed, seq))
            .await
            .map_err(|e| PeerError::Protocol(format!("read task failed: {e}")))??;
        let frame = match event {
            // A format-2 event proves nothing on its own: the checkpoint
            // covering our side does (the peer holds its own, and the two
            // are evidence of the split).
            Some(event) if crate::core::codec::is_sealed_envelope(&event) => {
                let Some(ours) = inner.log.latest_checkpoint(&position.feed) else {
                    continue;
                };
                PeerMessage::Checkpoint {
                    note: serde_bytes::ByteBuf::from(ours.note.clone().into_bytes()),
                }
            }
            Some(event) => PeerMessage::Events {
                events: vec![serde_bytes::ByteBuf::from(event)],
                seals: Vec::new(),
            },
            None => continue,
        };
        net::write_frame(send, &frame).await?;
    }
    Ok(())
}

/// The hash of this node's own event `seq`, if it is recent enough to be
/// held in memory (the common case: peers acknowledge what was just sent),
/// so comparing it costs no store read.
fn recent_own_hash(inner: &Arc<Inner>, feed: &str, seq: u64) -> Option<Hash> {
    if feed != inner.service {
        return None;
    }
    let envelope = inner.log.recent_envelopes(feed, seq, seq)?.pop()?;
    let (envelope, _) = crate::core::codec::decode_envelope(&envelope).ok()?;
    Some(crate::core::codec::event_hash(&envelope.header))
}

/// Sends the peer the evidence of every feed that forked and was not yet
/// sent on this connection (one piece per feed), and sends no more of a
/// forked feed from its fork on.
async fn share_fork_evidence(
    inner: &Arc<Inner>,
    shared: &Shared,
    local: &[FeedHead],
    send: &mut quinn::SendStream,
) -> Result<(), PeerError> {
    let news = {
        let conn = lock(shared);
        local
            .iter()
            .any(|h| h.status == FEED_FORKED && conn.evidence_due(&h.feed))
    };
    if !news {
        return Ok(());
    }
    let log = inner.log.clone();
    let evidence = tokio::task::spawn_blocking(move || log.fork_evidence_to_share())
        .await
        .map_err(|e| PeerError::Protocol(format!("read task failed: {e}")))??;
    for fork in evidence {
        {
            let mut conn = lock(shared);
            conn.hold_back(&fork.feed, fork.seq);
            if !conn.evidence_due(&fork.feed) {
                continue;
            }
            conn.evidence_sent(&fork.feed);
        }
        let message = PeerMessage::Fork {
            first: serde_bytes::ByteBuf::from(fork.stored_envelope),
            second: serde_bytes::ByteBuf::from(fork.conflicting_envelope),
        };
        net::write_frame(send, &message).await?;
    }
    Ok(())
}

/// A feed's status once fork evidence was recorded for it.
const FEED_FORKED: &str = "forked";

/// Verifies and commits received events. A peer that sent an event failing
/// verification is cut off; nothing it sent after that event is applied.
/// A relay that forwards another branch of a feed (its author signed two
/// histories) is not at fault: that feed is no longer taken from it, the
/// rest is, and the histories are compared through `Ack` to obtain fork
/// evidence. Returns the feeds not to take from this peer any more, each
/// from a sequence number.
async fn apply(
    inner: &Arc<Inner>,
    peer: &str,
    envelopes: Vec<Vec<u8>>,
    seals: Vec<Seal>,
    policy: IngestPolicy,
) -> Result<Vec<(String, u64)>, PeerError> {
    let log = inner.log.clone();
    let report = tokio::task::spawn_blocking(move || log.ingest_sealed(envelopes, seals, policy))
        .await
        .map_err(|e| PeerError::Protocol(format!("ingest task failed: {e}")))??;
    inner.metrics.received(peer, report.applied);
    let mut skip_from = Vec::new();
    for (feed, rejection) in &report.conflicts {
        tracing::warn!(
            peer,
            feed = %feed,
            %rejection,
            "peer relays another branch of this feed (its author signed two histories); not taking it from this peer"
        );
        skip_from.push((feed.clone(), rejection.seq.unwrap_or(0)));
    }
    for (feed, rejection) in &report.revoked {
        tracing::warn!(
            peer,
            feed = %feed,
            %rejection,
            "peer relays events after the cut-off of their author's revocation; refused, and not taking this feed from this peer from there on"
        );
        skip_from.push((feed.clone(), rejection.seq.unwrap_or(0)));
    }
    skip_from.extend(report.new_forks.iter().cloned());
    if let Some(rejection) = report.rejected {
        if is_misbehaviour(&rejection) {
            tracing::warn!(peer, %rejection, "peer sent an event that failed verification; disconnecting");
            return Err(PeerError::Verification(rejection));
        }
        tracing::debug!(peer, %rejection, "skipped an event this node already holds");
    }
    Ok(skip_from)
}

/// Checks fork evidence from `peer` and records it; the writer then wakes
/// every session, which passes it on. Evidence that does not prove a fork
/// is misbehaviour: an honest peer passes on only evidence it checked.
async fn check_evidence(
    inner: &Arc<Inner>,
    peer: &str,
    first: Vec<u8>,
    second: Vec<u8>,
) -> Result<(), PeerError> {
    let log = inner.log.clone();
    let outcome = tokio::task::spawn_blocking(move || log.record_fork_evidence(first, second))
        .await
        .map_err(|e| PeerError::Protocol(format!("evidence task failed: {e}")))??;
    match outcome {
        Ok(EvidenceOutcome::Recorded { feed, seq }) => {
            tracing::warn!(peer, feed = %feed, seq, "fork evidence received from a peer; feed frozen")
        }
        Ok(EvidenceOutcome::AlreadyKnown | EvidenceOutcome::UnknownFeed) => {}
        Err(rejection) => {
            tracing::warn!(peer, %rejection, "peer sent fork evidence that proves nothing; disconnecting");
            return Err(PeerError::Verification(rejection));
        }
    }
    Ok(())
}

/// Checks a checkpoint from `peer` against this node's copy of the feed
/// and merges it. One whose author's signature fails, or of another
/// cluster, is misbehaviour: an honest peer passes on only checkpoints it
/// checked. One that does not match this node's copy is the author's
/// doing, not the relay's: its evidence is recorded (or awaited).
async fn check_checkpoint(inner: &Arc<Inner>, peer: &str, note: Vec<u8>) -> Result<(), PeerError> {
    let log = inner.log.clone();
    let outcome = tokio::task::spawn_blocking(move || log.accept_checkpoint(note))
        .await
        .map_err(|e| PeerError::Protocol(format!("checkpoint task failed: {e}")))??;
    match outcome {
        Ok(CheckpointOutcome::Equivocation { feed }) => {
            tracing::warn!(peer, feed = %feed, "checkpoint from a peer proves the feed's author signed two histories; feed frozen")
        }
        Ok(outcome) => tracing::trace!(peer, ?outcome, "checkpoint"),
        Err(e) => {
            tracing::warn!(peer, error = %e, "peer sent a checkpoint that failed verification; disconnecting");
            return Err(PeerError::Checkpoint(e));
        }
    }
    Ok(())
}

/// Checks equivocation evidence from `peer` and records it; evidence that
/// proves nothing is misbehaviour.
async fn check_equivocation(
    inner: &Arc<Inner>,
    peer: &str,
    evidence: Equivocation,
) -> Result<(), PeerError> {
    let log = inner.log.clone();
    let outcome = tokio::task::spawn_blocking(move || log.record_equivocation(evidence))
        .await
        .map_err(|e| PeerError::Protocol(format!("evidence task failed: {e}")))??;
    match outcome {
        Ok(true) => tracing::warn!(
            peer,
            "equivocation evidence received from a peer; feed frozen"
        ),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(peer, error = %e, "peer sent equivocation evidence that proves nothing; disconnecting");
            return Err(PeerError::Checkpoint(e));
        }
    }
    Ok(())
}

/// Sends the peer every feed's latest checkpoint the connection says is due
/// (new to the peer, its events acknowledged, the send interval passed).
async fn send_checkpoints(
    inner: &Arc<Inner>,
    shared: &Shared,
    send: &mut quinn::SendStream,
) -> Result<(), PeerError> {
    let checkpoints = inner.log.latest_checkpoints();
    let offers: Vec<CheckpointOffer> = checkpoints
        .iter()
        .map(|c| CheckpointOffer {
            feed: c.feed.clone(),
            size: c.size,
            signatures: c.note.matches("\n\u{2014} ").count(),
        })
        .collect();
    let due = lock(shared).poll_checkpoints(clock::now_us(), &offers);
    for i in due {
        let message = PeerMessage::Checkpoint {
            note: serde_bytes::ByteBuf::from(checkpoints[i].note.clone().into_bytes()),
        };
        net::write_frame(send, &message).await?;
    }
    Ok(())
}

/// Sends equivocation evidence of every frozen feed the peer holds, once
/// per connection.
async fn share_equivocations(
    inner: &Arc<Inner>,
    shared: &Shared,
    local: &[FeedHead],
    send: &mut quinn::SendStream,
) -> Result<(), PeerError> {
    let news = {
        let conn = lock(shared);
        local
            .iter()
            .any(|h| h.status == FEED_FORKED && conn.equivocation_due(&h.feed))
    };
    if !news {
        return Ok(());
    }
    let log = inner.log.clone();
    let evidence = tokio::task::spawn_blocking(move || log.equivocations())
        .await
        .map_err(|e| PeerError::Protocol(format!("read task failed: {e}")))??;
    for (feed, evidence) in evidence {
        {
            let mut conn = lock(shared);
            if !conn.equivocation_due(&feed) {
                continue;
            }
            conn.equivocation_sent(&feed);
        }
        let message = PeerMessage::Equivocation {
            first: serde_bytes::ByteBuf::from(evidence.first),
            second: serde_bytes::ByteBuf::from(evidence.second),
            prefix_root: evidence.prefix_root,
            proof: evidence.proof,
        };
        net::write_frame(send, &message).await?;
    }
    Ok(())
}

/// The feeds this node holds.
fn held_feeds(inner: &Arc<Inner>) -> Result<HashSet<String>, PeerError> {
    Ok(inner.log.heads()?.into_iter().map(|h| h.feed).collect())
}

/// Sends the events of `ranges` (what the connection handed out), framed,
/// each frame of format-2 events with the seal that authenticates it. Events
/// no checkpoint held covers yet (a relay received them before their
/// checkpoint) wait: the connection is rewound to them and sends them once
/// one arrives.
async fn send_missing(
    inner: &Arc<Inner>,
    shared: &Shared,
    ranges: Vec<SendRange>,
    send: &mut quinn::SendStream,
) -> Result<(), PeerError> {
    for range in ranges {
        let mut from = range.from;
        'range: while from <= range.to {
            let envelopes = match inner.log.recent_envelopes(&range.feed, from, range.to) {
                Some(recent) => recent,
                None => {
                    let log = inner.log.clone();
                    let feed = range.feed.clone();
                    let to = range.to;
                    tokio::task::spawn_blocking(move || log.read_envelopes(&feed, from, to))
                        .await
                        .map_err(|e| PeerError::Protocol(format!("read task failed: {e}")))??
                }
            };
            if envelopes.is_empty() {
                break;
            }
            for mut frame in frames(envelopes) {
                let mut seals = Vec::new();
                let mut split_at_transition = false;
                if frame
                    .iter()
                    .any(|e| crate::core::codec::is_sealed_envelope(e))
                {
                    // A frame ends before a key transition: the events
                    // before it are sealed under the old key, the
                    // transition and what follows under the new one.
                    let frame_end = from + frame.len() as u64;
                    if let Some(t) = inner
                        .log
                        .key_transitions(&range.feed)
                        .iter()
                        .find(|t| t.seq > from && t.seq < frame_end)
                    {
                        frame.truncate((t.seq - from) as usize);
                        split_at_transition = true;
                    }
                    let covered = inner
                        .log
                        .latest_checkpoint(&range.feed)
                        .map_or(0, |c| c.size);
                    let end = from + frame.len() as u64;
                    if covered < end {
                        // Send what a checkpoint covers; the rest waits.
                        frame.truncate(covered.saturating_sub(from) as usize);
                    }
                    if !frame.is_empty() {
                        let end = from + frame.len() as u64;
                        match seal_for(inner, &range.feed, end).await? {
                            Some(seal) => seals.push(seal),
                            None => frame.clear(),
                        }
                    }
                    if (frame.len() as u64) < end - from {
                        lock(shared).rewind_send(&range.feed, from + frame.len() as u64);
                    }
                }
                if frame.is_empty() {
                    break 'range;
                }
                from += frame.len() as u64;
                net::write_frame(
                    send,
                    &PeerMessage::Events {
                        events: frame,
                        seals,
                    },
                )
                .await?;
                if split_at_transition {
                    // The rest of this read starts at the transition.
                    continue 'range;
                }
            }
        }
    }
    Ok(())
}

/// The seal of `feed`'s run ending at `end`: from memory when the latest
/// checkpoint ends there (the common case), else with a proof read from the
/// store.
async fn seal_for(inner: &Arc<Inner>, feed: &str, end: u64) -> Result<Option<Seal>, PeerError> {
    let ends_here = inner
        .log
        .latest_checkpoint(feed)
        .is_some_and(|c| c.size == end);
    if ends_here {
        return Ok(inner.log.seal_for(feed, end)?);
    }
    let log = inner.log.clone();
    let feed = feed.to_string();
    tokio::task::spawn_blocking(move || log.seal_for(&feed, end))
        .await
        .map_err(|e| PeerError::Protocol(format!("read task failed: {e}")))?
        .map_err(PeerError::from)
}

fn local_heads(inner: &Arc<Inner>) -> Result<Vec<FeedHead>, PeerError> {
    // From memory: the writer keeps the heads of its latest commit (it only
    // falls back to a read of the small feeds table if that failed).
    Ok(inner.log.heads()?)
}

fn positions(heads: &[FeedHead]) -> Vec<FeedPosition> {
    heads
        .iter()
        .map(|h| FeedPosition {
            feed: h.feed.clone(),
            seq: h.seq,
            hash: h.hash,
        })
        .collect()
}

/// Persists the peer's acknowledged heads of the feeds this node holds (a
/// peer's `Hello` may name others; they get no cursor rows).
fn persist_acks(inner: &Arc<Inner>, peer: &str, acked: &BTreeMap<String, u64>) {
    let held: HashSet<String> = match inner.log.heads() {
        Ok(heads) => heads.into_iter().map(|h| h.feed).collect(),
        Err(e) => {
            tracing::warn!(peer, error = %e, "cannot read feed heads; delivery cursors not persisted");
            return;
        }
    };
    let rows: Vec<(String, u64)> = acked
        .iter()
        .filter(|(feed, next)| **next > 0 && held.contains(*feed))
        .map(|(feed, next)| (feed.clone(), next - 1))
        .collect();
    let log = inner.log.clone();
    let peer = peer.to_string();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = log.record_peer_acks(&peer, &rows) {
            tracing::warn!(peer, error = %e, "cannot persist delivery cursors");
        }
    });
}

pub(crate) fn update_status(inner: &Inner, peer: &str, f: impl FnOnce(&mut PeerState)) {
    if let Ok(mut peers) = inner.peers.lock()
        && let Some(state) = peers.get_mut(peer)
    {
        f(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_frames_are_gathered_within_the_event_and_byte_limits() {
        let mut gathered = Gathered::default();
        assert!(gathered.wants_more());
        // Small events: the event count is the limit.
        gathered.add(vec![vec![0u8; 500]; INGEST_COALESCE_EVENTS_MAX - 1], vec![]);
        assert!(gathered.wants_more());
        gathered.add(vec![vec![0u8; 500]], vec![]);
        assert!(!gathered.wants_more());
        assert_eq!(gathered.take().0.len(), INGEST_COALESCE_EVENTS_MAX);
        assert!(gathered.wants_more(), "taking starts over");

        // Large events: the bytes are the limit, long before the count.
        let big = vec![0u8; 1024 * 1024];
        for _ in 0..INGEST_COALESCE_BYTES_MAX / big.len() - 1 {
            gathered.add(vec![big.clone()], vec![]);
            assert!(gathered.wants_more());
        }
        gathered.add(vec![big.clone()], vec![]);
        assert!(!gathered.wants_more());
        assert_eq!(gathered.take().0.len(), 4);
        assert_eq!(gathered.bytes, 0);
    }
}
