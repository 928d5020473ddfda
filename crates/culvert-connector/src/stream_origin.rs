//! Websocket data streams (type `websocket`, edge-protocol.md §4.4) and
//! TCP services reached over WebSocket (api.md §12.2).
//!
//! - A rule with an HTTP origin (`http://`, `ws://`…): the handshake is
//!   sent to the origin with `Connection: Upgrade`, `Upgrade: websocket`,
//!   `Sec-WebSocket-Version: 13` (what cloudflared sets); its 101 goes back
//!   with `Upgrade`, `Connection` and `Sec-WebSocket-Accept`, and then raw
//!   bytes are spliced between the QUIC stream and the origin socket
//!   without looking at the frames.
//! - A rule with a stream service (`tcp://`, `ssh://`, `rdp://`, `smb://`):
//!   as cloudflared does, the connector dials the service first, answers
//!   101 with its own `Sec-WebSocket-Accept`, then acts as the WebSocket
//!   server: message payloads go to the TCP connection and TCP bytes come
//!   back as binary messages (what `cloudflared access tcp` and
//!   `culvert access tcp` speak on the other end).
//!
//! Either flow ends as soon as one side ends (cloudflared's pipe), and
//! each direction holds at most one bounded buffer.

use std::time::Duration;

use bytes::Bytes;
use culvert_ingress::{Rule, Service};
use culvert_proto::connect::ConnectRequest;
use culvert_proto::http_meta::{HttpRequestHead, HttpResponseHead};
use futures::{SinkExt as _, StreamExt as _};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::origin::{Origin, OriginBody};
use crate::proxy::{
    ProxyContext, StreamError, access_refusal, build_origin_request, canonical_header_key,
    dest_path, error_response,
};

/// Buffer per direction when splicing or bridging.
const CHUNK: usize = 32 * 1024;
/// Largest WebSocket message or frame accepted from a peer: cloudflared's
/// and our `access` client send one message per read (at most 32 KiB), so
/// this only guards memory against a hostile peer.
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// How long a finished stream waits for the edge to read the rest.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// The WebSocket limits used wherever culvert speaks WebSocket.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_MESSAGE * 2)
}

/// The 101 the connector answers for a stream service: cloudflared's
/// `websocket.NewResponseHeader` (`Connection`, `Sec-Websocket-Accept`,
/// `Upgrade`), the accept header only when the request had a key.
pub fn switching_head(key: Option<&str>) -> HttpResponseHead {
    let mut headers = vec![("Connection".to_owned(), "Upgrade".to_owned())];
    if let Some(k) = key.filter(|k| !k.is_empty()) {
        headers.push((
            "Sec-Websocket-Accept".to_owned(),
            derive_accept_key(k.as_bytes()),
        ));
    }
    headers.push(("Upgrade".to_owned(), "websocket".to_owned()));
    HttpResponseHead {
        status: 101,
        headers,
        extra: Vec::new(),
    }
}

