//! Connector health over real QUIC: `/metrics` counts what the test edge
//! sends, `/ready` follows whether the edge still answers (a UDP relay in
//! between can drop every packet).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use culvert_connector::Connector;
use culvert_proto::Metadata;
use culvert_proto::connect::{ConnectRequest, ConnectionType};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

fn get(host: &str, path: &str) -> ConnectRequest {
    ConnectRequest {
        dest: format!("http://{host}{path}"),
        connection_type: ConnectionType::Http,
        metadata: vec![
            Metadata::new("HttpMethod", "GET"),
            Metadata::new("HttpHost", host),
        ],
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// The value of the sample `series` (exact name and labels) in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until `pred` holds (the stream tasks end just after the
/// responses are read).
async fn scrape_until(addr: SocketAddr, pred: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..200 {
        let (status, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        if pred(&body) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("metrics never matched; last scrape:\n{last}");
}

struct Metrics {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

async fn serve_metrics(connector: &Connector, shutdown: &CancellationToken) -> Metrics {
    let listener = culvert_connector::metrics::bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(culvert_connector::metrics::serve(
        listener,
        connector.state(),
        shutdown.clone(),
    ));
    Metrics { addr, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_errors_streams_and_latency() {
    init_tracing();
    let origin = TestOrigin::start().await;
    let edge = TestEdge::start().await;
    let (_, token) = transcript_token();
    let connector = Connector::new(connector_config(&edge, token, 1)).unwrap();
    let shutdown = CancellationToken::new();
    let metrics = serve_metrics(&connector, &shutdown).await;
    let task = tokio::spawn(connector.run(shutdown.clone()));
    let conn = edge.next_conn().await;
    // A port nothing listens on: the connector answers 502 itself.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = format!(
        r#"{{"ingress":[{{"hostname":"app.test","service":"http://{}"}},{{"hostname":"down.test","service":"http://{closed}"}},{{"service":"http_status:404"}}]}}"#,
        origin.addr
    );
    assert_eq!(conn.push_config(&edge.pool, 1, &config).await.err, "");

    for _ in 0..2 {
        let (resp, _) = conn.request(&get("app.test", "/"), b"").await;
        assert!(resp.metadata.contains(&Metadata::new("HttpStatus", "200")));
    }
    // Hosts that no rule names share one label.
    for host in ["x.test", "y.test"] {
        let (resp, _) = conn.request(&get(host, "/"), b"").await;
        assert!(resp.metadata.contains(&Metadata::new("HttpStatus", "404")));
    }
    let (resp, _) = conn.request(&get("down.test", "/"), b"").await;
    assert!(!resp.error.is_empty(), "{resp:?}");

    let hist = "culvert_tunnel_request_duration_seconds";
    let text = scrape_until(metrics.addr, |t| {
        sample(t, "cloudflared_tunnel_total_requests") == Some(5.0)
            && sample(t, "cloudflared_tunnel_concurrent_requests_per_tunnel") == Some(0.0)
    })
    .await;
    for (series, want) in [
        ("cloudflared_tunnel_request_errors", 1.0),
        ("cloudflared_tunnel_ha_connections", 1.0),
        ("culvert_tunnel_ready_connections", 1.0),
        ("culvert_tunnel_responses_by_class{class=\"2xx\"}", 2.0),
        ("culvert_tunnel_responses_by_class{class=\"4xx\"}", 2.0),
        ("culvert_tunnel_responses_by_class{class=\"5xx\"}", 1.0),
        (
            "cloudflared_tunnel_response_by_code{status_code=\"200\"}",
            2.0,
        ),
        (
            "cloudflared_tunnel_response_by_code{status_code=\"404\"}",
            2.0,
        ),
        (
            "cloudflared_tunnel_response_by_code{status_code=\"502\"}",
            1.0,
        ),
        (&format!("{hist}_count{{hostname=\"app.test\"}}"), 2.0),
        (
            &format!("{hist}_bucket{{hostname=\"app.test\",le=\"+Inf\"}}"),
            2.0,
        ),
        (&format!("{hist}_count{{hostname=\"_other\"}}"), 2.0),
        (&format!("{hist}_count{{hostname=\"down.test\"}}"), 1.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    }
    assert!(!text.contains("x.test"), "{text}");
    // Cumulative buckets: never decreasing, ending at the count.
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{hist}_bucket{{hostname=\"app.test\"")))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(buckets.len(), 13);
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert!(buckets[..12].contains(&2.0), "{buckets:?}");

    // A request whose body is still arriving is an active stream.
    let mut req = get("app.test", "/submit");
    req.metadata[0] = Metadata::new("HttpMethod", "POST");
    req.metadata
        .push(Metadata::new("HttpHeader:Transfer-Encoding", "chunked"));
    let (mut send, mut recv) = conn.open(&req).await;
    send.write_all(b"part of the body").await.unwrap();
    scrape_until(metrics.addr, |t| {
        sample(t, "cloudflared_tunnel_concurrent_requests_per_tunnel") == Some(1.0)
            && sample(t, "cloudflared_tunnel_total_requests") == Some(6.0)
    })
    .await;
    send.finish().unwrap();
    let (resp, _) = read_response(&mut recv).await;
    assert!(resp.metadata.contains(&Metadata::new("HttpStatus", "200")));
    recv.read_to_end(1 << 20).await.unwrap();
    scrape_until(metrics.addr, |t| {
        sample(t, "cloudflared_tunnel_concurrent_requests_per_tunnel") == Some(0.0)
            && sample(t, &format!("{hist}_count{{hostname=\"app.test\"}}")) == Some(3.0)
    })
    .await;

    shutdown.cancel();
    task.await.unwrap().unwrap();
    metrics.task.await.unwrap();
}

/// A UDP relay between the connector and the edge that can drop every
/// packet in both directions (an edge that stops answering).
struct Relay {
    addr: SocketAddr,
    blackhole: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_relay(upstream: SocketAddr) -> Relay {
    let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    back.connect(upstream).await.unwrap();
    let addr = front.local_addr().unwrap();
    let blackhole = Arc::new(AtomicBool::new(false));
    let drop_all = Arc::clone(&blackhole);
    let task = tokio::spawn(async move {
        let mut client: Option<SocketAddr> = None;
        let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
        loop {
            tokio::select! {
                r = front.recv_from(&mut a) => {
                    let Ok((n, from)) = r else { return };
                    client = Some(from);
                    if !drop_all.load(Ordering::SeqCst) {
                        let _ = back.send(&a[..n]).await;
                    }
                }
                r = back.recv(&mut b) => {
                    let Ok(n) = r else { continue };
                    if let Some(c) = client.filter(|_| !drop_all.load(Ordering::SeqCst)) {
                        let _ = front.send_to(&b[..n], c).await;
                    }
                }
            }
        }
    });
    Relay {
        addr,
        blackhole,
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_503_when_the_edge_stops_answering() {
    init_tracing();
    let edge = TestEdge::start().await;
    let relay = start_relay(edge.addr).await;
    let (_, token) = transcript_token();
    let mut config = connector_config(&edge, token, 1);
    config.edge_addrs = vec![relay.addr.to_string()];
    let connector = Connector::new(config).unwrap();
    let id = connector.connector_id();
    let state = connector.state();
    let shutdown = CancellationToken::new();
    let metrics = serve_metrics(&connector, &shutdown).await;
    let task = tokio::spawn(connector.run(shutdown.clone()));
    let _conn = edge.next_conn().await;
    tokio::time::timeout(Duration::from_secs(20), state.wait_ready(1))
        .await
        .expect("registered");
    assert_eq!(
        http_get(metrics.addr, "/ready").await,
        (
            200,
            format!(r#"{{"status":200,"readyConnections":1,"connectorId":"{id}"}}"#)
        )
    );

    // The edge goes silent: keep-alive PINGs stay unanswered.
    relay.blackhole.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(20), state.wait_ready_at_most(0))
        .await
        .expect("the stalled connection stops counting as ready");
    // Noticed by the liveness check (about 3 s of silence), before quinn's
    // 5 s idle timeout ends the connection.
    assert_eq!(state.registered_connections(), 1);
    assert_eq!(
        http_get(metrics.addr, "/ready").await,
        (
            503,
            format!(r#"{{"status":503,"readyConnections":0,"connectorId":"{id}"}}"#)
        )
    );

    // The edge answers again: ready again (the same connection if it was
    // not yet idle-closed, else a new one).
    relay.blackhole.store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(20), state.wait_ready(1))
        .await
        .expect("ready again");
    let (status, body) = http_get(metrics.addr, "/ready").await;
    assert_eq!(
        (status, body.contains(r#""readyConnections":1"#)),
        (200, true)
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("connector stops")
        .unwrap()
        .unwrap();
    metrics.task.await.unwrap();
}
