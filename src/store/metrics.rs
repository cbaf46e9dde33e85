//! What the store counts for `GET /metrics` (docs/API.md, "Metrics"):
//! events proclaimed, verification failures by check, and how long a
//! commit takes until it is durable. Plain atomics, touched once per
//! commit or ingest and never per event, so the writer's threads never
//! wait for them; the node reads them when it is scraped.
//!
//! Also the store reads a scrape makes ([`Log::metrics_snapshot`]): sagas
//! by status, durable consumer cursors, the delivery cursors of peers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{ConsumerCursor, Log, LogError, PeerCursor};
use crate::core::ingest::IngestReport;
use crate::core::verify::Check;

/// Upper bounds, in seconds, of the commit latency histogram's buckets
/// (`+Inf` follows). Doubling from 0.5 ms: a commit on a fast disk lands
/// in the first few, a stalled fsync in the last.
pub const COMMIT_SECONDS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048,
    4.096,
];

/// Every check an event can fail, in the order `/metrics` lists them.
pub const CHECKS: [Check; 15] = [
    Check::Decode,
    Check::Certificate,
    Check::CertificateValidity,
    Check::Author,
    Check::Signature,
    Check::Sequence,
    Check::Duplicate,
    Check::PreviousHash,
    Check::Timestamp,
    Check::PayloadHash,
    Check::Fork,
    Check::Decrypt,
    Check::Truncated,
    Check::Revoked,
    Check::Transition,
];

/// The `check` label of a checkpoint (or equivocation evidence) a peer
/// sent that failed verification: the author's checkpoint signature, its
/// cluster, or its consistency with the events it covers.
pub const CHECKPOINT_CHECK: &str = "checkpoint";

/// Consumer cursors one scrape reports at most (by name); a store with
/// more shows the first ones.
pub const METRICS_CONSUMERS_MAX: usize = 1_000;

/// Where `check` is counted. Exhaustive: a new check fails to compile
/// until it is given a place (and a label).
fn check_index(check: Check) -> usize {
    match check {
        Check::Decode => 0,
        Check::Certificate => 1,
        Check::CertificateValidity => 2,
        Check::Author => 3,
        Check::Signature => 4,
        Check::Sequence => 5,
        Check::Duplicate => 6,
        Check::PreviousHash => 7,
        Check::Timestamp => 8,
        Check::PayloadHash => 9,
        Check::Fork => 10,
        Check::Decrypt => 11,
        Check::Truncated => 12,
        Check::Revoked => 13,
        Check::Transition => 14,
    }
}

/// Failure counters: one per check, then [`CHECKPOINT_CHECK`].
const FAILURE_SLOTS: usize = CHECKS.len() + 1;

/// The store's counters (one set per open [`Log`], so several nodes in one
/// process each count their own).
#[derive(Debug, Default)]
pub struct StoreMetrics {
    /// Events of this node's own feed committed durably.
    proclaimed: AtomicU64,
    /// Verification failures, by [`check_index`] (the last slot:
    /// checkpoints).
    failures: [AtomicU64; FAILURE_SLOTS],
    commit: CommitHistogram,
}

