//! `GET /metrics`: the node's counters and gauges in the Prometheus text
//! format (or OpenMetrics, when the scraper asks for it), written by the
//! `prometheus-client` crate. docs/API.md ("Metrics") lists every metric.
//!
//! Counters are atomics updated where things happen, once per commit,
//! ingest or acknowledgement, never per event: the store's
//! ([`StoreMetrics`]: events proclaimed, verification failures, commit
//! latency) and the replication sessions' ([`NodeMetrics`]: events
//! received, acknowledged positions). Gauges are computed when scraped
//! from the node's state (heads, peers, sagas, cursors, database links).
//! Each scrape encodes one registry built over this node's state alone, so
//! several nodes in one process never share a metric.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use super::{Inner, PeerState};
use crate::clock;
use crate::outbox::DbLinkStatus;
use crate::store::metrics::{HistogramSnapshot, StoreMetrics, StoreSnapshot};
use crate::store::{FeedHead, LogError};

/// (peer, feed) pairs whose replication lag in seconds one scrape looks up
/// at most (one indexed read each, only for pairs that lag); pairs beyond
/// it report their lag in events only.
pub const LAG_SECONDS_READS_MAX: usize = 1_000;

/// Why a scrape failed (answered 500 with the message).
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics: cannot read the store: {0}")]
    Store(#[from] LogError),
    #[error("metrics: the store read task failed: {0}")]
    Task(String),
    #[error("metrics: cannot encode the exposition: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// The exposition format of a scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (the default).
    Prometheus,
    /// OpenMetrics 1.0 text, for scrapers whose `Accept` asks for it.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text`, else the Prometheus text format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// What the replication sessions count, per configured peer. The peers
/// are fixed when the node starts, so finding one's counters takes no lock.
#[derive(Debug, Default)]
pub struct NodeMetrics {
    peers: BTreeMap<String, PeerMetrics>,
}

#[derive(Debug, Default)]
struct PeerMetrics {
    /// Events from this peer verified and committed.
    received: AtomicU64,
    /// The peer's acknowledged positions (per feed, the next sequence
    /// number it lacks) as of its latest acknowledgement on a live
    /// session; `None` before the first since the node started. Written
    /// when acknowledgements move (at most once per replication wake-up),
    /// read when scraped.
    acknowledged: Mutex<Option<BTreeMap<String, u64>>>,
}

impl NodeMetrics {
    /// Counters for each of `peers` (the configured ones).
    pub fn new<'a>(peers: impl IntoIterator<Item = &'a str>) -> NodeMetrics {
        NodeMetrics {
            peers: peers
                .into_iter()
                .map(|p| (p.to_string(), PeerMetrics::default()))
                .collect(),
        }
    }

    /// `n` events from `peer` were verified and committed.
    pub(crate) fn received(&self, peer: &str, n: usize) {
        if let Some(p) = self.peers.get(peer) {
            p.received.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// `peer` acknowledged `acked` (per feed, the next sequence it lacks).
    pub(crate) fn acknowledged(&self, peer: &str, acked: &BTreeMap<String, u64>) {
        if let Some(p) = self.peers.get(peer)
            && let Ok(mut slot) = p.acknowledged.lock()
        {
            *slot = Some(acked.clone());
        }
    }

    fn received_total(&self, peer: &str) -> u64 {
        self.peers
            .get(peer)
            .map_or(0, |p| p.received.load(Ordering::Relaxed))
    }

    fn acknowledged_by(&self, peer: &str) -> Option<BTreeMap<String, u64>> {
        self.peers
            .get(peer)
            .and_then(|p| p.acknowledged.lock().ok().and_then(|a| a.clone()))
    }
}

/// One peer's replication lag in one feed.
#[derive(Debug, Clone, PartialEq)]
struct Lag {
    peer: String,
    feed: String,
    events: u64,
    /// Age of the oldest event the peer has not acknowledged (0 when it
    /// has them all; `None` when not looked up).
    seconds: Option<f64>,
}

/// Per (peer, feed) held by this node: how many events the peer has not
/// acknowledged, and the first of them (the one whose age is the lag in
/// seconds). A peer whose acknowledgements are unknown (no session since
/// the node started and none persisted) is left out: unknown is not 0.
fn lags(
    heads: &[FeedHead],
    acknowledged: &BTreeMap<String, BTreeMap<String, u64>>,
) -> Vec<(Lag, Option<u64>)> {
    let mut out = Vec::new();
    for (peer, acked) in acknowledged {
        for head in heads {
            let next = acked.get(&head.feed).copied().unwrap_or(0);
            let events = (head.seq + 1).saturating_sub(next);
            out.push((
                Lag {
                    peer: peer.clone(),
                    feed: head.feed.clone(),
                    events,
                    seconds: (events == 0).then_some(0.0),
                },
                (events > 0).then_some(next),
            ));
        }
    }
    out
}

/// Everything one scrape reports, read at one moment.
#[derive(Debug)]
struct Scrape {
    proclaimed: u64,
    failures: Vec<(&'static str, u64)>,
    commit: HistogramSnapshot,
    peers: Vec<(PeerState, u64)>,
    heads: Vec<FeedHead>,
    lags: Vec<Lag>,
    store: StoreSnapshot,
    outbox_sources: Vec<DbLinkStatus>,
    inbox_sinks: Vec<DbLinkStatus>,
}

/// Renders `inner`'s metrics in `format`.
pub(crate) async fn render(inner: &Inner, format: Format) -> Result<String, MetricsError> {
    let scrape = gather(inner).await?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    match format {
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry)?,
    }
    Ok(out)
}

async fn gather(inner: &Inner) -> Result<Scrape, MetricsError> {
    let store_metrics: &StoreMetrics = inner.log.metrics();
    let (proclaimed, failures, commit) = (
        store_metrics.proclaimed_total(),
        store_metrics.failures(),
        store_metrics.commit_latency(),
    );
    let peers: Vec<PeerState> = inner
        .peers
        .lock()
        .map(|p| p.values().cloned().collect())
        .unwrap_or_default();
    let log = inner.log.clone();
    let (heads, store) = tokio::task::spawn_blocking(move || {
        Ok::<_, LogError>((log.heads()?, log.metrics_snapshot()?))
    })
    .await
    .map_err(|e| MetricsError::Task(e.to_string()))??;
    // Acknowledgements: the live session's, else the persisted cursors.
    let mut acknowledged: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for cursor in &store.peer_cursors {
        acknowledged
            .entry(cursor.peer.clone())
            .or_default()
            .insert(cursor.feed.clone(), cursor.acked_seq + 1);
    }
    for peer in &peers {
        if let Some(live) = inner.metrics.acknowledged_by(&peer.name) {
            acknowledged.insert(peer.name.clone(), live);
        }
    }
    acknowledged.retain(|peer, _| peers.iter().any(|p| &p.name == peer));
    let mut lags = lags(&heads, &acknowledged);
    let lookups: Vec<(usize, (String, u64))> = lags
        .iter()
        .enumerate()
        .filter_map(|(i, (lag, first))| first.map(|seq| (i, (lag.feed.clone(), seq))))
        .take(LAG_SECONDS_READS_MAX)
        .collect();
    if !lookups.is_empty() {
        let keys: Vec<(String, u64)> = lookups.iter().map(|(_, k)| k.clone()).collect();
        let log = inner.log.clone();
        let stamps = tokio::task::spawn_blocking(move || log.timestamps_at(&keys))
            .await
            .map_err(|e| MetricsError::Task(e.to_string()))??;
        let now_us = clock::now_us();
        for ((i, _), stamp) in lookups.iter().zip(stamps) {
            if let Some(at) = stamp {
                lags[*i].0.seconds = Some(now_us.saturating_sub(at) as f64 / 1e6);
            }
        }
    }
    let last_arrival = Some(store.last_arrival);
    let (outbox_sources, inbox_sinks) = inner.db_links.snapshot(last_arrival);
    Ok(Scrape {
        proclaimed,
        failures,
        commit,
        peers: peers
            .into_iter()
            .map(|p| {
                let received = inner.metrics.received_total(&p.name);
                (p, received)
            })
            .collect(),
        heads,
        lags: lags.into_iter().map(|(lag, _)| lag).collect(),
        store,
        outbox_sources,
        inbox_sinks,
    })
}

/// Writes one metric family: `series` as (labels, value) pairs.
fn family<V: Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    series: &[(Vec<(&str, &str)>, V)],
    mut write: impl FnMut(prometheus_client::encoding::MetricEncoder, V) -> std::fmt::Result,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in series {
        write(metric.encode_family(labels)?, *value)?;
    }
    Ok(())
}

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Vec<(&str, &str)>, u64)],
) -> std::fmt::Result {
    family(
        encoder,
        name,
        help,
        None,
        MetricType::Counter,
        series,
        |m, v| ConstCounter::new(v).encode(m),
    )
}

