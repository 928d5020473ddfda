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

use sqlx::AnyConnection;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::codec::*;
use crate::model::*;
use crate::store::{Result, Store};

/// cloudflared's default `--ha-connections`.
pub const EXPECTED_CONNS_PER_CONNECTOR: usize = 4;

/// Columns read by [`connectors_from_rows`], in order.
macro_rules! connector_join_cols {
    () => {
        "k.connector_id, k.arch, k.version, k.features, k.run_at, k.config_version, \
         c.id, c.conn_index, c.colo_name, c.origin_ip, c.opened_at, c.edge_node"
    };
}

impl Store {
    /// Records a registered connection. An existing connection of the same
    /// connector and index (a reconnect) is replaced; its id is returned in
    /// [`Removed`]. Connector facts (version, arch, features, run_at) are
    /// upserted; its `config_version` is kept.
    ///
    /// The connector is the one named by `reg.connection.connector_id` (the
    /// two ids of a registration are the same by construction).
    pub async fn register_connection(&self, reg: &Registration) -> Result<Removed> {
        let conn = &reg.connection;
        let tunnel_id = uuid_text(conn.tunnel_id);
        let connector_id = uuid_text(conn.connector_id);
        let connection_id = uuid_text(conn.id);
        let now = now_micros();
        let mut tx = self.begin_write().await?;
        match self.lock_tunnel(&mut tx, &tunnel_id).await? {
            Some(None) => {}
            // Unknown or deleted: a deleted tunnel's credentials are revoked.
            _ => return Err(crate::StoreError::TunnelNotFound(conn.tunnel_id)),
        }
        sqlx::query(
            "INSERT INTO connectors (tunnel_id, connector_id, arch, version, features, run_at, config_version)
             VALUES ($1, $2, $3, $4, $5, $6, 0)
             ON CONFLICT (tunnel_id, connector_id) DO UPDATE SET
                 arch = excluded.arch,
                 version = excluded.version,
                 features = excluded.features,
                 run_at = excluded.run_at",
        )
        .bind(tunnel_id.as_str())
        .bind(connector_id.as_str())
        .bind(reg.connector.arch.as_str())
        .bind(reg.connector.version.as_str())
        .bind(string_list_json(&reg.connector.features))
        .bind(reg.connector.run_at)
        .execute(&mut *tx)
        .await?;
        // A reconnect on the same index replaces the old connection; a repeated
        // registration of the same connection id replaces itself.
        let rows = sqlx::query(
            "DELETE FROM connections
             WHERE tunnel_id = $1 AND ((connector_id = $2 AND conn_index = $3) OR id = $4)
             RETURNING id",
        )
        .bind(tunnel_id.as_str())
        .bind(connector_id.as_str())
        .bind(i64::from(conn.conn_index))
        .bind(connection_id.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let mut removed = Removed::default();
        for row in &rows {
            let id = get_uuid(row, 0, "connections", "id")?;
            if id != conn.id {
                removed.connections.push(id);
            }
        }
        sqlx::query(
            "INSERT INTO connections
                 (id, tunnel_id, connector_id, conn_index, colo_name, origin_ip, opened_at, edge_node)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(connection_id.as_str())
        .bind(tunnel_id.as_str())
        .bind(connector_id.as_str())
        .bind(i64::from(conn.conn_index))
        .bind(conn.colo_name.as_str())
        .bind(conn.origin_ip.as_str())
        .bind(conn.opened_at)
        .bind(conn.edge_node.as_str())
        .execute(&mut *tx)
        .await?;
        // The replaced connection may have been another connector's last one.
        forget_idle_connectors(&mut tx, &tunnel_id).await?;
        recompute_status(&mut tx, &tunnel_id, now).await?;
        tx.commit().await?;
        Ok(removed)
    }

    /// Forgets one connection; false when it was not registered. A connector
    /// left without connections is forgotten too.
    pub async fn unregister_connection(&self, connection_id: Uuid) -> Result<bool> {
        let id = uuid_text(connection_id);
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT tunnel_id FROM connections WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let tunnel_id: String = get(&row, 0, "connections", "tunnel_id")?;
        // Lock order is always tunnel first, as in every other registry change.
        self.lock_tunnel(&mut tx, &tunnel_id).await?;
        let res = sqlx::query("DELETE FROM connections WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            // Removed concurrently between the look-up and the lock.
            return Ok(false);
        }
        forget_idle_connectors(&mut tx, &tunnel_id).await?;
        recompute_status(&mut tx, &tunnel_id, now_micros()).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Removes all connections of the tunnel, or those of one connector.
    pub async fn remove_connections(
        &self,
        tunnel_id: Uuid,
        connector_id: Option<Uuid>,
    ) -> Result<Removed> {
        let tunnel_id = uuid_text(tunnel_id);
        let connector_id = connector_id.map(uuid_text);
        let mut tx = self.begin_write().await?;
        if self.lock_tunnel(&mut tx, &tunnel_id).await?.is_none() {
            return Ok(Removed::default());
        }
        let connections = delete_connections(&mut tx, &tunnel_id, connector_id.as_deref()).await?;
        if !connections.is_empty() {
            forget_idle_connectors(&mut tx, &tunnel_id).await?;
            recompute_status(&mut tx, &tunnel_id, now_micros()).await?;
        }
        tx.commit().await?;
        Ok(Removed { connections })
    }

    /// Removes every connection an edge node holds (used at start-up, when the
    /// node's previous connections are gone for sure).
    pub async fn clear_edge_node(&self, edge_node: &str) -> Result<Removed> {
        let now = now_micros();
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(
            "SELECT DISTINCT tunnel_id FROM connections WHERE edge_node = $1 ORDER BY tunnel_id",
        )
        .bind(edge_node)
        .fetch_all(&mut *tx)
        .await?;
        let mut removed = Removed::default();
        // Tunnel by tunnel, in id order (so two clears cannot deadlock), each
        // locked before its rows change and recomputed after.
        for row in &rows {
            let tunnel_id: String = get(row, 0, "connections", "tunnel_id")?;
            self.lock_tunnel(&mut tx, &tunnel_id).await?;
            let gone = sqlx::query(
                "DELETE FROM connections WHERE tunnel_id = $1 AND edge_node = $2 RETURNING id",
            )
            .bind(tunnel_id.as_str())
            .bind(edge_node)
            .fetch_all(&mut *tx)
            .await?;
            if gone.is_empty() {
                continue;
            }
            for r in &gone {
                removed
                    .connections
                    .push(get_uuid(r, 0, "connections", "id")?);
            }
            forget_idle_connectors(&mut tx, &tunnel_id).await?;
            recompute_status(&mut tx, &tunnel_id, now).await?;
        }
        tx.commit().await?;
        Ok(removed)
    }

    /// Connectors with at least one live connection, each with its connections,
    /// ordered by `run_at` then id; connections by index.
    pub async fn list_connectors(&self, tunnel_id: Uuid) -> Result<Vec<Connector>> {
        // One statement, so connectors and connections come from one snapshot.
        let rows = sqlx::query(concat!(
            "SELECT ",
            connector_join_cols!(),
            " FROM connectors k JOIN connections c
                ON c.tunnel_id = k.tunnel_id AND c.connector_id = k.connector_id
              WHERE k.tunnel_id = $1
              ORDER BY k.run_at, k.connector_id, c.conn_index"
        ))
        .bind(uuid_text(tunnel_id))
        .fetch_all(&self.pool)
        .await?;
        connectors_from_rows(tunnel_id, &rows)
    }

    pub async fn get_connector(
        &self,
        tunnel_id: Uuid,
        connector_id: Uuid,
    ) -> Result<Option<Connector>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            connector_join_cols!(),
            " FROM connectors k JOIN connections c
                ON c.tunnel_id = k.tunnel_id AND c.connector_id = k.connector_id
              WHERE k.tunnel_id = $1 AND k.connector_id = $2
              ORDER BY c.conn_index"
        ))
        .bind(uuid_text(tunnel_id))
        .bind(uuid_text(connector_id))
        .fetch_all(&self.pool)
        .await?;
        Ok(connectors_from_rows(tunnel_id, &rows)?.into_iter().next())
    }

