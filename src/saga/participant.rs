//! Participants: run the saga commands addressed to this node.
//!
//! A durable subscription reads every `herald.saga.command` event in arrival
//! order (a feed's events arrive in order, so a step's command is always
//! handled before its compensation) and keeps those whose `service` is this
//! node. Each command runs at most once: the inbox records its event id in
//! the same transaction as the reply event, and a Rust handler's state
//! writes commit in that transaction too, so its effects are exactly-once.
//! An executable handler runs outside the transaction (it may take long);
//! if the node dies after it ran and before the reply committed, it runs
//! again on restart, so it gets the command id (`HERALD_COMMAND_ID`) to
//! make its own side effects idempotent.
//!
//! Decisions a participant makes without a handler:
//!
//! * a command that arrives after its deadline is not run; it fails with
//!   "deadline passed" (the orchestrator has given up on it already);
//! * a compensation of a step that did not complete here (it failed, was
//!   refused, or never ran) has nothing to undo and completes at once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use super::events::{self, CommandPayload, ReplyPayload, meta};
use super::machine::{CommandKind, ReplyOutcome};
use crate::clock;
use crate::store::{Log, StartFrom, StoredEvent, Tx, TxError};

/// Durable consumer name (and inbox name) of the command subscription.
pub const COMMAND_CONSUMER: &str = "herald.saga.participant";
/// Largest step result (JSON bytes), from a Rust handler or an executable's
/// stdout. Every later command carries the results of the steps before it,
/// so 32 steps of this size plus the largest saga input stay well inside
/// one event's payload limit.
pub const STEP_RESULT_BYTES_MAX: usize = 16 * 1024;
/// Most stderr bytes kept for a failure reason.
pub const EXEC_REASON_BYTES_MAX: usize = 4 * 1024;
/// How long an executable handler may run unless its config says otherwise.
/// Deliberately not the step's deadline: a handler that finishes late
/// reports it, and the orchestrator compensates the late completion.
pub const EXEC_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// Longest run time a handler's config may allow.
pub const EXEC_TIMEOUT_MS_MAX: u64 = 10 * 60 * 1000;

