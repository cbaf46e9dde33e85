//! Durable consumers: a named position the node keeps, acknowledged by the
//! client, at-least-once (NATS JetStream durable pull consumers, Kafka
//! consumer groups).
//!
//! * `PUT /v1/consumers/{name}` `{"types": [...], "from": "start"}` creates
//!   the consumer (or repositions it, with `from` or `after`).
//! * `GET /v1/consumers/{name}/events?max=N` pulls events after the acked
//!   position (or after `after=`, the client's own fetch position while it
//!   runs), waiting up to `wait_ms` for one to arrive.
//! * `POST /v1/consumers/{name}/ack` `{"position": P}` records that
//!   everything up to P is handled; durable when answered. A client that
//!   restarts pulls from there again: events after its last ack are
//!   delivered again (at-least-once), none before it.
//! * `GET /v1/consumers/{name}/stream` streams (SSE) from the acked
//!   position, or from `Last-Event-ID` when reconnecting.
//!
//! Consumers live in the store's `consumer_cursors` table (the same cursors
//! Rust subscriptions use) under the prefix [`CONSUMER_PREFIX`](super::CONSUMER_PREFIX) (the local
//! operator's) or a prefix of each HTTPS client's own
//! ([`Access::consumer_prefix`]), so the API cannot touch the node's own
//! consumers and no client can touch another's. Pulls and streams leave
//! out events of channels the client may not read. Their type patterns are
//! stored one per line (a pattern never holds a line break).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::auth::Access;
use super::errors::{ApiError, code, json_response};
use super::events::{json_ok, read_page};
use super::input::{
    BodyFormat, Params, Start, body_format, check_pattern, decode_json, parse_from, read_body,
    start_of,
};
use super::server::ApiState;
use super::{CONSUMERS_MAX, PAGE_EVENTS_MAX, PULL_WAIT_MS_MAX};
use crate::store::{ConsumerCursor, FOLLOW_PATTERNS_MAX, Log, StartFrom};

/// A consumer as the API shows it.
#[derive(Debug, Serialize)]
pub struct ConsumerView {
    pub name: String,
    /// Type patterns; empty: every event.
    pub types: Vec<String>,
    /// Everything up to this position is acknowledged.
    pub acked: u64,
    /// When it was created, repositioned or last acknowledged.
    pub updated: String,
}

impl ConsumerView {
    fn of(prefix: &str, cursor: &ConsumerCursor) -> Option<ConsumerView> {
        Some(ConsumerView {
            name: cursor.consumer.strip_prefix(prefix)?.to_string(),
            types: patterns_of(&cursor.pattern),
            acked: cursor.last_arrival,
            updated: crate::clock::format_timestamp(cursor.updated_at_us),
        })
    }
}

/// The body of `PUT /v1/consumers/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutConsumer {
    /// Type patterns (`*`, `?`); absent or empty: every event.
    #[serde(default)]
    types: Vec<String>,
    /// Where a new consumer starts, or to reposition: `start`, `now` or an
    /// RFC 3339 time.
    #[serde(default)]
    from: Option<String>,
    /// Or: start after this position.
    #[serde(default)]
    after: Option<u64>,
}

/// The body of `POST /v1/consumers/{name}/ack`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ack {
    /// Everything up to and including this position is handled.
    position: u64,
}

/// The prefix every API consumer's stored name starts with (the
/// operator's [`CONSUMER_PREFIX`](super::CONSUMER_PREFIX) and the clients'
/// [`super::auth::CLIENT_CONSUMER_PREFIX`]).
const API_CONSUMERS: &str = "api";

/// The stored form of a pattern list (one per line; empty: every event).
fn pattern_text(types: &[String]) -> String {
    if types.is_empty() {
        "*".to_string()
    } else {
        types.join("\n")
    }
}

fn patterns_of(text: &str) -> Vec<String> {
    if text == "*" {
        return Vec::new();
    }
    text.split('\n').map(str::to_string).collect()
}

/// The store's name for the caller's API consumer `name`, after checking it.
fn stored_name(access: &Access, name: &str) -> Result<String, ApiError> {
    let max = access.consumer_name_bytes_max();
    let valid = !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return Err(ApiError::parameter(
            "name",
            format!(
                "consumer name {name:?} must be 1 to {max} bytes of A-Z, a-z, 0-9, '.', '_', '-'"
            ),
        ));
    }
    Ok(format!("{}{name}", access.consumer_prefix()))
}

/// The consumer's cursor, or 404.
fn cursor(log: &Log, name: &str, stored: &str) -> Result<ConsumerCursor, ApiError> {
    log.consumer_cursor(stored)?.ok_or_else(|| {
        ApiError::not_found(format!(
            "no consumer {name:?}; create it with PUT /v1/consumers/{name}"
        ))
        .at("name")
    })
}

/// Runs `work` off the runtime.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::task(what, e))?
}

