//! The HTTP/2 transport (edge-protocol.md §5): for networks where QUIC does
//! not get through. The connector dials TLS over TCP (SNI
//! `h2.cftunnel.com`, no ALPN, the same CA handling as QUIC) and then acts
//! as the **HTTP/2 server**: the edge sends requests, told apart by
//! headers ([`classify_request`]):
//!
//! - `control-stream`: the request body carries edge → connector capnp
//!   bytes, the response body the other direction; registration runs on it
//!   exactly as on the QUIC control stream ([`crate::rpc::register`]);
//! - `update-configuration`: a JSON `{version, config}` body for the
//!   [`crate::orchestrator::Orchestrator`], answered with
//!   `{"lastAppliedVersion":N,"err":…}`;
//! - plain HTTP: routed and proxied by [`crate::proxy::serve_http`] (shared
//!   with QUIC, TCP/TLS and `unix:` origins alike); the origin's headers go
//!   back serialised in `cf-cloudflared-response-headers`
//!   ([`response_headers`]);
//! - `websocket`: the origin's 101 becomes 200 and the bodies carry the raw
//!   frames both ways ([`websocket`]; origins reached through
//!   [`crate::stream_origin::HttpTarget`], as over QUIC);
//! - TCP (private routing, `Cf-Cloudflared-Proxy-Src`): `:authority` is
//!   dialled when `warp-routing` is enabled; 200, then raw bytes
//!   ([`tcp_flow`]).
//!
//! Bounds: concurrent streams, windows, frame and header sizes are fixed
//! below; bodies stream under HTTP/2 flow control.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use culvert_proto::h2::{
    ConfigPushBody, ConfigPushResponse, RESPONSE_HEADERS, RESPONSE_META, RequestKind, ResponseMeta,
    ResponseSource, classify_request, serialize_headers, should_serialize_response_header,
};
use culvert_proto::http_meta::{HttpRequestHead, HttpResponseHead};
use futures::{StreamExt as _, TryStreamExt as _};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyDataStream, BodyExt as _, Empty, Full, Limited, StreamBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio_util::compat::{TokioAsyncReadCompatExt as _, TokioAsyncWriteCompatExt as _};
use tokio_util::io::{ReaderStream, StreamReader};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::connector::{AttemptFailure, Shared, UNREGISTER_LINGER, resolve};
use crate::error::ConnectorError;
use crate::identity::register_params;
use crate::origin::BoxError;
use crate::proxy::{
    HttpOutcome, ProxyContext, ResponseBody, access_refusal, build_origin_request,
    canonical_header_key, dest_path, serve_http,
};
use crate::rpc::register;
use crate::stream_origin::HttpTarget;
use crate::tls::edge_tls_config;

/// SNI and verified name of the HTTP/2 edge.
pub const EDGE_H2_SERVER_NAME: &str = "h2.cftunnel.com";
/// cloudflared dials with a fixed 15 s timeout.
const DIAL_TIMEOUT: Duration = Duration::from_secs(15);
/// The edge opens the control stream right after the handshake.
const CONTROL_STREAM_TIMEOUT: Duration = Duration::from_secs(15);
/// Concurrent edge requests on one connection (QUIC allows as many).
const MAX_CONCURRENT_STREAMS: u32 = 10_000;
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 256 * 1024;
const MAX_HEADER_LIST: u32 = 256 * 1024;
/// Buffer between the RPC session and the control-stream response body.
const CONTROL_PIPE_BYTES: usize = 64 * 1024;
/// Largest configuration push body.
const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a GOAWAY'd connection may take to wind down.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Response bodies sent to the edge.
type RespBody = UnsyncBoxBody<Bytes, BoxError>;
/// The two halves of the control stream, handed from the request handler
/// to the connection: what the edge sends, and where our answers go.
type ControlPipe = (StreamReader<DataStream, Bytes>, DuplexStream);
type DataStream = futures::stream::MapErr<BodyDataStream<Incoming>, fn(hyper::Error) -> io::Error>;

/// rustls client config for the HTTP/2 edge: the QUIC one (TLS 1.3, same
/// trust: `--cacert` replaces the roots) without ALPN, as cloudflared.
pub fn edge_h2_tls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, ConnectorError> {
    let mut cfg = edge_tls_config(ca_pem)?;
    cfg.alpn_protocols.clear();
    Ok(cfg)
}

