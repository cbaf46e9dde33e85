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

use super::export::{
    self, AnyRecord, CheckpointRecord, EndView, EquivocationRecord, FrameProblem, RecordReader,
};
use crate::core::checkpoint::{self, CheckpointError};
use crate::core::codec::DecodeError;
use crate::core::crypto::{ChannelKey, Hash};
use crate::core::event::Encryption;
use crate::core::merkle::{self, Frontier};
use crate::core::note::{Checkpoint, Note};
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
    /// The export format (1 or 2); `None` for a data directory.
    pub format: Option<u8>,
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
    /// `valid`, `invalid`, `forked`, `equivocated` or `untrusted` (author
    /// not admitted).
    pub status: &'static str,
    pub problems: u64,
    /// The feed's checkpoint (format 2 exports and data directories), if
    /// the source holds one signed by the feed's author.
    pub checkpoint: Option<CheckpointReport>,
}

/// A feed's latest checkpoint as the audit found it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckpointReport {
    /// Events the checkpoint covers.
    pub size: u64,
    /// Its root, hex.
    pub root: String,
    /// Signed by the author, of this cluster, within the events, and its
    /// root is the tree over the events found: every check passed.
    pub verified: bool,
    /// Other nodes of the export, admitted by the CA, whose cosignatures of
    /// it verify (sorted).
    pub cosigners: Vec<String>,
}

impl AuditReport {
    /// Applies `--witnesses K`: every feed's checkpoint must be verified,
    /// cover every event of the feed found, and carry valid cosignatures by
    /// at least `k` other certified nodes; each feed that falls short is a
    /// `witnesses` problem naming its count, and the report is not valid.
    pub fn require_witnesses(&mut self, k: usize) {
        let short: Vec<Problem> = self
            .feeds
            .iter()
            .filter_map(|f| under_witnessed(f, k))
            .collect();
        for problem in short {
            self.problems_total += 1;
            if let Some(f) = self
                .feeds
                .iter_mut()
                .find(|f| Some(&f.service) == problem.feed.as_ref())
            {
                f.problems += 1;
                if f.status == "valid" {
                    f.status = "under-witnessed";
                }
            }
            if self.problems.len() < PROBLEMS_REPORTED_MAX {
                self.problems.push(problem);
            }
            self.valid = false;
        }
    }
}

/// The `witnesses` problem of a feed that `--witnesses k` refuses.
fn under_witnessed(f: &FeedReport, k: usize) -> Option<Problem> {
    let found = match &f.checkpoint {
        None => "no checkpoint".to_string(),
        Some(c) if !c.verified => format!("a checkpoint of size {} that failed its checks", c.size),
        Some(c) if c.size == f.events && c.cosigners.len() >= k => return None,
        Some(c) => format!(
            "a checkpoint of size {} cosigned by {} node(s){}",
            c.size,
            c.cosigners.len(),
            if c.cosigners.is_empty() {
                String::new()
            } else {
                format!(" ({})", c.cosigners.join(", "))
            }
        ),
    };
    Some(Problem {
        feed: Some(f.service.clone()),
        seq: None,
        location: "checkpoint".into(),
        check: "witnesses",
        expected: format!(
            "a verified checkpoint over all {} events cosigned by at least {k} other certified node(s)",
            f.events
        ),
        found,
    })
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
    /// The keys the feed had before its key transitions, oldest first: its
    /// author's cosignatures made under them still count.
    earlier_keys: Vec<VerifyingKey>,
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
    /// The Merkle tree over the events that became the head, in sequence:
    /// one frontier (at most 63 hashes), however long the feed.
    tree: Frontier,
    /// An event that became the head did not extend the tree by one (a gap
    /// or an unauthentic event): the tree is unknown from there on.
    tree_lost: bool,
    /// The feed's checkpoint record, once read.
    checkpoint: Option<FeedCheckpoint>,
    /// Valid equivocation evidence names the feed.
    equivocated: bool,
    /// Format-2 events that passed every check but authenticity, which the
    /// feed's checkpoint must then give: how many, the first one's sequence
    /// number and the sequence number after the last.
    pending: u64,
    pending_from: Option<u64>,
    pending_to: u64,
    /// The size of the tree the old key's checkpoint carried by the feed's
    /// last key transition vouches for (checked against this tree): those
    /// events are authentic whatever becomes of the transition.
    carried_covers: u64,
    /// How many events were pending when that checkpoint was found (all of
    /// them before the transition, so all authenticated by it).
    pending_at_carried: u64,
}

