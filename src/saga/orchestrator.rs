//! The orchestrator: drives the sagas this node started.
//!
//! One task owns every active saga's state machine. It wakes for a start
//! request, a participant's reply (from a durable subscription to
//! `herald.saga.reply`) or the earliest deadline, feeds the machine, and
//! persists the result in one transaction: the saga's row in `sagas` and one
//! signed event per action (commands, transitions). Only after that commit
//! does it acknowledge the reply (so the subscription cursor moves) or
//! return the new saga's id. On restart it reloads every saga that is not
//! terminal and carries on: deadlines that passed meanwhile fire at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::definition::SagaDefinition;
use super::events::{self, CommandPayload, ReplyPayload, meta};
use super::machine::{Action, CommandKind, Reply, Saga, SagaStatus};
use crate::clock;
use crate::store::{Log, LogError, StartFrom, StoredEvent, Tx, TxError};

/// Most sagas one node drives at once; `start_saga` refuses beyond it.
pub const SAGAS_ACTIVE_MAX: usize = 10_000;
/// Most start requests and replies applied in one transaction.
pub const ORCHESTRATOR_BATCH_MAX: usize = 256;
/// Start requests and replies that may queue for the orchestrator.
pub const ORCHESTRATOR_QUEUE_MAX: usize = 1024;
/// Longest sleep between deadline checks, so a clock jump is noticed.
pub const ORCHESTRATOR_TICK_MAX_MS: u64 = 1_000;
/// Largest saga input (JSON bytes).
pub const SAGA_INPUT_BYTES_MAX: usize = 256 * 1024;
/// Durable consumer name of the orchestrator's reply subscription.
pub const REPLY_CONSUMER: &str = "herald.saga.orchestrator";
/// First wait before the orchestrator restarts after a fault (a store read
/// or write that failed: it reloads its sagas from the store and goes on).
pub const ORCHESTRATOR_RESTART_MS: u64 = 100;
/// Cap of the doubling wait between restarts.
pub const ORCHESTRATOR_RESTART_MS_MAX: u64 = 5_000;
/// Restarts in a row, each failing within [`ORCHESTRATOR_STABLE_MS`] of the
/// one before, after which the fault counts as permanent: the node is
/// unhealthy and stops. With the backoff that is about 16 s of failing.
pub const ORCHESTRATOR_RESTARTS_MAX: u32 = 8;
/// How long the orchestrator must run after a restart for the next fault
/// to count as a new one rather than one more in a row.
pub const ORCHESTRATOR_STABLE_MS: u64 = 60_000;
/// The orchestrator's name in the node's health.
const ORCHESTRATOR_TASK: &str = "saga orchestrator";

