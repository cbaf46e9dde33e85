//! A store written by an older herald (schema version 4: per-event
//! signatures, no Merkle trees) is upgraded in place at start-up: every
//! event stays byte for byte, every feed gets its Merkle tree, the node
//! signs its own feed's checkpoint, and it goes on proclaiming, in format 2.

use std::path::{Path, PathBuf};

use herald::config::NodeConfig;
use herald::core::checkpoint::open_checkpoint;
use herald::core::crypto::Hash;
use herald::core::merkle::{self, MemoryTree};
use herald::store::tree::TileReader;
use herald::store::{Log, read_checkpoint};
use rusqlite::Connection;

fn fixture() -> PathBuf {
    fixture_named("store-v4")
}

fn fixture_named(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn keys() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/keys")
}

/// A copy of the fixture's store and a config for node `council` using the
/// test-only keys it was written with.
fn copy_of_fixture(dir: &Path) -> NodeConfig {
    copy_of(dir, &fixture())
}

fn copy_of(dir: &Path, fixture: &Path) -> NodeConfig {
    let data = dir.join("data/council");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(
        fixture.join("data/council/herald.db"),
        data.join("herald.db"),
    )
    .unwrap();
    let k = keys();
    let text = format!(
        "service = \"council\"\ndata_dir = \"{}\"\nkey = \"{}\"\ncert = \"{}\"\nca = \"{}\"\ndefault_channel = \"default\"\nlisten = \"127.0.0.1:17990\"\n\n[channels]\ndefault = \"{}\"\n",
        data.display(),
        k.join("council.key").display(),
        k.join("council.crt").display(),
        k.join("ca.crt").display(),
        k.join("channel-default.key").display(),
    );
    let path = dir.join("council.toml");
    std::fs::write(&path, text).unwrap();
    NodeConfig::load(&path).unwrap()
}

/// Every stored event as (feed, seq, hash, envelope), in order: read with
/// plain SQL from an old store's `events` table, and through herald from a
/// store in today's compact layout (where each is rebuilt from its row and
/// checked against the hash its feed's tree holds).
fn events(db: &Path) -> Vec<(String, i64, Vec<u8>, Vec<u8>)> {
    let conn = Connection::open(db).unwrap();
    if schema_version(db).parse::<u32>().unwrap() < 6 {
        let mut stmt = conn
            .prepare("SELECT feed, seq, hash, envelope FROM events ORDER BY feed, seq")
            .unwrap();
        return stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    }
    let mut out = Vec::new();
    for head in herald::store::read_heads_from(&conn).unwrap() {
        for e in herald::store::read_feed_from(&conn, &head.feed, 0..=u64::MAX).unwrap() {
            // The hash of the rebuilt header, computed here.
            let (envelope, _) = herald::core::codec::decode_envelope(&e.envelope).unwrap();
            let hash = herald::core::codec::event_hash(&envelope.header).to_vec();
            out.push((head.feed.clone(), e.header.seq as i64, hash, e.envelope));
        }
    }
    out
}

