//! Readers that keep their own position: a [`Follower`] walks the node's
//! arrival order for a set of type patterns without a durable cursor (the
//! HTTP API's streams and pulls), and the consumer-cursor functions below let
//! such a reader's owner keep a position durably in `consumer_cursors`, the
//! table [`Subscription`](super::Subscription)s use, acknowledged from
//! outside (a client's `ack`), not by a runner.
//!
//! A follower reads pages of small rows (arrival, type name, payload length)
//! to choose what it wants, then reads the chosen events back in one range
//! query when they are most of the page (a stream of every event) or one by
//! one when they are few (a rare type). Like a subscription it steps over
//! recent commits that hold no wanted type without reading them
//! (`store/recent.rs`). A batch is bounded in events and in payload bytes.

use std::sync::Arc;
use std::sync::mpsc::sync_channel;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::subscribe::{StartFrom, SubscriptionError, position_for};
use super::{Log, LogError, StoredEvent, open_connection};
use crate::clock;
use crate::core::event::glob_match;
use crate::core::limits::EVENT_TYPE_BYTES_MAX;

/// Most events one [`Follower::next_batch`] returns.
pub const FOLLOW_BATCH_EVENTS_MAX: usize = 1024;
/// Payload bytes one [`Follower::next_batch`] gathers before it stops (it
/// always returns at least one event if one is due, whatever its size), so
/// a batch of large events stays a few megabytes.
pub const FOLLOW_BATCH_PAYLOAD_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Small rows (arrival, type, payload length) read per query while choosing.
pub const FOLLOW_PAGE_ROWS: usize = 1024;
/// Most rows one [`Follower::next_batch`] looks at, wanted or not, so a rare
/// pattern over a long log returns (possibly empty) instead of scanning it
/// all in one call; the position still advances past what was looked at.
pub const FOLLOW_SCAN_ROWS_MAX: usize = 16 * FOLLOW_PAGE_ROWS;
/// Most type patterns one follower matches.
pub const FOLLOW_PATTERNS_MAX: usize = 16;
/// Most consumer cursors [`Log::consumer_cursors`] returns.
pub const CONSUMER_CURSORS_LIST_MAX: usize = 10_000;

/// A read-only walk over the arrival order, keeping events whose type
/// matches any of its patterns (all events without patterns). It writes
/// nothing: its position lives in memory, and its owner decides what to
/// keep of it (an SSE client keeps the last event id; a durable consumer
/// acknowledges through [`Log::ack_consumer_cursor`]).
pub struct Follower {
    conn: Connection,
    /// Empty: every event.
    patterns: Vec<String>,
    /// Events after this arrival come next.
    position: u64,
    changes: tokio::sync::watch::Receiver<u64>,
    recent: Arc<super::recent::RecentCommits>,
}

/// One small row looked at while choosing: arrival, type name (as stored),
/// stored payload length.
struct Candidate {
    arrival: u64,
    event_type: Vec<u8>,
    payload_len: usize,
}

/// A durable consumer cursor as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConsumerCursor {
    pub consumer: String,
    /// The pattern text as stored (its owner's encoding).
    pub pattern: String,
    /// Everything up to and including this arrival was acknowledged.
    pub last_arrival: u64,
    /// When the cursor was last written, µs since the Unix epoch.
    pub updated_at_us: u64,
}

impl Log {
    /// A follower of events whose type matches any of `patterns` (every
    /// event when `patterns` is empty or holds `*`), after arrival `after`.
    /// Holds its own read connection.
    pub fn follow(&self, patterns: Vec<String>, after: u64) -> Result<Follower, LogError> {
        check_patterns(&patterns)?;
        let all = patterns.is_empty() || patterns.iter().any(|p| p == "*");
        Ok(Follower {
            conn: open_connection(self.db_path(), false)?,
            patterns: if all { Vec::new() } else { patterns },
            position: after,
            changes: self.changes(),
            recent: Arc::clone(&self.recent),
        })
    }

