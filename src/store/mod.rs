//! The durable local log: one SQLite database per node (`DATA_DIR/herald.db`,
//! WAL), written by one group-committing writer thread and read through its
//! own connection.
//!
//! A proclamation that returned a [`Receipt`] is on disk: the writer answers
//! only after the transaction holding it committed and the WAL was fsynced
//! after that commit (`durable`: the fsync runs off the commit thread,
//! overlapping the next transaction).

pub mod checkpoints;
mod durable;
mod follow;
mod forks;
pub mod health;
mod ingest;
pub mod metrics;
mod own_feed;
mod peers;
mod recent;
pub(crate) mod rows;
mod schema;
mod subscribe;
mod transact;
pub mod transitions;
pub mod tree;
mod writer;

use std::fs::File;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use rusqlite::{Connection, OpenFlags, params};
use serde::Serialize;

pub use checkpoints::{
    COSIGNATURES_MAX, CheckpointCache, CheckpointOutcome, StoredCheckpoint, read_checkpoint,
    read_checkpoints, read_equivocations, seal_from_store,
};
pub use follow::*;
pub use forks::{EvidenceOutcome, IngestPolicy, Tolerated, pruned_envelope};
pub use health::{Health, Problem};
pub use peers::{PeerCursor, READ_ENVELOPES_BYTES_MAX, read_peer_cursors};
pub use schema::SCHEMA_VERSION;
pub use subscribe::*;
pub use transact::{
    Committed, EventRef, RESERVED_TABLE_PREFIX, STATE_KEY_BYTES_MAX, STATE_SCAN_ROWS_MAX,
    STATE_TABLE_BYTES_MAX, STATE_VALUE_BYTES_MAX, TRANSACT_EVENTS_MAX, Tx, TxError,
};
use writer::Request;

use crate::clock;
use crate::config::NodeConfig;
use crate::core::checkpoint::{CheckpointError, Equivocation};
use crate::core::crypto::{ChannelKey, Hash};
use crate::core::event::EventHeader;
use crate::core::limits::{FORMAT_VERSION_SEALED, FORMAT_VERSION_SIGNED};
use crate::core::verify::{Draft, DraftError, Rejection, Sealer, VerifiedEvent};
use crate::identity::{IdentityError, NodeIdentity, TrustAnchor};

/// File name of the database inside a node's data directory.
pub const DB_FILE: &str = "herald.db";
/// File name of the lock that keeps two processes from appending to one feed.
pub const LOCK_FILE: &str = "herald.lock";
/// How often the checkpointer moves the WAL into the database file. The
/// writer checkpoints only past [`WAL_RESTART_PAGES`], so copying pages and
/// their fsync stay off the commit path. Short, because the database file's
/// fsync still delays the writer's WAL fsync on the same file system:
/// copying 60 ms of commits at a time instead of 250 ms cut the bench's
/// half-rate p99 from about 29 to 16 ms (median of six runs each) at the
/// same CPU cost.
pub const CHECKPOINT_INTERVAL_MS: u64 = 60;
/// WAL size, in pages (32 MiB of 8 KiB pages), past which the writer
/// checkpoints the WAL itself after a commit. The checkpointer thread alone
/// never lets the WAL start over under steady writes: the writer appends
/// while it copies, so it never finds every frame copied, and the WAL grew
/// by hundreds of megabytes per bench scenario, every commit writing to
/// fresh file blocks the kernel had to allocate and zero. The writer's own
/// checkpoint copies only what the checkpointer has not (the last few
/// commits), and the next commit writes from the WAL's start again. In the
/// bench's half-rate cluster run this cut proclaim-to-durable p50 from about
/// 24 to 9 ms and p99 from about 100 to 15-22 ms.
pub const WAL_RESTART_PAGES: i64 = 4096;
/// Requests that may wait for the writer before callers block (back-pressure).
pub const WRITER_QUEUE_REQUESTS_MAX: usize = 256;

/// Errors of the local log. Messages name the file or value and the reason.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "store {path} is in use by another herald process (lock {lock} is held); stop it or use its client endpoint"
    )]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("cannot open store {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    #[error("store {path} belongs to service {found}, not {expected}")]
    WrongService {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error(
        "this node's certificate is for another key than its feed's, and no key transition authorization for it sits next to it (NAME.transition): rotate with `herald keygen rotate` (or recover with `herald keygen recover`), or restore the feed's key and certificate"
    )]
    KeyChanged,
    #[error("the key transition of this node's feed was refused, nothing changed: {0}")]
    KeyTransition(String),
    #[error("store is damaged: {0}")]
    Corrupt(String),
    #[error(
        "store {path} is damaged (SQLite quick_check: {report}); the node refuses to start on it: restore the store from a backup, or move it aside so the node recovers its feed from its peers"
    )]
    Damaged { path: PathBuf, report: String },
    #[error("unsupported event format {0}: this build writes format 1 (signed) or 2 (sealed)")]
    EventFormat(u8),
    #[error(
        "this node's certificate expired at {}: it cannot proclaim until it is renewed (`herald keygen renew`, then `herald reload` or restart the node)",
        crate::clock::format_timestamp(*.not_after_us)
    )]
    CertificateExpired { not_after_us: u64 },
    #[error("this node cannot proclaim yet: {0}")]
    CannotProclaim(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("unknown channel {name:?} (this node has keys for: {known})")]
    UnknownChannel { name: String, known: String },
    #[error(transparent)]
    Draft(#[from] DraftError),
    #[error("commit failed, nothing from this batch was stored: {0}")]
    Commit(String),
    #[error("event rejected: {0}")]
    Rejected(#[from] Rejection),
    #[error("feed {0} has forked; its events are no longer accepted")]
    FeedForked(String),
    #[error("the store writer has stopped")]
    WriterGone,
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Subscription(#[from] SubscriptionError),
}

impl LogError {
    /// Whether the fault may pass by itself (a busy or locked database, a
    /// full disk, an I/O error, a commit that failed for one of these), so
    /// a background task should retry it with backoff rather than stop.
    pub fn is_transient(&self) -> bool {
        match self {
            LogError::Sqlite(e) | LogError::Open { source: e, .. } => sqlite_transient(e),
            LogError::Schema(schema::SchemaError::Sqlite(e)) => sqlite_transient(e),
            // Commit failures carry the SQLite message only; the writer has
            // rolled back and stays usable, so the next attempt may succeed.
            LogError::Commit(_) => true,
            _ => false,
        }
    }
}

fn sqlite_transient(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode;
    matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::OutOfMemory
        )
    )
}

