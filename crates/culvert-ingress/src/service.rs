//! The `service` of an ingress rule, parsed as cloudflared's `validateIngress` does.

use std::fmt;

use crate::error::ErrorKind;
use crate::gotext::atoi;
use crate::gourl;
use crate::origin::{IpAccessRule, OriginRequest};

/// Where a rule sends its traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    /// `http://`, `https://`, `ws://`, `wss://` origin (scheme and host only;
    /// the `url` crate normalizes it, e.g. adds the `/` path and drops a default port).
    Http(url::Url),
    /// TCP over WebSocket: `tcp`, `ssh`, `rdp`, `smb` or any other scheme with
    /// a host. Missing ports default to 7864/22/3389/445; for other schemes
    /// without a port `port` is 0 (cloudflared would then fail to dial).
    Tcp {
        /// Lower-case scheme.
        scheme: String,
        /// Host without brackets (`::1`, not `[::1]`).
        host: String,
        /// Port, 0 if none.
        port: u16,
    },
    /// HTTP (or HTTPS with `tls`) over a unix socket; the path is not checked.
    Unix {
        /// Socket path after `unix:` / `unix+tls:`.
        path: String,
        /// `unix+tls:`.
        tls: bool,
    },
    /// `http_status:NNN`: answer every request with this status.
    HttpStatus(u16),
    /// `hello_world` / `hello-world`: cloudflared's built-in test server.
    HelloWorld,
    /// `bastion`, or any URL-like service with `originRequest.bastionMode`.
    Bastion,
    /// `socks-proxy`: SOCKS over WebSocket, filtered by the rule's `ipRules`
    /// (see [`crate::Rule::socks_policy`]).
    SocksProxy,
}

/// cloudflared's `OriginService.String()`.
impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Service::Http(u) => {
                let s = u.as_str();
                // Go prints the URL without the "/" the url crate adds.
                match s.strip_suffix('/') {
                    Some(stripped)
                        if u.path() == "/" && u.query().is_none() && u.fragment().is_none() =>
                    {
                        f.write_str(stripped)
                    }
                    _ => f.write_str(s),
                }
            }
            Service::Tcp { scheme, host, port } => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                if *port == 0 {
                    write!(f, "{scheme}://{host}")
                } else {
                    write!(f, "{scheme}://{host}:{port}")
                }
            }
            Service::Unix { path, tls } => {
                write!(f, "unix{}:{path}", if *tls { "+tls" } else { "" })
            }
            Service::HttpStatus(code) => write!(f, "http_status:{code}"),
            Service::HelloWorld => f.write_str("hello_world"),
            Service::Bastion => f.write_str("bastion"),
            Service::SocksProxy => f.write_str("socks-proxy"),
        }
    }
}

/// Parses `raw` in cloudflared's order (unix, unix+tls, http_status, hello
/// world, socks-proxy, bastion, URL). `rule_override` is the rule's own
/// `originRequest` (cloudflared builds the socks policy from it alone);
/// `effective` is the merged config, whose `bastionMode` is forced on for
/// bastion services.
pub(crate) fn parse(
    raw: &str,
    rule_override: &OriginRequest,
    effective: &mut OriginRequest,
) -> Result<(Service, Vec<IpAccessRule>), ErrorKind> {
    if let Some(path) = raw.strip_prefix("unix:") {
        return Ok((
            Service::Unix {
                path: path.to_owned(),
                tls: false,
            },
            Vec::new(),
        ));
    }
    if let Some(path) = raw.strip_prefix("unix+tls:") {
        return Ok((
            Service::Unix {
                path: path.to_owned(),
                tls: true,
            },
            Vec::new(),
        ));
    }
    if let Some(code) = raw.strip_prefix("http_status:") {
        let code = atoi(code).map_err(|detail| ErrorKind::HttpStatusNotANumber { detail })?;
        return match u16::try_from(code) {
            Ok(c) if (100..=999).contains(&c) => Ok((Service::HttpStatus(c), Vec::new())),
            _ => Err(ErrorKind::HttpStatusOutOfRange { code }),
        };
    }
    if raw == "hello_world" || raw == "hello-world" {
        return Ok((Service::HelloWorld, Vec::new()));
    }
    if raw == "socks-proxy" {
        let rules = rule_override
            .ip_rules()
            .iter()
            .map(|r| IpAccessRule::from_cidr(r.prefix.as_deref(), &r.ports, r.allow))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|detail| ErrorKind::InvalidIpRule { detail })?;
        return Ok((Service::SocksProxy, rules));
    }
    if raw == "bastion" || effective.bastion_mode() {
        effective.bastion_mode = Some(true);
        return Ok((Service::Bastion, Vec::new()));
    }
    parse_url(raw).map(|s| (s, Vec::new()))
}

