//! Offline verification of an export or a node's data directory.
//!
//! The auditor streams events in chunks: it decodes and hashes a chunk on all
//! cores, admits each feed's author through its genesis certificate, checks
//! every signature of the chunk in batches on all cores, then walks the chain
//! in order. Memory holds one chunk and one small record per feed, so it
//! stays flat however long the log is.
//!
//! A damaged event yields one problem, not a cascade: see
//! [`FeedVerifier::resync`].

pub use crate::clock::format_timestamp;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, VerifyingKey};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;

use super::export::{self, ExportEnd, ExportRecord, FrameProblem, RecordReader};
use crate::core::codec::DecodeError;
use crate::core::crypto::{ChannelKey, Hash};
use crate::core::event::Encryption;
use crate::core::verify::{
    Check, DecodedEvent, FeedVerifier, Rejection, SignatureVerdict, check_event_signatures,
    decrypt_payload,
};
use crate::identity::TrustAnchor;

/// Records decoded and verified together.
pub const AUDIT_CHUNK_RECORDS: usize = 4096;
/// Bytes of records decoded together: with the record limit this bounds
/// the auditor's memory whatever the export holds.
pub const AUDIT_CHUNK_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Problems kept in a report; further ones are only counted.
pub const PROBLEMS_REPORTED_MAX: usize = 1000;

/// Why an audit could not run at all (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Export(#[from] export::ExportError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read store {path}: {message}")]
    Store { path: PathBuf, message: String },
}

/// What to verify against.
pub struct AuditOptions {
    /// The CA (and revocation list) every author must chain to.
    pub trust: TrustAnchor,
    /// Channel keys: with any given, every encrypted event must decrypt.
    pub channel_keys: Vec<ChannelKey>,
    /// Show a progress bar on a terminal.
    pub progress: bool,
}

/// The result of an audit. `valid` is true only when no problem was found.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub source: String,
    pub kind: &'static str,
    pub valid: bool,
    pub exporter: Option<String>,
    pub events: u64,
    pub feeds: Vec<FeedReport>,
    pub problems_total: u64,
    pub problems: Vec<Problem>,
}

/// One feed's summary.
#[derive(Debug, Clone, Serialize)]
pub struct FeedReport {
    pub service: String,
    /// Events of this feed found (valid or not).
    pub events: u64,
    /// Events that passed every check.
    pub verified: u64,
    pub head_seq: Option<u64>,
    pub head_hash: Option<String>,
    pub first_timestamp: Option<String>,
    pub last_timestamp: Option<String>,
    /// Events whose payload decrypted under a given channel key.
    pub decrypted: u64,
    /// `valid`, `invalid`, `forked` or `untrusted` (author not admitted).
    pub status: &'static str,
    pub problems: u64,
}

/// One problem: where, which check, expected against found.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// The feed, when known.
    pub feed: Option<String>,
    pub seq: Option<u64>,
    /// Position in the source: `record N` of an export or `row N` of a store.
    pub location: String,
    pub check: &'static str,
    pub expected: String,
    pub found: String,
}

/// Per-feed audit state: small and fixed-size, whatever the feed's length.
#[derive(Default)]
struct FeedAudit {
    verifier: Option<FeedVerifier>,
    events: u64,
    verified: u64,
    decrypted: u64,
    problems: u64,
    untrusted: bool,
    /// No genesis could be admitted: later events are counted, not checked.
    unverifiable: bool,
    forked: bool,
    first_ts: Option<u64>,
    last_ts: Option<u64>,
    /// The last event found (valid or not), for the end-record comparison.
    last_seen: Option<(u64, Hash)>,
}

impl FeedAudit {
    /// The last event that passed every check (or was adopted after a
    /// reported problem): the feed's head as far as the audit can vouch.
    fn verified_head(&self) -> Option<(u64, Hash)> {
        self.verifier
            .as_ref()
            .map(|v| (v.next_seq() - 1, *v.head_hash()))
    }
}

impl FeedAudit {
    /// The head a report shows: the verified head, or for a feed whose
    /// author was never admitted, the last event found.
    fn reported_head(&self) -> Option<(u64, Hash)> {
        self.verified_head().or(self.last_seen)
    }
}

/// One event waiting in a chunk.
struct Item {
    location: String,
    event: Result<DecodedEvent, DecodeError>,
}

