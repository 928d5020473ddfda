//! Durable state of culvert: accounts, API tokens, tunnels (cfd_tunnel and
//! warp_connector), remote configurations, key material and the durable side of
//! the connection registry.
//!
//! One [`Store`] type serves both backends — an embedded SQLite file (WAL) and
//! PostgreSQL — through sqlx's `Any` driver with one schema and one set of
//! queries, so behaviour cannot diverge between them. On SQLite the hottest
//! point reads (credential by hash, tunnel by id, configuration) first try a
//! few read-only rusqlite connections on the calling thread, with the same SQL
//! text and the same row mappers, and fall back to the pool (`fast.rs`).
//!
//! The store knows nothing about HTTP, the v4 envelope or the wire protocol:
//! callers (the API and the edge) translate its typed errors into their own.
//!
//! Timestamps are microseconds since the Unix epoch ([`Micros`]); JSON values are
//! kept as text so unknown keys survive verbatim.

#![forbid(unsafe_code)]

mod codec;
mod error;
mod fast;
mod model;
mod registry;
mod routes;
mod schema;
mod store;
pub mod testing;

pub use error::StoreError;
pub use model::*;
pub use registry::EXPECTED_CONNS_PER_CONNECTOR;
pub use routes::{Route, RouteChange, Zone, normalize_hostname};
pub use store::Store;
pub use store::{Backend, Result};
