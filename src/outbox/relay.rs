//! The outbox relay: committed rows of a service's outbox table become
//! signed events of this node's feed, exactly once, in insertion order.
//!
//! One batch:
//!
//! 1. read up to `batch_rows` unpublished rows in insertion order (a row
//!    skipped after too many failed attempts is left out, unless the source
//!    keeps strict order);
//! 2. in **one herald transaction**: for each row, look up the relay's
//!    record `herald.outbox.NAME / row id`; if it is there the row was
//!    proclaimed by an earlier attempt (the relay died before marking it) and
//!    its sequence number is reused; otherwise proclaim the row and write
//!    the record. Event and record commit together;
//! 3. in **one database transaction**: mark the proclaimed rows published
//!    (with the feed and sequence number) and record `last_error` and
//!    `retry_count` on the rows that could not be proclaimed.
//!
//! A crash between 2 and 3 leaves rows unpublished but recorded: the next
//! batch finds the records and only marks them. So no row is proclaimed
//! twice and none is skipped. Records of rows known to be marked are deleted
//! in a later herald transaction, which keeps herald's table at about one
//! batch per source. Uncommitted rows are never visible to the relay's
//! reads, so they are never proclaimed.
//!
//! Order: rows are proclaimed in `insertion_order` among those committed
//! when the batch is read. A row of a transaction that commits after a later
//! row's transaction is proclaimed when it becomes visible, after it; rows
//! one writer inserts one after the other (or in one transaction) keep
//! their order.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    BATCH_ROWS_DEFAULT, BATCH_ROWS_MAX, Db, Failed, Kind, Links, OutboxError, OutboxRow,
    POLL_INTERVAL_MS_DEFAULT, POLL_INTERVAL_MS_MAX, POLL_INTERVAL_MS_MIN, Published,
    RECONNECT_BACKOFF_MIN_MS, RELAY_STATE_TABLE_PREFIX, ROW_ATTEMPTS_DEFAULT, ROW_ATTEMPTS_MAX,
    ROW_ERROR_BYTES_MAX, ROW_ID_BYTES_MAX, STATUS_REFRESH_MS, Target, back_off, clip,
};
use crate::config::OutboxSourceConfig;
use crate::store::{Log, LogError, STATE_SCAN_ROWS_MAX, TxError};

/// Metadata key the relay sets to the row's id.
pub const META_ROW_ID: &str = "outbox.id";
/// Metadata key the relay sets to the source's name.
pub const META_SOURCE: &str = "outbox.source";
/// Most records of rows whose marking was not confirmed (the database
/// connection dropped during the commit) kept in memory to delete later;
/// beyond it they stay in herald's table, harmless.
pub const UNCONFIRMED_RECORDS_MAX: usize = 64 * 1024;

/// An outbox source, resolved for running.
#[derive(Debug, Clone)]
pub struct RelaySpec {
    pub name: String,
    pub target: Target,
    pub table: String,
    /// Channel of rows without one (`None`: the node's default).
    pub channel: Option<String>,
    pub poll_interval: Duration,
    pub batch_rows: usize,
    pub max_attempts: u32,
    pub strict_order: bool,
}

impl RelaySpec {
    /// `source` with defaults applied and values clamped to their bounds.
    pub fn new(source: &OutboxSourceConfig, target: Target) -> RelaySpec {
        RelaySpec {
            name: source.name.clone(),
            target,
            table: source.table.clone(),
            channel: source.channel.clone(),
            poll_interval: Duration::from_millis(
                source
                    .poll_interval_ms
                    .unwrap_or(POLL_INTERVAL_MS_DEFAULT)
                    .clamp(POLL_INTERVAL_MS_MIN, POLL_INTERVAL_MS_MAX),
            ),
            batch_rows: source
                .batch_rows
                .unwrap_or(BATCH_ROWS_DEFAULT)
                .clamp(1, BATCH_ROWS_MAX),
            max_attempts: source
                .max_attempts
                .unwrap_or(ROW_ATTEMPTS_DEFAULT)
                .clamp(1, ROW_ATTEMPTS_MAX),
            strict_order: source.strict_order,
        }
    }

