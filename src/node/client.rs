//! The client endpoint: command-line tools talk to a running node over QUIC
//! with mutual TLS (ALPN `herald-client/1`), one bidirectional stream per
//! request: the client sends one [`ClientRequest`] frame, the node answers
//! with one or more [`ClientResponse`] frames and finishes the stream.
//!
//! One request streams in both directions: after
//! [`ClientRequest::PublishStream`] the client sends [`PublishBatch`] frames
//! on the same stream until it finishes it, and the node answers each batch
//! with its receipts as the batch becomes durable (`herald publish
//! --ndjson`).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Inner, status_of};
use crate::config::NodeConfig;
use crate::core::query::QueryOutcome;
use crate::core::verify::Draft;
use crate::core::verify::DraftError;
use crate::core::wire::ALPN_CLIENT;
use crate::identity::TrustAnchor;
use crate::net::{self, NetError, TlsIdentity};
use crate::store::{Log, Pending, Proclamation, Receipt};

/// Most events one `Publish` request may ask for.
pub const CLIENT_PUBLISH_COUNT_MAX: u64 = 10_000_000;
/// Events per batch when a client publishes many.
pub const CLIENT_PUBLISH_BATCH_EVENTS: usize = 256;
/// Batches a client publish keeps in flight.
pub const CLIENT_PUBLISH_BATCHES_IN_FLIGHT: usize = 4;
/// How long a tool waits to reach its node.
pub const CLIENT_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// How long a tool, when done, waits for the packet that closes its
/// connection to leave (see [`NodeClient::finish`]). The node frees the
/// tool's client slot when the close arrives; without it the slot stays
/// taken until the idle timeout (5 s). The close goes out on the connection
/// driver's next turn, well within a millisecond; the bound only matters if
/// the socket cannot send.
pub const CLIENT_CLOSE_WAIT_MS: u64 = 500;
/// How often [`NodeClient::finish`] checks whether the close was sent.
pub const CLIENT_CLOSE_POLL_MS: u64 = 1;
/// Bytes the node may send on one of a tool's streams before the tool has
/// read them (QUIC stream flow control, set by the tool). This is what stops
/// a node from running ahead of a `publish` client that died without closing
/// (SIGKILL): it proclaims only as far as receipts fit here plus the batches
/// already in flight, then waits until the connection times out. 64 KiB holds
/// about five batches of receipts (a receipt is 51 to 59 bytes on the wire),
/// enough to keep receipts flowing on any link a tool uses to reach its node.
pub const CLIENT_STREAM_RECEIVE_WINDOW_BYTES: u32 = 64 * 1024;

/// Most events in one [`PublishBatch`] of a streamed publish. The node
/// refuses a larger batch (nothing of it is written).
pub const CLIENT_STREAM_BATCH_EVENTS_MAX: usize = 256;
/// A tool closes a [`PublishBatch`] before its events'
/// [`WireDraft::weight_bytes`] pass this (a batch always takes its first
/// event). With one event of the largest size alone in its batch, every
/// batch fits in a frame ([`FRAME_BYTES_MAX`](crate::core::wire::FRAME_BYTES_MAX)).
pub const CLIENT_STREAM_BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Batches of one streamed publish the node keeps in flight (handed to the
/// store's writer, receipts not yet sent). It reads the client's next batch
/// only below this, so QUIC flow control holds back a producer that runs
/// ahead of the disk.
pub const CLIENT_STREAM_BATCHES_IN_FLIGHT: usize = 4;
/// Bytes a [`WireDraft`]'s encoding may take beyond its strings and
/// payload: length prefixes (at most 5 bytes each), the schema version, the
/// channel's option tag. [`WireDraft::weight_bytes`] adds this, plus
/// [`WIRE_META_ENTRY_OVERHEAD_BYTES`] per metadata entry.
pub const WIRE_DRAFT_OVERHEAD_BYTES: usize = 32;
/// Length prefixes of one metadata entry's key and value.
pub const WIRE_META_ENTRY_OVERHEAD_BYTES: usize = 10;

/// What a tool asks of its node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientRequest {
    Status,
    Publish {
        event_type: String,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        meta: Vec<(String, String)>,
        channel: Option<String>,
        count: u64,
    },
    Query {
        target: String,
        query_type: String,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        correlation_id: String,
        timeout_ms: u32,
    },
    /// Start a saga this node orchestrates (definition as TOML, input as JSON).
    StartSaga {
        definition: String,
        input: String,
    },
    /// Publish events streamed by the client: [`PublishBatch`] frames follow
    /// on the same stream until the client finishes it. The node answers
    /// each batch with one `Receipts` frame once it is durable, in order,
    /// and stops at the first event it refuses (`Rejected`), after the
    /// receipts of every event before it.
    PublishStream,
    /// Reread the CA file, revocation list, the node's certificate and key,
    /// and the channel keyrings, and install them all or nothing (what
    /// SIGHUP does). Only the node's own certificate may ask; the node
    /// answers `Reloaded` or `Error` (nothing changed).
    Reload,
}

