//! The management host (edge-protocol.md §6, api.md §10.4): eyeballs reach
//! `wss://<management-hostname>/logs?access_token=JWT[&connector_id=UUID]`
//! (and `/ping`, `/host_details`); the edge verifies the token (ES256
//! signature with the control plane's key, issuer, expiry, `res`, the
//! tunnel), picks a connector of that tunnel (the named one, else one that
//! advertises `management_logs`) and forwards the request through the
//! tunnel with `HttpHost` = the host connectors serve management on.
//!
//! The decisions ([`check_token`], [`select_connector`], [`rewrite_origin`],
//! [`Refusal`]) are pure and unit-tested; `handle` does the I/O.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use culvert_api::ManagementKeys;
use culvert_api::management::{Claims, ManagementError};
use culvert_proto::stream::DATA_STREAM_PREAMBLE;
use culvert_proto::{ConnectResponse, Limits};
use futures::StreamExt as _;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::AsyncReadExt as _;
use uuid::Uuid;

use crate::Shared;
use crate::registry::LiveConn;
use crate::request::{EyeballHead, ResponseError, build_connect_request, response_head};
use crate::upgrade::{UpgradeAnswer, upgrade_answer};

type Body = BoxBody<Bytes, std::io::Error>;

/// The feature a connector advertises when it can stream logs.
pub const FEATURE_MANAGEMENT_LOGS: &str = "management_logs";
/// The host cloudflared (and culvert's connector) serve management on by
/// default: the `HttpHost` the edge forwards with.
pub const DEFAULT_CONNECTOR_HOSTNAME: &str = "management.argotunnel.com";
/// Management answers other than `/logs` are tiny; bound them anyway.
const MAX_SMALL_BODY: usize = 64 * 1024;

/// Where the management host lives.
#[derive(Debug, Clone, Default)]
pub struct ManagementOptions {
    /// Public name eyeballs use (`--management-hostname`); `None` =
    /// `management.<tunnel-domain>`.
    pub hostname: Option<String>,
    /// `HttpHost` sent to connectors; `None` = [`DEFAULT_CONNECTOR_HOSTNAME`].
    pub connector_hostname: Option<String>,
}

/// A refused management request: HTTP status and the v4-style error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MissingToken,
    InvalidToken,
    ExpiredToken,
    WrongResource,
    UnknownTunnel,
    UnknownConnector,
    NoConnector,
    NotFound,
    Unreachable,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::MissingToken => StatusCode::BAD_REQUEST,
            Refusal::InvalidToken | Refusal::ExpiredToken => StatusCode::UNAUTHORIZED,
            Refusal::WrongResource => StatusCode::FORBIDDEN,
            Refusal::UnknownTunnel | Refusal::UnknownConnector | Refusal::NotFound => {
                StatusCode::NOT_FOUND
            }
            Refusal::NoConnector => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Unreachable => StatusCode::BAD_GATEWAY,
        }
    }

    /// Code 1001 and its message are cloudflared's own; the others follow
    /// the same envelope.
    pub fn code_and_message(self) -> (u32, &'static str) {
        match self {
            Refusal::MissingToken => (1001, "missing access_token query parameter"),
            Refusal::InvalidToken => (1002, "invalid access_token"),
            Refusal::ExpiredToken => (1003, "expired access_token"),
            Refusal::WrongResource => (1004, "access_token does not grant this resource"),
            Refusal::UnknownTunnel => (1005, "tunnel not found"),
            Refusal::UnknownConnector => (1006, "connector not found for this tunnel"),
            Refusal::NoConnector => (1007, "no connector of this tunnel supports management"),
            Refusal::NotFound => (1008, "no such management route"),
            Refusal::Unreachable => (1009, "the connector could not be reached"),
        }
    }

    pub fn body(self) -> String {
        let (code, message) = self.code_and_message();
        serde_json::json!({"success": false, "errors": [{"code": code, "message": message}]})
            .to_string()
    }
}

/// The management routes and the token resource each needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Ping,
    HostDetails,
    Logs,
}

impl Route {
    pub fn of(path: &str) -> Option<Route> {
        match path {
            "/ping" => Some(Route::Ping),
            "/host_details" => Some(Route::HostDetails),
            "/logs" => Some(Route::Logs),
            _ => None,
        }
    }

    /// Whether a token's `res` claim allows this route.
    pub fn allowed_by(self, res: &[String]) -> bool {
        let has = |r: &str| res.iter().any(|x| x == r);
        match self {
            Route::Logs => has("logs") || has("admin"),
            Route::HostDetails => has("host_details") || has("admin") || has("logs"),
            Route::Ping => !res.is_empty(),
        }
    }
}

/// The query parameters the edge reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub access_token: Option<String>,
    pub connector_id: Option<String>,
}

