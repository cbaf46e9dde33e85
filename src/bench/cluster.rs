//! The cluster benchmark: three nodes on loopback (real QUIC, mutual TLS,
//! fsync), in this process. Throughput counts events per second until every
//! event is verified and durable on every node; latency is from the call to
//! proclaim until the last node has committed the event.

use std::collections::VecDeque;
use std::net::UdpSocket;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::netem::{Impairment, UdpProxy};
use super::{BENCH_CERT_DAYS, BenchError, percentile};
use crate::config::NodeConfig;
use crate::core::verify::Draft;
use crate::node::Node;
use crate::store::{Log, Pending};

/// Services of the benchmark cluster.
pub const CLUSTER_NODES: [&str; 3] = ["bench-a", "bench-b", "bench-c"];
/// Events per submitted batch.
const BATCH_EVENTS: usize = 256;
/// Batches in flight per publisher.
const BATCHES_IN_FLIGHT: usize = 8;
/// Events per batch in the paced (half-rate) run: a producer publishing at
/// a steady rate hands over what it has every few milliseconds, not 256
/// events at a time, and every event of a batch waits for the whole batch.
const PACED_BATCH_EVENTS: usize = 32;
/// Batches in flight in the paced run (the same events in flight as above).
const PACED_BATCHES_IN_FLIGHT: usize = 64;
/// Events a saturating publisher may have proclaimed that are not yet
/// durable on every node: it waits for replication beyond this, as an
/// async NATS JetStream publisher waits for its acknowledgements beyond
/// its window (`nats-jetstream.sh`: 4,000 messages, each acknowledged once
/// a quorum of R3 holds it). Without it the publisher runs ahead of its
/// peers without bound, and the run measures how fast they catch up on a
/// backlog read back from the store, not the rate the cluster sustains.
/// The paced run is not held back: it submits on schedule.
const PUBLISH_WINDOW_EVENTS: u64 = 4096;
/// Seed of the WAN profile's proxies (the pair's index is added).
const PROXY_SEED: u64 = 0x4845_5241_4c44;
/// Longest the benchmark waits for the cluster to converge.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);
/// Most runs of each saturating scenario `--cluster-runs` may ask for.
pub const CLUSTER_RUNS_MAX: u32 = 9;

/// One cluster scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterRun {
    /// `one-publisher` or `all-publish`.
    pub scenario: String,
    pub events: u64,
    /// Events per second until every event is durable on every node.
    pub events_per_s: f64,
    /// Proclaim call to durable on every node.
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    pub latency_us_p999: u64,
    /// events_per_s over the topology ceiling.
    pub fraction_of_topology_ceiling: f64,
    /// Where the three nodes' CPU time went, by thread role.
    pub cpu: super::cpu::CpuSplit,
    /// The rate of every run of this scenario, in the order run; the
    /// figures above are the median run's (the run itself when run once).
    pub runs_events_per_s: Vec<f64>,
}

/// The cluster section of the report.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    pub nodes: usize,
    /// The storage ceiling measured in the same run over the number of
    /// nodes (see [`topology_ceiling`]).
    pub topology_ceiling_per_s: f64,
    pub runs: Vec<ClusterRun>,
    /// A paced run at half the one-publisher rate: the latency a user sees
    /// when the cluster is not saturated.
    pub half_rate: ClusterRun,
    /// Peak resident memory of this process (all three nodes), in MB.
    pub peak_rss_mb_all_nodes: f64,
    /// The one-publisher scenario again over an impaired network
    /// (`--network wan`), if asked for.
    pub wan: Option<WanRun>,
}

/// The network profiles `herald bench --network` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Network {
    /// Loopback only.
    #[default]
    Loopback,
    /// Also through [`Impairment::WAN`]: 50 ms round trip, 1 % loss.
    Wan,
}

/// The one-publisher scenario through the WAN profile.
#[derive(Debug, Clone, Serialize)]
pub struct WanRun {
    /// Round trip the proxies add, in milliseconds.
    pub rtt_ms: u64,
    /// Datagrams each proxy drops, per direction.
    pub loss: f64,
    pub run: ClusterRun,
    /// `run.events_per_s` over the loopback one-publisher rate of the same
    /// run (the target is at least 0.5).
    pub fraction_of_loopback: f64,
}

