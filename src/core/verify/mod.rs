//! Sealing and verification: the only two ways to obtain a [`VerifiedEvent`].
//!
//! * [`FeedVerifier`] turns untrusted bytes into `VerifiedEvent`s: decoding and
//!   limits, the author's certificate (via the genesis event) against the CA
//!   and revocation list, signature, sequence, previous hash, timestamp order,
//!   certificate validity at the event's time, and the payload hash.
//! * [`Sealer`] is held by a feed's owner: it encrypts, chains and signs new
//!   events, correct by construction (and re-verified in debug builds).
//!
//! The store and the relay accept only `VerifiedEvent`, so forgetting to verify
//! does not compile.
//!
//! Layout, one idea per file: this file holds the event values and the
//! rejection vocabulary; `verifier` the per-feed chain checks; `sealer` the
//! owner's side; `payload` encryption and the payload checks; `signatures`
//! herald's one signature rule, single and batched.

mod payload;
mod seal;
mod sealer;
mod signatures;
mod verifier;

pub use payload::{DecryptError, check_payload, decrypt_payload, open_payload};
pub use seal::{Seal, SealError, SealedRun, check_sealed_run, leaf_of};
pub use sealer::{ChainedBatch, Draft, DraftError, Entropy, Sealer, SealerMark};
pub use signatures::{
    SignatureVerdict, batch_signatures_valid, check_event_signatures, signature_valid,
};
pub use verifier::{FeedVerifier, check_cert_window, transition_key};

use std::fmt;

use ed25519_dalek::Signature;

use super::codec::{self, DecodeError};
use super::crypto::Hash;
use super::event::*;

/// An event decoded from untrusted bytes: well-formed, within limits and
/// canonical, hashed, but not yet verified.
#[derive(Debug, Clone)]
pub struct DecodedEvent {
    header: EventHeader,
    hash: Hash,
    signature: Option<[u8; 64]>,
    /// The payload's length, if present: it is the last bytes of `bytes`.
    payload_len: Option<usize>,
    bytes: Vec<u8>,
}

/// The payload an envelope ends with, if it has one of `len` bytes.
fn payload_tail(bytes: &[u8], len: Option<usize>) -> Option<&[u8]> {
    len.and_then(|n| bytes.get(bytes.len().checked_sub(n)?..))
}

impl DecodedEvent {
    /// The payload bytes, if present.
    pub fn payload(&self) -> Option<&[u8]> {
        payload_tail(&self.bytes, self.payload_len)
    }

    /// Decodes envelope bytes (checks limits and canonical form, hashes the header).
    pub fn decode(bytes: Vec<u8>) -> Result<DecodedEvent, DecodeError> {
        let (envelope, header) = codec::decode_envelope_ref(&bytes)?;
        let hash = codec::event_hash(envelope.header);
        let signature = envelope.signature;
        let payload_len = envelope.payload.map(<[u8]>::len);
        Ok(DecodedEvent {
            header,
            hash,
            signature,
            payload_len,
            bytes,
        })
    }

    pub fn header(&self) -> &EventHeader {
        &self.header
    }

