//! Format-2 authentication: a run of a feed's events is authentic when the
//! feed's Merkle tree, extended by the run, is a prefix of a tree whose
//! checkpoint the author signed. One Ed25519 check and a consistency proof
//! of at most ⌈log2 n⌉ hashes vouch for the whole run; the hashing that ties
//! each event to the checkpoint is the leaf and the frontier's few nodes.
//!
//! The receiver brings what it already trusts: the frontier of its own copy
//! of the feed's tree (the events it stored before). The sender brings the
//! seal: the checkpoint (its author's signature is what counts) and the
//! consistency proof from the tree at the run's end to the checkpoint's.

use ed25519_dalek::VerifyingKey;

use super::DecodedEvent;
use super::signatures::SignatureVerdict;
use crate::core::checkpoint::{self, CheckpointError, VerifiedCheckpoint};
use crate::core::crypto::Hash;
use crate::core::merkle::{self, Frontier, ProofError};

/// The leaf of an event in its feed's tree: `SHA-256(0x00 ‖ event hash)`.
pub fn leaf_of(event_hash: &Hash) -> Hash {
    merkle::leaf_hash(event_hash)
}

/// What vouches for a run of events: the author's checkpoint and the
/// consistency proof from the tree ending with the run to the checkpoint's
/// tree (empty when the checkpoint ends exactly with the run).
#[derive(Debug, Clone, Copy)]
pub struct Seal<'a> {
    /// The checkpoint as a signed note (cosignatures, if any, are ignored).
    pub note: &'a [u8],
    /// Consistency proof from the run's end to the checkpoint's size.
    pub proof: &'a [Hash],
}

/// Why a seal does not vouch for a run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("{0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("the seal's checkpoint is of feed {found}, the run of feed {expected}")]
    WrongFeed { expected: String, found: String },
    #[error("the run is not the feed's next events: expected sequence {expected}, found {found}")]
    NotContiguous { expected: u64, found: u64 },
    #[error("the run is empty")]
    Empty,
    #[error("the seal's checkpoint of size {size} does not cover the run, which ends at {end}")]
    TooSmall { size: u64, end: u64 },
    #[error("the run does not extend to the seal's checkpoint: {0}")]
    Inconsistent(ProofError),
    #[error("the feed's tree cannot grow: {0}")]
    Tree(#[from] merkle::MerkleError),
}

/// A run the seal vouched for: one verdict per event, and the checkpoint.
#[derive(Debug)]
pub struct SealedRun {
    /// One verdict per event of the run, in order, for the feed's verifier.
    pub verdicts: Vec<SignatureVerdict>,
    /// The checkpoint, its author's signature checked.
    pub checkpoint: VerifiedCheckpoint,
    /// The frontier of the tree ending with the run.
    pub frontier: Frontier,
}

impl SealedRun {
    /// Whether the checkpoint ends exactly with the run (then the receiver
    /// holds every event it covers, and may store and cosign it).
    pub fn checkpoint_is_complete(&self) -> bool {
        self.checkpoint.size() == self.frontier.size()
    }
}

