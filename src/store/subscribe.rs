//! Durable, per-consumer subscriptions over the node's arrival order
//! (architecture section 7).
//!
//! A subscription reads the events this node holds in the order it learned
//! them (own proclamations and ingested ones alike), keeps those whose type
//! matches its pattern (`*` and `?` wildcards, as `herald log --type`), and
//! records how far its consumer got in `consumer_cursors`.
//!
//! # Cursor semantics
//!
//! * The durable cursor is the last arrival the consumer declared handled
//!   ([`Subscription::commit`]); everything after it is delivered again after
//!   a restart (at-least-once). Commits only move it forward.
//! * [`StartFrom::Stored`] resumes the durable cursor (or starts from the
//!   beginning for a consumer never seen). It refuses when the stored pattern
//!   differs from the requested one: a cursor earned under one pattern says
//!   nothing about events of another, so silently keeping it could skip them.
//! * [`StartFrom::Start`], [`StartFrom::Now`] and [`StartFrom::Timestamp`]
//!   are explicit: they reposition the durable cursor (and store the new
//!   pattern) at once, so a later `Stored` resumes from there even if nothing
//!   was committed in between. This is how a consumer replays or changes its
//!   pattern.
//! * One live [`Subscription`] per consumer name is the caller's duty: two at
//!   once would race on the same cursor.
//! * The runners ([`run_subscription`] and friends) commit after every batch
//!   they delivered. Over events that do not match, they let the durable
//!   cursor trail (up to [`SUBSCRIPTION_IDLE_COMMIT_ARRIVALS`] arrivals or
//!   [`SUBSCRIPTION_IDLE_COMMIT_MS`]) and write it when they stop: a crash
//!   only makes them look at those unmatched rows again.
//!
//! # Cost
//!
//! Matching reads only the arrival and the row's type name, a page at a
//! time; a matching row is then rebuilt and checked against the hash its
//! feed's tree holds (`store::rows`), and a damaged one is a permanent
//! fault. A type name damaged into bytes that are not text matches no
//! pattern, so it does not stop the subscriptions that never wanted it
//! (the saga engine's, say); one damaged into another valid type hides its
//! rows from the filter. `herald verify DATA_DIR` reports both (check
//! `stored-hash`). Runs
//! of recent commits that hold no wanted type are stepped over without
//! reading them at all (`store/recent.rs`), so a consumer of a rare type
//! (the saga engine's, on every node) costs next to nothing while the log
//! fills with other events.

use std::future::Future;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Log, LogError, StoredEvent, open_connection};
use crate::clock;
use crate::core::limits::EVENT_TYPE_BYTES_MAX;

/// Most events one [`Subscription::next_batch`] returns (larger requests are
/// clamped). Events may carry up to a megabyte each, so this bounds memory.
pub const SUBSCRIPTION_BATCH_EVENTS_MAX: usize = 256;
/// Rows (arrival and event type only) read per query while matching.
pub const SUBSCRIPTION_PAGE_EVENTS: usize = 512;
/// Most rows one [`Subscription::next_batch`] looks at, matching or not, so a
/// rare pattern over a long log returns (possibly empty) instead of scanning
/// it all in one call; the position still advances past what was scanned.
pub const SUBSCRIPTION_SCAN_EVENTS_MAX: usize = 16 * SUBSCRIPTION_PAGE_EVENTS;
/// First wait before a runner retries a store read or cursor write that
/// failed transiently (busy, locked, disk full, I/O error).
pub const SUBSCRIPTION_STORE_RETRY_MS: u64 = 100;
/// Cap of the doubling wait between such retries. A runner never gives up
/// on a transient fault: it shows in the node's health until it passes.
pub const SUBSCRIPTION_STORE_RETRY_MS_MAX: u64 = 5_000;
/// First backoff before redelivering an event whose handler failed.
pub const SUBSCRIPTION_RETRY_MS: u64 = 100;
/// Cap of the doubling redelivery backoff.
pub const SUBSCRIPTION_RETRY_MS_MAX: u64 = 10_000;
/// How long [`run_subscription`] waits for new events before looking again
/// (it normally wakes on the log's change notification long before).
pub const SUBSCRIPTION_IDLE_WAIT_MS: u64 = 1_000;
/// How many arrivals without a match a runner's durable cursor may trail its
/// read position by before it is written. Writing it after every look would
/// cost a durable commit per commit of unrelated events; trailing only means
/// those (unmatched) rows are looked at again after a restart.
pub const SUBSCRIPTION_IDLE_COMMIT_ARRIVALS: u64 = 4096;
/// How long a runner's durable cursor may trail its read position over
/// unmatched events before it is written anyway.
pub const SUBSCRIPTION_IDLE_COMMIT_MS: u64 = 1_000;
/// Longest consumer name, in bytes.
pub const CONSUMER_NAME_BYTES_MAX: usize = 64;
/// Longest subscription pattern, in bytes (a literal pattern is an event type).
pub const SUBSCRIPTION_PATTERN_BYTES_MAX: usize = EVENT_TYPE_BYTES_MAX;

