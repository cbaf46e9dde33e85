//! The HTTP/JSON API against real nodes on 127.0.0.1 (QUIC with mutual TLS
//! between them, SQLite with fsync, axum over TCP): every endpoint, SSE
//! resumption across dropped connections over 100,000 events, a durable
//! consumer whose node is SIGKILLed and restarted, bad bodies refused
//! without writing anything, and the OpenAPI document against the router.
//!
//! Every wait polls a condition against a deadline.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use common::net::Net;
use futures_util::{Stream, StreamExt};
use herald::config::ApiConfig;
use herald::core::verify::Draft;
use herald::node::Node;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Longest any condition is waited for.
const WAIT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------
// Helpers: a client that records which routes it exercised, and SSE.

/// An HTTP client for one node's API.
struct Client {
    base: String,
    http: reqwest::Client,
    /// (method, route template) of every request sent through [`Client::call`].
    visited: std::sync::Mutex<BTreeSet<(String, String)>>,
}

/// An answer: status, headers and the body as JSON (`Null` when empty).
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    /// The error code and field of an error answer.
    fn error(&self) -> (&str, &str) {
        (
            self.body["error"]["code"].as_str().unwrap_or("<no code>"),
            self.body["error"]["field"].as_str().unwrap_or("<no field>"),
        )
    }
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            visited: Default::default(),
        }
    }

    /// Sends `method path` (with `route`, its template, recorded) and an
    /// optional body of `content_type`.
    async fn call(
        &self,
        method: &str,
        route: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Answer {
        self.visited
            .lock()
            .unwrap()
            .insert((method.to_string(), route.to_string()));
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some((content_type, bytes)) = body {
            request = request.header("content-type", content_type).body(bytes);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body read");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{path}: the answer is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A GET whose answer is not JSON (the console's files): status,
    /// content type and text.
    async fn get_text(&self, route: &str, path: &str) -> (u16, String, String) {
        self.visited
            .lock()
            .unwrap()
            .insert(("GET".to_string(), route.to_string()));
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (
            status,
            content_type,
            response.text().await.expect("body read"),
        )
    }

    async fn get(&self, route: &str, path: &str) -> Answer {
        self.call("GET", route, path, None).await
    }

    async fn send_json(&self, method: &str, route: &str, path: &str, body: &Value) -> Answer {
        let bytes = serde_json::to_vec(body).unwrap();
        self.call(method, route, path, Some(("application/json", bytes)))
            .await
    }

    /// Publishes `body` (JSON) and returns the receipts, failing the test
    /// on anything but 200.
    async fn publish(&self, body: &Value) -> Vec<Value> {
        let answer = self
            .send_json("POST", "/v1/events", "/v1/events", body)
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.body["receipts"].as_array().unwrap().clone()
    }

    /// Waits until `/readyz` says ready (the node heard from its peers).
    async fn wait_ready(&self) {
        common::wait_async("the API to be ready", WAIT, || async {
            match self.http.get(format!("{}/readyz", self.base)).send().await {
                Ok(r) if r.status() == StatusCode::OK => Ok(()),
                Ok(r) => Err(format!(
                    "{}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
    }
}

/// One SSE block: an event (with `data`), an `id:`-only position mark, or
/// a comment.
#[derive(Debug, Default)]
struct Block {
    id: Option<u64>,
    event: Option<String>,
    data: Option<String>,
    comment: bool,
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>>;

/// An open SSE response, parsed block by block.
struct Sse {
    stream: ByteStream,
    buffer: Vec<u8>,
}

impl Sse {
    /// Opens `path`, resuming after `last_event_id` if given.
    async fn open(client: &Client, route: &str, path: &str, last_event_id: Option<u64>) -> Sse {
        client
            .visited
            .lock()
            .unwrap()
            .insert(("GET".to_string(), route.to_string()));
        let mut request = client.http.get(format!("{}{path}", client.base));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.expect("stream opened");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{path}"
        );
        Sse {
            stream: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
        }
    }

    /// The next complete block, waiting at most `WAIT`.
    async fn next(&mut self) -> Block {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                return parse_block(&String::from_utf8(block).expect("UTF-8 stream"));
            }
            let chunk = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("the stream sent something in time")
                .expect("the stream is still open")
                .expect("the stream reads");
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// The next block that carries an event, as JSON with its id.
    async fn next_event(&mut self) -> (u64, Value) {
        loop {
            let block = self.next().await;
            if let Some(data) = block.data {
                assert_eq!(block.event, None, "an error event: {data}");
                let id = block.id.expect("every event has an id");
                return (id, serde_json::from_str(&data).expect("data is JSON"));
            }
        }
    }
}

fn parse_block(text: &str) -> Block {
    let mut block = Block::default();
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("id: ") {
            block.id = Some(value.parse().expect("ids are positions"));
        } else if let Some(value) = line.strip_prefix("data: ") {
            assert!(block.data.is_none(), "one data line per event: {text:?}");
            block.data = Some(value.to_string());
        } else if let Some(value) = line.strip_prefix("event: ") {
            block.event = Some(value.to_string());
        } else if line.starts_with(':') {
            block.comment = true;
        } else if !line.is_empty() {
            panic!("unexpected SSE line {line:?}");
        }
    }
    block
}

/// Gives `node` of `net` an API on a port the OS picks.
fn with_api(net: &Net, node: &str) {
    net.edit(node, |c| {
        c.api = Some(ApiConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..ApiConfig::default()
        })
    });
}

/// A two-node cluster with an API on `a`; `b` runs a `ping` saga step.
async fn two_nodes() -> (Net, Node, Node, Client) {
    let net = Net::mesh(&["a", "b"]);
    with_api(&net, "a");
    let a = Node::start(&net.config("a")).await.expect("start a");
    let b = Node::start(&net.config("b")).await.expect("start b");
    b.on_command("ping.do", |_, cmd| Ok(json!({ "pong": cmd.input["n"] })));
    b.on_command("ping.undo", |_, _| Ok(json!({})));
    let client = Client::new(a.api_addr().expect("a has an API"));
    client.wait_ready().await;
    // The tests read b's feed through a: wait until it has replicated.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while head(&a, "b").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "b's feed never reached a"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    (net, a, b, client)
}

/// The head of `feed` on `node`.
fn head(node: &Node, feed: &str) -> Option<u64> {
    node.log()
        .heads()
        .unwrap()
        .into_iter()
        .find(|h| h.feed == feed)
        .map(|h| h.seq)
}

// ---------------------------------------------------------------------------
// Every endpoint.

const PING_SAGA: &str = r#"
saga_type = "Ping"
deadline_ms = 30000

[[steps]]
name = "ping"
service = "b"
command = "ping.do"
compensation = "ping.undo"
deadline_ms = 20000
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_endpoint_answers_against_a_real_node() {
    let (net, a, b, api) = two_nodes().await;

    // Probes.
    let health = api.get("/healthz", "/healthz").await;
    assert_eq!(
        (health.status, &health.body["status"]),
        (StatusCode::OK, &json!("ok"))
    );
    let ready = api.get("/readyz", "/readyz").await;
    assert_eq!(
        (ready.status, &ready.body["status"]),
        (StatusCode::OK, &json!("ready"))
    );
    // Metrics answer text, not JSON (tests/metrics.rs checks their content).
    api.visited
        .lock()
        .unwrap()
        .insert(("GET".to_string(), "/metrics".to_string()));
    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("herald_events_proclaimed_total"),
        "/metrics names its counters"
    );
    let doc = api.get("/v1/openapi.json", "/v1/openapi.json").await;
    assert_eq!(doc.body["openapi"], "3.1.0");

    // Publish: one event, a JSON array, NDJSON.
    let one = api
        .publish(&json!({
            "type": "donation.received",
            "data": {"donor": "D-1", "cents": 2500},
            "meta": {"correlation_id": "c-1"}
        }))
        .await;
    assert_eq!(one.len(), 1);
    assert_eq!(
        (one[0]["feed"].as_str(), one[0]["seq"].as_u64()),
        (Some("a"), Some(1))
    );
    let batch = api
        .publish(&json!([
            {"type": "donation.received", "data": {"donor": "D-2", "cents": 100}},
            {"type": "volunteer.signed_up", "data": {"v": 7}},
            {"type": "scan.uploaded", "data_base64": "AAEC/w==", "schema_version": 3},
        ]))
        .await;
    let seqs: Vec<u64> = batch.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [2, 3, 4]);
    let ndjson = b"{\"type\":\"donation.received\",\"data\":{\"donor\":\"D-3\"}}\n\n{\"type\":\"donation.refunded\",\"data\":{\"donor\":\"D-1\"}}\n".to_vec();
    let lines = api
        .call(
            "POST",
            "/v1/events",
            "/v1/events",
            Some(("application/x-ndjson", ndjson)),
        )
        .await;
    assert_eq!(lines.status, StatusCode::OK, "{}", lines.body);
    assert_eq!(lines.body["receipts"][1]["seq"], 6);
    assert_eq!(
        head(&a, "a"),
        Some(6),
        "receipts come after the events are stored"
    );

    // Read by type, in arrival order, decrypted, with the signature status.
    let donations = api
        .get("/v1/events", "/v1/events?type=donation.*&limit=2")
        .await;
    assert_eq!(donations.status, StatusCode::OK, "{}", donations.body);
    let events = donations.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    let first = &events[0];
    assert_eq!(first["feed"], "a");
    assert_eq!(first["seq"], 1);
    assert_eq!(first["type"], "donation.received");
    assert_eq!(first["id"], one[0]["id"]);
    assert_eq!(first["hash"], one[0]["hash"]);
    assert_eq!(first["channel"], "default");
    assert_eq!(first["meta"], json!({"correlation_id": "c-1"}));
    assert_eq!(first["payload"], "json");
    assert_eq!(first["data"], json!({"donor": "D-1", "cents": 2500}));
    assert_eq!(first["signature"]["status"], "verified");
    assert_eq!(first["signature"]["scheme"], "checkpoint");
    assert!(first["signature"]["checkpoint"]["size"].as_u64().unwrap() > 1);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    // The next page continues after the first.
    let next_after = donations.body["next_after"].as_u64().unwrap();
    assert_eq!(next_after, events[1]["position"].as_u64().unwrap());
    let rest = api
        .get(
            "/v1/events",
            &format!("/v1/events?type=donation.*&type=scan.*&after={next_after}"),
        )
        .await;
    let types: Vec<&str> = rest.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["scan.uploaded", "donation.received", "donation.refunded"]
    );
    let binary = &rest.body["events"][0];
    assert_eq!(
        (&binary["payload"], &binary["data_base64"]),
        (&json!("binary"), &json!("AAEC/w=="))
    );
    assert_eq!(binary["schema_version"], 3);
    assert!(binary.get("data").is_none());

    // By id, by feed range, the feeds.
    let id = one[0]["id"].as_str().unwrap();
    let by_id = api
        .get("/v1/events/{id}", &format!("/v1/events/{id}"))
        .await;
    assert_eq!(by_id.body["events"][0]["seq"], 1, "{}", by_id.body);
    let missing = api
        .get(
            "/v1/events/{id}",
            "/v1/events/01a218fe-fbda-796e-8f60-7f5de75d1e51",
        )
        .await;
    assert_eq!(
        (missing.status, missing.error()),
        (StatusCode::NOT_FOUND, ("not_found", "id"))
    );
    let range = api
        .get(
            "/v1/feeds/{feed}/events",
            "/v1/feeds/a/events?from_seq=2&limit=2",
        )
        .await;
    let seqs: Vec<u64> = range.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!((seqs, &range.body["next_seq"]), (vec![2, 3], &json!(4)));
    let genesis = api
        .get("/v1/feeds/{feed}/events", "/v1/feeds/a/events?to_seq=0")
        .await;
    assert_eq!(genesis.body["events"][0]["type"], "herald.genesis");
    assert_eq!(
        genesis.body["events"][0]["payload"], "binary",
        "a certificate"
    );
    assert_eq!(genesis.body["events"][0]["channel"], Value::Null);
    let nope = api
        .get("/v1/feeds/{feed}/events", "/v1/feeds/nope/events")
        .await;
    assert_eq!(
        (nope.status, nope.error()),
        (StatusCode::NOT_FOUND, ("not_found", "feed"))
    );
    let feeds = api.get("/v1/feeds", "/v1/feeds").await;
    let names: Vec<&str> = feeds.body["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["feed"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"a") && names.contains(&"b"), "{names:?}");

    // Events of another feed: decrypted with the key this node holds, and
    // left encrypted on a channel it holds no key for.
    let finance = herald::identity::create_channel(&net.keys(), "finance", false).unwrap();
    net.edit("b", |c| {
        c.channels.insert("finance".into(), finance.clone());
    });
    let b_log = b.log().clone();
    let b_config = net.config("b");
    let finance_key =
        herald::identity::load_channel_key("finance", &b_config.channels["finance"]).unwrap();
    b.proclaim("press.release", br#"{"title":"open"}"#, vec![])
        .await
        .unwrap();
    let secret = Draft::new("ledger.entry", 1, vec![], b"{\"cents\":1}".to_vec()).unwrap();
    tokio::task::spawn_blocking(move || {
        b_log
            .proclaim_batch(vec![(secret, std::sync::Arc::new(finance_key))])
            .unwrap()
    })
    .await
    .unwrap();
    let from_b = common::wait_async("b's events on a", WAIT, || async {
        let page = api
            .get("/v1/feeds/{feed}/events", "/v1/feeds/b/events?from_seq=1")
            .await;
        match page.body["events"].as_array() {
            Some(events) if events.len() == 2 => Ok(events.clone()),
            _ => Err(page.body.to_string()),
        }
    })
    .await;
    assert_eq!(from_b[0]["data"], json!({"title": "open"}));
    assert_eq!(from_b[1]["payload"], "encrypted");
    assert!(
        from_b[1]["channel"]
            .as_str()
            .unwrap()
            .starts_with("unknown:")
    );
    assert!(from_b[1].get("data").is_none());

    // A stream: the start mark, then the events, then live ones.
    let mut stream = Sse::open(&api, "/v1/stream", "/v1/stream?type=donation.*", None).await;
    let start = stream.next().await;
    assert_eq!(
        (start.id, start.data),
        (Some(0), None),
        "a stream says where it starts"
    );
    let (id1, e1) = stream.next_event().await;
    assert_eq!(
        (e1["seq"].as_u64(), e1["position"].as_u64()),
        (Some(1), Some(id1))
    );
    for _ in 0..3 {
        stream.next_event().await;
    }
    api.publish(&json!({"type": "donation.received", "data": {"live": true}}))
        .await;
    let (_, live) = stream.next_event().await;
    assert_eq!(live["data"], json!({"live": true}));
    drop(stream);

    // A durable consumer: define, read, pull, ack, stream, delete.
    let created = api
        .send_json(
            "PUT",
            "/v1/consumers/{name}",
            "/v1/consumers/reports",
            &json!({"types": ["donation.*"], "from": "start"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(
        (&created.body["acked"], &created.body["types"]),
        (&json!(0), &json!(["donation.*"]))
    );
    let pulled = api
        .get(
            "/v1/consumers/{name}/events",
            "/v1/consumers/reports/events?max=2",
        )
        .await;
    assert_eq!(pulled.status, StatusCode::OK, "{}", pulled.body);
    let pulled_events = pulled.body["events"].as_array().unwrap();
    assert_eq!(pulled_events.len(), 2);
    let second = pulled_events[1]["position"].as_u64().unwrap();
    let acked = api
        .send_json(
            "POST",
            "/v1/consumers/{name}/ack",
            "/v1/consumers/reports/ack",
            &json!({"position": second}),
        )
        .await;
    assert_eq!(
        (acked.status, &acked.body["acked"]),
        (StatusCode::OK, &json!(second))
    );
    let info = api
        .get("/v1/consumers/{name}", "/v1/consumers/reports")
        .await;
    assert_eq!(info.body["acked"], second);
    let all = api.get("/v1/consumers", "/v1/consumers").await;
    assert_eq!(all.body["consumers"][0]["name"], "reports");
    let mut consumer_stream = Sse::open(
        &api,
        "/v1/consumers/{name}/stream",
        "/v1/consumers/reports/stream",
        None,
    )
    .await;
    assert_eq!(consumer_stream.next().await.id, Some(second));
    let (_, third) = consumer_stream.next_event().await;
    assert_eq!(
        third["data"]["donor"], "D-3",
        "the stream starts after the ack"
    );
    drop(consumer_stream);
    let deleted = api
        .call(
            "DELETE",
            "/v1/consumers/{name}",
            "/v1/consumers/reports",
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = api
        .get("/v1/consumers/{name}", "/v1/consumers/reports")
        .await;
    assert_eq!(
        (gone.status, gone.error()),
        (StatusCode::NOT_FOUND, ("not_found", "name"))
    );

    // A query to the other node, signed by it; and one this node answers.
    let answer = api
        .send_json(
            "POST",
            "/v1/queries",
            "/v1/queries",
            &json!({"to": "b", "type": "herald.head", "data": {"feed": "a"}, "correlation_id": "q-1"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["status"], "success", "{}", answer.body);
    assert_eq!(
        (&answer.body["responder"], &answer.body["signed"]),
        (&json!("b"), &json!(true))
    );
    assert_eq!(
        (&answer.body["data"]["feed"], &answer.body["correlation_id"]),
        (&json!("a"), &json!("q-1"))
    );
    let unknown = api
        .send_json(
            "POST",
            "/v1/queries",
            "/v1/queries",
            &json!({"to": "a", "type": "no.such.query", "data": {}}),
        )
        .await;
    assert_eq!(unknown.body["status"], "no_handler", "{}", unknown.body);

    // A saga across both nodes: start, state, list, history.
    let started = api
        .send_json(
            "POST",
            "/v1/sagas",
            "/v1/sagas",
            &json!({"definition": PING_SAGA, "input": {"n": 5}}),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.body);
    let saga_id = started.body["saga_id"].as_str().unwrap().to_string();
    assert_eq!(
        started.headers["location"],
        format!("/v1/sagas/{saga_id}").as_str()
    );
    let saga = common::wait_async("the saga to complete", WAIT, || async {
        let s = api
            .get("/v1/sagas/{id}", &format!("/v1/sagas/{saga_id}"))
            .await;
        if s.body["status"] == "Completed" || s.body["status"] == "completed" {
            Ok(s.body)
        } else {
            Err(s.body.to_string())
        }
    })
    .await;
    assert_eq!(saga["saga_type"], "Ping");
    let listed = api.get("/v1/sagas", "/v1/sagas?status=completed").await;
    assert_eq!(
        listed.body["sagas"][0]["saga_id"],
        saga_id.as_str(),
        "{}",
        listed.body
    );
    let history = api
        .get(
            "/v1/sagas/{id}/history",
            &format!("/v1/sagas/{saga_id}/history"),
        )
        .await;
    let timeline: Vec<(&str, &str)> = history.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["feed"].as_str().unwrap(), e["type"].as_str().unwrap()))
        .collect();
    assert!(
        timeline.contains(&("b", "herald.saga.reply")),
        "{timeline:?}"
    );
    assert_eq!(
        timeline.first().map(|t| t.1),
        Some("herald.saga.started"),
        "{timeline:?}"
    );
    let reply = history.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "herald.saga.reply")
        .unwrap();
    assert_eq!(
        reply["data"]["outcome"]["Completed"]["result"],
        json!({"pong": 5}),
        "{reply}"
    );

    // Status and peers.
    let status = api.get("/v1/status", "/v1/status").await;
    assert_eq!(
        (&status.body["service"], &status.body["running"]),
        (&json!("a"), &json!(true))
    );
    let peers = api.get("/v1/peers", "/v1/peers").await;
    assert_eq!(peers.body["peers"][0]["name"], "b");
    assert_eq!(peers.body["peers"][0]["connected"], true);
    // A reload with unchanged files installs them again and closes nothing
    // (tests/reload.rs covers what changes).
    let reloaded = api
        .send_json("POST", "/v1/reload", "/v1/reload", &json!({}))
        .await;
    assert_eq!(reloaded.body["service"], "a", "{}", reloaded.body);
    assert_eq!(reloaded.body["closed"], json!([]), "{}", reloaded.body);

    // The console: a page and its two files (tests/console.rs renders it).
    for (path, kind) in [
        ("/", "text/html"),
        ("/console/console.js", "javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let (status, content_type, text) = api.get_text(path, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(content_type.contains(kind), "{path}: {content_type}");
        assert!(!text.is_empty(), "{path}");
    }

    let visited = api.visited.lock().unwrap().clone();
    let routes: BTreeSet<(String, String)> = herald::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        routes.difference(&visited).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "every route is exercised here"
    );
    a.shutdown().await;
    b.shutdown().await;
}

// ---------------------------------------------------------------------------
// The OpenAPI document.

/// The (method, path) of every operation `doc` describes.
fn described_operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, _) in item.as_object().expect("path item") {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_openapi_document_is_the_checked_in_one_and_describes_every_route() {
    let net = Net::mesh(&["a"]);
    with_api(&net, "a");
    let a = Node::start(&net.config("a")).await.expect("start a");
    let addr = a.api_addr().unwrap();
    let served = reqwest::get(format!("http://{addr}/v1/openapi.json"))
        .await
        .unwrap();
    assert_eq!(served.headers()["content-type"], "application/json");
    let served = served.bytes().await.unwrap();
    let checked_in =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap();
    assert!(
        served == checked_in,
        "GET /v1/openapi.json differs from docs/openapi.json"
    );

    let doc: Value = serde_json::from_slice(&checked_in).expect("docs/openapi.json is JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let routes: BTreeSet<(String, String)> = herald::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        described_operations(&doc),
        routes,
        "docs/openapi.json against the router"
    );
    // Every `$ref` points at a schema or response the document defines.
    let text = String::from_utf8(checked_in).unwrap();
    for reference in text.split("\"$ref\": \"#/").skip(1) {
        let target = reference.split('"').next().unwrap();
        let mut node = &doc;
        for part in target.split('/') {
            node = &node[part];
        }
        assert!(!node.is_null(), "dangling $ref #/{target}");
    }
    // And every described route is served (none falls to the 404 of unknown paths).
    let client = reqwest::Client::new();
    for (method, path) in &routes {
        let concrete = path
            .replace("{id}", "01a218fe-fbda-796e-8f60-7f5de75d1e51")
            .replace("{feed}", "a")
            .replace("{name}", "probe");
        let response = client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("http://{addr}{concrete}"),
            )
            .header("content-type", "application/json")
            .body("{}")
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        // Streams answer with headers at once; a body read is not needed.
        let response = response.unwrap();
        if response.status() == StatusCode::NOT_FOUND
            || response.status() == StatusCode::METHOD_NOT_ALLOWED
        {
            let body: Value = response.json().await.unwrap();
            assert_ne!(
                body["error"]["message"]
                    .as_str()
                    .map(|m| m.starts_with("no endpoint")),
                Some(true),
                "{method} {path} is described but not served"
            );
            assert_ne!(
                body["error"]["code"], "method_not_allowed",
                "{method} {path}"
            );
        }
    }
    a.shutdown().await;
}

// ---------------------------------------------------------------------------
// SSE resumption.

/// Events published while a subscriber reads them through connections it
/// drops every few thousand events (mid-chunk) and resumes with
/// `Last-Event-ID`.
const SSE_EVENTS: usize = 100_000;
const SSE_BATCH: usize = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_sse_subscriber_resumes_after_dropped_connections_with_nothing_lost_or_repeated() {
    let net = Net::mesh(&["a"]);
    with_api(&net, "a");
    let a = Node::start(&net.config("a")).await.expect("start a");
    let api = std::sync::Arc::new(Client::new(a.api_addr().unwrap()));
    api.wait_ready().await;
    // Noise the filter must skip, before and during the load.
    api.publish(&json!({"type": "noise.before", "data": 0}))
        .await;

    let publisher = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut published = 0usize;
            for batch in 0..SSE_EVENTS / SSE_BATCH {
                let events: Vec<Value> = (0..SSE_BATCH)
                    .map(|k| json!({"type": "load.tick", "data": {"i": published + k}}))
                    .collect();
                let receipts = if batch % 2 == 0 {
                    api.publish(&Value::Array(events)).await
                } else {
                    let mut ndjson = Vec::new();
                    for e in &events {
                        serde_json::to_writer(&mut ndjson, e).unwrap();
                        ndjson.push(b'\n');
                    }
                    let answer = api
                        .call(
                            "POST",
                            "/v1/events",
                            "/v1/events",
                            Some(("application/x-ndjson", ndjson)),
                        )
                        .await;
                    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
                    answer.body["receipts"].as_array().unwrap().clone()
                };
                assert_eq!(receipts.len(), SSE_BATCH);
                published += SSE_BATCH;
                api.publish(&json!({"type": "noise.during", "data": batch}))
                    .await;
            }
        })
    };

    // Drop points: after this many events of a connection, varied so drops
    // land at different places within the node's batches.
    let drops = [1usize, 4_999, 7_919, 12_345, 257, 10_007, 3, 20_011];
    let mut received: Vec<u64> = Vec::with_capacity(SSE_EVENTS);
    let mut last_id: Option<u64> = None;
    let mut last_position = 0u64;
    let mut connections = 0usize;
    let started = Instant::now();
    while received.len() < SSE_EVENTS {
        assert!(
            started.elapsed() < WAIT * 4,
            "only {} events after {:?}",
            received.len(),
            started.elapsed()
        );
        let mut sse = Sse::open(&api, "/v1/stream", "/v1/stream?type=load.*", last_id).await;
        let budget = drops[connections % drops.len()];
        connections += 1;
        let mut this_connection = 0usize;
        while this_connection < budget && received.len() < SSE_EVENTS {
            let block = sse.next().await;
            if let Some(id) = block.id {
                assert!(
                    id >= last_position,
                    "positions never go back: {id} after {last_position}"
                );
                last_position = id;
                last_id = Some(id);
            }
            let Some(data) = block.data else { continue };
            let event: Value = serde_json::from_str(&data).unwrap();
            assert_eq!(event["type"], "load.tick", "the filter holds");
            assert_eq!(event["position"].as_u64(), block.id);
            let i = event["data"]["i"].as_u64().unwrap();
            assert_eq!(
                i,
                received.len() as u64,
                "event {i} arrived where event {} was due (connection {connections})",
                received.len()
            );
            received.push(i);
            this_connection += 1;
        }
        // Dropped here, possibly with a partial event in flight.
    }
    publisher.await.unwrap();
    assert_eq!(received.len(), SSE_EVENTS);
    assert!(
        connections > 10,
        "the connection was dropped and resumed ({connections} times)"
    );
    // Nothing more is due: a resumed stream has no further load event.
    let mut sse = Sse::open(&api, "/v1/stream", "/v1/stream?type=load.*", last_id).await;
    api.publish(&json!({"type": "load.tick", "data": {"i": "last"}}))
        .await;
    let (_, next) = sse.next_event().await;
    assert_eq!(
        next["data"]["i"], "last",
        "nothing repeated after the last event"
    );
    drop(sse);
    a.shutdown().await;
}

// ---------------------------------------------------------------------------
// A durable consumer across a SIGKILL of its node and a restart of its client.

/// A free TCP port on 127.0.0.1 (released for the node to take).
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Positions of `events` (a pull's answer).
fn positions(pull: &Answer) -> Vec<u64> {
    pull.body["events"]
        .as_array()
        .unwrap_or_else(|| panic!("a pull answer: {}", pull.body))
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect()
}

/// The `n` field of each event of a pull.
fn numbers(pull: &Answer) -> Vec<u64> {
    pull.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["n"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_consumer_resumes_at_its_ack_after_its_node_is_killed_and_it_restarts() {
    let net = Net::mesh(&["a"]);
    let port = free_tcp_port();
    net.edit("a", |c| {
        c.api = Some(ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            ..ApiConfig::default()
        })
    });
    let config = net.config_path("a");
    let log = net.path().join("a.log");
    let bin = std::path::Path::new(common::herald_bin());
    let mut node = common::spawn_node(bin, &config, &log);
    let api = Client::new(SocketAddr::from(([127, 0, 0, 1], port)));
    api.wait_ready().await;

    let created = api
        .send_json(
            "PUT",
            "/v1/consumers/{name}",
            "/v1/consumers/billing",
            &json!({"types": ["order.*"]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    // 50 orders with other events between them.
    let mut events = Vec::new();
    for n in 0..50u64 {
        events.push(json!({"type": "order.placed", "data": {"n": n}}));
        if n % 5 == 0 {
            events.push(json!({"type": "stock.counted", "data": {"n": n}}));
        }
    }
    api.publish(&Value::Array(events)).await;

    // The first client: pulls 20, handles 15 and acknowledges them, pulls
    // on with its own fetch position, then dies before acknowledging more.
    let first = api
        .get(
            "/v1/consumers/{name}/events",
            "/v1/consumers/billing/events?max=20",
        )
        .await;
    assert_eq!(numbers(&first), (0..20).collect::<Vec<_>>());
    let fifteenth = positions(&first)[14];
    let acked = api
        .send_json(
            "POST",
            "/v1/consumers/{name}/ack",
            "/v1/consumers/billing/ack",
            &json!({"position": fifteenth}),
        )
        .await;
    assert_eq!(acked.body["acked"], fifteenth);
    let on = api
        .get(
            "/v1/consumers/{name}/events",
            &format!(
                "/v1/consumers/billing/events?max=10&after={}",
                first.body["next_after"]
            ),
        )
        .await;
    assert_eq!(
        numbers(&on),
        (20..30).collect::<Vec<_>>(),
        "a fetch position of its own"
    );
    assert_eq!(on.body["acked"], fifteenth, "pulling acknowledges nothing");

    // The node is killed (no shutdown at all) and started again.
    node.kill().unwrap();
    node.wait().unwrap();
    let mut node = common::spawn_node(bin, &config, &log);
    api.wait_ready().await;

    // The restarted client asks where it stands and pulls from there:
    // everything after its ack again (at-least-once), nothing before.
    let info = api
        .get("/v1/consumers/{name}", "/v1/consumers/billing")
        .await;
    assert_eq!(info.body["acked"], fifteenth, "the ack survived the kill");
    let again = api
        .get(
            "/v1/consumers/{name}/events",
            "/v1/consumers/billing/events?max=100",
        )
        .await;
    assert_eq!(numbers(&again), (15..50).collect::<Vec<_>>());
    let last = *positions(&again).last().unwrap();
    api.send_json(
        "POST",
        "/v1/consumers/{name}/ack",
        "/v1/consumers/billing/ack",
        &json!({"position": last}),
    )
    .await;
    // An older ack (a late duplicate) never moves it back.
    let stale = api
        .send_json(
            "POST",
            "/v1/consumers/{name}/ack",
            "/v1/consumers/billing/ack",
            &json!({"position": fifteenth}),
        )
        .await;
    assert_eq!(stale.body["acked"], last);
    // Caught up: a pull waits, then answers empty.
    let waited = Instant::now();
    let empty = api
        .get(
            "/v1/consumers/{name}/events",
            "/v1/consumers/billing/events?wait_ms=300",
        )
        .await;
    assert!(positions(&empty).is_empty());
    assert!(
        waited.elapsed() >= Duration::from_millis(300),
        "the pull waited"
    );
    // A pull that waits wakes for an event published meanwhile.
    let waiting = {
        let base = api.base.clone();
        tokio::spawn(async move {
            reqwest::get(format!("{base}/v1/consumers/billing/events?wait_ms=20000"))
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    api.publish(&json!({"type": "order.placed", "data": {"n": 50}}))
        .await;
    let woken = waiting.await.unwrap();
    assert_eq!(woken["events"][0]["data"]["n"], 50, "{woken}");

    // Redefining its types without a new position is refused; with one it is not.
    let conflict = api
        .send_json(
            "PUT",
            "/v1/consumers/{name}",
            "/v1/consumers/billing",
            &json!({"types": ["stock.*"]}),
        )
        .await;
    assert_eq!(
        (conflict.status, conflict.error()),
        (StatusCode::CONFLICT, ("conflict", "types"))
    );
    let same = api
        .send_json(
            "PUT",
            "/v1/consumers/{name}",
            "/v1/consumers/billing",
            &json!({"types": ["order.*"]}),
        )
        .await;
    assert_eq!(
        (same.status, &same.body["acked"]),
        (StatusCode::OK, &json!(last)),
        "unchanged"
    );
    let beyond = api
        .send_json(
            "POST",
            "/v1/consumers/{name}/ack",
            "/v1/consumers/billing/ack",
            &json!({"position": 1_000_000}),
        )
        .await;
    assert_eq!(
        (beyond.status, beyond.error()),
        (StatusCode::BAD_REQUEST, ("invalid_field", "position"))
    );
    node.kill().unwrap();
    node.wait().unwrap();
}

// ---------------------------------------------------------------------------
// Bad input.

/// What is sent, with what content type, and the status, code and field
/// expected back.
type BadCase<'a> = (
    &'a str,
    Option<(&'a str, Vec<u8>)>,
    StatusCode,
    &'a str,
    &'a str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_refused_naming_the_field_and_write_nothing() {
    let net = Net::mesh(&["a"]);
    with_api(&net, "a");
    let a = Node::start(&net.config("a")).await.expect("start a");
    let api = Client::new(a.api_addr().unwrap());
    api.wait_ready().await;
    api.publish(&json!({"type": "ok.first", "data": {}})).await;
    let before = head(&a, "a");
    let arrival = a.log().last_arrival().unwrap();

    let json_body = |text: &str| Some(("application/json", text.as_bytes().to_vec()));
    let oversized_payload =
        json!({"type": "big", "data_base64": base64_of(&vec![7u8; 1024 * 1024 + 1])});
    let too_many: Vec<Value> = (0..herald::api::PUBLISH_EVENTS_MAX + 1)
        .map(|_| json!({"type": "t", "data": 1}))
        .collect();
    let cases: Vec<BadCase> = vec![
        (
            "malformed",
            json_body(r#"{"type": "t", "data": "#),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "body",
        ),
        (
            "not an event",
            json_body("[1]"),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "[0]",
        ),
        (
            "unknown field",
            json_body(r#"[{"type":"t","data":1},{"type":"t","data":1,"colour":"red"}]"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "[1].colour",
        ),
        (
            "no type",
            json_body(r#"{"data":1}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "type",
        ),
        (
            "reserved type",
            json_body(r#"[{"type":"t","data":1},{"type":"herald.genesis","data":1}]"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "[1].type",
        ),
        (
            "type with a space",
            json_body(r#"{"type":"a b","data":1}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "type",
        ),
        (
            "no payload",
            json_body(r#"{"type":"t"}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "data",
        ),
        (
            "two payloads",
            json_body(r#"{"type":"t","data":1,"data_base64":"AA=="}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "data",
        ),
        (
            "bad base64",
            json_body(r#"{"type":"t","data_base64":"!!"}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "data_base64",
        ),
        (
            "meta not text",
            json_body(r#"{"type":"t","data":1,"meta":{"k":1}}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "meta.k",
        ),
        (
            "meta key too long",
            Some((
                "application/json",
                serde_json::to_vec(&json!({"type":"t","data":1,"meta":{"k".repeat(65): "v"}}))
                    .unwrap(),
            )),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "meta",
        ),
        (
            "unknown channel",
            json_body(r#"[{"type":"t","data":1},{"type":"t","data":1,"channel":"nope"}]"#),
            StatusCode::BAD_REQUEST,
            "unknown_channel",
            "[1].channel",
        ),
        (
            "payload over 1 MiB",
            Some((
                "application/json",
                serde_json::to_vec(&oversized_payload).unwrap(),
            )),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "data",
        ),
        (
            "too many events",
            Some(("application/json", serde_json::to_vec(&too_many).unwrap())),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "body",
        ),
        (
            "body over the limit",
            Some((
                "application/json",
                vec![b' '; herald::api::BODY_BYTES_MAX + 1],
            )),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "body",
        ),
        (
            "empty array",
            json_body("[]"),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "body",
        ),
        (
            "ndjson, bad third line",
            Some((
                "application/x-ndjson",
                b"{\"type\":\"t\",\"data\":1}\n{\"type\":\"t\",\"data\":2}\n{\"type\":\n".to_vec(),
            )),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "[2]",
        ),
        (
            "wrong content type",
            Some(("text/plain", br#"{"type":"t","data":1}"#.to_vec())),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type",
        ),
        (
            "no content type",
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type",
        ),
    ];
    for (what, body, status, code, field) in cases {
        let answer = api.call("POST", "/v1/events", "/v1/events", body).await;
        assert_eq!(answer.status, status, "{what}: {}", answer.body);
        assert_eq!(answer.error(), (code, field), "{what}: {}", answer.body);
        assert!(
            !answer.body["error"]["message"].as_str().unwrap().is_empty(),
            "{what}: a message"
        );
        assert_eq!(head(&a, "a"), before, "{what}: nothing was written");
    }
    assert_eq!(
        a.log().last_arrival().unwrap(),
        arrival,
        "no event at all was stored"
    );

    // Other endpoints: bad parameters, bodies and paths.
    for (method, path, body, status, code, field) in [
        (
            "GET",
            "/v1/events?limit=0",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "limit",
        ),
        (
            "GET",
            "/v1/events?colour=red",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "colour",
        ),
        (
            "GET",
            "/v1/events?after=1&from=now",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "from",
        ),
        (
            "GET",
            "/v1/stream?from=yesterday",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "from",
        ),
        (
            "GET",
            "/v1/stream?type=a%20b",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "type",
        ),
        (
            "GET",
            "/v1/events/not-a-uuid",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "id",
        ),
        (
            "PUT",
            "/v1/consumers/has%20space",
            json_body("{}"),
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "name",
        ),
        (
            "PUT",
            "/v1/consumers/c",
            json_body(r#"{"types":"x"}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "types",
        ),
        (
            "PUT",
            "/v1/consumers/c",
            json_body(r#"{"from":"start","after":1}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "from",
        ),
        (
            "POST",
            "/v1/consumers/c/ack",
            json_body(r#"{"position":1}"#),
            StatusCode::NOT_FOUND,
            "not_found",
            "name",
        ),
        (
            "POST",
            "/v1/queries",
            json_body(r#"{"to":"a"}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "type",
        ),
        (
            "POST",
            "/v1/queries",
            json_body(r#"{"to":"a","type":"herald.head","timeout_ms":0}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "timeout_ms",
        ),
        (
            "POST",
            "/v1/sagas",
            json_body(r#"{"definition":"saga_type = 1"}"#),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "definition",
        ),
        (
            "GET",
            "/v1/sagas?status=sleeping",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "status",
        ),
        (
            "GET",
            "/v1/sagas/01a218fe-fbda-796e-8f60-7f5de75d1e51",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            "id",
        ),
        (
            "GET",
            "/v2/events",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            "<no field>",
        ),
        (
            "PATCH",
            "/v1/events",
            json_body("{}"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "<no field>",
        ),
    ] {
        let answer = api.call(method, path, path, body).await;
        assert_eq!(
            (answer.status, answer.error()),
            (status, (code, field)),
            "{method} {path}: {}",
            answer.body
        );
    }
    assert_eq!(
        a.log().last_arrival().unwrap(),
        arrival,
        "still nothing stored"
    );
    a.shutdown().await;
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// ---------------------------------------------------------------------------
// The store's follower under the streams and pulls.

#[test]
fn a_follower_returns_exactly_the_wanted_events_in_arrival_order_in_bounded_batches() {
    let cluster = common::Cluster::new(&["a"]);
    let log = cluster.open("a");
    let channel = log.channel(None).unwrap();
    // Rare, common and large events, in several commits.
    let mut drafts = Vec::new();
    for i in 0..3_000u32 {
        let (event_type, payload) = match i {
            i if i % 97 == 0 => ("rare.one", vec![b'1'; 10]),
            i if i % 500 == 1 => ("big.blob", vec![b'x'; 700 * 1024]),
            _ => ("common.tick", vec![b'2'; 40]),
        };
        drafts.push((
            Draft::new(event_type, 1, vec![], payload).unwrap(),
            channel.clone(),
        ));
    }
    for chunk in drafts.chunks(300) {
        log.proclaim_batch(chunk.to_vec()).unwrap();
    }
    let everything = log.read_arrivals(0, 10_000).unwrap();
    let expect = |wanted: &dyn Fn(&str) -> bool| -> Vec<u64> {
        everything
            .iter()
            .filter(|e| wanted(&e.header.event_type))
            .map(|e| e.arrival)
            .collect()
    };
    let follow = |patterns: Vec<String>| -> (Vec<u64>, usize) {
        let mut follower = log.follow(patterns, 0).unwrap();
        let (mut got, mut largest_batch_bytes) = (Vec::new(), 0usize);
        loop {
            let batch = follower.next_batch().unwrap();
            assert!(batch.len() <= herald::store::FOLLOW_BATCH_EVENTS_MAX);
            let bytes: usize = batch.iter().map(|e| e.envelope.len()).sum();
            largest_batch_bytes = largest_batch_bytes.max(bytes);
            got.extend(batch.iter().map(|e| e.arrival));
            if !follower.has_more().unwrap() {
                return (got, largest_batch_bytes);
            }
        }
    };
    let (rare, _) = follow(vec!["rare.*".into()]);
    assert_eq!(rare, expect(&|t| t == "rare.one"));
    let (two, _) = follow(vec!["rare.*".into(), "big.?lob".into()]);
    assert_eq!(two, expect(&|t| t == "rare.one" || t == "big.blob"));
    let (all, largest) = follow(vec![]);
    assert_eq!(all, expect(&|_| true));
    assert!(
        largest < herald::store::FOLLOW_BATCH_PAYLOAD_BYTES_MAX + 1024 * 1024,
        "a batch stops near its byte bound ({largest} bytes)"
    );
    let (star, _) = follow(vec!["*".into()]);
    assert_eq!(star, all);
    assert!(
        log.follow(vec!["x".into(); 17], 0).is_err(),
        "too many patterns"
    );
}

// ---------------------------------------------------------------------------
// Shutdown with streams and pulls open.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stops_promptly_with_streams_and_pulls_open_and_its_store_opens_again() {
    let net = Net::mesh(&["a"]);
    with_api(&net, "a");
    let a = Node::start(&net.config("a")).await.expect("start a");
    let api = Client::new(a.api_addr().unwrap());
    api.wait_ready().await;
    api.send_json(
        "PUT",
        "/v1/consumers/{name}",
        "/v1/consumers/w",
        &json!({"from": "now"}),
    )
    .await;
    let mut stream = Sse::open(&api, "/v1/stream", "/v1/stream?from=now", None).await;
    assert_eq!(stream.next().await.data, None, "the start mark");
    let pull = {
        let url = format!("{}/v1/consumers/w/events?wait_ms=30000", api.base);
        tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status()) })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = Instant::now();
    a.shutdown().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "shutdown waited {:?} for open streams",
        stopping.elapsed()
    );
    // The stream ends and the pull is answered, not left hanging.
    let end = tokio::time::timeout(WAIT, stream.stream.next())
        .await
        .expect("the stream ended");
    assert!(
        end.is_none() || end.is_some_and(|r| r.is_err()),
        "no more events after shutdown"
    );
    let pulled = tokio::time::timeout(WAIT, pull)
        .await
        .expect("the pull ended")
        .unwrap();
    assert!(
        matches!(pulled, Ok(StatusCode::OK)),
        "a waiting pull is answered at shutdown: {pulled:?}"
    );
    // Nothing of the API holds the store: the node starts again on it.
    let again = Node::start(&net.config("a"))
        .await
        .expect("the store opens again");
    again.shutdown().await;
}
