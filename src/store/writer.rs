//! The write path: two threads in a pipeline so signing and fsync overlap.
//!
//! * The **seal stage** owns the feed's [`Sealer`]: it drains queued requests
//!   into a batch (up to [`COMMIT_BATCH_EVENTS_MAX`] events), encrypts and
//!   chains them, and signs them on all cores.
//! * The **commit stage** owns the write connection: it commits each sealed
//!   batch in one SQLite transaction (one fsync), then answers the callers.
//!
//! While batch N waits for its fsync, batch N+1 is being signed. If a commit
//! fails, the seal stage has already chained later batches onto events that
//! are not on disk, so the commit stage bumps an epoch: batches sealed in the
//! old epoch are refused, and the seal stage rewinds to the durable head
//! before sealing again. The feed never forks itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::checkpoints::CheckpointOutcome;
use super::forks::{EvidenceOutcome, IngestPolicy, record_evidence};
use super::ingest::{TxFeeds, write_ingested};
use super::transact::{Channels, TransactJob, Tx, TxError, TxReply};
use super::{IngestReport, LogError, Proclamation, Receipt};
use crate::clock;
use crate::core::checkpoint::{CheckpointError, Equivocation};
use crate::core::crypto::{ChannelKey, Hash};
use crate::core::ingest::{Batch, Ingest, Ingested, SealNote};
use crate::core::limits::COMMIT_BATCH_EVENTS_MAX;
use crate::core::verify::{
    Check, DecodedEvent, Draft, Entropy, FeedVerifier, Rejection, Sealer, VerifiedEvent,
};
use crate::core::wire::Seal;
use crate::identity::TrustAnchor;

/// Sealed batches that may wait for the commit stage (bounds memory and
/// how far the seal stage runs ahead of the disk).
pub const SEALED_BATCHES_QUEUED_MAX: usize = 2;

/// Where the writer sends a proclamation's receipts: to a thread that
/// blocks on them ([`super::Pending`]) or to a task that awaits them
/// ([`super::PendingAsync`]), so an async caller holds no thread while its
/// events wait for their commit.
pub(crate) enum ReceiptReply {
    Blocking(SyncSender<Result<Vec<Receipt>, LogError>>),
    Async(tokio::sync::oneshot::Sender<Result<Vec<Receipt>, LogError>>),
}

impl ReceiptReply {
    /// Hands the outcome over; false if the caller stopped waiting.
    pub(crate) fn send(self, outcome: Result<Vec<Receipt>, LogError>) -> bool {
        match self {
            ReceiptReply::Blocking(reply) => reply.send(outcome).is_ok(),
            ReceiptReply::Async(reply) => reply.send(outcome).is_ok(),
        }
    }
}
/// Where the writer sends an ingest's outcome.
pub(crate) type IngestReply = SyncSender<Result<IngestReport, LogError>>;
/// Where the writer sends the outcome of checking fork evidence.
pub(crate) type EvidenceReply = SyncSender<Result<Result<EvidenceOutcome, Rejection>, LogError>>;

