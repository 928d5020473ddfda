//! Eyeball HTTP request head → `ConnectRequest`, and `ConnectResponse` →
//! eyeball response head (pure logic; edge-protocol.md §4.3).

use std::net::IpAddr;

use culvert_proto::http_meta::{HttpRequestHead, HttpResponseHead, MetadataError};
use culvert_proto::{ConnectRequest, ConnectResponse};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};

/// Hop-by-hop headers (RFC 9110 §7.6.1 plus the usual legacy ones): they
/// describe one connection and are never forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers the edge sets itself; an eyeball's copies are dropped so they
/// cannot be spoofed.
const EDGE_SET: [&str; 4] = [
    "cf-ray",
    "cf-connecting-ip",
    "x-forwarded-for",
    "x-forwarded-proto",
];

/// `Expect: 100-continue` is answered by the edge's own HTTP server when the
/// body is first read; forwarding it would make the origin client wait for a
/// second, pointless 100.
const ANSWERED_HERE: [&str; 1] = ["expect"];

/// Prefixes of headers cloudflared gives internal meaning (e.g.
/// `Cf-Cloudflared-Proxy-Connection-Upgrade`); eyeballs may not send them.
const INTERNAL_PREFIXES: [&str; 2] = ["cf-cloudflared-", "cf-int-"];

/// The parts of an eyeball request the `ConnectRequest` is built from.
#[derive(Debug, Clone, Copy)]
pub struct EyeballHead<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    /// The `Host` value as the eyeball sent it (port included).
    pub host: &'a str,
    pub peer_ip: IpAddr,
    pub ray: &'a str,
    /// Scheme of the public listener (`http`).
    pub scheme: &'a str,
}

/// A `ConnectRequest` and whether a request body follows it on the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltRequest {
    pub request: ConnectRequest,
    pub has_body: bool,
}

/// Builds the `ConnectRequest` for an eyeball request: `dest` is the full
/// URL, metadata `HttpMethod`, `HttpHost`, then `HttpHeader:Cf-Ray`, the
/// eyeball's end-to-end headers in order, and `Cf-Connecting-Ip`,
/// `X-Forwarded-For`, `X-Forwarded-Proto`.
///
/// cloudflared reads a body only when `Content-Length` is present or
/// `Transfer-Encoding` says chunked; `Transfer-Encoding` is hop-by-hop, so a
/// chunked eyeball body is announced with `Transfer-Encoding: chunked`.
pub fn build_connect_request(head: &EyeballHead<'_>) -> Result<BuiltRequest, MetadataError> {
    let path = head
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let path = if path.starts_with('/') || path == "*" {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let dest = format!("{}://{}{}", head.scheme, head.host, path);

    let connection_named = connection_tokens(head.headers);
    let mut headers: Vec<(String, String)> = Vec::with_capacity(head.headers.len() + 4);
    headers.push(("Cf-Ray".into(), head.ray.to_owned()));
    let mut forwarded_for: Vec<String> = Vec::new();
    for (name, value) in head.headers {
        let n = name.as_str();
        if n == "x-forwarded-for" {
            forwarded_for.push(lossy(value));
            continue;
        }
        if n == "host"
            || HOP_BY_HOP.contains(&n)
            || EDGE_SET.contains(&n)
            || ANSWERED_HERE.contains(&n)
            || INTERNAL_PREFIXES.iter().any(|p| n.starts_with(p))
            || connection_named.iter().any(|c| c == n)
        {
            continue;
        }
        headers.push((canonical_header_name(n), lossy(value)));
    }

    let content_length = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = head
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .any(|v| lossy(v).to_ascii_lowercase().contains("chunked"));
    if chunked {
        headers.push(("Transfer-Encoding".into(), "chunked".into()));
    }
    let has_body = chunked || content_length.is_some_and(|n| n > 0);

    let ip = head.peer_ip.to_canonical().to_string();
    headers.push(("Cf-Connecting-Ip".into(), ip.clone()));
    forwarded_for.push(ip);
    headers.push(("X-Forwarded-For".into(), forwarded_for.join(", ")));
    headers.push(("X-Forwarded-Proto".into(), head.scheme.to_owned()));

    let request = HttpRequestHead {
        dest,
        websocket: false,
        method: head.method.as_str().to_owned(),
        host: head.host.to_owned(),
        headers,
        extra: Vec::new(),
    }
    .to_connect_request()?;
    Ok(BuiltRequest { request, has_body })
}

/// Lowercase header names listed in `Connection` (also hop-by-hop).
fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| {
            lossy(v)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn lossy(v: &HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

/// `user-agent` → `User-Agent` (Go's canonical MIME header form, what the
/// real edge and cloudflared use).
pub fn canonical_header_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        if upper {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c.to_ascii_lowercase());
        }
        upper = c == '-';
    }
    out
}

