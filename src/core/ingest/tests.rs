//! The ingest rules driven through an in-memory store, deterministically.

use std::collections::HashMap;

use ed25519_dalek::SigningKey;

use super::*;
use crate::core::cert::{AuthorCert, CertError};
use crate::core::checkpoint::{CheckpointSigner, cluster_id};
use crate::core::crypto::ChannelKey;
use crate::core::limits::{FORMAT_VERSION_SEALED, FORMAT_VERSION_SIGNED};
use crate::core::merkle::MemoryTree;
use crate::core::verify::{Draft, Entropy, Sealer, leaf_of};

/// Admits any certificate bytes as the key of the named service.
struct Admit;

fn key_of(service: &str) -> SigningKey {
    let seed = service
        .bytes()
        .fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    SigningKey::from_bytes(&[seed; 32])
}

impl AuthorAdmission for Admit {
    fn admit_author(&self, service: &str, cert_der: &[u8]) -> Result<AuthorCert, CertError> {
        Ok(AuthorCert {
            service: service.into(),
            public_key: key_of(service).verifying_key().to_bytes(),
            not_before_us: 0,
            not_after_us: u64::MAX,
            serial: vec![1],
            der: cert_der.to_vec(),
            revoked_from: None,
        })
    }
}

/// A store in memory: each feed's events in order, and fork points.
#[derive(Default)]
struct Memory {
    feeds: HashMap<String, Vec<DecodedEvent>>,
    forks: HashMap<String, u64>,
}

/// The in-memory store never fails.
#[derive(Debug)]
enum Never {}

impl FeedState for Memory {
    type Error = Never;

    fn stored_hash(&mut self, feed: &str, seq: u64) -> Result<Option<Hash>, Never> {
        Ok(self.event(feed, seq).map(|e| *e.hash()))
    }

    fn stored_event(&mut self, feed: &str, seq: u64) -> Result<DecodedEvent, Never> {
        Ok(self
            .event(feed, seq)
            .cloned()
            .expect("asked only for held events"))
    }

    fn head(&mut self, feed: &str) -> Result<Option<StoredHead>, Never> {
        let Some(events) = self.feeds.get(feed) else {
            return Ok(None);
        };
        let (first, last) = (&events[0], &events[events.len() - 1]);
        Ok(Some(StoredHead {
            seq: last.header().seq,
            hash: *last.hash(),
            last_timestamp_us: last.header().timestamp_us,
            genesis_cert: first.payload().unwrap_or_default().to_vec(),
        }))
    }

    fn fork_seq(&mut self, feed: &str) -> Result<Option<u64>, Never> {
        Ok(self.forks.get(feed).copied())
    }

    fn frontier(&mut self, feed: &str, size: u64) -> Result<Frontier, Never> {
        let mut frontier = Frontier::new();
        let events = self.feeds.get(feed).map_or(&[][..], Vec::as_slice);
        frontier
            .extend(events[..size as usize].iter().map(|e| leaf_of(e.hash())))
            .expect("small trees");
        Ok(frontier)
    }
}

impl Memory {
    fn event(&self, feed: &str, seq: u64) -> Option<&DecodedEvent> {
        self.feeds.get(feed)?.get(seq as usize)
    }

    /// Holds `events` (a feed's first ones, in order) as already stored.
    fn hold(&mut self, events: &[DecodedEvent]) {
        for e in events {
            let feed = self.feeds.entry(e.header().author.clone()).or_default();
            assert_eq!(feed.len() as u64, e.header().seq, "held in order");
            feed.push(e.clone());
        }
    }

    /// Writes what an ingest decided, as the store does.
    fn write(&mut self, ingested: &Ingested) {
        for decision in &ingested.decisions {
            match decision {
                Decision::Applied(e) => self.hold(&[decode(e.bytes())]),
                Decision::Fork { conflicting, .. } => {
                    let h = conflicting.header();
                    let at = self.forks.entry(h.author.clone()).or_insert(h.seq);
                    *at = (*at).min(h.seq);
                }
                _ => {}
            }
        }
    }
}

fn decode(bytes: &[u8]) -> DecodedEvent {
    DecodedEvent::decode(bytes.to_vec()).expect("sealed bytes decode")
}

fn entropy(i: u64) -> Entropy {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&i.to_be_bytes());
    id[6] = 0x70;
    id[8] = 0x80;
    Entropy {
        id,
        nonce: [i as u8; 24],
    }
}

