//! The event (`TruthProclamationEvent`): a header that commits to everything,
//! its authentication, and the (usually encrypted) payload.
//!
//! The exact bytes are specified in `docs/FORMAT.md`. In short:
//!
//! * `header bytes = postcard(EventHeader)`, canonical (one encoding per event);
//! * `event hash = SHA-256("herald/v1/event-hash\0" ‖ header bytes)`;
//! * format 1 (signed events): `signature = Ed25519(author key,
//!   "herald/v1/event-signature\0" ‖ event hash)` and
//!   `envelope = postcard(header bytes, signature, payload?)`;
//! * format 2 (sealed events): no signature of its own; the event is
//!   authentic once it is included in a checkpoint its author signed, and
//!   `envelope = 0x00 ‖ postcard(header bytes, payload?)`.

use serde::{Deserialize, Serialize};

use super::crypto::{ChannelKeyId, Hash};

/// Event type of the first event of every feed; its plaintext payload is the
/// author's DER certificate.
pub const GENESIS_EVENT_TYPE: &str = "herald.genesis";
/// Event type of a certificate renewal: its plaintext payload is a new DER
/// certificate for the feed's author and the **same** key, admitted by the
/// CA; from this event on (itself included) the feed's events are checked
/// against that certificate's validity.
pub const CERTIFICATE_EVENT_TYPE: &str = "herald.certificate";
/// Prefix reserved for the system's own event types.
pub const RESERVED_TYPE_PREFIX: &str = "herald.";

/// The signed part of an event. Field order is the wire order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventHeader {
    /// Format version; currently [`super::limits::FORMAT_VERSION`].
    pub version: u8,
    /// UUID v7 of the event (16 bytes, big-endian as in RFC 9562).
    pub id: [u8; 16],
    /// The service that proclaimed the event and owns the feed.
    pub author: String,
    /// Position in the author's feed; the genesis event is 0.
    pub seq: u64,
    /// Hash of the previous event of the feed; all zeros for genesis.
    pub prev: Hash,
    /// When the author proclaimed it: microseconds since the Unix epoch, UTC.
    pub timestamp_us: u64,
    /// What kind of fact this is (`donation.received`).
    pub event_type: String,
    /// Version of the payload schema for this event type.
    pub schema_version: u32,
    /// Metadata (correlation id, causation id, ...), sorted by key, keys unique.
    pub meta: Vec<(String, String)>,
    /// How the payload is encrypted, and its hash and length.
    pub payload: PayloadDescriptor,
    /// What authenticates the event: its own signature (format 1) or its
    /// author's signed checkpoints (format 2).
    pub signature_scope: SignatureScope,
}

/// Commits the header to the payload bytes as stored (ciphertext when
/// encrypted), so a payload can be pruned without breaking the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadDescriptor {
    pub encryption: Encryption,
    /// SHA-256 of the stored payload bytes.
    pub hash: Hash,
    /// Length of the stored payload bytes.
    pub len: u32,
}

/// How the payload bytes are protected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encryption {
    /// Stored in the clear. Only `herald.*` event types may use it.
    Plain,
    /// XChaCha20-Poly1305 under the channel key with this id.
    XChaCha20Poly1305 {
        key_id: ChannelKeyId,
        nonce: [u8; 24],
    },
}

/// What authenticates an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignatureScope {
    /// Format 1: a signature over this event's hash alone, in the envelope.
    Event,
    /// Format 2: the author's signed checkpoints of the feed's Merkle tree
    /// (one signature per sealed batch); the envelope carries none.
    Checkpoint,
}

/// An event as stored and sent: header bytes, the signature of a format-1
/// event, payload. `codec::encode_envelope` gives the bytes of each format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The canonical header bytes the hash (and a signature) cover.
    pub header: Vec<u8>,
    /// Ed25519 signature (64 bytes) of a format-1 event; `None` in format 2.
    pub signature: Option<[u8; 64]>,
    /// Payload bytes, or `None` when pruned.
    pub payload: Option<Vec<u8>>,
}

/// The fields that bind a ciphertext to its place in a feed (the AEAD's
/// associated data, after a domain tag).
#[derive(Debug, Serialize)]
pub(crate) struct AssociatedData<'a> {
    pub author: &'a str,
    pub seq: u64,
    pub prev: &'a Hash,
    pub id: &'a [u8; 16],
    pub event_type: &'a str,
    pub key_id: &'a ChannelKeyId,
}

impl EventHeader {
    /// The metadata value under `key`, if any.
    pub fn meta_value(&self, key: &str) -> Option<&str> {
        self.meta
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.meta[i].1.as_str())
    }

    /// The event id as a UUID.
    pub fn uuid(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.id)
    }

    /// Whether this is a feed's genesis event.
    pub fn is_genesis(&self) -> bool {
        self.seq == 0
    }
}

/// Matches `text` against a pattern where `*` is any run of characters and
/// `?` is one character (`donation.*`, `*.received`). Subscriptions and the
/// `log` and `tail` filters select event types with it; it lives here, in
/// the core, so the store and the command line share one definition.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_wildcards() {
        assert!(glob_match("donation.*", "donation.received"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("*.received", "donation.received"));
        assert!(glob_match("d?nation.*", "donation.x"));
        assert!(!glob_match("donation.*", "volunteer.signed"));
        assert!(!glob_match("donation", "donation.received"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
    }
}
