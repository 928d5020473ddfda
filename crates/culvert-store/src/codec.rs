//! Conversions between model types and the text/integer columns both backends
//! share, and the mapping of database errors onto [`StoreError`].

use rusqlite::types::ValueRef;
use sqlx::any::AnyRow;
use sqlx::{Any, Decode, Row, Type};
use uuid::Uuid;

use crate::error::StoreError;
use crate::model::*;
use crate::store::Result;

/// Lowercase hex of `bytes`.
pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// Inverse of [`hex_encode`] (either case); `None` for anything else.
pub(crate) fn hex_decode(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// Lowercase hyphenated text of a UUID, the stored form.
pub(crate) fn uuid_text(id: Uuid) -> String {
    let mut buf = Uuid::encode_buffer();
    id.hyphenated().encode_lower(&mut buf).to_owned()
}

pub(crate) fn corrupt(
    table: &'static str,
    column: &'static str,
    detail: impl std::fmt::Display,
) -> StoreError {
    StoreError::Corrupt {
        table,
        column,
        detail: detail.to_string(),
    }
}

/// Column `idx` of `row`; a type mismatch or unexpected NULL is corruption.
pub(crate) fn get<'r, T>(
    row: &'r AnyRow,
    idx: usize,
    table: &'static str,
    column: &'static str,
) -> Result<T>
where
    T: Decode<'r, Any> + Type<Any>,
{
    row.try_get(idx).map_err(|e| corrupt(table, column, e))
}

pub(crate) fn get_uuid(
    row: &(impl Columns + ?Sized),
    idx: usize,
    table: &'static str,
    column: &'static str,
) -> Result<Uuid> {
    let s = row.text(idx, table, column)?;
    Uuid::parse_str(s).map_err(|e| corrupt(table, column, e))
}

pub(crate) fn get_json(
    row: &(impl Columns + ?Sized),
    idx: usize,
    table: &'static str,
    column: &'static str,
) -> Result<serde_json::Value> {
    let s = row.text(idx, table, column)?;
    serde_json::from_str(s).map_err(|e| corrupt(table, column, e))
}

pub(crate) fn get_string_list(
    row: &(impl Columns + ?Sized),
    idx: usize,
    table: &'static str,
    column: &'static str,
) -> Result<Vec<String>> {
    let s = row.text(idx, table, column)?;
    serde_json::from_str(s).map_err(|e| corrupt(table, column, e))
}

pub(crate) fn get_hex(
    row: &(impl Columns + ?Sized),
    idx: usize,
    table: &'static str,
    column: &'static str,
) -> Result<Vec<u8>> {
    let s = row.text(idx, table, column)?;
    hex_decode(s).ok_or_else(|| corrupt(table, column, "not a hex string"))
}

// ---- typed column access ------------------------------------------------

/// Typed access to the columns of a result row, for the row mappers below.
/// Implemented for sqlx's [`AnyRow`] (both backends) and for
/// [`rusqlite::Row`] (the SQLite fast read path, `fast.rs`), so one mapper
/// decodes both and applies the same checks: a NULL where a value is
/// required, or a value of another storage class (a BLOB or REAL where TEXT
/// or an integer belongs, text in an integer column), is
/// [`StoreError::Corrupt`] for the column either way.
pub(crate) trait Columns {
    /// A non-NULL TEXT value.
    fn text(&self, idx: usize, table: &'static str, column: &'static str) -> Result<&str>;
    /// A TEXT value or NULL.
    fn opt_text(
        &self,
        idx: usize,
        table: &'static str,
        column: &'static str,
    ) -> Result<Option<String>>;
    /// A non-NULL integer.
    fn int(&self, idx: usize, table: &'static str, column: &'static str) -> Result<i64>;
    /// An integer or NULL.
    fn opt_int(&self, idx: usize, table: &'static str, column: &'static str)
    -> Result<Option<i64>>;
}

impl Columns for AnyRow {
    fn text(&self, idx: usize, table: &'static str, column: &'static str) -> Result<&str> {
        get(self, idx, table, column)
    }

    fn opt_text(
        &self,
        idx: usize,
        table: &'static str,
        column: &'static str,
    ) -> Result<Option<String>> {
        get(self, idx, table, column)
    }

