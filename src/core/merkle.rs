//! RFC 6962 Merkle trees: the hashes, a compact frontier for appending,
//! inclusion and consistency proofs, and their verification.
//!
//! A herald feed is one append-only tree over its events. The author signs a
//! checkpoint `(size, root)` per sealed batch; [`inclusion_proof`] shows that
//! an event is in a checkpointed tree and [`consistency_proof`] shows that a
//! later checkpoint extends an earlier one, so a reader who kept an old root
//! can detect a rewritten history.
//!
//! Hashing follows RFC 6962 §2.1 (kept by RFC 9162 §2.1.1):
//!
//! * leaf hash: `SHA-256(0x00 ‖ data)`;
//! * interior node: `SHA-256(0x01 ‖ left ‖ right)`;
//! * the tree over `n > 1` leaves splits at `k`, the largest power of two
//!   below `n`: the left subtree is perfect, the right one holds the rest;
//! * the empty tree's root is `SHA-256("")` ([`EMPTY_ROOT`]).
//!
//! The different prefixes keep a leaf from ever being passed off as a node
//! (second-preimage resistance). What the leaf data means is not this
//! module's business; herald hashes the 32-byte event hash as leaf data.
//!
//! Proofs use the exact node order of RFC 9162 §2.1.3 / §2.1.4 (the
//! `PATH` and `PROOF` of RFC 6962 §2.1.1 / §2.1.2), so they interoperate
//! with other transparency-log verifiers. Generation reads only roots of
//! *perfect* subtrees through [`NodeSource`], so a store can serve them from
//! fixed hash tiles; a proof costs O(log n) node reads.
//!
//! Sans-IO: no clock, no randomness, no disk. Nothing here panics on input.

use std::convert::Infallible;

use crate::core::crypto::{Hash, sha256};

/// Domain prefix of a leaf hash (RFC 6962 §2.1).
pub const LEAF_PREFIX: u8 = 0x00;
/// Domain prefix of an interior node hash (RFC 6962 §2.1).
pub const NODE_PREFIX: u8 = 0x01;

/// Root of the empty tree: SHA-256 of the empty string (RFC 6962 §2.1).
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Largest tree this module builds, proves or verifies (2^63 − 1 leaves).
///
/// It is far above any feed herald can hold (sequence numbers stop at
/// [`crate::core::limits::SEQ_MAX`]) and keeps every size, node index and
/// `size + 1` well inside `u64`, so no arithmetic here can overflow. Sizes
/// above it arrive only from a corrupt or hostile source and are rejected.
pub const TREE_SIZE_MAX: u64 = i64::MAX as u64;

/// Most hashes a proof over a tree of at most [`TREE_SIZE_MAX`] leaves can
/// hold: an inclusion proof has at most `ceil(log2 n)` = 63, a consistency
/// proof at most `ceil(log2 n) + 1` = 64 (RFC 9162 §2.1.4.1). Decoders of
/// proofs received from elsewhere should refuse longer lists before
/// allocating; the verifiers here reject any length but the exact one.
pub const PROOF_HASHES_MAX: usize = 64;

/// Hash of one leaf: `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    sha256(&[&[LEAF_PREFIX], data])
}

/// Hash of an interior node: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[NODE_PREFIX], left, right])
}

/// Root of the empty tree, [`EMPTY_ROOT`].
pub const fn empty_root() -> Hash {
    EMPTY_ROOT
}

/// Why a [`Frontier`] or [`MemoryTree`] refused a size or a set of hashes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// A tree size above [`TREE_SIZE_MAX`] (restored from a corrupt store).
    #[error("merkle tree size {size} is over the limit of {TREE_SIZE_MAX} leaves")]
    SizeTooLarge {
        /// The size that was refused.
        size: u64,
    },
    /// The tree already holds [`TREE_SIZE_MAX`] leaves.
    #[error("merkle tree is full: it already holds {TREE_SIZE_MAX} leaves")]
    TreeFull,
    /// A persisted frontier whose hash count does not fit its size: a tree
    /// of `size` leaves has exactly one perfect subtree per set bit of
    /// `size`, so any other count means the stored frontier is damaged.
    #[error(
        "merkle frontier for size {size} must hold {expected} subtree hashes (one per set bit of the size), found {found}"
    )]
    FrontierHashCount {
        /// The frontier's tree size.
        size: u64,
        /// `popcount(size)`.
        expected: usize,
        /// How many hashes were given.
        found: usize,
    },
}

