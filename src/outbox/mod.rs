//! The service's own database (architecture section 10): the outbox relay
//! and the inbox sink, for PostgreSQL, MariaDB and SQLite.
//!
//! * [`relay`]: a service writes its state and a row of its outbox table in
//!   one transaction of its own database; the node proclaims each committed
//!   row as a signed event of its feed, exactly once, and marks it published.
//!   Exactly once rests on herald's own store: the relay records "row id →
//!   sequence number" in the same herald transaction that proclaims the
//!   event, so a retry after any crash finds the record and only marks the
//!   row.
//! * [`sink`]: received events of chosen types land in an inbox table of the
//!   service's database with the sink's position per feed in the same
//!   database transaction, so each lands exactly once, in order per feed.
//! * `pg`, `maria`, `sqlite`: one SQL dialect and driver per backend
//!   (tokio-postgres with LISTEN/NOTIFY, mysql_async polling, rusqlite
//!   polling), behind one `Db` enum.
//!
//! Every database call has a deadline ([`DB_CALL_TIMEOUT_MS`]); a database
//! that is down is retried with a doubling backoff from
//! [`RECONNECT_BACKOFF_MIN_MS`] to [`RECONNECT_BACKOFF_MAX_MS`], logged once
//! per change of state, and never stops the node. URLs are only ever shown
//! with their password replaced (`DbUrl::redacted`). `docs/OUTBOX.md`
//! describes the tables and the guarantees.

mod maria;
mod pg;
pub mod relay;
pub mod sink;
mod sqlite;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{DbUrl, InboxSinkConfig, NodeConfig, OutboxSourceConfig};
use crate::store::Log;

/// Default longest wait between looks at an outbox table when nothing wakes
/// the relay. PostgreSQL wakes it at once through NOTIFY; MariaDB and SQLite
/// are polled at this interval.
pub const POLL_INTERVAL_MS_DEFAULT: u64 = 100;
/// Shortest allowed poll interval (a smaller one only burns the database).
pub const POLL_INTERVAL_MS_MIN: u64 = 10;
/// Longest allowed poll interval.
pub const POLL_INTERVAL_MS_MAX: u64 = 60_000;
/// Default rows per relay batch (one herald transaction, one database
/// transaction to mark them).
pub const BATCH_ROWS_DEFAULT: usize = 1024;
/// Most rows per relay batch: what one herald transaction may proclaim.
pub const BATCH_ROWS_MAX: usize = crate::store::TRANSACT_EVENTS_MAX;
/// Default attempts at a row that cannot be proclaimed before it is skipped
/// (it stays in the table with `last_error`, unpublished).
pub const ROW_ATTEMPTS_DEFAULT: u32 = 3;
/// Most attempts that may be configured.
pub const ROW_ATTEMPTS_MAX: u32 = 1_000;
/// Longest outbox row id, in bytes (it becomes the `outbox.id` metadata).
pub const ROW_ID_BYTES_MAX: usize = 128;
/// Longest `last_error` written back into a row, in bytes.
pub const ROW_ERROR_BYTES_MAX: usize = 1_000;
/// Events per sink batch: one database transaction.
pub const SINK_BATCH_EVENTS_MAX: usize = crate::store::SUBSCRIPTION_BATCH_EVENTS_MAX;
/// Deadline of every database call (connect, read, write, commit).
pub const DB_CALL_TIMEOUT_MS: u64 = 30_000;
/// First wait before reconnecting to a database (or retrying herald's store).
pub const RECONNECT_BACKOFF_MIN_MS: u64 = 100;
/// Longest wait between reconnection attempts.
pub const RECONNECT_BACKOFF_MAX_MS: u64 = 5_000;
/// How often a relay counts its table's backlog for `herald status`.
pub const STATUS_REFRESH_MS: u64 = 1_000;
/// How long SQLite waits for the service's own write transactions to end.
pub const SQLITE_BUSY_TIMEOUT_MS: u64 = 5_000;
/// Prefix of the herald state table that records, per source, which rows
/// were proclaimed (`herald.outbox.NAME`).
pub const RELAY_STATE_TABLE_PREFIX: &str = "herald.outbox.";
/// Prefix of an inbox sink's durable consumer name (`inbox.NAME`).
pub const SINK_CONSUMER_PREFIX: &str = "inbox.";

