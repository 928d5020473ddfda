//! Shared state of the API handlers and the hooks the edge plugs in.

use std::sync::Arc;

use culvert_store::{Removed, Store, TunnelConfig};
use uuid::Uuid;

use crate::management::ManagementKeys;

/// What the API tells the data plane. The edge implements it; without an edge
/// (API-only tests) [`NoEdge`] ignores everything.
pub trait EdgeControl: Send + Sync + 'static {
    /// A new configuration version was stored: push it to the tunnel's connectors.
    fn config_updated(&self, config: &TunnelConfig);
    /// These connections were removed from the registry: close them.
    fn connections_removed(&self, tunnel_id: Uuid, removed: &Removed);
    /// A public hostname's route was created or changed.
    fn route_changed(&self, _hostname: &str) {}
}

/// An [`EdgeControl`] that does nothing.
pub struct NoEdge;

impl EdgeControl for NoEdge {
    fn config_updated(&self, _: &TunnelConfig) {}
    fn connections_removed(&self, _: Uuid, _: &Removed) {}
}

/// Server-wide settings of the API.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Extra keys added to every tunnel token culvert mints (after `a`, `t`,
    /// `s`), e.g. `culvert_edge` and `culvert_ca`, so that a connector started
    /// with only `--token` finds the edge. cloudflared ignores unknown keys.
    pub token_extras: serde_json::Map<String, serde_json::Value>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            max_body_bytes: 1024 * 1024,
            token_extras: serde_json::Map::new(),
        }
    }
}

/// Cheap to clone; every handler gets one.
#[derive(Clone)]
pub struct ApiState(Arc<Inner>);

pub(crate) struct Inner {
    pub store: Store,
    pub keys: ManagementKeys,
    pub edge: Arc<dyn EdgeControl>,
    pub settings: ApiSettings,
}

impl ApiState {
    pub fn new(
        store: Store,
        keys: ManagementKeys,
        edge: Arc<dyn EdgeControl>,
        settings: ApiSettings,
    ) -> Self {
        ApiState(Arc::new(Inner {
            store,
            keys,
            edge,
            settings,
        }))
    }

    pub fn store(&self) -> &Store {
        &self.0.store
    }

    pub fn keys(&self) -> &ManagementKeys {
        &self.0.keys
    }

    pub fn edge(&self) -> &dyn EdgeControl {
        self.0.edge.as_ref()
    }

    pub fn max_body_bytes(&self) -> usize {
        self.0.settings.max_body_bytes
    }

    pub fn token_extras(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.0.settings.token_extras
    }
}