/// Starts three nodes in `dir` on free loopback ports.
pub(super) async fn start_cluster(dir: &Path) -> Result<Vec<Node>, BenchError> {
    Ok(start_cluster_through(dir, None).await?.0)
}

/// Starts three nodes in `dir` on free loopback ports; with an
/// `impairment`, every pair's connection runs through a [`UdpProxy`]
/// impairing both directions with it (the dialling node is given the
/// proxy's address). The proxies run as long as they are held.
pub(super) async fn start_cluster_through(
    dir: &Path,
    impairment: Option<Impairment>,
) -> Result<(Vec<Node>, Vec<UdpProxy>), BenchError> {
    let names: Vec<String> = CLUSTER_NODES.iter().map(|s| s.to_string()).collect();
    crate::config::init_cluster(dir, &names, 7400, BENCH_CERT_DAYS, true)?;
    let ports: Vec<std::net::SocketAddr> = names
        .iter()
        .map(|_| UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()))
        .collect::<Result<_, _>>()
        .map_err(|e| BenchError::Setup(format!("no free port: {e}")))?;
    let mut nodes = Vec::new();
    let mut proxies = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut config = NodeConfig::load(&dir.join(format!("{name}.toml")))
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        config.listen = ports[i];
        for peer in &mut config.peers {
            if let Some(j) = names.iter().position(|n| *n == peer.name) {
                peer.address = ports[j];
                // Only the node whose name sorts first dials (see node).
                if let Some(path) = impairment
                    && *name < peer.name
                {
                    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
                    let proxy = UdpProxy::start(
                        listen,
                        ports[j],
                        path,
                        path,
                        PROXY_SEED + proxies.len() as u64,
                    )
                    .await
                    .map_err(|e| BenchError::Setup(format!("cannot start the UDP proxy: {e}")))?;
                    peer.address = proxy.addr();
                    proxies.push(proxy);
                }
            }
        }
        nodes.push(
            Node::start(&config)
                .await
                .map_err(|e| BenchError::Setup(e.to_string()))?,
        );
    }
    // Wait until every node has every genesis: the mesh is up.
    wait_for(
        &nodes,
        |heads| heads.len() == CLUSTER_NODES.len(),
        Duration::from_secs(30),
    )
    .await?;
    Ok((nodes, proxies))
}

