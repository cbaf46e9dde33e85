//! The wire protocol's messages (see `docs/PROTOCOL.md`). Every message
//! travels as a frame: `len: u32 little-endian ‖ postcard(message)`, with
//! `len ≤ FRAME_BYTES_MAX` checked before anything is allocated.

use serde::{Deserialize, Serialize};

use super::crypto::Hash;
use super::limits::ENVELOPE_BYTES_MAX;

/// Version carried in `Hello`; peers with another version are refused.
pub const PROTOCOL_VERSION: u32 = 3;
/// ALPN of node-to-node connections (replication and queries).
pub const ALPN_PEER: &[u8] = b"herald-peer/1";
/// ALPN of command-line clients talking to a node.
pub const ALPN_CLIENT: &[u8] = b"herald-client/1";

/// Largest frame: one maximal event plus room for framing.
pub const FRAME_BYTES_MAX: usize = ENVELOPE_BYTES_MAX + 64 * 1024;
/// Most events in one `Events` frame.
pub const FRAME_EVENTS_MAX: usize = 512;
/// A sender stops adding events to a frame once it holds this many bytes.
pub const FRAME_TARGET_BYTES: usize = 256 * 1024;
/// Most feed positions in a `Hello` or `Ack`.
pub const FRAME_FEEDS_MAX: usize = 10_000;
/// Most hashes in a Merkle proof on the wire (a tree of 2^64 leaves needs 64).
pub const PROOF_HASHES_MAX: usize = 64;
/// Most seals in one `Events` frame (one per feed whose format-2 events it
/// carries; a frame carries one feed's run, so one is the norm).
pub const FRAME_SEALS_MAX: usize = 16;
/// Largest checkpoint note in a seal: the author's signature only (a
/// sender strips cosignatures, which travel in `Checkpoint` messages).
pub const SEAL_NOTE_BYTES_MAX: usize = 4 * 1024;
/// Events a sender may have in flight (sent, not yet acknowledged) per peer.
pub const REPLICATION_WINDOW_EVENTS: u64 = 16_384;

/// QUIC application close codes.
pub mod close {
    /// Orderly shutdown.
    pub const SHUTDOWN: u32 = 0;
    /// A frame did not decode, was out of place, or broke a limit.
    pub const PROTOCOL_VIOLATION: u32 = 1;
    /// An event failed verification (signature, certificate, decoding).
    pub const VERIFICATION_FAILED: u32 = 2;
    /// A frame's length prefix exceeded `FRAME_BYTES_MAX`.
    pub const FRAME_TOO_LARGE: u32 = 3;
    /// The peer's certificate or ALPN does not allow what it attempted.
    pub const UNAUTHORIZED: u32 = 4;
    /// Another version of the protocol.
    pub const VERSION_MISMATCH: u32 = 5;
}

/// Where a feed stands: its head's sequence number and hash. The hash lets
/// the receiver tell whether the sender holds the same history: a different
/// hash at a sequence number both hold is a split view (a fork by the
/// feed's author), answered with fork evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedPosition {
    pub feed: String,
    pub seq: u64,
    pub hash: Hash,
}

/// What authenticates a run of a feed's format-2 events in an `Events`
/// frame: the author's checkpoint of size `m ≥ end` and the consistency
/// proof from the feed's tree at `end` (the sequence number after the run's
/// last event) to it. The receiver extends its own tree by the run, which
/// must then be `end` events long, and checks the proof and the author's
/// signature: one signature check for the whole run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// Tree size at the end of the run.
    pub end: u64,
    /// The checkpoint as a C2SP signed note with the author's signature.
    pub note: serde_bytes::ByteBuf,
    /// Consistency proof from `end` to the checkpoint's size (empty when
    /// they are equal).
    pub proof: Vec<Hash>,
}

/// Messages on the replication stream (both directions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// First message each way: who I am and the head of every feed I hold.
    Hello {
        protocol: u32,
        service: String,
        heads: Vec<FeedPosition>,
    },
    /// Events the receiver lacks, each feed's in sequence order, and the
    /// seals that authenticate the format-2 events among them.
    Events {
        events: Vec<serde_bytes::ByteBuf>,
        seals: Vec<Seal>,
    },
    /// Cumulative acknowledgement: the heads the sender now holds durably.
    Ack { heads: Vec<FeedPosition> },
    /// Fork evidence: two envelopes of one author at one sequence number
    /// with different hashes, both validly signed. Self-proving, so every
    /// node that checks it freezes the feed, whoever relayed it.
    Fork {
        first: serde_bytes::ByteBuf,
        second: serde_bytes::ByteBuf,
    },
    /// A feed's latest checkpoint as a C2SP signed note: its author's
    /// signature and every cosignature the sender holds. Sent once the peer
    /// acknowledged the events it covers, and again when it gains
    /// signatures. The receiver checks it against its own copy of the feed,
    /// merges the cosignatures it can check and adds its own.
    Checkpoint { note: serde_bytes::ByteBuf },
    /// Evidence that a feed's author signed two checkpoints no consistency
    /// proof joins (a split view): self-proving, like `Fork`.
    Equivocation {
        first: serde_bytes::ByteBuf,
        second: serde_bytes::ByteBuf,
        prefix_root: Hash,
        proof: Vec<Hash>,
    },
}