/// A small write that is not an event (delivery and consumer cursors), run
/// by the commit stage in its own transaction so the store keeps exactly
/// one writer and nothing starves waiting for SQLite's lock.
pub(crate) type WriteJob = Box<dyn FnOnce(&Transaction<'_>) -> Result<(), LogError> + Send>;

/// Requests the writer accepts. Each carries its own reply channel.
pub(crate) enum Request {
    /// Finish what is queued, then stop (handles that outlive the log get
    /// `WriterGone` instead of keeping the writer alive).
    Shutdown,
    /// End recovery of this node's feed: resume it or start it.
    FinishRecovery {
        reply: SyncSender<Result<(), LogError>>,
    },
    /// While recovery is stuck (`Some`), fail proclamations and
    /// transactions that wait for it, and those that come, with the reason.
    Refuse { reason: Option<String> },
    /// Run a non-event write.
    Write {
        job: WriteJob,
        reply: SyncSender<Result<(), LogError>>,
    },
    /// Seal and commit the drafts on this node's own feed.
    Proclaim {
        drafts: Vec<Proclamation>,
        reply: ReceiptReply,
    },
    /// Verify and commit events of other feeds (replication, import); the
    /// seals authenticate runs of format-2 events.
    Ingest {
        envelopes: Vec<Vec<u8>>,
        seals: Vec<Seal>,
        policy: IngestPolicy,
        reply: IngestReply,
    },
    /// Check fork evidence a peer sent and record it.
    Evidence {
        first: Vec<u8>,
        second: Vec<u8>,
        reply: EvidenceReply,
    },
    /// Run an application transaction (state and events, atomically).
    Transact(TransactJob),
    /// Check a checkpoint a peer sent, merge and cosign it.
    Checkpoint {
        note: Vec<u8>,
        reply: CheckpointReply,
    },
    /// Check equivocation evidence a peer sent and record it.
    Equivocation {
        evidence: Box<Equivocation>,
        reply: EquivocationReply,
    },
    /// Take a reloaded trust state (see [`super::Log::reload`]).
    Reload {
        trust: Arc<TrustAnchor>,
        identity: Box<crate::identity::NodeIdentity>,
        channels: Arc<Channels>,
        reply: ReloadReply,
    },
}

pub(crate) type ReloadReply = SyncSender<Result<super::ReloadOutcome, LogError>>;

pub(crate) type CheckpointReply =
    SyncSender<Result<Result<CheckpointOutcome, CheckpointError>, LogError>>;
pub(crate) type EquivocationReply = SyncSender<Result<Result<bool, CheckpointError>, LogError>>;

impl Request {
    fn event_count(&self) -> usize {
        match self {
            Request::Proclaim { drafts, .. } => drafts.len(),
            Request::Ingest { envelopes, .. } => envelopes.len(),
            Request::Write { .. }
            | Request::Evidence { .. }
            | Request::Checkpoint { .. }
            | Request::Equivocation { .. }
            | Request::Transact(_)
            | Request::Shutdown
            | Request::FinishRecovery { .. }
            | Request::Refuse { .. }
            | Request::Reload { .. } => 1,
        }
    }
}

/// What the seal stage hands on (through the sign stage) to the commit stage.
enum Work {
    /// Chained by the seal stage; the sign stage turns it into `Sealed`.
    Chained {
        epoch: u64,
        batch: Box<crate::core::verify::ChainedBatch>,
        replies: Vec<(usize, ReceiptReply)>,
    },
    Sealed {
        epoch: u64,
        events: Vec<VerifiedEvent>,
        /// Each caller's reply and how many of `events` are theirs, in order.
        replies: Vec<(usize, ReceiptReply)>,
    },
    Ingest {
        envelopes: Vec<Vec<u8>>,
        seals: Vec<Seal>,
        policy: IngestPolicy,
        reply: IngestReply,
    },
    Evidence {
        first: Vec<u8>,
        second: Vec<u8>,
        reply: EvidenceReply,
    },
    Write {
        job: WriteJob,
        reply: SyncSender<Result<(), LogError>>,
    },
    Checkpoint {
        note: Vec<u8>,
        reply: CheckpointReply,
    },
    Equivocation {
        evidence: Box<Equivocation>,
        reply: EquivocationReply,
    },
    /// Transactions that need the sealer: the commit stage runs them (after
    /// every batch queued before them is durable) and hands the sealer back.
    Transact {
        epoch: u64,
        sealer: Box<Sealer>,
        jobs: Vec<TransactJob>,
        give_back: SyncSender<Sealer>,
    },
    /// Stop accepting this node's own feed from peers and hand back a sealer
    /// for what is durable (or a new feed).
    FinishRecovery {
        identity: Box<crate::identity::NodeIdentity>,
        /// The event format the node writes.
        format: u8,
        reply: SyncSender<Result<Sealer, LogError>>,
    },
    /// Install a reloaded trust state; with the sealer lent (the feed is
    /// not being recovered), append a certificate renewal if the reloaded
    /// certificate calls for one. The sealer goes back through `give_back`.
    Reload {
        epoch: u64,
        trust: Arc<TrustAnchor>,
        identity: Box<crate::identity::NodeIdentity>,
        channels: Arc<Channels>,
        sealer: Option<Box<Sealer>>,
        give_back: SyncSender<Option<Sealer>>,
        reply: ReloadReply,
    },
}

/// The seal stage's state.
pub(crate) struct SealStage {
    /// `None` while the feed is being recovered from peers.
    pub sealer: Option<Sealer>,
    pub identity: crate::identity::NodeIdentity,
    /// The event format the node writes.
    pub event_format: u8,
    /// Proclamations waiting for recovery to end, in order.
    pub deferred: Vec<Request>,
    /// Why recovery cannot finish now: proclamations fail with it instead
    /// of waiting (see [`super::Log::refuse_proclamations`]).
    pub refusal: Option<String>,
    /// Read connection used to find the durable head after a failed commit.
    pub head_conn: Connection,
    pub own_service: String,
}

/// The commit stage's state.
pub(crate) struct CommitStage {
    pub conn: Connection,
    /// Bumped after every commit that added events, so replication and
    /// subscriptions wake without polling.
    pub changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Fsyncs the WAL off this thread; what a commit owes waits for it.
    pub wal_sync: super::durable::WalSync,
    /// What each commit added, by type (see `store/recent.rs`).
    pub recent: Arc<super::recent::RecentCommits>,
    /// Feed heads as of the latest commit, refreshed after every commit
    /// that may move one.
    pub heads: Arc<super::HeadsCache>,
    /// The own feed's latest committed envelopes, for the outbox.
    pub own_feed: Arc<super::own_feed::OwnFeedCache>,
    pub trust: Arc<TrustAnchor>,
    /// The ingest rules, with the verifiers of feeds seen so far (loaded
    /// lazily from `feeds`).
    pub verifiers: Ingest,
    pub own_service: String,
    /// While true, this node's own feed is accepted from peers (recovery).
    pub recovering: Arc<std::sync::atomic::AtomicBool>,
    /// Where a self-fork found during recovery is reported.
    pub health: Arc<super::Health>,
    /// Channel keys for events proclaimed inside transactions.
    pub channels: Arc<Channels>,
    /// Every feed's Merkle tree touched so far (the right edges).
    pub trees: super::checkpoints::Trees,
    /// Signs this node's checkpoints and cosigns others'.
    pub signer: crate::core::checkpoint::CheckpointSigner,
    /// The latest checkpoints, for replication.
    pub checkpoint_cache: Arc<super::checkpoints::CheckpointCache>,
    /// Key transitions, for replication's seals.
    pub transition_cache: Arc<super::transitions::TransitionCache>,
    /// Author-signed checkpoints that did not match this node's trees yet
    /// (see `checkpoints::Witness::unmatched`).
    pub unmatched_checkpoints: HashMap<String, crate::core::checkpoint::VerifiedCheckpoint>,
    /// Counters for `/metrics` (events proclaimed, verification failures,
    /// commit latency): atomics, touched once per commit.
    pub metrics: Arc<super::metrics::StoreMetrics>,
}

/// Starts both stages; the returned thread ends after both have drained
/// every request (when all senders are dropped).
pub(crate) fn spawn(
    seal: SealStage,
    commit: CommitStage,
    requests: Receiver<Request>,
) -> std::io::Result<JoinHandle<()>> {
    let epoch = Arc::new(AtomicU64::new(0));
    let (chained_tx, chained_rx) = sync_channel::<Work>(SEALED_BATCHES_QUEUED_MAX);
    let (work_tx, work_rx) = sync_channel(SEALED_BATCHES_QUEUED_MAX);
    let commit_epoch = Arc::clone(&epoch);
    let name = seal.own_service.clone();
    let committer = std::thread::Builder::new()
        .name(format!("herald-commit-{name}"))
        .spawn(move || commit.run(work_rx, &commit_epoch))?;
    // The sign stage signs batch N on all cores while the seal stage chains
    // batch N+1 and the commit stage waits for batch N-1's fsync.
    let signer = std::thread::Builder::new()
        .name(format!("herald-sign-{name}"))
        .spawn(move || {
            while let Ok(work) = chained_rx.recv() {
                let work = match work {
                    Work::Chained {
                        epoch,
                        batch,
                        replies,
                    } => Work::Sealed {
                        epoch,
                        events: batch.sign(),
                        replies,
                    },
                    other => other,
                };
                if work_tx.send(work).is_err() {
                    return;
                }
            }
        })?;
    std::thread::Builder::new()
        .name(format!("herald-seal-{name}"))
        .spawn(move || {
            seal.run(requests, chained_tx, &epoch);
            let _ = signer.join();
            let _ = committer.join();
            tracing::debug!("store writer stopped");
        })
}

impl SealStage {
    fn run(mut self, requests: Receiver<Request>, work: SyncSender<Work>, epoch: &AtomicU64) {
        let mut sealed_epoch = epoch.load(Ordering::Acquire);
        while let Ok(first) = requests.recv() {
            let mut events = first.event_count();
            let mut batch = vec![first];
            while events < COMMIT_BATCH_EVENTS_MAX {
                match requests.try_recv() {
                    Ok(r) => {
                        events += r.event_count();
                        batch.push(r);
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            let stop = batch.iter().any(|r| matches!(r, Request::Shutdown));
            let current = epoch.load(Ordering::Acquire);
            if current != sealed_epoch {
                self.rewind_to_durable_head();
                sealed_epoch = current;
            }
            let (control, mut batch): (Vec<Request>, Vec<Request>) =
                batch.into_iter().partition(|r| {
                    matches!(
                        r,
                        Request::FinishRecovery { .. }
                            | Request::Refuse { .. }
                            | Request::Reload { .. }
                    )
                });
            for request in control {
                match request {
                    Request::FinishRecovery { reply } => {
                        let outcome = self.finish_recovery(&work);
                        if outcome.is_ok() {
                            self.refusal = None;
                            // Proclamations that waited go first, in order.
                            let mut waited = std::mem::take(&mut self.deferred);
                            waited.append(&mut batch);
                            batch = waited;
                        }
                        let _ = reply.send(outcome);
                    }
                    Request::Refuse { reason } => {
                        self.refusal = reason.filter(|_| self.sealer.is_none());
                        for waiting in std::mem::take(&mut self.deferred) {
                            self.defer(waiting);
                        }
                    }
                    Request::Reload {
                        trust,
                        identity,
                        channels,
                        reply,
                    } => {
                        let outcome =
                            self.reload(trust, identity, channels, &work, epoch, &mut sealed_epoch);
                        let _ = reply.send(outcome);
                    }
                    _ => {}
                }
            }
            if self
                .seal_in_order(batch, &work, epoch, &mut sealed_epoch)
                .is_err()
            {
                return;
            }
            if stop {
                return;
            }
        }
    }

    /// Seals the batch in request order: runs of proclamations are sealed
    /// together; each run of transactions is handed, with the sealer, to the
    /// commit stage, which runs them after everything before them is durable.
    fn seal_in_order(
        &mut self,
        batch: Vec<Request>,
        work: &SyncSender<Work>,
        epoch: &AtomicU64,
        sealed_epoch: &mut u64,
    ) -> Result<(), LogError> {
        let mut others: Vec<Request> = Vec::new();
        let mut transacts: Vec<TransactJob> = Vec::new();
        for request in batch {
            match request {
                Request::Transact(job) if self.sealer.is_none() => {
                    self.defer(Request::Transact(job));
                }
                Request::Transact(job) => {
                    self.send_sealed(std::mem::take(&mut others), work, *sealed_epoch)?;
                    transacts.push(job);
                }
                other => {
                    self.run_transacts(std::mem::take(&mut transacts), work, epoch, sealed_epoch)?;
                    others.push(other);
                }
            }
        }
        self.run_transacts(transacts, work, epoch, sealed_epoch)?;
        self.send_sealed(others, work, *sealed_epoch)
    }

    fn send_sealed(
        &mut self,
        requests: Vec<Request>,
        work: &SyncSender<Work>,
        epoch: u64,
    ) -> Result<(), LogError> {
        if requests.is_empty() {
            return Ok(());
        }
        for item in self.seal(requests, epoch) {
            work.send(item).map_err(|_| LogError::WriterGone)?;
        }
        Ok(())
    }

    /// Lends the sealer to the commit stage for a run of transactions and
    /// waits for it to come back (rewinding if a commit failed meanwhile).
    fn run_transacts(
        &mut self,
        jobs: Vec<TransactJob>,
        work: &SyncSender<Work>,
        epoch: &AtomicU64,
        sealed_epoch: &mut u64,
    ) -> Result<(), LogError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let Some(sealer) = self.sealer.take() else {
            for job in jobs {
                self.defer(Request::Transact(job));
            }
            return Ok(());
        };
        let (give_back, returned) = sync_channel(1);
        work.send(Work::Transact {
            epoch: *sealed_epoch,
            sealer: Box::new(sealer),
            jobs,
            give_back,
        })
        .map_err(|_| LogError::WriterGone)?;
        self.sealer = Some(returned.recv().map_err(|_| LogError::WriterGone)?);
        let current = epoch.load(Ordering::Acquire);
        if current != *sealed_epoch {
            self.rewind_to_durable_head();
            *sealed_epoch = current;
        }
        Ok(())
    }

    /// Seals every draft of the batch together (signing on all cores);
    /// ingests pass through untouched.
    fn seal(&mut self, batch: Vec<Request>, epoch: u64) -> Vec<Work> {
        let mut out = Vec::new();
        let mut replies = Vec::new();
        let mut drafts: Vec<Draft> = Vec::new();
        let mut keys: Vec<Arc<ChannelKey>> = Vec::new();
        for request in batch {
            match request {
                Request::Proclaim { drafts, reply } if self.sealer.is_none() => {
                    self.defer(Request::Proclaim { drafts, reply });
                }
                Request::Proclaim { drafts: d, reply } => {
                    replies.push((d.len(), reply));
                    for (draft, key) in d {
                        drafts.push(draft);
                        keys.push(key);
                    }
                }
                Request::Ingest {
                    envelopes,
                    seals,
                    policy,
                    reply,
                } => out.push(Work::Ingest {
                    envelopes,
                    seals,
                    policy,
                    reply,
                }),
                Request::Evidence {
                    first,
                    second,
                    reply,
                } => out.push(Work::Evidence {
                    first,
                    second,
                    reply,
                }),
                Request::Write { job, reply } => out.push(Work::Write { job, reply }),
                Request::Checkpoint { note, reply } => out.push(Work::Checkpoint { note, reply }),
                Request::Equivocation { evidence, reply } => {
                    out.push(Work::Equivocation { evidence, reply })
                }
                // `seal_in_order` routes transactions elsewhere.
                Request::Transact(job) => {
                    let _ = job.reply.send(Err(TxError::Store(LogError::Corrupt(
                        "internal: a transaction reached the proclamation sealer".into(),
                    ))));
                }
                // Control requests are taken out of the batch before it.
                Request::Shutdown
                | Request::FinishRecovery { .. }
                | Request::Refuse { .. }
                | Request::Reload { .. } => {}
            }
        }
        if let (false, Some(sealer)) = (drafts.is_empty(), self.sealer.as_mut()) {
            let now_us = clock::now_us();
            // The last word on expiry, at the time the events
            // get (`Log::submit` checks earlier, so callers rarely get here).
            let not_after_us = self.identity.cert.not_after_us;
            if now_us > not_after_us {
                for (_, reply) in replies {
                    let _ = reply.send(Err(LogError::CertificateExpired { not_after_us }));
                }
                return out;
            }
            let inputs = drafts
                .into_iter()
                .zip(keys.iter())
                .map(|(draft, key)| (draft, key.as_ref(), new_entropy(now_us)))
                .collect();
            let batch = Box::new(sealer.chain_batch(inputs, now_us));
            out.push(Work::Chained {
                epoch,
                batch,
                replies,
            });
        }
        out
    }

    /// Keeps a proclamation or transaction until recovery ends, or fails it
    /// at once while recovery is stuck (a caller must not wait without end).
    fn defer(&mut self, request: Request) {
        let Some(reason) = &self.refusal else {
            self.deferred.push(request);
            return;
        };
        let error = || LogError::CannotProclaim(reason.clone());
        match request {
            Request::Proclaim { reply, .. } => {
                let _ = reply.send(Err(error()));
            }
            Request::Transact(job) => {
                let _ = job.reply.send(Err(TxError::Store(error())));
            }
            other => self.deferred.push(other),
        }
    }

    /// Asks the commit stage (which has applied every ingest queued before
    /// this) to close recovery and hand back a sealer for the durable head.
    fn finish_recovery(&mut self, work: &SyncSender<Work>) -> Result<(), LogError> {
        if self.sealer.is_some() {
            return Ok(());
        }
        let (reply, receiver) = sync_channel(1);
        work.send(Work::FinishRecovery {
            identity: Box::new(self.identity.clone()),
            format: self.event_format,
            reply,
        })
        .map_err(|_| LogError::WriterGone)?;
        let sealer = receiver.recv().map_err(|_| LogError::WriterGone)??;
        tracing::info!(next_seq = sealer.next_seq(), "own feed ready");
        self.sealer = Some(sealer);
        Ok(())
    }

    /// Hands a reloaded trust state to the commit stage, lending it the
    /// sealer for a certificate renewal, and keeps the identity for the
    /// end of recovery. The identity must hold the feed's key.
    fn reload(
        &mut self,
        trust: Arc<TrustAnchor>,
        identity: Box<crate::identity::NodeIdentity>,
        channels: Arc<Channels>,
        work: &SyncSender<Work>,
        epoch: &AtomicU64,
        sealed_epoch: &mut u64,
    ) -> Result<super::ReloadOutcome, LogError> {
        let new_key = identity.cert.public_key != self.identity.cert.public_key;
        if new_key && identity.transition.is_none() {
            return Err(LogError::KeyChanged);
        }
        if new_key && self.sealer.is_none() {
            // The transition needs the feed's head, which recovery is
            // still fetching from the peers.
            return Err(LogError::KeyTransition(
                "this node is still recovering its feed from its peers; reload once it has (`herald status` shows when)".into(),
            ));
        }
        let (give_back, returned) = sync_channel(1);
        let (reply, outcome) = sync_channel(1);
        work.send(Work::Reload {
            epoch: *sealed_epoch,
            trust,
            identity: identity.clone(),
            channels,
            sealer: self.sealer.take().map(Box::new),
            give_back,
            reply,
        })
        .map_err(|_| LogError::WriterGone)?;
        self.sealer = returned.recv().map_err(|_| LogError::WriterGone)?;
        let current = epoch.load(Ordering::Acquire);
        if current != *sealed_epoch {
            self.rewind_to_durable_head();
            *sealed_epoch = current;
        }
        let outcome = outcome.recv().map_err(|_| LogError::WriterGone)??;
        self.identity = *identity;
        Ok(outcome)
    }

    /// After a failed commit the sealer ran ahead of the disk: rewind it to
    /// what is durable so the feed never forks itself.
    fn rewind_to_durable_head(&mut self) {
        let Some(sealer) = self.sealer.as_ref() else {
            return;
        };
        match read_head(&self.head_conn, &self.own_service) {
            Ok(Some(head)) => {
                tracing::warn!(seq = head.seq, "rewinding the sealer to the durable head");
                self.sealer = Some(
                    Sealer::resume(
                        &self.own_service,
                        sealer.signing_key().clone(),
                        head.seq,
                        head.hash,
                        head.last_timestamp_us,
                    )
                    .with_format(sealer.format()),
                );
            }
            Ok(None) | Err(_) => {
                tracing::error!("cannot read the durable feed head; keeping the sealer as is");
            }
        }
    }
}

impl CommitStage {
    /// Tells subscriptions and replication that a commit added events,
    /// after refreshing the heads, keeping `own_events` (this node's own
    /// feed, committed by it) for the outbox and summarising the commit for
    /// [`RecentCommits`](super::recent::RecentCommits).
    fn announce_commit(&mut self, own_events: Vec<VerifiedEvent>) {
        self.announce(own_events, None);
    }

    /// Reads back, right after a commit, what replication and
    /// subscriptions are told of it (the heads; the checkpoint of this
    /// node's feed when it proclaimed, or of `checkpoint_of`), and
    /// publishes it once the commit is durable (`store::durable`).
    fn announce(&mut self, own_events: Vec<VerifiedEvent>, checkpoint_of: Option<&str>) {
        let heads = super::HeadsCache::read(&self.conn);
        let checkpoint_of = match checkpoint_of {
            Some(feed) => Some(feed),
            None if !own_events.is_empty() => Some(self.own_service.as_str()),
            None => None,
        };
        let checkpoint = checkpoint_of.and_then(|feed| {
            super::checkpoints::read_checkpoint(&self.conn, feed)
                .inspect_err(
                    |e| tracing::warn!(feed, error = %e, "cannot read the feed's checkpoint"),
                )
                .ok()
                .flatten()
        });
        self.refresh_transitions();
        if let Err(e) = self.recent.record_from(&self.conn) {
            tracing::debug!(error = %e, "cannot summarise the commit; subscriptions will read it");
        }
        let heads_cache = Arc::clone(&self.heads);
        let checkpoints = Arc::clone(&self.checkpoint_cache);
        let own_feed = Arc::clone(&self.own_feed);
        let changes = Arc::clone(&self.changes);
        self.wal_sync.after_sync(Box::new(move |synced| {
            if synced.is_err() {
                // Durability unknown: tell no one (the node stops).
                return;
            }
            heads_cache.set(heads);
            if let Some(checkpoint) = checkpoint {
                checkpoints.put(checkpoint);
            }
            if let Some(first) = own_events.first() {
                own_feed.append(first.header().seq, own_events.iter().map(|e| e.bytes()));
            }
            changes.send_modify(|v| *v += 1);
        }));
    }

    /// Reloads the key transitions if the commit added one (one count of
    /// a small table per commit).
    fn refresh_transitions(&self) {
        let read = super::transitions::count(&self.conn).and_then(|held| {
            if self.transition_cache.is_behind(held) {
                let all = super::transitions::read_all(&self.conn)?;
                self.transition_cache.set(held, all);
            }
            Ok(())
        });
        if let Err(e) = read {
            tracing::warn!(error = %e, "cannot read the key transitions");
        }
    }

    /// Sends `outcome` on `reply` once everything committed so far is
    /// durable; if the WAL's fsync failed, a commit error instead.
    fn reply_after_sync<T: Send + 'static>(
        &self,
        reply: SyncSender<Result<T, LogError>>,
        outcome: Result<T, LogError>,
    ) {
        self.wal_sync.after_sync(Box::new(move |synced| {
            let outcome = synced
                .map_err(|e| LogError::Commit(e.to_string()))
                .and(outcome);
            let _ = reply.send(outcome);
        }));
    }

    fn run(mut self, work: Receiver<Work>, epoch: &AtomicU64) {
        // Commits append to the WAL without an fsync; the sync thread
        // fsyncs it before anyone hears of them (`store::durable`).
        if let Err(e) = self.conn.pragma_update(None, "synchronous", "NORMAL") {
            tracing::warn!(error = %e, "cannot defer the WAL's fsync; every commit syncs itself");
        }
        while let Ok(item) = work.recv() {
            match item {
                Work::Ingest {
                    envelopes,
                    seals,
                    policy,
                    reply,
                } => {
                    let started = std::time::Instant::now();
                    let outcome = self.ingest(envelopes, seals, policy);
                    if let Ok(r) = &outcome {
                        self.metrics.ingested(r);
                    }
                    // Fork evidence changes a feed's status, not its events,
                    // but replication must hear of it to pass it on.
                    if let Ok(r) = &outcome
                        && (r.applied > 0 || !r.new_forks.is_empty())
                    {
                        self.announce_commit(Vec::new());
                    }
                    // Only commits that stored events are timed: an ingest
                    // of duplicates writes nothing to sync.
                    let stored = matches!(&outcome, Ok(r) if r.applied > 0);
                    let metrics = Arc::clone(&self.metrics);
                    self.wal_sync.after_sync(Box::new(move |synced| {
                        if stored && synced.is_ok() {
                            metrics.commit_took(started.elapsed());
                        }
                        let outcome = synced
                            .map_err(|e| LogError::Commit(e.to_string()))
                            .and(outcome);
                        let _ = reply.send(outcome);
                    }));
                }
                Work::Evidence {
                    first,
                    second,
                    reply,
                } => {
                    let outcome = self.record_evidence(first, second);
                    if let Ok(Err(rejection)) = &outcome {
                        self.metrics.rejected(rejection.check);
                    }
                    if let Ok(Ok(EvidenceOutcome::Recorded { .. })) = &outcome {
                        self.announce_commit(Vec::new());
                    }
                    self.reply_after_sync(reply, outcome);
                }
                Work::Write { job, reply } => {
                    let outcome = self.run_job(job);
                    self.reply_after_sync(reply, outcome);
                }
                Work::Checkpoint { note, reply } => {
                    let outcome = self.accept_checkpoint(&note);
                    if let Ok(Err(_)) = &outcome {
                        self.metrics.checkpoint_rejected();
                    }
                    if let Ok(Ok(outcome)) = &outcome {
                        self.announce_checkpoint(outcome);
                    }
                    self.reply_after_sync(reply, outcome);
                }
                Work::Equivocation { evidence, reply } => {
                    let outcome = self.record_equivocation(&evidence);
                    if let Ok(Err(_)) = &outcome {
                        self.metrics.checkpoint_rejected();
                    }
                    if let Ok(Ok(true)) = &outcome {
                        let cluster = self.signer.cluster().to_string();
                        if let Ok((_, _, feed)) =
                            crate::core::checkpoint::claimed_feed(&cluster, &evidence.first)
                        {
                            self.check_self_equivocation(&feed);
                        }
                        self.announce_commit(Vec::new());
                    }
                    self.reply_after_sync(reply, outcome);
                }
                Work::FinishRecovery {
                    identity,
                    format,
                    reply,
                } => {
                    self.recovering.store(false, Ordering::Release);
                    self.verifiers.forget(&self.own_service);
                    let sealer = super::start_or_resume(
                        &mut self.conn,
                        &identity,
                        &self.trust,
                        true,
                        format,
                    );
                    // It may have signed the recovered feed's checkpoint.
                    self.trees.clear();
                    if sealer.is_ok() {
                        let own = self.own_service.clone();
                        self.announce(Vec::new(), Some(&own));
                    }
                    self.reply_after_sync(reply, sealer);
                }
                Work::Sealed {
                    epoch: sealed_in,
                    events,
                    replies,
                } => self.commit_sealed(sealed_in, events, replies, epoch),
                Work::Chained {
                    epoch: sealed_in,
                    batch,
                    replies,
                } => self.commit_sealed(sealed_in, batch.sign(), replies, epoch),
                Work::Transact {
                    epoch: sealed_in,
                    mut sealer,
                    jobs,
                    give_back,
                } => {
                    if sealed_in == epoch.load(Ordering::Acquire) {
                        self.run_transacts(&mut sealer, jobs);
                    } else {
                        for job in jobs {
                            let _ = job.reply.send(Err(TxError::Store(LogError::Commit(
                                "an earlier batch failed to commit; the transaction did not run"
                                    .into(),
                            ))));
                        }
                    }
                    let _ = give_back.send(*sealer);
                }
                Work::Reload {
                    epoch: sealed_in,
                    trust,
                    identity,
                    channels,
                    mut sealer,
                    give_back,
                    reply,
                } => {
                    let outcome = match sealer.as_deref_mut() {
                        Some(_) if sealed_in != epoch.load(Ordering::Acquire) => {
                            Err(LogError::Commit(
                                "an earlier batch failed to commit; the reload did not run".into(),
                            ))
                        }
                        Some(sealer) => self.move_on_reload(&identity, &trust, sealer, epoch),
                        None => Ok((None, None)),
                    };
                    if let Ok((transition, renewal)) = &outcome {
                        self.trust = trust;
                        self.channels = channels;
                        // Verifiers admitted their authors with the old
                        // anchor: the next batch admits them again.
                        self.verifiers.forget_all();
                        let appended: Vec<VerifiedEvent> =
                            transition.iter().chain(renewal).cloned().collect();
                        if !appended.is_empty() {
                            self.announce_commit(appended);
                        }
                    }
                    let _ = give_back.send(sealer.map(|s| *s));
                    let outcome = outcome.map(|(transition, renewal)| super::ReloadOutcome {
                        transition_seq: transition.map(|e| e.header().seq),
                        renewal_seq: renewal.map(|e| e.header().seq),
                    });
                    self.reply_after_sync(reply, outcome);
                }
            }
        }
        // Every commit's actions run before the writer reports it stopped.
        self.wal_sync.finish();
    }

    /// Appends a certificate renewal for a reloaded identity if it calls for
    /// one (see `renew_own_certificate`); a failed commit makes the seal
    /// stage rewind the sealer.
    /// A key transition first, if the reloaded identity is for another key
    /// (see `transition_own_feed`), then a renewal if one is due.
    #[allow(clippy::type_complexity)]
    fn move_on_reload(
        &mut self,
        identity: &crate::identity::NodeIdentity,
        trust: &TrustAnchor,
        sealer: &mut Sealer,
        epoch: &AtomicU64,
    ) -> Result<(Option<VerifiedEvent>, Option<VerifiedEvent>), LogError> {
        let moved = super::transition_own_feed(
            &mut self.conn,
            identity,
            trust,
            sealer,
            &mut self.signer,
            &mut self.trees,
        );
        let transition = match moved {
            Ok(transition) => transition,
            Err(e) => {
                self.trees.clear();
                epoch.fetch_add(1, Ordering::AcqRel);
                return Err(e);
            }
        };
        let renewal = self.renew_on_reload(identity, trust, sealer, epoch)?;
        Ok((transition, renewal))
    }

    fn renew_on_reload(
        &mut self,
        identity: &crate::identity::NodeIdentity,
        trust: &TrustAnchor,
        sealer: &mut Sealer,
        epoch: &AtomicU64,
    ) -> Result<Option<VerifiedEvent>, LogError> {
        let renewed = super::renew_own_certificate(
            &mut self.conn,
            identity,
            trust,
            sealer,
            &self.signer,
            &mut self.trees,
        );
        if renewed.is_err() {
            self.trees.clear();
            epoch.fetch_add(1, Ordering::AcqRel);
        }
        renewed
    }

    /// Runs each transaction in its own savepoint of one SQLite transaction,
    /// signs every event they proclaimed on all cores, stores them and
    /// commits once. A closure that fails (or panics) rolls back its own
    /// savepoint and un-chains its events; the others still commit. If the
    /// commit fails, the sealer goes back to where the run started.
    fn run_transacts(&mut self, sealer: &mut Sealer, jobs: Vec<TransactJob>) {
        let started = std::time::Instant::now();
        let start = sealer.mark();
        let channels = Arc::clone(&self.channels);
        let mut accepted: Vec<(usize, TxReply)> = Vec::new();
        let mut chained: Option<crate::core::verify::ChainedBatch> = None;
        let outcome = (|| -> Result<Vec<VerifiedEvent>, LogError> {
            let mut tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for job in jobs {
                let mark = sealer.mark();
                let savepoint = tx.savepoint()?;
                let mut handle = Tx::new(&savepoint, sealer, &channels);
                let run = job.run;
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&mut handle)))
                        .unwrap_or_else(|panic| Err(TxError::Panicked(panic_message(&panic))));
                let events = handle.into_chained();
                let result = result.and_then(|()| savepoint.commit().map_err(TxError::from));
                match result {
                    Ok(()) => {
                        let count = events.as_ref().map_or(0, |e| e.len());
                        if let Some(events) = events {
                            match chained.as_mut() {
                                Some(all) => all.append(events),
                                None => chained = Some(events),
                            }
                        }
                        accepted.push((count, job.reply));
                    }
                    Err(e) => {
                        // The savepoint rolled back when dropped.
                        sealer.restore(mark);
                        let _ = job.reply.send(Err(e));
                    }
                }
            }
            let events = chained.take().map(|c| c.sign()).unwrap_or_default();
            insert_events(&tx, self.trees.names(), &events)?;
            if let Some(last) = events.last() {
                upsert_head(&tx, last)?;
            }
            extend_own_tree(&tx, &events, &mut self.trees, &self.signer)?;
            tx.commit()?;
            Ok(events)
        })();
        match outcome {
            Ok(events) => {
                let mut receipts = events.iter().map(Receipt::of);
                let replies: Vec<(TxReply, Vec<Receipt>)> = accepted
                    .into_iter()
                    .map(|(count, reply)| (reply, receipts.by_ref().take(count).collect()))
                    .collect();
                let proclaimed = events.len();
                if !events.is_empty() {
                    self.announce_commit(events);
                }
                let metrics = Arc::clone(&self.metrics);
                self.wal_sync.after_sync(Box::new(move |synced| {
                    if synced.is_ok() && proclaimed > 0 {
                        metrics.proclaimed(proclaimed);
                        metrics.commit_took(started.elapsed());
                    }
                    for (reply, receipts) in replies {
                        let outcome = match synced {
                            Ok(()) => Ok(receipts),
                            Err(e) => Err(TxError::Store(LogError::Commit(e.to_string()))),
                        };
                        let _ = reply.send(outcome);
                    }
                }));
            }
            Err(e) => {
                self.trees.clear();
                tracing::error!(error = %e, "transaction commit failed; nothing of it was stored");
                sealer.restore(start);
                let message = e.to_string();
                for (_, reply) in accepted {
                    let _ = reply.send(Err(TxError::Store(LogError::Commit(message.clone()))));
                }
            }
        }
    }

    fn commit_sealed(
        &mut self,
        sealed_in: u64,
        events: Vec<VerifiedEvent>,
        replies: Vec<(usize, ReceiptReply)>,
        epoch: &AtomicU64,
    ) {
        if sealed_in != epoch.load(Ordering::Acquire) {
            // Chained onto a batch whose commit failed: never store it.
            for (_, reply) in replies {
                let _ = reply.send(Err(LogError::Commit(
                    "an earlier batch failed to commit; nothing from this batch was stored".into(),
                )));
            }
            return;
        }
        let started = std::time::Instant::now();
        match commit_own(&mut self.conn, &events, &mut self.trees, &self.signer) {
            Ok(()) => {
                let mut receipts = events.iter().map(Receipt::of);
                let replies: Vec<(ReceiptReply, Vec<Receipt>)> = replies
                    .into_iter()
                    .map(|(size, reply)| (reply, receipts.by_ref().take(size).collect()))
                    .collect();
                let proclaimed = events.len();
                self.announce_commit(events);
                let metrics = Arc::clone(&self.metrics);
                self.wal_sync.after_sync(Box::new(move |synced| {
                    if synced.is_ok() {
                        metrics.proclaimed(proclaimed);
                        metrics.commit_took(started.elapsed());
                    }
                    for (reply, receipts) in replies {
                        let outcome = synced
                            .map(|()| receipts)
                            .map_err(|e| LogError::Commit(e.to_string()));
                        let _ = reply.send(outcome);
                    }
                }));
            }
            Err(e) => {
                self.trees.clear();
                tracing::error!(error = %e, "commit failed; the sealer will rewind");
                epoch.fetch_add(1, Ordering::AcqRel);
                let message = e.to_string();
                for (_, reply) in replies {
                    let _ = reply.send(Err(LogError::Commit(message.clone())));
                }
            }
        }
    }

    /// Checks and merges a checkpoint in its own transaction.
    fn accept_checkpoint(
        &mut self,
        note: &[u8],
    ) -> Result<Result<CheckpointOutcome, CheckpointError>, LogError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut witness = super::checkpoints::Witness {
            trust: &self.trust,
            verifiers: self.verifiers.verifiers_mut(),
            trees: &mut self.trees,
            signer: &self.signer,
            unmatched: &mut self.unmatched_checkpoints,
        };
        let outcome = super::checkpoints::accept(&tx, &mut witness, note);
        match outcome {
            Ok(outcome) => {
                tx.commit()?;
                Ok(outcome)
            }
            Err(e) => {
                self.trees.clear();
                Err(e)
            }
        }
    }

    /// Wakes replication when a checkpoint gained signatures (to pass them
    /// on) or a feed was frozen.
    fn announce_checkpoint(&mut self, outcome: &CheckpointOutcome) {
        if let CheckpointOutcome::Equivocation { feed } = outcome {
            self.check_self_equivocation(feed);
        }
        match outcome {
            CheckpointOutcome::Accepted { feed, .. } | CheckpointOutcome::Equivocation { feed } => {
                let feed = feed.clone();
                self.announce(Vec::new(), Some(&feed));
            }
            _ => {}
        }
    }

    /// Checks equivocation evidence and records it in its own transaction.
    fn record_equivocation(
        &mut self,
        evidence: &Equivocation,
    ) -> Result<Result<bool, CheckpointError>, LogError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let cluster = self.signer.cluster().to_string();
        let feed = match crate::core::checkpoint::claimed_feed(&cluster, &evidence.first) {
            Ok((_, _, feed)) => feed,
            Err(e) => return Ok(Err(e)),
        };
        let key = match load_verifier(&tx, &self.trust, self.verifiers.verifiers_mut(), &feed)? {
            Ok(v) => *v.key(),
            // A feed this node holds nothing of: it cannot check the
            // author's signatures; the evidence comes again later.
            Err(_) => return Ok(Ok(false)),
        };
        let (feed, first_size) =
            match crate::core::checkpoint::check_equivocation(&cluster, evidence, &key) {
                Ok(found) => found,
                Err(e) => return Ok(Err(e)),
            };
        let added = super::checkpoints::record_equivocation(&tx, &feed, first_size, evidence)?;
        tx.commit()?;
        Ok(Ok(added))
    }

    fn run_job(&mut self, job: WriteJob) -> Result<(), LogError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        job(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// Verifies and commits foreign events, in order, stopping at the first
    /// rejection. Duplicates are skipped (applied exactly once); a validly
    /// signed event that conflicts with a stored one is kept as fork evidence
    /// and the feed is no longer accepted.
    fn ingest(
        &mut self,
        envelopes: Vec<Vec<u8>>,
        seals: Vec<Seal>,
        policy: IngestPolicy,
    ) -> Result<IngestReport, LogError> {
        let outcome = self.ingest_in_transaction(envelopes, seals, policy);
        if outcome.is_err() {
            // The transaction rolled back: cached verifiers and trees may
            // stand ahead of the store, so reload them from disk.
            self.verifiers.forget_all();
            self.trees.clear();
        }
        outcome
    }

    /// Checks fork evidence and records it in its own transaction.
    fn record_evidence(
        &mut self,
        first: Vec<u8>,
        second: Vec<u8>,
    ) -> Result<Result<EvidenceOutcome, Rejection>, LogError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let outcome = record_evidence(
            &tx,
            &self.trust,
            self.verifiers.verifiers_mut(),
            first,
            second,
        )?;
        tx.commit()?;
        Ok(outcome)
    }

    fn ingest_in_transaction(
        &mut self,
        envelopes: Vec<Vec<u8>>,
        seals: Vec<Seal>,
        policy: IngestPolicy,
    ) -> Result<IngestReport, LogError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // While recovering, this node's own feed is verified and stored like
        // any other; afterwards only its sealer appends to it.
        let own_feed = (!self.recovering.load(Ordering::Acquire)).then_some(&*self.own_service);
        let ingested = self.verifiers.ingest(
            &mut TxFeeds {
                tx: &tx,
                trees: Some(&mut self.trees),
            },
            &*self.trust,
            Batch {
                envelopes,
                seals: &seals,
                policy,
                own_feed,
                cluster: self.signer.cluster(),
            },
        )?;
        write_ingested(&tx, &mut self.trees, &ingested)?;
        let Ingested { report, notes, .. } = ingested;
        let mut witness = super::checkpoints::Witness {
            trust: &self.trust,
            verifiers: self.verifiers.verifiers_mut(),
            trees: &mut self.trees,
            signer: &self.signer,
            unmatched: &mut self.unmatched_checkpoints,
        };
        let witnessed = witness_seals(&tx, &mut witness, notes)?;
        tx.commit()?;
        for outcome in &witnessed {
            self.announce_checkpoint(outcome);
        }
        self.check_self_fork(&report);
        Ok(report)
    }
}

