//! HTTP over QUIC data streams: the `ConnectRequest`/`ConnectResponse`
//! metadata keys (edge-protocol.md §4.3–4.5) and the conversions between them
//! and an HTTP request/response head.

use crate::connect::{ConnectRequest, ConnectResponse, ConnectionType, Metadata};

/// Request method.
pub const HTTP_METHOD: &str = "HttpMethod";
/// Host used for ingress matching (any port is stripped by cloudflared).
pub const HTTP_HOST: &str = "HttpHost";
/// Prefix of one header value: `HttpHeader:<Name>` → value (repeat for lists).
pub const HTTP_HEADER_PREFIX: &str = "HttpHeader:";
/// Response status code, decimal.
pub const HTTP_STATUS: &str = "HttpStatus";
/// Tracing context from the edge (optional).
pub const CF_TRACE_ID: &str = "cf-trace-id";
/// Flow identifier for TCP flows (optional).
pub const FLOW_ID: &str = "FlowID";
/// `missing|empty|data`; briefly used by cloudflared, now ignored (TUN-8592).
pub const HTTP_REQ_BODY_HINT: &str = "HttpReqBodyHint";
/// Set to `true` on a `ConnectResponse` error when the connector's flow limiter
/// refused the flow (newer cloudflared).
pub const FLOW_CONNECT_RATE_LIMITED: &str = "FlowConnectRateLimited";
/// Tracing spans returned on a TCP ack when `cf-trace-id` was given.
pub const CF_INT_CLOUDFLARED_TRACING: &str = "Cf-Int-Cloudflared-Tracing";
/// Header cloudflared strips from websocket requests.
pub const CF_CLOUDFLARED_PROXY_CONNECTION_UPGRADE: &str = "Cf-Cloudflared-Proxy-Connection-Upgrade";

/// Metadata that does not form a valid HTTP head. Not retryable: the peer
/// built a bad request; cloudflared fails such a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// cloudflared splits header keys on `:` and needs exactly two parts, so
    /// a header name containing `:` cannot be carried.
    #[error("malformed header metadata key {0:?}")]
    MalformedHeaderKey(String),
    #[error("missing {0} metadata")]
    Missing(&'static str),
    #[error("invalid HttpStatus {0:?}")]
    InvalidStatus(String),
    #[error("expected an {expected:?} ConnectRequest, got {got:?}")]
    WrongType {
        expected: &'static str,
        got: ConnectionType,
    },
}

impl MetadataError {
    /// Always false.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// A header name/value pair as carried in metadata.
pub type Header = (String, String);

/// The head of an HTTP (or websocket) request carried in a `ConnectRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequestHead {
    /// Full URL, e.g. `https://app.example/path?q`.
    pub dest: String,
    pub websocket: bool,
    pub method: String,
    pub host: String,
    /// In order; repeated names are separate entries.
    pub headers: Vec<Header>,
    /// Other metadata (`cf-trace-id`, `FlowID`, unknown keys), kept verbatim.
    pub extra: Vec<Metadata>,
}

impl HttpRequestHead {
    /// Builds the `ConnectRequest`: `HttpMethod`, `HttpHost`, then one
    /// `HttpHeader:<Name>` per value, then `extra` (the order the recorded
    /// edge used).
    pub fn to_connect_request(&self) -> Result<ConnectRequest, MetadataError> {
        let mut metadata = Vec::with_capacity(2 + self.headers.len() + self.extra.len());
        metadata.push(Metadata::new(HTTP_METHOD, self.method.clone()));
        metadata.push(Metadata::new(HTTP_HOST, self.host.clone()));
        push_headers(&mut metadata, &self.headers)?;
        metadata.extend(self.extra.iter().cloned());
        Ok(ConnectRequest {
            dest: self.dest.clone(),
            connection_type: if self.websocket {
                ConnectionType::Websocket
            } else {
                ConnectionType::Http
            },
            metadata,
        })
    }