/// Why a proof could not be generated, or was rejected by a verifier.
///
/// `E` is the [`NodeSource`]'s error for proof generation; verification
/// reads no nodes and uses the default, [`Infallible`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError<E = Infallible> {
    /// A tree size above [`TREE_SIZE_MAX`].
    #[error("merkle tree size {size} is over the limit of {TREE_SIZE_MAX} leaves")]
    SizeTooLarge {
        /// The size that was refused.
        size: u64,
    },
    /// An inclusion proof for a leaf the tree does not have.
    #[error("leaf index {index} is out of range for a merkle tree of {size} leaves")]
    IndexOutOfRange {
        /// The leaf index asked about.
        index: u64,
        /// The tree size it was asked about.
        size: u64,
    },
    /// A consistency proof whose "old" tree is larger than the "new" one.
    #[error("old merkle tree size {old_size} is larger than new size {new_size}")]
    OldSizeGreater {
        /// The earlier tree size.
        old_size: u64,
        /// The later tree size.
        new_size: u64,
    },
    /// A consistency proof from the empty tree. Every tree extends the
    /// empty one, so such a proof would prove nothing; like the reference
    /// verifier (transparency-dev/merkle) herald neither makes nor accepts it.
    #[error(
        "consistency proof from an empty merkle tree (to size {new_size}) proves nothing and is refused"
    )]
    EmptyOldTree {
        /// The later tree size.
        new_size: u64,
    },
    /// A range `[start, end)` that is not one subtree of a Merkle tree:
    /// `start` must be a multiple of the smallest power of two that is at
    /// least `end - start`.
    #[error(
        "leaf range [{start}, {end}) is not a merkle subtree (start must be a multiple of the smallest power of two >= end - start)"
    )]
    InvalidSubtree {
        /// First leaf of the range.
        start: u64,
        /// One past the last leaf.
        end: u64,
    },
    /// A proof with the wrong number of hashes for its sizes.
    #[error("{kind} proof has {found} hashes; its tree sizes require exactly {expected}")]
    WrongProofLength {
        /// `"inclusion"` or `"consistency"`.
        kind: &'static str,
        /// The length the sizes call for.
        expected: usize,
        /// The length received.
        found: usize,
    },
    /// An inclusion proof that leads to a different root.
    #[error(
        "inclusion proof does not lead to the expected root: computed {}, expected {}",
        hex::encode(.computed),
        hex::encode(.expected)
    )]
    RootMismatch {
        /// The root the proof leads to.
        computed: Hash,
        /// The root it should lead to.
        expected: Hash,
    },
    /// A consistency proof that does not rebuild the old root: the proof
    /// does not belong to the old tree.
    #[error(
        "consistency proof does not rebuild the old root: computed {}, expected {}",
        hex::encode(.computed),
        hex::encode(.expected)
    )]
    OldRootMismatch {
        /// The old root the proof rebuilds.
        computed: Hash,
        /// The old root given.
        expected: Hash,
    },
    /// A consistency proof that rebuilds the old root but not the new one:
    /// the new tree does not extend the old one (or the proof is forged).
    #[error(
        "consistency proof does not lead to the new root: computed {}, expected {}",
        hex::encode(.computed),
        hex::encode(.expected)
    )]
    NewRootMismatch {
        /// The new root the proof leads to.
        computed: Hash,
        /// The new root given.
        expected: Hash,
    },
    /// The node source failed to supply a node (storage error).
    #[error("reading merkle node at level {level}, index {index}: {source}")]
    Node {
        /// Height of the perfect subtree asked for.
        level: u32,
        /// Its index among the subtrees of that height.
        index: u64,
        /// What the source reported.
        #[source]
        source: E,
    },
}

/// Where proof generation reads node hashes from.
///
/// `node(level, index)` returns the root of the **perfect** subtree of
/// height `level` over leaves `[index * 2^level, (index + 1) * 2^level)`;
/// level 0 is the leaf hash itself. Callers in this module ask only for
/// subtrees that lie wholly inside the tree being proved, so a store can
/// keep just the completed perfect subtrees (hash tiles) and never needs to
/// hash a partial one.
pub trait NodeSource {
    /// Why a node could not be read (a storage error, a missing tile).
    type Error;

    /// The root of the perfect subtree at (`level`, `index`).
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// A compact range over `[0, size)`: the roots of the perfect subtrees the
/// tree decomposes into, largest (leftmost) first, one per set bit of
/// `size`.
///
/// It is all an appender needs: pushing a leaf merges equal-height roots
/// like a binary counter carries (O(1) amortised, so a batch of `k` leaves
/// costs O(k)), and the root is a fold over at most 63 hashes. A store
/// persists `size()` and `hashes()` and restores with
/// [`Frontier::from_parts`] in O(log n).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    /// Number of leaves appended so far.
    size: u64,
    /// Roots of the perfect subtrees covering `[0, size)`, largest first.
    /// Invariant: `hashes.len() == size.count_ones()`.
    hashes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// Restores a persisted frontier, checking that `hashes` holds exactly
    /// one subtree root per set bit of `size` (so a damaged record is
    /// refused rather than producing wrong roots forever after).
    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Result<Frontier, MerkleError> {
        if size > TREE_SIZE_MAX {
            return Err(MerkleError::SizeTooLarge { size });
        }
        let expected = size.count_ones() as usize;
        if hashes.len() != expected {
            return Err(MerkleError::FrontierHashCount {
                size,
                expected,
                found: hashes.len(),
            });
        }
        Ok(Frontier { size, hashes })
    }

    /// Number of leaves in the tree.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Roots of the perfect subtrees covering the tree, largest first.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// Appends one leaf (its [`leaf_hash`], not its data).
    ///
    /// Each trailing set bit of the old size is a perfect subtree of the
    /// same height as the carry, so it merges into it, exactly as `size + 1`
    /// clears those bits.
    pub fn push(&mut self, leaf_hash: Hash) -> Result<(), MerkleError> {
        if self.size >= TREE_SIZE_MAX {
            return Err(MerkleError::TreeFull);
        }
        let merges = self.size.trailing_ones() as usize;
        debug_assert!(self.hashes.len() >= merges, "frontier invariant broken");
        let keep = self.hashes.len().saturating_sub(merges);
        let carry = self
            .hashes
            .drain(keep..)
            .rev()
            .fold(leaf_hash, |carry, left| node_hash(&left, &carry));
        self.hashes.push(carry);
        self.size += 1;
        Ok(())
    }

    /// Appends leaves in order. On [`MerkleError::TreeFull`] the leaves
    /// before the failing one stay appended.
    pub fn extend<I>(&mut self, leaf_hashes: I) -> Result<(), MerkleError>
    where
        I: IntoIterator<Item = Hash>,
    {
        leaf_hashes.into_iter().try_for_each(|leaf| self.push(leaf))
    }

    /// The tree's root ([`EMPTY_ROOT`] when empty): the subtree roots
    /// folded from the right, as RFC 6962's split at the largest power of
    /// two below the size does.
    pub fn root(&self) -> Hash {
        fold_from_right(&self.hashes)
    }
}

