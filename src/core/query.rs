//! Synchronous queries (`ImmediateQueryCommand` / `QueryResultEvent`), sans-IO.
//!
//! A caller sends a [`QueryRequest`] to one target node with a deadline. The
//! target answers with a [`SignedQueryResult`]: the canonical postcard bytes of
//! a [`QueryResultBody`] and the responder's Ed25519 signature over them.
//!
//! Signing rule (see `docs/QUERIES.md`):
//!
//! ```text
//! body      = postcard(QueryResultBody)              (canonical: one encoding)
//! message   = QUERY_RESULT_TAG ‖ SHA-256(body)       (23 + 32 bytes)
//! signature = Ed25519(responder key, message)        (verified by herald's cofactored rule)
//! ```
//!
//! The domain tag keeps a query signature from ever being taken for an event
//! signature (`herald/v1/event-signature\0`) or any other herald signature:
//! every tag is distinct and NUL-terminated, so no message of one kind is a
//! message of another. Hashing the body first keeps the signed message a
//! fixed size, as for events.
//!
//! [`verify_result`] checks size, signature, canonical decoding, field limits
//! and that the body answers *this* request (request id, responder, caller,
//! query type, correlation id). Statuses the caller decides itself
//! ([`QueryStatus::Unreachable`], and a [`QueryStatus::Timeout`] the caller's
//! own deadline produced) are [`QueryOutcome`]s with `signed_by_responder:
//! false`; a responder may sign `Timeout` (its handler overran) but never
//! `Unreachable`.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::cert::{AuthorCert, CertError};
use super::codec::{check_service_name, is_uuid_v7};
use super::crypto::sha256;

/// Longest query type, in bytes (printable ASCII without spaces).
pub const QUERY_TYPE_BYTES_MAX: usize = 128;
/// Largest query payload, in either direction.
pub const QUERY_PAYLOAD_BYTES_MAX: usize = 64 * 1024;
/// Longest deadline a caller may ask for.
pub const QUERY_TIMEOUT_MS_MAX: u32 = 60_000;
/// Longest correlation id, in bytes (printable ASCII without spaces; may be empty).
pub const CORRELATION_ID_BYTES_MAX: usize = 256;
/// Room for everything in a request or result besides the payload (ids,
/// names, query type, correlation id, status, timestamp, postcard lengths).
pub const QUERY_FIELDS_BYTES_MAX: usize = 1024;
/// Largest encoded [`QueryRequest`].
pub const QUERY_REQUEST_BYTES_MAX: usize = QUERY_PAYLOAD_BYTES_MAX + QUERY_FIELDS_BYTES_MAX;
/// Largest encoded [`QueryResultBody`] (the bytes a responder signs).
pub const QUERY_RESULT_BYTES_MAX: usize = QUERY_PAYLOAD_BYTES_MAX + QUERY_FIELDS_BYTES_MAX;
/// Largest encoded [`SignedQueryResult`]: the body, the signature, framing.
pub const SIGNED_QUERY_RESULT_BYTES_MAX: usize = QUERY_RESULT_BYTES_MAX + 64 + 16;
/// Domain tag for the responder's signature: `TAG ‖ SHA-256(body)`.
pub const QUERY_RESULT_TAG: &[u8] = b"herald/v1/query-result\0";

/// An `ImmediateQueryCommand`: what a caller asks one target node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct QueryRequest {
    /// UUID v7 chosen by the caller; the result must echo it.
    pub id: [u8; 16],
    /// The calling service (checked by the network layer against the peer's
    /// certificate; the result must echo it).
    pub caller: String,
    /// The service asked; the result must be signed by it.
    pub target: String,
    /// Which handler answers (`herald.head`, `inventory.stock`, ...).
    pub query_type: String,
    /// The caller's correlation id, echoed in the result.
    pub correlation_id: String,
    /// Handler input, at most [`QUERY_PAYLOAD_BYTES_MAX`] bytes.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Deadline in milliseconds, 1 to [`QUERY_TIMEOUT_MS_MAX`].
    pub timeout_ms: u32,
}

