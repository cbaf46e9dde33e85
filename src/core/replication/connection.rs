//! One replication connection with one peer, sans-IO: the single owner of
//! everything the connection knows about its peer.
//!
//! [`Session`] keeps the cursors (what the peer holds, what was sent, when
//! to rewind); a [`Connection`] wraps it with the rest of a connection's
//! protocol state: the checks on every received frame (order, limits, the
//! flood bound), the acknowledgement owed after a commit, the relay delay,
//! the feeds no longer taken from or sent to the peer, and what evidence and
//! checkpoints it was sent. It reads no clock and touches no socket or disk:
//! the driver passes in the time, the frames that arrived, the local heads
//! and the outcome of each commit, and asks what to send, what to read and
//! send, and when to call back ([`Connection::poll_timeout`]).
//!
//! The node (`src/node/peer.rs`) and the seeded simulation
//! (`tests/replication_sim.rs`) drive this same machine, one per connection.

use std::collections::{BTreeMap, BTreeSet};

use super::{ProtocolError, Received, SendRange, Session};
use crate::core::crypto::Hash;
use crate::core::wire::{FRAME_EVENTS_MAX, FRAME_TARGET_BYTES, FeedPosition, PeerMessage};

/// Most replication frames a peer may send per second. An honest peer sends
/// up to 512 events per frame, so this allows millions of events a second;
/// more frames than that is a flood and the peer is disconnected.
pub const PEER_FRAMES_PER_SECOND_MAX: u32 = 5_000;
/// Least time between two checkpoints of one feed sent to one peer: bounds
/// the signature checks and cosignatures checkpoints cost under load to a
/// few per second per feed, and delays a witness's cosignature by at most
/// this.
pub const CHECKPOINT_SEND_INTERVAL_US: u64 = 200_000;
/// The length of the window [`PEER_FRAMES_PER_SECOND_MAX`] counts in.
const FLOOD_WINDOW_US: u64 = 1_000_000;

/// A feed's latest checkpoint as the driver holds it, offered to
/// [`Connection::poll_checkpoints`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointOffer {
    pub feed: String,
    /// How many events it covers.
    pub size: u64,
    /// How many signature lines its note carries (the author's and any
    /// cosignatures): a checkpoint with more is news too.
    pub signatures: usize,
}

/// What a connection knows about its peer, and what it owes it.
#[derive(Debug, Clone)]
pub struct Connection {
    /// This node's service name.
    service: String,
    /// The cursors: what the peer holds, what was sent, when to rewind.
    session: Session,
    /// Events were committed since the last `Ack`: one is owed.
    ack_due: bool,
    /// The acknowledged heads moved since [`Self::take_ack_progress`].
    ack_progress: bool,
    /// The peer's `Hello` positions, not yet compared with our history.
    reported_at_hello: Vec<FeedPosition>,
    /// The peer's newest acknowledged position per feed, not yet compared.
    /// Acknowledgements are cumulative, so they merge instead of queueing.
    reported_acks: BTreeMap<String, FeedPosition>,
    /// Per feed, the sequence number from which what the peer sends of it
    /// is not taken (it holds another branch, or the feed forked there).
    skip_from: BTreeMap<String, u64>,
    /// Start of the current flood window and frames counted in it.
    flood_window_start_us: Option<u64>,
    frames_in_window: u32,
    /// When a third party's head held back by the relay delay comes due.
    relay_due_us: Option<u64>,
    /// When a checkpoint held back by the send interval comes due.
    checkpoint_due_us: Option<u64>,
    /// Per feed, the last position of the peer's already compared (so a
    /// repeated acknowledgement costs the driver no store read).
    compared: BTreeMap<String, (u64, Hash)>,
    /// Feeds the peer holds another branch of: our side was sent to it.
    diverged: BTreeSet<String>,
    /// Forked feeds whose evidence was sent on this connection.
    evidence_sent: BTreeSet<String>,
    /// Per feed, the checkpoint (size, signature lines) last sent, and when.
    checkpoints_sent: BTreeMap<String, ((u64, usize), u64)>,
    /// Feeds whose equivocation evidence was sent on this connection.
    equivocations_sent: BTreeSet<String>,
}

