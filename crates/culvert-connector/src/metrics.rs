//! `--metrics ADDR`: cloudflared's readiness endpoints and Prometheus
//! metrics.
//!
//! - `GET /ready` → `{"status":200|503,"readyConnections":N,"connectorId":"…"}`
//!   with that HTTP status (503 while no connection can serve: none is
//!   registered, or the edge stopped answering the registered ones, see
//!   [`crate::stats::Liveness`]);
//! - `GET /healthcheck` → `OK`;
//! - `GET /metrics` → the Prometheus text format 0.0.4
//!   ([`crate::stats::ProxyMetrics::render`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::connector::ConnectorState;
use crate::error::ConnectorError;

/// Most metrics requests served at once; further connections wait.
const MAX_CONNECTIONS: usize = 64;

/// The Prometheus text exposition format, version 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `/ready` body and status for `ready` connections able to serve.
pub fn ready_body(ready: usize, connector_id: uuid::Uuid) -> (StatusCode, String) {
    let status = if ready > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": status.as_u16(),
        "readyConnections": ready,
        "connectorId": connector_id,
    });
    (status, body.to_string())
}

/// Binds the metrics listener (port 0 picks a free port).
pub async fn bind(addr: &str) -> Result<TcpListener, ConnectorError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ConnectorError::Io {
            what: format!("binding the metrics server on {addr}"),
            source,
        })
}

fn respond(req: &Request<hyper::body::Incoming>, state: &ConnectorState) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/ready" => {
            let (s, b) = ready_body(state.ready_connections(), state.connector_id());
            (s, "application/json", b)
        }
        "/healthcheck" => (StatusCode::OK, "text/plain; charset=utf-8", "OK\n".into()),
        "/metrics" => (
            StatusCode::OK,
            PROMETHEUS_CONTENT_TYPE,
            state.metrics().render(state.connection_gauges()),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "404 page not found\n".into(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<ConnectorState>, shutdown: CancellationToken) {
    let local: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(addr = ?local, "Starting metrics server");
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&limit).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.cancelled() => return,
        };
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics accept failed");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| {
                let resp = respond(&req, &state);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_json_like_cloudflared() {
        let id = uuid::Uuid::from_u128(1);
        let (s, b) = ready_body(0, id);
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            b,
            r#"{"status":503,"readyConnections":0,"connectorId":"00000000-0000-0000-0000-000000000001"}"#
        );
        let (s, b) = ready_body(4, id);
        assert_eq!(s, StatusCode::OK);
        assert!(b.starts_with(r#"{"status":200,"readyConnections":4,"#));
    }
}