/// Errors of the outbox relay and inbox sink. Messages name the database
/// (URL without password), what was being done and why it failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("{0}")]
    Config(String),
    #[error("{what} ({url}): {message}")]
    Postgres {
        what: &'static str,
        url: String,
        /// The server's own words when it answered, else the driver's.
        message: String,
        source: tokio_postgres::Error,
    },
    #[error("{what} ({url}): {source}")]
    Maria {
        what: &'static str,
        url: String,
        source: mysql_async::Error,
    },
    #[error("{what} ({url}): {source}")]
    Sqlite {
        what: &'static str,
        url: String,
        source: rusqlite::Error,
    },
    #[error("{what} ({url}): no answer within {DB_CALL_TIMEOUT_MS} ms")]
    Timeout { what: &'static str, url: String },
    #[error("herald store: {0}")]
    Herald(String),
    #[error("{0}")]
    Task(String),
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Postgres,
    Mariadb,
    Sqlite,
}

impl Backend {
    /// The backend of `url` (`postgres://`, `mysql://` or `mariadb://`,
    /// `sqlite://`).
    pub fn of(url: &str) -> Result<Backend, OutboxError> {
        crate::config::check_db_scheme(url).map_err(OutboxError::Config)?;
        Ok(if url.starts_with("postgres") {
            Backend::Postgres
        } else if url.starts_with("sqlite://") {
            Backend::Sqlite
        } else {
            Backend::Mariadb
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Mariadb => "mariadb",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// A database to connect to: its backend and URL.
#[derive(Clone)]
pub struct Target {
    pub backend: Backend,
    url: DbUrl,
    /// What to call the connection on the server (PostgreSQL
    /// `application_name`), so an operator sees who holds it.
    pub app_name: String,
}

impl Target {
    /// The URL of `url` or, failing that, of the environment variable
    /// `url_env`.
    pub fn resolve(
        url: Option<&DbUrl>,
        url_env: Option<&str>,
        app_name: String,
    ) -> Result<Target, OutboxError> {
        let url = match (url, url_env) {
            (Some(url), _) => url.clone(),
            (None, Some(var)) => DbUrl(std::env::var(var).map_err(|_| {
                OutboxError::Config(format!(
                    "environment variable {var} (url_env) is not set or not UTF-8"
                ))
            })?),
            (None, None) => {
                return Err(OutboxError::Config(
                    "neither `url` nor `url_env` is set".into(),
                ));
            }
        };
        Ok(Target {
            backend: Backend::of(url.expose())?,
            url,
            app_name,
        })
    }

    /// The URL with its password replaced, for messages.
    pub fn redacted(&self) -> String {
        self.url.redacted()
    }

    pub(crate) fn expose(&self) -> &str {
        self.url.expose()
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.backend.name(), self.redacted())
    }
}

/// A row of an outbox table as the relay reads it.
#[derive(Debug, Clone)]
pub(crate) struct OutboxRow {
    pub order: i64,
    pub id: String,
    pub event_type: String,
    pub payload: Option<String>,
    pub metadata: Option<String>,
    pub channel: Option<String>,
}

/// A row the relay proclaimed (now or in an earlier attempt).
#[derive(Debug, Clone)]
pub(crate) struct Published {
    pub order: i64,
    pub seq: i64,
}

/// A row the relay could not proclaim, and why.
#[derive(Debug, Clone)]
pub(crate) struct Failed {
    pub order: i64,
    pub error: String,
}

/// An event as an inbox sink writes it.
#[derive(Debug, Clone)]
pub(crate) struct InboxRow {
    pub event_id: String,
    pub feed: String,
    pub seq: i64,
    pub event_type: String,
    pub timestamp_us: i64,
    pub metadata: String,
    pub channel: Option<String>,
    pub payload: Option<String>,
    pub event_hash: String,
}

/// An open connection to one of the supported databases.
pub(crate) enum Db {
    Postgres(pg::Pg),
    Maria(maria::Maria),
    Sqlite(sqlite::Sqlite),
}

/// Runs `call` with the [`DB_CALL_TIMEOUT_MS`] deadline.
async fn bounded<T>(
    target: &Target,
    what: &'static str,
    call: impl std::future::Future<Output = Result<T, OutboxError>>,
) -> Result<T, OutboxError> {
    match tokio::time::timeout(Duration::from_millis(DB_CALL_TIMEOUT_MS), call).await {
        Ok(result) => result,
        Err(_) => Err(OutboxError::Timeout {
            what,
            url: target.redacted(),
        }),
    }
}

impl Db {
    /// Connects; `listen` names a PostgreSQL NOTIFY channel to listen on.
    pub(crate) async fn connect(target: &Target, listen: Option<&str>) -> Result<Db, OutboxError> {
        bounded(target, "connecting", async {
            Ok(match target.backend {
                Backend::Postgres => Db::Postgres(pg::Pg::connect(target, listen).await?),
                Backend::Mariadb => Db::Maria(maria::Maria::connect(target).await?),
                Backend::Sqlite => Db::Sqlite(sqlite::Sqlite::open(target)?),
            })
        })
        .await
    }

    /// The server's id for this session (PostgreSQL backend pid, MariaDB
    /// connection id), shown in `herald status`.
    pub(crate) fn session(&self) -> Option<String> {
        match self {
            Db::Postgres(c) => Some(format!("pid {}", c.pid)),
            Db::Maria(c) => Some(format!("connection {}", c.id())),
            Db::Sqlite(_) => None,
        }
    }

    /// Resolves when PostgreSQL notified an insert (or the connection
    /// ended); never for the polled backends.
    pub(crate) async fn notified(&self) {
        match self {
            Db::Postgres(c) => c.notify.notified().await,
            _ => std::future::pending().await,
        }
    }

    /// Runs DDL statements (`herald outbox init`, `herald inbox init`).
    pub(crate) async fn execute_ddl(
        &mut self,
        target: &Target,
        ddl: &[String],
    ) -> Result<(), OutboxError> {
        bounded(target, "creating tables", async {
            match self {
                Db::Postgres(c) => c.execute_ddl(target, ddl).await,
                Db::Maria(c) => c.execute_ddl(target, ddl).await,
                Db::Sqlite(c) => c.execute_ddl(target, ddl).await,
            }
        })
        .await
    }

    /// Up to `limit` unpublished rows in insertion order, leaving out the
    /// rows `exclude` (being marked); with `max_attempts`, only rows tried
    /// fewer times.
    pub(crate) async fn fetch(
        &mut self,
        target: &Target,
        table: &str,
        limit: usize,
        max_attempts: Option<u32>,
        exclude: &[i64],
    ) -> Result<Vec<OutboxRow>, OutboxError> {
        bounded(target, "reading the outbox", async {
            match self {
                Db::Postgres(c) => c.fetch(target, table, limit, max_attempts, exclude).await,
                Db::Maria(c) => c.fetch(target, table, limit, max_attempts, exclude).await,
                Db::Sqlite(c) => c.fetch(target, table, limit, max_attempts, exclude).await,
            }
        })
        .await
    }

    /// Marks rows published (as `feed`, their seq) and records failures, in
    /// one database transaction.
    pub(crate) async fn mark(
        &mut self,
        target: &Target,
        table: &str,
        feed: &str,
        published: &[Published],
        failed: &[Failed],
    ) -> Result<(), OutboxError> {
        bounded(target, "marking rows published", async {
            match self {
                Db::Postgres(c) => c.mark(target, table, feed, published, failed).await,
                Db::Maria(c) => c.mark(target, table, feed, published, failed).await,
                Db::Sqlite(c) => c.mark(target, table, feed, published, failed).await,
            }
        })
        .await
    }

    /// Unpublished rows: (still to relay, skipped after `max_attempts`).
    pub(crate) async fn counts(
        &mut self,
        target: &Target,
        table: &str,
        max_attempts: u32,
    ) -> Result<(u64, u64), OutboxError> {
        bounded(target, "counting the backlog", async {
            match self {
                Db::Postgres(c) => c.counts(target, table, max_attempts).await,
                Db::Maria(c) => c.counts(target, table, max_attempts).await,
                Db::Sqlite(c) => c.counts(target, table, max_attempts).await,
            }
        })
        .await
    }

    /// The sink's stored position per feed.
    pub(crate) async fn positions(
        &mut self,
        target: &Target,
        table: &str,
        sink: &str,
    ) -> Result<BTreeMap<String, i64>, OutboxError> {
        bounded(target, "reading the inbox position", async {
            match self {
                Db::Postgres(c) => c.positions(target, table, sink).await,
                Db::Maria(c) => c.positions(target, table, sink).await,
                Db::Sqlite(c) => c.positions(target, table, sink).await,
            }
        })
        .await
    }

    /// Inserts `rows` and sets the sink's `positions`, in one database
    /// transaction.
    pub(crate) async fn land(
        &mut self,
        target: &Target,
        table: &str,
        sink: &str,
        rows: &[InboxRow],
        positions: &BTreeMap<String, i64>,
    ) -> Result<(), OutboxError> {
        bounded(target, "writing the inbox", async {
            match self {
                Db::Postgres(c) => c.land(target, table, sink, rows, positions).await,
                Db::Maria(c) => c.land(target, table, sink, rows, positions).await,
                Db::Sqlite(c) => c.land(target, table, sink, rows, positions).await,
            }
        })
        .await
    }
}

/// The DDL that creates an outbox table for `backend`.
pub fn outbox_ddl(backend: Backend, table: &str) -> Vec<String> {
    match backend {
        Backend::Postgres => pg::outbox_ddl(table),
        Backend::Mariadb => maria::outbox_ddl(table),
        Backend::Sqlite => sqlite::outbox_ddl(table),
    }
}

/// The DDL that creates an inbox table and its position table for
/// `backend`.
pub fn inbox_ddl(backend: Backend, table: &str) -> Vec<String> {
    match backend {
        Backend::Postgres => pg::inbox_ddl(table),
        Backend::Mariadb => maria::inbox_ddl(table),
        Backend::Sqlite => sqlite::inbox_ddl(table),
    }
}

/// The PostgreSQL NOTIFY channel an outbox table's trigger signals.
pub fn notify_channel(table: &str) -> String {
    format!("{table}_herald")
}

/// The position table of inbox `table`.
pub fn position_table(table: &str) -> String {
    format!("{table}_position")
}

/// Creates (or, with `print`, only returns) the DDL of outbox source `name`
/// of `config`. Returns the statements.
pub async fn init_source(
    config: &NodeConfig,
    name: &str,
    print: bool,
) -> Result<(Target, Vec<String>), OutboxError> {
    let source = find_source(config, name)?;
    let target = Target::resolve(
        source.url.as_ref(),
        source.url_env.as_deref(),
        format!("herald outbox init {name}"),
    )?;
    let ddl = outbox_ddl(target.backend, &source.table);
    if !print {
        let mut db = Db::connect(&target, None).await?;
        db.execute_ddl(&target, &ddl).await?;
    }
    Ok((target, ddl))
}

/// Creates (or, with `print`, only returns) the DDL of inbox sink `name`.
pub async fn init_sink(
    config: &NodeConfig,
    name: &str,
    print: bool,
) -> Result<(Target, Vec<String>), OutboxError> {
    let sink = config
        .inbox_sinks
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| {
            OutboxError::Config(format!(
                "no [[inbox_sinks]] named {name:?} in the config (sinks: {})",
                names(config.inbox_sinks.iter().map(|s| s.name.as_str()))
            ))
        })?;
    let target = Target::resolve(
        sink.url.as_ref(),
        sink.url_env.as_deref(),
        format!("herald inbox init {name}"),
    )?;
    let ddl = inbox_ddl(target.backend, &sink.table);
    if !print {
        let mut db = Db::connect(&target, None).await?;
        db.execute_ddl(&target, &ddl).await?;
    }
    Ok((target, ddl))
}

fn find_source<'a>(
    config: &'a NodeConfig,
    name: &str,
) -> Result<&'a OutboxSourceConfig, OutboxError> {
    config
        .outbox_sources
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| {
            OutboxError::Config(format!(
                "no [[outbox_sources]] named {name:?} in the config (sources: {})",
                names(config.outbox_sources.iter().map(|s| s.name.as_str()))
            ))
        })
}

