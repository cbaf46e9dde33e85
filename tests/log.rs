//! The durable local log through its library API: proclaim, read, heads,
//! restart, ingest with verification, duplicates, forks, locking, bad input.

mod common;

use std::sync::Arc;

use common::Cluster;
use herald::audit::verify::{AuditOptions, audit_data_dir};
use herald::core::verify::{Check, Draft};
use herald::identity::TrustAnchor;
use herald::store::{IngestPolicy, Log, LogError, LogOptions};

fn audit_options(cluster: &Cluster) -> AuditOptions {
    AuditOptions {
        trust: TrustAnchor::load(&cluster.ca(), None).unwrap(),
        channel_keys: Vec::new(),
        progress: false,
    }
}

/// The envelopes of `feed`'s events at `seqs`, as `log` holds them.
fn envelopes(log: &Log, feed: &str, seqs: std::ops::RangeInclusive<u64>) -> Vec<Vec<u8>> {
    let events = log.read(feed, seqs).expect("read the feed");
    events.into_iter().map(|e| e.envelope).collect()
}

#[test]
fn proclaim_read_and_reopen_continue_one_valid_chain() {
    let cluster = Cluster::new(&["a"]);
    let log = cluster.open("a");
    let first = log
        .proclaim("donation.received", br#"{"amount":1}"#, vec![])
        .unwrap();
    assert_eq!(first.seq, 1, "sequence 0 is the genesis event");
    let channel = log.channel(None).unwrap();
    let drafts = (0..10)
        .map(|i| {
            let d =
                Draft::new("donation.received", 1, vec![], format!("{i}").into_bytes()).unwrap();
            (d, Arc::clone(&channel))
        })
        .collect();
    let batch = log.proclaim_batch(drafts).unwrap();
    assert_eq!(
        batch.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (2..=11).collect::<Vec<_>>()
    );
    let events = log.read("a", 0..=100).unwrap();
    assert_eq!(events.len(), 12);
    for pair in events.windows(2) {
        assert_eq!(
            pair[1].header.prev, pair[0].hash,
            "each event links to its predecessor"
        );
    }
    assert_eq!(
        events[11].hash, batch[9].hash,
        "the receipt's hash is the stored hash"
    );
    log.close();

    let log = cluster.open("a");
    let heads = log.heads().unwrap();
    assert_eq!(heads.len(), 1);
    assert_eq!((heads[0].seq, heads[0].hash), (11, batch[9].hash));
    let next = log.proclaim("donation.received", b"{}", vec![]).unwrap();
    assert_eq!(next.seq, 12, "a reopened log continues the chain");
    log.close();

    let report = audit_data_dir(&cluster.config("a").data_dir, &audit_options(&cluster)).unwrap();
    assert!(report.valid, "{:?}", report.problems);
    assert_eq!(report.feeds[0].events, 13);
}

#[test]
fn a_second_process_cannot_open_the_same_store() {
    let cluster = Cluster::new(&["a"]);
    let _log = cluster.open("a");
    match Log::open(&cluster.config("a")) {
        Err(LogError::Locked { .. }) => {}
        Err(other) => panic!("expected a lock error, got {other}"),
        Ok(_) => panic!("two writers on one feed would fork it"),
    }
}

#[test]
fn bad_drafts_are_refused_and_change_nothing() {
    let cluster = Cluster::new(&["a"]);
    let log = cluster.open("a");
    let too_big = vec![0u8; herald::core::limits::PAYLOAD_PLAINTEXT_BYTES_MAX + 1];
    assert!(matches!(
        log.proclaim("x.y", &too_big, vec![]),
        Err(LogError::Draft(_))
    ));
    assert!(matches!(
        log.proclaim("herald.genesis", b"{}", vec![]),
        Err(LogError::Draft(_))
    ));
    assert!(matches!(
        log.proclaim("has space", b"{}", vec![]),
        Err(LogError::Draft(_))
    ));
    let dup_meta = vec![
        ("k".to_string(), "1".to_string()),
        ("k".to_string(), "2".to_string()),
    ];
    assert!(matches!(
        log.proclaim("x.y", b"{}", dup_meta),
        Err(LogError::Draft(_))
    ));
    assert!(matches!(
        log.channel(Some("finance")),
        Err(LogError::UnknownChannel { .. })
    ));
    assert_eq!(
        log.heads().unwrap()[0].seq,
        0,
        "only the genesis event exists"
    );
}

/// Format 1: each event's own signature proves it, so a second validly
/// signed event at a position proves a fork.
#[test]
fn ingest_verifies_applies_once_and_keeps_fork_evidence() {
    let cluster = Cluster::new(&["a", "b"]);
    let a = cluster.open_signed("a");
    for i in 0..5 {
        a.proclaim("volunteer.signed_up", format!("{i}").as_bytes(), vec![])
            .unwrap();
    }
    let a_events = envelopes(&a, "a", 0..=10);
    a.close();

    let b = cluster.open("b");
    let report = b.ingest(a_events.clone()).unwrap();
    assert_eq!(
        (report.applied, report.duplicates, report.rejected.clone()),
        (6, 0, None)
    );
    let again = b.ingest(a_events.clone()).unwrap();
    assert_eq!(
        (again.applied, again.duplicates),
        (0, 6),
        "applied exactly once"
    );

    // A tampered event is rejected and nothing after it is applied.
    let mut tampered = a_events[3].clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let heads_before = b.heads().unwrap();
    let r = b.ingest(vec![tampered]).unwrap();
    assert_eq!(r.applied, 0);
    assert_eq!(
        b.heads().unwrap(),
        heads_before,
        "a rejected event changes nothing"
    );

    // Fork: copy a's store, rewind the copy to head 5, and let both
    // proclaim a different sequence 6 with the same key.
    let a = cluster.open_signed("a");
    let six = a.proclaim("volunteer.signed_up", b"first", vec![]).unwrap();
    let six_bytes = a.read("a", 6..=6).unwrap().remove(0).envelope;
    a.close();
    let fork_dir = cluster.path().join("data/a-fork");
    copy_dir(&cluster.config("a").data_dir, &fork_dir);
    let mut fork_config = cluster.config("a");
    fork_config.data_dir = fork_dir;
    // Rewind the copy to head 5 so it re-proclaims sequence 6 differently.
    rewind_to(&fork_config.data_dir, "a", 5);
    fork_config.event_format = herald::core::limits::FORMAT_VERSION_SIGNED;
    let forked = Log::open(&fork_config).unwrap();
    let other_six = forked
        .proclaim("volunteer.signed_up", b"second", vec![])
        .unwrap();
    assert_eq!(other_six.seq, six.seq);
    assert_ne!(other_six.hash, six.hash);
    let other_bytes = forked.read("a", 6..=6).unwrap().remove(0).envelope;
    drop(forked);

    assert_eq!(b.ingest(vec![six_bytes]).unwrap().applied, 1);
    let fork = b.ingest(vec![other_bytes]).unwrap();
    assert_eq!(fork.forks, 1);
    // A fork is the author's doing: kept as evidence, not held against
    // whoever delivered it.
    assert!(fork.rejected.is_none(), "{:?}", fork.rejected);
    assert_eq!(fork.new_forks, vec![("a".to_string(), 6)]);
    let evidence = b.forks().unwrap();
    assert_eq!(evidence.len(), 1);
    assert_eq!((evidence[0].feed.as_str(), evidence[0].seq), ("a", 6));
    let head_a = b
        .heads()
        .unwrap()
        .into_iter()
        .find(|h| h.feed == "a")
        .unwrap();
    assert_eq!(head_a.status, "forked");
    b.close();

    // The audit of b's store reports the fork.
    let report = audit_data_dir(&cluster.config("b").data_dir, &audit_options(&cluster)).unwrap();
    assert!(!report.valid);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.check == "fork" && p.seq == Some(6))
    );
    let feed_a = report.feeds.iter().find(|f| f.service == "a").unwrap();
    assert_eq!(feed_a.status, "forked");
}

