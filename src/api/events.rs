//! Reading events, and the JSON form every endpoint gives an event.
//!
//! An event as JSON (`docs/API.md`, "The event"):
//!
//! ```json
//! {"position": 17, "id": "01a2...", "feed": "fundraising", "seq": 3,
//!  "type": "donation.received", "schema_version": 1,
//!  "time": "2026-11-26T17:54:53.535498Z", "hash": "a4ae...",
//!  "channel": "default", "meta": {"correlation_id": "c-1"},
//!  "payload": "json", "data": {"donor": "D-1001"},
//!  "signature": {"status": "verified", "scheme": "checkpoint",
//!                "checkpoint": {"size": 36, "cosigners": ["identity"]}}}
//! ```
//!
//! `position` is the node's arrival order, the cursor of streams, pulls and
//! acknowledgements. `payload` says what `data` holds: `json` (`data` is the
//! decrypted JSON), `binary` (`data_base64` holds the decrypted bytes),
//! `encrypted` (this node holds no key for the channel), `pruned` (the
//! payload was removed; the chain still proves it existed) or `damaged`
//! (it does not decrypt: the store is damaged).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::value::RawValue;

use super::auth::Access;
use super::errors::{ApiError, json_response};
use super::input::{Params, Start, check_pattern, start_of};
use super::server::ApiState;
use super::{EVENTS_BY_ID_MAX, PAGE_EVENTS_DEFAULT, PAGE_EVENTS_MAX, READ_SCAN_ROWS_MAX};
use crate::core::crypto::ChannelKey;
use crate::core::event::{Encryption, SignatureScope};
use crate::core::verify::{DecryptError, decrypt_payload};
use crate::store::{Follower, Log, StoredEvent};

/// Turns stored events into their JSON form: decrypts with the node's
/// channel keys and tells which checkpoint covers each.
#[derive(Clone)]
pub struct EventEncoder {
    log: Arc<Log>,
    keys: Arc<Vec<ChannelKey>>,
}

#[derive(Serialize)]
struct EventView<'a> {
    position: u64,
    id: uuid::Uuid,
    feed: &'a str,
    seq: u64,
    #[serde(rename = "type")]
    event_type: &'a str,
    schema_version: u32,
    time: String,
    hash: String,
    channel: Option<String>,
    meta: Meta<'a>,
    payload: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
    signature: SignatureView<'a>,
}

/// Metadata as a JSON object (it is stored sorted by key, keys unique).
struct Meta<'a>(&'a [(String, String)]);

impl Serialize for Meta<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct SignatureView<'a> {
    /// Always `verified`: the store holds only events that passed every
    /// check before they were applied, and each row read back is checked
    /// against its feed's Merkle tree (a damaged one is an error, never
    /// served).
    status: &'static str,
    /// `checkpoint` (format 2: the author's signed checkpoint) or `event`
    /// (format 1: a signature on the event itself).
    scheme: &'static str,
    /// The latest checkpoint this node holds that covers the event.
    checkpoint: Option<&'a CheckpointView>,
}

#[derive(Serialize)]
struct CheckpointView {
    size: u64,
    cosigners: Vec<String>,
}

impl EventEncoder {
    pub fn new(log: &Arc<Log>) -> EventEncoder {
        EventEncoder {
            log: Arc::clone(log),
            keys: Arc::new(log.channel_keys()),
        }
    }

    /// Calls `emit(position, json)` for each event, in order. Checkpoints
    /// are looked up once per feed per call.
    pub fn encode_each(&self, events: &[StoredEvent], mut emit: impl FnMut(u64, &str)) {
        let mut checkpoints: HashMap<&str, Option<CheckpointView>> = HashMap::new();
        let cluster = self.log.cluster();
        for event in events {
            let feed = event.header.author.as_str();
            let checkpoint = checkpoints.entry(feed).or_insert_with(|| {
                self.log.latest_checkpoint(feed).map(|c| CheckpointView {
                    size: c.size,
                    cosigners: c.cosigners(cluster),
                })
            });
            let covering = checkpoint.as_ref().filter(|c| c.size > event.header.seq);
            let json = self.encode(event, covering);
            emit(event.arrival, &json);
        }
    }

