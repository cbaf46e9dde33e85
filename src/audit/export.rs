//! The export bundle: every feed a node holds as the exact signed bytes, in a
//! streamable file an auditor verifies with nothing but the CA certificate.
//!
//! ```text
//! file   = MAGIC record*
//! MAGIC  = "HERALDX2"        (format 2, written; "HERALDX1": format 1, read only)
//! record = len:u32 little-endian, body: len bytes = postcard(record)
//! ```
//!
//! Records come in this order: one `Begin`; every feed (sorted by name), each
//! as its events in sequence order starting at genesis, then (format 2) the
//! feed's latest checkpoint when the store holds one; any `Fork` evidence;
//! (format 2) any `Equivocation` evidence; one `End`, signed by the exporting
//! node, which lists every feed's head so that truncation and dropped feeds
//! are detected. See `docs/FORMAT.md` sections "The export file" and
//! "Export format 2".

use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::core::crypto::{self, Hash};
use crate::core::limits::ENVELOPE_BYTES_MAX;
use crate::core::merkle;
use crate::core::note::{NOTE_BYTES_MAX, PROOF_HASHES_MAX};
use crate::store::tree::TileReader;

/// First 8 bytes of a format-1 export (read, no longer written).
pub const MAGIC: &[u8; 8] = b"HERALDX1";
/// First 8 bytes of a format-2 export (what `herald export` writes).
pub const MAGIC_V2: &[u8; 8] = b"HERALDX2";
/// Largest record body: a fork record holds two envelopes.
pub const RECORD_BYTES_MAX: usize = 2 * ENVELOPE_BYTES_MAX + 64;
/// Most feeds one export's end record may list.
pub const EXPORT_FEEDS_MAX: usize = 100_000;

/// One record of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExportRecord {
    /// Opens the export.
    Begin {
        /// The service whose node wrote the export.
        exporter: String,
        /// When, in microseconds since the Unix epoch (UTC).
        created_us: u64,
    },
    /// One event: its exact envelope bytes.
    Event(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Evidence of a fork: the stored event and a conflicting, validly signed
    /// event with the same author and sequence number.
    Fork {
        #[serde(with = "serde_bytes")]
        stored: Vec<u8>,
        #[serde(with = "serde_bytes")]
        conflicting: Vec<u8>,
    },
    /// Closes the export.
    End(ExportEnd),
}

/// The closing record: what the exporter says it wrote, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportEnd {
    pub body: ExportEndBody,
    /// Ed25519 signature by the exporter over `EXPORT_END_TAG ‖ postcard(body)`.
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

/// The signed content of the end record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportEndBody {
    pub exporter: String,
    pub created_us: u64,
    /// Every feed exported, sorted by name.
    pub feeds: Vec<ExportedFeed>,
    /// Number of `Fork` records.
    pub forks: u64,
}

/// One feed as the exporter wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedFeed {
    pub feed: String,
    pub events: u64,
    pub head_seq: u64,
    pub head_hash: Hash,
}

impl ExportEndBody {
    /// The message the exporter signs.
    pub fn signing_message(&self) -> Vec<u8> {
        tagged_message(crypto::EXPORT_END_TAG, self)
    }
}

/// `tag ‖ postcard(body)`: what an exporter signs for an end record.
fn tagged_message(tag: &[u8], body: &impl Serialize) -> Vec<u8> {
    let mut msg = tag.to_vec();
    msg.extend_from_slice(&postcard::to_stdvec(body).unwrap_or_default());
    msg
}

/// Which export format a file is in (from its magic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ExportFormat {
    /// `HERALDX1`: events, forks, end. Read only.
    V1,
    /// `HERALDX2`: format 1 plus checkpoints and equivocation evidence.
    V2,
}

impl ExportFormat {
    /// The format's number as reports show it (1 or 2).
    pub fn number(self) -> u8 {
        match self {
            ExportFormat::V1 => 1,
            ExportFormat::V2 => 2,
        }
    }
}

/// One record of a format-2 export. Indices 0 to 3 are format 1's, with a
/// larger end record; 4 and 5 are new.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExportRecordV2 {
    /// Opens the export (as in format 1).
    Begin { exporter: String, created_us: u64 },
    /// One event: its exact envelope bytes (as in format 1).
    Event(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Fork evidence (as in format 1).
    Fork {
        #[serde(with = "serde_bytes")]
        stored: Vec<u8>,
        #[serde(with = "serde_bytes")]
        conflicting: Vec<u8>,
    },
    /// Closes the export.
    End(ExportEndV2),
    /// The latest checkpoint of the feed whose events precede it.
    Checkpoint(CheckpointRecord),
    /// Evidence that a feed's author signed two inconsistent checkpoints.
    Equivocation(EquivocationRecord),
}

