//! `originRequest.access.required` end to end, with the connector on QUIC
//! and on HTTP/2: the Access check belongs to the ingress rule, so a request
//! without a valid `Cf-Access-Jwt-Assertion` gets 403 before anything is
//! dispatched — HTTP or WebSocket, and whatever the rule's service (`ws://`
//! origin, `unix:` socket, `tcp://` service, `http_status:`). The team's key
//! set is served by a real HTTP server (`access.certsUrl`); tokens are
//! ES256, signed here with a key made for the run.

mod common;
#[path = "common/tunnel.rs"]
mod tunnel;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use common::{Backend, TestServer, public};
use culvert_connector::connector::TransportProtocol;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

const TEAM: &str = "myteam";
const AUD: &str = "aud-1";

/// An Access signing key and the JWKS document publishing it.
struct TeamKey {
    key: EcdsaKeyPair,
    jwks: String,
}

impl TeamKey {
    fn new() -> TeamKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        // Uncompressed point: 04 || x || y.
        let point = key.public_key().as_ref();
        let jwks = json!({"keys": [{
            "kid": "k1", "kty": "EC", "crv": "P-256", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]})
        .to_string();
        TeamKey { key, jwks }
    }

    /// A token as Access issues it for the team: right issuer and audience,
    /// valid for ten minutes.
    fn token(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = json!({
            "iss": format!("https://{TEAM}.cloudflareaccess.com"),
            "aud": [AUD], "iat": now, "exp": now + 600,
        });
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#);
        let c = URL_SAFE_NO_PAD.encode(claims.to_string());
        let msg = format!("{h}.{c}");
        let sig = self.key.sign(&SystemRandom::new(), msg.as_bytes()).unwrap();
        format!("{msg}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

/// Serves `jwks` at `/certs` over plain HTTP; counts the fetches.
async fn jwks_server(jwks: String) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let count = fetches.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (jwks, count) = (jwks.clone(), count.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let (jwks, count) = (jwks.clone(), count.clone());
                    async move {
                        let resp = if req.uri().path() == "/certs" {
                            count.fetch_add(1, Ordering::SeqCst);
                            hyper::Response::new(Full::new(Bytes::from(jwks)))
                        } else {
                            let mut r = hyper::Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                            r
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, fetches)
}

/// A WebSocket echo origin; counts the TCP connections it accepts.
async fn ws_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let count = conns.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
                    if msg.is_close() || (echo && ws.send(msg).await.is_err()) {
                        break;
                    }
                }
            });
        }
    });
    (addr, conns)
}

/// HTTP/1.1 on a unix socket answering `unix origin`; counts requests.
async fn unix_origin(path: &std::path::Path) -> Arc<AtomicUsize> {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let count = count.clone();
                    async move {
                        count.fetch_add(1, Ordering::SeqCst);
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(
                            "unix origin",
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    requests
}

/// A TCP echo service; counts its connections.
async fn tcp_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let count = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 || tcp.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, conns)
}

type Ws = WebSocketStream<TcpStream>;

/// A WebSocket handshake for `host` on the public listener: the status the
/// eyeball got, and the socket when it upgraded.
async fn ws_connect(http: SocketAddr, host: &str, jwt: Option<&str>) -> (u16, Option<Ws>) {
    let tcp = TcpStream::connect(http).await.unwrap();
    let mut req = format!("ws://{host}/socket").into_client_request().unwrap();
    if let Some(t) = jwt {
        req.headers_mut()
            .insert("cf-access-jwt-assertion", t.parse().unwrap());
    }
    let handshake = tokio_tungstenite::client_async(req, tcp);
    match tokio::time::timeout(Duration::from_secs(20), handshake)
        .await
        .expect("handshake answered in time")
    {
        Ok((ws, resp)) => (resp.status().as_u16(), Some(ws)),
        Err(tungstenite::Error::Http(resp)) => (resp.status().as_u16(), None),
        Err(e) => panic!("websocket to {host}: {e}"),
    }
}