impl Connection {
    /// A connection of `service` with `peer` (the service its certificate
    /// names) over a transport that may lose messages: it rewinds after
    /// [`super::RETRANSMIT_AFTER_US`] without progress.
    pub fn new(service: &str, peer: &str, now_us: u64) -> Connection {
        Connection::with_session(service, Session::new(peer, now_us))
    }

    /// The same over a transport that delivers reliably (QUIC): it rewinds
    /// only after [`super::RETRANSMIT_AFTER_ON_RELIABLE_US`].
    pub fn over_reliable_transport(service: &str, peer: &str, now_us: u64) -> Connection {
        Connection::with_session(service, Session::over_reliable_transport(peer, now_us))
    }

    fn with_session(service: &str, session: Session) -> Connection {
        Connection {
            service: service.to_string(),
            session,
            ack_due: false,
            ack_progress: false,
            reported_at_hello: Vec::new(),
            reported_acks: BTreeMap::new(),
            skip_from: BTreeMap::new(),
            flood_window_start_us: None,
            frames_in_window: 0,
            relay_due_us: None,
            checkpoint_due_us: None,
            compared: BTreeMap::new(),
            diverged: BTreeSet::new(),
            evidence_sent: BTreeSet::new(),
            checkpoints_sent: BTreeMap::new(),
            equivocations_sent: BTreeSet::new(),
        }
    }

    /// The peer's service name.
    pub fn peer(&self) -> &str {
        self.session.peer()
    }

    /// Whether the peer's `Hello` has arrived.
    pub fn established(&self) -> bool {
        self.session.established()
    }

    /// The opening message, with the heads of every feed this node holds.
    pub fn hello(&self, local: &[FeedPosition]) -> PeerMessage {
        Session::hello(&self.service, local)
    }

    /// Handles one frame from the peer, in the order it arrived. `held`
    /// says whether this node holds a feed: acknowledgements of other feeds
    /// are dropped, as they would only grow this connection's state at the
    /// peer's whim. An error ends the connection.
    pub fn handle_message(
        &mut self,
        now_us: u64,
        message: PeerMessage,
        held: impl Fn(&str) -> bool,
    ) -> Result<Received, ProtocolError> {
        self.count_frame(now_us)?;
        match message {
            PeerMessage::Hello {
                protocol,
                service,
                heads,
            } => {
                let reported = heads.clone();
                let before = self.session.acknowledged().len();
                self.session.on_message(
                    now_us,
                    PeerMessage::Hello {
                        protocol,
                        service,
                        heads,
                    },
                )?;
                let own_head = reported
                    .iter()
                    .find(|h| h.feed == self.service)
                    .map(|h| h.seq);
                self.reported_at_hello = reported;
                // The acknowledged map only grows, and before `Hello` it is
                // empty: it moved if it holds anything now.
                self.ack_progress |= self.session.acknowledged().len() > before;
                Ok(Received::Established { own_head })
            }
            PeerMessage::Ack { heads } => {
                super::check_positions(&heads)?;
                let heads: Vec<FeedPosition> =
                    heads.into_iter().filter(|h| held(&h.feed)).collect();
                let before = self.session.acknowledged().clone();
                let received = self.session.on_message(
                    now_us,
                    PeerMessage::Ack {
                        heads: heads.clone(),
                    },
                )?;
                if self.session.acknowledged() != &before {
                    self.ack_progress = true;
                }
                for head in heads {
                    let newer = self
                        .reported_acks
                        .get(&head.feed)
                        .is_none_or(|h| h.seq < head.seq);
                    if newer {
                        self.reported_acks.insert(head.feed.clone(), head);
                    }
                }
                Ok(received)
            }
            other => self.session.on_message(now_us, other),
        }
    }

