//! The saga benchmark: three-step sagas across the three-node loopback
//! cluster (real QUIC, mutual TLS, fsync), each step on a different node.
//! A saga's latency runs from the call to `start_saga` until the
//! orchestrator's `herald.saga.completed` event is durable.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::cluster::{CLUSTER_NODES, start_cluster};
use super::{BenchError, percentile};
use crate::node::Node;
use crate::saga::{SagaDefinition, StepDefinition};
use crate::store::StartFrom;

/// Sagas in flight at once.
pub const SAGAS_IN_FLIGHT: usize = 64;
/// Longest the whole saga run may take.
const SAGA_RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// The saga section of the report.
#[derive(Debug, Clone, Serialize)]
pub struct SagaReport {
    pub sagas: u64,
    pub steps_per_saga: usize,
    pub in_flight: usize,
    /// Completed sagas per second.
    pub sagas_per_s: f64,
    /// Start call to completed, in microseconds.
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    /// Signed events per completed saga, across the cluster.
    pub events_per_saga: f64,
}

/// Runs `sagas` three-step sagas orchestrated by the first node.
pub fn run_sagas(work_dir: &Path, sagas: u64) -> Result<SagaReport, BenchError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    runtime.block_on(async {
        let nodes: Vec<Arc<Node>> = start_cluster(&work_dir.join("sagas"))
            .await?
            .into_iter()
            .map(Arc::new)
            .collect();
        let outcome = tokio::time::timeout(SAGA_RUN_TIMEOUT, drive(&nodes, sagas)).await;
        let events_before_shutdown = count_events(&nodes)?;
        for node in nodes {
            if let Ok(node) = Arc::try_unwrap(node) {
                node.shutdown().await;
            }
        }
        let (elapsed, mut latencies) =
            outcome.map_err(|_| BenchError::Setup("sagas did not complete in time".into()))??;
        latencies.sort_unstable();
        Ok(SagaReport {
            sagas,
            steps_per_saga: CLUSTER_NODES.len(),
            in_flight: SAGAS_IN_FLIGHT,
            sagas_per_s: sagas as f64 / elapsed.as_secs_f64(),
            latency_us_p50: percentile(&latencies, 0.50),
            latency_us_p99: percentile(&latencies, 0.99),
            events_per_saga: events_before_shutdown as f64 / sagas as f64,
        })
    })
}

/// The benchmark saga: step i runs on node i.
fn definition() -> Result<SagaDefinition, BenchError> {
    let mut builder = SagaDefinition::builder("BenchThreeStep")
        .deadline(Duration::from_secs(120))
        .compensation_attempts(3);
    for (i, service) in CLUSTER_NODES.iter().enumerate() {
        builder = builder.step(StepDefinition::new(
            format!("step{i}"),
            *service,
            format!("bench.step{i}"),
            format!("bench.undo{i}"),
            Duration::from_secs(60),
        ));
    }
    builder
        .build()
        .map_err(|e| BenchError::Setup(e.to_string()))
}

/// Starts every saga (at most [`SAGAS_IN_FLIGHT`] at once) and waits for
/// each to complete; returns the wall time and each saga's latency.
async fn drive(nodes: &[Arc<Node>], sagas: u64) -> Result<(Duration, Vec<u64>), BenchError> {
    for (i, node) in nodes.iter().enumerate() {
        // Each step records its effect in the participant's state, in the
        // reply's transaction, like a real service would.
        node.on_command(&format!("bench.step{i}"), |tx, cmd| {
            tx.put("bench", &cmd.saga_id.to_string(), b"done")
                .map_err(|e| e.to_string())?;
            Ok(serde_json::Value::Null)
        });
    }
    let orchestrator = &nodes[0];
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Uuid>();
    orchestrator.subscribe(
        "bench.saga-completions",
        "herald.saga.completed",
        StartFrom::Now,
        move |event| {
            if let Some(id) = crate::saga::events::saga_id_of(&event.header) {
                let _ = done_tx.send(id);
            }
            Ok(())
        },
    )?;
    let definition = definition()?;
    let mut starting = tokio::task::JoinSet::new();
    let mut started: HashMap<Uuid, Instant> = HashMap::new();
    let mut early: HashMap<Uuid, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(sagas as usize);
    let start = Instant::now();
    let mut launched = 0u64;
    let mut in_flight = 0usize;
    while latencies.len() < sagas as usize {
        // Starts run concurrently, so they share the orchestrator's commits
        // as a busy service's would.
        while launched < sagas && in_flight < SAGAS_IN_FLIGHT {
            let orchestrator = Arc::clone(orchestrator);
            let definition = definition.clone();
            let n = launched;
            starting.spawn(async move {
                let t0 = Instant::now();
                let id = orchestrator
                    .start_saga(definition, serde_json::json!({ "n": n }))
                    .await;
                (id, t0)
            });
            launched += 1;
            in_flight += 1;
        }
        tokio::select! {
            Some(joined) = starting.join_next(), if !starting.is_empty() => {
                let (id, t0) = joined.map_err(|e| BenchError::Setup(e.to_string()))?;
                let id = id.map_err(|e| BenchError::Setup(format!("start saga: {e}")))?;
                // A completion seen before its start returned is matched here.
                match early.remove(&id) {
                    Some(done_at) => {
                        latencies.push(done_at.duration_since(t0).as_micros() as u64);
                        in_flight -= 1;
                    }
                    None => {
                        started.insert(id, t0);
                    }
                }
            }
            done = done_rx.recv() => {
                let id = done.ok_or_else(|| BenchError::Setup("completion feed ended".into()))?;
                match started.remove(&id) {
                    Some(t0) => {
                        latencies.push(t0.elapsed().as_micros() as u64);
                        in_flight -= 1;
                    }
                    None => {
                        early.insert(id, Instant::now());
                    }
                }
            }
        }
    }
    Ok((start.elapsed(), latencies))
}

/// Events across the cluster that are saga events.
fn count_events(nodes: &[Arc<Node>]) -> Result<u64, BenchError> {
    let mut total = 0;
    for node in nodes {
        if let Some(own) = node
            .log()
            .heads()?
            .into_iter()
            .find(|h| h.feed == node.service())
        {
            // Sequence numbers start at 0 (genesis), so the head is the
            // number of events after it.
            total += own.seq;
        }
    }
    Ok(total)
}
