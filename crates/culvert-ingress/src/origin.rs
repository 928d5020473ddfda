//! `originRequest` (top-level defaults and per-rule overrides), `warp-routing`,
//! and the socks-proxy IP access policy built from `ipRules`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::GoDuration;

/// cloudflared's default TCP connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// cloudflared's default TLS handshake timeout.
pub const DEFAULT_TLS_TIMEOUT: Duration = Duration::from_secs(10);
/// cloudflared's default TCP keepalive interval.
pub const DEFAULT_TCP_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// cloudflared's default idle keepalive connection pool size.
pub const DEFAULT_KEEP_ALIVE_CONNECTIONS: i64 = 100;
/// cloudflared's default idle keepalive expiry.
pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(90);
/// cloudflared's default listen address for bastion/socks proxies.
pub const DEFAULT_PROXY_ADDRESS: &str = "127.0.0.1";
/// cloudflared's default connect timeout for WARP routing.
pub const DEFAULT_WARP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How cloudflared talks to an origin. Every field is optional: `None` means
/// "not set here", so a per-rule value can be merged over the top-level one
/// ([`OriginRequest::with_overrides`]) and the accessors of the same name give
/// cloudflared's defaults for what is still unset.
///
/// Serializes with the wire names (`noTLSVerify`, `matchSNItoHost`, …) and
/// skips unset fields. Deserializes with local-config leniency (durations as
/// seconds or Go duration strings); use [`crate::parse_remote_config`] for the
/// REST rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "serde_json::Value")]
pub struct OriginRequest {
    /// TCP connect timeout (excludes TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<GoDuration>,
    /// TLS handshake timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_timeout: Option<GoDuration>,
    /// TCP keepalive interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_keep_alive: Option<GoDuration>,
    /// Disable happy eyeballs (IPv4/IPv6 fallback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_happy_eyeballs: Option<bool>,
    /// Maximum idle keepalive connections (Go `int`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive_connections: Option<i64>,
    /// Idle keepalive connection expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive_timeout: Option<GoDuration>,
    /// Host header sent to the origin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_host_header: Option<String>,
    /// Expected TLS server name of the origin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_server_name: Option<String>,
    /// Use the request Host as SNI.
    #[serde(rename = "matchSNItoHost", skip_serializing_if = "Option::is_none")]
    pub match_sni_to_host: Option<bool>,
    /// Path of a CA bundle on the connector host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_pool: Option<String>,
    /// Skip origin certificate verification.
    #[serde(rename = "noTLSVerify", skip_serializing_if = "Option::is_none")]
    pub no_tls_verify: Option<bool>,
    /// Disable chunked transfer encoding (WSGI servers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disable_chunked_encoding: Option<bool>,
    /// Try HTTP/2 to the origin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2_origin: Option<bool>,
    /// `""` or `"socks"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_type: Option<String>,
    /// Cloudflare Access JWT enforcement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    /// Run as a bastion (jump host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bastion_mode: Option<bool>,
    /// Listen address of cloudflared-managed proxies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_address: Option<String>,
    /// Listen port of cloudflared-managed proxies (0 = random). Go takes any
    /// `uint`; culvert limits it to a real port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_port: Option<u16>,
    /// IP rules for `socks-proxy` services. An empty list counts as unset when
    /// merging, as in cloudflared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_rules: Option<Vec<IpRule>>,
}

/// `originRequest.access`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Access {
    /// Reject requests without a valid Access JWT.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// Team (organization) name whose keys sign the JWTs.
    #[serde(default)]
    pub team_name: String,
    /// Accepted audience tags.
    #[serde(default)]
    pub aud_tag: Vec<String>,
    /// Access environment (e.g. `fed`); empty for the default.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub environment: String,
    /// culvert extension: where the connector fetches the signing keys (a
    /// JWKS document). Empty means cloudflared's
    /// `https://<teamName>.cloudflareaccess.com/cdn-cgi/access/certs`; set it
    /// for a self-hosted identity provider or offline tests. cloudflared
    /// ignores the key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub certs_url: String,
}

/// One `originRequest.ipRules` entry as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpRule {
    /// CIDR such as `10.0.0.0/8`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Ports the rule applies to; empty means all.
    #[serde(default)]
    pub ports: Vec<i64>,
    /// Allow (true) or deny (false).
    #[serde(default)]
    pub allow: bool,
}

