//! The saga state machine, sans IO: it takes replies and the current time
//! and answers with the [`Action`]s the orchestrator must take (commands to
//! proclaim, transitions to record). No clock, no IO, no randomness: the
//! same inputs always give the same state and actions, so a saga can be
//! persisted (it is plain serde data), resumed and replayed.
//!
//! # Lifecycle
//!
//! * Forward: steps run one at a time, in order. Each gets one attempt,
//!   whose deadline is the step's deadline capped by the saga's.
//! * A step that fails, or gets no reply by its deadline, starts
//!   compensation. Every `Completed` step is undone, and so is the step that
//!   timed out: its outcome is unknown (the service may have run it), so it
//!   is treated as done. Compensation runs one step at a time in strictly
//!   reverse step order, because a later step may depend on an earlier one.
//! * Each compensation attempt has the step's deadline (not capped by the
//!   saga's: undoing must be allowed to finish). A failed or timed-out
//!   attempt is retried after an exponential backoff, up to the policy's
//!   budget of attempts.
//! * When a step's budget is exhausted, compensation **stops** there and the
//!   saga ends `Failed` with an [`Transition::Alert`] telling an operator
//!   what to undo by hand, in which order. Earlier steps are deliberately
//!   left alone: undoing them while a later step that may depend on them is
//!   still in effect would break the very ordering compensation exists for.
//!
//! # Termination
//!
//! Every saga reaches a terminal state ([`SagaStatus::Completed`],
//! [`SagaStatus::Compensated`] or [`SagaStatus::Failed`]) even if no reply
//! ever arrives: ticking past the deadlines is enough. The worst case is
//! bounded by the saga deadline plus, for every step, `attempts` times the
//! step deadline plus the longest backoff.
//!
//! # Replies
//!
//! Replies are matched on step, kind and attempt; anything that does not
//! match what the saga is waiting for (duplicates, stale attempts, unknown
//! steps, replies after the end) is ignored. Before a reply is looked at,
//! every deadline that has passed by `now_us` is applied, exactly as
//! [`Saga::on_tick`] would: the outcome never depends on how often the
//! orchestrator ticks, and a saga never accepts a reply after it stopped
//! waiting for it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::definition::{COMPENSATION_ATTEMPTS_MAX, SagaDefinition, StepDefinition};

/// Microseconds per millisecond: definitions count in ms, the machine in µs.
const US_PER_MS: u64 = 1000;
/// The attempt number of a step's forward command. A step runs forward
/// once: retrying a command whose outcome is unknown could do it twice.
pub const FORWARD_ATTEMPT: u32 = 1;
/// Longest failure reason from a participant kept in the state and records,
/// in bytes; longer ones are cut at a character boundary. Reasons come from
/// other services, and every record is an event with a bounded size.
pub const REPLY_REASON_BYTES_MAX: usize = 1024;
/// Appended to a reason cut to [`REPLY_REASON_BYTES_MAX`].
const TRUNCATED_MARKER: &str = "... (truncated)";

/// Where a saga is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Running its steps forward.
    InProgress,
    /// A step failed or timed out; completed steps are being undone.
    Compensating,
    /// Terminal: every step completed.
    Completed,
    /// Terminal: a step failed or timed out and every step that had taken
    /// effect has been undone.
    Compensated,
    /// Terminal: a compensation exhausted its attempts. Some steps remain in
    /// effect; an operator was alerted with what to undo by hand.
    Failed,
}

impl SagaStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [SagaStatus; 5] = [
        SagaStatus::InProgress,
        SagaStatus::Compensating,
        SagaStatus::Completed,
        SagaStatus::Compensated,
        SagaStatus::Failed,
    ];

    /// Whether the saga is over: nothing changes it any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed
        )
    }

    /// The snake_case name, as in JSON (`in_progress`).
    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::InProgress => "in_progress",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Completed => "completed",
            SagaStatus::Compensated => "compensated",
            SagaStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not one of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} status {found:?}; expected one of: {expected}")]
pub struct ParseStatusError {
    /// `saga` or `step`.
    pub what: &'static str,
    /// The text that did not parse.
    pub found: String,
    /// The accepted names, comma-separated.
    pub expected: String,
}

impl FromStr for SagaStatus {
    type Err = ParseStatusError;

    /// Parses the [`SagaStatus::as_str`] name.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        SagaStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| ParseStatusError {
                what: "saga",
                found: text.to_string(),
                expected: names(SagaStatus::ALL.map(SagaStatus::as_str)),
            })
    }
}

/// Where one step is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not commanded yet.
    Pending,
    /// Commanded; waiting for its reply.
    Running,
    /// The service ran it.
    Completed,
    /// The service reported failure; nothing to undo.
    Failed,
    /// No reply by its deadline; outcome unknown, so it is compensated.
    TimedOut,
    /// Its compensation is being run (or awaits a retry).
    Compensating,
    /// Undone.
    Compensated,
    /// Its compensation exhausted its attempts; it may still be in effect.
    CompensationFailed,
}

impl StepStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [StepStatus; 8] = [
        StepStatus::Pending,
        StepStatus::Running,
        StepStatus::Completed,
        StepStatus::Failed,
        StepStatus::TimedOut,
        StepStatus::Compensating,
        StepStatus::Compensated,
        StepStatus::CompensationFailed,
    ];

    /// The snake_case name, as in JSON (`timed_out`).
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Completed => "completed",
            StepStatus::Failed => "failed",
            StepStatus::TimedOut => "timed_out",
            StepStatus::Compensating => "compensating",
            StepStatus::Compensated => "compensated",
            StepStatus::CompensationFailed => "compensation_failed",
        }
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StepStatus {
    type Err = ParseStatusError;

    /// Parses the [`StepStatus::as_str`] name.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        StepStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| ParseStatusError {
                what: "step",
                found: text.to_string(),
                expected: names(StepStatus::ALL.map(StepStatus::as_str)),
            })
    }
}

/// Which of a step's two commands: the forward action or its undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// The step's `command`.
    Do,
    /// The step's `compensation`.
    Compensate,
}

impl CommandKind {
    /// The snake_case name, as in JSON (`do`, `compensate`).
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Do => "do",
            CommandKind::Compensate => "compensate",
        }
    }
}