/// Appends `n` events to `sealer`'s feed; `tag` tells branches apart.
fn extend(sealer: &mut Sealer, n: u64, tag: u8) -> Vec<DecodedEvent> {
    let channel = ChannelKey::new("default", [3; 32]);
    (0..n)
        .flat_map(|_| {
            let seq = sealer.next_seq();
            let draft = Draft::new("donation.received", 1, vec![], vec![tag; 20]).expect("draft");
            sealer.seal_batch(
                vec![(draft, &channel, entropy(seq * 256 + u64::from(tag)))],
                1_000 + seq,
            )
        })
        .map(|e| decode(e.bytes()))
        .collect()
}

/// A feed of `n` events (genesis included) by `author` in `format`, and
/// its sealer to write more.
fn feed(author: &str, n: u64, format: u8) -> (Sealer, Vec<DecodedEvent>) {
    let (mut sealer, genesis) = Sealer::new_feed(author, key_of(author))
        .with_format(format)
        .start_feed(format!("cert of {author}").as_bytes(), entropy(0).id, 1_000);
    let mut events = vec![decode(genesis.bytes())];
    events.extend(extend(&mut sealer, n - 1, 0));
    (sealer, events)
}

/// Another history of `events`' feed after its event `from - 1`, signed
/// with `key`.
fn branch(events: &[DecodedEvent], from: u64, n: u64, key: SigningKey) -> Vec<DecodedEvent> {
    let base = &events[from as usize - 1];
    let h = base.header();
    let mut sealer =
        Sealer::resume(&h.author, key, h.seq, *base.hash(), h.timestamp_us).with_format(h.version);
    extend(&mut sealer, n, 9)
}

fn cluster() -> String {
    cluster_id(&[1; 32])
}

fn bytes(events: &[&DecodedEvent]) -> Vec<Vec<u8>> {
    events.iter().map(|e| e.bytes().to_vec()).collect()
}

/// Ingests `events` from `sender` (`None`: a local import) as node `own`.
fn ingest(
    rules: &mut Ingest,
    state: &mut Memory,
    events: &[&DecodedEvent],
    seals: &[Seal],
    sender: Option<&str>,
    own: Option<&str>,
) -> Ingested {
    let policy = IngestPolicy {
        sender: sender.map(str::to_string),
        skip_feeds: HashMap::new(),
    };
    let cluster = cluster();
    let batch = Batch {
        envelopes: bytes(events),
        seals,
        policy,
        own_feed: own,
        cluster: &cluster,
    };
    match rules.ingest(state, &Admit, batch) {
        Ok(ingested) => ingested,
        Err(never) => match never {},
    }
}

/// Each decision's kind, to compare a batch's at a glance.
fn kinds(ingested: &Ingested) -> Vec<String> {
    ingested
        .decisions
        .iter()
        .map(|d| match d {
            Decision::Applied(e) => format!("applied {}", e.header().seq),
            Decision::Duplicate => "duplicate".into(),
            Decision::Fork { conflicting, .. } => format!("fork {}", conflicting.header().seq),
            Decision::Conflict(r) => format!("conflict {}", r.check),
            Decision::SealedConflict(r) => format!("sealed conflict {}", r.check),
            Decision::Rejected(r) => format!("rejected {}", r.check),
            Decision::Skipped => "skipped".into(),
        })
        .collect()
}

#[test]
fn a_held_event_sent_again_is_a_duplicate_and_writes_nothing() {
    let (_, a) = feed("a", 6, FORMAT_VERSION_SIGNED);
    let mut state = Memory::default();
    state.hold(&a[..4]);
    let mut rules = Ingest::default();
    let copies = ingest(
        &mut rules,
        &mut state,
        &[&a[2], &a[3]],
        &[],
        Some("b"),
        None,
    );
    assert_eq!(kinds(&copies), ["duplicate", "duplicate"]);
    assert_eq!(copies.report.duplicates, 2);
    assert_eq!(copies.report.applied, 0);
    assert!(copies.heads.is_empty() && copies.leaves.is_empty());
    // An event applied earlier in the same batch is held too, though the
    // store has not written it yet.
    let batch = [&a[4], &a[4], &a[5], &a[3]];
    let ingested = ingest(&mut rules, &mut state, &batch, &[], Some("b"), None);
    assert_eq!(
        kinds(&ingested),
        ["applied 4", "duplicate", "applied 5", "duplicate"]
    );
    assert_eq!(ingested.report.applied, 2);
    assert_eq!(ingested.report.duplicates, 2);
    let head = ingested.heads["a"];
    assert_eq!((head.seq, head.hash), (5, *a[5].hash()));
    assert_eq!(
        ingested.leaves["a"],
        Leaves {
            first_seq: 4,
            event_hashes: vec![*a[4].hash(), *a[5].hash()],
        }
    );
}