/// The `ConnectResponse` head for an origin's 101: every header, including
/// the handshake's `Connection`/`Upgrade`, in Go's canonical form.
pub fn upgraded_head(status: u16, headers: &hyper::HeaderMap) -> HttpResponseHead {
    HttpResponseHead {
        status,
        headers: headers
            .iter()
            .filter(|(n, _)| !n.as_str().eq_ignore_ascii_case("transfer-encoding"))
            .map(|(n, v)| {
                (
                    canonical_header_key(n.as_str()),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        extra: Vec::new(),
    }
}

/// `host:port` of a stream service, `None` when it cannot be dialed.
pub fn stream_target(service: &Service) -> Option<(String, u16)> {
    match service {
        Service::Tcp { host, port, .. } if *port != 0 && !host.is_empty() => {
            Some((host.clone(), *port))
        }
        _ => None,
    }
}

async fn write_resp(
    send: &mut quinn::SendStream,
    head: &HttpResponseHead,
) -> Result<(), StreamError> {
    crate::management::layer::record_status(head.status);
    crate::stats::record_status(head.status);
    let resp = head
        .to_connect_response()
        .unwrap_or_else(|e| error_response(e.to_string()));
    send.write_all(&resp.encode()).await?;
    Ok(())
}

/// Ends a stream whose answer is complete: FIN, then a bounded wait for
/// the edge to take the rest.
async fn finish(mut send: quinn::SendStream) -> Result<(), StreamError> {
    // A splice may already have finished it.
    let _ = send.finish();
    let _ = tokio::time::timeout(FINISH_TIMEOUT, send.stopped()).await;
    Ok(())
}

/// Serves a `websocket` data stream whose `ConnectRequest` has been read;
/// `initial` holds bytes that arrived with it.
pub async fn serve_websocket(
    ctx: &ProxyContext,
    req: &ConnectRequest,
    initial: Bytes,
    recv: quinn::RecvStream,
    mut send: quinn::SendStream,
) -> Result<(), StreamError> {
    let head = match HttpRequestHead::from_connect_request(req) {
        Ok(h) => h,
        Err(e) => {
            send.write_all(&error_response(e.to_string()).encode())
                .await?;
            return finish(send).await;
        }
    };
    let snapshot = ctx.orchestrator.snapshot();
    let (path, _) = dest_path(&head.dest);
    let route = snapshot.route(&head.host, &path);
    tracing::debug!(host = %head.host, %path, rule = route.index, origin = ?route.origin, "websocket: matched ingress rule");
    if let Some(forbidden) = access_refusal(&route, &head).await {
        write_resp(&mut send, &forbidden).await?;
        return finish(send).await;
    }
    let (rule, origin) = (route.rule, route.origin);
    if let Some((host, port)) = stream_target(&rule.service) {
        return tcp_over_websocket(&head, rule, &host, port, initial, recv, send).await;
    }
    if let Some(target) = HttpTarget::of(&origin) {
        return websocket_to_http(ctx, &head, rule, target, initial, recv, send).await;
    }
    match origin {
        Origin::Status(code) => {
            let h = HttpResponseHead {
                status: code,
                headers: Vec::new(),
                extra: Vec::new(),
            };
            write_resp(&mut send, &h).await?;
            finish(send).await
        }
        other => {
            let msg = format!("service {other:?} cannot serve websocket requests");
            tracing::warn!(host = %head.host, "{msg}");
            send.write_all(&error_response(msg).encode()).await?;
            finish(send).await
        }
    }
}

async fn websocket_to_http(
    ctx: &ProxyContext,
    head: &HttpRequestHead,
    rule: &Rule,
    http: HttpTarget<'_>,
    initial: Bytes,
    recv: quinn::RecvStream,
    mut send: quinn::SendStream,
) -> Result<(), StreamError> {
    let empty = http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut origin_req = match build_origin_request(head, http.url(), rule, ctx.connector_id, empty)
    {
        Ok(r) => r,
        Err(e) => {
            send.write_all(&error_response(e).encode()).await?;
            return finish(send).await;
        }
    };
    let h = origin_req.headers_mut();
    h.remove(hyper::header::CONTENT_LENGTH);
    h.remove(hyper::header::TRANSFER_ENCODING);
    h.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        hyper::header::UPGRADE,
        hyper::header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        hyper::header::SEC_WEBSOCKET_VERSION,
        hyper::header::HeaderValue::from_static("13"),
    );
    let resp = match http.request(origin_req).await {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("unable to reach the origin service {}: {e}", http.name());
            tracing::warn!(host = %head.host, error = %msg, "websocket origin request failed");
            send.write_all(&error_response(msg).encode()).await?;
            return finish(send).await;
        }
    };
    let status = resp.status().as_u16();
    if status != 101 {
        // The origin refused the upgrade: relay its answer as a response.
        let (parts, mut body) = resp.into_parts();
        write_resp(
            &mut send,
            &crate::proxy::response_head(status, &parts.headers),
        )
        .await?;
        drop(recv);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(StreamError::OriginBody)?;
            if let Ok(data) = frame.into_data() {
                send.write_all(&data).await?;
            }
        }
        return finish(send).await;
    }
    write_resp(&mut send, &upgraded_head(status, resp.headers())).await?;
    let upgraded = match hyper::upgrade::on(resp).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(host = %head.host, error = %e, "origin upgrade failed");
            let _ = send.reset(quinn::VarInt::from_u32(0));
            return Ok(());
        }
    };
    let mut origin_io = TokioIo::new(upgraded);
    if !initial.is_empty() {
        origin_io.write_all(&initial).await.map_err(io_err)?;
    }
    let mut tunnel = tokio::io::join(recv, send);
    let r =
        tokio::io::copy_bidirectional_with_sizes(&mut origin_io, &mut tunnel, CHUNK, CHUNK).await;
    let (_, mut send) = tunnel.into_inner();
    match r {
        Ok(_) => finish(send).await,
        Err(e) => {
            tracing::debug!(host = %head.host, error = %e, "websocket relay ended with an error");
            let _ = send.reset(quinn::VarInt::from_u32(0));
            Ok(())
        }
    }
}

