//! The HTTP/2 transport (edge-protocol.md §5): connectors that cannot use
//! QUIC dial TLS over TCP on the same port number (SNI `h2.cftunnel.com`,
//! no ALPN), and on that connection the **edge is the HTTP/2 client**.
//!
//! - The control stream is a request the edge opens with
//!   `cf-cloudflared-proxy-connection-upgrade: control-stream`; its request
//!   body carries edge → connector capnp bytes and its response body the
//!   other direction. The RPC session is the same one QUIC runs
//!   ([`crate::quic::spawn_control_rpc`]).
//! - Configuration pushes are `update-configuration` requests with a JSON
//!   body ([`push_config`]).
//! - Eyeball requests are plain HTTP/2 requests; the connector returns the
//!   origin's headers serialised in `cf-cloudflared-response-headers`
//!   ([`proxy`], [`response_head_from_h2`]). A websocket handshake gets the
//!   `websocket` upgrade header and its bodies carry the raw frames.
//!
//! Bounds: stream and connection windows, frame and header-list sizes are
//! fixed below; bodies stream in both directions under HTTP/2 flow control.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use culvert_proto::h2::{
    ConfigPushBody, ConfigPushResponse, PROXY_CONNECTION_UPGRADE, RESPONSE_HEADERS, RESPONSE_META,
    ResponseMeta, ResponseSource, UPGRADE_CONTROL_STREAM, UPGRADE_UPDATE_CONFIGURATION,
    deserialize_headers,
};
use culvert_proto::http_meta::{HTTP_HEADER_PREFIX, HTTP_STATUS, HttpRequestHead};
use culvert_proto::registration::UpdateConfigurationResponse;
use culvert_proto::{ConnectResponse, Metadata};
use futures::{StreamExt as _, TryStreamExt as _};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyDataStream, BodyExt as _, Empty, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::compat::{TokioAsyncReadCompatExt as _, TokioAsyncWriteCompatExt as _};
use tokio_util::io::{ReaderStream, StreamReader};
use tokio_util::sync::CancellationToken;

use crate::error::{EdgeError, ProxyError};
use crate::push::PushError;
use crate::quic::{ConnState, end_connection, spawn_control_rpc};
use crate::registry::LiveConn;
use crate::request::{EyeballHead, ResponseHead, bodiless, build_connect_request, response_head};
use crate::transport::Transport;
use crate::{Shared, Tuning};

/// `:authority` of the edge's own requests (control stream, pushes); the
/// connector does not check it.
const EDGE_AUTHORITY: &str = "h2.cftunnel.com";
/// Per-stream receive window (what one response body may have in flight).
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Connection receive window, across all streams of one connector.
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 256 * 1024;
/// Response headers include the serialised origin headers.
const MAX_HEADER_LIST: u32 = 256 * 1024;
/// Buffer between the RPC session and the control-stream request body.
const CONTROL_PIPE_BYTES: usize = 64 * 1024;
/// Largest `update-configuration` answer read.
const MAX_PUSH_REPLY: usize = 64 * 1024;
/// Attempts to find a port free for both UDP and TCP when binding port 0.
const BIND_ATTEMPTS: usize = 5;
/// HTTP/2 PINGs: a connector that stops answering is dropped.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request bodies the edge sends to connectors.
pub type H2Body = UnsyncBoxBody<Bytes, BoxError>;
type ProxyBody = BoxBody<Bytes, io::Error>;

/// A connector's HTTP/2 connection, as the registry holds it.
#[derive(Clone)]
pub struct H2Handle {
    send: SendRequest<H2Body>,
    closed: CancellationToken,
    peer: SocketAddr,
}

impl H2Handle {
    /// Drops the connection (the driver task ends, the TCP socket closes).
    pub fn close(&self) {
        self.closed.cancel();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled() || self.send.is_closed()
    }

