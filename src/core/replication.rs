//! The replication session with one peer, sans-IO.
//!
//! It reads no clock and touches no socket or disk: the driver passes in the
//! time, the messages that arrived and the local heads, and gets back what to
//! send. That makes it testable in a seeded simulation that drops, delays,
//! duplicates and reorders messages and crashes nodes
//! (`tests/replication_sim.rs`).
//!
//! The protocol (`docs/PROTOCOL.md`): each side opens with `Hello` carrying
//! the head of every feed it holds. Each side then sends what the other lacks,
//! oldest first, feed by feed, in bounded `Events` frames, and keeps pushing
//! new events as they are committed locally. The receiver verifies and
//! commits, then answers with a cumulative `Ack` of its heads. A sender's
//! view of the peer (`peer_next`) advances only on `Hello` and `Ack`; at most
//! [`REPLICATION_WINDOW_EVENTS`] events are in flight, and if no
//! acknowledgement arrives for [`RETRANSMIT_AFTER_US`] (over QUIC,
//! [`RETRANSMIT_AFTER_ON_RELIABLE_US`]) the sender rewinds to
//! what was acknowledged and sends again (receivers apply each event once).
//!
//! A [`Connection`] wraps the session with the rest of one connection's
//! state; drivers use one per connection.

use std::collections::BTreeMap;

mod connection;

pub use connection::{
    CHECKPOINT_SEND_INTERVAL_US, CheckpointOffer, Connection, PEER_FRAMES_PER_SECOND_MAX, frames,
};

use super::checkpoint::Equivocation;
use super::codec::check_service_name;
use super::limits::SEQ_MAX;
use super::wire::{
    FRAME_FEEDS_MAX, FRAME_SEALS_MAX, FeedPosition, PROOF_HASHES_MAX, PROTOCOL_VERSION,
    PeerMessage, REPLICATION_WINDOW_EVENTS, SEAL_NOTE_BYTES_MAX, Seal,
};

/// How long a sender waits for acknowledgement progress before resending
/// everything unacknowledged, on a transport that may lose messages (the
/// simulation's). [`Session::new`] uses it.
pub const RETRANSMIT_AFTER_US: u64 = 2_000_000;
/// The same over QUIC, which already delivers every byte of the stream or
/// closes the connection: acknowledgements that lag (a loaded receiver, a
/// slow path) are no reason to send everything again, which only doubled
/// the traffic where the path was already the bottleneck. A rewind here is
/// a last resort against a receiver that dropped events without saying so.
pub const RETRANSMIT_AFTER_ON_RELIABLE_US: u64 = 30_000_000;

/// How long a third party's events wait before they are relayed. In a mesh
/// the author delivers them directly well within this, and the peer's
/// cumulative `Ack` then says so, so relays rarely send duplicates; without a
/// direct link the relay still delivers them, this much later.
pub const RELAY_DELAY_US: u64 = 500_000;
/// A third party's feed is relayed to a peer only if the peer has not
/// taken events of it from anyone else (its `Ack` passing what we sent it)
/// for this long. In a mesh under load the author's link delivers the
/// feed and the peer's acknowledgements keep moving past what a relay
/// sent, so the relay stays quiet instead of sending every event a second
/// time; when the author's link stalls (or is gone) the peer stops moving,
/// and the relay takes over this much later.
pub const RELAY_AFTER_PEER_STALLED_US: u64 = RELAY_DELAY_US;
/// Head samples kept per relayed feed (bounds [`Session::relay_heads`]).
const RELAY_HISTORY_MAX: usize = 64;
/// Most feeds one session tracks for its peer. `Hello` and `Ack` may each
/// name up to [`FRAME_FEEDS_MAX`] feeds, and the driver passes on only
/// positions of feeds this node holds, so an honest peer never reaches this;
/// it bounds a session's memory whatever a peer sends.
pub const SESSION_FEEDS_MAX: usize = 4 * FRAME_FEEDS_MAX;

/// A contiguous run of one feed's events to send: `from..=to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRange {
    pub feed: String,
    pub from: u64,
    pub to: u64,
}

