//! Access control for the HTTP API (`docs/API.md`, "Access control";
//! `docs/SECURITY.md`).
//!
//! Who calls is settled by the connection, before any request is read:
//!
//! * **plain HTTP on loopback** and the **Unix socket** (mode 0600): the
//!   local operator, who already holds the node's files, with full access
//!   ([`Access::Operator`]);
//! * **HTTPS** (`[api] tls = true`, required off loopback): a client
//!   certificate issued by the cluster CA with clientAuth only
//!   (`herald keygen client`), not revoked, within its validity window, is
//!   required at the TLS handshake (`net::tls::api_server_config`); its
//!   service name picks the `[[api.clients]]` entry whose permissions apply
//!   ([`Access::Client`]). A certificate that is valid but not listed gets
//!   403 on every `/v1` route.
//!
//! [`guard`] runs before every `/v1` handler and hands it the caller's
//! [`Access`]; handlers ask it (`may_publish`, `reader`, ...) where the
//! request shows what it touches. A refusal is 403 `forbidden` whose
//! `field` names the permission missing (`publish`, `read_channels`,
//! `queries`, `sagas`, `admin`).
//!
//! Reads filter rather than refuse: events of channels a client may not
//! read are skipped by lists, streams and consumers (as events of other
//! types are), so one stream can span channels; a client that may read no
//! channel at all, or asks for one event by id that it may not read, gets
//! 403.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use sha2::Digest as _;
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::errors::{ApiError, code};
use super::server::ApiState;
use crate::config::{ApiClientConfig, ApiConfig};
use crate::core::crypto::ChannelKeyId;
use crate::core::event::{Encryption, glob_match};
use crate::node::Inner;
use crate::store::{Log, StoredEvent};

/// TLS handshakes the API runs at once; a connection beyond them is closed
/// at once (a flood of half-open handshakes cannot grow memory).
pub const HANDSHAKES_MAX: usize = 64;
/// Longest a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Handshaken connections waiting for the server to take them.
pub const ACCEPTED_QUEUE_MAX: usize = 64;
/// Pause after a failed `accept` (out of file descriptors, say) before the
/// next, so the loop does not spin.
pub const ACCEPT_ERROR_BACKOFF_MS: u64 = 100;
/// Longest Unix socket path, in bytes: `sun_path` holds 108 bytes with
/// the terminating NUL, and the socket is first bound under its name plus
/// [`UNIX_TEMP_SUFFIX`].
pub const UNIX_PATH_BYTES_MAX: usize = 107 - UNIX_TEMP_SUFFIX.len();
/// The socket is bound at `PATH` + this suffix, restricted to mode 0600,
/// then renamed to `PATH`: it is never reachable with a wider mode.
pub const UNIX_TEMP_SUFFIX: &str = ".new";
/// The store prefix of consumers of API clients (`apic.HASH.NAME`);
/// distinct from [`super::CONSUMER_PREFIX`] (`api.`), the local operator's.
pub const CLIENT_CONSUMER_PREFIX: &str = "apic.";
/// Hex digits of SHA-256(client name) in a client's consumer prefix (64
/// bits: client names are DNS labels of up to 63 bytes, too long to embed
/// in a 64-byte consumer name).
pub const CLIENT_CONSUMER_HASH_HEX: usize = 16;
/// Longest consumer name an API client may choose, in bytes.
pub const CLIENT_CONSUMER_NAME_BYTES_MAX: usize = crate::store::CONSUMER_NAME_BYTES_MAX
    - CLIENT_CONSUMER_PREFIX.len()
    - CLIENT_CONSUMER_HASH_HEX
    - 1;

/// Who a connection belongs to, as its listener established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Plain HTTP on loopback, or the Unix socket.
    Local,
    /// HTTPS with this admitted client certificate's service name.
    Client(String),
}

impl Connected<IncomingStream<'_, TcpListener>> for Caller {
    fn connect_info(_: IncomingStream<'_, TcpListener>) -> Caller {
        // Plain TCP is served on loopback only (`ApiConfig::check`).
        Caller::Local
    }
}