/// What the request handlers share on one connection.
struct ServiceCtx {
    proxy: ProxyContext,
    /// Taken by the first control-stream request.
    control: Mutex<Option<mpsc::Sender<ControlPipe>>>,
    /// In-flight requests (the graceful shutdown waits for them).
    tracker: TaskTracker,
}

/// One HTTP/2 connection attempt: dial, serve, register, serve until lost or
/// shut down (then unregister and drain like the QUIC transport).
pub(crate) async fn serve_connection(
    shared: &Arc<Shared>,
    index: u8,
    addr: &str,
    attempt: u32,
    shutdown: &CancellationToken,
    on_registered: &mut (dyn FnMut() + Send),
) -> Result<(), AttemptFailure> {
    let cfg = &shared.config;
    let fail = |reason: String| {
        AttemptFailure::before_registration(ConnectorError::Http2 {
            addr: addr.to_owned(),
            reason,
        })
    };
    let remote = resolve(addr)
        .await
        .map_err(AttemptFailure::before_registration)?;
    let dial = async {
        let tcp = tokio::net::TcpStream::connect(remote)
            .await
            .map_err(|e| format!("dialing: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().map_err(|e| e.to_string())?;
        let name = ServerName::try_from(EDGE_H2_SERVER_NAME).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&shared.h2_tls))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        Ok::<_, String>((tls, local))
    };
    let (tls, local) = tokio::select! {
        r = tokio::time::timeout(DIAL_TIMEOUT, dial) => match r {
            Ok(r) => r.map_err(fail)?,
            Err(_) => return Err(fail(format!("no connection within {DIAL_TIMEOUT:?}"))),
        },
        _ = shutdown.cancelled() => return Ok(()),
    };

    let (control_tx, mut control_rx) = mpsc::channel::<ControlPipe>(1);
    let ctx = Arc::new(ServiceCtx {
        proxy: ProxyContext {
            orchestrator: Arc::clone(&shared.orchestrator),
            connector_id: shared.state.connector_id(),
            management: Some(Arc::clone(&shared.management)),
            metrics: Some(Arc::clone(shared.state.metrics())),
        },
        control: Mutex::new(Some(control_tx)),
        tracker: TaskTracker::new(),
    });
    let svc_ctx = Arc::clone(&ctx);
    let service = hyper::service::service_fn(move |req| {
        let ctx = Arc::clone(&svc_ctx);
        async move { Ok::<_, Infallible>(handle(ctx, req).await) }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST)
        // An edge that vanished without closing TCP is noticed by PINGs
        // (QUIC has its idle timeout for this).
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service);
    // The connection runs as its own task; `stop` sends GOAWAY and lets the
    // open streams finish (bounded by CLOSE_TIMEOUT).
    let stop = CancellationToken::new();
    let stop_conn = stop.clone();
    let mut conn_task = tokio::spawn(async move {
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r.map_err(|e| e.to_string()),
            _ = stop_conn.cancelled() => {
                conn.as_mut().graceful_shutdown();
                match tokio::time::timeout(CLOSE_TIMEOUT, conn).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Ok(()),
                }
            }
        }
    });
    let _abort = AbortOnDrop(conn_task.abort_handle());
    let lost = |r: Result<Result<(), String>, tokio::task::JoinError>| {
        let reason = match r {
            Ok(Ok(())) => "the edge closed the connection".to_owned(),
            Ok(Err(e)) => e,
            Err(e) => e.to_string(),
        };
        ConnectorError::Http2 {
            addr: addr.to_owned(),
            reason,
        }
    };

    let pipe = tokio::select! {
        p = control_rx.recv() => p,
        r = &mut conn_task => return Err(AttemptFailure::before_registration(lost(r))),
        _ = tokio::time::sleep(CONTROL_STREAM_TIMEOUT) => None,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let Some((recv, send)) = pipe else {
        stop.cancel();
        return Err(fail("the edge opened no control stream".into()));
    };
    let params = register_params(
        &cfg.token,
        shared.state.connector_id(),
        index,
        local,
        attempt,
    );
    let registration = tokio::select! {
        r = register(&shared.pool, send.compat_write(), recv.compat(), params, cfg.rpc_timeout) => r,
        r = &mut conn_task => return Err(AttemptFailure::before_registration(lost(r))),
        _ = shutdown.cancelled() => {
            stop.cancel();
            return Ok(());
        }
    };
    let (details, mut session) = match registration {
        Ok(v) => v,
        Err(e) => {
            stop.cancel();
            return Err(AttemptFailure::before_registration(e));
        }
    };
    tracing::info!(
        conn_index = index,
        connection = %details.uuid,
        location = %details.location_name,
        edge = %remote,
        protocol = "http2",
        remotely_managed = details.tunnel_is_remotely_managed,
        "Registered tunnel connection"
    );
    let ready = shared.state.up();
    on_registered();

    tokio::select! {
        _ = shutdown.cancelled() => {}
        r = &mut conn_task => {
            drop(ready);
            return Err(AttemptFailure { error: lost(r), registered: true });
        }
    }

    // Graceful shutdown: unregister, keep serving for a moment (the edge may
    // have routed requests here just before), drain, end the control
    // stream, GOAWAY.
    drop(ready);
    match session.unregister(cfg.rpc_timeout).await {
        Ok(()) => tracing::info!(conn_index = index, "Unregistered tunnel connection"),
        Err(e) => tracing::warn!(conn_index = index, error = %e, "unregisterConnection failed"),
    }
    let deadline = tokio::time::Instant::now() + cfg.grace_period;
    let linger = cfg.grace_period.min(UNREGISTER_LINGER);
    // A JoinHandle must not be polled again once it completed.
    let mut conn_done = false;
    tokio::select! {
        _ = tokio::time::sleep(linger) => {}
        _ = &mut conn_task => conn_done = true,
    }
    ctx.tracker.close();
    if !conn_done {
        tokio::select! {
            _ = ctx.tracker.wait() => {}
            _ = &mut conn_task => conn_done = true,
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(conn_index = index, in_flight = ctx.tracker.len(), "grace period over; closing with requests in flight");
            }
        }
    }
    session.finish(Duration::from_secs(1)).await;
    stop.cancel();
    if !conn_done {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT + Duration::from_secs(1), &mut conn_task).await;
    }
    Ok(())
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn handle(ctx: Arc<ServiceCtx>, req: Request<Incoming>) -> Response<RespBody> {
    let headers: Vec<(&str, &[u8])> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let kind = classify_request(headers);
    match kind {
        RequestKind::ControlStream => control_stream(&ctx, req),
        RequestKind::ConfigUpdate => config_update(&ctx, req).await,
        RequestKind::Http => {
            let token = ctx.tracker.token();
            let guard = start_request(&ctx, &req);
            counted(guard, http(&ctx, req, token).await)
        }
        RequestKind::Websocket => {
            let token = ctx.tracker.token();
            let guard = start_request(&ctx, &req);
            counted(guard, websocket(&ctx, req, token).await)
        }
        RequestKind::Tcp => {
            let token = ctx.tracker.token();
            tcp_flow(&ctx, req, token).await
        }
    }
}