    /// The events' JSON forms, in order.
    pub fn encode_all(&self, events: &[StoredEvent]) -> Vec<Box<RawValue>> {
        let mut out = Vec::with_capacity(events.len());
        self.encode_each(events, |_, json| {
            if let Ok(raw) = RawValue::from_string(json.to_string()) {
                out.push(raw);
            }
        });
        out
    }

    fn encode(&self, event: &StoredEvent, checkpoint: Option<&CheckpointView>) -> String {
        let h = &event.header;
        let (channel, stored) = match &h.payload.encryption {
            Encryption::Plain => (None, payload_of(event)),
            Encryption::XChaCha20Poly1305 { key_id, .. } => {
                let name = self
                    .keys
                    .iter()
                    .find(|k| &k.id() == key_id)
                    .map(|k| k.name().to_string())
                    .unwrap_or_else(|| format!("unknown:{}", hex::encode(key_id)));
                (Some(name), payload_of(event))
            }
        };
        let plain = match stored {
            None => Err(DecryptError::Pruned),
            Some(bytes) => decrypt_payload(h, &bytes, &self.keys),
        };
        let (payload, data, data_base64) = match plain {
            Ok(bytes) => match json_data(&bytes) {
                Some(json) => ("json", Some(json), None),
                None => ("binary", None, Some(BASE64.encode(&bytes))),
            },
            Err(DecryptError::Pruned) => ("pruned", None, None),
            Err(DecryptError::UnknownKey(_)) => ("encrypted", None, None),
            Err(DecryptError::Failed(_)) => ("damaged", None, None),
        };
        let view = EventView {
            position: event.arrival,
            id: h.uuid(),
            feed: &h.author,
            seq: h.seq,
            event_type: &h.event_type,
            schema_version: h.schema_version,
            time: crate::clock::format_timestamp(h.timestamp_us),
            hash: hex::encode(event.hash),
            channel,
            meta: Meta(&h.meta),
            payload,
            data,
            data_base64,
            signature: SignatureView {
                status: "verified",
                scheme: match h.signature_scope {
                    SignatureScope::Checkpoint => "checkpoint",
                    SignatureScope::Event => "event",
                },
                checkpoint,
            },
        };
        // Plain strings, numbers and validated JSON: encoding cannot fail.
        serde_json::to_string(&view).unwrap_or_default()
    }
}

/// The stored payload bytes (ciphertext when encrypted), if not pruned.
fn payload_of(event: &StoredEvent) -> Option<Vec<u8>> {
    crate::core::codec::decode_envelope(&event.envelope)
        .ok()
        .and_then(|(envelope, _)| envelope.payload)
}

/// `bytes` as one line of JSON, if they are JSON: kept as they are unless
/// they hold line breaks (insignificant whitespace, which an SSE `data:`
/// line cannot carry), then re-encoded compactly.
pub fn json_data(bytes: &[u8]) -> Option<Box<RawValue>> {
    let raw: Box<RawValue> = serde_json::from_slice(bytes).ok()?;
    if !raw.get().contains(['\n', '\r']) {
        return Some(raw);
    }
    let value: serde_json::Value = serde_json::from_str(raw.get()).ok()?;
    serde_json::value::to_raw_value(&value).ok()
}

/// A page of events and where to continue.
#[derive(Serialize)]
struct Page {
    events: Vec<Box<RawValue>>,
    /// Read on with `after=next_after`: every event up to it was looked at.
    next_after: u64,
}

/// Reads events in arrival order from `follower`, keeping those `keep`
/// accepts, until `limit` are found, the log is caught up, or
/// [`READ_SCAN_ROWS_MAX`] rows were looked at. Returns them and the
/// position a next read continues after.
pub fn read_page(
    follower: &mut Follower,
    limit: usize,
    keep: impl Fn(&StoredEvent) -> bool,
) -> Result<(Vec<StoredEvent>, u64), crate::store::LogError> {
    let mut found = Vec::new();
    let start = follower.position();
    loop {
        let batch = follower.next_batch()?;
        for event in batch {
            if !keep(&event) {
                continue;
            }
            found.push(event);
            if found.len() == limit {
                let next = found.last().map_or(start, |e| e.arrival);
                return Ok((found, next));
            }
        }
        let scanned = follower.position().saturating_sub(start);
        if scanned >= READ_SCAN_ROWS_MAX as u64 || !follower.has_more()? {
            return Ok((found, follower.position()));
        }
    }
}

