//! Log streaming end to end: the real server (API + edge management host),
//! our connector in process with the management tracing layer installed, a
//! real origin, and `culvert tail`'s client — all on 127.0.0.1 port 0.

mod common;
#[path = "common/origin.rs"]
mod origin;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Backend, TestServer, call};
use culvert::tail::{LogSession, Target};
use culvert_connector::connector::{Connector, ConnectorConfig, ConnectorState};
use culvert_connector::management::protocol::{EventType, Filters, LogEntry, LogLevel};
use culvert_proto::TunnelToken;
use reqwest::Method;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const MGMT: &str = "management.cfargotunnel.localhost";

fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::registry()
            .with(culvert_connector::management::layer::layer())
            .try_init();
    });
}

struct Setup {
    s: TestServer,
    _origin: origin::Origin,
    tunnel: String,
    host: String,
    connector_id: uuid::Uuid,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), culvert_connector::error::ConnectorError>>,
}

impl Setup {
    async fn new(name: &str) -> Setup {
        Self::new_with(name, |_| {}).await
    }

    async fn new_with(name: &str, tweak: impl FnOnce(&mut culvert::server::ServerConfig)) -> Setup {
        init_tracing();
        let s = TestServer::start_with(Backend::Sqlite, tweak).await;
        let origin = origin::start().await;
        let host = format!("{name}.example.test");
        let (status, body) = call(
            s.req(Method::POST, &s.acct("/cfd_tunnel"))
                .json(&json!({"name": name, "config_src": "cloudflare"})),
        )
        .await;
        assert_eq!(status, 200);
        let tunnel = body["result"]["id"].as_str().unwrap().to_string();
        let token = body["result"]["token"].as_str().unwrap().to_string();
        let config = json!({"config": {"ingress": [
            {"hostname": host, "service": format!("http://{}", origin.addr)},
            {"service": "http_status:404"}
        ]}});
        let (status, _) = call(
            s.req(
                Method::PUT,
                &s.acct(&format!("/cfd_tunnel/{tunnel}/configurations")),
            )
            .json(&config),
        )
        .await;
        assert_eq!(status, 200);
        let server = s.server.as_ref().unwrap();
        let mut cfg = ConnectorConfig::new(
            TunnelToken::decode(&token).unwrap(),
            vec![server.edge_addr.to_string()],
        );
        cfg.ca_pem = Some(server.edge_ca_pem.as_bytes().to_vec());
        cfg.ha_connections = 2;
        cfg.registration_interval = Duration::from_millis(20);
        cfg.grace_period = Duration::from_secs(1);
        let connector = Connector::new(cfg).unwrap();
        let connector_id = connector.connector_id();
        let state: Arc<ConnectorState> = connector.state();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(connector.run(cancel.clone()));
        tokio::time::timeout(Duration::from_secs(20), state.wait_ready(2))
            .await
            .expect("connector registered");
        let setup = Setup {
            s,
            _origin: origin,
            tunnel,
            host,
            connector_id,
            cancel,
            task,
        };
        // The remote configuration must have reached the connector.
        for _ in 0..100 {
            if setup.get("/hello").await == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        setup
    }

    fn target(&self) -> Target {
        Target {
            host: MGMT.into(),
            connect: Some(self.s.server.as_ref().unwrap().http_addr.to_string()),
            plaintext: true,
            cacert: None,
        }
    }

    async fn api_token(&self) -> String {
        let (status, body) = call(
            self.s
                .req(
                    Method::POST,
                    &self
                        .s
                        .acct(&format!("/cfd_tunnel/{}/management", self.tunnel)),
                )
                .json(&json!({"resources": ["logs"]})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        body["result"].as_str().unwrap().to_string()
    }

    async fn keys(&self) -> culvert_api::ManagementKeys {
        culvert_api::ManagementKeys::load_or_create(self.s.store())
            .await
            .unwrap()
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    async fn token_for(&self, actor: &str) -> String {
        self.keys()
            .await
            .issue(
                self.tunnel.parse().unwrap(),
                &self.s.account,
                actor,
                vec!["logs".into()],
                Self::now(),
            )
            .unwrap()
    }

    async fn get(&self, path: &str) -> u16 {
        let addr = self.s.server.as_ref().unwrap().http_addr;
        self.s
            .client
            .get(format!("http://{addr}{path}"))
            .header("host", &self.host)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    async fn stop(self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        self.s.stop().await;
    }
}

fn all() -> Filters {
    Filters {
        events: vec![],
        level: Some(LogLevel::Debug),
        sampling: 1.0,
    }
}

/// Waits for the request entry of `path` (the span summary with a status).
async fn wait_request(session: &mut LogSession, path: &str) -> LogEntry {
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => panic!("no log entry for {path}"),
            r = session.next_logs() => {
                let logs = r.unwrap().expect("session still open");
                for e in logs {
                    if e.event == EventType::Http
                        && e.fields.get("path").and_then(|p| p.as_str()) == Some(path)
                        && e.fields.contains_key("duration_ms")
                    {
                        return e;
                    }
                }
            }
        }
    }
}

/// Entries seen within `window`.
async fn drain(session: &mut LogSession, window: Duration) -> Vec<LogEntry> {
    let mut seen = Vec::new();
    let deadline = tokio::time::sleep(window);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return seen,
            r = session.next_logs() => match r.unwrap() {
                Some(l) => seen.extend(l),
                None => return seen,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_appear_with_their_status() {
    let st = Setup::new("tail-requests").await;
    let token = st.api_token().await;
    let mut session = LogSession::connect(&st.target(), &token, None)
        .await
        .unwrap();
    session.start(all()).await.unwrap();
    // The session has started once its own "streaming logs" line arrives.
    let first = drain(&mut session, Duration::from_millis(300)).await;
    assert!(
        first.iter().any(|e| e.message.contains("streaming logs")),
        "{first:?}"
    );

    let mut latencies = Vec::new();
    for (i, (path, status)) in [("/hello", 200), ("/nothing-here", 404), ("/hello", 200)]
        .into_iter()
        .enumerate()
    {
        let path = if i == 2 { "/hello?again=1" } else { path };
        let started = Instant::now();
        assert_eq!(st.get(path).await, status);
        let p = path.split('?').next().unwrap();
        let e = wait_request(&mut session, p).await;
        latencies.push(started.elapsed());
        assert_eq!(e.fields["status"], status, "{e:?}");
        assert_eq!(e.fields["method"], "GET");
        assert_eq!(e.fields["host"], st.host.as_str());
        assert_eq!(e.level, LogLevel::Debug);
        assert!(e.message.contains(&status.to_string()), "{}", e.message);
    }
    eprintln!("request -> log line latency (incl. the request itself): {latencies:?}");
    session.stop().await.unwrap();
    st.stop().await;
}

/// A latency figure: N sequential requests, time from sending each to its
/// log line arriving at the tail client.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn measure_request_to_log_latency() {
    let st = Setup::new("tail-latency").await;
    let token = st.api_token().await;
    let mut session = LogSession::connect(&st.target(), &token, None)
        .await
        .unwrap();
    session
        .start(Filters {
            events: vec![EventType::Http],
            ..all()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let n = 50;
    let mut us: Vec<u128> = Vec::new();
    let mut after: Vec<u128> = Vec::new();
    for i in 0..n {
        let path = format!("/lat{i}");
        let started = Instant::now();
        assert_eq!(st.get(&path).await, 404);
        let responded = started.elapsed();
        wait_request(&mut session, &path).await;
        let logged = started.elapsed();
        us.push(logged.as_micros());
        after.push(logged.saturating_sub(responded).as_micros());
    }
    us.sort_unstable();
    after.sort_unstable();
    eprintln!(
        "LATENCY response received -> log line received over {n} requests: p50={}us p90={}us max={}us",
        after[n / 2],
        after[n * 9 / 10],
        after[n - 1]
    );
    eprintln!(
        "LATENCY request sent -> log line received over {n} requests: p50={}us p90={}us max={}us",
        us[n / 2],
        us[n * 9 / 10],
        us[n - 1]
    );
    st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filters_are_honoured() {
    let st = Setup::new("tail-filters").await;
    let token = st.api_token().await;

    // Level: http request entries are debug, so `info` hides them.
    let mut s1 = LogSession::connect(&st.target(), &token, None)
        .await
        .unwrap();
    s1.start(Filters {
        level: Some(LogLevel::Info),
        ..all()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        assert_eq!(st.get("/hello").await, 200);
    }
    let seen = drain(&mut s1, Duration::from_millis(500)).await;
    assert!(seen.iter().all(|e| e.level >= LogLevel::Info), "{seen:?}");
    assert!(seen.iter().all(|e| e.event != EventType::Http), "{seen:?}");
    s1.stop().await.unwrap();
    drop(s1);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Events: only cloudflared events.
    let mut s2 = LogSession::connect(&st.target(), &token, None)
        .await
        .unwrap();
    s2.start(Filters {
        events: vec![EventType::Cloudflared],
        ..all()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(st.get("/hello").await, 200);
    let seen = drain(&mut s2, Duration::from_millis(500)).await;
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|e| e.event == EventType::Cloudflared),
        "{seen:?}"
    );
    s2.stop().await.unwrap();
    drop(s2);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Sampling: a tiny share keeps (almost surely) none of 20 requests,
    // while the same requests unsampled all show up.
    let mut s3 = LogSession::connect(&st.target(), &token, None)
        .await
        .unwrap();
    s3.start(Filters {
        events: vec![EventType::Http],
        sampling: 0.000_001,
        ..all()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..20 {
        assert_eq!(st.get("/hello").await, 200);
    }
    let seen = drain(&mut s3, Duration::from_millis(500)).await;
    assert!(seen.is_empty(), "{seen:?}");
    s3.stop().await.unwrap();
    st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_tokens_are_refused_by_the_edge() {
    let st = Setup::new("tail-tokens").await;
    let keys = st.keys().await;
    let tunnel: uuid::Uuid = st.tunnel.parse().unwrap();
    let now = Setup::now();
    let refused = |r: anyhow::Result<LogSession>| match r {
        Ok(_) => panic!("session accepted"),
        Err(e) => e.to_string(),
    };
    let t = st.target();

    let expired = keys
        .issue(tunnel, &st.s.account, "me", vec!["logs".into()], now - 7200)
        .unwrap();
    let e = refused(LogSession::connect(&t, &expired, None).await);
    assert!(e.contains("401") && e.contains("expired"), "{e}");

    // Signed by another key (another control plane's store).
    let other_dir = tempfile::tempdir().unwrap();
    let other_store =
        culvert_store::Store::open(&format!("sqlite://{}/o.db", other_dir.path().display()))
            .await
            .unwrap();
    let other = culvert_api::ManagementKeys::load_or_create(&other_store)
        .await
        .unwrap();
    let forged = other
        .issue(tunnel, &st.s.account, "me", vec!["logs".into()], now)
        .unwrap();
    let e = refused(LogSession::connect(&t, &forged, None).await);
    assert!(
        e.contains("401") && e.contains("invalid access_token"),
        "{e}"
    );

    let wrong_tunnel = keys
        .issue(
            uuid::Uuid::new_v4(),
            &st.s.account,
            "me",
            vec!["logs".into()],
            now,
        )
        .unwrap();
    let e = refused(LogSession::connect(&t, &wrong_tunnel, None).await);
    assert!(e.contains("404") && e.contains("tunnel not found"), "{e}");

    let wrong_account = keys
        .issue(
            tunnel,
            "0123456789abcdef0123456789abcdef",
            "me",
            vec!["logs".into()],
            now,
        )
        .unwrap();
    let e = refused(LogSession::connect(&t, &wrong_account, None).await);
    assert!(e.contains("404"), "{e}");

    let wrong_res = keys
        .issue(
            tunnel,
            &st.s.account,
            "me",
            vec!["host_details".into()],
            now,
        )
        .unwrap();
    let e = refused(LogSession::connect(&t, &wrong_res, None).await);
    assert!(e.contains("403"), "{e}");

    let e = refused(LogSession::connect(&t, "not-a-jwt", None).await);
    assert!(e.contains("401"), "{e}");

    let good = st.token_for("me").await;
    let e = refused(LogSession::connect(&t, &good, Some(&uuid::Uuid::new_v4().to_string())).await);
    assert!(
        e.contains("404") && e.contains("connector not found"),
        "{e}"
    );

    // No token at all: cloudflared's own error.
    let addr = st.s.server.as_ref().unwrap().http_addr;
    let r =
        st.s.client
            .get(format!("http://{addr}/logs"))
            .header("host", MGMT)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.text().await.unwrap(),
        r#"{"success":false,"errors":[{"code":1001,"message":"missing access_token query parameter"}]}"#
    );

    // The named connector and a good token work.
    let mut ok = LogSession::connect(&t, &good, Some(&st.connector_id.to_string()))
        .await
        .unwrap();
    ok.start(all()).await.unwrap();
    ok.stop().await.unwrap();
    st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_session_at_a_time() {
    let st = Setup::new("tail-sessions").await;
    let alice = st.token_for("alice").await;
    let bob = st.token_for("bob").await;
    let t = st.target();

    let mut a1 = LogSession::connect(&t, &alice, None).await.unwrap();
    a1.start(all()).await.unwrap();
    drain(&mut a1, Duration::from_millis(300)).await;

    // Another actor: refused with 4002.
    let mut b = LogSession::connect(&t, &bob, None).await.unwrap();
    b.start(all()).await.unwrap();
    while b.next_logs().await.unwrap().is_some() {}
    assert_eq!(b.closed.as_ref().map(|c| c.0), Some(4002), "{:?}", b.closed);
    assert_eq!(
        b.closed.as_ref().map(|c| c.1.as_str()),
        Some("limit exceeded for streaming sessions")
    );

    // The same actor pre-empts: the old session is closed, the new streams.
    let mut a2 = LogSession::connect(&t, &alice, None).await.unwrap();
    a2.start(all()).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while a1.next_logs().await.unwrap_or(None).is_some() {}
    })
    .await;
    assert!(closed.is_ok(), "the pre-empted session was not closed");
    assert_eq!(a1.closed.as_ref().map(|c| c.0), Some(1000));
    assert_eq!(st.get("/hello").await, 200);
    let e = wait_request(&mut a2, "/hello").await;
    assert_eq!(e.fields["status"], 200);

    // A first command other than start_streaming: 4001.
    a2.stop().await.unwrap();
    drop(a2);
    let mut c = LogSession::connect(&t, &alice, None).await.unwrap();
    c.stop().await.unwrap();
    while c.next_logs().await.unwrap().is_some() {}
    assert_eq!(c.closed.as_ref().map(|c| c.0), Some(4001));
    st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ping_and_host_details() {
    let st = Setup::new("tail-details").await;
    let token = st.api_token().await;
    let addr = st.s.server.as_ref().unwrap().http_addr;
    let r =
        st.s.client
            .get(format!("http://{addr}/ping?access_token={token}"))
            .header("host", MGMT)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    let r =
        st.s.client
            .get(format!("http://{addr}/host_details?access_token={token}"))
            .header("host", MGMT)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["connector_id"], st.connector_id.to_string());
    assert!(!v["hostname"].as_str().unwrap().is_empty());
    assert!(
        v["ip"]
            .as_str()
            .unwrap()
            .parse::<std::net::IpAddr>()
            .is_ok()
    );
    st.stop().await;
}

/// The value of one sample line (`name{labels} value`), 0 when absent.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_move_with_traffic_and_health_endpoints() {
    let st = Setup::new("obs-metrics").await;
    let server = st.s.server.as_ref().unwrap();
    let base = format!("http://{}", server.metrics_addr.unwrap());
    let scrape = || async {
        let r =
            st.s.client
                .get(format!("{base}/metrics"))
                .send()
                .await
                .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        r.text().await.unwrap()
    };
    let before = scrape().await;
    assert_eq!(sample(&before, "culvert_edge_connections"), 2, "{before}");
    assert_eq!(sample(&before, "culvert_edge_connectors"), 1);
    // Two of the four expected HA connections: degraded.
    assert_eq!(
        sample(&before, r#"culvert_tunnels{status="degraded"}"#),
        1,
        "{before}"
    );
    assert!(sample(&before, r#"culvert_edge_config_pushes_total{outcome="ok"}"#) >= 1);

    for _ in 0..5 {
        assert_eq!(st.get("/hello").await, 200);
    }
    assert_eq!(st.get("/nope").await, 404);
    // Unknown host: the edge's own 530 page, not a stream error.
    let addr = server.http_addr;
    let r =
        st.s.client
            .get(format!("http://{addr}/"))
            .header("host", "unknown.invalid")
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 530);
    let (status, _) = call(st.s.req(Method::GET, &st.s.acct("/cfd_tunnel"))).await;
    assert_eq!(status, 200);

    let after = scrape().await;
    let d = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(
        d(r#"culvert_edge_requests_total{status="200"}"#),
        5,
        "{after}"
    );
    assert_eq!(d(r#"culvert_edge_requests_total{status="404"}"#), 1);
    assert_eq!(d(r#"culvert_edge_requests_total{status="530"}"#), 1);
    assert!(d("culvert_edge_received_bytes_total") > 0);
    assert!(d("culvert_edge_sent_bytes_total") >= 5 * "hello from origin".len() as u64);
    assert!(
        sample(
            &after,
            r#"culvert_api_requests_total{route="/client/v4/accounts/{account_id}/cfd_tunnel",method="GET",status="200"}"#
        ) >= 1,
        "{after}"
    );

    // A tunnel whose connector is gone: a stream error is counted.
    let r =
        st.s.client
            .get(format!("http://{addr}/"))
            .header(
                "host",
                format!("{}.cfargotunnel.localhost", uuid::Uuid::new_v4()),
            )
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 530);
    let again = scrape().await;
    assert_eq!(
        sample(
            &again,
            r#"culvert_edge_stream_errors_total{kind="no_connection"}"#
        ) - sample(
            &after,
            r#"culvert_edge_stream_errors_total{kind="no_connection"}"#
        ),
        1,
        "{again}"
    );

    let r =
        st.s.client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    let r =
        st.s.client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    // With the store closed, not ready.
    st.s.store().close().await;
    let r =
        st.s.client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("store"));
    st.stop().await;
}

/// A CA and a leaf for `names`, written as `cert.pem` (leaf + CA) and
/// `key.pem` into `dir`; returns the CA PEM.
fn write_tls(dir: &std::path::Path, names: &[&str]) -> String {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
    // Key first, then the chain: a watcher never sees a new chain with the old key.
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    ca.pem()
}

/// One HTTPS request over a fresh TLS connection trusting `ca`.
async fn https_get(
    addr: std::net::SocketAddr,
    ca: &str,
    host: &str,
    path: &str,
) -> anyhow::Result<String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c?)?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_listener_serves_eyeballs_and_wss_tail_and_reloads_its_certificate() {
    let tls_dir = tempfile::tempdir().unwrap();
    let name = "tail-https";
    let host = format!("{name}.example.test");
    let ca1 = write_tls(tls_dir.path(), &[&host, MGMT]);
    let (cert, key) = (
        tls_dir.path().join("cert.pem"),
        tls_dir.path().join("key.pem"),
    );
    let st = Setup::new_with(name, |c| {
        c.https = Some(culvert_edge::HttpsOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert: cert.clone(),
            key: key.clone(),
        });
    })
    .await;
    let https = st.s.server.as_ref().unwrap().https_addr.unwrap();

    let resp = https_get(https, &ca1, &host, "/hello").await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("hello from origin"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("x-seen-forwarded-proto: https\r\n"),
        "{resp}"
    );

    // `culvert tail` over wss:// with the operator's CA.
    let token = st.api_token().await;
    let target = Target {
        host: MGMT.into(),
        connect: Some(https.to_string()),
        plaintext: false,
        cacert: Some(tls_dir.path().join("ca.pem")),
    };
    let mut session = LogSession::connect(&target, &token, None).await.unwrap();
    session.start(all()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = https_get(https, &ca1, &host, "/hello?tls=1").await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let e = wait_request(&mut session, "/hello").await;
    assert_eq!(e.fields["status"], 200);
    session.stop().await.unwrap();

    // A renewed certificate (from another CA) is picked up without restart.
    let ca2 = write_tls(tls_dir.path(), &[&host, MGMT]);
    let mut reloaded = false;
    for _ in 0..100 {
        if https_get(https, &ca2, &host, "/hello")
            .await
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "the new certificate was not served");
    assert!(https_get(https, &ca1, &host, "/hello").await.is_err());
    st.stop().await;
}
