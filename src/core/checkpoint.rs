//! Feed checkpoints, sans-IO: how a feed's tree head is named, signed by
//! its author, cosigned by witnesses and checked, and what proves that an
//! author signed two histories (`docs/FORMAT.md`, "Merkle feeds").
//!
//! A checkpoint is a C2SP tlog-checkpoint in a C2SP signed note:
//!
//! ```text
//! herald/<cluster id>/<feed>      origin
//! <size>                          leaves (events) in the feed's tree
//! <base64 root>                   RFC 6962 root over the events' leaf hashes
//!
//! — herald/<cluster id>/<feed> <base64(key id ‖ Ed25519 signature)>
//! — herald/<cluster id>/<witness> <base64(key id ‖ timestamp ‖ signature)>   (cosignatures)
//! ```
//!
//! The cluster id ties a checkpoint to one CA, so a checkpoint of another
//! cluster's feed of the same name is never taken for this one.

use ed25519_dalek::{SigningKey, VerifyingKey};

use super::crypto::{self, Hash};
use super::merkle;
use super::note::{self, Checkpoint, Note, NoteError, NoteSignature};

/// First segment of every origin and witness name.
pub const ORIGIN_PREFIX: &str = "herald";
/// Domain tag of the cluster id.
const CLUSTER_ID_TAG: &[u8] = b"herald/v1/cluster-id\0";

/// Errors of a checkpoint or of equivocation evidence: what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint note: {0}")]
    Note(#[from] NoteError),
    #[error("checkpoint origin {origin:?} is not a feed of this cluster (herald/{cluster}/<feed>)")]
    ForeignOrigin { origin: String, cluster: String },
    #[error("checkpoint of {feed} at size {size} carries no valid signature by {feed}'s key")]
    NotSigned { feed: String, size: u64 },
    #[error("checkpoint of {feed} has extension lines; herald checkpoints have none")]
    Extensions { feed: String },
    #[error("equivocation evidence: {0}")]
    Evidence(String),
}

/// The cluster id: the first 8 bytes, in hex, of SHA-256 over a domain tag
/// and the CA's Ed25519 public key.
pub fn cluster_id(ca_public_key: &[u8; 32]) -> String {
    hex::encode(&crypto::sha256(&[CLUSTER_ID_TAG, ca_public_key])[..8])
}

/// The origin line (and the author's key name) of `feed`'s checkpoints;
/// also the name a node cosigns with.
pub fn origin(cluster: &str, feed: &str) -> String {
    format!("{ORIGIN_PREFIX}/{cluster}/{feed}")
}

/// The feed an origin of this cluster names.
pub fn feed_of_origin<'a>(cluster: &str, origin: &'a str) -> Option<&'a str> {
    origin
        .strip_prefix(ORIGIN_PREFIX)?
        .strip_prefix('/')?
        .strip_prefix(cluster)?
        .strip_prefix('/')
        .filter(|feed| super::codec::check_service_name(feed).is_ok())
}

/// Signs checkpoints of one node's own feed and cosigns others'.
pub struct CheckpointSigner {
    cluster: String,
    service: String,
    key: SigningKey,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("cluster", &self.cluster)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    pub fn new(cluster: String, service: String, key: SigningKey) -> CheckpointSigner {
        CheckpointSigner {
            cluster,
            service,
            key,
        }
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// The signed note of this node's own feed at `size` with `root`.
    pub fn sign(&self, size: u64, root: Hash) -> Result<Note, CheckpointError> {
        let origin = origin(&self.cluster, &self.service);
        let body = Checkpoint::new(origin.clone(), size, root, Vec::new())?.body();
        let signature = note::sign_note(&body, &origin, &self.key)?;
        Ok(Note::new(body, vec![signature])?)
    }

    /// This node's cosignature (C2SP tlog-cosignature/v1) of a checkpoint,
    /// at `timestamp_s` (seconds since the Unix epoch).
    pub fn cosign(
        &self,
        checkpoint: &Checkpoint,
        timestamp_s: u64,
    ) -> Result<NoteSignature, CheckpointError> {
        Ok(note::cosign(
            checkpoint,
            &origin(&self.cluster, &self.service),
            &self.key,
            timestamp_s,
        )?)
    }
}

/// A checkpoint whose author's signature was checked: only
/// [`open_checkpoint`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCheckpoint {
    feed: String,
    checkpoint: Checkpoint,
    note: Note,
}

impl VerifiedCheckpoint {
    pub fn feed(&self) -> &str {
        &self.feed
    }
    pub fn size(&self) -> u64 {
        self.checkpoint.size()
    }
    pub fn root(&self) -> &Hash {
        self.checkpoint.root()
    }
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }
    pub fn note(&self) -> &Note {
        &self.note
    }
    pub fn into_note(self) -> Note {
        self.note
    }
}

