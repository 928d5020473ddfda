//! Feeds `/logs` sessions from the connector's real `tracing` events.
//!
//! [`layer`] is a `tracing_subscriber` layer (with its own filter, so the
//! console's `--loglevel` does not hide debug events from a session) that
//! turns events of this crate into [`LogEntry`]s and offers them to the one
//! attached session through a bounded channel: when the session is slow the
//! newest entries are dropped, logging never waits. With no session
//! attached the filter says no, so events cost one atomic load.
//!
//! Event types: an event inside an `http_request` span (see
//! [`request_span`]) is `http`; an event with a string field `event` names
//! its type (`tcp`, `udp`); everything else is `cloudflared`. When an
//! `http_request` span closes, one `http` entry summarises the request:
//! method, host, path, status and duration.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use culvert_proto::connect::ConnectRequest;
use culvert_proto::http_meta::{HTTP_HOST, HTTP_METHOD};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::DynFilterFn;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::protocol::{EventType, Filters, LogEntry, LogLevel, SESSION_BUFFER};

/// Name of the per-request span.
pub const REQUEST_SPAN: &str = "http_request";
/// Only this crate's events are streamed (tests run edges in process too).
const TARGET_PREFIX: &str = "culvert_connector";

struct Sink {
    session: u64,
    filters: Filters,
    tx: mpsc::Sender<LogEntry>,
}

/// Where log entries go: the attached sessions (one per management
/// service; several only when several connectors share a process, as in
/// tests).
#[derive(Default)]
pub struct LogHub {
    sinks: ArcSwap<Vec<Arc<Sink>>>,
    dropped: AtomicU64,
}

static HUB: std::sync::OnceLock<LogHub> = std::sync::OnceLock::new();

/// The process's hub: the tracing subscriber is process-wide, and a
/// connector is one process in production, as a cloudflared is.
pub fn hub() -> &'static LogHub {
    HUB.get_or_init(LogHub::default)
}

