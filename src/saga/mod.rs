//! Sagas: multi-step operations across services, undone in reverse order
//! when a step fails.
//!
//! One node, the orchestrator, drives a saga by proclaiming a command event
//! addressed to each step's service in turn; the service replies with a
//! completed or failed event. When a step fails or times out, the steps that
//! took effect are compensated in strict reverse order, each compensation
//! retried with backoff up to a budget. Every saga reaches a terminal state:
//! there are no zombie sagas and no endless compensation loops.
//!
//! The sans-IO part, with no clock, IO or randomness:
//!
//! * [`definition`]: what a saga does ([`SagaDefinition`]), from TOML or a
//!   builder, validated up front.
//! * [`machine`]: the state machine ([`Saga`]) that turns replies and the
//!   current time into [`Action`]s for the orchestrator to carry out.
//!
//! The shell around it (docs/SAGAS.md):
//!
//! * [`events`]: the signed events that record every transition.
//! * [`orchestrator`]: drives the sagas a node starts, persisting each
//!   transition with its events in one transaction.
//! * [`participant`]: runs the commands addressed to a node, at most once.
//!
//! A saga's timeline is rebuilt offline from a verified export by
//! [`crate::audit::saga_history`], in the audit layer above this one.

pub mod definition;
pub mod events;
pub(crate) mod exec;
pub mod machine;
pub mod orchestrator;
pub mod participant;

pub use definition::{
    COMPENSATION_ATTEMPTS_MAX, CompensationPolicy, DefinitionError, SAGA_DEADLINE_MS_MAX,
    SAGA_NAME_BYTES_MAX, SAGA_STEPS_MAX, SagaBuilder, SagaDefinition, StepDefinition,
};
pub use events::{CommandPayload, ReplyPayload};
pub use machine::{
    Action, CommandKind, ParseStatusError, Reply, ReplyOutcome, Saga, SagaStatus, StepState,
    StepStatus, Transition,
};
pub use orchestrator::SagaError;
