//! Each feed's RFC 6962 Merkle tree, stored as tiles of hashes.
//!
//! A feed's tree has one leaf per event, in sequence order: leaf hash =
//! SHA-256(0x00 ‖ event hash) (`docs/FORMAT.md`, "Merkle feeds"). The tree is
//! kept in `tree_tiles` as tiles of [`TILE_WIDTH`] hashes: tile level `k > 0`
//! holds the hashes of the tree's nodes of height `TILE_HEIGHT · k`, and tile
//! `idx` of a level holds its entries `[TILE_WIDTH · idx, TILE_WIDTH · (idx +
//! 1))`. Level 0 holds the **event hashes** themselves (a leaf hash is one
//! SHA-256 away): it is the only place the store keeps them, so an event's
//! row needs neither its own hash nor its predecessor's (`store::rows`). A
//! full tile is written once; the partial tile at each level's right edge is
//! rewritten as it grows.
//!
//! What that costs: 32 bytes per event at level 0 plus one sixteenth of that
//! per level above, one row per 16 events; appending writes one partial tile
//! per level per commit. Any node of the tree is at most 2^3 entries of one
//! tile hashed together (at most 7 hashes, plus up to 8 leaf hashes at level
//! 0), so an inclusion or consistency proof of a feed of n events reads at
//! most ⌈log16 n⌉ + 1 tiles per edge of the proof and hashes at most
//! 15 · ⌈log2 n⌉ nodes.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::LogError;
use crate::core::crypto::Hash;
use crate::core::merkle::{self, NodeSource};

/// Heights of the tree one tile level spans.
pub const TILE_HEIGHT: u32 = 4;
/// Entries in a full tile (2^TILE_HEIGHT).
pub const TILE_WIDTH: usize = 1 << TILE_HEIGHT;
/// Most tile levels any feed can need: sizes are below 2^64.
const TILE_LEVELS_MAX: usize = 64 / TILE_HEIGHT as usize;

pub use crate::core::verify::leaf_of;

/// The right edge of one feed's tree: per tile level, the entries of its
/// partial tile (fewer than [`TILE_WIDTH`]). Enough to append and to compute
/// the root; every other node is in `tree_tiles`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedTree {
    size: u64,
    edges: Vec<Vec<Hash>>,
}

impl FeedTree {
    /// Loads the right edge of `feed`'s tree of `size` leaves (the number of
    /// events the store holds of it) from its partial tiles.
    pub fn load(conn: &Connection, feed: &str, size: u64) -> Result<FeedTree, LogError> {
        let mut edges = Vec::new();
        for level in 0..TILE_LEVELS_MAX as u32 {
            let count = entries_at(size, level);
            if count == 0 {
                break;
            }
            let partial = (count % TILE_WIDTH as u64) as usize;
            let entries = if partial == 0 {
                Vec::new()
            } else {
                let idx = count / TILE_WIDTH as u64;
                let mut tile = read_tile(conn, feed, level, idx)?.unwrap_or_default();
                if tile.len() < partial {
                    return Err(damaged(feed, level, idx, partial, tile.len()));
                }
                // Entries beyond the size belong to leaves the store no
                // longer holds (events removed by hand, say): the tree of
                // the first `size` leaves does not depend on them, and the
                // next append overwrites them.
                tile.truncate(partial);
                tile
            };
            edges.push(entries);
        }
        Ok(FeedTree { size, edges })
    }

    /// Number of leaves (events).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The tree's root hash (SHA-256 of nothing for an empty tree).
    pub fn root(&self) -> Hash {
        let frontier = self.frontier();
        let mut nodes = frontier.iter().rev();
        let Some(last) = nodes.next() else {
            return merkle::empty_root();
        };
        nodes.fold(*last, |right, left| merkle::node_hash(left, &right))
    }

    /// The tree's frontier, from which a verifier extends it by a run of
    /// received events (see `core::verify::check_sealed_run`).
    pub fn merkle_frontier(&self) -> Result<merkle::Frontier, LogError> {
        merkle::Frontier::from_parts(self.size, self.frontier())
            .map_err(|e| LogError::Corrupt(format!("a feed tree's frontier: {e}")))
    }

