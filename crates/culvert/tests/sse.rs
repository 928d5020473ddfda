//! Streaming responses reach the eyeball as the origin writes them, and the
//! origin response timeout bounds only the wait for the response head.

mod common;
#[path = "common/tunnel.rs"]
mod tunnel;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Backend, TestServer};
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Notify;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// `/events`: an SSE stream whose first event is sent at once and whose
/// second (and the end) only after `release` is notified. `/slow`: the same
/// after a 3 s wait for the head. Anything else: `ok`.
async fn sse_origin(release: Arc<Notify>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let release = release.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let release = release.clone();
                    async move {
                        match req.uri().path() {
                            "/events" => {}
                            "/slow" => tokio::time::sleep(Duration::from_secs(3)).await,
                            _ => {
                                let ok: Body = BodyExt::boxed(http_body_util::Full::new(
                                    Bytes::from_static(b"ok"),
                                ));
                                return Ok(hyper::Response::new(ok));
                            }
                        }
                        let events = futures::stream::unfold(0u8, move |n| {
                            let release = release.clone();
                            async move {
                                match n {
                                    0 => Some((Bytes::from_static(b"data: first\n\n"), 1)),
                                    1 => {
                                        release.notified().await;
                                        Some((Bytes::from_static(b"data: second\n\n"), 2))
                                    }
                                    _ => None,
                                }
                            }
                        })
                        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
                        let body: Body = BodyExt::boxed(StreamBody::new(events));
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "text/event-stream")
                                .header("cache-control", "no-cache")
                                .body(body)
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_sent_events_are_not_buffered_and_timeouts_bound_the_head_only() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.origin_response_timeout = Some(Duration::from_secs(1));
    })
    .await;
    let release = Arc::new(Notify::new());
    let addr = sse_origin(release.clone()).await;
    let connector = tunnel::serve_ingress(
        &s,
        "sse",
        json!([
            {"hostname": "sse.example.com", "service": format!("http://{addr}")},
            {"service": "http_status:404"}
        ]),
        "sse.example.com",
    )
    .await;
    let http = s.server.as_ref().unwrap().http_addr;

    let resp = s
        .client
        .get(format!("http://{http}/events"))
        .header("host", "sse.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.bytes_stream();
    // The origin holds the response open until we have seen this event.
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("the first event arrives while the origin is still writing")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: first\n\n");
    // Held open past the response timeout: the body is not cut.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    release.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("the rest of the stream arrives")
    {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"data: second\n\n");

    // A head slower than the timeout: Cloudflare's 524.
    let resp = s
        .client
        .get(format!("http://{http}/slow"))
        .header("host", "sse.example.com")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 524);

    connector.stop().await;
    s.stop().await;
}