/// An origin that speaks HTTP: a pooled TCP/TLS client, or a unix socket.
#[derive(Clone, Copy)]
pub enum HttpTarget<'a> {
    Pool(&'a crate::origin::HttpOrigin),
    Unix(&'a UnixOrigin),
}

impl HttpTarget<'_> {
    /// The HTTP-speaking origin of `origin`, if it is one.
    pub fn of(origin: &Origin) -> Option<HttpTarget<'_>> {
        match origin {
            Origin::Http(h) => Some(HttpTarget::Pool(h)),
            Origin::Unix(u) => Some(HttpTarget::Unix(u)),
            _ => None,
        }
    }

    pub fn url(&self) -> &url::Url {
        match self {
            HttpTarget::Pool(h) => &h.url,
            HttpTarget::Unix(u) => &u.url,
        }
    }

    pub fn name(&self) -> String {
        match self {
            HttpTarget::Pool(h) => h.url.to_string(),
            HttpTarget::Unix(u) => u.service_name(),
        }
    }

    /// Sends `req` as is, without [`crate::origin::HttpOrigin::send`]'s
    /// body framing (the rule's Access check has run before dispatch).
    pub async fn request(
        &self,
        req: hyper::Request<OriginBody>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        match self {
            HttpTarget::Pool(h) => h.client.request(req).await.map_err(|e| e.to_string()),
            HttpTarget::Unix(u) => u.request(req).await,
        }
    }
}

/// A `unix:` / `unix+tls:` origin: HTTP/1.1 (over TLS for `unix+tls:`) on
/// a unix socket. As in cloudflared, the request URL's host is `localhost`
/// and the Host header stays the eyeball's (or `httpHostHeader`). One
/// connection per request: local sockets are cheap to open.
pub struct UnixOrigin {
    path: std::path::PathBuf,
    url: url::Url,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    connect_timeout: Duration,
}

