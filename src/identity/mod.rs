//! Identity and trust: certificates, keys, the trust anchor and revocation.
//!
//! A cluster has a certificate authority (an Ed25519 key and a self-signed
//! X.509 CA certificate); during a CA rollover, several, held in one CA
//! bundle file, some possibly retired (see [`bundle`]). Node certificates name their service in a DNS SAN and
//! hold the Ed25519 key that signs the node's events, so the TLS peer and the
//! event author are one identity (see the architecture brief, section 2).
//!
//! * [`TrustAnchor`] is the pure verifier: the CA bundle (one CA, or
//!   several during a CA rollover, see [`bundle`]) plus the
//!   [`RevocationList`]. [`TrustAnchor::admit_author`] turns certificate DER
//!   into an [`AuthorCert`] or a [`CertError`] naming the reason.
//! * [`NodeIdentity`] is a node's own signing key and admitted certificate.
//! * The `keygen` functions ([`create_ca`], [`rollover_ca`], [`retire_ca`],
//!   [`issue_node`], [`issue_client`],
//!   [`create_channel`], [`revoke`], [`init_cluster_with`]) write standard PEM files
//!   that OpenSSL reads. Private keys are PKCS#8 v1, mode 0600, and are never
//!   overwritten without `force`.
//!
//! File formats: certificates are PEM `CERTIFICATE`, private keys PEM
//! `PRIVATE KEY` (RFC 8410 PKCS#8; v1 written, v1 and v2 read), channel keys one
//! line of 64 lowercase hex characters per key generation, oldest first (see
//! [`load_channel_keyring`]), revocation
//! lists TOML (see [`revocation`]).

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::core::crypto::ChannelKey;

pub mod bundle;
pub mod keygen;
pub mod pem;
pub mod revocation;
pub mod transition;
pub mod trust;

pub use crate::core::cert::{AuthorCert, CertError};
pub use keygen::{
    ClusterNode, NodeKeyTransition, RetiredCa, RolledCa, RotatedChannel, create_ca, create_channel,
    init_cluster_with, issue_client, issue_client_with_ca, issue_client_with_validity, issue_node,
    issue_node_with_ca, issue_node_with_validity, previous_key_path, recover_node_key, renew_node,
    renew_node_with_ca, retire_ca, revoke, revoke_with_status, rollover_ca, rotate_channel,
    rotate_node_key,
};
pub use pem::read_cert_pem;
pub use revocation::RevocationList;
pub use trust::{CaCert, CertRole, TrustAnchor};

/// Longest service or channel name, in bytes (a DNS label).
pub const NAME_BYTES_MAX: usize = 63;