    pub fn hash(&self) -> &Hash {
        &self.hash
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The raw signature bytes of a format-1 event; `None` for a format-2
    /// event, which its author's checkpoints authenticate.
    pub fn signature_bytes(&self) -> Option<&[u8; 64]> {
        self.signature.as_ref()
    }

    /// Whether this is a format-2 event (authenticated by checkpoints).
    pub fn is_sealed(&self) -> bool {
        self.signature.is_none()
    }

    fn signature(&self) -> Option<Signature> {
        self.signature.as_ref().map(Signature::from_bytes)
    }
}

/// An event that passed every check against its feed. Only this module can
/// construct one.
#[derive(Debug, Clone)]
pub struct VerifiedEvent {
    header: EventHeader,
    hash: Hash,
    signature: Option<[u8; 64]>,
    /// The payload's length, if present: it is the last bytes of `bytes`.
    payload_len: Option<usize>,
    bytes: Vec<u8>,
}

impl VerifiedEvent {
    /// The decoded header.
    pub fn header(&self) -> &EventHeader {
        &self.header
    }
    /// The event hash (the next event's `prev`).
    pub fn hash(&self) -> &Hash {
        &self.hash
    }
    /// The stored payload bytes (ciphertext when encrypted), if not pruned.
    pub fn payload(&self) -> Option<&[u8]> {
        payload_tail(&self.bytes, self.payload_len)
    }
    /// The signature of a format-1 event; `None` in format 2.
    pub fn signature_bytes(&self) -> Option<&[u8; 64]> {
        self.signature.as_ref()
    }
    /// The exact signed envelope bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// Consumes the event, returning its envelope bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Which verification check an event failed. The names are stable: they
/// appear in `herald verify --json` output and in the test vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Bytes are not a well-formed, canonical event within the limits.
    Decode,
    /// The genesis certificate is not admitted by the CA / revocation list.
    Certificate,
    /// The event's time is outside its author's certificate validity.
    CertificateValidity,
    /// The event is not by the feed's author, or the feed has no genesis.
    Author,
    /// The Ed25519 signature does not verify.
    Signature,
    /// The sequence number is not the head's plus one.
    Sequence,
    /// The same event appears twice.
    Duplicate,
    /// `prev` is not the hash of the previous event.
    PreviousHash,
    /// The timestamp is before the previous event's.
    Timestamp,
    /// The payload does not match the hash or length in the header.
    PayloadHash,
    /// Two validly signed events share an author and sequence number.
    Fork,
    /// The payload does not decrypt under the given channel key.
    Decrypt,
    /// The export ends early or its end record disagrees with its contents.
    Truncated,
    /// The event is at or after the cut-off of a revocation of its
    /// author's certificate.
    Revoked,
    /// A key transition is malformed or not authorized (by the old key for
    /// a rotation, by a CA for a recovery).
    Transition,
}

impl Check {
    /// The stable, lowercase name of the check.
    pub fn name(self) -> &'static str {
        match self {
            Check::Decode => "decode",
            Check::Certificate => "certificate",
            Check::CertificateValidity => "certificate-validity",
            Check::Author => "author",
            Check::Signature => "signature",
            Check::Sequence => "sequence",
            Check::Duplicate => "duplicate",
            Check::PreviousHash => "previous-hash",
            Check::Timestamp => "timestamp",
            Check::PayloadHash => "payload-hash",
            Check::Fork => "fork",
            Check::Decrypt => "decrypt",
            Check::Truncated => "truncated",
            Check::Revoked => "revoked",
            Check::Transition => "transition",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why one event was rejected: the check, and what was expected against
/// what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} check failed{}: expected {expected}, found {found}", check, seq.map(|s| format!(" at sequence {s}")).unwrap_or_default())]
pub struct Rejection {
    pub seq: Option<u64>,
    pub check: Check,
    pub expected: String,
    pub found: String,
}

impl Rejection {
    pub(crate) fn new(
        seq: u64,
        check: Check,
        expected: impl ToString,
        found: impl ToString,
    ) -> Rejection {
        Rejection {
            seq: Some(seq),
            check,
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }

    /// A rejection of bytes that did not decode.
    pub fn decode(error: &DecodeError) -> Rejection {
        Rejection {
            seq: None,
            check: Check::Decode,
            expected: "a well-formed canonical event".into(),
            found: error.to_string(),
        }
    }
}

/// Hex of a hash, for messages.
fn hx(hash: &Hash) -> String {
    hex::encode(hash)
}

impl VerifiedEvent {
    fn from_decoded(event: DecodedEvent) -> VerifiedEvent {
        VerifiedEvent {
            header: event.header,
            hash: event.hash,
            signature: event.signature,
            payload_len: event.payload_len,
            bytes: event.bytes,
        }
    }
}