/// `GET /v1/consumers`.
pub async fn list(
    State(state): State<ApiState>,
    Extension(access): Extension<Access>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref())?.finish()?;
    let log = state.log()?;
    let prefix = access.consumer_prefix();
    let consumers = blocking("listing consumers", move || {
        Ok(log
            .consumer_cursors(&prefix, CONSUMERS_MAX)?
            .iter()
            .filter_map(|c| ConsumerView::of(&prefix, c))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(json_ok(&super::events::Field("consumers", &consumers)))
}

/// `GET /v1/consumers/{name}`.
pub async fn get(
    State(state): State<ApiState>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref())?.finish()?;
    let stored = stored_name(&access, &name)?;
    let log = state.log()?;
    let view = blocking("reading a consumer", move || {
        let c = cursor(&log, &name, &stored)?;
        ConsumerView::of(&access.consumer_prefix(), &c)
            .ok_or_else(|| ApiError::internal("a consumer outside the API's prefix"))
    })
    .await?;
    Ok(json_ok(&view))
}

/// `PUT /v1/consumers/{name}`: 201 when created, 200 when it existed.
pub async fn put(
    State(state): State<ApiState>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref())?.finish()?;
    let stored = stored_name(&access, &name)?;
    body_format(&headers, &[BodyFormat::Json])?;
    let bytes = read_body(&headers, body).await?;
    let request: PutConsumer = if bytes.iter().all(u8::is_ascii_whitespace) {
        PutConsumer {
            types: Vec::new(),
            from: None,
            after: None,
        }
    } else {
        decode_json(&bytes, "")?
    };
    let start = put_start(&request)?;
    let types = put_types(request.types)?;
    let log = state.log()?;
    // A consumer is for reading: refused to a client that may read nothing.
    access.reader(&log)?;
    let prefix = access.consumer_prefix();
    let (created, view) = blocking("defining a consumer", move || {
        define(&log, &prefix, &name, &stored, &types, start)
    })
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let text = serde_json::to_string(&view)
        .map_err(|e| ApiError::internal(format!("cannot encode the consumer: {e}")))?;
    Ok(json_response(status, text))
}

fn put_start(request: &PutConsumer) -> Result<Option<Start>, ApiError> {
    match (&request.from, request.after) {
        (Some(_), Some(_)) => Err(ApiError::field(
            "from",
            "give either after (a position) or from (start, now or a time), not both",
        )),
        (Some(from), None) => parse_from(from)
            .map(|f| Some(Start::From(f)))
            .map_err(|e| ApiError::field("from", format!("field from: {e}"))),
        (None, Some(after)) => Ok(Some(Start::After(after))),
        (None, None) => Ok(None),
    }
}

fn put_types(mut types: Vec<String>) -> Result<Vec<String>, ApiError> {
    if types.len() > FOLLOW_PATTERNS_MAX {
        return Err(ApiError::field(
            "types",
            format!(
                "{} type patterns, over the limit of {FOLLOW_PATTERNS_MAX}",
                types.len()
            ),
        ));
    }
    for (i, t) in types.iter().enumerate() {
        check_pattern(t).map_err(|e| ApiError::field(format!("types[{i}]"), e))?;
    }
    if types.iter().any(|t| t == "*") {
        types.clear();
    }
    Ok(types)
}

/// Creates or repositions a consumer; `true` when it is new.
fn define(
    log: &Log,
    prefix: &str,
    name: &str,
    stored: &str,
    types: &[String],
    start: Option<Start>,
) -> Result<(bool, ConsumerView), ApiError> {
    let pattern = pattern_text(types);
    let existing = log.consumer_cursor(stored)?;
    let position = match (&existing, start) {
        (Some(c), None) if c.pattern == pattern => None,
        (Some(c), None) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                code::CONFLICT,
                format!(
                    "consumer {name:?} exists with types {:?}; to change them, give from or after too (its position under other types says nothing about these)",
                    patterns_of(&c.pattern)
                ),
            )
            .at("types"));
        }
        (_, Some(Start::After(p))) => Some(p),
        (_, Some(Start::From(from))) => Some(log.position_for(from)?),
        (None, None) => Some(log.position_for(StartFrom::Start)?),
    };
    // Counted over the operator's and every client's consumers ("api." and
    // "apic." both start with "api").
    if existing.is_none()
        && log.consumer_cursors(API_CONSUMERS, CONSUMERS_MAX)?.len() >= CONSUMERS_MAX
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            code::TOO_MANY_CONSUMERS,
            format!("{CONSUMERS_MAX} consumers exist, the most this node keeps; delete one first"),
        ));
    }
    if let Some(position) = position {
        let last = log.last_arrival()?;
        if position > last {
            return Err(ApiError::field(
                "after",
                format!("position {position} is beyond the last event this node holds ({last})"),
            ));
        }
        log.put_consumer_cursor(stored, &pattern, position)?;
    }
    let now = cursor(log, name, stored)?;
    let view = ConsumerView::of(prefix, &now)
        .ok_or_else(|| ApiError::internal("a consumer outside the API's prefix"))?;
    Ok((existing.is_none(), view))
}

