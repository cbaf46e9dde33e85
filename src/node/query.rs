//! The node's query handlers: a registry from query type to handler, and
//! [`QueryRegistry::answer`], which runs the handler within the request's
//! deadline and signs the result with the node key (signing rule in
//! [`crate::core::query`]). Sockets are not this module's business: the
//! network layer decodes a [`QueryRequest`], checks `caller` against the
//! peer's certificate, calls `answer` and sends the [`SignedQueryResult`].
//!
//! # Handlers
//!
//! * Rust handlers ([`QueryHandler`]) may block: they run on tokio's blocking
//!   pool. One that overruns the deadline is abandoned (its thread runs to
//!   completion, its reply is dropped) and the answer is `Timeout`. At most
//!   [`QUERY_HANDLERS_RUNNING_MAX`] handlers run at once, abandoned ones
//!   included; a request waiting for a slot past its deadline times out.
//! * Executable handlers (from `query_handlers` in the node config):
//!   - the program is run directly (no shell) with the configured arguments;
//!   - the query payload is written to its stdin, which is then closed;
//!   - environment: inherited, plus `HERALD_QUERY_TYPE`, `HERALD_CALLER`,
//!     `HERALD_CORRELATION_ID` and `HERALD_REQUEST_ID` (the UUID);
//!   - exit status 0: `Success`, stdout is the result payload;
//!   - exit status 3: `NotFound`, stdout is the result payload;
//!   - any other exit, or death by a signal: `Error`, the reason is stderr
//!     (at most [`EXEC_STDERR_BYTES_MAX`] bytes, lossily UTF-8);
//!   - stdout over [`QUERY_PAYLOAD_BYTES_MAX`]: `Error` (the process is killed);
//!   - still running at the deadline (the shorter of the request's and the
//!     handler's `timeout_ms`): `Timeout`, and the process is killed
//!     (SIGKILL). Only the process herald started is killed: a handler that
//!     starts children of its own should `exec` the long-running one.
//!
//! # Built-in query types
//!
//! * `herald.head`: payload `{"feed":"NAME"}`; answers
//!   `{"feed","seq","hash","status"}` for the head this node holds, or
//!   `NotFound` with the request echoed.
//! * `herald.event`: payload `{"id":"UUID"}` or `{"id":"UUID","feed":"NAME"}`;
//!   answers the event's header fields and its signed envelope in hex, so the
//!   caller can verify it against the author's certificate itself. The
//!   payload is **never decrypted**: a caller may lack the channel key, and a
//!   query must not be a way around channel encryption. When the envelope
//!   would push the answer over [`QUERY_PAYLOAD_BYTES_MAX`] it is left out
//!   (`"envelope": null`, `"envelope_bytes": N`): fetch it by replication.
//!   Several feeds may hold an event with the same id (authors choose ids);
//!   without `feed`, the one that arrived first is answered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::core::event::Encryption;
use crate::core::query::{
    QUERY_PAYLOAD_BYTES_MAX, QueryRequest, QueryResultBody, QueryStatus, RegisterError,
    SignedQueryResult, check_exec_handler, check_user_query_type, sign_result, validate_request,
};
use crate::store::{Log, StoredEvent};

/// Built-in query type: a feed's head.
pub const QUERY_TYPE_HEAD: &str = "herald.head";
/// Built-in query type: one event by id (header and signed envelope).
pub const QUERY_TYPE_EVENT: &str = "herald.event";
/// Most of an exec handler's stderr kept as the `Error` reason.
pub const EXEC_STDERR_BYTES_MAX: usize = 4 * 1024;
/// Longest reason carried by an `Error`, `NoHandler` or `Timeout` result.
pub const QUERY_REASON_BYTES_MAX: usize = 8 * 1024;
/// Deadline of an exec handler whose config gives none.
pub const EXEC_TIMEOUT_MS_DEFAULT: u32 = 10_000;
/// Handlers (Rust and exec, abandoned ones included) running at once.
pub const QUERY_HANDLERS_RUNNING_MAX: usize = 64;
/// Events with one id looked at by `herald.event`.
pub const EVENT_ID_MATCHES_MAX: usize = 16;
/// Exit status with which an exec handler reports `NotFound`.
pub const EXEC_EXIT_NOT_FOUND: i32 = 3;

/// A Rust query handler. It may block; it runs on the blocking pool.
pub type QueryHandler = Arc<dyn Fn(&QueryRequest) -> HandlerReply + Send + Sync>;

/// What a handler answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerReply {
    /// The result (at most [`QUERY_PAYLOAD_BYTES_MAX`] bytes, else `Error`).
    Success(Vec<u8>),
    /// Nothing found; the payload may say what was looked for.
    NotFound(Vec<u8>),
    /// The handler failed; the reason goes back to the caller.
    Error(String),
}

