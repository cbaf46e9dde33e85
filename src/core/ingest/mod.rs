//! The ingest rules: what becomes of each event a peer (or an import) hands
//! this node, sans-IO.
//!
//! [`Ingest::ingest`] takes a batch of envelopes and the seals sent with
//! them, reads what it needs of the store through [`FeedState`] (stored
//! hashes and events, heads, fork points, tree frontiers) and returns an
//! [`Ingested`]: one [`Decision`] per event looked at, the report, and the
//! heads, tree leaves and checkpoint notes to write. The store turns that
//! into SQL in one transaction; the replication simulation applies it to
//! its in-memory feeds. Nothing here reads a clock or touches a disk.
//!
//! The rules, in the order they apply to each event:
//!
//! * events of a feed the policy skips are not read;
//! * a format-2 event needs a seal of its feed that vouched for it, unless
//!   this node holds its position already;
//! * nothing of a feed from its fork point on is taken;
//! * an event this node holds is a duplicate; a validly signed other event
//!   at that position is fork evidence (the feed freezes there); any other
//!   is refused;
//! * this node's own feed beyond its head is refused before any signature
//!   is checked (only its sealer appends it, except during recovery);
//! * the rest must verify against the feed's verifier (its genesis first).
//!
//! A rejection stops the batch unless it is not the sender's fault (see
//! [`IngestPolicy::tolerates`]): then that feed is skipped for the rest of
//! the batch. The verifiers of feeds seen so far are kept between batches
//! (loaded lazily from the stored heads); see [`Ingest::forget_all`].

mod policy;
mod seals;
#[cfg(test)]
mod tests;

pub use policy::{IngestPolicy, IngestReport, Tolerated};
pub use seals::{SealFailure, SealNote};

use std::collections::{BTreeMap, HashMap};

use crate::core::cert::AuthorAdmission;
use crate::core::codec::DecodeError;
use crate::core::crypto::Hash;
use crate::core::merkle::Frontier;
use crate::core::verify::{
    Check, DecodedEvent, FeedVerifier, Rejection, SignatureVerdict, VerifiedEvent,
    check_event_signatures,
};
use crate::core::wire::Seal;

/// What the ingest rules read of the store. All reads see the store as it
/// was before the batch: the rules keep track of what the batch itself
/// applies.
pub trait FeedState {
    /// The store failing (not a verdict on an event).
    type Error;
    /// The hash of the event `feed`/`seq` this node holds, if any.
    fn stored_hash(&mut self, feed: &str, seq: u64) -> Result<Option<Hash>, Self::Error>;
    /// The event `feed`/`seq`, which this node holds.
    fn stored_event(&mut self, feed: &str, seq: u64) -> Result<DecodedEvent, Self::Error>;
    /// `feed`'s head, if this node holds its genesis.
    fn head(&mut self, feed: &str) -> Result<Option<StoredHead>, Self::Error>;
    /// The sequence number from which `feed` is frozen, if it forked (or
    /// its author signed two histories).
    fn fork_seq(&mut self, feed: &str) -> Result<Option<u64>, Self::Error>;
    /// The frontier of `feed`'s tree over its first `size` events (all
    /// held by this node).
    fn frontier(&mut self, feed: &str, size: u64) -> Result<Frontier, Self::Error>;
}

/// A feed's head as stored: where its verifier resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHead {
    pub seq: u64,
    pub hash: Hash,
    pub last_timestamp_us: u64,
    /// The certificate the genesis event carries (re-admitted on resume, so
    /// a revocation takes effect).
    pub genesis_cert: Vec<u8>,
}

/// A feed's head after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewHead {
    pub seq: u64,
    pub hash: Hash,
    pub timestamp_us: u64,
}

/// The events a batch appended to one feed, for its tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaves {
    /// The sequence number of the first (the number of events held before).
    pub first_seq: u64,
    /// Every appended event's hash, in order.
    pub event_hashes: Vec<Hash>,
}

