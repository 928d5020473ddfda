//! The SQLite fast read path for the hottest point reads (API credential
//! look-ups, tunnels by id, configurations).
//!
//! sqlx runs every SQLite statement on a per-connection worker thread and
//! pings the connection on release, so one point read costs several
//! cross-thread wake-ups (~150 µs of CPU) for ~10 µs of SQLite work. Here a
//! few read-only rusqlite connections on the same file each sit behind a
//! [`Mutex`]; a read takes a free one with `try_lock` (round robin) and runs a
//! cached prepared statement synchronously on the calling task's thread.
//!
//! Every read is its own autocommit read transaction on the WAL, begun after
//! the caller's previous writes committed, so it sees every committed write
//! at once (and holds no snapshot afterwards: the statement is reset before
//! the connection is released).
//!
//! The path never decides an outcome it is not sure of: when every reader is
//! in use, when SQLite fails (busy, locked, I/O, a closed store…), [`FastReads::read`]
//! answers `None` and the caller runs the ordinary sqlx query, whose answer or
//! error is the canonical one. `busy_timeout` is short so a runtime thread is
//! never held long. Rows decode through the same mappers as the sqlx path
//! (`codec.rs`), so values — and corruption errors — are the same.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, TryLockError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Row, ToSql};

use crate::store::Result;

/// Read-only connections kept open. More than the runtime's worker threads
/// only helps while one is stuck in `busy_timeout`.
const READERS: usize = 4;

/// How long a read waits on a lock before giving up and falling back
/// (readers of a WAL database only wait during recovery or a truncating
/// checkpoint).
const READER_BUSY_TIMEOUT: Duration = Duration::from_millis(20);

/// Statements each reader keeps prepared (the fast path uses five).
const STATEMENT_CACHE: usize = 16;

/// Named parameters of a statement (`$1`, `$2`, … as in the shared SQL text).
pub(crate) type Params<'a> = &'a [(&'a str, &'a dyn ToSql)];

pub(crate) struct FastReads {
    readers: Box<[Mutex<Option<Connection>>]>,
    next: AtomicUsize,
}

impl FastReads {
    /// Opens the readers on the database at `path` (which must exist, in WAL
    /// mode, with the schema in place). The error is only for the log.
    pub(crate) fn open(path: &Path) -> Result<Self, String> {
        let readers = (0..READERS)
            .map(|_| open_reader(path).map(|c| Mutex::new(Some(c))))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(FastReads {
            readers: readers.into_boxed_slice(),
            next: AtomicUsize::new(0),
        })
    }

    /// Closes every reader (waiting for reads in progress, which take
    /// microseconds); later reads answer `None`.
    pub(crate) fn close(&self) {
        for slot in &*self.readers {
            let conn = slot
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            drop(conn);
        }
    }

    /// Runs `read` on an idle reader. `None` means "ask the pool instead":
    /// every reader was in use, the store is closed, or SQLite failed.
    pub(crate) fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<Result<T>>,
    ) -> Option<Result<T>> {
        let n = self.readers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for k in 0..n {
            let slot = &self.readers[(start + k) % n];
            let guard = match slot.try_lock() {
                Ok(guard) => guard,
                Err(TryLockError::WouldBlock) => continue,
                // A panic during an earlier read: its statement was reset as
                // it unwound, so the connection is fine.
                Err(TryLockError::Poisoned(poisoned)) => {
                    slot.clear_poison();
                    poisoned.into_inner()
                }
            };
            let conn = guard.as_ref()?;
            return match read(conn) {
                Ok(answer) => Some(answer),
                Err(error) => {
                    tracing::debug!(%error, "SQLite fast read failed; using the pool");
                    None
                }
            };
        }
        None
    }
}

fn open_reader(path: &Path) -> Result<Connection, String> {
    // No SQLITE_OPEN_URI: the path is absolute and taken literally. The
    // connection mutex is off because ours serialises use.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    conn.busy_timeout(READER_BUSY_TIMEOUT)
        .map_err(|e| e.to_string())?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // Outside WAL a reader's shared lock would hold up the writer's commits.
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("journal_mode is {mode}, not wal"));
    }
    Ok(conn)
}

