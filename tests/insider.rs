//! Insider peers: a node with a valid certificate that misbehaves. It shows
//! two histories of its feed to two nodes (a split view), sends forged
//! events of the receiver's own feed, and acknowledges feeds that do not
//! exist. Real nodes on 127.0.0.1, real QUIC and mutual TLS, real SQLite.

mod common;

use std::time::Duration;

use common::attack::{Attack, Forger, events_frame};
use common::net::Net;
use common::wait_async;
use herald::core::verify::VerifiedEvent;
use herald::core::wire::{FeedPosition, PeerMessage, close};
use herald::node::Node;
use herald::node::peer::ACK_PERSIST_INTERVAL_MS;

/// Longest any convergence wait may take before the test fails.
const CONVERGE: Duration = Duration::from_secs(30);

fn envelopes(events: &[VerifiedEvent]) -> Vec<&[u8]> {
    events.iter().map(|e| e.bytes()).collect()
}

/// The status of `feed` in `node`'s heads (`None`: it holds no such feed).
async fn feed_status(node: &Node, feed: &str) -> Option<String> {
    node.status()
        .await
        .feeds
        .into_iter()
        .find(|h| h.feed == feed)
        .map(|h| h.status)
}

/// Every connection from `node` to the listed honest peers is up, and none
/// of them was ever cut for a failed verification.
async fn assert_honest_links_intact(node: &Node, honest: &[&str]) {
    let status = node.status().await;
    for name in honest {
        let peer = status
            .peers
            .iter()
            .find(|p| p.name == *name)
            .unwrap_or_else(|| panic!("{} has no peer {name}", node.service()));
        let error = peer.last_error.clone().unwrap_or_default();
        assert!(
            !error.contains("verification") && !error.contains("previous-hash"),
            "{} cut its honest peer {name}: {error}",
            node.service()
        );
    }
}