/// Rebuilds the frontier of the tree of `size` leaves from a node source
/// (one read per set bit of `size`), e.g. to restore an appender from
/// stored tiles.
pub fn frontier_at<S: NodeSource>(
    src: &mut S,
    size: u64,
) -> Result<Frontier, ProofError<S::Error>> {
    check_size(size)?;
    let hashes = perfect_roots(src, 0, size)?;
    Ok(Frontier { size, hashes })
}

/// Root of the subtree over leaves `[start, end)`: the Merkle tree hash of
/// just those leaves, read as its perfect subtrees (one node read per set
/// bit of `end - start`).
///
/// `[start, end)` must be a subtree in the sense of RFC 9162's recursive
/// split (and of the Merkle Tree Certificates draft): `start` a multiple of
/// the smallest power of two `>= end - start`. Every range the proofs need
/// is one. An empty range has the empty root.
pub fn subtree_root<S: NodeSource>(
    src: &mut S,
    start: u64,
    end: u64,
) -> Result<Hash, ProofError<S::Error>> {
    check_size(end)?;
    if !is_subtree(start, end) {
        return Err(ProofError::InvalidSubtree { start, end });
    }
    Ok(fold_from_right(&perfect_roots(src, start, end)?))
}

/// Root of the tree made of the first `size` leaves of `src`.
pub fn root_at<S: NodeSource>(src: &mut S, size: u64) -> Result<Hash, ProofError<S::Error>> {
    subtree_root(src, 0, size)
}

/// Inclusion proof for leaf `index` in the tree of `size` leaves: the
/// sibling subtree roots from the leaf up, RFC 9162 §2.1.3.1 (`PATH`).
/// At most `ceil(log2 size)` hashes and O(log size) node reads.
pub fn inclusion_proof<S: NodeSource>(
    src: &mut S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    check_size(size)?;
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut proof = Vec::with_capacity(inclusion_proof_len(index, size));
    path(src, index, 0, size, &mut proof)?;
    Ok(proof)
}

/// Consistency proof that the tree of `new_size` leaves extends the tree of
/// `old_size` leaves, RFC 9162 §2.1.4.1 (`PROOF` / `SUBPROOF`). Empty when
/// the sizes are equal. At most `ceil(log2 new_size) + 1` hashes and
/// O(log new_size) node reads. A proof from the empty tree is refused
/// ([`ProofError::EmptyOldTree`]): it would prove nothing.
pub fn consistency_proof<S: NodeSource>(
    src: &mut S,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    check_size(new_size)?;
    if old_size > new_size {
        return Err(ProofError::OldSizeGreater { old_size, new_size });
    }
    if old_size == 0 {
        return Err(ProofError::EmptyOldTree { new_size });
    }
    let mut proof = Vec::with_capacity(consistency_proof_len(old_size, new_size));
    if old_size < new_size {
        subproof(src, old_size, 0, new_size, true, &mut proof)?;
    }
    Ok(proof)
}

/// Checks that `proof` shows the leaf with hash `leaf_hash` at `index` in
/// the tree of `size` leaves whose root is `root`, RFC 9162 §2.1.3.2.
///
/// The proof length must be exactly what `index` and `size` call for, so
/// padded or truncated proofs are rejected with
/// [`ProofError::WrongProofLength`] before any hashing.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    check_size(size)?;
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let expected = inclusion_proof_len(index, size);
    if proof.len() != expected {
        return Err(wrong_length("inclusion", expected, proof.len()));
    }
    // fn walks up the leaf's path, sn up the last leaf's; where they meet
    // (fn == sn) the leaf's ancestor is on the right border and has no
    // right sibling at that level, so levels are skipped.
    let mut node = index;
    let mut last = size - 1;
    let mut computed = *leaf_hash;
    for sibling in proof {
        if last == 0 {
            return Err(wrong_length("inclusion", expected, proof.len()));
        }
        if node & 1 == 1 || node == last {
            computed = node_hash(sibling, &computed);
            while node & 1 == 0 && node != 0 {
                node >>= 1;
                last >>= 1;
            }
        } else {
            computed = node_hash(&computed, sibling);
        }
        node >>= 1;
        last >>= 1;
    }
    if last != 0 {
        return Err(wrong_length("inclusion", expected, proof.len()));
    }
    if computed != *root {
        return Err(ProofError::RootMismatch {
            computed,
            expected: *root,
        });
    }
    Ok(())
}

/// Checks that `proof` shows the tree of `new_size` leaves with root
/// `new_root` extends the tree of `old_size` leaves with root `old_root`,
/// RFC 9162 §2.1.4.2, with the edge cases of the reference verifier
/// (transparency-dev/merkle):
///
/// * `old_size > new_size`: rejected;
/// * `old_size == 0`: rejected, whatever the proof ([`ProofError::EmptyOldTree`]);
/// * `old_size == new_size`: the proof must be empty and the roots equal;
/// * otherwise the proof must have exactly the length the sizes call for,
///   rebuild `old_root` and lead to `new_root`.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    check_size(new_size)?;
    if old_size > new_size {
        return Err(ProofError::OldSizeGreater { old_size, new_size });
    }
    if old_size == 0 {
        return Err(ProofError::EmptyOldTree { new_size });
    }
    let expected = consistency_proof_len(old_size, new_size);
    if proof.len() != expected {
        return Err(wrong_length("consistency", expected, proof.len()));
    }
    if old_size == new_size {
        if old_root != new_root {
            return Err(ProofError::NewRootMismatch {
                computed: *old_root,
                expected: *new_root,
            });
        }
        return Ok(());
    }
    // When the old tree is perfect its root is the first node of the
    // path and the proof omits it.
    let (seed, rest) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        match proof.split_first() {
            Some(split) => split,
            None => return Err(wrong_length("consistency", expected, 0)),
        }
    };
    // fn walks up from the old tree's last leaf, sn from the new tree's.
    let mut node = old_size - 1;
    let mut last = new_size - 1;
    while node & 1 == 1 {
        node >>= 1;
        last >>= 1;
    }
    let mut old_computed = *seed;
    let mut new_computed = *seed;
    for hash in rest {
        if last == 0 {
            return Err(wrong_length("consistency", expected, proof.len()));
        }
        if node & 1 == 1 || node == last {
            old_computed = node_hash(hash, &old_computed);
            new_computed = node_hash(hash, &new_computed);
            while node & 1 == 0 && node != 0 {
                node >>= 1;
                last >>= 1;
            }
        } else {
            new_computed = node_hash(&new_computed, hash);
        }
        node >>= 1;
        last >>= 1;
    }
    if last != 0 {
        return Err(wrong_length("consistency", expected, proof.len()));
    }
    if old_computed != *old_root {
        return Err(ProofError::OldRootMismatch {
            computed: old_computed,
            expected: *old_root,
        });
    }
    if new_computed != *new_root {
        return Err(ProofError::NewRootMismatch {
            computed: new_computed,
            expected: *new_root,
        });
    }
    Ok(())
}