fn names<'a>(list: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = list.collect();
    if all.is_empty() {
        "none".into()
    } else {
        all.join(", ")
    }
}

/// What `herald status` shows about one outbox source or inbox sink.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DbLinkStatus {
    pub name: String,
    /// `postgres`, `mariadb` or `sqlite`.
    pub backend: String,
    /// The URL, password replaced.
    pub url: String,
    pub table: String,
    pub connected: bool,
    /// The server's id for the connection (PostgreSQL pid, MariaDB
    /// connection id), to find it in `pg_stat_activity` or the process list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Source: unpublished rows still to relay (counted every
    /// [`STATUS_REFRESH_MS`]). Sink: arrivals of the node's log not yet
    /// looked at.
    pub backlog: u64,
    /// Source: rows skipped after too many failed attempts (they keep
    /// `last_error` and `retry_count` in the table). Sink: always 0.
    pub skipped: u64,
    /// Rows relayed (source) or events written (sink) since the node started.
    pub done: u64,
    /// Rows (or events) per second over the last second or so.
    pub per_second: u64,
    /// Reconnections and failed attempts (rows or batches).
    pub retries: u64,
    pub last_error: Option<String>,
    /// When `last_error` happened (microseconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at_us: Option<u64>,
    /// Sink: the last arrival of the node's log written or passed over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
}