impl CommitStage {
    /// While recovering, a peer's copy of this node's own feed that does not
    /// chain onto the stored head (or differs from a stored event) proves
    /// this store and the feed peers hold diverged: the node forked itself
    /// before (a store restored from another copy, say). Proclaiming on
    /// either branch would make it worse, so the node stops, loudly.
    fn check_self_fork(&self, report: &IngestReport) {
        if !self.recovering.load(Ordering::Acquire) {
            return;
        }
        let own = |feed: &str| feed == self.own_service;
        // A peer's copy that does not chain on (the ingest tolerates that
        // from a relay and reports it as a conflict), one that differs from
        // a stored event (a fork), or one refused for either reason.
        let evidence = report
            .conflicts
            .iter()
            .find(|(feed, _)| own(feed))
            .map(|(_, rejection)| rejection.to_string())
            .or_else(|| {
                report
                    .new_forks
                    .iter()
                    .find(|(feed, _)| own(feed))
                    .map(|(_, seq)| format!("two versions of sequence {seq}"))
            })
            .or_else(|| match (&report.rejected, &report.rejected_feed) {
                (Some(rejection), Some(feed))
                    if own(feed)
                        && matches!(rejection.check, Check::PreviousHash | Check::Fork) =>
                {
                    Some(rejection.to_string())
                }
                _ => None,
            });
        let Some(evidence) = evidence else { return };
        self.report_self_fork(&evidence);
    }