/// Runs the cached statement `sql` and maps its first row, if any. The
/// statement is reset before returning, which ends the read transaction.
pub(crate) fn query_one<T>(
    conn: &Connection,
    sql: &str,
    params: Params<'_>,
    map: impl FnOnce(&Row<'_>) -> Result<T>,
) -> rusqlite::Result<Result<Option<T>>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    Ok(match rows.next()? {
        Some(row) => map(row).map(Some),
        None => Ok(None),
    })
}

#[cfg(test)]
mod tests {
    //! The fast path against the sqlx path: same rows, same answers, and
    //! every committed write visible at once.

    use std::fmt::Debug;
    use std::path::PathBuf;

    use serde_json::json;
    use tempfile::TempDir;
    use uuid::Uuid;

    use super::*;
    use crate::codec::*;
    use crate::error::StoreError;
    use crate::model::*;
    use crate::store::Store;

    async fn sqlite_store() -> (TempDir, Store, PathBuf) {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("fast.db");
        let store = Store::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        assert!(store.fast.is_some(), "the fast readers opened");
        (dir, store, path)
    }

    /// The value of a fast read that must have answered without error.
    fn answered<T>(answer: Option<Result<Option<T>>>) -> Option<T> {
        answer
            .expect("the fast path answered")
            .expect("the fast read succeeded")
    }

    /// Asserts that the fast path answered exactly what the pool answered.
    fn same<T: PartialEq + Debug>(fast: Option<Result<Option<T>>>, pool: Result<Option<T>>) {
        let fast = answered(fast);
        assert_eq!(fast, pool.expect("the pool read succeeded"));
    }

    fn token(account: &Account, hash_byte: u8) -> ApiToken {
        ApiToken {
            id: Uuid::new_v4().simple().to_string(),
            account_id: account.id.clone(),
            name: format!("token {hash_byte}"),
            kind: CredentialKind::ApiToken,
            email: None,
            secret_hash: vec![hash_byte; 32],
            permissions: vec!["Cloudflare Tunnel Write".into()],
            created_at: now_micros(),
            expires_on: None,
            not_before: None,
            revoked_at: None,
        }
    }

    fn new_tunnel(account: &Account, name: &str, tun_type: TunType) -> NewTunnel {
        NewTunnel {
            account_id: account.id.clone(),
            name: name.to_owned(),
            tun_type,
            config_src: ConfigSource::Local,
            secret: (0..32).collect(),
            metadata: json!({}),
            ha: false,
        }
    }