    /// Counts a frame; more than [`PEER_FRAMES_PER_SECOND_MAX`] in one
    /// second is a flood.
    fn count_frame(&mut self, now_us: u64) -> Result<(), ProtocolError> {
        let start = *self.flood_window_start_us.get_or_insert(now_us);
        // A clock that went back starts a new window too, so it can never
        // hold one open and count an honest peer's frames as a flood.
        if now_us < start || now_us - start >= FLOOD_WINDOW_US {
            self.flood_window_start_us = Some(now_us);
            self.frames_in_window = 0;
        }
        self.frames_in_window += 1;
        if self.frames_in_window > PEER_FRAMES_PER_SECOND_MAX {
            return Err(ProtocolError::Flood);
        }
        Ok(())
    }

    /// Per feed, the sequence number from which events received from this
    /// peer are skipped unread (the driver's ingest policy).
    pub fn skipped_feeds(&self) -> &BTreeMap<String, u64> {
        &self.skip_from
    }

    /// The driver committed events this peer sent. `skip_from` names feeds
    /// not to take from this peer any more, each from a sequence number: it
    /// relays another branch of them, or they forked. An `Ack` is now owed.
    pub fn handle_ingested(&mut self, skip_from: &[(String, u64)]) {
        for (feed, seq) in skip_from {
            let from = self.skip_from.entry(feed.clone()).or_insert(*seq);
            *from = (*from).min(*seq);
        }
        self.ack_due = true;
    }

    /// Whether an `Ack` is owed (events were committed since the last).
    pub fn ack_due(&self) -> bool {
        self.ack_due
    }

    /// The `Ack` owed after a commit, if one is, naming `local` (this
    /// node's heads now).
    ///
    /// Only owed ones: `Ack`s sent whenever this node's heads moved (to tell
    /// relays sooner what it took from authors) made every peer answer with
    /// store reads and checkpoint work, and under load starved the
    /// cosignature exchange (witness tests timed out).
    pub fn poll_ack(&mut self, local: &[FeedPosition]) -> Option<PeerMessage> {
        std::mem::take(&mut self.ack_due).then(|| Session::ack(local.to_vec()))
    }

    /// Whether what the peer acknowledged moved since the last call (for
    /// status and persisted cursors).
    pub fn take_ack_progress(&mut self) -> bool {
        std::mem::take(&mut self.ack_progress)
    }

    /// What to read and send next, given the local heads (feed to head
    /// sequence number): this node's and the peer's own feeds as they are,
    /// third parties' as they were [`super::RELAY_DELAY_US`] ago; oldest
    /// first per feed, within the window. Marks it sent.
    pub fn poll_send(&mut self, now_us: u64, local: &BTreeMap<String, u64>) -> Vec<SendRange> {
        let (offer, due) = self.session.relay_heads(local, &self.service, now_us);
        self.relay_due_us = due;
        self.session.poll_send(&offer)
    }

    /// Takes back what [`Self::poll_send`] handed out of `feed` from `next`
    /// on but the driver could not send yet (see [`Session::rewind_send`]).
    pub fn rewind_send(&mut self, feed: &str, next: u64) {
        self.session.rewind_send(feed, next);
    }

    /// Sends no event of `feed` at or beyond `from` to this peer any more.
    pub fn hold_back(&mut self, feed: &str, from: u64) {
        self.session.hold_back(feed, from);
    }

    /// Where sending `feed` stops, if it was held back.
    pub fn held_back(&self, feed: &str) -> Option<u64> {
        self.session.held_back(feed)
    }

    /// The positions the peer reported (in `Hello` and `Ack`) since the last
    /// call that are worth comparing with this node's history, given `ours`
    /// (feed to head and head hash): each with our hash at that position
    /// when it is our head, `None` when the driver must look it up. Feeds
    /// already found to diverge, positions beyond our head and positions
    /// compared before are left out. Report the outcome with
    /// [`Self::diverges`].
    pub fn poll_compare(
        &mut self,
        ours: &BTreeMap<String, (u64, Hash)>,
    ) -> Vec<(FeedPosition, Option<Hash>)> {
        let mut reported = std::mem::take(&mut self.reported_at_hello);
        reported.extend(std::mem::take(&mut self.reported_acks).into_values());
        let mut out = Vec::new();
        for position in reported {
            let Some(&(head, head_hash)) = ours.get(&position.feed) else {
                continue;
            };
            let already = self.compared.get(&position.feed) == Some(&(position.seq, position.hash));
            if already || position.seq > head || self.diverged.contains(&position.feed) {
                continue;
            }
            self.compared
                .insert(position.feed.clone(), (position.seq, position.hash));
            let ours = (position.seq == head).then_some(head_hash);
            out.push((position, ours));
        }
        out
    }

