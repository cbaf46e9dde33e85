//! Herald's one signature rule, applied to event hashes: single checks and
//! batches on all cores, which accept exactly the same signatures.

use ed25519_dalek::{Signature, VerifyingKey};
use rayon::prelude::*;

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