    /// herald's state table recording which rows were proclaimed.
    pub fn state_table(&self) -> String {
        format!("{RELAY_STATE_TABLE_PREFIX}{}", self.name)
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A full batch: look again at once.
    Full,
    /// Fewer rows than a batch: wait for a notification or the interval.
    Drained,
    /// Strict order and the first row cannot be proclaimed.
    Blocked,
}

/// Why a batch stopped.
enum BatchError {
    /// The database: reconnect.
    Db(OutboxError),
    /// herald's store (recovering, busy, full): retry with backoff.
    Herald(String),
}

/// Records to delete from herald's state table.
#[derive(Default)]
struct Records {
    /// Rows known to be marked published.
    confirmed: Vec<String>,
    /// Rows proclaimed whose marking is not known to have committed.
    unconfirmed: BTreeSet<String>,
}

/// Shows the relay of `spec` in `links` (status), then runs it until
/// `shutdown`.
pub fn run_registered(
    log: Arc<Log>,
    spec: RelaySpec,
    links: Links,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> {
    // Registered before the task first runs, so `herald status` lists the
    // source from the moment the node starts.
    links.register(Kind::Source, &spec.name, &spec.target, &spec.table);
    run(log, spec, links, shutdown)
}

/// Runs the relay of `spec` until `shutdown`.
pub async fn run(
    log: Arc<Log>,
    spec: RelaySpec,
    links: Links,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut records = Records {
        confirmed: Vec::new(),
        unconfirmed: leftover_records(&log, &spec).await,
    };
    let mut db: Option<Db> = None;
    let mut backoff_ms = RECONNECT_BACKOFF_MIN_MS;
    let mut counted_at: Option<Instant> = None;
    let mut unmarked: Option<Unmarked> = None;
    let listen = super::notify_channel(&spec.table);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let conn = match db.as_mut() {
            Some(conn) => conn,
            None => match Db::connect(&spec.target, Some(&listen)).await {
                Ok(conn) => {
                    links.connected(Kind::Source, &spec.name, conn.session());
                    backoff_ms = RECONNECT_BACKOFF_MIN_MS;
                    db.insert(conn)
                }
                Err(e) => {
                    links.disconnected(Kind::Source, &spec.name, &e.to_string());
                    if !back_off(&mut backoff_ms, &mut shutdown).await {
                        return;
                    }
                    continue;
                }
            },
        };
        if counted_at.is_none_or(|t| t.elapsed() >= Duration::from_millis(STATUS_REFRESH_MS)) {
            counted_at = Some(Instant::now());
            match conn
                .counts(&spec.target, &spec.table, spec.max_attempts)
                .await
            {
                Ok((backlog, skipped)) => links.set(Kind::Source, &spec.name, |s| {
                    s.backlog = backlog;
                    s.skipped = if spec.strict_order { 0 } else { skipped };
                }),
                Err(e) => {
                    links.disconnected(Kind::Source, &spec.name, &e.to_string());
                    db = None;
                    if let Some(u) = unmarked.take() {
                        records.unconfirm(u.ids);
                    }
                    continue;
                }
            }
        }
        match batch(&log, &spec, conn, &mut records, &links, &mut unmarked).await {
            Ok(Step::Full) => {
                backoff_ms = RECONNECT_BACKOFF_MIN_MS;
                continue;
            }
            Ok(Step::Drained) => {
                backoff_ms = RECONNECT_BACKOFF_MIN_MS;
                tokio::select! {
                    _ = conn.notified() => {}
                    _ = tokio::time::sleep(spec.poll_interval) => {}
                    _ = shutdown.changed() => return,
                }
            }
            Ok(Step::Blocked) => {
                if !back_off(&mut backoff_ms, &mut shutdown).await {
                    return;
                }
            }
            Err(BatchError::Db(e)) => {
                links.disconnected(Kind::Source, &spec.name, &e.to_string());
                db = None;
                if let Some(u) = unmarked.take() {
                    records.unconfirm(u.ids);
                }
                if !back_off(&mut backoff_ms, &mut shutdown).await {
                    return;
                }
            }
            Err(BatchError::Herald(e)) => {
                links.failed(Kind::Source, &spec.name, &e);
                if !back_off(&mut backoff_ms, &mut shutdown).await {
                    return;
                }
            }
        }
    }
}

/// Records left in herald's state table by an earlier run (it may have died
/// before its rows' marking was confirmed). Treated as unconfirmed: deleted
/// once a read shows the rows are no longer waiting.
async fn leftover_records(log: &Arc<Log>, spec: &RelaySpec) -> BTreeSet<String> {
    let (log, table) = (log.clone(), spec.state_table());
    tokio::task::spawn_blocking(move || {
        let mut keys = BTreeSet::new();
        let mut after: Option<String> = None;
        while keys.len() < UNCONFIRMED_RECORDS_MAX {
            let Ok(page) = log.scan(&table, after.as_deref(), STATE_SCAN_ROWS_MAX) else {
                break;
            };
            let full = page.len() == STATE_SCAN_ROWS_MAX;
            after = page.last().map(|(k, _)| k.clone());
            keys.extend(page.into_iter().map(|(k, _)| k));
            if !full {
                break;
            }
        }
        keys
    })
    .await
    .unwrap_or_default()
}

/// What herald's transaction decided for one row.
enum Outcome {
    /// `earlier`: by an earlier attempt whose marking did not happen.
    Proclaimed {
        order: i64,
        id: String,
        seq: u64,
        earlier: bool,
    },
    Failed {
        order: i64,
        id: String,
        error: String,
    },
}

/// A batch proclaimed in herald whose rows are not marked yet.
#[derive(Default)]
pub(crate) struct Unmarked {
    published: Vec<Published>,
    failed: Vec<Failed>,
    /// Ids of the published rows (their records).
    ids: Vec<String>,
    /// Every row of the batch, to leave out of the next read.
    orders: Vec<i64>,
}

impl Unmarked {
    fn of(outcomes: Vec<Outcome>, spec: &RelaySpec, links: &Links) -> Unmarked {
        let mut batch = Unmarked::default();
        let mut earlier_rows = 0usize;
        for outcome in outcomes {
            match outcome {
                Outcome::Proclaimed {
                    order,
                    id,
                    seq,
                    earlier,
                } => {
                    earlier_rows += usize::from(earlier);
                    batch.published.push(Published {
                        order,
                        seq: seq as i64,
                    });
                    batch.ids.push(id);
                    batch.orders.push(order);
                }
                Outcome::Failed { order, id, error } => {
                    links.failed(Kind::Source, &spec.name, &format!("row {id}: {error}"));
                    batch.failed.push(Failed {
                        order,
                        error: clip(&error, ROW_ERROR_BYTES_MAX),
                    });
                    batch.orders.push(order);
                }
            }
        }
        if earlier_rows > 0 {
            tracing::info!(
                source = %spec.name,
                rows = earlier_rows,
                "rows already proclaimed by an earlier attempt (not marked then); marking them only"
            );
        }
        batch
    }
}

/// Marks `batch` in the database; its records become confirmed (to delete)
/// or, when the outcome is unknown, unconfirmed.
async fn mark(
    db: &mut Db,
    spec: &RelaySpec,
    feed: &str,
    batch: Unmarked,
    records: &mut Records,
    links: &Links,
) -> Result<(), BatchError> {
    match db
        .mark(
            &spec.target,
            &spec.table,
            feed,
            &batch.published,
            &batch.failed,
        )
        .await
    {
        Ok(()) => {
            records.confirmed.extend(batch.ids);
            links.done(Kind::Source, &spec.name, batch.published.len() as u64);
            Ok(())
        }
        Err(e) => {
            records.unconfirm(batch.ids);
            Err(BatchError::Db(e))
        }
    }
}

impl Records {
    fn unconfirm(&mut self, ids: Vec<String>) {
        let room = UNCONFIRMED_RECORDS_MAX.saturating_sub(self.unconfirmed.len());
        self.unconfirmed.extend(ids.into_iter().take(room));
    }
}

/// One batch: read (leaving out the rows of the batch still being marked),
/// then proclaim in one herald transaction while the previous batch is
/// marked in one database transaction. Without strict order the new batch
/// stays unmarked in `unmarked` until the next call overlaps it with the
/// next proclamation (or, when the table is drained, is marked at once);
/// with strict order every batch is marked before the next is read.
///
/// Overlapping is safe for exactly-once because the herald transactions run
/// one after the other and each row's record commits with its event: a row
/// read again before its marking committed is found recorded and only
/// marked. It keeps the order because a read leaves out only rows already
/// proclaimed.
async fn batch(
    log: &Arc<Log>,
    spec: &RelaySpec,
    db: &mut Db,
    records: &mut Records,
    links: &Links,
    unmarked: &mut Option<Unmarked>,
) -> Result<Step, BatchError> {
    let feed = log.service().to_string();
    let attempts = (!spec.strict_order).then_some(spec.max_attempts);
    let exclude: Vec<i64> = unmarked
        .as_ref()
        .map(|u| u.orders.clone())
        .unwrap_or_default();
    let started = Instant::now();
    let rows = match db
        .fetch(
            &spec.target,
            &spec.table,
            spec.batch_rows,
            attempts,
            &exclude,
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            if let Some(u) = unmarked.take() {
                records.unconfirm(u.ids);
            }
            return Err(BatchError::Db(e));
        }
    };
    let full = rows.len() == spec.batch_rows;
    // A read that is not full holds every waiting row (but those being
    // marked): a record whose row is not among them belongs to a row that
    // was marked (or deleted).
    let mut forget = std::mem::take(&mut records.confirmed);
    if !full {
        let mut waiting: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        if let Some(u) = unmarked.as_ref() {
            waiting.extend(u.ids.iter().map(String::as_str));
        }
        let (gone, kept): (BTreeSet<String>, BTreeSet<String>) =
            std::mem::take(&mut records.unconfirmed)
                .into_iter()
                .partition(|id| !waiting.contains(id.as_str()));
        records.unconfirmed = kept;
        forget.extend(gone);
    }
    if rows.is_empty() {
        if let Some(u) = unmarked.take() {
            mark(db, spec, &feed, u, records, links).await?;
        }
        if !forget.is_empty()
            && let Err(e) = proclaim(log, spec, Vec::new(), forget.clone()).await
        {
            records.confirmed.extend(forget);
            return Err(e);
        }
        return Ok(Step::Drained);
    }
    let read_us = started.elapsed().as_micros();
    let previous = unmarked.take();
    let (proclaimed, marked) = tokio::join!(
        async {
            let started = Instant::now();
            let outcome = proclaim(log, spec, rows, forget.clone()).await;
            (outcome, started.elapsed().as_micros())
        },
        async {
            let started = Instant::now();
            let outcome = match previous {
                Some(u) => mark(db, spec, &feed, u, records, links).await,
                None => Ok(()),
            };
            (outcome, started.elapsed().as_micros())
        }
    );
    let ((proclaimed, proclaim_us), (marked, mark_us)) = (proclaimed, marked);
    tracing::debug!(
        source = %spec.name,
        read_us,
        proclaim_us,
        mark_previous_us = mark_us,
        "relay batch"
    );
    let outcomes = match proclaimed {
        Ok(outcomes) => outcomes,
        Err(e) => {
            records.confirmed.extend(forget);
            marked?;
            return Err(e);
        }
    };
    let batch = Unmarked::of(outcomes, spec, links);
    if let Err(e) = marked {
        records.unconfirm(batch.ids);
        return Err(e);
    }
    let blocked = spec.strict_order && !batch.failed.is_empty();
    if spec.strict_order || !full {
        mark(db, spec, &feed, batch, records, links).await?;
    } else {
        *unmarked = Some(batch);
    }
    Ok(if blocked {
        Step::Blocked
    } else if full {
        Step::Full
    } else {
        Step::Drained
    })
}

