//! The node configuration file (`a.toml`), written by `herald init` and read by
//! every command that works on a node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::{ClusterNode, IdentityError, describe_toml_error};

/// Errors reading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {message}", .path.display())]
    Parse { path: PathBuf, message: String },
    #[error("config file {}: {message}", .path.display())]
    Invalid { path: PathBuf, message: String },
}

/// One node's configuration. Relative paths are relative to the directory of
/// the config file, so a provisioned cluster directory can be moved as a whole.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The service this node speaks for; must match the SAN of `cert`.
    pub service: String,
    /// Directory holding the node's SQLite store (`herald.db`).
    pub data_dir: PathBuf,
    /// PKCS#8 PEM Ed25519 private key of this node.
    pub key: PathBuf,
    /// X.509 PEM certificate of this node, issued by `ca`.
    pub cert: PathBuf,
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// The revocation list (TOML) every verification honours, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<PathBuf>,
    /// Channel used by `publish` when none is named.
    pub default_channel: String,
    /// Channel name to key file (`channel-NAME.key`, one line per key
    /// generation: new events use the last, reads use them all).
    pub channels: BTreeMap<String, PathBuf>,
    /// UDP address the node listens on (QUIC).
    pub listen: SocketAddr,
    /// Peers this node keeps a connection to.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Executable query handlers (see `docs/QUERIES.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_handlers: Vec<QueryHandlerConfig>,
    /// Executable saga command handlers (see `docs/SAGAS.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command_handlers: Vec<CommandHandlerConfig>,
    /// The event format this node writes: 2 (sealed by checkpoints, the
    /// default) or 1 (a signature per event, for verifiers that only read
    /// format 1). Every node reads both.
    #[serde(
        default = "default_event_format",
        skip_serializing_if = "is_default_event_format"
    )]
    pub event_format: u8,
    /// Outbox tables in services' own databases that this node relays into
    /// its feed (see `docs/OUTBOX.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox_sources: Vec<OutboxSourceConfig>,
    /// Inbox tables in services' own databases this node writes received
    /// events into (see `docs/OUTBOX.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inbox_sinks: Vec<InboxSinkConfig>,
    /// The node's HTTP/JSON API (see `docs/API.md`). Absent: no API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiConfig>,
}

/// The node's HTTP/JSON API (`[api]`), and who may use it
/// (`docs/API.md`, "Access control").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// TCP address the API listens on (documented default
    /// `127.0.0.1:PORT`). On loopback it may be plain HTTP; off loopback it
    /// must be HTTPS (`tls = true`), which [`ApiConfig::check`] enforces.
    pub listen: SocketAddr,
    /// Serve HTTPS on `listen`: the node's own certificate, and a client
    /// certificate issued by the cluster CA (`herald keygen client`)
    /// required of every caller. Permissions come from `clients`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tls: bool,
    /// A Unix socket the API also listens on (created with mode 0600; a
    /// stale socket left by a dead node is replaced). Callers on it are the
    /// local operator, with full access, like loopback plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix: Option<PathBuf>,
    /// What each client certificate may do over HTTPS (`[[api.clients]]`).
    /// A certificate not listed here is answered 403 on every `/v1` route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<ApiClientConfig>,
}

impl Default for ApiConfig {
    /// Loopback plain HTTP on a port the OS picks, no socket, no clients.
    fn default() -> ApiConfig {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: false,
            unix: None,
            clients: Vec::new(),
        }
    }
}

/// Most `[[api.clients]]` entries a config may list.
pub const API_CLIENTS_MAX: usize = 1_000;
/// Most patterns (or channels) one permission list of a client may hold.
pub const API_CLIENT_PATTERNS_MAX: usize = 64;

