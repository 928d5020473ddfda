//! `culvert access ssh|tcp|rdp|smb`: the eyeball side of TCP services, as
//! `cloudflared access` does it.
//!
//! Each local connection (accepted on `--url`, or stdin/stdout when `--url`
//! is absent, which is how SSH's `ProxyCommand` uses it) becomes one
//! WebSocket to `--hostname` (`https://` assumed without a scheme, so
//! `wss://HOST/`), with `Host: HOST` and cloudflared's optional headers:
//! `Cf-Access-Client-Id`/`Cf-Access-Client-Secret` for a service token and
//! `Cf-Access-Jump-Destination` for `--destination`. The edge forwards it
//! to the connector as a `websocket` stream and the connector, for a
//! `tcp://`/`ssh://`… rule, dials the service and bridges the WebSocket
//! message payloads to it ([`crate::stream_origin`]). Bytes go out as one
//! binary message per read; received text and binary payloads are written
//! as they are.
//!
//! `--edge-url` (culvert's addition) dials another address than the
//! hostname's, e.g. `http://127.0.0.1:8080` for a local public listener,
//! while still sending `Host: HOST` (and SNI HOST over TLS).

use std::sync::Arc;

use clap::{Args, Subcommand};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_util::sync::CancellationToken;

use crate::stream_origin::{BridgeError, bridge, ws_config};
use crate::tls::{OriginTrust, origin_tls_config};

/// `culvert access …`.
#[derive(Debug, Clone, Subcommand)]
pub enum AccessCommand {
    /// Carry a TCP stream (SSH, RDP, SMB, any TCP) over a WebSocket to a
    /// tunnel's TCP service. Without --url it uses stdin/stdout (SSH
    /// `ProxyCommand culvert access ssh --hostname %h`).
    #[command(visible_aliases = ["tcp", "rdp", "smb"])]
    Ssh(AccessArgs),
}

/// Flags of `access ssh|tcp|rdp|smb` (cloudflared's names and variables).
#[derive(Debug, Clone, Args)]
pub struct AccessArgs {
    /// The public hostname of the TCP service (`ssh.example.com` or a URL).
    #[arg(long, env = "TUNNEL_SERVICE_HOSTNAME")]
    pub hostname: String,
    /// Listen here (HOST:PORT) and carry each accepted connection; without
    /// it, stdin/stdout are carried.
    #[arg(long, env = "TUNNEL_SERVICE_URL")]
    pub url: Option<String>,
    /// Destination for a bastion rule (`Cf-Access-Jump-Destination`).
    #[arg(long, env = "TUNNEL_SERVICE_DESTINATION")]
    pub destination: Option<String>,
    /// Extra request header `NAME: VALUE` (repeatable).
    #[arg(long = "header", short = 'H', env = "TUNNEL_SERVICE_HEADER")]
    pub headers: Vec<String>,
    /// Access service token id (`Cf-Access-Client-Id`).
    #[arg(long, alias = "id", env = "TUNNEL_SERVICE_TOKEN_ID")]
    pub service_token_id: Option<String>,
    /// Access service token secret (`Cf-Access-Client-Secret`).
    #[arg(long, alias = "secret", env = "TUNNEL_SERVICE_TOKEN_SECRET")]
    pub service_token_secret: Option<String>,
    /// Dial this URL (`http://` or `https://` HOST:PORT) instead of the
    /// hostname, e.g. culvert's public listener; Host stays the hostname.
    #[arg(long, env = "CULVERT_ACCESS_EDGE_URL")]
    pub edge_url: Option<String>,
}

/// Why an access session failed.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("invalid {flag} {value:?}: {reason}")]
    Flag {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("websocket handshake with {url} failed: {reason}")]
    Handshake { url: String, reason: String },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Bridge(#[from] BridgeError),
}

fn flag_err(flag: &'static str, value: &str, reason: impl ToString) -> AccessError {
    AccessError::Flag {
        flag,
        value: value.to_owned(),
        reason: reason.to_string(),
    }
}

/// Where and how an access session connects (pure; from the flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The WebSocket URL requested (`wss://HOST[:PORT]/path`).
    pub ws_url: String,
    /// `Host` header value.
    pub host_header: String,
    /// TCP address dialed.
    pub dial: String,
    /// TLS to the dialed address, with SNI `sni`.
    pub tls: bool,
    pub sni: String,
    /// Extra request headers, in order.
    pub headers: Vec<(String, String)>,
}

