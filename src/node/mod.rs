//! A running peer (`herald node`): the durable log, QUIC endpoint with mutual
//! TLS, one replication session per configured peer, synchronous queries,
//! subscriptions and the client endpoint for command-line tools.
//!
//! Connections: of each configured pair, the node whose service name sorts
//! first dials and the other accepts, so every pair keeps one connection.
//! A lost connection is redialled with exponential backoff
//! ([`RECONNECT_BACKOFF_MIN_MS`] to [`RECONNECT_BACKOFF_MAX_MS`]).

pub mod client;
pub mod expiry;
pub mod metrics;
pub mod peer;
pub mod query;
pub mod reload;
mod streams;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use tokio::sync::{RwLock, watch};
use tokio::task::JoinHandle;

use crate::clock;
use crate::config::NodeConfig;
use crate::core::query::{
    QueryOutcome, QueryRequest, QueryStatus, SignedQueryResult, verify_result,
};
use crate::core::wire::{ALPN_CLIENT, ALPN_PEER, close};
use crate::net::{self, Role, TlsIdentity};
use crate::store::{Committed, FeedHead, Log, LogError, LogOptions, Receipt, Tx, TxError, stopped};
use query::QueryRegistry;

/// First wait before redialling a peer.
pub const RECONNECT_BACKOFF_MIN_MS: u64 = 100;
/// Longest wait between redials.
pub const RECONNECT_BACKOFF_MAX_MS: u64 = 5_000;
/// How long shutdown waits for connections to close politely.
pub const SHUTDOWN_GRACE_MS: u64 = 2_000;
/// Client connections served at once. A tool frees its slot when it closes
/// its connection (every `herald` command does before it exits), so a script
/// calling the CLI in a loop holds one slot at a time; a client beyond the
/// limit waits up to [`CLIENT_SLOT_WAIT_MS`] for a slot before it is refused.
pub const CLIENT_CONNECTIONS_MAX: usize = 64;
/// How long a client connection waits for a free slot when all
/// [`CLIENT_CONNECTIONS_MAX`] are taken (a burst of parallel tools, or tools
/// killed without closing, whose slots free at the idle timeout) before it is
/// closed with "too many clients". Below the tools' own patience, so they see
/// the refusal rather than a hang.
pub const CLIENT_SLOT_WAIT_MS: u64 = 2_000;
/// Live replication connections per peer identity. Every configured pair
/// keeps one connection, so a newer connection from the same peer replaces
/// the older one (closed at once): a restarted peer reconnects without
/// waiting for its old connection to time out, and a certified peer opening
/// many connections holds only one.
pub const PEER_CONNECTIONS_PER_IDENTITY_MAX: usize = 1;

// Every stream a peer may use at once must fit QUIC's stream limit: the
// replication stream and the queries in progress.
const _: () =
    assert!(net::MAX_CONCURRENT_BIDI_STREAMS as usize > streams::QUERIES_IN_PROGRESS_PER_PEER_MAX);

/// Errors starting or running a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error("{0}")]
    Task(String),
    #[error(transparent)]
    Api(#[from] crate::api::ApiStartError),
}

/// What `herald status` shows about one peer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerState {
    pub name: String,
    pub address: String,
    pub connected: bool,
    /// Events this node holds that the peer has not acknowledged.
    pub backlog: u64,
    /// Reconnection attempts and retransmissions.
    pub retries: u64,
    pub last_error: Option<String>,
    /// When the peer last acknowledged new events (microseconds since epoch).
    pub last_ack_at_us: Option<u64>,
}

/// A node's status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeStatus {
    pub service: String,
    pub running: bool,
    pub peers: Vec<PeerState>,
    pub feeds: Vec<FeedHead>,
    /// `false` while a background task reports a problem (see `problems`).
    #[serde(default = "default_true")]
    pub healthy: bool,
    /// What fails in the node's background tasks (subscriptions, sagas,
    /// recovery of its own feed), and whether it is retried or fatal.
    #[serde(default)]
    pub problems: Vec<crate::store::Problem>,
    /// `true` while the node recovers its own feed from peers and does not
    /// proclaim yet.
    #[serde(default)]
    pub recovering: bool,
    /// Each feed's latest checkpoint this node holds and who cosigned it.
    #[serde(default)]
    pub checkpoints: Vec<CheckpointStatus>,
    /// Outbox tables in services' databases this node relays.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox_sources: Vec<crate::outbox::DbLinkStatus>,
    /// Inbox tables in services' databases this node writes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inbox_sinks: Vec<crate::outbox::DbLinkStatus>,
    /// When this node's certificate expires, and a warning from
    /// [`expiry::CERT_EXPIRY_WARNING_DAYS`] before.
    #[serde(default)]
    pub certificate: Option<expiry::CertificateExpiry>,
    /// The same for the cluster CA's certificate.
    #[serde(default)]
    pub ca: Option<expiry::CertificateExpiry>,
    /// The key this node's feed is under now, and where its key
    /// transitions stand (`herald keygen rotate` / `recover`).
    #[serde(default)]
    pub feed_key: Option<FeedKeyStatus>,
}

/// The key of this node's feed as `herald status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedKeyStatus {
    /// The Ed25519 public key, hex.
    pub public_key: String,
    /// Sequence numbers of the feed's key transitions, in order.
    pub transitions: Vec<u64>,
}

/// A feed's latest checkpoint as `herald status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointStatus {
    pub feed: String,
    /// Events the checkpoint covers.
    pub size: u64,
    /// Its root, hex.
    pub root: String,
    /// Other nodes whose cosignatures it carries (checked when merged).
    pub cosigners: Vec<String>,
}