impl StoreMetrics {
    /// `n` events of this node's own feed are durable.
    pub(crate) fn proclaimed(&self, n: usize) {
        self.proclaimed.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts what an ingest refused: the event it stopped at (a duplicate
    /// is no failure), events of a feed whose author signed two histories
    /// (relayed by a peer that holds the other branch), and forks found.
    pub(crate) fn ingested(&self, report: &IngestReport) {
        if let Some(rejection) = &report.rejected
            && rejection.check != Check::Duplicate
        {
            self.rejected(rejection.check);
        }
        for (_, rejection) in report.conflicts.iter().chain(&report.revoked) {
            self.rejected(rejection.check);
        }
        if report.forks > 0 {
            self.failures[check_index(Check::Fork)]
                .fetch_add(report.forks as u64, Ordering::Relaxed);
        }
    }

    /// An event (or fork evidence) failed `check`.
    pub(crate) fn rejected(&self, check: Check) {
        self.failures[check_index(check)].fetch_add(1, Ordering::Relaxed);
    }

    /// A checkpoint or equivocation evidence failed verification.
    pub(crate) fn checkpoint_rejected(&self) {
        self.failures[FAILURE_SLOTS - 1].fetch_add(1, Ordering::Relaxed);
    }

    /// A commit that stored events took `took` from the start of its
    /// transaction until the write-ahead log's fsync covered it.
    pub(crate) fn commit_took(&self, took: Duration) {
        self.commit.observe(took);
    }

    /// Events of this node's own feed committed durably since it started.
    pub fn proclaimed_total(&self) -> u64 {
        self.proclaimed.load(Ordering::Relaxed)
    }

    /// Verification failures since the node started, by check label
    /// (every check, zero or not).
    pub fn failures(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> = CHECKS
            .iter()
            .map(|c| {
                (
                    c.name(),
                    self.failures[check_index(*c)].load(Ordering::Relaxed),
                )
            })
            .collect();
        out.push((
            CHECKPOINT_CHECK,
            self.failures[FAILURE_SLOTS - 1].load(Ordering::Relaxed),
        ));
        out
    }

    /// The commit latency histogram as it stands.
    pub fn commit_latency(&self) -> HistogramSnapshot {
        self.commit.snapshot()
    }
}

/// A latency histogram over [`COMMIT_SECONDS_BUCKETS`] made of atomics:
/// observing is three relaxed additions, no lock.
#[derive(Debug, Default)]
struct CommitHistogram {
    /// Observations per bucket (not cumulative); the last one is above
    /// every bound (`+Inf` only).
    buckets: [AtomicU64; COMMIT_SECONDS_BUCKETS.len() + 1],
    /// Sum of all observations, microseconds.
    sum_us: AtomicU64,
}

impl CommitHistogram {
    fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let slot = COMMIT_SECONDS_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(COMMIT_SECONDS_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// The buckets and, as the count, their total: a scrape never shows a
    /// bucket above the count, even while commits are observed.
    fn snapshot(&self) -> HistogramSnapshot {
        let mut count = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (i, bucket) in self.buckets.iter().enumerate() {
            let n = bucket.load(Ordering::Relaxed);
            count += n;
            let bound = COMMIT_SECONDS_BUCKETS
                .get(i)
                .copied()
                .unwrap_or(f64::INFINITY);
            buckets.push((bound, n));
        }
        HistogramSnapshot {
            sum_seconds: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            count,
            buckets,
        }
    }
}

/// A histogram read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub sum_seconds: f64,
    pub count: u64,
    /// (upper bound in seconds, observations above the previous bound and
    /// at or below this one), ending with `+Inf`; not cumulative (the
    /// encoder sums them up, as the exposition format wants).
    pub buckets: Vec<(f64, u64)>,
}

/// What one scrape reads from the store.
#[derive(Debug, Clone, Default)]
pub struct StoreSnapshot {
    /// Sagas this node orchestrates, per stored status name.
    pub sagas: Vec<(String, u64)>,
    /// Durable consumer cursors (API consumers are named `api.NAME`), at
    /// most [`METRICS_CONSUMERS_MAX`].
    pub consumers: Vec<ConsumerCursor>,
    /// The last arrival position the store holds.
    pub last_arrival: u64,
    /// Peers' acknowledged positions as last persisted.
    pub peer_cursors: Vec<PeerCursor>,
}

impl Log {
    /// The store's counters.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// Reads what `/metrics` reports of the store's tables. Each read is an
    /// index scan of a small table (sagas by status, cursors).
    pub fn metrics_snapshot(&self) -> Result<StoreSnapshot, LogError> {
        let consumers = self.consumer_cursors("", METRICS_CONSUMERS_MAX)?;
        let peer_cursors = self.peer_cursors()?;
        let conn = self.reader()?;
        let last_arrival = super::subscribe::last_arrival(&conn)?;
        let mut stmt = conn.prepare_cached("SELECT status, COUNT(*) FROM sagas GROUP BY status")?;
        let sagas = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StoreSnapshot {
            sagas,
            consumers,
            last_arrival,
            peer_cursors,
        })
    }

    /// The author's timestamp (µs since the epoch) of each event
    /// `(feed, seq)` the store holds (`None` where it holds none).
    pub fn timestamps_at(&self, keys: &[(String, u64)]) -> Result<Vec<Option<u64>>, LogError> {
        let conn = self.reader()?;
        keys.iter()
            .map(|(feed, seq)| {
                Ok(super::rows::event_at(&conn, feed, *seq)?.map(|e| e.header.timestamp_us))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_histogram_buckets_count_every_observation_once() {
        let h = CommitHistogram::default();
        h.observe(Duration::from_micros(300)); // first bucket
        h.observe(Duration::from_micros(500)); // on the bound: still first
        h.observe(Duration::from_millis(3)); // <= 0.004
        h.observe(Duration::from_secs(10)); // only +Inf
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets.len(), COMMIT_SECONDS_BUCKETS.len() + 1);
        assert_eq!(s.buckets[0], (0.0005, 2));
        assert_eq!(s.buckets[2], (0.002, 0));
        assert_eq!(s.buckets[3], (0.004, 1));
        assert_eq!(s.buckets[COMMIT_SECONDS_BUCKETS.len() - 1].1, 0);
        assert_eq!(s.buckets.last(), Some(&(f64::INFINITY, 1)));
        assert_eq!(s.buckets.iter().map(|(_, n)| n).sum::<u64>(), 4);
        assert!((s.sum_seconds - 10.0038).abs() < 1e-9, "{}", s.sum_seconds);
    }

    #[test]
    fn failures_name_every_check_once_and_skip_duplicates() {
        let m = StoreMetrics::default();
        let names: Vec<&str> = m.failures().iter().map(|(n, _)| *n).collect();
        let unique: std::collections::BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(names.len(), unique.len(), "{names:?}");
        assert_eq!(names.len(), FAILURE_SLOTS);
        let rejection = |check| crate::core::verify::Rejection {
            check,
            seq: Some(3),
            expected: "x".into(),
            found: "y".into(),
        };
        m.ingested(&IngestReport {
            rejected: Some(rejection(Check::Duplicate)),
            ..IngestReport::default()
        });
        m.ingested(&IngestReport {
            rejected: Some(rejection(Check::Signature)),
            conflicts: vec![("f".into(), rejection(Check::PreviousHash))],
            forks: 2,
            ..IngestReport::default()
        });
        m.checkpoint_rejected();
        let got: std::collections::BTreeMap<&str, u64> = m.failures().into_iter().collect();
        assert_eq!(got["duplicate"], 0);
        assert_eq!(got["signature"], 1);
        assert_eq!(got["previous-hash"], 1);
        assert_eq!(got["fork"], 2);
        assert_eq!(got[CHECKPOINT_CHECK], 1);
        assert_eq!(got.values().sum::<u64>(), 5);
    }
}
