//! Events as the store keeps them: a header's fields in compact columns,
//! not its encoded bytes.
//!
//! An event's envelope is a function of its header fields, its payload and
//! (format 1) its signature, and the canonical encoding has one form
//! (`core::codec`), so the store keeps only what cannot be derived and
//! rebuilds the exact envelope on read:
//!
//! * the feed, event type and channel key id as small integers, interned in
//!   `feed_names`, `type_names` and `channel_keys`;
//! * no `prev` and no event hash: both are in the feed's Merkle tree, whose
//!   level-0 tiles hold the event hashes (`store::tree`), so `prev` of event
//!   `n` is entry `n - 1` there and the rebuilt header must hash to entry
//!   `n` (a damaged row or tile is reported, never served);
//! * no payload hash or length while the payload is held (they are
//!   recomputed from it), kept in `payload_digest` only once it is pruned;
//! * the metadata as its postcard bytes, NULL when empty (most events).
//!
//! A row of a 256-byte encrypted event is then about 340 bytes, of which 272
//! are the ciphertext (`docs/FORMAT.md`, "Storage").

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::LogError;
use super::StoredEvent;
use super::tree::EventHashes;
use crate::core::codec;
use crate::core::crypto::{self, ChannelKeyId, Hash};
use crate::core::event::{Encryption, Envelope, EventHeader, PayloadDescriptor, SignatureScope};
use crate::core::limits::FORMAT_VERSION_SEALED;
use crate::core::verify::VerifiedEvent;

/// The columns of one event row, in the order [`EVENT_COLUMNS`] selects them.
const EVENT_COLUMNS: &str = "e.arrival, f.name, e.seq, e.id, t.name, e.timestamp_us, e.form, \
     e.schema_version, e.meta, c.key_id, e.nonce, e.payload, e.payload_digest, e.signature";

/// The tables an event row is read from, joined to its interned names.
const EVENT_TABLES: &str = "event_rows e JOIN feed_names f ON f.id = e.feed \
     JOIN type_names t ON t.id = e.type LEFT JOIN channel_keys c ON c.id = e.channel";

/// `SELECT <event columns> FROM <event tables> <tail>`: `tail` filters and
/// orders with the aliases `e` (event_rows), `f` (feed_names.name) and `t`
/// (type_names.name).
pub(crate) fn select_events(tail: &str) -> String {
    format!("SELECT {EVENT_COLUMNS} FROM {EVENT_TABLES} {tail}")
}

/// Ids of interned names, as of the transaction that uses them. Cleared
/// whenever a transaction rolls back, since ids it handed out are gone.
#[derive(Debug, Default)]
pub(crate) struct Names {
    feeds: HashMap<String, i64>,
    types: HashMap<String, i64>,
    channels: HashMap<ChannelKeyId, i64>,
    /// The last feed and type looked up: a batch's events mostly share
    /// both, and comparing a short name costs less than hashing it.
    last_feed: Option<(String, i64)>,
    last_type: Option<(String, i64)>,
}

impl Names {
    /// Forgets every id (after a rollback).
    pub fn clear(&mut self) {
        self.feeds.clear();
        self.types.clear();
        self.channels.clear();
        self.last_feed = None;
        self.last_type = None;
    }

    fn feed(&mut self, tx: &Connection, name: &str) -> rusqlite::Result<i64> {
        remembered(&mut self.last_feed, name, |name| {
            name_id(&mut self.feeds, tx, "feed_names", name)
        })
    }

    fn event_type(&mut self, tx: &Connection, name: &str) -> rusqlite::Result<i64> {
        remembered(&mut self.last_type, name, |name| {
            name_id(&mut self.types, tx, "type_names", name)
        })
    }

    fn channel(&mut self, tx: &Connection, key_id: &ChannelKeyId) -> rusqlite::Result<i64> {
        if let Some(id) = self.channels.get(key_id) {
            return Ok(*id);
        }
        let id = intern(tx, "channel_keys", "key_id", key_id.as_slice())?;
        self.channels.insert(*key_id, id);
        Ok(id)
    }
}

/// `name`'s id from `last` if it was the last one looked up, else from
/// `look_up` (and remembered).
fn remembered(
    last: &mut Option<(String, i64)>,
    name: &str,
    look_up: impl FnOnce(&str) -> rusqlite::Result<i64>,
) -> rusqlite::Result<i64> {
    if let Some((last_name, id)) = last
        && last_name == name
    {
        return Ok(*id);
    }
    let id = look_up(name)?;
    *last = Some((name.to_string(), id));
    Ok(id)
}

