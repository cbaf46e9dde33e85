//! Canonical encoding and decoding of headers and envelopes.
//!
//! Decoders check sizes before decoding, reject trailing bytes, check every
//! limit, and re-encode to prove the input was the one canonical encoding (so
//! no two byte strings describe the same event).

use super::crypto::{self, Hash};
use super::event::{Encryption, SignatureScope};
use super::event::{Envelope, EventHeader, GENESIS_EVENT_TYPE, RESERVED_TYPE_PREFIX};
use super::limits::*;

/// Why bytes are not a well-formed event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("envelope is {found} bytes, over the limit of {limit}")]
    EnvelopeTooLarge { found: usize, limit: usize },
    #[error("header is {found} bytes, over the limit of {limit}")]
    HeaderTooLarge { found: usize, limit: usize },
    #[error("envelope is not decodable: {0}")]
    Envelope(String),
    #[error("header is not decodable: {0}")]
    Header(String),
    #[error("{what} has {found} trailing bytes")]
    TrailingBytes { what: &'static str, found: usize },
    #[error("{what} is not in canonical form")]
    NotCanonical { what: &'static str },
    #[error(
        "unsupported format version {found} (this build reads {FORMAT_VERSION_SIGNED} and {FORMAT_VERSION_SEALED})"
    )]
    Version { found: u8 },
    #[error("field {field} is invalid: {reason}")]
    Field { field: &'static str, reason: String },
}

/// Encodes a header canonically.
pub fn encode_header(header: &EventHeader) -> Vec<u8> {
    // Sized up front so encoding never reallocates on the hot path: fixed
    // fields (at most ~200 bytes with varints) plus the variable strings.
    let variable = header.author.len()
        + header.event_type.len()
        + header
            .meta
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>();
    // postcard serialisation of plain data into a Vec cannot fail.
    postcard::to_extend(header, Vec::with_capacity(224 + variable)).unwrap_or_default()
}

/// First byte of a format-2 (sealed) envelope. A format-1 envelope starts
/// with its header's length as a varint, never 0, so the byte tells the
/// formats apart.
pub const SEALED_ENVELOPE_MARKER: u8 = 0x00;

/// A format-1 envelope on the wire: header bytes, signature, payload.
#[derive(serde::Serialize)]
struct SignedWire<'a> {
    #[serde(with = "serde_bytes")]
    header: &'a [u8],
    #[serde(with = "serde_bytes")]
    signature: &'a [u8; 64],
    #[serde(with = "serde_bytes")]
    payload: Option<&'a [u8]>,
}

/// A format-2 envelope after its marker byte: header bytes, payload.
#[derive(serde::Serialize)]
struct SealedWire<'a> {
    #[serde(with = "serde_bytes")]
    header: &'a [u8],
    #[serde(with = "serde_bytes")]
    payload: Option<&'a [u8]>,
}

/// Encodes an envelope canonically: format 1 when it carries a signature,
/// format 2 (marker byte first) when it does not.
pub fn encode_envelope(envelope: &Envelope) -> Vec<u8> {
    // Two length prefixes (at most 5 bytes each), the signature with its
    // prefix, the option tag: 80 bytes of room is enough.
    let size = envelope.header.len() + envelope.payload.as_ref().map_or(0, Vec::len) + 80;
    let mut out = Vec::with_capacity(size);
    let header = envelope.header.as_slice();
    let payload = envelope.payload.as_deref();
    // postcard serialisation of plain data into a Vec cannot fail.
    match &envelope.signature {
        Some(signature) => postcard::to_extend(
            &SignedWire {
                header,
                signature,
                payload,
            },
            out,
        )
        .unwrap_or_default(),
        None => {
            out.push(SEALED_ENVELOPE_MARKER);
            postcard::to_extend(&SealedWire { header, payload }, out).unwrap_or_default()
        }
    }
}

