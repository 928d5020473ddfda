//! The supervisor: HA connections to the edge, each one dialled, registered,
//! served and — on failure — retried with backoff under the same index;
//! graceful shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use culvert_ingress::Ingress;
use culvert_proto::TunnelToken;
use culvert_proto::registration::RetryAdvice;
use culvert_proto::stream::{StreamKind, classify_stream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{LocalPoolHandle, TaskTracker};
use uuid::Uuid;

use crate::backoff::BackoffPolicy;
use crate::error::ConnectorError;
use crate::identity::register_params;
use crate::management::ManagementService;
use crate::orchestrator::Orchestrator;
use crate::proxy::{ProxyContext, serve_data_stream};
use crate::rpc::{register, serve_rpc_stream};
use crate::stats::{ConnectionGauges, Liveness, ProxyMetrics, STALL_AFTER};
use crate::tls::{EDGE_QUIC_SERVER_NAME, edge_quic_config};

/// How long an edge-opened stream may take to send its 6-byte signature.
const SIGNATURE_TIMEOUT: Duration = Duration::from_secs(10);
/// cloudflared's `MaxGracePeriod`.
pub const MAX_GRACE_PERIOD: Duration = Duration::from_secs(180);

/// Everything the connector needs, already resolved from flags/token.
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    /// Tunnel identity (account tag, tunnel ID, secret).
    pub token: TunnelToken,
    /// Edge addresses (`host:port`), dialled round robin: connection `i`
    /// starts at entry `i mod len` and moves to the next on each retry.
    pub edge_addrs: Vec<String>,
    /// PEM of the CA that signed the edge certificate; `None` = system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Number of HA connections (connIndex 0..n-1).
    pub ha_connections: u8,
    /// How long in-flight requests may run after shutdown starts.
    pub grace_period: Duration,
    /// Reconnect backoff.
    pub backoff: BackoffPolicy,
    /// Spacing of connections 1..n after connection 0 registered (1 s).
    pub registration_interval: Duration,
    /// Timeout of registerConnection / unregisterConnection.
    pub rpc_timeout: Duration,
    /// The ingress served until the edge pushes a configuration.
    pub initial_ingress: Ingress,
    /// TLS server name of the edge (QUIC).
    pub server_name: String,
    /// What connection 0 uploads with `updateLocalConfiguration` when the
    /// edge says the tunnel is locally managed; `None` = cloudflared's
    /// document for the default 503 rule.
    pub local_config_json: Option<String>,
    /// `--protocol`: QUIC, HTTP/2, or QUIC with per-connection fallback.
    pub protocol: TransportProtocol,
    /// Requests for this host are served by the management service
    /// (`--management-hostname`, cloudflared's default).
    pub management_hostname: String,
}

/// Which transport connections use (`--protocol`, edge-protocol.md §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportProtocol {
    /// QUIC first; a connection falls back to HTTP/2 when QUIC looks broken
    /// (handshake timeout, "operation not permitted") or its retries reach
    /// `--retries`, unless a connection already registered over QUIC.
    #[default]
    Auto,
    Quic,
    Http2,
}

impl ConnectorConfig {
    /// cloudflared's defaults: 4 connections, 30 s grace, 1 s backoff base.
    /// The initial ingress answers 503 to everything, as cloudflared does
    /// with a token and no configuration.
    pub fn new(token: TunnelToken, edge_addrs: Vec<String>) -> ConnectorConfig {
        ConnectorConfig {
            token,
            edge_addrs,
            ca_pem: None,
            ha_connections: 4,
            grace_period: Duration::from_secs(30),
            backoff: BackoffPolicy::DEFAULT,
            registration_interval: Duration::from_secs(1),
            rpc_timeout: Duration::from_secs(5),
            initial_ingress: Ingress::default_no_rules(),
            server_name: EDGE_QUIC_SERVER_NAME.to_owned(),
            local_config_json: None,
            protocol: TransportProtocol::Auto,
            management_hostname: crate::management::DEFAULT_MANAGEMENT_HOSTNAME.to_owned(),
        }
    }
}

/// Live state, shared with the metrics server.
#[derive(Debug)]
pub struct ConnectorState {
    connector_id: Uuid,
    counts: watch::Sender<ConnectionGauges>,
    metrics: Arc<ProxyMetrics>,
}

