//! Whole clusters over real QUIC on 127.0.0.1: several nodes (in-process or
//! as child processes of the real binary) replicating, relaying, surviving
//! SIGKILL, refusing misbehaving and unauthorised peers, answering queries
//! and reporting status.
//!
//! Every cluster gets fresh UDP ports (tests run in parallel); every wait is
//! a poll against a deadline, never a fixed sleep standing in for a check.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::attack::{Attack, Forger, events_frame, framed, seal_feed};
use common::net::{Net, free_ports};
use common::{herald_bin, wait_async};
use ed25519_dalek::Signer;
use herald::audit::verify::{AuditOptions, AuditReport, audit_data_dir};
use herald::config::{PeerConfig, QueryHandlerConfig};
use herald::core::codec;
use herald::core::event::Envelope;
use herald::core::query::QueryStatus;
use herald::core::wire::{
    ALPN_CLIENT, ALPN_PEER, FRAME_BYTES_MAX, PROTOCOL_VERSION, PeerMessage, close,
};
use herald::identity::TrustAnchor;
use herald::net;
use herald::node::client::{ClientRequest, ClientResponse};
use herald::node::peer::{PEER_FRAMES_PER_SECOND_MAX, StreamOpen};
use herald::node::{Node, NodeStatus};
use herald::store::FeedHead;

/// Longest any convergence wait may take before the test fails.
const CONVERGE: Duration = Duration::from_secs(45);
/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(50);

type Heads = BTreeMap<String, (u64, [u8; 32])>;

fn heads_of(feeds: &[FeedHead]) -> Heads {
    feeds
        .iter()
        .map(|h| (h.feed.clone(), (h.seq, h.hash)))
        .collect()
}

fn show(heads: &Heads) -> String {
    heads
        .iter()
        .map(|(f, (seq, hash))| format!("{f}@{seq}:{}", &hex::encode(hash)[..8]))
        .collect::<Vec<_>>()
        .join(" ")
}

fn audit(net: &Net, node: &str) -> AuditReport {
    let options = AuditOptions {
        trust: TrustAnchor::load(&net.ca(), None).expect("trust"),
        channel_keys: Vec::new(),
        progress: false,
    };
    audit_data_dir(&net.data_dir(node), &options).expect("audit runs")
}

/// The store verifies, and holds exactly `head + 1` events of every feed,
/// every one of them verified.
fn assert_store_sound(net: &Net, node: &str, expected: &Heads) {
    let report = audit(net, node);
    assert!(
        report.valid,
        "{node}: store does not verify: {:?}",
        report.problems
    );
    let mut total = 0;
    for (feed, (seq, hash)) in expected {
        let f = report
            .feeds
            .iter()
            .find(|f| &f.service == feed)
            .unwrap_or_else(|| panic!("{node}: audit lists no feed {feed}"));
        assert_eq!(f.events, seq + 1, "{node}: feed {feed} event count");
        assert_eq!(f.verified, f.events, "{node}: feed {feed} verified count");
        assert_eq!(f.head_seq, Some(*seq), "{node}: feed {feed} head");
        assert_eq!(
            f.head_hash.as_deref(),
            Some(hex::encode(hash).as_str()),
            "{node}: feed {feed} head hash"
        );
        total += f.events;
    }
    assert_eq!(report.feeds.len(), expected.len(), "{node}: feeds");
    assert_eq!(report.events, total, "{node}: total events");
}

// ---------------------------------------------------------------------------
// Polling.

fn wait_sync<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {within:?} waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

async fn node_heads(node: &Node) -> Heads {
    heads_of(&node.status().await.feeds)
}

/// Waits until every node holds exactly `expected` (same feeds, seqs, hashes).
async fn converge(nodes: &[&Node], expected: &Heads) {
    for node in nodes {
        wait_async(
            &format!("{} to hold {}", node.service(), show(expected)),
            CONVERGE,
            || async {
                let h = node_heads(node).await;
                if &h == expected {
                    Ok(())
                } else {
                    Err(show(&h))
                }
            },
        )
        .await;
    }
}

// ---------------------------------------------------------------------------
// Nodes as child processes.

