//! Proof files (`herald prove`, `herald verify PROOF`): one event's inclusion
//! in its feed's checkpointed tree, and the consistency of a feed's current
//! checkpoint with an earlier one, each checked offline with the CA alone.
//!
//! An inclusion proof is a C2SP tlog-proof (`core::note::ProofText`): index =
//! the event's sequence number, the RFC 6962 inclusion path, the author's
//! signed checkpoint note, and as `extra` the base64 of
//! `postcard(InclusionExtra)` (the event's envelope and the author's
//! certificate). A consistency proof is herald's own text in the same style:
//!
//! ```text
//! herald.dev/consistency-proof@v1
//! extra <base64 of the author's certificate DER>
//! old <N>
//! new <M>
//! <base64 hash>            (0 to 64 lines: the RFC 6962 consistency proof)
//!
//! <the signed checkpoint note of size M>
//! ```
//!
//! See `docs/FORMAT.md`, "Proof files", for every check.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, VerifyingKey};
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::core::cert::{AuthorCert, CertError};
use crate::core::checkpoint::{self, CheckpointError, VerifiedCheckpoint};
use crate::core::codec::DecodeError;
use crate::core::crypto::{ChannelKey, Hash};
use crate::core::event::Encryption;
use crate::core::limits::CERT_BYTES_MAX;
use crate::core::merkle::{self, ProofError};
use crate::core::note::{
    NOTE_BYTES_MAX, NoteError, PROOF_BYTES_MAX, PROOF_EXTRA_BYTES_MAX, PROOF_HASHES_MAX,
    PROOF_HEADER, ProofText,
};
use crate::core::verify::{
    DecodedEvent, check_cert_window, check_payload, decrypt_payload, signature_valid,
};
use crate::identity::{CertRole, TrustAnchor};
use crate::store::tree::TileReader;

/// First line of a herald consistency proof file.
pub const CONSISTENCY_HEADER: &str = "herald.dev/consistency-proof@v1";
/// Version of [`InclusionExtra`] this herald writes and reads.
pub const INCLUSION_EXTRA_VERSION: u8 = 1;
/// Largest consistency proof file: the header, the certificate in base64,
/// the sizes, [`PROOF_HASHES_MAX`] hashes and a note.
pub const CONSISTENCY_BYTES_MAX: usize = CONSISTENCY_HEADER.len()
    + 1
    + "extra ".len()
    + CERT_BYTES_MAX.div_ceil(3) * 4
    + 2 * (6 + 20 + 1)
    + PROOF_HASHES_MAX * 45
    + 1
    + NOTE_BYTES_MAX;
/// Largest proof file of either kind `herald verify` reads.
pub const PROOF_FILE_BYTES_MAX: usize = if PROOF_BYTES_MAX > CONSISTENCY_BYTES_MAX {
    PROOF_BYTES_MAX
} else {
    CONSISTENCY_BYTES_MAX
};

/// What an inclusion proof's `extra` carries: the event and the certificate
/// that admits its author. Unauthenticated as such: every byte is checked
/// (the certificate by the CA, the event by its hash in the tree).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionExtra {
    /// [`INCLUSION_EXTRA_VERSION`].
    pub version: u8,
    /// The event's exact envelope (format 1), payload pruned when the whole
    /// envelope would not fit [`PROOF_EXTRA_BYTES_MAX`].
    #[serde(with = "serde_bytes")]
    pub envelope: Vec<u8>,
    /// The author's certificate DER (from the feed's genesis event).
    #[serde(with = "serde_bytes")]
    pub cert_der: Vec<u8>,
}

/// Which kind of proof file a text is, by its first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofKind {
    Inclusion,
    Consistency,
}

/// The kind of proof `bytes` begins as, if any.
pub fn proof_kind(bytes: &[u8]) -> Option<ProofKind> {
    let first = bytes.split(|b| *b == b'\n').next()?;
    if first == PROOF_HEADER.as_bytes() {
        Some(ProofKind::Inclusion)
    } else if first == CONSISTENCY_HEADER.as_bytes() {
        Some(ProofKind::Consistency)
    } else {
        None
    }
}

// ---------------------------------------------------------------------------
// Writing proofs from a store
// ---------------------------------------------------------------------------

