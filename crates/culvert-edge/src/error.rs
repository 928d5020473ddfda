//! The edge's error types. Each says whether trying again can help.

use std::net::SocketAddr;
use std::path::PathBuf;

use culvert_store::StoreError;

/// Why the edge could not start (or a start-up step failed).
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// Reading or writing a file (certificates, keys) failed.
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Certificate or key material that cannot be used.
    #[error("unusable TLS material ({what}): {reason}")]
    Tls { what: String, reason: String },
    /// A listener could not be bound (address in use, permission).
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A configuration value the edge cannot work with.
    #[error("invalid edge configuration: {0}")]
    Config(String),
    /// The store failed during start-up.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl EdgeError {
    /// Whether starting again later (without changing anything) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            // The address may be freed by a process that is shutting down.
            EdgeError::Bind { .. } => true,
            EdgeError::Store(e) => e.is_retryable(),
            EdgeError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
            ),
            EdgeError::Tls { .. } | EdgeError::Config(_) => false,
        }
    }

    pub(crate) fn tls(what: impl Into<String>, reason: impl ToString) -> Self {
        EdgeError::Tls {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// Why an eyeball request could not be proxied through a tunnel. The public
/// listener turns each into an error page ([`crate::pages`]).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No tunnel serves this host.
    #[error("no tunnel serves host {0:?}")]
    UnknownHost(String),
    /// The tunnel exists but has no live, non-draining connection here.
    #[error("tunnel {0} has no usable connection")]
    NoConnection(uuid::Uuid),
    /// No stream could be opened on any of the tunnel's connections (they
    /// closed or are saturated). Nothing reached the connector.
    #[error("could not open a stream to the connector: {0}")]
    OpenStream(String),
    /// Writing the request head or body to the connector failed.
    #[error("sending the request to the connector failed: {0}")]
    Send(String),
    /// The connector's answer was not a well-formed response head.
    #[error("malformed response from the connector: {0}")]
    BadResponse(String),
    /// The connector reported an error instead of a response.
    #[error("the connector reported: {0}")]
    Connector(String),
    /// The connector sent no response head in time.
    #[error("no response from the connector within {0:?}")]
    Timeout(std::time::Duration),
}

impl ProxyError {
    /// Whether sending the same request again (on another connection, or
    /// later) can help. Only failures before anything was sent qualify.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::OpenStream(_) | ProxyError::NoConnection(_)
        )
    }
}