/// Polls every node's heads until `done` holds for all of them.
async fn wait_for(
    nodes: &[Node],
    done: impl Fn(&[crate::store::FeedHead]) -> bool,
    timeout: Duration,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut all = true;
        for node in nodes {
            all &= done(&node.log().heads()?);
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(
                "the cluster did not converge in time".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The lowest head of `feed` across `logs` (None if one lacks it).
fn min_head(logs: &[Arc<Log>], feed: &str) -> Option<u64> {
    logs.iter()
        .map(|log| {
            log.heads()
                .ok()
                .and_then(|h| h.into_iter().find(|f| f.feed == feed).map(|f| f.seq))
        })
        .min()
        .flatten()
}

/// A batch's wait for durability, on the blocking pool.
type Waiting = tokio::task::JoinHandle<Result<Vec<crate::store::Receipt>, crate::store::LogError>>;

/// How often the head monitor samples every node's head of a feed.
const HEAD_POLL_INTERVAL: Duration = Duration::from_micros(300);

/// One publisher's load: proclaims `events` on `publisher` (paced to
/// `rate_per_s` if given) and records, per event, the time from the call to
/// the moment every node holds it.
///
/// A separate task samples the lowest head of the feed across the nodes, so
/// the moment a batch is everywhere is seen while the publisher is blocked
/// waiting for its next batch to be durable locally (measuring it in the
/// publisher's loop would add that wait to the latency).
async fn publish_and_measure(
    publisher: Arc<Log>,
    all: Vec<Arc<Log>>,
    events: u64,
    payload_bytes: usize,
    rate_per_s: Option<f64>,
) -> Result<Vec<u64>, BenchError> {
    let feed = publisher.service().to_string();
    let channel = publisher.channel(None)?;
    let draft = Draft::new("bench.event", 1, Vec::new(), vec![0x5a; payload_bytes])?;
    let (batch_events, batches_in_flight) = match rate_per_s {
        Some(_) => (PACED_BATCH_EVENTS, PACED_BATCHES_IN_FLIGHT),
        None => (BATCH_EVENTS, BATCHES_IN_FLIGHT),
    };
    // The feed's head before the run: the run's events follow it.
    let base = publisher
        .heads()?
        .into_iter()
        .find(|h| h.feed == feed)
        .map_or(0, |h| h.seq);
    let window = rate_per_s.is_none().then_some(PUBLISH_WINDOW_EVENTS);
    let start = Instant::now();
    let deadline = start + CONVERGE_TIMEOUT + Duration::from_secs(events / 1000);
    // The last sequence number of the run, once known.
    let target = Arc::new(AtomicU64::new(u64::MAX));
    // The lowest head of the feed across the nodes, as last sampled.
    let everywhere = Arc::new(AtomicU64::new(base));
    let monitor = tokio::spawn(monitor_heads(
        all,
        feed,
        target.clone(),
        everywhere.clone(),
        deadline,
    ));
    // (last seq of the batch, size, submitted at), in submission order.
    let mut durable_here: Vec<(u64, usize, Instant)> = Vec::new();
    let mut in_flight: VecDeque<(Pending, usize, Instant)> = VecDeque::new();
    // The oldest batch, being waited for on the blocking pool.
    let mut waiting: Option<(Waiting, usize, Instant)> = None;
    let mut remaining = events;
    let mut submitted = 0u64;
    // When the batch after `submitted` events is due (paced runs only).
    let due_at = |submitted: u64| {
        rate_per_s.map(|rate| start + Duration::from_secs_f64(submitted as f64 / rate))
    };
    while remaining > 0 || !in_flight.is_empty() || waiting.is_some() {
        while remaining > 0 && in_flight.len() + usize::from(waiting.is_some()) < batches_in_flight
        {
            if due_at(submitted).is_some_and(|due| Instant::now() < due) {
                break;
            }
            let n = remaining.min(batch_events as u64) as usize;
            let not_everywhere =
                (base + submitted + n as u64).saturating_sub(everywhere.load(Ordering::Acquire));
            if window.is_some_and(|w| not_everywhere > w) {
                break;
            }
            let drafts = (0..n).map(|_| (draft.clone(), channel.clone())).collect();
            in_flight.push_back((publisher.submit(drafts)?, n, Instant::now()));
            remaining -= n as u64;
            submitted += n as u64;
        }
        if waiting.is_none()
            && let Some((pending, n, at)) = in_flight.pop_front()
        {
            waiting = Some((tokio::task::spawn_blocking(move || pending.wait()), n, at));
        }
        // A paced publisher submits on schedule, whether or not its oldest
        // batch is durable yet, as a steady producer would.
        let next_due = due_at(submitted)
            .filter(|_| remaining > 0)
            .map(tokio::time::Instant::from_std);
        let Some((handle, n, at)) = waiting.as_mut() else {
            match next_due {
                Some(due) => tokio::time::sleep_until(due).await,
                None => tokio::time::sleep(HEAD_POLL_INTERVAL).await,
            }
            continue;
        };
        let finished = match next_due {
            Some(due) => tokio::select! {
                done = &mut *handle => Some(done),
                _ = tokio::time::sleep_until(due) => None,
            },
            None => Some(handle.await),
        };
        if let Some(done) = finished {
            let receipts = done.map_err(|e| BenchError::Setup(e.to_string()))??;
            let last = receipts.last().map(|r| r.seq).unwrap_or(0);
            durable_here.push((last, *n, *at));
            waiting = None;
        }
    }
    target.store(durable_here.last().map_or(0, |b| b.0), Ordering::Release);
    let timeline = monitor
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))??;
    let mut latencies = Vec::with_capacity(events as usize);
    for (last, n, at) in durable_here {
        // The first sample at which every node held the batch's last event.
        let i = timeline.partition_point(|(_, head)| *head < last);
        let Some((everywhere_at, _)) = timeline.get(i) else {
            return Err(BenchError::Setup("replication stalled".into()));
        };
        let latency = everywhere_at.saturating_duration_since(at).as_micros() as u64;
        latencies.extend(std::iter::repeat_n(latency, n));
    }
    Ok(latencies)
}

/// Samples the lowest head of `feed` across `logs` every
/// [`HEAD_POLL_INTERVAL`] until it reaches `target`, and returns when each
/// new value was first seen.
async fn monitor_heads(
    logs: Vec<Arc<Log>>,
    feed: String,
    target: Arc<AtomicU64>,
    everywhere: Arc<AtomicU64>,
    deadline: Instant,
) -> Result<Vec<(Instant, u64)>, BenchError> {
    let mut timeline: Vec<(Instant, u64)> = Vec::new();
    loop {
        if let Some(head) = min_head(&logs, &feed) {
            if timeline.last().is_none_or(|(_, seen)| *seen < head) {
                timeline.push((Instant::now(), head));
                everywhere.store(head, Ordering::Release);
            }
            if head >= target.load(Ordering::Acquire) {
                return Ok(timeline);
            }
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup("replication stalled".into()));
        }
        tokio::time::sleep(HEAD_POLL_INTERVAL).await;
    }
}