/// A peer broke the protocol: the driver closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("peer sent {0} before Hello")]
    BeforeHello(&'static str),
    #[error("peer sent a second Hello")]
    DuplicateHello,
    #[error("peer speaks protocol version {found}, this node {PROTOCOL_VERSION}")]
    Version { found: u32 },
    #[error("peer says it is {found}, but its certificate names {expected}")]
    WrongService { expected: String, found: String },
    #[error("peer listed {found} feeds, over the limit of {FRAME_FEEDS_MAX}")]
    TooManyFeeds { found: usize },
    #[error("peer named an invalid feed: {0}")]
    BadFeedName(String),
    #[error("peer sent a proof of {found} hashes, over the limit of {PROOF_HASHES_MAX}")]
    ProofTooLong { found: usize },
    #[error("peer sent {found} seals in one frame, over the limit of {FRAME_SEALS_MAX}")]
    TooManySeals { found: usize },
    #[error(
        "peer sent a seal whose note is {found} bytes, over the limit of {SEAL_NOTE_BYTES_MAX}"
    )]
    SealTooLarge { found: usize },
    #[error("more than {PEER_FRAMES_PER_SECOND_MAX} frames in one second")]
    Flood,
}

/// An `Events` frame carries at most [`FRAME_SEALS_MAX`] seals, each with a
/// note of at most [`SEAL_NOTE_BYTES_MAX`] bytes and a proof of at most
/// [`PROOF_HASHES_MAX`] hashes. What they vouch for is checked at ingest.
pub fn check_seals(seals: &[Seal]) -> Result<(), ProtocolError> {
    if seals.len() > FRAME_SEALS_MAX {
        return Err(ProtocolError::TooManySeals { found: seals.len() });
    }
    for seal in seals {
        if seal.note.len() > SEAL_NOTE_BYTES_MAX {
            return Err(ProtocolError::SealTooLarge {
                found: seal.note.len(),
            });
        }
        if seal.proof.len() > PROOF_HASHES_MAX {
            return Err(ProtocolError::ProofTooLong {
                found: seal.proof.len(),
            });
        }
    }
    Ok(())
}

/// A `Hello` or `Ack` names at most [`FRAME_FEEDS_MAX`] feeds, each a
/// valid service name with a sequence number within the limits.
pub fn check_positions(heads: &[FeedPosition]) -> Result<(), ProtocolError> {
    if heads.len() > FRAME_FEEDS_MAX {
        return Err(ProtocolError::TooManyFeeds { found: heads.len() });
    }
    for head in heads {
        check_service_name(&head.feed).map_err(ProtocolError::BadFeedName)?;
        if head.seq > SEQ_MAX {
            return Err(ProtocolError::BadFeedName(format!(
                "feed {} at sequence {}, beyond the highest sequence number {SEQ_MAX}",
                head.feed, head.seq
            )));
        }
    }
    Ok(())
}

/// What an incoming message asks of the driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Nothing to do beyond polling for sends.
    Nothing,
    /// The peer's `Hello` arrived ([`Connection`] only): it holds this
    /// node's own feed up to `own_head` (`None`: none of it).
    Established { own_head: Option<u64> },
    /// Verify and commit these envelopes, authenticating format-2 runs with
    /// the seals, then send [`Session::ack`].
    Events(Vec<Vec<u8>>, Vec<Seal>),
    /// Fork evidence: check that both envelopes are validly signed by one
    /// author at one sequence number with different hashes, record it and
    /// pass it on to the other peers.
    Fork(Vec<u8>, Vec<u8>),
    /// A checkpoint: check it against the local tree, merge and cosign it.
    Checkpoint(Vec<u8>),
    /// Equivocation evidence: check and record it, freeze the feed.
    Equivocation(Box<Equivocation>),
}

