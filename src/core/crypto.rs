//! Hashing, channel keys and the domain tags that keep every digest herald
//! computes apart from every other.

use std::fmt;

use sha2::{Digest, Sha256};

/// Domain tag for the event hash: `SHA-256(EVENT_HASH_TAG ‖ header bytes)`.
pub const EVENT_HASH_TAG: &[u8] = b"herald/v1/event-hash\0";
/// Domain tag for the signed message: `SIGNATURE_TAG ‖ event hash`.
pub const SIGNATURE_TAG: &[u8] = b"herald/v1/event-signature\0";
/// Domain tag for the AEAD associated data.
pub const AAD_TAG: &[u8] = b"herald/v1/payload-aad\0";
/// Domain tag for channel key identifiers.
pub const CHANNEL_KEY_ID_TAG: &[u8] = b"herald/v1/channel-key-id\0";
/// Domain tag for the signature on an export's end record.
pub const EXPORT_END_TAG: &[u8] = b"herald/v1/export-end\0";
/// Domain tag for the signature on a format-2 export's end record (its body
/// also counts checkpoints and equivocations, so it gets its own tag).
pub const EXPORT_END_V2_TAG: &[u8] = b"herald/v2/export-end\0";

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// SHA-256 over the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> Hash {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Identifier of a channel key: the first 16 bytes of
/// `SHA-256(CHANNEL_KEY_ID_TAG ‖ key)`. It names the key without revealing it.
pub type ChannelKeyId = [u8; 16];

/// A named 32-byte symmetric key that encrypts payloads for the services
/// holding it. Printing it never shows the key.
#[derive(Clone)]
pub struct ChannelKey {
    name: String,
    key: [u8; 32],
    id: ChannelKeyId,
}

impl ChannelKey {
    /// Wraps raw key bytes under a channel name.
    pub fn new(name: impl Into<String>, key: [u8; 32]) -> ChannelKey {
        let digest = sha256(&[CHANNEL_KEY_ID_TAG, &key]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        ChannelKey {
            name: name.into(),
            key,
            id,
        }
    }

    /// The channel's name (`default`, `finance`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key identifier carried in event headers.
    pub fn id(&self) -> ChannelKeyId {
        self.id
    }

    /// The raw key bytes.
    pub fn key_bytes(&self) -> &[u8; 32] {
        &self.key
    }
}

impl fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelKey({}, id {})", self.name, hex::encode(self.id))
    }
}

impl Drop for ChannelKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}
