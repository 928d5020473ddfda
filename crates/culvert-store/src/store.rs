//! The [`Store`] handle: opening, migrations, accounts, credentials, tunnels and
//! configurations. The connection registry lives in `registry.rs`.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sqlx::any::{AnyArguments, AnyPoolOptions};
use sqlx::{Any, AssertSqlSafe, Transaction};
use uuid::Uuid;

use crate::codec::*;
use crate::error::StoreError;
use crate::fast::{FastReads, query_one};
use crate::model::*;
use crate::registry::{
    count_connections, delete_connections, forget_idle_connectors, recompute_status,
};

/// Which database a [`Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A cheap-to-clone handle on the database (a connection pool inside).
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: sqlx::AnyPool,
    pub(crate) backend: Backend,
    /// SQLite only: read-only connections for the hottest point reads
    /// (`fast.rs`); `None` on PostgreSQL, or if they could not be opened.
    pub(crate) fast: Option<Arc<FastReads>>,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl Store {
    /// Opens `sqlite://PATH` (the file is created with mode 0600, WAL journal)
    /// or `postgres://…`, and brings the schema up to date.
    pub async fn open(database_url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let (mut store, sqlite_path) = if let Some(rest) = database_url
            .strip_prefix("sqlite://")
            .or_else(|| database_url.strip_prefix("sqlite:"))
        {
            let (pool, path) = Self::open_sqlite(database_url, rest).await?;
            let store = Store {
                pool,
                backend: Backend::Sqlite,
                fast: None,
            };
            (store, Some(path))
        } else if database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://")
        {
            let pool = AnyPoolOptions::new()
                .max_connections(PG_MAX_CONNECTIONS)
                // A dead connection fails the statement that uses it (an I/O
                // error or SQLSTATE 57P01, both retryable) and is dropped
                // when released; a ping per acquire is a round trip per query.
                .test_before_acquire(false)
                .connect(database_url)
                .await?;
            let store = Store {
                pool,
                backend: Backend::Postgres,
                fast: None,
            };
            (store, None)
        } else {
            return Err(StoreError::UnsupportedUrl(database_url.to_owned()));
        };
        if let Err(e) = store.migrate().await {
            store.close().await;
            return Err(e);
        }
        if let Some(path) = sqlite_path {
            // After the migrations, so the readers' statements find the
            // schema. Without them every read simply takes the pool.
            match FastReads::open(&path) {
                Ok(fast) => store.fast = Some(Arc::new(fast)),
                Err(error) => tracing::warn!(
                    %error,
                    path = %path.display(),
                    "cannot open SQLite fast readers; all reads go through the pool"
                ),
            }
        }
        Ok(store)
    }

    /// The pool of a SQLite database, and the database file's absolute path.
    async fn open_sqlite(database_url: &str, rest: &str) -> Result<(sqlx::AnyPool, PathBuf)> {
        // `?mode=rwc` and similar sqlx options are meaningless here: the file is
        // always created and opened read-write.
        let raw_path = rest.split_once('?').map_or(rest, |(p, _)| p);
        if raw_path.is_empty() || raw_path.starts_with(":memory:") {
            return Err(StoreError::UnsupportedUrl(database_url.to_owned()));
        }
        let path = prepare_sqlite_file(database_url, Path::new(raw_path))?;
        let path_str = path
            .to_str()
            .ok_or_else(|| StoreError::UnsupportedUrl(database_url.to_owned()))?;
        let connect_url = format!("sqlite://{}", percent_encode_path(path_str));
        let pool = AnyPoolOptions::new()
            .max_connections(SQLITE_MAX_CONNECTIONS)
            .min_connections(1)
            // Connections are cheap to keep and carry prepared statements;
            // recycling them only costs latency.
            .idle_timeout(None)
            .max_lifetime(None)
            // SQLite connections do not die on their own; a ping is another
            // round trip through the connection's worker thread.
            .test_before_acquire(false)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    for pragma in SQLITE_PRAGMAS {
                        sqlx::query(*pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(&connect_url)
            .await?;
        Ok((pool, path))
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Cheap liveness probe (`SELECT 1`).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool, waiting for checked-out connections.
    pub async fn close(&self) {
        // Readers first, so the pool's last connection checkpoints and
        // removes the WAL as before.
        if let Some(fast) = &self.fast {
            fast.close();
        }
        self.pool.close().await
    }

    /// Starts a read-write transaction. On SQLite it takes the write lock up
    /// front (`BEGIN IMMEDIATE`) so two writers never deadlock upgrading a read
    /// lock; waiting for it is bounded by `busy_timeout`.
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// `sqlite` on SQLite, `postgres` on PostgreSQL (for the few statements
    /// whose text must differ, such as `FOR UPDATE`).
    pub(crate) fn pick(&self, sqlite: &'static str, postgres: &'static str) -> &'static str {
        match self.backend {
            Backend::Sqlite => sqlite,
            Backend::Postgres => postgres,
        }
    }

    // ---- accounts -------------------------------------------------------

    /// Creates an account with a fresh 32-hex id.
    pub async fn create_account(&self, name: &str) -> Result<Account> {
        let account = Account {
            id: Uuid::new_v4().simple().to_string(),
            name: name.to_owned(),
            created_at: now_micros(),
        };
        sqlx::query("INSERT INTO accounts (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(account.id.as_str())
            .bind(account.name.as_str())
            .bind(account.created_at)
            .execute(&self.pool)
            .await?;
        Ok(account)
    }

    pub async fn get_account(&self, id: &str) -> Result<Option<Account>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            account_cols!(),
            " FROM accounts WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(account_from_row).transpose()
    }

    pub async fn list_accounts(&self) -> Result<Vec<Account>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            account_cols!(),
            " FROM accounts ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(account_from_row).collect()
    }

    // ---- settings (key material, bootstrap markers) ---------------------

    pub async fn get_setting(&self, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(|r| get(r, 0, "settings", "value"))
            .transpose()
    }

    /// Stores `value` under `key` unless a value is already there; returns the
    /// value that is stored afterwards (so concurrent first starts agree).
    pub async fn put_setting_if_absent(&self, key: &str, value: &str) -> Result<String> {
        // The insert is atomic on both backends; whoever loses reads the
        // winner's value.
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        self.get_setting(key).await?.ok_or_else(|| {
            corrupt(
                "settings",
                "value",
                format!("{key:?} vanished right after insertion"),
            )
        })
    }

    // ---- API credentials ------------------------------------------------

    pub async fn create_api_token(&self, token: &ApiToken) -> Result<()> {
        let res = sqlx::query(concat!(
            "INSERT INTO api_tokens (",
            token_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(token.id.as_str())
        .bind(token.account_id.as_str())
        .bind(token.name.as_str())
        .bind(token.kind.as_str())
        .bind(token.email.as_deref())
        .bind(hex_encode(&token.secret_hash))
        .bind(string_list_json(&token.permissions))
        .bind(token.created_at)
        .bind(token.expires_on)
        .bind(token.not_before)
        .bind(token.revoked_at)
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_foreign_key_violation(&e) => {
                Err(StoreError::AccountNotFound(token.account_id.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Looks a bearer token up by the SHA-256 of its secret. Revoked tokens are
    /// returned too (the caller decides); only `ApiToken` kind rows match.
    pub async fn find_api_token_by_hash(&self, secret_hash: &[u8]) -> Result<Option<ApiToken>> {
        let hash = hex_encode(secret_hash);
        if let Some(answer) = self.fast_token_by_hash(&hash) {
            return answer;
        }
        self.pool_token_by_hash(&hash).await
    }

    /// [`Store::find_api_token_by_hash`] on the SQLite fast readers only; `None` when they
    /// cannot answer (none idle, SQLite failed, PostgreSQL, closed).
    pub(crate) fn fast_token_by_hash(&self, hash_hex: &str) -> Option<Result<Option<ApiToken>>> {
        self.fast.as_ref()?.read(|c| {
            query_one(c, TOKEN_BY_HASH_SQL, &[("$1", &hash_hex)], |r| {
                token_from_row(r)
            })
        })
    }

    /// [`Store::find_api_token_by_hash`] through the pool only.
    pub(crate) async fn pool_token_by_hash(&self, hash_hex: &str) -> Result<Option<ApiToken>> {
        let row = sqlx::query(TOKEN_BY_HASH_SQL)
            .bind(hash_hex)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Global keys registered for an `X-Auth-Email` (the caller compares the
    /// key hash in constant time).
    pub async fn find_global_keys(&self, email: &str) -> Result<Vec<ApiToken>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            token_cols!(),
            " FROM api_tokens WHERE email = $1 AND kind = 'global_key' ORDER BY created_at, id"
        ))
        .bind(email)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    pub async fn list_api_tokens(&self) -> Result<Vec<ApiToken>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            token_cols!(),
            " FROM api_tokens ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Sets `revoked_at`; [`StoreError::TokenNotFound`] for an unknown id.
    pub async fn revoke_api_token(&self, id: &str) -> Result<()> {
        // Revoking twice keeps the first instant.
        let res = sqlx::query(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1",
        )
        .bind(id)
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::TokenNotFound(id.to_owned()));
        }
        Ok(())
    }

    // ---- tunnels ----------------------------------------------------------

    /// Creates a tunnel: `status = inactive`, `conns_inactive_at = created_at`.
    /// [`StoreError::NameConflict`] when a live tunnel of the same account and
    /// type has the name (enforced by a unique index, so races are safe).
    pub async fn create_tunnel(&self, new: NewTunnel) -> Result<Tunnel> {
        let now = now_micros();
        let tunnel = Tunnel {
            id: Uuid::new_v4(),
            account_id: new.account_id,
            name: new.name,
            tun_type: new.tun_type,
            config_src: new.config_src,
            secret: new.secret,
            metadata: new.metadata,
            created_at: now,
            deleted_at: None,
            conns_active_at: None,
            conns_inactive_at: Some(now),
            status: TunnelStatus::Inactive,
            ha: new.ha,
        };
        let res = sqlx::query(concat!(
            "INSERT INTO tunnels (",
            tunnel_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(uuid_text(tunnel.id))
        .bind(tunnel.account_id.as_str())
        .bind(tunnel.name.as_str())
        .bind(tunnel.tun_type.as_str())
        .bind(tunnel.config_src.as_str())
        .bind(hex_encode(&tunnel.secret))
        .bind(tunnel.metadata.to_string())
        .bind(tunnel.created_at)
        .bind(tunnel.deleted_at)
        .bind(tunnel.conns_active_at)
        .bind(tunnel.conns_inactive_at)
        .bind(tunnel.status.as_str())
        .bind(i64::from(tunnel.ha))
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok(tunnel),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::NameConflict { name: tunnel.name })
            }
            Err(e) if is_foreign_key_violation(&e) => {
                Err(StoreError::AccountNotFound(tunnel.account_id))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A tunnel of the account (deleted ones too). `tun_type = Some(t)` also
    /// requires that type.
    pub async fn get_tunnel(
        &self,
        account_id: &str,
        tun_type: Option<TunType>,
        id: Uuid,
    ) -> Result<Option<Tunnel>> {
        // The API's hottest query: one primary-key probe. On SQLite the fast
        // readers answer it on this thread (`fast.rs`).
        let id = uuid_text(id);
        if let Some(answer) = self.fast_get_tunnel(account_id, tun_type, &id) {
            return answer;
        }
        self.pool_get_tunnel(account_id, tun_type, &id).await
    }

    /// [`Store::get_tunnel`] on the SQLite fast readers only; `None` when they
    /// cannot answer (none idle, SQLite failed, PostgreSQL, closed).
    pub(crate) fn fast_get_tunnel(
        &self,
        account_id: &str,
        tun_type: Option<TunType>,
        id_text: &str,
    ) -> Option<Result<Option<Tunnel>>> {
        self.fast.as_ref()?.read(|c| match tun_type {
            None => query_one(
                c,
                TUNNEL_OF_ACCOUNT_SQL,
                &[("$1", &id_text), ("$2", &account_id)],
                |r| tunnel_from_row(r),
            ),
            Some(t) => query_one(
                c,
                TUNNEL_OF_ACCOUNT_TYPE_SQL,
                &[("$1", &id_text), ("$2", &account_id), ("$3", &t.as_str())],
                |r| tunnel_from_row(r),
            ),
        })
    }

    /// [`Store::get_tunnel`] through the pool only.
    pub(crate) async fn pool_get_tunnel(
        &self,
        account_id: &str,
        tun_type: Option<TunType>,
        id_text: &str,
    ) -> Result<Option<Tunnel>> {
        let row = match tun_type {
            None => {
                sqlx::query(TUNNEL_OF_ACCOUNT_SQL)
                    .bind(id_text)
                    .bind(account_id)
                    .fetch_optional(&self.pool)
                    .await?
            }
            Some(t) => {
                sqlx::query(TUNNEL_OF_ACCOUNT_TYPE_SQL)
                    .bind(id_text)
                    .bind(account_id)
                    .bind(t.as_str())
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        row.as_ref().map(tunnel_from_row).transpose()
    }

    /// A tunnel by id alone (the edge's lookup at registration).
    pub async fn get_tunnel_by_id(&self, id: Uuid) -> Result<Option<Tunnel>> {
        let id = uuid_text(id);
        if let Some(answer) = self.fast_tunnel_by_id(&id) {
            return answer;
        }
        self.pool_tunnel_by_id(&id).await
    }

    /// [`Store::get_tunnel_by_id`] on the SQLite fast readers only; `None` when they
    /// cannot answer (none idle, SQLite failed, PostgreSQL, closed).
    pub(crate) fn fast_tunnel_by_id(&self, id_text: &str) -> Option<Result<Option<Tunnel>>> {
        self.fast.as_ref()?.read(|c| {
            query_one(c, TUNNEL_BY_ID_SQL, &[("$1", &id_text)], |r| {
                tunnel_from_row(r)
            })
        })
    }

    /// [`Store::get_tunnel_by_id`] through the pool only.
    pub(crate) async fn pool_tunnel_by_id(&self, id_text: &str) -> Result<Option<Tunnel>> {
        let row = sqlx::query(TUNNEL_BY_ID_SQL)
            .bind(id_text)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(tunnel_from_row).transpose()
    }

    /// One page (1-based) of the account's tunnels matching `filter`, ordered
    /// by `created_at`, then `id`; `total_count` counts all matches. A page past
    /// the end is empty, never an error.
    pub async fn list_tunnels(
        &self,
        account_id: &str,
        filter: &TunnelFilter,
        page: u32,
        per_page: u32,
    ) -> Result<Page<Tunnel>> {
        let mut q = self.tunnel_list_query(account_id, filter);
        let row = q
            .bind(sqlx::query(AssertSqlSafe(q.count_sql())))
            .fetch_one(&self.pool)
            .await?;
        let total: i64 = get(&row, 0, "tunnels", "count")?;
        let total_count = u64::try_from(total).map_err(|e| corrupt("tunnels", "count", e))?;

        let per_page = u64::from(per_page);
        let offset = u64::from(page.max(1) - 1).saturating_mul(per_page);
        if per_page == 0 || offset >= total_count {
            return Ok(Page {
                items: Vec::new(),
                total_count,
            });
        }
        // Both fit: per_page ≤ u32::MAX and offset < total_count ≤ i64::MAX.
        let page_sql = q.page_sql(
            i64::try_from(per_page).unwrap_or(i64::MAX),
            i64::try_from(offset).unwrap_or(i64::MAX),
        );
        let rows = q
            .bind(sqlx::query(AssertSqlSafe(page_sql)))
            .fetch_all(&self.pool)
            .await?;
        let items = rows.iter().map(tunnel_from_row).collect::<Result<_>>()?;
        Ok(Page { items, total_count })
    }

    /// The conditions and arguments of a [`Store::list_tunnels`] call.
    pub(crate) fn tunnel_list_query(
        &self,
        account_id: &str,
        filter: &TunnelFilter,
    ) -> TunnelListQuery {
        let mut w = WhereBuilder::default();
        let n = w.arg(Arg::Text(account_id.to_owned()));
        w.and(format!("account_id = ${n}"));
        if !filter.tun_types.is_empty() {
            let mut types: Vec<TunType> = Vec::with_capacity(2);
            for t in &filter.tun_types {
                if !types.contains(t) {
                    types.push(*t);
                }
            }
            let list: Vec<String> = types
                .iter()
                .map(|t| format!("${}", w.arg(Arg::Text(t.as_str().to_owned()))))
                .collect();
            w.and(format!("tun_type IN ({})", list.join(", ")));
        }
        if let Some(name) = &filter.name {
            let n = w.arg(Arg::Text(name.clone()));
            w.and(format!("name = ${n}"));
        }
        match filter.is_deleted {
            Some(true) => w.and("deleted_at IS NOT NULL".to_owned()),
            Some(false) => w.and("deleted_at IS NULL".to_owned()),
            None => {}
        }
        if let Some(t) = filter.existed_at {
            let n = w.arg(Arg::Int(t));
            w.and(format!(
                "created_at <= ${n} AND (deleted_at IS NULL OR deleted_at > ${n})"
            ));
        }
        if let Some(id) = filter.uuid {
            let n = w.arg(Arg::Text(uuid_text(id)));
            w.and(format!("id = ${n}"));
        }
        if let Some(t) = filter.was_active_at {
            let n = w.arg(Arg::Int(t));
            w.and(format!(
                "conns_active_at IS NOT NULL AND conns_active_at <= ${n}"
            ));
        }
        if let Some(t) = filter.was_inactive_at {
            let n = w.arg(Arg::Int(t));
            w.and(format!(
                "(conns_active_at IS NULL OR conns_active_at > ${n})"
            ));
        }
        // Prefixes compare with substr, not LIKE: no wildcard escaping to get
        // wrong, and case-sensitive on SQLite too.
        if let Some(p) = &filter.include_prefix {
            let n = w.arg(Arg::Text(p.clone()));
            w.and(format!("substr(name, 1, length(${n})) = ${n}"));
        }
        if let Some(p) = &filter.exclude_prefix {
            let n = w.arg(Arg::Text(p.clone()));
            w.and(format!("substr(name, 1, length(${n})) <> ${n}"));
        }
        if let Some(s) = filter.status {
            let n = w.arg(Arg::Text(s.as_str().to_owned()));
            w.and(format!("status = ${n}"));
        }

        // SQLite plans without statistics: given a name it would still walk
        // the account's whole `(account_id, tun_type, created_at, id)` range
        // (that index also yields the order) instead of probing the name.
        // PostgreSQL's statistics pick the name index by themselves.
        let source = match (self.backend, filter.name.is_some()) {
            (Backend::Sqlite, true) => "tunnels INDEXED BY tunnels_account_name",
            _ => "tunnels",
        };
        TunnelListQuery { w, source }
    }

    /// Applies a PATCH to a live or deleted tunnel of the given type.
    /// [`StoreError::NameConflict`] on a rename onto a live name,
    /// [`StoreError::TunnelNotFound`] for an unknown id.
    pub async fn update_tunnel(
        &self,
        account_id: &str,
        tun_type: TunType,
        id: Uuid,
        patch: TunnelPatch,
    ) -> Result<Tunnel> {
        let mut w = WhereBuilder::default();
        w.arg(Arg::Text(uuid_text(id)));
        w.arg(Arg::Text(account_id.to_owned()));
        w.arg(Arg::Text(tun_type.as_str().to_owned()));
        let mut sets: Vec<String> = Vec::with_capacity(3);
        if let Some(name) = &patch.name {
            let n = w.arg(Arg::Text(name.clone()));
            sets.push(format!("name = ${n}"));
        }
        if let Some(secret) = &patch.secret {
            let n = w.arg(Arg::Text(hex_encode(secret)));
            sets.push(format!("secret = ${n}"));
        }
        if let Some(metadata) = &patch.metadata {
            let n = w.arg(Arg::Text(metadata.to_string()));
            sets.push(format!("metadata = ${n}"));
        }
        if sets.is_empty() {
            return self
                .get_tunnel(account_id, Some(tun_type), id)
                .await?
                .ok_or(StoreError::TunnelNotFound(id));
        }
        let sql = format!(
            concat!(
                "UPDATE tunnels SET {} WHERE id = $1 AND account_id = $2 AND tun_type = $3 RETURNING ",
                tunnel_cols!()
            ),
            sets.join(", ")
        );
        let res = w
            .bind_all(sqlx::query(AssertSqlSafe(sql)))
            .fetch_optional(&self.pool)
            .await;
        match res {
            Ok(Some(row)) => tunnel_from_row(&row),
            Ok(None) => Err(StoreError::TunnelNotFound(id)),
            Err(e) if is_unique_violation(&e) => Err(StoreError::NameConflict {
                name: patch.name.unwrap_or_default(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Soft-deletes (sets `deleted_at`; deleting again keeps the first time).
    /// With live connections: [`StoreError::HasActiveConnections`] unless
    /// `cascade`, in which case the connections are removed first (in the same
    /// transaction) and returned so the edge can close them.
    pub async fn delete_tunnel(
        &self,
        account_id: &str,
        tun_type: TunType,
        id: Uuid,
        cascade: bool,
    ) -> Result<(Tunnel, Removed)> {
        let id_text = uuid_text(id);
        let mut tx = self.begin_write().await?;
        let locked = sqlx::query(self.pick(
            "SELECT deleted_at FROM tunnels WHERE id = $1 AND account_id = $2 AND tun_type = $3",
            "SELECT deleted_at FROM tunnels WHERE id = $1 AND account_id = $2 AND tun_type = $3 \
             FOR UPDATE",
        ))
        .bind(id_text.as_str())
        .bind(account_id)
        .bind(tun_type.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(locked) = locked else {
            return Err(StoreError::TunnelNotFound(id));
        };
        let deleted_at: Option<Micros> = get(&locked, 0, "tunnels", "deleted_at")?;
        let mut removed = Removed::default();
        if deleted_at.is_none() {
            let now = now_micros();
            let live = count_connections(&mut tx, &id_text).await?;
            if live > 0 {
                if !cascade {
                    return Err(StoreError::HasActiveConnections(id));
                }
                removed.connections = delete_connections(&mut tx, &id_text, None).await?;
                forget_idle_connectors(&mut tx, &id_text).await?;
                recompute_status(&mut tx, &id_text, now).await?;
            }
            sqlx::query("UPDATE tunnels SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL")
                .bind(id_text.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        let row = sqlx::query(concat!(
            "SELECT ",
            tunnel_cols!(),
            " FROM tunnels WHERE id = $1"
        ))
        .bind(id_text.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let tunnel = tunnel_from_row(&row)?;
        tx.commit().await?;
        Ok((tunnel, removed))
    }

    // ---- configurations ---------------------------------------------------

    pub async fn get_config(&self, tunnel_id: Uuid) -> Result<Option<TunnelConfig>> {
        let id = uuid_text(tunnel_id);
        if let Some(answer) = self.fast_get_config(&id) {
            return answer;
        }
        self.pool_get_config(&id).await
    }

    /// [`Store::get_config`] on the SQLite fast readers only; `None` when they
    /// cannot answer (none idle, SQLite failed, PostgreSQL, closed).
    pub(crate) fn fast_get_config(
        &self,
        tunnel_id_text: &str,
    ) -> Option<Result<Option<TunnelConfig>>> {
        self.fast.as_ref()?.read(|c| {
            query_one(c, CONFIG_SQL, &[("$1", &tunnel_id_text)], |r| {
                config_from_row(r)
            })
        })
    }

    /// [`Store::get_config`] through the pool only.
    pub(crate) async fn pool_get_config(
        &self,
        tunnel_id_text: &str,
    ) -> Result<Option<TunnelConfig>> {
        let row = sqlx::query(CONFIG_SQL)
            .bind(tunnel_id_text)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(config_from_row).transpose()
    }

    /// Replaces the configuration; the version is the previous one + 1 (the
    /// first is 1) and is never reused. A `Cloudflare`-sourced configuration
    /// also marks the tunnel remotely managed (`config_src = cloudflare`).
    pub async fn put_config(
        &self,
        account_id: &str,
        tunnel_id: Uuid,
        config: &serde_json::Value,
        source: ConfigSource,
    ) -> Result<TunnelConfig> {
        let id_text = uuid_text(tunnel_id);
        let now = now_micros();
        let mut tx = self.begin_write().await?;
        let exists = sqlx::query(self.pick(
            "SELECT id FROM tunnels WHERE id = $1 AND account_id = $2",
            "SELECT id FROM tunnels WHERE id = $1 AND account_id = $2 FOR UPDATE",
        ))
        .bind(id_text.as_str())
        .bind(account_id)
        .fetch_optional(&mut *tx)
        .await?;
        if exists.is_none() {
            return Err(StoreError::TunnelNotFound(tunnel_id));
        }
        // One row per tunnel that is never deleted, so +1 on it can never hand
        // out a version twice.
        let row = sqlx::query(
            "INSERT INTO tunnel_configs (tunnel_id, account_id, version, config, source, created_at)
             VALUES ($1, $2, 1, $3, $4, $5)
             ON CONFLICT (tunnel_id) DO UPDATE SET
                 version = tunnel_configs.version + 1,
                 account_id = excluded.account_id,
                 config = excluded.config,
                 source = excluded.source,
                 created_at = excluded.created_at
             RETURNING version",
        )
        .bind(id_text.as_str())
        .bind(account_id)
        .bind(config.to_string())
        .bind(source.as_str())
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let version: i64 = get(&row, 0, "tunnel_configs", "version")?;
        if source == ConfigSource::Cloudflare {
            // A remote configuration makes the tunnel remotely managed (the
            // dashboard's local-to-remote migration does the same).
            sqlx::query("UPDATE tunnels SET config_src = 'cloudflare' WHERE id = $1")
                .bind(id_text.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(TunnelConfig {
            tunnel_id,
            account_id: account_id.to_owned(),
            version,
            config: config.clone(),
            source,
            created_at: now,
        })
    }
}

// ---- point reads shared by the sqlx path and the SQLite fast path ---------
//
// One text per read, so both paths run the very same statement; SQLite binds
// `$N` by name, which the fast path does too.

/// A bearer token by the hex SHA-256 of its secret. The literal kind matches
/// the partial unique index's predicate, so this is one index probe.
pub(crate) const TOKEN_BY_HASH_SQL: &str = concat!(
    "SELECT ",
    token_cols!(),
    " FROM api_tokens WHERE secret_hash = $1 AND kind = 'api_token'"
);
pub(crate) const TUNNEL_OF_ACCOUNT_SQL: &str = concat!(
    "SELECT ",
    tunnel_cols!(),
    " FROM tunnels WHERE id = $1 AND account_id = $2"
);
pub(crate) const TUNNEL_OF_ACCOUNT_TYPE_SQL: &str = concat!(
    "SELECT ",
    tunnel_cols!(),
    " FROM tunnels WHERE id = $1 AND account_id = $2 AND tun_type = $3"
);
pub(crate) const TUNNEL_BY_ID_SQL: &str =
    concat!("SELECT ", tunnel_cols!(), " FROM tunnels WHERE id = $1");
pub(crate) const CONFIG_SQL: &str = concat!(
    "SELECT ",
    config_cols!(),
    " FROM tunnel_configs WHERE tunnel_id = $1"
);

const SQLITE_MAX_CONNECTIONS: u32 = 8;
const PG_MAX_CONNECTIONS: u32 = 16;

/// Run on every new SQLite connection. WAL lets readers proceed beside the
/// writer; `synchronous=NORMAL` in WAL mode survives a process kill (only an
/// OS crash can lose the last commits). `journal_size_limit` truncates the WAL
/// file back to 64 MiB after a checkpoint that reset it (without it the file
/// keeps its largest size ever).
pub(crate) const SQLITE_PRAGMAS: &[&str] = &[
    "PRAGMA busy_timeout = 5000",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
    "PRAGMA journal_size_limit = 67108864",
];

/// Creates the database file's directory and the file itself with mode 0600
/// (or tightens an existing file to 0600); returns its absolute path.
fn prepare_sqlite_file(database_url: &str, raw: &Path) -> Result<PathBuf> {
    let io_err = |path: &Path, source: std::io::Error| StoreError::Io {
        path: path.display().to_string(),
        source,
    };
    let absolute = std::path::absolute(raw).map_err(|e| io_err(raw, e))?;
    let (Some(parent), Some(file_name)) = (absolute.parent(), absolute.file_name()) else {
        return Err(StoreError::UnsupportedUrl(database_url.to_owned()));
    };
    // Only directories created here get 0700; existing ones are left alone.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(|e| io_err(parent, e))?;
    // A canonical path keeps `..` and symlinks out of the URL handed to sqlx.
    let path = std::fs::canonicalize(parent)
        .map_err(|e| io_err(parent, e))?
        .join(file_name);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| io_err(&path, e))?;
        }
        Err(e) => return Err(io_err(&path, e)),
    }
    // SQLite gives the WAL and shared-memory files the main file's mode, but
    // ones left by an older, laxer setup keep theirs.
    for suffix in ["-wal", "-shm"] {
        let mut side = path.clone().into_os_string();
        side.push(suffix);
        match std::fs::set_permissions(&side, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(Path::new(&side), e)),
        }
    }
    Ok(path)
}

/// Percent-encodes everything but unreserved characters and `/`, so sqlx's
/// URL parsing hands SQLite exactly this path back.
fn percent_encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The statements of one tunnel list: the count, then the page.
pub(crate) struct TunnelListQuery {
    w: WhereBuilder,
    /// The table, with an index hint where the plan needs one.
    source: &'static str,
}

impl TunnelListQuery {
    pub(crate) fn count_sql(&self) -> String {
        format!(
            "SELECT COUNT(*) FROM {} WHERE {}",
            self.source, self.w.clause
        )
    }

    /// The page statement; adds its LIMIT and OFFSET to the arguments.
    pub(crate) fn page_sql(&mut self, limit: i64, offset: i64) -> String {
        let limit_n = self.w.arg(Arg::Int(limit));
        let offset_n = self.w.arg(Arg::Int(offset));
        // The page's ids first, then their rows. When the filters only name
        // indexed columns (the API's plain list of one type, or of all), the
        // rows skipped by OFFSET are read as entries of
        // `tunnels_account_type_created` or `tunnels_account_created` (both end
        // in `created_at, id`), not as table rows; otherwise this costs only
        // the page's primary-key probes more. One statement: one snapshot.
        format!(
            concat!(
                "SELECT ",
                tunnel_cols!(),
                " FROM tunnels WHERE id IN (SELECT id FROM {} WHERE {} \
                 ORDER BY created_at, id LIMIT ${} OFFSET ${}) ORDER BY created_at, id"
            ),
            self.source, self.w.clause, limit_n, offset_n
        )
    }

    /// Binds the arguments, in order.
    pub(crate) fn bind<'q>(
        &'q self,
        q: sqlx::query::Query<'q, Any, AnyArguments>,
    ) -> sqlx::query::Query<'q, Any, AnyArguments> {
        self.w.bind_all(q)
    }
}

/// A bind value of a dynamically built statement.
enum Arg {
    Text(String),
    Int(i64),
}

/// Accumulates `AND`-joined conditions with numbered placeholders and their
/// values, in order.
#[derive(Default)]
struct WhereBuilder {
    clause: String,
    args: Vec<Arg>,
}

impl WhereBuilder {
    /// Adds a value; returns its placeholder number.
    fn arg(&mut self, arg: Arg) -> usize {
        self.args.push(arg);
        self.args.len()
    }

    fn and(&mut self, condition: String) {
        if !self.clause.is_empty() {
            self.clause.push_str(" AND ");
        }
        self.clause.push_str(&condition);
    }

    fn bind_all<'q>(
        &'q self,
        mut q: sqlx::query::Query<'q, Any, AnyArguments>,
    ) -> sqlx::query::Query<'q, Any, AnyArguments> {
        for a in &self.args {
            q = match a {
                Arg::Text(s) => q.bind(s.as_str()),
                Arg::Int(i) => q.bind(*i),
            };
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    /// The plan of `sql` with `q`'s arguments, as one text.
    async fn plan(store: &Store, q: &TunnelListQuery, sql: &str) -> String {
        let details: Vec<String> = match store.backend {
            Backend::Sqlite => {
                let sql = format!("EXPLAIN QUERY PLAN {sql}");
                let rows = q
                    .bind(sqlx::query(AssertSqlSafe(sql)))
                    .fetch_all(&store.pool)
                    .await
                    .unwrap();
                rows.iter()
                    .map(|r| get(r, 3, "plan", "detail").unwrap())
                    .collect()
            }
            Backend::Postgres => {
                let mut tx = store.pool.begin().await.unwrap();
                // Test tables are a few pages: a sequential scan always wins
                // there. Which index serves is the question.
                sqlx::query("SET LOCAL enable_seqscan = off")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                let sql = format!("EXPLAIN {sql}");
                let rows = q
                    .bind(sqlx::query(AssertSqlSafe(sql)))
                    .fetch_all(&mut *tx)
                    .await
                    .unwrap();
                tx.rollback().await.unwrap();
                rows.iter()
                    .map(|r| get(r, 0, "plan", "line").unwrap())
                    .collect()
            }
        };
        details.join("\n")
    }

    async fn check_list_plans(store: &Store) {
        let account = store.create_account("a").await.unwrap();
        let other = store.create_account("b").await.unwrap();
        for (i, tun_type) in [TunType::CfdTunnel, TunType::WarpConnector]
            .into_iter()
            .cycle()
            .take(12)
            .enumerate()
        {
            for acc in [&account, &other] {
                store
                    .create_tunnel(NewTunnel {
                        account_id: acc.id.clone(),
                        name: format!("t{i}"),
                        tun_type,
                        config_src: ConfigSource::Local,
                        secret: vec![1; 32],
                        metadata: serde_json::json!({}),
                        ha: false,
                    })
                    .await
                    .unwrap();
            }
        }

        for tun_type in [TunType::CfdTunnel, TunType::WarpConnector] {
            let filter = TunnelFilter {
                tun_types: vec![tun_type],
                ..TunnelFilter::default()
            };
            let mut q = store.tunnel_list_query(&account.id, &filter);
            let count = plan(store, &q, &q.count_sql()).await;
            assert!(count.contains("tunnels_account_type_created"), "{count}");
            let page_sql = q.page_sql(100, 200);
            let page = plan(store, &q, &page_sql).await;
            assert!(page.contains("tunnels_account_type_created"), "{page}");
            if store.backend == Backend::Sqlite {
                // The count and the skipped rows are index entries only.
                assert!(
                    count.contains("COVERING INDEX tunnels_account_type_created"),
                    "{count}"
                );
                assert!(
                    page.contains("COVERING INDEX tunnels_account_type_created"),
                    "{page}"
                );
            }
            let page = store
                .list_tunnels(&account.id, &filter, 2, 2)
                .await
                .unwrap();
            assert_eq!(page.total_count, 6);
            assert_eq!(page.items.len(), 2);
            assert!(page.items.iter().all(|t| t.tun_type == tun_type));
        }

        if store.backend == Backend::Sqlite {
            // A name is probed, not searched for along the account's range.
            let filter = TunnelFilter {
                tun_types: vec![TunType::CfdTunnel],
                name: Some("t4".into()),
                ..TunnelFilter::default()
            };
            let mut q = store.tunnel_list_query(&account.id, &filter);
            let count = plan(store, &q, &q.count_sql()).await;
            assert!(count.contains("tunnels_account_name (account_id=? AND name=?)"));
            let page_sql = q.page_sql(100, 0);
            let page = plan(store, &q, &page_sql).await;
            assert!(page.contains("tunnels_account_name (account_id=? AND name=?)"));
            let page = store
                .list_tunnels(&account.id, &filter, 1, 100)
                .await
                .unwrap();
            assert_eq!(page.total_count, 1);
            assert_eq!(page.items[0].name, "t4");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_lists_use_the_account_type_index() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::open(&format!("sqlite://{}/plans.db", dir.path().display()))
            .await
            .unwrap();
        check_list_plans(&store).await;
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_lists_use_the_account_type_index() {
        let Ok(base) = std::env::var("CULVERT_TEST_POSTGRES_URL") else {
            eprintln!("skipped: CULVERT_TEST_POSTGRES_URL not set");
            return;
        };
        let (store, name) = testing::open_isolated_postgres(&base).await.unwrap();
        check_list_plans(&store).await;
        store.close().await;
        testing::drop_isolated_postgres(&base, &name).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_connection_settings() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::open(&format!("sqlite://{}/pragmas.db", dir.path().display()))
            .await
            .unwrap();
        assert!(!store.pool.options().get_test_before_acquire());
        // Every pool connection: hold them all at once so each is asked.
        let mut conns = Vec::new();
        for _ in 0..SQLITE_MAX_CONNECTIONS {
            conns.push(store.pool.acquire().await.unwrap());
        }
        for conn in &mut conns {
            let limit: i64 = sqlx::query_scalar("PRAGMA journal_size_limit")
                .fetch_one(&mut **conn)
                .await
                .unwrap();
            assert_eq!(limit, 64 * 1024 * 1024);
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut **conn)
                .await
                .unwrap();
            assert_eq!(mode, "wal");
        }
        drop(conns);
        store.close().await;
    }
}
