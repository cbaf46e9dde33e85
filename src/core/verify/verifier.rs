//! The per-feed verifier: the author's admitted certificate and the head,
//! against which each next event's chain, time and payload are checked.

use ed25519_dalek::VerifyingKey;

use super::payload::check_payload;
use super::signatures::{Basis, SignatureVerdict, check_event_signatures, signature_valid};
use super::{Check, DecodedEvent, Rejection, VerifiedEvent, hx};
use crate::core::cert::{AuthorAdmission, AuthorCert};
use crate::core::crypto::Hash;
use crate::core::event::*;
use crate::core::transition::{KEY_TRANSITION_EVENT_TYPE, KeyTransition, TransitionKind};

/// The key a key transition event moves its feed to, if `event` is one
/// whose certificate `trust` admits: what its checkpoint is signed with.
/// Nothing else about the transition is checked here.
pub fn transition_key(trust: &impl AuthorAdmission, event: &DecodedEvent) -> Option<VerifyingKey> {
    let h = &event.header;
    if h.event_type != KEY_TRANSITION_EVENT_TYPE {
        return None;
    }
    let transition = KeyTransition::decode(event.payload()?).ok()?;
    let cert = trust.admit_author(&h.author, &transition.new_cert).ok()?;
    VerifyingKey::from_bytes(&cert.public_key).ok()
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
    /// certificate, and starts verifying the feed from it. A format-1
    /// genesis is checked against its own signature; a format-2 genesis
    /// needs `verdict`, from a checkpoint under the certificate's key that
    /// covers it (see [`super::check_sealed_run`] and [`Self::admitted_key`]).
    pub fn genesis(
        trust: &impl AuthorAdmission,
        event: DecodedEvent,
        verdict: Option<SignatureVerdict>,
    ) -> Result<(FeedVerifier, VerifiedEvent), Rejection> {
        let (cert, key) = admit_genesis(trust, &event)?;
        let header = &event.header;
        let verdict = match verdict {
            Some(verdict) if event.is_sealed() => verdict,
            _ => SignatureVerdict::check(&key, &event),
        };
        let mut verifier = FeedVerifier {
            cert,
            key,
            next_seq: 0,
            head_hash: [0u8; 32],
            damaged_slot: None,
            last_timestamp_us: header.timestamp_us,
        };
        verifier.check_verdict(&event, verdict)?;
        check_cert_window(&verifier.cert, header)?;
        check_cutoff(&verifier.cert, header)?;
        verifier.next_seq = 1;
        verifier.head_hash = event.hash;
        Ok((verifier, VerifiedEvent::from_decoded(event)))
    }

    /// For auditors that authenticate a format-2 feed afterwards, against a
    /// checkpoint over the tree of every event they accepted (they must
    /// report the events as unauthentic if none covers them): starts the
    /// feed from a format-2 genesis, checking everything but authenticity.
    pub fn genesis_pending_checkpoint(
        trust: &impl AuthorAdmission,
        event: &DecodedEvent,
    ) -> Result<FeedVerifier, Rejection> {
        if !event.is_sealed() {
            return Err(not_sealed(event));
        }
        let (cert, key) = admit_genesis(trust, event)?;
        check_cert_window(&cert, &event.header)?;
        check_cutoff(&cert, &event.header)?;
        Ok(FeedVerifier {
            cert,
            key,
            next_seq: 1,
            head_hash: event.hash,
            damaged_slot: None,
            last_timestamp_us: event.header.timestamp_us,
        })
    }

    /// [`Self::check_next`] for a format-2 event whose authenticity the
    /// caller establishes afterwards, as for
    /// [`Self::genesis_pending_checkpoint`].
    pub fn check_next_pending_checkpoint(
        &mut self,
        trust: &impl AuthorAdmission,
        event: &DecodedEvent,
    ) -> Result<(), Rejection> {
        if !event.is_sealed() {
            return Err(not_sealed(event));
        }
        let key = transition_key(trust, event).unwrap_or(self.key);
        let verdict = SignatureVerdict::covered(&key, event);
        self.check_next_with(trust, event, verdict)
    }

    /// [`Self::resync`] for a format-2 event an auditor holds pending its
    /// checkpoint (whose check follows and settles its authenticity). With
    /// no signature to tell, position decides: one that stands in the
    /// expected slot but failed is taken as damaged there (the next event
    /// may follow it unchecked against it); one further ahead becomes the
    /// head (events were dropped or reordered).
    pub fn resync_pending_checkpoint(&mut self, event: &DecodedEvent) {
        if !event.is_sealed() {
            return;
        }
        let verdict = if event.header.seq == self.next_seq {
            SignatureVerdict::check(&self.key, event)
        } else {
            SignatureVerdict::covered(&self.key, event)
        };
        self.resync(event, verdict);
    }

    /// The key of the certificate a genesis event carries, if the CA admits
    /// it: what a checkpoint of a new feed must be signed with.
    pub fn admitted_key(
        trust: &impl AuthorAdmission,
        genesis: &DecodedEvent,
    ) -> Result<VerifyingKey, Rejection> {
        admit_genesis(trust, genesis).map(|(_, key)| key)
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
        let verdicts = self.check_signatures(&events);
        let mut verified = Vec::with_capacity(events.len());
        for (event, verdict) in events.into_iter().zip(verdicts) {
            match self.verify_next(event, verdict) {
                Ok(v) => verified.push(v),
                Err(r) => return (verified, Some(r)),
            }
        }
        (verified, None)
    }

    /// Checks the signatures of `events` under this feed's key, in batches on
    /// all cores; one verdict per event, for [`Self::verify_next`].
    pub fn check_signatures(&self, events: &[DecodedEvent]) -> Vec<SignatureVerdict> {
        check_event_signatures(events.iter().map(|e| (&self.key, e)))
    }

    /// Checks one event's signature under this feed's key.
    pub fn check_signature(&self, event: &DecodedEvent) -> SignatureVerdict {
        SignatureVerdict::check(&self.key, event)
    }

    /// Applies one event, given the verdict on its signature (from
    /// [`Self::check_signatures`], [`Self::check_signature`] or
    /// [`check_event_signatures`]). On success the feed advances; on
    /// rejection nothing changes.
    pub fn verify_next(
        &mut self,
        event: DecodedEvent,
        verdict: SignatureVerdict,
    ) -> Result<VerifiedEvent, Rejection> {
        self.check_next(&event, verdict)?;
        Ok(VerifiedEvent::from_decoded(event))
    }

    /// [`Self::verify_next`] that also follows certificate renewals
    /// ([`CERTIFICATE_EVENT_TYPE`]): their certificate is admitted through
    /// `trust`. Every verifier of a whole feed uses this.
    pub fn verify_next_with(
        &mut self,
        trust: &impl AuthorAdmission,
        event: DecodedEvent,
        verdict: SignatureVerdict,
    ) -> Result<VerifiedEvent, Rejection> {
        self.check_next_with(trust, &event, verdict)?;
        Ok(VerifiedEvent::from_decoded(event))
    }

    /// [`Self::check_next`] that also follows certificate renewals: a
    /// [`CERTIFICATE_EVENT_TYPE`] event must carry a certificate that
    /// `trust` admits for the feed's author, with the feed's key, whose
    /// validity includes the event's time; from it on that certificate's
    /// window applies. On rejection nothing changes.
    pub fn check_next_with(
        &mut self,
        trust: &impl AuthorAdmission,
        event: &DecodedEvent,
        verdict: SignatureVerdict,
    ) -> Result<(), Rejection> {
        let changed = match event.header.event_type.as_str() {
            CERTIFICATE_EVENT_TYPE => Some((self.admit_renewal(trust, event)?, self.key)),
            KEY_TRANSITION_EVENT_TYPE => Some(self.admit_transition(trust, event)?),
            _ => None,
        };
        self.check_next_inner(event, verdict, changed)
    }

    /// [`Self::verify_next`] without producing the verified value (for
    /// auditors, which only count and report). It has no trust anchor, so it
    /// refuses certificate renewals: see [`Self::check_next_with`].
    pub fn check_next(
        &mut self,
        event: &DecodedEvent,
        verdict: SignatureVerdict,
    ) -> Result<(), Rejection> {
        if event.header.event_type == CERTIFICATE_EVENT_TYPE
            || event.header.event_type == KEY_TRANSITION_EVENT_TYPE
        {
            return Err(Rejection::new(
                event.header.seq,
                Check::Certificate,
                "a certificate renewal or key transition checked against the CA",
                "a verifier without the CA",
            ));
        }
        self.check_next_inner(event, verdict, None)
    }

    /// The certificate a renewal event carries, if the CA admits it for this
    /// feed's author and key (the checks that need no signature).
    fn admit_renewal(
        &self,
        trust: &impl AuthorAdmission,
        event: &DecodedEvent,
    ) -> Result<AuthorCert, Rejection> {
        let h = &event.header;
        let Some(cert_der) = event.payload() else {
            return Err(Rejection::new(
                h.seq,
                Check::Certificate,
                "a certificate renewal holding the new certificate",
                "a pruned payload",
            ));
        };
        if h.payload.encryption != Encryption::Plain {
            return Err(Rejection::new(
                h.seq,
                Check::Certificate,
                "a certificate renewal with a plain payload",
                "an encrypted payload",
            ));
        }
        check_payload(h, cert_der)?;
        let cert = trust
            .admit_author(&self.cert.service, cert_der)
            .map_err(|e| {
                Rejection::new(
                    h.seq,
                    Check::Certificate,
                    "a certificate admitted by the CA",
                    e,
                )
            })?;
        if cert.public_key != self.cert.public_key {
            return Err(Rejection::new(
                h.seq,
                Check::Certificate,
                format!(
                    "a renewed certificate for the feed's key {}",
                    hx(&self.cert.public_key)
                ),
                format!("a certificate for key {}", hx(&cert.public_key)),
            ));
        }
        Ok(cert)
    }

    /// The certificate and key a key transition moves the feed to, if it is
    /// well formed and authorized (see `core::transition`): a format-2
    /// event with a plain payload naming a certificate the CA admits for
    /// the feed's author, for another key, not revoked; a rotation's
    /// authorization signed by the feed's current key (and the transition
    /// before that key's revocation cut-off, if any), a recovery's by a CA.
    /// The checkpoint it carries is checked where the feed's tree is known
    /// (ingest, audits). Its own authenticity is the new key's checkpoint.
    fn admit_transition(
        &self,
        trust: &impl AuthorAdmission,
        event: &DecodedEvent,
    ) -> Result<(AuthorCert, VerifyingKey), Rejection> {
        let h = &event.header;
        let refuse = |expected: &str, found: String| {
            Rejection::new(h.seq, Check::Transition, expected, found)
        };
        if !event.is_sealed() {
            return Err(refuse(
                "a key transition in a format-2 (sealed) event",
                "a format-1 event".into(),
            ));
        }
        let Some(bytes) = event.payload() else {
            return Err(refuse(
                "a key transition holding its payload",
                "a pruned payload".into(),
            ));
        };
        if h.payload.encryption != Encryption::Plain {
            return Err(refuse(
                "a key transition with a plain payload",
                "an encrypted payload".into(),
            ));
        }
        check_payload(h, bytes)?;
        let transition = KeyTransition::decode(bytes)
            .map_err(|e| refuse("a well-formed key transition payload", e.to_string()))?;
        let cert = trust
            .admit_author(&self.cert.service, &transition.new_cert)
            .map_err(|e| {
                Rejection::new(
                    h.seq,
                    Check::Transition,
                    "a new certificate admitted by the CA",
                    e,
                )
            })?;
        if let Some(cutoff) = cert.revoked_from {
            return Err(refuse(
                "a new certificate that is not revoked",
                format!(
                    "certificate {} revoked {}",
                    cert.serial_hex(),
                    cutoff.describe()
                ),
            ));
        }
        if cert.public_key == self.cert.public_key {
            return Err(refuse(
                "a new certificate for another key (the same key is a renewal)",
                format!("the feed's key {}", hx(&cert.public_key)),
            ));
        }
        let key = VerifyingKey::from_bytes(&cert.public_key)
            .map_err(|e| refuse("a valid Ed25519 public key", e.to_string()))?;
        if transition.kind == TransitionKind::Rotation {
            // A key past its revocation cut-off cannot hand the feed on.
            check_cutoff(&self.cert, h)?;
        }
        if !transition.is_authorized(&self.cert.service, &self.key, &trust.ca_keys()) {
            let (expected, found) = match transition.kind {
                TransitionKind::Rotation => (
                    "a rotation authorized by the feed's current key",
                    format!(
                        "an authorization that does not verify under key {}",
                        hx(&self.cert.public_key)
                    ),
                ),
                TransitionKind::Recovery => (
                    "a recovery authorized by a CA of the cluster",
                    "an authorization that no CA's key verifies".to_string(),
                ),
            };
            return Err(refuse(expected, found));
        }
        if transition.final_checkpoint.is_empty() {
            return Err(refuse(
                "the old key's checkpoint at the transition",
                "none".into(),
            ));
        }
        Ok((cert, key))
    }

    fn check_next_inner(
        &mut self,
        event: &DecodedEvent,
        verdict: SignatureVerdict,
        changed: Option<(AuthorCert, VerifyingKey)>,
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
        // A transition is sealed by the key it moves to.
        let key = changed.as_ref().map_or(self.key, |(_, key)| *key);
        self.check_verdict_under(&key, event, verdict)?;
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
        // A renewal or transition is itself checked against the certificate
        // it brings (a recovery stands past the old certificate's cut-off).
        let cert = changed.as_ref().map_or(&self.cert, |(cert, _)| cert);
        check_cert_window(cert, h)?;
        check_cutoff(cert, h)?;
        if let Some(payload) = event.payload() {
            check_payload(h, payload)?;
        }
        if let Some((cert, key)) = changed {
            self.cert = cert;
            self.key = key;
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
    pub fn resync(&mut self, event: &DecodedEvent, verdict: SignatureVerdict) {
        // A verdict about another event or key proves nothing about this one.
        let signature_ok = verdict.is_about(&self.key, event) && verdict.is_valid();
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

    /// For auditors, after `event` was refused for its author's revocation
    /// cut-off (check `revoked`) and for nothing else: takes it as the head
    /// when it stands in the next slot and chains on, so the feed's tree
    /// and chain stay known past it (a checkpoint over the whole feed can
    /// still vouch for the events before the cut-off). Every later event
    /// falls at or after the cut-off too, and is refused again. Never used
    /// on the ingest path, which stores nothing past the cut-off.
    pub fn adopt_past_cutoff(&mut self, event: &DecodedEvent) {
        let h = &event.header;
        let refused = self
            .cert
            .revoked_from
            .is_some_and(|c| c.refuses(h.seq, h.timestamp_us));
        if refused
            && h.author == self.cert.service
            && h.seq == self.next_seq
            && h.prev == self.head_hash
            && h.timestamp_us >= self.last_timestamp_us
        {
            self.next_seq = h.seq + 1;
            self.head_hash = event.hash;
            self.damaged_slot = None;
            self.last_timestamp_us = h.timestamp_us;
        }
    }

    /// Accepts `event`'s signature only on a valid verdict about this event
    /// under this feed's key; a verdict about anything else is a caller's
    /// mix-up, refused rather than trusted.
    fn check_verdict(
        &self,
        event: &DecodedEvent,
        verdict: SignatureVerdict,
    ) -> Result<(), Rejection> {
        self.check_verdict_under(&self.key, event, verdict)
    }

    /// [`Self::check_verdict`] under `key` (a transition's new key).
    fn check_verdict_under(
        &self,
        key: &VerifyingKey,
        event: &DecodedEvent,
        verdict: SignatureVerdict,
    ) -> Result<(), Rejection> {
        let seq = event.header.seq;
        if !verdict.is_about(key, event) {
            return Err(Rejection::new(
                seq,
                Check::Signature,
                format!(
                    "a signature verdict about event {} under {}'s key",
                    hx(&event.hash),
                    self.cert.service
                ),
                format!(
                    "a verdict about event {}{}",
                    hx(verdict.event_hash()),
                    if verdict.is_about_key(key) {
                        ""
                    } else {
                        " under another key"
                    }
                ),
            ));
        }
        let needed = if event.is_sealed() {
            Basis::Checkpoint
        } else {
            Basis::EventSignature
        };
        if !verdict.is_valid() || verdict.basis() != needed {
            return Err(if event.is_sealed() {
                Rejection::new(
                    seq,
                    Check::Signature,
                    format!(
                        "a checkpoint signed by {}'s key whose tree includes event {}",
                        self.cert.service,
                        hx(&event.hash)
                    ),
                    "no such checkpoint",
                )
            } else {
                Rejection::new(
                    seq,
                    Check::Signature,
                    format!(
                        "a signature by {}'s key over hash {}",
                        self.cert.service,
                        hx(&event.hash)
                    ),
                    "an invalid signature",
                )
            });
        }
        Ok(())
    }

    /// Checks that two events are a proof of fork of this feed: both validly
    /// signed by the author, same sequence number, different hashes. Only
    /// format-1 events prove a fork on their own; two format-2 histories are
    /// proved apart by two checkpoints (see `checkpoint::Equivocation`).
    pub fn is_fork_proof(&self, a: &DecodedEvent, b: &DecodedEvent) -> bool {
        let signed = |e: &DecodedEvent| {
            e.signature()
                .is_some_and(|s| signature_valid(&self.key, &e.hash, &s))
        };
        a.header.author == self.cert.service
            && b.header.author == self.cert.service
            && a.header.seq == b.header.seq
            && a.hash != b.hash
            && signed(a)
            && signed(b)
    }
}

pub fn check_cert_window(cert: &AuthorCert, h: &EventHeader) -> Result<(), Rejection> {
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

/// Refuses an event at or after the cut-off of a revocation of its author's
/// certificate (docs/FORMAT.md section 9, "Revocation"): what the revoked
/// key signs from there on is not the author's.
pub fn check_cutoff(cert: &AuthorCert, h: &EventHeader) -> Result<(), Rejection> {
    match cert.revoked_from {
        Some(cutoff) if cutoff.refuses(h.seq, h.timestamp_us) => Err(Rejection::new(
            h.seq,
            Check::Revoked,
            format!(
                "an event before the cut-off of the revocation of {}'s certificate (serial {}, revoked {})",
                cert.service,
                cert.serial_hex(),
                cutoff.describe()
            ),
            format!(
                "sequence {} at {}",
                h.seq,
                crate::clock::format_timestamp(h.timestamp_us)
            ),
        )),
        _ => Ok(()),
    }
}

/// A format-1 event offered where only format-2 events may wait for a
/// checkpoint: its own signature must be checked.
fn not_sealed(event: &DecodedEvent) -> Rejection {
    Rejection::new(
        event.header.seq,
        Check::Signature,
        "a format-2 event (a format-1 event is checked against its own signature)",
        "a format-1 event",
    )
}

/// Admits the certificate a genesis event carries: the checks that need no
/// signature (type, sequence, payload, CA and revocation list).
fn admit_genesis(
    trust: &impl AuthorAdmission,
    event: &DecodedEvent,
) -> Result<(AuthorCert, VerifyingKey), Rejection> {
    let header = &event.header;
    if header.seq != 0 || header.event_type != GENESIS_EVENT_TYPE {
        return Err(Rejection::new(
            header.seq,
            Check::Author,
            "the feed to begin with a genesis event at sequence 0",
            format!("{} at sequence {}", header.event_type, header.seq),
        ));
    }
    let Some(cert_der) = event.payload() else {
        return Err(Rejection::new(
            0,
            Check::Certificate,
            "a genesis payload holding the author's certificate",
            "a pruned payload",
        ));
    };
    check_payload(header, cert_der)?;
    let cert = trust.admit_author(&header.author, cert_der).map_err(|e| {
        Rejection::new(0, Check::Certificate, "a certificate admitted by the CA", e)
    })?;
    let key = VerifyingKey::from_bytes(&cert.public_key)
        .map_err(|e| Rejection::new(0, Check::Certificate, "a valid Ed25519 public key", e))?;
    Ok((cert, key))
}

#[cfg(test)]
mod renewal_tests {
    //! A feed follows a renewed certificate for its key.

    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::core::cert::CertError;
    use crate::core::crypto::ChannelKey;
    use crate::core::limits::FORMAT_VERSION_SIGNED;
    use crate::core::verify::{Draft, Entropy, Sealer};

    const FEED: &str = "council";

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[5; 32])
    }

    /// A CA that knows four certificates by their bytes: the original
    /// (valid 0..=2000), a renewal (0..=10000), one for another key, and
    /// one that starts late (5000..=10000). Anything else it refuses.
    struct Ca;

    impl AuthorAdmission for Ca {
        fn admit_author(&self, service: &str, der: &[u8]) -> Result<AuthorCert, CertError> {
            let (key, not_before_us, not_after_us) = match der {
                b"original" => (key(), 0, 2_000),
                b"renewed" => (key(), 0, 10_000),
                b"other-key" => (SigningKey::from_bytes(&[6; 32]), 0, 10_000),
                b"late" => (key(), 5_000, 10_000),
                _ => {
                    return Err(CertError::Malformed {
                        reason: "unknown".into(),
                    });
                }
            };
            Ok(AuthorCert {
                service: service.into(),
                public_key: key.verifying_key().to_bytes(),
                not_before_us,
                not_after_us,
                serial: vec![1],
                der: der.to_vec(),
                revoked_from: None,
            })
        }
    }

    pub(super) fn entropy(i: u64) -> Entropy {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&i.to_be_bytes());
        id[6] = 0x70;
        id[8] = 0x80;
        Entropy {
            id,
            nonce: [i as u8; 24],
        }
    }

    pub(super) fn decoded(e: VerifiedEvent) -> DecodedEvent {
        DecodedEvent::decode(e.into_bytes()).unwrap()
    }

    /// A verifier past the genesis (at time 1000) and the sealer of its feed.
    fn start() -> (FeedVerifier, Sealer) {
        let (sealer, genesis) = Sealer::new_feed(FEED, key())
            .with_format(FORMAT_VERSION_SIGNED)
            .start_feed(b"original", entropy(0).id, 1_000);
        let (verifier, _) = FeedVerifier::genesis(&Ca, decoded(genesis), None).unwrap();
        (verifier, sealer)
    }

    fn note(sealer: &mut Sealer, i: u64, now_us: u64) -> DecodedEvent {
        let channel = ChannelKey::new("default", [3; 32]);
        let draft = Draft::new("note", 1, vec![], vec![1]).unwrap();
        let mut sealed = sealer.seal_batch(vec![(draft, &channel, entropy(i))], now_us);
        decoded(sealed.remove(0))
    }

    fn apply(v: &mut FeedVerifier, e: &DecodedEvent) -> Result<(), Rejection> {
        let verdict = v.check_signature(e);
        v.check_next_with(&Ca, e, verdict)
    }

    #[test]
    fn a_renewal_extends_the_window_for_the_events_after_it() {
        let (mut v, mut sealer) = start();
        apply(&mut v, &note(&mut sealer, 1, 1_500)).unwrap();
        // Without a renewal, an event after the original's end is refused.
        let mut late = v.clone();
        let mut late_sealer = Sealer::resume(FEED, key(), 1, *v.head_hash(), 1_500)
            .with_format(FORMAT_VERSION_SIGNED);
        let r = apply(&mut late, &note(&mut late_sealer, 2, 3_000)).unwrap_err();
        assert_eq!(r.check, Check::CertificateValidity, "{r:?}");

        // The renewal, itself after the original's end, carries the feed on.
        let renewal = decoded(sealer.renew_certificate(b"renewed", entropy(2).id, 2_500));
        apply(&mut v, &renewal).unwrap();
        assert_eq!(v.cert().der, b"renewed");
        apply(&mut v, &note(&mut sealer, 3, 3_000)).unwrap();
        assert_eq!(v.next_seq(), 4);
    }

    #[test]
    fn a_renewal_for_another_key_or_refused_by_the_ca_changes_nothing() {
        for (der, check) in [
            (&b"other-key"[..], Check::Certificate),
            (b"forged", Check::Certificate),
            (b"late", Check::CertificateValidity),
        ] {
            let (mut v, mut sealer) = start();
            let mark = sealer.mark();
            let renewal = decoded(sealer.renew_certificate(der, entropy(1).id, 1_500));
            let r = apply(&mut v, &renewal).unwrap_err();
            assert_eq!(r.check, check, "{}: {r:?}", String::from_utf8_lossy(der));
            assert_eq!(v.cert().der, b"original");
            assert_eq!(v.next_seq(), 1);
            // The feed goes on under the original certificate.
            sealer.restore(mark);
            apply(&mut v, &note(&mut sealer, 2, 1_600)).unwrap();
        }
    }

    #[test]
    fn a_verifier_without_the_ca_refuses_renewals() {
        let (mut v, mut sealer) = start();
        let renewal = decoded(sealer.renew_certificate(b"renewed", entropy(1).id, 1_500));
        let verdict = v.check_signature(&renewal);
        let r = v.check_next(&renewal, verdict).unwrap_err();
        assert_eq!(r.check, Check::Certificate);
        assert_eq!(v.next_seq(), 1);
    }
}

#[cfg(test)]
mod cutoff_tests {
    //! A revocation with a cut-off keeps the history before it valid and
    //! refuses what the key signs from there on.

    use ed25519_dalek::SigningKey;

    use super::renewal_tests::{decoded, entropy};
    use super::*;
    use crate::core::cert::{CertError, Cutoff};
    use crate::core::crypto::ChannelKey;
    use crate::core::limits::{FORMAT_VERSION_SEALED, FORMAT_VERSION_SIGNED};
    use crate::core::verify::{Draft, Sealer};

    const FEED: &str = "treasurer";

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }

    /// A CA whose revocation list revokes the feed's certificate with the
    /// given cut-off.
    struct Revoking(Cutoff);

    impl AuthorAdmission for Revoking {
        fn admit_author(&self, service: &str, der: &[u8]) -> Result<AuthorCert, CertError> {
            Ok(AuthorCert {
                service: service.into(),
                public_key: key().verifying_key().to_bytes(),
                not_before_us: 0,
                not_after_us: u64::MAX,
                serial: vec![7],
                der: der.to_vec(),
                revoked_from: Some(self.0),
            })
        }
    }

    /// A feed of `n` events (genesis at time 1000, event i at 1000 + i).
    fn feed(n: u64, format: u8) -> Vec<DecodedEvent> {
        let (mut sealer, genesis) = Sealer::new_feed(FEED, key())
            .with_format(format)
            .start_feed(b"cert", entropy(0).id, 1_000);
        let channel = ChannelKey::new("default", [3; 32]);
        let mut events = vec![decoded(genesis)];
        for i in 1..n {
            let draft = Draft::new("donation", 1, vec![], vec![i as u8]).unwrap();
            let mut sealed = sealer.seal_batch(vec![(draft, &channel, entropy(i))], 1_000 + i);
            events.push(decoded(sealed.remove(0)));
        }
        events
    }

    /// How many events of a format-1 feed pass before the first rejection.
    fn verified_prefix(cutoff: Cutoff) -> (u64, Option<Rejection>) {
        let trust = Revoking(cutoff);
        let mut events = feed(10, FORMAT_VERSION_SIGNED).into_iter();
        let genesis = events.next().unwrap();
        let mut v = match FeedVerifier::genesis(&trust, genesis, None) {
            Ok((v, _)) => v,
            Err(r) => return (0, Some(r)),
        };
        for event in events {
            let verdict = v.check_signature(&event);
            if let Err(r) = v.check_next_with(&trust, &event, verdict) {
                return (v.next_seq(), Some(r));
            }
        }
        (v.next_seq(), None)
    }

    #[test]
    fn events_before_a_sequence_cut_off_verify_and_the_rest_are_refused() {
        let (verified, rejection) = verified_prefix(Cutoff {
            from_seq: Some(6),
            from_us: None,
        });
        assert_eq!(verified, 6, "seq 0..=5 stay valid");
        let r = rejection.expect("seq 6 is refused");
        assert_eq!((r.check, r.seq), (Check::Revoked, Some(6)), "{r}");
        assert!(r.expected.contains("from sequence 6"), "{r}");
    }

    #[test]
    fn a_time_cut_off_refuses_the_first_event_at_or_after_it() {
        let (verified, rejection) = verified_prefix(Cutoff {
            from_seq: None,
            from_us: Some(1_004),
        });
        assert_eq!(verified, 4, "events at 1000..=1003 stay valid");
        assert_eq!(rejection.unwrap().check, Check::Revoked);
    }

    #[test]
    fn a_cut_off_at_the_genesis_refuses_the_whole_feed() {
        let (verified, rejection) = verified_prefix(Cutoff {
            from_seq: Some(0),
            from_us: None,
        });
        assert_eq!(verified, 0);
        assert_eq!(rejection.unwrap().check, Check::Revoked);
    }

    #[test]
    fn a_resumed_verifier_keeps_refusing_after_the_cut_off() {
        let events = feed(8, FORMAT_VERSION_SIGNED);
        let trust = Revoking(Cutoff {
            from_seq: Some(5),
            from_us: None,
        });
        // A node restarted with the new list resumes at its stored head.
        let mut v =
            FeedVerifier::resume(&trust, FEED, b"cert", 4, *events[4].hash(), 1_004).unwrap();
        let verdict = v.check_signature(&events[5]);
        let r = v.check_next_with(&trust, &events[5], verdict).unwrap_err();
        assert_eq!(r.check, Check::Revoked);
        assert_eq!(v.next_seq(), 5, "nothing changed");
    }

    #[test]
    fn a_checkpoint_does_not_carry_sealed_events_past_the_cut_off() {
        let events = feed(8, FORMAT_VERSION_SEALED);
        let trust = Revoking(Cutoff {
            from_seq: Some(3),
            from_us: None,
        });
        let mut v = FeedVerifier::genesis_pending_checkpoint(&trust, &events[0]).unwrap();
        v.check_next_pending_checkpoint(&trust, &events[1]).unwrap();
        v.check_next_pending_checkpoint(&trust, &events[2]).unwrap();
        let r = v
            .check_next_pending_checkpoint(&trust, &events[3])
            .unwrap_err();
        assert_eq!((r.check, r.seq), (Check::Revoked, Some(3)));
    }
}