/// Which event to prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofTarget {
    /// By event id.
    Id([u8; 16]),
    /// By feed and sequence number.
    FeedSeq(String, u64),
}

/// Why a proof could not be written (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    #[error("no event with id {0} in the store")]
    NoSuchId(String),
    #[error("no event {feed}/{seq} in the store")]
    NoSuchEvent { feed: String, seq: u64 },
    #[error("the store holds no feed {0}")]
    NoSuchFeed(String),
    #[error("feed {0} has no checkpoint yet; wait for its author's next checkpoint")]
    NoCheckpoint(String),
    #[error(
        "event {feed}/{seq} is not yet covered by a checkpoint (the latest checkpoint of {feed} covers {size} events); try again after its author's next checkpoint reaches this node"
    )]
    NotCovered { feed: String, seq: u64, size: u64 },
    #[error(
        "--consistency {old} is out of range: feed {feed}'s latest checkpoint has size {size}, so the old size must be 1 to {size}"
    )]
    OldSize { feed: String, old: u64, size: u64 },
    #[error("the stored Merkle tree of feed {feed} cannot give the proof: {message}")]
    Tree { feed: String, message: String },
    #[error("cannot build the proof text: {0}")]
    Text(#[from] NoteError),
    #[error("stored event {feed}/{seq} does not decode: {source}")]
    Event {
        feed: String,
        seq: u64,
        source: DecodeError,
    },
    #[error("store: {0}")]
    Store(#[from] crate::store::LogError),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// A written inclusion proof.
#[derive(Debug, Clone, Serialize)]
pub struct InclusionProofFile {
    pub feed: String,
    pub seq: u64,
    /// Size of the checkpoint the proof leads to.
    pub checkpoint_size: u64,
    /// Hashes in the inclusion path.
    pub hashes: usize,
    /// The event's payload was left out to fit the proof's extra data.
    pub payload_pruned: bool,
    /// The proof file's text.
    #[serde(skip)]
    pub text: String,
}

/// A written consistency proof.
#[derive(Debug, Clone, Serialize)]
pub struct ConsistencyProofFile {
    pub feed: String,
    pub old_size: u64,
    pub new_size: u64,
    pub hashes: usize,
    #[serde(skip)]
    pub text: String,
}

/// Writes the inclusion proof of one event against its feed's latest
/// checkpoint, read in one read transaction (works beside a running node).
pub fn prove_inclusion(
    conn: &Connection,
    target: &ProofTarget,
) -> Result<InclusionProofFile, ProveError> {
    conn.execute_batch("BEGIN")?;
    let result = prove_inclusion_in(conn, target);
    conn.execute_batch("COMMIT")?;
    result
}

fn prove_inclusion_in(
    conn: &Connection,
    target: &ProofTarget,
) -> Result<InclusionProofFile, ProveError> {
    let (feed, seq, envelope) = find_event(conn, target)?;
    // An event before a key transition is proved under the key in force
    // for it: the old key's checkpoint the first later transition carries,
    // with the certificate the feed had then.
    let before_transition = crate::store::transitions::read_feed(conn, &feed)
        .map_err(|e| ProveError::Tree {
            feed: feed.clone(),
            message: e.to_string(),
        })?
        .into_iter()
        .find(|t| t.seq > seq);
    let (stored, cert_der) = match before_transition {
        Some(t) => {
            let stored =
                crate::store::transitions::checkpoint_before(&t).map_err(|e| ProveError::Tree {
                    feed: feed.clone(),
                    message: e.to_string(),
                })?;
            (stored, t.old_cert)
        }
        None => (
            crate::store::read_checkpoint(conn, &feed)?
                .ok_or_else(|| ProveError::NoCheckpoint(feed.clone()))?,
            genesis_cert(conn, &feed)?,
        ),
    };
    if seq >= stored.size {
        return Err(ProveError::NotCovered {
            feed,
            seq,
            size: stored.size,
        });
    }
    let path = merkle::inclusion_proof(&mut TileReader::new(conn, &feed), seq, stored.size)
        .map_err(|e| tree_error(&feed, e))?;
    let (extra, payload_pruned) = inclusion_extra(&feed, seq, envelope, cert_der)?;
    let hashes = path.len();
    let text = ProofText::new(Some(extra), seq, path, stored.note.as_bytes())?.to_text();
    Ok(InclusionProofFile {
        feed,
        seq,
        checkpoint_size: stored.size,
        hashes,
        payload_pruned,
        text,
    })
}

/// The encoded extra data; the payload is pruned if the whole envelope
/// does not fit (the header still commits to it, so the proof stays whole).
fn inclusion_extra(
    feed: &str,
    seq: u64,
    envelope: Vec<u8>,
    cert_der: Vec<u8>,
) -> Result<(Vec<u8>, bool), ProveError> {
    let encode = |envelope: Vec<u8>| {
        postcard::to_stdvec(&InclusionExtra {
            version: INCLUSION_EXTRA_VERSION,
            envelope,
            cert_der: cert_der.clone(),
        })
        .unwrap_or_default()
    };
    let full = encode(envelope.clone());
    if full.len() <= PROOF_EXTRA_BYTES_MAX {
        return Ok((full, false));
    }
    let pruned = crate::store::pruned_envelope(&envelope).map_err(|source| ProveError::Event {
        feed: feed.to_string(),
        seq,
        source,
    })?;
    Ok((encode(pruned), true))
}

fn tree_error<E: std::fmt::Display>(feed: &str, e: ProofError<E>) -> ProveError {
    ProveError::Tree {
        feed: feed.to_string(),
        message: e.to_string(),
    }
}

/// `(feed, seq, envelope)` of the target event.
fn find_event(
    conn: &Connection,
    target: &ProofTarget,
) -> Result<(String, u64, Vec<u8>), ProveError> {
    use crate::store::rows::query_events;
    let found = match target {
        ProofTarget::Id(id) => query_events(conn, "WHERE e.id = ?1 LIMIT 1", [id.as_slice()])?
            .pop()
            .ok_or_else(|| ProveError::NoSuchId(uuid::Uuid::from_bytes(*id).to_string()))?,
        ProofTarget::FeedSeq(feed, seq) => {
            let seq_i64 = i64::try_from(*seq).unwrap_or(i64::MAX);
            query_events(
                conn,
                "WHERE f.name = ?1 AND e.seq = ?2",
                rusqlite::params![feed, seq_i64],
            )?
            .pop()
            .ok_or_else(|| ProveError::NoSuchEvent {
                feed: feed.clone(),
                seq: *seq,
            })?
        }
    };
    Ok((found.header.author, found.header.seq, found.envelope))
}

/// The certificate from `feed`'s genesis event, as the store keeps it.
fn genesis_cert(conn: &Connection, feed: &str) -> Result<Vec<u8>, ProveError> {
    conn.query_row(
        "SELECT genesis_cert FROM feeds WHERE feed = ?1",
        [feed],
        |r| r.get(0),
    )
    .optional()?
    .ok_or_else(|| ProveError::NoSuchFeed(feed.to_string()))
}

/// Writes the proof that `feed`'s latest checkpoint extends its tree of
/// `old_size` events.
pub fn prove_consistency(
    conn: &Connection,
    feed: &str,
    old_size: u64,
) -> Result<ConsistencyProofFile, ProveError> {
    conn.execute_batch("BEGIN")?;
    let result = prove_consistency_in(conn, feed, old_size);
    conn.execute_batch("COMMIT")?;
    result
}

fn prove_consistency_in(
    conn: &Connection,
    feed: &str,
    old_size: u64,
) -> Result<ConsistencyProofFile, ProveError> {
    let cert_der = genesis_cert(conn, feed)?;
    let stored = crate::store::read_checkpoint(conn, feed)?
        .ok_or_else(|| ProveError::NoCheckpoint(feed.to_string()))?;
    if old_size == 0 || old_size > stored.size {
        return Err(ProveError::OldSize {
            feed: feed.to_string(),
            old: old_size,
            size: stored.size,
        });
    }
    let hashes = merkle::consistency_proof(&mut TileReader::new(conn, feed), old_size, stored.size)
        .map_err(|e| tree_error(feed, e))?;
    let proof = ConsistencyText {
        cert_der,
        old_size,
        new_size: stored.size,
        hashes,
        note: stored.note.clone(),
    };
    Ok(ConsistencyProofFile {
        feed: feed.to_string(),
        old_size,
        new_size: stored.size,
        hashes: proof.hashes.len(),
        text: proof.to_text(),
    })
}

// ---------------------------------------------------------------------------
// The consistency proof text
// ---------------------------------------------------------------------------

/// A parsed consistency proof file (checked for layout only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyText {
    pub cert_der: Vec<u8>,
    pub old_size: u64,
    pub new_size: u64,
    pub hashes: Vec<Hash>,
    /// The signed checkpoint note, verbatim.
    pub note: String,
}

impl ConsistencyText {
    /// The file text, as [`ConsistencyText::parse`] reads it.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "{CONSISTENCY_HEADER}\nextra {}\nold {}\nnew {}\n",
            STANDARD.encode(&self.cert_der),
            self.old_size,
            self.new_size
        );
        for hash in &self.hashes {
            out.push_str(&STANDARD.encode(hash));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.note);
        out
    }

    /// Parses a consistency proof file strictly: every line exactly as
    /// [`ConsistencyText::to_text`] writes it.
    pub fn parse(bytes: &[u8]) -> Result<ConsistencyText, ProofCheckError> {
        if bytes.len() > CONSISTENCY_BYTES_MAX {
            return Err(layout(0, format!("over {CONSISTENCY_BYTES_MAX} bytes")));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| layout(0, "not UTF-8".into()))?;
        let mut lines = Lines { rest: text, no: 0 };
        if lines.next()? != CONSISTENCY_HEADER {
            return Err(layout(
                1,
                format!("the first line is not {CONSISTENCY_HEADER}"),
            ));
        }
        let cert = lines.field("extra ")?;
        let cert_der = STANDARD
            .decode(cert)
            .map_err(|_| layout(lines.no, "the certificate is not canonical base64".into()))?;
        if cert_der.len() > CERT_BYTES_MAX {
            return Err(layout(
                lines.no,
                format!("a certificate over {CERT_BYTES_MAX} bytes"),
            ));
        }
        let old_size = decimal(lines.field("old ")?, lines.no)?;
        let new_size = decimal(lines.field("new ")?, lines.no)?;
        let mut hashes = Vec::new();
        loop {
            let line = lines.next()?;
            if line.is_empty() {
                break;
            }
            if hashes.len() == PROOF_HASHES_MAX {
                return Err(layout(lines.no, format!("over {PROOF_HASHES_MAX} hashes")));
            }
            let hash = STANDARD
                .decode(line)
                .ok()
                .and_then(|h| <Hash>::try_from(h).ok())
                .ok_or_else(|| layout(lines.no, "not the base64 of a 32-byte hash".into()))?;
            hashes.push(hash);
        }
        Ok(ConsistencyText {
            cert_der,
            old_size,
            new_size,
            hashes,
            note: lines.rest.to_string(),
        })
    }
}

