//! Saga definitions: which steps a saga runs, on which services, with which
//! deadlines, and how hard the orchestrator tries to undo completed steps.
//!
//! A definition is plain data, written in TOML by whoever designs the saga
//! and checked once, up front, by [`SagaDefinition::validate`], so the state
//! machine never has to cope with a nonsensical plan at run time:
//!
//! ```toml
//! saga_type = "NationalAdvocacyCampaign"
//! deadline_ms = 30000
//! [compensation]
//! attempts = 3
//! backoff_initial_ms = 200
//! backoff_max_ms = 2000
//! [[steps]]
//! name = "secure_media"
//! service = "b"
//! command = "media.secure"
//! compensation = "media.release"
//! deadline_ms = 5000
//! ```
//!
//! The same definition in code:
//!
//! ```
//! use std::time::Duration;
//! use herald::saga::{SagaDefinition, StepDefinition};
//!
//! let definition = SagaDefinition::builder("NationalAdvocacyCampaign")
//!     .deadline(Duration::from_secs(30))
//!     .compensation_attempts(3)
//!     .backoff(Duration::from_millis(200), Duration::from_secs(2))
//!     .step(StepDefinition::new(
//!         "secure_media",
//!         "b",
//!         "media.secure",
//!         "media.release",
//!         Duration::from_secs(5),
//!     ))
//!     .build()?;
//! assert_eq!(definition.steps.len(), 1);
//! # Ok::<(), herald::saga::DefinitionError>(())
//! ```
//!
//! In error messages a step is named by its name and its index `#N`, counted
//! from 0: the same number saga commands, replies and records carry.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::codec::check_service_name;
use crate::core::event::RESERVED_TYPE_PREFIX;

/// Most steps in one saga. Steps run one at a time, so a longer saga is
/// better split; the bound also keeps every saga's state small.
pub const SAGA_STEPS_MAX: usize = 32;
/// Longest saga type, step name or command type, in bytes (the same bound as
/// an event type, since command types become event types).
pub const SAGA_NAME_BYTES_MAX: usize = 128;
/// Longest deadline (of a saga, a step attempt or a backoff): one week. A
/// saga still waiting after a week is stuck, not slow.
pub const SAGA_DEADLINE_MS_MAX: u64 = 7 * 24 * 3600 * 1000;
/// Most attempts to run one compensation. The bound keeps the time a failed
/// saga needs to reach its terminal state finite and predictable.
pub const COMPENSATION_ATTEMPTS_MAX: u32 = 100;
/// Compensation attempts per step when a definition names none.
pub const COMPENSATION_ATTEMPTS_DEFAULT: u32 = 3;
/// Delay before the second compensation attempt when a definition names none.
pub const BACKOFF_INITIAL_MS_DEFAULT: u64 = 200;
/// Longest delay between compensation attempts when a definition names none.
pub const BACKOFF_MAX_MS_DEFAULT: u64 = 5000;

/// A saga's plan: its steps in order, the deadline of the whole saga and the
/// compensation policy shared by all steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaDefinition {
    /// What kind of saga this is (`NationalAdvocacyCampaign`).
    pub saga_type: String,
    /// Deadline of the whole forward run, from the start, in milliseconds.
    /// Compensation is not bound by it: undoing must be allowed to finish.
    pub deadline_ms: u64,
    /// How compensations are retried; the defaults when absent.
    #[serde(default)]
    pub compensation: CompensationPolicy,
    /// The steps, run one at a time in this order.
    pub steps: Vec<StepDefinition>,
}

/// One step: a command a service runs, and the command that undoes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDefinition {
    /// Unique within the saga; used in records and operator alerts.
    pub name: String,
    /// The service (node) that runs the step: a DNS label, 1 to 63 bytes of
    /// `a-z 0-9 -`, not starting or ending with `-`.
    pub service: String,
    /// Command type of the forward action (`media.secure`).
    pub command: String,
    /// Command type of the compensating action (`media.release`).
    pub compensation: String,
    /// Deadline of one attempt of this step, and of each of its compensation
    /// attempts, in milliseconds.
    pub deadline_ms: u64,
}

