//! The inbox sink: events of chosen types land in a table of the service's
//! database exactly once, in order per feed.
//!
//! The sink is a durable consumer (`inbox.NAME`) of the node's log. Each
//! batch of matching events is written in **one database transaction**
//! together with the sink's position per feed (`TABLE_position`: sink, feed,
//! last seq written). Before writing, events at or below the stored position
//! of their feed are dropped. So whatever dies when (the node after the
//! database commit and before herald's cursor moved, the database during the
//! commit), an event redelivered is recognised and lands once. Events of a
//! feed reach the node in sequence order (verification demands it), so
//! "seq above the position" is exactly "not yet landed".
//!
//! Payloads are decrypted when the node holds the channel key; `payload` is
//! NULL when it does not, or when the plaintext is not UTF-8 text. Each row
//! carries the event hash (hex), with which the signed event can be fetched
//! and re-verified (`herald log`, `herald prove`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{
    Db, InboxRow, Kind, Links, OutboxError, SINK_BATCH_EVENTS_MAX, SINK_CONSUMER_PREFIX, Target,
};
use crate::config::InboxSinkConfig;
use crate::core::crypto::ChannelKey;
use crate::core::event::{Encryption, RESERVED_TYPE_PREFIX, glob_match};
use crate::store::{Log, LogError, StartFrom, StoredEvent, SubscriptionError};

const _: () = assert!(SINK_BATCH_EVENTS_MAX <= crate::store::SUBSCRIPTION_BATCH_EVENTS_MAX);

/// An inbox sink, resolved for running.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    pub name: String,
    pub target: Target,
    pub table: String,
    pub types: Vec<String>,
    /// Where a sink never seen before starts.
    pub from: StartFrom,
}

impl SinkSpec {
    pub fn new(sink: &InboxSinkConfig, target: Target) -> SinkSpec {
        SinkSpec {
            name: sink.name.clone(),
            target,
            table: sink.table.clone(),
            types: sink.types.clone(),
            from: super::sink_from(sink),
        }
    }

    /// The sink's durable consumer name.
    pub fn consumer(&self) -> String {
        format!("{SINK_CONSUMER_PREFIX}{}", self.name)
    }

    /// The subscription pattern: the one pattern, or every type when there
    /// are several (each event is then matched here).
    fn pattern(&self) -> &str {
        match self.types.as_slice() {
            [one] => one,
            _ => "*",
        }
    }

    /// Whether the sink writes events of `event_type`: a pattern matches it,
    /// and `herald.*` system events only for a pattern naming them.
    pub fn wants(&self, event_type: &str) -> bool {
        self.types.iter().any(|p| {
            glob_match(p, event_type)
                && (!event_type.starts_with(RESERVED_TYPE_PREFIX)
                    || p.starts_with(RESERVED_TYPE_PREFIX))
        })
    }
}

/// The connection and what it knows, between batches.
struct State {
    db: Option<Db>,
    /// Per feed, the last seq landed (as stored in the database).
    positions: Option<BTreeMap<String, i64>>,
}

/// Shows the sink of `spec` in `links` (status), then runs it until
/// `shutdown`.
pub fn run_registered(
    log: Arc<Log>,
    spec: SinkSpec,
    links: Links,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> {
    // Registered before the task first runs, so `herald status` lists the
    // sink from the moment the node starts.
    links.register(Kind::Sink, &spec.name, &spec.target, &spec.table);
    run(log, spec, links, shutdown)
}

/// Runs the sink of `spec` until `shutdown`.
pub async fn run(
    log: Arc<Log>,
    spec: SinkSpec,
    links: Links,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff_ms = super::RECONNECT_BACKOFF_MIN_MS;
    let subscription = loop {
        match subscribe(&log, &spec).await {
            Ok(s) => break s,
            Err(e) => {
                links.failed(Kind::Sink, &spec.name, &format!("cannot subscribe: {e}"));
                if !super::back_off(&mut backoff_ms, &mut shutdown).await {
                    return;
                }
            }
        }
    };
    let keys = Arc::new(log.channel_keys());
    let name = spec.name.clone();
    let state = Arc::new(tokio::sync::Mutex::new(State {
        db: None,
        positions: None,
    }));
    let spec = Arc::new(spec);
    let handler = {
        let links = links.clone();
        move |batch: Vec<StoredEvent>| {
            let (state, spec, keys, links) =
                (state.clone(), spec.clone(), keys.clone(), links.clone());
            async move {
                let first = batch.first().map_or(0, |e| e.arrival);
                let mut state = state.lock().await;
                land(&mut state, &spec, &keys, &links, &batch)
                    .await
                    .map_err(|e| {
                        let message = e.to_string();
                        links.disconnected(Kind::Sink, &spec.name, &message);
                        state.db = None;
                        state.positions = None;
                        (first, message)
                    })
            }
        }
    };
    let stop = crate::store::stopped(shutdown.clone());
    if let Err(e) = crate::store::run_subscription_batches(subscription, handler, stop).await {
        links.failed(Kind::Sink, &name, &e.to_string());
        tracing::error!(error = %e, "inbox sink stopped: herald's store failed");
    }
}

/// The sink's subscription: resumed, or started at `spec.from` the first
/// time. After a change of `types` it starts over from the first event; the
/// stored positions keep events already landed from landing again.
async fn subscribe(
    log: &Arc<Log>,
    spec: &SinkSpec,
) -> Result<crate::store::Subscription, LogError> {
    let (log, consumer, pattern, from) = (
        log.clone(),
        spec.consumer(),
        spec.pattern().to_string(),
        spec.from,
    );
    tokio::task::spawn_blocking(move || {
        let known: bool = log
            .reader()?
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM consumer_cursors WHERE consumer = ?1)")?
            .query_row([&consumer], |r| r.get(0))?;
        let start = if known { StartFrom::Stored } else { from };
        match log.subscribe(&consumer, &pattern, start) {
            Err(LogError::Subscription(SubscriptionError::PatternChanged { .. })) => {
                log.subscribe(&consumer, &pattern, StartFrom::Start)
            }
            other => other,
        }
    })
    .await
    .map_err(|e| LogError::Commit(format!("sink task: {e}")))?
}