    fn int(&self, idx: usize, table: &'static str, column: &'static str) -> Result<i64> {
        get(self, idx, table, column)
    }

    fn opt_int(
        &self,
        idx: usize,
        table: &'static str,
        column: &'static str,
    ) -> Result<Option<i64>> {
        get(self, idx, table, column)
    }
}

/// The storage class of a SQLite value, for corruption messages.
fn storage_class(v: ValueRef<'_>) -> &'static str {
    match v {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "INTEGER",
        ValueRef::Real(_) => "REAL",
        ValueRef::Text(_) => "TEXT",
        ValueRef::Blob(_) => "BLOB",
    }
}

/// Column `idx` of a rusqlite row; an index out of range is corruption too
/// (it cannot happen with the shared column lists).
fn value_ref<'a>(
    row: &'a rusqlite::Row<'_>,
    idx: usize,
    table: &'static str,
    column: &'static str,
) -> Result<ValueRef<'a>> {
    row.get_ref(idx).map_err(|e| corrupt(table, column, e))
}

/// The text of a TEXT value (UTF-8, as sqlx requires).
fn lite_text<'a>(
    v: ValueRef<'a>,
    table: &'static str,
    column: &'static str,
) -> Result<Option<&'a str>> {
    match v {
        ValueRef::Null => Ok(None),
        ValueRef::Text(bytes) => std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|e| corrupt(table, column, e)),
        other => Err(corrupt(
            table,
            column,
            format!("expected TEXT, found {}", storage_class(other)),
        )),
    }
}

fn lite_int(v: ValueRef<'_>, table: &'static str, column: &'static str) -> Result<Option<i64>> {
    match v {
        ValueRef::Null => Ok(None),
        ValueRef::Integer(i) => Ok(Some(i)),
        other => Err(corrupt(
            table,
            column,
            format!("expected INTEGER, found {}", storage_class(other)),
        )),
    }
}

impl Columns for rusqlite::Row<'_> {
    fn text(&self, idx: usize, table: &'static str, column: &'static str) -> Result<&str> {
        lite_text(value_ref(self, idx, table, column)?, table, column)?
            .ok_or_else(|| corrupt(table, column, "unexpected NULL"))
    }

    fn opt_text(
        &self,
        idx: usize,
        table: &'static str,
        column: &'static str,
    ) -> Result<Option<String>> {
        Ok(lite_text(value_ref(self, idx, table, column)?, table, column)?.map(str::to_owned))
    }

    fn int(&self, idx: usize, table: &'static str, column: &'static str) -> Result<i64> {
        lite_int(value_ref(self, idx, table, column)?, table, column)?
            .ok_or_else(|| corrupt(table, column, "unexpected NULL"))
    }

    fn opt_int(
        &self,
        idx: usize,
        table: &'static str,
        column: &'static str,
    ) -> Result<Option<i64>> {
        lite_int(value_ref(self, idx, table, column)?, table, column)
    }
}

/// JSON text of a string list (cannot fail: strings always serialise).
pub(crate) fn string_list_json(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".to_owned())
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| {
        d.is_unique_violation() || matches!(d.code().as_deref(), Some("2067" | "1555" | "23505"))
    })
}

pub(crate) fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| {
        d.is_foreign_key_violation() || matches!(d.code().as_deref(), Some("787" | "23503"))
    })
}

// ---- row mappers --------------------------------------------------------
//
// Tokens, tunnels and configurations are also read by the SQLite fast path,
// so their mappers take any [`Columns`]; the rest read `AnyRow`s only.

/// Columns read by [`account_from_row`], in order.
macro_rules! account_cols {
    () => {
        "id, name, created_at"
    };
}
pub(crate) use account_cols;

pub(crate) fn account_from_row(row: &AnyRow) -> Result<Account> {
    const T: &str = "accounts";
    Ok(Account {
        id: get(row, 0, T, "id")?,
        name: get(row, 1, T, "name")?,
        created_at: get(row, 2, T, "created_at")?,
    })
}

/// Columns read by [`token_from_row`], in order.
macro_rules! token_cols {
    () => {
        "id, account_id, name, kind, email, secret_hash, permissions, created_at, \
         expires_on, not_before, revoked_at"
    };
}
pub(crate) use token_cols;