fn schema_version(db: &Path) -> String {
    Connection::open(db)
        .unwrap()
        .query_row(
            "SELECT value FROM herald_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// The RFC 6962 root over a feed's event hashes, computed here from the
/// stored rows alone.
fn independent_root(rows: &[(String, i64, Vec<u8>, Vec<u8>)], feed: &str, size: usize) -> Hash {
    let mut tree = MemoryTree::default();
    for (_, _, hash, _) in rows.iter().filter(|r| r.0 == feed).take(size) {
        tree.push(merkle::leaf_hash(hash)).unwrap();
    }
    merkle::root_at(&mut tree, size as u64).unwrap()
}

#[test]
fn a_schema_4_store_is_upgraded_in_place_and_keeps_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let config = copy_of_fixture(dir.path());
    let db = config.data_dir.join("herald.db");
    assert_eq!(schema_version(&db), "4", "the fixture is an old store");
    let before = events(&db);
    assert_eq!(before.len(), 14, "council 0..=5 and fundraising 0..=7");

    let log = Log::open(&config).expect("the old store opens and is migrated");
    assert_eq!(
        schema_version(&db),
        herald::store::SCHEMA_VERSION.to_string()
    );
    assert_eq!(events(&db), before, "no event changed, none lost or added");

    // The node signed its own feed's checkpoint over all six of its events,
    // and its root is the tree over the stored hashes.
    let conn = Connection::open(&db).unwrap();
    let own = read_checkpoint(&conn, "council")
        .unwrap()
        .expect("own checkpoint");
    assert_eq!(own.size, 6);
    assert_eq!(own.root, independent_root(&before, "council", 6));
    let council_key = log
        .trust()
        .admit_author("council", &cert_der("council"))
        .unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&council_key.public_key).unwrap();
    let opened = open_checkpoint(log.cluster(), own.note.as_bytes(), &key).unwrap();
    assert_eq!((opened.size(), *opened.root()), (6, own.root));

    // Foreign feeds got their trees too (no checkpoint until their author
    // sends one), and proclaiming goes on from where the feed stood.
    let receipt = log.proclaim("motion.carried", b"{}", vec![]).unwrap();
    assert_eq!(receipt.seq, 6);
    let after = events(&db);
    let own = read_checkpoint(&conn, "council").unwrap().unwrap();
    assert_eq!(own.size, 7);
    assert_eq!(own.root, independent_root(&after, "council", 7));
    assert!(read_checkpoint(&conn, "fundraising").unwrap().is_none());
    let mut tiles = TileReader::new(&conn, "fundraising");
    for size in 1..=8 {
        assert_eq!(
            merkle::root_at(&mut tiles, size).unwrap(),
            independent_root(&after, "fundraising", size as usize),
            "fundraising's tree at size {size}"
        );
    }
    log.close();

    // The feed went on in format 2: the old events keep their signatures,
    // the new one has none and its checkpoint vouches for it.
    let formats: Vec<bool> = after
        .iter()
        .filter(|e| e.0 == "council")
        .map(|e| herald::core::codec::is_sealed_envelope(&e.3))
        .collect();
    assert_eq!(formats, [false, false, false, false, false, false, true]);

    // Opening again changes nothing.
    let log = Log::open(&config).unwrap();
    assert_eq!(events(&db), after);
    assert_eq!(read_checkpoint(&conn, "council").unwrap().unwrap().size, 7);
    log.close();

    // An auditor verifies the mixed feed: six signatures and one checkpoint.
    let options = herald::audit::verify::AuditOptions {
        trust: herald::identity::TrustAnchor::load(&config.ca, None).unwrap(),
        channel_keys: Vec::new(),
        progress: false,
    };
    let report = herald::audit::verify::audit_data_dir(&config.data_dir, &options).unwrap();
    assert!(report.valid, "{:?}", report.problems);
    let council = report
        .feeds
        .iter()
        .find(|f| f.service == "council")
        .unwrap();
    assert_eq!((council.verified, council.status), (7, "valid"));
}

fn cert_der(service: &str) -> Vec<u8> {
    let pem = std::fs::read_to_string(keys().join(format!("{service}.crt"))).unwrap();
    pem::parse(pem).unwrap().into_contents()
}

fn page_size(db: &Path) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap()
}

/// Every stored checkpoint as (feed, size, note, cosigned size).
fn checkpoints(db: &Path) -> Vec<(String, u64, String, u64)> {
    let conn = Connection::open(db).unwrap();
    let mut all: Vec<_> = herald::store::read_checkpoints(&conn)
        .unwrap()
        .into_iter()
        .map(|c| (c.feed.clone(), c.size, c.note.clone(), c.cosigned_size))
        .collect();
    all.sort();
    all
}