/// A hostname flag as cloudflared reads it: `https://` when no scheme.
fn parse_http_url(flag: &'static str, raw: &str) -> Result<url::Url, AccessError> {
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("https://{raw}")
    };
    let u = url::Url::parse(&with_scheme).map_err(|e| flag_err(flag, raw, e))?;
    if !matches!(u.scheme(), "http" | "https" | "ws" | "wss") {
        return Err(flag_err(flag, raw, "the scheme must be http or https"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(flag_err(flag, raw, "no host"));
    }
    Ok(u)
}

fn is_tls(u: &url::Url) -> bool {
    matches!(u.scheme(), "https" | "wss")
}

fn authority(u: &url::Url) -> String {
    let host = u.host_str().unwrap_or_default();
    match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}

impl Target {
    pub fn from_args(args: &AccessArgs) -> Result<Target, AccessError> {
        let origin = parse_http_url("--hostname", &args.hostname)?;
        let dial_url = match &args.edge_url {
            Some(e) => parse_http_url("--edge-url", e)?,
            None => origin.clone(),
        };
        let tls = is_tls(&dial_url);
        let port = dial_url
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        let dial_host = dial_url.host_str().unwrap_or_default();
        let dial = if dial_host.contains(':') {
            format!("[{}]:{port}", dial_host.trim_matches(['[', ']']))
        } else {
            format!("{dial_host}:{port}")
        };
        let scheme = if is_tls(&origin) { "wss" } else { "ws" };
        let host_header = authority(&origin);
        let path = match origin.query() {
            Some(q) => format!("{}?{q}", origin.path()),
            None => origin.path().to_owned(),
        };
        let mut headers = Vec::new();
        for h in &args.headers {
            let Some((name, value)) = h.split_once(':') else {
                return Err(flag_err("--header", h, "expected NAME: VALUE"));
            };
            let name = name.trim();
            if HeaderName::from_bytes(name.as_bytes()).is_err()
                || HeaderValue::from_str(value.trim()).is_err()
            {
                return Err(flag_err("--header", h, "not a valid HTTP header"));
            }
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        if let Some(id) = &args.service_token_id {
            headers.push(("Cf-Access-Client-Id".into(), id.clone()));
        }
        if let Some(secret) = &args.service_token_secret {
            headers.push(("Cf-Access-Client-Secret".into(), secret.clone()));
        }
        if let Some(dest) = &args.destination {
            headers.push(("Cf-Access-Jump-Destination".into(), dest.clone()));
        }
        headers.push((
            "User-Agent".into(),
            concat!("culvert/", env!("CARGO_PKG_VERSION")).into(),
        ));
        Ok(Target {
            ws_url: format!("{scheme}://{host_header}{path}"),
            sni: origin.host_str().unwrap_or_default().to_owned(),
            host_header,
            dial,
            tls,
            headers,
        })
    }
}

/// Any byte stream the WebSocket runs over (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Opens the WebSocket to the edge.
pub async fn open(target: &Target) -> Result<WebSocketStream<Box<dyn Io>>, AccessError> {
    let tcp = TcpStream::connect(&target.dial)
        .await
        .map_err(|source| AccessError::Connect {
            addr: target.dial.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = if target.tls {
        let mut cfg =
            origin_tls_config(&OriginTrust::System).map_err(|e| AccessError::Tls(e.to_string()))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(target.sni.clone())
            .map_err(|e| AccessError::Tls(format!("server name {:?}: {e}", target.sni)))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| AccessError::Tls(format!("handshake with {}: {e}", target.dial)))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let handshake_err = |reason: String| AccessError::Handshake {
        url: target.ws_url.clone(),
        reason,
    };
    let mut req = target
        .ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| handshake_err(e.to_string()))?;
    let h = req.headers_mut();
    h.insert(
        "host",
        HeaderValue::from_str(&target.host_header).map_err(|e| handshake_err(e.to_string()))?,
    );
    for (name, value) in &target.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.append(n, v);
        }
    }
    let (ws, _resp) = tokio_tungstenite::client_async_with_config(req, io, Some(ws_config()))
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                handshake_err(format!("the edge answered {}", resp.status()))
            }
            e => handshake_err(e.to_string()),
        })?;
    Ok(ws)
}

