//! Where a workload's CPU time went, by the role of the thread that spent
//! it, read from Linux's per-thread scheduler statistics.
//!
//! A fraction of the signing ceiling says how far herald is from it; this
//! says why. Each herald thread has a name that gives its role (the bench
//! names the signature pool's threads too), and
//! `/proc/self/task/<tid>/schedstat` gives each thread's time on a CPU in
//! nanoseconds. Two snapshots around a workload give the split. On systems
//! without `/proc` the split is empty and nothing else changes.

use std::collections::BTreeMap;

use serde::Serialize;

/// Name prefix of the bench's signature pool threads.
pub const POOL_THREAD_PREFIX: &str = "herald-pool-";

/// What a thread does, from its name (Linux keeps the first 15 bytes).
fn role(name: &str) -> &'static str {
    if name.starts_with(POOL_THREAD_PREFIX) {
        "signatures"
    } else if name.starts_with("herald-commit") {
        "commit"
    } else if name.starts_with("herald-wal-sync") {
        // The writer's WAL fsync thread (`store::durable`).
        "wal-sync"
    } else if name.starts_with("herald-checkpoi") {
        // SQLite's WAL checkpointer thread, not Merkle checkpoints (their
        // signing runs in the commit stage).
        "wal-checkpoint"
    } else if name.starts_with("herald-seal") {
        "seal"
    } else if name.starts_with("tokio-") {
        "network"
    } else {
        "other"
    }
}

/// Names the global signature pool's threads so their time can be told
/// apart. Does nothing if the pool already started (its time then counts
/// as "other").
pub fn name_pool_threads() {
    let _ = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("{POOL_THREAD_PREFIX}{i}"))
        .build_global();
}

/// CPU nanoseconds per live thread of this process, keyed by thread id.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    threads: BTreeMap<u64, (String, u64)>,
}

impl Snapshot {
    /// Reads every thread's name and time on a CPU.
    pub fn take() -> Snapshot {
        let mut threads = BTreeMap::new();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return Snapshot { threads };
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let ran_ns = std::fs::read_to_string(task.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok());
            if let Some(ran_ns) = ran_ns {
                threads.insert(tid, (name.trim().to_string(), ran_ns));
            }
        }
        Snapshot { threads }
    }

    /// The CPU time spent between `earlier` and this snapshot, by role.
    /// Threads that ended in between are missing, so take the later
    /// snapshot before the workload's threads stop.
    pub fn since(&self, earlier: &Snapshot) -> CpuSplit {
        let mut by_role: BTreeMap<&'static str, u64> = BTreeMap::new();
        for (tid, (name, ran_ns)) in &self.threads {
            let before = earlier.threads.get(tid).map_or(0, |(_, ns)| *ns);
            *by_role.entry(role(name)).or_default() += ran_ns.saturating_sub(before);
        }
        CpuSplit::from_nanos(by_role)
    }
}

/// A workload's CPU time by thread role, as fractions of the total.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuSplit {
    /// CPU seconds in all.
    pub cpu_s: f64,
    /// Role name to fraction of `cpu_s`: `signatures` (the pool that signs
    /// and verifies on all cores), `commit` (the writer's commit stage:
    /// SQLite inserts, commits and fsync; for received events also
    /// decoding, chain checks, and the batch verification of a run short
    /// enough for one verification batch, which runs on the calling thread),
    /// `wal-checkpoint` (moving the WAL into the database file; Merkle
    /// checkpoints are signed and checked in `commit`), `seal`
    /// (encryption, hashing, chaining), `network`
    /// (QUIC, TLS, the async runtime, and the store reads replication makes
    /// on the runtime's blocking pool), `other` (the bench itself).
    pub shares: BTreeMap<String, f64>,
}

