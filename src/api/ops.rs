//! Queries, sagas, the node's status and peers, and the health probes.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::auth::Access;
use super::errors::{ApiError, code, json_response};
use super::events::{json_data, json_ok};
use super::input::{BodyFormat, Params, body_format, decode_json, read_body};
use super::server::ApiState;
use super::{QUERY_TIMEOUT_MS_DEFAULT, SAGAS_LIST_DEFAULT, SAGAS_LIST_MAX};
use crate::audit::saga_history::{Entry, HISTORY_ENTRIES_MAX};
use crate::core::query::{QUERY_TIMEOUT_MS_MAX, QueryOutcome, QueryStatus};
use crate::core::verify::decrypt_payload;
use crate::saga::events::{SAGA_EVENT_PREFIX, saga_id_of};
use crate::saga::{SagaDefinition, SagaError, SagaStatus};

/// The body of `POST /v1/queries`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryInput {
    /// The service to ask (this node's own name answers locally).
    to: String,
    /// The query type (`herald.head`, `identity.verify_donor`).
    #[serde(rename = "type")]
    query_type: String,
    /// The question, as JSON; default `{}`.
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    correlation_id: String,
    /// How long to wait for the answer; default [`QUERY_TIMEOUT_MS_DEFAULT`].
    #[serde(default)]
    timeout_ms: Option<u32>,
}

/// A query's outcome as JSON.
#[derive(Serialize)]
struct QueryView {
    /// `success`, `not_found`, `error`, `no_handler`, `timeout`, `unreachable`.
    status: &'static str,
    /// Who answered (or, for `timeout` and `unreachable`, who did not).
    responder: String,
    /// Whether the answer carries the responder's signature, checked here.
    signed: bool,
    correlation_id: String,
    request_id: uuid::Uuid,
    time: String,
    /// The answer, when it is JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Box<RawValue>>,
    /// Otherwise the answer as text (a reason, for errors).
    #[serde(skip_serializing_if = "Option::is_none")]
    data_text: Option<String>,
}

/// The stable name of a query status.
pub fn status_name(status: QueryStatus) -> &'static str {
    match status {
        QueryStatus::Success => "success",
        QueryStatus::NotFound => "not_found",
        QueryStatus::Error => "error",
        QueryStatus::NoHandler => "no_handler",
        QueryStatus::Timeout => "timeout",
        QueryStatus::Unreachable => "unreachable",
    }
}

fn query_view(o: QueryOutcome) -> QueryView {
    let data = json_data(&o.payload);
    let data_text = data
        .is_none()
        .then(|| String::from_utf8_lossy(&o.payload).into_owned());
    QueryView {
        status: status_name(o.status),
        responder: o.responder,
        signed: o.signed_by_responder,
        correlation_id: o.correlation_id,
        request_id: uuid::Uuid::from_bytes(o.request_id),
        time: crate::clock::format_timestamp(o.timestamp_us),
        data,
        data_text,
    }
}

/// `POST /v1/queries`: asks a service and answers with its outcome (200
/// whatever the status; `signed` says whether the responder signed it).
pub async fn query(
    State(state): State<ApiState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    Params::parse(raw.as_deref())?.finish()?;
    body_format(&headers, &[BodyFormat::Json])?;
    let bytes = read_body(&headers, body).await?;
    let input: QueryInput = decode_json(&bytes, "")?;
    access.may_query(&input.query_type)?;
    let timeout_ms = input.timeout_ms.unwrap_or(QUERY_TIMEOUT_MS_DEFAULT);
    if timeout_ms == 0 || timeout_ms > QUERY_TIMEOUT_MS_MAX {
        return Err(ApiError::field(
            "timeout_ms",
            format!("timeout_ms must be 1 to {QUERY_TIMEOUT_MS_MAX}, not {timeout_ms}"),
        ));
    }
    let payload = match &input.data {
        Some(raw) => super::publish::minify_json(raw.get()),
        None => b"{}".to_vec(),
    };
    let node = state.node()?;
    let outcome = crate::node::query_peer(
        &node,
        &input.to,
        &input.query_type,
        payload,
        &input.correlation_id,
        Duration::from_millis(u64::from(timeout_ms)),
    )
    .await;
    Ok(json_ok(&query_view(outcome)))
}

