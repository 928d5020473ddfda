//! Cap'n Proto standard (unpacked) stream framing with size limits.
//!
//! A framed message is: u32 LE (segment count − 1), one u32 LE word count per
//! segment, padding to 8 bytes, then the segments. Messages follow each other
//! with no extra length prefix (edge-protocol.md §3.1). Every decoder here
//! looks at the segment table first and refuses oversized messages before
//! allocating anything, then reads with [`Limits::reader_options`] so a small
//! message cannot amplify traversal either.

use capnp::message::{self, Allocator, ReaderOptions};
use capnp::serialize::{self, OwnedSegments};

/// Bounds applied to one framed Cap'n Proto message from an untrusted peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted message including its segment table, in bytes.
    pub max_message_bytes: usize,
    /// Largest accepted segment count (capnp itself stops at 512).
    pub max_segments: usize,
    /// Nesting limit handed to capnp; our schemas nest about 8 deep.
    pub nesting_limit: i32,
}

impl Limits {
    /// Control-stream RPC. Registration messages are about 0.5 KiB; the
    /// largest legitimate message is `updateLocalConfiguration` carrying the
    /// connector's local config JSON.
    pub const CONTROL_STREAM: Limits = Limits {
        max_message_bytes: 1024 * 1024,
        max_segments: 64,
        nesting_limit: 32,
    };
    /// The single `ConnectRequest`/`ConnectResponse` on a data stream; it
    /// carries the HTTP request/response headers.
    pub const DATA_STREAM: Limits = Limits {
        max_message_bytes: 1024 * 1024,
        max_segments: 64,
        nesting_limit: 32,
    };
    /// RPC streams (config pushes carry the whole remote ingress JSON).
    pub const RPC_STREAM: Limits = Limits {
        max_message_bytes: 16 * 1024 * 1024,
        max_segments: 128,
        nesting_limit: 32,
    };

    /// Reader options matching these limits. The traversal limit equals the
    /// message size in words: our decoders read every object once, and capnp
    /// also rejects a segment table above the traversal limit, so this bounds
    /// `capnp_futures`/`capnp-rpc` readers as well.
    pub fn reader_options(&self) -> ReaderOptions {
        let mut o = ReaderOptions::new();
        o.traversal_limit_in_words(Some(self.max_message_bytes / 8));
        o.nesting_limit(self.nesting_limit);
        o
    }
}

/// A framed message that cannot be accepted. None of these is cured by
/// retrying: the peer sent bytes we will never accept, so the stream (or
/// connection) should be closed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FrameError {
    #[error("capnp message declares {count} segments (limit {limit})")]
    TooManySegments { count: u64, limit: usize },
    #[error("capnp message is {size} bytes (limit {limit})")]
    TooLarge { size: u64, limit: usize },
    #[error("malformed capnp message: {0}")]
    Capnp(#[from] capnp::Error),
}

