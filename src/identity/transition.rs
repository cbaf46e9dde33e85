//! The authorization file of a key transition, `NAME.transition` next to
//! the node's certificate: written by `herald keygen rotate` (signed with
//! the node's old key) or `herald keygen recover` (signed with the CA key),
//! read by the node when its configured certificate is for another key
//! than its feed's (at start or on reload), which then appends the key
//! transition (`core::transition`) to its feed.
//!
//! The file is text, one `field value` per line:
//!
//! ```text
//! herald key transition v1
//! kind rotation
//! service a
//! certificate-sha256 <64 hex digits: SHA-256 of the new certificate's DER>
//! authorization <128 hex digits: the Ed25519 signature>
//! ```

use std::path::{Path, PathBuf};

use super::IdentityError;
use crate::core::transition::{TransitionKind, cert_digest};

/// First line of every authorization file.
pub const TRANSITION_FILE_HEADER: &str = "herald key transition v1";

/// Largest authorization file read.
pub const TRANSITION_FILE_BYTES_MAX: u64 = 4096;

/// A key transition's authorization, as a file holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionAuthorization {
    pub kind: TransitionKind,
    pub service: String,
    /// SHA-256 of the new certificate's DER.
    pub cert_sha256: [u8; 32],
    /// Ed25519 signature over `core::transition::authorization_message`.
    pub signature: [u8; 64],
}

impl TransitionAuthorization {
    /// The file's text.
    pub fn to_text(&self) -> String {
        format!(
            "{TRANSITION_FILE_HEADER}\nkind {}\nservice {}\ncertificate-sha256 {}\nauthorization {}\n",
            self.kind.name(),
            self.service,
            hex::encode(self.cert_sha256),
            hex::encode(self.signature)
        )
    }

    /// Parses [`Self::to_text`]'s form; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<TransitionAuthorization, IdentityError> {
        let bad = |reason: String| IdentityError::BadTransition {
            path: path.to_path_buf(),
            reason,
        };
        let mut lines = text.lines();
        if lines.next() != Some(TRANSITION_FILE_HEADER) {
            return Err(bad(format!(
                "the first line is not {TRANSITION_FILE_HEADER:?}"
            )));
        }
        let mut field = |name: &str| -> Result<String, IdentityError> {
            let line = lines
                .next()
                .ok_or_else(|| bad(format!("the {name} line is missing")))?;
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(str::to_string)
                .ok_or_else(|| bad(format!("expected a {name} line, found {line:?}")))
        };
        let kind_name = field("kind")?;
        let kind = TransitionKind::from_name(&kind_name).ok_or_else(|| {
            bad(format!(
                "kind {kind_name:?} is neither rotation nor recovery"
            ))
        })?;
        let service = field("service")?;
        let digest = field("certificate-sha256")?;
        let signature = field("authorization")?;
        let cert_sha256 = hex_array::<32>(&digest)
            .ok_or_else(|| bad("certificate-sha256 is not 64 hex digits".into()))?;
        let signature = hex_array::<64>(&signature)
            .ok_or_else(|| bad("authorization is not 128 hex digits".into()))?;
        if lines.any(|l| !l.trim().is_empty()) {
            return Err(bad("there are lines after the authorization".into()));
        }
        Ok(TransitionAuthorization {
            kind,
            service,
            cert_sha256,
            signature,
        })
    }

    /// Whether it is for `service`'s move to the certificate `cert_der`.
    pub fn is_for(&self, service: &str, cert_der: &[u8]) -> bool {
        self.service == service && self.cert_sha256 == cert_digest(cert_der)
    }
}

/// Where the authorization for the certificate at `cert_path` is kept:
/// the same path with the extension `.transition` (`keys/a.crt` →
/// `keys/a.transition`).
pub fn transition_path(cert_path: &Path) -> PathBuf {
    cert_path.with_extension("transition")
}

/// Reads the authorization file next to `cert_path`, if there is one.
pub fn read_transition(cert_path: &Path) -> Result<Option<TransitionAuthorization>, IdentityError> {
    let path = transition_path(cert_path);
    let meta = match std::fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(IdentityError::Read { path, source }),
    };
    if meta.len() > TRANSITION_FILE_BYTES_MAX {
        return Err(IdentityError::TooLarge {
            path,
            size: meta.len(),
            max: TRANSITION_FILE_BYTES_MAX,
        });
    }
    let text = std::fs::read_to_string(&path).map_err(|source| IdentityError::Read {
        path: path.clone(),
        source,
    })?;
    TransitionAuthorization::parse(&text, &path).map(Some)
}

fn hex_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TransitionAuthorization {
        TransitionAuthorization {
            kind: TransitionKind::Recovery,
            service: "a".into(),
            cert_sha256: [3u8; 32],
            signature: [9u8; 64],
        }
    }

    #[test]
    fn a_file_reads_back_what_was_written() {
        let a = sample();
        assert_eq!(
            TransitionAuthorization::parse(&a.to_text(), Path::new("a.transition")).unwrap(),
            a
        );
    }

    #[test]
    fn a_damaged_file_names_the_file_and_the_line() {
        let text = sample().to_text();
        for (damaged, why) in [
            (text.replace("v1", "v2"), "first line"),
            (text.replace("kind recovery", "kind theft"), "theft"),
            (text.replace("service a", "servce a"), "service"),
            (text.replace(&hex::encode([3u8; 32]), "00"), "64 hex"),
            (text.replace(&hex::encode([9u8; 64]), "zz"), "128 hex"),
            (format!("{text}extra\n"), "after"),
        ] {
            let e = TransitionAuthorization::parse(&damaged, Path::new("k/a.transition"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("k/a.transition") && e.contains(why), "{e}");
        }
    }

    #[test]
    fn the_file_sits_next_to_the_certificate() {
        assert_eq!(
            transition_path(Path::new("keys/a.crt")),
            PathBuf::from("keys/a.transition")
        );
    }
}
