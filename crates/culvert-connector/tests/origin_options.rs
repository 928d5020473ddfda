//! `originRequest` options applied by the connector's origin client, each
//! against a real origin on 127.0.0.1:0: an HTTP or HTTPS (test CA from
//! rcgen) hyper server that reports what it saw (SNI, Host, HTTP version,
//! body framing, connection number).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use culvert_connector::access::AccessError;
use culvert_connector::origin::{
    HttpOrigin, Origin, OriginBody, SendError, prepare_access, prepare_origin,
};
use culvert_connector::proxy::build_origin_request;
use culvert_proto::http_meta::HttpRequestHead;
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Barrier;

struct Pki {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

/// A test CA and a leaf for `origin.test` only (not for 127.0.0.1).
fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "culvert test origin CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(vec!["origin.test".to_owned()]).unwrap();
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&leaf_key, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        chain: vec![cert.der().clone(), ca.der().clone()],
        key: leaf_key.serialize_der(),
    }
}

#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    sni: Mutex<Vec<Option<String>>>,
}

struct TestOrigin {
    addr: SocketAddr,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

async fn handle(req: Request<Incoming>, conn: usize, barrier: Arc<Barrier>) -> Response<Body> {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (host, te, cl) = (h("host"), h("transfer-encoding"), h("content-length"));
    let version = format!("{:?}", req.version());
    let path = req.uri().path().to_owned();
    if path == "/certs" {
        let jwks = include_str!("data/access-rsa-test-jwks.json");
        return Response::new(Full::new(Bytes::from(jwks)).map_err(|n| match n {}).boxed());
    }
    if path == "/hold" {
        barrier.wait().await;
    }
    let len = req.into_body().collect().await.map(|b| b.to_bytes().len());
    Response::builder()
        .header("x-seen-host", host)
        .header("x-seen-version", version)
        .header("x-seen-te", te)
        .header("x-seen-cl", cl)
        .header("x-seen-body", len.map_or(-1, |l| l as i64).to_string())
        .header("x-conn", conn.to_string())
        .body(Empty::new().map_err(|n| match n {}).boxed())
        .unwrap()
}

impl TestOrigin {
    /// `tls`: serve HTTPS with this PKI, offering `h2` when `h2` is set.
    async fn start(tls: Option<(&Pki, bool)>, hold: usize) -> TestOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let acceptor = tls.map(|(p, h2)| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    p.chain.clone(),
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(p.key.clone())),
                )
                .unwrap();
            cfg.alpn_protocols = if h2 {
                vec![b"h2".to_vec(), b"http/1.1".to_vec()]
            } else {
                vec![b"http/1.1".to_vec()]
            };
            tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
        });
        let barrier = Arc::new(Barrier::new(hold.max(1)));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let conn = s.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let (s, acceptor, barrier) = (s.clone(), acceptor.clone(), barrier.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let b = barrier.clone();
                        async move { Ok::<_, Infallible>(handle(req, conn, b).await) }
                    });
                    match acceptor {
                        None => {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(tcp), svc)
                                .await;
                        }
                        Some(acc) => {
                            let Ok(tls) = acc.accept(tcp).await else {
                                s.sni
                                    .lock()
                                    .unwrap()
                                    .push(Some("<handshake failed>".into()));
                                return;
                            };
                            let (_, session) = tls.get_ref();
                            s.sni
                                .lock()
                                .unwrap()
                                .push(session.server_name().map(str::to_owned));
                            let h2 = session.alpn_protocol() == Some(b"h2");
                            if h2 {
                                let _ =
                                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                        .serve_connection(TokioIo::new(tls), svc)
                                        .await;
                            } else {
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(tls), svc)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        TestOrigin { addr, seen, task }
    }

    fn last_sni(&self) -> Option<String> {
        self.seen.sni.lock().unwrap().last().cloned().flatten()
    }
}

/// The HTTP origin of a one-rule local config.
fn origin_for(service: &str, origin_request: Value) -> (Arc<HttpOrigin>, culvert_ingress::Rule) {
    let ingress = culvert_ingress::parse_local_config(&json!({
        "ingress": [{"service": service, "originRequest": origin_request}]
    }))
    .unwrap();
    let rule = ingress.rules[0].clone();
    match prepare_origin(&rule).unwrap() {
        Origin::Http(h) => (h, rule),
        other => panic!("not an HTTP origin: {other:?}"),
    }
}

