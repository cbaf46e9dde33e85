//! Peers as witnesses: every node cosigns the checkpoints of the feeds it
//! verified, cosignatures travel with the feed, and an author that signs two
//! checkpoints no consistency proof joins (a split view) is caught by the
//! first node that sees both; the evidence reaches every node and freezes
//! the feed. Real nodes on 127.0.0.1, real QUIC and mutual TLS, real SQLite.

mod common;

use std::time::Duration;

use common::attack::{Attack, Forger, events_frame};
use common::net::Net;
use common::wait_async;
use herald::core::checkpoint::{CheckpointSigner, check_equivocation, cluster_id};
use herald::core::merkle::{self, MemoryTree};
use herald::core::verify::VerifiedEvent;
use herald::core::wire::{PeerMessage, close};
use herald::node::Node;

/// Longest any convergence wait may take before the test fails.
const CONVERGE: Duration = Duration::from_secs(30);

/// Waits until `node` holds equivocation evidence against mallory's feed
/// and its status shows the feed frozen.
async fn wait_for_evidence_against_mallory(node: &Node) {
    wait_async(
        &format!(
            "{} to hold equivocation evidence against mallory",
            node.service()
        ),
        CONVERGE,
        || async {
            let evidence = node.log().equivocations().map_err(|e| e.to_string())?;
            if !evidence.iter().any(|(feed, _)| feed == "mallory") {
                return Err(format!("{} pieces of evidence", evidence.len()));
            }
            // Status reports heads as of the last durable commit: the
            // evidence can be read in the store a moment before.
            let status = node.status().await;
            match status.feeds.iter().find(|h| h.feed == "mallory") {
                Some(head) if head.status == "forked" => Ok(()),
                head => Err(format!("evidence held, status shows {head:?}")),
            }
        },
    )
    .await;
}

fn envelopes(events: &[VerifiedEvent]) -> Vec<&[u8]> {
    events.iter().map(|e| e.bytes()).collect()
}

fn checkpoint_message(note: &herald::core::note::Note) -> PeerMessage {
    PeerMessage::Checkpoint {
        note: serde_bytes::ByteBuf::from(note.to_text().into_bytes()),
    }
}

/// The root of the tree over `events` (their event hashes as leaves).
fn root_over(events: &[VerifiedEvent]) -> [u8; 32] {
    let mut tree = MemoryTree::default();
    for e in events {
        tree.push(merkle::leaf_hash(e.hash())).unwrap();
    }
    tree.root()
}

// Every node cosigns every other node's checkpoints; after quiet traffic
// each feed's latest checkpoint at every node carries the two other nodes'
// cosignatures and covers every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_cosigns_the_checkpoints_of_the_feeds_it_verified() {
    let net = Net::mesh(&["node-a", "node-b", "node-c"]);
    let nodes = [
        Node::start(&net.config("node-a")).await.expect("start a"),
        Node::start(&net.config("node-b")).await.expect("start b"),
        Node::start(&net.config("node-c")).await.expect("start c"),
    ];
    for node in &nodes {
        for i in 0..5 {
            node.proclaim("witness.test", format!("{{\"i\":{i}}}").as_bytes(), vec![])
                .await
                .expect("proclaim");
        }
    }
    let cluster = nodes[0].log().cluster().to_string();
    for node in &nodes {
        for feed in ["node-a", "node-b", "node-c"] {
            wait_async(
                &format!(
                    "{}'s checkpoint of {feed} to carry two cosignatures",
                    node.service()
                ),
                CONVERGE,
                || async {
                    let Some(cp) = node.log().latest_checkpoint(feed) else {
                        return Err("no checkpoint".to_string());
                    };
                    let mut cosigners = cp.cosigners(&cluster);
                    cosigners.sort();
                    let others: Vec<String> = ["node-a", "node-b", "node-c"]
                        .iter()
                        .filter(|n| **n != feed)
                        .map(|n| n.to_string())
                        .collect();
                    if cp.size == 6 && cosigners == others {
                        Ok(())
                    } else {
                        Err(format!("size {} cosigned by {cosigners:?}", cp.size))
                    }
                },
            )
            .await;
        }
    }
    // `herald status` shows the same: every feed's checkpoint and its
    // two witnesses.
    for node in &nodes {
        let status = node.status().await;
        assert_eq!(status.checkpoints.len(), 3, "{}", node.service());
        for c in &status.checkpoints {
            assert_eq!(c.size, 6);
            assert_eq!(c.cosigners.len(), 2, "{}: {c:?}", node.service());
            assert!(!c.cosigners.contains(&c.feed), "the author is no witness");
        }
    }
    for node in nodes {
        node.shutdown().await;
    }
}

