//! Frames on QUIC streams: `len: u32 little-endian ‖ postcard(message)`.
//! The length is checked against [`FRAME_BYTES_MAX`] before the body is
//! allocated, the body grows only as its bytes arrive, and it must decode
//! to exactly one message.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{FRAME_PREFIX_BYTES, NetError};
use crate::core::wire::FRAME_BYTES_MAX;

/// First allocation for a frame's body; it grows (doubling, up to the
/// frame's length) as bytes arrive.
pub const FRAME_READ_CHUNK_BYTES: usize = 64 * 1024;

/// Encodes `msg` and writes it as one frame. Refuses (without writing) a
/// message whose encoding exceeds [`FRAME_BYTES_MAX`].
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), NetError> {
    let body = postcard::to_allocvec(msg).map_err(NetError::Encode)?;
    if body.len() > FRAME_BYTES_MAX {
        return Err(NetError::FrameTooLarge {
            len: body.len(),
            max: FRAME_BYTES_MAX,
        });
    }
    let len = u32::try_from(body.len()).map_err(|_| NetError::FrameTooLarge {
        len: body.len(),
        max: FRAME_BYTES_MAX,
    })?;
    let mut buf = Vec::with_capacity(FRAME_PREFIX_BYTES + body.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&body);
    send.write_all(&buf).await?;
    Ok(())
}

/// Reads one frame. `Ok(None)` when the peer finished the stream cleanly
/// between frames; [`NetError::FrameTooLarge`] for a length prefix over
/// [`FRAME_BYTES_MAX`] (nothing allocated); [`NetError::Decode`] for a stream
/// ending inside a frame, a body that does not decode, or trailing bytes.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<Option<T>, NetError> {
    let mut prefix = [0u8; FRAME_PREFIX_BYTES];
    let mut filled = 0;
    while filled < FRAME_PREFIX_BYTES {
        match recv.read(&mut prefix[filled..]).await? {
            Some(n) => filled += n,
            None if filled == 0 => return Ok(None),
            None => {
                return Err(NetError::Decode {
                    reason: format!(
                        "stream ended inside a length prefix ({filled} of {FRAME_PREFIX_BYTES} bytes)"
                    ),
                });
            }
        }
    }
    let len = u32::from_le_bytes(prefix) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(NetError::FrameTooLarge {
            len,
            max: FRAME_BYTES_MAX,
        });
    }
    // Grow the body as bytes arrive instead of allocating `len` up front: a
    // prefix alone (or a frame that stalls) costs what was really sent.
    let mut body = Vec::with_capacity(len.min(FRAME_READ_CHUNK_BYTES));
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await? {
            Some(chunk) => {
                let needed = body.len() + chunk.bytes.len();
                if needed > body.capacity() {
                    // Double, but never past `len`: a frame costs its size.
                    let target = needed.max(body.capacity() * 2).min(len);
                    body.reserve_exact(target - body.len());
                }
                body.extend_from_slice(&chunk.bytes);
            }
            None => {
                return Err(NetError::Decode {
                    reason: format!(
                        "stream ended inside a frame ({} of {len} bytes)",
                        body.len()
                    ),
                });
            }
        }
    }
    let (msg, rest) = postcard::take_from_bytes::<T>(&body).map_err(|e| NetError::Decode {
        reason: format!("{len}-byte frame does not decode: {e}"),
    })?;
    if !rest.is_empty() {
        return Err(NetError::Decode {
            reason: format!(
                "{} trailing bytes after the message in a {len}-byte frame",
                rest.len()
            ),
        });
    }
    Ok(Some(msg))
}