/// A Rust command handler: runs inside the transaction that records the
/// reply, so what it writes through `tx` commits exactly once with it.
/// `Err(reason)` fails the step and rolls its writes back.
pub type CommandHandler =
    Arc<dyn Fn(&mut Tx<'_>, &CommandPayload) -> Result<serde_json::Value, String> + Send + Sync>;

/// How a command type is handled.
#[derive(Clone)]
pub enum Handler {
    Rust(CommandHandler),
    /// Program and arguments, and how long it may run (ms); the command
    /// payload (JSON) on stdin; exit 0 completes with stdout as the result
    /// (JSON, or a string), any other exit fails with stderr (or stdout) as
    /// the reason.
    Exec(Vec<String>, u64),
}

/// Command handlers by command type.
#[derive(Clone, Default)]
pub struct Handlers {
    map: Arc<RwLock<HashMap<String, Handler>>>,
}

impl Handlers {
    /// Registers (or replaces) the handler of `command_type`.
    pub fn register(&self, command_type: &str, handler: Handler) {
        if let Ok(mut map) = self.map.write() {
            map.insert(command_type.to_string(), handler);
        }
    }

    fn get(&self, command_type: &str) -> Option<Handler> {
        self.map.read().ok()?.get(command_type).cloned()
    }
}

/// Commands handled at once (across sagas; one saga's commands always run
/// one after another, in order).
pub const PARTICIPANT_CONCURRENCY_MAX: usize = 32;

/// Starts the participant's subscription.
pub(crate) fn spawn(
    log: Arc<Log>,
    handlers: Handlers,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>, crate::store::LogError> {
    let subscription = log.subscribe(COMMAND_CONSUMER, events::COMMAND, StartFrom::Stored)?;
    let handle_batch =
        move |batch: Vec<StoredEvent>| handle_batch(log.clone(), handlers.clone(), batch);
    Ok(tokio::spawn(async move {
        if let Err(e) =
            crate::store::run_subscription_batches(subscription, handle_batch, stop).await
        {
            tracing::error!(error = %e, "saga command subscription stopped");
        }
    }))
}

/// Handles a batch of command events: each saga's commands in order, different
/// sagas concurrently (so their transactions share commits). Returns the
/// earliest event that failed; events after it that succeeded are skipped on
/// redelivery by the inbox.
async fn handle_batch(
    log: Arc<Log>,
    handlers: Handlers,
    batch: Vec<StoredEvent>,
) -> Result<(), (u64, String)> {
    let mut groups: Vec<Vec<StoredEvent>> = Vec::new();
    let mut group_of: HashMap<Option<Uuid>, usize> = HashMap::new();
    for event in batch {
        let key = events::saga_id_of(&event.header);
        let index = *group_of.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[index].push(event);
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(PARTICIPANT_CONCURRENCY_MAX));
    let mut tasks = tokio::task::JoinSet::new();
    for group in groups {
        let (log, handlers, permits) = (log.clone(), handlers.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            for event in group {
                let arrival = event.arrival;
                handle_command(&log, &handlers, event)
                    .await
                    .map_err(|reason| (arrival, reason))?;
            }
            Ok::<(), (u64, String)>(())
        });
    }
    let mut first_failure: Option<(u64, String)> = None;
    while let Some(joined) = tasks.join_next().await {
        let failure = match joined {
            Ok(Ok(())) => continue,
            Ok(Err(failure)) => failure,
            // A panicking handler task: redeliver from the batch's start.
            Err(e) => (0, format!("participant task: {e}")),
        };
        if first_failure.as_ref().is_none_or(|(a, _)| failure.0 < *a) {
            first_failure = Some(failure);
        }
    }
    first_failure.map_or(Ok(()), Err)
}

/// Handles one command event; `Err` redelivers it after a backoff.
async fn handle_command(
    log: &Arc<Log>,
    handlers: &Handlers,
    event: StoredEvent,
) -> Result<(), String> {
    if event.header.meta_value(meta::SERVICE) != Some(log.service()) {
        return Ok(());
    }
    let command_id = event.header.id;
    if log
        .was_handled(COMMAND_CONSUMER, &command_id)
        .map_err(|e| e.to_string())?
    {
        return Ok(());
    }
    let keys = log.channel_keys();
    let command: CommandPayload = match events::decode_payload(
        &event.header,
        &event.envelope,
        &keys,
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(author = %event.header.author, seq = event.header.seq, error = %e, "unreadable saga command skipped");
            return Ok(());
        }
    };
    let orchestrator = event.header.author.clone();
    let reply = ReplyTo {
        command_id,
        orchestrator,
    };
    let decision = decide(log, handlers, &command, &reply).await?;
    match commit_reply(log, &reply, &command, decision).await? {
        Committed::Replied => Ok(()),
        // The handler's writes were rolled back; reply that it failed.
        Committed::HandlerFailed(reason) => {
            let failed = Decision::Decided(ReplyOutcome::Failed { reason });
            commit_reply(log, &reply, &command, failed)
                .await
                .map(|_| ())
        }
    }
}

/// How a command's outcome is reached.
enum Decision {
    /// Known before the reply's transaction: deadline passed, nothing to
    /// undo, no handler, or an executable already ran.
    Decided(ReplyOutcome),
    /// Run this Rust handler inside the reply's transaction.
    Run(CommandHandler),
}

/// What committing a reply came to.
enum Committed {
    /// The reply (or nothing, for a command already handled) is durable.
    Replied,
    /// The Rust handler refused; its transaction was rolled back.
    HandlerFailed(String),
}