fn gauge_family<V: EncodeGaugeValue + Copy + std::fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(Vec<(&str, &str)>, V)],
) -> std::fmt::Result {
    family(
        encoder,
        name,
        help,
        unit,
        MetricType::Gauge,
        series,
        |m, v| ConstGauge::new(v).encode(m),
    )
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut encoder;
        let proclaimed = e.encode_descriptor(
            "herald_events_proclaimed",
            "Events of this node's own feed committed durably since it started",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.proclaimed).encode(proclaimed)?;

        let received: Vec<_> = self
            .peers
            .iter()
            .map(|(p, n)| (vec![("peer", p.name.as_str())], *n))
            .collect();
        counter_family(
            e,
            "herald_events_received",
            "Events received from a peer, verified and committed, since the node started",
            &received,
        )?;

        let failures: Vec<_> = self
            .failures
            .iter()
            .map(|(check, n)| (vec![("check", *check)], *n))
            .collect();
        counter_family(
            e,
            "herald_verification_failures",
            "Events, fork evidence or checkpoints from peers that failed verification, by the check that failed",
            &failures,
        )?;

        let commit = e.encode_descriptor(
            "herald_commit_duration",
            "Time from the start of a commit that stored events until the write-ahead log's fsync covered it",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        let mut commit = commit;
        commit.encode_histogram::<NoLabelSet>(
            self.commit.sum_seconds,
            self.commit.count,
            &self.commit.buckets,
            None,
        )?;

        let by_peer = |f: &dyn Fn(&PeerState) -> u64| -> Vec<(Vec<(&str, &str)>, u64)> {
            self.peers
                .iter()
                .map(|(p, _)| (vec![("peer", p.name.as_str())], f(p)))
                .collect()
        };
        gauge_family(
            e,
            "herald_peer_connected",
            "1 while a replication connection to the peer is up, else 0",
            None,
            &by_peer(&|p| if p.connected { 1 } else { 0 }),
        )?;
        gauge_family(
            e,
            "herald_peer_backlog_events",
            "Events this node holds that the peer has not acknowledged (as of the session's latest wake-up)",
            None,
            &by_peer(&|p| p.backlog),
        )?;
        let lag_events: Vec<_> = self
            .lags
            .iter()
            .map(|l| {
                (
                    vec![("peer", l.peer.as_str()), ("feed", l.feed.as_str())],
                    l.events,
                )
            })
            .collect();
        gauge_family(
            e,
            "herald_replication_lag_events",
            "Events of the feed this node holds that the peer has not acknowledged",
            None,
            &lag_events,
        )?;
        let lag_seconds: Vec<_> = self
            .lags
            .iter()
            .filter_map(|l| {
                Some((
                    vec![("peer", l.peer.as_str()), ("feed", l.feed.as_str())],
                    l.seconds?,
                ))
            })
            .collect();
        gauge_family(
            e,
            "herald_replication_lag",
            "Age (by its author's timestamp) of the oldest event of the feed the peer has not acknowledged; 0 when it has them all",
            Some(&Unit::Seconds),
            &lag_seconds,
        )?;

        let heads: Vec<_> = self
            .heads
            .iter()
            .map(|h| (vec![("feed", h.feed.as_str())], h.seq))
            .collect();
        gauge_family(
            e,
            "herald_feed_head_seq",
            "Sequence number of the newest event of the feed this node holds",
            None,
            &heads,
        )?;

        let sagas: Vec<_> = crate::saga::SagaStatus::ALL
            .iter()
            .map(|status| {
                let n = self
                    .store
                    .sagas
                    .iter()
                    .find(|(s, _)| s == status.as_str())
                    .map_or(0, |(_, n)| *n);
                (vec![("state", status.as_str())], n)
            })
            .collect();
        gauge_family(
            e,
            "herald_sagas",
            "Sagas this node orchestrates, by state",
            None,
            &sagas,
        )?;

        let last = e.encode_descriptor(
            "herald_log_last_arrival",
            "Arrival position of the newest event in this node's log (consumer positions count up to it)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.store.last_arrival).encode(last)?;
        let positions: Vec<_> = self
            .store
            .consumers
            .iter()
            .map(|c| (vec![("consumer", c.consumer.as_str())], c.last_arrival))
            .collect();
        gauge_family(
            e,
            "herald_consumer_position",
            "Arrival position up to which a durable consumer (API consumers are named api.NAME) acknowledged",
            None,
            &positions,
        )?;
        let pending: Vec<_> = self
            .store
            .consumers
            .iter()
            .map(|c| {
                (
                    vec![("consumer", c.consumer.as_str())],
                    self.store.last_arrival.saturating_sub(c.last_arrival),
                )
            })
            .collect();
        gauge_family(
            e,
            "herald_consumer_pending_events",
            "Arrivals after a durable consumer's position (events it has not acknowledged, whatever their type)",
            None,
            &pending,
        )?;
        let cursors: Vec<_> = self
            .store
            .peer_cursors
            .iter()
            .map(|c| {
                (
                    vec![("peer", c.peer.as_str()), ("feed", c.feed.as_str())],
                    c.acked_seq,
                )
            })
            .collect();
        gauge_family(
            e,
            "herald_peer_delivery_cursor",
            "Highest sequence number of the feed the peer acknowledged, as persisted (the replication outbox's delivery cursor)",
            None,
            &cursors,
        )?;

        let source = |f: &dyn Fn(&DbLinkStatus) -> u64| -> Vec<(Vec<(&str, &str)>, u64)> {
            self.outbox_sources
                .iter()
                .map(|s| (vec![("source", s.name.as_str())], f(s)))
                .collect()
        };
        gauge_family(
            e,
            "herald_outbox_backlog_rows",
            "Unpublished rows of a database outbox table still to relay",
            None,
            &source(&|s| s.backlog),
        )?;
        let relayed: Vec<_> = self
            .outbox_sources
            .iter()
            .map(|s| (vec![("source", s.name.as_str())], s.done))
            .collect();
        counter_family(
            e,
            "herald_outbox_relayed_rows",
            "Rows of a database outbox table relayed into the log since the node started",
            &relayed,
        )?;
        let sink = |f: &dyn Fn(&DbLinkStatus) -> u64| -> Vec<(Vec<(&str, &str)>, u64)> {
            self.inbox_sinks
                .iter()
                .map(|s| (vec![("sink", s.name.as_str())], f(s)))
                .collect()
        };
        gauge_family(
            e,
            "herald_inbox_position",
            "Arrival position up to which a database inbox sink wrote or passed over events",
            None,
            &sink(&|s| s.position.unwrap_or(0)),
        )?;
        gauge_family(
            e,
            "herald_inbox_backlog_events",
            "Arrivals of the log a database inbox sink has not looked at yet",
            None,
            &sink(&|s| s.backlog),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(feed: &str, seq: u64) -> FeedHead {
        FeedHead {
            feed: feed.into(),
            seq,
            hash: [0; 32],
            last_timestamp_us: 0,
            status: "active".into(),
        }
    }

    #[test]
    fn lag_counts_unacknowledged_events_and_skips_unknown_peers() {
        let heads = vec![head("a", 9), head("b", 4)];
        let mut acked = BTreeMap::new();
        // Peer p holds a up to 6 (next 7) and b entirely; q holds nothing.
        acked.insert(
            "p".to_string(),
            BTreeMap::from([("a".to_string(), 7), ("b".to_string(), 5)]),
        );
        acked.insert("q".to_string(), BTreeMap::new());
        let got = lags(&heads, &acked);
        let find = |peer: &str, feed: &str| {
            got.iter()
                .find(|(l, _)| l.peer == peer && l.feed == feed)
                .cloned()
                .unwrap()
        };
        assert_eq!(find("p", "a").0.events, 3);
        assert_eq!(find("p", "a").1, Some(7), "the first event it lacks");
        assert_eq!(find("p", "b").0.events, 0);
        assert_eq!(find("p", "b").0.seconds, Some(0.0));
        assert_eq!(find("q", "a").0.events, 10, "genesis included");
        assert_eq!(find("q", "b").1, Some(0));
        assert_eq!(got.len(), 4, "no entry for peers not in the map");
    }

    #[test]
    fn accept_header_chooses_the_format() {
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(
            Format::from_accept(Some("text/plain;version=0.0.4")),
            Format::Prometheus
        );
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert!(
            Format::Prometheus
                .content_type()
                .starts_with("text/plain; version=0.0.4")
        );
    }
}
