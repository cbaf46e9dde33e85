//! The SQLite schema and its explicit, versioned migrations.
//!
//! An operator or auditor can open `herald.db` with any SQLite tool: every
//! event is stored as its exact signed envelope bytes next to the columns
//! that index it.

use rusqlite::{Connection, OptionalExtension};

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 7;

/// Migrations, in order: `MIGRATIONS[i]` moves a store from version `i` to
/// `i + 1`. Never edit a released migration; append a new one.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the first schema.
    r#"
    CREATE TABLE herald_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    -- Every event this node holds; rowid `arrival` is the node-local order in
    -- which it learned them (subscriptions and replay follow it).
    CREATE TABLE events (
        arrival      INTEGER PRIMARY KEY,
        feed         TEXT    NOT NULL,
        seq          INTEGER NOT NULL,
        hash         BLOB    NOT NULL,
        id           BLOB    NOT NULL,
        event_type   TEXT    NOT NULL,
        timestamp_us INTEGER NOT NULL,
        envelope     BLOB    NOT NULL,
        UNIQUE (feed, seq)
    );
    CREATE INDEX events_by_id ON events (id);
    -- One row per feed: its head, so start-up never replays the log.
    CREATE TABLE feeds (
        feed              TEXT PRIMARY KEY,
        head_seq          INTEGER NOT NULL,
        head_hash         BLOB    NOT NULL,
        last_timestamp_us INTEGER NOT NULL,
        genesis_cert      BLOB    NOT NULL,
        status            TEXT    NOT NULL DEFAULT 'active'
    );
    -- Proof that a feed forked: a second validly signed event at a sequence
    -- number the store already holds with another hash.
    CREATE TABLE forks (
        id                   INTEGER PRIMARY KEY,
        feed                 TEXT    NOT NULL,
        seq                  INTEGER NOT NULL,
        stored_hash          BLOB    NOT NULL,
        conflicting_hash     BLOB    NOT NULL,
        conflicting_envelope BLOB    NOT NULL,
        detected_at_us       INTEGER NOT NULL,
        UNIQUE (feed, seq, conflicting_hash)
    );
    "#,
    // 1 -> 2: replication and subscriptions.
    r#"
    -- The outbox's delivery cursors: per peer and feed, the highest sequence
    -- number the peer acknowledged holding. Advanced only on acknowledgement.
    CREATE TABLE peer_cursors (
        peer            TEXT    NOT NULL,
        feed            TEXT    NOT NULL,
        acked_seq       INTEGER NOT NULL,
        acked_at_us     INTEGER NOT NULL,
        PRIMARY KEY (peer, feed)
    );
    -- Durable subscription cursors: per consumer, the last arrival handled.
    CREATE TABLE consumer_cursors (
        consumer        TEXT PRIMARY KEY,
        pattern         TEXT    NOT NULL,
        last_arrival    INTEGER NOT NULL,
        updated_at_us   INTEGER NOT NULL
    );
    "#,
    // 2 -> 3: application state, the inbox and sagas (the outbox API).
    r#"
    -- Application state, written only inside `transact` together with the
    -- events that proclaim its changes.
    CREATE TABLE app_state (
        tbl           TEXT    NOT NULL,
        key           TEXT    NOT NULL,
        value         BLOB    NOT NULL,
        updated_at_us INTEGER NOT NULL,
        PRIMARY KEY (tbl, key)
    ) WITHOUT ROWID;
    -- Events a consumer has handled, recorded in the same transaction as
    -- the handler's effects: at-least-once delivery, exactly-once effects.
    CREATE TABLE inbox (
        consumer      TEXT    NOT NULL,
        event_id      BLOB    NOT NULL,
        handled_at_us INTEGER NOT NULL,
        PRIMARY KEY (consumer, event_id)
    ) WITHOUT ROWID;
    -- Sagas this node orchestrates: the state machine, serialised as JSON,
    -- next to the columns `herald saga list` filters on.
    CREATE TABLE sagas (
        id            BLOB    PRIMARY KEY,
        saga_type     TEXT    NOT NULL,
        status        TEXT    NOT NULL,
        initiator     TEXT    NOT NULL,
        started_at_us INTEGER NOT NULL,
        deadline_us   INTEGER NOT NULL,
        updated_at_us INTEGER NOT NULL,
        state         TEXT    NOT NULL
    );
    CREATE INDEX sagas_by_status ON sagas (status, started_at_us);
    -- Saga commands this node ran as a participant, and how they ended, so
    -- a compensation knows whether there is anything to undo.
    CREATE TABLE saga_commands (
        saga_id       BLOB    NOT NULL,
        step          INTEGER NOT NULL,
        kind          TEXT    NOT NULL,
        attempt       INTEGER NOT NULL,
        command_id    BLOB    NOT NULL,
        outcome       TEXT    NOT NULL,
        handled_at_us INTEGER NOT NULL,
        PRIMARY KEY (saga_id, step, kind, attempt)
    ) WITHOUT ROWID;
    "#,
    // 3 -> 4: fork evidence received from peers may concern a point this
    // node has not reached (or a third version): the row then carries both
    // sides. NULL: the first side is the stored event at (feed, seq).
    r#"
    ALTER TABLE forks ADD COLUMN stored_envelope BLOB;
    "#,
    // 4 -> 5: Merkle feeds. Every feed's RFC 6962 tree (built from the
    // stored event hashes by `tree::rebuild_all` in the same transaction),
    // its latest checkpoint with every cosignature held, and evidence of
    // authors that signed inconsistent checkpoints.
    r#"
    -- Tiles of 16 hashes: level k holds the nodes of height 4k (level 0:
    -- the leaf hashes), tile idx its entries [16 idx, 16 idx + 16).
    CREATE TABLE tree_tiles (
        feed   TEXT    NOT NULL,
        level  INTEGER NOT NULL,
        idx    INTEGER NOT NULL,
        hashes BLOB    NOT NULL,
        PRIMARY KEY (feed, level, idx)
    ) WITHOUT ROWID;
    -- The latest checkpoint of each feed this node signed (its own) or
    -- verified against its copy of the tree (others'), as a signed note:
    -- the author's signature, then every cosignature this node holds.
    CREATE TABLE checkpoints (
        feed          TEXT    PRIMARY KEY,
        size          INTEGER NOT NULL,
        root          BLOB    NOT NULL,
        note          BLOB    NOT NULL,
        -- The largest size this node cosigned (0: none).
        cosigned_size INTEGER NOT NULL DEFAULT 0
    );
    -- Two checkpoints signed by one author that no consistency proof can
    -- join: the first of size <= the second's, the root of the second's
    -- tree at the first's size and the consistency proof of that root.
    CREATE TABLE equivocations (
        id             INTEGER PRIMARY KEY,
        feed           TEXT    NOT NULL,
        first_size     INTEGER NOT NULL,
        first_note     BLOB    NOT NULL,
        second_note    BLOB    NOT NULL,
        prefix_root    BLOB    NOT NULL,
        proof          BLOB    NOT NULL,
        detected_at_us INTEGER NOT NULL,
        UNIQUE (feed, first_note, second_note)
    );
    "#,
    // 5 -> 6: compact events (`store::rows`). The header's fields in
    // columns instead of its bytes; names interned; `prev` and the event
    // hash kept once, in the feed's tree (level-0 tiles now hold event
    // hashes, not leaf hashes). `after_migration` rebuilds the trees, copies
    // every event (checking each rebuilds byte for byte) and drops `events`.
    r#"
    CREATE TABLE feed_names (
        id   INTEGER PRIMARY KEY,
        name TEXT    NOT NULL UNIQUE
    );
    CREATE TABLE type_names (
        id   INTEGER PRIMARY KEY,
        name TEXT    NOT NULL UNIQUE
    );
    CREATE TABLE channel_keys (
        id     INTEGER PRIMARY KEY,
        key_id BLOB    NOT NULL UNIQUE
    );
    -- Every event this node holds; rowid `arrival` is the node-local order
    -- in which it learned them (subscriptions and replay follow it).
    CREATE TABLE event_rows (
        arrival        INTEGER PRIMARY KEY,
        feed           INTEGER NOT NULL,  -- feed_names.id
        seq            INTEGER NOT NULL,
        id             BLOB    NOT NULL,  -- UUID v7, 16 bytes
        type           INTEGER NOT NULL,  -- type_names.id
        timestamp_us   INTEGER NOT NULL,
        form           INTEGER NOT NULL,  -- header version: 1 signed, 2 sealed
        schema_version INTEGER NOT NULL,
        meta           BLOB,              -- postcard of the pairs; NULL: none
        channel        INTEGER,           -- channel_keys.id; NULL: plaintext
        nonce          BLOB,              -- 24 bytes; NULL: plaintext
        payload        BLOB,              -- NULL: pruned
        payload_digest BLOB,              -- hash ‖ u32 BE length, when pruned
        signature      BLOB,              -- format 1 only
        UNIQUE (feed, seq)
    );
    CREATE INDEX event_rows_by_id ON event_rows (id);
    "#,
    // 6 -> 7: key transitions (`store::transitions`).
    r#"
    -- Every key transition of a feed this node holds: the certificate in
    -- force before it, the one after, and the old key's checkpoint of the
    -- `seq` events before it that the transition carries.
    CREATE TABLE key_transitions (
        feed       TEXT    NOT NULL,
        seq        INTEGER NOT NULL,
        old_cert   BLOB    NOT NULL,
        new_cert   BLOB    NOT NULL,
        checkpoint BLOB    NOT NULL,
        PRIMARY KEY (feed, seq)
    ) WITHOUT ROWID;
    "#,
];

