//! `POST /v1/events`: publish one event or a batch, answered with the
//! receipts once every event is durable.
//!
//! The body is one event object or an array of them (`application/json`),
//! or one object per line (`application/x-ndjson`). Every event of the
//! request is decoded and validated (type, metadata, payload size, channel)
//! before anything is handed to the store, so a bad one writes nothing.
//! The events then go to the store's writer in batches of
//! [`PUBLISH_CHUNK_EVENTS`], all in flight at once (sealing one overlaps the
//! commit of the one before), and the answer waits for the last receipt.
//! The handler awaits the receipts: no thread is held while the events wait
//! for their commit. A body up to [`super::DECODE_INLINE_BYTES_MAX`] is
//! decoded (and its receipts encoded) on the worker that read it; a larger
//! one on a blocking thread.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::auth::Access;
use super::errors::{ApiError, code, json_response};
use super::input::{BodyFormat, Params, body_format, decode_json, read_body};
use super::server::ApiState;
use super::{DECODE_INLINE_BYTES_MAX, PUBLISH_CHUNK_EVENTS, PUBLISH_EVENTS_MAX};
use crate::core::verify::Draft;
use crate::store::{Log, LogError, Pending, PendingAsync, Proclamation, Receipt};

/// One event to publish, as a client sends it, borrowing from the body
/// where it can (strings without escapes, the JSON payload's text): a batch
/// of a thousand events is decoded without a thousand allocations per field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventInput<'a> {
    /// The event type (`donation.received`); `herald.*` is reserved.
    #[serde(rename = "type", borrow)]
    pub event_type: Cow<'a, str>,
    /// The payload as JSON (stored compactly).
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
    /// Or the payload as bytes, base64 (standard alphabet, padded).
    #[serde(default, borrow)]
    pub data_base64: Option<Cow<'a, str>>,
    /// Metadata (`correlation_id`, `causation_id`, ...).
    #[serde(default, borrow)]
    pub meta: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    /// The channel whose key encrypts the payload (default: the node's).
    #[serde(default, borrow)]
    pub channel: Option<Cow<'a, str>>,
    /// The payload schema's version.
    #[serde(default = "schema_version_default")]
    pub schema_version: u32,
}

fn schema_version_default() -> u32 {
    1
}

/// A receipt as JSON: the event is durable in `feed` at `seq`.
#[derive(Debug, Serialize)]
pub struct ReceiptView<'a> {
    pub feed: &'a str,
    pub seq: u64,
    pub id: uuid::Uuid,
    pub hash: HexHash,
}

/// A hash written as lowercase hex, without a string allocated per receipt.
#[derive(Debug, Clone, Copy)]
pub struct HexHash(pub crate::core::crypto::Hash);

impl Serialize for HexHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut text = [0u8; 64];
        hex::encode_to_slice(self.0, &mut text).map_err(serde::ser::Error::custom)?;
        let text = std::str::from_utf8(&text).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(text)
    }
}

#[derive(Serialize)]
struct Receipts<'a> {
    receipts: Vec<ReceiptView<'a>>,
}

/// `POST /v1/events`.
pub async fn publish(
    State(state): State<ApiState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref())?.finish()?;
    let format = body_format(&headers, &[BodyFormat::Json, BodyFormat::Ndjson])?;
    let bytes = read_body(&headers, body).await?;
    let log = state.log()?;
    // A small body is decoded here; a large one on a blocking thread, so
    // it does not hold up the other connections this worker serves.
    let inline = bytes.len() <= DECODE_INLINE_BYTES_MAX;
    let drafts = if inline {
        prepare(&log, &access, &bytes, format)?
    } else {
        let log = Arc::clone(&log);
        tokio::task::spawn_blocking(move || prepare(&log, &access, &bytes, format))
            .await
            .map_err(|e| ApiError::task("decoding the events", e))??
    };
    // Awaited, not waited for: no thread is held until the commit.
    let receipts = proclaim_async(&log, drafts).await?;
    if inline {
        return encode_receipts(&log, &receipts);
    }
    tokio::task::spawn_blocking(move || encode_receipts(&log, &receipts))
        .await
        .map_err(|e| ApiError::task("encoding the receipts", e))?
}

/// Decodes and validates every event of the body; refuses the whole
/// request if the caller may not publish one of them.
fn prepare(
    log: &Log,
    access: &Access,
    bytes: &[u8],
    format: BodyFormat,
) -> Result<Vec<Proclamation>, ApiError> {
    let inputs = decode_events(bytes, format)?;
    // Nothing is written unless the caller may publish every event.
    for input in &inputs {
        access.may_publish(&input.event_type)?;
    }
    validate(log, inputs)
}

fn encode_receipts(log: &Log, receipts: &[Receipt]) -> Result<Response, ApiError> {
    let body = Receipts {
        receipts: receipt_views(log.service(), receipts),
    };
    serde_json::to_string(&body)
        .map(|text| json_response(StatusCode::OK, text))
        .map_err(|e| ApiError::internal(format!("cannot encode the receipts: {e}")))
}