async fn scenario(
    nodes: &[Node],
    name: &str,
    publishers: &[usize],
    events: u64,
    payload_bytes: usize,
    rate_per_s: Option<f64>,
    ceiling: f64,
) -> Result<ClusterRun, BenchError> {
    let logs: Vec<Arc<Log>> = nodes.iter().map(|n| n.log().clone()).collect();
    let per_publisher = events / publishers.len() as u64;
    let cpu_before = super::cpu::Snapshot::take();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for &p in publishers {
        tasks.push(tokio::spawn(publish_and_measure(
            logs[p].clone(),
            logs.clone(),
            per_publisher,
            payload_bytes,
            rate_per_s.map(|r| r / publishers.len() as f64),
        )));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.map_err(|e| BenchError::Setup(e.to_string()))??);
    }
    let elapsed = start.elapsed();
    let cpu = super::cpu::Snapshot::take().since(&cpu_before);
    latencies.sort_unstable();
    let total = per_publisher * publishers.len() as u64;
    let events_per_s = total as f64 / elapsed.as_secs_f64().max(1e-9);
    Ok(ClusterRun {
        scenario: name.into(),
        events: total,
        events_per_s,
        latency_us_p50: percentile(&latencies, 0.50),
        latency_us_p99: percentile(&latencies, 0.99),
        latency_us_p999: percentile(&latencies, 0.999),
        fraction_of_topology_ceiling: events_per_s / ceiling,
        cpu,
        runs_events_per_s: vec![events_per_s],
    })
}

/// The cluster's ceiling on this one machine: every node inserts and
/// fsyncs every event (format-2 events cost no signature of their own, so
/// storage, not Ed25519, bounds the design), all sharing its disk and cores.
pub fn topology_ceiling(storage_per_s: f64, nodes: usize) -> f64 {
    storage_per_s / nodes.max(1) as f64
}

/// The run of median rate among `runs` (the lower middle one of an even
/// count), carrying every run's rate in run order.
fn median_run(runs: Vec<ClusterRun>) -> Option<ClusterRun> {
    let rates: Vec<f64> = runs.iter().map(|r| r.events_per_s).collect();
    let mut by_rate = runs;
    by_rate.sort_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s));
    let middle = by_rate.len().checked_sub(1)? / 2;
    let mut median = by_rate.swap_remove(middle);
    median.runs_events_per_s = rates;
    Some(median)
}