/// Errors specific to subscriptions. Messages name the value and the reason.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    #[error("consumer name {name:?} is invalid: {reason}")]
    InvalidConsumer { name: String, reason: String },
    #[error("subscription pattern {pattern:?} is invalid: {reason}")]
    InvalidPattern { pattern: String, reason: String },
    #[error(
        "consumer {consumer:?} is subscribed to {stored:?}, not {requested:?}; resume it with its pattern, or start it explicitly (start, now or a timestamp) to change it"
    )]
    PatternChanged {
        consumer: String,
        stored: String,
        requested: String,
    },
    #[error(
        "consumer {consumer:?} cannot commit arrival {arrival}: it has only read up to arrival {position}"
    )]
    CommitAhead {
        consumer: String,
        arrival: u64,
        position: u64,
    },
}

/// Where a new subscription begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The first event the node holds.
    Start,
    /// Only events that arrive after subscribing.
    Now,
    /// The first event, in arrival order, whose header timestamp is at or
    /// after this many microseconds since the Unix epoch (everything after it
    /// in arrival order follows, whatever its timestamp). With no such event
    /// yet, the same as [`StartFrom::Now`].
    Timestamp(u64),
    /// Resume the consumer's durable cursor; a new consumer starts at
    /// [`StartFrom::Start`].
    Stored,
}

/// A consumer's durable subscription. Holds its own SQLite connection, for
/// reading and for cursor writes (SQLite serialises them with the writer).
pub struct Subscription {
    consumer: String,
    pattern: String,
    conn: Connection,
    /// Cursor writes go through the log's single writer.
    writer: super::WriteHandle,
    /// Events after this arrival are delivered next.
    position: u64,
    /// The durable cursor as this subscription last wrote or read it.
    committed: u64,
    /// When this subscription last wrote (or first read) the cursor.
    committed_at: std::time::Instant,
    changes: tokio::sync::watch::Receiver<u64>,
    /// Lets the read position step over commits without a matching type.
    recent: std::sync::Arc<super::recent::RecentCommits>,
    /// Where the runners report store faults.
    health: std::sync::Arc<super::Health>,
}

impl Log {
    /// Subscribes `consumer` to events whose type matches `pattern`, starting
    /// at `from`. [`StartFrom::Stored`] resumes the durable cursor and
    /// refuses a changed pattern; the other starts reposition the cursor (and
    /// store the pattern) at once. See `store/subscribe.rs` for the details.
    pub fn subscribe(
        &self,
        consumer: &str,
        pattern: &str,
        from: StartFrom,
    ) -> Result<Subscription, LogError> {
        check_consumer(consumer)?;
        check_pattern(pattern)?;
        let conn = open_connection(self.db_path(), false)?;
        let stored = read_cursor(&conn, consumer)?;
        let position = match (from, stored) {
            (StartFrom::Stored, Some((stored_pattern, last))) => {
                if stored_pattern != pattern {
                    return Err(SubscriptionError::PatternChanged {
                        consumer: consumer.to_string(),
                        stored: stored_pattern,
                        requested: pattern.to_string(),
                    }
                    .into());
                }
                last
            }
            (from, _) => {
                let position = position_for(&conn, from)?;
                save_cursor(&self.write_handle()?, consumer, pattern, position)?;
                position
            }
        };
        tracing::debug!(consumer, pattern, position, ?from, "subscribed");
        Ok(Subscription {
            consumer: consumer.to_string(),
            pattern: pattern.to_string(),
            conn,
            writer: self.write_handle()?,
            position,
            committed: position,
            committed_at: std::time::Instant::now(),
            changes: self.changes(),
            recent: std::sync::Arc::clone(&self.recent),
            health: std::sync::Arc::clone(&self.health),
        })
    }
}