/// The position a start resolves to.
pub fn resolve_start(log: &Log, start: Start) -> Result<u64, crate::store::LogError> {
    match start {
        Start::After(p) => Ok(p),
        Start::From(from) => log.position_for(from),
    }
}

/// Type patterns from repeated `type` parameters, checked.
pub fn type_patterns(params: &mut Params) -> Result<Vec<String>, ApiError> {
    let patterns = params.all("type");
    if patterns.len() > crate::store::FOLLOW_PATTERNS_MAX {
        return Err(ApiError::parameter(
            "type",
            format!(
                "{} type patterns, over the limit of {}",
                patterns.len(),
                crate::store::FOLLOW_PATTERNS_MAX
            ),
        ));
    }
    for p in &patterns {
        check_pattern(p).map_err(|e| ApiError::parameter("type", e))?;
    }
    Ok(patterns)
}

/// `GET /v1/events`: events in arrival order, by type patterns and feed.
pub async fn list(
    State(state): State<ApiState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = Params::parse(query.as_deref())?;
    let patterns = type_patterns(&mut params)?;
    let feed = params.one("feed")?;
    let limit = params
        .number("limit", 1, PAGE_EVENTS_MAX as u64)?
        .map_or(PAGE_EVENTS_DEFAULT, |n| n as usize);
    let start = start_of(&headers, &mut params, None)?.unwrap_or(Start::After(0));
    params.finish()?;
    let log = state.log()?;
    let reader = access.reader(&log)?;
    let encoder = state.encoder()?;
    let page = tokio::task::spawn_blocking(move || {
        let after = resolve_start(&log, start)?;
        let mut follower = log.follow(patterns, after)?;
        let (events, next_after) = read_page(&mut follower, limit, |e| {
            feed.as_deref().is_none_or(|f| f == e.header.author) && reader.allows(e)
        })?;
        Ok::<_, ApiError>(Page {
            events: encoder.encode_all(&events),
            next_after,
        })
    })
    .await
    .map_err(|e| ApiError::task("reading events", e))??;
    Ok(json_ok(&page))
}

/// `GET /v1/events/{id}`: the events with this id (several feeds may hold one).
pub async fn by_id(
    State(state): State<ApiState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref())?.finish()?;
    let uuid = uuid::Uuid::parse_str(&id).map_err(|e| {
        ApiError::parameter("id", format!("{id:?} is not an event id (a UUID): {e}"))
    })?;
    let log = state.log()?;
    let reader = access.reader(&log)?;
    let encoder = state.encoder()?;
    let events = tokio::task::spawn_blocking(move || {
        let mut events = log.read_by_id(uuid.as_bytes(), EVENTS_BY_ID_MAX)?;
        let held = events.len();
        events.retain(|e| reader.allows(e));
        if held > 0 && events.is_empty() {
            return Err(unreadable(&access, uuid));
        }
        Ok::<_, ApiError>(encoder.encode_all(&events))
    })
    .await
    .map_err(|e| ApiError::task("reading an event", e))??;
    if events.is_empty() {
        return Err(
            ApiError::not_found(format!("this node holds no event with id {uuid}")).at("id"),
        );
    }
    Ok(json_ok(&Field("events", &events)))
}

/// `GET /v1/feeds`: every feed this node holds and its head.
pub async fn feeds(
    State(state): State<ApiState>,
    Extension(access): Extension<Access>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref())?.finish()?;
    let log = state.log()?;
    // Feed heads are read permission's metadata: any readable channel.
    access.reader(&log)?;
    let heads = tokio::task::spawn_blocking(move || log.heads())
        .await
        .map_err(|e| ApiError::task("reading feed heads", e))??;
    Ok(json_ok(&Field("feeds", &heads)))
}

/// A feed range and where the next one starts.
#[derive(Serialize)]
struct FeedPage {
    events: Vec<Box<RawValue>>,
    /// Read on with `from_seq=next_seq`; `null` once the page reached the
    /// feed's head.
    next_seq: Option<u64>,
}