/// The streaming verification engine shared by exports and data directories.
struct Auditor<'a> {
    options: &'a AuditOptions,
    /// Sees every event that passed every check, in feed order.
    visitor: Option<&'a mut (dyn FnMut(&DecodedEvent) + 'a)>,
    feeds: BTreeMap<String, FeedAudit>,
    problems: Vec<Problem>,
    problems_total: u64,
    events: u64,
}

impl<'a> Auditor<'a> {
    fn new(options: &'a AuditOptions) -> Auditor<'a> {
        Auditor {
            options,
            visitor: None,
            feeds: BTreeMap::new(),
            problems: Vec::new(),
            problems_total: 0,
            events: 0,
        }
    }

    fn problem(&mut self, feed: Option<&str>, location: &str, r: Rejection) {
        if r.check == Check::Fork
            && let Some(f) = feed.and_then(|f| self.feeds.get_mut(f))
        {
            f.forked = true;
        }
        self.record(Problem {
            feed: feed.map(str::to_string),
            seq: r.seq,
            location: location.to_string(),
            check: r.check.name(),
            expected: r.expected,
            found: r.found,
        });
    }

    /// Counts a problem against its feed and keeps it, up to
    /// [`PROBLEMS_REPORTED_MAX`].
    fn record(&mut self, problem: Problem) {
        if let Some(f) = problem.feed.as_deref().and_then(|f| self.feeds.get_mut(f)) {
            f.problems += 1;
        }
        self.problems_total += 1;
        if self.problems.len() < PROBLEMS_REPORTED_MAX {
            self.problems.push(problem);
        }
    }

    /// Verifies one chunk of events (see the module comment for the passes).
    fn push_chunk(&mut self, raw: Vec<(String, Vec<u8>)>) {
        let items: Vec<Item> = raw
            .into_par_iter()
            .map(|(location, bytes)| Item {
                location,
                event: DecodedEvent::decode(bytes),
            })
            .collect();
        // Pass 1: admit authors through genesis events; find each event's key.
        let mut pending: Vec<(String, DecodedEvent)> = Vec::with_capacity(items.len());
        let mut signer_keys: Vec<VerifyingKey> = Vec::with_capacity(items.len());
        for item in items {
            self.events += 1;
            let event = match item.event {
                Ok(e) => e,
                Err(e) => {
                    self.problem(None, &item.location, Rejection::decode(&e));
                    continue;
                }
            };
            let author = event.header().author.clone();
            let feed = self.feeds.entry(author.clone()).or_default();
            feed.events += 1;
            feed.last_seen = Some((event.header().seq, *event.hash()));
            if let Some(verifier) = &feed.verifier {
                signer_keys.push(*verifier.key());
                pending.push((item.location, event));
                continue;
            }
            if feed.unverifiable {
                // The genesis was refused once; that is the feed's problem.
                continue;
            }
            match FeedVerifier::genesis(&self.options.trust, event) {
                Ok((verifier, genesis)) => {
                    feed.verifier = Some(verifier);
                    feed.verified += 1;
                    let ts = genesis.header().timestamp_us;
                    feed.first_ts = Some(ts);
                    feed.last_ts = Some(ts);
                }
                Err(r) => {
                    // Without an admitted genesis nothing else of this feed
                    // can be checked; report the cause once.
                    feed.untrusted = r.check == Check::Certificate;
                    feed.unverifiable = true;
                    self.problem(Some(&author), &item.location, r);
                }
            }
        }
        // Pass 2: every signature of the chunk, in batches on all cores.
        let verdicts =
            check_event_signatures(signer_keys.iter().zip(pending.iter().map(|(_, e)| e)));
        // Pass 3: the chain, in order.
        for ((location, event), verdict) in pending.into_iter().zip(verdicts) {
            self.check_chained(&location, event, verdict);
        }
    }

    fn check_chained(&mut self, location: &str, event: DecodedEvent, verdict: SignatureVerdict) {
        let author = event.header().author.clone();
        let keys = &self.options.channel_keys;
        let Some(feed) = self.feeds.get_mut(&author) else {
            return;
        };
        let Some(verifier) = feed.verifier.as_mut() else {
            return;
        };
        match verifier.check_next(&event, verdict) {
            Ok(()) => {
                feed.verified += 1;
                let ts = event.header().timestamp_us;
                feed.first_ts.get_or_insert(ts);
                feed.last_ts = Some(ts);
                let decrypt = decrypt_check(&event, keys);
                if decrypt == Some(true) {
                    feed.decrypted += 1;
                }
                if decrypt == Some(false) {
                    let r = decrypt_rejection(&event, keys);
                    self.problem(Some(&author), location, r);
                }
                if let Some(visit) = self.visitor.as_mut() {
                    visit(&event);
                }
            }
            Err(r) => {
                verifier.resync(&event, verdict);
                self.problem(Some(&author), location, r);
            }
        }
    }

    fn push_fork(&mut self, location: &str, stored: Vec<u8>, conflicting: Vec<u8>) {
        let decoded =
            DecodedEvent::decode(stored).and_then(|a| Ok((a, DecodedEvent::decode(conflicting)?)));
        let (a, b) = match decoded {
            Ok(pair) => pair,
            Err(e) => return self.problem(None, location, Rejection::decode(&e)),
        };
        let author = a.header().author.clone();
        let proven = self
            .feeds
            .get(&author)
            .and_then(|f| f.verifier.as_ref())
            .map(|v| v.is_fork_proof(&a, &b))
            .unwrap_or(false);
        let r = Rejection {
            seq: Some(a.header().seq),
            check: if proven {
                Check::Fork
            } else {
                Check::Signature
            },
            expected: hex::encode(a.hash()),
            found: if proven {
                hex::encode(b.hash())
            } else {
                "fork evidence that is not validly signed by the author".into()
            },
        };
        self.problem(Some(&author), location, r);
    }

    /// Compares what was found with what the source says it holds (the
    /// export's end record, or the store's feed heads).
    fn compare_heads(&mut self, location: &str, claimed: &[(String, u64, Hash)]) {
        let mut listed = std::collections::BTreeSet::new();
        for (feed, head_seq, head_hash) in claimed {
            listed.insert(feed.clone());
            let claim = Some((*head_seq, *head_hash));
            let (verified, last_seen) = self
                .feeds
                .get(feed)
                .map(|f| (f.verified_head(), f.last_seen))
                .unwrap_or((None, None));
            // The last event found may itself be damaged (already reported):
            // either it or the last verified event may carry the claimed head.
            if verified != claim && last_seen != claim {
                let found = verified.or(last_seen);
                let r = Rejection {
                    seq: Some(*head_seq),
                    check: Check::Truncated,
                    expected: format!(
                        "feed {feed} to end at sequence {head_seq} ({})",
                        hex::encode(head_hash)
                    ),
                    found: match found {
                        Some((s, h)) => {
                            format!("its last event at sequence {s} ({})", hex::encode(h))
                        }
                        None => "no events of that feed".into(),
                    },
                };
                self.problem(Some(feed), location, r);
            }
        }
        let extra: Vec<String> = self
            .feeds
            .keys()
            .filter(|f| !listed.contains(*f))
            .cloned()
            .collect();
        for feed in extra {
            let r = Rejection {
                seq: None,
                check: Check::Truncated,
                expected: "only the feeds listed at the end".into(),
                found: format!("events of unlisted feed {feed}"),
            };
            self.problem(Some(&feed), location, r);
        }
    }

    /// Checks the end record: signed by the exporter, written by the same
    /// export as the begin record, and listing exactly what was found.
    fn check_end(
        &mut self,
        location: &str,
        end: &ExportEnd,
        begin: Option<(String, u64)>,
        fork_records: u64,
    ) {
        let same_export = begin
            .as_ref()
            .is_some_and(|(e, t)| *e == end.body.exporter && *t == end.body.created_us);
        if !same_export {
            let r = Rejection {
                seq: None,
                check: Check::Truncated,
                expected: format!(
                    "an end record of the export begun by {:?}",
                    begin.as_ref().map(|b| &b.0)
                ),
                found: format!(
                    "the end record of an export by {} at {}",
                    end.body.exporter, end.body.created_us
                ),
            };
            self.problem(None, location, r);
        }
        if end.body.forks != fork_records {
            let r = Rejection {
                seq: None,
                check: Check::Truncated,
                expected: format!("{} fork records", end.body.forks),
                found: format!("{fork_records} fork records"),
            };
            self.problem(None, location, r);
        }
        let exporter_key = self
            .feeds
            .get(&end.body.exporter)
            .and_then(|f| f.verifier.as_ref())
            .map(|v| *v.key());
        // The one rule for every signature herald checks (FORMAT.md section
        // 7): the cofactored equation events use, so an end record and an
        // event signed the same way get the same verdict.
        let signed = exporter_key
            .map(|k| {
                crate::core::signature::verify_single(
                    &k,
                    &end.body.signing_message(),
                    &Signature::from_bytes(&end.signature),
                )
            })
            .unwrap_or(false);
        if !signed {
            let r = Rejection {
                seq: None,
                check: Check::Signature,
                expected: format!("an end record signed by exporter {}", end.body.exporter),
                found: "an end record without a valid signature".into(),
            };
            self.problem(None, location, r);
        }
        let claimed: Vec<(String, u64, Hash)> = end
            .body
            .feeds
            .iter()
            .map(|f| (f.feed.clone(), f.head_seq, f.head_hash))
            .collect();
        self.compare_heads(location, &claimed);
    }

    fn finish(self, source: &Path, kind: &'static str, exporter: Option<String>) -> AuditReport {
        let feeds = self
            .feeds
            .into_iter()
            .map(|(service, f)| {
                let status = if f.untrusted {
                    "untrusted"
                } else if f.forked {
                    "forked"
                } else if f.problems > 0 || f.verifier.is_none() {
                    "invalid"
                } else {
                    "valid"
                };
                FeedReport {
                    service,
                    events: f.events,
                    verified: f.verified,
                    head_seq: f.reported_head().map(|s| s.0),
                    head_hash: f.reported_head().map(|s| hex::encode(s.1)),
                    first_timestamp: f.first_ts.map(format_timestamp),
                    last_timestamp: f.last_ts.map(format_timestamp),
                    decrypted: f.decrypted,
                    status,
                    problems: f.problems,
                }
            })
            .collect();
        AuditReport {
            source: source.display().to_string(),
            kind,
            valid: self.problems_total == 0,
            exporter,
            events: self.events,
            feeds,
            problems_total: self.problems_total,
            problems: self.problems,
        }
    }
}

/// `None` when no keys were given or the payload is plain or pruned;
/// otherwise whether it decrypted.
fn decrypt_check(event: &DecodedEvent, keys: &[ChannelKey]) -> Option<bool> {
    if keys.is_empty() || event.header().payload.encryption == Encryption::Plain {
        return None;
    }
    let payload = event.payload()?;
    Some(decrypt_payload(event.header(), payload, keys).is_ok())
}

fn decrypt_rejection(event: &DecodedEvent, keys: &[ChannelKey]) -> Rejection {
    let found = match (event.payload(), &event.header().payload.encryption) {
        (Some(p), _) => match decrypt_payload(event.header(), p, keys) {
            Err(e) => e.to_string(),
            Ok(_) => "a readable payload".into(),
        },
        _ => "no payload".into(),
    };
    let names: Vec<&str> = keys.iter().map(|k| k.name()).collect();
    Rejection {
        seq: Some(event.header().seq),
        check: Check::Decrypt,
        expected: format!(
            "a payload readable with the given channel key(s) {}",
            names.join(", ")
        ),
        found,
    }
}

fn progress_bar(enabled: bool, len: u64, unit: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let template = format!(
        "{{spinner}} verifying [{{bar:40}}] {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})"
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Verifies an export file.
pub fn audit_export(path: &Path, options: &AuditOptions) -> Result<AuditReport, AuditError> {
    audit_export_visiting(path, options, None)
}

/// [`audit_export`], also handing every fully verified event (genesis
/// events excepted) to `visitor`, in feed order, as it is checked.
pub fn audit_export_visiting<'a>(
    path: &Path,
    options: &'a AuditOptions,
    visitor: Option<&'a mut (dyn FnMut(&DecodedEvent) + 'a)>,
) -> Result<AuditReport, AuditError> {
    let file = File::open(path).map_err(|source| AuditError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = RecordReader::new(BufReader::with_capacity(1 << 20, file), path)?;
    let bar = progress_bar(options.progress, len, "bytes");
    let mut auditor = Auditor::new(options);
    auditor.visitor = visitor;
    let mut exporter = None;
    let mut begin_created_us = None;
    let mut fork_records = 0u64;
    let mut chunk: Vec<(String, Vec<u8>)> = Vec::with_capacity(AUDIT_CHUNK_RECORDS);
    let mut chunk_bytes = 0usize;
    let mut record_no = 0u64;
    let mut ended = false;
    let read_err = |source| AuditError::Read {
        path: path.to_path_buf(),
        source,
    };
    while let Some(next) = reader.next_record().map_err(read_err)? {
        record_no += 1;
        let location = format!("record {record_no}");
        let raw = match next {
            Ok(raw) => raw,
            Err(problem) => {
                auditor.push_chunk(std::mem::take(&mut chunk));
                auditor.problem(None, &location, frame_rejection(problem));
                ended = true; // framing is lost; nothing after can be trusted
                break;
            }
        };
        bar.set_position(raw.offset);
        if ended {
            auditor.problem(
                None,
                &location,
                Rejection {
                    seq: None,
                    check: Check::Truncated,
                    expected: "nothing after the end record".into(),
                    found: "another record".into(),
                },
            );
            continue;
        }
        let record = match export::decode_record(&raw.body) {
            Ok(r) => r,
            Err(e) => {
                auditor.problem(
                    None,
                    &location,
                    Rejection {
                        seq: None,
                        check: Check::Decode,
                        expected: "a well-formed export record".into(),
                        found: e,
                    },
                );
                continue;
            }
        };
        match record {
            ExportRecord::Event(bytes) => {
                chunk_bytes += bytes.len();
                chunk.push((location, bytes));
                if chunk.len() >= AUDIT_CHUNK_RECORDS || chunk_bytes >= AUDIT_CHUNK_BYTES_MAX {
                    auditor.push_chunk(std::mem::take(&mut chunk));
                    chunk_bytes = 0;
                }
            }
            other => {
                auditor.push_chunk(std::mem::take(&mut chunk));
                chunk_bytes = 0;
                match other {
                    ExportRecord::Begin {
                        exporter: e,
                        created_us,
                    } if record_no == 1 => {
                        exporter = Some(e);
                        begin_created_us = Some(created_us);
                    }
                    ExportRecord::Begin { .. } => auditor.problem(
                        None,
                        &location,
                        Rejection {
                            seq: None,
                            check: Check::Decode,
                            expected: "one begin record, first".into(),
                            found: "another begin record".into(),
                        },
                    ),
                    ExportRecord::Fork {
                        stored,
                        conflicting,
                    } => {
                        fork_records += 1;
                        auditor.push_fork(&location, stored, conflicting)
                    }
                    ExportRecord::End(end) => {
                        let begin = exporter.clone().zip(begin_created_us);
                        auditor.check_end(&location, &end, begin, fork_records);
                        ended = true;
                    }
                    ExportRecord::Event(_) => {}
                }
            }
        }
    }
    auditor.push_chunk(chunk);
    if !ended {
        auditor.problem(
            None,
            &format!("after record {record_no}"),
            Rejection {
                seq: None,
                check: Check::Truncated,
                expected: "a signed end record".into(),
                found: "the end of the file".into(),
            },
        );
    }
    if exporter.is_none() {
        auditor.problem(
            None,
            "record 1",
            Rejection {
                seq: None,
                check: Check::Decode,
                expected: "a begin record first".into(),
                found: "none".into(),
            },
        );
    }
    bar.finish_and_clear();
    Ok(auditor.finish(path, "export", exporter))
}

fn frame_rejection(problem: FrameProblem) -> Rejection {
    match problem {
        FrameProblem::Oversized { offset, len } => Rejection {
            seq: None,
            check: Check::Decode,
            expected: format!("a record of at most {} bytes", export::RECORD_BYTES_MAX),
            found: format!("a length of {len} at byte {offset}"),
        },
        FrameProblem::Truncated {
            offset,
            wanted,
            found,
        } => Rejection {
            seq: None,
            check: Check::Truncated,
            expected: format!("{wanted} bytes of the record at byte {offset}"),
            found: format!("{found} bytes before the end of the file"),
        },
    }
}

/// Verifies a node's data directory (its SQLite store), read-only.
pub fn audit_data_dir(dir: &Path, options: &AuditOptions) -> Result<AuditReport, AuditError> {
    let store_err = |message: String| AuditError::Store {
        path: dir.to_path_buf(),
        message,
    };
    let conn = crate::store::open_read_only(dir).map_err(|e| store_err(e.to_string()))?;
    let sql_err = |e: rusqlite::Error| store_err(e.to_string());
    conn.execute_batch("BEGIN").map_err(sql_err)?;
    let total: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .map_err(sql_err)?;
    let bar = progress_bar(options.progress, total as u64, "events");
    let mut auditor = Auditor::new(options);
    {
        let mut stmt = conn
            .prepare("SELECT arrival, envelope FROM events ORDER BY feed, seq")
            .map_err(sql_err)?;
        let mut rows = stmt.query([]).map_err(sql_err)?;
        let mut chunk = Vec::with_capacity(AUDIT_CHUNK_RECORDS);
        let mut chunk_bytes = 0usize;
        while let Some(row) = rows.next().map_err(sql_err)? {
            let arrival: i64 = row.get(0).map_err(sql_err)?;
            let envelope: Vec<u8> = row.get(1).map_err(sql_err)?;
            chunk_bytes += envelope.len();
            chunk.push((format!("row {arrival}"), envelope));
            if chunk.len() >= AUDIT_CHUNK_RECORDS || chunk_bytes >= AUDIT_CHUNK_BYTES_MAX {
                bar.inc(chunk.len() as u64);
                auditor.push_chunk(std::mem::take(&mut chunk));
                chunk_bytes = 0;
            }
        }
        auditor.push_chunk(chunk);
    }
    let forks = crate::store::read_forks(&conn).map_err(|e| store_err(e.to_string()))?;
    for fork in forks {
        auditor.push_fork(
            "forks table",
            fork.stored_envelope,
            fork.conflicting_envelope,
        );
    }
    let mut stmt = conn
        .prepare("SELECT feed, head_seq, head_hash FROM feeds ORDER BY feed")
        .map_err(sql_err)?;
    let claimed: Vec<(String, u64, Hash)> = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as u64,
                crate::store::hash_from_blob(&r.get::<_, Vec<u8>>(2)?),
            ))
        })
        .map_err(sql_err)?
        .collect::<Result<_, _>>()
        .map_err(sql_err)?;
    auditor.compare_heads("feeds table", &claimed);
    check_derived_columns(&conn, &mut auditor).map_err(sql_err)?;
    bar.finish_and_clear();
    let service: Option<String> = conn
        .query_row(
            "SELECT value FROM herald_meta WHERE key = 'service'",
            [],
            |r| r.get(0),
        )
        .ok();
    Ok(auditor.finish(dir, "data-dir", service))
}

