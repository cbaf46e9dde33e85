//! Reads for replication (envelope ranges) and the outbox's per-peer
//! delivery cursors.

use rusqlite::{Connection, params};
use serde::Serialize;

use super::{Log, LogError};
use crate::clock;

/// Bytes of envelopes one [`Log::read_envelopes`] call returns at most (it
/// always returns at least one event if any is in range).
pub const READ_ENVELOPES_BYTES_MAX: usize = 4 * 1024 * 1024;

/// A peer's acknowledged position in one feed, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerCursor {
    pub peer: String,
    pub feed: String,
    /// Highest sequence number the peer acknowledged holding.
    pub acked_seq: u64,
    /// When that acknowledgement arrived (microseconds since the epoch).
    pub acked_at_us: u64,
}

impl Log {
    /// Envelopes of `feed` from `from` to `to` (inclusive), in order, up to
    /// [`READ_ENVELOPES_BYTES_MAX`] bytes.
    pub fn read_envelopes(&self, feed: &str, from: u64, to: u64) -> Result<Vec<Vec<u8>>, LogError> {
        if let Some(recent) = self.recent_envelopes(feed, from, to) {
            return Ok(recent);
        }
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(&super::rows::select_events(
            "WHERE f.name = ?1 AND e.seq BETWEEN ?2 AND ?3 ORDER BY e.seq",
        ))?;
        let mut rows = stmt.query(params![
            feed,
            from.min(i64::MAX as u64) as i64,
            to.min(i64::MAX as u64) as i64
        ])?;
        let mut rebuilder = super::rows::Rebuilder::new(&conn);
        let mut out = Vec::new();
        let mut bytes = 0;
        while let Some(row) = rows.next()? {
            let envelope = rebuilder.event(super::rows::event_row(row)?)?.envelope;
            bytes += envelope.len();
            out.push(envelope);
            if bytes >= READ_ENVELOPES_BYTES_MAX {
                break;
            }
        }
        Ok(out)
    }

    /// What [`read_envelopes`](Self::read_envelopes) returns, if this node
    /// proclaimed those events recently enough to hold them in memory
    /// (`None`: read the store). Never blocks on the store.
    pub fn recent_envelopes(&self, feed: &str, from: u64, to: u64) -> Option<Vec<Vec<u8>>> {
        if feed != self.service() {
            return None;
        }
        self.own_feed.read(from, to, READ_ENVELOPES_BYTES_MAX)
    }

    /// Persists a peer's acknowledged heads (cursors only move forward).
    pub fn record_peer_acks(&self, peer: &str, acked: &[(String, u64)]) -> Result<(), LogError> {
        let peer = peer.to_string();
        let acked = acked.to_vec();
        self.write_handle()?
            .write(Box::new(move |tx| record_acks(tx, &peer, &acked)))
    }

    /// Every persisted peer cursor.
    pub fn peer_cursors(&self) -> Result<Vec<PeerCursor>, LogError> {
        read_peer_cursors(&*self.reader()?)
    }
}

fn record_acks(
    tx: &rusqlite::Transaction<'_>,
    peer: &str,
    acked: &[(String, u64)],
) -> Result<(), LogError> {
    let now = clock::now_us() as i64;
    for (feed, seq) in acked {
        tx.execute(
                "INSERT INTO peer_cursors (peer, feed, acked_seq, acked_at_us) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (peer, feed) DO UPDATE SET acked_seq = excluded.acked_seq, acked_at_us = excluded.acked_at_us
                 WHERE excluded.acked_seq > peer_cursors.acked_seq",
                params![peer, feed, *seq as i64, now],
            )?;
    }
    Ok(())
}

/// Every persisted peer cursor, from any connection (read-only included).
pub fn read_peer_cursors(conn: &Connection) -> Result<Vec<PeerCursor>, LogError> {
    let mut stmt = conn.prepare_cached(
        "SELECT peer, feed, acked_seq, acked_at_us FROM peer_cursors ORDER BY peer, feed",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(PeerCursor {
            peer: r.get(0)?,
            feed: r.get(1)?,
            acked_seq: r.get::<_, i64>(2)? as u64,
            acked_at_us: r.get::<_, i64>(3)? as u64,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
