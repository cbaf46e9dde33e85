//! `herald demo`, the HTTP API: what a service in any language does. Two
//! nodes run as processes; a client speaks only HTTP and JSON to one of
//! them: a batch published as NDJSON, read back by id, followed live over
//! Server-Sent Events, consumed by a durable consumer that acknowledges, a
//! query answered by the other node, the metrics and the console page.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::CliError;
use crate::config::{ApiConfig, NodeConfig};

/// The two services of this part: `desk` has the API.
const SERVICES: [&str; 2] = ["desk", "treasury"];
/// Longest the demo waits for the API, a stream or replication.
const WAIT: Duration = Duration::from_secs(30);
/// Each request's own limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs this part in `dir/api`; returns whether every expectation held.
pub fn run_api(dir: &Path) -> Result<bool, CliError> {
    let dir = dir.join("api");
    let (configs, api) = provision(&dir)?;
    let mut nodes = Vec::new();
    for (service, path) in SERVICES.iter().zip(&configs) {
        nodes.push((*service, super::demo_live::spawn_node(path, &dir, service)?));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(drive(&format!("http://{api}")));
    for (service, child) in nodes.iter_mut() {
        super::demo_live::stop_gracefully(service, child);
    }
    outcome
}

fn expect(condition: bool, what: &str) -> bool {
    println!("   [{}] {what}", if condition { "ok" } else { "FAILED" });
    condition
}

/// Two nodes on free loopback ports, `desk` with its API on another.
fn provision(dir: &Path) -> Result<(Vec<PathBuf>, SocketAddr), CliError> {
    let names: Vec<String> = SERVICES.iter().map(|s| s.to_string()).collect();
    crate::config::init_cluster(dir, &names, 7400, 365, true)?;
    let ports = [free_udp()?, free_udp()?];
    let api = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut paths = Vec::new();
    for (i, service) in SERVICES.iter().enumerate() {
        let path = dir.join(format!("{service}.toml"));
        let mut config = NodeConfig::load(&path)?;
        config.listen = ports[i];
        for peer in &mut config.peers {
            peer.address = ports[1 - i];
        }
        if i == 0 {
            config.api = Some(ApiConfig {
                listen: api,
                ..ApiConfig::default()
            });
        }
        std::fs::write(&path, config.to_toml())?;
        paths.push(path);
    }
    Ok((paths, api))
}

fn free_udp() -> std::io::Result<SocketAddr> {
    std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()
}

/// An HTTP call's answer: status and JSON body.
async fn call(request: reqwest::RequestBuilder) -> Result<(u16, Value), CliError> {
    let response = request.timeout(REQUEST_TIMEOUT).send().await?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)?
    };
    Ok((status, body))
}

