//! WebSocket upgrades on the public listener (edge-protocol.md §4.4).
//!
//! An eyeball `GET` with `Connection: Upgrade` and `Upgrade: websocket` is
//! forwarded as a `ConnectRequest` of type `websocket` carrying the
//! handshake headers (`Sec-WebSocket-Key`, `-Version`, `-Protocol`,
//! `-Extensions`, `Origin`…). The connector answers `HttpStatus=101` with
//! `Upgrade`, `Connection` and `Sec-WebSocket-Accept`; the edge relays that
//! 101 and from then on splices raw bytes between the eyeball's socket and
//! the QUIC stream in both directions, never looking at the frames. Any
//! other answer (an origin that refuses the upgrade) is relayed as an
//! ordinary response.
//!
//! No idle timer runs on an upgraded connection: the response timeout
//! bounds only the wait for the 101, and QUIC keep-alives hold the
//! connection to the connector open.

use std::sync::Arc;

use bytes::Bytes;
use culvert_proto::ConnectResponse;
use culvert_proto::connect::{ConnectionType, Metadata};
use culvert_proto::http_meta::{HTTP_HEADER_PREFIX, HttpResponseHead};
use futures::StreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use quinn::VarInt;
use tokio::io::AsyncWriteExt;

use crate::Shared;
use crate::error::ProxyError;
use crate::registry::LiveConn;
use crate::request::{BuiltRequest, ResponseError, response_head};
use crate::transport::{open_quic_stream, quic_candidates};

/// Buffer per direction while splicing (bounds memory per connection).
const SPLICE_BUF: usize = 64 * 1024;
/// Read size for a refused upgrade's response body.
const BODY_CHUNK: usize = 64 * 1024;

type ProxyBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// The eyeball connection's slot under `max_http_connections`, carried in
/// the request's extensions so that an upgraded connection keeps counting
/// after the HTTP server task hands it over.
#[derive(Clone)]
pub(crate) struct ConnectionSlot(
    #[expect(dead_code, reason = "held only to release the slot on drop")]
    pub  Arc<tokio::sync::OwnedSemaphorePermit>,
);

/// Whether `Connection` lists `token` (comma-separated, case-insensitive).
fn lists(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

/// An eyeball request asking for a WebSocket (RFC 6455 §4.1): `GET` with
/// `Connection: Upgrade` and `Upgrade: websocket`.
pub fn is_websocket_upgrade(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::GET
        && lists(headers, header::CONNECTION, "upgrade")
        && lists(headers, header::UPGRADE, "websocket")
}

/// Turns the `ConnectRequest` built for an HTTP request into the websocket
/// one: type `websocket`, and the `Connection: Upgrade` / `Upgrade:
/// websocket` pair (hop-by-hop, so [`build_connect_request`] dropped the
/// eyeball's own copies) right after `Cf-Ray`.
pub fn into_websocket(mut req: culvert_proto::ConnectRequest) -> culvert_proto::ConnectRequest {
    req.connection_type = ConnectionType::Websocket;
    let at = req
        .metadata
        .iter()
        .position(|m| m.key.starts_with(HTTP_HEADER_PREFIX))
        .map_or(req.metadata.len(), |i| i + 1);
    req.metadata.splice(
        at..at,
        [
            Metadata::new(format!("{HTTP_HEADER_PREFIX}Connection"), "Upgrade"),
            Metadata::new(format!("{HTTP_HEADER_PREFIX}Upgrade"), "websocket"),
        ],
    );
    req
}

/// The connector's answer to a websocket request.
#[derive(Debug)]
pub enum UpgradeAnswer {
    /// 101: relay these headers and splice.
    Switching(HeaderMap),
    /// Anything else: an ordinary response.
    Refused(crate::request::ResponseHead),
}

/// Reads a connector's answer to a websocket request. A 101 keeps its
/// `Upgrade`/`Connection` headers (they are the handshake); framing headers
/// are dropped since no HTTP body follows.
pub fn upgrade_answer(resp: &ConnectResponse) -> Result<UpgradeAnswer, ResponseError> {
    if resp.is_error() {
        return Err(ResponseError::Connector(resp.error.clone()));
    }
    let head = HttpResponseHead::from_connect_response(resp)?;
    if head.status != 101 {
        return response_head(resp).map(UpgradeAnswer::Refused);
    }
    let mut headers = HeaderMap::with_capacity(head.headers.len());
    for (name, value) in &head.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            continue;
        };
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || name == header::UPGRADE
        {
            continue;
        }
        headers.append(name, value);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    Ok(UpgradeAnswer::Switching(headers))
}

