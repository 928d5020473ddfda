//! What each ingress rule's service turns into at run time: a pooled
//! hyper client for HTTP(S) origins, a fixed status, the hello-world page,
//! or "not supported yet". Built once per applied configuration, so a
//! configuration swap never touches the clients of in-flight requests.

use std::sync::Arc;

use bytes::Bytes;
use culvert_ingress::{Ingress, OriginRequest, Rule, Service};
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::error::ConnectorError;
use crate::tls::{OriginTrust, origin_tls_config};

/// Boxed error for streamed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The request body type sent to origins (streamed from the QUIC stream).
pub type OriginBody = UnsyncBoxBody<Bytes, BoxError>;
/// A pooled HTTP/HTTPS client.
pub type OriginClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, OriginBody>;

/// An HTTP(S) origin and its connection pool.
pub struct HttpOrigin {
    pub url: url::Url,
    pub client: OriginClient,
}

/// The run-time form of one rule's service.
#[derive(Clone)]
pub enum Origin {
    /// `http(s)://` / `ws(s)://` origin: requests keep their path and query
    /// and get the origin's scheme and authority (cloudflared ignores a
    /// path in the service URL).
    Http(Arc<HttpOrigin>),
    /// `http_status:NNN`.
    Status(u16),
    /// `hello_world`.
    HelloWorld,
    /// `unix:` / `unix+tls:`: HTTP(S) over a unix socket.
    Unix(Arc<crate::stream_origin::UnixOrigin>),
    /// A service this connector cannot proxy HTTP to (tcp/ssh/rdp are
    /// served to websocket requests by [`crate::stream_origin`]; bastion,
    /// socks); HTTP requests get a ConnectResponse error.
    Unsupported(String),
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Http(h) => f.debug_tuple("Http").field(&h.url.as_str()).finish(),
            Origin::Status(c) => f.debug_tuple("Status").field(c).finish(),
            Origin::HelloWorld => f.write_str("HelloWorld"),
            Origin::Unix(u) => f.debug_tuple("Unix").field(&u.path()).finish(),
            Origin::Unsupported(s) => f.debug_tuple("Unsupported").field(s).finish(),
        }
    }
}

/// Origins for every rule of `ingress`, index-aligned with `ingress.rules`.
/// Fails if a rule's TLS settings cannot be loaded (e.g. an unreadable
/// `caPool`), so a bad push is refused instead of failing every request.
pub fn prepare_origins(ingress: &Ingress) -> Result<Arc<[Origin]>, ConnectorError> {
    ingress.rules.iter().map(prepare_origin).collect()
}

/// The origin of one rule.
pub fn prepare_origin(rule: &Rule) -> Result<Origin, ConnectorError> {
    Ok(match &rule.service {
        Service::Http(url) => Origin::Http(Arc::new(HttpOrigin {
            url: url.clone(),
            client: http_client(url, &rule.origin_request)?,
        })),
        Service::HttpStatus(code) => Origin::Status(*code),
        Service::HelloWorld => Origin::HelloWorld,
        Service::Unix { path, tls } => Origin::Unix(Arc::new(
            crate::stream_origin::UnixOrigin::new(path, *tls, &rule.origin_request)?,
        )),
        other => Origin::Unsupported(other.to_string()),
    })
}

/// Which trust an origin's settings ask for.
pub fn origin_trust(o: &OriginRequest) -> OriginTrust {
    if o.no_tls_verify() {
        OriginTrust::NoVerify
    } else if !o.ca_pool().is_empty() {
        OriginTrust::CaPool(o.ca_pool().to_owned())
    } else {
        OriginTrust::System
    }
}

fn http_client(url: &url::Url, o: &OriginRequest) -> Result<OriginClient, ConnectorError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(o.connect_timeout()));
    http.set_keepalive(Some(o.tcp_keep_alive()));
    http.set_nodelay(true);
    let secure = matches!(url.scheme(), "https" | "wss");
    let tls = if secure {
        origin_tls_config(&origin_trust(o))?
    } else {
        // Never used for plain-HTTP origins (the connector passes http
        // through), but the connector type needs one.
        origin_tls_config(&OriginTrust::System)?
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let builder = if o.origin_server_name().is_empty() {
        builder
    } else {
        let name = o.origin_server_name();
        let name = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).map_err(|e| {
            ConnectorError::Config(format!("originRequest.originServerName {name:?}: {e}"))
        })?;
        builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
    };
    let connector = if o.http2_origin() {
        builder.enable_all_versions().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    let mut client = Client::builder(TokioExecutor::new());
    client
        .pool_idle_timeout(o.keep_alive_timeout())
        .pool_max_idle_per_host(usize::try_from(o.keep_alive_connections()).unwrap_or(0))
        .http2_only(o.http2_origin() && secure);
    Ok(client.build(connector))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepares_each_rule() {
        let ingress = culvert_ingress::parse_remote_config(&serde_json::json!({
            "ingress": [
                {"hostname": "a.test", "service": "http://127.0.0.1:1"},
                {"hostname": "b.test", "service": "https://127.0.0.1:2", "originRequest": {"noTLSVerify": true}},
                {"hostname": "c.test", "service": "hello_world"},
                {"hostname": "d.test", "service": "ssh://127.0.0.1:22"},
                {"service": "http_status:404"}
            ]
        }))
        .unwrap();
        let origins = prepare_origins(&ingress).unwrap();
        assert_eq!(origins.len(), 5);
        assert!(matches!(&origins[0], Origin::Http(h) if h.url.port() == Some(1)));
        assert!(matches!(&origins[1], Origin::Http(_)));
        assert!(matches!(origins[2], Origin::HelloWorld));
        assert!(matches!(&origins[3], Origin::Unsupported(s) if s.starts_with("ssh://")));
        assert!(matches!(origins[4], Origin::Status(404)));
        assert_eq!(
            origin_trust(&ingress.rules[1].origin_request),
            OriginTrust::NoVerify
        );
    }

    #[test]
    fn unreadable_ca_pool_fails_the_config() {
        let ingress = culvert_ingress::parse_remote_config(&serde_json::json!({
            "ingress": [{"service": "https://127.0.0.1:2", "originRequest": {"caPool": "/nonexistent/ca.pem"}}]
        }))
        .unwrap();
        assert!(prepare_origins(&ingress).is_err());
    }
}