/// Largest identity file (PEM key or certificate, channel key, revocation
/// list) read into memory.
pub const IDENTITY_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Errors loading or writing identity files. Every variant about a file names
/// the path and the reason.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{}: file not found", .path.display())]
    Missing { path: PathBuf },
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: file is {size} bytes, more than the limit of {max}", .path.display())]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{}: malformed PEM: {reason}", .path.display())]
    MalformedPem { path: PathBuf, reason: String },
    #[error("{}: wrong key type: {found}; expected an Ed25519 PKCS#8 private key", .path.display())]
    WrongKeyType { path: PathBuf, found: String },
    #[error("{}: malformed private key: {reason}", .path.display())]
    MalformedKey { path: PathBuf, reason: String },
    #[error("private key {} does not match certificate {}", .key.display(), .cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("certificate {} rejected: {source}", .path.display())]
    Certificate {
        path: PathBuf,
        #[source]
        source: CertError,
    },
    #[error("CA certificate {origin}: {reason}")]
    BadCa { origin: String, reason: String },
    #[error("private key {} does not match certificate {}: it is the key of none of the CAs the bundle holds", .key.display(), .bundle.display())]
    NoSuchCa { key: PathBuf, bundle: PathBuf },
    #[error("{}: malformed channel key: {reason}", .path.display())]
    MalformedChannelKey { path: PathBuf, reason: String },
    #[error("{} already exists; pass --rotate to add a key generation (events under the older ones stay readable), or --force to replace every generation it holds (events under them become unreadable); nothing was written", .path.display())]
    ChannelExists { path: PathBuf },
    #[error("channel {name:?} has no key file {} to rotate; create it first with `herald keygen channel --name {name}` (nothing was written)", .path.display())]
    NoSuchChannel { name: String, path: PathBuf },
    #[error("{}: already holds {max} key generations, the limit; nothing was written", .path.display())]
    TooManyGenerations { path: PathBuf, max: usize },
    #[error("{}: malformed revocation list: {reason}", .path.display())]
    MalformedRevocationList { path: PathBuf, reason: String },
    #[error("{} already exists; pass --force to overwrite it (nothing was written)", .path.display())]
    WouldOverwrite { path: PathBuf },
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a directory", .path.display())]
    NotADirectory { path: PathBuf },
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        kind: &'static str,
        name: String,
        reason: String,
    },
    #[error(
        "no node named \"{name}\" in {}: {} does not exist (issue one with `herald keygen node`)",
        .dir.display(),
        .missing.display()
    )]
    UnknownService {
        name: String,
        dir: PathBuf,
        missing: PathBuf,
    },
    #[error("{}: malformed key transition authorization: {reason}", .path.display())]
    BadTransition { path: PathBuf, reason: String },
    #[error(
        "certificate {} of \"{name}\" is revoked in {}: a revoked key cannot authorize its successor; move the feed with `herald keygen recover --name {name}` (authorized by the CA key) instead; nothing was written",
        .cert.display(),
        .list.display()
    )]
    RotateRevoked {
        name: String,
        cert: PathBuf,
        list: PathBuf,
    },
    #[error(
        "certificate {} of \"{name}\" is not revoked in {}: a recovery of a key that is still trusted would let whoever holds it keep signing; revoke it first with `herald keygen revoke --name {name} --from-seq S` (S: the first sequence number its owner did not write), or, if the key is not compromised, use `herald keygen rotate`; nothing was written",
        .cert.display(),
        .list.display()
    )]
    RecoverNotRevoked {
        name: String,
        cert: PathBuf,
        list: PathBuf,
    },
    #[error(
        "{} holds the old key of an earlier rotation of \"{name}\", not the key of {}: rotating again before node {name} has moved its feed to the current key would leave the feed without an authorization from its own key; once `herald status` on node {name} shows the key of {}, delete {} and rerun; nothing was written",
        .previous.display(),
        .cert.display(),
        .cert.display(),
        .previous.display()
    )]
    RotationPending {
        name: String,
        previous: PathBuf,
        cert: PathBuf,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("cannot create certificate: {0}")]
    Generate(String),
}

/// Checks that `name` is a DNS label: `[a-z0-9-]`, 1..=63 bytes, not starting
/// or ending with `-`. `kind` ("service", "channel") names the value in errors.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), IdentityError> {
    let fail = |reason: &str| IdentityError::InvalidName {
        kind,
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(fail("must not be empty"));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(fail(&format!(
            "is {} bytes, longer than {NAME_BYTES_MAX}",
            name.len()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(fail(&format!(
            "contains {c:?}; only lowercase letters a-z, digits 0-9 and '-' are allowed"
        )));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(fail("must not start or end with '-'"));
    }
    Ok(())
}

/// Reads a whole identity file, refusing files larger than
/// [`IDENTITY_FILE_BYTES_MAX`]. The buffer is zeroized on drop because it may
/// hold key material.
pub(crate) fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| io_read_error(path, e))?;
    let meta = file.metadata().map_err(|e| io_read_error(path, e))?;
    if meta.is_dir() {
        return Err(IdentityError::Read {
            path: path.to_path_buf(),
            source: std::io::Error::other("is a directory"),
        });
    }
    if meta.len() > IDENTITY_FILE_BYTES_MAX {
        return Err(IdentityError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
            max: IDENTITY_FILE_BYTES_MAX,
        });
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    file.take(IDENTITY_FILE_BYTES_MAX + 1)
        .read_to_end(&mut buf)
        .map_err(|e| io_read_error(path, e))?;
    if buf.len() as u64 > IDENTITY_FILE_BYTES_MAX {
        return Err(IdentityError::TooLarge {
            path: path.to_path_buf(),
            size: buf.len() as u64,
            max: IDENTITY_FILE_BYTES_MAX,
        });
    }
    Ok(buf)
}

