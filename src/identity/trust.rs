//! The trust anchor: the cluster CA certificate plus the revocation list, and
//! the admission of author (node) certificates. Pure: no IO after
//! construction, no clock (callers check time against the validity window).

use std::path::Path;

use ed25519_dalek::{Signature, VerifyingKey};
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    OID_SIG_ED25519, OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER, OID_X509_EXT_BASIC_CONSTRAINTS,
    OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME,
    OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};
use x509_parser::x509::{AlgorithmIdentifier, X509Version};

use super::revocation::Revocation;
use super::{AuthorCert, CertError, IdentityError, RevocationList, validate_name};
use crate::core::cert::AuthorAdmission;
use crate::core::limits::CERT_BYTES_MAX;

/// What a certificate admitted by [`TrustAnchor::admit_peer`] may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertRole {
    /// A node certificate (EKU serverAuth + clientAuth): may serve, connect
    /// and author events.
    Node,
    /// A client certificate (EKU clientAuth only): may connect to a node as a
    /// client, may not serve or author events.
    Client,
}

/// One CA certificate of the bundle, checked at load.
#[derive(Debug, Clone)]
pub struct CaCert {
    number: usize,
    der: Vec<u8>,
    subject_raw: Vec<u8>,
    subject: String,
    key: VerifyingKey,
    not_after_us: u64,
    retired_at_us: Option<u64>,
}

impl CaCert {
    /// Its position in the bundle, from 1 (1 is the founding CA).
    pub fn number(&self) -> usize {
        self.number
    }

    /// The certificate DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The subject name, for messages.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The CA's Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// End of the CA certificate's validity, microseconds since the Unix
    /// epoch (informational: CA validity dates are not checked).
    pub fn not_after_us(&self) -> u64 {
        self.not_after_us
    }

    /// When the CA was retired, if it is.
    pub fn retired_at_us(&self) -> Option<u64> {
        self.retired_at_us
    }
}

/// What an admission is for: a retired CA's certificates serve history only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// A feed's certificate (genesis, renewal, proofs): a retired CA's
    /// certificates are admitted with validity ending at the retirement.
    History,
    /// A connection or a node's own identity: only current CAs.
    Connection,
}

/// The CA bundle and revocation list every verification honours.
#[derive(Debug, Clone)]
pub struct TrustAnchor {
    cas: Vec<CaCert>,
    revoked: RevocationList,
}

fn malformed(reason: impl std::fmt::Display) -> CertError {
    CertError::Malformed {
        reason: reason.to_string(),
    }
}

/// Parses certificate DER, rejecting oversize input and trailing bytes.
pub(crate) fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    if der.len() > CERT_BYTES_MAX {
        return Err(CertError::TooLarge {
            size: der.len(),
            max: CERT_BYTES_MAX,
        });
    }
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(malformed)?;
    if !rest.is_empty() {
        return Err(CertError::TrailingBytes { count: rest.len() });
    }
    if cert.tbs_certificate.version != X509Version::V3 {
        return Err(malformed(format!(
            "version {} is not X.509 v3",
            cert.tbs_certificate.version.0 + 1
        )));
    }
    Ok(cert)
}

fn is_ed25519_alg(alg: &AlgorithmIdentifier<'_>) -> bool {
    alg.algorithm == OID_SIG_ED25519 && alg.parameters.is_none()
}

fn describe_key_alg(alg: &AlgorithmIdentifier<'_>) -> String {
    let id = alg.algorithm.to_id_string();
    let name = match id.as_str() {
        "1.2.840.113549.1.1.1" | "1.2.840.113549.1.1.10" => "RSA",
        "1.2.840.10045.2.1" => "EC",
        "1.3.101.113" => "Ed448",
        "1.3.101.110" => "X25519",
        "1.3.101.112" => "Ed25519 with parameters",
        _ => "algorithm",
    };
    format!("{name} ({id})")
}

/// The Ed25519 subject public key of a certificate.
pub(crate) fn subject_ed25519_key(cert: &X509Certificate<'_>) -> Result<[u8; 32], CertError> {
    let spki = &cert.tbs_certificate.subject_pki;
    if !is_ed25519_alg(&spki.algorithm) {
        return Err(CertError::WrongKeyType {
            found: describe_key_alg(&spki.algorithm),
        });
    }
    if spki.subject_public_key.unused_bits != 0 {
        return Err(malformed("public key bit string has unused bits"));
    }
    <[u8; 32]>::try_from(spki.subject_public_key.data.as_ref()).map_err(|_| {
        malformed(format!(
            "Ed25519 public key is {} bytes, expected 32",
            spki.subject_public_key.data.len()
        ))
    })
}

fn verifying_key(bytes: &[u8; 32]) -> Result<VerifyingKey, CertError> {
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| CertError::WrongKeyType {
        found: format!("invalid Ed25519 point {}", hex::encode(bytes)),
    })?;
    if key.is_weak() {
        return Err(CertError::WeakKey {
            key: hex::encode(bytes),
        });
    }
    Ok(key)
}

/// Checks `cert` is signed with Ed25519 by `key` over its exact TBS bytes.
fn verify_signature(cert: &X509Certificate<'_>, key: &VerifyingKey) -> Result<(), CertError> {
    if !is_ed25519_alg(&cert.signature_algorithm) {
        return Err(CertError::UnsupportedSignatureAlgorithm {
            oid: cert.signature_algorithm.algorithm.to_id_string(),
        });
    }
    if cert.tbs_certificate.signature != cert.signature_algorithm {
        return Err(malformed(
            "inner and outer signature algorithms differ (RFC 5280 4.1.1.2)",
        ));
    }
    let sig = &cert.signature_value;
    if sig.unused_bits != 0 {
        return Err(CertError::BadSignature);
    }
    let sig = Signature::from_slice(sig.data.as_ref()).map_err(|_| CertError::BadSignature)?;
    key.verify_strict(cert.tbs_certificate.as_ref(), &sig)
        .map_err(|_| CertError::BadSignature)
}

/// Rejects critical extensions herald does not understand (RFC 5280 4.2).
fn check_critical_extensions(cert: &X509Certificate<'_>) -> Result<(), CertError> {
    let known = [
        OID_X509_EXT_BASIC_CONSTRAINTS,
        OID_X509_EXT_KEY_USAGE,
        OID_X509_EXT_EXTENDED_KEY_USAGE,
        OID_X509_EXT_SUBJECT_ALT_NAME,
        OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
        OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
    ];
    for ext in cert.tbs_certificate.extensions() {
        if ext.critical && !known.contains(&ext.oid) {
            return Err(CertError::UnknownCriticalExtension {
                oid: ext.oid.to_id_string(),
            });
        }
    }
    Ok(())
}