impl CheckpointStatus {
    /// The status of every checkpoint `log` holds.
    pub fn of(log: &Log) -> Vec<CheckpointStatus> {
        CheckpointStatus::from_stored(log.cluster(), &log.latest_checkpoints())
    }

    /// The status of stored checkpoints of cluster `cluster`.
    pub fn from_stored(
        cluster: &str,
        stored: &[Arc<crate::store::StoredCheckpoint>],
    ) -> Vec<CheckpointStatus> {
        stored
            .iter()
            .map(|c| CheckpointStatus {
                feed: c.feed.clone(),
                size: c.size,
                root: hex::encode(c.root),
                cosigners: c.cosigners(cluster),
            })
            .collect()
    }
}

fn default_true() -> bool {
    true
}

/// State shared by the node's tasks.
pub(crate) struct Inner {
    pub service: String,
    pub log: Arc<Log>,
    pub signing_key: SigningKey,
    /// The node's TLS identity and trust anchor as of now (a reload
    /// replaces them; see `node/reload.rs`).
    pub tls: net::LiveTls,
    /// The config the node started with: where a reload rereads the CA,
    /// revocation list, certificate, key and channel keyrings.
    pub config: NodeConfig,
    /// One reload at a time.
    pub reload_lock: tokio::sync::Mutex<()>,
    /// Why a peer connection was closed for an untrusted certificate, by
    /// the connection's `stable_id`, so the peer's status shows it.
    pub closed_untrusted: Mutex<BTreeMap<usize, String>>,
    pub endpoint: quinn::Endpoint,
    pub peers: Mutex<BTreeMap<String, PeerState>>,
    /// Live peer connections and the peer's key (to verify query answers).
    pub connections: Mutex<BTreeMap<String, (quinn::Connection, VerifyingKey)>>,
    pub queries: RwLock<QueryRegistry>,
    pub shutdown: watch::Receiver<bool>,
    /// Per peer, the head of this node's own feed its `Hello` reported
    /// (`None`: it holds none). Drives recovery of a lost store.
    pub own_feed_reported: Mutex<BTreeMap<String, Option<u64>>>,
    /// Drives the sagas this node starts.
    pub orchestrator: crate::saga::orchestrator::Orchestrator,
    /// Saga command handlers of this node (participant side).
    pub command_handlers: crate::saga::participant::Handlers,
    /// Status of the outbox relays and inbox sinks.
    pub db_links: crate::outbox::Links,
    /// Replication counters for `/metrics` (see `node/metrics.rs`).
    pub metrics: metrics::NodeMetrics,
}

/// A running node.
pub struct Node {
    inner: Arc<Inner>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Where the HTTP API listens, if the config has one.
    api_addr: Option<std::net::SocketAddr>,
}

