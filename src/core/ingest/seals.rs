//! Seals at ingest: which received format-2 events a peer's seals vouch for.
//!
//! Each seal names its feed through its checkpoint's origin. The run it
//! covers is the batch's events of that feed from the tree this node holds
//! up to the seal's `end`; [`check_sealed_run`] extends the stored tree's
//! frontier by the run and checks the author's signature and the
//! consistency proof. Several seals of one feed (frames gathered into one
//! ingest) are taken in order of `end`, each extending the last.

use std::collections::HashMap;

use super::{FeedState, IngestPolicy, load_verifier};
use crate::core::cert::AuthorAdmission;
use crate::core::checkpoint::{self, VerifiedCheckpoint};
use crate::core::codec::DecodeError;
use crate::core::merkle::Frontier;
use crate::core::verify::{
    self, DecodedEvent, FeedVerifier, SealError, SignatureVerdict, check_sealed_run,
};
use crate::core::wire::Seal;

/// Why the seals of one feed in a batch did not vouch for its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealFailure {
    /// The sender is at fault (a forged or malformed seal, a run that does
    /// not follow the tree it claims to extend).
    Misbehaviour(String),
    /// The author signed the checkpoint, but this node's copy of the feed
    /// is not a prefix of it: the sender relays another branch of the feed
    /// (the author signed two histories), which is not the relay's fault.
    Conflict(String),
}

/// What a batch's seals vouched for.
#[derive(Debug, Default)]
pub(super) struct SealCheck {
    /// Per decoded event of the batch: the verdict a seal gave it (format-2
    /// events only; format-1 events carry their own signature).
    pub verdicts: Vec<Option<SignatureVerdict>>,
    /// Per feed, why its seals failed (its events after the failure point
    /// get no verdict).
    pub failures: HashMap<String, SealFailure>,
    /// A seal that does not even name a feed of this cluster: the batch is
    /// refused.
    pub unreadable: Option<String>,
    /// Checkpoint notes for the checkpoint witness once the events are
    /// stored: those that end exactly where their run does (this node then
    /// holds every event they cover), those of runs it held already, and
    /// those that disagree with this node's copy (evidence of a split
    /// view, if one can be proved).
    pub notes: Vec<SealNote>,
}

/// A seal's checkpoint for the witness.
#[derive(Debug)]
pub enum SealNote {
    /// Its author's signature checked with the run it vouched for.
    Verified(VerifiedCheckpoint),
    /// Not checked here (a run held already, or one it did not join).
    Unchecked(Vec<u8>),
}

/// What the seal check needs besides the store.
pub(super) struct SealContext<'a, A> {
    pub trust: &'a A,
    pub verifiers: &'a mut HashMap<String, FeedVerifier>,
    pub cluster: &'a str,
    /// This node's own feed, never appended by a peer (`None` while
    /// recovering, when it is ingested like any other).
    pub own_feed: Option<&'a str>,
    pub policy: &'a IngestPolicy,
}

/// Checks every seal of a batch against the batch's events.
pub(super) fn check_seals<S: FeedState, A: AuthorAdmission>(
    state: &mut S,
    cx: &mut SealContext<'_, A>,
    events: &[Result<DecodedEvent, DecodeError>],
    seals: &[Seal],
) -> Result<SealCheck, S::Error> {
    let mut check = SealCheck {
        verdicts: vec![None; events.len()],
        ..SealCheck::default()
    };
    if seals.is_empty() {
        return Ok(check);
    }
    // Per feed, the positions of its events in the batch.
    let mut by_feed: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, event) in events.iter().enumerate() {
        if let Ok(event) = event {
            by_feed.entry(&event.header().author).or_default().push(i);
        }
    }
    let mut named = Vec::with_capacity(seals.len());
    for seal in seals {
        match checkpoint::claimed_feed(cx.cluster, &seal.note) {
            Ok((_, _, feed)) => named.push((feed, seal)),
            Err(e) => {
                check.unreadable = Some(e.to_string());
                return Ok(check);
            }
        }
    }
    named.sort_by_key(|(_, seal)| seal.end);
    // Per feed, the frontier after the runs vouched for so far, and the
    // key in force after them when a run of the batch moved it.
    let mut frontiers: HashMap<String, Frontier> = HashMap::new();
    let mut moved_keys: HashMap<String, ed25519_dalek::VerifyingKey> = HashMap::new();
    for (feed, seal) in named {
        if cx.own_feed == Some(feed.as_str())
            || cx.policy.skips(&feed, seal.end.saturating_sub(1))
            || check.failures.contains_key(&feed)
        {
            continue;
        }
        let positions = by_feed.get(feed.as_str()).map_or(&[][..], Vec::as_slice);
        let Some((key, stored)) = author_key(state, cx, &feed, events, positions)? else {
            // A feed this node cannot check yet (no genesis held or sent):
            // its events are refused when applied.
            continue;
        };
        let key = moved_keys.get(&feed).copied().unwrap_or(key);
        let held = match frontiers.get(&feed) {
            Some(f) => f.clone(),
            None => state.frontier(&feed, stored)?,
        };
        if seal.end <= held.size() {
            // Everything it covers is held already: copies, or the author's
            // other history at positions this node holds, which only the
            // checkpoint can prove (the witness compares it with this
            // node's tree and records the split if it holds a checkpoint
            // of its own there).
            check.notes.push(SealNote::Unchecked(seal.note.to_vec()));
            continue;
        }
        let run: Vec<usize> = positions
            .iter()
            .copied()
            .filter(|&i| {
                events[i]
                    .as_ref()
                    .is_ok_and(|e| (held.size()..seal.end).contains(&e.header().seq))
            })
            .collect();
        let run_events: Vec<&DecodedEvent> = run
            .iter()
            .filter_map(|&i| events[i].as_ref().ok())
            .collect();
        // A key transition starts its run, sealed by the new key; the events
        // before it are sealed by the old key's checkpoint it carries.
        let key = match run_key(cx, &feed, &key, &held, &run_events) {
            Ok(key) => key,
            Err(reason) => {
                check
                    .failures
                    .insert(feed, SealFailure::Misbehaviour(reason));
                continue;
            }
        };
        let outcome = check_sealed_run(
            cx.cluster,
            &feed,
            &key,
            &held,
            &run_events,
            verify::Seal {
                note: &seal.note,
                proof: &seal.proof,
            },
        );
        match outcome {
            Ok(sealed) if sealed.frontier.size() == seal.end => {
                for (&i, verdict) in run.iter().zip(&sealed.verdicts) {
                    if events[i].as_ref().is_ok_and(DecodedEvent::is_sealed) {
                        check.verdicts[i] = Some(*verdict);
                    }
                }
                let complete = sealed.checkpoint_is_complete();
                moved_keys.insert(feed.clone(), key);
                frontiers.insert(feed, sealed.frontier);
                if complete {
                    check.notes.push(SealNote::Verified(sealed.checkpoint));
                }
            }
            Ok(sealed) => {
                let reason = format!(
                    "a seal for a run ending at {} vouched for one ending at {}",
                    seal.end,
                    sealed.frontier.size()
                );
                check
                    .failures
                    .insert(feed, SealFailure::Misbehaviour(reason));
            }
            Err(SealError::Inconsistent(e))
                if cx.policy.sender.as_deref() != Some(feed.as_str()) =>
            {
                check.notes.push(SealNote::Unchecked(seal.note.to_vec()));
                let reason = format!(
                    "the feed's author signed a checkpoint this node's copy does not extend to ({e})"
                );
                check.failures.insert(feed, SealFailure::Conflict(reason));
            }
            Err(e) => {
                check
                    .failures
                    .insert(feed, SealFailure::Misbehaviour(e.to_string()));
            }
        }
    }
    Ok(check)
}