#[test]
fn a_second_validly_signed_event_is_fork_evidence_and_freezes_the_feed_from_there() {
    let (_, a) = feed("a", 5, FORMAT_VERSION_SIGNED);
    let other = branch(&a, 2, 2, key_of("a"));
    let (_, c) = feed("c", 2, FORMAT_VERSION_SIGNED);
    let mut state = Memory::default();
    state.hold(&a[..4]);
    let mut rules = Ingest::default();
    let batch = [&other[0], &other[1], &a[1], &c[0], &c[1]];
    let ingested = ingest(&mut rules, &mut state, &batch, &[], Some("b"), None);
    assert_eq!(
        kinds(&ingested),
        ["fork 2", "skipped", "duplicate", "applied 0", "applied 1"],
        "the fork skips the rest of a from 2 on, not what lies below, nor other feeds"
    );
    match &ingested.decisions[0] {
        Decision::Fork {
            conflicting,
            stored,
        } => assert_eq!((conflicting.hash(), stored), (other[0].hash(), a[2].hash())),
        other => panic!("expected fork evidence, got {other:?}"),
    }
    assert_eq!(ingested.report.forks, 1);
    assert_eq!(ingested.report.new_forks, [("a".to_string(), 2)]);
    assert_eq!(ingested.report.skipped, 2);
    assert!(ingested.report.rejected.is_none());
    state.write(&ingested);
    // Later batches take nothing of a from 2 on (copies below still are),
    // whoever sends it; the feed's freeze is no one's fault.
    let mut rules = Ingest::default();
    let later = ingest(
        &mut rules,
        &mut state,
        &[&a[1], &a[3], &a[4]],
        &[],
        None,
        None,
    );
    assert_eq!(kinds(&later), ["duplicate", "rejected fork", "skipped"]);
    assert_eq!(later.report.skipped, 2);
    assert!(later.report.rejected.is_none() && later.report.applied == 0);
}

#[test]
fn a_fork_against_an_event_of_the_same_batch_is_caught() {
    let (_, a) = feed("a", 4, FORMAT_VERSION_SIGNED);
    let other = branch(&a, 3, 1, key_of("a"));
    let mut state = Memory::default();
    state.hold(&a[..3]);
    let mut rules = Ingest::default();
    let ingested = ingest(&mut rules, &mut state, &[&a[3], &other[0]], &[], None, None);
    assert_eq!(kinds(&ingested), ["applied 3", "fork 3"]);
    assert_eq!(ingested.report.new_forks, [("a".to_string(), 3)]);
}

#[test]
fn this_nodes_own_feed_beyond_its_head_is_refused_before_any_signature_check() {
    let (_, me) = feed("me", 3, FORMAT_VERSION_SIGNED);
    // Signed with another key: a signature check would refuse it too, for
    // another reason.
    let forged = branch(&me, 3, 1, SigningKey::from_bytes(&[42; 32]));
    let mut state = Memory::default();
    state.hold(&me);
    let mut rules = Ingest::default();
    let pushed = ingest(
        &mut rules,
        &mut state,
        &[&me[1], &forged[0]],
        &[],
        Some("b"),
        Some("me"),
    );
    assert_eq!(kinds(&pushed), ["duplicate", "rejected author"]);
    assert_eq!(pushed.report.rejected_feed.as_deref(), Some("me"));
    // While recovering the own feed is verified like any other.
    let recovering = ingest(&mut rules, &mut state, &[&forged[0]], &[], Some("b"), None);
    assert_eq!(kinds(&recovering), ["rejected signature"]);
}

#[test]
fn a_relay_is_forgiven_a_conflicting_history_but_the_author_is_not() {
    let (_, a) = feed("a", 3, FORMAT_VERSION_SIGNED);
    // The author signed another event 2 and sends its successor: it does
    // not follow this node's event 2.
    let other = branch(&a, 2, 2, key_of("a"));
    let (_, c) = feed("c", 3, FORMAT_VERSION_SIGNED);
    let mut state = Memory::default();
    state.hold(&a);
    state.hold(&c[..2]);
    let batch = [&other[1], &c[2]];
    let relayed = ingest(
        &mut Ingest::default(),
        &mut state,
        &batch,
        &[],
        Some("b"),
        None,
    );
    assert_eq!(kinds(&relayed), ["rejected previous-hash", "applied 2"]);
    assert_eq!(relayed.report.conflicts.len(), 1);
    assert_eq!(relayed.report.conflicts[0].0, "a");
    assert_eq!(relayed.report.skipped, 1);
    assert!(relayed.report.rejected.is_none());
    let from_author = ingest(
        &mut Ingest::default(),
        &mut state,
        &batch,
        &[],
        Some("a"),
        None,
    );
    assert_eq!(
        kinds(&from_author),
        ["rejected previous-hash"],
        "the author's own conflict ends the batch"
    );
    assert_eq!(from_author.report.rejected_feed.as_deref(), Some("a"));
    assert!(from_author.report.conflicts.is_empty() && from_author.report.applied == 0);
}

