//! The HTTP API benchmark: one node with its API on loopback, in this
//! process, measured against the same node's direct (in-process) proclaim in
//! the same run, so the ratios say what HTTP and JSON cost.
//!
//! * Batch publish: `POST /v1/events` with JSON arrays of
//!   [`BATCH_EVENTS`] events, [`REQUESTS_IN_FLIGHT`] requests at once,
//!   against the node's own durable proclaim rate (`submit`, 16 batches of
//!   256 in flight, as the proclaim line of `herald bench`), measured in
//!   two halves, one before the HTTP run and one after it.
//! * Server-Sent Events: one `GET /v1/stream?from=start` reading every
//!   event the run wrote (decrypted, as a subscriber gets them).
//! * Single-event latency: one event at a time at [`PACED_RATE_PER_S`],
//!   call to durable receipt, over HTTP and directly, interleaved.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;

use super::{BenchError, percentile, rate};
use crate::config::{ApiConfig, NodeConfig};
use crate::core::verify::Draft;
use crate::node::Node;
use crate::store::{Log, Pending, Proclamation};

/// Events per request in the batch-publish run.
pub const BATCH_EVENTS: usize = 1024;
/// Requests in flight in the batch-publish run. Each request spends a few
/// milliseconds outside the writer (body, decoding, receipts, the
/// client), so an HTTP client keeps more events in flight
/// than an in-process caller to keep the writer as busy; the direct run
/// keeps `herald bench`'s usual 16 batches of 256 in flight.
pub const REQUESTS_IN_FLIGHT: usize = 32;
/// Pace of each path in the single-event latency run, events per second.
pub const PACED_RATE_PER_S: u64 = 250;
/// Events per path in the single-event latency run (at most the batch
/// runs' event count).
pub const PACED_EVENTS: u64 = 1_000;
/// Longest any one HTTP request of the benchmark may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Event type the benchmark publishes.
const EVENT_TYPE: &str = "bench.http";

/// The HTTP section of the report.
#[derive(Debug, Clone, Serialize)]
pub struct HttpReport {
    /// Events in each batch-publish run.
    pub events: u64,
    pub payload_bytes: usize,
    /// The node's own durable proclaim rate (in process, same batches).
    pub direct_events_per_s: f64,
    /// `POST /v1/events` with JSON arrays of `batch_events`.
    pub http_batch_events_per_s: f64,
    pub batch_events: usize,
    pub requests_in_flight: usize,
    /// http_batch_events_per_s / direct_events_per_s (target ≥ 0.8).
    pub http_batch_fraction_of_direct: f64,
    /// CPU time per event of each batch run, this process's every thread
    /// (the HTTP client's included: it runs here too), and its split.
    pub direct_cpu_us_per_event: f64,
    pub http_batch_cpu_us_per_event: f64,
    pub direct_cpu: super::cpu::CpuSplit,
    pub http_batch_cpu: super::cpu::CpuSplit,
    /// Events delivered by one SSE stream read from the start.
    pub sse_events: u64,
    /// Events per second one SSE subscriber receives (target ≥ 100,000).
    pub sse_events_per_s: f64,
    /// Single events, one at a time at `paced_rate_per_s`.
    pub paced_rate_per_s: u64,
    pub paced_events: u64,
    pub direct_single_us_p50: u64,
    pub direct_single_us_p99: u64,
    pub http_single_us_p50: u64,
    pub http_single_us_p99: u64,
    /// http p99 − direct p99 in microseconds (target ≤ 2,000).
    pub http_single_p99_overhead_us: i64,
}

/// Runs the HTTP section with `events` events per batch run.
pub fn run_http(
    work_dir: &Path,
    events: u64,
    payload_bytes: usize,
) -> Result<HttpReport, BenchError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Setup(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(run_http_async(
        &work_dir.join("http"),
        events,
        payload_bytes,
    ))
}

