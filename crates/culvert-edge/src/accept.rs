//! The accept loop shared by the edge's TLS-over-TCP listeners (connector
//! HTTP/2 and public HTTPS): a bound on open connections, a bound on each
//! handshake, and one task per connection.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// Limits of one TLS listener.
pub(crate) struct TlsLimits {
    /// For logs: "HTTP/2 connector", "HTTPS".
    pub what: &'static str,
    /// Connections open at once; more are dropped at accept.
    pub max_connections: usize,
    pub handshake_timeout: Duration,
}

/// Accepts connections until `shutdown`, completes each TLS handshake in its
/// own task and hands the stream to `serve` with the connection's slot
/// (released when `serve` drops it).
pub(crate) async fn accept_tls<F, Fut>(
    shutdown: CancellationToken,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: TlsLimits,
    serve: F,
) where
    F: Fn(TlsStream<TcpStream>, SocketAddr, OwnedSemaphorePermit) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let what = limits.what;
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Usually EMFILE: back off rather than spin.
                    tracing::warn!(error = %e, "accepting an {what} connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many {what} connections; refusing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, serve) = (acceptor.clone(), serve.clone());
        let handshake_timeout = limits.handshake_timeout;
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => serve(tls, peer, permit).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}