/// A checkpoint signed by the feed's author, and whether it passed the
/// size and root checks.
struct FeedCheckpoint {
    checkpoint: Checkpoint,
    note: Note,
    location: String,
    verified: bool,
}

impl FeedAudit {
    /// A format-2 event at `seq` passed every check but authenticity.
    fn note_pending(&mut self, seq: u64) {
        self.pending += 1;
        self.pending_from.get_or_insert(seq);
        self.pending_to = seq + 1;
    }

    /// Format-2 events no verified checkpoint covers: how many (at most),
    /// and from which sequence number.
    fn unauthenticated(&self) -> Option<(u64, u64)> {
        let from = self.pending_from?;
        let checkpointed = self
            .checkpoint
            .as_ref()
            .filter(|c| c.verified)
            .map_or(0, |c| c.checkpoint.size());
        if self.carried_covers > checkpointed {
            // Exactly the events noted after the transition's checkpoint.
            let first = self.carried_covers.max(from);
            let count = self.pending - self.pending_at_carried;
            return (first < self.pending_to && count > 0).then_some((first, count));
        }
        let first = checkpointed.max(from);
        (first < self.pending_to).then(|| (first, (self.pending_to - first).min(self.pending)))
    }

    /// An event at `seq` with `hash` became the feed's head: extends the
    /// tree when it is the next leaf, loses it when it skips one.
    fn grow_tree(&mut self, seq: u64, hash: &Hash) {
        if self.tree_lost || seq < self.tree.size() {
            return;
        }
        if seq > self.tree.size() || self.tree.push(merkle::leaf_hash(hash)).is_err() {
            self.tree_lost = true;
        }
    }
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
    /// The cluster id of the CA: every checkpoint's origin names it.
    cluster: String,
    /// `Checkpoint` and `Equivocation` records read, for the end record.
    checkpoint_records: u64,
    equivocation_records: u64,
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
            cluster: checkpoint::cluster_id(&options.trust.ca_public_key()),
            checkpoint_records: 0,
            equivocation_records: 0,
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
            let admitted = if event.is_sealed() {
                FeedVerifier::genesis_pending_checkpoint(&self.options.trust, &event)
                    .map(|v| (v, event))
            } else {
                // The small genesis is kept as decoded: the verified value
                // carries no signature to tell its format by.
                FeedVerifier::genesis(&self.options.trust, event.clone(), None)
                    .map(|(v, _)| (v, event))
            };
            match admitted {
                Ok((verifier, genesis)) => {
                    feed.verifier = Some(verifier);
                    feed.verified += 1;
                    feed.grow_tree(0, genesis.hash());
                    if genesis.is_sealed() {
                        feed.note_pending(0);
                    }
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
        // Pass 2: every signature of the chunk, in batches on all cores
        // (format-2 events have none: their feed's checkpoint vouches for
        // them once the tree over them is known).
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
        let key_before = *verifier.key();
        // A key transition carries the old key's checkpoint of the events
        // before it: it must be that key's, over this very tree; then it
        // vouches for them even if the transition itself is refused.
        let carried = check_transition_checkpoint(&self.cluster, &event, &key_before, &feed.tree);
        if carried == Ok(true) && event.header().seq > feed.carried_covers {
            feed.carried_covers = event.header().seq;
            feed.pending_at_carried = feed.pending;
        }
        let checked = if event.is_sealed() {
            verifier.check_next_pending_checkpoint(&self.options.trust, &event)
        } else {
            verifier.check_next_with(&self.options.trust, &event, verdict)
        };
        let checked = checked.and(carried.map(|_| ()));
        if verifier.key() != &key_before {
            feed.earlier_keys.push(key_before);
        }
        match checked {
            Ok(()) => {
                feed.grow_tree(event.header().seq, event.hash());
                feed.verified += 1;
                if event.is_sealed() {
                    feed.note_pending(event.header().seq);
                }
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
                if r.check == Check::Revoked {
                    // Authentic as far as can be told, but past the cut-off:
                    // reported, and kept in the tree (section 12).
                    verifier.adopt_past_cutoff(&event);
                } else if event.is_sealed() {
                    verifier.resync_pending_checkpoint(&event);
                } else {
                    verifier.resync(&event, verdict);
                }
                if verifier.head_hash() == event.hash() {
                    // Adopted as the head (section 12): it is in the tree.
                    feed.grow_tree(event.header().seq, event.hash());
                }
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
        end: &EndView,
        begin: Option<(String, u64)>,
        fork_records: u64,
    ) {
        let same_export = begin
            .as_ref()
            .is_some_and(|(e, t)| *e == end.exporter && *t == end.created_us);
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
                    end.exporter, end.created_us
                ),
            };
            self.problem(None, location, r);
        }
        let counts = [
            ("fork", Some(end.forks), fork_records),
            ("checkpoint", end.checkpoints, self.checkpoint_records),
            ("equivocation", end.equivocations, self.equivocation_records),
        ];
        for (what, claimed, found) in counts {
            // Format 1 has no checkpoint or equivocation records to count.
            let claimed = claimed.unwrap_or(0);
            if claimed != found {
                let r = Rejection {
                    seq: None,
                    check: Check::Truncated,
                    expected: format!("{claimed} {what} records"),
                    found: format!("{found} {what} records"),
                };
                self.problem(None, location, r);
            }
        }
        let exporter_key = self
            .feeds
            .get(&end.exporter)
            .and_then(|f| f.verifier.as_ref())
            .map(|v| *v.key());
        // The one rule for every signature herald checks (FORMAT.md section
        // 7): the cofactored equation events use, so an end record and an
        // event signed the same way get the same verdict.
        let signed = exporter_key
            .map(|k| {
                crate::core::signature::verify_single(
                    &k,
                    &end.message,
                    &Signature::from_bytes(&end.signature),
                )
            })
            .unwrap_or(false);
        if !signed {
            let r = Rejection {
                seq: None,
                check: Check::Signature,
                expected: format!("an end record signed by exporter {}", end.exporter),
                found: "an end record without a valid signature".into(),
            };
            self.problem(None, location, r);
        }
        let claimed: Vec<(String, u64, Hash)> = end
            .feeds
            .iter()
            .map(|f| (f.feed.clone(), f.head_seq, f.head_hash))
            .collect();
        self.compare_heads(location, &claimed);
    }