/// One side of a replication session.
#[derive(Debug, Clone)]
pub struct Session {
    peer: String,
    /// Per feed, the first sequence number the peer does not hold (its head
    /// plus one), as it told us in `Hello` and `Ack`. Only ever grows.
    peer_next: BTreeMap<String, u64>,
    /// Per feed, the next sequence number to send (at least `peer_next`).
    send_next: BTreeMap<String, u64>,
    hello_received: bool,
    /// When acknowledgement last made progress (or the session started).
    last_progress_us: u64,
    /// How many times unacknowledged events were sent again.
    retransmits: u64,
    /// How long acknowledgements may stall before a rewind.
    retransmit_after_us: u64,
    /// The peer's own feed as its `Hello` reported it (first missing
    /// sequence number; 0 if it holds none).
    peer_own_next_at_hello: Option<u64>,
    /// Sequence numbers of the peer's own feed below this are sent to it: it
    /// lost (part of) its store and recovers its feed from us. Fixed at the
    /// first send after `Hello`, so an author is never sent back the events
    /// it is still proclaiming.
    own_feed_recovery_limit: Option<u64>,
    /// Per third-party feed, when this node held which head (oldest first).
    relay_history: BTreeMap<String, std::collections::VecDeque<(u64, u64)>>,
    /// Per feed, when the peer last acknowledged events of it beyond what
    /// this node had sent it: it took them from someone else (the author,
    /// or another relay). See [`RELAY_AFTER_PEER_STALLED_US`].
    fed_elsewhere_at_us: BTreeMap<String, u64>,
    /// Feeds not sent to this peer any more: the peer holds another branch
    /// of them (a split view) or they forked. Sending past the point where
    /// the branches part would only be refused.
    held_back: BTreeMap<String, u64>,
}

impl Session {
    /// A session with `peer` (the service its certificate names).
    pub fn new(peer: &str, now_us: u64) -> Session {
        Session {
            peer: peer.to_string(),
            peer_next: BTreeMap::new(),
            send_next: BTreeMap::new(),
            hello_received: false,
            last_progress_us: now_us,
            retransmits: 0,
            retransmit_after_us: RETRANSMIT_AFTER_US,
            peer_own_next_at_hello: None,
            own_feed_recovery_limit: None,
            relay_history: BTreeMap::new(),
            fed_elsewhere_at_us: BTreeMap::new(),
            held_back: BTreeMap::new(),
        }
    }

    /// A session whose transport delivers reliably (QUIC): it rewinds only
    /// after [`RETRANSMIT_AFTER_ON_RELIABLE_US`] without progress.
    pub fn over_reliable_transport(peer: &str, now_us: u64) -> Session {
        Session {
            retransmit_after_us: RETRANSMIT_AFTER_ON_RELIABLE_US,
            ..Session::new(peer, now_us)
        }
    }

    /// Sends no event of `feed` at or beyond `from` to this peer any more
    /// (it holds another branch there, or the feed forked at `from`).
    pub fn hold_back(&mut self, feed: &str, from: u64) {
        let limit = self.held_back.entry(feed.to_string()).or_insert(from);
        *limit = (*limit).min(from);
    }

    /// Takes back the events of `feed` from `next` on that [`Self::poll_send`]
    /// handed out but the driver could not send yet (no checkpoint it holds
    /// covers them): the next `poll_send` offers them again.
    pub fn rewind_send(&mut self, feed: &str, next: u64) {
        let acked = self.peer_next.get(feed).copied().unwrap_or(0);
        if let Some(send_next) = self.send_next.get_mut(feed) {
            *send_next = (*send_next).min(next).max(acked);
        }
    }

    /// Where sending `feed` stops, if it was held back.
    pub fn held_back(&self, feed: &str) -> Option<u64> {
        self.held_back.get(feed).copied()
    }

    /// The peer's service name.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Whether the peer's `Hello` has arrived.
    pub fn established(&self) -> bool {
        self.hello_received
    }

