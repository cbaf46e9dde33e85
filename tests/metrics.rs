//! `GET /metrics` against real nodes on 127.0.0.1 (QUIC with mutual TLS
//! between them, SQLite with fsync, axum over TCP): the exposition is
//! valid Prometheus text, and counters and gauges move as traffic flows:
//! events proclaimed on the author and received on the peers, commits
//! timed, backlogs and lag that grow while a peer is down and drain when it
//! is back, sagas by state, consumer positions, and a forged event counted
//! by the check it failed. Also: a peer's acknowledgements are persisted
//! however its session ends.
//!
//! Every wait polls a condition against a deadline.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::attack::{Attack, Forger, events_frame};
use common::net::Net;
use common::wait_async;
use herald::config::ApiConfig;
use herald::core::wire::{FeedPosition, PeerMessage, close};
use herald::node::Node;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Longest any condition is waited for.
const WAIT: Duration = Duration::from_secs(60);

/// The content type of the Prometheus text format this node serves.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

// ---------------------------------------------------------------------------
// A parser for the Prometheus text format (0.0.4) that checks what it reads.

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed, validated exposition.
#[derive(Debug)]
struct Exposition {
    /// Family name -> (TYPE, HELP).
    families: BTreeMap<String, (String, String)>,
    samples: Vec<Sample>,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `{a="x",b="y"}` (the braces included) into labels.
fn parse_labels(text: &str, line: &str) -> BTreeMap<String, String> {
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or_else(|| panic!("labels not in braces: {line:?}"));
    let mut labels = BTreeMap::new();
    let mut rest = inner;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label without =\": {line:?}"));
        assert!(is_label_name(name), "bad label name {name:?}: {line:?}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?}: {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value: {line:?}"),
            }
        };
        assert!(
            labels.insert(name.to_string(), value).is_none(),
            "label {name} twice: {line:?}"
        );
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    labels
}

fn parse_value(text: &str, line: &str) -> f64 {
    match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        other => other
            .parse()
            .unwrap_or_else(|e| panic!("bad value {other:?} ({e}): {line:?}")),
    }
}

/// The family a sample belongs to: itself, or for histograms the name
/// without `_bucket`, `_sum` or `_count`.
fn family_of<'a>(name: &'a str, families: &BTreeMap<String, (String, String)>) -> &'a str {
    if families.contains_key(name) {
        return name;
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && families
                .get(base)
                .is_some_and(|(kind, _)| kind == "histogram")
        {
            return base;
        }
    }
    panic!("sample {name} has no TYPE line before it")
}

/// Parses `text` and checks it is well-formed Prometheus text: HELP and
/// TYPE once per family, before its samples; known types; counters named
/// `_total`; parseable labels and values; histograms cumulative with a
/// `+Inf` bucket equal to their count.
fn parse(text: &str) -> Exposition {
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut families: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut help: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(is_metric_name(name), "bad name in {line:?}");
            assert!(!doc.trim().is_empty(), "empty HELP: {line:?}");
            assert!(
                help.insert(name.to_string(), doc.to_string()).is_none(),
                "HELP twice for {name}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("TYPE without a type: {line:?}"));
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "unknown type: {line:?}"
            );
            if kind == "counter" {
                assert!(
                    name.ends_with("_total"),
                    "counter not named _total: {line:?}"
                );
            }
            let doc = help
                .get(name)
                .unwrap_or_else(|| panic!("TYPE before HELP for {name}"))
                .clone();
            assert!(
                families
                    .insert(name.to_string(), (kind.to_string(), doc))
                    .is_none(),
                "TYPE twice for {name}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("sample without a value: {line:?}"));
        let (name, labels) = match series.find('{') {
            Some(i) => (&series[..i], parse_labels(&series[i..], line)),
            None => (series, BTreeMap::new()),
        };
        assert!(is_metric_name(name), "bad metric name: {line:?}");
        family_of(name, &families);
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value: parse_value(value, line),
        });
    }
    let exposition = Exposition { families, samples };
    exposition.check_histograms();
    exposition
}

