//! A deterministic, seeded simulation of several nodes replicating through
//! the sans-IO connection machine the node drives
//! (`herald::core::replication::Connection`, one per connection and side),
//! with real sealed and verified events, over a network that loses,
//! duplicates, delays and reorders messages, partitions links and crashes
//! nodes. Time is virtual: it jumps to the next message or to the next
//! timer a connection asks for (`poll_timeout`).
//!
//! After every step: no feed forks anywhere (every node's copy of a feed is a
//! prefix of its author's), and nothing unverified is stored. After the chaos
//! the network heals and every committed event must reach every node; at the
//! end every store is re-verified from scratch.
//!
//! CI runs a fixed set of seeds. Replay one with
//! `HERALD_SIM_SEED=1234 cargo test --test replication_sim -- --nocapture`;
//! run more with `HERALD_SIM_SEEDS=500`.

mod common;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use common::Cluster;
use herald::core::crypto::{ChannelKey, Hash};
use herald::core::ingest::{Batch, Decision, FeedState, Ingest, IngestPolicy, StoredHead};
use herald::core::merkle::Frontier;
use herald::core::replication::{Connection, Received, frames};
use herald::core::verify::{Check, DecodedEvent, Draft, Entropy, FeedVerifier, Sealer, leaf_of};
use herald::core::wire::{FeedPosition, PeerMessage};
use herald::identity::{NodeIdentity, TrustAnchor};

/// Nodes in the simulated cluster, linked in a ring so most pairs need a relay.
const NODES: [&str; 4] = ["n0", "n1", "n2", "n3"];
/// Steps of chaos before the network heals.
const CHAOS_STEPS: usize = 600;
/// Seeds run by default (fixed, so CI is reproducible).
const DEFAULT_SEEDS: u64 = 12;

/// splitmix64: tiny, seedable, identical on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        out
    }
}

/// One feed as a node holds it: verified events in order.
struct StoredFeed {
    verifier: FeedVerifier,
    events: Vec<(Hash, Vec<u8>)>,
}

/// A node's feeds as the ingest rules read them.
struct SimFeeds<'a>(&'a BTreeMap<String, StoredFeed>);

impl FeedState for SimFeeds<'_> {
    type Error = std::convert::Infallible;

    fn stored_hash(&mut self, feed: &str, seq: u64) -> Result<Option<Hash>, Self::Error> {
        Ok(self
            .0
            .get(feed)
            .and_then(|f| f.events.get(seq as usize))
            .map(|e| e.0))
    }

    fn stored_event(&mut self, feed: &str, seq: u64) -> Result<DecodedEvent, Self::Error> {
        let bytes = self.0[feed].events[seq as usize].1.clone();
        Ok(DecodedEvent::decode(bytes).expect("stored bytes decode"))
    }

    fn head(&mut self, feed: &str) -> Result<Option<StoredHead>, Self::Error> {
        Ok(self.0.get(feed).map(|f| {
            let decode = |e: &(Hash, Vec<u8>)| DecodedEvent::decode(e.1.clone()).expect("decodes");
            let (genesis, last) = (decode(&f.events[0]), decode(&f.events[f.events.len() - 1]));
            StoredHead {
                seq: last.header().seq,
                hash: *last.hash(),
                last_timestamp_us: last.header().timestamp_us,
                genesis_cert: genesis.payload().unwrap_or_default().to_vec(),
            }
        }))
    }

    /// No feed forks here (checked after every step).
    fn fork_seq(&mut self, _feed: &str) -> Result<Option<u64>, Self::Error> {
        Ok(None)
    }

    fn frontier(&mut self, feed: &str, size: u64) -> Result<Frontier, Self::Error> {
        let mut frontier = Frontier::new();
        let events = &self.0[feed].events[..size as usize];
        frontier
            .extend(events.iter().map(|e| leaf_of(&e.0)))
            .expect("small trees");
        Ok(frontier)
    }
}

struct SimNode {
    name: String,
    up: bool,
    sealer: Sealer,
    feeds: BTreeMap<String, StoredFeed>,
    /// Connections by peer, with the connection epoch they belong to.
    sessions: BTreeMap<String, (u64, Connection)>,
}

impl SimNode {
    fn heads(&self) -> BTreeMap<String, u64> {
        self.feeds
            .iter()
            .map(|(f, s)| (f.clone(), s.events.len() as u64 - 1))
            .collect()
    }

