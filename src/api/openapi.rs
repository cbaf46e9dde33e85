//! The API's OpenAPI 3.1 document. It is written by hand in
//! `docs/openapi.json` (reviewed like code) and compiled in, so the node
//! serves exactly the checked-in file; `tests/api.rs` checks that every
//! route of [`ROUTES`](super::ROUTES) is described there and every described
//! operation is served.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The document, as checked in.
pub const DOCUMENT: &str = include_str!("../../docs/openapi.json");

/// `GET /v1/openapi.json`.
pub async fn document() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT,
    )
        .into_response()
}
