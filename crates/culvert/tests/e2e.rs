//! End to end: the real server (API + QUIC edge + public listener), our
//! connector in process, and a real origin, all on 127.0.0.1 port 0.

mod common;
#[path = "common/origin.rs"]
mod origin;
#[path = "common/tunnel.rs"]
mod tunnel;

use std::time::Duration;

use common::{Backend, TestServer, call, code, eventually, public, public_with};
use reqwest::Method;
use serde_json::json;
use tunnel::{ConnectorOptions, connections, start_connector, tunnel_for, wait_one_connector};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_through_the_tunnel() {
    let s = TestServer::start(Backend::Sqlite).await;
    let origin = origin::start().await;
    let svc = format!("http://{}", origin.addr);
    let (id, token) = tunnel_for(&s, "e2e", "app.example.com", &svc).await;

    // Before any connector: a 530 page with error 1033, at once.
    let resp = public(&s, "app.example.com", "/hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 530);
    assert!(resp.text().await.unwrap().contains("1033"));

    let c = start_connector(&s, &token, ConnectorOptions::ha(4));
    c.wait_ready(4).await;

    // The registry shows the connector, its 4 connections, and the pushed config version.
    let cs = wait_one_connector(&s, &id, 4, 1).await;
    assert_eq!(cs[0]["id"], c.state.connector_id().to_string());
    assert_eq!(cs[0]["conns"][0]["colo_name"], "LOCAL");
    let (_, t) = call(s.req(Method::GET, &s.acct(&format!("/cfd_tunnel/{id}")))).await;
    assert_eq!(t["result"]["status"], "healthy");
    assert!(t["result"]["conns_active_at"].is_string());

    // GET through the public listener reaches the origin.
    let resp = public(&s, "app.example.com", "/hello?x=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-origin"], "yes");
    assert_eq!(resp.headers()["x-seen-host"], "app.example.com");
    assert_eq!(resp.headers()["x-seen-forwarded-proto"], "http");
    assert_eq!(resp.headers()["x-seen-connecting-ip"], "127.0.0.1");
    assert!(
        resp.headers()["x-seen-forwarded-for"]
            .to_str()
            .unwrap()
            .contains("127.0.0.1")
    );
    assert!(!resp.headers()["x-seen-cf-ray"].is_empty());
    assert_eq!(resp.headers()["x-seen-path"], "/hello?x=1");
    assert_eq!(resp.text().await.unwrap(), "hello from origin");

    // POST with a body, echoed back.
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let resp = public_with(&s, Method::POST, "app.example.com", "/echo")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-seen-method"], "POST");
    assert_eq!(resp.bytes().await.unwrap().to_vec(), body);

    // The catch-all rule answers for other paths of the tunnel's own domain.
    let direct = format!("{id}.cfargotunnel.localhost");
    let resp = public(&s, &direct, "/hello").send().await.unwrap();
    assert_eq!(resp.status(), 404, "the catch-all http_status:404 answers");

    // A DNS route (cloudflared tunnel route dns) reaches the tunnel too.
    let zone = s
        .store()
        .create_zone(&s.account, "example.net")
        .await
        .unwrap();
    let (status, _) = call(
        s.req(
            Method::PUT,
            &format!("/zones/{}/tunnels/{id}/routes", zone.id),
        )
        .json(&json!({"type": "dns", "user_hostname": "www", "overwrite_existing": false})),
    )
    .await;
    assert_eq!(status, 200);
    let resp = public(&s, "www.example.net", "/hello")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        404,
        "routed to the tunnel; its ingress has no rule for this host"
    );

    // Unknown hosts: 530 / 1033.
    let resp = public(&s, "nobody.example.org", "/").send().await.unwrap();
    assert_eq!(resp.status(), 530);

    // Many concurrent requests spread over the connections.
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let req = public(&s, "app.example.com", "/hello");
        tasks.push(tokio::spawn(async move {
            req.send().await.map(|r| r.status().as_u16())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }

    // A configuration change while traffic flows re-routes by version.
    tunnel::put_ingress(
        &s,
        &id,
        json!([
            {"hostname": "app.example.com", "path": "^/hello", "service": "http_status:418"},
            {"hostname": "app.example.com", "service": svc},
            {"service": "http_status:404"}
        ]),
    )
    .await;
    eventually("config version 2 applied", || async {
        connections(&s, &id)
            .await
            .first()
            .is_some_and(|c| c["config_version"] == 2)
    })
    .await;
    assert_eq!(
        public(&s, "app.example.com", "/hello")
            .send()
            .await
            .unwrap()
            .status(),
        418
    );

    // Deleting with live connections is refused; cascade closes them.
    let (status, body) = call(s.req(Method::DELETE, &s.acct(&format!("/cfd_tunnel/{id}")))).await;
    assert_eq!((status, code(&body)), (400, 1022));
    let (status, _) = call(s.req(
        Method::DELETE,
        &s.acct(&format!("/cfd_tunnel/{id}?cascade=true")),
    ))
    .await;
    assert_eq!(status, 200);
    eventually("connections closed after cascade delete", || async {
        c.state.ready_connections() == 0
    })
    .await;
    assert_eq!(
        public(&s, "app.example.com", "/hello")
            .send()
            .await
            .unwrap()
            .status(),
        530
    );
    assert!(connections(&s, &id).await.is_empty());

    c.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_cleanup_and_failover() {
    let s = TestServer::start(Backend::Sqlite).await;
    let origin = origin::start().await;
    let svc = format!("http://{}", origin.addr);
    let (id, old_token) = tunnel_for(&s, "rot", "rot.example.com", &svc).await;
    let a = start_connector(&s, &old_token, ConnectorOptions::ha(2));
    let b = start_connector(&s, &old_token, ConnectorOptions::ha(2));
    a.wait_ready(2).await;
    b.wait_ready(2).await;
    eventually("two connectors registered", || async {
        connections(&s, &id).await.len() == 2
    })
    .await;

    // Killing one connector while traffic flows: requests keep succeeding.
    let traffic = {
        let reqs: Vec<_> = (0..200)
            .map(|_| public(&s, "rot.example.com", "/hello"))
            .collect();
        tokio::spawn(async move {
            let mut ok = 0;
            for r in reqs {
                if r.send().await.map(|r| r.status() == 200).unwrap_or(false) {
                    ok += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ok
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.stop().await; // graceful: unregisters, drains
    let ok = traffic.await.unwrap();
    assert_eq!(ok, 200, "every request succeeded while one connector left");
    eventually("one connector left", || async {
        connections(&s, &id).await.len() == 1
    })
    .await;

    // Rotate the secret: the live connector keeps serving...
    let secret = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [5u8; 32]);
    let (status, _) = call(
        s.req(Method::PATCH, &s.acct(&format!("/cfd_tunnel/{id}")))
            .json(&json!({"tunnel_secret": secret})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        public(&s, "rot.example.com", "/hello")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // ...and a new connector with the old token is refused.
    let late = start_connector(&s, &old_token, ConnectorOptions::ha(1));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(late.state.ready_connections(), 0, "old secret refused");
    late.stop().await;

    // Cleanup of one connector closes its connections at the edge.
    let (status, _) = call(s.req(
        Method::DELETE,
        &s.acct(&format!(
            "/cfd_tunnel/{id}/connections?client_id={}",
            b.state.connector_id()
        )),
    ))
    .await;
    assert_eq!(status, 200);
    eventually("cleanup closed the connections", || async {
        b.state.ready_connections() < 2
    })
    .await;
    b.stop().await;
    s.stop().await;
}
