//! Data streams: one edge-opened QUIC stream per eyeball request
//! (edge-protocol.md §4.2–4.3).
//!
//! The stream starts with the data preamble and a `ConnectRequest`; for
//! type `http` the request is routed through the ingress rules (HttpHost +
//! URL path) and proxied to the origin. The answer is the preamble, a
//! `ConnectResponse` (`HttpStatus` + `HttpHeader:*`) and the raw body, then
//! FIN. Bodies stream in both directions with backpressure: at most one
//! chunk per direction is held in memory, QUIC flow control and the origin
//! socket do the rest.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use culvert_ingress::Rule;
use culvert_proto::connect::{ConnectRequest, ConnectResponse, ConnectionType, Metadata};
use culvert_proto::framing::Limits;
use culvert_proto::http_meta::{HTTP_STATUS, HttpRequestHead, HttpResponseHead};
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, Empty, StreamBody};
use hyper::body::Frame;
use uuid::Uuid;

use crate::orchestrator::{Orchestrator, Route};
use crate::origin::{BoxError, Origin, OriginBody};

/// Largest request body chunk read from the QUIC stream at once.
const READ_CHUNK: usize = 64 * 1024;
/// How long a finished stream waits for the edge to read the rest.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// A data stream that could not be served. Logged; the stream is reset.
/// None is retryable on the same stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("reading the stream: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("writing the stream: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream ended before the ConnectRequest was complete")]
    TruncatedHead,
    #[error("bad ConnectRequest: {0}")]
    Decode(#[from] culvert_proto::DecodeError),
    #[error("origin response body failed: {0}")]
    OriginBody(#[source] hyper::Error),
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    #[error("origin connection failed: {0}")]
    Io(#[from] std::io::Error),
}

impl StreamError {
    /// Always false: the edge must send a new request.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// What data streams need from the connector.
#[derive(Debug, Clone)]
pub struct ProxyContext {
    pub orchestrator: Arc<Orchestrator>,
    /// Sent to origins as `Cf-Warp-Tag-Id`, as cloudflared does.
    pub connector_id: Uuid,
    /// Serves requests for the management hostname (`/logs`, `/ping`…).
    pub management: Option<Arc<crate::management::ManagementService>>,
    /// Request counters (`/metrics`); `None` counts nothing.
    pub metrics: Option<Arc<crate::stats::ProxyMetrics>>,
}

/// Go's `textproto.CanonicalMIMEHeaderKey`: `content-type` →
/// `Content-Type`. Names with characters outside the token set are
/// returned unchanged, like Go.
pub fn canonical_header_key(name: &str) -> String {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return name.to_owned();
    }
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

/// Request headers that describe one hop, not the request.
fn is_hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "host",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Response headers not forwarded to the edge (Go's client removes
/// `Transfer-Encoding` from the header map; the body is already de-chunked).
fn is_hop_by_hop_response(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// The path used for ingress matching and the path+query sent to the
/// origin, from the request's `dest` URL.
pub fn dest_path(dest: &str) -> (String, String) {
    match dest.parse::<hyper::Uri>() {
        Ok(uri) => {
            let path = uri.path();
            // `*` (asterisk-form) and empty paths match as `/`.
            let path = if path.starts_with('/') { path } else { "/" };
            let pq = uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
            let pq = if pq.starts_with('/') {
                pq
            } else {
                format!("/{pq}")
            };
            (path.to_owned(), pq)
        }
        Err(_) => ("/".into(), "/".into()),
    }
}

/// The origin URI: the service's scheme and authority, the request's path
/// and query.
pub fn origin_uri(service: &url::Url, path_and_query: &str) -> Result<hyper::Uri, String> {
    let scheme = match service.scheme() {
        "ws" => "http",
        "wss" => "https",
        s => s,
    };
    let host = service.host_str().unwrap_or("localhost");
    let authority = match service.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    format!("{scheme}://{authority}{path_and_query}")
        .parse::<hyper::Uri>()
        .map_err(|e| format!("building origin URL: {e}"))
}

/// Builds the request sent to an HTTP origin.
pub fn build_origin_request(
    head: &HttpRequestHead,
    service: &url::Url,
    rule: &Rule,
    connector_id: Uuid,
    body: OriginBody,
) -> Result<hyper::Request<OriginBody>, String> {
    let (_, pq) = dest_path(&head.dest);
    let uri = origin_uri(service, &pq)?;
    let method = hyper::Method::from_bytes(head.method.as_bytes())
        .map_err(|_| format!("invalid method {:?}", head.method))?;
    let mut req = hyper::Request::builder().method(method).uri(uri);
    let host_override = rule.origin_request.http_host_header();
    let host = if !host_override.is_empty() {
        host_override
    } else {
        head.host.as_str()
    };
    if !host.is_empty() {
        req = req.header(hyper::header::HOST, host);
    }
    for (name, value) in &head.headers {
        if is_hop_by_hop(name) {
            continue;
        }
        if !head.has_body() && name.eq_ignore_ascii_case("transfer-encoding") {
            continue;
        }
        match (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => req = req.header(n, v),
            _ => tracing::debug!(header = %name, "dropping a header hyper cannot carry"),
        }
    }
    req = req.header("Cf-Warp-Tag-Id", connector_id.to_string());
    req.body(body)
        .map_err(|e| format!("building origin request: {e}"))
}

/// The `ConnectResponse` head for an origin response.
pub fn response_head(status: u16, headers: &hyper::HeaderMap) -> HttpResponseHead {
    let headers = headers
        .iter()
        .filter(|(n, _)| !is_hop_by_hop_response(n.as_str()))
        .map(|(n, v)| {
            (
                canonical_header_key(n.as_str()),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    HttpResponseHead {
        status,
        headers,
        extra: Vec::new(),
    }
}

/// A failed flow: `error` set, plus `HttpStatus=502` as newer cloudflared
/// sends (2023.7.3 sends the error alone; edges treat both as 502).
pub fn error_response(msg: impl Into<String>) -> ConnectResponse {
    crate::management::layer::record_status(502);
    crate::stats::record_status(502);
    crate::stats::record_error();
    ConnectResponse {
        error: msg.into(),
        metadata: vec![Metadata::new(HTTP_STATUS, "502")],
    }
}

/// The built-in `hello_world` page.
pub fn hello_world(host: &str) -> (HttpResponseHead, Bytes) {
    let host = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(*c))
        .collect::<String>();
    let body = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>culvert: hello world</title></head>\n\
         <body><h1>Congrats! You created a tunnel!</h1>\n<p>This page is served by the culvert \
         connector's built-in hello_world service for <code>{host}</code>.</p></body></html>\n"
    );
    let head = HttpResponseHead {
        status: 200,
        headers: vec![
            ("Content-Type".into(), "text/html; charset=utf-8".into()),
            ("Content-Length".into(), body.len().to_string()),
        ],
        extra: Vec::new(),
    };
    (head, Bytes::from(body))
}

/// Reads preamble + `ConnectRequest`. `start` holds bytes already read
/// (the 6-byte signature). Returns the request and any body bytes that
/// arrived with it.
async fn read_head(
    recv: &mut quinn::RecvStream,
    start: &[u8],
) -> Result<(ConnectRequest, Bytes), StreamError> {
    let mut buf = start.to_vec();
    let mut chunk = vec![0u8; 4096];
    loop {
        // `decode` checks the segment table against the limits before the
        // message is complete, so `buf` stays bounded by them.
        if let Some((req, used)) = ConnectRequest::decode(&buf, &Limits::DATA_STREAM)? {
            let rest = Bytes::copy_from_slice(&buf[used..]);
            return Ok((req, rest));
        }
        match recv.read(&mut chunk).await? {
            Some(n) => buf.extend_from_slice(&chunk[..n]),
            None => return Err(StreamError::TruncatedHead),
        }
    }
}

/// The request body: bytes that came with the head, then the rest of the
/// stream up to FIN, one chunk at a time.
pub(crate) fn request_body(initial: Bytes, recv: quinn::RecvStream) -> OriginBody {
    let first = (!initial.is_empty()).then_some(initial);
    let stream = futures::stream::unfold(
        (first, Some(recv)),
        |(first, recv): (Option<Bytes>, Option<quinn::RecvStream>)| async move {
            if let Some(b) = first {
                return Some((Ok(Frame::data(b)), (None, recv)));
            }
            let mut recv = recv?;
            match recv.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => Some((Ok(Frame::data(chunk.bytes)), (None, Some(recv)))),
                Ok(None) => None,
                Err(e) => Some((Err(BoxError::from(e)), (None, None))),
            }
        },
    );
    StreamBody::new(stream.boxed()).boxed_unsync()
}

pub(crate) fn empty_body() -> OriginBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Serves one data stream whose 6-byte signature has been read.
pub async fn serve_data_stream(
    ctx: ProxyContext,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    signature: [u8; 6],
) -> Result<(), StreamError> {
    let (req, initial) = match read_head(&mut recv, &signature).await {
        Ok(v) => v,
        Err(e) => {
            let _ = send.reset(quinn::VarInt::from_u32(0));
            return Err(e);
        }
    };
    tracing::debug!(dest = %req.dest, kind = ?req.connection_type, "data stream");
    if let Some(m) = ctx.management.as_ref().filter(|m| m.handles(&req)) {
        return m.serve(req, initial, send, recv).await;
    }
    if let Some(m) = ctx
        .metrics
        .as_ref()
        .filter(|_| req.connection_type != ConnectionType::Tcp)
    {
        crate::stats::begin(m, &ctx.orchestrator, &req);
    }
    if req.connection_type == ConnectionType::Websocket {
        let span = crate::management::layer::request_span(&req);
        let ws = crate::stream_origin::serve_websocket(&ctx, &req, initial, recv, send);
        return tracing::Instrument::instrument(ws, span).await;
    }
    if req.connection_type == ConnectionType::Tcp {
        return crate::tcpflow::serve_quic(&ctx, &req, initial, recv, send).await;
    }
    let result = match req.connection_type {
        ConnectionType::Http => {
            let span = crate::management::layer::request_span(&req);
            tracing::Instrument::instrument(proxy_http(&ctx, &req, initial, recv, &mut send), span)
                .await
        }
        // Served above.
        ConnectionType::Websocket | ConnectionType::Tcp => {
            let msg = format!(
                "{:?} streams are not supported by this connector yet",
                req.connection_type
            );
            tracing::warn!(dest = %req.dest, "{msg}");
            send.write_all(&error_response(msg).encode()).await?;
            Ok(())
        }
    };
    match result {
        Ok(()) => {
            send.finish()?;
            let _ = tokio::time::timeout(FINISH_TIMEOUT, send.stopped()).await;
            Ok(())
        }
        Err(e) => {
            let _ = send.reset(quinn::VarInt::from_u32(0));
            Err(e)
        }
    }
}

async fn write_head(
    send: &mut quinn::SendStream,
    head: &HttpResponseHead,
) -> Result<(), StreamError> {
    crate::management::layer::record_status(head.status);
    crate::stats::record_status(head.status);
    let resp = head.to_connect_response().unwrap_or_else(|e| {
        // Only a header name with ':' fails, which hyper never yields.
        error_response(e.to_string())
    });
    send.write_all(&resp.encode()).await?;
    Ok(())
}

/// What an HTTP request produced, whatever transport carries it.
pub enum HttpOutcome {
    /// A response: its head and its body.
    Response(HttpResponseHead, ResponseBody),
    /// The connector's own failure (the edge shows a 502).
    Error(String),
}

/// A response body to relay.
pub enum ResponseBody {
    Empty,
    Full(Bytes),
    /// Streamed from the origin as it arrives.
    Origin(hyper::body::Incoming),
}

/// The matched rule's Access check (`access.required`), run where HTTP and
/// WebSocket requests are dispatched on either transport, before any
/// origin is touched and whatever the rule's service, as cloudflared runs
/// its ingress middleware in `ProxyHTTP`. Returns the 403 to answer when
/// the request has no valid `Cf-Access-Jwt-Assertion`.
pub async fn access_refusal(route: &Route<'_>, head: &HttpRequestHead) -> Option<HttpResponseHead> {
    let why = route.access?.verify_request(head).await.err()?;
    tracing::info!(host = %head.host, %why, "request refused by originRequest.access");
    Some(HttpResponseHead {
        status: 403,
        headers: Vec::new(),
        extra: Vec::new(),
    })
}

/// Routes one HTTP request through the ingress rules and serves it
/// (origin, fixed status, hello world). `body` is the request body; it is
/// sent to an origin only when the head says there is one.
pub async fn serve_http(
    ctx: &ProxyContext,
    head: &HttpRequestHead,
    body: OriginBody,
) -> HttpOutcome {
    let snapshot = ctx.orchestrator.snapshot();
    let (path, _) = dest_path(&head.dest);
    let route = snapshot.route(&head.host, &path);
    tracing::debug!(host = %head.host, %path, rule = route.index, origin = ?route.origin, "matched ingress rule");
    if let Some(forbidden) = access_refusal(&route, head).await {
        return HttpOutcome::Response(forbidden, ResponseBody::Empty);
    }
    let rule = route.rule;
    match route.origin {
        Origin::Status(code) => {
            let head = HttpResponseHead {
                status: code,
                headers: Vec::new(),
                extra: Vec::new(),
            };
            HttpOutcome::Response(head, ResponseBody::Empty)
        }
        Origin::HelloWorld => {
            let (resp, page) = hello_world(&head.host);
            let body = if head.method == "HEAD" {
                ResponseBody::Empty
            } else {
                ResponseBody::Full(page)
            };
            HttpOutcome::Response(resp, body)
        }
        Origin::Unsupported(service) => HttpOutcome::Error(format!(
            "service {service} cannot serve HTTP requests in this connector yet"
        )),
        Origin::Http(http) => {
            let origin_req = match origin_request(ctx, head, &http.url, rule, body) {
                Ok(r) => r,
                Err(e) => return HttpOutcome::Error(e),
            };
            let sent = http.send(origin_req).await;
            origin_outcome(head, http.url.as_str(), sent)
        }
        // A socket dialled per request, whichever transport carries it.
        Origin::Unix(unix) => {
            let origin_req = match origin_request(ctx, head, unix.url(), rule, body) {
                Ok(r) => r,
                Err(e) => return HttpOutcome::Error(e),
            };
            let sent = unix
                .request(origin_req)
                .await
                .map_err(crate::origin::SendError::Origin);
            origin_outcome(head, &unix.service_name(), sent)
        }
    }
}

/// The request for an HTTP-speaking origin at `url`; `body` goes along
/// only when the head says there is one.
fn origin_request(
    ctx: &ProxyContext,
    head: &HttpRequestHead,
    url: &url::Url,
    rule: &Rule,
    body: OriginBody,
) -> Result<hyper::Request<OriginBody>, String> {
    let body = if head.has_body() {
        body
    } else {
        drop(body);
        empty_body()
    };
    build_origin_request(head, url, rule, ctx.connector_id, body)
}

/// What an origin's answer (or failure to answer) becomes; `service`
/// names the origin in the error.
fn origin_outcome(
    head: &HttpRequestHead,
    service: &str,
    sent: Result<hyper::Response<hyper::body::Incoming>, crate::origin::SendError>,
) -> HttpOutcome {
    match sent {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            HttpOutcome::Response(
                response_head(parts.status.as_u16(), &parts.headers),
                ResponseBody::Origin(body),
            )
        }
        Err(e) => {
            let msg = format!("unable to reach the origin service {service}: {e}");
            tracing::warn!(host = %head.host, error = %msg, "origin request failed");
            HttpOutcome::Error(msg)
        }
    }
}

async fn proxy_http(
    ctx: &ProxyContext,
    req: &ConnectRequest,
    initial: Bytes,
    recv: quinn::RecvStream,
    send: &mut quinn::SendStream,
) -> Result<(), StreamError> {
    let head = match HttpRequestHead::from_connect_request(req) {
        Ok(h) => h,
        Err(e) => {
            send.write_all(&error_response(e.to_string()).encode())
                .await?;
            return Ok(());
        }
    };
    let body = if head.has_body() {
        request_body(initial, recv)
    } else {
        drop(recv);
        empty_body()
    };
    match serve_http(ctx, &head, body).await {
        HttpOutcome::Error(msg) => {
            send.write_all(&error_response(msg).encode()).await?;
            Ok(())
        }
        HttpOutcome::Response(resp, body) => {
            write_head(send, &resp).await?;
            match body {
                ResponseBody::Empty => {}
                ResponseBody::Full(b) => send.write_all(&b).await?,
                ResponseBody::Origin(mut body) => {
                    while let Some(frame) = body.frame().await {
                        let frame = frame.map_err(StreamError::OriginBody)?;
                        // write_chunk hands the Bytes to quinn without a copy.
                        if let Ok(data) = frame.into_data() {
                            send.write_chunk(data).await?;
                        }
                    }
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn canonical_keys() {
        assert_eq!(canonical_header_key("content-type"), "Content-Type");
        assert_eq!(canonical_header_key("X-ECHO"), "X-Echo");
        assert_eq!(canonical_header_key("cf-ray"), "Cf-Ray");
        assert_eq!(canonical_header_key("etag"), "Etag");
        assert_eq!(canonical_header_key("bad header"), "bad header");
        assert_eq!(canonical_header_key(""), "");
    }

    #[test]
    fn dest_paths() {
        assert_eq!(
            dest_path("http://app.test/submit?x=1"),
            ("/submit".into(), "/submit?x=1".into())
        );
        assert_eq!(dest_path("http://app.test"), ("/".into(), "/".into()));
        assert_eq!(dest_path("::bad::"), ("/".into(), "/".into()));
        let svc: url::Url = "http://127.0.0.1:18080/ignored".parse().unwrap();
        assert_eq!(
            origin_uri(&svc, "/a?b").unwrap().to_string(),
            "http://127.0.0.1:18080/a?b"
        );
        let svc: url::Url = "wss://[::1]:8443".parse().unwrap();
        assert_eq!(
            origin_uri(&svc, "/").unwrap().to_string(),
            "https://[::1]:8443/"
        );
    }

    #[test]
    fn origin_request_like_cloudflared() {
        let ingress = culvert_ingress::parse_remote_config(&serde_json::json!({
            "ingress": [{"service": "http://127.0.0.1:18080"}]
        }))
        .unwrap();
        let head = HttpRequestHead {
            dest: "http://app.test/submit".into(),
            websocket: false,
            method: "POST".into(),
            host: "app.test".into(),
            headers: vec![
                ("Cf-Ray".into(), "0000000000000002-LAB".into()),
                ("Content-Length".into(), "16".into()),
                ("Connection".into(), "close".into()),
            ],
            extra: vec![],
        };
        let svc = match &ingress.rules[0].service {
            culvert_ingress::Service::Http(u) => u.clone(),
            _ => unreachable!(),
        };
        let id = Uuid::from_u128(5);
        let req = build_origin_request(&head, &svc, &ingress.rules[0], id, empty_body()).unwrap();
        assert_eq!(req.method(), "POST");
        assert_eq!(req.uri().to_string(), "http://127.0.0.1:18080/submit");
        let h = req.headers();
        assert_eq!(h["host"], "app.test");
        assert_eq!(h["content-length"], "16");
        assert_eq!(h["cf-ray"], "0000000000000002-LAB");
        assert_eq!(h["cf-warp-tag-id"], id.to_string());
        assert!(h.get("connection").is_none());
    }

    #[test]
    fn response_heads() {
        let mut h = hyper::HeaderMap::new();
        h.insert("content-type", "text/plain".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.append("set-cookie", "a=1".parse().unwrap());
        h.append("set-cookie", "b=2".parse().unwrap());
        let head = response_head(201, &h);
        let resp = head.to_connect_response().unwrap();
        let pairs: Vec<_> = resp
            .metadata
            .iter()
            .map(|m| (m.key.as_str(), m.val.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("HttpStatus", "201"),
                ("HttpHeader:Content-Type", "text/plain"),
                ("HttpHeader:Set-Cookie", "a=1"),
                ("HttpHeader:Set-Cookie", "b=2"),
            ]
        );
        let e = error_response("boom");
        assert!(e.is_error());
        let (hw, body) = hello_world("app.test<script>");
        assert_eq!(hw.status, 200);
        assert!(!String::from_utf8_lossy(&body).contains("<script>"));
    }

    proptest! {
        #[test]
        fn canonical_is_idempotent(s in "[A-Za-z0-9-]{0,20}") {
            let c = canonical_header_key(&s);
            prop_assert_eq!(canonical_header_key(&c), c.clone());
            prop_assert!(c.eq_ignore_ascii_case(&s));
        }

        #[test]
        fn dest_path_total(s in any::<String>()) {
            let (p, pq) = dest_path(&s);
            prop_assert!(p.starts_with('/'));
            prop_assert!(pq.starts_with('/'));
        }
    }
}
