//! Channel key rotation end to end, as an operator runs it: a two-node
//! cluster publishes on channel `c`, `herald keygen channel --rotate` adds a
//! second key generation, the nodes restart with the keyring, more events are
//! published. Old and new events stay readable on both nodes (`herald log`,
//! `herald tail`, the HTTP API), new events carry the new key id, and the
//! export verifies with the whole keyring; with only the new generation the
//! old payloads are reported unreadable (`decrypt`) while every event's
//! signature chain still verifies. Bad rotations change nothing.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use common::herald_bin;
use common::net::Net;
use herald::config::ApiConfig;
use serde_json::Value;

/// Longest any condition is waited for.
const WAIT: Duration = Duration::from_secs(90);
/// Events each node publishes before and after the rotation.
const PER_NODE: usize = 3;

fn herald(args: &[&str]) -> Output {
    Command::new(herald_bin())
        .args(args)
        .output()
        .expect("run herald")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free TCP port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A `herald node` child process, SIGKILLed on drop if still running.
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
        let config = s(&net.config_path(name));
        wait(&format!("node {name} to start"), || {
            let o = herald(&["status", "--json", "--config", &config]);
            let status: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
            if status["running"] == true {
                Ok(())
            } else {
                Err(format!("{}{}", text(&o.stdout), proc.log_tail()))
            }
        });
        proc
    }

    /// SIGTERM (to this child's pid only) and wait for a clean exit.
    fn stop(mut self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(status.success(), "{} exited {status}", self.name);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not stop: {}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
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

/// Polls `probe` every 100 ms until it answers `Ok`, or fails after [`WAIT`].
fn wait<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {WAIT:?} waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `herald publish` of `PER_NODE` events of `event_type` on channel `c`.
fn publish(net: &Net, node: &str, event_type: &str) {
    let o = herald(&[
        "publish",
        "--config",
        &s(&net.config_path(node)),
        "--channel",
        "c",
        "--type",
        event_type,
        "--data",
        &format!(r#"{{"from":"{node}","type":"{event_type}"}}"#),
        "--count",
        &PER_NODE.to_string(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
}

/// `herald log|tail --config NODE --type rot.* --json`, one value per line.
fn read_cli(net: &Net, command: &str, node: &str) -> Vec<Value> {
    let o = herald(&[
        command,
        "--config",
        &s(&net.config_path(node)),
        "--type",
        "rot.*",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect()
}

/// Waits until `node` holds `n` events of type `rot.*`; returns them.
fn wait_events(net: &Net, node: &str, n: usize) -> Vec<Value> {
    wait(&format!("{node} to hold {n} rot.* events"), || {
        let events = read_cli(net, "log", node);
        if events.len() == n {
            Ok(events)
        } else {
            Err(format!("{} events", events.len()))
        }
    })
}

/// `GET /v1/events?type=rot.*` from a node's API.
fn api_events(addr: SocketAddr) -> Vec<Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let body: Value = reqwest::get(format!("http://{addr}/v1/events?type=rot.*&limit=1000"))
            .await
            .expect("GET /v1/events")
            .json()
            .await
            .expect("JSON answer");
        body["events"].as_array().expect("events").clone()
    })
}

/// The first `n` events of `GET /v1/stream?type=rot.*&from=start` (a
/// subscription, Server-Sent Events): each `data:` line's JSON.
fn api_stream(addr: SocketAddr, n: usize) -> Vec<Value> {
    use futures_util::StreamExt;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = reqwest::get(format!("http://{addr}/v1/stream?type=rot.*&from=start"))
            .await
            .expect("GET /v1/stream");
        let mut body = response.bytes_stream();
        let mut buffer = String::new();
        let mut events = Vec::new();
        let read = async {
            while events.len() < n {
                let chunk = body.next().await.expect("stream open").expect("bytes");
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find('\n') {
                    let line: String = buffer.drain(..=end).collect();
                    if let Some(json) = line.trim_end().strip_prefix("data: ") {
                        events.push(serde_json::from_str(json).expect("event JSON"));
                    }
                }
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .expect("the stream delivers every event");
        events
    })
}

/// Every event was decrypted: `log`/`tail` show its data, on channel `c`,
/// and it names the key generation of its type (`rot.old`: generation 1,
/// `rot.new`: generation 2).
fn assert_readable(events: &[Value], old_id: &str, new_id: &str, source: &str) {
    assert_eq!(events.len(), 4 * PER_NODE, "{source}: {events:?}");
    for e in events {
        let t = e["type"].as_str().unwrap();
        assert_eq!(e["channel"], "c", "{source}: {e}");
        assert_eq!(e["data"]["type"], t, "{source}: decrypted: {e}");
        let expected = if t == "rot.old" { old_id } else { new_id };
        assert_eq!(e["key_id"], expected, "{source}: {e}");
    }
}

#[test]
fn rotated_channel_reads_every_generation_on_every_node() {
    let net = Net::mesh(&["a", "b"]);
    let keys = net.keys();
    let o = herald(&["keygen", "channel", "--dir", &s(&keys), "--name", "c"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let key_file = keys.join("channel-c.key");
    let mut api = std::collections::BTreeMap::new();
    for node in ["a", "b"] {
        let port = free_tcp_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        api.insert(node, addr);
        net.edit(node, |c| {
            c.channels.insert("c".into(), key_file.clone());
            c.api = Some(ApiConfig {
                listen: addr,
                ..ApiConfig::default()
            });
        });
    }

    // Generation 1.
    let a = Proc::start(&net, "a");
    let b = Proc::start(&net, "b");
    publish(&net, "a", "rot.old");
    publish(&net, "b", "rot.old");
    let before = wait_events(&net, "b", 2 * PER_NODE);
    wait_events(&net, "a", 2 * PER_NODE);
    let old_id = before[0]["key_id"].as_str().unwrap().to_string();
    assert!(before.iter().all(|e| e["key_id"] == old_id.as_str()));

    // Bad rotations: a channel without a key file, a damaged key file.
    // Clear errors, exit 2, nothing written.
    let o = herald(&[
        "keygen",
        "channel",
        "--dir",
        &s(&keys),
        "--name",
        "nope",
        "--rotate",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("channel \"nope\" has no key file"),
        "{}",
        text(&o.stderr)
    );
    assert!(!keys.join("channel-nope.key").exists());
    let damaged = keys.join("channel-damaged.key");
    std::fs::write(&damaged, "0123\n").unwrap();
    let o = herald(&[
        "keygen",
        "channel",
        "--dir",
        &s(&keys),
        "--name",
        "damaged",
        "--rotate",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("malformed channel key: line 1"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(std::fs::read_to_string(&damaged).unwrap(), "0123\n");

    // Rotate while the nodes run, then restart them: they pick up the new
    // generation at start.
    let generation_1 = std::fs::read_to_string(&key_file).unwrap();
    let o = herald(&[
        "keygen",
        "channel",
        "--dir",
        &s(&keys),
        "--name",
        "c",
        "--rotate",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let rotated: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rotated["generation"], 2);
    assert_eq!(rotated["channel"], "c");
    let new_id = rotated["key_id"].as_str().unwrap().to_string();
    assert_ne!(new_id, old_id);
    let keyring = std::fs::read_to_string(&key_file).unwrap();
    assert!(keyring.starts_with(&generation_1), "generation 1 kept");
    a.stop();
    b.stop();
    let _a = Proc::start(&net, "a");
    let _b = Proc::start(&net, "b");
    publish(&net, "a", "rot.new");
    publish(&net, "b", "rot.new");

    // Both nodes read both generations: log, tail and the HTTP API.
    for node in ["a", "b"] {
        let events = wait_events(&net, node, 4 * PER_NODE);
        assert_readable(&events, &old_id, &new_id, &format!("log on {node}"));
        let tailed = read_cli(&net, "tail", node);
        assert_readable(&tailed, &old_id, &new_id, &format!("tail on {node}"));
        let served = api_events(api[node]);
        assert_eq!(served.len(), 4 * PER_NODE, "{served:?}");
        let streamed = api_stream(api[node], 4 * PER_NODE);
        for e in served.iter().chain(&streamed) {
            assert_eq!(e["channel"], "c", "API on {node}: {e}");
            assert_eq!(e["payload"], "json", "API on {node}: decrypted: {e}");
            assert_eq!(e["data"]["type"], e["type"], "API on {node}: {e}");
        }
    }

    // The export verifies with the keyring (every generation) ...
    let export = net.path().join("a.hrld");
    let o = herald(&[
        "export",
        "--config",
        &s(&net.config_path("a")),
        "--out",
        &s(&export),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let ca = s(&net.ca());
    let verify = |key_files: &[&Path]| {
        let mut args = vec![
            "verify".to_string(),
            s(&export),
            "--ca".into(),
            ca.clone(),
            "--json".into(),
        ];
        for k in key_files {
            args.push("--channel-key".into());
            args.push(s(k));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = herald(&args);
        let report: Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}{}", text(&o.stdout), text(&o.stderr)));
        (o.status.code(), report)
    };
    let default_key = keys.join("channel-default.key");
    let (code, report) = verify(&[&key_file, &default_key]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["valid"], true);
    let decrypted: u64 = report["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["decrypted"].as_u64().unwrap())
        .sum();
    // Every encrypted event: the rot.* ones and the genesis of each feed.
    assert!(decrypted >= 4 * PER_NODE as u64, "{report}");

    // ... and with only the newest generation, the old payloads are named
    // unreadable (`decrypt`, the old key id) while every event's signature
    // chain verifies.
    let only_new_dir = net.path().join("auditor");
    std::fs::create_dir(&only_new_dir).unwrap();
    let only_new = only_new_dir.join("channel-c.key");
    let newest_line = keyring
        .lines()
        .rfind(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .unwrap();
    std::fs::write(&only_new, format!("{newest_line}\n")).unwrap();
    let (code, report) = verify(&[&only_new, &default_key]);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["valid"], false);
    for f in report["feeds"].as_array().unwrap() {
        assert_eq!(f["verified"], f["events"], "signatures verify: {f}");
    }
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 2 * PER_NODE, "{report}");
    for p in problems {
        assert_eq!(p["check"], "decrypt", "{p}");
        assert!(
            p["found"].as_str().unwrap().contains(&old_id),
            "names the old key id: {p}"
        );
    }
    // The signature audit alone (no channel key) is valid.
    let (code, report) = verify(&[]);
    assert_eq!(code, Some(0), "{report}");
}