    /// A problem of a checkpoint or evidence record (checks named in
    /// `docs/FORMAT.md`, "Export format 2").
    fn checkpoint_problem(
        &mut self,
        feed: Option<&str>,
        location: &str,
        check: &'static str,
        expected: String,
        found: String,
    ) {
        self.record(Problem {
            feed: feed.map(str::to_string),
            seq: None,
            location: location.to_string(),
            check,
            expected,
            found,
        });
    }

    /// Checks a feed's checkpoint record: of this cluster, signed by the
    /// feed's author, within the events found, and its root the tree's.
    fn push_checkpoint(&mut self, location: &str, record: CheckpointRecord) {
        self.checkpoint_records += 1;
        let (feed, key) = match self.checkpoint_author(location, &record.note) {
            Some(found) => found,
            None => return,
        };
        let verified = match checkpoint::open_checkpoint(&self.cluster, &record.note, &key) {
            Ok(v) => v,
            Err(e) => {
                let check = match e {
                    CheckpointError::NotSigned { .. } => "checkpoint-signature",
                    _ => "checkpoint",
                };
                let expected = format!("a checkpoint signed by {feed}'s key");
                return self.checkpoint_problem(
                    Some(&feed),
                    location,
                    check,
                    expected,
                    e.to_string(),
                );
            }
        };
        let tree_check =
            self.check_checkpoint_tree(&feed, verified.checkpoint(), &record.consistency);
        if let Err((check, expected, found)) = &tree_check {
            self.checkpoint_problem(
                Some(&feed),
                location,
                check,
                expected.clone(),
                found.clone(),
            );
        }
        if let Some(f) = self.feeds.get_mut(&feed) {
            f.checkpoint = Some(FeedCheckpoint {
                checkpoint: verified.checkpoint().clone(),
                note: verified.note().clone(),
                location: location.to_string(),
                verified: tree_check == Ok(true),
            });
        }
    }