/// Work a migration needs beyond SQL, run in its transaction after it.
fn after_migration(to_version: u32, tx: &Connection) -> Result<(), SchemaError> {
    let data = |e: super::LogError| SchemaError::Data(e.to_string());
    match to_version {
        5 => super::tree::rebuild_all(tx).map_err(data)?,
        6 => {
            super::tree::rebuild_all(tx).map_err(data)?;
            compact_events(tx)?;
            tx.execute_batch("DROP TABLE events;")?;
        }
        _ => {}
    }
    Ok(())
}

/// Copies every event of the old `events` table into `event_rows`, keeping
/// its arrival, and checks that each rebuilds to its exact stored bytes: an
/// event the compact layout cannot keep byte for byte (a damaged row, a
/// broken chain) stops the migration and leaves the store as it was.
fn compact_events(tx: &Connection) -> Result<(), SchemaError> {
    let mut names = super::rows::Names::default();
    let mut statement = tx.prepare("SELECT arrival, envelope FROM events ORDER BY arrival")?;
    let mut rows = statement.query([])?;
    let mut read_back = tx.prepare(&super::rows::select_events("WHERE e.arrival = ?1"))?;
    let mut rebuilder = super::rows::Rebuilder::new(tx);
    while let Some(row) = rows.next()? {
        let arrival: i64 = row.get(0)?;
        let envelope: Vec<u8> = row.get(1)?;
        let cannot = |why: String| {
            SchemaError::Data(format!(
                "event at arrival {arrival} cannot be moved to the compact layout: {why}; the store is left at version 5"
            ))
        };
        let (parts, header) =
            crate::core::codec::decode_envelope(&envelope).map_err(|e| cannot(e.to_string()))?;
        super::rows::insert_row(
            tx,
            &mut names,
            Some(arrival),
            &header,
            parts.signature.as_ref(),
            parts.payload.as_deref(),
        )?;
        let stored = read_back.query_row([arrival], super::rows::event_row)?;
        let rebuilt = rebuilder.event(stored).map_err(|e| cannot(e.to_string()))?;
        if rebuilt.envelope != envelope {
            return Err(cannot("it does not rebuild to its stored bytes".into()));
        }
    }
    Ok(())
}

