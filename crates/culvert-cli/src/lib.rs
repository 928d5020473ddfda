//! culvert's management CLI: `culvert login` and the `culvert tunnel`
//! subcommands that talk to the REST API (`create`, `list`, `info`, `delete`,
//! `token`, `cleanup`, `route dns`, `rename`, `rotate`, `config get|set`).
//!
//! Boundaries: this crate is a client. It sends the same requests as
//! cloudflared's `cfapi` package (spec api.md §1.1, §3–§10), reads and writes
//! cloudflared's files (`cert.pem`, `<UUID>.json` credentials), and formats
//! output; it never touches the store or the edge. The connector's `tunnel
//! run` lives in `culvert-connector`; the binary merges both clap trees.
//! Errors are [`CliError`]s whose `Display` is the message for the user
//! (the server's message and code for API failures).

#![forbid(unsafe_code)]

pub mod cert;
pub mod client;
pub mod commands;
pub mod error;
pub mod files;
pub mod output;
pub mod types;

pub use cert::OriginCert;
pub use client::{ApiClient, TunnelFilter};
pub use commands::{
    LoginArgs, ManagementOptions, TunnelManagement, expand_cloudflared_aliases, login,
    origin_cert_pem, resolve_tunnel, run_management,
};
pub use error::CliError;