    /// Records the remote configuration version a connector applied.
    ///
    /// A connector that is not registered (any more) is ignored: the report
    /// raced with its disconnection and there is nothing to update.
    pub async fn set_config_version(
        &self,
        tunnel_id: Uuid,
        connector_id: Uuid,
        version: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE connectors SET config_version = $3 WHERE tunnel_id = $1 AND connector_id = $2",
        )
        .bind(uuid_text(tunnel_id))
        .bind(uuid_text(connector_id))
        .bind(version)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn count_live_connections(&self, tunnel_id: Uuid) -> Result<u64> {
        count_connections(&mut *self.pool.acquire().await?, &uuid_text(tunnel_id)).await
    }

    /// Locks the tunnel row for the rest of the transaction (PostgreSQL; on
    /// SQLite the write transaction already excludes other writers). `None`
    /// for an unknown tunnel, else its `deleted_at`.
    async fn lock_tunnel(
        &self,
        conn: &mut AnyConnection,
        tunnel_id: &str,
    ) -> Result<Option<Option<Micros>>> {
        let row = sqlx::query(self.pick(
            "SELECT deleted_at FROM tunnels WHERE id = $1",
            "SELECT deleted_at FROM tunnels WHERE id = $1 FOR UPDATE",
        ))
        .bind(tunnel_id)
        .fetch_optional(&mut *conn)
        .await?;
        row.as_ref()
            .map(|r| get(r, 0, "tunnels", "deleted_at"))
            .transpose()
    }
}