/// `GET /v1/feeds/{feed}/events`: a feed's events by sequence number.
pub async fn feed_range(
    State(state): State<ApiState>,
    Extension(access): Extension<Access>,
    Path(feed): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = Params::parse(query.as_deref())?;
    let max_seq = crate::core::limits::SEQ_MAX;
    let from = params.number("from_seq", 0, max_seq)?.unwrap_or(0);
    let to = params.number("to_seq", 0, max_seq)?;
    let limit = params
        .number("limit", 1, PAGE_EVENTS_MAX as u64)?
        .map_or(PAGE_EVENTS_DEFAULT, |n| n as usize) as u64;
    params.finish()?;
    if to.is_some_and(|to| to < from) {
        return Err(ApiError::parameter(
            "to_seq",
            format!("to_seq {} is below from_seq {from}", to.unwrap_or(0)),
        ));
    }
    let log = state.log()?;
    let reader = access.reader(&log)?;
    let encoder = state.encoder()?;
    let page = tokio::task::spawn_blocking(move || {
        let Some(head) = log.heads()?.into_iter().find(|h| h.feed == feed) else {
            return Err(
                ApiError::not_found(format!("this node holds no feed {feed:?}")).at("feed"),
            );
        };
        let last = to.unwrap_or(head.seq).min(head.seq);
        let end = last.min(from.saturating_add(limit - 1));
        let mut events = if from > last {
            Vec::new()
        } else {
            log.read(&feed, from..=end)?
        };
        // Events of channels the caller may not read are left out; the
        // page still covers `from..=end`.
        events.retain(|e| reader.allows(e));
        let next_seq = (end < last).then_some(end + 1);
        Ok(FeedPage {
            events: encoder.encode_all(&events),
            next_seq,
        })
    })
    .await
    .map_err(|e| ApiError::task("reading a feed", e))??;
    Ok(json_ok(&page))
}

/// A JSON object of one field, `{"NAME": value}`, encoded straight from
/// `value`. Unlike `serde_json::json!`, which goes through
/// `serde_json::Value` (whose objects sort their keys), it keeps the field
/// order of the structs and the events' JSON as encoded, so every read gives
/// an event (and a feed head, a consumer, a peer) in the same key order.
pub struct Field<'a, T: ?Sized>(pub &'static str, pub &'a T);

impl<T: Serialize + ?Sized> Serialize for Field<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(self.0, self.1)?;
        map.end()
    }
}

/// 403 for an event the caller may not read (its channel is not in the
/// caller's `read_channels`).
fn unreadable(access: &Access, id: uuid::Uuid) -> ApiError {
    super::auth::forbidden(
        "read_channels",
        format!(
            "client \"{}\" may not read event {id}: its channel is not in the client's `read_channels` permission",
            access.client().unwrap_or("local")
        ),
    )
}

/// A 200 answer with `value` as JSON.
pub fn json_ok(value: &impl Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(text) => json_response(StatusCode::OK, text),
        Err(e) => ApiError::internal(format!("cannot encode the answer: {e}")).into_response_now(),
    }
}

impl ApiError {
    /// This error as a response (for paths that must return `Response`).
    pub fn into_response_now(self) -> Response {
        axum::response::IntoResponse::into_response(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_data_keeps_json_on_one_line_and_refuses_the_rest() {
        assert_eq!(json_data(br#"{"a": 1}"#).unwrap().get(), r#"{"a": 1}"#);
        let multi = json_data(b"{\n  \"a\": \"x\\ny\"\r\n}").unwrap();
        assert_eq!(multi.get(), r#"{"a":"x\ny"}"#);
        assert!(!multi.get().contains('\n'));
        assert!(json_data(b"\x30\x82\x01\x0a").is_none(), "DER is not JSON");
        assert!(json_data(b"").is_none());
        assert_eq!(json_data(b"7").unwrap().get(), "7");
    }

    #[test]
    fn a_field_keeps_the_order_of_what_it_holds() {
        let events = vec![RawValue::from_string(r#"{"z":1,"a":{"y":2,"b":3}}"#.into()).unwrap()];
        assert_eq!(
            serde_json::to_string(&Field("events", &events)).unwrap(),
            r#"{"events":[{"z":1,"a":{"y":2,"b":3}}]}"#
        );
        #[derive(Serialize)]
        struct Head {
            feed: &'static str,
            seq: u64,
            hash: &'static str,
        }
        let heads = [Head {
            feed: "f",
            seq: 2,
            hash: "ab",
        }];
        assert_eq!(
            serde_json::to_string(&Field("feeds", &heads[..])).unwrap(),
            r#"{"feeds":[{"feed":"f","seq":2,"hash":"ab"}]}"#
        );
    }
}