/// One batch to ingest.
#[derive(Debug)]
pub struct Batch<'a> {
    pub envelopes: Vec<Vec<u8>>,
    /// Seals that authenticate runs of format-2 events of the batch.
    pub seals: &'a [Seal],
    pub policy: IngestPolicy,
    /// This node's own feed: beyond its head only its sealer appends it, so
    /// a peer's copy is refused unread. `None` while the node recovers its
    /// feed from peers (it is then ingested like any other).
    pub own_feed: Option<&'a str>,
    /// The cluster whose checkpoints the seals carry.
    pub cluster: &'a str,
}

/// What became of one event of a batch.
#[derive(Debug)]
pub enum Decision {
    /// Verified: store it (a genesis creates its feed).
    Applied(VerifiedEvent),
    /// Already held (applied exactly once).
    Duplicate,
    /// Validly signed by the author but not the event held at its position:
    /// record both as fork evidence and freeze the feed from there.
    Fork {
        conflicting: DecodedEvent,
        /// The hash of the event held at that position.
        stored: Hash,
    },
    /// Signed by the author but not this node's history of the feed, sent
    /// by a relay: not the sender's fault.
    Conflict(Rejection),
    /// A format-2 event other than the one this node holds at its position:
    /// from a relay, the author's other history (its seal's checkpoint goes
    /// to the witness as evidence); from the author, misbehaviour.
    SealedConflict(Rejection),
    /// Refused (whether the batch went on depends on the policy: see the
    /// report).
    Rejected(Rejection),
    /// Not read: the policy skips its feed from there on.
    Skipped,
}

/// What to write for a batch, and what to tell the caller.
#[derive(Debug, Default)]
pub struct Ingested {
    /// One per event looked at, in batch order; after a rejection that
    /// ends the batch nothing more was looked at. Write the `Applied` events
    /// and the `Fork` evidence in this order.
    pub decisions: Vec<Decision>,
    pub report: IngestReport,
    /// Each touched feed's new head (heads move once per feed per batch).
    pub heads: BTreeMap<String, NewHead>,
    /// Each touched feed's appended events, for its tree.
    pub leaves: BTreeMap<String, Leaves>,
    /// The seals' checkpoints for the witness, once the events are stored.
    pub notes: Vec<SealNote>,
}

impl Ingested {
    /// The events to store, in order.
    pub fn applied(&self) -> impl Iterator<Item = &VerifiedEvent> {
        self.decisions.iter().filter_map(|d| match d {
            Decision::Applied(event) => Some(event),
            _ => None,
        })
    }
}

/// The ingest rules and the verifier of every feed seen so far.
#[derive(Debug, Default)]
pub struct Ingest {
    /// Per feed, its verifier at the head this node stores (loaded lazily
    /// from [`FeedState::head`]).
    verifiers: HashMap<String, FeedVerifier>,
}

impl Ingest {
    /// The verifier cache, for the other checks that need a feed's key
    /// (fork evidence, checkpoints); they load verifiers with
    /// [`load_verifier`].
    pub fn verifiers_mut(&mut self) -> &mut HashMap<String, FeedVerifier> {
        &mut self.verifiers
    }

    /// `feed`'s cached verifier, if loaded.
    pub fn verifier(&self, feed: &str) -> Option<&FeedVerifier> {
        self.verifiers.get(feed)
    }

    /// Forgets every verifier: the store rolled back a batch, so they may
    /// stand ahead of it.
    pub fn forget_all(&mut self) {
        self.verifiers.clear();
    }

    /// Forgets `feed`'s verifier (its head moved by other means).
    pub fn forget(&mut self, feed: &str) {
        self.verifiers.remove(feed);
    }

