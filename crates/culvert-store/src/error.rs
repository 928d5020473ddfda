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
    ///
    /// The pools do not test a connection before handing it out, so a
    /// connection that died while idle fails the statement that uses it: with
    /// an I/O error, or on PostgreSQL with the FATAL error the server sent
    /// before hanging up (`57P01` when an administrator or a shutdown ended
    /// the session). Both count here; the pool drops such a connection.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Database(e) => {
                matches!(
                    e,
                    sqlx::Error::PoolTimedOut
                        | sqlx::Error::Io(_)
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::WorkerCrashed
                ) || e
                    .as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|c| RETRYABLE_CODES.contains(&c.as_ref()))
            }
            _ => false,
        }
    }
}

/// Database error codes a retry can get past: SQLite's `SQLITE_BUSY` and
/// `SQLITE_BUSY_SNAPSHOT`; PostgreSQL's serialization failure and deadlock,
/// a session ended by an administrator, a crash or a shutdown (`57P01`,
/// `57P02`), a server that cannot take connections yet (`57P03`), and the
/// connection exceptions of class `08`.
const RETRYABLE_CODES: &[&str] = &[
    "5", "517", "40001", "40P01", "57P01", "57P02", "57P03", "08000", "08001", "08003", "08004",
    "08006",
];

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    /// A database error with just a code, as either driver reports it.
    #[derive(Debug)]
    struct Coded(&'static str);

    impl std::fmt::Display for Coded {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "error {}", self.0)
        }
    }

    impl std::error::Error for Coded {}

    impl sqlx::error::DatabaseError for Coded {
        fn message(&self) -> &str {
            self.0
        }

        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }

        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }

        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }

        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }

        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn coded(code: &'static str) -> StoreError {
        StoreError::Database(sqlx::Error::Database(Box::new(Coded(code))))
    }

    #[test]
    fn retryable_errors() {
        for code in ["5", "517", "40001", "40P01", "57P01", "57P02", "08006"] {
            assert!(coded(code).is_retryable(), "{code}");
        }
        for code in ["19", "2067", "23505", "23503", "42P01", "57014"] {
            assert!(!coded(code).is_retryable(), "{code}");
        }
        let dead = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert!(StoreError::Database(sqlx::Error::Io(dead)).is_retryable());
        assert!(StoreError::Database(sqlx::Error::WorkerCrashed).is_retryable());
        assert!(StoreError::Database(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(!StoreError::Database(sqlx::Error::RowNotFound).is_retryable());
        assert!(!StoreError::TokenNotFound("x".into()).is_retryable());
    }
}
