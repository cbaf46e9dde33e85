//! The command line's contract with scripts (docs/CLI.md): one-line
//! `herald: error:` messages naming the culprit, the documented exit codes,
//! configs that cannot work refused at load, client slots that a script
//! calling the CLI in a loop never runs out of, and a node that stops
//! proclaiming for a `publish` client that went away.
//!
//! The real binary runs in temporary directories, against real nodes on
//! 127.0.0.1 (QUIC, mutual TLS, SQLite). `HERALD_TEST_BIN` runs the same
//! checks against another build (e.g. an older one, to see them fail).

mod common;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::net::Net;
use herald::node::CLIENT_CONNECTIONS_MAX;
use herald::node::client::{
    CLIENT_PUBLISH_BATCH_EVENTS, CLIENT_PUBLISH_BATCHES_IN_FLIGHT,
    CLIENT_STREAM_RECEIVE_WINDOW_BYTES, ClientRequest, ClientResponse, NodeClient,
};

/// Longest any wait for a condition may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);
/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(20);
/// Fewest bytes a receipt takes in a `Receipts` frame (postcard: a 16-byte
/// id, a varint seq of at least one byte, a 32-byte hash).
const RECEIPT_WIRE_BYTES_MIN: usize = 16 + 1 + 32;

fn bin() -> PathBuf {
    std::env::var_os("HERALD_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(common::herald_bin()))
}

fn herald<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run herald")
}

/// `herald status --json --config config`.
fn status_json(config: &Path) -> Output {
    herald([
        OsStr::new("status"),
        OsStr::new("--json"),
        OsStr::new("--config"),
        config.as_os_str(),
    ])
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit 2 and exactly one stderr line, `herald: error: ...`, containing
/// every one of `needles`.
#[track_caller]
fn assert_usage_error(what: &str, o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{what}: exit code; stderr {err:?}"
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{what}: one error line, got {err:?}"
    );
    assert!(
        err.starts_with("herald: error: "),
        "{what}: documented prefix, got {err:?}"
    );
    for needle in needles {
        assert!(
            err.contains(needle),
            "{what}: {err:?} should name {needle:?}"
        );
    }
}

fn init(dir: &Path) -> PathBuf {
    let cluster = dir.join("c");
    let out = herald([
        OsStr::new("init"),
        OsStr::new("--dir"),
        cluster.as_os_str(),
        OsStr::new("--nodes"),
        OsStr::new("a,b"),
    ]);
    assert_eq!(out.status.code(), Some(0), "init: {}", stderr(&out));
    cluster
}

fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {WAIT:?} waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

// ---------------------------------------------------------------------------
// Usage errors, config errors, exit codes (no node running).

