//! Decoding the configuration JSON into raw (unvalidated) structures, with
//! cloudflared's `encoding/json` semantics where they matter:
//!
//! * object keys match field names case-insensitively (Go's decoder does), and
//!   when several keys map to one field the last one wins;
//! * `null` leaves a field unset;
//! * unknown keys are ignored;
//! * the first type error in document order aborts decoding, before any
//!   ingress validation runs.
//!
//! Type errors get culvert's own message naming the JSON path, because Go's
//! (`json: cannot unmarshal string into Go struct field …`) omits the rule
//! index and cloudflared's duration decoder does not name the field at all.

use serde_json::{Map, Value};

use crate::error::ErrorKind;
use crate::gotext::quote;
use crate::origin::{Access, IpRule, OriginRequest, WarpRouting};
use crate::{Dialect, GoDuration};

/// A rule as written, before validation.
pub(crate) struct RawRule {
    pub hostname: String,
    pub path: String,
    pub service: String,
    pub origin_request: OriginRequest,
}

/// The whole configuration as written.
pub(crate) struct RawConfig {
    pub ingress: Vec<RawRule>,
    pub origin_request: OriginRequest,
    pub warp_routing: WarpRouting,
}

type Result<T> = std::result::Result<T, ErrorKind>;

pub(crate) fn config(v: &Value, d: Dialect) -> Result<RawConfig> {
    let mut cfg = RawConfig {
        ingress: Vec::new(),
        origin_request: OriginRequest::default(),
        warp_routing: WarpRouting::default(),
    };
    let Some(map) = object(v, "config")? else {
        return Ok(cfg);
    };
    for (key, name, value) in fields(map, &["ingress", "originRequest", "warp-routing"]) {
        match name {
            "ingress" => cfg.ingress = rules(value, key, d)?,
            "originRequest" => {
                cfg.origin_request = origin_request(value, key, d)?.unwrap_or_default();
            }
            _ => cfg.warp_routing = warp_routing(value, key, d)?,
        }
    }
    Ok(cfg)
}

fn rules(v: &Value, path: &str, d: Dialect) -> Result<Vec<RawRule>> {
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => return Err(type_error(path, "an array of rules", other)),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| rule(item, &format!("{path}[{i}]"), d))
        .collect()
}

fn rule(v: &Value, path: &str, d: Dialect) -> Result<RawRule> {
    let mut r = RawRule {
        hostname: String::new(),
        path: String::new(),
        service: String::new(),
        origin_request: OriginRequest::default(),
    };
    // A null rule is an empty rule in Go (then fails service validation).
    let Some(map) = object(v, path)? else {
        return Ok(r);
    };
    for (key, name, value) in fields(map, &["hostname", "path", "service", "originRequest"]) {
        let p = join(path, key);
        match name {
            "hostname" => set(&mut r.hostname, string(value, &p, d)?),
            "path" => set(&mut r.path, string(value, &p, d)?),
            "service" => set(&mut r.service, string(value, &p, d)?),
            _ => {
                if let Some(o) = origin_request(value, &p, d)? {
                    r.origin_request = o;
                }
            }
        }
    }
    Ok(r)
}

/// `None` for `null`.
pub(crate) fn origin_request(v: &Value, path: &str, d: Dialect) -> Result<Option<OriginRequest>> {
    let Some(map) = object(v, path)? else {
        return Ok(None);
    };
    let mut o = OriginRequest::default();
    const NAMES: &[&str] = &[
        "connectTimeout",
        "tlsTimeout",
        "tcpKeepAlive",
        "noHappyEyeballs",
        "keepAliveConnections",
        "keepAliveTimeout",
        "httpHostHeader",
        "originServerName",
        "matchSNItoHost",
        "caPool",
        "noTLSVerify",
        "disableChunkedEncoding",
        "bastionMode",
        "proxyAddress",
        "proxyPort",
        "proxyType",
        "ipRules",
        "http2Origin",
        "access",
    ];
    for (key, name, value) in fields(map, NAMES) {
        let p = join(path, key);
        let p = p.as_str();
        match name {
            "connectTimeout" => o.connect_timeout = duration(value, p, d)?,
            "tlsTimeout" => o.tls_timeout = duration(value, p, d)?,
            "tcpKeepAlive" => o.tcp_keep_alive = duration(value, p, d)?,
            "keepAliveTimeout" => o.keep_alive_timeout = duration(value, p, d)?,
            "noHappyEyeballs" => o.no_happy_eyeballs = boolean(value, p)?,
            "matchSNItoHost" => o.match_sni_to_host = boolean(value, p)?,
            "noTLSVerify" => o.no_tls_verify = boolean(value, p)?,
            "disableChunkedEncoding" => o.disable_chunked_encoding = boolean(value, p)?,
            "bastionMode" => o.bastion_mode = boolean(value, p)?,
            "http2Origin" => o.http2_origin = boolean(value, p)?,
            "keepAliveConnections" => o.keep_alive_connections = int(value, p)?,
            "httpHostHeader" => o.http_host_header = string(value, p, d)?,
            "originServerName" => o.origin_server_name = string(value, p, d)?,
            "caPool" => o.ca_pool = string(value, p, d)?,
            "proxyAddress" => o.proxy_address = string(value, p, d)?,
            "proxyType" => o.proxy_type = string(value, p, d)?,
            "proxyPort" => {
                o.proxy_port = match int(value, p)? {
                    None => None,
                    Some(n) => Some(u16::try_from(n).map_err(|_| ErrorKind::InvalidField {
                        path: p.to_owned(),
                        detail: format!("expected a port number (0-65535), got number {n}"),
                    })?),
                }
            }
            "ipRules" => o.ip_rules = ip_rules(value, p, d)?,
            _ => o.access = access(value, p, d)?,
        }
    }
    Ok(Some(o))
}