/// The eyeball response head for a connector's answer.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// Why a `ConnectResponse` is not a usable response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// The connector reported an error (`ConnectResponse.error`).
    #[error("{0}")]
    Connector(String),
    #[error("{0}")]
    Metadata(#[from] MetadataError),
    #[error("status {0} cannot be relayed")]
    Status(u16),
}

/// Turns a `ConnectResponse` into a status and headers. Hop-by-hop headers
/// and header lines that are not valid HTTP are dropped; the body framing is
/// left to the HTTP server (`Content-Length` is kept when valid).
pub fn response_head(resp: &ConnectResponse) -> Result<ResponseHead, ResponseError> {
    if resp.is_error() {
        return Err(ResponseError::Connector(resp.error.clone()));
    }
    let head = HttpResponseHead::from_connect_response(resp)?;
    // 1xx (e.g. 101 without a websocket request) cannot be relayed as a
    // final response.
    let status = StatusCode::from_u16(head.status)
        .ok()
        .filter(|s| !s.is_informational())
        .ok_or(ResponseError::Status(head.status))?;
    let mut headers = HeaderMap::with_capacity(head.headers.len());
    for (name, value) in &head.headers {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        let Ok(value) = HeaderValue::from_str(value) else {
            continue;
        };
        if name == header::CONTENT_LENGTH
            && value
                .to_str()
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .is_none()
        {
            continue;
        }
        headers.append(name, value);
    }
    Ok(ResponseHead { status, headers })
}

/// Whether a response to `method` with `status` carries no body (RFC 9110).
pub fn bodiless(method: &Method, status: StatusCode) -> bool {
    method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
}