/// Errors starting or reading sagas.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    #[error("saga definition: {0}")]
    Definition(#[from] super::definition::DefinitionError),
    #[error("saga input is {found} bytes of JSON, over the limit of {SAGA_INPUT_BYTES_MAX}")]
    InputTooLarge { found: usize },
    #[error("this node already drives {SAGAS_ACTIVE_MAX} sagas; retry when some have ended")]
    TooManyActive,
    #[error("the saga orchestrator is not running (node shutting down)")]
    Stopped,
    #[error("saga not found: {0}")]
    NotFound(Uuid),
    #[error("saga store: {0}")]
    Store(String),
    #[error(transparent)]
    Tx(#[from] TxError),
}

impl From<LogError> for SagaError {
    fn from(e: LogError) -> Self {
        SagaError::Store(e.to_string())
    }
}

impl From<rusqlite::Error> for SagaError {
    fn from(e: rusqlite::Error) -> Self {
        SagaError::Store(e.to_string())
    }
}

/// What the orchestrator task accepts.
pub(crate) enum Msg {
    Start {
        definition: SagaDefinition,
        input: serde_json::Value,
        initiator: String,
        reply: oneshot::Sender<Result<Uuid, SagaError>>,
    },
    Reply {
        saga_id: Uuid,
        reply: Reply,
        ack: oneshot::Sender<Result<(), String>>,
    },
}

/// The handle nodes keep to the orchestrator task.
#[derive(Clone)]
pub(crate) struct Orchestrator {
    pub tx: mpsc::Sender<Msg>,
}

impl Orchestrator {
    /// Starts the orchestrator task and its reply subscription.
    pub fn spawn(
        log: Arc<Log>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(Orchestrator, Vec<tokio::task::JoinHandle<()>>), LogError> {
        let (tx, rx) = mpsc::channel(ORCHESTRATOR_QUEUE_MAX);
        let subscription = log.subscribe(REPLY_CONSUMER, events::REPLY, StartFrom::Stored)?;
        let forward = forward_replies(log.clone(), tx.clone());
        let reply_task = tokio::spawn({
            let stop = crate::store::stopped(shutdown.clone());
            async move {
                if let Err(e) =
                    crate::store::run_subscription_batches(subscription, forward, stop).await
                {
                    tracing::error!(error = %e, "saga reply subscription stopped");
                }
            }
        });
        let main_task = tokio::spawn(supervise(log, rx, shutdown));
        Ok((Orchestrator { tx }, vec![main_task, reply_task]))
    }

    /// Starts a saga; returns its id once the start is durable.
    pub async fn start(
        &self,
        definition: SagaDefinition,
        input: serde_json::Value,
        initiator: &str,
    ) -> Result<Uuid, SagaError> {
        definition.validate()?;
        let size = serde_json::to_vec(&input).map(|v| v.len()).unwrap_or(0);
        if size > SAGA_INPUT_BYTES_MAX {
            return Err(SagaError::InputTooLarge { found: size });
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Start {
                definition,
                input,
                initiator: initiator.to_string(),
                reply,
            })
            .await
            .map_err(|_| SagaError::Stopped)?;
        answer.await.map_err(|_| SagaError::Stopped)?
    }
}

/// What handling one batch of reply events resolves to.
type BatchFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), (u64, String)>> + Send>>;

/// Turns reply events addressed to this node into messages for the
/// orchestrator (a whole batch at once, so they share one transaction) and
/// waits until each is applied durably.
fn forward_replies(
    log: Arc<Log>,
    tx: mpsc::Sender<Msg>,
) -> impl FnMut(Vec<StoredEvent>) -> BatchFuture {
    move |batch: Vec<StoredEvent>| {
        let (log, tx) = (log.clone(), tx.clone());
        Box::pin(async move {
            let keys = log.channel_keys();
            let mut acks = Vec::new();
            for event in batch {
                let Some(reply) = reply_for(&log, &keys, &event) else {
                    continue;
                };
                let (ack, applied) = oneshot::channel();
                let (saga_id, reply) = reply;
                tx.send(Msg::Reply {
                    saga_id,
                    reply,
                    ack,
                })
                .await
                .map_err(|_| (event.arrival, "orchestrator stopped".to_string()))?;
                acks.push((event.arrival, applied));
            }
            for (arrival, applied) in acks {
                applied
                    .await
                    .map_err(|_| "orchestrator stopped".to_string())
                    .and_then(|r| r)
                    .map_err(|reason| (arrival, reason))?;
            }
            Ok(())
        })
    }
}

/// The reply in `event`, if it is addressed to this node and readable.
fn reply_for(
    log: &Log,
    keys: &[crate::core::crypto::ChannelKey],
    event: &StoredEvent,
) -> Option<(Uuid, Reply)> {
    if event.header.meta_value(meta::ORCHESTRATOR) != Some(log.service()) {
        return None;
    }
    match events::decode_payload::<ReplyPayload>(&event.header, &event.envelope, keys) {
        Ok(p) => Some((
            p.saga_id,
            Reply {
                step: p.step,
                kind: p.kind,
                attempt: p.attempt,
                outcome: p.outcome,
            },
        )),
        Err(e) => {
            // A reply we cannot read can never be applied: skipping it
            // lets the step time out instead.
            tracing::warn!(author = %event.header.author, seq = event.header.seq, error = %e, "unreadable saga reply skipped");
            None
        }
    }
}

/// A pending acknowledgement, answered after the transaction commits.
enum Ack {
    Started(oneshot::Sender<Result<Uuid, SagaError>>, Uuid),
    Applied(oneshot::Sender<Result<(), String>>),
}

/// Runs the orchestrator, restarting it after a fault with backoff
/// ([`ORCHESTRATOR_RESTART_MS`] to [`ORCHESTRATOR_RESTART_MS_MAX`]) while the
/// fault shows in the node's health; after [`ORCHESTRATOR_RESTARTS_MAX`]
/// quick failures in a row the sagas this node drives could never end, so
/// the fault is reported as permanent (the node stops).
async fn supervise(
    log: Arc<Log>,
    mut rx: mpsc::Receiver<Msg>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let health = log.health().clone();
    let mut failures = 0u32;
    let mut backoff_ms = ORCHESTRATOR_RESTART_MS;
    loop {
        let started = tokio::time::Instant::now();
        let stop = crate::store::stopped(shutdown.clone());
        let Err(e) = run(log.clone(), &mut rx, stop).await else {
            return;
        };
        if started.elapsed() >= Duration::from_millis(ORCHESTRATOR_STABLE_MS) {
            failures = 0;
            backoff_ms = ORCHESTRATOR_RESTART_MS;
        }
        failures += 1;
        if failures > ORCHESTRATOR_RESTARTS_MAX {
            health.permanent(
                ORCHESTRATOR_TASK,
                &format!("{e} ({failures} failures in a row)"),
            );
            return;
        }
        tracing::warn!(error = %e, backoff_ms, "saga orchestrator failed; restarting after backoff");
        health.transient(ORCHESTRATOR_TASK, &format!("{e} (restarting)"));
        tokio::select! {
            _ = crate::store::stopped(shutdown.clone()) => return,
            _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
        }
        backoff_ms = (backoff_ms * 2).min(ORCHESTRATOR_RESTART_MS_MAX);
    }
}

async fn run(
    log: Arc<Log>,
    rx: &mut mpsc::Receiver<Msg>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), SagaError> {
    let mut sagas = load_active(&log).await?;
    // Loaded: a restart after a fault has recovered.
    log.health().cleared(ORCHESTRATOR_TASK);
    if !sagas.is_empty() {
        tracing::info!(active = sagas.len(), "resuming sagas");
    }
    let mut stop = std::pin::pin!(stop);
    loop {
        let now = clock::now_us();
        let wake_in_us = sagas
            .values()
            .filter_map(Saga::next_wakeup_us)
            .min()
            .map_or(u64::MAX, |at| at.saturating_sub(now));
        let sleep = Duration::from_micros(wake_in_us.min(ORCHESTRATOR_TICK_MAX_MS * 1000));
        let mut messages = Vec::new();
        tokio::select! {
            _ = &mut stop => return Ok(()),
            msg = rx.recv() => match msg {
                Some(msg) => messages.push(msg),
                None => return Ok(()),
            },
            _ = tokio::time::sleep(sleep) => {}
        }
        while messages.len() < ORCHESTRATOR_BATCH_MAX {
            match rx.try_recv() {
                Ok(msg) => messages.push(msg),
                Err(_) => break,
            }
        }
        step(&log, &mut sagas, messages).await?;
    }
}

/// Applies messages and due deadlines, then persists every change at once.
async fn step(
    log: &Arc<Log>,
    sagas: &mut HashMap<Uuid, Saga>,
    messages: Vec<Msg>,
) -> Result<(), SagaError> {
    let now = clock::now_us();
    let mut acks = Vec::new();
    let mut changed: HashMap<Uuid, Vec<Action>> = HashMap::new();
    for msg in messages {
        match msg {
            Msg::Start {
                definition,
                input,
                initiator,
                reply,
            } => {
                if sagas.len() >= SAGAS_ACTIVE_MAX {
                    let _ = reply.send(Err(SagaError::TooManyActive));
                    continue;
                }
                let id = Uuid::now_v7();
                let (saga, actions) = Saga::start(id, definition, input, &initiator, now);
                sagas.insert(id, saga);
                changed.entry(id).or_default().extend(actions);
                acks.push(Ack::Started(reply, id));
            }
            Msg::Reply {
                saga_id,
                reply,
                ack,
            } => {
                // Replies for sagas that ended (or that this node does not
                // drive) change nothing: the machine ignores late news.
                if let Some(saga) = sagas.get_mut(&saga_id) {
                    let actions = saga.on_reply(&reply, now);
                    changed.entry(saga_id).or_default().extend(actions);
                }
                acks.push(Ack::Applied(ack));
            }
        }
    }
    for (id, saga) in sagas.iter_mut() {
        if saga.next_wakeup_us().is_some_and(|at| at <= now) {
            let actions = saga.on_tick(now);
            if !actions.is_empty() {
                changed.entry(*id).or_default().extend(actions);
            }
        }
    }
    let writes: Vec<(Saga, Vec<Action>)> = changed
        .into_iter()
        .filter_map(|(id, actions)| sagas.get(&id).map(|s| (s.clone(), actions)))
        .collect();
    let outcome = if writes.is_empty() {
        Ok(())
    } else {
        persist(log, writes).await
    };
    match outcome {
        Ok(()) => {
            for ack in acks {
                match ack {
                    Ack::Started(reply, id) => {
                        let _ = reply.send(Ok(id));
                    }
                    Ack::Applied(ack) => {
                        let _ = ack.send(Ok(()));
                    }
                }
            }
            sagas.retain(|_, s| !s.is_terminal());
            Ok(())
        }
        Err(e) => {
            // Nothing was stored: forget the in-memory changes and reload.
            tracing::error!(error = %e, "saga transition not stored; reloading sagas");
            let message = e.to_string();
            for ack in acks {
                match ack {
                    Ack::Started(reply, _) => {
                        let _ = reply.send(Err(SagaError::Store(message.clone())));
                    }
                    Ack::Applied(ack) => {
                        let _ = ack.send(Err(message.clone()));
                    }
                }
            }
            *sagas = load_active(log).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(())
        }
    }
}

/// One event the orchestrator will proclaim.
struct Proclamation {
    event_type: &'static str,
    payload: Vec<u8>,
    meta: Vec<(String, String)>,
}

/// Stores each saga's new state and proclaims its actions: each saga's row
/// and events in one transaction, sagas grouped so no transaction exceeds
/// [`TRANSACT_EVENTS_MAX`](crate::store::TRANSACT_EVENTS_MAX) events (many
/// sagas timing out at once must never make a transition unstorable).
async fn persist(log: &Arc<Log>, writes: Vec<(Saga, Vec<Action>)>) -> Result<(), SagaError> {
    let orchestrator = log.service().to_string();
    let mut chunks: Vec<Vec<(SagaRow, Vec<Proclamation>)>> = vec![Vec::new()];
    let mut chunk_events = 0usize;
    for (saga, actions) in writes {
        let proclamations = actions
            .iter()
            .map(|action| proclamation_for(&saga, action, &orchestrator))
            .collect::<Result<Vec<_>, _>>()?;
        if chunk_events + proclamations.len() > crate::store::TRANSACT_EVENTS_MAX {
            chunks.push(Vec::new());
            chunk_events = 0;
        }
        chunk_events += proclamations.len();
        if let Some(chunk) = chunks.last_mut() {
            chunk.push((SagaRow::of(&saga)?, proclamations));
        }
    }
    for chunk in chunks.into_iter().filter(|c| !c.is_empty()) {
        let log = log.clone();
        tokio::task::spawn_blocking(move || {
            log.transact(move |tx| {
                for (row, proclamations) in chunk {
                    row.upsert(tx)?;
                    for p in proclamations {
                        tx.proclaim_system(p.event_type, &p.payload, p.meta)?;
                    }
                }
                Ok(())
            })
        })
        .await
        .map_err(|e| SagaError::Store(format!("orchestrator task: {e}")))??;
    }
    Ok(())
}

fn proclamation_for(
    saga: &Saga,
    action: &Action,
    orchestrator: &str,
) -> Result<Proclamation, SagaError> {
    let mut meta = vec![
        (meta::SAGA_ID.to_string(), saga.id.to_string()),
        (meta::SAGA_TYPE.to_string(), saga.saga_type.clone()),
    ];
    match action {
        Action::Command {
            step,
            kind,
            attempt,
            deadline_us,
        } => {
            let definition =
                saga.definition.steps.get(*step).ok_or_else(|| {
                    SagaError::Store(format!("saga {} has no step {step}", saga.id))
                })?;
            let command = match kind {
                CommandKind::Do => definition.command.clone(),
                CommandKind::Compensate => definition.compensation.clone(),
            };
            let results = saga
                .definition
                .steps
                .iter()
                .zip(&saga.steps)
                .filter_map(|(d, s)| s.result.clone().map(|r| (d.name.clone(), r)))
                .collect();
            let payload = CommandPayload {
                saga_id: saga.id,
                saga_type: saga.saga_type.clone(),
                step: *step,
                step_name: definition.name.clone(),
                command: command.clone(),
                kind: *kind,
                attempt: *attempt,
                deadline_us: *deadline_us,
                input: saga.input.clone(),
                results,
            };
            meta.extend([
                (meta::STEP.to_string(), step.to_string()),
                (meta::STEP_NAME.to_string(), definition.name.clone()),
                (meta::SERVICE.to_string(), definition.service.clone()),
                (meta::COMMAND.to_string(), command),
                (meta::KIND.to_string(), events::kind_str(*kind).to_string()),
                (meta::ATTEMPT.to_string(), attempt.to_string()),
                (meta::DEADLINE_US.to_string(), deadline_us.to_string()),
                (meta::ORCHESTRATOR.to_string(), orchestrator.to_string()),
            ]);
            Ok(Proclamation {
                event_type: events::COMMAND,
                payload: to_json(&payload)?,
                meta,
            })
        }
        Action::Record(transition) => {
            if let Some(step) = events::transition_step(transition) {
                meta.push((meta::STEP.to_string(), step.to_string()));
                if let Some(d) = saga.definition.steps.get(step) {
                    meta.push((meta::STEP_NAME.to_string(), d.name.clone()));
                    meta.push((meta::SERVICE.to_string(), d.service.clone()));
                }
            }
            let event_type = events::transition_event_type(transition);
            let payload = if matches!(transition, super::machine::Transition::Started) {
                serde_json::json!({
                    "definition": saga.definition,
                    "input": saga.input,
                    "initiator": saga.initiator,
                    "deadline_us": saga.deadline_us,
                })
            } else {
                serde_json::to_value(transition)
                    .map_err(|e| SagaError::Store(format!("encoding a transition: {e}")))?
            };
            Ok(Proclamation {
                event_type,
                payload: to_json(&payload)?,
                meta,
            })
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, SagaError> {
    serde_json::to_vec(value).map_err(|e| SagaError::Store(format!("encoding JSON: {e}")))
}

/// A saga's row in the `sagas` table.
struct SagaRow {
    id: Uuid,
    saga_type: String,
    status: SagaStatus,
    initiator: String,
    started_at_us: u64,
    deadline_us: u64,
    state: String,
}

impl SagaRow {
    fn of(saga: &Saga) -> Result<SagaRow, SagaError> {
        Ok(SagaRow {
            id: saga.id,
            saga_type: saga.saga_type.clone(),
            status: saga.status,
            initiator: saga.initiator.clone(),
            started_at_us: saga.started_at_us,
            deadline_us: saga.deadline_us,
            state: serde_json::to_string(saga)
                .map_err(|e| SagaError::Store(format!("encoding saga state: {e}")))?,
        })
    }

    fn upsert(&self, tx: &mut Tx<'_>) -> Result<(), TxError> {
        tx.sql()
            .prepare_cached(
                "INSERT INTO sagas (id, saga_type, status, initiator, started_at_us, deadline_us, updated_at_us, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status,
                     updated_at_us = excluded.updated_at_us, state = excluded.state",
            )?
            .execute(params![
                self.id.as_bytes().as_slice(),
                self.saga_type,
                self.status.as_str(),
                self.initiator,
                self.started_at_us as i64,
                self.deadline_us as i64,
                tx.now_us() as i64,
                self.state,
            ])?;
        Ok(())
    }
}

/// Every saga of this node that has not ended.
async fn load_active(log: &Arc<Log>) -> Result<HashMap<Uuid, Saga>, SagaError> {
    let log = log.clone();
    tokio::task::spawn_blocking(move || -> Result<HashMap<Uuid, Saga>, SagaError> {
        let conn = log.reader()?;
        let mut out = HashMap::new();
        for status in [SagaStatus::InProgress, SagaStatus::Compensating] {
            for saga in list(&conn, Some(status), SAGAS_ACTIVE_MAX)? {
                out.insert(saga.id, saga);
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| SagaError::Store(format!("loading sagas: {e}")))?
}

/// One saga by id, from any connection to a node's store.
pub fn load(conn: &Connection, id: Uuid) -> Result<Option<Saga>, SagaError> {
    let state: Option<String> = conn
        .query_row(
            "SELECT state FROM sagas WHERE id = ?1",
            [id.as_bytes().as_slice()],
            |r| r.get(0),
        )
        .optional()?;
    state.map(|s| parse_state(&s)).transpose()
}

/// Sagas newest first, optionally only those with `status`, at most `limit`.
pub fn list(
    conn: &Connection,
    status: Option<SagaStatus>,
    limit: usize,
) -> Result<Vec<Saga>, SagaError> {
    let mut stmt = conn.prepare(
        "SELECT state FROM sagas WHERE (?1 IS NULL OR status = ?1)
         ORDER BY started_at_us DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![status.map(|s| s.as_str()), limit as i64], |r| {
        r.get::<_, String>(0)
    })?;
    let mut out = Vec::new();
    for row in rows {
        out.push(parse_state(&row?)?);
    }
    Ok(out)
}

fn parse_state(text: &str) -> Result<Saga, SagaError> {
    serde_json::from_str(text)
        .map_err(|e| SagaError::Store(format!("a stored saga state does not parse: {e}")))
}