#[cfg(test)]
mod transition_tests {
    //! A feed follows a key transition to its new key: a rotation
    //! authorized by the old key, a recovery authorized by a CA; anything
    //! else is refused with the check `transition` and changes nothing.

    use ed25519_dalek::SigningKey;

    use super::renewal_tests::{decoded, entropy};
    use super::*;
    use crate::core::cert::{CertError, Cutoff};
    use crate::core::crypto::ChannelKey;
    use crate::core::transition::{KeyTransition, TransitionKind, sign_authorization};
    use crate::core::verify::{Draft, Sealer};

    const FEED: &str = "registrar";

    fn old_key() -> SigningKey {
        SigningKey::from_bytes(&[11; 32])
    }
    fn new_key() -> SigningKey {
        SigningKey::from_bytes(&[12; 32])
    }
    fn ca_key() -> SigningKey {
        SigningKey::from_bytes(&[13; 32])
    }

    /// A CA that knows certificates by their bytes: `old` (the feed's),
    /// `new` (another key), `same` (the feed's key again), `new-revoked`
    /// (another key, revoked) and `old-cut` (the feed's key, revoked from
    /// sequence 3). Anything else it refuses.
    struct Ca;

    impl AuthorAdmission for Ca {
        fn admit_author(&self, service: &str, der: &[u8]) -> Result<AuthorCert, CertError> {
            let (key, revoked_from) = match der {
                b"old" | b"same" => (old_key(), None),
                b"old-cut" => (
                    old_key(),
                    Some(Cutoff {
                        from_seq: Some(3),
                        from_us: None,
                    }),
                ),
                b"new" => (new_key(), None),
                b"new-revoked" => (
                    new_key(),
                    Some(Cutoff {
                        from_seq: Some(0),
                        from_us: None,
                    }),
                ),
                _ => {
                    return Err(CertError::Malformed {
                        reason: "unknown".into(),
                    });
                }
            };
            Ok(AuthorCert {
                service: service.into(),
                public_key: key.verifying_key().to_bytes(),
                not_before_us: 0,
                not_after_us: u64::MAX,
                serial: vec![3],
                der: der.to_vec(),
                revoked_from,
            })
        }

