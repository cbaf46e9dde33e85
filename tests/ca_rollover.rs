//! Issue 15, CA rollover: a three-node cluster under CA 1 moves to CA 2
//! while all three publish. `herald keygen ca --rollover` adds CA 2 to the
//! bundle, each node restarts on it, is renewed under CA 2 for the same key
//! (`herald keygen renew --ca-key`) and restarts again (appending its
//! renewal event), then `herald keygen ca --retire 1` retires CA 1 and each
//! node restarts once more. Real nodes on 127.0.0.1 (QUIC, mTLS, SQLite),
//! the real binary for every key operation, export and verification.
//!
//! Nodes pick up new trust files at restart (restarted one at a time, the
//! other two publishing meanwhile).

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
use herald::core::wire::ALPN_CLIENT;
use herald::identity::{RevocationList, TrustAnchor, read_cert_pem};
use herald::net::{self, TlsIdentity};
use herald::node::Node;
use herald::node::client::{ClientRequest, ClientResponse};

const NODES: [&str; 3] = ["a", "b", "c"];

/// Stops `name` and starts it again from its config (so it reloads the CA
/// bundle, its certificate and key), while the others keep publishing;
/// waits until it holds what the others published.
async fn restart(cluster: &Publishing, net: &Net, name: &str) {
    let node = cluster.nodes.write().await.remove(name).expect("running");
    node.shutdown().await;
    // The stopped node's UDP socket closes once its last task lets go of
    // it, which on a busy machine may take a moment after shutdown.
    let node = common::wait_async(
        &format!("{name} to restart"),
        Duration::from_secs(20),
        || async {
            match Node::start(&net.config(name)).await {
                Ok(node) => Ok(Ok(node)),
                Err(e) if e.to_string().contains("Address already in use") => Err(e.to_string()),
                Err(e) => Ok(Err(e)),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("restart {name}: {e}"));
    cluster.nodes.write().await.insert(name.to_string(), node);
    for other in NODES.iter().filter(|n| **n != name) {
        cluster.wait_for(name, other, cluster.last(other)).await;
    }
}

/// The certificate node `name` serves, fetched over a real handshake by a
/// client presenting `client`.
async fn served_certificate(net: &Net, name: &str, client: &TlsIdentity) -> Vec<u8> {
    let endpoint = net::bind_client("127.0.0.1:0".parse().unwrap()).expect("bind");
    let conn = net::connect(&endpoint, net.addrs[name], name, ALPN_CLIENT, client)
        .await
        .unwrap_or_else(|e| panic!("connect to {name}: {e}"));
    let chain = conn
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .expect("the server's certificate chain");
    chain[0].as_ref().to_vec()
}

/// Whether node `name` answers a status request from a client presenting
/// `id` (its own certificate: tools act for the node they talk to).
async fn answers(net: &Net, name: &str, id: &TlsIdentity) -> Result<(), String> {
    let endpoint = net::bind_client("127.0.0.1:0".parse().unwrap()).expect("bind");
    let conn = net::connect(&endpoint, net.addrs[name], name, ALPN_CLIENT, id)
        .await
        .map_err(|e| e.to_string())?;
    match net::open_exchange::<_, ClientResponse>(&conn, &ClientRequest::Status).await {
        Ok((_, _, ClientResponse::Status(_))) => Ok(()),
        Ok((_, _, other)) => Err(format!("answered {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rollover_with_the_cluster_replicating_throughout() {
    let net = Net::mesh(&NODES);
    let keys = net.keys();
    let bundle = net.ca();
    let ca1_only = TrustAnchor::load(&bundle, None).expect("CA 1");
    let cluster_key = ca1_only.ca_public_key();

    let cluster = Publishing::start(&net, &NODES).await;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(
        cluster
            .clone()
            .publish_until(stop.clone(), Duration::from_millis(30)),
    );
    for name in NODES {
        for other in NODES {
            cluster.wait_for(name, other, 3).await;
        }
    }

    // 1. Introduce CA 2: a new key file, its certificate appended to the
    //    bundle every node reads; each node restarts on the new bundle.
    let out = assert_ok(&herald(&["keygen", "ca", "--dir", s(&keys), "--rollover"]));
    assert!(out.contains("CA 2 added"), "{out}");
    let ca2_key = keys.join("ca-2.key");
    assert!(ca2_key.exists() && keys.join("ca-2.crt").exists());
    let two = TrustAnchor::load(&bundle, None).expect("bundle of two");
    assert_eq!(two.cas().len(), 2);
    assert_eq!(two.ca_public_key(), cluster_key, "the cluster keeps its id");
    for name in NODES {
        restart(&cluster, &net, name).await;
    }

    // 2. Re-issue every node under CA 2 for its same key, and restart it:
    //    it appends a renewal event naming its CA 2 certificate.
    //    b's new certificate ends sooner than its CA 1 one: moving to
    //    another CA is recorded all the same.
    for name in NODES {
        let cert = keys.join(format!("{name}.crt"));
        std::fs::copy(&cert, keys.join(format!("{name}-ca1.crt"))).unwrap();
        let days = if name == "b" { "30" } else { "365" };
        assert_ok(&herald(&[
            "keygen",
            "renew",
            "--dir",
            s(&keys),
            "--name",
            name,
            "--ca-key",
            s(&ca2_key),
            "--days",
            days,
        ]));
        restart(&cluster, &net, name).await;
    }
    // Before the retirement, CA 1's certificates still connect.
    let c_old = TlsIdentity::from_files(
        &keys.join("c-ca1.crt"),
        &keys.join("c.key"),
        Arc::new(TrustAnchor::load(&bundle, None).unwrap()),
    )
    .expect("c's CA 1 certificate, before the retirement");
    answers(&net, "c", &c_old)
        .await
        .expect("a CA 1 certificate is served before CA 1 is retired");

    // 3. Retire CA 1, and restart every node on the bundle that says so.
    let out = assert_ok(&herald(&[
        "keygen",
        "ca",
        "--dir",
        s(&keys),
        "--retire",
        "1",
    ]));
    assert!(out.contains("CA 1 retired"), "{out}");
    let retired = TrustAnchor::load(&bundle, None).expect("bundle with CA 1 retired");
    assert!(retired.cas()[0].retired_at_us().is_some());
    assert_eq!(
        retired.ca_public_key(),
        cluster_key,
        "the cluster keeps its id"
    );
    for name in NODES {
        restart(&cluster, &net, name).await;
    }
    // The cluster keeps replicating after the retirement.
    let after: BTreeMap<&str, u64> = NODES.iter().map(|n| (*n, cluster.last(n) + 3)).collect();
    for name in NODES {
        for other in NODES {
            cluster.wait_for(name, other, after[other]).await;
        }
    }

    // Stop publishing; every node converges on every feed in full.
    stop.store(true, Ordering::SeqCst);
    publisher.await.unwrap();
    let errors = cluster.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "every proclaim succeeded: {errors:?}");
    for name in NODES {
        for other in NODES {
            cluster.wait_for(name, other, cluster.last(other)).await;
        }
    }
    {
        let nodes = cluster.nodes.read().await;
        for (name, node) in nodes.iter() {
            let heads = node.log().heads().unwrap();
            for feed in NODES {
                let head = heads.iter().find(|h| h.feed == feed).expect("feed held");
                assert_eq!(head.seq, cluster.last(feed), "{name} holds {feed} exactly");
                assert_eq!(head.status, "active", "{name}'s {feed}");
                // Every event from genesis, with one renewal in it.
                let events = node.log().read(feed, 0..=u64::MAX).unwrap();
                assert_eq!(events.len() as u64, head.seq + 1, "{name}'s {feed}");
                let renewals = events
                    .iter()
                    .filter(|e| e.header.event_type == "herald.certificate")
                    .count();
                assert_eq!(renewals, 1, "{name}'s {feed}: one renewal, to CA 2");
            }
        }
    }

    // The connections use CA 2 certificates: what each node serves is
    // admitted by CA 2 alone.
    let ca2_only = TrustAnchor::from_ca_der(
        &read_cert_pem(&keys.join("ca-2.crt")).unwrap(),
        RevocationList::empty(),
    )
    .unwrap();
    assert_ok(&herald(&[
        "keygen",
        "client",
        "--dir",
        s(&keys),
        "--name",
        "ops",
        "--ca-key",
        s(&ca2_key),
    ]));
    let ops = net.tls("ops");
    for name in NODES {
        let der = served_certificate(&net, name, &ops).await;
        ca2_only
            .admit_author(name, &der)
            .unwrap_or_else(|e| panic!("{name} serves a CA 2 certificate: {e}"));
        assert!(ca1_only.admit_author(name, &der).is_err());
    }

    // A node still on its CA 1 certificate is refused after the retirement;
    // the same key on its CA 2 certificate is served.
    let refused = answers(&net, "c", &c_old).await;
    assert!(
        refused.is_err(),
        "a retired CA's certificate was served: {refused:?}"
    );
    answers(&net, "c", &net.tls("c"))
        .await
        .expect("c's CA 2 certificate is served");
    // Nor does a node start on one.
    std::fs::copy(keys.join("c.crt"), keys.join("c-ca2.crt")).unwrap();
    std::fs::copy(keys.join("c-ca1.crt"), keys.join("c.crt")).unwrap();
    let e = herald::node::Node::start(&net.config("c"))
        .await
        .err()
        .expect("a node on a retired CA's certificate must not start");
    assert!(e.to_string().contains("retired"), "{e}");
    std::fs::copy(keys.join("c-ca2.crt"), keys.join("c.crt")).unwrap();

    // Every export verifies against the bundle, every feed from genesis,
    // checkpoints included (the cluster id did not change).
    let nodes = std::mem::take(&mut *cluster.nodes.write().await);
    for (_, node) in nodes {
        node.shutdown().await;
    }
    for name in NODES {
        let export = net.path().join(format!("{name}.hrld"));
        assert_ok(&herald(&[
            "export",
            "--config",
            s(&net.config_path(name)),
            "--out",
            s(&export),
        ]));
        let out = herald(&["verify", s(&export), "--ca", s(&bundle), "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verify JSON");
        assert_eq!(out.status.code(), Some(0), "{report}");
        assert_eq!(report["valid"], true, "{report}");
        let feeds = report["feeds"].as_array().expect("feeds");
        assert_eq!(feeds.len(), NODES.len(), "{report}");
        for feed in feeds {
            assert_eq!(feed["status"], "valid", "{feed}");
            assert_eq!(feed["checkpoint"]["verified"], true, "{feed}");
        }
        // Against CA 1 alone, the CA 2 renewals cannot be admitted.
        let ca1_file = net.path().join("ca1-only.crt");
        std::fs::write(
            &ca1_file,
            herald::identity::pem::cert_pem(ca1_only.ca_der()),
        )
        .unwrap();
        let out = herald(&["verify", s(&export), "--ca", s(&ca1_file), "--json"]);
        assert_ne!(out.status.code(), Some(0), "CA 1 alone does not verify it");
    }
}

/// Every file of `dir`, with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (p.display().to_string(), std::fs::read(&p).unwrap())
        })
        .collect()
}

#[track_caller]
fn assert_refused(args: &[&str], needle: &str, dir: &Path) {
    let before = files(dir);
    let o = herald(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
    assert_eq!(files(dir), before, "{args:?} changed files");
}

#[test]
fn keygen_rolls_the_ca_on_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path();
    assert_ok(&herald(&["keygen", "ca", "--dir", s(keys)]));
    assert_ok(&herald(&[
        "keygen",
        "node",
        "--dir",
        s(keys),
        "--name",
        "a",
    ]));
    // Nothing to retire in favour of: the only CA stays.
    assert_refused(
        &["keygen", "ca", "--dir", s(keys), "--retire", "1"],
        "only current CA",
        keys,
    );

    let out = assert_ok(&herald(&[
        "keygen",
        "ca",
        "--dir",
        s(keys),
        "--rollover",
        "--json",
    ]));
    let rolled: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rolled["ca"], 2, "{rolled}");
    let written: Vec<&str> = rolled["written"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        written,
        [
            s(&keys.join("ca-2.key")),
            s(&keys.join("ca-2.crt")),
            s(&keys.join("ca.crt"))
        ]
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(keys.join("ca-2.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // OpenSSL reads the bundle, and a CA 2 certificate verifies against it.
    assert_ok(&herald(&[
        "keygen",
        "node",
        "--dir",
        s(keys),
        "--name",
        "b",
        "--ca-key",
        s(&keys.join("ca-2.key")),
    ]));
    if let Ok(o) = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(keys.join("ca.crt"))
        .arg(keys.join("a.crt"))
        .arg(keys.join("b.crt"))
        .output()
    {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    // Bad selectors and keys change nothing.
    assert_refused(
        &["keygen", "ca", "--dir", s(keys), "--retire", "3"],
        "holds CA 1 to 2",
        keys,
    );
    let stranger = tempfile::tempdir().unwrap();
    assert_ok(&herald(&["keygen", "ca", "--dir", s(stranger.path())]));
    assert_refused(
        &[
            "keygen",
            "node",
            "--dir",
            s(keys),
            "--name",
            "c",
            "--ca-key",
            s(&stranger.path().join("ca.key")),
        ],
        "does not match certificate",
        keys,
    );

    let out = assert_ok(&herald(&[
        "keygen",
        "ca",
        "--dir",
        s(keys),
        "--retire",
        "1",
        "--json",
    ]));
    let retired: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(retired["ca"], 1, "{retired}");
    assert!(retired["retired_at_us"].as_u64().unwrap() > 0);
    let bundle = std::fs::read_to_string(keys.join("ca.crt")).unwrap();
    assert!(
        bundle.contains(&format!(
            "herald-ca-retired: {}",
            retired["retired_at"].as_str().unwrap()
        )),
        "{bundle}"
    );
    assert_refused(
        &["keygen", "ca", "--dir", s(keys), "--retire", "1"],
        "already retired",
        keys,
    );
    // The retired CA signs nothing new; renewing under CA 2 moves a.
    assert_refused(
        &["keygen", "node", "--dir", s(keys), "--name", "c"],
        "retired",
        keys,
    );
    assert_refused(
        &["keygen", "renew", "--dir", s(keys), "--name", "a"],
        "pass --ca-key",
        keys,
    );
    assert_ok(&herald(&[
        "keygen",
        "renew",
        "--dir",
        s(keys),
        "--name",
        "a",
        "--ca-key",
        s(&keys.join("ca-2.key")),
    ]));
    let trust = TrustAnchor::load(&keys.join("ca.crt"), None).unwrap();
    trust
        .admit_peer(&read_cert_pem(&keys.join("a.crt")).unwrap())
        .expect("a's renewed certificate is of CA 2");
    // A rollover never overwrites a key.
    std::fs::write(keys.join("ca-3.crt"), "in the way").unwrap();
    assert_refused(
        &["keygen", "ca", "--dir", s(keys), "--rollover"],
        "ca-3.crt already exists",
        keys,
    );
}