impl Subscription {
    /// The consumer name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The event type pattern.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Up to `max` (<= [`SUBSCRIPTION_BATCH_EVENTS_MAX`], larger values are
    /// clamped) next events matching the pattern, after the cursor, in
    /// arrival order. Advances [`position`](Self::position) past what it
    /// read; does not advance the durable cursor. An empty batch means no
    /// match among the (at most [`SUBSCRIPTION_SCAN_EVENTS_MAX`]) rows looked
    /// at; [`wait`](Self::wait) tells whether more rows exist.
    pub fn next_batch(&mut self, max: usize) -> Result<Vec<StoredEvent>, LogError> {
        let max = max.min(SUBSCRIPTION_BATCH_EVENTS_MAX);
        let mut batch = Vec::new();
        // Assigned back only on success, so an error never skips events.
        let mut position = self.position;
        let mut scanned = 0usize;
        while batch.len() < max && scanned < SUBSCRIPTION_SCAN_EVENTS_MAX {
            position = self.recent.skip_unmatched(position, |event_type| {
                crate::core::event::glob_match(&self.pattern, event_type)
            });
            if self.recent.holds_after(position) == Some(false) {
                break;
            }
            let page_len = SUBSCRIPTION_PAGE_EVENTS.min(SUBSCRIPTION_SCAN_EVENTS_MAX - scanned);
            let page = read_types(&self.conn, position, page_len)?;
            for (arrival, indexed_type) in &page {
                // A type name that is not text is damaged (no event type is
                // anything but text) and matches no pattern; a matching row
                // is rebuilt and checked before it is delivered.
                let candidate = match std::str::from_utf8(indexed_type) {
                    Ok(t) => crate::core::event::glob_match(&self.pattern, t),
                    Err(_) => false,
                };
                if candidate {
                    let event = read_event(&self.conn, *arrival)?;
                    if crate::core::event::glob_match(&self.pattern, &event.header.event_type) {
                        batch.push(event);
                    }
                }
                position = *arrival;
                scanned += 1;
                if batch.len() == max {
                    break;
                }
            }
            if page.len() < page_len {
                break;
            }
        }
        self.position = position;
        Ok(batch)
    }

    /// Durably records that everything up to and including `arrival` was
    /// handled (at-least-once: call after your effects). `arrival` may not be
    /// beyond [`position`](Self::position); a value at or below the durable
    /// cursor changes nothing.
    pub fn commit(&mut self, arrival: u64) -> Result<(), LogError> {
        if arrival > self.position {
            return Err(SubscriptionError::CommitAhead {
                consumer: self.consumer.clone(),
                arrival,
                position: self.position,
            }
            .into());
        }
        if arrival <= self.committed {
            return Ok(());
        }
        save_cursor(&self.writer, &self.consumer, &self.pattern, arrival)?;
        self.committed = arrival;
        self.committed_at = std::time::Instant::now();
        Ok(())
    }

    /// Whether the durable cursor has trailed the read position (over
    /// unmatched events) for long enough to be written: by
    /// [`SUBSCRIPTION_IDLE_COMMIT_ARRIVALS`] or for
    /// [`SUBSCRIPTION_IDLE_COMMIT_MS`].
    fn idle_commit_due(&self) -> bool {
        let trailing = self.position - self.committed;
        trailing >= SUBSCRIPTION_IDLE_COMMIT_ARRIVALS
            || (trailing > 0
                && self.committed_at.elapsed()
                    >= Duration::from_millis(SUBSCRIPTION_IDLE_COMMIT_MS))
    }

    /// The read position: events after this arrival are delivered next.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The durable cursor: the last arrival committed.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Moves the read position back to the durable cursor, so everything not
    /// committed is delivered again.
    pub fn rewind(&mut self) {
        self.position = self.committed;
    }