    /// The roots of the perfect subtrees that make up the tree, largest
    /// (leftmost) first.
    fn frontier(&self) -> Vec<Hash> {
        let mut frontier = Vec::new();
        for (level, entries) in self.edges.iter().enumerate().rev() {
            let mut offset = 0;
            for bit in (0..TILE_HEIGHT).rev() {
                let width = 1usize << bit;
                if entries.len() & width != 0 {
                    frontier.push(node_of(level as u32, &entries[offset..offset + width]));
                    offset += width;
                }
            }
        }
        frontier
    }

    /// Appends events by their hashes, writing every tile that fills up and
    /// then the partial tiles that changed. Runs inside the caller's
    /// transaction, so the tree and the events commit together.
    pub fn append(
        &mut self,
        conn: &Connection,
        feed: &str,
        event_hashes: impl IntoIterator<Item = Hash>,
    ) -> Result<(), LogError> {
        let mut touched = 0usize;
        for event_hash in event_hashes {
            let mut level = 0usize;
            let mut entry = event_hash;
            loop {
                if self.edges.len() <= level {
                    self.edges.push(Vec::new());
                }
                self.edges[level].push(entry);
                touched = touched.max(level + 1);
                if self.edges[level].len() < TILE_WIDTH {
                    break;
                }
                let full = std::mem::take(&mut self.edges[level]);
                let count_after = entries_at(self.size + 1, level as u32);
                let idx = count_after / TILE_WIDTH as u64 - 1;
                write_tile(conn, feed, level as u32, idx, &full)?;
                entry = node_of(level as u32, &full);
                level += 1;
            }
            self.size += 1;
        }
        for level in 0..touched.min(self.edges.len()) {
            if self.edges[level].is_empty() {
                continue;
            }
            let idx = entries_at(self.size, level as u32) / TILE_WIDTH as u64;
            write_tile(conn, feed, level as u32, idx, &self.edges[level])?;
        }
        Ok(())
    }
}

/// How many entries tile level `level` has in a tree of `size` leaves.
fn entries_at(size: u64, level: u32) -> u64 {
    size.checked_shr(TILE_HEIGHT * level).unwrap_or(0)
}

/// Root of the perfect subtree over `entries` of tile level `level`: at
/// level 0 the entries are event hashes, hashed into leaves first.
fn node_of(level: u32, entries: &[Hash]) -> Hash {
    if level > 0 {
        return perfect_root(entries);
    }
    let mut leaves = [[0u8; 32]; TILE_WIDTH];
    let len = entries.len().min(TILE_WIDTH);
    for (leaf, event_hash) in leaves.iter_mut().zip(entries) {
        *leaf = leaf_of(event_hash);
    }
    perfect_root(&leaves[..len])
}

/// Root of a perfect subtree given its 2^k lowest nodes (at most one
/// tile's worth), left to right. Hashes in place: proofs call it for every
/// node they read.
fn perfect_root(nodes: &[Hash]) -> Hash {
    let mut row = [[0u8; 32]; TILE_WIDTH];
    let mut len = nodes.len().min(TILE_WIDTH);
    row[..len].copy_from_slice(&nodes[..len]);
    while len > 1 {
        for i in 0..len / 2 {
            row[i] = merkle::node_hash(&row[2 * i], &row[2 * i + 1]);
        }
        len /= 2;
    }
    if nodes.is_empty() {
        merkle::empty_root()
    } else {
        row[0]
    }
}

fn damaged(feed: &str, level: u32, idx: u64, expected: usize, found: usize) -> LogError {
    LogError::Corrupt(format!(
        "Merkle tree of feed {feed}: tile {idx} of level {level} holds {found} hashes where the feed's size needs {expected}"
    ))
}

const READ_TILE_SQL: &str =
    "SELECT hashes FROM tree_tiles WHERE feed = ?1 AND level = ?2 AND idx = ?3";

fn read_tile(
    conn: &Connection,
    feed: &str,
    level: u32,
    idx: u64,
) -> Result<Option<Vec<Hash>>, LogError> {
    read_tile_with(&mut *conn.prepare_cached(READ_TILE_SQL)?, feed, level, idx)
}

