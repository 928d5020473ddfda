//! Test harness: a real SQLite store in a temp dir, the edge on 127.0.0.1
//! port 0, and a fake cloudflared that replays the recorded 2023.7.3 bytes
//! (shared/testdata/cloudflared-2023.7.3) over real QUIC/TLS.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use culvert_edge::{EdgeConfig, RunningEdge, Tuning};
use culvert_proto::framing::{self, Limits, MessageSplitter};
use culvert_proto::registration::{ConnectionResponse, Method};
use culvert_proto::rpc::{RpcSummary, TunnelReturn};
use culvert_store::{ConfigSource, NewTunnel, Store, TunType, Tunnel};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use uuid::Uuid;

/// Every await in the tests is bounded by this: a hang fails, never blocks.
pub const T: Duration = Duration::from_secs(10);

pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(T, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

// ---- recorded transcripts -------------------------------------------------

pub fn transcript_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CULVERT_TESTDATA") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("testdata/cloudflared-2023.7.3"))
        .find(|p| p.is_dir())
        .expect("transcripts not found: set CULVERT_TESTDATA")
}

pub fn transcript(name: &str) -> Value {
    let path = transcript_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The bytes of event `seq` of a transcript.
pub fn event(t: &Value, seq: u64) -> Vec<u8> {
    let e = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["seq"].as_u64() == Some(seq))
        .unwrap_or_else(|| panic!("no event {seq}"));
    assert_ne!(e["truncated"].as_bool(), Some(true));
    unhex(e["hex"].as_str().unwrap())
}

pub const REC_ACCOUNT: &[u8] = b"0123456789abcdef0123456789abcdef";
pub const REC_TUNNEL: [u8; 16] = [
    0x5f, 0x3b, 0x7c, 0x1e, 0x8a, 0x2d, 0x4e, 0x6f, 0x9b, 0x1c, 0x2d, 0x3e, 0x4f, 0x5a, 0x6b, 0x7c,
];
/// Offset of the connector id in the recorded registerConnection Call.
pub const REC_CONNECTOR_OFFSET: usize = 328;

pub fn secret() -> Vec<u8> {
    (0u8..32).collect()
}

fn replace_once(buf: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let pos = buf
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern in recorded bytes");
    buf[pos..pos + to.len()].copy_from_slice(to);
}

/// quic-01's registerConnection Call with our identity patched in place
/// (all fields keep their length, so the capnp layout is untouched).
pub fn patched_register_call(
    account: &str,
    tunnel: Uuid,
    secret: &[u8; 32],
    connector: Uuid,
    conn_index: u8,
) -> Vec<u8> {
    let t = transcript("quic-01-registration.json");
    let mut call = event(&t, 3);
    replace_once(&mut call, REC_ACCOUNT, account.as_bytes());
    replace_once(&mut call, &REC_TUNNEL, tunnel.as_bytes());
    let rec_secret: Vec<u8> = (0u8..32).collect();
    replace_once(&mut call, &rec_secret, secret);
    call[REC_CONNECTOR_OFFSET..REC_CONNECTOR_OFFSET + 16].copy_from_slice(connector.as_bytes());
    // connIndex is the u8 at the start of the params' data section.
    if conn_index != 0 {
        let (msg, _) = framing::decode_message(&call, &Limits::CONTROL_STREAM)
            .unwrap()
            .unwrap();
        let Some((_, _, culvert_proto::rpc::TunnelCall::RegisterConnection(mut p))) =
            culvert_proto::rpc::TunnelCall::read_call(msg.get_root().unwrap()).unwrap()
        else {
            panic!("not a registerConnection call")
        };
        p.conn_index = conn_index;
        call = culvert_proto::rpc::encode_call(
            1,
            culvert_proto::rpc::Target::PromisedAnswer {
                question_id: 0,
                transform_len: 0,
            },
            &culvert_proto::rpc::TunnelCall::RegisterConnection(p),
        )
        .unwrap();
    }
    call
}

// ---- edge + store ---------------------------------------------------------

pub struct Harness {
    pub _dir: tempfile::TempDir,
    pub store: Store,
    pub edge: Option<RunningEdge>,
    pub account: String,
    pub tunnel: Tunnel,
    pub client: quinn::Endpoint,
    pub client_config: quinn::ClientConfig,
}

pub fn tuning() -> Tuning {
    Tuning {
        registration_timeout: Duration::from_secs(3),
        handshake_timeout: Duration::from_secs(5),
        response_timeout: Some(Duration::from_secs(3)),
        open_stream_timeout: Duration::from_millis(500),
        push_timeout: Duration::from_secs(5),
        ..Tuning::default()
    }
}

