//! What each ingress rule's service turns into at run time: a pooled
//! hyper client for HTTP(S) origins, a fixed status, the hello-world page,
//! or "not supported yet". Built once per applied configuration, so a
//! configuration swap never touches the clients of in-flight requests.
//!
//! The HTTP client applies the rule's effective `originRequest`
//! (api.md §12.3): `connectTimeout` and `tcpKeepAlive` on the TCP socket,
//! `noHappyEyeballs` (addresses tried one after the other), `tlsTimeout`
//! around the TLS handshake of our own connector ([`OriginConnector`]),
//! `caPool` / `noTLSVerify` / `originServerName` / `matchSNItoHost` for the
//! TLS client, `http2Origin` (ALPN `h2` on https origins),
//! `keepAliveConnections` / `keepAliveTimeout` for the idle pool,
//! `disableChunkedEncoding` per request ([`HttpOrigin::send`]).
//! `httpHostHeader` is applied where the request is built (proxy.rs).
//! `access` belongs to the rule, not the origin ([`PreparedRule`]): it is
//! checked before any request is dispatched, whatever the service.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use culvert_ingress::{Ingress, OriginRequest, Rule, Service};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;

use crate::access::AccessValidator;
use crate::error::ConnectorError;
use crate::tls::{OriginTrust, origin_tls_config};

/// Boxed error for streamed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The request body type sent to origins (streamed from the QUIC stream).
pub type OriginBody = UnsyncBoxBody<Bytes, BoxError>;
/// A pooled HTTP/HTTPS client.
pub type OriginClient = Client<OriginConnector, OriginBody>;

/// Largest request body buffered to compute a `Content-Length` when
/// `disableChunkedEncoding` is set and the request has none (cloudflared's Go
/// client would send such a body without any framing; culvert sends a correct
/// length, within this bound, and refuses larger bodies).
pub const UNCHUNKED_BODY_LIMIT: usize = 8 * 1024 * 1024;
/// Most per-SNI clients kept for a `matchSNItoHost` rule; beyond it the
/// cache starts over (connections of dropped clients close when idle).
const SNI_CLIENTS_LIMIT: usize = 64;

/// An HTTP(S) origin and its connection pool.
pub struct HttpOrigin {
    pub url: url::Url,
    /// The client for requests whose SNI does not depend on the request.
    pub client: OriginClient,
    settings: ClientSettings,
    /// `matchSNItoHost`: one client per SNI, so pooled connections are never
    /// reused for another server name.
    sni_clients: Mutex<HashMap<String, OriginClient>>,
    disable_chunked: bool,
    match_sni_to_host: bool,
}

/// Why [`HttpOrigin::send`] produced no origin response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The origin could not be reached or answered badly.
    #[error("{0}")]
    Origin(String),
}

impl HttpOrigin {
    /// The client to use for a request with this (final) Host header.
    pub fn client_for(&self, host: &str) -> Result<OriginClient, SendError> {
        if !self.match_sni_to_host || !self.settings.secure {
            return Ok(self.client.clone());
        }
        let name = culvert_ingress::strip_port(host).to_ascii_lowercase();
        if name.is_empty() {
            return Ok(self.client.clone());
        }
        let mut cache = self.sni_clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(&name) {
            return Ok(c.clone());
        }
        let sni = server_name(&name).map_err(SendError::Origin)?;
        let client = self.settings.client(Some(sni));
        if cache.len() >= SNI_CLIENTS_LIMIT {
            cache.clear();
        }
        cache.insert(name, client.clone());
        Ok(client)
    }

    /// Sends `req` (built by the proxy: origin URI, final Host header) to
    /// the origin with the rule's body framing. The rule's Access check has
    /// already run ([`crate::proxy::access_refusal`]).
    pub async fn send(
        &self,
        req: hyper::Request<OriginBody>,
    ) -> Result<hyper::Response<Incoming>, SendError> {
        let host = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let client = self.client_for(&host)?;
        let req = if self.disable_chunked {
            unchunked(req).await?
        } else {
            req
        };
        client
            .request(req)
            .await
            .map_err(|e| SendError::Origin(format!("{e}: {}", error_chain(&e))))
    }
}

/// The innermost causes of a client error (hyper's top-level text is terse).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

