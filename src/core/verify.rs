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

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rayon::prelude::*;

use super::cert::{AuthorAdmission, AuthorCert};
use super::codec::{self, DecodeError};
use super::crypto::{self, ChannelKey, Hash};
use super::event::*;
use super::limits::*;

/// An event decoded from untrusted bytes: well-formed, within limits and
/// canonical, hashed, but not yet verified.
#[derive(Debug, Clone)]
pub struct DecodedEvent {
    header: EventHeader,
    hash: Hash,
    signature: [u8; 64],
    payload: Option<Vec<u8>>,
    bytes: Vec<u8>,
}

impl DecodedEvent {
    /// The payload bytes, if present.
    pub fn payload(&self) -> Option<&[u8]> {
        self.payload.as_deref()
    }

    /// Decodes envelope bytes (checks limits and canonical form, hashes the header).
    pub fn decode(bytes: Vec<u8>) -> Result<DecodedEvent, DecodeError> {
        let (envelope, header) = codec::decode_envelope(&bytes)?;
        let hash = codec::event_hash(&envelope.header);
        Ok(DecodedEvent {
            header,
            hash,
            signature: envelope.signature,
            payload: envelope.payload,
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

    /// The raw signature bytes.
    pub fn signature_bytes(&self) -> &[u8; 64] {
        &self.signature
    }

    fn signature(&self) -> Signature {
        Signature::from_bytes(&self.signature)
    }
}

/// An event that passed every check against its feed. Only this module can
/// construct one.
#[derive(Debug, Clone)]
pub struct VerifiedEvent {
    header: EventHeader,
    hash: Hash,
    payload: Option<Vec<u8>>,
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
        self.payload.as_deref()
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
    fn new(seq: u64, check: Check, expected: impl ToString, found: impl ToString) -> Rejection {
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

/// The state of one feed as seen by a verifier: its author's admitted
/// certificate and its head.
#[derive(Debug, Clone)]
pub struct FeedVerifier {
    cert: AuthorCert,
    key: VerifyingKey,
    next_seq: u64,
    head_hash: Hash,
    /// During an audit: the slot where an unauthentic event stood. The real
    /// event for that slot may still come (the damaged one was inserted),
    /// or the next one may follow it (the real one was damaged), whose
    /// `prev` then cannot be checked against bytes that were not authentic.
    damaged_slot: Option<u64>,
    last_timestamp_us: u64,
}

impl FeedVerifier {
    /// Verifies a feed's genesis event, which carries the author's
    /// certificate, and starts verifying the feed from it.
    pub fn genesis(
        trust: &impl AuthorAdmission,
        event: DecodedEvent,
    ) -> Result<(FeedVerifier, VerifiedEvent), Rejection> {
        let header = &event.header;
        if header.seq != 0 || header.event_type != GENESIS_EVENT_TYPE {
            return Err(Rejection::new(
                header.seq,
                Check::Author,
                "the feed to begin with a genesis event at sequence 0",
                format!("{} at sequence {}", header.event_type, header.seq),
            ));
        }
        let cert_der = match &event.payload {
            Some(p) => p,
            None => {
                return Err(Rejection::new(
                    0,
                    Check::Certificate,
                    "a genesis payload holding the author's certificate",
                    "a pruned payload",
                ));
            }
        };
        check_payload(header, cert_der)?;
        let cert = trust.admit_author(&header.author, cert_der).map_err(|e| {
            Rejection::new(0, Check::Certificate, "a certificate admitted by the CA", e)
        })?;
        let key = VerifyingKey::from_bytes(&cert.public_key)
            .map_err(|e| Rejection::new(0, Check::Certificate, "a valid Ed25519 public key", e))?;
        if !signature_valid(&key, &event.hash, &event.signature()) {
            return Err(Rejection::new(
                0,
                Check::Signature,
                "a signature by the key in the certificate",
                "an invalid signature",
            ));
        }
        check_cert_window(&cert, header)?;
        let verifier = FeedVerifier {
            cert,
            key,
            next_seq: 1,
            head_hash: event.hash,
            damaged_slot: None,
            last_timestamp_us: header.timestamp_us,
        };
        Ok((verifier, VerifiedEvent::from_decoded(event)))
    }

    /// Resumes verification of a feed from a stored head without replaying it
    /// (start-up is O(feeds), not O(events)). `genesis_cert` is re-admitted
    /// so a revocation takes effect on restart.
    pub fn resume(
        trust: &impl AuthorAdmission,
        author: &str,
        genesis_cert: &[u8],
        head_seq: u64,
        head_hash: Hash,
        last_timestamp_us: u64,
    ) -> Result<FeedVerifier, Rejection> {
        let cert = trust.admit_author(author, genesis_cert).map_err(|e| {
            Rejection::new(0, Check::Certificate, "a certificate admitted by the CA", e)
        })?;
        let key = VerifyingKey::from_bytes(&cert.public_key)
            .map_err(|e| Rejection::new(0, Check::Certificate, "a valid Ed25519 public key", e))?;
        Ok(FeedVerifier {
            cert,
            key,
            next_seq: head_seq + 1,
            head_hash,
            damaged_slot: None,
            last_timestamp_us,
        })
    }

    /// The feed's author.
    pub fn author(&self) -> &str {
        &self.cert.service
    }

    /// The author's admitted certificate.
    pub fn cert(&self) -> &AuthorCert {
        &self.cert
    }

    /// The author's verifying key.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Sequence number the next event must carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Hash of the head (the last event that passed every check).
    pub fn head_hash(&self) -> &Hash {
        &self.head_hash
    }

    /// Verifies a run of events of this feed, checking signatures in batches
    /// on all cores. Stops at the first rejection: everything before it is
    /// returned verified, nothing after it is looked at.
    pub fn verify_run(
        &mut self,
        events: Vec<DecodedEvent>,
    ) -> (Vec<VerifiedEvent>, Option<Rejection>) {
        let signature_ok = self.check_signatures(&events);
        let mut verified = Vec::with_capacity(events.len());
        for (event, sig_ok) in events.into_iter().zip(signature_ok) {
            match self.verify_next(event, sig_ok) {
                Ok(v) => verified.push(v),
                Err(r) => return (verified, Some(r)),
            }
        }
        (verified, None)
    }

    /// Checks the signatures of `events` under this feed's key, in batches on
    /// all cores; the result is per event.
    pub fn check_signatures(&self, events: &[DecodedEvent]) -> Vec<bool> {
        let items: Vec<(VerifyingKey, Hash, Signature)> = events
            .iter()
            .map(|e| (self.key, e.hash, e.signature()))
            .collect();
        batch_signatures_valid(&items)
    }

    /// Applies one event whose signature validity is already known. On
    /// success the feed advances; on rejection nothing changes.
    pub fn verify_next(
        &mut self,
        event: DecodedEvent,
        signature_ok: bool,
    ) -> Result<VerifiedEvent, Rejection> {
        self.check_next(&event, signature_ok)?;
        Ok(VerifiedEvent::from_decoded(event))
    }

    /// [`Self::verify_next`] without producing the verified value (for
    /// auditors, which only count and report).
    pub fn check_next(
        &mut self,
        event: &DecodedEvent,
        signature_ok: bool,
    ) -> Result<(), Rejection> {
        let h = &event.header;
        if h.author != self.cert.service {
            return Err(Rejection::new(
                h.seq,
                Check::Author,
                &self.cert.service,
                &h.author,
            ));
        }
        if !signature_ok {
            return Err(Rejection::new(
                h.seq,
                Check::Signature,
                format!(
                    "a signature by {}'s key over hash {}",
                    self.cert.service,
                    hx(&event.hash)
                ),
                "an invalid signature",
            ));
        }
        let after_damage = self.damaged_slot == Some(self.next_seq) && h.seq == self.next_seq + 1;
        if h.seq != self.next_seq && !after_damage {
            if h.seq + 1 == self.next_seq {
                // Same slot as the head: the same event again, or a second
                // validly signed event there, which is a fork.
                return Err(if self.head_hash == event.hash {
                    Rejection::new(h.seq, Check::Duplicate, "each event once", "the head again")
                } else {
                    Rejection::new(h.seq, Check::Fork, hx(&self.head_hash), hx(&event.hash))
                });
            }
            return Err(Rejection::new(h.seq, Check::Sequence, self.next_seq, h.seq));
        }
        if !after_damage && h.prev != self.head_hash {
            return Err(Rejection::new(
                h.seq,
                Check::PreviousHash,
                hx(&self.head_hash),
                hx(&h.prev),
            ));
        }
        if h.timestamp_us < self.last_timestamp_us {
            return Err(Rejection::new(
                h.seq,
                Check::Timestamp,
                format!(
                    "at least {}",
                    crate::clock::format_timestamp(self.last_timestamp_us)
                ),
                crate::clock::format_timestamp(h.timestamp_us),
            ));
        }
        check_cert_window(&self.cert, h)?;
        if let Some(payload) = &event.payload {
            check_payload(h, payload)?;
        }
        self.next_seq = h.seq + 1;
        self.head_hash = event.hash;
        self.damaged_slot = None;
        self.last_timestamp_us = h.timestamp_us;
        Ok(())
    }

    /// Audit resynchronisation after a rejected event, so one damaged event
    /// yields one problem rather than a cascade. An authentic event (valid
    /// signature) further ahead becomes the new head (events were dropped or
    /// reordered). An unauthentic event is taken to stand in the expected
    /// slot: the real event for that slot may still follow (the bad one was
    /// inserted), or the next slot's event may (the real one was damaged).
    /// Never used on the ingest path, which stops at the first rejection.
    pub fn resync(&mut self, event: &DecodedEvent, signature_ok: bool) {
        let h = &event.header;
        if h.author != self.cert.service {
            return;
        }
        if signature_ok && h.seq >= self.next_seq {
            self.next_seq = h.seq + 1;
            self.head_hash = event.hash;
            self.damaged_slot = None;
            self.last_timestamp_us = self.last_timestamp_us.max(h.timestamp_us);
        } else if !signature_ok {
            self.damaged_slot = Some(self.next_seq);
        }
    }

    /// Checks that two events are a proof of fork of this feed: both validly
    /// signed by the author, same sequence number, different hashes.
    pub fn is_fork_proof(&self, a: &DecodedEvent, b: &DecodedEvent) -> bool {
        a.header.author == self.cert.service
            && b.header.author == self.cert.service
            && a.header.seq == b.header.seq
            && a.hash != b.hash
            && signature_valid(&self.key, &a.hash, &a.signature())
            && signature_valid(&self.key, &b.hash, &b.signature())
    }
}

fn check_cert_window(cert: &AuthorCert, h: &EventHeader) -> Result<(), Rejection> {
    if h.timestamp_us < cert.not_before_us || h.timestamp_us > cert.not_after_us {
        return Err(Rejection::new(
            h.seq,
            Check::CertificateValidity,
            format!(
                "a time within the certificate's validity, {} to {}",
                crate::clock::format_timestamp(cert.not_before_us),
                crate::clock::format_timestamp(cert.not_after_us)
            ),
            crate::clock::format_timestamp(h.timestamp_us),
        ));
    }
    Ok(())
}

fn check_payload(h: &EventHeader, payload: &[u8]) -> Result<(), Rejection> {
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

impl VerifiedEvent {
    fn from_decoded(event: DecodedEvent) -> VerifiedEvent {
        VerifiedEvent {
            header: event.header,
            hash: event.hash,
            payload: event.payload,
            bytes: event.bytes,
        }
    }
}

/// One signature check under herald's rule (cofactored, ZIP-215 style; see
/// [`super::signature`]): the single and batch paths accept exactly the same
/// signatures, so every node and auditor reaches the same verdict.
pub fn signature_valid(key: &VerifyingKey, hash: &Hash, signature: &Signature) -> bool {
    super::signature::verify_single(key, &codec::signing_message(hash), signature)
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
            let results: Vec<bool> = if super::signature::verify_batch(&batch) {
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
    /// `cert_der`.
    pub fn genesis(
        author: &str,
        key: SigningKey,
        cert_der: &[u8],
        id: [u8; 16],
        now_us: u64,
    ) -> (Sealer, VerifiedEvent) {
        let mut sealer = Sealer {
            author: author.into(),
            key,
            next_seq: 0,
            head_hash: [0u8; 32],
            last_timestamp_us: 0,
        };
        let header = EventHeader {
            version: FORMAT_VERSION,
            id,
            author: author.into(),
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
            signature_scope: SignatureScope::Event,
        };
        let unsigned = sealer.chain(header, cert_der.to_vec());
        let event = sealer.sign(unsigned);
        (sealer, event)
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
            version: FORMAT_VERSION,
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
            signature_scope: SignatureScope::Event,
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
    /// Signs every event on all cores.
    pub fn sign(self) -> Vec<VerifiedEvent> {
        let key = &self.key;
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

fn sign_with(key: &SigningKey, u: Unsigned) -> VerifiedEvent {
    let signature = key.sign(&codec::signing_message(&u.hash));
    let envelope = Envelope {
        header: u.header_bytes,
        signature: signature.to_bytes(),
        payload: Some(u.payload),
    };
    let bytes = codec::encode_envelope(&envelope);
    // Assert before the bytes reach the disk: our own events must verify.
    debug_assert!(signature_valid(&key.verifying_key(), &u.hash, &signature));
    debug_assert!(codec::decode_envelope(&bytes).is_ok());
    VerifiedEvent {
        header: u.header,
        hash: u.hash,
        payload: envelope.payload,
        bytes,
    }
}

/// The AEAD associated data: `AAD_TAG ‖ postcard(AssociatedData)`.
pub(crate) fn associated_data(fields: &AssociatedData<'_>) -> Vec<u8> {
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
