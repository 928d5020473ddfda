//! The `culvert` binary's library half: wiring the crates into the roles the
//! command line runs (`server` today; the edge and connector join it later).
//! Kept as a library so integration tests start the real server in process.

#![forbid(unsafe_code)]

pub mod observe;
pub mod server;
pub mod tail;