/// Writes the wanted events of `batch` not yet landed, with the new
/// positions, in one database transaction.
async fn land(
    state: &mut State,
    spec: &SinkSpec,
    keys: &[ChannelKey],
    links: &Links,
    batch: &[StoredEvent],
) -> Result<(), OutboxError> {
    let db = match state.db.as_mut() {
        Some(db) => db,
        None => {
            let db = Db::connect(&spec.target, None).await?;
            links.connected(Kind::Sink, &spec.name, db.session());
            state.db.insert(db)
        }
    };
    let positions = match state.positions.as_mut() {
        Some(p) => p,
        None => {
            let p = db.positions(&spec.target, &spec.table, &spec.name).await?;
            state.positions.insert(p)
        }
    };
    let mut rows = Vec::new();
    let mut moved: BTreeMap<String, i64> = BTreeMap::new();
    for event in batch {
        let h = &event.header;
        if !spec.wants(&h.event_type) {
            continue;
        }
        let seq = h.seq as i64;
        let landed = moved.get(&h.author).or_else(|| positions.get(&h.author));
        if landed.is_some_and(|at| seq <= *at) {
            continue;
        }
        rows.push(inbox_row(event, keys));
        moved.insert(h.author.clone(), seq);
    }
    if !rows.is_empty() {
        db.land(&spec.target, &spec.table, &spec.name, &rows, &moved)
            .await?;
        positions.extend(moved);
        links.done(Kind::Sink, &spec.name, rows.len() as u64);
    }
    if let Some(last) = batch.last() {
        links.set(Kind::Sink, &spec.name, |s| s.position = Some(last.arrival));
    }
    Ok(())
}

/// The inbox row of `event`: decrypted when a key in `keys` opens it.
fn inbox_row(event: &StoredEvent, keys: &[ChannelKey]) -> InboxRow {
    let h = &event.header;
    let stored = crate::core::codec::decode_envelope(&event.envelope)
        .ok()
        .and_then(|(envelope, _)| envelope.payload);
    let (channel, plain) = match &h.payload.encryption {
        Encryption::Plain => (None, stored),
        Encryption::XChaCha20Poly1305 { key_id, .. } => (
            keys.iter()
                .find(|k| &k.id() == key_id)
                .map(|k| k.name().to_string()),
            stored.and_then(|p| crate::core::verify::decrypt_payload(h, &p, keys).ok()),
        ),
    };
    // Text columns hold UTF-8 without NUL (PostgreSQL refuses NUL in text).
    let payload = plain
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|text| !text.contains('\0'));
    let metadata: serde_json::Map<String, serde_json::Value> = h
        .meta
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    InboxRow {
        event_id: h.uuid().to_string(),
        feed: h.author.clone(),
        seq: h.seq as i64,
        event_type: h.event_type.clone(),
        timestamp_us: h.timestamp_us as i64,
        metadata: serde_json::Value::Object(metadata).to_string(),
        channel,
        payload,
        event_hash: hex::encode(event.hash),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(types: &[&str]) -> SinkSpec {
        SinkSpec {
            name: "s".into(),
            target: Target::resolve(
                Some(&crate::config::DbUrl("sqlite:///tmp/x.db".into())),
                None,
                "t".into(),
            )
            .unwrap(),
            table: "herald_inbox".into(),
            types: types.iter().map(|s| s.to_string()).collect(),
            from: StartFrom::Start,
        }
    }

    #[test]
    fn system_events_only_when_named() {
        let all = spec(&["*"]);
        assert!(all.wants("ledger.entry"));
        assert!(!all.wants("herald.genesis"));
        assert!(spec(&["herald.*"]).wants("herald.genesis"));
        let two = spec(&["ledger.*", "audit.?"]);
        assert_eq!(two.pattern(), "*");
        assert!(two.wants("audit.x") && two.wants("ledger.y") && !two.wants("other"));
        assert_eq!(spec(&["ledger.*"]).pattern(), "ledger.*");
    }
}
