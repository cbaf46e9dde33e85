//! The shell around the replication session: one task per peer connection
//! pumps frames between QUIC and [`Session`], commits what arrives through
//! the log's verifying ingest, and sends what the peer lacks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Inner, PeerState};
use crate::clock;
use crate::core::checkpoint::Equivocation;
use crate::core::crypto::Hash;
use crate::core::query::QueryRequest;
use crate::core::replication::{Received, Session, check_positions};
use crate::core::verify::{Check, Rejection};
use crate::core::wire::{
    FRAME_EVENTS_MAX, FRAME_FEEDS_MAX, FRAME_TARGET_BYTES, FeedPosition, PeerMessage, Seal, close,
};
use crate::net::{self, NetError};
use crate::store::{CheckpointOutcome, EvidenceOutcome, FeedHead, IngestPolicy};

/// How often acknowledged cursors are persisted for `herald status` (the
/// protocol itself needs no persisted cursor: `Hello` re-establishes it).
pub const ACK_PERSIST_INTERVAL_MS: u64 = 500;
/// Most replication frames a peer may send per second. An honest peer sends
/// up to 512 events per frame, so this allows millions of events a second;
/// more frames than that is a flood and the peer is disconnected.
pub const PEER_FRAMES_PER_SECOND_MAX: u32 = 5_000;
/// Least time between two checkpoints of one feed sent to one peer: bounds
/// the signature checks and cosignatures checkpoints cost under load to a
/// few per second per feed, and delays a witness's cosignature by at most
/// this.
pub const CHECKPOINT_SEND_INTERVAL_MS: u64 = 200;
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

/// What the inbound half hands to the outbound half. Acknowledgements are
/// cumulative, so they merge (highest head per feed wins) instead of queueing:
/// the inbound half never waits for the outbound half, and neither side can
/// deadlock the other through full flow-control windows.
#[derive(Default)]
struct Handoff {
    /// The peer's `Hello` heads, once.
    hello: Option<Vec<FeedPosition>>,
    /// Merged `Ack` heads not yet applied to the session.
    acks: BTreeMap<String, FeedPosition>,
    /// We committed received events: send our heads.
    ack_due: bool,
}

struct Shared {
    handoff: std::sync::Mutex<Handoff>,
    wake: tokio::sync::Notify,
}

