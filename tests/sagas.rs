//! Sagas across real nodes on 127.0.0.1 (QUIC, mutual TLS, SQLite, fsync):
//! success, failure at every step position with reverse compensation,
//! timeouts, late completions, an orchestrator killed mid-saga, a
//! participant down and back, duplicate delivery, and a compensation that
//! always fails.
//!
//! Every wait polls a condition against a deadline.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::herald_bin;
use common::net::Net;
use herald::config::CommandHandlerConfig;
use herald::node::Node;
use herald::saga::events::{self, meta};
use herald::saga::{Saga, SagaDefinition, SagaStatus, StepDefinition, StepStatus};
use herald::store::{Log, StoredEvent, TxError};
use uuid::Uuid;

/// Longest a saga may take to end in these tests.
const SAGA_END: Duration = Duration::from_secs(40);
const POLL: Duration = Duration::from_millis(50);

/// The three steps used throughout: (name, service).
const STEPS: [(&str, &str); 3] = [
    ("secure_media", "b"),
    ("schedule_events", "c"),
    ("draft_endorsements", "a"),
];

fn definition(step_deadline: Duration, attempts: u32) -> SagaDefinition {
    let mut builder = SagaDefinition::builder("NationalAdvocacyCampaign")
        .deadline(Duration::from_secs(60))
        .compensation_attempts(attempts)
        .backoff(Duration::from_millis(50), Duration::from_millis(200));
    for (name, service) in STEPS {
        builder = builder.step(StepDefinition::new(
            name,
            service,
            format!("{name}.do"),
            format!("{name}.undo"),
            step_deadline,
        ));
    }
    builder.build().expect("valid definition")
}

/// Registers Rust handlers for every step on `node`: each records its effect
/// in application state (in the reply's transaction) and counts how often it
/// ran. `input.fail_step == step` makes the forward command fail;
/// `input.fail_undo == step` makes the compensation fail.
/// Command types with a handler in the node's config keep that one.
fn register_handlers(node: &Node, configured: &[String]) {
    for (name, _) in STEPS {
        if configured
            .iter()
            .any(|c| c.starts_with(&format!("{name}.")))
        {
            continue;
        }
        node.on_command(&format!("{name}.do"), move |tx, cmd| {
            if cmd.input["fail_step"].as_u64() == Some(cmd.step as u64) {
                return Err(format!("{name} refused by the partner"));
            }
            bump(tx, &format!("{}/{}/do", cmd.saga_id, cmd.step)).map_err(|e| e.to_string())?;
            tx.put("effects", &format!("{}/{}", cmd.saga_id, cmd.step), b"done")
                .map_err(|e| e.to_string())?;
            Ok(serde_json::json!({ "step": name, "confirmation": format!("{name}-ok") }))
        });
        node.on_command(&format!("{name}.undo"), move |tx, cmd| {
            if cmd.input["fail_undo"].as_u64() == Some(cmd.step as u64) {
                return Err(format!("cannot undo {name}"));
            }
            bump(tx, &format!("{}/{}/undo", cmd.saga_id, cmd.step)).map_err(|e| e.to_string())?;
            tx.put(
                "effects",
                &format!("{}/{}", cmd.saga_id, cmd.step),
                b"undone",
            )
            .map_err(|e| e.to_string())?;
            Ok(serde_json::json!({ "undone": name }))
        });
    }
}

fn bump(tx: &mut herald::store::Tx<'_>, key: &str) -> Result<(), TxError> {
    let n = tx
        .get("runs", key)?
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    tx.put("runs", key, (n + 1).to_string().as_bytes())
}