/// Checks that `events`, the next events of `feed` after the tree whose
/// frontier is `held`, are included in the checkpoint of `seal` signed with
/// `author_key` (the key of the feed's genesis certificate). On success each
/// event gets a verdict its feed's verifier accepts in place of a signature.
pub fn check_sealed_run(
    cluster: &str,
    feed: &str,
    author_key: &VerifyingKey,
    held: &Frontier,
    events: &[&DecodedEvent],
    seal: Seal<'_>,
) -> Result<SealedRun, SealError> {
    if events.is_empty() {
        return Err(SealError::Empty);
    }
    let mut frontier = held.clone();
    for event in events {
        let header = event.header();
        if header.author != feed || header.seq != frontier.size() {
            return Err(SealError::NotContiguous {
                expected: frontier.size(),
                found: header.seq,
            });
        }
        frontier.push(leaf_of(event.hash()))?;
    }
    let checkpoint = checkpoint::open_checkpoint(cluster, seal.note, author_key)?;
    if checkpoint.feed() != feed {
        return Err(SealError::WrongFeed {
            expected: feed.to_string(),
            found: checkpoint.feed().to_string(),
        });
    }
    let end = frontier.size();
    if checkpoint.size() < end {
        return Err(SealError::TooSmall {
            size: checkpoint.size(),
            end,
        });
    }
    merkle::verify_consistency(
        end,
        checkpoint.size(),
        &frontier.root(),
        checkpoint.root(),
        seal.proof,
    )
    .map_err(SealError::Inconsistent)?;
    let verdicts = events
        .iter()
        .map(|event| SignatureVerdict::covered(author_key, event))
        .collect();
    Ok(SealedRun {
        verdicts,
        checkpoint,
        frontier,
    })
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::core::cert::{AuthorAdmission, AuthorCert, CertError};
    use crate::core::checkpoint::{CheckpointSigner, cluster_id};
    use crate::core::crypto::ChannelKey;
    use crate::core::limits::{FORMAT_VERSION_SEALED, FORMAT_VERSION_SIGNED};
    use crate::core::merkle::{MemoryTree, consistency_proof};
    use crate::core::verify::{Check, Draft, Entropy, FeedVerifier, Sealer};

    /// Admits any certificate bytes as the given key's, for one service.
    struct Admit(SigningKey);

    impl AuthorAdmission for Admit {
        fn admit_author(&self, service: &str, cert_der: &[u8]) -> Result<AuthorCert, CertError> {
            Ok(AuthorCert {
                service: service.into(),
                public_key: self.0.verifying_key().to_bytes(),
                not_before_us: 0,
                not_after_us: u64::MAX,
                serial: vec![1],
                der: cert_der.to_vec(),
                revoked_from: None,
            })
        }
    }

    const FEED: &str = "council";

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[5; 32])
    }

    fn cluster() -> String {
        cluster_id(&[1; 32])
    }

    fn entropy(i: u64) -> Entropy {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&i.to_be_bytes());
        id[6] = 0x70;
        id[8] = 0x80;
        Entropy {
            id,
            nonce: [i as u8; 24],
        }
    }

    /// A feed of `n` events (genesis included) in `format`, decoded.
    fn feed(n: u64, format: u8) -> Vec<DecodedEvent> {
        let (mut sealer, genesis) = Sealer::new_feed(FEED, key())
            .with_format(format)
            .start_feed(b"cert", entropy(0).id, 1_000);
        let channel = ChannelKey::new("default", [3; 32]);
        let mut events = vec![genesis];
        for i in 1..n {
            let draft = Draft::new("donation.received", 1, vec![], vec![i as u8; 20]).unwrap();
            events.extend(sealer.seal_batch(vec![(draft, &channel, entropy(i))], 1_000 + i));
        }
        events
            .into_iter()
            .map(|e| DecodedEvent::decode(e.into_bytes()).unwrap())
            .collect()
    }

    fn tree(events: &[DecodedEvent]) -> MemoryTree {
        MemoryTree::from_leaf_hashes(events.iter().map(|e| leaf_of(e.hash()))).unwrap()
    }

    fn checkpoint(events: &[DecodedEvent], signer_key: SigningKey) -> Vec<u8> {
        let signer = CheckpointSigner::new(cluster(), FEED.into(), signer_key);
        let t = tree(events);
        signer
            .sign(t.size(), t.root())
            .unwrap()
            .to_text()
            .into_bytes()
    }

    fn frontier(events: &[DecodedEvent]) -> Frontier {
        let mut f = Frontier::new();
        f.extend(events.iter().map(|e| leaf_of(e.hash()))).unwrap();
        f
    }

    fn run(events: &[DecodedEvent]) -> Vec<&DecodedEvent> {
        events.iter().collect()
    }

    #[test]
    fn a_checkpoint_at_the_runs_end_vouches_for_every_event_of_it() {
        let events = feed(6, FORMAT_VERSION_SEALED);
        let note = checkpoint(&events, key());
        let admit = Admit(key());
        let author = FeedVerifier::admitted_key(&admit, &events[0]).unwrap();
        let sealed = check_sealed_run(
            &cluster(),
            FEED,
            &author,
            &Frontier::new(),
            &run(&events),
            Seal {
                note: &note,
                proof: &[],
            },
        )
        .unwrap();
        assert!(sealed.checkpoint_is_complete());
        let mut verdicts = sealed.verdicts.into_iter();
        let mut events = events.into_iter();
        let (mut verifier, _) =
            FeedVerifier::genesis(&admit, events.next().unwrap(), verdicts.next()).unwrap();
        for (event, verdict) in events.zip(verdicts) {
            verifier.verify_next(event, verdict).unwrap();
        }
        assert_eq!(verifier.next_seq(), 6);
    }

    #[test]
    fn a_later_checkpoint_vouches_for_a_run_through_a_consistency_proof() {
        let events = feed(13, FORMAT_VERSION_SEALED);
        let note = checkpoint(&events, key());
        let mut whole = tree(&events);
        // The receiver holds 0..4 and is sent 4..9 of a 13-event checkpoint.
        let proof = consistency_proof(&mut whole, 9, 13).unwrap();
        let sealed = check_sealed_run(
            &cluster(),
            FEED,
            &key().verifying_key(),
            &frontier(&events[..4]),
            &run(&events[4..9]),
            Seal {
                note: &note,
                proof: &proof,
            },
        )
        .unwrap();
        assert!(!sealed.checkpoint_is_complete());
        assert_eq!(sealed.verdicts.len(), 5);
        assert_eq!(sealed.frontier.size(), 9);
    }

    #[test]
    fn a_seal_fails_for_any_other_key_event_history_or_proof() {
        let events = feed(9, FORMAT_VERSION_SEALED);
        let note = checkpoint(&events, key());
        let mut whole = tree(&events);
        let proof = consistency_proof(&mut whole, 7, 9).unwrap();
        let check = |held: &Frontier, events: &[&DecodedEvent], note: &[u8], proof: &[Hash]| {
            check_sealed_run(
                &cluster(),
                FEED,
                &key().verifying_key(),
                held,
                events,
                Seal { note, proof },
            )
        };
        let held = frontier(&events[..3]);
        assert!(check(&held, &run(&events[3..7]), &note, &proof).is_ok());
        // Another key signed the checkpoint.
        let forged = checkpoint(&events, SigningKey::from_bytes(&[6; 32]));
        assert!(matches!(
            check(&held, &run(&events[3..7]), &forged, &proof),
            Err(SealError::Checkpoint(_))
        ));
        // A flipped bit in any proof hash.
        for i in 0..proof.len() {
            let mut bad = proof.clone();
            bad[i][0] ^= 1;
            assert!(matches!(
                check(&held, &run(&events[3..7]), &note, &bad),
                Err(SealError::Inconsistent(_))
            ));
        }
        // An event of another history in the run: another feed's event 5.
        let other = feed(9, FORMAT_VERSION_SIGNED);
        let mut mixed = run(&events[3..7]);
        mixed[2] = &other[5];
        assert!(matches!(
            check(&held, &mixed, &note, &proof),
            Err(SealError::Inconsistent(_))
        ));
        // The receiver's own copy differs from the checkpoint's history.
        let diverged = frontier(&other[..3]);
        assert!(check(&diverged, &run(&events[3..7]), &note, &proof).is_err());
        // Gaps and a checkpoint too small for the run.
        assert!(matches!(
            check(&frontier(&events[..2]), &run(&events[3..7]), &note, &proof),
            Err(SealError::NotContiguous { .. })
        ));
        let small = checkpoint(&events[..5], key());
        assert!(matches!(
            check(&held, &run(&events[3..7]), &small, &[]),
            Err(SealError::TooSmall { size: 5, end: 7 })
        ));
    }

    #[test]
    fn each_format_needs_its_own_kind_of_verdict() {
        let admit = Admit(key());
        // A sealed event with no checkpoint: its "signature check" fails.
        let sealed = feed(3, FORMAT_VERSION_SEALED);
        let (mut verifier, _) = {
            let note = checkpoint(&sealed[..1], key());
            let run = check_sealed_run(
                &cluster(),
                FEED,
                &key().verifying_key(),
                &Frontier::new(),
                &run(&sealed[..1]),
                Seal {
                    note: &note,
                    proof: &[],
                },
            )
            .unwrap();
            FeedVerifier::genesis(&admit, sealed[0].clone(), run.verdicts.first().copied()).unwrap()
        };
        let unsealed = verifier.check_signature(&sealed[1]);
        let rejected = verifier
            .verify_next(sealed[1].clone(), unsealed)
            .unwrap_err();
        assert_eq!(rejected.check, Check::Signature);
        assert!(rejected.expected.contains("checkpoint"), "{rejected}");
        // A sealed genesis without a verdict is not admitted.
        assert_eq!(
            FeedVerifier::genesis(&admit, sealed[0].clone(), None)
                .unwrap_err()
                .check,
            Check::Signature
        );
        // A signed (format-1) event is not vouched for by a checkpoint
        // alone: its own signature must verify too.
        let signed = feed(3, FORMAT_VERSION_SIGNED);
        let note = checkpoint(&signed, key());
        let run = check_sealed_run(
            &cluster(),
            FEED,
            &key().verifying_key(),
            &Frontier::new(),
            &run(&signed),
            Seal {
                note: &note,
                proof: &[],
            },
        )
        .unwrap();
        let (mut verifier, _) = FeedVerifier::genesis(&admit, signed[0].clone(), None).unwrap();
        assert_eq!(
            verifier
                .verify_next(signed[1].clone(), run.verdicts[1])
                .unwrap_err()
                .check,
            Check::Signature
        );
        let own = verifier.check_signature(&signed[1]);
        verifier.verify_next(signed[1].clone(), own).unwrap();
    }
}