fn access(v: &Value, path: &str, d: Dialect) -> Result<Option<Access>> {
    let Some(map) = object(v, path)? else {
        return Ok(None);
    };
    let mut a = Access::default();
    for (key, name, value) in fields(
        map,
        &["required", "teamName", "audTag", "environment", "certsUrl"],
    ) {
        let p = join(path, key);
        match name {
            "required" => set(&mut a.required, boolean(value, &p)?),
            "teamName" => set(&mut a.team_name, string(value, &p, d)?),
            "environment" => set(&mut a.environment, string(value, &p, d)?),
            "certsUrl" => set(&mut a.certs_url, string(value, &p, d)?),
            _ => a.aud_tag = string_list(value, &p, d)?,
        }
    }
    Ok(Some(a))
}

fn ip_rules(v: &Value, path: &str, d: Dialect) -> Result<Option<Vec<IpRule>>> {
    let items = match v {
        Value::Null => return Ok(None),
        Value::Array(items) => items,
        other => return Err(type_error(path, "an array of IP rules", other)),
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let mut r = IpRule::default();
        if let Some(map) = object(item, &p)? {
            for (key, name, value) in fields(map, &["prefix", "ports", "allow"]) {
                let fp = join(&p, key);
                match name {
                    "prefix" => r.prefix = string(value, &fp, d)?,
                    "allow" => set(&mut r.allow, boolean(value, &fp)?),
                    _ => r.ports = int_list(value, &fp)?,
                }
            }
        }
        out.push(r);
    }
    Ok(Some(out))
}

fn warp_routing(v: &Value, path: &str, d: Dialect) -> Result<WarpRouting> {
    let mut w = WarpRouting::default();
    let Some(map) = object(v, path)? else {
        return Ok(w);
    };
    for (key, name, value) in fields(
        map,
        &[
            "enabled",
            "connectTimeout",
            "tcpKeepAlive",
            "maxActiveFlows",
        ],
    ) {
        let p = join(path, key);
        match name {
            "enabled" => w.enabled = boolean(value, &p)?,
            "connectTimeout" => w.connect_timeout = duration(value, &p, d)?,
            "tcpKeepAlive" => w.tcp_keep_alive = duration(value, &p, d)?,
            _ => {
                w.max_active_flows = match value {
                    Value::Null => None,
                    Value::Number(n) if n.as_u64().is_some() => n.as_u64(),
                    other => return Err(type_error(&p, "a non-negative integer", other)),
                }
            }
        }
    }
    Ok(w)
}

/// Go's rule for a key naming a struct field: exact match, else case-insensitive.
/// Yields `(key as written, canonical field name, value)` in document order.
fn fields<'a>(
    map: &'a Map<String, Value>,
    names: &'static [&'static str],
) -> impl Iterator<Item = (&'a str, &'static str, &'a Value)> {
    map.iter().filter_map(move |(k, v)| {
        names
            .iter()
            .find(|n| **n == k.as_str())
            .or_else(|| names.iter().find(|n| fold_eq(n, k)))
            .map(|n| (k.as_str(), *n, v))
    })
}

fn fold_eq(a: &str, b: &str) -> bool {
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Go's non-pointer fields keep their value on `null`.
fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

fn object<'a>(v: &'a Value, path: &str) -> Result<Option<&'a Map<String, Value>>> {
    match v {
        Value::Null => Ok(None),
        Value::Object(m) => Ok(Some(m)),
        other => Err(type_error(path, "an object", other)),
    }
}

