//! Private TCP flows through the edge (edge-protocol.md §4.5): culvert's
//! entry point for an authorised client, since there is no WARP client.
//!
//! On the management host, `GET /tcp/{tunnel_id}?dest=IP:PORT` with
//! `Connection: Upgrade`, `Upgrade: culvert-tcp` and an API token
//! (`Authorization: Bearer …`) of the tunnel's account holding Cloudflare
//! Tunnel Write opens a type-`tcp` data stream to one of the tunnel's QUIC
//! connections. The connector dials `dest` only when the tunnel's
//! `warp-routing` is enabled; its refusal becomes a 502 in the v4 envelope.
//! On success the answer is 101 and raw bytes flow both ways.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use culvert_api::auth::{TUNNEL_WRITE, authenticate, presented};
use culvert_proto::{ConnectRequest, ConnectionType};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use quinn::VarInt;
use uuid::Uuid;

use crate::Shared;

type Body = BoxBody<Bytes, std::io::Error>;

/// The `Upgrade` token a client asks for.
pub const UPGRADE_TOKEN: &str = "culvert-tcp";

/// Whether this management-host path is a private-flow request.
pub(crate) fn is_flow_path(path: &str) -> bool {
    path.starts_with("/tcp/")
}

/// `/tcp/{uuid}` and `dest=ip:port` from a request line, or why not.
pub fn parse_target(path: &str, query: Option<&str>) -> Result<(Uuid, SocketAddr), &'static str> {
    let id = path
        .strip_prefix("/tcp/")
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or("the path must be /tcp/{tunnel_id}")?;
    let dest = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "dest")
        .and_then(|(_, v)| v.parse::<SocketAddr>().ok())
        .ok_or("the dest query parameter must be ip:port")?;
    Ok((id, dest))
}

fn error(status: StatusCode, code: u32, message: &str, ray: &str) -> Response<Body> {
    let body = serde_json::json!({
        "success": false,
        "errors": [{"code": code, "message": message}],
        "messages": [],
        "result": null,
    })
    .to_string();
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(ray) {
        h.insert("cf-ray", v);
    }
    resp
}

fn wants_flow_upgrade(h: &http::HeaderMap) -> bool {
    h.get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE_TOKEN))
}

/// Serves `GET /tcp/{tunnel_id}?dest=…` on the management host.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    ray: &str,
) -> Response<Body> {
    let (tunnel_id, dest) = match parse_target(req.uri().path(), req.uri().query()) {
        Ok(t) => t,
        Err(m) => return error(StatusCode::BAD_REQUEST, 1001, m, ray),
    };
    if !wants_flow_upgrade(req.headers()) {
        let m = "private flows need Connection: Upgrade and Upgrade: culvert-tcp";
        return error(StatusCode::BAD_REQUEST, 1001, m, ray);
    }
    let principal = match presented(req.headers()) {
        Ok(p) => match authenticate(&shared.store, &p).await {
            Ok(principal) => principal,
            Err(e) => return error(e.status, 10000, "Authentication error", ray),
        },
        Err(_) => return error(StatusCode::UNAUTHORIZED, 10000, "Authentication error", ray),
    };
    let tunnel = match shared
        .store
        .get_tunnel(&principal.token.account_id, None, tunnel_id)
        .await
    {
        Ok(Some(t)) if t.deleted_at.is_none() => t,
        Ok(_) => return error(StatusCode::NOT_FOUND, 1003, "Tunnel not found", ray),
        Err(e) => {
            tracing::warn!(error = %e, "tunnel look-up failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                1000,
                "store unavailable",
                ray,
            );
        }
    };
    if !principal.has_any(&[TUNNEL_WRITE]) {
        return error(
            StatusCode::FORBIDDEN,
            10000,
            "Authentication error: the token lacks Cloudflare Tunnel Write",
            ray,
        );
    }

    let Some((conn, quic)) = shared
        .registry
        .candidates(tunnel.id)
        .into_iter()
        .find_map(|c| c.conn.quic().cloned().map(|q| (c, q)))
    else {
        let m = "the tunnel has no QUIC connection to carry the flow";
        return error(StatusCode::BAD_GATEWAY, 1033, m, ray);
    };
    let head = ConnectRequest {
        dest: dest.to_string(),
        connection_type: ConnectionType::Tcp,
        metadata: Vec::new(),
    }
    .encode();
    let opened =
        crate::transport::open_quic_stream(&conn, &quic, shared.tuning.open_stream_timeout).await;
    let (mut send, mut recv) = match opened {
        Ok(s) => s,
        Err(m) => return error(StatusCode::BAD_GATEWAY, 1033, &m, ray),
    };
    if let Err(e) = send.write_all(&head).await {
        return error(StatusCode::BAD_GATEWAY, 1033, &e.to_string(), ray);
    }
    let (resp, rest) = match crate::management::read_head(&mut recv).await {
        Ok(x) => x,
        Err(m) => return error(StatusCode::BAD_GATEWAY, 1033, &m, ray),
    };
    if !resp.error.is_empty() {
        let _ = send.reset(VarInt::from_u32(0));
        return error(StatusCode::BAD_GATEWAY, 1033, &resp.error, ray);
    }
    tracing::info!(tunnel = %tunnel.id, %dest, connection = %conn.id, %ray, "private TCP flow opened");
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(crate::management::splice(on, recv, send, rest));
    let mut out = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = out.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_TOKEN));
    if let Ok(v) = HeaderValue::from_str(ray) {
        h.insert("cf-ray", v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn targets() {
        let id = Uuid::from_u128(7);
        let path = format!("/tcp/{id}");
        assert_eq!(
            parse_target(&path, Some("dest=10.0.0.5%3A22")),
            Ok((id, "10.0.0.5:22".parse().unwrap()))
        );
        assert_eq!(
            parse_target(&path, Some("dest=[::1]:8080&x=1")),
            Ok((id, "[::1]:8080".parse().unwrap()))
        );
        assert!(parse_target(&path, Some("dest=db.internal:5432")).is_err());
        assert!(parse_target(&path, None).is_err());
        assert!(parse_target("/tcp/not-a-uuid", Some("dest=1.2.3.4:5")).is_err());
        assert!(is_flow_path(&path) && !is_flow_path("/logs"));
    }

    proptest! {
        #[test]
        fn parse_target_is_total(path in ".{0,60}", query in proptest::option::of(".{0,60}")) {
            let _ = parse_target(&path, query.as_deref());
        }
    }
}
