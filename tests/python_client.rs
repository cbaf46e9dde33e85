//! The Python client (`clients/python`, package `herald_client`) against a
//! real node: two nodes on 127.0.0.1 (QUIC with mutual TLS between them,
//! SQLite with fsync), the HTTP API on node `a`, and the client's own
//! unittest suite run by `python3 -m unittest` with the API's address in
//! `HERALD_API`. The test fails with the Python output if any Python test
//! fails or is skipped, if fewer tests ran than the suite holds, or if
//! `python3` is missing.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::net::Net;
use herald::config::ApiConfig;
use herald::node::Node;
use serde_json::json;

/// Longest the Python suite may run (it waits for the node with deadlines
/// of its own, far shorter).
const PYTHON_SUITE_DEADLINE: Duration = Duration::from_secs(600);

/// The Python suite holds at least this many tests: fewer means discovery
/// lost some (a renamed file, an import error hidden as a skip).
const PYTHON_TESTS_MIN: usize = 25;

/// The API section every test node gets: loopback, a port the OS picks.
fn api_on_any_port() -> ApiConfig {
    toml::from_str(r#"listen = "127.0.0.1:0""#).expect("an [api] section")
}

/// `python3`'s version, or a failure that says how to get it.
fn python3_version() -> String {
    match Command::new("python3").arg("--version").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(out) => panic!(
            "python3 --version failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "python3 is not installed ({e}): the Python client's tests need CPython 3.9 or later \
             (.ci/run installs it with apt-get install python3)"
        ),
    }
}

/// Runs the Python suite in `clients/python` against `api` (a base URL),
/// with `peer` as the service queries go to. Returns its exit status and
/// its whole output (unittest writes to stderr).
fn run_python_suite(api: &str, peer: &str, scratch: &Path) -> (std::process::ExitStatus, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python");
    let log_path = scratch.join("python-unittest.log");
    let log = std::fs::File::create(&log_path).expect("a log file for the Python suite");
    let mut child = Command::new("python3")
        .args(["-m", "unittest", "discover", "-v", "-s", "tests", "-t", "."])
        .current_dir(&dir)
        .env("HERALD_API", api)
        .env("HERALD_PEER", peer)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("the log file, twice"))
        .stderr(log)
        .spawn()
        .expect("python3 starts");
    let deadline = Instant::now() + PYTHON_SUITE_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("the Python suite's status") {
            break status;
        }
        if Instant::now() >= deadline {
            child.kill().ok();
            child.wait().ok();
            panic!(
                "the Python suite ran over {PYTHON_SUITE_DEADLINE:?}:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (
        status,
        std::fs::read_to_string(&log_path).expect("the Python suite's output"),
    )
}

/// The number in unittest's `Ran N tests` line.
fn tests_ran(output: &str) -> Option<usize> {
    output.lines().find_map(|l| {
        l.strip_prefix("Ran ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_passes_its_suite_against_a_real_node() {
    let version = python3_version();
    let net = Net::mesh(&["a", "b"]);
    net.edit("a", |c| c.api = Some(api_on_any_port()));
    let a = Node::start(&net.config("a")).await.expect("start a");
    let b = Node::start(&net.config("b")).await.expect("start b");
    // The step of the Python suite's saga runs on `b`.
    b.on_command("ping.do", |_, cmd| Ok(json!({ "pong": cmd.input["n"] })));
    b.on_command("ping.undo", |_, _| Ok(json!({})));
    let api = format!("http://{}", a.api_addr().expect("a serves the API"));

    let scratch = net.path().to_path_buf();
    let (status, output) =
        tokio::task::spawn_blocking(move || run_python_suite(&api, "b", &scratch))
            .await
            .expect("the Python suite ran");

    assert!(
        status.success(),
        "the Python client's suite failed ({status}, {version}):\n{output}"
    );
    let ran = tests_ran(&output)
        .unwrap_or_else(|| panic!("no `Ran N tests` line in the Python output:\n{output}"));
    assert!(
        ran >= PYTHON_TESTS_MIN,
        "only {ran} Python tests ran, the suite holds at least {PYTHON_TESTS_MIN}:\n{output}"
    );
    assert!(
        !output.contains("skipped"),
        "Python tests were skipped:\n{output}"
    );
    a.shutdown().await;
    b.shutdown().await;
}
