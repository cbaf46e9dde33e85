//! The "Walkthrough with curl" of docs/API.md, run as written: its ```sh
//! blocks go, in order, to one `bash` (so variables set in one block are
//! there in the next) against a real node named `fundraising` on
//! 127.0.0.1, with `HERALD_API` holding the API's base URL, and what each
//! block prints must match the ```text block after it (a ```sh block with
//! no ```text block after it must print nothing).
//!
//! Matching, as the section itself says: ids (UUIDs), hashes (64 hex
//! digits), RFC 3339 times and `..._us` numbers differ from run to run, so
//! each is compared by its shape only; `...` in a shown output stands for
//! any text on that line. Everything else must be the same, line by line.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::net::Net;
use herald::node::Node;
use regex::Regex;

/// The section of docs/API.md this test runs.
const SECTION: &str = "## Walkthrough with curl";

/// Fewest command blocks the section holds: fewer means the extraction
/// lost some (a renamed fence, a moved heading).
const COMMAND_BLOCKS_MIN: usize = 10;

/// Longest the whole walkthrough may run.
const WALKTHROUGH_DEADLINE: Duration = Duration::from_secs(120);

/// Printed between blocks' outputs so they can be told apart.
const MARKER: &str = "@@@walkthrough-block@@@";

/// One step: the commands and the output the doc shows for them.
#[derive(Debug)]
struct Step {
    /// Line in docs/API.md where the ```sh block opens (for messages).
    line: usize,
    commands: String,
    expected: String,
}