        fn ca_keys(&self) -> Vec<[u8; 32]> {
            vec![ca_key().verifying_key().to_bytes()]
        }
    }

    /// A sealed feed under `genesis_cert` with `n` events; its verifier past
    /// them (each event vouched for as if by a checkpoint under the old
    /// key) and its sealer.
    fn feed(genesis_cert: &[u8], n: u64) -> (FeedVerifier, Sealer) {
        let (mut sealer, genesis) =
            Sealer::new_feed(FEED, old_key()).start_feed(genesis_cert, entropy(0).id, 1_000);
        let genesis = decoded(genesis);
        let verdict = SignatureVerdict::covered(&old_key().verifying_key(), &genesis);
        let (mut v, _) = FeedVerifier::genesis(&Ca, genesis, Some(verdict)).unwrap();
        for i in 1..n {
            let e = note(&mut sealer, i);
            apply(&mut v, &e, &old_key()).unwrap();
        }
        (v, sealer)
    }

    fn note(sealer: &mut Sealer, i: u64) -> DecodedEvent {
        let channel = ChannelKey::new("default", [3; 32]);
        let draft = Draft::new("note", 1, vec![], vec![i as u8]).unwrap();
        let mut sealed = sealer.seal_batch(vec![(draft, &channel, entropy(i))], 1_000 + i);
        decoded(sealed.remove(0))
    }

