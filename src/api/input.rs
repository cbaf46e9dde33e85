//! What a request brings, parsed strictly: bodies (bounded, by content
//! type, JSON decoded with the path of a bad field), query strings
//! (unknown parameters are refused, so a typo is not silently ignored),
//! and start positions.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};

use http_body_util::BodyExt as _;

use super::errors::{ApiError, code};
use super::{BODY_BYTES_MAX, BODY_DRAIN_BYTES_MAX};
use crate::core::limits::TIMESTAMP_US_MAX;
use crate::store::StartFrom;

/// The body formats endpoints read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/json` (or any `+json` type).
    Json,
    /// `application/x-ndjson` (also `application/ndjson`,
    /// `application/jsonl`): one JSON document per line.
    Ndjson,
}

/// The body's format from its `Content-Type`; only `accepted` ones pass.
pub fn body_format(headers: &HeaderMap, accepted: &[BodyFormat]) -> Result<BodyFormat, ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not text)"))
        .unwrap_or("");
    let essence = given
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let format = match essence.as_str() {
        "application/json" => Some(BodyFormat::Json),
        e if e.starts_with("application/") && e.ends_with("+json") => Some(BodyFormat::Json),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
            Some(BodyFormat::Ndjson)
        }
        _ => None,
    };
    match format {
        Some(f) if accepted.contains(&f) => Ok(f),
        _ => {
            let names: Vec<&str> = accepted
                .iter()
                .map(|f| match f {
                    BodyFormat::Json => "application/json",
                    BodyFormat::Ndjson => "application/x-ndjson",
                })
                .collect();
            Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Type {:?} is not read here; send {}",
                    given,
                    names.join(" or ")
                ),
            )
            .at("Content-Type"))
        }
    }
}

/// Reads the whole body, refusing one over [`BODY_BYTES_MAX`] (by its
/// declared length at once, else as soon as it grows past it). A refused
/// body is read on and dropped (up to [`BODY_DRAIN_BYTES_MAX`]) so a client
/// that sends it all before it reads the answer sees the 413 rather than a
/// broken connection; one that asked `Expect: 100-continue` is answered at
/// once and sends nothing.
pub async fn read_body(headers: &HeaderMap, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let too_large = |found: String| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::TOO_LARGE,
            format!("the body is {found} bytes, over the limit of {BODY_BYTES_MAX}"),
        )
        .at("body")
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let waits_for_us = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if let Some(length) = declared
        && length > BODY_BYTES_MAX as u64
    {
        if !waits_for_us && length <= BODY_DRAIN_BYTES_MAX as u64 {
            drain(body).await;
        }
        return Err(too_large(length.to_string()));
    }
    let mut body = body;
    // Declared lengths over the limit were refused above.
    let mut bytes: Vec<u8> = Vec::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                code::INVALID_JSON,
                format!("cannot read the body: {e}"),
            )
            .at("body")
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if bytes.len() + data.len() > BODY_BYTES_MAX {
            drain(body).await;
            return Err(too_large("more than that".to_string()));
        }
        bytes.extend_from_slice(&data);
    }
    Ok(axum::body::Bytes::from(bytes))
}

/// Reads and drops what is left of a refused body, up to
/// [`BODY_DRAIN_BYTES_MAX`] in all; beyond that the connection is closed
/// on the client instead.
async fn drain(mut body: Body) {
    let mut drained = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            drained += data.len();
        }
        if drained > BODY_DRAIN_BYTES_MAX {
            return;
        }
    }
}

/// Decodes `text` as `T`. A syntax error is `invalid_json` with its line
/// and column; a value that does not fit is `invalid_field` naming the field
/// by its path (`[3].type`) under `prefix`.
pub fn decode_json<'a, T: serde::Deserialize<'a>>(
    text: &'a [u8],
    prefix: &str,
) -> Result<T, ApiError> {
    // Tracking the path costs on every field; it is only needed to name
    // the field of an error, so a body is decoded again with it only then.
    if let Ok(value) = serde_json::from_slice(text) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let value: T =
        serde_path_to_error::deserialize(&mut deserializer).map_err(|e| json_error(&e, prefix))?;
    deserializer.end().map_err(|e| syntax_error(&e, prefix))?;
    Ok(value)
}

