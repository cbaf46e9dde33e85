//! SQLite files through rusqlite (the bundled SQLite herald already links).
//! Calls run on the blocking pool; the service's own write transactions are
//! waited for up to [`SQLITE_BUSY_TIMEOUT_MS`]. SQLite serialises writers,
//! so insertion order is commit order. Polled at the relay's interval.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, params};

use super::{Failed, InboxRow, OutboxError, OutboxRow, Published, SQLITE_BUSY_TIMEOUT_MS, Target};

pub(crate) struct Sqlite {
    conn: Arc<Mutex<Connection>>,
    url: String,
}

/// `sqlite:///abs/path` or `sqlite://path` → the file path.
pub(crate) fn path_of(url: &str) -> &str {
    url.strip_prefix("sqlite://").unwrap_or(url)
}

impl Sqlite {
    pub(crate) fn open(target: &Target) -> Result<Sqlite, OutboxError> {
        let url = target.redacted();
        let e = |source| OutboxError::Sqlite {
            what: "opening",
            url: url.clone(),
            source,
        };
        let conn = Connection::open_with_flags(
            path_of(target.expose()),
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(e)?;
        conn.busy_timeout(Duration::from_millis(SQLITE_BUSY_TIMEOUT_MS))
            .map_err(e)?;
        Ok(Sqlite {
            conn: Arc::new(Mutex::new(conn)),
            url,
        })
    }

    /// Runs `work` on the blocking pool with the connection.
    async fn with<T: Send + 'static>(
        &self,
        what: &'static str,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, OutboxError> {
        let conn = self.conn.clone();
        let url = self.url.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            work(&mut guard)
        })
        .await
        .map_err(|e| OutboxError::Task(format!("SQLite task ({url}): {e}")))?;
        outcome.map_err(|source| OutboxError::Sqlite { what, url, source })
    }

    pub(crate) async fn execute_ddl(
        &mut self,
        _target: &Target,
        ddl: &[String],
    ) -> Result<(), OutboxError> {
        let ddl = ddl.to_vec();
        self.with("creating tables", move |conn| {
            // WAL lets the relay read while the service writes.
            conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
            let tx = conn.transaction()?;
            for statement in &ddl {
                tx.execute_batch(statement)?;
            }
            tx.commit()
        })
        .await
    }

    pub(crate) async fn fetch(
        &mut self,
        _target: &Target,
        table: &str,
        limit: usize,
        max_attempts: Option<u32>,
        exclude: &[i64],
    ) -> Result<Vec<OutboxRow>, OutboxError> {
        let sql = format!(
            "SELECT insertion_order, CAST(id AS TEXT), CAST(event_type AS TEXT), \
                    CAST(payload AS TEXT), CAST(metadata AS TEXT), CAST(channel AS TEXT) \
             FROM {table} WHERE published_timestamp IS NULL AND retry_count < ?1{} \
             ORDER BY insertion_order LIMIT ?2",
            super::not_in(exclude)
        );
        let attempts = max_attempts.map_or(i64::MAX, i64::from);
        self.with("reading the outbox", move |conn| {
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(params![attempts, limit as i64], |r| {
                Ok(OutboxRow {
                    order: r.get(0)?,
                    id: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    event_type: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    payload: r.get(3)?,
                    metadata: r.get(4)?,
                    channel: r.get(5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    pub(crate) async fn mark(
        &mut self,
        _target: &Target,
        table: &str,
        feed: &str,
        published: &[Published],
        failed: &[Failed],
    ) -> Result<(), OutboxError> {
        let (table, feed) = (table.to_string(), feed.to_string());
        let (published, failed) = (published.to_vec(), failed.to_vec());
        self.with("marking rows published", move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut done = tx.prepare_cached(&format!(
                    "UPDATE {table} SET published_timestamp = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), \
                     feed = ?1, seq = ?2 WHERE insertion_order = ?3"
                ))?;
                for p in &published {
                    done.execute(params![feed, p.seq, p.order])?;
                }
                let mut fail = tx.prepare_cached(&format!(
                    "UPDATE {table} SET retry_count = retry_count + 1, last_error = ?1 \
                     WHERE insertion_order = ?2"
                ))?;
                for f in &failed {
                    fail.execute(params![f.error, f.order])?;
                }
            }
            tx.commit()
        })
        .await
    }

    pub(crate) async fn counts(
        &mut self,
        _target: &Target,
        table: &str,
        max_attempts: u32,
    ) -> Result<(u64, u64), OutboxError> {
        let sql = format!(
            "SELECT COALESCE(SUM(retry_count < ?1), 0), COALESCE(SUM(retry_count >= ?1), 0) \
             FROM {table} WHERE published_timestamp IS NULL"
        );
        self.with("counting the backlog", move |conn| {
            conn.query_row(&sql, [max_attempts], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })
        })
        .await
    }

    pub(crate) async fn positions(
        &mut self,
        _target: &Target,
        table: &str,
        sink: &str,
    ) -> Result<BTreeMap<String, i64>, OutboxError> {
        let sql = format!(
            "SELECT feed, seq FROM {} WHERE sink = ?1",
            super::position_table(table)
        );
        let sink = sink.to_string();
        self.with("reading the inbox position", move |conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map([sink], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    pub(crate) async fn land(
        &mut self,
        _target: &Target,
        table: &str,
        sink: &str,
        rows: &[InboxRow],
        positions: &BTreeMap<String, i64>,
    ) -> Result<(), OutboxError> {
        let (table, sink) = (table.to_string(), sink.to_string());
        let (rows, positions) = (rows.to_vec(), positions.clone());
        self.with("writing the inbox", move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut insert = tx.prepare_cached(&format!(
                    "INSERT INTO {table} (event_id, feed, seq, event_type, event_timestamp_us, \
                     metadata, channel, payload, event_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                ))?;
                for r in &rows {
                    insert.execute(params![
                        r.event_id,
                        r.feed,
                        r.seq,
                        r.event_type,
                        r.timestamp_us,
                        r.metadata,
                        r.channel,
                        r.payload,
                        r.event_hash
                    ])?;
                }
                let mut position = tx.prepare_cached(&format!(
                    "INSERT INTO {} (sink, feed, seq) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (sink, feed) DO UPDATE SET seq = excluded.seq",
                    super::position_table(&table)
                ))?;
                for (feed, seq) in &positions {
                    position.execute(params![sink, feed, seq])?;
                }
            }
            tx.commit()
        })
        .await
    }
}

/// A UUID (version 4 layout) made by SQLite itself, for rows the service
/// inserts without an id.
const SQLITE_UUID: &str = "lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || \
     substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || \
     substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))";

/// The outbox table with its index of unpublished rows.
pub(crate) fn outbox_ddl(table: &str) -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (
    insertion_order     INTEGER PRIMARY KEY AUTOINCREMENT,
    id                  TEXT NOT NULL UNIQUE DEFAULT ({SQLITE_UUID}),
    event_type          TEXT NOT NULL,
    payload             TEXT NOT NULL,
    metadata            TEXT,
    channel             TEXT,
    created_timestamp   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    published_timestamp TEXT,
    retry_count         INTEGER NOT NULL DEFAULT 0,
    last_error          TEXT,
    feed                TEXT,
    seq                 INTEGER
)"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {table}_unpublished ON {table} (insertion_order) WHERE published_timestamp IS NULL"
        ),
    ]
}

/// The inbox table and the sink positions beside it.
pub(crate) fn inbox_ddl(table: &str) -> Vec<String> {
    let position = super::position_table(table);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (
    event_id           TEXT PRIMARY KEY,
    feed               TEXT NOT NULL,
    seq                INTEGER NOT NULL,
    event_type         TEXT NOT NULL,
    event_timestamp_us INTEGER NOT NULL,
    metadata           TEXT NOT NULL,
    channel            TEXT,
    payload            TEXT,
    event_hash         TEXT NOT NULL,
    received_timestamp TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (feed, seq)
)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {position} (
    sink TEXT NOT NULL,
    feed TEXT NOT NULL,
    seq  INTEGER NOT NULL,
    PRIMARY KEY (sink, feed)
)"
        ),
    ]
}
