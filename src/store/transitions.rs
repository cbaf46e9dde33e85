//! Key transitions of the feeds this node holds (`core::transition`):
//! where each stands, the certificate in force before it and the old key's
//! checkpoint it carries. Replication seals the runs before a transition
//! with that checkpoint (a checkpoint past the transition is under the new
//! key, which a receiver only learns from the transition itself); proofs of
//! the events before it use it and the old certificate.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};

use super::LogError;
use crate::core::transition::{KEY_TRANSITION_EVENT_TYPE, KeyTransition};
use crate::core::verify::VerifiedEvent;

/// One key transition of a feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionPoint {
    pub feed: String,
    /// The transition's sequence number: the old key's checkpoint is of
    /// the `seq` events before it.
    pub seq: u64,
    /// The feed's certificate just before the transition.
    pub old_cert: Vec<u8>,
    /// The certificate it moved to.
    pub new_cert: Vec<u8>,
    /// The old key's checkpoint at size `seq`, as a signed note.
    pub checkpoint: Vec<u8>,
}

/// Records `event` if it is a key transition (a verified one: its payload
/// decodes), with the feed's certificate before it; the feed's current
/// certificate becomes the new one. Called where events are inserted.
pub(crate) fn record(tx: &Connection, event: &VerifiedEvent) -> rusqlite::Result<()> {
    let h = event.header();
    if h.event_type != KEY_TRANSITION_EVENT_TYPE {
        return Ok(());
    }
    let Some(transition) = event.payload().and_then(|p| KeyTransition::decode(p).ok()) else {
        return Ok(());
    };
    let old_cert: Vec<u8> = tx.query_row(
        "SELECT genesis_cert FROM feeds WHERE feed = ?1",
        [&h.author],
        |r| r.get(0),
    )?;
    tx.prepare_cached(
        "INSERT OR IGNORE INTO key_transitions (feed, seq, old_cert, new_cert, checkpoint)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        h.author,
        h.seq as i64,
        old_cert,
        transition.new_cert,
        transition.final_checkpoint
    ])?;
    tx.prepare_cached("UPDATE feeds SET genesis_cert = ?2 WHERE feed = ?1")?
        .execute(params![h.author, transition.new_cert])?;
    Ok(())
}

/// The old key's checkpoint `t` carries, as a stored checkpoint (for a
/// seal: its author's signature is all a seal sends).
pub fn checkpoint_before(t: &TransitionPoint) -> Result<super::StoredCheckpoint, LogError> {
    use crate::core::note::{Checkpoint, Note};
    let corrupt = |why: String| {
        LogError::Corrupt(format!(
            "the checkpoint in key transition {}/{}: {why}",
            t.feed, t.seq
        ))
    };
    let note = String::from_utf8(t.checkpoint.clone()).map_err(|_| corrupt("not UTF-8".into()))?;
    let parsed = Note::parse(note.as_bytes()).map_err(|e| corrupt(e.to_string()))?;
    let body = Checkpoint::parse_body(parsed.text()).map_err(|e| corrupt(e.to_string()))?;
    Ok(super::StoredCheckpoint {
        feed: t.feed.clone(),
        size: body.size(),
        root: *body.root(),
        note,
        cosigned_size: 0,
    })
}

/// Every transition held, by feed, in order.
pub(crate) fn read_all(conn: &Connection) -> Result<Vec<TransitionPoint>, LogError> {
    read_where(conn, "", [])
}

/// The transitions of `feed`, in order.
pub fn read_feed(conn: &Connection, feed: &str) -> Result<Vec<TransitionPoint>, LogError> {
    read_where(conn, "WHERE feed = ?1", [feed])
}

fn read_where<P: rusqlite::Params>(
    conn: &Connection,
    filter: &str,
    params: P,
) -> Result<Vec<TransitionPoint>, LogError> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT feed, seq, old_cert, new_cert, checkpoint FROM key_transitions {filter} ORDER BY feed, seq"
    ))?;
    let rows = statement.query_map(params, |r| {
        Ok(TransitionPoint {
            feed: r.get(0)?,
            seq: r.get::<_, i64>(1)? as u64,
            old_cert: r.get(2)?,
            new_cert: r.get(3)?,
            checkpoint: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How many transitions the store holds (the cache reloads when it grows).
pub(crate) fn count(conn: &Connection) -> Result<u64, LogError> {
    Ok(
        conn.query_row("SELECT count(*) FROM key_transitions", [], |r| {
            r.get::<_, i64>(0)
        })? as u64,
    )
}

/// Each feed's transitions, in order.
type ByFeed = BTreeMap<String, Vec<Arc<TransitionPoint>>>;

/// The transitions of every feed, in memory, for replication's hot path:
/// how many the store held when read, and them by feed.
#[derive(Debug, Default)]
pub struct TransitionCache {
    by_feed: Mutex<(u64, ByFeed)>,
}

impl TransitionCache {
    pub(crate) fn load(conn: &Connection) -> Result<TransitionCache, LogError> {
        let cache = TransitionCache::default();
        cache.set(count(conn)?, read_all(conn)?);
        Ok(cache)
    }

    /// Whether the store holds more transitions than the cache (read after
    /// a commit: one count of a small table).
    pub(crate) fn is_behind(&self, held: u64) -> bool {
        self.by_feed.lock().map(|c| c.0 < held).unwrap_or(true)
    }

    pub(crate) fn set(&self, held: u64, all: Vec<TransitionPoint>) {
        let mut by_feed = ByFeed::new();
        for t in all {
            by_feed.entry(t.feed.clone()).or_default().push(Arc::new(t));
        }
        if let Ok(mut cache) = self.by_feed.lock() {
            *cache = (held, by_feed);
        }
    }

    /// `feed`'s transitions, in order (usually none).
    pub fn of(&self, feed: &str) -> Vec<Arc<TransitionPoint>> {
        self.by_feed
            .lock()
            .ok()
            .and_then(|c| c.1.get(feed).cloned())
            .unwrap_or_default()
    }
}
