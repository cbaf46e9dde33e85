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
    while remaining > 0 || !in_flight.is_empty() {
        while remaining > 0 && in_flight.len() < CLIENT_PUBLISH_BATCHES_IN_FLIGHT {
            let n = remaining.min(CLIENT_PUBLISH_BATCH_EVENTS as u64);
            let drafts = (0..n).map(|_| (draft.clone(), key.clone())).collect();
            in_flight.push_back(inner.log.submit(drafts).map_err(|e| e.to_string())?);
            remaining -= n;
        }
        if let Some(pending) = in_flight.pop_front() {
            let receipts = tokio::task::spawn_blocking(move || pending.wait())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let wire = receipts.iter().map(WireReceipt::from).collect();
            net::write_frame(send, &ClientResponse::Receipts(wire))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// A tool's connection to its node.
pub struct NodeClient {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
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
        let connect = net::connect(&endpoint, target, &config.service, ALPN_CLIENT, &tls);
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

    /// Closes the connection politely.
    pub fn close(&self) {
        self.conn
            .close(crate::core::wire::close::SHUTDOWN.into(), b"done");
    }
}