#[test]
fn a_schema_5_store_moves_to_the_compact_layout_keeping_every_event_tree_and_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = copy_of(dir.path(), &fixture_named("store-v5"));
    let db = config.data_dir.join("herald.db");
    assert_eq!(schema_version(&db), "5", "the fixture is an old store");
    let before = events(&db);
    assert_eq!(before.len(), 15, "council 0..=5 and fundraising 0..=8");
    let checkpoints_before = checkpoints(&db);
    assert_eq!(
        checkpoints_before
            .iter()
            .map(|c| (c.0.as_str(), c.1, c.3))
            .collect::<Vec<_>>(),
        [("council", 6, 0), ("fundraising", 9, 9)],
        "council's own checkpoint, and fundraising's that council cosigned"
    );

    let log = Log::open(&config).expect("the old store opens and is migrated");
    assert_eq!(
        schema_version(&db),
        herald::store::SCHEMA_VERSION.to_string()
    );
    // Every event rebuilds from its compact row to its exact old bytes.
    assert_eq!(events(&db), before, "no event changed, none lost or added");
    assert_eq!(checkpoints(&db), checkpoints_before, "checkpoints kept");
    assert_eq!(page_size(&db), 8192, "vacuumed into the store's page size");
    let conn = Connection::open(&db).unwrap();
    let old_table: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'events'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(old_table, 0, "the old events table is gone");

    // Each feed's tree gives the same roots as the stored hashes did, and
    // proves inclusion in the checkpoint council cosigned.
    let mut tiles = TileReader::new(&conn, "fundraising");
    for size in 1..=9u64 {
        assert_eq!(
            merkle::root_at(&mut tiles, size).unwrap(),
            independent_root(&before, "fundraising", size as usize),
            "fundraising's tree at size {size}"
        );
    }
    let fundraising = read_checkpoint(&conn, "fundraising").unwrap().unwrap();
    let proof = merkle::inclusion_proof(&mut tiles, 3, 9).unwrap();
    let leaf = merkle::leaf_hash(
        &before
            .iter()
            .find(|e| e.0 == "fundraising" && e.1 == 3)
            .unwrap()
            .2,
    );
    merkle::verify_inclusion(&leaf, 3, 9, &proof, &fundraising.root).unwrap();

    // Reads by id and by arrival give the old bytes too.
    let (_, header) = herald::core::codec::decode_envelope(&before[3].3).unwrap();
    let by_id = log.read_by_id(&header.id, 2).unwrap();
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0].envelope, before[3].3);
    let arrivals = log.read_arrivals(0, 100).unwrap();
    assert_eq!(arrivals.len(), 15);

    // The feed goes on where it stood.
    let receipt = log.proclaim("motion.carried", b"{}", vec![]).unwrap();
    assert_eq!(receipt.seq, 6);
    let after = events(&db);
    let own = read_checkpoint(&conn, "council").unwrap().unwrap();
    assert_eq!(own.size, 7);
    assert_eq!(own.root, independent_root(&after, "council", 7));
    log.close();

    let options = herald::audit::verify::AuditOptions {
        trust: herald::identity::TrustAnchor::load(&config.ca, None).unwrap(),
        channel_keys: Vec::new(),
        progress: false,
    };
    let report = herald::audit::verify::audit_data_dir(&config.data_dir, &options).unwrap();
    assert!(report.valid, "{:?}", report.problems);
    let verified: Vec<(&str, u64)> = report
        .feeds
        .iter()
        .map(|f| (f.service.as_str(), f.verified))
        .collect();
    assert_eq!(verified, [("council", 7), ("fundraising", 9)]);
}

#[test]
fn a_store_whose_events_cannot_be_kept_byte_for_byte_is_left_unmigrated() {
    let dir = tempfile::tempdir().unwrap();
    let config = copy_of(dir.path(), &fixture_named("store-v5"));
    let db = config.data_dir.join("herald.db");
    // Damage: the hash column of fundraising/3 no longer matches its
    // envelope, so event 4's `prev` cannot be derived from it.
    let conn = Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE events SET hash = zeroblob(32) WHERE feed = 'fundraising' AND seq = 3",
        [],
    )
    .unwrap();
    drop(conn);
    let before = events(&db);

    let err = match Log::open(&config) {
        Ok(_) => panic!("a damaged store was migrated"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("cannot be moved to the compact layout"),
        "{err}"
    );
    assert!(err.contains("left at version 5"), "{err}");
    assert_eq!(schema_version(&db), "5");
    assert_eq!(events(&db), before, "nothing changed");
}