fn head(host: &str, method: &str, headers: &[(&str, &str)]) -> HttpRequestHead {
    HttpRequestHead {
        dest: format!("http://{host}/path"),
        websocket: false,
        method: method.into(),
        host: host.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        extra: vec![],
    }
}

fn empty() -> OriginBody {
    Empty::<Bytes>::new().map_err(|n| match n {}).boxed_unsync()
}

/// A body of unknown length in three chunks.
fn chunked_body() -> OriginBody {
    let chunks = ["abc", "defg", "hi"].map(|c| Ok(Frame::data(Bytes::from(c))));
    StreamBody::new(futures::stream::iter(chunks)).boxed_unsync()
}

async fn get(
    origin: &HttpOrigin,
    rule: &culvert_ingress::Rule,
    h: HttpRequestHead,
    body: OriginBody,
) -> Result<hyper::HeaderMap, SendError> {
    let req = build_origin_request(&h, &origin.url, rule, uuid::Uuid::nil(), body).unwrap();
    let resp = origin.send(req).await?;
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    resp.into_body().collect().await.unwrap();
    Ok(headers)
}

fn hv<'a>(h: &'a hyper::HeaderMap, n: &str) -> &'a str {
    h.get(n).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn tls_trust_ca_pool_no_tls_verify_and_server_names() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let ca = ca.to_str().unwrap();
    let o = TestOrigin::start(Some((&pki, false)), 1).await;
    let svc = format!("https://{}", o.addr);
    let h = || head("app.test", "GET", &[]);

    // System roots only: the test CA is unknown.
    let (origin, rule) = origin_for(&svc, json!({}));
    let e = get(&origin, &rule, h(), empty())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // caPool alone: trusted CA, but the certificate is not for 127.0.0.1.
    let (origin, rule) = origin_for(&svc, json!({"caPool": ca}));
    let e = get(&origin, &rule, h(), empty())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // caPool + originServerName: verified, and the origin sees that SNI.
    let (origin, rule) = origin_for(
        &svc,
        json!({"caPool": ca, "originServerName": "origin.test"}),
    );
    get(&origin, &rule, h(), empty()).await.unwrap();
    assert_eq!(o.last_sni().as_deref(), Some("origin.test"));

    // matchSNItoHost: the SNI is the request's Host…
    let (origin, rule) = origin_for(&svc, json!({"caPool": ca, "matchSNItoHost": true}));
    get(&origin, &rule, head("origin.test", "GET", &[]), empty())
        .await
        .unwrap();
    assert_eq!(o.last_sni().as_deref(), Some("origin.test"));
    // …so another Host fails verification (a separate pool per name).
    assert!(get(&origin, &rule, h(), empty()).await.is_err());
    // …and httpHostHeader rewrites the Host, which then drives the SNI.
    let (origin, rule) = origin_for(
        &svc,
        json!({"caPool": ca, "matchSNItoHost": true, "httpHostHeader": "origin.test"}),
    );
    let seen = get(&origin, &rule, h(), empty()).await.unwrap();
    assert_eq!(hv(&seen, "x-seen-host"), "origin.test");
    assert_eq!(o.last_sni().as_deref(), Some("origin.test"));

    // noTLSVerify: anything goes (no SNI for an IP address).
    let (origin, rule) = origin_for(&svc, json!({"noTLSVerify": true}));
    let seen = get(&origin, &rule, h(), empty()).await.unwrap();
    assert_eq!(hv(&seen, "x-seen-version"), "HTTP/1.1");
    assert_eq!(hv(&seen, "x-seen-host"), "app.test");
}