    /// Compares the peer's `position` with `held`, this node's hash there.
    /// Returns true when they differ for the first time on this feed (a
    /// split view): the feed is then held back from that position, and the
    /// driver sends our side of it as evidence.
    pub fn diverges(&mut self, position: &FeedPosition, held: &Hash) -> bool {
        if *held == position.hash || !self.diverged.insert(position.feed.clone()) {
            return false;
        }
        self.session.hold_back(&position.feed, position.seq);
        true
    }

    /// Whether fork evidence of `feed` is still to be sent to this peer:
    /// not sent yet, and the peer holds the feed (one that does not could
    /// not check the author's signatures yet; it receives the feed up to the
    /// fork first).
    pub fn evidence_due(&self, feed: &str) -> bool {
        !self.evidence_sent.contains(feed) && self.peer_holds(feed)
    }

    /// Fork evidence of `feed` was sent.
    pub fn evidence_sent(&mut self, feed: &str) {
        self.evidence_sent.insert(feed.to_string());
    }

    /// Whether equivocation evidence of `feed` is still to be sent.
    pub fn equivocation_due(&self, feed: &str) -> bool {
        !self.equivocations_sent.contains(feed) && self.peer_holds(feed)
    }

    /// Equivocation evidence of `feed` was sent.
    pub fn equivocation_sent(&mut self, feed: &str) {
        self.equivocations_sent.insert(feed.to_string());
    }

    fn peer_holds(&self, feed: &str) -> bool {
        self.session
            .acknowledged()
            .get(feed)
            .is_some_and(|&next| next > 0)
    }

    /// Which of `offers` (each feed's latest checkpoint) to send now, by
    /// index, marked sent: those new to the peer (a larger size, or more
    /// signatures) whose events it acknowledged holding, at most one per
    /// feed per [`CHECKPOINT_SEND_INTERVAL_US`]. The rest come due by
    /// [`Self::poll_timeout`].
    pub fn poll_checkpoints(&mut self, now_us: u64, offers: &[CheckpointOffer]) -> Vec<usize> {
        let mut due_us: Option<u64> = None;
        let mut send = Vec::new();
        for (i, offer) in offers.iter().enumerate() {
            let version = (offer.size, offer.signatures);
            let last = self.checkpoints_sent.get(&offer.feed).copied();
            if last.is_some_and(|(sent, _)| sent == version) {
                continue;
            }
            let held = self
                .session
                .acknowledged()
                .get(&offer.feed)
                .copied()
                .unwrap_or(0);
            if held < offer.size || self.session.held_back(&offer.feed).is_some() {
                continue;
            }
            // Under load every commit makes a new checkpoint, and each costs
            // its receiver a signature check and a cosignature: the latest
            // goes out when the interval ends.
            if let Some((_, sent_at_us)) = last {
                let next_us = sent_at_us + CHECKPOINT_SEND_INTERVAL_US;
                if now_us < next_us {
                    due_us = Some(due_us.map_or(next_us, |d| d.min(next_us)));
                    continue;
                }
            }
            self.checkpoints_sent
                .insert(offer.feed.clone(), (version, now_us));
            send.push(i);
        }
        self.checkpoint_due_us = due_us;
        send
    }