/// Whether envelope bytes are of a format-2 (sealed) event.
pub fn is_sealed_envelope(bytes: &[u8]) -> bool {
    bytes.first() == Some(&SEALED_ENVELOPE_MARKER)
}

/// The event hash: `SHA-256(EVENT_HASH_TAG ‖ header bytes)`.
pub fn event_hash(header_bytes: &[u8]) -> Hash {
    crypto::sha256(&[crypto::EVENT_HASH_TAG, header_bytes])
}

/// The message the author signs: `SIGNATURE_TAG ‖ event hash`.
pub fn signing_message(hash: &Hash) -> [u8; 58] {
    let mut msg = [0u8; 58];
    msg[..crypto::SIGNATURE_TAG.len()].copy_from_slice(crypto::SIGNATURE_TAG);
    msg[crypto::SIGNATURE_TAG.len()..].copy_from_slice(hash);
    msg
}

/// An envelope's parts, borrowed from its bytes.
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeRef<'a> {
    /// The canonical header bytes the hash (and a signature) cover.
    pub header: &'a [u8],
    /// Ed25519 signature of a format-1 event; `None` in format 2.
    pub signature: Option<[u8; 64]>,
    /// Payload bytes, or `None` when pruned. Always the envelope's last
    /// bytes when present.
    pub payload: Option<&'a [u8]>,
}

#[derive(serde::Deserialize)]
struct SignedWireRef<'a> {
    #[serde(borrow, with = "serde_bytes")]
    header: &'a [u8],
    #[serde(with = "serde_bytes")]
    signature: [u8; 64],
    #[serde(borrow, with = "serde_bytes")]
    payload: Option<&'a [u8]>,
}

#[derive(serde::Deserialize)]
struct SealedWireRef<'a> {
    #[serde(borrow, with = "serde_bytes")]
    header: &'a [u8],
    #[serde(borrow, with = "serde_bytes")]
    payload: Option<&'a [u8]>,
}

/// The length of a value's postcard encoding, counted without writing it.
fn encoded_len<T: serde::Serialize>(value: &T) -> Result<usize, postcard::Error> {
    postcard::serialize_with_flavor::<T, postcard::ser_flavors::Size, usize>(
        value,
        postcard::ser_flavors::Size::default(),
    )
}

/// Decodes an envelope and its header, checking limits and canonical form.
pub fn decode_envelope(bytes: &[u8]) -> Result<(Envelope, EventHeader), DecodeError> {
    let (parts, header) = decode_envelope_ref(bytes)?;
    let envelope = Envelope {
        header: parts.header.to_vec(),
        signature: parts.signature,
        payload: parts.payload.map(<[u8]>::to_vec),
    };
    Ok((envelope, header))
}