/// Applies the rules a participant follows before (or instead of) running a
/// handler, and runs an executable handler.
async fn decide(
    log: &Arc<Log>,
    handlers: &Handlers,
    command: &CommandPayload,
    reply: &ReplyTo,
) -> Result<Decision, String> {
    if command.kind == CommandKind::Do && clock::now_us() >= command.deadline_us {
        let reason = "deadline passed before the command ran; not run".to_string();
        return Ok(Decision::Decided(ReplyOutcome::Failed { reason }));
    }
    if command.kind == CommandKind::Compensate {
        let note = if !completed_here(log, command, CommandKind::Do).await? {
            Some("the step did not complete on this service; nothing to undo")
        } else if completed_here(log, command, CommandKind::Compensate).await? {
            // An earlier attempt succeeded but its reply came too late for
            // the orchestrator, which retried: undo once, confirm again.
            Some("an earlier compensation attempt already undid this step")
        } else {
            None
        };
        if let Some(note) = note {
            let result = serde_json::json!({ "undone": false, "note": note });
            return Ok(Decision::Decided(ReplyOutcome::Completed { result }));
        }
    }
    Ok(match handlers.get(&command.command) {
        None => Decision::Decided(ReplyOutcome::Failed {
            reason: format!(
                "service {} has no handler for command {:?}",
                log.service(),
                command.command
            ),
        }),
        Some(Handler::Rust(handler)) => Decision::Run(handler),
        Some(Handler::Exec(program, timeout_ms)) => {
            Decision::Decided(run_exec(&program, timeout_ms, command, &reply.command_id).await)
        }
    })
}

/// Where a reply goes.
struct ReplyTo {
    command_id: [u8; 16],
    orchestrator: String,
}

/// Commits the reply (and, for a Rust handler, runs it first in the same
/// transaction): inbox record, `saga_commands` row, reply event.
async fn commit_reply(
    log: &Arc<Log>,
    reply: &ReplyTo,
    command: &CommandPayload,
    decision: Decision,
) -> Result<Committed, String> {
    let command = command.clone();
    let (command_id, orchestrator) = (reply.command_id, reply.orchestrator.clone());
    // Set only when the handler refuses, so its abort is told apart from a
    // store failure.
    let refusal = Arc::new(std::sync::OnceLock::<String>::new());
    let refused = Arc::clone(&refusal);
    let log = log.clone();
    let committed = tokio::task::spawn_blocking(move || {
        log.transact(move |tx| {
            if !tx.mark_handled(COMMAND_CONSUMER, &command_id)? {
                return Ok(());
            }
            let outcome = match decision {
                Decision::Decided(outcome) => outcome,
                Decision::Run(handler) => match run_handler(tx, &handler, &command) {
                    Ok(result) => ReplyOutcome::Completed { result },
                    Err(reason) => {
                        let _ = refused.set(reason.clone());
                        return Err(TxError::abort(reason));
                    }
                },
            };
            record_and_reply(tx, &command, command_id, &orchestrator, outcome)
        })
    })
    .await
    .map_err(|e| format!("participant task: {e}"))?;
    match (committed, refusal.get()) {
        (Ok(_), _) => Ok(Committed::Replied),
        (Err(_), Some(reason)) => Ok(Committed::HandlerFailed(reason.clone())),
        (Err(e), None) => Err(e.to_string()),
    }
}

/// Runs a Rust handler and bounds its result ([`STEP_RESULT_BYTES_MAX`]).
fn run_handler(
    tx: &mut Tx<'_>,
    handler: &CommandHandler,
    command: &CommandPayload,
) -> Result<serde_json::Value, String> {
    let result = handler(tx, command)?;
    let size = serde_json::to_vec(&result).map_or(usize::MAX, |v| v.len());
    if size > STEP_RESULT_BYTES_MAX {
        return Err(format!(
            "result of {size} bytes is over the limit of {STEP_RESULT_BYTES_MAX}"
        ));
    }
    Ok(result)
}