/// The feed a checkpoint note claims to be of, before any signature is
/// checked (to find its author's key).
pub fn claimed_feed(
    cluster: &str,
    bytes: &[u8],
) -> Result<(Note, Checkpoint, String), CheckpointError> {
    let note = Note::parse(bytes)?;
    let checkpoint = Checkpoint::parse_body(note.text())?;
    let feed = feed_of_origin(cluster, checkpoint.origin())
        .ok_or_else(|| CheckpointError::ForeignOrigin {
            origin: checkpoint.origin().to_string(),
            cluster: cluster.to_string(),
        })?
        .to_string();
    if !checkpoint.extensions().is_empty() {
        return Err(CheckpointError::Extensions { feed });
    }
    Ok((note, checkpoint, feed))
}

/// Parses a checkpoint note of this cluster and checks its author's
/// signature with `author_key` (the key in the feed's genesis certificate).
pub fn open_checkpoint(
    cluster: &str,
    bytes: &[u8],
    author_key: &VerifyingKey,
) -> Result<VerifiedCheckpoint, CheckpointError> {
    let (note, checkpoint, feed) = claimed_feed(cluster, bytes)?;
    verify_claimed(note, checkpoint, feed, author_key)
}

/// Checks the author's signature on what [`claimed_feed`] parsed (with
/// `author_key`, the key of `feed`'s genesis certificate).
pub fn verify_claimed(
    note: Note,
    checkpoint: Checkpoint,
    feed: String,
    author_key: &VerifyingKey,
) -> Result<VerifiedCheckpoint, CheckpointError> {
    let signed = note
        .signatures()
        .iter()
        .any(|s| note::verify_note_signature(note.text(), s, checkpoint.origin(), author_key));
    if !signed {
        return Err(CheckpointError::NotSigned {
            feed,
            size: checkpoint.size(),
        });
    }
    Ok(VerifiedCheckpoint {
        feed,
        checkpoint,
        note,
    })
}

/// Whether `signature` is a valid cosignature of `checkpoint` by `witness`
/// (a service of this cluster) with `key`; its timestamp if so.
pub fn cosignature_by(
    cluster: &str,
    checkpoint: &Checkpoint,
    signature: &NoteSignature,
    witness: &str,
    key: &VerifyingKey,
) -> Option<u64> {
    let name = origin(cluster, witness);
    if signature.name != name {
        return None;
    }
    note::verify_cosignature(checkpoint, signature, &name, key).ok()
}

/// Evidence that an author signed two checkpoints no consistency proof can
/// join: `first` (size m) and `second` (size n ≥ m), the root of `second`'s
/// tree at size m and the consistency proof from that root to `second`'s.
/// The proof binds `prefix_root` to `second`; `prefix_root` differing from
/// `first`'s root then shows the two trees disagree on the first m events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Equivocation {
    pub first: Vec<u8>,
    pub second: Vec<u8>,
    pub prefix_root: Hash,
    pub proof: Vec<Hash>,
}