fn read_tile_with(
    statement: &mut rusqlite::Statement<'_>,
    feed: &str,
    level: u32,
    idx: u64,
) -> Result<Option<Vec<Hash>>, LogError> {
    let blob: Option<Vec<u8>> = statement
        .query_row(params![feed, level, idx as i64], |row| row.get(0))
        .optional()?;
    let Some(blob) = blob else { return Ok(None) };
    if blob.len() % 32 != 0 || blob.len() > 32 * TILE_WIDTH {
        return Err(LogError::Corrupt(format!(
            "Merkle tree of feed {feed}: tile {idx} of level {level} is {} bytes, not a whole number of at most {TILE_WIDTH} hashes",
            blob.len()
        )));
    }
    Ok(Some(
        blob.chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect(),
    ))
}

fn write_tile(
    conn: &Connection,
    feed: &str,
    level: u32,
    idx: u64,
    entries: &[Hash],
) -> Result<(), LogError> {
    let blob: Vec<u8> = entries.iter().flatten().copied().collect();
    conn.prepare_cached(
        "INSERT OR REPLACE INTO tree_tiles (feed, level, idx, hashes) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![feed, level, idx as i64, blob])?;
    Ok(())
}

/// Reads nodes of one feed's stored tree for proofs, caching the tiles it
/// read (one proof touches each tile at most a few times).
pub struct TileReader<'a> {
    conn: &'a Connection,
    feed: &'a str,
    tiles: HashMap<(u32, u64), Vec<Hash>>,
    /// The tile query, prepared on first use and kept for the proof.
    statement: Option<rusqlite::CachedStatement<'a>>,
}

impl<'a> TileReader<'a> {
    pub fn new(conn: &'a Connection, feed: &'a str) -> TileReader<'a> {
        TileReader {
            conn,
            feed,
            tiles: HashMap::new(),
            statement: None,
        }
    }

    fn read(&mut self, level: u32, idx: u64) -> Result<Vec<Hash>, LogError> {
        let statement = match self.statement.as_mut() {
            Some(statement) => statement,
            None => self
                .statement
                .insert(self.conn.prepare_cached(READ_TILE_SQL)?),
        };
        Ok(read_tile_with(statement, self.feed, level, idx)?.unwrap_or_default())
    }
}

impl NodeSource for TileReader<'_> {
    type Error = LogError;

    fn node(&mut self, height: u32, index: u64) -> Result<Hash, LogError> {
        let level = height / TILE_HEIGHT;
        let below = height % TILE_HEIGHT;
        let width = 1usize << below;
        let first = index << below;
        let idx = first / TILE_WIDTH as u64;
        let offset = (first % TILE_WIDTH as u64) as usize;
        if !self.tiles.contains_key(&(level, idx)) {
            let tile = self.read(level, idx)?;
            self.tiles.insert((level, idx), tile);
        }
        let tile = &self.tiles[&(level, idx)];
        if tile.len() < offset + width {
            return Err(damaged(self.feed, level, idx, offset + width, tile.len()));
        }
        Ok(node_of(level, &tile[offset..offset + width]))
    }
}

/// Reads stored event hashes of one feed by sequence number from its
/// level-0 tiles, keeping the last tile read (reads go mostly in order).
pub struct EventHashes<'a> {
    conn: &'a Connection,
    feed: String,
    tile: Option<(u64, Vec<Hash>)>,
}

