//! The durable side of the connection registry: which connectors and
//! connections each tunnel has, and the tunnel status rules of spec §2.4.
//!
//! Every change recomputes the tunnel's `status`, `conns_active_at` and
//! `conns_inactive_at` in the same transaction:
//! - no connection ever → `inactive` (timestamps as created);
//! - first live connection → `conns_active_at = now`, `conns_inactive_at = null`;
//! - every live connector has [`EXPECTED_CONNS_PER_CONNECTOR`] connections →
//!   `healthy`, fewer → `degraded`;
//! - last connection gone → `down`, `conns_active_at = null`,
//!   `conns_inactive_at = now`.

use uuid::Uuid;

use crate::model::*;
use crate::store::{Result, Store};

/// cloudflared's default `--ha-connections`.
pub const EXPECTED_CONNS_PER_CONNECTOR: usize = 4;

impl Store {
    /// Records a registered connection. An existing connection of the same
    /// connector and index (a reconnect) is replaced; its id is returned in
    /// [`Removed`]. Connector facts (version, arch, features, run_at) are
    /// upserted; its `config_version` is kept.
    pub async fn register_connection(&self, reg: &Registration) -> Result<Removed> {
        unimplemented!("{reg:?}")
    }

    /// Forgets one connection; false when it was not registered. A connector
    /// left without connections is forgotten too.
    pub async fn unregister_connection(&self, connection_id: Uuid) -> Result<bool> {
        unimplemented!("{connection_id}")
    }

    /// Removes all connections of the tunnel, or those of one connector.
    pub async fn remove_connections(
        &self,
        tunnel_id: Uuid,
        connector_id: Option<Uuid>,
    ) -> Result<Removed> {
        unimplemented!("{tunnel_id}{connector_id:?}")
    }

    /// Removes every connection an edge node holds (used at start-up, when the
    /// node's previous connections are gone for sure).
    pub async fn clear_edge_node(&self, edge_node: &str) -> Result<Removed> {
        unimplemented!("{edge_node}")
    }

    /// Connectors with at least one live connection, each with its connections,
    /// ordered by `run_at` then id; connections by index.
    pub async fn list_connectors(&self, tunnel_id: Uuid) -> Result<Vec<Connector>> {
        unimplemented!("{tunnel_id}")
    }

    pub async fn get_connector(&self, tunnel_id: Uuid, connector_id: Uuid) -> Result<Option<Connector>> {
        unimplemented!("{tunnel_id}{connector_id}")
    }

    /// Records the remote configuration version a connector applied.
    pub async fn set_config_version(&self, tunnel_id: Uuid, connector_id: Uuid, version: i64) -> Result<()> {
        unimplemented!("{tunnel_id}{connector_id}{version}")
    }

    pub async fn count_live_connections(&self, tunnel_id: Uuid) -> Result<u64> {
        unimplemented!("{tunnel_id}")
    }
}