/// One event to proclaim: a validated draft and the channel that encrypts it.
pub type Proclamation = (Draft, Arc<ChannelKey>);

/// Proof that a proclamation is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    /// The event id (UUID v7).
    pub id: uuid::Uuid,
    /// Its sequence number in this node's feed.
    pub seq: u64,
    /// Its event hash (hex in JSON).
    #[serde(serialize_with = "hex_hash")]
    pub hash: Hash,
}

impl Receipt {
    fn of(event: &VerifiedEvent) -> Receipt {
        Receipt {
            id: event.header().uuid(),
            seq: event.header().seq,
            hash: *event.hash(),
        }
    }
}

pub use crate::core::ingest::IngestReport;

/// A feed's head as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FeedHead {
    pub feed: String,
    pub seq: u64,
    #[serde(serialize_with = "hex_hash", deserialize_with = "hash_from_hex")]
    pub hash: Hash,
    pub last_timestamp_us: u64,
    /// `active`, or `forked` once fork evidence was recorded.
    pub status: String,
}

/// The feed heads as of the latest commit, kept by the writer so that
/// replication (which asks on every wake-up, per peer) reads memory instead
/// of the store.
#[derive(Debug, Default)]
pub(crate) struct HeadsCache {
    /// `None` after the writer failed to read them back: ask the store.
    heads: Mutex<Option<Arc<Vec<FeedHead>>>>,
}

impl HeadsCache {
    /// Reads the heads back through `conn` (the writer's, right after a
    /// commit); `None` on error, so readers go to the store.
    pub(crate) fn read(conn: &Connection) -> Option<Arc<Vec<FeedHead>>> {
        match read_heads_from(conn) {
            Ok(heads) => Some(Arc::new(heads)),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read feed heads back; readers will ask the store");
                None
            }
        }
    }

    /// Publishes heads read back after a commit (`None`: readers go to the
    /// store).
    pub(crate) fn set(&self, fresh: Option<Arc<Vec<FeedHead>>>) {
        if let Ok(mut heads) = self.heads.lock() {
            *heads = fresh;
        }
    }

    /// Reads the heads back through `conn` and publishes them.
    pub(crate) fn refresh_from(&self, conn: &Connection) {
        self.set(Self::read(conn));
    }

    fn get(&self) -> Option<Arc<Vec<FeedHead>>> {
        self.heads.lock().ok().and_then(|h| h.clone())
    }
}

/// An event read back from the store.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Node-local arrival position.
    pub arrival: u64,
    pub header: EventHeader,
    pub hash: Hash,
    /// The exact signed envelope bytes.
    pub envelope: Vec<u8>,
}

/// Recorded fork evidence.
#[derive(Debug, Clone)]
pub struct ForkEvidence {
    pub feed: String,
    pub seq: u64,
    /// The stored event's envelope at that sequence number.
    pub stored_envelope: Vec<u8>,
    /// The conflicting, validly signed envelope.
    pub conflicting_envelope: Vec<u8>,
}

fn hash_from_hex<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    let bytes = hex::decode(&text).map_err(serde::de::Error::custom)?;
    bytes
        .try_into()
        .map_err(|_| serde::de::Error::custom("a hash is 32 bytes"))
}

pub(crate) fn hex_hash<S: serde::Serializer>(hash: &Hash, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(hash))
}

/// Everything a log needs, already loaded and checked.
pub struct LogOptions {
    pub data_dir: PathBuf,
    pub identity: NodeIdentity,
    pub trust: TrustAnchor,
    /// Every generation of every channel key, oldest first per channel
    /// (new events use each channel's last).
    pub channels: Vec<ChannelKey>,
    pub default_channel: String,
    /// Hold this node's feed until [`Log::finish_recovery`], whether the
    /// store holds it or not, so a node that lost its store or part of it
    /// (a restored backup, a lost WAL) first recovers what its peers hold of
    /// its feed (and never forks itself). Proclamations queue until then
    /// (or fail, see [`Log::refuse_proclamations`]). `false`: resume or
    /// start the feed at once.
    pub recover_own_feed: bool,
    /// The event format this node writes (`FORMAT_VERSION_SEALED` or
    /// `FORMAT_VERSION_SIGNED`; see `NodeConfig::event_format`).
    pub event_format: u8,
}

impl LogOptions {
    /// Loads keys, certificates and channel keys named by a node config.
    pub fn from_config(config: &NodeConfig) -> Result<LogOptions, LogError> {
        let (trust, identity) = config.load_identity(clock::now_us())?;
        let channels = config.load_channel_keys()?;
        Ok(LogOptions {
            data_dir: config.data_dir.clone(),
            identity,
            trust,
            channels,
            default_channel: config.default_channel.clone(),
            recover_own_feed: false,
            event_format: config.event_format,
        })
    }
}

/// A node's durable log.
pub struct Log {
    service: String,
    db_path: PathBuf,
    requests: Option<SyncSender<Request>>,
    writer: Option<JoinHandle<()>>,
    reader: Mutex<Connection>,
    /// Channel keys by name and the default; shared with the writer, which
    /// resolves channels for events proclaimed inside transactions.
    /// Replaced by [`Log::reload`].
    channels: RwLock<Arc<transact::Channels>>,
    /// Every generation of every channel key, for reading (channel key
    /// rotation): events carry the key id they were encrypted under.
    /// Replaced by [`Log::reload`].
    all_channel_keys: RwLock<Arc<Vec<ChannelKey>>>,
    /// The trust anchor ingest admits authors with; replaced by
    /// [`Log::reload`].
    trust: RwLock<Arc<TrustAnchor>>,
    /// Moves the WAL into the database in the background.
    _checkpointer: Checkpointer,
    /// True while this node's feed waits to be recovered from peers.
    recovering: Arc<std::sync::atomic::AtomicBool>,
    /// Counts commits that added events (see [`Log::changes`]).
    changes: tokio::sync::watch::Receiver<u64>,
    /// Types of the latest commits, so subscriptions skip what they ignore.
    recent: Arc<recent::RecentCommits>,
    /// Feed heads as of the latest commit.
    heads: Arc<HeadsCache>,
    /// The own feed's latest committed envelopes, for the outbox.
    own_feed: Arc<own_feed::OwnFeedCache>,
    /// Problems of the background tasks working on this log.
    health: Arc<Health>,
    /// Held for the log's lifetime: one process appends to a feed at a time.
    _lock: File,
    /// Every feed's latest checkpoint (with cosignatures), for replication.
    checkpoint_cache: Arc<checkpoints::CheckpointCache>,
    /// Every feed's key transitions, for replication's seals.
    transition_cache: Arc<transitions::TransitionCache>,
    /// This cluster's id, which every checkpoint origin names.
    cluster: String,
    /// Counters for `/metrics`, shared with the writer.
    metrics: Arc<metrics::StoreMetrics>,
    /// End of this node's certificate validity: events sealed after it
    /// would be rejected by every verifier, so proclaiming stops then.
    /// Moves when [`Log::reload`] takes a renewed certificate.
    cert_not_after_us: AtomicU64,
}

