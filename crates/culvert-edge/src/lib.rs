//! The culvert edge: what unmodified cloudflared (2023.7+) and culvert's own
//! connector dial into, and the public HTTP listener whose requests it routes
//! through their tunnels.
//!
//! It owns the QUIC listener (TLS identity, ALPN `argotunnel`), the
//! Cap'n Proto registration session on each connection's control stream, the
//! live connection registry, remote-configuration pushes, and the public
//! listener (Host → tunnel → connection → QUIC data stream). It does not own
//! durable state (the [`culvert_store::Store`] does: tunnels, secrets,
//! configurations, routes, the registry's durable side), wire formats
//! ([`culvert_proto`]) or the REST API (`culvert-api`, which reaches the edge
//! only through the [`culvert_api::EdgeControl`] hooks). Connectors reach
//! it over QUIC or, on the same port number, over HTTP/2 on TLS/TCP
//! (`h2conn`; the registry holds either, see [`transport`]). Private TCP
//! flows and UDP are not here yet.
//!
//! Layout: [`tls`] (certificates), `quic` (listener and per-connection
//! actor, registration RPC), `h2conn` (the HTTP/2 transport), `push`
//! (config push), `proxy` (public listener), [`upgrade`] (WebSocket
//! upgrades spliced over QUIC), [`management`] (the management host: token
//! checks, connector choice, relay), [`public_tls`] (the HTTPS listener,
//! reloading certificate), [`metrics`] (counters, Prometheus text), and the
//! pure parts with unit tests: [`hosts`] (host → tunnel),
//! [`registry`] (connection selection), [`request`] (ConnectRequest building)
//! and [`pages`] (error pages).
//!
//! Cap'n Proto RPC objects are `!Send`; every RPC session runs on a small
//! pool of pinned single-thread runtimes and talks to the rest of the edge
//! (store, registry) only through `Send` tasks on the main runtime.

#![forbid(unsafe_code)]

mod accept;
mod control;
mod error;
mod h2conn;
pub mod hosts;
pub mod management;
pub mod metrics;
pub mod pages;
pub mod private_flow;
mod proxy;
pub mod public_tls;
mod push;
mod quic;
pub mod registry;
pub mod request;
mod routes;
pub mod tls;
pub mod transport;
pub mod upgrade;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use culvert_store::Store;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::LocalPoolHandle;

pub use error::{EdgeError, ProxyError};
pub use management::ManagementOptions;

use crate::hosts::HostIndex;
use crate::registry::Registry;
use crate::routes::Routes;

/// Where the edge listens and how it names itself.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Connector listener (`--edge-listen`, default `0.0.0.0:7844`): QUIC on
    /// UDP and HTTP/2 over TLS on TCP, same port number.
    pub edge_listen: SocketAddr,
    /// Public HTTP listener (`--http-listen`, default `0.0.0.0:8080`).
    pub http_listen: SocketAddr,
    /// Where the edge CA and certificate live when none is supplied.
    pub data_dir: PathBuf,
    /// Operator-supplied certificate chain (PEM); with `edge_key`.
    pub edge_cert: Option<PathBuf>,
    /// Operator-supplied private key (PEM); with `edge_cert`.
    pub edge_key: Option<PathBuf>,
    /// `<tunnel-uuid>.<tunnel_domain>` reaches a tunnel directly
    /// (default `cfargotunnel.localhost`).
    pub tunnel_domain: String,
    /// Location name reported to connectors and in ray ids (default `LOCAL`).
    pub location: String,
    /// This edge node's id in the store's registry.
    pub node_id: String,
    /// The management host (`/logs` for `culvert tail` / `cloudflared tail`).
    pub management: ManagementOptions,
    /// Public HTTPS listener (`--https-listen`, `--tls-cert`, `--tls-key`).
    pub https: Option<HttpsOptions>,
}

