//! Streaming input and output as a script uses them, against real nodes:
//! `herald publish --data @FILE` and `--data -` with payloads no argument
//! could carry, `herald publish --ndjson` (receipts per line as batches
//! become durable, bad lines, a million lines in flat memory), and
//! `herald tail --json` as NDJSON.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::net::Net;
use serde_json::{Value, json};

/// How long any one awaited condition may take before the test fails.
const WAIT: Duration = Duration::from_secs(60);
/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(20);
/// Herald's payload limit.
const PAYLOAD_MAX: usize = herald::core::limits::PAYLOAD_PLAINTEXT_BYTES_MAX;

fn herald_cmd(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(common::herald_bin());
    cmd.args(args).arg("--config").arg(config);
    cmd
}

/// Runs `herald ARGS --config CONFIG` with `stdin` as its input.
fn run(config: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = herald_cmd(config, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    // Written from a thread: the child may answer before it read it all.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().expect("wait for herald");
    writer.join().expect("stdin writer");
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object: {l}: {e}"))
        })
        .collect()
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

/// `herald node` as a child process; killed on drop.
struct NodeProc {
    child: Child,
    log: PathBuf,
}

impl NodeProc {
    /// Starts `name` and waits until its client endpoint answers.
    fn start(net: &Net, name: &str) -> NodeProc {
        let log = net.path().join(format!("{name}.log"));
        let config = net.config_path(name);
        let child = common::spawn_node(Path::new(common::herald_bin()), &config, &log);
        let node = NodeProc { child, log };
        wait_for("the node to answer status", || {
            let out = run(&config, &["status", "--json"], b"");
            let text = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && text.contains("\"running\":true") {
                Ok(())
            } else {
                Err(format!("{text}{}", stderr(&out)))
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

/// The head (last sequence number) of `node`'s own feed, read from its
/// store read-only, as a tool beside the running node would.
fn own_head(net: &Net, node: &str) -> u64 {
    let conn = herald::store::open_read_only(&net.data_dir(node)).expect("open store");
    herald::store::read_heads_from(&conn)
        .expect("heads")
        .into_iter()
        .find(|h| h.feed == node)
        .map_or(0, |h| h.seq)
}

/// Every event `tail --json` prints, each line parsed on its own.
fn tail_json(config: &Path) -> Vec<Value> {
    let out = run(config, &["tail", "--json"], b"");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    json_lines(&out)
}

/// The event of `feed` at `seq` in a `tail --json` listing.
fn event_at<'a>(events: &'a [Value], feed: &str, seq: u64) -> &'a Value {
    events
        .iter()
        .find(|e| e["feed"] == feed && e["seq"] == seq)
        .unwrap_or_else(|| panic!("no event {feed}/{seq}"))
}

fn receipt_seq(receipt: &Value) -> u64 {
    receipt["seq"].as_u64().expect("seq")
}

// ---------------------------------------------------------------------------
// --data @FILE and --data -

#[test]
fn data_from_a_file_and_from_stdin_carries_payloads_no_argument_can() {
    let net = Net::mesh(&["a"]);
    let config = net.config_path("a");
    let tmp = net.path();
    // 600 KiB inside an indented document: far over what an argument may
    // carry (128 KiB per argument on Linux).
    let document = json!({"blob": "b".repeat(600 * 1024), "n": 1, "nested": {"k": [1, 2]}});
    let file = tmp.join("big.json");
    std::fs::write(&file, serde_json::to_string_pretty(&document).unwrap()).unwrap();
    let at_file = format!("@{}", file.display());
    // Exactly at the limit, as compact JSON: a string of PAYLOAD_MAX bytes.
    let at_limit = format!("\"{}\"", "x".repeat(PAYLOAD_MAX - 2));
    let at_limit_file = tmp.join("at-limit.json");
    std::fs::write(&at_limit_file, &at_limit).unwrap();
    let at_limit_arg = format!("@{}", at_limit_file.display());
    let from_stdin = json!({"piped": "p".repeat(300 * 1024)});

    // With the node stopped, publish writes the store itself; then through
    // the running node. Both paths read the same inputs.
    let mut expected: Vec<(u64, Value)> = Vec::new();
    let mut node: Option<NodeProc> = None;
    for round in 0..2 {
        if round == 1 {
            node = Some(NodeProc::start(&net, "a"));
        }
        let out = run(
            &config,
            &[
                "publish",
                "--type",
                "doc.filed",
                "--data",
                &at_file,
                "--json",
            ],
            b"",
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "round {round}: {}",
            stderr(&out)
        );
        expected.push((receipt_seq(&json_lines(&out)[0]), document.clone()));

        let out = run(
            &config,
            &["publish", "--type", "doc.piped", "--data", "-", "--json"],
            from_stdin.to_string().as_bytes(),
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "round {round}: {}",
            stderr(&out)
        );
        expected.push((receipt_seq(&json_lines(&out)[0]), from_stdin.clone()));

        let out = run(
            &config,
            &[
                "publish",
                "--type",
                "doc.max",
                "--data",
                &at_limit_arg,
                "--json",
            ],
            b"",
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "a payload of exactly 1 MiB: {}",
            stderr(&out)
        );
        expected.push((
            receipt_seq(&json_lines(&out)[0]),
            Value::String("x".repeat(PAYLOAD_MAX - 2)),
        ));
    }
    let seqs: Vec<u64> = expected.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=6).collect::<Vec<_>>(),
        "one event each, in order"
    );
    let events = tail_json(&config);
    for (seq, data) in &expected {
        assert_eq!(
            &event_at(&events, "a", *seq)["data"],
            data,
            "a/{seq} decrypted"
        );
    }
    drop(node);
}

#[test]
fn bad_data_inputs_are_refused_naming_the_input_and_write_nothing() {
    let net = Net::mesh(&["a"]);
    let config = net.config_path("a");
    let tmp = net.path();
    let node = NodeProc::start(&net, "a");
    let head = own_head(&net, "a");

    let over = format!("\"{}\"", "x".repeat(PAYLOAD_MAX - 1));
    let over_file = tmp.join("over.json");
    std::fs::write(&over_file, &over).unwrap();
    let huge_file = tmp.join("huge.json");
    std::fs::write(
        &huge_file,
        vec![b' '; herald::cli::publish::DATA_INPUT_BYTES_MAX + 1],
    )
    .unwrap();
    let broken_file = tmp.join("broken.json");
    std::fs::write(&broken_file, "{\"a\":\n  1,,}").unwrap();
    let missing = tmp.join("missing.json");

    let at = |p: &Path| format!("@{}", p.display());
    let cases: Vec<(String, Vec<u8>, Vec<String>)> = vec![
        (
            at(&over_file),
            Vec::new(),
            vec![
                at(&over_file),
                format!("{} bytes", PAYLOAD_MAX + 1),
                format!("limit of {PAYLOAD_MAX} bytes"),
            ],
        ),
        (
            "-".into(),
            over.clone().into_bytes(),
            vec![
                "--data - (stdin)".into(),
                format!("{} bytes", PAYLOAD_MAX + 1),
                format!("limit of {PAYLOAD_MAX} bytes"),
            ],
        ),
        (
            at(&huge_file),
            Vec::new(),
            vec![
                format!("{} bytes", herald::cli::publish::DATA_INPUT_BYTES_MAX + 1),
                "DATA_INPUT_BYTES_MAX".into(),
            ],
        ),
        (
            at(&missing),
            Vec::new(),
            vec![at(&missing), "No such file".into()],
        ),
        (
            at(&broken_file),
            Vec::new(),
            vec![
                format!("{} is not valid JSON", at(&broken_file)),
                "line 2".into(),
            ],
        ),
        (
            "-".into(),
            b"not json".to_vec(),
            vec!["--data - (stdin) is not valid JSON".into()],
        ),
    ];
    for (data, stdin, needles) in cases {
        let out = run(
            &config,
            &["publish", "--type", "t.bad", "--data", &data],
            &stdin,
        );
        assert_eq!(
            out.status.code(),
            Some(2),
            "--data {data}: {}",
            stderr(&out)
        );
        let text = stderr(&out);
        assert_eq!(text.lines().count(), 1, "one line: {text}");
        assert!(text.starts_with("herald: error: "), "{text}");
        for needle in needles {
            assert!(
                text.contains(&needle),
                "--data {data}: {needle:?} in {text}"
            );
        }
        assert!(out.stdout.is_empty(), "no receipt");
    }
    assert_eq!(own_head(&net, "a"), head, "nothing was written");
    assert!(!node.log().contains("ERROR"), "{}", node.log());
}

// ---------------------------------------------------------------------------
// --ndjson

/// `herald publish --ndjson` running, stdin and stdout piped; receipt lines
/// arrive on `receipts` as it prints them.
struct Streaming {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    receipts: mpsc::Receiver<String>,
}

impl Streaming {
    fn start(config: &Path) -> Streaming {
        let mut child = herald_cmd(config, &["publish", "--ndjson"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn publish --ndjson");
        let stdin = child.stdin.take();
        let receipts = lines_of(child.stdout.take().expect("stdout"));
        Streaming {
            child,
            stdin,
            receipts,
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).expect("write a line");
        stdin.write_all(b"\n").expect("write a line");
        stdin.flush().expect("flush");
    }

    /// The next receipt, within the deadline.
    fn receipt(&self) -> Value {
        let line = self
            .receipts
            .recv_timeout(WAIT)
            .expect("a receipt printed in time");
        serde_json::from_str(&line).expect("a receipt is one JSON object")
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines of `stdout`, as they are printed.
fn lines_of(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn ndjson_prints_one_receipt_per_line_and_tail_json_gives_the_events_back() {
    let net = Net::mesh(&["a"]);
    let config = net.config_path("a");
    let _node = NodeProc::start(&net, "a");
    let big = "z".repeat(200 * 1024);
    let input = [
        json!({"type": "donation.received", "data": {"donor": "D-1", "amount_cents": 2500},
               "meta": {"correlation_id": "c-1"}})
        .to_string(),
        String::new(),
        json!({"type": "note.text", "data": "two\nlines \u{2028} and \"quotes\""}).to_string(),
        json!({"type": "blob.raw", "data_base64": "AAH/", "schema_version": 2}).to_string(),
        json!({"type": "doc.big", "data": {"big": big}, "channel": "default"}).to_string(),
        "   ".to_string(),
        json!({"type": "last.one", "data": [1, 2, 3]}).to_string(),
    ]
    .join("\n");
    let head = own_head(&net, "a");
    let out = run(&config, &["publish", "--ndjson"], input.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let receipts = json_lines(&out);
    let lines: Vec<u64> = receipts
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(
        lines,
        [1, 3, 4, 5, 7],
        "one receipt per event line, blank lines skipped"
    );
    let seqs: Vec<u64> = receipts.iter().map(receipt_seq).collect();
    assert_eq!(
        seqs,
        (head + 1..=head + 5).collect::<Vec<_>>(),
        "input order"
    );
    for r in &receipts {
        assert_eq!(r["feed"], "a");
        assert_eq!(r["hash"].as_str().map(str::len), Some(64));
        assert!(r["id"].as_str().is_some_and(|id| id.len() == 36), "{r}");
    }

    // `tail --json`: NDJSON, one event per line, whatever the payloads hold
    // (line breaks inside strings, 200 KiB).
    let raw = run(&config, &["tail", "--json"], b"");
    assert_eq!(raw.status.code(), Some(0), "{}", stderr(&raw));
    let text = String::from_utf8(raw.stdout.clone()).expect("UTF-8");
    assert!(text.ends_with('\n'), "every line ends");
    let events = json_lines(&raw);
    assert_eq!(
        events.len() as u64,
        own_head(&net, "a") + 1,
        "genesis and each event: one line each"
    );
    let at = |i: usize| event_at(&events, "a", seqs[i]);
    assert_eq!(at(0)["type"], "donation.received");
    assert_eq!(at(0)["data"], json!({"donor": "D-1", "amount_cents": 2500}));
    assert_eq!(at(0)["meta"], json!({"correlation_id": "c-1"}));
    assert_eq!(at(0)["id"], receipts[0]["id"]);
    assert_eq!(at(0)["hash"], receipts[0]["hash"]);
    assert_eq!(at(1)["data"], "two\nlines \u{2028} and \"quotes\"");
    assert_eq!(at(2)["schema_version"], 2);
    assert_eq!(
        at(2)["data"],
        Value::String("\u{0}\u{1}\u{fffd}".into()),
        "bytes that are not JSON"
    );
    assert_eq!(at(3)["data"]["big"].as_str().map(str::len), Some(big.len()));
    assert_eq!(at(4)["data"], json!([1, 2, 3]));

    // What `tail --json` prints goes back in as `--ndjson` lines once
    // reduced to the input fields (`jq -c '{type, data, meta}'`).
    let republish: String = [at(0), at(1), at(4)]
        .iter()
        .map(|e| {
            format!(
                "{}\n",
                json!({"type": e["type"], "data": e["data"], "meta": e["meta"]})
            )
        })
        .collect();
    let out = run(&config, &["publish", "--ndjson"], republish.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let again = tail_json(&config);
    for (r, original) in json_lines(&out).iter().zip([at(0), at(1), at(4)]) {
        let copy = event_at(&again, "a", receipt_seq(r));
        for field in ["type", "data", "meta"] {
            assert_eq!(copy[field], original[field], "{field}");
        }
    }
}

#[test]
fn ndjson_receipts_come_as_batches_become_durable_not_at_the_end_of_input() {
    let net = Net::mesh(&["a"]);
    let config = net.config_path("a");
    let _node = NodeProc::start(&net, "a");
    let mut publish = Streaming::start(&config);
    // The producer keeps its end open: each receipt must come while it
    // waits, before the next line exists.
    for i in 1..=3u64 {
        publish.send(&json!({"type": "tick", "data": {"i": i}}).to_string());
        let receipt = publish.receipt();
        assert_eq!(receipt["line"], i, "{receipt}");
        assert!(
            publish.child.try_wait().unwrap().is_none(),
            "still reading stdin"
        );
    }
    drop(publish.stdin.take());
    let status = wait_for("publish to exit at the end of its input", || {
        publish
            .child
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "running".to_string())
    });
    assert_eq!(status.code(), Some(0));
    assert!(
        publish.receipts.recv_timeout(WAIT).is_err(),
        "nothing more printed"
    );
    assert_eq!(own_head(&net, "a"), 3);
}

#[test]
fn ndjson_stops_at_a_bad_line_with_every_line_before_it_durable() {
    let net = Net::mesh(&["a"]);
    let config = net.config_path("a");
    let good = |i: usize| json!({"type": "batch.item", "data": {"i": i}}).to_string();
    // Bad lines after 300 good ones (more than one batch), each refused
    // with its line and field; nothing after it is read or published.
    let cases: [(&str, &str); 4] = [
        (r#"{"type":"herald.fake","data":1}"#, "field type"),
        (
            r#"{"type":"ok.type","data":1,"meta":{"k":7}}"#,
            "field meta.k",
        ),
        (
            r#"{"type":"ok.type","data":1,"channel":"nope"}"#,
            "field channel: unknown channel \"nope\"",
        ),
        (r#"{"type":"ok.type","data":1"#, "not valid JSON"),
    ];
    let mut node: Option<NodeProc> = None;
    for round in 0..2 {
        // First with no node (the store directly), then through the node.
        if round == 1 {
            node = Some(NodeProc::start(&net, "a"));
        }
        for (bad, needle) in cases {
            let head = if node.is_some() {
                own_head(&net, "a")
            } else {
                stopped_head(&net)
            };
            let mut input: Vec<String> = (1..=300).map(good).collect();
            input.push(bad.to_string());
            input.extend((302..=310).map(good));
            let out = run(
                &config,
                &["publish", "--ndjson"],
                input.join("\n").as_bytes(),
            );
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{bad}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.starts_with("herald: error: line 301: "), "{err}");
            assert!(err.contains(needle), "{needle:?} in {err}");
            assert!(err.contains("every line before it is durable"), "{err}");
            let receipts = json_lines(&out);
            let lines: Vec<u64> = receipts
                .iter()
                .map(|r| r["line"].as_u64().unwrap())
                .collect();
            assert_eq!(
                lines,
                (1..=300).collect::<Vec<_>>(),
                "{bad}: a receipt for every line before"
            );
            let seqs: Vec<u64> = receipts.iter().map(receipt_seq).collect();
            assert_eq!(seqs, (head + 1..=head + 300).collect::<Vec<_>>());
            let now = if node.is_some() {
                own_head(&net, "a")
            } else {
                stopped_head(&net)
            };
            assert_eq!(now, head + 300, "{bad}: nothing from the bad line on");
        }
    }
    // A first line that is bad writes nothing at all.
    let head = own_head(&net, "a");
    let out = run(
        &config,
        &["publish", "--ndjson"],
        b"{\"type\":\"t\"}\n{\"type\":\"t\",\"data\":1}\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("line 1: field data"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
    assert_eq!(own_head(&net, "a"), head);
    // Usage: --ndjson takes no --type, --data, --meta or --count.
    let out = run(&config, &["publish", "--ndjson", "--type", "t"], b"");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--type"), "{}", stderr(&out));
    assert_eq!(own_head(&net, "a"), head);
    drop(node);
}

/// The own head of node "a", which is not running (its store opened
/// read-only; none yet: 0, the genesis is written on first open).
fn stopped_head(net: &Net) -> u64 {
    if net.data_dir("a").join(herald::store::DB_FILE).exists() {
        own_head(net, "a")
    } else {
        0
    }
}

/// The peak resident set size of process `pid` so far (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[test]
fn ndjson_publishes_a_million_lines_in_flat_memory() {
    const LINES: u64 = 1_000_000;
    /// When the early peak is taken: the pipeline is full long before.
    const EARLY: u64 = 100_000;
    /// The publisher's peak may not exceed this (KiB). Holding the lines
    /// would take more than 30 MiB for their text alone, and their drafts
    /// and receipts (over 100 bytes each) several times that.
    const PEAK_MAX_KIB: u64 = 32 * 1024;
    /// Growth allowed between the early peak and the final one (KiB).
    const GROWTH_MAX_KIB: u64 = 4 * 1024;

    let net = Net::mesh(&["a"]);
    let config = net.config_path("a");
    let node = NodeProc::start(&net, "a");
    let mut publish = Streaming::start(&config);
    let pid = publish.child.id();

    // The producer writes as fast as the pipe takes it; its writes block
    // whenever herald is behind.
    let mut stdin = publish.stdin.take().expect("stdin");
    let producer = std::thread::spawn(move || {
        let mut out = std::io::BufWriter::new(&mut stdin);
        for i in 0..LINES {
            writeln!(out, r#"{{"type":"load","data":{i}}}"#)?;
        }
        out.flush()
    });

    // Every receipt in order: line i is seq i (the genesis is seq 0).
    let mut early_peak = None;
    let mut last_peak = 0;
    let mut next_check = Instant::now();
    for expected in 1..=LINES {
        let line = publish
            .receipts
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("receipt {expected} in time\nnode log:\n{}", node.log()));
        if expected % 1_000 == 1 || expected == LINES {
            let receipt: Value = serde_json::from_str(&line).expect("JSON receipt");
            assert_eq!(receipt["line"], expected, "{receipt}");
            assert_eq!(receipt["seq"], expected, "{receipt}");
        }
        if Instant::now() >= next_check {
            last_peak = peak_rss_kib(pid).unwrap_or(last_peak);
            next_check = Instant::now() + Duration::from_millis(100);
        }
        if expected == EARLY {
            early_peak = peak_rss_kib(pid);
        }
    }
    // Stdout ends when the process does; the peak is read just before.
    last_peak = peak_rss_kib(pid).unwrap_or(last_peak);
    producer
        .join()
        .expect("producer")
        .expect("producer wrote every line");
    let status = wait_for("publish to exit", || {
        publish
            .child
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "running".to_string())
    });
    let mut err = String::new();
    if let Some(mut e) = publish.child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(own_head(&net, "a"), LINES, "every line durable");

    let early_peak = early_peak.expect("the early peak was read");
    eprintln!(
        "publish --ndjson peak RSS: {early_peak} KiB after {EARLY} lines, {last_peak} KiB after {LINES}"
    );
    assert!(
        last_peak <= PEAK_MAX_KIB,
        "peak {last_peak} KiB over {PEAK_MAX_KIB} KiB"
    );
    assert!(
        last_peak <= early_peak + GROWTH_MAX_KIB,
        "memory grew from {early_peak} KiB to {last_peak} KiB"
    );
}

// ---------------------------------------------------------------------------
// The client-socket messages, as docs/PROTOCOL.md section 6 lays them out.

#[test]
fn the_streamed_publish_messages_are_encoded_as_documented() {
    use herald::node::client::{ClientRequest, ClientResponse, PublishBatch, WireDraft};
    let request = postcard::to_stdvec(&ClientRequest::PublishStream).unwrap();
    assert_eq!(hex::encode(request), "04");
    let batch = PublishBatch {
        events: vec![
            WireDraft {
                event_type: "d.r".into(),
                schema_version: 300,
                payload: b"{}".to_vec(),
                meta: vec![("k".into(), "v".into())],
                channel: Some("ops".into()),
            },
            WireDraft {
                event_type: "t".into(),
                schema_version: 1,
                payload: vec![0xff],
                meta: Vec::new(),
                channel: None,
            },
        ],
    };
    let expected = [
        "02",         // two events
        "03642e72",   // event_type "d.r"
        "ac02",       // schema_version 300
        "027b7d",     // payload "{}"
        "01",         // one meta entry
        "016b",       // key "k"
        "0176",       // value "v"
        "01036f7073", // channel Some("ops")
        "0174",       // event_type "t"
        "01",         // schema_version 1
        "01ff",       // payload
        "00",         // no meta
        "00",         // channel None
    ]
    .concat();
    assert_eq!(hex::encode(postcard::to_stdvec(&batch).unwrap()), expected);
    let rejected = ClientResponse::Rejected {
        event: 300,
        field: "type".into(),
        message: "m".into(),
    };
    assert_eq!(
        hex::encode(postcard::to_stdvec(&rejected).unwrap()),
        ["05", "ac02", "0474797065", "016d"].concat()
    );
}

#[test]
fn an_interrupted_ndjson_publish_exits_2_and_the_node_stops_proclaiming_for_it() {
    let net = Net::mesh(&["a"]);
    let config = net.config_path("a");
    let node = NodeProc::start(&net, "a");
    let mut publish = Streaming::start(&config);
    // An endless producer: it stops when the pipe breaks.
    let mut stdin = publish.stdin.take().expect("stdin");
    let producer = std::thread::spawn(move || {
        let mut i = 0u64;
        while writeln!(stdin, r#"{{"type":"endless","data":{i}}}"#).is_ok() {
            i += 1;
        }
    });
    let mut last = Value::Null;
    for _ in 0..1_000 {
        last = publish.receipt();
    }
    let killed = Command::new("kill")
        .args(["-TERM", &publish.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = wait_for("publish to exit on SIGTERM", || {
        publish
            .child
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "running".to_string())
    });
    let mut err = String::new();
    if let Some(mut e) = publish.child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    producer.join().expect("producer");
    // Every receipt printed is durable; the node stops at once.
    while let Ok(line) = publish.receipts.try_recv() {
        last = serde_json::from_str(&line).expect("a whole receipt line");
    }
    // The node notices the client is gone (it logs so) or that its stream
    // ended, depending on which the interrupted client got out first; either
    // way it stops proclaiming for it: the head stops moving.
    let mut seen = own_head(&net, "a");
    wait_for("the node to stop proclaiming for the client", || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let now = own_head(&net, "a");
        if now == seen {
            Ok(())
        } else {
            seen = now;
            Err(format!("head still moving: {now}; log: {}", node.log()))
        }
    });
    let head = own_head(&net, "a");
    assert!(receipt_seq(&last) <= head, "{last} beyond head {head}");
    let out = run(
        &config,
        &["publish", "--type", "after", "--data", "{}", "--json"],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        receipt_seq(&json_lines(&out)[0]),
        head + 1,
        "nothing more was proclaimed for the interrupted tool"
    );
}