pub fn parse_query(query: Option<&str>) -> Query {
    let mut q = Query::default();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "access_token" if !v.is_empty() => q.access_token = Some(v.into_owned()),
            "connector_id" if !v.is_empty() => q.connector_id = Some(v.into_owned()),
            _ => {}
        }
    }
    q
}

/// Token checks: signature, issuer, expiry (by the API's verifier), then
/// the resource for this route.
pub fn check_token(
    keys: &ManagementKeys,
    token: Option<&str>,
    route: Route,
    now_secs: i64,
) -> Result<Claims, Refusal> {
    let token = token.ok_or(Refusal::MissingToken)?;
    let claims = keys.verify(token, now_secs).map_err(|e| match e {
        ManagementError::Expired => Refusal::ExpiredToken,
        _ => Refusal::InvalidToken,
    })?;
    if claims.tun.id.is_empty() || claims.tun.account_tag.is_empty() || claims.actor.id.is_empty() {
        return Err(Refusal::InvalidToken);
    }
    if !route.allowed_by(&claims.res) {
        return Err(Refusal::WrongResource);
    }
    Ok(claims)
}

/// Picks the connector: the named one if it has a live connection here,
/// else the first (in the registry's round-robin order) that advertises
/// `management_logs`. `live` is `(connection, connector)` in that order.
pub fn select_connector(
    live: &[(Uuid, Uuid)],
    features: &HashMap<Uuid, Vec<String>>,
    wanted: Option<&str>,
) -> Result<Uuid, Refusal> {
    if let Some(w) = wanted {
        let id = Uuid::parse_str(w.trim()).map_err(|_| Refusal::UnknownConnector)?;
        return live
            .iter()
            .find(|(_, c)| *c == id)
            .map(|(conn, _)| *conn)
            .ok_or(Refusal::UnknownConnector);
    }
    live.iter()
        .find(|(_, c)| {
            features
                .get(c)
                .is_some_and(|f| f.iter().any(|x| x == FEATURE_MANAGEMENT_LOGS))
        })
        .map(|(conn, _)| *conn)
        .ok_or(Refusal::NoConnector)
}

/// cloudflared's WebSocket accept refuses an `Origin` that is neither the
/// request's host nor under `*.cloudflare.com`: such an Origin (a custom
/// dashboard) is rewritten to the connector-side host. `None` = keep.
pub fn rewrite_origin(origin: &str, connector_host: &str) -> Option<String> {
    let host = url::Url::parse(origin)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
    match host {
        Some(h) if h == connector_host || h.ends_with(".cloudflare.com") => None,
        _ => Some(format!("https://{connector_host}")),
    }
}

/// Whether `host` (normalised: lower case, no port) is the management host.
pub(crate) fn is_management_host(shared: &Shared, host: &str) -> bool {
    host == shared.management_hostname
}

