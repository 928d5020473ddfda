//! Control-plane look-ups for host routing, behind a small trait so the
//! public listener does not depend on how the store answers them (and tests
//! or a future cache can stand in).

use culvert_store::{Store, StoreError, TunnelConfig};
use futures::future::BoxFuture;
use uuid::Uuid;

pub(crate) trait Routes: Send + Sync + 'static {
    /// The tunnel of an exact DNS route (hostname lowercase), if any.
    fn find_route<'a>(
        &'a self,
        hostname: &'a str,
    ) -> BoxFuture<'a, Result<Option<Uuid>, StoreError>>;
    /// Every stored remote (source cloudflare) configuration.
    fn list_remote_configs(&self) -> BoxFuture<'_, Result<Vec<TunnelConfig>, StoreError>>;
}

impl Routes for Store {
    fn find_route<'a>(
        &'a self,
        hostname: &'a str,
    ) -> BoxFuture<'a, Result<Option<Uuid>, StoreError>> {
        Box::pin(async move {
            Ok(Store::find_route(self, hostname)
                .await?
                .map(|r| r.tunnel_id))
        })
    }

    fn list_remote_configs(&self) -> BoxFuture<'_, Result<Vec<TunnelConfig>, StoreError>> {
        Box::pin(Store::list_remote_configs(self))
    }
}
