//! A cluster of running in-process nodes that keep publishing while a test
//! changes keys or certificates under them, and the waits such tests need.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald::node::Node;
use tokio::sync::RwLock;

use super::net::Net;

/// Longest a node may take to hold what another published.
pub const HOLD_WAIT: Duration = Duration::from_secs(60);

/// The running nodes, the last sequence number each one's own feed reached
/// by its receipts, and every publishing error.
pub struct Publishing {
    pub nodes: RwLock<BTreeMap<String, Node>>,
    last: std::sync::Mutex<BTreeMap<String, u64>>,
    pub errors: std::sync::Mutex<Vec<String>>,
}

impl Publishing {
    /// Starts `names` from their configs in `net`.
    pub async fn start(net: &Net, names: &[&str]) -> Arc<Publishing> {
        let mut nodes = BTreeMap::new();
        for name in names {
            let node = Node::start(&net.config(name))
                .await
                .unwrap_or_else(|e| panic!("start {name}: {e}"));
            nodes.insert(name.to_string(), node);
        }
        Arc::new(Publishing {
            nodes: RwLock::new(nodes),
            last: Default::default(),
            errors: Default::default(),
        })
    }

    /// Publishes one event on every running node, then sleeps `pause`,
    /// until `stop`.
    pub async fn publish_until(self: Arc<Self>, stop: Arc<AtomicBool>, pause: Duration) {
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            for (name, node) in self.nodes.read().await.iter() {
                match node
                    .proclaim("note", format!("{name} {i}").as_bytes(), vec![])
                    .await
                {
                    Ok(receipt) => self.published(name, receipt.seq),
                    Err(e) => self.errors.lock().unwrap().push(format!("{name}: {e}")),
                }
            }
            i += 1;
            tokio::time::sleep(pause).await;
        }
    }

    /// Records that `node`'s feed reached `seq`.
    pub fn published(&self, node: &str, seq: u64) {
        self.last.lock().unwrap().insert(node.to_string(), seq);
    }

    /// The last sequence number `node`'s receipts reached (0: none yet).
    pub fn last(&self, node: &str) -> u64 {
        self.last.lock().unwrap().get(node).copied().unwrap_or(0)
    }

    /// Waits until `at` holds `feed` up to `seq`.
    pub async fn wait_for(&self, at: &str, feed: &str, seq: u64) {
        super::wait_async(
            &format!("{at} to hold {feed} up to {seq}"),
            HOLD_WAIT,
            || async {
                let nodes = self.nodes.read().await;
                let node = nodes.get(at).ok_or("not running")?;
                let head = node
                    .log()
                    .heads()
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .find(|h| h.feed == feed)
                    .map(|h| h.seq);
                match head {
                    Some(h) if h >= seq => Ok(()),
                    other => Err(format!("head {other:?}")),
                }
            },
        )
        .await
    }

    /// Stops every node.
    pub async fn shutdown(&self) {
        let nodes = std::mem::take(&mut *self.nodes.write().await);
        for (_, node) in nodes {
            node.shutdown().await;
        }
    }
}
