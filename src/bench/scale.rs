//! `herald bench --scale N`: is herald flat at scale? A log of N events:
//! how long the node takes to open it (start-up reads feed heads, never
//! replays), how verification's memory grows while it streams the export,
//! and how fast a fresh peer catches up on all of it over QUIC.

use std::net::UdpSocket;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::BenchError;
use crate::audit::export::export_store;
use crate::audit::verify::{AuditOptions, audit_export};
use crate::clock;
use crate::config::NodeConfig;
use crate::core::verify::Draft;
use crate::node::Node;
use crate::store::{Log, LogOptions, Pending};

/// Events per submitted batch while filling the log.
const FILL_BATCH_EVENTS: usize = 1024;
/// Batches in flight while filling the log.
const FILL_BATCHES_IN_FLIGHT: usize = 4;
/// Longest the catch-up may take before the benchmark gives up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);

/// What `--scale` measured.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub events: u64,
    /// Filling the log (durable proclaim, large batches).
    pub fill_events_per_s: f64,
    /// Opening the store of N events (`Log::open`): start-up cost.
    pub reopen_ms: f64,
    pub store_bytes: u64,
    /// Offline verification of the export of N events.
    pub verify_events_per_s: f64,
    /// Resident memory growth while verifying (streaming: flat in N).
    pub verify_rss_growth_mb: f64,
    /// A fresh peer receiving, verifying and storing all N over QUIC.
    pub catch_up_events_per_s: f64,
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn configs(work_dir: &Path) -> Result<(NodeConfig, NodeConfig), BenchError> {
    let dir = work_dir.join("scale");
    let names = vec!["scale-a".to_string(), "scale-b".to_string()];
    crate::config::init_cluster(&dir, &names, 7400, super::BENCH_CERT_DAYS, true)?;
    let port = || {
        UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map_err(|e| BenchError::Setup(format!("no free port: {e}")))
    };
    let (pa, pb) = (port()?, port()?);
    let load = |name: &str| {
        NodeConfig::load(&dir.join(format!("{name}.toml")))
            .map_err(|e| BenchError::Setup(e.to_string()))
    };
    let (mut a, mut b) = (load("scale-a")?, load("scale-b")?);
    a.listen = pa;
    b.listen = pb;
    a.peers[0].address = pb;
    b.peers[0].address = pa;
    Ok((a, b))
}

fn fill(config: &NodeConfig, events: u64, payload_bytes: usize) -> Result<f64, BenchError> {
    let log = Log::open_with(LogOptions::from_config(config)?)?;
    let channel = log.channel(None)?;
    let draft = Draft::new("bench.scale", 1, Vec::new(), vec![0x5a; payload_bytes])?;
    let mut in_flight: std::collections::VecDeque<Pending> = Default::default();
    let mut remaining = events;
    let start = Instant::now();
    while remaining > 0 || !in_flight.is_empty() {
        while remaining > 0 && in_flight.len() < FILL_BATCHES_IN_FLIGHT {
            let n = remaining.min(FILL_BATCH_EVENTS as u64);
            let drafts = (0..n)
                .map(|_| (draft.clone(), Arc::clone(&channel)))
                .collect();
            in_flight.push_back(log.submit(drafts)?);
            remaining -= n;
        }
        if let Some(p) = in_flight.pop_front() {
            p.wait()?;
        }
    }
    let rate = events as f64 / start.elapsed().as_secs_f64().max(1e-9);
    log.close();
    Ok(rate)
}

/// Runs the scale measurements with a log of `events` events.
pub fn run_scale(
    work_dir: &Path,
    events: u64,
    payload_bytes: usize,
) -> Result<ScaleReport, BenchError> {
    let (a, b) = configs(work_dir)?;
    let fill_events_per_s = fill(&a, events, payload_bytes)?;

    let start = Instant::now();
    let log = Log::open_with(LogOptions::from_config(&a)?)?;
    let reopen_ms = start.elapsed().as_secs_f64() * 1000.0;
    log.close();
    let store_bytes = std::fs::read_dir(&a.data_dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);

    let export = work_dir.join("scale.hrld");
    {
        let (_, identity) = a.load_identity(clock::now_us())?;
        let conn = crate::store::open_read_only(&a.data_dir)?;
        export_store(
            &conn,
            &a.service,
            &identity.signing_key,
            clock::now_us(),
            &export,
        )?;
    }
    let (trust, _) = a.load_identity(clock::now_us())?;
    let before = rss_mb();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0.0f64;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss_mb());
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let start = Instant::now();
    let report = audit_export(
        &export,
        &AuditOptions {
            trust,
            channel_keys: Vec::new(),
            progress: false,
        },
    )?;
    let verify_events_per_s = report.events as f64 / start.elapsed().as_secs_f64().max(1e-9);
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap_or(before);
    if !report.valid {
        return Err(BenchError::Setup("the scale export did not verify".into()));
    }

    let catch_up_events_per_s = catch_up(&a, &b, events)?;
    Ok(ScaleReport {
        events,
        fill_events_per_s,
        reopen_ms,
        store_bytes,
        verify_events_per_s,
        verify_rss_growth_mb: (peak - before).max(0.0),
        catch_up_events_per_s,
    })
}

/// Starts the full node and a fresh one; times until the fresh one holds
/// every event of the full one's feed.
fn catch_up(a: &NodeConfig, b: &NodeConfig, events: u64) -> Result<f64, BenchError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    runtime.block_on(async {
        let full = Node::start(a)
            .await
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        let start = Instant::now();
        let fresh = Node::start(b)
            .await
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        loop {
            let head = fresh
                .log()
                .heads()?
                .into_iter()
                .find(|h| h.feed == a.service)
                .map(|h| h.seq);
            if head == Some(events) {
                break;
            }
            if start.elapsed() > CATCH_UP_TIMEOUT {
                return Err(BenchError::Setup("catch-up did not finish in time".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rate = events as f64 / start.elapsed().as_secs_f64().max(1e-9);
        fresh.shutdown().await;
        full.shutdown().await;
        Ok(rate)
    })
}
