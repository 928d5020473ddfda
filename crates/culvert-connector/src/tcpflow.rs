//! Private-network TCP flows (`warp-routing`; edge-protocol.md §4.5 over
//! QUIC, §5.2 over HTTP/2).
//!
//! The transport-neutral part is [`dial`]: the `warp-routing.enabled`
//! check (2023.7.3 refuses flows without it, with cloudflared's own error
//! text), the `ip:port` destination and the dial under
//! `warp-routing.connectTimeout` (default 5 s). Each transport then answers
//! in its own way; over QUIC ([`serve_quic`]) that is an empty
//! `ConnectResponse` (the "ack") or one carrying only `error`, exactly as
//! 2023.7.3 writes it, then the raw bytes.
//!
//! Half-close: cloudflared ends the whole flow when either direction ends,
//! which loses a reply sent after the client's FIN. Here a FIN from the
//! edge shuts down the origin socket's write side and the origin's reply
//! still flows back until the origin closes (a superset: an edge that never
//! half-closes sees no difference). A reset or STOP_SENDING from either
//! side ends both directions. Each direction holds one bounded buffer.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use culvert_proto::connect::{ConnectRequest, ConnectResponse};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::proxy::{ProxyContext, StreamError};

/// cloudflared's default `warp-routing.connectTimeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from either side at once.
const CHUNK: usize = 32 * 1024;
/// How long a finished flow waits for the edge to read the rest.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// cloudflared 2023.7.3's refusal, verbatim (a Go raw string: the `\n\t`
/// are a backslash and a letter, not control characters).
pub const WARP_ROUTING_DISABLED: &str = r#"cloudflared received a request from WARP client, but your configuration has disabled ingress from WARP clients. To enable this, set "warp-routing:\n\t enabled: true" in your config.yaml"#;

/// Why a flow could not start. `Display` is the text sent to the edge, in
/// Go's `net.Dial` wording where cloudflared passes that error through.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("{WARP_ROUTING_DISABLED}")]
    Disabled,
    #[error("dial tcp: address {0}: destination is not ip:port")]
    BadDest(String),
    #[error("dial tcp {addr}: {}", go_dial_error(.source))]
    Dial {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("dial tcp {0}: i/o timeout")]
    Timeout(SocketAddr),
}

/// The tail Go puts on a failed dial (`connect: connection refused`…).
fn go_dial_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connect: connection refused".into(),
        io::ErrorKind::HostUnreachable => "connect: no route to host".into(),
        io::ErrorKind::NetworkUnreachable => "connect: network is unreachable".into(),
        io::ErrorKind::TimedOut => "i/o timeout".into(),
        _ => format!("connect: {e}"),
    }
}

/// Parses a flow destination: `ip:port` only (cloudflared HEAD parses it as
/// a `netip.AddrPort`; names are not resolved on the connector).
pub fn parse_dest(dest: &str) -> Result<SocketAddr, FlowError> {
    dest.trim()
        .parse::<SocketAddr>()
        .map_err(|_| FlowError::BadDest(dest.to_owned()))
}

/// Checks `warp-routing` and dials `dest`. Shared by both transports.
pub async fn dial(ctx: &ProxyContext, dest: &str) -> Result<TcpStream, FlowError> {
    let warp = ctx.orchestrator.snapshot().ingress.warp_routing.clone();
    if warp.enabled != Some(true) {
        return Err(FlowError::Disabled);
    }
    let addr = parse_dest(dest)?;
    let timeout = warp
        .connect_timeout
        .map(|d| d.to_std())
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(t)) => t,
        Ok(Err(source)) => return Err(FlowError::Dial { addr, source }),
        Err(_) => return Err(FlowError::Timeout(addr)),
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The ack: an empty `ConnectResponse`. cloudflared adds
/// `Cf-Int-Cloudflared-Tracing` only when it recorded spans, which this
/// connector does not.
pub fn ack() -> ConnectResponse {
    ConnectResponse::default()
}

/// A refusal as 2023.7.3 writes it: `error` set, no metadata.
pub fn refusal(e: &FlowError) -> ConnectResponse {
    ConnectResponse {
        error: e.to_string(),
        metadata: Vec::new(),
    }
}

