//! Compromise with a cut-off: a stolen key is revoked from a sequence
//! number on, and the running peers reload their trust. The feed's events
//! before the cut-off stay valid everywhere; what the key signs after it is
//! refused by every peer that holds the revocation (even when an unknowing
//! relay forwards it, which stays connected) and reported by `herald
//! verify`. Real nodes on 127.0.0.1,
//! real QUIC and mutual TLS, real SQLite, and the real binary.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::net::Net;
use herald::node::Node;

/// Events the owner writes before the theft (after the genesis, seq 0).
const OWNED: u64 = 5;
/// Events the thief signs with the stolen key after the cut-off.
const FORGED: u64 = 3;
/// How long replication may take on a busy machine.
const WITHIN: Duration = Duration::from_secs(60);

fn herald(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .output()
        .expect("run herald")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// The head sequence number `node` holds of `feed`.
fn head(node: &Node, feed: &str) -> Option<u64> {
    node.log()
        .heads()
        .expect("heads")
        .into_iter()
        .find(|h| h.feed == feed)
        .map(|h| h.seq)
}

async fn wait_head(node: &Node, feed: &str, seq: u64) {
    common::wait_async(
        &format!("{} to hold {feed} up to {seq}", node.service()),
        WITHIN,
        || async move {
            match head(node, feed) {
                Some(held) if held >= seq => Ok(()),
                held => Err(format!("holds {held:?}")),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_key_revoked_with_a_cut_off_keeps_its_history_and_nothing_after() {
    // a and b will hold the revocation; the thief c and the relay d will
    // not. c talks only to d, and d relays c's feed to a and b.
    let net = Net::with_peers(&["a", "b", "c", "d"], |me| match me {
        "a" => vec!["b".into(), "d".into()],
        "b" => vec!["a".into(), "d".into()],
        "c" => vec!["d".into()],
        _ => vec!["a".into(), "b".into(), "c".into()],
    });
    // The thief's and the relay's copy of the revocation list never learns
    // of the theft.
    let unaware = net.path().join("unaware-revoked.toml");
    std::fs::write(&unaware, "").expect("empty list");
    for name in ["c", "d"] {
        net.edit(name, |c| c.revoked = Some(unaware.clone()));
    }

    // 1. The owner writes seq 1..=OWNED; every node gets them.
    let a = Node::start(&net.config("a")).await.expect("start a");
    let b = Node::start(&net.config("b")).await.expect("start b");
    let c = Node::start(&net.config("c")).await.expect("start c");
    let d = Node::start(&net.config("d")).await.expect("start d");
    for i in 1..=OWNED {
        c.proclaim("donation", format!("owned {i}").as_bytes(), vec![])
            .await
            .expect("owner proclaims");
    }
    for node in [&a, &b, &c, &d] {
        wait_head(node, "c", OWNED).await;
    }

    // 2. The key is stolen: the operator revokes it from the first
    // sequence number the owner did not write, and a and b reload their
    // trust while they run.
    let keys = net.keys();
    let from_seq = (OWNED + 1).to_string();
    let o = herald(&[
        "keygen",
        "revoke",
        "--dir",
        s(&keys),
        "--name",
        "c",
        "--from-seq",
        &from_seq,
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let list = std::fs::read_to_string(keys.join("revoked.toml")).expect("revocation list");
    assert!(list.contains(&format!("from_seq = {from_seq}")), "{list}");
    a.reload().await.expect("a reloads");
    b.reload().await.expect("b reloads");

    // 3. The thief signs more events with the stolen key; d takes them
    // and relays them.
    for i in 1..=FORGED {
        c.proclaim("donation", format!("forged {i}").as_bytes(), vec![])
            .await
            .expect("thief proclaims");
    }
    wait_head(&d, "c", OWNED + FORGED).await;
    // d goes on relaying: its own event reaches a and b, so they kept the
    // unknowing relay connected.
    let marker = d
        .proclaim("note", b"relay still served", vec![])
        .await
        .expect("d proclaims");
    wait_head(&a, "d", marker.seq).await;
    wait_head(&b, "d", marker.seq).await;
    for node in [&a, &b] {
        assert_eq!(
            head(node, "c"),
            Some(OWNED),
            "{} took an event signed after the cut-off",
            node.service()
        );
    }

    // 4. The auditor: d's export verifies up to the cut-off; the forged
    // events are reported as `revoked`, each by sequence number.
    let export = net.path().join("d.hrld");
    let o = herald(&[
        "export",
        "--config",
        s(&net.config_path("d")),
        "--out",
        s(&export),
    ]);
    // d is running (its store is locked): export asks the node.
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = herald(&[
        "verify",
        s(&export),
        "--ca",
        s(&net.ca()),
        "--revoked",
        s(&keys.join("revoked.toml")),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "problems found: {o:?}");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("report JSON");
    let problems = report["problems"].as_array().expect("problems");
    let revoked: Vec<u64> = problems
        .iter()
        .filter(|p| p["check"] == "revoked" && p["feed"] == "c")
        .filter_map(|p| p["seq"].as_u64())
        .collect();
    assert!(
        revoked.first() == Some(&(OWNED + 1)),
        "the first forged event is reported as revoked: {report:#}"
    );
    assert!(
        problems
            .iter()
            .all(|p| p["feed"] == "c" && p["seq"].as_u64().is_some_and(|s| s > OWNED)),
        "nothing before the cut-off, nor any other feed, is a problem: {report:#}"
    );
    // The thief's checkpoint covers the whole feed; it still vouches for
    // the owner's events (the revoked key signed those before the theft).
    let feed_c = report["feeds"]
        .as_array()
        .and_then(|feeds| feeds.iter().find(|f| f["service"] == "c"))
        .expect("feed c in the report");
    assert_eq!(
        feed_c["verified"].as_u64(),
        Some(OWNED + 1),
        "the genesis and the owner's events verify: {feed_c:#}"
    );
    // Without the revocation list the same export verifies: the forged
    // events are validly signed, which is why the list must be honoured.
    let o = herald(&["verify", s(&export), "--ca", s(&net.ca()), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");

    for node in [a, b, c, d] {
        node.shutdown().await;
    }
}
