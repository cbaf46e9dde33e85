//! Background tasks that meet store faults (issue 11, finding 10), on real
//! nodes with real SQLite:
//!
//! * a damaged derived column (`event_type` no longer text) stops neither a
//!   subscription nor the saga engine, and `herald verify` reports it;
//! * a subscription whose cursor write fails transiently (the database
//!   locked by another process for longer than the busy timeout) retries,
//!   shows in the node's health meanwhile, and resumes;
//! * a permanent fault (an envelope that no longer decodes) makes the node
//!   unhealthy and tells its owner to stop it.
//!
//! Every wait polls a condition against a deadline.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::net::Net;
use herald::audit::verify::{AuditOptions, audit_data_dir};
use herald::node::Node;
use herald::saga::{SagaDefinition, SagaStatus, StepDefinition};
use herald::store::{StartFrom, StoredEvent};

const WITHIN: Duration = Duration::from_secs(20);

async fn wait_for<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    common::wait_async(what, WITHIN, probe).await
}

fn alone() -> Net {
    Net::with_peers(&["a"], |_| Vec::new())
}

fn db(net: &Net) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(net.data_dir("a").join(herald::store::DB_FILE))
        .expect("open the store");
    conn.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    conn
}

/// The types a subscription delivered, in order.
type Seen = Arc<std::sync::Mutex<Vec<String>>>;