#[test]
fn usage_and_config_errors_are_one_line_naming_the_culprit_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = init(tmp.path());
    let a = cluster.join("a.toml");
    let a = a.to_str().unwrap();
    let publish = |extra: &[&str]| {
        let mut args = vec!["publish", "--config", a, "--type", "t", "--data", "{}"];
        args.extend_from_slice(extra);
        herald(args)
    };

    // --count: zero, not a number, negative (no node runs).
    for (value, needle) in [("0", "at least 1"), ("abc", "whole number"), ("-1", "'-1'")] {
        let out = publish(&["--count", value]);
        assert_usage_error(&format!("--count {value}"), &out, &["--count", needle]);
    }
    // Nothing was written by any of them: the node never ran.
    assert!(
        !cluster.join("data/a").exists(),
        "a usage error wrote a store"
    );

    // Unknown flags, with clap's suggestion folded into the line.
    assert_usage_error(
        "unknown flag",
        &herald(["status", "--config", a, "--bogus"]),
        &["'--bogus'", "herald status --help"],
    );
    assert_usage_error(
        "misspelt flag",
        &herald(["status", "--config", a, "--jsn"]),
        &["'--jsn'", "--json"],
    );
    // Negative values of other numeric flags name the flag too.
    assert_usage_error(
        "negative --days",
        &herald(["keygen", "ca", "--dir", "x", "--days", "-5"]),
        &["--days", "'-5'"],
    );
    // Missing arguments and a missing command.
    assert_usage_error(
        "missing required",
        &herald(["publish", "--config", a]),
        &["--type", "--data"],
    );
    assert_usage_error("no command", &herald::<_, &str>([]), &["herald <COMMAND>"]);
    assert_usage_error("no subcommand", &herald(["keygen"]), &["herald keygen"]);

    // Non-UTF-8 values: the flag and the bytes, escaped.
    let bad = OsStr::from_bytes(b"d\xffnation");
    let out = herald([
        OsStr::new("publish"),
        OsStr::new("--config"),
        OsStr::new(a),
        OsStr::new("--type"),
        bad,
        OsStr::new("--data"),
        OsStr::new("{}"),
    ]);
    assert_usage_error("non-UTF-8 --type", &out, &["--type", "UTF-8", "\\xFF"]);
    let out = herald([
        OsStr::new("publish"),
        OsStr::new("--config"),
        OsStr::new(a),
        OsStr::new("--data"),
        OsStr::new("{}"),
        OsStr::from_bytes(b"--type=\xfe"),
    ]);
    assert_usage_error("non-UTF-8 --type=", &out, &["--type", "UTF-8", "\\xFE"]);

    // TOML errors: file, line and the offending key, on one line.
    let text = std::fs::read_to_string(cluster.join("a.toml")).unwrap();
    let broken = cluster.join("broken.toml");
    std::fs::write(&broken, format!("{text}\nbogus = \n")).unwrap();
    let line = text.lines().count() + 2;
    assert_usage_error(
        "TOML syntax",
        &herald([
            OsStr::new("status"),
            OsStr::new("--config"),
            broken.as_os_str(),
        ]),
        &["broken.toml", &format!("line {line}"), "bogus"],
    );
    std::fs::write(&broken, text.replace("listen = ", "listen_at = ")).unwrap();
    assert_usage_error(
        "TOML unknown key",
        &herald([
            OsStr::new("status"),
            OsStr::new("--config"),
            broken.as_os_str(),
        ]),
        &["broken.toml", "line ", "listen_at"],
    );

    // The other TOML files: a saga definition and the revocation list.
    let saga = cluster.join("saga.toml");
    std::fs::write(&saga, "saga_type = \"x\"\ndeadline_ms = \"soon\"\n").unwrap();
    assert_usage_error(
        "saga definition TOML",
        &herald([
            OsStr::new("saga"),
            OsStr::new("start"),
            OsStr::new("--config"),
            OsStr::new(a),
            OsStr::new("--definition"),
            saga.as_os_str(),
        ]),
        &[
            "saga.toml",
            "line 2, column 15 (`deadline_ms",
            "expected u64",
        ],
    );
    std::fs::write(
        cluster.join("keys/revoked.toml"),
        "[[revoked]]\nserial = \n",
    )
    .unwrap();
    assert_usage_error(
        "revocation list TOML",
        &herald(["node", "--config", a]),
        &["revoked.toml", "line 2, column 10 (`serial", "quoted"],
    );
    std::fs::write(cluster.join("keys/revoked.toml"), "").unwrap();

    // A default channel without a key is refused at load, by every command,
    // and the node does not start.
    let nokey = cluster.join("nokey.toml");
    std::fs::write(
        &nokey,
        text.replace(
            "default_channel = \"default\"",
            "default_channel = \"news\"",
        ),
    )
    .unwrap();
    for command in ["node", "status"] {
        let out = herald([
            OsStr::new(command),
            OsStr::new("--config"),
            nokey.as_os_str(),
        ]);
        assert_usage_error(
            &format!("{command} with unknown default_channel"),
            &out,
            &["nokey.toml", "default_channel", "\"news\""],
        );
    }

    // Names that cannot work: a peer listed twice, the node as its own
    // peer, a service name no certificate can carry.
    let peer_b = "\n[[peers]]\nname = \"b\"\naddress = \"127.0.0.1:9\"\n";
    let peer_a = "\n[[peers]]\nname = \"a\"\naddress = \"127.0.0.1:9\"\n";
    for (name, config, needles) in [
        ("dup", format!("{text}{peer_b}"), ["\"b\"", "twice"]),
        ("self", format!("{text}{peer_a}"), ["\"a\"", "itself"]),
        (
            "badname",
            text.replace("service = \"a\"", "service = \"Bad Name\""),
            ["service", "\"Bad Name\""],
        ),
    ] {
        let path = cluster.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let out = herald([OsStr::new("node"), OsStr::new("--config"), path.as_os_str()]);
        let file = format!("{name}.toml");
        let mut needles = needles.to_vec();
        needles.push(&file);
        assert_usage_error(&format!("config {name}"), &out, &needles);
    }

    // A node that never ran: `status` exits 2, as documented, and every
    // command reading its store says that it never ran.
    for args in [
        vec!["status", "--config", a],
        vec!["status", "--json", "--config", a],
        vec!["log", "--config", a],
        vec!["tail", "--config", a],
        vec!["export", "--config", a, "--out", "x.hrld"],
        vec!["saga", "list", "--config", a],
    ] {
        assert_usage_error(
            &format!("{args:?} of a node that never ran"),
            &herald(&args),
            &["never run", "herald node --config"],
        );
    }

    // Help and version are not errors.
    for args in [["publish", "--help"], ["--version", ""]] {
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
        let out = herald(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(!out.stdout.is_empty(), "{args:?} prints to stdout");
    }
}