/// Carries one local stream over a new WebSocket.
pub async fn carry<T: AsyncRead + AsyncWrite + Unpin>(
    target: &Target,
    local: T,
) -> Result<(), AccessError> {
    let ws = open(target).await?;
    bridge(ws, local).await?;
    Ok(())
}

/// Accepts local connections until `cancel`, one WebSocket each.
pub async fn serve_listener(
    target: Target,
    listener: TcpListener,
    cancel: CancellationToken,
) -> Result<(), AccessError> {
    let target = Arc::new(target);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a local connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let target = target.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = carry(&target, tcp) => if let Err(e) = r {
                    tracing::warn!(%peer, error = %e, "access connection ended with an error");
                },
            }
        });
    }
}

/// `culvert access ssh|tcp|rdp|smb`.
pub async fn run_access_command(cmd: AccessCommand) -> Result<(), AccessError> {
    let AccessCommand::Ssh(args) = cmd;
    let target = Target::from_args(&args)?;
    match &args.url {
        Some(addr) => {
            let addr = addr
                .strip_prefix("tcp://")
                .unwrap_or(addr.as_str())
                .to_owned();
            let listener =
                TcpListener::bind(&addr)
                    .await
                    .map_err(|source| AccessError::Listen {
                        addr: addr.clone(),
                        source,
                    })?;
            tracing::info!(listen = %addr, hostname = %args.hostname, "carrying connections to the tunnel");
            let cancel = CancellationToken::new();
            let c = cancel.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                c.cancel();
            });
            serve_listener(target, listener, cancel).await
        }
        None => {
            carry(
                &target,
                tokio::io::join(tokio::io::stdin(), tokio::io::stdout()),
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn args(hostname: &str, edge: Option<&str>) -> AccessArgs {
        AccessArgs {
            hostname: hostname.into(),
            url: None,
            destination: None,
            headers: vec![],
            service_token_id: None,
            service_token_secret: None,
            edge_url: edge.map(Into::into),
        }
    }

    #[test]
    fn targets() {
        let t = Target::from_args(&args("ssh.example.com", None)).unwrap();
        assert_eq!(t.ws_url, "wss://ssh.example.com/");
        assert_eq!(t.host_header, "ssh.example.com");
        assert_eq!(t.dial, "ssh.example.com:443");
        assert!(t.tls);
        assert_eq!(t.sni, "ssh.example.com");

        let t = Target::from_args(&args("ssh.example.com", Some("http://127.0.0.1:8080"))).unwrap();
        assert_eq!(t.ws_url, "wss://ssh.example.com/");
        assert_eq!(t.dial, "127.0.0.1:8080");
        assert!(!t.tls);

        let t = Target::from_args(&args("http://db.example.com:8080", None)).unwrap();
        assert_eq!(t.ws_url, "ws://db.example.com:8080/");
        assert_eq!(t.host_header, "db.example.com:8080");
        assert_eq!(t.dial, "db.example.com:8080");

        let mut a = args("ssh.example.com", Some("https://[::1]:8443"));
        a.headers = vec!["X-Test: one".into()];
        a.service_token_id = Some("id".into());
        a.service_token_secret = Some("secret".into());
        a.destination = Some("10.0.0.5:22".into());
        let t = Target::from_args(&a).unwrap();
        assert_eq!(t.dial, "[::1]:8443");
        assert!(t.tls);
        let names: Vec<_> = t.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "X-Test",
                "Cf-Access-Client-Id",
                "Cf-Access-Client-Secret",
                "Cf-Access-Jump-Destination",
                "User-Agent"
            ]
        );
    }

    #[test]
    fn bad_flags_are_clear_errors() {
        assert!(matches!(
            Target::from_args(&args("ftp://x", None)),
            Err(AccessError::Flag {
                flag: "--hostname",
                ..
            })
        ));
        assert!(Target::from_args(&args("https://", None)).is_err());
        let mut a = args("x.example", None);
        a.headers = vec!["no-colon".into()];
        assert!(matches!(
            Target::from_args(&a),
            Err(AccessError::Flag {
                flag: "--header",
                ..
            })
        ));
    }

    proptest! {
        #[test]
        fn from_args_is_total(h in "[ -~]{0,40}", e in proptest::option::of("[ -~]{0,40}")) {
            let _ = Target::from_args(&args(&h, e.as_deref()));
        }
    }
}
