//! Atomic state and proclamation: the outbox API (architecture section 5).
//!
//! [`Log::transact`](super::Log::transact) runs a closure on the writer
//! thread inside one SQLite transaction. Whatever the closure writes with
//! [`Tx::put`] and proclaims with [`Tx::proclaim`] commits together (one
//! fsync) or not at all, so a service can never change its state and forget
//! to proclaim it (the dual-write problem). [`Tx`] is the only way to write
//! application state: it exists only inside `transact`.
//!
//! Several transactions queued together commit in one SQLite transaction,
//! each inside its own savepoint: one closure failing rolls back its own
//! writes and events only. Events are chained as the closure proclaims them
//! (so it learns their ids) and signed on all cores after the last closure of
//! the group ran.
//!
//! Closures run on the writer thread: keep them short and never block on
//! I/O or on the node inside one (that would stall every write).

use std::collections::BTreeMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use super::LogError;
use crate::clock;
use crate::core::crypto::ChannelKey;
use crate::core::verify::{ChainedBatch, Draft, DraftError, Sealer};

/// Longest application-state table name, in bytes.
pub const STATE_TABLE_BYTES_MAX: usize = 64;
/// Longest application-state key, in bytes.
pub const STATE_KEY_BYTES_MAX: usize = 512;
/// Largest application-state value (1 MiB).
pub const STATE_VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Most events one transaction may proclaim (they commit in one batch).
pub const TRANSACT_EVENTS_MAX: usize = crate::core::limits::COMMIT_BATCH_EVENTS_MAX;
/// Most rows one [`super::Log::scan`] returns.
pub const STATE_SCAN_ROWS_MAX: usize = 10_000;
/// Prefix of table names reserved for herald itself.
pub const RESERVED_TABLE_PREFIX: &str = "herald.";

/// Why a transaction did not commit. Nothing it wrote or proclaimed is
/// stored when any of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// The closure decided to abort (its own reason).
    #[error("transaction aborted: {0}")]
    Aborted(String),
    /// A table name, key or value broke a rule.
    #[error("invalid state access: {0}")]
    InvalidState(String),
    /// An event the closure proclaimed is not valid.
    #[error("invalid event in transaction: {0}")]
    Event(#[from] DraftError),
    /// The transaction proclaimed more than [`TRANSACT_EVENTS_MAX`] events.
    #[error("a transaction may proclaim at most {TRANSACT_EVENTS_MAX} events")]
    TooManyEvents,
    /// The closure panicked; its transaction was rolled back.
    #[error("transaction closure panicked: {0}")]
    Panicked(String),
    /// The store failed (or the writer is gone).
    #[error(transparent)]
    Store(#[from] LogError),
}

impl TxError {
    /// Aborts the transaction with a reason of the caller's.
    pub fn abort(reason: impl Into<String>) -> TxError {
        TxError::Aborted(reason.into())
    }
}

impl From<rusqlite::Error> for TxError {
    fn from(e: rusqlite::Error) -> TxError {
        TxError::Store(LogError::from(e))
    }
}

/// An event proclaimed inside a transaction (durable once it commits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef {
    pub id: uuid::Uuid,
    pub seq: u64,
}

/// What a committed transaction gives back: the closure's value and the
/// receipts of the events it proclaimed, in order.
#[derive(Debug)]
pub struct Committed<T> {
    pub value: T,
    pub receipts: Vec<super::Receipt>,
}

/// A queued transaction: the closure, with the caller's value captured
/// inside it, and where to send the outcome.
pub(crate) struct TransactJob {
    pub run: TransactFn,
    pub reply: TxReply,
}

