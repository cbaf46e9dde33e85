//! C2SP text formats for Merkle feeds: signed notes, checkpoints, Ed25519
//! cosignatures (v1) and proofs.
//!
//! A feed's author signs one checkpoint per sealed batch. The checkpoint is a
//! [C2SP tlog-checkpoint] carried in a [C2SP signed note]; peers add
//! [C2SP tlog-cosignature] v1 signatures to the same note; `herald prove`
//! writes a [C2SP tlog-proof]. This module only reads and writes those texts
//! and signs and checks their signatures. It is sans-IO: the caller passes
//! every key, text and timestamp in.
//!
//! # One encoding per value
//!
//! Every type here has private fields and is built only by a constructor or a
//! parser that checks the spec's rules. So `to_text()` of any value parses
//! back to an equal value, and `parse` followed by `to_text()` gives back the
//! input byte for byte. Base64 is decoded strictly (RFC 4648 section 4,
//! canonical padding, unused bits zero), so no two texts decode to the same
//! signature or hash. Go's `encoding/base64.StdEncoding` tolerates non-zero
//! unused bits; a note that relies on that is rejected here.
//!
//! # What is enforced
//!
//! Signed notes (signed-note.md), on parse and on construction:
//! * the whole note is valid UTF-8, at most [`NOTE_BYTES_MAX`] bytes, with no
//!   control character (below U+0020) other than newline;
//! * the text ends with a newline and is separated from the signatures by the
//!   *last* blank line of the note;
//! * there are 1 to [`NOTE_SIGNATURES_MAX`] signature lines, each
//!   `— <name> <base64>` ending in a newline;
//! * key names are non-empty, without Unicode spaces, `+` or control
//!   characters;
//! * a signature decodes to a 4-byte key ID and at least one more byte.
//!
//! Signatures from unknown keys are kept, so the note re-serialises exactly,
//! and ignored by every verifier here. A verifier looks only at signatures
//! whose key name *and* key ID both match the key it was given; all of those
//! must verify ("clients SHOULD reject the whole note"), and at least one must
//! exist. Ed25519 signatures are checked with herald's one cofactored rule,
//! [`verify_single`].
//!
//! Checkpoints (tlog-checkpoint.md), see [`Checkpoint`]: at least three lines;
//! the origin is non-empty; the tree size is ASCII decimal without leading
//! zeros that fits in a `u64`; the root hash is base64 of exactly 32 bytes;
//! extension lines are non-empty, at most [`CHECKPOINT_EXTENSIONS_MAX`]. The
//! origin's SHOULD (no Unicode spaces, no `+`) is enforced only on checkpoints
//! herald builds with [`Checkpoint::new`]: the spec tells clients not to
//! assume it, so [`Checkpoint::parse_body`] accepts such origins. The SHOULD
//! that the log's key name equals the origin is left to the caller:
//! [`sign_checkpoint`] and [`open_checkpoint`] take the key name separately.
//!
//! Cosignatures (tlog-cosignature.md): only the Ed25519 v1 type (0x04) is
//! produced and verified; an ML-DSA-44 cosignature (0x06) is kept on the note
//! as an unknown signature. A v1 cosignature is the key ID, a big-endian
//! timestamp of at most 2^63 - 1 and 64 signature bytes, over
//! `cosignature/v1\ntime <ts>\n` followed by the checkpoint body. Cosigning
//! takes a [`Checkpoint`], not free text, so herald never cosigns anything
//! else. Whether a timestamp is too far in the future is the caller's policy.
//!
//! Verifier keys: only types 0x01 and 0x04 with the recommended key ID, a
//! 32-byte key that is not of small order, and a lowercase hex key ID.
//!
//! Proofs (tlog-proof.md), see [`ProofText`]: the layout exactly, at most
//! [`PROOF_HASHES_MAX`] hashes of 32 bytes, `extra` of at most
//! [`PROOF_EXTRA_BYTES_MAX`] bytes, and a checkpoint that parses. Whether the
//! path length fits the index and tree size is left to the inclusion check.
//!
//! [C2SP signed note]: https://c2sp.org/signed-note
//! [C2SP tlog-checkpoint]: https://c2sp.org/tlog-checkpoint
//! [C2SP tlog-cosignature]: https://c2sp.org/tlog-cosignature
//! [C2SP tlog-proof]: https://c2sp.org/tlog-proof

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::crypto::{self, Hash};
use super::signature::verify_single;

/// Largest signed note accepted or built, in bytes. The spec requires
/// accepting at least 16 signatures of any type; 16 ML-DSA-44 cosignature
/// lines (about 3.3 KB each in base64) plus a checkpoint fit in 64 KiB, while
/// a herald note (Ed25519 only) stays far below it.
pub const NOTE_BYTES_MAX: usize = 64 * 1024;
/// Most signature lines on one note. The spec requires at least 16.
pub const NOTE_SIGNATURES_MAX: usize = 100;
/// Most extension lines on one checkpoint. The spec discourages extension
/// lines, and herald writes none; this only bounds what a peer can send.
pub const CHECKPOINT_EXTENSIONS_MAX: usize = 16;
/// Longest verifier key string accepted by [`VerifierKey::parse`]: a long key
/// name plus `+`, 8 hex digits, `+` and 44 base64 characters.
pub const VKEY_BYTES_MAX: usize = 1024;
/// Most hashes in a proof's inclusion path. An RFC 6962 path has at most one
/// hash per tree level, and 64 levels cover every `u64` tree size.
pub const PROOF_HASHES_MAX: usize = 64;
/// Largest opaque `extra` data in a proof, in decoded bytes.
pub const PROOF_EXTRA_BYTES_MAX: usize = 4096;
/// Largest proof text: every line of a proof at its limits, plus the note.
pub const PROOF_BYTES_MAX: usize = PROOF_HEADER.len()
    + 1
    + EXTRA_PREFIX.len()
    + base64_len(PROOF_EXTRA_BYTES_MAX)
    + 1
    + INDEX_PREFIX.len()
    + 20 // digits of u64::MAX
    + 1
    + PROOF_HASHES_MAX * (base64_len(32) + 1)
    + 1
    + NOTE_BYTES_MAX;

