//! The binary as a user runs it: init, publish, log, export, verify, with
//! good and bad input, checking exit codes, output and what is written.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::herald_bin;

fn herald(args: &[&str]) -> Output {
    Command::new(herald_bin())
        .args(args)
        .output()
        .expect("run herald")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn init(dir: &Path) {
    let o = herald(&["init", "--dir", dir.to_str().unwrap(), "--nodes", "a,b"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

fn path(dir: &Path, rel: &str) -> String {
    dir.join(rel).to_string_lossy().into_owned()
}

#[test]
fn publish_log_export_verify_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init(dir);
    let config = path(dir, "a.toml");
    let o = herald(&[
        "publish",
        "--config",
        &config,
        "--type",
        "donation.received",
        "--data",
        r#"{"donor":"D-1","amount_cents":2500}"#,
        "--meta",
        "correlation_id=c-9",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let receipt: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(receipt["seq"], 1);
    assert_eq!(receipt["hash"].as_str().unwrap().len(), 64);

    let o = herald(&[
        "publish",
        "--config",
        &config,
        "--type",
        "volunteer.signed_up",
        "--data",
        r#"{"v":1}"#,
        "--count",
        "600",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let seqs: Vec<u64> = stdout(&o)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        seqs,
        (2..=601).collect::<Vec<_>>(),
        "one receipt per event, in order"
    );

    let o = herald(&["log", "--config", &config, "--type", "donation.*", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(
        lines[0]["data"]["donor"], "D-1",
        "decrypted with the channel key"
    );
    assert_eq!(lines[0]["meta"]["correlation_id"], "c-9");
    assert_eq!(lines[0]["channel"], "default");

    let export = path(dir, "a.hrld");
    let o = herald(&["export", "--config", &config, "--out", &export, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(summary["events"], 602);

    let ca = path(dir, "keys/ca.crt");
    let key = path(dir, "keys/channel-default.key");
    let o = herald(&[
        "verify",
        &export,
        "--ca",
        &ca,
        "--channel-key",
        &key,
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let report: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(report["valid"], true);
    assert_eq!(report["feeds"][0]["service"], "a");
    assert_eq!(report["feeds"][0]["head_seq"], 601);
    assert_eq!(report["feeds"][0]["decrypted"], 601);

    // The data directory verifies too.
    let o = herald(&["verify", &path(dir, "data/a"), "--ca", &ca]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("VALID"));

    // A flipped byte: exit 1 and the report names the event.
    let mut bytes = std::fs::read(&export).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    let tampered = path(dir, "tampered.hrld");
    std::fs::write(&tampered, bytes).unwrap();
    let o = herald(&["verify", &tampered, "--ca", &ca]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("problem: feed a seq "),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("INVALID"));

    // Another cluster's CA: every feed is untrusted.
    let other = tempfile::tempdir().unwrap();
    init(other.path());
    let o = herald(&[
        "verify",
        &export,
        "--ca",
        &path(other.path(), "keys/ca.crt"),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(report["feeds"][0]["status"], "untrusted");
    assert_eq!(report["problems"][0]["check"], "certificate");

    // A wrong channel key is reported.
    let wrong_key = path(other.path(), "keys/channel-default.key");
    let o = herald(&[
        "verify",
        &export,
        "--ca",
        &ca,
        "--channel-key",
        &wrong_key,
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("\"check\":\"decrypt\""));

    // Revoking the author makes the export fail verification.
    let o = herald(&[
        "keygen",
        "revoke",
        "--dir",
        &path(dir, "keys"),
        "--name",
        "a",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = herald(&[
        "verify",
        &export,
        "--ca",
        &ca,
        "--revoked",
        &path(dir, "keys/revoked.toml"),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let report: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(report["feeds"][0]["status"], "untrusted");
}

#[test]
fn bad_input_exits_2_with_a_clear_error_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init(dir);
    let config = path(dir, "a.toml");
    let db = dir.join("data/a/herald.db");

    let o = herald(&[
        "publish",
        "--config",
        &config,
        "--type",
        "t.x",
        "--data",
        "{not json",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--data is not valid JSON"),
        "{}",
        stderr(&o)
    );
    assert!(!db.exists(), "invalid JSON wrote nothing");

    let big = format!(
        "\"{}\"",
        "x".repeat(herald::core::limits::PAYLOAD_PLAINTEXT_BYTES_MAX + 1)
    );
    let big_file = dir.join("big.json");
    std::fs::write(&big_file, &big).unwrap();
    let o = Command::new(herald_bin())
        .args(["publish", "--config", &config, "--type", "t.x", "--data"])
        .arg(&big)
        .output();
    // Some systems refuse an argument this long; either way nothing is written.
    if let Ok(o) = o {
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("over the limit"), "{}", stderr(&o));
    }
    assert!(!db.exists(), "an oversized payload wrote nothing");

    let o = herald(&[
        "publish",
        "--config",
        &config,
        "--type",
        "t.x",
        "--data",
        "{}",
        "--channel",
        "finance",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown channel \"finance\""),
        "{}",
        stderr(&o)
    );

    let o = herald(&[
        "publish",
        "--config",
        &path(dir, "missing.toml"),
        "--type",
        "t.x",
        "--data",
        "{}",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("missing.toml"), "{}", stderr(&o));

    let o = herald(&[
        "verify",
        &path(dir, "nope.hrld"),
        "--ca",
        &path(dir, "keys/ca.crt"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nope.hrld"), "{}", stderr(&o));

    let o = herald(&["verify", &config, "--ca", &path(dir, "keys/ca.crt")]);
    assert_eq!(o.status.code(), Some(2), "a config file is not an export");
    assert!(stderr(&o).contains("not a herald export"), "{}", stderr(&o));

    let o = herald(&["verify", &config, "--ca", &path(dir, "keys/missing-ca.crt")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("missing-ca.crt"), "{}", stderr(&o));

    let o = herald(&[
        "publish", "--config", &config, "--type", "t.x", "--data", "{}", "--meta", "oops",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("key=value"));
}

#[test]
fn truncated_and_reordered_exports_are_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let export = published_export(dir, 20);
    let ca = path(dir, "keys/ca.crt");
    let bytes = std::fs::read(&export).unwrap();
    let records = split_records(&bytes);

    // Cut inside the last record, and cut the end record off entirely.
    for cut in [bytes.len() - 3, records.last().unwrap().0] {
        let p = path(dir, "cut.hrld");
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let o = herald(&["verify", &p, "--ca", &ca, "--json"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stdout(&o).contains("\"check\":\"truncated\""),
            "{}",
            stdout(&o)
        );
    }

    // Swap two event records: both are named.
    let mut swapped = bytes[..8].to_vec();
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.swap(5, 6);
    for i in order {
        let (start, end) = records[i];
        swapped.extend_from_slice(&bytes[start..end]);
    }
    let p = path(dir, "swapped.hrld");
    std::fs::write(&p, &swapped).unwrap();
    let o = herald(&["verify", &p, "--ca", &ca, "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let checks: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["check"].as_str().unwrap())
        .collect();
    // Two out of order, and the feed's format-2 events, authenticated only
    // through the tree over them in order, are not covered by the signed
    // checkpoint any more.
    assert_eq!(
        checks,
        vec!["sequence", "sequence", "signature"],
        "{report}"
    );
    assert_eq!(
        report["problems"][2]["location"], "end of source",
        "{report}"
    );

    // Drop one event record: one sequence problem names the gap.
    let mut dropped = bytes[..8].to_vec();
    for (i, (start, end)) in records.iter().enumerate() {
        if i != 7 {
            dropped.extend_from_slice(&bytes[*start..*end]);
        }
    }
    let p = path(dir, "dropped.hrld");
    std::fs::write(&p, &dropped).unwrap();
    let o = herald(&["verify", &p, "--ca", &ca, "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(report["problems"][0]["check"], "sequence");
    assert_eq!(report["problems"][0]["expected"], "6");
    assert_eq!(report["problems"][0]["found"], "7");
}

#[test]
fn an_old_event_replayed_after_the_head_is_one_problem_and_the_head_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let export = published_export(dir, 5);
    let bytes = std::fs::read(&export).unwrap();
    let records = split_records(&bytes);
    // Records: begin, seq 0..=5, end. Replay seq 2 just before the end record.
    let end = records.len() - 1;
    let mut replayed = bytes[..records[end].0].to_vec();
    replayed.extend_from_slice(&bytes[records[3].0..records[3].1]);
    replayed.extend_from_slice(&bytes[records[end].0..records[end].1]);
    let p = path(dir, "replayed.hrld");
    std::fs::write(&p, &replayed).unwrap();
    let o = herald(&["verify", &p, "--ca", &path(dir, "keys/ca.crt"), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report}");
    assert_eq!(problems[0]["check"], "sequence");
    assert_eq!(problems[0]["seq"], 2);
    assert_eq!(
        report["feeds"][0]["head_seq"], 5,
        "the head is the last verified event"
    );
}

/// Provisions a cluster in `dir`, publishes `count` events on `a` and exports
/// its log; returns the export's path.
fn published_export(dir: &Path, count: u32) -> String {
    init(dir);
    let config = path(dir, "a.toml");
    let count = count.to_string();
    let o = herald(&[
        "publish", "--config", &config, "--type", "t.x", "--data", "{}", "--count", &count,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let export = path(dir, "a.hrld");
    let o = herald(&["export", "--config", &config, "--out", &export]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    export
}

/// (start, end) byte ranges of every record after the magic.
fn split_records(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 8;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        out.push((at, at + 4 + len));
        at += 4 + len;
    }
    out
}
