//! The HTTP/2 transport's conventions (edge-protocol.md §5): request-kind
//! headers, cloudflared's response-header serialisation, the response-meta
//! JSON and the config-push bodies. Header names are lowercase (HTTP/2).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use serde::{Deserialize, Serialize};

/// Selects a special request kind (values below).
pub const PROXY_CONNECTION_UPGRADE: &str = "cf-cloudflared-proxy-connection-upgrade";
pub const UPGRADE_CONTROL_STREAM: &str = "control-stream";
pub const UPGRADE_UPDATE_CONFIGURATION: &str = "update-configuration";
pub const UPGRADE_WEBSOCKET: &str = "websocket";
/// Non-empty ⇒ a TCP (private routing) request to `:authority`.
pub const PROXY_SRC: &str = "cf-cloudflared-proxy-src";
/// All origin response headers, serialised with [`serialize_headers`].
pub const RESPONSE_HEADERS: &str = "cf-cloudflared-response-headers";
/// [`ResponseMeta`] JSON.
pub const RESPONSE_META: &str = "cf-cloudflared-response-meta";
/// Legacy (h2mux only); not used by the HTTP/2 transport.
pub const REQUEST_HEADERS: &str = "cf-cloudflared-request-headers";

/// What an edge-initiated HTTP/2 request asks of cloudflared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    ConfigUpdate,
    Websocket,
    Tcp,
    ControlStream,
    Http,
}

/// Classifies a request from its headers in cloudflared's order
/// (`determineHTTP2Type`): names case-insensitive, values exact.
pub fn classify_request<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])> + Clone,
) -> RequestKind {
    let get = |name: &str| {
        headers
            .clone()
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let upgrade = get(PROXY_CONNECTION_UPGRADE);
    if upgrade == Some(UPGRADE_UPDATE_CONFIGURATION.as_bytes()) {
        RequestKind::ConfigUpdate
    } else if upgrade == Some(UPGRADE_WEBSOCKET.as_bytes()) {
        RequestKind::Websocket
    } else if get(PROXY_SRC).is_some_and(|v| !v.is_empty()) {
        RequestKind::Tcp
    } else if upgrade == Some(UPGRADE_CONTROL_STREAM.as_bytes()) {
        RequestKind::ControlStream
    } else {
        RequestKind::Http
    }
}

/// True if cloudflared puts a response header into [`RESPONSE_HEADERS`]:
/// everything except `:*`, `cf-int-*`, `cf-cloudflared-*`, `cf-proxy-*`,
/// but the websocket handshake headers are always kept.
pub fn should_serialize_response_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    let control = n.starts_with(':')
        || n.starts_with("cf-int-")
        || n.starts_with("cf-cloudflared-")
        || n.starts_with("cf-proxy-");
    let websocket = matches!(
        n.as_str(),
        "sec-websocket-accept" | "connection" | "upgrade"
    );
    !control || websocket
}

/// `b64(name):b64(value)` pairs joined by `;`, standard alphabet without
/// padding, one pair per value. The caller filters with
/// [`should_serialize_response_header`].
pub fn serialize_headers<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    headers: impl IntoIterator<Item = (N, V)>,
) -> String {
    let mut out = String::new();
    for (n, v) in headers {
        if !out.is_empty() {
            out.push(';');
        }
        STANDARD_NO_PAD.encode_string(n.as_ref(), &mut out);
        out.push(':');
        STANDARD_NO_PAD.encode_string(v.as_ref(), &mut out);
    }
    out
}

/// A serialised header that cannot be read back. Not retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("serialized header pair {0} does not have exactly two parts")]
    WrongParts(usize),
    #[error("serialized header pair {0} is not unpadded standard base64")]
    Base64(usize),
}

/// A header name/value as raw bytes.
pub type RawHeader = (Vec<u8>, Vec<u8>);

/// Inverse of [`serialize_headers`]; empty pairs are skipped (as in
/// cloudflared). Names and values are bytes: values may be non-UTF-8.
pub fn deserialize_headers(s: &str) -> Result<Vec<RawHeader>, HeaderError> {
    let mut out = Vec::new();
    for (i, pair) in s.split(';').enumerate() {
        if pair.is_empty() {
            continue;
        }
        let mut parts = pair.split(':');
        let (Some(n), Some(v), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(HeaderError::WrongParts(i));
        };
        let n = STANDARD_NO_PAD
            .decode(n)
            .map_err(|_| HeaderError::Base64(i))?;
        let v = STANDARD_NO_PAD
            .decode(v)
            .map_err(|_| HeaderError::Base64(i))?;
        out.push((n, v));
    }
    Ok(out)
}

/// Who produced a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseSource {
    Origin,
    /// cloudflared's own error response (status 502).
    Cloudflared,
}

/// [`RESPONSE_META`]: `{"src":"origin"}`, `{"src":"cloudflared"}`, newer
/// versions may add `"flow_rate_limited":true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseMeta {
    pub src: ResponseSource,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flow_rate_limited: bool,
}

impl ResponseMeta {
    pub const ORIGIN: ResponseMeta = ResponseMeta {
        src: ResponseSource::Origin,
        flow_rate_limited: false,
    };

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(s: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(s)
    }
}

/// Body of an `update-configuration` request:
/// `{"version":N,"config":<ingress JSON object>}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigPushBody {
    pub version: i32,
    pub config: serde_json::Value,
}

