//! culvert's connector — our own cloudflared (`culvert tunnel run`).
//!
//! It dials the edge over QUIC (SNI `quic.cftunnel.com`, ALPN `argotunnel`,
//! rustls with ring) or HTTP/2 over TLS/TCP (`--protocol http2`, or `auto`'s
//! per-connection fallback), keeps `--ha-connections` registered connections that
//! share one connector ID, serves the data streams the edge opens by routing
//! each request through the ingress rules to a real origin, applies
//! configuration pushes, and on shutdown unregisters and drains. It speaks
//! exactly what cloudflared 2023.7.3 speaks (`shared/spec/edge-protocol.md`,
//! `shared/testdata/cloudflared-2023.7.3`), so it works with any compatible
//! edge, and culvert's edge works with the stock cloudflared.
//!
//! Boundaries: wire formats come from `culvert-proto` (never re-implemented
//! here) and rule parsing/matching from `culvert-ingress`; this crate owns
//! the I/O — QUIC, HTTP/2, capnp-rpc sessions, HTTP proxying, backoff,
//! signals, metrics, local configuration files. The `culvert` binary mounts
//! [`cli::TunnelCommand`] as its `tunnel` subcommand and calls
//! [`cli::run_tunnel_command`]; everything below that layer returns
//! [`ConnectorError`].
//!
//! Modules:
//! - [`access_tcp`] — `culvert access ssh|tcp`: local streams carried over a
//!   WebSocket to a tunnel's TCP service.
//! - [`cli`] — clap flags (cloudflared's names and environment variables)
//!   and the command entry.
//! - [`connector`] — supervisor: HA connections, reconnects, shutdown.
//! - [`rpc`] — control-stream registration and edge-opened RPC streams.
//! - [`h2transport`] — the HTTP/2 transport (the connector is the HTTP/2
//!   server; same registration and HTTP proxying as QUIC).
//! - [`proxy`] — data streams to origins; [`origin`] — per-rule clients;
//!   [`stream_origin`] — websocket streams and TCP services over WebSocket.
//! - [`orchestrator`] — the live configuration and versioned pushes.
//! - [`identity`] — token extras, client info and registration params.
//! - [`access`] — `originRequest.access` token checks; [`socks`] — SOCKS5
//!   for `proxyType: socks` and `socks-proxy` stream requests.
//! - [`localconfig`] — cloudflared's `config.yml` and credentials files,
//!   reload on change / SIGHUP.
//! - [`management`] — the management service (`/logs` log streaming,
//!   `/ping`, `/host_details`) and the tracing layer that feeds it.
//! - [`metrics`] — the `--metrics` server (`/ready`, `/healthcheck`,
//!   `/metrics`); [`stats`] — request counters, latency histograms and
//!   connection liveness behind it.
//! - [`backoff`], [`tls`], [`error`].
#![forbid(unsafe_code)]

pub mod access;
pub mod access_tcp;
pub mod backoff;
pub mod cli;
pub mod connector;
pub mod error;
pub mod h2transport;
pub mod identity;
pub mod localconfig;
pub mod management;
pub mod metrics;
pub mod orchestrator;
pub mod origin;
pub mod proxy;
pub mod rpc;
pub mod socks;
pub mod stats;
pub mod stream_origin;
pub mod tcpflow;
pub mod tls;

pub use backoff::BackoffPolicy;
pub use cli::{TunnelCommand, run_tunnel_command};
pub use connector::{Connector, ConnectorConfig, ConnectorState, TransportProtocol};
pub use error::ConnectorError;
pub use identity::TokenExtras;
pub use orchestrator::Orchestrator;