    /// Verifies a batch, in order, stopping at the first rejection that is
    /// the sender's fault. The verifiers advance as if the store wrote what
    /// the result says; if it cannot, call [`Self::forget_all`].
    pub fn ingest<S: FeedState, A: AuthorAdmission>(
        &mut self,
        state: &mut S,
        trust: &A,
        batch: Batch<'_>,
    ) -> Result<Ingested, S::Error> {
        let Batch {
            envelopes,
            seals,
            mut policy,
            own_feed,
            cluster,
        } = batch;
        let mut out = Ingested::default();
        let decoded: Vec<Result<DecodedEvent, DecodeError>> =
            envelopes.into_iter().map(DecodedEvent::decode).collect();
        let sealed = seals::check_seals(
            state,
            &mut seals::SealContext {
                trust,
                verifiers: &mut self.verifiers,
                cluster,
                own_feed,
                policy: &policy,
            },
            &decoded,
            seals,
        )?;
        if let Some(reason) = sealed.unreadable {
            out.report.rejected = Some(Rejection {
                seq: None,
                check: Check::Signature,
                expected: "seals whose checkpoints name feeds of this cluster".into(),
                found: reason,
            });
            return Ok(out);
        }
        out.notes = sealed.notes;
        let signatures = precheck_signatures(
            state,
            trust,
            &mut self.verifiers,
            &decoded,
            own_feed,
            &policy,
        )?;
        let mut run = Run {
            state,
            trust,
            verifiers: &mut self.verifiers,
            own_feed,
            forked: HashMap::new(),
        };
        let verdicts = sealed.verdicts.into_iter().zip(signatures);
        for (event, (seal_verdict, signature)) in decoded.into_iter().zip(verdicts) {
            let feed = event.as_ref().ok().map(|e| e.header().author.clone());
            let seq = event.as_ref().map_or(0, |e| e.header().seq);
            if let Some(feed) = &feed
                && policy.skips(feed, seq)
            {
                out.report.skipped += 1;
                out.decisions.push(Decision::Skipped);
                continue;
            }
            let unsealed = seal_verdict.is_none()
                && event.as_ref().is_ok_and(DecodedEvent::is_sealed)
                && !holds(run.state, run.verifiers, feed.as_deref(), seq)?;
            let failure = feed
                .as_ref()
                .filter(|_| unsealed)
                .and_then(|f| sealed.failures.get(f));
            let decision = match (event, failure) {
                (Ok(_), Some(failure)) => seal_rejection(seq, failure),
                (Ok(event), None) => run.decide(event, seal_verdict.or(signature), &out)?,
                (Err(e), _) => Decision::Rejected(Rejection::decode(&e)),
            };
            let go_on = out.tally(&mut policy, feed, seq, &decision);
            out.decisions.push(decision);
            if !go_on {
                break;
            }
        }
        if out.report.rejected.is_some() {
            // A rejected run may have left a verifier mid-way; reload it
            // from the store.
            self.verifiers.clear();
        }
        Ok(out)
    }
}

impl Ingested {
    /// The hash of the event this batch applied at `feed`/`seq`, if it did
    /// (a feed's applied events are consecutive: its leaves).
    fn applied_hash(&self, feed: &str, seq: u64) -> Option<Hash> {
        let leaves = self.leaves.get(feed)?;
        let i = usize::try_from(seq.checked_sub(leaves.first_seq)?).ok()?;
        leaves.event_hashes.get(i).copied()
    }

    /// The event this batch applied at `feed`/`seq`, if it did.
    fn applied_event(&self, feed: &str, seq: u64) -> Option<&VerifiedEvent> {
        self.applied_hash(feed, seq)?;
        self.applied()
            .find(|e| e.header().seq == seq && e.header().author == feed)
    }