impl UnixOrigin {
    pub fn new(
        path: &str,
        tls: bool,
        o: &culvert_ingress::OriginRequest,
    ) -> Result<Self, crate::error::ConnectorError> {
        let url = url::Url::parse(if tls {
            "https://localhost/"
        } else {
            "http://localhost/"
        })
        .map_err(|e| crate::error::ConnectorError::Config(e.to_string()))?;
        let tls = if tls {
            let mut cfg = crate::tls::origin_tls_config(&crate::origin::origin_trust(o))?;
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = match o.origin_server_name() {
                "" => "localhost",
                n => n,
            };
            let name = rustls::pki_types::ServerName::try_from(name.to_owned()).map_err(|e| {
                crate::error::ConnectorError::Config(format!(
                    "originRequest.originServerName {name:?}: {e}"
                ))
            })?;
            Some((
                tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)),
                name,
            ))
        } else {
            None
        };
        Ok(UnixOrigin {
            path: path.into(),
            url,
            tls,
            connect_timeout: o.connect_timeout(),
        })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// `http://localhost/` (`https://` for `unix+tls:`): what requests to
    /// the socket are built against.
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// `unix:PATH` or `unix+tls:PATH`, for messages.
    pub fn service_name(&self) -> String {
        let scheme = if self.tls.is_some() {
            "unix+tls"
        } else {
            "unix"
        };
        format!("{scheme}:{}", self.path.display())
    }

    /// Sends one request on a new connection (kept for an upgrade).
    pub async fn request(
        &self,
        mut req: hyper::Request<OriginBody>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let sock = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::UnixStream::connect(&self.path),
        )
        .await
        .map_err(|_| format!("dial unix {}: i/o timeout", self.path.display()))?
        .map_err(|e| format!("dial unix {}: {e}", self.path.display()))?;
        let io: Box<dyn crate::access_tcp::Io> = match &self.tls {
            Some((connector, name)) => Box::new(
                connector
                    .connect(name.clone(), sock)
                    .await
                    .map_err(|e| format!("TLS handshake on {}: {e}", self.path.display()))?,
            ),
            None => Box::new(sock),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "unix origin connection ended with an error");
            }
        });
        // The connection-level client sends the URI as given: origin form.
        let pq = req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        *req.uri_mut() = pq.parse().map_err(|e| format!("request path: {e}"))?;
        sender.send_request(req).await.map_err(|e| e.to_string())
    }
}

fn io_err(e: std::io::Error) -> StreamError {
    StreamError::Io(e)
}

async fn tcp_over_websocket(
    head: &HttpRequestHead,
    rule: &Rule,
    host: &str,
    port: u16,
    initial: Bytes,
    recv: quinn::RecvStream,
    mut send: quinn::SendStream,
) -> Result<(), StreamError> {
    let timeout = rule.origin_request.connect_timeout();
    let dialed = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await;
    let tcp = match dialed {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            let msg = format!("dial tcp {host}:{port}: {e}");
            tracing::warn!(service = %rule.service, error = %msg, "TCP service unreachable");
            send.write_all(&error_response(msg).encode()).await?;
            return finish(send).await;
        }
        Err(_) => {
            let msg = format!("dial tcp {host}:{port}: i/o timeout after {timeout:?}");
            tracing::warn!(service = %rule.service, error = %msg, "TCP service unreachable");
            send.write_all(&error_response(msg).encode()).await?;
            return finish(send).await;
        }
    };
    let _ = tcp.set_nodelay(true);
    write_resp(
        &mut send,
        &switching_head(head.header("sec-websocket-key").next()),
    )
    .await?;
    let ws = WebSocketStream::from_partially_read(
        tokio::io::join(recv, send),
        initial.to_vec(),
        Role::Server,
        Some(ws_config()),
    )
    .await;
    if let Err(e) = bridge(ws, tcp).await {
        tracing::debug!(service = %rule.service, error = %e, "TCP service stream ended with an error");
    }
    Ok(())
}

/// Why a WebSocket ↔ byte-stream bridge stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
}