    /// Resolves once the connection has ended or is being closed.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// A request sender with room for one more stream, within `timeout`.
    async fn ready(&self, timeout: Duration) -> Result<SendRequest<H2Body>, String> {
        let mut s = self.send.clone();
        match tokio::time::timeout(timeout, s.ready()).await {
            Ok(Ok(())) => Ok(s),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("stream limit reached".into()),
        }
    }
}

/// Binds the QUIC endpoint and the TCP listener on the same port number.
/// With port 0 the UDP port is chosen first; if TCP cannot take the same
/// number, both are tried again on a fresh port.
pub(crate) async fn bind_pair(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    tuning: &Tuning,
) -> Result<(quinn::Endpoint, TcpListener), EdgeError> {
    let attempts = if addr.port() == 0 { BIND_ATTEMPTS } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let endpoint = crate::quic::bind(addr, tls.clone(), tuning)?;
        let port = endpoint
            .local_addr()
            .map_err(|e| EdgeError::Bind {
                what: "QUIC",
                addr,
                source: e,
            })?
            .port();
        let tcp_addr = SocketAddr::new(addr.ip(), port);
        match TcpListener::bind(tcp_addr).await {
            Ok(l) => return Ok((endpoint, l)),
            Err(e) => {
                endpoint.close(0u32.into(), b"");
                last = Some(EdgeError::Bind {
                    what: "HTTP/2 (TCP)",
                    addr: tcp_addr,
                    source: e,
                });
            }
        }
    }
    Err(last.unwrap_or_else(|| EdgeError::Config("no bind attempt".into())))
}

/// TLS for the TCP listener: the QUIC settings (TLS 1.3, same
/// certificate) without ALPN, which cloudflared does not offer over TCP.
pub(crate) fn tcp_tls_config(quic: &rustls::ServerConfig) -> rustls::ServerConfig {
    let mut cfg = quic.clone();
    cfg.alpn_protocols.clear();
    cfg
}

/// Accepts TLS connections until shutdown; each becomes an HTTP/2 client
/// connection and a control session on the RPC pool.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let limits = crate::accept::TlsLimits {
        what: "HTTP/2 connector",
        max_connections: shared.tuning.max_quic_connections,
        handshake_timeout: shared.tuning.handshake_timeout,
    };
    let shutdown = shared.shutdown.clone();
    crate::accept::accept_tls(
        shutdown,
        listener,
        acceptor,
        limits,
        move |tls, peer, permit| serve_tls(shared.clone(), tls, peer, permit),
    )
    .await;
}

/// One connector's TLS connection: the HTTP/2 client side, and the control
/// session on the RPC pool.
async fn serve_tls(
    shared: Arc<Shared>,
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST)
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .handshake::<_, H2Body>(TokioIo::new(tls))
        .await;
    let (send, conn) = match handshake {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "HTTP/2 handshake failed");
            return;
        }
    };
    let closed = CancellationToken::new();
    let handle = H2Handle {
        send,
        closed: closed.clone(),
        peer,
    };
    let s = shared.clone();
    // Detached: the session cleans up after itself when `closed` fires.
    drop(
        shared
            .rpc_pool
            .spawn_pinned(move || serve_connection(s, handle)),
    );
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "HTTP/2 connection ended with an error");
            }
        }
        _ = closed.cancelled() => {}
    }
    closed.cancel();
    drop(permit);
}