    /// Applies `e` as vouched for by a checkpoint under `sealed_by`.
    fn apply(
        v: &mut FeedVerifier,
        e: &DecodedEvent,
        sealed_by: &SigningKey,
    ) -> Result<(), Rejection> {
        let verdict = SignatureVerdict::covered(&sealed_by.verifying_key(), e);
        v.check_next_with(&Ca, e, verdict)
    }

    fn transition(
        sealer: &mut Sealer,
        i: u64,
        kind: TransitionKind,
        new_cert: &[u8],
        authorizer: &SigningKey,
    ) -> DecodedEvent {
        let payload = KeyTransition {
            kind,
            new_cert: new_cert.to_vec(),
            authorization: sign_authorization(kind, FEED, new_cert, authorizer),
            final_checkpoint: b"the old key's checkpoint".to_vec(),
        };
        decoded(sealer.transition_key(new_key(), payload.encode(), entropy(i).id, 1_000 + i))
    }

    #[test]
    fn a_rotation_moves_the_feed_to_the_new_key() {
        let (mut v, mut sealer) = feed(b"old", 3);
        let t = transition(&mut sealer, 3, TransitionKind::Rotation, b"new", &old_key());
        apply(&mut v, &t, &new_key()).unwrap();
        assert_eq!(v.cert().der, b"new");
        assert_eq!(v.key(), &new_key().verifying_key());
        apply(&mut v, &note(&mut sealer, 4), &new_key()).unwrap();
        // The old key vouches for nothing after the transition.
        let mut after = v.clone();
        let r = apply(&mut after, &note(&mut sealer, 5), &old_key()).unwrap_err();
        assert_eq!(r.check, Check::Signature, "{r:?}");
    }

