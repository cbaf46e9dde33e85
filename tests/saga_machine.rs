//! The saga state machine's promises, property-tested against random
//! definitions and random (often nonsensical) streams of replies and ticks,
//! plus deterministic scenarios for the main paths.
//!
//! Promises: every saga ends in a terminal state; compensation runs in
//! strictly reverse step order, within its attempt budget; forward commands
//! run once each, in order, and never after compensation began; terminal
//! states mean what they say; operators are alerted exactly once when a
//! saga fails; and a saga persisted and resumed mid-run behaves exactly as
//! one that never stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use herald::saga::{
    Action, CommandKind, Reply, ReplyOutcome, Saga, SagaDefinition, SagaStatus, StepDefinition,
    StepStatus, Transition,
};
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

const T0: u64 = 1_790_000_000_000_000;
/// Most ticks the drain loop may take after the inputs; far above the
/// worst case (6 steps, 4 attempts, two wakeups per attempt).
const DRAIN_TICKS_MAX: usize = 1_000;

// ---------------------------------------------------------------------------
// Generators

fn arb_definition() -> impl Strategy<Value = SagaDefinition> {
    let step = (1u64..=10_000, 0usize..3);
    (
        prop::collection::vec(step, 1..=6),
        1u64..=60_000,
        1u32..=4,
        1u64..=1_000,
        0u64..=5_000,
    )
        .prop_map(|(steps, deadline_ms, attempts, initial, extra)| {
            let mut builder = SagaDefinition::builder("PropertySaga")
                .deadline(Duration::from_millis(deadline_ms))
                .compensation_attempts(attempts)
                .backoff(
                    Duration::from_millis(initial),
                    Duration::from_millis(initial + extra),
                );
            for (i, (step_ms, service)) in steps.into_iter().enumerate() {
                builder = builder.step(StepDefinition::new(
                    format!("step{i}"),
                    ["alpha", "beta", "gamma"][service],
                    format!("cmd{i}.do"),
                    format!("cmd{i}.undo"),
                    Duration::from_millis(step_ms),
                ));
            }
            builder.build().expect("generated definitions are valid")
        })
}

/// One input to the machine.
#[derive(Debug, Clone)]
enum Input {
    Reply(Reply),
    /// Replays the reply given earlier at this position (modulo their count).
    Duplicate(usize),
    /// Answers the latest command the saga issued (the right step, kind and
    /// attempt), completed or failed: random replies alone rarely match, so
    /// this is what drives sagas deep into their steps and compensations.
    Answer {
        ok: bool,
    },
    /// Answers some earlier command (picked by position, modulo their
    /// count): late, stale and repeated answers, as a slow network gives.
    AnswerEarlier {
        pick: usize,
        ok: bool,
    },
    /// Advances the clock by this many microseconds, then ticks.
    Tick(u64),
}

fn arb_reply() -> impl Strategy<Value = Reply> {
    (
        0usize..=7,
        prop::bool::ANY,
        0u32..=5,
        prop::bool::weighted(0.6),
    )
        .prop_map(|(step, compensate, attempt, ok)| Reply {
            step,
            kind: if compensate {
                CommandKind::Compensate
            } else {
                CommandKind::Do
            },
            attempt,
            outcome: if ok {
                ReplyOutcome::Completed {
                    result: json!({ "step": step, "attempt": attempt }),
                }
            } else {
                ReplyOutcome::Failed {
                    reason: format!("step {step} attempt {attempt} refused"),
                }
            },
        })
}

fn arb_advance() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(0u64),
        6 => 0u64..=12_000_000,
        1 => 1_000_000_000u64..=1_000_000_000_000,
        1 => Just(u64::MAX / 2),
    ]
}

fn arb_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        6 => arb_reply().prop_map(Input::Reply),
        2 => any::<usize>().prop_map(Input::Duplicate),
        6 => prop::bool::weighted(0.75).prop_map(|ok| Input::Answer { ok }),
        2 => (any::<usize>(), prop::bool::weighted(0.75))
            .prop_map(|(pick, ok)| Input::AnswerEarlier { pick, ok }),
        3 => arb_advance().prop_map(Input::Tick),
    ]
}

// ---------------------------------------------------------------------------
// Driver

/// A saga under test, its clock, every action it produced and the replies
/// given so far (for duplicates).
#[derive(Debug, Clone)]
struct Run {
    saga: Saga,
    now: u64,
    log: Vec<Action>,
    replies: Vec<Reply>,
}