fn record_and_reply(
    tx: &mut Tx<'_>,
    command: &CommandPayload,
    command_id: [u8; 16],
    orchestrator: &str,
    outcome: ReplyOutcome,
) -> Result<(), TxError> {
    let outcome_name = match &outcome {
        ReplyOutcome::Completed { .. } => "completed",
        ReplyOutcome::Failed { .. } => "failed",
    };
    tx.sql()
        .prepare_cached(
            "INSERT OR REPLACE INTO saga_commands (saga_id, step, kind, attempt, command_id, outcome, handled_at_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            command.saga_id.as_bytes().as_slice(),
            command.step as i64,
            events::kind_str(command.kind),
            command.attempt as i64,
            command_id.as_slice(),
            outcome_name,
            tx.now_us() as i64,
        ])?;
    let payload = ReplyPayload {
        saga_id: command.saga_id,
        step: command.step,
        kind: command.kind,
        attempt: command.attempt,
        command_id: Uuid::from_bytes(command_id),
        outcome,
    };
    let bytes = serde_json::to_vec(&payload)
        .map_err(|e| TxError::abort(format!("encoding a saga reply: {e}")))?;
    let meta = vec![
        (meta::SAGA_ID.to_string(), command.saga_id.to_string()),
        (meta::SAGA_TYPE.to_string(), command.saga_type.clone()),
        (meta::STEP.to_string(), command.step.to_string()),
        (meta::STEP_NAME.to_string(), command.step_name.clone()),
        (meta::SERVICE.to_string(), tx.service().to_string()),
        (
            meta::KIND.to_string(),
            events::kind_str(command.kind).to_string(),
        ),
        (meta::ATTEMPT.to_string(), command.attempt.to_string()),
        (meta::OUTCOME.to_string(), outcome_name.to_string()),
        (
            meta::COMMAND_ID.to_string(),
            Uuid::from_bytes(command_id).to_string(),
        ),
        (meta::ORCHESTRATOR.to_string(), orchestrator.to_string()),
    ];
    tx.proclaim_system(events::REPLY, &bytes, meta)?;
    Ok(())
}

/// Whether this service completed a command of `kind` for the step (any
/// attempt).
async fn completed_here(
    log: &Arc<Log>,
    command: &CommandPayload,
    kind: CommandKind,
) -> Result<bool, String> {
    let log = log.clone();
    let (saga_id, step) = (command.saga_id, command.step);
    tokio::task::spawn_blocking(move || -> Result<bool, String> {
        let conn = log.reader().map_err(|e| e.to_string())?;
        let found: Option<i64> = conn
            .prepare_cached(
                "SELECT 1 FROM saga_commands
                 WHERE saga_id = ?1 AND step = ?2 AND kind = ?3 AND outcome = 'completed' LIMIT 1",
            )
            .and_then(|mut stmt| {
                stmt.query_row(
                    params![
                        saga_id.as_bytes().as_slice(),
                        step as i64,
                        events::kind_str(kind)
                    ],
                    |r| r.get(0),
                )
                .optional()
            })
            .map_err(|e| e.to_string())?;
        Ok(found.is_some())
    })
    .await
    .map_err(|e| format!("participant task: {e}"))?
}

/// Runs an executable handler until it exits or the command's deadline.
async fn run_exec(
    program: &[String],
    timeout_ms: u64,
    command: &CommandPayload,
    command_id: &[u8; 16],
) -> ReplyOutcome {
    let failed = |reason: String| ReplyOutcome::Failed { reason };
    let input = match serde_json::to_vec(command) {
        Ok(b) => b,
        Err(e) => return failed(format!("encoding the command: {e}")),
    };
    let env = [
        ("HERALD_SAGA_ID", command.saga_id.to_string()),
        (
            "HERALD_COMMAND_ID",
            Uuid::from_bytes(*command_id).to_string(),
        ),
        ("HERALD_COMMAND", command.command.clone()),
        ("HERALD_STEP", command.step_name.clone()),
        ("HERALD_KIND", events::kind_str(command.kind).to_string()),
        ("HERALD_ATTEMPT", command.attempt.to_string()),
    ];
    let timeout_ms = timeout_ms.clamp(1, EXEC_TIMEOUT_MS_MAX);
    let run = super::exec::run_bounded(
        program,
        &env,
        &input,
        STEP_RESULT_BYTES_MAX,
        EXEC_REASON_BYTES_MAX,
    );
    let output = match tokio::time::timeout(Duration::from_millis(timeout_ms), run).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return failed(e.to_string()),
        Err(_) => {
            let name = program.first().map(String::as_str).unwrap_or_default();
            return failed(format!(
                "handler {name:?} did not finish within {timeout_ms} ms"
            ));
        }
    };
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    if output.status.success() {
        let trimmed = out.trim();
        let result = if trimmed.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(trimmed)
                .unwrap_or_else(|_| serde_json::Value::String(trimmed.to_string()))
        };
        ReplyOutcome::Completed { result }
    } else {
        let text = if err.trim().is_empty() {
            out.trim()
        } else {
            err.trim()
        };
        failed(format!("handler {}: {text}", output.status))
    }
}
