//! Key transitions: how a feed moves to a new key without a new name.
//!
//! A transition is an event of type [`KEY_TRANSITION_EVENT_TYPE`] in the
//! author's own feed, sealed (format 2) by a checkpoint under the **new**
//! key. Its plain payload ([`KeyTransition`]) names the new certificate and
//! carries the authorization for it:
//!
//! * a **rotation** is authorized by the feed's current (old) key, which
//!   signs the authorization message: the owner planned the move;
//! * a **recovery** is authorized by a CA of the cluster, for a key that can
//!   no longer be trusted (stolen, revoked with a cut-off): the old key's
//!   consent would mean nothing.
//!
//! The payload also carries the old key's checkpoint of the feed at the
//! transition's sequence number (the tree of every event before it), so
//! that whoever holds the transition can show the events before it under
//! the key that was in force for them. The byte layout is specified in
//! docs/FORMAT.md, "Key transitions".

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

use super::checkpoint;
use super::crypto::{self, Hash};
use super::limits::CERT_BYTES_MAX;
use super::merkle::Frontier;

/// Event type of a key transition.
pub const KEY_TRANSITION_EVENT_TYPE: &str = "herald.key-transition";

/// Version byte that starts every transition payload.
pub const TRANSITION_PAYLOAD_VERSION: u8 = 1;

/// Domain separation of the authorization message.
pub const TRANSITION_AUTHORIZATION_TAG: &[u8] = b"herald/v1/key-transition\0";

/// Largest checkpoint note a transition payload carries (the author's
/// checkpoint has one signature line: a few hundred bytes).
pub const TRANSITION_CHECKPOINT_BYTES_MAX: usize = 4 * 1024;

/// Who authorized a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionKind {
    /// Planned: the feed's current key signed the authorization.
    Rotation,
    /// After a compromise: a CA of the cluster signed it.
    Recovery,
}

impl TransitionKind {
    /// The byte that stands for the kind in the payload and the message.
    pub fn byte(self) -> u8 {
        match self {
            TransitionKind::Rotation => 1,
            TransitionKind::Recovery => 2,
        }
    }

    fn from_byte(b: u8) -> Option<TransitionKind> {
        match b {
            1 => Some(TransitionKind::Rotation),
            2 => Some(TransitionKind::Recovery),
            _ => None,
        }
    }

    /// The stable name (`rotation`, `recovery`).
    pub fn name(self) -> &'static str {
        match self {
            TransitionKind::Rotation => "rotation",
            TransitionKind::Recovery => "recovery",
        }
    }

    /// Parses [`Self::name`].
    pub fn from_name(name: &str) -> Option<TransitionKind> {
        match name {
            "rotation" => Some(TransitionKind::Rotation),
            "recovery" => Some(TransitionKind::Recovery),
            _ => None,
        }
    }
}

/// The payload of a key transition event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTransition {
    pub kind: TransitionKind,
    /// DER of the new certificate (for the feed's author, another key).
    pub new_cert: Vec<u8>,
    /// Ed25519 signature over [`authorization_message`]: by the old key for
    /// a rotation, by a CA for a recovery.
    pub authorization: [u8; 64],
    /// The old key's checkpoint of the feed at the transition's sequence
    /// number, as a signed note with the author's signature alone.
    pub final_checkpoint: Vec<u8>,
}

/// Why a transition payload is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("the key transition payload ends early, in its {0}")]
    Truncated(&'static str),
    #[error("the key transition payload has version {0}; this build reads version 1")]
    Version(u8),
    #[error("the key transition kind {0} is neither 1 (rotation) nor 2 (recovery)")]
    Kind(u8),
    #[error("the key transition's {what} is {len} bytes, over the limit of {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("the key transition payload has {0} bytes after its checkpoint")]
    Trailing(usize),
}