/// What [`Log::reload`] installs (live trust updates): everything already
/// loaded and checked by the caller.
pub struct TrustUpdate {
    /// The CA and revocation list ingest admits authors with from now on.
    pub trust: TrustAnchor,
    /// This node's identity as reloaded: the same key as the feed's, with a
    /// certificate that may be a renewal.
    pub identity: NodeIdentity,
    /// Every generation of every channel key, oldest first per channel.
    pub channels: Vec<ChannelKey>,
}

/// What [`Log::reload`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadOutcome {
    /// The sequence number of the key transition appended to this node's
    /// feed, if the reloaded certificate is for a new key.
    pub transition_seq: Option<u64>,
    /// The sequence number of the certificate renewal appended to this
    /// node's feed, if the reloaded certificate lasts longer than the
    /// feed's current one.
    pub renewal_seq: Option<u64>,
}

impl Log {
    /// Opens the log a node config describes.
    pub fn open(config: &NodeConfig) -> Result<Log, LogError> {
        Log::open_with(LogOptions::from_config(config)?)
    }

    /// Opens (creating if needed) a log. A new log begins its feed with a
    /// genesis event carrying this node's certificate. Start-up reads feed
    /// heads only; it never replays the log.
    pub fn open_with(options: LogOptions) -> Result<Log, LogError> {
        let LogOptions {
            data_dir,
            identity,
            trust,
            channels,
            default_channel,
            recover_own_feed,
            event_format,
        } = options;
        if !matches!(event_format, FORMAT_VERSION_SIGNED | FORMAT_VERSION_SEALED) {
            return Err(LogError::EventFormat(event_format));
        }
        std::fs::create_dir_all(&data_dir).map_err(|source| LogError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let lock = take_lock(&data_dir)?;
        let db_path = data_dir.join(DB_FILE);
        let mut conn = open_connection(&db_path, true)?;
        quick_check(&conn, &db_path)?;
        schema::migrate(&mut conn)?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_RESTART_PAGES)?;
        let checkpointer = Checkpointer::start(&db_path)?;
        claim_service(&conn, &db_path, &identity.service)?;
        let sealer = open_own_feed(&mut conn, &identity, &trust, recover_own_feed, event_format)?;
        let recovering = Arc::new(std::sync::atomic::AtomicBool::new(sealer.is_none()));
        let reader = open_connection(&db_path, false)?;
        let head_conn = open_connection(&db_path, false)?;
        let trust = Arc::new(trust);
        let (tx, rx) = sync_channel(WRITER_QUEUE_REQUESTS_MAX);
        let seal = writer::SealStage {
            sealer,
            head_conn,
            own_service: identity.service.clone(),
            identity: identity.clone(),
            event_format,
            deferred: Vec::new(),
            refusal: None,
        };
        let (changes_tx, changes) = tokio::sync::watch::channel(0u64);
        let recent = Arc::new(recent::RecentCommits::new(subscribe::last_arrival(&conn)?));
        let heads = Arc::new(HeadsCache::default());
        heads.refresh_from(&conn);
        let checkpoint_cache = Arc::new(checkpoints::CheckpointCache::load(&conn)?);
        let transition_cache = Arc::new(transitions::TransitionCache::load(&conn)?);
        let cluster = crate::core::checkpoint::cluster_id(&trust.ca_public_key());
        let own_feed = Arc::new(own_feed::OwnFeedCache::default());
        let health = Arc::new(Health::default());
        let store_metrics = Arc::new(metrics::StoreMetrics::default());
        // Channel key rotation: `channels` holds every generation, oldest
        // first per channel. New events use each channel's newest (the last
        // inserted wins); reads decrypt with all of them, by key id.
        let all_channel_keys = RwLock::new(Arc::new(channels.clone()));
        let channels = Arc::new(transact::Channels::newest_of(&channels, default_channel));
        let commit = writer::CommitStage {
            channels: Arc::clone(&channels),
            conn,
            changes: Arc::new(changes_tx),
            wal_sync: durable::WalSync::start(&db_path, Arc::clone(&health))?,
            recent: Arc::clone(&recent),
            heads: Arc::clone(&heads),
            own_feed: Arc::clone(&own_feed),
            trust: trust.clone(),
            verifiers: Default::default(),
            own_service: identity.service.clone(),
            recovering: recovering.clone(),
            health: Arc::clone(&health),
            trees: Default::default(),
            signer: checkpoints::signer_for(&identity, &trust),
            checkpoint_cache: Arc::clone(&checkpoint_cache),
            transition_cache: Arc::clone(&transition_cache),
            unmatched_checkpoints: Default::default(),
            metrics: Arc::clone(&store_metrics),
        };
        let handle = writer::spawn(seal, commit, rx)
            .map_err(|e| LogError::Corrupt(format!("cannot start writer threads: {e}")))?;
        let cert_not_after_us = AtomicU64::new(identity.cert.not_after_us);
        Ok(Log {
            cert_not_after_us,
            service: identity.service,
            db_path,
            requests: Some(tx),
            writer: Some(handle),
            reader: Mutex::new(reader),
            channels: RwLock::new(channels),
            all_channel_keys,
            trust: RwLock::new(trust),
            changes,
            recent,
            heads,
            own_feed,
            recovering,
            health,
            _checkpointer: checkpointer,
            _lock: lock,
            checkpoint_cache,
            transition_cache,
            cluster,
            metrics: store_metrics,
        })
    }

    /// This cluster's id (see `core::checkpoint::cluster_id`).
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Every feed's latest checkpoint this node holds, with its cosignatures.
    pub fn latest_checkpoints(&self) -> Vec<Arc<StoredCheckpoint>> {
        self.checkpoint_cache.all()
    }

    /// `feed`'s latest checkpoint, if this node holds one.
    pub fn latest_checkpoint(&self, feed: &str) -> Option<Arc<StoredCheckpoint>> {
        self.checkpoint_cache.get(feed)
    }