    /// The opening message.
    pub fn hello(service: &str, local_heads: &[FeedPosition]) -> PeerMessage {
        PeerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            service: service.to_string(),
            heads: local_heads.to_vec(),
        }
    }

    /// The acknowledgement to send after committing received events.
    pub fn ack(heads: Vec<FeedPosition>) -> PeerMessage {
        PeerMessage::Ack { heads }
    }

    /// Handles one message from the peer.
    pub fn on_message(
        &mut self,
        now_us: u64,
        message: PeerMessage,
    ) -> Result<Received, ProtocolError> {
        match message {
            PeerMessage::Hello {
                protocol,
                service,
                heads,
            } => {
                if self.hello_received {
                    return Err(ProtocolError::DuplicateHello);
                }
                if protocol != PROTOCOL_VERSION {
                    return Err(ProtocolError::Version { found: protocol });
                }
                if service != self.peer {
                    return Err(ProtocolError::WrongService {
                        expected: self.peer.clone(),
                        found: service,
                    });
                }
                check_positions(&heads)?;
                self.hello_received = true;
                self.last_progress_us = now_us;
                self.peer_own_next_at_hello = Some(
                    heads
                        .iter()
                        .find(|h| h.feed == self.peer)
                        .map(|h| h.seq + 1)
                        .unwrap_or(0),
                );
                for head in heads {
                    // What the peer holds at the start counts as taken from
                    // elsewhere: a relay first gives the author its chance.
                    self.advance(&head.feed, head.seq + 1, now_us);
                    self.fed_elsewhere_at_us.insert(head.feed.clone(), now_us);
                }
                // Start sending from what the peer holds, whatever an
                // earlier connection had in flight.
                self.send_next = self.peer_next.clone();
                Ok(Received::Nothing)
            }
            PeerMessage::Ack { heads } => {
                if !self.hello_received {
                    return Err(ProtocolError::BeforeHello("Ack"));
                }
                check_positions(&heads)?;
                let mut progressed = false;
                for head in heads {
                    progressed |= self.advance(&head.feed, head.seq + 1, now_us);
                }
                if progressed {
                    self.last_progress_us = now_us;
                }
                Ok(Received::Nothing)
            }
            PeerMessage::Events { events, seals } => {
                if !self.hello_received {
                    return Err(ProtocolError::BeforeHello("Events"));
                }
                check_seals(&seals)?;
                Ok(Received::Events(
                    events.into_iter().map(|b| b.into_vec()).collect(),
                    seals,
                ))
            }
            PeerMessage::Fork { first, second } => {
                if !self.hello_received {
                    return Err(ProtocolError::BeforeHello("Fork"));
                }
                Ok(Received::Fork(first.into_vec(), second.into_vec()))
            }
            PeerMessage::Checkpoint { note } => {
                if !self.hello_received {
                    return Err(ProtocolError::BeforeHello("Checkpoint"));
                }
                Ok(Received::Checkpoint(note.into_vec()))
            }
            PeerMessage::Equivocation {
                first,
                second,
                prefix_root,
                proof,
            } => {
                if !self.hello_received {
                    return Err(ProtocolError::BeforeHello("Equivocation"));
                }
                if proof.len() > PROOF_HASHES_MAX {
                    return Err(ProtocolError::ProofTooLong { found: proof.len() });
                }
                Ok(Received::Equivocation(Box::new(Equivocation {
                    first: first.into_vec(),
                    second: second.into_vec(),
                    prefix_root,
                    proof,
                })))
            }
        }
    }

    /// Records that the peer holds `feed` below `next`; returns whether that
    /// is news. Positions of feeds beyond [`SESSION_FEEDS_MAX`] are ignored.
    fn advance(&mut self, feed: &str, next: u64, now_us: u64) -> bool {
        if !self.peer_next.contains_key(feed) && self.peer_next.len() >= SESSION_FEEDS_MAX {
            return false;
        }
        let known = self.peer_next.entry(feed.to_string()).or_insert(0);
        if next <= *known {
            return false;
        }
        *known = next;
        let send = self.send_next.entry(feed.to_string()).or_insert(0);
        if next > *send {
            // The peer holds more than we sent it: someone else feeds it.
            self.fed_elsewhere_at_us.insert(feed.to_string(), now_us);
        }
        *send = (*send).max(next);
        true
    }

    /// Events sent but not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.send_next
            .iter()
            .map(|(feed, send)| send.saturating_sub(self.peer_next.get(feed).copied().unwrap_or(0)))
            .sum()
    }

    /// What to send next, given the local heads (feed to head sequence
    /// number): oldest first per feed, within the window. Marks it sent.
    /// The peer's own feed is sent to it only if its `Hello` showed it lacks
    /// part of it (it lost its store and is recovering).
    pub fn poll_send(&mut self, local_heads: &BTreeMap<String, u64>) -> Vec<SendRange> {
        if !self.hello_received {
            return Vec::new();
        }
        if self.own_feed_recovery_limit.is_none() {
            let ours = local_heads.get(&self.peer).map(|h| h + 1).unwrap_or(0);
            let theirs = self.peer_own_next_at_hello.unwrap_or(0);
            self.own_feed_recovery_limit = Some(if theirs < ours { ours } else { 0 });
        }
        let mut budget = REPLICATION_WINDOW_EVENTS.saturating_sub(self.in_flight());
        let mut ranges = Vec::new();
        for (feed, &head) in local_heads {
            if budget == 0 {
                break;
            }
            let mut head = head;
            if *feed == self.peer {
                // An author holds its own feed; it gets it back only when it
                // lost it (recovery), and only what it lacked then.
                match self.own_feed_recovery_limit {
                    Some(limit) if limit > 0 => head = head.min(limit - 1),
                    _ => continue,
                }
            }
            if let Some(limit) = self.held_back.get(feed) {
                match limit.checked_sub(1) {
                    Some(last) => head = head.min(last),
                    None => continue,
                }
            }
            let next = self.send_next.get(feed).copied().unwrap_or(0);
            if next > head {
                continue;
            }
            let to = head.min(next + budget - 1);
            budget -= to - next + 1;
            self.send_next.insert(feed.clone(), to + 1);
            ranges.push(SendRange {
                feed: feed.clone(),
                from: next,
                to,
            });
        }
        ranges
    }

    /// The heads to offer the peer at `now_us`: this node's own feed and the
    /// peer's own feed as they are; every third party's feed as it was
    /// [`RELAY_DELAY_US`] ago (see there), and only while the peer takes
    /// none of it from elsewhere ([`RELAY_AFTER_PEER_STALLED_US`]). The
    /// second value is when a held back head becomes sendable, if one is
    /// held back.
    pub fn relay_heads(
        &mut self,
        local_heads: &BTreeMap<String, u64>,
        own_service: &str,
        now_us: u64,
    ) -> (BTreeMap<String, u64>, Option<u64>) {
        let mut offer = BTreeMap::new();
        let mut wake: Option<u64> = None;
        for (feed, &head) in local_heads {
            if feed == own_service || *feed == self.peer {
                offer.insert(feed.clone(), head);
                continue;
            }
            if let Some(&fed_at) = self.fed_elsewhere_at_us.get(feed) {
                let due = fed_at + RELAY_AFTER_PEER_STALLED_US;
                if now_us < due {
                    // Offer nothing of it now; what was sent stays in flight.
                    wake = Some(wake.map_or(due, |w| w.min(due)));
                    // Keep the head history going for when the peer stalls.
                    let history = self.relay_history.entry(feed.clone()).or_default();
                    if history.back().is_none_or(|&(_, h)| h < head) {
                        history.push_back((now_us, head));
                        if history.len() > RELAY_HISTORY_MAX {
                            history.pop_front();
                        }
                    }
                    continue;
                }
            }
            let history = self.relay_history.entry(feed.clone()).or_default();
            if history.back().is_none_or(|&(_, h)| h < head) {
                history.push_back((now_us, head));
                if history.len() > RELAY_HISTORY_MAX {
                    history.pop_front();
                }
            }
            // The newest head held for at least the delay.
            let cutoff = now_us.saturating_sub(RELAY_DELAY_US);
            while history.len() > 1 && history[1].0 <= cutoff {
                history.pop_front();
            }
            match history.front() {
                Some(&(at, h)) if at <= cutoff => {
                    offer.insert(feed.clone(), h);
                    if let Some(&(next_at, _)) = history.get(1) {
                        let due = next_at + RELAY_DELAY_US;
                        wake = Some(wake.map_or(due, |w| w.min(due)));
                    }
                }
                Some(&(at, _)) => {
                    let due = at + RELAY_DELAY_US;
                    wake = Some(wake.map_or(due, |w| w.min(due)));
                }
                None => {}
            }
        }
        (offer, wake)
    }

    /// When the driver should call [`Self::handle_timeout`], if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        (self.in_flight() > 0).then_some(self.last_progress_us + self.retransmit_after_us)
    }

    /// If acknowledgements stalled, rewinds to what the peer acknowledged
    /// so the next [`Self::poll_send`] sends it again.
    pub fn handle_timeout(&mut self, now_us: u64) {
        if self.in_flight() > 0 && now_us >= self.last_progress_us + self.retransmit_after_us {
            self.send_next = self.peer_next.clone();
            self.last_progress_us = now_us;
            self.retransmits += 1;
        }
    }

    /// Events the peer still lacks, given the local heads.
    pub fn backlog(&self, local_heads: &BTreeMap<String, u64>) -> u64 {
        local_heads
            .iter()
            .filter(|(feed, _)| **feed != self.peer)
            .map(|(feed, head)| {
                let end = match self.held_back.get(feed) {
                    Some(&limit) => (head + 1).min(limit),
                    None => head + 1,
                };
                end.saturating_sub(self.peer_next.get(feed).copied().unwrap_or(0))
            })
            .sum()
    }

    /// Per feed, the first sequence number the peer does not hold.
    pub fn acknowledged(&self) -> &BTreeMap<String, u64> {
        &self.peer_next
    }

    /// The head of its own feed the peer reported in `Hello` (`Some(None)`:
    /// it holds none), once `Hello` arrived.
    pub fn peer_own_head_at_hello(&self) -> Option<Option<u64>> {
        self.peer_own_next_at_hello.map(|n| n.checked_sub(1))
    }

    /// How many times this session resent unacknowledged events.
    pub fn retransmits(&self) -> u64 {
        self.retransmits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(feed: &str, seq: u64) -> FeedPosition {
        FeedPosition {
            feed: feed.into(),
            seq,
            hash: [0; 32],
        }
    }

    fn heads(list: &[(&str, u64)]) -> BTreeMap<String, u64> {
        list.iter().map(|(f, s)| (f.to_string(), *s)).collect()
    }

    #[test]
    fn sends_only_what_the_peer_lacks_oldest_first() {
        let mut s = Session::new("b", 0);
        assert!(
            s.poll_send(&heads(&[("a", 9)])).is_empty(),
            "nothing before Hello"
        );
        s.on_message(0, Session::hello("b", &[pos("a", 4), pos("b", 7)]))
            .unwrap();
        let ranges = s.poll_send(&heads(&[("a", 9), ("b", 7), ("c", 2)]));
        assert_eq!(
            ranges,
            vec![
                SendRange {
                    feed: "a".into(),
                    from: 5,
                    to: 9
                },
                SendRange {
                    feed: "c".into(),
                    from: 0,
                    to: 2
                },
            ]
        );
        assert_eq!(s.in_flight(), 8);
        assert!(
            s.poll_send(&heads(&[("a", 9), ("c", 2)])).is_empty(),
            "already sent"
        );
    }

    #[test]
    fn acks_advance_and_timeouts_resend_only_the_unacknowledged() {
        let mut s = Session::new("b", 0);
        s.on_message(0, Session::hello("b", &[])).unwrap();
        let local = heads(&[("a", 9)]);
        s.poll_send(&local);
        s.on_message(10, Session::ack(vec![pos("a", 3)])).unwrap();
        assert_eq!(s.in_flight(), 6);
        assert_eq!(s.poll_timeout(), Some(10 + RETRANSMIT_AFTER_US));
        s.handle_timeout(10 + RETRANSMIT_AFTER_US - 1);
        assert!(s.poll_send(&local).is_empty(), "not yet");
        s.handle_timeout(10 + RETRANSMIT_AFTER_US);
        assert_eq!(
            s.poll_send(&local),
            vec![SendRange {
                feed: "a".into(),
                from: 4,
                to: 9
            }]
        );
        assert_eq!(s.retransmits(), 1);
        // An old, smaller ack never moves the cursor back.
        s.on_message(20, Session::ack(vec![pos("a", 1)])).unwrap();
        assert_eq!(s.acknowledged()["a"], 4);
        s.on_message(30, Session::ack(vec![pos("a", 9)])).unwrap();
        assert_eq!(
            (s.in_flight(), s.backlog(&local), s.poll_timeout()),
            (0, 0, None)
        );
    }

    #[test]
    fn an_author_that_lost_its_store_gets_its_feed_back_but_only_then() {
        let mut s = Session::new("b", 0);
        s.on_message(0, Session::hello("b", &[])).unwrap();
        assert_eq!(
            s.poll_send(&heads(&[("b", 4)])),
            vec![SendRange {
                feed: "b".into(),
                from: 0,
                to: 4
            }],
            "b holds none of its own feed: it is recovering"
        );
        // Events b proclaims after recovering are not echoed back.
        assert!(s.poll_send(&heads(&[("b", 9)])).is_empty());

        let mut healthy = Session::new("b", 0);
        healthy
            .on_message(0, Session::hello("b", &[pos("b", 4)]))
            .unwrap();
        assert!(healthy.poll_send(&heads(&[("b", 4)])).is_empty());
        assert!(
            healthy.poll_send(&heads(&[("b", 6)])).is_empty(),
            "never echo an author"
        );
        assert_eq!(healthy.peer_own_head_at_hello(), Some(Some(4)));
    }

    #[test]
    fn third_party_events_are_relayed_only_after_the_delay() {
        let mut s = Session::new("b", 0);
        let local = heads(&[("me", 3), ("b", 2), ("c", 5)]);
        let (offer, wake) = s.relay_heads(&local, "me", 1_000);
        assert_eq!(offer.get("me"), Some(&3));
        assert_eq!(offer.get("b"), Some(&2));
        assert_eq!(offer.get("c"), None, "c's events wait");
        assert_eq!(wake, Some(1_000 + RELAY_DELAY_US));
        let later = heads(&[("me", 3), ("b", 2), ("c", 9)]);
        let (offer, _) = s.relay_heads(&later, "me", 1_000 + RELAY_DELAY_US);
        assert_eq!(offer.get("c"), Some(&5), "only what was held a delay ago");
        let (offer, _) = s.relay_heads(&later, "me", 1_000 + 3 * RELAY_DELAY_US);
        assert_eq!(offer.get("c"), Some(&9));
    }

    #[test]
    fn a_peer_fed_by_someone_else_gets_no_relay_until_it_stalls() {
        let mut s = Session::new("b", 0);
        s.on_message(0, Session::hello("b", &[pos("c", 1)])).unwrap();
        // We hold c up to 50; b holds 1 and keeps taking c from c itself.
        let local = heads(&[("c", 50)]);
        let mut now = 2 * RELAY_DELAY_US;
        s.relay_heads(&local, "me", 0);
        for seq in [10, 20, 30] {
            s.on_message(now, Session::ack(vec![pos("c", seq)])).unwrap();
            assert!({ let offer = s.relay_heads(&local, "me", now).0; s.poll_send(&offer) }.is_empty(), "b is fed by c");
            now += RELAY_DELAY_US / 2;
        }
        // b stops moving (its link to c is down): the relay takes over.
        now += RELAY_AFTER_PEER_STALLED_US;
        let ranges = { let offer = s.relay_heads(&local, "me", now).0; s.poll_send(&offer) };
        assert_eq!(ranges.len(), 1);
        assert_eq!((ranges[0].from, ranges[0].to), (31, 50));
        // Acks of what we relayed are not "fed elsewhere": relaying goes on.
        s.on_message(now + 1, Session::ack(vec![pos("c", 40)])).unwrap();
        let more = heads(&[("c", 60)]);
        s.relay_heads(&more, "me", now + 1);
        let later = now + 2 * RELAY_DELAY_US;
        let ranges = { let offer = s.relay_heads(&more, "me", later).0; s.poll_send(&offer) };
        assert_eq!((ranges[0].from, ranges[0].to), (51, 60));
    }

    #[test]
    fn the_window_bounds_events_in_flight() {
        let mut s = Session::new("b", 0);
        s.on_message(0, Session::hello("b", &[])).unwrap();
        let local = heads(&[("a", 100_000)]);
        let sent: u64 = s.poll_send(&local).iter().map(|r| r.to - r.from + 1).sum();
        assert_eq!(sent, REPLICATION_WINDOW_EVENTS);
        assert!(s.poll_send(&local).is_empty());
        s.on_message(1, Session::ack(vec![pos("a", 99)])).unwrap();
        let more: u64 = s.poll_send(&local).iter().map(|r| r.to - r.from + 1).sum();
        assert_eq!(more, 100);
    }

    #[test]
    fn over_a_reliable_transport_lagging_acknowledgements_cause_no_resend() {
        let mut s = Session::over_reliable_transport("b", 0);
        s.on_message(0, Session::hello("b", &[])).unwrap();
        let local = heads(&[("a", 9)]);
        s.poll_send(&local);
        assert_eq!(s.poll_timeout(), Some(RETRANSMIT_AFTER_ON_RELIABLE_US));
        s.handle_timeout(RETRANSMIT_AFTER_US);
        assert!(s.poll_send(&local).is_empty(), "a lagging ack is no loss");
        assert_eq!(s.retransmits(), 0);
        s.handle_timeout(RETRANSMIT_AFTER_ON_RELIABLE_US);
        assert_eq!(s.retransmits(), 1, "the last resort still exists");
    }

    #[test]
    fn a_held_back_feed_is_sent_only_below_where_the_peer_parts_from_it() {
        let mut s = Session::new("b", 0);
        s.on_message(0, Session::hello("b", &[pos("a", 1)]))
            .unwrap();
        s.hold_back("a", 5);
        s.hold_back("a", 7);
        assert_eq!(s.held_back("a"), Some(5), "the earliest point wins");
        let local = heads(&[("a", 9), ("c", 0)]);
        assert_eq!(
            s.poll_send(&local),
            vec![
                SendRange {
                    feed: "a".into(),
                    from: 2,
                    to: 4
                },
                SendRange {
                    feed: "c".into(),
                    from: 0,
                    to: 0
                },
            ]
        );
        s.on_message(1, Session::ack(vec![pos("a", 4), pos("c", 0)]))
            .unwrap();
        assert_eq!(s.backlog(&local), 0, "nothing sendable is missing");
        assert!(s.poll_send(&local).is_empty());
        s.hold_back("c", 0);
        assert!(s.poll_send(&heads(&[("c", 3)])).is_empty());
    }

    #[test]
    fn positions_must_name_services_within_the_limits() {
        let mut s = Session::new("b", 0);
        assert!(matches!(
            s.on_message(0, Session::hello("b", &[pos("Not A Name", 1)])),
            Err(ProtocolError::BadFeedName(_))
        ));
        s.on_message(0, Session::hello("b", &[])).unwrap();
        assert!(matches!(
            s.on_message(1, Session::ack(vec![pos("a", SEQ_MAX + 1)])),
            Err(ProtocolError::BadFeedName(_))
        ));
        let many: Vec<FeedPosition> = (0..=FRAME_FEEDS_MAX)
            .map(|i| pos(&format!("f{i}"), 0))
            .collect();
        assert_eq!(
            s.on_message(1, Session::ack(many)),
            Err(ProtocolError::TooManyFeeds {
                found: FRAME_FEEDS_MAX + 1
            })
        );
    }

    #[test]
    fn a_session_tracks_a_bounded_number_of_feeds() {
        let mut s = Session::new("b", 0);
        s.on_message(0, Session::hello("b", &[])).unwrap();
        for round in 0..(SESSION_FEEDS_MAX / FRAME_FEEDS_MAX + 1) {
            let acks = (0..FRAME_FEEDS_MAX)
                .map(|i| pos(&format!("r{round}-{i}"), 0))
                .collect();
            s.on_message(1, Session::ack(acks)).unwrap();
        }
        assert_eq!(s.acknowledged().len(), SESSION_FEEDS_MAX);
    }

    #[test]
    fn protocol_violations_are_named() {
        let mut s = Session::new("b", 0);
        assert_eq!(
            s.on_message(
                0,
                PeerMessage::Events {
                    events: vec![],
                    seals: vec![]
                }
            ),
            Err(ProtocolError::BeforeHello("Events"))
        );
        assert!(matches!(
            s.on_message(0, Session::hello("mallory", &[])),
            Err(ProtocolError::WrongService { .. })
        ));
        let bad_version = PeerMessage::Hello {
            protocol: 99,
            service: "b".into(),
            heads: vec![],
        };
        assert_eq!(
            s.on_message(0, bad_version),
            Err(ProtocolError::Version { found: 99 })
        );
        s.on_message(0, Session::hello("b", &[])).unwrap();
        assert_eq!(
            s.on_message(0, Session::hello("b", &[])),
            Err(ProtocolError::DuplicateHello)
        );
    }
}