#[test]
fn after_a_tolerated_conflict_the_rest_of_that_feed_is_skipped_unread() {
    let (_, a) = feed("a", 3, FORMAT_VERSION_SIGNED);
    let other = branch(&a, 2, 3, key_of("a"));
    // Garbage the sender might append: refused if read.
    let forged = branch(&a, 2, 3, SigningKey::from_bytes(&[42; 32]));
    let mut state = Memory::default();
    state.hold(&a);
    let batch = [&other[1], &other[2], &forged[2], &a[1]];
    let ingested = ingest(
        &mut Ingest::default(),
        &mut state,
        &batch,
        &[],
        Some("b"),
        None,
    );
    assert_eq!(
        kinds(&ingested),
        ["rejected previous-hash", "skipped", "skipped", "duplicate"],
        "skipped from the conflict on; below it still read"
    );
    assert_eq!(ingested.report.skipped, 3);
    assert!(ingested.report.rejected.is_none());
}

/// A seal over `events` (a feed's first ones) signed with `key`.
fn seal(events: &[DecodedEvent], key: SigningKey) -> Seal {
    let feed = events[0].header().author.clone();
    let tree = MemoryTree::from_leaf_hashes(events.iter().map(|e| leaf_of(e.hash()))).unwrap();
    let note = CheckpointSigner::new(cluster(), feed, key)
        .sign(tree.size(), tree.root())
        .unwrap()
        .to_text()
        .into_bytes();
    Seal {
        end: events.len() as u64,
        note: serde_bytes::ByteBuf::from(note),
        proof: Vec::new(),
    }
}

#[test]
fn a_sealed_run_is_taken_only_with_its_authors_checkpoint() {
    let (_, s) = feed("s", 4, FORMAT_VERSION_SEALED);
    let run: Vec<&DecodedEvent> = s.iter().collect();
    let mut state = Memory::default();
    let mut rules = Ingest::default();
    // No seal, or one signed by another key: refused at the genesis.
    let unsealed = ingest(&mut rules, &mut state, &run, &[], Some("b"), None);
    assert_eq!(kinds(&unsealed), ["rejected signature"]);
    let forged = [seal(&s, SigningKey::from_bytes(&[42; 32]))];
    let forged = ingest(&mut rules, &mut state, &run, &forged, Some("b"), None);
    assert_eq!(kinds(&forged), ["rejected signature"]);
    assert!(forged.notes.is_empty());
    // The author's checkpoint vouches for the whole run.
    let sealed = [seal(&s, key_of("s"))];
    let ingested = ingest(&mut rules, &mut state, &run, &sealed, Some("b"), None);
    assert_eq!(
        kinds(&ingested),
        ["applied 0", "applied 1", "applied 2", "applied 3"]
    );
    assert_eq!(ingested.heads["s"].seq, 3);
    assert!(
        matches!(ingested.notes[..], [SealNote::Verified(ref c)] if c.size() == 4),
        "the checkpoint goes to the witness: {:?}",
        ingested.notes
    );
    state.write(&ingested);
    // Sent again, the copies need no seal.
    let again = ingest(&mut rules, &mut state, &run[2..], &[], Some("b"), None);
    assert_eq!(kinds(&again), ["duplicate", "duplicate"]);
}

#[test]
fn another_sealed_event_at_a_held_position_is_forgiven_a_relay_only() {
    let (_, s) = feed("s", 3, FORMAT_VERSION_SEALED);
    let other = branch(&s, 2, 1, key_of("s"));
    let mut state = Memory::default();
    state.hold(&s);
    let relayed = ingest(
        &mut Ingest::default(),
        &mut state,
        &[&other[0]],
        &[],
        Some("b"),
        None,
    );
    assert_eq!(kinds(&relayed), ["sealed conflict signature"]);
    assert_eq!(relayed.report.conflicts.len(), 1);
    assert!(relayed.report.rejected.is_none());
    let from_author = ingest(
        &mut Ingest::default(),
        &mut state,
        &[&other[0]],
        &[],
        Some("s"),
        None,
    );
    assert_eq!(kinds(&from_author), ["sealed conflict signature"]);
    assert_eq!(from_author.report.rejected_feed.as_deref(), Some("s"));
}