/// A ray id in Cloudflare's shape: 16 hex digits, `-`, location.
pub fn new_ray(location: &str) -> String {
    let n = uuid::Uuid::new_v4().as_u64_pair().0;
    format!("{n:016x}-{location}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use culvert_proto::Metadata;

    fn head<'a>(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap) -> EyeballHead<'a> {
        EyeballHead {
            method,
            uri,
            headers,
            host: "app.test",
            peer_ip: "::ffff:192.0.2.7".parse().unwrap(),
            ray: "0000000000000001-LAB",
            scheme: "http",
        }
    }

    fn meta(r: &ConnectRequest) -> Vec<(String, String)> {
        r.metadata
            .iter()
            .map(|m| (m.key.clone(), m.val.clone()))
            .collect()
    }

    #[test]
    fn get_matches_recorded_shape() {
        // quic-03: GET http://app.test/ with User-Agent and Accept.
        let mut h = HeaderMap::new();
        h.insert("host", "app.test".parse().unwrap());
        h.insert("user-agent", "golden-edge/1".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        let (m, u) = (Method::GET, Uri::from_static("/"));
        let b = build_connect_request(&head(&m, &u, &h)).unwrap();
        assert!(!b.has_body);
        assert_eq!(b.request.dest, "http://app.test/");
        assert_eq!(
            meta(&b.request)[..5],
            [
                ("HttpMethod".into(), "GET".into()),
                ("HttpHost".into(), "app.test".into()),
                ("HttpHeader:Cf-Ray".into(), "0000000000000001-LAB".into()),
                ("HttpHeader:User-Agent".into(), "golden-edge/1".into()),
                ("HttpHeader:Accept".into(), "*/*".into()),
            ]
        );
        assert_eq!(
            meta(&b.request)[5..],
            [
                ("HttpHeader:Cf-Connecting-Ip".into(), "192.0.2.7".into()),
                ("HttpHeader:X-Forwarded-For".into(), "192.0.2.7".into()),
                ("HttpHeader:X-Forwarded-Proto".into(), "http".into()),
            ]
        );
    }

    #[test]
    fn body_rule_hop_by_hop_and_spoofing() {
        let mut h = HeaderMap::new();
        h.insert("host", "app.test:8080".parse().unwrap());
        h.insert("content-length", "16".parse().unwrap());
        h.insert("connection", "keep-alive, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("expect", "100-continue".parse().unwrap());
        h.insert("cf-ray", "spoofed".parse().unwrap());
        h.insert("cf-connecting-ip", "6.6.6.6".parse().unwrap());
        h.insert(
            "cf-cloudflared-proxy-connection-upgrade",
            "control-stream".parse().unwrap(),
        );
        h.append("x-forwarded-for", "10.0.0.1".parse().unwrap());
        h.append("accept", "a".parse().unwrap());
        h.append("accept", "b".parse().unwrap());
        let (m, u) = (Method::POST, Uri::from_static("/submit?x=1"));
        let mut e = head(&m, &u, &h);
        e.host = "app.test:8080";
        let b = build_connect_request(&e).unwrap();
        assert!(b.has_body);
        assert_eq!(b.request.dest, "http://app.test:8080/submit?x=1");
        let md = meta(&b.request);
        let keys: Vec<&str> = md.iter().map(|(k, _)| k.as_str()).collect();
        assert!(keys.contains(&"HttpHeader:Content-Length"));
        for bad in [
            "HttpHeader:Connection",
            "HttpHeader:X-Secret",
            "HttpHeader:Keep-Alive",
            "HttpHeader:Expect",
            "HttpHeader:Host",
        ] {
            assert!(!keys.contains(&bad), "{bad}");
        }
        assert!(
            !keys
                .iter()
                .any(|k| k.starts_with("HttpHeader:Cf-Cloudflared"))
        );
        assert_eq!(
            md.iter().filter(|(k, _)| k == "HttpHeader:Accept").count(),
            2
        );
        assert_eq!(
            md.iter().filter(|(k, _)| k == "HttpHeader:Cf-Ray").count(),
            1
        );
        assert!(md.contains(&(
            "HttpHeader:X-Forwarded-For".into(),
            "10.0.0.1, 192.0.2.7".into()
        )));
        assert!(md.contains(&("HttpHeader:Cf-Connecting-Ip".into(), "192.0.2.7".into())));
        assert!(md.contains(&("HttpHost".into(), "app.test:8080".into())));

        let mut h = HeaderMap::new();
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        let b = build_connect_request(&head(&m, &u, &h)).unwrap();
        assert!(b.has_body);
        assert!(
            meta(&b.request).contains(&("HttpHeader:Transfer-Encoding".into(), "chunked".into()))
        );

        let mut h = HeaderMap::new();
        h.insert("content-length", "0".parse().unwrap());
        assert!(!build_connect_request(&head(&m, &u, &h)).unwrap().has_body);
    }

    #[test]
    fn canonical_names() {
        assert_eq!(canonical_header_name("user-agent"), "User-Agent");
        assert_eq!(canonical_header_name("x-forwarded-for"), "X-Forwarded-For");
        assert_eq!(canonical_header_name("etag"), "Etag");
        assert_eq!(
            canonical_header_name("WWW-authenticate"),
            "Www-Authenticate"
        );
    }

    #[test]
    fn response_heads() {
        let ok = ConnectResponse {
            error: String::new(),
            metadata: vec![
                Metadata::new("HttpStatus", "200"),
                Metadata::new("HttpHeader:Content-Type", "text/html"),
                Metadata::new("HttpHeader:Content-Length", "75"),
                Metadata::new("HttpHeader:Set-Cookie", "a=1"),
                Metadata::new("HttpHeader:Set-Cookie", "b=2"),
                Metadata::new("HttpHeader:Connection", "close"),
                Metadata::new("HttpHeader:Bad Name", "x"),
                Metadata::new("HttpHeader:X-Bad-Value", "a\nb"),
            ],
        };
        let h = response_head(&ok).unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.headers.get_all("set-cookie").iter().count(), 2);
        assert!(h.headers.get("connection").is_none());
        assert!(h.headers.get("x-bad-value").is_none());
        assert_eq!(h.headers.len(), 4);

        assert_eq!(
            response_head(&ConnectResponse::error("boom")).unwrap_err(),
            ResponseError::Connector("boom".into())
        );
        assert!(matches!(
            response_head(&ConnectResponse::default()),
            Err(ResponseError::Metadata(_))
        ));
        let info = ConnectResponse {
            error: String::new(),
            metadata: vec![Metadata::new("HttpStatus", "101")],
        };
        assert_eq!(
            response_head(&info).unwrap_err(),
            ResponseError::Status(101)
        );
        assert!(bodiless(&Method::HEAD, StatusCode::OK));
        assert!(bodiless(&Method::GET, StatusCode::NOT_MODIFIED));
        assert!(!bodiless(&Method::GET, StatusCode::OK));
    }

    #[test]
    fn rays() {
        let r = new_ray("LAB");
        assert_eq!(r.len(), 20);
        assert!(r.ends_with("-LAB"));
        assert_ne!(new_ray("LAB"), r);
    }
}
