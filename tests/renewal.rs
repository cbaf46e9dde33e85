//! Issue 15, renewal before expiry: a node whose certificate expires while
//! it runs keeps its history valid, stops proclaiming, and after `herald
//! keygen renew` and a restart appends again, with every export verifying
//! against the CA alone. Real nodes on 127.0.0.1 and the real binary.
//!
//! The node reads the wall clock (it has no injected clock), so the
//! certificate is issued with a validity window that ends a few seconds
//! after the test starts; the test waits for that moment, not for a year.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::net::Net;
use herald::identity::{TrustAnchor, read_cert_pem};
use herald::node::Node;

/// How long the short-lived certificate lasts after the test starts: long
/// enough for two nodes to start, replicate and answer `status` on a busy
/// machine, short enough to keep the test quick.
const SHORT_VALIDITY_S: u64 = 20;

fn herald(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .output()
        .expect("run herald")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout: {} stderr: {}",
        String::from_utf8_lossy(&o.stdout),
        stderr(o)
    );
}

fn status_json(config: &Path) -> serde_json::Value {
    let o = herald(&["status", "--config", s(config), "--json"]);
    assert_ok(&o);
    serde_json::from_slice(&o.stdout).expect("status JSON")
}

/// `herald verify PATH --ca CA --json`: exit 0 and `valid: true`.
#[track_caller]
fn assert_verifies(path: &Path, ca: &Path) -> serde_json::Value {
    let o = herald(&["verify", s(path), "--ca", s(ca), "--json"]);
    assert_ok(&o);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("verify JSON");
    assert_eq!(report["valid"], true, "{report}");
    report
}

/// The head sequence number of `feed` at `node`.
fn head(node: &Node, feed: &str) -> Option<u64> {
    node.log()
        .heads()
        .unwrap()
        .into_iter()
        .find(|h| h.feed == feed)
        .map(|h| h.seq)
}

async fn wait_for_head(node: &Node, feed: &str, seq: u64) {
    common::wait_async(
        &format!("{} to hold {feed} up to {seq}", node.service()),
        Duration::from_secs(30),
        || async {
            match head(node, feed) {
                Some(h) if h >= seq => Ok(()),
                other => Err(format!("head {other:?}")),
            }
        },
    )
    .await
}