fn syntax_error(inner: &serde_json::Error, prefix: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        code::INVALID_JSON,
        format!("the body is not valid JSON: {inner}"),
    )
    .at(if prefix.is_empty() { "body" } else { prefix })
}

fn json_error(e: &serde_path_to_error::Error<serde_json::Error>, prefix: &str) -> ApiError {
    let inner = e.inner();
    if inner.is_syntax() || inner.is_eof() {
        return syntax_error(inner, prefix);
    }
    let field = field_path(prefix, &e.path().to_string(), &inner.to_string());
    ApiError::field(field.clone(), format!("{}: {inner}", field_label(&field)))
}

fn field_label(field: &str) -> String {
    if field.is_empty() {
        "the body".to_string()
    } else {
        format!("field {field}")
    }
}

/// The path of the field at fault: the decoder's path, plus the name of a
/// missing or unknown field (which the decoder reports at its parent).
fn field_path(prefix: &str, path: &str, message: &str) -> String {
    let mut field = String::from(prefix);
    if path != "." {
        if !field.is_empty() && !path.starts_with('[') {
            field.push('.');
        }
        field.push_str(path);
    }
    for marker in ["unknown field `", "missing field `", "duplicate field `"] {
        if let Some(rest) = message.split(marker).nth(1)
            && let Some(name) = rest.split('`').next()
        {
            // Unknown fields are reported at themselves, missing ones at
            // their parent.
            if field == name || field.ends_with(&format!(".{name}")) {
                break;
            }
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(name);
            break;
        }
    }
    field
}

/// A query string's parameters, each taken at most once by name; what is
/// left when the handler is done is refused.
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Parses a raw query string (`None`: no `?`).
    pub fn parse(raw: Option<&str>) -> Result<Params, ApiError> {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|e| {
                ApiError::parameter("query", format!("the query string does not parse: {e}"))
            })?;
        Ok(Params { pairs })
    }

    /// Every value of `name` (a repeatable parameter), removed.
    pub fn all(&mut self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.pairs.retain(|(k, v)| {
            if k == name {
                out.push(v.clone());
                false
            } else {
                true
            }
        });
        out
    }

    /// The value of `name`, if given; refused if given twice.
    pub fn one(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        let mut values = self.all(name);
        if values.len() > 1 {
            return Err(ApiError::parameter(
                name,
                format!(
                    "parameter {name} is given {} times; give it once",
                    values.len()
                ),
            ));
        }
        Ok(values.pop())
    }

    /// `name` as a whole number within `min..=max`, if given.
    pub fn number(&mut self, name: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        let Some(text) = self.one(name)? else {
            return Ok(None);
        };
        match text.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::parameter(
                name,
                format!("parameter {name} is {text:?}; give a whole number from {min} to {max}"),
            )),
        }
    }

    /// Refuses any parameter not taken yet.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.pairs.first() {
            None => Ok(()),
            Some((name, _)) => Err(ApiError::parameter(
                name.clone(),
                format!(
                    "unknown parameter {name:?}; see /v1/openapi.json for this endpoint's parameters"
                ),
            )),
        }
    }
}

/// Parses a start point: `start`, `now` or an RFC 3339 timestamp.
pub fn parse_from(text: &str) -> Result<StartFrom, String> {
    match text {
        "start" => return Ok(StartFrom::Start),
        "now" => return Ok(StartFrom::Now),
        _ => {}
    }
    let bad = |reason: String| {
        format!(
            "{text:?} is not start, now or an RFC 3339 timestamp (like 2025-01-31T12:00:00Z): {reason}"
        )
    };
    let time = humantime::parse_rfc3339_weak(text).map_err(|e| bad(e.to_string()))?;
    let us = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad("it is before 1970".into()))?
        .as_micros();
    match u64::try_from(us) {
        Ok(us) if us <= TIMESTAMP_US_MAX => Ok(StartFrom::Timestamp(us)),
        _ => Err(bad("it is too far in the future".into())),
    }
}

/// Where a read begins, as a request may say it: after a position it
/// already has, or from a start point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// After this position (exclusive).
    After(u64),
    From(StartFrom),
}

