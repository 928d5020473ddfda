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
