//! The export bundle: every feed a node holds as the exact signed bytes, in a
//! streamable file an auditor verifies with nothing but the CA certificate.
//!
//! ```text
//! file   = MAGIC record*
//! MAGIC  = "HERALDX1"                      (8 bytes)
//! record = len:u32 little-endian, body: len bytes = postcard(ExportRecord)
//! ```
//!
//! Records come in this order: one `Begin`; every feed (sorted by name), each
//! as its events in sequence order starting at genesis; any `Fork` evidence;
//! one `End`, signed by the exporting node, which lists every feed's head so
//! that truncation and dropped feeds are detected. See `docs/FORMAT.md`.

use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::core::crypto::{self, Hash};
use crate::core::limits::ENVELOPE_BYTES_MAX;

/// First 8 bytes of every export.
pub const MAGIC: &[u8; 8] = b"HERALDX1";
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
        let mut msg = crypto::EXPORT_END_TAG.to_vec();
        msg.extend_from_slice(&postcard::to_stdvec(self).unwrap_or_default());
        msg
    }
}

/// Errors writing or reading an export's framing.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot write export {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {what}: {source}")]
    Read { what: String, source: io::Error },
    #[error(
        "{path} is not a herald export (it does not start with {:?})",
        String::from_utf8_lossy(MAGIC)
    )]
    NotAnExport { path: PathBuf },
    #[error("store: {0}")]
    Store(#[from] crate::store::LogError),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Writes records to an export file.
pub struct ExportWriter<W: Write> {
    out: W,
}

impl<W: Write> ExportWriter<W> {
    pub fn new(mut out: W) -> io::Result<ExportWriter<W>> {
        out.write_all(MAGIC)?;
        Ok(ExportWriter { out })
    }

    pub fn record(&mut self, record: &ExportRecord) -> io::Result<()> {
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
    pub bytes: u64,
}

/// Streams every feed of the store at `db` into `out_path`, and signs the end
/// record with `key` (the exporting node's key). Written to a temporary file
/// and renamed, so a failed export never leaves a half file under the name.
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
    let mut writer = ExportWriter::new(BufWriter::new(file)).map_err(write_err)?;
    writer
        .record(&ExportRecord::Begin {
            exporter: exporter.to_string(),
            created_us,
        })
        .map_err(write_err)?;
    // Read in one read transaction so the export is a consistent snapshot.
    conn.execute_batch("BEGIN")?;
    let mut feeds = Vec::new();
    let mut events_total = 0u64;
    {
        let mut stmt =
            conn.prepare("SELECT feed, seq, hash, envelope FROM events ORDER BY feed, seq")?;
        let mut rows = stmt.query([])?;
        let mut current: Option<ExportedFeed> = None;
        while let Some(row) = rows.next()? {
            let feed: String = row.get(0)?;
            let seq = row.get::<_, i64>(1)? as u64;
            let hash: Vec<u8> = row.get(2)?;
            let envelope: Vec<u8> = row.get(3)?;
            if current.as_ref().map(|c| c.feed != feed).unwrap_or(true) {
                feeds.extend(current.take());
                current = Some(ExportedFeed {
                    feed: feed.clone(),
                    events: 0,
                    head_seq: 0,
                    head_hash: [0; 32],
                });
            }
            if let Some(c) = current.as_mut() {
                c.events += 1;
                c.head_seq = seq;
                c.head_hash = crate::store::hash_from_blob(&hash);
            }
            writer
                .record(&ExportRecord::Event(envelope))
                .map_err(write_err)?;
            events_total += 1;
        }
        feeds.extend(current);
    }
    let forks = crate::store::read_forks(conn)?;
    for fork in &forks {
        writer
            .record(&ExportRecord::Fork {
                stored: fork.stored_envelope.clone(),
                conflicting: fork.conflicting_envelope.clone(),
            })
            .map_err(write_err)?;
    }
    conn.execute_batch("COMMIT")?;
    let body = ExportEndBody {
        exporter: exporter.to_string(),
        created_us,
        feeds,
        forks: forks.len() as u64,
    };
    let signature = key.sign(&body.signing_message()).to_bytes();
    let feed_count = body.feeds.len();
    writer
        .record(&ExportRecord::End(ExportEnd { body, signature }))
        .map_err(write_err)?;
    let file = writer
        .finish()
        .map_err(write_err)?
        .into_inner()
        .map_err(|e| write_err(e.into_error()))?;
    file.sync_all().map_err(write_err)?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    std::fs::rename(&tmp_path, out_path).map_err(write_err)?;
    Ok(ExportSummary {
        path: out_path.to_path_buf(),
        feeds: feed_count,
        events: events_total,
        forks: forks.len() as u64,
        bytes,
    })
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
}

impl<R: Read> RecordReader<R> {
    /// Checks the magic and positions at the first record.
    pub fn new(mut input: R, path: &Path) -> Result<RecordReader<R>, ExportError> {
        let mut magic = [0u8; 8];
        match read_full(&mut input, &mut magic) {
            Ok(8) if &magic == MAGIC => Ok(RecordReader { input, offset: 8 }),
            Ok(_) => Err(ExportError::NotAnExport {
                path: path.to_path_buf(),
            }),
            Err(source) => Err(ExportError::Read {
                what: path.display().to_string(),
                source,
            }),
        }
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