/// Serves a type-`tcp` data stream whose `ConnectRequest` has been read;
/// `initial` holds bytes that arrived with it.
pub async fn serve_quic(
    ctx: &ProxyContext,
    req: &ConnectRequest,
    initial: Bytes,
    mut recv: quinn::RecvStream,
    mut send: quinn::SendStream,
) -> Result<(), StreamError> {
    let origin = match dial(ctx, &req.dest).await {
        Ok(t) => t,
        Err(e) => {
            match &e {
                FlowError::Disabled => tracing::error!("{e}"),
                _ => tracing::warn!(dest = %req.dest, error = %e, "private TCP flow failed"),
            }
            send.write_all(&refusal(&e).encode()).await?;
            let _ = recv.stop(quinn::VarInt::from_u32(0));
            send.finish()?;
            let _ = tokio::time::timeout(FINISH_TIMEOUT, send.stopped()).await;
            return Ok(());
        }
    };
    tracing::debug!(dest = %req.dest, "private TCP flow started");
    send.write_all(&ack().encode()).await?;
    match splice(initial, &mut recv, &mut send, origin).await {
        Ok(()) => {
            let _ = tokio::time::timeout(FINISH_TIMEOUT, send.stopped()).await;
            Ok(())
        }
        Err(e) => {
            // Bytes may have been lost: tell the edge with a reset.
            let _ = send.reset(quinn::VarInt::from_u32(0));
            let _ = recv.stop(quinn::VarInt::from_u32(0));
            Err(StreamError::Io(e))
        }
    }
}

/// Copies edge → origin (then shuts down the origin's write side) and
/// origin → edge (then FIN) until both directions are done; the first
/// error ends both.
async fn splice(
    initial: Bytes,
    recv: &mut quinn::RecvStream,
    send: &mut quinn::SendStream,
    origin: TcpStream,
) -> io::Result<()> {
    let (mut ord, mut owr) = origin.into_split();
    let up = async {
        if !initial.is_empty() {
            owr.write_all(&initial).await?;
        }
        let mut buf = vec![0u8; CHUNK];
        while let Some(n) = recv.read(&mut buf).await.map_err(io::Error::other)? {
            owr.write_all(&buf[..n]).await?;
        }
        owr.shutdown().await
    };
    let down = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut ord, &mut buf).await?;
            if n == 0 {
                break;
            }
            send.write_all(&buf[..n]).await.map_err(io::Error::other)?;
        }
        send.finish().map_err(io::Error::other)
    };
    tokio::try_join!(up, down).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn texts_match_cloudflared() {
        assert_eq!(
            FlowError::Disabled.to_string(),
            "cloudflared received a request from WARP client, but your configuration has \
             disabled ingress from WARP clients. To enable this, set \"warp-routing:\\n\\t \
             enabled: true\" in your config.yaml"
        );
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let e = FlowError::Dial {
            addr,
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(
            e.to_string(),
            "dial tcp 127.0.0.1:9: connect: connection refused"
        );
        assert_eq!(
            FlowError::Timeout(addr).to_string(),
            "dial tcp 127.0.0.1:9: i/o timeout"
        );
        let r = refusal(&e);
        assert!(r.metadata.is_empty());
        assert!(ack().error.is_empty() && ack().metadata.is_empty());
    }

    #[test]
    fn destinations() {
        assert_eq!(
            parse_dest("10.0.0.1:22").unwrap(),
            "10.0.0.1:22".parse::<SocketAddr>().unwrap()
        );
        assert!(parse_dest("[::1]:8080").is_ok());
        assert!(matches!(
            parse_dest("db.internal:5432"),
            Err(FlowError::BadDest(_))
        ));
        assert!(matches!(parse_dest("10.0.0.1"), Err(FlowError::BadDest(_))));
        assert!(parse_dest("").is_err());
    }

    proptest! {
        #[test]
        fn parse_dest_total(s in any::<String>()) {
            match parse_dest(&s) {
                Ok(a) => prop_assert_eq!(a, s.trim().parse::<SocketAddr>().unwrap()),
                Err(e) => prop_assert!(e.to_string().contains(&s)),
            }
        }
    }
}