/// A transaction's body as the writer runs it.
pub(crate) type TransactFn = Box<dyn FnOnce(&mut Tx<'_>) -> Result<(), TxError> + Send>;

/// Where the writer sends a transaction's outcome.
pub(crate) type TxReply = std::sync::mpsc::SyncSender<Result<Vec<super::Receipt>, TxError>>;

/// The channel keys a transaction may proclaim under.
pub(crate) struct Channels {
    pub keys: BTreeMap<String, Arc<ChannelKey>>,
    pub default: String,
}

impl Channels {
    /// The newest generation of each channel in `keys` (every generation,
    /// oldest first per channel: the last inserted wins) and the default.
    pub fn newest_of(keys: &[ChannelKey], default: String) -> Channels {
        let mut newest = BTreeMap::new();
        for key in keys {
            newest.insert(key.name().to_string(), Arc::new(key.clone()));
        }
        Channels {
            keys: newest,
            default,
        }
    }

    pub fn get(&self, name: Option<&str>) -> Result<&Arc<ChannelKey>, LogError> {
        let name = name.unwrap_or(&self.default);
        self.keys.get(name).ok_or_else(|| LogError::UnknownChannel {
            name: name.to_string(),
            known: self.keys.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }
}

/// One transaction in progress. Reads see its own writes.
pub struct Tx<'a> {
    sql: &'a Connection,
    sealer: &'a mut Sealer,
    channels: &'a Channels,
    chained: Option<ChainedBatch>,
    events: usize,
    now_us: u64,
}

impl<'a> Tx<'a> {
    pub(crate) fn new(sql: &'a Connection, sealer: &'a mut Sealer, channels: &'a Channels) -> Self {
        Tx {
            sql,
            sealer,
            channels,
            chained: None,
            events: 0,
            now_us: clock::now_us(),
        }
    }

    /// The value under `key` in `table`, as this transaction sees it.
    pub fn get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>, TxError> {
        check_table(table, true)?;
        check_key(key)?;
        Ok(read_state(self.sql, table, key)?)
    }

    /// Sets `key` in `table` to `value` (created or replaced).
    pub fn put(&mut self, table: &str, key: &str, value: &[u8]) -> Result<(), TxError> {
        check_table(table, false)?;
        self.put_unchecked(table, key, value)
    }

    /// Removes `key` from `table`; whether it was there.
    pub fn delete(&mut self, table: &str, key: &str) -> Result<bool, TxError> {
        check_table(table, false)?;
        check_key(key)?;
        let n = self
            .sql
            .prepare_cached("DELETE FROM app_state WHERE tbl = ?1 AND key = ?2")?
            .execute(params![table, key])?;
        Ok(n > 0)
    }

    /// Proclaims an event on the default channel, committed with the rest
    /// of the transaction. Returns its id and sequence number.
    pub fn proclaim(
        &mut self,
        event_type: &str,
        payload: &[u8],
        meta: Vec<(String, String)>,
    ) -> Result<EventRef, TxError> {
        let draft = Draft::new(event_type, 1, meta, payload.to_vec())?;
        self.proclaim_draft(draft, None)
    }

    /// Proclaims an event on the named channel.
    pub fn proclaim_on(
        &mut self,
        channel: &str,
        event_type: &str,
        payload: &[u8],
        meta: Vec<(String, String)>,
    ) -> Result<EventRef, TxError> {
        let draft = Draft::new(event_type, 1, meta, payload.to_vec())?;
        self.proclaim_draft(draft, Some(channel))
    }

    /// Records that `consumer` handled event `event_id`. Returns `false`
    /// (and changes nothing) when it already had: the caller then skips its
    /// effects. Because the record commits with the effects, redelivery
    /// never applies an event twice.
    pub fn mark_handled(&mut self, consumer: &str, event_id: &[u8; 16]) -> Result<bool, TxError> {
        super::subscribe::check_consumer(consumer)
            .map_err(|e| TxError::InvalidState(e.to_string()))?;
        let n = self
            .sql
            .prepare_cached(
                "INSERT OR IGNORE INTO inbox (consumer, event_id, handled_at_us) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![consumer, event_id.as_slice(), self.now_us as i64])?;
        Ok(n == 1)
    }

    /// Whether `consumer` already handled event `event_id`.
    pub fn was_handled(&self, consumer: &str, event_id: &[u8; 16]) -> Result<bool, TxError> {
        Ok(was_handled(self.sql, consumer, event_id)?)
    }

    /// This node's service name (the feed events are proclaimed on).
    pub fn service(&self) -> &str {
        self.sealer.author()
    }

    /// When the transaction started (microseconds since the epoch).
    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    /// herald's own events (`herald.*` types) for its internal tables.
    pub(crate) fn proclaim_system(
        &mut self,
        event_type: &str,
        payload: &[u8],
        meta: Vec<(String, String)>,
    ) -> Result<EventRef, TxError> {
        let draft = Draft::system(event_type, 1, meta, payload.to_vec())?;
        self.proclaim_draft(draft, None)
    }

    /// Sets `key` in one of herald's own (`herald.*`) state tables: the
    /// outbox relay's record of which source rows it proclaimed.
    pub(crate) fn put_reserved(
        &mut self,
        table: &str,
        key: &str,
        value: &[u8],
    ) -> Result<(), TxError> {
        check_table(table, true)?;
        if !table.starts_with(RESERVED_TABLE_PREFIX) {
            return Err(TxError::InvalidState(format!(
                "table {table:?} is not one of herald's own"
            )));
        }
        self.put_unchecked(table, key, value)
    }

    /// Removes `key` from one of herald's own (`herald.*`) state tables.
    pub(crate) fn delete_reserved(&mut self, table: &str, key: &str) -> Result<bool, TxError> {
        check_table(table, true)?;
        check_key(key)?;
        if !table.starts_with(RESERVED_TABLE_PREFIX) {
            return Err(TxError::InvalidState(format!(
                "table {table:?} is not one of herald's own"
            )));
        }
        let n = self
            .sql
            .prepare_cached("DELETE FROM app_state WHERE tbl = ?1 AND key = ?2")?
            .execute(params![table, key])?;
        Ok(n > 0)
    }

    /// The SQL transaction, for herald's own tables (sagas).
    pub(crate) fn sql(&self) -> &Connection {
        self.sql
    }

    fn put_unchecked(&mut self, table: &str, key: &str, value: &[u8]) -> Result<(), TxError> {
        check_key(key)?;
        if value.len() > STATE_VALUE_BYTES_MAX {
            return Err(TxError::InvalidState(format!(
                "value for {table}/{key} is {} bytes, over the limit of {STATE_VALUE_BYTES_MAX}",
                value.len()
            )));
        }
        self.sql
            .prepare_cached(
                "INSERT INTO app_state (tbl, key, value, updated_at_us) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tbl, key) DO UPDATE SET value = excluded.value,
                                                      updated_at_us = excluded.updated_at_us",
            )?
            .execute(params![table, key, value, self.now_us as i64])?;
        Ok(())
    }

    fn proclaim_draft(&mut self, draft: Draft, channel: Option<&str>) -> Result<EventRef, TxError> {
        if self.events >= TRANSACT_EVENTS_MAX {
            return Err(TxError::TooManyEvents);
        }
        let key = self.channels.get(channel)?;
        let entropy = super::writer::new_entropy(self.now_us);
        let batch = self
            .sealer
            .chain_batch(vec![(draft, key.as_ref(), entropy)], self.now_us);
        let header = batch
            .headers()
            .next()
            .ok_or_else(|| LogError::Corrupt("chaining produced no event".into()))?;
        let event = EventRef {
            id: uuid::Uuid::from_bytes(header.id),
            seq: header.seq,
        };
        self.events += 1;
        match self.chained.as_mut() {
            Some(chained) => chained.append(batch),
            None => self.chained = Some(batch),
        }
        Ok(event)
    }

    /// The events chained so far (to sign and store if the closure succeeded).
    pub(crate) fn into_chained(self) -> Option<ChainedBatch> {
        self.chained
    }
}

/// Table names: 1 to [`STATE_TABLE_BYTES_MAX`] bytes of `[a-z0-9_.-]`;
/// `herald.*` is readable but written only by herald itself.
fn check_table(table: &str, reading: bool) -> Result<(), TxError> {
    let valid = !table.is_empty()
        && table.len() <= STATE_TABLE_BYTES_MAX
        && table
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if !valid {
        return Err(TxError::InvalidState(format!(
            "table name {table:?} must be 1 to {STATE_TABLE_BYTES_MAX} bytes of a-z, 0-9, '_', '.', '-'"
        )));
    }
    if !reading && table.starts_with(RESERVED_TABLE_PREFIX) {
        return Err(TxError::InvalidState(format!(
            "table {table:?} is reserved for herald's own state"
        )));
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), TxError> {
    if key.is_empty() || key.len() > STATE_KEY_BYTES_MAX {
        return Err(TxError::InvalidState(format!(
            "key of {} bytes: keys are 1 to {STATE_KEY_BYTES_MAX} bytes",
            key.len()
        )));
    }
    Ok(())
}

pub(crate) fn read_state(
    conn: &Connection,
    table: &str,
    key: &str,
) -> rusqlite::Result<Option<Vec<u8>>> {
    conn.prepare_cached("SELECT value FROM app_state WHERE tbl = ?1 AND key = ?2")?
        .query_row(params![table, key], |r| r.get(0))
        .optional()
}

pub(crate) fn was_handled(
    conn: &Connection,
    consumer: &str,
    event_id: &[u8; 16],
) -> rusqlite::Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM inbox WHERE consumer = ?1 AND event_id = ?2")?
        .query_row(params![consumer, event_id.as_slice()], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Validates a table name and key for a read outside a transaction.
pub(crate) fn check_read(table: &str, key: Option<&str>) -> Result<(), TxError> {
    check_table(table, true)?;
    if let Some(key) = key {
        check_key(key)?;
    }
    Ok(())
}

/// Reads rows of `table` in key order after `after`, at most `limit`.
pub(crate) fn scan_state(
    conn: &Connection,
    table: &str,
    after: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<(String, Vec<u8>)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT key, value FROM app_state WHERE tbl = ?1 AND key > ?2 ORDER BY key LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![
            table,
            after.unwrap_or(""),
            limit.min(STATE_SCAN_ROWS_MAX) as i64
        ],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    rows.collect()
}