fn runs(log: &Log, saga: Uuid, step: usize, kind: &str) -> u64 {
    log.get("runs", &format!("{saga}/{step}/{kind}"))
        .unwrap()
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn effect(log: &Log, saga: Uuid, step: usize) -> Option<String> {
    log.get("effects", &format!("{saga}/{step}"))
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
}

async fn start_nodes(net: &Net, names: &[&str]) -> Vec<Node> {
    let mut nodes = Vec::new();
    for name in names {
        let config = net.config(name);
        let node = Node::start(&config).await.expect("start node");
        let configured: Vec<String> = config
            .command_handlers
            .iter()
            .map(|h| h.command_type.clone())
            .collect();
        register_handlers(&node, &configured);
        nodes.push(node);
    }
    // A fresh node first asks its peers for its own feed; wait until the
    // started nodes hold each other's feeds so step deadlines measure the
    // saga, not the start-up.
    let deadline = Instant::now() + SAGA_END;
    for node in &nodes {
        loop {
            let feeds: Vec<String> = node
                .log()
                .heads()
                .unwrap()
                .into_iter()
                .map(|h| h.feed)
                .collect();
            if names.iter().all(|n| feeds.iter().any(|f| f == n)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never saw every feed: {feeds:?}",
                node.service()
            );
            tokio::time::sleep(POLL).await;
        }
    }
    nodes
}

async fn shutdown_all(nodes: Vec<Node>) {
    for node in nodes {
        node.shutdown().await;
    }
}

async fn wait_end(node: &Node, id: Uuid) -> Saga {
    let deadline = Instant::now() + SAGA_END;
    loop {
        let saga = node.saga(id).await.expect("saga stored");
        if saga.is_terminal() {
            return saga;
        }
        assert!(
            Instant::now() < deadline,
            "saga {id} still {:?} after {SAGA_END:?}: {:#?}",
            saga.status,
            saga.steps
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The orchestrator's own saga events of one saga, in feed order.
fn saga_events(log: &Log, id: Uuid, event_type: &str) -> Vec<StoredEvent> {
    let mut out = Vec::new();
    for head in log.heads().unwrap() {
        for e in log.read(&head.feed, 0..=head.seq).unwrap() {
            if e.header.event_type == event_type && events::saga_id_of(&e.header) == Some(id) {
                out.push(e);
            }
        }
    }
    out.sort_by_key(|e| (e.header.timestamp_us, e.header.author.clone(), e.header.seq));
    out
}

/// How many replies for `step` of saga `id` are in `log`.
fn step_replies(log: &Log, id: Uuid, step: usize) -> usize {
    let step = step.to_string();
    saga_events(log, id, events::REPLY)
        .iter()
        .filter(|e| e.header.meta_value(meta::STEP) == Some(step.as_str()))
        .count()
}

/// Steps of the compensation commands, in the order they were proclaimed.
fn compensation_order(log: &Log, id: Uuid) -> Vec<usize> {
    let mut steps: Vec<(u64, usize)> = saga_events(log, id, events::COMMAND)
        .iter()
        .filter(|e| e.header.meta_value(meta::KIND) == Some("compensate"))
        .map(|e| {
            (
                e.header.seq,
                e.header.meta_value(meta::STEP).unwrap().parse().unwrap(),
            )
        })
        .collect();
    steps.sort();
    steps.into_iter().map(|(_, s)| s).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saga_completes_across_three_services() {
    let net = Net::mesh(&["a", "b", "c"]);
    let nodes = start_nodes(&net, &["a", "b", "c"]).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let id = a
        .start_saga(
            definition(Duration::from_secs(10), 3),
            serde_json::json!({"campaign": "spring"}),
        )
        .await
        .expect("start");
    let saga = wait_end(a, id).await;
    assert_eq!(saga.status, SagaStatus::Completed, "{:#?}", saga.steps);
    assert!(saga.steps.iter().all(|s| s.status == StepStatus::Completed));
    assert_eq!(
        saga.steps[0].result.as_ref().unwrap()["confirmation"],
        "secure_media-ok"
    );
    // Each participant's effect is in its own state, exactly once.
    for (step, node) in [(0, b), (1, c), (2, a)] {
        assert_eq!(effect(node.log(), id, step).as_deref(), Some("done"));
        assert_eq!(runs(node.log(), id, step, "do"), 1);
    }
    // Every transition is a signed event on the orchestrator's feed.
    assert_eq!(saga_events(a.log(), id, events::STARTED).len(), 1);
    assert_eq!(saga_events(a.log(), id, "herald.saga.completed").len(), 1);
    assert!(compensation_order(a.log(), id).is_empty());
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_at_each_step_compensates_completed_steps_in_reverse() {
    let net = Net::mesh(&["a", "b", "c"]);
    let nodes = start_nodes(&net, &["a", "b", "c"]).await;
    let a = &nodes[0];
    let by_service = |s: &str| &nodes[["a", "b", "c"].iter().position(|n| *n == s).unwrap()];
    for fail_step in 0..STEPS.len() {
        let id = a
            .start_saga(
                definition(Duration::from_secs(10), 3),
                serde_json::json!({ "fail_step": fail_step }),
            )
            .await
            .expect("start");
        let saga = wait_end(a, id).await;
        assert_eq!(
            saga.status,
            SagaStatus::Compensated,
            "fail at {fail_step}: {:#?}",
            saga.steps
        );
        assert_eq!(saga.steps[fail_step].status, StepStatus::Failed);
        assert!(
            saga.steps[fail_step]
                .reason
                .as_deref()
                .unwrap()
                .contains("refused by the partner")
        );
        // Completed steps were compensated in strict reverse order, once.
        let expected: Vec<usize> = (0..fail_step).rev().collect();
        assert_eq!(
            compensation_order(a.log(), id),
            expected,
            "fail at {fail_step}"
        );
        for (step, (_, service)) in STEPS.iter().enumerate() {
            let log = by_service(service).log();
            if step < fail_step {
                assert_eq!(saga.steps[step].status, StepStatus::Compensated);
                assert_eq!(effect(log, id, step).as_deref(), Some("undone"));
                assert_eq!(runs(log, id, step, "undo"), 1);
            } else {
                assert_eq!(effect(log, id, step), None, "step {step} left no effect");
            }
        }
        assert_eq!(
            saga.steps
                .iter()
                .filter(|s| s.status == StepStatus::Pending)
                .count(),
            STEPS.len() - fail_step - 1
        );
    }
    shutdown_all(nodes).await;
}

/// Points the step handlers of `node`'s config at shell commands.
fn exec_handlers(net: &Net, node: &str, handlers: &[(&str, &str)]) {
    net.edit(node, |c| {
        c.command_handlers = handlers
            .iter()
            .map(|(command_type, script)| CommandHandlerConfig {
                command_type: command_type.to_string(),
                command: vec!["/bin/sh".into(), "-c".into(), script.to_string()],
                timeout_ms: None,
            })
            .collect();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_out_step_is_compensated_and_so_is_a_late_completion() {
    let net = Net::mesh(&["a", "b", "c"]);
    let undone_file = net.path().join("undone.txt");
    // On c, the schedule step takes longer than its deadline: it fails late
    // for one saga and completes late for the other.
    exec_handlers(
        &net,
        "c",
        &[
            (
                "schedule_events.do",
                r#"input=$(cat); sleep 1.5; case "$input" in *late_success*) echo '{"late":true}';; *) echo 'venue fell through' >&2; exit 3;; esac"#,
            ),
            (
                "schedule_events.undo",
                &format!(
                    r#"cat >/dev/null; echo "$HERALD_SAGA_ID" >> {}"#,
                    undone_file.display()
                ),
            ),
        ],
    );
    let nodes = start_nodes(&net, &["a", "b", "c"]).await;
    let a = &nodes[0];
    let deadline = Duration::from_millis(600);

    // Timed out, then failed late: nothing to undo on c; b is compensated.
    let timed_out = a
        .start_saga(definition(deadline, 3), serde_json::json!({}))
        .await
        .unwrap();
    let saga = wait_end(a, timed_out).await;
    assert_eq!(saga.status, SagaStatus::Compensated, "{:#?}", saga.steps);
    assert_eq!(saga.steps[0].status, StepStatus::Compensated);
    assert_eq!(
        saga.steps[1].status,
        StepStatus::Compensated,
        "timed-out step compensated first"
    );
    assert!(!saga.steps[1].completed_late);
    // c was still busy running the step when its compensation came, so that
    // compensation may have been retried (within the budget).
    let mut order = compensation_order(a.log(), timed_out);
    assert!(order.iter().filter(|s| **s == 1).count() <= 3, "{order:?}");
    order.dedup();
    assert_eq!(order, vec![1, 0]);
    assert_eq!(
        saga_events(a.log(), timed_out, "herald.saga.step_timed_out").len(),
        1
    );

    // Timed out, then completed late: the late completion is recorded and
    // c's compensation really runs.
    let late = a
        .start_saga(
            definition(deadline, 3),
            serde_json::json!({"late_success": true}),
        )
        .await
        .unwrap();
    let saga = wait_end(a, late).await;
    assert_eq!(saga.status, SagaStatus::Compensated, "{:#?}", saga.steps);
    wait_until("the late step's compensation to run on c", || {
        std::fs::read_to_string(&undone_file).is_ok_and(|t| t.contains(&late.to_string()))
    });
    // Only the late success was undone by the handler, once (even if the
    // orchestrator retried); the failed one needed nothing.
    let undone = std::fs::read_to_string(&undone_file).unwrap_or_default();
    assert!(
        !undone.contains(&timed_out.to_string()),
        "nothing to undo for a step that failed"
    );
    assert_eq!(undone.matches(&late.to_string()).count(), 1, "{undone}");
    wait_until("the late completion to be recorded", || {
        saga_events(a.log(), late, "herald.saga.late_completion").len() == 1
    });
    shutdown_all(nodes).await;
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + SAGA_END;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_participant_that_is_down_gets_its_command_when_it_returns() {
    let net = Net::mesh(&["a", "b", "c"]);
    let mut nodes = start_nodes(&net, &["a", "c"]).await;
    let id = nodes[0]
        .start_saga(
            definition(Duration::from_secs(20), 3),
            serde_json::json!({}),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let saga = nodes[0].saga(id).await.unwrap();
    assert_eq!(
        saga.steps[0].status,
        StepStatus::Running,
        "b is down: step 0 waits"
    );
    nodes.extend(start_nodes(&net, &["b"]).await);
    let saga = wait_end(&nodes[0], id).await;
    assert_eq!(saga.status, SagaStatus::Completed, "{:#?}", saga.steps);
    assert_eq!(runs(nodes[2].log(), id, 0, "do"), 1);
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_command_delivery_has_one_effect() {
    let net = Net::mesh(&["a", "b", "c"]);
    let mut nodes = start_nodes(&net, &["a", "b", "c"]).await;
    let id = nodes[0]
        .start_saga(
            definition(Duration::from_secs(10), 3),
            serde_json::json!({}),
        )
        .await
        .unwrap();
    assert_eq!(wait_end(&nodes[0], id).await.status, SagaStatus::Completed);
    // Count only b's own replies (step 0): the other steps' replies may
    // still be on their way to b when the saga ends at a.
    let replies_before = step_replies(nodes[1].log(), id, 0);
    assert_eq!(replies_before, 1, "b replied to its command once");
    // Stop b and rewind its command subscription to the very start: every
    // command is delivered to it again.
    let b = nodes.remove(1);
    b.shutdown().await;
    {
        let log = Log::open(&net.config("b")).unwrap();
        log.subscribe(
            herald::saga::participant::COMMAND_CONSUMER,
            events::COMMAND,
            herald::store::StartFrom::Start,
        )
        .unwrap();
        log.close();
    }
    let b = start_nodes(&net, &["b"]).await.remove(0);
    // Wait until b has consumed everything again.
    let dir = net.config("b").data_dir;
    let deadline = Instant::now() + SAGA_END;
    while !common::consumer_caught_up(&dir, herald::saga::participant::COMMAND_CONSUMER) {
        assert!(Instant::now() < deadline, "b never caught up");
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(
        runs(b.log(), id, 0, "do"),
        1,
        "redelivery ran the step again"
    );
    assert_eq!(
        step_replies(b.log(), id, 0),
        replies_before,
        "no second reply"
    );
    b.shutdown().await;
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compensation_that_always_fails_ends_failed_after_its_budget() {
    let net = Net::mesh(&["a", "b", "c"]);
    let nodes = start_nodes(&net, &["a", "b", "c"]).await;
    let a = &nodes[0];
    let attempts = 3;
    let id = a
        .start_saga(
            definition(Duration::from_secs(10), attempts),
            serde_json::json!({ "fail_step": 2, "fail_undo": 0 }),
        )
        .await
        .unwrap();
    let saga = wait_end(a, id).await;
    assert_eq!(saga.status, SagaStatus::Failed, "{:#?}", saga.steps);
    assert_eq!(saga.steps[1].status, StepStatus::Compensated);
    assert_eq!(saga.steps[0].status, StepStatus::CompensationFailed);
    let order = compensation_order(a.log(), id);
    assert_eq!(
        order,
        vec![1, 0, 0, 0],
        "step 1 once, step 0 exactly {attempts} times"
    );
    let alerts = saga_events(a.log(), id, "herald.saga.alert");
    assert_eq!(alerts.len(), 1);
    // Nothing more happens after the end: no further attempts.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(compensation_order(a.log(), id).len(), 4);
    shutdown_all(nodes).await;
}

// ---------------------------------------------------------------------------
// Node processes: the CLI, config-declared handlers, SIGKILL.

fn spawn_node(net: &Net, name: &str) -> Child {
    let log = std::fs::File::create(net.path().join(format!("{name}.log"))).unwrap();
    Command::new(herald_bin())
        .args(["node", "--config"])
        .arg(net.config_path(name))
        .current_dir(net.path())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn node")
}

fn herald(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(herald_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run herald");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `herald saga start` on node `a` of `net` with `definition`, then `extra`
/// arguments.
fn saga_start(net: &Net, definition: &Path, extra: &[&str]) -> (i32, String, String) {
    let config = net.config_path("a");
    let mut args = vec![
        "saga",
        "start",
        "--config",
        config.to_str().unwrap(),
        "--definition",
        definition.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    herald(&args, net.path())
}

fn stored_saga(net: &Net, id: &str) -> Option<Saga> {
    let conn = herald::store::open_read_only(&net.config("a").data_dir).ok()?;
    herald::saga::orchestrator::load(&conn, Uuid::parse_str(id).ok()?).ok()?
}

#[test]
fn an_orchestrator_killed_mid_saga_resumes_after_restart() {
    let net = Net::mesh(&["a", "b", "c"]);
    // Every step takes a while and appends its command id to a file, so the
    // test sees each step run and can count runs.
    for (node, steps) in [
        ("a", vec!["draft_endorsements"]),
        ("b", vec!["secure_media"]),
        ("c", vec!["schedule_events"]),
    ] {
        let handlers: Vec<(String, String)> = steps
            .iter()
            .flat_map(|s| {
                [
                    (format!("{s}.do"), format!("cat >/dev/null; sleep 0.4; echo \"$HERALD_COMMAND_ID\" >> {s}.runs; echo '{{\"ok\":true}}'")),
                    (format!("{s}.undo"), "cat >/dev/null".to_string()),
                ]
            })
            .collect();
        let refs: Vec<(&str, &str)> = handlers
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        exec_handlers(&net, node, &refs);
    }
    let def_path = net.path().join("campaign.toml");
    std::fs::write(&def_path, definition(Duration::from_secs(15), 3).to_toml()).unwrap();
    let mut children: Vec<Child> = ["a", "b", "c"]
        .iter()
        .map(|n| spawn_node(&net, n))
        .collect();
    let config_a = net.config_path("a");
    // Start through the CLI (retry while the node is still starting).
    let deadline = Instant::now() + SAGA_END;
    let id = loop {
        let (code, out, err) = saga_start(&net, &def_path, &["--data", r#"{"campaign":"autumn"}"#]);
        if code == 0 {
            break out.trim().to_string();
        }
        assert!(Instant::now() < deadline, "saga start failed: {err}");
        std::thread::sleep(Duration::from_millis(200));
    };
    // Kill the orchestrator as soon as the first step has completed.
    wait_until("step 0 to complete", || {
        stored_saga(&net, &id).is_some_and(|s| s.steps[0].status == StepStatus::Completed)
    });
    children[0].kill().unwrap();
    let _ = children[0].wait();
    assert!(
        !stored_saga(&net, &id).unwrap().is_terminal(),
        "killed mid-saga"
    );
    children[0] = spawn_node(&net, "a");
    wait_until("the saga to end after the restart", || {
        stored_saga(&net, &id).is_some_and(|s| s.is_terminal())
    });
    let saga = stored_saga(&net, &id).unwrap();
    assert_eq!(
        saga.status,
        SagaStatus::Completed,
        "{:#?}\n{}",
        saga.steps,
        net.logs()
    );
    // Every step ran exactly once despite the kill.
    for (name, _) in STEPS {
        let data =
            std::fs::read_to_string(net.path().join(format!("{name}.runs"))).unwrap_or_default();
        assert_eq!(
            data.lines().count(),
            1,
            "{name} ran {} times",
            data.lines().count()
        );
    }
    // The CLI shows it, as text and JSON, and lists it by status.
    let a_cfg = config_a.to_str().unwrap();
    let (code, out, _) = herald(
        &["saga", "status", &id, "--config", a_cfg, "--json"],
        net.path(),
    );
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["status"], "completed");
    let (code, out, _) = herald(
        &["saga", "list", "--config", a_cfg, "--status", "completed"],
        net.path(),
    );
    assert_eq!(code, 0);
    assert!(out.contains(&id));
    let (code, _, err) = herald(
        &["saga", "list", "--config", a_cfg, "--status", "bogus"],
        net.path(),
    );
    assert_eq!(code, 2, "bad status is a usage error: {err}");

    // History offline: export a's log (the node is running, so stop it first)
    // and rebuild the timeline with only the CA.
    for child in &mut children {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let _ = child.wait();
    }
    let export = net.path().join("a.herald");
    let (code, _, err) = herald(
        &[
            "export",
            "--config",
            a_cfg,
            "--out",
            export.to_str().unwrap(),
        ],
        net.path(),
    );
    assert_eq!(code, 0, "{err}");
    let ca = net.ca();
    let (code, out, err) = herald(
        &[
            "saga",
            "history",
            &id,
            "--export",
            export.to_str().unwrap(),
            "--ca",
            ca.to_str().unwrap(),
        ],
        net.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("verified"), "{out}");
    for name in [
        "started",
        "secure_media",
        "schedule_events",
        "draft_endorsements",
        "completed",
    ] {
        assert!(out.contains(name), "timeline lacks {name}:\n{out}");
    }
    let (code, out, _) = herald(
        &[
            "saga",
            "history",
            &id,
            "--export",
            export.to_str().unwrap(),
            "--ca",
            ca.to_str().unwrap(),
            "--json",
        ],
        net.path(),
    );
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let types: Vec<&str> = json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&events::STARTED));
    assert_eq!(types.last(), Some(&"herald.saga.completed"));
    assert_eq!(types.iter().filter(|t| **t == events::COMMAND).count(), 3);
    assert_eq!(types.iter().filter(|t| **t == events::REPLY).count(), 3);
}

#[test]
fn saga_commands_reject_bad_input_clearly() {
    let net = Net::mesh(&["a"]);
    let bad = net.path().join("bad.toml");
    std::fs::write(&bad, "saga_type = \"X\"\ndeadline_ms = 0\nsteps = []\n").unwrap();
    let (code, _, err) = saga_start(&net, &bad, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.toml"), "{err}");
    let good = net.path().join("good.toml");
    std::fs::write(&good, definition(Duration::from_secs(1), 1).to_toml()).unwrap();
    let (code, _, err) = saga_start(&net, &good, &["--data", "{not json"]);
    assert_eq!(code, 2);
    assert!(err.contains("--data is not valid JSON"), "{err}");
    let (code, _, err) = saga_start(&net, &good, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("not running"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saga_start_wait_reports_the_outcome_in_its_exit_code() {
    let net = Net::mesh(&["a", "b", "c"]);
    let nodes = start_nodes(&net, &["a", "b", "c"]).await;
    let def_path = net.path().join("campaign.toml");
    std::fs::write(&def_path, definition(Duration::from_secs(10), 3).to_toml()).unwrap();
    let net = std::sync::Arc::new(net);
    let run = |data: &'static str| {
        let (net, def) = (net.clone(), def_path.clone());
        tokio::task::spawn_blocking(move || {
            saga_start(&net, &def, &["--data", data, "--wait", "30s", "--json"])
        })
    };
    let (code, out, err) = run("{}").await.unwrap();
    assert_eq!(code, 0, "completed: {err}");
    let saga: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(saga["status"], "completed");
    let (code, out, err) = run(r#"{"fail_step":1}"#).await.unwrap();
    assert_eq!(code, 1, "compensated: {err}");
    let saga: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(saga["status"], "compensated");
    let id = saga["id"].as_str().unwrap().to_string();
    // status by id (text), and a missing id is an error naming it.
    let config = net.config_path("a");
    let (code, out, _) = herald(
        &["saga", "status", &id, "--config", config.to_str().unwrap()],
        net.path(),
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("compensated") && out.contains("schedule_events"),
        "{out}"
    );
    let missing = Uuid::now_v7().to_string();
    let (code, _, err) = herald(
        &[
            "saga",
            "status",
            &missing,
            "--config",
            config.to_str().unwrap(),
        ],
        net.path(),
    );
    assert_eq!(code, 2);
    assert!(err.contains(&missing), "{err}");
    shutdown_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_step_result_fails_the_step_instead_of_the_saga_engine() {
    let net = Net::mesh(&["a"]);
    let node = Node::start(&net.config("a")).await.unwrap();
    let limit = herald::saga::participant::STEP_RESULT_BYTES_MAX;
    node.on_command("report.build", move |_, _| {
        Ok(serde_json::Value::String("x".repeat(limit + 1)))
    });
    let definition = SagaDefinition::builder("Report")
        .deadline(Duration::from_secs(30))
        .step(StepDefinition::new(
            "build",
            "a",
            "report.build",
            "report.discard",
            Duration::from_secs(10),
        ))
        .build()
        .unwrap();
    let id = node
        .start_saga(definition, serde_json::json!({}))
        .await
        .unwrap();
    let saga = wait_end(&node, id).await;
    assert_eq!(saga.status, SagaStatus::Compensated, "{:#?}", saga.steps);
    assert_eq!(saga.steps[0].status, StepStatus::Failed);
    let reason = saga.steps[0].reason.as_deref().unwrap();
    assert!(reason.contains("over the limit"), "{reason}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_sagas_timing_out_at_once_all_end() {
    // 600 sagas wait on a service that never answers; the orchestrator is
    // stopped past their deadlines, so after the restart every one of them
    // times out in the same instant: far more events than one transaction
    // may hold. Each must still end (failed, with its alert).
    let net = Net::mesh(&["a"]);
    let definition = SagaDefinition::builder("Unanswered")
        .deadline(Duration::from_secs(60))
        .compensation_attempts(1)
        .step(StepDefinition::new(
            "ask",
            "ghost",
            "ghost.ask",
            "ghost.forget",
            Duration::from_millis(1500),
        ))
        .build()
        .unwrap();
    let node = std::sync::Arc::new(Node::start(&net.config("a")).await.unwrap());
    let mut starts = tokio::task::JoinSet::new();
    for _ in 0..600 {
        let (node, definition) = (node.clone(), definition.clone());
        starts.spawn(async move { node.start_saga(definition, serde_json::json!({})).await });
    }
    let mut ids = Vec::new();
    while let Some(id) = starts.join_next().await {
        ids.push(id.unwrap().unwrap());
    }
    let node = std::sync::Arc::try_unwrap(node).ok().expect("sole owner");
    node.shutdown().await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let node = Node::start(&net.config("a")).await.unwrap();
    for id in &ids {
        let saga = wait_end(&node, *id).await;
        assert_eq!(saga.status, SagaStatus::Failed, "{:#?}", saga.steps);
        assert_eq!(saga.steps[0].status, StepStatus::CompensationFailed);
    }
    // The saga's row is read from the store as soon as its transaction
    // commits; its events are read up to the feed heads, which move once
    // the WAL fsync covers them: a moment later.
    let deadline = Instant::now() + SAGA_END;
    while saga_events(node.log(), ids[0], "herald.saga.alert").is_empty()
        && Instant::now() < deadline
    {
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(
        saga_events(node.log(), ids[0], "herald.saga.alert").len(),
        1,
        "each failed saga has its alert"
    );
    node.shutdown().await;
}