    /// Counts `decision` in the report and notes the heads and leaves it
    /// moves; `false` if the batch ends with it.
    fn tally(
        &mut self,
        policy: &mut IngestPolicy,
        feed: Option<String>,
        seq: u64,
        decision: &Decision,
    ) -> bool {
        let report = &mut self.report;
        match decision {
            Decision::Applied(event) => {
                report.applied += 1;
                if let Some(feed) = feed {
                    let h = event.header();
                    let head = NewHead {
                        seq: h.seq,
                        hash: *event.hash(),
                        timestamp_us: h.timestamp_us,
                    };
                    self.leaves
                        .entry(feed.clone())
                        .or_insert_with(|| Leaves {
                            first_seq: head.seq,
                            event_hashes: Vec::new(),
                        })
                        .event_hashes
                        .push(head.hash);
                    self.heads.insert(feed, head);
                }
            }
            Decision::Duplicate => report.duplicates += 1,
            // A fork is the author's doing, not the sender's: keep the
            // evidence, take no more of that feed, go on with the rest.
            Decision::Fork { .. } => {
                report.forks += 1;
                if let Some(feed) = feed {
                    policy.skip_from(&feed, seq);
                    report.new_forks.push((feed, seq));
                }
                report.skipped += 1;
            }
            Decision::Conflict(rejection) => {
                if let Some(feed) = feed {
                    report.skipped += 1;
                    policy.skip_from(&feed, seq);
                    report.conflicts.push((feed, rejection.clone()));
                }
            }
            // From a relay (a peer that is not the author), as for a
            // previous-hash conflict; a local import is told.
            Decision::SealedConflict(rejection) => match feed {
                Some(feed) if policy.relays(&feed) => {
                    report.skipped += 1;
                    policy.skip_from(&feed, seq);
                    report.conflicts.push((feed, rejection.clone()));
                }
                feed => {
                    report.rejected = Some(rejection.clone());
                    report.rejected_feed = feed;
                    return false;
                }
            },
            Decision::Rejected(rejection) => {
                let tolerated = feed.as_deref().and_then(|f| policy.tolerates(f, rejection));
                match (tolerated, feed) {
                    (Some(kind), Some(feed)) => {
                        report.skipped += 1;
                        policy.skip_from(&feed, seq);
                        match kind {
                            Tolerated::Conflict => report.conflicts.push((feed, rejection.clone())),
                            Tolerated::Revoked => report.revoked.push((feed, rejection.clone())),
                            Tolerated::Forked => {}
                        }
                    }
                    (_, feed) => {
                        report.rejected = Some(rejection.clone());
                        report.rejected_feed = feed;
                        return false;
                    }
                }
            }
            // Counted where the policy skipped it.
            Decision::Skipped => {}
        }
        true
    }
}

/// The verifier of `feed`, resumed from its stored head on first use. The
/// inner `Err` is a rejection of the event (no genesis yet, revoked author).
pub fn load_verifier<'a, S: FeedState, A: AuthorAdmission>(
    state: &mut S,
    trust: &A,
    verifiers: &'a mut HashMap<String, FeedVerifier>,
    feed: &str,
) -> Result<Result<&'a mut FeedVerifier, Rejection>, S::Error> {
    if !verifiers.contains_key(feed) {
        let Some(head) = state.head(feed)? else {
            return Ok(Err(not_started(feed)));
        };
        let resumed = FeedVerifier::resume(
            trust,
            feed,
            &head.genesis_cert,
            head.seq,
            head.hash,
            head.last_timestamp_us,
        );
        match resumed {
            Ok(verifier) => verifiers.insert(feed.to_string(), verifier),
            Err(r) => return Ok(Err(r)),
        };
    }
    Ok(verifiers.get_mut(feed).ok_or_else(|| not_started(feed)))
}

/// The rejection of an event of a feed whose genesis this node lacks.
fn not_started(feed: &str) -> Rejection {
    Rejection {
        seq: None,
        check: Check::Author,
        expected: format!("the genesis event of feed {feed} first"),
        found: "an event of a feed this node has not started".into(),
    }
}

/// One batch being decided.
struct Run<'a, S, A> {
    state: &'a mut S,
    trust: &'a A,
    verifiers: &'a mut HashMap<String, FeedVerifier>,
    own_feed: Option<&'a str>,
    /// Per feed seen in the batch, where it is frozen (read once).
    forked: HashMap<String, Option<u64>>,
}

