//! "A proclaim that returned a receipt survives kill -9 at any moment": a
//! child process proclaims and prints receipts as each becomes durable; we
//! SIGKILL it mid-stream, reopen the log, and look for every receipt.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, herald_bin};
use herald::audit::verify::{AuditOptions, audit_data_dir};
use herald::identity::TrustAnchor;

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
