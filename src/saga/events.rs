//! The signed events that record a saga (docs/SAGAS.md lists them).
//!
//! Every event carries its routing and timeline fields in cleartext,
//! signed metadata (`saga_id`, `step`, `kind`, `attempt`, ...), so an
//! auditor holding only the CA certificate can rebuild a saga's timeline;
//! the payload (inputs, results, reasons) is JSON encrypted under the
//! channel key like any other payload.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::machine::{CommandKind, ReplyOutcome, Transition};
use crate::core::crypto::ChannelKey;
use crate::core::event::EventHeader;
use crate::core::verify::decrypt_payload;

/// Prefix of every saga event type.
pub const SAGA_EVENT_PREFIX: &str = "herald.saga.";
/// The orchestrator started a saga.
pub const STARTED: &str = "herald.saga.started";
/// The orchestrator commands a step (or its compensation) of a service.
pub const COMMAND: &str = "herald.saga.command";
/// A participant answers a command: completed or failed.
pub const REPLY: &str = "herald.saga.reply";

/// Metadata keys saga events use.
pub mod meta {
    pub const SAGA_ID: &str = "saga_id";
    pub const SAGA_TYPE: &str = "saga_type";
    pub const STEP: &str = "step";
    pub const STEP_NAME: &str = "step_name";
    pub const SERVICE: &str = "service";
    pub const COMMAND: &str = "command";
    pub const KIND: &str = "kind";
    pub const ATTEMPT: &str = "attempt";
    pub const DEADLINE_US: &str = "deadline_us";
    pub const OUTCOME: &str = "outcome";
    pub const COMMAND_ID: &str = "command_id";
    pub const ORCHESTRATOR: &str = "orchestrator";
    pub const TRANSITION: &str = "transition";
}

/// What a participant receives (the command event's payload, and the
/// stdin of an executable handler).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandPayload {
    pub saga_id: Uuid,
    pub saga_type: String,
    pub step: usize,
    pub step_name: String,
    /// The command type to run (the step's command or its compensation).
    pub command: String,
    pub kind: CommandKind,
    pub attempt: u32,
    /// When the orchestrator stops waiting (microseconds since the epoch).
    pub deadline_us: u64,
    /// The saga's input.
    pub input: serde_json::Value,
    /// Results of the steps completed so far, by step name.
    pub results: BTreeMap<String, serde_json::Value>,
}

/// A participant's answer (the reply event's payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyPayload {
    pub saga_id: Uuid,
    pub step: usize,
    pub kind: CommandKind,
    pub attempt: u32,
    /// The command event this answers.
    pub command_id: Uuid,
    pub outcome: ReplyOutcome,
}

/// The event type recording an orchestrator transition.
pub fn transition_event_type(transition: &Transition) -> &'static str {
    match transition {
        Transition::Started => STARTED,
        Transition::StepCompleted { .. } => "herald.saga.step_completed",
        Transition::StepFailed { .. } => "herald.saga.step_failed",
        Transition::StepTimedOut { .. } => "herald.saga.step_timed_out",
        Transition::LateCompletion { .. } => "herald.saga.late_completion",
        Transition::CompensationFailed { .. } => "herald.saga.compensation_failed",
        Transition::CompensationRetryScheduled { .. } => "herald.saga.compensation_retry",
        Transition::StepCompensated { .. } => "herald.saga.step_compensated",
        Transition::Completed => "herald.saga.completed",
        Transition::Compensated => "herald.saga.compensated",
        Transition::Failed { .. } => "herald.saga.failed",
        Transition::Alert { .. } => "herald.saga.alert",
    }
}

/// The step a transition concerns, if any.
pub fn transition_step(transition: &Transition) -> Option<usize> {
    match transition {
        Transition::StepCompleted { step }
        | Transition::StepFailed { step, .. }
        | Transition::StepTimedOut { step }
        | Transition::LateCompletion { step }
        | Transition::CompensationFailed { step, .. }
        | Transition::CompensationRetryScheduled { step, .. }
        | Transition::StepCompensated { step } => Some(*step),
        Transition::Started
        | Transition::Completed
        | Transition::Compensated
        | Transition::Failed { .. }
        | Transition::Alert { .. } => None,
    }
}

/// The command kind as it appears in metadata.
pub fn kind_str(kind: CommandKind) -> &'static str {
    match kind {
        CommandKind::Do => "do",
        CommandKind::Compensate => "compensate",
    }
}

/// Parses [`kind_str`]'s output.
pub fn parse_kind(text: &str) -> Option<CommandKind> {
    match text {
        "do" => Some(CommandKind::Do),
        "compensate" => Some(CommandKind::Compensate),
        _ => None,
    }
}

/// A stored event's payload, decrypted, parsed as JSON of type `T`.
pub fn decode_payload<T: serde::de::DeserializeOwned>(
    header: &EventHeader,
    envelope: &[u8],
    keys: &[ChannelKey],
) -> Result<T, String> {
    let (env, _) = crate::core::codec::decode_envelope(envelope).map_err(|e| e.to_string())?;
    let stored = env
        .payload
        .ok_or_else(|| format!("{} event has no payload (pruned)", header.event_type))?;
    let plain = decrypt_payload(header, &stored, keys).map_err(|e| e.to_string())?;
    serde_json::from_slice(&plain).map_err(|e| {
        format!(
            "{} payload is not the expected JSON: {e}",
            header.event_type
        )
    })
}

/// The saga id in an event's metadata.
pub fn saga_id_of(header: &EventHeader) -> Option<Uuid> {
    header
        .meta_value(meta::SAGA_ID)
        .and_then(|s| Uuid::parse_str(s).ok())
}
