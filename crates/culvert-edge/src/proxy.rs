//! The public HTTP/1.1 listener: Host → tunnel → connection → QUIC data
//! stream (edge-protocol.md §4.3).
//!
//! Bodies stream in both directions with backpressure: the request body is
//! written frame by frame into the QUIC stream (quinn flow control stalls
//! the eyeball when the connector is slow), and the response body is read
//! from the stream in bounded chunks only as fast as hyper writes them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use culvert_proto::stream::DATA_STREAM_PREAMBLE;
use culvert_proto::{ConnectResponse, Limits};
use futures::StreamExt;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use quinn::VarInt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::Shared;
use crate::error::ProxyError;
use crate::hosts::{normalize_host, tunnel_of_tunnel_domain};
use crate::pages::ErrorPage;
use crate::registry::LiveConn;
use crate::request::{
    BuiltRequest, EyeballHead, ResponseError, bodiless, build_connect_request, new_ray,
    response_head,
};
use crate::transport::{open_quic_stream, quic_candidates};

type ProxyBody = BoxBody<Bytes, std::io::Error>;

/// Read size for response bodies (one buffer in flight per request).
const BODY_CHUNK: usize = 64 * 1024;
/// Bound on reading an eyeball's request head (slow-loris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts eyeball connections until shutdown.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(shared.tuning.max_http_connections.max(1)));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Responses are written in small pieces (head, then body chunks as
        // they arrive): Nagle would hold them back for the eyeball's ACK.
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many HTTP connections; dropping");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            serve_connection(shared, tcp, peer, EyeballScheme::Http, permit).await;
        });
    }
}

/// The public listener a request arrived on (a request extension), so the
/// connector sees the eyeball's scheme in `dest` and `X-Forwarded-Proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EyeballScheme {
    Http,
    Https,
}

pub(crate) fn eyeball_scheme<B>(req: &Request<B>) -> &'static str {
    match req.extensions().get::<EyeballScheme>() {
        Some(EyeballScheme::Https) => "https",
        _ => "http",
    }
}

