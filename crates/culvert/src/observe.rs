//! Server observability on `--metrics-listen`: Prometheus `/metrics` (API
//! requests by route and status, the edge's counters and gauges, tunnels by
//! status), `/healthz` (the process answers) and `/readyz` (the store
//! answers and the listeners are up).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use culvert_edge::EdgeObserver;
use culvert_edge::metrics::{LabeledCounter, TextEncoder};
use culvert_store::{Store, TunnelFilter, TunnelStatus};

/// API request counts by matched route, method and status.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    requests: LabeledCounter<(String, String, u16)>,
}

/// Axum middleware counting every API request.
pub async fn track(State(m): State<Arc<ApiMetrics>>, req: Request, next: Next) -> Response {
    // Route templates (not raw paths) keep the label set bounded.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    m.requests.inc((route, method, resp.status().as_u16()));
    resp
}

/// What `/metrics` and `/readyz` read.
pub struct Observed {
    pub api: Arc<ApiMetrics>,
    pub edge: EdgeObserver,
    pub store: Store,
    /// Set once the API listener serves; cleared at shutdown.
    pub api_up: AtomicBool,
}

const STATUSES: [TunnelStatus; 4] = [
    TunnelStatus::Inactive,
    TunnelStatus::Healthy,
    TunnelStatus::Degraded,
    TunnelStatus::Down,
];

impl Observed {
    async fn tunnels_by_status(&self) -> Option<Vec<(TunnelStatus, u64)>> {
        let accounts = self.store.list_accounts().await.ok()?;
        let mut out = Vec::new();
        for status in STATUSES {
            let filter = TunnelFilter {
                status: Some(status),
                is_deleted: Some(false),
                ..TunnelFilter::default()
            };
            let mut n = 0;
            for a in &accounts {
                // per_page 0: only the count is read.
                n += self
                    .store
                    .list_tunnels(&a.id, &filter, 1, 0)
                    .await
                    .ok()?
                    .total_count;
            }
            out.push((status, n));
        }
        Some(out)
    }

    pub async fn render(&self) -> String {
        let mut enc = TextEncoder::new();
        enc.family(
            "culvert_api_requests_total",
            "counter",
            "REST API requests by route template, method and status.",
        );
        for ((route, method, status), n) in self.api.requests.snapshot() {
            enc.sample(
                "culvert_api_requests_total",
                &[
                    ("route", &route),
                    ("method", &method),
                    ("status", &status.to_string()),
                ],
                n,
            );
        }
        self.edge.encode_metrics(&mut enc);
        if let Some(by_status) = self.tunnels_by_status().await {
            enc.family(
                "culvert_tunnels",
                "gauge",
                "Tunnels (not deleted) by status, all accounts.",
            );
            for (status, n) in by_status {
                enc.sample("culvert_tunnels", &[("status", status.as_str())], n);
            }
        }
        enc.finish()
    }

    pub async fn ready(&self) -> Result<(), String> {
        if !self.api_up.load(Ordering::Acquire) {
            return Err("API listener not serving".into());
        }
        if !self.edge.is_serving() {
            return Err("edge listeners not serving".into());
        }
        match tokio::time::timeout(Duration::from_secs(2), self.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("store: {e}")),
            Err(_) => Err("store: no answer within 2s".into()),
        }
    }
}

async fn metrics(State(o): State<Arc<Observed>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        o.render().await,
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(o): State<Arc<Observed>>) -> Response {
    match o.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response(),
    }
}

pub fn router(o: Arc<Observed>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(o)
}