/// Why a [`MemoryTree`] could not serve a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryTreeError {
    /// A node outside the leaves held: a caller bug, since the proof
    /// functions only ask for nodes inside the tree they prove.
    #[error("merkle node at level {level}, index {index} is not in a tree of {size} leaves")]
    NodeOutOfRange {
        /// Height asked for.
        level: u32,
        /// Index asked for.
        index: u64,
        /// Leaves the tree holds.
        size: u64,
    },
}

/// A whole tree in memory: every leaf hash and every completed perfect
/// subtree root, level by level. For tests, verifying exports and small
/// feeds; it serves any earlier size too, since an earlier tree's perfect
/// subtrees are a subset of a later one's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryTree {
    /// `levels[l][i]` is the root of the perfect subtree at height `l`,
    /// index `i`; `levels[0]` holds the leaf hashes. Only completed
    /// subtrees are stored, so `levels[l].len() == size >> l`.
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// The empty tree.
    pub fn new() -> MemoryTree {
        MemoryTree::default()
    }

    /// A tree over these leaf hashes, in order.
    pub fn from_leaf_hashes<I>(leaf_hashes: I) -> Result<MemoryTree, MerkleError>
    where
        I: IntoIterator<Item = Hash>,
    {
        let mut tree = MemoryTree::new();
        leaf_hashes
            .into_iter()
            .try_for_each(|leaf| tree.push(leaf))?;
        Ok(tree)
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |leaves| leaves.len() as u64)
    }

    /// The leaf hashes, in order.
    pub fn leaf_hashes(&self) -> &[Hash] {
        self.levels.first().map_or(&[], Vec::as_slice)
    }

    /// Appends one leaf hash and every perfect subtree it completes.
    pub fn push(&mut self, leaf_hash: Hash) -> Result<(), MerkleError> {
        if self.size() >= TREE_SIZE_MAX {
            return Err(MerkleError::TreeFull);
        }
        let mut carry = leaf_hash;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let row = &mut self.levels[level];
            row.push(carry);
            let len = row.len();
            if !len.is_multiple_of(2) {
                return Ok(());
            }
            carry = node_hash(&row[len - 2], &row[len - 1]);
            level += 1;
        }
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Hash {
        let mut roots = Vec::new();
        let size = self.size();
        let mut offset = 0;
        for level in (0..u64::BITS).rev() {
            if (size >> level) & 1 == 1 {
                if let Some(hash) = self.stored(level, offset >> level) {
                    roots.push(hash);
                }
                offset += 1 << level;
            }
        }
        fold_from_right(&roots)
    }

    /// A stored perfect subtree root, if that subtree is complete.
    fn stored(&self, level: u32, index: u64) -> Option<Hash> {
        let row = self.levels.get(usize::try_from(level).ok()?)?;
        row.get(usize::try_from(index).ok()?).copied()
    }
}

impl NodeSource for MemoryTree {
    type Error = MemoryTreeError;

    fn node(&mut self, level: u32, index: u64) -> Result<Hash, MemoryTreeError> {
        self.stored(level, index)
            .ok_or(MemoryTreeError::NodeOutOfRange {
                level,
                index,
                size: self.size(),
            })
    }
}

/// Number of hashes in the inclusion proof for `index` in a tree of `size`
/// leaves (`index < size`): one per level below the point where the paths
/// to `index` and to the last leaf part (both children present), plus one
/// left sibling per level above it where `index`'s ancestor is a right
/// child.
fn inclusion_proof_len(index: u64, size: u64) -> usize {
    let below_fork = u64::BITS - (index ^ (size - 1)).leading_zeros();
    let above_fork = (index.checked_shr(below_fork).unwrap_or(0)).count_ones();
    (below_fork + above_fork) as usize
}

/// Number of hashes in the consistency proof from `old_size` to `new_size`
/// (`0 < old_size <= new_size`): the inclusion path of the old tree's last
/// leaf in the new tree, starting above the old tree's rightmost perfect
/// subtree, plus that subtree's root unless it is the whole old tree (then
/// the verifier already holds it as the old root).
fn consistency_proof_len(old_size: u64, new_size: u64) -> usize {
    if old_size == new_size {
        return 0;
    }
    let rightmost_height = old_size.trailing_zeros() as usize;
    let path = inclusion_proof_len(old_size - 1, new_size);
    let seed = usize::from(!old_size.is_power_of_two());
    path.saturating_sub(rightmost_height) + seed
}

