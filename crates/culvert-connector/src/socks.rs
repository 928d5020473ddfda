//! SOCKS5 on stream requests (RFC 1928, no authentication, CONNECT only).
//!
//! Two cloudflared behaviours use it:
//! - `originRequest.proxyType: socks` on a TCP service (`tcp://`, `ssh://`,
//!   …): the eyeball speaks SOCKS5 inside the stream; the connector answers
//!   the handshake itself and connects every request to the rule's own
//!   origin, whatever address the client asked for ([`serve_proxy_type_socks`]).
//! - the `socks-proxy` service: a real SOCKS5 proxy whose destinations are
//!   filtered by the rule's `ipRules` policy ([`serve_socks_proxy`]).
//!
//! The message parsers are pure ([`parse_greeting`], [`parse_request`]) and
//! bounded (a SOCKS5 request is at most 262 bytes); the async functions
//! work on any `AsyncRead + AsyncWrite` stream (a QUIC stream, a
//! WebSocket adapter, or a socket in tests). Wiring them to stream requests
//! is the stream proxy's job.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use culvert_ingress::IpAccessPolicy;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
const NO_ACCEPTABLE: u8 = 0xff;
const CMD_CONNECT: u8 = 1;
/// Largest greeting (2 + 255 methods) and request (4 + 1 + 255 + 2).
const MAX_MESSAGE: usize = 262;

/// SOCKS5 reply codes.
pub mod reply {
    pub const SUCCEEDED: u8 = 0;
    pub const GENERAL_FAILURE: u8 = 1;
    pub const NOT_ALLOWED: u8 = 2;
    pub const NETWORK_UNREACHABLE: u8 = 3;
    pub const HOST_UNREACHABLE: u8 = 4;
    pub const CONNECTION_REFUSED: u8 = 5;
    pub const COMMAND_NOT_SUPPORTED: u8 = 7;
    pub const ADDRESS_NOT_SUPPORTED: u8 = 8;
}