/// How a query ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryStatus {
    /// The handler answered; the payload is its result.
    Success,
    /// The handler found nothing; the payload may say what was looked for.
    NotFound,
    /// The request was invalid or the handler failed; the payload is a reason (UTF-8).
    Error,
    /// The responder has no handler for the query type.
    NoHandler,
    /// The deadline passed (the responder's handler overran, or the caller
    /// gave up waiting).
    Timeout,
    /// The caller could not reach the target. Never signed by a responder.
    Unreachable,
}

/// The signed part of a `QueryResultEvent`. Field order is the wire order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct QueryResultBody {
    /// The [`QueryRequest::id`] this answers.
    pub request_id: [u8; 16],
    /// The service that answered and signed.
    pub responder: String,
    /// The caller the answer is for.
    pub caller: String,
    pub query_type: String,
    pub correlation_id: String,
    pub status: QueryStatus,
    /// Result bytes (or a UTF-8 reason for `Error`, `NoHandler`, `Timeout`).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// When the responder answered: microseconds since the Unix epoch, UTC.
    pub timestamp_us: u64,
}

/// A `QueryResultEvent` as sent: the canonical body bytes and the responder's
/// signature over `QUERY_RESULT_TAG ‖ SHA-256(body)`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SignedQueryResult {
    /// `postcard(QueryResultBody)`, canonical.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// Ed25519 signature (64 bytes).
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

/// What the caller ends up with: a verified answer, or a status it decided
/// itself (`Timeout`, `Unreachable`), which nobody signed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct QueryOutcome {
    pub status: QueryStatus,
    pub payload: Vec<u8>,
    /// The responder (for local outcomes: the target that did not answer).
    pub responder: String,
    pub correlation_id: String,
    pub request_id: [u8; 16],
    /// When the responder answered, or when the caller gave up.
    pub timestamp_us: u64,
    /// `true` only for a body that passed [`verify_result`].
    pub signed_by_responder: bool,
}

impl QueryOutcome {
    /// The outcome of a verified result.
    pub fn verified(body: QueryResultBody) -> QueryOutcome {
        QueryOutcome {
            status: body.status,
            payload: body.payload,
            responder: body.responder,
            correlation_id: body.correlation_id,
            request_id: body.request_id,
            timestamp_us: body.timestamp_us,
            signed_by_responder: true,
        }
    }

    /// The caller's deadline passed without a verified answer.
    pub fn timeout(request: &QueryRequest, now_us: u64) -> QueryOutcome {
        let reason = format!("no answer within {} ms", request.timeout_ms);
        QueryOutcome::local(request, QueryStatus::Timeout, reason, now_us)
    }

    /// The caller could not reach the target (`reason` says why).
    pub fn unreachable(request: &QueryRequest, reason: &str, now_us: u64) -> QueryOutcome {
        QueryOutcome::local(request, QueryStatus::Unreachable, reason.into(), now_us)
    }

    fn local(
        request: &QueryRequest,
        status: QueryStatus,
        reason: String,
        now_us: u64,
    ) -> QueryOutcome {
        QueryOutcome {
            status,
            payload: reason.into_bytes(),
            responder: request.target.clone(),
            correlation_id: request.correlation_id.clone(),
            request_id: request.id,
            timestamp_us: now_us,
            signed_by_responder: false,
        }
    }
}