impl<S: FeedState, A: AuthorAdmission> Run<'_, S, A> {
    /// Decides one decoded event, given the verdict on its signature if
    /// one was reached already (by a seal or the batched precheck).
    /// `so_far` holds what the batch decided before it (not in `state`
    /// yet).
    fn decide(
        &mut self,
        event: DecodedEvent,
        verdict: Option<SignatureVerdict>,
        so_far: &Ingested,
    ) -> Result<Decision, S::Error> {
        let author = event.header().author.clone();
        let seq = event.header().seq;
        let fork_at = match self.forked.get(&author) {
            Some(f) => *f,
            None => {
                let f = self.state.fork_seq(&author)?;
                self.forked.insert(author.clone(), f);
                f
            }
        };
        // Below the fork the feed's history is undisputed; from it on,
        // nothing more of it is taken.
        if let Some(fork_seq) = fork_at
            && seq >= fork_seq
        {
            return Ok(Decision::Rejected(Rejection {
                seq: Some(seq),
                check: Check::Fork,
                expected: format!("events of {author} below {fork_seq}, where its feed forked"),
                found: format!("an event of {author} at sequence {seq}"),
            }));
        }
        let own = self.own_feed == Some(author.as_str());
        // A feed's stored events are exactly 0..=head, and a cached verifier
        // stands at head + 1, so an event at or beyond it cannot be held
        // yet: skip the lookup on the hot path. This node's own feed is
        // excluded, as its sealer (not this verifier) advances it once it
        // proclaims.
        let beyond_head = !own
            && self
                .verifiers
                .get(&author)
                .is_some_and(|v| seq >= v.next_seq());
        let stored = if beyond_head {
            None
        } else if let Some(hash) = so_far.applied_hash(&author, seq) {
            Some(hash)
        } else {
            self.state.stored_hash(&author, seq)?
        };
        if let Some(stored) = stored {
            return self.against_stored(event, stored, so_far);
        }
        if own {
            // Our own feed ahead of our store: only recovery may append it,
            // never a peer's push once this node proclaims. No honest peer
            // sends it (it holds no more of our feed than we do), so this is
            // refused before any signature is checked.
            return Ok(Decision::Rejected(Rejection {
                seq: Some(seq),
                check: Check::Author,
                expected: "no events of this node's own feed beyond its head".into(),
                found: format!("{author} event at sequence {seq}"),
            }));
        }
        let verified = if seq == 0 {
            match FeedVerifier::genesis(self.trust, event, verdict) {
                Ok((verifier, verified)) => {
                    self.verifiers.insert(author, verifier);
                    verified
                }
                Err(r) => return Ok(Decision::Rejected(r)),
            }
        } else {
            let verifier = match load_verifier(self.state, self.trust, self.verifiers, &author)? {
                Ok(v) => v,
                Err(r) => return Ok(Decision::Rejected(r)),
            };
            let verdict = verdict.unwrap_or_else(|| verifier.check_signature(&event));
            match verifier.verify_next_with(self.trust, event, verdict) {
                Ok(v) => v,
                Err(r) => return Ok(Decision::Rejected(r)),
            }
        };
        Ok(Decision::Applied(verified))
    }

    /// Decides an event at a position this node holds (the event there
    /// has hash `stored`): a copy, fork evidence, or a refusal.
    fn against_stored(
        &mut self,
        event: DecodedEvent,
        stored: Hash,
        so_far: &Ingested,
    ) -> Result<Decision, S::Error> {
        if &stored == event.hash() {
            return Ok(Decision::Duplicate);
        }
        let author = event.header().author.clone();
        let seq = event.header().seq;
        let verifier = match load_verifier(self.state, self.trust, self.verifiers, &author)? {
            Ok(v) => v,
            Err(r) => return Ok(Decision::Rejected(r)),
        };
        let conflict = Rejection {
            seq: Some(seq),
            check: Check::Fork,
            expected: hex::encode(stored),
            found: hex::encode(event.hash()),
        };
        let held = match so_far.applied_event(&author, seq) {
            // Verified bytes decode again.
            Some(applied) => DecodedEvent::decode(applied.bytes().to_vec()).ok(),
            None => Some(self.state.stored_event(&author, seq)?),
        };
        if held.is_some_and(|held| verifier.is_fork_proof(&event, &held)) {
            // Any earlier fork point would have refused this event before.
            self.forked.insert(author, Some(seq));
            return Ok(Decision::Fork {
                conflicting: event,
                stored,
            });
        }
        // An honest peer sends a format-2 event of a position this node
        // holds only as a copy: its side of a split view travels as a
        // checkpoint, since a format-2 event proves no fork on its own.
        if event.is_sealed() {
            return Ok(Decision::SealedConflict(Rejection {
                check: Check::Signature,
                expected: "a copy of the stored event (a format-2 event proves no fork)".into(),
                found: "another format-2 event at a position this node holds".into(),
                ..conflict
            }));
        }
        Ok(Decision::Rejected(Rejection {
            check: Check::Signature,
            expected: "a copy of the stored event or a validly signed fork".into(),
            found: "an invalidly signed conflicting event".into(),
            ..conflict
        }))
    }
}

