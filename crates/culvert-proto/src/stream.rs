//! QUIC stream signatures and preambles (edge-protocol.md §4.1).
//!
//! - The control stream (first client-opened bidi stream) has no preamble.
//! - A data stream starts with [`DATA_STREAM_SIGNATURE`] + [`PROTOCOL_VERSION`]
//!   (`"01"`), then one capnp `ConnectRequest`/`ConnectResponse`.
//! - An RPC stream starts with [`RPC_STREAM_SIGNATURE`] only, then capnp RPC.
//!
//! cloudflared reads the version with a single `read`, so writers should send
//! preamble and message in one write (see [`crate::connect`]).

/// Marks a data stream (`0A 36 CD 12 A1 3E`).
pub const DATA_STREAM_SIGNATURE: [u8; 6] = [0x0A, 0x36, 0xCD, 0x12, 0xA1, 0x3E];
/// Marks an RPC stream (`52 BB 82 5C DB 65`).
pub const RPC_STREAM_SIGNATURE: [u8; 6] = [0x52, 0xBB, 0x82, 0x5C, 0xDB, 0x65];
/// The only data-stream protocol version, ASCII `"01"`.
pub const PROTOCOL_VERSION: [u8; 2] = *b"01";
/// Signature length.
pub const SIGNATURE_LEN: usize = 6;
/// The full 8-byte data-stream preamble.
pub const DATA_STREAM_PREAMBLE: [u8; 8] = {
    let s = DATA_STREAM_SIGNATURE;
    let v = PROTOCOL_VERSION;
    [s[0], s[1], s[2], s[3], s[4], s[5], v[0], v[1]]
};

/// What a stream opened by the peer carries, from its first 6 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `ConnectRequest`/`ConnectResponse` then raw bytes; a version follows.
    Data,
    /// Cap'n Proto RPC with no version bytes.
    Rpc,
}

/// A stream that does not start with a known preamble. cloudflared resets
/// such streams; retrying the same bytes cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreambleError {
    #[error("unknown stream signature {0:02x?}")]
    UnknownSignature([u8; 6]),
    #[error("unsupported data stream protocol version {0:02x?}")]
    UnsupportedVersion([u8; 2]),
    #[error("expected a data stream, got an RPC stream signature")]
    NotDataStream,
}

impl PreambleError {
    /// Always false: the peer speaks something we do not.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Classifies a stream from its first bytes. `Ok(None)` until 6 bytes are
/// available.
pub fn classify_stream(buf: &[u8]) -> Result<Option<StreamKind>, PreambleError> {
    let Some(sig) = buf.get(..SIGNATURE_LEN) else {
        return Ok(None);
    };
    if sig == DATA_STREAM_SIGNATURE {
        Ok(Some(StreamKind::Data))
    } else if sig == RPC_STREAM_SIGNATURE {
        Ok(Some(StreamKind::Rpc))
    } else {
        let mut s = [0u8; 6];
        s.copy_from_slice(sig);
        Err(PreambleError::UnknownSignature(s))
    }
}

/// Checks the 8-byte data-stream preamble at the start of `buf` and returns
/// its length (8), or `Ok(None)` while fewer bytes are available.
pub fn parse_data_preamble(buf: &[u8]) -> Result<Option<usize>, PreambleError> {
    match classify_stream(buf)? {
        None => return Ok(None),
        Some(StreamKind::Rpc) => return Err(PreambleError::NotDataStream),
        Some(StreamKind::Data) => {}
    }
    let Some(v) = buf.get(SIGNATURE_LEN..DATA_STREAM_PREAMBLE.len()) else {
        return Ok(None);
    };
    if v != PROTOCOL_VERSION {
        return Err(PreambleError::UnsupportedVersion([v[0], v[1]]));
    }
    Ok(Some(DATA_STREAM_PREAMBLE.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::hex;
    use proptest::prelude::*;

    #[test]
    fn classify() {
        assert_eq!(classify_stream(&[0x0a, 0x36]).unwrap(), None);
        assert_eq!(
            classify_stream(&DATA_STREAM_PREAMBLE).unwrap(),
            Some(StreamKind::Data)
        );
        assert_eq!(
            classify_stream(&RPC_STREAM_SIGNATURE).unwrap(),
            Some(StreamKind::Rpc)
        );
        assert!(matches!(
            classify_stream(b"GET / HTTP/1.1"),
            Err(PreambleError::UnknownSignature(_))
        ));
        assert_eq!(
            hex(&DATA_STREAM_PREAMBLE),
            "0a36cd12a13e3031",
            "spec §4.1 bytes"
        );
    }

    #[test]
    fn data_preamble() {
        assert_eq!(
            parse_data_preamble(&DATA_STREAM_PREAMBLE[..7]).unwrap(),
            None
        );
        assert_eq!(parse_data_preamble(&DATA_STREAM_PREAMBLE).unwrap(), Some(8));
        let mut v2 = DATA_STREAM_PREAMBLE;
        v2[7] = b'2';
        assert_eq!(
            parse_data_preamble(&v2),
            Err(PreambleError::UnsupportedVersion(*b"02"))
        );
        assert_eq!(
            parse_data_preamble(&RPC_STREAM_SIGNATURE),
            Err(PreambleError::NotDataStream)
        );
    }

    proptest! {
        #[test]
        fn total(b in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = classify_stream(&b);
            let _ = parse_data_preamble(&b);
        }
    }
}