/// Why a request or result is refused. Messages name the value and the reason.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("query request field {field} is invalid: {reason}")]
    RequestField { field: &'static str, reason: String },
    #[error("{what} is {found} bytes, over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        found: usize,
        limit: usize,
    },
    #[error("{what} is not decodable: {reason}")]
    Decode { what: &'static str, reason: String },
    #[error("{what} has {found} trailing bytes")]
    TrailingBytes { what: &'static str, found: usize },
    #[error("{what} is not in canonical form")]
    NotCanonical { what: &'static str },
    #[error("query result signature does not verify with the key of {responder}")]
    BadSignature { responder: String },
    #[error("query result field {field} is invalid: {reason}")]
    ResultField { field: &'static str, reason: String },
    #[error("query result answers another query: {field} is {found}, the request has {expected}")]
    Mismatch {
        field: &'static str,
        expected: String,
        found: String,
    },
    #[error("certificate of {cert_service} cannot verify an answer from {target}")]
    WrongCertificate {
        cert_service: String,
        target: String,
    },
    #[error("responder certificate: {0}")]
    Certificate(#[from] CertError),
}

/// Checks a query type: 1 to [`QUERY_TYPE_BYTES_MAX`] printable ASCII
/// characters without spaces.
pub fn check_query_type(query_type: &str) -> Result<(), String> {
    if query_type.is_empty() || query_type.len() > QUERY_TYPE_BYTES_MAX {
        return Err(format!(
            "query type must be 1 to {QUERY_TYPE_BYTES_MAX} bytes, found {}",
            query_type.len()
        ));
    }
    if !query_type.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "query type {query_type:?} must be printable ASCII without spaces"
        ));
    }
    Ok(())
}

/// Why a handler cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("query type {query_type:?} is invalid: {reason}")]
    QueryType { query_type: String, reason: String },
    #[error("query type {0:?} is reserved for herald's built-in queries")]
    Reserved(String),
    #[error("query type {0:?} already has a handler")]
    Duplicate(String),
    #[error("handler for {query_type:?} has an empty command")]
    EmptyCommand { query_type: String },
    #[error("handler for {query_type:?} has timeout_ms {timeout_ms}, it must be 1 to {max}")]
    Timeout {
        query_type: String,
        timeout_ms: u32,
        max: u32,
    },
}

/// Checks an exec handler's settings: the node checks them when a handler is
/// registered and the config when it is loaded, so they live here, below both.
pub fn check_exec_handler(
    query_type: &str,
    command: &[String],
    timeout_ms: Option<u32>,
) -> Result<(), RegisterError> {
    check_user_query_type(query_type)?;
    if command.first().is_none_or(|p| p.is_empty()) {
        return Err(RegisterError::EmptyCommand {
            query_type: query_type.into(),
        });
    }
    if let Some(timeout_ms) = timeout_ms
        && (timeout_ms == 0 || timeout_ms > QUERY_TIMEOUT_MS_MAX)
    {
        return Err(RegisterError::Timeout {
            query_type: query_type.into(),
            timeout_ms,
            max: QUERY_TIMEOUT_MS_MAX,
        });
    }
    Ok(())
}

/// Checks a query type a user handler may answer: valid, and not in the
/// `herald.*` namespace of the built-in queries.
pub fn check_user_query_type(query_type: &str) -> Result<(), RegisterError> {
    check_query_type(query_type).map_err(|reason| RegisterError::QueryType {
        query_type: query_type.into(),
        reason,
    })?;
    if query_type.starts_with(super::event::RESERVED_TYPE_PREFIX) {
        return Err(RegisterError::Reserved(query_type.into()));
    }
    Ok(())
}

/// Checks a correlation id: at most [`CORRELATION_ID_BYTES_MAX`] printable
/// ASCII characters without spaces (empty is allowed).
pub fn check_correlation_id(id: &str) -> Result<(), String> {
    if id.len() > CORRELATION_ID_BYTES_MAX {
        return Err(format!(
            "{} bytes, over the limit of {CORRELATION_ID_BYTES_MAX}",
            id.len()
        ));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{id:?} must be printable ASCII without spaces"));
    }
    Ok(())
}

/// Checks every limit and name rule of a request.
pub fn validate_request(r: &QueryRequest) -> Result<(), QueryError> {
    let field = |field: &'static str, reason: String| QueryError::RequestField { field, reason };
    if !is_uuid_v7(&r.id) {
        return Err(field(
            "id",
            format!("{} is not a UUID v7", hex::encode(r.id)),
        ));
    }
    check_service_name(&r.caller).map_err(|e| field("caller", e))?;
    check_service_name(&r.target).map_err(|e| field("target", e))?;
    check_query_type(&r.query_type).map_err(|e| field("query_type", e))?;
    check_correlation_id(&r.correlation_id).map_err(|e| field("correlation_id", e))?;
    if r.payload.len() > QUERY_PAYLOAD_BYTES_MAX {
        return Err(field(
            "payload",
            format!(
                "{} bytes, over the limit of {QUERY_PAYLOAD_BYTES_MAX}",
                r.payload.len()
            ),
        ));
    }
    if r.timeout_ms == 0 || r.timeout_ms > QUERY_TIMEOUT_MS_MAX {
        return Err(field(
            "timeout_ms",
            format!("{} must be 1 to {QUERY_TIMEOUT_MS_MAX}", r.timeout_ms),
        ));
    }
    Ok(())
}

