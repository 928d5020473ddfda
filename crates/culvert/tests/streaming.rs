//! 100 MB through the tunnel each way, with memory that stays flat: bodies
//! stream with backpressure at every hop instead of being buffered.
//!
//! Everything (server, edge, connector, origin, client) runs in this one test
//! process, so its resident set bounds what all of them hold at once.

mod common;
#[path = "common/origin.rs"]
mod origin;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Backend, TestServer, call};
use culvert_connector::connector::{Connector, ConnectorConfig};
use culvert_proto::TunnelToken;
use futures::StreamExt;
use reqwest::Method;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const SIZE: u64 = 100 * 1024 * 1024;
/// Far below the 100 MB moved: buffering either body whole would exceed it.
const MAX_GROWTH: u64 = 48 * 1024 * 1024;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Samples the RSS every 20 ms and keeps the peak.
fn rss_sampler() -> (Arc<AtomicU64>, CancellationToken) {
    let peak = Arc::new(AtomicU64::new(rss_bytes()));
    let stop = CancellationToken::new();
    let (p, s) = (peak.clone(), stop.clone());
    tokio::spawn(async move {
        while !s.is_cancelled() {
            p.fetch_max(rss_bytes(), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (peak, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_megabytes_each_way_with_flat_memory() {
    let s = TestServer::start(Backend::Sqlite).await;
    let origin = origin::start().await;
    let (status, body) = call(
        s.req(Method::POST, &s.acct("/cfd_tunnel"))
            .json(&json!({"name": "big", "config_src": "cloudflare"})),
    )
    .await;
    assert_eq!(status, 200);
    let id = body["result"]["id"].as_str().unwrap().to_string();
    let token = TunnelToken::decode(body["result"]["token"].as_str().unwrap()).unwrap();
    let config = json!({"config": {"ingress": [
        {"hostname": "big.example.com", "service": format!("http://{}", origin.addr)},
        {"service": "http_status:404"}]}});
    call(
        s.req(
            Method::PUT,
            &s.acct(&format!("/cfd_tunnel/{id}/configurations")),
        )
        .json(&config),
    )
    .await;

    let server = s.server.as_ref().unwrap();
    let mut cfg = ConnectorConfig::new(token, vec![server.edge_addr.to_string()]);
    cfg.ca_pem = Some(server.edge_ca_pem.as_bytes().to_vec());
    cfg.ha_connections = 1;
    let connector = Connector::new(cfg).unwrap();
    let state = connector.state();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(connector.run(cancel.clone()));
    tokio::time::timeout(Duration::from_secs(20), state.wait_ready(1))
        .await
        .unwrap();
    let http = server.http_addr;
    // Wait for the pushed configuration to route the host.
    for _ in 0..100 {
        let r = s
            .client
            .get(format!("http://{http}/hello"))
            .header("host", "big.example.com")
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let baseline = rss_bytes();
    let (peak, stop) = rss_sampler();

    // Download: streamed, checked byte by byte, never held whole.
    let resp = s
        .client
        .get(format!("http://{http}/bytes/{SIZE}"))
        .header("host", "big.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut offset = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        for (i, b) in chunk.iter().enumerate() {
            assert_eq!(
                *b,
                origin::pattern_byte(offset + i as u64),
                "byte {}",
                offset + i as u64
            );
        }
        offset += chunk.len() as u64;
    }
    assert_eq!(offset, SIZE);

    // Upload: generated on the fly, counted by the origin without keeping it.
    let chunks = (SIZE / (64 * 1024)) as usize;
    let upload = futures::stream::iter((0..chunks).map(|i| {
        let start = i as u64 * 64 * 1024;
        Ok::<_, std::io::Error>(
            (start..start + 64 * 1024)
                .map(origin::pattern_byte)
                .collect::<Vec<u8>>(),
        )
    }));
    let expected_sum = (0..SIZE).fold(0u64, |s, i| {
        s.wrapping_add(u64::from(origin::pattern_byte(i)))
    });
    let resp = s
        .client
        .post(format!("http://{http}/count"))
        .header("host", "big.example.com")
        .body(reqwest::Body::wrap_stream(upload))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), format!("{SIZE} {expected_sum}"));

    stop.cancel();
    let growth = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    eprintln!(
        "RSS baseline {} MiB, peak growth {} MiB over 2 x 100 MiB",
        baseline >> 20,
        growth >> 20
    );
    assert!(
        growth < MAX_GROWTH,
        "memory grew by {} MiB while moving 200 MiB",
        growth >> 20
    );

    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    s.stop().await;
}