impl FrameError {
    /// Always false: the same bytes fail the same way.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Length in bytes of the framed message at the start of `buf`, once its
/// segment table is complete. `Ok(None)` means more bytes are needed.
pub fn message_len(buf: &[u8], limits: &Limits) -> Result<Option<usize>, FrameError> {
    let Some(first) = buf.get(0..4) else {
        return Ok(None);
    };
    let count = u64::from(le_u32(first)) + 1;
    if count > limits.max_segments as u64 {
        return Err(FrameError::TooManySegments {
            count,
            limit: limits.max_segments,
        });
    }
    // Table: 4 bytes count + 4 per segment, padded to a word.
    let table_len = (count as usize + 2) / 2 * 8;
    let Some(table) = buf.get(4..table_len) else {
        return Ok(None);
    };
    let words: u64 = table
        .chunks_exact(4)
        .take(count as usize)
        .map(|c| u64::from(le_u32(c)))
        .sum();
    let size = table_len as u64 + words * 8;
    if size > limits.max_message_bytes as u64 {
        return Err(FrameError::TooLarge {
            size,
            limit: limits.max_message_bytes,
        });
    }
    Ok(Some(size as usize))
}

/// Decodes the framed message at the start of `buf`. Returns the message and
/// the number of bytes it occupied, or `Ok(None)` if `buf` is still short.
/// Bytes after the message (e.g. a request body) are left alone.
pub fn decode_message(
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<(message::Reader<OwnedSegments>, usize)>, FrameError> {
    let Some(len) = message_len(buf, limits)? else {
        return Ok(None);
    };
    let Some(mut frame) = buf.get(..len) else {
        return Ok(None);
    };
    // Copies into word-aligned owned segments (no alignment needs on `buf`).
    let reader = serialize::read_message(&mut frame, limits.reader_options())?;
    Ok(Some((reader, len)))
}

/// Frames a message (segment table + segments).
pub fn encode_message<A: Allocator>(msg: &message::Builder<A>) -> Vec<u8> {
    serialize::write_message_to_words(msg)
}

/// Cuts a byte stream into whole framed messages, e.g. for a frame tap or for
/// capnp bytes arriving in HTTP/2 DATA frames. Holds at most one partial
/// message, bounded by the limits.
#[derive(Debug)]
pub struct MessageSplitter {
    limits: Limits,
    buf: Vec<u8>,
}

impl MessageSplitter {
    pub fn new(limits: Limits) -> Self {
        MessageSplitter {
            limits,
            buf: Vec::new(),
        }
    }

    /// Appends bytes and returns every message they complete, in order.
    /// After an error the stream is unusable (the framing is lost).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(len) = message_len(&self.buf[start..], &self.limits)? {
            if self.buf.len() - start < len {
                break;
            }
            out.push(self.buf[start..start + len].to_vec());
            start += len;
        }
        self.buf.drain(..start);
        Ok(out)
    }

    /// Bytes of an incomplete message still buffered.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        let mut b = message::Builder::new_default();
        b.set_root(capnp::text::Reader::from("hello")).unwrap();
        encode_message(&b)
    }

    #[test]
    fn table_lengths() {
        let l = Limits::RPC_STREAM;
        // 1 segment of 2 words: 8-byte table.
        let mut m = vec![0, 0, 0, 0, 2, 0, 0, 0];
        m.extend([0u8; 16]);
        assert_eq!(message_len(&m, &l).unwrap(), Some(24));
        // 2 segments (1 + 1 words): 4 + 8 = 12, padded to 16.
        let m2 = [1u8, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(message_len(&m2, &l).unwrap(), Some(32));
        assert_eq!(message_len(&m2[..12], &l).unwrap(), None);
        // 3 segments: 4 + 12 = 16.
        let m3 = [2u8, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0];
        assert_eq!(message_len(&m3, &l).unwrap(), Some(40));
        assert_eq!(message_len(&m3[..3], &l).unwrap(), None);
    }

    #[test]
    fn rejects_oversize_before_allocating() {
        let huge = [0u8, 0, 0, 0, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(
            decode_message(&huge, &Limits::DATA_STREAM),
            Err(FrameError::TooLarge { .. })
        ));
        let many = [0xffu8, 0xff, 0xff, 0xff];
        assert!(matches!(
            decode_message(&many, &Limits::DATA_STREAM),
            Err(FrameError::TooManySegments { .. })
        ));
    }

    #[test]
    fn decode_and_split() {
        let m = sample();
        let (r, used) = decode_message(&m, &Limits::DATA_STREAM).unwrap().unwrap();
        assert_eq!(used, m.len());
        assert_eq!(
            r.get_root::<capnp::text::Reader>()
                .unwrap()
                .to_str()
                .unwrap(),
            "hello"
        );
        assert!(
            decode_message(&m[..m.len() - 1], &Limits::DATA_STREAM)
                .unwrap()
                .is_none()
        );

        let mut stream = m.clone();
        stream.extend(&m);
        let mut s = MessageSplitter::new(Limits::RPC_STREAM);
        let mut got = Vec::new();
        for chunk in stream.chunks(5) {
            got.extend(s.push(chunk).unwrap());
        }
        assert_eq!(got, vec![m.clone(), m]);
        assert_eq!(s.pending(), 0);
    }

    proptest! {
        #[test]
        fn decode_total(b in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(Some((r, used))) = decode_message(&b, &Limits::DATA_STREAM) {
                prop_assert!(used <= b.len());
                let _ = r.get_root::<capnp::any_pointer::Reader>();
            }
            let mut s = MessageSplitter::new(Limits::DATA_STREAM);
            let _ = s.push(&b);
        }
    }
}
