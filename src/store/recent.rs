//! What the last commits added, by event type, so a subscription can step
//! over a run of events it does not want without reading them back.
//!
//! Without this, every consumer of a rare type (the saga engine watches
//! `herald.saga.*` on every node) reads the type of every event the node
//! stores, through its own connection, page by page. With it, the writer
//! notes after each commit the arrival range it added and the distinct event
//! types in it; a subscription whose pattern matches none of them moves its
//! read position past the range at once.
//!
//! The summaries are exact, not guessed: the writer reads them back from the
//! rows it has just committed (still in its page cache), so every path that
//! stores events is covered. They are contiguous from the first one on, and a
//! position older than the oldest kept summary simply falls back to reading
//! the store.

use std::collections::VecDeque;
use std::sync::Mutex;

use rusqlite::Connection;

/// Commit summaries kept; older positions are read from the store.
pub const RECENT_COMMITS_MAX: usize = 1024;
/// Distinct event types one summary lists; a commit with more is marked
/// "any type", which never lets a subscription skip it.
pub const RECENT_TYPES_PER_COMMIT_MAX: usize = 16;

/// Arrivals `after + 1 ..= last` and the types among them (`None`: too many
/// to list, assume any).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    after: u64,
    last: u64,
    types: Option<Vec<String>>,
}

#[derive(Debug)]
struct Inner {
    entries: VecDeque<Summary>,
    /// The last arrival summarised (or present when the log opened).
    recorded_up_to: u64,
    /// Whether `recorded_up_to` is the last arrival in the store: false
    /// from a failed summary until the next one succeeds.
    complete: bool,
}

/// Summaries of the latest commits, shared by the writer (which records)
/// and subscriptions (which skip).
#[derive(Debug)]
pub(crate) struct RecentCommits {
    inner: Mutex<Inner>,
}

impl RecentCommits {
    /// Starts with no summaries; `last_arrival` is what the store already
    /// holds (positions at or before it are read from the store).
    pub(crate) fn new(last_arrival: u64) -> RecentCommits {
        RecentCommits {
            inner: Mutex::new(Inner {
                entries: VecDeque::new(),
                recorded_up_to: last_arrival,
                complete: true,
            }),
        }
    }

    /// Summarises what was committed since the last summary, reading it
    /// back through the writer's connection. An error leaves the summaries
    /// as they were (and no longer complete); the next call covers the range.
    ///
    /// The writer calls this after every commit that added events and
    /// before it wakes subscriptions, so a subscription that was woken sees
    /// the summary of what woke it.
    pub(crate) fn record_from(&self, conn: &Connection) -> rusqlite::Result<()> {
        let Ok(mut inner) = self.inner.lock() else {
            return Ok(());
        };
        let outcome = inner.record_from(conn);
        // The writer is the store's only writer: a summary that read every
        // row after the last one covers the whole store.
        inner.complete = outcome.is_ok();
        outcome
    }

    /// The furthest read position at or after `position` such that no event
    /// between the two matches (`matches` says which types do).
    pub(crate) fn skip_unmatched(&self, position: u64, matches: impl Fn(&str) -> bool) -> u64 {
        let Ok(inner) = self.inner.lock() else {
            return position;
        };
        inner.skip_unmatched(position, matches)
    }

    /// Whether the store holds events after `position`, if the summaries
    /// know (`None`: a summary failed since; ask the store). Saves an idle
    /// subscription a read of the store on every wake-up.
    pub(crate) fn holds_after(&self, position: u64) -> Option<bool> {
        let inner = self.inner.lock().ok()?;
        inner.complete.then_some(position < inner.recorded_up_to)
    }
}