/// Session ids unique in the process (the hub is shared by services).
pub fn next_session_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl LogHub {
    /// Attaches a session and returns its entries.
    pub fn attach(&self, session: u64, filters: Filters) -> mpsc::Receiver<LogEntry> {
        let (tx, rx) = mpsc::channel(SESSION_BUFFER);
        let sink = Arc::new(Sink {
            session,
            filters,
            tx,
        });
        self.sinks.rcu(|cur| {
            let mut v = Vec::clone(cur);
            v.push(Arc::clone(&sink));
            v
        });
        rx
    }

    /// Detaches `session`.
    pub fn detach(&self, session: u64) {
        self.sinks.rcu(|cur| {
            cur.iter()
                .filter(|s| s.session != session)
                .cloned()
                .collect::<Vec<_>>()
        });
    }

    pub fn is_active(&self) -> bool {
        !self.sinks.load().is_empty()
    }

    /// Entries dropped because a session's buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Offers an entry to every attached session whose filters want it;
    /// builds it only if one does.
    pub fn publish(&self, level: LogLevel, event: EventType, build: impl FnOnce() -> LogEntry) {
        let sinks = self.sinks.load();
        let mut entry = None;
        let mut build = Some(build);
        for sink in sinks.iter() {
            if !sink.filters.accepts(level, event, fastrand::f64()) {
                continue;
            }
            if entry.is_none()
                && let Some(b) = build.take()
            {
                entry = Some(b());
            }
            if let Some(e) = &entry
                && sink.tx.try_send(e.clone()).is_err()
            {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The layer to add to the process's subscriber.
pub fn layer<S>() -> impl Layer<S> + Send + Sync
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let filter = DynFilterFn::new(|meta: &Metadata<'_>, _| {
        meta.target().starts_with(TARGET_PREFIX) && hub().is_active()
    })
    // Other crates' callsites are never ours: saying so once per callsite
    // keeps their trace spans (quinn opens one per packet) from being
    // built at all, instead of asking this filter every time.
    .with_callsite_filter(|meta: &Metadata<'_>| {
        if meta.target().starts_with(TARGET_PREFIX) {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    });
    ManagementLayer.with_filter(filter)
}

/// A span around one proxied HTTP request; the layer reports it when it
/// closes. `status` is recorded by the proxy once the response head is
/// known ([`record_status`]).
pub fn request_span(req: &ConnectRequest) -> tracing::Span {
    use tracing::field::Empty;
    let span = tracing::debug_span!(
        REQUEST_SPAN,
        method = Empty,
        host = Empty,
        path = Empty,
        cf_ray = Empty,
        status = Empty
    );
    if span.is_disabled() {
        return span;
    }
    let (path, _) = crate::proxy::dest_path(&req.dest);
    span.record("path", path.as_str());
    for m in &req.metadata {
        if m.key == HTTP_METHOD {
            span.record("method", m.val.as_str());
        } else if m.key == HTTP_HOST {
            span.record("host", m.val.as_str());
        } else if m.key.eq_ignore_ascii_case("HttpHeader:Cf-Ray") {
            span.record("cf_ray", m.val.as_str());
        }
    }
    span
}

/// Records the response status on the current request span, if any.
pub fn record_status(status: u16) {
    tracing::Span::current().record("status", status);
}

fn level_of(l: &Level) -> LogLevel {
    match *l {
        Level::ERROR => LogLevel::Error,
        Level::WARN => LogLevel::Warn,
        Level::INFO => LogLevel::Info,
        _ => LogLevel::Debug,
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Collects an event's or span's fields as JSON.
#[derive(Default)]
struct JsonVisitor {
    message: Option<String>,
    fields: Map<String, Value>,
}

impl Visit for JsonVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        if field.name() == "message" {
            self.message = Some(s);
        } else {
            self.fields
                .insert(field.name().to_owned(), Value::String(s));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
        } else {
            self.fields
                .insert(field.name().to_owned(), Value::String(value.to_owned()));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.insert(field.name().to_owned(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.insert(field.name().to_owned(), value.into());
    }
}

/// Kept in a request span's extensions.
struct RequestData {
    fields: Map<String, Value>,
    start: Instant,
}

/// See the module docs; build it with [`layer`].
pub struct ManagementLayer;

impl<S> Layer<S> for ManagementLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != REQUEST_SPAN {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut v = JsonVisitor::default();
        attrs.record(&mut v);
        span.extensions_mut().insert(RequestData {
            fields: v.fields,
            start: Instant::now(),
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(data) = ext.get_mut::<RequestData>() {
            let mut v = JsonVisitor::default();
            values.record(&mut v);
            data.fields.extend(v.fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut level = level_of(meta.level());
        let mut v = JsonVisitor::default();
        event.record(&mut v);
        let mut kind = match v.fields.get("event").and_then(Value::as_str) {
            Some(e) => EventType::parse(e).unwrap_or(EventType::Cloudflared),
            None => EventType::Cloudflared,
        };
        // zerolog promotes entries carrying an error to level error.
        if v.fields.contains_key("error") {
            level = LogLevel::Error;
        }
        let mut span_fields = None;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                if let Some(data) = span.extensions().get::<RequestData>() {
                    kind = EventType::Http;
                    span_fields = Some(data.fields.clone());
                    break;
                }
            }
        }
        hub().publish(level, kind, || {
            let mut fields = v.fields;
            fields.remove("event");
            if let Some(extra) = span_fields {
                for (k, val) in extra {
                    fields.entry(k).or_insert(val);
                }
            }
            LogEntry {
                time: now_rfc3339(),
                level,
                message: v.message.unwrap_or_default(),
                event: kind,
                fields,
            }
        });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(data) = span.extensions_mut().remove::<RequestData>() else {
            return;
        };
        hub().publish(LogLevel::Debug, EventType::Http, || {
            let mut fields = data.fields;
            let millis = data.start.elapsed().as_secs_f64() * 1000.0;
            fields.insert(
                "duration_ms".into(),
                Value::from((millis * 1000.0).round() / 1000.0),
            );
            let text = |k: &str| fields.get(k).and_then(Value::as_str).unwrap_or("");
            let status = match fields.get("status") {
                Some(Value::Number(n)) => n.to_string(),
                _ => "failed".into(),
            };
            let message = format!(
                "{} {}{} {status}",
                text("method"),
                text("host"),
                text("path")
            );
            LogEntry {
                time: now_rfc3339(),
                level: LogLevel::Debug,
                message,
                event: EventType::Http,
                fields,
            }
        });
    }
}