/// Collects the types a subscription delivers.
fn collector() -> (
    Seen,
    impl FnMut(&StoredEvent) -> Result<(), String> + Send + 'static,
) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    (seen, move |e: &StoredEvent| {
        sink.lock().unwrap().push(e.header.event_type.clone());
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_type_name_stops_neither_subscriptions_nor_sagas() {
    let net = alone();
    // Written without the node (as an offline `herald publish` does), so the
    // saga engine's subscriptions have not read past them yet.
    let log = herald::store::Log::open(&net.config("a")).expect("open the store");
    log.proclaim("x.one", b"{}", vec![]).expect("proclaim");
    log.proclaim("x.two", b"{}", vec![]).expect("proclaim");
    drop(log);

    // One byte of x.one's type name flipped so it is no longer UTF-8. The
    // store keeps each event's hash in its feed's tree, so the row no
    // longer rebuilds to the event that was proclaimed.
    let changed = db(&net)
        .execute(
            "UPDATE type_names SET name = CAST(X'78FF6F6E65' AS TEXT) WHERE name = 'x.one'",
            [],
        )
        .expect("flip a byte");
    assert_eq!(changed, 1);
    // `herald verify` on the data directory names the damaged event.
    let report = audit_data_dir(
        &net.data_dir("a"),
        &AuditOptions {
            trust: (*net.trust()).clone(),
            channel_keys: Vec::new(),
            progress: false,
        },
    )
    .expect("audit");
    assert!(!report.valid);
    assert!(
        report.problems.iter().any(|p| p.check == "stored-hash"
            && p.feed.as_deref() == Some("a")
            && p.seq == Some(1)),
        "{:?}",
        report.problems
    );

    let a = Node::start(&net.config("a")).await.expect("start a");
    // The saga engine's subscriptions read past the damaged row: a one-step
    // saga completes.
    a.on_command("step.do", |_, _| Ok(serde_json::json!({"done": true})));
    let definition = SagaDefinition::builder("OneStep")
        .deadline(Duration::from_secs(30))
        .step(StepDefinition::new(
            "step",
            "a",
            "step.do",
            "step.undo",
            Duration::from_secs(15),
        ))
        .build()
        .expect("definition");
    let id = a
        .start_saga(definition, serde_json::json!({}))
        .await
        .expect("start saga");
    let saga = wait_for("the saga to end", || async {
        let saga = a.saga(id).await.map_err(|e| e.to_string())?;
        if saga.is_terminal() {
            Ok(saga)
        } else {
            Err(format!("{:?}", saga.status))
        }
    })
    .await;
    assert_eq!(saga.status, SagaStatus::Completed, "{:?}", saga.steps);

    // A subscription reads past it too. The damaged event is not delivered
    // (its name matches no pattern, and its row no longer rebuilds to the
    // event proclaimed), and never as another event.
    let (seen, handler) = collector();
    let task = a
        .subscribe("watcher", "x.*", StartFrom::Start, handler)
        .expect("subscribe");
    a.proclaim("x.three", b"{}", vec![])
        .await
        .expect("proclaim");
    wait_for("every x.* event delivered", || async {
        let seen = seen.lock().unwrap().clone();
        if seen == ["x.two", "x.three"] {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await;
    assert!(!task.is_finished(), "the subscription keeps running");

    assert!(a.status().await.healthy);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_resumes_after_a_transient_store_fault() {
    let net = alone();
    let a = Node::start(&net.config("a")).await.expect("start a");
    let sub = a
        .log()
        .subscribe("resilient", "y.*", StartFrom::Start)
        .expect("subscribe");
    // The handler holds its first event until the test says go, so the
    // cursor write after it happens while the test holds the database.
    let gate = Arc::new(tokio::sync::Notify::new());
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    let handler = {
        let gate = gate.clone();
        move |event: StoredEvent| {
            let (gate, seen_tx) = (gate.clone(), seen_tx.clone());
            async move {
                let first = event.header.event_type == "y.one";
                let _ = seen_tx.send(event.header.event_type.clone());
                if first {
                    gate.notified().await;
                }
                Ok(())
            }
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(herald::store::run_subscription_async(
        sub,
        handler,
        async move {
            let _ = stop_rx.await;
        },
    ));
    a.proclaim("y.one", b"{}", vec![]).await.expect("proclaim");
    let got = tokio::time::timeout(WITHIN, seen.recv())
        .await
        .expect("y.one");
    assert_eq!(got.as_deref(), Some("y.one"));

    // Another process takes the database's write lock and keeps it past the
    // store's busy timeout: the cursor write fails with "database is locked".
    let holder = db(&net);
    holder
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    gate.notify_one();
    let problem = wait_for("the fault to show in the node's health", || async {
        let status = a.status().await;
        status
            .problems
            .iter()
            .find(|p| p.task == "subscription resilient")
            .cloned()
            .ok_or_else(|| format!("{status:?}"))
    })
    .await;
    assert!(!problem.permanent, "{problem:?}");
    assert!(!a.status().await.healthy);
    assert!(!task.is_finished(), "the subscription waits and retries");
    holder.execute_batch("ROLLBACK").expect("release the lock");

    // It resumes: the cursor is written, new events are delivered, and the
    // node is healthy again.
    a.proclaim("y.two", b"{}", vec![]).await.expect("proclaim");
    let got = tokio::time::timeout(WITHIN, seen.recv())
        .await
        .expect("y.two");
    assert_eq!(got.as_deref(), Some("y.two"));
    wait_for("the node to be healthy again", || async {
        let status = a.status().await;
        if status.healthy {
            Ok(())
        } else {
            Err(format!("{:?}", status.problems))
        }
    })
    .await;
    let _ = stop_tx.send(());
    task.await.expect("join").expect("the runner ends cleanly");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_store_fault_makes_the_node_unhealthy_and_stop() {
    let net = alone();
    let a = Node::start(&net.config("a")).await.expect("start a");
    a.proclaim("z.one", b"{}", vec![]).await.expect("proclaim");
    a.shutdown().await;
    // z.one's payload is cut short: its row no longer rebuilds to the event
    // its feed's tree holds, and nothing a retry can fix.
    let changed = db(&net)
        .execute(
            "UPDATE event_rows SET payload = substr(payload, 1, 10)
             WHERE type = (SELECT id FROM type_names WHERE name = 'z.one')",
            [],
        )
        .expect("damage a payload");
    assert_eq!(changed, 1);

    let a = Node::start(&net.config("a")).await.expect("restart a");
    let (_seen, handler) = collector();
    let task = a
        .subscribe("doomed", "z.*", StartFrom::Start, handler)
        .expect("subscribe");
    let reason = tokio::time::timeout(WITHIN, a.failed())
        .await
        .expect("the node reports the fatal fault");
    assert!(reason.contains("subscription doomed"), "{reason}");
    let status = a.status().await;
    assert!(!status.healthy);
    assert!(
        status
            .problems
            .iter()
            .any(|p| p.permanent && p.task == "subscription doomed"),
        "{:?}",
        status.problems
    );
    assert!(task.await.expect("join").is_err());
    a.shutdown().await;
}

#[test]
fn herald_node_exits_non_zero_when_its_saga_engine_cannot_recover() {
    let net = alone();
    // Written without the node (as an offline `herald publish` does), so
    // the saga participant has not looked at it yet.
    let log = herald::store::Log::open(&net.config("a")).expect("open the store");
    log.proclaim("x.cmd", b"{}", vec![]).expect("proclaim");
    drop(log);
    // A row the saga participant reads (its type says a saga command) that
    // no longer rebuilds to the event its feed's tree holds.
    let conn = db(&net);
    conn.execute(
        "INSERT OR IGNORE INTO type_names (name) VALUES (?1)",
        [herald::saga::events::COMMAND],
    )
    .expect("intern the command type");
    let changed = conn
        .execute(
            "UPDATE event_rows SET type = (SELECT id FROM type_names WHERE name = ?1)
             WHERE type = (SELECT id FROM type_names WHERE name = 'x.cmd')",
            [herald::saga::events::COMMAND],
        )
        .expect("damage a row");
    assert_eq!(changed, 1);
    drop(conn);
    let mut child = std::process::Command::new(common::herald_bin())
        .args(["node", "--config"])
        .arg(net.config_path("a"))
        .current_dir(net.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn herald node");
    let deadline = Instant::now() + WITHIN;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("herald node kept running without its saga engine");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert_eq!(status.code(), Some(2), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("herald: error: node stopped: subscription herald.saga.participant"),
        "{stderr}"
    );
}