impl Inner {
    fn record_from(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let after = self.recorded_up_to;
        let mut stmt = conn.prepare_cached(
            "SELECT e.arrival, t.name FROM event_rows e JOIN type_names t ON t.id = e.type
             WHERE e.arrival > ?1 ORDER BY e.arrival",
        )?;
        let mut rows = stmt.query([after as i64])?;
        let mut last = after;
        let mut types: Option<Vec<String>> = Some(Vec::new());
        while let Some(row) = rows.next()? {
            let arrival: i64 = row.get(0)?;
            last = u64::try_from(arrival).unwrap_or(last);
            if let Some(list) = types.as_mut() {
                let event_type = row.get_ref(1)?.as_str()?;
                if !list.iter().any(|t| t == event_type) {
                    if list.len() == RECENT_TYPES_PER_COMMIT_MAX {
                        types = None;
                    } else {
                        list.push(event_type.to_string());
                    }
                }
            }
        }
        if last > after {
            self.push(Summary { after, last, types });
        }
        Ok(())
    }

    fn push(&mut self, summary: Summary) {
        debug_assert_eq!(summary.after, self.recorded_up_to);
        self.recorded_up_to = summary.last;
        if self.entries.len() == RECENT_COMMITS_MAX {
            self.entries.pop_front();
        }
        self.entries.push_back(summary);
    }

    fn skip_unmatched(&self, mut position: u64, matches: impl Fn(&str) -> bool) -> u64 {
        let first = self.entries.partition_point(|s| s.last <= position);
        for summary in self.entries.range(first..) {
            // Older than every summary: nothing is known about the gap.
            if summary.after > position {
                break;
            }
            let wanted = match &summary.types {
                Some(types) => types.iter().any(|t| matches(t)),
                None => true,
            };
            if wanted {
                break;
            }
            position = summary.last;
        }
        position
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner(start: u64, commits: &[(u64, Option<&[&str]>)]) -> Inner {
        let mut inner = Inner {
            entries: VecDeque::new(),
            recorded_up_to: start,
            complete: true,
        };
        for (last, types) in commits {
            let after = inner.recorded_up_to;
            inner.push(Summary {
                after,
                last: *last,
                types: types.map(|t| t.iter().map(|s| s.to_string()).collect()),
            });
        }
        inner
    }

    /// The event tables (just the columns summaries read) holding arrivals
    /// 1 and 2, with an `events` view the tests insert through by type name.
    fn store_holding_two_events() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE type_names (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
             CREATE TABLE event_rows (arrival INTEGER PRIMARY KEY, type INTEGER NOT NULL);
             CREATE VIEW events AS SELECT e.arrival, t.name AS event_type
                 FROM event_rows e JOIN type_names t ON t.id = e.type;
             CREATE TRIGGER events_insert INSTEAD OF INSERT ON events BEGIN
                 INSERT OR IGNORE INTO type_names (name) VALUES (NEW.event_type);
                 INSERT INTO event_rows (type) SELECT id FROM type_names WHERE name = NEW.event_type;
             END;
             INSERT INTO events (event_type) VALUES ('a'), ('b');",
        )
        .unwrap();
        conn
    }

    fn is_saga(t: &str) -> bool {
        t.starts_with("herald.saga.")
    }

    #[test]
    fn skips_runs_without_a_wanted_type_and_stops_at_one() {
        let inner = inner(
            10,
            &[
                (20, Some(&["bench.event"])),
                (25, Some(&["bench.event", "x"])),
                (30, Some(&["herald.saga.command"])),
                (40, Some(&["bench.event"])),
            ],
        );
        assert_eq!(inner.skip_unmatched(10, is_saga), 25);
        // From inside a summary's range.
        assert_eq!(inner.skip_unmatched(22, is_saga), 25);
        // The wanted commit is read from the store, never skipped.
        assert_eq!(inner.skip_unmatched(27, is_saga), 27);
        assert_eq!(inner.skip_unmatched(30, is_saga), 40);
        assert_eq!(inner.skip_unmatched(40, is_saga), 40);
        assert_eq!(inner.skip_unmatched(99, is_saga), 99);
    }