    /// The arrival a reader starting at `from` reads after
    /// ([`StartFrom::Stored`] counts as the start).
    pub fn position_for(&self, from: StartFrom) -> Result<u64, LogError> {
        position_for(&*self.reader()?, from)
    }

    /// The last arrival the store holds (0 when empty).
    pub fn last_arrival(&self) -> Result<u64, LogError> {
        super::subscribe::last_arrival(&*self.reader()?)
    }

    /// `consumer`'s durable cursor, if it has one.
    pub fn consumer_cursor(&self, consumer: &str) -> Result<Option<ConsumerCursor>, LogError> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(
            "SELECT consumer, pattern, last_arrival, updated_at_us FROM consumer_cursors
             WHERE consumer = ?1",
        )?;
        stmt.query_row([consumer], cursor_row)
            .optional()?
            .transpose()
    }

    /// The cursors of consumers whose name starts with `prefix`, by name,
    /// at most `limit` (capped at [`CONSUMER_CURSORS_LIST_MAX`]).
    pub fn consumer_cursors(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<ConsumerCursor>, LogError> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(
            "SELECT consumer, pattern, last_arrival, updated_at_us FROM consumer_cursors
             WHERE substr(consumer, 1, length(?1)) = ?1 ORDER BY consumer LIMIT ?2",
        )?;
        let limit = limit.min(CONSUMER_CURSORS_LIST_MAX) as i64;
        let rows = stmt.query_map(params![prefix, limit], cursor_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row??);
        }
        Ok(out)
    }

    /// Creates `consumer`'s cursor or sets it (pattern and position) as
    /// given, backwards too; durable when it returns. The name is checked
    /// as [`Log::subscribe`] checks it.
    pub fn put_consumer_cursor(
        &self,
        consumer: &str,
        pattern: &str,
        last_arrival: u64,
    ) -> Result<(), LogError> {
        super::subscribe::check_consumer(consumer)?;
        let (consumer, pattern) = (consumer.to_string(), pattern.to_string());
        self.write_handle()?.write(Box::new(move |tx| {
            tx.prepare_cached(
                "INSERT INTO consumer_cursors (consumer, pattern, last_arrival, updated_at_us)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (consumer) DO UPDATE SET pattern = excluded.pattern,
                   last_arrival = excluded.last_arrival, updated_at_us = excluded.updated_at_us",
            )?
            .execute(params![
                consumer,
                pattern,
                to_sql(last_arrival),
                to_sql(clock::now_us())
            ])?;
            Ok(())
        }))
    }

    /// Moves `consumer`'s cursor forward to `arrival` (never back: an older
    /// acknowledgement changes nothing) if its stored pattern is `pattern`;
    /// durable when it returns. The cursor as it now stands, or `None` when
    /// the consumer has no cursor or another pattern (it was deleted or
    /// redefined meanwhile).
    pub fn ack_consumer_cursor(
        &self,
        consumer: &str,
        pattern: &str,
        arrival: u64,
    ) -> Result<Option<u64>, LogError> {
        let (consumer, pattern) = (consumer.to_string(), pattern.to_string());
        let (reply, answer) = sync_channel(1);
        self.write_handle()?.write(Box::new(move |tx| {
            tx.prepare_cached(
                "UPDATE consumer_cursors SET last_arrival = ?3, updated_at_us = ?4
                 WHERE consumer = ?1 AND pattern = ?2 AND last_arrival < ?3",
            )?
            .execute(params![
                consumer,
                pattern,
                to_sql(arrival),
                to_sql(clock::now_us())
            ])?;
            let now: Option<i64> = tx
                .prepare_cached(
                    "SELECT last_arrival FROM consumer_cursors WHERE consumer = ?1 AND pattern = ?2",
                )?
                .query_row(params![consumer, pattern], |r| r.get(0))
                .optional()?;
            let _ = reply.send(now.map(from_sql).transpose()?);
            Ok(())
        }))?;
        answer.recv().map_err(|_| LogError::WriterGone)
    }

    /// Deletes `consumer`'s cursor; `true` if it had one.
    pub fn delete_consumer_cursor(&self, consumer: &str) -> Result<bool, LogError> {
        let consumer = consumer.to_string();
        let (reply, answer) = sync_channel(1);
        self.write_handle()?.write(Box::new(move |tx| {
            let deleted = tx
                .prepare_cached("DELETE FROM consumer_cursors WHERE consumer = ?1")?
                .execute([consumer])?;
            let _ = reply.send(deleted > 0);
            Ok(())
        }))?;
        answer.recv().map_err(|_| LogError::WriterGone)
    }
}