/// `disableChunkedEncoding`: the request goes out with a `Content-Length`,
/// never `Transfer-Encoding: chunked` (WSGI servers cannot read chunks). A
/// declared length is kept and the body streams; otherwise the body is read
/// up to [`UNCHUNKED_BODY_LIMIT`] to learn its length.
pub async fn unchunked(
    req: hyper::Request<OriginBody>,
) -> Result<hyper::Request<OriginBody>, SendError> {
    let (mut parts, body) = req.into_parts();
    parts.headers.remove(hyper::header::TRANSFER_ENCODING);
    if parts.headers.contains_key(hyper::header::CONTENT_LENGTH)
        || hyper::body::Body::is_end_stream(&body)
    {
        return Ok(hyper::Request::from_parts(parts, body));
    }
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| SendError::Origin(format!("reading the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > UNCHUNKED_BODY_LIMIT {
                return Err(SendError::Origin(format!(
                    "request body without Content-Length exceeds {UNCHUNKED_BODY_LIMIT} bytes, the most culvert buffers for an origin with disableChunkedEncoding"
                )));
            }
            buf.extend_from_slice(&data);
        }
    }
    let bytes = buf.freeze();
    parts.headers.insert(
        hyper::header::CONTENT_LENGTH,
        hyper::header::HeaderValue::from(bytes.len()),
    );
    let body = Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync();
    Ok(hyper::Request::from_parts(parts, body))
}

/// The run-time form of one rule's service.
#[derive(Clone)]
pub enum Origin {
    /// `http(s)://` / `ws(s)://` origin: requests keep their path and query
    /// and get the origin's scheme and authority (cloudflared ignores a
    /// path in the service URL).
    Http(Arc<HttpOrigin>),
    /// `http_status:NNN`.
    Status(u16),
    /// `hello_world`.
    HelloWorld,
    /// `unix:` / `unix+tls:`: HTTP(S) over a unix socket.
    Unix(Arc<crate::stream_origin::UnixOrigin>),
    /// A service this connector cannot proxy HTTP to (tcp/ssh/rdp are
    /// served to websocket requests by [`crate::stream_origin`]; bastion,
    /// socks); HTTP requests get a ConnectResponse error.
    Unsupported(String),
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Http(h) => f.debug_tuple("Http").field(&h.url.as_str()).finish(),
            Origin::Status(c) => f.debug_tuple("Status").field(c).finish(),
            Origin::HelloWorld => f.write_str("HelloWorld"),
            Origin::Unix(u) => f.debug_tuple("Unix").field(&u.path()).finish(),
            Origin::Unsupported(s) => f.debug_tuple("Unsupported").field(s).finish(),
        }
    }
}

/// What one ingress rule runs: its origin, and the Access check that
/// guards every request it matches (HTTP or WebSocket, whatever the
/// service), as cloudflared's middleware handlers on the rule.
#[derive(Clone, Debug)]
pub struct PreparedRule {
    pub origin: Origin,
    /// `access.required`: requests without a valid token get 403.
    pub access: Option<Arc<AccessValidator>>,
}

/// The run-time form of every rule of `ingress`, index-aligned with
/// `ingress.rules`. Fails if a rule's TLS settings cannot be loaded (e.g.
/// an unreadable `caPool`) or its Access settings cannot be enforced, so a
/// bad configuration is refused instead of failing every request.
pub fn prepare_rules(ingress: &Ingress) -> Result<Arc<[PreparedRule]>, ConnectorError> {
    ingress
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            prepare_rule(r).map_err(|e| match e {
                ConnectorError::Config(m) => {
                    ConnectorError::Config(format!("Rule #{}: {m}", i + 1))
                }
                other => other,
            })
        })
        .collect()
}

/// What the connector needs beyond cloudflared's validation to serve a
/// rule: an Access requirement needs a team (or a key set URL) to check
/// tokens against; cloudflared would silently fail every request.
pub fn check_rule(rule: &Rule) -> Result<(), ConnectorError> {
    if let Some(a) = rule.required_access()
        && a.team_name.trim().is_empty()
    {
        return Err(ConnectorError::Config(
            "originRequest.access.required is true but access.teamName is empty: set the Access team name whose keys sign Cf-Access-Jwt-Assertion".into(),
        ));
    }
    Ok(())
}

/// The origin and Access check of one rule.
pub fn prepare_rule(rule: &Rule) -> Result<PreparedRule, ConnectorError> {
    Ok(PreparedRule {
        origin: prepare_origin(rule)?,
        access: prepare_access(rule)?,
    })
}

/// The rule's Access check, when it has `access.required`.
pub fn prepare_access(rule: &Rule) -> Result<Option<Arc<AccessValidator>>, ConnectorError> {
    check_rule(rule)?;
    rule.required_access()
        .map(|a| AccessValidator::new(a).map(Arc::new))
        .transpose()
}

/// The origin of one rule (its Access check is [`prepare_access`]).
pub fn prepare_origin(rule: &Rule) -> Result<Origin, ConnectorError> {
    Ok(match &rule.service {
        Service::Http(url) => Origin::Http(Arc::new(http_origin(url, rule)?)),
        Service::HttpStatus(code) => Origin::Status(*code),
        Service::HelloWorld => Origin::HelloWorld,
        Service::Unix { path, tls } => Origin::Unix(Arc::new(
            crate::stream_origin::UnixOrigin::new(path, *tls, &rule.origin_request)?,
        )),
        other => Origin::Unsupported(other.to_string()),
    })
}

