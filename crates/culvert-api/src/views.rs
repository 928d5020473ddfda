//! Request and response bodies as they appear on the wire. The OpenAPI
//! document derives its schemas from these same types.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use culvert_store::{ConfigSource, ConnectionInfo, Connector, TunType, Tunnel, TunnelConfig};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::timefmt::format_micros;

/// A tunnel (`cfd_tunnel` or `warp_connector`), spec §2.1/§2.2.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TunnelView {
    pub id: Uuid,
    pub account_tag: String,
    pub created_at: String,
    pub deleted_at: Option<String>,
    pub name: String,
    /// Deprecated: always empty (use `…/connections`).
    pub connections: Vec<ConnectionView>,
    pub conns_active_at: Option<String>,
    pub conns_inactive_at: Option<String>,
    pub tun_type: &'static str,
    pub metadata: serde_json::Value,
    pub status: &'static str,
    /// cfd_tunnel only: deprecated mirror of `config_src == "cloudflare"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_config: Option<bool>,
    /// cfd_tunnel only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_src: Option<&'static str>,
    /// On create, and on a PATCH that rotated the secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// On create of a cfd_tunnel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<CredentialsFileView>,
}

/// The credentials file cloudflared writes for a tunnel.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub struct CredentialsFileView {
    pub account_tag: String,
    #[serde(rename = "TunnelID")]
    pub tunnel_id: Uuid,
    pub tunnel_name: String,
    pub tunnel_secret: String,
}

impl TunnelView {
    pub fn new(t: &Tunnel) -> Self {
        let cfd = t.tun_type == TunType::CfdTunnel;
        TunnelView {
            id: t.id,
            account_tag: t.account_id.clone(),
            created_at: format_micros(t.created_at),
            deleted_at: t.deleted_at.map(format_micros),
            name: t.name.clone(),
            connections: Vec::new(),
            conns_active_at: t.conns_active_at.map(format_micros),
            conns_inactive_at: t.conns_inactive_at.map(format_micros),
            tun_type: t.tun_type.as_str(),
            metadata: t.metadata.clone(),
            status: t.status.as_str(),
            remote_config: cfd.then_some(t.config_src == ConfigSource::Cloudflare),
            config_src: cfd.then_some(t.config_src.as_str()),
            token: None,
            credentials_file: None,
        }
    }

    pub fn with_token(mut self, token: String) -> Self {
        self.token = Some(token);
        self
    }

    pub fn with_credentials(mut self, t: &Tunnel) -> Self {
        self.credentials_file = Some(CredentialsFileView {
            account_tag: t.account_id.clone(),
            tunnel_id: t.id,
            tunnel_name: t.name.clone(),
            tunnel_secret: STANDARD.encode(&t.secret),
        });
        self
    }
}

/// One edge connection of a connector.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ConnectionView {
    pub id: Uuid,
    /// Deprecated alias of `id`.
    pub uuid: Uuid,
    pub client_id: Uuid,
    pub client_version: String,
    pub colo_name: String,
    /// Always false (the feature was removed).
    pub is_pending_reconnect: bool,
    pub opened_at: String,
    pub origin_ip: String,
}

impl ConnectionView {
    fn new(c: &ConnectionInfo, client_version: &str) -> Self {
        ConnectionView {
            id: c.id,
            uuid: c.id,
            client_id: c.connector_id,
            client_version: client_version.to_string(),
            colo_name: c.colo_name.clone(),
            is_pending_reconnect: false,
            opened_at: format_micros(c.opened_at),
            origin_ip: c.origin_ip.clone(),
        }
    }
}

/// A connector (cloudflared process) and its connections, spec §2.3.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ConnectorView {
    pub id: Uuid,
    pub arch: String,
    pub version: String,
    pub run_at: String,
    pub features: Vec<String>,
    pub config_version: i64,
    pub conns: Vec<ConnectionView>,
}

impl ConnectorView {
    pub fn new(c: &Connector) -> Self {
        ConnectorView {
            id: c.id,
            arch: c.arch.clone(),
            version: c.version.clone(),
            run_at: format_micros(c.run_at),
            features: c.features.clone(),
            config_version: c.config_version,
            conns: c
                .conns
                .iter()
                .map(|x| ConnectionView::new(x, &c.version))
                .collect(),
        }
    }
}

/// A tunnel's configuration, spec §8.2.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ConfigView {
    pub account_id: String,
    pub tunnel_id: Uuid,
    /// 0 before the first PUT.
    pub version: i64,
    /// `null` before the first PUT.
    pub config: Option<serde_json::Value>,
    pub source: &'static str,
    pub created_at: Option<String>,
}

impl ConfigView {
    pub fn new(c: &TunnelConfig) -> Self {
        ConfigView {
            account_id: c.account_id.clone(),
            tunnel_id: c.tunnel_id,
            version: c.version,
            config: Some(c.config.clone()),
            source: c.source.as_str(),
            created_at: Some(format_micros(c.created_at)),
        }
    }

    pub fn empty(t: &Tunnel) -> Self {
        ConfigView {
            account_id: t.account_id.clone(),
            tunnel_id: t.id,
            version: 0,
            config: None,
            source: t.config_src.as_str(),
            created_at: None,
        }
    }
}

/// `tokens/verify` answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TokenVerifyView {
    pub id: String,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_on: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// culvert extension: the token's account (`culvert login` without `--account`).
    pub account_id: String,
}

// ---- request bodies ----------------------------------------------------

/// `POST …/cfd_tunnel` and `POST …/warp_connector`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct CreateTunnelBody {
    pub name: String,
    /// `local` (default) or `cloudflare`; cfd_tunnel only.
    #[serde(default)]
    pub config_src: Option<String>,
    /// Standard base64 of at least 32 bytes; generated when absent.
    #[serde(default)]
    pub tunnel_secret: Option<String>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    /// warp_connector only: created to be highly available.
    #[serde(default)]
    pub ha: Option<bool>,
}

/// `PATCH …/cfd_tunnel/{id}` and `PATCH …/warp_connector/{id}`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct PatchTunnelBody {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tunnel_secret: Option<String>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

/// `PUT …/configurations`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct PutConfigBody {
    /// `{"ingress": [...], "originRequest": {...}, "warp-routing": {...}}`;
    /// unknown keys are kept.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

/// `POST …/management`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ManagementBody {
    /// `logs` (also `admin`, `host_details`).
    pub resources: Vec<String>,
}

/// `PUT /zones/{zone_id}/tunnels/{tunnel_id}/routes` (what `cloudflared tunnel
/// route dns` sends).
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RouteBody {
    /// `dns` (load-balancer routes are not supported).
    #[serde(rename = "type")]
    pub kind: String,
    /// A hostname in the zone, or a bare label that the zone qualifies.
    pub user_hostname: String,
    #[serde(default)]
    pub overwrite_existing: bool,
}

/// The answer cloudflared prints ("Added CNAME … which will route to this tunnel").
#[derive(Debug, Serialize, JsonSchema)]
pub struct RouteResultView {
    /// `new` or `unchanged`.
    pub cname: &'static str,
    pub name: String,
}