    fn positions(&self) -> Vec<FeedPosition> {
        self.feeds
            .iter()
            .map(|(f, s)| FeedPosition {
                feed: f.clone(),
                seq: s.events.len() as u64 - 1,
                hash: s.events.last().map(|e| e.0).unwrap_or([0; 32]),
            })
            .collect()
    }
}

/// A message on the wire.
struct InFlight {
    from: usize,
    to: usize,
    epoch: u64,
    message: PeerMessage,
}

struct Sim {
    rng: Rng,
    now_us: u64,
    trust: TrustAnchor,
    channel: ChannelKey,
    nodes: Vec<SimNode>,
    /// Links of the ring, and until when each is cut.
    links: BTreeMap<(usize, usize), u64>,
    /// Connection epoch per link: bumped when a connection is torn down.
    epochs: BTreeMap<(usize, usize), u64>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    messages: BTreeMap<u64, InFlight>,
    next_message: u64,
    /// When each direction's `Hello` arrives, per connection: it stands for
    /// the handshake, so nothing on that connection overtakes it.
    hello_at: BTreeMap<(usize, usize, u64), u64>,
    /// Percent of messages lost / duplicated (chaos phase only).
    loss: u64,
    duplication: u64,
    proclaimed: u64,
}

fn link(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Sim {
    fn new(seed: u64, cluster: &Cluster) -> Sim {
        let mut rng = Rng(seed);
        let trust = TrustAnchor::load(&cluster.ca(), None).expect("trust");
        let now_us = herald::clock::now_us();
        let mut nodes = Vec::new();
        for name in NODES {
            let config = cluster.config(name);
            let identity = NodeIdentity::load(name, &config.key, &config.cert, &trust, now_us)
                .expect("identity");
            let mut id = rng.bytes::<16>();
            id[6] = 0x70 | (id[6] & 0x0f);
            id[8] = 0x80 | (id[8] & 0x3f);
            let (sealer, genesis) = Sealer::new_feed(name, identity.signing_key.clone())
                .with_format(herald::core::limits::FORMAT_VERSION_SIGNED)
                .start_feed(&identity.cert.der, id, now_us);
            let decoded = DecodedEvent::decode(genesis.bytes().to_vec()).expect("genesis decodes");
            let (verifier, _) =
                FeedVerifier::genesis(&trust, decoded, None).expect("genesis verifies");
            let mut feeds = BTreeMap::new();
            feeds.insert(
                name.to_string(),
                StoredFeed {
                    verifier,
                    events: vec![(*genesis.hash(), genesis.bytes().to_vec())],
                },
            );
            nodes.push(SimNode {
                name: name.to_string(),
                up: true,
                sealer,
                feeds,
                sessions: BTreeMap::new(),
            });
        }
        let links = (0..NODES.len())
            .map(|i| (link(i, (i + 1) % NODES.len()), 0))
            .collect();
        Sim {
            rng,
            now_us,
            trust,
            channel: ChannelKey::new("default", [7; 32]),
            nodes,
            links,
            epochs: BTreeMap::new(),
            hello_at: BTreeMap::new(),
            queue: BinaryHeap::new(),
            messages: BTreeMap::new(),
            next_message: 0,
            loss: 0,
            duplication: 0,
            proclaimed: 0,
        }
    }

    fn link_up(&self, l: (usize, usize)) -> bool {
        self.links
            .get(&l)
            .is_some_and(|until| *until <= self.now_us)
            && self.nodes[l.0].up
            && self.nodes[l.1].up
    }

    /// Sends with the network's faults: loss, duplication, random delay
    /// (which reorders). `Hello` is never lost: it stands for the connection
    /// handshake, which QUIC makes reliable.
    fn send(&mut self, from: usize, to: usize, message: PeerMessage) {
        let epoch = self.epochs.get(&link(from, to)).copied().unwrap_or(0);
        let reliable = matches!(message, PeerMessage::Hello { .. });
        if !reliable && self.rng.chance(self.loss) {
            return;
        }
        let copies = if !reliable && self.rng.chance(self.duplication) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut at = self.now_us + 1_000 + self.rng.below(50_000);
            if reliable {
                self.hello_at.insert((from, to, epoch), at);
            } else if let Some(hello) = self.hello_at.get(&(from, to, epoch)) {
                at = at.max(hello + 1);
            }
            let id = self.next_message;
            self.next_message += 1;
            self.messages.insert(
                id,
                InFlight {
                    from,
                    to,
                    epoch,
                    message: message.clone(),
                },
            );
            self.queue.push(Reverse((at, id)));
        }
    }

    /// Opens sessions on every link that is up and has none; tears down
    /// sessions on links that went down.
    fn manage_connections(&mut self) {
        let links: Vec<(usize, usize)> = self.links.keys().copied().collect();
        for l in links {
            let (a, b) = l;
            let up = self.link_up(l);
            let has = self.nodes[a].sessions.contains_key(&self.nodes[b].name);
            if !up && has {
                let name_b = self.nodes[b].name.clone();
                self.nodes[a].sessions.remove(&name_b);
                let name_a = self.nodes[a].name.clone();
                self.nodes[b].sessions.remove(&name_a);
                *self.epochs.entry(l).or_insert(0) += 1;
            } else if up && !has {
                let epoch = *self.epochs.entry(l).or_insert(0);
                for (x, y) in [(a, b), (b, a)] {
                    let peer = self.nodes[y].name.clone();
                    let conn = Connection::new(&self.nodes[x].name, &peer, self.now_us);
                    let hello = conn.hello(&self.nodes[x].positions());
                    self.nodes[x].sessions.insert(peer, (epoch, conn));
                    self.send(x, y, hello);
                }
            }
        }
    }

    fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .expect("known node")
    }

    /// Every connection sends what it asks for, as the node's outbound
    /// half does: a retransmission when its timer ran out, the
    /// acknowledgement it owes, then the events the peer lacks, framed.
    fn pump_sends(&mut self) {
        for x in 0..self.nodes.len() {
            if !self.nodes[x].up {
                continue;
            }
            let heads = self.nodes[x].heads();
            let positions = self.nodes[x].positions();
            let peers: Vec<String> = self.nodes[x].sessions.keys().cloned().collect();
            for peer in peers {
                let y = self.index_of(&peer);
                let now = self.now_us;
                let conn = &mut self.nodes[x].sessions.get_mut(&peer).expect("session").1;
                if conn.poll_timeout().is_some_and(|t| t <= now) {
                    conn.handle_timeout(now);
                }
                let ack = conn.poll_ack(&positions);
                let ranges = conn.poll_send(now, &heads);
                if let Some(ack) = ack {
                    self.send(x, y, ack);
                }
                for range in ranges {
                    let envelopes: Vec<Vec<u8>> = self.nodes[x].feeds[&range.feed].events
                        [range.from as usize..=range.to as usize]
                        .iter()
                        .map(|(_, bytes)| bytes.clone())
                        .collect();
                    for events in frames(envelopes) {
                        let seals = Vec::new();
                        self.send(x, y, PeerMessage::Events { events, seals });
                    }
                }
            }
        }
    }

    /// When the next connection of a running node wants to be called back.
    fn next_timer(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter(|n| n.up)
            .flat_map(|n| n.sessions.values())
            .filter_map(|(_, conn)| conn.poll_timeout())
            .min()
    }

    /// A receiver's connection checks the frame; events are verified and
    /// stored (exactly once), and the connection then owes an
    /// acknowledgement, sent by the next pump.
    fn deliver(&mut self, message: InFlight) {
        let InFlight {
            from,
            to,
            epoch,
            message,
        } = message;
        let l = link(from, to);
        if self.epochs.get(&l).copied().unwrap_or(0) != epoch || !self.link_up(l) {
            return; // the connection it travelled on is gone
        }
        let from_name = self.nodes[from].name.clone();
        let now = self.now_us;
        let node = &mut self.nodes[to];
        let feeds = &node.feeds;
        let Some((_, conn)) = node.sessions.get_mut(&from_name) else {
            return;
        };
        let received = match conn.handle_message(now, message, |f| feeds.contains_key(f)) {
            Ok(r) => r,
            Err(e) => panic!("honest peers never break the protocol: {e}"),
        };
        match received {
            Received::Events(envelopes, _) => {
                self.ingest(to, envelopes);
                if let Some((_, conn)) = self.nodes[to].sessions.get_mut(&from_name) {
                    conn.handle_ingested(&[]);
                }
            }
            Received::Nothing | Received::Established { .. } => {}
            other => panic!("honest peers of format 1 send no {other:?}"),
        }
    }

    /// Applies a frame through the real ingest rules (`core::ingest`), one
    /// event per batch so that a gap (an event whose predecessors are still
    /// on their way) refuses only itself; anything else refused from an
    /// honest peer fails the run.
    fn ingest(&mut self, node: usize, envelopes: Vec<Vec<u8>>) -> BTreeSet<String> {
        let mut touched = BTreeSet::new();
        let mut rules = Ingest::default();
        let own = self.nodes[node].name.clone();
        for bytes in envelopes {
            let event = DecodedEvent::decode(bytes.clone()).expect("honest bytes decode");
            let feed = event.header().author.clone();
            let seq = event.header().seq;
            touched.insert(feed.clone());
            let batch = Batch {
                envelopes: vec![bytes],
                seals: &[],
                policy: IngestPolicy::default(),
                own_feed: Some(&own),
                cluster: "",
            };
            let ingested =
                match rules.ingest(&mut SimFeeds(&self.nodes[node].feeds), &self.trust, batch) {
                    Ok(ingested) => ingested,
                    Err(never) => match never {},
                };
            for decision in ingested.decisions {
                match decision {
                    Decision::Applied(event) => {
                        let verifier = rules.verifier(&feed).expect("applied: verifier").clone();
                        let entry = (*event.hash(), event.into_bytes());
                        match self.nodes[node].feeds.get_mut(&feed) {
                            Some(stored) => {
                                stored.events.push(entry);
                                stored.verifier = verifier;
                            }
                            None => {
                                let events = vec![entry];
                                let stored = StoredFeed { verifier, events };
                                self.nodes[node].feeds.insert(feed.clone(), stored);
                            }
                        }
                    }
                    Decision::Duplicate => {}
                    // A gap: the genesis, or earlier events, still on their way.
                    Decision::Rejected(r)
                        if r.check == Check::Sequence
                            || (r.check == Check::Author && r.seq.is_none()) => {}
                    other => panic!("{own} refused {feed}/{seq} from an honest peer: {other:?}"),
                }
            }
        }
        touched
    }

    fn proclaim(&mut self, node: usize, count: usize) {
        let now = self.now_us;
        let drafts = (0..count)
            .map(|i| {
                let mut id = self.rng.bytes::<16>();
                id[6] = 0x70 | (id[6] & 0x0f);
                id[8] = 0x80 | (id[8] & 0x3f);
                let entropy = Entropy {
                    id,
                    nonce: self.rng.bytes::<24>(),
                };
                let draft =
                    Draft::new("sim.event", 1, vec![], format!("{i}").into_bytes()).expect("draft");
                (draft, &self.channel, entropy)
            })
            .collect();
        let sealed = self.nodes[node].sealer.seal_batch(drafts, now);
        let name = self.nodes[node].name.clone();
        let feed = self.nodes[node].feeds.get_mut(&name).expect("own feed");
        for event in sealed {
            feed.events.push((*event.hash(), event.bytes().to_vec()));
        }
        let bytes: Vec<Vec<u8>> = feed.events[feed.events.len() - count..]
            .iter()
            .map(|e| e.1.clone())
            .collect();
        // Keep the node's own verifier in step (the sealer is trusted code,
        // but the store only holds what a verifier accepted).
        for b in bytes {
            let e = DecodedEvent::decode(b).expect("own event decodes");
            let verdict = feed.verifier.check_signature(&e);
            feed.verifier
                .verify_next(e, verdict)
                .expect("own events verify");
        }
        self.proclaimed += count as u64;
    }

    /// One random step of the chaos phase.
    fn chaos_step(&mut self) {
        let roll = self.rng.below(100);
        let n = self.rng.below(self.nodes.len() as u64) as usize;
        match roll {
            0..=19 if self.nodes[n].up => {
                let count = 1 + self.rng.below(12) as usize;
                self.proclaim(n, count);
            }
            20..=21 => {
                // Crash: sessions and in-flight messages are lost, the store survives.
                self.nodes[n].up = !self.nodes[n].up;
            }
            22..=23 => {
                let links: Vec<_> = self.links.keys().copied().collect();
                let l = links[self.rng.below(links.len() as u64) as usize];
                let until = self.now_us + 100_000 + self.rng.below(3_000_000);
                self.links.insert(l, until);
            }
            _ => self.advance(),
        }
    }

    /// Delivers the next message, or lets time pass to the next timer a
    /// connection asked for (the next pump handles it), or a little.
    fn advance(&mut self) {
        let next_message = self.queue.peek().map(|Reverse((at, _))| *at);
        let timer = self.next_timer();
        if next_message.is_some_and(|at| timer.is_none_or(|t| at <= t)) {
            if let Some(Reverse((at, id))) = self.queue.pop() {
                self.now_us = self.now_us.max(at);
                if let Some(message) = self.messages.remove(&id) {
                    self.deliver(message);
                }
            }
        } else if let Some(timer) = timer {
            // At least a microsecond, so a timer never stalls virtual time.
            self.now_us = timer.max(self.now_us + 1);
        } else {
            self.now_us += 100_000;
        }
    }

    fn step(&mut self, chaos: bool) {
        if chaos {
            self.chaos_step();
        } else {
            self.advance();
        }
        self.manage_connections();
        self.pump_sends();
        self.check_no_forks();
    }

    /// Every node's copy of every feed is a prefix of the author's.
    fn check_no_forks(&self) {
        for node in &self.nodes {
            for (feed, stored) in &node.feeds {
                let author = &self.nodes[self.index_of(feed)].feeds[feed];
                assert!(
                    stored.events.len() <= author.events.len(),
                    "{} holds more of {feed} than its author",
                    node.name
                );
                for (i, (hash, _)) in stored.events.iter().enumerate() {
                    assert_eq!(
                        hash, &author.events[i].0,
                        "{} forked {feed} at {i}",
                        node.name
                    );
                }
            }
        }
    }

    fn converged(&self) -> bool {
        self.nodes.iter().all(|node| {
            self.nodes.iter().all(|author| {
                node.feeds.get(&author.name).map(|f| f.events.len())
                    == Some(author.feeds[&author.name].events.len())
            })
        })
    }

    /// Re-verifies every stored feed from scratch.
    fn reverify_all(&self) {
        for node in &self.nodes {
            for (feed, stored) in &node.feeds {
                let mut events = stored
                    .events
                    .iter()
                    .map(|(_, b)| DecodedEvent::decode(b.clone()).expect("stored bytes decode"));
                let genesis = events.next().expect("genesis");
                let (mut verifier, _) = FeedVerifier::genesis(&self.trust, genesis, None)
                    .expect("stored genesis verifies");
                let rest: Vec<DecodedEvent> = events.collect();
                let (verified, rejection) = verifier.verify_run(rest);
                assert!(
                    rejection.is_none(),
                    "{}: {feed} re-verification: {rejection:?}",
                    node.name
                );
                assert_eq!(verified.len() + 1, stored.events.len());
            }
        }
    }
}