impl Harness {
    pub async fn new(config_src: ConfigSource) -> Harness {
        Self::with_tuning(config_src, tuning()).await
    }

    pub async fn with_tuning(config_src: ConfigSource, tuning: Tuning) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("culvert.db").display());
        let store = Store::open(&url).await.unwrap();
        let account = store.create_account("test").await.unwrap();
        let tunnel = store
            .create_tunnel(NewTunnel {
                account_id: account.id.clone(),
                name: "t1".into(),
                tun_type: TunType::CfdTunnel,
                config_src,
                secret: secret(),
                metadata: serde_json::json!({}),
                ha: false,
            })
            .await
            .unwrap();
        let config = EdgeConfig {
            edge_listen: "127.0.0.1:0".parse().unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("edge"),
            edge_cert: None,
            edge_key: None,
            tunnel_domain: culvert_edge::DEFAULT_TUNNEL_DOMAIN.into(),
            location: "LAB".into(),
            node_id: "node-a".into(),
            management: Default::default(),
            https: None,
        };
        let edge = culvert_edge::start_with(config, store.clone(), tuning)
            .await
            .unwrap();
        let client_config = client_config(edge.ca_pem());
        let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        Harness {
            _dir: dir,
            store,
            edge: Some(edge),
            account: account.id,
            tunnel,
            client,
            client_config,
        }
    }

    pub fn edge(&self) -> &RunningEdge {
        self.edge.as_ref().unwrap()
    }

    pub async fn dial(&self) -> quinn::Connection {
        self.dial_with(self.client_config.clone()).await
    }

    pub async fn dial_with(&self, cfg: quinn::ClientConfig) -> quinn::Connection {
        within(
            "dial",
            self.client
                .connect_with(cfg, self.edge().quic_addr(), "quic.cftunnel.com")
                .unwrap(),
        )
        .await
        .unwrap()
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.edge().http_addr(), path)
    }

    /// Registers a fake connector connection with the tunnel's identity.
    pub async fn register(&self, connector: Uuid, conn_index: u8) -> Fake {
        let conn = self.dial().await;
        let mut fake = Fake::open(conn).await;
        let call = patched_register_call(
            &self.account,
            self.tunnel.id,
            &secret().try_into().unwrap(),
            connector,
            conn_index,
        );
        let resp = fake.register_with(&call).await;
        let ConnectionResponse::Details(d) = resp else {
            panic!("registration refused: {resp:?}")
        };
        fake.conn_id = d.uuid;
        fake
    }

    pub async fn wait_connections(&self, n: usize) -> Vec<culvert_store::ConnectionInfo> {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let conns: Vec<_> = self
                .store
                .list_connectors(self.tunnel.id)
                .await
                .unwrap()
                .into_iter()
                .flat_map(|c| c.conns)
                .collect();
            if conns.len() == n {
                return conns;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "expected {n} connections in the store, have {}",
                    conns.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn eyeball() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            // Per read, not per request: streaming tests run longer than T.
            .read_timeout(T)
            .connect_timeout(T)
            .build()
            .unwrap()
    }
}

/// A QUIC client like cloudflared 2023.7.3: TLS 1.3, only secp256r1, ALPN
/// `argotunnel`, SNI `quic.cftunnel.com`, 5 s idle timeout, 1 s pings.
pub fn client_config(ca_pem: &str) -> quinn::ClientConfig {
    client_config_with(ca_pem, |_| {})
}

pub fn client_config_with(
    ca_pem: &str,
    tweak: impl FnOnce(&mut quinn::TransportConfig),
) -> quinn::ClientConfig {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![rustls::crypto::ring::kx_group::SECP256R1];
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"argotunnel".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(Duration::from_secs(5).try_into().unwrap()))
        .keep_alive_interval(Some(Duration::from_secs(1)));
    tweak(&mut transport);
    cfg.transport_config(Arc::new(transport));
    cfg
}

// ---- the fake cloudflared ---------------------------------------------------

pub struct Fake {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    splitter: MessageSplitter,
    pending: std::collections::VecDeque<Vec<u8>>,
    pub conn_id: Uuid,
}