/// How the orchestrator retries a compensation that failed or got no reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompensationPolicy {
    /// Most attempts per compensation (at least 1). When every attempt
    /// fails the saga ends `Failed` and an operator is alerted.
    pub attempts: u32,
    /// Delay after the first failed attempt, in milliseconds; it doubles
    /// after each further failure.
    pub backoff_initial_ms: u64,
    /// Longest delay between attempts, in milliseconds (at least the initial).
    pub backoff_max_ms: u64,
}

impl Default for CompensationPolicy {
    fn default() -> Self {
        CompensationPolicy {
            attempts: COMPENSATION_ATTEMPTS_DEFAULT,
            backoff_initial_ms: BACKOFF_INITIAL_MS_DEFAULT,
            backoff_max_ms: BACKOFF_MAX_MS_DEFAULT,
        }
    }
}

impl CompensationPolicy {
    /// The delay, in milliseconds, before attempt `attempt + 1` once attempt
    /// `attempt` (counted from 1) has failed: `backoff_initial_ms * 2^(attempt - 1)`,
    /// capped at `backoff_max_ms`. Exponential, so a struggling service is
    /// not hammered; capped and overflow-free, so the delay stays bounded
    /// for any attempt number. Attempt 0 is treated as attempt 1.
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let doublings = attempt.saturating_sub(1);
        let delay = 1u64
            .checked_shl(doublings)
            .and_then(|factor| self.backoff_initial_ms.checked_mul(factor))
            .unwrap_or(u64::MAX);
        delay.min(self.backoff_max_ms)
    }
}

/// Why a saga definition was rejected. Each message names the saga or step
/// and field at fault and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    /// The TOML text does not parse or does not have the expected shape; the
    /// message is the toml crate's, with line and column.
    #[error("saga definition is not valid TOML: {message}")]
    Parse { message: String },
    /// A saga-level field breaks a rule.
    #[error("saga {saga_type:?}: {message}")]
    Saga {
        saga_type: String,
        field: &'static str,
        message: String,
    },
    /// The saga has no steps or too many.
    #[error("saga {saga_type:?}: has {count} steps, but a saga needs 1..={SAGA_STEPS_MAX}")]
    StepCount { saga_type: String, count: usize },
    /// A step field breaks a rule. `index` counts from 0.
    #[error("step {name:?} (#{index}): {message}")]
    Step {
        index: usize,
        name: String,
        field: &'static str,
        message: String,
    },
    /// Two steps share a name, so records and alerts could not tell them apart.
    #[error(
        "step {name:?} (#{index}): name is already used by step #{first}; step names must be unique"
    )]
    DuplicateStepName {
        index: usize,
        first: usize,
        name: String,
    },
}

impl SagaDefinition {
    /// Starts building a definition in code; see [`SagaBuilder`].
    pub fn builder(saga_type: impl Into<String>) -> SagaBuilder {
        SagaBuilder {
            saga_type: saga_type.into(),
            deadline_ms: None,
            compensation: CompensationPolicy::default(),
            steps: Vec::new(),
        }
    }

    /// Parses and validates a definition written in TOML (format in the
    /// module documentation). Unknown fields are rejected, so a typo cannot
    /// silently fall back to a default.
    pub fn from_toml(text: &str) -> Result<SagaDefinition, DefinitionError> {
        let definition: SagaDefinition =
            toml::from_str(text).map_err(|e| DefinitionError::Parse {
                message: crate::identity::describe_toml_error(text, &e),
            })?;
        definition.validate()?;
        Ok(definition)
    }