/// `warp-routing` as cloudflared understands it (2023's `enabled` and HEAD's
/// `maxActiveFlows` both kept).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WarpRouting {
    /// Historical on/off switch (ignored by cloudflared ≥ 2023.10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// TCP connect timeout for private-network flows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<GoDuration>,
    /// TCP keepalive for private-network flows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_keep_alive: Option<GoDuration>,
    /// Concurrent flow limit; 0 = unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_active_flows: Option<u64>,
}

impl WarpRouting {
    /// Connect timeout, default 5 s.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
            .map_or(DEFAULT_WARP_CONNECT_TIMEOUT, GoDuration::to_std)
    }

    /// TCP keepalive, default 30 s.
    pub fn tcp_keep_alive(&self) -> Duration {
        self.tcp_keep_alive
            .map_or(DEFAULT_TCP_KEEP_ALIVE, GoDuration::to_std)
    }

    /// Flow limit, default 0 (unlimited).
    pub fn max_active_flows(&self) -> u64 {
        self.max_active_flows.unwrap_or(0)
    }
}

impl OriginRequest {
    /// Nothing set (usable in `const` contexts, unlike `Default`).
    pub const EMPTY: OriginRequest = OriginRequest {
        connect_timeout: None,
        tls_timeout: None,
        tcp_keep_alive: None,
        no_happy_eyeballs: None,
        keep_alive_connections: None,
        keep_alive_timeout: None,
        http_host_header: None,
        origin_server_name: None,
        match_sni_to_host: None,
        ca_pool: None,
        no_tls_verify: None,
        disable_chunked_encoding: None,
        http2_origin: None,
        proxy_type: None,
        access: None,
        bastion_mode: None,
        proxy_address: None,
        proxy_port: None,
        ip_rules: None,
    };

    /// `self` (the defaults) with every field that `overrides` sets replaced,
    /// as cloudflared's `setConfig`: `ipRules` only when non-empty, `access`
    /// as a whole.
    pub fn with_overrides(&self, overrides: &OriginRequest) -> OriginRequest {
        fn pick<T: Clone>(base: &Option<T>, over: &Option<T>) -> Option<T> {
            over.clone().or_else(|| base.clone())
        }
        OriginRequest {
            connect_timeout: pick(&self.connect_timeout, &overrides.connect_timeout),
            tls_timeout: pick(&self.tls_timeout, &overrides.tls_timeout),
            tcp_keep_alive: pick(&self.tcp_keep_alive, &overrides.tcp_keep_alive),
            no_happy_eyeballs: pick(&self.no_happy_eyeballs, &overrides.no_happy_eyeballs),
            keep_alive_connections: pick(
                &self.keep_alive_connections,
                &overrides.keep_alive_connections,
            ),
            keep_alive_timeout: pick(&self.keep_alive_timeout, &overrides.keep_alive_timeout),
            http_host_header: pick(&self.http_host_header, &overrides.http_host_header),
            origin_server_name: pick(&self.origin_server_name, &overrides.origin_server_name),
            match_sni_to_host: pick(&self.match_sni_to_host, &overrides.match_sni_to_host),
            ca_pool: pick(&self.ca_pool, &overrides.ca_pool),
            no_tls_verify: pick(&self.no_tls_verify, &overrides.no_tls_verify),
            disable_chunked_encoding: pick(
                &self.disable_chunked_encoding,
                &overrides.disable_chunked_encoding,
            ),
            http2_origin: pick(&self.http2_origin, &overrides.http2_origin),
            proxy_type: pick(&self.proxy_type, &overrides.proxy_type),
            access: pick(&self.access, &overrides.access),
            bastion_mode: pick(&self.bastion_mode, &overrides.bastion_mode),
            proxy_address: pick(&self.proxy_address, &overrides.proxy_address),
            proxy_port: pick(&self.proxy_port, &overrides.proxy_port),
            ip_rules: match &overrides.ip_rules {
                Some(r) if !r.is_empty() => Some(r.clone()),
                _ => self.ip_rules.clone(),
            },
        }
    }