/// A feed's latest stored checkpoint, as written after the feed's events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// The signed note (author's signature, then cosignatures), verbatim.
    #[serde(with = "serde_bytes")]
    pub note: Vec<u8>,
    /// RFC 6962 consistency proof from the checkpoint's size to the number of
    /// events of the feed in the export (empty when they are equal), so the
    /// auditor checks the root with one frontier per feed, however many
    /// events came after the checkpoint.
    pub consistency: Vec<Hash>,
}

/// Equivocation evidence (`core::checkpoint::Equivocation`), as exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EquivocationRecord {
    #[serde(with = "serde_bytes")]
    pub first: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub second: Vec<u8>,
    pub prefix_root: Hash,
    pub proof: Vec<Hash>,
}

impl EquivocationRecord {
    /// The evidence in the form `check_equivocation` takes.
    pub fn to_evidence(&self) -> crate::core::checkpoint::Equivocation {
        crate::core::checkpoint::Equivocation {
            first: self.first.clone(),
            second: self.second.clone(),
            prefix_root: self.prefix_root,
            proof: self.proof.clone(),
        }
    }
}

/// The closing record of a format-2 export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportEndV2 {
    pub body: ExportEndBodyV2,
    /// Ed25519 signature by the exporter over
    /// `EXPORT_END_V2_TAG ‖ postcard(body)`.
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

/// The signed content of a format-2 end record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportEndBodyV2 {
    pub exporter: String,
    pub created_us: u64,
    /// Every feed exported, sorted by name.
    pub feeds: Vec<ExportedFeed>,
    /// Number of `Fork` records.
    pub forks: u64,
    /// Number of `Checkpoint` records.
    pub checkpoints: u64,
    /// Number of `Equivocation` records.
    pub equivocations: u64,
}

impl ExportEndBodyV2 {
    /// The message the exporter signs.
    pub fn signing_message(&self) -> Vec<u8> {
        tagged_message(crypto::EXPORT_END_V2_TAG, self)
    }
}

/// A record of either format, as the auditor reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyRecord {
    Begin {
        exporter: String,
        created_us: u64,
    },
    Event(Vec<u8>),
    Fork {
        stored: Vec<u8>,
        conflicting: Vec<u8>,
    },
    End(EndView),
    Checkpoint(CheckpointRecord),
    Equivocation(EquivocationRecord),
}

/// An end record of either format: what it claims, the exact message its
/// signature covers, and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndView {
    pub exporter: String,
    pub created_us: u64,
    pub feeds: Vec<ExportedFeed>,
    pub forks: u64,
    /// `None` in format 1, which has no such records.
    pub checkpoints: Option<u64>,
    pub equivocations: Option<u64>,
    pub message: Vec<u8>,
    pub signature: [u8; 64],
}

