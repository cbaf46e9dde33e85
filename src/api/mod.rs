//! The node's HTTP/JSON API (`docs/API.md`, described by
//! `docs/openapi.json`): how services in any language publish, read,
//! subscribe (Server-Sent Events), consume durably, ask queries and run
//! sagas through their local node, the way a Dapr sidecar serves its
//! application.
//!
//! It runs inside the node (`[api] listen = "127.0.0.1:PORT"` in the node's
//! config; absent, there is none), on axum over hyper: plain HTTP on
//! loopback, HTTPS with client certificates anywhere, and optionally a Unix
//! socket ([`auth`], `config::ApiConfig`).
//!
//! Layout: [`server`] (state, router, the hooks for authentication and
//! `/metrics`, serving and shutdown), [`publish`], [`events`] (reads and the
//! event's JSON form), [`subscribe`] (SSE), [`consumers`] (durable
//! consumers), [`ops`] (queries, sagas, status, peers, health), [`errors`]
//! (the error JSON), [`input`] (bodies and query strings), [`openapi`],
//! [`console`] (the web page at `/`).
//!
//! Every limit is one of the constants below; `docs/API.md` lists them.

pub mod auth;
pub mod console;
pub mod consumers;
pub mod errors;
pub mod events;
pub mod input;
pub mod openapi;
pub mod ops;
pub mod publish;
pub mod server;
pub mod subscribe;

pub use errors::ApiError;
pub(crate) use server::spawn;
pub use server::{ApiStartError, ROUTES};

/// Largest request body, in bytes (16 MiB): a batch of
/// [`PUBLISH_EVENTS_MAX`] small events, or a few events of the largest
/// payload (1 MiB, base64 in JSON). A larger body is refused with 413 before
/// it is read to its end.
pub const BODY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// How much of a refused (over-limit) body is still read and dropped so the
/// client can read the 413 answer (64 MiB); a larger one has its connection
/// closed instead.
pub const BODY_DRAIN_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most events one publish request may carry. A batch is validated as a
/// whole before anything is written.
pub const PUBLISH_EVENTS_MAX: usize = 10_000;
/// Events per batch handed to the store's writer when publishing; a request
/// keeps all its batches in flight, so sealing one overlaps the commit of
/// the one before (as `herald publish --count` does).
pub const PUBLISH_CHUNK_EVENTS: usize = 256;
/// Largest publish body decoded on the async worker that received it
/// (64 KiB, well under a millisecond of decoding); a larger one is decoded
/// on a blocking thread so the worker's other connections are not held up.
pub const DECODE_INLINE_BYTES_MAX: usize = 64 * 1024;
/// Events a read returns when the request names no `limit`.
pub const PAGE_EVENTS_DEFAULT: usize = 100;
/// Most events one read or pull returns.
pub const PAGE_EVENTS_MAX: usize = 1_000;
/// Most rows a read or pull looks at (wanted or not) before it answers with
/// what it found and the position it reached, so a rare type over a long
/// log never holds a request for long.
pub const READ_SCAN_ROWS_MAX: usize = 256 * 1024;
/// Most events `GET /v1/events/{id}` returns (ids are chosen by authors, so
/// several feeds may hold one).
pub const EVENTS_BY_ID_MAX: usize = 16;
/// Server-Sent Event streams served at once (plain and consumer streams
/// together). Another is refused with 429 until one ends.
pub const STREAMS_MAX: usize = 64;
/// Encoded batches a stream may have waiting for its connection before it
/// stops reading the store (back-pressure from a slow client).
pub const STREAM_BUFFER_BATCHES: usize = 4;
/// How long an idle stream waits before it sends a keep-alive comment (and
/// the position it scanned to), so proxies keep it open and a client that
/// went away is noticed.
pub const STREAM_KEEPALIVE_MS: u64 = 15_000;
/// Durable consumers the API keeps at once. Another is refused with 409.
pub const CONSUMERS_MAX: usize = 1_000;
/// The prefix of API consumers in the store's consumer table: the API can
/// neither see nor move the cursors of the node's own consumers (the saga
/// engine, inbox sinks, Rust subscribers).
pub const CONSUMER_PREFIX: &str = "api.";
/// Longest consumer name, in bytes (the store's limit less the prefix).
pub const CONSUMER_NAME_BYTES_MAX: usize =
    crate::store::CONSUMER_NAME_BYTES_MAX - CONSUMER_PREFIX.len();
/// Longest a pull waits for an event (`wait_ms`).
pub const PULL_WAIT_MS_MAX: u64 = 30_000;
/// A query's deadline when the request names none.
pub const QUERY_TIMEOUT_MS_DEFAULT: u32 = 2_000;
/// Sagas `GET /v1/sagas` returns when the request names no `limit`.
pub const SAGAS_LIST_DEFAULT: usize = 100;
/// Most sagas `GET /v1/sagas` returns.
pub const SAGAS_LIST_MAX: usize = 1_000;
