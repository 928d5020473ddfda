//! A test edge built from the recorded cloudflared transcripts, and a real
//! hyper origin, both on 127.0.0.1 port 0.
//!
//! The edge is a quinn server (test CA from rcgen, SNI `quic.cftunnel.com`,
//! ALPN `argotunnel`) that serves RegistrationServer with capnp-rpc on the
//! first bidi stream (recording the raw bytes it reads), opens data streams
//! with ConnectRequests like quic-03/04/05 and RPC streams for
//! `updateConfiguration` like quic-02.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{RpcSystem, twoparty};
use culvert_proto::connect::{ConnectRequest, ConnectResponse};
use culvert_proto::framing::Limits;
use culvert_proto::registration::{
    ConnectionDetails, ConnectionError, ConnectionResponse, RegisterConnectionParams,
    UpdateConfigurationParams, UpdateConfigurationResponse,
};
use culvert_proto::schema::tunnelrpc_capnp::{configuration_manager, registration_server};
use culvert_proto::stream::RPC_STREAM_SIGNATURE;
use culvert_proto::{Metadata, TunnelToken};
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::mpsc;
use tokio_util::task::LocalPoolHandle;
use uuid::Uuid;

pub const LOCATION: &str = "LAB";

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// `testdata/cloudflared-2023.7.3` at the workspace root (or
/// `CULVERT_TESTDATA`).
pub fn transcript(name: &str) -> serde_json::Value {
    let dir = std::env::var("CULVERT_TESTDATA")
        .map(PathBuf::from)
        .ok()
        .or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .ancestors()
                .map(|a| a.join("testdata/cloudflared-2023.7.3"))
                .find(|p| p.is_dir())
        })
        .expect("transcripts: set CULVERT_TESTDATA to testdata/cloudflared-2023.7.3");
    let raw = std::fs::read_to_string(dir.join(name)).expect("transcript readable");
    serde_json::from_str(&raw).expect("transcript JSON")
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The edge→cloudflared ConnectRequest bytes recorded in a transcript.
pub fn recorded_connect_request(file: &str) -> ConnectRequest {
    let t = transcript(file);
    let ev = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "capnp-message" && e["dir"] == "edge->cloudflared")
        .expect("ConnectRequest event");
    let bytes = unhex(ev["hex"].as_str().unwrap());
    ConnectRequest::decode_message(&bytes, &Limits::DATA_STREAM)
        .unwrap()
        .unwrap()
        .0
}

/// The identity every transcript used (quic-01 `identity.token`).
pub fn transcript_token() -> (String, TunnelToken) {
    let t = transcript("quic-01-registration.json");
    let token = t["identity"]["token"].as_str().unwrap().to_owned();
    let decoded = TunnelToken::decode(&token).unwrap();
    (token, decoded)
}

/// What the test edge saw.
#[derive(Debug, Clone, PartialEq)]
pub enum EdgeEvent {
    Registered(RegisterConnectionParams),
    Refused(u8, String),
    Unregistered(u8),
}

/// A registered connection, as the edge sees it.
pub struct EdgeConn {
    pub conn: quinn::Connection,
    pub params: RegisterConnectionParams,
    /// Raw bytes the connector sent on the control stream (first 64 KiB).
    pub control_bytes: Arc<Mutex<Vec<u8>>>,
}

pub struct TestEdge {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub events: Arc<Mutex<Vec<EdgeEvent>>>,
    /// Answers for the next registrations (then ConnectionDetails).
    pub refusals: Arc<Mutex<VecDeque<ConnectionError>>>,
    pub conns: tokio::sync::Mutex<mpsc::UnboundedReceiver<EdgeConn>>,
    pub pool: LocalPoolHandle,
    endpoint: quinn::Endpoint,
}

impl Drop for TestEdge {
    fn drop(&mut self) {
        self.endpoint.close(quinn::VarInt::from_u32(0), b"");
    }
}

/// Records what a reader yields.
struct Tap<R> {
    inner: R,
    log: Arc<Mutex<Vec<u8>>>,
}