    /// While recovering, equivocation evidence about this node's own feed
    /// (its checkpoint and a peer's of the same feed that no consistency
    /// proof joins) proves the same as a diverging event: the store and the
    /// feed peers hold are two histories. Which one is noticed first, the
    /// events or the checkpoints, depends on arrival order; either stops
    /// the node.
    fn check_self_equivocation(&self, feed: &str) {
        if self.recovering.load(Ordering::Acquire) && feed == self.own_service {
            self.report_self_fork(
                "checkpoints of two histories of the feed: equivocation evidence recorded",
            );
        }
    }

    fn report_self_fork(&self, evidence: &str) {
        self.health.permanent(
            super::health::RECOVERY_TASK,
            &format!(
                "self-fork: a peer holds a different version of this node's own feed than this store ({evidence}); this store is not a copy of the feed its peers hold, so the node refuses to proclaim on it: restore the store this node last ran with, or move it aside to recover the feed from peers"
            ),
        );
    }
}

/// Hands the checkpoints of a batch's seals to the witness, after the
/// events they cover are stored: it stores and cosigns those that match
/// this node's tree and records a split view where one is proved.
fn witness_seals(
    tx: &Transaction<'_>,
    witness: &mut super::checkpoints::Witness<'_>,
    notes: Vec<SealNote>,
) -> Result<Vec<CheckpointOutcome>, LogError> {
    let mut outcomes = Vec::new();
    for note in notes {
        let outcome = match note {
            SealNote::Verified(verified) => {
                super::checkpoints::accept_verified(tx, witness, verified)?
            }
            SealNote::Unchecked(bytes) => super::checkpoints::accept(tx, witness, &bytes)?,
        };
        match outcome {
            Ok(outcome) => outcomes.push(outcome),
            // Checked already with the seal; nothing more to say of it.
            Err(e) => tracing::debug!(error = %e, "a seal's checkpoint was not witnessed"),
        }
    }
    Ok(outcomes)
}

