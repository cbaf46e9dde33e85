//! Feeds outlive keys (issue 15 parts 1 and 3): a node moves its feed to a
//! new key with a key transition, while the cluster keeps publishing and
//! replicating; a recovery transition authorized by the CA carries a feed
//! past a stolen key's cut-off; a transition without the right
//! authorization is refused and changes nothing; a node killed around its
//! transition starts again on one key. Real nodes on 127.0.0.1, real
//! QUIC/mTLS, real SQLite; exports verified by the real binary with the CA
//! alone.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::cli::{assert_ok, herald, s};
use common::net::Net;
use common::publishing::Publishing;
use ed25519_dalek::SigningKey;
use herald::core::transition::{TransitionKind, cert_digest, sign_authorization};
use herald::identity::transition::{TransitionAuthorization, transition_path};
use herald::node::Node;

const NODES: [&str; 3] = ["a", "b", "c"];
const WAIT: Duration = Duration::from_secs(60);

/// Issues `name` a new key and certificate and writes the transition's
/// authorization next to it, signed by `authorizer` (the old key for a
/// rotation, the CA key for a recovery), as `herald keygen rotate` and
/// `recover` do.
fn new_key_for(net: &Net, name: &str, kind: TransitionKind, authorizer: &SigningKey) {
    let keys = net.keys();
    let now = herald::clock::now_us();
    let day = 86_400_000_000;
    herald::identity::issue_node_with_validity(&keys, name, now - day, now + 300 * day, true)
        .expect("new key and certificate");
    let cert_path = keys.join(format!("{name}.crt"));
    let cert = herald::identity::read_cert_pem(&cert_path).expect("new certificate");
    let authorization = TransitionAuthorization {
        kind,
        service: name.to_string(),
        cert_sha256: cert_digest(&cert),
        signature: sign_authorization(kind, name, &cert, authorizer),
    };
    std::fs::write(transition_path(&cert_path), authorization.to_text()).expect("write");
}

fn key_of(net: &Net, file: &str) -> SigningKey {
    herald::identity::pem::read_private_key(&net.keys().join(file)).expect("read key")
}

/// Waits until every node of `cluster` holds every feed up to where its
/// author's receipts reached.
async fn converge(cluster: &Publishing) {
    for at in NODES {
        for feed in NODES {
            cluster.wait_for(at, feed, cluster.last(feed)).await;
        }
    }
}

/// The sequence numbers of `feed`'s key transitions as `log` holds them.
fn transitions(log: &herald::store::Log, feed: &str) -> Vec<u64> {
    let head = log
        .heads()
        .unwrap()
        .into_iter()
        .find(|h| h.feed == feed)
        .expect("feed held");
    log.read(feed, 0..=head.seq)
        .unwrap()
        .into_iter()
        .filter(|e| e.header.event_type == herald::core::transition::KEY_TRANSITION_EVENT_TYPE)
        .map(|e| e.header.seq)
        .collect()
}

/// Exports `name`'s store and verifies it with the CA alone (plus
/// `extra` arguments): the verify report.
fn export_and_verify(net: &Net, name: &str, extra: &[&str]) -> serde_json::Value {
    let export = net.path().join(format!("{name}.hrld"));
    assert_ok(&herald(&[
        "export",
        "--config",
        s(&net.config_path(name)),
        "--out",
        s(&export),
    ]));
    let ca = net.ca();
    let mut args = vec!["verify", s(&export), "--ca", s(&ca), "--json"];
    args.extend_from_slice(extra);
    let out = herald(&args);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify JSON: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    report
}