/// The body of `POST /v1/sagas`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SagaInput {
    /// The definition: TOML text (as `herald saga start --definition`
    /// reads) or the same as a JSON object.
    definition: Box<RawValue>,
    /// The saga's input, handed to every step; default `{}`.
    #[serde(default)]
    input: Option<Box<RawValue>>,
}

fn saga_error(e: SagaError, field: &str) -> ApiError {
    match e {
        SagaError::Definition(_) | SagaError::InputTooLarge { .. } => {
            ApiError::field(field, e.to_string())
        }
        SagaError::TooManyActive | SagaError::Stopped => ApiError::unavailable(e.to_string()),
        SagaError::NotFound(_) => ApiError::not_found(e.to_string()).at("id"),
        SagaError::Store(_) | SagaError::Tx(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            code::STORE_ERROR,
            e.to_string(),
        ),
    }
}

fn parse_definition(raw: &RawValue) -> Result<SagaDefinition, ApiError> {
    let text = raw.get();
    if text.starts_with('"') {
        let toml: String = serde_json::from_str(text)
            .map_err(|e| ApiError::field("definition", format!("definition: {e}")))?;
        return SagaDefinition::from_toml(&toml)
            .map_err(|e| ApiError::field("definition", format!("definition: {e}")));
    }
    let definition: SagaDefinition = decode_json(text.as_bytes(), "definition")?;
    definition
        .validate()
        .map_err(|e| ApiError::field("definition", format!("definition: {e}")))?;
    Ok(definition)
}

/// `POST /v1/sagas`: 201 with the saga's id once its start is durable.
pub async fn start_saga(
    State(state): State<ApiState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    Params::parse(raw.as_deref())?.finish()?;
    body_format(&headers, &[BodyFormat::Json])?;
    let bytes = read_body(&headers, body).await?;
    let input: SagaInput = decode_json(&bytes, "")?;
    let definition = parse_definition(&input.definition)?;
    access.may_saga(&definition.saga_type)?;
    let saga_input: serde_json::Value = match &input.input {
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|e| ApiError::field("input", format!("input: {e}")))?,
        None => serde_json::json!({}),
    };
    let node = state.node()?;
    let id = node
        .orchestrator
        .start(definition, saga_input, &node.service)
        .await
        .map_err(|e| saga_error(e, "input"))?;
    let text = serde_json::json!({ "saga_id": id }).to_string();
    let mut response = json_response(StatusCode::CREATED, text);
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/sagas/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

fn saga_id(text: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(text)
        .map_err(|e| ApiError::parameter("id", format!("{text:?} is not a saga id (a UUID): {e}")))
}

/// A saga in a list.
#[derive(Serialize)]
struct SagaSummary {
    saga_id: uuid::Uuid,
    saga_type: String,
    status: &'static str,
    started: String,
    ended: Option<String>,
}

/// `GET /v1/sagas?status=S&limit=N`: the sagas this node orchestrates,
/// newest first.
pub async fn list_sagas(
    State(state): State<ApiState>,
    Extension(access): Extension<Access>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = Params::parse(raw.as_deref())?;
    let status = params
        .one("status")?
        .map(|s| s.parse::<SagaStatus>())
        .transpose()
        .map_err(|e| ApiError::parameter("status", e.to_string()))?;
    let limit = params
        .number("limit", 1, SAGAS_LIST_MAX as u64)?
        .map_or(SAGAS_LIST_DEFAULT, |n| n as usize);
    params.finish()?;
    access.may_list_sagas()?;
    let log = state.log()?;
    let sagas = tokio::task::spawn_blocking(move || {
        crate::saga::orchestrator::list(&*log.reader()?, status, limit)
    })
    .await
    .map_err(|e| ApiError::task("listing sagas", e))?
    .map_err(|e| saga_error(e, "status"))?;
    // A client sees the sagas of the types it may use (so a page may hold
    // fewer than `limit`).
    let summaries: Vec<SagaSummary> = sagas
        .iter()
        .filter(|s| access.sees_saga(&s.saga_type))
        .map(|s| SagaSummary {
            saga_id: s.id,
            saga_type: s.saga_type.clone(),
            status: s.status.as_str(),
            started: crate::clock::format_timestamp(s.started_at_us),
            ended: s.ended_at_us.map(crate::clock::format_timestamp),
        })
        .collect();
    Ok(json_ok(&super::events::Field("sagas", &summaries)))
}

