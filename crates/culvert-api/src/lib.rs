//! The `/client/v4` REST API of culvert: Cloudflare Tunnel's endpoints
//! (`cfd_tunnel`, `tunnels`, `warp_connector`, token verification) served
//! over the store, answering in the v4 envelope byte-for-byte the way the
//! official SDKs and cloudflared parse it.
//!
//! Boundaries: this crate owns HTTP concerns (routing, the envelope, auth and
//! permission groups, input validation, OpenAPI, management-token signing).
//! Persistence is `culvert-store`'s, ingress validation `culvert-ingress`'s,
//! token formats `culvert-proto`'s. It never talks to connectors: changes that
//! the data plane must act on go through the [`EdgeControl`] hooks.

#![forbid(unsafe_code)]

pub mod auth;
pub mod envelope;
mod extract;
mod handlers;
pub mod management;
pub mod openapi;
pub mod query;
pub mod routes;
mod state;
pub mod timefmt;
pub mod views;

pub use management::ManagementKeys;
pub use routes::{BASE, router};
pub use state::{ApiSettings, ApiState, EdgeControl, NoEdge};
