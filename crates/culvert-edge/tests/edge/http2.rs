//! The HTTP/2 transport (h2-01/02/03/06): a fake cloudflared dials the
//! edge's TCP listener (same port number as QUIC) with TLS like 2023.7.3
//! (SNI `h2.cftunnel.com`, no ALPN, P-256 only), serves HTTP/2, and replays
//! the recorded capnp bytes and HTTP/2 answers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use culvert_proto::framing::{self, Limits, MessageSplitter};
use culvert_proto::registration::{ConnectionResponse, Method};
use culvert_proto::rpc::{RpcSummary, TunnelReturn};
use culvert_store::ConfigSource;
use futures::StreamExt as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Body as _, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::harness::*;

type Body = BoxBody<Bytes, std::io::Error>;
type Exchange = (Request<Incoming>, oneshot::Sender<Response<Body>>);

/// The bytes of one recorded h2 frame's capnp messages (the DATA payload).
fn rpc_bytes(t: &Value, seq: u64) -> Vec<u8> {
    let e = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["seq"].as_u64() == Some(seq))
        .unwrap_or_else(|| panic!("no event {seq}"));
    e["rpc_messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| unhex(m["hex"].as_str().unwrap()))
        .collect()
}

fn recorded(t: &Value, seq: u64) -> Value {
    t["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["seq"].as_u64() == Some(seq))
        .unwrap()["decoded"]
        .clone()
}

/// A cloudflared-like HTTP/2 server on a TLS connection it dialled; every
/// request the edge sends is handed to the test with a reply channel.
struct H2Fake {
    requests: mpsc::Receiver<Exchange>,
    task: tokio::task::JoinHandle<()>,
}

impl H2Fake {
    async fn dial(h: &Harness) -> H2Fake {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.kx_groups = vec![rustls::crypto::ring::kx_group::SECP256R1];
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(h.edge().ca_pem().as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        assert!(tls.alpn_protocols.is_empty());
        let addr = h.edge().h2_addr();
        assert_eq!(addr.port(), h.edge().quic_addr().port());
        let tcp = within("dial TCP", tokio::net::TcpStream::connect(addr))
            .await
            .unwrap();
        let stream = within(
            "TLS",
            tokio_rustls::TlsConnector::from(Arc::new(tls))
                .connect(ServerName::try_from("h2.cftunnel.com").unwrap(), tcp),
        )
        .await
        .unwrap();
        let (tx, requests) = mpsc::channel::<Exchange>(8);
        let svc =
            hyper::service::service_fn(move |req: Request<Incoming>| {
                let tx = tx.clone();
                async move {
                    let (reply, rx) = oneshot::channel();
                    tx.send((req, reply)).await.ok();
                    Ok::<_, std::convert::Infallible>(rx.await.unwrap_or_else(|_| {
                        Response::builder().status(500).body(full("")).unwrap()
                    }))
                }
            });
        let task = tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
        H2Fake { requests, task }
    }

    async fn next(&mut self) -> Exchange {
        within("edge request", self.requests.recv())
            .await
            .expect("connection open")
    }
}

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

/// The control stream as the fake sees it: our capnp bytes out, the edge's
/// capnp frames in.
struct Control {
    out: Option<mpsc::Sender<Bytes>>,
    body: Incoming,
    splitter: MessageSplitter,
    pending: std::collections::VecDeque<Vec<u8>>,
}

impl Control {
    async fn write(&mut self, b: Vec<u8>) {
        self.out
            .as_ref()
            .unwrap()
            .send(Bytes::from(b))
            .await
            .unwrap();
    }

    async fn next_frame(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(f) = self.pending.pop_front() {
                return Some(f);
            }
            let frame = within("read control", self.body.frame()).await?.ok()?;
            if let Ok(d) = frame.into_data() {
                self.pending.extend(self.splitter.push(&d).unwrap());
            }
        }
    }
}

/// h2-01: answers the edge's control-stream request and registers with the
/// recorded Bootstrap and (identity-patched) registerConnection Call.
async fn register(h: &Harness, fake: &mut H2Fake, connector: Uuid) -> (Control, Uuid) {
    let (req, reply) = fake.next().await;
    assert_eq!(req.method(), "GET");
    assert_eq!(
        req.headers()["cf-cloudflared-proxy-connection-upgrade"],
        "control-stream"
    );
    let (out, rx) = mpsc::channel::<Bytes>(8);
    let body =
        StreamBody::new(tokio_stream_of(rx).map(|b| Ok::<_, std::io::Error>(Frame::data(b))));
    reply
        .send(
            Response::builder()
                .header("content-type", "application/octet-stream")
                .body(BodyExt::boxed(body))
                .unwrap(),
        )
        .ok()
        .unwrap();
    let mut control = Control {
        out: Some(out),
        body: req.into_body(),
        splitter: MessageSplitter::new(Limits::CONTROL_STREAM),
        pending: Default::default(),
    };
    let t = transcript("h2-01-registration.json");
    // The h2 Call is byte-identical to quic-01's; patch in this identity.
    let quic_call = event(&transcript("quic-01-registration.json"), 3);
    let h2_call = rpc_bytes(&t, 12);
    assert_eq!(quic_call.len(), h2_call.len());
    assert_eq!(
        quic_call[..REC_CONNECTOR_OFFSET],
        h2_call[..REC_CONNECTOR_OFFSET]
    );
    let call = patched_register_call(
        &h.account,
        h.tunnel.id,
        &secret().try_into().unwrap(),
        connector,
        0,
    );
    // One capnp message per DATA frame, as cloudflared writes them.
    control.write(rpc_bytes(&t, 11)).await;
    control.write(call).await;

    let f = control.next_frame().await.expect("bootstrap Return");
    let (s, _) = RpcSummary::decode(&f, &Limits::CONTROL_STREAM)
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            s,
            RpcSummary::Return {
                answer_id: 0,
                kind: culvert_proto::rpc::ReturnKind::Results { cap_table_len: 1 },
                ..
            }
        ),
        "{s:?}"
    );
    let f = control
        .next_frame()
        .await
        .expect("registerConnection Return");
    let (msg, _) = framing::decode_message(&f, &Limits::CONTROL_STREAM)
        .unwrap()
        .unwrap();
    let Some((1, TunnelReturn::RegisterConnection(ConnectionResponse::Details(d)))) =
        TunnelReturn::read_return(msg.get_root().unwrap(), Method::RegisterConnection).unwrap()
    else {
        panic!("expected connectionDetails");
    };
    assert_eq!(d.location_name, "LAB");
    assert!(d.tunnel_is_remotely_managed);
    control.write(rpc_bytes(&t, 15)).await;
    control.write(rpc_bytes(&t, 16)).await;
    (control, d.uuid)
}

