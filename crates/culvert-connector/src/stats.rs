//! Request metrics and connection liveness, kept with atomics and rendered
//! in the Prometheus text format (0.0.4) by [`crate::metrics`].
//!
//! Label sets are bounded: responses by status class (`1xx`…`5xx`), and
//! latency histograms by the hostname of the ingress rule that matched
//! (catch-all rules and anything past [`MAX_HOST_LABELS`] go under
//! [`OTHER_HOST`]), so eyeballs cannot grow the series with made-up hosts.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use culvert_proto::connect::ConnectRequest;
use culvert_proto::http_meta::HTTP_HOST;
use tokio::time::Instant;

use crate::orchestrator::Orchestrator;

/// Label of requests whose rule has no specific hostname.
pub const OTHER_HOST: &str = "_other";
/// Most distinct hostname labels kept (ingress pushes may add hostnames
/// over the life of the process).
pub const MAX_HOST_LABELS: usize = 256;
/// Latency histogram bucket bounds, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A connection counts as unable to serve once nothing arrived from the edge
/// for this long: three QUIC keep-alive periods (1 s), below the 5 s idle
/// timeout that ends it.
pub const STALL_AFTER: Duration = Duration::from_secs(3);

/// Liveness of one connection from a counter of what the edge sent (QUIC:
/// received UDP datagrams, which include the ACKs of our keep-alive PINGs).
#[derive(Debug, Clone)]
pub struct Liveness {
    seen: u64,
    last_progress: Instant,
    stall_after: Duration,
}

impl Liveness {
    pub fn new(received: u64, now: Instant, stall_after: Duration) -> Liveness {
        Liveness {
            seen: received,
            last_progress: now,
            stall_after,
        }
    }

    /// Records the counter at `now`; whether the connection is live.
    pub fn observe(&mut self, received: u64, now: Instant) -> bool {
        if received != self.seen {
            self.seen = received;
            self.last_progress = now;
        }
        now.saturating_duration_since(self.last_progress) <= self.stall_after
    }
}

/// One latency histogram (non-cumulative bucket counts; cumulated when
/// rendered).
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// Request counters of one connector.
#[derive(Debug)]
pub struct ProxyMetrics {
    total: AtomicU64,
    errors: AtomicU64,
    concurrent: AtomicU64,
    /// Responses by status class: index 0 = 1xx … 4 = 5xx.
    by_class: [AtomicU64; 5],
    /// Responses by status code 100..=599 (index = code - 100): bounded, and
    /// cloudflared's `response_by_code` family.
    by_code: Box<[AtomicU64]>,
    hosts: Mutex<HashMap<String, Arc<Histogram>>>,
}

impl Default for ProxyMetrics {
    fn default() -> ProxyMetrics {
        ProxyMetrics {
            total: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            concurrent: AtomicU64::new(0),
            by_class: Default::default(),
            by_code: (100..600).map(|_| AtomicU64::new(0)).collect(),
            hosts: Mutex::new(HashMap::new()),
        }
    }
}

/// What [`ProxyMetrics::render`] needs besides the request counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionGauges {
    /// Connections registered with the edge.
    pub registered: usize,
    /// Registered connections that can serve (`/ready`'s count).
    pub ready: usize,
}