/// The ```sh blocks of the section and the ```text block after each.
fn steps(doc: &str) -> Vec<Step> {
    let start = doc
        .lines()
        .position(|l| l.trim_end() == SECTION)
        .unwrap_or_else(|| panic!("docs/API.md has no {SECTION:?} section"));
    let mut steps: Vec<Step> = Vec::new();
    let mut lines = doc.lines().enumerate().skip(start + 1);
    while let Some((n, line)) = lines.next() {
        if line.starts_with("## ") {
            break;
        }
        let kind = match line.trim_end() {
            "```sh" => "sh",
            "```text" => "text",
            _ => continue,
        };
        let mut body = String::new();
        for (_, l) in lines.by_ref() {
            if l.trim_end() == "```" {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        match kind {
            "sh" => steps.push(Step {
                line: n + 1,
                commands: body,
                expected: String::new(),
            }),
            _ => {
                let step = steps.last_mut().unwrap_or_else(|| {
                    panic!("docs/API.md:{}: an output block before any command", n + 1)
                });
                assert!(
                    step.expected.is_empty(),
                    "docs/API.md:{}: two output blocks after one command block",
                    n + 1
                );
                step.expected = body;
            }
        }
    }
    steps
}

/// What varies from run to run, each with the shape it is compared by.
fn normalise(text: &str) -> String {
    let rules = [
        (
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "<uuid>",
        ),
        (r"\b[0-9a-f]{64}\b", "<hash>"),
        (r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z", "<time>"),
        (r#"(_us"?\s*[:=]\s*)\d+"#, "${1}<us>"),
    ];
    let mut out = text.to_string();
    for (pattern, shape) in rules {
        out = Regex::new(pattern)
            .expect("a valid pattern")
            .replace_all(&out, shape)
            .into_owned();
    }
    out
}

/// Whether `actual` matches `expected` line by line, `...` in `expected`
/// standing for any text.
fn matches(expected: &str, actual: &str) -> bool {
    let expected: Vec<&str> = expected.lines().collect();
    let actual: Vec<&str> = actual.lines().collect();
    expected.len() == actual.len()
        && expected.iter().zip(&actual).all(|(e, a)| {
            let pattern = e
                .split("...")
                .map(regex::escape)
                .collect::<Vec<_>>()
                .join(".*");
            Regex::new(&format!("^{pattern}$"))
                .expect("an escaped pattern")
                .is_match(a)
        })
}

/// Runs every step in one bash, in `dir`; returns each step's output.
fn run(steps: &[Step], api: &str, dir: &Path) -> Vec<String> {
    let mut script = String::from("set -u\n");
    for step in steps {
        script.push_str(&format!("printf '%s\\n' '{MARKER}'\n"));
        script.push_str(&step.commands);
    }
    let out_path = dir.join("walkthrough.out");
    let out = std::fs::File::create(&out_path).expect("an output file");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir)
        .env("HERALD_API", api)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("the output file, twice"))
        .stderr(out)
        .spawn()
        .expect("bash starts");
    let deadline = Instant::now() + WALKTHROUGH_DEADLINE;
    while child.try_wait().expect("bash's status").is_none() {
        if Instant::now() >= deadline {
            child.kill().ok();
            child.wait().ok();
            panic!(
                "the walkthrough ran over {WALKTHROUGH_DEADLINE:?}; its output:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&out_path).expect("the walkthrough's output");
    let mut outputs: Vec<String> = text
        .split(&format!("{MARKER}\n"))
        .map(str::to_string)
        .collect();
    let before = outputs.remove(0);
    assert!(before.is_empty(), "output before the first step: {before}");
    outputs
}

/// `tool --version` works, or the test fails saying what is missing.
fn require(tool: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is not installed: the curl walkthrough needs bash and curl \
         (.ci/run installs curl with apt-get)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curl_walkthrough_in_api_md_prints_what_the_doc_shows() {
    require("bash");
    require("curl");
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/API.md");
    let doc = std::fs::read_to_string(&doc_path).expect("docs/API.md");
    let steps = steps(&doc);
    assert!(
        steps.len() >= COMMAND_BLOCKS_MIN,
        "only {} command blocks in {SECTION:?}, expected at least {COMMAND_BLOCKS_MIN}",
        steps.len()
    );

    let net = Net::mesh(&["fundraising"]);
    net.edit("fundraising", |c| {
        c.api = Some(toml::from_str(r#"listen = "127.0.0.1:0""#).expect("an [api] section"));
    });
    let node = Node::start(&net.config("fundraising"))
        .await
        .expect("start the node");
    let api = format!("http://{}", node.api_addr().expect("an API"));
    let scratch = tempfile::tempdir().expect("a scratch directory");

    let dir = scratch.path().to_path_buf();
    let outputs = {
        let steps = &steps;
        tokio::task::block_in_place(|| run(steps, &api, &dir))
    };
    assert_eq!(
        outputs.len(),
        steps.len(),
        "every step ran (the script stopped early?)"
    );
    let mut failures = String::new();
    for (step, actual) in steps.iter().zip(&outputs) {
        if !matches(&normalise(&step.expected), &normalise(actual)) {
            failures.push_str(&format!(
                "--- docs/API.md:{}:\n{}--- the doc shows:\n{}--- the node printed:\n{}\n",
                step.line, step.commands, step.expected, actual
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "the walkthrough's outputs differ from docs/API.md:\n{failures}"
    );
    node.shutdown().await;
}

#[test]
fn the_matching_rules_compare_shapes_and_skip_what_dots_stand_for() {
    let shown = r#"{"id":"01a23f64-b0e7-74de-825a-c8f42ce07837","time":"2026-12-04T04:51:33.223571Z","seq":1,...}"#;
    let printed = r#"{"id":"01a2aaaa-b0e7-74de-825a-c8f42ce07837","time":"2027-01-01T00:00:00.000001Z","seq":1,"hash":"x"}"#;
    assert!(matches(&normalise(shown), &normalise(printed)));
    let other_seq = printed.replace(r#""seq":1"#, r#""seq":2"#);
    assert!(!matches(&normalise(shown), &normalise(&other_seq)));
    assert!(!matches("a\n", "a\nb\n"), "every line counts");
    assert!(matches(
        &normalise(r#""last_ack_at_us":1796359893261504"#),
        &normalise(r#""last_ack_at_us":17"#)
    ));
    assert!(!matches("a.b", "aXb"), "only ... is special");
}