/// What a participant reports about a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyOutcome {
    /// Done; `result` is kept with the step (forward commands only).
    Completed { result: serde_json::Value },
    /// Not done, and why.
    Failed { reason: String },
}

/// A participant's reply to one command attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Index of the step (from 0).
    pub step: usize,
    /// Which command it answers.
    pub kind: CommandKind,
    /// The attempt it answers, as in the [`Action::Command`].
    pub attempt: u32,
    /// What happened.
    pub outcome: ReplyOutcome,
}

/// One step's run-time state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepState {
    /// Where the step is.
    pub status: StepStatus,
    /// Forward: [`FORWARD_ATTEMPT`] once commanded. Compensating: the
    /// current compensation attempt number (from 1).
    pub attempt: u32,
    /// When the orchestrator stops waiting for the outstanding command
    /// (forward or compensation attempt); `None` when none is outstanding.
    pub deadline_us: Option<u64>,
    /// When the next compensation attempt is due (after a backoff).
    pub retry_at_us: Option<u64>,
    /// The forward command's result, once completed in time.
    pub result: Option<serde_json::Value>,
    /// The latest explanation of what went wrong: the failure reported, the
    /// timeout, or the last compensation failure. Records keep the history.
    pub reason: Option<String>,
    /// A completed reply arrived after the step timed out: it did run, and
    /// is being (or was) compensated.
    pub completed_late: bool,
}

impl StepState {
    fn pending() -> StepState {
        StepState {
            status: StepStatus::Pending,
            attempt: 0,
            deadline_us: None,
            retry_at_us: None,
            result: None,
            reason: None,
            completed_late: false,
        }
    }
}

/// One running (or finished) saga: its definition, input and state.
/// Serialise it to persist it; a deserialised saga carries on exactly where
/// it left off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saga {
    /// The saga's id (UUID v7 by convention; the machine does not care).
    pub id: Uuid,
    /// Copied from the definition.
    pub saga_type: String,
    /// The service that started the saga.
    pub initiator: String,
    /// The plan it follows.
    pub definition: SagaDefinition,
    /// The input it was started with, kept for the orchestrator to pass on.
    pub input: serde_json::Value,
    /// Where it is.
    pub status: SagaStatus,
    /// The step being run (forward) or compensated; once terminal, the last
    /// step the saga worked on.
    pub current_step: usize,
    /// One state per step of the definition.
    pub steps: Vec<StepState>,
    /// When it started, µs since the Unix epoch.
    pub started_at_us: u64,
    /// When the forward run must be over, µs since the Unix epoch.
    pub deadline_us: u64,
    /// When it reached its terminal state.
    pub ended_at_us: Option<u64>,
    /// Steps still to compensate after the current one, next first
    /// (strictly decreasing step indexes).
    compensation_queue: Vec<usize>,
    /// The step that timed out in the forward run, if any. Only this step
    /// can complete late.
    timed_out_step: Option<usize>,
    /// A reply for the timed-out step arrived after its deadline; later ones
    /// are duplicates or contradictions and are ignored.
    late_reply_seen: bool,
}

/// What the orchestrator must do after an input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Proclaim a command for `step` addressed to its service.
    /// `deadline_us` is when the orchestrator stops waiting for this attempt.
    Command {
        step: usize,
        kind: CommandKind,
        attempt: u32,
        deadline_us: u64,
    },
    /// Proclaim a record of an orchestrator-side transition (every
    /// transition is a signed event).
    Record(Transition),
}

/// An orchestrator-side transition, recorded as a signed event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transition {
    /// The saga started.
    Started,
    /// A completed reply for `step` was accepted.
    StepCompleted { step: usize },
    /// A failed reply for `step` was accepted; compensation begins.
    StepFailed { step: usize, reason: String },
    /// `step` got no reply by its deadline; compensation begins.
    StepTimedOut { step: usize },
    /// A completed reply arrived after `step` timed out: it did run, and is
    /// (or was) compensated anyway.
    LateCompletion { step: usize },
    /// One compensation attempt of `step` failed or timed out.
    CompensationFailed {
        step: usize,
        attempt: u32,
        reason: String,
    },
    /// Compensation attempt `attempt` of `step` is due at `at_us`.
    CompensationRetryScheduled {
        step: usize,
        attempt: u32,
        at_us: u64,
    },
    /// `step` was undone.
    StepCompensated { step: usize },
    /// Terminal: every step completed.
    Completed,
    /// Terminal: everything that took effect was undone.
    Compensated,
    /// Terminal: a compensation exhausted its attempts.
    Failed { reason: String },
    /// What an operator must do, in words.
    Alert { message: String },
}

impl Saga {
    /// Starts a saga at `now_us` and commands its first step. The definition
    /// should have passed [`SagaDefinition::validate`]; the machine does not
    /// check it again, but stays panic-free and terminating whatever it is
    /// given (a definition without steps completes at once).
    pub fn start(
        id: Uuid,
        definition: SagaDefinition,
        input: serde_json::Value,
        initiator: &str,
        now_us: u64,
    ) -> (Saga, Vec<Action>) {
        let deadline_us = now_us.saturating_add(ms_to_us(definition.deadline_ms));
        let mut saga = Saga {
            id,
            saga_type: definition.saga_type.clone(),
            initiator: initiator.to_string(),
            steps: vec![StepState::pending(); definition.steps.len()],
            definition,
            input,
            status: SagaStatus::InProgress,
            current_step: 0,
            started_at_us: now_us,
            deadline_us,
            ended_at_us: None,
            compensation_queue: Vec::new(),
            timed_out_step: None,
            late_reply_seen: false,
        };
        let mut actions = vec![Action::Record(Transition::Started)];
        saga.run_step(0, now_us, &mut actions);
        (saga, actions)
    }

    /// Applies a participant's reply received at `now_us`. Deadlines passed
    /// by `now_us` are applied first (see the module documentation), then the
    /// reply, if it is one the saga is waiting for; otherwise it is ignored.
    pub fn on_reply(&mut self, reply: &Reply, now_us: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        self.apply_due(now_us, &mut actions);
        if self.is_terminal() {
            return actions;
        }
        match reply.kind {
            CommandKind::Do => self.on_do_reply(reply, now_us, &mut actions),
            CommandKind::Compensate => self.on_compensate_reply(reply, now_us, &mut actions),
        }
        actions
    }