impl Connected<IncomingStream<'_, UnixListener>> for Caller {
    fn connect_info(_: IncomingStream<'_, UnixListener>) -> Caller {
        Caller::Local
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Caller {
        stream.remote_addr().caller.clone()
    }
}

/// The permissions `[[api.clients]]` grants, by client name.
#[derive(Debug, Default)]
pub struct Policy {
    clients: HashMap<String, Arc<ApiClientConfig>>,
}

impl Policy {
    pub fn new(config: &ApiConfig) -> Policy {
        Policy {
            clients: config
                .clients
                .iter()
                .map(|c| (c.name.clone(), Arc::new(c.clone())))
                .collect(),
        }
    }

    /// What `caller` may do, or 403 if it is a certificate with no entry.
    pub fn access(&self, caller: &Caller) -> Result<Access, ApiError> {
        match caller {
            Caller::Local => Ok(Access::Operator),
            Caller::Client(name) => self
                .clients
                .get(name)
                .map(|c| Access::Client(Arc::clone(c)))
                .ok_or_else(|| {
                    forbidden(
                        "client",
                        format!(
                            "client certificate \"{name}\" is valid but has no [[api.clients]] entry in this node's config, so it may do nothing; add one with its permissions"
                        ),
                    )
                }),
        }
    }
}

/// 403 `forbidden`, naming the permission missing in `field`.
pub fn forbidden(permission: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code::FORBIDDEN, message).at(permission)
}

/// What the caller of a request may do (a request extension set by
/// [`guard`]).
#[derive(Debug, Clone)]
pub enum Access {
    /// The local operator: everything.
    Operator,
    /// A client certificate and its `[[api.clients]]` entry.
    Client(Arc<ApiClientConfig>),
}

impl Access {
    /// The client's name (`None`: the local operator).
    pub fn client(&self) -> Option<&str> {
        match self {
            Access::Operator => None,
            Access::Client(c) => Some(&c.name),
        }
    }

    /// Checks that `value` (an event, query or saga type) matches one of
    /// the patterns of `permission` (the operator may do anything).
    fn allow(
        &self,
        permission: &'static str,
        list: impl Fn(&ApiClientConfig) -> &[String],
        what: &str,
        value: &str,
    ) -> Result<(), ApiError> {
        let Access::Client(c) = self else {
            return Ok(());
        };
        if list(c).iter().any(|p| glob_match(p, value)) {
            return Ok(());
        }
        Err(forbidden(
            permission,
            format!(
                "client \"{}\" may not {what} \"{value}\": no pattern of its `{permission}` permission matches it ({})",
                c.name,
                describe(list(c))
            ),
        ))
    }

    /// May it publish an event of `event_type`?
    pub fn may_publish(&self, event_type: &str) -> Result<(), ApiError> {
        self.allow(
            "publish",
            |c| &c.publish,
            "publish events of type",
            event_type,
        )
    }

    /// May it ask a query of `query_type`?
    pub fn may_query(&self, query_type: &str) -> Result<(), ApiError> {
        self.allow("queries", |c| &c.queries, "ask queries of type", query_type)
    }

    /// May it start, or read, a saga of `saga_type`?
    pub fn may_saga(&self, saga_type: &str) -> Result<(), ApiError> {
        self.allow("sagas", |c| &c.sagas, "use sagas of type", saga_type)
    }

    /// May it see saga `saga_type` in a list (no error: lists filter)?
    pub fn sees_saga(&self, saga_type: &str) -> bool {
        self.may_saga(saga_type).is_ok()
    }