fn boolean(v: &Value, path: &str) -> Result<Option<bool>> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        other => Err(type_error(path, "a boolean", other)),
    }
}

fn string(v: &Value, path: &str, d: Dialect) -> Result<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        // YAML (yaml.v3) decodes any scalar into a string field.
        Value::Number(n) if d == Dialect::Local => Ok(Some(n.to_string())),
        Value::Bool(b) if d == Dialect::Local => Ok(Some(b.to_string())),
        other => Err(type_error(path, "a string", other)),
    }
}

fn string_list(v: &Value, path: &str, d: Dialect) -> Result<Vec<String>> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| Ok(string(item, &format!("{path}[{i}]"), d)?.unwrap_or_default()))
            .collect(),
        other => Err(type_error(path, "an array of strings", other)),
    }
}

fn int(v: &Value, path: &str) -> Result<Option<i64>> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Ok(Some(i)),
            None if n.is_u64() => Err(ErrorKind::InvalidField {
                path: path.to_owned(),
                detail: format!("number {n} is out of range"),
            }),
            None => Err(type_error(path, "an integer", v)),
        },
        other => Err(type_error(path, "an integer", other)),
    }
}

fn int_list(v: &Value, path: &str) -> Result<Vec<i64>> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| Ok(int(item, &format!("{path}[{i}]"))?.unwrap_or(0)))
            .collect(),
        other => Err(type_error(path, "an array of integers", other)),
    }
}

fn duration(v: &Value, path: &str, d: Dialect) -> Result<Option<GoDuration>> {
    if v.is_null() {
        return Ok(None);
    }
    duration_value(v, d)
        .map(Some)
        .map_err(|detail| ErrorKind::InvalidField {
            path: path.to_owned(),
            detail,
        })
}

/// Remote (REST/edge JSON): integer seconds only, as cloudflared's
/// `CustomDuration.UnmarshalJSON` (`strconv.ParseInt`) and every connector
/// version accept. Local (YAML): a number of seconds or a Go duration string.
pub(crate) fn duration_value(v: &Value, d: Dialect) -> std::result::Result<GoDuration, String> {
    let out_of_range = || format!("duration {v} seconds is out of range");
    match (v, d) {
        (Value::Number(n), _) if n.is_i64() || n.is_u64() => n
            .as_i64()
            .and_then(GoDuration::from_secs)
            .ok_or_else(out_of_range),
        (Value::Number(n), Dialect::Local) => n
            .as_f64()
            .and_then(GoDuration::from_secs_f64)
            .ok_or_else(out_of_range),
        (Value::String(s), Dialect::Local) => GoDuration::parse_go(s),
        (other, Dialect::Remote) => Err(format!(
            "expected an integer number of seconds, got {}",
            describe(other)
        )),
        (other, Dialect::Local) => Err(format!(
            "expected a number of seconds or a duration such as \"30s\", got {}",
            describe(other)
        )),
    }
}