/// One client certificate's permissions (`[[api.clients]]`). Every list is
/// empty (nothing allowed) unless given; a pattern is an exact name or a
/// `*` glob, as in `herald tail --type`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiClientConfig {
    /// The client's name: the service name of its certificate (the DNS
    /// name `herald keygen client --name` wrote).
    pub name: String,
    /// Event types it may publish (`POST /v1/events`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    /// Channels whose events it may read, stream and consume; `"*"` is
    /// every channel, unencrypted events included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_channels: Vec<String>,
    /// Query types it may ask (`POST /v1/queries`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queries: Vec<String>,
    /// Saga types it may start (`POST /v1/sagas`) and read (list, status,
    /// history).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sagas: Vec<String>,
    /// Node administration: `GET /v1/status` and `GET /v1/peers`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub admin: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ApiConfig {
    /// Refuses plain HTTP off loopback, an empty socket path and bad client
    /// entries, saying why.
    pub fn check(&self) -> Result<(), String> {
        if !self.tls && !self.listen.ip().is_loopback() {
            return Err(format!(
                "[api] listen = \"{}\" is not a loopback address, and off loopback the HTTP API is served only as HTTPS with client certificates: set `tls = true` in [api] (and list each client in [[api.clients]]), or listen on 127.0.0.1 or [::1]",
                self.listen
            ));
        }
        if let Some(unix) = &self.unix
            && unix.as_os_str().is_empty()
        {
            return Err("[api] unix is empty: give the path of the socket to create".into());
        }
        if self.clients.len() > API_CLIENTS_MAX {
            return Err(format!(
                "[[api.clients]] lists {} clients, over the limit of {API_CLIENTS_MAX}",
                self.clients.len()
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for client in &self.clients {
            let at = |m: String| format!("[[api.clients]] name = {:?}: {m}", client.name);
            crate::identity::validate_name("client", &client.name)
                .map_err(|e| at(e.to_string()))?;
            if !names.insert(client.name.as_str()) {
                return Err(at("listed twice".into()));
            }
            for (key, list) in [
                ("publish", &client.publish),
                ("read_channels", &client.read_channels),
                ("queries", &client.queries),
                ("sagas", &client.sagas),
            ] {
                if list.len() > API_CLIENT_PATTERNS_MAX {
                    return Err(at(format!(
                        "`{key}` lists {} entries, over the limit of {API_CLIENT_PATTERNS_MAX}",
                        list.len()
                    )));
                }
                for pattern in list {
                    crate::core::codec::check_event_type(pattern)
                        .map_err(|e| at(format!("`{key}` entry {pattern:?}: {e}")))?;
                }
            }
        }
        Ok(())
    }
}

/// Default outbox table name.
pub const OUTBOX_TABLE_DEFAULT: &str = "herald_outbox";
/// Default inbox table name.
pub const INBOX_TABLE_DEFAULT: &str = "herald_inbox";
/// Longest outbox source or inbox sink name, in bytes (it becomes part of a
/// consumer name and of a reserved state table name).
pub const DB_LINK_NAME_BYTES_MAX: usize = 40;
/// Longest table name of an outbox or inbox, in bytes (PostgreSQL keeps
/// identifiers to 63 bytes, and herald derives index, trigger and position
/// table names from it).
pub const DB_TABLE_NAME_BYTES_MAX: usize = 40;

/// A database URL that may hold a password: its `Debug` form hides the
/// password, so printing a config never leaks it.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct DbUrl(pub String);

impl DbUrl {
    /// The URL as written, password included (to connect with).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`, for logs and messages.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

/// `scheme://user:password@host/...` with the password replaced by `***`
/// (anything else unchanged), and `password=...` parameters likewise.
pub fn redact_url(url: &str) -> String {
    let mut out = match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(authority_end);
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
                    None => url.to_string(),
                },
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    };
    // Query-string or keyword forms: password=secret
    while let Some(at) = out.to_ascii_lowercase().find("password=") {
        let start = at + "password=".len();
        if out[start..].starts_with("***") {
            break;
        }
        let end = out[start..]
            .find(['&', ' '])
            .map_or(out.len(), |e| start + e);
        out.replace_range(start..end, "***");
    }
    out
}

/// An outbox table in a service's own database, relayed by this node: each
/// committed row becomes one signed event of this node's feed, exactly once,
/// and is then marked published (see `docs/OUTBOX.md`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutboxSourceConfig {
    /// The source's name (`herald outbox init --source NAME`, status).
    pub name: String,
    /// `postgres://…`, `mysql://…` (MariaDB) or `sqlite:///path` (a
    /// relative `sqlite://path` is relative to the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<DbUrl>,
    /// Or: the environment variable holding the URL (keeps credentials out
    /// of the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// The outbox table. Default [`OUTBOX_TABLE_DEFAULT`].
    #[serde(default = "outbox_table_default")]
    pub table: String,
    /// Channel for rows whose `channel` is NULL. Default: the node's
    /// `default_channel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Longest wait between looks at the table when nothing wakes the relay
    /// (PostgreSQL's NOTIFY normally does). Default and bounds in
    /// `crate::outbox` (`POLL_INTERVAL_MS_*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval_ms: Option<u64>,
    /// Rows read and proclaimed per batch (one herald transaction, one
    /// database transaction). Default and bound in `crate::outbox`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_rows: Option<usize>,
    /// Attempts at a row that cannot be proclaimed before it is skipped.
    /// Default in `crate::outbox` (`ROW_ATTEMPTS_DEFAULT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Keep strict order: a row that cannot be proclaimed stops the rows
    /// behind it until it is fixed or deleted (instead of being skipped).
    #[serde(default)]
    pub strict_order: bool,
}