/// Signature type byte of an Ed25519 note signature (signed-note.md).
pub const SIG_TYPE_ED25519: u8 = 0x01;
/// Signature type byte of an Ed25519 timestamped cosignature, v1
/// (tlog-cosignature.md).
pub const SIG_TYPE_COSIGNATURE_V1: u8 = 0x04;
/// Latest timestamp a v1 cosignature may carry: 2^63 - 1 seconds.
pub const COSIGNATURE_TIMESTAMP_MAX: u64 = i64::MAX as u64;
/// Bytes of a v1 cosignature after its key ID: a big-endian `u64` timestamp
/// and a 64-byte Ed25519 signature.
pub const COSIGNATURE_V1_BYTES: usize = 8 + 64;
/// First line of every proof text (tlog-proof.md).
pub const PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";

/// Starts every signature line: an em dash (U+2014) and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";
/// Domain-separating first line of the message a v1 cosignature signs.
const COSIGNATURE_V1_HEADER: &str = "cosignature/v1\n";
const EXTRA_PREFIX: &str = "extra ";
const INDEX_PREFIX: &str = "index ";

/// Why a note, checkpoint, cosignature, verifier key or proof was refused.
/// Line numbers count from 1 in the text named by `what`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("{what} is {found} bytes, over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        found: usize,
        limit: usize,
    },
    #[error("{what} is not valid UTF-8 (first bad byte at offset {offset})")]
    NotUtf8 { what: &'static str, offset: usize },
    #[error(
        "{what} line {line} contains control character {code:#04x}; only newline (0x0a) is allowed"
    )]
    ControlCharacter {
        what: &'static str,
        line: usize,
        code: u8,
    },
    #[error("{what} line {line} does not end with a newline")]
    UnterminatedLine { what: &'static str, line: usize },
    #[error("note text must end with a newline")]
    TextNotTerminated,
    #[error("note has no blank line separating its text from its signatures")]
    MissingBlankLine,
    #[error("note has no signature lines after its blank line")]
    NoSignatures,
    #[error("note has more than {limit} signatures")]
    TooManySignatures { limit: usize },
    #[error("note line {line} is not a signature line: it {reason}")]
    SignatureLine { line: usize, reason: &'static str },
    #[error("note line {line}: key name {reason}")]
    SignatureKeyName { line: usize, reason: &'static str },
    #[error("note line {line}: signature is not canonical standard base64")]
    SignatureBase64 { line: usize },
    #[error(
        "note line {line}: signature is {found} bytes; a 4-byte key ID and at least one signature byte are required"
    )]
    SignatureTooShort { line: usize, found: usize },
    #[error("key name {name:?} is invalid: it {reason}")]
    KeyName { name: String, reason: &'static str },
    #[error("signature by key {name:?} is empty")]
    EmptySignature { name: String },
    #[error("note has no signature by key {name:?} with key ID {key_id}")]
    NoMatchingSignature { name: String, key_id: String },
    #[error("signature by key {name:?} with key ID {key_id} does not verify")]
    BadSignature { name: String, key_id: String },
    #[error(
        "signature is by key {found_name:?} with key ID {found_key_id}, not the expected {name:?} with key ID {key_id}"
    )]
    WrongKey {
        found_name: String,
        found_key_id: String,
        name: String,
        key_id: String,
    },
    #[error("checkpoint body must end with a newline")]
    CheckpointNotTerminated,
    #[error("checkpoint has {found} lines; origin, tree size and root hash are required")]
    CheckpointTooShort { found: usize },
    #[error("checkpoint line 1: origin is empty")]
    EmptyOrigin,
    #[error("checkpoint origin {origin:?} is not allowed: it {reason}")]
    Origin {
        origin: String,
        reason: &'static str,
    },
    #[error("checkpoint line {line}: extension line is empty")]
    EmptyExtension { line: usize },
    #[error("checkpoint extension {index} is invalid: it {reason}")]
    Extension { index: usize, reason: &'static str },
    #[error("checkpoint has more than {limit} extension lines")]
    TooManyExtensions { limit: usize },
    #[error("{what} line {line}: {field} {reason}")]
    Decimal {
        what: &'static str,
        line: usize,
        field: &'static str,
        reason: &'static str,
    },
    #[error("{what} line {line}: {field} is not canonical standard base64")]
    Base64 {
        what: &'static str,
        line: usize,
        field: &'static str,
    },
    #[error("{what} line {line}: {field} is {found} bytes, expected 32")]
    HashLength {
        what: &'static str,
        line: usize,
        field: &'static str,
        found: usize,
    },
    #[error(
        "cosignature by {name:?} is {found} bytes after its key ID; an Ed25519 v1 cosignature is {COSIGNATURE_V1_BYTES}"
    )]
    CosignatureLength { name: String, found: usize },
    #[error("cosignature timestamp {found} is over the limit of 2^63 - 1")]
    CosignatureTimestamp { found: u64 },
    #[error("verifier key is invalid: {reason}")]
    Vkey { reason: &'static str },
    #[error(
        "verifier key has signature type {found:#04x}; herald reads Ed25519 (0x01) and cosignature v1 (0x04)"
    )]
    VkeyType { found: u8 },
    #[error("proof line 1 is not {PROOF_HEADER:?}")]
    ProofHeader,
    #[error("proof line {line}: expected \"index \" followed by the entry index")]
    ProofIndexMissing { line: usize },
    #[error("proof has more than {limit} inclusion proof hashes")]
    TooManyProofHashes { limit: usize },
    #[error("proof ends at line {line}, before its blank line and checkpoint")]
    ProofTruncated { line: usize },
    #[error("proof checkpoint (from proof line {line}) is invalid: {source}")]
    ProofCheckpoint {
        line: usize,
        #[source]
        source: Box<NoteError>,
    },
}

