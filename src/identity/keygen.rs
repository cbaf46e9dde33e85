//! Key and certificate generation: the CA (and its rollover), node and
//! client certificates, channel keys, revocation and whole-cluster
//! provisioning.
//!
//! Every function validates its input and checks *all* target files before
//! writing *any*. Files are written to a temporary file in the target
//! directory (private keys created with mode 0600, others 0644) and renamed
//! into place, so a failure never leaves a half-written file and a key file
//! never exists with looser permissions. Existing files are only replaced
//! with `force`, except where replacing is the command's point (renewal,
//! rotation, recovery, revocation, CA rollover and retirement).
//!
//! Layout of a key directory `D`:
//!
//! * `D/ca.crt`, `D/ca.key`: the CA (CN `herald cluster CA <random id>`,
//!   `basicConstraints CA:TRUE, pathlen:0`, keyUsage keyCertSign, cRLSign,
//!   digitalSignature). `D/ca.crt` is a CA bundle (see [`super::bundle`]):
//!   [`rollover_ca`] appends CA `N` and writes its key and certificate to
//!   `D/ca-N.key`, `D/ca-N.crt`; [`retire_ca`] marks one retired. Leaves are
//!   signed by `D/ca.key` or the CA key passed (`--ca-key`), which must be
//!   a current CA of the bundle.
//! * `D/N.crt`, `D/N.key`: node or client `N` (CN and SAN DNS `N`, random
//!   positive 16-byte serial, keyUsage digitalSignature, EKU serverAuth +
//!   clientAuth for nodes, clientAuth only for clients, `CA:FALSE`).
//! * `D/channel-C.key`: channel key `C`, one line per key generation, oldest
//!   first, see [`super::load_channel_keyring`] and [`rotate_channel`].
//! * `D/revoked.toml`: the revocation list, see [`super::revocation`].
//! * `D/N.transition`, `D/N.prev.key`: written by a key transition of node
//!   `N` ([`rotate_node_key`], [`recover_node_key`]): the authorization the
//!   node appends to its feed, and the old key kept for a roll-back.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519, SerialNumber,
};
use zeroize::Zeroizing;

use super::pem::{cert_pem, pkcs8_v1_der, private_key_pem, read_private_key};
use super::revocation::{FILE_HEADER, Revocation, RevokedEntry, entry_toml};
use super::transition::{TransitionAuthorization, transition_path};
use super::trust::{parse_cert, subject_ed25519_key};
use super::{IdentityError, RevocationList, TrustAnchor, read_cert_pem, read_file, validate_name};
use crate::clock::{now_us, random_bytes};
use crate::core::cert::{AuthorCert, CertError, Cutoff};
use crate::core::transition::{TransitionKind, cert_digest, sign_authorization};

/// Longest validity accepted, in days (100 years).
pub const VALIDITY_DAYS_MAX: u32 = 36_500;
/// How far `not_before` is back-dated to tolerate clock skew, in microseconds.
pub const BACKDATE_US: u64 = 60 * 60 * 1_000_000;
/// File name of the CA certificate in a key directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA private key in a key directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of the revocation list in a key directory.
pub const REVOKED_FILE: &str = "revoked.toml";
/// Channel created by `init`.
pub const DEFAULT_CHANNEL: &str = "default";

const US_PER_DAY: u64 = 86_400 * 1_000_000;

/// Which extended key usages a leaf certificate gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeafKind {
    /// serverAuth + clientAuth: a node, and an event author.
    Node,
    /// clientAuth only: may connect, may not author events.
    Client,
}

/// A file to write: contents are zeroized on drop (they may be a key).
struct PendingFile {
    path: PathBuf,
    contents: Zeroizing<Vec<u8>>,
    secret: bool,
}

impl PendingFile {
    fn public(path: PathBuf, contents: impl Into<Vec<u8>>) -> Self {
        PendingFile {
            path,
            contents: Zeroizing::new(contents.into()),
            secret: false,
        }
    }

    fn secret_bytes(path: PathBuf, contents: Zeroizing<Vec<u8>>) -> Self {
        PendingFile {
            path,
            contents,
            secret: true,
        }
    }

    fn secret(path: PathBuf, contents: Zeroizing<String>) -> Self {
        PendingFile {
            path,
            contents: Zeroizing::new(contents.as_bytes().to_vec()),
            secret: true,
        }
    }
}

/// The CA's certificate and key, in memory.
struct CaMaterial {
    cert_der: Vec<u8>,
    key: SigningKey,
    not_after_us: u64,
}

fn gen_err(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Generate(e.to_string())
}

fn validate_days(days: u32) -> Result<(), IdentityError> {
    if days == 0 || days > VALIDITY_DAYS_MAX {
        return Err(IdentityError::InvalidArgument(format!(
            "--days {days} is out of range 1..={VALIDITY_DAYS_MAX}"
        )));
    }
    Ok(())
}

/// Node and client names are service names; `ca` and `channel-*` are
/// reserved because their files would clash with the CA and channel keys.
fn validate_leaf_name(name: &str) -> Result<(), IdentityError> {
    validate_name("service", name)?;
    if name == "ca" || name.starts_with("channel-") {
        return Err(IdentityError::InvalidName {
            kind: "service",
            name: name.to_string(),
            reason: "is reserved (its files would clash with ca.* or channel-*.key)".into(),
        });
    }
    Ok(())
}

/// Validity window starting (back-dated) now, lasting `days`.
fn window(days: u32) -> (u64, u64) {
    let now = now_us();
    (
        now.saturating_sub(BACKDATE_US),
        now.saturating_add(u64::from(days) * US_PER_DAY),
    )
}

fn generate_key() -> SigningKey {
    let seed = Zeroizing::new(random_bytes::<32>());
    SigningKey::from_bytes(&seed)
}

/// An rcgen (ring) key pair for signing, built from our PKCS#8 v1 encoding.
fn rcgen_key(key: &SigningKey) -> Result<KeyPair, IdentityError> {
    let der = pkcs8_v1_der(key.as_bytes());
    KeyPair::from_pkcs8_der_and_sign_algo(&der.as_slice().into(), &PKCS_ED25519).map_err(gen_err)
}

