//! The store's side of ingest: what the ingest rules
//! ([`crate::core::ingest`]) read of a transaction, and the SQL that
//! writes what they decided.

use rusqlite::Transaction;

use super::LogError;
use super::checkpoints::Trees;
use super::tree::FeedTree;
use super::writer::{
    event_at, insert_event_with, read_head, record_fork, set_head, stored_hash, upsert_head,
};
use crate::core::crypto::Hash;
use crate::core::ingest::{Decision, FeedState, Ingested, StoredHead};
use crate::core::merkle::Frontier;
use crate::core::verify::DecodedEvent;

/// The store as the ingest rules see it, inside one write transaction.
pub(super) struct TxFeeds<'a, 'c> {
    pub tx: &'a Transaction<'c>,
    /// The commit stage's cache of feed trees (`None`: load them uncached).
    pub trees: Option<&'a mut Trees>,
}

impl FeedState for TxFeeds<'_, '_> {
    type Error = LogError;

    fn stored_hash(&mut self, feed: &str, seq: u64) -> Result<Option<Hash>, LogError> {
        stored_hash(self.tx, feed, seq)
    }

    fn stored_event(&mut self, feed: &str, seq: u64) -> Result<DecodedEvent, LogError> {
        event_at(self.tx, feed, seq)
    }

    fn head(&mut self, feed: &str) -> Result<Option<StoredHead>, LogError> {
        Ok(read_head(self.tx, feed)?.map(|h| StoredHead {
            seq: h.seq,
            hash: h.hash,
            last_timestamp_us: h.last_timestamp_us,
            genesis_cert: h.genesis_cert,
        }))
    }

    fn fork_seq(&mut self, feed: &str) -> Result<Option<u64>, LogError> {
        Ok(super::forks::fork_seq(self.tx, feed)?)
    }

    fn frontier(&mut self, feed: &str, size: u64) -> Result<Frontier, LogError> {
        match self.trees.as_deref_mut() {
            Some(trees) => trees.get(self.tx, feed, size)?.merkle_frontier(),
            None => FeedTree::load(self.tx, feed, size)?.merkle_frontier(),
        }
    }
}

/// Writes what an ingest decided: the verified events and fork evidence in
/// batch order, then each touched feed's head and tree.
pub(super) fn write_ingested(
    tx: &Transaction<'_>,
    trees: &mut Trees,
    ingested: &Ingested,
) -> Result<(), LogError> {
    // One prepared insert for the whole batch (the statement cache hashes
    // the SQL text on every lookup).
    let mut rows = super::rows::RowInserter::new(tx)?;
    for decision in &ingested.decisions {
        match decision {
            Decision::Applied(event) => {
                insert_event_with(&mut rows, trees.names(), event)?;
                if event.header().seq == 0 {
                    // The feed's row (with its certificate) must exist from
                    // genesis on.
                    upsert_head(tx, event)?;
                }
            }
            Decision::Fork {
                conflicting,
                stored,
            } => record_fork(tx, conflicting, *stored, None)?,
            Decision::Duplicate
            | Decision::Conflict(_)
            | Decision::SealedConflict(_)
            | Decision::Rejected(_)
            | Decision::Skipped => {}
        }
    }
    for (feed, head) in &ingested.heads {
        set_head(tx, feed, head.seq, &head.hash, head.timestamp_us)?;
    }
    for (feed, leaves) in &ingested.leaves {
        trees.append(
            tx,
            feed,
            leaves.first_seq,
            leaves.event_hashes.iter().copied(),
        )?;
    }
    Ok(())
}