/// One event of a streamed publish, as the tool sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireDraft {
    pub event_type: String,
    pub schema_version: u32,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub meta: Vec<(String, String)>,
    /// The channel whose key encrypts the payload (`None`: the node's default).
    pub channel: Option<String>,
}

/// A batch of a streamed publish: at most [`CLIENT_STREAM_BATCH_EVENTS_MAX`]
/// events, proclaimed in order as one batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishBatch {
    pub events: Vec<WireDraft>,
}

/// Why an event of a streamed publish cannot be proclaimed, and the field
/// of the event at fault (`type`, `meta`, `data`, `channel`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftRejection {
    pub field: &'static str,
    pub message: String,
}

impl WireDraft {
    /// An upper bound of this event's encoded size in a [`PublishBatch`].
    pub fn weight_bytes(&self) -> usize {
        let meta: usize = self
            .meta
            .iter()
            .map(|(k, v)| k.len() + v.len() + WIRE_META_ENTRY_OVERHEAD_BYTES)
            .sum();
        self.payload.len()
            + self.event_type.len()
            + self.channel.as_ref().map_or(0, String::len)
            + meta
            + WIRE_DRAFT_OVERHEAD_BYTES
    }

    /// Validates the event as the node does (type, metadata, payload size;
    /// not the channel, which only the node resolves) without consuming it.
    pub fn check(&self) -> Result<(), DraftRejection> {
        self.clone().into_draft().map(|_| ())
    }

    /// Validates the event into a draft (the channel is not resolved).
    pub fn into_draft(self) -> Result<Draft, DraftRejection> {
        Draft::new(
            &self.event_type,
            self.schema_version,
            self.meta,
            self.payload,
        )
        .map_err(|e| DraftRejection {
            field: draft_field(&e),
            message: e.to_string(),
        })
    }

    /// Validates the event and resolves its channel in `log`.
    pub fn into_proclamation(self, log: &Log) -> Result<Proclamation, DraftRejection> {
        let channel = self.channel.clone();
        let draft = self.into_draft()?;
        let key = log
            .channel(channel.as_deref())
            .map_err(|e| DraftRejection {
                field: "channel",
                message: e.to_string(),
            })?;
        Ok((draft, key))
    }
}

/// The event field a draft error is about.
fn draft_field(e: &DraftError) -> &'static str {
    match e {
        DraftError::EventType(_) | DraftError::ReservedType(_) => "type",
        DraftError::Meta(_) => "meta",
        DraftError::PayloadTooLarge { .. } => "data",
    }
}

/// A receipt on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireReceipt {
    pub id: [u8; 16],
    pub seq: u64,
    pub hash: [u8; 32],
}

impl From<&Receipt> for WireReceipt {
    fn from(r: &Receipt) -> Self {
        WireReceipt {
            id: *r.id.as_bytes(),
            seq: r.seq,
            hash: r.hash,
        }
    }
}

impl From<WireReceipt> for Receipt {
    fn from(r: WireReceipt) -> Self {
        Receipt {
            id: uuid::Uuid::from_bytes(r.id),
            seq: r.seq,
            hash: r.hash,
        }
    }
}

/// The node's answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientResponse {
    /// The node status as JSON (the shape `herald status --json` prints).
    Status(String),
    /// Durable receipts, in order; several frames for a large publish.
    Receipts(Vec<WireReceipt>),
    Query(QueryOutcome),
    /// The id of a saga whose start is durable.
    SagaStarted(String),
    /// The request failed; nothing (more) was done.
    Error(String),
    /// A streamed publish stopped at an event the node refuses: `event` is
    /// its index among the events of the stream (from 0), `field` the field
    /// at fault. Every event before it is durable and was receipted; nothing
    /// from it on was proclaimed.
    Rejected {
        event: u64,
        field: String,
        message: String,
    },
    /// A reload succeeded: what it installed, as JSON (the shape `herald
    /// reload --json` prints).
    Reloaded(String),
}