/// `DELETE /v1/consumers/{name}`: 204, or 404 if there was none.
pub async fn delete(
    State(state): State<ApiState>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref())?.finish()?;
    let stored = stored_name(&access, &name)?;
    let log = state.log()?;
    let deleted = blocking("deleting a consumer", move || {
        Ok(log.delete_consumer_cursor(&stored)?)
    })
    .await?;
    if !deleted {
        return Err(ApiError::not_found(format!("no consumer {name:?}")).at("name"));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// What a pull returns.
#[derive(Serialize)]
struct Pulled {
    events: Vec<Box<RawValue>>,
    /// Pull on with `after=next_after` (the client's fetch position); ack
    /// up to the last event handled.
    next_after: u64,
    /// The acknowledged position as stored.
    acked: u64,
}

/// `GET /v1/consumers/{name}/events?max=N&after=P&wait_ms=W`.
pub async fn pull(
    State(state): State<ApiState>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = Params::parse(query.as_deref())?;
    let max = params
        .number("max", 1, PAGE_EVENTS_MAX as u64)?
        .map_or(super::PAGE_EVENTS_DEFAULT, |n| n as usize);
    let after = params.number("after", 0, i64::MAX as u64)?;
    let wait_ms = params.number("wait_ms", 0, PULL_WAIT_MS_MAX)?.unwrap_or(0);
    params.finish()?;
    let stored = stored_name(&access, &name)?;
    let log = state.log()?;
    let reader = access.reader(&log)?;
    let encoder = state.encoder()?;
    let (c, mut follower) = blocking("opening a pull", move || {
        let c = cursor(&log, &name, &stored)?;
        let follower = log.follow(patterns_of(&c.pattern), after.unwrap_or(c.last_arrival))?;
        Ok((c, follower))
    })
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    let mut shutdown = state.shutdown.clone();
    loop {
        let reader = reader.clone();
        let (f, events, next_after) = blocking("pulling", move || {
            let (events, next) = read_page(&mut follower, max, |e| reader.allows(e))?;
            Ok((follower, events, next))
        })
        .await?;
        follower = f;
        let now = tokio::time::Instant::now();
        if !events.is_empty() || now >= deadline || state.stopping() {
            let pulled = Pulled {
                events: encoder.encode_all(&events),
                next_after,
                acked: c.last_arrival,
            };
            return Ok(json_ok(&pulled));
        }
        tokio::select! {
            _ = follower.wait(deadline - now) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// `POST /v1/consumers/{name}/ack` `{"position": P}`.
pub async fn ack(
    State(state): State<ApiState>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref())?.finish()?;
    let stored = stored_name(&access, &name)?;
    body_format(&headers, &[BodyFormat::Json])?;
    let bytes = read_body(&headers, body).await?;
    let Ack { position } = decode_json(&bytes, "")?;
    let log = state.log()?;
    let acked = blocking("acknowledging", move || {
        let c = cursor(&log, &name, &stored)?;
        let last = log.last_arrival()?;
        if position > last {
            return Err(ApiError::field(
                "position",
                format!("position {position} is beyond the last event this node holds ({last})"),
            ));
        }
        log.ack_consumer_cursor(&stored, &c.pattern, position)?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    code::CONFLICT,
                    format!("consumer {name:?} was deleted or redefined meanwhile; pull again"),
                )
            })
    })
    .await?;
    Ok(json_ok(&serde_json::json!({ "acked": acked })))
}

/// `GET /v1/consumers/{name}/stream`: SSE from the acked position, or from
/// `Last-Event-ID` when a client reconnects.
pub async fn stream(
    State(state): State<ApiState>,
    Extension(access): Extension<Access>,
    Path(name): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = Params::parse(query.as_deref())?;
    let resume = start_of(&headers, &mut params, None)?;
    params.finish()?;
    let stored = stored_name(&access, &name)?;
    let log = state.log()?;
    let reader = access.reader(&log)?;
    let c = blocking("opening a consumer stream", move || {
        cursor(&log, &name, &stored)
    })
    .await?;
    let start = resume.unwrap_or(Start::After(c.last_arrival));
    super::subscribe::open(state, patterns_of(&c.pattern), start, reader).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_lists_round_trip_through_their_stored_text() {
        for types in [
            vec![],
            vec!["a.*".to_string()],
            vec!["a.*".into(), "b?".into()],
        ] {
            assert_eq!(patterns_of(&pattern_text(&types)), types);
        }
        let op = &Access::Operator;
        assert!(stored_name(op, "orders-1.v2_x").is_ok());
        assert!(stored_name(op, "").is_err());
        assert!(stored_name(op, "has space").is_err());
        assert!(stored_name(op, &"x".repeat(super::super::CONSUMER_NAME_BYTES_MAX + 1)).is_err());
        assert_eq!(stored_name(op, "a").unwrap(), "api.a");
    }
}