pub(crate) fn token_from_row(row: &(impl Columns + ?Sized)) -> Result<ApiToken> {
    const T: &str = "api_tokens";
    let kind = row.text(3, T, "kind")?;
    let kind = match kind {
        "api_token" => CredentialKind::ApiToken,
        "global_key" => CredentialKind::GlobalKey,
        other => return Err(corrupt(T, "kind", format!("unknown kind {other:?}"))),
    };
    Ok(ApiToken {
        id: row.text(0, T, "id")?.to_owned(),
        account_id: row.text(1, T, "account_id")?.to_owned(),
        name: row.text(2, T, "name")?.to_owned(),
        kind,
        email: row.opt_text(4, T, "email")?,
        secret_hash: get_hex(row, 5, T, "secret_hash")?,
        permissions: get_string_list(row, 6, T, "permissions")?,
        created_at: row.int(7, T, "created_at")?,
        expires_on: row.opt_int(8, T, "expires_on")?,
        not_before: row.opt_int(9, T, "not_before")?,
        revoked_at: row.opt_int(10, T, "revoked_at")?,
    })
}

/// Columns read by [`tunnel_from_row`], in order.
macro_rules! tunnel_cols {
    () => {
        "id, account_id, name, tun_type, config_src, secret, metadata, created_at, \
         deleted_at, conns_active_at, conns_inactive_at, status, ha"
    };
}
pub(crate) use tunnel_cols;

pub(crate) fn tunnel_from_row(row: &(impl Columns + ?Sized)) -> Result<Tunnel> {
    const T: &str = "tunnels";
    let tun_type = row.text(3, T, "tun_type")?;
    let tun_type = TunType::parse(tun_type)
        .ok_or_else(|| corrupt(T, "tun_type", format!("unknown type {tun_type:?}")))?;
    let config_src = row.text(4, T, "config_src")?;
    let config_src = ConfigSource::parse(config_src)
        .ok_or_else(|| corrupt(T, "config_src", format!("unknown source {config_src:?}")))?;
    let status = row.text(11, T, "status")?;
    let status = TunnelStatus::parse(status)
        .ok_or_else(|| corrupt(T, "status", format!("unknown status {status:?}")))?;
    let ha = row.int(12, T, "ha")?;
    Ok(Tunnel {
        id: get_uuid(row, 0, T, "id")?,
        account_id: row.text(1, T, "account_id")?.to_owned(),
        name: row.text(2, T, "name")?.to_owned(),
        tun_type,
        config_src,
        secret: get_hex(row, 5, T, "secret")?,
        metadata: get_json(row, 6, T, "metadata")?,
        created_at: row.int(7, T, "created_at")?,
        deleted_at: row.opt_int(8, T, "deleted_at")?,
        conns_active_at: row.opt_int(9, T, "conns_active_at")?,
        conns_inactive_at: row.opt_int(10, T, "conns_inactive_at")?,
        status,
        ha: ha != 0,
    })
}

/// Columns read by [`config_from_row`], in order.
macro_rules! config_cols {
    () => {
        "tunnel_id, account_id, version, config, source, created_at"
    };
}
pub(crate) use config_cols;

pub(crate) fn config_from_row(row: &(impl Columns + ?Sized)) -> Result<TunnelConfig> {
    const T: &str = "tunnel_configs";
    let source = row.text(4, T, "source")?;
    let source = ConfigSource::parse(source)
        .ok_or_else(|| corrupt(T, "source", format!("unknown source {source:?}")))?;
    Ok(TunnelConfig {
        tunnel_id: get_uuid(row, 0, T, "tunnel_id")?,
        account_id: row.text(1, T, "account_id")?.to_owned(),
        version: row.int(2, T, "version")?,
        config: get_json(row, 3, T, "config")?,
        source,
        created_at: row.int(5, T, "created_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let bytes: Vec<u8> = (0..=255).collect();
        let s = hex_encode(&bytes);
        assert_eq!(s.len(), 512);
        assert_eq!(hex_decode(&s).unwrap(), bytes);
        assert_eq!(hex_decode("ABff").unwrap(), vec![0xab, 0xff]);
        assert!(hex_decode("abc").is_none());
        assert!(hex_decode("zz").is_none());
        assert_eq!(hex_decode("").unwrap(), Vec::<u8>::new());
    }
}
