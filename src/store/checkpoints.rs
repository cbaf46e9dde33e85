//! Checkpoints in the store: this node signs one for its own feed after
//! every commit that extends it, checks those of other feeds against its
//! own copy of their trees, cosigns them as a witness, merges the
//! cosignatures of other nodes, and records equivocation evidence when an
//! author signed two histories.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;

use super::LogError;
use super::tree::{FeedTree, TileReader};
use crate::clock;
use crate::core::checkpoint::{
    self, CheckpointError, CheckpointSigner, Equivocation, VerifiedCheckpoint,
};
use crate::core::crypto::Hash;
use crate::core::merkle;
use crate::core::note::{Note, NoteSignature};
use crate::core::verify::FeedVerifier;
use crate::identity::TrustAnchor;

/// Most cosignatures kept on one checkpoint (one per certified node; a
/// cluster larger than this keeps the first ones by name).
pub const COSIGNATURES_MAX: usize = 64;

/// The latest checkpoint of a feed as this node holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredCheckpoint {
    pub feed: String,
    pub size: u64,
    #[serde(serialize_with = "crate::store::hex_hash")]
    pub root: Hash,
    /// The signed note: the author's signature, then every cosignature.
    pub note: String,
    /// The largest size of this feed this node cosigned (0: none).
    pub cosigned_size: u64,
}