/// The public TLS listener: eyeball HTTPS and `wss://` for the management
/// host, with a certificate from files that is reloaded when they change.
#[derive(Debug, Clone)]
pub struct HttpsOptions {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Default `tunnel_domain`.
pub const DEFAULT_TUNNEL_DOMAIN: &str = "cfargotunnel.localhost";
/// Default `location`.
pub const DEFAULT_LOCATION: &str = "LOCAL";

/// Timeouts and bounds. [`Tuning::default`] suits production; tests shorten
/// the timeouts.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// A connection must open its control stream and register within this.
    pub registration_timeout: Duration,
    /// TLS/QUIC handshake bound.
    pub handshake_timeout: Duration,
    /// How long the edge waits for a connector's response head; `None`
    /// waits as long as the eyeball does (`--origin-response-timeout`).
    /// Only the head is bounded: a streaming body or an upgraded WebSocket
    /// is never cut by it.
    pub response_timeout: Option<Duration>,
    /// Bound on opening a stream (waits when the connector's stream limit is
    /// reached).
    pub open_stream_timeout: Duration,
    /// Bound on one configuration push (stream, bootstrap, call, reply).
    pub push_timeout: Duration,
    /// Cap on concurrent QUIC connections (and, separately, on HTTP/2 ones).
    pub max_quic_connections: usize,
    /// Cap on concurrent public HTTP connections.
    pub max_http_connections: usize,
    /// Pinned single-thread runtimes for RPC sessions.
    pub rpc_threads: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            registration_timeout: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(10),
            response_timeout: None,
            open_stream_timeout: Duration::from_secs(5),
            push_timeout: Duration::from_secs(15),
            max_quic_connections: 10_000,
            max_http_connections: 10_000,
            rpc_threads: 2,
        }
    }
}

/// State shared by every task of one edge.
pub(crate) struct Shared {
    pub store: Store,
    pub routes: Arc<dyn Routes>,
    pub registry: Registry,
    pub hosts: RwLock<HostIndex>,
    pub config: EdgeConfig,
    pub tuning: Tuning,
    /// The main (multi-thread) runtime: store calls and proxying run here.
    pub rt: tokio::runtime::Handle,
    /// Pinned runtimes for the `!Send` RPC sessions.
    pub rpc_pool: LocalPoolHandle,
    pub shutdown: CancellationToken,
    /// Verifies management tokens (the control plane's key, from the store).
    pub management_keys: culvert_api::ManagementKeys,
    /// Public management host (normalised).
    pub management_hostname: String,
    /// `HttpHost` management requests are forwarded with.
    pub management_connector_hostname: String,
    pub metrics: Arc<metrics::EdgeMetrics>,
}

impl Shared {
    pub fn hosts_read(&self) -> std::sync::RwLockReadGuard<'_, HostIndex> {
        self.hosts.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn hosts_write(&self) -> std::sync::RwLockWriteGuard<'_, HostIndex> {
        self.hosts.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads the edge's metrics and state for `/metrics` and `/readyz`.
#[derive(Clone)]
pub struct EdgeObserver(Arc<Shared>);

impl EdgeObserver {
    /// Writes the edge's Prometheus families.
    pub fn encode_metrics(&self, enc: &mut metrics::TextEncoder) {
        let all = self.0.registry.all();
        let connectors: std::collections::HashSet<uuid::Uuid> =
            all.iter().map(|c| c.connector_id).collect();
        self.0.metrics.encode(enc, all.len(), connectors.len());
    }