    /// Applies everything due at `now_us`: a forward deadline (which is
    /// capped by the saga's), compensation deadlines and due retries, as many
    /// as have come due, in order.
    pub fn on_tick(&mut self, now_us: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        self.apply_due(now_us, &mut actions);
        actions
    }

    /// The earliest time at which [`Saga::on_tick`] has something to do: the
    /// outstanding command's deadline or the next retry. `None` once
    /// terminal.
    pub fn next_wakeup_us(&self) -> Option<u64> {
        if self.is_terminal() {
            return None;
        }
        let state = self.steps.get(self.current_step)?;
        match (self.status, state.status) {
            (SagaStatus::InProgress, StepStatus::Running)
            | (SagaStatus::Compensating, StepStatus::Compensating) => {
                match (state.deadline_us, state.retry_at_us) {
                    (Some(deadline), Some(retry)) => Some(deadline.min(retry)),
                    (deadline, retry) => deadline.or(retry),
                }
            }
            _ => None,
        }
    }

    /// Whether the saga is over ([`SagaStatus::is_terminal`]).
    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    /// The definition of `step`, e.g. to address its command.
    pub fn step_definition(&self, step: usize) -> Option<&StepDefinition> {
        self.definition.steps.get(step)
    }

    /// The command type to proclaim for an [`Action::Command`]: the step's
    /// `command` or `compensation`.
    pub fn command_type(&self, step: usize, kind: CommandKind) -> Option<&str> {
        let definition = self.step_definition(step)?;
        Some(match kind {
            CommandKind::Do => &definition.command,
            CommandKind::Compensate => &definition.compensation,
        })
    }

    /// Steps still to compensate after the current one, in the order they
    /// will be (or, once `Failed`, must be by hand) compensated.
    pub fn pending_compensations(&self) -> &[usize] {
        &self.compensation_queue
    }

    /// Compensation attempts per step. Clamped, so even a definition that
    /// skipped validation gets at least one attempt and a bounded number.
    fn attempt_budget(&self) -> u32 {
        self.definition
            .compensation
            .attempts
            .clamp(1, COMPENSATION_ATTEMPTS_MAX)
    }

