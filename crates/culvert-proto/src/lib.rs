#![forbid(unsafe_code)]
//! Wire formats shared by the culvert edge and the culvert connector.
//!
//! This crate is pure: it only encodes, decodes and validates bytes and
//! strings. It performs no I/O, spawns no tasks and holds no sockets, so
//! both sides (and tests) can use it without a runtime.
//!
//! Modules:
//! - [`token`] — the tunnel token (`cloudflared tunnel run --token`) and the
//!   credentials file it converts to.
//! - [`schema`] — generated Cap'n Proto code for cloudflared's schemas.

pub mod connect;
pub mod error;
pub mod framing;
pub mod http_meta;
pub mod registration;
pub mod schema;
pub mod stream;
pub mod token;

#[cfg(test)]
mod testutil;
#[cfg(test)]
mod transcripts;

pub use token::{Credentials, TokenError, TunnelToken};