    /// May it list sagas at all (it holds some `sagas` permission)?
    pub fn may_list_sagas(&self) -> Result<(), ApiError> {
        match self {
            Access::Client(c) if c.sagas.is_empty() => Err(forbidden(
                "sagas",
                format!(
                    "client \"{}\" may not read sagas: its `sagas` permission lists no saga type",
                    c.name
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Is it allowed `what` (node administration)?
    pub fn admin(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Access::Client(c) if !c.admin => Err(forbidden(
                "admin",
                format!(
                    "client \"{}\" may not read {what}: that needs `admin = true` in its [[api.clients]] entry",
                    c.name
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The events it may read on `log`, or 403 if it may read none.
    pub fn reader(&self, log: &Log) -> Result<ReadFilter, ApiError> {
        let Access::Client(c) = self else {
            return Ok(ReadFilter::All);
        };
        if c.read_channels.is_empty() {
            return Err(forbidden(
                "read_channels",
                format!(
                    "client \"{}\" may not read events: its `read_channels` permission lists no channel",
                    c.name
                ),
            ));
        }
        if c.read_channels.iter().any(|p| p == "*") {
            return Ok(ReadFilter::All);
        }
        let keys = log
            .channel_keys()
            .iter()
            .filter(|k| c.read_channels.iter().any(|p| glob_match(p, k.name())))
            .map(|k| k.id())
            .collect();
        Ok(ReadFilter::Channels(Arc::new(keys)))
    }

    /// The store prefix of its durable consumers: the operator's `api.`,
    /// or `apic.HASH.` for a client, so no client can see, ack or delete
    /// another's consumers (or the operator's).
    pub fn consumer_prefix(&self) -> String {
        match self {
            Access::Operator => super::CONSUMER_PREFIX.to_string(),
            Access::Client(c) => {
                let digest = sha2::Sha256::digest(c.name.as_bytes());
                let hash = hex::encode(digest);
                format!(
                    "{CLIENT_CONSUMER_PREFIX}{}.",
                    &hash[..CLIENT_CONSUMER_HASH_HEX]
                )
            }
        }
    }

    /// The longest consumer name it may choose.
    pub fn consumer_name_bytes_max(&self) -> usize {
        match self {
            Access::Operator => super::CONSUMER_NAME_BYTES_MAX,
            Access::Client(_) => CLIENT_CONSUMER_NAME_BYTES_MAX,
        }
    }
}

fn describe(list: &[String]) -> String {
    if list.is_empty() {
        "it lists none".to_string()
    } else {
        format!("it lists {}", list.join(", "))
    }
}

/// Which events a caller may read.
#[derive(Debug, Clone)]
pub enum ReadFilter {
    /// Every event (the operator, or `read_channels = ["*"]`).
    All,
    /// Events encrypted under these channel keys (unencrypted events are
    /// readable only with `"*"`).
    Channels(Arc<Vec<ChannelKeyId>>),
}

impl ReadFilter {
    pub fn allows(&self, event: &StoredEvent) -> bool {
        match self {
            ReadFilter::All => true,
            ReadFilter::Channels(ids) => match &event.header.payload.encryption {
                Encryption::Plain => false,
                Encryption::XChaCha20Poly1305 { key_id, .. } => ids.contains(key_id),
            },
        }
    }
}

/// The authentication layer of every `/v1` route: resolves the
/// connection's [`Caller`] to its [`Access`] (403 for a certificate with no
/// entry) and hands it to the handler as a request extension. A request
/// from a listener that did not say who is calling is refused (fail
/// closed).
pub async fn guard(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    let caller = request
        .extensions()
        .get::<axum::extract::ConnectInfo<Caller>>()
        .map(|c| c.0.clone());
    let Some(caller) = caller else {
        return ApiError::internal("the connection did not say who is calling; refused")
            .into_response();
    };
    match state.policy.access(&caller) {
        Ok(access) => {
            request.extensions_mut().insert(access);
            next.run(request).await
        }
        Err(e) => {
            tracing::info!(?caller, reason = %e.message, "API request refused");
            e.into_response()
        }
    }
}

// ---------------------------------------------------------------------------
// The HTTPS listener.

/// Who is at the other end of an HTTPS connection.
#[derive(Debug, Clone)]
pub struct TlsPeer {
    pub addr: SocketAddr,
    pub caller: Caller,
}

/// A TCP listener whose connections arrive with their TLS handshake done
/// and their client certificate admitted. Handshakes run in their own
/// tasks (at most [`HANDSHAKES_MAX`], each within
/// [`HANDSHAKE_TIMEOUT_MS`]), so a slow client never holds up the others.
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, TlsPeer)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener` until the node shuts down or the
    /// returned listener is dropped. Each connection takes the node's TLS
    /// state as of its arrival (certificate, trust anchor: a reload applies
    /// to the next handshake).
    pub(crate) fn new(
        listener: TcpListener,
        node: Weak<Inner>,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (sender, accepted) = mpsc::channel(ACCEPTED_QUEUE_MAX);
        tokio::spawn(accept_loop(listener, node, sender, shutdown));
        Ok(TlsListener { accepted, local })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = TlsPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            // The accept loop ended (shutdown): no more connections; the
            // server's graceful shutdown ends its own loop.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(TlsPeer {
            addr: self.local,
            caller: Caller::Local,
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    node: Weak<Inner>,
    sender: mpsc::Sender<(TlsStream<TcpStream>, TlsPeer)>,
    shutdown: watch::Receiver<bool>,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    let stop = crate::store::stopped(shutdown);
    tokio::pin!(stop);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTPS API: accept failed");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                    continue;
                }
            },
            () = &mut stop => return,
            () = sender.closed() => return,
        };
        let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
            tracing::warn!(%addr, "HTTPS API: {HANDSHAKES_MAX} handshakes in progress; connection closed");
            continue;
        };
        let Some(state) = node.upgrade().map(|n| n.tls.current()) else {
            return;
        };
        let Some(config) = state.api.clone() else {
            tracing::error!(%addr, "HTTPS API: no TLS configuration; connection closed");
            continue;
        };
        let acceptor = TlsAcceptor::from(config);
        let trust = Arc::clone(state.identity.trust());
        let now_us = state.identity.clock();
        let sender = sender.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let timeout = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
            let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(%addr, error = %e, "HTTPS API: TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%addr, "HTTPS API: TLS handshake not done within {HANDSHAKE_TIMEOUT_MS} ms; closed");
                    return;
                }
            };
            let presented = tls.get_ref().1.peer_certificates();
            let client = match crate::net::tls::api_client_of(&trust, presented, now_us()) {
                Ok(cert) => cert.service,
                Err(e) => {
                    tracing::warn!(%addr, reason = %e, "HTTPS API: client certificate refused after the handshake");
                    return;
                }
            };
            let peer = TlsPeer {
                addr,
                caller: Caller::Client(client),
            };
            // A closed queue means the server stopped: drop the connection.
            let _ = sender.send((tls, peer)).await;
        });
    }
}

// ---------------------------------------------------------------------------
// The Unix socket.

/// Why the Unix socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UnixSocketError {
    #[error("[api] unix = {}: the path is {len} bytes, over the limit of {UNIX_PATH_BYTES_MAX} (Unix socket paths are short); choose a shorter path", .path.display())]
    TooLong { path: PathBuf, len: usize },
    #[error("[api] unix = {}: {what}: {source}", .path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("[api] unix = {}: a file that is not a socket is there; refusing to replace it", .path.display())]
    NotASocket { path: PathBuf },
    #[error("[api] unix = {}: another process is serving on this socket (is the node already running?)", .path.display())]
    InUse { path: PathBuf },
}

/// A bound Unix socket, and the file to remove when the API stops.
pub struct UnixSocket {
    pub listener: UnixListener,
    pub path: PathBuf,
    /// The socket file's inode, so only our own socket is removed at the
    /// end (not one another process bound there meanwhile).
    inode: u64,
}

impl UnixSocket {
    /// Binds `path` with mode 0600. A socket already at `path` that no
    /// process answers on (a node that died) is replaced; one that answers
    /// is not, nor a file that is not a socket.
    pub fn bind(path: &Path) -> Result<UnixSocket, UnixSocketError> {
        use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
        let len = path.as_os_str().len();
        if len > UNIX_PATH_BYTES_MAX {
            return Err(UnixSocketError::TooLong {
                path: path.to_path_buf(),
                len,
            });
        }
        let io = |what: &'static str| {
            move |source| UnixSocketError::Io {
                path: path.to_path_buf(),
                what,
                source,
            }
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(UnixSocketError::InUse {
                        path: path.to_path_buf(),
                    });
                }
                tracing::info!(path = %path.display(), "replacing a stale API socket");
            }
            Ok(_) => {
                return Err(UnixSocketError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot inspect the path")(e)),
        }
        let mut temp = path.as_os_str().to_owned();
        temp.push(UNIX_TEMP_SUFFIX);
        let temp = PathBuf::from(temp);
        match std::fs::remove_file(&temp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot remove a leftover temporary socket")(e)),
        }
        let listener = UnixListener::bind(&temp).map_err(io("cannot bind the socket"))?;
        let restrict = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
            .map_err(io("cannot restrict the socket to mode 0600"))
            .and_then(|()| {
                std::fs::rename(&temp, path).map_err(io("cannot move the socket into place"))
            });
        if let Err(e) = restrict {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        let inode = std::fs::symlink_metadata(path)
            .map_err(io("cannot inspect the bound socket"))?
            .ino();
        Ok(UnixSocket {
            listener,
            path: path.to_path_buf(),
            inode,
        })
    }

    /// Removes the socket file if it is still ours. Best effort: a failure
    /// is logged (the next start replaces a stale socket anyway).
    pub fn remove(path: &Path, inode: u64) {
        use std::os::unix::fs::MetadataExt as _;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.ino() == inode => {
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove the API socket");
                }
            }
            _ => {}
        }
    }

    /// The socket file's inode.
    pub fn inode(&self) -> u64 {
        self.inode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: &str) -> ApiClientConfig {
        ApiClientConfig {
            name: name.into(),
            publish: vec!["order.*".into()],
            queries: vec!["balance".into()],
            sagas: vec!["refund".into()],
            ..ApiClientConfig::default()
        }
    }

    #[test]
    fn permissions_match_patterns_and_name_what_is_missing() {
        let policy = Policy::new(&ApiConfig {
            clients: vec![client("app")],
            ..ApiConfig::default()
        });
        let app = policy.access(&Caller::Client("app".into())).unwrap();
        app.may_publish("order.created").unwrap();
        let e = app.may_publish("payment.made").unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert_eq!(e.field.as_deref(), Some("publish"));
        assert!(e.message.contains("payment.made"), "{}", e.message);
        app.may_query("balance").unwrap();
        assert_eq!(
            app.may_query("x").unwrap_err().field.as_deref(),
            Some("queries")
        );
        app.may_saga("refund").unwrap();
        assert!(!app.sees_saga("transfer"));
        assert_eq!(
            app.admin("status").unwrap_err().field.as_deref(),
            Some("admin")
        );
        let e = policy.access(&Caller::Client("other".into())).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(e.message.contains("[[api.clients]]"), "{}", e.message);
        let local = policy.access(&Caller::Local).unwrap();
        local.may_publish("anything").unwrap();
        local.admin("status").unwrap();
    }

    #[test]
    fn consumer_prefixes_keep_clients_apart() {
        let a = Access::Client(Arc::new(client("a")));
        let b = Access::Client(Arc::new(client("b")));
        let (pa, pb) = (a.consumer_prefix(), b.consumer_prefix());
        assert_ne!(pa, pb);
        assert!(pa.starts_with(CLIENT_CONSUMER_PREFIX), "{pa}");
        assert!(!pa.starts_with(super::super::CONSUMER_PREFIX));
        assert_eq!(
            pa.len() + CLIENT_CONSUMER_NAME_BYTES_MAX,
            crate::store::CONSUMER_NAME_BYTES_MAX
        );
        assert_eq!(Access::Operator.consumer_prefix(), "api.");
    }

    #[tokio::test]
    async fn a_unix_socket_is_0600_replaces_a_stale_one_and_refuses_a_live_one() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let first = UnixSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = UnixSocket::bind(&path).err().unwrap();
        assert!(matches!(e, UnixSocketError::InUse { .. }), "{e}");
        drop(first);
        // The file stays behind, nobody answers: stale, replaced.
        let second = UnixSocket::bind(&path).unwrap();
        UnixSocket::remove(&second.path, second.inode());
        assert!(!path.exists());
        std::fs::write(&path, b"not a socket").unwrap();
        let e = UnixSocket::bind(&path).err().unwrap();
        assert!(matches!(e, UnixSocketError::NotASocket { .. }), "{e}");
        let long = dir.path().join("x".repeat(UNIX_PATH_BYTES_MAX));
        let e = UnixSocket::bind(&long).err().unwrap();
        assert!(matches!(e, UnixSocketError::TooLong { .. }), "{e}");
    }
}
