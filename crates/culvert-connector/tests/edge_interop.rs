//! The connector against a test edge that replays the recorded cloudflared
//! 2023.7.3 exchanges (real QUIC/TLS on 127.0.0.1, real hyper origins).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use culvert_connector::{Connector, ConnectorError};
use culvert_proto::connect::{ConnectRequest, ConnectionType};
use culvert_proto::framing::Limits;
use culvert_proto::registration::{ConnectionError, ids};
use culvert_proto::rpc::{RpcSummary, Target};
use culvert_proto::{ConnectResponse, Metadata};
use tokio_util::sync::CancellationToken;

struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ConnectorError>>,
    state: Arc<culvert_connector::ConnectorState>,
    connector_id: uuid::Uuid,
}

fn start(config: culvert_connector::ConnectorConfig) -> Running {
    let connector = Connector::new(config).unwrap();
    let state = connector.state();
    let connector_id = connector.connector_id();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(connector.run(shutdown.clone()));
    Running {
        shutdown,
        task,
        state,
        connector_id,
    }
}

impl Running {
    async fn stop(self) -> Result<(), ConnectorError> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("connector stops in time")
            .expect("connector task")
    }
}

fn app_config(origin: &TestOrigin) -> String {
    format!(
        r#"{{"ingress":[{{"hostname":"app.test","service":"http://{}"}},{{"service":"http_status:404"}}]}}"#,
        origin.addr
    )
}

