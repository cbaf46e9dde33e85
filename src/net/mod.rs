//! QUIC with mutual TLS 1.3: endpoints, certificate checks, framing.
//!
//! * [`tls`]: the node's [`TlsIdentity`], the rustls configurations and the
//!   certificate verifiers built on the cluster [`TrustAnchor`]. Every refusal
//!   (foreign CA, intermediates, revoked, expired or not yet valid, wrong
//!   name, wrong key usage, non-Ed25519) happens inside the TLS handshake.
//! * [`endpoint`]: binding, dialling and accepting connections, and
//!   [`authenticated_peer`], which turns a finished handshake plus the
//!   negotiated ALPN into an [`AuthenticatedPeer`].
//! * [`frame`]: `len: u32 LE ‖ postcard(message)` frames on QUIC streams,
//!   with `len ≤ FRAME_BYTES_MAX` checked before anything is allocated.
//!
//! A client cannot tell from `connect` alone that the server admitted its
//! certificate: in TLS 1.3 the client finishes first and the server refuses
//! afterwards. Treat a connection as authenticated only after the server has
//! answered, e.g. with [`open_exchange`].
//!
//! [`TrustAnchor`]: crate::identity::TrustAnchor

use std::net::SocketAddr;
use std::time::Duration;

use crate::core::cert::{AuthorCert, CertError};
use crate::core::wire::{FRAME_BYTES_MAX, close};
use crate::identity::IdentityError;

pub mod congestion;
pub mod endpoint;
pub mod frame;
pub mod live;
pub mod tls;

pub use endpoint::{accept, authenticated_peer, bind, bind_client, connect, open_exchange};
pub use frame::{read_frame, write_frame};
pub use live::{LiveTls, TlsState};
pub use tls::{TlsIdentity, client_config, server_config};

/// What the peer's certificate allows: a node (serves, replicates, authors
/// events) or a client (may only talk to a node with ALPN `herald-client/1`).
pub use crate::identity::CertRole as Role;

/// Most bidirectional streams a peer may have open at once on one connection:
/// the replication stream, `QUERIES_IN_PROGRESS_PER_PEER_MAX` (16, in
/// `src/node/streams.rs`) queries and one being opened (`herald` command-line clients use one stream per
/// request, one request at a time). Each stream the node reads may hold one
/// frame of up to `FRAME_BYTES_MAX` in memory, so this times
/// `FRAME_BYTES_MAX` bounds the frame memory of a connection (see
/// docs/SECURITY.md 6.7).
pub const MAX_CONCURRENT_BIDI_STREAMS: u32 = 18;
/// Most unidirectional streams a peer may open: none, the protocol uses only
/// bidirectional streams.
pub const MAX_CONCURRENT_UNI_STREAMS: u32 = 0;
/// Bytes a peer may send on one stream beyond what the node has read. The
/// replication stream's throughput is at most this per round trip (2 MiB
/// per 50 ms is 40 MB/s, far above what verification keeps up with); a
/// frame larger than the window still flows, as the reader drains it.
pub const STREAM_RECEIVE_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// Bytes a peer may send on all streams of a connection beyond what the node
/// has read: what QUIC buffers per connection at most. Room for the
/// replication stream's full window and as much again for queries.
pub const CONNECTION_RECEIVE_WINDOW_BYTES: u32 = 2 * STREAM_RECEIVE_WINDOW_BYTES;
/// Bytes the node buffers per connection for sending (written, not yet
/// acknowledged by the peer). Writers wait when it is full, so a peer that
/// stops reading costs at most this; it is the peer's receive window plus
/// room for retransmissions.
pub const SEND_WINDOW_BYTES: u64 = 2 * CONNECTION_RECEIVE_WINDOW_BYTES as u64;
/// Incoming connection attempts (Initial packets from new addresses) quinn
/// keeps before the node has looked at them; more are refused statelessly.
pub const INCOMING_PENDING_MAX: usize = 256;
/// Bytes quinn buffers per incoming connection attempt before the node
/// looks at it (a client's handshake flight is a few kilobytes).
pub const INCOMING_BUFFER_BYTES: u64 = 64 * 1024;
/// Bytes quinn buffers for all incoming connection attempts together.
pub const INCOMING_BUFFER_BYTES_TOTAL: u64 = 4 * 1024 * 1024;
/// Handshakes the node runs at once (accepted, not yet finished or timed
/// out after [`HANDSHAKE_TIMEOUT`]); more connection attempts are refused.
pub const HANDSHAKES_IN_PROGRESS_MAX: usize = 128;
/// Handshakes at once from one IP address, so one host holding handshakes
/// half-open cannot take every slot of [`HANDSHAKES_IN_PROGRESS_MAX`].
pub const HANDSHAKES_IN_PROGRESS_PER_IP_MAX: usize = 16;
/// QUIC declares a packet lost only once this many later packets were
/// acknowledged (or by time, see [`LOSS_TIME_THRESHOLD`]). Well above
/// QUIC's default of 3: on paths that reorder (different delays per packet)
/// the default declares packets lost that are merely late, and every such
/// spurious loss makes the congestion controller back off.
pub const LOSS_PACKET_THRESHOLD: u32 = 1_000;
/// A packet is declared lost once it is this many round trips older than
/// the latest acknowledged one (QUIC's default 9/8). Two round trips allow
/// for delay jitter of up to a round trip before a late packet counts as
/// lost.
pub const LOSS_TIME_THRESHOLD: f32 = 2.0;
/// A connection with no traffic for this long is closed. Keep-alives keep a
/// healthy but quiet connection open, so this is also how long it takes to
/// notice a peer that died without closing (SIGKILL, power loss): the node
/// that dials it redials only after that.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Interval of QUIC keep-alive pings on a quiet connection; well under
/// [`IDLE_TIMEOUT`] so a few lost pings do not drop it.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest a server waits for an incoming connection's handshake to finish.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a client waits to dial and finish the handshake with a server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a client waits for the server's first answer in
/// [`open_exchange`] (which is what proves the server admitted it).
pub const FIRST_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of a human-readable reason sent in a CONNECTION_CLOSE frame.
pub const CLOSE_REASON_BYTES_MAX: usize = 256;
/// Bytes of a frame's length prefix (`u32` little-endian).
pub const FRAME_PREFIX_BYTES: usize = 4;