/// Forwards a websocket handshake through `tunnel` and, on 101, splices the
/// upgraded eyeball connection with the QUIC stream in a background task.
pub(crate) async fn proxy_websocket(
    shared: &Arc<Shared>,
    candidates: &[Arc<LiveConn>],
    mut req: Request<Incoming>,
    built: BuiltRequest,
) -> Result<Response<ProxyBody>, ProxyError> {
    let head = into_websocket(built.request).encode();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let slot = req.extensions_mut().remove::<ConnectionSlot>();
    // The handshake request has no body; the upgraded bytes come later.
    drop(req);

    let mut last_err = String::from("no connection tried");
    let mut opened = None;
    for (c, quic) in quic_candidates(candidates) {
        match open_quic_stream(c, quic, shared.tuning.open_stream_timeout).await {
            Ok(s) => {
                opened = Some(s);
                break;
            }
            Err(e) => last_err = e,
        }
    }
    let Some((mut send, mut recv)) = opened else {
        return Err(ProxyError::OpenStream(last_err));
    };
    send.write_all(&head)
        .await
        .map_err(|e| ProxyError::Send(e.to_string()))?;

    let read = crate::proxy::read_response_head(&mut recv);
    let (resp, rest) = match shared.tuning.response_timeout {
        Some(t) => match tokio::time::timeout(t, read).await {
            Ok(r) => r,
            Err(_) => {
                let _ = send.reset(VarInt::from_u32(0));
                let _ = recv.stop(VarInt::from_u32(0));
                return Err(ProxyError::Timeout(t));
            }
        },
        None => read.await,
    }
    .inspect_err(|_| {
        let _ = send.reset(VarInt::from_u32(0));
    })?;
    let answer = upgrade_answer(&resp).map_err(|e| {
        let _ = send.reset(VarInt::from_u32(0));
        match e {
            ResponseError::Connector(m) => ProxyError::Connector(m),
            e => ProxyError::BadResponse(e.to_string()),
        }
    })?;

    match answer {
        UpgradeAnswer::Switching(headers) => {
            tokio::spawn(async move {
                let _slot = slot;
                let upgraded = match on_upgrade.await {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::debug!(error = %e, "eyeball upgrade failed");
                        let _ = send.reset(VarInt::from_u32(0));
                        return;
                    }
                };
                if let Err(e) = splice(TokioIo::new(upgraded), rest, send, recv).await {
                    tracing::debug!(error = %e, "websocket relay ended with an error");
                }
            });
            let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            *response.headers_mut() = headers;
            Ok(response)
        }
        UpgradeAnswer::Refused(head) => {
            let _ = send.finish();
            let first = futures::stream::iter((!rest.is_empty()).then_some(Ok(rest)));
            let chunks = first
                .chain(tokio_util::io::ReaderStream::with_capacity(
                    recv, BODY_CHUNK,
                ))
                .map(|r| r.map(Frame::data));
            let mut response = Response::new(BodyExt::boxed(StreamBody::new(chunks)));
            *response.status_mut() = head.status;
            *response.headers_mut() = head.headers;
            Ok(response)
        }
    }
}

