//! Log streaming end to end: the real server (API + edge management host),
//! our connector in process with the management tracing layer installed, a
//! real origin, and `culvert tail`'s client — all on 127.0.0.1 port 0.

mod common;
#[path = "common/origin.rs"]
mod origin;
#[path = "common/tunnel.rs"]
mod tunnel;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Backend, TestServer, call, eventually, public};
use culvert::tail::{LogSession, Target};
use culvert_connector::management::protocol::{EventType, Filters, LogEntry, LogLevel};
use reqwest::Method;
use serde_json::json;
use tunnel::{ConnectorOptions, RunningConnector, start_connector, tunnel_for};

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
    connector: RunningConnector,
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
        let service = format!("http://{}", origin.addr);
        let (tunnel, token) = tunnel_for(&s, name, &host, &service).await;
        let connector = start_connector(&s, &token, ConnectorOptions::ha(2));
        connector.wait_ready(2).await;
        let setup = Setup {
            s,
            _origin: origin,
            tunnel,
            host,
            connector_id: connector.state.connector_id(),
            connector,
        };
        eventually("the remote configuration reached the connector", || async {
            setup.get("/hello").await == 200
        })
        .await;
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
        public(&self.s, &self.host, path)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    async fn stop(self) {
        self.connector.stop().await;
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

/// A session streaming with `filters`. The connector applies them
/// asynchronously and no entry marks that for every filter: wait a little.
async fn streaming(target: &Target, token: &str, filters: Filters) -> LogSession {
    let mut session = LogSession::connect(target, token, None).await.unwrap();
    session.start(filters).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    session
}

/// Stops `session` and gives the connector a moment to release it.
async fn end(mut session: LogSession) {
    session.stop().await.unwrap();
    drop(session);
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Reads until the server closes the session (within 5 s); its close code
/// and reason.
async fn close_of(session: &mut LogSession) -> (u16, String) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while session.next_logs().await.unwrap().is_some() {}
    })
    .await
    .expect("the session was closed");
    session.closed.clone().expect("a close frame")
}