    /// Writes the definition as TOML that [`SagaDefinition::from_toml`] reads
    /// back (for a valid definition).
    pub fn to_toml(&self) -> String {
        // Strings, integers, tables and arrays of tables: nothing here that
        // TOML cannot represent, so serialising cannot fail.
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks every rule of a definition; returns the first broken one. Run
    /// by [`SagaBuilder::build`] and [`SagaDefinition::from_toml`], and by
    /// anyone who builds a definition field by field.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        let saga_error = |field: &'static str, message: String| DefinitionError::Saga {
            saga_type: self.saga_type.clone(),
            field,
            message,
        };
        check_name(&self.saga_type)
            .map_err(|rule| saga_error("saga_type", format!("saga_type {rule}")))?;
        check_deadline_ms(self.deadline_ms).map_err(|rule| saga_error("deadline_ms", rule))?;
        let policy = &self.compensation;
        if !(1..=COMPENSATION_ATTEMPTS_MAX).contains(&policy.attempts) {
            return Err(saga_error(
                "compensation.attempts",
                format!(
                    "compensation.attempts {} is not in 1..={COMPENSATION_ATTEMPTS_MAX}",
                    policy.attempts
                ),
            ));
        }
        if policy.backoff_initial_ms == 0 {
            return Err(saga_error(
                "compensation.backoff_initial_ms",
                "compensation.backoff_initial_ms must be at least 1, so retries do not \
                 hammer a failing service"
                    .into(),
            ));
        }
        if !(policy.backoff_initial_ms..=SAGA_DEADLINE_MS_MAX).contains(&policy.backoff_max_ms) {
            return Err(saga_error(
                "compensation.backoff_max_ms",
                format!(
                    "compensation.backoff_max_ms {} is not in {}..={SAGA_DEADLINE_MS_MAX} \
                     (at least backoff_initial_ms, at most one week)",
                    policy.backoff_max_ms, policy.backoff_initial_ms
                ),
            ));
        }
        if self.steps.is_empty() || self.steps.len() > SAGA_STEPS_MAX {
            return Err(DefinitionError::StepCount {
                saga_type: self.saga_type.clone(),
                count: self.steps.len(),
            });
        }
        let mut first_index: HashMap<&str, usize> = HashMap::with_capacity(self.steps.len());
        for (index, step) in self.steps.iter().enumerate() {
            step.validate(index)?;
            if let Some(&first) = first_index.get(step.name.as_str()) {
                return Err(DefinitionError::DuplicateStepName {
                    index,
                    first,
                    name: step.name.clone(),
                });
            }
            first_index.insert(&step.name, index);
        }
        Ok(())
    }

    /// The deadline of the whole saga as a [`Duration`].
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }
}

impl StepDefinition {
    /// A step; `deadline` is truncated to whole milliseconds.
    pub fn new(
        name: impl Into<String>,
        service: impl Into<String>,
        command: impl Into<String>,
        compensation: impl Into<String>,
        deadline: Duration,
    ) -> StepDefinition {
        StepDefinition {
            name: name.into(),
            service: service.into(),
            command: command.into(),
            compensation: compensation.into(),
            deadline_ms: duration_ms(deadline),
        }
    }

    /// Checks this step's own fields (`index` only names it in errors).
    fn validate(&self, index: usize) -> Result<(), DefinitionError> {
        let step_error = |field: &'static str, message: String| DefinitionError::Step {
            index,
            name: self.name.clone(),
            field,
            message,
        };
        check_name(&self.name).map_err(|rule| step_error("name", format!("name {rule}")))?;
        check_service_name(&self.service)
            .map_err(|rule| step_error("service", format!("service: {rule}")))?;
        check_command_type(&self.command)
            .map_err(|rule| step_error("command", format!("command {rule}")))?;
        check_command_type(&self.compensation)
            .map_err(|rule| step_error("compensation", format!("compensation {rule}")))?;
        check_deadline_ms(self.deadline_ms).map_err(|rule| step_error("deadline_ms", rule))?;
        Ok(())
    }
}

/// Builds a [`SagaDefinition`] in code; [`SagaBuilder::build`] validates it.
#[derive(Debug, Clone)]
pub struct SagaBuilder {
    saga_type: String,
    /// `None` until [`SagaBuilder::deadline`]: a saga without a deadline
    /// could run forever, so there is no default.
    deadline_ms: Option<u64>,
    compensation: CompensationPolicy,
    steps: Vec<StepDefinition>,
}

impl SagaBuilder {
    /// Deadline of the whole forward run (required), truncated to whole
    /// milliseconds.
    pub fn deadline(mut self, deadline: Duration) -> SagaBuilder {
        self.deadline_ms = Some(duration_ms(deadline));
        self
    }