/// Encodes a request for the wire (canonical postcard).
pub fn encode_request(r: &QueryRequest) -> Vec<u8> {
    // postcard serialisation of plain data into a Vec cannot fail.
    postcard::to_stdvec(r).unwrap_or_default()
}

/// Decodes a request from untrusted bytes: size first, then canonical form,
/// then [`validate_request`].
pub fn decode_request(bytes: &[u8]) -> Result<QueryRequest, QueryError> {
    let request: QueryRequest = decode_canonical("query request", bytes, QUERY_REQUEST_BYTES_MAX)?;
    validate_request(&request)?;
    Ok(request)
}

/// Encodes a signed result for the wire (canonical postcard).
pub fn encode_signed_result(s: &SignedQueryResult) -> Vec<u8> {
    postcard::to_stdvec(s).unwrap_or_default()
}

/// Decodes a signed result from untrusted bytes (size and canonical form only;
/// [`verify_result`] does the rest).
pub fn decode_signed_result(bytes: &[u8]) -> Result<SignedQueryResult, QueryError> {
    decode_canonical("signed query result", bytes, SIGNED_QUERY_RESULT_BYTES_MAX)
}

/// The message a responder signs: `QUERY_RESULT_TAG ‖ SHA-256(body)`.
pub fn result_signing_message(body: &[u8]) -> Vec<u8> {
    [QUERY_RESULT_TAG, &sha256(&[body])].concat()
}

/// Encodes `body` canonically and signs it. The caller keeps the body within
/// limits (the node's registry does); [`verify_result`] refuses it otherwise.
pub fn sign_result(key: &SigningKey, body: &QueryResultBody) -> SignedQueryResult {
    let body = postcard::to_stdvec(body).unwrap_or_default();
    let signature = key.sign(&result_signing_message(&body)).to_bytes();
    SignedQueryResult { body, signature }
}

/// Verifies a result with the responder's public key (taken from its
/// certificate, already admitted through the trust anchor: see
/// [`verify_result_with_cert`]), decodes the body canonically, checks its
/// limits and that it answers `request`. Returns the body.
pub fn verify_result(
    signed: &SignedQueryResult,
    responder_key: &VerifyingKey,
    request: &QueryRequest,
) -> Result<QueryResultBody, QueryError> {
    if signed.body.len() > QUERY_RESULT_BYTES_MAX {
        return Err(QueryError::TooLarge {
            what: "query result body",
            found: signed.body.len(),
            limit: QUERY_RESULT_BYTES_MAX,
        });
    }
    // Signature before decoding: unsigned bytes are never parsed further.
    // herald's one signature rule (cofactored, `core::signature`), as for
    // events and export end records: one verdict per signature everywhere.
    let signature = Signature::from_bytes(&signed.signature);
    if !super::signature::verify_single(
        responder_key,
        &result_signing_message(&signed.body),
        &signature,
    ) {
        return Err(QueryError::BadSignature {
            responder: request.target.clone(),
        });
    }
    let body: QueryResultBody =
        decode_canonical("query result body", &signed.body, QUERY_RESULT_BYTES_MAX)?;
    check_result_fields(&body)?;
    check_answers(&body, request)?;
    Ok(body)
}

