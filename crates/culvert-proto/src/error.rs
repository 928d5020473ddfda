//! The decode error shared by the capnp-message modules.

use crate::framing::FrameError;
use crate::stream::PreambleError;

/// Why bytes from the peer could not be turned into a message. None of these
/// is cured by retrying the same bytes; the caller should fail the stream
/// (data stream: answer 502 / reset; control stream: close the connection).
#[derive(Debug, Clone, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Preamble(#[from] PreambleError),
    #[error("malformed capnp content: {0}")]
    Capnp(#[from] capnp::Error),
    /// An enum value or union member this schema does not know (e.g. a
    /// `ConnectionType` newer than ours).
    #[error("enum or union value {0} not in schema")]
    NotInSchema(u16),
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl DecodeError {
    /// Always false: the same bytes fail the same way.
    pub fn is_retryable(&self) -> bool {
        false
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        DecodeError::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

impl From<capnp::NotInSchema> for DecodeError {
    fn from(e: capnp::NotInSchema) -> Self {
        DecodeError::NotInSchema(e.0)
    }
}

/// Reads a capnp Text as a Rust string. Go strings are bytes, so peers may
/// send invalid UTF-8 (e.g. obs-text header values); we replace those bytes
/// rather than fail the whole message.
pub(crate) fn text(r: capnp::Result<capnp::text::Reader<'_>>) -> Result<String, DecodeError> {
    Ok(String::from_utf8_lossy(r?.as_bytes()).into_owned())
}
