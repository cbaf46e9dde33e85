//! Health of a node's background work: what is failing now, and whether it
//! can get better by itself.
//!
//! Background tasks (subscription runners, the saga engine, recovery of the
//! own feed) report here instead of only logging, so `herald status` shows
//! a node that is not doing its work, and the node can stop (non-zero exit)
//! when a task meets a fault it cannot recover from. A transient fault (a
//! busy or full disk, a lock held by another process) is retried by its
//! task and cleared when the task succeeds again; a permanent one (a
//! damaged store) is fatal.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Name of the recovery of the node's own feed in the node's health.
pub const RECOVERY_TASK: &str = "own-feed recovery";
/// Name of the store's writer (its commits and their fsyncs).
pub const WRITER_TASK: &str = "store writer";

use serde::{Deserialize, Serialize};

use crate::clock;

/// One problem a background task reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Problem {
    /// The task, e.g. `subscription saga.participant` or `own-feed recovery`.
    pub task: String,
    /// What fails and why (the last error seen).
    pub reason: String,
    /// `false`: the task retries (with backoff) and clears the problem when it
    /// succeeds; `true`: it stopped and the node stops with it.
    pub permanent: bool,
    /// When the problem was first reported (microseconds since epoch).
    pub since_us: u64,
}

/// The problems of a node's background tasks, shared by them all.
#[derive(Debug)]
pub struct Health {
    problems: Mutex<BTreeMap<String, Problem>>,
    /// Set (once) to the first permanent fault; the node stops on it.
    fatal: tokio::sync::watch::Sender<Option<String>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            problems: Mutex::new(BTreeMap::new()),
            fatal: tokio::sync::watch::Sender::new(None),
        }
    }
}

impl Health {
    /// `task` failed but retries: shown until [`Health::cleared`].
    pub fn transient(&self, task: &str, reason: &str) {
        self.record(task, reason, false);
    }

    /// `task` works again.
    pub fn cleared(&self, task: &str) {
        let Ok(mut problems) = self.problems.lock() else {
            return;
        };
        if let Some(p) = problems.get(task)
            && !p.permanent
        {
            tracing::info!(task, "background task recovered");
            problems.remove(task);
        }
    }

    /// `task` stopped on a fault it cannot recover from: the node is
    /// unhealthy and should stop (see [`Health::fatal`]).
    pub fn permanent(&self, task: &str, reason: &str) {
        tracing::error!(
            task,
            reason,
            "background task stopped; the node cannot work without it"
        );
        self.record(task, reason, true);
        self.fatal.send_if_modified(|fatal| {
            if fatal.is_some() {
                return false;
            }
            *fatal = Some(format!("{task}: {reason}"));
            true
        });
    }

    fn record(&self, task: &str, reason: &str, permanent: bool) {
        let Ok(mut problems) = self.problems.lock() else {
            return;
        };
        let entry = problems.entry(task.to_string()).or_insert_with(|| Problem {
            task: task.to_string(),
            reason: String::new(),
            permanent,
            since_us: clock::now_us(),
        });
        entry.reason = reason.to_string();
        entry.permanent |= permanent;
    }

    /// The current problems, by task name.
    pub fn problems(&self) -> Vec<Problem> {
        self.problems
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether no task reports a problem.
    pub fn is_healthy(&self) -> bool {
        self.problems.lock().map(|p| p.is_empty()).unwrap_or(false)
    }

    /// Changes to the first permanent fault (`None` while there is none).
    pub fn fatal(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_problems_clear_and_permanent_ones_stay_and_are_fatal() {
        let health = Health::default();
        assert!(health.is_healthy());
        health.transient("a", "disk full");
        health.transient("a", "still full");
        assert_eq!(health.problems()[0].reason, "still full");
        health.cleared("a");
        assert!(health.is_healthy());
        let fatal = health.fatal();
        health.permanent("b", "damaged");
        health.cleared("b");
        assert!(!health.is_healthy());
        assert_eq!(fatal.borrow().as_deref(), Some("b: damaged"));
        health.permanent("c", "later");
        assert_eq!(
            fatal.borrow().as_deref(),
            Some("b: damaged"),
            "the first one stays"
        );
    }
}