/// `herald node` as a child process; SIGKILLed on drop if still running.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(net: &Net, name: &str) -> Proc {
        let log = net.path().join(format!("{name}.log"));
        let child = common::spawn_node(Path::new(herald_bin()), &net.config_path(name), &log);
        let proc = Proc {
            name: name.to_string(),
            child,
            log,
        };
        proc.wait_ready(net);
        proc
    }

    /// Until the node answers `herald status` as running.
    fn wait_ready(&self, net: &Net) {
        let config = net.config_path(&self.name);
        wait_sync(&format!("node {} to start", self.name), CONVERGE, || {
            if let Ok(Some(status)) = self.child_exited() {
                return Err(format!("node exited: {status}; log:\n{}", self.log_tail()));
            }
            let status = cli_status(&config)?;
            if status.running {
                Ok(())
            } else {
                Err("not running yet".into())
            }
        });
    }

    fn child_exited(&self) -> std::io::Result<Option<ExitStatus>> {
        // try_wait needs &mut; peek at /proc instead to keep &self.
        let pid = self.child.id();
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => Ok(Some(ExitStatus::default())),
            Ok(stat)
                if stat
                    .rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z')) =>
            {
                Ok(Some(ExitStatus::default()))
            }
            Ok(_) => Ok(None),
        }
    }

    fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL"); // Child::kill is SIGKILL on Unix
        let _ = self.child.wait();
    }

    /// SIGTERM; the node must exit (with its exit status) within `within`.
    fn sigterm(&mut self, within: Duration) -> ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -TERM failed");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                self.sigkill();
                panic!(
                    "node {} did not exit within {within:?} of SIGTERM; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `herald status --config X --json`, parsed.
fn cli_status(config: &Path) -> Result<NodeStatus, String> {
    let out = Command::new(herald_bin())
        .args(["status", "--json", "--config"])
        .arg(config)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "status exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("status JSON: {e}"))
}

/// Heads of a (possibly running) node's store, read-only.
fn store_heads(data_dir: &Path) -> Result<Heads, String> {
    let conn = herald::store::open_read_only(data_dir).map_err(|e| e.to_string())?;
    let heads = herald::store::read_heads_from(&conn).map_err(|e| e.to_string())?;
    Ok(heads_of(&heads))
}

fn wait_store_heads(net: &Net, nodes: &[&str], expected: &Heads) {
    for node in nodes {
        let dir = net.data_dir(node);
        let deadline = Instant::now() + CONVERGE;
        loop {
            let h = store_heads(&dir);
            if h.as_ref() == Ok(expected) {
                break;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {CONVERGE:?} waiting for {node} to hold {}; it holds {:?}\n{}",
                    show(expected),
                    h.map(|h| show(&h)),
                    net.logs()
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

/// Waits until each of `nodes` holds `feed` at exactly `head` (other feeds,
/// such as a node's own genesis after its start-up recovery, may still be
/// arriving and are not compared).
fn wait_feed_head(net: &Net, nodes: &[&str], feed: &str, head: (u64, [u8; 32])) {
    for node in nodes {
        wait_sync(
            &format!("{node} to hold {feed} at {}", head.0),
            CONVERGE,
            || {
                let h = store_heads(&net.data_dir(node))?;
                if h.get(feed) == Some(&head) {
                    Ok(())
                } else {
                    Err(show(&h))
                }
            },
        );
    }
}

/// A `herald publish` child whose output is collected by a thread, so a
/// full stdout pipe never stalls it.
struct Publisher(std::thread::JoinHandle<std::process::Output>);

/// `herald publish --count N --json` against a node.
fn spawn_publish(net: &Net, node: &str, count: u64) -> Publisher {
    let child = Command::new(herald_bin())
        .args(["publish", "--json", "--type", "load.test", "--data"])
        .arg(format!(r#"{{"from":"{node}"}}"#))
        .args(["--count", &count.to_string(), "--config"])
        .arg(net.config_path(node))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald publish");
    Publisher(std::thread::spawn(move || {
        child.wait_with_output().expect("wait for publish")
    }))
}

/// Waits for a publisher; checks it printed one receipt per event with
/// consecutive sequence numbers; returns the last receipt's (seq, hash).
fn finish_publish(
    net: &Net,
    publisher: Publisher,
    node: &str,
    first_seq: u64,
    count: u64,
) -> (u64, [u8; 32]) {
    let out = publisher.0.join().expect("publisher thread");
    check_receipts(net, out, node, first_seq, count)
}

fn check_receipts(
    net: &Net,
    out: std::process::Output,
    node: &str,
    first_seq: u64,
    count: u64,
) -> (u64, [u8; 32]) {
    assert!(
        out.status.success(),
        "publish on {node} exited {}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        net.logs()
    );
    let mut expected_seq = first_seq;
    let mut last = None;
    for line in BufReader::new(&out.stdout[..]).lines() {
        let line = line.expect("utf-8");
        let v: serde_json::Value = serde_json::from_str(&line).expect("receipt JSON");
        assert_eq!(v["feed"], node, "{line}");
        assert_eq!(v["seq"].as_u64(), Some(expected_seq), "{line}");
        let hash: [u8; 32] = hex::decode(v["hash"].as_str().expect("hash"))
            .expect("hex")
            .try_into()
            .expect("32 bytes");
        last = Some((expected_seq, hash));
        expected_seq += 1;
    }
    assert_eq!(
        expected_seq - first_seq,
        count,
        "publish on {node}: receipts printed"
    );
    last.expect("at least one receipt")
}

// ---------------------------------------------------------------------------
// 1. Bulk replication between three processes.

#[test]
fn three_nodes_each_proclaim_ten_thousand_and_agree() {
    const COUNT: u64 = 10_000;
    let net = Net::mesh(&["a", "b", "c"]);
    let mut procs: Vec<Proc> = ["a", "b", "c"]
        .iter()
        .map(|n| Proc::start(&net, n))
        .collect();

    let started = Instant::now();
    let publishers: Vec<(&str, Publisher)> = ["a", "b", "c"]
        .iter()
        .map(|n| (*n, spawn_publish(&net, n, COUNT)))
        .collect();
    let mut expected = Heads::new();
    for (node, child) in publishers {
        expected.insert(
            node.to_string(),
            finish_publish(&net, child, node, 1, COUNT),
        );
    }
    let published = started.elapsed();
    wait_store_heads(&net, &["a", "b", "c"], &expected);
    eprintln!(
        "3 x {COUNT} events: published in {published:?}, converged after {:?}",
        started.elapsed()
    );

    for p in &mut procs {
        let status = p.sigterm(Duration::from_secs(8));
        assert!(status.success(), "node {} exited {status}", p.name);
    }
    for node in ["a", "b", "c"] {
        assert_eq!(
            store_heads(&net.data_dir(node)).unwrap(),
            expected,
            "{node}"
        );
        assert_store_sound(&net, node, &expected);
    }
}

// ---------------------------------------------------------------------------
// 2. SIGKILL a node while the others proclaim; it restarts and catches up.

#[test]
fn a_node_killed_mid_replication_restarts_and_converges() {
    const ROUND: u64 = 2_000;
    let net = Net::mesh(&["a", "b", "c"]);
    let mut a = Proc::start(&net, "a");
    let mut b = Proc::start(&net, "b");
    let mut c = Proc::start(&net, "c");
    let c_dir = net.data_dir("c");

    // c has a feed of its own that must survive and spread.
    let c_head = finish_publish(&net, spawn_publish(&net, "c", 100), "c", 1, 100);

    // Round 1: kill c while it is receiving.
    let (pa, pb) = (
        spawn_publish(&net, "a", ROUND),
        spawn_publish(&net, "b", ROUND),
    );
    let seen_before_kill = wait_sync("c to receive part of a's round 1", CONVERGE, || {
        let h = store_heads(&c_dir)?;
        match h.get("a") {
            Some((seq, _)) if *seq >= 200 => Ok(*seq),
            other => Err(format!("{other:?}")),
        }
    });
    c.sigkill();
    finish_publish(&net, pa, "a", 1, ROUND);
    finish_publish(&net, pb, "b", 1, ROUND);

    // Round 2 while c is dead; round 3 while c restarts.
    let (pa, pb) = (
        spawn_publish(&net, "a", ROUND),
        spawn_publish(&net, "b", ROUND),
    );
    finish_publish(&net, pa, "a", ROUND + 1, ROUND);
    finish_publish(&net, pb, "b", ROUND + 1, ROUND);
    let (pa, pb) = (
        spawn_publish(&net, "a", ROUND),
        spawn_publish(&net, "b", ROUND),
    );
    let mut c = Proc::start(&net, "c");
    let a_head = finish_publish(&net, pa, "a", 2 * ROUND + 1, ROUND);
    let b_head = finish_publish(&net, pb, "b", 2 * ROUND + 1, ROUND);
    eprintln!("c was killed holding a@{seen_before_kill}");

    let expected: Heads = [("a", a_head), ("b", b_head), ("c", c_head)]
        .into_iter()
        .map(|(n, h)| (n.to_string(), h))
        .collect();
    wait_store_heads(&net, &["a", "b", "c"], &expected);
    for p in [&mut a, &mut b, &mut c] {
        let status = p.sigterm(Duration::from_secs(8));
        assert!(status.success(), "node {} exited {status}", p.name);
    }
    assert_store_sound(&net, "c", &expected);

    // The command-line auditor agrees.
    let out = Command::new(herald_bin())
        .arg("verify")
        .arg(&c_dir)
        .arg("--ca")
        .arg(net.ca())
        .arg("--json")
        .output()
        .expect("run herald verify");
    assert_eq!(
        out.status.code(),
        Some(0),
        "herald verify: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verify JSON");
    assert_eq!(v["valid"], true);
    let total: u64 = expected.values().map(|(seq, _)| seq + 1).sum();
    assert_eq!(total, 2 * (3 * ROUND + 1) + 101);
    assert_eq!(v["events"].as_u64(), Some(total), "{v}");
}

// ---------------------------------------------------------------------------
// 3. Relay: A–B–C, A and C do not know each other.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_relayed_through_a_middle_node() {
    let net = Net::with_peers(&["a", "b", "c"], |me| match me {
        "a" | "c" => vec!["b".to_string()],
        _ => vec!["a".to_string(), "c".to_string()],
    });
    assert!(net.config("a").peers.iter().all(|p| p.name != "c"));
    assert!(net.config("c").peers.iter().all(|p| p.name != "a"));
    let a = Node::start(&net.config("a")).await.expect("start a");
    let b = Node::start(&net.config("b")).await.expect("start b");
    let c = Node::start(&net.config("c")).await.expect("start c");

    let mut expected = Heads::new();
    for node in [&a, &c] {
        let mut last = None;
        for i in 0..5 {
            let r = node
                .proclaim("relay.test", format!(r#"{{"i":{i}}}"#).as_bytes(), vec![])
                .await
                .expect("proclaim");
            last = Some((r.seq, r.hash));
        }
        expected.insert(node.service().to_string(), last.unwrap());
    }
    // b starts its feed once it has heard from its peers (start-up recovery).
    let b_genesis = wait_async("b to start its feed", CONVERGE, || async {
        node_heads(&b)
            .await
            .get("b")
            .copied()
            .ok_or("not yet".to_string())
    })
    .await;
    expected.insert("b".into(), b_genesis);
    converge(&[&a, &b, &c], &expected).await;

    // Nobody made a connection it was not configured for.
    for node in [&a, &c] {
        let status = node.status().await;
        let names: Vec<&str> = status.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["b"], "{}", node.service());
    }
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// 4. A peer with a valid certificate that misbehaves.

/// A sealed feed of `name`: genesis and events 1..=n.
/// Format 2 over the wire: sealed events count only with a seal, the
/// author's checkpoint over exactly the history the node then holds. A
/// peer that sends them bare, with a seal signed by another key, or with a
/// seal of another history is cut off and nothing of it is applied; with
/// the right seal they are applied and the node holds (and cosigns) the
/// author's checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_events_need_their_authors_seal() {
    let net = Net::with_peers(&["node-a", "mallory"], |me| match me {
        "node-a" => vec!["mallory".into()],
        _ => vec!["node-a".into()],
    });
    let a = Node::start(&net.config("node-a"))
        .await
        .expect("start node-a");
    let mut mallory = Forger::sealed(&net, "mallory", "mallory");
    let genesis = mallory.genesis.clone();
    let first_two = mallory.seal(2, "mallory.says");
    let fork_point = mallory.mark();
    let events = [first_two, mallory.seal(2, "mallory.says")].concat();
    // The first four events are sent; the fifth makes another history's
    // checkpoint below.
    let history: Vec<&herald::core::verify::VerifiedEvent> =
        std::iter::once(&genesis).chain(&events[..3]).collect();
    let bytes: Vec<&[u8]> = history.iter().map(|e| e.bytes()).collect();
    assert!(bytes.iter().all(|b| codec::is_sealed_envelope(b)));
    let with_seals = |seals| {
        let PeerMessage::Events { events, .. } = events_frame(&bytes) else {
            unreachable!()
        };
        PeerMessage::Events { events, seals }
    };
    let holds_mallory = |heads: &Heads| heads.contains_key("mallory");

    // Bare: no seal.
    let mut m = Attack::open(&net, "mallory", "node-a").await;
    m.send(&with_seals(vec![])).await;
    assert_eq!(
        m.closed_with().await,
        close::VERIFICATION_FAILED as u64,
        "bare"
    );
    assert!(!holds_mallory(&node_heads(&a).await));

    // A seal signed by another key (node-a's own would not do either).
    let forger = Forger::sealed(&net, "mallory", "node-a");
    let mut m = Attack::open(&net, "mallory", "node-a").await;
    m.send(&with_seals(vec![forger.seal_of(&history)])).await;
    assert_eq!(
        m.closed_with().await,
        close::VERIFICATION_FAILED as u64,
        "foreign key"
    );
    assert!(!holds_mallory(&node_heads(&a).await));

    // A seal without its proof: mallory's checkpoint over one more event
    // claimed to end with the run.
    let longer: Vec<&herald::core::verify::VerifiedEvent> =
        std::iter::once(&genesis).chain(&events).collect();
    let mut wrong = mallory.seal_of(&longer);
    wrong.end = history.len() as u64;
    let mut m = Attack::open(&net, "mallory", "node-a").await;
    m.send(&with_seals(vec![wrong])).await;
    assert_eq!(
        m.closed_with().await,
        close::VERIFICATION_FAILED as u64,
        "no proof"
    );
    assert!(!holds_mallory(&node_heads(&a).await));

    // The right seal: applied, acknowledged, checkpoint held.
    let mut m = Attack::open(&net, "mallory", "node-a").await;
    m.send(&with_seals(vec![mallory.seal_of(&history)])).await;
    m.wait_ack("mallory", 3).await;
    let held = a
        .log()
        .latest_checkpoint("mallory")
        .expect("mallory's checkpoint");
    assert_eq!((held.size, held.cosigned_size), (4, 4));

    // The author's other history at a position node-a holds, sealed by a
    // second checkpoint of size 4: an unsigned event proves nothing, the
    // two checkpoints prove the split. The sender is cut off, the evidence
    // kept, the feed frozen.
    mallory.restore(fork_point);
    let rewritten = mallory.seal(1, "mallory.rewrites");
    let other: Vec<&herald::core::verify::VerifiedEvent> = std::iter::once(&genesis)
        .chain(&events[..2])
        .chain(&rewritten)
        .collect();
    let mut m = Attack::open(&net, "mallory", "node-a").await;
    let PeerMessage::Events { events: frame, .. } = events_frame(&[rewritten[0].bytes()]) else {
        unreachable!()
    };
    m.send(&PeerMessage::Events {
        events: frame,
        seals: vec![mallory.seal_of(&other)],
    })
    .await;
    assert_eq!(
        m.closed_with().await,
        close::VERIFICATION_FAILED as u64,
        "rewritten"
    );
    let evidence = a.log().equivocations().expect("equivocations");
    assert!(
        evidence.iter().any(|(feed, _)| feed == "mallory"),
        "{evidence:?}"
    );
    let heads = a.log().heads().expect("heads");
    let head = heads.iter().find(|h| h.feed == "mallory").expect("mallory");
    assert_eq!((head.seq, head.status.as_str()), (3, "forked"));
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_peer_is_cut_off_and_the_rest_carries_on() {
    // "mallory" sorts before "node-a", so mallory dials and node-a accepts.
    let net = Net::with_peers(&["node-a", "node-b", "mallory"], |me| match me {
        "node-a" => vec!["node-b".into(), "mallory".into()],
        "node-b" => vec!["node-a".into()],
        _ => vec!["node-a".into()],
    });
    let a = Node::start(&net.config("node-a"))
        .await
        .expect("start node-a");
    let b = Node::start(&net.config("node-b"))
        .await
        .expect("start node-b");
    let feed = seal_feed(&net, "mallory", 5);
    let genesis = feed.genesis.bytes().to_vec();
    let genesis_hash = *feed.genesis.hash();
    let mallory_head = |h: &Heads| h.get("mallory").copied();

    // Honest start: the genesis is accepted and acknowledged.
    let mut m = Attack::open(&net, "mallory", "node-a").await;
    m.send(&events_frame(&[&genesis])).await;
    m.wait_ack("mallory", 0).await;
    assert_eq!(mallory_head(&node_heads(&a).await), Some((0, genesis_hash)));

    // (a) A forged signature on event 1.
    let (mut envelope, _) = codec::decode_envelope(feed.events[0].bytes()).expect("decode");
    envelope.signature.as_mut().expect("a format-1 event")[10] ^= 0x01;
    let forged = codec::encode_envelope(&envelope);
    m.send(&events_frame(&[&forged])).await;
    assert_eq!(
        m.closed_with().await,
        close::VERIFICATION_FAILED as u64,
        "forged signature"
    );
    assert_eq!(
        mallory_head(&node_heads(&a).await),
        Some((0, genesis_hash)),
        "after (a)"
    );

    // (b) Event 1 validly signed by mallory, but chained to a wrong previous hash.
    let (envelope, mut header) = codec::decode_envelope(feed.events[0].bytes()).expect("decode");
    header.prev = [0xab; 32];
    let header_bytes = codec::encode_header(&header);
    let hash = codec::event_hash(&header_bytes);
    let signature = feed.key.sign(&codec::signing_message(&hash)).to_bytes();
    let wrong_prev = codec::encode_envelope(&Envelope {
        header: header_bytes,
        signature: Some(signature),
        payload: envelope.payload,
    });
    let mut m = Attack::open(&net, "mallory", "node-a").await;
    m.send(&events_frame(&[&wrong_prev])).await;
    assert_eq!(
        m.closed_with().await,
        close::VERIFICATION_FAILED as u64,
        "wrong prev"
    );
    assert_eq!(
        mallory_head(&node_heads(&a).await),
        Some((0, genesis_hash)),
        "after (b)"
    );

    // (c) A sequence gap: genesis (already held), then event 5.
    let mut m = Attack::open(&net, "mallory", "node-a").await;
    m.send(&events_frame(&[&genesis, feed.events[4].bytes()]))
        .await;
    assert_eq!(
        m.closed_with().await,
        close::VERIFICATION_FAILED as u64,
        "gap"
    );
    assert_eq!(
        mallory_head(&node_heads(&a).await),
        Some((0, genesis_hash)),
        "after (c)"
    );

    // (c2) A forged event 1, then the genuine events 1 and 2 in frames sent
    // back to back: frames that queue up together are applied together,
    // and nothing after the forged event may be applied all the same.
    let mut m = Attack::open(&net, "mallory", "node-a").await;
    let burst = [
        events_frame(&[&forged]),
        events_frame(&[feed.events[0].bytes()]),
        events_frame(&[feed.events[1].bytes()]),
    ]
    .iter()
    .flat_map(framed)
    .collect::<Vec<u8>>();
    m.send_raw(&burst).await;
    assert_eq!(
        m.closed_with().await,
        close::VERIFICATION_FAILED as u64,
        "forged, then genuine"
    );
    assert_eq!(
        mallory_head(&node_heads(&a).await),
        Some((0, genesis_hash)),
        "after (c2)"
    );

    // (d) Bytes that are no message.
    let mut m = Attack::open(&net, "mallory", "node-a").await;
    let mut garbage = 8u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 8]);
    m.send_raw(&garbage).await;
    assert_eq!(
        m.closed_with().await,
        close::PROTOCOL_VIOLATION as u64,
        "garbage"
    );

    // (e) A length prefix over the limit.
    let mut m = Attack::open(&net, "mallory", "node-a").await;
    let mut oversized = (FRAME_BYTES_MAX as u32 + 1).to_le_bytes().to_vec();
    oversized.extend_from_slice(&[0u8; 64]);
    m.send_raw(&oversized).await;
    assert_eq!(
        m.closed_with().await,
        close::FRAME_TOO_LARGE as u64,
        "oversized"
    );

    // (f) A flood of tiny frames: several times the per-second limit at once.
    let mut m = Attack::open(&net, "mallory", "node-a").await;
    let ack = framed(&PeerMessage::Ack { heads: vec![] });
    let flood = ack.repeat(4 * PEER_FRAMES_PER_SECOND_MAX as usize);
    let sent = Instant::now();
    m.send_raw(&flood).await;
    assert_eq!(
        m.closed_with().await,
        close::PROTOCOL_VIOLATION as u64,
        "flood"
    );
    eprintln!("flood cut off after {:?}", sent.elapsed());
    assert_eq!(
        mallory_head(&node_heads(&a).await),
        Some((0, genesis_hash)),
        "at the end"
    );

    // (g) Events before Hello.
    let mut m = Attack::connect(&net, "mallory", "node-a").await;
    m.send(&events_frame(&[feed.events[0].bytes()])).await;
    assert_eq!(
        m.closed_with().await,
        close::PROTOCOL_VIOLATION as u64,
        "events before hello"
    );
    assert_eq!(
        mallory_head(&node_heads(&a).await),
        Some((0, genesis_hash)),
        "after (g)"
    );

    // (h) A Hello claiming another service than the certificate's.
    let mut m = Attack::connect(&net, "mallory", "node-a").await;
    m.send(&PeerMessage::Hello {
        protocol: PROTOCOL_VERSION,
        service: "node-b".into(),
        heads: vec![],
    })
    .await;
    assert_eq!(
        m.closed_with().await,
        close::PROTOCOL_VIOLATION as u64,
        "wrong service"
    );

    // node-a kept its honest peer and still replicates with it.
    let r = b
        .proclaim("after.attack", b"{}", vec![])
        .await
        .expect("proclaim");
    wait_async("node-a to receive node-b's new event", CONVERGE, || async {
        let h = node_heads(&a).await;
        if h.get("node-b") == Some(&(r.seq, r.hash)) {
            Ok(())
        } else {
            Err(show(&h))
        }
    })
    .await;
    let status = a.status().await;
    let peer_b = status.peers.iter().find(|p| p.name == "node-b").unwrap();
    assert!(peer_b.connected, "{peer_b:?}");
    a.shutdown().await;
    b.shutdown().await;
}

// PROTOCOL.md §3.1 and §6: a Hello with another protocol version closes the
// connection with VERSION_MISMATCH (5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_speaking_another_protocol_version_is_told_so() {
    let net = Net::with_peers(&["node-a", "mallory"], |me| match me {
        "node-a" => vec!["mallory".into()],
        _ => vec!["node-a".into()],
    });
    let a = Node::start(&net.config("node-a"))
        .await
        .expect("start node-a");
    let mut m = Attack::connect(&net, "mallory", "node-a").await;
    m.send(&PeerMessage::Hello {
        protocol: PROTOCOL_VERSION + 1,
        service: "mallory".into(),
        heads: vec![],
    })
    .await;
    assert_eq!(m.closed_with().await, close::VERSION_MISMATCH as u64);
    a.shutdown().await;
}

// ---------------------------------------------------------------------------
// 5. Refused in the handshake: foreign CA, revoked, expired.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_revoked_and_expired_nodes_never_get_a_round_trip() {
    // "t" sorts after every other name, so it only accepts.
    let net = Net::with_peers(&["t", "good", "r"], |me| match me {
        "t" => vec!["good".into(), "r".into()],
        _ => vec!["t".into()],
    });
    let keys = net.keys();
    let now = herald::clock::now_us();
    let day = 86_400 * 1_000_000;
    herald::identity::issue_node_with_validity(&keys, "old", now - 3 * day, now - day, false)
        .expect("expired cert");
    herald::identity::revoke(&keys, "r").expect("revoke r");
    let foreign = Net::mesh(&["f"]);
    let spare = free_ports(2);
    net.edit("t", |c| {
        assert!(c.revoked.is_some(), "init configures the revocation list");
        for (name, port) in [("old", spare[0]), ("f", spare[1])] {
            c.peers.push(PeerConfig {
                name: name.into(),
                address: SocketAddr::from(([127, 0, 0, 1], port)),
            });
        }
    });
    let t = Node::start(&net.config("t")).await.expect("start t");
    let target = net.addrs["t"];

    let identities = [
        ("foreign CA", foreign.tls("f").with_trust(net.trust())),
        ("revoked", net.tls("r")),
        ("expired", net.tls("old")),
    ];
    for (why, tls) in &identities {
        for alpn in [ALPN_PEER, ALPN_CLIENT] {
            let endpoint = net::bind_client("127.0.0.1:0".parse().unwrap()).expect("bind");
            let result = async {
                let conn = net::connect(&endpoint, target, "t", alpn, tls).await?;
                if alpn == ALPN_PEER {
                    net::open_exchange::<_, PeerMessage>(&conn, &StreamOpen::Replication)
                        .await
                        .map(|(_, _, m)| format!("{m:?}"))
                } else {
                    net::open_exchange::<_, ClientResponse>(&conn, &ClientRequest::Status)
                        .await
                        .map(|(_, _, m)| format!("{m:?}"))
                }
            }
            .await;
            assert!(
                result.is_err(),
                "{why} ({}) got an answer: {result:?}",
                String::from_utf8_lossy(alpn)
            );
        }
    }

    // Tools act for the node they talk to: a client certificate issued for
    // t is served, one issued for another name (or another node's own
    // certificate) is refused on the client protocol.
    herald::identity::issue_client(&keys, "t-ops", 30, false).expect("client cert");
    let endpoint = net::bind_client("127.0.0.1:0".parse().unwrap()).expect("bind");
    let other = net.tls("t-ops");
    let conn = net::connect(&endpoint, target, "t", ALPN_CLIENT, &other).await;
    let answered = match conn {
        Ok(conn) => net::open_exchange::<_, ClientResponse>(&conn, &ClientRequest::Status)
            .await
            .is_ok(),
        Err(_) => false,
    };
    assert!(
        !answered,
        "a client certificate for another name must not act for t"
    );
    let own = net.tls("t");
    let conn = net::connect(&endpoint, target, "t", ALPN_CLIENT, &own)
        .await
        .expect("t's own certificate connects");
    let (_, _, status) = net::open_exchange::<_, ClientResponse>(&conn, &ClientRequest::Status)
        .await
        .expect("t's own certificate is served");
    assert!(matches!(status, ClientResponse::Status(_)));

    // A valid node of the cluster that t does not list as a peer: admitted
    // by TLS, then closed as UNAUTHORIZED for the peer protocol.
    herald::identity::issue_node(&keys, "stranger", 30, false).expect("stranger cert");
    let endpoint = net::bind_client("127.0.0.1:0".parse().unwrap()).expect("bind");
    let stranger = net.tls("stranger");
    let conn = net::connect(&endpoint, target, "t", ALPN_PEER, &stranger)
        .await
        .expect("TLS admits a cluster node");
    let refused = net::open_exchange::<_, PeerMessage>(&conn, &StreamOpen::Replication).await;
    assert!(
        refused.is_err(),
        "unconfigured peer got {:?}",
        refused.map(|r| r.2)
    );
    match conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code.into_inner(), close::UNAUTHORIZED as u64)
        }
        other => panic!("unconfigured peer: connection ended otherwise: {other}"),
    }

    // Control: a configured peer of the same cluster does get an answer.
    let endpoint = net::bind_client("127.0.0.1:0".parse().unwrap()).expect("bind");
    let good = net.tls("good");
    let conn = net::connect(&endpoint, target, "t", ALPN_PEER, &good)
        .await
        .expect("good connects");
    let (_send, _recv, hello) =
        net::open_exchange::<_, PeerMessage>(&conn, &StreamOpen::Replication)
            .await
            .expect("good gets an answer");
    assert!(matches!(hello, PeerMessage::Hello { ref service, .. } if service == "t"));

    let status = t.status().await;
    for peer in &status.peers {
        assert_eq!(
            peer.connected,
            peer.name == "good",
            "peer {} in t's status: {peer:?}",
            peer.name
        );
    }
    // t holds no feed but (once its recovery settles) its own.
    assert!(
        status.feeds.iter().all(|f| f.feed == "t"),
        "{:?}",
        status.feeds
    );
    conn.close(0u32.into(), b"done");
    t.shutdown().await;
}

// ---------------------------------------------------------------------------
// 6. Synchronous queries between running nodes.

fn script(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Whether process `pid` is gone or a zombie.
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_between_running_nodes() {
    let net = Net::mesh(&["a", "b", "c"]);
    let dir = net.path();
    // Written before any node runs, so no fork can hold them open for writing.
    script(
        dir,
        "verify.sh",
        r#"payload=$(cat)
case "$payload" in
  *'"D-1"'*) printf '{"valid":true,"caller":"%s","correlation":"%s"}' "$HERALD_CALLER" "$HERALD_CORRELATION_ID"; exit 0 ;;
  *) printf '{"valid":false}'; exit 3 ;;
esac"#,
    );
    let pid_file = dir.join("slow.pid");
    script(
        dir,
        "slow.sh",
        &format!("echo $$ > '{}'\nexec sleep 30", pid_file.display()),
    );
    net.edit("b", |c| {
        c.query_handlers = vec![
            QueryHandlerConfig {
                query_type: "identity.verify_donor".into(),
                command: vec!["./verify.sh".into()],
                timeout_ms: Some(2000),
            },
            QueryHandlerConfig {
                query_type: "slow.answer".into(),
                command: vec!["./slow.sh".into()],
                timeout_ms: Some(10_000),
            },
        ];
    });
    let a = Node::start(&net.config("a")).await.expect("start a");
    let b = Node::start(&net.config("b")).await.expect("start b");
    // Connected both ways once each holds the other's genesis (with c down,
    // a fresh node starts its feed after RECOVERY_ALL_PEERS_WAIT_MS).
    for node in [&a, &b] {
        wait_async(
            &format!("{} to hold a's and b's feeds", node.service()),
            CONVERGE,
            || async {
                let h = node_heads(node).await;
                if h.contains_key("a") && h.contains_key("b") {
                    Ok(())
                } else {
                    Err(show(&h))
                }
            },
        )
        .await;
    }

    let ask = |type_: &'static str, payload: &'static str, corr: &'static str, ms: u64| {
        let a = &a;
        async move {
            a.query(
                "b",
                type_,
                payload.as_bytes().to_vec(),
                corr,
                Duration::from_millis(ms),
            )
            .await
        }
    };

    let ok = ask(
        "identity.verify_donor",
        r#"{"donor":"D-1"}"#,
        "corr-1",
        5000,
    )
    .await;
    assert_eq!(
        ok.status,
        QueryStatus::Success,
        "{}",
        String::from_utf8_lossy(&ok.payload)
    );
    assert!(ok.signed_by_responder);
    assert_eq!(ok.correlation_id, "corr-1");
    assert_eq!(ok.responder, "b");
    let body: serde_json::Value = serde_json::from_slice(&ok.payload).expect("handler JSON");
    assert_eq!(body["valid"], true);
    assert_eq!(body["caller"], "a");
    assert_eq!(body["correlation"], "corr-1");

    let missing = ask(
        "identity.verify_donor",
        r#"{"donor":"D-2"}"#,
        "corr-2",
        5000,
    )
    .await;
    assert_eq!(missing.status, QueryStatus::NotFound);
    assert!(missing.signed_by_responder);
    assert_eq!(missing.correlation_id, "corr-2");
    assert_eq!(missing.payload, br#"{"valid":false}"#);

    let none = ask("no.such.type", "{}", "corr-3", 5000).await;
    assert_eq!(none.status, QueryStatus::NoHandler);
    assert!(none.signed_by_responder);
    assert_eq!(none.correlation_id, "corr-3");

    let started = Instant::now();
    let slow = ask("slow.answer", "{}", "corr-4", 300).await;
    let took = started.elapsed();
    assert_eq!(
        slow.status,
        QueryStatus::Timeout,
        "{}",
        String::from_utf8_lossy(&slow.payload)
    );
    assert_eq!(slow.correlation_id, "corr-4");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(800),
        "a 300 ms query took {took:?}"
    );
    let pid: u32 = wait_async(
        "the slow handler's pid file",
        Duration::from_secs(5),
        || async {
            std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| "no pid yet".to_string())
        },
    )
    .await;
    wait_async(
        "the overrunning handler to be killed",
        Duration::from_secs(5),
        || async {
            if dead(pid) {
                Ok(())
            } else {
                Err(format!("pid {pid} alive"))
            }
        },
    )
    .await;

    // c is configured but not running; "nobody" is not configured at all.
    for target in ["c", "nobody"] {
        let started = Instant::now();
        let out = a
            .query(
                target,
                "herald.head",
                br#"{"feed":"a"}"#.to_vec(),
                "corr-5",
                Duration::from_secs(2),
            )
            .await;
        assert_eq!(out.status, QueryStatus::Unreachable, "{target}");
        assert!(!out.signed_by_responder, "{target}");
        assert_eq!(out.correlation_id, "corr-5");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{target}: {:?}",
            started.elapsed()
        );
    }

    // The accepting side can ask the dialling side too (built-in handler).
    let head = b
        .query(
            "a",
            "herald.head",
            br#"{"feed":"b"}"#.to_vec(),
            "corr-6",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(
        head.status,
        QueryStatus::Success,
        "{}",
        String::from_utf8_lossy(&head.payload)
    );
    assert!(head.signed_by_responder);
    let v: serde_json::Value = serde_json::from_slice(&head.payload).unwrap();
    assert_eq!(v["feed"], "b");
    assert_eq!(v["seq"], 0);
    a.shutdown().await;
    b.shutdown().await;
}