impl Follower {
    /// Events after this arrival come next.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next wanted events in arrival order: at most
    /// [`FOLLOW_BATCH_EVENTS_MAX`], stopping once
    /// [`FOLLOW_BATCH_PAYLOAD_BYTES_MAX`] of payload is gathered, after
    /// looking at no more than [`FOLLOW_SCAN_ROWS_MAX`] rows. Advances
    /// [`position`](Self::position) past what it looked at (only on
    /// success, so an error never skips events). Empty: nothing wanted among
    /// the rows looked at; [`wait`](Self::wait) tells whether more exist.
    pub fn next_batch(&mut self) -> Result<Vec<StoredEvent>, LogError> {
        let mut batch: Vec<StoredEvent> = Vec::new();
        let mut position = self.position;
        let mut scanned = 0usize;
        let mut payload_bytes = 0usize;
        while batch.len() < FOLLOW_BATCH_EVENTS_MAX && scanned < FOLLOW_SCAN_ROWS_MAX {
            if !self.patterns.is_empty() {
                position = self
                    .recent
                    .skip_unmatched(position, |event_type| self.wants(event_type));
            }
            if self.recent.holds_after(position) == Some(false) {
                break;
            }
            let page_len = FOLLOW_PAGE_ROWS.min(FOLLOW_SCAN_ROWS_MAX - scanned);
            let page = read_candidates(&self.conn, position, page_len)?;
            let mut wanted: Vec<u64> = Vec::new();
            let mut looked_at = 0usize;
            let mut range_bytes = 0usize;
            let mut full = false;
            let mut end = position;
            for row in &page {
                if self.wants_raw(&row.event_type) {
                    let taken = batch.len() + wanted.len();
                    if taken >= FOLLOW_BATCH_EVENTS_MAX
                        || (taken > 0
                            && payload_bytes + row.payload_len > FOLLOW_BATCH_PAYLOAD_BYTES_MAX)
                    {
                        full = true;
                        break;
                    }
                    wanted.push(row.arrival);
                    payload_bytes += row.payload_len;
                }
                range_bytes += row.payload_len;
                end = row.arrival;
                looked_at += 1;
            }
            scanned += looked_at;
            self.read_wanted(position, end, &wanted, looked_at, range_bytes, &mut batch)?;
            position = end;
            if full || page.len() < page_len {
                break;
            }
        }
        self.position = position;
        Ok(batch)
    }