/// Carries WebSocket message payloads to `io` and `io`'s bytes back as
/// binary messages, one message per read. Returns when either side ends
/// (a Close frame, EOF or an error), as cloudflared's pipe does.
pub async fn bridge<S, T>(ws: WebSocketStream<S>, io: T) -> Result<(), BridgeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(io);
    let outbound = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                let _ = ws_tx.send(Message::Close(None)).await;
                return Ok::<(), BridgeError>(());
            }
            ws_tx
                .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                .await?;
        }
    };
    let inbound = async {
        while let Some(msg) = ws_rx.next().await {
            match msg? {
                Message::Binary(b) => wr.write_all(&b).await?,
                Message::Text(t) => wr.write_all(t.as_bytes()).await?,
                Message::Close(_) => break,
                // Pongs are queued by tungstenite and sent with the next write.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
            wr.flush().await?;
        }
        let _ = wr.shutdown().await;
        Ok::<(), BridgeError>(())
    };
    tokio::select! {
        r = outbound => r,
        r = inbound => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switching_head_like_cloudflared() {
        // RFC 6455 §1.3's example key.
        let h = switching_head(Some("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(h.status, 101);
        assert_eq!(
            h.headers,
            vec![
                ("Connection".to_owned(), "Upgrade".to_owned()),
                (
                    "Sec-Websocket-Accept".to_owned(),
                    "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_owned()
                ),
                ("Upgrade".to_owned(), "websocket".to_owned()),
            ]
        );
        assert_eq!(switching_head(None).headers.len(), 2);
    }

    #[test]
    fn stream_targets() {
        let ingress = culvert_ingress::parse_remote_config(&serde_json::json!({
            "ingress": [
                {"hostname": "a.test", "service": "ssh://127.0.0.1"},
                {"hostname": "b.test", "service": "tcp://[::1]:5432"},
                {"hostname": "c.test", "service": "http://127.0.0.1:1"},
                {"service": "http_status:404"}
            ]
        }))
        .unwrap();
        let t: Vec<_> = ingress
            .rules
            .iter()
            .map(|r| stream_target(&r.service))
            .collect();
        assert_eq!(t[0], Some(("127.0.0.1".into(), 22)));
        assert_eq!(t[1], Some(("::1".into(), 5432)));
        assert_eq!(t[2], None);
        assert_eq!(t[3], None);
    }

    /// The bridge over in-memory pipes: messages both ways, ping ignored,
    /// and a Close from the peer ends it.
    #[tokio::test]
    async fn bridge_carries_payloads() {
        let (ws_server_io, ws_client_io) = tokio::io::duplex(64 * 1024);
        let (service_side, mut service) = tokio::io::duplex(64 * 1024);
        let server =
            WebSocketStream::from_raw_socket(ws_server_io, Role::Server, Some(ws_config())).await;
        let task = tokio::spawn(bridge(server, service_side));
        let mut client =
            WebSocketStream::from_raw_socket(ws_client_io, Role::Client, Some(ws_config())).await;
        client
            .send(Message::Binary(Bytes::from_static(b"hello")))
            .await
            .unwrap();
        client.send(Message::Ping(Bytes::new())).await.unwrap();
        let mut buf = [0u8; 5];
        service.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        service.write_all(b"world").await.unwrap();
        loop {
            match client.next().await.unwrap().unwrap() {
                Message::Binary(b) => {
                    assert_eq!(&b[..], b"world");
                    break;
                }
                Message::Pong(_) => continue,
                m => panic!("unexpected {m:?}"),
            }
        }
        client.send(Message::Close(None)).await.unwrap();
        task.await.unwrap().unwrap();
    }

    /// A message above the limit is refused instead of being buffered.
    #[tokio::test]
    async fn oversized_message_fails() {
        let (a, b) = tokio::io::duplex(4 * MAX_MESSAGE);
        let (service_side, _service) = tokio::io::duplex(1024);
        let server = WebSocketStream::from_raw_socket(a, Role::Server, Some(ws_config())).await;
        let task = tokio::spawn(bridge(server, service_side));
        let mut client = WebSocketStream::from_raw_socket(
            b,
            Role::Client,
            Some(
                WebSocketConfig::default()
                    .max_frame_size(None)
                    .max_message_size(None),
            ),
        )
        .await;
        let _ = client
            .send(Message::Binary(Bytes::from(vec![0u8; MAX_MESSAGE + 1])))
            .await;
        assert!(task.await.unwrap().is_err());
    }
}