fn time_us(t: &x509_parser::time::ASN1Time) -> u64 {
    let secs = t.timestamp();
    if secs <= 0 {
        0
    } else {
        (secs as u64).saturating_mul(1_000_000)
    }
}

/// Checks one CA certificate of a bundle: a self-signed Ed25519 v3
/// certificate with `basicConstraints CA:TRUE` (and keyCertSign if keyUsage
/// is present). Its validity dates are kept, not checked.
fn check_ca(ca_der: &[u8], number: usize, retired_at_us: Option<u64>) -> Result<CaCert, String> {
    let cert = parse_cert(ca_der).map_err(|e| e.to_string())?;
    let key_bytes = subject_ed25519_key(&cert).map_err(|e| e.to_string())?;
    let key = verifying_key(&key_bytes).map_err(|e| e.to_string())?;
    let tbs = &cert.tbs_certificate;
    let bc = tbs
        .basic_constraints()
        .map_err(|e| format!("bad basicConstraints: {e}"))?;
    if !bc.is_some_and(|b| b.value.ca) {
        return Err("not a CA certificate (basicConstraints CA:TRUE missing)".into());
    }
    if let Some(ku) = tbs.key_usage().map_err(|e| format!("bad keyUsage: {e}"))?
        && !ku.value.key_cert_sign()
    {
        return Err("keyUsage does not allow keyCertSign".into());
    }
    if tbs.issuer.as_raw() != tbs.subject.as_raw() {
        return Err(format!(
            "not self-signed: issuer \"{}\" differs from subject \"{}\"",
            tbs.issuer, tbs.subject
        ));
    }
    verify_signature(&cert, &key).map_err(|e| format!("self-signature: {e}"))?;
    Ok(CaCert {
        number,
        der: ca_der.to_vec(),
        subject_raw: tbs.subject.as_raw().to_vec(),
        subject: tbs.subject.to_string(),
        key,
        not_after_us: time_us(&tbs.validity.not_after),
        retired_at_us,
    })
}

impl TrustAnchor {
    /// Builds a trust anchor from one CA certificate's DER. The CA must be a
    /// self-signed Ed25519 certificate with `basicConstraints CA:TRUE`.
    pub fn from_ca_der(ca_der: &[u8], revoked: RevocationList) -> Result<Self, IdentityError> {
        let ca = check_ca(ca_der, 1, None).map_err(|reason| IdentityError::BadCa {
            origin: "(in-memory DER)".into(),
            reason,
        })?;
        Ok(TrustAnchor {
            cas: vec![ca],
            revoked,
        })
    }

    /// Builds a trust anchor from a CA bundle's text (see
    /// [`super::bundle`]); `origin` names it in errors. Each certificate must
    /// be a CA as [`TrustAnchor::from_ca_der`] requires, and no two may hold
    /// the same key.
    pub fn from_bundle_pem(
        text: &[u8],
        revoked: RevocationList,
        origin: &str,
    ) -> Result<Self, IdentityError> {
        let bad = |reason: String| IdentityError::BadCa {
            origin: origin.to_string(),
            reason,
        };
        let text = std::str::from_utf8(text)
            .map_err(|_| bad("not UTF-8 text; expected PEM CERTIFICATE blocks".into()))?;
        let blocks = super::bundle::parse_bundle(text).map_err(bad)?;
        Self::from_blocks(blocks, revoked, origin)
    }

    fn from_blocks(
        blocks: Vec<super::bundle::BundleBlock>,
        revoked: RevocationList,
        origin: &str,
    ) -> Result<Self, IdentityError> {
        let bad = |reason: String| IdentityError::BadCa {
            origin: origin.to_string(),
            reason,
        };
        let total = blocks.len();
        let mut cas: Vec<CaCert> = Vec::with_capacity(total);
        for (i, block) in blocks.into_iter().enumerate() {
            let number = i + 1;
            let which = |reason: String| {
                if total == 1 {
                    bad(reason)
                } else {
                    bad(format!("certificate {number} of {total}: {reason}"))
                }
            };
            let ca = check_ca(&block.der, number, block.retired_at_us).map_err(which)?;
            if let Some(twin) = cas.iter().find(|c| c.key == ca.key) {
                return Err(which(format!(
                    "holds the same key as certificate {}; each CA of a bundle has its own key",
                    twin.number
                )));
            }
            cas.push(ca);
        }
        Ok(TrustAnchor { cas, revoked })
    }

