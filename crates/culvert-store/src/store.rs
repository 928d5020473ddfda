//! The [`Store`] handle: opening, migrations, accounts, credentials, tunnels and
//! configurations. The connection registry lives in `registry.rs`.

use uuid::Uuid;

use crate::error::StoreError;
use crate::model::*;

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
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl Store {
    /// Opens `sqlite://PATH` (the file is created with mode 0600, WAL journal)
    /// or `postgres://…`, and brings the schema up to date.
    pub async fn open(database_url: &str) -> Result<Self> {
        unimplemented!("{database_url}")
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Cheap liveness probe (`SELECT 1`).
    pub async fn ping(&self) -> Result<()> {
        unimplemented!()
    }

    /// Closes the pool, waiting for checked-out connections.
    pub async fn close(&self) {
        self.pool.close().await
    }

    // ---- accounts -------------------------------------------------------

    /// Creates an account with a fresh 32-hex id.
    pub async fn create_account(&self, name: &str) -> Result<Account> {
        unimplemented!("{name}")
    }

    pub async fn get_account(&self, id: &str) -> Result<Option<Account>> {
        unimplemented!("{id}")
    }

    pub async fn list_accounts(&self) -> Result<Vec<Account>> {
        unimplemented!()
    }

    // ---- settings (key material, bootstrap markers) ---------------------

    pub async fn get_setting(&self, key: &str) -> Result<Option<String>> {
        unimplemented!("{key}")
    }

    /// Stores `value` under `key` unless a value is already there; returns the
    /// value that is stored afterwards (so concurrent first starts agree).
    pub async fn put_setting_if_absent(&self, key: &str, value: &str) -> Result<String> {
        unimplemented!("{key}{value}")
    }

    // ---- API credentials ------------------------------------------------

    pub async fn create_api_token(&self, token: &ApiToken) -> Result<()> {
        unimplemented!("{token:?}")
    }

    /// Looks a bearer token up by the SHA-256 of its secret. Revoked tokens are
    /// returned too (the caller decides); only `ApiToken` kind rows match.
    pub async fn find_api_token_by_hash(&self, secret_hash: &[u8]) -> Result<Option<ApiToken>> {
        unimplemented!("{secret_hash:?}")
    }

    /// Global keys registered for an `X-Auth-Email` (the caller compares the
    /// key hash in constant time).
    pub async fn find_global_keys(&self, email: &str) -> Result<Vec<ApiToken>> {
        unimplemented!("{email}")
    }

    pub async fn list_api_tokens(&self) -> Result<Vec<ApiToken>> {
        unimplemented!()
    }

    /// Sets `revoked_at`; [`StoreError::TokenNotFound`] for an unknown id.
    pub async fn revoke_api_token(&self, id: &str) -> Result<()> {
        unimplemented!("{id}")
    }

    // ---- tunnels ----------------------------------------------------------

    /// Creates a tunnel: `status = inactive`, `conns_inactive_at = created_at`.
    /// [`StoreError::NameConflict`] when a live tunnel of the same account and
    /// type has the name (enforced by a unique index, so races are safe).
    pub async fn create_tunnel(&self, new: NewTunnel) -> Result<Tunnel> {
        unimplemented!("{new:?}")
    }

    /// A tunnel of the account (deleted ones too). `tun_type = Some(t)` also
    /// requires that type.
    pub async fn get_tunnel(
        &self,
        account_id: &str,
        tun_type: Option<TunType>,
        id: Uuid,
    ) -> Result<Option<Tunnel>> {
        unimplemented!("{account_id}{tun_type:?}{id}")
    }

    /// A tunnel by id alone (the edge's lookup at registration).
    pub async fn get_tunnel_by_id(&self, id: Uuid) -> Result<Option<Tunnel>> {
        unimplemented!("{id}")
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
        unimplemented!("{account_id}{filter:?}{page}{per_page}")
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
        unimplemented!("{account_id}{tun_type:?}{id}{patch:?}")
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
        unimplemented!("{account_id}{tun_type:?}{id}{cascade}")
    }

    // ---- configurations ---------------------------------------------------

    pub async fn get_config(&self, tunnel_id: Uuid) -> Result<Option<TunnelConfig>> {
        unimplemented!("{tunnel_id}")
    }

    /// Replaces the configuration; the version is the previous one + 1 (the
    /// first is 1) and is never reused.
    pub async fn put_config(
        &self,
        account_id: &str,
        tunnel_id: Uuid,
        config: &serde_json::Value,
        source: ConfigSource,
    ) -> Result<TunnelConfig> {
        unimplemented!("{account_id}{tunnel_id}{config}{source:?}")
    }
}