    /// Waits until the log holds events after the read position (`true`) or
    /// `timeout` passes (`false`). Wakes on the log's change notification, not
    /// by polling. A failing store check counts as `true` so the caller's next
    /// [`next_batch`](Self::next_batch) reports the error.
    pub async fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Mark the current version seen before looking, so a commit that
            // lands after the look wakes us.
            self.changes.borrow_and_update();
            match self.has_more() {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(consumer = %self.consumer, error = %e, "cannot check for new events");
                    return true;
                }
            }
            match tokio::time::timeout_at(deadline, self.changes.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => {
                    // The log closed: nothing new can arrive through it.
                    tokio::time::sleep_until(deadline).await;
                    return self.has_more().unwrap_or(true);
                }
                Err(_) => return false,
            }
        }
    }

    fn has_more(&self) -> Result<bool, LogError> {
        if let Some(known) = self.recent.holds_after(self.position) {
            return Ok(known);
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM event_rows WHERE arrival > ?1)")?;
        Ok(stmt.query_row([to_sql(self.position)], |r| r.get(0))?)
    }
}

/// Resolves when `shutdown` turns true (or its sender is gone): the `stop`
/// future the node and the saga engine hand to [`run_subscription`] and its
/// siblings.
pub(crate) async fn stopped(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Runs `handler` for every matching event, committing the cursor after each
/// batch the handler accepted; stops when `stop` resolves (checked between
/// batches and while idle or backing off).
///
/// At-least-once: if the handler returns `Err`, the cursor is committed up to
/// just before the failing event, which is redelivered after a backoff that
/// starts at [`SUBSCRIPTION_RETRY_MS`] and doubles up to
/// [`SUBSCRIPTION_RETRY_MS_MAX`]; a success resets it. Transient store
/// faults (busy, locked, disk full) are retried with their own backoff
/// ([`SUBSCRIPTION_STORE_RETRY_MS`] to [`SUBSCRIPTION_STORE_RETRY_MS_MAX`])
/// and shown in the log's [`Health`](super::Health) meanwhile; a permanent
/// one (a damaged store) is reported there as fatal and ends the run with
/// `Err`.
pub async fn run_subscription<F>(
    sub: Subscription,
    mut handler: F,
    stop: impl Future<Output = ()>,
) -> Result<(), LogError>
where
    F: FnMut(&StoredEvent) -> Result<(), String>,
{
    let in_order = move |batch: Vec<StoredEvent>| {
        std::future::ready(
            batch
                .iter()
                .try_for_each(|event| handler(event).map_err(|reason| (event.arrival, reason))),
        )
    };
    run_subscription_batches(sub, in_order, stop).await
}

/// [`run_subscription`] for a handler that must wait (run a transaction on
/// the writer, call an executable): events are handled one at a time, in
/// arrival order, each only after the one before it succeeded. Same cursor
/// and redelivery rules.
pub async fn run_subscription_async<F, Fut>(
    sub: Subscription,
    mut handler: F,
    stop: impl Future<Output = ()>,
) -> Result<(), LogError>
where
    F: FnMut(StoredEvent) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let one_by_one = move |batch: Vec<StoredEvent>| {
        let mut futures = Vec::with_capacity(batch.len());
        for event in batch {
            let arrival = event.arrival;
            futures.push((arrival, handler(event)));
        }
        async move {
            for (arrival, future) in futures {
                future.await.map_err(|reason| (arrival, reason))?;
            }
            Ok(())
        }
    };
    run_subscription_batches(sub, one_by_one, stop).await
}