impl ConnectorState {
    fn new(connector_id: Uuid) -> ConnectorState {
        ConnectorState {
            connector_id,
            counts: watch::Sender::new(ConnectionGauges::default()),
            metrics: Arc::new(ProxyMetrics::default()),
        }
    }

    /// The connector ID (`ClientInfo.clientId`), random per process.
    pub fn connector_id(&self) -> Uuid {
        self.connector_id
    }

    /// Registered connections that can serve: the edge still answers them.
    pub fn ready_connections(&self) -> usize {
        self.counts.borrow().ready
    }

    /// Connections registered with the edge, whether or not they answer.
    pub fn registered_connections(&self) -> usize {
        self.counts.borrow().registered
    }

    /// Both connection counts at once.
    pub fn connection_gauges(&self) -> ConnectionGauges {
        *self.counts.borrow()
    }

    /// The request counters.
    pub fn metrics(&self) -> &Arc<ProxyMetrics> {
        &self.metrics
    }

    /// Waits until at least `n` connections are ready.
    pub async fn wait_ready(&self, n: usize) {
        let mut rx = self.counts.subscribe();
        let _ = rx.wait_for(|c| c.ready >= n).await;
    }

    /// Waits until at most `n` connections are ready.
    pub async fn wait_ready_at_most(&self, n: usize) {
        let mut rx = self.counts.subscribe();
        let _ = rx.wait_for(|c| c.ready <= n).await;
    }

    /// A newly registered connection, ready until its guard says otherwise.
    pub(crate) fn up(self: &Arc<Self>) -> ReadyGuard {
        self.counts.send_modify(|c| {
            c.registered += 1;
            c.ready += 1;
        });
        ReadyGuard {
            state: Arc::clone(self),
            slot: Arc::new(Mutex::new(Slot {
                live: true,
                gone: false,
            })),
        }
    }
}

#[derive(Debug)]
struct Slot {
    live: bool,
    /// The connection ended; late liveness reports are ignored.
    gone: bool,
}

fn lock(slot: &Mutex<Slot>) -> std::sync::MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts one registered connection while alive.
pub(crate) struct ReadyGuard {
    state: Arc<ConnectorState>,
    slot: Arc<Mutex<Slot>>,
}

impl ReadyGuard {
    /// A handle for the task that watches this connection's liveness.
    pub(crate) fn liveness(&self) -> LivenessHandle {
        LivenessHandle {
            state: Arc::clone(&self.state),
            slot: Arc::clone(&self.slot),
        }
    }
}

impl Drop for ReadyGuard {
    fn drop(&mut self) {
        self.state.counts.send_modify(|c| {
            let mut s = lock(&self.slot);
            s.gone = true;
            c.registered = c.registered.saturating_sub(1);
            if s.live {
                c.ready = c.ready.saturating_sub(1);
            }
        });
    }
}

/// Marks one registered connection able to serve or not.
pub(crate) struct LivenessHandle {
    state: Arc<ConnectorState>,
    slot: Arc<Mutex<Slot>>,
}

impl LivenessHandle {
    pub(crate) fn set_live(&self, live: bool) {
        self.state.counts.send_if_modified(|c| {
            let mut s = lock(&self.slot);
            if s.gone || s.live == live {
                return false;
            }
            s.live = live;
            if live {
                c.ready += 1;
            } else {
                c.ready = c.ready.saturating_sub(1);
            }
            true
        });
    }
}

/// How often a QUIC connection's liveness is sampled.
const LIVENESS_PERIOD: Duration = Duration::from_millis(500);

/// Marks a QUIC connection unready while the edge sends nothing (our
/// keep-alive PINGs go unanswered); quinn's idle timeout ends it later.
async fn watch_quic_liveness(conn: quinn::Connection, handle: LivenessHandle) {
    let received = || conn.stats().udp_rx.datagrams;
    let mut liveness = Liveness::new(received(), tokio::time::Instant::now(), STALL_AFTER);
    let mut tick = tokio::time::interval(LIVENESS_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let live = liveness.observe(received(), tokio::time::Instant::now());
        if !live {
            tracing::debug!(edge = %conn.remote_address(), "no packet from the edge for {STALL_AFTER:?}; connection not ready");
        }
        handle.set_live(live);
    }
}