/// One link's status and its rate meter.
#[derive(Debug)]
struct LinkState {
    status: DbLinkStatus,
    window_start: Instant,
    window_done: u64,
}

/// Shared status of every outbox source and inbox sink of a node.
#[derive(Debug, Clone, Default)]
pub struct Links {
    sources: Arc<Mutex<BTreeMap<String, LinkState>>>,
    sinks: Arc<Mutex<BTreeMap<String, LinkState>>>,
}

/// `AND insertion_order NOT IN (…)` for `exclude` (numbers the relay
/// computed itself), or nothing.
pub(crate) fn not_in(exclude: &[i64]) -> String {
    if exclude.is_empty() {
        return String::new();
    }
    let list: Vec<String> = exclude.iter().map(i64::to_string).collect();
    format!(" AND insertion_order NOT IN ({})", list.join(","))
}

/// Which of the two maps a link lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Source,
    Sink,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Source => "outbox source",
            Kind::Sink => "inbox sink",
        }
    }
}

/// Shortest window over which a rate is computed.
const RATE_WINDOW_MS: u128 = 1_000;

impl Links {
    fn map(&self, kind: Kind) -> &Mutex<BTreeMap<String, LinkState>> {
        match kind {
            Kind::Source => &self.sources,
            Kind::Sink => &self.sinks,
        }
    }