impl<R: futures::io::AsyncRead + Unpin> futures::io::AsyncRead for Tap<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = &p {
            let mut log = self.log.lock().unwrap();
            if log.len() < 64 * 1024 {
                log.extend_from_slice(&buf[..*n]);
            }
        }
        p
    }
}

struct Registrar {
    conn: quinn::Connection,
    events: Arc<Mutex<Vec<EdgeEvent>>>,
    refusals: Arc<Mutex<VecDeque<ConnectionError>>>,
    conns: mpsc::UnboundedSender<EdgeConn>,
    control_bytes: Arc<Mutex<Vec<u8>>>,
    conn_index: std::cell::Cell<u8>,
}

impl registration_server::Server for Registrar {
    async fn register_connection(
        self: capnp::capability::Rc<Self>,
        params: registration_server::RegisterConnectionParams,
        mut results: registration_server::RegisterConnectionResults,
    ) -> Result<(), capnp::Error> {
        let p = RegisterConnectionParams::read_from(params.get()?)
            .map_err(|e| capnp::Error::failed(e.to_string()))?;
        self.conn_index.set(p.conn_index);
        let refusal = self.refusals.lock().unwrap().pop_front();
        let resp = match refusal {
            Some(e) => {
                self.events
                    .lock()
                    .unwrap()
                    .push(EdgeEvent::Refused(p.conn_index, e.cause.clone()));
                ConnectionResponse::Error(e)
            }
            None => {
                self.events
                    .lock()
                    .unwrap()
                    .push(EdgeEvent::Registered(p.clone()));
                let _ = self.conns.send(EdgeConn {
                    conn: self.conn.clone(),
                    params: p,
                    control_bytes: Arc::clone(&self.control_bytes),
                });
                ConnectionResponse::Details(ConnectionDetails {
                    uuid: Uuid::new_v4(),
                    location_name: LOCATION.into(),
                    tunnel_is_remotely_managed: true,
                })
            }
        };
        resp.write_results(results.get());
        Ok(())
    }

    async fn unregister_connection(
        self: capnp::capability::Rc<Self>,
        _params: registration_server::UnregisterConnectionParams,
        _results: registration_server::UnregisterConnectionResults,
    ) -> Result<(), capnp::Error> {
        self.events
            .lock()
            .unwrap()
            .push(EdgeEvent::Unregistered(self.conn_index.get()));
        Ok(())
    }
}

pub fn test_pki() -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "culvert test edge CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(vec![
        "quic.cftunnel.com".to_owned(),
        "h2.cftunnel.com".to_owned(),
        "probe.cftunnel.com".to_owned(),
    ])
    .unwrap();
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &ca).unwrap();
    (
        ca.pem(),
        vec![leaf_cert.der().clone(), ca.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    )
}

