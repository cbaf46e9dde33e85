//! Shared test fixtures: provisioned identities in temporary directories.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use herald::config::NodeConfig;
use herald::store::Log;

pub mod attack;
pub mod cli;
pub mod net;
pub mod publishing;

/// A provisioned cluster directory (`herald init` layout).
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<String>,
}

impl Cluster {
    pub fn new(nodes: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let names: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
        herald::config::init_cluster(dir.path(), &names, 17400, 365, false).expect("init cluster");
        Cluster { dir, nodes: names }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self, node: &str) -> PathBuf {
        self.path().join(format!("{node}.toml"))
    }

    pub fn config(&self, node: &str) -> NodeConfig {
        NodeConfig::load(&self.config_path(node)).expect("load config")
    }

    pub fn open(&self, node: &str) -> Log {
        Log::open(&self.config(node)).expect("open log")
    }

    /// Opens `node`'s log writing format 1 (a signature per event), for
    /// tests of what format-1 events prove on their own.
    pub fn open_signed(&self, node: &str) -> Log {
        let mut config = self.config(node);
        config.event_format = herald::core::limits::FORMAT_VERSION_SIGNED;
        Log::open(&config).expect("open log")
    }

    /// Makes `node`'s config file write format 1 (for nodes started from it).
    pub fn write_signed(&self, node: &str) {
        let mut config = self.config(node);
        config.event_format = herald::core::limits::FORMAT_VERSION_SIGNED;
        std::fs::write(self.config_path(node), config.to_toml()).expect("save config");
    }

    pub fn ca(&self) -> PathBuf {
        self.path().join("keys/ca.crt")
    }

    pub fn keys(&self) -> PathBuf {
        self.path().join("keys")
    }
}

/// The path of the herald binary built for these tests.
pub fn herald_bin() -> &'static str {
    env!("CARGO_BIN_EXE_herald")
}

/// Starts `bin node --config config` (logging at info), its stderr appended
/// to `log`, as an operator runs it.
pub fn spawn_node(bin: &Path, config: &Path, log: &Path) -> std::process::Child {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("node log file");
    std::process::Command::new(bin)
        .arg("node")
        .arg("--config")
        .arg(config)
        .env("HERALD_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn herald node")
}

/// Whether `consumer`'s durable cursor in the store at `data_dir` has reached
/// the last event the store holds (read through a fresh read-only
/// connection, as an outside tool would).
pub fn consumer_caught_up(data_dir: &Path, consumer: &str) -> bool {
    let conn = herald::store::open_read_only(data_dir).unwrap();
    let last = herald::store::last_arrival(&conn).unwrap();
    let cursor: i64 = conn
        .query_row(
            "SELECT last_arrival FROM consumer_cursors WHERE consumer = ?1",
            [consumer],
            |r| r.get(0),
        )
        .unwrap();
    cursor as u64 >= last
}

/// Polls `probe` every 50 ms until it answers `Ok`, or fails the test after
/// `within`, naming `what` and the last answer.
pub async fn wait_async<T, F, Fut>(what: &str, within: std::time::Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) if std::time::Instant::now() >= deadline => {
                panic!("timed out after {within:?} waiting for {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

/// Every event `log` holds of `feed`, and the seals that authenticate them
/// (format-2 events are authentic only through one): one per run between
/// key transitions, as a peer sends them (docs/PROTOCOL.md, *Seals*).
pub fn sealed_feed(log: &Log, feed: &str) -> (Vec<Vec<u8>>, Vec<herald::core::wire::Seal>) {
    let events: Vec<Vec<u8>> = log
        .read(feed, 0..=u64::MAX)
        .expect("read feed")
        .into_iter()
        .map(|e| e.envelope)
        .collect();
    let transitions = log.key_transitions(feed);
    let ends = transitions
        .iter()
        .map(|t| t.seq)
        .chain([events.len() as u64]);
    let seals = ends
        .filter_map(|end| log.seal_for(feed, end).expect("seal"))
        .collect();
    (events, seals)
}

/// Hands every event `from` holds of `feed` to `to`, as a peer would:
/// sealed by `from`'s latest checkpoint of the feed.
pub fn hand_over(from: &Log, to: &Log, feed: &str) -> herald::store::IngestReport {
    let (events, seals) = sealed_feed(from, feed);
    to.ingest_sealed(events, seals, herald::store::IngestPolicy::default())
        .expect("ingest")
}