/// Connecting with `token` (to `connector`) is refused with an error that
/// mentions each of `wants`.
async fn assert_refused(t: &Target, token: &str, connector: Option<&str>, wants: &[&str]) {
    match LogSession::connect(t, token, connector).await {
        Ok(_) => panic!("session accepted"),
        Err(e) => {
            let e = e.to_string();
            for w in wants {
                assert!(e.contains(w), "{w:?} not in {e}");
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
    let mut session = streaming(
        &st.target(),
        &token,
        Filters {
            events: vec![EventType::Http],
            ..all()
        },
    )
    .await;
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
    let mut s1 = streaming(
        &st.target(),
        &token,
        Filters {
            level: Some(LogLevel::Info),
            ..all()
        },
    )
    .await;
    for _ in 0..3 {
        assert_eq!(st.get("/hello").await, 200);
    }
    let seen = drain(&mut s1, Duration::from_millis(500)).await;
    assert!(seen.iter().all(|e| e.level >= LogLevel::Info), "{seen:?}");
    assert!(seen.iter().all(|e| e.event != EventType::Http), "{seen:?}");
    end(s1).await;

    // Events: only cloudflared events.
    let mut s2 = streaming(
        &st.target(),
        &token,
        Filters {
            events: vec![EventType::Cloudflared],
            ..all()
        },
    )
    .await;
    assert_eq!(st.get("/hello").await, 200);
    let seen = drain(&mut s2, Duration::from_millis(500)).await;
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|e| e.event == EventType::Cloudflared),
        "{seen:?}"
    );
    end(s2).await;

    // Sampling: a tiny share keeps (almost surely) none of 20 requests,
    // while the same requests unsampled all show up.
    let mut s3 = streaming(
        &st.target(),
        &token,
        Filters {
            events: vec![EventType::Http],
            sampling: 0.000_001,
            ..all()
        },
    )
    .await;
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
    let t = st.target();

    let expired = keys
        .issue(tunnel, &st.s.account, "me", vec!["logs".into()], now - 7200)
        .unwrap();
    assert_refused(&t, &expired, None, &["401", "expired"]).await;

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
    assert_refused(&t, &forged, None, &["401", "invalid access_token"]).await;

    let wrong_tunnel = keys
        .issue(
            uuid::Uuid::new_v4(),
            &st.s.account,
            "me",
            vec!["logs".into()],
            now,
        )
        .unwrap();
    assert_refused(&t, &wrong_tunnel, None, &["404", "tunnel not found"]).await;

    let wrong_account = keys
        .issue(
            tunnel,
            "0123456789abcdef0123456789abcdef",
            "me",
            vec!["logs".into()],
            now,
        )
        .unwrap();
    assert_refused(&t, &wrong_account, None, &["404"]).await;

    let wrong_res = keys
        .issue(
            tunnel,
            &st.s.account,
            "me",
            vec!["host_details".into()],
            now,
        )
        .unwrap();
    assert_refused(&t, &wrong_res, None, &["403"]).await;

    assert_refused(&t, "not-a-jwt", None, &["401"]).await;

    let good = st.token_for("me").await;
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_refused(&t, &good, Some(&unknown), &["404", "connector not found"]).await;

    // No token at all: cloudflared's own error.
    let r = public(&st.s, MGMT, "/logs").send().await.unwrap();
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
    assert_eq!(
        close_of(&mut b).await,
        (4002, "limit exceeded for streaming sessions".to_string())
    );

    // The same actor pre-empts: the old session is closed, the new streams.
    let mut a2 = LogSession::connect(&t, &alice, None).await.unwrap();
    a2.start(all()).await.unwrap();
    assert_eq!(close_of(&mut a1).await.0, 1000, "the pre-empted session");
    assert_eq!(st.get("/hello").await, 200);
    let e = wait_request(&mut a2, "/hello").await;
    assert_eq!(e.fields["status"], 200);

    // A first command other than start_streaming: 4001.
    a2.stop().await.unwrap();
    drop(a2);
    let mut c = LogSession::connect(&t, &alice, None).await.unwrap();
    c.stop().await.unwrap();
    assert_eq!(close_of(&mut c).await.0, 4001);
    st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ping_and_host_details() {
    let st = Setup::new("tail-details").await;
    let token = st.api_token().await;
    let management =
        |path: &str| public(&st.s, MGMT, &format!("{path}?access_token={token}")).send();
    assert_eq!(management("/ping").await.unwrap().status(), 200);
    let r = management("/host_details").await.unwrap();
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
    let ops = |path: &str| st.s.client.get(format!("{base}{path}")).send();
    let scrape = || async {
        let r = ops("/metrics").await.unwrap();
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
    let status_for = |host: &str| {
        let req = public(&st.s, host, "/");
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(status_for("unknown.invalid").await, 530);
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
    let gone = format!("{}.cfargotunnel.localhost", uuid::Uuid::new_v4());
    assert_eq!(status_for(&gone).await, 530);
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

    assert_eq!(ops("/healthz").await.unwrap().status(), 200);
    assert_eq!(ops("/readyz").await.unwrap().status(), 200);
    // With the store closed, not ready.
    st.s.store().close().await;
    let r = ops("/readyz").await.unwrap();
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

/// [`https_get`], which must answer 200.
async fn https_ok(addr: std::net::SocketAddr, ca: &str, host: &str, path: &str) -> String {
    let resp = https_get(addr, ca, host, path).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    resp
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

    let resp = https_ok(https, &ca1, &host, "/hello").await;
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
    let mut session = streaming(&target, &token, all()).await;
    https_ok(https, &ca1, &host, "/hello?tls=1").await;
    let e = wait_request(&mut session, "/hello").await;
    assert_eq!(e.fields["status"], 200);
    session.stop().await.unwrap();

    // A renewed certificate (from another CA) is picked up without restart.
    let ca2 = write_tls(tls_dir.path(), &[&host, MGMT]);
    eventually("the new certificate is served", || async {
        https_get(https, &ca2, &host, "/hello")
            .await
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
    })
    .await;
    assert!(https_get(https, &ca1, &host, "/hello").await.is_err());
    st.stop().await;
}