    /// Connect timeout, default 30 s (negative values read as zero).
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
            .map_or(DEFAULT_CONNECT_TIMEOUT, GoDuration::to_std)
    }

    /// TLS handshake timeout, default 10 s.
    pub fn tls_timeout(&self) -> Duration {
        self.tls_timeout
            .map_or(DEFAULT_TLS_TIMEOUT, GoDuration::to_std)
    }

    /// TCP keepalive, default 30 s.
    pub fn tcp_keep_alive(&self) -> Duration {
        self.tcp_keep_alive
            .map_or(DEFAULT_TCP_KEEP_ALIVE, GoDuration::to_std)
    }

    /// Default false.
    pub fn no_happy_eyeballs(&self) -> bool {
        self.no_happy_eyeballs.unwrap_or(false)
    }

    /// Default 100. Go semantics: 0 means no limit.
    pub fn keep_alive_connections(&self) -> i64 {
        self.keep_alive_connections
            .unwrap_or(DEFAULT_KEEP_ALIVE_CONNECTIONS)
    }

    /// Idle keepalive expiry, default 90 s.
    pub fn keep_alive_timeout(&self) -> Duration {
        self.keep_alive_timeout
            .map_or(DEFAULT_KEEP_ALIVE_TIMEOUT, GoDuration::to_std)
    }

    /// Host header override, default empty (keep the request's).
    pub fn http_host_header(&self) -> &str {
        self.http_host_header.as_deref().unwrap_or("")
    }

    /// TLS server name override, default empty.
    pub fn origin_server_name(&self) -> &str {
        self.origin_server_name.as_deref().unwrap_or("")
    }

    /// Default false.
    pub fn match_sni_to_host(&self) -> bool {
        self.match_sni_to_host.unwrap_or(false)
    }

    /// CA bundle path, default empty (system roots).
    pub fn ca_pool(&self) -> &str {
        self.ca_pool.as_deref().unwrap_or("")
    }

    /// Default false.
    pub fn no_tls_verify(&self) -> bool {
        self.no_tls_verify.unwrap_or(false)
    }

    /// Default false.
    pub fn disable_chunked_encoding(&self) -> bool {
        self.disable_chunked_encoding.unwrap_or(false)
    }

    /// Default false.
    pub fn http2_origin(&self) -> bool {
        self.http2_origin.unwrap_or(false)
    }

    /// Default empty; `"socks"` selects a SOCKS stream handler.
    pub fn proxy_type(&self) -> &str {
        self.proxy_type.as_deref().unwrap_or("")
    }

    /// Access settings, if any.
    pub fn access(&self) -> Option<&Access> {
        self.access.as_ref()
    }

    /// Default false.
    pub fn bastion_mode(&self) -> bool {
        self.bastion_mode.unwrap_or(false)
    }

    /// Default `127.0.0.1`.
    pub fn proxy_address(&self) -> &str {
        self.proxy_address
            .as_deref()
            .unwrap_or(DEFAULT_PROXY_ADDRESS)
    }

    /// Default 0 (pick a random port).
    pub fn proxy_port(&self) -> u16 {
        self.proxy_port.unwrap_or(0)
    }

    /// IP rules as written, default none.
    pub fn ip_rules(&self) -> &[IpRule] {
        self.ip_rules.as_deref().unwrap_or(&[])
    }
}

impl TryFrom<serde_json::Value> for OriginRequest {
    type Error = crate::ValidationError;

    fn try_from(v: serde_json::Value) -> Result<Self, Self::Error> {
        crate::decode::origin_request(&v, "originRequest", crate::Dialect::Local)
            .map(Option::unwrap_or_default)
            .map_err(Into::into)
    }
}

/// A validated IP rule of a `socks-proxy` policy (cloudflared's `ipaccess.Rule`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpAccessRule {
    network: IpAddr,
    prefix_len: u8,
    ports: Vec<u16>,
    allow: bool,
}

impl IpAccessRule {
    /// cloudflared's `ipaccess.NewRuleByCIDR`, with its error texts.
    pub fn from_cidr(prefix: Option<&str>, ports: &[i64], allow: bool) -> Result<Self, String> {
        let prefix = match prefix {
            Some(p) if !p.is_empty() => p,
            _ => return Err("no prefix provided".to_owned()),
        };
        let (network, prefix_len) =
            parse_cidr(prefix).ok_or_else(|| format!("unable to parse cidr: {prefix}"))?;
        // Go sorts before validating, so the smallest bad port is reported.
        let mut sorted = ports.to_vec();
        sorted.sort_unstable();
        let mut valid = Vec::with_capacity(sorted.len());
        for p in sorted {
            match u16::try_from(p) {
                Ok(p) if p >= 1 => valid.push(p),
                _ => return Err(format!("invalid port {p}, needs to be between 1 and 65535")),
            }
        }
        Ok(Self {
            network,
            prefix_len,
            ports: valid,
            allow,
        })
    }

    /// The masked network address.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// CIDR prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Sorted ports; empty means all.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Whether matching traffic is allowed.
    pub fn allow(&self) -> bool {
        self.allow
    }