impl<'a> EventHashes<'a> {
    pub fn new(conn: &'a Connection, feed: &str) -> EventHashes<'a> {
        EventHashes {
            conn,
            feed: feed.to_string(),
            tile: None,
        }
    }

    /// The hash of event `seq`, `None` if the tiles do not hold it.
    pub fn get(&mut self, seq: u64) -> Result<Option<Hash>, LogError> {
        let idx = seq / TILE_WIDTH as u64;
        let offset = (seq % TILE_WIDTH as u64) as usize;
        let cached = self.tile.as_ref().is_some_and(|(i, _)| *i == idx);
        if !cached {
            let tile = read_tile(self.conn, &self.feed, 0, idx)?.unwrap_or_default();
            self.tile = Some((idx, tile));
        }
        Ok(self
            .tile
            .as_ref()
            .and_then(|(_, tile)| tile.get(offset).copied()))
    }

    /// Forgets the cached tile (the store changed under it).
    pub fn forget(&mut self) {
        self.tile = None;
    }
}

/// The stored hash of event `feed`/`seq`, `None` if the store lacks it.
pub fn event_hash_at(conn: &Connection, feed: &str, seq: u64) -> Result<Option<Hash>, LogError> {
    EventHashes::new(conn, feed).get(seq)
}

/// Builds the tree of every feed from its stored event hashes (the schema
/// migration that introduced trees).
pub(crate) fn rebuild_all(conn: &Connection) -> Result<(), LogError> {
    conn.execute("DELETE FROM tree_tiles", [])?;
    let mut statement = conn.prepare("SELECT feed, seq, hash FROM events ORDER BY feed, seq")?;
    let mut rows = statement.query([])?;
    let mut current: Option<(String, FeedTree)> = None;
    while let Some(row) = rows.next()? {
        let feed: String = row.get(0)?;
        let seq: i64 = row.get(1)?;
        let hash: Vec<u8> = row.get(2)?;
        if current.as_ref().is_none_or(|(f, _)| *f != feed) {
            current = Some((feed.clone(), FeedTree::default()));
        }
        let Some((_, tree)) = current.as_mut() else {
            continue;
        };
        if seq < 0 || seq as u64 != tree.size() || hash.len() != 32 {
            return Err(LogError::Corrupt(format!(
                "feed {feed}: stored event at sequence {seq} does not continue the feed's {} events (or its hash is not 32 bytes); cannot build its Merkle tree",
                tree.size()
            )));
        }
        tree.append(conn, &feed, [super::hash_from_blob(&hash)])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::merkle::{MemoryTree, inclusion_proof, root_at, verify_inclusion};

    fn conn() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE tree_tiles (feed TEXT NOT NULL, level INTEGER NOT NULL, idx INTEGER NOT NULL,
             hashes BLOB NOT NULL, PRIMARY KEY (feed, level, idx)) WITHOUT ROWID;",
        )
        .unwrap();
        conn
    }

    fn event_hash(i: u64) -> Hash {
        crate::core::crypto::sha256(&[&i.to_le_bytes()])
    }

    fn leaf(i: u64) -> Hash {
        leaf_of(&event_hash(i))
    }

    #[test]
    fn stored_tiles_give_the_same_roots_and_proofs_as_the_whole_tree_in_memory() {
        let conn = conn();
        let mut tree = FeedTree::default();
        let mut memory = MemoryTree::default();
        let mut next = 0u64;
        // Batches of assorted sizes cross tile boundaries at every level.
        for batch in [1usize, 1, 14, 16, 3, 255, 1, 300, 17, 4096 - 608, 5] {
            let hashes: Vec<Hash> = (next..next + batch as u64).map(event_hash).collect();
            next += batch as u64;
            tree.append(&conn, "f", hashes.iter().copied()).unwrap();
            for h in &hashes {
                memory.push(leaf_of(h)).unwrap();
            }
            // Every event hash is readable back by its sequence number.
            let last = next - 1;
            assert_eq!(
                event_hash_at(&conn, "f", last).unwrap(),
                Some(event_hash(last))
            );
            assert_eq!(event_hash_at(&conn, "f", next).unwrap(), None);
            assert_eq!(tree.size(), next);
            assert_eq!(tree.root(), root_at(&mut memory.clone(), next).unwrap());
            let reloaded = FeedTree::load(&conn, "f", next).unwrap();
            assert_eq!(reloaded, tree, "the edge reloads from the partial tiles");
        }
        let size = tree.size();
        let root = tree.root();
        let mut reader = TileReader::new(&conn, "f");
        for index in [0, 1, 15, 16, 17, 255, 256, 1000, size - 2, size - 1] {
            let proof = inclusion_proof(&mut reader, index, size).unwrap();
            verify_inclusion(&leaf(index), index, size, &proof, &root).unwrap();
        }
        for old in [1, 16, 17, 4095, size] {
            assert_eq!(
                root_at(&mut reader, old).unwrap(),
                root_at(&mut memory.clone(), old).unwrap()
            );
        }
    }

    #[test]
    fn a_missing_or_short_tile_is_reported_as_damage_not_a_wrong_root() {
        let conn = conn();
        let mut tree = FeedTree::default();
        tree.append(&conn, "f", (0..20).map(event_hash)).unwrap();
        conn.execute("DELETE FROM tree_tiles WHERE level = 0 AND idx = 1", [])
            .unwrap();
        let err = FeedTree::load(&conn, "f", 20).unwrap_err();
        assert!(err.to_string().contains("tile 1 of level 0"), "{err}");
        let mut reader = TileReader::new(&conn, "f");
        assert!(inclusion_proof(&mut reader, 3, 20).is_err());
    }
}