/// Line reader for [`ConsistencyText::parse`].
struct Lines<'a> {
    rest: &'a str,
    /// Number of the line last returned (1-based).
    no: usize,
}

impl<'a> Lines<'a> {
    fn next(&mut self) -> Result<&'a str, ProofCheckError> {
        self.no += 1;
        let (line, rest) = self
            .rest
            .split_once('\n')
            .ok_or_else(|| layout(self.no, "the file ends before the checkpoint".into()))?;
        self.rest = rest;
        Ok(line)
    }

    fn field(&mut self, prefix: &str) -> Result<&'a str, ProofCheckError> {
        let line = self.next()?;
        line.strip_prefix(prefix)
            .ok_or_else(|| layout(self.no, format!("expected a line starting {prefix:?}")))
    }
}

fn layout(line: usize, why: String) -> ProofCheckError {
    ProofCheckError::Layout { line, why }
}

/// ASCII decimal without leading zeros (as tlog-checkpoint sizes).
fn decimal(text: &str, line: usize) -> Result<u64, ProofCheckError> {
    crate::core::note::parse_decimal(text)
        .map_err(|_| layout(line, format!("{text:?} is not a decimal size")))
}

// ---------------------------------------------------------------------------
// Verifying proofs offline
// ---------------------------------------------------------------------------