/// Why a SOCKS exchange ended early.
#[derive(Debug, thiserror::Error)]
pub enum SocksError {
    #[error("not SOCKS5 (version byte {0})")]
    Version(u8),
    #[error("the client offers no method without authentication")]
    NoAcceptableMethod,
    #[error("malformed SOCKS5 message: {0}")]
    Malformed(&'static str),
    #[error("unsupported SOCKS5 command {0}")]
    Command(u8),
    #[error("unsupported address type {0}")]
    AddressType(u8),
    #[error("destination {0} is not allowed by the rule's ipRules")]
    NotAllowed(String),
    #[error("connecting to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stream I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A CONNECT destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Ip(SocketAddr),
    Domain(String, u16),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Ip(a) => write!(f, "{a}"),
            Target::Domain(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// The client's greeting: whether no-auth is offered, and bytes used.
/// `Ok(None)` = incomplete.
pub fn parse_greeting(buf: &[u8]) -> Result<Option<(bool, usize)>, SocksError> {
    let Some(&v) = buf.first() else {
        return Ok(None);
    };
    if v != VERSION {
        return Err(SocksError::Version(v));
    }
    let Some(&n) = buf.get(1) else {
        return Ok(None);
    };
    let end = 2 + usize::from(n);
    let Some(methods) = buf.get(2..end) else {
        return Ok(None);
    };
    Ok(Some((methods.contains(&NO_AUTH), end)))
}

/// A request: command and target, and bytes used. `Ok(None)` = incomplete.
pub fn parse_request(buf: &[u8]) -> Result<Option<(u8, Target, usize)>, SocksError> {
    if buf.len() < 4 {
        if let Some(&v) = buf.first()
            && v != VERSION
        {
            return Err(SocksError::Version(v));
        }
        return Ok(None);
    }
    if buf[0] != VERSION {
        return Err(SocksError::Version(buf[0]));
    }
    if buf[2] != 0 {
        return Err(SocksError::Malformed("reserved byte is not zero"));
    }
    let cmd = buf[1];
    let host_end = match buf[3] {
        1 => 8,
        4 => 20,
        3 => match buf.get(4) {
            None => return Ok(None),
            Some(0) => return Err(SocksError::Malformed("empty domain name")),
            Some(&len) => 5 + usize::from(len),
        },
        t => return Err(SocksError::AddressType(t)),
    };
    let Some(port) = buf.get(host_end..host_end + 2) else {
        return Ok(None);
    };
    let port = u16::from_be_bytes([port[0], port[1]]);
    let target = match buf[3] {
        1 => {
            let ip = Ipv4Addr::new(buf[4], buf[5], buf[6], buf[7]);
            Target::Ip(SocketAddr::new(IpAddr::V4(ip), port))
        }
        4 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&buf[4..20]);
            Target::Ip(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
        }
        _ => {
            let name = std::str::from_utf8(&buf[5..host_end])
                .map_err(|_| SocksError::Malformed("domain name is not UTF-8"))?;
            Target::Domain(name.to_owned(), port)
        }
    };
    Ok(Some((cmd, target, host_end + 2)))
}

/// A reply with `code` and the bound address (0.0.0.0:0 when unknown).
pub fn encode_reply(code: u8, bound: Option<SocketAddr>) -> Vec<u8> {
    let bound = bound.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut out = vec![VERSION, code, 0];
    match bound.ip() {
        IpAddr::V4(ip) => {
            out.push(1);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    out
}

async fn read_message<S, T>(
    s: &mut S,
    buf: &mut Vec<u8>,
    parse: impl Fn(&[u8]) -> Result<Option<T>, SocksError>,
) -> Result<T, SocksError>
where
    S: AsyncRead + Unpin,
{
    loop {
        if let Some(v) = parse(buf)? {
            return Ok(v);
        }
        if buf.len() >= MAX_MESSAGE {
            return Err(SocksError::Malformed("message too long"));
        }
        let mut byte = [0u8; 64];
        let want = (MAX_MESSAGE - buf.len()).min(byte.len());
        let n = s.read(&mut byte[..want]).await?;
        if n == 0 {
            return Err(SocksError::Malformed("stream ended mid-message"));
        }
        buf.extend_from_slice(&byte[..n]);
    }
}

/// Runs the server side of the handshake up to the CONNECT request and
/// returns its target and any bytes the client sent after it. Replies to
/// bad greetings and unsupported commands before failing.
pub async fn accept<S>(s: &mut S) -> Result<(Target, Vec<u8>), SocksError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    let (no_auth, used) = read_message(s, &mut buf, parse_greeting).await?;
    buf.drain(..used);
    if !no_auth {
        s.write_all(&[VERSION, NO_ACCEPTABLE]).await?;
        return Err(SocksError::NoAcceptableMethod);
    }
    s.write_all(&[VERSION, NO_AUTH]).await?;
    let parsed = read_message(s, &mut buf, parse_request).await;
    let (cmd, target, used) = match parsed {
        Ok(v) => v,
        Err(e @ SocksError::AddressType(_)) => {
            s.write_all(&encode_reply(reply::ADDRESS_NOT_SUPPORTED, None))
                .await?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    buf.drain(..used);
    if cmd != CMD_CONNECT {
        s.write_all(&encode_reply(reply::COMMAND_NOT_SUPPORTED, None))
            .await?;
        return Err(SocksError::Command(cmd));
    }
    Ok((target, buf))
}

fn connect_reply_code(e: &std::io::Error) -> u8 {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => reply::CONNECTION_REFUSED,
        std::io::ErrorKind::TimedOut => reply::HOST_UNREACHABLE,
        _ => reply::NETWORK_UNREACHABLE,
    }
}

async fn dial(addr: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}

/// Answers success and splices `s` and `origin` until both sides end.
async fn splice<S>(s: &mut S, mut origin: TcpStream, early: Vec<u8>) -> Result<(), SocksError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let bound = origin.local_addr().ok();
    s.write_all(&encode_reply(reply::SUCCEEDED, bound)).await?;
    if !early.is_empty() {
        origin.write_all(&early).await?;
    }
    tokio::io::copy_bidirectional(s, &mut origin).await?;
    Ok(())
}

/// `proxyType: socks`: the handshake is answered here and every CONNECT
/// goes to `origin` (the rule's service address), as cloudflared does.
pub async fn serve_proxy_type_socks<S>(
    mut s: S,
    origin: &str,
    connect_timeout: Duration,
) -> Result<(), SocksError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (target, early) = accept(&mut s).await?;
    tracing::debug!(%target, origin, "SOCKS CONNECT to the rule's origin");
    match dial(origin, connect_timeout).await {
        Ok(conn) => splice(&mut s, conn, early).await,
        Err(source) => {
            s.write_all(&encode_reply(connect_reply_code(&source), None))
                .await?;
            Err(SocksError::Connect {
                target: origin.to_owned(),
                source,
            })
        }
    }
}

/// The `socks-proxy` service: CONNECT to the requested destination if the
/// rule's `ipRules` allow its address and port.
pub async fn serve_socks_proxy<S>(
    mut s: S,
    policy: &IpAccessPolicy,
    connect_timeout: Duration,
) -> Result<(), SocksError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (target, early) = accept(&mut s).await?;
    let (host, port) = match &target {
        Target::Ip(a) => (a.ip().to_string(), a.port()),
        Target::Domain(h, p) => (h.clone(), *p),
    };
    let resolved: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), port)).await {
        Ok(addrs) => addrs.collect(),
        Err(source) => {
            s.write_all(&encode_reply(reply::HOST_UNREACHABLE, None))
                .await?;
            return Err(SocksError::Connect {
                target: target.to_string(),
                source,
            });
        }
    };
    let Some(addr) = resolved
        .into_iter()
        .find(|a| policy.allowed(a.ip(), a.port()))
    else {
        s.write_all(&encode_reply(reply::NOT_ALLOWED, None)).await?;
        return Err(SocksError::NotAllowed(target.to_string()));
    };
    match dial(&addr.to_string(), connect_timeout).await {
        Ok(conn) => splice(&mut s, conn, early).await,
        Err(source) => {
            s.write_all(&encode_reply(connect_reply_code(&source), None))
                .await?;
            Err(SocksError::Connect {
                target: target.to_string(),
                source,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_messages() {
        assert_eq!(parse_greeting(&[5]).unwrap(), None);
        assert_eq!(parse_greeting(&[5, 2, 2]).unwrap(), None);
        assert_eq!(parse_greeting(&[5, 2, 2, 0]).unwrap(), Some((true, 4)));
        assert_eq!(parse_greeting(&[5, 1, 2]).unwrap(), Some((false, 3)));
        assert!(matches!(
            parse_greeting(&[4, 1, 0]),
            Err(SocksError::Version(4))
        ));

        let v4 = [5, 1, 0, 1, 127, 0, 0, 1, 0x1f, 0x90];
        assert_eq!(
            parse_request(&v4).unwrap(),
            Some((1, Target::Ip("127.0.0.1:8080".parse().unwrap()), 10))
        );
        assert_eq!(parse_request(&v4[..9]).unwrap(), None);
        let mut d = vec![5, 1, 0, 3, 4];
        d.extend_from_slice(b"a.io");
        d.extend_from_slice(&[0, 80]);
        assert_eq!(
            parse_request(&d).unwrap(),
            Some((1, Target::Domain("a.io".into(), 80), 11))
        );
        let mut v6 = vec![5, 1, 0, 4];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0, 22]);
        assert_eq!(
            parse_request(&v6).unwrap().unwrap().1,
            Target::Ip("[::1]:22".parse().unwrap())
        );
        assert!(matches!(
            parse_request(&[5, 1, 0, 9, 0]),
            Err(SocksError::AddressType(9))
        ));
        assert!(parse_request(&[5, 1, 1, 1]).is_err());
        assert_eq!(
            encode_reply(0, Some("127.0.0.1:1".parse().unwrap())),
            [5, 0, 0, 1, 127, 0, 0, 1, 0, 1]
        );
    }

    async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (addr, task)
    }

    async fn client_connect(c: &mut tokio::io::DuplexStream, req: &[u8]) -> Vec<u8> {
        c.write_all(&[5, 1, 0]).await.unwrap();
        let mut m = [0u8; 2];
        c.read_exact(&mut m).await.unwrap();
        assert_eq!(m, [5, 0]);
        c.write_all(req).await.unwrap();
        let mut r = [0u8; 10];
        c.read_exact(&mut r).await.unwrap();
        r.to_vec()
    }

    #[tokio::test]
    async fn proxy_type_socks_always_reaches_the_rule_origin() {
        let (echo, task) = echo_server().await;
        let (mut client, server) = tokio::io::duplex(4096);
        let origin = echo.to_string();
        let srv = tokio::spawn(async move {
            serve_proxy_type_socks(server, &origin, Duration::from_secs(5)).await
        });
        // Asks for somewhere else entirely; lands on the echo origin.
        let mut req = vec![5, 1, 0, 3, 9];
        req.extend_from_slice(b"elsewhere");
        req.extend_from_slice(&[0, 80]);
        let r = client_connect(&mut client, &req).await;
        assert_eq!(r[1], reply::SUCCEEDED);
        client.write_all(b"ping over socks").await.unwrap();
        let mut back = [0u8; 15];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping over socks");
        drop(client);
        srv.await.unwrap().unwrap();
        task.abort();
    }

    #[tokio::test]
    async fn socks_proxy_applies_ip_rules() {
        let (echo, task) = echo_server().await;
        let ingress = culvert_ingress::parse_remote_config(&serde_json::json!({
            "ingress": [{"service": "socks-proxy", "originRequest": {"ipRules": [
                {"prefix": "127.0.0.0/8", "ports": [echo.port()], "allow": true}
            ]}}]
        }))
        .unwrap();
        let policy = ingress.rules[0].socks_policy.clone();
        let port = echo.port().to_be_bytes();
        let allowed = [5, 1, 0, 1, 127, 0, 0, 1, port[0], port[1]];

        let (mut client, server) = tokio::io::duplex(4096);
        let p = policy.clone();
        let srv =
            tokio::spawn(
                async move { serve_socks_proxy(server, &p, Duration::from_secs(5)).await },
            );
        assert_eq!(
            client_connect(&mut client, &allowed).await[1],
            reply::SUCCEEDED
        );
        client.write_all(b"hi").await.unwrap();
        let mut back = [0u8; 2];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hi");
        drop(client);
        srv.await.unwrap().unwrap();

        // Another port: refused by the policy (default deny).
        let other = echo.port().wrapping_add(1).to_be_bytes();
        let denied = [5, 1, 0, 1, 127, 0, 0, 1, other[0], other[1]];
        let (mut client, server) = tokio::io::duplex(4096);
        let srv = tokio::spawn(async move {
            serve_socks_proxy(server, &policy, Duration::from_secs(5)).await
        });
        assert_eq!(
            client_connect(&mut client, &denied).await[1],
            reply::NOT_ALLOWED
        );
        assert!(matches!(srv.await.unwrap(), Err(SocksError::NotAllowed(_))));

        // No acceptable method; BIND is not supported.
        let (mut client, server) = tokio::io::duplex(4096);
        let srv = tokio::spawn(async move { accept(&mut { server }).await });
        client.write_all(&[5, 1, 2]).await.unwrap();
        let mut m = [0u8; 2];
        client.read_exact(&mut m).await.unwrap();
        assert_eq!(m, [5, 0xff]);
        assert!(matches!(
            srv.await.unwrap(),
            Err(SocksError::NoAcceptableMethod)
        ));
        let (mut client, server) = tokio::io::duplex(4096);
        let srv = tokio::spawn(async move { accept(&mut { server }).await });
        let mut bind = allowed;
        bind[1] = 2;
        assert_eq!(
            client_connect(&mut client, &bind).await[1],
            reply::COMMAND_NOT_SUPPORTED
        );
        assert!(matches!(srv.await.unwrap(), Err(SocksError::Command(2))));
        task.abort();
    }

    proptest! {
        #[test]
        fn parsers_are_total(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_greeting(&b);
            if let Ok(Some((_, _, used))) = parse_request(&b) {
                prop_assert!(used <= b.len());
            }
        }
    }
}
