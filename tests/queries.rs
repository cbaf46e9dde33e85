//! The node's query registry against a real log: built-in queries, Rust and
//! executable handlers, deadlines, and that every answer is signed by the
//! node and verifies only untampered.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Cluster;
use ed25519_dalek::{SigningKey, VerifyingKey};
use herald::core::query::{
    QueryError, QueryRequest, QueryResultBody, QueryStatus, SignedQueryResult, verify_result,
    verify_result_with_cert,
};
use herald::identity::{NodeIdentity, TrustAnchor};
use herald::node::query::{EXEC_STDERR_BYTES_MAX, HandlerReply, QueryHandler, QueryRegistry};
use herald::store::Log;

/// Slack allowed past a deadline (debug build, two shared cores).
const DEADLINE_SLACK: Duration = Duration::from_millis(800);

struct Node {
    cluster: Cluster,
    log: Arc<Log>,
    identity: NodeIdentity,
}

impl Node {
    fn new() -> Node {
        let cluster = Cluster::new(&["a"]);
        let config = cluster.config("a");
        let trust = TrustAnchor::load(&config.ca, config.revoked.as_deref()).expect("trust");
        let identity = NodeIdentity::load(
            "a",
            &config.key,
            &config.cert,
            &trust,
            herald::clock::now_us(),
        )
        .expect("identity");
        let log = Arc::new(cluster.open("a"));
        Node {
            cluster,
            log,
            identity,
        }
    }

    fn key(&self) -> &SigningKey {
        &self.identity.signing_key
    }

    fn public(&self) -> VerifyingKey {
        VerifyingKey::from_bytes(&self.identity.cert.public_key).expect("public key")
    }

    fn registry(&self) -> QueryRegistry {
        let mut registry = QueryRegistry::new();
        registry.register_builtins(self.log.clone());
        registry
    }

    /// Asks `registry` as node `a`, then verifies the answer with the node's
    /// certificate and checks that tampering with any byte breaks it.
    async fn ask(&self, registry: &QueryRegistry, request: &QueryRequest) -> QueryResultBody {
        let signed = registry
            .answer(request, "a", self.key(), herald::clock::now_us)
            .await;
        let body = verify_result_with_cert(
            &signed,
            &self.identity.cert,
            request,
            herald::clock::now_us(),
        )
        .expect("answer verifies with the node certificate");
        assert_eq!(
            verify_result(&signed, &self.public(), request),
            Ok(body.clone())
        );
        assert_tamper_evident(&signed, &self.public(), request);
        body
    }
}

fn assert_tamper_evident(signed: &SignedQueryResult, key: &VerifyingKey, request: &QueryRequest) {
    for i in 0..signed.body.len() {
        let mut t = signed.clone();
        t.body[i] ^= 0x01;
        assert!(
            verify_result(&t, key, request).is_err(),
            "body byte {i} changed, still verifies"
        );
    }
    for i in 0..signed.signature.len() {
        let mut t = signed.clone();
        t.signature[i] ^= 0x01;
        assert!(
            verify_result(&t, key, request).is_err(),
            "signature byte {i} changed, still verifies"
        );
    }
}

fn request(query_type: &str, payload: &[u8], timeout_ms: u32) -> QueryRequest {
    QueryRequest {
        id: uuid::Uuid::now_v7().into_bytes(),
        caller: "b".into(),
        target: "a".into(),
        query_type: query_type.into(),
        correlation_id: "corr-1".into(),
        payload: payload.to_vec(),
        timeout_ms,
    }
}

fn json(body: &QueryResultBody) -> serde_json::Value {
    serde_json::from_slice(&body.payload).expect("JSON payload")
}

fn text(body: &QueryResultBody) -> String {
    String::from_utf8_lossy(&body.payload).into_owned()
}

