//! The hooks the API calls ([`culvert_api::EdgeControl`]). Both return at
//! once: pushes run in spawned tasks, closing a connection does not wait.

use std::sync::Arc;

use culvert_api::EdgeControl;
use culvert_store::{ConfigSource, Removed, TunnelConfig};
use uuid::Uuid;

use crate::Shared;
use crate::hosts::ingress_hostnames;
use crate::quic::CODE_REMOVED;

pub(crate) struct Control {
    shared: Arc<Shared>,
}

impl Control {
    pub fn new(shared: Arc<Shared>) -> Self {
        Control { shared }
    }
}

impl EdgeControl for Control {
    fn config_updated(&self, config: &TunnelConfig) {
        if config.source != ConfigSource::Cloudflare {
            return;
        }
        self.shared
            .hosts_write()
            .set_tunnel(config.tunnel_id, ingress_hostnames(&config.config));
        crate::push::schedule_push_all(&self.shared, config.clone());
    }

    fn route_changed(&self, hostname: &str) {
        self.shared.routes.invalidate(hostname);
    }

    fn connections_removed(&self, tunnel_id: Uuid, removed: &Removed) {
        for id in &removed.connections {
            // Connections held by other edge nodes are not in our registry.
            if let Some(c) = self.shared.registry.remove(*id) {
                tracing::info!(tunnel = %tunnel_id, connection = %id, "closing removed connection");
                c.conn.close(CODE_REMOVED, b"connection removed");
            }
        }
    }
}