impl StoredCheckpoint {
    /// Names of the nodes whose cosignatures the note carries (unchecked:
    /// they were checked when merged).
    pub fn cosigners(&self, cluster: &str) -> Vec<String> {
        Note::parse(self.note.as_bytes())
            .map(|n| {
                n.signatures()
                    .iter()
                    .skip(1)
                    .filter_map(|s| checkpoint::feed_of_origin(cluster, &s.name).map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What became of a checkpoint a peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointOutcome {
    /// It matched this node's tree; `added` signatures (the author's on a
    /// new size, cosignatures) are now held, `cosigned` if this node added
    /// its own.
    Accepted {
        feed: String,
        added: usize,
        cosigned: bool,
    },
    /// Older than the checkpoint held, or nothing new on it.
    Unchanged,
    /// Beyond the events this node holds: it cannot be checked yet.
    Ahead,
    /// A feed this node holds nothing of.
    UnknownFeed,
    /// Its root differs from this node's tree, which an older or equal
    /// checkpoint of the same author covers: the author signed two
    /// histories. The evidence is recorded and the feed frozen.
    Equivocation { feed: String },
    /// Its root differs from this node's tree, but no checkpoint held
    /// covers that point: not provable here (the peer holding the larger
    /// checkpoint proves it).
    Mismatch { feed: String },
}

/// The consistency proof of `feed`'s stored tree from `old` to `new` leaves.
pub(crate) fn consistency_proof(
    conn: &Connection,
    feed: &str,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, LogError> {
    merkle::consistency_proof(&mut TileReader::new(conn, feed), old, new).map_err(|e| {
        LogError::Corrupt(format!(
            "consistency proof of {feed} from {old} to {new}: {e}"
        ))
    })
}

/// The seal of `feed`'s run ending at tree size `end`, from the checkpoint
/// stored in `conn` (see [`Log::seal_for`](super::Log::seal_for)): for
/// tools that hand one store's events to another.
pub fn seal_from_store(
    conn: &Connection,
    cluster: &str,
    feed: &str,
    end: u64,
) -> Result<Option<crate::core::wire::Seal>, LogError> {
    match read_checkpoint(conn, feed)? {
        Some(stored) => seal_of(Some(conn), cluster, &stored, end),
        None => Ok(None),
    }
}

/// The seal for a run ending at `end` under `stored`: `None` if it does
/// not cover `end`. `conn` reads the consistency proof (needed unless the
/// checkpoint ends at `end`).
pub(crate) fn seal_of(
    conn: Option<&Connection>,
    cluster: &str,
    stored: &StoredCheckpoint,
    end: u64,
) -> Result<Option<crate::core::wire::Seal>, LogError> {
    if stored.size < end || end == 0 {
        return Ok(None);
    }
    let proof = match conn {
        _ if stored.size == end => Vec::new(),
        Some(conn) => consistency_proof(conn, &stored.feed, end, stored.size)?,
        None => {
            return Err(LogError::Corrupt("a seal's proof needs the store".into()));
        }
    };
    let note = author_only(cluster, stored)?;
    Ok(Some(crate::core::wire::Seal {
        end,
        note: serde_bytes::ByteBuf::from(note.into_bytes()),
        proof,
    }))
}

/// A stored checkpoint's note with its author's signature alone (seals
/// travel with every frame; cosignatures travel in `Checkpoint` messages).
pub(crate) fn author_only(cluster: &str, stored: &StoredCheckpoint) -> Result<String, LogError> {
    let corrupt = |e: &dyn std::fmt::Display| {
        LogError::Corrupt(format!("stored checkpoint of {}: {e}", stored.feed))
    };
    let note = Note::parse(stored.note.as_bytes()).map_err(|e| corrupt(&e))?;
    let origin = crate::core::checkpoint::origin(cluster, &stored.feed);
    let author: Vec<NoteSignature> = note
        .signatures()
        .iter()
        .filter(|s| s.name == origin)
        .cloned()
        .collect();
    let note = Note::new(note.text(), author).map_err(|e| corrupt(&e))?;
    Ok(note.to_text())
}

/// Reads the latest checkpoint of `feed`.
pub fn read_checkpoint(
    conn: &Connection,
    feed: &str,
) -> Result<Option<StoredCheckpoint>, LogError> {
    Ok(conn
        .prepare_cached(
            "SELECT feed, size, root, note, cosigned_size FROM checkpoints WHERE feed = ?1",
        )?
        .query_row([feed], row_to_checkpoint)
        .optional()?)
}

/// Reads the latest checkpoint of every feed, by feed name.
pub fn read_checkpoints(conn: &Connection) -> Result<Vec<StoredCheckpoint>, LogError> {
    let mut statement = conn.prepare_cached(
        "SELECT feed, size, root, note, cosigned_size FROM checkpoints ORDER BY feed",
    )?;
    let rows = statement.query_map([], row_to_checkpoint)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn row_to_checkpoint(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredCheckpoint> {
    let note: Vec<u8> = r.get(3)?;
    Ok(StoredCheckpoint {
        feed: r.get(0)?,
        size: r.get::<_, i64>(1)? as u64,
        root: super::writer::blob32(r.get(2)?),
        note: String::from_utf8_lossy(&note).into_owned(),
        cosigned_size: r.get::<_, i64>(4)? as u64,
    })
}

fn write_checkpoint(tx: &Connection, c: &StoredCheckpoint) -> Result<(), LogError> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO checkpoints (feed, size, root, note, cosigned_size) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        c.feed,
        c.size as i64,
        c.root.as_slice(),
        c.note.as_bytes(),
        c.cosigned_size as i64
    ])?;
    Ok(())
}

/// Every feed's tree this commit stage touched, kept between commits so an
/// append costs no read. Cleared when a transaction rolls back.
#[derive(Debug, Default)]
pub(crate) struct Trees {
    feeds: HashMap<String, FeedTree>,
    /// Interned ids of feed, type and channel names (`store::rows`), which
    /// a rollback voids just as it voids the trees.
    names: super::rows::Names,
}

impl Trees {
    /// The tree of `feed`, which holds `size` events (loaded on first use).
    pub fn get(
        &mut self,
        conn: &Connection,
        feed: &str,
        size: u64,
    ) -> Result<&mut FeedTree, LogError> {
        let stale = self.feeds.get(feed).is_none_or(|t| t.size() != size);
        if stale {
            let tree = FeedTree::load(conn, feed, size)?;
            self.feeds.insert(feed.to_string(), tree);
        }
        self.feeds
            .get_mut(feed)
            .ok_or_else(|| LogError::Corrupt(format!("tree of {feed} vanished")))
    }

    /// Appends a run of one feed's events, the first at sequence `first_seq`
    /// (which must be the number of events the store held of it before).
    pub fn append(
        &mut self,
        tx: &Connection,
        feed: &str,
        first_seq: u64,
        event_hashes: impl IntoIterator<Item = Hash>,
    ) -> Result<&FeedTree, LogError> {
        let tree = self.get(tx, feed, first_seq)?;
        tree.append(tx, feed, event_hashes)?;
        Ok(tree)
    }

    /// The interned names, for storing event rows in the same transaction.
    pub fn names(&mut self) -> &mut super::rows::Names {
        &mut self.names
    }

    /// Forgets every cached tree and name (after a rollback).
    pub fn clear(&mut self) {
        self.feeds.clear();
        self.names.clear();
    }
}

/// Signs this node's own feed's checkpoint at the tree's size and stores
/// it, replacing the previous one (whose cosignatures concern a smaller
/// tree). Called in the transaction that extended the feed.
pub(crate) fn sign_own(
    tx: &Connection,
    signer: &CheckpointSigner,
    tree: &FeedTree,
) -> Result<(), LogError> {
    let root = tree.root();
    let note = signer
        .sign(tree.size(), root)
        .map_err(|e| LogError::Corrupt(format!("cannot sign this node's checkpoint: {e}")))?;
    write_checkpoint(
        tx,
        &StoredCheckpoint {
            feed: signer.service().to_string(),
            size: tree.size(),
            root,
            note: note.to_text(),
            cosigned_size: 0,
        },
    )
}

/// The signer of `identity`'s checkpoints in the cluster of `trust`.
pub(crate) fn signer_for(
    identity: &crate::identity::NodeIdentity,
    trust: &TrustAnchor,
) -> CheckpointSigner {
    CheckpointSigner::new(
        checkpoint::cluster_id(&trust.ca_public_key()),
        identity.service.clone(),
        identity.signing_key.clone(),
    )
}

/// Signs this node's feed's checkpoint at `size` (its stored events) unless
/// the stored one already has that size.
pub(crate) fn cover_own_feed(
    conn: &mut Connection,
    signer: &CheckpointSigner,
    size: u64,
) -> Result<(), LogError> {
    if read_checkpoint(conn, signer.service())?.is_some_and(|c| c.size == size) {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let tree = FeedTree::load(&tx, signer.service(), size)?;
    sign_own(&tx, signer, &tree)?;
    tx.commit()?;
    Ok(())
}

/// What [`accept`] needs of the commit stage.
pub(crate) struct Witness<'a> {
    pub trust: &'a TrustAnchor,
    pub verifiers: &'a mut HashMap<String, FeedVerifier>,
    pub trees: &'a mut Trees,
    pub signer: &'a CheckpointSigner,
    /// Per feed, an author-signed checkpoint that did not match this node's
    /// tree before any checkpoint held covered its size: when one does, the
    /// two are evidence. In memory only, at most one per feed held.
    pub unmatched: &'a mut HashMap<String, VerifiedCheckpoint>,
}

/// Checks a checkpoint a peer sent against this node's tree of that feed,
/// merges what is new into the stored one and cosigns it. The inner `Err`
/// says what is wrong with the checkpoint itself (the peer misbehaved: an
/// honest one passes on only checkpoints it checked).
pub(crate) fn accept(
    tx: &Transaction<'_>,
    w: &mut Witness<'_>,
    bytes: &[u8],
) -> Result<Result<CheckpointOutcome, CheckpointError>, LogError> {
    let cluster = w.signer.cluster().to_string();
    let (note, claimed, feed) = match checkpoint::claimed_feed(&cluster, bytes) {
        Ok(parsed) => parsed,
        Err(e) => return Ok(Err(e)),
    };
    // No verifier: a feed this node holds nothing of (or whose author it
    // no longer admits).
    let author_key = match super::writer::load_verifier(tx, w.trust, w.verifiers, &feed)? {
        Ok(v) => *v.key(),
        Err(_) => return Ok(Ok(CheckpointOutcome::UnknownFeed)),
    };
    let size = claimed.size();
    match checkpoint::verify_claimed(note, claimed, feed.clone(), &author_key) {
        Ok(verified) => accept_verified(tx, w, verified),
        // A checkpoint from before the feed's latest key transition is
        // under an earlier key, and superseded: a peer may still pass one
        // on that it sent before it saw the transition.
        Err(_) if before_latest_transition(tx, &feed, size)? => {
            Ok(Ok(CheckpointOutcome::Unchanged))
        }
        Err(e) => Ok(Err(e)),
    }
}

/// Whether a checkpoint of `feed` at `size` is from before its latest key
/// transition (of `size` at most the transition's sequence number).
fn before_latest_transition(tx: &Connection, feed: &str, size: u64) -> Result<bool, LogError> {
    Ok(super::transitions::read_feed(tx, feed)?
        .last()
        .is_some_and(|t| size <= t.seq))
}

/// [`accept`] for a checkpoint whose author's signature is checked already
/// (a seal's, at ingest): the same comparison, merge and cosignature,
/// without checking the signature twice.
pub(crate) fn accept_verified(
    tx: &Transaction<'_>,
    w: &mut Witness<'_>,
    verified: VerifiedCheckpoint,
) -> Result<Result<CheckpointOutcome, CheckpointError>, LogError> {
    let cluster = w.signer.cluster().to_string();
    let feed = verified.feed().to_string();
    let Some(head) = super::writer::read_head(tx, &feed)? else {
        return Ok(Ok(CheckpointOutcome::UnknownFeed));
    };
    let held = head.seq + 1;
    if verified.size() > held {
        return Ok(Ok(CheckpointOutcome::Ahead));
    }
    let ours = root_at(tx, w.trees, &feed, held, verified.size())?;
    let stored = read_checkpoint(tx, &feed)?;
    if ours != *verified.root() {
        let outcome = record_split(tx, w.trees, &feed, held, &verified, stored.as_ref())?;
        if let Ok(CheckpointOutcome::Mismatch { .. }) = outcome {
            w.unmatched.insert(feed.clone(), verified);
        }
        return Ok(outcome);
    }
    let outcome = merge(tx, w, &cluster, verified, stored)?;
    if let Ok(CheckpointOutcome::Accepted { .. }) = outcome
        && let Some(found) = prove_unmatched(tx, w, &feed, held)?
    {
        return Ok(Ok(found));
    }
    Ok(outcome)
}

/// Once a checkpoint held covers an earlier unmatched one, the two prove
/// the split.
fn prove_unmatched(
    tx: &Transaction<'_>,
    w: &mut Witness<'_>,
    feed: &str,
    held: u64,
) -> Result<Option<CheckpointOutcome>, LogError> {
    let Some(unmatched) = w.unmatched.get(feed) else {
        return Ok(None);
    };
    let stored = read_checkpoint(tx, feed)?;
    if stored.as_ref().is_none_or(|s| s.size < unmatched.size()) {
        return Ok(None);
    }
    let Some(unmatched) = w.unmatched.remove(feed) else {
        return Ok(None);
    };
    Ok(record_split(tx, w.trees, feed, held, &unmatched, stored.as_ref())?.ok())
}

/// The root of `feed`'s tree at `size` (at most `held`, its current size).
fn root_at(
    tx: &Connection,
    trees: &mut Trees,
    feed: &str,
    held: u64,
    size: u64,
) -> Result<Hash, LogError> {
    if size == held {
        return Ok(trees.get(tx, feed, held)?.root());
    }
    merkle::root_at(&mut TileReader::new(tx, feed), size)
        .map_err(|e| LogError::Corrupt(format!("Merkle tree of feed {feed}: {e}")))
}

/// The author signed `verified`, whose root is not this node's tree's: if
/// the stored checkpoint covers that point, the pair is evidence.
fn record_split(
    tx: &Transaction<'_>,
    trees: &mut Trees,
    feed: &str,
    held: u64,
    verified: &VerifiedCheckpoint,
    stored: Option<&StoredCheckpoint>,
) -> Result<Result<CheckpointOutcome, CheckpointError>, LogError> {
    let Some(stored) = stored.filter(|s| s.size >= verified.size()) else {
        tracing::warn!(
            feed,
            size = verified.size(),
            "a checkpoint signed by the feed's author does not match this node's copy of the feed; waiting for a checkpoint that proves the split"
        );
        return Ok(Ok(CheckpointOutcome::Mismatch {
            feed: feed.to_string(),
        }));
    };
    let prefix_root = root_at(tx, trees, feed, held, verified.size())?;
    let proof =
        merkle::consistency_proof(&mut TileReader::new(tx, feed), verified.size(), stored.size)
            .map_err(|e| LogError::Corrupt(format!("Merkle tree of feed {feed}: {e}")))?;
    let evidence = Equivocation {
        first: verified.note().to_text().into_bytes(),
        second: stored.note.clone().into_bytes(),
        prefix_root,
        proof,
    };
    record_equivocation(tx, feed, verified.size(), &evidence)?;
    Ok(Ok(CheckpointOutcome::Equivocation {
        feed: feed.to_string(),
    }))
}

/// Stores checked equivocation evidence and freezes the feed from the
/// first checkpoint's size on. `true` if it was new.
pub(crate) fn record_equivocation(
    tx: &Connection,
    feed: &str,
    first_size: u64,
    evidence: &Equivocation,
) -> Result<bool, LogError> {
    let proof: Vec<u8> = evidence.proof.iter().flatten().copied().collect();
    let added = tx.execute(
        "INSERT OR IGNORE INTO equivocations (feed, first_size, first_note, second_note, prefix_root, proof, detected_at_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            feed,
            first_size as i64,
            evidence.first,
            evidence.second,
            evidence.prefix_root.as_slice(),
            proof,
            clock::now_us() as i64
        ],
    )?;
    tx.execute("UPDATE feeds SET status = 'forked' WHERE feed = ?1", [feed])?;
    if added > 0 {
        tracing::warn!(
            feed,
            first_size,
            "the feed's author signed two inconsistent checkpoints (a split view); feed frozen"
        );
    }
    Ok(added > 0)
}

/// Every equivocation this store holds, as (feed, evidence).
pub fn read_equivocations(conn: &Connection) -> Result<Vec<(String, Equivocation)>, LogError> {
    let mut statement = conn.prepare_cached(
        "SELECT feed, first_note, second_note, prefix_root, proof FROM equivocations ORDER BY id",
    )?;
    let rows = statement.query_map([], |r| {
        let proof: Vec<u8> = r.get(4)?;
        Ok((
            r.get::<_, String>(0)?,
            Equivocation {
                first: r.get(1)?,
                second: r.get(2)?,
                prefix_root: super::writer::blob32(r.get(3)?),
                proof: proof
                    .chunks_exact(32)
                    .map(|c| super::writer::blob32(c.to_vec()))
                    .collect(),
            },
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Merges a checkpoint that matches this node's tree into the stored one:
/// a larger size replaces it; the same size adds its valid cosignatures.
/// Then cosigns it if it is another feed's and larger than the last this
/// node cosigned.
fn merge(
    tx: &Transaction<'_>,
    w: &mut Witness<'_>,
    cluster: &str,
    verified: VerifiedCheckpoint,
    stored: Option<StoredCheckpoint>,
) -> Result<Result<CheckpointOutcome, CheckpointError>, LogError> {
    let feed = verified.feed().to_string();
    let size = verified.size();
    // The author's signature first (the stored note's, on the same size).
    let (mut signatures, cosigned_size, mut added) = match &stored {
        Some(s) if s.size > size => return Ok(Ok(CheckpointOutcome::Unchanged)),
        Some(s) if s.size == size => match Note::parse(s.note.as_bytes()) {
            Ok(n) => (n.signatures().to_vec(), s.cosigned_size, 0),
            Err(_) => (author_signatures(&verified), s.cosigned_size, 1),
        },
        Some(s) => (author_signatures(&verified), s.cosigned_size, 1),
        None => (author_signatures(&verified), 0, 1),
    };
    for signature in verified.note().signatures() {
        if signatures.len() > COSIGNATURES_MAX {
            break;
        }
        if signatures.iter().any(|s| s.name == signature.name) {
            continue;
        }
        if is_valid_cosignature(tx, w, cluster, &verified, signature)? {
            signatures.push(signature.clone());
            added += 1;
        }
    }
    let mut cosigned = false;
    let mut cosigned_to = cosigned_size;
    if feed != w.signer.service() && size > cosigned_size {
        let own_name = checkpoint::origin(cluster, w.signer.service());
        signatures.retain(|s| s.name != own_name);
        let now_s = clock::now_us() / 1_000_000;
        match w.signer.cosign(verified.checkpoint(), now_s) {
            Ok(signature) => {
                signatures.push(signature);
                cosigned = true;
                cosigned_to = size;
                added += 1;
            }
            Err(e) => tracing::warn!(feed = %feed, error = %e, "cannot cosign the checkpoint"),
        }
    }
    if added == 0 {
        return Ok(Ok(CheckpointOutcome::Unchanged));
    }
    // The author's signature first, then cosignatures by name, so every
    // node holding the same signatures stores the same bytes.
    if signatures.len() > 2 {
        signatures[1..].sort_by(|a, b| a.name.cmp(&b.name));
    }
    let note = match Note::new(verified.note().text(), signatures) {
        Ok(note) => note,
        Err(e) => return Ok(Err(e.into())),
    };
    write_checkpoint(
        tx,
        &StoredCheckpoint {
            feed: feed.clone(),
            size,
            root: *verified.root(),
            note: note.to_text(),
            cosigned_size: cosigned_to,
        },
    )?;
    Ok(Ok(CheckpointOutcome::Accepted {
        feed,
        added,
        cosigned,
    }))
}

/// The author's signature of a verified checkpoint (signed with the origin
/// as key name), alone.
fn author_signatures(verified: &VerifiedCheckpoint) -> Vec<NoteSignature> {
    let origin = verified.checkpoint().origin();
    verified
        .note()
        .signatures()
        .iter()
        .filter(|s| s.name == origin)
        .take(1)
        .cloned()
        .collect()
}

/// Whether `signature` is a cosignature by a certified node of this
/// cluster other than the feed's author, checked with the key of that
/// node's genesis certificate.
fn is_valid_cosignature(
    tx: &Transaction<'_>,
    w: &mut Witness<'_>,
    cluster: &str,
    verified: &VerifiedCheckpoint,
    signature: &NoteSignature,
) -> Result<bool, LogError> {
    let Some(witness) = checkpoint::feed_of_origin(cluster, &signature.name) else {
        return Ok(false);
    };
    if witness == verified.feed() {
        return Ok(false);
    }
    let key = match super::writer::load_verifier(tx, w.trust, w.verifiers, witness)? {
        Ok(v) => *v.key(),
        Err(_) => return Ok(false),
    };
    Ok(
        checkpoint::cosignature_by(cluster, verified.checkpoint(), signature, witness, &key)
            .is_some(),
    )
}

/// The latest checkpoint of every feed, in memory, so replication sees
/// new checkpoints and cosignatures without reading the store. The commit
/// stage updates it after every commit that changed one.
#[derive(Debug, Default)]
pub struct CheckpointCache {
    latest: std::sync::Mutex<std::collections::BTreeMap<String, std::sync::Arc<StoredCheckpoint>>>,
}

impl CheckpointCache {
    /// Fills the cache from the store.
    pub(crate) fn load(conn: &Connection) -> Result<CheckpointCache, LogError> {
        let cache = CheckpointCache::default();
        for checkpoint in read_checkpoints(conn)? {
            cache.put(checkpoint);
        }
        Ok(cache)
    }

    pub(crate) fn put(&self, checkpoint: StoredCheckpoint) {
        if let Ok(mut latest) = self.latest.lock() {
            latest.insert(checkpoint.feed.clone(), std::sync::Arc::new(checkpoint));
        }
    }

    /// Every feed's latest checkpoint, by feed.
    pub fn all(&self) -> Vec<std::sync::Arc<StoredCheckpoint>> {
        self.latest
            .lock()
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default()
    }

    /// One feed's latest checkpoint.
    pub fn get(&self, feed: &str) -> Option<std::sync::Arc<StoredCheckpoint>> {
        self.latest.lock().ok().and_then(|l| l.get(feed).cloned())
    }
}