const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);

/// Who is on the other end, proven by mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedPeer {
    /// The service named by the peer's certificate (its single DNS SAN).
    pub service: String,
    /// Node or client, from the certificate's extended key usage.
    pub role: Role,
    /// The admitted certificate.
    pub cert: AuthorCert,
}

/// Transport errors. Messages name the address, the peer or the limit.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("QUIC configuration: {0}")]
    Config(String),
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("own certificate {path} refused: {source}")]
    OwnCertificate {
        path: String,
        #[source]
        source: CertError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to \"{server_name}\" at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        server_name: String,
        #[source]
        source: quinn::ConnectError,
    },
    #[error("handshake with \"{server_name}\" at {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        server_name: String,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("malformed frame: {reason}")]
    Decode { reason: String },
    #[error("cannot encode frame: {0}")]
    Encode(postcard::Error),
    #[error("peer ended the stream before answering")]
    StreamEnded,
    #[error("stream read failed: {0}")]
    Read(quinn::ReadError),
    #[error("stream write failed: {0}")]
    Write(quinn::WriteError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer not authorized: {reason}")]
    Unauthorized { reason: String },
    #[error("{what} timed out after {after:?}")]
    Timeout { what: String, after: Duration },
    /// The other side answered with an error of its own.
    #[error("{0}")]
    Remote(String),
}

/// The ALPN protocol negotiated on `conn`, if any.
pub fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

impl From<quinn::ReadError> for NetError {
    fn from(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::ConnectionLost(c) => NetError::Connection(c),
            other => NetError::Read(other),
        }
    }
}

impl From<quinn::WriteError> for NetError {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(c) => NetError::Connection(c),
            other => NetError::Write(other),
        }
    }
}

/// The QUIC application close code (see [`crate::core::wire::close`]) to
/// close a connection with after `err`:
///
/// * `FRAME_TOO_LARGE` for [`NetError::FrameTooLarge`];
/// * `PROTOCOL_VIOLATION` for undecodable or truncated frames and streams
///   ended before an answer;
/// * `UNAUTHORIZED` for [`NetError::Unauthorized`] and refused certificates;
/// * `SHUTDOWN` for everything else (timeouts, I/O, lost connections), where
///   the peer did nothing wrong that we can name.
pub fn close_code(err: &NetError) -> u32 {
    match err {
        NetError::FrameTooLarge { .. } => close::FRAME_TOO_LARGE,
        NetError::Decode { .. } | NetError::StreamEnded | NetError::Encode(_) => {
            close::PROTOCOL_VIOLATION
        }
        NetError::Unauthorized { .. } | NetError::OwnCertificate { .. } => close::UNAUTHORIZED,
        _ => close::SHUTDOWN,
    }
}

/// `reason` cut to [`CLOSE_REASON_BYTES_MAX`] bytes for a CONNECTION_CLOSE.
pub(crate) fn close_reason(reason: &str) -> &[u8] {
    let bytes = reason.as_bytes();
    &bytes[..bytes.len().min(CLOSE_REASON_BYTES_MAX)]
}

/// Closes `conn` with the code [`close_code`] picks for `err`.
pub fn close_with(conn: &quinn::Connection, err: &NetError) {
    conn.close(
        quinn::VarInt::from_u32(close_code(err)),
        close_reason(&err.to_string()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_bounded() {
        let long = "x".repeat(CLOSE_REASON_BYTES_MAX * 2);
        assert_eq!(close_reason(&long).len(), CLOSE_REASON_BYTES_MAX);
        assert_eq!(close_reason("short"), b"short");
    }

    #[test]
    fn close_codes_name_the_fault() {
        let too_large = NetError::FrameTooLarge { len: 1, max: 0 };
        assert_eq!(close_code(&too_large), close::FRAME_TOO_LARGE);
        let decode = NetError::Decode { reason: "x".into() };
        assert_eq!(close_code(&decode), close::PROTOCOL_VIOLATION);
        let unauthorized = NetError::Unauthorized { reason: "x".into() };
        assert_eq!(close_code(&unauthorized), close::UNAUTHORIZED);
        assert_eq!(
            close_code(&NetError::Io(std::io::Error::other("x"))),
            close::SHUTDOWN
        );
    }
}