/// An inbox table in a service's own database: received events of the
/// chosen types land there exactly once, with the sink's position per feed
/// committed in the same database transaction (see `docs/OUTBOX.md`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InboxSinkConfig {
    /// The sink's name (its durable consumer is `inbox.NAME`).
    pub name: String,
    /// As [`OutboxSourceConfig::url`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<DbUrl>,
    /// As [`OutboxSourceConfig::url_env`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// The inbox table (its positions go to `TABLE_position`). Default
    /// [`INBOX_TABLE_DEFAULT`].
    #[serde(default = "inbox_table_default")]
    pub table: String,
    /// Event type patterns (`*`, `?`), as subscriptions. Default `["*"]`;
    /// `herald.*` system events only when a pattern starts with `herald.`.
    #[serde(default = "all_types")]
    pub types: Vec<String>,
    /// Where a new sink starts: `start` (default: every event the node
    /// holds) or `now`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

fn outbox_table_default() -> String {
    OUTBOX_TABLE_DEFAULT.to_string()
}

fn inbox_table_default() -> String {
    INBOX_TABLE_DEFAULT.to_string()
}

fn all_types() -> Vec<String> {
    vec!["*".to_string()]
}

/// Checks a source or sink name: 1 to [`DB_LINK_NAME_BYTES_MAX`] bytes of
/// `a-z`, `0-9`, `_`, `-`.
pub fn check_db_link_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= DB_LINK_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "name {name:?} must be 1 to {DB_LINK_NAME_BYTES_MAX} bytes of a-z, 0-9, '_', '-'"
        ))
    }
}

/// Checks a table name: a letter or `_`, then letters, digits or `_`, at most
/// [`DB_TABLE_NAME_BYTES_MAX`] bytes. Such a name needs no quoting in
/// PostgreSQL, MariaDB or SQLite, so it is written into SQL as is.
pub fn check_table_name(table: &str) -> Result<(), String> {
    let mut bytes = table.bytes();
    let valid = table.len() <= DB_TABLE_NAME_BYTES_MAX
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "table {table:?} must be 1 to {DB_TABLE_NAME_BYTES_MAX} bytes: a letter or '_', then letters, digits or '_'"
        ))
    }
}

/// Checks that exactly one of `url` and `url_env` is set and that a set URL
/// names a supported database.
fn check_db_url(url: Option<&DbUrl>, url_env: Option<&str>) -> Result<(), String> {
    match (url, url_env) {
        (Some(url), None) => check_db_scheme(url.expose()),
        (None, Some(var)) if !var.is_empty() => Ok(()),
        _ => Err("set exactly one of `url` and `url_env`".to_string()),
    }
}

/// Whether `url` starts with a supported scheme.
pub fn check_db_scheme(url: &str) -> Result<(), String> {
    const SCHEMES: [&str; 5] = [
        "postgres://",
        "postgresql://",
        "mysql://",
        "mariadb://",
        "sqlite://",
    ];
    if SCHEMES.iter().any(|s| url.starts_with(s)) {
        Ok(())
    } else {
        Err(format!(
            "url {} must start with postgres://, mysql:// (MariaDB) or sqlite://",
            redact_url(url)
        ))
    }
}

fn default_event_format() -> u8 {
    crate::core::limits::FORMAT_VERSION
}

fn is_default_event_format(format: &u8) -> bool {
    *format == default_event_format()
}

/// An executable that runs a saga command (or compensation) type.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommandHandlerConfig {
    /// The command type it runs (a step's `command` or `compensation`).
    pub command_type: String,
    /// Program and arguments (no shell), resolved like a query handler's.
    /// It reads the command (JSON) on stdin; exit 0 completes the step with
    /// stdout as the result, any other exit fails it with stderr.
    pub command: Vec<String>,
    /// How long it may run before it is killed and the step fails.
    /// Default: [`EXEC_TIMEOUT_MS_DEFAULT`](crate::saga::participant::EXEC_TIMEOUT_MS_DEFAULT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// A configured peer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's service name (its certificate SAN).
    pub name: String,
    /// The peer's UDP address.
    pub address: SocketAddr,
}

