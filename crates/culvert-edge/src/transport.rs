//! The transports a registered connector connection can use: QUIC
//! (edge-protocol.md §4) or HTTP/2 over TLS/TCP (§5). The live registry,
//! the API hooks and the public listener hold a [`Transport`] and only ask
//! it to close or whether it is closed; sending work over it is done by the
//! transport's own module (`proxy`/`push` for QUIC, `h2conn` for HTTP/2).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::VarInt;

use crate::h2conn::H2Handle;
use crate::registry::LiveConn;

/// How many connections one request may try to open a stream on.
pub(crate) const MAX_OPEN_ATTEMPTS: usize = 3;

/// One connector connection, whichever transport carries it.
#[derive(Clone)]
pub enum Transport {
    Quic(quinn::Connection),
    Http2(H2Handle),
}

impl Transport {
    /// Closes the connection (cloudflared reconnects with backoff). On
    /// HTTP/2 the code and reason are not sent: the TCP connection is
    /// simply closed, which is what cloudflared watches.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        match self {
            Transport::Quic(c) => c.close(code, reason),
            Transport::Http2(h) => h.close(),
        }
    }

    /// Whether the connection has ended (or is being closed).
    pub fn is_closed(&self) -> bool {
        match self {
            Transport::Quic(c) => c.close_reason().is_some(),
            Transport::Http2(h) => h.is_closed(),
        }
    }

    /// The QUIC connection, if this is one.
    pub fn quic(&self) -> Option<&quinn::Connection> {
        match self {
            Transport::Quic(c) => Some(c),
            Transport::Http2(_) => None,
        }
    }

    /// The HTTP/2 connection, if this is one.
    pub fn http2(&self) -> Option<&H2Handle> {
        match self {
            Transport::Quic(_) => None,
            Transport::Http2(h) => Some(h),
        }
    }

    /// `quic` or `http2`, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Transport::Quic(_) => "quic",
            Transport::Http2(_) => "http2",
        }
    }

    pub fn remote_address(&self) -> SocketAddr {
        match self {
            Transport::Quic(c) => c.remote_address(),
            Transport::Http2(h) => h.peer(),
        }
    }
}

/// The QUIC connections among `candidates`, in their round-robin order, as
/// many as one request may try.
pub(crate) fn quic_candidates(
    candidates: &[Arc<LiveConn>],
) -> impl Iterator<Item = (&LiveConn, &quinn::Connection)> {
    candidates
        .iter()
        .filter_map(|c| c.conn.quic().map(|q| (c.as_ref(), q)))
        .take(MAX_OPEN_ATTEMPTS)
}

/// Opens a request stream on `quic` within `timeout` (quinn waits while the
/// connector's stream limit is reached). The error names the connection.
pub(crate) async fn open_quic_stream(
    conn: &LiveConn,
    quic: &quinn::Connection,
    timeout: Duration,
) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
    match tokio::time::timeout(timeout, quic.open_bi()).await {
        Ok(Ok(streams)) => Ok(streams),
        Ok(Err(e)) => Err(format!("connection {}: {e}", conn.id)),
        Err(_) => Err(format!("connection {}: stream limit reached", conn.id)),
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("kind", &self.name())
            .field("peer", &self.remote_address())
            .finish()
    }
}