    pub(crate) fn register(&self, kind: Kind, name: &str, target: &Target, table: &str) {
        if let Ok(mut map) = self.map(kind).lock() {
            map.insert(
                name.to_string(),
                LinkState {
                    status: DbLinkStatus {
                        name: name.to_string(),
                        backend: target.backend.name().to_string(),
                        url: target.redacted(),
                        table: table.to_string(),
                        ..DbLinkStatus::default()
                    },
                    window_start: Instant::now(),
                    window_done: 0,
                },
            );
        }
    }

    fn update(&self, kind: Kind, name: &str, change: impl FnOnce(&mut DbLinkStatus)) {
        if let Ok(mut map) = self.map(kind).lock()
            && let Some(state) = map.get_mut(name)
        {
            change(&mut state.status);
        }
    }

    /// Connected: logged when it was not.
    pub(crate) fn connected(&self, kind: Kind, name: &str, session: Option<String>) {
        let mut was = true;
        self.update(kind, name, |s| {
            was = s.connected;
            s.connected = true;
            s.session = session;
        });
        if !was {
            tracing::info!(link = name, "{} connected to its database", kind.word());
        }
    }

    /// Lost (or could not open) the connection: logged when it had one or
    /// on the first failure, at debug level while it stays down.
    pub(crate) fn disconnected(&self, kind: Kind, name: &str, error: &str) {
        let mut first = false;
        self.update(kind, name, |s| {
            first = s.connected || s.last_error.is_none();
            s.connected = false;
            s.session = None;
            s.retries += 1;
            s.last_error = Some(error.to_string());
            s.last_error_at_us = Some(crate::clock::now_us());
        });
        if first {
            tracing::warn!(link = name, %error, "{} lost its database; retrying with backoff", kind.word());
        } else {
            tracing::debug!(link = name, %error, "{} still cannot reach its database", kind.word());
        }
    }