impl KeyTransition {
    /// The payload bytes: `version ‖ kind ‖ u32 cert length ‖ cert ‖
    /// authorization (64) ‖ u32 checkpoint length ‖ checkpoint`, lengths
    /// big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + 4 + self.new_cert.len() + 64 + 4 + 512);
        out.push(TRANSITION_PAYLOAD_VERSION);
        out.push(self.kind.byte());
        out.extend_from_slice(&(self.new_cert.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.new_cert);
        out.extend_from_slice(&self.authorization);
        out.extend_from_slice(&(self.final_checkpoint.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.final_checkpoint);
        out
    }

    /// Parses [`Self::encode`]'s bytes, within the limits.
    pub fn decode(bytes: &[u8]) -> Result<KeyTransition, TransitionError> {
        let mut rest = bytes;
        let version = take(&mut rest, 1, "version")?[0];
        if version != TRANSITION_PAYLOAD_VERSION {
            return Err(TransitionError::Version(version));
        }
        let kind_byte = take(&mut rest, 1, "kind")?[0];
        let kind = TransitionKind::from_byte(kind_byte).ok_or(TransitionError::Kind(kind_byte))?;
        let new_cert = take_sized(&mut rest, "certificate", CERT_BYTES_MAX)?;
        let mut authorization = [0u8; 64];
        authorization.copy_from_slice(take(&mut rest, 64, "authorization")?);
        let final_checkpoint =
            take_sized(&mut rest, "checkpoint", TRANSITION_CHECKPOINT_BYTES_MAX)?;
        if !rest.is_empty() {
            return Err(TransitionError::Trailing(rest.len()));
        }
        Ok(KeyTransition {
            kind,
            new_cert,
            authorization,
            final_checkpoint,
        })
    }

    /// Whether `authorizer` signed this transition's authorization for
    /// `author`.
    pub fn authorized_by(&self, author: &str, authorizer: &VerifyingKey) -> bool {
        let message = authorization_message(self.kind, author, &self.new_cert);
        authorizer
            .verify_strict(&message, &Signature::from_bytes(&self.authorization))
            .is_ok()
    }
}

impl KeyTransition {
    /// Whether the authorization verifies under the key its kind needs:
    /// the feed's current key `feed_key` for a rotation, one of `ca_keys`
    /// (the cluster's CAs) for a recovery.
    pub fn is_authorized(
        &self,
        author: &str,
        feed_key: &VerifyingKey,
        ca_keys: &[[u8; 32]],
    ) -> bool {
        match self.kind {
            TransitionKind::Rotation => self.authorized_by(author, feed_key),
            TransitionKind::Recovery => ca_keys.iter().any(|ca| {
                VerifyingKey::from_bytes(ca).is_ok_and(|ca| self.authorized_by(author, &ca))
            }),
        }
    }