/// The key ID signed-note.md recommends (and tlog-cosignature.md requires):
/// the first four bytes of `SHA-256(name ‖ "\n" ‖ sig_type ‖ public_key)`.
pub fn key_id(name: &str, sig_type: u8, public_key: &[u8]) -> [u8; 4] {
    let digest = crypto::sha256(&[name.as_bytes(), b"\n", &[sig_type], public_key]);
    [digest[0], digest[1], digest[2], digest[3]]
}

// ---------------------------------------------------------------------------
// Signed notes
// ---------------------------------------------------------------------------

/// One signature line of a note: `— <name> base64(key_id ‖ signature)`.
///
/// The fields are public because a signature is plain data; whether it is
/// well formed is checked when it joins a [`Note`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// The key name, which with `key_id` identifies key and algorithm.
    pub name: String,
    /// The first four bytes of the decoded signature (a big-endian `u32`).
    pub key_id: [u8; 4],
    /// The signature bytes after the key ID: 64 bytes for Ed25519, the
    /// timestamp and 64 bytes for a v1 cosignature.
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// Whether this signature claims to be by the key `name` with `key_id`.
    pub fn is_by(&self, name: &str, key_id: &[u8; 4]) -> bool {
        self.name == name && &self.key_id == key_id
    }

    /// Appends this signature's line, newline included.
    fn write_line(&self, out: &mut String) {
        let mut raw = Vec::with_capacity(4 + self.signature.len());
        raw.extend_from_slice(&self.key_id);
        raw.extend_from_slice(&self.signature);
        out.push_str(SIGNATURE_PREFIX);
        out.push_str(&self.name);
        out.push(' ');
        STANDARD.encode_string(&raw, out);
        out.push('\n');
    }

    /// Length of [`Self::write_line`]'s output, without building it.
    fn line_len(&self) -> usize {
        SIGNATURE_PREFIX.len() + self.name.len() + 1 + base64_len(4 + self.signature.len()) + 1
    }

    /// Parses one signature line (without its newline); `line` is its number
    /// in the note.
    fn parse_line(text: &str, line: usize) -> Result<NoteSignature, NoteError> {
        let rest = text
            .strip_prefix(SIGNATURE_PREFIX)
            .ok_or(NoteError::SignatureLine {
                line,
                reason: "does not start with an em dash (U+2014) and a space",
            })?;
        let (name, b64) = rest.split_once(' ').ok_or(NoteError::SignatureLine {
            line,
            reason: "has no space between key name and signature",
        })?;
        key_name_rule(name).map_err(|reason| NoteError::SignatureKeyName { line, reason })?;
        let raw = STANDARD
            .decode(b64)
            .map_err(|_| NoteError::SignatureBase64 { line })?;
        if raw.len() < 5 {
            return Err(NoteError::SignatureTooShort {
                line,
                found: raw.len(),
            });
        }
        Ok(NoteSignature {
            name: name.to_owned(),
            key_id: [raw[0], raw[1], raw[2], raw[3]],
            signature: raw[4..].to_vec(),
        })
    }

    /// Checks what [`Note`] requires of a signature it holds.
    fn check(&self) -> Result<(), NoteError> {
        check_key_name(&self.name)?;
        if self.signature.is_empty() {
            return Err(NoteError::EmptySignature {
                name: self.name.clone(),
            });
        }
        Ok(())
    }
}

/// A C2SP signed note: a text and one or more signatures over it.
///
/// Its text MUST be ignored until a trusted key's signature on it has been
/// verified (see [`open_checkpoint`] and [`verify_note_signature`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The signed text, final newline included, blank separator line excluded.
    text: String,
    /// Every signature line in order, known keys or not.
    signatures: Vec<NoteSignature>,
}

impl Note {
    /// Builds a note, checking the text and every signature as [`Note::parse`]
    /// would, and that the serialised note fits [`NOTE_BYTES_MAX`].
    pub fn new(text: impl Into<String>, signatures: Vec<NoteSignature>) -> Result<Note, NoteError> {
        let text = text.into();
        check_note_text(&text)?;
        if signatures.is_empty() {
            return Err(NoteError::NoSignatures);
        }
        let mut note = Note {
            text,
            signatures: Vec::with_capacity(signatures.len()),
        };
        for signature in signatures {
            note.add_signature(signature)?;
        }
        Ok(note)
    }

    /// Appends a signature (a cosignature, say) after the existing ones. The
    /// text cannot change, so signatures already on the note stay valid. It
    /// is the caller's business to add only signatures it produced or checked.
    pub fn add_signature(&mut self, signature: NoteSignature) -> Result<(), NoteError> {
        signature.check()?;
        if self.signatures.len() >= NOTE_SIGNATURES_MAX {
            return Err(NoteError::TooManySignatures {
                limit: NOTE_SIGNATURES_MAX,
            });
        }
        let found = self.text_len() + signature.line_len();
        if found > NOTE_BYTES_MAX {
            return Err(NoteError::TooLarge {
                what: "note",
                found,
                limit: NOTE_BYTES_MAX,
            });
        }
        self.signatures.push(signature);
        Ok(())
    }

