//! The admitted author certificate as the core sees it: service name, key
//! and validity, and why a certificate may be refused.
//!
//! The core verifies events against an [`AuthorCert`] but does not parse
//! X.509: [`AuthorAdmission`] is how it asks for one, and the identity layer
//! (the trust anchor, with its CA and revocation list) implements it. This
//! keeps the core free of any dependency on the layers above it.

/// An admitted certificate, pure data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorCert {
    /// The SAN DNS name that matched.
    pub service: String,
    /// Ed25519 key from the SubjectPublicKeyInfo.
    pub public_key: [u8; 32],
    /// Start of validity, microseconds since the Unix epoch (UTC).
    pub not_before_us: u64,
    /// End of validity (inclusive), microseconds since the Unix epoch (UTC).
    pub not_after_us: u64,
    /// Serial number as encoded (big-endian, DER INTEGER content).
    pub serial: Vec<u8>,
    /// The exact certificate DER.
    pub der: Vec<u8>,
    /// Set when the revocation list revokes this certificate's key or
    /// serial with a cut-off: events of its feed from the cut-off on are
    /// refused, earlier ones stay valid. (Without a cut-off a revoked
    /// certificate is not admitted at all.)
    pub revoked_from: Option<Cutoff>,
}

/// Where a revocation with a cut-off takes effect in its author's feed: the
/// first sequence number refused, or the first event time refused, or both
/// (an event is refused when it meets either).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cutoff {
    /// Events at this sequence number or later are refused.
    pub from_seq: Option<u64>,
    /// Events whose timestamp is this time or later are refused
    /// (microseconds since the Unix epoch, UTC).
    pub from_us: Option<u64>,
}

impl Cutoff {
    /// Whether an event at `seq` with time `timestamp_us` falls at or after
    /// the cut-off.
    pub fn refuses(&self, seq: u64, timestamp_us: u64) -> bool {
        self.from_seq.is_some_and(|s| seq >= s) || self.from_us.is_some_and(|t| timestamp_us >= t)
    }

    /// The stricter of two cut-offs (each bound the earlier of the two).
    pub fn stricter(self, other: Cutoff) -> Cutoff {
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Cutoff {
            from_seq: min(self.from_seq, other.from_seq),
            from_us: min(self.from_us, other.from_us),
        }
    }

    /// The cut-off in words, for rejections and reports.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(seq) = self.from_seq {
            parts.push(format!("from sequence {seq}"));
        }
        if let Some(us) = self.from_us {
            parts.push(format!("from {}", crate::clock::format_timestamp(us)));
        }
        if parts.is_empty() {
            "with no cut-off".into()
        } else {
            parts.join(" and ")
        }
    }
}

impl AuthorCert {
    /// Checks `now_us` against the validity window (both ends inclusive).
    pub fn check_time(&self, now_us: u64) -> Result<(), CertError> {
        if now_us < self.not_before_us {
            return Err(CertError::NotYetValid {
                service: self.service.clone(),
                not_before_us: self.not_before_us,
                now_us,
            });
        }
        if now_us > self.not_after_us {
            return Err(CertError::Expired {
                service: self.service.clone(),
                not_after_us: self.not_after_us,
                now_us,
            });
        }
        Ok(())
    }

    /// The serial as lowercase hex.
    pub fn serial_hex(&self) -> String {
        hex::encode(&self.serial)
    }
}

/// Why a certificate was not admitted. Every message names the value and the
/// reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    #[error("certificate is {size} bytes, more than the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("certificate is malformed: {reason}")]
    Malformed { reason: String },
    #[error("certificate has {count} trailing bytes after the DER structure")]
    TrailingBytes { count: usize },
    #[error(
        "certificate is not issued by the cluster CA: issuer is \"{issuer}\", the CA is \"{ca}\""
    )]
    NotIssuedByCa { issuer: String, ca: String },
    #[error(
        "certificate is signed with unsupported algorithm {oid}, expected Ed25519 (1.3.101.112)"
    )]
    UnsupportedSignatureAlgorithm { oid: String },
    #[error("certificate signature does not verify against the CA key")]
    BadSignature,
    #[error("certificate key has the wrong type: {found}, expected Ed25519 (1.3.101.112)")]
    WrongKeyType { found: String },
    #[error("certificate key {key} is a weak (small-order) Ed25519 key")]
    WeakKey { key: String },
    #[error("certificate names {found}, expected service \"{expected}\"")]
    NameMismatch { expected: String, found: String },
    #[error("not a node certificate: {reason}")]
    NotNodeCertificate { reason: String },
    #[error("not a node or client certificate: {reason}")]
    NotPeerCertificate { reason: String },
    #[error("certificate is a CA certificate, not a node certificate")]
    IsCa,
    #[error("certificate has an unsupported critical extension {oid}")]
    UnknownCriticalExtension { oid: String },
    #[error(
        "certificate is issued by CA \"{ca}\", retired at {}: a retired CA's certificates verify feed history dated up to then, never a connection or a new identity; renew it under a current CA (herald keygen renew --ca-key)",
        crate::clock::format_timestamp(*.retired_at_us)
    )]
    RetiredCa { ca: String, retired_at_us: u64 },
    #[error("certificate for \"{service}\" (serial {serial}) is revoked")]
    Revoked { service: String, serial: String },
    #[error(
        "certificate for \"{service}\" expired at {}, now is {}",
        crate::clock::format_timestamp(*.not_after_us),
        crate::clock::format_timestamp(*.now_us)
    )]
    Expired {
        service: String,
        not_after_us: u64,
        now_us: u64,
    },
    #[error(
        "certificate for \"{service}\" is not valid before {}, now is {}",
        crate::clock::format_timestamp(*.not_before_us),
        crate::clock::format_timestamp(*.now_us)
    )]
    NotYetValid {
        service: String,
        not_before_us: u64,
        now_us: u64,
    },
}

/// Turns certificate DER into an admitted author certificate: the one check
/// of the trust anchor the core needs to start or resume verifying a feed.
/// The identity layer's trust anchor implements it.
pub trait AuthorAdmission {
    /// Admits `cert_der` as the certificate of `service`, or says why not.
    /// Does not check time: see [`AuthorCert::check_time`].
    fn admit_author(&self, service: &str, cert_der: &[u8]) -> Result<AuthorCert, CertError>;

    /// The public keys of the cluster's CAs, any of which may authorize a
    /// recovery transition (see `core::transition`). None by default: an
    /// admission without CA keys refuses every recovery.
    fn ca_keys(&self) -> Vec<[u8; 32]> {
        Vec::new()
    }
}
