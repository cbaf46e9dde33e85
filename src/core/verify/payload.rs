//! Payloads: the AEAD associated data that binds a ciphertext to its event,
//! decryption for readers, and the payload hash and length check.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::{Check, Rejection, VerifiedEvent, hx};
use crate::core::crypto::{self, ChannelKey};
use crate::core::event::*;

pub fn check_payload(h: &EventHeader, payload: &[u8]) -> Result<(), Rejection> {
    if payload.len() != h.payload.len as usize {
        return Err(Rejection::new(
            h.seq,
            Check::PayloadHash,
            format!("{} payload bytes", h.payload.len),
            format!("{} bytes", payload.len()),
        ));
    }
    let digest = crypto::sha256(&[payload]);
    if digest != h.payload.hash {
        return Err(Rejection::new(
            h.seq,
            Check::PayloadHash,
            hx(&h.payload.hash),
            hx(&digest),
        ));
    }
    Ok(())
}

/// The AEAD associated data: `AAD_TAG ‖ postcard(AssociatedData)`.
pub(super) fn associated_data(fields: &AssociatedData<'_>) -> Vec<u8> {
    // Tag, then the fields (strings plus ~100 bytes of fixed fields).
    let mut aad = Vec::with_capacity(
        crypto::AAD_TAG.len() + fields.author.len() + fields.event_type.len() + 112,
    );
    aad.extend_from_slice(crypto::AAD_TAG);
    postcard::to_extend(fields, aad).unwrap_or_default()
}

/// Why a payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    #[error("payload was pruned")]
    Pruned,
    #[error("no channel key with id {0}")]
    UnknownKey(String),
    #[error("payload does not decrypt under channel key {0} (wrong key or damaged bytes)")]
    Failed(String),
}

/// Decrypts a verified event's payload with the matching key from `keys`
/// (plain payloads are returned as they are).
pub fn open_payload(event: &VerifiedEvent, keys: &[ChannelKey]) -> Result<Vec<u8>, DecryptError> {
    let payload = event.payload().ok_or(DecryptError::Pruned)?;
    decrypt_payload(event.header(), payload, keys)
}

/// Decrypts payload bytes described by `h` (authenticated decryption: a wrong
/// key or damaged bytes fail, they never yield wrong plaintext).
pub fn decrypt_payload(
    h: &EventHeader,
    payload: &[u8],
    keys: &[ChannelKey],
) -> Result<Vec<u8>, DecryptError> {
    let (key_id, nonce) = match &h.payload.encryption {
        Encryption::Plain => return Ok(payload.to_vec()),
        Encryption::XChaCha20Poly1305 { key_id, nonce } => (key_id, nonce),
    };
    let key = keys
        .iter()
        .find(|k| &k.id() == key_id)
        .ok_or_else(|| DecryptError::UnknownKey(hex::encode(key_id)))?;
    let aad = associated_data(&AssociatedData {
        author: &h.author,
        seq: h.seq,
        prev: &h.prev,
        id: &h.id,
        event_type: &h.event_type,
        key_id,
    });
    let cipher = XChaCha20Poly1305::new(key.key_bytes().into());
    cipher
        .decrypt(
            &XNonce::from(*nonce),
            Payload {
                msg: payload,
                aad: &aad,
            },
        )
        .map_err(|_| DecryptError::Failed(key.name().to_string()))
}
