//! Proof files and export format 2, the way an auditor uses them: a real
//! store written through `Log` (or a running cluster), `herald prove` and
//! `herald export` run as binaries, `herald verify` checking the files with
//! the CA alone.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::Cluster;
use common::net::Net;
use common::wait_async;
use herald::audit::proof::{ProofOptions, verify_consistency_proof, verify_inclusion_proof};
use herald::identity::TrustAnchor;
use herald::node::Node;
use serde_json::Value;

fn herald(args: &[&str]) -> Output {
    Command::new(common::herald_bin())
        .args(args)
        .output()
        .expect("run herald")
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Runs `herald ... --json` and returns (exit code, the JSON on stdout).
fn herald_json(args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = herald(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "herald {args:?}: not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().expect("exit code"), json)
}

/// `herald prove --config C ARGS --out FILE`, which must succeed.
fn prove(config: &Path, args: &[&str], out: &Path) {
    let mut all = vec!["prove", "--config", s(config)];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--out", s(out)]);
    let output = herald(&all);
    assert!(
        output.status.success(),
        "herald {all:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A one-node cluster `a` with the genesis and `n` events proclaimed.
fn store_with(n: usize) -> Cluster {
    let cluster = Cluster::new(&["a"]);
    let log = cluster.open("a");
    for i in 0..n {
        log.proclaim(
            "donation.received",
            format!("{{\"i\":{i}}}").as_bytes(),
            vec![],
        )
        .unwrap();
    }
    log.close();
    cluster
}

fn channel_key(cluster: &Cluster) -> PathBuf {
    cluster.keys().join("channel-default.key")
}

#[test]
fn every_event_has_an_inclusion_proof_that_verifies_offline_and_shows_the_event() {
    let cluster = store_with(5);
    let dir = tempfile::tempdir().unwrap();
    let config = cluster.config_path("a");
    for seq in 0..=5u64 {
        let file = dir.path().join(format!("a-{seq}.proof"));
        prove(&config, &["--feed", "a", "--seq", &seq.to_string()], &file);
        let (code, report) = herald_json(&[
            "verify",
            s(&file),
            "--ca",
            s(&cluster.ca()),
            "--channel-key",
            s(&channel_key(&cluster)),
        ]);
        assert_eq!(code, 0, "{report}");
        assert_eq!(report["kind"], "inclusion-proof");
        assert_eq!(report["event"]["feed"], "a");
        assert_eq!(report["event"]["seq"], seq);
        assert_eq!(report["checkpoint"]["size"], 6);
        if seq > 0 {
            assert_eq!(report["event"]["payload"], format!("{{\"i\":{}}}", seq - 1));
        }
    }
    // By id, and without the channel key: the event, its payload unread.
    let (_, by_seq) = herald_json(&[
        "verify",
        s(&dir.path().join("a-3.proof")),
        "--ca",
        s(&cluster.ca()),
    ]);
    assert_eq!(by_seq["event"]["payload"], Value::Null);
    let id = by_seq["event"]["id"].as_str().unwrap().to_string();
    let by_id = dir.path().join("by-id.proof");
    prove(&config, &["--event", &id], &by_id);
    assert_eq!(
        std::fs::read(&by_id).unwrap(),
        std::fs::read(dir.path().join("a-3.proof")).unwrap(),
        "the same event by id and by feed and seq gives the same proof"
    );
    // The text report says what was proved.
    let text = herald(&["verify", s(&by_id), "--ca", s(&cluster.ca())]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(text.status.success(), "{stdout}");
    assert!(stdout.contains("VALID: event a/3"), "{stdout}");
    assert!(stdout.contains("pass --channel-key"), "{stdout}");
}

#[test]
fn every_flipped_bit_of_an_inclusion_proof_fails_verification() {
    let cluster = store_with(3);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p");
    prove(
        &cluster.config_path("a"),
        &["--feed", "a", "--seq", "2"],
        &file,
    );
    let proof = std::fs::read(&file).unwrap();
    let trust = TrustAnchor::load(&cluster.ca(), None).unwrap();
    let options = ProofOptions {
        trust: &trust,
        channel_keys: &[],
        witness_certs: &[],
        witnesses: None,
    };
    verify_inclusion_proof(&proof, &options).expect("the proof verifies as written");
    // Every bit of the file: header, extra (event and certificate), index,
    // hashes, checkpoint text and signature.
    for bit in 0..proof.len() * 8 {
        let mut flipped = proof.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(
            verify_inclusion_proof(&flipped, &options).is_err(),
            "flipping bit {} of byte {} ({:?}) still verifies",
            bit % 8,
            bit / 8,
            proof[bit / 8] as char
        );
    }
}

#[test]
fn a_proof_checked_against_another_ca_fails() {
    let cluster = store_with(2);
    let other = Cluster::new(&["a"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p");
    prove(
        &cluster.config_path("a"),
        &["--feed", "a", "--seq", "1"],
        &file,
    );
    let (code, report) = herald_json(&["verify", s(&file), "--ca", s(&other.ca())]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["valid"], false);
    assert_eq!(report["check"], "certificate");
}

#[test]
fn an_event_beyond_the_latest_checkpoint_is_not_yet_covered() {
    let cluster = Cluster::new(&["a", "b"]);
    let a = cluster.open("a");
    let b = cluster.open("b");
    a.proclaim("t.x", b"{}", vec![]).unwrap();
    let early = a.latest_checkpoint("a").expect("a's checkpoint");
    assert_eq!(early.size, 2);
    a.proclaim("t.x", b"{}", vec![]).unwrap();
    a.proclaim("t.x", b"{}", vec![]).unwrap();
    let (events, _) = common::sealed_feed(&a, "a");
    // A fifth event, so the seal of the four is a consistency proof to a
    // checkpoint b cannot hold yet (it lacks the fifth event).
    a.proclaim("t.x", b"{}", vec![]).unwrap();
    let seal = a
        .seal_for("a", 4)
        .unwrap()
        .expect("a's checkpoint covers 4");
    let report = b
        .ingest_sealed(events, vec![seal], herald::store::IngestPolicy::default())
        .unwrap();
    assert_eq!((report.applied, report.rejected), (4, None));
    a.close();
    let dir = tempfile::tempdir().unwrap();
    let config = cluster.config_path("b");
    // b holds a's four events but no checkpoint of a yet.
    let none = herald(&["prove", "--config", s(&config), "--feed", "a", "--seq", "1"]);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no checkpoint yet"));
    b.accept_checkpoint(early.note.clone().into_bytes())
        .unwrap()
        .expect("a's early checkpoint matches b's copy");
    b.close();
    prove(
        &config,
        &["--feed", "a", "--seq", "1"],
        &dir.path().join("p"),
    );
    let beyond = herald(&["prove", "--config", s(&config), "--feed", "a", "--seq", "3"]);
    assert_eq!(beyond.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&beyond.stderr);
    assert!(
        stderr.contains("not yet covered by a checkpoint"),
        "{stderr}"
    );
}

#[test]
fn consistency_proofs_pass_from_every_old_size_and_fail_against_a_tampered_old_checkpoint() {
    let cluster = Cluster::new(&["a"]);
    let dir = tempfile::tempdir().unwrap();
    let log = cluster.open("a");
    // The note of every size the feed's checkpoint had, as an auditor keeps it.
    let mut notes = vec![PathBuf::new()];
    let keep = |log: &herald::store::Log, notes: &mut Vec<PathBuf>| {
        let cp = log.latest_checkpoint("a").unwrap();
        let path = dir.path().join(format!("old-{}.note", cp.size));
        std::fs::write(&path, &cp.note).unwrap();
        assert_eq!(cp.size as usize, notes.len());
        notes.push(path);
    };
    keep(&log, &mut notes);
    for i in 0..7 {
        log.proclaim("t.x", format!("{i}").as_bytes(), vec![])
            .unwrap();
        keep(&log, &mut notes);
    }
    log.close();
    let n = notes.len() - 1;
    let config = cluster.config_path("a");
    let ca = cluster.ca();
    for old in 1..=n {
        let file = dir.path().join(format!("c-{old}"));
        prove(
            &config,
            &["--feed", "a", "--consistency", &old.to_string()],
            &file,
        );
        let since = s(&notes[old]);
        let (code, report) = herald_json(&["verify", s(&file), "--ca", s(&ca), "--since", since]);
        assert_eq!(code, 0, "from {old}: {report}");
        assert_eq!(report["consistency_checked"], true);
        assert_eq!(
            (
                report["old_size"].as_u64(),
                report["checkpoint"]["size"].as_u64()
            ),
            (Some(old as u64), Some(n as u64))
        );
        // The wrong old checkpoint (another size) is refused.
        let other = s(&notes[if old == 1 { 2 } else { old - 1 }]);
        let (code, report) = herald_json(&["verify", s(&file), "--ca", s(&ca), "--since", other]);
        assert_eq!(code, 1, "{report}");
        assert_eq!(report["check"], "consistency");
    }
    // A tampered old checkpoint: its root changed, or its signature.
    let file = dir.path().join("c-3");
    let old = std::fs::read_to_string(&notes[3]).unwrap();
    let root_line = old.lines().nth(2).unwrap();
    let mut root = root_line.as_bytes().to_vec();
    root[0] = if root[0] == b'A' { b'B' } else { b'A' };
    let tampered_root = old.replacen(root_line, std::str::from_utf8(&root).unwrap(), 1);
    let sig_line = old.lines().last().unwrap();
    let mut sig = sig_line.as_bytes().to_vec();
    let at = sig.len() - 5;
    sig[at] = if sig[at] == b'A' { b'B' } else { b'A' };
    let tampered_sig = old.replacen(sig_line, std::str::from_utf8(&sig).unwrap(), 1);
    for tampered in [tampered_root, tampered_sig] {
        let path = dir.path().join("tampered.note");
        std::fs::write(&path, tampered).unwrap();
        let (code, report) =
            herald_json(&["verify", s(&file), "--ca", s(&ca), "--since", s(&path)]);
        assert_eq!(code, 1, "{report}");
    }
    // Without --since the new checkpoint is checked and the rest is named.
    let out = herald(&["verify", s(&file), "--ca", s(&ca)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("pass that checkpoint with --since"),
        "{stdout}"
    );
    // Library: a flipped bit anywhere in the proof fails with --since.
    let proof = std::fs::read(&file).unwrap();
    let since = std::fs::read(&notes[3]).unwrap();
    let trust = TrustAnchor::load(&ca, None).unwrap();
    let options = ProofOptions {
        trust: &trust,
        channel_keys: &[],
        witness_certs: &[],
        witnesses: None,
    };
    verify_consistency_proof(&proof, Some(&since), &options).expect("valid as written");
    for bit in 0..proof.len() * 8 {
        let mut flipped = proof.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(
            verify_consistency_proof(&flipped, Some(&since), &options).is_err(),
            "bit {bit} of the consistency proof flipped still verifies"
        );
    }
}

/// Two nodes that hold each other's feeds and cosign each other's
/// checkpoints, through the library (`Log::accept_checkpoint`).
fn two_witnessing_nodes() -> Cluster {
    let cluster = Cluster::new(&["a", "b"]);
    let a = cluster.open("a");
    let b = cluster.open("b");
    for i in 0..3 {
        a.proclaim("t.a", format!("{i}").as_bytes(), vec![])
            .unwrap();
        b.proclaim("t.b", format!("{i}").as_bytes(), vec![])
            .unwrap();
    }
    // Each takes the other's feed with its seal, and so holds and cosigns
    // the other's checkpoint; then gets its own back cosigned.
    common::hand_over(&a, &b, "a");
    common::hand_over(&b, &a, "b");
    let note = |log: &herald::store::Log, feed: &str| {
        log.latest_checkpoint(feed)
            .unwrap()
            .note
            .clone()
            .into_bytes()
    };
    b.accept_checkpoint(note(&a, "a")).unwrap().unwrap();
    a.accept_checkpoint(note(&b, "b")).unwrap().unwrap();
    a.accept_checkpoint(note(&b, "a")).unwrap().unwrap();
    b.accept_checkpoint(note(&a, "b")).unwrap().unwrap();
    a.close();
    b.close();
    cluster
}

#[test]
fn export_format_2_carries_checkpoints_and_cosigners_and_witnesses_are_counted() {
    let cluster = two_witnessing_nodes();
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("b.hrld");
    let out = herald(&[
        "export",
        "--config",
        s(&cluster.config_path("b")),
        "--out",
        s(&export),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(&std::fs::read(&export).unwrap()[..8], b"HERALDX2");
    let ca = cluster.ca();
    let (code, report) = herald_json(&["verify", s(&export), "--ca", s(&ca)]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["format"], 2);
    for (feed, witness) in [("a", "b"), ("b", "a")] {
        let f = report["feeds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["service"] == feed)
            .unwrap();
        assert_eq!(f["checkpoint"]["size"], 4, "{f}");
        assert_eq!(f["checkpoint"]["verified"], true);
        assert_eq!(f["checkpoint"]["cosigners"], serde_json::json!([witness]));
    }
    let (code, _) = herald_json(&["verify", s(&export), "--ca", s(&ca), "--witnesses", "1"]);
    assert_eq!(code, 0);
    let (code, report) = herald_json(&["verify", s(&export), "--ca", s(&ca), "--witnesses", "2"]);
    assert_eq!(code, 1);
    let short: Vec<&Value> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["check"] == "witnesses")
        .collect();
    assert_eq!(short.len(), 2, "both feeds are named: {report}");
    // The data directory gives the same checkpoint verdicts.
    let data = cluster.config("b").data_dir;
    let (code, dir_report) = herald_json(&["verify", s(&data), "--ca", s(&ca), "--witnesses", "1"]);
    assert_eq!(code, 0, "{dir_report}");
    // A proof from b's store counts a's cosignature when a's cert is given.
    let proof = dir.path().join("p");
    prove(
        &cluster.config_path("b"),
        &["--feed", "b", "--seq", "2"],
        &proof,
    );
    let a_cert = cluster.keys().join("a.crt");
    let args = [
        "verify",
        s(&proof),
        "--ca",
        s(&ca),
        "--witness-cert",
        s(&a_cert),
    ];
    let (code, report) = herald_json(&[&args[..], &["--witnesses", "1"]].concat());
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["checkpoint"]["cosigners"], serde_json::json!(["a"]));
    let (code, report) = herald_json(&[&args[..], &["--witnesses", "2"]].concat());
    assert_eq!((code, report["check"].as_str()), (1, Some("witnesses")));
}

#[test]
fn a_format_1_export_still_verifies_and_says_so() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, report) = herald_json(&[
        "verify",
        s(&root.join("tests/vectors/valid.hrld")),
        "--ca",
        s(&root.join("tests/vectors/keys/ca.crt")),
    ]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["format"], 1);
    let text = herald(&[
        "verify",
        s(&root.join("tests/vectors/valid.hrld")),
        "--ca",
        s(&root.join("tests/vectors/keys/ca.crt")),
    ]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("(format 1, 11 events"));
}

/// Longest the cluster may take to cosign every checkpoint.
const CONVERGE: Duration = Duration::from_secs(30);

// Three real nodes over QUIC: every feed ends up cosigned by the two other
// nodes, so an export passes `--witnesses 2` and fails `--witnesses 3`, and
// a proof counts the cosignatures of the witness certificates it is given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witnesses_on_a_real_cluster_pass_at_two_and_fail_at_three() {
    let names = ["node-a", "node-b", "node-c"];
    let net = Net::mesh(&names);
    let mut nodes = Vec::new();
    for name in names {
        nodes.push(Node::start(&net.config(name)).await.expect("start"));
    }
    for node in &nodes {
        for i in 0..3 {
            node.proclaim("witness.test", format!("{{\"i\":{i}}}").as_bytes(), vec![])
                .await
                .expect("proclaim");
        }
    }
    let a = &nodes[0];
    let cluster = a.log().cluster().to_string();
    for feed in names {
        wait_async(
            &format!("node-a's checkpoint of {feed} cosigned twice"),
            CONVERGE,
            || async {
                match a.log().latest_checkpoint(feed) {
                    Some(cp) if cp.size == 4 && cp.cosigners(&cluster).len() == 2 => Ok(()),
                    Some(cp) => Err(format!("size {} by {:?}", cp.size, cp.cosigners(&cluster))),
                    None => Err("none".into()),
                }
            },
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("a.hrld");
    let config = net.config_path("node-a");
    let out = herald(&["export", "--config", s(&config), "--out", s(&export)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let proof = dir.path().join("p");
    prove(&config, &["--feed", "node-b", "--seq", "3"], &proof);
    for node in nodes {
        node.shutdown().await;
    }
    let ca = net.ca();
    let (code, report) = herald_json(&["verify", s(&export), "--ca", s(&ca), "--witnesses", "2"]);
    assert_eq!(code, 0, "{report}");
    let (code, report) = herald_json(&["verify", s(&export), "--ca", s(&ca), "--witnesses", "3"]);
    assert_eq!(code, 1);
    let named: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["check"] == "witnesses")
        .filter_map(|p| p["feed"].as_str())
        .collect();
    assert_eq!(named, names, "every feed is under-witnessed at 3: {report}");
    let certs = [net.keys().join("node-a.crt"), net.keys().join("node-c.crt")];
    let base = [
        "verify",
        s(&proof),
        "--ca",
        s(&ca),
        "--witness-cert",
        s(&certs[0]),
        "--witness-cert",
        s(&certs[1]),
        "--witnesses",
    ];
    let (code, report) = herald_json(&[&base[..], &["2"]].concat());
    assert_eq!(code, 0, "{report}");
    let (code, report) = herald_json(&[&base[..], &["3"]].concat());
    assert_eq!(
        (code, report["check"].as_str()),
        (1, Some("witnesses")),
        "{report}"
    );
}