    /// The feed a checkpoint note names and its author's key; reports and
    /// returns `None` when the note does not parse, is of another cluster,
    /// names a feed not admitted in the source, or is the feed's second.
    fn checkpoint_author(&mut self, location: &str, note: &[u8]) -> Option<(String, VerifyingKey)> {
        let feed = match checkpoint::claimed_feed(&self.cluster, note) {
            Ok((_, _, feed)) => feed,
            Err(e) => {
                let expected = format!("a checkpoint note of cluster {}", self.cluster);
                self.checkpoint_problem(None, location, "checkpoint", expected, e.to_string());
                return None;
            }
        };
        let state = self.feeds.get(&feed);
        let key = state.and_then(|f| f.verifier.as_ref()).map(|v| *v.key());
        let second = state.is_some_and(|f| f.checkpoint.is_some());
        let found = match key {
            None => format!("a checkpoint of {feed}, whose genesis is not admitted here"),
            Some(_) if second => format!("a second checkpoint record of {feed}"),
            Some(key) => return Some((feed, key)),
        };
        let expected = "one checkpoint of each feed whose genesis is admitted".to_string();
        self.checkpoint_problem(Some(&feed), location, "checkpoint", expected, found);
        None
    }

    /// Checks a signed checkpoint's size and root against the tree built
    /// from the feed's events: equal at the tree's size, or joined to it by
    /// the record's consistency proof: `Ok(true)` when it is, `Ok(false)`
    /// when the tree is unknown, `Err((check, expected, found))` otherwise.
    fn check_checkpoint_tree(
        &self,
        feed: &str,
        cp: &Checkpoint,
        consistency: &[Hash],
    ) -> Result<bool, (&'static str, String, String)> {
        let Some(f) = self.feeds.get(feed) else {
            return Err(("checkpoint", "a feed of the source".into(), feed.into()));
        };
        if cp.size() > f.events {
            return Err((
                "checkpoint-size",
                format!(
                    "a checkpoint within the {} events of {feed} found",
                    f.events
                ),
                format!("a checkpoint of size {}", cp.size()),
            ));
        }
        if f.tree_lost || cp.size() > f.tree.size() {
            // The feed's events already failed (a gap or an unauthentic
            // event, reported): the tree is unknown, so the checkpoint stays
            // unchecked rather than adding a second problem for one damage.
            return Ok(false);
        }
        let (size, root) = (f.tree.size(), f.tree.root());
        let result = match cp.size() {
            0 if consistency.is_empty() && *cp.root() == merkle::EMPTY_ROOT => Ok(true),
            0 => Err("an empty tree's root and no proof".to_string()),
            old if old == size && !consistency.is_empty() => {
                Err("no consistency proof for a checkpoint over every event".to_string())
            }
            old => merkle::verify_consistency(old, size, cp.root(), &root, consistency)
                .map(|()| true)
                .map_err(|e| e.to_string()),
        };
        result.map_err(|why| {
            (
                "checkpoint-root",
                format!(
                    "the root of {feed}'s tree at size {} over the events found, which at size {size} is {}",
                    cp.size(),
                    hex::encode(root)
                ),
                format!("root {}: {why}", hex::encode(cp.root())),
            )
        })
    }

    /// Checks equivocation evidence; valid evidence marks its feed
    /// `equivocated` and is a problem (`equivocation`), as a fork is.
    fn push_equivocation(&mut self, location: &str, record: &EquivocationRecord) {
        self.equivocation_records += 1;
        let claimed = checkpoint::claimed_feed(&self.cluster, &record.first).map(|(_, _, f)| f);
        let key = claimed
            .as_ref()
            .ok()
            .and_then(|f| self.feeds.get(f))
            .and_then(|f| f.verifier.as_ref())
            .map(|v| *v.key());
        let feed = claimed.as_ref().ok().cloned();
        let outcome = match key {
            Some(key) => checkpoint::check_equivocation(&self.cluster, &record.to_evidence(), &key)
                .map_err(|e| e.to_string()),
            None => Err(match &claimed {
                Ok(f) => format!("evidence against {f}, whose genesis is not admitted here"),
                Err(e) => e.to_string(),
            }),
        };
        match outcome {
            Ok((feed, size)) => {
                if let Some(f) = self.feeds.get_mut(&feed) {
                    f.equivocated = true;
                }
                self.record(Problem {
                    feed: Some(feed.clone()),
                    seq: Some(size),
                    location: location.to_string(),
                    check: "equivocation",
                    expected: format!("one history of {feed} signed by its author"),
                    found: format!(
                        "two checkpoints signed by {feed} that disagree on its first {size} events"
                    ),
                });
            }
            Err(why) => self.checkpoint_problem(
                feed.as_deref(),
                location,
                "equivocation-evidence",
                "evidence of two inconsistent checkpoints signed by the feed's author".into(),
                why,
            ),
        }
    }