// ---------------------------------------------------------------------------
// 7. Status of a running cluster, the CLI query, and graceful shutdown.

#[test]
fn status_query_and_graceful_shutdown_of_processes() {
    let net = Net::mesh(&["a", "b", "c"]);
    let mut procs: Vec<Proc> = ["a", "b", "c"]
        .iter()
        .map(|n| Proc::start(&net, n))
        .collect();
    let a_head = finish_publish(&net, spawn_publish(&net, "a", 50), "a", 1, 50);

    for node in ["a", "b", "c"] {
        wait_sync(
            &format!("{node}'s status: every peer connected, nothing owed"),
            CONVERGE,
            || {
                let s = cli_status(&net.config_path(node))?;
                let settled = s.running
                    && s.peers.len() == 2
                    && s.peers.iter().all(|p| p.connected && p.backlog == 0)
                    && s.feeds.len() == 3
                    && heads_of(&s.feeds)["a"] == a_head;
                if settled {
                    Ok(())
                } else {
                    Err(format!("{s:?}"))
                }
            },
        );
    }

    let out = Command::new(herald_bin())
        .args([
            "query",
            "--to",
            "b",
            "--type",
            "herald.head",
            "--data",
            r#"{"feed":"a"}"#,
        ])
        .args(["--correlation-id", "cli-1", "--json", "--config"])
        .arg(net.config_path("a"))
        .output()
        .expect("run herald query");
    common::cli::assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("query JSON");
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(v["source"], "b");
    assert_eq!(v["correlation_id"], "cli-1");
    assert_eq!(v["signed_by_responder"], true);
    assert_eq!(v["payload"]["seq"].as_u64(), Some(a_head.0), "{v}");
    assert_eq!(
        v["payload"]["hash"].as_str(),
        Some(hex::encode(a_head.1).as_str())
    );

    // Graceful stop: exit 0 within a few seconds.
    let started = Instant::now();
    let status = procs[0].sigterm(Duration::from_secs(6));
    assert!(
        status.success(),
        "a exited {status}: {}",
        procs[0].log_tail()
    );
    eprintln!("a stopped {:?} after SIGTERM", started.elapsed());

    // Offline status still works.
    let s = cli_status(&net.config_path("a")).expect("offline status");
    assert!(!s.running);
    assert_eq!(heads_of(&s.feeds)["a"], a_head);
    assert_eq!(s.feeds.len(), 3);
    assert!(s.peers.iter().all(|p| !p.connected), "{s:?}");
    // The others notice a is gone.
    for node in ["b", "c"] {
        wait_sync(
            &format!("{node} to see a disconnected"),
            Duration::from_secs(10),
            || {
                let s = cli_status(&net.config_path(node))?;
                let pa = s.peers.iter().find(|p| p.name == "a").ok_or("no peer a")?;
                if pa.connected {
                    Err(format!("{pa:?}"))
                } else {
                    Ok(())
                }
            },
        );
    }
    for p in &mut procs[1..] {
        let status = p.sigterm(Duration::from_secs(6));
        assert!(status.success(), "{} exited {status}", p.name);
    }
}