/// Starts counting an HTTP or websocket request for `/metrics`.
fn start_request(ctx: &ServiceCtx, req: &Request<Incoming>) -> Option<crate::stats::RequestGuard> {
    let metrics = ctx.proxy.metrics.as_ref()?;
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or("");
    let label = crate::stats::label_for(&ctx.proxy.orchestrator, host, req.uri().path());
    Some(metrics.start(&label))
}

/// Records the response status (the connector's own answers, marked
/// `src: cloudflared`, are errors) and keeps the request in flight until
/// its body ends.
fn counted(
    guard: Option<crate::stats::RequestGuard>,
    resp: Response<RespBody>,
) -> Response<RespBody> {
    let Some(mut guard) = guard else {
        return resp;
    };
    guard.set_status(resp.status().as_u16());
    let own = resp
        .headers()
        .get(RESPONSE_META)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("cloudflared"));
    if own {
        guard.set_error();
    }
    resp.map(|b| crate::stats::CountedBody::new(b, guard).boxed_unsync())
}

/// Hands the control stream's bodies to the connection task; the response
/// (200, then our capnp bytes) starts at once.
fn control_stream(ctx: &ServiceCtx, req: Request<Incoming>) -> Response<RespBody> {
    let sender = ctx.control.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(sender) = sender else {
        tracing::warn!("the edge opened a second control stream; refusing it");
        return connector_error(StatusCode::BAD_REQUEST);
    };
    let to_io: fn(hyper::Error) -> io::Error = io::Error::other;
    let recv = StreamReader::new(BodyDataStream::new(req.into_body()).map_err(to_io));
    let (rpc_out, body_src) = tokio::io::duplex(CONTROL_PIPE_BYTES);
    if sender.try_send((recv, rpc_out)).is_err() {
        return connector_error(StatusCode::SERVICE_UNAVAILABLE);
    }
    let stream = ReaderStream::with_capacity(body_src, 16 * 1024)
        .map(|r| r.map(Frame::data).map_err(BoxError::from));
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

async fn config_update(ctx: &ServiceCtx, req: Request<Incoming>) -> Response<RespBody> {
    let bytes = match Limited::new(req.into_body(), MAX_CONFIG_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            tracing::warn!(error = %e, "reading a configuration push failed");
            return connector_error(StatusCode::BAD_REQUEST);
        }
    };
    let push: ConfigPushBody = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "configuration push is not {{version, config}} JSON");
            return connector_error(StatusCode::BAD_REQUEST);
        }
    };
    let config = serde_json::to_vec(&push.config).unwrap_or_default();
    let r = ctx
        .proxy
        .orchestrator
        .update_configuration(push.version, &config);
    let answer = ConfigPushResponse {
        last_applied_version: r.latest_applied_version,
        err: (!r.err.is_empty()).then_some(r.err),
    };
    let json = serde_json::to_vec(&answer).unwrap_or_default();
    let mut resp = Response::new(full(Bytes::from(json)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn http(
    ctx: &ServiceCtx,
    req: Request<Incoming>,
    token: TaskTrackerToken,
) -> Response<RespBody> {
    let has_body = !req.body().is_end_stream();
    let head = request_head(&req, has_body);
    let body = req.into_body().map_err(BoxError::from).boxed_unsync();
    tracing::debug!(dest = %head.dest, "HTTP/2 request");
    match serve_http(&ctx.proxy, &head, body).await {
        HttpOutcome::Error(msg) => {
            tracing::debug!(dest = %head.dest, error = %msg, "request failed in the connector");
            connector_error(StatusCode::BAD_GATEWAY)
        }
        HttpOutcome::Response(resp_head, body) => {
            let body = match body {
                ResponseBody::Empty => empty(),
                ResponseBody::Full(b) => full(b),
                ResponseBody::Origin(b) => b.map_err(BoxError::from).boxed_unsync(),
            };
            // 101 travels as 200 (only websocket requests get one).
            let status = match StatusCode::from_u16(resp_head.status) {
                Ok(StatusCode::SWITCHING_PROTOCOLS) => StatusCode::OK,
                Ok(s) => s,
                Err(_) => return connector_error(StatusCode::BAD_GATEWAY),
            };
            let mut resp = Response::new(
                Tracked {
                    body,
                    _token: token,
                }
                .boxed_unsync(),
            );
            *resp.status_mut() = status;
            *resp.headers_mut() = response_headers(&resp_head);
            resp
        }
    }
}

/// A websocket over HTTP/2 (§5.2): the origin is dialled with the upgrade
/// headers; its 101 travels as 200 (with `Sec-Websocket-Accept`,
/// `Connection` and `Upgrade` in the serialised headers), then the request
/// body carries the eyeball's raw frames to the origin and the response
/// body the origin's back, unchanged. Another status from the origin is
/// relayed as a plain response.
async fn websocket(
    ctx: &ServiceCtx,
    req: Request<Incoming>,
    token: TaskTrackerToken,
) -> Response<RespBody> {
    let mut head = request_head(&req, false);
    head.websocket = true;
    let snapshot = ctx.proxy.orchestrator.snapshot();
    let (path, _) = dest_path(&head.dest);
    let route = snapshot.route(&head.host, &path);
    let bodyless = |answer: &HttpResponseHead| {
        let mut resp = Response::new(empty());
        *resp.status_mut() = resp_head_status(answer.status);
        *resp.headers_mut() = response_headers(answer);
        resp
    };
    if let Some(forbidden) = access_refusal(&route, &head).await {
        return bodyless(&forbidden);
    }
    let (rule, origin) = (route.rule, route.origin);
    if let Some((host, port)) = crate::stream_origin::stream_target(&rule.service) {
        return tcp_service(&head, rule, &host, port, req, token).await;
    }
    // `http_status:NNN` answers upgrades with its status, as over QUIC.
    if let crate::origin::Origin::Status(status) = origin {
        return bodyless(&HttpResponseHead {
            status,
            headers: Vec::new(),
            extra: Vec::new(),
        });
    }
    let Some(http) = HttpTarget::of(&origin) else {
        tracing::debug!(dest = %head.dest, "websocket to a service that is not HTTP");
        return connector_error(StatusCode::BAD_GATEWAY);
    };
    let mut origin_req = match build_origin_request(
        &head,
        http.url(),
        rule,
        ctx.proxy.connector_id,
        empty_body_for_origin(),
    ) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "websocket origin request");
            return connector_error(StatusCode::BAD_GATEWAY);
        }
    };
    let h = origin_req.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let mut resp = match http.request(origin_req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(origin = %http.name(), error = %e, "websocket origin unreachable");
            return connector_error(StatusCode::BAD_GATEWAY);
        }
    };
    let resp_head = HttpResponseHead {
        status: resp.status().as_u16(),
        headers: resp
            .headers()
            .iter()
            .filter(|(n, _)| *n != header::TRANSFER_ENCODING)
            .map(|(n, v)| {
                (
                    canonical_header_key(n.as_str()),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        extra: Vec::new(),
    };
    let headers = response_headers(&resp_head);
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let mut out = Response::new(
            Tracked {
                body: resp.into_body().map_err(BoxError::from).boxed_unsync(),
                _token: token,
            }
            .boxed_unsync(),
        );
        *out.status_mut() = resp_head_status(resp_head.status);
        *out.headers_mut() = headers;
        return out;
    }
    let upgraded = match hyper::upgrade::on(&mut resp).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(error = %e, "websocket origin upgrade failed");
            return connector_error(StatusCode::BAD_GATEWAY);
        }
    };
    let (origin_rd, mut origin_wr) = tokio::io::split(TokioIo::new(upgraded));
    // Edge → origin, frame by frame under HTTP/2 flow control.
    let from_edge = req.into_body();
    tokio::spawn(async move {
        copy_body(from_edge, &mut origin_wr).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut origin_wr).await;
    });
    relayed(origin_rd, headers, token)
}