/// Runs the cluster scenarios. `storage_per_s` is the storage ceiling
/// measured in the same run. The two saturating scenarios run `runs` times
/// each, alternating, and report their median run (as
/// `nats-jetstream.sh` reports the median of its runs): one run of a
/// second or less on a shared machine moves by a fifth from run to run.
pub fn run_cluster(
    work_dir: &Path,
    events: u64,
    runs: u32,
    payload_bytes: usize,
    storage_per_s: f64,
    network: Network,
) -> Result<ClusterReport, BenchError> {
    if runs == 0 || runs > CLUSTER_RUNS_MAX {
        return Err(BenchError::Setup(format!(
            "cluster runs must be 1 to {CLUSTER_RUNS_MAX}, not {runs}"
        )));
    }
    let ceiling = topology_ceiling(storage_per_s, CLUSTER_NODES.len());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    runtime.block_on(async {
        let nodes = start_cluster(&work_dir.join("cluster")).await?;
        let mut ones = Vec::new();
        let mut alls = Vec::new();
        for _ in 0..runs {
            ones.push(
                scenario(
                    &nodes,
                    "one-publisher",
                    &[0],
                    events,
                    payload_bytes,
                    None,
                    ceiling,
                )
                .await?,
            );
            alls.push(
                scenario(
                    &nodes,
                    "all-publish",
                    &[0, 1, 2],
                    events,
                    payload_bytes,
                    None,
                    ceiling,
                )
                .await?,
            );
        }
        let no_run = || BenchError::Setup("no cluster run".into());
        let one = median_run(ones).ok_or_else(no_run)?;
        let all = median_run(alls).ok_or_else(no_run)?;
        let half_rate = scenario(
            &nodes,
            "one-publisher-half-rate",
            &[0],
            (events / 2).max(1),
            payload_bytes,
            Some(one.events_per_s / 2.0),
            ceiling,
        )
        .await?;
        for node in nodes {
            node.shutdown().await;
        }
        let wan = match network {
            Network::Loopback => None,
            Network::Wan => {
                let path = Impairment::WAN;
                let (nodes, proxies) =
                    start_cluster_through(&work_dir.join("cluster-wan"), Some(path)).await?;
                let run = scenario(
                    &nodes,
                    "one-publisher-wan",
                    &[0],
                    events,
                    payload_bytes,
                    None,
                    ceiling,
                )
                .await?;
                for node in nodes {
                    node.shutdown().await;
                }
                drop(proxies);
                Some(WanRun {
                    rtt_ms: 2 * path.delay_ms,
                    loss: path.loss,
                    fraction_of_loopback: run.events_per_s / one.events_per_s.max(1e-9),
                    run,
                })
            }
        };
        Ok(ClusterReport {
            nodes: CLUSTER_NODES.len(),
            topology_ceiling_per_s: ceiling,
            runs: vec![one, all],
            half_rate,
            peak_rss_mb_all_nodes: peak_rss_mb(),
            wan,
        })
    })
}

/// Peak resident set size of this process (Linux `VmHWM`), in MB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events_per_s: f64) -> ClusterRun {
        ClusterRun {
            scenario: "one-publisher".into(),
            events: 1,
            events_per_s,
            latency_us_p50: events_per_s as u64,
            latency_us_p99: 0,
            latency_us_p999: 0,
            fraction_of_topology_ceiling: 0.0,
            cpu: Default::default(),
            runs_events_per_s: vec![events_per_s],
        }
    }

    #[test]
    fn the_median_run_is_reported_with_every_rate_in_run_order() {
        let median = median_run(vec![run(3.0), run(1.0), run(2.0)]).expect("a run");
        assert_eq!(median.events_per_s, 2.0);
        assert_eq!(
            median.latency_us_p50, 2,
            "the figures are the median run's own"
        );
        assert_eq!(median.runs_events_per_s, [3.0, 1.0, 2.0]);
        let even = median_run(vec![run(4.0), run(1.0), run(3.0), run(2.0)]).expect("a run");
        assert_eq!(even.events_per_s, 2.0, "the lower middle of an even count");
        assert!(median_run(Vec::new()).is_none());
    }
}