/// The start a stream or read asks for: the `Last-Event-ID` header (an SSE
/// client resuming) first, then `after=P`, then `from=start|now|TIME`; the
/// two parameters together are refused.
pub fn start_of(
    headers: &HeaderMap,
    params: &mut Params,
    default: Option<Start>,
) -> Result<Option<Start>, ApiError> {
    let after = params.number("after", 0, i64::MAX as u64)?;
    let from = params.one("from")?;
    if after.is_some() && from.is_some() {
        return Err(ApiError::parameter(
            "from",
            "give either after (a position) or from (start, now or a time), not both",
        ));
    }
    if let Some(id) = headers.get("last-event-id") {
        let text = id.to_str().unwrap_or("");
        return match text.trim().parse::<u64>() {
            Ok(position) => Ok(Some(Start::After(position))),
            Err(_) => Err(ApiError::parameter(
                "Last-Event-ID",
                format!("Last-Event-ID {text:?} is not a position this API sent (a whole number)"),
            )),
        };
    }
    if let Some(position) = after {
        return Ok(Some(Start::After(position)));
    }
    if let Some(text) = from {
        return parse_from(&text)
            .map(|f| Some(Start::From(f)))
            .map_err(|e| ApiError::parameter("from", format!("parameter from: {e}")));
    }
    Ok(default)
}

/// Checks a type pattern: 1 to 128 printable ASCII characters without
/// spaces, as event types are (`*` and `?` are wildcards).
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    crate::core::codec::check_event_type(pattern).map_err(|e| {
        format!(
            "type pattern {pattern:?}: {}",
            e.replace("event type", "it")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        #[serde(rename = "type")]
        event_type: String,
        count: Option<u32>,
    }

    #[test]
    fn json_errors_name_the_field_by_its_path() {
        let e =
            decode_json::<Vec<Item>>(br#"[{"type":"a"},{"type":"b","bogus":1}]"#, "").unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            (code::INVALID_FIELD, Some("[1].bogus"))
        );
        let e = decode_json::<Vec<Item>>(br#"[{"type":"a"},{"count":2}]"#, "").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("[1].type"), "{e}");
        let e = decode_json::<Item>(br#"{"type":"a","count":"x"}"#, "").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("count"), "{e}");
        let e = decode_json::<Item>(br#"{"type":"a""#, "").unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            (code::INVALID_JSON, Some("body"))
        );
        let e = decode_json::<Item>(br#"{"type":"a"} {}"#, "").unwrap_err();
        assert_eq!(e.code, code::INVALID_JSON, "trailing text is refused");
        let e = decode_json::<Item>(br#"{"type":7}"#, "[4]").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("[4].type"), "{e}");
    }

    #[test]
    fn unknown_and_repeated_parameters_are_refused() {
        let mut p = Params::parse(Some("type=a.*&type=b&limit=5&bogus=1")).unwrap();
        assert_eq!(p.all("type"), ["a.*", "b"]);
        assert_eq!(p.number("limit", 1, 10).unwrap(), Some(5));
        assert_eq!(p.finish().unwrap_err().field.as_deref(), Some("bogus"));
        let mut p = Params::parse(Some("limit=0")).unwrap();
        assert!(p.number("limit", 1, 10).is_err());
        let mut p = Params::parse(Some("after=1&after=2")).unwrap();
        assert!(p.one("after").is_err());
    }

    #[test]
    fn start_prefers_last_event_id_and_refuses_after_with_from() {
        let mut headers = HeaderMap::new();
        let mut p = Params::parse(Some("from=start")).unwrap();
        assert_eq!(
            start_of(&headers, &mut p, None).unwrap(),
            Some(Start::From(StartFrom::Start))
        );
        headers.insert("last-event-id", "42".parse().unwrap());
        let mut p = Params::parse(Some("from=now")).unwrap();
        assert_eq!(
            start_of(&headers, &mut p, None).unwrap(),
            Some(Start::After(42))
        );
        let mut p = Params::parse(Some("after=3&from=now")).unwrap();
        assert!(start_of(&HeaderMap::new(), &mut p, None).is_err());
        let mut p = Params::parse(Some("from=2025-01-31T12:00:00Z")).unwrap();
        assert!(matches!(
            start_of(&HeaderMap::new(), &mut p, None).unwrap(),
            Some(Start::From(StartFrom::Timestamp(_)))
        ));
        headers.insert("last-event-id", "x".parse().unwrap());
        let e = start_of(&headers, &mut Params::parse(None).unwrap(), None).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("Last-Event-ID"));
    }
}
