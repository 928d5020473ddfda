//! Generated Cap'n Proto code (committed; regenerate with `../../regen.sh`).
//!
//! - [`tunnelrpc_capnp`] — registration, UDP session and configuration RPC
//!   interfaces and structs (`schema/tunnelrpc.capnp`).
//! - [`quic_metadata_protocol_capnp`] — `ConnectRequest`/`ConnectResponse`
//!   carried on QUIC data streams (`schema/quic_metadata_protocol.capnp`).
//! - [`rpc_capnp`] — the standard Cap'n Proto RPC protocol (`rpc.capnp`), used
//!   here only to inspect and build RPC frames without an RPC system.
//!
//! The generated code is not ours to lint; everything else in the crate is.

#[allow(
    clippy::all,
    clippy::pedantic,
    unused_qualifications,
    unused_imports,
    dead_code
)]
pub mod quic_metadata_protocol_capnp;
#[allow(
    clippy::all,
    clippy::pedantic,
    unused_qualifications,
    unused_imports,
    dead_code
)]
pub mod rpc_capnp;
#[allow(
    clippy::all,
    clippy::pedantic,
    unused_qualifications,
    unused_imports,
    dead_code
)]
pub mod tunnelrpc_capnp;