/// Runs on the RPC pool: opens the control stream, serves the registration
/// session, then waits for the connection to end and forgets it.
async fn serve_connection(shared: Arc<Shared>, handle: H2Handle) {
    let peer = handle.peer;
    let deadline = tokio::time::Instant::now() + shared.tuning.registration_timeout;
    let state = Rc::new(RefCell::new(ConnState::default()));
    let registered = Rc::new(tokio::sync::Notify::new());

    // Request body = what the RPC session writes into the pipe.
    let (rpc_out, body_src) = tokio::io::duplex(CONTROL_PIPE_BYTES);
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("https://{EDGE_AUTHORITY}/"))
        .header(PROXY_CONNECTION_UPGRADE, UPGRADE_CONTROL_STREAM)
        .body(reader_body(body_src));
    let Ok(req) = req else {
        handle.close();
        return;
    };
    let open = async {
        let mut s = handle.ready(shared.tuning.registration_timeout).await?;
        s.send_request(req).await.map_err(|e| e.to_string())
    };
    let resp = tokio::select! {
        r = tokio::time::timeout_at(deadline, open) => r,
        _ = handle.closed() => return,
        _ = shared.shutdown.cancelled() => { handle.close(); return; }
    };
    let resp = match resp {
        Ok(Ok(r)) if r.status() == StatusCode::OK => r,
        Ok(Ok(r)) => {
            tracing::info!(%peer, status = r.status().as_u16(), "connector refused the control stream; closing");
            handle.close();
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "control stream request failed");
            handle.close();
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "no control stream in time; closing");
            handle.close();
            return;
        }
    };
    let recv = StreamReader::new(BodyDataStream::new(resp.into_body()).map_err(io::Error::other));
    let rpc_task = spawn_control_rpc(
        &shared,
        Transport::Http2(handle.clone()),
        peer,
        &state,
        &registered,
        recv.compat(),
        rpc_out.compat_write(),
    );

    let ok = tokio::select! {
        _ = registered.notified() => true,
        _ = tokio::time::sleep_until(deadline) => {
            if state.borrow().is_registered() {
                true
            } else {
                tracing::info!(%peer, "connection did not register in time; closing");
                false
            }
        }
        _ = handle.closed() => false,
        _ = shared.shutdown.cancelled() => false,
    };
    if ok {
        // The control stream may end (after unregisterConnection) while
        // requests still finish: the connection lives until the connector
        // closes it.
        tokio::select! {
            _ = handle.closed() => {}
            _ = shared.shutdown.cancelled() => {}
        }
    }
    handle.close();
    rpc_task.abort();
    end_connection(&shared, &state, peer, &"HTTP/2 connection closed").await;
}

/// A request body that streams whatever is written into the pipe's other
/// end, and ends when that end is dropped.
fn reader_body(r: tokio::io::DuplexStream) -> H2Body {
    let s = ReaderStream::with_capacity(r, 16 * 1024)
        .map(|r| r.map(Frame::data).map_err(BoxError::from));
    StreamBody::new(s).boxed_unsync()
}

