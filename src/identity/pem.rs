//! PEM files: X.509 certificates and Ed25519 PKCS#8 private keys.
//!
//! Private keys are written as PKCS#8 v1 (RFC 8410 `PrivateKeyInfo` without
//! the optional public key), which OpenSSL 3.0 and Python's `cryptography`
//! accept. Reading accepts v1 and v2 (`OneAsymmetricKey` with the public key,
//! which must then match the private key).

use std::path::Path;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{ObjectIdentifier, PrivateKeyInfoRef};
use zeroize::{Zeroize, Zeroizing};

use super::{IdentityError, read_file};
use crate::core::limits::CERT_BYTES_MAX;

/// PEM label of a certificate.
pub const CERT_LABEL: &str = "CERTIFICATE";
/// PEM label of a PKCS#8 private key.
pub const PRIVATE_KEY_LABEL: &str = "PRIVATE KEY";

/// The DER prefix of an RFC 8410 PKCS#8 v1 Ed25519 private key:
/// `SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING {
/// OCTET STRING (32 bytes) } }`. The 32-byte seed follows.
pub const PKCS8_V1_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const OID_ED448: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.113");
const OID_X25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.110");
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_RSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const OID_EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");

/// Encodes `seed` as PKCS#8 v1 DER (48 bytes, zeroized on drop).
pub fn pkcs8_v1_der(seed: &[u8; 32]) -> Zeroizing<Vec<u8>> {
    let mut der = Zeroizing::new(Vec::with_capacity(48));
    der.extend_from_slice(&PKCS8_V1_ED25519_PREFIX);
    der.extend_from_slice(seed);
    der
}

/// Encodes a signing key as a PKCS#8 v1 PEM document (zeroized on drop).
pub fn private_key_pem(key: &SigningKey) -> Zeroizing<String> {
    let der = pkcs8_v1_der(key.as_bytes());
    encode_pem_secret(PRIVATE_KEY_LABEL, &der)
}

/// Encodes certificate DER as PEM.
pub fn cert_pem(der: &[u8]) -> String {
    encode_pem(CERT_LABEL, der)
}

fn pem_config() -> ::pem::EncodeConfig {
    ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF)
}

fn encode_pem(label: &str, der: &[u8]) -> String {
    ::pem::encode_config(&::pem::Pem::new(label, der), pem_config())
}

fn encode_pem_secret(label: &str, der: &[u8]) -> Zeroizing<String> {
    let block = ::pem::Pem::new(label, der);
    let text = Zeroizing::new(::pem::encode_config(&block, pem_config()));
    block.into_contents().zeroize();
    text
}