/// A WebSocket to a TCP service (`ssh://`, `tcp://`, …) over HTTP/2: as
/// over QUIC, the connector dials the service, answers the handshake itself
/// (200 standing for 101) and bridges WebSocket message payloads to the TCP
/// connection; the request body carries the eyeball's frames and the
/// response body ours.
async fn tcp_service(
    head: &culvert_proto::http_meta::HttpRequestHead,
    rule: &culvert_ingress::Rule,
    host: &str,
    port: u16,
    req: Request<Incoming>,
    token: TaskTrackerToken,
) -> Response<RespBody> {
    let timeout = rule.origin_request.connect_timeout();
    let tcp =
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                tracing::warn!(service = %rule.service, error = %e, "TCP service unreachable");
                return connector_error(StatusCode::BAD_GATEWAY);
            }
            Err(_) => {
                tracing::warn!(service = %rule.service, "TCP service dial timed out");
                return connector_error(StatusCode::BAD_GATEWAY);
            }
        };
    let _ = tcp.set_nodelay(true);
    let switching = crate::stream_origin::switching_head(head.header("sec-websocket-key").next());
    let headers = response_headers(&switching);
    let to_io: fn(hyper::Error) -> io::Error = io::Error::other;
    let from_edge = StreamReader::new(BodyDataStream::new(req.into_body()).map_err(to_io));
    let (to_edge_wr, to_edge_rd) = tokio::io::duplex(64 * 1024);
    let service = rule.service.clone();
    tokio::spawn(async move {
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            tokio::io::join(from_edge, to_edge_wr),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            Some(crate::stream_origin::ws_config()),
        )
        .await;
        if let Err(e) = crate::stream_origin::bridge(ws, tcp).await {
            tracing::debug!(%service, error = %e, "TCP service stream ended with an error");
        }
    });
    relayed(to_edge_rd, headers, token)
}