fn wrong_length(kind: &'static str, expected: usize, found: usize) -> ProofError {
    ProofError::WrongProofLength {
        kind,
        expected,
        found,
    }
}

fn check_size<E>(size: u64) -> Result<(), ProofError<E>> {
    if size > TREE_SIZE_MAX {
        return Err(ProofError::SizeTooLarge { size });
    }
    Ok(())
}

/// Whether `[start, end)` is a subtree: `start` a multiple of the smallest
/// power of two `>= end - start`.
fn is_subtree(start: u64, end: u64) -> bool {
    match end.checked_sub(start) {
        None => false,
        Some(0) => true,
        Some(len) => len
            .checked_next_power_of_two()
            .is_some_and(|width| start.is_multiple_of(width)),
    }
}

/// Roots of the perfect subtrees of the subtree `[start, end)`, largest
/// first. Requires `is_subtree(start, end)`, which keeps every piece
/// aligned to its own width.
fn perfect_roots<S: NodeSource>(
    src: &mut S,
    start: u64,
    end: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    let len = end - start;
    let mut roots = Vec::with_capacity(len.count_ones() as usize);
    let mut offset = start;
    for level in (0..u64::BITS).rev() {
        if (len >> level) & 1 == 1 {
            roots.push(read(src, level, offset >> level)?);
            offset += 1 << level;
        }
    }
    Ok(roots)
}

/// Folds subtree roots (largest first) into one root from the right.
fn fold_from_right(roots: &[Hash]) -> Hash {
    match roots.split_last() {
        None => EMPTY_ROOT,
        Some((last, rest)) => rest
            .iter()
            .rev()
            .fold(*last, |right, left| node_hash(left, &right)),
    }
}

fn read<S: NodeSource>(src: &mut S, level: u32, index: u64) -> Result<Hash, ProofError<S::Error>> {
    src.node(level, index).map_err(|source| ProofError::Node {
        level,
        index,
        source,
    })
}

/// Largest power of two strictly below `len` (`len >= 2`), as its exponent.
fn split_level(len: u64) -> u32 {
    u64::BITS - 1 - (len - 1).leading_zeros()
}

/// RFC 9162 `PATH(index, D[lo:hi])`, appending to `out` from the leaf up.
/// `[lo, hi)` is always a subtree, so both halves of each split are too.
fn path<S: NodeSource>(
    src: &mut S,
    index: u64,
    lo: u64,
    hi: u64,
    out: &mut Vec<Hash>,
) -> Result<(), ProofError<S::Error>> {
    if hi - lo <= 1 {
        return Ok(());
    }
    let level = split_level(hi - lo);
    let mid = lo + (1 << level);
    if index < mid {
        path(src, index, lo, mid, out)?;
        out.push(subtree_root(src, mid, hi)?);
    } else {
        path(src, index, mid, hi, out)?;
        out.push(read(src, level, lo >> level)?);
    }
    Ok(())
}

