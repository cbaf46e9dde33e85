//! Live trust updates (issue 15 part 4): a running node rereads its CA,
//! revocation list, certificate and channel keys on `herald reload` or
//! SIGHUP, closes the connections of peers whose certificate is now
//! revoked, refuses bad files without changing anything, takes a renewed
//! certificate (appending the renewal to its feed) and a rotated channel
//! key, all without a restart. Real nodes on 127.0.0.1 (in-process and the
//! real binary), real QUIC/mTLS, real SQLite.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::net::Net;
use herald::core::event::Encryption;
use herald::node::Node;
use serde_json::Value;

/// Longest a revoked peer's connection may stay up after the reload.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);
/// Longest any other condition is waited for.
const WAIT: Duration = Duration::from_secs(60);

fn herald(args: &[&str]) -> Output {
    Command::new(common::herald_bin())
        .args(args)
        .output()
        .expect("run herald")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {} stderr: {}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// Reissues `name`'s certificate (and key) to end in 30 days, so that a
/// renewal (which ends at the CA's end at most, a year after provisioning)
/// lasts longer.
fn short_certificate(net: &Net, name: &str) {
    let now = herald::clock::now_us();
    let day = 86_400_000_000;
    herald::identity::issue_node_with_validity(&net.keys(), name, now - day, now + 30 * day, true)
        .expect("short-lived certificate");
}

async fn start(net: &Net, name: &str) -> Node {
    Node::start(&net.config(name))
        .await
        .unwrap_or_else(|e| panic!("start {name}: {e}"))
}

/// Whether `node` reports a live connection to `peer`, and its last error.
async fn peer_state(node: &Node, peer: &str) -> (bool, Option<String>) {
    let status = node.status().await;
    let p = status
        .peers
        .iter()
        .find(|p| p.name == peer)
        .unwrap_or_else(|| panic!("{} has no peer {peer}", node.service()));
    (p.connected, p.last_error.clone())
}

async fn wait_connected(node: &Node, peer: &str) {
    common::wait_async(
        &format!("{} to connect to {peer}", node.service()),
        WAIT,
        || async {
            match peer_state(node, peer).await {
                (true, _) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

fn head(node: &Node, feed: &str) -> Option<u64> {
    node.log()
        .heads()
        .expect("heads")
        .into_iter()
        .find(|h| h.feed == feed)
        .map(|h| h.seq)
}

async fn wait_for_head(node: &Node, feed: &str, seq: u64) {
    common::wait_async(
        &format!("{} to hold {feed} up to {seq}", node.service()),
        WAIT,
        || async {
            match head(node, feed) {
                Some(h) if h >= seq => Ok(()),
                other => Err(format!("head {other:?}")),
            }
        },
    )
    .await
}

async fn proclaim(node: &Node, what: &str) -> u64 {
    node.proclaim("note", what.as_bytes(), vec![])
        .await
        .unwrap_or_else(|e| panic!("{} proclaims {what}: {e}", node.service()))
        .seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reload_closes_a_revoked_peers_connection_within_seconds() {
    let net = Net::mesh(&["a", "b", "c"]);
    let a = start(&net, "a").await;
    let b = start(&net, "b").await;
    let c = start(&net, "c").await;
    for (node, peer) in [(&a, "b"), (&a, "c"), (&b, "c")] {
        wait_connected(node, peer).await;
    }
    let c_seq = proclaim(&c, "c before revocation").await;
    wait_for_head(&a, "c", c_seq).await;
    wait_for_head(&b, "c", c_seq).await;

    // The operator revokes c in the list a and b read, and reloads them.
    let o = herald(&["keygen", "revoke", "--dir", s(&net.keys()), "--name", "c"]);
    assert_exit(&o, 0);
    let reloaded_at = Instant::now();
    let report_a = a.reload().await.expect("a reloads");
    let report_b = b.reload().await.expect("b reloads");
    assert_eq!(report_a.revoked_entries, 1, "{report_a:?}");
    for report in [&report_a, &report_b] {
        assert!(
            report
                .closed
                .iter()
                .any(|c| c.peer == "c" && c.reason.contains("revoked")),
            "{report:?}"
        );
        assert!(report.closed.iter().all(|c| c.peer == "c"), "{report:?}");
    }
    // Both see c's connection gone within seconds, and say why.
    for node in [&a, &b] {
        common::wait_async(
            &format!("{} to drop c", node.service()),
            CLOSE_WITHIN,
            || async {
                match peer_state(node, "c").await {
                    (false, Some(e)) if e.contains("revoked") => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    }
    assert!(reloaded_at.elapsed() < CLOSE_WITHIN + Duration::from_secs(5));

    // a and b keep replicating with each other.
    let a_seq = proclaim(&a, "a after revocation").await;
    let b_seq = proclaim(&b, "b after revocation").await;
    wait_for_head(&b, "a", a_seq).await;
    wait_for_head(&a, "b", b_seq).await;

    // c cannot get back in: a and b redial it (backoff up to 5 s) and
    // refuse its certificate; its new events reach neither.
    let c_after = proclaim(&c, "c after revocation").await;
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        for node in [&a, &b] {
            let (connected, error) = peer_state(node, "c").await;
            assert!(!connected, "{} reconnected to c: {error:?}", node.service());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(head(&a, "c"), Some(c_seq));
    assert_eq!(head(&b, "c"), Some(c_seq));
    assert!(c_after > c_seq);
    let (_, error) = peer_state(&a, "c").await;
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.to_lowercase().contains("revoked")),
        "a's last error about c: {error:?}"
    );
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_are_refused_naming_the_file_and_nothing_changes() {
    let net = Net::mesh(&["a", "b"]);
    net.edit("a", |c| {
        c.api = Some(herald::config::ApiConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        })
    });
    let a = start(&net, "a").await;
    let b = start(&net, "b").await;
    wait_connected(&a, "b").await;
    let status_before = a.status().await;

    // A malformed revocation list, through `herald reload`: exit 1, the
    // node's answer names the file, the node runs on.
    let revoked = net.keys().join("revoked.toml");
    let good_list = std::fs::read(&revoked).expect("revoked.toml");
    std::fs::write(&revoked, "[[revoked]]\nname = \"b\"\nserail = \"00\"\n").unwrap();
    let config_a = net.config_path("a");
    let o = herald(&["reload", "--config", s(&config_a)]);
    assert_exit(&o, 1);
    let err = text(&o.stderr);
    assert!(
        err.contains("revoked.toml") && err.contains("malformed revocation list"),
        "{err}"
    );
    assert!(err.contains("nothing changed"), "{err}");
    let o = herald(&["reload", "--config", s(&config_a), "--json"]);
    assert_exit(&o, 1);
    let answer: Value = serde_json::from_slice(&o.stdout).expect("reload JSON");
    assert_eq!(answer["reloaded"], false, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("revoked.toml"),
        "{answer}"
    );
    std::fs::write(&revoked, &good_list).unwrap();

    // A malformed CA file: refused naming it.
    let ca = net.ca();
    let good_ca = std::fs::read(&ca).expect("ca.crt");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = a
        .reload()
        .await
        .expect_err("a malformed CA file is refused");
    let message = e.to_string();
    assert!(
        message.contains("ca.crt") && message.contains("nothing changed"),
        "{message}"
    );
    std::fs::write(&ca, &good_ca).unwrap();

    // The node kept its state: still connected, same certificate, and
    // still replicating both ways.
    let status_after = a.status().await;
    assert_eq!(status_after.certificate, status_before.certificate);
    assert!(peer_state(&a, "b").await.0, "a kept its connection to b");
    let a_seq = proclaim(&a, "after refused reloads").await;
    let b_seq = proclaim(&b, "b after refused reloads").await;
    wait_for_head(&b, "a", a_seq).await;
    wait_for_head(&a, "b", b_seq).await;

    // With the files repaired, `herald reload` succeeds (exit 0, JSON).
    let o = herald(&["reload", "--config", s(&config_a), "--json"]);
    assert_exit(&o, 0);
    let answer: Value = serde_json::from_slice(&o.stdout).expect("reload JSON");
    assert_eq!(answer["reloaded"], true, "{answer}");
    assert_eq!(answer["report"]["service"], "a", "{answer}");
    assert_eq!(
        answer["report"]["closed"],
        serde_json::json!([]),
        "{answer}"
    );
    let o = herald(&["reload", "--config", s(&config_a)]);
    assert_exit(&o, 0);
    assert!(
        text(&o.stdout).contains("node a reloaded"),
        "{}",
        text(&o.stdout)
    );
    // The HTTP API's local operator may ask too: 422 naming a bad file,
    // 200 with the report once it is good.
    if let Some(api) = a.api_addr() {
        let client = reqwest::Client::new();
        let url = format!("http://{api}/v1/reload");
        std::fs::write(&revoked, "not toml [[[").unwrap();
        let refused = client.post(&url).send().await.expect("POST /v1/reload");
        assert_eq!(refused.status(), 422);
        let body: Value = refused.json().await.expect("error JSON");
        assert_eq!(body["error"]["code"], "reload_refused", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("revoked.toml"),
            "{body}"
        );
        std::fs::write(&revoked, &good_list).unwrap();
        let ok = client.post(&url).send().await.expect("POST /v1/reload");
        assert_eq!(ok.status(), 200);
        let report: Value = ok.json().await.expect("report JSON");
        assert_eq!(report["service"], "a", "{report}");
    } else {
        panic!("a has no HTTP API");
    }
    // A node that is not running cannot be asked: exit 2.
    b.shutdown().await;
    let o = herald(&["reload", "--config", s(&net.config_path("b"))]);
    assert_exit(&o, 2);
    assert!(
        text(&o.stderr).contains("not running"),
        "{}",
        text(&o.stderr)
    );
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_channel_key_is_used_after_reload_and_old_events_still_read() {
    let net = Net::mesh(&["a", "b"]);
    let a = start(&net, "a").await;
    let b = start(&net, "b").await;
    let config = net.config("a");
    let channel = config.default_channel.clone();
    let old_seq = proclaim(&a, "under the first key").await;

    let o = herald(&[
        "keygen",
        "channel",
        "--dir",
        s(&net.keys()),
        "--name",
        &channel,
        "--rotate",
    ]);
    assert_exit(&o, 0);
    let report = a.reload().await.expect("a reloads");
    assert_eq!(report.channels.get(&channel), Some(&2), "{report:?}");
    let new_seq = proclaim(&a, "under the second key").await;

    let events = a.log().read("a", old_seq..=new_seq).expect("read a");
    let key_of = |seq: u64| {
        let e = events.iter().find(|e| e.header.seq == seq).expect("event");
        match &e.header.payload.encryption {
            Encryption::XChaCha20Poly1305 { key_id, .. } => *key_id,
            Encryption::Plain => panic!("event {seq} is not encrypted"),
        }
    };
    let keys = a.log().channel_keys();
    assert_eq!(keys.len(), 2, "both generations held");
    assert_eq!(
        key_of(old_seq),
        keys[0].id(),
        "the old event stays under the old key"
    );
    assert_eq!(
        key_of(new_seq),
        keys[1].id(),
        "a new event uses the newest key"
    );
    // The node reads both generations.
    for (seq, payload) in [
        (old_seq, "under the first key"),
        (new_seq, "under the second key"),
    ] {
        let e = events.iter().find(|e| e.header.seq == seq).unwrap();
        let json = herald::cli::log::event_json(e, &keys);
        assert!(json.to_string().contains(payload), "{json}");
    }
    // The new event replicates (b verifies it; b reads it once reloaded).
    wait_for_head(&b, "a", new_seq).await;
    b.reload().await.expect("b reloads");
    let at_b = b.log().read("a", new_seq..=new_seq).expect("read at b");
    let json = herald::cli::log::event_json(&at_b[0], &b.log().channel_keys());
    assert!(json.to_string().contains("under the second key"), "{json}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_appended_on_reload_and_peers_accept_it() {
    let net = Net::mesh(&["a", "b"]);
    short_certificate(&net, "a");
    let a = start(&net, "a").await;
    let b = start(&net, "b").await;
    let before = proclaim(&a, "before renewal").await;
    wait_for_head(&b, "a", before).await;
    let not_after_before = a.log().cert_not_after_us();

    let o = herald(&["keygen", "renew", "--dir", s(&net.keys()), "--name", "a"]);
    assert_exit(&o, 0);
    let report = a.reload().await.expect("a reloads its renewed certificate");
    let renewal = report.renewal_seq.expect("a renewal event was appended");
    assert_eq!(renewal, before + 1);
    assert!(a.log().cert_not_after_us() > not_after_before);
    let status = a.status().await;
    assert_eq!(
        status.certificate.expect("certificate status").not_after_us,
        a.log().cert_not_after_us()
    );
    let renewed = a.log().read("a", renewal..=renewal).expect("read renewal");
    assert_eq!(renewed[0].header.event_type, "herald.certificate");
    // A second reload of the same certificate appends nothing.
    let again = a.reload().await.expect("a reloads again");
    assert_eq!(again.renewal_seq, None);
    // b accepts the renewal and what follows it.
    let after = proclaim(&a, "after renewal").await;
    assert_eq!(after, renewal + 1);
    wait_for_head(&b, "a", after).await;
    // New handshakes present the renewed certificate: b reconnects after a
    // restart of b and keeps receiving.
    b.shutdown().await;
    let b = start(&net, "b").await;
    wait_connected(&b, "a").await;
    let later = proclaim(&a, "after b restarted").await;
    wait_for_head(&b, "a", later).await;
    // Every export verifies with the CA alone.
    let export = net.path().join("b.hrld");
    assert_exit(
        &herald(&[
            "export",
            "--config",
            s(&net.config_path("b")),
            "--out",
            s(&export),
        ]),
        0,
    );
    a.shutdown().await;
    b.shutdown().await;
    let o = herald(&["verify", s(&export), "--ca", s(&net.ca()), "--json"]);
    assert_exit(&o, 0);
}

#[test]
fn sighup_makes_a_running_node_reload() {
    let net = Net::mesh(&["a"]);
    short_certificate(&net, "a");
    let log = net.path().join("a.log");
    let config = net.config_path("a");
    let mut child = common::spawn_node(Path::new(common::herald_bin()), &config, &log);
    let status = |child: &mut std::process::Child| -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let o = herald(&["status", "--config", s(&config), "--json"]);
            let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
            if v["running"] == true {
                return v;
            }
            if let Ok(Some(exit)) = child.try_wait() {
                panic!(
                    "node exited {exit}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "node a did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let before = status(&mut child)["certificate"]["not_after_us"].clone();
    let o = herald(&["keygen", "renew", "--dir", s(&net.keys()), "--name", "a"]);
    assert_exit(&o, 0);
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(hup.success());
    let deadline = Instant::now() + WAIT;
    loop {
        let now = status(&mut child)["certificate"]["not_after_us"].clone();
        if now != before {
            assert!(now.as_u64() > before.as_u64(), "{before} -> {now}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("SIGHUP"), "{logged}");
    assert!(logged.contains("reloaded the CA"), "{logged}");
    // Still running, and stops cleanly on SIGTERM.
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(term.success());
    let exit = child.wait().expect("wait for a");
    assert!(exit.success(), "a exited {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_certificate_expired_while_connected_is_dropped() {
    let net = Net::mesh(&["a", "b"]);
    // b's certificate ends a few seconds from now.
    let now = herald::clock::now_us();
    let ends = now + 10_000_000;
    herald::identity::issue_node_with_validity(&net.keys(), "b", now - 3_600_000_000, ends, true)
        .expect("short-lived certificate for b");
    let a = start(&net, "a").await;
    let b = start(&net, "b").await;
    wait_connected(&a, "b").await;
    assert!(
        herald::clock::now_us() < ends,
        "the machine was too slow: b's certificate expired before it connected"
    );
    let wait_us =
        (ends / 1_000_000 * 1_000_000 + 1_500_000).saturating_sub(herald::clock::now_us());
    tokio::time::sleep(Duration::from_micros(wait_us)).await;
    // Expiry is checked on live connections too (every 60 s, and on a
    // reload, which runs the same check now).
    let report = a.reload().await.expect("a reloads");
    assert!(
        report
            .closed
            .iter()
            .any(|c| c.peer == "b" && c.reason.contains("expired")),
        "{report:?}"
    );
    common::wait_async("a to drop b", CLOSE_WITHIN, || async {
        match peer_state(&a, "b").await {
            (false, Some(e)) if e.contains("expired") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}