#[test]
fn certificate_times_in_errors_are_rfc3339() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = init(tmp.path());
    let day = 86_400_000_000u64;
    let now = herald::clock::now_us();
    herald::identity::issue_node_with_validity(
        &cluster.join("keys"),
        "a",
        now - 3 * day,
        now - day,
        true,
    )
    .unwrap();
    let out = herald([
        OsStr::new("node"),
        OsStr::new("--config"),
        cluster.join("a.toml").as_os_str(),
    ]);
    assert_usage_error("expired certificate", &out, &["expired", "a.crt"]);
    let err = stderr(&out);
    // An RFC 3339 UTC time (`2026-12-01T13:03:05Z`), no raw microseconds.
    let year = err
        .find("expired at ")
        .map(|i| &err[i + 11..])
        .unwrap_or("");
    assert!(
        year.len() > 20 && year.as_bytes()[4] == b'-' && year.as_bytes()[10] == b'T',
        "RFC 3339 time after `expired at`: {err:?}"
    );
    assert!(!err.contains(" us"), "raw microseconds in {err:?}");
}

/// An RFC 3339 UTC time with microseconds (`2026-12-01T13:03:05.000000Z`).
fn is_rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    text.len() == 27
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[19] == b'.'
        && b[26] == b'Z'
        && humantime::parse_rfc3339(text).is_ok()
}