impl TestEdge {
    pub async fn start() -> TestEdge {
        let (ca_pem, chain, key) = test_pki();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        tls.alpn_protocols = vec![b"argotunnel".to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(Duration::from_secs(30).try_into().unwrap()));
        server.transport_config(Arc::new(transport));
        let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let refusals = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        let pool = LocalPoolHandle::new(1);
        let ep = endpoint.clone();
        let (ev, rf, p) = (events.clone(), refusals.clone(), pool.clone());
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let (ev, rf, tx, p) = (ev.clone(), rf.clone(), tx.clone(), p.clone());
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    assert_eq!(
                        conn.handshake_data()
                            .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                            .and_then(|h| h.server_name),
                        Some("quic.cftunnel.com".to_owned())
                    );
                    let Ok((send, recv)) = conn.accept_bi().await else {
                        return;
                    };
                    let control_bytes = Arc::new(Mutex::new(Vec::new()));
                    let task = p.spawn_pinned(move || async move {
                        let tap = Tap {
                            inner: recv,
                            log: Arc::clone(&control_bytes),
                        };
                        let net = twoparty::VatNetwork::new(
                            tap,
                            send,
                            Side::Server,
                            Limits::CONTROL_STREAM.reader_options(),
                        );
                        let registrar: registration_server::Client =
                            capnp_rpc::new_client(Registrar {
                                conn,
                                events: ev,
                                refusals: rf,
                                conns: tx,
                                control_bytes,
                                conn_index: std::cell::Cell::new(0),
                            });
                        let _ = RpcSystem::new(Box::new(net), Some(registrar.client)).await;
                    });
                    let _ = task.await;
                });
            }
        });
        TestEdge {
            addr,
            ca_pem,
            events,
            refusals,
            conns: tokio::sync::Mutex::new(rx),
            pool,
            endpoint,
        }
    }

    /// The next registered connection.
    pub async fn next_conn(&self) -> EdgeConn {
        tokio::time::timeout(Duration::from_secs(20), self.conns.lock().await.recv())
            .await
            .expect("a connection registers in time")
            .expect("edge running")
    }

    pub fn events(&self) -> Vec<EdgeEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the event list.
    pub async fn wait_events(&self, pred: impl Fn(&[EdgeEvent]) -> bool) -> Vec<EdgeEvent> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ev = self.events();
            if pred(&ev) {
                return ev;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "edge events never matched: {ev:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Reads preamble + ConnectResponse, returning the bytes after it.
pub async fn read_response(recv: &mut quinn::RecvStream) -> (ConnectResponse, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((resp, used)) = ConnectResponse::decode(&buf, &Limits::DATA_STREAM).unwrap() {
            return (resp, buf[used..].to_vec());
        }
        let n = recv
            .read(&mut chunk)
            .await
            .unwrap()
            .expect("response head before FIN");
        buf.extend_from_slice(&chunk[..n]);
    }
}

impl EdgeConn {
    /// Opens a data stream and writes preamble + request in one write.
    pub async fn open(&self, req: &ConnectRequest) -> (quinn::SendStream, quinn::RecvStream) {
        let (mut send, recv) = self.conn.open_bi().await.unwrap();
        send.write_all(&req.encode()).await.unwrap();
        (send, recv)
    }

    /// A whole exchange: request + body + FIN, then the response and body.
    pub async fn request(&self, req: &ConnectRequest, body: &[u8]) -> (ConnectResponse, Vec<u8>) {
        let (mut send, mut recv) = self.open(req).await;
        send.write_all(body).await.unwrap();
        send.finish().unwrap();
        let (resp, mut rest) = read_response(&mut recv).await;
        rest.extend(recv.read_to_end(64 * 1024 * 1024).await.unwrap());
        (resp, rest)
    }

    /// quic-02: an RPC stream, Bootstrap + pipelined updateConfiguration.
    pub async fn push_config(
        &self,
        pool: &LocalPoolHandle,
        version: i32,
        config: &str,
    ) -> UpdateConfigurationResponse {
        let (mut send, recv) = self.conn.open_bi().await.unwrap();
        send.write_all(&RPC_STREAM_SIGNATURE).await.unwrap();
        let config = config.as_bytes().to_vec();
        pool.spawn_pinned(move || async move {
            let net = twoparty::VatNetwork::new(
                recv,
                send,
                Side::Client,
                Limits::RPC_STREAM.reader_options(),
            );
            let mut rpc = RpcSystem::new(Box::new(net), None);
            let client: configuration_manager::Client = rpc.bootstrap(Side::Server);
            let disconnector = rpc.get_disconnector();
            let rpc_task = tokio::task::spawn_local(rpc);
            let mut req = client.update_configuration_request();
            UpdateConfigurationParams { version, config }.write_to(req.get());
            let resp = req.send().promise.await.unwrap();
            let out = UpdateConfigurationResponse::read_results(resp.get().unwrap()).unwrap();
            drop(resp);
            drop(client);
            let _ = disconnector.await;
            let _ = rpc_task.await;
            out
        })
        .await
        .unwrap()
    }
}

pub fn meta_pairs(m: &[Metadata]) -> Vec<(String, String)> {
    let mut v: Vec<_> = m.iter().map(|m| (m.key.clone(), m.val.clone())).collect();
    v.sort();
    v
}