fn io_read_error(path: &Path, e: std::io::Error) -> IdentityError {
    if e.kind() == std::io::ErrorKind::NotFound {
        IdentityError::Missing {
            path: path.to_path_buf(),
        }
    } else {
        IdentityError::Read {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// A node's own identity: its signing key and its admitted certificate.
#[derive(Clone)]
pub struct NodeIdentity {
    pub service: String,
    pub signing_key: ed25519_dalek::SigningKey,
    pub cert: AuthorCert,
    /// The authorization next to the certificate (`NAME.transition`) for
    /// a move of the feed to this certificate's key, if there is one for
    /// this very certificate (see [`transition`]).
    pub transition: Option<transition::TransitionAuthorization>,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("service", &self.service)
            .field("public_key", &hex::encode(self.cert.public_key))
            .field("serial", &hex::encode(&self.cert.serial))
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Loads a node's PKCS#8 key and cert, admits the cert through `trust` for
    /// `service`, checks the key matches the cert's public key and that
    /// `now_us` is inside the validity window.
    pub fn load(
        service: &str,
        key_path: &Path,
        cert_path: &Path,
        trust: &TrustAnchor,
        now_us: u64,
    ) -> Result<Self, IdentityError> {
        validate_name("service", service)?;
        let signing_key = pem::read_private_key(key_path)?;
        let der = read_cert_pem(cert_path)?;
        let cert_err = |source| IdentityError::Certificate {
            path: cert_path.to_path_buf(),
            source,
        };
        // A node's own certificate serves connections: a retired CA's is
        // refused here, with a message saying to renew it, and so is a
        // revoked one (with a cut-off or without).
        let cert = trust.admit_node(service, &der).map_err(cert_err)?;
        if signing_key.verifying_key().to_bytes() != cert.public_key {
            return Err(IdentityError::KeyMismatch {
                key: key_path.to_path_buf(),
                cert: cert_path.to_path_buf(),
            });
        }
        cert.check_time(now_us).map_err(cert_err)?;
        // One for an earlier certificate is left over from a transition
        // done before: it means nothing for this one.
        let transition =
            transition::read_transition(cert_path)?.filter(|t| t.is_for(service, &cert.der));
        Ok(NodeIdentity {
            service: service.to_string(),
            signing_key,
            cert,
            transition,
        })
    }
}

/// Most key generations one channel key file may hold. Rotation refuses to
/// add a generation beyond it; loading refuses a file with more.
pub const CHANNEL_KEY_GENERATIONS_MAX: usize = 256;

/// Loads the newest generation of a channel key file (the key new events on
/// the channel are encrypted under). See [`load_channel_keyring`] for the
/// format; an old single-key file is a keyring of one generation.
pub fn load_channel_key(name: &str, path: &Path) -> Result<ChannelKey, IdentityError> {
    let mut ring = load_channel_keyring(name, path)?;
    ring.pop()
        .ok_or_else(|| IdentityError::MalformedChannelKey {
            path: path.to_path_buf(),
            reason: "holds no key".into(),
        })
}

/// Loads every generation of a channel key file, oldest first (the last is
/// the one new events use).
///
/// The file is UTF-8 text, one key per line: 64 lowercase hex characters (32
/// bytes), optionally surrounded by whitespace. Empty lines and lines whose
/// first non-blank character is `#` are ignored (rotation writes a comment
/// naming each new generation's number, key id and time). It must hold at
/// least one key, at most [`CHANNEL_KEY_GENERATIONS_MAX`], and no key twice.
/// Anything else is rejected, naming the line.
pub fn load_channel_keyring(name: &str, path: &Path) -> Result<Vec<ChannelKey>, IdentityError> {
    validate_name("channel", name)?;
    let bytes = read_file(path)?;
    let malformed = |reason: String| IdentityError::MalformedChannelKey {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| malformed("not UTF-8 text; expected 64 lowercase hex characters".into()))?;
    let mut ring: Vec<ChannelKey> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |reason: String| malformed(format!("line {}: {reason}", i + 1));
        if line.len() != 64 {
            return Err(at(format!(
                "expected 64 lowercase hex characters, found {} characters",
                line.chars().count()
            )));
        }
        if let Some(c) = line
            .chars()
            .find(|c| !(c.is_ascii_digit() || ('a'..='f').contains(c)))
        {
            return Err(at(format!(
                "unexpected character {c:?}; expected 64 lowercase hex characters"
            )));
        }
        if ring.len() == CHANNEL_KEY_GENERATIONS_MAX {
            return Err(malformed(format!(
                "holds more than {CHANNEL_KEY_GENERATIONS_MAX} key generations"
            )));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(line, &mut key[..]).map_err(|e| at(e.to_string()))?;
        let key = ChannelKey::new(name, *key);
        if let Some(g) = ring.iter().position(|k| k.id() == key.id()) {
            return Err(at(format!(
                "repeats the key of generation {} (key id {})",
                g + 1,
                hex::encode(key.id())
            )));
        }
        ring.push(key);
    }
    if ring.is_empty() {
        return Err(malformed(
            "holds no key; expected 64 lowercase hex characters".into(),
        ));
    }
    Ok(ring)
}

/// Longest excerpt of the offending line quoted in a TOML error.
pub const TOML_ERROR_EXCERPT_CHARS_MAX: usize = 80;

/// One line naming where a TOML document is wrong and why:
/// `line 8, column 10 (`listen = "nope"`): invalid socket address syntax`.
/// The toml crate's own rendering spans several lines (a source excerpt with
/// a caret), which breaks the one-line error contract of the command line.
/// It lives in identity, the lowest layer that reads TOML (the revocation
/// list); the config file and saga definitions use it too.
pub fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim().replace('\n', " ");
    let Some(span) = error.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let before = text.get(..start).unwrap_or("");
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return format!("line {line_no}, column {column}: {message}");
    }
    let mut excerpt: String = line.chars().take(TOML_ERROR_EXCERPT_CHARS_MAX).collect();
    if line.chars().count() > TOML_ERROR_EXCERPT_CHARS_MAX {
        excerpt.push_str("...");
    }
    format!("line {line_no}, column {column} (`{excerpt}`): {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for ok in ["a", "node-1", "0", &"x".repeat(63)] {
            assert!(validate_name("service", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "ü", &"x".repeat(64)] {
            let e = validate_name("service", bad).unwrap_err();
            assert!(e.to_string().contains("invalid service name"), "{e}");
        }
    }

    #[test]
    fn channel_key_format() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let hexkey = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        std::fs::write(&p, format!("  {hexkey}\n\n")).unwrap();
        let k = load_channel_key("default", &p).unwrap();
        assert_eq!(hex::encode(k.key_bytes()), hexkey);
        assert_eq!(k.name(), "default");

        for bad in [
            hexkey.to_uppercase(),
            hexkey[..62].to_string(),
            format!("{hexkey}00"),
            format!("{} {}", &hexkey[..32], &hexkey[32..]),
            String::new(),
        ] {
            std::fs::write(&p, &bad).unwrap();
            let e = load_channel_key("default", &p).unwrap_err();
            assert!(
                matches!(e, IdentityError::MalformedChannelKey { .. }),
                "{e}"
            );
            assert!(e.to_string().contains(&p.display().to_string()));
        }
        let missing = dir.path().join("nope");
        let e = load_channel_key("default", &missing).unwrap_err();
        assert!(matches!(e, IdentityError::Missing { .. }), "{e}");
    }

    #[test]
    fn keyring_holds_generations_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let g1 = "11".repeat(32);
        let g2 = "22".repeat(32);
        std::fs::write(&p, format!("{g1}\n\n# generation 2, key id x\n  {g2}  \n")).unwrap();
        let ring = load_channel_keyring("c", &p).unwrap();
        assert_eq!(ring.len(), 2);
        assert_eq!(hex::encode(ring[0].key_bytes()), g1);
        assert_eq!(hex::encode(ring[1].key_bytes()), g2);
        assert!(ring.iter().all(|k| k.name() == "c"));
        // The key new events use is the newest.
        let newest = load_channel_key("c", &p).unwrap();
        assert_eq!(newest.id(), ring[1].id());

        // A key twice, a bad line among good ones, or only comments: refused,
        // naming the line.
        std::fs::write(&p, format!("{g1}\n{g2}\n{g1}\n")).unwrap();
        let e = load_channel_keyring("c", &p).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("generation 1"), "{e}");
        std::fs::write(&p, format!("{g1}\n{}\n", &g2[..60])).unwrap();
        let e = load_channel_keyring("c", &p).unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains("found 60 characters"),
            "{e}"
        );
        std::fs::write(&p, "# only a comment\n").unwrap();
        let e = load_channel_keyring("c", &p).unwrap_err().to_string();
        assert!(e.contains("holds no key"), "{e}");

        // More generations than the limit.
        let many: String = (0..=CHANNEL_KEY_GENERATIONS_MAX)
            .map(|i| format!("{:064x}\n", i + 1))
            .collect();
        std::fs::write(&p, many).unwrap();
        let e = load_channel_keyring("c", &p).unwrap_err().to_string();
        assert!(e.contains("more than 256 key generations"), "{e}");
    }

    #[test]
    fn rotation_appends_a_generation_and_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let path = create_channel(dir.path(), "c", false).unwrap();
        let before = std::fs::read_to_string(&path).unwrap();
        let first = load_channel_keyring("c", &path).unwrap();
        let r = rotate_channel(dir.path(), "c").unwrap();
        assert_eq!(r.generation, 2);
        assert_eq!(r.path, path);
        let after = std::fs::read_to_string(&path).unwrap();
        assert!(
            after.starts_with(&before),
            "earlier generations kept as they were"
        );
        let ring = load_channel_keyring("c", &path).unwrap();
        assert_eq!(ring.len(), 2);
        assert_eq!(ring[0].id(), first[0].id());
        assert_eq!(ring[1].id(), r.key_id);
        assert_ne!(ring[0].id(), ring[1].id());
        assert!(after.contains(&format!("# generation 2, key id {}", hex::encode(r.key_id))));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Creating it again is refused and points at rotation.
        let e = create_channel(dir.path(), "c", false).unwrap_err();
        assert!(matches!(e, IdentityError::ChannelExists { .. }), "{e}");
        assert!(e.to_string().contains("--rotate"), "{e}");
        assert_eq!(load_channel_keyring("c", &path).unwrap().len(), 2);
        let r3 = rotate_channel(dir.path(), "c").unwrap();
        assert_eq!(r3.generation, 3);
        assert_eq!(load_channel_keyring("c", &path).unwrap().len(), 3);
    }

    #[test]
    fn rotation_refuses_bad_input_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let e = rotate_channel(dir.path(), "nope").unwrap_err();
        assert!(matches!(e, IdentityError::NoSuchChannel { .. }), "{e}");
        assert!(
            e.to_string().contains("herald keygen channel --name nope"),
            "{e}"
        );
        assert!(!dir.path().join("channel-nope.key").exists());

        let damaged = dir.path().join("channel-bad.key");
        std::fs::write(&damaged, "not a key\n").unwrap();
        let e = rotate_channel(dir.path(), "bad").unwrap_err();
        assert!(
            matches!(e, IdentityError::MalformedChannelKey { .. }),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&damaged).unwrap(), "not a key\n");

        let e = rotate_channel(dir.path(), "Bad").unwrap_err();
        assert!(matches!(e, IdentityError::InvalidName { .. }), "{e}");

        let full = dir.path().join("channel-full.key");
        let text: String = (0..CHANNEL_KEY_GENERATIONS_MAX)
            .map(|i| format!("{:064x}\n", i + 1))
            .collect();
        std::fs::write(&full, &text).unwrap();
        let e = rotate_channel(dir.path(), "full").unwrap_err();
        assert!(matches!(e, IdentityError::TooManyGenerations { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&full).unwrap(), text);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 2, "no temporary file left behind");
    }
}