async fn run_http_async(
    dir: &Path,
    events: u64,
    payload_bytes: usize,
) -> Result<HttpReport, BenchError> {
    let node = start_node(dir).await?;
    let Some(api) = node.api_addr() else {
        return Err(BenchError::Setup(
            "the benchmark node has no HTTP API".into(),
        ));
    };
    let base = format!("http://{api}");
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| BenchError::Setup(format!("cannot build the HTTP client: {e}")))?;
    let log = Arc::clone(node.log());
    // A JSON string of exactly `payload_bytes` bytes: the HTTP API stores
    // the JSON text, the direct run stores the same bytes.
    let payload = json_string_payload(payload_bytes);
    let draft = Draft::new(EVENT_TYPE, 1, Vec::new(), payload.clone().into_bytes())?;
    let channel = log.channel(None)?;

    // Direct, HTTP, direct (half the events in each direct run): the
    // direct rate is taken over both runs, so a machine that speeds up or
    // slows down during the section, and the store that grows under it,
    // weigh on both paths alike instead of on the one measured second.
    let direct_run = |n: u64| {
        let log = Arc::clone(&log);
        let (draft, channel) = (draft.clone(), Arc::clone(&channel));
        blocking(move || direct_batches(&log, &draft, &channel, n))
    };
    let (first_half, second_half) = (events / 2, events - events / 2);
    let start = super::cpu::Snapshot::take();
    let first_rate = direct_run(first_half).await??;
    let http_start = super::cpu::Snapshot::take();
    let http_batch_events_per_s = http_batches(&client, &base, &payload, events).await?;
    let http_end = super::cpu::Snapshot::take();
    let second_rate = direct_run(second_half).await??;
    let end = super::cpu::Snapshot::take();
    let direct_seconds =
        first_half as f64 / first_rate.max(1.0) + second_half as f64 / second_rate.max(1.0);
    let direct_events_per_s = events as f64 / direct_seconds.max(f64::MIN_POSITIVE);
    let direct_cpu = http_start.since(&start).plus(&end.since(&http_end));
    let http_batch_cpu = http_end.since(&http_start);
    // Every event of every feed, from each genesis (seq 0) on.
    let sse_events = log.heads()?.iter().map(|h| h.seq + 1).sum::<u64>();
    let sse_events_per_s = sse_read(&client, &base, sse_events).await?;
    let paced_events = PACED_EVENTS.min(events);
    let (direct_single, http_single) = single_events(
        &client,
        &base,
        &payload,
        &log,
        &draft,
        &channel,
        paced_events,
    )
    .await?;
    node.shutdown().await;
    Ok(HttpReport {
        events,
        payload_bytes,
        direct_events_per_s,
        http_batch_events_per_s,
        batch_events: BATCH_EVENTS,
        requests_in_flight: REQUESTS_IN_FLIGHT,
        http_batch_fraction_of_direct: http_batch_events_per_s / direct_events_per_s.max(1.0),
        direct_cpu_us_per_event: direct_cpu.cpu_s * 1e6 / events as f64,
        http_batch_cpu_us_per_event: http_batch_cpu.cpu_s * 1e6 / events as f64,
        direct_cpu,
        http_batch_cpu,
        sse_events,
        sse_events_per_s,
        paced_rate_per_s: PACED_RATE_PER_S,
        paced_events,
        direct_single_us_p50: percentile(&direct_single, 0.50),
        direct_single_us_p99: percentile(&direct_single, 0.99),
        http_single_us_p50: percentile(&http_single, 0.50),
        http_single_us_p99: percentile(&http_single, 0.99),
        http_single_p99_overhead_us: percentile(&http_single, 0.99) as i64
            - percentile(&direct_single, 0.99) as i64,
    })
}