fn type_error(path: &str, expected: &str, v: &Value) -> ErrorKind {
    ErrorKind::InvalidField {
        path: path.to_owned(),
        detail: format!("expected {expected}, got {}", describe(v)),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => {
            // Keep error messages bounded whatever the input.
            const MAX: usize = 64;
            match s.char_indices().nth(MAX) {
                Some((i, _)) => format!("string {}…", quote(&s[..i])),
                None => format!("string {}", quote(s)),
            }
        }
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn remote(v: Value) -> Result<RawConfig> {
        config(&v, Dialect::Remote)
    }

    fn err(v: Value) -> String {
        match remote(v) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn type_errors_name_the_field() {
        let cases = [
            (
                json!({"ingress": [{"service": "x", "originRequest": {"noTLSVerify": "yes"}}]}),
                r#"ingress[0].originRequest.noTLSVerify: expected a boolean, got string "yes""#,
            ),
            (
                json!({"originRequest": {"connectTimeout": "abc"}}),
                r#"originRequest.connectTimeout: expected an integer number of seconds, got string "abc""#,
            ),
            (
                json!({"originRequest": {"connectTimeout": "30s"}}),
                r#"originRequest.connectTimeout: expected an integer number of seconds, got string "30s""#,
            ),
            (
                json!({"originRequest": {"tlsTimeout": 1.5}}),
                "originRequest.tlsTimeout: expected an integer number of seconds, got number 1.5",
            ),
            (
                json!({"originRequest": {"tlsTimeout": 9223372037u64}}),
                "originRequest.tlsTimeout: duration 9223372037 seconds is out of range",
            ),
            (
                json!({"originRequest": {"keepAliveConnections": 1.0}}),
                "originRequest.keepAliveConnections: expected an integer, got number 1.0",
            ),
            (
                json!({"originRequest": {"keepAliveConnections": 18446744073709551615u64}}),
                "originRequest.keepAliveConnections: number 18446744073709551615 is out of range",
            ),
            (
                json!({"originRequest": {"proxyPort": 70000}}),
                "originRequest.proxyPort: expected a port number (0-65535), got number 70000",
            ),
            (
                json!({"originRequest": {"proxyPort": -1}}),
                "originRequest.proxyPort: expected a port number (0-65535), got number -1",
            ),
            (
                json!({"ingress": {}}),
                "ingress: expected an array of rules, got an object",
            ),
            (
                json!({"ingress": ["x"]}),
                r#"ingress[0]: expected an object, got string "x""#,
            ),
            (
                json!({"ingress": [{"hostname": 5}]}),
                "ingress[0].hostname: expected a string, got number 5",
            ),
            (
                json!({"ingress": [{"service": true}]}),
                "ingress[0].service: expected a string, got boolean true",
            ),
            (
                json!({"ingress": [{"path": []}]}),
                "ingress[0].path: expected a string, got an array",
            ),
            (
                json!({"originRequest": []}),
                "originRequest: expected an object, got an array",
            ),
            (
                json!({"originRequest": {"access": {"audTag": "x"}}}),
                r#"originRequest.access.audTag: expected an array of strings, got string "x""#,
            ),
            (
                json!({"originRequest": {"access": {"audTag": [1]}}}),
                "originRequest.access.audTag[0]: expected a string, got number 1",
            ),
            (
                json!({"originRequest": {"access": {"required": "true"}}}),
                r#"originRequest.access.required: expected a boolean, got string "true""#,
            ),
            (
                json!({"originRequest": {"ipRules": [{"ports": ["80"]}]}}),
                r#"originRequest.ipRules[0].ports[0]: expected an integer, got string "80""#,
            ),
            (
                json!({"warp-routing": {"enabled": "yes"}}),
                r#"warp-routing.enabled: expected a boolean, got string "yes""#,
            ),
            (
                json!({"warp-routing": {"maxActiveFlows": -1}}),
                "warp-routing.maxActiveFlows: expected a non-negative integer, got number -1",
            ),
            (json!("x"), r#"config: expected an object, got string "x""#),
        ];
        for (v, want) in cases {
            assert_eq!(err(v.clone()), want, "{v}");
        }
        let long = "x".repeat(200);
        let msg = err(json!({"ingress": [{"originRequest": {"noTLSVerify": long}}]}));
        assert!(msg.len() < 200, "{msg}");
    }

    #[test]
    fn first_error_in_document_order() {
        let v: Value = serde_json::from_str(
            r#"{"originRequest": {"tlsTimeout": "x"}, "ingress": [{"hostname": 1}]}"#,
        )
        .unwrap();
        assert!(err(v).starts_with("originRequest.tlsTimeout"));
        let v: Value = serde_json::from_str(
            r#"{"ingress": [{"hostname": 1}], "originRequest": {"tlsTimeout": "x"}}"#,
        )
        .unwrap();
        assert!(err(v).starts_with("ingress[0].hostname"));
    }

    #[test]
    fn keys_match_case_insensitively_and_last_wins() {
        let v: Value = serde_json::from_str(
            r#"{"Ingress": [{"HOSTNAME": "a.com", "Service": "http://x"}],
                "originrequest": {"NoTlsVerify": true, "notlsverify": false, "CONNECTTIMEOUT": 5}}"#,
        )
        .unwrap();
        let c = remote(v).unwrap();
        assert_eq!(c.ingress.len(), 1);
        assert_eq!(c.ingress[0].hostname, "a.com");
        assert_eq!(c.ingress[0].service, "http://x");
        assert_eq!(c.origin_request.no_tls_verify, Some(false));
        assert_eq!(c.origin_request.connect_timeout, GoDuration::from_secs(5));
    }

    #[test]
    fn nulls_and_unknown_keys() {
        let c = remote(json!({
            "ingress": [null, {"hostname": null, "service": "s", "originRequest": null, "rewrite": "/x", "extra": [1]}],
            "originRequest": {"connectTimeout": null, "access": null, "ipRules": null, "unknown": {"deep": 1}},
            "warp-routing": null,
            "source": "cloudflare"
        }))
        .unwrap();
        assert_eq!(c.ingress.len(), 2);
        assert_eq!(c.ingress[0].service, "");
        assert_eq!(c.ingress[1].hostname, "");
        assert_eq!(c.origin_request, OriginRequest::default());
        assert!(remote(Value::Null).unwrap().ingress.is_empty());
        assert!(remote(json!({"ingress": null})).unwrap().ingress.is_empty());
    }

    #[test]
    fn every_origin_request_field() {
        let c = remote(json!({"originRequest": {
            "connectTimeout": 1, "tlsTimeout": 2, "tcpKeepAlive": 3, "noHappyEyeballs": true,
            "keepAliveConnections": 4, "keepAliveTimeout": 5, "httpHostHeader": "h",
            "originServerName": "o", "matchSNItoHost": true, "caPool": "/ca", "noTLSVerify": true,
            "disableChunkedEncoding": true, "http2Origin": true, "proxyType": "socks",
            "access": {"audTag": ["a", null], "teamName": "t", "required": true, "environment": "fed", "certsUrl": "http://idp.test/certs"},
            "bastionMode": false, "proxyAddress": "0.0.0.0", "proxyPort": 1080,
            "ipRules": [{"prefix": "10.0.0.0/8", "ports": [80, null], "allow": true}, null]
        }, "warp-routing": {"enabled": true, "connectTimeout": 7, "tcpKeepAlive": 8, "maxActiveFlows": 9}}))
        .unwrap();
        let o = c.origin_request;
        let s = |n| GoDuration::from_secs(n);
        assert_eq!(
            (
                o.connect_timeout,
                o.tls_timeout,
                o.tcp_keep_alive,
                o.keep_alive_timeout
            ),
            (s(1), s(2), s(3), s(5))
        );
        assert_eq!(
            (o.no_happy_eyeballs, o.keep_alive_connections),
            (Some(true), Some(4))
        );
        assert_eq!(
            (
                o.http_host_header(),
                o.origin_server_name(),
                o.ca_pool(),
                o.proxy_type()
            ),
            ("h", "o", "/ca", "socks")
        );
        assert_eq!(
            (
                o.match_sni_to_host,
                o.no_tls_verify,
                o.disable_chunked_encoding,
                o.http2_origin
            ),
            (Some(true), Some(true), Some(true), Some(true))
        );
        assert_eq!(
            o.access,
            Some(Access {
                required: true,
                team_name: "t".into(),
                aud_tag: vec!["a".into(), String::new()],
                environment: "fed".into(),
                certs_url: "http://idp.test/certs".into(),
            })
        );
        assert_eq!(
            (o.bastion_mode, o.proxy_address(), o.proxy_port),
            (Some(false), "0.0.0.0", Some(1080))
        );
        assert_eq!(
            o.ip_rules,
            Some(vec![
                IpRule {
                    prefix: Some("10.0.0.0/8".into()),
                    ports: vec![80, 0],
                    allow: true
                },
                IpRule::default()
            ])
        );
        let w = c.warp_routing;
        assert_eq!(
            (
                w.enabled,
                w.connect_timeout,
                w.tcp_keep_alive,
                w.max_active_flows
            ),
            (Some(true), s(7), s(8), Some(9))
        );
    }

    #[test]
    fn local_dialect_is_lenient() {
        let v = json!({"ingress": [{"hostname": 123, "service": "http_status:404"}],
                       "originRequest": {"connectTimeout": "1m30s", "tlsTimeout": 2.5, "httpHostHeader": true}});
        let c = config(&v, Dialect::Local).unwrap();
        assert_eq!(c.ingress[0].hostname, "123");
        assert_eq!(c.origin_request.connect_timeout, GoDuration::from_secs(90));
        assert_eq!(c.origin_request.tls_timeout, GoDuration::from_secs_f64(2.5));
        assert_eq!(c.origin_request.http_host_header(), "true");
        let bad = |v: Value| match config(&v, Dialect::Local) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("expected an error"),
        };
        assert_eq!(
            bad(json!({"originRequest": {"connectTimeout": "abc"}})),
            r#"originRequest.connectTimeout: time: invalid duration "abc""#
        );
        assert_eq!(
            bad(json!({"originRequest": {"connectTimeout": true}})),
            r#"originRequest.connectTimeout: expected a number of seconds or a duration such as "30s", got boolean true"#
        );
        assert_eq!(
            bad(json!({"originRequest": {"noTLSVerify": "yes"}})),
            r#"originRequest.noTLSVerify: expected a boolean, got string "yes""#
        );
    }
}