/// Which trust an origin's settings ask for.
pub fn origin_trust(o: &OriginRequest) -> OriginTrust {
    if o.no_tls_verify() {
        OriginTrust::NoVerify
    } else if !o.ca_pool().is_empty() {
        OriginTrust::CaPool(o.ca_pool().to_owned())
    } else {
        OriginTrust::System
    }
}

fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    ServerName::try_from(name.to_owned()).map_err(|e| format!("TLS server name {name:?}: {e}"))
}

/// Everything needed to build a client for one rule.
#[derive(Clone)]
struct ClientSettings {
    http: HttpConnector,
    /// TLS client for https/wss origins.
    tls: Option<Arc<rustls::ClientConfig>>,
    secure: bool,
    tls_timeout: Duration,
    fixed_sni: Option<ServerName<'static>>,
    pool_idle_timeout: Duration,
    pool_max_idle: usize,
    http2_only: bool,
}

impl ClientSettings {
    fn client(&self, sni: Option<ServerName<'static>>) -> OriginClient {
        let connector = OriginConnector {
            http: self.http.clone(),
            tls: self.tls.clone(),
            server_name: sni.or_else(|| self.fixed_sni.clone()),
            tls_timeout: self.tls_timeout,
        };
        let mut client = Client::builder(TokioExecutor::new());
        client
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle)
            .http2_only(self.http2_only);
        client.build(connector)
    }
}

