//! The connector's `--metrics` server end to end: the real server (API,
//! edge, public listener), our connector over QUIC and over HTTP/2, a real
//! origin; eyeball requests through the public listener move `/metrics`,
//! and `/ready` follows the connections.

mod common;
#[path = "common/origin.rs"]
mod origin;
#[path = "common/tunnel.rs"]
mod tunnel;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Backend, TestServer, eventually, public};
use culvert_connector::connector::{Connector, TransportProtocol};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tunnel::{ConnectorOptions, connector_config, create_tunnel, put_ingress};

const HIST: &str = "culvert_tunnel_request_duration_seconds";

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn get(client: &reqwest::Client, url: String) -> (u16, String) {
    let r = client.get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn run(protocol: TransportProtocol) {
    let s = TestServer::start(Backend::Sqlite).await;
    let origin = origin::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (id, token) = create_tunnel(&s, "health").await;
    put_ingress(
        &s,
        &id,
        json!([
            {"hostname": "app.example.com", "service": format!("http://{}", origin.addr)},
            {"hostname": "down.example.com", "service": format!("http://{closed}")},
            {"service": "http_status:404"}
        ]),
    )
    .await;

    // Built here rather than with `start_connector`: the metrics server
    // must be up before the connector runs.
    let cfg = connector_config(
        &s,
        &token,
        &ConnectorOptions {
            protocol,
            ..ConnectorOptions::ha(2)
        },
    );
    let connector = Connector::new(cfg).unwrap();
    let state = connector.state();
    let id_str = connector.connector_id().to_string();
    let cancel = CancellationToken::new();
    let listener = culvert_connector::metrics::bind("127.0.0.1:0")
        .await
        .unwrap();
    let maddr: SocketAddr = listener.local_addr().unwrap();
    let metrics_task = tokio::spawn(culvert_connector::metrics::serve(
        listener,
        connector.state(),
        cancel.clone(),
    ));
    let client = reqwest::Client::new();
    let (status, body) = get(&client, format!("http://{maddr}/ready")).await;
    assert_eq!(status, 503);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": 503, "readyConnections": 0, "connectorId": id_str})
    );

    let task = tokio::spawn(connector.run(cancel.clone()));
    tokio::time::timeout(Duration::from_secs(30), state.wait_ready(2))
        .await
        .expect("connector registered in time");
    let (status, body) = get(&client, format!("http://{maddr}/ready")).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": 200, "readyConnections": 2, "connectorId": id_str})
    );

    eventually("the pushed ingress routes app.example.com", || async {
        public(&s, "app.example.com", "/hello")
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;

    let scrape = || {
        let client = client.clone();
        async move { get(&client, format!("http://{maddr}/metrics")).await.1 }
    };
    // The routing probes above are counted when their streams end, which
    // can be just after their responses: wait until the counters settle.
    let mut before = scrape().await;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = scrape().await;
        let settled = sample(&now, "cloudflared_tunnel_concurrent_requests_per_tunnel") == 0.0
            && sample(&now, "cloudflared_tunnel_total_requests")
                == sample(&before, "cloudflared_tunnel_total_requests");
        before = now;
        if settled {
            break;
        }
    }
    for _ in 0..3 {
        let r = public(&s, "app.example.com", "/hello")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "hello from origin");
    }
    let r = public(&s, "app.example.com", "/missing")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = public(&s, "down.example.com", "/").send().await.unwrap();
    assert_eq!(r.status(), 502);
    let _ = r.bytes().await;

    let delta = |after: &str, series: &str| sample(after, series) - sample(&before, series);
    let mut after = String::new();
    for _ in 0..200 {
        after = scrape().await;
        if delta(&after, "cloudflared_tunnel_total_requests") >= 5.0
            && sample(&after, "cloudflared_tunnel_concurrent_requests_per_tunnel") == 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (series, want) in [
        ("cloudflared_tunnel_total_requests", 5.0),
        ("cloudflared_tunnel_request_errors", 1.0),
        ("culvert_tunnel_responses_by_class{class=\"2xx\"}", 3.0),
        ("culvert_tunnel_responses_by_class{class=\"4xx\"}", 1.0),
        ("culvert_tunnel_responses_by_class{class=\"5xx\"}", 1.0),
        (
            &format!("{HIST}_count{{hostname=\"app.example.com\"}}"),
            4.0,
        ),
        (
            &format!("{HIST}_bucket{{hostname=\"app.example.com\",le=\"+Inf\"}}"),
            4.0,
        ),
        (
            &format!("{HIST}_count{{hostname=\"down.example.com\"}}"),
            1.0,
        ),
    ] {
        assert_eq!(delta(&after, series), want, "{series} in\n{after}");
    }
    assert_eq!(
        sample(&after, "cloudflared_tunnel_concurrent_requests_per_tunnel"),
        0.0
    );
    assert_eq!(sample(&after, "cloudflared_tunnel_ha_connections"), 2.0);
    assert_eq!(sample(&after, "culvert_tunnel_ready_connections"), 2.0);

    // The server goes away: nothing can serve.
    s.stop().await;
    tokio::time::timeout(Duration::from_secs(30), state.wait_ready_at_most(0))
        .await
        .expect("connections dropped once the edge is gone");
    let (status, body) = get(&client, format!("http://{maddr}/ready")).await;
    assert_eq!(status, 503);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": 503, "readyConnections": 0, "connectorId": id_str})
    );

    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    metrics_task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_and_ready_over_quic() {
    run(TransportProtocol::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_and_ready_over_http2() {
    run(TransportProtocol::Http2).await;
}