    /// Counts each checkpoint's cosigners, once every feed (and so every
    /// witness's certificate) has been read: cosignatures by other feeds
    /// whose genesis was admitted. One by such a node that does not verify
    /// is a `cosignature` problem; others (unknown names) are ignored.
    fn settle_cosigners(&mut self) -> BTreeMap<String, Vec<String>> {
        let mut cosigners = BTreeMap::new();
        let mut bad = Vec::new();
        for (feed, f) in &self.feeds {
            let Some(cp) = &f.checkpoint else { continue };
            let mut names = Vec::new();
            for sig in cp.note.signatures() {
                let Some(witness) = checkpoint::feed_of_origin(&self.cluster, &sig.name) else {
                    continue;
                };
                let Some(w) = self
                    .feeds
                    .get(witness)
                    .filter(|w| !w.untrusted && witness != feed)
                else {
                    continue;
                };
                let Some(current) = w.verifier.as_ref().map(|v| *v.key()) else {
                    continue;
                };
                // Under the witness's key now, or one it had before a key
                // transition (a cosignature made then).
                let cosigned = std::iter::once(&current)
                    .chain(w.earlier_keys.iter().rev())
                    .find_map(|key| {
                        checkpoint::cosignature_by(&self.cluster, &cp.checkpoint, sig, witness, key)
                    });
                match cosigned {
                    Some(_) if !names.iter().any(|n| n == witness) => {
                        names.push(witness.to_string())
                    }
                    Some(_) => {}
                    None => bad.push((feed.clone(), cp.location.clone(), witness.to_string())),
                }
            }
            names.sort();
            cosigners.insert(feed.clone(), names);
        }
        for (feed, location, witness) in bad {
            self.checkpoint_problem(
                Some(&feed),
                &location,
                "cosignature",
                format!("a valid cosignature of {feed}'s checkpoint by {witness}'s key"),
                format!("a cosignature named {witness} that does not verify"),
            );
        }
        cosigners
    }

    /// Reports each feed's format-2 events that no verified checkpoint
    /// covers: they passed every other check, but nothing signed vouches
    /// for them, so they do not count as verified.
    fn settle_pending(&mut self) {
        let mut found = Vec::new();
        for (feed, f) in self.feeds.iter_mut() {
            let Some((first, count)) = f.unauthenticated() else {
                continue;
            };
            f.verified = f.verified.saturating_sub(count);
            // The feed's own checkpoint, or the old key's checkpoint a key
            // transition carried, whichever covers more.
            let size = f
                .checkpoint
                .as_ref()
                .filter(|c| c.verified)
                .map(|c| c.checkpoint.size())
                .max((f.carried_covers > 0).then_some(f.carried_covers));
            found.push((feed.clone(), first, f.pending_to, size));
        }
        for (feed, first, end, size) in found {
            self.record(Problem {
                feed: Some(feed.clone()),
                seq: Some(first),
                location: "end of source".into(),
                check: Check::Signature.name(),
                expected: format!(
                    "a checkpoint signed by {feed}'s key whose tree includes its format-2 events up to sequence {}",
                    end - 1
                ),
                found: match size {
                    Some(size) => format!("a verified checkpoint of size {size}, which ends before sequence {first}"),
                    None => "no verified checkpoint of the feed".into(),
                },
            });
        }
    }