/// Parses PEM text holding exactly one block, returning its label and
/// contents (contents zeroized on drop).
fn parse_single_block(
    path: &Path,
    bytes: &[u8],
) -> Result<(String, Zeroizing<Vec<u8>>), IdentityError> {
    let malformed = |reason: String| IdentityError::MalformedPem {
        path: path.to_path_buf(),
        reason,
    };
    let blocks = ::pem::parse_many(bytes).map_err(|e| malformed(e.to_string()))?;
    let mut blocks: Vec<(String, Zeroizing<Vec<u8>>)> = blocks
        .into_iter()
        .map(|b| (b.tag().to_string(), Zeroizing::new(b.into_contents())))
        .collect();
    match blocks.len() {
        0 => Err(malformed("no PEM block found".into())),
        1 => blocks
            .pop()
            .ok_or_else(|| malformed("no PEM block found".into())),
        n => Err(malformed(format!(
            "expected exactly one PEM block, found {n} ({})",
            blocks
                .iter()
                .map(|(t, _)| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Reads a PEM file holding a single `CERTIFICATE` block and returns its DER.
pub fn read_cert_pem(path: &Path) -> Result<Vec<u8>, IdentityError> {
    let bytes = read_file(path)?;
    let (label, der) = parse_single_block(path, &bytes)?;
    if label != CERT_LABEL {
        return Err(IdentityError::MalformedPem {
            path: path.to_path_buf(),
            reason: format!("expected a {CERT_LABEL} block, found {label}"),
        });
    }
    if der.len() > CERT_BYTES_MAX {
        return Err(IdentityError::MalformedPem {
            path: path.to_path_buf(),
            reason: format!(
                "certificate is {} bytes, more than the limit of {CERT_BYTES_MAX}",
                der.len()
            ),
        });
    }
    Ok(der.to_vec())
}

/// Reads an Ed25519 PKCS#8 (v1 or v2) private key from a PEM file.
pub fn read_private_key(path: &Path) -> Result<SigningKey, IdentityError> {
    let bytes = read_file(path)?;
    let (label, der) = parse_single_block(path, &bytes)?;
    let wrong = |found: &str| IdentityError::WrongKeyType {
        path: path.to_path_buf(),
        found: found.to_string(),
    };
    match label.as_str() {
        PRIVATE_KEY_LABEL => {}
        "RSA PRIVATE KEY" => return Err(wrong("RSA (PKCS#1)")),
        "EC PRIVATE KEY" => return Err(wrong("EC (SEC1)")),
        "ENCRYPTED PRIVATE KEY" => {
            return Err(IdentityError::MalformedKey {
                path: path.to_path_buf(),
                reason: "encrypted private keys are not supported".into(),
            });
        }
        other => {
            return Err(IdentityError::MalformedPem {
                path: path.to_path_buf(),
                reason: format!("expected a {PRIVATE_KEY_LABEL} block, found {other}"),
            });
        }
    }
    signing_key_from_pkcs8(&der).map_err(|e| match e {
        KeyDecodeError::WrongType(found) => wrong(&found),
        KeyDecodeError::Malformed(reason) => IdentityError::MalformedKey {
            path: path.to_path_buf(),
            reason,
        },
    })
}

/// Why PKCS#8 DER did not decode to an Ed25519 key.
#[derive(Debug)]
pub(crate) enum KeyDecodeError {
    WrongType(String),
    Malformed(String),
}

/// Decodes PKCS#8 v1 or v2 DER holding an Ed25519 key.
pub(crate) fn signing_key_from_pkcs8(der: &[u8]) -> Result<SigningKey, KeyDecodeError> {
    let info = PrivateKeyInfoRef::try_from(der)
        .map_err(|e| KeyDecodeError::Malformed(format!("not PKCS#8: {e}")))?;
    let oid = info.algorithm.oid;
    if oid != OID_ED25519 {
        return Err(KeyDecodeError::WrongType(describe_key_oid(&info)));
    }
    if info.algorithm.parameters.is_some() {
        return Err(KeyDecodeError::Malformed(
            "Ed25519 algorithm identifier must not have parameters".into(),
        ));
    }
    // RFC 8410: privateKey is an OCTET STRING holding CurvePrivateKey, itself
    // an OCTET STRING of the 32-byte seed.
    let inner = info.private_key.as_bytes();
    if inner.len() != 34 || inner[0] != 0x04 || inner[1] != 0x20 {
        return Err(KeyDecodeError::Malformed(
            "Ed25519 private key is not a 32-byte CurvePrivateKey".into(),
        ));
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    seed.copy_from_slice(&inner[2..]);
    let key = SigningKey::from_bytes(&seed);
    if let Some(public) = info.public_key {
        let public = public.as_bytes().ok_or_else(|| {
            KeyDecodeError::Malformed("embedded public key has unused bits".into())
        })?;
        if public != key.verifying_key().as_bytes() {
            return Err(KeyDecodeError::Malformed(
                "the embedded public key does not match the private key".into(),
            ));
        }
    }
    Ok(key)
}

fn describe_key_oid(info: &PrivateKeyInfoRef<'_>) -> String {
    let oid = info.algorithm.oid;
    if oid == OID_RSA || oid == OID_RSA_PSS {
        "RSA".into()
    } else if oid == OID_EC {
        let curve = info
            .algorithm
            .parameters
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        match curve {
            Some(c) if c == OID_P256 => "ECDSA P-256".into(),
            Some(c) if c == OID_P384 => "ECDSA P-384".into(),
            Some(c) if c == OID_P521 => "ECDSA P-521".into(),
            Some(c) => format!("EC on curve {c}"),
            None => "EC".into(),
        }
    } else if oid == OID_ED448 {
        "Ed448".into()
    } else if oid == OID_X25519 {
        "X25519".into()
    } else {
        format!("algorithm {oid}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn pkcs8_v1_bytes_are_exact() {
        let seed = [7u8; 32];
        let key = SigningKey::from_bytes(&seed);
        let der = pkcs8_v1_der(key.as_bytes());
        let mut expected = hex::decode("302e020100300506032b657004220420").unwrap();
        expected.extend_from_slice(&seed);
        assert_eq!(der.as_slice(), expected.as_slice());
        assert_eq!(der.len(), 48);

        let pem_text = private_key_pem(&key);
        assert!(pem_text.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let block = ::pem::parse(pem_text.as_bytes()).unwrap();
        assert_eq!(block.tag(), "PRIVATE KEY");
        assert_eq!(block.contents(), expected.as_slice());
    }

    #[test]
    fn private_key_roundtrip_v1_and_v2() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[42u8; 32]);
        let p = write(dir.path(), "v1.key", &private_key_pem(&key));
        let loaded = read_private_key(&p).unwrap();
        assert_eq!(loaded.to_bytes(), key.to_bytes());

        // v2 (with public key), as ring/rcgen emit it.
        let ring_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let p2 = write(dir.path(), "v2.key", &ring_pair.serialize_pem());
        let loaded2 = read_private_key(&p2).unwrap();
        assert_eq!(
            loaded2.verifying_key().as_bytes().as_slice(),
            ring_pair.public_key_raw()
        );
        // And rcgen (ring) accepts our v1 encoding.
        let der = pkcs8_v1_der(key.as_bytes());
        let rc = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &der.as_slice().into(),
            &rcgen::PKCS_ED25519,
        )
        .unwrap();
        assert_eq!(rc.public_key_raw(), key.verifying_key().as_bytes());
    }

    #[test]
    fn v2_with_mismatched_public_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let a = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let b = SigningKey::from_bytes(&[9u8; 32]);
        let mut der = a.serialize_der();
        // v2 ends with [1] { BIT STRING 0x00 ‖ 32-byte public key }.
        let n = der.len();
        der[n - 32..].copy_from_slice(b.verifying_key().as_bytes());
        let p = write(
            dir.path(),
            "bad.key",
            &::pem::encode(&::pem::Pem::new("PRIVATE KEY", der)),
        );
        let e = read_private_key(&p).unwrap_err();
        assert!(matches!(e, IdentityError::MalformedKey { .. }), "{e}");
    }

    #[test]
    fn wrong_key_types_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let p = write(dir.path(), "p256.key", &p256.serialize_pem());
        let e = read_private_key(&p).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, IdentityError::WrongKeyType { .. }), "{msg}");
        assert!(msg.contains("wrong key type"), "{msg}");
        assert!(msg.contains("P-256"), "{msg}");
        assert!(msg.contains(&p.display().to_string()), "{msg}");

        let rsa = write(
            dir.path(),
            "rsa.key",
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        );
        let e = read_private_key(&rsa).unwrap_err();
        assert!(matches!(e, IdentityError::WrongKeyType { .. }), "{e}");
        assert!(e.to_string().contains("RSA"));
    }

    #[test]
    fn malformed_pem_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("garbage.pem", "not a pem file at all"),
            (
                "badb64.pem",
                "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            ),
            (
                "two.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n\
                 -----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            ),
            (
                "key.pem",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            ),
        ] {
            let p = write(dir.path(), name, text);
            let e = read_cert_pem(&p).unwrap_err();
            assert!(
                matches!(e, IdentityError::MalformedPem { .. }),
                "{name}: {e}"
            );
            assert!(e.to_string().contains(&p.display().to_string()));
        }
        let p = write(
            dir.path(),
            "short.key",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let e = read_private_key(&p).unwrap_err();
        assert!(matches!(e, IdentityError::MalformedKey { .. }), "{e}");
    }
}