pub(crate) fn public_hostname(opts: &ManagementOptions, tunnel_domain: &str) -> String {
    opts.hostname
        .clone()
        .unwrap_or_else(|| format!("management.{tunnel_domain}"))
        .trim()
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

pub(crate) fn connector_hostname(opts: &ManagementOptions) -> String {
    opts.connector_hostname
        .clone()
        .unwrap_or_else(|| DEFAULT_CONNECTOR_HOSTNAME.to_owned())
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn refuse(r: Refusal, ray: &str) -> Response<Body> {
    tracing::info!(status = r.status().as_u16(), reason = r.code_and_message().1, %ray, "management request refused");
    let mut resp = Response::new(
        Full::new(Bytes::from(r.body()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = r.status();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(ray) {
        resp.headers_mut().insert("cf-ray", v);
    }
    resp
}

/// Serves one request for the management host.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    ray: &str,
) -> Response<Body> {
    if crate::private_flow::is_flow_path(req.uri().path()) {
        return crate::private_flow::handle(shared, req, ray).await;
    }
    let Some(route) = Route::of(req.uri().path()) else {
        return refuse(Refusal::NotFound, ray);
    };
    let query = parse_query(req.uri().query());
    let claims = match check_token(
        &shared.management_keys,
        query.access_token.as_deref(),
        route,
        now_secs(),
    ) {
        Ok(c) => c,
        Err(r) => return refuse(r, ray),
    };
    let conn = match pick(&shared, &claims, query.connector_id.as_deref()).await {
        Ok(c) => c,
        Err(r) => return refuse(r, ray),
    };
    let upgrade = route == Route::Logs && is_upgrade(req.headers());
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    match forward(&shared, &conn, &req, peer, ray, upgrade).await {
        Ok((resp, recv, send, rest)) => {
            if let (Some(on), Some(send)) = (on_upgrade, send)
                && resp.status() == StatusCode::SWITCHING_PROTOCOLS
            {
                tokio::spawn(splice(on, recv, send, rest));
                return resp.map(|_| Empty::new().map_err(|never| match never {}).boxed());
            }
            let (parts, _) = resp.into_parts();
            let first = futures::stream::iter((!rest.is_empty()).then_some(Ok(rest)));
            let body = first
                .chain(tokio_util::io::ReaderStream::with_capacity(
                    recv.take(MAX_SMALL_BODY as u64),
                    16 * 1024,
                ))
                .map(|r| r.map(Frame::data));
            Response::from_parts(parts, BodyExt::boxed(StreamBody::new(body)))
        }
        Err(e) => {
            tracing::warn!(error = %e, %ray, "management request could not be forwarded");
            refuse(Refusal::Unreachable, ray)
        }
    }
}

fn is_upgrade(h: &http::HeaderMap) -> bool {
    h.get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The token's tunnel must exist in its account; then a connection of the
/// chosen connector.
async fn pick(
    shared: &Shared,
    claims: &Claims,
    wanted: Option<&str>,
) -> Result<Arc<LiveConn>, Refusal> {
    let tunnel_id = Uuid::parse_str(&claims.tun.id).map_err(|_| Refusal::InvalidToken)?;
    match shared
        .store
        .get_tunnel(&claims.tun.account_tag, None, tunnel_id)
        .await
    {
        Ok(Some(t)) if t.deleted_at.is_none() => {}
        Ok(_) => return Err(Refusal::UnknownTunnel),
        Err(e) => {
            tracing::warn!(error = %e, "tunnel look-up failed");
            return Err(Refusal::Unreachable);
        }
    }
    let candidates = shared.registry.candidates(tunnel_id);
    if candidates.is_empty() {
        return Err(Refusal::NoConnector);
    }
    let live: Vec<(Uuid, Uuid)> = candidates.iter().map(|c| (c.id, c.connector_id)).collect();
    let features = if wanted.is_some() {
        HashMap::new()
    } else {
        match shared.store.list_connectors(tunnel_id).await {
            Ok(list) => list.into_iter().map(|c| (c.id, c.features)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "connector look-up failed");
                return Err(Refusal::Unreachable);
            }
        }
    };
    let conn_id = select_connector(&live, &features, wanted)?;
    candidates
        .into_iter()
        .find(|c| c.id == conn_id)
        .ok_or(Refusal::NoConnector)
}

type Forwarded = (
    Response<()>,
    quinn::RecvStream,
    Option<quinn::SendStream>,
    Bytes,
);

/// Opens a data stream, sends the request (no body: management routes are
/// all GET/HEAD) and reads the response head.
async fn forward(
    shared: &Shared,
    conn: &LiveConn,
    req: &Request<Incoming>,
    peer: SocketAddr,
    ray: &str,
    upgrade: bool,
) -> Result<Forwarded, String> {
    let host = &shared.management_connector_hostname;
    let mut headers = req.headers().clone();
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    if let Some(o) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
        && let Some(new) = rewrite_origin(o, host)
        && let Ok(v) = HeaderValue::from_str(&new)
    {
        headers.insert(header::ORIGIN, v);
    }
    let built = build_connect_request(&EyeballHead {
        method: req.method(),
        uri: req.uri(),
        headers: &headers,
        host,
        peer_ip: peer.ip(),
        ray,
        scheme: "https",
    })
    .map_err(|e| e.to_string())?;
    let request = if upgrade {
        crate::upgrade::into_websocket(built.request)
    } else {
        built.request
    };
    let quic = conn
        .conn
        .quic()
        .ok_or("the chosen connector connection uses HTTP/2; log streaming needs QUIC")?;
    let (mut send, mut recv) =
        crate::transport::open_quic_stream(conn, quic, shared.tuning.open_stream_timeout).await?;
    send.write_all(&request.encode())
        .await
        .map_err(|e| e.to_string())?;
    let send = if upgrade {
        Some(send)
    } else {
        let _ = send.finish();
        None
    };
    let timeout = shared
        .tuning
        .response_timeout
        .unwrap_or(std::time::Duration::from_secs(100));
    let (resp, rest) = tokio::time::timeout(timeout, read_head(&mut recv))
        .await
        .map_err(|_| "no response in time".to_string())??;
    let connector_err = |e: ResponseError| match e {
        ResponseError::Connector(m) => format!("connector error: {m}"),
        e => e.to_string(),
    };
    let mut out = Response::new(());
    let head = if upgrade {
        match upgrade_answer(&resp).map_err(connector_err)? {
            UpgradeAnswer::Switching(headers) => {
                *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                *out.headers_mut() = headers;
                None
            }
            UpgradeAnswer::Refused(head) => Some(head),
        }
    } else {
        Some(response_head(&resp).map_err(connector_err)?)
    };
    if let Some(head) = head {
        *out.status_mut() = head.status;
        *out.headers_mut() = head.headers;
    }
    if let Ok(v) = HeaderValue::from_str(ray) {
        out.headers_mut().insert("cf-ray", v);
    }
    Ok((out, recv, send, rest))
}

pub(crate) async fn read_head(
    recv: &mut quinn::RecvStream,
) -> Result<(ConnectResponse, Bytes), String> {
    let limit = DATA_STREAM_PREAMBLE.len() + Limits::DATA_STREAM.max_message_bytes;
    let mut buf = BytesMut::new();
    loop {
        match recv.read_chunk(16 * 1024, true).await {
            Ok(Some(c)) => buf.extend_from_slice(&c.bytes),
            Ok(None) => return Err("stream ended before a response head".into()),
            Err(e) => return Err(format!("stream failed: {e}")),
        }
        match ConnectResponse::decode(&buf, &Limits::DATA_STREAM) {
            Ok(Some((resp, used))) => return Ok((resp, buf.split_off(used).freeze())),
            Ok(None) if buf.len() <= limit => continue,
            Ok(None) => return Err("response head too large".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Relays bytes verbatim between the upgraded eyeball connection and the
/// stream (WebSocket frames for `/logs`, raw bytes for private flows).
pub(crate) async fn splice(
    on: hyper::upgrade::OnUpgrade,
    recv: quinn::RecvStream,
    send: quinn::SendStream,
    rest: Bytes,
) {
    let upgraded = match on.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "management upgrade failed");
            return;
        }
    };
    let mut eyeball = hyper_util::rt::TokioIo::new(upgraded);
    let mut tunnel = tokio::io::join(std::io::Cursor::new(rest).chain(recv), send);
    if let Err(e) = tokio::io::copy_bidirectional(&mut eyeball, &mut tunnel).await {
        tracing::debug!(error = %e, "management WebSocket relay ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_v4_errors() {
        assert_eq!(
            Refusal::MissingToken.body(),
            r#"{"success":false,"errors":[{"code":1001,"message":"missing access_token query parameter"}]}"#
        );
        assert_eq!(Refusal::MissingToken.status(), 400);
        assert_eq!(Refusal::ExpiredToken.status(), 401);
        assert_eq!(Refusal::WrongResource.status(), 403);
    }

    #[test]
    fn queries_and_routes() {
        let q = parse_query(Some("access_token=a.b.c&connector_id=x&other=1"));
        assert_eq!(q.access_token.as_deref(), Some("a.b.c"));
        assert_eq!(q.connector_id.as_deref(), Some("x"));
        assert_eq!(parse_query(Some("access_token=")), Query::default());
        assert_eq!(parse_query(None), Query::default());
        assert_eq!(Route::of("/logs"), Some(Route::Logs));
        assert_eq!(Route::of("/metrics"), None);
        let logs = vec!["logs".to_string()];
        assert!(Route::Logs.allowed_by(&logs));
        assert!(!Route::Logs.allowed_by(&["host_details".to_string()]));
        assert!(Route::Ping.allowed_by(&logs));
        assert!(!Route::Ping.allowed_by(&[]));
    }

    #[test]
    fn connector_selection() {
        let (c1, c2) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let (k1, k2) = (Uuid::from_u128(11), Uuid::from_u128(12));
        let live = [(c1, k1), (c2, k2)];
        let mut features = HashMap::new();
        features.insert(k1, vec!["serialized_headers".to_string()]);
        features.insert(k2, vec![FEATURE_MANAGEMENT_LOGS.to_string()]);
        assert_eq!(select_connector(&live, &features, None), Ok(c2));
        assert_eq!(
            select_connector(&live, &features, Some(&k1.to_string())),
            Ok(c1)
        );
        assert_eq!(
            select_connector(&live, &features, Some("nope")),
            Err(Refusal::UnknownConnector)
        );
        assert_eq!(
            select_connector(&live, &features, Some(&Uuid::from_u128(9).to_string())),
            Err(Refusal::UnknownConnector)
        );
        features.remove(&k2);
        assert_eq!(
            select_connector(&live, &features, None),
            Err(Refusal::NoConnector)
        );
    }

    #[test]
    fn origins() {
        let h = "management.argotunnel.com";
        assert_eq!(rewrite_origin("https://dash.cloudflare.com", h), None);
        assert_eq!(rewrite_origin("https://management.argotunnel.com", h), None);
        assert_eq!(
            rewrite_origin("https://my.dashboard.example", h).as_deref(),
            Some("https://management.argotunnel.com")
        );
        assert_eq!(
            rewrite_origin("garbage", h).as_deref(),
            Some("https://management.argotunnel.com")
        );
    }
}
