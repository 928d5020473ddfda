//! Control-plane look-ups for host routing, behind a small trait so the
//! public listener does not depend on how the store answers them (and tests
//! or a future cache can stand in).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    /// Forget what is known about a hostname (its route changed).
    fn invalidate(&self, _hostname: &str) {}
}

/// How long a route answer (found or not) is reused. Routes changed through
/// this node's API are invalidated at once; other nodes sharing PostgreSQL see
/// the change within this time.
const ROUTE_TTL: Duration = Duration::from_secs(2);
/// Bound on cached hostnames (eyeballs choose Host freely); the cache is
/// emptied when full.
const ROUTE_CACHE_CAP: usize = 65_536;

/// The store's routes with a short-lived cache in front, so the public
/// listener does not pay a database round trip per request.
pub(crate) struct CachedRoutes {
    store: Store,
    cache: Mutex<HashMap<String, (Option<Uuid>, Instant)>>,
}

impl CachedRoutes {
    pub fn new(store: Store) -> Self {
        CachedRoutes {
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, hostname: &str) -> Option<Option<Uuid>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(hostname)
            .filter(|(_, at)| at.elapsed() < ROUTE_TTL)
            .map(|(t, _)| *t)
    }

    fn remember(&self, hostname: &str, tunnel: Option<Uuid>) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= ROUTE_CACHE_CAP {
            cache.clear();
        }
        cache.insert(hostname.to_owned(), (tunnel, Instant::now()));
    }
}

impl Routes for CachedRoutes {
    fn find_route<'a>(
        &'a self,
        hostname: &'a str,
    ) -> BoxFuture<'a, Result<Option<Uuid>, StoreError>> {
        Box::pin(async move {
            if let Some(hit) = self.cached(hostname) {
                return Ok(hit);
            }
            let tunnel = Routes::find_route(&self.store, hostname).await?;
            self.remember(hostname, tunnel);
            Ok(tunnel)
        })
    }

    fn list_remote_configs(&self) -> BoxFuture<'_, Result<Vec<TunnelConfig>, StoreError>> {
        Routes::list_remote_configs(&self.store)
    }

    fn invalidate(&self, hostname: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.remove(hostname);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn caches_answers_and_forgets_invalidated_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("db").display()))
            .await
            .unwrap();
        let routes = CachedRoutes::new(store.clone());
        assert_eq!(routes.find_route("a.example.com").await.unwrap(), None);
        // A route added behind the cache's back is not seen until invalidated.
        let account = store.create_account("a").await.unwrap();
        let zone = store.create_zone(&account.id, "example.com").await.unwrap();
        let t = store
            .create_tunnel(culvert_store::NewTunnel {
                account_id: account.id.clone(),
                name: "t".into(),
                tun_type: culvert_store::TunType::CfdTunnel,
                config_src: culvert_store::ConfigSource::Cloudflare,
                secret: vec![1; 32],
                metadata: serde_json::json!({}),
                ha: false,
            })
            .await
            .unwrap();
        store
            .upsert_route(&zone, "a.example.com", t.id, false)
            .await
            .unwrap();
        assert_eq!(routes.find_route("a.example.com").await.unwrap(), None);
        routes.invalidate("a.example.com");
        assert_eq!(
            routes.find_route("a.example.com").await.unwrap(),
            Some(t.id)
        );
    }
}
