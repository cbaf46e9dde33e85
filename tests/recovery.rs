//! Recovery of a node's own feed (issue 11, findings 5 and 9), on real nodes
//! on 127.0.0.1 (QUIC, mutual TLS, SQLite):
//!
//! * a node started on an old copy of its store gets the tail of its feed
//!   back from a peer before it proclaims, and never reuses a sequence number;
//! * a peer that claims more of a node's feed than it delivers is named, and
//!   proclamations fail with the reason instead of hanging;
//! * a store with damaged pages is refused at start-up.
//!
//! Every wait polls a condition against a deadline.

mod common;

use std::path::Path;
use std::time::Duration;

use common::attack::Attack;
use common::net::Net;
use common::wait_async;
use herald::core::wire::{FeedPosition, PROTOCOL_VERSION, PeerMessage};
use herald::node::{Node, NodeError, RECOVERY_STALL_MS, RECOVERY_TASK};
use herald::store::{LogError, StoredEvent};

/// Longest a convergence wait may take before the test fails.
const CONVERGE: Duration = Duration::from_secs(30);

/// The head `node` holds of `feed`.
async fn head_of(node: &Node, feed: &str) -> Option<(u64, [u8; 32])> {
    node.status()
        .await
        .feeds
        .into_iter()
        .find(|f| f.feed == feed)
        .map(|f| (f.seq, f.hash))
}