pub(crate) struct Shared {
    pub(crate) config: ConnectorConfig,
    quic: quinn::ClientConfig,
    /// TLS for the HTTP/2 transport (no ALPN).
    pub(crate) h2_tls: Arc<rustls::ClientConfig>,
    pub(crate) state: Arc<ConnectorState>,
    pub(crate) orchestrator: Arc<Orchestrator>,
    pub(crate) pool: LocalPoolHandle,
    /// Some connection registered over QUIC: `auto` no longer falls back.
    quic_registered: AtomicBool,
    pub(crate) management: Arc<ManagementService>,
}

/// culvert's cloudflared: `Connector::new(config)?.run(shutdown).await`.
pub struct Connector {
    shared: Arc<Shared>,
}

impl Connector {
    /// Validates the configuration and prepares TLS and the initial ingress.
    /// Generates the connector ID.
    pub fn new(config: ConnectorConfig) -> Result<Connector, ConnectorError> {
        if config.edge_addrs.is_empty() {
            return Err(ConnectorError::Config(
                "no edge address: pass --edge host:port (or TUNNEL_EDGE), or use a token that carries culvert_edge".into(),
            ));
        }
        if config.ha_connections == 0 {
            return Err(ConnectorError::Config(
                "--ha-connections must be at least 1".into(),
            ));
        }
        if config.grace_period > MAX_GRACE_PERIOD {
            return Err(ConnectorError::Config(format!(
                "grace-period must be equal or less than {MAX_GRACE_PERIOD:?}"
            )));
        }
        let quic = edge_quic_config(config.ca_pem.as_deref())?;
        let h2_tls = Arc::new(crate::h2transport::edge_h2_tls_config(
            config.ca_pem.as_deref(),
        )?);
        let orchestrator = Arc::new(Orchestrator::new(config.initial_ingress.clone())?);
        orchestrator.set_local_json(config.local_config_json.clone().unwrap_or_else(|| {
            crate::localconfig::upload_json(None, None, None, &serde_json::Map::new())
        }));
        let connector_id = Uuid::new_v4();
        tracing::info!(%connector_id, "Generated Connector ID");
        let management = Arc::new(ManagementService::new(
            &config.management_hostname,
            connector_id,
            config.edge_addrs.clone(),
        ));
        Ok(Connector {
            shared: Arc::new(Shared {
                config,
                quic,
                h2_tls,
                state: Arc::new(ConnectorState::new(connector_id)),
                orchestrator,
                pool: LocalPoolHandle::new(2),
                quic_registered: AtomicBool::new(false),
                management,
            }),
        })
    }

    pub fn connector_id(&self) -> Uuid {
        self.shared.state.connector_id
    }

    /// Live state for metrics and readiness.
    pub fn state(&self) -> Arc<ConnectorState> {
        Arc::clone(&self.shared.state)
    }

    /// The shared configuration (to inspect the applied version).
    pub fn orchestrator(&self) -> Arc<Orchestrator> {
        Arc::clone(&self.shared.orchestrator)
    }