// Finding 1 and 2: mallory shows history A of its seq 4 to node-a and
// history B to node-b at the same moment, then extends A. Both nodes must
// find out by comparing head hashes, record two validly signed events at one
// position as fork evidence, and pass it on, so node-c (which only ever
// hears of mallory through node-b) freezes the feed too. No honest link is
// cut, and feeds relayed through node-b keep arriving at node-c.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_view_is_detected_recorded_everywhere_and_relays_stay_connected() {
    let net = Net::with_peers(&["node-a", "node-b", "node-c", "mallory"], |me| match me {
        "node-a" => vec!["node-b".into(), "mallory".into()],
        "node-b" => vec!["node-a".into(), "node-c".into(), "mallory".into()],
        "node-c" => vec!["node-b".into()],
        _ => vec!["node-a".into(), "node-b".into()],
    });
    let a = Node::start(&net.config("node-a")).await.expect("start a");
    let b = Node::start(&net.config("node-b")).await.expect("start b");
    let c = Node::start(&net.config("node-c")).await.expect("start c");

    // A common history, 0..=3, delivered to both.
    let mut mallory = Forger::new(&net, "mallory", "mallory");
    let common = [
        vec![mallory.genesis.clone()],
        mallory.seal(3, "mallory.says"),
    ]
    .concat();
    let mut to_a = Attack::open(&net, "mallory", "node-a").await;
    let mut to_b = Attack::open(&net, "mallory", "node-b").await;
    to_a.send(&events_frame(&envelopes(&common))).await;
    to_b.send(&events_frame(&envelopes(&common))).await;
    to_a.wait_ack("mallory", 3).await;
    to_b.wait_ack("mallory", 3).await;

    // Two histories from seq 4 on: A (4, 5, 6) for node-a, B (4) for node-b,
    // sent at the same moment.
    let fork_point = mallory.mark();
    let branch_a4 = mallory.seal(1, "branch.a");
    let after_a4 = mallory.mark();
    mallory.restore(fork_point);
    let branch_b4 = mallory.seal(1, "branch.b");
    mallory.restore(after_a4);
    let branch_a56 = mallory.seal(2, "branch.a");
    assert_ne!(branch_a4[0].hash(), branch_b4[0].hash());
    let (frame_a, frame_b) = (
        events_frame(&envelopes(&branch_a4)),
        events_frame(&envelopes(&branch_b4)),
    );
    tokio::join!(to_a.send(&frame_a), to_b.send(&frame_b));
    to_a.wait_ack("mallory", 4).await;
    to_b.wait_ack("mallory", 4).await;
    to_a.send(&events_frame(&envelopes(&branch_a56))).await;
    to_a.wait_ack("mallory", 6).await;

    // Honest traffic keeps acknowledgements (and their head hashes) flowing.
    for node in [&a, &b, &c] {
        node.proclaim("honest.news", b"{}", vec![])
            .await
            .expect("proclaim");
    }
    for node in [&a, &b, &c] {
        wait_async(
            &format!("{} to freeze mallory's feed", node.service()),
            CONVERGE,
            || async {
                match feed_status(node, "mallory").await.as_deref() {
                    Some("forked") => Ok(()),
                    other => Err(format!("mallory's feed is {other:?}")),
                }
            },
        )
        .await;
        let forks = node.log().forks().expect("forks");
        let fork = forks
            .iter()
            .find(|f| f.feed == "mallory")
            .unwrap_or_else(|| panic!("{} holds no evidence", node.service()));
        assert_eq!(fork.seq, 4, "{}: the fork is at seq 4", node.service());
    }

    // A feed relayed through node-b still reaches node-c, and no honest
    // node was disconnected for what mallory did.
    let late = a
        .proclaim("after.the.fork", b"{}", vec![])
        .await
        .expect("proclaim");
    wait_async(
        "node-c to receive node-a's feed through node-b",
        CONVERGE,
        || async {
            let heads = c.status().await.feeds;
            match heads.iter().find(|h| h.feed == "node-a") {
                Some(h) if h.seq >= late.seq => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_honest_links_intact(&a, &["node-b"]).await;
    assert_honest_links_intact(&b, &["node-a", "node-c"]).await;
    assert_honest_links_intact(&c, &["node-b"]).await;
    // Nothing of mallory's from the fork on went anywhere it was not sent.
    let b_mallory = b
        .status()
        .await
        .feeds
        .into_iter()
        .find(|h| h.feed == "mallory")
        .expect("b holds mallory");
    assert_eq!(b_mallory.seq, 4, "node-b took none of history A");

    for node in [a, b, c] {
        node.shutdown().await;
    }
    // The evidence each node recorded verifies offline.
    for name in ["node-a", "node-b", "node-c"] {
        let report = herald::audit::verify::audit_data_dir(
            &net.data_dir(name),
            &herald::audit::verify::AuditOptions {
                trust: herald::identity::TrustAnchor::load(&net.ca(), None).expect("trust"),
                channel_keys: Vec::new(),
                progress: false,
            },
        )
        .expect("audit runs");
        let feed = report
            .feeds
            .iter()
            .find(|f| f.service == "mallory")
            .expect("mallory audited");
        assert_eq!(feed.status, "forked", "{name}: {:?}", report.problems);
    }
}

// Finding 3: events that claim to be the receiver's own feed beyond its
// head cannot come from an honest peer (none holds more of a node's feed
// than the node itself). The sender is cut off at once, without the
// receiver spending verification on them, and the node serves others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_the_receivers_own_feed_beyond_its_head_cut_the_sender_off() {
    let net = Net::with_peers(&["node-a", "node-b", "mallory"], |me| match me {
        "node-a" => vec!["node-b".into(), "mallory".into()],
        "node-b" => vec!["node-a".into()],
        _ => vec!["node-a".into()],
    });
    let a = Node::start(&net.config("node-a")).await.expect("start a");
    let b = Node::start(&net.config("node-b")).await.expect("start b");
    let head = a
        .proclaim("own.news", b"{}", vec![])
        .await
        .expect("proclaim");

    // Events of "node-a" signed with mallory's key, seq 0..=head+3: those up
    // to node-a's head are conflicting copies (invalidly signed), those
    // beyond it are the forgery the finding describes.
    let mut forger = Forger::new(&net, "node-a", "mallory");
    let forged = forger.seal(head.seq as u8 + 3, "forged.news");
    let beyond: Vec<&[u8]> = forged
        .iter()
        .filter(|e| e.header().seq > head.seq)
        .map(|e| e.bytes())
        .collect();
    assert_eq!(beyond.len(), 3);
    let mut m = Attack::open(&net, "mallory", "node-a").await;
    m.send(&events_frame(&beyond)).await;
    assert_eq!(
        m.closed_with().await,
        close::VERIFICATION_FAILED as u64,
        "forged events of the receiver's own feed"
    );
    let own = a
        .status()
        .await
        .feeds
        .into_iter()
        .find(|h| h.feed == "node-a")
        .expect("own feed");
    assert_eq!(
        (own.seq, own.hash),
        (head.seq, head.hash),
        "own feed untouched"
    );

    // node-a goes on serving its honest peer.
    let next = a
        .proclaim("own.news", b"{}", vec![])
        .await
        .expect("proclaim");
    assert_eq!(next.seq, head.seq + 1);
    wait_async(
        "node-b to receive node-a's next event",
        CONVERGE,
        || async {
            let heads = b.status().await.feeds;
            match heads.iter().find(|h| h.feed == "node-a") {
                Some(h) if h.seq == next.seq && h.hash == next.hash => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

fn position(feed: &str, seq: u64) -> FeedPosition {
    FeedPosition {
        feed: feed.to_string(),
        seq,
        hash: [0; 32],
    }
}

// Finding 4 (first part): acknowledgements naming feeds that do not exist
// must not grow a session's state or the store's cursor table, and a feed
// name that is no service name is a protocol violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_of_unknown_feeds_leave_no_trace_and_bad_names_are_refused() {
    let net = Net::with_peers(&["node-a", "mallory"], |me| match me {
        "node-a" => vec!["mallory".into()],
        _ => vec!["node-a".into()],
    });
    let a = Node::start(&net.config("node-a")).await.expect("start a");
    // node-a starts its feed once its only peer has said Hello.
    let mut m = Attack::open(&net, "mallory", "node-a").await;
    // mallory's own feed, 0..=1, so node-a holds a feed mallory can
    // acknowledge progress in.
    let mut forger = Forger::new(&net, "mallory", "mallory");
    let feed = [vec![forger.genesis.clone()], forger.seal(1, "mallory.says")].concat();
    m.send(&events_frame(&envelopes(&feed))).await;
    m.wait_ack("mallory", 1).await;
    let at = |event: &VerifiedEvent| FeedPosition {
        feed: "mallory".into(),
        seq: event.header().seq,
        hash: *event.hash(),
    };
    for round in 0..3 {
        let mut heads: Vec<FeedPosition> = (0..3_000)
            .map(|i| position(&format!("fake-{round}-{i}"), 7))
            .collect();
        heads.push(at(&feed[0]));
        m.send(&PeerMessage::Ack { heads }).await;
    }
    // Cursors are persisted at most every ACK_PERSIST_INTERVAL_MS, when an
    // acknowledgement makes progress: let the interval pass, then progress.
    tokio::time::sleep(Duration::from_millis(ACK_PERSIST_INTERVAL_MS + 100)).await;
    m.send(&PeerMessage::Ack {
        heads: vec![at(&feed[1])],
    })
    .await;
    wait_async("node-a to persist mallory's cursor", CONVERGE, || async {
        let cursors = a.log().peer_cursors().map_err(|e| e.to_string())?;
        let mine: Vec<_> = cursors.iter().filter(|c| c.peer == "mallory").collect();
        if mine.iter().any(|c| c.feed == "mallory" && c.acked_seq == 1) {
            Ok(mine.len())
        } else {
            Err(format!("{} cursors of mallory", mine.len()))
        }
    })
    .await;
    let cursors = a.log().peer_cursors().expect("cursors");
    let fake: Vec<_> = cursors
        .iter()
        .filter(|c| c.feed.starts_with("fake-"))
        .collect();
    assert!(
        fake.is_empty(),
        "{} cursor rows for feeds that do not exist",
        fake.len()
    );

    let mut m = Attack::open(&net, "mallory", "node-a").await;
    m.send(&PeerMessage::Ack {
        heads: vec![position("Not A Service!", 1)],
    })
    .await;
    assert_eq!(
        m.closed_with().await,
        close::PROTOCOL_VIOLATION as u64,
        "a feed name that is no service name"
    );
    a.shutdown().await;
}