/// Moves a feed's head (the feed's row exists since its genesis).
pub(super) fn set_head(
    tx: &Transaction<'_>,
    feed: &str,
    seq: u64,
    hash: &Hash,
    timestamp_us: u64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE feeds SET head_seq = ?2, head_hash = ?3, last_timestamp_us = ?4 WHERE feed = ?1",
    )?
    .execute(params![
        feed,
        seq as i64,
        hash.as_slice(),
        timestamp_us as i64
    ])?;
    Ok(())
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".into())
}

/// Fresh per-event randomness: a UUID v7 at `now_us` (millisecond precision,
/// 74 random bits) and a random nonce, from the thread's CSPRNG.
pub(crate) fn new_entropy(now_us: u64) -> Entropy {
    let random = clock::random_bytes::<34>();
    let mut id_random = [0u8; 10];
    id_random.copy_from_slice(&random[..10]);
    let mut nonce = [0u8; 24];
    nonce.copy_from_slice(&random[10..]);
    let id = uuid::Builder::from_unix_timestamp_millis(now_us / 1000, &id_random).into_uuid();
    Entropy {
        id: *id.as_bytes(),
        nonce,
    }
}

/// Commits a batch of this node's own events (and the new head) durably.
pub(crate) fn commit_own(
    conn: &mut Connection,
    events: &[VerifiedEvent],
    trees: &mut super::checkpoints::Trees,
    signer: &crate::core::checkpoint::CheckpointSigner,
) -> Result<(), LogError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    debug_assert!(events.iter().all(|e| e.header().author == signer.service()));
    insert_events(&tx, trees.names(), events)?;
    if let Some(last) = events.last() {
        upsert_head(&tx, last)?;
    }
    extend_own_tree(&tx, events, trees, signer)?;
    tx.commit()?;
    Ok(())
}