/// A private-network TCP flow over HTTP/2 (§5.2, `Cf-Cloudflared-Proxy-Src`
/// set): dial `:authority` (`ip:port`) through the shared
/// [`crate::tcpflow::dial`] (refused unless `warp-routing.enabled`), answer
/// 200, then the bodies carry the raw bytes. There is no half-close here:
/// when the edge's side ends, the flow ends, as in cloudflared.
async fn tcp_flow(
    ctx: &ServiceCtx,
    req: Request<Incoming>,
    token: TaskTrackerToken,
) -> Response<RespBody> {
    let dest = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let tcp = match crate::tcpflow::dial(&ctx.proxy, &dest).await {
        Ok(t) => t,
        Err(e) => {
            match &e {
                crate::tcpflow::FlowError::Disabled => tracing::error!("{e}"),
                _ => tracing::warn!(%dest, error = %e, "private TCP flow failed"),
            }
            return connector_error(StatusCode::BAD_GATEWAY);
        }
    };
    let (rd, mut wr) = tcp.into_split();
    let ended = CancellationToken::new();
    let edge_done = ended.clone();
    let from_edge = req.into_body();
    tokio::spawn(async move {
        copy_body(from_edge, &mut wr).await;
        edge_done.cancel();
    });
    let to_edge = ReaderStream::with_capacity(rd, 16 * 1024)
        .take_until(ended.cancelled_owned())
        .map(|r| r.map(Frame::data).map_err(BoxError::from));
    Response::new(
        Tracked {
            body: StreamBody::new(to_edge).boxed_unsync(),
            _token: token,
        }
        .boxed_unsync(),
    )
}