// ---------------------------------------------------------------------------
// 8. A node that dials its peers is SIGKILLed and restarted at once: the
//    survivors replicate with the new process, and their status says it is
//    connected once the dead process's connection has timed out.

#[test]
fn status_shows_a_restarted_dialer_connected() {
    let net = Net::mesh(&["a", "b", "c"]);
    let mut a = Proc::start(&net, "a");
    let mut others: Vec<Proc> = ["b", "c"].iter().map(|n| Proc::start(&net, n)).collect();
    let before = finish_publish(&net, spawn_publish(&net, "a", 20), "a", 1, 20);
    wait_sync("b and c to see a connected", CONVERGE, || {
        for node in ["b", "c"] {
            let s = cli_status(&net.config_path(node))?;
            if !s.peers.iter().any(|p| p.name == "a" && p.connected) {
                return Err(format!("{node}: {s:?}"));
            }
        }
        Ok(())
    });
    wait_feed_head(&net, &["b"], "a", before);

    a.sigkill();
    let killed = Instant::now();
    let _a = Proc::start(&net, "a"); // a sorts first: it dials b and c again
    let after = finish_publish(&net, spawn_publish(&net, "a", 20), "a", 21, 20);
    wait_feed_head(&net, &["b", "c"], "a", after);

    // The dead process's connections end by idle timeout; after that, the
    // live connection must still be shown.
    let settle = herald::net::IDLE_TIMEOUT + Duration::from_secs(2);
    for node in ["b", "c"] {
        wait_sync(
            &format!("{node}'s status to show the restarted a connected"),
            settle + Duration::from_secs(15),
            || {
                let s = cli_status(&net.config_path(node))?;
                let pa = s.peers.iter().find(|p| p.name == "a").ok_or("no peer a")?;
                if killed.elapsed() > settle && pa.connected {
                    Ok(())
                } else {
                    Err(format!("{:?} after kill: {pa:?}", killed.elapsed()))
                }
            },
        );
    }
    for p in &mut others {
        assert!(p.sigterm(Duration::from_secs(6)).success());
    }
}