impl ProxyMetrics {
    /// Starts counting one request; `host_label` from [`host_label`].
    pub fn start(self: &Arc<Self>, host_label: &str) -> RequestGuard {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.concurrent.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            metrics: Arc::clone(self),
            host: self.histogram(host_label),
            start: Instant::now(),
            status: None,
            error: false,
        }
    }

    fn histogram(&self, label: &str) -> Arc<Histogram> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = hosts.get(label) {
            return Arc::clone(h);
        }
        let key = if hosts.len() < MAX_HOST_LABELS {
            label
        } else {
            OTHER_HOST
        };
        Arc::clone(hosts.entry(key.to_owned()).or_default())
    }

    /// Total requests seen.
    pub fn total_requests(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Requests the connector failed to serve.
    pub fn request_errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Requests in flight.
    pub fn concurrent_requests(&self) -> u64 {
        self.concurrent.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, conns: ConnectionGauges) -> String {
        let mut out = String::with_capacity(4096);
        let simple: [(&str, &str, &str, u64); 5] = [
            (
                "cloudflared_tunnel_total_requests",
                "counter",
                "Amount of requests proxied through all the tunnels",
                self.total_requests(),
            ),
            (
                "cloudflared_tunnel_request_errors",
                "counter",
                "Amount of requests errors",
                self.request_errors(),
            ),
            (
                "cloudflared_tunnel_concurrent_requests_per_tunnel",
                "gauge",
                "Concurrent requests proxied through each tunnel",
                self.concurrent_requests(),
            ),
            (
                "cloudflared_tunnel_ha_connections",
                "gauge",
                "Number of active ha connections",
                conns.registered as u64,
            ),
            (
                "culvert_tunnel_ready_connections",
                "gauge",
                "Registered connections whose edge still answers (the /ready count)",
                conns.ready as u64,
            ),
        ];
        for (name, kind, help, v) in simple {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        let name = "culvert_tunnel_responses_by_class";
        let _ = writeln!(
            out,
            "# HELP {name} Responses sent to the edge by status class\n# TYPE {name} counter"
        );
        for (i, c) in self.by_class.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{class=\"{}xx\"}} {}",
                i + 1,
                c.load(Ordering::Relaxed)
            );
        }
        let name = "cloudflared_tunnel_response_by_code";
        let _ = writeln!(
            out,
            "# HELP {name} Count of responses by HTTP status code\n# TYPE {name} counter"
        );
        for (i, c) in self.by_code.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(out, "{name}{{status_code=\"{}\"}} {n}", i + 100);
            }
        }
        let name = "culvert_tunnel_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a request's arrival to its response head, by ingress hostname\n# TYPE {name} histogram"
        );
        let hosts: Vec<(String, Arc<Histogram>)> = {
            let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
            let mut v: Vec<_> = hosts
                .iter()
                .map(|(k, h)| (k.clone(), Arc::clone(h)))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        for (host, h) in hosts {
            let host = escape_label(&host);
            let mut cumulative = 0;
            for (bound, b) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
                cumulative += b.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{hostname=\"{host}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "{name}_bucket{{hostname=\"{host}\",le=\"+Inf\"}} {count}\n{name}_sum{{hostname=\"{host}\"}} {sum}\n{name}_count{{hostname=\"{host}\"}} {count}"
            );
        }
        out
    }
}

/// The histogram label of a request matched by a rule with `hostname`:
/// the rule's own pattern, or [`OTHER_HOST`] for catch-alls.
pub fn host_label(rule_hostname: Option<&str>) -> &str {
    match rule_hostname {
        Some(h) if !h.is_empty() && h != "*" => h,
        _ => OTHER_HOST,
    }
}

/// The histogram label of a request for `host` (port ignored) and `path`
/// under the current ingress.
pub fn label_for(orchestrator: &Orchestrator, host: &str, path: &str) -> String {
    let snapshot = orchestrator.snapshot();
    let route = snapshot.route(host, path);
    host_label(route.rule.hostname.as_deref()).to_owned()
}

tokio::task_local! {
    /// The request a QUIC stream task is serving, for the status hooks.
    static CURRENT: RefCell<Option<RequestGuard>>;
}

/// Runs one data stream's task; [`begin`] inside it starts counting, and
/// the request is recorded when `fut` ends (or is dropped).
pub async fn scope<F: std::future::Future>(fut: F) -> F::Output {
    CURRENT.scope(RefCell::new(None), fut).await
}

/// Starts counting the QUIC request `req` of this [`scope`]: labelled by
/// the ingress rule its `HttpHost` and path match.
pub fn begin(metrics: &Arc<ProxyMetrics>, orchestrator: &Orchestrator, req: &ConnectRequest) {
    let host = req
        .metadata
        .iter()
        .find(|m| m.key == HTTP_HOST)
        .map_or("", |m| m.val.as_str());
    let (path, _) = crate::proxy::dest_path(&req.dest);
    let guard = metrics.start(&label_for(orchestrator, host, &path));
    let _ = CURRENT.try_with(|c| *c.borrow_mut() = Some(guard));
}

/// The current request's response status (QUIC path).
pub fn record_status(status: u16) {
    let _ = CURRENT.try_with(|c| {
        if let Some(g) = c.borrow_mut().as_mut() {
            g.set_status(status);
        }
    });
}

/// The connector failed the current request (QUIC path: its 502).
pub fn record_error() {
    let _ = CURRENT.try_with(|c| {
        if let Some(g) = c.borrow_mut().as_mut() {
            g.set_error();
        }
    });
}

/// Prometheus label value escaping (backslash, quote, newline).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Counts one request; records its outcome when dropped (so a request that
/// fails or is cancelled half-way is still accounted for).
#[derive(Debug)]
pub struct RequestGuard {
    metrics: Arc<ProxyMetrics>,
    host: Arc<Histogram>,
    start: Instant,
    status: Option<u16>,
    error: bool,
}

impl RequestGuard {
    /// The response head is being sent: its class and the latency count now.
    pub fn set_status(&mut self, status: u16) {
        if self.status.is_none() {
            self.status = Some(status);
            self.host.observe(self.start.elapsed());
        }
    }

    /// The connector itself failed this request (its 502).
    pub fn set_error(&mut self) {
        self.error = true;
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let m = &self.metrics;
        m.concurrent.fetch_sub(1, Ordering::Relaxed);
        match self.status {
            Some(s) => {
                let class = usize::from(s / 100).clamp(1, 5) - 1;
                m.by_class[class].fetch_add(1, Ordering::Relaxed);
                if let Some(c) = usize::from(s)
                    .checked_sub(100)
                    .and_then(|i| m.by_code.get(i))
                {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => self.error = true,
        }
        if self.error {
            m.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A response body that keeps its request counted (in flight) until the
/// body ends or is dropped.
pub struct CountedBody<B> {
    body: B,
    _guard: RequestGuard,
}

impl<B> CountedBody<B> {
    pub fn new(body: B, guard: RequestGuard) -> CountedBody<B> {
        CountedBody {
            body,
            _guard: guard,
        }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn liveness_stalls_after_silence() {
        let mut l = Liveness::new(10, Instant::now(), STALL_AFTER);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(l.observe(10, Instant::now()));
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(!l.observe(10, Instant::now()), "3 s without a packet");
        // The edge answers again: live at once.
        assert!(l.observe(11, Instant::now()));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(l.observe(11, Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!l.observe(11, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn guard_counts_and_histogram() {
        let m = Arc::new(ProxyMetrics::default());
        let mut g = m.start("a.example.com");
        assert_eq!(m.concurrent_requests(), 1);
        tokio::time::advance(Duration::from_millis(30)).await;
        g.set_status(204);
        drop(g);
        let mut g = m.start(host_label(None));
        g.set_status(502);
        g.set_error();
        drop(g);
        drop(m.start("a.example.com")); // never answered
        assert_eq!(
            (
                m.total_requests(),
                m.request_errors(),
                m.concurrent_requests()
            ),
            (3, 2, 0)
        );
        let text = m.render(ConnectionGauges {
            registered: 2,
            ready: 1,
        });
        for line in [
            "cloudflared_tunnel_total_requests 3",
            "cloudflared_tunnel_request_errors 2",
            "cloudflared_tunnel_concurrent_requests_per_tunnel 0",
            "cloudflared_tunnel_ha_connections 2",
            "culvert_tunnel_ready_connections 1",
            "culvert_tunnel_responses_by_class{class=\"2xx\"} 1",
            "culvert_tunnel_responses_by_class{class=\"5xx\"} 1",
            "cloudflared_tunnel_response_by_code{status_code=\"204\"} 1",
            "cloudflared_tunnel_response_by_code{status_code=\"502\"} 1",
            "culvert_tunnel_request_duration_seconds_bucket{hostname=\"a.example.com\",le=\"0.025\"} 0",
            "culvert_tunnel_request_duration_seconds_bucket{hostname=\"a.example.com\",le=\"0.05\"} 1",
            "culvert_tunnel_request_duration_seconds_bucket{hostname=\"a.example.com\",le=\"+Inf\"} 1",
            "culvert_tunnel_request_duration_seconds_count{hostname=\"a.example.com\"} 1",
            "culvert_tunnel_request_duration_seconds_sum{hostname=\"a.example.com\"} 0.03",
            "culvert_tunnel_request_duration_seconds_count{hostname=\"_other\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn host_labels_are_bounded() {
        let m = Arc::new(ProxyMetrics::default());
        for i in 0..MAX_HOST_LABELS + 50 {
            drop(m.start(&format!("h{i}.example.com")));
        }
        let text = m.render(ConnectionGauges::default());
        let series = text
            .lines()
            .filter(|l| l.starts_with("culvert_tunnel_request_duration_seconds_count"))
            .count();
        assert_eq!(series, MAX_HOST_LABELS + 1);
        // Out-of-range codes count by class only.
        let mut g = m.start("h0.example.com");
        g.set_status(999);
        drop(g);
        let text = m.render(ConnectionGauges::default());
        assert!(text.contains("culvert_tunnel_responses_by_class{class=\"5xx\"} 1"));
        assert!(!text.contains("status_code=\"999\""));
        assert_eq!(host_label(Some("*")), OTHER_HOST);
        assert_eq!(host_label(Some("x.example.com")), "x.example.com");
        assert_eq!(escape_label("a\"b\\"), "a\\\"b\\\\");
    }
}