    /// Parses a signed note from untrusted bytes (see the [module
    /// documentation](self) for the rules). Signatures are not verified.
    pub fn parse(bytes: &[u8]) -> Result<Note, NoteError> {
        let all = checked_str("note", bytes, NOTE_BYTES_MAX)?;
        // The text ends at the last blank line; it may contain others.
        let split = all.rfind("\n\n").ok_or(NoteError::MissingBlankLine)?;
        let text = &all[..=split];
        let mut rest = &all[split + 2..];
        if rest.is_empty() {
            return Err(NoteError::NoSignatures);
        }
        // Text lines, then the blank line, then the first signature line.
        let mut line = text.matches('\n').count() + 2;
        let mut signatures = Vec::new();
        while !rest.is_empty() {
            if signatures.len() == NOTE_SIGNATURES_MAX {
                return Err(NoteError::TooManySignatures {
                    limit: NOTE_SIGNATURES_MAX,
                });
            }
            let sig_line = next_line("note", &mut rest, line)?;
            signatures.push(NoteSignature::parse_line(sig_line, line)?);
            line += 1;
        }
        Ok(Note {
            text: text.to_owned(),
            signatures,
        })
    }

    /// The note exactly as [`Note::parse`] reads it: text, blank line,
    /// signature lines.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.text_len());
        out.push_str(&self.text);
        out.push('\n');
        for signature in &self.signatures {
            signature.write_line(&mut out);
        }
        out
    }

    /// The signed text, final newline included.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Every signature, in note order, including those of unknown keys.
    pub fn signatures(&self) -> &[NoteSignature] {
        &self.signatures
    }

    /// The signatures that claim to be by the key `name` with `key_id`.
    pub fn signatures_by<'a>(
        &'a self,
        name: &'a str,
        key_id: &'a [u8; 4],
    ) -> impl Iterator<Item = &'a NoteSignature> + 'a {
        self.signatures
            .iter()
            .filter(move |s| s.is_by(name, key_id))
    }

    /// Length of [`Note::to_text`]'s output.
    fn text_len(&self) -> usize {
        self.text.len()
            + 1
            + self
                .signatures
                .iter()
                .map(NoteSignature::line_len)
                .sum::<usize>()
    }
}

/// Signs a note text with an Ed25519 key (signature type 0x01) under the key
/// name `name`. Refuses a text or name that could not appear in a note.
pub fn sign_note(text: &str, name: &str, key: &SigningKey) -> Result<NoteSignature, NoteError> {
    check_note_text(text)?;
    check_key_name(name)?;
    let signature = key.sign(text.as_bytes());
    Ok(NoteSignature {
        name: name.to_owned(),
        key_id: key_id(name, SIG_TYPE_ED25519, key.verifying_key().as_bytes()),
        signature: signature.to_bytes().to_vec(),
    })
}

/// Whether `signature` is a valid Ed25519 note signature on `text` by the key
/// `key` named `name`. The name and key ID are compared first: a signature by
/// another key (even one sharing the name or the ID) is `false`.
pub fn verify_note_signature(
    text: &str,
    signature: &NoteSignature,
    name: &str,
    key: &VerifyingKey,
) -> bool {
    if !signature.is_by(name, &key_id(name, SIG_TYPE_ED25519, key.as_bytes())) {
        return false;
    }
    let Ok(bytes) = <[u8; 64]>::try_from(signature.signature.as_slice()) else {
        return false;
    };
    verify_single(key, text.as_bytes(), &Signature::from_bytes(&bytes))
}

// ---------------------------------------------------------------------------
// Verifier keys
// ---------------------------------------------------------------------------

/// A verifier key ("vkey"): `<name>+<hex key ID>+base64(type ‖ public key)`.
///
/// herald supports only the two Ed25519 types it uses: note signatures
/// ([`SIG_TYPE_ED25519`]) and v1 cosignatures ([`SIG_TYPE_COSIGNATURE_V1`]).
/// The key ID is always the recommended hash, checked on parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    /// The key name, as it appears in signature lines.
    name: String,
    /// [`SIG_TYPE_ED25519`] or [`SIG_TYPE_COSIGNATURE_V1`].
    sig_type: u8,
    /// The public key; never a weak (small-order) key.
    key: VerifyingKey,
}

impl VerifierKey {
    /// Builds a vkey, checking the name, the type and that the key is not weak.
    pub fn new(
        name: impl Into<String>,
        sig_type: u8,
        key: VerifyingKey,
    ) -> Result<VerifierKey, NoteError> {
        let name = name.into();
        check_key_name(&name)?;
        if sig_type != SIG_TYPE_ED25519 && sig_type != SIG_TYPE_COSIGNATURE_V1 {
            return Err(NoteError::VkeyType { found: sig_type });
        }
        if key.is_weak() {
            return Err(NoteError::Vkey {
                reason: "the public key is a small-order (weak) point",
            });
        }
        Ok(VerifierKey {
            name,
            sig_type,
            key,
        })
    }