#[tokio::test]
async fn http2_origin_over_tls() {
    let pki = pki();
    let o = TestOrigin::start(Some((&pki, true)), 1).await;
    let svc = format!("https://{}", o.addr);
    let (origin, rule) = origin_for(&svc, json!({"noTLSVerify": true, "http2Origin": true}));
    let seen = get(&origin, &rule, head("app.test", "GET", &[]), empty())
        .await
        .unwrap();
    assert_eq!(hv(&seen, "x-seen-version"), "HTTP/2.0");
    // Without the option, the same origin is spoken to in HTTP/1.1.
    let (origin, rule) = origin_for(&svc, json!({"noTLSVerify": true}));
    let seen = get(&origin, &rule, head("app.test", "GET", &[]), empty())
        .await
        .unwrap();
    assert_eq!(hv(&seen, "x-seen-version"), "HTTP/1.1");
}

#[tokio::test]
async fn host_header_and_disable_chunked_encoding() {
    let o = TestOrigin::start(None, 1).await;
    let svc = format!("http://{}", o.addr);
    let te = [("Transfer-Encoding", "chunked")];

    let (origin, rule) = origin_for(&svc, json!({}));
    let seen = get(
        &origin,
        &rule,
        head("app.test", "POST", &te),
        chunked_body(),
    )
    .await
    .unwrap();
    assert_eq!(hv(&seen, "x-seen-host"), "app.test");
    assert_eq!(hv(&seen, "x-seen-te"), "chunked");
    assert_eq!(hv(&seen, "x-seen-body"), "9");

    let (origin, rule) = origin_for(
        &svc,
        json!({"disableChunkedEncoding": true, "httpHostHeader": "internal.example"}),
    );
    let seen = get(
        &origin,
        &rule,
        head("app.test", "POST", &te),
        chunked_body(),
    )
    .await
    .unwrap();
    assert_eq!(hv(&seen, "x-seen-host"), "internal.example");
    assert_eq!(hv(&seen, "x-seen-te"), "");
    assert_eq!(hv(&seen, "x-seen-cl"), "9");
    assert_eq!(hv(&seen, "x-seen-body"), "9");
    // A declared length streams through unchanged.
    let cl = [("Content-Length", "9")];
    let seen = get(
        &origin,
        &rule,
        head("app.test", "POST", &cl),
        chunked_body(),
    )
    .await
    .unwrap();
    assert_eq!((hv(&seen, "x-seen-te"), hv(&seen, "x-seen-cl")), ("", "9"));
}

#[tokio::test]
async fn connect_timeout_against_a_full_backlog() {
    // A listener that never accepts, with its backlog filled: further SYNs
    // are dropped, so a connect hangs until our timeout (deterministic and
    // offline, unlike a non-routable address).
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    loop {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
        assert!(fillers.len() < 64, "backlog never filled");
    }
    let (origin, rule) = origin_for(
        &format!("http://{addr}"),
        json!({"connectTimeout": "300ms"}),
    );
    let start = Instant::now();
    let e = get(&origin, &rule, head("app.test", "GET", &[]), empty())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("tcp connect error: deadline has elapsed"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(10));
    drop(listener);
}

#[tokio::test]
async fn tls_timeout_against_a_silent_server() {
    // Accepts TCP, never answers the ClientHello.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let (origin, rule) = origin_for(
        &format!("https://{addr}"),
        json!({"noTLSVerify": true, "tlsTimeout": "300ms"}),
    );
    let e = get(&origin, &rule, head("app.test", "GET", &[]), empty())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("tlsTimeout"), "{e}");
    task.abort();
}