impl Node {
    /// Opens the log, binds the endpoint, and starts replicating with the
    /// configured peers. Must be called inside a tokio runtime.
    pub async fn start(config: &NodeConfig) -> Result<Node, NodeError> {
        // [api] access control: refuse a bad API config before the store
        // is opened, so a refused start leaves nothing running or locked.
        if let Some(api) = &config.api {
            api.check().map_err(crate::api::ApiStartError::Config)?;
        }
        let mut options = LogOptions::from_config(config)?;
        // Every node asks its peers before proclaiming: if the store was
        // lost, or is an old copy, or lost its tail (the WAL), the feed
        // comes back from them before any new event, so it never forks.
        options.recover_own_feed = true;
        let signing_key = options.identity.signing_key.clone();
        let trust = Arc::new(options.trust.clone());
        let log = Arc::new(
            tokio::task::spawn_blocking(move || Log::open_with(options))
                .await
                .map_err(|e| NodeError::Task(e.to_string()))??,
        );
        let tls = TlsIdentity::from_files(&config.cert, &config.key, trust.clone())?;
        let endpoint = net::bind(config.listen, &tls)?;
        let mut registry = QueryRegistry::new();
        registry.register_builtins(log.clone());
        registry
            .register_config(&config.query_handlers)
            .map_err(|e| NodeError::Task(format!("query handler in config: {e}")))?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let command_handlers = crate::saga::participant::Handlers::default();
        for h in &config.command_handlers {
            command_handlers.register(
                &h.command_type,
                crate::saga::participant::Handler::Exec(
                    h.command.clone(),
                    h.timeout_ms
                        .unwrap_or(crate::saga::participant::EXEC_TIMEOUT_MS_DEFAULT),
                ),
            );
        }
        let participant = crate::saga::participant::spawn(
            log.clone(),
            command_handlers.clone(),
            stopped(shutdown_rx.clone()),
        )?;
        let (orchestrator, saga_tasks) =
            crate::saga::orchestrator::Orchestrator::spawn(log.clone(), shutdown_rx.clone())?;
        let peers = config
            .peers
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    PeerState {
                        name: p.name.clone(),
                        address: p.address.to_string(),
                        ..PeerState::default()
                    },
                )
            })
            .collect();
        let (db_links, db_link_tasks) =
            crate::outbox::spawn(log.clone(), config, shutdown_rx.clone());
        let inner = Arc::new(Inner {
            service: config.service.clone(),
            log,
            signing_key,
            tls: net::LiveTls::new(tls),
            config: config.clone(),
            reload_lock: tokio::sync::Mutex::new(()),
            closed_untrusted: Mutex::new(BTreeMap::new()),
            endpoint,
            peers: Mutex::new(peers),
            connections: Mutex::new(BTreeMap::new()),
            queries: RwLock::new(registry),
            shutdown: shutdown_rx,
            own_feed_reported: Mutex::new(BTreeMap::new()),
            orchestrator,
            command_handlers,
            db_links,
            metrics: metrics::NodeMetrics::new(config.peers.iter().map(|p| p.name.as_str())),
        });
        let mut tasks = vec![tokio::spawn(accept_loop(inner.clone())), participant];
        tasks.extend(saga_tasks);
        tasks.extend(db_link_tasks);
        if inner.log.is_recovering() {
            tasks.push(tokio::spawn(recover_own_feed(inner.clone())));
        }
        for p in &config.peers {
            if config.service < p.name {
                tasks.push(tokio::spawn(dial_loop(
                    inner.clone(),
                    p.name.clone(),
                    p.address,
                )));
            }
        }
        // The HTTP API stops with the others on the shutdown signal.
        let mut api_addr = None;
        if let Some(api) = &config.api {
            let (addr, task) = crate::api::spawn(inner.clone(), api).await?;
            api_addr = Some(addr);
            tasks.push(task);
        }
        // Warn of an expiring certificate at start, then daily.
        tasks.push(tokio::spawn(warn_of_expiry(inner.clone())));
        // Drop peers whose certificate expires while they are connected.
        tasks.push(tokio::spawn(reload::recheck_peers(inner.clone())));
        tracing::info!(service = %config.service, listen = %config.listen, "node started");
        Ok(Node {
            inner,
            shutdown: shutdown_tx,
            tasks: Mutex::new(tasks),
            api_addr,
        })
    }

    /// Rereads the CA file, revocation list, this node's certificate and
    /// key, and the channel keyrings the config names, and installs them
    /// all or nothing; then closes peer connections whose certificate is no
    /// longer trusted (see `node/reload.rs`). On an error nothing changed.
    pub async fn reload(&self) -> Result<reload::ReloadReport, reload::ReloadError> {
        reload::reload(&self.inner).await
    }

    /// This node's service name.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The node's durable log.
    pub fn log(&self) -> &Arc<Log> {
        &self.inner.log
    }

    /// The TCP address the HTTP API listens on (`[api]` in the config).
    pub fn api_addr(&self) -> Option<std::net::SocketAddr> {
        self.api_addr
    }

    /// The UDP address the node listens on.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.endpoint.local_addr().ok()
    }

    /// Proclaims an event on the default channel; returns once it is durable.
    pub async fn proclaim(
        &self,
        event_type: &str,
        payload: &[u8],
        meta: Vec<(String, String)>,
    ) -> Result<Receipt, LogError> {
        let log = self.inner.log.clone();
        let (event_type, payload) = (event_type.to_string(), payload.to_vec());
        tokio::task::spawn_blocking(move || log.proclaim(&event_type, &payload, meta))
            .await
            .map_err(|_| LogError::WriterGone)?
    }

    /// Registers a Rust query handler for `query_type`.
    pub async fn register_query_handler(
        &self,
        query_type: &str,
        handler: query::QueryHandler,
    ) -> Result<(), crate::core::query::RegisterError> {
        self.inner
            .queries
            .write()
            .await
            .register(query_type, handler)
    }

    /// Asks `target` a synchronous question and waits at most `timeout`. The
    /// answer is signed by the responder and verified here; `Timeout` and
    /// `Unreachable` are decided locally.
    pub async fn query(
        &self,
        target: &str,
        query_type: &str,
        payload: Vec<u8>,
        correlation_id: &str,
        timeout: Duration,
    ) -> QueryOutcome {
        query_peer(
            &self.inner,
            target,
            query_type,
            payload,
            correlation_id,
            timeout,
        )
        .await
    }

    /// Runs `handler` for every event whose type matches `pattern`, under the
    /// durable consumer name `consumer`: at-least-once, in this node's arrival
    /// order, resuming after a restart (`StartFrom::Stored`) or replaying
    /// from the start or a point in time. A handler error redelivers the
    /// event after a backoff. The task ends when the node shuts down.
    pub fn subscribe<F>(
        &self,
        consumer: &str,
        pattern: &str,
        from: crate::store::StartFrom,
        handler: F,
    ) -> Result<JoinHandle<Result<(), LogError>>, LogError>
    where
        F: FnMut(&crate::store::StoredEvent) -> Result<(), String> + Send + 'static,
    {
        let subscription = self.inner.log.subscribe(consumer, pattern, from)?;
        let stop = stopped(self.inner.shutdown.clone());
        let task = tokio::spawn(crate::store::run_subscription(subscription, handler, stop));
        Ok(task)
    }

    /// Runs `work` as one atomic transaction: the application state it
    /// writes and the events it proclaims commit together or not at all
    /// (see [`Log::transact`]). This is the only way to change state.
    pub async fn transact<T, F>(&self, work: F) -> Result<Committed<T>, TxError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> Result<T, TxError> + Send + 'static,
    {
        let log = self.inner.log.clone();
        tokio::task::spawn_blocking(move || log.transact(work))
            .await
            .map_err(|e| TxError::Store(LogError::Commit(format!("transaction task: {e}"))))?
    }

    /// The committed value of `key` in application-state `table`.
    pub async fn get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>, TxError> {
        let log = self.inner.log.clone();
        let (table, key) = (table.to_string(), key.to_string());
        tokio::task::spawn_blocking(move || log.get(&table, &key))
            .await
            .map_err(|e| TxError::Store(LogError::Commit(format!("read task: {e}"))))?
    }

    /// An idempotent consumer (the inbox): like [`Node::subscribe`], but
    /// `handler` runs inside a transaction that also records the event as
    /// handled by `consumer`. Delivery is at-least-once; an event already
    /// recorded is skipped, so effects happen exactly once. A handler error
    /// rolls its transaction back and redelivers the event after a backoff.
    pub fn consume<F>(
        &self,
        consumer: &str,
        pattern: &str,
        from: crate::store::StartFrom,
        handler: F,
    ) -> Result<JoinHandle<Result<(), LogError>>, LogError>
    where
        F: Fn(&mut Tx<'_>, &crate::store::StoredEvent) -> Result<(), TxError>
            + Send
            + Sync
            + 'static,
    {
        let subscription = self.inner.log.subscribe(consumer, pattern, from)?;
        let handler = Arc::new(handler);
        let log = self.inner.log.clone();
        let name = consumer.to_string();
        let run_one = move |event: crate::store::StoredEvent| {
            let (log, handler, name) = (log.clone(), handler.clone(), name.clone());
            async move {
                let outcome = tokio::task::spawn_blocking(move || {
                    log.transact(move |tx| {
                        if !tx.mark_handled(&name, &event.header.id)? {
                            return Ok(());
                        }
                        handler(tx, &event)
                    })
                })
                .await;
                match outcome {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(format!("consumer task: {e}")),
                }
            }
        };
        let task = tokio::spawn(crate::store::run_subscription_async(
            subscription,
            run_one,
            stopped(self.inner.shutdown.clone()),
        ));
        Ok(task)
    }

    /// Starts a saga this node orchestrates; returns its id once the start
    /// (and the first command) is durable. See `docs/SAGAS.md`.
    pub async fn start_saga(
        &self,
        definition: crate::saga::SagaDefinition,
        input: serde_json::Value,
    ) -> Result<uuid::Uuid, crate::saga::SagaError> {
        self.inner
            .orchestrator
            .start(definition, input, &self.inner.service)
            .await
    }

    /// A saga this node orchestrates, as last stored.
    pub async fn saga(&self, id: uuid::Uuid) -> Result<crate::saga::Saga, crate::saga::SagaError> {
        let log = self.inner.log.clone();
        tokio::task::spawn_blocking(move || {
            crate::saga::orchestrator::load(&*log.reader()?, id)?
                .ok_or(crate::saga::SagaError::NotFound(id))
        })
        .await
        .map_err(|e| crate::saga::SagaError::Store(e.to_string()))?
    }

    /// Runs `handler` for saga commands of `command_type` addressed to this
    /// node: at most once each, inside the transaction that records the
    /// reply (so its state writes are exactly-once). `Ok(result)` completes
    /// the step, `Err(reason)` fails it. Keep it short: it runs on the
    /// writer thread. Replaces a handler from the config.
    pub fn on_command<F>(&self, command_type: &str, handler: F)
    where
        F: Fn(&mut Tx<'_>, &crate::saga::CommandPayload) -> Result<serde_json::Value, String>
            + Send
            + Sync
            + 'static,
    {
        self.inner.command_handlers.register(
            command_type,
            crate::saga::participant::Handler::Rust(Arc::new(handler)),
        );
    }

    /// The node's status: peers and feed heads.
    pub async fn status(&self) -> NodeStatus {
        status_of(&self.inner).await
    }

    /// Resolves with the reason when a background task met a fault it cannot
    /// recover from (a damaged store, a self-fork, the saga engine stopped):
    /// the node is unhealthy and its owner should stop it (`herald node`
    /// exits non-zero). Never resolves while the node is healthy.
    pub async fn failed(&self) -> String {
        let mut fatal = self.inner.log.health().fatal();
        match fatal.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    /// Stops the node: tells peers, lets in-flight commits finish, closes
    /// the log.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let tasks: Vec<JoinHandle<()>> = self
            .tasks
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_millis(SHUTDOWN_GRACE_MS), task).await;
        }
        self.inner
            .endpoint
            .close(close::SHUTDOWN.into(), b"node shutting down");
        let _ = tokio::time::timeout(
            Duration::from_millis(SHUTDOWN_GRACE_MS),
            self.inner.endpoint.wait_idle(),
        )
        .await;
        let service = self.inner.service.clone();
        // Subscription and consumer tasks stop on the shutdown signal but
        // may be finishing a handler: wait (bounded) until the last of them
        // lets go of the log, so its store lock is free when this returns
        // and the same store can be opened again at once.
        let log = Arc::downgrade(&self.inner.log);
        drop(self);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(SHUTDOWN_GRACE_MS);
        while log.strong_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::info!(%service, "node stopped");
    }
}