    /// Checks the old key's checkpoint this transition of `author`'s feed
    /// at `seq` carries: signed by `old_key` (the key in force before it),
    /// of the feed's origin in `cluster`, over exactly the tree `before`
    /// (the `seq` events before the transition). Says what is wrong if not.
    pub fn check_carried_checkpoint(
        &self,
        cluster: &str,
        author: &str,
        seq: u64,
        old_key: &VerifyingKey,
        before: &Frontier,
    ) -> Result<(), String> {
        let old = checkpoint::open_checkpoint(cluster, &self.final_checkpoint, old_key)
            .map_err(|e| e.to_string())?;
        if old.feed() != author
            || old.size() != seq
            || before.size() != seq
            || *old.root() != before.root()
        {
            return Err(format!(
                "a checkpoint of {} at size {} with root {}, not of the feed's {seq} events before the transition",
                old.feed(),
                old.size(),
                hex::encode(old.root())
            ));
        }
        Ok(())
    }
}

/// The message an authorization signs: `TAG ‖ kind ‖ u16 author length ‖
/// author ‖ SHA-256(new certificate DER)`. It names the feed and the new
/// certificate, not a position: only the new key's holder can place the
/// transition (its checkpoint is signed by the new key), and the chain
/// fixes where.
pub fn authorization_message(kind: TransitionKind, author: &str, new_cert: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(TRANSITION_AUTHORIZATION_TAG.len() + 3 + author.len() + 32);
    m.extend_from_slice(TRANSITION_AUTHORIZATION_TAG);
    m.push(kind.byte());
    m.extend_from_slice(&(author.len() as u16).to_be_bytes());
    m.extend_from_slice(author.as_bytes());
    m.extend_from_slice(&cert_digest(new_cert));
    m
}

/// SHA-256 of a certificate's DER, as the authorization names it.
pub fn cert_digest(cert_der: &[u8]) -> Hash {
    crypto::sha256(&[cert_der])
}

/// Signs the authorization of a transition of `author`'s feed to
/// `new_cert` with `authorizer` (the old key, or the CA key).
pub fn sign_authorization(
    kind: TransitionKind,
    author: &str,
    new_cert: &[u8],
    authorizer: &SigningKey,
) -> [u8; 64] {
    use ed25519_dalek::Signer;
    authorizer
        .sign(&authorization_message(kind, author, new_cert))
        .to_bytes()
}

fn take<'a>(
    rest: &mut &'a [u8],
    n: usize,
    what: &'static str,
) -> Result<&'a [u8], TransitionError> {
    if rest.len() < n {
        return Err(TransitionError::Truncated(what));
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn take_sized(
    rest: &mut &[u8],
    what: &'static str,
    max: usize,
) -> Result<Vec<u8>, TransitionError> {
    let mut len = [0u8; 4];
    len.copy_from_slice(take(rest, 4, what)?);
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(TransitionError::TooLarge { what, len, max });
    }
    Ok(take(rest, len, what)?.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> KeyTransition {
        KeyTransition {
            kind: TransitionKind::Rotation,
            new_cert: vec![0x30, 0x03, 1, 2, 3],
            authorization: [7u8; 64],
            final_checkpoint: b"note\n".to_vec(),
        }
    }

    #[test]
    fn a_payload_decodes_to_what_was_encoded() {
        let t = sample();
        assert_eq!(KeyTransition::decode(&t.encode()), Ok(t));
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_refused() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(
                matches!(
                    KeyTransition::decode(&bytes[..n]),
                    Err(TransitionError::Truncated(_))
                ),
                "prefix of {n} bytes"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            KeyTransition::decode(&long),
            Err(TransitionError::Trailing(1))
        );
        let mut bad_kind = bytes.clone();
        bad_kind[1] = 3;
        assert_eq!(
            KeyTransition::decode(&bad_kind),
            Err(TransitionError::Kind(3))
        );
        let mut bad_version = bytes;
        bad_version[0] = 2;
        assert_eq!(
            KeyTransition::decode(&bad_version),
            Err(TransitionError::Version(2))
        );
    }

    #[test]
    fn an_oversized_certificate_is_refused_before_it_is_read() {
        let mut bytes = vec![1, 1];
        bytes.extend_from_slice(&(CERT_BYTES_MAX as u32 + 1).to_be_bytes());
        assert!(matches!(
            KeyTransition::decode(&bytes),
            Err(TransitionError::TooLarge {
                what: "certificate",
                ..
            })
        ));
    }

    #[test]
    fn the_authorization_binds_the_author_the_certificate_and_the_kind() {
        let old = SigningKey::from_bytes(&[1u8; 32]);
        let mut t = sample();
        t.authorization = sign_authorization(t.kind, "a", &t.new_cert, &old);
        assert!(t.authorized_by("a", &old.verifying_key()));
        assert!(!t.authorized_by("b", &old.verifying_key()), "another feed");
        let other = SigningKey::from_bytes(&[2u8; 32]);
        assert!(!t.authorized_by("a", &other.verifying_key()), "another key");
        let mut recovery = t.clone();
        recovery.kind = TransitionKind::Recovery;
        assert!(
            !recovery.authorized_by("a", &old.verifying_key()),
            "the kind is signed"
        );
        let mut swapped = t;
        swapped.new_cert.push(0);
        assert!(
            !swapped.authorized_by("a", &old.verifying_key()),
            "another certificate"
        );
    }
}