    /// A failure that is not the connection's (a poison row, herald's store
    /// refusing for a while): logged when the message changes.
    pub(crate) fn failed(&self, kind: Kind, name: &str, error: &str) {
        let mut changed = false;
        self.update(kind, name, |s| {
            changed = s.last_error.as_deref() != Some(error);
            s.retries += 1;
            s.last_error = Some(error.to_string());
            s.last_error_at_us = Some(crate::clock::now_us());
        });
        if changed {
            tracing::warn!(link = name, %error, "{} failed", kind.word());
        }
    }

    /// Counts `n` rows or events done.
    pub(crate) fn done(&self, kind: Kind, name: &str, n: u64) {
        if let Ok(mut map) = self.map(kind).lock()
            && let Some(state) = map.get_mut(name)
        {
            state.status.done += n;
            let elapsed = state.window_start.elapsed().as_millis();
            if elapsed >= RATE_WINDOW_MS {
                let in_window = state.status.done - state.window_done;
                state.status.per_second = (in_window as u128 * 1000 / elapsed) as u64;
                state.window_start = Instant::now();
                state.window_done = state.status.done;
            }
        }
    }

    pub(crate) fn set(&self, kind: Kind, name: &str, change: impl FnOnce(&mut DbLinkStatus)) {
        self.update(kind, name, change);
    }

