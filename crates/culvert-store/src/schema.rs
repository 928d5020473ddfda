//! Schema migrations, shared by SQLite and PostgreSQL.
//!
//! One schema text serves both backends, so it uses only `TEXT` and `BIGINT`
//! columns (booleans 0/1, timestamps in microseconds, JSON and byte strings as
//! text) and features both support: partial indexes, `ON CONFLICT`,
//! `RETURNING`.
//!
//! Each migration is applied in its own transaction together with its row in
//! `schema_migrations`, so a crash leaves either all of it or none. On
//! PostgreSQL the transaction first takes an advisory lock, so several
//! processes starting at once apply each step exactly once; on SQLite
//! `BEGIN IMMEDIATE` serialises them the same way.

use sqlx::Row;

use crate::model::now_micros;
use crate::store::{Backend, Result, Store};

/// Arbitrary constant identifying culvert's migration lock among the
/// database's advisory locks.
const PG_MIGRATION_LOCK: i64 = 0x0c17_e27d_b5a9;

/// Ordered migrations: (version, statements). Never edit a released step;
/// append a new one.
const MIGRATIONS: &[(i64, &[&str])] = &[
    (
        1,
        &[
            "CREATE TABLE accounts (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            created_at BIGINT NOT NULL
        )",
            "CREATE INDEX accounts_created ON accounts (created_at, id)",
            "CREATE TABLE api_tokens (
            id TEXT PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts (id),
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            email TEXT,
            secret_hash TEXT NOT NULL,
            permissions TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            expires_on BIGINT,
            not_before BIGINT,
            revoked_at BIGINT
        )",
            // Bearer look-ups go by hash alone; two tokens can never share one.
            "CREATE UNIQUE INDEX api_tokens_secret_hash ON api_tokens (secret_hash)
            WHERE kind = 'api_token'",
            "CREATE INDEX api_tokens_global_email ON api_tokens (email)
            WHERE kind = 'global_key'",
            "CREATE INDEX api_tokens_created ON api_tokens (created_at, id)",
            "CREATE TABLE settings (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )",
            "CREATE TABLE tunnels (
            id TEXT PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts (id),
            name TEXT NOT NULL,
            tun_type TEXT NOT NULL,
            config_src TEXT NOT NULL,
            secret TEXT NOT NULL,
            metadata TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            deleted_at BIGINT,
            conns_active_at BIGINT,
            conns_inactive_at BIGINT,
            status TEXT NOT NULL,
            ha BIGINT NOT NULL
        )",
            // Names are unique among live tunnels of one account and type only:
            // a deleted tunnel's name is free again.
            "CREATE UNIQUE INDEX tunnels_live_name ON tunnels (account_id, tun_type, name)
            WHERE deleted_at IS NULL",
            "CREATE INDEX tunnels_account_created ON tunnels (account_id, created_at, id)",
            "CREATE INDEX tunnels_account_name ON tunnels (account_id, name)",
            "CREATE TABLE tunnel_configs (
            tunnel_id TEXT PRIMARY KEY REFERENCES tunnels (id),
            account_id TEXT NOT NULL,
            version BIGINT NOT NULL,
            config TEXT NOT NULL,
            source TEXT NOT NULL,
            created_at BIGINT NOT NULL
        )",
            "CREATE TABLE connectors (
            tunnel_id TEXT NOT NULL REFERENCES tunnels (id),
            connector_id TEXT NOT NULL,
            arch TEXT NOT NULL,
            version TEXT NOT NULL,
            features TEXT NOT NULL,
            run_at BIGINT NOT NULL,
            config_version BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (tunnel_id, connector_id)
        )",
            "CREATE TABLE connections (
            id TEXT PRIMARY KEY,
            tunnel_id TEXT NOT NULL REFERENCES tunnels (id),
            connector_id TEXT NOT NULL,
            conn_index BIGINT NOT NULL,
            colo_name TEXT NOT NULL,
            origin_ip TEXT NOT NULL,
            opened_at BIGINT NOT NULL,
            edge_node TEXT NOT NULL,
            UNIQUE (tunnel_id, connector_id, conn_index)
        )",
            "CREATE INDEX connections_edge_node ON connections (edge_node)",
        ],
    ),
    (2, crate::routes::MIGRATION),
    (
        3,
        &[
            // Lists and counts of one account's tunnels of one type (the API's
            // `…/cfd_tunnel` and `…/warp_connector`) in page order: the count
            // reads only this index, and a page's ids come from it without
            // touching the rows it skips.
            "CREATE INDEX tunnels_account_type_created
            ON tunnels (account_id, tun_type, created_at, id)",
        ],
    ),
];

impl Store {
    /// Applies every migration the database lacks, each in its own
    /// transaction.
    pub(crate) async fn migrate(&self) -> Result<()> {
        for (version, statements) in MIGRATIONS {
            let mut tx = self.begin_write().await?;
            if self.backend == Backend::Postgres {
                // Released at commit/rollback; makes concurrent first starts
                // wait instead of racing on CREATE TABLE.
                sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1)")
                    .bind(PG_MIGRATION_LOCK)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version BIGINT PRIMARY KEY,
                    applied_at BIGINT NOT NULL
                )",
            )
            .execute(&mut *tx)
            .await?;
            let applied = sqlx::query("SELECT version FROM schema_migrations WHERE version = $1")
                .bind(*version)
                .fetch_optional(&mut *tx)
                .await?;
            if applied.is_some() {
                tx.commit().await?;
                continue;
            }
            for statement in *statements {
                sqlx::query(*statement).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(*version)
                .bind(now_micros())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(version, "applied schema migration");
        }
        Ok(())
    }

    /// The highest applied schema version (0 before any).
    pub async fn schema_version(&self) -> Result<i64> {
        let row = sqlx::query("SELECT MAX(version) FROM schema_migrations")
            .fetch_one(&self.pool)
            .await?;
        let v: Option<i64> = row
            .try_get(0)
            .map_err(|e| crate::error::StoreError::Corrupt {
                table: "schema_migrations",
                column: "version",
                detail: e.to_string(),
            })?;
        Ok(v.unwrap_or(0))
    }
}
