//! A real HTTP origin on 127.0.0.1:0 for end-to-end tests.
//!
//! - `GET /hello` → `hello from origin` with `x-origin: yes`;
//! - `POST /echo` → streams the request body back and reports what it saw in
//!   headers (`x-seen-host`, `x-seen-forwarded-for`, …);
//! - `GET /bytes/N` → N bytes of a repeating pattern, streamed in 64 KiB chunks;
//! - `POST /count` → the number of body bytes and their sum, without keeping them.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct Origin {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let seen = [
        ("x-seen-host", header("host")),
        ("x-seen-forwarded-for", header("x-forwarded-for")),
        ("x-seen-forwarded-proto", header("x-forwarded-proto")),
        ("x-seen-cf-ray", header("cf-ray")),
        ("x-seen-connecting-ip", header("cf-connecting-ip")),
        ("x-seen-method", req.method().to_string()),
        ("x-seen-path", req.uri().to_string()),
    ];
    let mut builder = Response::builder();
    for (k, v) in &seen {
        builder = builder.header(*k, v.as_str());
    }
    let resp = if path == "/hello" {
        builder
            .header("x-origin", "yes")
            .body(full("hello from origin"))
    } else if path == "/echo" {
        let body = req.into_body().map_err(std::io::Error::other).boxed();
        builder.body(body)
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let total: u64 = n.parse().unwrap_or(0);
        let stream = futures::stream::unfold(0u64, move |sent| async move {
            if sent >= total {
                return None;
            }
            let len = (total - sent).min(64 * 1024);
            let chunk: Vec<u8> = (sent..sent + len).map(pattern_byte).collect();
            Some((
                Ok::<_, std::io::Error>(Frame::data(Bytes::from(chunk))),
                sent + len,
            ))
        });
        builder
            .header("content-length", total.to_string())
            .body(BodyExt::boxed(StreamBody::new(stream)))
    } else if path == "/count" {
        let mut body = req.into_body();
        let (mut count, mut sum) = (0u64, 0u64);
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        count += d.len() as u64;
                        sum = d.iter().fold(sum, |s, b| s.wrapping_add(u64::from(*b)));
                    }
                }
                Err(_) => break,
            }
        }
        builder.body(full(format!("{count} {sum}")))
    } else {
        builder.status(404).body(full("origin: not found"))
    };
    Ok(resp.unwrap_or_else(|_| Response::new(full("bad response"))))
}

pub async fn start() -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(handle))
                    .await;
            });
        }
    });
    Origin { addr, task }
}