impl Fake {
    pub async fn open(conn: quinn::Connection) -> Fake {
        let (send, recv) = within("open control stream", conn.open_bi()).await.unwrap();
        Fake {
            conn,
            send,
            recv,
            splitter: MessageSplitter::new(Limits::CONTROL_STREAM),
            pending: Default::default(),
            conn_id: Uuid::nil(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        within("write control", self.send.write_all(bytes))
            .await
            .unwrap();
    }

    /// The next capnp frame from the edge on the control stream; `None` at
    /// the end of the stream or when the connection closed.
    pub async fn next_frame(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(f) = self.pending.pop_front() {
                return Some(f);
            }
            let chunk = within("read control", self.recv.read_chunk(64 * 1024, true))
                .await
                .ok()??;
            self.pending
                .extend(self.splitter.push(&chunk.bytes).unwrap());
        }
    }

    /// Writes Bootstrap and the (patched) registerConnection Call back to
    /// back, as cloudflared does, and checks the two Returns structurally.
    pub async fn register_with(&mut self, call: &[u8]) -> ConnectionResponse {
        let t = transcript("quic-01-registration.json");
        let mut out = event(&t, 1); // Bootstrap{q=0}
        out.extend_from_slice(call);
        self.write(&out).await;

        let f = self.next_frame().await.expect("bootstrap Return");
        let (s, _) = RpcSummary::decode(&f, &Limits::CONTROL_STREAM)
            .unwrap()
            .unwrap();
        match s {
            RpcSummary::Return {
                answer_id: 0,
                kind: culvert_proto::rpc::ReturnKind::Results { cap_table_len: 1 },
                ..
            } => {}
            other => panic!("expected the bootstrap Return, got {other:?}"),
        }
        let f = self.next_frame().await.expect("registerConnection Return");
        let (msg, _) = framing::decode_message(&f, &Limits::CONTROL_STREAM)
            .unwrap()
            .unwrap();
        let Some((1, TunnelReturn::RegisterConnection(resp))) =
            TunnelReturn::read_return(msg.get_root().unwrap(), Method::RegisterConnection).unwrap()
        else {
            let (s, _) = RpcSummary::decode(&f, &Limits::CONTROL_STREAM)
                .unwrap()
                .unwrap();
            panic!("expected Return a=1 with results, got {s:?}");
        };
        // cloudflared's two Finish messages.
        let mut fin = event(&t, 5);
        fin.extend(event(&t, 6));
        self.write(&fin).await;
        resp
    }

    /// quic-06: the recorded unregisterConnection Call; expects the empty
    /// Return a=1.
    pub async fn unregister(&mut self) {
        let t = transcript("quic-06-graceful-shutdown.json");
        self.write(&event(&t, 39)).await;
        let f = self.next_frame().await.expect("unregister Return");
        let (s, _) = RpcSummary::decode(&f, &Limits::CONTROL_STREAM)
            .unwrap()
            .unwrap();
        assert!(
            matches!(
                s,
                RpcSummary::Return {
                    answer_id: 1,
                    kind: culvert_proto::rpc::ReturnKind::Results { .. },
                    ..
                }
            ),
            "{s:?}"
        );
        self.write(&event(&t, 41)).await; // Finish{q=1}
    }

    /// quic-06's end: Abort, FIN, CONNECTION_CLOSE 0.
    pub async fn shutdown(mut self) {
        let t = transcript("quic-06-graceful-shutdown.json");
        self.write(&event(&t, 42)).await;
        let _ = self.send.finish();
        self.conn.close(0u32.into(), b"");
    }
}

/// One edge-opened data stream as the fake sees it.
pub struct DataStream {
    pub request: culvert_proto::ConnectRequest,
    pub body: Vec<u8>,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

/// Accepts the next edge-opened stream and reads its preamble and
/// ConnectRequest (not the body).
pub async fn accept_data_stream(conn: &quinn::Connection) -> DataStream {
    let (send, mut recv) = within("accept data stream", conn.accept_bi())
        .await
        .unwrap();
    let mut buf = Vec::new();
    loop {
        let chunk = within("read ConnectRequest", recv.read_chunk(64 * 1024, true))
            .await
            .unwrap()
            .expect("ConnectRequest before FIN");
        buf.extend_from_slice(&chunk.bytes);
        if let Some((req, used)) =
            culvert_proto::ConnectRequest::decode(&buf, &Limits::DATA_STREAM).unwrap()
        {
            return DataStream {
                request: req,
                body: buf[used..].to_vec(),
                send,
                recv,
            };
        }
    }
}

impl DataStream {
    /// Reads the rest of the request body, up to the edge's FIN.
    pub async fn read_body_to_end(&mut self) -> Vec<u8> {
        let rest = within("read request body", self.recv.read_to_end(64 << 20))
            .await
            .unwrap();
        let mut body = std::mem::take(&mut self.body);
        body.extend(rest);
        body
    }