/// Serves one client connection (whose certificate has `role`) until it
/// closes.
pub(crate) async fn serve(inner: Arc<Inner>, conn: quinn::Connection, role: net::Role) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let request = match net::read_frame::<ClientRequest>(&mut recv).await {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    let _ =
                        net::write_frame(&mut send, &ClientResponse::Error(e.to_string())).await;
                    return;
                }
            };
            if let Err(e) = handle(&inner, role, request, &mut send, recv).await {
                let _ = net::write_frame(&mut send, &ClientResponse::Error(e)).await;
            }
            let _ = send.finish();
        });
    }
}

async fn handle(
    inner: &Arc<Inner>,
    role: net::Role,
    request: ClientRequest,
    send: &mut quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<(), String> {
    match request {
        ClientRequest::Reload => {
            // Changing what the node trusts is the operator's: the node's
            // own certificate (which `herald reload` presents), not a
            // client certificate issued for a tool.
            if role != net::Role::Node {
                return Err(format!(
                    "only the node's own certificate may ask {} to reload; a client certificate may not",
                    inner.service
                ));
            }
            let report = super::reload::reload(inner)
                .await
                .map_err(|e| e.to_string())?;
            let json = serde_json::to_string(&report).map_err(|e| e.to_string())?;
            net::write_frame(send, &ClientResponse::Reloaded(json))
                .await
                .map_err(|e| e.to_string())
        }
        ClientRequest::PublishStream => publish_stream(inner, send, recv).await,
        ClientRequest::Status => {
            let status = status_of(inner).await;
            let json = serde_json::to_string(&status).map_err(|e| e.to_string())?;
            net::write_frame(send, &ClientResponse::Status(json))
                .await
                .map_err(|e| e.to_string())
        }
        ClientRequest::Query {
            target,
            query_type,
            payload,
            correlation_id,
            timeout_ms,
        } => {
            let outcome = super::query_peer(
                inner,
                &target,
                &query_type,
                payload,
                &correlation_id,
                Duration::from_millis(timeout_ms as u64),
            )
            .await;
            net::write_frame(send, &ClientResponse::Query(outcome))
                .await
                .map_err(|e| e.to_string())
        }
        ClientRequest::StartSaga { definition, input } => {
            let definition =
                crate::saga::SagaDefinition::from_toml(&definition).map_err(|e| e.to_string())?;
            let input: serde_json::Value =
                serde_json::from_str(&input).map_err(|e| format!("saga input is not JSON: {e}"))?;
            let id = inner
                .orchestrator
                .start(definition, input, &inner.service)
                .await
                .map_err(|e| e.to_string())?;
            net::write_frame(send, &ClientResponse::SagaStarted(id.to_string()))
                .await
                .map_err(|e| e.to_string())
        }
        ClientRequest::Publish {
            event_type,
            payload,
            meta,
            channel,
            count,
        } => {
            publish(
                inner,
                &event_type,
                payload,
                meta,
                channel.as_deref(),
                count,
                send,
            )
            .await
        }
    }
}

async fn publish(
    inner: &Arc<Inner>,
    event_type: &str,
    payload: Vec<u8>,
    meta: Vec<(String, String)>,
    channel: Option<&str>,
    count: u64,
    send: &mut quinn::SendStream,
) -> Result<(), String> {
    if count == 0 || count > CLIENT_PUBLISH_COUNT_MAX {
        return Err(format!(
            "count must be 1 to {CLIENT_PUBLISH_COUNT_MAX}, found {count}"
        ));
    }
    let draft = Draft::new(event_type, 1, meta, payload).map_err(|e| e.to_string())?;
    let key = inner.log.channel(channel).map_err(|e| e.to_string())?;
    let mut in_flight: VecDeque<Pending> = VecDeque::new();
    let mut remaining = count;
    let mut delivered: u64 = 0;
    // Why the client can no longer receive receipts, once it cannot.
    let mut gone: Option<String> = None;
    while (remaining > 0 && gone.is_none()) || !in_flight.is_empty() {
        // Proclaim on the client's behalf only while it can still hear the
        // receipts: a client that stopped reading the stream or closed its
        // connection (Ctrl-C, a killed script) gets no more batches.
        while gone.is_none() && remaining > 0 && in_flight.len() < CLIENT_PUBLISH_BATCHES_IN_FLIGHT
        {
            if let Some(reason) = client_gone(send).await {
                gone = Some(reason);
                break;
            }
            let n = remaining.min(CLIENT_PUBLISH_BATCH_EVENTS as u64);
            let drafts = (0..n).map(|_| (draft.clone(), key.clone())).collect();
            in_flight.push_back(inner.log.submit(drafts).map_err(|e| e.to_string())?);
            remaining -= n;
        }
        let Some(pending) = in_flight.pop_front() else {
            break;
        };
        // Batches already submitted become durable whatever happens to the
        // client (a submitted batch cannot be withdrawn); wait for each so
        // the stop below is logged with the final count.
        let receipts = tokio::task::spawn_blocking(move || pending.wait())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if gone.is_some() {
            continue;
        }
        let wire: Vec<WireReceipt> = receipts.iter().map(WireReceipt::from).collect();
        let n = wire.len() as u64;
        // A write blocks while the client's stream window is full (it is not
        // reading); it fails once the connection is closed or timed out.
        match net::write_frame(send, &ClientResponse::Receipts(wire)).await {
            Ok(()) => delivered += n,
            Err(e) => gone = Some(e.to_string()),
        }
    }
    if let Some(reason) = gone {
        let proclaimed = count - remaining;
        tracing::info!(
            requested = count,
            proclaimed,
            undelivered = proclaimed - delivered,
            %reason,
            "publish client went away; stopped proclaiming for it"
        );
        return Err(format!("the client went away: {reason}"));
    }
    Ok(())
}

/// Why the client can no longer receive on `send`, if it cannot: it stopped
/// the stream, or its connection closed (close frame or idle timeout).
/// Never waits.
async fn client_gone(send: &quinn::SendStream) -> Option<String> {
    tokio::select! {
        biased;
        stopped = send.stopped() => Some(match stopped {
            Ok(Some(code)) => format!("the client stopped the stream (code {code})"),
            Ok(None) => "the client read the stream to its end".to_string(),
            Err(e) => format!("connection lost: {e}"),
        }),
        () = std::future::ready(()) => None,
    }
}

/// What ends a streamed publish besides the client finishing its stream.
enum StreamStop {
    /// An event the node refuses, answered with `Rejected` once every
    /// event before it is durable and receipted.
    Rejected {
        event: u64,
        field: String,
        message: String,
    },
    /// The client can no longer be answered (it stopped the stream, closed
    /// the connection, or a frame it sent does not decode).
    Gone(String),
}

/// Serves a [`ClientRequest::PublishStream`]: reads [`PublishBatch`]
/// frames, proclaims each in order (at most
/// [`CLIENT_STREAM_BATCHES_IN_FLIGHT`] batches in flight) and answers each
/// with its receipts as it becomes durable.
async fn publish_stream(
    inner: &Arc<Inner>,
    send: &mut quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<(), String> {
    // Frames are read by their own task: `read_frame` is not cancel-safe,
    // so it cannot race the in-flight batches in a `select!`. One batch
    // waits in the channel, one in the reader's hands; beyond that the
    // client's writes wait on flow control.
    let (frames_tx, mut frames) = tokio::sync::mpsc::channel::<Result<PublishBatch, NetError>>(1);
    let reader = tokio::spawn(read_batches(recv, frames_tx));
    let mut in_flight: VecDeque<
        tokio::task::JoinHandle<Result<Vec<Receipt>, crate::store::LogError>>,
    > = VecDeque::new();
    // Events accepted so far (the index of the next one).
    let mut accepted: u64 = 0;
    let mut delivered: u64 = 0;
    let mut ended = false;
    let mut stop: Option<StreamStop> = None;
    let mut failure: Option<String> = None;
    loop {
        let reading = !ended && stop.is_none() && failure.is_none();
        if !reading && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            done = oldest(&mut in_flight), if !in_flight.is_empty() => {
                in_flight.pop_front();
                let receipts = match done {
                    Ok(Ok(receipts)) => receipts,
                    Ok(Err(e)) => {
                        failure.get_or_insert(e.to_string());
                        continue;
                    }
                    Err(e) => {
                        failure.get_or_insert(format!("waiting for a batch: {e}"));
                        continue;
                    }
                };
                if failure.is_some() || matches!(stop, Some(StreamStop::Gone(_))) {
                    continue;
                }
                let wire: Vec<WireReceipt> = receipts.iter().map(WireReceipt::from).collect();
                let n = wire.len() as u64;
                // Blocks while the client's stream window is full (it is
                // not reading); fails once its connection is gone.
                match net::write_frame(send, &ClientResponse::Receipts(wire)).await {
                    Ok(()) => delivered += n,
                    Err(e) => stop = Some(StreamStop::Gone(e.to_string())),
                }
            }
            frame = frames.recv(), if reading && in_flight.len() < CLIENT_STREAM_BATCHES_IN_FLIGHT => {
                let batch = match frame {
                    None => {
                        ended = true;
                        continue;
                    }
                    Some(Err(e)) => {
                        stop = Some(StreamStop::Gone(e.to_string()));
                        continue;
                    }
                    Some(Ok(batch)) => batch,
                };
                let (proclamations, refused) = accept_batch(&inner.log, batch, accepted);
                if !proclamations.is_empty() {
                    accepted += proclamations.len() as u64;
                    match inner.log.submit(proclamations) {
                        Ok(pending) => in_flight
                            .push_back(tokio::task::spawn_blocking(move || pending.wait())),
                        Err(e) => {
                            failure = Some(e.to_string());
                            continue;
                        }
                    }
                }
                if let Some(refused) = refused {
                    stop = Some(refused);
                }
            }
        }
    }
    reader.abort();
    if let Some(e) = failure {
        // The client says what this means for it (receipts it printed).
        return Err(e);
    }
    match stop {
        None => Ok(()),
        Some(StreamStop::Rejected {
            event,
            field,
            message,
        }) => net::write_frame(
            send,
            &ClientResponse::Rejected {
                event,
                field,
                message,
            },
        )
        .await
        .map_err(|e| e.to_string()),
        Some(StreamStop::Gone(reason)) => {
            tracing::info!(
                proclaimed = accepted,
                undelivered = accepted - delivered,
                %reason,
                "streaming publish client went away; stopped proclaiming for it"
            );
            Err(format!("the client went away: {reason}"))
        }
    }
}

/// Reads a streamed publish's batches into `frames` until the client
/// finishes the stream, a frame fails, or nobody listens any more.
async fn read_batches(
    mut recv: quinn::RecvStream,
    frames: tokio::sync::mpsc::Sender<Result<PublishBatch, NetError>>,
) {
    loop {
        let frame = match net::read_frame::<PublishBatch>(&mut recv).await {
            Ok(Some(batch)) => Ok(batch),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let failed = frame.is_err();
        if frames.send(frame).await.is_err() || failed {
            return;
        }
    }
}

/// The proclamations of a batch up to its first refused event, and the
/// refusal (`first` is the stream index of the batch's first event).
fn accept_batch(
    log: &Log,
    batch: PublishBatch,
    first: u64,
) -> (Vec<Proclamation>, Option<StreamStop>) {
    if batch.events.len() > CLIENT_STREAM_BATCH_EVENTS_MAX {
        let refused = StreamStop::Rejected {
            event: first,
            field: "events".into(),
            message: format!(
                "a batch holds {} events, over the limit of {CLIENT_STREAM_BATCH_EVENTS_MAX}",
                batch.events.len()
            ),
        };
        return (Vec::new(), Some(refused));
    }
    let mut out = Vec::with_capacity(batch.events.len());
    for (i, event) in batch.events.into_iter().enumerate() {
        match event.into_proclamation(log) {
            Ok(p) => out.push(p),
            Err(e) => {
                let refused = StreamStop::Rejected {
                    event: first + i as u64,
                    field: e.field.into(),
                    message: e.message,
                };
                return (out, Some(refused));
            }
        }
    }
    (out, None)
}

/// The oldest in-flight batch's outcome (never resolves when none is).
async fn oldest<T>(
    in_flight: &mut VecDeque<tokio::task::JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match in_flight.front_mut() {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// A tool's connection to its node.
pub struct NodeClient {
    /// The endpoint's socket and driver serve `conn`; held for as long.
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

/// The transport a tool uses towards its node: the cluster's idle timeout
/// and keep-alives, no streams the node may open (the node only answers),
/// and a small stream window (see [`CLIENT_STREAM_RECEIVE_WINDOW_BYTES`]).
fn client_transport() -> Result<Arc<quinn::TransportConfig>, NetError> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(0))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        .stream_receive_window(quinn::VarInt::from_u32(CLIENT_STREAM_RECEIVE_WINDOW_BYTES))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(net::IDLE_TIMEOUT)
                .map_err(|e| NetError::Config(format!("client idle timeout: {e}")))?,
        ))
        .keep_alive_interval(Some(net::KEEP_ALIVE_INTERVAL));
    Ok(Arc::new(t))
}

impl NodeClient {
    /// Connects to the node a config describes, as that node's own identity
    /// (its certificate allows client authentication).
    pub async fn connect(config: &NodeConfig) -> Result<NodeClient, NetError> {
        let trust = Arc::new(TrustAnchor::load(&config.ca, config.revoked.as_deref())?);
        NodeClient::connect_with(config, trust).await
    }

    /// [`NodeClient::connect`] checking the node's certificate against the
    /// CA alone, without the revocation list: `herald reload` asks the node
    /// to read that list, so a list that does not parse must reach the
    /// node (which refuses it, naming the file) rather than stop the tool.
    pub async fn connect_without_revocations(config: &NodeConfig) -> Result<NodeClient, NetError> {
        let trust = Arc::new(TrustAnchor::load(&config.ca, None)?);
        NodeClient::connect_with(config, trust).await
    }

    async fn connect_with(
        config: &NodeConfig,
        trust: Arc<TrustAnchor>,
    ) -> Result<NodeClient, NetError> {
        let tls = TlsIdentity::from_files(&config.cert, &config.key, trust)?;
        let bind: SocketAddr = if config.listen.is_ipv6() {
            "[::]:0"
                .parse()
                .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
        } else {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
        };
        let endpoint = net::bind_client(bind)?;
        let target = if config.listen.ip().is_unspecified() {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), config.listen.port())
        } else {
            config.listen
        };
        let mut client_config = net::client_config(&tls, ALPN_CLIENT)?;
        client_config.transport_config(client_transport()?);
        let connect = async {
            endpoint
                .connect_with(client_config, target, &config.service)
                .map_err(|source| NetError::Connect {
                    addr: target,
                    server_name: config.service.clone(),
                    source,
                })?
                .await
                .map_err(|source| NetError::Handshake {
                    addr: target,
                    server_name: config.service.clone(),
                    source,
                })
        };
        let conn = tokio::time::timeout(Duration::from_millis(CLIENT_CONNECT_TIMEOUT_MS), connect)
            .await
            .map_err(|_| NetError::Timeout {
                what: format!("reaching node {} at {target}", config.service),
                after: Duration::from_millis(CLIENT_CONNECT_TIMEOUT_MS),
            })??;
        Ok(NodeClient {
            _endpoint: endpoint,
            conn,
        })
    }

    /// Opens a stream and sends `request` without finishing the stream, for
    /// a request the client goes on sending frames for
    /// ([`ClientRequest::PublishStream`]).
    pub async fn open_stream(
        &self,
        request: &ClientRequest,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), NetError> {
        let (mut send, recv) = self.conn.open_bi().await?;
        net::write_frame(&mut send, request).await?;
        Ok((send, recv))
    }

    /// Sends one request; calls `on_response` for each answer frame.
    pub async fn request(
        &self,
        request: &ClientRequest,
        mut on_response: impl FnMut(ClientResponse) -> Result<(), String>,
    ) -> Result<(), NetError> {
        let (mut send, mut recv) = self.conn.open_bi().await?;
        net::write_frame(&mut send, request).await?;
        let _ = send.finish();
        while let Some(response) = net::read_frame::<ClientResponse>(&mut recv).await? {
            on_response(response).map_err(NetError::Remote)?;
        }
        Ok(())
    }

    /// Sends a request answered by one frame; `pick` takes the value out of
    /// the answer it expects (`None`: any other answer, an error naming
    /// `what`). An `Error` frame from the node is returned as its message.
    pub async fn request_one<T>(
        &self,
        request: &ClientRequest,
        what: &str,
        pick: impl Fn(ClientResponse) -> Option<T>,
    ) -> Result<T, NetError> {
        let mut answer = None;
        self.request(request, |response| match response {
            ClientResponse::Error(e) => Err(e),
            other => {
                answer = Some(pick(other).ok_or_else(|| format!("unexpected answer to {what}"))?);
                Ok(())
            }
        })
        .await?;
        answer.ok_or_else(|| NetError::Remote(format!("the node sent no answer to {what}")))
    }

    /// Closes the connection politely without waiting: the close reaches the
    /// node only if the runtime keeps running (use [`NodeClient::finish`]
    /// when the process is about to exit).
    pub fn close(&self) {
        self.conn
            .close(crate::core::wire::close::SHUTDOWN.into(), b"done");
    }

    /// Closes the connection and waits (at most [`CLIENT_CLOSE_WAIT_MS`])
    /// until the close has been handed to the socket, so the node frees this
    /// tool's client slot at once instead of after its idle timeout. Every
    /// tool calls this before it exits, whether its request succeeded or not.
    ///
    /// Not `Endpoint::wait_idle`: that also waits out QUIC's draining period
    /// (three probe timeouts, about 100 ms even on loopback), which would make
    /// every CLI call that much slower for nothing the node needs.
    pub async fn finish(self) {
        self.close();
        // After `close` the connection sends nothing but the close, so the
        // next datagram counted is the close. The driver holds the
        // connection's lock from building a packet until the socket took
        // it, so once the count moves the packet has left this process.
        let sent_before = self.conn.stats().udp_tx.datagrams;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(CLIENT_CLOSE_WAIT_MS);
        // (On a multi-threaded runtime the driver may send the close between
        // `close` and the first count; then this waits out the bound, which
        // is slower but never exits before the close was sent.)
        while self.conn.stats().udp_tx.datagrams == sent_before {
            if tokio::time::Instant::now() >= deadline {
                tracing::debug!(
                    after_ms = CLIENT_CLOSE_WAIT_MS,
                    "the close of the connection to the node was not sent in time; exiting anyway"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(CLIENT_CLOSE_POLL_MS)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::limits::{
        CHANNEL_NAME_BYTES_MAX, EVENT_TYPE_BYTES_MAX, META_ENTRIES_MAX, META_KEY_BYTES_MAX,
        META_VALUE_BYTES_MAX, PAYLOAD_PLAINTEXT_BYTES_MAX,
    };
    use crate::core::wire::FRAME_BYTES_MAX;

    fn largest() -> WireDraft {
        WireDraft {
            event_type: "t".repeat(EVENT_TYPE_BYTES_MAX),
            schema_version: u32::MAX,
            payload: vec![0xff; PAYLOAD_PLAINTEXT_BYTES_MAX],
            meta: (0..META_ENTRIES_MAX)
                .map(|i| {
                    let key = format!("{i:0>width$}", width = META_KEY_BYTES_MAX);
                    (key, "v".repeat(META_VALUE_BYTES_MAX))
                })
                .collect(),
            channel: Some("c".repeat(CHANNEL_NAME_BYTES_MAX)),
        }
    }

    #[test]
    fn the_weight_bounds_the_encoding_and_every_batch_fits_a_frame() {
        let big = largest();
        big.check().expect("the largest event herald accepts");
        let one = postcard::to_allocvec(&PublishBatch {
            events: vec![big.clone()],
        })
        .unwrap();
        assert!(
            one.len() <= big.weight_bytes(),
            "{} > {}",
            one.len(),
            big.weight_bytes()
        );
        assert!(
            one.len() <= FRAME_BYTES_MAX,
            "the largest event alone fits a frame"
        );

        // A batch at the byte bound (small events up to it) fits too.
        let small = WireDraft {
            event_type: "t".into(),
            schema_version: 1,
            payload: vec![b'x'; 4000],
            meta: vec![("k".into(), "v".into())],
            channel: None,
        };
        let n = CLIENT_STREAM_BATCH_BYTES_MAX / small.weight_bytes();
        let batch = PublishBatch {
            events: vec![small.clone(); n],
        };
        let encoded = postcard::to_allocvec(&batch).unwrap();
        assert!(encoded.len() <= n * small.weight_bytes() + 5);
        assert!(encoded.len() <= FRAME_BYTES_MAX);
    }

    #[test]
    fn drafts_are_refused_naming_the_field() {
        let mut d = largest();
        d.event_type = "herald.x".into();
        assert_eq!(d.check().unwrap_err().field, "type");
        let mut d = largest();
        d.meta.push(("k".into(), "v".into()));
        assert_eq!(d.check().unwrap_err().field, "meta");
        let mut d = largest();
        d.payload.push(0);
        let e = d.check().unwrap_err();
        assert_eq!(e.field, "data");
        assert!(e.message.contains("over the limit"), "{}", e.message);
    }
}