fn http_origin(url: &url::Url, rule: &Rule) -> Result<HttpOrigin, ConnectorError> {
    let o = &rule.origin_request;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(o.connect_timeout()));
    http.set_keepalive(Some(o.tcp_keep_alive()));
    http.set_nodelay(true);
    if o.no_happy_eyeballs() {
        // Addresses are tried one after the other, never raced.
        http.set_happy_eyeballs_timeout(None);
    }
    let secure = matches!(url.scheme(), "https" | "wss");
    let tls = if secure {
        let mut cfg = origin_tls_config(&origin_trust(o))?;
        cfg.alpn_protocols = if o.http2_origin() {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Some(Arc::new(cfg))
    } else {
        None
    };
    let fixed_sni =
        if o.origin_server_name().is_empty() {
            None
        } else {
            Some(server_name(o.origin_server_name()).map_err(|e| {
                ConnectorError::Config(format!("originRequest.originServerName: {e}"))
            })?)
        };
    // Go's `MaxIdleConns: 0` means no limit.
    let pool_max_idle = match o.keep_alive_connections() {
        n if n <= 0 => usize::MAX,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    let settings = ClientSettings {
        http,
        tls,
        secure,
        tls_timeout: o.tls_timeout(),
        fixed_sni,
        pool_idle_timeout: o.keep_alive_timeout(),
        pool_max_idle,
        // ALPN decides on https; plain-http origins always get HTTP/1.1,
        // as cloudflared's Go transport does.
        http2_only: false,
    };
    Ok(HttpOrigin {
        url: url.clone(),
        client: settings.client(None),
        settings,
        sni_clients: Mutex::new(HashMap::new()),
        disable_chunked: o.disable_chunked_encoding(),
        match_sni_to_host: o.match_sni_to_host(),
    })
}

/// The origin connector: TCP through hyper's [`HttpConnector`] (connect
/// timeout, keepalive, happy eyeballs), then for https origins a rustls
/// handshake bounded by `tlsTimeout`, with the rule's server name.
#[derive(Clone)]
pub struct OriginConnector {
    http: HttpConnector,
    tls: Option<Arc<rustls::ClientConfig>>,
    server_name: Option<ServerName<'static>>,
    tls_timeout: Duration,
}

/// The stream an [`OriginConnector`] yields.
pub type OriginStream = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

impl tower_service::Service<hyper::Uri> for OriginConnector {
    type Response = OriginStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<OriginStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::<hyper::Uri>::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let tcp = tower_service::Service::call(&mut self.http, uri.clone());
        let tls = match uri.scheme_str() {
            Some("https") => self.tls.clone(),
            _ => None,
        };
        let name = self.server_name.clone();
        let timeout = self.tls_timeout;
        Box::pin(async move {
            let tcp = tcp.await?;
            let Some(tls) = tls else {
                return Ok(MaybeHttpsStream::Http(tcp));
            };
            let name = match name {
                Some(n) => n,
                None => server_name(uri.host().unwrap_or_default())?,
            };
            let handshake = tokio_rustls::TlsConnector::from(tls).connect(name, TokioIo::new(tcp));
            let stream = tokio::time::timeout(timeout, handshake)
                .await
                .map_err(|_| format!("TLS handshake timed out after {timeout:?} (tlsTimeout)"))??;
            Ok(MaybeHttpsStream::from(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepares_each_rule() {
        let ingress = culvert_ingress::parse_remote_config(&serde_json::json!({
            "ingress": [
                {"hostname": "a.test", "service": "http://127.0.0.1:1"},
                {"hostname": "b.test", "service": "https://127.0.0.1:2", "originRequest": {"noTLSVerify": true}},
                {"hostname": "c.test", "service": "hello_world"},
                {"hostname": "d.test", "service": "ssh://127.0.0.1:22"},
                {"service": "http_status:404"}
            ]
        }))
        .unwrap();
        let rules = prepare_rules(&ingress).unwrap();
        assert_eq!(rules.len(), 5);
        assert!(matches!(&rules[0].origin, Origin::Http(h) if h.url.port() == Some(1)));
        assert!(matches!(&rules[1].origin, Origin::Http(_)));
        assert!(matches!(rules[2].origin, Origin::HelloWorld));
        assert!(matches!(&rules[3].origin, Origin::Unsupported(s) if s.starts_with("ssh://")));
        assert!(matches!(rules[4].origin, Origin::Status(404)));
        assert!(rules.iter().all(|r| r.access.is_none()));
        assert_eq!(
            origin_trust(&ingress.rules[1].origin_request),
            OriginTrust::NoVerify
        );
    }

    #[test]
    fn unreadable_ca_pool_fails_the_config() {
        let ingress = culvert_ingress::parse_remote_config(&serde_json::json!({
            "ingress": [{"service": "https://127.0.0.1:2", "originRequest": {"caPool": "/nonexistent/ca.pem"}}]
        }))
        .unwrap();
        assert!(prepare_rules(&ingress).is_err());
    }

    #[test]
    fn access_required_without_team_is_refused() {
        let ingress = culvert_ingress::parse_remote_config(&serde_json::json!({
            "ingress": [
                {"hostname": "a.test", "service": "http://127.0.0.1:1"},
                {"service": "http://127.0.0.1:2", "originRequest": {"access": {"required": true}}}
            ]
        }))
        .unwrap();
        let e = prepare_rules(&ingress).unwrap_err().to_string();
        assert!(e.contains("Rule #2") && e.contains("teamName"), "{e}");
        // Not required: nothing to enforce, accepted as cloudflared does.
        let ingress = culvert_ingress::parse_remote_config(&serde_json::json!({
            "ingress": [{"service": "http://127.0.0.1:2", "originRequest": {"access": {"teamName": ""}}}]
        }))
        .unwrap();
        assert!(prepare_rules(&ingress).is_ok());
        // Whatever the service: the check belongs to the rule.
        let ingress = culvert_ingress::parse_remote_config(&serde_json::json!({
            "ingress": [{"service": "http_status:200", "originRequest": {"access": {"required": true}}}]
        }))
        .unwrap();
        let e = prepare_rules(&ingress).unwrap_err().to_string();
        assert!(e.contains("Rule #1") && e.contains("teamName"), "{e}");
    }

    /// cloudflared attaches the Access check to the rule, so every kind of
    /// service gets it, not only HTTP origins.
    #[test]
    fn access_is_checked_for_every_service() {
        let access = serde_json::json!({"access": {"required": true, "teamName": "t"}});
        let ingress = culvert_ingress::parse_remote_config(&serde_json::json!({
            "ingress": [
                {"hostname": "a.test", "service": "http://127.0.0.1:1", "originRequest": access},
                {"hostname": "b.test", "service": "unix:/nonexistent.sock", "originRequest": access},
                {"hostname": "c.test", "service": "tcp://127.0.0.1:2", "originRequest": access},
                {"hostname": "d.test", "service": "hello_world", "originRequest": access},
                {"hostname": "e.test", "service": "http://127.0.0.1:1"},
                {"service": "http_status:200", "originRequest": access}
            ]
        }))
        .unwrap();
        let rules = prepare_rules(&ingress).unwrap();
        let guarded: Vec<bool> = rules.iter().map(|r| r.access.is_some()).collect();
        assert_eq!(guarded, [true, true, true, true, false, true]);
    }

    #[test]
    fn keep_alive_connections_zero_is_unlimited() {
        let ingress = culvert_ingress::parse_remote_config(&serde_json::json!({
            "ingress": [{"service": "http://127.0.0.1:2", "originRequest": {"keepAliveConnections": 0}}]
        }))
        .unwrap();
        let o = http_origin(&"http://127.0.0.1:2".parse().unwrap(), &ingress.rules[0]).unwrap();
        assert_eq!(o.settings.pool_max_idle, usize::MAX);
        assert!(o.settings.tls.is_none());
    }
}
