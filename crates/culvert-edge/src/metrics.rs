//! Edge counters for the server's Prometheus `/metrics`, and a small text
//! exposition encoder shared with the binary (API metrics).
//!
//! Counters are plain atomics or small maps with bounded label sets
//! (status codes, fixed error kinds), so a scrape is cheap and label
//! cardinality cannot grow with traffic. Gauges that the registry already
//! knows (connections, connectors) are read at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A counter family keyed by a small label tuple.
#[derive(Debug, Default)]
pub struct LabeledCounter<K: Ord + Clone> {
    values: Mutex<BTreeMap<K, u64>>,
}

impl<K: Ord + Clone> LabeledCounter<K> {
    pub fn inc(&self, key: K) {
        self.add(key, 1);
    }

    pub fn add(&self, key: K, n: u64) {
        let mut g = self.values.lock().unwrap_or_else(|e| e.into_inner());
        *g.entry(key).or_insert(0) += n;
    }

    pub fn snapshot(&self) -> Vec<(K, u64)> {
        let g = self.values.lock().unwrap_or_else(|e| e.into_inner());
        g.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Prometheus text exposition (version 0.0.4), written family by family.
#[derive(Debug, Default)]
pub struct TextEncoder {
    out: String,
}

/// Escapes a label value (backslash, quote, newline).
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl TextEncoder {
    pub fn new() -> TextEncoder {
        TextEncoder::default()
    }

    /// `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// What the edge counts.
#[derive(Debug, Default)]
pub struct EdgeMetrics {
    /// Eyeball responses by HTTP status.
    pub eyeball_requests: LabeledCounter<u16>,
    /// Bytes read from / written to eyeball connections (public listeners).
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Requests that failed between edge and connector, by kind.
    pub stream_errors: LabeledCounter<&'static str>,
    /// Configuration pushes by outcome (`ok`, `rejected`, `failed`).
    pub config_pushes: LabeledCounter<&'static str>,
}

impl EdgeMetrics {
    pub fn proxy_error(&self, e: &crate::ProxyError) {
        use crate::ProxyError as P;
        let kind = match e {
            P::UnknownHost(_) => return,
            P::NoConnection(_) => "no_connection",
            P::OpenStream(_) => "open_stream",
            P::Send(_) => "send",
            P::BadResponse(_) => "bad_response",
            P::Connector(_) => "connector_error",
            P::Timeout(_) => "timeout",
        };
        self.stream_errors.inc(kind);
    }

    /// Writes the edge's families; `connections` and `connectors` come from
    /// the registry at scrape time.
    pub fn encode(&self, enc: &mut TextEncoder, connections: usize, connectors: usize) {
        enc.family(
            "culvert_edge_connections",
            "gauge",
            "Registered tunnel connections held by this edge.",
        );
        enc.sample("culvert_edge_connections", &[], connections as u64);
        enc.family(
            "culvert_edge_connectors",
            "gauge",
            "Distinct connectors with at least one registered connection on this edge.",
        );
        enc.sample("culvert_edge_connectors", &[], connectors as u64);
        enc.family(
            "culvert_edge_requests_total",
            "counter",
            "Eyeball requests answered by the public listeners, by status.",
        );
        for (status, n) in self.eyeball_requests.snapshot() {
            enc.sample(
                "culvert_edge_requests_total",
                &[("status", &status.to_string())],
                n,
            );
        }
        enc.family(
            "culvert_edge_received_bytes_total",
            "counter",
            "Bytes received from eyeballs.",
        );
        enc.sample(
            "culvert_edge_received_bytes_total",
            &[],
            self.bytes_in.load(Ordering::Relaxed),
        );
        enc.family(
            "culvert_edge_sent_bytes_total",
            "counter",
            "Bytes sent to eyeballs.",
        );
        enc.sample(
            "culvert_edge_sent_bytes_total",
            &[],
            self.bytes_out.load(Ordering::Relaxed),
        );
        enc.family(
            "culvert_edge_stream_errors_total",
            "counter",
            "Eyeball requests that failed between the edge and a connector, by kind.",
        );
        for (kind, n) in self.stream_errors.snapshot() {
            enc.sample("culvert_edge_stream_errors_total", &[("kind", kind)], n);
        }
        enc.family(
            "culvert_edge_config_pushes_total",
            "counter",
            "Remote configuration pushes to connectors, by outcome.",
        );
        for (outcome, n) in self.config_pushes.snapshot() {
            enc.sample(
                "culvert_edge_config_pushes_total",
                &[("outcome", outcome)],
                n,
            );
        }
    }
}

/// An eyeball connection that counts its bytes into [`EdgeMetrics`].
pub struct CountingIo<T> {
    inner: T,
    metrics: Arc<EdgeMetrics>,
}

impl<T> CountingIo<T> {
    pub fn new(inner: T, metrics: Arc<EdgeMetrics>) -> CountingIo<T> {
        CountingIo { inner, metrics }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountingIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.metrics.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountingIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.metrics
                .bytes_out
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.metrics
                .bytes_out
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format() {
        let m = EdgeMetrics::default();
        m.eyeball_requests.inc(200);
        m.eyeball_requests.inc(200);
        m.eyeball_requests.inc(502);
        m.stream_errors.inc("timeout");
        m.config_pushes.inc("ok");
        let mut enc = TextEncoder::new();
        m.encode(&mut enc, 4, 1);
        let text = enc.finish();
        assert!(text.contains("# TYPE culvert_edge_requests_total counter\n"));
        assert!(text.contains("culvert_edge_requests_total{status=\"200\"} 2\n"));
        assert!(text.contains("culvert_edge_requests_total{status=\"502\"} 1\n"));
        assert!(text.contains("culvert_edge_connections 4\n"));
        assert!(text.contains("culvert_edge_stream_errors_total{kind=\"timeout\"} 1\n"));
        assert!(text.contains("culvert_edge_config_pushes_total{outcome=\"ok\"} 1\n"));
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[tokio::test]
    async fn counting_io_counts_both_ways() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let m = Arc::new(EdgeMetrics::default());
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = CountingIo::new(a, m.clone());
        a.write_all(b"hello").await.unwrap();
        b.write_all(b"hi!").await.unwrap();
        let mut buf = [0u8; 3];
        a.read_exact(&mut buf).await.unwrap();
        assert_eq!(m.bytes_out.load(Ordering::Relaxed), 5);
        assert_eq!(m.bytes_in.load(Ordering::Relaxed), 3);
    }
}