    /// Go's `IPNet.Contains`, which compares IPv4-mapped IPv6 as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, len) = match self.network {
            IpAddr::V6(n) => match n.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), self.prefix_len.saturating_sub(96)),
                None => (self.network, self.prefix_len),
            },
            v4 => (v4, self.prefix_len),
        };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => mask_v4(u32::from(i), len) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(i)) => mask_v6(u128::from(i), len) == u128::from(n),
            _ => false,
        }
    }
}

/// cloudflared's `ipaccess.Policy` with default deny, as used for `socks-proxy`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpAccessPolicy {
    /// Rules in order; the first that matches decides.
    pub rules: Vec<IpAccessRule>,
}

impl IpAccessPolicy {
    /// First matching rule decides; no match (or no rules) denies.
    pub fn allowed(&self, ip: IpAddr, port: u16) -> bool {
        for rule in &self.rules {
            if rule.contains(ip)
                && (rule.ports.is_empty() || rule.ports.binary_search(&port).is_ok())
            {
                return rule.allow;
            }
        }
        false
    }
}

fn mask_v4(v: u32, len: u8) -> u32 {
    match len {
        0 => 0,
        l if l >= 32 => v,
        l => v & (u32::MAX << (32 - u32::from(l))),
    }
}

fn mask_v6(v: u128, len: u8) -> u128 {
    match len {
        0 => 0,
        l if l >= 128 => v,
        l => v & (u128::MAX << (128 - u32::from(l))),
    }
}

/// Go's `net.ParseCIDR`: strict dotted-quad IPv4 (no leading zeros) or IPv6
/// without zone, then a decimal prefix length within the address size.
fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, bits) = s.split_once('/')?;
    let ip = if addr.contains(':') {
        IpAddr::V6(addr.parse::<Ipv6Addr>().ok()?)
    } else {
        IpAddr::V4(parse_ipv4_strict(addr)?)
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if bits.is_empty() || !bits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u32 = bits.parse().ok().filter(|&l| l <= max)?;
    let len = u8::try_from(len).ok()?;
    let network = match ip {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(mask_v4(u32::from(v4), len))),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(mask_v6(u128::from(v6), len))),
    };
    Some((network, len))
}