/// `GET /v1/sagas/{id}`: the saga's state as stored (the shape of
/// `herald saga status --json`).
pub async fn saga(
    State(state): State<ApiState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(raw.as_deref())?.finish()?;
    let id = saga_id(&id)?;
    let log = state.log()?;
    let saga =
        tokio::task::spawn_blocking(move || crate::saga::orchestrator::load(&*log.reader()?, id))
            .await
            .map_err(|e| ApiError::task("reading a saga", e))?
            .map_err(|e| saga_error(e, "id"))?
            .ok_or_else(|| {
                ApiError::not_found(format!("this node orchestrates no saga {id}")).at("id")
            })?;
    access.may_saga(&saga.saga_type)?;
    Ok(json_ok(&saga))
}

/// `GET /v1/sagas/{id}/history`: the saga's signed events this node holds
/// (the orchestrator's and the participants'), by time: the timeline
/// `herald saga history` rebuilds from an export, read from the live store.
/// Scans the saga events of the whole log (type names only, a page at a
/// time), so it costs about a second per million events.
pub async fn saga_history(
    State(state): State<ApiState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(raw.as_deref())?.finish()?;
    let id = saga_id(&id)?;
    let log = state.log()?;
    // A client reads the history of a saga this node orchestrates, of a
    // type it may use, with the payloads of channels it may read.
    let reader = match &access {
        Access::Operator => super::auth::ReadFilter::All,
        Access::Client(_) => {
            let store = Arc::clone(&log);
            let saga = tokio::task::spawn_blocking(move || {
                crate::saga::orchestrator::load(&*store.reader()?, id)
            })
            .await
            .map_err(|e| ApiError::task("reading a saga", e))?
            .map_err(|e| saga_error(e, "id"))?
            .ok_or_else(|| {
                ApiError::not_found(format!("this node orchestrates no saga {id}")).at("id")
            })?;
            access.may_saga(&saga.saga_type)?;
            access
                .reader(&log)
                .unwrap_or_else(|_| super::auth::ReadFilter::Channels(Arc::new(Vec::new())))
        }
    };
    let entries = tokio::task::spawn_blocking(move || {
        let keys = log.channel_keys();
        let mut follower = log.follow(vec![format!("{SAGA_EVENT_PREFIX}*")], 0)?;
        let mut entries: Vec<Entry> = Vec::new();
        loop {
            let batch = follower.next_batch()?;
            for event in batch {
                let h = &event.header;
                if saga_id_of(h) != Some(id) || entries.len() >= HISTORY_ENTRIES_MAX {
                    continue;
                }
                let payload = Some(&event)
                    .filter(|e| reader.allows(e))
                    .and_then(|e| crate::core::codec::decode_envelope(&e.envelope).ok())
                    .and_then(|(envelope, _)| envelope.payload)
                    .and_then(|p| decrypt_payload(h, &p, &keys).ok())
                    .and_then(|plain| serde_json::from_slice(&plain).ok());
                entries.push(Entry {
                    timestamp_us: h.timestamp_us,
                    author: h.author.clone(),
                    seq: h.seq,
                    event_type: h.event_type.clone(),
                    meta: h.meta.iter().cloned().collect(),
                    payload,
                });
            }
            if !follower.has_more()? {
                break;
            }
        }
        entries.sort_by(|a, b| {
            (a.timestamp_us, &a.author, a.seq).cmp(&(b.timestamp_us, &b.author, b.seq))
        });
        Ok::<_, ApiError>(entries)
    })
    .await
    .map_err(|e| ApiError::task("reading a saga's history", e))??;
    if entries.is_empty() {
        return Err(ApiError::not_found(format!("this node holds no event of saga {id}")).at("id"));
    }
    let events: Vec<TimelineView> = entries
        .iter()
        .map(|e| TimelineView {
            time: crate::clock::format_timestamp(e.timestamp_us),
            feed: &e.author,
            seq: e.seq,
            event_type: &e.event_type,
            meta: &e.meta,
            data: e.payload.as_ref(),
            summary: e.describe(),
        })
        .collect();
    Ok(json_ok(&HistoryView {
        saga_id: id,
        events,
    }))
}