enum Handler {
    Rust(QueryHandler),
    Exec {
        command: Vec<String>,
        timeout_ms: u32,
    },
}

/// Query type to handler, and the slots that bound how many run at once.
pub struct QueryRegistry {
    /// Registered handlers by query type.
    handlers: BTreeMap<String, Handler>,
    /// [`QUERY_HANDLERS_RUNNING_MAX`] permits; a running handler holds one.
    slots: Arc<Semaphore>,
}

impl Default for QueryRegistry {
    fn default() -> Self {
        QueryRegistry::new()
    }
}

impl QueryRegistry {
    /// An empty registry (not even the built-ins).
    pub fn new() -> Self {
        QueryRegistry {
            handlers: BTreeMap::new(),
            slots: Arc::new(Semaphore::new(QUERY_HANDLERS_RUNNING_MAX)),
        }
    }

    /// Registers a Rust handler. `herald.*` types are reserved for built-ins.
    pub fn register(
        &mut self,
        query_type: &str,
        handler: QueryHandler,
    ) -> Result<(), RegisterError> {
        check_user_query_type(query_type)?;
        self.insert(query_type, Handler::Rust(handler))
    }

    /// Registers an executable handler (contract in the module doc).
    /// `timeout_ms` is the handler's own deadline.
    pub fn register_exec(
        &mut self,
        query_type: &str,
        command: Vec<String>,
        timeout_ms: u32,
    ) -> Result<(), RegisterError> {
        check_exec_handler(query_type, &command, Some(timeout_ms))?;
        self.insert(
            query_type,
            Handler::Exec {
                command,
                timeout_ms,
            },
        )
    }

    /// Registers the exec handlers of a node config.
    pub fn register_config(
        &mut self,
        handlers: &[crate::config::QueryHandlerConfig],
    ) -> Result<(), RegisterError> {
        for h in handlers {
            let timeout_ms = h.timeout_ms.unwrap_or(EXEC_TIMEOUT_MS_DEFAULT);
            self.register_exec(&h.query_type, h.command.clone(), timeout_ms)?;
        }
        Ok(())
    }

    /// Registers `herald.head` and `herald.event` over `log` (replacing them
    /// if already registered).
    pub fn register_builtins(&mut self, log: Arc<Log>) {
        let head_log = log.clone();
        self.handlers.insert(
            QUERY_TYPE_HEAD.into(),
            Handler::Rust(Arc::new(move |r: &QueryRequest| head_query(&head_log, r))),
        );
        self.handlers.insert(
            QUERY_TYPE_EVENT.into(),
            Handler::Rust(Arc::new(move |r: &QueryRequest| event_query(&log, r))),
        );
    }

    fn insert(&mut self, query_type: &str, handler: Handler) -> Result<(), RegisterError> {
        if self.handlers.contains_key(query_type) {
            return Err(RegisterError::Duplicate(query_type.into()));
        }
        self.handlers.insert(query_type.into(), handler);
        Ok(())
    }

    /// Answers within the request's deadline: `Error` for an invalid request
    /// or one addressed to another node, `NoHandler` if none is registered,
    /// `Timeout` if the handler overruns (it is abandoned; exec handlers are
    /// killed). Builds the result and signs it with `key`; `now_us` stamps it
    /// when the answer is ready.
    pub async fn answer(
        &self,
        request: &QueryRequest,
        responder: &str,
        key: &SigningKey,
        now_us: impl Fn() -> u64,
    ) -> SignedQueryResult {
        let (status, payload) = match self.run(request, responder).await {
            HandlerOutcome::Reply(HandlerReply::Success(p))
                if p.len() > QUERY_PAYLOAD_BYTES_MAX =>
            {
                (
                    QueryStatus::Error,
                    reason(format!(
                        "handler result is {} bytes, over the limit of {QUERY_PAYLOAD_BYTES_MAX}",
                        p.len()
                    )),
                )
            }
            HandlerOutcome::Reply(HandlerReply::NotFound(p))
                if p.len() > QUERY_PAYLOAD_BYTES_MAX =>
            {
                (
                    QueryStatus::Error,
                    reason(format!(
                        "handler not-found payload is {} bytes, over the limit of {QUERY_PAYLOAD_BYTES_MAX}",
                        p.len()
                    )),
                )
            }
            HandlerOutcome::Reply(HandlerReply::Success(p)) => (QueryStatus::Success, p),
            HandlerOutcome::Reply(HandlerReply::NotFound(p)) => (QueryStatus::NotFound, p),
            HandlerOutcome::Reply(HandlerReply::Error(e)) => (QueryStatus::Error, reason(e)),
            HandlerOutcome::NoHandler => (
                QueryStatus::NoHandler,
                reason(format!(
                    "no handler for query type {:?}",
                    request.query_type
                )),
            ),
            HandlerOutcome::Timeout(ms) => (
                QueryStatus::Timeout,
                reason(format!("handler did not answer within {ms} ms")),
            ),
        };
        tracing::debug!(
            query_type = %request.query_type,
            caller = %request.caller,
            correlation_id = %request.correlation_id,
            ?status,
            payload_bytes = payload.len(),
            "answered query"
        );
        let body = QueryResultBody {
            request_id: request.id,
            responder: responder.to_string(),
            caller: request.caller.clone(),
            query_type: request.query_type.clone(),
            correlation_id: request.correlation_id.clone(),
            status,
            payload,
            timestamp_us: now_us(),
        };
        sign_result(key, &body)
    }