/// Groups joined connector/connection rows (sorted by connector) into
/// connectors.
fn connectors_from_rows(tunnel_id: Uuid, rows: &[AnyRow]) -> Result<Vec<Connector>> {
    const K: &str = "connectors";
    const C: &str = "connections";
    let mut out: Vec<Connector> = Vec::new();
    for row in rows {
        let connector_id = get_uuid(row, 0, K, "connector_id")?;
        let index: i64 = get(row, 7, C, "conn_index")?;
        let connection = ConnectionInfo {
            id: get_uuid(row, 6, C, "id")?,
            tunnel_id,
            connector_id,
            conn_index: u8::try_from(index).map_err(|e| corrupt(C, "conn_index", e))?,
            colo_name: get(row, 8, C, "colo_name")?,
            origin_ip: get(row, 9, C, "origin_ip")?,
            opened_at: get(row, 10, C, "opened_at")?,
            edge_node: get(row, 11, C, "edge_node")?,
        };
        match out.last_mut() {
            Some(last) if last.id == connector_id => last.conns.push(connection),
            _ => out.push(Connector {
                id: connector_id,
                tunnel_id,
                arch: get(row, 1, K, "arch")?,
                version: get(row, 2, K, "version")?,
                features: get_string_list(row, 3, K, "features")?,
                run_at: get(row, 4, K, "run_at")?,
                config_version: get(row, 5, K, "config_version")?,
                conns: vec![connection],
            }),
        }
    }
    Ok(out)
}

pub(crate) async fn count_connections(conn: &mut AnyConnection, tunnel_id: &str) -> Result<u64> {
    let row = sqlx::query("SELECT COUNT(*) FROM connections WHERE tunnel_id = $1")
        .bind(tunnel_id)
        .fetch_one(&mut *conn)
        .await?;
    let n: i64 = get(&row, 0, "connections", "count")?;
    u64::try_from(n).map_err(|e| corrupt("connections", "count", e))
}

/// Deletes the tunnel's connections (or one connector's); returns their ids.
pub(crate) async fn delete_connections(
    conn: &mut AnyConnection,
    tunnel_id: &str,
    connector_id: Option<&str>,
) -> Result<Vec<Uuid>> {
    let rows =
        match connector_id {
            None => {
                sqlx::query("DELETE FROM connections WHERE tunnel_id = $1 RETURNING id")
                    .bind(tunnel_id)
                    .fetch_all(&mut *conn)
                    .await?
            }
            Some(connector_id) => sqlx::query(
                "DELETE FROM connections WHERE tunnel_id = $1 AND connector_id = $2 RETURNING id",
            )
            .bind(tunnel_id)
            .bind(connector_id)
            .fetch_all(&mut *conn)
            .await?,
        };
    rows.iter()
        .map(|r| get_uuid(r, 0, "connections", "id"))
        .collect()
}

/// Deletes the tunnel's connectors that have no connection left.
pub(crate) async fn forget_idle_connectors(
    conn: &mut AnyConnection,
    tunnel_id: &str,
) -> Result<()> {
    sqlx::query(
        "DELETE FROM connectors WHERE tunnel_id = $1 AND NOT EXISTS (
             SELECT 1 FROM connections c
             WHERE c.tunnel_id = connectors.tunnel_id AND c.connector_id = connectors.connector_id
         )",
    )
    .bind(tunnel_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Re-derives the tunnel's status and activity timestamps from its live
/// connections (rules in the module doc). Must run inside the transaction
/// that changed them, after the tunnel row was locked.
pub(crate) async fn recompute_status(
    conn: &mut AnyConnection,
    tunnel_id: &str,
    now: Micros,
) -> Result<()> {
    let rows =
        sqlx::query("SELECT COUNT(*) FROM connections WHERE tunnel_id = $1 GROUP BY connector_id")
            .bind(tunnel_id)
            .fetch_all(&mut *conn)
            .await?;
    let mut live = 0i64;
    let mut short = false;
    for row in &rows {
        let n: i64 = get(row, 0, "connections", "count")?;
        live += n;
        short |= usize::try_from(n).map_or(true, |n| n < EXPECTED_CONNS_PER_CONNECTOR);
    }
    if live == 0 {
        // Only a tunnel that was serving goes down; an inactive one stays
        // inactive and a down one keeps the instant it went down.
        sqlx::query(
            "UPDATE tunnels SET status = 'down', conns_active_at = NULL, conns_inactive_at = $2
             WHERE id = $1 AND status IN ('healthy', 'degraded')",
        )
        .bind(tunnel_id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    } else {
        let status = if short {
            TunnelStatus::Degraded
        } else {
            TunnelStatus::Healthy
        };
        // conns_active_at is NULL exactly while the tunnel has no connection,
        // so COALESCE starts a new active period only when one begins.
        sqlx::query(
            "UPDATE tunnels SET status = $2, conns_active_at = COALESCE(conns_active_at, $3),
                 conns_inactive_at = NULL
             WHERE id = $1",
        )
        .bind(tunnel_id)
        .bind(status.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