/// What a proof is checked against.
pub struct ProofOptions<'a> {
    /// The CA (and revocation list) the author and witnesses chain to.
    pub trust: &'a TrustAnchor,
    /// Channel keys to decrypt the event's payload with.
    pub channel_keys: &'a [ChannelKey],
    /// Certificates (DER) of the witnesses whose cosignatures count.
    pub witness_certs: &'a [Vec<u8>],
    /// `--witnesses K`: at least this many valid cosignatures by them.
    pub witnesses: Option<usize>,
}

/// Why a proof does not verify (exit 1). Each names the check that failed.
#[derive(Debug, thiserror::Error)]
pub enum ProofCheckError {
    #[error("the proof does not parse: {0}")]
    Parse(#[from] NoteError),
    #[error("the consistency proof does not parse: line {line}: {why}")]
    Layout { line: usize, why: String },
    #[error(
        "the proof has no extra line: a herald proof carries the event and its author's certificate there"
    )]
    NoExtra,
    #[error("the proof's extra data is not a herald event bundle: {0}")]
    Extra(String),
    #[error(
        "the proof's extra data is version {0}; this herald reads version {INCLUSION_EXTRA_VERSION}"
    )]
    ExtraVersion(u8),
    #[error("the proof's event does not decode: {0}")]
    Event(#[from] DecodeError),
    #[error("the certificate of {service} is not admitted by the CA: {source}")]
    Certificate { service: String, source: CertError },
    #[error("the certificate's key is not a valid Ed25519 key")]
    CertificateKey,
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("the checkpoint is of feed {checkpoint}, the event of feed {event}")]
    WrongFeed { checkpoint: String, event: String },
    #[error("the signature of event {feed}/{seq} is not valid under {feed}'s certificate")]
    EventSignature { feed: String, seq: u64 },
    #[error("the payload of event {feed}/{seq} does not match the hash and length in its header")]
    PayloadHash { feed: String, seq: u64 },
    #[error("event {feed}/{seq} was made outside its author's certificate validity")]
    CertificateValidity { feed: String, seq: u64 },
    #[error(
        "event {feed}/{seq} is at or after the cut-off of the revocation of its author's certificate ({cutoff})"
    )]
    Revoked {
        feed: String,
        seq: u64,
        cutoff: String,
    },
    #[error("the proof's index {index} is not the event's sequence number {seq}")]
    Index { index: u64, seq: u64 },
    #[error("the inclusion proof does not lead to the checkpoint's root: {0}")]
    Inclusion(ProofError),
    #[error("a witness certificate is not a node certificate admitted by the CA: {0}")]
    WitnessCert(String),
    #[error(
        "{found} valid cosignature(s) by the given witnesses ({names}), fewer than the {required} required"
    )]
    UnderWitnessed {
        required: usize,
        found: usize,
        names: String,
    },
    #[error("the proof's new size {claimed} is not the checkpoint's size {size}")]
    NewSize { claimed: u64, size: u64 },
    #[error("the earlier checkpoint (--since) has size {found}, the proof is from size {claimed}")]
    OldSize { claimed: u64, found: u64 },
    #[error("the earlier checkpoint (--since) is of feed {old}, the proof of feed {new}")]
    OldFeed { old: String, new: String },
    #[error("the earlier checkpoint (--since) is not a checkpoint note or proof file: {0}")]
    OldUnreadable(String),
    #[error("the new checkpoint does not extend the earlier one: {0}")]
    Consistency(ProofError),
}

