//! Zones and public hostname routes: which tunnel an eyeball hostname reaches
//! (what `cloudflared tunnel route dns` creates), plus the configuration index
//! the edge builds its hostname table from.

use uuid::Uuid;

use crate::codec::*;
use crate::error::StoreError;
use crate::model::*;
use crate::store::{Result, Store};

/// A DNS zone (domain) of an account; hostnames routed to tunnels must fall
/// inside one of their account's zones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// 32 lowercase hex characters.
    pub id: String,
    pub account_id: String,
    /// Lowercase domain, without a trailing dot.
    pub name: String,
    pub created_at: Micros,
}

/// A public hostname routed to a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Lowercase, without a trailing dot.
    pub hostname: String,
    pub tunnel_id: Uuid,
    pub account_id: String,
    pub zone_id: String,
    pub created_at: Micros,
}

/// What [`Store::upsert_route`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteChange {
    /// The hostname now routes to the tunnel (created, or overwritten).
    New,
    /// It already routed to this tunnel.
    Unchanged,
}

/// Lowercases and drops a trailing dot.
pub fn normalize_hostname(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn zone_from_row(row: &sqlx::any::AnyRow) -> Result<Zone> {
    const T: &str = "zones";
    Ok(Zone {
        id: get(row, 0, T, "id")?,
        account_id: get(row, 1, T, "account_id")?,
        name: get(row, 2, T, "name")?,
        created_at: get(row, 3, T, "created_at")?,
    })
}

fn route_from_row(row: &sqlx::any::AnyRow) -> Result<Route> {
    const T: &str = "routes";
    Ok(Route {
        hostname: get(row, 0, T, "hostname")?,
        tunnel_id: get_uuid(row, 1, T, "tunnel_id")?,
        account_id: get(row, 2, T, "account_id")?,
        zone_id: get(row, 3, T, "zone_id")?,
        created_at: get(row, 4, T, "created_at")?,
    })
}

impl Store {
    /// Creates a zone; [`StoreError::ZoneConflict`] when any account already
    /// has a zone of that name (hostnames route globally).
    pub async fn create_zone(&self, account_id: &str, name: &str) -> Result<Zone> {
        let zone = Zone {
            id: Uuid::new_v4().simple().to_string(),
            account_id: account_id.to_owned(),
            name: normalize_hostname(name),
            created_at: now_micros(),
        };
        let result = sqlx::query(
            "INSERT INTO zones (id, account_id, name, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(zone.id.as_str())
        .bind(zone.account_id.as_str())
        .bind(zone.name.as_str())
        .bind(zone.created_at)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(zone),
            Err(e) if is_unique_violation(&e) => Err(StoreError::ZoneConflict(zone.name)),
            Err(e) if is_foreign_key_violation(&e) => {
                Err(StoreError::AccountNotFound(account_id.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_zone(&self, id: &str) -> Result<Option<Zone>> {
        let row = sqlx::query("SELECT id, account_id, name, created_at FROM zones WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(zone_from_row).transpose()
    }

    /// The account's zones (all accounts' with `None`), by name.
    pub async fn list_zones(&self, account_id: Option<&str>) -> Result<Vec<Zone>> {
        let rows = match account_id {
            Some(a) => {
                sqlx::query(
                    "SELECT id, account_id, name, created_at FROM zones WHERE account_id = $1 ORDER BY name",
                )
                .bind(a)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query("SELECT id, account_id, name, created_at FROM zones ORDER BY name")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(zone_from_row).collect()
    }

    /// Routes `hostname` (already qualified and checked to lie in the zone)
    /// to a tunnel. Another tunnel's route is replaced only with `overwrite`,
    /// else [`StoreError::RouteConflict`].
    pub async fn upsert_route(
        &self,
        zone: &Zone,
        hostname: &str,
        tunnel_id: Uuid,
        overwrite: bool,
    ) -> Result<RouteChange> {
        let hostname = normalize_hostname(hostname);
        let tunnel = uuid_text(tunnel_id);
        let mut tx = self.begin_write().await?;
        let existing = sqlx::query(self.pick(
            "SELECT tunnel_id FROM routes WHERE hostname = $1",
            "SELECT tunnel_id FROM routes WHERE hostname = $1 FOR UPDATE",
        ))
        .bind(hostname.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let change = match existing {
            Some(row) => {
                let current = get_uuid(&row, 0, "routes", "tunnel_id")?;
                if current == tunnel_id {
                    RouteChange::Unchanged
                } else if !overwrite {
                    return Err(StoreError::RouteConflict { hostname });
                } else {
                    sqlx::query(
                        "UPDATE routes SET tunnel_id = $1, account_id = $2, zone_id = $3, created_at = $4 WHERE hostname = $5",
                    )
                    .bind(tunnel.as_str())
                    .bind(zone.account_id.as_str())
                    .bind(zone.id.as_str())
                    .bind(now_micros())
                    .bind(hostname.as_str())
                    .execute(&mut *tx)
                    .await?;
                    RouteChange::New
                }
            }
            None => {
                sqlx::query(
                    "INSERT INTO routes (hostname, tunnel_id, account_id, zone_id, created_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(hostname.as_str())
                .bind(tunnel.as_str())
                .bind(zone.account_id.as_str())
                .bind(zone.id.as_str())
                .bind(now_micros())
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::RouteConflict {
                            hostname: hostname.clone(),
                        }
                    } else {
                        e.into()
                    }
                })?;
                RouteChange::New
            }
        };
        tx.commit().await?;
        Ok(change)
    }

    /// The route of an exact hostname whose tunnel is not deleted.
    pub async fn find_route(&self, hostname: &str) -> Result<Option<Route>> {
        let row = sqlx::query(
            "SELECT r.hostname, r.tunnel_id, r.account_id, r.zone_id, r.created_at
             FROM routes r JOIN tunnels t ON t.id = r.tunnel_id
             WHERE r.hostname = $1 AND t.deleted_at IS NULL",
        )
        .bind(normalize_hostname(hostname))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(route_from_row).transpose()
    }

    /// Routes that point at a tunnel.
    pub async fn list_routes(&self, tunnel_id: Uuid) -> Result<Vec<Route>> {
        let rows = sqlx::query(
            "SELECT hostname, tunnel_id, account_id, zone_id, created_at FROM routes WHERE tunnel_id = $1 ORDER BY hostname",
        )
        .bind(uuid_text(tunnel_id))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(route_from_row).collect()
    }

    /// Every remote (`cloudflare`-sourced) configuration of a live tunnel, for
    /// the edge's hostname index.
    pub async fn list_remote_configs(&self) -> Result<Vec<TunnelConfig>> {
        let rows = sqlx::query(
            "SELECT c.tunnel_id, c.account_id, c.version, c.config, c.source, c.created_at
             FROM tunnel_configs c JOIN tunnels t ON t.id = c.tunnel_id
             WHERE c.source = 'cloudflare' AND t.deleted_at IS NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(config_from_row).collect()
    }
}

/// Migration step adding zones and routes (appended to the schema's list).
pub(crate) const MIGRATION: &[&str] = &[
    "CREATE TABLE zones (
        id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts (id),
        name TEXT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL
    )",
    "CREATE INDEX zones_account ON zones (account_id, name)",
    "CREATE TABLE routes (
        hostname TEXT PRIMARY KEY,
        tunnel_id TEXT NOT NULL REFERENCES tunnels (id),
        account_id TEXT NOT NULL,
        zone_id TEXT NOT NULL REFERENCES zones (id),
        created_at BIGINT NOT NULL
    )",
    "CREATE INDEX routes_tunnel ON routes (tunnel_id)",
];