/// [`decode_envelope`] without copying: the parts borrow from `bytes`.
pub fn decode_envelope_ref(bytes: &[u8]) -> Result<(EnvelopeRef<'_>, EventHeader), DecodeError> {
    if bytes.len() > ENVELOPE_BYTES_MAX {
        return Err(DecodeError::EnvelopeTooLarge {
            found: bytes.len(),
            limit: ENVELOPE_BYTES_MAX,
        });
    }
    let not_decodable = |e: postcard::Error| DecodeError::Envelope(e.to_string());
    let (envelope, rest, canonical_len) = match bytes.split_first() {
        Some((&SEALED_ENVELOPE_MARKER, sealed)) => {
            let (wire, rest): (SealedWireRef<'_>, &[u8]) =
                postcard::take_from_bytes(sealed).map_err(not_decodable)?;
            let canonical_len = 1 + encoded_len(&SealedWire {
                header: wire.header,
                payload: wire.payload,
            })
            .map_err(not_decodable)?;
            let envelope = EnvelopeRef {
                header: wire.header,
                signature: None,
                payload: wire.payload,
            };
            (envelope, rest, canonical_len)
        }
        _ => {
            let (wire, rest): (SignedWireRef<'_>, &[u8]) =
                postcard::take_from_bytes(bytes).map_err(not_decodable)?;
            let canonical_len = encoded_len(&SignedWire {
                header: wire.header,
                signature: &wire.signature,
                payload: wire.payload,
            })
            .map_err(not_decodable)?;
            let envelope = EnvelopeRef {
                header: wire.header,
                signature: Some(wire.signature),
                payload: wire.payload,
            };
            (envelope, rest, canonical_len)
        }
    };
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            what: "envelope",
            found: rest.len(),
        });
    }
    // Canonical without encoding it again: every part is a byte string (or
    // the option tag, which postcard takes only as 0 or 1), so the bytes
    // can differ from the canonical encoding of what they decode to only in
    // a length prefix written longer than it needs to be, and then they are
    // longer than the canonical encoding.
    if canonical_len != bytes.len() {
        return Err(DecodeError::NotCanonical { what: "envelope" });
    }
    let header = decode_header(envelope.header)?;
    // The envelope's form and the header's version must agree: a format-2
    // header in a signed envelope (or the reverse) is two events in one.
    if (header.version == FORMAT_VERSION_SEALED) != envelope.signature.is_none() {
        return Err(DecodeError::Field {
            field: "envelope",
            reason: format!(
                "a format-{} header in a {} envelope",
                header.version,
                if envelope.signature.is_some() {
                    "signed (format-1)"
                } else {
                    "sealed (format-2)"
                }
            ),
        });
    }
    if let Some(payload) = envelope.payload
        && payload.len() > PAYLOAD_BYTES_MAX
    {
        return Err(DecodeError::Field {
            field: "payload",
            reason: format!(
                "{} bytes, over the limit of {PAYLOAD_BYTES_MAX}",
                payload.len()
            ),
        });
    }
    Ok((envelope, header))
}

/// Decodes a header, checking limits, field rules and canonical form.
pub fn decode_header(bytes: &[u8]) -> Result<EventHeader, DecodeError> {
    if bytes.len() > HEADER_BYTES_MAX {
        return Err(DecodeError::HeaderTooLarge {
            found: bytes.len(),
            limit: HEADER_BYTES_MAX,
        });
    }
    // The version byte comes first so a future format is named as such rather
    // than reported as garbage.
    match bytes.first() {
        Some(&(FORMAT_VERSION_SIGNED | FORMAT_VERSION_SEALED)) => {}
        Some(&found) => return Err(DecodeError::Version { found }),
        None => return Err(DecodeError::Header("empty".into())),
    }
    let (header, rest): (EventHeader, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| DecodeError::Header(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            what: "header",
            found: rest.len(),
        });
    }
    check_header_fields(&header)?;
    if encode_header(&header) != bytes {
        return Err(DecodeError::NotCanonical { what: "header" });
    }
    Ok(header)
}