/// Appends this node's newly stored events to its feed's tree and signs
/// the checkpoint of the new size: one signature per sealed batch.
pub(crate) fn extend_own_tree(
    tx: &Connection,
    events: &[VerifiedEvent],
    trees: &mut super::checkpoints::Trees,
    signer: &crate::core::checkpoint::CheckpointSigner,
) -> Result<(), LogError> {
    let Some(first) = events.first() else {
        return Ok(());
    };
    let tree = trees.append(
        tx,
        signer.service(),
        first.header().seq,
        events.iter().map(|e| *e.hash()),
    )?;
    super::checkpoints::sign_own(tx, signer, tree)
}

/// Stores events as compact rows (`store::rows`); their hashes go to the
/// feed's tree, which the caller extends in the same transaction.
pub(crate) fn insert_events<'e>(
    tx: &Transaction<'_>,
    names: &mut super::rows::Names,
    events: impl IntoIterator<Item = &'e VerifiedEvent>,
) -> rusqlite::Result<()> {
    let mut rows = super::rows::RowInserter::new(tx)?;
    for event in events {
        insert_event_with(&mut rows, names, event)?;
    }
    Ok(())
}

/// Stores one event through `rows` (see [`insert_events`]).
pub(crate) fn insert_event_with(
    rows: &mut super::rows::RowInserter<'_>,
    names: &mut super::rows::Names,
    event: &VerifiedEvent,
) -> rusqlite::Result<()> {
    rows.insert(names, event)?;
    let tx = rows.tx();
    // Renewal or key transition: the feed's current certificate (the
    // column keeps its historical name) is what a verifier resumes with.
    let h = event.header();
    if h.event_type == crate::core::event::CERTIFICATE_EVENT_TYPE {
        tx.prepare_cached("UPDATE feeds SET genesis_cert = ?2 WHERE feed = ?1")?
            .execute(params![h.author, event.payload().unwrap_or_default()])?;
    }
    super::transitions::record(tx, event)
}