/// The id of `name` in the names table `table`, from `ids` when cached.
fn name_id(
    ids: &mut HashMap<String, i64>,
    tx: &Connection,
    table: &str,
    name: &str,
) -> rusqlite::Result<i64> {
    if let Some(id) = ids.get(name) {
        return Ok(*id);
    }
    let id = intern(tx, table, "name", name)?;
    ids.insert(name.to_string(), id);
    Ok(id)
}

/// The id of `value` in `table`, inserting it when new.
fn intern<V: rusqlite::ToSql>(
    tx: &Connection,
    table: &str,
    column: &str,
    value: V,
) -> rusqlite::Result<i64> {
    let found: Option<i64> = tx
        .prepare_cached(&format!("SELECT id FROM {table} WHERE {column} = ?1"))?
        .query_row([&value], |r| r.get(0))
        .optional()?;
    if let Some(id) = found {
        return Ok(id);
    }
    tx.prepare_cached(&format!("INSERT INTO {table} ({column}) VALUES (?1)"))?
        .execute([&value])?;
    Ok(tx.last_insert_rowid())
}

const INSERT_ROW_SQL: &str = "INSERT INTO event_rows (feed, seq, id, type, timestamp_us, form, \
     schema_version, meta, channel, nonce, payload, payload_digest, signature, arrival)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";

/// Stores verified events, in order, through one prepared statement (the
/// statement cache hashes the SQL text on every lookup, so a lookup per
/// event costs more than binding it). Their hashes go to the feed's tree,
/// which the caller extends in the same transaction.
pub(crate) struct RowInserter<'c> {
    tx: &'c Connection,
    statement: rusqlite::CachedStatement<'c>,
}

impl<'c> RowInserter<'c> {
    pub fn new(tx: &'c Connection) -> rusqlite::Result<RowInserter<'c>> {
        Ok(RowInserter {
            tx,
            statement: tx.prepare_cached(INSERT_ROW_SQL)?,
        })
    }

    /// The transaction the rows go into.
    pub fn tx(&self) -> &'c Connection {
        self.tx
    }

    pub fn insert(&mut self, names: &mut Names, event: &VerifiedEvent) -> rusqlite::Result<()> {
        insert_with(
            &mut self.statement,
            self.tx,
            names,
            None,
            event.header(),
            event.signature_bytes(),
            event.payload(),
        )
    }
}

/// Stores one event from its parts (also the migration's path, which keeps
/// each event's `arrival`; `None`: the next one).
pub(crate) fn insert_row(
    tx: &Connection,
    names: &mut Names,
    arrival: Option<i64>,
    header: &EventHeader,
    signature: Option<&[u8; 64]>,
    payload: Option<&[u8]>,
) -> rusqlite::Result<()> {
    let mut statement = tx.prepare_cached(INSERT_ROW_SQL)?;
    insert_with(
        &mut statement,
        tx,
        names,
        arrival,
        header,
        signature,
        payload,
    )
}

fn insert_with(
    statement: &mut rusqlite::CachedStatement<'_>,
    tx: &Connection,
    names: &mut Names,
    arrival: Option<i64>,
    header: &EventHeader,
    signature: Option<&[u8; 64]>,
    payload: Option<&[u8]>,
) -> rusqlite::Result<()> {
    let feed = names.feed(tx, &header.author)?;
    let event_type = names.event_type(tx, &header.event_type)?;
    let (channel, nonce) = match &header.payload.encryption {
        Encryption::Plain => (None, None),
        Encryption::XChaCha20Poly1305 { key_id, nonce } => {
            (Some(names.channel(tx, key_id)?), Some(nonce.as_slice()))
        }
    };
    let meta =
        (!header.meta.is_empty()).then(|| postcard::to_allocvec(&header.meta).unwrap_or_default());
    // Only a pruned payload needs its digest kept: a held one gives it.
    let digest = payload.is_none().then(|| {
        let mut d = header.payload.hash.to_vec();
        d.extend_from_slice(&header.payload.len.to_be_bytes());
        d
    });
    statement.execute(params![
        feed,
        header.seq as i64,
        header.id.as_slice(),
        event_type,
        header.timestamp_us as i64,
        header.version,
        header.schema_version,
        meta,
        channel,
        nonce,
        payload,
        digest,
        signature.map(|s| s.as_slice()),
        arrival,
    ])?;
    Ok(())
}