impl ProofCheckError {
    /// A stable name of the failed check (in `--json` output).
    pub fn check(&self) -> &'static str {
        use ProofCheckError::*;
        match self {
            Parse(_) | Layout { .. } | NoExtra | Extra(_) | ExtraVersion(_) => "decode",
            Event(_) => "decode",
            Certificate { .. } | CertificateKey => "certificate",
            Checkpoint(CheckpointError::NotSigned { .. }) => "checkpoint-signature",
            Checkpoint(_) | WrongFeed { .. } | NewSize { .. } => "checkpoint",
            EventSignature { .. } => "signature",
            PayloadHash { .. } => "payload-hash",
            CertificateValidity { .. } => "certificate-validity",
            Revoked { .. } => "revoked",
            Index { .. } | Inclusion(_) => "inclusion",
            WitnessCert(_) | UnderWitnessed { .. } => "witnesses",
            OldSize { .. } | OldFeed { .. } | OldUnreadable(_) | Consistency(_) => "consistency",
        }
    }
}

/// A verified checkpoint as a report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointSummary {
    pub origin: String,
    pub size: u64,
    pub root: String,
    /// Given witnesses whose cosignatures verify (sorted).
    pub cosigners: Vec<String>,
}

/// The event of a verified inclusion proof.
#[derive(Debug, Clone, Serialize)]
pub struct ProvedEvent {
    pub id: String,
    pub feed: String,
    pub seq: u64,
    pub event_type: String,
    pub timestamp: String,
    pub meta: Vec<(String, String)>,
    pub hash: String,
    /// `plain`, `encrypted under channel key <hex key id>`, or `pruned`
    /// (no payload in the proof).
    pub payload_state: String,
    /// The payload as text (plain, or decrypted with a given key); `None`
    /// when encrypted without the key or pruned.
    pub payload: Option<String>,
}