/// What the origin saw.
#[derive(Debug, Clone)]
pub struct OriginHit {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

pub const INDEX_HTML: &str =
    "<html><body><h1>golden origin</h1><p>index page for the transcripts</p></body></html>\n";

/// A real HTTP/1.1 origin like the transcripts' (fixed Date/Server):
/// `GET /` → INDEX_HTML; `POST /submit` → "got N bytes sha256=<hex>\n"
/// (hashing while streaming); `POST /echo` → the request body streamed back.
pub struct TestOrigin {
    pub addr: SocketAddr,
    pub hits: Arc<Mutex<Vec<OriginHit>>>,
}

type OriginResp = hyper::Response<http_body_util::combinators::BoxBody<Bytes, hyper::Error>>;

async fn origin_handle(
    req: hyper::Request<hyper::body::Incoming>,
    hits: Arc<Mutex<Vec<OriginHit>>>,
) -> Result<OriginResp, hyper::Error> {
    hits.lock().unwrap().push(OriginHit {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
    });
    let fixed = |b: hyper::http::response::Builder| {
        b.header("Date", "Mon, 01 Jan 2024 00:00:00 GMT")
            .header("Server", "golden-origin/1.0")
    };
    let resp =
        match (req.method().as_str(), req.uri().path()) {
            ("GET", "/") => fixed(hyper::Response::builder())
                .header("Content-Type", "text/html")
                .header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
                .body(
                    Full::new(Bytes::from(INDEX_HTML))
                        .map_err(|n| match n {})
                        .boxed(),
                ),
            ("POST", "/submit") => {
                let mut body = req.into_body();
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
                let mut n = 0usize;
                while let Some(frame) = body.frame().await {
                    if let Ok(d) = frame?.into_data() {
                        n += d.len();
                        ctx.update(&d);
                    }
                }
                let hex: String = ctx
                    .finish()
                    .as_ref()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                fixed(hyper::Response::builder())
                    .header("Content-Type", "text/plain")
                    .header("X-Echo", "yes")
                    .body(
                        Full::new(Bytes::from(format!("got {n} bytes sha256={hex}\n")))
                            .map_err(|n| match n {})
                            .boxed(),
                    )
            }
            ("POST", "/echo") => {
                let body = req.into_body();
                let stream = futures::stream::unfold(body, |mut b| async move {
                    b.frame().await.map(|f| (f, b))
                });
                fixed(hyper::Response::builder())
                    .header("Content-Type", "application/octet-stream")
                    .body(
                        StreamBody::new(futures::StreamExt::map(
                            stream,
                            |f: Result<Frame<Bytes>, hyper::Error>| f,
                        ))
                        .boxed(),
                    )
            }
            _ => hyper::Response::builder()
                .status(404)
                .body(Full::new(Bytes::new()).map_err(|n| match n {}).boxed()),
        };
    Ok(resp.unwrap())
}

impl TestOrigin {
    pub async fn start() -> TestOrigin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let h = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let h = h.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| origin_handle(req, h.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TestOrigin { addr, hits }
    }

    pub fn hits(&self) -> Vec<OriginHit> {
        self.hits.lock().unwrap().clone()
    }
}

/// A connector config for the test edge, with fast timings.
pub fn connector_config(
    edge: &TestEdge,
    token: TunnelToken,
    ha: u8,
) -> culvert_connector::ConnectorConfig {
    let mut c = culvert_connector::ConnectorConfig::new(token, vec![edge.addr.to_string()]);
    c.ca_pem = Some(edge.ca_pem.clone().into_bytes());
    c.ha_connections = ha;
    c.registration_interval = Duration::from_millis(50);
    c.grace_period = Duration::from_secs(5);
    c.backoff = culvert_connector::BackoffPolicy {
        base: Duration::from_millis(100),
        max_exponent: 3,
    };
    // This edge speaks QUIC only: no fallback to HTTP/2 after retries.
    c.protocol = culvert_connector::TransportProtocol::Quic;
    c
}