/// The most general runner: `handler` gets each batch of matching events (in
/// arrival order) and may work on them concurrently; `Err((arrival,
/// reason))` names the first event it could not handle. The cursor is
/// committed just before that event, which (with everything after it) is
/// redelivered after the backoff; handlers must therefore be idempotent
/// for the events after a failure (an inbox makes them so).
pub async fn run_subscription_batches<F, Fut>(
    mut sub: Subscription,
    mut handler: F,
    stop: impl Future<Output = ()>,
) -> Result<(), LogError>
where
    F: FnMut(Vec<StoredEvent>) -> Fut,
    Fut: Future<Output = Result<(), (u64, String)>>,
{
    let mut stop = std::pin::pin!(stop);
    let mut backoff_ms = SUBSCRIPTION_RETRY_MS;
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => {
                commit_on_stop(&mut sub);
                return Ok(());
            }
            _ = std::future::ready(()) => {}
        }
        let Some(batch) = store_retry(&mut sub, &mut stop, |sub| {
            sub.next_batch(SUBSCRIPTION_BATCH_EVENTS_MAX)
        })
        .await?
        else {
            return Ok(());
        };
        if batch.is_empty() {
            // Nothing matched: the position moved over unrelated events only.
            if sub.idle_commit_due()
                && store_retry(&mut sub, &mut stop, |sub| sub.commit(sub.position()))
                    .await?
                    .is_none()
            {
                return Ok(());
            }
            tokio::select! {
                _ = &mut stop => {
                    commit_on_stop(&mut sub);
                    return Ok(());
                }
                _ = sub.wait(Duration::from_millis(SUBSCRIPTION_IDLE_WAIT_MS)) => {}
            }
            continue;
        }
        // Not raced against `stop`: a batch the handler finished is always
        // committed before the runner looks at `stop` again.
        let outcome = handler(batch).await;
        match outcome {
            Ok(()) => {
                if store_retry(&mut sub, &mut stop, |sub| sub.commit(sub.position()))
                    .await?
                    .is_none()
                {
                    return Ok(());
                }
                backoff_ms = SUBSCRIPTION_RETRY_MS;
            }
            Err((arrival, reason)) => {
                let before = arrival.saturating_sub(1);
                if store_retry(&mut sub, &mut stop, |sub| sub.commit(before))
                    .await?
                    .is_none()
                {
                    return Ok(());
                }
                sub.rewind();
                tracing::warn!(
                    consumer = %sub.consumer,
                    arrival,
                    reason = %reason,
                    backoff_ms,
                    "handler failed; redelivering after backoff"
                );
                tokio::select! {
                    _ = &mut stop => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
                }
                backoff_ms = (backoff_ms * 2).min(SUBSCRIPTION_RETRY_MS_MAX);
            }
        }
    }
}

/// Runs one store operation of a runner (a read or a cursor write),
/// retrying transient faults (see [`LogError::is_transient`]) with a backoff
/// from [`SUBSCRIPTION_STORE_RETRY_MS`] doubling to
/// [`SUBSCRIPTION_STORE_RETRY_MS_MAX`], for as long as they last: the fault
/// shows in the node's health meanwhile and is cleared when the store works
/// again. A permanent fault is reported as such and ends the run with `Err`.
/// `Ok(None)`: `stop` resolved while waiting.
async fn store_retry<T, S>(
    sub: &mut Subscription,
    stop: &mut std::pin::Pin<&mut S>,
    mut op: impl FnMut(&mut Subscription) -> Result<T, LogError>,
) -> Result<Option<T>, LogError>
where
    S: Future<Output = ()>,
{
    // The task's name in the node's health, built only when it is needed.
    let task = |sub: &Subscription| format!("subscription {}", sub.consumer);
    let mut backoff_ms = SUBSCRIPTION_STORE_RETRY_MS;
    let mut failed = false;
    loop {
        match op(sub) {
            Ok(value) => {
                if failed {
                    sub.health.cleared(&task(sub));
                }
                return Ok(Some(value));
            }
            Err(e) if e.is_transient() => {
                failed = true;
                tracing::warn!(consumer = %sub.consumer, error = %e, backoff_ms, "store fault; retrying after backoff");
                sub.health.transient(&task(sub), &format!("{e} (retrying)"));
                tokio::select! {
                    _ = stop.as_mut() => return Ok(None),
                    _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
                }
                backoff_ms = (backoff_ms * 2).min(SUBSCRIPTION_STORE_RETRY_MS_MAX);
            }
            Err(e) => {
                sub.health.permanent(&task(sub), &e.to_string());
                return Err(e);
            }
        }
    }
}

/// Writes the cursor over unmatched events a stopping runner looked at
/// (everything it delivered is committed already). A failure only means
/// those rows are looked at again.
fn commit_on_stop(sub: &mut Subscription) {
    if let Err(e) = sub.commit(sub.position()) {
        tracing::debug!(consumer = %sub.consumer, error = %e, "cursor not written on stop");
    }
}

/// The arrival a reader starting at `from` should read after, on any
/// connection (including a read-only one). [`StartFrom::Stored`] needs a
/// consumer and is treated as [`StartFrom::Start`] here.
pub fn position_for(conn: &Connection, from: StartFrom) -> Result<u64, LogError> {
    match from {
        StartFrom::Start | StartFrom::Stored => Ok(0),
        StartFrom::Now => last_arrival(conn),
        StartFrom::Timestamp(us) => {
            // No index on timestamp_us: a one-off scan when subscribing.
            let first: Option<i64> = conn.query_row(
                "SELECT min(arrival) FROM event_rows WHERE timestamp_us >= ?1",
                [to_sql(us)],
                |r| r.get(0),
            )?;
            match first {
                Some(arrival) => Ok(from_sql(arrival)?.saturating_sub(1)),
                None => last_arrival(conn),
            }
        }
    }
}