/// Two bursts of three concurrent requests (held by the origin until all
/// three arrived); returns the connections the origin accepted.
async fn two_bursts(origin_request: Value) -> usize {
    let o = TestOrigin::start(None, 3).await;
    let (origin, rule) = origin_for(&format!("http://{}", o.addr), origin_request);
    for _ in 0..2 {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..3 {
            let (origin, rule) = (origin.clone(), rule.clone());
            set.spawn(async move {
                let mut h = head("app.test", "GET", &[]);
                h.dest = "http://app.test/hold".into();
                get(&origin, &rule, h, empty()).await.unwrap();
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        // Let the client put the finished connections back in its pool.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    o.seen.connections.load(Ordering::SeqCst)
}

#[tokio::test]
async fn keep_alive_connections_bounds_the_idle_pool() {
    assert_eq!(two_bursts(json!({})).await, 3);
    assert_eq!(two_bursts(json!({"keepAliveConnections": 1})).await, 5);
}

#[tokio::test]
async fn keep_alive_timeout_expires_idle_connections() {
    let o = TestOrigin::start(None, 1).await;
    let svc = format!("http://{}", o.addr);
    let h = || head("app.test", "GET", &[]);
    let (origin, rule) = origin_for(
        &svc,
        json!({"keepAliveTimeout": "200ms", "tcpKeepAlive": "5s"}),
    );
    get(&origin, &rule, h(), empty()).await.unwrap();
    let seen = get(&origin, &rule, h(), empty()).await.unwrap();
    assert_eq!(hv(&seen, "x-conn"), "1", "reused while fresh");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let seen = get(&origin, &rule, h(), empty()).await.unwrap();
    assert_eq!(
        hv(&seen, "x-conn"),
        "2",
        "a new connection after keepAliveTimeout"
    );
}

#[tokio::test]
async fn no_happy_eyeballs_still_reaches_the_origin() {
    // `localhost` may resolve to ::1 first; without happy eyeballs the
    // addresses are tried in turn and 127.0.0.1 answers.
    let o = TestOrigin::start(None, 1).await;
    let svc = format!("http://localhost:{}", o.addr.port());
    for opts in [json!({"noHappyEyeballs": true}), json!({})] {
        let (origin, rule) = origin_for(&svc, opts);
        get(&origin, &rule, head("app.test", "GET", &[]), empty())
            .await
            .unwrap();
    }
}

fn rs256(claims: Value) -> String {
    let pem = include_str!("data/access-rsa-test-key.pem");
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .map(|k: PrivatePkcs8KeyDer<'static>| k.secret_pkcs8_der().to_vec())
        .unwrap();
    let kp = ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
    let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"test-rsa-1","typ":"JWT"}"#);
    let c = URL_SAFE_NO_PAD.encode(claims.to_string());
    let msg = format!("{h}.{c}");
    let mut sig = vec![0; kp.public().modulus_len()];
    kp.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        msg.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{msg}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// The rule's Access check (run before dispatch, whatever the service;
/// end to end in crates/culvert/tests/access_required.rs) against keys
/// served by a real HTTP server; a request it admits reaches the origin.
#[tokio::test]
async fn access_checks_the_jwt_against_the_team_keys() {
    let o = TestOrigin::start(None, 1).await;
    let svc = format!("http://{}", o.addr);
    let (origin, rule) = origin_for(
        &svc,
        json!({"access": {"required": true, "teamName": "myteam", "audTag": ["aud-1"],
               "certsUrl": format!("http://{}/certs", o.addr)}}),
    );
    let access = prepare_access(&rule)
        .unwrap()
        .expect("access.required installs the check");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let iss = "https://myteam.cloudflareaccess.com";
    let good = rs256(json!({"iss": iss, "aud": ["aud-1"], "exp": now + 600, "iat": now}));
    let with = |t: &str| head("app.test", "GET", &[("Cf-Access-Jwt-Assertion", t)]);
    let check = |h: HttpRequestHead| {
        let access = access.clone();
        async move { access.verify_request(&h).await }
    };

    assert_eq!(
        check(head("app.test", "GET", &[])).await,
        Err(AccessError::Missing)
    );
    check(with(&good)).await.unwrap();
    get(&origin, &rule, with(&good), empty()).await.unwrap();
    let wrong_aud = rs256(json!({"iss": iss, "aud": "other", "exp": now + 600}));
    assert_eq!(check(with(&wrong_aud)).await, Err(AccessError::Audience));
    let expired = rs256(json!({"iss": iss, "aud": "aud-1", "exp": now - 10}));
    assert_eq!(check(with(&expired)).await, Err(AccessError::Expired));
    let other_team = rs256(
        json!({"iss": "https://evil.cloudflareaccess.com", "aud": "aud-1", "exp": now + 600}),
    );
    assert!(matches!(
        check(with(&other_team)).await,
        Err(AccessError::Issuer { .. })
    ));
    let mut tampered = good.clone();
    tampered.insert(good.find('.').unwrap() + 2, 'x');
    assert_eq!(check(with(&tampered)).await, Err(AccessError::Signature));
}