    fn registration(tunnel: Uuid, connector: Uuid, index: u8) -> Registration {
        Registration {
            connector: ConnectorInfo {
                connector_id: connector,
                arch: "linux_amd64".into(),
                version: "2024.1.0".into(),
                features: vec!["serialized_headers".into()],
                run_at: 1_700_000_000_000_000,
            },
            connection: ConnectionInfo {
                id: Uuid::new_v4(),
                tunnel_id: tunnel,
                connector_id: connector,
                conn_index: index,
                colo_name: "colo".into(),
                origin_ip: "198.51.100.7".into(),
                opened_at: now_micros(),
                edge_node: "edge-1".into(),
            },
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fast_reads_see_committed_writes_at_once() {
        let (_dir, store, _) = sqlite_store().await;
        let account = store.create_account("a").await.unwrap();
        for i in 0..40u8 {
            // Credentials: created, then revoked.
            let tok = token(&account, i);
            let hash = hex_encode(&tok.secret_hash);
            assert_eq!(answered(store.fast_token_by_hash(&hash)), None);
            store.create_api_token(&tok).await.unwrap();
            assert_eq!(answered(store.fast_token_by_hash(&hash)), Some(tok.clone()));
            store.revoke_api_token(&tok.id).await.unwrap();
            let revoked = answered(store.fast_token_by_hash(&hash)).unwrap();
            assert!(revoked.revoked_at.is_some());

            // Tunnels: created, renamed, configured, connected, deleted.
            let t = store
                .create_tunnel(new_tunnel(&account, &format!("t{i}"), TunType::CfdTunnel))
                .await
                .unwrap();
            let id = uuid_text(t.id);
            assert_eq!(answered(store.fast_tunnel_by_id(&id)), Some(t.clone()));
            assert_eq!(
                answered(store.fast_get_tunnel(&account.id, Some(TunType::CfdTunnel), &id)),
                Some(t.clone())
            );
            let patch = TunnelPatch {
                name: Some(format!("renamed{i}")),
                ..TunnelPatch::default()
            };
            let renamed = store
                .update_tunnel(&account.id, TunType::CfdTunnel, t.id, patch)
                .await
                .unwrap();
            assert_eq!(
                answered(store.fast_get_tunnel(&account.id, None, &id)),
                Some(renamed)
            );

            assert_eq!(answered(store.fast_get_config(&id)), None);
            let c1 = store
                .put_config(&account.id, t.id, &json!({"v": 1}), ConfigSource::Local)
                .await
                .unwrap();
            assert_eq!(answered(store.fast_get_config(&id)), Some(c1));
            let c2 = store
                .put_config(
                    &account.id,
                    t.id,
                    &json!({"v": 2}),
                    ConfigSource::Cloudflare,
                )
                .await
                .unwrap();
            assert_eq!(c2.version, 2);
            assert_eq!(answered(store.fast_get_config(&id)), Some(c2));
            let remote = answered(store.fast_tunnel_by_id(&id)).unwrap();
            assert_eq!(remote.config_src, ConfigSource::Cloudflare);

            store
                .register_connection(&registration(t.id, Uuid::new_v4(), 0))
                .await
                .unwrap();
            let connected = answered(store.fast_tunnel_by_id(&id)).unwrap();
            assert_eq!(connected.status, TunnelStatus::Degraded);
            assert!(connected.conns_active_at.is_some());

            let (deleted, _) = store
                .delete_tunnel(&account.id, TunType::CfdTunnel, t.id, true)
                .await
                .unwrap();
            assert!(deleted.deleted_at.is_some());
            assert_eq!(answered(store.fast_tunnel_by_id(&id)), Some(deleted));
        }
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_open_on_odd_paths() {
        let dir = TempDir::new().unwrap();
        for name in ["sp ace/100%/x#y.db", "we ird%20#dir/file:d&a=1.db"] {
            let path = dir.path().join(name);
            let store = Store::open(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            assert!(store.fast.is_some(), "{name}");
            let account = store.create_account("a").await.unwrap();
            let t = store
                .create_tunnel(new_tunnel(&account, "t", TunType::CfdTunnel))
                .await
                .unwrap();
            assert_eq!(answered(store.fast_tunnel_by_id(&uuid_text(t.id))), Some(t));
            store.close().await;
            assert!(path.exists(), "{name}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fast_and_pool_paths_agree() {
        let (_dir, store, _) = sqlite_store().await;
        let a = store.create_account("a").await.unwrap();
        let b = store.create_account("b").await.unwrap();
        let now = now_micros();

        // Credentials in every state, plus a global key whose hash must not
        // match a bearer look-up.
        let mut tokens = vec![token(&a, 1)];
        let mut expired = token(&a, 2);
        expired.expires_on = Some(now - 1_000_000);
        tokens.push(expired);
        let mut early = token(&a, 3);
        early.not_before = Some(now + 3_600_000_000);
        early.expires_on = Some(now + 7_200_000_000);
        tokens.push(early);
        let mut bare = token(&b, 4);
        bare.permissions = Vec::new();
        bare.email = Some("ops@example.com".into());
        tokens.push(bare);
        let revoked = token(&a, 5);
        tokens.push(revoked.clone());
        let mut global = token(&a, 6);
        global.kind = CredentialKind::GlobalKey;
        global.email = Some("admin@example.com".into());
        tokens.push(global);
        for t in &tokens {
            store.create_api_token(t).await.unwrap();
        }
        store.revoke_api_token(&revoked.id).await.unwrap();
        for hash_byte in 0..8u8 {
            let hash = hex_encode(&[hash_byte; 32]);
            same(
                store.fast_token_by_hash(&hash),
                store.pool_token_by_hash(&hash).await,
            );
        }
        assert_eq!(
            answered(store.fast_token_by_hash(&hex_encode(&[6; 32]))),
            None
        );

        // Tunnels: fresh (NULL activity), WARP with ha and rich metadata,
        // connected, deleted, configured locally and remotely.
        let fresh = store
            .create_tunnel(new_tunnel(&a, "fresh", TunType::CfdTunnel))
            .await
            .unwrap();
        let mut warp = new_tunnel(&a, "warp", TunType::WarpConnector);
        warp.ha = true;
        warp.metadata = json!({"k": [1, "é ✓", null, 1.5, true], "nested": {"x": {}}});
        let warp = store.create_tunnel(warp).await.unwrap();
        let connected = store
            .create_tunnel(new_tunnel(&b, "connected", TunType::CfdTunnel))
            .await
            .unwrap();
        let connector = Uuid::new_v4();
        for i in 0..4 {
            store
                .register_connection(&registration(connected.id, connector, i))
                .await
                .unwrap();
        }
        let deleted = store
            .create_tunnel(new_tunnel(&a, "deleted", TunType::CfdTunnel))
            .await
            .unwrap();
        store
            .delete_tunnel(&a.id, TunType::CfdTunnel, deleted.id, false)
            .await
            .unwrap();
        let down = store
            .create_tunnel(new_tunnel(&a, "down", TunType::CfdTunnel))
            .await
            .unwrap();
        let reg = registration(down.id, Uuid::new_v4(), 0);
        store.register_connection(&reg).await.unwrap();
        store
            .unregister_connection(reg.connection.id)
            .await
            .unwrap();
        store
            .put_config(
                &a.id,
                fresh.id,
                &json!({"ingress": []}),
                ConfigSource::Local,
            )
            .await
            .unwrap();
        store
            .put_config(
                &b.id,
                connected.id,
                &json!({"x": "ü"}),
                ConfigSource::Cloudflare,
            )
            .await
            .unwrap();

        let ids = [
            fresh.id,
            warp.id,
            connected.id,
            deleted.id,
            down.id,
            Uuid::new_v4(),
        ];
        for id in ids {
            let id = uuid_text(id);
            same(
                store.fast_tunnel_by_id(&id),
                store.pool_tunnel_by_id(&id).await,
            );
            same(store.fast_get_config(&id), store.pool_get_config(&id).await);
            for account in [&a.id, &b.id] {
                for tun_type in [None, Some(TunType::CfdTunnel), Some(TunType::WarpConnector)] {
                    same(
                        store.fast_get_tunnel(account, tun_type, &id),
                        store.pool_get_tunnel(account, tun_type, &id).await,
                    );
                }
            }
        }
        // The states above really are there.
        let seen = |id: Uuid| answered(store.fast_tunnel_by_id(&uuid_text(id))).unwrap();
        assert!(seen(fresh.id).conns_active_at.is_none());
        assert!(seen(warp.id).ha);
        assert_eq!(seen(connected.id).status, TunnelStatus::Healthy);
        assert!(seen(deleted.id).deleted_at.is_some());
        assert_eq!(seen(down.id).status, TunnelStatus::Down);
        store.close().await;
    }

    /// The table and column of a corruption error, or the error itself.
    fn corrupt_column<T: Debug>(r: Result<T>) -> (&'static str, &'static str) {
        match r {
            Err(StoreError::Corrupt { table, column, .. }) => (table, column),
            other => panic!("expected a corruption error, got {other:?}"),
        }
    }

    /// Decodes one literal row through both row types with the same mapper.
    async fn both<T: PartialEq + Debug>(
        store: &Store,
        sql: &str,
        map: fn(&dyn Columns) -> Result<T>,
    ) -> (Result<T>, Result<T>) {
        let fast = store
            .fast
            .as_ref()
            .unwrap()
            .read(|c| query_one(c, sql, &[], |r| map(r)))
            .expect("the fast path answered")
            .map(Option::unwrap);
        let pool = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&store.pool)
            .await
            .map_err(StoreError::from)
            .and_then(|row| map(&row));
        (fast, pool)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fast_and_pool_paths_reject_the_same_values() {
        let (_dir, store, _) = sqlite_store().await;
        // A valid tunnel row as literals, then each column replaced by values
        // of the wrong storage class (NULL, BLOB, REAL, TEXT in an integer
        // column) or text that does not parse.
        let good: [&str; 13] = [
            "'5f0d3a6e-6c1b-4c7e-9a53-0d7c6f1e2b3a'",
            "'acc'",
            "'name'",
            "'cfd_tunnel'",
            "'local'",
            "'00ff'",
            "'{\"a\": [1, null]}'",
            "1700000000000000",
            "NULL",
            "NULL",
            "1700000000000001",
            "'inactive'",
            "1",
        ];
        let columns = [
            "id",
            "account_id",
            "name",
            "tun_type",
            "config_src",
            "secret",
            "metadata",
            "created_at",
            "deleted_at",
            "conns_active_at",
            "conns_inactive_at",
            "status",
            "ha",
        ];
        let sql = |i: usize, value: &str| {
            let mut cols = good.map(str::to_owned);
            cols[i] = value.to_owned();
            format!("SELECT {}", cols.join(", "))
        };
        let map: fn(&dyn Columns) -> Result<Tunnel> = |r| tunnel_from_row(r);

        let (fast, pool) = both(&store, &sql(0, good[0]), map).await;
        assert_eq!(fast.unwrap(), pool.unwrap());
        // Nullable columns take NULL and integers alike.
        for i in [8, 9, 10] {
            let (fast, pool) = both(&store, &sql(i, "42"), map).await;
            assert_eq!(fast.unwrap(), pool.unwrap());
        }
        let text_columns = [0, 1, 2, 3, 4, 5, 6, 11];
        let int_columns = [7, 12];
        let mut cases: Vec<(usize, &str)> = Vec::new();
        for i in text_columns {
            cases.extend([(i, "NULL"), (i, "X'6869'"), (i, "1.5"), (i, "7")]);
        }
        for i in int_columns {
            cases.extend([(i, "NULL"), (i, "X'01'"), (i, "0.5"), (i, "'12'")]);
        }
        for i in [8, 9, 10] {
            cases.extend([(i, "X'01'"), (i, "2.5"), (i, "'soon'")]);
        }
        cases.extend([
            (0, "'not-a-uuid'"),
            (3, "'ip_sec'"),
            (4, "'elsewhere'"),
            (5, "'xyz'"),
            (5, "'abc'"),
            (6, "'{not json'"),
            (11, "'sleepy'"),
        ]);
        for (i, value) in cases {
            let (fast, pool) = both(&store, &sql(i, value), map).await;
            let expected = ("tunnels", columns[i]);
            assert_eq!(
                corrupt_column(pool),
                expected,
                "pool, {} = {value}",
                columns[i]
            );
            assert_eq!(
                corrupt_column(fast),
                expected,
                "fast, {} = {value}",
                columns[i]
            );
        }

        // Text that is not UTF-8 fails both ways, as no retry can fix: sqlx
        // already while converting the row (a decode error), the fast path
        // as corruption of the column.
        let (fast, pool) = both(&store, &sql(2, "CAST(X'FF' AS TEXT)"), map).await;
        assert_eq!(corrupt_column(fast), ("tunnels", "name"));
        let pool = pool.unwrap_err();
        assert!(
            matches!(pool, StoreError::Database(sqlx::Error::Decode(_))),
            "{pool:?}"
        );
        assert!(!pool.is_retryable());

        // Tokens: an unknown kind, and a NULL where the email may be NULL.
        let token_sql = |kind: &str, email: &str| {
            format!(
                "SELECT 'id', 'acc', 'n', {kind}, {email}, '0a', '[\"p\"]', 1, NULL, NULL, NULL"
            )
        };
        let map: fn(&dyn Columns) -> Result<ApiToken> = |r| token_from_row(r);
        let (fast, pool) = both(&store, &token_sql("'api_token'", "NULL"), map).await;
        assert_eq!(fast.unwrap(), pool.unwrap());
        for (kind, email, column) in [
            ("'bearer'", "NULL", "kind"),
            ("'api_token'", "X'00'", "email"),
            ("NULL", "NULL", "kind"),
        ] {
            let (fast, pool) = both(&store, &token_sql(kind, email), map).await;
            assert_eq!(corrupt_column(pool), ("api_tokens", column));
            assert_eq!(corrupt_column(fast), ("api_tokens", column));
        }

        // Configurations: a non-integer version.
        let map: fn(&dyn Columns) -> Result<TunnelConfig> = |r| config_from_row(r);
        let config_sql = |version: &str| {
            format!(
                "SELECT '5f0d3a6e-6c1b-4c7e-9a53-0d7c6f1e2b3a', 'acc', {version}, '{{}}', \
                 'cloudflare', 5"
            )
        };
        let (fast, pool) = both(&store, &config_sql("3"), map).await;
        assert_eq!(fast.unwrap(), pool.unwrap());
        let (fast, pool) = both(&store, &config_sql("'3'"), map).await;
        assert_eq!(corrupt_column(pool), ("tunnel_configs", "version"));
        assert_eq!(corrupt_column(fast), ("tunnel_configs", "version"));
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_stored_rows_fail_alike() {
        let (_dir, store, path) = sqlite_store().await;
        let account = store.create_account("a").await.unwrap();
        let t = store
            .create_tunnel(new_tunnel(&account, "t", TunType::CfdTunnel))
            .await
            .unwrap();
        let editor = rusqlite::Connection::open(&path).unwrap();
        editor.busy_timeout(Duration::from_secs(5)).unwrap();
        let id = uuid_text(t.id);
        editor
            .execute("UPDATE tunnels SET ha = 0.5 WHERE id = ?1", [&id])
            .unwrap();
        let fast = store
            .fast_tunnel_by_id(&id)
            .expect("the fast path answered");
        assert_eq!(corrupt_column(fast), ("tunnels", "ha"));
        assert_eq!(
            corrupt_column(store.pool_tunnel_by_id(&id).await),
            ("tunnels", "ha")
        );
        assert_eq!(
            corrupt_column(store.get_tunnel(&account.id, None, t.id).await),
            ("tunnels", "ha")
        );
        drop(editor);
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn falls_back_to_the_pool() {
        let (_dir, store, _) = sqlite_store().await;
        let account = store.create_account("a").await.unwrap();
        let t = store
            .create_tunnel(new_tunnel(&account, "t", TunType::CfdTunnel))
            .await
            .unwrap();
        let id = uuid_text(t.id);
        let fast = store.fast.clone().unwrap();

        // Every reader busy: the fast path declines, the pool answers.
        {
            let _held: Vec<_> = fast.readers.iter().map(|m| m.lock().unwrap()).collect();
            assert!(store.fast_tunnel_by_id(&id).is_none());
            let got = store.get_tunnel(&account.id, None, t.id).await.unwrap();
            assert_eq!(got, Some(t.clone()));
        }
        assert!(store.fast_tunnel_by_id(&id).is_some());

        // SQLite failures (busy, locked, anything) decline too.
        for code in [rusqlite::ffi::SQLITE_BUSY, rusqlite::ffi::SQLITE_LOCKED] {
            let failure = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
            assert!(fast.read(|_| Err::<Result<()>, _>(failure)).is_none());
        }

        // A panic during a read poisons its reader's mutex, not the path.
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fast.read(|c| -> rusqlite::Result<Result<()>> {
                let _stmt = c.prepare_cached(crate::store::TUNNEL_BY_ID_SQL)?;
                panic!("boom")
            })
        }));
        assert!(panicked.is_err());
        for _ in 0..READERS * 2 {
            assert_eq!(answered(store.fast_tunnel_by_id(&id)), Some(t.clone()));
        }

        // After close the readers are gone and the pool reports the closing.
        store.close().await;
        assert!(store.fast_tunnel_by_id(&id).is_none());
        assert!(store.get_tunnel_by_id(t.id).await.is_err());
    }
}
