//! `herald tail` as a user runs it: catching up, filtering, start points,
//! bad input, and following new events until a signal.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::herald_bin;

fn herald(args: &[&str]) -> Output {
    Command::new(herald_bin())
        .args(args)
        .output()
        .expect("run herald")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn init(dir: &Path) -> String {
    let o = herald(&["init", "--dir", dir.to_str().unwrap(), "--nodes", "a,b"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    dir.join("a.toml").to_string_lossy().into_owned()
}

fn publish(config: &str, event_type: &str, data: &str, count: usize) {
    let count = count.to_string();
    let o = herald(&[
        "publish", "--config", config, "--type", event_type, "--data", data, "--count", &count,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// Runs `herald tail` to completion and parses its JSON lines.
fn tail_json(config: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["tail", "--config", config, "--json"];
    args.extend_from_slice(extra);
    let o = herald(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

fn field<'a>(lines: &'a [serde_json::Value], name: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().map(|l| &l[name]).collect()
}

#[test]
fn tail_prints_every_event_in_arrival_order_and_filters_by_type() {
    let tmp = tempfile::tempdir().unwrap();
    let config = init(tmp.path());
    publish(&config, "donation.received", r#"{"donor":"D-1"}"#, 1);
    publish(&config, "volunteer.signed_up", r#"{"v":1}"#, 3);

    let all = tail_json(&config, &[]);
    assert_eq!(
        field(&all, "seq"),
        [0, 1, 2, 3, 4].iter().collect::<Vec<_>>()
    );
    let arrivals: Vec<u64> = all.iter().map(|l| l["arrival"].as_u64().unwrap()).collect();
    assert!(arrivals.windows(2).all(|w| w[0] < w[1]), "{arrivals:?}");
    assert_eq!(
        all[1]["data"]["donor"], "D-1",
        "decrypted with the channel key"
    );

    let donations = tail_json(&config, &["--type", "donation.*"]);
    assert_eq!(donations.len(), 1);
    assert_eq!(donations[0]["type"], "donation.received");
    let volunteers = tail_json(&config, &["--type", "*.signed_up", "--feed", "a"]);
    assert_eq!(volunteers.len(), 3);
    assert!(tail_json(&config, &["--feed", "b"]).is_empty());

    // The human form: one line per event, like `herald log`.
    let o = herald(&["tail", "--config", &config, "--type", "donation.*"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("a/1 donation.received"), "{text}");
}

#[test]
fn tail_from_a_timestamp_now_and_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let config = init(tmp.path());
    // Separate processes: distinct timestamps.
    for t in ["t.one", "t.two", "t.three"] {
        publish(&config, t, "{}", 1);
    }
    let all = tail_json(&config, &[]);
    let two = all[2]["timestamp"].as_str().unwrap().to_string();
    assert_eq!(all[2]["type"], "t.two");
    assert_ne!(all[1]["timestamp"], all[2]["timestamp"]);

    let from_two = tail_json(&config, &["--from", &two]);
    assert_eq!(
        field(&from_two, "type"),
        ["t.two", "t.three"].iter().collect::<Vec<_>>()
    );
    assert!(tail_json(&config, &["--from", "now"]).is_empty());
    assert_eq!(tail_json(&config, &["--from", "start"]).len(), 4);
    assert!(
        tail_json(&config, &["--from", "2999-01-01T00:00:00Z"]).is_empty(),
        "no event at or after a future time"
    );

    for bad in ["yesterday", "2024-13-01T00:00:00Z"] {
        let o = herald(&["tail", "--config", &config, "--from", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert!(stderr(&o).contains(bad), "{}", stderr(&o));
        assert!(stderr(&o).contains("RFC 3339"), "{}", stderr(&o));
        assert!(o.stdout.is_empty());
    }
    let o = herald(&[
        "tail",
        "--config",
        &tmp.path().join("b.toml").to_string_lossy(),
    ]);
    assert_eq!(o.status.code(), Some(2), "b has no store yet");
    assert!(stderr(&o).contains("herald.db"), "{}", stderr(&o));
}

/// Kills the child if the test fails before it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn tail_follow_prints_events_published_after_it_started_and_exits_0_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let config = init(tmp.path());
    publish(&config, "before.start", "{}", 1);

    let mut child = Running(
        Command::new(herald_bin())
            .args(["tail", "--config", &config, "--json", "--follow"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tail"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || -> serde_json::Value {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("tail printed a line in time");
        serde_json::from_str(&line).unwrap()
    };
    assert_eq!(next()["type"], "herald.genesis");
    assert_eq!(next()["type"], "before.start");

    publish(&config, "after.start", r#"{"n":7}"#, 1);
    let late = next();
    assert_eq!(late["type"], "after.start");
    assert_eq!(late["data"]["n"], 7);
    assert!(child.0.try_wait().unwrap().is_none(), "still following");

    let pid = child.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "tail ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "SIGTERM ends tail with exit 0");
}