impl Run {
    fn start(definition: SagaDefinition) -> Run {
        let (saga, log) = Saga::start(
            Uuid::now_v7(),
            definition,
            json!({ "campaign": "property" }),
            "orchestrator",
            T0,
        );
        Run {
            saga,
            now: T0,
            log,
            replies: Vec::new(),
        }
    }

    /// Applies one input; returns the actions it produced.
    fn apply(&mut self, input: &Input) -> Vec<Action> {
        let actions = match input {
            Input::Reply(reply) => {
                self.replies.push(reply.clone());
                self.saga.on_reply(reply, self.now)
            }
            Input::Duplicate(i) if !self.replies.is_empty() => {
                let reply = self.replies[i % self.replies.len()].clone();
                self.saga.on_reply(&reply, self.now)
            }
            Input::Duplicate(_) => Vec::new(),
            Input::Answer { ok } => match self.issued().last() {
                Some(&(step, kind, attempt)) => {
                    let reply = make_reply(step, kind, attempt, *ok);
                    self.replies.push(reply.clone());
                    self.saga.on_reply(&reply, self.now)
                }
                None => Vec::new(),
            },
            Input::AnswerEarlier { pick, ok } => {
                let issued = self.issued();
                if issued.is_empty() {
                    Vec::new()
                } else {
                    let (step, kind, attempt) = issued[pick % issued.len()];
                    let reply = make_reply(step, kind, attempt, *ok);
                    self.replies.push(reply.clone());
                    self.saga.on_reply(&reply, self.now)
                }
            }
            Input::Tick(advance) => {
                self.now = self.now.saturating_add(*advance);
                self.saga.on_tick(self.now)
            }
        };
        self.log.extend(actions.iter().cloned());
        actions
    }

    /// Ticks at every wakeup until the saga ends, then once at the end of
    /// time (which must change nothing).
    fn drain(&mut self) {
        for _ in 0..DRAIN_TICKS_MAX {
            let Some(wakeup) = self.saga.next_wakeup_us() else {
                break;
            };
            assert!(
                wakeup >= self.now,
                "wakeup {wakeup} is before now {}",
                self.now
            );
            self.apply(&Input::Tick(wakeup - self.now));
        }
        let end = self.apply(&Input::Tick(u64::MAX));
        assert!(end.is_empty(), "a terminal saga acted: {end:?}");
    }

    /// Step, kind and attempt of every command issued so far, in order.
    fn issued(&self) -> Vec<(usize, CommandKind, u32)> {
        self.log
            .iter()
            .filter_map(|action| match action {
                Action::Command {
                    step,
                    kind,
                    attempt,
                    ..
                } => Some((*step, *kind, *attempt)),
                Action::Record(_) => None,
            })
            .collect()
    }

    fn commands(&self, kind: CommandKind) -> Vec<(usize, u32)> {
        self.log
            .iter()
            .filter_map(|action| match action {
                Action::Command {
                    step,
                    kind: k,
                    attempt,
                    ..
                } if *k == kind => Some((*step, *attempt)),
                _ => None,
            })
            .collect()
    }

    fn count(&self, wanted: impl Fn(&Transition) -> bool) -> usize {
        self.log
            .iter()
            .filter(|action| matches!(action, Action::Record(t) if wanted(t)))
            .count()
    }

