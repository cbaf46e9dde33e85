//! "A proclaim that returned a receipt survives kill -9 at any moment": a
//! child process proclaims and prints receipts as each becomes durable; we
//! SIGKILL it mid-stream, reopen the log, and look for every receipt.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, herald_bin};
use herald::audit::verify::{AuditOptions, audit_data_dir};
use herald::core::merkle::{self, MemoryTree};
use herald::identity::TrustAnchor;
use herald::store::read_checkpoint;
use herald::store::tree::TileReader;

#[test]
fn every_acknowledged_event_survives_sigkill() {
    let cluster = Cluster::new(&["a"]);
    let config = cluster.config_path("a");
    let mut acknowledged: Vec<(u64, String)> = Vec::new();
    // Kill at several points: early, after a few batches, and later.
    for (round, receipts_before_kill) in [1usize, 700, 2500].into_iter().enumerate() {
        let mut child = Command::new(herald_bin())
            .args(["publish", "--config"])
            .arg(&config)
            .args([
                "--type",
                "crash.test",
                "--data",
                r#"{"round":1}"#,
                "--count",
                "1000000",
                "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn publisher");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        while seen < receipts_before_kill && Instant::now() < deadline {
            let Some(Ok(line)) = lines.next() else { break };
            let v: serde_json::Value = serde_json::from_str(&line).expect("receipt json");
            acknowledged.push((
                v["seq"].as_u64().unwrap(),
                v["hash"].as_str().unwrap().to_string(),
            ));
            seen += 1;
        }
        child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix
        // Receipts already printed before the kill count as acknowledged.
        for line in lines.map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                acknowledged.push((
                    v["seq"].as_u64().unwrap(),
                    v["hash"].as_str().unwrap().to_string(),
                ));
            }
        }
        let _ = child.wait();
        assert!(
            seen >= receipts_before_kill,
            "round {round}: publisher too slow"
        );

        // Before herald touches the store again: the checkpoint covers
        // exactly the stored events (none without its events, no events
        // without a checkpoint) and its root is theirs.
        assert_checkpoint_covers_the_feed(&cluster, round);

        // Reopen: every acknowledged event is there with the same hash.
        let log = cluster.open("a");
        let head = log.heads().unwrap()[0].seq;
        let stored = log.read("a", 0..=head).unwrap();
        for (seq, hash) in &acknowledged {
            let event = stored
                .get(*seq as usize)
                .expect("acknowledged event present");
            assert_eq!(event.header.seq, *seq);
            assert_eq!(
                &hex::encode(event.hash),
                hash,
                "round {round}: seq {seq} changed"
            );
        }
        // And the log continues its chain.
        let next = log.proclaim("crash.after", b"{}", vec![]).unwrap();
        assert_eq!(next.seq, head + 1);
        acknowledged.push((next.seq, hex::encode(next.hash)));
        log.close();
    }
    let options = AuditOptions {
        trust: TrustAnchor::load(&cluster.ca(), None).unwrap(),
        channel_keys: Vec::new(),
        progress: false,
    };
    let report = audit_data_dir(&cluster.config("a").data_dir, &options).unwrap();
    assert!(report.valid, "{:?}", report.problems);
}

/// Reads the killed node's store directly: its own checkpoint has the size
/// of its feed, a root equal to the RFC 6962 root over the stored event
/// hashes (computed here), the same root as the stored tree's, and a valid
/// signature by the node's key.
fn assert_checkpoint_covers_the_feed(cluster: &Cluster, round: usize) {
    let db = cluster.config("a").data_dir.join(herald::store::DB_FILE);
    let conn = rusqlite::Connection::open(&db).unwrap();
    // Each event rebuilt from its row and hashed here.
    let hashes: Vec<[u8; 32]> = herald::store::read_feed_from(&conn, "a", 0..=u64::MAX)
        .unwrap()
        .iter()
        .map(|e| {
            herald::core::codec::event_hash(
                &herald::core::codec::decode_envelope(&e.envelope)
                    .unwrap()
                    .0
                    .header,
            )
        })
        .collect();
    let mut tree = MemoryTree::default();
    for hash in &hashes {
        tree.push(merkle::leaf_hash(hash)).unwrap();
    }
    let checkpoint = read_checkpoint(&conn, "a")
        .unwrap()
        .expect("a checkpoint of the feed");
    assert_eq!(
        checkpoint.size,
        hashes.len() as u64,
        "round {round}: the checkpoint covers exactly the stored events"
    );
    assert_eq!(
        checkpoint.root,
        tree.root(),
        "round {round}: checkpoint root"
    );
    assert_eq!(
        merkle::root_at(&mut TileReader::new(&conn, "a"), checkpoint.size).unwrap(),
        checkpoint.root,
        "round {round}: the stored tree agrees"
    );
    let trust = TrustAnchor::load(&cluster.ca(), None).unwrap();
    let cert = std::fs::read_to_string(cluster.keys().join("a.crt")).unwrap();
    let der = pem::parse(cert).unwrap().into_contents();
    let key = trust.admit_author("a", &der).unwrap().public_key;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key).unwrap();
    let cluster_id = herald::core::checkpoint::cluster_id(&trust.ca_public_key());
    herald::core::checkpoint::open_checkpoint(&cluster_id, checkpoint.note.as_bytes(), &key)
        .expect("the checkpoint is signed by the node's key");
}
