//! The HTTP/2 transport end to end (edge-protocol.md §5): the real server
//! (API + edge listening on UDP and TCP with one port number + public
//! listener), our connector over TLS/TCP as the HTTP/2 server, and a real
//! origin, all on 127.0.0.1 port 0.

mod common;
#[path = "common/origin.rs"]
mod origin;
#[path = "common/tunnel.rs"]
mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Backend, TestServer, eventually, public, public_with};
use culvert_connector::connector::TransportProtocol;
use futures::StreamExt as _;
use reqwest::Method;
use tunnel::{
    ConnectorOptions, connections, host_ingress, put_ingress, start_connector, tunnel_for,
    wait_one_connector,
};

/// A connector dialling `edge`, with a grace period long enough for the
/// in-flight download of the shutdown test.
fn options(edge: SocketAddr, ha: u8, protocol: TransportProtocol) -> ConnectorOptions {
    ConnectorOptions {
        edge: Some(edge),
        ha,
        protocol,
        grace_period: Duration::from_secs(5),
        ..ConnectorOptions::default()
    }
}

fn pattern(n: u64) -> Vec<u8> {
    (0..n).map(origin::pattern_byte).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_registration_requests_config_push_and_shutdown() {
    let s = TestServer::start(Backend::Sqlite).await;
    let origin = origin::start().await;
    let svc = format!("http://{}", origin.addr);
    let (id, token) = tunnel_for(&s, "h2", "app.example.com", &svc).await;
    let edge = s.server.as_ref().unwrap().edge_addr;
    let c = start_connector(&s, &token, options(edge, 2, TransportProtocol::Http2));
    c.wait_ready(2).await;

    // Registered like QUIC: one connector, 2 connections, the pushed
    // configuration (update-configuration over HTTP/2) applied.
    let cs = wait_one_connector(&s, &id, 2, 1).await;
    assert_eq!(cs[0]["id"], c.state.connector_id().to_string());
    assert_eq!(cs[0]["conns"][0]["origin_ip"], "127.0.0.1");

    // GET: status, origin headers rebuilt from the serialised header, body.
    let resp = public(&s, "app.example.com", "/hello?x=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-origin"], "yes");
    assert_eq!(resp.headers()["x-seen-host"], "app.example.com");
    assert_eq!(resp.headers()["x-seen-path"], "/hello?x=1");
    assert_eq!(resp.headers()["x-seen-connecting-ip"], "127.0.0.1");
    assert_eq!(resp.headers()["x-seen-forwarded-proto"], "http");
    assert!(!resp.headers()["x-seen-cf-ray"].is_empty());
    assert!(
        resp.headers()
            .get("cf-cloudflared-response-headers")
            .is_none()
    );
    assert!(resp.headers().get("cf-cloudflared-response-meta").is_none());
    assert_eq!(resp.text().await.unwrap(), "hello from origin");

    // A 12 MiB upload streams to the origin (it counts, never buffers)...
    const BIG: u64 = 12 * 1024 * 1024;
    let chunks = futures::stream::iter((0..BIG / 65536).map(|i| {
        Ok::<_, std::io::Error>(bytes::Bytes::from(
            (i * 65536..(i + 1) * 65536)
                .map(origin::pattern_byte)
                .collect::<Vec<u8>>(),
        ))
    }));
    let resp = public_with(&s, Method::POST, "app.example.com", "/count")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sum = pattern(BIG)
        .iter()
        .fold(0u64, |s, b| s.wrapping_add(u64::from(*b)));
    assert_eq!(resp.text().await.unwrap(), format!("{BIG} {sum}"));

    // ...a 12 MiB download streams back...
    let resp = public(&s, "app.example.com", &format!("/bytes/{BIG}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], BIG.to_string());
    let mut got = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        for (i, b) in chunk.iter().enumerate() {
            assert_eq!(*b, origin::pattern_byte(got + i as u64));
        }
        got += chunk.len() as u64;
    }
    assert_eq!(got, BIG);

    // ...and an echo carries a body both ways at once.
    let body = pattern(300_000);
    let resp = public_with(&s, Method::POST, "app.example.com", "/echo")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-seen-method"], "POST");
    assert_eq!(resp.bytes().await.unwrap().to_vec(), body);

    // The catch-all answers on the tunnel's own domain; HEAD has no body.
    let direct = format!("{id}.cfargotunnel.localhost");
    let resp = public(&s, &direct, "/hello").send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let resp = public_with(&s, Method::HEAD, "app.example.com", "/hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A configuration change is pushed over HTTP/2 and takes effect.
    put_ingress(&s, &id, host_ingress("other.example.com", &svc)).await;
    eventually("config version 2 applied", || async {
        connections(&s, &id).await[0]["config_version"] == 2
    })
    .await;
    eventually("the new hostname routes", || async {
        public(&s, "other.example.com", "/hello")
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

    // Graceful shutdown: a download in flight finishes, then the
    // connections are gone from the registry.
    const SLOW: u64 = 8 * 1024 * 1024;
    let resp = public(&s, "other.example.com", &format!("/bytes/{SLOW}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    let stopping = tokio::spawn(c.stop_cleanly());
    let mut got = first.len() as u64;
    while let Some(chunk) = stream.next().await {
        got += chunk
            .expect("in-flight body completes during the grace period")
            .len() as u64;
    }
    assert_eq!(got, SLOW);
    stopping.await.unwrap();
    eventually("connections gone after shutdown", || async {
        connections(&s, &id).await.is_empty()
    })
    .await;
    s.stop().await;
}

/// A TCP-only relay to the edge's listener: its port has nothing on UDP, as
/// when a network drops QUIC. Counts the connections it relayed.
async fn tcp_relay(to: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, count, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_falls_back_to_http2_when_quic_cannot_connect() {
    let s = TestServer::start(Backend::Sqlite).await;
    let origin = origin::start().await;
    let svc = format!("http://{}", origin.addr);
    let (id, token) = tunnel_for(&s, "fallback", "app.example.com", &svc).await;
    let edge = s.server.as_ref().unwrap().edge_addr;
    let (relay, relayed, relay_task) = tcp_relay(edge).await;

    // QUIC to the relay's port times out in its handshake (5 s), which is
    // "QUIC broken": the connection switches to HTTP/2 and registers.
    let c = start_connector(&s, &token, options(relay, 1, TransportProtocol::Auto));
    c.wait_ready_within(1, Duration::from_secs(30)).await;
    assert!(
        relayed.load(Ordering::SeqCst) >= 1,
        "registered through TCP"
    );
    eventually("connection listed, configuration applied", || async {
        connections(&s, &id)
            .await
            .first()
            .is_some_and(|c| c["conns"].as_array().unwrap().len() == 1 && c["config_version"] == 1)
    })
    .await;
    let resp = public(&s, "app.example.com", "/hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "hello from origin");
    c.stop_cleanly().await;

    // `--protocol quic` never falls back: it stays unregistered.
    let q = start_connector(&s, &token, options(relay, 1, TransportProtocol::Quic));
    let before = relayed.load(Ordering::SeqCst);
    assert!(
        tokio::time::timeout(Duration::from_secs(7), q.state.wait_ready(1))
            .await
            .is_err()
    );
    assert_eq!(relayed.load(Ordering::SeqCst), before, "quic only: no TCP");
    q.stop_cleanly().await;
    relay_task.abort();
    s.stop().await;
}

/// A websocket-speaking origin: answers the upgrade with 101 and then
/// echoes every byte (the tunnel must relay frames verbatim, so raw bytes
/// stand in for frames).
async fn upgrade_echo_origin() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if !text.contains("upgrade: websocket")
                    || !text.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq==")
                {
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
                    .await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_over_http2_relays_raw_frames_both_ways() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let s = TestServer::start(Backend::Sqlite).await;
    let (ws_addr, ws_task) = upgrade_echo_origin().await;
    let (id, token) = tunnel_for(&s, "ws", "ws.example.com", &format!("ws://{ws_addr}")).await;
    let edge = s.server.as_ref().unwrap().edge_addr;
    let c = start_connector(&s, &token, options(edge, 1, TransportProtocol::Http2));
    c.wait_ready(1).await;
    eventually("config applied", || async {
        connections(&s, &id)
            .await
            .first()
            .is_some_and(|c| c["config_version"] == 1)
    })
    .await;

    let http = s.server.as_ref().unwrap().http_addr;
    let mut eyeball = tokio::net::TcpStream::connect(http).await.unwrap();
    eyeball
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: ws.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(eyeball.read(&mut b).await.unwrap(), 1, "head: {head:?}");
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    assert!(head.contains("upgrade: websocket"), "{head}");
    // Several round trips of raw bytes, then a 1 MiB burst.
    for i in 0..5u8 {
        let msg = [0x81, 0x05, b'h', b'e', b'l', b'l', i];
        eyeball.write_all(&msg).await.unwrap();
        let mut back = [0u8; 7];
        tokio::time::timeout(Duration::from_secs(10), eyeball.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    let big: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let (mut rd, mut wr) = eyeball.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(&big).await.unwrap();
        (wr, big)
    });
    let mut back = vec![0u8; 1024 * 1024];
    tokio::time::timeout(Duration::from_secs(20), rd.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    let (wr, big) = writer.await.unwrap();
    assert!(back == big);
    drop((rd, wr));
    c.stop_cleanly().await;
    ws_task.abort();
    s.stop().await;
}
