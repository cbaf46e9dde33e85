//! Forks and split views: fork evidence received from peers, and the reads
//! replication needs to compare histories and pass evidence on. What an
//! ingest tolerates from a sender that is not at fault is an ingest rule
//! (`core::ingest`); its policy is re-exported here.
//!
//! Fork evidence is self-proving: two envelopes of one author at one
//! sequence number with different hashes, both validly signed by the
//! author's certificate. Whoever relays it, every node that checks it can
//! freeze the feed. The event hash covers the header only (the payload is
//! committed by its hash), so evidence travels with payloads pruned and
//! stays small whatever the events carried.

use rusqlite::{Connection, OptionalExtension, Transaction};

use super::writer::{EvidenceReply, Request, load_verifier, record_fork, stored_hash};
use super::{ForkEvidence, Log, LogError};
use crate::core::codec;
use crate::core::crypto::Hash;
use crate::core::verify::{Check, DecodedEvent, FeedVerifier, Rejection};
use crate::identity::TrustAnchor;

pub use crate::core::ingest::{IngestPolicy, Tolerated};

/// What became of fork evidence a peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvidenceOutcome {
    /// New: the feed is frozen from `seq` on; pass the evidence on.
    Recorded { feed: String, seq: u64 },
    /// This node already knew the feed forked at or before that point.
    AlreadyKnown,
    /// This node holds no event of that feed, so it cannot check the
    /// author's key; the evidence comes again on the next connection.
    UnknownFeed,
}

/// The sequence number from which `feed` is frozen, if it forked.
pub(super) fn fork_seq(tx: &Connection, feed: &str) -> rusqlite::Result<Option<u64>> {
    let seq: Option<i64> = tx
        .query_row(
            "SELECT MIN(s) FROM (SELECT MIN(seq) AS s FROM forks WHERE feed = ?1
             UNION ALL SELECT MIN(first_size) FROM equivocations WHERE feed = ?1)",
            [feed],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    Ok(seq.map(|s| s as u64))
}

/// `bytes` re-encoded with its payload pruned: the same event hash and
/// signature, at most a header's size.
pub fn pruned_envelope(bytes: &[u8]) -> Result<Vec<u8>, codec::DecodeError> {
    let (mut envelope, _) = codec::decode_envelope(bytes)?;
    envelope.payload = None;
    Ok(codec::encode_envelope(&envelope))
}

/// Checks fork evidence and records it. The outer `Err` is the store
/// failing; the inner one names what is wrong with the evidence (which
/// proves the sender misbehaved: an honest node passes on only evidence it
/// checked).
pub(super) fn record_evidence(
    tx: &Transaction<'_>,
    trust: &TrustAnchor,
    verifiers: &mut std::collections::HashMap<String, FeedVerifier>,
    first: Vec<u8>,
    second: Vec<u8>,
) -> Result<Result<EvidenceOutcome, Rejection>, LogError> {
    let first = match DecodedEvent::decode(first) {
        Ok(e) => e,
        Err(e) => return Ok(Err(Rejection::decode(&e))),
    };
    let second = match DecodedEvent::decode(second) {
        Ok(e) => e,
        Err(e) => return Ok(Err(Rejection::decode(&e))),
    };
    let (author, seq) = (first.header().author.clone(), first.header().seq);
    let not_evidence = |found: String| Rejection {
        seq: Some(seq),
        check: Check::Fork,
        expected: "two events of one author at one sequence number with different hashes".into(),
        found,
    };
    if second.header().author != author || second.header().seq != seq {
        return Ok(Err(not_evidence(format!(
            "{author}/{seq} and {}/{}",
            second.header().author,
            second.header().seq
        ))));
    }
    if first.hash() == second.hash() {
        return Ok(Err(not_evidence("the same event twice".into())));
    }
    if fork_seq(tx, &author)?.is_some_and(|at| at <= seq) {
        return Ok(Ok(EvidenceOutcome::AlreadyKnown));
    }
    let verifier = match load_verifier(tx, trust, verifiers, &author)? {
        Ok(v) => v,
        Err(_) => return Ok(Ok(EvidenceOutcome::UnknownFeed)),
    };
    if !verifier.is_fork_proof(&first, &second) {
        return Ok(Err(Rejection {
            check: Check::Signature,
            expected: format!("both events signed by {author}'s key"),
            found: "fork evidence with an invalid signature".into(),
            ..not_evidence(String::new())
        }));
    }
    match stored_hash(tx, &author, seq)? {
        // One side is the event this node holds: record the other against it.
        Some(held) if held == *first.hash() => record_fork(tx, &second, held, None)?,
        Some(held) if held == *second.hash() => record_fork(tx, &first, held, None)?,
        // This node holds neither (a third version, or it has not reached
        // that point): keep both sides in the evidence row.
        _ => record_fork(tx, &second, *first.hash(), Some(first.bytes()))?,
    }
    Ok(Ok(EvidenceOutcome::Recorded { feed: author, seq }))
}

