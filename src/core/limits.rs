//! Every bound herald enforces on event content, named and documented in one
//! place. Decoders check these before allocating; `docs/FORMAT.md` lists them.

/// Format 1: every event carries its own signature.
pub const FORMAT_VERSION_SIGNED: u8 = 1;
/// Format 2: events are authenticated by their author's signed checkpoints.
pub const FORMAT_VERSION_SEALED: u8 = 2;
/// The event format this build writes (the first byte of every header). It
/// reads both formats.
pub const FORMAT_VERSION: u8 = FORMAT_VERSION_SEALED;

/// Longest service (feed author) name, in bytes. Names are DNS labels.
pub const SERVICE_NAME_BYTES_MAX: usize = 63;
/// Longest event type, in bytes.
pub const EVENT_TYPE_BYTES_MAX: usize = 128;
/// Most metadata entries on one event.
pub const META_ENTRIES_MAX: usize = 32;
/// Longest metadata key, in bytes.
pub const META_KEY_BYTES_MAX: usize = 64;
/// Longest metadata value, in bytes.
pub const META_VALUE_BYTES_MAX: usize = 1024;
/// Largest plaintext payload a caller may proclaim (1 MiB).
pub const PAYLOAD_PLAINTEXT_BYTES_MAX: usize = 1024 * 1024;
/// Largest stored payload: plaintext plus the 16-byte AEAD tag.
pub const PAYLOAD_BYTES_MAX: usize = PAYLOAD_PLAINTEXT_BYTES_MAX + 16;
/// Largest encoded header. The fields above bound it to well under this.
pub const HEADER_BYTES_MAX: usize = 48 * 1024;
/// Largest encoded envelope (header, signature, payload and framing).
pub const ENVELOPE_BYTES_MAX: usize = HEADER_BYTES_MAX + PAYLOAD_BYTES_MAX + 128;
/// Largest certificate a genesis event may carry.
pub const CERT_BYTES_MAX: usize = 16 * 1024;
/// Most events sealed or committed in one batch (one fsync).
pub const COMMIT_BATCH_EVENTS_MAX: usize = 1024;
/// Events verified together in one batch-verification call.
pub const VERIFY_BATCH_EVENTS: usize = 256;
/// Longest channel name, in bytes (a DNS label, like service names).
pub const CHANNEL_NAME_BYTES_MAX: usize = 63;
/// Highest sequence number: SQLite stores integers as i64, and a bound
/// below `u64::MAX` keeps `seq + 1` from overflowing anywhere.
pub const SEQ_MAX: u64 = i64::MAX as u64 - 1;
/// Latest timestamp (microseconds since the epoch) an event may carry.
pub const TIMESTAMP_US_MAX: u64 = i64::MAX as u64;