    /// The seal for a run of `feed`'s events ending at tree size `end` (see
    /// `core::wire::Seal`): the latest checkpoint with its author's
    /// signature only and the consistency proof from `end` to it (read from
    /// the stored tree unless the checkpoint ends there). `None` if no
    /// checkpoint held covers `end`: those events cannot be sent yet.
    pub fn seal_for(
        &self,
        feed: &str,
        end: u64,
    ) -> Result<Option<crate::core::wire::Seal>, LogError> {
        let Some(stored) = self.latest_checkpoint(feed) else {
            return Ok(None);
        };
        // A checkpoint past a key transition after `end` is under a key the
        // receiver cannot know yet: the old key's checkpoint that the first
        // such transition carries seals the run instead.
        let transitions = self.transition_cache.of(feed);
        let before_transition = transitions
            .iter()
            .find(|t| t.seq >= end && t.seq < stored.size);
        let stored = match before_transition {
            Some(t) => Arc::new(transitions::checkpoint_before(t)?),
            None => stored,
        };
        if stored.size == end {
            // Ends here: no proof, so no read.
            return checkpoints::seal_of(None, &self.cluster, &stored, end);
        }
        let reader = self.reader()?;
        checkpoints::seal_of(Some(&reader), &self.cluster, &stored, end)
    }

    /// `feed`'s key transitions, in order (see [`transitions`]).
    pub fn key_transitions(&self, feed: &str) -> Vec<Arc<transitions::TransitionPoint>> {
        self.transition_cache.of(feed)
    }

    /// Checks a checkpoint a peer sent against this node's copy of the
    /// feed, keeps what is new (a larger size, cosignatures) and cosigns it.
    /// The inner `Err` says what is wrong with the checkpoint itself.
    pub fn accept_checkpoint(
        &self,
        note: Vec<u8>,
    ) -> Result<Result<CheckpointOutcome, CheckpointError>, LogError> {
        let (reply, receiver) = sync_channel(1);
        self.send(Request::Checkpoint { note, reply })?;
        receiver.recv().map_err(|_| LogError::WriterGone)?
    }

    /// Checks equivocation evidence a peer sent and records it (`true` if
    /// it was new): the feed is frozen from the first checkpoint's size.
    pub fn record_equivocation(
        &self,
        evidence: Equivocation,
    ) -> Result<Result<bool, CheckpointError>, LogError> {
        let (reply, receiver) = sync_channel(1);
        self.send(Request::Equivocation {
            evidence: Box::new(evidence),
            reply,
        })?;
        receiver.recv().map_err(|_| LogError::WriterGone)?
    }

    /// Every equivocation this store holds, as (feed, evidence).
    pub fn equivocations(&self) -> Result<Vec<(String, Equivocation)>, LogError> {
        checkpoints::read_equivocations(&*self.reader()?)
    }