#[test]
fn event_time_checks_name_rfc3339_times() {
    use herald::core::crypto::ChannelKey;
    use herald::core::verify::{Check, DecodedEvent, Draft, Entropy, FeedVerifier, Sealer};

    let net = Net::mesh(&["a"]);
    let trust = net.trust();
    let keys = net.keys();
    let now = herald::clock::now_us();
    let identity = herald::identity::NodeIdentity::load(
        "a",
        &keys.join("a.key"),
        &keys.join("a.crt"),
        &trust,
        now,
    )
    .unwrap();
    let (_, genesis) = Sealer::new_feed("a", identity.signing_key.clone())
        .with_format(herald::core::limits::FORMAT_VERSION_SIGNED)
        .start_feed(&identity.cert.der, *uuid::Uuid::now_v7().as_bytes(), now);
    let channel = ChannelKey::new("default", [0x5a; 32]);
    let seal_at = |timestamp_us: u64| {
        let mut sealer = Sealer::resume("a", identity.signing_key.clone(), 0, *genesis.hash(), 0)
            .with_format(herald::core::limits::FORMAT_VERSION_SIGNED);
        let draft = Draft::new("t", 1, vec![], b"{}".to_vec()).unwrap();
        let entropy = Entropy {
            id: *uuid::Uuid::now_v7().as_bytes(),
            nonce: [3; 24],
        };
        let mut events = sealer.seal_batch(vec![(draft, &channel, entropy)], timestamp_us);
        DecodedEvent::decode(events.remove(0).into_bytes()).unwrap()
    };
    let day = 86_400_000_000u64;
    for (at, check) in [
        (now - 1_000_000, Check::Timestamp),
        (now + 400 * day, Check::CertificateValidity),
    ] {
        let decoded_genesis = DecodedEvent::decode(genesis.bytes().to_vec()).unwrap();
        let (mut verifier, _) = FeedVerifier::genesis(&*trust, decoded_genesis, None).unwrap();
        let event = seal_at(at);
        let verdict = verifier.check_signature(&event);
        let rejection = verifier.check_next(&event, verdict).unwrap_err();
        assert_eq!(rejection.check, check, "{rejection}");
        let found = &rejection.found;
        assert!(is_rfc3339(found), "{check:?}: found {found:?}");
        // Every number in `expected` is a time, and every time is RFC 3339.
        let numbers: Vec<&str> = rejection
            .expected
            .split(' ')
            .filter(|w| w.starts_with(|c: char| c.is_ascii_digit()))
            .collect();
        assert!(!numbers.is_empty(), "{check:?}: {:?}", rejection.expected);
        for word in numbers {
            assert!(
                is_rfc3339(word),
                "{check:?}: {word:?} in {:?}",
                rejection.expected
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Against a running node.

/// `herald node` as a child process; killed on drop if still running.
struct NodeProc {
    child: Child,
    log: PathBuf,
}

impl NodeProc {
    fn start(net: &Net, name: &str) -> NodeProc {
        let log = net.path().join(format!("{name}.log"));
        let child = common::spawn_node(&bin(), &net.config_path(name), &log);
        let node = NodeProc { child, log };
        // Running once its client endpoint answers `status`.
        let config = net.config_path(name);
        wait_for("the node to answer status", || {
            let out = status_json(&config);
            let text = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && text.contains("\"running\":true") {
                Ok(())
            } else {
                Err(format!("{}{}", text, stderr(&out)))
            }
        });
        node
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The node's own feed head, read from its store (read-only, as a tool).
fn own_head(net: &Net, node: &str) -> u64 {
    let conn = herald::store::open_read_only(&net.data_dir(node)).expect("open store");
    herald::store::read_heads_from(&conn)
        .expect("heads")
        .into_iter()
        .find(|h| h.feed == node)
        .map_or(0, |h| h.seq)
}

/// Starts `herald publish --count 1000000 --json` through node "a", its
/// receipts written to `receipts` (a file: after a kill it holds exactly
/// what the client printed; a pipe would hold an unknown backlog).
fn spawn_endless_publish(net: &Net, receipts: &Path, stderr: Stdio) -> std::process::Child {
    Command::new(bin())
        .args([
            "publish", "--json", "--type", "load", "--data", "{}", "--count", "1000000", "--config",
        ])
        .arg(net.config_path("a"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(receipts).expect("receipts file"))
        .stderr(stderr)
        .spawn()
        .expect("spawn publish")
}

/// The sequence number of the last complete receipt line in `receipts` (a
/// killed client may leave half a line).
fn last_receipt_seq(receipts: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(receipts).unwrap_or_default();
    text.lines().rev().find_map(|l| {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .and_then(|v| v["seq"].as_u64())
    })
}

#[test]
fn a_script_calling_the_cli_in_a_loop_never_runs_out_of_client_slots() {
    let net = Net::mesh(&["a"]);
    let node = NodeProc::start(&net, "a");
    let config = net.config_path("a");
    let mut published = 0u64;
    // More back-to-back calls than the node has client slots (64), several
    // per idle timeout: each must give its slot back when it exits.
    for i in 0..100 {
        let out = status_json(&config);
        assert_eq!(
            out.status.code(),
            Some(0),
            "status call {i}: {}\nnode log:\n{}",
            stderr(&out),
            node.log()
        );
        if i % 20 == 0 {
            let out = herald(
                [
                    "publish", "--json", "--type", "tick", "--data", "{}", "--count", "3",
                    "--config",
                ]
                .into_iter()
                .map(OsStr::new)
                .chain([config.as_os_str()]),
            );
            assert_eq!(
                out.status.code(),
                Some(0),
                "publish in call {i}: {}",
                stderr(&out)
            );
            published += 3;
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).lines().count(),
                3,
                "three receipts"
            );
        }
    }
    assert_eq!(own_head(&net, "a"), published, "genesis + every tick");
    // Each call gave its slot back as it exited: none was refused, and
    // none even had to wait for a slot.
    assert!(
        !node.log().contains("too many clients") && !node.log().contains("slots taken"),
        "no client waited or was refused:\n{}",
        node.log()
    );
}

#[test]
fn the_node_stops_proclaiming_for_a_publish_client_that_was_killed() {
    let net = Net::mesh(&["a"]);
    let node = NodeProc::start(&net, "a");
    // Receipts go to a file: after the kill it holds exactly what the
    // client printed (a pipe would hold an unknown backlog).
    let receipts = net.path().join("receipts.jsonl");
    let mut client = spawn_endless_publish(&net, &receipts, Stdio::null());
    // Wait until a few batches were printed, then kill the client without
    // letting it close anything.
    let printed = || last_receipt_seq(&receipts);
    wait_for("three batches of receipts", || match printed() {
        Some(seq) if seq >= 3 * CLIENT_PUBLISH_BATCH_EVENTS as u64 => Ok(()),
        other => Err(format!("last receipt {other:?}")),
    });
    client.kill().expect("SIGKILL the client");
    client.wait().expect("reap the client");
    let last_seq = printed().expect("receipts");

    // What the node may still proclaim for the dead client: receipts in its
    // stream window that it never read (a receipt is at least
    // RECEIPT_WIRE_BYTES_MIN on the wire), the batch it was printing, and the
    // batches in flight. Without the fix it goes on for tens of thousands.
    let window_batches = (CLIENT_STREAM_RECEIVE_WINDOW_BYTES as usize / RECEIPT_WIRE_BYTES_MIN)
        .div_ceil(CLIENT_PUBLISH_BATCH_EVENTS);
    let bound = last_seq
        + ((CLIENT_PUBLISH_BATCHES_IN_FLIGHT + window_batches + 1) * CLIENT_PUBLISH_BATCH_EVENTS)
            as u64;
    let stopped = "stopped proclaiming for it";
    wait_for("the node to notice the client went away", || {
        let head = own_head(&net, "a");
        assert!(
            head <= bound,
            "the node proclaimed up to {head} for a client killed after receipt {last_seq} \
             (bound {bound})\n{}",
            node.log()
        );
        if node.log().contains(stopped) {
            Ok(())
        } else {
            Err(format!("head {head}"))
        }
    });
    // Once it said so, it proclaims nothing more for that client.
    let head = own_head(&net, "a");
    assert!(head <= bound, "head {head} over {bound}");
    let out = herald(
        [
            OsStr::new("status"),
            OsStr::new("--json"),
            OsStr::new("--config"),
        ]
        .into_iter()
        .chain([net.config_path("a").as_os_str()]),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(own_head(&net, "a"), head, "the head moved after the stop");
}

#[test]
fn a_full_client_table_makes_a_new_tool_wait_for_a_slot_not_fail() {
    let net = Net::mesh(&["a"]);
    let node = NodeProc::start(&net, "a");
    let config = net.config("a");
    let status_args: Vec<OsString> = vec![
        "status".into(),
        "--json".into(),
        "--config".into(),
        net.config_path("a").into(),
    ];
    // Take every slot: each client is served (its status answered), so the
    // node holds a slot for it until it closes.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut held = runtime.block_on(async {
        let mut held = Vec::new();
        for _ in 0..CLIENT_CONNECTIONS_MAX {
            let client = NodeClient::connect(&config).await.expect("connect");
            client
                .request_one(&ClientRequest::Status, "status", |r| match r {
                    ClientResponse::Status(s) => Some(s),
                    _ => None,
                })
                .await
                .expect("status");
            held.push(client);
        }
        held
    });
    let waiting = "client slots taken; the client waits";
    let waits = |node: &NodeProc| node.log().matches(waiting).count();

    // Still full after the wait: refused, one line, exit 2.
    let out = herald(&status_args);
    assert_usage_error("a tool beyond the limit", &out, &["too many clients"]);
    assert_eq!(waits(&node), 1, "the refused tool waited first");

    // Full while it arrives, a slot frees while it waits: it is served.
    let tool = Command::new(bin())
        .args(&status_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn status");
    let pid = tool.id();
    wait_for("the tool to wait for a slot", || {
        let exited = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        });
        assert!(
            !exited,
            "the tool ended before a slot freed:\n{}",
            node.log()
        );
        if waits(&node) == 2 {
            Ok(())
        } else {
            Err(node.log())
        }
    });
    runtime.block_on(held.pop().expect("a held client").finish());
    let out = tool.wait_with_output().expect("status output");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"running\":true"));
    runtime.block_on(async {
        for client in held {
            client.finish().await;
        }
    });
}

#[test]
fn an_interrupted_publish_closes_and_the_node_stops_at_once() {
    let net = Net::mesh(&["a"]);
    let node = NodeProc::start(&net, "a");
    let receipts = net.path().join("receipts.jsonl");
    let client = spawn_endless_publish(&net, &receipts, Stdio::piped());
    let printed = || last_receipt_seq(&receipts);
    wait_for("two batches of receipts", || match printed() {
        Some(seq) if seq >= 2 * CLIENT_PUBLISH_BATCH_EVENTS as u64 => Ok(()),
        other => Err(format!("last receipt {other:?}")),
    });
    // SIGTERM, as a supervisor or `timeout` sends: the tool closes its
    // connection, says so on one line and exits 2.
    let ok = Command::new("kill")
        .args(["-TERM", &client.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    let out = client.wait_with_output().expect("publish output");
    assert_usage_error("interrupted publish", &out, &["interrupted"]);
    let last_seq = printed().expect("receipts");

    // The node learns at once (no idle timeout): only the batches in
    // flight, and the one being delivered, follow the last printed receipt.
    wait_for("the node to stop proclaiming", || {
        if node.log().contains("stopped proclaiming for it") {
            Ok(())
        } else {
            Err(format!("head {}", own_head(&net, "a")))
        }
    });
    let head = own_head(&net, "a");
    let bound =
        last_seq + ((CLIENT_PUBLISH_BATCHES_IN_FLIGHT + 1) * CLIENT_PUBLISH_BATCH_EVENTS) as u64;
    assert!(
        head <= bound,
        "head {head}, last receipt {last_seq}, bound {bound}\n{}",
        node.log()
    );
    assert!(
        node.log().contains("closed by peer"),
        "the node saw the tool's close, not a timeout:\n{}",
        node.log()
    );
}
