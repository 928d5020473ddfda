//! WebSockets end to end: a real WebSocket client on the public listener,
//! the edge, our connector over QUIC, and a real WebSocket origin.

mod common;
#[path = "common/origin.rs"]
mod origin;
#[path = "common/tunnel.rs"]
mod tunnel;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, TestServer};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// What the origin saw in the handshake.
#[derive(Default, Debug, Clone)]
struct Seen {
    host: String,
    path: String,
    protocol: String,
    cf_ray: String,
}

/// A WebSocket echo origin that records each handshake and answers the
/// `chat` subprotocol.
#[allow(clippy::result_large_err)] // tungstenite's callback signature
async fn ws_origin() -> (std::net::SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let cb = |req: &Request, mut resp: Response| {
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    log.lock().unwrap().push(Seen {
                        host: h("host"),
                        path: req.uri().to_string(),
                        protocol: h("sec-websocket-protocol"),
                        cf_ray: h("cf-ray"),
                    });
                    if h("sec-websocket-protocol").contains("chat") {
                        resp.headers_mut()
                            .insert("sec-websocket-protocol", "chat".parse().unwrap());
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
                    if msg.is_close() || (echo && ws.send(msg).await.is_err()) {
                        break;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_echo_through_the_tunnel_outlives_the_response_timeout() {
    // A short origin response timeout: it bounds the wait for the 101 only,
    // never an established WebSocket.
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.origin_response_timeout = Some(Duration::from_millis(500));
    })
    .await;
    let (ws_addr, seen) = ws_origin().await;
    let plain = origin::start().await;
    let connector = tunnel::serve_ingress(
        &s,
        "ws",
        json!([
            {"hostname": "ws.example.com", "service": format!("ws://{ws_addr}")},
            {"hostname": "plain.example.com", "service": format!("http://{}", plain.addr)},
            {"service": "http_status:404"}
        ]),
        "plain.example.com",
    )
    .await;
    let http = s.server.as_ref().unwrap().http_addr;

    let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
    let mut req = "ws://ws.example.com/chat?room=1"
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "chat".parse().unwrap());
    // tungstenite checks Sec-WebSocket-Accept against its key: the answer
    // crossed the tunnel intact.
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");

    // Frames flow for longer than the response timeout, with idle gaps
    // longer than it too.
    for i in 0..4u8 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("hello {i}"))
        );
        let big = vec![i; 200 * 1024];
        ws.send(Message::binary(big.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    ws.close(None).await.unwrap();

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].host, "ws.example.com");
    assert_eq!(seen[0].path, "/chat?room=1");
    assert_eq!(seen[0].protocol, "chat");
    assert!(seen[0].cf_ray.ends_with("-LOCAL"), "{seen:?}");

    connector.stop().await;
    s.stop().await;
}

/// Raw HTTP/1.1 exchange on the public listener: returns the head.
async fn raw_request(addr: std::net::SocketAddr, req: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_and_failed_upgrades() {
    let s = TestServer::start(Backend::Sqlite).await;
    let plain = origin::start().await;
    // A port with nothing listening.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let connector = tunnel::serve_ingress(
        &s,
        "ws-refused",
        json!([
            {"hostname": "plain.example.com", "service": format!("http://{}", plain.addr)},
            {"hostname": "dead.example.com", "service": format!("ws://{dead_addr}")},
            {"hostname": "gone.example.com", "service": "http_status:410"},
            {"service": "http_status:404"}
        ]),
        "plain.example.com",
    )
    .await;
    let http = s.server.as_ref().unwrap().http_addr;
    let upgrade = |host: &str, path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    // An origin that ignores the upgrade: its answer is relayed as is.
    let head = raw_request(http, &upgrade("plain.example.com", "/hello")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-origin: yes"),
        "{head}"
    );
    // An unreachable origin: the connector's error becomes a 502.
    let head = raw_request(http, &upgrade("dead.example.com", "/")).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    // A fixed-status rule.
    let head = raw_request(http, &upgrade("gone.example.com", "/")).await;
    assert!(head.starts_with("HTTP/1.1 410"), "{head}");

    connector.stop().await;
    s.stop().await;
}