/// A saga's timeline (`GET /v1/sagas/{id}/history`), encoded field by
/// field so its keys keep this order (as the events' JSON does).
#[derive(Serialize)]
struct HistoryView<'a> {
    saga_id: uuid::Uuid,
    events: Vec<TimelineView<'a>>,
}

/// One entry of a saga's timeline.
#[derive(Serialize)]
struct TimelineView<'a> {
    time: String,
    feed: &'a str,
    seq: u64,
    #[serde(rename = "type")]
    event_type: &'a str,
    meta: &'a std::collections::BTreeMap<String, String>,
    data: Option<&'a serde_json::Value>,
    summary: String,
}

/// `GET /v1/status`: the node's status (the shape of `herald status --json`).
pub async fn status(
    State(state): State<ApiState>,
    Extension(access): Extension<Access>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(raw.as_deref())?.finish()?;
    access.admin("the node's status")?;
    let node = state.node()?;
    let status = crate::node::status_of(&node).await;
    Ok(json_ok(&status))
}

/// `GET /v1/peers`: the configured peers and their connection state.
pub async fn peers(
    State(state): State<ApiState>,
    Extension(access): Extension<Access>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(raw.as_deref())?.finish()?;
    access.admin("the node's peers")?;
    let peers: Vec<crate::node::PeerState> = state
        .node()?
        .peers
        .lock()
        .map(|p| p.values().cloned().collect())
        .unwrap_or_default();
    Ok(json_ok(&super::events::Field("peers", &peers)))
}

/// `POST /v1/reload`: rereads the node's CA, revocation list, certificate
/// and channel keys, all or nothing (as `herald reload`; admin only).
/// 200 with the report; 422 `reload_refused` naming the file at fault
/// (nothing changed).
pub async fn reload(
    State(state): State<ApiState>,
    Extension(access): Extension<Access>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(raw.as_deref())?.finish()?;
    access.admin("a reload of the node's trust files")?;
    let node = state.node()?;
    match crate::node::reload::reload(&node).await {
        Ok(report) => Ok(json_ok(&report)),
        Err(e) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            super::errors::code::RELOAD_REFUSED,
            e.to_string(),
        )),
    }
}

/// `GET /healthz`: liveness. 200 while the node runs; 503 once a
/// background task met a fault it cannot recover from (a damaged store, a
/// self-fork): restart it, or look at `herald status`.
pub async fn healthz(State(state): State<ApiState>) -> Response {
    let log = match state.log() {
        Ok(log) => log,
        Err(e) => return axum::response::IntoResponse::into_response(e),
    };
    let fatal = log.health().fatal().borrow().clone();
    match fatal {
        None => json_ok(&serde_json::json!({ "status": "ok" })),
        Some(reason) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "failed", "reason": reason }).to_string(),
        ),
    }
}

/// `GET /readyz`: readiness to publish. 503 with the reasons while the
/// node recovers its own feed from its peers, reports a problem, or shuts
/// down.
pub async fn readyz(State(state): State<ApiState>) -> Response {
    let log = match state.log() {
        Ok(log) => log,
        Err(e) => return axum::response::IntoResponse::into_response(e),
    };
    let mut reasons: Vec<String> = Vec::new();
    if state.stopping() {
        reasons.push("the node is shutting down".into());
    }
    if log.is_recovering() {
        reasons.push("the node is recovering its own feed from its peers".into());
    }
    for p in log.health().problems() {
        reasons.push(format!("{}: {}", p.task, p.reason));
    }
    if reasons.is_empty() {
        return json_ok(&serde_json::json!({ "status": "ready" }));
    }
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({ "status": "not_ready", "reasons": reasons }).to_string(),
    )
}
