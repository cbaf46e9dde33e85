//! `herald demo`, keys that change while the cluster runs: three nodes keep
//! replicating while a channel key is rotated, every certificate is renewed
//! under a new CA and the old CA retired, a node's key is rotated (a key
//! transition in its feed), and a stolen key is revoked with a cut-off and
//! its feed recovered under a new key by the CA, each taken by a live
//! reload (no restart). At the end every feed verifies from its genesis
//! against the CA bundle and the revocation list.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::CliError;
use crate::audit::export::export_store;
use crate::audit::verify::{AuditOptions, audit_path};
use crate::config::NodeConfig;
use crate::core::cert::Cutoff;
use crate::identity::{self, TrustAnchor};
use crate::node::Node;

/// The services of this part.
const SERVICES: [&str; 3] = ["registrar", "auditor", "treasurer"];
/// Longest the demo waits for replication.
const WAIT: Duration = Duration::from_secs(30);

/// Runs this part in `dir/trust`; returns whether every expectation held.
pub fn run_trust(dir: &Path) -> Result<bool, CliError> {
    let dir = dir.join("trust");
    let configs = provision(&dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(drive(&dir, &configs))
}

fn expect(condition: bool, what: &str) -> bool {
    println!("   [{}] {what}", if condition { "ok" } else { "FAILED" });
    condition
}

/// Three nodes on free loopback ports, each peering with the others.
fn provision(dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    let names: Vec<String> = SERVICES.iter().map(|s| s.to_string()).collect();
    crate::config::init_cluster(dir, &names, 7400, 365, true)?;
    let ports: BTreeMap<String, std::net::SocketAddr> = names
        .iter()
        .map(|n| {
            Ok((
                n.clone(),
                std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?,
            ))
        })
        .collect::<std::io::Result<_>>()?;
    let mut paths = Vec::new();
    for service in SERVICES {
        let path = dir.join(format!("{service}.toml"));
        let mut config = NodeConfig::load(&path)?;
        config.listen = ports[service];
        for peer in &mut config.peers {
            peer.address = ports[&peer.name];
        }
        std::fs::write(&path, config.to_toml())?;
        paths.push(path);
    }
    Ok(paths)
}

async fn drive(dir: &Path, configs: &[PathBuf]) -> Result<bool, CliError> {
    let keys = dir.join("keys");
    let mut nodes = Vec::new();
    for path in configs {
        nodes.push(Node::start(&NodeConfig::load(path)?).await?);
    }
    let mut ok = true;
    publish_round(&nodes, "before any change").await?;
    ok &= expect(converged(&nodes).await, "three nodes replicate every feed");

    // A channel key rotated: new events use generation 2, old ones stay
    // readable.
    let rotated = identity::rotate_channel(&keys, "default")?;
    let mut generations = Vec::new();
    for node in &nodes {
        generations.push(node.reload().await?.channels.get("default").copied());
    }
    println!(
        "   keygen channel --rotate: {} now holds generation {}; every node reloaded",
        rotated.path.display(),
        rotated.generation
    );
    ok &= expect(
        generations.iter().all(|g| *g == Some(2)),
        "every node took the new channel key generation without a restart",
    );

    // The CA rolled over: a second CA joins the bundle, every node's
    // certificate is renewed under it (same key) and the node reloads,
    // appending a renewal event to its feed; then the first CA is retired
    // and the connections still on first-CA certificates are replaced.
    let rolled = identity::rollover_ca(&keys, 3650)?;
    for node in &nodes {
        node.reload().await?;
    }
    let mut renewals = Vec::new();
    for (service, node) in SERVICES.iter().zip(&nodes) {
        identity::renew_node_with_ca(&keys, service, 365, Some(&rolled.key))?;
        if let Some(seq) = node.reload().await?.renewal_seq {
            renewals.push(format!("{service}/{seq}"));
        }
    }
    let retired = identity::retire_ca(&keys, 1)?;
    let mut replaced = 0;
    for node in &nodes {
        replaced += node.reload().await?.closed.len();
    }
    println!(
        "   keygen ca --rollover (CA {}), keygen renew --ca-key and reload for each node: renewal events {}",
        rolled.number,
        renewals.join(", ")
    );
    println!(
        "   keygen ca --retire {}, reload: {replaced} connection(s) opened with first-CA certificates closed, and redialled",
        retired.number
    );
    ok &= expect(
        renewals.len() == SERVICES.len(),
        "every node renewed its certificate under the new CA without a restart",
    );
    publish_round(&nodes, "after the CA rollover").await?;
    ok &= expect(
        converged(&nodes).await,
        "the cluster kept replicating through the rollover",
    );

    // registrar's key is rotated as planned: a new key and certificate,
    // the old key's authorization next to it; the reload appends the key
    // transition and the feed goes on under the new key.
    let rotated = identity::rotate_node_key(&keys, "registrar", 365, Some(&rolled.key))?;
    let transition = nodes[0].reload().await?.transition_seq;
    println!(
        "   keygen rotate --name registrar, reload: key transition at registrar/{}, new key {}",
        transition.map_or("-".to_string(), |s| s.to_string()),
        &hex::encode(rotated.public_key)[..16]
    );
    ok &= expect(
        transition.is_some(),
        "registrar moved its feed to a new key without a restart",
    );
    publish_round(&nodes, "after the key rotation").await?;
    ok &= expect(
        converged(&nodes).await,
        "its peers followed the feed to the new key",
    );

    // treasurer's key is stolen: revoked from the first sequence number
    // its owner did not write; the others reload and drop its connections.
    let head = own_head(&nodes[2], "treasurer")?;
    let cutoff = Cutoff {
        from_seq: Some(head + 1),
        from_us: None,
    };
    identity::revoke_with_status(&keys, "treasurer", Some(cutoff))?;
    let mut closed = 0;
    for node in &nodes[..2] {
        closed += node.reload().await?.closed.len();
    }
    println!(
        "   keygen revoke --name treasurer --from-seq {}: {closed} connection(s) to treasurer closed",
        head + 1
    );
    ok &= expect(closed > 0, "the stolen key's connections were closed");

    // The CA (offline) authorizes a new key for treasurer: its node appends
    // a recovery transition at the cut-off and goes on under the new key.
    identity::recover_node_key(&keys, "treasurer", 365, Some(&rolled.key))?;
    let recovery = nodes[2].reload().await?.transition_seq;
    println!(
        "   keygen recover --name treasurer (CA key), reload: recovery transition at treasurer/{}",
        recovery.map_or("-".to_string(), |s| s.to_string())
    );
    ok &= expect(
        recovery == Some(head + 1),
        "treasurer's feed continues at the cut-off under a key the CA vouched for",
    );
    publish_round(&nodes, "after the recovery").await?;
    ok &= expect(
        converged(&nodes).await,
        "its peers took the recovery and what followed",
    );
    let treasurer_head = own_head(&nodes[2], "treasurer")?;

    for node in nodes {
        node.shutdown().await;
    }
    ok &= audit_with_bundle(dir, &keys, treasurer_head)?;
    Ok(ok)
}

/// Each node proclaims one event.
async fn publish_round(nodes: &[Node], label: &str) -> Result<(), CliError> {
    for node in nodes {
        let payload = format!("{{\"note\":\"{label}\"}}");
        node.proclaim("trust.note", payload.as_bytes(), vec![])
            .await?;
    }
    Ok(())
}

fn own_head(node: &Node, service: &str) -> Result<u64, CliError> {
    Ok(node
        .log()
        .heads()?
        .into_iter()
        .find(|h| h.feed == service)
        .map_or(0, |h| h.seq))
}

/// Whether every node holds every feed up to the same head, within
/// [`WAIT`].
async fn converged(nodes: &[Node]) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        let heads: Vec<BTreeMap<String, u64>> = nodes
            .iter()
            .map(|n| {
                n.log()
                    .heads()
                    .map(|hs| hs.into_iter().map(|h| (h.feed, h.seq)).collect())
                    .unwrap_or_default()
            })
            .collect();
        if heads[0].len() == SERVICES.len() && heads.iter().all(|h| *h == heads[0]) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Exports auditor's store and verifies it against the CA bundle (the
/// retired CA included) and the revocation list.
fn audit_with_bundle(dir: &Path, keys: &Path, treasurer_head: u64) -> Result<bool, CliError> {
    let config = NodeConfig::load(&dir.join("auditor.toml"))?;
    let (_, identity) = config.load_identity(crate::clock::now_us())?;
    let conn = crate::store::open_read_only(&config.data_dir)?;
    let path = dir.join("auditor.hrld");
    export_store(
        &conn,
        "auditor",
        &identity.signing_key,
        crate::clock::now_us(),
        &path,
    )?;
    drop(conn);
    let options = AuditOptions {
        trust: TrustAnchor::load(&keys.join("ca.crt"), Some(&keys.join("revoked.toml")))?,
        channel_keys: Vec::new(),
        progress: false,
    };
    let report = audit_path(&path, &options)?;
    let treasurer = report.feeds.iter().find(|f| f.service == "treasurer");
    println!(
        "   auditor's export against the CA bundle and revocation list: {} events, {} problems",
        report.events, report.problems_total
    );
    Ok(expect(
        report.valid
            && report.feeds.len() == SERVICES.len()
            && treasurer.is_some_and(|f| f.head_seq == Some(treasurer_head)),
        "every feed verifies from genesis, across both key transitions",
    ))
}