    /// Loops until nothing is due. Each turn either ends the loop or moves
    /// the saga irreversibly forward (a timeout, a failed attempt, a
    /// retry), and retries are bounded by the budget, so the loop ends.
    fn apply_due(&mut self, now_us: u64, actions: &mut Vec<Action>) {
        loop {
            let index = self.current_step;
            let (status, deadline_us, retry_at_us) = match self.steps.get(index) {
                Some(state) => (state.status, state.deadline_us, state.retry_at_us),
                None => return,
            };
            match (self.status, status) {
                (SagaStatus::InProgress, StepStatus::Running) => match deadline_us {
                    Some(deadline) if now_us >= deadline => {
                        self.time_out_step(index, deadline, now_us, actions)
                    }
                    _ => return,
                },
                (SagaStatus::Compensating, StepStatus::Compensating) => {
                    if deadline_us.is_some_and(|deadline| now_us >= deadline) {
                        let reason = self.compensation_timeout_reason(index);
                        self.compensation_attempt_failed(index, reason, now_us, actions);
                    } else if retry_at_us.is_some_and(|retry| now_us >= retry) {
                        self.retry_compensation(index, now_us, actions);
                    } else {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    /// Commands step `index` forward, or completes the saga when there is
    /// no such step (the previous one was the last).
    fn run_step(&mut self, index: usize, now_us: u64, actions: &mut Vec<Action>) {
        let Some(definition) = self.definition.steps.get(index) else {
            return self.finish(
                SagaStatus::Completed,
                Transition::Completed,
                now_us,
                actions,
            );
        };
        let deadline_us = now_us
            .saturating_add(ms_to_us(definition.deadline_ms))
            .min(self.deadline_us);
        let Some(state) = self.steps.get_mut(index) else {
            return self.finish(
                SagaStatus::Completed,
                Transition::Completed,
                now_us,
                actions,
            );
        };
        state.status = StepStatus::Running;
        state.attempt = FORWARD_ATTEMPT;
        state.deadline_us = Some(deadline_us);
        self.current_step = index;
        actions.push(Action::Command {
            step: index,
            kind: CommandKind::Do,
            attempt: FORWARD_ATTEMPT,
            deadline_us,
        });
    }

    fn on_do_reply(&mut self, reply: &Reply, now_us: u64, actions: &mut Vec<Action>) {
        if reply.attempt != FORWARD_ATTEMPT {
            return;
        }
        let index = reply.step;
        let Some(state) = self.steps.get_mut(index) else {
            return;
        };
        let running = self.status == SagaStatus::InProgress
            && index == self.current_step
            && state.status == StepStatus::Running;
        if running {
            state.deadline_us = None;
            match &reply.outcome {
                ReplyOutcome::Completed { result } => {
                    state.status = StepStatus::Completed;
                    state.result = Some(result.clone());
                    actions.push(Action::Record(Transition::StepCompleted { step: index }));
                    self.run_step(index.saturating_add(1), now_us, actions);
                }
                ReplyOutcome::Failed { reason } => {
                    let reason = bounded_reason(reason);
                    state.status = StepStatus::Failed;
                    state.reason = Some(reason.clone());
                    actions.push(Action::Record(Transition::StepFailed {
                        step: index,
                        reason,
                    }));
                    self.begin_compensation(now_us, actions);
                }
            }
            return;
        }
        // The first reply for the timed-out step after its deadline: the
        // service answered too late. Its compensation is already under way
        // (a timed-out step is compensated first), so only note it.
        if self.timed_out_step != Some(index) || self.late_reply_seen {
            return;
        }
        self.late_reply_seen = true;
        match &reply.outcome {
            ReplyOutcome::Completed { .. } => {
                state.completed_late = true;
                actions.push(Action::Record(Transition::LateCompletion { step: index }));
            }
            ReplyOutcome::Failed { reason } => {
                state.reason = Some(format!(
                    "timed out; the service later reported failure: {}",
                    bounded_reason(reason)
                ));
            }
        }
    }

    fn on_compensate_reply(&mut self, reply: &Reply, now_us: u64, actions: &mut Vec<Action>) {
        let index = reply.step;
        if self.status != SagaStatus::Compensating || index != self.current_step {
            return;
        }
        let Some(state) = self.steps.get_mut(index) else {
            return;
        };
        if state.status != StepStatus::Compensating || reply.attempt != state.attempt {
            return;
        }
        match &reply.outcome {
            // A success for the current attempt counts even if it arrived
            // after the attempt's deadline, while the retry is pending: the
            // step is undone, and retrying would only repeat it.
            ReplyOutcome::Completed { .. } => {
                state.status = StepStatus::Compensated;
                state.deadline_us = None;
                state.retry_at_us = None;
                actions.push(Action::Record(Transition::StepCompensated { step: index }));
                self.compensate_next(now_us, actions);
            }
            // A failure counts only while the attempt is outstanding: after
            // its deadline the attempt was already counted as failed.
            ReplyOutcome::Failed { reason } => {
                if state.deadline_us.is_some() {
                    let reason = bounded_reason(reason);
                    self.compensation_attempt_failed(index, reason, now_us, actions);
                }
            }
        }
    }

    /// The running step's deadline passed: record it and start undoing.
    fn time_out_step(
        &mut self,
        index: usize,
        deadline_us: u64,
        now_us: u64,
        actions: &mut Vec<Action>,
    ) {
        let reason = match self.definition.steps.get(index) {
            Some(step) if deadline_us >= self.deadline_us => format!(
                "no reply from service {:?} to {:?}: the saga's deadline ({} ms after its start) passed",
                step.service, step.command, self.definition.deadline_ms
            ),
            Some(step) => format!(
                "no reply from service {:?} to {:?} within the step's deadline of {} ms",
                step.service, step.command, step.deadline_ms
            ),
            None => "no reply within the deadline".to_string(),
        };
        if let Some(state) = self.steps.get_mut(index) {
            state.status = StepStatus::TimedOut;
            state.deadline_us = None;
            state.reason = Some(reason);
        }
        self.timed_out_step = Some(index);
        actions.push(Action::Record(Transition::StepTimedOut { step: index }));
        self.begin_compensation(now_us, actions);
    }

    /// Queues every step that took (or may have taken) effect, latest
    /// first, and compensates the first of them.
    fn begin_compensation(&mut self, now_us: u64, actions: &mut Vec<Action>) {
        self.status = SagaStatus::Compensating;
        self.compensation_queue = self
            .steps
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, state)| {
                matches!(state.status, StepStatus::Completed | StepStatus::TimedOut)
            })
            .map(|(index, _)| index)
            .collect();
        self.compensate_next(now_us, actions);
    }

    /// Commands the first compensation attempt of the next queued step, or
    /// ends the saga `Compensated` when none is left.
    fn compensate_next(&mut self, now_us: u64, actions: &mut Vec<Action>) {
        while !self.compensation_queue.is_empty() {
            let index = self.compensation_queue.remove(0);
            let Some(definition) = self.definition.steps.get(index) else {
                continue;
            };
            let deadline_us = now_us.saturating_add(ms_to_us(definition.deadline_ms));
            let Some(state) = self.steps.get_mut(index) else {
                continue;
            };
            state.status = StepStatus::Compensating;
            state.attempt = 1;
            state.deadline_us = Some(deadline_us);
            state.retry_at_us = None;
            self.current_step = index;
            actions.push(Action::Command {
                step: index,
                kind: CommandKind::Compensate,
                attempt: 1,
                deadline_us,
            });
            return;
        }
        self.finish(
            SagaStatus::Compensated,
            Transition::Compensated,
            now_us,
            actions,
        );
    }

    /// Commands the next compensation attempt of `index` (its retry is due).
    fn retry_compensation(&mut self, index: usize, now_us: u64, actions: &mut Vec<Action>) {
        let step_deadline_ms = self
            .definition
            .steps
            .get(index)
            .map_or(0, |step| step.deadline_ms);
        let Some(state) = self.steps.get_mut(index) else {
            return;
        };
        state.attempt = state.attempt.saturating_add(1);
        state.retry_at_us = None;
        let deadline_us = now_us.saturating_add(ms_to_us(step_deadline_ms));
        state.deadline_us = Some(deadline_us);
        actions.push(Action::Command {
            step: index,
            kind: CommandKind::Compensate,
            attempt: state.attempt,
            deadline_us,
        });
    }

    /// One compensation attempt of `index` failed (reply or timeout):
    /// schedule the next, or give up and alert when the budget is spent.
    fn compensation_attempt_failed(
        &mut self,
        index: usize,
        reason: String,
        now_us: u64,
        actions: &mut Vec<Action>,
    ) {
        let budget = self.attempt_budget();
        let Some(state) = self.steps.get_mut(index) else {
            return;
        };
        let attempt = state.attempt;
        state.deadline_us = None;
        state.reason = Some(reason.clone());
        actions.push(Action::Record(Transition::CompensationFailed {
            step: index,
            attempt,
            reason,
        }));
        if attempt < budget {
            let delay_ms = self.definition.compensation.backoff_ms(attempt);
            let at_us = now_us.saturating_add(ms_to_us(delay_ms));
            if let Some(state) = self.steps.get_mut(index) {
                state.retry_at_us = Some(at_us);
            }
            actions.push(Action::Record(Transition::CompensationRetryScheduled {
                step: index,
                attempt: attempt.saturating_add(1),
                at_us,
            }));
        } else {
            self.give_up(index, attempt, now_us, actions);
        }
    }

    /// The compensation of `index` exhausted its budget: stop compensating
    /// (earlier steps stay in effect, see the module documentation), end the
    /// saga `Failed` and tell an operator exactly what to undo.
    fn give_up(&mut self, index: usize, attempts: u32, now_us: u64, actions: &mut Vec<Action>) {
        let last_error = match self.steps.get_mut(index) {
            Some(state) => {
                state.status = StepStatus::CompensationFailed;
                state.retry_at_us = None;
                state.reason.clone().unwrap_or_default()
            }
            None => String::new(),
        };
        let step = self.describe_step(index);
        let remaining = self.compensation_queue.len();
        let reason = format!(
            "compensation of step {step} failed {attempts} times (last error: {last_error}); \
             {remaining} earlier step(s) left un-compensated"
        );
        let unknown_outcome = if self.timed_out_step == Some(index) {
            " Its forward command timed out, so check whether it ran at all."
        } else {
            ""
        };
        let rest = if self.compensation_queue.is_empty() {
            " No earlier step remains in effect.".to_string()
        } else {
            let list: Vec<String> = self
                .compensation_queue
                .iter()
                .map(|&earlier| self.describe_step(earlier))
                .collect();
            format!(
                " Compensation stopped there, so these earlier steps remain in effect: \
                 compensate them by hand next, in this order (latest first, as later steps \
                 may depend on earlier ones): {}.",
                list.join(", ")
            )
        };
        let message = format!(
            "saga {} ({}, started by {:?}) needs manual compensation: step {step} could not be \
             compensated after {attempts} attempts (last error: {last_error}).{unknown_outcome} \
             Compensate it by hand first.{rest}",
            self.id, self.saga_type, self.initiator
        );
        self.finish(
            SagaStatus::Failed,
            Transition::Failed { reason },
            now_us,
            actions,
        );
        actions.push(Action::Record(Transition::Alert { message }));
    }

    /// `"name" (#index) on service "svc" with compensation "cmd"`, for
    /// operator messages.
    fn describe_step(&self, index: usize) -> String {
        match self.definition.steps.get(index) {
            Some(step) => format!(
                "{:?} (#{index}) on service {:?} with compensation {:?}",
                step.name, step.service, step.compensation
            ),
            None => format!("#{index}"),
        }
    }

    fn compensation_timeout_reason(&self, index: usize) -> String {
        let attempt = self.steps.get(index).map_or(0, |state| state.attempt);
        match self.definition.steps.get(index) {
            Some(step) => format!(
                "no reply from service {:?} to compensation attempt {attempt} ({:?}) within {} ms",
                step.service, step.compensation, step.deadline_ms
            ),
            None => format!("no reply to compensation attempt {attempt} within its deadline"),
        }
    }

    /// Enters the terminal `status` and records `transition`.
    fn finish(
        &mut self,
        status: SagaStatus,
        transition: Transition,
        now_us: u64,
        actions: &mut Vec<Action>,
    ) {
        self.status = status;
        self.ended_at_us = Some(now_us);
        actions.push(Action::Record(transition));
    }
}

fn ms_to_us(ms: u64) -> u64 {
    ms.saturating_mul(US_PER_MS)
}

/// `reason`, cut to [`REPLY_REASON_BYTES_MAX`] bytes at a character boundary.
fn bounded_reason(reason: &str) -> String {
    if reason.len() <= REPLY_REASON_BYTES_MAX {
        return reason.to_string();
    }
    let mut end = REPLY_REASON_BYTES_MAX.saturating_sub(TRUNCATED_MARKER.len());
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{TRUNCATED_MARKER}", &reason[..end])
}

fn names<const N: usize>(names: [&str; N]) -> String {
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    const T0: u64 = 1_790_000_000_000_000;
    const STEP_MS: u64 = 5_000;
    const SAGA_MS: u64 = 30_000;

    /// Three steps on services a, b, c; 3 attempts, backoff 200 ms doubling
    /// up to 500 ms.
    fn definition(steps: usize) -> SagaDefinition {
        let mut builder = SagaDefinition::builder("NationalAdvocacyCampaign")
            .deadline(Duration::from_millis(SAGA_MS))
            .compensation_attempts(3)
            .backoff(Duration::from_millis(200), Duration::from_millis(500));
        for (i, service) in ["a", "b", "c", "d"].iter().take(steps).enumerate() {
            builder = builder.step(StepDefinition::new(
                format!("step{i}"),
                *service,
                format!("cmd{i}.do"),
                format!("cmd{i}.undo"),
                Duration::from_millis(STEP_MS),
            ));
        }
        builder.build().unwrap()
    }

    fn start(steps: usize) -> Saga {
        let (saga, actions) = Saga::start(
            Uuid::nil(),
            definition(steps),
            json!({"campaign": 7}),
            "orchestrator",
            T0,
        );
        assert_eq!(
            actions,
            [
                Action::Record(Transition::Started),
                Action::Command {
                    step: 0,
                    kind: CommandKind::Do,
                    attempt: 1,
                    deadline_us: T0 + STEP_MS * 1000,
                },
            ]
        );
        saga
    }

    fn reply(step: usize, kind: CommandKind, attempt: u32, ok: bool) -> Reply {
        let outcome = if ok {
            ReplyOutcome::Completed {
                result: json!({"step": step}),
            }
        } else {
            ReplyOutcome::Failed {
                reason: format!("step {step} refused"),
            }
        };
        Reply {
            step,
            kind,
            attempt,
            outcome,
        }
    }

    fn done(step: usize) -> Reply {
        reply(step, CommandKind::Do, 1, true)
    }

    fn do_command(step: usize, deadline_us: u64) -> Action {
        Action::Command {
            step,
            kind: CommandKind::Do,
            attempt: 1,
            deadline_us,
        }
    }

    fn undo_command(step: usize, attempt: u32, deadline_us: u64) -> Action {
        Action::Command {
            step,
            kind: CommandKind::Compensate,
            attempt,
            deadline_us,
        }
    }

    fn record(transition: Transition) -> Action {
        Action::Record(transition)
    }

    #[test]
    fn status_names_round_trip() {
        for status in SagaStatus::ALL {
            assert_eq!(status.as_str().parse::<SagaStatus>(), Ok(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{status}\""));
        }
        for status in StepStatus::ALL {
            assert_eq!(status.as_str().parse::<StepStatus>(), Ok(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{status}\""));
        }
        let err = "done".parse::<SagaStatus>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown saga status \"done\"; expected one of: in_progress, compensating, \
             completed, compensated, failed"
        );
        assert!(!SagaStatus::InProgress.is_terminal());
        assert!(!SagaStatus::Compensating.is_terminal());
        assert!(SagaStatus::Completed.is_terminal());
        assert!(SagaStatus::Compensated.is_terminal());
        assert!(SagaStatus::Failed.is_terminal());
        assert_eq!(serde_json::to_string(&CommandKind::Do).unwrap(), "\"do\"");
    }

    #[test]
    fn all_steps_complete_in_order() {
        let mut saga = start(3);
        assert_eq!(saga.status, SagaStatus::InProgress);
        assert_eq!(saga.deadline_us, T0 + SAGA_MS * 1000);
        assert_eq!(saga.steps[0].status, StepStatus::Running);
        assert_eq!(saga.next_wakeup_us(), Some(T0 + STEP_MS * 1000));

        let now = T0 + 1000;
        assert_eq!(
            saga.on_reply(&done(0), now),
            [
                record(Transition::StepCompleted { step: 0 }),
                do_command(1, now + STEP_MS * 1000)
            ]
        );
        assert_eq!(saga.steps[0].result, Some(json!({"step": 0})));
        assert_eq!(saga.current_step, 1);
        saga.on_reply(&done(1), now + 1);
        assert_eq!(
            saga.on_reply(&done(2), now + 2),
            [
                record(Transition::StepCompleted { step: 2 }),
                record(Transition::Completed)
            ]
        );
        assert_eq!(saga.status, SagaStatus::Completed);
        assert_eq!(saga.ended_at_us, Some(now + 2));
        assert!(saga.is_terminal());
        assert_eq!(saga.next_wakeup_us(), None);
        assert!(saga.steps.iter().all(|s| s.status == StepStatus::Completed));
        assert!(saga.on_tick(u64::MAX).is_empty());
        assert!(saga.on_reply(&done(2), now + 3).is_empty());
    }

    /// A saga of three 5 s steps with a 12 s deadline: the third step gets
    /// only what is left of the saga's time.
    fn start_short() -> Saga {
        let mut short = definition(3);
        short.deadline_ms = 12_000;
        Saga::start(Uuid::nil(), short, json!(null), "o", T0).0
    }

    #[test]
    fn step_deadline_is_capped_by_the_saga_deadline() {
        let mut saga = start_short();
        saga.on_reply(&done(0), T0 + 4_000_000);
        let actions = saga.on_reply(&done(1), T0 + 8_000_000);
        assert_eq!(actions[1], do_command(2, T0 + 12_000_000));
    }

    #[test]
    fn saga_deadline_times_out_the_running_step() {
        let mut saga = start_short();
        saga.on_reply(&done(0), T0 + 4_000_000);
        saga.on_reply(&done(1), T0 + 8_000_000);
        assert!(saga.on_tick(T0 + 12_000_000 - 1).is_empty());
        saga.on_tick(T0 + 12_000_000);
        assert_eq!(saga.steps[2].status, StepStatus::Compensating);
        let reason = saga.steps[2].reason.clone().unwrap();
        assert!(reason.contains("the saga's deadline (12000 ms"), "{reason}");
    }

    #[test]
    fn failure_compensates_earlier_steps_in_reverse() {
        let mut saga = start(4);
        saga.on_reply(&done(0), T0 + 1);
        saga.on_reply(&done(1), T0 + 2);
        saga.on_reply(&done(2), T0 + 3);
        let now = T0 + 4;
        assert_eq!(
            saga.on_reply(&reply(3, CommandKind::Do, 1, false), now),
            [
                record(Transition::StepFailed {
                    step: 3,
                    reason: "step 3 refused".into()
                }),
                undo_command(2, 1, now + STEP_MS * 1000),
            ]
        );
        assert_eq!(saga.status, SagaStatus::Compensating);
        assert_eq!(saga.steps[3].status, StepStatus::Failed);
        assert_eq!(saga.steps[3].reason.as_deref(), Some("step 3 refused"));
        assert_eq!(saga.steps[2].status, StepStatus::Compensating);
        assert_eq!(saga.pending_compensations(), [1, 0]);
        assert_eq!(
            saga.command_type(2, CommandKind::Compensate),
            Some("cmd2.undo")
        );

        assert_eq!(
            saga.on_reply(&reply(2, CommandKind::Compensate, 1, true), now + 1),
            [
                record(Transition::StepCompensated { step: 2 }),
                undo_command(1, 1, now + 1 + STEP_MS * 1000),
            ]
        );
        saga.on_reply(&reply(1, CommandKind::Compensate, 1, true), now + 2);
        assert_eq!(
            saga.on_reply(&reply(0, CommandKind::Compensate, 1, true), now + 3),
            [
                record(Transition::StepCompensated { step: 0 }),
                record(Transition::Compensated),
            ]
        );
        assert_eq!(saga.status, SagaStatus::Compensated);
        assert_eq!(saga.ended_at_us, Some(now + 3));
        let statuses: Vec<StepStatus> = saga.steps.iter().map(|s| s.status).collect();
        assert_eq!(
            statuses,
            [
                StepStatus::Compensated,
                StepStatus::Compensated,
                StepStatus::Compensated,
                StepStatus::Failed
            ]
        );
    }

    #[test]
    fn first_step_failing_leaves_nothing_to_compensate() {
        let mut saga = start(2);
        assert_eq!(
            saga.on_reply(&reply(0, CommandKind::Do, 1, false), T0 + 5),
            [
                record(Transition::StepFailed {
                    step: 0,
                    reason: "step 0 refused".into()
                }),
                record(Transition::Compensated),
            ]
        );
        assert_eq!(saga.status, SagaStatus::Compensated);
        assert_eq!(saga.steps[1].status, StepStatus::Pending);
    }

    #[test]
    fn timed_out_step_is_compensated_first() {
        let mut saga = start(3);
        saga.on_reply(&done(0), T0);
        let deadline = T0 + STEP_MS * 1000;
        assert!(saga.on_tick(deadline - 1).is_empty());
        assert_eq!(
            saga.on_tick(deadline),
            [
                record(Transition::StepTimedOut { step: 1 }),
                undo_command(1, 1, deadline + STEP_MS * 1000),
            ]
        );
        assert_eq!(saga.steps[2].status, StepStatus::Pending);
        assert_eq!(saga.pending_compensations(), [0]);
        let reason = saga.steps[1].reason.clone().unwrap();
        assert!(
            reason.contains("within the step's deadline of 5000 ms"),
            "{reason}"
        );
    }

    #[test]
    fn a_reply_after_the_deadline_is_late_even_without_a_tick() {
        let mut saga = start(2);
        let deadline = T0 + STEP_MS * 1000;
        assert_eq!(
            saga.on_reply(&done(0), deadline),
            [
                record(Transition::StepTimedOut { step: 0 }),
                undo_command(0, 1, deadline + STEP_MS * 1000),
                record(Transition::LateCompletion { step: 0 }),
            ]
        );
        assert!(saga.steps[0].completed_late);
        assert_eq!(saga.steps[0].result, None);
    }

    #[test]
    fn late_completion_is_noted_once_and_changes_nothing_else() {
        let mut saga = start(2);
        saga.on_tick(u64::MAX / 2);
        let before = saga.clone();
        assert_eq!(
            saga.on_reply(&done(0), u64::MAX / 2 + 1),
            [record(Transition::LateCompletion { step: 0 })]
        );
        assert!(saga.steps[0].completed_late);
        assert_eq!(saga.steps[0].status, StepStatus::Compensating);
        assert!(saga.on_reply(&done(0), u64::MAX / 2 + 2).is_empty());
        let mut expected = before;
        expected.steps[0].completed_late = true;
        expected.late_reply_seen = true;
        assert_eq!(saga, expected);
        // After compensation the late step is Compensated as usual.
        saga.on_reply(
            &reply(0, CommandKind::Compensate, 1, true),
            u64::MAX / 2 + 3,
        );
        assert_eq!(saga.status, SagaStatus::Compensated);
        assert_eq!(saga.steps[0].status, StepStatus::Compensated);
    }

    #[test]
    fn late_failure_of_a_timed_out_step_only_notes_the_reason() {
        let mut saga = start(2);
        saga.on_tick(T0 + STEP_MS * 1000);
        let actions = saga.on_reply(&reply(0, CommandKind::Do, 1, false), T0 + STEP_MS * 1000);
        assert!(actions.is_empty());
        assert_eq!(
            saga.steps[0].reason.as_deref(),
            Some("timed out; the service later reported failure: step 0 refused")
        );
        assert_eq!(saga.steps[0].status, StepStatus::Compensating);
        assert!(!saga.steps[0].completed_late);
    }

    #[test]
    fn completed_step_replies_during_compensation_are_duplicates() {
        let mut saga = start(2);
        saga.on_reply(&done(0), T0);
        saga.on_reply(&reply(1, CommandKind::Do, 1, false), T0 + 1);
        assert_eq!(saga.steps[0].status, StepStatus::Compensating);
        assert!(saga.on_reply(&done(0), T0 + 2).is_empty());
        assert!(!saga.steps[0].completed_late);
    }

    #[test]
    fn unexpected_replies_are_ignored() {
        let mut saga = start(3);
        let before = saga.clone();
        let ignored = [
            reply(0, CommandKind::Do, 0, true),
            reply(0, CommandKind::Do, 2, true),
            reply(1, CommandKind::Do, 1, true),
            reply(2, CommandKind::Do, 1, false),
            reply(0, CommandKind::Compensate, 1, true),
            reply(usize::MAX, CommandKind::Do, 1, true),
            reply(3, CommandKind::Compensate, 1, false),
        ];
        for r in &ignored {
            assert!(saga.on_reply(r, T0 + 1).is_empty(), "{r:?}");
        }
        assert_eq!(saga, before);
        saga.on_reply(&done(0), T0 + 2);
        let before = saga.clone();
        assert!(saga.on_reply(&done(0), T0 + 3).is_empty());
        assert!(
            saga.on_reply(&reply(0, CommandKind::Do, 1, false), T0 + 3)
                .is_empty()
        );
        assert_eq!(saga, before);
    }

    #[test]
    fn compensation_retries_with_backoff_then_succeeds() {
        let mut saga = start(2);
        saga.on_reply(&done(0), T0);
        saga.on_reply(&reply(1, CommandKind::Do, 1, false), T0);
        // Attempt 1 fails by reply.
        let now = T0 + 10;
        assert_eq!(
            saga.on_reply(&reply(0, CommandKind::Compensate, 1, false), now),
            [
                record(Transition::CompensationFailed {
                    step: 0,
                    attempt: 1,
                    reason: "step 0 refused".into()
                }),
                record(Transition::CompensationRetryScheduled {
                    step: 0,
                    attempt: 2,
                    at_us: now + 200_000
                }),
            ]
        );
        assert_eq!(saga.steps[0].deadline_us, None);
        assert_eq!(saga.next_wakeup_us(), Some(now + 200_000));
        // A duplicate failure is not counted twice.
        assert!(
            saga.on_reply(&reply(0, CommandKind::Compensate, 1, false), now + 1)
                .is_empty()
        );
        assert!(saga.on_tick(now + 199_999).is_empty());
        let retry = now + 200_000;
        assert_eq!(
            saga.on_tick(retry),
            [undo_command(0, 2, retry + STEP_MS * 1000)]
        );
        // Attempt 2 times out; the backoff doubles.
        let timeout = retry + STEP_MS * 1000;
        let actions = saga.on_tick(timeout);
        assert!(matches!(
            &actions[0],
            Action::Record(Transition::CompensationFailed { step: 0, attempt: 2, reason })
                if reason.contains("compensation attempt 2")
        ));
        assert_eq!(
            actions[1],
            record(Transition::CompensationRetryScheduled {
                step: 0,
                attempt: 3,
                at_us: timeout + 400_000
            })
        );
        // A stale attempt's success is ignored, the current one's counts.
        assert!(
            saga.on_reply(&reply(0, CommandKind::Compensate, 1, true), timeout)
                .is_empty()
        );
        assert_eq!(
            saga.on_reply(&reply(0, CommandKind::Compensate, 2, true), timeout + 1),
            [
                record(Transition::StepCompensated { step: 0 }),
                record(Transition::Compensated),
            ]
        );
        assert_eq!(saga.steps[0].retry_at_us, None);
    }

    #[test]
    fn exhausted_compensation_stops_fails_and_alerts_once() {
        let mut saga = start(3);
        saga.on_reply(&done(0), T0);
        saga.on_reply(&done(1), T0);
        saga.on_reply(&reply(2, CommandKind::Do, 1, false), T0);
        let mut now = T0;
        let mut commands = 0;
        let mut all = Vec::new();
        for attempt in 1..=3 {
            let actions = saga.on_reply(&reply(1, CommandKind::Compensate, attempt, false), now);
            all.extend(actions.clone());
            if attempt < 3 {
                now += 1_000_000;
                let actions = saga.on_tick(now);
                assert_eq!(actions.len(), 1, "{actions:?}");
                commands += 1;
                all.extend(actions);
            }
        }
        assert_eq!(commands, 2);
        assert_eq!(saga.status, SagaStatus::Failed);
        assert_eq!(saga.steps[1].status, StepStatus::CompensationFailed);
        assert_eq!(saga.steps[0].status, StepStatus::Completed);
        assert_eq!(saga.pending_compensations(), [0]);
        assert_eq!(saga.ended_at_us, Some(now));
        let failed: Vec<&Action> = all
            .iter()
            .filter(|a| matches!(a, Action::Record(Transition::Failed { .. })))
            .collect();
        assert_eq!(failed.len(), 1);
        let alerts: Vec<&String> = all
            .iter()
            .filter_map(|a| match a {
                Action::Record(Transition::Alert { message }) => Some(message),
                _ => None,
            })
            .collect();
        assert_eq!(alerts.len(), 1);
        let message = alerts[0];
        for needle in [
            "step \"step1\" (#1) on service \"b\" with compensation \"cmd1.undo\"",
            "after 3 attempts",
            "step 1 refused",
            "\"step0\" (#0) on service \"a\" with compensation \"cmd0.undo\"",
            "in this order",
        ] {
            assert!(message.contains(needle), "{needle:?} not in {message}");
        }
        assert!(matches!(
            all.last(),
            Some(Action::Record(Transition::Alert { .. }))
        ));
        assert!(saga.on_tick(u64::MAX).is_empty());
        assert!(
            saga.on_reply(&reply(1, CommandKind::Compensate, 3, true), now)
                .is_empty()
        );
        assert_eq!(saga.next_wakeup_us(), None);
    }

    #[test]
    fn one_tick_far_in_the_future_runs_everything_due() {
        let mut saga = start(3);
        saga.on_reply(&done(0), T0);
        let actions = saga.on_tick(u64::MAX);
        let compensations = actions
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::Command {
                        kind: CommandKind::Compensate,
                        ..
                    }
                )
            })
            .count();
        // Step 1 timed out; its 3 attempts time out; compensation stops there.
        assert_eq!(compensations, 3);
        assert_eq!(saga.status, SagaStatus::Failed);
        assert_eq!(saga.steps[0].status, StepStatus::Completed);
        assert_eq!(saga.next_wakeup_us(), None);
        let alert = actions.iter().find_map(|a| match a {
            Action::Record(Transition::Alert { message }) => Some(message.clone()),
            _ => None,
        });
        assert!(
            alert
                .unwrap()
                .contains("timed out, so check whether it ran"),
            "{actions:?}"
        );
    }

    #[test]
    fn ticks_alone_terminate_within_the_bound() {
        let mut saga = start(3);
        let mut now = T0;
        let mut ticks = 0;
        while let Some(wakeup) = saga.next_wakeup_us() {
            assert!(wakeup >= now);
            now = wakeup;
            saga.on_tick(now);
            ticks += 1;
            assert!(ticks < 100);
        }
        assert_eq!(saga.status, SagaStatus::Failed);
        // Step 0 timed out at 5 s; 3 attempts of 5 s with 200 + 400 ms between.
        assert_eq!(now, T0 + (STEP_MS * 4 + 600) * 1000);
    }

    #[test]
    fn extreme_times_saturate_instead_of_overflowing() {
        let (mut saga, actions) =
            Saga::start(Uuid::nil(), definition(2), json!(null), "o", u64::MAX - 1);
        assert_eq!(saga.deadline_us, u64::MAX);
        assert_eq!(actions[1], do_command(0, u64::MAX));
        saga.on_tick(u64::MAX);
        assert!(saga.is_terminal());
    }

    #[test]
    fn unvalidated_definitions_do_not_panic_or_hang() {
        let mut empty = definition(1);
        empty.steps.clear();
        let (saga, actions) = Saga::start(Uuid::nil(), empty, json!(null), "o", T0);
        assert_eq!(actions.last(), Some(&record(Transition::Completed)));
        assert!(saga.is_terminal());

        let mut zero = definition(2);
        zero.compensation.attempts = 0;
        zero.compensation.backoff_initial_ms = 0;
        zero.compensation.backoff_max_ms = 0;
        zero.steps[0].deadline_ms = 0;
        zero.deadline_ms = 0;
        let (mut saga, _) = Saga::start(Uuid::nil(), zero.clone(), json!(null), "o", T0);
        saga.on_tick(T0);
        assert_eq!(saga.status, SagaStatus::Failed);

        zero.compensation.attempts = u32::MAX;
        let (mut saga, _) = Saga::start(Uuid::nil(), zero, json!(null), "o", T0);
        let actions = saga.on_tick(T0);
        let commands = actions
            .iter()
            .filter(|a| matches!(a, Action::Command { .. }))
            .count();
        assert_eq!(commands, COMPENSATION_ATTEMPTS_MAX as usize);

        let mut truncated = start(3);
        truncated.steps.truncate(1);
        truncated.on_reply(&done(0), T0);
        truncated.on_tick(u64::MAX);
        truncated.on_reply(&reply(5, CommandKind::Compensate, 1, true), u64::MAX);
    }

    #[test]
    fn long_reasons_are_cut_at_a_character_boundary() {
        let mut saga = start(1);
        let reason = "é".repeat(REPLY_REASON_BYTES_MAX);
        let r = Reply {
            step: 0,
            kind: CommandKind::Do,
            attempt: 1,
            outcome: ReplyOutcome::Failed { reason },
        };
        saga.on_reply(&r, T0);
        let kept = saga.steps[0].reason.clone().unwrap();
        assert!(kept.len() <= REPLY_REASON_BYTES_MAX, "{}", kept.len());
        assert!(kept.ends_with(TRUNCATED_MARKER));
    }

    #[test]
    fn serde_round_trip_resumes_identically() {
        let mut saga = start(3);
        saga.on_reply(&done(0), T0);
        saga.on_reply(&reply(1, CommandKind::Do, 1, false), T0 + 1);
        saga.on_reply(&reply(0, CommandKind::Compensate, 1, false), T0 + 2);
        let json = serde_json::to_string(&saga).unwrap();
        let mut resumed: Saga = serde_json::from_str(&json).unwrap();
        assert_eq!(resumed, saga);
        assert_eq!(resumed.on_tick(u64::MAX), saga.on_tick(u64::MAX));
        assert_eq!(resumed, saga);
    }
}
