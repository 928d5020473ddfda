//! The connector's management service (edge-protocol.md §6): `/ping`,
//! `/host_details` and the `/logs` WebSocket, served in process for
//! requests whose `HttpHost` is the management hostname, as cloudflared's
//! internal ingress rule does. The edge has verified the JWT; we only parse
//! it (for the actor, which decides pre-emption).
//!
//! [`protocol`] holds the I/O-free session rules, [`layer`] the tracing
//! layer that feeds sessions; this module does the stream I/O.

pub mod layer;
pub mod protocol;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use culvert_proto::connect::{ConnectRequest, ConnectionType};
use culvert_proto::http_meta::{HttpRequestHead, HttpResponseHead};
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::AsyncReadExt as _;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::proxy::{StreamError, dest_path};
use protocol::{
    Admission, CLOSE_IDLE, CLOSE_SESSION_LIMIT, FirstCommand, LogsMessage, MISSING_TOKEN_BODY,
    REASON_IDLE, REASON_SESSION_LIMIT, SessionSlot,
};

/// cloudflared's default `--management-hostname`.
pub const DEFAULT_MANAGEMENT_HOSTNAME: &str = "management.argotunnel.com";
/// The feature string advertising log streaming.
pub const FEATURE_MANAGEMENT_LOGS: &str = "management_logs";
/// How long a close waits for the peer's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Client frames are small commands.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// One connector's management service, shared by its HA connections.
pub struct ManagementService {
    hostname: String,
    connector_id: Uuid,
    /// Where the edge is, to find the local address facing it.
    edge_addrs: Vec<String>,
    slot: Mutex<SessionSlot>,
    /// Cancels a session when a newer one of the same actor pre-empts it.
    sessions: Mutex<Vec<(u64, CancellationToken)>>,
    idle_limit: Duration,
    ping_interval: Duration,
}

impl std::fmt::Debug for ManagementService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagementService")
            .field("hostname", &self.hostname)
            .field("connector_id", &self.connector_id)
            .finish_non_exhaustive()
    }
}

impl ManagementService {
    pub fn new(hostname: &str, connector_id: Uuid, edge_addrs: Vec<String>) -> ManagementService {
        ManagementService {
            hostname: hostname.trim().trim_end_matches('.').to_ascii_lowercase(),
            connector_id,
            edge_addrs,
            slot: Mutex::new(SessionSlot::default()),
            sessions: Mutex::new(Vec::new()),
            idle_limit: Duration::from_secs(protocol::IDLE_LIMIT_SECS),
            ping_interval: Duration::from_secs(protocol::PING_INTERVAL_SECS),
        }
    }