/// [`verify_result`] with the responder's admitted certificate: the
/// certificate must name the request's target and be valid at `now_us`.
pub fn verify_result_with_cert(
    signed: &SignedQueryResult,
    cert: &AuthorCert,
    request: &QueryRequest,
    now_us: u64,
) -> Result<QueryResultBody, QueryError> {
    if cert.service != request.target {
        return Err(QueryError::WrongCertificate {
            cert_service: cert.service.clone(),
            target: request.target.clone(),
        });
    }
    cert.check_time(now_us)?;
    // Admission already checked the key; a failure here is still refused.
    let key = VerifyingKey::from_bytes(&cert.public_key).map_err(|_| {
        QueryError::Certificate(CertError::WeakKey {
            key: hex::encode(cert.public_key),
        })
    })?;
    verify_result(signed, &key, request)
}

fn check_result_fields(body: &QueryResultBody) -> Result<(), QueryError> {
    let field = |field: &'static str, reason: String| QueryError::ResultField { field, reason };
    if body.status == QueryStatus::Unreachable {
        return Err(field(
            "status",
            "Unreachable is decided by the caller; a responder cannot sign it".into(),
        ));
    }
    if body.payload.len() > QUERY_PAYLOAD_BYTES_MAX {
        return Err(field(
            "payload",
            format!(
                "{} bytes, over the limit of {QUERY_PAYLOAD_BYTES_MAX}",
                body.payload.len()
            ),
        ));
    }
    Ok(())
}

fn check_answers(body: &QueryResultBody, request: &QueryRequest) -> Result<(), QueryError> {
    let mismatch = |field: &'static str, expected: &str, found: &str| QueryError::Mismatch {
        field,
        expected: format!("{expected:?}"),
        found: format!("{found:?}"),
    };
    if body.request_id != request.id {
        return Err(QueryError::Mismatch {
            field: "request_id",
            expected: hex::encode(request.id),
            found: hex::encode(body.request_id),
        });
    }
    if body.responder != request.target {
        return Err(mismatch("responder", &request.target, &body.responder));
    }
    if body.caller != request.caller {
        return Err(mismatch("caller", &request.caller, &body.caller));
    }
    if body.query_type != request.query_type {
        return Err(mismatch(
            "query_type",
            &request.query_type,
            &body.query_type,
        ));
    }
    if body.correlation_id != request.correlation_id {
        return Err(mismatch(
            "correlation_id",
            &request.correlation_id,
            &body.correlation_id,
        ));
    }
    Ok(())
}

