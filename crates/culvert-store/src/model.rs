//! Plain data types the store reads and writes.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Microseconds since the Unix epoch, UTC. The API formats them as RFC 3339
/// with microsecond precision, as Cloudflare does.
pub type Micros = i64;

/// The current time as [`Micros`].
pub fn now_micros() -> Micros {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000) as Micros
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// 32 lowercase hex characters.
    pub id: String,
    pub name: String,
    pub created_at: Micros,
}

/// How a credential is presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// `Authorization: Bearer <token>`.
    ApiToken,
    /// Legacy `X-Auth-Email` + `X-Auth-Key`.
    GlobalKey,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::ApiToken => "api_token",
            CredentialKind::GlobalKey => "global_key",
        }
    }
}

/// An API credential as stored: only the SHA-256 of the secret is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// 32 lowercase hex characters (the id `tokens/verify` reports).
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub kind: CredentialKind,
    /// Set for [`CredentialKind::GlobalKey`]: the `X-Auth-Email` it pairs with.
    pub email: Option<String>,
    /// SHA-256 of the secret, 32 bytes.
    pub secret_hash: Vec<u8>,
    /// Permission group names, e.g. `"Cloudflare Tunnel Write"`.
    pub permissions: Vec<String>,
    pub created_at: Micros,
    pub expires_on: Option<Micros>,
    pub not_before: Option<Micros>,
    pub revoked_at: Option<Micros>,
}

/// `tun_type` of a stored tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunType {
    CfdTunnel,
    WarpConnector,
}

impl TunType {
    pub fn as_str(self) -> &'static str {
        match self {
            TunType::CfdTunnel => "cfd_tunnel",
            TunType::WarpConnector => "warp_connector",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cfd_tunnel" => Some(TunType::CfdTunnel),
            "warp_connector" => Some(TunType::WarpConnector),
            _ => None,
        }
    }
}

/// Who owns a tunnel's ingress configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigSource {
    Local,
    Cloudflare,
}

impl ConfigSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigSource::Local => "local",
            ConfigSource::Cloudflare => "cloudflare",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "local" => Some(ConfigSource::Local),
            "cloudflare" => Some(ConfigSource::Cloudflare),
            _ => None,
        }
    }
}

/// Tunnel health as the API reports it (spec §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelStatus {
    /// Never had a connection.
    Inactive,
    /// Every live connector has its expected connections.
    Healthy,
    /// Serving, but some connector is short of connections.
    Degraded,
    /// Had connections before, has none now.
    Down,
}

impl TunnelStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelStatus::Inactive => "inactive",
            TunnelStatus::Healthy => "healthy",
            TunnelStatus::Degraded => "degraded",
            TunnelStatus::Down => "down",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "inactive" => Some(TunnelStatus::Inactive),
            "healthy" => Some(TunnelStatus::Healthy),
            "degraded" => Some(TunnelStatus::Degraded),
            "down" => Some(TunnelStatus::Down),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tunnel {
    pub id: Uuid,
    pub account_id: String,
    pub name: String,
    pub tun_type: TunType,
    pub config_src: ConfigSource,
    /// The raw secret bytes (at least 32). Never serialised into API answers.
    pub secret: Vec<u8>,
    /// Free-form JSON object, `{}` by default.
    pub metadata: serde_json::Value,
    pub created_at: Micros,
    pub deleted_at: Option<Micros>,
    pub conns_active_at: Option<Micros>,
    pub conns_inactive_at: Option<Micros>,
    pub status: TunnelStatus,
    /// WARP connector `ha` flag (false for cfd tunnels).
    pub ha: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewTunnel {
    pub account_id: String,
    pub name: String,
    pub tun_type: TunType,
    pub config_src: ConfigSource,
    pub secret: Vec<u8>,
    pub metadata: serde_json::Value,
    pub ha: bool,
}

/// A PATCH: `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TunnelPatch {
    pub name: Option<String>,
    pub secret: Option<Vec<u8>>,
    pub metadata: Option<serde_json::Value>,
}

/// Filters of `GET …/cfd_tunnel`, `…/warp_connector` and `…/tunnels`.
/// Every field is optional; unset means "no constraint".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TunnelFilter {
    /// Restrict to these types; empty = all types.
    pub tun_types: Vec<TunType>,
    pub name: Option<String>,
    /// `Some(true)`: only deleted; `Some(false)`: only live; `None`: both.
    pub is_deleted: Option<bool>,
    /// Created at or before this instant and not deleted at or before it.
    pub existed_at: Option<Micros>,
    pub uuid: Option<Uuid>,
    /// Had at least one connection at this instant (best effort from
    /// `conns_active_at`/`conns_inactive_at`).
    pub was_active_at: Option<Micros>,
    /// Had no connection at this instant (best effort).
    pub was_inactive_at: Option<Micros>,
    pub include_prefix: Option<String>,
    pub exclude_prefix: Option<String>,
    pub status: Option<TunnelStatus>,
}

/// One page of a list, plus the number of matches across all pages.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total_count: u64,
}

/// The stored configuration of a tunnel (one row per tunnel, latest version).
#[derive(Debug, Clone, PartialEq)]
pub struct TunnelConfig {
    pub tunnel_id: Uuid,
    pub account_id: String,
    pub version: i64,
    /// The `config` object exactly as accepted (unknown keys kept).
    pub config: serde_json::Value,
    pub source: ConfigSource,
    pub created_at: Micros,
}

/// What the edge knows about one registered connection (spec §2.3 `conns`).
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionInfo {
    /// Connection UUID.
    pub id: Uuid,
    pub tunnel_id: Uuid,
    /// The connector (cloudflared process) id.
    pub connector_id: Uuid,
    /// HA connection index (0..ha_connections).
    pub conn_index: u8,
    /// Edge location name (`colo_name`).
    pub colo_name: String,
    pub origin_ip: String,
    pub opened_at: Micros,
    /// Which edge node holds the live connection (for multi-node deployments
    /// and for clearing stale rows after a restart).
    pub edge_node: String,
}

/// Connector-level facts sent at registration (`ConnectionOptions.client`).
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorInfo {
    pub connector_id: Uuid,
    pub arch: String,
    pub version: String,
    pub features: Vec<String>,
    pub run_at: Micros,
}

/// A registration: the connector facts plus the new connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub connector: ConnectorInfo,
    pub connection: ConnectionInfo,
}

/// A connector and its live connections, as `GET …/connections` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Connector {
    pub id: Uuid,
    pub tunnel_id: Uuid,
    pub arch: String,
    pub version: String,
    pub features: Vec<String>,
    pub run_at: Micros,
    /// Remote configuration version this connector applied; `0` before any.
    pub config_version: i64,
    pub conns: Vec<ConnectionInfo>,
}

/// What a registry change removed or replaced, so the edge can close it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Removed {
    /// Ids of connections that are no longer registered.
    pub connections: Vec<Uuid>,
}
