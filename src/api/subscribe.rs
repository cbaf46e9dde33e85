//! `GET /v1/stream`: events as Server-Sent Events, live.
//!
//! Each event is one SSE message whose `id` is its position in the node's
//! arrival order and whose `data` is the event's JSON (one line). A stream
//! opens with an `id:`-only block naming where it starts, and sends another
//! whenever it has looked past events it did not want, so a client's last
//! event id is always a position it has seen everything up to. Reconnecting
//! with `Last-Event-ID` (as every `EventSource` does) or `after=` resumes
//! right after it: nothing is lost and nothing repeated.
//!
//! One task per stream reads batches of events from the store
//! ([`Follower`]: pages of rows, not a query per event), encodes a whole
//! batch into one body chunk off the runtime while the next batch is read
//! (at most one ahead, so the two overlap on two cores), and hands it to the connection
//! through a small queue ([`STREAM_BUFFER_BATCHES`]), so a slow client holds
//! the reader back instead of filling memory. Idle, it waits on the log's
//! change notification and sends a keep-alive comment every
//! [`STREAM_KEEPALIVE_MS`].

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::auth::{Access, ReadFilter};
use super::errors::{ApiError, code};
use super::events::{EventEncoder, resolve_start, type_patterns};
use super::input::{Params, Start, start_of};
use super::server::ApiState;
use super::{STREAM_BUFFER_BATCHES, STREAM_KEEPALIVE_MS, STREAMS_MAX};
use crate::store::{Follower, StartFrom, StoredEvent};

/// `GET /v1/stream?type=PATTERN&after=P|from=start|now|TIME`.
pub async fn stream(
    State(state): State<ApiState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = Params::parse(query.as_deref())?;
    let patterns = type_patterns(&mut params)?;
    let start = start_of(&headers, &mut params, None)?.unwrap_or(Start::From(StartFrom::Start));
    params.finish()?;
    let reader = access.reader(&*state.log()?)?;
    open(state, patterns, start, reader).await
}

/// Opens a stream of the events matching `patterns` from `start`, leaving
/// out those `reader` does not allow (their positions still advance the
/// stream's `id`, so a resuming client does not look at them again).
pub async fn open(
    state: ApiState,
    patterns: Vec<String>,
    start: Start,
    reader: ReadFilter,
) -> Result<Response, ApiError> {
    let permit = Arc::clone(&state.streams)
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                code::TOO_MANY_STREAMS,
                format!(
                    "{STREAMS_MAX} streams are open, the most this node serves; retry when one ends"
                ),
            )
        })?;
    let log = state.log()?;
    let encoder = EventEncoder::new(&log);
    let follower = tokio::task::spawn_blocking(move || {
        let after = resolve_start(&log, start)?;
        log.follow(patterns, after)
    })
    .await
    .map_err(|e| ApiError::task("opening a stream", e))??;
    let (chunks, receiver) = mpsc::channel::<Bytes>(STREAM_BUFFER_BATCHES);
    tokio::spawn(produce(state, encoder, reader, follower, chunks, permit));
    let body = Body::from_stream(futures_util::stream::unfold(receiver, |mut r| async move {
        r.recv().await.map(|chunk| (Ok::<_, Infallible>(chunk), r))
    }));
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies (nginx) would otherwise hold events back in their buffers.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Reads, encodes and sends until the client goes away, the node shuts
/// down or the store fails (sent as an `error` event). The permit is the
/// stream's place among [`STREAMS_MAX`]; dropped with the task.
async fn produce(
    state: ApiState,
    encoder: EventEncoder,
    reader: ReadFilter,
    follower: Follower,
    chunks: mpsc::Sender<Bytes>,
    _permit: OwnedSemaphorePermit,
) {
    let mut shutdown = state.shutdown.clone();
    // The position the client's last event id stands for.
    let mut announced = follower.position();
    let start = Bytes::from(format!("id: {announced}\n\n"));
    if !send(&chunks, start, &mut shutdown).await {
        return;
    }
    // The follower, while no read-ahead holds it.
    let mut follower = Some(follower);
    // The next batch, read while the one before it is encoded and sent:
    // reading and encoding each take a large part of a stream's time, so on
    // two cores they overlap. At most one batch is read ahead.
    let mut ahead: Option<ReadAhead> = None;
    loop {
        if state.stopping() {
            return;
        }
        let outcome = match (ahead.take(), follower.take()) {
            (Some(task), _) => joined(task.await),
            (None, Some(f)) => {
                let reader = reader.clone();
                joined(tokio::task::spawn_blocking(move || read_batch(f, reader)).await)
            }
            (None, None) => return,
        };
        let (f, batch, position) = match outcome {
            Ok(read) => read,
            Err(e) => {
                send(&chunks, error_event(&e), &mut shutdown).await;
                return;
            }
        };
        if !batch.is_empty() {
            let reader = reader.clone();
            ahead = Some(tokio::task::spawn_blocking(move || read_batch(f, reader)));
            let encoder = encoder.clone();
            let encoded =
                tokio::task::spawn_blocking(move || encode_batch(&encoder, &batch, position)).await;
            let chunk = match encoded {
                Ok(chunk) => chunk.unwrap_or_default(),
                Err(e) => {
                    let e = ApiError::task("encoding a stream", e);
                    send(&chunks, error_event(&e), &mut shutdown).await;
                    return;
                }
            };
            announced = position;
            if !send(&chunks, chunk, &mut shutdown).await {
                return;
            }
            continue;
        }
        let f = follower.insert(f);
        if position > announced {
            // Looked past events it did not want: say so, so a resuming
            // client does not look at them again.
            announced = position;
            if !send(
                &chunks,
                Bytes::from(format!("id: {position}\n\n")),
                &mut shutdown,
            )
            .await
            {
                return;
            }
            continue;
        }
        tokio::select! {
            more = f.wait(Duration::from_millis(STREAM_KEEPALIVE_MS)) => {
                let keep_alive = Bytes::from_static(b": keep-alive\n\n");
                if !more && !send(&chunks, keep_alive, &mut shutdown).await {
                    return;
                }
            }
            () = chunks.closed() => return,
            _ = shutdown.changed() => return,
        }
    }
}