    /// When the driver should call [`Self::handle_timeout`] and poll again:
    /// a retransmission, a relayed head or a checkpoint coming due.
    pub fn poll_timeout(&self) -> Option<u64> {
        [
            self.session.poll_timeout(),
            self.relay_due_us,
            self.checkpoint_due_us,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Time passed: if acknowledgements stalled, rewinds to what the peer
    /// acknowledged so the next [`Self::poll_send`] sends it again. Returns
    /// whether it did.
    pub fn handle_timeout(&mut self, now_us: u64) -> bool {
        let before = self.session.retransmits();
        self.session.handle_timeout(now_us);
        self.session.retransmits() > before
    }

    /// Events the peer still lacks, given the local heads.
    pub fn backlog(&self, local: &BTreeMap<String, u64>) -> u64 {
        self.session.backlog(local)
    }

    /// Per feed, the first sequence number the peer does not hold.
    pub fn acknowledged(&self) -> &BTreeMap<String, u64> {
        self.session.acknowledged()
    }

    /// How many times unacknowledged events were sent again.
    pub fn retransmits(&self) -> u64 {
        self.session.retransmits()
    }
}

/// Encoded bytes one envelope adds to an `Events` frame: its varint length
/// prefix (at most 5 bytes for any length below 4 GiB) and the bytes.
fn framed_len(envelope: &[u8]) -> usize {
    envelope.len() + 5
}

/// Splits envelopes into frames of at most [`FRAME_EVENTS_MAX`] events and
/// [`FRAME_TARGET_BYTES`] bytes of envelopes, or a single larger envelope.
/// A frame is flushed *before* an envelope would carry it past the target,
/// so no frame exceeds `FRAME_BYTES_MAX` whatever the mix of sizes: either
/// it holds at most the target (plus framing) or exactly one event, which
/// is at most `ENVELOPE_BYTES_MAX`.
pub fn frames(envelopes: Vec<Vec<u8>>) -> Vec<Vec<serde_bytes::ByteBuf>> {
    let mut out = Vec::new();
    let mut frame: Vec<serde_bytes::ByteBuf> = Vec::new();
    let mut bytes = 0;
    for e in envelopes {
        let cost = framed_len(&e);
        let full = frame.len() >= FRAME_EVENTS_MAX || bytes + cost > FRAME_TARGET_BYTES;
        if !frame.is_empty() && full {
            out.push(std::mem::take(&mut frame));
            bytes = 0;
        }
        bytes += cost;
        frame.push(serde_bytes::ByteBuf::from(e));
    }
    if !frame.is_empty() {
        out.push(frame);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::replication::{RELAY_DELAY_US, RETRANSMIT_AFTER_US};

    fn pos(feed: &str, seq: u64) -> FeedPosition {
        FeedPosition {
            feed: feed.into(),
            seq,
            hash: [seq as u8; 32],
        }
    }

    fn heads(list: &[(&str, u64)]) -> BTreeMap<String, u64> {
        list.iter().map(|(f, s)| (f.to_string(), *s)).collect()
    }

    fn all(_: &str) -> bool {
        true
    }

    #[test]
    fn hello_establishes_and_names_what_the_peer_holds_of_our_feed() {
        let mut c = Connection::new("a", "b", 0);
        assert_eq!(
            c.handle_message(0, Session::hello("b", &[pos("a", 3)]), all),
            Ok(Received::Established { own_head: Some(3) })
        );
        assert!(c.established());
        assert!(c.take_ack_progress());
        assert!(!c.take_ack_progress());
        assert_eq!(c.acknowledged()["a"], 4);
    }

    #[test]
    fn an_ack_is_owed_only_after_a_commit_and_sent_once() {
        let mut c = Connection::new("a", "b", 0);
        c.handle_message(0, Session::hello("b", &[]), all).unwrap();
        assert_eq!(c.poll_ack(&[pos("a", 1)]), None);
        c.handle_ingested(&[("x".into(), 5), ("x".into(), 3)]);
        assert_eq!(c.skipped_feeds()["x"], 3, "the earliest point wins");
        assert_eq!(
            c.poll_ack(&[pos("a", 1)]),
            Some(PeerMessage::Ack {
                heads: vec![pos("a", 1)]
            })
        );
        assert_eq!(c.poll_ack(&[pos("a", 1)]), None);
    }

    #[test]
    fn acknowledgements_of_feeds_not_held_are_dropped() {
        let mut c = Connection::new("a", "b", 0);
        c.handle_message(0, Session::hello("b", &[]), all).unwrap();
        c.take_ack_progress();
        c.handle_message(1, Session::ack(vec![pos("a", 2), pos("z", 9)]), |f| {
            f == "a"
        })
        .unwrap();
        assert!(c.take_ack_progress());
        assert_eq!(c.acknowledged().get("z"), None);
        assert_eq!(c.acknowledged()["a"], 3);
    }

    #[test]
    fn relayed_feeds_wait_and_the_timeout_says_when() {
        let mut c = Connection::new("me", "b", 0);
        c.handle_message(0, Session::hello("b", &[]), all).unwrap();
        let local = heads(&[("me", 1), ("c", 4)]);
        let sent = c.poll_send(1_000, &local);
        assert_eq!(sent.len(), 1, "only our own feed at once");
        assert_eq!(
            c.poll_timeout(),
            Some(1_000 + RELAY_DELAY_US),
            "the relay comes due before any retransmission"
        );
        let later = c.poll_send(1_000 + RELAY_DELAY_US, &local);
        assert_eq!(
            later,
            vec![SendRange {
                feed: "c".into(),
                from: 0,
                to: 4
            }]
        );
        assert_eq!(c.poll_timeout(), Some(RETRANSMIT_AFTER_US));
        assert!(!c.handle_timeout(RETRANSMIT_AFTER_US - 1));
        assert!(c.handle_timeout(RETRANSMIT_AFTER_US));
        assert_eq!(c.retransmits(), 1);
    }

    #[test]
    fn reported_positions_are_compared_once_and_a_divergence_holds_the_feed_back() {
        let mut c = Connection::new("me", "b", 0);
        c.handle_message(0, Session::hello("b", &[pos("f", 2)]), all)
            .unwrap();
        c.handle_message(1, Session::ack(vec![pos("f", 3)]), all)
            .unwrap();
        c.handle_message(2, Session::ack(vec![pos("f", 4)]), all)
            .unwrap();
        let ours: BTreeMap<String, (u64, Hash)> = [("f".to_string(), (3, [3; 32]))].into();
        let compare = c.poll_compare(&ours);
        assert_eq!(
            compare,
            vec![(pos("f", 2), None)],
            "the Hello's position, to look up; the newest ack is beyond our head"
        );
        assert!(
            c.poll_compare(&ours).is_empty(),
            "each report is taken once"
        );
        assert!(c.diverges(&pos("f", 2), &[9; 32]));
        assert_eq!(c.held_back("f"), Some(2));
        assert!(!c.diverges(&pos("f", 2), &[9; 32]), "once per feed");
        c.handle_message(3, Session::ack(vec![pos("f", 3)]), all)
            .unwrap();
        assert!(c.poll_compare(&ours).is_empty(), "a diverged feed is done");
    }

    #[test]
    fn checkpoints_go_out_when_held_and_at_most_once_per_interval() {
        let mut c = Connection::new("me", "b", 0);
        c.handle_message(0, Session::hello("b", &[pos("f", 4)]), all)
            .unwrap();
        let offer = |size, signatures| CheckpointOffer {
            feed: "f".into(),
            size,
            signatures,
        };
        assert!(c.poll_checkpoints(0, &[offer(9, 1)]).is_empty(), "not held");
        assert_eq!(c.poll_checkpoints(0, &[offer(5, 1)]), vec![0]);
        assert!(c.poll_checkpoints(1, &[offer(5, 1)]).is_empty(), "sent");
        assert!(c.poll_checkpoints(1, &[offer(5, 2)]).is_empty(), "too soon");
        assert_eq!(c.poll_timeout(), Some(CHECKPOINT_SEND_INTERVAL_US));
        assert_eq!(
            c.poll_checkpoints(CHECKPOINT_SEND_INTERVAL_US, &[offer(5, 2)]),
            vec![0],
            "a new cosignature is news"
        );
        c.hold_back("f", 3);
        assert!(c.poll_checkpoints(u64::MAX / 2, &[offer(5, 3)]).is_empty());
    }

    #[test]
    fn evidence_goes_once_to_a_peer_that_holds_the_feed() {
        let mut c = Connection::new("me", "b", 0);
        c.handle_message(0, Session::hello("b", &[]), all).unwrap();
        assert!(!c.evidence_due("f"), "the peer holds none of it");
        c.handle_message(1, Session::ack(vec![pos("f", 0)]), all)
            .unwrap();
        assert!(c.evidence_due("f") && c.equivocation_due("f"));
        c.evidence_sent("f");
        c.equivocation_sent("f");
        assert!(!c.evidence_due("f") && !c.equivocation_due("f"));
    }

    #[test]
    fn a_flood_of_frames_is_a_protocol_violation() {
        let mut c = Connection::new("me", "b", 0);
        c.handle_message(0, Session::hello("b", &[]), all).unwrap();
        for i in 1..PEER_FRAMES_PER_SECOND_MAX {
            c.handle_message(i as u64, Session::ack(vec![]), all)
                .unwrap();
        }
        assert_eq!(
            c.handle_message(10, Session::ack(vec![]), all),
            Err(ProtocolError::Flood)
        );
        let mut back = Connection::new("me", "b", 0);
        back.handle_message(10_000_000, Session::hello("b", &[]), all)
            .unwrap();
        for _ in 0..2 * PEER_FRAMES_PER_SECOND_MAX {
            // The clock stepped back (before the window's start): a new window.
            back.handle_message(5_000_000, Session::ack(vec![]), all)
                .unwrap();
            back.handle_message(10_000_000, Session::ack(vec![]), all)
                .unwrap();
        }
        let mut d = Connection::new("me", "b", 0);
        d.handle_message(0, Session::hello("b", &[]), all).unwrap();
        for i in 1..2 * PEER_FRAMES_PER_SECOND_MAX as u64 {
            // Spread over two seconds: no flood.
            d.handle_message(
                i * (FLOOD_WINDOW_US / PEER_FRAMES_PER_SECOND_MAX as u64),
                Session::ack(vec![]),
                all,
            )
            .unwrap();
        }
    }

    /// The worst mixes of sizes: just under the target of small events,
    /// then maximal ones, then small again. Every frame must encode within
    /// `FRAME_BYTES_MAX` and the frames must carry every event in order.
    #[test]
    fn frames_never_exceed_the_frame_limit_whatever_the_mix_of_sizes() {
        use crate::core::limits::ENVELOPE_BYTES_MAX;
        use crate::core::wire::FRAME_BYTES_MAX;
        let small = 1_000;
        let mixes: Vec<Vec<usize>> = vec![
            // ~255 KiB of small events, then one maximal event (the finding).
            [vec![small; 255], vec![ENVELOPE_BYTES_MAX]].concat(),
            [
                vec![small; 261],
                vec![ENVELOPE_BYTES_MAX; 2],
                vec![small; 3],
            ]
            .concat(),
            vec![ENVELOPE_BYTES_MAX; 3],
            [vec![FRAME_TARGET_BYTES - 10], vec![ENVELOPE_BYTES_MAX]].concat(),
            vec![10; 3 * FRAME_EVENTS_MAX + 1],
        ];
        for sizes in mixes {
            let envelopes: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| vec![i as u8; n])
                .collect();
            let framed = frames(envelopes.clone());
            for frame in &framed {
                assert!(frame.len() <= FRAME_EVENTS_MAX);
                // With the largest seal a frame may carry.
                let seal = crate::core::wire::Seal {
                    end: u64::MAX,
                    note: serde_bytes::ByteBuf::from(vec![
                        b'x';
                        crate::core::wire::SEAL_NOTE_BYTES_MAX
                    ]),
                    proof: vec![[0xff; 32]; crate::core::wire::PROOF_HASHES_MAX],
                };
                let body = postcard::to_allocvec(&PeerMessage::Events {
                    events: frame.clone(),
                    seals: vec![seal],
                })
                .unwrap();
                assert!(
                    body.len() <= FRAME_BYTES_MAX,
                    "a frame of {} events encodes to {} bytes, over {FRAME_BYTES_MAX}",
                    frame.len(),
                    body.len()
                );
            }
            let back: Vec<Vec<u8>> = framed.into_iter().flatten().map(|b| b.into_vec()).collect();
            assert_eq!(back, envelopes, "every event, once, in order");
        }
    }
}