/// The key the seal of `run` (the next events of `feed` after `held`) must
/// be signed with: `current`, unless the run starts with a key transition,
/// whose new key seals it. A transition anywhere else in the run, or one
/// whose old-key checkpoint is not `current`'s signature over exactly the
/// tree `held`, is the sender's fault (docs/PROTOCOL.md: a frame ends
/// before a transition).
fn run_key<A: AuthorAdmission>(
    cx: &SealContext<'_, A>,
    feed: &str,
    current: &ed25519_dalek::VerifyingKey,
    held: &Frontier,
    run: &[&DecodedEvent],
) -> Result<ed25519_dalek::VerifyingKey, String> {
    use crate::core::transition::{KEY_TRANSITION_EVENT_TYPE, KeyTransition};
    let is_transition = |e: &DecodedEvent| e.header().event_type == KEY_TRANSITION_EVENT_TYPE;
    if let Some(inside) = run.iter().skip(1).find(|e| is_transition(e)) {
        return Err(format!(
            "a run of {feed} crosses its key transition at {}: the events before it must come sealed by the old key's checkpoint",
            inside.header().seq
        ));
    }
    let Some(first) = run.first().filter(|e| is_transition(e)) else {
        return Ok(*current);
    };
    let seq = first.header().seq;
    // Malformed or unadmitted transitions are refused, with the reason,
    // when the feed's verifier applies them: only the seal is judged here.
    let Some(new_key) = verify::transition_key(cx.trust, first) else {
        return Ok(*current);
    };
    let transition = first
        .payload()
        .and_then(|p| KeyTransition::decode(p).ok())
        .ok_or_else(|| format!("the key transition {feed}/{seq} has no readable payload"))?;
    transition
        .check_carried_checkpoint(cx.cluster, feed, seq, current, held)
        .map_err(|e| format!("the old key's checkpoint in key transition {feed}/{seq}: {e}"))?;
    Ok(new_key)
}

/// The key `feed`'s checkpoints must be signed with and the number of its
/// events this node stores: from its stored genesis, or from the genesis
/// in the batch for a feed new to this node. `None` if neither exists or
/// the certificate is not admitted (the events are then refused when
/// applied, with the reason).
fn author_key<S: FeedState, A: AuthorAdmission>(
    state: &mut S,
    cx: &mut SealContext<'_, A>,
    feed: &str,
    events: &[Result<DecodedEvent, DecodeError>],
    positions: &[usize],
) -> Result<Option<(ed25519_dalek::VerifyingKey, u64)>, S::Error> {
    if let Ok(verifier) = load_verifier(state, cx.trust, cx.verifiers, feed)? {
        return Ok(Some((*verifier.key(), verifier.next_seq())));
    }
    let genesis = positions
        .iter()
        .filter_map(|&i| events[i].as_ref().ok())
        .find(|e| e.header().seq == 0);
    Ok(genesis
        .and_then(|g| FeedVerifier::admitted_key(cx.trust, g).ok())
        .map(|key| (key, 0)))
}
