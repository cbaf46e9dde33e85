//! The client endpoint: command-line tools talk to a running node over QUIC
//! with mutual TLS (ALPN `herald-client/1`), one bidirectional stream per
//! request: the client sends one [`ClientRequest`] frame, the node answers
//! with one or more [`ClientResponse`] frames and finishes the stream.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Inner, status_of};
use crate::config::NodeConfig;
use crate::core::query::QueryOutcome;
use crate::core::verify::Draft;
use crate::core::wire::ALPN_CLIENT;
use crate::identity::TrustAnchor;
use crate::net::{self, NetError, TlsIdentity};
use crate::store::{Pending, Receipt};

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
}

/// Serves one client connection until it closes.
pub(crate) async fn serve(inner: Arc<Inner>, conn: quinn::Connection) {
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
            if let Err(e) = handle(&inner, request, &mut send).await {
                let _ = net::write_frame(&mut send, &ClientResponse::Error(e)).await;
            }
            let _ = send.finish();
        });
    }
}

async fn handle(
    inner: &Arc<Inner>,
    request: ClientRequest,
    send: &mut quinn::SendStream,
) -> Result<(), String> {
    match request {
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