/// An executable that answers one query type (contract in `docs/QUERIES.md`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueryHandlerConfig {
    /// The query type it answers; `herald.*` is reserved for built-ins.
    pub query_type: String,
    /// Program and arguments (no shell). A program containing `/` is a path,
    /// relative to the config file's directory unless absolute; a bare name
    /// is looked up in `PATH` when the handler runs.
    pub command: Vec<String>,
    /// Its own deadline; the request's deadline still applies when shorter.
    /// Default: [`EXEC_TIMEOUT_MS_DEFAULT`](crate::node::query::EXEC_TIMEOUT_MS_DEFAULT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
}

impl NodeConfig {
    /// Reads and parses `path`, then resolves every relative path against the
    /// config file's directory.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config: NodeConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: describe_toml_error(&text, &e),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        // Names end up in certificates (SAN), feeds and peer sessions: a
        // node whose own or peer names cannot be valid would start and then
        // never author an event or never hear from that peer.
        crate::core::codec::check_service_name(&config.service)
            .map_err(|e| invalid(format!("`service`: {e}")))?;
        let mut peer_names = std::collections::BTreeSet::new();
        for peer in &config.peers {
            crate::core::codec::check_service_name(&peer.name)
                .map_err(|e| invalid(format!("peer: {e}")))?;
            if peer.name == config.service {
                return Err(invalid(format!(
                    "peer {:?} is this node itself (its `service`)",
                    peer.name
                )));
            }
            if !peer_names.insert(peer.name.as_str()) {
                return Err(invalid(format!("peer {:?} is listed twice", peer.name)));
            }
        }
        // Every `publish` without `--channel` uses the default channel: a name
        // with no key would start a node on which every such publish fails.
        if !config.channels.contains_key(&config.default_channel) {
            let known: Vec<&str> = config.channels.keys().map(String::as_str).collect();
            return Err(invalid(format!(
                "default_channel {:?} is not in [channels] (channels: {})",
                config.default_channel,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        for handler in &config.query_handlers {
            crate::core::query::check_exec_handler(
                &handler.query_type,
                &handler.command,
                handler.timeout_ms,
            )
            .map_err(|e| ConfigError::Invalid {
                path: path.to_path_buf(),
                message: format!("query handler: {e}"),
            })?;
        }
        for handler in &config.command_handlers {
            if handler.command_type.is_empty()
                || handler
                    .command_type
                    .starts_with(crate::core::event::RESERVED_TYPE_PREFIX)
                || handler.command.first().is_none_or(|p| p.is_empty())
            {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: format!(
                        "command handler {:?}: needs a command_type outside herald.* and a non-empty command",
                        handler.command_type
                    ),
                });
            }
        }
        let mut link_names = std::collections::BTreeSet::new();
        for source in &config.outbox_sources {
            let at = |m: String| invalid(format!("outbox source {:?}: {m}", source.name));
            check_db_link_name(&source.name).map_err(at)?;
            check_table_name(&source.table).map_err(at)?;
            check_db_url(source.url.as_ref(), source.url_env.as_deref()).map_err(at)?;
            if let Some(channel) = &source.channel
                && !config.channels.contains_key(channel)
            {
                return Err(at(format!("channel {channel:?} is not in [channels]")));
            }
            if !link_names.insert(("source", source.name.as_str())) {
                return Err(at("listed twice".into()));
            }
        }
        for sink in &config.inbox_sinks {
            let at = |m: String| invalid(format!("inbox sink {:?}: {m}", sink.name));
            check_db_link_name(&sink.name).map_err(at)?;
            check_table_name(&sink.table).map_err(at)?;
            check_db_url(sink.url.as_ref(), sink.url_env.as_deref()).map_err(at)?;
            if sink.types.is_empty() {
                return Err(at("`types` lists no pattern".into()));
            }
            if let Some(from) = &sink.from
                && from != "start"
                && from != "now"
            {
                return Err(at(format!("`from` is {from:?}: use \"start\" or \"now\"")));
            }
            if !link_names.insert(("sink", sink.name.as_str())) {
                return Err(at("listed twice".into()));
            }
        }
        if let Some(api) = &config.api {
            api.check().map_err(invalid)?;
            // A client certificate named after a node is that node's own
            // client identity on QUIC (`herald-client/1`, full access).
            let nodes =
                std::iter::once(&config.service).chain(config.peers.iter().map(|p| &p.name));
            for node in nodes {
                if api.clients.iter().any(|c| &c.name == node) {
                    return Err(invalid(format!(
                        "[[api.clients]] name = {node:?} is a node of this cluster; a client certificate with a node's name would also be that node's own client identity on QUIC, so give API clients names of their own"
                    )));
                }
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// The config of a node provisioned by [`init_cluster`]: the files
    /// identity wrote, its store in `data/NAME`, every other node a peer,
    /// and no handlers.
    pub fn for_cluster_node(node: &ClusterNode) -> NodeConfig {
        NodeConfig {
            service: node.service.clone(),
            data_dir: PathBuf::from("data").join(&node.service),
            key: node.key.clone(),
            cert: node.cert.clone(),
            ca: node.ca.clone(),
            revoked: Some(node.revoked.clone()),
            default_channel: node.channel.clone(),
            channels: BTreeMap::from([(node.channel.clone(), node.channel_key.clone())]),
            listen: node.listen,
            peers: node
                .peers
                .iter()
                .map(|(name, address)| PeerConfig {
                    name: name.clone(),
                    address: *address,
                })
                .collect(),
            query_handlers: Vec::new(),
            command_handlers: Vec::new(),
            event_format: default_event_format(),
            outbox_sources: Vec::new(),
            inbox_sinks: Vec::new(),
            api: None,
        }
    }

    /// Serialises the config as TOML (paths as they are held).
    pub fn to_toml(&self) -> String {
        // Serialising plain strings, paths and addresses cannot fail.
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The trust anchor (CA and revocation list) and this node's identity,
    /// checked valid at `now_us`.
    pub fn load_identity(
        &self,
        now_us: u64,
    ) -> Result<
        (crate::identity::TrustAnchor, crate::identity::NodeIdentity),
        crate::identity::IdentityError,
    > {
        let trust = crate::identity::TrustAnchor::load(&self.ca, self.revoked.as_deref())?;
        let identity = crate::identity::NodeIdentity::load(
            &self.service,
            &self.key,
            &self.cert,
            &trust,
            now_us,
        )?;
        Ok((trust, identity))
    }

    /// Every generation of every channel key the config names: per channel
    /// oldest first, so the last key of a channel is the one new events use
    /// (see `identity::load_channel_keyring`).
    pub fn load_channel_keys(
        &self,
    ) -> Result<Vec<crate::core::crypto::ChannelKey>, crate::identity::IdentityError> {
        let mut keys = Vec::new();
        for (name, path) in &self.channels {
            keys.extend(crate::identity::load_channel_keyring(name, path)?);
        }
        Ok(keys)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.data_dir);
        resolve(&mut self.key);
        resolve(&mut self.cert);
        resolve(&mut self.ca);
        if let Some(r) = self.revoked.as_mut() {
            resolve(r);
        }
        for p in self.channels.values_mut() {
            resolve(p);
        }
        if let Some(p) = self.api.as_mut().and_then(|a| a.unix.as_mut()) {
            resolve(p);
        }
        // A relative SQLite database path is relative to the config file.
        let urls = self
            .outbox_sources
            .iter_mut()
            .filter_map(|s| s.url.as_mut())
            .chain(self.inbox_sinks.iter_mut().filter_map(|s| s.url.as_mut()));
        for url in urls {
            if let Some(file) = url.0.strip_prefix("sqlite://")
                && Path::new(file).is_relative()
            {
                url.0 = format!("sqlite://{}", base.join(file).display());
            }
        }
        let programs = self
            .query_handlers
            .iter_mut()
            .map(|h| &mut h.command)
            .chain(self.command_handlers.iter_mut().map(|h| &mut h.command));
        for command in programs {
            if let Some(program) = command.first_mut()
                && program.contains('/')
                && Path::new(program.as_str()).is_relative()
            {
                *program = base.join(program.as_str()).to_string_lossy().into_owned();
            }
        }
    }
}

/// Provisions a local cluster in `dir`: `dir/keys/` (CA, one node
/// certificate and key per name, `channel-default.key`, an empty
/// `revoked.toml`) and one config `dir/NAME.toml` per node with paths
/// relative to `dir` (see [`NodeConfig::for_cluster_node`]). Node `i`
/// listens on `127.0.0.1:(base_port + i)` and peers with every other node.
/// The CA and node certificates are valid for `validity_days`.
pub fn init_cluster(
    dir: &Path,
    nodes: &[String],
    base_port: u16,
    validity_days: u32,
    force: bool,
) -> Result<Vec<PathBuf>, IdentityError> {
    init_cluster_with_api(dir, nodes, base_port, None, validity_days, force)
}

/// [`init_cluster`], and with `api_base_port` an `[api]` section per node:
/// node `i`'s HTTP API listens on TCP `127.0.0.1:(api_base_port + i)`.
pub fn init_cluster_with_api(
    dir: &Path,
    nodes: &[String],
    base_port: u16,
    api_base_port: Option<u16>,
    validity_days: u32,
    force: bool,
) -> Result<Vec<PathBuf>, IdentityError> {
    if let Some(api) = api_base_port
        && (api == 0 || u32::from(api) + nodes.len().saturating_sub(1) as u32 > u32::from(u16::MAX))
    {
        return Err(IdentityError::InvalidArgument(format!(
            "--api-base-port {api} with {} nodes does not fit in ports 1..=65535",
            nodes.len()
        )));
    }
    crate::identity::init_cluster_with(dir, nodes, base_port, validity_days, force, |node| {
        let mut config = NodeConfig::for_cluster_node(node);
        if let Some(api) = api_base_port {
            // Node i listens on base_port + i; its API on api_base_port + i.
            let index = node.listen.port() - base_port;
            config.api = Some(ApiConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], api + index)),
                ..ApiConfig::default()
            });
        }
        config.to_toml()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
service = "a"
data_dir = "data-a"
key = "keys/a.key"
cert = "keys/a.crt"
ca = "keys/ca.crt"
default_channel = "default"
listen = "127.0.0.1:17400"

[channels]
default = "keys/channel-default.key"
"#;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("a.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    #[test]
    fn query_handlers_default_to_none_and_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = NodeConfig::load(&write(dir.path(), BASE)).expect("existing config loads");
        assert!(old.query_handlers.is_empty());
        assert!(!old.to_toml().contains("query_handlers"));

        let text = format!(
            "{BASE}\n[[query_handlers]]\nquery_type = \"stock.level\"\ncommand = [\"handlers/stock.sh\", \"--fast\"]\ntimeout_ms = 2500\n\n[[query_handlers]]\nquery_type = \"price\"\ncommand = [\"jq\", \".\"]\n"
        );
        let config = NodeConfig::load(&write(dir.path(), &text)).expect("loads");
        let expected = vec![
            QueryHandlerConfig {
                query_type: "stock.level".into(),
                command: vec![
                    dir.path()
                        .join("handlers/stock.sh")
                        .to_string_lossy()
                        .into_owned(),
                    "--fast".into(),
                ],
                timeout_ms: Some(2500),
            },
            QueryHandlerConfig {
                query_type: "price".into(),
                command: vec!["jq".into(), ".".into()],
                timeout_ms: None,
            },
        ];
        assert_eq!(config.query_handlers, expected);
        let again: NodeConfig = toml::from_str(&config.to_toml()).expect("reparses");
        assert_eq!(again, config);
    }

    #[test]
    fn configs_that_cannot_work_are_refused_naming_the_culprit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let peer =
            |name: &str| format!("\n[[peers]]\nname = \"{name}\"\naddress = \"127.0.0.1:9\"\n");
        for (text, needle) in [
            (
                BASE.replace("\"default\"\nlisten", "\"news\"\nlisten"),
                "\"news\"",
            ),
            (
                BASE.replace("service = \"a\"", "service = \"A_1\""),
                "\"A_1\"",
            ),
            (format!("{BASE}{}", peer("a")), "itself"),
            (format!("{BASE}{}{}", peer("b"), peer("b")), "twice"),
            (format!("{BASE}{}", peer("-b")), "\"-b\""),
        ] {
            let e = NodeConfig::load(&write(dir.path(), &text)).unwrap_err();
            assert!(matches!(e, ConfigError::Invalid { .. }), "{e}");
            let message = e.to_string();
            assert!(message.contains(needle), "{message:?} should name {needle}");
            assert!(
                message.contains("a.toml"),
                "{message:?} should name the file"
            );
        }
    }