    #[test]
    fn a_recovery_authorized_by_a_ca_moves_the_feed_past_the_old_keys_cut_off() {
        // The old certificate is revoked from sequence 3: a rotation there
        // is refused (the stolen key cannot hand the feed on), a recovery
        // by the CA is taken, and the feed goes on under the new key.
        let (mut v, mut sealer) = feed(b"old-cut", 3);
        let mark = sealer.mark();
        let rotation = transition(&mut sealer, 3, TransitionKind::Rotation, b"new", &old_key());
        let r = apply(&mut v, &rotation, &new_key()).unwrap_err();
        assert_eq!(r.check, Check::Revoked, "{r:?}");
        sealer.restore(mark);
        sealer.restore_key(old_key());

        let t = transition(&mut sealer, 3, TransitionKind::Recovery, b"new", &ca_key());
        apply(&mut v, &t, &new_key()).unwrap();
        apply(&mut v, &note(&mut sealer, 4), &new_key()).unwrap();
        assert_eq!(v.next_seq(), 5);
    }

    #[test]
    fn a_transition_without_the_right_authorization_or_certificate_changes_nothing() {
        let other = SigningKey::from_bytes(&[14; 32]);
        let cases: [(TransitionKind, &[u8], SigningKey, &str); 6] = [
            (
                TransitionKind::Rotation,
                b"new",
                other.clone(),
                "signed by a stranger",
            ),
            (
                TransitionKind::Rotation,
                b"new",
                new_key(),
                "signed by the new key alone",
            ),
            (
                TransitionKind::Rotation,
                b"new",
                ca_key(),
                "a rotation signed by the CA",
            ),
            (
                TransitionKind::Recovery,
                b"new",
                old_key(),
                "a recovery signed by the old key",
            ),
            (
                TransitionKind::Rotation,
                b"new-revoked",
                old_key(),
                "to a revoked certificate",
            ),
            (
                TransitionKind::Rotation,
                b"forged",
                old_key(),
                "to a certificate the CA refuses",
            ),
        ];
        for (kind, cert, authorizer, what) in cases {
            let (mut v, mut sealer) = feed(b"old", 3);
            let mark = sealer.mark();
            let t = transition(&mut sealer, 3, kind, cert, &authorizer);
            let r = apply(&mut v, &t, &new_key()).unwrap_err();
            assert_eq!(r.check, Check::Transition, "{what}: {r:?}");
            assert_eq!(v.cert().der, b"old", "{what}");
            assert_eq!(v.next_seq(), 3, "{what}");
            // The feed goes on under the old key.
            sealer.restore(mark);
            sealer.restore_key(old_key());
            apply(&mut v, &note(&mut sealer, 3), &old_key()).unwrap();
        }
        // The same key again is a renewal's job.
        let (mut v, mut sealer) = feed(b"old", 3);
        let payload = KeyTransition {
            kind: TransitionKind::Rotation,
            new_cert: b"same".to_vec(),
            authorization: sign_authorization(TransitionKind::Rotation, FEED, b"same", &old_key()),
            final_checkpoint: b"x".to_vec(),
        };
        let t = decoded(sealer.transition_key(old_key(), payload.encode(), entropy(3).id, 1_003));
        let r = apply(&mut v, &t, &old_key()).unwrap_err();
        assert_eq!(r.check, Check::Transition, "{r:?}");
    }

    #[test]
    fn a_transition_sealed_by_the_old_key_is_not_authentic() {
        let (mut v, mut sealer) = feed(b"old", 3);
        let t = transition(&mut sealer, 3, TransitionKind::Rotation, b"new", &old_key());
        let r = apply(&mut v, &t, &old_key()).unwrap_err();
        assert_eq!(r.check, Check::Signature, "{r:?}");
        assert_eq!(v.next_seq(), 3);
    }

    #[test]
    fn a_verifier_without_the_ca_refuses_transitions() {
        let (mut v, mut sealer) = feed(b"old", 2);
        let t = transition(&mut sealer, 2, TransitionKind::Rotation, b"new", &old_key());
        let verdict = SignatureVerdict::covered(&new_key().verifying_key(), &t);
        assert_eq!(
            v.check_next(&t, verdict).unwrap_err().check,
            Check::Certificate
        );
    }
}