    /// Shorter limits (tests).
    pub fn with_timers(mut self, idle_limit: Duration, ping_interval: Duration) -> Self {
        self.idle_limit = idle_limit;
        self.ping_interval = ping_interval;
        self
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Whether a request is for the management service (its `HttpHost`,
    /// port stripped, is the management hostname).
    pub fn handles(&self, req: &ConnectRequest) -> bool {
        if req.connection_type == ConnectionType::Tcp {
            return false;
        }
        req.metadata
            .iter()
            .find(|m| m.key == culvert_proto::http_meta::HTTP_HOST)
            .is_some_and(|m| host_matches(&m.val, &self.hostname))
    }

    /// Serves one management request on a data stream whose head has been
    /// read. Finishes or resets the stream.
    pub async fn serve(
        self: &Arc<Self>,
        req: ConnectRequest,
        initial: Bytes,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Result<(), StreamError> {
        let head = match HttpRequestHead::from_connect_request(&req) {
            Ok(h) => h,
            Err(e) => {
                send.write_all(&crate::proxy::error_response(e.to_string()).encode())
                    .await?;
                let _ = send.finish();
                return Ok(());
            }
        };
        let (path, pq) = dest_path(&head.dest);
        let route = Route::of(&head.method, &path);
        let token = protocol::access_token(&pq).and_then(|t| protocol::parse_token(&t));
        let reply = match (&route, &token) {
            (Route::NotFound, _) => {
                simple(404, "text/plain; charset=utf-8", "404 page not found\n")
            }
            (_, None) => simple(400, "application/json", MISSING_TOKEN_BODY),
            (Route::Ping, Some(_)) => simple(200, "text/plain; charset=utf-8", ""),
            (Route::HostDetails, Some(_)) => {
                let body = self.host_details().to_string();
                simple(200, "application/json", &body)
            }
            (Route::Logs, Some(claims)) => match self.websocket_accept(&head) {
                Ok(resp) => {
                    send.write_all(&encode_head(&resp)).await?;
                    tracing::info!(actor = %claims.actor_id, "management: log streaming connection opened");
                    self.run_logs(&claims.actor_id, initial, send, recv).await;
                    return Ok(());
                }
                Err(reply) => reply,
            },
        };
        let (resp, body) = reply;
        send.write_all(&encode_head(&resp)).await?;
        if head.method != "HEAD" && !body.is_empty() {
            send.write_all(body.as_bytes()).await?;
        }
        send.finish()?;
        Ok(())
    }

    fn host_details(&self) -> serde_json::Value {
        serde_json::json!({
            "connector_id": self.connector_id,
            "ip": self.local_ip().map(|i| i.to_string()).unwrap_or_default(),
            "hostname": os_hostname(),
        })
    }

    /// The local address this host uses towards the edge (no packet sent).
    fn local_ip(&self) -> Option<IpAddr> {
        use std::net::ToSocketAddrs as _;
        let edge = self.edge_addrs.first()?.to_socket_addrs().ok()?.next()?;
        let bind: std::net::SocketAddr = if edge.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let s = std::net::UdpSocket::bind(bind).ok()?;
        s.connect(edge).ok()?;
        Some(s.local_addr().ok()?.ip())
    }

    /// The WebSocket handshake answer, or the refusal to send instead.
    fn websocket_accept(
        &self,
        head: &HttpRequestHead,
    ) -> Result<HttpResponseHead, (HttpResponseHead, String)> {
        let key = head.header("Sec-Websocket-Key").next().map(str::to_owned);
        let Some(key) = key.filter(|_| head.websocket) else {
            return Err(simple(
                426,
                "text/plain; charset=utf-8",
                "WebSocket protocol violation: Connection header \"\" does not contain Upgrade\n",
            ));
        };
        if let Some(origin) = head.header("Origin").next()
            && !origin_allowed(origin, &head.host)
        {
            return Err(simple(
                403,
                "text/plain; charset=utf-8",
                &format!(
                    "request Origin {origin:?} is not authorized for Host {:?}\n",
                    head.host
                ),
            ));
        }
        Ok(HttpResponseHead {
            status: 101,
            headers: vec![
                ("Upgrade".into(), "websocket".into()),
                ("Connection".into(), "Upgrade".into()),
                (
                    "Sec-Websocket-Accept".into(),
                    derive_accept_key(key.as_bytes()),
                ),
            ],
            extra: Vec::new(),
        })
    }

    /// One `/logs` WebSocket connection, until either side ends it.
    async fn run_logs(
        self: &Arc<Self>,
        actor: &str,
        initial: Bytes,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        let io = tokio::io::join(std::io::Cursor::new(initial).chain(recv), send);
        self.run_logs_io(actor, io).await;
    }

    /// The `/logs` session over any byte stream whose WebSocket handshake
    /// is done (the data stream in production, a pipe in tests).
    pub async fn run_logs_io<IO>(self: &Arc<Self>, actor: &str, io: IO)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_CLIENT_MESSAGE))
            .max_frame_size(Some(MAX_CLIENT_MESSAGE));
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        let (mut tx, mut rx) = ws.split();
        let mut ping = tokio::time::interval(self.ping_interval);
        ping.tick().await;

        // Before streaming: the first command, within the idle limit.
        let idle = tokio::time::sleep(self.idle_limit);
        tokio::pin!(idle);
        let filters = loop {
            tokio::select! {
                // The idle limit falls on a ping tick (300 s = 20 × 15 s):
                // close then rather than ping once more.
                biased;
                _ = &mut idle => {
                    closing(&mut tx, &mut rx, close(CLOSE_IDLE, REASON_IDLE)).await;
                    return;
                }
                _ = ping.tick() => {
                    if tx.send(Message::Ping(Bytes::new())).await.is_err() { return; }
                }
                m = rx.next() => match m {
                    Some(Ok(Message::Text(t))) => match protocol::first_command(t.as_str()) {
                        FirstCommand::Start(f) => break f,
                        FirstCommand::Close(code, reason) => {
                            closing(&mut tx, &mut rx, close(code, reason)).await;
                            return;
                        }
                    },
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Binary(_))) => {
                        closing(&mut tx, &mut rx, close(protocol::CLOSE_EXPECTED_START, protocol::REASON_EXPECTED_START)).await;
                        return;
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                }
            }
        };

        let session = layer::next_session_id();
        let cancel = CancellationToken::new();
        let admission = lock(&self.slot).admit(session, actor);
        match admission {
            Admission::Refused => {
                tracing::info!(actor, "management: refusing a second streaming session");
                closing(
                    &mut tx,
                    &mut rx,
                    close(CLOSE_SESSION_LIMIT, REASON_SESSION_LIMIT),
                )
                .await;
                return;
            }
            Admission::Preempted(old) => {
                let mut sessions = lock(&self.sessions);
                sessions.retain(|(id, c)| {
                    if *id == old {
                        c.cancel();
                        false
                    } else {
                        true
                    }
                });
                sessions.push((session, cancel.clone()));
            }
            Admission::Started => lock(&self.sessions).push((session, cancel.clone())),
        }
        let mut entries = layer::hub().attach(session, filters);
        tracing::info!(actor, session, "management: streaming logs");