    #[test]
    fn toml_errors_are_one_line_with_line_column_and_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Top level (after `[channels]` it would be a channel).
        let text = format!("bogus = 1{BASE}");
        let e = NodeConfig::load(&write(dir.path(), &text)).unwrap_err();
        let message = e.to_string();
        assert!(
            message.contains("line 1, column 1 (`bogus = 1`): unknown field `bogus`"),
            "{message}"
        );
        assert_eq!(message.lines().count(), 1, "{message}");
        let text = BASE.replace("127.0.0.1:17400", "nowhere");
        let message = NodeConfig::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(message.contains("(`listen = \"nowhere\"`)"), "{message}");
        assert_eq!(message.lines().count(), 1, "{message}");
    }

    #[test]
    fn outbox_sources_and_inbox_sinks_take_defaults_and_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "{BASE}\n[[outbox_sources]]\nname = \"ledger\"\nurl = \"postgres://l:secret@127.0.0.1/l\"\n\n[[inbox_sinks]]\nname = \"reports\"\nurl = \"sqlite://svc/reports.db\"\n"
        );
        let config = NodeConfig::load(&write(dir.path(), &text)).expect("loads");
        let source = &config.outbox_sources[0];
        assert_eq!(source.table, OUTBOX_TABLE_DEFAULT);
        assert!(!source.strict_order && source.batch_rows.is_none());
        assert!(
            !format!("{config:?}").contains("secret"),
            "Debug hides the password"
        );
        let sink = &config.inbox_sinks[0];
        assert_eq!(sink.table, INBOX_TABLE_DEFAULT);
        assert_eq!(sink.types, ["*"]);
        let expected = format!("sqlite://{}", dir.path().join("svc/reports.db").display());
        assert_eq!(
            sink.url.as_ref().map(DbUrl::expose),
            Some(expected.as_str())
        );

        for (entry, needle) in [
            (
                "[[outbox_sources]]\nname = \"Bad Name\"\nurl = \"sqlite://x\"",
                "\"Bad Name\"",
            ),
            (
                "[[outbox_sources]]\nname = \"x\"",
                "exactly one of `url` and `url_env`",
            ),
            (
                "[[outbox_sources]]\nname = \"x\"\nurl = \"sqlite://x\"\nurl_env = \"X\"",
                "exactly one",
            ),
            (
                "[[outbox_sources]]\nname = \"x\"\nurl = \"oracle://u:pw@h/d\"",
                "u:***@h",
            ),
            (
                "[[outbox_sources]]\nname = \"x\"\nurl = \"sqlite://x\"\ntable = \"t; drop\"",
                "table",
            ),
            (
                "[[outbox_sources]]\nname = \"x\"\nurl = \"sqlite://x\"\nchannel = \"nope\"",
                "\"nope\"",
            ),
            (
                "[[inbox_sinks]]\nname = \"x\"\nurl = \"sqlite://x\"\ntypes = []",
                "no pattern",
            ),
            (
                "[[inbox_sinks]]\nname = \"x\"\nurl = \"sqlite://x\"\nfrom = \"later\"",
                "later",
            ),
        ] {
            let text = format!("{BASE}\n{entry}\n");
            let e = NodeConfig::load(&write(dir.path(), &text)).unwrap_err();
            let message = e.to_string();
            assert!(
                message.contains(needle),
                "{message:?} should say {needle:?}"
            );
            assert!(!message.contains(":pw@"), "{message}");
        }
    }

    #[test]
    fn api_section_is_optional_plain_http_only_on_loopback_and_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = NodeConfig::load(&write(dir.path(), BASE)).expect("a config without [api]");
        assert_eq!(old.api, None);
        assert!(!old.to_toml().contains("[api]"));
        for listen in ["127.0.0.1:8400", "127.0.0.5:0", "[::1]:8400"] {
            let text = format!("{BASE}\n[api]\nlisten = \"{listen}\"\n");
            let config = NodeConfig::load(&write(dir.path(), &text)).expect("loopback loads");
            assert_eq!(
                config.api.as_ref().map(|a| a.listen.to_string()).as_deref(),
                Some(listen)
            );
            let again: NodeConfig = toml::from_str(&config.to_toml()).expect("reparses");
            assert_eq!(again, config);
        }
        for listen in ["0.0.0.0:8400", "192.168.1.4:8400", "[::]:8400"] {
            let text = format!("{BASE}\n[api]\nlisten = \"{listen}\"\n");
            let message = NodeConfig::load(&write(dir.path(), &text))
                .unwrap_err()
                .to_string();
            assert!(message.contains(listen), "{message}");
            assert!(message.contains("tls = true"), "{message}");
            // With HTTPS it may listen anywhere.
            let text = format!("{BASE}\n[api]\nlisten = \"{listen}\"\ntls = true\n");
            let config = NodeConfig::load(&write(dir.path(), &text)).expect("HTTPS off loopback");
            assert!(config.api.as_ref().is_some_and(|a| a.tls));
        }
        let text = format!("{BASE}\n[api]\nlisten = \"127.0.0.1:1\"\nport = 2\n");
        assert!(
            NodeConfig::load(&write(dir.path(), &text)).is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn api_clients_and_socket_are_checked_resolved_and_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "{BASE}\n[api]\nlisten = \"127.0.0.1:0\"\ntls = true\nunix = \"run/api.sock\"\n\n[[api.clients]]\nname = \"billing\"\npublish = [\"order.*\"]\nread_channels = [\"default\"]\nqueries = [\"balance\"]\nsagas = [\"refund\"]\nadmin = true\n\n[[api.clients]]\nname = \"viewer\"\n"
        );
        let config = NodeConfig::load(&write(dir.path(), &text)).expect("loads");
        let api = config.api.clone().expect("[api]");
        assert_eq!(api.unix, Some(dir.path().join("run/api.sock")));
        assert_eq!(api.clients.len(), 2);
        assert_eq!(api.clients[0].publish, ["order.*"]);
        assert!(api.clients[0].admin);
        assert_eq!(
            api.clients[1],
            ApiClientConfig {
                name: "viewer".into(),
                ..ApiClientConfig::default()
            }
        );
        let again: NodeConfig = toml::from_str(&config.to_toml()).expect("reparses");
        assert_eq!(again, config);
        for (entry, needle) in [
            ("name = \"Bad Name\"", "Bad Name"),
            ("name = \"x\"\npublish = [\"has space\"]", "has space"),
            ("name = \"x\"\nwrite = true", "write"),
        ] {
            let text =
                format!("{BASE}\n[api]\nlisten = \"127.0.0.1:0\"\n[[api.clients]]\n{entry}\n");
            let message = NodeConfig::load(&write(dir.path(), &text))
                .unwrap_err()
                .to_string();
            assert!(
                message.contains(needle),
                "{message:?} should say {needle:?}"
            );
        }
        let service = NodeConfig::load(&write(dir.path(), BASE))
            .expect("base")
            .service;
        let text = format!(
            "{BASE}\n[api]\nlisten = \"127.0.0.1:0\"\n[[api.clients]]\nname = \"{service}\"\n"
        );
        let message = NodeConfig::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(message.contains("is a node of this cluster"), "{message}");
        let text = format!(
            "{BASE}\n[api]\nlisten = \"127.0.0.1:0\"\n[[api.clients]]\nname = \"x\"\n[[api.clients]]\nname = \"x\"\n"
        );
        let message = NodeConfig::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(message.contains("listed twice"), "{message}");
    }

    #[test]
    fn init_with_an_api_base_port_gives_each_node_its_own_api_port() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes = ["a".to_string(), "b".to_string()];
        init_cluster_with_api(dir.path(), &nodes, 7400, Some(8400), 30, false).expect("init");
        let ports: Vec<Option<u16>> = nodes
            .iter()
            .map(|n| {
                NodeConfig::load(&dir.path().join(format!("{n}.toml")))
                    .expect("loads")
                    .api
                    .map(|a| a.listen.port())
            })
            .collect();
        assert_eq!(ports, [Some(8400), Some(8401)]);
        let plain = tempfile::tempdir().expect("tempdir");
        init_cluster(plain.path(), &nodes, 7400, 30, false).expect("init");
        let a = NodeConfig::load(&plain.path().join("a.toml")).expect("loads");
        assert_eq!(a.api, None, "no API unless asked");
        let full = tempfile::tempdir().expect("tempdir");
        let e =
            init_cluster_with_api(full.path(), &nodes, 7400, Some(65535), 30, false).unwrap_err();
        assert!(e.to_string().contains("--api-base-port 65535"), "{e}");
    }

    #[test]
    fn query_handler_config_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in [
            "query_type = \"herald.head\"\ncommand = [\"x\"]",
            "query_type = \"ok\"\ncommand = []",
            "query_type = \"ok\"\ncommand = [\"x\"]\ntimeout_ms = 0",
            "query_type = \"has space\"\ncommand = [\"x\"]",
        ] {
            let text = format!("{BASE}\n[[query_handlers]]\n{bad}\n");
            let e = NodeConfig::load(&write(dir.path(), &text)).unwrap_err();
            assert!(matches!(e, ConfigError::Invalid { .. }), "{bad}: {e}");
        }
    }
}