/// RFC 9162 `SUBPROOF(old - lo, D[lo:hi], complete)`, appending to `out`.
/// `complete` says the verifier already knows the root of `[lo, old)`.
/// Requires `lo < old <= hi`.
fn subproof<S: NodeSource>(
    src: &mut S,
    old: u64,
    lo: u64,
    hi: u64,
    complete: bool,
    out: &mut Vec<Hash>,
) -> Result<(), ProofError<S::Error>> {
    if old == hi {
        if !complete {
            out.push(subtree_root(src, lo, hi)?);
        }
        return Ok(());
    }
    let level = split_level(hi - lo);
    let mid = lo + (1 << level);
    if old <= mid {
        subproof(src, old, lo, mid, complete, out)?;
        out.push(subtree_root(src, mid, hi)?);
    } else {
        subproof(src, old, mid, hi, false, out)?;
        out.push(read(src, level, lo >> level)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Distinct leaf hashes for a tree of `size` leaves; `seed` varies them
    /// between cases.
    fn leaves(seed: u64, size: u64) -> Vec<Hash> {
        (0..size)
            .map(|i| leaf_hash(&[seed.to_le_bytes(), i.to_le_bytes()].concat()))
            .collect()
    }

    fn tree(seed: u64, size: u64) -> MemoryTree {
        MemoryTree::from_leaf_hashes(leaves(seed, size)).unwrap()
    }

    fn ceil_log2(n: u64) -> usize {
        if n <= 1 {
            0
        } else {
            (u64::BITS - (n - 1).leading_zeros()) as usize
        }
    }

    /// Reference Merkle tree hash over leaf hashes, straight from the
    /// recursive definition (RFC 9162 §2.1.1), to check the fast paths.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => EMPTY_ROOT,
            1 => leaves[0],
            n => {
                let k = 1usize << split_level(n as u64);
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    /// A node source over a larger tree that records every read and fails
    /// any read reaching past `limit` leaves, so tests see that proofs for
    /// an older size never touch newer nodes.
    struct Bounded<'a> {
        tree: &'a MemoryTree,
        limit: u64,
        reads: usize,
    }

    impl NodeSource for Bounded<'_> {
        type Error = MemoryTreeError;

        fn node(&mut self, level: u32, index: u64) -> Result<Hash, MemoryTreeError> {
            self.reads += 1;
            let outside = MemoryTreeError::NodeOutOfRange {
                level,
                index,
                size: self.limit,
            };
            let end = (index + 1).checked_shl(level).ok_or(outside.clone())?;
            if end > self.limit {
                return Err(outside);
            }
            self.tree.stored(level, index).ok_or(outside)
        }
    }

    fn flip(hash: &Hash, bit: usize) -> Hash {
        let mut flipped = *hash;
        flipped[bit / 8] ^= 1 << (bit % 8);
        flipped
    }

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(EMPTY_ROOT, sha256(&[]));
        assert_eq!(empty_root(), EMPTY_ROOT);
        assert_eq!(Frontier::new().root(), EMPTY_ROOT);
        assert_eq!(MemoryTree::new().root(), EMPTY_ROOT);
        assert_eq!(root_at(&mut MemoryTree::new(), 0), Ok(EMPTY_ROOT));
    }

    /// Roots of the RFC 6962 example tree (the eight leaves used by Certificate
    /// Transparency's test suites) for every size 1..=8.
    #[test]
    fn roots_match_the_rfc6962_example_tree() {
        let data: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let want = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let mut tree = MemoryTree::from_leaf_hashes(data.iter().map(|d| leaf_hash(d))).unwrap();
        let mut frontier = Frontier::new();
        for (size, (d, root)) in (1u64..).zip(data.iter().zip(want)) {
            frontier.push(leaf_hash(d)).unwrap();
            assert_eq!(hex::encode(frontier.root()), root, "frontier, size {size}");
            assert_eq!(
                hex::encode(root_at(&mut tree, size).unwrap()),
                root,
                "size {size}"
            );
        }
        assert_eq!(hex::encode(tree.root()), want[7]);
    }

    #[test]
    fn frontier_root_equals_tree_root_for_every_size_to_300() {
        let all = leaves(7, 300);
        let mut frontier = Frontier::new();
        let mut tree = MemoryTree::new();
        for size in 0..=300u64 {
            let want = mth(&all[..size as usize]);
            assert_eq!(frontier.size(), size);
            assert_eq!(frontier.root(), want, "frontier, size {size}");
            assert_eq!(tree.root(), want, "memory tree, size {size}");
            assert_eq!(
                root_at(&mut tree, size).unwrap(),
                want,
                "root_at, size {size}"
            );
            assert_eq!(
                frontier_at(&mut tree, size).unwrap(),
                frontier,
                "size {size}"
            );
            if size < 300 {
                frontier.push(all[size as usize]).unwrap();
                tree.push(all[size as usize]).unwrap();
            }
        }
    }

    #[test]
    fn frontier_restores_from_its_parts_and_refuses_damaged_ones() {
        let mut frontier = Frontier::new();
        frontier.extend(leaves(3, 11)).unwrap();
        let restored = Frontier::from_parts(frontier.size(), frontier.hashes().to_vec()).unwrap();
        assert_eq!(restored, frontier);
        assert_eq!(
            frontier.hashes().len(),
            3,
            "11 = 0b1011 has three perfect subtrees"
        );

        let mut short = frontier.hashes().to_vec();
        short.pop();
        assert_eq!(
            Frontier::from_parts(11, short),
            Err(MerkleError::FrontierHashCount {
                size: 11,
                expected: 3,
                found: 2
            })
        );
        assert_eq!(
            Frontier::from_parts(TREE_SIZE_MAX + 1, vec![[0; 32]]),
            Err(MerkleError::SizeTooLarge {
                size: TREE_SIZE_MAX + 1
            })
        );
    }

    #[test]
    fn a_full_frontier_refuses_another_leaf() {
        let full = vec![[1; 32]; TREE_SIZE_MAX.count_ones() as usize];
        let mut frontier = Frontier::from_parts(TREE_SIZE_MAX, full).unwrap();
        let before = frontier.clone();
        assert_eq!(frontier.push([2; 32]), Err(MerkleError::TreeFull));
        assert_eq!(frontier, before, "a refused push changes nothing");
    }

    #[test]
    fn subtree_root_is_the_hash_of_just_those_leaves() {
        let all = leaves(5, 70);
        let mut tree = MemoryTree::from_leaf_hashes(all.clone()).unwrap();
        let mut checked = 0;
        for end in 0..=70u64 {
            for start in 0..=end {
                let got = subtree_root(&mut tree, start, end);
                if is_subtree(start, end) {
                    assert_eq!(got, Ok(mth(&all[start as usize..end as usize])));
                    checked += 1;
                } else {
                    assert_eq!(got, Err(ProofError::InvalidSubtree { start, end }));
                }
            }
        }
        assert!(checked > 300, "only {checked} valid ranges checked");
        assert!(is_subtree(8, 13) && is_subtree(12, 15) && !is_subtree(4, 9) && !is_subtree(3, 5));
    }

    #[test]
    fn generation_refuses_impossible_requests() {
        let mut t = tree(1, 10);
        assert_eq!(
            inclusion_proof(&mut t, 10, 10),
            Err(ProofError::IndexOutOfRange {
                index: 10,
                size: 10
            })
        );
        assert_eq!(
            inclusion_proof(&mut t, 0, 0),
            Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
        );
        assert_eq!(
            consistency_proof(&mut t, 5, 4),
            Err(ProofError::OldSizeGreater {
                old_size: 5,
                new_size: 4
            })
        );
        assert_eq!(
            consistency_proof(&mut t, 0, 4),
            Err(ProofError::EmptyOldTree { new_size: 4 })
        );
        assert_eq!(consistency_proof(&mut t, 4, 4), Ok(vec![]));
        assert_eq!(
            inclusion_proof(&mut t, 0, u64::MAX),
            Err(ProofError::SizeTooLarge { size: u64::MAX })
        );
        // A store that lacks a node says which one.
        assert_eq!(
            inclusion_proof(&mut t, 0, 16),
            Err(ProofError::Node {
                level: 3,
                index: 1,
                source: MemoryTreeError::NodeOutOfRange {
                    level: 3,
                    index: 1,
                    size: 10
                }
            })
        );
    }

    #[test]
    fn verification_edge_cases_follow_the_reference() {
        let t = tree(2, 1);
        let leaf = t.leaf_hashes()[0];
        // A one-leaf tree's root is its leaf; the proof is empty.
        assert_eq!(verify_inclusion(&leaf, 0, 1, &[], &leaf), Ok(()));
        assert_eq!(
            verify_inclusion(&leaf, 0, 0, &[], &EMPTY_ROOT),
            Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
        );
        let r = [9; 32];
        assert_eq!(verify_consistency(1, 1, &r, &r, &[]), Ok(()));
        assert_eq!(verify_consistency(7, 7, &r, &r, &[]), Ok(()));
        assert!(matches!(
            verify_consistency(7, 7, &r, &flip(&r, 0), &[]),
            Err(ProofError::NewRootMismatch { .. })
        ));
        assert!(matches!(
            verify_consistency(7, 7, &r, &r, &[r]),
            Err(ProofError::WrongProofLength {
                expected: 0,
                found: 1,
                ..
            })
        ));
        for (old, new) in [(0, 0), (0, 1), (0, 9)] {
            assert_eq!(
                verify_consistency(old, new, &EMPTY_ROOT, &EMPTY_ROOT, &[]),
                Err(ProofError::EmptyOldTree { new_size: new })
            );
        }
        assert_eq!(
            verify_consistency(3, 2, &r, &r, &[]),
            Err(ProofError::OldSizeGreater {
                old_size: 3,
                new_size: 2
            })
        );
        assert!(matches!(
            verify_consistency(1, 2, &r, &r, &[]),
            Err(ProofError::WrongProofLength { .. })
        ));
        assert_eq!(
            verify_consistency(1, u64::MAX, &r, &r, &[]),
            Err(ProofError::SizeTooLarge { size: u64::MAX })
        );
    }

    /// An inclusion proof does not bind the tree size by itself: the proof
    /// for leaf 0 of a 3-leaf tree also checks out as leaf 0 of a "4-leaf"
    /// tree with the same root, because both walk the same path. Callers
    /// must take `(size, root)` from one signed checkpoint. This test pins
    /// the fact so nobody relies on the opposite.
    #[test]
    fn the_size_must_come_from_the_checkpoint_not_the_proof() {
        let mut t = tree(4, 3);
        let proof = inclusion_proof(&mut t, 0, 3).unwrap();
        let root = t.root();
        let leaf = t.leaf_hashes()[0];
        assert_eq!(verify_inclusion(&leaf, 0, 3, &proof, &root), Ok(()));
        assert_eq!(verify_inclusion(&leaf, 0, 4, &proof, &root), Ok(()));
        // ... but never against the real root of a tree of another size.
        let mut bigger = tree(4, 4);
        let other_root = root_at(&mut bigger, 4).unwrap();
        assert!(verify_inclusion(&leaf, 0, 4, &proof, &other_root).is_err());
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = verify_inclusion(&[0; 32], 5, 3, &[], &[0; 32]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "leaf index 5 is out of range for a merkle tree of 3 leaves"
        );
        let e = verify_consistency(2, 4, &[0; 32], &[0; 32], &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "consistency proof has 0 hashes; its tree sizes require exactly 1"
        );
        let e = verify_inclusion(&[0; 32], 0, 1, &[], &[1; 32]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("inclusion proof does not lead to the expected root: computed 0000")
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn inclusion_proofs_verify_and_every_change_is_caught(
            seed in any::<u64>(),
            size in 1u64..2000,
            index_pick in any::<u64>(),
            other_pick in any::<u64>(),
        ) {
            let index = index_pick % size;
            // The store holds more leaves than the proved tree.
            let big = tree(seed, size + 37);
            let mut src = Bounded { tree: &big, limit: size, reads: 0 };
            let root = root_at(&mut src, size).unwrap();
            prop_assert_eq!(root, mth(&big.leaf_hashes()[..size as usize]));
            src.reads = 0;
            let proof = inclusion_proof(&mut src, index, size).unwrap();
            prop_assert!(proof.len() <= ceil_log2(size));
            prop_assert!(proof.len() <= PROOF_HASHES_MAX);
            prop_assert!(src.reads <= 2 * ceil_log2(size), "{} reads", src.reads);
            let leaf = big.leaf_hashes()[index as usize];
            prop_assert_eq!(verify_inclusion(&leaf, index, size, &proof, &root), Ok(()));

            for i in 0..proof.len() {
                for bit in 0..256 {
                    let mut bad = proof.clone();
                    bad[i] = flip(&bad[i], bit);
                    prop_assert!(verify_inclusion(&leaf, index, size, &bad, &root).is_err());
                }
            }
            for bit in 0..256 {
                prop_assert!(verify_inclusion(&leaf, index, size, &proof, &flip(&root, bit)).is_err());
                prop_assert!(verify_inclusion(&flip(&leaf, bit), index, size, &proof, &root).is_err());
            }
            // Another leaf's index, with this leaf's hash or the other's.
            let other = other_pick % size;
            if other != index {
                let other_leaf = big.leaf_hashes()[other as usize];
                prop_assert!(verify_inclusion(&leaf, other, size, &proof, &root).is_err());
                prop_assert!(verify_inclusion(&other_leaf, other, size, &proof, &root).is_err());
            }
            // Another size, with the root that size really has.
            let other_size = 1 + other_pick % (size + 37);
            if other_size != size && index < other_size {
                let mut all = big.clone();
                let other_root = root_at(&mut all, other_size).unwrap();
                prop_assert!(verify_inclusion(&leaf, index, other_size, &proof, &other_root).is_err());
            }
            // Padding or truncating is refused as such, before hashing.
            let mut padded = proof.clone();
            padded.push(root);
            let padded_verdict = verify_inclusion(&leaf, index, size, &padded, &root);
            prop_assert!(
                matches!(padded_verdict, Err(ProofError::WrongProofLength { .. })),
                "{:?}", padded_verdict
            );
            if let Some((_, shorter)) = proof.split_last() {
                let short_verdict = verify_inclusion(&leaf, index, size, shorter, &root);
                prop_assert!(
                    matches!(short_verdict, Err(ProofError::WrongProofLength { .. })),
                    "{:?}", short_verdict
                );
            }
        }

        #[test]
        fn consistency_proofs_verify_and_every_change_is_caught(
            seed in any::<u64>(),
            new_size in 1u64..2000,
            old_pick in any::<u64>(),
            other_pick in any::<u64>(),
        ) {
            let old_size = 1 + old_pick % new_size;
            let big = tree(seed, new_size + 21);
            let mut src = Bounded { tree: &big, limit: new_size, reads: 0 };
            let old_root = root_at(&mut src, old_size).unwrap();
            let new_root = root_at(&mut src, new_size).unwrap();
            src.reads = 0;
            let proof = consistency_proof(&mut src, old_size, new_size).unwrap();
            prop_assert!(proof.len() <= ceil_log2(new_size) + 1);
            prop_assert!(proof.len() <= PROOF_HASHES_MAX);
            prop_assert_eq!(proof.len(), consistency_proof_len(old_size, new_size));
            prop_assert!(src.reads <= 2 * ceil_log2(new_size) + 1, "{} reads", src.reads);
            prop_assert_eq!(
                verify_consistency(old_size, new_size, &old_root, &new_root, &proof),
                Ok(())
            );

            for i in 0..proof.len() {
                for bit in 0..256 {
                    let mut bad = proof.clone();
                    bad[i] = flip(&bad[i], bit);
                    prop_assert!(
                        verify_consistency(old_size, new_size, &old_root, &new_root, &bad).is_err()
                    );
                }
            }
            for bit in 0..256 {
                let bad_old = flip(&old_root, bit);
                let bad_new = flip(&new_root, bit);
                prop_assert!(verify_consistency(old_size, new_size, &bad_old, &new_root, &proof).is_err());
                prop_assert!(verify_consistency(old_size, new_size, &old_root, &bad_new, &proof).is_err());
            }
            // Other sizes, each with the root that size really has.
            let mut all = big.clone();
            let other_old = 1 + other_pick % new_size;
            if other_old != old_size {
                let other_root = root_at(&mut all, other_old).unwrap();
                prop_assert!(verify_consistency(other_old, new_size, &other_root, &new_root, &proof).is_err());
            }
            let other_new = old_size + other_pick % (new_size + 21 - old_size + 1);
            if other_new != new_size {
                let other_root = root_at(&mut all, other_new).unwrap();
                prop_assert!(verify_consistency(old_size, other_new, &old_root, &other_root, &proof).is_err());
            }
            // Padding or truncating is refused as such, before hashing.
            let mut padded = proof.clone();
            padded.insert(0, old_root);
            let padded_verdict = verify_consistency(old_size, new_size, &old_root, &new_root, &padded);
            prop_assert!(
                matches!(padded_verdict, Err(ProofError::WrongProofLength { .. })),
                "{:?}", padded_verdict
            );
            if let Some((_, shorter)) = proof.split_last() {
                let short_verdict = verify_consistency(old_size, new_size, &old_root, &new_root, shorter);
                prop_assert!(
                    matches!(short_verdict, Err(ProofError::WrongProofLength { .. })),
                    "{:?}", short_verdict
                );
            }
            // A tree that rewrote one old leaf is not consistent with the old root.
            if old_size < new_size {
                let mut forged_leaves = big.leaf_hashes()[..new_size as usize].to_vec();
                let victim = (other_pick % old_size) as usize;
                forged_leaves[victim] = flip(&forged_leaves[victim], 0);
                let mut forged = MemoryTree::from_leaf_hashes(forged_leaves).unwrap();
                let forged_root = forged.root();
                let forged_proof = consistency_proof(&mut forged, old_size, new_size).unwrap();
                prop_assert!(
                    verify_consistency(old_size, new_size, &old_root, &forged_root, &forged_proof).is_err()
                );
            }
        }

        #[test]
        fn frontier_follows_batches(
            seed in any::<u64>(),
            batches in prop::collection::vec(0u64..70, 1..12),
        ) {
            let mut frontier = Frontier::new();
            let mut tree = MemoryTree::new();
            let mut n = 0u64;
            for batch in batches {
                let chunk: Vec<Hash> = leaves(seed, n + batch).split_off(n as usize);
                frontier.extend(chunk.iter().copied()).unwrap();
                for leaf in chunk {
                    tree.push(leaf).unwrap();
                }
                n += batch;
                prop_assert_eq!(frontier.size(), n);
                prop_assert_eq!(frontier.root(), tree.root());
                prop_assert_eq!(frontier.hashes().len(), n.count_ones() as usize);
                prop_assert_eq!(&frontier_at(&mut tree, n).unwrap(), &frontier);
                let restored = Frontier::from_parts(n, frontier.hashes().to_vec()).unwrap();
                prop_assert_eq!(&restored, &frontier);
            }
        }

        /// Verifiers reject, never panic on, arbitrary sizes and proofs.
        #[test]
        fn verifiers_never_panic(
            a in any::<u64>(),
            b in any::<u64>(),
            small in any::<bool>(),
            proof in prop::collection::vec(any::<[u8; 32]>(), 0..70),
            x in any::<[u8; 32]>(),
            y in any::<[u8; 32]>(),
        ) {
            let (a, b) = if small { (a % 300, b % 300) } else { (a, b) };
            let _ = verify_inclusion(&x, a, b, &proof, &y);
            let _ = verify_consistency(a, b, &x, &y, &proof);
            prop_assert!(verify_consistency(a, b, &x, &y, &proof).is_err() || (a == b && x == y && proof.is_empty()));
        }
    }
}