        let reason = loop {
            tokio::select! {
                _ = cancel.cancelled() => break close(1000, "session pre-empted by the same actor"),
                _ = ping.tick() => {
                    if tx.send(Message::Ping(Bytes::new())).await.is_err() { break Message::Close(None); }
                }
                e = entries.recv() => match e {
                    Some(entry) => {
                        let frame = LogsMessage::new(vec![entry]).encode();
                        if tx.send(Message::text(frame)).await.is_err() { break Message::Close(None); }
                    }
                    None => break close(1000, ""),
                },
                m = rx.next() => match m {
                    // Anything but stop_streaming (e.g. a second start) is ignored.
                    Some(Ok(Message::Text(t))) => {
                        if let Ok(protocol::ClientMessage::StopStreaming) = protocol::ClientMessage::parse(t.as_str()) {
                            break close(1000, "");
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break Message::Close(None),
                    Some(Ok(_)) => {}
                }
            }
        };
        layer::hub().detach(session);
        lock(&self.slot).release(session);
        lock(&self.sessions).retain(|(id, _)| *id != session);
        tracing::info!(actor, session, "management: log streaming ended");
        if matches!(&reason, Message::Close(Some(_))) {
            closing(&mut tx, &mut rx, reason).await;
        }
        let _ = tx.close().await;
    }
}

/// Sends a close frame and waits (bounded) for the peer's, so that the
/// closing handshake completes before the stream ends.
async fn closing<S, R, E>(tx: &mut S, rx: &mut R, frame: Message)
where
    S: futures::Sink<Message> + Unpin,
    R: futures::Stream<Item = Result<Message, E>> + Unpin,
{
    if tx.send(frame).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(m)) = rx.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    }))
}

fn encode_head(head: &HttpResponseHead) -> Vec<u8> {
    head.to_connect_response()
        .unwrap_or_else(|e| crate::proxy::error_response(e.to_string()))
        .encode()
}

fn simple(status: u16, content_type: &str, body: &str) -> (HttpResponseHead, String) {
    (
        HttpResponseHead {
            status,
            headers: vec![
                ("Content-Type".into(), content_type.into()),
                ("Content-Length".into(), body.len().to_string()),
            ],
            extra: Vec::new(),
        },
        body.to_owned(),
    )
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Ping,
    HostDetails,
    Logs,
    NotFound,
}

impl Route {
    fn of(method: &str, path: &str) -> Route {
        match (method, path) {
            ("GET" | "HEAD", "/ping") => Route::Ping,
            ("GET", "/host_details") => Route::HostDetails,
            ("GET", "/logs") => Route::Logs,
            _ => Route::NotFound,
        }
    }
}

/// Host comparison as the internal ingress rule does: case-insensitive,
/// port ignored.
pub fn host_matches(host: &str, hostname: &str) -> bool {
    let h = host.trim();
    let h = match h.rsplit_once(':') {
        Some((name, port)) if !name.contains(']') || name.ends_with(']') => {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                h
            }
        }
        _ => h,
    };
    h.trim_end_matches('.').eq_ignore_ascii_case(hostname)
}

/// The WebSocket library cloudflared uses accepts no `Origin`, one whose
/// host is the request's Host, or one under `*.cloudflare.com`.
pub fn origin_allowed(origin: &str, host: &str) -> bool {
    let Ok(u) = url::Url::parse(origin) else {
        return false;
    };
    let Some(oh) = u.host_str() else { return false };
    let authority = match u.port() {
        Some(p) => format!("{oh}:{p}"),
        None => oh.to_owned(),
    };
    authority.eq_ignore_ascii_case(host)
        || oh.eq_ignore_ascii_case(host)
        || oh.to_ascii_lowercase().ends_with(".cloudflare.com")
}