/// One node with its API on a free loopback port.
async fn start_node(dir: &Path) -> Result<Node, BenchError> {
    let name = "bench-http".to_string();
    crate::config::init_cluster(
        dir,
        std::slice::from_ref(&name),
        7500,
        super::BENCH_CERT_DAYS,
        true,
    )?;
    let mut config = NodeConfig::load(&dir.join(format!("{name}.toml")))
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.api = Some(ApiConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ..ApiConfig::default()
    });
    Node::start(&config)
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BenchError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BenchError::Setup(format!("benchmark task failed: {e}")))
}

/// `"xxxx…"`: a JSON string `bytes` long (at least the two quotes).
fn json_string_payload(bytes: usize) -> String {
    format!("\"{}\"", "x".repeat(bytes.saturating_sub(2)))
}

fn drafts(
    draft: &Draft,
    channel: &Arc<crate::core::crypto::ChannelKey>,
    n: usize,
) -> Vec<Proclamation> {
    (0..n)
        .map(|_| (draft.clone(), Arc::clone(channel)))
        .collect()
}

/// The node's own durable proclaim rate, batched as `herald bench`'s
/// durable proclaim line is (16 batches of 256 in flight).
fn direct_batches(
    log: &Log,
    draft: &Draft,
    channel: &Arc<crate::core::crypto::ChannelKey>,
    events: u64,
) -> Result<f64, BenchError> {
    let mut in_flight: std::collections::VecDeque<Pending> = Default::default();
    let mut remaining = events;
    let start = Instant::now();
    while remaining > 0 || !in_flight.is_empty() {
        while remaining > 0 && in_flight.len() < super::BENCH_BATCHES_IN_FLIGHT {
            let n = remaining.min(super::BENCH_BATCH_EVENTS as u64) as usize;
            in_flight.push_back(log.submit(drafts(draft, channel, n))?);
            remaining -= n as u64;
        }
        if let Some(pending) = in_flight.pop_front() {
            pending.wait()?;
        }
    }
    Ok(rate(events as usize, start.elapsed()))
}

/// `POST /v1/events` with JSON arrays, `REQUESTS_IN_FLIGHT` at once.
async fn http_batches(
    client: &reqwest::Client,
    base: &str,
    payload: &str,
    events: u64,
) -> Result<f64, BenchError> {
    let url = format!("{base}/v1/events");
    let body_of = |n: usize| {
        let one = format!(r#"{{"type":"{EVENT_TYPE}","data":{payload}}}"#);
        format!("[{}]", vec![one; n].join(","))
    };
    let full = axum::body::Bytes::from(body_of(BATCH_EVENTS));
    let sizes: Vec<usize> = (0..events.div_ceil(BATCH_EVENTS as u64))
        .map(|i| (events - i * BATCH_EVENTS as u64).min(BATCH_EVENTS as u64) as usize)
        .collect();
    let start = Instant::now();
    let mut requests = futures_util::stream::iter(sizes.into_iter().map(|n| {
        let body = if n == BATCH_EVENTS {
            full.clone()
        } else {
            axum::body::Bytes::from(body_of(n))
        };
        let request = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        // The answer is read inside the request's own future, so every
        // request in flight makes progress while one is being read.
        async move {
            (
                n,
                expect_success(request.send().await, "POST /v1/events").await,
            )
        }
    }))
    .buffer_unordered(REQUESTS_IN_FLIGHT);
    let mut published = 0usize;
    while let Some((n, answered)) = requests.next().await {
        answered?;
        published += n;
    }
    Ok(rate(published, start.elapsed()))
}

/// Reads `events` events from one stream opened at the start.
async fn sse_read(client: &reqwest::Client, base: &str, events: u64) -> Result<f64, BenchError> {
    let start = Instant::now();
    let response = client
        .get(format!("{base}/v1/stream?from=start"))
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .map_err(|e| http_error("GET /v1/stream", e))?;
    if !response.status().is_success() {
        return Err(BenchError::Setup(format!(
            "GET /v1/stream answered {}",
            response.status()
        )));
    }
    let mut counter = SseDataCounter::default();
    let mut body = response.bytes_stream();
    while counter.events < events {
        match body.next().await {
            Some(chunk) => counter.feed(&chunk.map_err(|e| http_error("GET /v1/stream", e))?),
            None => {
                return Err(BenchError::Setup(format!(
                    "the SSE stream ended after {} of {events} events",
                    counter.events
                )));
            }
        }
    }
    Ok(rate(events as usize, start.elapsed()))
}

/// Counts SSE `data:` lines (one per event) across chunk boundaries.
#[derive(Default)]
struct SseDataCounter {
    events: u64,
    /// Bytes of the current line seen so far, up to the length of `data:`.
    line_start: Vec<u8>,
    /// The current line was already classified.
    decided: bool,
}

impl SseDataCounter {
    const DATA: &'static [u8] = b"data:";

    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.line_start.clear();
                self.decided = false;
            } else if !self.decided {
                self.line_start.push(b);
                if self.line_start.len() == Self::DATA.len() {
                    self.decided = true;
                    if self.line_start == Self::DATA {
                        self.events += 1;
                    }
                }
            }
        }
    }
}

