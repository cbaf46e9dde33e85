//! The owner's side of a feed: drafts are validated, encrypted, chained and
//! signed into events that are correct by construction.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signer, SigningKey};
use rayon::prelude::*;

use super::VerifiedEvent;
use super::payload::associated_data;
use super::signatures::signature_valid;
use crate::core::codec;
use crate::core::crypto::{self, ChannelKey, Hash};
use crate::core::event::*;
use crate::core::limits::*;

/// What a caller proclaims: a validated event type, metadata and plaintext.
#[derive(Debug, Clone)]
pub struct Draft {
    event_type: String,
    schema_version: u32,
    meta: Vec<(String, String)>,
    plaintext: Vec<u8>,
}

/// Why a draft cannot become an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DraftError {
    #[error("invalid event type: {0}")]
    EventType(String),
    #[error("event type {0:?} is reserved for herald's own events")]
    ReservedType(String),
    #[error("invalid metadata: {0}")]
    Meta(String),
    #[error("payload is {found} bytes, over the limit of {limit}")]
    PayloadTooLarge { found: usize, limit: usize },
}

impl Draft {
    /// Validates a user event. Metadata may come in any order; duplicate keys
    /// are an error.
    pub fn new(
        event_type: &str,
        schema_version: u32,
        meta: Vec<(String, String)>,
        plaintext: Vec<u8>,
    ) -> Result<Draft, DraftError> {
        if event_type.starts_with(RESERVED_TYPE_PREFIX) {
            return Err(DraftError::ReservedType(event_type.into()));
        }
        Draft::system(event_type, schema_version, meta, plaintext)
    }

    /// Validates an event, allowing `herald.*` types (for herald's own facts).
    pub fn system(
        event_type: &str,
        schema_version: u32,
        mut meta: Vec<(String, String)>,
        plaintext: Vec<u8>,
    ) -> Result<Draft, DraftError> {
        codec::check_event_type(event_type).map_err(DraftError::EventType)?;
        meta.sort();
        codec::check_meta(&meta).map_err(DraftError::Meta)?;
        if plaintext.len() > PAYLOAD_PLAINTEXT_BYTES_MAX {
            return Err(DraftError::PayloadTooLarge {
                found: plaintext.len(),
                limit: PAYLOAD_PLAINTEXT_BYTES_MAX,
            });
        }
        Ok(Draft {
            event_type: event_type.into(),
            schema_version,
            meta,
            plaintext,
        })
    }

    pub fn event_type(&self) -> &str {
        &self.event_type
    }
}

/// Per-event randomness, drawn by the shell (the core asks the OS for none).
#[derive(Debug, Clone, Copy)]
pub struct Entropy {
    /// UUID v7 bytes for the event id.
    pub id: [u8; 16],
    /// XChaCha20-Poly1305 nonce.
    pub nonce: [u8; 24],
}

/// Appends to one feed: held only by the feed's owner, next to its signing key.
pub struct Sealer {
    author: String,
    key: SigningKey,
    next_seq: u64,
    head_hash: Hash,
    last_timestamp_us: u64,
    /// The event format it writes: signed (1) or sealed (2).
    format: u8,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("author", &self.author)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// Starts a new feed: returns the sealer and the genesis event carrying
    /// `cert_der`, in the format this build writes.
    pub fn genesis(
        author: &str,
        key: SigningKey,
        cert_der: &[u8],
        id: [u8; 16],
        now_us: u64,
    ) -> (Sealer, VerifiedEvent) {
        Sealer::new_feed(author, key).start_feed(cert_der, id, now_us)
    }

    /// A sealer for a feed that does not exist yet; [`Self::start_feed`]
    /// writes its genesis event.
    pub fn new_feed(author: &str, key: SigningKey) -> Sealer {
        Sealer {
            author: author.into(),
            key,
            next_seq: 0,
            head_hash: [0u8; 32],
            last_timestamp_us: 0,
            format: FORMAT_VERSION,
        }
    }