// mallory gives node-a and node-b the same four events, then signs two
// checkpoints of size 4: the true one for node-a and one over another tree
// for node-b. node-b cannot prove anything alone (it holds no other
// checkpoint); as soon as node-a's cosigned copy of the true checkpoint
// reaches it, the pair is evidence: node-b records it, freezes the feed and
// passes the evidence on, so node-c, which never talks to mallory, freezes
// it too. No honest link is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_author_that_signs_two_histories_is_caught_and_frozen_everywhere() {
    let net = Net::with_peers(&["node-a", "node-b", "node-c", "mallory"], |me| match me {
        "node-a" => vec!["node-b".into(), "mallory".into()],
        "node-b" => vec!["node-a".into(), "node-c".into(), "mallory".into()],
        "node-c" => vec!["node-b".into()],
        _ => vec!["node-a".into(), "node-b".into()],
    });
    let a = Node::start(&net.config("node-a")).await.expect("start a");
    let b = Node::start(&net.config("node-b")).await.expect("start b");
    let c = Node::start(&net.config("node-c")).await.expect("start c");
    let cluster = cluster_id(&net.trust().ca_public_key());

    let mut mallory = Forger::new(&net, "mallory", "mallory");
    let history = [
        vec![mallory.genesis.clone()],
        mallory.seal(3, "mallory.says"),
    ]
    .concat();
    let signer = CheckpointSigner::new(cluster.clone(), "mallory".into(), mallory.key.clone());
    let true_checkpoint = signer.sign(4, root_over(&history)).unwrap();
    let other_tree = [history[..3].to_vec(), mallory.seal(1, "rewritten")].concat();
    let false_checkpoint = signer.sign(4, root_over(&other_tree)).unwrap();
    assert_ne!(true_checkpoint.text(), false_checkpoint.text());

    let mut to_a = Attack::open(&net, "mallory", "node-a").await;
    let mut to_b = Attack::open(&net, "mallory", "node-b").await;
    to_b.send(&events_frame(&envelopes(&history))).await;
    to_b.wait_ack("mallory", 3).await;
    // node-b sees the false checkpoint first: not provable yet.
    to_b.send(&checkpoint_message(&false_checkpoint)).await;
    to_a.send(&events_frame(&envelopes(&history))).await;
    to_a.wait_ack("mallory", 3).await;
    to_a.send(&checkpoint_message(&true_checkpoint)).await;

    for node in [&a, &b, &c] {
        wait_for_evidence_against_mallory(node).await;
        let status = node.status().await;
        let feed = status
            .feeds
            .iter()
            .find(|h| h.feed == "mallory")
            .expect("holds mallory's feed");
        assert_eq!(feed.status, "forked", "{} froze the feed", node.service());
        // The evidence proves itself to anyone with the author's key.
        let (_, evidence) = node
            .log()
            .equivocations()
            .unwrap()
            .into_iter()
            .find(|(f, _)| f == "mallory")
            .unwrap();
        let found = check_equivocation(&cluster, &evidence, &mallory.key.verifying_key())
            .expect("the evidence checks");
        assert_eq!(found, ("mallory".to_string(), 4));
    }

    // The frozen feed takes nothing more, from anyone.
    let more = mallory.seal(1, "after.freeze");
    to_a.send(&events_frame(&envelopes(&more))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a_head = a
        .status()
        .await
        .feeds
        .into_iter()
        .find(|h| h.feed == "mallory")
        .expect("a holds mallory");
    assert_eq!(a_head.seq, 3, "nothing of mallory's after the freeze");

    // Honest links stay up: node-c heard it all through node-b.
    for (node, honest) in [
        (&a, vec!["node-b"]),
        (&b, vec!["node-a", "node-c"]),
        (&c, vec!["node-b"]),
    ] {
        let status = node.status().await;
        for name in honest {
            let peer = status.peers.iter().find(|p| p.name == name).unwrap();
            let error = peer.last_error.clone().unwrap_or_default();
            assert!(
                !error.contains("verification"),
                "{} cut {name}: {error}",
                node.service()
            );
        }
    }
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

// A checkpoint that is not signed by its feed's author (here: mallory signs
// one for node-a's feed) is misbehaviour: the sender is disconnected with
// VERIFICATION_FAILED and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_not_signed_by_the_feeds_author_cuts_the_sender_off() {
    let net = Net::mesh(&["node-a", "mallory"]);
    let a = Node::start(&net.config("node-a")).await.expect("start a");
    let cluster = cluster_id(&net.trust().ca_public_key());
    let mallory = Forger::new(&net, "mallory", "mallory");
    let mut to_a = Attack::open(&net, "mallory", "node-a").await;
    to_a.send(&events_frame(&[mallory.genesis.bytes()])).await;
    to_a.wait_ack("mallory", 0).await;
    // A "checkpoint of node-a's feed" signed by mallory's key.
    let forged = CheckpointSigner::new(cluster, "node-a".into(), mallory.key.clone())
        .sign(1, [7; 32])
        .unwrap();
    // Once node-a's start-up recovery is over, its genesis is checkpointed.
    let before = wait_async("node-a's own checkpoint", CONVERGE, || async {
        a.log()
            .latest_checkpoint("node-a")
            .ok_or("none yet".to_string())
    })
    .await;
    to_a.send(&checkpoint_message(&forged)).await;
    assert_eq!(
        to_a.closed_with().await,
        u64::from(close::VERIFICATION_FAILED)
    );
    let after = a.log().latest_checkpoint("node-a").expect("own checkpoint");
    assert_eq!(before, after, "nothing of the forgery was stored");
    assert!(a.log().equivocations().unwrap().is_empty());
    a.shutdown().await;
}

