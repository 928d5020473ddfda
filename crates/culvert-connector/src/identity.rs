//! Who the connector is: the tunnel identity from the token (or credentials
//! file), culvert's extra token keys, and what it tells the edge about itself
//! in `registerConnection` (client info, features, version, arch).
//!
//! # culvert's token extras
//!
//! A token minted by culvert may carry two more JSON keys next to cloudflared's
//! `a`/`t`/`s` (cloudflared ignores unknown keys, so the token still works
//! there):
//!
//! - `"culvert_edge": ["host:port", …]` — the edge addresses to dial, used
//!   when no `--edge`/`TUNNEL_EDGE` is given;
//! - `"culvert_ca": "<PEM>"` — the CA that signed the edge certificate, used
//!   when no `--cacert`/`TUNNEL_CACERT` is given.
//!
//! They are decoded here from the same base64 JSON ([`TokenExtras::decode`]);
//! `culvert_proto::TunnelToken` is left unchanged.

use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use culvert_proto::registration::{
    ClientInfo, ConnectionOptions, RegisterConnectionParams, TunnelAuth, features,
};
use culvert_proto::{TokenError, TunnelToken};
use uuid::Uuid;

/// The token key with extra edge addresses.
pub const TOKEN_EDGE_KEY: &str = "culvert_edge";
/// The token key with the edge CA (PEM).
pub const TOKEN_CA_KEY: &str = "culvert_ca";

/// Features we advertise: what cloudflared 2023.7.3 advertises and this
/// connector implements. Not `support_datagram_v2` (no UDP/ICMP yet).
pub const FEATURES: &[&str] = &[
    features::SERIALIZED_HEADERS,
    features::SUPPORT_QUIC_EOF,
    features::ALLOW_REMOTE_CONFIG,
    features::MANAGEMENT_LOGS,
];

/// `ClientInfo.version`.
pub const CONNECTOR_VERSION: &str = concat!("culvert/", env!("CARGO_PKG_VERSION"));

/// Same decoding rules as cloudflared (Go `base64.StdEncoding`).
const GO_STD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

/// culvert's optional token keys (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenExtras {
    /// `culvert_edge`, in order; empty when absent.
    pub edge: Vec<String>,
    /// `culvert_ca`, when present and non-empty.
    pub ca_pem: Option<String>,
}

impl TokenExtras {
    /// Reads the extras of a token that [`TunnelToken::decode`] accepted.
    /// Keys match case-insensitively, like cloudflared's own keys; a key of
    /// the wrong JSON type is an error (it is ours, so it should be right).
    pub fn decode(token: &str) -> Result<TokenExtras, TokenError> {
        let token = token.trim_ascii();
        if token.len() > culvert_proto::token::MAX_TOKEN_LEN {
            return Err(TokenError::TooLong {
                len: token.len(),
                limit: culvert_proto::token::MAX_TOKEN_LEN,
            });
        }
        let json = GO_STD
            .decode(token)
            .map_err(|e| TokenError::Base64(e.to_string()))?;
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&json).map_err(|e| TokenError::Json(e.to_string()))?;
        let get = |key: &str| {
            map.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        };
        let mut extras = TokenExtras::default();
        match get(TOKEN_EDGE_KEY) {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Array(items)) => {
                for item in items {
                    let s = item.as_str().ok_or_else(|| TokenError::InvalidField {
                        field: TOKEN_EDGE_KEY,
                        reason: "entries must be \"host:port\" strings".into(),
                    })?;
                    extras.edge.push(s.to_owned());
                }
            }
            Some(_) => {
                return Err(TokenError::InvalidField {
                    field: TOKEN_EDGE_KEY,
                    reason: "must be an array of \"host:port\" strings".into(),
                });
            }
        }
        match get(TOKEN_CA_KEY) {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) if s.is_empty() => {}
            Some(serde_json::Value::String(s)) => extras.ca_pem = Some(s.clone()),
            Some(_) => {
                return Err(TokenError::InvalidField {
                    field: TOKEN_CA_KEY,
                    reason: "must be a PEM string".into(),
                });
            }
        }
        Ok(extras)
    }

    /// Encodes `token` with these extras added (what a culvert control plane
    /// mints; used by tests and tooling).
    pub fn encode_with(&self, token: &TunnelToken) -> String {
        let base = token.encode();
        let mut map: serde_json::Map<String, serde_json::Value> = GO_STD
            .decode(base)
            .ok()
            .and_then(|j| serde_json::from_slice(&j).ok())
            .unwrap_or_default();
        if !self.edge.is_empty() {
            map.insert(TOKEN_EDGE_KEY.into(), serde_json::json!(self.edge));
        }
        if let Some(ca) = &self.ca_pem {
            map.insert(TOKEN_CA_KEY.into(), serde_json::json!(ca));
        }
        GO_STD.encode(serde_json::Value::Object(map).to_string())
    }
}

/// cloudflared's `arch` string (`GOOS_GOARCH`, e.g. `linux_amd64`).
pub fn go_arch() -> String {
    go_arch_of(std::env::consts::OS, std::env::consts::ARCH)
}