    /// Switches the event format this sealer writes from its next event on
    /// ([`FORMAT_VERSION_SIGNED`] or [`FORMAT_VERSION_SEALED`]; a feed may
    /// move from format 1 to 2). Another value keeps the current format.
    pub fn with_format(mut self, format: u8) -> Sealer {
        if matches!(format, FORMAT_VERSION_SIGNED | FORMAT_VERSION_SEALED) {
            self.format = format;
        }
        self
    }

    /// The format of the events it writes.
    pub fn format(&self) -> u8 {
        self.format
    }

    /// Writes the genesis event of a new feed (the sealer stands at 0).
    pub fn start_feed(
        mut self,
        cert_der: &[u8],
        id: [u8; 16],
        now_us: u64,
    ) -> (Sealer, VerifiedEvent) {
        debug_assert_eq!(self.next_seq, 0);
        let header = EventHeader {
            version: self.format,
            id,
            author: self.author.clone(),
            seq: 0,
            prev: [0u8; 32],
            timestamp_us: now_us,
            event_type: GENESIS_EVENT_TYPE.into(),
            schema_version: 1,
            meta: Vec::new(),
            payload: PayloadDescriptor {
                encryption: Encryption::Plain,
                hash: crypto::sha256(&[cert_der]),
                len: cert_der.len() as u32,
            },
            signature_scope: scope_of(self.format),
        };
        let unsigned = self.chain(header, cert_der.to_vec());
        let event = self.sign(unsigned);
        (self, event)
    }

    /// Writes a certificate renewal ([`CERTIFICATE_EVENT_TYPE`]): a plain
    /// event whose payload is `cert_der`, a renewed certificate for this
    /// feed's author and key. From it on, verifiers check the feed's events
    /// against that certificate's validity.
    pub fn renew_certificate(
        &mut self,
        cert_der: &[u8],
        id: [u8; 16],
        now_us: u64,
    ) -> VerifiedEvent {
        let header = EventHeader {
            version: self.format,
            id,
            author: self.author.clone(),
            seq: self.next_seq,
            prev: self.head_hash,
            timestamp_us: now_us.max(self.last_timestamp_us),
            event_type: CERTIFICATE_EVENT_TYPE.into(),
            schema_version: 1,
            meta: Vec::new(),
            payload: PayloadDescriptor {
                encryption: Encryption::Plain,
                hash: crypto::sha256(&[cert_der]),
                len: cert_der.len() as u32,
            },
            signature_scope: scope_of(self.format),
        };
        let unsigned = self.chain(header, cert_der.to_vec());
        self.sign(unsigned)
    }

    /// Writes a key transition (`core::transition`) whose payload is
    /// `payload`, and moves the sealer to `new_key`: the transition and
    /// every later event are sealed by checkpoints under it. Always a
    /// format-2 event. If its commit fails, the caller puts the old key
    /// back with [`Sealer::restore_key`] along with [`Sealer::restore`].
    pub fn transition_key(
        &mut self,
        new_key: SigningKey,
        payload: Vec<u8>,
        id: [u8; 16],
        now_us: u64,
    ) -> VerifiedEvent {
        let header = EventHeader {
            version: FORMAT_VERSION_SEALED,
            id,
            author: self.author.clone(),
            seq: self.next_seq,
            prev: self.head_hash,
            timestamp_us: now_us.max(self.last_timestamp_us),
            event_type: crate::core::transition::KEY_TRANSITION_EVENT_TYPE.into(),
            schema_version: 1,
            meta: Vec::new(),
            payload: PayloadDescriptor {
                encryption: Encryption::Plain,
                hash: crypto::sha256(&[&payload]),
                len: payload.len() as u32,
            },
            signature_scope: scope_of(FORMAT_VERSION_SEALED),
        };
        let unsigned = self.chain(header, payload);
        self.key = new_key;
        self.sign(unsigned)
    }

    /// Puts back the key a failed transition's commit moved away from.
    pub fn restore_key(&mut self, key: SigningKey) {
        self.key = key;
    }