/// The herald transaction of a batch: deletes the records in `forget`, then
/// proclaims each row not yet recorded and records it. In strict order it
/// stops at the first row that cannot be proclaimed.
async fn proclaim(
    log: &Arc<Log>,
    spec: &RelaySpec,
    rows: Vec<OutboxRow>,
    forget: Vec<String>,
) -> Result<Vec<Outcome>, BatchError> {
    let log = log.clone();
    let table = spec.state_table();
    let (source, channel, strict) = (spec.name.clone(), spec.channel.clone(), spec.strict_order);
    let work = move |tx: &mut crate::store::Tx<'_>| -> Result<Vec<Outcome>, TxError> {
        for id in &forget {
            if !id.is_empty() && id.len() <= ROW_ID_BYTES_MAX {
                tx.delete_reserved(&table, id)?;
            }
        }
        let mut outcomes = Vec::with_capacity(rows.len());
        for row in rows {
            let outcome = proclaim_row(tx, &table, &source, channel.as_deref(), row)?;
            let stop = strict && matches!(outcome, Outcome::Failed { .. });
            outcomes.push(outcome);
            if stop {
                break;
            }
        }
        Ok(outcomes)
    };
    let committed = tokio::task::spawn_blocking(move || log.transact(work))
        .await
        .map_err(|e| BatchError::Herald(format!("relay task: {e}")))?;
    committed
        .map(|c| c.value)
        .map_err(|e| BatchError::Herald(e.to_string()))
}