/// Replication on one connection: an inbound half that reads, verifies and
/// commits, and an outbound half that sends what the peer lacks and our
/// acknowledgements. Returns when either half ends.
async fn replicate(
    inner: &Arc<Inner>,
    peer: &str,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<(), PeerError> {
    let shared = Arc::new(Shared {
        handoff: std::sync::Mutex::new(Handoff::default()),
        wake: tokio::sync::Notify::new(),
    });
    let mut inbound = tokio::spawn(inbound(
        inner.clone(),
        peer.to_string(),
        recv,
        shared.clone(),
    ));
    let mut outbound = tokio::spawn(outbound(inner.clone(), peer.to_string(), send, shared));
    let result = tokio::select! {
        r = &mut inbound => r,
        r = &mut outbound => r,
    };
    inbound.abort();
    outbound.abort();
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

/// Reads frames, checks the protocol, verifies and commits events. Events
/// of frames that queued up while an ingest ran are applied together.
async fn inbound(
    inner: Arc<Inner>,
    peer: String,
    recv: quinn::RecvStream,
    shared: Arc<Shared>,
) -> Result<(), PeerError> {
    let peer = peer.as_str();
    let (queue, mut frames) = tokio::sync::mpsc::channel(INBOUND_FRAMES_QUEUED_MAX);
    let _reader = AbortOnDrop(tokio::spawn(read_frames(recv, queue)));
    // A session of its own, used only to check what arrives is in order.
    let mut checker = Session::new(peer, clock::now_us());
    let mut shutdown = inner.shutdown.clone();
    let mut flood = FloodGuard::default();
    let mut pending = Gathered::default();
    // Feeds this peer holds another branch of, skipped from where they part.
    let mut policy = IngestPolicy::from_peer(peer, Default::default());
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
                    apply_pending(&inner, peer, &mut pending, &mut policy, &shared).await?;
                    continue;
                }
            }
        } else {
            apply_pending(&inner, peer, &mut pending, &mut policy, &shared).await?;
            continue;
        };
        let message = match next {
            Some(Ok(Some(m))) => m,
            Some(Ok(None)) | None => {
                apply_pending(&inner, peer, &mut pending, &mut policy, &shared).await?;
                return Err(PeerError::Protocol("replication stream ended".into()));
            }
            Some(Err(e)) => {
                apply_pending(&inner, peer, &mut pending, &mut policy, &shared).await?;
                return Err(PeerError::Net(e));
            }
        };
        flood.count(peer)?;
        let message = match message {
            // Acknowledgements matter only for feeds this node holds; the
            // rest would only grow per-session state (and persisted
            // cursors) at the peer's whim.
            PeerMessage::Ack { heads } => {
                if let Err(e) = check_positions(&heads) {
                    return Err(PeerError::Protocol(e.to_string()));
                }
                PeerMessage::Ack {
                    heads: held_feeds_only(&inner, heads)?,
                }
            }
            other => other,
        };
        let forwarded = match &message {
            PeerMessage::Hello { heads, .. } => Some((true, heads.clone())),
            PeerMessage::Ack { heads } => Some((false, heads.clone())),
            PeerMessage::Events { .. }
            | PeerMessage::Fork { .. }
            | PeerMessage::Checkpoint { .. }
            | PeerMessage::Equivocation { .. } => None,
        };
        match checker.on_message(clock::now_us(), message) {
            Ok(Received::Nothing) => {}
            Ok(Received::Events(envelopes, seals)) => pending.add(envelopes, seals),
            Ok(Received::Fork(first, second)) => {
                // Keep the stream's order: what came before is applied first.
                apply_pending(&inner, peer, &mut pending, &mut policy, &shared).await?;
                check_evidence(&inner, peer, first, second).await?;
            }
            Ok(Received::Checkpoint(note)) => {
                // Checked against the tree the events before it built.
                apply_pending(&inner, peer, &mut pending, &mut policy, &shared).await?;
                check_checkpoint(&inner, peer, note).await?;
            }
            Ok(Received::Equivocation(evidence)) => {
                apply_pending(&inner, peer, &mut pending, &mut policy, &shared).await?;
                check_equivocation(&inner, peer, *evidence).await?;
            }
            Err(e @ crate::core::replication::ProtocolError::Version { .. }) => {
                return Err(PeerError::Version(e.to_string()));
            }
            Err(e) => return Err(PeerError::Protocol(e.to_string())),
        }
        if let Some((hello, heads)) = forwarded {
            forward_heads(&shared, hello, heads);
        }
    }
}

/// Counts frames per second; more than [`PEER_FRAMES_PER_SECOND_MAX`] is a
/// flood.
struct FloodGuard {
    window_start: tokio::time::Instant,
    frames_in_window: u32,
}

impl Default for FloodGuard {
    fn default() -> Self {
        FloodGuard {
            window_start: tokio::time::Instant::now(),
            frames_in_window: 0,
        }
    }
}