/// A verified inclusion proof.
#[derive(Debug, Clone, Serialize)]
pub struct InclusionReport {
    pub index: u64,
    pub checkpoint: CheckpointSummary,
    pub event: ProvedEvent,
}

/// A verified consistency proof.
#[derive(Debug, Clone, Serialize)]
pub struct ConsistencyReport {
    pub feed: String,
    pub old_size: u64,
    pub checkpoint: CheckpointSummary,
    /// Whether an earlier checkpoint was given (`--since`) and checked.
    pub consistency_checked: bool,
    /// The earlier checkpoint's root, when checked.
    pub old_root: Option<String>,
}

/// Checks an inclusion proof file offline (see the module comment).
pub fn verify_inclusion_proof(
    bytes: &[u8],
    options: &ProofOptions<'_>,
) -> Result<InclusionReport, ProofCheckError> {
    let proof = ProofText::parse(bytes)?;
    let extra = decode_extra(proof.extra().ok_or(ProofCheckError::NoExtra)?)?;
    let event = DecodedEvent::decode(extra.envelope)?;
    let feed = event.header().author.clone();
    let seq = event.header().seq;
    let (cert, key) = admit(options.trust, &feed, &extra.cert_der)?;
    let verified = open(options.trust, proof.checkpoint(), &key, &feed)?;
    check_event(&event, &cert, &key)?;
    if proof.index() != seq {
        return Err(ProofCheckError::Index {
            index: proof.index(),
            seq,
        });
    }
    merkle::verify_inclusion(
        &merkle::leaf_hash(event.hash()),
        seq,
        verified.size(),
        proof.proof(),
        verified.root(),
    )
    .map_err(ProofCheckError::Inclusion)?;
    let checkpoint = summarize(options, &verified)?;
    Ok(InclusionReport {
        index: seq,
        checkpoint,
        event: proved_event(&event, options.channel_keys),
    })
}

/// Checks a consistency proof file offline; with `since` (an earlier
/// checkpoint note, inclusion proof or consistency proof of the same feed)
/// also that the new checkpoint extends it.
pub fn verify_consistency_proof(
    bytes: &[u8],
    since: Option<&[u8]>,
    options: &ProofOptions<'_>,
) -> Result<ConsistencyReport, ProofCheckError> {
    let proof = ConsistencyText::parse(bytes)?;
    let cluster = checkpoint::cluster_id(&options.trust.ca_public_key());
    let (_, _, feed) = checkpoint::claimed_feed(&cluster, proof.note.as_bytes())?;
    let (_, key) = admit(options.trust, &feed, &proof.cert_der)?;
    let verified = open(options.trust, proof.note.as_bytes(), &key, &feed)?;
    if proof.new_size != verified.size() {
        return Err(ProofCheckError::NewSize {
            claimed: proof.new_size,
            size: verified.size(),
        });
    }
    let old_root = match since {
        Some(old) => Some(check_since(options, old, &key, &proof, &verified)?),
        None => None,
    };
    Ok(ConsistencyReport {
        feed,
        old_size: proof.old_size,
        checkpoint: summarize(options, &verified)?,
        consistency_checked: old_root.is_some(),
        old_root: old_root.map(hex::encode),
    })
}