    /// The status of every source, then every sink; `last_arrival` (the
    /// log's) turns sink positions into backlogs.
    pub fn snapshot(&self, last_arrival: Option<u64>) -> (Vec<DbLinkStatus>, Vec<DbLinkStatus>) {
        let take = |kind: Kind| -> Vec<DbLinkStatus> {
            self.map(kind)
                .lock()
                .map(|map| {
                    map.values()
                        .map(|state| {
                            let mut s = state.status.clone();
                            // No progress for a whole window: the rate is 0.
                            if state.window_start.elapsed().as_millis() >= 2 * RATE_WINDOW_MS {
                                s.per_second = 0;
                            }
                            if let (Kind::Sink, Some(last), Some(at)) =
                                (kind, last_arrival, s.position)
                            {
                                s.backlog = last.saturating_sub(at);
                            }
                            s
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        (take(Kind::Source), take(Kind::Sink))
    }
}

/// Starts a relay for every outbox source and a sink for every inbox sink
/// of `config`; they stop when `shutdown` turns true. A source or sink whose
/// URL cannot be resolved (its environment variable unset) is shown with
/// that error in `herald status` and not started; the node runs on.
pub fn spawn(
    log: Arc<Log>,
    config: &NodeConfig,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> (Links, Vec<tokio::task::JoinHandle<()>>) {
    let links = Links::default();
    let mut tasks = Vec::new();
    for source in &config.outbox_sources {
        let app_name = format!("herald {} outbox {}", config.service, source.name);
        match Target::resolve(source.url.as_ref(), source.url_env.as_deref(), app_name) {
            Ok(target) => {
                let spec = relay::RelaySpec::new(source, target);
                tasks.push(tokio::spawn(relay::run_registered(
                    log.clone(),
                    spec,
                    links.clone(),
                    shutdown.clone(),
                )));
            }
            Err(e) => unresolved(&links, Kind::Source, &source.name, &source.table, e),
        }
    }
    for sink in &config.inbox_sinks {
        let app_name = format!("herald {} inbox {}", config.service, sink.name);
        match Target::resolve(sink.url.as_ref(), sink.url_env.as_deref(), app_name) {
            Ok(target) => {
                let spec = sink::SinkSpec::new(sink, target);
                tasks.push(tokio::spawn(sink::run_registered(
                    log.clone(),
                    spec,
                    links.clone(),
                    shutdown.clone(),
                )));
            }
            Err(e) => unresolved(&links, Kind::Sink, &sink.name, &sink.table, e),
        }
    }
    (links, tasks)
}

fn unresolved(links: &Links, kind: Kind, name: &str, table: &str, error: OutboxError) {
    tracing::error!(link = name, %error, "{} not started", kind.word());
    if let Ok(mut map) = links.map(kind).lock() {
        map.insert(
            name.to_string(),
            LinkState {
                status: DbLinkStatus {
                    name: name.to_string(),
                    table: table.to_string(),
                    last_error: Some(format!("not started: {error}")),
                    last_error_at_us: Some(crate::clock::now_us()),
                    ..DbLinkStatus::default()
                },
                window_start: Instant::now(),
                window_done: 0,
            },
        );
    }
}

/// Doubles `backoff_ms` up to [`RECONNECT_BACKOFF_MAX_MS`] after sleeping
/// it; `false` when shutdown came first.
pub(crate) async fn back_off(
    backoff_ms: &mut u64,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    let wait = Duration::from_millis(*backoff_ms);
    *backoff_ms = (*backoff_ms * 2).min(RECONNECT_BACKOFF_MAX_MS);
    tokio::select! {
        _ = tokio::time::sleep(wait) => !*shutdown.borrow(),
        _ = shutdown.changed() => false,
    }
}

/// `error` cut to at most `max` bytes (at a character boundary).
pub(crate) fn clip(error: &str, max: usize) -> String {
    if error.len() <= max {
        return error.to_string();
    }
    let mut end = max;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &error[..end])
}

/// Sink config resolved for running.
pub(crate) fn sink_from(config: &InboxSinkConfig) -> crate::store::StartFrom {
    match config.from.as_deref() {
        Some("now") => crate::store::StartFrom::Now,
        _ => crate::store::StartFrom::Start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::redact_url;

    #[test]
    fn urls_never_show_their_password() {
        let url = DbUrl("postgres://ledger:s3cret@127.0.0.1:5432/ledger".into());
        assert_eq!(
            url.redacted(),
            "postgres://ledger:***@127.0.0.1:5432/ledger"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(
            redact_url("mysql://root@127.0.0.1/test"),
            "mysql://root@127.0.0.1/test"
        );
        assert_eq!(
            redact_url("host=x user=y password=secret dbname=z"),
            "host=x user=y password=*** dbname=z"
        );
        assert_eq!(redact_url("sqlite:///tmp/a.db"), "sqlite:///tmp/a.db");
    }

    #[test]
    fn backends_follow_the_scheme() {
        assert_eq!(Backend::of("postgres://a@b/c").unwrap(), Backend::Postgres);
        assert_eq!(
            Backend::of("postgresql://a@b/c").unwrap(),
            Backend::Postgres
        );
        assert_eq!(Backend::of("mysql://a@b/c").unwrap(), Backend::Mariadb);
        assert_eq!(Backend::of("mariadb://a@b/c").unwrap(), Backend::Mariadb);
        assert_eq!(Backend::of("sqlite:///x.db").unwrap(), Backend::Sqlite);
        assert!(Backend::of("oracle://x").is_err());
    }

    #[test]
    fn clip_keeps_characters_whole() {
        assert_eq!(clip("abc", 10), "abc");
        assert_eq!(clip("ééé", 3), "é…");
    }
}