    /// Waits until the log holds events after the position (`true`) or
    /// `timeout` passes (`false`); wakes on the log's change notification.
    /// A failing store check counts as `true`, so the next
    /// [`next_batch`](Self::next_batch) reports the error.
    pub async fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Seen before looking, so a commit after the look wakes us.
            self.changes.borrow_and_update();
            match self.has_more() {
                Ok(false) => {}
                Ok(true) | Err(_) => return true,
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

    /// Whether the store holds events after the position (wanted or not).
    pub fn has_more(&self) -> Result<bool, LogError> {
        if let Some(known) = self.recent.holds_after(self.position) {
            return Ok(known);
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM event_rows WHERE arrival > ?1)")?;
        Ok(stmt.query_row([to_sql(self.position)], |r| r.get(0))?)
    }

    fn wants(&self, event_type: &str) -> bool {
        self.patterns.is_empty() || self.patterns.iter().any(|p| glob_match(p, event_type))
    }

    /// A type name that is not text is damaged and matches no pattern
    /// (only a follower of every event takes it, and its read reports the
    /// damage).
    fn wants_raw(&self, event_type: &[u8]) -> bool {
        if self.patterns.is_empty() {
            return true;
        }
        std::str::from_utf8(event_type).is_ok_and(|t| self.wants(t))
    }

    /// Reads the `wanted` arrivals among the `looked_at` rows of `(after,
    /// end]` into `batch`: with one range query when they are most of it
    /// (and the range's payloads are not much more than theirs), else one
    /// by one.
    fn read_wanted(
        &self,
        after: u64,
        end: u64,
        wanted: &[u64],
        looked_at: usize,
        range_bytes: usize,
        batch: &mut Vec<StoredEvent>,
    ) -> Result<(), LogError> {
        if wanted.is_empty() {
            return Ok(());
        }
        let dense =
            wanted.len() * 2 >= looked_at && range_bytes <= 2 * FOLLOW_BATCH_PAYLOAD_BYTES_MAX;
        if !dense {
            for arrival in wanted {
                let event = super::read_arrival(&self.conn, *arrival)?
                    .ok_or_else(|| LogError::Corrupt(format!("no event at arrival {arrival}")))?;
                batch.push(event);
            }
            return Ok(());
        }
        let range = super::rows::query_events(
            &self.conn,
            "WHERE e.arrival > ?1 AND e.arrival <= ?2 ORDER BY e.arrival",
            params![to_sql(after), to_sql(end)],
        )?;
        // Both in arrival order: keep the range's events that were chosen.
        let mut next = wanted.iter().peekable();
        for event in range {
            if next.peek() == Some(&&event.arrival) {
                next.next();
                batch.push(event);
            }
        }
        match next.next() {
            None => Ok(()),
            Some(missing) => Err(LogError::Corrupt(format!("no event at arrival {missing}"))),
        }
    }
}

fn check_patterns(patterns: &[String]) -> Result<(), SubscriptionError> {
    if patterns.len() > FOLLOW_PATTERNS_MAX {
        return Err(SubscriptionError::InvalidPattern {
            pattern: patterns.join(" "),
            reason: format!(
                "{} patterns, over the limit of {FOLLOW_PATTERNS_MAX}",
                patterns.len()
            ),
        });
    }
    for pattern in patterns {
        if pattern.is_empty() || pattern.len() > EVENT_TYPE_BYTES_MAX {
            return Err(SubscriptionError::InvalidPattern {
                pattern: pattern.clone(),
                reason: format!(
                    "it must be 1 to {EVENT_TYPE_BYTES_MAX} bytes, not {}",
                    pattern.len()
                ),
            });
        }
    }
    Ok(())
}

/// `(arrival, type, payload length)` of up to `limit` rows after `after`.
/// The type is read as bytes (`CAST` keeps SQLite from handing back damaged
/// text as a string that fails to decode); `length` of a blob reads no
/// payload pages.
fn read_candidates(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<Candidate>, LogError> {
    let mut stmt = conn.prepare_cached(
        "SELECT e.arrival, CAST(t.name AS BLOB), coalesce(length(e.payload), 0)
         FROM event_rows e JOIN type_names t ON t.id = e.type
         WHERE e.arrival > ?1 ORDER BY e.arrival LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![to_sql(after), limit as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    rows.map(|row| {
        let (arrival, event_type, payload_len) = row?;
        Ok(Candidate {
            arrival: from_sql(arrival)?,
            event_type,
            payload_len: usize::try_from(payload_len).unwrap_or(0),
        })
    })
    .collect()
}

fn cursor_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<ConsumerCursor, LogError>> {
    let (consumer, pattern): (String, String) = (r.get(0)?, r.get(1)?);
    let (last, updated): (i64, i64) = (r.get(2)?, r.get(3)?);
    Ok((|| {
        Ok(ConsumerCursor {
            consumer,
            pattern,
            last_arrival: from_sql(last)?,
            updated_at_us: from_sql(updated)?,
        })
    })())
}

fn to_sql(value: u64) -> i64 {
    value.min(i64::MAX as u64) as i64
}

fn from_sql(value: i64) -> Result<u64, LogError> {
    u64::try_from(value)
        .map_err(|_| LogError::Corrupt(format!("negative arrival or cursor {value} in the store")))
}