/// Its response body: `{"lastAppliedVersion":N,"err":null}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigPushResponse {
    #[serde(rename = "lastAppliedVersion")]
    pub last_applied_version: i32,
    pub err: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{events, transcript};
    use proptest::prelude::*;

    #[test]
    fn classify() {
        let h = |v: &[(&'static str, &'static str)]| {
            let v: Vec<(&str, &[u8])> = v.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
            classify_request(v)
        };
        assert_eq!(
            h(&[("Cf-Cloudflared-Proxy-Connection-Upgrade", "control-stream")]),
            RequestKind::ControlStream
        );
        assert_eq!(
            h(&[(PROXY_CONNECTION_UPGRADE, "update-configuration")]),
            RequestKind::ConfigUpdate
        );
        assert_eq!(
            h(&[(PROXY_CONNECTION_UPGRADE, "websocket")]),
            RequestKind::Websocket
        );
        // TCP wins over control-stream, as in cloudflared's order.
        assert_eq!(
            h(&[
                (PROXY_SRC, "1"),
                (PROXY_CONNECTION_UPGRADE, "control-stream")
            ]),
            RequestKind::Tcp
        );
        assert_eq!(h(&[(PROXY_SRC, "")]), RequestKind::Http);
        assert_eq!(h(&[("accept", "*/*")]), RequestKind::Http);
    }

    #[test]
    fn spec_example_and_filter() {
        let s = serialize_headers([("X-Origin", "yes"), ("Content-Length", "88")]);
        assert_eq!(s, "WC1PcmlnaW4:eWVz;Q29udGVudC1MZW5ndGg:ODg");
        assert!(should_serialize_response_header("Content-Type"));
        assert!(!should_serialize_response_header(":status"));
        assert!(!should_serialize_response_header(
            "Cf-Int-Cloudflared-Tracing"
        ));
        assert!(!should_serialize_response_header(
            "cf-cloudflared-response-meta"
        ));
        assert!(should_serialize_response_header("Upgrade"));
        assert!(deserialize_headers("a:b:c").is_err());
        assert!(deserialize_headers("YQ==:Yg").is_err());
        assert_eq!(deserialize_headers(";;").unwrap(), vec![]);
    }

    /// h2-03 and h2-02: cloudflared's serialized headers, meta and config
    /// push bodies.
    #[test]
    fn h2_transcripts() {
        let t = transcript("h2-03-http-get.json");
        let resp = events(&t, |e| {
            e["dir"] == "cloudflared->edge" && e["decoded"]["headers"].is_array()
        })
        .next()
        .unwrap();
        let headers = resp["decoded"]["headers"].as_array().unwrap();
        let get = |n: &str| {
            headers
                .iter()
                .find(|h| h[0] == n)
                .map(|h| h[1].as_str().unwrap().to_owned())
                .unwrap()
        };
        let ser = get(RESPONSE_HEADERS);
        let pairs = deserialize_headers(&ser).unwrap();
        let as_str: Vec<(String, String)> = pairs
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8(n.clone()).unwrap(),
                    String::from_utf8(v.clone()).unwrap(),
                )
            })
            .collect();
        assert!(as_str.contains(&("Content-Type".into(), "text/html".into())));
        assert!(as_str.contains(&("Content-Length".into(), "75".into())));
        assert!(as_str.contains(&("Server".into(), "golden-origin/1.0".into())));
        assert_eq!(serialize_headers(pairs), ser);
        assert_eq!(
            ResponseMeta::from_json(&get(RESPONSE_META)).unwrap(),
            ResponseMeta::ORIGIN
        );
        assert_eq!(ResponseMeta::ORIGIN.to_json(), get(RESPONSE_META));

        let t = transcript("h2-02-config-push.json");
        let req = events(&t, |e| {
            e["dir"] == "edge->cloudflared" && e["decoded"]["headers"].is_array()
        })
        .next()
        .unwrap();
        let hs: Vec<(&str, &[u8])> = req["decoded"]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h[0].as_str().unwrap(), h[1].as_str().unwrap().as_bytes()))
            .collect();
        assert_eq!(classify_request(hs), RequestKind::ConfigUpdate);
        let texts: Vec<&str> = events(&t, |e| e["decoded"]["text"].is_string())
            .map(|e| e["decoded"]["text"].as_str().unwrap())
            .collect();
        let body: ConfigPushBody = serde_json::from_str(texts[0]).unwrap();
        assert_eq!(body.version, 1);
        assert_eq!(serde_json::to_string(&body).unwrap(), texts[0]);
        let r: ConfigPushResponse = serde_json::from_str(texts[1]).unwrap();
        assert_eq!(r.last_applied_version, 1);
        assert_eq!(serde_json::to_string(&r).unwrap(), texts[1]);

        let control = rpc_control_request();
        assert_eq!(classify_request(control), RequestKind::ControlStream);
    }

    fn rpc_control_request() -> Vec<(&'static str, &'static [u8])> {
        let t = transcript("h2-01-registration.json");
        let has = events(&t, |e| e["decoded"]["headers"].is_array()).any(|e| {
            e["decoded"]["headers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h[0] == PROXY_CONNECTION_UPGRADE && h[1] == UPGRADE_CONTROL_STREAM)
        });
        assert!(has, "h2-01 has the control-stream request");
        vec![(PROXY_CONNECTION_UPGRADE, UPGRADE_CONTROL_STREAM.as_bytes())]
    }

    proptest! {
        #[test]
        fn round_trip(h in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..20), proptest::collection::vec(any::<u8>(), 0..40)), 0..6)) {
            let s = serialize_headers(h.clone());
            // Empty name and value serialise to an empty pair ":"; keep them.
            prop_assert_eq!(deserialize_headers(&s).unwrap(), h);
        }

        #[test]
        fn deserialize_total(s in any::<String>()) {
            let _ = deserialize_headers(&s);
            let _ = ResponseMeta::from_json(&s);
        }
    }
}