/// Sends one message and expects it back (the echo of the origin, or of
/// the TCP service behind the connector's bridge).
async fn echoes(ws: &mut Ws, msg: Message) {
    ws.send(msg.clone()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("echo in time")
        .unwrap()
        .unwrap();
    assert_eq!(got, msg);
}

async fn get_status(s: &TestServer, host: &str, jwt: Option<&str>) -> (u16, String) {
    let mut req = public(s, host, "/");
    if let Some(t) = jwt {
        req = req.header("Cf-Access-Jwt-Assertion", t);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_required_guards_every_service_over_quic() {
    guards_every_service(TransportProtocol::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_required_guards_every_service_over_http2() {
    guards_every_service(TransportProtocol::Http2).await;
}

async fn guards_every_service(protocol: TransportProtocol) {
    let s = TestServer::start(Backend::Sqlite).await;
    let team = TeamKey::new();
    let (jwks, fetches) = jwks_server(team.jwks.clone()).await;
    let (ws_addr, ws_conns) = ws_origin().await;
    let (tcp_addr, tcp_conns) = tcp_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("origin.sock");
    let unix_requests = unix_origin(&sock).await;
    let access: Value = json!({"access": {
        "required": true, "teamName": TEAM, "audTag": [AUD],
        "certsUrl": format!("http://{jwks}/certs"),
    }});
    let connector = tunnel::serve_ingress_over(
        &s,
        "access-required",
        json!([
            {"hostname": "probe.example.com", "service": "http_status:204"},
            {"hostname": "ws.example.com", "service": format!("http://{ws_addr}"), "originRequest": access},
            {"hostname": "unix.example.com", "service": format!("unix:{}", sock.display()), "originRequest": access},
            {"hostname": "tcp.example.com", "service": format!("tcp://{tcp_addr}"), "originRequest": access},
            {"hostname": "status.example.com", "service": "http_status:200", "originRequest": access},
            {"service": "http_status:404"}
        ]),
        "probe.example.com",
        protocol,
    )
    .await;
    let http = s.server.as_ref().unwrap().http_addr;
    let good = team.token();
    // Well-formed but signed by a key the team does not publish.
    let forged = TeamKey::new().token();

    // Without a valid token nothing is dispatched: 403, and no origin,
    // socket or service sees a connection.
    for jwt in [None, Some("e30.e30.sig"), Some(forged.as_str())] {
        let (status, ws) = ws_connect(http, "ws.example.com", jwt).await;
        assert_eq!((status, ws.is_none()), (403, true), "ws origin, {jwt:?}");
        assert_eq!(get_status(&s, "ws.example.com", jwt).await.0, 403);
        assert_eq!(ws_conns.load(Ordering::SeqCst), 0, "ws origin reached");

        assert_eq!(get_status(&s, "unix.example.com", jwt).await.0, 403);
        assert_eq!(ws_connect(http, "unix.example.com", jwt).await.0, 403);
        assert_eq!(
            unix_requests.load(Ordering::SeqCst),
            0,
            "unix origin reached"
        );

        assert_eq!(ws_connect(http, "tcp.example.com", jwt).await.0, 403);
        assert_eq!(tcp_conns.load(Ordering::SeqCst), 0, "tcp service reached");

        assert_eq!(get_status(&s, "status.example.com", jwt).await.0, 403);
        assert_eq!(ws_connect(http, "status.example.com", jwt).await.0, 403);
    }
    // The forged token needed the keys: they came from the real server.
    assert!(fetches.load(Ordering::SeqCst) >= 1);

    // A valid token: every rule serves as usual.
    let (status, ws) = ws_connect(http, "ws.example.com", Some(&good)).await;
    assert_eq!(status, 101);
    let mut ws = ws.unwrap();
    echoes(&mut ws, Message::text("through access")).await;
    ws.close(None).await.unwrap();
    assert_eq!(ws_conns.load(Ordering::SeqCst), 1);

    assert_eq!(
        get_status(&s, "unix.example.com", Some(&good)).await,
        (200, "unix origin".to_owned())
    );
    assert_eq!(unix_requests.load(Ordering::SeqCst), 1);

    let (status, ws) = ws_connect(http, "tcp.example.com", Some(&good)).await;
    assert_eq!(status, 101);
    let mut ws = ws.unwrap();
    echoes(&mut ws, Message::binary(b"to the tcp service".to_vec())).await;
    ws.close(None).await.unwrap();
    assert_eq!(tcp_conns.load(Ordering::SeqCst), 1);

    assert_eq!(
        get_status(&s, "status.example.com", Some(&good)).await.0,
        200
    );
    // A rule without access is not affected; an upgrade to `http_status:`
    // gets the rule's status on both transports. (Not 200: over HTTP/2 a
    // 200 answer to a websocket stream means "switched", §5.2.)
    assert_eq!(get_status(&s, "probe.example.com", None).await.0, 204);
    assert_eq!(ws_connect(http, "probe.example.com", None).await.0, 204);

    connector.stop().await;
    s.stop().await;
}
