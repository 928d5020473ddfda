//! The API objects the CLI reads, typed the way cloudflared types them
//! (UUIDs, IPs and RFC 3339 times parse or the answer is rejected).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// A `cfd_tunnel` (spec §2.1).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tunnel {
    pub id: Uuid,
    #[serde(default)]
    pub account_tag: String,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub deleted_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub conns_active_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub conns_inactive_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub tun_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_src: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_config: Option<bool>,
    #[serde(default)]
    pub metadata: serde_json::Value,
    /// Deprecated in the API (always empty there); the CLI fills it from
    /// `…/connections` for `tunnel list` output.
    #[serde(default)]
    pub connections: Vec<Connection>,
    /// Present on create and on a PATCH that rotated the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// One edge connection (spec §2.1 connection item).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connection {
    pub id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_version: Option<String>,
    pub colo_name: String,
    #[serde(default)]
    pub is_pending_reconnect: bool,
    pub origin_ip: IpAddr,
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
}

/// A connector (cloudflared process) with its connections (spec §2.3).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connector {
    pub id: Uuid,
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub arch: String,
    #[serde(with = "time::serde::rfc3339")]
    pub run_at: OffsetDateTime,
    #[serde(default)]
    pub config_version: i64,
    #[serde(default)]
    pub conns: Vec<Connection>,
}

/// `GET|PUT …/configurations` result (spec §8.2).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TunnelConfiguration {
    #[serde(default)]
    pub account_id: String,
    pub tunnel_id: Uuid,
    pub version: i64,
    pub config: serde_json::Value,
    #[serde(default)]
    pub source: String,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub created_at: Option<OffsetDateTime>,
}

/// `PUT /zones/{zone_id}/tunnels/{tunnel_id}/routes` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteResult {
    pub cname: String,
    pub name: String,
}

impl RouteResult {
    /// cloudflared's success line.
    pub fn summary(&self) -> String {
        match self.cname.as_str() {
            "new" => format!("Added CNAME {} which will route to this tunnel", self.name),
            "updated" => format!("{} updated to route to your tunnel", self.name),
            _ => format!(
                "{} is already configured to route to your tunnel",
                self.name
            ),
        }
    }
}

/// `result_info` of a collection; integers, as cloudflared decodes them.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct ResultInfo {
    #[serde(default)]
    pub page: i64,
    #[serde(default)]
    pub per_page: i64,
    #[serde(default)]
    pub count: i64,
    #[serde(default)]
    pub total_count: i64,
}

/// `tokens/verify` result.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenStatus {
    pub id: String,
    pub status: String,
    /// culvert extension: the token's account.
    #[serde(default)]
    pub account_id: Option<String>,
}
