//! The store's error type.

use uuid::Uuid;

/// Everything a store call can fail with. Each variant says whether trying
/// again later can help ([`StoreError::is_retryable`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A live tunnel of the same account already has this name.
    #[error("a live tunnel named {name:?} already exists")]
    NameConflict { name: String },
    /// The tunnel does not exist (or belongs to another account).
    #[error("tunnel {0} not found")]
    TunnelNotFound(Uuid),
    /// The account does not exist.
    #[error("account {0} not found")]
    AccountNotFound(String),
    /// The API credential does not exist.
    #[error("API token {0} not found")]
    TokenNotFound(String),
    /// The tunnel still has live connections and cascade was not asked for.
    #[error("tunnel {0} has active connections")]
    HasActiveConnections(Uuid),
    /// Another account already has a zone of this name.
    #[error("a zone named {0:?} already exists")]
    ZoneConflict(String),
    /// The hostname already routes to another tunnel (and overwrite was not asked for).
    #[error("{hostname} already routes to another tunnel")]
    RouteConflict { hostname: String },
    /// A database URL the store cannot use.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    /// Stored data that does not decode (a bug or a hand-edited database).
    #[error("corrupt stored value in {table}.{column}: {detail}")]
    Corrupt {
        table: &'static str,
        column: &'static str,
        detail: String,
    },
    /// Preparing the data directory or database file failed.
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The database itself failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// Whether the same call may succeed later without any change by the caller
    /// (lost connections, pool time-outs, busy SQLite).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Database(e) => {
                matches!(
                    e,
                    sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed
                ) || e
                    .as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|c| c == "5" || c == "517" || c == "40001" || c == "40P01")
            }
            _ => false,
        }
    }
}