/// The last arrival the store holds (0 when empty).
pub fn last_arrival(conn: &Connection) -> Result<u64, LogError> {
    let last: Option<i64> =
        conn.query_row("SELECT max(arrival) FROM event_rows", [], |r| r.get(0))?;
    last.map_or(Ok(0), from_sql)
}

pub(crate) fn check_consumer(name: &str) -> Result<(), SubscriptionError> {
    let invalid = |reason: String| SubscriptionError::InvalidConsumer {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() || name.len() > CONSUMER_NAME_BYTES_MAX {
        return Err(invalid(format!(
            "it must be 1 to {CONSUMER_NAME_BYTES_MAX} bytes, not {}",
            name.len()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(format!(
            "{c:?} is not allowed (use A-Z, a-z, 0-9, '.', '_', '-')"
        )));
    }
    Ok(())
}

fn check_pattern(pattern: &str) -> Result<(), SubscriptionError> {
    if pattern.is_empty() || pattern.len() > SUBSCRIPTION_PATTERN_BYTES_MAX {
        return Err(SubscriptionError::InvalidPattern {
            pattern: pattern.to_string(),
            reason: format!(
                "it must be 1 to {SUBSCRIPTION_PATTERN_BYTES_MAX} bytes, not {}",
                pattern.len()
            ),
        });
    }
    Ok(())
}

fn read_cursor(conn: &Connection, consumer: &str) -> Result<Option<(String, u64)>, LogError> {
    let row: Option<(String, i64)> = conn
        .query_row(
            "SELECT pattern, last_arrival FROM consumer_cursors WHERE consumer = ?1",
            [consumer],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    row.map(|(pattern, last)| Ok((pattern, from_sql(last)?)))
        .transpose()
}

/// Writes a consumer's cursor durably through the log's writer.
fn save_cursor(
    writer: &super::WriteHandle,
    consumer: &str,
    pattern: &str,
    last_arrival: u64,
) -> Result<(), LogError> {
    let (consumer, pattern) = (consumer.to_string(), pattern.to_string());
    writer.write(Box::new(move |tx| {
        write_cursor(tx, &consumer, &pattern, last_arrival)
    }))
}

fn write_cursor(
    conn: &Connection,
    consumer: &str,
    pattern: &str,
    last_arrival: u64,
) -> Result<(), LogError> {
    conn.prepare_cached(
        "INSERT INTO consumer_cursors (consumer, pattern, last_arrival, updated_at_us)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (consumer) DO UPDATE SET
           pattern = excluded.pattern,
           last_arrival = excluded.last_arrival,
           updated_at_us = excluded.updated_at_us",
    )?
    .execute(params![
        consumer,
        pattern,
        to_sql(last_arrival),
        to_sql(clock::now_us())
    ])?;
    Ok(())
}

/// `(arrival, event_type)` of up to `limit` rows after `after`: small rows,
/// so matching never holds more than a page of them in memory. The type is
/// read as bytes (`CAST` keeps SQLite from handing back damaged text as a
/// string that fails to decode).
fn read_types(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
    let mut stmt = conn.prepare_cached(
        "SELECT e.arrival, CAST(t.name AS BLOB) FROM event_rows e JOIN type_names t ON t.id = e.type
         WHERE e.arrival > ?1 ORDER BY e.arrival LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![to_sql(after), limit as i64], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    rows.map(|r| {
        let (arrival, event_type) = r?;
        Ok((from_sql(arrival)?, event_type))
    })
    .collect()
}

/// The event at `arrival`, its envelope rebuilt from its row.
fn read_event(conn: &Connection, arrival: u64) -> Result<StoredEvent, LogError> {
    super::read_arrival(conn, arrival)?
        .ok_or_else(|| LogError::Corrupt(format!("no event at arrival {arrival}")))
}

fn to_sql(value: u64) -> i64 {
    value.min(i64::MAX as u64) as i64
}

fn from_sql(value: i64) -> Result<u64, LogError> {
    u64::try_from(value)
        .map_err(|_| LogError::Corrupt(format!("negative arrival or cursor {value} in the store")))
}