fn get(host: &str, path: &str) -> ConnectRequest {
    ConnectRequest {
        dest: format!("http://{host}{path}"),
        connection_type: ConnectionType::Http,
        metadata: vec![
            Metadata::new("HttpMethod", "GET"),
            Metadata::new("HttpHost", host),
            Metadata::new("HttpHeader:Cf-Ray", "0000000000000009-LAB"),
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_like_cloudflared_and_unregisters_on_shutdown() {
    init_tracing();
    let edge = TestEdge::start().await;
    let (_, token) = transcript_token();
    let run = start(connector_config(&edge, token.clone(), 2));

    let c0 = edge.next_conn().await;
    let c1 = edge.next_conn().await;
    run.state.wait_ready(2).await;

    // Compare with what cloudflared 2023.7.3 sent (quic-01).
    let t = transcript("quic-01-registration.json");
    let want = &t["observed_registration"];
    let recorded_features: BTreeSet<String> = want["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    let mut indices = BTreeSet::new();
    for c in [&c0, &c1] {
        let p = &c.params;
        indices.insert(p.conn_index);
        assert_eq!(p.auth.account_tag, want["accountTag"].as_str().unwrap());
        assert_eq!(
            p.auth.tunnel_secret,
            unhex(want["tunnelSecretHex"].as_str().unwrap())
        );
        assert_eq!(p.tunnel_id.to_string(), want["tunnelId"].as_str().unwrap());
        assert_eq!(p.options.client.client_id, run.connector_id);
        let o = &p.options;
        assert_eq!(
            o.replace_existing,
            want["replaceExisting"].as_bool().unwrap()
        );
        assert_eq!(
            u64::from(o.compression_quality),
            want["compressionQuality"].as_u64().unwrap()
        );
        assert_eq!(
            u64::from(o.num_previous_attempts),
            want["numPreviousAttempts"].as_u64().unwrap()
        );
        // Over QUIC cloudflared reports the edge address, IPv4-mapped.
        assert_eq!(
            o.origin_local_ip,
            Some(want["originLocalIp"].as_str().unwrap().parse().unwrap())
        );
        let ours: BTreeSet<String> = o.client.features.iter().cloned().collect();
        assert!(ours.is_subset(&recorded_features), "{ours:?}");
        assert_eq!(
            ours,
            [
                "allow_remote_config",
                "management_logs",
                "serialized_headers",
                "support_quic_eof"
            ]
            .map(String::from)
            .into()
        );
        assert!(o.client.arch.contains('_'));

        // The RPC shape on the wire: Bootstrap{q=0} (the recorded 48 bytes),
        // then a Call pipelined on promisedAnswer(0) — no wait in between.
        let bytes = c.control_bytes.lock().unwrap().clone();
        let boot = t["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["note"] == "Bootstrap{q=0}")
            .unwrap();
        let boot = unhex(boot["hex"].as_str().unwrap());
        assert_eq!(&bytes[..boot.len()], &boot[..]);
        let (first, used) = RpcSummary::decode(&bytes, &Limits::CONTROL_STREAM)
            .unwrap()
            .unwrap();
        assert_eq!(first, RpcSummary::Bootstrap { question_id: 0 });
        let (second, _) = RpcSummary::decode(&bytes[used..], &Limits::CONTROL_STREAM)
            .unwrap()
            .unwrap();
        match second {
            RpcSummary::Call {
                question_id,
                target,
                interface_id,
                method_id,
                ..
            } => {
                assert_eq!(question_id, 1);
                assert_eq!(
                    target,
                    Target::PromisedAnswer {
                        question_id: 0,
                        transform_len: 0
                    }
                );
                assert_eq!(interface_id, ids::REGISTRATION_SERVER);
                assert_eq!(method_id, ids::REGISTER_CONNECTION);
            }
            other => panic!("expected the pipelined call, got {other:?}"),
        }
    }
    assert_eq!(indices, [0u8, 1].into());

    run.stop().await.unwrap();
    let events = edge.events();
    assert!(events.contains(&EdgeEvent::Unregistered(0)), "{events:?}");
    assert!(events.contains(&EdgeEvent::Unregistered(1)), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_transcript_requests_and_applies_config_pushes() {
    init_tracing();
    let origin = TestOrigin::start().await;
    let edge = TestEdge::start().await;
    let (_, token) = transcript_token();
    let run = start(connector_config(&edge, token, 1));
    let conn = edge.next_conn().await;

    // Before any push: cloudflared's default ingress answers 503.
    let (resp, body) = conn.request(&get("app.test", "/"), b"").await;
    assert_eq!(
        resp,
        ConnectResponse {
            error: String::new(),
            metadata: vec![Metadata::new("HttpStatus", "503")]
        }
    );
    assert!(body.is_empty());

    // quic-02: push version 1.
    let r = conn.push_config(&edge.pool, 1, &app_config(&origin)).await;
    assert_eq!((r.latest_applied_version, r.err.as_str()), (1, ""));

    // quic-03: the recorded GET.
    let req = recorded_connect_request("quic-03-http-get.json");
    let (resp, body) = conn.request(&req, b"").await;
    assert_eq!(resp.error, "");
    let pairs = meta_pairs(&resp.metadata);
    for want in [
        ("HttpStatus", "200".to_owned()),
        ("HttpHeader:Content-Type", "text/html".to_owned()),
        ("HttpHeader:Content-Length", INDEX_HTML.len().to_string()),
        ("HttpHeader:Server", "golden-origin/1.0".to_owned()),
        (
            "HttpHeader:Date",
            "Mon, 01 Jan 2024 00:00:00 GMT".to_owned(),
        ),
    ] {
        assert!(
            pairs.contains(&(want.0.to_owned(), want.1.clone())),
            "{want:?} in {pairs:?}"
        );
    }
    assert_eq!(body, INDEX_HTML.as_bytes());
    let hit = origin.hits().pop().unwrap();
    let header = |n: &str| {
        hit.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    assert_eq!((hit.method.as_str(), hit.path.as_str()), ("GET", "/"));
    assert_eq!(header("host").as_deref(), Some("app.test"));
    assert_eq!(header("user-agent").as_deref(), Some("golden-edge/1"));
    assert_eq!(header("cf-ray").as_deref(), Some("0000000000000001-LAB"));
    assert_eq!(header("cf-warp-tag-id"), Some(run.connector_id.to_string()));

    // quic-04: the recorded POST; the origin answers exactly like the
    // recorded one (same body hash line).
    let t = transcript("quic-04-http-post.json");
    let events = t["events"].as_array().unwrap();
    let body_of = |dir: &str| -> Vec<u8> {
        events
            .iter()
            .filter(|e| e["kind"] == "body" && e["dir"] == dir)
            .flat_map(|e| unhex(e["hex"].as_str().unwrap()))
            .collect()
    };
    let req = recorded_connect_request("quic-04-http-post.json");
    let (resp, body) = conn.request(&req, &body_of("edge->cloudflared")).await;
    assert_eq!(body, body_of("cloudflared->edge"));
    let pairs = meta_pairs(&resp.metadata);
    assert!(pairs.contains(&("HttpStatus".into(), "200".into())));
    assert!(pairs.contains(&("HttpHeader:X-Echo".into(), "yes".into())));
    let hit = origin.hits().pop().unwrap();
    assert_eq!(
        (hit.method.as_str(), hit.path.as_str()),
        ("POST", "/submit")
    );

    // quic-05: unmatched host → the catch-all, byte for byte as recorded.
    let t = transcript("quic-05-http-unmatched-404.json");
    let recorded: Vec<u8> = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["dir"] == "cloudflared->edge" && e["stream"].is_number())
        .flat_map(|e| unhex(e["hex"].as_str().unwrap_or("")))
        .collect();
    let req = recorded_connect_request("quic-05-http-unmatched-404.json");
    let (mut send, mut recv) = conn.open(&req).await;
    send.finish().unwrap();
    let all = recv.read_to_end(1 << 20).await.unwrap();
    assert_eq!(all, recorded);
    let hits_before = origin.hits().len();

    // Stale and equal versions are ignored; invalid JSON is refused with
    // the validation error and the old config stays.
    let other = r#"{"ingress":[{"service":"http_status:418"}]}"#;
    let r = conn.push_config(&edge.pool, 1, other).await;
    assert_eq!((r.latest_applied_version, r.err.as_str()), (1, ""));
    let r = conn.push_config(&edge.pool, 0, other).await;
    assert_eq!((r.latest_applied_version, r.err.as_str()), (1, ""));
    let r = conn
        .push_config(
            &edge.pool,
            2,
            r#"{"ingress":[{"hostname":"a.test","service":"http_status:418"}]}"#,
        )
        .await;
    assert_eq!(r.latest_applied_version, 1);
    assert!(
        r.err.contains("last ingress rule must match all URLs"),
        "{}",
        r.err
    );
    let (resp, _) = conn.request(&get("app.test", "/"), b"").await;
    assert!(meta_pairs(&resp.metadata).contains(&("HttpStatus".into(), "200".into())));
    assert_eq!(origin.hits().len(), hits_before + 1);

    // A newer valid version applies.
    let r = conn.push_config(&edge.pool, 3, other).await;
    assert_eq!((r.latest_applied_version, r.err.as_str()), (3, ""));
    let (resp, _) = conn.request(&get("app.test", "/"), b"").await;
    assert_eq!(resp.metadata, vec![Metadata::new("HttpStatus", "418")]);

    // A failing origin → ConnectResponse with error set.
    let dead = r#"{"ingress":[{"service":"http://127.0.0.1:1"}]}"#;
    let r = conn.push_config(&edge.pool, 4, dead).await;
    assert_eq!(r.err, "");
    let (resp, body) = conn.request(&get("app.test", "/"), b"").await;
    assert!(resp.is_error(), "{resp:?}");
    assert!(body.is_empty());

    run.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways() {
    init_tracing();
    let origin = TestOrigin::start().await;
    let edge = TestEdge::start().await;
    let (_, token) = transcript_token();
    let run = start(connector_config(&edge, token, 1));
    let conn = edge.next_conn().await;
    let r = conn
        .push_config(
            &edge.pool,
            1,
            &format!(r#"{{"ingress":[{{"service":"http://{}"}}]}}"#, origin.addr),
        )
        .await;
    assert_eq!(r.err, "");

    // Ping-pong through /echo: each chunk must come back before the next
    // is sent, which only works if neither direction is buffered whole.
    let mut req = get("app.test", "/echo");
    req.metadata[0] = Metadata::new("HttpMethod", "POST");
    req.metadata
        .push(Metadata::new("HttpHeader:Transfer-Encoding", "chunked"));
    let (mut send, mut recv) = conn.open(&req).await;
    let chunk = vec![0x5a_u8; 64 * 1024];
    send.write_all(&chunk).await.unwrap();
    let (resp, mut got) = tokio::time::timeout(Duration::from_secs(10), read_response(&mut recv))
        .await
        .expect("response head while the request is still open");
    assert!(meta_pairs(&resp.metadata).contains(&("HttpStatus".into(), "200".into())));
    for round in 0..8 {
        while got.len() < chunk.len() {
            let mut buf = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout(Duration::from_secs(10), recv.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("echo of round {round} arrived"))
                .unwrap()
                .expect("open");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got.len(), chunk.len());
        got.clear();
        if round < 7 {
            send.write_all(&chunk).await.unwrap();
        }
    }
    send.finish().unwrap();
    assert!(recv.read_to_end(1 << 20).await.unwrap().is_empty());

    // A 20 MB POST, written while the response is awaited.
    const SIZE: usize = 20 * 1024 * 1024;
    let mut req = get("app.test", "/submit");
    req.metadata[0] = Metadata::new("HttpMethod", "POST");
    req.metadata
        .push(Metadata::new("HttpHeader:Content-Length", SIZE.to_string()));
    let (mut send, mut recv) = conn.open(&req).await;
    let writer = tokio::spawn(async move {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut block = vec![0u8; 256 * 1024];
        let mut sent = 0usize;
        let mut i = 0u32;
        while sent < SIZE {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (i as usize + j) as u8;
            }
            let n = block.len().min(SIZE - sent);
            ctx.update(&block[..n]);
            send.write_all(&block[..n]).await.unwrap();
            sent += n;
            i += 1;
        }
        send.finish().unwrap();
        ctx.finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    });
    let (resp, mut body) = read_response(&mut recv).await;
    body.extend(recv.read_to_end(1 << 20).await.unwrap());
    let hash = writer.await.unwrap();
    assert_eq!(resp.error, "");
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("got {SIZE} bytes sha256={hash}\n")
    );
    run.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_is_retried_with_backoff() {
    init_tracing();
    let edge = TestEdge::start().await;
    for _ in 0..3 {
        edge.refusals
            .lock()
            .unwrap()
            .push_back(ConnectionError::permanent(ConnectionError::INVALID_SECRET));
    }
    let (_, token) = transcript_token();
    let run = start(connector_config(&edge, token, 1));
    let conn = edge.next_conn().await;
    let refused: Vec<_> = edge
        .events()
        .into_iter()
        .filter(|e| matches!(e, EdgeEvent::Refused(0, c) if c.starts_with("Unauthorized")))
        .collect();
    assert_eq!(refused.len(), 3);
    // numPreviousAttempts counts this slot's retries, as cloudflared does.
    assert_eq!(conn.params.options.num_previous_attempts, 3);
    assert_eq!(conn.params.conn_index, 0);

    // A lost connection reconnects under the same index and connector ID.
    run.state.wait_ready(1).await;
    conn.conn.close(quinn::VarInt::from_u32(0), b"edge restart");
    let again = edge.next_conn().await;
    assert_eq!(again.params.conn_index, 0);
    assert_eq!(again.params.options.client.client_id, run.connector_id);
    // The backoff was reset by the registration; this is retry 1 after it.
    assert_eq!(again.params.options.num_previous_attempts, 1);
    run.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_refusal_at_startup_stops_the_connector() {
    init_tracing();
    let edge = TestEdge::start().await;
    edge.refusals
        .lock()
        .unwrap()
        .push_back(ConnectionError::permanent("some permanent failure"));
    let (_, token) = transcript_token();
    let connector = Connector::new(connector_config(&edge, token, 2)).unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        connector.run(CancellationToken::new()),
    )
    .await
    .expect("stops")
    .unwrap_err();
    assert!(
        matches!(&err, ConnectorError::Refused(e) if e.cause == "some permanent failure"),
        "{err}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_unregisters_then_drains_in_flight_requests() {
    init_tracing();
    let origin = TestOrigin::start().await;
    let edge = TestEdge::start().await;
    let (_, token) = transcript_token();
    let run = start(connector_config(&edge, token, 1));
    let conn = edge.next_conn().await;
    conn.push_config(
        &edge.pool,
        1,
        &format!(r#"{{"ingress":[{{"service":"http://{}"}}]}}"#, origin.addr),
    )
    .await;

    let mut req = get("app.test", "/submit");
    req.metadata[0] = Metadata::new("HttpMethod", "POST");
    req.metadata
        .push(Metadata::new("HttpHeader:Content-Length", "10"));
    let (mut send, mut recv) = conn.open(&req).await;
    send.write_all(b"hello").await.unwrap();
    // In flight: the origin has the request head.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !origin.hits().iter().any(|h| h.path == "/submit") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "request reached the origin"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    run.shutdown.cancel();
    edge.wait_events(|e| e.contains(&EdgeEvent::Unregistered(0)))
        .await;
    assert_eq!(run.state.ready_connections(), 0);
    assert!(!run.task.is_finished(), "the request is still in flight");

    // The in-flight request completes after unregistration.
    send.write_all(b"world").await.unwrap();
    send.finish().unwrap();
    let (resp, mut body) = read_response(&mut recv).await;
    body.extend(recv.read_to_end(1 << 20).await.unwrap());
    assert_eq!(resp.error, "");
    assert!(String::from_utf8(body).unwrap().starts_with("got 10 bytes"));
    tokio::time::timeout(Duration::from_secs(10), run.task)
        .await
        .expect("connector stops once drained")
        .unwrap()
        .unwrap();
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_ready_and_healthcheck() {
    init_tracing();
    let edge = TestEdge::start().await;
    let (_, token) = transcript_token();
    // Keep the edge refusing (Unauthorized) so the connector stays unready.
    edge.refusals
        .lock()
        .unwrap()
        .push_back(ConnectionError::permanent(ConnectionError::UNKNOWN_TUNNEL));
    let connector = Connector::new(connector_config(&edge, token, 1)).unwrap();
    let listener = culvert_connector::metrics::bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let metrics = tokio::spawn(culvert_connector::metrics::serve(
        listener,
        connector.state(),
        shutdown.clone(),
    ));
    let id = connector.connector_id();
    let (status, body) = http_get(addr, "/ready").await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        format!(r#"{{"status":503,"readyConnections":0,"connectorId":"{id}"}}"#)
    );
    assert_eq!(http_get(addr, "/healthcheck").await, (200, "OK\n".into()));

    let state = connector.state();
    let task = tokio::spawn(connector.run(shutdown.clone()));
    let _conn = edge.next_conn().await;
    state.wait_ready(1).await;
    let (status, body) = http_get(addr, "/ready").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        format!(r#"{{"status":200,"readyConnections":1,"connectorId":"{id}"}}"#)
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
    metrics.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_with_token_extras_and_hello_world() {
    use clap::Parser;

    #[derive(Parser)]
    #[command(name = "culvert")]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }
    #[derive(clap::Subcommand)]
    enum Top {
        Tunnel(culvert_connector::TunnelCommand),
    }

    init_tracing();
    let edge = TestEdge::start().await;
    let (_, token) = transcript_token();
    // Only --token: the edge address and CA come from culvert's token keys.
    let tok = culvert_connector::TokenExtras {
        edge: vec![edge.addr.to_string()],
        ca_pem: Some(edge.ca_pem.clone()),
    }
    .encode_with(&token);
    let cli = Cli::try_parse_from([
        "culvert",
        "tunnel",
        "--hello-world",
        "--ha-connections",
        "1",
        "run",
        "--token",
        &tok,
    ])
    .unwrap();
    let Top::Tunnel(cmd) = cli.cmd;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(culvert_connector::cli::run_tunnel_command_until(
        cmd,
        shutdown.clone(),
    ));
    let conn = edge.next_conn().await;
    let (resp, body) = conn.request(&get("hello.test", "/"), b"").await;
    assert!(meta_pairs(&resp.metadata).contains(&("HttpStatus".into(), "200".into())));
    assert!(String::from_utf8(body).unwrap().contains("Congrats"));
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