/// Serves one eyeball connection (plain TCP or TLS) until it ends or the
/// edge shuts down; counts its bytes and response statuses.
pub(crate) async fn serve_connection<I>(
    shared: Arc<Shared>,
    io: I,
    peer: SocketAddr,
    scheme: EyeballScheme,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // The connection's slot is shared with an upgraded WebSocket, which
    // outlives this task.
    let slot = crate::upgrade::ConnectionSlot(Arc::new(permit));
    let shutdown = shared.shutdown.clone();
    let io = crate::metrics::CountingIo::new(io, shared.metrics.clone());
    let svc = service_fn(move |mut req: Request<Incoming>| {
        let shared = shared.clone();
        req.extensions_mut().insert(scheme);
        req.extensions_mut().insert(slot.clone());
        async move {
            let resp = handle(shared.clone(), req, peer).await;
            shared.metrics.eyeball_requests.inc(resp.status().as_u16());
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let ray = new_ray(&shared.config.location);
    let raw_host = req
        .headers()
        .get(header::HOST)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let Some(host) = normalize_host(&raw_host) else {
        return error_page(ErrorPage::TunnelUnavailable, &raw_host, &ray);
    };
    if crate::management::is_management_host(&shared, &host) {
        return crate::management::handle(shared, req, peer, &ray).await;
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let result = match resolve(&shared, &host).await {
        Some(tunnel) => dispatch(&shared, tunnel, req, &raw_host, peer, &ray).await,
        None => Err(ProxyError::UnknownHost(host.clone())),
    };
    match result {
        Ok(resp) => {
            tracing::debug!(%host, %method, %path, %ray, status = resp.status().as_u16(), "proxied");
            resp
        }
        Err(e) => {
            shared.metrics.proxy_error(&e);
            let page = match &e {
                ProxyError::UnknownHost(_)
                | ProxyError::NoConnection(_)
                | ProxyError::OpenStream(_) => ErrorPage::TunnelUnavailable,
                ProxyError::Timeout(_) => ErrorPage::Timeout,
                ProxyError::Send(_) | ProxyError::BadResponse(_) | ProxyError::Connector(_) => {
                    ErrorPage::BadGateway
                }
            };
            // Unknown hosts are whatever scanners send: keep them out of info.
            if matches!(e, ProxyError::UnknownHost(_)) {
                tracing::debug!(%host, %method, %path, %ray, "no tunnel for host");
            } else {
                tracing::info!(%host, %method, %path, %ray, error = %e, status = page.status().as_u16(), "request not proxied");
            }
            error_page(page, &host, &ray)
        }
    }
}

/// Host → tunnel: the tunnel domain, then an exact DNS route, then the
/// remote ingress index (see [`crate::hosts`]).
async fn resolve(shared: &Shared, host: &str) -> Option<Uuid> {
    if let Some(id) = tunnel_of_tunnel_domain(host, &shared.config.tunnel_domain) {
        return Some(id);
    }
    match shared.routes.find_route(host).await {
        Ok(Some(id)) => return Some(id),
        Ok(None) => {}
        // The ingress index may still know the host; a store outage should
        // not take those down.
        Err(e) => tracing::warn!(%host, error = %e, "route look-up failed"),
    }
    shared.hosts_read().lookup(host)
}

/// Sends a request (plain or websocket upgrade) to one of the tunnel's live
/// connections. The first candidate's transport carries it: HTTP/2
/// connections serve both kinds themselves (h2conn); over QUIC the
/// `ConnectRequest` goes out on a new stream.
async fn dispatch(
    shared: &Arc<Shared>,
    tunnel: Uuid,
    req: Request<Incoming>,
    raw_host: &str,
    peer: SocketAddr,
    ray: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    let candidates = shared.registry.candidates(tunnel);
    if candidates.is_empty() {
        return Err(ProxyError::NoConnection(tunnel));
    }
    if candidates[0].conn.http2().is_some() {
        return crate::h2conn::proxy(shared, &candidates, req, raw_host, peer, ray).await;
    }
    let built = build_connect_request(&EyeballHead {
        method: req.method(),
        uri: req.uri(),
        headers: req.headers(),
        host: raw_host,
        peer_ip: peer.ip(),
        ray,
        scheme: eyeball_scheme(&req),
    })
    .map_err(|e| ProxyError::Send(e.to_string()))?;
    if crate::upgrade::is_websocket_upgrade(req.method(), req.headers()) {
        crate::upgrade::proxy_websocket(shared, &candidates, req, built).await
    } else {
        proxy(shared, &candidates, req, built, ray).await
    }
}

async fn proxy(
    shared: &Shared,
    candidates: &[Arc<LiveConn>],
    req: Request<Incoming>,
    built: BuiltRequest,
    ray: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    let method = req.method().clone();
    // A bodyless GET/HEAD/OPTIONS can be sent again if its stream is lost
    // before any response byte: a connector that is shutting down resets
    // the streams it had not started to serve.
    let replayable = !built.has_body
        && matches!(
            method,
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        );
    let mut body = Some(req.into_body());
    let head = built.request.encode();
    let timeout = shared.tuning.response_timeout;

    // Try the candidates in round-robin order; a failure to open a stream
    // (nothing sent yet) always moves on to the next connection.
    let mut failure = ProxyError::OpenStream("no connection tried".into());
    let mut exchange = None;
    for (c, quic) in quic_candidates(candidates) {
        let (mut send, mut recv) =
            match open_quic_stream(c, quic, shared.tuning.open_stream_timeout).await {
                Ok(s) => s,
                Err(e) => {
                    failure = ProxyError::OpenStream(e);
                    continue;
                }
            };
        // Preamble + ConnectRequest in one write: cloudflared reads the
        // version with a single read.
        if let Err(e) = send.write_all(&head).await {
            if replayable {
                failure = ProxyError::Send(format!("connection {}: {e}", c.id));
                continue;
            }
            return Err(ProxyError::Send(e.to_string()));
        }
        // A bodyless request ends its stream here; only a body needs a
        // task of its own (the response may start before the body ends).
        let pump = if built.has_body {
            // Never replayable: the body is sent once.
            Some(tokio::spawn(pump_request_body(body.take(), send)))
        } else {
            let _ = send.finish();
            None
        }
        .map(|task| task.abort_handle());
        match head_within(timeout, read_response_head(&mut recv)).await {
            Ok(Ok((resp, rest))) => {
                exchange = Some((resp, rest, recv));
                break;
            }
            Ok(Err(HeadError::Lost(e))) if replayable => {
                pump.iter().for_each(|p| p.abort());
                tracing::debug!(conn = %c.id, error = %e, "stream lost before a response; trying another connection");
                failure = ProxyError::BadResponse(format!("connection {}: {e}", c.id));
            }
            Ok(Err(HeadError::Lost(e))) => {
                pump.iter().for_each(|p| p.abort());
                return Err(ProxyError::BadResponse(e));
            }
            Ok(Err(HeadError::Bad(e))) => {
                pump.iter().for_each(|p| p.abort());
                return Err(e);
            }
            Err(t) => {
                pump.iter().for_each(|p| p.abort());
                let _ = recv.stop(VarInt::from_u32(0));
                return Err(ProxyError::Timeout(t));
            }
        }
    }
    let Some((resp, rest, recv)) = exchange else {
        return Err(failure);
    };
    let head = response_head(&resp).map_err(|e| match e {
        ResponseError::Connector(m) => ProxyError::Connector(m),
        e => ProxyError::BadResponse(e.to_string()),
    })?;

    let body: ProxyBody = if bodiless(&method, head.status) {
        drop(recv);
        Empty::new().map_err(|never| match never {}).boxed()
    } else {
        let first = futures::stream::iter((!rest.is_empty()).then_some(Ok(rest)));
        // One read gathers every chunk quinn holds (up to BODY_CHUNK): fewer,
        // larger writes to the eyeball than one per QUIC frame.
        let chunks = first
            .chain(tokio_util::io::ReaderStream::with_capacity(
                recv, BODY_CHUNK,
            ))
            .map(|r| r.map(Frame::data));
        BodyExt::boxed(StreamBody::new(chunks))
    };
    let mut response = Response::new(body);
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    if let Ok(v) = HeaderValue::from_str(ray) {
        response.headers_mut().insert("cf-ray", v);
    }
    Ok(response)
}

/// A request stream's send half that resets (rather than finishes) when
/// dropped before [`RequestSend::finish`]: quinn finishes a dropped stream,
/// and a FIN would tell the connector a cut-off body was complete.
struct RequestSend(Option<quinn::SendStream>);

impl RequestSend {
    fn finish(mut self) {
        if let Some(mut s) = self.0.take() {
            let _ = s.finish();
        }
    }
}

impl Drop for RequestSend {
    fn drop(&mut self) {
        if let Some(mut s) = self.0.take() {
            let _ = s.reset(VarInt::from_u32(0));
        }
    }
}

/// Copies the eyeball's body into the stream, then FIN. An eyeball that
/// aborts its body, or a pump aborted because the exchange failed, resets
/// the stream instead.
async fn pump_request_body(body: Option<Incoming>, send: quinn::SendStream) {
    let mut guard = RequestSend(Some(send));
    if let Some(mut body) = body {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return; // guard resets
            };
            // Trailers cannot travel over QUIC data streams; dropped.
            if let Ok(data) = frame.into_data()
                && let Some(s) = guard.0.as_mut()
                && s.write_chunk(data).await.is_err()
            {
                return;
            }
        }
    }
    guard.finish();
}

/// Awaits a response head within the origin response timeout, if one is
/// set (`--origin-response-timeout`); `Err` carries the timeout that
/// passed. Only heads are bounded: streamed bodies and upgraded
/// connections may last.
pub(crate) async fn head_within<F: std::future::Future>(
    timeout: Option<Duration>,
    head: F,
) -> Result<F::Output, Duration> {
    match timeout {
        Some(t) => tokio::time::timeout(t, head).await.map_err(|_| t),
        None => Ok(head.await),
    }
}

/// Why no response head could be read.
pub(crate) enum HeadError {
    /// The stream ended or failed before a single byte arrived: the
    /// connector never answered, so a safe request may be sent elsewhere.
    Lost(String),
    /// The connector answered something that is not a response head.
    Bad(ProxyError),
}

impl From<HeadError> for ProxyError {
    fn from(e: HeadError) -> Self {
        match e {
            HeadError::Lost(m) => ProxyError::BadResponse(m),
            HeadError::Bad(e) => e,
        }
    }
}

/// Reads the preamble and `ConnectResponse`; returns them with any body
/// bytes that arrived in the same reads. Bounded by the data-stream limits.
pub(crate) async fn read_response_head(
    recv: &mut quinn::RecvStream,
) -> Result<(ConnectResponse, Bytes), HeadError> {
    let bad = |m: String| HeadError::Bad(ProxyError::BadResponse(m));
    let limit = DATA_STREAM_PREAMBLE.len() + Limits::DATA_STREAM.max_message_bytes;
    let mut buf = BytesMut::new();
    loop {
        match recv.read_chunk(BODY_CHUNK, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) if buf.is_empty() => {
                return Err(HeadError::Lost("stream ended without a response".into()));
            }
            Ok(None) => return Err(bad("stream ended before a response head".into())),
            Err(e) if buf.is_empty() => return Err(HeadError::Lost(format!("stream failed: {e}"))),
            Err(e) => return Err(bad(format!("stream failed: {e}"))),
        }
        match ConnectResponse::decode(&buf, &Limits::DATA_STREAM) {
            Ok(Some((resp, used))) => return Ok((resp, buf.split_off(used).freeze())),
            Ok(None) if buf.len() <= limit => continue,
            Ok(None) => return Err(bad("response head too large".into())),
            Err(e) => return Err(bad(e.to_string())),
        }
    }
}

fn error_page(page: ErrorPage, host: &str, ray: &str) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from(page.html(host, ray)))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = page.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=UTF-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(ray) {
        h.insert("cf-ray", v);
    }
    resp
}