fn receipt_views<'a>(feed: &'a str, receipts: &[Receipt]) -> Vec<ReceiptView<'a>> {
    receipts
        .iter()
        .map(|r| ReceiptView {
            feed,
            seq: r.seq,
            id: r.id,
            hash: HexHash(r.hash),
        })
        .collect()
}

/// The events of a body, each decoded with the path of a bad field
/// (`[3].type`; for NDJSON the index counts non-empty lines).
pub fn decode_events(bytes: &[u8], format: BodyFormat) -> Result<Vec<EventInput<'_>>, ApiError> {
    let inputs = match format {
        BodyFormat::Json => {
            let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
            if first == Some(&b'[') {
                // Bounded by the body limit; the count is checked after.
                decode_json::<Vec<EventInput>>(bytes, "")?
            } else {
                vec![decode_json::<EventInput>(bytes, "")?]
            }
        }
        BodyFormat::Ndjson => {
            let mut out = Vec::new();
            for (number, line) in bytes.split(|b| *b == b'\n').enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                check_count(out.len() + 1)?;
                let prefix = format!("[{}]", out.len());
                let event = decode_json::<EventInput>(line, &prefix).map_err(|mut e| {
                    e.message = format!("line {}: {}", number + 1, e.message);
                    e
                })?;
                out.push(event);
            }
            out
        }
    };
    if inputs.is_empty() {
        return Err(ApiError::field("body", "the body holds no event"));
    }
    check_count(inputs.len())?;
    Ok(inputs)
}

fn check_count(count: usize) -> Result<(), ApiError> {
    if count > PUBLISH_EVENTS_MAX {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::TOO_LARGE,
            format!("the body holds more than {PUBLISH_EVENTS_MAX} events; split it into batches"),
        )
        .at("body"));
    }
    Ok(())
}

/// Turns inputs into drafts on their channels, refusing the whole request
/// at the first bad event (nothing is written).
pub fn validate(log: &Log, inputs: Vec<EventInput<'_>>) -> Result<Vec<Proclamation>, ApiError> {
    // The channels a batch names, looked up once each (usually one).
    let mut channels: Vec<(Option<String>, Arc<crate::core::crypto::ChannelKey>)> = Vec::new();
    let mut drafts = Vec::with_capacity(inputs.len());
    let single = inputs.len() == 1;
    for (i, input) in inputs.into_iter().enumerate() {
        let at = |field: &str| {
            if single {
                field.to_string()
            } else {
                format!("[{i}].{field}")
            }
        };
        let payload = match (input.data, input.data_base64) {
            (Some(json), None) => minify_json(json.get()),
            (None, Some(text)) => BASE64.decode(text.as_bytes()).map_err(|e| {
                ApiError::field(
                    at("data_base64"),
                    format!("{}: not base64: {e}", at("data_base64")),
                )
            })?,
            _ => {
                return Err(ApiError::field(
                    at("data"),
                    format!(
                        "{}: give the payload as data (JSON) or as data_base64 (bytes), exactly one",
                        at("data")
                    ),
                ));
            }
        };
        let meta: Vec<(String, String)> = input
            .meta
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let draft = Draft::new(&input.event_type, input.schema_version, meta, payload)
            .map_err(|e| draft_error(e, &at))?;
        let wanted = input.channel.as_deref();
        let key = match channels.iter().find(|(name, _)| name.as_deref() == wanted) {
            Some((_, key)) => Arc::clone(key),
            None => {
                let key = log.channel(wanted).map_err(|e| {
                    let mut e = ApiError::from(e);
                    e.field = Some(at("channel"));
                    e
                })?;
                channels.push((wanted.map(str::to_owned), Arc::clone(&key)));
                key
            }
        };
        drafts.push((draft, key));
    }
    Ok(drafts)
}

fn draft_error(e: crate::core::verify::DraftError, at: &dyn Fn(&str) -> String) -> ApiError {
    use crate::core::verify::DraftError;
    let field = match &e {
        DraftError::EventType(_) | DraftError::ReservedType(_) => at("type"),
        DraftError::Meta(_) => at("meta"),
        DraftError::PayloadTooLarge { .. } => at("data"),
    };
    ApiError::field(field.clone(), format!("{field}: {e}"))
}