/// Copies bytes both ways until both directions are done (each EOF is
/// passed on as a FIN / TCP shutdown), one bounded buffer per direction.
async fn splice<E>(
    mut eyeball: E,
    rest: Bytes,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> std::io::Result<()>
where
    E: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if !rest.is_empty() {
        eyeball.write_all(&rest).await?;
    }
    let mut tunnel = tokio::io::join(recv, send);
    tokio::io::copy_bidirectional_with_sizes(&mut eyeball, &mut tunnel, SPLICE_BUF, SPLICE_BUF)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{EyeballHead, build_connect_request};
    use culvert_proto::http_meta::HttpRequestHead;
    use proptest::prelude::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn detects_upgrades() {
        let h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        assert!(is_websocket_upgrade(&Method::GET, &h));
        assert!(!is_websocket_upgrade(&Method::POST, &h));
        let h = headers(&[("upgrade", "websocket")]);
        assert!(!is_websocket_upgrade(&Method::GET, &h));
        let h = headers(&[("connection", "upgrade"), ("upgrade", "h2c")]);
        assert!(!is_websocket_upgrade(&Method::GET, &h));
    }

    #[test]
    fn websocket_connect_request_carries_the_handshake() {
        let uri: http::Uri = "/chat?room=1".parse().unwrap();
        let h = headers(&[
            ("host", "ws.example.com"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
            ("sec-websocket-protocol", "chat"),
            (
                "cf-cloudflared-proxy-connection-upgrade",
                "update-configuration",
            ),
        ]);
        let built = build_connect_request(&EyeballHead {
            method: &Method::GET,
            uri: &uri,
            headers: &h,
            host: "ws.example.com",
            peer_ip: "192.0.2.1".parse().unwrap(),
            ray: "0000000000000001-LAB",
            scheme: "http",
        })
        .unwrap();
        assert!(!built.has_body);
        let req = into_websocket(built.request);
        assert_eq!(req.connection_type, ConnectionType::Websocket);
        assert_eq!(req.dest, "http://ws.example.com/chat?room=1");
        let head = HttpRequestHead::from_connect_request(&req).unwrap();
        let names: Vec<_> = head.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names[..5],
            [
                "Cf-Ray",
                "Connection",
                "Upgrade",
                "Sec-Websocket-Key",
                "Sec-Websocket-Version"
            ]
        );
        assert_eq!(
            head.header("sec-websocket-key").next(),
            Some("dGhlIHNhbXBsZSBub25jZQ==")
        );
        assert_eq!(head.header("sec-websocket-protocol").next(), Some("chat"));
        assert_eq!(
            head.header("cf-cloudflared-proxy-connection-upgrade")
                .count(),
            0
        );
    }

    #[test]
    fn answers() {
        let switching = HttpResponseHead {
            status: 101,
            headers: vec![
                ("Connection".into(), "Upgrade".into()),
                (
                    "Sec-Websocket-Accept".into(),
                    "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(),
                ),
                ("Upgrade".into(), "websocket".into()),
                ("Content-Length".into(), "0".into()),
            ],
            extra: vec![],
        }
        .to_connect_response()
        .unwrap();
        match upgrade_answer(&switching).unwrap() {
            UpgradeAnswer::Switching(h) => {
                assert_eq!(h["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
                assert_eq!(h["upgrade"], "websocket");
                assert_eq!(h["connection"], "Upgrade");
                assert!(h.get("content-length").is_none());
            }
            other => panic!("{other:?}"),
        }
        let refused = HttpResponseHead {
            status: 403,
            headers: vec![("Content-Length".into(), "2".into())],
            extra: vec![],
        }
        .to_connect_response()
        .unwrap();
        assert!(matches!(
            upgrade_answer(&refused).unwrap(),
            UpgradeAnswer::Refused(h) if h.status == StatusCode::FORBIDDEN
        ));
        let err = ConnectResponse {
            error: "dial tcp: refused".into(),
            metadata: vec![],
        };
        assert!(matches!(
            upgrade_answer(&err),
            Err(ResponseError::Connector(_))
        ));
    }

    proptest! {
        #[test]
        fn answer_is_total(status in 0u16..1000, pairs in proptest::collection::vec(("[A-Za-z-]{1,12}", "[ -~]{0,20}"), 0..6)) {
            let resp = HttpResponseHead { status, headers: pairs, extra: vec![] }.to_connect_response().unwrap();
            let _ = upgrade_answer(&resp);
        }

        #[test]
        fn detection_is_total(c in "[ -~]{0,40}", u in "[ -~]{0,40}") {
            let mut h = HeaderMap::new();
            if let (Ok(c), Ok(u)) = (HeaderValue::from_str(&c), HeaderValue::from_str(&u)) {
                h.insert(header::CONNECTION, c);
                h.insert(header::UPGRADE, u);
            }
            let _ = is_websocket_upgrade(&Method::GET, &h);
        }
    }
}