impl Exposition {
    /// Each histogram series: buckets by rising `le`, cumulative, ending at
    /// `+Inf` with the count.
    fn check_histograms(&self) {
        for (family, (kind, _)) in &self.families {
            if kind != "histogram" {
                continue;
            }
            let buckets: Vec<&Sample> = self
                .samples
                .iter()
                .filter(|s| s.name == format!("{family}_bucket"))
                .collect();
            assert!(!buckets.is_empty(), "{family} has no buckets");
            let mut last_le = f64::NEG_INFINITY;
            let mut last_count = 0.0;
            for b in &buckets {
                let le = parse_value(&b.labels["le"], family);
                assert!(le > last_le, "{family}: buckets not rising at le={le}");
                assert!(b.value >= last_count, "{family}: buckets not cumulative");
                (last_le, last_count) = (le, b.value);
            }
            assert_eq!(last_le, f64::INFINITY, "{family}: no +Inf bucket");
            let count = self.value(&format!("{family}_count"), &[]);
            assert_eq!(last_count, count, "{family}: +Inf bucket against the count");
            assert!(self.value(&format!("{family}_sum"), &[]) >= 0.0);
        }
    }

    /// The value of the one sample named `name` whose labels include
    /// `labels`, if there is one.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
        found.first().map(|s| s.value)
    }

    /// Like [`get`](Self::get), failing the test when there is none.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }

    /// The sum of every sample named `name`.
    fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }
}