/// Hands `chunk` to the connection, waiting while its queue is full (a
/// slow client); `false` once the client is gone or the node shuts down.
async fn send(
    chunks: &mpsc::Sender<Bytes>,
    chunk: Bytes,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        sent = chunks.send(chunk) => sent.is_ok(),
        _ = shutdown.changed() => false,
    }
}

/// A batch read ahead on the blocking pool.
type ReadAhead = tokio::task::JoinHandle<Result<BatchRead, ApiError>>;
/// The follower back, the batch's events the client may read, and the
/// position the follower reached.
type BatchRead = (Follower, Vec<StoredEvent>, u64);

/// The next batch (blocking: run on the blocking pool). The follower comes
/// back with it.
fn read_batch(mut follower: Follower, reader: ReadFilter) -> Result<BatchRead, ApiError> {
    let mut batch = follower.next_batch()?;
    batch.retain(|e| reader.allows(e));
    let position = follower.position();
    Ok((follower, batch, position))
}

fn joined(
    outcome: Result<Result<BatchRead, ApiError>, tokio::task::JoinError>,
) -> Result<BatchRead, ApiError> {
    outcome.map_err(|e| ApiError::task("reading a stream", e))?
}

/// SSE messages for `batch`, then an `id:`-only block if the follower
/// looked further than its last event.
fn encode_batch(encoder: &EventEncoder, batch: &[StoredEvent], position: u64) -> Option<Bytes> {
    let last = batch.last()?.arrival;
    let mut out = String::with_capacity(batch.len() * 512);
    encoder.encode_each(batch, |arrival, json| {
        // Writing to a String cannot fail.
        let _ = write!(out, "id: {arrival}\ndata: {json}\n\n");
    });
    if position > last {
        let _ = write!(out, "id: {position}\n\n");
    }
    Some(Bytes::from(out))
}

/// An `error` event carrying the error JSON; the stream ends after it.
fn error_event(e: &ApiError) -> Bytes {
    Bytes::from(format!("event: error\ndata: {}\n\n", e.to_json()))
}