async fn drive(base: &str) -> Result<bool, CliError> {
    let http = reqwest::Client::new();
    let mut ok = true;
    wait_until(WAIT, || async {
        let ready = http.get(format!("{base}/readyz")).send().await;
        Ok(ready.is_ok_and(|r| r.status().is_success()))
    })
    .await?;

    let donations = [
        json!({"type": "donation.received", "data": {"donor": "D-1001", "cents": 2500}}),
        json!({"type": "donation.received", "data": {"donor": "D-1002", "cents": 10000}}),
        json!({"type": "donation.refunded", "data": {"donor": "D-1001", "cents": 2500}}),
    ];
    let ndjson: String = donations.iter().map(|d| format!("{d}\n")).collect();
    println!("   POST /v1/events (3 events as NDJSON)");
    let (status, body) = call(
        http.post(format!("{base}/v1/events"))
            .header("content-type", "application/x-ndjson")
            .body(ndjson),
    )
    .await?;
    let receipts = body["receipts"].as_array().cloned().unwrap_or_default();
    for r in &receipts {
        println!("     receipt {}/{} id {}", r["feed"], r["seq"], r["id"]);
    }
    ok &= expect(
        status == 200 && receipts.len() == 3,
        "three receipts, answered once the events were durable",
    );

    if let Some(id) = receipts.first().and_then(|r| r["id"].as_str()) {
        let (status, body) = call(http.get(format!("{base}/v1/events/{id}"))).await?;
        // Every copy this node holds (one, unless the author forked).
        let event = &body["events"][0];
        println!(
            "   GET /v1/events/{id}: {} {} signature {}",
            event["type"], event["data"], event["signature"]
        );
        ok &= expect(
            status == 200
                && event["data"]["donor"] == "D-1001"
                && event["signature"]["status"] == "verified",
            "the event reads back by id, decrypted, its signature verified",
        );
    }

    let streamed = stream_donations(&http, base, 3).await?;
    for line in &streamed {
        println!("     SSE {line}");
    }
    ok &= expect(
        streamed.len() == 3,
        "a Server-Sent Events subscriber to donation.* got all three",
    );

    ok &= durable_consumer(&http, base).await?;

    let (_, answer) = call(http.post(format!("{base}/v1/queries")).json(&json!({
        "to": "treasury", "type": "herald.head", "data": {"feed": "desk"}
    })))
    .await?;
    println!(
        "   POST /v1/queries to treasury: {} signed {} {}",
        answer["status"], answer["signed"], answer["data"]
    );
    ok &= expect(
        answer["status"] == "success" && answer["signed"] == true,
        "treasury answered a query about desk's feed, signed",
    );

    let (status, peers) = call(http.get(format!("{base}/v1/peers"))).await?;
    let treasury = &peers["peers"][0];
    println!(
        "   GET /v1/peers: {} connected {} backlog {}",
        treasury["name"], treasury["connected"], treasury["backlog"]
    );
    ok &= expect(
        status == 200 && treasury["connected"] == true,
        "the peer is listed and connected",
    );

    let metrics = http
        .get(format!("{base}/metrics"))
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await?
        .text()
        .await?;
    let proclaimed = metrics
        .lines()
        .find(|l| l.starts_with("herald_events_proclaimed_total"))
        .unwrap_or("herald_events_proclaimed_total (missing)");
    println!("   GET /metrics: {proclaimed}");
    ok &= expect(
        proclaimed
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse::<f64>().ok())
            .is_some_and(|n| n >= 3.0),
        "Prometheus metrics count the events proclaimed",
    );

    let console = http
        .get(format!("{base}/"))
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await?;
    let csp = console
        .headers()
        .get("content-security-policy")
        .is_some_and(|v| v.to_str().is_ok_and(|v| v.contains("script-src 'self'")));
    let page = console.text().await?;
    ok &= expect(
        page.contains("console.js") && csp,
        "the console page is served at / with a strict content security policy",
    );
    Ok(ok)
}

/// Opens `GET /v1/stream?type=donation.*&from=start` and returns the first
/// `n` events' `data:` lines.
async fn stream_donations(
    http: &reqwest::Client,
    base: &str,
    n: usize,
) -> Result<Vec<String>, CliError> {
    println!("   GET /v1/stream?type=donation.*&from=start (Server-Sent Events)");
    let response = http
        .get(format!("{base}/v1/stream?type=donation.*&from=start"))
        .timeout(WAIT)
        .send()
        .await?;
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let deadline = Instant::now() + WAIT;
    let data_lines = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(short)
            .collect()
    };
    while data_lines(&text).len() < n && Instant::now() < deadline {
        match tokio::time::timeout_at(deadline.into(), body.next()).await {
            Ok(Some(chunk)) => text.push_str(&String::from_utf8_lossy(&chunk?)),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(data_lines(&text).into_iter().take(n).collect())
}

/// The first 110 characters of an event's JSON.
fn short(line: &str) -> String {
    match line.char_indices().nth(110) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line.to_string(),
    }
}

/// A durable consumer: pull two, acknowledge them, and the next pull
/// starts after them.
async fn durable_consumer(http: &reqwest::Client, base: &str) -> Result<bool, CliError> {
    let consumer = format!("{base}/v1/consumers/reports");
    let (status, _) = call(
        http.put(&consumer)
            .json(&json!({"types": ["donation.*"], "from": "start"})),
    )
    .await?;
    let (_, first) = call(http.get(format!("{consumer}/events?max=2"))).await?;
    let last = first["next_after"].as_u64().unwrap_or(0);
    let (_, acked) = call(
        http.post(format!("{consumer}/ack"))
            .json(&json!({"position": last})),
    )
    .await?;
    let (_, rest) = call(http.get(format!("{consumer}/events?max=10"))).await?;
    let types = |page: &Value| -> Vec<String> {
        page["events"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .map(|e| e["type"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    println!(
        "   durable consumer reports: pulled {:?}, acked {}, next pull {:?}",
        types(&first),
        acked["acked"],
        types(&rest)
    );
    Ok(expect(
        status == 201
            && types(&first).len() == 2
            && acked["acked"].as_u64() == Some(last)
            && types(&rest) == ["donation.refunded"],
        "after acknowledging two events the consumer resumes at the third",
    ))
}

/// Polls `check` until it holds or `timeout` passes.
async fn wait_until<F, Fut>(timeout: Duration, check: F) -> Result<(), CliError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<bool, CliError>>,
{
    let deadline = Instant::now() + timeout;
    while !check().await? {
        if Instant::now() > deadline {
            return Err(format!("the HTTP API did not become ready within {timeout:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