/// Moves a feed's head to `event`; a genesis event creates the feed row.
pub(crate) fn upsert_head(tx: &Transaction<'_>, event: &VerifiedEvent) -> rusqlite::Result<()> {
    let h = event.header();
    if h.seq == 0 {
        let cert = event.payload().unwrap_or_default();
        tx.prepare_cached(
            "INSERT INTO feeds (feed, head_seq, head_hash, last_timestamp_us, genesis_cert)
             VALUES (?1, 0, ?2, ?3, ?4)",
        )?
        .execute(params![
            h.author,
            event.hash().as_slice(),
            h.timestamp_us as i64,
            cert
        ])?;
    } else {
        tx.prepare_cached(
            "UPDATE feeds SET head_seq = ?2, head_hash = ?3, last_timestamp_us = ?4 WHERE feed = ?1",
        )?
        .execute(params![
            h.author,
            h.seq as i64,
            event.hash().as_slice(),
            h.timestamp_us as i64
        ])?;
    }
    Ok(())
}

/// A feed's durable head.
pub(crate) struct HeadRow {
    pub seq: u64,
    pub hash: Hash,
    pub last_timestamp_us: u64,
    pub genesis_cert: Vec<u8>,
}

pub(crate) fn read_head(conn: &Connection, feed: &str) -> rusqlite::Result<Option<HeadRow>> {
    conn.query_row(
        "SELECT head_seq, head_hash, last_timestamp_us, genesis_cert FROM feeds WHERE feed = ?1",
        [feed],
        |r| {
            Ok(HeadRow {
                seq: r.get::<_, i64>(0)? as u64,
                hash: blob32(r.get::<_, Vec<u8>>(1)?),
                last_timestamp_us: r.get::<_, i64>(2)? as u64,
                genesis_cert: r.get(3)?,
            })
        },
    )
    .optional()
}