    /// Reads a `ConnectRequest` of type http or websocket the way cloudflared
    /// does: a missing `HttpMethod` means `GET` (Go's `http.NewRequest`), and
    /// a missing `HttpHost` an empty host. For websocket requests the
    /// `Cf-Cloudflared-Proxy-Connection-Upgrade` header is dropped.
    pub fn from_connect_request(req: &ConnectRequest) -> Result<Self, MetadataError> {
        let websocket = match req.connection_type {
            ConnectionType::Http => false,
            ConnectionType::Websocket => true,
            ConnectionType::Tcp => {
                return Err(MetadataError::WrongType {
                    expected: "http or websocket",
                    got: ConnectionType::Tcp,
                });
            }
        };
        let mut head = HttpRequestHead {
            dest: req.dest.clone(),
            websocket,
            method: String::new(),
            host: String::new(),
            headers: Vec::new(),
            extra: Vec::new(),
        };
        for m in &req.metadata {
            if m.key == HTTP_METHOD {
                head.method = m.val.clone();
            } else if m.key == HTTP_HOST {
                head.host = m.val.clone();
            } else if let Some(name) = header_name(&m.key)? {
                if websocket && name.eq_ignore_ascii_case(CF_CLOUDFLARED_PROXY_CONNECTION_UPGRADE) {
                    continue;
                }
                head.headers.push((name.to_owned(), m.val.clone()));
            } else {
                head.extra.push(m.clone());
            }
        }
        if head.method.is_empty() {
            head.method = "GET".into();
        }
        Ok(head)
    }

    /// cloudflared's body rule: a request has a body only with a
    /// `Content-Length` header or a `Transfer-Encoding` containing `chunked`
    /// (websocket streams always carry bytes). An edge forwarding a body must
    /// therefore send one of those headers.
    pub fn has_body(&self) -> bool {
        self.websocket
            || self.headers.iter().any(|(n, v)| {
                n.eq_ignore_ascii_case("content-length")
                    || (n.eq_ignore_ascii_case("transfer-encoding")
                        && v.to_ascii_lowercase().contains("chunked"))
            })
    }

    /// Values of a header, case-insensitively.
    pub fn header<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        header_values(&self.headers, name)
    }
}

/// The head of an HTTP response carried in a `ConnectResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponseHead {
    pub status: u16,
    pub headers: Vec<Header>,
    /// Other metadata, kept verbatim.
    pub extra: Vec<Metadata>,
}

impl HttpResponseHead {
    /// `HttpStatus` first, then `HttpHeader:*`, then `extra` (cloudflared's order).
    pub fn to_connect_response(&self) -> Result<ConnectResponse, MetadataError> {
        let mut metadata = Vec::with_capacity(1 + self.headers.len() + self.extra.len());
        metadata.push(Metadata::new(HTTP_STATUS, self.status.to_string()));
        push_headers(&mut metadata, &self.headers)?;
        metadata.extend(self.extra.iter().cloned());
        Ok(ConnectResponse {
            error: String::new(),
            metadata,
        })
    }

    /// Reads a successful response. Callers check
    /// [`ConnectResponse::is_error`] first: an error response has no usable
    /// head (treat it as 502).
    pub fn from_connect_response(resp: &ConnectResponse) -> Result<Self, MetadataError> {
        let mut status = None;
        let mut headers = Vec::new();
        let mut extra = Vec::new();
        for m in &resp.metadata {
            if m.key == HTTP_STATUS {
                status = Some(parse_status(&m.val)?);
            } else if let Some(name) = header_name(&m.key)? {
                headers.push((name.to_owned(), m.val.clone()));
            } else {
                extra.push(m.clone());
            }
        }
        Ok(HttpResponseHead {
            status: status.ok_or(MetadataError::Missing(HTTP_STATUS))?,
            headers,
            extra,
        })
    }

    pub fn header<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        header_values(&self.headers, name)
    }
}

/// A TCP flow request (type `tcp`): `dest` is `ip:port`.
pub fn tcp_connect_request(dest: impl Into<String>, extra: Vec<Metadata>) -> ConnectRequest {
    ConnectRequest {
        dest: dest.into(),
        connection_type: ConnectionType::Tcp,
        metadata: extra,
    }
}

/// True if an error response carries `FlowConnectRateLimited=true`.
pub fn is_flow_rate_limited(resp: &ConnectResponse) -> bool {
    resp.metadata
        .iter()
        .any(|m| m.key == FLOW_CONNECT_RATE_LIMITED && m.val == "true")
}

/// The header name of a metadata key, `None` for non-header keys.
pub fn header_name(key: &str) -> Result<Option<&str>, MetadataError> {
    let Some(name) = key.strip_prefix(HTTP_HEADER_PREFIX) else {
        return Ok(None);
    };
    if name.contains(':') {
        return Err(MetadataError::MalformedHeaderKey(key.to_owned()));
    }
    Ok(Some(name))
}

/// The metadata key for a header name.
pub fn header_key(name: &str) -> Result<String, MetadataError> {
    if name.contains(':') {
        return Err(MetadataError::MalformedHeaderKey(name.to_owned()));
    }
    Ok(format!("{HTTP_HEADER_PREFIX}{name}"))
}