    /// This node's service name (its feed).
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Path of the SQLite database.
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// A receiver that changes after every commit that added events (own
    /// proclamations or ingested ones): wait on it instead of polling.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.clone()
    }

    /// The trust anchor this log verifies with (the latest one
    /// [`Log::reload`] installed).
    pub fn trust(&self) -> Arc<TrustAnchor> {
        Arc::clone(&self.trust.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The channel keys this node holds: every generation of every channel
    /// (readers pick one by the event header's key id).
    pub fn channel_keys(&self) -> Vec<ChannelKey> {
        self.all_channel_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .clone()
    }

    /// Resolves a channel name (`None`: the default channel) to its newest
    /// key generation.
    pub fn channel(&self, name: Option<&str>) -> Result<Arc<ChannelKey>, LogError> {
        let channels = Arc::clone(&self.channels.read().unwrap_or_else(|p| p.into_inner()));
        channels.get(name).cloned()
    }

    /// Installs a reloaded trust state (live trust updates), all or nothing:
    /// ingest admits authors with `update.trust` from the next batch on
    /// (cached feed verifiers are dropped, so an author revoked now is
    /// refused), new events use each channel's newest key generation in
    /// `update.channels` and reads use every generation, and if
    /// `update.identity`'s certificate lasts longer than the feed's current
    /// one, a certificate renewal is appended to this node's feed (as at
    /// start-up). The identity must hold the feed's key
    /// ([`LogError::KeyChanged`] otherwise); a default channel missing from
    /// the keyrings is refused. On an error nothing changed.
    pub fn reload(&self, update: TrustUpdate) -> Result<ReloadOutcome, LogError> {
        let TrustUpdate {
            trust,
            identity,
            channels,
        } = update;
        let default = self
            .channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .default
            .clone();
        let newest = Arc::new(transact::Channels::newest_of(&channels, default));
        newest.get(None)?;
        let trust = Arc::new(trust);
        let not_after_us = identity.cert.not_after_us;
        let (reply, receiver) = sync_channel(1);
        self.send(Request::Reload {
            trust: Arc::clone(&trust),
            identity: Box::new(identity),
            channels: Arc::clone(&newest),
            reply,
        })?;
        let outcome = receiver.recv().map_err(|_| LogError::WriterGone)??;
        *self.trust.write().unwrap_or_else(|p| p.into_inner()) = trust;
        *self.channels.write().unwrap_or_else(|p| p.into_inner()) = newest;
        *self
            .all_channel_keys
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(channels);
        self.cert_not_after_us
            .store(not_after_us, std::sync::atomic::Ordering::Release);
        Ok(outcome)
    }

    /// Proclaims one event on the default channel and waits until it is durable.
    pub fn proclaim(
        &self,
        event_type: &str,
        payload: &[u8],
        meta: Vec<(String, String)>,
    ) -> Result<Receipt, LogError> {
        let draft = Draft::new(event_type, 1, meta, payload.to_vec())?;
        let channel = self.channel(None)?;
        let mut receipts = self.submit(vec![(draft, channel)])?.wait()?;
        receipts.pop().ok_or(LogError::WriterGone)
    }

    /// Proclaims a batch and waits until all of it is durable (one commit
    /// when the batch fits [`COMMIT_BATCH_EVENTS_MAX`](crate::core::limits::COMMIT_BATCH_EVENTS_MAX)).
    pub fn proclaim_batch(&self, drafts: Vec<Proclamation>) -> Result<Vec<Receipt>, LogError> {
        self.submit(drafts)?.wait()
    }

    /// Queues drafts for sealing and returns at once; [`Pending::wait`] gives
    /// the receipts when they are durable. Blocks only while the writer's
    /// queue is full (back-pressure).
    pub fn submit(&self, drafts: Vec<Proclamation>) -> Result<Pending, LogError> {
        self.check_certificate_time()?;
        let (reply, receiver) = sync_channel(1);
        self.send(Request::Proclaim {
            drafts,
            reply: writer::ReceiptReply::Blocking(reply),
        })?;
        Ok(Pending { receiver })
    }

    /// [`Log::submit`] for async callers: [`PendingAsync::wait`] is awaited,
    /// so no thread is held while the events wait for their commit. Returns
    /// at once unless the writer's queue is full; then it waits for room on
    /// a blocking thread (back-pressure, without stalling the runtime).
    pub async fn submit_async(&self, drafts: Vec<Proclamation>) -> Result<PendingAsync, LogError> {
        self.check_certificate_time()?;
        let (reply, receiver) = tokio::sync::oneshot::channel();
        let request = Request::Proclaim {
            drafts,
            reply: writer::ReceiptReply::Async(reply),
        };
        let requests = self.requests.as_ref().ok_or(LogError::WriterGone)?;
        match requests.try_send(request) {
            Ok(()) => {}
            Err(TrySendError::Full(request)) => {
                let requests = requests.clone();
                let queued = tokio::task::spawn_blocking(move || requests.send(request).is_ok())
                    .await
                    .unwrap_or(false);
                if !queued {
                    return Err(LogError::WriterGone);
                }
            }
            Err(TrySendError::Disconnected(_)) => return Err(LogError::WriterGone),
        }
        Ok(PendingAsync { receiver })
    }

    /// Verifies events of other feeds and commits those that pass, in order.
    /// Stops at the first rejection (reported in the result); what came
    /// before it is committed. `Err` means the store itself failed.
    pub fn ingest(&self, envelopes: Vec<Vec<u8>>) -> Result<IngestReport, LogError> {
        self.ingest_from(envelopes, IngestPolicy::default())
    }

    /// Runs `work` on the writer inside one SQLite transaction: state it
    /// writes and events it proclaims through [`Tx`] commit together (one
    /// fsync) or, if it returns `Err` or panics, not at all. Returns once
    /// durable. `work` runs on the writer thread: keep it short and free of
    /// I/O. See `store/transact.rs` for the guarantees.
    pub fn transact<T, F>(&self, work: F) -> Result<Committed<T>, TxError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> Result<T, TxError> + Send + 'static,
    {
        self.check_certificate_time()?;
        let (value_tx, value_rx) = sync_channel(1);
        let run = Box::new(move |tx: &mut Tx<'_>| {
            let value = work(tx)?;
            // Received only if the transaction commits.
            let _ = value_tx.send(value);
            Ok(())
        });
        let (reply, receiver) = sync_channel(1);
        self.send(Request::Transact(transact::TransactJob { run, reply }))?;
        let receipts = receiver.recv().map_err(|_| LogError::WriterGone)??;
        let value = value_rx.recv().map_err(|_| LogError::WriterGone)?;
        Ok(Committed { value, receipts })
    }

    /// The committed value of `key` in application-state `table`.
    pub fn get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>, TxError> {
        transact::check_read(table, Some(key))?;
        Ok(transact::read_state(&*self.reader()?, table, key)?)
    }

    /// Committed rows of `table` in key order after `after`, at most
    /// `limit` (capped at [`STATE_SCAN_ROWS_MAX`]).
    pub fn scan(
        &self,
        table: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, TxError> {
        transact::check_read(table, None)?;
        Ok(transact::scan_state(&*self.reader()?, table, after, limit)?)
    }

    /// Whether `consumer` recorded event `event_id` as handled.
    pub fn was_handled(&self, consumer: &str, event_id: &[u8; 16]) -> Result<bool, LogError> {
        Ok(transact::was_handled(&*self.reader()?, consumer, event_id)?)
    }

    /// Whether this node's own feed is still being recovered from peers
    /// (see [`LogOptions::recover_own_feed`]).
    pub fn is_recovering(&self) -> bool {
        self.recovering.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Ends recovery: resumes this node's feed from what was recovered, or
    /// starts it with a genesis event if no peer held it. Proclamations that
    /// queued meanwhile are sealed after it. Idempotent.
    pub fn finish_recovery(&self) -> Result<(), LogError> {
        let (reply, receiver) = sync_channel(1);
        self.send(Request::FinishRecovery { reply })?;
        receiver.recv().map_err(|_| LogError::WriterGone)?
    }

    /// While recovery cannot tell whether peers hold more of this node's
    /// feed (`Some(reason)`): proclamations and transactions that waited
    /// for recovery, and those that come, fail at once with
    /// [`LogError::CannotProclaim`] instead of waiting without end. `None`:
    /// they wait for recovery again. [`Log::finish_recovery`] lifts it.
    pub fn refuse_proclamations(&self, reason: Option<String>) -> Result<(), LogError> {
        self.send(Request::Refuse { reason })
    }

    /// The problems of the background tasks working on this log.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// A handle that runs small writes through the writer.
    pub(crate) fn write_handle(&self) -> Result<WriteHandle, LogError> {
        Ok(WriteHandle {
            requests: self.requests.clone().ok_or(LogError::WriterGone)?,
        })
    }

    /// End of this node's certificate validity, microseconds since the
    /// Unix epoch (for expiry warnings).
    pub fn cert_not_after_us(&self) -> u64 {
        self.cert_not_after_us
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Refuses to proclaim once this node's certificate has expired: every
    /// verifier would reject the events (renew, then reload or restart).
    fn check_certificate_time(&self) -> Result<(), LogError> {
        let not_after_us = self.cert_not_after_us();
        if clock::now_us() > not_after_us {
            return Err(LogError::CertificateExpired { not_after_us });
        }
        Ok(())
    }

    fn send(&self, request: Request) -> Result<(), LogError> {
        self.requests
            .as_ref()
            .ok_or(LogError::WriterGone)?
            .send(request)
            .map_err(|_| LogError::WriterGone)
    }

    /// The head of every feed this node holds, as of the latest commit
    /// (the writer refreshes them before it answers or wakes anyone).
    pub fn heads(&self) -> Result<Vec<FeedHead>, LogError> {
        if let Some(heads) = self.heads.get() {
            return Ok(heads.as_ref().clone());
        }
        read_heads_from(&*self.reader()?)
    }

    /// Events of `feed` with sequence numbers in `range`, in order.
    pub fn read(
        &self,
        feed: &str,
        range: RangeInclusive<u64>,
    ) -> Result<Vec<StoredEvent>, LogError> {
        read_feed_from(&*self.reader()?, feed, range)
    }

    /// Events with this id (UUID v7 bytes), in arrival order, at most
    /// `limit`. Ids are chosen by authors, so more than one feed may hold an
    /// event with the same id; uses the `event_rows_by_id` index.
    pub fn read_by_id(&self, id: &[u8; 16], limit: usize) -> Result<Vec<StoredEvent>, LogError> {
        let conn = self.reader()?;
        let limit = limit.min(i64::MAX as usize) as i64;
        rows::query_events(
            &conn,
            "WHERE e.id = ?1 ORDER BY e.arrival LIMIT ?2",
            params![id.as_slice(), limit],
        )
    }

    /// Events in arrival order after position `after`, at most `limit`.
    pub fn read_arrivals(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, LogError> {
        read_arrivals_from(&*self.reader()?, after, limit)
    }

    /// All recorded fork evidence.
    pub fn forks(&self) -> Result<Vec<ForkEvidence>, LogError> {
        let conn = self.reader()?;
        read_forks(&conn)
    }

    pub(crate) fn reader(&self) -> Result<std::sync::MutexGuard<'_, Connection>, LogError> {
        self.reader
            .lock()
            .map_err(|_| LogError::Corrupt("reader connection poisoned".into()))
    }

    /// Stops the writer after it has committed everything queued.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(requests) = self.requests.take() {
            let _ = requests.send(Request::Shutdown);
        }
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A background thread that checkpoints the WAL every
/// [`CHECKPOINT_INTERVAL_MS`] (PASSIVE: it never blocks the writer or
/// readers). Stopped and joined on drop.
struct Checkpointer {
    stop: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    fn start(db_path: &Path) -> Result<Checkpointer, LogError> {
        let conn = open_connection(db_path, false)?;
        let (stop, stopped) = sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("herald-checkpoint".into())
            .spawn(move || {
                let interval = std::time::Duration::from_millis(CHECKPOINT_INTERVAL_MS);
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(interval)
                {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::debug!(error = %e, "checkpoint skipped");
                    }
                }
                // On close, fold the whole WAL into the database file.
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            })
            .map_err(|e| LogError::Corrupt(format!("cannot start checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs non-event writes through the log's single writer.
#[derive(Clone)]
pub(crate) struct WriteHandle {
    requests: SyncSender<Request>,
}

impl WriteHandle {
    /// Runs `job` in its own transaction on the writer; waits until durable.
    pub(crate) fn write(&self, job: writer::WriteJob) -> Result<(), LogError> {
        let (reply, receiver) = sync_channel(1);
        self.requests
            .send(Request::Write { job, reply })
            .map_err(|_| LogError::WriterGone)?;
        receiver.recv().map_err(|_| LogError::WriterGone)?
    }
}

/// Receipts that will arrive once a submitted batch is durable.
pub struct Pending {
    receiver: Receiver<Result<Vec<Receipt>, LogError>>,
}

impl Pending {
    /// Waits until the batch is durable.
    pub fn wait(self) -> Result<Vec<Receipt>, LogError> {
        self.receiver.recv().map_err(|_| LogError::WriterGone)?
    }
}

/// Receipts an async caller awaits (see [`Log::submit_async`]).
pub struct PendingAsync {
    receiver: tokio::sync::oneshot::Receiver<Result<Vec<Receipt>, LogError>>,
}

impl PendingAsync {
    /// Resolves when the batch is durable.
    pub async fn wait(self) -> Result<Vec<Receipt>, LogError> {
        self.receiver.await.map_err(|_| LogError::WriterGone)?
    }
}

/// Events of `feed` with sequence numbers in `range`, in order, from any
/// connection (including a read-only one).
pub fn read_feed_from(
    conn: &Connection,
    feed: &str,
    range: RangeInclusive<u64>,
) -> Result<Vec<StoredEvent>, LogError> {
    let start = (*range.start()).min(i64::MAX as u64) as i64;
    let end = (*range.end()).min(i64::MAX as u64) as i64;
    rows::query_events(
        conn,
        "WHERE f.name = ?1 AND e.seq BETWEEN ?2 AND ?3 ORDER BY e.seq",
        params![feed, start, end],
    )
}

/// Events in arrival order after position `after`, at most `limit`, from any
/// connection (including a read-only one).
pub fn read_arrivals_from(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<StoredEvent>, LogError> {
    rows::query_events(
        conn,
        "WHERE e.arrival > ?1 ORDER BY e.arrival LIMIT ?2",
        params![
            after.min(i64::MAX as u64) as i64,
            limit.min(i64::MAX as usize) as i64
        ],
    )
}

/// The head of every feed, from any connection (read-only included).
pub fn read_heads_from(conn: &Connection) -> Result<Vec<FeedHead>, LogError> {
    let mut stmt = conn.prepare_cached(
        "SELECT feed, head_seq, head_hash, last_timestamp_us, status FROM feeds ORDER BY feed",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(FeedHead {
            feed: r.get(0)?,
            seq: r.get::<_, i64>(1)? as u64,
            hash: writer::blob32(r.get(2)?),
            last_timestamp_us: r.get::<_, i64>(3)? as u64,
            status: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A hash from a 32-byte blob column (zeros for a damaged blob, which never
/// matches a real hash and so surfaces as a chain error).
pub fn hash_from_blob(blob: &[u8]) -> Hash {
    writer::blob32(blob.to_vec())
}

/// The event in arrival position `arrival`, if any.
pub(crate) fn read_arrival(
    conn: &Connection,
    arrival: u64,
) -> Result<Option<StoredEvent>, LogError> {
    Ok(rows::query_events(
        conn,
        "WHERE e.arrival = ?1",
        [arrival.min(i64::MAX as u64) as i64],
    )?
    .pop())
}

/// Every recorded fork whose both sides this store holds (the first side
/// is the stored event at the fork's position unless the row carries it).
pub fn read_forks(conn: &Connection) -> Result<Vec<ForkEvidence>, LogError> {
    let mut stmt = conn.prepare(
        "SELECT feed, seq, stored_envelope, conflicting_envelope FROM forks ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)? as u64,
            r.get::<_, Option<Vec<u8>>>(2)?,
            r.get::<_, Vec<u8>>(3)?,
        ))
    })?;
    let mut forks = Vec::new();
    for row in rows {
        let (feed, seq, stored, conflicting_envelope) = row?;
        let stored_envelope = match stored {
            Some(envelope) => envelope,
            None => match rows::event_at(conn, &feed, seq)? {
                Some(event) => event.envelope,
                None => continue,
            },
        };
        forks.push(ForkEvidence {
            feed,
            seq,
            stored_envelope,
            conflicting_envelope,
        });
    }
    Ok(forks)
}

fn take_lock(data_dir: &Path) -> Result<File, LogError> {
    let path = data_dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| LogError::DataDir {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(_) => Err(LogError::Locked {
            path: data_dir.join(DB_FILE),
            lock: path,
        }),
    }
}

/// Opens a connection with the durability pragmas.
pub(crate) fn open_connection(path: &Path, create: bool) -> Result<Connection, LogError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).map_err(|source| LogError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    schema::configure(&conn).map_err(|source| LogError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(conn)
}

/// Opens a store read-only (for `herald verify DATA_DIR` and `herald log`
/// while the node runs: no lock taken, nothing written).
pub fn open_read_only(data_dir: &Path) -> Result<Connection, LogError> {
    let path = data_dir.join(DB_FILE);
    if !path.is_file() {
        return Err(LogError::Open {
            path: path.clone(),
            source: rusqlite::Error::InvalidPath(path),
        });
    }
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| LogError::Open {
        path: path.clone(),
        source,
    })?;
    Ok(conn)
}

/// Refuses a store whose pages are damaged: one that opened anyway would
/// keep acknowledging events it may not be able to keep. SQLite's
/// `quick_check` reads every page once (no index cross-checks): 0.5 s for a
/// 256 MB store of 300,000 events here with the file in the page cache, so
/// it runs on every writable open (a node's start, an offline `publish`).
/// At most five findings are reported.
fn quick_check(conn: &Connection, db_path: &Path) -> Result<(), LogError> {
    let damaged = |report: String| LogError::Damaged {
        path: db_path.to_path_buf(),
        report,
    };
    let mut stmt = conn
        .prepare("PRAGMA quick_check(5)")
        .map_err(|e| damaged(e.to_string()))?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| damaged(e.to_string()))?;
    if rows.len() == 1 && rows[0] == "ok" {
        return Ok(());
    }
    Err(damaged(rows.join("; ")))
}

fn claim_service(conn: &Connection, db_path: &Path, service: &str) -> Result<(), LogError> {
    let found: Option<String> = conn
        .query_row(
            "SELECT value FROM herald_meta WHERE key = 'service'",
            [],
            |r| r.get(0),
        )
        .ok();
    match found {
        Some(found) if found != service => Err(LogError::WrongService {
            path: db_path.to_path_buf(),
            expected: service.to_string(),
            found,
        }),
        Some(_) => Ok(()),
        None => {
            conn.execute(
                "INSERT INTO herald_meta (key, value) VALUES ('service', ?1)",
                [service],
            )?;
            Ok(())
        }
    }
}

/// Resumes this node's feed from its stored head, checking that the head row
/// matches the last stored event; or starts the feed with a genesis event.
fn open_own_feed(
    conn: &mut Connection,
    identity: &NodeIdentity,
    trust: &TrustAnchor,
    recover: bool,
    format: u8,
) -> Result<Option<Sealer>, LogError> {
    let service = &identity.service;
    let head = writer::read_head(conn, service)?;
    match (head, recover) {
        (None, true) => Ok(None),
        (Some(_), true) => {
            // Check the key and the head row now (it writes nothing for a
            // stored feed), so a bad store fails at start-up, not later.
            start_or_resume(conn, identity, trust, false, format)?;
            Ok(None)
        }
        (_, false) => start_or_resume(conn, identity, trust, true, format).map(Some),
    }
}

/// Resumes this node's feed from its stored head (checking the key and the
/// head row), or starts it with a genesis event if there is none. With
/// `sign`, makes sure the feed's checkpoint covers every stored event (a
/// store from before Merkle feeds, or a feed just recovered from peers,
/// has none yet); without, it writes nothing for a stored feed.
pub(crate) fn start_or_resume(
    conn: &mut Connection,
    identity: &NodeIdentity,
    trust: &TrustAnchor,
    sign: bool,
    format: u8,
) -> Result<Sealer, LogError> {
    let service = &identity.service;
    let mut signer = checkpoints::signer_for(identity, trust);
    let Some(head) = writer::read_head(conn, service)? else {
        let now_us = clock::now_us();
        let id = writer::new_entropy(now_us).id;
        let (sealer, genesis) = Sealer::new_feed(service, identity.signing_key.clone())
            .with_format(format)
            .start_feed(&identity.cert.der, id, now_us);
        writer::commit_own(conn, &[genesis], &mut Default::default(), &signer)?;
        return Ok(sealer);
    };
    let genesis_key = trust
        .admit_author(service, &head.genesis_cert)
        .map(|c| c.public_key)
        .ok();
    // Another key: a key transition is due (`herald keygen rotate` or
    // `recover` left its authorization next to the certificate). A
    // recovering node appends it once its feed is back.
    let transition_due = genesis_key.as_ref() != Some(&identity.cert.public_key);
    if transition_due && identity.transition.is_none() {
        return Err(LogError::KeyChanged);
    }
    // The last row and the hash the feed's tree holds for it; the row
    // itself is checked when it is read.
    let last: Option<i64> = conn.query_row(
        "SELECT max(e.seq) FROM event_rows e JOIN feed_names f ON f.id = e.feed WHERE f.name = ?1",
        [service],
        |r| r.get(0),
    )?;
    let last = last.map(|seq| seq as u64);
    let last_hash = match last {
        Some(seq) => tree::event_hash_at(conn, service, seq)?,
        None => None,
    };
    if last != Some(head.seq) || last_hash != Some(head.hash) {
        return Err(LogError::Corrupt(format!(
            "feed head says sequence {} but the last stored event is {last:?}",
            head.seq
        )));
    }
    let mut sealer = Sealer::resume(
        service,
        identity.signing_key.clone(),
        head.seq,
        head.hash,
        head.last_timestamp_us,
    )
    .with_format(format);
    if sign && transition_due {
        // Before anything is signed with the new key: the old key's
        // checkpoint of the feed so far goes into the transition.
        transition_own_feed(
            conn,
            identity,
            trust,
            &mut sealer,
            &mut signer,
            &mut Default::default(),
        )?;
    }
    if sign {
        checkpoints::cover_own_feed(conn, &signer, sealer.next_seq())?;
        renew_own_certificate(
            conn,
            identity,
            trust,
            &mut sealer,
            &signer,
            &mut Default::default(),
        )?;
    }
    Ok(sealer)
}

/// Key transition: when this node starts (or reloads, see [`Log::reload`])
/// with a certificate for another key than its feed's and the
/// authorization for it (`identity.transition`, from `NAME.transition`),
/// appends the key transition (`core::transition`): its payload carries
/// the authorization and the old key's checkpoint of the feed so far, and
/// the new key seals it. On success `sealer` and `signer` are on the new
/// key; on failure they are as they were and nothing is stored. `None` if
/// the feed is on the identity's key already.
pub(crate) fn transition_own_feed(
    conn: &mut Connection,
    identity: &NodeIdentity,
    trust: &TrustAnchor,
    sealer: &mut Sealer,
    signer: &mut crate::core::checkpoint::CheckpointSigner,
    trees: &mut checkpoints::Trees,
) -> Result<Option<VerifiedEvent>, LogError> {
    use crate::core::transition::{KeyTransition, TransitionKind};
    let service = &identity.service;
    let refuse = |why: String| LogError::KeyTransition(why);
    let Some(head) = writer::read_head(conn, service)? else {
        return Ok(None);
    };
    let current = trust
        .admit_author(service, &head.genesis_cert)
        .map_err(|e| refuse(format!("the feed's current certificate: {e}")))?;
    if current.public_key == identity.cert.public_key {
        return Ok(None);
    }
    let Some(authorization) = &identity.transition else {
        return Err(LogError::KeyChanged);
    };
    let stored = checkpoints::read_checkpoint(conn, service)?
        .filter(|c| c.size == head.seq + 1)
        .ok_or_else(|| {
            refuse(format!(
                "no checkpoint by the old key covers the feed's {} events",
                head.seq + 1
            ))
        })?;
    let transition = KeyTransition {
        kind: authorization.kind,
        new_cert: identity.cert.der.clone(),
        authorization: authorization.signature,
        final_checkpoint: checkpoints::author_only(signer.cluster(), &stored)?.into_bytes(),
    };
    let ca_keys = crate::core::cert::AuthorAdmission::ca_keys(trust);
    let authorized = ed25519_dalek::VerifyingKey::from_bytes(&current.public_key)
        .is_ok_and(|old| transition.is_authorized(service, &old, &ca_keys));
    if !authorized {
        return Err(refuse(format!(
            "the {} authorization next to the certificate does not verify under {} (was the key rotated twice before the node switched?)",
            transition.kind.name(),
            match transition.kind {
                TransitionKind::Rotation =>
                    format!("the feed's current key {}", hex::encode(current.public_key)),
                TransitionKind::Recovery => "any CA of the bundle".to_string(),
            }
        )));
    }
    if transition.kind == TransitionKind::Rotation && current.revoked_from.is_some() {
        return Err(refuse(
            "the feed's current certificate is revoked: a revoked key cannot hand the feed on; recover with `herald keygen recover` (the CA authorizes it)".into(),
        ));
    }
    let old_key = sealer.signing_key().clone();
    let mark = sealer.mark();
    let now_us = clock::now_us();
    let id = writer::new_entropy(now_us).id;
    let event = sealer.transition_key(
        identity.signing_key.clone(),
        transition.encode(),
        id,
        now_us,
    );
    let new_signer = crate::core::checkpoint::CheckpointSigner::new(
        signer.cluster().to_string(),
        service.clone(),
        identity.signing_key.clone(),
    );
    if let Err(e) = writer::commit_own(conn, std::slice::from_ref(&event), trees, &new_signer) {
        sealer.restore(mark);
        sealer.restore_key(old_key);
        return Err(e);
    }
    *signer = new_signer;
    tracing::info!(
        service = %service,
        kind = transition.kind.name(),
        seq = event.header().seq,
        new_key = %hex::encode(identity.cert.public_key),
        serial = %identity.cert.serial_hex(),
        "appended a key transition: this node's feed continues under the new key"
    );
    Ok(Some(event))
}

/// Renewal: when this node starts (or reloads, see [`Log::reload`]) with
/// a certificate for its feed's key that is not the feed's current one and
/// lasts longer (it was renewed with `herald keygen renew`) or is issued by
/// another CA (a CA rollover), appends a certificate renewal event so every
/// verifier checks later events against the new certificate. Returns the
/// event appended, if any. `trees` are the caller's cached Merkle trees
/// (the commit extends the feed's).
pub(crate) fn renew_own_certificate(
    conn: &mut Connection,
    identity: &NodeIdentity,
    trust: &TrustAnchor,
    sealer: &mut Sealer,
    signer: &crate::core::checkpoint::CheckpointSigner,
    trees: &mut checkpoints::Trees,
) -> Result<Option<VerifiedEvent>, LogError> {
    // The feed's current certificate (the column keeps its historical name).
    let current = writer::read_head(conn, &identity.service)?.map(|h| h.genesis_cert);
    if current.as_deref() == Some(identity.cert.der.as_slice()) {
        return Ok(None);
    }
    // A certificate from another CA (a CA rollover) is recorded even if it
    // ends sooner: once the old CA is retired, the feed's later events are
    // checked against it.
    let issuer = |der: &[u8]| {
        crate::identity::trust::parse_cert(der)
            .map(|c| c.tbs_certificate.issuer.as_raw().to_vec())
            .ok()
    };
    let moves_ca = current.as_deref().and_then(issuer) != issuer(&identity.cert.der);
    let current_not_after_us = current
        .and_then(|der| trust.admit_author(&identity.service, &der).ok())
        .map(|c| c.not_after_us)
        .unwrap_or(0);
    if identity.cert.not_after_us <= current_not_after_us && !moves_ca {
        tracing::warn!(
            service = %identity.service,
            "the configured certificate ends no later than the feed's current one; not renewing the feed's certificate"
        );
        return Ok(None);
    }
    let now_us = clock::now_us();
    let id = writer::new_entropy(now_us).id;
    let event = sealer.renew_certificate(&identity.cert.der, id, now_us);
    writer::commit_own(conn, std::slice::from_ref(&event), trees, signer)?;
    tracing::info!(
        service = %identity.service,
        serial = %identity.cert.serial_hex(),
        not_after = %clock::format_timestamp(identity.cert.not_after_us),
        seq = event.header().seq,
        "appended a certificate renewal to this node's feed"
    );
    Ok(Some(event))
}

/// Whether another process holds the store's lock (a running node, or a
/// `publish` in progress). Tools use it to choose between the node's client
/// endpoint and the store itself.
pub fn is_locked(data_dir: &Path) -> bool {
    let path = data_dir.join(LOCK_FILE);
    let Ok(file) = File::options().read(true).write(true).open(&path) else {
        return false;
    };
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(_) => true,
    }
}