fn parse_url(raw: &str) -> Result<Service, ErrorKind> {
    let u = gourl::parse(raw).map_err(ErrorKind::InvalidServiceUrl)?;
    if u.scheme.is_empty() || u.hostname().is_empty() {
        return Err(ErrorKind::ServiceMissingSchemeOrHost {
            service: raw.to_owned(),
        });
    }
    if !u.path.is_empty() {
        return Err(ErrorKind::ServiceHasPath {
            service: raw.to_owned(),
        });
    }
    let unusable = |detail: String| ErrorKind::UnusableService {
        service: raw.to_owned(),
        detail,
    };
    if matches!(u.scheme.as_str(), "http" | "https" | "ws" | "wss") {
        // Go accepted it; the url crate must too, or the connector could not use it.
        return url::Url::parse(raw)
            .map(Service::Http)
            .map_err(|e| unusable(e.to_string()));
    }
    let default_port = match u.scheme.as_str() {
        "ssh" => 22,
        "rdp" => 3389,
        "smb" => 445,
        "tcp" => 7864,
        _ => 0,
    };
    let port = match u.port() {
        "" => default_port,
        p => p
            .parse::<u16>()
            .map_err(|_| unusable("invalid port number".to_owned()))?,
    };
    Ok(Service::Tcp {
        scheme: u.scheme.clone(),
        host: u.hostname().to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(raw: &str) -> Result<Service, String> {
        let mut eff = OriginRequest::default();
        parse(raw, &OriginRequest::default(), &mut eff)
            .map(|(s, _)| s)
            .map_err(|e| e.to_string())
    }

    fn tcp(scheme: &str, host: &str, port: u16) -> Service {
        Service::Tcp {
            scheme: scheme.into(),
            host: host.into(),
            port,
        }
    }

    #[test]
    fn every_service_form() {
        let http = |s: &str| Service::Http(url::Url::parse(s).unwrap());
        let ok = [
            ("http://localhost:8000", http("http://localhost:8000")),
            ("https://127.0.0.1", http("https://127.0.0.1")),
            ("ws://localhost:8000", http("ws://localhost:8000")),
            ("wss://localhost", http("wss://localhost")),
            ("HTTP://Example.com:80", http("http://example.com")),
            ("http://a?x=1", http("http://a?x=1")),
            ("http://user:pw@a", http("http://user:pw@a")),
            ("tcp://127.0.0.1", tcp("tcp", "127.0.0.1", 7864)),
            ("tcp://localhost:8000", tcp("tcp", "localhost", 8000)),
            ("ssh://127.0.0.1", tcp("ssh", "127.0.0.1", 22)),
            ("rdp://127.0.0.1", tcp("rdp", "127.0.0.1", 3389)),
            ("smb://127.0.0.1", tcp("smb", "127.0.0.1", 445)),
            ("ssh://[::1]", tcp("ssh", "::1", 22)),
            ("ssh://[::1]:2222", tcp("ssh", "::1", 2222)),
            ("ftp://127.0.0.1", tcp("ftp", "127.0.0.1", 0)),
            ("postgres://db:5432", tcp("postgres", "db", 5432)),
            (
                "unix:/tmp/echo.sock",
                Service::Unix {
                    path: "/tmp/echo.sock".into(),
                    tls: false,
                },
            ),
            (
                "unix+tls:/tmp/echo.sock",
                Service::Unix {
                    path: "/tmp/echo.sock".into(),
                    tls: true,
                },
            ),
            (
                "unix:",
                Service::Unix {
                    path: String::new(),
                    tls: false,
                },
            ),
            ("http_status:404", Service::HttpStatus(404)),
            ("http_status:100", Service::HttpStatus(100)),
            ("http_status:999", Service::HttpStatus(999)),
            ("http_status:+0404", Service::HttpStatus(404)),
            ("hello_world", Service::HelloWorld),
            ("hello-world", Service::HelloWorld),
            ("bastion", Service::Bastion),
            ("socks-proxy", Service::SocksProxy),
        ];
        for (raw, want) in ok {
            assert_eq!(svc(raw), Ok(want), "{raw}");
        }
    }

    #[test]
    fn cloudflared_messages() {
        let cases = [
            (
                "http://127.0.0.1:2333 ",
                r#"parse "http://127.0.0.1:2333 ": invalid port ":2333 " after host"#,
            ),
            (
                "https://local host:8000",
                r#"parse "https://local host:8000": invalid character " " in host name"#,
            ),
            (
                "127.0.0.1:8080",
                r#"parse "127.0.0.1:8080": first path segment in URL cannot contain colon"#,
            ),
            (":80", r#"parse ":80": missing protocol scheme"#),
            (
                "http://a\t",
                r#"parse "http://a\t": net/url: invalid control character in URL"#,
            ),
            (
                "localhost:8000",
                "localhost:8000 is an invalid address, please make sure it has a scheme and a hostname",
            ),
            (
                "localhost",
                "localhost is an invalid address, please make sure it has a scheme and a hostname",
            ),
            (
                "",
                " is an invalid address, please make sure it has a scheme and a hostname",
            ),
            (
                "http://",
                "http:// is an invalid address, please make sure it has a scheme and a hostname",
            ),
            (
                "http://:8080",
                "http://:8080 is an invalid address, please make sure it has a scheme and a hostname",
            ),
            (
                "hello_world2",
                "hello_world2 is an invalid address, please make sure it has a scheme and a hostname",
            ),
            (
                "helloworld",
                "helloworld is an invalid address, please make sure it has a scheme and a hostname",
            ),
            (
                "https://localhost:8000/static/",
                "https://localhost:8000/static/ is an invalid address, ingress rules don't support proxying to a different path on the origin service. The path will be the same as the eyeball request's path",
            ),
            (
                "http://localhost:8000/",
                "http://localhost:8000/ is an invalid address, ingress rules don't support proxying to a different path on the origin service. The path will be the same as the eyeball request's path",
            ),
            (
                "http_status:asdf",
                r#"invalid HTTP status code: strconv.Atoi: parsing "asdf": invalid syntax"#,
            ),
            (
                "http_status:",
                r#"invalid HTTP status code: strconv.Atoi: parsing "": invalid syntax"#,
            ),
            (
                "http_status: 404",
                r#"invalid HTTP status code: strconv.Atoi: parsing " 404": invalid syntax"#,
            ),
            (
                "http_status:99999999999999999999",
                r#"invalid HTTP status code: strconv.Atoi: parsing "99999999999999999999": value out of range"#,
            ),
            ("http_status:8080", "invalid HTTP status code: 8080"),
            ("http_status:99", "invalid HTTP status code: 99"),
            ("http_status:-404", "invalid HTTP status code: -404"),
            (
                "http://localhost:99999",
                "http://localhost:99999 is an invalid address: invalid port number",
            ),
            (
                "tcp://localhost:99999",
                "tcp://localhost:99999 is an invalid address: invalid port number",
            ),
            (
                "http://1.2.3.256",
                "http://1.2.3.256 is an invalid address: invalid IPv4 address",
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(svc(raw), Err(want.to_owned()), "{raw:?}");
        }
    }

    #[test]
    fn bastion_mode_turns_url_services_into_bastion() {
        let mut eff = OriginRequest {
            bastion_mode: Some(true),
            ..OriginRequest::default()
        };
        let (s, _) = parse("", &OriginRequest::default(), &mut eff).unwrap();
        assert_eq!(s, Service::Bastion);
        // Invalid URLs are never parsed in bastion mode.
        let (s, _) = parse("not a url:", &OriginRequest::default(), &mut eff).unwrap();
        assert_eq!(s, Service::Bastion);
        // Earlier forms win over bastionMode.
        let (s, _) = parse("http_status:404", &OriginRequest::default(), &mut eff).unwrap();
        assert_eq!(s, Service::HttpStatus(404));
        let mut eff = OriginRequest::default();
        parse("bastion", &OriginRequest::default(), &mut eff).unwrap();
        assert_eq!(eff.bastion_mode, Some(true));
    }

    #[test]
    fn socks_proxy_ip_rules() {
        use crate::origin::IpRule;
        let rule = |prefix: Option<&str>, ports: Vec<i64>| OriginRequest {
            ip_rules: Some(vec![IpRule {
                prefix: prefix.map(Into::into),
                ports,
                allow: true,
            }]),
            ..OriginRequest::default()
        };
        let run = |o: &OriginRequest| {
            parse("socks-proxy", o, &mut OriginRequest::default()).map_err(|e| e.to_string())
        };
        let (s, rules) = run(&rule(Some("1.1.1.0/24"), vec![80, 443])).unwrap();
        assert_eq!((s, rules.len()), (Service::SocksProxy, 1));
        assert_eq!(
            run(&rule(None, vec![])).unwrap_err(),
            "unable to create ip rule for socks-proxy: no prefix provided"
        );
        assert_eq!(
            run(&rule(Some("1.1.1.0"), vec![])).unwrap_err(),
            "unable to create ip rule for socks-proxy: unable to parse cidr: 1.1.1.0"
        );
        assert_eq!(
            run(&rule(Some("1.1.1.0/24"), vec![0])).unwrap_err(),
            "unable to create ip rule for socks-proxy: invalid port 0, needs to be between 1 and 65535"
        );
    }

    #[test]
    fn display_like_cloudflared() {
        for s in [
            "http://localhost:8000",
            "https://a.com",
            "tcp://127.0.0.1:7864",
            "ssh://[::1]:22",
            "unix:/tmp/a.sock",
            "unix+tls:/tmp/a.sock",
            "http_status:404",
            "hello_world",
            "bastion",
            "socks-proxy",
            "ftp://127.0.0.1",
        ] {
            let parsed = svc(s).unwrap();
            assert_eq!(parsed.to_string(), s);
        }
        assert_eq!(
            svc("tcp://127.0.0.1").unwrap().to_string(),
            "tcp://127.0.0.1:7864"
        );
    }
}