    #[test]
    fn never_skips_before_the_first_summary_or_an_unlisted_commit() {
        let inner = inner(10, &[(20, Some(&["a"])), (30, None), (40, Some(&["a"]))]);
        // Positions the summaries do not cover are left alone.
        assert_eq!(inner.skip_unmatched(5, is_saga), 5);
        // "Any type" stops the skip.
        assert_eq!(inner.skip_unmatched(10, is_saga), 20);
        assert_eq!(inner.skip_unmatched(30, is_saga), 40);
    }

    #[test]
    fn keeps_a_bounded_window_of_summaries() {
        let commits: Vec<(u64, Option<&[&str]>)> = (1..=(RECENT_COMMITS_MAX as u64 + 10))
            .map(|i| (i, Some(&["a"][..])))
            .collect();
        let inner = inner(0, &commits);
        assert_eq!(inner.entries.len(), RECENT_COMMITS_MAX);
        // The first ten were dropped: nothing is known below arrival 10.
        assert_eq!(inner.skip_unmatched(3, is_saga), 3);
        assert_eq!(
            inner.skip_unmatched(10, is_saga),
            RECENT_COMMITS_MAX as u64 + 10
        );
    }

    #[test]
    fn records_exactly_what_the_store_holds() {
        let conn = store_holding_two_events();
        let recent = RecentCommits::new(2);
        recent.record_from(&conn).unwrap();
        assert!(recent.inner.lock().unwrap().entries.is_empty());
        conn.execute_batch(
            "INSERT INTO events (event_type) VALUES ('a'), ('herald.saga.reply'), ('a');",
        )
        .unwrap();
        recent.record_from(&conn).unwrap();
        let types: Vec<String> = (0..RECENT_TYPES_PER_COMMIT_MAX + 1)
            .map(|i| format!("('t{i}')"))
            .collect();
        conn.execute_batch(&format!(
            "INSERT INTO events (event_type) VALUES {}",
            types.join(",")
        ))
        .unwrap();
        recent.record_from(&conn).unwrap();
        let inner = recent.inner.lock().unwrap();
        let entries: Vec<Summary> = inner.entries.iter().cloned().collect();
        assert_eq!(
            entries[0],
            Summary {
                after: 2,
                last: 5,
                types: Some(vec!["a".into(), "herald.saga.reply".into()]),
            }
        );
        assert_eq!(entries[1].after, 5);
        assert_eq!(entries[1].last, 5 + RECENT_TYPES_PER_COMMIT_MAX as u64 + 1);
        assert_eq!(entries[1].types, None);
        assert_eq!(inner.skip_unmatched(2, |t| t == "a"), 2);
        assert_eq!(inner.skip_unmatched(2, |t| t == "c"), 5);
    }

    #[test]
    fn knows_whether_events_follow_only_while_every_commit_was_summarised() {
        let conn = store_holding_two_events();
        let recent = RecentCommits::new(2);
        assert_eq!(recent.holds_after(2), Some(false));
        assert_eq!(recent.holds_after(1), Some(true));
        conn.execute_batch("INSERT INTO events (event_type) VALUES ('c');")
            .unwrap();
        recent.record_from(&conn).unwrap();
        assert_eq!(recent.holds_after(2), Some(true));
        assert_eq!(recent.holds_after(3), Some(false));

        // A summary that fails leaves the answer to the store...
        conn.execute_batch("ALTER TABLE event_rows RENAME TO moved;")
            .unwrap();
        assert!(recent.record_from(&conn).is_err());
        assert_eq!(recent.holds_after(3), None);
        // ...until one succeeds and covers what the failed one missed.
        conn.execute_batch(
            "ALTER TABLE moved RENAME TO event_rows;
             INSERT INTO events (event_type) VALUES ('d');",
        )
        .unwrap();
        recent.record_from(&conn).unwrap();
        assert_eq!(recent.holds_after(3), Some(true));
        assert_eq!(recent.holds_after(4), Some(false));
    }
}
