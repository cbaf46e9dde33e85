//! The server: shared state, the router, serving and shutdown.
//!
//! Two hooks are left for what comes later, each one place:
//!
//! * **Authentication** (see [`super::auth`]): every `/v1` route goes
//!   through `guard`, which resolves the connection's caller (local
//!   operator, or a client certificate over HTTPS) to its permissions;
//!   health probes stay outside it. Each listener (plain TCP on loopback,
//!   HTTPS, the Unix socket) says who its connections belong to.
//! * **`/metrics`** (Prometheus text, see `node::metrics`) goes through the
//!   guard like `/v1` (an HTTPS client needs `admin`); `probes` holds the
//!   unauthenticated health probes `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use axum::Router;
use axum::routing::{get, post, put};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use super::auth::{Caller, Policy, TlsListener, UnixSocket, UnixSocketError};
use super::errors::ApiError;
use super::events::EventEncoder;
use super::{STREAMS_MAX, auth, consumers, errors, events, openapi, ops, publish, subscribe};
use crate::config::ApiConfig;
use crate::node::Inner;
use crate::store::Log;

/// Every route the API serves, as (method, path template): the router is
/// built from the same paths, and a test checks this list against
/// `docs/openapi.json` and a running node.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/openapi.json"),
    ("POST", "/v1/events"),
    ("GET", "/v1/events"),
    ("GET", "/v1/events/{id}"),
    ("GET", "/v1/feeds"),
    ("GET", "/v1/feeds/{feed}/events"),
    ("GET", "/v1/stream"),
    ("GET", "/v1/consumers"),
    ("PUT", "/v1/consumers/{name}"),
    ("GET", "/v1/consumers/{name}"),
    ("DELETE", "/v1/consumers/{name}"),
    ("GET", "/v1/consumers/{name}/events"),
    ("POST", "/v1/consumers/{name}/ack"),
    ("GET", "/v1/consumers/{name}/stream"),
    ("POST", "/v1/queries"),
    ("POST", "/v1/sagas"),
    ("GET", "/v1/sagas"),
    ("GET", "/v1/sagas/{id}"),
    ("GET", "/v1/sagas/{id}/history"),
    ("GET", "/v1/status"),
    ("GET", "/v1/peers"),
    ("POST", "/v1/reload"),
    // The console (`console::routes`).
    ("GET", "/"),
    ("GET", "/console/console.js"),
    ("GET", "/console/console.css"),
];

/// Why the API could not start (the node does not start either).
#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen for the HTTP API on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot serve the HTTP API as HTTPS: {0}")]
    Tls(#[from] crate::net::NetError),
    #[error("cannot listen for the HTTP API on a Unix socket: {0}")]
    Unix(#[from] UnixSocketError),
}

/// What every handler can reach.
///
/// The node is held weakly: connections (and their tasks) may outlive a
/// node shutdown by a moment, or longer if a client stops reading, and must
/// not keep its log (and the store's lock) open meanwhile. Once the node is
/// gone, requests are answered 503.
#[derive(Clone)]
pub struct ApiState {
    node: Weak<Inner>,
    /// One permit per open stream ([`STREAMS_MAX`]).
    pub(crate) streams: Arc<Semaphore>,
    /// Turns true when the node shuts down: streams and long polls end.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// What each client certificate may do (`[[api.clients]]`).
    pub(crate) policy: Arc<Policy>,
}

impl ApiState {
    /// The node, unless it has stopped.
    pub(crate) fn node(&self) -> Result<Arc<Inner>, ApiError> {
        self.node
            .upgrade()
            .ok_or_else(|| ApiError::unavailable("the node has stopped"))
    }

    /// The node's log, unless the node has stopped.
    pub fn log(&self) -> Result<Arc<Log>, ApiError> {
        Ok(Arc::clone(&self.node()?.log))
    }

    /// An encoder for this node's events (its channel keys, its checkpoints).
    pub fn encoder(&self) -> Result<EventEncoder, ApiError> {
        Ok(EventEncoder::new(&self.log()?))
    }

    /// Whether the node is shutting down (or gone).
    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow() || self.shutdown.has_changed().is_err()
    }
}

