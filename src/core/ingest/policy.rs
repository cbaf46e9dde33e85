//! What an ingest tolerates from a sender that is not at fault, and what it
//! reports back.

use std::collections::HashMap;

use crate::core::verify::{Check, Rejection};

/// How an ingest treats what a sender sends, beyond the checks every event
/// passes.
#[derive(Debug, Clone, Default)]
pub struct IngestPolicy {
    /// The peer the events came from (`None`: a local import). An event
    /// whose previous hash does not match this node's history is that
    /// peer's fault only if the peer is the feed's author: a relay forwards
    /// what the author signed.
    pub sender: Option<String>,
    /// Per feed, the sequence number from which its events are skipped
    /// unread: the sender holds another branch of it from there, so
    /// whatever else it sends of it cannot apply. Events below (copies, or
    /// the sender's side of the fork) are still taken.
    pub skip_feeds: HashMap<String, u64>,
}

/// A rejection that is not the sender's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tolerated {
    /// The feed forked; nothing from the fork on is taken.
    Forked,
    /// A validly signed event that does not follow this node's history of
    /// the feed (the author signed two histories), sent by a relay.
    Conflict,
    /// An event at or after the cut-off of its author's revocation, sent by
    /// a relay, which may have taken it before it knew of the revocation.
    Revoked,
}

impl IngestPolicy {
    /// The policy for events received from `peer`.
    pub fn from_peer(peer: &str, skip_feeds: HashMap<String, u64>) -> IngestPolicy {
        IngestPolicy {
            sender: Some(peer.to_string()),
            skip_feeds,
        }
    }

    /// Whether the event `feed`/`seq` is skipped unread.
    pub fn skips(&self, feed: &str, seq: u64) -> bool {
        self.skip_feeds.get(feed).is_some_and(|&from| seq >= from)
    }

    /// Skips `feed` from `seq` on (or from earlier, if already skipped).
    pub fn skip_from(&mut self, feed: &str, seq: u64) {
        let from = self.skip_feeds.entry(feed.to_string()).or_insert(seq);
        *from = (*from).min(seq);
    }

    /// Whether rejecting an event of `author` for `rejection` leaves the
    /// sender blameless, and why. Signatures are checked before previous
    /// hashes, so a previous-hash rejection means the author signed it.
    pub fn tolerates(&self, author: &str, rejection: &Rejection) -> Option<Tolerated> {
        match rejection.check {
            Check::Fork => Some(Tolerated::Forked),
            Check::PreviousHash if self.sender.as_deref().is_some_and(|s| s != author) => {
                Some(Tolerated::Conflict)
            }
            Check::Revoked if self.sender.as_deref().is_some_and(|s| s != author) => {
                Some(Tolerated::Revoked)
            }
            _ => None,
        }
    }

    /// Whether `sender` relays `feed` (a peer that is not its author).
    pub(super) fn relays(&self, feed: &str) -> bool {
        self.sender.as_deref().is_some_and(|s| s != feed)
    }
}

/// What an ingest applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Events verified and committed.
    pub applied: usize,
    /// Events already held (skipped: applied exactly once).
    pub duplicates: usize,
    /// Forks detected and recorded as evidence.
    pub forks: usize,
    /// Events not applied because their feed forked, or because the sender
    /// holds another branch of it (see [`IngestPolicy`]); not the sender's
    /// fault, so the rest of the batch was applied.
    pub skipped: usize,
    /// Forks recorded by this ingest: (feed, sequence number).
    pub new_forks: Vec<(String, u64)>,
    /// Feeds whose events did not follow this node's history although the
    /// author signed them (the author signed two histories); sent by a
    /// relay, which is not at fault. The driver stops taking those feeds
    /// from that sender and compares histories to obtain fork evidence.
    pub conflicts: Vec<(String, Rejection)>,
    /// Events a relay sent that are at or after the cut-off of their
    /// author's revocation: refused, and the feed skipped from there on from
    /// that sender (it is not at fault: it may have taken them before it
    /// knew of the revocation).
    pub revoked: Vec<(String, Rejection)>,
    /// Why ingest stopped early, if it did: the first event that failed
    /// verification (nothing after it was looked at).
    pub rejected: Option<Rejection>,
    /// The feed of the rejected event, when it decoded far enough to say.
    pub rejected_feed: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(check: Check) -> Rejection {
        Rejection {
            seq: Some(3),
            check,
            expected: String::new(),
            found: String::new(),
        }
    }

    #[test]
    fn only_a_relay_is_forgiven_events_past_a_revocation_cut_off() {
        let from_b = IngestPolicy::from_peer("b", HashMap::new());
        assert_eq!(
            from_b.tolerates("a", &rejection(Check::Revoked)),
            Some(Tolerated::Revoked),
            "b may have taken a's events before it knew of the revocation"
        );
        assert_eq!(
            from_b.tolerates("b", &rejection(Check::Revoked)),
            None,
            "b sending its own events past its cut-off is b's doing"
        );
    }

    #[test]
    fn only_a_relay_is_forgiven_a_conflicting_history() {
        let from_b = IngestPolicy::from_peer("b", HashMap::new());
        assert_eq!(
            from_b.tolerates("a", &rejection(Check::PreviousHash)),
            Some(Tolerated::Conflict),
            "b relays a's feed: a signed both histories"
        );
        assert_eq!(
            from_b.tolerates("b", &rejection(Check::PreviousHash)),
            None,
            "b's own feed not following its history is b's doing"
        );
        assert_eq!(
            from_b.tolerates("a", &rejection(Check::Fork)),
            Some(Tolerated::Forked)
        );
        for check in [
            Check::Signature,
            Check::Sequence,
            Check::Decode,
            Check::Author,
            Check::PayloadHash,
        ] {
            assert_eq!(from_b.tolerates("a", &rejection(check)), None, "{check:?}");
        }
        let local = IngestPolicy::default();
        assert_eq!(local.tolerates("a", &rejection(Check::PreviousHash)), None);
    }

    #[test]
    fn skipping_starts_at_the_earliest_point_and_spares_what_lies_below() {
        let mut policy = IngestPolicy::from_peer("b", HashMap::new());
        policy.skip_from("a", 9);
        policy.skip_from("a", 12);
        assert!(
            !policy.skips("a", 8),
            "the sender's side of the fork still arrives"
        );
        assert!(policy.skips("a", 9) && policy.skips("a", 40));
        policy.skip_from("a", 5);
        assert!(policy.skips("a", 5));
        assert!(!policy.skips("c", 100));
    }
}