/// Single events at `PACED_RATE_PER_S` for each path, the two paths
/// interleaved (direct, HTTP, direct, …) so both see the same machine: on a
/// shared machine, runs one after the other would compare two moments, not
/// two paths. Returns (direct, HTTP) latencies in microseconds, sorted.
async fn single_events(
    client: &reqwest::Client,
    base: &str,
    payload: &str,
    log: &Log,
    draft: &Draft,
    channel: &Arc<crate::core::crypto::ChannelKey>,
    events: u64,
) -> Result<(Vec<u64>, Vec<u64>), BenchError> {
    let url = format!("{base}/v1/events");
    let body = format!(r#"{{"type":"{EVENT_TYPE}","data":{payload}}}"#);
    let mut direct = Vec::with_capacity(events as usize);
    let mut http = Vec::with_capacity(events as usize);
    let interval = Duration::from_micros(1_000_000 / PACED_RATE_PER_S / 2);
    let start = tokio::time::Instant::now();
    for i in 0..2 * events as u32 {
        tokio::time::sleep_until(start + interval * i).await;
        let sent = Instant::now();
        if i % 2 == 0 {
            // The caller's thread waits, as a Rust service's would.
            tokio::task::block_in_place(|| log.submit(drafts(draft, channel, 1))?.wait())?;
            direct.push(sent.elapsed().as_micros() as u64);
        } else {
            let response = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            expect_success(response, "POST /v1/events").await?;
            http.push(sent.elapsed().as_micros() as u64);
        }
    }
    direct.sort_unstable();
    http.sort_unstable();
    Ok((direct, http))
}

/// Reads the whole answer (so the connection is reused) and checks it is 2xx.
async fn expect_success(
    response: Result<reqwest::Response, reqwest::Error>,
    what: &str,
) -> Result<(), BenchError> {
    let response = response.map_err(|e| http_error(what, e))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| http_error(what, e))?;
    if status.is_success() {
        return Ok(());
    }
    Err(BenchError::Setup(format!(
        "{what} answered {status}: {}",
        String::from_utf8_lossy(&body)
    )))
}

fn http_error(what: &str, e: reqwest::Error) -> BenchError {
    BenchError::Setup(format!("{what} failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sse_counter_counts_data_lines_split_anywhere() {
        let text = b"id: 0\n\nid: 1\ndata: {\"a\":1}\n\n: keep-alive\n\nid: 2\ndata: {}\n\nid: 3\nevent: x\ndata: {}\n\n";
        for split in 0..text.len() {
            let mut counter = SseDataCounter::default();
            counter.feed(&text[..split]);
            counter.feed(&text[split..]);
            assert_eq!(counter.events, 3, "split at {split}");
        }
    }

    #[test]
    fn the_payload_is_a_json_string_of_the_asked_size() {
        let payload = json_string_payload(256);
        assert_eq!(payload.len(), 256);
        assert!(serde_json::from_str::<String>(&payload).is_ok());
    }
}
