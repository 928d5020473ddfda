//! Private TCP flows end to end: an API-token holder asks the edge's
//! management host for `/tcp/{tunnel}?dest=IP:PORT`, the edge opens a
//! type-`tcp` stream over QUIC and the connector dials the destination when
//! the tunnel's `warp-routing` is enabled.

mod common;
#[path = "common/tunnel.rs"]
mod tunnel;

use std::net::SocketAddr;

use common::{Backend, TestServer, call};
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Sends the upgrade request; returns the status line and, on 101, the
/// stream (else the body text).
async fn open_flow(
    http: SocketAddr,
    tunnel: &str,
    dest: &str,
    token: &str,
) -> (u16, TcpStream, String) {
    let mut tcp = TcpStream::connect(http).await.unwrap();
    let req = format!(
        "GET /tcp/{tunnel}?dest={dest} HTTP/1.1\r\nHost: management.cfargotunnel.localhost\r\n\
         Connection: Upgrade\r\nUpgrade: culvert-tcp\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    // Read the head byte by byte so no relayed byte is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(
            tcp.read(&mut b).await.unwrap(),
            1,
            "head cut short: {head:?}"
        );
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status: u16 = head[9..12].parse().unwrap();
    let mut body = String::new();
    if status != 101 {
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut buf = vec![0u8; len];
        tcp.read_exact(&mut buf).await.unwrap();
        body = String::from_utf8(buf).unwrap();
    }
    (status, tcp, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_tcp_flows_through_the_edge() {
    let s = TestServer::start(Backend::Sqlite).await;
    let echo = echo_server().await;
    let ingress = json!([{"hostname": "app.example.com", "service": "http_status:204"},
                         {"service": "http_status:404"}]);
    let connector = tunnel::serve_ingress(&s, "flows", ingress.clone(), "app.example.com").await;
    let (_, list) = call(s.req(
        Method::GET,
        &s.acct("/cfd_tunnel?name=flows&is_deleted=false"),
    ))
    .await;
    let id = list["result"][0]["id"].as_str().unwrap().to_string();
    let http = s.server.as_ref().unwrap().http_addr;
    let dest = echo.to_string();

    // warp-routing off (the default): the connector refuses, the edge says 502.
    let (status, _, body) = open_flow(http, &id, &dest, &s.token).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("warp-routing") || body.contains("WARP"),
        "{body}"
    );

    // Turn it on with a configuration push.
    let (st, b) = call(
        s.req(
            Method::PUT,
            &s.acct(&format!("/cfd_tunnel/{id}/configurations")),
        )
        .json(&json!({"config": {"ingress": ingress, "warp-routing": {"enabled": true}}})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let mut opened = None;
    for _ in 0..100 {
        let (status, tcp, _) = open_flow(http, &id, &dest, &s.token).await;
        if status == 101 {
            opened = Some(tcp);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let tcp = opened.expect("the flow opens once warp-routing is pushed");

    // Bytes both ways: 2 MiB echoed back exactly.
    let data: Vec<u8> = (0..2 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    let (mut r, mut w) = tcp.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w
    });
    let mut got = vec![0u8; data.len()];
    r.read_exact(&mut got).await.unwrap();
    assert!(got == data, "echoed bytes differ");
    drop(writer.await.unwrap());

    // Refusals: no token, a token without Tunnel Write, a bad destination,
    // an unknown tunnel, and a destination nobody listens on.
    let (status, _, _) = open_flow(http, &id, &dest, "not-a-token").await;
    assert!(status == 401 || status == 403, "{status}");
    let read_only = s.token_with(&["Cloudflare Tunnel Read"]).await;
    let (status, _, body) = open_flow(http, &id, &dest, &read_only).await;
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = open_flow(http, &id, "db.internal:5432", &s.token).await;
    assert_eq!(status, 400, "{body}");
    let (status, _, body) =
        open_flow(http, &uuid::Uuid::new_v4().to_string(), &dest, &s.token).await;
    assert_eq!(status, 404, "{body}");
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (status, _, body) = open_flow(http, &id, &closed.to_string(), &s.token).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("connection refused"), "{body}");

    connector.stop().await;
    s.stop().await;
}
