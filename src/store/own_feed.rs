//! The latest committed events of this node's own feed, in memory.
//!
//! The outbox sends every event a node proclaims to every peer, moments
//! after the commit, so without this each peer connection read the same
//! envelopes back from SQLite through the blocking pool. The commit stage
//! appends the exact bytes it has just committed; replication reads them
//! from here while they are recent and from the store otherwise. Events are
//! immutable once committed, so the two can never disagree.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Envelope bytes kept at most; older events are read from the store.
pub const OWN_FEED_CACHE_BYTES_MAX: usize = 8 * 1024 * 1024;

#[derive(Debug, Default)]
struct Inner {
    /// Sequence number of `envelopes[0]`.
    first_seq: u64,
    envelopes: VecDeque<Vec<u8>>,
    bytes: usize,
}

/// A window of the own feed's latest committed envelopes, contiguous by
/// sequence number.
#[derive(Debug, Default)]
pub(crate) struct OwnFeedCache {
    inner: Mutex<Inner>,
}

impl OwnFeedCache {
    /// Adds committed envelopes with sequence numbers `first_seq`,
    /// `first_seq + 1`, ... A run that does not follow the window (the first
    /// commit after the log opened, or one after events reached the store
    /// another way) starts a new window.
    pub(crate) fn append<'a>(&self, first_seq: u64, envelopes: impl Iterator<Item = &'a [u8]>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.first_seq + inner.envelopes.len() as u64 != first_seq {
            *inner = Inner {
                first_seq,
                ..Inner::default()
            };
        }
        for envelope in envelopes {
            inner.bytes += envelope.len();
            inner.envelopes.push_back(envelope.to_vec());
        }
        while inner.bytes > OWN_FEED_CACHE_BYTES_MAX && inner.envelopes.len() > 1 {
            if let Some(old) = inner.envelopes.pop_front() {
                inner.bytes -= old.len();
                inner.first_seq += 1;
            }
        }
    }

    /// Envelopes from `from` to `to` (inclusive) up to about `bytes_max`
    /// bytes (at least one), if the window holds `from`; `None` otherwise.
    pub(crate) fn read(&self, from: u64, to: u64, bytes_max: usize) -> Option<Vec<Vec<u8>>> {
        let inner = self.inner.lock().ok()?;
        let start = usize::try_from(from.checked_sub(inner.first_seq)?).ok()?;
        if start >= inner.envelopes.len() || to < from {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        let wanted = usize::try_from(to - from)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        for envelope in inner.envelopes.iter().skip(start).take(wanted) {
            bytes += envelope.len();
            out.push(envelope.clone());
            if bytes >= bytes_max {
                break;
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(seq: u64, len: usize) -> Vec<u8> {
        let mut e = vec![0u8; len];
        e[..8].copy_from_slice(&seq.to_le_bytes());
        e
    }

    fn seqs(read: Option<Vec<Vec<u8>>>) -> Option<Vec<u64>> {
        read.map(|r| {
            r.iter()
                .map(|e| u64::from_le_bytes(e[..8].try_into().unwrap()))
                .collect()
        })
    }

    fn append(cache: &OwnFeedCache, seqs: std::ops::RangeInclusive<u64>, len: usize) {
        let first = *seqs.start();
        let envelopes: Vec<Vec<u8>> = seqs.map(|s| envelope(s, len)).collect();
        cache.append(first, envelopes.iter().map(|e| e.as_slice()));
    }

    #[test]
    fn reads_what_it_holds_and_nothing_else() {
        let cache = OwnFeedCache::default();
        assert_eq!(seqs(cache.read(0, 5, usize::MAX)), None);
        append(&cache, 1..=4, 100);
        append(&cache, 5..=6, 100);
        assert_eq!(
            seqs(cache.read(1, 6, usize::MAX)),
            Some(vec![1, 2, 3, 4, 5, 6])
        );
        assert_eq!(seqs(cache.read(3, 4, usize::MAX)), Some(vec![3, 4]));
        // Beyond the window's end: only what it holds.
        assert_eq!(seqs(cache.read(5, 99, usize::MAX)), Some(vec![5, 6]));
        // Before its start or after its end: ask the store.
        assert_eq!(seqs(cache.read(0, 6, usize::MAX)), None);
        assert_eq!(seqs(cache.read(7, 9, usize::MAX)), None);
        assert_eq!(seqs(cache.read(4, 3, usize::MAX)), None);
        // The byte bound stops a read, but never before its first event.
        assert_eq!(seqs(cache.read(1, 6, 250)), Some(vec![1, 2, 3]));
        assert_eq!(seqs(cache.read(1, 6, 1)), Some(vec![1]));
    }

    #[test]
    fn a_run_that_does_not_follow_starts_a_new_window() {
        let cache = OwnFeedCache::default();
        // A reopened log: the feed resumes at 10, not at the empty window's 0.
        append(&cache, 10..=12, 100);
        assert_eq!(seqs(cache.read(10, 12, usize::MAX)), Some(vec![10, 11, 12]));
        // A run that leaves a gap (or overlaps) replaces the window.
        append(&cache, 20..=21, 100);
        assert_eq!(seqs(cache.read(10, 21, usize::MAX)), None);
        assert_eq!(seqs(cache.read(20, 21, usize::MAX)), Some(vec![20, 21]));
        append(&cache, 21..=22, 100);
        assert_eq!(seqs(cache.read(20, 22, usize::MAX)), None);
        assert_eq!(seqs(cache.read(21, 22, usize::MAX)), Some(vec![21, 22]));
    }

    #[test]
    fn keeps_at_most_its_byte_budget() {
        let cache = OwnFeedCache::default();
        let len = 64 * 1024;
        let n = (OWN_FEED_CACHE_BYTES_MAX / len) as u64 + 10;
        append(&cache, 0..=n - 1, len);
        let inner = cache.inner.lock().unwrap();
        assert!(inner.bytes <= OWN_FEED_CACHE_BYTES_MAX);
        assert_eq!(inner.first_seq, 10);
        drop(inner);
        assert_eq!(seqs(cache.read(9, 10, usize::MAX)), None);
        assert_eq!(
            seqs(cache.read(n - 1, n - 1, usize::MAX)),
            Some(vec![n - 1])
        );
    }
}