// ---------------------------------------------------------------------------
// 9. `herald publish` through a running node, with a consumer that is slow to
//    read its receipts (a full stdout pipe for a few seconds).

#[test]
fn publish_survives_a_slow_reader() {
    let net = Net::mesh(&["a"]);
    let _a = Proc::start(&net, "a");
    let mut child = Command::new(herald_bin())
        .args(["publish", "--json", "--type", "slow.reader", "--data", "{}"])
        .args(["--count", "3000", "--config"])
        .arg(net.config_path("a"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald publish");
    // The stimulus: nobody reads stdout for longer than the idle timeout.
    std::thread::sleep(herald::net::IDLE_TIMEOUT + Duration::from_secs(2));
    let stdout = child.stdout.take().unwrap();
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "publish exited {} ({}) after printing {} receipts; a's store holds {:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        lines.len(),
        store_heads(&net.data_dir("a")).map(|h| show(&h))
    );
    let out = std::process::Output {
        stdout: lines.join("\n").into_bytes(),
        ..out
    };
    let head = check_receipts(&net, out, "a", 1, 3000);
    wait_store_heads(
        &net,
        &["a"],
        &[("a".to_string(), head)].into_iter().collect(),
    );
}

// ---------------------------------------------------------------------------
// A node that lost its store recovers its own feed before proclaiming again.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_store_recovers_its_feed_and_never_forks_it() {
    let net = Net::mesh(&["a", "b", "c"]);
    let a = Node::start(&net.config("a")).await.expect("start a");
    let b = Node::start(&net.config("b")).await.expect("start b");
    let c = Node::start(&net.config("c")).await.expect("start c");
    let mut last = None;
    for i in 0..20 {
        let r = c
            .proclaim(
                "recovery.test",
                format!(r#"{{"i":{i}}}"#).as_bytes(),
                vec![],
            )
            .await
            .expect("proclaim");
        last = Some((r.seq, r.hash));
    }
    let (before_seq, _) = last.expect("proclaimed");
    let mut expected = node_heads(&a).await;
    expected.insert("c".into(), last.expect("proclaimed"));
    wait_async("a and b to hold c's feed", CONVERGE, || async {
        let (ha, hb) = (node_heads(&a).await, node_heads(&b).await);
        if ha.get("c") == expected.get("c") && hb.get("c") == expected.get("c") {
            Ok(())
        } else {
            Err(format!("a {} b {}", show(&ha), show(&hb)))
        }
    })
    .await;

    // c loses its whole store.
    c.shutdown().await;
    std::fs::remove_dir_all(net.data_dir("c")).expect("remove c's store");
    let c = Node::start(&net.config("c")).await.expect("restart c");
    // Its next proclamation continues the old feed: it waited to recover it.
    let next = c
        .proclaim("recovery.test", b"{\"after\":true}", vec![])
        .await
        .expect("proclaim after recovery");
    assert_eq!(
        next.seq,
        before_seq + 1,
        "c resumed its feed instead of starting a new one"
    );
    expected.insert("c".into(), (next.seq, next.hash));
    let b_head = node_heads(&b).await["b"];
    expected.insert("b".into(), b_head);
    converge(&[&a, &b, &c], &expected).await;
    for node in [a, b, c] {
        let heads = node_heads(&node).await;
        node.shutdown().await;
        let _ = heads;
    }
    for node in ["a", "b", "c"] {
        let report = audit(&net, node);
        assert!(report.valid, "{node}: {:?}", report.problems);
        assert!(
            report.feeds.iter().all(|f| f.status == "valid"),
            "no fork anywhere"
        );
    }
}