    /// Parses a vkey string, checking that its key ID matches its name, type
    /// and key.
    pub fn parse(text: &str) -> Result<VerifierKey, NoteError> {
        let vkey = |reason| NoteError::Vkey { reason };
        if text.len() > VKEY_BYTES_MAX {
            return Err(NoteError::TooLarge {
                what: "verifier key",
                found: text.len(),
                limit: VKEY_BYTES_MAX,
            });
        }
        // Name and key ID contain no '+'; the base64 part may.
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(vkey("it must be three parts separated by '+'"));
        };
        check_key_name(name)?;
        if id_hex.len() != 8
            || !id_hex
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(vkey("the key ID must be 8 lowercase hex digits"));
        }
        let raw = STANDARD
            .decode(b64)
            .map_err(|_| vkey("the key is not canonical standard base64"))?;
        let (&sig_type, public) = raw.split_first().ok_or(vkey("the key is empty"))?;
        let public =
            <[u8; 32]>::try_from(public).map_err(|_| vkey("the public key is not 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&public)
            .map_err(|_| vkey("the public key is not an Ed25519 point"))?;
        let parsed = VerifierKey::new(name, sig_type, key)?;
        if key_id_hex(&parsed.key_id()) != id_hex {
            return Err(vkey("the key ID does not match the name, type and key"));
        }
        Ok(parsed)
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signature type byte.
    pub fn sig_type(&self) -> u8 {
        self.sig_type
    }

    /// The Ed25519 public key.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// The key ID signatures by this key carry.
    pub fn key_id(&self) -> [u8; 4] {
        key_id(&self.name, self.sig_type, self.key.as_bytes())
    }
}

impl fmt::Display for VerifierKey {
    /// The vkey string, as [`VerifierKey::parse`] reads it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = [0u8; 33];
        raw[0] = self.sig_type;
        raw[1..].copy_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{}+{}",
            self.name,
            key_id_hex(&self.key_id()),
            STANDARD.encode(raw)
        )
    }
}

// ---------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------

/// A C2SP checkpoint: the note text `origin\nsize\nbase64(root)\n` plus any
/// extension lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Identifies the log (for herald, the feed).
    origin: String,
    /// Number of leaves in the tree.
    size: u64,
    /// RFC 6962 root hash of the tree at `size`.
    root: Hash,
    /// Opaque extra lines, each non-empty.
    extensions: Vec<String>,
}

impl Checkpoint {
    /// Builds a checkpoint for herald to sign. Beyond what
    /// [`Checkpoint::parse_body`] checks, the origin must follow the spec's
    /// SHOULD: no Unicode spaces and no `+`.
    pub fn new(
        origin: impl Into<String>,
        size: u64,
        root: Hash,
        extensions: Vec<String>,
    ) -> Result<Checkpoint, NoteError> {
        let origin = origin.into();
        if origin.is_empty() {
            return Err(NoteError::EmptyOrigin);
        }
        key_name_rule(&origin).map_err(|reason| NoteError::Origin {
            origin: origin.clone(),
            reason,
        })?;
        if extensions.len() > CHECKPOINT_EXTENSIONS_MAX {
            return Err(NoteError::TooManyExtensions {
                limit: CHECKPOINT_EXTENSIONS_MAX,
            });
        }
        for (index, extension) in extensions.iter().enumerate() {
            let reason = if extension.is_empty() {
                Some("is empty")
            } else if extension.contains('\n') {
                Some("contains a newline")
            } else if extension.chars().any(|c| c < ' ') {
                Some("contains a control character")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(NoteError::Extension { index, reason });
            }
        }
        let checkpoint = Checkpoint {
            origin,
            size,
            root,
            extensions,
        };
        let found = checkpoint.body().len();
        if found > NOTE_BYTES_MAX {
            return Err(NoteError::TooLarge {
                what: "checkpoint body",
                found,
                limit: NOTE_BYTES_MAX,
            });
        }
        Ok(checkpoint)
    }

    /// Parses a checkpoint body (a note's text). Accepts any non-empty origin
    /// without control characters, as the spec tells clients to.
    pub fn parse_body(body: &str) -> Result<Checkpoint, NoteError> {
        const WHAT: &str = "checkpoint";
        let body = checked_str(WHAT, body.as_bytes(), NOTE_BYTES_MAX)?;
        let Some(lines) = body.strip_suffix('\n') else {
            return Err(NoteError::CheckpointNotTerminated);
        };
        let mut lines = lines.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(NoteError::CheckpointTooShort {
                found: body.matches('\n').count(),
            });
        };
        if origin.is_empty() {
            return Err(NoteError::EmptyOrigin);
        }
        let size = parse_decimal(size).map_err(|reason| NoteError::Decimal {
            what: WHAT,
            line: 2,
            field: "tree size",
            reason,
        })?;
        let root = parse_hash(WHAT, 3, "root hash", root)?;
        let mut extensions = Vec::new();
        for (i, extension) in lines.enumerate() {
            if extension.is_empty() {
                return Err(NoteError::EmptyExtension { line: 4 + i });
            }
            if extensions.len() == CHECKPOINT_EXTENSIONS_MAX {
                return Err(NoteError::TooManyExtensions {
                    limit: CHECKPOINT_EXTENSIONS_MAX,
                });
            }
            extensions.push(extension.to_owned());
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }

    /// The note text: origin, size, base64 root and extension lines, each
    /// ending in a newline.
    pub fn body(&self) -> String {
        let mut out = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        );
        for extension in &self.extensions {
            out.push_str(extension);
            out.push('\n');
        }
        out
    }

    /// The log's origin line.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The tree size (number of leaves).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The RFC 6962 root hash at [`Checkpoint::size`].
    pub fn root(&self) -> &Hash {
        &self.root
    }

    /// The extension lines, without newlines.
    pub fn extensions(&self) -> &[String] {
        &self.extensions
    }
}