fn public_key(cert: &Path, ca: &Path) -> [u8; 32] {
    let trust = TrustAnchor::load(ca, None).unwrap();
    let der = read_cert_pem(cert).unwrap();
    trust.admit_author("a", &der).unwrap().public_key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outlives_its_certificate_by_renewal() {
    let net = Net::mesh(&["a", "b"]);
    let keys = net.keys();
    let ca = net.ca();
    let now = herald::clock::now_us();
    // a's certificate began an hour ago and ends SHORT_VALIDITY_S from now.
    let not_after_us = now + SHORT_VALIDITY_S * 1_000_000;
    herald::identity::issue_node_with_validity(&keys, "a", now - 3_600_000_000, not_after_us, true)
        .expect("short-lived certificate for a");
    // X.509 keeps whole seconds.
    let not_after_us = not_after_us / 1_000_000 * 1_000_000;

    let a = Node::start(&net.config("a")).await.expect("start a");
    let b = Node::start(&net.config("b")).await.expect("start b");
    for i in 0..3 {
        a.proclaim("note", format!("before expiry {i}").as_bytes(), vec![])
            .await
            .expect("a proclaims while its certificate is valid");
    }
    let before = head(&a, "a").expect("a's head");
    wait_for_head(&b, "a", before).await;

    // Within 30 days of the end: status warns (running node, JSON and text).
    let status = status_json(&net.config_path("a"));
    let cert = &status["certificate"];
    assert_eq!(cert["not_after_us"], not_after_us, "{status}");
    assert_eq!(cert["days_left"], 0, "{status}");
    let warning = cert["warning"].as_str().expect("a warning");
    assert!(warning.contains("herald keygen renew"), "{warning}");
    assert_eq!(status["ca"]["warning"], serde_json::Value::Null, "{status}");
    assert!(status["ca"]["days_left"].as_i64().unwrap() > 30, "{status}");
    let text = herald(&["status", "--config", s(&net.config_path("a"))]);
    assert_ok(&text);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("certificate: valid until"), "{text}");
    assert!(
        text.contains("WARNING: the certificate of node \"a\" expires"),
        "{text}"
    );
    // b's certificate has a year left: no warning.
    let b_status = status_json(&net.config_path("b"));
    assert_eq!(b_status["certificate"]["warning"], serde_json::Value::Null);

    // The certificate expires while a runs.
    let wait_us = (not_after_us + 1_500_000).saturating_sub(herald::clock::now_us());
    assert!(
        herald::clock::now_us() < not_after_us,
        "the machine was too slow: the certificate expired before the checks above"
    );
    tokio::time::sleep(Duration::from_micros(wait_us)).await;

    // Expired: a refuses to proclaim (every verifier would reject the event)
    // and says what to do.
    let refused = a
        .proclaim("note", b"after expiry", vec![])
        .await
        .expect_err("an expired node must not proclaim");
    let message = refused.to_string();
    assert!(
        message.contains("expired") && message.contains("herald keygen renew"),
        "{message}"
    );
    assert_eq!(head(&a, "a"), Some(before), "nothing was appended");

    // History signed while the certificate was valid stays valid after it
    // expired: b's export (holding a's feed) verifies with the CA alone.
    let export_b = net.path().join("b-after-expiry.hrld");
    assert_ok(&herald(&[
        "export",
        "--config",
        s(&net.config_path("b")),
        "--out",
        s(&export_b),
    ]));
    let report = assert_verifies(&export_b, &ca);
    assert!(report.to_string().contains("\"a\""), "{report}");

    a.shutdown().await;
    // A stopped node's status still reads the expired certificate.
    let status = status_json(&net.config_path("a"));
    assert!(status["certificate"]["days_left"].as_i64().unwrap() < 0);
    assert!(
        status["certificate"]["warning"]
            .as_str()
            .unwrap()
            .contains("expired at"),
        "{status}"
    );
    // And a's own store verifies too.
    assert_verifies(&net.data_dir("a"), &ca);
    // An expired node does not start.
    let error = Node::start(&net.config("a"))
        .await
        .err()
        .expect("a node with an expired certificate must not start");
    assert!(error.to_string().contains("expired"), "{error}");

    // Renew: same key, new certificate; the key file is untouched.
    let key_before = std::fs::read(keys.join("a.key")).unwrap();
    let old_key = public_key(&keys.join("a.crt"), &ca);
    let renew = herald(&[
        "keygen",
        "renew",
        "--dir",
        s(&keys),
        "--name",
        "a",
        "--days",
        "30",
    ]);
    assert_ok(&renew);
    assert!(
        String::from_utf8_lossy(&renew.stdout).contains("a.crt"),
        "names the file it wrote"
    );
    assert_eq!(std::fs::read(keys.join("a.key")).unwrap(), key_before);
    assert_eq!(public_key(&keys.join("a.crt"), &ca), old_key);

    // Restarted with the renewed certificate, a appends again: first the
    // renewal itself, then new events, and b accepts all of them.
    let a = Node::start(&net.config("a")).await.expect("restart a");
    let mut last = 0;
    for i in 0..2 {
        let receipt = common::wait_async("a to proclaim again", Duration::from_secs(30), || {
            let a = &a;
            async move {
                a.proclaim("note", format!("after renewal {i}").as_bytes(), vec![])
                    .await
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        last = receipt.seq;
    }
    assert_eq!(last, before + 3, "renewal event, then two new events");
    wait_for_head(&b, "a", last).await;
    let status = status_json(&net.config_path("a"));
    assert_eq!(status["certificate"]["days_left"], 29, "{status}");
    assert!(
        status["certificate"]["warning"].is_string(),
        "30 days left warns"
    );

    // Both restart: b resumes a's feed under the renewed certificate (it
    // keeps the feed's current one), and a appends no second renewal.
    a.shutdown().await;
    b.shutdown().await;
    let b = Node::start(&net.config("b")).await.expect("restart b");
    let a = Node::start(&net.config("a"))
        .await
        .expect("restart a again");
    let receipt = common::wait_async(
        "a to proclaim after a restart",
        Duration::from_secs(30),
        || {
            let a = &a;
            async move {
                a.proclaim("note", b"after restarts", vec![])
                    .await
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await;
    assert_eq!(receipt.seq, last + 1, "no second renewal");
    wait_for_head(&b, "a", last + 1).await;

    // Every export verifies with the CA alone, across the expiry.
    for node in ["a", "b"] {
        let export = net.path().join(format!("{node}-after-renewal.hrld"));
        assert_ok(&herald(&[
            "export",
            "--config",
            s(&net.config_path(node)),
            "--out",
            s(&export),
        ]));
        assert_verifies(&export, &ca);
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn renew_refuses_clearly_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path();
    assert_ok(&herald(&["keygen", "ca", "--dir", s(keys)]));
    assert_ok(&herald(&[
        "keygen",
        "node",
        "--dir",
        s(keys),
        "--name",
        "a",
    ]));
    let files = |d: &Path| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (p.display().to_string(), std::fs::read(&p).unwrap())
            })
            .collect();
        v.sort();
        v
    };
    let before = files(keys);

    let refused = |args: &[&str], needle: &str| {
        let o = herald(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
        assert_eq!(files(keys), before, "{args:?} changed files");
    };
    // An unknown name.
    refused(
        &["keygen", "renew", "--dir", s(keys), "--name", "zed"],
        "no node named \"zed\"",
    );
    // Out-of-range validity.
    refused(
        &[
            "keygen",
            "renew",
            "--dir",
            s(keys),
            "--name",
            "a",
            "--days",
            "0",
        ],
        "--days 0",
    );
    // A client certificate is not a node certificate.
    assert_ok(&herald(&[
        "keygen",
        "client",
        "--dir",
        s(keys),
        "--name",
        "ops",
    ]));
    let before_client = files(keys);
    let o = herald(&["keygen", "renew", "--dir", s(keys), "--name", "ops"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not a node certificate"),
        "{}",
        stderr(&o)
    );
    assert_eq!(files(keys), before_client);
    std::fs::remove_file(keys.join("ops.crt")).unwrap();
    std::fs::remove_file(keys.join("ops.key")).unwrap();

    // Without the CA key nothing can be signed.
    let elsewhere = tempfile::tempdir().unwrap();
    let aside = elsewhere.path().join("ca.key");
    std::fs::rename(keys.join("ca.key"), &aside).unwrap();
    let o = herald(&["keygen", "renew", "--dir", s(keys), "--name", "a"]);
    std::fs::rename(&aside, keys.join("ca.key")).unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("ca.key"), "{}", stderr(&o));
    assert_eq!(files(keys), before);

    // Without the node's key there is no same key to certify.
    let aside = elsewhere.path().join("a.key");
    std::fs::rename(keys.join("a.key"), &aside).unwrap();
    let o = herald(&["keygen", "renew", "--dir", s(keys), "--name", "a"]);
    std::fs::rename(&aside, keys.join("a.key")).unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("a.key"), "{}", stderr(&o));
    assert_eq!(files(keys), before);

    // The happy path replaces only a.crt.
    let o = herald(&["keygen", "renew", "--dir", s(keys), "--name", "a", "--json"]);
    assert_ok(&o);
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        out["written"][0],
        keys.join("a.crt").display().to_string(),
        "{out}"
    );
    let after = files(keys);
    assert_eq!(after.len(), before.len());
    for ((path, old), (_, new)) in before.iter().zip(&after) {
        let renewed = Path::new(path).file_name() == Some("a.crt".as_ref());
        assert_eq!(old == new, !renewed, "{path}");
    }

    // A revoked key is not renewed: neither with a cut-off (its history
    // stays valid, but the key is no longer its owner's alone) nor
    // outright.
    for cutoff in [&["--from-seq", "3"][..], &[]] {
        let mut args = vec!["keygen", "revoke", "--dir", s(keys), "--name", "a"];
        args.extend_from_slice(cutoff);
        assert_ok(&herald(&args));
        let before = files(keys);
        let o = herald(&["keygen", "renew", "--dir", s(keys), "--name", "a"]);
        assert_eq!(o.status.code(), Some(2), "{cutoff:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("revoked"), "{}", stderr(&o));
        assert_eq!(files(keys), before);
    }
}