    /// Loads the CA bundle (PEM, one or more CA certificates, see
    /// [`super::bundle`]) and, if given, the revocation list.
    pub fn load(ca_pem_path: &Path, revoked_path: Option<&Path>) -> Result<Self, IdentityError> {
        let bytes = super::read_file(ca_pem_path)?;
        let malformed = |reason: String| IdentityError::MalformedPem {
            path: ca_pem_path.to_path_buf(),
            reason,
        };
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| malformed("not UTF-8 text; expected PEM CERTIFICATE blocks".into()))?;
        let blocks = super::bundle::parse_bundle(text).map_err(malformed)?;
        let revoked = match revoked_path {
            Some(p) => RevocationList::load(p)?,
            None => RevocationList::empty(),
        };
        Self::from_blocks(blocks, revoked, &ca_pem_path.display().to_string())
    }

    /// The founding CA's certificate DER: the bundle's first certificate.
    pub fn ca_der(&self) -> &[u8] {
        &self.founding().der
    }

    /// The founding CA's Ed25519 public key (the bundle's first certificate,
    /// retired or not). It names the cluster: the cluster id of every
    /// checkpoint is derived from it (docs/FORMAT.md 15.2), so a CA rollover
    /// keeps the cluster id.
    pub fn ca_public_key(&self) -> [u8; 32] {
        self.founding().key.to_bytes()
    }

    fn founding(&self) -> &CaCert {
        // A bundle always holds at least one CA (checked at construction).
        &self.cas[0]
    }

    /// Every CA of the bundle, in file order (number 1 first).
    pub fn cas(&self) -> &[CaCert] {
        &self.cas
    }

    /// The CAs not retired, in file order.
    pub fn current_cas(&self) -> impl Iterator<Item = &CaCert> {
        self.cas.iter().filter(|c| c.retired_at_us.is_none())
    }

    /// Whether `der` is, byte for byte, one of the bundle's CA certificates
    /// (a TLS client may send its root along).
    pub fn is_ca_cert(&self, der: &[u8]) -> bool {
        self.cas.iter().any(|c| c.der == der)
    }

    /// The revocation list this anchor honours.
    pub fn revoked(&self) -> &RevocationList {
        &self.revoked
    }

    /// Admits `cert_der` as the certificate of event author / node `service`
    /// in a feed's history (a genesis, a renewal, a proof).
    ///
    /// Checks, in order: size and DER well-formedness (no trailing bytes,
    /// X.509 v3); a CA of the bundle whose subject equals the issuer name
    /// and whose Ed25519 signature over the TBS bytes verifies (tried in
    /// bundle order); the subject key is Ed25519 and not weak;
    /// no unknown critical extension; not a CA; EKU has serverAuth and
    /// clientAuth (a node certificate) and keyUsage, if present, allows
    /// digitalSignature; a DNS SAN equals `service`; not revoked. A
    /// certificate of a **retired** CA is admitted with its validity ending
    /// no later than the retirement time. Does not check time: see
    /// [`AuthorCert::check_time`].
    ///
    /// A certificate revoked with a cut-off is admitted, with
    /// [`AuthorCert::revoked_from`] set: the feed verifier refuses its
    /// events from the cut-off on. One revoked outright is refused.
    pub fn admit_author(&self, service: &str, cert_der: &[u8]) -> Result<AuthorCert, CertError> {
        self.admit(cert_der, Some(service), false, Purpose::History)
            .map(|(cert, _)| cert)
    }

    /// Admits `cert_der` as node `service`'s certificate for a connection or
    /// the node's own identity: the checks of [`TrustAnchor::admit_author`],
    /// but a certificate of a retired CA is refused
    /// ([`CertError::RetiredCa`]), and so is any revocation, with a cut-off
    /// or without.
    pub fn admit_node(&self, service: &str, cert_der: &[u8]) -> Result<AuthorCert, CertError> {
        self.admit(cert_der, Some(service), false, Purpose::Connection)
            .map(|(cert, _)| cert)
    }

    /// Admits `cert_der` as the certificate of a TLS peer whose name is not
    /// known in advance (the server side of a handshake): the name is the
    /// certificate's own DNS SAN, which must be the only one and a valid
    /// service name. Node certificates (EKU serverAuth + clientAuth) are
    /// admitted as [`CertRole::Node`], client certificates (EKU clientAuth
    /// without serverAuth) as [`CertRole::Client`]. Every other check is the
    /// one of [`TrustAnchor::admit_node`], in the same order: a retired CA's
    /// certificate is refused. Does not check time: see
    /// [`AuthorCert::check_time`].
    pub fn admit_peer(&self, cert_der: &[u8]) -> Result<(AuthorCert, CertRole), CertError> {
        self.admit(cert_der, None, true, Purpose::Connection)
    }

    /// [`TrustAnchor::admit_peer`] for history: a certificate named by
    /// itself (a witness's, checking its cosignatures in a proof), of any
    /// CA of the bundle, a retired one's with its validity ending at the
    /// retirement.
    pub fn admit_peer_history(&self, cert_der: &[u8]) -> Result<(AuthorCert, CertRole), CertError> {
        self.admit(cert_der, None, true, Purpose::History)
    }

    /// The CA of the bundle that signed `cert`: the first, in bundle order,
    /// whose subject is the certificate's issuer and whose key verifies its
    /// signature. For a connection, a retired CA's signature is refused.
    fn issuer_of(
        &self,
        cert: &X509Certificate<'_>,
        purpose: Purpose,
    ) -> Result<&CaCert, CertError> {
        let issuer = cert.tbs_certificate.issuer.as_raw();
        let mut candidates = self
            .cas
            .iter()
            .filter(|ca| ca.subject_raw.as_slice() == issuer)
            .peekable();
        if candidates.peek().is_none() {
            return Err(CertError::NotIssuedByCa {
                issuer: cert.tbs_certificate.issuer.to_string(),
                ca: self
                    .cas
                    .iter()
                    .map(|c| c.subject.as_str())
                    .collect::<Vec<_>>()
                    .join("\", \""),
            });
        }
        let mut refusal = CertError::BadSignature;
        for ca in candidates {
            match verify_signature(cert, &ca.key) {
                Ok(()) => {
                    return match (purpose, ca.retired_at_us) {
                        (Purpose::Connection, Some(retired_at_us)) => Err(CertError::RetiredCa {
                            ca: ca.subject.clone(),
                            retired_at_us,
                        }),
                        _ => Ok(ca),
                    };
                }
                Err(e) => refusal = e,
            }
        }
        Err(refusal)
    }

    /// The shared admission. `service: None` takes the name from the single
    /// DNS SAN; `allow_client` admits clientAuth-only certificates.
    fn admit(
        &self,
        cert_der: &[u8],
        service: Option<&str>,
        allow_client: bool,
        purpose: Purpose,
    ) -> Result<(AuthorCert, CertRole), CertError> {
        let cert = parse_cert(cert_der)?;
        let tbs = &cert.tbs_certificate;
        let issuer = self.issuer_of(&cert, purpose)?;
        // After the specific checks above, so their errors stay specific.
        check_cert_frame(cert_der).map_err(malformed)?;
        let public_key = subject_ed25519_key(&cert)?;
        verifying_key(&public_key)?;
        check_critical_extensions(&cert)?;

        let bc = tbs
            .basic_constraints()
            .map_err(|e| malformed(format!("basicConstraints: {e}")))?;
        if bc.is_some_and(|b| b.value.ca) {
            return Err(CertError::IsCa);
        }
        let eku = tbs
            .extended_key_usage()
            .map_err(|e| malformed(format!("extendedKeyUsage: {e}")))?;
        let (server_auth, client_auth) = eku.as_ref().map_or((false, false), |e| {
            (e.value.server_auth, e.value.client_auth)
        });
        let role = if server_auth && client_auth {
            CertRole::Node
        } else if allow_client && client_auth {
            CertRole::Client
        } else {
            let mut has = Vec::new();
            if server_auth {
                has.push("serverAuth");
            }
            if client_auth {
                has.push("clientAuth");
            }
            let has = if eku.is_none() {
                "no extendedKeyUsage".to_string()
            } else if has.is_empty() {
                "extendedKeyUsage has neither".to_string()
            } else {
                format!("extendedKeyUsage has only {}", has.join(", "))
            };
            return Err(if allow_client {
                CertError::NotPeerCertificate {
                    reason: format!(
                        "{has}; a node needs serverAuth and clientAuth, a client needs clientAuth"
                    ),
                }
            } else {
                CertError::NotNodeCertificate {
                    reason: format!("{has}; a node needs serverAuth and clientAuth"),
                }
            });
        };
        let ku = tbs
            .key_usage()
            .map_err(|e| malformed(format!("keyUsage: {e}")))?;
        if let Some(ku) = ku
            && !ku.value.digital_signature()
        {
            let reason = "keyUsage does not allow digitalSignature".to_string();
            return Err(if allow_client {
                CertError::NotPeerCertificate { reason }
            } else {
                CertError::NotNodeCertificate { reason }
            });
        }

        let san = tbs
            .subject_alternative_name()
            .map_err(|e| malformed(format!("subjectAltName: {e}")))?;
        let dns_names: Vec<&str> = san
            .map(|s| {
                s.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(*d),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let describe = |names: &[&str]| {
            if names.is_empty() {
                "no DNS name".to_string()
            } else {
                format!("DNS names {}", names.join(", "))
            }
        };
        let service = match service {
            Some(service) => {
                if !dns_names.contains(&service) {
                    return Err(CertError::NameMismatch {
                        expected: service.to_string(),
                        found: describe(&dns_names),
                    });
                }
                service
            }
            None => match dns_names.as_slice() {
                [one] if validate_name("service", one).is_ok() => *one,
                _ => {
                    return Err(CertError::NameMismatch {
                        expected: "exactly one DNS name that is a valid service name".into(),
                        found: describe(&dns_names),
                    });
                }
            },
        };

        let serial = tbs.raw_serial().to_vec();
        // A revocation with a cut-off still admits the certificate for its
        // feed's history before the cut-off (the feed verifier refuses what
        // follows), but never for a connection.
        let revoked_from = match self.revoked.revocation(&public_key, &serial) {
            Revocation::None => None,
            Revocation::From(cutoff) if purpose == Purpose::History => Some(cutoff),
            Revocation::From(_) | Revocation::Outright => {
                return Err(CertError::Revoked {
                    service: service.to_string(),
                    serial: hex::encode(&serial),
                });
            }
        };
        let not_after_us = time_us(&tbs.validity.not_after);
        let admitted = AuthorCert {
            service: service.to_string(),
            public_key,
            not_before_us: time_us(&tbs.validity.not_before),
            // A retired CA vouches for nothing after its retirement.
            not_after_us: issuer
                .retired_at_us
                .map_or(not_after_us, |retired| retired.min(not_after_us)),
            serial,
            der: cert_der.to_vec(),
            revoked_from,
        };
        Ok((admitted, role))
    }

    /// True if the revocation list names the certificate's key or serial.
    pub fn is_revoked(&self, cert: &AuthorCert) -> bool {
        self.revoked.is_revoked(&cert.public_key, &cert.serial)
    }
}

/// The core verifies feeds through this; the checks are
/// [`TrustAnchor::admit_author`]'s.
impl AuthorAdmission for TrustAnchor {
    fn admit_author(&self, service: &str, cert_der: &[u8]) -> Result<AuthorCert, CertError> {
        TrustAnchor::admit_author(self, service, cert_der)
    }

    fn ca_keys(&self) -> Vec<[u8; 32]> {
        self.cas().iter().map(CaCert::public_key).collect()
    }
}

/// The Ed25519 `AlgorithmIdentifier` (RFC 8410) in DER.
const ED25519_ALGORITHM_DER: [u8; 7] = [0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER head of the certificate's signature: a BIT STRING of 65 bytes, the
/// first (unused bits) zero, then the 64-byte Ed25519 signature.
const ED25519_SIGNATURE_HEAD: [u8; 3] = [0x03, 0x41, 0x00];

/// Checks the bytes of a certificate that the CA's signature does not cover
/// (everything around the signed TBS) against their one DER form. The X.509
/// parser is lenient there (it takes a primitive-tagged SEQUENCE, 0x10, for
/// one); herald admits only certificates in the one form, so bytes that
/// carry a certificate (a genesis event, a proof) cannot be reshaped.
pub(crate) fn check_cert_frame(der: &[u8]) -> Result<(), String> {
    let (body, rest) = der_sequence(der).ok_or("the certificate is not one DER SEQUENCE")?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the certificate", rest.len()));
    }
    let (_, after_tbs) = der_sequence(body).ok_or("the to-be-signed part is not a DER SEQUENCE")?;
    let signature = after_tbs
        .strip_prefix(&ED25519_ALGORITHM_DER[..])
        .ok_or("the signature algorithm is not Ed25519 in its DER form")?;
    match signature.strip_prefix(&ED25519_SIGNATURE_HEAD[..]) {
        Some(sig) if sig.len() == 64 => Ok(()),
        _ => Err("the signature is not a 64-byte Ed25519 signature in its DER form".into()),
    }
}

/// Splits a DER SEQUENCE (tag 0x30, minimal definite length of at most two
/// bytes) into its contents and what follows it.
fn der_sequence(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => match rest.split_first()? {
            (&l, rest) if l >= 0x80 => (usize::from(l), rest),
            _ => return None,
        },
        0x82 => {
            let l = usize::from(*rest.first()?) << 8 | usize::from(*rest.get(1)?);
            if l < 0x100 {
                return None;
            }
            (l, &rest[2..])
        }
        _ => return None,
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::cert::Cutoff;
    use crate::identity::{
        CertError, CertRole, NodeIdentity, create_ca, issue_client, issue_node,
        issue_node_with_validity, read_cert_pem, revoke, revoke_with_status,
    };
    use std::path::PathBuf;

    struct Cluster {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
    }

    fn cluster() -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        create_ca(&dir, 30, false).unwrap();
        issue_node(&dir, "a", 10, false).unwrap();
        Cluster { _tmp: tmp, dir }
    }

    fn anchor(dir: &Path) -> TrustAnchor {
        TrustAnchor::load(&dir.join("ca.crt"), None).unwrap()
    }

    fn cert(dir: &Path, name: &str) -> Vec<u8> {
        read_cert_pem(&dir.join(format!("{name}.crt"))).unwrap()
    }

    #[test]
    fn a_certificate_outside_its_one_der_form_is_refused() {
        let c = cluster();
        let trust = anchor(&c.dir);
        let der = cert(&c.dir, "a");
        // The X.509 parser takes a primitive-tagged SEQUENCE (0x10) for the
        // outer frame, which the CA's signature does not cover.
        let mut reshaped = der.clone();
        reshaped[0] = 0x10;
        let err = trust.admit_author("a", &reshaped).unwrap_err();
        assert!(matches!(err, CertError::Malformed { .. }), "{err}");
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(trust.admit_author("a", &trailing).is_err());
        assert!(trust.admit_author("a", &der).is_ok());
    }

    #[test]
    fn admits_a_node_certificate() {
        let c = cluster();
        let trust = anchor(&c.dir);
        let der = cert(&c.dir, "a");
        let admitted = trust.admit_author("a", &der).unwrap();
        assert_eq!(admitted.service, "a");
        assert_eq!(admitted.der, der);
        assert_eq!(admitted.serial.len(), 16);
        assert!(admitted.serial[0] & 0x80 == 0);
        let key = crate::identity::pem::read_private_key(&c.dir.join("a.key")).unwrap();
        assert_eq!(admitted.public_key, key.verifying_key().to_bytes());
        let now = crate::clock::now_us();
        assert!(admitted.not_before_us <= now && now <= admitted.not_after_us);
        let ten_days = 10 * 86_400 * 1_000_000;
        assert!(admitted.not_after_us.abs_diff(now + ten_days) < 5 * 1_000_000 * 60);
        assert!(!trust.is_revoked(&admitted));
        admitted.check_time(now).unwrap();
        // The trust anchor is the CA certificate itself.
        assert_eq!(trust.ca_der(), cert(&c.dir, "ca").as_slice());
        let from_der = TrustAnchor::from_ca_der(trust.ca_der(), RevocationList::empty()).unwrap();
        assert!(from_der.admit_author("a", &der).is_ok());
    }

    #[test]
    fn rejects_a_certificate_from_another_ca() {
        let c = cluster();
        let other = cluster();
        let trust = anchor(&c.dir);
        let e = trust.admit_author("a", &cert(&other.dir, "a")).unwrap_err();
        assert!(matches!(e, CertError::NotIssuedByCa { .. }), "{e}");
        // Same issuer name, different key: the signature check catches it.
        let other_ca = cert(&other.dir, "ca");
        let forged_issuer = TrustAnchor::from_ca_der(&other_ca, RevocationList::empty()).unwrap();
        let mut spoof = forged_issuer.clone();
        spoof.cas[0].subject_raw = trust.cas[0].subject_raw.clone();
        let e = spoof.admit_author("a", &cert(&c.dir, "a")).unwrap_err();
        assert_eq!(e, CertError::BadSignature);
    }

    #[test]
    fn rejects_client_certificate_as_author() {
        let c = cluster();
        issue_client(&c.dir, "cli", 10, false).unwrap();
        let e = anchor(&c.dir)
            .admit_author("cli", &cert(&c.dir, "cli"))
            .unwrap_err();
        assert!(matches!(e, CertError::NotNodeCertificate { .. }), "{e}");
        assert!(e.to_string().contains("only clientAuth"), "{e}");
    }

    #[test]
    fn admit_peer_takes_the_name_and_role_from_the_certificate() {
        let c = cluster();
        issue_client(&c.dir, "cli", 10, false).unwrap();
        let trust = anchor(&c.dir);
        let (node, role) = trust.admit_peer(&cert(&c.dir, "a")).unwrap();
        assert_eq!((node.service.as_str(), role), ("a", CertRole::Node));
        assert_eq!(node, trust.admit_author("a", &cert(&c.dir, "a")).unwrap());
        let (client, role) = trust.admit_peer(&cert(&c.dir, "cli")).unwrap();
        assert_eq!((client.service.as_str(), role), ("cli", CertRole::Client));
    }

    #[test]
    fn admit_peer_refuses_what_admit_author_refuses() {
        let c = cluster();
        let other = cluster();
        let trust = anchor(&c.dir);
        let e = trust.admit_peer(&cert(&other.dir, "a")).unwrap_err();
        assert!(matches!(e, CertError::NotIssuedByCa { .. }), "{e}");
        assert_eq!(
            trust.admit_peer(&cert(&c.dir, "ca")).unwrap_err(),
            CertError::IsCa
        );
        let path = revoke(&c.dir, "a").unwrap();
        let revoked = TrustAnchor::load(&c.dir.join("ca.crt"), Some(&path)).unwrap();
        let e = revoked.admit_peer(&cert(&c.dir, "a")).unwrap_err();
        assert!(matches!(e, CertError::Revoked { .. }), "{e}");
        let mut der = cert(&c.dir, "a");
        der.push(0);
        assert_eq!(
            trust.admit_peer(&der).unwrap_err(),
            CertError::TrailingBytes { count: 1 }
        );
    }

    #[test]
    fn admit_peer_needs_client_auth_and_one_service_name() {
        let c = cluster();
        let ca_key = crate::identity::pem::read_private_key(&c.dir.join("ca.key")).unwrap();
        let ca_pkcs8 = crate::identity::pem::pkcs8_v1_der(&ca_key.to_bytes());
        let ca_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &ca_pkcs8.as_slice().into(),
            &rcgen::PKCS_ED25519,
        )
        .unwrap();
        let ca_der = cert(&c.dir, "ca");
        let issuer = rcgen::Issuer::from_ca_cert_der(&ca_der.as_slice().into(), &ca_pair).unwrap();
        let leaf = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let trust = anchor(&c.dir);

        // serverAuth only: neither a node nor a client.
        let mut params = rcgen::CertificateParams::new(vec!["s".to_string()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let der = params.signed_by(&leaf, &issuer).unwrap().der().to_vec();
        let e = trust.admit_peer(&der).unwrap_err();
        assert!(matches!(e, CertError::NotPeerCertificate { .. }), "{e}");
        assert!(e.to_string().contains("only serverAuth"), "{e}");
        // admit_author keeps its own error for the same certificate.
        let e = trust.admit_author("s", &der).unwrap_err();
        assert!(matches!(e, CertError::NotNodeCertificate { .. }), "{e}");

        // Two DNS names, or one that is not a service name: ambiguous.
        for names in [vec!["a", "b"], vec!["Not_A_Name"]] {
            let names: Vec<String> = names.into_iter().map(String::from).collect();
            let mut params = rcgen::CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let der = params.signed_by(&leaf, &issuer).unwrap().der().to_vec();
            let e = trust.admit_peer(&der).unwrap_err();
            assert!(matches!(e, CertError::NameMismatch { .. }), "{e}");
        }
    }

    #[test]
    fn rejects_the_ca_itself() {
        let c = cluster();
        let ca = cert(&c.dir, "ca");
        let e = anchor(&c.dir).admit_author("a", &ca).unwrap_err();
        assert_eq!(e, CertError::IsCa);
    }

    #[test]
    fn rejects_name_mismatch() {
        let c = cluster();
        let e = anchor(&c.dir)
            .admit_author("b", &cert(&c.dir, "a"))
            .unwrap_err();
        assert_eq!(
            e,
            CertError::NameMismatch {
                expected: "b".into(),
                found: "DNS names a".into()
            }
        );
        assert!(e.to_string().contains("expected service \"b\""), "{e}");
    }

    #[test]
    fn rejects_revoked_by_key_and_by_serial() {
        let c = cluster();
        let der = cert(&c.dir, "a");
        let admitted = anchor(&c.dir).admit_author("a", &der).unwrap();
        let ca_der = cert(&c.dir, "ca");

        let by_key = RevocationList::parse(&format!(
            "[[revoked]]\nname = \"a\"\npublic_key = \"{}\"\n",
            hex::encode(admitted.public_key)
        ))
        .unwrap();
        let trust = TrustAnchor::from_ca_der(&ca_der, by_key).unwrap();
        let e = trust.admit_author("a", &der).unwrap_err();
        assert!(matches!(e, CertError::Revoked { .. }), "{e}");
        assert!(trust.is_revoked(&admitted));

        let by_serial = RevocationList::parse(&format!(
            "[[revoked]]\nname = \"a\"\nserial = \"{}\"\n",
            admitted.serial_hex().to_uppercase()
        ))
        .unwrap();
        let trust = TrustAnchor::from_ca_der(&ca_der, by_serial).unwrap();
        let e = trust.admit_author("a", &der).unwrap_err();
        assert!(matches!(e, CertError::Revoked { .. }), "{e}");

        // Someone else's serial and key do not revoke `a`.
        let other = RevocationList::parse(&format!(
            "[[revoked]]\nname = \"x\"\nserial = \"01\"\npublic_key = \"{}\"\n",
            hex::encode([5u8; 32])
        ))
        .unwrap();
        let trust = TrustAnchor::from_ca_der(&ca_der, other).unwrap();
        assert!(trust.admit_author("a", &der).is_ok());
    }

    #[test]
    fn revoke_writes_the_list_idempotently() {
        let c = cluster();
        let path = revoke(&c.dir, "a").unwrap();
        let first = std::fs::read_to_string(&path).unwrap();
        revoke(&c.dir, "a").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
        let list = RevocationList::load(&path).unwrap();
        assert_eq!(list.len(), 1);
        let trust = TrustAnchor::load(&c.dir.join("ca.crt"), Some(&path)).unwrap();
        let e = trust.admit_author("a", &cert(&c.dir, "a")).unwrap_err();
        assert!(matches!(e, CertError::Revoked { .. }), "{e}");
    }

    #[test]
    fn a_cut_off_admits_for_history_but_never_for_a_connection() {
        let c = cluster();
        let cutoff = Cutoff {
            from_seq: Some(12),
            from_us: None,
        };
        let path = revoke_with_status(&c.dir, "a", Some(cutoff)).unwrap().0;
        let trust = TrustAnchor::load(&c.dir.join("ca.crt"), Some(&path)).unwrap();
        let der = cert(&c.dir, "a");
        let admitted = trust.admit_author("a", &der).unwrap();
        assert_eq!(admitted.revoked_from, Some(cutoff));
        let e = trust.admit_node("a", &der).unwrap_err();
        assert!(matches!(e, CertError::Revoked { .. }), "{e}");
        assert!(matches!(
            trust.admit_peer(&der).unwrap_err(),
            CertError::Revoked { .. }
        ));
        // A later, stricter cut-off is added; the same one again changes
        // nothing; revoking outright then wins over both.
        assert!(!revoke_with_status(&c.dir, "a", Some(cutoff)).unwrap().1);
        let earlier = Cutoff {
            from_seq: Some(8),
            from_us: None,
        };
        assert!(revoke_with_status(&c.dir, "a", Some(earlier)).unwrap().1);
        let trust = TrustAnchor::load(&c.dir.join("ca.crt"), Some(&path)).unwrap();
        assert_eq!(
            trust.admit_author("a", &der).unwrap().revoked_from,
            Some(earlier)
        );
        revoke(&c.dir, "a").unwrap();
        let trust = TrustAnchor::load(&c.dir.join("ca.crt"), Some(&path)).unwrap();
        assert!(matches!(
            trust.admit_author("a", &der).unwrap_err(),
            CertError::Revoked { .. }
        ));
    }

    #[test]
    fn rejects_tampered_certificates() {
        let c = cluster();
        let trust = anchor(&c.dir);
        let der = cert(&c.dir, "a");
        let parsed = parse_cert(&der).unwrap();
        let serial = parsed.tbs_certificate.raw_serial();
        let serial_end = serial.as_ptr() as usize - der.as_ptr() as usize + serial.len();
        drop(parsed);

        // A flipped bit in the signed part (the serial's last byte).
        let mut t = der.clone();
        t[serial_end - 1] ^= 0x01;
        assert_eq!(
            trust.admit_author("a", &t).unwrap_err(),
            CertError::BadSignature
        );

        // A flipped bit in the signature itself.
        let mut t = der.clone();
        let n = t.len();
        t[n - 1] ^= 0x01;
        assert_eq!(
            trust.admit_author("a", &t).unwrap_err(),
            CertError::BadSignature
        );

        // Trailing bytes, truncation, oversize.
        let mut t = der.clone();
        t.push(0);
        assert_eq!(
            trust.admit_author("a", &t).unwrap_err(),
            CertError::TrailingBytes { count: 1 }
        );
        let e = trust.admit_author("a", &der[..der.len() - 1]).unwrap_err();
        assert!(matches!(e, CertError::Malformed { .. }), "{e}");
        let big = vec![0u8; CERT_BYTES_MAX + 1];
        assert!(matches!(
            trust.admit_author("a", &big).unwrap_err(),
            CertError::TooLarge { .. }
        ));
    }

    #[test]
    fn rejects_non_ed25519_certificates() {
        let c = cluster();
        let trust = anchor(&c.dir);
        // A P-256 node certificate with the right issuer name, signed by a P-256 key.
        let ca_der = cert(&c.dir, "ca");
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(&ca_der.as_slice().into(), &p256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a".to_string()]).unwrap();
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let leaf = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let bad = params.signed_by(&leaf, &issuer).unwrap();
        let e = trust.admit_author("a", bad.der()).unwrap_err();
        assert!(
            matches!(e, CertError::UnsupportedSignatureAlgorithm { .. }),
            "{e}"
        );

        // A P-256 CA is not a usable trust anchor.
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let p256_ca = ca_params.self_signed(&p256).unwrap();
        let e = TrustAnchor::from_ca_der(p256_ca.der(), RevocationList::empty()).unwrap_err();
        assert!(e.to_string().contains("wrong type"), "{e}");
        // A node certificate is not a CA.
        let e = TrustAnchor::from_ca_der(&cert(&c.dir, "a"), RevocationList::empty()).unwrap_err();
        assert!(e.to_string().contains("not a CA"), "{e}");
    }

    #[test]
    fn node_identity_checks_key_and_time() {
        let c = cluster();
        let trust = anchor(&c.dir);
        let now = crate::clock::now_us();
        let id = NodeIdentity::load("a", &c.dir.join("a.key"), &c.dir.join("a.crt"), &trust, now)
            .unwrap();
        assert_eq!(
            id.cert.public_key,
            id.signing_key.verifying_key().to_bytes()
        );
        assert!(!format!("{id:?}").contains(&hex::encode(id.signing_key.to_bytes())));

        // Key of another node.
        issue_node(&c.dir, "b", 10, false).unwrap();
        let e = NodeIdentity::load("a", &c.dir.join("b.key"), &c.dir.join("a.crt"), &trust, now)
            .unwrap_err();
        assert!(
            matches!(e, crate::identity::IdentityError::KeyMismatch { .. }),
            "{e}"
        );

        // Expired and not yet valid.
        let day = 86_400 * 1_000_000;
        issue_node_with_validity(&c.dir, "old", now - 3 * day, now - day, false).unwrap();
        let e = NodeIdentity::load(
            "old",
            &c.dir.join("old.key"),
            &c.dir.join("old.crt"),
            &trust,
            now,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                crate::identity::IdentityError::Certificate {
                    source: CertError::Expired { .. },
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("old.crt"), "{e}");
        issue_node_with_validity(&c.dir, "new", now + day, now + 3 * day, false).unwrap();
        let e = NodeIdentity::load(
            "new",
            &c.dir.join("new.key"),
            &c.dir.join("new.crt"),
            &trust,
            now,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                crate::identity::IdentityError::Certificate {
                    source: CertError::NotYetValid { .. },
                    ..
                }
            ),
            "{e}"
        );
    }

    // --- CA bundles and rollover ---

    use crate::identity::{issue_node_with_ca, renew_node_with_ca, retire_ca, rollover_ca};

    /// A cluster whose bundle holds CA 1 and CA 2 (`ca-2.key`), with node
    /// `a` under CA 1 and node `b` under CA 2.
    fn rolled() -> Cluster {
        let c = cluster();
        let rolled = rollover_ca(&c.dir, 30).unwrap();
        assert_eq!(rolled.number, 2);
        issue_node_with_ca(&c.dir, "b", 10, false, Some(&rolled.key)).unwrap();
        c
    }

    #[test]
    fn a_bundle_admits_the_certificates_of_each_of_its_cas() {
        let c = cluster();
        let before = anchor(&c.dir);
        let rolled = rollover_ca(&c.dir, 30).unwrap();
        issue_node_with_ca(&c.dir, "b", 10, false, Some(&rolled.key)).unwrap();
        let trust = anchor(&c.dir);
        assert_eq!(trust.cas().len(), 2);
        assert_eq!(trust.current_cas().count(), 2);
        // The founding CA still names the cluster.
        assert_eq!(trust.ca_public_key(), before.ca_public_key());
        assert_eq!(trust.ca_der(), before.ca_der());
        assert!(trust.is_ca_cert(&cert(&c.dir, "ca-2")));
        assert!(!trust.is_ca_cert(&cert(&c.dir, "a")));

        let a = trust.admit_author("a", &cert(&c.dir, "a")).unwrap();
        let b = trust.admit_author("b", &cert(&c.dir, "b")).unwrap();
        assert_eq!(trust.admit_peer(&cert(&c.dir, "b")).unwrap().0, b);
        assert_eq!(trust.admit_node("a", &cert(&c.dir, "a")).unwrap(), a);
        // The old anchor (CA 1 alone) does not know CA 2.
        let e = before.admit_author("b", &cert(&c.dir, "b")).unwrap_err();
        assert!(matches!(e, CertError::NotIssuedByCa { .. }), "{e}");
        // A certificate of a CA outside the bundle names every CA it holds.
        let other = cluster();
        let e = trust.admit_author("a", &cert(&other.dir, "a")).unwrap_err();
        let CertError::NotIssuedByCa { ca, .. } = &e else {
            panic!("{e}")
        };
        assert!(ca.contains("\", \""), "names both CAs: {e}");
    }

    #[test]
    fn a_retired_ca_verifies_history_up_to_its_retirement_and_no_connection() {
        let c = rolled();
        let a_der = cert(&c.dir, "a");
        let before = anchor(&c.dir).admit_author("a", &a_der).unwrap();
        let retired = retire_ca(&c.dir, 1).unwrap();
        let trust = anchor(&c.dir);
        assert_eq!(trust.cas()[0].retired_at_us(), Some(retired.retired_at_us));
        assert_eq!(trust.current_cas().count(), 1);
        // History: admitted, its window ending at the retirement.
        let history = trust.admit_author("a", &a_der).unwrap();
        assert_eq!(history.not_before_us, before.not_before_us);
        assert_eq!(history.not_after_us, retired.retired_at_us);
        assert!(before.not_after_us > retired.retired_at_us);
        history.check_time(retired.retired_at_us).unwrap();
        assert!(matches!(
            history.check_time(retired.retired_at_us + 1),
            Err(CertError::Expired { .. })
        ));
        assert_eq!(trust.admit_peer_history(&a_der).unwrap().0, history);
        // Connections and identities: refused, naming the CA and the time.
        for e in [
            trust.admit_peer(&a_der).unwrap_err(),
            trust.admit_node("a", &a_der).unwrap_err(),
        ] {
            assert!(matches!(e, CertError::RetiredCa { .. }), "{e}");
            assert!(e.to_string().contains("retired at"), "{e}");
        }
        let e = NodeIdentity::load(
            "a",
            &c.dir.join("a.key"),
            &c.dir.join("a.crt"),
            &trust,
            crate::clock::now_us(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("renew it under a current CA"), "{e}");
        // CA 2's certificates are untouched.
        assert!(trust.admit_peer(&cert(&c.dir, "b")).is_ok());
        // The same key renewed under CA 2 connects again, and keeps its
        // history window's start.
        renew_node_with_ca(&c.dir, "a", 10, Some(&c.dir.join("ca-2.key"))).unwrap();
        let renewed = trust.admit_peer(&cert(&c.dir, "a")).unwrap().0;
        assert_eq!(renewed.public_key, before.public_key);
        assert_eq!(renewed.not_before_us, before.not_before_us);
    }

    #[test]
    fn keygen_refuses_a_retired_or_unknown_ca_and_the_last_current_one() {
        let c = rolled();
        // The last current CA cannot be retired; nor twice; nor CA 3.
        retire_ca(&c.dir, 1).unwrap();
        let bundle = std::fs::read(c.dir.join("ca.crt")).unwrap();
        let e = retire_ca(&c.dir, 2).unwrap_err().to_string();
        assert!(e.contains("only current CA"), "{e}");
        let e = retire_ca(&c.dir, 1).unwrap_err().to_string();
        assert!(e.contains("already retired"), "{e}");
        let e = retire_ca(&c.dir, 3).unwrap_err().to_string();
        assert!(e.contains("CA 1 to 2"), "{e}");
        assert_eq!(std::fs::read(c.dir.join("ca.crt")).unwrap(), bundle);
        // A retired CA signs nothing new (ca.key is CA 1's key).
        let e = issue_node(&c.dir, "n", 10, false).unwrap_err().to_string();
        assert!(e.contains("retired") && e.contains("--ca-key"), "{e}");
        assert!(!c.dir.join("n.crt").exists());
        // A key that is no CA's of the bundle.
        let other = cluster();
        let e = issue_node_with_ca(&c.dir, "n", 10, false, Some(&other.dir.join("ca.key")))
            .unwrap_err();
        assert!(matches!(e, IdentityError::NoSuchCa { .. }), "{e}");
        // A rollover never overwrites a key: ca-3.key in the way.
        std::fs::write(c.dir.join("ca-3.key"), "x").unwrap();
        let e = rollover_ca(&c.dir, 30).unwrap_err();
        assert!(matches!(e, IdentityError::WouldOverwrite { .. }), "{e}");
        assert_eq!(std::fs::read(c.dir.join("ca.crt")).unwrap(), bundle);
        std::fs::remove_file(c.dir.join("ca-3.key")).unwrap();
        // Up to the limit, then refused.
        for n in 3..=crate::identity::bundle::CA_BUNDLE_CERTS_MAX {
            assert_eq!(rollover_ca(&c.dir, 30).unwrap().number, n);
        }
        let e = rollover_ca(&c.dir, 30).unwrap_err().to_string();
        assert!(e.contains("the limit"), "{e}");
        assert_eq!(anchor(&c.dir).cas().len(), 8);
    }

    #[test]
    fn a_bundle_refuses_bad_members_naming_which() {
        let c = rolled();
        let ca1 = std::fs::read_to_string(c.dir.join("ca.crt")).unwrap();
        let node = std::fs::read_to_string(c.dir.join("a.crt")).unwrap();
        let path = c.dir.join("bad.crt");
        // A node certificate among the CAs.
        std::fs::write(&path, format!("{ca1}{node}")).unwrap();
        let e = TrustAnchor::load(&path, None).unwrap_err().to_string();
        assert!(
            e.contains("certificate 3 of 3") && e.contains("not a CA"),
            "{e}"
        );
        // The same CA twice.
        let one = std::fs::read_to_string(c.dir.join("ca-2.crt")).unwrap();
        std::fs::write(&path, format!("{ca1}{one}")).unwrap();
        let e = TrustAnchor::load(&path, None).unwrap_err().to_string();
        assert!(e.contains("same key as certificate 2"), "{e}");
        // More than the limit.
        let many: String = (0..=crate::identity::bundle::CA_BUNDLE_CERTS_MAX)
            .map(|_| one.clone())
            .collect();
        std::fs::write(&path, many).unwrap();
        let e = TrustAnchor::load(&path, None).unwrap_err().to_string();
        assert!(e.contains("more than 8 certificates"), "{e}");
        // A malformed retirement line.
        std::fs::write(&path, format!("herald-ca-retired: soon\n{one}")).unwrap();
        let e = TrustAnchor::load(&path, None).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn same_subject_cas_are_told_apart_by_signature() {
        // Two CAs with one subject name: the certificate's signature picks
        // its CA, for history and connections alike.
        let c = cluster();
        let kp1 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let kp2 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let ca_params = || {
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let mut dn = rcgen::DistinguishedName::new();
            dn.push(rcgen::DnType::CommonName, "same name");
            p.distinguished_name = dn;
            p
        };
        let ca1 = ca_params().self_signed(&kp1).unwrap();
        let ca2 = ca_params().self_signed(&kp2).unwrap();
        let leaf = |ca: &rcgen::Certificate, kp: &rcgen::KeyPair| {
            let issuer = rcgen::Issuer::from_ca_cert_der(ca.der(), kp).unwrap();
            let mut p = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
            p.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
            p.signed_by(&k, &issuer).unwrap().der().to_vec()
        };
        let (x1, x2) = (leaf(&ca1, &kp1), leaf(&ca2, &kp2));
        let path = c.dir.join("same.crt");
        std::fs::write(
            &path,
            format!(
                "herald-ca-retired: 2020-01-01T00:00:00Z\n{}{}",
                ca1.pem(),
                ca2.pem()
            ),
        )
        .unwrap();
        let trust = TrustAnchor::load(&path, None).unwrap();
        assert!(trust.admit_peer(&x2).is_ok());
        let e = trust.admit_peer(&x1).unwrap_err();
        assert!(matches!(e, CertError::RetiredCa { .. }), "{e}");
        let h = trust.admit_author("x", &x1).unwrap();
        assert_eq!(
            h.not_after_us,
            crate::identity::bundle::parse_rfc3339_us("2020-01-01T00:00:00Z").unwrap()
        );
        // Signed by neither: a bad signature, not "unknown issuer".
        let foreign = ca_params().self_signed(&kp1).unwrap();
        let kp3 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let x3 = leaf(&foreign, &kp3);
        assert_eq!(
            trust.admit_author("x", &x3).unwrap_err(),
            CertError::BadSignature
        );
    }
}