    /// Runs until `shutdown` is cancelled (then unregisters every connection,
    /// drains in-flight requests for up to the grace period and returns
    /// `Ok`), or until connection 0 is refused permanently before it ever
    /// registered (returns that error, as cloudflared exits).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConnectorError> {
        let shared = self.shared;
        let inner = shutdown.child_token();
        let mut set = JoinSet::new();
        let (first_tx, first_rx) = oneshot::channel();
        set.spawn(connection_loop(
            Arc::clone(&shared),
            0,
            inner.clone(),
            Some(first_tx),
        ));
        let mut fatal = None;
        // Connection 0 goes first; the others follow once it registered.
        let first_ok = tokio::select! {
            r = first_rx => r.is_ok(),
            _ = inner.cancelled() => false,
        };
        if first_ok {
            for index in 1..shared.config.ha_connections {
                tokio::select! {
                    _ = tokio::time::sleep(shared.config.registration_interval) => {}
                    _ = inner.cancelled() => break,
                }
                set.spawn(connection_loop(
                    Arc::clone(&shared),
                    index,
                    inner.clone(),
                    None,
                ));
            }
        }
        while let Some(res) = set.join_next().await {
            let res = res
                .map_err(|e| ConnectorError::Task(e.to_string()))
                .and_then(|r| r);
            if let Err(e) = res {
                tracing::error!(error = %e, "Initiating shutdown");
                inner.cancel();
                fatal.get_or_insert(e);
            }
        }
        match fatal {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Outcome of one failed connection attempt.
pub(crate) struct AttemptFailure {
    pub(crate) error: ConnectorError,
    /// The attempt had registered before it failed (resets the backoff).
    pub(crate) registered: bool,
}

impl AttemptFailure {
    pub(crate) fn before_registration(error: ConnectorError) -> AttemptFailure {
        AttemptFailure {
            error,
            registered: false,
        }
    }
}

/// Whether connection 0's failure before its first registration should
/// stop the connector (cloudflared exits on a refusal that is neither
/// `Unauthorized` nor a duplicate; we also keep retrying `shouldRetry`).
pub fn is_fatal_at_startup(error: &ConnectorError) -> bool {
    matches!(error, ConnectorError::Refused(e) if e.retry_advice() == RetryAdvice::Permanent)
}

/// Whether a QUIC failure means UDP does not get through (cloudflared's
/// `isQuicBroken`: a handshake idle timeout, or "operation not permitted").
pub fn is_quic_broken(error: &ConnectorError) -> bool {
    match error {
        ConnectorError::Connection { source, .. } => {
            matches!(source, quinn::ConnectionError::TimedOut)
        }
        ConnectorError::Endpoint(e) => e.kind() == std::io::ErrorKind::PermissionDenied,
        _ => false,
    }
}

/// `auto`'s per-connection decision after a failed QUIC attempt: fall back
/// to HTTP/2 when QUIC looks broken or the retries reached `--retries`,
/// never once some connection registered over QUIC.
pub fn should_fall_back(
    error: &ConnectorError,
    attempt: u32,
    backoff: &BackoffPolicy,
    quic_registered: bool,
) -> bool {
    let max_retries = backoff.max_exponent.saturating_sub(1);
    !quic_registered && (is_quic_broken(error) || attempt >= max_retries)
}

/// The transport one connection is using.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Quic,
    Http2,
}

async fn connection_loop(
    shared: Arc<Shared>,
    index: u8,
    shutdown: CancellationToken,
    mut first_registered: Option<oneshot::Sender<()>>,
) -> Result<(), ConnectorError> {
    let addrs = &shared.config.edge_addrs;
    let mut attempt: u32 = 0;
    let mut rotation: usize = 0;
    let mut ever_registered = false;
    let mut endpoint: Option<quinn::Endpoint> = None;
    let mut wire = match shared.config.protocol {
        TransportProtocol::Http2 => Wire::Http2,
        TransportProtocol::Auto | TransportProtocol::Quic => Wire::Quic,
    };
    while !shutdown.is_cancelled() {
        let addr = &addrs[(usize::from(index) + rotation) % addrs.len()];
        let quic_registered = &shared.quic_registered;
        let mut on_registered = || {
            ever_registered = true;
            if wire == Wire::Quic {
                quic_registered.store(true, Ordering::Release);
            }
            if let Some(tx) = first_registered.take() {
                let _ = tx.send(());
            }
        };
        let result = match wire {
            Wire::Quic => {
                serve_connection(
                    &shared,
                    index,
                    addr,
                    attempt,
                    &mut endpoint,
                    &shutdown,
                    &mut on_registered,
                )
                .await
            }
            Wire::Http2 => {
                crate::h2transport::serve_connection(
                    &shared,
                    index,
                    addr,
                    attempt,
                    &shutdown,
                    &mut on_registered,
                )
                .await
            }
        };
        let failure = match result {
            Ok(()) => return Ok(()),
            Err(f) => f,
        };
        if shutdown.is_cancelled() {
            return Ok(());
        }
        if index == 0 && !ever_registered && is_fatal_at_startup(&failure.error) {
            // cloudflared waits one backoff period before it exits.
            let delay = shared.config.backoff.random_delay(attempt);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
            return Err(failure.error);
        }
        if failure.registered {
            attempt = 0;
        }
        if wire == Wire::Quic
            && shared.config.protocol == TransportProtocol::Auto
            && should_fall_back(
                &failure.error,
                attempt,
                &shared.config.backoff,
                shared.quic_registered.load(Ordering::Acquire),
            )
        {
            // As cloudflared: switch this connection and retry at once.
            tracing::info!(conn_index = index, edge = %addr, error = %failure.error, "Switching to fallback protocol http2");
            wire = Wire::Http2;
            attempt = 0;
            continue;
        }
        rotation = rotation.wrapping_add(1);
        let ceiling = shared.config.backoff.ceiling(attempt);
        let delay = shared.config.backoff.random_delay(attempt);
        tracing::warn!(
            conn_index = index,
            edge = %addr,
            error = %failure.error,
            unauthorized = failure.error.is_unauthorized(),
            "Serve tunnel error; Retrying connection in up to {ceiling:?}"
        );
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
    Ok(())
}

pub(crate) async fn resolve(addr: &str) -> Result<SocketAddr, ConnectorError> {
    let mut addrs =
        tokio::net::lookup_host(addr)
            .await
            .map_err(|source| ConnectorError::Resolve {
                addr: addr.to_owned(),
                source,
            })?;
    addrs.next().ok_or_else(|| ConnectorError::Resolve {
        addr: addr.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
    })
}

/// The QUIC endpoint of one connection index, kept across reconnects so
/// the local UDP port stays the same (as cloudflared does).
fn endpoint_for(
    slot: &mut Option<quinn::Endpoint>,
    remote: SocketAddr,
) -> Result<quinn::Endpoint, ConnectorError> {
    if let Some(ep) = slot
        && ep
            .local_addr()
            .is_ok_and(|l| l.is_ipv4() == remote.is_ipv4())
    {
        return Ok(ep.clone());
    }
    let bind: SocketAddr = if remote.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(bind).map_err(ConnectorError::Endpoint)?;
    // As quic-go (cloudflared) does: the kernel's default buffers drop
    // packets at loopback and LAN rates, and each drop halves the window.
    let sock = socket2::SockRef::from(&socket);
    let _ = sock.set_recv_buffer_size(crate::tls::UDP_SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(crate::tls::UDP_SOCKET_BUFFER);
    let runtime = Arc::new(quinn::TokioRuntime);
    let ep = quinn::Endpoint::new(Default::default(), None, socket, runtime)
        .map_err(ConnectorError::Endpoint)?;
    *slot = Some(ep.clone());
    Ok(ep)
}

async fn serve_connection(
    shared: &Arc<Shared>,
    index: u8,
    addr: &str,
    attempt: u32,
    endpoint: &mut Option<quinn::Endpoint>,
    shutdown: &CancellationToken,
    on_registered: &mut (dyn FnMut() + Send),
) -> Result<(), AttemptFailure> {
    let cfg = &shared.config;
    let remote = resolve(addr)
        .await
        .map_err(AttemptFailure::before_registration)?;
    let ep = endpoint_for(endpoint, remote).map_err(AttemptFailure::before_registration)?;
    let connecting = ep
        .connect_with(shared.quic.clone(), remote, &cfg.server_name)
        .map_err(|source| {
            AttemptFailure::before_registration(ConnectorError::Dial {
                addr: addr.to_owned(),
                source,
            })
        })?;
    let conn_err = |source| ConnectorError::Connection {
        addr: addr.to_owned(),
        source,
    };
    let conn = tokio::select! {
        c = connecting => c.map_err(|e| AttemptFailure::before_registration(conn_err(e)))?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| AttemptFailure::before_registration(conn_err(e)))?;
    let params = register_params(
        &cfg.token,
        shared.state.connector_id,
        index,
        remote,
        attempt,
    );
    let registration = tokio::select! {
        r = register(&shared.pool, send, recv, params, cfg.rpc_timeout) => r,
        _ = shutdown.cancelled() => {
            conn.close(quinn::VarInt::from_u32(0), b"");
            return Ok(());
        }
    };
    let (details, mut session) = match registration {
        Ok(v) => v,
        Err(e) => {
            conn.close(quinn::VarInt::from_u32(0), b"");
            return Err(AttemptFailure::before_registration(e));
        }
    };
    tracing::info!(
        conn_index = index,
        connection = %details.uuid,
        location = %details.location_name,
        edge = %remote,
        remotely_managed = details.tunnel_is_remotely_managed,
        "Registered tunnel connection"
    );
    let ready = shared.state.up();
    let _liveness = AbortOnDrop(tokio::spawn(watch_quic_liveness(
        conn.clone(),
        ready.liveness(),
    )));
    on_registered();
    // cloudflared uploads its local configuration on connection 0 of a
    // locally managed tunnel, and we again after each reload.
    let uploader = (index == 0 && !details.tunnel_is_remotely_managed).then(|| {
        let up = session.local_config_uploader();
        let mut rx = shared.orchestrator.local_json();
        let timeout = cfg.rpc_timeout;
        AbortOnDrop(tokio::spawn(async move {
            loop {
                let json = rx.borrow_and_update().clone();
                if let Some(json) = json {
                    match up.upload(json, timeout).await {
                        Ok(()) => tracing::debug!("uploaded the local configuration"),
                        Err(e) => tracing::warn!(error = %e, "updateLocalConfiguration failed"),
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }))
    });

    let tracker = TaskTracker::new();
    let lost = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break None,
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => spawn_stream(shared, &tracker, send, recv),
                Err(e) => break Some(e),
            }
        }
    };
    if let Some(e) = lost {
        drop(ready);
        tracker.close();
        return Err(AttemptFailure {
            error: conn_err(e),
            registered: true,
        });
    }

    // Graceful shutdown: unregister, drain in-flight streams, close.
    drop(uploader);
    drop(ready);
    match session.unregister(cfg.rpc_timeout).await {
        Ok(()) => tracing::info!(conn_index = index, "Unregistered tunnel connection"),
        Err(e) => tracing::warn!(conn_index = index, error = %e, "unregisterConnection failed"),
    }
    let deadline = tokio::time::sleep(cfg.grace_period);
    tokio::pin!(deadline);
    // The edge may have routed requests here just before it processed the
    // unregistration; keep accepting for a moment even when nothing is in
    // flight, so those are served instead of reset.
    let linger = tokio::time::sleep(cfg.grace_period.min(UNREGISTER_LINGER));
    tokio::pin!(linger);
    loop {
        tokio::select! {
            biased;
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => spawn_stream(shared, &tracker, send, recv),
                Err(_) => break,
            },
            _ = &mut linger => break,
        }
    }
    tracker.close();
    loop {
        tokio::select! {
            // Streams the edge opened before it saw the unregistration come
            // first; the edge should then stop routing to us.
            biased;
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => spawn_stream(shared, &tracker, send, recv),
                Err(_) => break,
            },
            _ = tracker.wait() => break,
            _ = &mut deadline => {
                tracing::warn!(conn_index = index, in_flight = tracker.len(), "grace period over; closing with requests in flight");
                break;
            }
        }
    }
    session.finish(Duration::from_secs(1)).await;
    conn.close(quinn::VarInt::from_u32(0), b"");
    let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
    Ok(())
}

/// Aborts a task when dropped (a connection's helper tasks end with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a connection keeps accepting streams after unregistering.
pub(crate) const UNREGISTER_LINGER: Duration = Duration::from_millis(500);

fn spawn_stream(
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let shared = Arc::clone(shared);
    tracker.spawn(async move {
        handle_stream(shared, send, recv).await;
    });
}

async fn handle_stream(
    shared: Arc<Shared>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let mut sig = [0u8; 6];
    match tokio::time::timeout(SIGNATURE_TIMEOUT, recv.read_exact(&mut sig)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "edge stream ended before its signature");
            return;
        }
        Err(_) => {
            tracing::debug!("edge stream sent no signature in time");
            let _ = send.reset(quinn::VarInt::from_u32(0));
            return;
        }
    }
    match classify_stream(&sig) {
        Ok(Some(StreamKind::Data)) => {
            let ctx = ProxyContext {
                orchestrator: Arc::clone(&shared.orchestrator),
                connector_id: shared.state.connector_id,
                management: Some(Arc::clone(&shared.management)),
                metrics: Some(Arc::clone(&shared.state.metrics)),
            };
            let served = crate::stats::scope(serve_data_stream(ctx, send, recv, sig));
            if let Err(e) = served.await {
                tracing::debug!(error = %e, "data stream failed");
            }
        }
        Ok(Some(StreamKind::Rpc)) => {
            serve_rpc_stream(&shared.pool, Arc::clone(&shared.orchestrator), send, recv).await;
        }
        Ok(None) | Err(_) => {
            tracing::debug!(signature = ?sig, "unknown stream signature; resetting");
            let _ = send.reset(quinn::VarInt::from_u32(0));
            let _ = recv.stop(quinn::VarInt::from_u32(0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use culvert_proto::registration::ConnectionError;

    fn token() -> TunnelToken {
        TunnelToken {
            account_tag: "a".into(),
            tunnel_id: Uuid::from_u128(1),
            secret: vec![1; 32],
            endpoint: None,
        }
    }

    #[test]
    fn fatal_only_for_permanent_refusals() {
        let refused = |e| ConnectorError::Refused(e);
        assert!(is_fatal_at_startup(&refused(ConnectionError::permanent(
            "some permanent failure"
        ))));
        assert!(!is_fatal_at_startup(&refused(ConnectionError::permanent(
            ConnectionError::INVALID_SECRET
        ))));
        assert!(!is_fatal_at_startup(&refused(ConnectionError::permanent(
            ConnectionError::DUPLICATE_CONNECTION
        ))));
        assert!(!is_fatal_at_startup(&refused(ConnectionError::retryable(
            "server busy",
            Duration::from_secs(1)
        ))));
        assert!(!is_fatal_at_startup(&ConnectorError::Task("x".into())));
    }

    #[test]
    fn auto_falls_back_when_quic_is_broken_or_retries_run_out() {
        let policy = BackoffPolicy::with_retries(5);
        let timeout = ConnectorError::Connection {
            addr: "e:1".into(),
            source: quinn::ConnectionError::TimedOut,
        };
        let refused =
            ConnectorError::Refused(ConnectionError::permanent(ConnectionError::INVALID_SECRET));
        let eperm =
            ConnectorError::Endpoint(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(is_quic_broken(&timeout));
        assert!(is_quic_broken(&eperm));
        assert!(!is_quic_broken(&refused));
        assert!(should_fall_back(&timeout, 0, &policy, false));
        assert!(!should_fall_back(&refused, 4, &policy, false));
        assert!(should_fall_back(&refused, 5, &policy, false));
        // Never once a connection registered over QUIC.
        assert!(!should_fall_back(&timeout, 9, &policy, true));
    }

    #[test]
    fn config_validation() {
        assert!(matches!(
            Connector::new(ConnectorConfig::new(token(), vec![])),
            Err(ConnectorError::Config(m)) if m.contains("--edge")
        ));
        let mut c = ConnectorConfig::new(token(), vec!["127.0.0.1:1".into()]);
        c.ha_connections = 0;
        assert!(Connector::new(c).is_err());
        let mut c = ConnectorConfig::new(token(), vec!["127.0.0.1:1".into()]);
        c.grace_period = Duration::from_secs(181);
        assert!(Connector::new(c).is_err());
    }

    #[tokio::test]
    async fn ready_count() {
        let s = Arc::new(ConnectorState::new(Uuid::nil()));
        let g1 = s.up();
        let g2 = s.up();
        s.wait_ready(2).await;
        assert_eq!(s.ready_connections(), 2);
        // A stalled connection stays registered but is not ready.
        let h1 = g1.liveness();
        h1.set_live(false);
        h1.set_live(false);
        assert_eq!((s.ready_connections(), s.registered_connections()), (1, 2));
        h1.set_live(true);
        assert_eq!(s.ready_connections(), 2);
        h1.set_live(false);
        drop(g1);
        assert_eq!((s.ready_connections(), s.registered_connections()), (1, 1));
        // Reports after the connection ended change nothing.
        h1.set_live(true);
        assert_eq!((s.ready_connections(), s.registered_connections()), (1, 1));
        drop(g2);
        assert_eq!(s.ready_connections(), 0);
    }
}