/// Errors bringing a store's schema up to date.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "store schema version {found} is newer than this herald supports ({SCHEMA_VERSION}); upgrade herald"
    )]
    TooNew { found: u32 },
    #[error("store schema: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store migration: {0}")]
    Data(String),
}

/// How long a statement waits for another connection's lock before failing.
/// The writer is the only writer (the lock file sees to that), so waiting
/// longer would only hide a stuck external tool holding the database.
pub const STORE_BUSY_TIMEOUT_MS: u64 = 1000;

/// The store's page size. Event rows are about 350 bytes: a 4 KiB page
/// leaves a tenth of itself unused at every page's end, an 8 KiB page half
/// that, and the tiles of 16 hashes fit 15 to a page instead of 7.
pub const STORE_PAGE_BYTES: u32 = 8192;

/// Sets the durability pragmas every connection needs. The page size takes
/// effect only on a new, empty database (an old store gets it when its
/// migration to the compact layout vacuums it).
pub fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "page_size", STORE_PAGE_BYTES)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is durable when it returns (fsync of the WAL).
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_millis(STORE_BUSY_TIMEOUT_MS))?;
    Ok(())
}

/// The schema version of an open store (0 for an empty database).
pub fn version(conn: &Connection) -> rusqlite::Result<u32> {
    let has_meta: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'herald_meta'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if has_meta.is_none() {
        return Ok(0);
    }
    let v: Option<String> = conn
        .query_row(
            "SELECT value FROM herald_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Applies every migration the store lacks, each in its own transaction.
/// A store that held events in the old layout is then vacuumed, so the
/// file shrinks to what the compact rows need.
pub fn migrate(conn: &mut Connection) -> Result<(), SchemaError> {
    let current = version(conn)?;
    migrate_from(conn, current)?;
    if (1..6).contains(&current) {
        // A page size changes only outside WAL mode, by a vacuum.
        conn.pragma_update(None, "journal_mode", "DELETE")?;
        conn.pragma_update(None, "page_size", STORE_PAGE_BYTES)?;
        conn.execute_batch("VACUUM;")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    Ok(())
}

fn migrate_from(conn: &mut Connection, current: u32) -> Result<(), SchemaError> {
    if current > SCHEMA_VERSION {
        return Err(SchemaError::TooNew { found: current });
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        after_migration(from as u32 + 1, &tx)?;
        tx.execute(
            "INSERT OR REPLACE INTO herald_meta (key, value) VALUES ('schema_version', ?1)",
            [(from as u32 + 1).to_string()],
        )?;
        tx.commit()?;
    }
    Ok(())
}