/// A checkpoint in a signed note whose author signature is known good: it
/// was either just signed ([`sign_checkpoint`]) or opened with the author's
/// key ([`open_checkpoint`]). Other signatures on the note are unverified
/// until checked, for instance with [`SignedCheckpoint::cosignature`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The parsed note text.
    checkpoint: Checkpoint,
    /// The note; its text is `checkpoint.body()`.
    note: Note,
}

impl SignedCheckpoint {
    /// The checkpoint.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The signed note carrying it.
    pub fn note(&self) -> &Note {
        &self.note
    }

    /// The signed note's text, ready to publish.
    pub fn to_text(&self) -> String {
        self.note.to_text()
    }

    /// Adds a signature (typically a cosignature) to the note.
    pub fn add_signature(&mut self, signature: NoteSignature) -> Result<(), NoteError> {
        self.note.add_signature(signature)
    }

    /// Verifies the v1 cosignature(s) by the cosigner `name` with `key` and
    /// returns the latest timestamp. Every signature with that name and key
    /// ID must verify, and there must be one.
    pub fn cosignature(&self, name: &str, key: &VerifyingKey) -> Result<u64, NoteError> {
        let id = key_id(name, SIG_TYPE_COSIGNATURE_V1, key.as_bytes());
        let mut latest = None;
        for signature in self.note.signatures_by(name, &id) {
            let timestamp = verify_cosignature(&self.checkpoint, signature, name, key)?;
            latest = latest.max(Some(timestamp));
        }
        latest.ok_or_else(|| NoteError::NoMatchingSignature {
            name: name.to_owned(),
            key_id: key_id_hex(&id),
        })
    }

    /// The checkpoint and the note.
    pub fn into_parts(self) -> (Checkpoint, Note) {
        (self.checkpoint, self.note)
    }
}

/// Signs a checkpoint as its log: an Ed25519 note signature under `key_name`
/// (which the spec says SHOULD equal the origin).
pub fn sign_checkpoint(
    checkpoint: &Checkpoint,
    key_name: &str,
    key: &SigningKey,
) -> Result<SignedCheckpoint, NoteError> {
    let body = checkpoint.body();
    let signature = sign_note(&body, key_name, key)?;
    Ok(SignedCheckpoint {
        checkpoint: checkpoint.clone(),
        note: Note::new(body, vec![signature])?,
    })
}

/// Opens a signed checkpoint from untrusted bytes: parses the note, verifies
/// every signature by `key_name` with `key`'s key ID (there must be at least
/// one, and all must verify), and only then parses the body.
pub fn open_checkpoint(
    bytes: &[u8],
    key_name: &str,
    key: &VerifyingKey,
) -> Result<SignedCheckpoint, NoteError> {
    let note = Note::parse(bytes)?;
    let id = key_id(key_name, SIG_TYPE_ED25519, key.as_bytes());
    let mut found = false;
    for signature in note.signatures_by(key_name, &id) {
        if !verify_note_signature(&note.text, signature, key_name, key) {
            return Err(NoteError::BadSignature {
                name: key_name.to_owned(),
                key_id: key_id_hex(&id),
            });
        }
        found = true;
    }
    if !found {
        return Err(NoteError::NoMatchingSignature {
            name: key_name.to_owned(),
            key_id: key_id_hex(&id),
        });
    }
    let checkpoint = Checkpoint::parse_body(&note.text)?;
    Ok(SignedCheckpoint { checkpoint, note })
}

// ---------------------------------------------------------------------------
// Cosignatures (v1, Ed25519)
// ---------------------------------------------------------------------------

/// The message a v1 cosignature signs: `cosignature/v1\ntime <ts>\n` and the
/// checkpoint body.
fn cosignature_message(body: &str, timestamp_s: u64) -> String {
    format!("{COSIGNATURE_V1_HEADER}time {timestamp_s}\n{body}")
}

/// Cosigns a checkpoint as the cosigner `name` at `timestamp_s` (POSIX
/// seconds, passed in because this module reads no clock). The result is a
/// note signature of type 0x04: key ID, big-endian timestamp, signature.
pub fn cosign(
    checkpoint: &Checkpoint,
    name: &str,
    key: &SigningKey,
    timestamp_s: u64,
) -> Result<NoteSignature, NoteError> {
    check_key_name(name)?;
    if timestamp_s > COSIGNATURE_TIMESTAMP_MAX {
        return Err(NoteError::CosignatureTimestamp { found: timestamp_s });
    }
    let message = cosignature_message(&checkpoint.body(), timestamp_s);
    let mut signature = Vec::with_capacity(COSIGNATURE_V1_BYTES);
    signature.extend_from_slice(&timestamp_s.to_be_bytes());
    signature.extend_from_slice(&key.sign(message.as_bytes()).to_bytes());
    Ok(NoteSignature {
        name: name.to_owned(),
        key_id: key_id(
            name,
            SIG_TYPE_COSIGNATURE_V1,
            key.verifying_key().as_bytes(),
        ),
        signature,
    })
}

/// Verifies a v1 cosignature on `checkpoint` by the cosigner `name` with
/// `key`, and returns its timestamp. Whether the timestamp is acceptable (not
/// in the future, recent enough) is the caller's policy.
pub fn verify_cosignature(
    checkpoint: &Checkpoint,
    signature: &NoteSignature,
    name: &str,
    key: &VerifyingKey,
) -> Result<u64, NoteError> {
    let id = key_id(name, SIG_TYPE_COSIGNATURE_V1, key.as_bytes());
    if !signature.is_by(name, &id) {
        return Err(NoteError::WrongKey {
            found_name: signature.name.clone(),
            found_key_id: key_id_hex(&signature.key_id),
            name: name.to_owned(),
            key_id: key_id_hex(&id),
        });
    }
    let timestamp_s = cosignature_timestamp(signature)?;
    let mut bytes = [0u8; 64];
    bytes.copy_from_slice(&signature.signature[8..]);
    let message = cosignature_message(&checkpoint.body(), timestamp_s);
    if !verify_single(key, message.as_bytes(), &Signature::from_bytes(&bytes)) {
        return Err(NoteError::BadSignature {
            name: name.to_owned(),
            key_id: key_id_hex(&id),
        });
    }
    Ok(timestamp_s)
}