#[tokio::test]
async fn query_builtin_head() {
    let node = Node::new();
    let receipt = node
        .log
        .proclaim("order.placed", b"{}", vec![])
        .expect("proclaim");
    let registry = node.registry();

    let body = node
        .ask(&registry, &request("herald.head", br#"{"feed":"a"}"#, 2000))
        .await;
    assert_eq!(body.status, QueryStatus::Success, "{}", text(&body));
    let head = json(&body);
    assert_eq!(head["feed"], "a");
    assert_eq!(head["seq"], receipt.seq);
    assert_eq!(head["hash"], hex::encode(receipt.hash));

    let body = node
        .ask(
            &registry,
            &request("herald.head", br#"{"feed":"zz"}"#, 2000),
        )
        .await;
    assert_eq!(body.status, QueryStatus::NotFound);
    assert_eq!(json(&body)["feed"], "zz");

    let body = node
        .ask(&registry, &request("herald.head", b"not json", 2000))
        .await;
    assert_eq!(body.status, QueryStatus::Error);
    assert!(text(&body).contains("herald.head"), "{}", text(&body));
}

#[tokio::test]
async fn query_builtin_event_by_id_never_decrypts() {
    let node = Node::new();
    let secret = br#"{"card":"4111-secret"}"#;
    let receipt = node
        .log
        .proclaim(
            "payment.taken",
            secret,
            vec![("correlation_id".into(), "c9".into())],
        )
        .expect("proclaim");
    let registry = node.registry();

    let payload = format!(r#"{{"id":"{}"}}"#, receipt.id);
    let body = node
        .ask(
            &registry,
            &request("herald.event", payload.as_bytes(), 2000),
        )
        .await;
    assert_eq!(body.status, QueryStatus::Success, "{}", text(&body));
    let event = json(&body);
    assert_eq!(event["id"], receipt.id.to_string());
    assert_eq!(event["feed"], "a");
    assert_eq!(event["seq"], receipt.seq);
    assert_eq!(event["type"], "payment.taken");
    assert_eq!(event["hash"], hex::encode(receipt.hash));
    assert_eq!(event["meta"]["correlation_id"], "c9");
    assert_eq!(event["encryption"], "xchacha20poly1305");
    // The envelope is the stored, signed one; the plaintext appears nowhere.
    let envelope = hex::decode(event["envelope"].as_str().expect("envelope hex")).expect("hex");
    let stored = node.log.read("a", receipt.seq..=receipt.seq).expect("read");
    assert_eq!(envelope, stored[0].envelope);
    assert!(!text(&body).contains("4111-secret"));
    assert!(!body.payload.windows(secret.len()).any(|w| w == secret));

    // Restricted to the right feed it is found; to another feed it is not.
    let payload = format!(r#"{{"id":"{}","feed":"a"}}"#, receipt.id);
    let body = node
        .ask(
            &registry,
            &request("herald.event", payload.as_bytes(), 2000),
        )
        .await;
    assert_eq!(body.status, QueryStatus::Success);
    let payload = format!(r#"{{"id":"{}","feed":"b"}}"#, receipt.id);
    let body = node
        .ask(
            &registry,
            &request("herald.event", payload.as_bytes(), 2000),
        )
        .await;
    assert_eq!(body.status, QueryStatus::NotFound);

    let unknown = format!(r#"{{"id":"{}"}}"#, uuid::Uuid::now_v7());
    let body = node
        .ask(
            &registry,
            &request("herald.event", unknown.as_bytes(), 2000),
        )
        .await;
    assert_eq!(body.status, QueryStatus::NotFound);

    let body = node
        .ask(
            &registry,
            &request("herald.event", br#"{"id":"nope"}"#, 2000),
        )
        .await;
    assert_eq!(body.status, QueryStatus::Error);
    assert!(text(&body).contains("nope"), "{}", text(&body));
}

#[tokio::test]
async fn query_without_handler_is_no_handler() {
    let node = Node::new();
    let registry = node.registry();
    let body = node.ask(&registry, &request("stock.level", b"", 500)).await;
    assert_eq!(body.status, QueryStatus::NoHandler);
    assert!(text(&body).contains("stock.level"));
}

#[tokio::test]
async fn query_rust_handler_answers_and_overrun_times_out() {
    let node = Node::new();
    let mut registry = node.registry();
    let echo: QueryHandler = Arc::new(|r: &QueryRequest| {
        let mut out = b"echo:".to_vec();
        out.extend_from_slice(&r.payload);
        HandlerReply::Success(out)
    });
    registry.register("echo", echo).expect("register");
    let slow: QueryHandler = Arc::new(|_: &QueryRequest| {
        std::thread::sleep(Duration::from_millis(1500));
        HandlerReply::Success(b"too late".to_vec())
    });
    registry.register("slow", slow).expect("register");
    let failing: QueryHandler = Arc::new(|_: &QueryRequest| HandlerReply::Error("no db".into()));
    registry.register("failing", failing).expect("register");

    let body = node.ask(&registry, &request("echo", b"hi", 500)).await;
    assert_eq!(
        (body.status, body.payload.as_slice()),
        (QueryStatus::Success, &b"echo:hi"[..])
    );

    let body = node.ask(&registry, &request("failing", b"", 500)).await;
    assert_eq!(
        (body.status, text(&body)),
        (QueryStatus::Error, "no db".to_string())
    );

    let started = Instant::now();
    let body = node.ask(&registry, &request("slow", b"", 200)).await;
    let elapsed = started.elapsed();
    assert_eq!(body.status, QueryStatus::Timeout, "{}", text(&body));
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(200) + DEADLINE_SLACK,
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn query_for_another_node_or_invalid_is_error() {
    let node = Node::new();
    let registry = node.registry();
    let mut r = request("herald.head", br#"{"feed":"a"}"#, 500);
    r.target = "c".into();
    let signed = registry
        .answer(&r, "a", node.key(), herald::clock::now_us)
        .await;
    // Signed by `a`, but the caller asked `c`: the caller refuses it.
    assert!(matches!(
        verify_result(&signed, &node.public(), &r),
        Err(QueryError::Mismatch {
            field: "responder",
            ..
        })
    ));
    let mut r = request("herald.head", br#"{"feed":"a"}"#, 500);
    r.timeout_ms = 0;
    let body = node.ask(&registry, &r).await;
    assert_eq!(body.status, QueryStatus::Error);
    assert!(text(&body).contains("timeout_ms"), "{}", text(&body));
}

fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path.to_string_lossy().into_owned()
}

/// Whether process `pid` is gone or a zombie (killed, not yet reaped).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

// All executable handlers in one test: every script is written before any
// is started, so no fork can inherit a script still open for writing
// (which would fail the exec with ETXTBSY).
#[tokio::test]
async fn query_exec_handlers() {
    let node = Node::new();
    let dir = node.cluster.path();
    let pid_file = dir.join("sleeper.pid");
    let scripts = [
        (
            "ok",
            script(
                dir,
                "ok.sh",
                r#"printf '%s|%s|%s|' "$HERALD_QUERY_TYPE" "$HERALD_CALLER" "$HERALD_CORRELATION_ID"; cat"#,
            ),
        ),
        (
            "missing",
            script(
                dir,
                "missing.sh",
                "cat >/dev/null; echo 'no such sku'; exit 3",
            ),
        ),
        (
            "broken",
            script(
                dir,
                "broken.sh",
                "echo 'partial'; echo 'boom: stock db down' >&2; exit 1",
            ),
        ),
        (
            "loud",
            script(dir, "loud.sh", "head -c 70000 /dev/zero; exit 0"),
        ),
        (
            "chatty",
            script(dir, "chatty.sh", "head -c 100000 /dev/zero >&2; exit 2"),
        ),
        (
            "sleeper",
            script(
                dir,
                "sleeper.sh",
                &format!("echo $$ > '{}'\nsleep 5", pid_file.display()),
            ),
        ),
    ];
    let mut registry = node.registry();
    for (query_type, path) in &scripts {
        registry
            .register_exec(query_type, vec![path.clone()], 5000)
            .expect("register exec");
    }
    registry
        .register_exec(
            "absent",
            vec![dir.join("absent.sh").to_string_lossy().into()],
            5000,
        )
        .expect("register exec");

    let body = node
        .ask(&registry, &request("ok", b"stdin-data", 3000))
        .await;
    assert_eq!(body.status, QueryStatus::Success, "{}", text(&body));
    assert_eq!(text(&body), "ok|b|corr-1|stdin-data");

    let body = node
        .ask(&registry, &request("missing", b"sku-9", 3000))
        .await;
    assert_eq!(
        (body.status, text(&body)),
        (QueryStatus::NotFound, "no such sku\n".into())
    );

    let body = node.ask(&registry, &request("broken", b"", 3000)).await;
    assert_eq!(body.status, QueryStatus::Error);
    assert!(
        text(&body).contains("boom: stock db down"),
        "{}",
        text(&body)
    );
    assert!(!text(&body).contains("partial"), "{}", text(&body));

    let body = node.ask(&registry, &request("loud", b"", 3000)).await;
    assert_eq!(body.status, QueryStatus::Error);
    assert!(text(&body).contains("stdout"), "{}", text(&body));

    // Stderr is drained in full (no deadlock) but kept only up to the limit.
    let body = node.ask(&registry, &request("chatty", b"", 3000)).await;
    assert_eq!(body.status, QueryStatus::Error, "{}", text(&body));
    assert!(
        body.payload.len() <= EXEC_STDERR_BYTES_MAX + 64,
        "{}",
        body.payload.len()
    );

    let body = node.ask(&registry, &request("absent", b"", 3000)).await;
    assert_eq!(body.status, QueryStatus::Error);
    assert!(text(&body).contains("absent.sh"), "{}", text(&body));

    let started = Instant::now();
    let body = node.ask(&registry, &request("sleeper", b"", 200)).await;
    let elapsed = started.elapsed();
    assert_eq!(body.status, QueryStatus::Timeout, "{}", text(&body));
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(200) + DEADLINE_SLACK,
        "{elapsed:?}"
    );
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("the sleeper started")
        .trim()
        .parse()
        .expect("pid");
    let killed_by = Instant::now() + Duration::from_secs(2);
    while !dead(pid) && Instant::now() < killed_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        dead(pid),
        "handler process {pid} still runs after its deadline"
    );

    // The handler's own, shorter deadline applies too.
    let mut short = QueryRegistry::new();
    short
        .register_exec("sleeper", vec![scripts[5].1.clone()], 150)
        .expect("register exec");
    let started = Instant::now();
    let body = node.ask(&short, &request("sleeper", b"", 5000)).await;
    assert_eq!(body.status, QueryStatus::Timeout, "{}", text(&body));
    assert!(started.elapsed() < Duration::from_millis(150) + DEADLINE_SLACK);
}