/// Whether this node holds an event at `feed`/`seq` (a copy a peer sent
/// again needs no seal: it is compared with the held one). Events the batch
/// applied are held: their feed's verifier stands past them.
fn holds<S: FeedState>(
    state: &mut S,
    verifiers: &HashMap<String, FeedVerifier>,
    feed: Option<&str>,
    seq: u64,
) -> Result<bool, S::Error> {
    let Some(feed) = feed else { return Ok(false) };
    if let Some(v) = verifiers.get(feed) {
        return Ok(seq < v.next_seq());
    }
    Ok(state.stored_hash(feed, seq)?.is_some())
}

/// The decision for a format-2 event whose feed's seal failed.
fn seal_rejection(seq: u64, failure: &SealFailure) -> Decision {
    let rejection = |found: &str| Rejection {
        seq: Some(seq),
        check: Check::Signature,
        expected: "a seal whose checkpoint, signed by the feed's author, includes the event".into(),
        found: found.to_string(),
    };
    match failure {
        SealFailure::Misbehaviour(why) => Decision::Rejected(rejection(why)),
        SealFailure::Conflict(why) => Decision::Conflict(rejection(why)),
    }
}

/// Checks the signatures of every event whose author's key is known (a
/// stored feed, or a genesis in the batch), in batches on all cores, before
/// the events are applied in order. `None`: check when applying.
fn precheck_signatures<S: FeedState, A: AuthorAdmission>(
    state: &mut S,
    trust: &A,
    verifiers: &mut HashMap<String, FeedVerifier>,
    events: &[Result<DecodedEvent, DecodeError>],
    own_feed: Option<&str>,
    policy: &IngestPolicy,
) -> Result<Vec<Option<SignatureVerdict>>, S::Error> {
    let mut keys: HashMap<String, Option<ed25519_dalek::VerifyingKey>> = HashMap::new();
    let mut items = Vec::new();
    let mut slots = Vec::with_capacity(events.len());
    for event in events {
        let Ok(event) = event else {
            slots.push(None);
            continue;
        };
        let author = &event.header().author;
        // This node's own feed is only ever appended by its sealer (outside
        // recovery), and skipped feeds are not looked at: spend no
        // verification on either (a peer could send them by the thousand).
        if own_feed == Some(author.as_str()) || policy.skips(author, event.header().seq) {
            slots.push(None);
            continue;
        }
        if !keys.contains_key(author) {
            let key = match load_verifier(state, trust, verifiers, author)? {
                Ok(v) => Some(*v.key()),
                Err(_) => None,
            };
            keys.insert(author.clone(), key);
        }
        // Events this node already holds are duplicates (or fork evidence,
        // checked on its own when applied): don't spend a verification.
        let held = verifiers
            .get(author)
            .is_some_and(|v| event.header().seq < v.next_seq());
        match keys.get(author).copied().flatten() {
            Some(key) if event.header().seq > 0 && !held => {
                slots.push(Some(items.len()));
                items.push((key, event));
            }
            _ => slots.push(None),
        }
    }
    let results = check_event_signatures(items.iter().map(|(key, event)| (key, *event)));
    Ok(slots.into_iter().map(|s| s.map(|i| results[i])).collect())
}