/// One event row as read, before its envelope is rebuilt.
pub(crate) struct EventRow {
    pub arrival: u64,
    pub feed: String,
    pub seq: u64,
    id: Vec<u8>,
    pub event_type: String,
    timestamp_us: i64,
    form: u8,
    schema_version: u32,
    meta: Option<Vec<u8>>,
    key_id: Option<Vec<u8>>,
    nonce: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    payload_digest: Option<Vec<u8>>,
    signature: Option<Vec<u8>>,
}

/// Reads the columns [`select_events`] selects.
pub(crate) fn event_row(r: &Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        arrival: r.get::<_, i64>(0)? as u64,
        feed: text(r, 1)?,
        seq: r.get::<_, i64>(2)? as u64,
        id: r.get(3)?,
        event_type: text(r, 4)?,
        timestamp_us: r.get(5)?,
        form: r.get(6)?,
        schema_version: r.get(7)?,
        meta: r.get(8)?,
        key_id: r.get(9)?,
        nonce: r.get(10)?,
        payload: r.get(11)?,
        payload_digest: r.get(12)?,
        signature: r.get(13)?,
    })
}

/// A name column as text. Bytes that are not UTF-8 (a damaged name) are
/// replaced, so the event rebuilt from them fails its hash check and is
/// reported as damaged rather than making the whole query fail.
fn text(r: &Row<'_>, column: usize) -> rusqlite::Result<String> {
    Ok(match r.get_ref(column)? {
        rusqlite::types::ValueRef::Text(bytes) | rusqlite::types::ValueRef::Blob(bytes) => {
            String::from_utf8_lossy(bytes).into_owned()
        }
        other => {
            return Err(rusqlite::Error::InvalidColumnType(
                column,
                "name".into(),
                other.data_type(),
            ));
        }
    })
}

/// Rebuilds events from their rows, reading `prev` and the expected hash
/// of each from its feed's tree (one tile per 16 events in order).
pub(crate) struct Rebuilder<'a> {
    conn: &'a Connection,
    hashes: HashMap<String, EventHashes<'a>>,
}

/// Feeds a [`Rebuilder`] keeps a tile of at once; reads by arrival that
/// touch more feeds re-read tiles.
const REBUILDER_FEEDS_MAX: usize = 256;