    fn alerts(&self) -> Vec<String> {
        self.log
            .iter()
            .filter_map(|action| match action {
                Action::Record(Transition::Alert { message }) => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    fn reply(&mut self, step: usize, kind: CommandKind, attempt: u32, ok: bool) -> Vec<Action> {
        self.apply(&Input::Reply(make_reply(step, kind, attempt, ok)))
    }

    fn tick_by(&mut self, advance_us: u64) -> Vec<Action> {
        self.apply(&Input::Tick(advance_us))
    }
}

fn make_reply(step: usize, kind: CommandKind, attempt: u32, ok: bool) -> Reply {
    let outcome = if ok {
        ReplyOutcome::Completed {
            result: json!({ "step": step }),
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

/// Checks every promise on a finished run.
fn check_promises(run: &Run) -> Result<(), TestCaseError> {
    let saga = &run.saga;
    let steps = saga.definition.steps.len();
    let attempts = saga.definition.compensation.attempts;

    // (a) Terminal, with nothing left to wake up for.
    prop_assert!(saga.is_terminal(), "not terminal: {:?}", saga.status);
    prop_assert_eq!(saga.next_wakeup_us(), None);
    prop_assert!(saga.ended_at_us.is_some());
    prop_assert_eq!(run.log.first(), Some(&Action::Record(Transition::Started)));
    let terminal_records = run.count(|t| {
        matches!(
            t,
            Transition::Completed | Transition::Compensated | Transition::Failed { .. }
        )
    });
    prop_assert_eq!(terminal_records, 1, "one terminal record");

    // (b) Compensation in strictly reverse step order: the sequence of
    // distinct steps with Compensate commands is strictly decreasing.
    let compensations = run.commands(CommandKind::Compensate);
    let mut order: Vec<usize> = compensations.iter().map(|&(step, _)| step).collect();
    order.dedup();
    prop_assert!(
        order.windows(2).all(|w| w[0] > w[1]),
        "compensation order {:?}",
        order
    );

    // (c) Within the budget, attempts numbered 1, 2, ... per step.
    let mut per_step: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for &(step, attempt) in &compensations {
        per_step.entry(step).or_default().push(attempt);
    }
    for (step, numbers) in &per_step {
        prop_assert!(*step < steps);
        prop_assert!(
            numbers.len() <= attempts as usize,
            "step {}: {:?}",
            step,
            numbers
        );
        let expected: Vec<u32> = (1..=numbers.len() as u32).collect();
        prop_assert_eq!(numbers, &expected);
    }

    // Each attempt fails at most once (a duplicate failure reply is not a
    // second failure), and only attempts that were commanded fail.
    let mut failures = BTreeSet::new();
    for action in &run.log {
        if let Action::Record(Transition::CompensationFailed { step, attempt, .. }) = action {
            prop_assert!(
                failures.insert((*step, *attempt)),
                "{} #{} failed twice",
                step,
                attempt
            );
            prop_assert!(compensations.contains(&(*step, *attempt)));
        }
    }

    // (d) Forward commands: once per step, in order 0, 1, 2, ..., attempt 1,
    // never after compensation began.
    let forward = run.commands(CommandKind::Do);
    let expected: Vec<(usize, u32)> = (0..forward.len()).map(|step| (step, 1)).collect();
    prop_assert_eq!(&forward, &expected);
    let compensation_began = run.log.iter().position(|action| {
        matches!(
            action,
            Action::Record(Transition::StepFailed { .. } | Transition::StepTimedOut { .. })
        )
    });
    if let Some(began) = compensation_began {
        let late_do = run.log[began..].iter().any(|a| {
            matches!(
                a,
                Action::Command {
                    kind: CommandKind::Do,
                    ..
                }
            )
        });
        prop_assert!(!late_do, "a Do command after compensation began");
    }
    for action in &run.log {
        if let Action::Command {
            kind: CommandKind::Do,
            deadline_us,
            ..
        } = action
        {
            prop_assert!(
                *deadline_us <= saga.deadline_us,
                "Do deadline past the saga's"
            );
        }
    }

    // (e) Completed means every step completed and nothing was undone.
    if saga.status == SagaStatus::Completed {
        prop_assert!(saga.steps.iter().all(|s| s.status == StepStatus::Completed));
        prop_assert!(compensations.is_empty());
        prop_assert_eq!(forward.len(), steps);
    }

    // (f) Compensated means every step that took (or may have taken) effect
    // was undone.
    let took_effect: BTreeSet<usize> = run
        .log
        .iter()
        .filter_map(|action| match action {
            Action::Record(
                Transition::StepCompleted { step } | Transition::StepTimedOut { step },
            ) => Some(*step),
            _ => None,
        })
        .collect();
    if saga.status == SagaStatus::Compensated {
        for &step in &took_effect {
            prop_assert_eq!(
                saga.steps[step].status,
                StepStatus::Compensated,
                "step {}",
                step
            );
        }
        prop_assert!(saga.pending_compensations().is_empty());
    }

    // (g) Failed: exactly one Failed record and one Alert; otherwise none.
    let failed = run.count(|t| matches!(t, Transition::Failed { .. }));
    let alerts = run.alerts();
    if saga.status == SagaStatus::Failed {
        prop_assert_eq!(failed, 1);
        prop_assert_eq!(alerts.len(), 1);
        let stuck = saga
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::CompensationFailed)
            .count();
        prop_assert_eq!(stuck, 1);
        // Compensation stopped at the stuck step: what is left is listed.
        for &step in saga.pending_compensations() {
            prop_assert_eq!(saga.steps[step].status, StepStatus::Completed);
            let name = &saga.definition.steps[step].name;
            let listed = format!("{name:?} (#{step})");
            prop_assert!(
                alerts[0].contains(&listed),
                "{} not in {}",
                listed,
                alerts[0]
            );
        }
    } else {
        prop_assert_eq!(failed, 0);
        prop_assert!(alerts.is_empty());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// (a)-(g) on random definitions and random input streams.
    #[test]
    fn every_saga_keeps_its_promises(
        definition in arb_definition(),
        inputs in prop::collection::vec(arb_input(), 0..80),
    ) {
        let mut run = Run::start(definition);
        for input in &inputs {
            run.apply(input);
        }
        run.drain();
        check_promises(&run)?;
    }

    /// (h) The saga survives a serde_json round trip at every point, and a
    /// saga persisted and resumed mid-run ends exactly like one that never
    /// stopped: same actions, same final state.
    #[test]
    fn a_resumed_saga_behaves_like_one_that_never_stopped(
        definition in arb_definition(),
        inputs in prop::collection::vec(arb_input(), 0..80),
        split in any::<prop::sample::Index>(),
    ) {
        let mut straight = Run::start(definition);
        let mut resumed = straight.clone();
        let split = split.index(inputs.len() + 1);
        for (i, input) in inputs.iter().enumerate() {
            let json = serde_json::to_string(&straight.saga).expect("serialises");
            let back: Saga = serde_json::from_str(&json).expect("deserialises");
            prop_assert_eq!(&back, &straight.saga);
            if i == split {
                resumed.saga = back;
            }
            let a = straight.apply(input);
            let b = resumed.apply(input);
            prop_assert_eq!(a, b, "input #{}: {:?}", i, input);
        }
        if split == inputs.len() {
            let json = serde_json::to_string(&resumed.saga).expect("serialises");
            resumed.saga = serde_json::from_str(&json).expect("deserialises");
        }
        straight.drain();
        resumed.drain();
        prop_assert_eq!(&straight.log, &resumed.log);
        prop_assert_eq!(&straight.saga, &resumed.saga);
        check_promises(&resumed)?;
    }
}

// ---------------------------------------------------------------------------
// Scenarios

const STEP_MS: u64 = 5_000;
const STEP_US: u64 = STEP_MS * 1000;
const ATTEMPTS: u32 = 3;

fn scenario_definition(steps: usize) -> SagaDefinition {
    let mut builder = SagaDefinition::builder("NationalAdvocacyCampaign")
        .deadline(Duration::from_secs(60))
        .compensation_attempts(ATTEMPTS)
        .backoff(Duration::from_millis(200), Duration::from_millis(2000));
    for i in 0..steps {
        builder = builder.step(StepDefinition::new(
            format!("step{i}"),
            format!("service-{i}"),
            format!("cmd{i}.do"),
            format!("cmd{i}.undo"),
            Duration::from_millis(STEP_MS),
        ));
    }
    builder.build().expect("valid")
}

fn undo(step: usize, attempt: u32, deadline_us: u64) -> Action {
    Action::Command {
        step,
        kind: CommandKind::Compensate,
        attempt,
        deadline_us,
    }
}

#[test]
fn all_steps_succeed() {
    let mut run = Run::start(scenario_definition(4));
    for step in 0..4 {
        run.tick_by(1_000);
        run.reply(step, CommandKind::Do, 1, true);
    }
    assert_eq!(run.saga.status, SagaStatus::Completed);
    assert_eq!(run.log.last(), Some(&Action::Record(Transition::Completed)));
    assert_eq!(run.commands(CommandKind::Do).len(), 4);
    run.drain();
    check_promises(&run).unwrap();
}

#[test]
fn failure_at_each_position_compensates_earlier_steps_in_reverse() {
    const STEPS: usize = 4;
    for failing in 0..STEPS {
        let mut run = Run::start(scenario_definition(STEPS));
        for step in 0..failing {
            run.reply(step, CommandKind::Do, 1, true);
        }
        run.reply(failing, CommandKind::Do, 1, false);
        assert_eq!(run.saga.steps[failing].status, StepStatus::Failed);
        let mut undone = Vec::new();
        while let Some(&Action::Command {
            step,
            kind: CommandKind::Compensate,
            ..
        }) = run.log.last()
        {
            undone.push(step);
            run.tick_by(1_000);
            run.reply(step, CommandKind::Compensate, 1, true);
        }
        let expected: Vec<usize> = (0..failing).rev().collect();
        assert_eq!(undone, expected, "failing step {failing}");
        assert_eq!(run.saga.status, SagaStatus::Compensated);
        for step in 0..failing {
            assert_eq!(run.saga.steps[step].status, StepStatus::Compensated);
        }
        for step in failing + 1..STEPS {
            assert_eq!(run.saga.steps[step].status, StepStatus::Pending);
        }
        run.drain();
        check_promises(&run).unwrap();
    }
}

#[test]
fn timeout_compensates_the_timed_out_step_first() {
    let mut run = Run::start(scenario_definition(3));
    run.reply(0, CommandKind::Do, 1, true);
    assert!(run.tick_by(STEP_US - 1).is_empty());
    let now = run.now + 1;
    assert_eq!(
        run.tick_by(1),
        [
            Action::Record(Transition::StepTimedOut { step: 1 }),
            undo(1, 1, now + STEP_US),
        ]
    );
    assert_eq!(run.saga.status, SagaStatus::Compensating);
    run.reply(1, CommandKind::Compensate, 1, true);
    run.reply(0, CommandKind::Compensate, 1, true);
    assert_eq!(run.saga.status, SagaStatus::Compensated);
    assert_eq!(run.saga.steps[2].status, StepStatus::Pending);
    run.drain();
    check_promises(&run).unwrap();
}

#[test]
fn late_completion_is_recorded_and_the_step_still_compensated() {
    let mut run = Run::start(scenario_definition(2));
    run.tick_by(STEP_US);
    assert_eq!(run.saga.steps[0].status, StepStatus::Compensating);
    assert_eq!(
        run.reply(0, CommandKind::Do, 1, true),
        [Action::Record(Transition::LateCompletion { step: 0 })]
    );
    assert!(run.saga.steps[0].completed_late);
    assert!(
        run.reply(0, CommandKind::Do, 1, true).is_empty(),
        "noted once"
    );
    run.reply(0, CommandKind::Compensate, 1, true);
    assert_eq!(run.saga.status, SagaStatus::Compensated);
    assert_eq!(run.saga.steps[0].status, StepStatus::Compensated);
    assert!(
        run.reply(0, CommandKind::Do, 1, true).is_empty(),
        "terminal"
    );
    run.drain();
    check_promises(&run).unwrap();
}

#[test]
fn compensation_that_always_fails_ends_failed_after_the_budget_with_one_alert() {
    let mut run = Run::start(scenario_definition(3));
    run.reply(0, CommandKind::Do, 1, true);
    run.reply(1, CommandKind::Do, 1, true);
    run.reply(2, CommandKind::Do, 1, false);
    // Step 1's compensation fails every time; its retries come due by ticks.
    for attempt in 1..=ATTEMPTS {
        assert_eq!(run.saga.steps[1].attempt, attempt);
        run.reply(1, CommandKind::Compensate, attempt, false);
        if let Some(wakeup) = run.saga.next_wakeup_us() {
            run.tick_by(wakeup - run.now);
        }
    }
    assert_eq!(run.saga.status, SagaStatus::Failed);
    assert_eq!(
        run.commands(CommandKind::Compensate),
        [(1, 1), (1, 2), (1, 3)]
    );
    assert_eq!(run.saga.steps[1].status, StepStatus::CompensationFailed);
    assert_eq!(
        run.saga.steps[0].status,
        StepStatus::Completed,
        "left alone"
    );
    let alerts = run.alerts();
    assert_eq!(alerts.len(), 1);
    let alert = &alerts[0];
    for needle in [
        "\"step1\" (#1) on service \"service-1\" with compensation \"cmd1.undo\"",
        "after 3 attempts",
        "\"step0\" (#0) on service \"service-0\" with compensation \"cmd0.undo\"",
    ] {
        assert!(alert.contains(needle), "{needle:?} not in {alert}");
    }
    let backoffs: Vec<u64> = run
        .log
        .iter()
        .filter_map(|a| match a {
            Action::Record(Transition::CompensationRetryScheduled { at_us, .. }) => Some(*at_us),
            _ => None,
        })
        .collect();
    assert_eq!(backoffs.len(), 2);
    run.drain();
    check_promises(&run).unwrap();
}

#[test]
fn silence_ends_in_failure_by_ticks_alone() {
    let mut run = Run::start(scenario_definition(2));
    run.reply(0, CommandKind::Do, 1, true);
    run.drain();
    assert_eq!(run.saga.status, SagaStatus::Failed);
    // Step 1 timed out, then each of its compensation attempts.
    assert_eq!(
        run.commands(CommandKind::Compensate),
        [(1, 1), (1, 2), (1, 3)]
    );
    check_promises(&run).unwrap();
}
