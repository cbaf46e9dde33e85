//! Herald's one signature rule, applied to event hashes: single checks and
//! batches on all cores, which accept exactly the same signatures; and the
//! [`SignatureVerdict`] that carries an event's result to its verifier,
//! whether reached through the event's own signature (format 1) or through
//! a checkpoint of its author's that covers it (format 2, see `seal`).

use ed25519_dalek::{Signature, VerifyingKey};
use rayon::prelude::*;

use super::DecodedEvent;
use crate::core::codec;
use crate::core::crypto::Hash;
use crate::core::limits::VERIFY_BATCH_EVENTS;

/// One signature check under herald's rule (cofactored, ZIP-215 style; see
/// [`crate::core::signature`]): the single and batch paths accept exactly the same
/// signatures, so every node and auditor reaches the same verdict.
pub fn signature_valid(key: &VerifyingKey, hash: &Hash, signature: &Signature) -> bool {
    crate::core::signature::verify_single(key, &codec::signing_message(hash), signature)
}

/// Checks many signatures: batches of [`VERIFY_BATCH_EVENTS`] verified on all
/// cores; a failing batch falls back to single checks to name the bad ones.
pub fn batch_signatures_valid(items: &[(VerifyingKey, Hash, Signature)]) -> Vec<bool> {
    items
        .par_chunks(VERIFY_BATCH_EVENTS)
        .flat_map_iter(|chunk| {
            let messages: Vec<[u8; 58]> = chunk
                .iter()
                .map(|(_, h, _)| codec::signing_message(h))
                .collect();
            let batch: Vec<(VerifyingKey, &[u8], Signature)> = chunk
                .iter()
                .zip(&messages)
                .map(|((k, _, s), m)| (*k, m.as_slice(), *s))
                .collect();
            let results: Vec<bool> = if crate::core::signature::verify_batch(&batch) {
                vec![true; chunk.len()]
            } else {
                chunk
                    .iter()
                    .map(|(k, h, s)| signature_valid(k, h, s))
                    .collect()
            };
            results.into_iter()
        })
        .collect()
}

/// The result of checking one event's signature under one key. Only this
/// module produces it (through [`check_event_signatures`],
/// [`super::FeedVerifier::check_signatures`] or
/// [`super::FeedVerifier::check_signature`]), so no caller can vouch for a
/// signature it did not check. It names the event (by hash) and the key, so
/// it cannot be passed off for another event or for another feed: the
/// verifier refuses a verdict that is not about the event and key in front
/// of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a signature verdict only counts when handed to the feed's verifier"]
pub struct SignatureVerdict {
    /// The key the signature was checked under (compressed Ed25519 point).
    key: [u8; 32],
    /// The hash of the event whose signature was checked.
    event_hash: Hash,
    /// Whether the signature verified under herald's rule.
    valid: bool,
    /// What was checked: the event's own signature or a checkpoint.
    basis: Basis,
}

/// What a verdict rests on. A format-1 event needs its own signature, a
/// format-2 event a checkpoint; the verifier refuses the other kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Basis {
    /// The event's own signature.
    EventSignature,
    /// A checkpoint signed by the author whose tree includes the event.
    Checkpoint,
}

impl SignatureVerdict {
    /// Checks one event's signature under `key`. A format-2 event has none:
    /// the verdict is invalid (only a checkpoint can vouch for it).
    pub(super) fn check(key: &VerifyingKey, event: &DecodedEvent) -> SignatureVerdict {
        let valid = event
            .signature()
            .is_some_and(|signature| signature_valid(key, event.hash(), &signature));
        SignatureVerdict::new(key, event, valid)
    }

    fn new(key: &VerifyingKey, event: &DecodedEvent, valid: bool) -> SignatureVerdict {
        SignatureVerdict {
            key: key.to_bytes(),
            event_hash: *event.hash(),
            valid,
            basis: Basis::EventSignature,
        }
    }

    /// A verdict that `event` is included in a checkpoint signed with `key`
    /// (only `seal` reaches it, after checking signature and proof).
    pub(super) fn covered(key: &VerifyingKey, event: &DecodedEvent) -> SignatureVerdict {
        SignatureVerdict {
            key: key.to_bytes(),
            event_hash: *event.hash(),
            valid: true,
            basis: Basis::Checkpoint,
        }
    }

    /// What the verdict rests on.
    pub(super) fn basis(&self) -> Basis {
        self.basis
    }

    /// Whether the signature verified.
    pub fn is_valid(&self) -> bool {
        self.valid
    }

    /// The hash of the event this verdict is about.
    pub fn event_hash(&self) -> &Hash {
        &self.event_hash
    }

    /// Whether this verdict is about `event` checked under `key` (whatever
    /// its outcome).
    pub(super) fn is_about(&self, key: &VerifyingKey, event: &DecodedEvent) -> bool {
        self.is_about_key(key) && &self.event_hash == event.hash()
    }

    /// Whether this verdict was reached under `key`.
    pub(super) fn is_about_key(&self, key: &VerifyingKey) -> bool {
        self.key == key.to_bytes()
    }
}

/// Checks the signatures of events that may belong to different feeds, each
/// under the key given with it, in batches on all cores (one ingest batch
/// or audit chunk mixes feeds). A verdict under a key that is not the
/// event's author's is refused by the author's verifier, so a wrong key
/// here cannot make an event pass.
pub fn check_event_signatures<'a>(
    items: impl IntoIterator<Item = (&'a VerifyingKey, &'a DecodedEvent)>,
) -> Vec<SignatureVerdict> {
    let items: Vec<(&VerifyingKey, &DecodedEvent)> = items.into_iter().collect();
    // Format-2 events carry no signature to check: their verdict is
    // invalid here, and only a checkpoint (see `seal`) can vouch for them.
    let keyed: Vec<(VerifyingKey, Hash, Signature)> = items
        .iter()
        .filter_map(|(key, event)| Some((**key, *event.hash(), event.signature()?)))
        .collect();
    let mut results = batch_signatures_valid(&keyed).into_iter();
    items
        .iter()
        .map(|(key, event)| {
            let valid = !event.is_sealed() && results.next().unwrap_or(false);
            SignatureVerdict::new(key, event, valid)
        })
        .collect()
}
