//! Durability off the commit thread: the write-ahead log is fsynced by a
//! thread of its own while the commit stage runs the next transaction.
//!
//! The commit stage's connection writes the WAL with `synchronous=NORMAL`:
//! a commit appends its frames to the `-wal` file and returns without an
//! fsync. Whatever that commit owes the world (receipts, acknowledgements
//! to peers, the feed heads replication and subscriptions read) is handed
//! to [`WalSync::after_sync`] instead of being done at once. The sync
//! thread takes every action queued so far, calls `fdatasync` on the WAL
//! file once, and only then runs them, in commit order.
//!
//! Why that is as durable as `synchronous=FULL` for everything anyone was
//! told: the WAL is append-only between checkpoints, so an `fdatasync`
//! issued after a commit's frames were written makes that commit (and every
//! earlier one) survive a power loss; SQLite's recovery replays the WAL up
//! to its last valid commit frame. A checkpoint (the checkpointer's
//! connection, `synchronous=FULL`) syncs the WAL before it copies frames
//! into the database file and the file after. Only commits nobody was told
//! of yet can be lost, as with `FULL` when the power fails mid-commit. Until
//! its sync, a commit is visible to the store's own readers, but not to
//! replication (which reads the heads published after the sync) nor to any
//! caller.
//!
//! Meanwhile the commit stage runs the next transaction: the fsync overlaps
//! the next batch's inserts instead of stalling them, and one fsync covers
//! every commit that queued up while the previous one ran.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use super::LogError;

/// Commits whose actions may wait for the WAL's sync before the commit
/// stage blocks (back-pressure on the disk, and a bound on memory).
pub const WAL_SYNC_QUEUE_MAX: usize = 64;

/// What a commit owes once it is durable. The argument is `Err` with a
/// message when the fsync failed: the commit's durability is then unknown.
pub(crate) type AfterSync = Box<dyn FnOnce(Result<(), &str>) + Send>;

/// The thread that fsyncs the WAL and then runs what commits owe.
pub(crate) struct WalSync {
    actions: Option<SyncSender<AfterSync>>,
    thread: Option<JoinHandle<()>>,
}

impl WalSync {
    /// Starts the sync thread over the store's WAL file (`<db>-wal`, which
    /// exists while any connection has the store open in WAL mode).
    pub fn start(db_path: &Path, health: Arc<super::Health>) -> Result<WalSync, LogError> {
        let mut wal_path = db_path.as_os_str().to_owned();
        wal_path.push("-wal");
        let wal = File::open(&wal_path).map_err(|source| LogError::DataDir {
            path: wal_path.clone().into(),
            source,
        })?;
        let (actions, queued) = sync_channel::<AfterSync>(WAL_SYNC_QUEUE_MAX);
        let thread = std::thread::Builder::new()
            .name("herald-wal-sync".into())
            .spawn(move || run(&wal, &queued, &health))
            .map_err(|e| LogError::Corrupt(format!("cannot start the WAL sync thread: {e}")))?;
        Ok(WalSync {
            actions: Some(actions),
            thread: Some(thread),
        })
    }

    /// Runs `action` once everything committed so far is durable (or the
    /// sync failed). Blocks while [`WAL_SYNC_QUEUE_MAX`] commits wait.
    pub fn after_sync(&self, action: AfterSync) {
        let Some(actions) = &self.actions else {
            action(Err("the store is closing"));
            return;
        };
        if let Err(std::sync::mpsc::SendError(action)) = actions.send(action) {
            action(Err("the WAL sync thread stopped"));
        }
    }

    /// Syncs and runs everything queued, then stops the thread.
    pub fn finish(&mut self) {
        self.actions.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for WalSync {
    fn drop(&mut self) {
        self.finish();
    }
}

fn run(wal: &File, queued: &Receiver<AfterSync>, health: &super::Health) {
    while let Ok(first) = queued.recv() {
        // Everything queued by now was committed before this sync starts.
        let mut batch = vec![first];
        batch.extend(queued.try_iter().take(WAL_SYNC_QUEUE_MAX));
        let synced = wal
            .sync_data()
            .map_err(|e| format!("fsync of the write-ahead log failed: {e}"));
        if let Err(e) = &synced {
            // The commits' durability is unknown: stop rather than go on.
            health.permanent(super::health::WRITER_TASK, e);
        }
        for action in batch {
            action(synced.as_ref().map(|_| ()).map_err(String::as_str));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn actions_run_after_a_sync_in_commit_order_and_all_before_finish_returns() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("herald.db");
        std::fs::write(dir.path().join("herald.db-wal"), b"frames").unwrap();
        let mut sync = WalSync::start(&db, Arc::new(crate::store::Health::default())).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for i in 0..200 {
            let seen = Arc::clone(&seen);
            sync.after_sync(Box::new(move |synced| {
                assert!(synced.is_ok());
                seen.lock().unwrap().push(i);
            }));
        }
        sync.finish();
        assert_eq!(*seen.lock().unwrap(), (0..200).collect::<Vec<_>>());
        // After the thread stopped, an action is told, never dropped.
        let told = Arc::new(Mutex::new(None));
        let t = Arc::clone(&told);
        sync.after_sync(Box::new(move |synced| {
            *t.lock().unwrap() = Some(synced.map_err(str::to_string));
        }));
        assert!(matches!(*told.lock().unwrap(), Some(Err(_))));
    }

    #[test]
    fn a_store_without_its_wal_file_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let err = match WalSync::start(&dir.path().join("herald.db"), Default::default()) {
            Ok(_) => panic!("started without a WAL file"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("herald.db-wal"), "{err}");
    }
}