    async fn run(&self, request: &QueryRequest, responder: &str) -> HandlerOutcome {
        if let Err(e) = validate_request(request) {
            return HandlerOutcome::Reply(HandlerReply::Error(e.to_string()));
        }
        if request.target != responder {
            return HandlerOutcome::Reply(HandlerReply::Error(format!(
                "query is addressed to {:?}, this node is {responder:?}",
                request.target
            )));
        }
        let Some(handler) = self.handlers.get(&request.query_type) else {
            return HandlerOutcome::NoHandler;
        };
        let deadline_ms = match handler {
            Handler::Exec { timeout_ms, .. } => request.timeout_ms.min(*timeout_ms),
            Handler::Rust(_) => request.timeout_ms,
        };
        let work = async {
            // The semaphore is never closed, so acquiring fails only if it were.
            let Ok(permit) = self.slots.clone().acquire_owned().await else {
                return HandlerReply::Error("query handlers are shutting down".into());
            };
            match handler {
                Handler::Rust(f) => run_rust(f.clone(), request.clone(), permit).await,
                Handler::Exec { command, .. } => {
                    let reply = run_exec(command, request).await;
                    drop(permit);
                    reply
                }
            }
        };
        match tokio::time::timeout(Duration::from_millis(deadline_ms.into()), work).await {
            Ok(reply) => HandlerOutcome::Reply(reply),
            Err(_) => {
                tracing::warn!(
                    query_type = %request.query_type,
                    deadline_ms,
                    "query handler overran its deadline"
                );
                HandlerOutcome::Timeout(deadline_ms)
            }
        }
    }
}

enum HandlerOutcome {
    Reply(HandlerReply),
    NoHandler,
    Timeout(u32),
}

/// A reason as payload bytes, cut to [`QUERY_REASON_BYTES_MAX`] on a
/// character boundary.
fn reason(text: String) -> Vec<u8> {
    truncate_utf8(text, QUERY_REASON_BYTES_MAX).into_bytes()
}

fn truncate_utf8(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

async fn run_rust(
    handler: QueryHandler,
    request: QueryRequest,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> HandlerReply {
    let query_type = request.query_type.clone();
    // The permit moves into the blocking task: an abandoned handler keeps
    // its slot until it really finishes.
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        handler(&request)
    });
    match task.await {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(%query_type, error = %e, "query handler failed");
            HandlerReply::Error(if e.is_panic() {
                "handler panicked".into()
            } else {
                "handler was cancelled".into()
            })
        }
    }
}

