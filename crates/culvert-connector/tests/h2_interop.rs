//! Our connector over the HTTP/2 transport against a fake edge that replays
//! what the recorded Go edge sent in h2-01/02/03/06 (its capnp bytes come
//! from go-capnproto2, the library cloudflared uses): TLS on TCP (test CA,
//! no ALPN), the edge as HTTP/2 client, a real origin behind the connector.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use culvert_connector::{Connector, ConnectorConfig, TransportProtocol};
use culvert_proto::framing::{self, Limits, MessageSplitter};
use culvert_proto::h2::{RESPONSE_HEADERS, RESPONSE_META, deserialize_headers};
use culvert_proto::registration::Method;
use culvert_proto::rpc::{RpcSummary, Target, TunnelCall, TunnelReturn, encode_return};
use futures::StreamExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

const T: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(T, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn event(t: &Value, seq: u64) -> &Value {
    t["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["seq"].as_u64() == Some(seq))
        .unwrap_or_else(|| panic!("no event {seq}"))
}

/// The capnp messages of one recorded h2 DATA frame.
fn rpc_bytes(t: &Value, seq: u64) -> Vec<u8> {
    event(t, seq)["rpc_messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| unhex(m["hex"].as_str().unwrap()))
        .collect()
}

fn text(t: &Value, seq: u64) -> String {
    event(t, seq)["decoded"]["text"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn body_of(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

struct Frames {
    body: Incoming,
    splitter: MessageSplitter,
    pending: std::collections::VecDeque<Vec<u8>>,
}

impl Frames {
    async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(f) = self.pending.pop_front() {
                return Some(f);
            }
            let frame = within("control bytes", self.body.frame()).await?.ok()?;
            if let Ok(d) = frame.into_data() {
                self.pending.extend(self.splitter.push(&d).unwrap());
            }
        }
    }

    async fn summary(&mut self) -> Option<(RpcSummary, Vec<u8>)> {
        let f = self.next().await?;
        let (s, _) = RpcSummary::decode(&f, &Limits::CONTROL_STREAM)
            .unwrap()
            .unwrap();
        Some((s, f))
    }
}

async fn send(s: &mut SendRequest<Body>, req: Request<Body>) -> Response<Incoming> {
    within("ready", s.ready()).await.unwrap();
    within("response", s.send_request(req)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_recorded_go_edge_over_http2() {
    init_tracing();
    let origin = TestOrigin::start().await;
    let (ca_pem, chain, key) = test_pki();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    let (_, token) = transcript_token();
    let mut cfg = ConnectorConfig::new(token.clone(), vec![addr.to_string()]);
    cfg.ca_pem = Some(ca_pem.into_bytes());
    cfg.ha_connections = 1;
    cfg.grace_period = Duration::from_secs(5);
    cfg.protocol = TransportProtocol::Http2;
    let connector = Connector::new(cfg).unwrap();
    let state = connector.state();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(connector.run(shutdown.clone()));

    // TLS as h2-01 saw it: SNI h2.cftunnel.com, no ALPN.
    let (tcp, _) = within("connector dials", listener.accept()).await.unwrap();
    let stream = within(
        "TLS",
        tokio_rustls::TlsAcceptor::from(Arc::new(tls)).accept(tcp),
    )
    .await
    .unwrap();
    assert_eq!(stream.get_ref().1.server_name(), Some("h2.cftunnel.com"));
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    let (mut h2, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(4 * 1024 * 1024)
        .handshake::<_, Body>(TokioIo::new(stream))
        .await
        .unwrap();
    let conn_task = tokio::spawn(conn);

    // h2-01: the control stream; the Go edge's Returns, byte for byte.
    let reg = transcript("h2-01-registration.json");
    let (edge_out, rx) = mpsc::channel::<Bytes>(8);
    let req_body = StreamBody::new(
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
            .map(|b| Ok::<_, std::io::Error>(Frame::data(b))),
    );
    let control_req = Request::builder()
        .method("GET")
        .uri("https://h2.cftunnel.com/")
        .header("cf-cloudflared-proxy-connection-upgrade", "control-stream")
        .header("user-agent", "Go-http-client/2.0")
        .body(req_body.boxed_unsync())
        .unwrap();
    let resp = send(&mut h2, control_req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let mut control = Frames {
        body: resp.into_body(),
        splitter: MessageSplitter::new(Limits::CONTROL_STREAM),
        pending: Default::default(),
    };
    let (boot, boot_bytes) = control.summary().await.unwrap();
    assert_eq!(boot, RpcSummary::Bootstrap { question_id: 0 });
    assert_eq!(
        boot_bytes,
        rpc_bytes(&reg, 11),
        "Bootstrap as cloudflared's"
    );
    let call = control.next().await.unwrap();
    let (msg, _) = framing::decode_message(&call, &Limits::CONTROL_STREAM)
        .unwrap()
        .unwrap();
    let Some((1, Target::PromisedAnswer { question_id: 0, .. }, TunnelCall::RegisterConnection(p))) =
        TunnelCall::read_call(msg.get_root().unwrap()).unwrap()
    else {
        panic!("expected registerConnection pipelined on the bootstrap");
    };
    assert_eq!(p.auth.account_tag, token.account_tag);
    assert_eq!(p.auth.tunnel_secret, token.secret);
    assert_eq!(p.tunnel_id, token.tunnel_id);
    assert_eq!(p.conn_index, 0);
    // HTTP/2: our own socket's address.
    assert_eq!(
        p.options
            .origin_local_ip
            .map(|ip| ip.to_canonical().to_string()),
        Some("127.0.0.1".to_owned())
    );
    edge_out
        .send(Bytes::from(rpc_bytes(&reg, 13)))
        .await
        .unwrap();
    edge_out
        .send(Bytes::from(rpc_bytes(&reg, 14)))
        .await
        .unwrap();
    within("registered", state.wait_ready(1)).await;

    // A private TCP flow (Cf-Cloudflared-Proxy-Src) before warp-routing is
    // enabled: refused by the connector itself.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let tcp_req = |body: Body| {
        Request::builder()
            .uri(format!("http://{echo_addr}/"))
            .header("cf-cloudflared-proxy-src", "198.51.100.7")
            .body(body)
            .unwrap()
    };
    let resp = send(&mut h2, tcp_req(empty())).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()[RESPONSE_META], r#"{"src":"cloudflared"}"#);

    // h2-02: the recorded update-configuration request (origin patched in,
    // plus warp-routing), answered exactly as cloudflared did.
    let push = transcript("h2-02-config-push.json");
    let body = text(&push, 18).replace("127.0.0.1:18080", &origin.addr.to_string());
    let mut body: Value = serde_json::from_str(&body).unwrap();
    body["config"]["warp-routing"] = serde_json::json!({"enabled": true});
    let body = serde_json::to_string(&body).unwrap();
    let req = Request::builder()
        .method("PUT")
        .uri("https://h2.cftunnel.com/config")
        .header(
            "cf-cloudflared-proxy-connection-upgrade",
            "update-configuration",
        )
        .header("content-length", body.len())
        .body(body_of(body))
        .unwrap();
    let resp = send(&mut h2, req).await;
    assert_eq!(resp.status(), 200);
    let answer = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(answer, text(&push, 20).as_bytes());

    // h2-03: the recorded GET; headers come back serialised.
    let get = transcript("h2-03-http-get.json");
    let mut req = Request::builder().method("GET").uri("http://app.test/");
    for pair in event(&get, 21)["decoded"]["headers"].as_array().unwrap() {
        let (n, v) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
        if !n.starts_with(':') {
            req = req.header(n, v);
        }
    }
    let resp = send(&mut h2, req.body(empty()).unwrap()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[RESPONSE_META], r#"{"src":"origin"}"#);
    assert_eq!(
        resp.headers()["content-length"],
        INDEX_HTML.len().to_string()
    );
    let pairs = deserialize_headers(resp.headers()[RESPONSE_HEADERS].to_str().unwrap()).unwrap();
    let pairs: Vec<(String, String)> = pairs
        .into_iter()
        .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
        .collect();
    for want in [
        ("Content-Type", "text/html"),
        ("Server", "golden-origin/1.0"),
        ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
    ] {
        assert!(
            pairs.contains(&(want.0.to_owned(), want.1.to_owned())),
            "{want:?} in {pairs:?}"
        );
    }
    let page = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(page, INDEX_HTML.as_bytes());
    let hit = origin.hits().last().cloned().unwrap();
    assert_eq!(hit.path, "/");
    let seen = |n: &str| {
        hit.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(seen("host").as_deref(), Some("app.test"));
    assert_eq!(seen("cf-ray").as_deref(), Some("0000000000000001-LAB"));
    assert_eq!(
        seen("cf-warp-tag-id"),
        Some(state.connector_id().to_string())
    );

    // A body without Content-Length (HTTP/2 DATA frames only) streams
    // through both ways; an unmatched host gets the catch-all 404.
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = data
        .chunks(100_000)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let req = Request::builder()
        .method("POST")
        .uri("http://app.test/echo")
        .body(StreamBody::new(futures::stream::iter(chunks)).boxed_unsync())
        .unwrap();
    let resp = send(&mut h2, req).await;
    assert_eq!(resp.status(), 200);
    let echoed = within("echo", resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == data);
    let req = Request::builder()
        .uri("http://other.test/")
        .body(empty())
        .unwrap();
    let resp = send(&mut h2, req).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()[RESPONSE_META], r#"{"src":"origin"}"#);

    // Now the TCP flow goes through: raw bytes both ways.
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let up = StreamBody::new(
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
            .map(|b| Ok::<_, std::io::Error>(Frame::data(b))),
    );
    let resp = send(&mut h2, tcp_req(up.boxed_unsync())).await;
    assert_eq!(resp.status(), 200);
    let mut down = resp.into_body();
    for msg in [&b"SSH-2.0-test\r\n"[..], b"second chunk"] {
        tx.send(Bytes::copy_from_slice(msg)).await.unwrap();
        let mut got = Vec::new();
        while got.len() < msg.len() {
            let f = within("echo", down.frame()).await.unwrap().unwrap();
            got.extend_from_slice(&f.into_data().unwrap());
        }
        assert_eq!(got, msg);
    }
    // The edge ending its side ends the flow (no half-close).
    drop(tx);
    while let Some(f) = within("flow end", down.frame()).await {
        assert!(f.is_ok());
    }

    // h2-06: shutdown calls unregisterConnection on the bootstrap
    // capability; the Go edge's empty Return; then the control stream ends.
    shutdown.cancel();
    // First the registration's bookkeeping (Finish, Release).
    let mut bookkeeping = Vec::new();
    let (s, _call) = loop {
        let (s, f) = control.summary().await.expect("unregister Call");
        match s {
            RpcSummary::Finish { .. } | RpcSummary::Release { .. } => bookkeeping.push(s),
            s => break (s, f),
        }
    };
    // cloudflared targets importedCap(0); capnp-rpc-rust keeps using the
    // bootstrap promise, which it has not finished.
    let RpcSummary::Call {
        question_id,
        target: Target::ImportedCap(0) | Target::PromisedAnswer { question_id: 0, .. },
        method: Some(Method::UnregisterConnection),
        ..
    } = s
    else {
        panic!("expected unregisterConnection, got {s:?}");
    };
    assert!(
        !bookkeeping.contains(&RpcSummary::Finish {
            question_id: 0,
            release_result_caps: false
        }) || matches!(
            s,
            RpcSummary::Call {
                target: Target::ImportedCap(0),
                ..
            }
        ),
        "a finished bootstrap question must not be a call target: {bookkeeping:?} then {s:?}"
    );
    let bye = transcript("h2-06-graceful-shutdown.json");
    let ret = if question_id == 1 {
        rpc_bytes(&bye, 25)
    } else {
        encode_return(question_id, false, &TunnelReturn::Empty)
    };
    edge_out.send(Bytes::from(ret)).await.unwrap();
    let mut rest = Vec::new();
    while let Some((s, _)) = control.summary().await {
        rest.push(s);
    }
    assert!(
        rest.iter().all(|s| matches!(
            s,
            RpcSummary::Finish { .. } | RpcSummary::Release { .. } | RpcSummary::Abort { .. }
        )),
        "{rest:?}"
    );
    let r = within("connector stops", task).await.unwrap();
    assert!(r.is_ok(), "{r:?}");
    // The connector closed the TCP connection.
    within("connection closed", conn_task).await.unwrap().ok();
    drop(edge_out);
}