    pub fn metadata(&self) -> Vec<(String, String)> {
        self.request
            .metadata
            .iter()
            .map(|m| (m.key.clone(), m.val.clone()))
            .collect()
    }

    pub fn meta(&self, key: &str) -> Option<String> {
        self.request
            .metadata
            .iter()
            .find(|m| m.key == key)
            .map(|m| m.val.clone())
    }
}

pub async fn create_route(h: &Harness, zone: &str, hostname: &str) {
    let z = h.store.create_zone(&h.account, zone).await.unwrap();
    h.store
        .upsert_route(&z, hostname, h.tunnel.id, false)
        .await
        .unwrap();
}

/// An edge-opened RPC stream (config push) as the fake sees it.
pub struct PushPeer {
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    splitter: MessageSplitter,
    pending: std::collections::VecDeque<Vec<u8>>,
}

/// Accepts the next edge-opened stream and checks the RPC signature.
pub async fn accept_push(conn: &quinn::Connection) -> PushPeer {
    let (send, mut recv) = within("accept push stream", conn.accept_bi())
        .await
        .unwrap();
    let mut sig = [0u8; 6];
    within("read signature", recv.read_exact(&mut sig))
        .await
        .unwrap();
    assert_eq!(sig, culvert_proto::stream::RPC_STREAM_SIGNATURE);
    PushPeer {
        send,
        recv,
        splitter: MessageSplitter::new(Limits::RPC_STREAM),
        pending: Default::default(),
    }
}

impl PushPeer {
    pub async fn next_frame(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(f) = self.pending.pop_front() {
                return Some(f);
            }
            let chunk = within("read push", self.recv.read_chunk(64 * 1024, true))
                .await
                .ok()??;
            self.pending
                .extend(self.splitter.push(&chunk.bytes).unwrap());
        }
    }

    /// Reads the Bootstrap and the updateConfiguration Call; returns the
    /// Call's frame and params.
    pub async fn read_update(
        &mut self,
    ) -> (
        Vec<u8>,
        culvert_proto::registration::UpdateConfigurationParams,
    ) {
        let boot = self.next_frame().await.expect("Bootstrap");
        let (s, _) = RpcSummary::decode(&boot, &Limits::RPC_STREAM)
            .unwrap()
            .unwrap();
        assert_eq!(s, RpcSummary::Bootstrap { question_id: 0 });
        let call = self.next_frame().await.expect("Call");
        let (msg, _) = framing::decode_message(&call, &Limits::RPC_STREAM)
            .unwrap()
            .unwrap();
        let Some((
            1,
            culvert_proto::rpc::Target::PromisedAnswer { question_id: 0, .. },
            culvert_proto::rpc::TunnelCall::UpdateConfiguration(p),
        )) = culvert_proto::rpc::TunnelCall::read_call(msg.get_root().unwrap()).unwrap()
        else {
            panic!("expected updateConfiguration on the bootstrap promise")
        };
        (call, p)
    }

    /// Answers with the recorded bootstrap Return and an
    /// `UpdateConfigurationResponse`, then drains the edge's teardown up to
    /// its FIN and FINs back. Returns the teardown messages.
    pub async fn answer(&mut self, applied: i32) -> Vec<RpcSummary> {
        let t = transcript("quic-02-config-push.json");
        let mut out = event(&t, 10);
        if applied == 1 {
            out.extend(event(&t, 12));
        } else {
            out.extend(culvert_proto::rpc::encode_return(
                1,
                false,
                &TunnelReturn::UpdateConfiguration(
                    culvert_proto::registration::UpdateConfigurationResponse {
                        latest_applied_version: applied,
                        err: String::new(),
                    },
                ),
            ));
        }
        within("answer push", self.send.write_all(&out))
            .await
            .unwrap();
        let mut rest = Vec::new();
        while let Some(f) = self.next_frame().await {
            rest.push(
                RpcSummary::decode(&f, &Limits::RPC_STREAM)
                    .unwrap()
                    .unwrap()
                    .0,
            );
        }
        let _ = self.send.finish();
        rest
    }
}

pub async fn wait_config_version(h: &Harness, connector: Uuid, version: i64) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let v = h
            .store
            .get_connector(h.tunnel.id, connector)
            .await
            .unwrap()
            .map(|c| c.config_version);
        if v == Some(version) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("connector {connector}: config_version {v:?}, want {version}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True if the edge opens no stream on `conn` within `d`.
pub async fn no_stream_within(conn: &quinn::Connection, d: Duration) -> bool {
    tokio::time::timeout(d, conn.accept_bi()).await.is_err()
}