async fn run_exec(command: &[String], request: &QueryRequest) -> HandlerReply {
    let env = [
        ("HERALD_QUERY_TYPE", request.query_type.clone()),
        ("HERALD_CALLER", request.caller.clone()),
        ("HERALD_CORRELATION_ID", request.correlation_id.clone()),
        (
            "HERALD_REQUEST_ID",
            uuid::Uuid::from_bytes(request.id).to_string(),
        ),
    ];
    let output = crate::saga::exec::run_bounded(
        command,
        &env,
        &request.payload,
        QUERY_PAYLOAD_BYTES_MAX,
        EXEC_STDERR_BYTES_MAX,
    )
    .await;
    let output = match output {
        Ok(output) => output,
        Err(e) => return HandlerReply::Error(e.to_string()),
    };
    match output.status.code() {
        Some(0) => HandlerReply::Success(output.stdout),
        Some(EXEC_EXIT_NOT_FOUND) => HandlerReply::NotFound(output.stdout),
        _ => {
            let text = String::from_utf8_lossy(&output.stderr);
            HandlerReply::Error(format!("handler {}: {}", output.status, text.trim_end()))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadQuery {
    feed: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventQuery {
    id: String,
    #[serde(default)]
    feed: Option<String>,
}

fn parse_json<'a, T: Deserialize<'a>>(request: &'a QueryRequest) -> Result<T, HandlerReply> {
    serde_json::from_slice(&request.payload).map_err(|e| {
        HandlerReply::Error(format!(
            "payload of {} is not the expected JSON: {e}",
            request.query_type
        ))
    })
}

fn json_bytes(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn head_query(log: &Log, request: &QueryRequest) -> HandlerReply {
    let query: HeadQuery = match parse_json(request) {
        Ok(q) => q,
        Err(reply) => return reply,
    };
    let heads = match log.heads() {
        Ok(heads) => heads,
        Err(e) => return HandlerReply::Error(format!("cannot read feed heads: {e}")),
    };
    match heads.into_iter().find(|h| h.feed == query.feed) {
        Some(head) => HandlerReply::Success(json_bytes(&serde_json::json!({
            "feed": head.feed,
            "seq": head.seq,
            "hash": hex::encode(head.hash),
            "status": head.status,
        }))),
        None => HandlerReply::NotFound(json_bytes(&serde_json::json!({ "feed": query.feed }))),
    }
}

fn event_query(log: &Log, request: &QueryRequest) -> HandlerReply {
    let query: EventQuery = match parse_json(request) {
        Ok(q) => q,
        Err(reply) => return reply,
    };
    let id = match uuid::Uuid::parse_str(&query.id) {
        Ok(id) => id,
        Err(e) => return HandlerReply::Error(format!("id {:?} is not a UUID: {e}", query.id)),
    };
    let events = match log.read_by_id(id.as_bytes(), EVENT_ID_MATCHES_MAX) {
        Ok(events) => events,
        Err(e) => return HandlerReply::Error(format!("cannot read event {id}: {e}")),
    };
    let found = events
        .iter()
        .find(|e| query.feed.as_deref().is_none_or(|f| f == e.header.author));
    match found {
        Some(event) => HandlerReply::Success(event_answer(event)),
        None => HandlerReply::NotFound(json_bytes(&serde_json::json!({
            "id": id,
            "feed": query.feed,
        }))),
    }
}

/// Header fields and the envelope in hex; never the decrypted payload.
fn event_answer(event: &StoredEvent) -> Vec<u8> {
    let h = &event.header;
    let (encryption, key_id) = match &h.payload.encryption {
        Encryption::Plain => ("plain", None),
        Encryption::XChaCha20Poly1305 { key_id, .. } => {
            ("xchacha20poly1305", Some(hex::encode(key_id)))
        }
    };
    let meta: serde_json::Map<String, serde_json::Value> = h
        .meta
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let mut answer = serde_json::json!({
        "id": h.uuid(),
        "feed": h.author,
        "seq": h.seq,
        "prev": hex::encode(h.prev),
        "type": h.event_type,
        "schema_version": h.schema_version,
        "timestamp_us": h.timestamp_us,
        "hash": hex::encode(event.hash),
        "meta": meta,
        "encryption": encryption,
        "channel_key_id": key_id,
        "payload_hash": hex::encode(h.payload.hash),
        "payload_len": h.payload.len,
        "envelope_bytes": event.envelope.len(),
        "envelope": hex::encode(&event.envelope),
    });
    let bytes = json_bytes(&answer);
    if bytes.len() <= QUERY_PAYLOAD_BYTES_MAX {
        return bytes;
    }
    answer["envelope"] = serde_json::Value::Null;
    json_bytes(&answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::query::QUERY_TIMEOUT_MS_MAX;

    #[test]
    fn query_truncate_keeps_char_boundaries() {
        assert_eq!(truncate_utf8("héllo".into(), 2), "h");
        assert_eq!(truncate_utf8("héllo".into(), 3), "hé");
        assert_eq!(truncate_utf8("abc".into(), 10), "abc");
    }

    #[test]
    fn query_register_refuses_reserved_invalid_and_duplicate_types() {
        let mut r = QueryRegistry::new();
        let h: QueryHandler = Arc::new(|_| HandlerReply::Success(vec![]));
        assert!(matches!(
            r.register("herald.head", h.clone()),
            Err(RegisterError::Reserved(_))
        ));
        assert!(matches!(
            r.register("has space", h.clone()),
            Err(RegisterError::QueryType { .. })
        ));
        assert_eq!(r.register("stock", h.clone()), Ok(()));
        assert!(matches!(
            r.register("stock", h),
            Err(RegisterError::Duplicate(_))
        ));
        assert!(matches!(
            r.register_exec("x", vec![], 100),
            Err(RegisterError::EmptyCommand { .. })
        ));
        assert!(matches!(
            r.register_exec("x", vec!["/bin/true".into()], QUERY_TIMEOUT_MS_MAX + 1),
            Err(RegisterError::Timeout { .. })
        ));
    }
}