    fn finish(
        mut self,
        source: &Path,
        kind: &'static str,
        format: Option<u8>,
        exporter: Option<String>,
    ) -> AuditReport {
        self.settle_pending();
        let mut cosigners = self.settle_cosigners();
        let feeds = std::mem::take(&mut self.feeds)
            .into_iter()
            .map(|(service, f)| {
                let status = if f.untrusted {
                    "untrusted"
                } else if f.forked {
                    "forked"
                } else if f.equivocated {
                    "equivocated"
                } else if f.problems > 0 || f.verifier.is_none() {
                    "invalid"
                } else {
                    "valid"
                };
                let checkpoint = f.checkpoint.as_ref().map(|c| CheckpointReport {
                    size: c.checkpoint.size(),
                    root: hex::encode(c.checkpoint.root()),
                    verified: c.verified,
                    cosigners: cosigners.remove(&service).unwrap_or_default(),
                });
                FeedReport {
                    events: f.events,
                    verified: f.verified,
                    head_seq: f.reported_head().map(|s| s.0),
                    head_hash: f.reported_head().map(|s| hex::encode(s.1)),
                    first_timestamp: f.first_ts.map(format_timestamp),
                    last_timestamp: f.last_ts.map(format_timestamp),
                    decrypted: f.decrypted,
                    status,
                    problems: f.problems,
                    checkpoint,
                    service,
                }
            })
            .collect();
        AuditReport {
            source: source.display().to_string(),
            kind,
            format,
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
/// For a key transition: its old-key checkpoint must be signed by
/// `old_key` and be of the feed's tree `before` it (the events before the
/// transition): `Ok(true)` when it is. Other events pass (`Ok(false)`).
fn check_transition_checkpoint(
    cluster: &str,
    event: &DecodedEvent,
    old_key: &VerifyingKey,
    before: &merkle::Frontier,
) -> Result<bool, Rejection> {
    use crate::core::transition::{KEY_TRANSITION_EVENT_TYPE, KeyTransition};
    let h = event.header();
    if h.event_type != KEY_TRANSITION_EVENT_TYPE {
        return Ok(false);
    }
    let refuse = |found: String| {
        Rejection::new(
            h.seq,
            Check::Transition,
            format!(
                "the old key's checkpoint of the {} events before the transition",
                h.seq
            ),
            found,
        )
    };
    let Some(transition) = event.payload().and_then(|p| KeyTransition::decode(p).ok()) else {
        return Err(refuse("no readable transition payload".into()));
    };
    transition
        .check_carried_checkpoint(cluster, &h.author, h.seq, old_key, before)
        .map_err(refuse)?;
    Ok(true)
}

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
    let format = reader.format();
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
        let record = match export::decode_any(format, &raw.body) {
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
            AnyRecord::Event(bytes) => {
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
                    AnyRecord::Begin {
                        exporter: e,
                        created_us,
                    } if record_no == 1 => {
                        exporter = Some(e);
                        begin_created_us = Some(created_us);
                    }
                    AnyRecord::Begin { .. } => auditor.problem(
                        None,
                        &location,
                        Rejection {
                            seq: None,
                            check: Check::Decode,
                            expected: "one begin record, first".into(),
                            found: "another begin record".into(),
                        },
                    ),
                    AnyRecord::Fork {
                        stored,
                        conflicting,
                    } => {
                        fork_records += 1;
                        auditor.push_fork(&location, stored, conflicting)
                    }
                    AnyRecord::Checkpoint(record) => auditor.push_checkpoint(&location, record),
                    AnyRecord::Equivocation(record) => {
                        auditor.push_equivocation(&location, &record)
                    }
                    AnyRecord::End(end) => {
                        let begin = exporter.clone().zip(begin_created_us);
                        auditor.check_end(&location, &end, begin, fork_records);
                        ended = true;
                    }
                    AnyRecord::Event(_) => {}
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
    Ok(auditor.finish(path, "export", Some(format.number()), exporter))
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
        .query_row("SELECT count(*) FROM event_rows", [], |r| r.get(0))
        .map_err(sql_err)?;
    let bar = progress_bar(options.progress, total as u64, "events");
    let mut auditor = Auditor::new(options);
    read_stored_events(&conn, &mut auditor, &bar).map_err(|e| store_err(e.to_string()))?;
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
    check_stored_checkpoints(&conn, &mut auditor).map_err(|e| store_err(e.to_string()))?;
    bar.finish_and_clear();
    let service: Option<String> = conn
        .query_row(
            "SELECT value FROM herald_meta WHERE key = 'service'",
            [],
            |r| r.get(0),
        )
        .ok();
    Ok(auditor.finish(dir, "data-dir", None, service))
}

/// Feeds the auditor every stored event, rebuilt from its row, in feed and
/// sequence order. The store keeps each event's hash once, in its feed's
/// tree: a row that rebuilds to another hash than the tree holds there (a
/// damaged column or tile) is a problem (check `stored-hash`), and the
/// rebuilt event still goes through every chain check, which name what the
/// damage breaks. A row that cannot describe an event at all (a nonce of
/// the wrong length, say) is a problem (check `decode`).
fn read_stored_events(
    conn: &rusqlite::Connection,
    auditor: &mut Auditor<'_>,
    bar: &ProgressBar,
) -> Result<(), crate::store::LogError> {
    use crate::store::rows;
    let mut stmt = conn.prepare(&rows::select_events("ORDER BY f.name, e.seq"))?;
    let mut rows = stmt.query([])?;
    let mut rebuilder = rows::Rebuilder::new(conn);
    let mut chunk = Vec::with_capacity(AUDIT_CHUNK_RECORDS);
    let mut chunk_bytes = 0usize;
    while let Some(row) = rows.next()? {
        let row = rows::event_row(row)?;
        let (arrival, feed, seq) = (row.arrival, row.feed.clone(), row.seq);
        let location = format!("row {arrival}");
        let problem = |check: &'static str, expected: String, found: String| Problem {
            feed: Some(feed.clone()),
            seq: Some(seq),
            location: location.clone(),
            check,
            expected,
            found,
        };
        let rebuilt = match rebuilder.rebuild(row)? {
            Ok(rebuilt) => rebuilt,
            Err(why) => {
                auditor.record(problem(
                    "decode",
                    "a row that describes an event".into(),
                    why,
                ));
                continue;
            }
        };
        if rebuilt.tree_hash != Some(rebuilt.event.hash) {
            auditor.record(problem(
                "stored-hash",
                format!(
                    "the event hash the feed's tree holds ({})",
                    rebuilt.tree_hash.map_or("none".into(), hex::encode)
                ),
                format!("a row that hashes to {}", hex::encode(rebuilt.event.hash)),
            ));
        }
        let envelope = rebuilt.event.envelope;
        chunk_bytes += envelope.len();
        chunk.push((location, envelope));
        if chunk.len() >= AUDIT_CHUNK_RECORDS || chunk_bytes >= AUDIT_CHUNK_BYTES_MAX {
            bar.inc(chunk.len() as u64);
            auditor.push_chunk(std::mem::take(&mut chunk));
            chunk_bytes = 0;
        }
    }
    auditor.push_chunk(chunk);
    Ok(())
}

/// Checks a store's checkpoints and equivocation evidence as an export's
/// records are checked. The consistency proof from each checkpoint to the
/// events held is read from the store's tiles: it is checked against the
/// tree the audit built from the events, so damaged tiles cannot pass.
fn check_stored_checkpoints(
    conn: &rusqlite::Connection,
    auditor: &mut Auditor<'_>,
) -> Result<(), crate::store::LogError> {
    for stored in crate::store::read_checkpoints(conn)? {
        let held = auditor
            .feeds
            .get(&stored.feed)
            .map(|f| f.tree.size())
            .unwrap_or(0);
        let consistency = if stored.size == 0 || stored.size >= held {
            Vec::new()
        } else {
            let mut tiles = crate::store::tree::TileReader::new(conn, &stored.feed);
            merkle::consistency_proof(&mut tiles, stored.size, held).unwrap_or_default()
        };
        let location = format!("checkpoints table ({})", stored.feed);
        let record = CheckpointRecord {
            note: stored.note.into_bytes(),
            consistency,
        };
        auditor.push_checkpoint(&location, record);
    }
    for (feed, evidence) in crate::store::read_equivocations(conn)? {
        let record = EquivocationRecord {
            first: evidence.first,
            second: evidence.second,
            prefix_root: evidence.prefix_root,
            proof: evidence.proof,
        };
        auditor.push_equivocation(&format!("equivocations table ({feed})"), &record);
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