impl<'a> Rebuilder<'a> {
    pub fn new(conn: &'a Connection) -> Rebuilder<'a> {
        Rebuilder {
            conn,
            hashes: HashMap::new(),
        }
    }

    /// The stored hash of event `feed`/`seq`, if the store holds it.
    pub fn hash_at(&mut self, feed: &str, seq: u64) -> Result<Option<Hash>, LogError> {
        if !self.hashes.contains_key(feed) {
            if self.hashes.len() >= REBUILDER_FEEDS_MAX {
                self.hashes.clear();
            }
            self.hashes
                .insert(feed.to_string(), EventHashes::new(self.conn, feed));
        }
        match self.hashes.get_mut(feed) {
            Some(hashes) => hashes.get(seq),
            None => Ok(None),
        }
    }

    /// The event a row holds, its envelope rebuilt byte for byte; a row or
    /// tree that does not give back the event stored is reported as damage.
    pub fn event(&mut self, row: EventRow) -> Result<StoredEvent, LogError> {
        let place = format!(
            "stored event {}/{} (arrival {})",
            row.feed, row.seq, row.arrival
        );
        let damaged = |what: &str| LogError::Corrupt(format!("{place}: {what}"));
        let rebuilt = self.rebuild(row)?.map_err(|e| damaged(&e))?;
        match rebuilt.tree_hash {
            Some(hash) if hash == rebuilt.event.hash => Ok(rebuilt.event),
            Some(hash) => Err(damaged(&format!(
                "its row hashes to {} but the feed's tree holds {}",
                hex::encode(rebuilt.event.hash),
                hex::encode(hash)
            ))),
            None => Err(damaged("the feed's tree lacks its hash")),
        }
    }

    /// The event a row describes and the hash the feed's tree holds for its
    /// position, unchecked (an auditor reports a difference and goes on).
    /// The inner `Err`: the row cannot describe an event (a damaged column).
    pub fn rebuild(&mut self, row: EventRow) -> Result<Result<Rebuilt, String>, LogError> {
        let arrival = row.arrival;
        let prev = match row.seq {
            0 => [0u8; 32],
            seq => match self.hash_at(&row.feed, seq - 1)? {
                Some(prev) => prev,
                None => return Ok(Err("the feed's tree lacks the previous event's hash".into())),
            },
        };
        let tree_hash = self.hash_at(&row.feed, row.seq)?;
        let (header, signature, payload) = match rebuild_parts(row, prev) {
            Ok(parts) => parts,
            Err(e) => return Ok(Err(e)),
        };
        let header_bytes = codec::encode_header(&header);
        let hash = codec::event_hash(&header_bytes);
        let envelope = codec::encode_envelope(&Envelope {
            header: header_bytes,
            signature,
            payload,
        });
        Ok(Ok(Rebuilt {
            event: StoredEvent {
                arrival,
                header,
                hash,
                envelope,
            },
            tree_hash,
        }))
    }
}

/// An event rebuilt from its row, with the hash its feed's tree holds at
/// its position (`None`: none).
pub(crate) struct Rebuilt {
    pub event: StoredEvent,
    pub tree_hash: Option<Hash>,
}

/// What a row describes: the header, a format-1 signature, the payload.
type EventParts = (EventHeader, Option<[u8; 64]>, Option<Vec<u8>>);

/// The header, signature and payload a row describes, given `prev`.
fn rebuild_parts(row: EventRow, prev: Hash) -> Result<EventParts, String> {
    let id: [u8; 16] = row
        .id
        .as_slice()
        .try_into()
        .map_err(|_| format!("its id is {} bytes, not 16", row.id.len()))?;
    let encryption = match (row.key_id, row.nonce) {
        (None, None) => Encryption::Plain,
        (Some(key_id), Some(nonce)) => Encryption::XChaCha20Poly1305 {
            key_id: key_id
                .as_slice()
                .try_into()
                .map_err(|_| "its channel key id is not 16 bytes".to_string())?,
            nonce: nonce
                .as_slice()
                .try_into()
                .map_err(|_| "its nonce is not 24 bytes".to_string())?,
        },
        _ => return Err("it has a channel without a nonce, or the reverse".into()),
    };
    let (hash, len) = match (&row.payload, &row.payload_digest) {
        (Some(payload), _) => (crypto::sha256(&[payload]), payload.len() as u32),
        (None, Some(digest)) if digest.len() == 36 => {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&digest[..32]);
            let mut len = [0u8; 4];
            len.copy_from_slice(&digest[32..]);
            (hash, u32::from_be_bytes(len))
        }
        (None, _) => return Err("its payload is pruned and its digest is missing".into()),
    };
    let meta = match &row.meta {
        None => Vec::new(),
        Some(bytes) => {
            postcard::from_bytes(bytes).map_err(|e| format!("its metadata does not decode: {e}"))?
        }
    };
    let signature = match row.signature {
        None => None,
        Some(s) => Some(
            s.as_slice()
                .try_into()
                .map_err(|_| "its signature is not 64 bytes".to_string())?,
        ),
    };
    let header = EventHeader {
        version: row.form,
        id,
        author: row.feed,
        seq: row.seq,
        prev,
        timestamp_us: row.timestamp_us as u64,
        event_type: row.event_type,
        schema_version: row.schema_version,
        meta,
        payload: PayloadDescriptor {
            encryption,
            hash,
            len,
        },
        signature_scope: if row.form == FORMAT_VERSION_SEALED {
            SignatureScope::Checkpoint
        } else {
            SignatureScope::Event
        },
    };
    Ok((header, signature, row.payload))
}

/// Events selected by `tail` (see [`select_events`]) with `params`,
/// rebuilt.
pub(crate) fn query_events<P: rusqlite::Params>(
    conn: &Connection,
    tail: &str,
    params: P,
) -> Result<Vec<StoredEvent>, LogError> {
    let mut statement = conn.prepare_cached(&select_events(tail))?;
    let rows = statement.query_map(params, event_row)?;
    let mut rebuilder = Rebuilder::new(conn);
    rows.map(|row| rebuilder.event(row?)).collect()
}

