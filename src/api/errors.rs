//! The one error shape every endpoint answers with:
//! `{"error": {"code": "...", "message": "...", "field": "..."}}`, with a
//! 4xx status for what the client can fix and 5xx for the node's own faults.
//! `code` is stable (clients branch on it), `message` says what, where and
//! why, `field` names the body field, query parameter or header at fault
//! (absent when none is).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::{LogError, SubscriptionError};

/// The stable error codes (`error.code`), with the status each goes with.
pub mod code {
    /// 400: the body is not JSON (or a line of NDJSON is not).
    pub const INVALID_JSON: &str = "invalid_json";
    /// 400: a body field is missing, unknown or has a bad value.
    pub const INVALID_FIELD: &str = "invalid_field";
    /// 400: a query parameter or header is unknown or has a bad value.
    pub const INVALID_PARAMETER: &str = "invalid_parameter";
    /// 400: the event names a channel this node holds no key for.
    pub const UNKNOWN_CHANNEL: &str = "unknown_channel";
    /// 403: the caller's client certificate lacks the permission `field`
    /// names (`publish`, `read_channels`, `queries`, `sagas`, `admin`), or
    /// has no `[[api.clients]]` entry (`field` is `client`).
    pub const FORBIDDEN: &str = "forbidden";
    /// 404: no such route, event, feed, consumer or saga.
    pub const NOT_FOUND: &str = "not_found";
    /// 405: the route exists, the method does not.
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// 409: the consumer exists with other types (give `from` or `after`
    /// to redefine it), or was redefined or deleted meanwhile.
    pub const CONFLICT: &str = "conflict";
    /// 409: [`CONSUMERS_MAX`](crate::api::CONSUMERS_MAX) consumers exist.
    pub const TOO_MANY_CONSUMERS: &str = "too_many_consumers";
    /// 413: the body is over [`BODY_BYTES_MAX`](crate::api::BODY_BYTES_MAX)
    /// or holds more than [`PUBLISH_EVENTS_MAX`](crate::api::PUBLISH_EVENTS_MAX) events.
    pub const TOO_LARGE: &str = "too_large";
    /// 415: the body's content type is not one the endpoint reads.
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    /// 422: `POST /v1/reload` refused the node's new trust files (the
    /// message names the file and why); nothing changed.
    pub const RELOAD_REFUSED: &str = "reload_refused";
    /// 429: [`STREAMS_MAX`](crate::api::STREAMS_MAX) streams are open.
    pub const TOO_MANY_STREAMS: &str = "too_many_streams";
    /// 500: the store failed (the message says how); nothing is known to
    /// be written unless the answer carries receipts.
    pub const STORE_ERROR: &str = "store_error";
    /// 500: anything else that is the node's fault.
    pub const INTERNAL: &str = "internal";
    /// 503: the node cannot proclaim yet (it recovers its own feed from its
    /// peers) or is shutting down; retry later.
    pub const UNAVAILABLE: &str = "unavailable";
}

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Receipts of events made durable before a publish failed part-way:
    /// sent beside the error, so the client knows what was written.
    pub receipts: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    receipts: Option<&'a serde_json::Value>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            receipts: None,
        }
    }

    /// Names the field, parameter or header at fault.
    pub fn at(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    /// 400 `invalid_field` naming `field`.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code::INVALID_FIELD, message).at(field)
    }

    /// 400 `invalid_parameter` naming the query parameter or header.
    pub fn parameter(name: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code::INVALID_PARAMETER, message).at(name)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code::NOT_FOUND, message)
    }

    /// 500 `internal`.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, code::INTERNAL, message)
    }

    /// 503 `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE, message)
    }

    /// A blocking task that did not finish (panicked or was cancelled).
    pub fn task(what: &str, e: tokio::task::JoinError) -> ApiError {
        ApiError::internal(format!("{what}: the task failed: {e}"))
    }

    /// The error as its JSON text (also the `data` of an SSE `error` event).
    pub fn to_json(&self) -> String {
        let body = Body {
            error: Detail {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
            receipts: self.receipts.as_ref(),
        };
        serde_json::to_string(&body).unwrap_or_else(|_| {
            r#"{"error":{"code":"internal","message":"cannot encode the error"}}"#.to_string()
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, code = self.code, message = %self.message, "API request failed");
        }
        json_response(self.status, self.to_json())
    }
}

/// A JSON response with `status` and a body already encoded.
pub fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> ApiError {
        match &e {
            LogError::CannotProclaim(_)
            | LogError::WriterGone
            | LogError::CertificateExpired { .. } => ApiError::unavailable(e.to_string()),
            LogError::UnknownChannel { .. } => ApiError::new(
                StatusCode::BAD_REQUEST,
                code::UNKNOWN_CHANNEL,
                e.to_string(),
            )
            .at("channel"),
            LogError::Draft(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, code::INVALID_FIELD, e.to_string())
            }
            LogError::Subscription(SubscriptionError::InvalidPattern { .. }) => {
                ApiError::parameter("type", e.to_string())
            }
            LogError::Subscription(SubscriptionError::InvalidConsumer { .. }) => {
                ApiError::parameter("name", e.to_string())
            }
            _ => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                code::STORE_ERROR,
                e.to_string(),
            ),
        }
    }
}

/// The answer to a path no route serves.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no endpoint at {}; see /v1/openapi.json for the API",
        uri.path()
    ))
}

/// The answer to a method a route does not serve.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        code::METHOD_NOT_ALLOWED,
        format!(
            "{} {} is not served; see /v1/openapi.json for the methods of each endpoint",
            method,
            uri.path()
        ),
    )
}