/// Reads the timestamp of a v1 cosignature without verifying it: checks the
/// length and the 2^63 - 1 bound. Only for display; trust it after
/// [`verify_cosignature`].
pub fn cosignature_timestamp(signature: &NoteSignature) -> Result<u64, NoteError> {
    let Ok(raw) = <[u8; COSIGNATURE_V1_BYTES]>::try_from(signature.signature.as_slice()) else {
        return Err(NoteError::CosignatureLength {
            name: signature.name.clone(),
            found: signature.signature.len(),
        });
    };
    let timestamp_s = u64::from_be_bytes([
        raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
    ]);
    if timestamp_s > COSIGNATURE_TIMESTAMP_MAX {
        return Err(NoteError::CosignatureTimestamp { found: timestamp_s });
    }
    Ok(timestamp_s)
}

// ---------------------------------------------------------------------------
// Proof text
// ---------------------------------------------------------------------------

/// A C2SP tlog-proof: optional extra data, an entry index, its inclusion
/// path, and the signed checkpoint the path leads to.
///
/// Parsing checks the layout and that the checkpoint is a well-formed signed
/// note with a checkpoint body. It verifies nothing: open the checkpoint with
/// [`open_checkpoint`], check cosignatures, and check the inclusion path
/// against the root. The `extra` data is unauthenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofText {
    /// Opaque application data, at most [`PROOF_EXTRA_BYTES_MAX`] bytes.
    extra: Option<Vec<u8>>,
    /// Zero-based index of the entry in the log.
    index: u64,
    /// Inclusion path from the leaf's sibling up to the root's child.
    proof: Vec<Hash>,
    /// The signed checkpoint note, verbatim.
    checkpoint: String,
}

impl ProofText {
    /// Builds a proof, checking the limits and that `checkpoint` is a signed
    /// note carrying a checkpoint.
    pub fn new(
        extra: Option<Vec<u8>>,
        index: u64,
        proof: Vec<Hash>,
        checkpoint: &[u8],
    ) -> Result<ProofText, NoteError> {
        if let Some(extra) = &extra
            && extra.len() > PROOF_EXTRA_BYTES_MAX
        {
            return Err(NoteError::TooLarge {
                what: "proof extra data",
                found: extra.len(),
                limit: PROOF_EXTRA_BYTES_MAX,
            });
        }
        if proof.len() > PROOF_HASHES_MAX {
            return Err(NoteError::TooManyProofHashes {
                limit: PROOF_HASHES_MAX,
            });
        }
        let line = Self::checkpoint_line(extra.is_some(), proof.len());
        let checkpoint = Self::check_checkpoint(checkpoint, line)?;
        Ok(ProofText {
            extra,
            index,
            proof,
            checkpoint,
        })
    }

    /// Parses a proof from untrusted bytes, following tlog-proof.md exactly.
    pub fn parse(bytes: &[u8]) -> Result<ProofText, NoteError> {
        const WHAT: &str = "proof";
        let mut rest = checked_str(WHAT, bytes, PROOF_BYTES_MAX)?;
        let mut line = 1;
        if next_line(WHAT, &mut rest, line)? != PROOF_HEADER {
            return Err(NoteError::ProofHeader);
        }
        line += 1;
        let mut current = Self::proof_line(&mut rest, line)?;
        let extra = match current.strip_prefix(EXTRA_PREFIX) {
            Some(b64) => {
                let extra = STANDARD.decode(b64).map_err(|_| NoteError::Base64 {
                    what: WHAT,
                    line,
                    field: "extra data",
                })?;
                if extra.len() > PROOF_EXTRA_BYTES_MAX {
                    return Err(NoteError::TooLarge {
                        what: "proof extra data",
                        found: extra.len(),
                        limit: PROOF_EXTRA_BYTES_MAX,
                    });
                }
                line += 1;
                current = Self::proof_line(&mut rest, line)?;
                Some(extra)
            }
            None => None,
        };
        let index = current
            .strip_prefix(INDEX_PREFIX)
            .ok_or(NoteError::ProofIndexMissing { line })?;
        let index = parse_decimal(index).map_err(|reason| NoteError::Decimal {
            what: WHAT,
            line,
            field: "index",
            reason,
        })?;
        let mut proof = Vec::new();
        loop {
            line += 1;
            let hash_line = Self::proof_line(&mut rest, line)?;
            if hash_line.is_empty() {
                break;
            }
            if proof.len() == PROOF_HASHES_MAX {
                return Err(NoteError::TooManyProofHashes {
                    limit: PROOF_HASHES_MAX,
                });
            }
            proof.push(parse_hash(WHAT, line, "inclusion proof hash", hash_line)?);
        }
        let checkpoint = Self::check_checkpoint(rest.as_bytes(), line + 1)?;
        Ok(ProofText {
            extra,
            index,
            proof,
            checkpoint,
        })
    }