fn run_seed(seed: u64, cluster: &Cluster) {
    let mut sim = Sim::new(seed, cluster);
    sim.loss = 5 + seed % 10;
    sim.duplication = 5;
    for _ in 0..CHAOS_STEPS {
        sim.step(true);
    }
    // Heal: every node up, every link up, no more loss or duplication.
    sim.loss = 0;
    sim.duplication = 0;
    for node in &mut sim.nodes {
        node.up = true;
    }
    let links: Vec<_> = sim.links.keys().copied().collect();
    for l in links {
        sim.links.insert(l, 0);
    }
    let deadline = sim.now_us + 120_000_000;
    while !sim.converged() {
        assert!(
            sim.now_us < deadline,
            "seed {seed}: not converged after healing (replay with HERALD_SIM_SEED={seed})"
        );
        sim.step(false);
    }
    sim.reverify_all();
    assert!(sim.proclaimed > 0, "seed {seed} proclaimed nothing");
}

#[test]
fn replication_converges_under_loss_duplication_reordering_partitions_and_crashes() {
    let cluster = Cluster::new(&NODES);
    let seeds: Vec<u64> = match std::env::var("HERALD_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("HERALD_SIM_SEED is a number")],
        Err(_) => {
            let count = std::env::var("HERALD_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(DEFAULT_SEEDS);
            (0..count).collect()
        }
    };
    for seed in seeds {
        run_seed(seed, &cluster);
    }
}