/// Checks every field rule of a header (also used before sealing).
pub fn check_header_fields(header: &EventHeader) -> Result<(), DecodeError> {
    let field = |field: &'static str, reason: String| Err(DecodeError::Field { field, reason });
    let scope = match header.version {
        FORMAT_VERSION_SIGNED => SignatureScope::Event,
        FORMAT_VERSION_SEALED => SignatureScope::Checkpoint,
        found => return Err(DecodeError::Version { found }),
    };
    if header.seq > SEQ_MAX {
        return field("seq", format!("{} over the limit of {SEQ_MAX}", header.seq));
    }
    if header.timestamp_us > TIMESTAMP_US_MAX {
        return field(
            "timestamp_us",
            format!(
                "{} over the limit of {TIMESTAMP_US_MAX}",
                header.timestamp_us
            ),
        );
    }
    if !is_uuid_v7(&header.id) {
        return field("id", format!("{} is not a UUID v7", hex::encode(header.id)));
    }
    if let Err(reason) = check_service_name(&header.author) {
        return field("author", reason);
    }
    if let Err(reason) = check_event_type(&header.event_type) {
        return field("event_type", reason);
    }
    if let Err(reason) = check_meta(&header.meta) {
        return field("meta", reason);
    }
    if header.payload.len as usize > PAYLOAD_BYTES_MAX {
        return field(
            "payload.len",
            format!(
                "{} over the limit of {PAYLOAD_BYTES_MAX}",
                header.payload.len
            ),
        );
    }
    let reserved = header.event_type.starts_with(RESERVED_TYPE_PREFIX);
    if header.payload.encryption == Encryption::Plain && !reserved {
        return field(
            "payload.encryption",
            "only herald.* event types may carry a plaintext payload".into(),
        );
    }
    if header.signature_scope != scope {
        return field(
            "signature_scope",
            format!(
                "format {} requires {scope:?}, found {:?}",
                header.version, header.signature_scope
            ),
        );
    }
    let genesis_type = header.event_type == GENESIS_EVENT_TYPE;
    if genesis_type != (header.seq == 0) {
        return field(
            "event_type",
            format!(
                "{GENESIS_EVENT_TYPE} must be exactly the event at sequence 0 (found {} at {})",
                header.event_type, header.seq
            ),
        );
    }
    if header.seq == 0 {
        if header.prev != [0u8; 32] {
            return field("prev", "genesis must have an all-zero previous hash".into());
        }
        if header.payload.encryption != Encryption::Plain {
            return field("payload.encryption", "genesis payload must be plain".into());
        }
        if header.payload.len as usize > CERT_BYTES_MAX {
            return field("payload.len", "genesis certificate too large".into());
        }
    }
    Ok(())
}

/// Version 7 in the high nibble of byte 6, RFC 9562 variant (`10`) in the
/// top bits of byte 8.
pub fn is_uuid_v7(id: &[u8; 16]) -> bool {
    id[6] >> 4 == 7 && id[8] >> 6 == 0b10
}

/// A service name is a DNS label: 1 to 63 of `a-z 0-9 -`, no leading or
/// trailing `-`. It doubles as the certificate SAN and the TLS server name.
pub fn check_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > SERVICE_NAME_BYTES_MAX {
        return Err(format!(
            "service name must be 1 to {SERVICE_NAME_BYTES_MAX} bytes, found {}",
            name.len()
        ));
    }
    let valid = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid || name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "service name {name:?} must use only a-z, 0-9 and inner '-'"
        ));
    }
    Ok(())
}

/// An event type is 1 to 128 printable ASCII characters without spaces.
pub fn check_event_type(event_type: &str) -> Result<(), String> {
    if event_type.is_empty() || event_type.len() > EVENT_TYPE_BYTES_MAX {
        return Err(format!(
            "event type must be 1 to {EVENT_TYPE_BYTES_MAX} bytes, found {}",
            event_type.len()
        ));
    }
    if !event_type.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "event type {event_type:?} must be printable ASCII without spaces"
        ));
    }
    Ok(())
}

/// Metadata: at most 32 entries, keys 1..=64 bytes strictly ascending (so
/// sorted and unique), values at most 1024 bytes.
pub fn check_meta(meta: &[(String, String)]) -> Result<(), String> {
    if meta.len() > META_ENTRIES_MAX {
        return Err(format!(
            "{} entries, over the limit of {META_ENTRIES_MAX}",
            meta.len()
        ));
    }
    for (i, (key, value)) in meta.iter().enumerate() {
        if key.is_empty() || key.len() > META_KEY_BYTES_MAX {
            return Err(format!(
                "key {key:?} must be 1 to {META_KEY_BYTES_MAX} bytes"
            ));
        }
        if value.len() > META_VALUE_BYTES_MAX {
            return Err(format!(
                "value of {key:?} is {} bytes, over the limit of {META_VALUE_BYTES_MAX}",
                value.len()
            ));
        }
        if i > 0 && meta[i - 1].0.as_str() >= key.as_str() {
            return Err(format!("keys must be sorted and unique (at {key:?})"));
        }
    }
    Ok(())
}