/// Decodes `T` from untrusted bytes: size before anything is allocated, no
/// trailing bytes, and the one canonical encoding.
fn decode_canonical<T>(what: &'static str, bytes: &[u8], limit: usize) -> Result<T, QueryError>
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    if bytes.len() > limit {
        return Err(QueryError::TooLarge {
            what,
            found: bytes.len(),
            limit,
        });
    }
    let (value, rest): (T, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| QueryError::Decode {
            what,
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(QueryError::TrailingBytes {
            what,
            found: rest.len(),
        });
    }
    if postcard::to_stdvec(&value).unwrap_or_default() != bytes {
        return Err(QueryError::NotCanonical { what });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn uuid_v7(fill: u8) -> [u8; 16] {
        let mut id = [fill; 16];
        id[6] = 0x70 | (fill & 0x0f);
        id[8] = 0x80 | (fill & 0x3f);
        id
    }

    fn request() -> QueryRequest {
        QueryRequest {
            id: uuid_v7(0x11),
            caller: "alpha".into(),
            target: "beta".into(),
            query_type: "inventory.stock".into(),
            correlation_id: "order-42".into(),
            payload: b"{\"sku\":\"x\"}".to_vec(),
            timeout_ms: 500,
        }
    }

    fn body_for(r: &QueryRequest) -> QueryResultBody {
        QueryResultBody {
            request_id: r.id,
            responder: r.target.clone(),
            caller: r.caller.clone(),
            query_type: r.query_type.clone(),
            correlation_id: r.correlation_id.clone(),
            status: QueryStatus::Success,
            payload: b"{\"stock\":7}".to_vec(),
            timestamp_us: 1_700_000_000_000_000,
        }
    }

    #[test]
    fn query_sign_verify_round_trip() {
        let r = request();
        let body = body_for(&r);
        let signed = sign_result(&key(1), &body);
        let got = verify_result(&signed, &key(1).verifying_key(), &r).expect("verifies");
        assert_eq!(got, body);
        let wire = encode_signed_result(&signed);
        assert_eq!(decode_signed_result(&wire).expect("decodes"), signed);
        let outcome = QueryOutcome::verified(got);
        assert!(outcome.signed_by_responder);
        assert_eq!(outcome.status, QueryStatus::Success);
    }

    #[test]
    fn query_result_from_another_key_is_refused() {
        let r = request();
        let signed = sign_result(&key(1), &body_for(&r));
        let e = verify_result(&signed, &key(2).verifying_key(), &r).unwrap_err();
        assert!(matches!(e, QueryError::BadSignature { .. }), "{e}");
    }

    #[test]
    fn query_every_single_byte_change_fails() {
        let r = request();
        let signed = sign_result(&key(1), &body_for(&r));
        let vk = key(1).verifying_key();
        for mask in [0x01u8, 0x80, 0xff] {
            for i in 0..signed.body.len() {
                let mut t = signed.clone();
                t.body[i] ^= mask;
                assert!(
                    verify_result(&t, &vk, &r).is_err(),
                    "body byte {i} ^ {mask:#x}"
                );
            }
            for i in 0..64 {
                let mut t = signed.clone();
                t.signature[i] ^= mask;
                assert!(
                    verify_result(&t, &vk, &r).is_err(),
                    "sig byte {i} ^ {mask:#x}"
                );
            }
        }
        // Appended and removed bytes too.
        let mut t = signed.clone();
        t.body.push(0);
        assert!(verify_result(&t, &vk, &r).is_err());
        let mut t = signed;
        t.body.pop();
        assert!(verify_result(&t, &vk, &r).is_err());
    }

    #[test]
    fn query_result_for_another_request_is_refused() {
        let r = request();
        let vk = key(1).verifying_key();
        type Change = Box<dyn Fn(&mut QueryResultBody)>;
        let cases: Vec<(&str, Change)> = vec![
            ("request_id", Box::new(|b| b.request_id = uuid_v7(0x22))),
            ("responder", Box::new(|b| b.responder = "gamma".into())),
            ("caller", Box::new(|b| b.caller = "gamma".into())),
            ("query_type", Box::new(|b| b.query_type = "other".into())),
            (
                "correlation_id",
                Box::new(|b| b.correlation_id = "o-43".into()),
            ),
        ];
        for (name, change) in cases {
            let mut body = body_for(&r);
            change(&mut body);
            // Validly signed by the right key, but not an answer to `r`.
            let signed = sign_result(&key(1), &body);
            match verify_result(&signed, &vk, &r) {
                Err(QueryError::Mismatch { field, .. }) => assert_eq!(field, name),
                other => panic!("{name}: expected a mismatch, got {other:?}"),
            }
        }
    }

    #[test]
    fn query_signed_unreachable_is_refused() {
        let r = request();
        let mut body = body_for(&r);
        body.status = QueryStatus::Unreachable;
        let signed = sign_result(&key(1), &body);
        let e = verify_result(&signed, &key(1).verifying_key(), &r).unwrap_err();
        assert!(
            matches!(
                e,
                QueryError::ResultField {
                    field: "status",
                    ..
                }
            ),
            "{e}"
        );
        let local = QueryOutcome::unreachable(&r, "no route", 5);
        assert!(!local.signed_by_responder);
        assert_eq!(local.status, QueryStatus::Unreachable);
        let t = QueryOutcome::timeout(&r, 6);
        assert_eq!(
            (t.status, t.signed_by_responder),
            (QueryStatus::Timeout, false)
        );
    }

    #[test]
    fn query_oversized_result_is_refused() {
        let r = request();
        let mut body = body_for(&r);
        body.payload = vec![0; QUERY_PAYLOAD_BYTES_MAX + 1];
        let signed = sign_result(&key(1), &body);
        let e = verify_result(&signed, &key(1).verifying_key(), &r).unwrap_err();
        assert!(
            matches!(
                e,
                QueryError::ResultField {
                    field: "payload",
                    ..
                }
            ),
            "{e}"
        );
        body.payload = vec![0; QUERY_RESULT_BYTES_MAX];
        let signed = sign_result(&key(1), &body);
        let e = verify_result(&signed, &key(1).verifying_key(), &r).unwrap_err();
        assert!(matches!(e, QueryError::TooLarge { .. }), "{e}");
        // At the limit it is accepted.
        body.payload = vec![0; QUERY_PAYLOAD_BYTES_MAX];
        let signed = sign_result(&key(1), &body);
        assert!(verify_result(&signed, &key(1).verifying_key(), &r).is_ok());
    }

    #[test]
    fn query_request_limits() {
        assert_eq!(validate_request(&request()), Ok(()));
        let field_of = |r: &QueryRequest| match validate_request(r) {
            Err(QueryError::RequestField { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        };
        let mut r = request();
        r.id = [0x11; 16];
        assert_eq!(field_of(&r), "id");
        let mut r = request();
        r.caller = "Not A Name".into();
        assert_eq!(field_of(&r), "caller");
        let mut r = request();
        r.target = String::new();
        assert_eq!(field_of(&r), "target");
        let mut r = request();
        r.query_type = "q".repeat(QUERY_TYPE_BYTES_MAX);
        assert_eq!(validate_request(&r), Ok(()));
        r.query_type.push('q');
        assert_eq!(field_of(&r), "query_type");
        r.query_type = "has space".into();
        assert_eq!(field_of(&r), "query_type");
        let mut r = request();
        r.correlation_id = "c".repeat(CORRELATION_ID_BYTES_MAX + 1);
        assert_eq!(field_of(&r), "correlation_id");
        let mut r = request();
        r.payload = vec![0; QUERY_PAYLOAD_BYTES_MAX];
        assert_eq!(validate_request(&r), Ok(()));
        r.payload.push(0);
        assert_eq!(field_of(&r), "payload");
        let mut r = request();
        r.timeout_ms = 0;
        assert_eq!(field_of(&r), "timeout_ms");
        r.timeout_ms = QUERY_TIMEOUT_MS_MAX;
        assert_eq!(validate_request(&r), Ok(()));
        r.timeout_ms = QUERY_TIMEOUT_MS_MAX + 1;
        assert_eq!(field_of(&r), "timeout_ms");
    }

    #[test]
    fn query_request_codec_is_canonical_and_bounded() {
        let mut r = request();
        r.payload = vec![0xab; QUERY_PAYLOAD_BYTES_MAX];
        r.correlation_id = "c".repeat(CORRELATION_ID_BYTES_MAX);
        r.query_type = "q".repeat(QUERY_TYPE_BYTES_MAX);
        let bytes = encode_request(&r);
        assert!(bytes.len() <= QUERY_REQUEST_BYTES_MAX, "{}", bytes.len());
        assert_eq!(decode_request(&bytes), Ok(r));
        let mut trailing = encode_request(&request());
        trailing.push(0);
        assert!(matches!(
            decode_request(&trailing),
            Err(QueryError::TrailingBytes { .. })
        ));
        let big = vec![0u8; QUERY_REQUEST_BYTES_MAX + 1];
        assert!(matches!(
            decode_request(&big),
            Err(QueryError::TooLarge { .. })
        ));
        // A non-minimal varint for timeout_ms (500 as three bytes) decodes
        // to the same value but is not canonical.
        let good = encode_request(&request());
        let tail = &good[good.len() - 2..];
        assert_eq!(tail, &[0xf4, 0x03]);
        let mut padded = good[..good.len() - 2].to_vec();
        padded.extend_from_slice(&[0xf4, 0x83, 0x00]);
        assert!(matches!(
            decode_request(&padded),
            Err(QueryError::NotCanonical { .. })
        ));
    }

    #[test]
    fn query_signing_message_is_domain_separated() {
        let msg = result_signing_message(b"body");
        assert!(msg.starts_with(QUERY_RESULT_TAG));
        assert_eq!(msg.len(), QUERY_RESULT_TAG.len() + 32);
        assert_ne!(QUERY_RESULT_TAG, crate::core::crypto::SIGNATURE_TAG);
    }
}