/// Opens the earlier checkpoint and checks the proof from it; its root.
fn check_since(
    options: &ProofOptions<'_>,
    old: &[u8],
    new_key: &VerifyingKey,
    proof: &ConsistencyText,
    new: &VerifiedCheckpoint,
) -> Result<Hash, ProofCheckError> {
    let (note, cert) = old_checkpoint(old)?;
    let key = match cert {
        Some(der) => admit(options.trust, new.feed(), &der)?.1,
        None => *new_key,
    };
    let cluster = checkpoint::cluster_id(&options.trust.ca_public_key());
    let (_, _, old_feed) = checkpoint::claimed_feed(&cluster, &note)?;
    if old_feed != new.feed() {
        return Err(ProofCheckError::OldFeed {
            old: old_feed,
            new: new.feed().to_string(),
        });
    }
    let old_cp = checkpoint::open_checkpoint(&cluster, &note, &key)?;
    if old_cp.size() != proof.old_size {
        return Err(ProofCheckError::OldSize {
            claimed: proof.old_size,
            found: old_cp.size(),
        });
    }
    merkle::verify_consistency(
        proof.old_size,
        new.size(),
        old_cp.root(),
        new.root(),
        &proof.hashes,
    )
    .map_err(ProofCheckError::Consistency)?;
    Ok(*old_cp.root())
}

/// The checkpoint note in an earlier file, and the author certificate it
/// carries if it is a proof file.
fn old_checkpoint(bytes: &[u8]) -> Result<(Vec<u8>, Option<Vec<u8>>), ProofCheckError> {
    let unreadable = |e: String| ProofCheckError::OldUnreadable(e);
    match proof_kind(bytes) {
        Some(ProofKind::Inclusion) => {
            let proof = ProofText::parse(bytes).map_err(|e| unreadable(e.to_string()))?;
            let extra = proof
                .extra()
                .ok_or_else(|| unreadable("an inclusion proof without extra data".into()))
                .and_then(|e| decode_extra(e).map_err(|e| unreadable(e.to_string())))?;
            Ok((proof.checkpoint().to_vec(), Some(extra.cert_der)))
        }
        Some(ProofKind::Consistency) => {
            let proof = ConsistencyText::parse(bytes).map_err(|e| unreadable(e.to_string()))?;
            Ok((proof.note.into_bytes(), Some(proof.cert_der)))
        }
        None => Ok((bytes.to_vec(), None)),
    }
}