impl FloodGuard {
    fn count(&mut self, peer: &str) -> Result<(), PeerError> {
        if self.window_start.elapsed() >= Duration::from_secs(1) {
            self.window_start = tokio::time::Instant::now();
            self.frames_in_window = 0;
        }
        self.frames_in_window += 1;
        if self.frames_in_window > PEER_FRAMES_PER_SECOND_MAX {
            tracing::warn!(peer, "peer flooded the replication stream; disconnecting");
            return Err(PeerError::Protocol(format!(
                "more than {PEER_FRAMES_PER_SECOND_MAX} frames in one second"
            )));
        }
        Ok(())
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

/// Applies the gathered events (if any) and asks the outbound half to
/// acknowledge them.
async fn apply_pending(
    inner: &Arc<Inner>,
    peer: &str,
    pending: &mut Gathered,
    policy: &mut IngestPolicy,
    shared: &Shared,
) -> Result<(), PeerError> {
    if pending.envelopes.is_empty() {
        return Ok(());
    }
    let (envelopes, seals) = pending.take();
    apply(inner, peer, envelopes, seals, policy).await?;
    lock(shared).ack_due = true;
    shared.wake.notify_one();
    Ok(())
}

/// Hands a peer's `Hello` or newer acknowledged heads to the outbound half.
fn forward_heads(shared: &Shared, hello: bool, heads: Vec<FeedPosition>) {
    let mut handoff = lock(shared);
    if hello {
        handoff.hello = Some(heads);
    } else {
        for head in heads {
            let newer = handoff
                .acks
                .get(&head.feed)
                .is_none_or(|h| h.seq < head.seq);
            if newer {
                handoff.acks.insert(head.feed.clone(), head);
            }
        }
    }
    drop(handoff);
    shared.wake.notify_one();
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Handoff> {
    // A poisoned lock only means another task panicked mid-update of plain
    // data; the data is still usable.
    shared.handoff.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends `Hello`, then whatever the peer lacks and our acknowledgements.
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
    let mut session = Session::over_reliable_transport(peer, clock::now_us());
    let mut histories = Histories::default();
    net::write_frame(
        &mut send,
        &Session::hello(&inner.service, &positions(&local_heads(inner)?)),
    )
    .await?;
    let mut last_persist = tokio::time::Instant::now();
    let result = loop {
        let (hello, acks, ack_due) = {
            let mut handoff = lock(&shared);
            let acks: Vec<FeedPosition> = std::mem::take(&mut handoff.acks).into_values().collect();
            (
                handoff.hello.take(),
                acks,
                std::mem::take(&mut handoff.ack_due),
            )
        };
        let acked_before = session.acknowledged().clone();
        // The peer's positions, to compare with our history (hashes).
        let mut reported: Vec<FeedPosition> = Vec::new();
        if let Some(heads) = hello {
            let ours = heads
                .iter()
                .find(|h| h.feed == inner.service)
                .map(|h| h.seq);
            if let Ok(mut reported) = inner.own_feed_reported.lock() {
                reported.insert(peer.to_string(), ours);
            }
            reported.extend(heads.iter().cloned());
            let hello = Session::hello(peer, &heads);
            if let Err(e) = session.on_message(clock::now_us(), hello) {
                break Err(PeerError::Protocol(e.to_string()));
            }
        }
        if !acks.is_empty() && session.established() {
            reported.extend(acks.iter().cloned());
            // Merged from several messages (each checked on arrival), so
            // possibly more positions than one message may carry.
            let applied = acks.chunks(FRAME_FEEDS_MAX).try_for_each(|chunk| {
                session
                    .on_message(clock::now_us(), Session::ack(chunk.to_vec()))
                    .map(drop)
            });
            if let Err(e) = applied {
                break Err(PeerError::Protocol(e.to_string()));
            }
        }
        if session.acknowledged() != &acked_before {
            update_status(inner, peer, |s| s.last_ack_at_us = Some(clock::now_us()));
            if last_persist.elapsed() >= Duration::from_millis(ACK_PERSIST_INTERVAL_MS) {
                last_persist = tokio::time::Instant::now();
                persist_acks(inner, peer, session.acknowledged());
            }
        }
        // One read of the heads serves the acknowledgement, the sends and
        // the comparison.
        let local = local_heads(inner)?;
        let heads: BTreeMap<String, u64> = local.iter().map(|p| (p.feed.clone(), p.seq)).collect();
        if ack_due
            && let Err(e) = net::write_frame(&mut send, &Session::ack(positions(&local))).await
        {
            break Err(e.into());
        }
        update_status(inner, peer, |s| s.backlog = session.backlog(&heads));
        let (offer, relay_due) = session.relay_heads(&heads, &inner.service, clock::now_us());
        if let Err(e) = send_missing(inner, &mut session, &offer, &mut send).await {
            break Err(e);
        }
        // After the sends, so comparing histories (which may read the
        // store) never delays delivery. A feed found to diverge is held
        // back from the next send on; what went out before is skipped by
        // the peer, which tolerates another branch from a relay.
        if let Err(e) = compare_histories(
            inner,
            peer,
            &mut session,
            &mut histories,
            &reported,
            &local,
            &mut send,
        )
        .await
        {
            break Err(e);
        }
        if let Err(e) =
            share_fork_evidence(inner, &mut session, &mut histories, &local, &mut send).await
        {
            break Err(e);
        }
        let checkpoint_due =
            match send_checkpoints(inner, &session, &mut histories, &mut send).await {
                Ok(due) => due,
                Err(e) => break Err(e),
            };
        if let Err(e) =
            share_equivocations(inner, &session, &mut histories, &local, &mut send).await
        {
            break Err(e);
        }
        let wake_at = [session.poll_timeout(), relay_due, checkpoint_due]
            .into_iter()
            .flatten()
            .min();
        let timer = wake_at
            .map(|at| Duration::from_micros(at.saturating_sub(clock::now_us())))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = changes.changed() => {}
            _ = tokio::time::sleep(timer) => {
                let before = session.retransmits();
                // Also wakes for relays coming due; handle_timeout only acts
                // when acknowledgements really stalled.
                session.handle_timeout(clock::now_us());
                if session.retransmits() > before {
                    update_status(inner, peer, |s| s.retries += 1);
                }
            }
            _ = shutdown.changed() => break Err(PeerError::Shutdown),
        }
    };
    persist_acks(inner, peer, session.acknowledged());
    result
}

/// What one session knows about how the peer's history compares with ours.
#[derive(Default)]
struct Histories {
    /// Per feed, the last position of the peer's already compared (so a
    /// repeated acknowledgement costs no store read).
    compared: HashMap<String, (u64, Hash)>,
    /// Feeds the peer holds another branch of: our side was sent to it.
    diverged: HashSet<String>,
    /// Forked feeds whose evidence this session sent.
    evidence_sent: HashSet<String>,
    /// Per feed, the checkpoint (size, signature lines) last sent, and
    /// when (microseconds since the Unix epoch).
    checkpoints_sent: HashMap<String, ((u64, usize), u64)>,
    /// Feeds whose equivocation evidence this session sent.
    equivocations_sent: HashSet<String>,
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
    session: &mut Session,
    histories: &mut Histories,
    reported: &[FeedPosition],
    local: &[FeedHead],
    send: &mut quinn::SendStream,
) -> Result<(), PeerError> {
    let ours: HashMap<&str, (u64, Hash)> = local
        .iter()
        .map(|h| (h.feed.as_str(), (h.seq, h.hash)))
        .collect();
    let mut to_read = Vec::new();
    let mut to_compare = Vec::new();
    for position in reported {
        let Some(&(head, head_hash)) = ours.get(position.feed.as_str()) else {
            continue;
        };
        let already =
            histories.compared.get(&position.feed) == Some(&(position.seq, position.hash));
        if already || position.seq > head || histories.diverged.contains(&position.feed) {
            continue;
        }
        histories
            .compared
            .insert(position.feed.clone(), (position.seq, position.hash));
        if position.seq == head {
            to_compare.push((position.clone(), Some(head_hash)));
        } else if let Some(hash) = recent_own_hash(inner, &position.feed, position.seq) {
            to_compare.push((position.clone(), Some(hash)));
        } else {
            to_read.push(position.clone());
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
        if held == position.hash || !histories.diverged.insert(position.feed.clone()) {
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
        session.hold_back(&position.feed, position.seq);
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
    session: &mut Session,
    histories: &mut Histories,
    local: &[FeedHead],
    send: &mut quinn::SendStream,
) -> Result<(), PeerError> {
    // Only to a peer that holds the feed: one that does not could not check
    // the author's signatures yet. It receives the feed up to the fork and
    // acknowledges it, and the evidence follows.
    fn due(session: &Session, histories: &Histories, feed: &str) -> bool {
        !histories.evidence_sent.contains(feed)
            && session
                .acknowledged()
                .get(feed)
                .is_some_and(|&next| next > 0)
    }
    let news = local
        .iter()
        .any(|h| h.status == FEED_FORKED && due(session, histories, &h.feed));
    if !news {
        return Ok(());
    }
    let log = inner.log.clone();
    let evidence = tokio::task::spawn_blocking(move || log.fork_evidence_to_share())
        .await
        .map_err(|e| PeerError::Protocol(format!("read task failed: {e}")))??;
    for fork in evidence {
        session.hold_back(&fork.feed, fork.seq);
        if !due(session, histories, &fork.feed) {
            continue;
        }
        histories.evidence_sent.insert(fork.feed.clone());
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
/// evidence.
async fn apply(
    inner: &Arc<Inner>,
    peer: &str,
    envelopes: Vec<Vec<u8>>,
    seals: Vec<Seal>,
    policy: &mut IngestPolicy,
) -> Result<(), PeerError> {
    let log = inner.log.clone();
    let this_batch = policy.clone();
    let report =
        tokio::task::spawn_blocking(move || log.ingest_sealed(envelopes, seals, this_batch))
            .await
            .map_err(|e| PeerError::Protocol(format!("ingest task failed: {e}")))??;
    for (feed, rejection) in &report.conflicts {
        tracing::warn!(
            peer,
            feed = %feed,
            %rejection,
            "peer relays another branch of this feed (its author signed two histories); not taking it from this peer"
        );
        policy.skip_from(feed, rejection.seq.unwrap_or(0));
    }
    for (feed, seq) in &report.new_forks {
        policy.skip_from(feed, *seq);
    }
    if let Some(rejection) = report.rejected {
        if is_misbehaviour(&rejection) {
            tracing::warn!(peer, %rejection, "peer sent an event that failed verification; disconnecting");
            return Err(PeerError::Verification(rejection));
        }
        tracing::debug!(peer, %rejection, "skipped an event this node already holds");
    }
    Ok(())
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

/// Sends the peer every feed's latest checkpoint that is new to it (a
/// larger size, or more signatures than last sent), once it acknowledged
/// holding the events the checkpoint covers.
async fn send_checkpoints(
    inner: &Arc<Inner>,
    session: &Session,
    histories: &mut Histories,
    send: &mut quinn::SendStream,
) -> Result<Option<u64>, PeerError> {
    let now_us = clock::now_us();
    let mut next_due_us: Option<u64> = None;
    for checkpoint in inner.log.latest_checkpoints() {
        let signatures = checkpoint.note.matches("\n\u{2014} ").count();
        let version = (checkpoint.size, signatures);
        let last = histories.checkpoints_sent.get(&checkpoint.feed).copied();
        if last.is_some_and(|(sent, _)| sent == version) {
            continue;
        }
        let held = session
            .acknowledged()
            .get(&checkpoint.feed)
            .copied()
            .unwrap_or(0);
        if held < checkpoint.size || session.held_back(&checkpoint.feed).is_some() {
            continue;
        }
        // At most one checkpoint per feed per interval: under load every
        // commit makes a new one, and each costs its receiver a signature
        // check and a cosignature. The latest goes out when the interval ends.
        if let Some((_, sent_at_us)) = last {
            let due_us = sent_at_us + CHECKPOINT_SEND_INTERVAL_MS * 1000;
            if now_us < due_us {
                next_due_us = Some(next_due_us.map_or(due_us, |d| d.min(due_us)));
                continue;
            }
        }
        histories
            .checkpoints_sent
            .insert(checkpoint.feed.clone(), (version, now_us));
        let message = PeerMessage::Checkpoint {
            note: serde_bytes::ByteBuf::from(checkpoint.note.clone().into_bytes()),
        };
        net::write_frame(send, &message).await?;
    }
    Ok(next_due_us)
}

/// Sends equivocation evidence of every frozen feed the peer holds, once
/// per connection.
async fn share_equivocations(
    inner: &Arc<Inner>,
    session: &Session,
    histories: &mut Histories,
    local: &[FeedHead],
    send: &mut quinn::SendStream,
) -> Result<(), PeerError> {
    let due = |feed: &str, histories: &Histories| {
        !histories.equivocations_sent.contains(feed)
            && session
                .acknowledged()
                .get(feed)
                .is_some_and(|&next| next > 0)
    };
    if !local
        .iter()
        .any(|h| h.status == FEED_FORKED && due(&h.feed, histories))
    {
        return Ok(());
    }
    let log = inner.log.clone();
    let evidence = tokio::task::spawn_blocking(move || log.equivocations())
        .await
        .map_err(|e| PeerError::Protocol(format!("read task failed: {e}")))??;
    for (feed, evidence) in evidence {
        if !due(&feed, histories) {
            continue;
        }
        histories.equivocations_sent.insert(feed);
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

/// `heads` without positions of feeds this node does not hold.
fn held_feeds_only(
    inner: &Arc<Inner>,
    mut heads: Vec<FeedPosition>,
) -> Result<Vec<FeedPosition>, PeerError> {
    let held: std::collections::HashSet<String> =
        inner.log.heads()?.into_iter().map(|h| h.feed).collect();
    heads.retain(|h| held.contains(&h.feed));
    Ok(heads)
}

/// Sends every event the peer lacks (within the session's window), framed,
/// each frame of format-2 events with the seal that authenticates it. Events
/// no checkpoint held covers yet (a relay received them before their
/// checkpoint) wait: the session is rewound to them and sends them once one
/// arrives.
async fn send_missing(
    inner: &Arc<Inner>,
    session: &mut Session,
    heads: &BTreeMap<String, u64>,
    send: &mut quinn::SendStream,
) -> Result<(), PeerError> {
    for range in session.poll_send(heads) {
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
                if frame
                    .iter()
                    .any(|e| crate::core::codec::is_sealed_envelope(e))
                {
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
                        session.rewind_send(&range.feed, from + frame.len() as u64);
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

/// Encoded bytes one envelope adds to an `Events` frame: its varint length
/// prefix (at most 5 bytes for any length below 4 GiB) and the bytes.
fn framed_len(envelope: &[u8]) -> usize {
    envelope.len() + 5
}

/// Splits envelopes into frames of at most [`FRAME_EVENTS_MAX`] events and
/// [`FRAME_TARGET_BYTES`] bytes of envelopes, or a single larger envelope.
/// A frame is flushed *before* an envelope would carry it past the target,
/// so no frame exceeds `FRAME_BYTES_MAX` whatever the mix of sizes: either
/// it holds at most the target (plus framing) or exactly one event, which
/// is at most `ENVELOPE_BYTES_MAX`.
pub(crate) fn frames(envelopes: Vec<Vec<u8>>) -> Vec<Vec<serde_bytes::ByteBuf>> {
    let mut out = Vec::new();
    let mut frame: Vec<serde_bytes::ByteBuf> = Vec::new();
    let mut bytes = 0;
    for e in envelopes {
        let cost = framed_len(&e);
        let full = frame.len() >= FRAME_EVENTS_MAX || bytes + cost > FRAME_TARGET_BYTES;
        if !frame.is_empty() && full {
            out.push(std::mem::take(&mut frame));
            bytes = 0;
        }
        bytes += cost;
        frame.push(serde_bytes::ByteBuf::from(e));
    }
    if !frame.is_empty() {
        out.push(frame);
    }
    out
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
    use crate::core::wire::SEAL_NOTE_BYTES_MAX;

    /// The worst mixes of sizes: just under the target of small events,
    /// then maximal ones, then small again. Every frame must encode within
    /// `FRAME_BYTES_MAX` and the frames must carry every event in order.
    #[test]
    fn frames_never_exceed_the_frame_limit_whatever_the_mix_of_sizes() {
        use crate::core::limits::ENVELOPE_BYTES_MAX;
        use crate::core::wire::FRAME_BYTES_MAX;
        let small = 1_000;
        let mixes: Vec<Vec<usize>> = vec![
            // ~255 KiB of small events, then one maximal event (the finding).
            [vec![small; 255], vec![ENVELOPE_BYTES_MAX]].concat(),
            [
                vec![small; 261],
                vec![ENVELOPE_BYTES_MAX; 2],
                vec![small; 3],
            ]
            .concat(),
            vec![ENVELOPE_BYTES_MAX; 3],
            [vec![FRAME_TARGET_BYTES - 10], vec![ENVELOPE_BYTES_MAX]].concat(),
            vec![10; 3 * FRAME_EVENTS_MAX + 1],
        ];
        for sizes in mixes {
            let envelopes: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| vec![i as u8; n])
                .collect();
            let framed = frames(envelopes.clone());
            for frame in &framed {
                assert!(frame.len() <= FRAME_EVENTS_MAX);
                // With the largest seal a frame may carry.
                let seal = Seal {
                    end: u64::MAX,
                    note: serde_bytes::ByteBuf::from(vec![b'x'; SEAL_NOTE_BYTES_MAX]),
                    proof: vec![[0xff; 32]; crate::core::wire::PROOF_HASHES_MAX],
                };
                let body = postcard::to_allocvec(&PeerMessage::Events {
                    events: frame.clone(),
                    seals: vec![seal],
                })
                .unwrap();
                assert!(
                    body.len() <= FRAME_BYTES_MAX,
                    "a frame of {} events encodes to {} bytes, over {FRAME_BYTES_MAX}",
                    frame.len(),
                    body.len()
                );
            }
            let back: Vec<Vec<u8>> = framed.into_iter().flatten().map(|b| b.into_vec()).collect();
            assert_eq!(back, envelopes, "every event, once, in order");
        }
    }

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