/// A 200 (standing for 101) whose body relays what `rd` yields to the edge
/// while the request's task token is held.
fn relayed<R>(rd: R, headers: HeaderMap, token: TaskTrackerToken) -> Response<RespBody>
where
    R: tokio::io::AsyncRead + Send + 'static,
{
    let to_edge = ReaderStream::with_capacity(rd, 16 * 1024)
        .map(|r| r.map(Frame::data).map_err(BoxError::from));
    let mut out = Response::new(
        Tracked {
            body: StreamBody::new(to_edge).boxed_unsync(),
            _token: token,
        }
        .boxed_unsync(),
    );
    *out.status_mut() = StatusCode::OK;
    *out.headers_mut() = headers;
    out
}

fn resp_head_status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY)
}

fn empty_body_for_origin() -> crate::origin::OriginBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The request head for the shared HTTP path: `dest` is the full URL
/// (`:scheme`, `:authority`, `:path`), `host` the authority; headers keep
/// their values under Go's canonical names. A body without
/// `Content-Length` is announced as chunked, which is what makes the
/// shared path forward it (the QUIC body rule).
pub fn request_head<B>(req: &Request<B>, has_body: bool) -> HttpRequestHead {
    let uri = req.uri();
    let host = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let scheme = uri.scheme_str().unwrap_or("http");
    let dest = format!("{scheme}://{host}{path}");
    let mut headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter(|(n, _)| *n != header::HOST)
        .map(|(n, v)| {
            (
                canonical_header_key(n.as_str()),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if has_body && !req.headers().contains_key(header::CONTENT_LENGTH) {
        headers.push(("Transfer-Encoding".into(), "chunked".into()));
    }
    HttpRequestHead {
        dest,
        websocket: false,
        method: req.method().as_str().to_owned(),
        host,
        headers,
        extra: Vec::new(),
    }
}

/// Response headers for the edge: all origin headers serialised into
/// `cf-cloudflared-response-headers`, the `{"src":"origin"}` meta, and
/// `content-length` also as a real header.
pub fn response_headers(head: &HttpResponseHead) -> HeaderMap {
    let mut h = HeaderMap::new();
    let serialized = serialize_headers(
        head.headers
            .iter()
            .filter(|(n, _)| should_serialize_response_header(n))
            .map(|(n, v)| (n.as_bytes(), v.as_bytes())),
    );
    if let Ok(v) = HeaderValue::from_str(&serialized) {
        h.insert(HeaderName::from_static(RESPONSE_HEADERS), v);
    }
    if let Ok(v) = HeaderValue::from_str(&ResponseMeta::ORIGIN.to_json()) {
        h.insert(HeaderName::from_static(RESPONSE_META), v);
    }
    if let Some((_, len)) = head
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        && let Ok(v) = HeaderValue::from_str(len)
    {
        h.insert(header::CONTENT_LENGTH, v);
    }
    h
}

/// The connector's own error (cloudflared: 502 with `{"src":"cloudflared"}`).
fn connector_error(status: StatusCode) -> Response<RespBody> {
    let meta = ResponseMeta {
        src: ResponseSource::Cloudflared,
        flow_rate_limited: false,
    };
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&meta.to_json()) {
        resp.headers_mut()
            .insert(HeaderName::from_static(RESPONSE_META), v);
    }
    resp
}

fn empty() -> RespBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn full(b: Bytes) -> RespBody {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

/// A response body that counts as an in-flight request until it is done
/// (or dropped), so a graceful shutdown waits for it.
struct Tracked {
    body: RespBody,
    _token: TaskTrackerToken,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Writes the edge's request body into `to`, frame by frame (HTTP/2 flow
/// control paces it), until the body ends, fails, or `to` refuses a write.
async fn copy_body(mut from_edge: Incoming, to: &mut (impl tokio::io::AsyncWrite + Unpin)) {
    while let Some(Ok(frame)) = from_edge.frame().await {
        if let Ok(d) = frame.into_data()
            && tokio::io::AsyncWriteExt::write_all(to, &d).await.is_err()
        {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use culvert_proto::h2::deserialize_headers;

    #[test]
    fn tls_has_no_alpn() {
        let cfg = edge_h2_tls_config(None).unwrap();
        assert!(cfg.alpn_protocols.is_empty());
    }

    /// h2-03's request: `:authority app.test`, `:path /`, eyeball headers.
    #[test]
    fn request_heads() {
        let req = Request::builder()
            .uri("http://app.test/?q=1")
            .header("cf-ray", "0000000000000001-LAB")
            .header("user-agent", "golden-edge/1")
            .header("accept", "*/*")
            .body(())
            .unwrap();
        let h = request_head(&req, false);
        assert_eq!(h.dest, "http://app.test/?q=1");
        assert_eq!(h.host, "app.test");
        assert_eq!(h.method, "GET");
        assert!(!h.has_body());
        assert_eq!(
            h.headers,
            [
                ("Cf-Ray".to_owned(), "0000000000000001-LAB".to_owned()),
                ("User-Agent".into(), "golden-edge/1".into()),
                ("Accept".into(), "*/*".into()),
            ]
        );
        let req = Request::builder()
            .method("POST")
            .uri("/submit")
            .header("host", "app.test")
            .body(())
            .unwrap();
        let h = request_head(&req, true);
        assert_eq!(h.dest, "http://app.test/submit");
        assert!(h.has_body());
        let req = Request::builder()
            .method("POST")
            .uri("http://app.test/submit")
            .header("content-length", "16")
            .body(())
            .unwrap();
        let h = request_head(&req, true);
        assert!(h.has_body());
        assert!(!h.headers.iter().any(|(n, _)| n == "Transfer-Encoding"));
    }

    #[test]
    fn serialised_response_headers() {
        let head = HttpResponseHead {
            status: 200,
            headers: vec![
                ("Content-Type".into(), "text/html".into()),
                ("Content-Length".into(), "75".into()),
                ("Set-Cookie".into(), "a=1".into()),
                ("Set-Cookie".into(), "b=2".into()),
                ("Cf-Int-Secret".into(), "x".into()),
            ],
            extra: vec![],
        };
        let h = response_headers(&head);
        assert_eq!(h[RESPONSE_META], r#"{"src":"origin"}"#);
        assert_eq!(h[header::CONTENT_LENGTH], "75");
        let pairs = deserialize_headers(h[RESPONSE_HEADERS].to_str().unwrap()).unwrap();
        assert_eq!(pairs.len(), 4);
        assert_eq!(pairs[0], (b"Content-Type".to_vec(), b"text/html".to_vec()));
        assert!(!pairs.iter().any(|(n, _)| n == b"Cf-Int-Secret"));
        let e = connector_error(StatusCode::BAD_GATEWAY);
        assert_eq!(e.status(), 502);
        assert_eq!(e.headers()[RESPONSE_META], r#"{"src":"cloudflared"}"#);
    }
}