/// Checks that each stored event's derived columns (feed, seq, hash, id,
/// event_type, timestamp_us: what the node indexes and filters by) agree
/// with its signed envelope. The envelope is what the chain checks verify;
/// a damaged column leaves it valid but makes reads that trust the column
/// (type filters, look-ups by id) see a different event, so each
/// disagreement is a problem (check `derived-column`) and the store is not
/// valid. An envelope that does not decode is reported by the chain checks.
fn check_derived_columns(
    conn: &rusqlite::Connection,
    auditor: &mut Auditor<'_>,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(
        "SELECT arrival, feed, seq, hash, id, CAST(event_type AS BLOB), timestamp_us, envelope
         FROM events ORDER BY arrival",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let arrival: i64 = row.get(0)?;
        let envelope: Vec<u8> = row.get(7)?;
        let Ok((env, header)) = crate::core::codec::decode_envelope(&envelope) else {
            continue;
        };
        let hash = crate::core::codec::event_hash(&env.header);
        let column = |i: usize| -> rusqlite::Result<String> {
            Ok(match row.get_ref(i)? {
                rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                    match std::str::from_utf8(t) {
                        Ok(text) if i != 3 && i != 4 => format!("{text:?}"),
                        _ => hex::encode(t),
                    }
                }
                rusqlite::types::ValueRef::Real(r) => r.to_string(),
                rusqlite::types::ValueRef::Null => "NULL".to_string(),
            })
        };
        let expected = [
            (1, "feed", format!("{:?}", header.author)),
            (2, "seq", header.seq.to_string()),
            (3, "hash", hex::encode(hash)),
            (4, "id", hex::encode(header.id)),
            (5, "event_type", format!("{:?}", header.event_type)),
            (6, "timestamp_us", header.timestamp_us.to_string()),
        ];
        for (i, name, want) in expected {
            let found = column(i)?;
            if found == want {
                continue;
            }
            auditor.record(Problem {
                feed: Some(header.author.clone()),
                seq: Some(header.seq),
                location: format!("row {arrival}"),
                check: "derived-column",
                expected: format!("column {name} = {want}, as in the signed envelope"),
                found: format!("column {name} = {found}"),
            });
        }
    }
    Ok(())
}

/// Verifies `path`: a data directory if it is a directory, else an export.
pub fn audit_path(path: &Path, options: &AuditOptions) -> Result<AuditReport, AuditError> {
    if path.is_dir() {
        audit_data_dir(path, options)
    } else {
        audit_export(path, options)
    }
}
