//! Streams a peer opens on a connection: the replication stream (handed to
//! the replication loop) and one stream per synchronous query.

use std::sync::Arc;
use std::time::Duration;

use super::Inner;
use super::peer::StreamOpen;
use crate::clock;
use crate::core::query::QueryRequest;
use crate::net;

/// Queries one peer may have in progress at once; more wait (QUIC's own
/// stream limit bounds the backlog).
pub const QUERIES_IN_PROGRESS_PER_PEER_MAX: usize = 16;
/// How long the opener of a stream has to send its first frame.
pub const STREAM_OPEN_TIMEOUT_MS: u64 = 5_000;

type ReplicationStreams = tokio::sync::oneshot::Sender<(quinn::SendStream, quinn::RecvStream)>;

/// Accepts the peer's streams until the connection ends.
pub(crate) async fn accept_streams(
    inner: Arc<Inner>,
    conn: quinn::Connection,
    peer: String,
    mut replication: Option<ReplicationStreams>,
) {
    let limit = Arc::new(tokio::sync::Semaphore::new(
        QUERIES_IN_PROGRESS_PER_PEER_MAX,
    ));
    while let Ok((send, mut recv)) = conn.accept_bi().await {
        let open = tokio::time::timeout(
            Duration::from_millis(STREAM_OPEN_TIMEOUT_MS),
            net::read_frame::<StreamOpen>(&mut recv),
        )
        .await;
        match open {
            Ok(Ok(Some(StreamOpen::Replication))) => match replication.take() {
                Some(tx) => {
                    let _ = tx.send((send, recv));
                }
                None => {
                    tracing::warn!(peer, "peer opened a second replication stream");
                    conn.close(
                        crate::core::wire::close::PROTOCOL_VIOLATION.into(),
                        b"second replication stream",
                    );
                    return;
                }
            },
            Ok(Ok(Some(StreamOpen::Query(request)))) => {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let inner = inner.clone();
                let peer = peer.clone();
                tokio::spawn(async move {
                    answer_query(&inner, &peer, request, send).await;
                    drop(permit);
                });
            }
            Ok(Err(e)) => {
                tracing::warn!(peer, error = %e, "malformed stream opening; disconnecting");
                conn.close(net::close_code(&e).into(), e.to_string().as_bytes());
                return;
            }
            Ok(Ok(None)) | Err(_) => {
                // The opener went away or said nothing: drop the stream.
            }
        }
    }
}

/// Answers one query from `peer`, signed by this node.
async fn answer_query(
    inner: &Inner,
    peer: &str,
    request: QueryRequest,
    mut send: quinn::SendStream,
) {
    if request.caller != peer || request.target != inner.service {
        tracing::warn!(peer, "query names another caller or target; refusing");
        let _ = send.reset(crate::core::wire::close::UNAUTHORIZED.into());
        return;
    }
    let registry = inner.queries.read().await;
    let answer = registry
        .answer(&request, &inner.service, &inner.signing_key, clock::now_us)
        .await;
    drop(registry);
    if let Err(e) = net::write_frame(&mut send, &answer).await {
        tracing::debug!(peer, error = %e, "could not send a query answer");
    }
    let _ = send.finish();
}
