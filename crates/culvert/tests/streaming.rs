//! 100 MB through the tunnel each way, with memory that stays flat: bodies
//! stream with backpressure at every hop instead of being buffered.
//!
//! Everything (server, edge, connector, origin, client) runs in this one test
//! process, so its resident set bounds what all of them hold at once.

mod common;
#[path = "common/origin.rs"]
mod origin;
#[path = "common/tunnel.rs"]
mod tunnel;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Backend, TestServer, eventually, public, public_with};
use futures::StreamExt;
use reqwest::Method;
use tokio_util::sync::CancellationToken;
use tunnel::{ConnectorOptions, start_connector, tunnel_for};

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
    let service = format!("http://{}", origin.addr);
    let (_, token) = tunnel_for(&s, "big", "big.example.com", &service).await;
    let connector = start_connector(&s, &token, ConnectorOptions::default());
    connector.wait_ready(1).await;
    eventually("the pushed configuration routes the host", || async {
        public(&s, "big.example.com", "/hello")
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;

    let baseline = rss_bytes();
    let (peak, stop) = rss_sampler();

    // Download: streamed, checked byte by byte, never held whole.
    let resp = public(&s, "big.example.com", &format!("/bytes/{SIZE}"))
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
    let resp = public_with(&s, Method::POST, "big.example.com", "/count")
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

    connector.stop().await;
    s.stop().await;
}