fn empty_body() -> H2Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// `update-configuration` over HTTP/2 (§5.2): JSON `{version, config}` in,
/// `{"lastAppliedVersion":N,"err":…}` out.
pub(crate) async fn push_config(
    conn: &H2Handle,
    version: i32,
    config: &serde_json::Value,
    timeout: Duration,
) -> Result<UpdateConfigurationResponse, PushError> {
    let body = serde_json::to_vec(&ConfigPushBody {
        version,
        config: config.clone(),
    })
    .map_err(|e| PushError::Http2(e.to_string()))?;
    let work = async {
        let mut s = conn.ready(timeout).await.map_err(PushError::Http2)?;
        let req = Request::builder()
            .method(Method::PUT)
            .uri(format!("https://{EDGE_AUTHORITY}/config"))
            .header(PROXY_CONNECTION_UPGRADE, UPGRADE_UPDATE_CONFIGURATION)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .body(
                Full::new(Bytes::from(body))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .map_err(|e| PushError::Http2(e.to_string()))?;
        let resp = s
            .send_request(req)
            .await
            .map_err(|e| PushError::Http2(e.to_string()))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_PUSH_REPLY)
            .collect()
            .await
            .map_err(|e| PushError::Http2(format!("reading the answer: {e}")))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(PushError::Http2(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        let r: ConfigPushResponse = serde_json::from_slice(&bytes)
            .map_err(|e| PushError::Http2(format!("bad answer: {e}")))?;
        Ok(UpdateConfigurationResponse {
            latest_applied_version: r.last_applied_version,
            err: r.err.unwrap_or_default(),
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| PushError::Timeout(timeout))?
}

/// Proxies an eyeball request over one of the tunnel's HTTP/2 connections
/// (§5.4): the eyeball's headers (filtered as for QUIC, plus `Cf-Ray`,
/// `Cf-Connecting-Ip`, `X-Forwarded-*`) as HTTP/2 headers, the body
/// streamed; the response head rebuilt from the serialised headers.
pub(crate) async fn proxy(
    shared: &Shared,
    candidates: &[Arc<LiveConn>],
    req: Request<Incoming>,
    raw_host: &str,
    peer: SocketAddr,
    ray: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    // The QUIC builder does the header policy; its metadata is read back
    // as a plain header list.
    let built = build_connect_request(&EyeballHead {
        method: req.method(),
        uri: req.uri(),
        headers: req.headers(),
        host: raw_host,
        peer_ip: peer.ip(),
        ray,
        scheme: "http",
    })
    .map_err(|e| ProxyError::Send(e.to_string()))?;
    let head = HttpRequestHead::from_connect_request(&built.request)
        .map_err(|e| ProxyError::Send(e.to_string()))?;
    let method = req.method().clone();
    let websocket = is_websocket_upgrade(&req);

    let mut last_err = String::from("no HTTP/2 connection");
    let mut sender = None;
    for c in candidates
        .iter()
        .filter_map(|c| c.conn.http2().map(|h| (c.id, h)))
        .take(crate::transport::MAX_OPEN_ATTEMPTS)
    {
        match c.1.ready(shared.tuning.open_stream_timeout).await {
            Ok(s) => {
                sender = Some(s);
                break;
            }
            Err(e) => last_err = format!("connection {}: {e}", c.0),
        }
    }
    let Some(mut sender) = sender else {
        return Err(ProxyError::OpenStream(last_err));
    };

    if websocket {
        return proxy_websocket(shared, sender, req, &head, ray).await;
    }
    let body = if built.has_body {
        req.into_body().map_err(BoxError::from).boxed_unsync()
    } else {
        empty_body()
    };
    let h2_req = h2_request(&head, body).map_err(ProxyError::Send)?;
    let resp = match crate::proxy::head_within(
        shared.tuning.response_timeout,
        sender.send_request(h2_req),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(ProxyError::Send(e.to_string())),
        Err(t) => return Err(ProxyError::Timeout(t)),
    };
    let (parts, body) = resp.into_parts();
    let head = response_head_from_h2(parts.status, &parts.headers)?;
    let body: ProxyBody = if bodiless(&method, head.status) {
        drop(body);
        Empty::new().map_err(|never| match never {}).boxed()
    } else {
        body.map_err(io::Error::other).boxed()
    };
    let mut response = Response::new(body);
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    if let Ok(v) = HeaderValue::from_str(ray) {
        response.headers_mut().insert("cf-ray", v);
    }
    Ok(response)
}

/// An eyeball's websocket handshake (`GET` with `Upgrade: websocket`).
fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    req.method() == Method::GET
        && has(header::UPGRADE, "websocket")
        && has(header::CONNECTION, "upgrade")
}

/// A websocket over HTTP/2 (§5.2): the handshake goes out with
/// `cf-cloudflared-proxy-connection-upgrade: websocket`; the connector's 200
/// (the origin's 101) becomes the eyeball's 101, then raw frames are
/// spliced both ways (eyeball → request body, response body → eyeball)
/// without re-framing. Another status is relayed as a plain response.
async fn proxy_websocket(
    shared: &Shared,
    mut sender: SendRequest<H2Body>,
    mut req: Request<Incoming>,
    head: &HttpRequestHead,
    ray: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (to_connector, body_src) = tokio::io::duplex(CONTROL_PIPE_BYTES);
    let mut h2_req = h2_request(head, reader_body(body_src)).map_err(ProxyError::Send)?;
    h2_req.headers_mut().insert(
        PROXY_CONNECTION_UPGRADE,
        HeaderValue::from_static(culvert_proto::h2::UPGRADE_WEBSOCKET),
    );
    let resp = match crate::proxy::head_within(
        shared.tuning.response_timeout,
        sender.send_request(h2_req),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(ProxyError::Send(e.to_string())),
        Err(t) => return Err(ProxyError::Timeout(t)),
    };
    let (parts, from_connector) = resp.into_parts();
    let rebuilt = response_head_from_h2(parts.status, &parts.headers)?;
    if parts.status != StatusCode::OK {
        let mut response = Response::new(from_connector.map_err(io::Error::other).boxed());
        *response.status_mut() = rebuilt.status;
        *response.headers_mut() = rebuilt.headers;
        return Ok(response);
    }
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let (mut eyeball_rd, mut eyeball_wr) = tokio::io::split(TokioIo::new(upgraded));
        let mut to_connector = to_connector;
        let up = async {
            let _ = tokio::io::copy(&mut eyeball_rd, &mut to_connector).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut to_connector).await;
        };
        let down = async {
            let mut body = from_connector;
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(d) = frame.into_data()
                    && tokio::io::AsyncWriteExt::write_all(&mut eyeball_wr, &d)
                        .await
                        .is_err()
                {
                    break;
                }
            }
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut eyeball_wr).await;
        };
        // Either side ending ends the tunnel (as cloudflared's pipe).
        tokio::select! {
            _ = up => {}
            _ = down => {}
        }
    });
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *response.headers_mut() = rebuilt.headers;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(ray) {
        h.insert("cf-ray", v);
    }
    Ok(response)
}