/// Checks equivocation evidence; returns the feed and the first
/// checkpoint's size (from where the feed is in dispute).
pub fn check_equivocation(
    cluster: &str,
    evidence: &Equivocation,
    author_key: &VerifyingKey,
) -> Result<(String, u64), CheckpointError> {
    let first = open_checkpoint(cluster, &evidence.first, author_key)?;
    let second = open_checkpoint(cluster, &evidence.second, author_key)?;
    let fail = |why: &str| Err(CheckpointError::Evidence(why.to_string()));
    if first.feed != second.feed {
        return fail("the two checkpoints are of different feeds");
    }
    if first.size() > second.size() {
        return fail("the first checkpoint is larger than the second");
    }
    if first.size() == second.size() {
        if first.root() == second.root() {
            return fail("the two checkpoints agree");
        }
        if !evidence.proof.is_empty() || evidence.prefix_root != *second.root() {
            return fail(
                "checkpoints of one size carry no proof, and the prefix root is the second's root",
            );
        }
        let size = first.size();
        return Ok((first.feed, size));
    }
    if evidence.prefix_root == *first.root() {
        return fail(
            "the prefix root is the first checkpoint's root: the checkpoints are consistent",
        );
    }
    if merkle::verify_consistency(
        first.size(),
        second.size(),
        &evidence.prefix_root,
        second.root(),
        &evidence.proof,
    )
    .is_err()
    {
        return fail("the consistency proof does not tie the prefix root to the second checkpoint");
    }
    let size = first.size();
    Ok((first.feed, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::merkle::{MemoryTree, consistency_proof, root_at};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn tree(leaves: &[u8]) -> MemoryTree {
        let mut t = MemoryTree::default();
        for l in leaves {
            t.push(merkle::leaf_hash(&[*l])).unwrap();
        }
        t
    }

    #[test]
    fn origins_name_the_cluster_and_feed_and_nothing_else_parses_as_one() {
        let cluster = cluster_id(&[7; 32]);
        assert_eq!(cluster.len(), 16);
        let o = origin(&cluster, "council");
        assert_eq!(feed_of_origin(&cluster, &o), Some("council"));
        assert_eq!(feed_of_origin(&cluster_id(&[8; 32]), &o), None);
        assert_eq!(feed_of_origin(&cluster, "herald/x/council"), None);
        assert_eq!(
            feed_of_origin(&cluster, &format!("herald/{cluster}/")),
            None
        );
    }

    #[test]
    fn a_signed_checkpoint_opens_with_its_authors_key_only() {
        let cluster = cluster_id(&[1; 32]);
        let signer = CheckpointSigner::new(cluster.clone(), "press".into(), key(3));
        let note = signer.sign(5, [9; 32]).unwrap();
        let bytes = note.to_text().into_bytes();
        let opened = open_checkpoint(&cluster, &bytes, &key(3).verifying_key()).unwrap();
        assert_eq!(
            (opened.feed(), opened.size(), *opened.root()),
            ("press", 5, [9; 32])
        );
        assert!(matches!(
            open_checkpoint(&cluster, &bytes, &key(4).verifying_key()),
            Err(CheckpointError::NotSigned { .. })
        ));
        assert!(matches!(
            open_checkpoint(&cluster_id(&[2; 32]), &bytes, &key(3).verifying_key()),
            Err(CheckpointError::ForeignOrigin { .. })
        ));
    }

    #[test]
    fn cosignatures_verify_for_the_named_witness_only() {
        let cluster = cluster_id(&[1; 32]);
        let author = CheckpointSigner::new(cluster.clone(), "press".into(), key(3));
        let witness = CheckpointSigner::new(cluster.clone(), "council".into(), key(5));
        let note = author.sign(5, [9; 32]).unwrap();
        let cp = Checkpoint::parse_body(note.text()).unwrap();
        let cosig = witness.cosign(&cp, 1_700_000_000).unwrap();
        let wk = key(5).verifying_key();
        assert_eq!(
            cosignature_by(&cluster, &cp, &cosig, "council", &wk),
            Some(1_700_000_000)
        );
        assert_eq!(cosignature_by(&cluster, &cp, &cosig, "press", &wk), None);
        assert_eq!(
            cosignature_by(&cluster, &cp, &cosig, "council", &key(3).verifying_key()),
            None
        );
        let other = author.sign(6, [9; 32]).unwrap();
        let other = Checkpoint::parse_body(other.text()).unwrap();
        assert_eq!(
            cosignature_by(&cluster, &other, &cosig, "council", &wk),
            None
        );
    }

    #[test]
    fn equivocation_evidence_proves_a_split_view_and_nothing_else() {
        let cluster = cluster_id(&[1; 32]);
        let author = CheckpointSigner::new(cluster.clone(), "press".into(), key(3));
        let ak = key(3).verifying_key();
        let honest = tree(&[1, 2, 3, 4, 5, 6, 7]);
        let other = tree(&[1, 2, 9]);
        let second = author
            .sign(7, root_at(&mut honest.clone(), 7).unwrap())
            .unwrap();
        let first = author
            .sign(3, root_at(&mut other.clone(), 3).unwrap())
            .unwrap();
        let evidence = Equivocation {
            first: first.to_text().into_bytes(),
            second: second.to_text().into_bytes(),
            prefix_root: root_at(&mut honest.clone(), 3).unwrap(),
            proof: consistency_proof(&mut honest.clone(), 3, 7).unwrap(),
        };
        assert_eq!(
            check_equivocation(&cluster, &evidence, &ak),
            Ok(("press".into(), 3))
        );
        // A consistent pair is no evidence, whatever prefix root is claimed.
        let consistent = author
            .sign(3, root_at(&mut honest.clone(), 3).unwrap())
            .unwrap();
        let mut claim = evidence.clone();
        claim.first = consistent.to_text().into_bytes();
        assert!(check_equivocation(&cluster, &claim, &ak).is_err());
        claim.prefix_root = [0; 32];
        assert!(check_equivocation(&cluster, &claim, &ak).is_err());
        // Equal sizes, different roots.
        let fork = author.sign(7, [4; 32]).unwrap();
        let same_size = Equivocation {
            first: fork.to_text().into_bytes(),
            second: second.to_text().into_bytes(),
            prefix_root: root_at(&mut honest.clone(), 7).unwrap(),
            proof: Vec::new(),
        };
        assert!(check_equivocation(&cluster, &same_size, &ak).is_ok());
        // Not signed by the author.
        assert!(check_equivocation(&cluster, &evidence, &key(4).verifying_key()).is_err());
    }
}