fn parse_ipv4_strict(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for o in &mut octets {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if p.len() > 1 && p.starts_with('0') {
            return None;
        }
        *o = p.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: i64) -> Option<GoDuration> {
        GoDuration::from_secs(s)
    }

    #[test]
    fn defaults() {
        let o = OriginRequest::default();
        assert_eq!(o.connect_timeout(), Duration::from_secs(30));
        assert_eq!(o.tls_timeout(), Duration::from_secs(10));
        assert_eq!(o.tcp_keep_alive(), Duration::from_secs(30));
        assert_eq!(o.keep_alive_connections(), 100);
        assert_eq!(o.keep_alive_timeout(), Duration::from_secs(90));
        assert_eq!(o.proxy_address(), "127.0.0.1");
        assert_eq!(o.proxy_port(), 0);
        assert!(!o.no_tls_verify() && !o.no_happy_eyeballs() && !o.match_sni_to_host());
        assert!(!o.disable_chunked_encoding() && !o.http2_origin() && !o.bastion_mode());
        assert_eq!(
            (
                o.http_host_header(),
                o.origin_server_name(),
                o.ca_pool(),
                o.proxy_type()
            ),
            ("", "", "", "")
        );
        assert!(o.access().is_none() && o.ip_rules().is_empty());
        let w = WarpRouting::default();
        assert_eq!(w.connect_timeout(), Duration::from_secs(5));
        assert_eq!(w.tcp_keep_alive(), Duration::from_secs(30));
        assert_eq!(w.max_active_flows(), 0);
    }

    #[test]
    fn merge_overrides_field_by_field() {
        let defaults = OriginRequest {
            connect_timeout: secs(10),
            no_tls_verify: Some(true),
            http_host_header: Some("a".into()),
            ip_rules: Some(vec![IpRule {
                prefix: Some("10.0.0.0/8".into()),
                ports: vec![],
                allow: true,
            }]),
            access: Some(Access {
                team_name: "t".into(),
                ..Access::default()
            }),
            ..OriginRequest::default()
        };
        let rule = OriginRequest {
            connect_timeout: secs(5),
            no_tls_verify: Some(false),
            ip_rules: Some(vec![]),
            ..OriginRequest::default()
        };
        let m = defaults.with_overrides(&rule);
        assert_eq!(m.connect_timeout(), Duration::from_secs(5));
        assert!(!m.no_tls_verify());
        assert_eq!(m.http_host_header(), "a");
        // An empty ipRules list does not override, as in cloudflared.
        assert_eq!(m.ip_rules().len(), 1);
        assert_eq!(m.access().map(|a| a.team_name.as_str()), Some("t"));
        assert_eq!(m.tls_timeout(), Duration::from_secs(10));
        assert_eq!(OriginRequest::default().with_overrides(&m), m);
        // Negative durations are accepted (Go) but read as zero.
        let neg = OriginRequest {
            connect_timeout: secs(-1),
            ..OriginRequest::default()
        };
        assert_eq!(neg.connect_timeout(), Duration::ZERO);
    }

    #[test]
    fn serde_round_trip_uses_wire_names() {
        let o = OriginRequest {
            connect_timeout: secs(10),
            no_tls_verify: Some(true),
            match_sni_to_host: Some(true),
            http2_origin: Some(false),
            access: Some(Access {
                required: true,
                team_name: "t".into(),
                aud_tag: vec!["a".into()],
                environment: String::new(),
                certs_url: String::new(),
            }),
            ..OriginRequest::default()
        };
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"connectTimeout": 10, "noTLSVerify": true, "matchSNItoHost": true,
                "http2Origin": false, "access": {"required": true, "teamName": "t", "audTag": ["a"]}})
        );
        let back: OriginRequest = serde_json::from_value(v).unwrap();
        assert_eq!(back, o);
        let yaml_like: OriginRequest =
            serde_json::from_value(serde_json::json!({"connectTimeout": "1m30s", "tlsTimeout": 2}))
                .unwrap();
        assert_eq!(yaml_like.connect_timeout(), Duration::from_secs(90));
        assert_eq!(yaml_like.tls_timeout(), Duration::from_secs(2));
        let bad =
            serde_json::from_value::<OriginRequest>(serde_json::json!({"noTLSVerify": "yes"}));
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("originRequest.noTLSVerify")
        );
    }

    #[test]
    fn ip_rules_like_cloudflared() {
        assert_eq!(
            IpAccessRule::from_cidr(None, &[], true),
            Err("no prefix provided".into())
        );
        assert_eq!(
            IpAccessRule::from_cidr(Some(""), &[], true),
            Err("no prefix provided".into())
        );
        for bad in [
            "1.2.3.4",
            "1.2.3/8",
            "1.2.3.4/33",
            "01.2.3.4/8",
            "1.2.3.4/",
            "1.2.3.4/-1",
            "::1/129",
            "fe80::1%eth0/64",
            "x/8",
            "1.2.3.4/+8",
        ] {
            assert_eq!(
                IpAccessRule::from_cidr(Some(bad), &[], true),
                Err(format!("unable to parse cidr: {bad}")),
                "{bad}"
            );
        }
        assert_eq!(
            IpAccessRule::from_cidr(Some("10.0.0.0/8"), &[70000, 0], true),
            Err("invalid port 0, needs to be between 1 and 65535".into())
        );
        assert_eq!(
            IpAccessRule::from_cidr(Some("10.0.0.0/8"), &[443, 65536], true),
            Err("invalid port 65536, needs to be between 1 and 65535".into())
        );
        let r = IpAccessRule::from_cidr(Some("1.1.1.7/24"), &[443, 80], true).unwrap();
        assert_eq!(r.network(), "1.1.1.0".parse::<IpAddr>().unwrap());
        assert_eq!(
            (r.prefix_len(), r.ports(), r.allow()),
            (24, &[80u16, 443][..], true)
        );
        assert!(r.contains("1.1.1.200".parse().unwrap()));
        assert!(r.contains("::ffff:1.1.1.9".parse().unwrap()));
        assert!(!r.contains("1.1.2.1".parse().unwrap()));
        assert!(IpAccessRule::from_cidr(Some("001.1.1.1/8"), &[], true).is_err());
        assert!(IpAccessRule::from_cidr(Some("1.2.3.4/024"), &[], true).is_ok());

        let policy = IpAccessPolicy {
            rules: vec![
                r,
                IpAccessRule::from_cidr(Some("0.0.0.0/0"), &[], false).unwrap(),
                IpAccessRule::from_cidr(Some("::/0"), &[], true).unwrap(),
            ],
        };
        assert!(policy.allowed("1.1.1.1".parse().unwrap(), 443));
        assert!(!policy.allowed("1.1.1.1".parse().unwrap(), 22));
        assert!(!policy.allowed("8.8.8.8".parse().unwrap(), 443));
        assert!(policy.allowed("2001:db8::1".parse().unwrap(), 22));
        assert!(!IpAccessPolicy::default().allowed("1.1.1.1".parse().unwrap(), 80));
    }
}