/// The HTTP/2 request for a request head: `:authority` from `dest`, no
/// `Transfer-Encoding` (HTTP/2 frames the body itself).
fn h2_request(head: &HttpRequestHead, body: H2Body) -> Result<Request<H2Body>, String> {
    let method = Method::from_bytes(head.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut b = Request::builder().method(method).uri(head.dest.as_str());
    for (n, v) in &head.headers {
        if n.eq_ignore_ascii_case("transfer-encoding") {
            continue;
        }
        b = b.header(n.as_str(), v.as_str());
    }
    b.body(body)
        .map_err(|e| format!("building the HTTP/2 request: {e}"))
}

/// Rebuilds the eyeball response head from a connector's HTTP/2 response:
/// the status, and the headers from `cf-cloudflared-response-headers` only
/// (Go's server adds its own `content-type`/`date`; none of those are
/// used). A response marked
/// `{"src":"cloudflared"}` is the connector's own error.
pub fn response_head_from_h2(
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<ResponseHead, ProxyError> {
    let meta = headers
        .get(RESPONSE_META)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| ResponseMeta::from_json(v).ok());
    if meta.is_some_and(|m| m.src == ResponseSource::Cloudflared) {
        return Err(ProxyError::Connector(format!(
            "the connector answered {status} itself"
        )));
    }
    let mut metadata = vec![Metadata::new(HTTP_STATUS, status.as_str())];
    // Absent means the origin sent no headers (an empty value may not
    // survive every HTTP/2 server).
    for v in headers.get_all(RESPONSE_HEADERS) {
        let text = v
            .to_str()
            .map_err(|e| ProxyError::BadResponse(e.to_string()))?;
        let pairs =
            deserialize_headers(text).map_err(|e| ProxyError::BadResponse(e.to_string()))?;
        for (n, v) in pairs {
            let (Ok(n), Ok(v)) = (String::from_utf8(n), String::from_utf8(v)) else {
                continue;
            };
            // Names with ':' cannot be metadata keys (nor HTTP headers).
            if n.is_empty() || n.contains(':') {
                continue;
            }
            metadata.push(Metadata::new(format!("{HTTP_HEADER_PREFIX}{n}"), v));
        }
    }
    let resp = ConnectResponse {
        error: String::new(),
        metadata,
    };
    response_head(&resp).map_err(|e| ProxyError::BadResponse(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use culvert_proto::h2::serialize_headers;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    /// h2-03: the recorded response (Go's own `content-type` differs from
    /// the origin's; the serialised one wins).
    #[test]
    fn rebuilds_the_recorded_response() {
        let ser = "Q29udGVudC1UeXBl:dGV4dC9odG1s;Q29udGVudC1MZW5ndGg:NzU;TGFzdC1Nb2RpZmllZA:TW9uLCAwMSBKYW4gMjAyNCAwMDowMDowMCBHTVQ;U2VydmVy:Z29sZGVuLW9yaWdpbi8xLjA;RGF0ZQ:TW9uLCAwMSBKYW4gMjAyNCAwMDowMDowMCBHTVQ";
        let h = headers(&[
            (RESPONSE_HEADERS, ser),
            (RESPONSE_META, r#"{"src":"origin"}"#),
            ("content-type", "text/html; charset=utf-8"),
            ("content-length", "75"),
            ("date", "Sun, 22 Nov 2026 07:12:24 GMT"),
        ]);
        let head = response_head_from_h2(StatusCode::OK, &h).unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.headers["content-type"], "text/html");
        assert_eq!(head.headers["content-length"], "75");
        assert_eq!(head.headers["server"], "golden-origin/1.0");
        assert_eq!(head.headers["date"], "Mon, 01 Jan 2024 00:00:00 GMT");
        assert!(head.headers.get(RESPONSE_META).is_none());
        assert_eq!(head.headers.len(), 5);
    }

    #[test]
    fn connector_errors_and_bad_answers() {
        let h = headers(&[(RESPONSE_META, r#"{"src":"cloudflared"}"#)]);
        assert!(matches!(
            response_head_from_h2(StatusCode::BAD_GATEWAY, &h),
            Err(ProxyError::Connector(_))
        ));
        let bare = response_head_from_h2(StatusCode::NOT_FOUND, &HeaderMap::new()).unwrap();
        assert_eq!(bare.status, StatusCode::NOT_FOUND);
        assert!(bare.headers.is_empty());
        let h = headers(&[(RESPONSE_HEADERS, "not:base64:pairs")]);
        assert!(matches!(
            response_head_from_h2(StatusCode::OK, &h),
            Err(ProxyError::BadResponse(_))
        ));
        // Multi-valued headers survive; hop-by-hop and ':' names do not.
        let ser = serialize_headers([
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
            ("Connection", "close"),
            ("Bad:Name", "x"),
        ]);
        let h = headers(&[(RESPONSE_HEADERS, &ser)]);
        let head = response_head_from_h2(StatusCode::CREATED, &h).unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.headers.get_all("set-cookie").iter().count(), 2);
        assert!(head.headers.get("connection").is_none());
        assert_eq!(head.headers.len(), 2);
    }

    #[test]
    fn requests_carry_no_transfer_encoding() {
        let head = HttpRequestHead {
            dest: "http://app.test/a?b=1".into(),
            websocket: false,
            method: "POST".into(),
            host: "app.test".into(),
            headers: vec![
                ("Cf-Ray".into(), "1-LAB".into()),
                ("Transfer-Encoding".into(), "chunked".into()),
                ("Accept".into(), "a".into()),
                ("Accept".into(), "b".into()),
            ],
            extra: vec![],
        };
        let r = h2_request(&head, empty_body()).unwrap();
        assert_eq!(r.uri().authority().unwrap().as_str(), "app.test");
        assert_eq!(r.uri().path_and_query().unwrap().as_str(), "/a?b=1");
        assert!(r.headers().get("transfer-encoding").is_none());
        assert_eq!(r.headers().get_all("accept").iter().count(), 2);
        assert_eq!(r.headers()["cf-ray"], "1-LAB");
    }
}