/// Maps Rust's OS/arch names to Go's.
pub fn go_arch_of(os: &str, arch: &str) -> String {
    let arch = match arch {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    };
    let os = if os == "macos" { "darwin" } else { os };
    format!("{os}_{arch}")
}

/// The `originLocalIp` cloudflared sends over QUIC: the *edge* address it
/// dialled, IPv4 as an IPv4-mapped IPv6 address (16 bytes), as recorded in
/// quic-01.
pub fn origin_local_ip(edge: SocketAddr) -> IpAddr {
    match edge.ip() {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    }
}

/// The `registerConnection` parameters for one connection attempt, shaped
/// like cloudflared's (replaceExisting=false, compressionQuality=0).
pub fn register_params(
    token: &TunnelToken,
    connector_id: Uuid,
    conn_index: u8,
    edge: SocketAddr,
    previous_attempts: u32,
) -> RegisterConnectionParams {
    RegisterConnectionParams {
        auth: TunnelAuth {
            account_tag: token.account_tag.clone(),
            tunnel_secret: token.secret.clone(),
        },
        tunnel_id: token.tunnel_id,
        conn_index,
        options: ConnectionOptions {
            client: ClientInfo {
                client_id: connector_id,
                features: FEATURES.iter().map(|f| (*f).to_owned()).collect(),
                version: CONNECTOR_VERSION.to_owned(),
                arch: go_arch(),
            },
            origin_local_ip: Some(origin_local_ip(edge)),
            replace_existing: false,
            compression_quality: 0,
            num_previous_attempts: u8::try_from(previous_attempts).unwrap_or(u8::MAX),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> TunnelToken {
        TunnelToken {
            account_tag: "0123456789abcdef0123456789abcdef".into(),
            tunnel_id: Uuid::parse_str("5f3b7c1e-8a2d-4e6f-9b1c-2d3e4f5a6b7c").unwrap(),
            secret: (0u8..32).collect(),
            endpoint: None,
        }
    }

    #[test]
    fn extras_round_trip_and_cloudflared_compat() {
        let plain = token().encode();
        assert_eq!(TokenExtras::decode(&plain).unwrap(), TokenExtras::default());
        let extras = TokenExtras {
            edge: vec!["127.0.0.1:7844".into(), "edge.example:7844".into()],
            ca_pem: Some("-----BEGIN CERTIFICATE-----\n…".into()),
        };
        let t = extras.encode_with(&token());
        assert_eq!(TokenExtras::decode(&t).unwrap(), extras);
        // cloudflared's decoder (culvert-proto mirrors it) still accepts it.
        assert_eq!(TunnelToken::decode(&t).unwrap(), token());
    }

    #[test]
    fn extras_type_errors() {
        let enc = |v: serde_json::Value| GO_STD.encode(v.to_string());
        let bad = enc(serde_json::json!({"a":"x","t":"y","s":"","culvert_edge":"h:1"}));
        assert!(TokenExtras::decode(&bad).is_err());
        let bad = enc(serde_json::json!({"culvert_edge":[1]}));
        assert!(TokenExtras::decode(&bad).is_err());
        let bad = enc(serde_json::json!({"culvert_ca":5}));
        assert!(TokenExtras::decode(&bad).is_err());
        let ok = enc(serde_json::json!({"CULVERT_EDGE":["h:1"],"culvert_ca":""}));
        assert_eq!(
            TokenExtras::decode(&ok).unwrap(),
            TokenExtras {
                edge: vec!["h:1".into()],
                ca_pem: None
            }
        );
        assert!(TokenExtras::decode("not base64!").is_err());
    }

    #[test]
    fn arch_names() {
        assert_eq!(go_arch_of("linux", "x86_64"), "linux_amd64");
        assert_eq!(go_arch_of("linux", "aarch64"), "linux_arm64");
        assert_eq!(go_arch_of("macos", "aarch64"), "darwin_arm64");
        assert_eq!(go_arch_of("windows", "x86"), "windows_386");
    }

    #[test]
    fn params_like_cloudflared() {
        let edge: SocketAddr = "127.0.0.1:7844".parse().unwrap();
        let p = register_params(&token(), Uuid::from_u128(7), 2, edge, 300);
        assert_eq!(p.conn_index, 2);
        assert_eq!(p.auth.tunnel_secret.len(), 32);
        assert_eq!(
            p.options.origin_local_ip,
            Some("::ffff:127.0.0.1".parse().unwrap())
        );
        assert!(!p.options.replace_existing);
        assert_eq!(p.options.compression_quality, 0);
        assert_eq!(p.options.num_previous_attempts, 255);
        let mut f = p.options.client.features.clone();
        f.sort();
        assert_eq!(
            f,
            [
                "allow_remote_config",
                "management_logs",
                "serialized_headers",
                "support_quic_eof"
            ]
        );
        assert!(p.options.client.version.starts_with("culvert/"));
    }
}