/// Hands the drafts to the writer in batches, all in flight, and waits for
/// every receipt. If a batch fails, the receipts of those already durable
/// are sent beside the error.
pub fn proclaim(log: &Log, mut drafts: Vec<Proclamation>) -> Result<Vec<Receipt>, ApiError> {
    let mut pending: Vec<Pending> = Vec::with_capacity(drafts.len().div_ceil(PUBLISH_CHUNK_EVENTS));
    let mut failure: Option<LogError> = None;
    while !drafts.is_empty() {
        let rest = drafts.split_off(drafts.len().min(PUBLISH_CHUNK_EVENTS));
        match log.submit(std::mem::replace(&mut drafts, rest)) {
            Ok(p) => pending.push(p),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let mut receipts = Vec::new();
    for p in pending {
        match p.wait() {
            Ok(r) if failure.is_none() => receipts.extend(r),
            Ok(_) => {}
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    finish(log, receipts, failure)
}

/// The receipts, or the failure with the receipts of the events before it
/// that are durable.
fn finish(
    log: &Log,
    receipts: Vec<Receipt>,
    failure: Option<LogError>,
) -> Result<Vec<Receipt>, ApiError> {
    let Some(e) = failure else {
        return Ok(receipts);
    };
    let mut error = ApiError::from(e);
    if !receipts.is_empty() {
        error.message = format!(
            "{}; the {} events before the failure are durable (their receipts are included)",
            error.message,
            receipts.len()
        );
        error.receipts = serde_json::to_value(receipt_views(log.service(), &receipts)).ok();
    }
    Err(error)
}

/// [`proclaim`] for the async handler: the batches are submitted at once
/// and their receipts awaited, so no thread waits for the commits.
pub async fn proclaim_async(
    log: &Log,
    mut drafts: Vec<Proclamation>,
) -> Result<Vec<Receipt>, ApiError> {
    let mut pending: Vec<PendingAsync> =
        Vec::with_capacity(drafts.len().div_ceil(PUBLISH_CHUNK_EVENTS));
    let mut failure: Option<LogError> = None;
    while !drafts.is_empty() {
        let rest = drafts.split_off(drafts.len().min(PUBLISH_CHUNK_EVENTS));
        match log.submit_async(std::mem::replace(&mut drafts, rest)).await {
            Ok(p) => pending.push(p),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let mut receipts = Vec::new();
    for p in pending {
        match p.wait().await {
            Ok(r) if failure.is_none() => receipts.extend(r),
            Ok(_) => {}
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    finish(log, receipts, failure)
}

/// `json` (valid JSON text) without its insignificant whitespace: the same
/// value in the compact form `herald publish` stores.
pub fn minify_json(json: &str) -> Vec<u8> {
    let bytes = json.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    // Copies runs of bytes rather than single bytes: a string is copied
    // whole up to its closing quote, and outside strings everything up to
    // the next whitespace or quote.
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && !matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r' | b'"') {
            i += 1;
        }
        out.extend_from_slice(&bytes[start..i]);
        match bytes.get(i) {
            None => break,
            Some(b'"') => {
                let start = i;
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
                out.extend_from_slice(&bytes[start..i.min(bytes.len())]);
            }
            // Whitespace between tokens.
            Some(_) => i += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minify_keeps_compact_json_and_edge_cases() {
        for text in [
            r#"{"a":"x\\","b":"\"q\" \\\" ","c":[1,{"d":null}]}"#,
            "\"xxxx\"",
            "\" a \\\\\"",
            "  [ 1 , true , \"\" ]  ",
            "\"\"",
        ] {
            let minified = minify_json(text);
            let before: serde_json::Value = serde_json::from_str(text).unwrap();
            let after: serde_json::Value = serde_json::from_slice(&minified).unwrap();
            assert_eq!(before, after, "{text}");
            assert_eq!(
                std::str::from_utf8(&minified).unwrap(),
                serde_json::to_string(&before).unwrap(),
                "{text}"
            );
        }
    }

    #[test]
    fn receipt_hashes_are_lowercase_hex() {
        let mut hash = [0u8; 32];
        hash[0] = 0xab;
        hash[31] = 0x0f;
        let text = serde_json::to_string(&HexHash(hash)).unwrap();
        assert_eq!(text, format!("\"{}\"", hex::encode(hash)));
    }

    #[test]
    fn minify_drops_only_whitespace_outside_strings() {
        let text = "{ \"a b\" : [1, 2],\n\t\"c\": \"x \\\" y\\\\\", \"d\" : {} }";
        let minified = minify_json(text);
        assert_eq!(
            std::str::from_utf8(&minified).unwrap(),
            r#"{"a b":[1,2],"c":"x \" y\\","d":{}}"#
        );
        let before: serde_json::Value = serde_json::from_str(text).unwrap();
        let after: serde_json::Value = serde_json::from_slice(&minified).unwrap();
        assert_eq!(before, after);
    }

    #[test]
    fn bodies_decode_as_one_event_an_array_or_ndjson() {
        let one = decode_events(br#"{"type":"a","data":{"x":1}}"#, BodyFormat::Json).unwrap();
        assert_eq!(one.len(), 1);
        let many = decode_events(
            br#" [{"type":"a","data":1},{"type":"b","data_base64":"AAE="}]"#,
            BodyFormat::Json,
        )
        .unwrap();
        assert_eq!(many.len(), 2);
        let lines = decode_events(
            b"{\"type\":\"a\",\"data\":1}\n\n{\"type\":\"b\",\"data\":2}\n",
            BodyFormat::Ndjson,
        )
        .unwrap();
        assert_eq!(lines[1].event_type, "b");
        let e = decode_events(
            b"{\"type\":\"a\",\"data\":1}\n{\"typo\":1}\n",
            BodyFormat::Ndjson,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("[1].typo"), "{e}");
        assert!(e.message.starts_with("line 2: "), "{e}");
        assert!(decode_events(b"[]", BodyFormat::Json).is_err());
        assert!(decode_events(b"\n", BodyFormat::Ndjson).is_err());
    }
}