/// The event stored at `feed`/`seq`, if any.
pub(crate) fn event_at(
    conn: &Connection,
    feed: &str,
    seq: u64,
) -> Result<Option<StoredEvent>, LogError> {
    Ok(query_events(
        conn,
        "WHERE f.name = ?1 AND e.seq = ?2",
        params![feed, seq as i64],
    )?
    .pop())
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::core::crypto::ChannelKey;
    use crate::core::limits::FORMAT_VERSION_SIGNED;
    use crate::core::verify::{Draft, Entropy, Sealer};
    use crate::store::tree::FeedTree;

    fn store() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::schema::migrate(&mut conn).unwrap();
        conn
    }

    fn entropy(i: u8) -> Entropy {
        let mut id = [i; 16];
        id[6] = 0x70 | (id[6] & 0x0f);
        id[8] = 0x80 | (id[8] & 0x3f);
        Entropy { id, nonce: [i; 24] }
    }

    /// A feed of `format`: its genesis (plaintext), an encrypted event with
    /// metadata and one without.
    fn feed(format: u8) -> Vec<VerifiedEvent> {
        let channel = ChannelKey::new("default", [9; 32]);
        let (mut sealer, genesis) = Sealer::new_feed("a", SigningKey::from_bytes(&[3; 32]))
            .with_format(format)
            .start_feed(b"certificate", entropy(1).id, 1_000);
        let drafts = vec![
            (
                Draft::new(
                    "x.meta",
                    3,
                    vec![("correlation".into(), "c-1".into())],
                    b"{}".to_vec(),
                )
                .unwrap(),
                &channel,
                entropy(2),
            ),
            (
                Draft::new("x.plain", 1, vec![], vec![7; 300]).unwrap(),
                &channel,
                entropy(3),
            ),
        ];
        let mut events = vec![genesis];
        events.extend(sealer.seal_batch(drafts, 2_000));
        events
    }

    /// Stores `events`, payloads pruned where `pruned` says, with their
    /// hashes in the feed's tree.
    fn store_feed(conn: &Connection, events: &[VerifiedEvent], pruned: &[bool]) {
        let mut names = Names::default();
        for (event, pruned) in events.iter().zip(pruned) {
            let payload = if *pruned { None } else { event.payload() };
            insert_row(
                conn,
                &mut names,
                None,
                event.header(),
                event.signature_bytes(),
                payload,
            )
            .unwrap();
        }
        FeedTree::default()
            .append(conn, "a", events.iter().map(|e| *e.hash()))
            .unwrap();
    }

    fn read_all(conn: &Connection) -> Vec<StoredEvent> {
        query_events(conn, "ORDER BY e.arrival", []).unwrap()
    }

    #[test]
    fn every_event_rebuilds_to_its_exact_envelope_in_both_formats() {
        for format in [FORMAT_VERSION_SIGNED, FORMAT_VERSION_SEALED] {
            let conn = store();
            let events = feed(format);
            store_feed(&conn, &events, &[false, false, false]);
            let stored = read_all(&conn);
            assert_eq!(stored.len(), 3);
            for (stored, event) in stored.iter().zip(&events) {
                assert_eq!(stored.envelope, event.bytes(), "format {format}");
                assert_eq!(&stored.hash, event.hash());
                assert_eq!(&stored.header, event.header());
            }
        }
    }

    #[test]
    fn a_pruned_payload_keeps_its_digest_and_the_event_its_hash() {
        let conn = store();
        let events = feed(FORMAT_VERSION_SEALED);
        store_feed(&conn, &events, &[false, true, false]);
        let stored = read_all(&conn);
        assert_eq!(&stored[1].hash, events[1].hash());
        let pruned = crate::store::pruned_envelope(events[1].bytes()).unwrap();
        assert_eq!(stored[1].envelope, pruned);
        assert_eq!(stored[2].envelope, events[2].bytes(), "its successor too");
    }

    #[test]
    fn a_damaged_row_or_tile_is_refused_naming_the_event_never_served() {
        let conn = store();
        let events = feed(FORMAT_VERSION_SEALED);
        store_feed(&conn, &events, &[false, false, false]);
        conn.execute(
            "UPDATE event_rows SET timestamp_us = timestamp_us + 1 WHERE seq = 1",
            [],
        )
        .unwrap();
        let err = query_events(&conn, "ORDER BY e.arrival", [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("stored event a/1"), "{err}");
        assert!(err.contains("the feed's tree holds"), "{err}");
        // The auditor's view: the row still rebuilds, to another hash.
        let mut statement = conn.prepare(&select_events("WHERE e.seq = 1")).unwrap();
        let row = statement.query_row([], event_row).unwrap();
        let rebuilt = Rebuilder::new(&conn).rebuild(row).unwrap().unwrap();
        assert_eq!(rebuilt.tree_hash.as_ref(), Some(events[1].hash()));
        assert_ne!(&rebuilt.event.hash, events[1].hash());

        // A nonce of the wrong length cannot describe an event at all.
        let conn = store();
        store_feed(&conn, &events, &[false, false, false]);
        conn.execute("UPDATE event_rows SET nonce = X'00' WHERE seq = 2", [])
            .unwrap();
        let err = query_events(&conn, "ORDER BY e.arrival", [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nonce is not 24 bytes"), "{err}");
    }
}