/// A 32-byte blob column; a wrong length (a damaged store) yields zeros, which
/// never match a real hash and so surface as a chain error.
pub(crate) fn blob32(v: Vec<u8>) -> Hash {
    let mut out = [0u8; 32];
    if v.len() == 32 {
        out.copy_from_slice(&v);
    }
    out
}

/// The hash of the event `feed`/`seq` this store holds, if any.
pub(super) fn stored_hash(tx: &Connection, feed: &str, seq: u64) -> Result<Option<Hash>, LogError> {
    super::tree::event_hash_at(tx, feed, seq)
}

/// The event stored at `feed`/`seq`, rebuilt from its row.
pub(super) fn event_at(
    tx: &Transaction<'_>,
    feed: &str,
    seq: u64,
) -> Result<DecodedEvent, LogError> {
    let mut statement = tx.prepare_cached(&super::rows::select_events(
        "WHERE f.name = ?1 AND e.seq = ?2",
    ))?;
    let row = statement.query_row(params![feed, seq as i64], super::rows::event_row)?;
    let event = super::rows::Rebuilder::new(tx).event(row)?;
    DecodedEvent::decode(event.envelope)
        .map_err(|e| LogError::Corrupt(format!("{feed}/{seq}: {e}")))
}

/// The verifier of `feed`, resumed from its stored head on first use. The
/// inner `Err` is a rejection of the event (no genesis yet, revoked author).
pub(super) fn load_verifier<'a>(
    tx: &Transaction<'_>,
    trust: &TrustAnchor,
    verifiers: &'a mut HashMap<String, FeedVerifier>,
    feed: &str,
) -> Result<Result<&'a mut FeedVerifier, Rejection>, LogError> {
    let mut feeds = TxFeeds { tx, trees: None };
    crate::core::ingest::load_verifier(&mut feeds, trust, verifiers, feed)
}

/// Records fork evidence: `conflicting` against the event with hash
/// `stored` at its position, whose envelope is read from the events table
/// unless given (`stored_envelope`: this node holds another event there, or
/// none yet), and freezes the feed.
pub(super) fn record_fork(
    tx: &Transaction<'_>,
    conflicting: &DecodedEvent,
    stored: Hash,
    stored_envelope: Option<&[u8]>,
) -> rusqlite::Result<()> {
    let h = conflicting.header();
    tx.execute(
        "INSERT OR IGNORE INTO forks (feed, seq, stored_hash, conflicting_hash, conflicting_envelope, detected_at_us, stored_envelope)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            h.author,
            h.seq as i64,
            stored.as_slice(),
            conflicting.hash().as_slice(),
            conflicting.bytes(),
            clock::now_us() as i64,
            stored_envelope,
        ],
    )?;
    tx.execute(
        "UPDATE feeds SET status = 'forked' WHERE feed = ?1",
        [&h.author],
    )?;
    tracing::warn!(feed = %h.author, seq = h.seq, "fork detected; feed no longer accepted");
    Ok(())
}