    /// The proof text, as [`ProofText::parse`] reads it.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(PROOF_HEADER.len() + 64 + self.checkpoint.len());
        out.push_str(PROOF_HEADER);
        out.push('\n');
        if let Some(extra) = &self.extra {
            out.push_str(EXTRA_PREFIX);
            STANDARD.encode_string(extra, &mut out);
            out.push('\n');
        }
        out.push_str(INDEX_PREFIX);
        out.push_str(&self.index.to_string());
        out.push('\n');
        for hash in &self.proof {
            STANDARD.encode_string(hash, &mut out);
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.checkpoint);
        out
    }

    /// The unauthenticated extra data, if any.
    pub fn extra(&self) -> Option<&[u8]> {
        self.extra.as_deref()
    }

    /// The entry's zero-based index.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The inclusion path, leaf side first.
    pub fn proof(&self) -> &[Hash] {
        &self.proof
    }

    /// The signed checkpoint note, verbatim (for [`open_checkpoint`]).
    pub fn checkpoint(&self) -> &[u8] {
        self.checkpoint.as_bytes()
    }

    /// The next line of a proof's head; running out of input here means the
    /// checkpoint is missing.
    fn proof_line<'a>(rest: &mut &'a str, line: usize) -> Result<&'a str, NoteError> {
        if rest.is_empty() {
            return Err(NoteError::ProofTruncated { line: line - 1 });
        }
        next_line("proof", rest, line)
    }

    /// The proof line on which the checkpoint starts.
    fn checkpoint_line(has_extra: bool, hashes: usize) -> usize {
        // Header, [extra], index, hashes, blank line, then the checkpoint.
        1 + usize::from(has_extra) + 1 + hashes + 1 + 1
    }

    /// Checks that `bytes` is a signed note carrying a checkpoint body.
    fn check_checkpoint(bytes: &[u8], line: usize) -> Result<String, NoteError> {
        let wrap = |source| NoteError::ProofCheckpoint {
            line,
            source: Box::new(source),
        };
        let note = Note::parse(bytes).map_err(wrap)?;
        Checkpoint::parse_body(note.text()).map_err(wrap)?;
        Ok(note.to_text())
    }
}

// ---------------------------------------------------------------------------
// Shared parsing helpers
// ---------------------------------------------------------------------------

/// Length of the padded base64 encoding of `n` bytes.
const fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Lowercase hex of a key ID, as vkeys and error messages print it.
fn key_id_hex(key_id: &[u8; 4]) -> String {
    hex::encode(key_id)
}

/// Checks a key name: non-empty, no Unicode space, no `+`, no control
/// character. Returns the broken rule, phrased to follow "it".
fn key_name_rule(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name.chars().any(char::is_whitespace) {
        Err("contains a Unicode space")
    } else if name.contains('+') {
        Err("contains a plus sign (U+002B)")
    } else if name.chars().any(char::is_control) {
        Err("contains a control character")
    } else {
        Ok(())
    }
}

fn check_key_name(name: &str) -> Result<(), NoteError> {
    key_name_rule(name).map_err(|reason| NoteError::KeyName {
        name: name.to_owned(),
        reason,
    })
}

/// Refuses control characters other than newline, naming the line. Bytes
/// below 0x20 never occur inside a multi-byte UTF-8 sequence, so a byte scan
/// finds exactly the control code points.
fn check_controls(what: &'static str, text: &str) -> Result<(), NoteError> {
    let mut line = 1;
    for &b in text.as_bytes() {
        if b == b'\n' {
            line += 1;
        } else if b < 0x20 {
            return Err(NoteError::ControlCharacter {
                what,
                line,
                code: b,
            });
        }
    }
    Ok(())
}

/// Checks size and UTF-8 of untrusted bytes, then their control characters.
fn checked_str<'a>(
    what: &'static str,
    bytes: &'a [u8],
    limit: usize,
) -> Result<&'a str, NoteError> {
    if bytes.len() > limit {
        return Err(NoteError::TooLarge {
            what,
            found: bytes.len(),
            limit,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| NoteError::NotUtf8 {
        what,
        offset: e.valid_up_to(),
    })?;
    check_controls(what, text)?;
    Ok(text)
}

/// Checks the text part of a note that herald is about to sign or build.
fn check_note_text(text: &str) -> Result<(), NoteError> {
    checked_str("note text", text.as_bytes(), NOTE_BYTES_MAX)?;
    if !text.ends_with('\n') {
        return Err(NoteError::TextNotTerminated);
    }
    Ok(())
}

/// Parses ASCII decimal with no sign and no leading zeros (except `0`
/// itself). `u64::from_str` alone would accept `+5` and `007`. The error
/// says what is wrong with it.
pub fn parse_decimal(s: &str) -> Result<u64, &'static str> {
    if s.is_empty() {
        return Err("is empty");
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("is not ASCII decimal digits");
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err("has a leading zero");
    }
    s.parse::<u64>().map_err(|_| "does not fit in 64 bits")
}

/// Decodes one base64 hash field, naming the line on failure.
fn parse_hash(
    what: &'static str,
    line: usize,
    field: &'static str,
    b64: &str,
) -> Result<Hash, NoteError> {
    let raw = STANDARD
        .decode(b64)
        .map_err(|_| NoteError::Base64 { what, line, field })?;
    Hash::try_from(raw.as_slice()).map_err(|_| NoteError::HashLength {
        what,
        line,
        field,
        found: raw.len(),
    })
}

/// Splits the next newline-terminated line off `rest`.
fn next_line<'a>(
    what: &'static str,
    rest: &mut &'a str,
    line: usize,
) -> Result<&'a str, NoteError> {
    let Some((head, tail)) = rest.split_once('\n') else {
        return Err(NoteError::UnterminatedLine { what, line });
    };
    *rest = tail;
    Ok(head)
}