async fn wait_head(node: &Node, feed: &str, head: (u64, [u8; 32])) {
    wait_async(
        &format!("{} to hold {feed} at {}", node.service(), head.0),
        CONVERGE,
        || async {
            match head_of(node, feed).await {
                Some(h) if h == head => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

async fn proclaim_n(node: &Node, n: u64, tag: &str) -> (u64, [u8; 32]) {
    let mut last = None;
    for i in 0..n {
        let r = node
            .proclaim(
                "recovery.test",
                format!(r#"{{"{tag}":{i}}}"#).as_bytes(),
                vec![],
            )
            .await
            .expect("proclaim");
        last = Some((r.seq, r.hash));
    }
    last.expect("proclaimed at least one")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy dir");
    for entry in std::fs::read_dir(from).expect("read store dir") {
        let entry = entry.expect("dir entry");
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy store file");
        }
    }
}

/// The events of `feed` that `node`'s store holds, by sequence number.
fn feed_events(net: &Net, node: &str, feed: &str) -> Vec<StoredEvent> {
    let conn = herald::store::open_read_only(&net.data_dir(node)).expect("open store");
    let mut events = herald::store::read_arrivals_from(&conn, 0, 1_000_000).expect("read events");
    events.retain(|e| e.header.author == feed);
    events.sort_by_key(|e| e.header.seq);
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_an_old_copy_of_its_store_recovers_its_tail_before_proclaiming() {
    let net = Net::mesh(&["a", "b"]);
    let a = Node::start(&net.config("a")).await.expect("start a");
    let b = Node::start(&net.config("b")).await.expect("start b");
    let first = proclaim_n(&a, 20, "first").await;
    wait_head(&b, "a", first).await;

    // A backup of a's store, taken while a is stopped.
    a.shutdown().await;
    let backup = net.path().join("a-backup");
    copy_dir(&net.data_dir("a"), &backup);

    let a = Node::start(&net.config("a")).await.expect("restart a");
    let second = proclaim_n(&a, 30, "second").await;
    assert_eq!(second.0, first.0 + 30);
    wait_head(&b, "a", second).await;
    a.shutdown().await;

    // The backup comes back: a's store is 30 events behind what b holds.
    std::fs::remove_dir_all(net.data_dir("a")).expect("remove a's store");
    copy_dir(&backup, &net.data_dir("a"));
    let a = Node::start(&net.config("a"))
        .await
        .expect("start a on the backup");
    let next = a
        .proclaim("recovery.test", b"{\"after\":true}", vec![])
        .await
        .expect("proclaim after recovery");
    assert_eq!(
        next.seq,
        second.0 + 1,
        "a must recover its tail from b before proclaiming, not reuse sequence {}",
        first.0 + 1
    );
    wait_head(&b, "a", (next.seq, next.hash)).await;
    let status = a.status().await;
    assert!(status.healthy && !status.recovering, "{status:?}");
    a.shutdown().await;
    b.shutdown().await;

    // Both stores hold one unforked feed of a.
    let (in_a, in_b) = (feed_events(&net, "a", "a"), feed_events(&net, "b", "a"));
    assert_eq!(in_a.len() as u64, next.seq + 1);
    assert_eq!(
        in_a.iter().map(|e| e.hash).collect::<Vec<_>>(),
        in_b.iter().map(|e| e.hash).collect::<Vec<_>>()
    );
    for node in ["a", "b"] {
        let report = herald::audit::verify::audit_data_dir(
            &net.data_dir(node),
            &herald::audit::verify::AuditOptions {
                trust: (*net.trust()).clone(),
                channel_keys: Vec::new(),
                progress: false,
            },
        )
        .expect("audit");
        assert!(report.valid, "{node}: {:?}", report.problems);
        assert!(report.feeds.iter().all(|f| f.status == "valid"));
    }
}

/// Proclaims from a thread of its own, so a proclamation that never returns
/// fails the test by its timeout instead of keeping the runtime from ending.
async fn proclaim_on_a_thread(node: &Node) -> Result<herald::store::Receipt, LogError> {
    let log = node.log().clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(log.proclaim("recovery.test", b"{}", vec![]));
    });
    rx.await.expect("the proclaiming thread answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_claiming_more_of_the_feed_than_it_delivers_is_named_and_publish_fails() {
    // "mallory" sorts before "node-a": mallory dials, node-a accepts.
    let net = Net::with_peers(&["node-a", "mallory"], |me| match me {
        "node-a" => vec!["mallory".into()],
        _ => vec!["node-a".into()],
    });
    let a = Node::start(&net.config("node-a"))
        .await
        .expect("start node-a");
    let claim = 1_000_000;
    let mut mallory = Attack::connect(&net, "mallory", "node-a").await;
    mallory
        .send(&PeerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            service: "mallory".into(),
            heads: vec![FeedPosition {
                feed: "node-a".into(),
                seq: claim,
                hash: [7; 32],
            }],
        })
        .await;
    // A publish neither hangs nor starts a feed mallory claims to hold more
    // of: it fails, naming mallory and its claim, once the claim went
    // unproven for the stall time.
    let bound = Duration::from_millis(RECOVERY_STALL_MS) + Duration::from_secs(10);
    let outcome = tokio::time::timeout(bound, proclaim_on_a_thread(&a))
        .await
        .expect("publish must not hang while recovery cannot finish");
    match outcome {
        Err(LogError::CannotProclaim(reason)) => {
            assert!(
                reason.contains("mallory") && reason.contains(&claim.to_string()),
                "{reason}"
            );
        }
        other => panic!("expected a refusal naming mallory, got {other:?}"),
    }
    let status = a.status().await;
    assert!(!status.healthy && status.recovering, "{status:?}");
    let problem = status
        .problems
        .iter()
        .find(|p| p.task == RECOVERY_TASK)
        .expect("recovery reported in status");
    assert!(
        problem.reason.contains("mallory") && !problem.permanent,
        "{problem:?}"
    );
    // Later publishes fail at once with the same reason.
    let again = tokio::time::timeout(Duration::from_secs(5), proclaim_on_a_thread(&a))
        .await
        .expect("an immediate answer");
    assert!(
        matches!(again, Err(LogError::CannotProclaim(_))),
        "{again:?}"
    );
    assert!(head_of(&a, "node-a").await.is_none(), "no feed was started");
    drop(mallory);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_damaged_pages_is_refused_at_start_up() {
    let net = Net::with_peers(&["a"], |_| Vec::new());
    let a = Node::start(&net.config("a")).await.expect("start a");
    // Enough events (with payloads) that most pages of the file hold them.
    let payload = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2_000));
    for _ in 0..300 {
        a.proclaim("recovery.test", payload.as_bytes(), vec![])
            .await
            .expect("proclaim");
    }
    a.shutdown().await;
    let db = net.data_dir("a").join(herald::store::DB_FILE);
    let conn = rusqlite::Connection::open(&db).expect("open db");
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .expect("checkpoint");
    let page_size = conn
        .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
        .expect("page size") as u64;
    drop(conn);
    // Damage one page in the middle of the file (old events, which the
    // node does not read at start-up) as a failing disk would.
    let mut bytes = std::fs::read(&db).expect("read db");
    let pages = bytes.len() as u64 / page_size;
    assert!(pages > 20, "{pages} pages");
    let at = ((pages / 2) * page_size) as usize;
    bytes[at..at + 64].fill(0xA5);
    std::fs::write(&db, bytes).expect("write db");

    match Node::start(&net.config("a")).await {
        Err(NodeError::Log(e @ LogError::Damaged { .. })) => {
            let message = e.to_string();
            assert!(
                message.contains("damaged") && message.contains("quick_check"),
                "{message}"
            );
        }
        Err(other) => panic!("refused, but not as a damaged store: {other}"),
        Ok(node) => {
            node.shutdown().await;
            panic!("a node started on a store with damaged pages");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_diverged_from_the_feed_its_peers_hold_stops_the_node() {
    let net = Net::mesh(&["a", "b"]);
    let a = Node::start(&net.config("a")).await.expect("start a");
    let b = Node::start(&net.config("b")).await.expect("start b");
    let first = proclaim_n(&a, 5, "first").await;
    wait_head(&b, "a", first).await;
    a.shutdown().await;
    let backup = net.path().join("a-backup");
    copy_dir(&net.data_dir("a"), &backup);
    let a = Node::start(&net.config("a")).await.expect("restart a");
    let second = proclaim_n(&a, 5, "second").await;
    wait_head(&b, "a", second).await;
    a.shutdown().await;

    // The old copy comes back and, opened without its node (as an offline
    // `herald publish` does), gets an event of its own at a sequence number
    // b already holds another event at: the store now diverges from b's copy.
    std::fs::remove_dir_all(net.data_dir("a")).expect("remove a's store");
    copy_dir(&backup, &net.data_dir("a"));
    let log = herald::store::Log::open(&net.config("a")).expect("open the old copy");
    let diverged = log
        .proclaim("recovery.test", b"{\"branch\":2}", vec![])
        .expect("proclaim offline");
    assert_eq!(diverged.seq, first.0 + 1);
    drop(log);

    let a = Node::start(&net.config("a")).await.expect("start a");
    let Ok(reason) = tokio::time::timeout(CONVERGE, a.failed()).await else {
        // What each side saw, to tell a lost connection from a missed fork.
        panic!(
            "a did not report that its store diverged within {CONVERGE:?}\na: {:#?}\nb: {:#?}",
            a.status().await,
            b.status().await
        );
    };
    assert!(reason.contains("self-fork"), "{reason}");
    let status = a.status().await;
    assert!(!status.healthy && status.recovering, "{status:?}");
    let refused = tokio::time::timeout(Duration::from_secs(10), proclaim_on_a_thread(&a))
        .await
        .expect("an immediate answer");
    assert!(
        matches!(refused, Err(LogError::CannotProclaim(_))),
        "{refused:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}
