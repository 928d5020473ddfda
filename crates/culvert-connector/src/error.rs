//! The connector's error type.

use culvert_proto::registration::{ConnectionError, RetryAdvice};

/// Why a connection (or the whole connector) failed. Every variant keeps its
/// cause; [`ConnectorError::is_retryable`] says whether trying again (after a
/// backoff) can help.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// Bad flags, token, CA file or initial ingress: the operator must act.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The edge TLS or QUIC client configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// An edge address could not be resolved.
    #[error("resolving edge address {addr}: {source}")]
    Resolve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The local UDP socket for QUIC could not be opened.
    #[error("opening the QUIC endpoint: {0}")]
    Endpoint(#[source] std::io::Error),
    /// The QUIC dial was refused locally (bad server name, endpoint closed…).
    #[error("dialing the edge at {addr}: {source}")]
    Dial {
        addr: String,
        #[source]
        source: quinn::ConnectError,
    },
    /// The QUIC handshake failed or the connection was lost.
    #[error("QUIC connection to {addr}: {source}")]
    Connection {
        addr: String,
        #[source]
        source: quinn::ConnectionError,
    },
    /// The HTTP/2 transport failed: TCP dial, TLS, HTTP/2, or the
    /// connection was lost.
    #[error("HTTP/2 connection to {addr}: {reason}")]
    Http2 { addr: String, reason: String },
    /// The control stream's capnp RPC failed.
    #[error("control stream RPC: {0}")]
    Rpc(#[source] capnp::Error),
    /// The registration or unregistration RPC did not answer in time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        what: &'static str,
        after: std::time::Duration,
    },
    /// The edge answered registerConnection with a `ConnectionError`.
    #[error("edge refused registration: {0}")]
    Refused(#[source] ConnectionError),
    /// The edge sent a registration answer we cannot decode.
    #[error("decoding the edge's answer: {0}")]
    Decode(#[source] culvert_proto::DecodeError),
    /// Local I/O (metrics listener, CA file…).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// An internal task ended unexpectedly (it panicked or was cancelled).
    #[error("internal task failed: {0}")]
    Task(String),
}

impl ConnectorError {
    /// Whether trying again later can succeed. Configuration errors and
    /// refusals the edge calls permanent cannot; network, RPC and
    /// `Unauthorized:`/`shouldRetry` refusals can.
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnectorError::Config(_) | ConnectorError::Tls(_) | ConnectorError::Endpoint(_) => {
                false
            }
            ConnectorError::Refused(e) => e.retry_advice() != RetryAdvice::Permanent,
            ConnectorError::Decode(_) => false,
            ConnectorError::Io { .. } => false,
            ConnectorError::Resolve { .. }
            | ConnectorError::Dial { .. }
            | ConnectorError::Connection { .. }
            | ConnectorError::Http2 { .. }
            | ConnectorError::Rpc(_)
            | ConnectorError::Timeout { .. }
            | ConnectorError::Task(_) => true,
        }
    }

    /// The edge refused with an `Unauthorized…` cause (retried forever, as
    /// cloudflared does, because a token rotation or a tunnel creation on
    /// the control plane can cure it).
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, ConnectorError::Refused(e) if e.is_unauthorized())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retryability() {
        assert!(!ConnectorError::Config("x".into()).is_retryable());
        let unauth =
            ConnectorError::Refused(ConnectionError::permanent(ConnectionError::INVALID_SECRET));
        assert!(unauth.is_retryable());
        assert!(unauth.is_unauthorized());
        let busy = ConnectorError::Refused(ConnectionError::retryable(
            "server busy",
            Duration::from_secs(1),
        ));
        assert!(busy.is_retryable());
        assert!(!busy.is_unauthorized());
        let perm = ConnectorError::Refused(ConnectionError::permanent("nope"));
        assert!(!perm.is_retryable());
        assert!(
            ConnectorError::Timeout {
                what: "registerConnection",
                after: Duration::from_secs(5)
            }
            .is_retryable()
        );
    }
}