/// Decodes `postcard(InclusionExtra)` canonically.
fn decode_extra(bytes: &[u8]) -> Result<InclusionExtra, ProofCheckError> {
    let (extra, rest): (InclusionExtra, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| ProofCheckError::Extra(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ProofCheckError::Extra(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    if extra.version != INCLUSION_EXTRA_VERSION {
        return Err(ProofCheckError::ExtraVersion(extra.version));
    }
    if postcard::to_stdvec(&extra).ok().as_deref() != Some(bytes) {
        return Err(ProofCheckError::Extra("not in canonical form".into()));
    }
    Ok(extra)
}

/// Admits `cert_der` as `feed`'s author certificate; its key.
fn admit(
    trust: &TrustAnchor,
    feed: &str,
    cert_der: &[u8],
) -> Result<(AuthorCert, VerifyingKey), ProofCheckError> {
    // The trust anchor also checks the certificate's bytes outside the
    // CA's signature against their one DER form, so a proof has one form.
    let cert =
        trust
            .admit_author(feed, cert_der)
            .map_err(|source| ProofCheckError::Certificate {
                service: feed.to_string(),
                source,
            })?;
    let key =
        VerifyingKey::from_bytes(&cert.public_key).map_err(|_| ProofCheckError::CertificateKey)?;
    Ok((cert, key))
}

/// Opens a checkpoint of this CA's cluster signed by `key`, of `feed`.
fn open(
    trust: &TrustAnchor,
    note: &[u8],
    key: &VerifyingKey,
    feed: &str,
) -> Result<VerifiedCheckpoint, ProofCheckError> {
    let cluster = checkpoint::cluster_id(&trust.ca_public_key());
    let verified = checkpoint::open_checkpoint(&cluster, note, key)?;
    if verified.feed() != feed {
        return Err(ProofCheckError::WrongFeed {
            checkpoint: verified.feed().to_string(),
            event: feed.to_string(),
        });
    }
    Ok(verified)
}

/// The event's own checks: a format-1 event's signature (a format-2 event
/// has none; the checkpoint including it is its signature), payload
/// commitment, certificate time.
fn check_event(
    event: &DecodedEvent,
    cert: &AuthorCert,
    key: &VerifyingKey,
) -> Result<(), ProofCheckError> {
    let h = event.header();
    let (feed, seq) = (h.author.clone(), h.seq);
    if let Some(signature) = event.signature_bytes()
        && !signature_valid(key, event.hash(), &Signature::from_bytes(signature))
    {
        return Err(ProofCheckError::EventSignature { feed, seq });
    }
    // The feed verifier's own rules for the payload commitment and the
    // certificate's validity at the event's time.
    if let Some(payload) = event.payload()
        && check_payload(h, payload).is_err()
    {
        return Err(ProofCheckError::PayloadHash { feed, seq });
    }
    if check_cert_window(cert, h).is_err() {
        return Err(ProofCheckError::CertificateValidity { feed, seq });
    }
    if let Some(cutoff) = cert.revoked_from
        && cutoff.refuses(seq, h.timestamp_us)
    {
        return Err(ProofCheckError::Revoked {
            feed,
            seq,
            cutoff: cutoff.describe(),
        });
    }
    Ok(())
}

/// The checkpoint's summary, counting cosignatures by the given witnesses
/// (each admitted by the CA as a node), and `--witnesses` applied.
fn summarize(
    options: &ProofOptions<'_>,
    verified: &VerifiedCheckpoint,
) -> Result<CheckpointSummary, ProofCheckError> {
    let cluster = checkpoint::cluster_id(&options.trust.ca_public_key());
    let mut cosigners = Vec::new();
    for der in options.witness_certs {
        let (cert, role) = options
            .trust
            .admit_peer_history(der)
            .map_err(|e| ProofCheckError::WitnessCert(e.to_string()))?;
        if role != CertRole::Node {
            return Err(ProofCheckError::WitnessCert(format!(
                "{} holds a client certificate, not a node certificate",
                cert.service
            )));
        }
        let Ok(key) = VerifyingKey::from_bytes(&cert.public_key) else {
            continue;
        };
        let valid = cert.service != verified.feed()
            && verified.note().signatures().iter().any(|s| {
                checkpoint::cosignature_by(&cluster, verified.checkpoint(), s, &cert.service, &key)
                    .is_some()
            });
        if valid && !cosigners.contains(&cert.service) {
            cosigners.push(cert.service);
        }
    }
    cosigners.sort();
    if let Some(required) = options.witnesses
        && cosigners.len() < required
    {
        return Err(ProofCheckError::UnderWitnessed {
            required,
            found: cosigners.len(),
            names: cosigners.join(", "),
        });
    }
    Ok(CheckpointSummary {
        origin: verified.checkpoint().origin().to_string(),
        size: verified.size(),
        root: hex::encode(verified.root()),
        cosigners,
    })
}

/// The event as a report shows it, its payload decrypted when a key fits.
fn proved_event(event: &DecodedEvent, keys: &[ChannelKey]) -> ProvedEvent {
    let h = event.header();
    let (payload_state, payload) = match (&h.payload.encryption, event.payload()) {
        (_, None) => ("pruned".to_string(), None),
        (Encryption::Plain, Some(p)) => ("plain".to_string(), Some(text_of(p))),
        (Encryption::XChaCha20Poly1305 { key_id, .. }, Some(p)) => (
            format!("encrypted under channel key {}", hex::encode(key_id)),
            decrypt_payload(h, p, keys)
                .ok()
                .map(|plain| text_of(&plain)),
        ),
    };
    ProvedEvent {
        id: h.uuid().to_string(),
        feed: h.author.clone(),
        seq: h.seq,
        event_type: h.event_type.clone(),
        timestamp: crate::clock::format_timestamp(h.timestamp_us),
        meta: h.meta.clone(),
        hash: hex::encode(event.hash()),
        payload_state,
        payload,
    }
}

/// UTF-8 text as is; other bytes as `base64:...`.
fn text_of(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => format!("base64:{}", STANDARD.encode(bytes)),
    }
}