/// A split view of format-2 events: the author sends one history, sealed,
/// to node-a and another to node-b, which are not peers of each other. The
/// events prove nothing alone; node-c, peer of both, finds the split when it
/// compares their positions, the checkpoints it passes on meet the
/// other side's, and every node records the author's two signed checkpoints
/// as evidence and freezes the feed. No honest node is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_view_of_sealed_events_is_proved_by_checkpoints_and_frozen_everywhere() {
    let net = Net::with_peers(&["node-a", "node-b", "node-c", "mallory"], |me| match me {
        "node-a" => vec!["node-c".into(), "mallory".into()],
        "node-b" => vec!["node-c".into(), "mallory".into()],
        "node-c" => vec!["node-a".into(), "node-b".into()],
        _ => vec!["node-a".into(), "node-b".into()],
    });
    let mut mallory = Forger::sealed(&net, "mallory", "mallory");
    let common: Vec<VerifiedEvent> = [
        vec![mallory.genesis.clone()],
        mallory.seal(2, "mallory.says"),
    ]
    .concat();
    let fork_point = mallory.mark();
    let first = [common.clone(), mallory.seal(1, "version.a")].concat();
    mallory.restore(fork_point);
    let second = [common.clone(), mallory.seal(1, "version.b")].concat();
    assert_ne!(first[3].hash(), second[3].hash());
    let sealed_frame = |history: &[VerifiedEvent]| {
        let refs: Vec<&VerifiedEvent> = history.iter().collect();
        let PeerMessage::Events { events, .. } = events_frame(&envelopes(history)) else {
            unreachable!()
        };
        PeerMessage::Events {
            events,
            seals: vec![mallory.seal_of(&refs)],
        }
    };

    let a = Node::start(&net.config("node-a")).await.expect("start a");
    let b = Node::start(&net.config("node-b")).await.expect("start b");
    let mut to_a = Attack::open(&net, "mallory", "node-a").await;
    to_a.send(&sealed_frame(&first)).await;
    to_a.wait_ack("mallory", 3).await;
    let mut to_b = Attack::open(&net, "mallory", "node-b").await;
    to_b.send(&sealed_frame(&second)).await;
    to_b.wait_ack("mallory", 3).await;
    let c = Node::start(&net.config("node-c")).await.expect("start c");

    for node in [&a, &b, &c] {
        wait_for_evidence_against_mallory(node).await;
        let status = node.status().await;
        let feed = status.feeds.iter().find(|h| h.feed == "mallory");
        assert_eq!(
            feed.map(|f| f.status.as_str()),
            Some("forked"),
            "{} froze the feed",
            node.service()
        );
    }
    // The honest nodes stayed connected throughout.
    let peers = c.status().await.peers;
    for name in ["node-a", "node-b"] {
        let peer = peers.iter().find(|p| p.name == name).expect("a peer");
        assert!(peer.connected, "node-c still connected to {name}: {peer:?}");
    }
    drop((to_a, to_b));
    for node in [a, b, c] {
        node.shutdown().await;
    }
}