    /// The listeners are up (started and not shutting down).
    pub fn is_serving(&self) -> bool {
        !self.0.shutdown.is_cancelled()
    }
}

/// A started edge. Dropping it does not stop it; call [`RunningEdge::shutdown`].
pub struct RunningEdge {
    shared: Arc<Shared>,
    quic_addr: SocketAddr,
    http_addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    ca_pem: String,
    endpoint: quinn::Endpoint,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts the edge with default [`Tuning`].
pub async fn start(config: EdgeConfig, store: Store) -> Result<RunningEdge, EdgeError> {
    start_with(config, store, Tuning::default()).await
}

/// Starts the edge: loads (or creates) the TLS identity, forgets this node's
/// connections from a previous run, indexes remote ingress hostnames, and
/// binds both listeners. Must be called inside a multi-thread tokio runtime.
pub async fn start_with(
    config: EdgeConfig,
    store: Store,
    tuning: Tuning,
) -> Result<RunningEdge, EdgeError> {
    if config.node_id.is_empty() {
        return Err(EdgeError::Config("node_id must not be empty".into()));
    }
    if config.location.is_empty() {
        return Err(EdgeError::Config("location must not be empty".into()));
    }
    let tunnel_domain = config.tunnel_domain.trim_matches('.').to_ascii_lowercase();
    if tunnel_domain.is_empty() {
        return Err(EdgeError::Config("tunnel_domain must not be empty".into()));
    }
    let mut config = config;
    config.tunnel_domain = tunnel_domain;

    let tls = tls::EdgeTls::load(
        &config.data_dir,
        config.edge_cert.as_deref(),
        config.edge_key.as_deref(),
    )?;
    let server_tls = tls.quic_server_config()?;

    // Connections a previous run of this node held are gone for sure.
    let cleared = store.clear_edge_node(&config.node_id).await?;
    if !cleared.connections.is_empty() {
        tracing::info!(
            count = cleared.connections.len(),
            "forgot connections of a previous run of this edge node"
        );
    }

    let management_keys = culvert_api::ManagementKeys::load_or_create(&store)
        .await
        .map_err(|e| EdgeError::Config(format!("management key: {e}")))?;
    let routes: Arc<dyn Routes> = Arc::new(crate::routes::CachedRoutes::new(store.clone()));
    let mut index = HostIndex::default();
    for cfg in routes.list_remote_configs().await? {
        index.set_tunnel(cfg.tunnel_id, hosts::ingress_hostnames(&cfg.config));
    }

    // QUIC (UDP) and HTTP/2 (TCP) share the port number.
    let h2_tls = Arc::new(h2conn::tcp_tls_config(&server_tls));
    let (endpoint, h2_listener) =
        h2conn::bind_pair(config.edge_listen, server_tls, &tuning).await?;
    let quic_addr = endpoint.local_addr().map_err(|e| EdgeError::Bind {
        what: "QUIC",
        addr: config.edge_listen,
        source: e,
    })?;
    let http = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|e| EdgeError::Bind {
            what: "HTTP",
            addr: config.http_listen,
            source: e,
        })?;
    let http_addr = http.local_addr().map_err(|e| EdgeError::Bind {
        what: "HTTP",
        addr: config.http_listen,
        source: e,
    })?;
    let https = match &config.https {
        Some(opts) => Some(public_tls::bind(opts).await?),
        None => None,
    };

    let shared = Arc::new(Shared {
        store,
        routes,
        registry: Registry::default(),
        hosts: RwLock::new(index),
        tuning: tuning.clone(),
        rt: tokio::runtime::Handle::current(),
        rpc_pool: LocalPoolHandle::new(tuning.rpc_threads.max(1)),
        shutdown: CancellationToken::new(),
        management_keys,
        metrics: Arc::default(),
        management_hostname: management::public_hostname(&config.management, &config.tunnel_domain),
        management_connector_hostname: management::connector_hostname(&config.management),
        config,
    });
    let mut tasks = vec![
        tokio::spawn(quic::accept_loop(shared.clone(), endpoint.clone())),
        tokio::spawn(h2conn::accept_loop(shared.clone(), h2_listener, h2_tls)),
        tokio::spawn(proxy::serve(shared.clone(), http)),
    ];
    let https_addr = https.map(|(listener, addr, certs)| {
        tasks.push(tokio::spawn(public_tls::serve(
            shared.clone(),
            listener,
            certs,
        )));
        addr
    });
    tracing::info!(%quic_addr, %http_addr, node = %shared.config.node_id, "edge started");
    Ok(RunningEdge {
        shared,
        quic_addr,
        http_addr,
        https_addr,
        ca_pem: tls.ca_pem,
        endpoint,
        tasks,
    })
}

impl RunningEdge {
    /// The bound QUIC address (useful with port 0).
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The HTTP/2 (TLS over TCP) listener: the QUIC port number, on TCP.
    pub fn h2_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The bound public HTTPS address, if `https` was configured.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The bound public HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// PEM of the CA connectors must trust (`--cacert`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The hooks the API calls (config changes, removed connections).
    pub fn control(&self) -> Arc<dyn culvert_api::EdgeControl> {
        Arc::new(control::Control::new(self.shared.clone()))
    }

    /// A handle for metrics and readiness that outlives borrows of `self`.
    pub fn observer(&self) -> EdgeObserver {
        EdgeObserver(self.shared.clone())
    }

    /// Number of live registered connections on this edge.
    pub fn live_connections(&self) -> usize {
        self.shared.registry.len()
    }

    /// Stops both listeners, closes every connector connection (cloudflared
    /// reconnects elsewhere or later) and forgets them in the store.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        self.endpoint
            .close(quic::CODE_SHUTDOWN, b"edge shutting down");
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        for c in self.shared.registry.all() {
            self.shared.registry.remove(c.id);
        }
        if let Err(e) = self
            .shared
            .store
            .clear_edge_node(&self.shared.config.node_id)
            .await
        {
            tracing::warn!(error = %e, "could not clear this node's connections at shutdown");
        }
        tracing::info!("edge stopped");
    }
}