/// Writes and checks, with the real binary, the proof of `feed`/`seq`
/// from `name`'s store.
fn prove_and_check(net: &Net, name: &str, feed: &str, seq: u64) {
    let proof = net.path().join(format!("{feed}-{seq}.proof"));
    assert_ok(&herald(&[
        "prove",
        "--config",
        s(&net.config_path(name)),
        "--feed",
        feed,
        "--seq",
        &seq.to_string(),
        "--out",
        s(&proof),
    ]));
    let ca = net.ca();
    assert_ok(&herald(&["verify", s(&proof), "--ca", s(&ca)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_rotates_its_key_while_all_three_publish() {
    let net = Net::mesh(&NODES);
    let cluster = Publishing::start(&net, &NODES).await;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(
        Arc::clone(&cluster).publish_until(Arc::clone(&stop), Duration::from_millis(20)),
    );
    converge(&cluster).await;

    let mut moved_at = BTreeMap::new();
    for name in NODES {
        let rotated =
            herald::identity::rotate_node_key(&net.keys(), name, 300, None).expect("keygen rotate");
        let report = cluster.nodes.read().await[name]
            .reload()
            .await
            .unwrap_or_else(|e| panic!("{name} reloads: {e}"));
        let seq = report.transition_seq.expect("a transition was appended");
        // `herald status` shows the feed on the new key.
        let key = cluster.nodes.read().await[name].status().await.feed_key;
        let key = key.expect("the feed's key");
        assert_eq!(key.public_key, hex::encode(rotated.public_key));
        assert_eq!(key.transitions, vec![seq]);
        moved_at.insert(name, seq);
        // Its peers take the transition and what follows it.
        let after = seq + 5;
        common::wait_async(
            &format!("{name} to publish past its transition"),
            WAIT,
            || async {
                if cluster.last(name) >= after {
                    Ok(())
                } else {
                    Err("not yet".to_string())
                }
            },
        )
        .await;
        for other in NODES.iter().filter(|n| **n != name) {
            cluster.wait_for(other, name, after).await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    publisher.await.unwrap();
    assert!(
        cluster.errors.lock().unwrap().is_empty(),
        "publishing never failed: {:?}",
        cluster.errors.lock().unwrap()
    );
    converge(&cluster).await;
    // No connection was lost: every node still has both peers.
    for (name, node) in cluster.nodes.read().await.iter() {
        for peer in node.status().await.peers {
            assert!(peer.connected, "{name} lost {}", peer.name);
        }
        for feed in NODES {
            assert_eq!(
                transitions(node.log(), feed),
                vec![moved_at[feed]],
                "{name} holds {feed}'s one transition"
            );
        }
    }
    cluster.shutdown().await;

    // Every export verifies with the CA alone, every feed whole and
    // authenticated by its final checkpoint (under the new key).
    for name in NODES {
        let report = export_and_verify(&net, name, &[]);
        assert_eq!(report["valid"], true, "{report:#}");
        let feeds = report["feeds"].as_array().expect("feeds");
        assert_eq!(feeds.len(), NODES.len(), "{report:#}");
        for feed in feeds {
            assert_eq!(feed["status"], "valid", "{feed}");
            assert_eq!(feed["checkpoint"]["verified"], true, "{feed}");
        }
    }
    // One event is proved under the key in force for it: before the
    // transition under the old key and certificate, after it the new.
    let t = moved_at["b"];
    prove_and_check(&net, "a", "b", t - 1);
    prove_and_check(&net, "a", "b", t + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transition_without_its_authorization_is_refused_and_changes_nothing() {
    let net = Net::mesh(&["a", "b"]);
    let cluster = Publishing::start(&net, &["a", "b"]).await;
    let keys = net.keys();
    let a_cert = keys.join("a.crt");
    let saved_key = std::fs::read(keys.join("a.key")).unwrap();
    let saved_cert = std::fs::read(&a_cert).unwrap();
    let restore = || {
        std::fs::write(keys.join("a.key"), &saved_key).unwrap();
        std::fs::write(&a_cert, &saved_cert).unwrap();
        let _ = std::fs::remove_file(transition_path(&a_cert));
    };
    let first = cluster.nodes.read().await["a"]
        .proclaim("note", b"a", vec![])
        .await
        .expect("a proclaims");
    cluster.wait_for("b", "a", first.seq).await;
    // Signed by a stranger, by the new key alone, a recovery signed by the
    // old key; or no authorization at all.
    let stranger = SigningKey::from_bytes(&[42; 32]);
    let cases: [(&str, Option<(TransitionKind, SigningKey)>); 3] = [
        (
            "signed by a stranger",
            Some((TransitionKind::Rotation, stranger)),
        ),
        (
            "a recovery signed by the old key",
            Some((TransitionKind::Recovery, key_of(&net, "a.key"))),
        ),
        ("without an authorization", None),
    ];
    for (what, authorization) in cases {
        match authorization {
            Some((kind, signer)) => new_key_for(&net, "a", kind, &signer),
            None => {
                new_key_for(&net, "a", TransitionKind::Rotation, &key_of(&net, "a.key"));
                std::fs::remove_file(transition_path(&a_cert)).unwrap();
            }
        }
        let e = match cluster.nodes.read().await["a"].reload().await {
            Ok(report) => panic!("{what}: the reload must be refused: {report:?}"),
            Err(e) => e,
        };
        let e = e.to_string();
        assert!(e.contains("nothing changed"), "{what}: {e}");
        restore();
        // The node goes on under its key; b takes what it publishes.
        let receipt = cluster.nodes.read().await["a"]
            .proclaim("note", b"still a", vec![])
            .await
            .unwrap_or_else(|e| panic!("{what}: a proclaims: {e}"));
        cluster.wait_for("b", "a", receipt.seq).await;
        assert!(transitions(cluster.nodes.read().await["b"].log(), "a").is_empty());
    }
    cluster.shutdown().await;

    // A node does not start on a new key without the authorization.
    new_key_for(&net, "a", TransitionKind::Rotation, &key_of(&net, "a.key"));
    std::fs::remove_file(transition_path(&a_cert)).unwrap();
    let e = Node::start(&net.config("a"))
        .await
        .err()
        .expect("a node on another key without authorization must not start");
    assert!(e.to_string().contains("keygen rotate"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recovery_by_the_ca_carries_the_feed_past_a_stolen_keys_cut_off() {
    let net = Net::mesh(&NODES);
    let cluster = Publishing::start(&net, &NODES).await;
    let mut owned = 0;
    for i in 0..5 {
        owned = cluster.nodes.read().await["c"]
            .proclaim("donation", format!("owned {i}").as_bytes(), vec![])
            .await
            .unwrap()
            .seq;
    }
    for at in ["a", "b"] {
        cluster.wait_for(at, "c", owned).await;
    }
    // c's key is stolen: revoked from the next sequence number on. The
    // CA (offline) authorizes c's new key; a and b learn of the revocation.
    let keys = net.keys();
    let cutoff = herald::core::cert::Cutoff {
        from_seq: Some(owned + 1),
        from_us: None,
    };
    herald::identity::revoke_with_status(&keys, "c", Some(cutoff)).expect("revoke");
    let revoked = keys.join("revoked.toml");
    for name in NODES {
        net.edit(name, |c| c.revoked = Some(revoked.clone()));
    }
    for at in ["a", "b"] {
        cluster.nodes.read().await[at]
            .reload()
            .await
            .unwrap_or_else(|e| panic!("{at} reloads: {e}"));
    }
    herald::identity::recover_node_key(&keys, "c", 300, None).expect("keygen recover");
    let report = cluster.nodes.read().await["c"]
        .reload()
        .await
        .expect("c takes its new key");
    let at = report.transition_seq.expect("a recovery transition");
    assert_eq!(at, owned + 1, "the recovery stands at the cut-off");
    let mut last = at;
    for i in 0..5 {
        last = cluster.nodes.read().await["c"]
            .proclaim("donation", format!("recovered {i}").as_bytes(), vec![])
            .await
            .expect("c proclaims under its new key")
            .seq;
    }
    for peer in ["a", "b"] {
        cluster.wait_for(peer, "c", last).await;
    }
    cluster.shutdown().await;
    // The export verifies with the CA and the revocation list: the events
    // before the cut-off under the stolen key's certificate, the recovery
    // and what follows under the new one.
    let report = export_and_verify(&net, "a", &["--revoked", s(&revoked)]);
    assert_eq!(report["valid"], true, "{report:#}");
    let c = report["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["service"] == "c")
        .expect("feed c")
        .clone();
    assert_eq!(c["status"], "valid", "{c}");
    assert_eq!(c["events"], last + 1, "{c}");
}

#[test]
fn a_node_killed_around_its_transition_starts_again_on_one_key() {
    let net = Net::mesh(&["a", "b"]);
    let bin = Path::new(common::herald_bin());
    let log_a = net.path().join("a.log");
    let log_b = net.path().join("b.log");
    let mut b = common::spawn_node(bin, &net.config_path("b"), &log_b);
    for round in 0..3u64 {
        let mut a = common::spawn_node(bin, &net.config_path("a"), &log_a);
        publish(&net, "a", &format!("before {round}"));
        let keys = net.keys();
        assert_ok(&herald(&[
            "keygen",
            "rotate",
            "--dir",
            s(&keys),
            "--name",
            "a",
        ]));
        // Ask for the reload and kill the node a few milliseconds later:
        // before, during or after the transition's commit.
        let _ = Command::new("kill")
            .args(["-HUP", &a.id().to_string()])
            .status();
        std::thread::sleep(Duration::from_millis(round * 15));
        a.kill().expect("SIGKILL");
        a.wait().expect("reaped");
        // It starts again (finishing the transition if it had not), and
        // appends under its new key.
        let mut a = common::spawn_node(bin, &net.config_path("a"), &log_a);
        publish(&net, "a", &format!("after {round}"));
        a.kill().expect("SIGKILL");
        a.wait().expect("reaped");
        // The node runs on the new key: the old one may go (the runbook's
        // step before the next rotation).
        std::fs::remove_file(herald::identity::previous_key_path(&keys, "a")).expect("rm");
    }
    b.kill().expect("stop b");
    b.wait().expect("reaped");
    // Three transitions, one per round, and the feed verifies whole.
    let report = export_and_verify(&net, "a", &[]);
    assert_eq!(report["valid"], true, "{report:#}");
    let log = herald::store::Log::open(&net.config("a")).expect("open a");
    let moved = transitions(&log, "a");
    assert_eq!(moved.len(), 3, "one transition per round");
    log.close();
    // The stopped node's status, read from its store, shows the feed on the
    // key of a's current certificate and where it moved.
    let out = herald(&["status", "--config", s(&net.config_path("a")), "--json"]);
    let status: serde_json::Value = serde_json::from_str(&assert_ok(&out)).expect("JSON");
    let cert = herald::identity::read_cert_pem(&net.keys().join("a.crt")).expect("a.crt");
    let key = net
        .trust()
        .admit_author("a", &cert)
        .expect("admitted")
        .public_key;
    assert_eq!(
        status["feed_key"]["public_key"],
        hex::encode(key),
        "{status}"
    );
    assert_eq!(
        status["feed_key"]["transitions"],
        serde_json::json!(moved),
        "{status}"
    );
    let text = assert_ok(&herald(&["status", "--config", s(&net.config_path("a"))]));
    assert!(
        text.contains(&format!("feed key: {}", hex::encode(key))),
        "{text}"
    );
}

/// Publishes one event through `name`'s running node (waiting for it to
/// answer).
fn publish(net: &Net, name: &str, text: &str) {
    let config = net.config_path(name);
    let data = serde_json::Value::from(text).to_string();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let out = herald(&[
            "publish",
            "--config",
            s(&config),
            "--type",
            "note",
            "--data",
            &data,
        ]);
        if out.status.success() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "publish through {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_that_was_away_catches_up_across_the_transition_through_a_relay() {
    // a — b — c: c learns a's feed from b alone, and only after a moved to
    // its new key, so b must send the events before the transition sealed
    // by the old key's checkpoint the transition carries.
    let net = Net::with_peers(&NODES, |me| match me {
        "a" => vec!["b".into()],
        "b" => vec!["a".into(), "c".into()],
        _ => vec!["b".into()],
    });
    let cluster = Publishing::start(&net, &["a", "b"]).await;
    let publish = |n: u64, what: &'static str| {
        let cluster = Arc::clone(&cluster);
        async move {
            let mut last = 0;
            for i in 0..n {
                last = cluster.nodes.read().await["a"]
                    .proclaim("note", format!("{what} {i}").as_bytes(), vec![])
                    .await
                    .expect("a proclaims")
                    .seq;
            }
            last
        }
    };
    publish(30, "before").await;
    let old = key_of(&net, "a.key");
    new_key_for(&net, "a", TransitionKind::Rotation, &old);
    let moved = cluster.nodes.read().await["a"]
        .reload()
        .await
        .expect("a reloads")
        .transition_seq
        .expect("a transition");
    let last = publish(30, "after").await;
    cluster.wait_for("b", "a", last).await;
    let c = Node::start(&net.config("c")).await.expect("start c");
    cluster.nodes.write().await.insert("c".into(), c);
    cluster.wait_for("c", "a", last).await;
    assert_eq!(
        transitions(cluster.nodes.read().await["c"].log(), "a"),
        vec![moved]
    );
    cluster.shutdown().await;
    let report = export_and_verify(&net, "c", &[]);
    assert_eq!(report["valid"], true, "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_to_a_certificate_the_ca_does_not_admit_is_refused() {
    let net = Net::mesh(&["a", "b"]);
    let cluster = Publishing::start(&net, &["a", "b"]).await;
    let keys = net.keys();
    let (a_key, a_cert) = (keys.join("a.key"), keys.join("a.crt"));
    let saved = (
        std::fs::read(&a_key).unwrap(),
        std::fs::read(&a_cert).unwrap(),
    );
    let old = key_of(&net, "a.key");
    // Puts `key` and `cert` in a's place with an authorization for them
    // signed by a's key: only the certificate is wrong.
    let install = |key: &[u8], cert: &[u8]| {
        std::fs::write(&a_key, key).unwrap();
        std::fs::write(&a_cert, cert).unwrap();
        let der = herald::identity::read_cert_pem(&a_cert).unwrap();
        let authorization = TransitionAuthorization {
            kind: TransitionKind::Rotation,
            service: "a".into(),
            cert_sha256: cert_digest(&der),
            signature: sign_authorization(TransitionKind::Rotation, "a", &der, &old),
        };
        std::fs::write(transition_path(&a_cert), authorization.to_text()).unwrap();
    };
    // Another service's certificate, one from another cluster's CA, and a
    // new certificate for a that is already revoked.
    let foreign = tempfile::tempdir().unwrap();
    herald::config::init_cluster(foreign.path(), &["a".to_string()], 17600, 30, false).unwrap();
    let foreign_keys = foreign.path().join("keys");
    let now = herald::clock::now_us();
    let day = 86_400_000_000;
    let revoked_dir = tempfile::tempdir().unwrap();
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(keys.join(f), revoked_dir.path().join(f)).unwrap();
    }
    herald::identity::issue_node_with_validity(revoked_dir.path(), "a", now - day, now + day, true)
        .unwrap();
    herald::identity::revoke_with_status(revoked_dir.path(), "a", None).unwrap();
    std::fs::copy(
        revoked_dir.path().join("revoked.toml"),
        keys.join("revoked.toml"),
    )
    .unwrap();
    net.edit("a", |c| c.revoked = Some(keys.join("revoked.toml")));
    let read = |dir: &Path, f: &str| std::fs::read(dir.join(f)).unwrap();
    let cases = [
        (
            "another service's",
            read(&keys, "b.key"),
            read(&keys, "b.crt"),
            "b",
        ),
        (
            "another CA's",
            read(&foreign_keys, "a.key"),
            read(&foreign_keys, "a.crt"),
            "CA",
        ),
        (
            "a revoked",
            read(revoked_dir.path(), "a.key"),
            read(revoked_dir.path(), "a.crt"),
            "revoked",
        ),
    ];
    let first = cluster.nodes.read().await["a"]
        .proclaim("note", b"a", vec![])
        .await
        .expect("a proclaims");
    cluster.wait_for("b", "a", first.seq).await;
    for (what, key, cert, why) in cases {
        install(&key, &cert);
        let e = match cluster.nodes.read().await["a"].reload().await {
            Ok(report) => panic!("{what} certificate: the reload must be refused: {report:?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("nothing changed") && e.contains("a.crt") && e.contains(why),
            "{what} certificate: {e}"
        );
        std::fs::write(&a_key, &saved.0).unwrap();
        std::fs::write(&a_cert, &saved.1).unwrap();
        // The feed is unchanged and goes on under a's key.
        let receipt = cluster.nodes.read().await["a"]
            .proclaim("note", what.as_bytes(), vec![])
            .await
            .expect("a proclaims");
        cluster.wait_for("b", "a", receipt.seq).await;
        assert!(transitions(cluster.nodes.read().await["b"].log(), "a").is_empty());
    }
    cluster.shutdown().await;
}