/// One row inside the batch's herald transaction. `Err` only for faults of
/// the store, which abort the whole transaction.
fn proclaim_row(
    tx: &mut crate::store::Tx<'_>,
    table: &str,
    source: &str,
    channel: Option<&str>,
    row: OutboxRow,
) -> Result<Outcome, TxError> {
    let failed = |row: &OutboxRow, error: String| Outcome::Failed {
        order: row.order,
        id: row.id.clone(),
        error,
    };
    if row.id.is_empty() || row.id.len() > ROW_ID_BYTES_MAX {
        return Ok(failed(
            &row,
            format!("id must be 1 to {ROW_ID_BYTES_MAX} bytes"),
        ));
    }
    if let Some(seq) = tx.get(table, &row.id)? {
        let seq = std::str::from_utf8(&seq)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| {
                TxError::Store(LogError::Corrupt(format!(
                    "outbox record {table}/{} is not a sequence number",
                    row.id
                )))
            })?;
        return Ok(Outcome::Proclaimed {
            order: row.order,
            id: row.id,
            seq,
            earlier: true,
        });
    }
    let prepared = match prepare(&row, source) {
        Ok(p) => p,
        Err(error) => return Ok(failed(&row, error)),
    };
    let channel = row.channel.as_deref().or(channel);
    let proclaimed = match channel {
        Some(c) => tx.proclaim_on(
            c,
            &row.event_type,
            prepared.payload.as_bytes(),
            prepared.meta,
        ),
        None => tx.proclaim(&row.event_type, prepared.payload.as_bytes(), prepared.meta),
    };
    match proclaimed {
        Ok(event) => {
            tx.put_reserved(table, &row.id, event.seq.to_string().as_bytes())?;
            Ok(Outcome::Proclaimed {
                order: row.order,
                id: row.id,
                seq: event.seq,
                earlier: false,
            })
        }
        // The row's fault: it stays, with the reason.
        Err(e @ (TxError::Event(_) | TxError::InvalidState(_) | TxError::TooManyEvents)) => {
            Ok(failed(&row, e.to_string()))
        }
        Err(TxError::Store(e @ LogError::UnknownChannel { .. })) => Ok(failed(&row, e.to_string())),
        Err(e) => Err(e),
    }
}