#[test]
fn open_with_a_certificate_from_another_ca_fails_clearly() {
    let cluster = Cluster::new(&["a"]);
    let other = Cluster::new(&["a"]);
    let mut config = cluster.config("a");
    config.ca = other.ca();
    let err = match Log::open(&config) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a certificate from another CA must not open"),
    };
    assert!(!err.is_empty());
    assert!(
        !cluster.config("a").data_dir.join("herald.db").exists(),
        "nothing written"
    );
}

#[test]
fn log_options_refuse_unknown_default_channel_at_proclaim() {
    let cluster = Cluster::new(&["a"]);
    let mut options = LogOptions::from_config(&cluster.config("a")).unwrap();
    options.default_channel = "missing".into();
    let log = Log::open_with(options).unwrap();
    assert!(matches!(
        log.proclaim("x.y", b"{}", vec![]),
        Err(LogError::UnknownChannel { .. })
    ));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Test-only surgery: drop a feed's events above `head` and move its head back.
fn rewind_to(data_dir: &std::path::Path, feed: &str, head: i64) {
    let conn = rusqlite::Connection::open(data_dir.join("herald.db")).unwrap();
    conn.execute(
        "DELETE FROM event_rows WHERE feed = (SELECT id FROM feed_names WHERE name = ?1) AND seq > ?2",
        rusqlite::params![feed, head],
    )
    .unwrap();
    let kept = herald::store::read_feed_from(&conn, feed, head as u64..=head as u64).unwrap();
    let (hash, ts) = (kept[0].hash.to_vec(), kept[0].header.timestamp_us as i64);
    conn.execute(
        "UPDATE feeds SET head_seq = ?2, head_hash = ?3, last_timestamp_us = ?4 WHERE feed = ?1",
        rusqlite::params![feed, head, hash, ts],
    )
    .unwrap();
}

#[test]
fn a_failed_commit_loses_nothing_acknowledged_and_never_forks_the_feed() {
    let cluster = Cluster::new(&["a"]);
    let log = cluster.open("a");
    let before = log.proclaim("x.y", b"1", vec![]).unwrap();
    // Another connection holds SQLite's write lock past the writer's busy
    // timeout, so the next commits fail.
    let db = cluster.config("a").data_dir.join("herald.db");
    let blocker = rusqlite::Connection::open(&db).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let channel = log.channel(None).unwrap();
    let pending: Vec<_> = (0..3)
        .map(|i| {
            let d = Draft::new("x.y", 1, vec![], vec![i]).unwrap();
            log.submit(vec![(d, Arc::clone(&channel))]).unwrap()
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    blocker.execute_batch("ROLLBACK").unwrap();
    let outcomes: Vec<_> = pending.into_iter().map(|p| p.wait()).collect();
    assert!(outcomes[0].is_err(), "the blocked commit reports failure");
    // Whatever failed was not stored; whatever succeeded is; and the chain
    // continues from the durable head without a gap or a second event at
    // any sequence number.
    let after = log.proclaim("x.y", b"after", vec![]).unwrap();
    let events = log.read("a", 0..=after.seq).unwrap();
    assert_eq!(events.len() as u64, after.seq + 1, "no gaps");
    assert_eq!(events[1].hash, before.hash);
    for pair in events.windows(2) {
        assert_eq!(pair[1].header.prev, pair[0].hash);
    }
    for outcome in outcomes.into_iter().flatten() {
        for r in outcome {
            assert_eq!(
                events[r.seq as usize].hash, r.hash,
                "acknowledged means stored"
            );
        }
    }
    log.close();
    let report = audit_data_dir(&cluster.config("a").data_dir, &audit_options(&cluster)).unwrap();
    assert!(report.valid, "{:?}", report.problems);
}

/// Every envelope of `feed` as the store holds it, read with plain SQLite.
fn stored_envelopes(data_dir: &std::path::Path, feed: &str) -> Vec<Vec<u8>> {
    let conn = rusqlite::Connection::open(data_dir.join("herald.db")).unwrap();
    herald::store::read_feed_from(&conn, feed, 0..=u64::MAX)
        .unwrap()
        .into_iter()
        .map(|e| e.envelope)
        .collect()
}

#[test]
fn replication_reads_of_recent_own_events_match_the_store_byte_for_byte() {
    let cluster = Cluster::new(&["a"]);
    let data_dir = cluster.config("a").data_dir;
    let log = cluster.open("a");
    let channel = log.channel(None).unwrap();
    for batch in 0..3 {
        let drafts = (0..100)
            .map(|i| {
                let payload = format!("{batch}-{i}").into_bytes();
                let d = Draft::new("donation.received", 1, vec![], payload).unwrap();
                (d, Arc::clone(&channel))
            })
            .collect();
        log.proclaim_batch(drafts).unwrap();
    }
    log.proclaim("donation.received", b"last", vec![]).unwrap();
    let stored = stored_envelopes(&data_dir, "a");
    assert_eq!(stored.len(), 302, "genesis, three batches of 100, one more");

    // Everything proclaimed since the log opened is served from memory,
    // with exactly the stored bytes; whatever the read spans.
    let recent = log.recent_envelopes("a", 1, 301).expect("held in memory");
    assert_eq!(recent, stored[1..]);
    assert_eq!(
        log.recent_envelopes("a", 150, 160).unwrap(),
        stored[150..=160]
    );
    assert_eq!(log.recent_envelopes("a", 301, 999).unwrap(), stored[301..]);
    // The genesis was committed while opening, so it comes from the store.
    assert_eq!(log.recent_envelopes("a", 0, 5), None);
    assert_eq!(log.read_envelopes("a", 0, 5).unwrap(), stored[..=5]);
    // Other feeds and ranges beyond the head are never answered from memory.
    assert_eq!(log.recent_envelopes("b", 1, 5), None);
    assert_eq!(log.recent_envelopes("a", 302, 400), None);
    assert!(log.read_envelopes("a", 302, 400).unwrap().is_empty());
    log.close();

    // Reopened: nothing in memory yet, the store answers the same.
    let log = cluster.open("a");
    assert_eq!(log.recent_envelopes("a", 1, 301), None);
    assert_eq!(log.read_envelopes("a", 1, 301).unwrap(), stored[1..]);
    let next = log.proclaim("donation.received", b"after", vec![]).unwrap();
    assert_eq!(next.seq, 302);
    let stored = stored_envelopes(&data_dir, "a");
    assert_eq!(log.recent_envelopes("a", 302, 302).unwrap(), stored[302..]);
    log.close();
}

/// Format 2: events carry no signature; a seal (the author's checkpoint
/// and a consistency proof) authenticates a run. Without a seal, or with
/// one of another run, nothing is applied; with it, the run is applied
/// once and the receiver holds (and cosigns) the author's checkpoint.
#[test]
fn sealed_events_are_applied_with_their_seal_and_refused_without() {
    let cluster = Cluster::new(&["a", "b"]);
    let a = cluster.open("a");
    for i in 0..5 {
        a.proclaim("volunteer.signed_up", format!("{i}").as_bytes(), vec![])
            .unwrap();
    }
    let events = envelopes(&a, "a", 0..=5);
    assert!(
        events
            .iter()
            .all(|e| herald::core::codec::is_sealed_envelope(e))
    );
    // A seal for the first three events (a consistency proof to the
    // checkpoint at 6) and one for all six.
    let first_three = a.seal_for("a", 3).unwrap().expect("a holds its checkpoint");
    let all = a.seal_for("a", 6).unwrap().expect("a holds its checkpoint");
    assert!(!first_three.proof.is_empty() && all.proof.is_empty());
    a.close();

    let b = cluster.open("b");
    let unsealed = b.ingest(events.clone()).unwrap();
    assert_eq!(unsealed.applied, 0);
    assert_eq!(unsealed.rejected.expect("refused").check, Check::Signature);
    // A seal that covers less than the events sent vouches for none of
    // those beyond it.
    let partial = b
        .ingest_sealed(
            events.clone(),
            vec![first_three.clone()],
            IngestPolicy::default(),
        )
        .unwrap();
    assert_eq!(partial.applied, 3, "{:?}", partial.rejected);
    assert_eq!(partial.rejected.expect("the rest refused").seq, Some(3));
    assert!(
        b.latest_checkpoint("a").is_none(),
        "no checkpoint ends at 3"
    );
    let rest = b
        .ingest_sealed(
            events[3..].to_vec(),
            vec![all.clone()],
            IngestPolicy::default(),
        )
        .unwrap();
    assert_eq!((rest.applied, rest.rejected), (3, None));
    assert_eq!(b.latest_checkpoint("a").map(|c| c.size), Some(6));
    let again = b
        .ingest_sealed(events.clone(), vec![all], IngestPolicy::default())
        .unwrap();
    assert_eq!((again.applied, again.duplicates), (0, 6));
    b.close();
}

/// A fresh peer catching up receives a feed's genesis and its certificate
/// renewal in one ingest. The certificate it then keeps for the feed must be
/// the renewed one (the feed's row is created by the genesis and updated by
/// the renewal after it), or once the first certificate has ended the peer,
/// restarted, refuses the feed's next events.
#[test]
fn a_genesis_and_its_renewal_ingested_together_leave_the_renewed_certificate_in_force() {
    let cluster = Cluster::new(&["a", "b"]);
    let keys = cluster.keys();
    let now_us = herald::clock::now_us();
    // X.509 keeps whole seconds; the first certificate ends a few seconds
    // from now, long enough for a's first events.
    let first_ends_us = (now_us / 1_000_000 + 5) * 1_000_000;
    herald::identity::issue_node_with_validity(
        &keys,
        "a",
        now_us - 3_600_000_000,
        first_ends_us,
        true,
    )
    .expect("short-lived certificate for a");
    let a = cluster.open("a");
    for i in 0..2 {
        a.proclaim("note", format!("before renewal {i}").as_bytes(), vec![])
            .expect("a proclaims while its first certificate is valid");
    }
    a.close();
    herald::identity::renew_node(&keys, "a", 30).expect("renew a's certificate");
    let a = cluster.open("a");
    let renewal = a.read("a", 3..=3).expect("read a's renewal");
    assert_eq!(
        renewal.first().map(|e| e.header.event_type.as_str()),
        Some(herald::core::event::CERTIFICATE_EVENT_TYPE),
        "reopened with the renewed certificate, a appends the renewal at 3"
    );
    let wait_us = (first_ends_us + 1_000_000).saturating_sub(herald::clock::now_us());
    std::thread::sleep(std::time::Duration::from_micros(wait_us));
    a.proclaim("note", b"after the first certificate ended", vec![])
        .expect("a proclaims under its renewed certificate");
    let caught_up = envelopes(&a, "a", 0..=4);
    let seal = a.seal_for("a", 5).unwrap().expect("a's checkpoint at 5");

    let b = cluster.open("b");
    let report = b
        .ingest_sealed(caught_up, vec![seal], IngestPolicy::default())
        .unwrap();
    assert_eq!((report.applied, report.rejected), (5, None));
    b.close();

    // Restarted, b resumes a's feed from its store alone.
    let later = a.proclaim("note", b"later", vec![]).unwrap();
    let next = envelopes(&a, "a", later.seq..=later.seq);
    let seal = a
        .seal_for("a", later.seq + 1)
        .unwrap()
        .expect("a's checkpoint");
    a.close();
    let b = cluster.open("b");
    let report = b
        .ingest_sealed(next, vec![seal], IngestPolicy::default())
        .unwrap();
    assert_eq!(
        (report.applied, report.rejected),
        (1, None),
        "b checks a's event against the renewed certificate"
    );
    b.close();
}
