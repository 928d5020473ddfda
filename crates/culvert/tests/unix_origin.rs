//! `unix:` origins: HTTP over a unix socket behind the tunnel, with the
//! request body streamed through and a WebSocket upgrade on the same rule,
//! with the connector on QUIC and on HTTP/2.

mod common;
#[path = "common/tunnel.rs"]
mod tunnel;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::{Backend, TestServer};
use culvert_connector::connector::TransportProtocol;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// HTTP/1.1 on a unix socket: `/ws` upgrades to a WebSocket echo; any other
/// request answers with its method, Host and body.
async fn unix_origin(path: &std::path::Path) {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        if req.uri().path() == "/ws" {
                            let key = req.headers()["sec-websocket-key"].as_bytes().to_vec();
                            tokio::spawn(async move {
                                let upgraded = hyper::upgrade::on(req).await.unwrap();
                                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                                    TokioIo::new(upgraded),
                                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                                    None,
                                )
                                .await;
                                while let Some(Ok(m)) = ws.next().await {
                                    if m.is_close() || ws.send(m).await.is_err() {
                                        break;
                                    }
                                }
                            });
                            let accept =
                                tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
                            return Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(101)
                                    .header("connection", "Upgrade")
                                    .header("upgrade", "websocket")
                                    .header("sec-websocket-accept", accept)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            );
                        }
                        let host = req
                            .headers()
                            .get("host")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        let method = req.method().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let text = format!("{method} {host} {}", String::from_utf8_lossy(&body));
                        Ok(hyper::Response::new(Full::new(Bytes::from(text))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unix_socket_origin_serves_http_and_websockets() {
    serves_http_and_websockets(TransportProtocol::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unix_socket_origin_serves_http_and_websockets_over_http2() {
    serves_http_and_websockets(TransportProtocol::Http2).await;
}

async fn serves_http_and_websockets(protocol: TransportProtocol) {
    let s = TestServer::start(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("origin.sock");
    unix_origin(&sock).await;
    let connector = tunnel::serve_ingress_over(
        &s,
        "unix",
        json!([
            {"hostname": "unix.example.com", "service": format!("unix:{}", sock.display())},
            {"hostname": "gone.example.com", "service": format!("unix:{}", dir.path().join("missing.sock").display())},
            {"service": "http_status:404"}
        ]),
        "unix.example.com",
        protocol,
    )
    .await;
    let http = s.server.as_ref().unwrap().http_addr;

    let resp = s
        .client
        .post(format!("http://{http}/submit"))
        .header("host", "unix.example.com")
        .body("over a unix socket")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.unwrap(),
        "POST unix.example.com over a unix socket"
    );

    let resp = s
        .client
        .get(format!("http://{http}/"))
        .header("host", "gone.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);

    let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://unix.example.com/ws", tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("ping over unix")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("ping over unix"));
    ws.close(None).await.unwrap();

    connector.stop().await;
    s.stop().await;
}