    /// Most attempts per compensation; default [`COMPENSATION_ATTEMPTS_DEFAULT`].
    pub fn compensation_attempts(mut self, attempts: u32) -> SagaBuilder {
        self.compensation.attempts = attempts;
        self
    }

    /// Delay after the first failed compensation attempt and the cap it
    /// doubles up to; defaults [`BACKOFF_INITIAL_MS_DEFAULT`] and
    /// [`BACKOFF_MAX_MS_DEFAULT`] ms.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> SagaBuilder {
        self.compensation.backoff_initial_ms = duration_ms(initial);
        self.compensation.backoff_max_ms = duration_ms(max);
        self
    }

    /// Appends a step; steps run in the order they are added.
    pub fn step(mut self, step: StepDefinition) -> SagaBuilder {
        self.steps.push(step);
        self
    }

    /// The validated definition.
    pub fn build(self) -> Result<SagaDefinition, DefinitionError> {
        let Some(deadline_ms) = self.deadline_ms else {
            return Err(DefinitionError::Saga {
                saga_type: self.saga_type,
                field: "deadline_ms",
                message: "no deadline set; call .deadline(..) so the saga cannot run forever"
                    .into(),
            });
        };
        let definition = SagaDefinition {
            saga_type: self.saga_type,
            deadline_ms,
            compensation: self.compensation,
            steps: self.steps,
        };
        definition.validate()?;
        Ok(definition)
    }
}

/// Whole milliseconds of `duration`, saturating (validation then rejects
/// anything over [`SAGA_DEADLINE_MS_MAX`]).
fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A deadline must be positive (zero would expire before anyone could
/// answer) and at most [`SAGA_DEADLINE_MS_MAX`].
fn check_deadline_ms(deadline_ms: u64) -> Result<(), String> {
    if (1..=SAGA_DEADLINE_MS_MAX).contains(&deadline_ms) {
        Ok(())
    } else {
        Err(format!(
            "deadline_ms {deadline_ms} is not in 1..={SAGA_DEADLINE_MS_MAX}"
        ))
    }
}

/// Saga types, step names and command types: 1 to [`SAGA_NAME_BYTES_MAX`]
/// bytes of `A-Z a-z 0-9 . _ -`, safe in event types, logs and file names.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > SAGA_NAME_BYTES_MAX {
        return Err(format!(
            "{name:?} must be 1..={SAGA_NAME_BYTES_MAX} bytes, found {}",
            name.len()
        ));
    }
    let valid = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        return Err(format!(
            "{name:?} may use only the characters A-Z a-z 0-9 . _ -"
        ));
    }
    Ok(())
}