fn os_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{EventType, LogEntry, LogLevel};

    async fn client(
        svc: &Arc<ManagementService>,
        actor: &str,
    ) -> WebSocketStream<tokio::io::DuplexStream> {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (svc, actor) = (Arc::clone(svc), actor.to_owned());
        tokio::spawn(async move { svc.run_logs_io(&actor, a).await });
        WebSocketStream::from_raw_socket(b, Role::Client, None).await
    }

    /// Reads until a close frame; counts pings on the way.
    async fn close_of(ws: &mut WebSocketStream<tokio::io::DuplexStream>) -> (u16, usize) {
        let mut pings = 0;
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => {
                    return (f.map_or(1005, |f| u16::from(f.code)), pings);
                }
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("{e}"),
                None => panic!("closed without a close frame"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_sessions_close_with_4003_after_pings() {
        let svc = Arc::new(ManagementService::new("m", Uuid::nil(), vec![]));
        let mut ws = client(&svc, "me").await;
        let started = tokio::time::Instant::now();
        let (code, pings) = close_of(&mut ws).await;
        assert_eq!(code, CLOSE_IDLE);
        assert!(started.elapsed() >= Duration::from_secs(300));
        assert_eq!(pings, 19, "a ping every 15 s before the 5 min idle limit");
    }

    #[tokio::test(start_paused = true)]
    async fn session_rules_over_a_pipe() {
        let svc = Arc::new(ManagementService::new("m", Uuid::nil(), vec![]));
        // Binary or a non-start first command: 4001.
        let mut ws = client(&svc, "me").await;
        ws.send(Message::text(r#"{"type":"stop_streaming"}"#))
            .await
            .unwrap();
        assert_eq!(close_of(&mut ws).await.0, protocol::CLOSE_EXPECTED_START);

        let start = protocol::ClientMessage::StartStreaming {
            filters: Some(protocol::Filters {
                events: vec![EventType::Udp],
                ..Default::default()
            }),
        }
        .to_json();
        let mut a = client(&svc, "alice").await;
        a.send(Message::text(start.clone())).await.unwrap();
        // Wait until the session holds the slot.
        while lock(&svc.slot).active().is_none() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut b = client(&svc, "bob").await;
        b.send(Message::text(start.clone())).await.unwrap();
        assert_eq!(close_of(&mut b).await.0, CLOSE_SESSION_LIMIT);

        // Entries matching the filters arrive as one-entry logs frames
        // (udp: no other test or connector emits those).
        layer::hub().publish(LogLevel::Info, EventType::Udp, || LogEntry {
            time: "t".into(),
            level: LogLevel::Info,
            message: "udp flow".into(),
            event: EventType::Udp,
            fields: Default::default(),
        });
        let frame = loop {
            match a.next().await.unwrap().unwrap() {
                Message::Text(t) => break t,
                _ => continue,
            }
        };
        let logs = LogsMessage::decode(frame.as_str()).unwrap().logs;
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].message, "udp flow");

        // The same actor pre-empts; the old session is closed normally.
        let mut a2 = client(&svc, "alice").await;
        a2.send(Message::text(start)).await.unwrap();
        assert_eq!(close_of(&mut a).await.0, 1000);
        a2.send(Message::text(r#"{"type":"stop_streaming"}"#))
            .await
            .unwrap();
        assert_eq!(close_of(&mut a2).await.0, 1000);
        assert!(lock(&svc.slot).active().is_none());
    }

    #[test]
    fn routes_and_hosts() {
        assert_eq!(Route::of("GET", "/logs"), Route::Logs);
        assert_eq!(Route::of("HEAD", "/ping"), Route::Ping);
        assert_eq!(Route::of("POST", "/ping"), Route::NotFound);
        assert_eq!(Route::of("GET", "/host_details"), Route::HostDetails);
        assert!(host_matches(
            "Management.ArgoTunnel.com:443",
            "management.argotunnel.com"
        ));
        assert!(host_matches(
            "management.argotunnel.com",
            "management.argotunnel.com"
        ));
        assert!(!host_matches(
            "x.argotunnel.com",
            "management.argotunnel.com"
        ));
    }

    #[test]
    fn origins() {
        assert!(origin_allowed("https://dash.cloudflare.com", "m.example"));
        assert!(origin_allowed("https://m.example", "m.example"));
        assert!(origin_allowed("http://m.example:8080", "m.example:8080"));
        assert!(!origin_allowed("https://evil.example", "m.example"));
        assert!(!origin_allowed("not a url", "m.example"));
    }

    #[test]
    fn handshake_answers() {
        let svc = ManagementService::new("management.argotunnel.com", Uuid::nil(), vec![]);
        let mut head = HttpRequestHead {
            dest: "https://management.argotunnel.com/logs?access_token=x".into(),
            websocket: true,
            method: "GET".into(),
            host: "management.argotunnel.com".into(),
            headers: vec![(
                "Sec-Websocket-Key".into(),
                "dGhlIHNhbXBsZSBub25jZQ==".into(),
            )],
            extra: vec![],
        };
        let ok = svc.websocket_accept(&head).unwrap();
        assert_eq!(ok.status, 101);
        assert!(ok.headers.contains(&(
            "Sec-Websocket-Accept".into(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()
        )));
        head.headers
            .push(("Origin".into(), "https://evil.example".into()));
        assert_eq!(svc.websocket_accept(&head).unwrap_err().0.status, 403);
        head.websocket = false;
        assert_eq!(svc.websocket_accept(&head).unwrap_err().0.status, 426);
    }
}
