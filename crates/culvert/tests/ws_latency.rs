//! WebSocket message round-trip latency through the tunnel versus direct
//! to the origin: a measurement, not a check, ignored by default.
//! `bash bench/ws_latency.sh` runs it in a release build and writes the
//! figures to BENCHMARKS.md.

mod common;
#[path = "common/tunnel.rs"]
mod tunnel;

use std::time::{Duration, Instant};

use common::{Backend, TestServer};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const WARMUP: usize = 200;
const ROUNDS: usize = 2000;

async fn echo_origin() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_close() || ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Round-trip times of `ROUNDS` 32-byte messages on one WebSocket.
async fn measure(addr: std::net::SocketAddr, url: &str) -> Vec<Duration> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    let msg = Message::binary(vec![7u8; 32]);
    let mut times = Vec::with_capacity(ROUNDS);
    for i in 0..WARMUP + ROUNDS {
        let t = Instant::now();
        ws.send(msg.clone()).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), msg);
        if i >= WARMUP {
            times.push(t.elapsed());
        }
    }
    ws.close(None).await.unwrap();
    times.sort();
    times
}

fn summary(name: &str, t: &[Duration]) {
    let pct = |p: f64| t[((t.len() as f64 * p) as usize).min(t.len() - 1)];
    let mean = t.iter().sum::<Duration>() / t.len() as u32;
    eprintln!(
        "{name}: {} round trips, p50 {:?}, p90 {:?}, p99 {:?}, mean {:?}",
        t.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        mean
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement; run explicitly"]
async fn websocket_round_trip_latency_tunnel_vs_direct() {
    let s = TestServer::start(Backend::Sqlite).await;
    let origin = echo_origin().await;
    let connector = tunnel::serve_ingress(
        &s,
        "ws-latency",
        json!([
            {"hostname": "ws.example.com", "service": format!("ws://{origin}")},
            {"service": "http_status:404"}
        ]),
        "ws.example.com",
    )
    .await;
    let http = s.server.as_ref().unwrap().http_addr;
    let direct = measure(origin, &format!("ws://{origin}/")).await;
    let tunnel = measure(http, "ws://ws.example.com/").await;
    summary("direct", &direct);
    summary("through the tunnel", &tunnel);
    connector.stop().await;
    s.stop().await;
}