/// A command type is a name that is not in the `herald.` namespace, which
/// is reserved for the system's own event types.
fn check_command_type(command: &str) -> Result<(), String> {
    check_name(command)?;
    if command.starts_with(RESERVED_TYPE_PREFIX) {
        return Err(format!(
            "{command:?} must not start with {RESERVED_TYPE_PREFIX:?}, which is reserved for herald's own events"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the module documentation.
    const EXAMPLE_TOML: &str = r#"
saga_type = "NationalAdvocacyCampaign"
deadline_ms = 30000
[compensation]
attempts = 3
backoff_initial_ms = 200
backoff_max_ms = 2000
[[steps]]
name = "secure_media"
service = "b"
command = "media.secure"
compensation = "media.release"
deadline_ms = 5000
"#;

    fn step(name: &str) -> StepDefinition {
        StepDefinition::new(
            name,
            "b",
            "media.secure",
            "media.release",
            Duration::from_secs(5),
        )
    }

    fn valid() -> SagaDefinition {
        SagaDefinition::builder("NationalAdvocacyCampaign")
            .deadline(Duration::from_secs(30))
            .compensation_attempts(3)
            .backoff(Duration::from_millis(200), Duration::from_secs(2))
            .step(step("secure_media"))
            .build()
            .unwrap()
    }

    #[test]
    fn example_toml_parses_to_the_builder_definition() {
        let parsed = SagaDefinition::from_toml(EXAMPLE_TOML).unwrap();
        assert_eq!(parsed, valid());
    }

    #[test]
    fn toml_round_trips() {
        let mut definition = valid();
        definition.steps.push(StepDefinition::new(
            "draft_endorsements",
            "endorsements-2",
            "Endorse.draft_v2",
            "Endorse.withdraw_v2",
            Duration::from_millis(1),
        ));
        definition.validate().unwrap();
        let text = definition.to_toml();
        assert_eq!(SagaDefinition::from_toml(&text).unwrap(), definition);
    }

    #[test]
    fn compensation_table_and_its_fields_default() {
        let without = EXAMPLE_TOML.replace(
            "[compensation]\nattempts = 3\nbackoff_initial_ms = 200\nbackoff_max_ms = 2000\n",
            "",
        );
        let parsed = SagaDefinition::from_toml(&without).unwrap();
        assert_eq!(parsed.compensation, CompensationPolicy::default());
        let partial = EXAMPLE_TOML.replace("backoff_initial_ms = 200\nbackoff_max_ms = 2000\n", "");
        let parsed = SagaDefinition::from_toml(&partial).unwrap();
        assert_eq!(parsed.compensation.attempts, 3);
        assert_eq!(
            parsed.compensation.backoff_initial_ms,
            BACKOFF_INITIAL_MS_DEFAULT
        );
        assert_eq!(parsed.compensation.backoff_max_ms, BACKOFF_MAX_MS_DEFAULT);
    }

    #[test]
    fn toml_errors_keep_the_position_and_reject_unknown_fields() {
        let broken = EXAMPLE_TOML.replace("deadline_ms = 5000", "deadline_ms = \"soon\"");
        let err = SagaDefinition::from_toml(&broken).unwrap_err();
        assert!(matches!(err, DefinitionError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("line 13"), "{err}");

        let typo = EXAMPLE_TOML.replace("deadline_ms = 5000", "deadline_ms = 5000\ndeadlne = 1");
        let err = SagaDefinition::from_toml(&typo).unwrap_err();
        assert!(err.to_string().contains("deadlne"), "{err}");
    }

    #[test]
    fn from_toml_validates() {
        let zero = EXAMPLE_TOML.replace("deadline_ms = 5000", "deadline_ms = 0");
        let err = SagaDefinition::from_toml(&zero).unwrap_err();
        assert_eq!(
            err.to_string(),
            "step \"secure_media\" (#0): deadline_ms 0 is not in 1..=604800000"
        );
    }

    #[test]
    fn step_errors_name_the_step_field_and_rule() {
        let mut definition = valid();
        for name in ["a", "b", "c"] {
            definition.steps.push(step(name));
        }
        definition.steps[3].name = "draft_endorsements".into();
        definition.steps[3].deadline_ms = 0;
        let err = definition.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "step \"draft_endorsements\" (#3): deadline_ms 0 is not in 1..=604800000"
        );
        assert!(matches!(
            err,
            DefinitionError::Step {
                index: 3,
                field: "deadline_ms",
                ..
            }
        ));
    }

    #[test]
    fn every_rule_is_checked() {
        type Breaker = fn(&mut SagaDefinition);
        let cases: &[(Breaker, &str, &str)] = &[
            (
                |d| d.saga_type.clear(),
                "saga_type",
                "must be 1..=128 bytes",
            ),
            (|d| d.saga_type = "a b".into(), "saga_type", "may use only"),
            (
                |d| d.deadline_ms = 0,
                "deadline_ms",
                "is not in 1..=604800000",
            ),
            (
                |d| d.deadline_ms = SAGA_DEADLINE_MS_MAX + 1,
                "deadline_ms",
                "not in",
            ),
            (
                |d| d.compensation.attempts = 0,
                "compensation.attempts",
                "not in 1..=100",
            ),
            (
                |d| d.compensation.attempts = 101,
                "compensation.attempts",
                "not in 1..=100",
            ),
            (
                |d| d.compensation.backoff_initial_ms = 0,
                "compensation.backoff_initial_ms",
                "at least 1",
            ),
            (
                |d| d.compensation.backoff_max_ms = 199,
                "compensation.backoff_max_ms",
                "not in 200..=",
            ),
            (
                |d| d.compensation.backoff_max_ms = SAGA_DEADLINE_MS_MAX + 1,
                "compensation.backoff_max_ms",
                "at most one week",
            ),
            (
                |d| d.steps[0].name = "x".repeat(129),
                "name",
                "must be 1..=128 bytes, found 129",
            ),
            (
                |d| d.steps[0].name = "sécure".into(),
                "name",
                "may use only",
            ),
            (|d| d.steps[0].service = "B".into(), "service", "a-z, 0-9"),
            (|d| d.steps[0].service = "-b".into(), "service", "inner '-'"),
            (
                |d| d.steps[0].service = "b".repeat(64),
                "service",
                "1 to 63 bytes",
            ),
            (|d| d.steps[0].service.clear(), "service", "1 to 63 bytes"),
            (|d| d.steps[0].command.clear(), "command", "must be 1..=128"),
            (
                |d| d.steps[0].command = "herald.genesis".into(),
                "command",
                "reserved",
            ),
            (
                |d| d.steps[0].compensation = "herald.x".into(),
                "compensation",
                "reserved",
            ),
            (
                |d| d.steps[0].compensation = "media/release".into(),
                "compensation",
                "may use only",
            ),
            (
                |d| d.steps[0].deadline_ms = SAGA_DEADLINE_MS_MAX + 1,
                "deadline_ms",
                "not in",
            ),
        ];
        for (breaker, field, rule) in cases {
            let mut definition = valid();
            breaker(&mut definition);
            let err = definition.validate().unwrap_err();
            let text = err.to_string();
            assert!(text.contains(rule), "{field}: {text:?} lacks {rule:?}");
            match err {
                DefinitionError::Saga { field: f, .. } | DefinitionError::Step { field: f, .. } => {
                    assert_eq!(f, *field, "{text}")
                }
                other => panic!("unexpected error kind {other:?}"),
            }
        }
    }

    #[test]
    fn step_count_is_bounded() {
        let mut definition = valid();
        definition.steps.clear();
        let err = definition.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "saga \"NationalAdvocacyCampaign\": has 0 steps, but a saga needs 1..=32"
        );
        definition.steps = (0..=SAGA_STEPS_MAX)
            .map(|i| step(&format!("s{i}")))
            .collect();
        assert!(matches!(
            definition.validate(),
            Err(DefinitionError::StepCount { count: 33, .. })
        ));
        definition.steps.pop();
        definition.validate().unwrap();
    }

    #[test]
    fn step_names_are_unique() {
        let mut definition = valid();
        definition.steps.push(step("other"));
        definition.steps.push(step("secure_media"));
        let err = definition.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "step \"secure_media\" (#2): name is already used by step #0; step names must be unique"
        );
    }

    #[test]
    fn builder_requires_a_deadline_and_truncates_durations() {
        let err = SagaDefinition::builder("S")
            .step(step("a"))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("no deadline set"), "{err}");
        let definition = SagaDefinition::builder("S")
            .deadline(Duration::from_micros(1_999))
            .step(step("a"))
            .build()
            .unwrap();
        assert_eq!(definition.deadline_ms, 1);
        assert_eq!(definition.deadline(), Duration::from_millis(1));
        let err = SagaDefinition::builder("S")
            .deadline(Duration::MAX)
            .step(step("a"))
            .build()
            .unwrap_err();
        assert!(matches!(
            err,
            DefinitionError::Saga {
                field: "deadline_ms",
                ..
            }
        ));
    }

    #[test]
    fn backoff_doubles_and_is_capped_without_overflow() {
        let policy = CompensationPolicy {
            attempts: 5,
            backoff_initial_ms: 200,
            backoff_max_ms: 2000,
        };
        let delays: Vec<u64> = (1..=6).map(|a| policy.backoff_ms(a)).collect();
        assert_eq!(delays, [200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(policy.backoff_ms(0), 200);
        assert_eq!(policy.backoff_ms(64), 2000);
        assert_eq!(policy.backoff_ms(u32::MAX), 2000);
        let huge = CompensationPolicy {
            attempts: 1,
            backoff_initial_ms: u64::MAX / 3,
            backoff_max_ms: u64::MAX,
        };
        assert_eq!(huge.backoff_ms(1), u64::MAX / 3);
        assert_eq!(huge.backoff_ms(3), u64::MAX);
    }
}