    /// Resumes a feed from its stored head.
    pub fn resume(
        author: &str,
        key: SigningKey,
        head_seq: u64,
        head_hash: Hash,
        last_timestamp_us: u64,
    ) -> Sealer {
        Sealer {
            author: author.into(),
            key,
            next_seq: head_seq + 1,
            head_hash,
            last_timestamp_us,
            format: FORMAT_VERSION,
        }
    }

    /// The feed this sealer appends to.
    pub fn author(&self) -> &str {
        &self.author
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The feed's signing key (to rebuild the sealer after a failed commit).
    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The hash of the head.
    pub fn head_hash(&self) -> &Hash {
        &self.head_hash
    }

    /// Where the feed stands now, to [`Sealer::restore`] if what is chained
    /// after this point is thrown away (an aborted transaction).
    pub fn mark(&self) -> SealerMark {
        SealerMark {
            next_seq: self.next_seq,
            head_hash: self.head_hash,
            last_timestamp_us: self.last_timestamp_us,
        }
    }

    /// Goes back to a [`Sealer::mark`]: events chained since are forgotten,
    /// so the next event reuses their sequence numbers. Only sound when none
    /// of them was stored or sent.
    pub fn restore(&mut self, mark: SealerMark) {
        self.next_seq = mark.next_seq;
        self.head_hash = mark.head_hash;
        self.last_timestamp_us = mark.last_timestamp_us;
    }

    /// Seals a batch: encrypts and chains each draft in order (cheap,
    /// sequential), then signs all of them on every core. Timestamps never go
    /// backwards even if the clock does.
    pub fn seal_batch(
        &mut self,
        drafts: Vec<(Draft, &ChannelKey, Entropy)>,
        now_us: u64,
    ) -> Vec<VerifiedEvent> {
        self.chain_batch(drafts, now_us).sign()
    }

    /// The sequential half of sealing: encrypts and chains the drafts (the
    /// feed advances now). [`ChainedBatch::sign`] finishes them, possibly on
    /// another thread while the next batch is being chained.
    pub fn chain_batch(
        &mut self,
        drafts: Vec<(Draft, &ChannelKey, Entropy)>,
        now_us: u64,
    ) -> ChainedBatch {
        let unsigned: Vec<Unsigned> = drafts
            .into_iter()
            .map(|(draft, channel, entropy)| {
                let header_and_payload = self.encrypt(draft, channel, entropy, now_us);
                self.chain(header_and_payload.0, header_and_payload.1)
            })
            .collect();
        ChainedBatch {
            key: self.key.clone(),
            unsigned,
        }
    }

    fn encrypt(
        &self,
        draft: Draft,
        channel: &ChannelKey,
        entropy: Entropy,
        now_us: u64,
    ) -> (EventHeader, Vec<u8>) {
        let seq = self.next_seq;
        let key_id = channel.id();
        let aad = associated_data(&AssociatedData {
            author: &self.author,
            seq,
            prev: &self.head_hash,
            id: &entropy.id,
            event_type: &draft.event_type,
            key_id: &key_id,
        });
        let cipher = XChaCha20Poly1305::new(channel.key_bytes().into());
        let nonce = XNonce::from(entropy.nonce);
        // Encryption only fails for inputs beyond 2^38 bytes; drafts are
        // bounded to PAYLOAD_PLAINTEXT_BYTES_MAX.
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &draft.plaintext,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        let header = EventHeader {
            version: self.format,
            id: entropy.id,
            author: self.author.clone(),
            seq,
            prev: self.head_hash,
            timestamp_us: now_us.max(self.last_timestamp_us),
            event_type: draft.event_type,
            schema_version: draft.schema_version,
            meta: draft.meta,
            payload: PayloadDescriptor {
                encryption: Encryption::XChaCha20Poly1305 {
                    key_id,
                    nonce: entropy.nonce,
                },
                hash: crypto::sha256(&[&ciphertext]),
                len: ciphertext.len() as u32,
            },
            signature_scope: scope_of(self.format),
        };
        (header, ciphertext)
    }

    /// Links a header to the head and advances the head.
    fn chain(&mut self, header: EventHeader, payload: Vec<u8>) -> Unsigned {
        debug_assert_eq!(header.seq, self.next_seq);
        debug_assert!(codec::check_header_fields(&header).is_ok());
        let header_bytes = codec::encode_header(&header);
        let hash = codec::event_hash(&header_bytes);
        self.next_seq += 1;
        self.head_hash = hash;
        self.last_timestamp_us = header.timestamp_us;
        Unsigned {
            header,
            header_bytes,
            hash,
            payload,
        }
    }

    fn sign(&self, unsigned: Unsigned) -> VerifiedEvent {
        sign_with(&self.key, unsigned)
    }
}

/// A point in a feed a [`Sealer`] can go back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealerMark {
    next_seq: u64,
    head_hash: Hash,
    last_timestamp_us: u64,
}