#[test]
fn the_parser_refuses_what_prometheus_would() {
    let good = "# HELP x_total An x.\n# TYPE x_total counter\nx_total{a=\"q\\\"\"} 3\n";
    assert_eq!(parse(good).value("x_total", &[("a", "q\"")]), 3.0);
    for bad in [
        "x_total 3\n",                             // no TYPE
        "# TYPE x_total counter\nx_total 1\n",     // no HELP
        "# HELP x A.\n# TYPE x counter\nx 1\n",    // counter not _total
        "# HELP x A.\n# TYPE x gauge\nx{a=b} 1\n", // unquoted label
        "# HELP x A.\n# TYPE x gauge\nx one\n",    // bad value
        "# HELP h A.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
    ] {
        assert!(
            std::panic::catch_unwind(|| parse(bad)).is_err(),
            "accepted {bad:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Nodes with an API.

fn with_api(net: &Net, node: &str) {
    net.edit(node, |c| {
        c.api = Some(ApiConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..ApiConfig::default()
        })
    });
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn of(node: &Node) -> Api {
        let addr: SocketAddr = node.api_addr().expect("the node has an API");
        Api {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    /// Scrapes `/metrics`: 200, the Prometheus text content type, and a
    /// valid exposition.
    async fn scrape(&self) -> Exposition {
        let response = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("scrape sent");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], PROMETHEUS_TEXT);
        parse(&response.text().await.expect("scrape body"))
    }

    async fn json(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let body: Value = response.json().await.expect("a JSON answer");
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    /// Publishes `n` events; returns the receipts.
    async fn publish(&self, n: usize) -> Vec<Value> {
        let events: Vec<Value> = (0..n)
            .map(|i| json!({"type": "donation.received", "data": {"i": i}}))
            .collect();
        let body = self
            .json(reqwest::Method::POST, "/v1/events", Some(json!(events)))
            .await;
        body["receipts"].as_array().expect("receipts").clone()
    }

    async fn wait_ready(&self) {
        wait_async("the API to be ready", WAIT, || async {
            match self.http.get(format!("{}/readyz", self.base)).send().await {
                Ok(r) if r.status() == StatusCode::OK => Ok(()),
                Ok(r) => Err(r.status().to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
    }
}

/// Waits until `check` holds on a fresh scrape of `api`.
async fn wait_metrics(api: &Api, what: &str, check: impl Fn(&Exposition) -> Result<(), String>) {
    wait_async(what, WAIT, || async { check(&api.scrape().await) }).await;
}

/// Every family a node serves, with its type.
const FAMILIES: &[(&str, &str)] = &[
    ("herald_events_proclaimed_total", "counter"),
    ("herald_events_received_total", "counter"),
    ("herald_verification_failures_total", "counter"),
    ("herald_commit_duration_seconds", "histogram"),
    ("herald_peer_connected", "gauge"),
    ("herald_peer_backlog_events", "gauge"),
    ("herald_replication_lag_events", "gauge"),
    ("herald_replication_lag_seconds", "gauge"),
    ("herald_feed_head_seq", "gauge"),
    ("herald_sagas", "gauge"),
    ("herald_log_last_arrival", "gauge"),
    ("herald_consumer_position", "gauge"),
    ("herald_consumer_pending_events", "gauge"),
    ("herald_peer_delivery_cursor", "gauge"),
    ("herald_outbox_backlog_rows", "gauge"),
    ("herald_outbox_relayed_rows_total", "counter"),
    ("herald_inbox_position", "gauge"),
    ("herald_inbox_backlog_events", "gauge"),
];

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

// ---------------------------------------------------------------------------
// Traffic through a three-node cluster.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_follow_traffic_through_a_three_node_cluster() {
    let net = Net::mesh(&["a", "b", "c"]);
    for node in ["a", "b", "c"] {
        with_api(&net, node);
    }
    let a = Node::start(&net.config("a")).await.expect("start a");
    let b = Node::start(&net.config("b")).await.expect("start b");
    let c = Node::start(&net.config("c")).await.expect("start c");
    b.on_command("ping.do", |_, cmd| Ok(json!({ "pong": cmd.input["n"] })));
    b.on_command("ping.undo", |_, _| Ok(json!({})));
    let (api_a, api_b, api_c) = (Api::of(&a), Api::of(&b), Api::of(&c));
    for api in [&api_a, &api_b, &api_c] {
        api.wait_ready().await;
    }

    // Counting starts once every node holds every feed's genesis, so the
    // traffic below is all that moves the counters.
    for api in [&api_a, &api_b, &api_c] {
        wait_metrics(api, "every feed on every node", |m| {
            let missing: Vec<&str> = ["a", "b", "c"]
                .into_iter()
                .filter(|feed| m.get("herald_feed_head_seq", &[("feed", feed)]).is_none())
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("missing {missing:?}"))
            }
        })
        .await;
    }

    // The format: every family, typed and documented, on every node.
    let before = [
        api_a.scrape().await,
        api_b.scrape().await,
        api_c.scrape().await,
    ];
    for scrape in &before {
        for (family, kind) in FAMILIES {
            let (found, help) = scrape
                .families
                .get(*family)
                .unwrap_or_else(|| panic!("no family {family}"));
            assert_eq!(found, kind, "{family}");
            assert!(help.len() > 20, "{family} is explained: {help:?}");
        }
        // Every check is listed, none failed between honest nodes.
        for check in ["signature", "author", "previous-hash", "checkpoint"] {
            assert_eq!(
                scrape.value("herald_verification_failures_total", &[("check", check)]),
                0.0
            );
        }
        assert_eq!(scrape.value("herald_sagas", &[("state", "completed")]), 0.0);
    }
    assert_eq!(
        before[0].value("herald_peer_connected", &[("peer", "b")]),
        1.0
    );

    // OpenMetrics for a scraper that asks for it.
    let open = api_a
        .http
        .get(format!("{}/metrics", api_a.base))
        .header("accept", "application/openmetrics-text;version=1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(
        open.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let open = open.text().await.unwrap();
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(open.contains("# TYPE herald_events_proclaimed counter\n"));
    assert!(open.contains("# UNIT herald_commit_duration_seconds seconds\n"));

    // Traffic: 20 events on a reach b and c.
    const N: usize = 20;
    let receipts = api_a.publish(N).await;
    assert_eq!(receipts.len(), N);
    let head = receipts[N - 1]["seq"].as_u64().unwrap();
    for api in [&api_b, &api_c] {
        wait_metrics(api, "a's head on its peers", |m| {
            match m.get("herald_feed_head_seq", &[("feed", "a")]) {
                Some(seq) if seq == head as f64 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    let after_a = api_a.scrape().await;
    let proclaimed = |m: &Exposition| m.value("herald_events_proclaimed_total", &[]);
    assert_eq!(
        proclaimed(&after_a) - proclaimed(&before[0]),
        N as f64,
        "proclaimed on the author"
    );
    for (name, api, then) in [("b", &api_b, &before[1]), ("c", &api_c, &before[2])] {
        let now = api.scrape().await;
        // Each event is applied once, whichever peer it came from.
        assert_eq!(
            now.sum("herald_events_received_total") - then.sum("herald_events_received_total"),
            N as f64,
            "received on {name}"
        );
        assert_eq!(
            proclaimed(&now),
            proclaimed(then),
            "{name} proclaimed nothing"
        );
        assert!(
            now.value("herald_commit_duration_seconds_count", &[])
                > then.value("herald_commit_duration_seconds_count", &[]),
            "{name} timed its ingest commits"
        );
    }
    let commits = |m: &Exposition| m.value("herald_commit_duration_seconds_count", &[]);
    let grew = commits(&after_a) - commits(&before[0]);
    assert!(
        (1.0..=N as f64).contains(&grew),
        "one timed commit per batch on a: {grew}"
    );
    assert!(
        after_a.value("herald_commit_duration_seconds_sum", &[])
            > before[0].value("herald_commit_duration_seconds_sum", &[])
    );

    // Backlog and lag drain to 0 once the peers acknowledge.
    wait_metrics(&api_a, "a's peers to acknowledge everything", |m| {
        for peer in ["b", "c"] {
            let backlog = m.value("herald_peer_backlog_events", &[("peer", peer)]);
            let lag = m.get(
                "herald_replication_lag_events",
                &[("peer", peer), ("feed", "a")],
            );
            let seconds = m.get(
                "herald_replication_lag_seconds",
                &[("peer", peer), ("feed", "a")],
            );
            if (backlog, lag, seconds) != (0.0, Some(0.0), Some(0.0)) {
                return Err(format!("{peer}: {backlog} {lag:?} {seconds:?}"));
            }
        }
        Ok(())
    })
    .await;

    // c goes down: what a publishes meanwhile is c's lag, in events and
    // in seconds; b still keeps up.
    c.shutdown().await;
    wait_metrics(&api_a, "a to see c gone", |m| {
        match m.value("herald_peer_connected", &[("peer", "c")]) {
            0.0 => Ok(()),
            v => Err(v.to_string()),
        }
    })
    .await;
    const M: usize = 5;
    api_a.publish(M).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    wait_metrics(&api_a, "b to catch up while c lags", |m| {
        let b_lag = m.value(
            "herald_replication_lag_events",
            &[("peer", "b"), ("feed", "a")],
        );
        let c_lag = m.value(
            "herald_replication_lag_events",
            &[("peer", "c"), ("feed", "a")],
        );
        let c_seconds = m.value(
            "herald_replication_lag_seconds",
            &[("peer", "c"), ("feed", "a")],
        );
        if b_lag == 0.0 && c_lag == M as f64 && (0.02..60.0).contains(&c_seconds) {
            Ok(())
        } else {
            Err(format!("b {b_lag}, c {c_lag} ({c_seconds} s)"))
        }
    })
    .await;

    // c back: its lag drains.
    let c = Node::start(&net.config("c")).await.expect("restart c");
    wait_metrics(&api_a, "c to catch up after its restart", |m| {
        let connected = m.value("herald_peer_connected", &[("peer", "c")]);
        let lag = m.value(
            "herald_replication_lag_events",
            &[("peer", "c"), ("feed", "a")],
        );
        let backlog = m.value("herald_peer_backlog_events", &[("peer", "c")]);
        if (connected, lag, backlog) == (1.0, 0.0, 0.0) {
            Ok(())
        } else {
            Err(format!(
                "connected {connected}, lag {lag}, backlog {backlog}"
            ))
        }
    })
    .await;
    // Persisted delivery cursors follow (at most every 500 ms).
    wait_metrics(&api_a, "a's delivery cursor for c", |m| {
        match m.get(
            "herald_peer_delivery_cursor",
            &[("peer", "c"), ("feed", "a")],
        ) {
            Some(v) if v == (head + M as u64) as f64 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // A saga runs to completion: counted by state.
    let started = api_a
        .json(
            reqwest::Method::POST,
            "/v1/sagas",
            Some(json!({"definition": PING_SAGA, "input": {"n": 1}})),
        )
        .await;
    let id = started["saga_id"].as_str().expect("saga id").to_string();
    wait_async("the saga to complete", WAIT, || async {
        let saga = api_a
            .json(reqwest::Method::GET, &format!("/v1/sagas/{id}"), None)
            .await;
        match saga["status"].as_str() {
            Some("completed") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let m = api_a.scrape().await;
    assert_eq!(m.value("herald_sagas", &[("state", "completed")]), 1.0);
    assert_eq!(m.value("herald_sagas", &[("state", "in_progress")]), 0.0);
    assert_eq!(m.value("herald_sagas", &[("state", "failed")]), 0.0);

    // A durable consumer acknowledges: its position follows.
    api_a
        .json(
            reqwest::Method::PUT,
            "/v1/consumers/reports",
            Some(json!({"types": ["donation.*"], "from": "start"})),
        )
        .await;
    let pulled = api_a
        .json(
            reqwest::Method::GET,
            "/v1/consumers/reports/events?max=3",
            None,
        )
        .await;
    let position = pulled["next_after"].as_u64().expect("next_after");
    let m = api_a.scrape().await;
    assert_eq!(
        m.value("herald_consumer_position", &[("consumer", "api.reports")]),
        0.0,
        "nothing acknowledged yet"
    );
    api_a
        .json(
            reqwest::Method::POST,
            "/v1/consumers/reports/ack",
            Some(json!({ "position": position })),
        )
        .await;
    let m = api_a.scrape().await;
    assert_eq!(
        m.value("herald_consumer_position", &[("consumer", "api.reports")]),
        position as f64
    );
    let last = m.value("herald_log_last_arrival", &[]);
    assert!(last >= position as f64);
    assert_eq!(
        m.value(
            "herald_consumer_pending_events",
            &[("consumer", "api.reports")]
        ),
        last - position as f64
    );

    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

// ---------------------------------------------------------------------------
// An insider peer: acknowledgements that end a session, then a forgery.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_persist_however_a_session_ends_and_forgeries_count_by_check() {
    let net = Net::with_peers(&["node-a", "node-b", "mallory"], |me| match me {
        "node-a" => vec!["node-b".into(), "mallory".into()],
        "node-b" => vec!["node-a".into()],
        _ => vec!["node-a".into()],
    });
    with_api(&net, "node-a");
    let a = Node::start(&net.config("node-a")).await.expect("start a");
    let b = Node::start(&net.config("node-b")).await.expect("start b");
    let api = Api::of(&a);
    let head = a
        .proclaim("own.news", b"{}", vec![])
        .await
        .expect("proclaim");

    // mallory acknowledges node-a's feed and ends its stream at once, well
    // within the persist interval: node-a's inbound half ends first, and
    // its outbound half (which persisted acknowledgements) is aborted.
    let mut m = Attack::open(&net, "mallory", "node-a").await;
    m.send(&PeerMessage::Ack {
        heads: vec![FeedPosition {
            feed: "node-a".into(),
            seq: head.seq,
            hash: head.hash,
        }],
    })
    .await;
    m.send.finish().expect("end the stream");
    wait_async(
        "mallory's acknowledgement to be persisted",
        WAIT,
        || async {
            let cursors = a.log().peer_cursors().map_err(|e| e.to_string())?;
            match cursors
                .iter()
                .find(|c| c.peer == "mallory" && c.feed == "node-a")
            {
                Some(c) if c.acked_seq == head.seq => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let scrape = api.scrape().await;
    assert_eq!(
        scrape.value(
            "herald_replication_lag_events",
            &[("peer", "mallory"), ("feed", "node-a")]
        ),
        0.0
    );
    assert_eq!(
        scrape.value(
            "herald_peer_delivery_cursor",
            &[("peer", "mallory"), ("feed", "node-a")]
        ),
        head.seq as f64
    );
    let failures_before: BTreeMap<String, f64> = scrape
        .samples
        .iter()
        .filter(|s| s.name == "herald_verification_failures_total")
        .map(|s| (s.labels["check"].clone(), s.value))
        .collect();

    // mallory forges events of node-a's own feed beyond its head: refused
    // by the author check, counted there and nowhere else.
    let mut forger = Forger::new(&net, "node-a", "mallory");
    let forged = forger.seal(head.seq as u8 + 2, "forged.news");
    let beyond: Vec<&[u8]> = forged
        .iter()
        .filter(|e| e.header().seq > head.seq)
        .map(|e| e.bytes())
        .collect();
    let mut m = Attack::open(&net, "mallory", "node-a").await;
    m.send(&events_frame(&beyond)).await;
    assert_eq!(m.closed_with().await, close::VERIFICATION_FAILED as u64);
    let scrape = api.scrape().await;
    for (check, before) in &failures_before {
        let now = scrape.value("herald_verification_failures_total", &[("check", check)]);
        let expected = before + if check == "author" { 1.0 } else { 0.0 };
        assert_eq!(now, expected, "failures of the {check} check");
    }
    a.shutdown().await;
    b.shutdown().await;
}