impl CpuSplit {
    fn from_nanos(by_role: BTreeMap<&'static str, u64>) -> CpuSplit {
        let total: u64 = by_role.values().sum();
        let shares = by_role
            .into_iter()
            .filter(|(_, ns)| *ns > 0)
            .map(|(role, ns)| (role.to_string(), ns as f64 / total.max(1) as f64))
            .collect();
        CpuSplit {
            cpu_s: total as f64 / 1e9,
            shares,
        }
    }

    /// The CPU of two spans together: their seconds added, each role's
    /// share weighted by its span's seconds.
    pub fn plus(&self, other: &CpuSplit) -> CpuSplit {
        let cpu_s = self.cpu_s + other.cpu_s;
        let mut shares: BTreeMap<String, f64> = BTreeMap::new();
        for split in [self, other] {
            for (role, share) in &split.shares {
                *shares.entry(role.clone()).or_default() +=
                    share * split.cpu_s / cpu_s.max(f64::MIN_POSITIVE);
            }
        }
        CpuSplit { cpu_s, shares }
    }

    /// One line for people: `signatures 69%, commit 17%, ...`, largest first.
    pub fn describe(&self) -> String {
        let mut shares: Vec<(&String, &f64)> = self.shares.iter().collect();
        shares.sort_by(|a, b| b.1.total_cmp(a.1));
        shares
            .iter()
            .map(|(role, share)| format!("{role} {:.0}%", *share * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_come_from_thread_names() {
        assert_eq!(role("herald-pool-0"), "signatures");
        assert_eq!(role("herald-commit-b"), "commit");
        assert_eq!(role("herald-checkpoi"), "wal-checkpoint");
        assert_eq!(role("herald-wal-sync"), "wal-sync");
        assert_eq!(role("herald-seal-ben"), "seal");
        assert_eq!(role("tokio-runtime-w"), "network");
        assert_eq!(role("tokio-rt-worker"), "network");
        assert_eq!(role("herald"), "other");
    }

    #[test]
    fn the_split_counts_only_time_spent_in_between_and_sums_to_one() {
        let earlier = Snapshot {
            threads: BTreeMap::from([
                (1, ("herald-pool-0".into(), 1_000)),
                (2, ("herald-commit-a".into(), 500)),
            ]),
        };
        let later = Snapshot {
            threads: BTreeMap::from([
                (1, ("herald-pool-0".into(), 7_000)),
                (2, ("herald-commit-a".into(), 2_500)),
                // Started in between: all of its time counts.
                (3, ("herald-seal-a".into(), 2_000)),
            ]),
        };
        let split = later.since(&earlier);
        assert_eq!(split.cpu_s, 10_000.0 / 1e9);
        assert_eq!(split.shares["signatures"], 0.6);
        assert_eq!(split.shares["commit"], 0.2);
        assert_eq!(split.shares["seal"], 0.2);
        assert_eq!(split.describe(), "signatures 60%, commit 20%, seal 20%");
    }

    #[test]
    fn two_spans_add_their_seconds_and_weigh_their_shares() {
        let split = |ns: &[(&'static str, u64)]| CpuSplit::from_nanos(ns.iter().copied().collect());
        // 1 ms all commit, then 3 ms half commit, half seal.
        let both = split(&[("commit", 1_000_000)])
            .plus(&split(&[("commit", 1_500_000), ("seal", 1_500_000)]));
        assert!((both.cpu_s - 0.004).abs() < 1e-12, "{both:?}");
        assert!((both.shares["commit"] - 0.625).abs() < 1e-12, "{both:?}");
        assert!((both.shares["seal"] - 0.375).abs() < 1e-12, "{both:?}");
    }

    #[test]
    fn this_process_shows_up_in_a_real_snapshot() {
        let before = Snapshot::take();
        // Busy for several scheduler ticks, so the kernel's counter moves.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        let split = Snapshot::take().since(&before);
        if std::path::Path::new("/proc/self/task").exists() {
            assert!(split.cpu_s > 0.0, "{split:?}");
            let sum: f64 = split.shares.values().sum();
            assert!((sum - 1.0).abs() < 1e-9, "{split:?}");
        }
    }
}