fn push_headers(out: &mut Vec<Metadata>, headers: &[Header]) -> Result<(), MetadataError> {
    for (n, v) in headers {
        out.push(Metadata::new(header_key(n)?, v.clone()));
    }
    Ok(())
}

fn parse_status(s: &str) -> Result<u16, MetadataError> {
    match s.parse::<u16>() {
        Ok(code) if (100..=999).contains(&code) => Ok(code),
        _ => Err(MetadataError::InvalidStatus(s.to_owned())),
    }
}

fn header_values<'a>(headers: &'a [Header], name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn get() -> HttpRequestHead {
        HttpRequestHead {
            dest: "http://app.test/".into(),
            websocket: false,
            method: "GET".into(),
            host: "app.test".into(),
            headers: vec![
                ("Cf-Ray".into(), "0000000000000001-LAB".into()),
                ("Accept".into(), "*/*".into()),
                ("Accept".into(), "text/html".into()),
            ],
            extra: vec![Metadata::new(CF_TRACE_ID, "abc")],
        }
    }

    #[test]
    fn request_round_trip_and_order() {
        let req = get().to_connect_request().unwrap();
        let keys: Vec<_> = req.metadata.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "HttpMethod",
                "HttpHost",
                "HttpHeader:Cf-Ray",
                "HttpHeader:Accept",
                "HttpHeader:Accept",
                "cf-trace-id"
            ]
        );
        assert_eq!(HttpRequestHead::from_connect_request(&req).unwrap(), get());
        assert_eq!(get().header("accept").count(), 2);
        assert!(!get().has_body());
    }

    #[test]
    fn body_rule() {
        let mut h = get();
        h.headers.push(("content-length".into(), "0".into()));
        assert!(h.has_body());
        let mut h = get();
        h.headers
            .push(("Transfer-Encoding".into(), "gzip, Chunked".into()));
        assert!(h.has_body());
        let mut h = get();
        h.websocket = true;
        assert!(h.has_body());
    }

    #[test]
    fn malformed_keys_and_defaults() {
        let mut h = get();
        h.headers.push(("a:b".into(), "x".into()));
        assert!(matches!(
            h.to_connect_request(),
            Err(MetadataError::MalformedHeaderKey(_))
        ));
        let req = ConnectRequest {
            dest: "http://x/".into(),
            connection_type: ConnectionType::Websocket,
            metadata: vec![
                Metadata::new(
                    "HttpHeader:Cf-Cloudflared-Proxy-Connection-Upgrade",
                    "websocket",
                ),
                Metadata::new("HttpHeader:Upgrade", "websocket"),
            ],
        };
        let h = HttpRequestHead::from_connect_request(&req).unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.headers, vec![("Upgrade".into(), "websocket".into())]);
        let tcp = tcp_connect_request("10.0.0.1:22", vec![]);
        assert!(matches!(
            HttpRequestHead::from_connect_request(&tcp),
            Err(MetadataError::WrongType { .. })
        ));
    }

    #[test]
    fn response() {
        let head = HttpResponseHead {
            status: 404,
            headers: vec![("X".into(), "1".into())],
            extra: vec![],
        };
        let r = head.to_connect_response().unwrap();
        assert_eq!(r.metadata[0], Metadata::new("HttpStatus", "404"));
        assert_eq!(HttpResponseHead::from_connect_response(&r).unwrap(), head);
        let bad = ConnectResponse {
            error: String::new(),
            metadata: vec![Metadata::new("HttpStatus", "abc")],
        };
        assert!(HttpResponseHead::from_connect_response(&bad).is_err());
        assert_eq!(
            HttpResponseHead::from_connect_response(&ConnectResponse::default()),
            Err(MetadataError::Missing(HTTP_STATUS))
        );
        let limited = ConnectResponse {
            error: "too many flows".into(),
            metadata: vec![Metadata::new(FLOW_CONNECT_RATE_LIMITED, "true")],
        };
        assert!(is_flow_rate_limited(&limited));
    }

    proptest! {
        #[test]
        fn from_metadata_total(meta in proptest::collection::vec((any::<String>(), any::<String>()), 0..8), t in 0u8..3) {
            let connection_type = [ConnectionType::Http, ConnectionType::Websocket, ConnectionType::Tcp][t as usize];
            let metadata: Vec<_> = meta.into_iter().map(|(k, v)| Metadata::new(k, v)).collect();
            let _ = HttpRequestHead::from_connect_request(&ConnectRequest { dest: String::new(), connection_type, metadata: metadata.clone() });
            let _ = HttpResponseHead::from_connect_response(&ConnectResponse { error: String::new(), metadata });
        }
    }
}