/// Events encrypted and chained by a [`Sealer`], waiting for signatures.
pub struct ChainedBatch {
    key: SigningKey,
    unsigned: Vec<Unsigned>,
}

impl ChainedBatch {
    /// Signs every format-1 event on all cores; format-2 events need no
    /// signature of their own (their checkpoint is signed at commit).
    pub fn sign(self) -> Vec<VerifiedEvent> {
        let key = &self.key;
        if self
            .unsigned
            .iter()
            .all(|u| u.header.version == FORMAT_VERSION_SEALED)
        {
            return self
                .unsigned
                .into_iter()
                .map(|u| sign_with(key, u))
                .collect();
        }
        self.unsigned
            .into_par_iter()
            .map(|u| sign_with(key, u))
            .collect()
    }

    /// Events in the batch.
    pub fn len(&self) -> usize {
        self.unsigned.len()
    }

    /// Appends `later`, which must have been chained after this batch by
    /// the same sealer, so both are signed together.
    pub fn append(&mut self, mut later: ChainedBatch) {
        debug_assert_eq!(self.key.verifying_key(), later.key.verifying_key());
        self.unsigned.append(&mut later.unsigned);
    }

    /// The headers of the chained events, in feed order.
    pub fn headers(&self) -> impl Iterator<Item = &EventHeader> {
        self.unsigned.iter().map(|u| &u.header)
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.unsigned.is_empty()
    }
}

impl fmt::Debug for ChainedBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainedBatch({} events)", self.unsigned.len())
    }
}

/// A chained event waiting for its signature.
struct Unsigned {
    header: EventHeader,
    header_bytes: Vec<u8>,
    hash: Hash,
    payload: Vec<u8>,
}

/// What authenticates events of `format`.
fn scope_of(format: u8) -> SignatureScope {
    if format == FORMAT_VERSION_SEALED {
        SignatureScope::Checkpoint
    } else {
        SignatureScope::Event
    }
}

/// Finishes a chained event: a format-1 event is signed; a format-2 event
/// is left for its batch's checkpoint.
fn sign_with(key: &SigningKey, u: Unsigned) -> VerifiedEvent {
    let signature = (u.header.version == FORMAT_VERSION_SIGNED)
        .then(|| key.sign(&codec::signing_message(&u.hash)));
    let envelope = Envelope {
        header: u.header_bytes,
        signature: signature.map(|s| s.to_bytes()),
        payload: Some(u.payload),
    };
    let bytes = codec::encode_envelope(&envelope);
    // Assert before the bytes reach the disk: our own events must verify.
    debug_assert!(signature.is_none_or(|s| signature_valid(&key.verifying_key(), &u.hash, &s)));
    debug_assert!(codec::decode_envelope(&bytes).is_ok());
    debug_assert!(
        envelope
            .payload
            .as_deref()
            .is_none_or(|p| bytes.ends_with(p))
    );
    VerifiedEvent {
        header: u.header,
        hash: u.hash,
        signature: envelope.signature,
        payload_len: envelope.payload.as_ref().map(Vec::len),
        bytes,
    }
}