/// Logs the certificate expiry warnings (see [`expiry`]) now and every
/// [`expiry::EXPIRY_CHECK_INTERVAL_MS`] until shutdown.
async fn warn_of_expiry(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.clone();
    loop {
        let now_us = clock::now_us();
        let node = expiry::node_expiry(&inner.service, inner.log.cert_not_after_us(), now_us);
        let ca = expiry::ca_expiry(&inner.tls.trust(), now_us);
        let mut all = vec![&node];
        all.extend(ca.as_ref());
        expiry::log_warnings(&inner.service, &all);
        let wait = Duration::from_millis(expiry::EXPIRY_CHECK_INTERVAL_MS);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

pub(crate) async fn status_of(inner: &Inner) -> NodeStatus {
    let log = inner.log.clone();
    let feeds = tokio::task::spawn_blocking(move || log.heads())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let peers = inner
        .peers
        .lock()
        .map(|p| p.values().cloned().collect())
        .unwrap_or_default();
    let health = inner.log.health();
    let log = inner.log.clone();
    let last_arrival = tokio::task::spawn_blocking(move || {
        log.reader()
            .ok()
            .and_then(|conn| crate::store::last_arrival(&conn).ok())
    })
    .await
    .ok()
    .flatten();
    let (outbox_sources, inbox_sinks) = inner.db_links.snapshot(last_arrival);
    NodeStatus {
        service: inner.service.clone(),
        running: true,
        peers,
        feeds,
        healthy: health.is_healthy(),
        problems: health.problems(),
        recovering: inner.log.is_recovering(),
        checkpoints: CheckpointStatus::of(&inner.log),
        outbox_sources,
        inbox_sinks,
        certificate: Some(expiry::node_expiry(
            &inner.service,
            inner.log.cert_not_after_us(),
            clock::now_us(),
        )),
        ca: expiry::ca_expiry(&inner.tls.trust(), clock::now_us()),
        feed_key: Some(FeedKeyStatus {
            // The TLS identity moves with the feed (reload, start).
            public_key: hex::encode(inner.tls.identity().cert().public_key),
            transitions: inner
                .log
                .key_transitions(&inner.service)
                .iter()
                .map(|t| t.seq)
                .collect(),
        }),
    }
}

/// How often recovery checks whether every peer has answered.
pub const RECOVERY_POLL_MS: u64 = 50;
/// How often recovery says what it is waiting for.
pub const RECOVERY_REPORT_MS: u64 = 5_000;
/// After this long, recovery settles for the peers that answered (at least
/// one) instead of all of them, so one peer being down does not keep a
/// node from starting. Every peer replicates every feed, so any peer that
/// was up while this node proclaimed holds its feed.
pub const RECOVERY_ALL_PEERS_WAIT_MS: u64 = 5_000;
/// How long recovery waits for a peer that claims more of this node's feed
/// than this node holds to deliver it, counted from the last event that
/// arrived. A claim in a `Hello` is not proof: only received, verified
/// events are. A peer that claims more and delivers nothing for this long
/// is named (log and `herald status`), and proclamations fail with the
/// reason instead of waiting (recovery itself keeps waiting).
pub const RECOVERY_STALL_MS: u64 = 5_000;
/// How long recovery waits for any configured peer to answer before
/// proclamations fail with the reason (recovery itself keeps waiting: with
/// no peer answering, the node cannot tell whether its feed went further).
pub const RECOVERY_UNANSWERED_MS: u64 = 10_000;

/// What recovery of the own feed is waiting for, or that it may finish.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RecoveryGate {
    /// Every peer that answered holds no more of the own feed than the
    /// store: resume (or start) the feed.
    Ready,
    /// Waiting; the reason names the peers.
    Waiting(String),
}

/// Decides whether recovery may finish: `peers` are the configured peers,
/// `reported` what each that answered claimed as the head of this node's
/// feed (`None`: it holds none), `held` this store's head of it, `settle`
/// whether the wait for every peer has ended ([`RECOVERY_ALL_PEERS_WAIT_MS`]).
pub(crate) fn recovery_gate(
    peers: &[String],
    reported: &BTreeMap<String, Option<u64>>,
    held: Option<u64>,
    settle: bool,
) -> RecoveryGate {
    let missing: Vec<&str> = peers
        .iter()
        .filter(|p| !reported.contains_key(*p))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() && (reported.is_empty() || !settle) {
        return RecoveryGate::Waiting(format!(
            "waiting to hear from peers {} before proclaiming (they may hold more of this node's feed)",
            missing.join(", ")
        ));
    }
    let ahead: Vec<String> = reported
        .iter()
        .filter_map(|(peer, claim)| {
            let claim = (*claim)?;
            held.is_none_or(|h| claim > h)
                .then(|| format!("{peer} claims sequence {claim}"))
        })
        .collect();
    if ahead.is_empty() {
        return RecoveryGate::Ready;
    }
    RecoveryGate::Waiting(format!(
        "waiting for this node's own feed from its peers: {}; this store holds {}",
        ahead.join(", "),
        held.map_or("none of it".to_string(), |h| format!("up to sequence {h}"))
    ))
}

pub use crate::store::health::RECOVERY_TASK;

/// Before this node proclaims (whatever its store holds, since the store may
/// be an old copy or have lost its tail): hear from the configured peers
/// (all of them, or after [`RECOVERY_ALL_PEERS_WAIT_MS`] at least one), and
/// if any claims more of this node's feed than the store holds, wait until
/// those events have been received and verified, then resume the feed after
/// them. Claims are only a reason to wait: a peer that claims more and
/// delivers nothing for [`RECOVERY_STALL_MS`] (or no peer answering for
/// [`RECOVERY_UNANSWERED_MS`]) is reported by name in the log and in
/// `herald status`, and proclamations fail with that reason instead of
/// waiting; recovery keeps waiting, since starting the feed could fork it.
async fn recover_own_feed(inner: Arc<Inner>) {
    let peers: Vec<String> = inner
        .peers
        .lock()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    let health = inner.log.health().clone();
    let fatal = health.fatal();
    let mut shutdown = inner.shutdown.clone();
    let started = tokio::time::Instant::now();
    let mut last_report: Option<tokio::time::Instant> = None;
    let mut last_progress = tokio::time::Instant::now();
    let mut held_before: Option<u64> = None;
    let mut refusing = false;
    loop {
        if let Some(reason) = fatal.borrow().clone() {
            // A self-fork (or another fatal fault): never start the feed.
            let _ = inner.log.refuse_proclamations(Some(reason));
            return;
        }
        let reported = inner
            .own_feed_reported
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        // Off the runtime thread: without a cached copy, heads are a store read.
        let log = inner.log.clone();
        let service = inner.service.clone();
        let held = tokio::task::spawn_blocking(move || {
            log.heads()
                .ok()
                .and_then(|h| h.into_iter().find(|f| f.feed == service).map(|f| f.seq))
        })
        .await
        .ok()
        .flatten();
        if held != held_before {
            held_before = held;
            last_progress = tokio::time::Instant::now();
        }
        let settle = started.elapsed() >= Duration::from_millis(RECOVERY_ALL_PEERS_WAIT_MS);
        match recovery_gate(&peers, &reported, held, settle) {
            RecoveryGate::Ready => {
                let log = inner.log.clone();
                match tokio::task::spawn_blocking(move || log.finish_recovery()).await {
                    Ok(Ok(())) => {
                        health.cleared(RECOVERY_TASK);
                        tracing::info!(recovered_head = ?held, "own feed ready to proclaim");
                    }
                    Ok(Err(e)) => health.permanent(
                        RECOVERY_TASK,
                        &format!("cannot start this node's own feed: {e}"),
                    ),
                    Err(e) => health.permanent(RECOVERY_TASK, &format!("recovery task: {e}")),
                }
                return;
            }
            RecoveryGate::Waiting(reason) => {
                let answered = !reported.is_empty();
                let stuck = if answered {
                    settle && last_progress.elapsed() >= Duration::from_millis(RECOVERY_STALL_MS)
                } else {
                    started.elapsed() >= Duration::from_millis(RECOVERY_UNANSWERED_MS)
                };
                if stuck {
                    let waited = started.elapsed().as_millis();
                    let reason = format!("{reason} (for {waited} ms, no progress)");
                    health.transient(RECOVERY_TASK, &reason);
                    if !refusing {
                        tracing::error!(%reason, "own-feed recovery is stuck; refusing to proclaim until it ends");
                        refusing = inner.log.refuse_proclamations(Some(reason)).is_ok();
                    }
                } else if refusing {
                    // Progress again (events arrive, a peer reconnected):
                    // proclamations wait for recovery again.
                    refusing = inner.log.refuse_proclamations(None).is_err();
                    health.cleared(RECOVERY_TASK);
                }
                if last_report
                    .is_none_or(|t| t.elapsed() >= Duration::from_millis(RECOVERY_REPORT_MS))
                {
                    last_report = Some(tokio::time::Instant::now());
                    tracing::warn!(%reason, "own feed: recovering before proclaiming");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(RECOVERY_POLL_MS)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Handshakes in progress, in total and per source IP, bounded by
/// [`net::HANDSHAKES_IN_PROGRESS_MAX`] and
/// [`net::HANDSHAKES_IN_PROGRESS_PER_IP_MAX`].
#[derive(Default)]
struct Handshakes {
    total: usize,
    per_ip: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// One handshake's place in [`Handshakes`]; freed when dropped.
struct HandshakeSlot {
    handshakes: Arc<Mutex<Handshakes>>,
    ip: std::net::IpAddr,
}

impl HandshakeSlot {
    /// A slot for a handshake from `ip`, unless a limit is reached.
    fn take(handshakes: &Arc<Mutex<Handshakes>>, ip: std::net::IpAddr) -> Option<HandshakeSlot> {
        let mut h = handshakes.lock().unwrap_or_else(|p| p.into_inner());
        let from_ip = h.per_ip.get(&ip).copied().unwrap_or(0);
        if h.total >= net::HANDSHAKES_IN_PROGRESS_MAX
            || from_ip >= net::HANDSHAKES_IN_PROGRESS_PER_IP_MAX
        {
            return None;
        }
        h.total += 1;
        h.per_ip.insert(ip, from_ip + 1);
        Some(HandshakeSlot {
            handshakes: handshakes.clone(),
            ip,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut h = self.handshakes.lock().unwrap_or_else(|p| p.into_inner());
        h.total = h.total.saturating_sub(1);
        if let Some(n) = h.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                h.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections: configured peers replicate; clients get the client
/// protocol; anyone else is refused. At most
/// [`net::HANDSHAKES_IN_PROGRESS_MAX`] handshakes run at once (and
/// [`net::HANDSHAKES_IN_PROGRESS_PER_IP_MAX`] from one address); attempts
/// beyond that are refused before any per-connection state is built.
async fn accept_loop(inner: Arc<Inner>) {
    let clients = Arc::new(tokio::sync::Semaphore::new(CLIENT_CONNECTIONS_MAX));
    let handshakes = Arc::new(Mutex::new(Handshakes::default()));
    let mut shutdown = inner.shutdown.clone();
    loop {
        let incoming = tokio::select! {
            incoming = inner.endpoint.accept() => incoming,
            _ = shutdown.changed() => return,
        };
        let Some(incoming) = incoming else { return };
        let remote = incoming.remote_address();
        let Some(slot) = HandshakeSlot::take(&handshakes, remote.ip()) else {
            // Debug, not warn: a flood must not become a flood of log lines.
            tracing::debug!(%remote, "too many handshakes in progress; refusing a connection attempt");
            incoming.refuse();
            continue;
        };
        let inner = inner.clone();
        let clients = clients.clone();
        tokio::spawn(async move {
            let accepted = net::accept(incoming, &inner.tls.trust()).await;
            drop(slot);
            let (conn, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "refusing connection");
                    return;
                }
            };
            let alpn = net::negotiated_alpn(&conn);
            if alpn.as_deref() == Some(ALPN_CLIENT) {
                // A tool acts for this node (publishes into its feed, asks in
                // its name), so only a certificate naming this node may: the
                // node's own, or a client certificate issued for its name.
                if peer.service != inner.service {
                    tracing::warn!(client = %peer.service, "refusing a client certificate for another service");
                    conn.close(
                        close::UNAUTHORIZED.into(),
                        b"client certificate names another service",
                    );
                    return;
                }
                // A briefly full table makes the client wait, not fail; the
                // slot is held until `serve` returns (the connection closed).
                let wait = Duration::from_millis(CLIENT_SLOT_WAIT_MS);
                if clients.available_permits() == 0 {
                    tracing::warn!(
                        client = %peer.service,
                        wait_ms = CLIENT_SLOT_WAIT_MS,
                        "all {CLIENT_CONNECTIONS_MAX} client slots taken; the client waits for one"
                    );
                }
                let Ok(Ok(_permit)) = tokio::time::timeout(wait, clients.acquire_owned()).await
                else {
                    tracing::warn!(
                        client = %peer.service,
                        waited_ms = CLIENT_SLOT_WAIT_MS,
                        "refusing a client: all {CLIENT_CONNECTIONS_MAX} client slots stayed taken"
                    );
                    conn.close(close::UNAUTHORIZED.into(), b"too many clients");
                    return;
                };
                client::serve(inner, conn, peer.role).await;
                return;
            }
            let configured = inner
                .peers
                .lock()
                .map(|p| p.contains_key(&peer.service))
                .unwrap_or(false);
            if alpn.as_deref() != Some(ALPN_PEER) || peer.role != Role::Node || !configured {
                tracing::warn!(peer = %peer.service, "refusing an unconfigured or non-node peer");
                conn.close(close::UNAUTHORIZED.into(), b"not a configured peer");
                return;
            }
            serve_peer(inner, conn, peer.service, peer.cert.public_key, false).await;
        });
    }
}

/// Keeps a connection to `name` open, redialling with backoff.
async fn dial_loop(inner: Arc<Inner>, name: String, address: std::net::SocketAddr) {
    let mut backoff = RECONNECT_BACKOFF_MIN_MS;
    let mut shutdown = inner.shutdown.clone();
    loop {
        if *shutdown.borrow() {
            return;
        }
        // The identity as of this dial: a reload applies from the next one.
        let tls = inner.tls.identity();
        let attempt = net::connect(&inner.endpoint, address, &name, ALPN_PEER, &tls).await;
        match attempt {
            Ok(conn) => match net::authenticated_peer(&conn, tls.trust()) {
                Ok(peer) if peer.service == name => {
                    backoff = RECONNECT_BACKOFF_MIN_MS;
                    serve_peer(
                        inner.clone(),
                        conn,
                        name.clone(),
                        peer.cert.public_key,
                        true,
                    )
                    .await;
                }
                Ok(peer) => {
                    conn.close(close::UNAUTHORIZED.into(), b"unexpected peer");
                    record_error(
                        &inner,
                        &name,
                        format!("dialled {name} but {} answered", peer.service),
                    );
                }
                Err(e) => record_error(&inner, &name, e.to_string()),
            },
            Err(e) => record_error(&inner, &name, e.to_string()),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(backoff)) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX_MS);
    }
}

fn record_error(inner: &Inner, peer: &str, error: String) {
    tracing::debug!(peer, %error, "peer connection failed");
    peer::update_status(inner, peer, |s| {
        s.connected = false;
        s.retries += 1;
        s.last_error = Some(error);
    });
}

/// Runs one authenticated peer connection to its end.
async fn serve_peer(
    inner: Arc<Inner>,
    conn: quinn::Connection,
    name: String,
    public_key: [u8; 32],
    dialer: bool,
) {
    let Ok(key) = VerifyingKey::from_bytes(&public_key) else {
        conn.close(close::UNAUTHORIZED.into(), b"bad key");
        return;
    };
    // One live connection per peer identity: the newest wins (the map holds
    // one per name, hence the assertion). The replaced one's session ends
    // and, no longer current, leaves the peer's status alone.
    const _: () = assert!(PEER_CONNECTIONS_PER_IDENTITY_MAX == 1);
    let replaced = match inner.connections.lock() {
        Ok(mut c) => c.insert(name.clone(), (conn.clone(), key)),
        Err(_) => None,
    };
    if let Some((old, _)) = replaced
        && old.stable_id() != conn.stable_id()
    {
        tracing::info!(peer = %name, "a newer connection from the peer replaces the older one");
        old.close(
            close::SHUTDOWN.into(),
            b"replaced by a newer connection from the same peer",
        );
    }
    peer::update_status(&inner, &name, |s| {
        s.connected = true;
        s.last_error = None;
    });
    tracing::info!(peer = %name, "peer connected");
    let error = peer::run_connection(inner.clone(), conn.clone(), name.clone(), dialer).await;
    // Only the current connection may mark the peer down: a stale one (a
    // peer that restarted and reconnected before the old connection timed
    // out) ending must not hide the live one.
    let current = match inner.connections.lock() {
        Ok(mut c) => {
            let current = c
                .get(&name)
                .is_some_and(|(existing, _)| existing.stable_id() == conn.stable_id());
            if current {
                c.remove(&name);
            }
            current
        }
        Err(_) => false,
    };
    let shutting_down = matches!(error, peer::PeerError::Shutdown);
    // Closed by a reload or the periodic check: say why.
    let untrusted = inner
        .closed_untrusted
        .lock()
        .ok()
        .and_then(|mut why| why.remove(&conn.stable_id()));
    let reason = untrusted.unwrap_or_else(|| error.to_string());
    tracing::info!(peer = %name, %reason, "peer disconnected");
    if current {
        peer::update_status(&inner, &name, |s| {
            s.connected = false;
            if !shutting_down {
                s.last_error = Some(reason);
            }
        });
    }
}

/// Sends a query to `target` (or answers it here if it is this node).
pub(crate) async fn query_peer(
    inner: &Inner,
    target: &str,
    query_type: &str,
    payload: Vec<u8>,
    correlation_id: &str,
    timeout: Duration,
) -> QueryOutcome {
    let timeout_ms = timeout
        .as_millis()
        .min(crate::core::query::QUERY_TIMEOUT_MS_MAX as u128) as u32;
    let request = QueryRequest {
        id: *uuid::Uuid::now_v7().as_bytes(),
        caller: inner.service.clone(),
        target: target.to_string(),
        query_type: query_type.to_string(),
        correlation_id: correlation_id.to_string(),
        payload,
        timeout_ms,
    };
    let local = |status: QueryStatus, reason: &str| QueryOutcome {
        status,
        payload: reason.as_bytes().to_vec(),
        responder: target.to_string(),
        correlation_id: correlation_id.to_string(),
        request_id: request.id,
        timestamp_us: clock::now_us(),
        signed_by_responder: false,
    };
    if let Err(e) = crate::core::query::validate_request(&request) {
        return local(QueryStatus::Error, &e.to_string());
    }
    let (signed, key) = if target == inner.service {
        let registry = inner.queries.read().await;
        let answer = tokio::time::timeout(
            timeout,
            registry.answer(&request, &inner.service, &inner.signing_key, clock::now_us),
        )
        .await;
        match answer {
            Ok(a) => (a, inner.signing_key.verifying_key()),
            Err(_) => return local(QueryStatus::Timeout, "no answer before the deadline"),
        }
    } else {
        let connection = inner
            .connections
            .lock()
            .ok()
            .and_then(|c| c.get(target).cloned());
        let Some((conn, key)) = connection else {
            return local(QueryStatus::Unreachable, "no connection to the target");
        };
        match tokio::time::timeout(timeout, ask(&conn, &request)).await {
            Ok(Ok(signed)) => (signed, key),
            Ok(Err(e)) => return local(QueryStatus::Unreachable, &e.to_string()),
            Err(_) => return local(QueryStatus::Timeout, "no answer before the deadline"),
        }
    };
    match verify_result(&signed, &key, &request) {
        Ok(body) => QueryOutcome {
            status: body.status,
            payload: body.payload,
            responder: body.responder,
            correlation_id: body.correlation_id,
            request_id: body.request_id,
            timestamp_us: body.timestamp_us,
            signed_by_responder: true,
        },
        Err(e) => local(
            QueryStatus::Error,
            &format!("answer failed verification: {e}"),
        ),
    }
}

async fn ask(
    conn: &quinn::Connection,
    request: &QueryRequest,
) -> Result<SignedQueryResult, net::NetError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    net::write_frame(&mut send, &peer::StreamOpen::Query(request.clone())).await?;
    let _ = send.finish();
    net::read_frame::<SignedQueryResult>(&mut recv)
        .await?
        .ok_or(net::NetError::StreamEnded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(list: &[(&str, Option<u64>)]) -> BTreeMap<String, Option<u64>> {
        list.iter().map(|(p, c)| (p.to_string(), *c)).collect()
    }

    #[test]
    fn recovery_waits_for_claims_until_events_prove_them() {
        let peers = vec!["b".to_string(), "c".to_string()];
        // Nobody answered: wait, naming them, settled or not.
        for settle in [false, true] {
            match recovery_gate(&peers, &claims(&[]), Some(3), settle) {
                RecoveryGate::Waiting(r) => assert!(r.contains("b, c"), "{r}"),
                other => panic!("{other:?}"),
            }
        }
        // One answered: wait for the other until the wait settles.
        let one = claims(&[("b", Some(3))]);
        assert!(matches!(
            recovery_gate(&peers, &one, Some(3), false),
            RecoveryGate::Waiting(_)
        ));
        assert_eq!(
            recovery_gate(&peers, &one, Some(3), true),
            RecoveryGate::Ready
        );
        // A claim beyond what the store holds is waited for, by name.
        let ahead = claims(&[("b", Some(3)), ("c", Some(1_000_003))]);
        match recovery_gate(&peers, &ahead, Some(3), true) {
            RecoveryGate::Waiting(r) => {
                assert!(
                    r.contains("c claims sequence 1000003") && !r.contains("b claims"),
                    "{r}"
                )
            }
            other => panic!("{other:?}"),
        }
        match recovery_gate(&peers, &ahead, None, true) {
            RecoveryGate::Waiting(r) => assert!(r.contains("none of it"), "{r}"),
            other => panic!("{other:?}"),
        }
        // Once the events arrived (the store holds the claim), go on.
        assert_eq!(
            recovery_gate(&peers, &ahead, Some(1_000_003), false),
            RecoveryGate::Ready
        );
        // Peers that hold none of the feed (or less) never hold it back.
        let behind = claims(&[("b", None), ("c", Some(1))]);
        assert_eq!(
            recovery_gate(&peers, &behind, Some(4), false),
            RecoveryGate::Ready
        );
        assert_eq!(
            recovery_gate(&peers, &claims(&[("b", None), ("c", None)]), None, false),
            RecoveryGate::Ready,
            "a new feed when no peer holds any of it"
        );
        // No peers configured: nothing to wait for.
        assert_eq!(
            recovery_gate(&[], &claims(&[]), None, false),
            RecoveryGate::Ready
        );
    }
}