/// A row turned into what is proclaimed.
struct Prepared {
    payload: String,
    meta: Vec<(String, String)>,
}

/// Checks a row's payload (JSON) and metadata (a JSON object of strings) and
/// adds the relay's own metadata. `Err` says what is wrong with the row.
fn prepare(row: &OutboxRow, source: &str) -> Result<Prepared, String> {
    let payload = row
        .payload
        .clone()
        .ok_or_else(|| "payload is NULL".to_string())?;
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&payload) {
        return Err(format!("payload is not valid JSON: {e}"));
    }
    let mut meta = std::collections::BTreeMap::new();
    if let Some(text) = row.metadata.as_deref().filter(|t| !t.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("metadata is not valid JSON: {e}"))?;
        let serde_json::Value::Object(object) = value else {
            return Err("metadata must be a JSON object".into());
        };
        for (key, value) in object {
            if key.starts_with("outbox.") {
                return Err(format!(
                    "metadata key {key:?}: `outbox.*` keys are set by the relay"
                ));
            }
            let value = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => continue,
                other => other.to_string(),
            };
            meta.insert(key, value);
        }
    }
    meta.insert(META_ROW_ID.to_string(), row.id.clone());
    meta.insert(META_SOURCE.to_string(), source.to_string());
    Ok(Prepared {
        payload,
        meta: meta.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(payload: Option<&str>, metadata: Option<&str>) -> OutboxRow {
        OutboxRow {
            order: 1,
            id: "0192-row".into(),
            event_type: "ledger.entry".into(),
            payload: payload.map(str::to_string),
            metadata: metadata.map(str::to_string),
            channel: None,
        }
    }

    #[test]
    fn rows_become_sorted_metadata_with_the_row_id() {
        let p = prepare(
            &row(Some(r#"{"cents":5}"#), Some(r#"{"z":"1","a":2}"#)),
            "ledger",
        )
        .unwrap();
        assert_eq!(p.payload, r#"{"cents":5}"#);
        let keys: Vec<&str> = p.meta.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "outbox.id", "outbox.source", "z"]);
        assert_eq!(p.meta[0].1, "2");
        assert_eq!(p.meta[1].1, "0192-row");
    }

    #[test]
    fn poison_rows_say_what_is_wrong() {
        for (payload, metadata, needle) in [
            (None, None, "NULL"),
            (Some("{not json"), None, "payload is not valid JSON"),
            (Some("{}"), Some("[1]"), "JSON object"),
            (Some("{}"), Some("{bad"), "metadata is not valid JSON"),
            (Some("{}"), Some(r#"{"outbox.id":"x"}"#), "set by the relay"),
        ] {
            let e = prepare(&row(payload, metadata), "s").err().unwrap();
            assert!(e.contains(needle), "{e:?} should say {needle:?}");
        }
    }
}