/// Errors writing or reading an export's framing.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot write export {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {what}: {source}")]
    Read { what: String, source: io::Error },
    #[error(
        "{path} is not a herald export (it does not start with {:?} or {:?})",
        String::from_utf8_lossy(MAGIC_V2),
        String::from_utf8_lossy(MAGIC)
    )]
    NotAnExport { path: PathBuf },
    #[error("store: {0}")]
    Store(#[from] crate::store::LogError),
    #[error("cannot prove feed {feed}'s checkpoint against its stored Merkle tree: {message}")]
    Tree { feed: String, message: String },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Writes records to an export file.
pub struct ExportWriter<W: Write> {
    out: W,
}

impl<W: Write> ExportWriter<W> {
    /// Starts a file of `format` (its magic).
    pub fn new(mut out: W, format: ExportFormat) -> io::Result<ExportWriter<W>> {
        out.write_all(match format {
            ExportFormat::V1 => MAGIC,
            ExportFormat::V2 => MAGIC_V2,
        })?;
        Ok(ExportWriter { out })
    }

    /// Frames one record (of either format's record type).
    pub fn record<R: Serialize>(&mut self, record: &R) -> io::Result<()> {
        let body = postcard::to_stdvec(record).map_err(io::Error::other)?;
        self.out.write_all(&(body.len() as u32).to_le_bytes())?;
        self.out.write_all(&body)
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// What [`export_store`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    pub path: PathBuf,
    pub feeds: usize,
    pub events: u64,
    pub forks: u64,
    /// `Checkpoint` records written (feeds the store holds a checkpoint of).
    pub checkpoints: u64,
    /// `Equivocation` records written.
    pub equivocations: u64,
    pub bytes: u64,
}

/// Streams every feed of the store at `db` into `out_path` in format 2, and
/// signs the end record with `key` (the exporting node's key). Written to a
/// temporary file and renamed, so a failed export never leaves a half file
/// under the name.
pub fn export_store(
    conn: &Connection,
    exporter: &str,
    key: &SigningKey,
    created_us: u64,
    out_path: &Path,
) -> Result<ExportSummary, ExportError> {
    let tmp_path = out_path.with_extension("partial");
    let write_err = |source| ExportError::Write {
        path: out_path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(&tmp_path).map_err(write_err)?;
    let mut writer =
        ExportWriter::new(BufWriter::new(file), ExportFormat::V2).map_err(write_err)?;
    writer
        .record(&ExportRecordV2::Begin {
            exporter: exporter.to_string(),
            created_us,
        })
        .map_err(write_err)?;
    // Read in one read transaction so the export is a consistent snapshot.
    conn.execute_batch("BEGIN")?;
    let body = write_snapshot(conn, &mut writer, exporter, created_us, out_path);
    conn.execute_batch("COMMIT")?;
    let body = body?;
    let summary_counts = (
        body.feeds.len(),
        body.feeds.iter().map(|f| f.events).sum::<u64>(),
        body.forks,
        body.checkpoints,
        body.equivocations,
    );
    let signature = key.sign(&body.signing_message()).to_bytes();
    writer
        .record(&ExportRecordV2::End(ExportEndV2 { body, signature }))
        .map_err(write_err)?;
    let file = writer
        .finish()
        .map_err(write_err)?
        .into_inner()
        .map_err(|e| write_err(e.into_error()))?;
    file.sync_all().map_err(write_err)?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    std::fs::rename(&tmp_path, out_path).map_err(write_err)?;
    let (feeds, events, forks, checkpoints, equivocations) = summary_counts;
    Ok(ExportSummary {
        path: out_path.to_path_buf(),
        feeds,
        events,
        forks,
        checkpoints,
        equivocations,
        bytes,
    })
}

/// Writes every record between `Begin` and `End` and returns the end
/// record's body.
fn write_snapshot<W: Write>(
    conn: &Connection,
    writer: &mut ExportWriter<W>,
    exporter: &str,
    created_us: u64,
    out_path: &Path,
) -> Result<ExportEndBodyV2, ExportError> {
    let write_err = |source| ExportError::Write {
        path: out_path.to_path_buf(),
        source,
    };
    let mut feeds = Vec::new();
    let mut checkpoints = 0u64;
    {
        let mut stmt =
            conn.prepare(&crate::store::rows::select_events("ORDER BY f.name, e.seq"))?;
        let mut rows = stmt.query([])?;
        let mut rebuilder = crate::store::rows::Rebuilder::new(conn);
        let mut current: Option<ExportedFeed> = None;
        // Format-2 events are authentic through a checkpoint: those beyond
        // the feed's stored checkpoint (a relay received them before it)
        // stay out of the export, which ends each feed where it can prove.
        let mut covered = 0u64;
        while let Some(row) = rows.next()? {
            let event = rebuilder.event(crate::store::rows::event_row(row)?)?;
            let feed = event.header.author.clone();
            if current.as_ref().is_none_or(|c| c.feed != feed) {
                if let Some(done) = current.take() {
                    checkpoints += write_checkpoint(conn, writer, &done, out_path)?;
                    feeds.push(done);
                }
                covered = crate::store::read_checkpoint(conn, &feed)?.map_or(0, |c| c.size);
                current = Some(ExportedFeed {
                    feed: feed.clone(),
                    events: 0,
                    head_seq: 0,
                    head_hash: [0; 32],
                });
            }
            let seq = event.header.seq;
            if seq >= covered && crate::core::codec::is_sealed_envelope(&event.envelope) {
                continue;
            }
            if let Some(c) = current.as_mut() {
                c.events += 1;
                c.head_seq = seq;
                c.head_hash = event.hash;
            }
            writer
                .record(&ExportRecordV2::Event(event.envelope))
                .map_err(write_err)?;
        }
        if let Some(done) = current.take() {
            checkpoints += write_checkpoint(conn, writer, &done, out_path)?;
            feeds.push(done);
        }
    }
    let forks = crate::store::read_forks(conn)?;
    for fork in &forks {
        writer
            .record(&ExportRecordV2::Fork {
                stored: fork.stored_envelope.clone(),
                conflicting: fork.conflicting_envelope.clone(),
            })
            .map_err(write_err)?;
    }
    let equivocations = crate::store::read_equivocations(conn)?;
    for (_, evidence) in &equivocations {
        writer
            .record(&ExportRecordV2::Equivocation(EquivocationRecord {
                first: evidence.first.clone(),
                second: evidence.second.clone(),
                prefix_root: evidence.prefix_root,
                proof: evidence.proof.clone(),
            }))
            .map_err(write_err)?;
    }
    Ok(ExportEndBodyV2 {
        exporter: exporter.to_string(),
        created_us,
        feeds,
        forks: forks.len() as u64,
        checkpoints,
        equivocations: equivocations.len() as u64,
    })
}

/// Writes `feed`'s stored checkpoint after its events, with the consistency
/// proof from its size to the events written; 1 if one was written.
fn write_checkpoint<W: Write>(
    conn: &Connection,
    writer: &mut ExportWriter<W>,
    feed: &ExportedFeed,
    out_path: &Path,
) -> Result<u64, ExportError> {
    let Some(stored) = crate::store::read_checkpoint(conn, &feed.feed)? else {
        return Ok(0);
    };
    let consistency = if stored.size == 0 || stored.size >= feed.events {
        Vec::new()
    } else {
        merkle::consistency_proof(
            &mut TileReader::new(conn, &feed.feed),
            stored.size,
            feed.events,
        )
        .map_err(|e| ExportError::Tree {
            feed: feed.feed.clone(),
            message: e.to_string(),
        })?
    };
    writer
        .record(&ExportRecordV2::Checkpoint(CheckpointRecord {
            note: stored.note.into_bytes(),
            consistency,
        }))
        .map_err(|source| ExportError::Write {
            path: out_path.to_path_buf(),
            source,
        })?;
    Ok(1)
}

/// One framed record read from an export: its body bytes and where it began.
pub struct RawRecord {
    /// Byte offset of the record's length prefix in the file.
    pub offset: u64,
    pub body: Vec<u8>,
}

/// Why the framing of an export ended early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameProblem {
    /// A length prefix over [`RECORD_BYTES_MAX`].
    Oversized { offset: u64, len: u64 },
    /// The file ends inside a record.
    Truncated {
        offset: u64,
        wanted: u64,
        found: u64,
    },
}

/// Reads framed records one at a time (streaming: memory stays flat).
pub struct RecordReader<R: Read> {
    input: R,
    offset: u64,
    format: ExportFormat,
}

impl<R: Read> RecordReader<R> {
    /// Checks the magic and positions at the first record.
    pub fn new(mut input: R, path: &Path) -> Result<RecordReader<R>, ExportError> {
        let mut magic = [0u8; 8];
        let got = read_full(&mut input, &mut magic).map_err(|source| ExportError::Read {
            what: path.display().to_string(),
            source,
        })?;
        let format = match &magic {
            _ if got != magic.len() => None,
            m if m == MAGIC => Some(ExportFormat::V1),
            m if m == MAGIC_V2 => Some(ExportFormat::V2),
            _ => None,
        };
        match format {
            Some(format) => Ok(RecordReader {
                input,
                offset: 8,
                format,
            }),
            None => Err(ExportError::NotAnExport {
                path: path.to_path_buf(),
            }),
        }
    }

    /// The file's format, from its magic.
    pub fn format(&self) -> ExportFormat {
        self.format
    }

    /// The next record; `Ok(None)` at a clean end of file.
    pub fn next_record(&mut self) -> Result<Option<Result<RawRecord, FrameProblem>>, io::Error> {
        let offset = self.offset;
        let mut len_bytes = [0u8; 4];
        let got = read_full(&mut self.input, &mut len_bytes)?;
        if got == 0 {
            return Ok(None);
        }
        if got < 4 {
            return Ok(Some(Err(FrameProblem::Truncated {
                offset,
                wanted: 4,
                found: got as u64,
            })));
        }
        let len = u32::from_le_bytes(len_bytes) as u64;
        if len as usize > RECORD_BYTES_MAX {
            return Ok(Some(Err(FrameProblem::Oversized { offset, len })));
        }
        let mut body = vec![0u8; len as usize];
        let got = read_full(&mut self.input, &mut body)?;
        if got < body.len() {
            return Ok(Some(Err(FrameProblem::Truncated {
                offset,
                wanted: len,
                found: got as u64,
            })));
        }
        self.offset += 4 + len;
        Ok(Some(Ok(RawRecord { offset, body })))
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Decodes a record body (rejecting trailing bytes).
pub fn decode_record(body: &[u8]) -> Result<ExportRecord, String> {
    let (record, rest): (ExportRecord, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes", rest.len()));
    }
    if let ExportRecord::End(end) = &record
        && end.body.feeds.len() > EXPORT_FEEDS_MAX
    {
        return Err(format!("end record lists over {EXPORT_FEEDS_MAX} feeds"));
    }
    // One encoding per record, as for events.
    if postcard::to_stdvec(&record).map_err(|e| e.to_string())? != body {
        return Err("record is not in canonical form".into());
    }
    Ok(record)
}

/// Most hashes in a checkpoint record's consistency proof or an
/// equivocation record's proof: one more than a 63-level tree's path.
pub const RECORD_PROOF_HASHES_MAX: usize = PROOF_HASHES_MAX;

/// Decodes a record body of `format` (rejecting trailing bytes and any
/// encoding but the canonical one) into the form the auditor reads.
pub fn decode_any(format: ExportFormat, body: &[u8]) -> Result<AnyRecord, String> {
    match format {
        ExportFormat::V1 => Ok(match decode_record(body)? {
            ExportRecord::Begin {
                exporter,
                created_us,
            } => AnyRecord::Begin {
                exporter,
                created_us,
            },
            ExportRecord::Event(e) => AnyRecord::Event(e),
            ExportRecord::Fork {
                stored,
                conflicting,
            } => AnyRecord::Fork {
                stored,
                conflicting,
            },
            ExportRecord::End(end) => AnyRecord::End(EndView {
                message: end.body.signing_message(),
                exporter: end.body.exporter,
                created_us: end.body.created_us,
                feeds: end.body.feeds,
                forks: end.body.forks,
                checkpoints: None,
                equivocations: None,
                signature: end.signature,
            }),
        }),
        ExportFormat::V2 => decode_record_v2(body).map(any_of_v2),
    }
}

/// Decodes a format-2 record body canonically, within the limits.
pub fn decode_record_v2(body: &[u8]) -> Result<ExportRecordV2, String> {
    let (record, rest): (ExportRecordV2, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes", rest.len()));
    }
    check_v2_limits(&record)?;
    if postcard::to_stdvec(&record).map_err(|e| e.to_string())? != body {
        return Err("record is not in canonical form".into());
    }
    Ok(record)
}

/// The per-record limits of format 2 (the frame limit bounds the rest).
fn check_v2_limits(record: &ExportRecordV2) -> Result<(), String> {
    let note = |what: &str, len: usize| {
        if len > NOTE_BYTES_MAX {
            Err(format!(
                "{what} is {len} bytes, over the note limit of {NOTE_BYTES_MAX}"
            ))
        } else {
            Ok(())
        }
    };
    let proof = |what: &str, len: usize| {
        if len > RECORD_PROOF_HASHES_MAX {
            Err(format!(
                "{what} has {len} hashes, over the limit of {RECORD_PROOF_HASHES_MAX}"
            ))
        } else {
            Ok(())
        }
    };
    match record {
        ExportRecordV2::End(end) if end.body.feeds.len() > EXPORT_FEEDS_MAX => {
            Err(format!("end record lists over {EXPORT_FEEDS_MAX} feeds"))
        }
        ExportRecordV2::Checkpoint(c) => {
            note("checkpoint note", c.note.len())?;
            proof("checkpoint consistency proof", c.consistency.len())
        }
        ExportRecordV2::Equivocation(e) => {
            note("first checkpoint note", e.first.len())?;
            note("second checkpoint note", e.second.len())?;
            proof("equivocation proof", e.proof.len())
        }
        _ => Ok(()),
    }
}

fn any_of_v2(record: ExportRecordV2) -> AnyRecord {
    match record {
        ExportRecordV2::Begin {
            exporter,
            created_us,
        } => AnyRecord::Begin {
            exporter,
            created_us,
        },
        ExportRecordV2::Event(e) => AnyRecord::Event(e),
        ExportRecordV2::Fork {
            stored,
            conflicting,
        } => AnyRecord::Fork {
            stored,
            conflicting,
        },
        ExportRecordV2::End(end) => AnyRecord::End(EndView {
            message: end.body.signing_message(),
            exporter: end.body.exporter,
            created_us: end.body.created_us,
            feeds: end.body.feeds,
            forks: end.body.forks,
            checkpoints: Some(end.body.checkpoints),
            equivocations: Some(end.body.equivocations),
            signature: end.signature,
        }),
        ExportRecordV2::Checkpoint(c) => AnyRecord::Checkpoint(c),
        ExportRecordV2::Equivocation(e) => AnyRecord::Equivocation(e),
    }
}