fn tokio_stream_of(rx: mpsc::Receiver<Bytes>) -> impl futures::Stream<Item = Bytes> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_01_02_03_06_registration_push_request_and_shutdown() {
    let h = Harness::new(ConfigSource::Cloudflare).await;
    let push = transcript("h2-02-config-push.json");
    let pushed: Value =
        serde_json::from_str(recorded(&push, 18)["text"].as_str().unwrap()).unwrap();
    let stored = h
        .store
        .put_config(
            &h.account,
            h.tunnel.id,
            &pushed["config"],
            ConfigSource::Cloudflare,
        )
        .await
        .unwrap();
    h.edge().control().config_updated(&stored);

    // h2-01: registration over the control stream.
    let connector = Uuid::new_v4();
    let mut fake = H2Fake::dial(&h).await;
    let (mut control, conn_id) = register(&h, &mut fake, connector).await;
    let conns = h.wait_connections(1).await;
    assert_eq!(conns[0].id, conn_id);
    assert_eq!(conns[0].origin_ip, "127.0.0.1");
    assert_eq!(h.edge().live_connections(), 1);

    // h2-02: the stored configuration is pushed as update-configuration.
    let (req, reply) = fake.next().await;
    assert_eq!(req.method(), "PUT");
    assert_eq!(
        req.headers()["cf-cloudflared-proxy-connection-upgrade"],
        "update-configuration"
    );
    let body = within("push body", req.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body, pushed);
    let answer = recorded(&push, 20)["text"].as_str().unwrap().to_owned();
    reply
        .send(
            Response::builder()
                .header("content-type", "text/plain; charset=utf-8")
                .body(full(answer))
                .unwrap(),
        )
        .ok()
        .unwrap();
    wait_config_version(&h, connector, 1).await;

    // h2-03: an eyeball GET becomes a plain HTTP/2 request; the answer's
    // head is rebuilt from cf-cloudflared-response-headers.
    let get = transcript("h2-03-http-get.json");
    let url = h.http_url("/");
    let eyeball = tokio::spawn(async move {
        Harness::eyeball()
            .await
            .get(url)
            .header("host", "app.test")
            .header("user-agent", "golden-edge/1")
            .header("accept", "*/*")
            .send()
            .await
            .unwrap()
    });
    let (req, reply) = fake.next().await;
    assert_eq!(req.method(), "GET");
    assert_eq!(req.uri().authority().unwrap().as_str(), "app.test");
    assert_eq!(req.uri().path(), "/");
    assert_eq!(req.uri().scheme_str(), Some("http"));
    assert!(req.body().is_end_stream(), "GET without a body: END_STREAM");
    let hd = req.headers();
    assert_eq!(hd["user-agent"], "golden-edge/1");
    assert_eq!(hd["accept"], "*/*");
    assert!(hd["cf-ray"].to_str().unwrap().ends_with("-LAB"));
    assert_eq!(hd["cf-connecting-ip"], "127.0.0.1");
    assert!(hd.get("cf-cloudflared-proxy-connection-upgrade").is_none());
    let mut resp = Response::builder().status(200);
    for pair in recorded(&get, 22)["headers"].as_array().unwrap() {
        let (n, v) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
        if !n.starts_with(':') {
            resp = resp.header(n, v);
        }
    }
    let page = recorded(&get, 23)["text"].as_str().unwrap().to_owned();
    reply
        .send(resp.body(full(page.clone())).unwrap())
        .ok()
        .unwrap();
    let got = within("eyeball", eyeball).await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-type"], "text/html");
    assert_eq!(got.headers()["server"], "golden-origin/1.0");
    assert_eq!(got.headers()["date"], "Mon, 01 Jan 2024 00:00:00 GMT");
    assert!(
        got.headers()
            .get("cf-cloudflared-response-headers")
            .is_none()
    );
    assert_eq!(got.text().await.unwrap(), page);

    // h2-06: unregister drains the connection at once; the TCP close
    // forgets it.
    let bye = transcript("h2-06-graceful-shutdown.json");
    control.write(rpc_bytes(&bye, 24)).await;
    let f = control.next_frame().await.expect("unregister Return");
    let (s, _) = RpcSummary::decode(&f, &Limits::CONTROL_STREAM)
        .unwrap()
        .unwrap();
    assert!(
        matches!(s, RpcSummary::Return { answer_id: 1, .. }),
        "{s:?}"
    );
    for seq in [26, 27, 28] {
        control.write(rpc_bytes(&bye, seq)).await;
    }
    control.out = None; // END_STREAM
    let resp = Harness::eyeball()
        .await
        .get(h.http_url("/"))
        .header("host", "app.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 530, "draining connections get no requests");
    assert_eq!(h.store.list_connectors(h.tunnel.id).await.unwrap().len(), 1);
    fake.task.abort();
    h.wait_connections(0).await;
    let deadline = tokio::time::Instant::now() + T;
    while h.edge().live_connections() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "registry emptied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.edge.unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_connections_that_never_register_are_closed() {
    let h = Harness::new(ConfigSource::Local).await;
    let mut fake = H2Fake::dial(&h).await;
    // Take the control stream but never send a byte: the registration
    // timeout (3 s here) closes the connection.
    let (req, reply) = fake.next().await;
    let (_out, rx) = mpsc::channel::<Bytes>(1);
    let body =
        StreamBody::new(tokio_stream_of(rx).map(|b| Ok::<_, std::io::Error>(Frame::data(b))));
    reply
        .send(Response::new(BodyExt::boxed(body)))
        .ok()
        .unwrap();
    drop(req);
    within("closed by the edge", fake.task).await.unwrap();
    assert_eq!(h.edge().live_connections(), 0);
}