/// Binds `config.listen` (plain HTTP on loopback, or HTTPS with client
/// certificates when `tls`) and `config.unix` if set, and serves the API on
/// both until the node shuts down (`node.shutdown` turns true): then it
/// stops accepting, ends its streams and long polls, lets requests in
/// progress finish, and removes its socket. Returns the bound TCP address
/// and the serving task.
pub(crate) async fn spawn(
    node: Arc<Inner>,
    config: &ApiConfig,
) -> Result<(SocketAddr, JoinHandle<()>), ApiStartError> {
    config.check().map_err(ApiStartError::Config)?;
    let bind = |source| ApiStartError::Bind {
        addr: config.listen,
        source,
    };
    let tcp = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(bind)?;
    let addr = tcp.local_addr().map_err(bind)?;
    let shutdown = node.shutdown.clone();
    // Built from the node's current identity and kept with it, so a
    // reload rebuilds it (`net::LiveTls`).
    let tls = if config.tls {
        Some(node.tls.serve_api()?)
    } else {
        None
    };
    let unix = config.unix.as_deref().map(UnixSocket::bind).transpose()?;
    let state = ApiState {
        node: Arc::downgrade(&node),
        streams: Arc::new(Semaphore::new(STREAMS_MAX)),
        shutdown: shutdown.clone(),
        policy: Arc::new(Policy::new(config)),
    };
    let app = router(state);
    let mut servers = tokio::task::JoinSet::new();
    let stop = || crate::store::stopped(shutdown.clone());
    match tls {
        Some(_) => {
            let listener =
                TlsListener::new(tcp, Arc::downgrade(&node), shutdown.clone()).map_err(bind)?;
            let service = app.clone().into_make_service_with_connect_info::<Caller>();
            servers.spawn(report(
                "HTTPS",
                axum::serve(listener, service)
                    .with_graceful_shutdown(stop())
                    .into_future(),
            ));
        }
        None => {
            let service = app.clone().into_make_service_with_connect_info::<Caller>();
            servers.spawn(report(
                "HTTP",
                axum::serve(tcp, service)
                    .with_graceful_shutdown(stop())
                    .into_future(),
            ));
        }
    }
    if let Some(socket) = unix {
        let (path, inode) = (socket.path.clone(), socket.inode());
        let service = app.into_make_service_with_connect_info::<Caller>();
        let serve = axum::serve(socket.listener, service).with_graceful_shutdown(stop());
        tracing::info!(path = %path.display(), "HTTP API listening on a Unix socket");
        servers.spawn(async move {
            report("Unix socket", serve.into_future()).await;
            UnixSocket::remove(&path, inode);
        });
    }
    let task = tokio::spawn(async move { while servers.join_next().await.is_some() {} });
    let scheme = if config.tls { "HTTPS" } else { "HTTP" };
    tracing::info!(%addr, scheme, "HTTP API listening");
    Ok((addr, task))
}

/// Runs one listener's server, logging why it stopped if it failed.
async fn report(what: &'static str, serve: impl std::future::Future<Output = std::io::Result<()>>) {
    if let Err(e) = serve.await {
        tracing::error!(error = %e, listener = what, "the HTTP API stopped serving");
    }
}

/// The whole router: probes, then the versioned API behind `guard`.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .merge(probes())
        .merge(guard(v1(), &state))
        // Behind the guard, unlike the probes: metrics name peers, feeds and
        // consumers, so an HTTPS client needs `admin`.
        .merge(guard(Router::new().route("/metrics", get(metrics)), &state))
        .merge(super::console::routes())
        .fallback(errors::not_found)
        .method_not_allowed_fallback(errors::method_not_allowed)
        .with_state(state)
}

/// Operational routes outside authentication (the health probes).
fn probes() -> Router<ApiState> {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
}

/// `GET /metrics`: the node's metrics in the Prometheus text format, or
/// OpenMetrics when `Accept` asks for `application/openmetrics-text` (see
/// `node::metrics` and docs/API.md, "Metrics").
async fn metrics(
    axum::extract::State(state): axum::extract::State<ApiState>,
    axum::Extension(access): axum::Extension<auth::Access>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Err(e) = access.admin("the metrics") {
        return e.into_response();
    }
    let node = match state.node() {
        Ok(node) => node,
        Err(e) => return e.into_response(),
    };
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = crate::node::metrics::Format::from_accept(accept);
    match crate::node::metrics::render(&node, format).await {
        Ok(body) => (
            [(axum::http::header::CONTENT_TYPE, format.content_type())],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot answer a metrics scrape");
            ApiError::internal(e.to_string()).into_response()
        }
    }
}

/// The versioned API.
fn v1() -> Router<ApiState> {
    Router::new()
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/events", post(publish::publish).get(events::list))
        .route("/v1/events/{id}", get(events::by_id))
        .route("/v1/feeds", get(events::feeds))
        .route("/v1/feeds/{feed}/events", get(events::feed_range))
        .route("/v1/stream", get(subscribe::stream))
        .route("/v1/consumers", get(consumers::list))
        .route(
            "/v1/consumers/{name}",
            put(consumers::put)
                .get(consumers::get)
                .delete(consumers::delete),
        )
        .route("/v1/consumers/{name}/events", get(consumers::pull))
        .route("/v1/consumers/{name}/ack", post(consumers::ack))
        .route("/v1/consumers/{name}/stream", get(consumers::stream))
        .route("/v1/queries", post(ops::query))
        .route("/v1/sagas", post(ops::start_saga).get(ops::list_sagas))
        .route("/v1/sagas/{id}", get(ops::saga))
        .route("/v1/sagas/{id}/history", get(ops::saga_history))
        .route("/v1/status", get(ops::status))
        .route("/v1/peers", get(ops::peers))
        .route("/v1/reload", post(ops::reload))
}

/// The authentication hook: every `/v1` route passes [`auth::guard`]
/// before its handler runs, which hands the handler the caller's
/// [`auth::Access`] (or answers 403 for a certificate with no
/// `[[api.clients]]` entry). Handlers check the permission their request
/// needs.
fn guard(v1: Router<ApiState>, state: &ApiState) -> Router<ApiState> {
    v1.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::guard,
    ))
}
