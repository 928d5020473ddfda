//! Test support: throw-away PostgreSQL databases, so tests running in
//! parallel (here and in other crates) never see each other's rows.

use sqlx::AnyConnection;
use sqlx::Connection;

use crate::error::StoreError;
use crate::store::{Result, Store};

/// Creates a fresh database `culvert_test_<random>` on the server of
/// `base_url` (any database there the user may connect to) and opens a
/// [`Store`] on it. Returns the store and the database name, for
/// [`drop_isolated_postgres`].
pub async fn open_isolated_postgres(base_url: &str) -> Result<(Store, String)> {
    let name = create_isolated_postgres(base_url).await?;
    let url = database_url(base_url, &name)?;
    match Store::open(&url).await {
        Ok(store) => Ok((store, name)),
        Err(e) => {
            // Best effort: do not leave the database behind.
            let _ = drop_isolated_postgres(base_url, &name).await;
            Err(e)
        }
    }
}

/// Creates an empty database `culvert_test_<random>` on the server of
/// `base_url` and returns its name (its URL is [`database_url`]).
pub async fn create_isolated_postgres(base_url: &str) -> Result<String> {
    let name = format!("culvert_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::any::install_default_drivers();
    let mut conn = AnyConnection::connect(base_url).await?;
    // The name is generated above, never user input.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(name)
}

/// The URL of database `name` on the server of `base_url`.
pub fn database_url(base_url: &str, name: &str) -> Result<String> {
    let mut url =
        url::Url::parse(base_url).map_err(|_| StoreError::UnsupportedUrl(base_url.to_owned()))?;
    url.set_path(&format!("/{name}"));
    Ok(url.into())
}

/// Drops a database made by [`open_isolated_postgres`], disconnecting whoever
/// still uses it. Close the store first when you can.
pub async fn drop_isolated_postgres(base_url: &str, name: &str) -> Result<()> {
    if !name.starts_with("culvert_test_")
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(StoreError::UnsupportedUrl(name.to_owned()));
    }
    sqlx::any::install_default_drivers();
    let mut conn = AnyConnection::connect(base_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    Ok(())
}