impl Log {
    /// Verifies and commits events received from `policy.sender`, like
    /// [`Log::ingest`], but a rejection that is not the sender's fault (see
    /// [`IngestPolicy::tolerates`]) skips that feed for the rest of the
    /// batch instead of ending it; the report lists such feeds.
    pub fn ingest_from(
        &self,
        envelopes: Vec<Vec<u8>>,
        policy: IngestPolicy,
    ) -> Result<super::IngestReport, LogError> {
        self.ingest_sealed(envelopes, Vec::new(), policy)
    }

    /// [`Log::ingest_from`] with the seals that authenticate runs of
    /// format-2 events (see `core::wire::Seal`); a sealed event no valid
    /// seal covers is rejected like a bad signature.
    pub fn ingest_sealed(
        &self,
        envelopes: Vec<Vec<u8>>,
        seals: Vec<crate::core::wire::Seal>,
        policy: IngestPolicy,
    ) -> Result<super::IngestReport, LogError> {
        let (reply, receiver) = std::sync::mpsc::sync_channel(1);
        self.send(Request::Ingest {
            envelopes,
            seals,
            policy,
            reply,
        })?;
        receiver.recv().map_err(|_| LogError::WriterGone)?
    }

    /// Checks fork evidence a peer sent and records it if it is new.
    pub fn record_fork_evidence(
        &self,
        first: Vec<u8>,
        second: Vec<u8>,
    ) -> Result<Result<EvidenceOutcome, Rejection>, LogError> {
        let (reply, receiver): (EvidenceReply, _) = std::sync::mpsc::sync_channel(1);
        self.send(Request::Evidence {
            first,
            second,
            reply,
        })?;
        receiver.recv().map_err(|_| LogError::WriterGone)?
    }

    /// The evidence of each forked feed's earliest fork (one per feed, so
    /// what a node passes on is bounded by the feeds it holds), payloads
    /// pruned.
    pub fn fork_evidence_to_share(&self) -> Result<Vec<ForkEvidence>, LogError> {
        let forks = {
            let conn = self.reader()?;
            super::read_forks(&conn)?
        };
        let mut seen = std::collections::BTreeMap::new();
        for fork in forks {
            let earlier = seen
                .get(&fork.feed)
                .is_some_and(|f: &ForkEvidence| f.seq <= fork.seq);
            if !earlier {
                seen.insert(fork.feed.clone(), fork);
            }
        }
        let mut out = Vec::new();
        for (_, fork) in seen {
            let pruned = (
                pruned_envelope(&fork.stored_envelope),
                pruned_envelope(&fork.conflicting_envelope),
            );
            match pruned {
                (Ok(stored), Ok(conflicting)) => out.push(ForkEvidence {
                    stored_envelope: stored,
                    conflicting_envelope: conflicting,
                    ..fork
                }),
                _ => {
                    tracing::warn!(feed = %fork.feed, seq = fork.seq, "stored fork evidence does not decode; not passed on")
                }
            }
        }
        Ok(out)
    }

    /// For each `(feed, seq)`, the hash of the event this node holds there
    /// (`None` if it holds none): to compare a peer's positions with this
    /// node's history.
    pub fn hashes_at(&self, positions: &[(String, u64)]) -> Result<Vec<Option<Hash>>, LogError> {
        let conn = self.reader()?;
        let mut out = Vec::with_capacity(positions.len());
        for (feed, seq) in positions {
            out.push(stored_hash(&conn, feed, *seq)?);
        }
        Ok(out)
    }

    /// The envelope this node holds at `feed`/`seq`, payload pruned.
    pub fn pruned_event_at(&self, feed: &str, seq: u64) -> Result<Option<Vec<u8>>, LogError> {
        let conn = self.reader()?;
        super::rows::event_at(&conn, feed, seq)?
            .map(|event| {
                pruned_envelope(&event.envelope)
                    .map_err(|e| LogError::Corrupt(format!("stored event {feed}/{seq}: {e}")))
            })
            .transpose()
    }
}