/// A random, positive, 16-byte serial (top bit clear, second-top bit set so
/// the DER INTEGER is exactly 16 bytes).
fn random_serial() -> SerialNumber {
    let mut serial = random_bytes::<16>();
    serial[0] = (serial[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&serial)
}

fn set_validity(
    params: &mut CertificateParams,
    not_before_us: u64,
    not_after_us: u64,
) -> Result<(), IdentityError> {
    if not_before_us > not_after_us {
        return Err(IdentityError::InvalidArgument(format!(
            "not_before {} is after not_after {}",
            crate::clock::format_timestamp(not_before_us),
            crate::clock::format_timestamp(not_after_us)
        )));
    }
    let to_time = |us: u64| {
        let secs = i64::try_from(us / 1_000_000).map_err(gen_err)?;
        x509_parser::time::ASN1Time::from_timestamp(secs)
            .map(|t| t.to_datetime())
            .map_err(gen_err)
    };
    params.not_before = to_time(not_before_us)?;
    params.not_after = to_time(not_after_us)?;
    Ok(())
}

fn generate_ca(not_before_us: u64, not_after_us: u64) -> Result<CaMaterial, IdentityError> {
    let key = generate_key();
    let kp = rcgen_key(&key)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let id = hex::encode(random_bytes::<4>());
    dn.push(DnType::CommonName, format!("herald cluster CA {id}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    set_validity(&mut params, not_before_us, not_after_us)?;
    let cert = params.self_signed(&kp).map_err(gen_err)?;
    Ok(CaMaterial {
        cert_der: cert.der().to_vec(),
        key,
        not_after_us: (not_after_us / 1_000_000) * 1_000_000,
    })
}

/// The file name of CA `number`'s key and certificate in a key directory:
/// `ca.key`/`ca.crt` for the founding CA (whose `ca.crt` grows into the
/// bundle), `ca-N.key`/`ca-N.crt` for CA `N` added by a rollover.
pub fn ca_file_names(number: usize) -> (String, String) {
    if number <= 1 {
        (CA_KEY_FILE.to_string(), CA_CERT_FILE.to_string())
    } else {
        (format!("ca-{number}.key"), format!("ca-{number}.crt"))
    }
}

/// Loads and checks the signing CA for `dir`: the key `ca_key` (default
/// `dir/ca.key`) and the CA certificate of the bundle `dir/ca.crt` holding
/// its public key, which must not be retired.
fn load_ca(dir: &Path, ca_key: Option<&Path>) -> Result<CaMaterial, IdentityError> {
    let bundle_path = dir.join(CA_CERT_FILE);
    let key_path = ca_key.map_or_else(|| dir.join(CA_KEY_FILE), Path::to_path_buf);
    let trust = TrustAnchor::load(&bundle_path, None)?;
    let key = read_private_key(&key_path)?;
    let public = key.verifying_key().to_bytes();
    let Some(ca) = trust.cas().iter().find(|c| c.public_key() == public) else {
        return Err(IdentityError::NoSuchCa {
            key: key_path,
            bundle: bundle_path,
        });
    };
    if let Some(at) = ca.retired_at_us() {
        return Err(IdentityError::BadCa {
            origin: format!("{} (CA {})", bundle_path.display(), ca.number()),
            reason: format!(
                "the CA of {} was retired at {}; it signs nothing new: pass --ca-key with the key of a current CA",
                key_path.display(),
                crate::clock::format_timestamp(at)
            ),
        });
    }
    Ok(CaMaterial {
        cert_der: ca.der().to_vec(),
        key,
        not_after_us: ca.not_after_us(),
    })
}

/// Issues a leaf certificate for `name` signed by `ca`. The validity end is
/// clamped to the CA's.
fn issue_leaf(
    ca: &CaMaterial,
    name: &str,
    kind: LeafKind,
    not_before_us: u64,
    not_after_us: u64,
) -> Result<(Vec<u8>, SigningKey), IdentityError> {
    let key = generate_key();
    let cert_der = certify_key(ca, name, kind, &key, not_before_us, not_after_us)?;
    Ok((cert_der, key))
}

/// Certifies the existing `key` as leaf `name`, signed by `ca`. The validity
/// end is clamped to the CA's.
fn certify_key(
    ca: &CaMaterial,
    name: &str,
    kind: LeafKind,
    key: &SigningKey,
    not_before_us: u64,
    not_after_us: u64,
) -> Result<Vec<u8>, IdentityError> {
    let kp = rcgen_key(key)?;
    let ca_kp = rcgen_key(&ca.key)?;
    let issuer =
        Issuer::from_ca_cert_der(&ca.cert_der.as_slice().into(), ca_kp).map_err(gen_err)?;
    let mut params = CertificateParams::new(vec![name.to_string()]).map_err(gen_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match kind {
        LeafKind::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        LeafKind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    let not_after_us = not_after_us.min(ca.not_after_us);
    set_validity(&mut params, not_before_us.min(not_after_us), not_after_us)?;
    let cert = params.signed_by(&kp, &issuer).map_err(gen_err)?;
    Ok(cert.der().to_vec())
}

fn leaf_files(dir: &Path, name: &str, cert_der: &[u8], key: &SigningKey) -> Vec<PendingFile> {
    vec![
        PendingFile::public(dir.join(format!("{name}.crt")), cert_pem(cert_der)),
        PendingFile::secret(dir.join(format!("{name}.key")), private_key_pem(key)),
    ]
}

/// Creates `dir` (mode 0700) if missing; refuses a non-directory.
fn ensure_dir(dir: &Path) -> Result<(), IdentityError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(IdentityError::NotADirectory {
            path: dir.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| IdentityError::Write {
                path: dir.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            Err(IdentityError::NotADirectory {
                path: dir.to_path_buf(),
            })
        }
        Err(source) => Err(IdentityError::Write {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Fails on the first target that exists (unless `force`) or is a directory.
fn check_targets<'a>(
    paths: impl IntoIterator<Item = &'a Path>,
    force: bool,
) -> Result<(), IdentityError> {
    for path in paths {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {
                return Err(IdentityError::Write {
                    path: path.to_path_buf(),
                    source: std::io::Error::other("is a directory"),
                });
            }
            Ok(_) if !force => {
                return Err(IdentityError::WouldOverwrite {
                    path: path.to_path_buf(),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                return Err(IdentityError::NotADirectory {
                    path: path.parent().unwrap_or(path).to_path_buf(),
                });
            }
            Err(source) => {
                return Err(IdentityError::Write {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    Ok(())
}

fn temp_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.tmp-{}", hex::encode(random_bytes::<6>())))
}

fn stage(file: &PendingFile) -> Result<PathBuf, IdentityError> {
    let tmp = temp_path(&file.path);
    let write_err = |source| IdentityError::Write {
        path: file.path.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if file.secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(write_err)?;
    let result = f.write_all(&file.contents).and_then(|()| f.sync_all());
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(e));
    }
    Ok(tmp)
}

/// Writes all files or none: checks every target, stages every file next to
/// its target, then renames them into place.
fn write_files(files: Vec<PendingFile>, force: bool) -> Result<Vec<PathBuf>, IdentityError> {
    check_targets(files.iter().map(|f| f.path.as_path()), force)?;
    let mut staged: Vec<PathBuf> = Vec::with_capacity(files.len());
    for file in &files {
        match stage(file) {
            Ok(tmp) => staged.push(tmp),
            Err(e) => {
                for tmp in &staged {
                    let _ = std::fs::remove_file(tmp);
                }
                return Err(e);
            }
        }
    }
    for (i, (file, tmp)) in files.iter().zip(&staged).enumerate() {
        if let Err(source) = std::fs::rename(tmp, &file.path) {
            for tmp in &staged[i..] {
                let _ = std::fs::remove_file(tmp);
            }
            return Err(IdentityError::Write {
                path: file.path.clone(),
                source,
            });
        }
    }
    let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.path.parent()).collect();
    dirs.dedup();
    for dir in dirs {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(files.into_iter().map(|f| f.path).collect())
}

/// Creates the cluster CA: `dir/ca.crt` and `dir/ca.key`.
pub fn create_ca(
    dir: &Path,
    validity_days: u32,
    force: bool,
) -> Result<Vec<PathBuf>, IdentityError> {
    validate_days(validity_days)?;
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    check_targets([cert_path.as_path(), key_path.as_path()], force)?;
    ensure_dir(dir)?;
    let (nb, na) = window(validity_days);
    let ca = generate_ca(nb, na)?;
    write_files(
        vec![
            PendingFile::public(cert_path, cert_pem(&ca.cert_der)),
            PendingFile::secret(key_path, private_key_pem(&ca.key)),
        ],
        force,
    )
}

/// What [`rollover_ca`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledCa {
    /// The new CA's number in the bundle.
    pub number: usize,
    /// Its subject name.
    pub subject: String,
    /// The new CA's key, `dir/ca-N.key` (mode 0600).
    pub key: PathBuf,
    /// The new CA's certificate alone, `dir/ca-N.crt`.
    pub cert: PathBuf,
    /// The bundle, `dir/ca.crt`, now holding the new certificate last.
    pub bundle: PathBuf,
}

/// Starts a CA rollover: creates a new CA (a new key and self-signed
/// certificate, valid `validity_days`), writes its key to `dir/ca-N.key`
/// and its certificate to `dir/ca-N.crt` (N its number in the bundle), and
/// appends the certificate to the bundle `dir/ca.crt`, keeping every byte
/// already there. Nodes trust it once they load the new bundle; certificates
/// are issued under it with `--ca-key dir/ca-N.key`.
///
/// Refuses, writing nothing, when the bundle is missing or invalid, already
/// holds [`super::bundle::CA_BUNDLE_CERTS_MAX`] certificates, or `ca-N.key`
/// or `ca-N.crt` exists (keys are never overwritten).
pub fn rollover_ca(dir: &Path, validity_days: u32) -> Result<RolledCa, IdentityError> {
    validate_days(validity_days)?;
    let bundle = dir.join(CA_CERT_FILE);
    let trust = TrustAnchor::load(&bundle, None)?;
    let number = trust.cas().len() + 1;
    if number > super::bundle::CA_BUNDLE_CERTS_MAX {
        return Err(IdentityError::BadCa {
            origin: bundle.display().to_string(),
            reason: format!(
                "already holds {} CA certificates, the limit; no CA can be added",
                super::bundle::CA_BUNDLE_CERTS_MAX
            ),
        });
    }
    let (key_name, cert_name) = ca_file_names(number);
    let (key, cert) = (dir.join(key_name), dir.join(cert_name));
    check_targets([key.as_path(), cert.as_path()], false)?;
    let text = read_file(&bundle)?;
    let text = std::str::from_utf8(&text).map_err(|_| IdentityError::BadCa {
        origin: bundle.display().to_string(),
        reason: "not UTF-8 text".into(),
    })?;
    let (nb, na) = window(validity_days);
    let ca = generate_ca(nb, na)?;
    let subject = parse_cert(&ca.cert_der)
        .map(|c| c.tbs_certificate.subject.to_string())
        .map_err(|e| gen_err(format!("the new CA certificate: {e}")))?;
    let pem = cert_pem(&ca.cert_der);
    let comment = format!(
        "CA {number}: {subject}, added {} (herald keygen ca --rollover)",
        crate::clock::format_timestamp(now_us())
    );
    let new_text = super::bundle::with_appended(text, &pem, &comment);
    // The new bundle must load, or nothing is written.
    TrustAnchor::from_bundle_pem(
        new_text.as_bytes(),
        RevocationList::empty(),
        &bundle.display().to_string(),
    )?;
    write_files(
        vec![
            PendingFile::secret(key.clone(), private_key_pem(&ca.key)),
            PendingFile::public(cert.clone(), pem),
            PendingFile::public(bundle.clone(), new_text),
        ],
        true,
    )?;
    Ok(RolledCa {
        number,
        subject,
        key,
        cert,
        bundle,
    })
}

/// What [`retire_ca`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredCa {
    /// The retired CA's number in the bundle.
    pub number: usize,
    /// Its subject name.
    pub subject: String,
    /// The retirement time written, microseconds since the Unix epoch.
    pub retired_at_us: u64,
    /// The bundle rewritten.
    pub bundle: PathBuf,
}

/// Ends a CA rollover: marks CA `number` of the bundle `dir/ca.crt` retired
/// from now (a `herald-ca-retired:` line before its certificate; the
/// certificate stays, so feeds whose certificates it issued stay
/// verifiable). From then on every verifier loading the bundle refuses its
/// certificates for connections and node identities, and admits them for
/// feed history only with their validity ending at the retirement time.
///
/// Refuses, writing nothing, when there is no CA `number`, it is already
/// retired, or it is the last current CA (the cluster could no longer
/// connect). Its key is not touched: destroying it is the operator's step
/// (docs/SECURITY.md).
pub fn retire_ca(dir: &Path, number: usize) -> Result<RetiredCa, IdentityError> {
    let bundle = dir.join(CA_CERT_FILE);
    let trust = TrustAnchor::load(&bundle, None)?;
    let bad = |reason: String| IdentityError::BadCa {
        origin: bundle.display().to_string(),
        reason,
    };
    let Some(ca) = number.checked_sub(1).and_then(|i| trust.cas().get(i)) else {
        return Err(IdentityError::InvalidArgument(format!(
            "--retire {number}: {} holds CA 1 to {}",
            bundle.display(),
            trust.cas().len()
        )));
    };
    if let Some(at) = ca.retired_at_us() {
        return Err(bad(format!(
            "CA {number} was already retired at {}; nothing was written",
            crate::clock::format_timestamp(at)
        )));
    }
    if trust.current_cas().count() < 2 {
        return Err(bad(format!(
            "CA {number} is the only current CA; add its successor first (herald keygen ca --rollover), nothing was written"
        )));
    }
    let text = read_file(&bundle)?;
    let text = std::str::from_utf8(&text).map_err(|_| bad("not UTF-8 text".into()))?;
    let at = now_us();
    let new_text = super::bundle::with_retirement(text, number, at).map_err(bad)?;
    TrustAnchor::from_bundle_pem(
        new_text.as_bytes(),
        RevocationList::empty(),
        &bundle.display().to_string(),
    )?;
    write_files(vec![PendingFile::public(bundle.clone(), new_text)], true)?;
    Ok(RetiredCa {
        number,
        subject: ca.subject().to_string(),
        retired_at_us: at,
        bundle,
    })
}

fn issue_from_dir(
    dir: &Path,
    name: &str,
    kind: LeafKind,
    window_us: Option<(u64, u64)>,
    validity_days: u32,
    force: bool,
    ca_key: Option<&Path>,
) -> Result<Vec<PathBuf>, IdentityError> {
    validate_leaf_name(name)?;
    if window_us.is_none() {
        validate_days(validity_days)?;
    }
    check_targets(
        [
            dir.join(format!("{name}.crt")).as_path(),
            dir.join(format!("{name}.key")).as_path(),
        ],
        force,
    )?;
    let ca = load_ca(dir, ca_key)?;
    let (nb, na) = match window_us {
        Some(w) => w,
        None => {
            let w = window(validity_days);
            if ca.not_after_us < w.0 {
                return Err(IdentityError::BadCa {
                    origin: dir.join(CA_CERT_FILE).display().to_string(),
                    reason: "has expired; create a new CA".into(),
                });
            }
            w
        }
    };
    let (cert_der, key) = issue_leaf(&ca, name, kind, nb, na)?;
    write_files(leaf_files(dir, name, &cert_der, &key), force)
}

/// Issues node certificate `dir/name.crt` and key `dir/name.key`, signed by
/// the CA in `dir` (SAN DNS and CN `name`, EKU serverAuth + clientAuth).
pub fn issue_node(
    dir: &Path,
    name: &str,
    validity_days: u32,
    force: bool,
) -> Result<Vec<PathBuf>, IdentityError> {
    issue_from_dir(dir, name, LeafKind::Node, None, validity_days, force, None)
}

/// Like [`issue_node`], signed by the CA whose key is `ca_key` (default
/// `dir/ca.key`); its certificate must be a current CA of `dir/ca.crt`.
pub fn issue_node_with_ca(
    dir: &Path,
    name: &str,
    validity_days: u32,
    force: bool,
    ca_key: Option<&Path>,
) -> Result<Vec<PathBuf>, IdentityError> {
    issue_from_dir(
        dir,
        name,
        LeafKind::Node,
        None,
        validity_days,
        force,
        ca_key,
    )
}

/// Like [`issue_client`], signed by the CA whose key is `ca_key`.
pub fn issue_client_with_ca(
    dir: &Path,
    name: &str,
    validity_days: u32,
    force: bool,
    ca_key: Option<&Path>,
) -> Result<Vec<PathBuf>, IdentityError> {
    issue_from_dir(
        dir,
        name,
        LeafKind::Client,
        None,
        validity_days,
        force,
        ca_key,
    )
}

/// Issues a client certificate (EKU clientAuth only: may connect, may not
/// author events).
pub fn issue_client(
    dir: &Path,
    name: &str,
    validity_days: u32,
    force: bool,
) -> Result<Vec<PathBuf>, IdentityError> {
    issue_from_dir(
        dir,
        name,
        LeafKind::Client,
        None,
        validity_days,
        force,
        None,
    )
}

/// Test support: issues a node certificate with an explicit validity window
/// (microseconds since the Unix epoch), e.g. an already expired one.
pub fn issue_node_with_validity(
    dir: &Path,
    name: &str,
    not_before_us: u64,
    not_after_us: u64,
    force: bool,
) -> Result<Vec<PathBuf>, IdentityError> {
    issue_from_dir(
        dir,
        name,
        LeafKind::Node,
        Some((not_before_us, not_after_us)),
        1,
        force,
        None,
    )
}

/// Test support: issues a client certificate with an explicit validity
/// window (microseconds since the Unix epoch), e.g. an already expired one
/// (the HTTP API's handshake refuses it: `tests/api_auth.rs`).
pub fn issue_client_with_validity(
    dir: &Path,
    name: &str,
    not_before_us: u64,
    not_after_us: u64,
    force: bool,
) -> Result<Vec<PathBuf>, IdentityError> {
    issue_from_dir(
        dir,
        name,
        LeafKind::Client,
        Some((not_before_us, not_after_us)),
        1,
        force,
        None,
    )
}

/// Renews node certificate `dir/name.crt` for the **same key**
/// (`dir/name.key`, which is read but never rewritten): the CA in `dir`
/// signs a new certificate with the same service name and key, a new serial,
/// the old certificate's `not_before` (so the window a feed's events were
/// checked against only grows) and a `not_after` `validity_days` from now
/// (clamped to the CA's). Only `dir/name.crt` is replaced, atomically.
///
/// Refuses, writing nothing, when the CA certificate or key is missing or
/// expired, when `name` has no certificate or key in `dir`, when the old
/// certificate is not a node certificate of this CA for `name`, or when the
/// key does not match it.
pub fn renew_node(dir: &Path, name: &str, validity_days: u32) -> Result<PathBuf, IdentityError> {
    renew_node_with_ca(dir, name, validity_days, None)
}

/// Like [`renew_node`], signed by the CA whose key is `ca_key` (default
/// `dir/ca.key`), which must be a current CA of `dir/ca.crt`: the way a
/// node moves to a new CA during a rollover. The old certificate may be of
/// any CA of the bundle, a retired one included.
pub fn renew_node_with_ca(
    dir: &Path,
    name: &str,
    validity_days: u32,
    ca_key: Option<&Path>,
) -> Result<PathBuf, IdentityError> {
    validate_days(validity_days)?;
    renew_from_dir(dir, name, validity_days, ca_key)
}

fn renew_from_dir(
    dir: &Path,
    name: &str,
    validity_days: u32,
    ca_key: Option<&Path>,
) -> Result<PathBuf, IdentityError> {
    validate_leaf_name(name)?;
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    for path in [&cert_path, &key_path] {
        if std::fs::symlink_metadata(path).is_err() {
            return Err(IdentityError::UnknownService {
                name: name.to_string(),
                dir: dir.to_path_buf(),
                missing: path.clone(),
            });
        }
    }
    let ca = load_ca(dir, ca_key)?;
    let old_der = read_cert_pem(&cert_path)?;
    // A revoked key is not renewed, with a cut-off or without: a renewal
    // is for a key its owner still holds alone.
    let revoked = dir.join(REVOKED_FILE);
    let revoked = std::fs::symlink_metadata(&revoked)
        .is_ok()
        .then_some(revoked.as_path());
    let trust = TrustAnchor::load(&dir.join(CA_CERT_FILE), revoked)?;
    let revoked_error = |cert: &AuthorCert| CertError::Revoked {
        service: cert.service.clone(),
        serial: cert.serial_hex(),
    };
    // History admission: a certificate of a retired CA may be renewed
    // under a current one (a CA rollover).
    let old = trust
        .admit_author(name, &old_der)
        .and_then(|cert| match cert.revoked_from {
            Some(_) => Err(revoked_error(&cert)),
            None => Ok(cert),
        })
        .map_err(|source| IdentityError::Certificate {
            path: cert_path.clone(),
            source,
        })?;
    let key = read_private_key(&key_path)?;
    if key.verifying_key().to_bytes() != old.public_key {
        return Err(IdentityError::KeyMismatch {
            key: key_path,
            cert: cert_path,
        });
    }
    let now = now_us();
    if ca.not_after_us < now {
        return Err(IdentityError::BadCa {
            origin: dir.join(CA_CERT_FILE).display().to_string(),
            reason: "has expired; a certificate cannot be renewed under it (create a new CA)"
                .into(),
        });
    }
    let (nb, na) = (
        old.not_before_us,
        now.saturating_add(u64::from(validity_days) * US_PER_DAY),
    );
    let cert_der = certify_key(&ca, name, LeafKind::Node, &key, nb, na)?;
    write_files(
        vec![PendingFile::public(cert_path.clone(), cert_pem(&cert_der))],
        true,
    )?;
    Ok(cert_path)
}

/// What [`rotate_node_key`] or [`recover_node_key`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeKeyTransition {
    /// Rotation (authorized by the old key) or recovery (by the CA key).
    pub kind: TransitionKind,
    /// The node's service name.
    pub service: String,
    /// Every file written, in the order it was renamed into place.
    pub written: Vec<PathBuf>,
    /// `dir/NAME.transition`: the authorization the node appends to its
    /// feed when it moves to the new key.
    pub transition: PathBuf,
    /// `dir/NAME.key`: the new key (mode 0600).
    pub key: PathBuf,
    /// `dir/NAME.crt`: the new certificate.
    pub cert: PathBuf,
    /// `dir/NAME.prev.key`: the old key, kept for a roll-back (`None` when
    /// a recovery found no old key matching the old certificate).
    pub previous_key: Option<PathBuf>,
    /// The new key's Ed25519 public key.
    pub public_key: [u8; 32],
    /// The new certificate's serial (DER INTEGER content).
    pub serial: Vec<u8>,
    /// The new certificate's DER.
    pub cert_der: Vec<u8>,
    /// What `dir/NAME.transition` holds.
    pub authorization: TransitionAuthorization,
}

/// The file that keeps a node's old key after a transition:
/// `dir/NAME.prev.key`.
pub fn previous_key_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.prev.key"))
}

/// A node's current certificate and where its files are, checked against
/// the key directory's CA bundle.
struct OldNode {
    cert_path: PathBuf,
    key_path: PathBuf,
    cert: AuthorCert,
    revocation: Revocation,
    revocation_list: PathBuf,
}

/// Reads `dir/name.crt` and admits it as a node certificate for `name` of
/// a CA of the bundle (a retired one included, as for history), and looks
/// it up in `dir/revoked.toml` (if there is one). `dir/name.crt`, and with
/// `require_key` `dir/name.key`, must exist, else
/// [`IdentityError::UnknownService`].
fn read_old_node(dir: &Path, name: &str, require_key: bool) -> Result<OldNode, IdentityError> {
    validate_leaf_name(name)?;
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    let required: &[&PathBuf] = if require_key {
        &[&cert_path, &key_path]
    } else {
        &[&cert_path]
    };
    for path in required {
        if std::fs::symlink_metadata(path).is_err() {
            return Err(IdentityError::UnknownService {
                name: name.to_string(),
                dir: dir.to_path_buf(),
                missing: path.to_path_buf(),
            });
        }
    }
    let old_der = read_cert_pem(&cert_path)?;
    // Admitted without the revocation list: a certificate revoked outright
    // is still this cluster's certificate for `name`, and whether it is
    // revoked is what rotation and recovery decide on, each its own way.
    let trust = TrustAnchor::load(&dir.join(CA_CERT_FILE), None)?;
    let cert = trust
        .admit_author(name, &old_der)
        .map_err(|source| IdentityError::Certificate {
            path: cert_path.clone(),
            source,
        })?;
    let revocation_list = dir.join(REVOKED_FILE);
    let revocation = match std::fs::symlink_metadata(&revocation_list) {
        Ok(_) => RevocationList::load(&revocation_list)?.revocation(&cert.public_key, &cert.serial),
        Err(_) => Revocation::None,
    };
    Ok(OldNode {
        cert_path,
        key_path,
        cert,
        revocation,
        revocation_list,
    })
}

/// The signing CA, refused when it has expired: a new certificate under
/// it would be born invalid.
fn load_current_ca(dir: &Path, ca_key: Option<&Path>) -> Result<CaMaterial, IdentityError> {
    let ca = load_ca(dir, ca_key)?;
    if ca.not_after_us < now_us() {
        return Err(IdentityError::BadCa {
            origin: dir.join(CA_CERT_FILE).display().to_string(),
            reason: format!(
                "the CA of {} expired at {}; it cannot issue the new certificate (pass --ca-key with the key of a current CA, or create a new CA)",
                ca_key
                    .map_or_else(|| dir.join(CA_KEY_FILE), Path::to_path_buf)
                    .display(),
                crate::clock::format_timestamp(ca.not_after_us)
            ),
        });
    }
    Ok(ca)
}

/// A private key and its file's bytes (kept byte for byte as
/// `NAME.prev.key`).
type KeyAndFile = (SigningKey, Zeroizing<Vec<u8>>);

/// Reads the private key at `path`, with its file's bytes, if it is the key
/// of `public_key`; `Ok(None)` if it is another key.
fn read_key_if_matching(
    path: &Path,
    public_key: &[u8; 32],
) -> Result<Option<KeyAndFile>, IdentityError> {
    let key = read_private_key(path)?;
    if key.verifying_key().to_bytes() != *public_key {
        return Ok(None);
    }
    Ok(Some((key, read_file(path)?)))
}

/// For a rotation of node `name` in `dir`: checks that the old certificate
/// is not revoked and finds its key, whose signature authorizes the move,
/// with the bytes to keep as `NAME.prev.key`.
fn rotation_authorizer(dir: &Path, name: &str, old: &OldNode) -> Result<KeyAndFile, IdentityError> {
    if old.revocation != Revocation::None {
        return Err(IdentityError::RotateRevoked {
            name: name.to_string(),
            cert: old.cert_path.clone(),
            list: old.revocation_list.clone(),
        });
    }
    let previous = previous_key_path(dir, name);
    let previous_exists = std::fs::symlink_metadata(&previous).is_ok();
    if let Some(current) = read_key_if_matching(&old.key_path, &old.cert.public_key)? {
        // A `NAME.prev.key` for another key is the old key of an earlier
        // rotation the node may not have followed yet: overwriting it would
        // lose the feed's key and its roll-back.
        if previous_exists && read_key_if_matching(&previous, &old.cert.public_key)?.is_none() {
            return Err(IdentityError::RotationPending {
                name: name.to_string(),
                previous,
                cert: old.cert_path.clone(),
            });
        }
        return Ok(current);
    }
    // `NAME.key` is not the certificate's key. If `NAME.prev.key` is, a
    // rotation stopped after installing its new key and before its
    // certificate (see the crash notes in `write_transition`): the new key
    // was never certified, so it never signed anything; this rotation
    // starts again from the old key and replaces it.
    if previous_exists && let Some(kept) = read_key_if_matching(&previous, &old.cert.public_key)? {
        return Ok(kept);
    }
    Err(IdentityError::KeyMismatch {
        key: old.key_path.clone(),
        cert: old.cert_path.clone(),
    })
}

/// Planned key rotation of node `name` in `dir`: generates a new Ed25519
/// key, issues a node certificate for it (validity now to `validity_days`
/// from now, clamped to the CA's; signed by `ca_key`, default
/// `dir/ca.key`, which must be a current, unexpired CA of `dir/ca.crt`),
/// signs the rotation authorization with the **old** key over the new
/// certificate, and writes `dir/NAME.prev.key` (the old key, 0600),
/// `dir/NAME.transition`, `dir/NAME.key` (the new key, 0600) and
/// `dir/NAME.crt`. The node moves its feed to the new key on its next
/// reload or start.
///
/// Refuses, writing nothing, when `name` has no certificate or key in
/// `dir`, the certificate is not a node certificate of a CA of the bundle
/// for `name`, it is revoked in `dir/revoked.toml` (in any way: a revoked
/// key is replaced by [`recover_node_key`]), the key does not match it, or
/// `dir/NAME.prev.key` holds the old key of an earlier rotation
/// ([`IdentityError::RotationPending`]).
pub fn rotate_node_key(
    dir: &Path,
    name: &str,
    validity_days: u32,
    ca_key: Option<&Path>,
) -> Result<NodeKeyTransition, IdentityError> {
    validate_days(validity_days)?;
    let old = read_old_node(dir, name, true)?;
    let (old_key, old_key_bytes) = rotation_authorizer(dir, name, &old)?;
    let ca = load_current_ca(dir, ca_key)?;
    let (cert_der, new_key) = issue_transition_cert(&ca, name, validity_days)?;
    let signature = sign_authorization(TransitionKind::Rotation, name, &cert_der, &old_key);
    write_transition(
        dir,
        name,
        TransitionKind::Rotation,
        signature,
        cert_der,
        &new_key,
        Some(old_key_bytes),
    )
}

/// Key recovery of node `name` in `dir` after a compromise: generates a new
/// Ed25519 key and node certificate as [`rotate_node_key`] does, but the
/// recovery authorization is signed by the **CA key** (`ca_key`, default
/// `dir/ca.key`), and the old key is not needed. Writes
/// `dir/NAME.transition`, `dir/NAME.key` and `dir/NAME.crt`, and keeps the
/// old `dir/NAME.key` as `dir/NAME.prev.key` when it is the old
/// certificate's key.
///
/// Refuses, writing nothing, when `dir/NAME.crt` is missing or not a node
/// certificate of a CA of the bundle for `name`, or when it is **not**
/// revoked in `dir/revoked.toml` ([`IdentityError::RecoverNotRevoked`]: a
/// key that is still trusted would go on signing for the thief), and when
/// the CA is missing, retired or expired.
pub fn recover_node_key(
    dir: &Path,
    name: &str,
    validity_days: u32,
    ca_key: Option<&Path>,
) -> Result<NodeKeyTransition, IdentityError> {
    validate_days(validity_days)?;
    let old = read_old_node(dir, name, false)?;
    if old.revocation == Revocation::None {
        return Err(IdentityError::RecoverNotRevoked {
            name: name.to_string(),
            cert: old.cert_path,
            list: old.revocation_list,
        });
    }
    // The old key is kept only when it is there and is the old
    // certificate's: anything else in `NAME.key` (a damaged file, the new
    // key of an interrupted recovery) is nothing to roll back to.
    let old_key_bytes = match std::fs::symlink_metadata(&old.key_path) {
        Ok(_) => read_key_if_matching(&old.key_path, &old.cert.public_key)
            .unwrap_or(None)
            .map(|(_, bytes)| bytes),
        Err(_) => None,
    };
    let ca = load_current_ca(dir, ca_key)?;
    let (cert_der, new_key) = issue_transition_cert(&ca, name, validity_days)?;
    let signature = sign_authorization(TransitionKind::Recovery, name, &cert_der, &ca.key);
    write_transition(
        dir,
        name,
        TransitionKind::Recovery,
        signature,
        cert_der,
        &new_key,
        old_key_bytes,
    )
}

/// A new key and its node certificate, valid from now (back-dated for
/// skew) for `validity_days`.
fn issue_transition_cert(
    ca: &CaMaterial,
    name: &str,
    validity_days: u32,
) -> Result<(Vec<u8>, SigningKey), IdentityError> {
    let (nb, na) = window(validity_days);
    issue_leaf(ca, name, LeafKind::Node, nb, na)
}

/// Writes a transition's files, each atomically (temp file + rename), all
/// staged before any is renamed, and renamed in this order:
///
/// 1. `NAME.prev.key`, the old key: it exists before `NAME.key` is
///    replaced, so no crash loses it;
/// 2. `NAME.transition`: harmless alone, since the node uses it only for
///    the certificate whose digest it names, which is not installed yet;
/// 3. `NAME.key`, the new key;
/// 4. `NAME.crt`, the new certificate.
///
/// Two renames cannot be one atomic step, so a crash between 3 and 4 leaves
/// the new `NAME.key` with the old `NAME.crt` (the node then refuses to
/// start, and a reload keeps its current identity). The key goes first
/// because that state is repairable: `NAME.prev.key` still matches
/// `NAME.crt`, and rerunning `rotate` takes it as the old key and completes
/// the rotation with a fresh key (the discarded one was never certified);
/// rerunning `recover` works as before since `NAME.crt` is unchanged. A
/// crash before the renames leaves only `.NAME.*.tmp-*` files behind.
fn write_transition(
    dir: &Path,
    name: &str,
    kind: TransitionKind,
    signature: [u8; 64],
    cert_der: Vec<u8>,
    new_key: &SigningKey,
    old_key_bytes: Option<Zeroizing<Vec<u8>>>,
) -> Result<NodeKeyTransition, IdentityError> {
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    let transition = transition_path(&cert_path);
    let previous_key = old_key_bytes.as_ref().map(|_| previous_key_path(dir, name));
    let authorization = TransitionAuthorization {
        kind,
        service: name.to_string(),
        cert_sha256: cert_digest(&cert_der),
        signature,
    };
    let mut files = Vec::with_capacity(4);
    if let (Some(path), Some(bytes)) = (&previous_key, old_key_bytes) {
        files.push(PendingFile::secret_bytes(path.clone(), bytes));
    }
    files.push(PendingFile::public(
        transition.clone(),
        authorization.to_text(),
    ));
    files.push(PendingFile::secret(
        key_path.clone(),
        private_key_pem(new_key),
    ));
    files.push(PendingFile::public(cert_path.clone(), cert_pem(&cert_der)));
    let serial = parse_cert(&cert_der)
        .map(|c| c.tbs_certificate.raw_serial().to_vec())
        .map_err(|e| gen_err(format!("the new certificate: {e}")))?;
    let written = write_files(files, true)?;
    Ok(NodeKeyTransition {
        kind,
        service: name.to_string(),
        written,
        transition,
        key: key_path,
        cert: cert_path,
        previous_key,
        public_key: new_key.verifying_key().to_bytes(),
        serial,
        cert_der,
        authorization,
    })
}

fn channel_file(dir: &Path, name: &str) -> PendingFile {
    let key = Zeroizing::new(random_bytes::<32>());
    let mut text = Zeroizing::new(hex::encode(&key[..]));
    text.push('\n');
    PendingFile::secret(dir.join(format!("channel-{name}.key")), text)
}

/// Creates channel key `dir/channel-name.key` (64 lowercase hex + newline,
/// mode 0600): generation 1. An existing file is refused without `force`
/// (the error points at [`rotate_channel`]); with `force` it is replaced,
/// every generation it held included.
pub fn create_channel(dir: &Path, name: &str, force: bool) -> Result<PathBuf, IdentityError> {
    validate_name("channel", name)?;
    let file = channel_file(dir, name);
    // An existing channel key is most likely a keyring in use: point at
    // rotation rather than overwriting.
    if !force && std::fs::symlink_metadata(&file.path).is_ok_and(|m| !m.is_dir()) {
        return Err(IdentityError::ChannelExists {
            path: file.path.clone(),
        });
    }
    check_targets([file.path.as_path()], force)?;
    ensure_dir(dir)?;
    let path = file.path.clone();
    write_files(vec![file], force)?;
    Ok(path)
}

/// What [`rotate_channel`] did: the file it rewrote and the new generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotatedChannel {
    /// The channel key file, now holding one more generation.
    pub path: PathBuf,
    /// The new generation's number (1 is the key the file was created with).
    pub generation: usize,
    /// The new generation's key id, which new events carry in their header.
    pub key_id: crate::core::crypto::ChannelKeyId,
}

/// Adds a new key generation to channel key `dir/channel-name.key`, keeping
/// every earlier one: the file is read and checked whole, then rewritten
/// (atomically, mode 0600) with its text unchanged plus a comment line
/// `# generation N, key id ID, added TIME` and the new key. Nodes encrypt
/// new events under the newest generation once they restart; every
/// generation stays in the file so old events stay readable.
///
/// A channel without a key file, a damaged file, or one already holding
/// [`super::CHANNEL_KEY_GENERATIONS_MAX`] generations is refused and
/// nothing is written.
pub fn rotate_channel(dir: &Path, name: &str) -> Result<RotatedChannel, IdentityError> {
    validate_name("channel", name)?;
    let path = dir.join(format!("channel-{name}.key"));
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(IdentityError::NoSuchChannel {
                name: name.to_string(),
                path,
            });
        }
        _ => {}
    }
    let ring = super::load_channel_keyring(name, &path)?;
    if ring.len() >= super::CHANNEL_KEY_GENERATIONS_MAX {
        return Err(IdentityError::TooManyGenerations {
            path,
            max: super::CHANNEL_KEY_GENERATIONS_MAX,
        });
    }
    // The file was just parsed as UTF-8; read it again as text to keep it
    // byte for byte (comments included).
    let bytes = read_file(&path)?;
    let old = std::str::from_utf8(&bytes).map_err(|_| IdentityError::MalformedChannelKey {
        path: path.clone(),
        reason: "not UTF-8 text".into(),
    })?;
    let key = loop {
        let candidate = crate::core::crypto::ChannelKey::new(name, random_bytes::<32>());
        // 2^-128: never in practice, but a repeated key would make the file
        // unloadable.
        if ring.iter().all(|k| k.id() != candidate.id()) {
            break candidate;
        }
    };
    let generation = ring.len() + 1;
    let mut text = Zeroizing::new(String::with_capacity(old.len() + 160));
    text.push_str(old);
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "# generation {generation}, key id {}, added {}\n",
        hex::encode(key.id()),
        crate::clock::format_timestamp(now_us())
    ));
    text.push_str(&Zeroizing::new(hex::encode(key.key_bytes())));
    text.push('\n');
    write_files(vec![PendingFile::secret(path.clone(), text)], true)?;
    Ok(RotatedChannel {
        path,
        generation,
        key_id: key.id(),
    })
}

/// Revokes `dir/name.crt`: appends its name, serial, public key and the
/// current time to `dir/revoked.toml` (created if needed). Idempotent: a
/// certificate whose serial and key are both already listed is not added again.
pub fn revoke(dir: &Path, name: &str) -> Result<PathBuf, IdentityError> {
    revoke_with_status(dir, name, None).map(|(path, _)| path)
}

/// Like [`revoke`], with an optional cut-off (`None`: revoked outright), and
/// telling whether the file changed (`false`: the list already revokes the
/// certificate at least as strictly).
pub fn revoke_with_status(
    dir: &Path,
    name: &str,
    cutoff: Option<Cutoff>,
) -> Result<(PathBuf, bool), IdentityError> {
    validate_leaf_name(name)?;
    let cert_path = dir.join(format!("{name}.crt"));
    let der = read_cert_pem(&cert_path)?;
    let cert_err = |source| IdentityError::Certificate {
        path: cert_path.clone(),
        source,
    };
    let cert = parse_cert(&der).map_err(cert_err)?;
    let public_key = subject_ed25519_key(&cert).map_err(cert_err)?;
    let serial = cert.tbs_certificate.raw_serial().to_vec();

    let list_path = dir.join(REVOKED_FILE);
    let existing = match std::fs::symlink_metadata(&list_path) {
        Ok(_) => {
            let bytes = read_file(&list_path)?;
            let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                IdentityError::MalformedRevocationList {
                    path: list_path.clone(),
                    reason: "not UTF-8 text".into(),
                }
            })?;
            Some(text)
        }
        Err(_) => None,
    };
    let mut text = existing.unwrap_or_else(|| FILE_HEADER.to_string());
    let list =
        RevocationList::parse(&text).map_err(|reason| IdentityError::MalformedRevocationList {
            path: list_path.clone(),
            reason,
        })?;
    let already = match (list.revocation(&public_key, &serial), cutoff) {
        (Revocation::Outright, _) => true,
        (Revocation::From(held), Some(asked)) => held.stricter(asked) == held,
        _ => false,
    };
    if already {
        return Ok((list_path, false));
    }
    let entry = RevokedEntry {
        name: name.to_string(),
        serial: Some(hex::encode(&serial)),
        public_key: Some(hex::encode(public_key)),
        revoked_at_us: Some(now_us()),
        from_seq: cutoff.and_then(|c| c.from_seq),
        from_us: cutoff.and_then(|c| c.from_us),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push('\n');
    text.push_str(&entry_toml(&entry));
    write_files(vec![PendingFile::public(list_path.clone(), text)], true)?;
    Ok((list_path, true))
}

/// What one node of a cluster provisioned by [`init_cluster_with`] needs in
/// its config file. Paths are relative to the cluster directory. Identity
/// knows where it put the files; the config layer (above) knows the file
/// format, so it renders this into the node's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node's service name (its certificate SAN).
    pub service: String,
    /// The node's private key.
    pub key: PathBuf,
    /// The node's certificate.
    pub cert: PathBuf,
    /// The cluster CA certificate.
    pub ca: PathBuf,
    /// The (initially empty) revocation list.
    pub revoked: PathBuf,
    /// The one channel provisioned, and the default.
    pub channel: String,
    /// That channel's key file.
    pub channel_key: PathBuf,
    /// Where the node listens: `127.0.0.1:(base_port + i)`.
    pub listen: SocketAddr,
    /// Every other node: its name and listen address.
    pub peers: Vec<(String, SocketAddr)>,
}

/// Provisions a local cluster in `dir`: `dir/keys/` (CA, one node
/// certificate and key per name, `channel-default.key`, an empty
/// `revoked.toml`) and one config `dir/NAME.toml` per node, whose text
/// `node_config` renders from the node's [`ClusterNode`]. Node `i` listens
/// on `127.0.0.1:(base_port + i)` and peers with every other node. The CA
/// and node certificates are valid for `validity_days`. Every target is
/// checked before anything is written, config files included.
pub fn init_cluster_with(
    dir: &Path,
    nodes: &[String],
    base_port: u16,
    validity_days: u32,
    force: bool,
    node_config: impl Fn(&ClusterNode) -> String,
) -> Result<Vec<PathBuf>, IdentityError> {
    validate_days(validity_days)?;
    if nodes.is_empty() {
        return Err(IdentityError::InvalidArgument(
            "--nodes needs at least one node name".into(),
        ));
    }
    for (i, name) in nodes.iter().enumerate() {
        validate_leaf_name(name)?;
        if nodes[..i].contains(name) {
            return Err(IdentityError::InvalidArgument(format!(
                "node name \"{name}\" is listed twice"
            )));
        }
    }
    if base_port == 0 || u32::from(base_port) + (nodes.len() as u32 - 1) > u32::from(u16::MAX) {
        return Err(IdentityError::InvalidArgument(format!(
            "--base-port {base_port} with {} nodes does not fit in ports 1..=65535",
            nodes.len()
        )));
    }
    let keys_rel = PathBuf::from("keys");
    let keys_dir = dir.join(&keys_rel);
    let addr = |i: usize| SocketAddr::from((Ipv4Addr::LOCALHOST, base_port + i as u16));

    // Every target, checked before anything is generated or written.
    let mut targets: Vec<PathBuf> = vec![
        keys_dir.join(CA_CERT_FILE),
        keys_dir.join(CA_KEY_FILE),
        keys_dir.join(format!("channel-{DEFAULT_CHANNEL}.key")),
        keys_dir.join(REVOKED_FILE),
    ];
    for name in nodes {
        targets.push(keys_dir.join(format!("{name}.crt")));
        targets.push(keys_dir.join(format!("{name}.key")));
        targets.push(dir.join(format!("{name}.toml")));
    }
    check_targets(targets.iter().map(PathBuf::as_path), force)?;

    let (nb, na) = window(validity_days);
    let ca = generate_ca(nb, na)?;
    let mut files = vec![
        PendingFile::public(keys_dir.join(CA_CERT_FILE), cert_pem(&ca.cert_der)),
        PendingFile::secret(keys_dir.join(CA_KEY_FILE), private_key_pem(&ca.key)),
        channel_file(&keys_dir, DEFAULT_CHANNEL),
        PendingFile::public(keys_dir.join(REVOKED_FILE), FILE_HEADER),
    ];
    for name in nodes {
        let (cert_der, key) = issue_leaf(&ca, name, LeafKind::Node, nb, na)?;
        files.extend(leaf_files(&keys_dir, name, &cert_der, &key));
    }
    for (i, name) in nodes.iter().enumerate() {
        let node = ClusterNode {
            service: name.clone(),
            key: keys_rel.join(format!("{name}.key")),
            cert: keys_rel.join(format!("{name}.crt")),
            ca: keys_rel.join(CA_CERT_FILE),
            revoked: keys_rel.join(REVOKED_FILE),
            channel: DEFAULT_CHANNEL.to_string(),
            channel_key: keys_rel.join(format!("channel-{DEFAULT_CHANNEL}.key")),
            listen: addr(i),
            peers: nodes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, peer)| (peer.clone(), addr(j)))
                .collect(),
        };
        files.push(PendingFile::public(
            dir.join(format!("{name}.toml")),
            node_config(&node),
        ));
    }
    ensure_dir(dir)?;
    ensure_dir(&keys_dir)?;
    write_files(files, force)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    use ed25519_dalek::VerifyingKey;

    use super::*;
    use crate::core::transition::KeyTransition;
    use crate::identity::transition::read_transition;

    const DAY_US: u64 = US_PER_DAY;

    /// A key directory with a CA and node `a`.
    fn cluster() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path(), 30, false).unwrap();
        issue_node(dir.path(), "a", 10, false).unwrap();
        dir
    }

    /// Every file of `dir` with its bytes: what "nothing was written" is
    /// checked against.
    fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    fn public_key_of(path: &Path) -> VerifyingKey {
        read_private_key(path).unwrap().verifying_key()
    }

    fn admitted(dir: &Path, name: &str) -> AuthorCert {
        let trust = TrustAnchor::load(&dir.join(CA_CERT_FILE), None).unwrap();
        let der = read_cert_pem(&dir.join(format!("{name}.crt"))).unwrap();
        trust.admit_node(name, &der).unwrap()
    }

    /// The transition file next to `dir/name.crt`, as the payload a node
    /// would append (without its checkpoint), after checking that the file
    /// is for that very certificate.
    fn transition_for_installed_cert(dir: &Path, name: &str) -> KeyTransition {
        let cert_path = dir.join(format!("{name}.crt"));
        let der = read_cert_pem(&cert_path).unwrap();
        let auth = read_transition(&cert_path)
            .unwrap()
            .expect("a transition file");
        assert!(
            auth.is_for(name, &der),
            "the file names the installed certificate"
        );
        KeyTransition {
            kind: auth.kind,
            new_cert: der,
            authorization: auth.signature,
            final_checkpoint: Vec::new(),
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn revoke_a(dir: &Path, cutoff: Option<Cutoff>) {
        assert!(revoke_with_status(dir, "a", cutoff).unwrap().1);
    }

    const CUTOFF: Option<Cutoff> = Some(Cutoff {
        from_seq: Some(5),
        from_us: None,
    });

    #[test]
    fn rotate_writes_an_authorization_by_the_old_key_for_the_new_certificate() {
        let dir = cluster();
        let d = dir.path();
        let old_key_file = std::fs::read(d.join("a.key")).unwrap();
        let old_public = public_key_of(&d.join("a.key"));
        let old_cert = admitted(d, "a");

        let done = rotate_node_key(d, "a", 20, None).unwrap();

        assert_eq!(done.kind, TransitionKind::Rotation);
        assert_eq!(
            done.written,
            vec![
                d.join("a.prev.key"),
                d.join("a.transition"),
                d.join("a.key"),
                d.join("a.crt")
            ]
        );
        let transition = transition_for_installed_cert(d, "a");
        assert_eq!(transition.kind, TransitionKind::Rotation);
        assert!(transition.authorized_by("a", &old_public));
        let ca_public = public_key_of(&d.join(CA_KEY_FILE));
        assert!(!transition.authorized_by("a", &ca_public), "not the CA's");

        let new_cert = admitted(d, "a");
        let new_public = public_key_of(&d.join("a.key"));
        assert_eq!(
            new_cert.public_key,
            new_public.to_bytes(),
            "key matches cert"
        );
        assert_ne!(new_public, old_public, "a new key");
        assert_eq!(done.public_key, new_public.to_bytes());
        assert_eq!(done.serial, new_cert.serial);
        assert_ne!(new_cert.serial, old_cert.serial);
        assert!(new_cert.not_after_us > now_us() + 19 * DAY_US);
        assert!(new_cert.not_before_us <= now_us());

        assert_eq!(std::fs::read(d.join("a.prev.key")).unwrap(), old_key_file);
        assert_eq!(done.previous_key, Some(d.join("a.prev.key")));
        assert_eq!(mode(&d.join("a.key")), 0o600);
        assert_eq!(mode(&d.join("a.prev.key")), 0o600);
        assert_eq!(mode(&d.join("a.transition")), 0o644);
        assert!(
            snapshot(d).keys().all(|name| !name.contains(".tmp-")),
            "no temporary file left"
        );
    }

    #[test]
    fn rotate_is_refused_for_a_revoked_certificate_with_or_without_cutoff() {
        for cutoff in [CUTOFF, None] {
            let dir = cluster();
            let d = dir.path();
            revoke_a(d, cutoff);
            let before = snapshot(d);
            let e = rotate_node_key(d, "a", 10, None).unwrap_err();
            assert!(
                matches!(e, IdentityError::RotateRevoked { .. }),
                "{cutoff:?}: {e}"
            );
            assert!(e.to_string().contains("herald keygen recover"), "{e}");
            assert_eq!(snapshot(d), before, "nothing written");
        }
    }

    #[test]
    fn rotate_is_refused_for_an_unknown_name() {
        let dir = cluster();
        let d = dir.path();
        let before = snapshot(d);
        let e = rotate_node_key(d, "zz", 10, None).unwrap_err();
        assert!(
            matches!(&e, IdentityError::UnknownService { name, .. } if name == "zz"),
            "{e}"
        );
        // A certificate without its key cannot be rotated either.
        std::fs::remove_file(d.join("a.key")).unwrap();
        let e = rotate_node_key(d, "a", 10, None).unwrap_err();
        assert!(
            matches!(&e, IdentityError::UnknownService { missing, .. } if missing.ends_with("a.key")),
            "{e}"
        );
        let mut without_key = before;
        without_key.remove("a.key");
        assert_eq!(snapshot(d), without_key, "nothing written");
    }

    #[test]
    fn rotate_is_refused_under_an_expired_ca() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let now = now_us();
        let ca = generate_ca(now - 30 * DAY_US, now - DAY_US).unwrap();
        write_files(
            vec![
                PendingFile::public(d.join(CA_CERT_FILE), cert_pem(&ca.cert_der)),
                PendingFile::secret(d.join(CA_KEY_FILE), private_key_pem(&ca.key)),
            ],
            false,
        )
        .unwrap();
        issue_node_with_validity(d, "a", now - 20 * DAY_US, now - 2 * DAY_US, false).unwrap();
        let before = snapshot(d);
        let e = rotate_node_key(d, "a", 10, None).unwrap_err();
        assert!(matches!(e, IdentityError::BadCa { .. }), "{e}");
        assert!(e.to_string().contains("expired"), "{e}");
        assert_eq!(snapshot(d), before, "nothing written");
    }

    #[test]
    fn rotate_is_refused_when_the_key_is_not_the_certificates() {
        let dir = cluster();
        let d = dir.path();
        issue_node(d, "b", 10, false).unwrap();
        std::fs::copy(d.join("b.key"), d.join("a.key")).unwrap();
        let before = snapshot(d);
        let e = rotate_node_key(d, "a", 10, None).unwrap_err();
        assert!(matches!(e, IdentityError::KeyMismatch { .. }), "{e}");
        assert_eq!(snapshot(d), before, "nothing written");
    }

    #[test]
    fn a_second_rotation_waits_until_the_old_key_is_deleted() {
        let dir = cluster();
        let d = dir.path();
        rotate_node_key(d, "a", 10, None).unwrap();
        let second_key = public_key_of(&d.join("a.key"));
        let before = snapshot(d);
        let e = rotate_node_key(d, "a", 10, None).unwrap_err();
        assert!(matches!(e, IdentityError::RotationPending { .. }), "{e}");
        assert_eq!(snapshot(d), before, "the roll-back key is kept");

        // The operator saw the node switch and deleted the old key.
        std::fs::remove_file(d.join("a.prev.key")).unwrap();
        rotate_node_key(d, "a", 10, None).unwrap();
        assert!(transition_for_installed_cert(d, "a").authorized_by("a", &second_key));
    }

    #[test]
    fn a_rotation_interrupted_between_key_and_certificate_is_completed_by_a_rerun() {
        let dir = cluster();
        let d = dir.path();
        let old_public = public_key_of(&d.join("a.key"));
        // What a crash after renaming the new key leaves: the old key in
        // a.prev.key, an uncertified key in a.key, the old a.crt.
        std::fs::copy(d.join("a.key"), d.join("a.prev.key")).unwrap();
        write_files(
            vec![PendingFile::secret(
                d.join("a.key"),
                private_key_pem(&generate_key()),
            )],
            true,
        )
        .unwrap();

        rotate_node_key(d, "a", 10, None).unwrap();
        assert!(transition_for_installed_cert(d, "a").authorized_by("a", &old_public));
        assert_eq!(
            admitted(d, "a").public_key,
            public_key_of(&d.join("a.key")).to_bytes()
        );
        assert_eq!(public_key_of(&d.join("a.prev.key")), old_public);
    }

    #[test]
    fn recover_is_refused_while_the_certificate_is_not_revoked() {
        let dir = cluster();
        let d = dir.path();
        let before = snapshot(d);
        let e = recover_node_key(d, "a", 10, None).unwrap_err();
        assert!(matches!(e, IdentityError::RecoverNotRevoked { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("herald keygen revoke --name a --from-seq"),
            "{e}"
        );
        assert_eq!(snapshot(d), before, "nothing written");
    }

    #[test]
    fn recover_is_authorized_by_the_ca_key_and_needs_no_old_key() {
        let dir = cluster();
        let d = dir.path();
        let old_key_file = std::fs::read(d.join("a.key")).unwrap();
        let old_public = public_key_of(&d.join("a.key"));
        revoke_a(d, CUTOFF);

        let done = recover_node_key(d, "a", 10, None).unwrap();
        assert_eq!(done.kind, TransitionKind::Recovery);
        let transition = transition_for_installed_cert(d, "a");
        assert_eq!(transition.kind, TransitionKind::Recovery);
        assert!(transition.authorized_by("a", &public_key_of(&d.join(CA_KEY_FILE))));
        assert!(
            !transition.authorized_by("a", &old_public),
            "not the thief's key"
        );
        assert_eq!(
            admitted(d, "a").public_key,
            public_key_of(&d.join("a.key")).to_bytes()
        );
        assert_eq!(std::fs::read(d.join("a.prev.key")).unwrap(), old_key_file);

        // Without the old key (it is on the stolen machine): no a.prev.key.
        let dir = cluster();
        let d = dir.path();
        revoke_a(d, None);
        std::fs::remove_file(d.join("a.key")).unwrap();
        let done = recover_node_key(d, "a", 10, None).unwrap();
        assert_eq!(done.previous_key, None);
        assert!(!d.join("a.prev.key").exists());
        assert_eq!(
            done.written,
            vec![d.join("a.transition"), d.join("a.key"), d.join("a.crt")]
        );
        assert!(
            transition_for_installed_cert(d, "a")
                .authorized_by("a", &public_key_of(&d.join(CA_KEY_FILE)))
        );
    }

    #[test]
    fn recover_with_the_key_of_a_rolled_over_ca_is_authorized_by_that_ca() {
        let dir = cluster();
        let d = dir.path();
        let rolled = rollover_ca(d, 30).unwrap();
        revoke_a(d, CUTOFF);

        recover_node_key(d, "a", 10, Some(&rolled.key)).unwrap();
        let transition = transition_for_installed_cert(d, "a");
        assert!(transition.authorized_by("a", &public_key_of(&rolled.key)));
        assert!(!transition.authorized_by("a", &public_key_of(&d.join(CA_KEY_FILE))));
        // The new certificate is CA 2's too.
        let ca2 = TrustAnchor::load(&rolled.cert, None).unwrap();
        let der = read_cert_pem(&d.join("a.crt")).unwrap();
        assert!(ca2.admit_node("a", &der).is_ok());
    }
}
