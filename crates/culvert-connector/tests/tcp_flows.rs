//! Private TCP flows (type `tcp`, edge-protocol.md §4.5) through the real
//! connector over QUIC, from a test edge that opens type-`tcp` data streams,
//! to real TCP servers on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use culvert_connector::ConnectorError;
use culvert_connector::tcpflow::WARP_ROUTING_DISABLED;
use culvert_proto::connect::{ConnectRequest, ConnectionType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const WARP_ON: &str =
    r#"{"ingress":[{"service":"http_status:404"}],"warp-routing":{"enabled":true}}"#;
const WARP_OFF: &str = r#"{"ingress":[{"service":"http_status:404"}]}"#;

struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ConnectorError>>,
}

fn start(config: culvert_connector::ConnectorConfig) -> Running {
    let connector = culvert_connector::Connector::new(config).unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(connector.run(shutdown.clone()));
    Running { shutdown, task }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("connector stops in time")
            .expect("connector task")
            .expect("connector ends cleanly");
    }
}

fn tcp_request(dest: &str) -> ConnectRequest {
    ConnectRequest {
        dest: dest.to_owned(),
        connection_type: ConnectionType::Tcp,
        metadata: vec![culvert_proto::Metadata::new("FlowID", "flow-1")],
    }
}

/// A TCP server that echoes every byte and closes after the peer's FIN.
async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// A TCP server that answers only after the peer's FIN: "got N bytes".
async fn count_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                let _ = s.read_to_end(&mut all).await;
                let _ = s
                    .write_all(format!("got {} bytes", all.len()).as_bytes())
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, task)
}

async fn connected(config: &str) -> (TestEdge, EdgeConn, Running) {
    init_tracing();
    let edge = TestEdge::start().await;
    let (_, token) = transcript_token();
    let run = start(connector_config(&edge, token, 1));
    let conn = edge.next_conn().await;
    let r = conn.push_config(&edge.pool, 1, config).await;
    assert_eq!(r.err, "");
    (edge, conn, run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_flow_carries_mebibytes_both_ways() {
    let (server, server_task) = echo_server().await;
    let (_edge, conn, run) = connected(WARP_ON).await;

    let (mut send, mut recv) = conn.open(&tcp_request(&server.to_string())).await;
    let (resp, early) = tokio::time::timeout(Duration::from_secs(10), read_response(&mut recv))
        .await
        .expect("ack in time");
    // The ack is an empty ConnectResponse, as cloudflared sends it.
    assert_eq!(resp, culvert_proto::ConnectResponse::default());
    assert!(early.is_empty());

    const TOTAL: usize = 4 * 1024 * 1024;
    let pattern: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    let to_send = pattern.clone();
    let writer = tokio::spawn(async move {
        for chunk in to_send.chunks(60_000) {
            send.write_all(chunk).await.unwrap();
        }
        send.finish().unwrap();
        send
    });
    let got = tokio::time::timeout(Duration::from_secs(60), recv.read_to_end(2 * TOTAL))
        .await
        .expect("echo in time")
        .expect("stream ends with FIN");
    assert_eq!(got.len(), TOTAL);
    assert!(got == pattern, "echoed bytes differ");
    let _send = writer.await.unwrap();

    run.stop().await;
    server_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_flow_keeps_the_reply_after_the_edge_half_closes() {
    let (server, server_task) = count_server().await;
    let (_edge, conn, run) = connected(WARP_ON).await;

    // The first bytes travel in the same write as the ConnectRequest.
    let (mut send, mut recv) = conn.open(&tcp_request(&server.to_string())).await;
    send.write_all(b"hello, private network").await.unwrap();
    send.finish().unwrap();
    let (resp, mut rest) = tokio::time::timeout(Duration::from_secs(10), read_response(&mut recv))
        .await
        .expect("ack in time");
    assert_eq!(resp.error, "");
    rest.extend(
        tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1024))
            .await
            .expect("reply in time")
            .unwrap(),
    );
    assert_eq!(String::from_utf8(rest).unwrap(), "got 22 bytes");

    // The other way round: the origin closes first, the edge still sees
    // every byte and then FIN.
    let (send2, mut recv2) = conn.open(&tcp_request(&server.to_string())).await;
    drop(send2); // dropping finishes the stream
    let (resp, mut rest) = read_response(&mut recv2).await;
    assert_eq!(resp.error, "");
    rest.extend(recv2.read_to_end(1024).await.unwrap());
    assert_eq!(rest, b"got 0 bytes");

    run.stop().await;
    server_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_flow_refused_without_warp_routing_and_on_dial_failure() {
    let (server, server_task) = echo_server().await;
    let (edge, conn, run) = connected(WARP_OFF).await;

    // warp-routing off: cloudflared's text, no metadata, then FIN.
    let (resp, rest) = conn.request(&tcp_request(&server.to_string()), b"").await;
    assert_eq!(resp.error, WARP_ROUTING_DISABLED);
    assert!(resp.metadata.is_empty());
    assert!(rest.is_empty());

    let r = conn.push_config(&edge.pool, 2, WARP_ON).await;
    assert_eq!(r.err, "");
    let (resp, rest) = conn
        .request(&tcp_request(&server.to_string()), b"ping")
        .await;
    assert_eq!(resp.error, "");
    assert_eq!(rest, b"ping");

    // Nothing listens on a port that was just released.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let (resp, rest) = conn.request(&tcp_request(&dead.to_string()), b"").await;
    assert_eq!(
        resp.error,
        format!("dial tcp {dead}: connect: connection refused")
    );
    assert!(resp.metadata.is_empty());
    assert!(rest.is_empty());

    // A destination that is not ip:port is refused the same way.
    let (resp, _) = conn.request(&tcp_request("db.internal"), b"").await;
    assert!(resp.error.contains("db.internal"), "{}", resp.error);

    // The connection is still healthy afterwards.
    let (resp, rest) = conn
        .request(&tcp_request(&server.to_string()), b"again")
        .await;
    assert_eq!(resp.error, "");
    assert_eq!(rest, b"again");

    run.stop().await;
    server_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_flow_enabled_by_local_config() {
    init_tracing();
    let (server, server_task) = echo_server().await;
    let edge = TestEdge::start().await;
    let (_, token) = transcript_token();
    let mut config = connector_config(&edge, token, 1);
    config.initial_ingress = culvert_ingress::parse_local_config(&serde_json::json!({
        "ingress": [{"service": "http_status:404"}],
        "warp-routing": {"enabled": true, "connectTimeout": "2s"},
    }))
    .unwrap();
    let run = start(config);
    let conn = edge.next_conn().await;
    let (resp, rest) = conn
        .request(&tcp_request(&server.to_string()), b"local")
        .await;
    assert_eq!(resp.error, "");
    assert_eq!(rest, b"local");
    run.stop().await;
    server_task.abort();
}
