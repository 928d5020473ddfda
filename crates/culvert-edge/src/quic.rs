//! The QUIC listener and the per-connection actor.
//!
//! Each accepted connection runs on the pinned RPC pool: its first
//! client-opened bidi stream is the control stream, where the edge serves
//! `RegistrationServer` with capnp-rpc (edge-protocol.md §3). A connection
//! that does not register in time is closed. After registration, further
//! client-opened streams are RPC streams (cloudflared's
//! `unregisterUdpSession`) or are reset. When the connection ends, it leaves
//! the live registry and the store.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{RpcSystem, twoparty};
use culvert_proto::registration::{
    ConnectionDetails, ConnectionError, ConnectionResponse, RegisterConnectionParams,
    UpdateLocalConfigurationParams,
};
use culvert_proto::schema::tunnelrpc_capnp::{registration_server, session_manager};
use culvert_proto::stream::{RPC_STREAM_SIGNATURE, SIGNATURE_LEN};
use culvert_store::{
    ConfigSource, ConnectionInfo, ConnectorInfo, Registration, StoreError, now_micros,
};
use quinn::VarInt;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::error::EdgeError;
use crate::registry::LiveConn;
use crate::transport::Transport;
use crate::{Shared, Tuning};

/// Application close codes the edge uses (cloudflared only logs them and
/// reconnects with backoff).
pub(crate) const CODE_SHUTDOWN: VarInt = VarInt::from_u32(0);
pub(crate) const CODE_REMOVED: VarInt = VarInt::from_u32(0);
pub(crate) const CODE_REPLACED: VarInt = VarInt::from_u32(0);
pub(crate) const CODE_NOT_REGISTERED: VarInt = VarInt::from_u32(0x10);
pub(crate) const CODE_INTERNAL: VarInt = VarInt::from_u32(0x11);
pub(crate) const CODE_PROTOCOL: VarInt = VarInt::from_u32(0x12);

/// Control-stream reader bounds: registration messages are about 0.5 KiB;
/// the largest legitimate one is `updateLocalConfiguration` with the
/// connector's local config JSON. 256 KiB per message, shallow nesting.
fn control_reader_options() -> capnp::message::ReaderOptions {
    let mut o = capnp::message::ReaderOptions::new();
    o.traversal_limit_in_words(Some(256 * 1024 / 8));
    o.nesting_limit(16);
    o
}

/// Peer-opened RPC streams carry only `unregisterUdpSession` (tiny).
fn peer_rpc_reader_options() -> capnp::message::ReaderOptions {
    let mut o = capnp::message::ReaderOptions::new();
    o.traversal_limit_in_words(Some(64 * 1024 / 8));
    o.nesting_limit(16);
    o
}

/// Binds the QUIC endpoint with transport settings that suit cloudflared:
/// it pings every second and uses a 5 s idle timeout (the lower of both
/// peers' wins), so 30 s here is only for other clients; edge keep-alives
/// keep those below 5 s alive too. Datagrams stay advertised (quinn's
/// default receive buffer) for later UDP support.
pub(crate) fn bind(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    tuning: &Tuning,
) -> Result<quinn::Endpoint, EdgeError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| EdgeError::tls("QUIC TLS configuration", e))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(30))
                .map_err(|e| EdgeError::Config(e.to_string()))?,
        ))
        .keep_alive_interval(Some(Duration::from_secs(2)))
        // Control stream + cloudflared's UDP-unregister RPC streams.
        .max_concurrent_bidi_streams(VarInt::from_u32(100))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(Some(1024 * 1024))
        .ack_frequency_config(Some(ack_every_tenth_packet()));
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport));
    // Bounds the handshakes queued before `accept` sees them.
    server.max_incoming(tuning.max_quic_connections.clamp(1, 65_536));
    let bind_err = |source| EdgeError::Bind {
        what: "QUIC",
        addr,
        source,
    };
    let socket = std::net::UdpSocket::bind(addr).map_err(bind_err)?;
    enlarge_socket_buffers(&socket);
    let runtime = Arc::new(quinn::TokioRuntime);
    quinn::Endpoint::new(Default::default(), Some(server), socket, runtime).map_err(bind_err)
}

/// What quic-go (cloudflared's QUIC stack) asks for: the kernel default
/// (about 200 KiB) overflows within a millisecond at a few Gbit/s, and
/// every drop halves the sender's congestion window.
const UDP_SOCKET_BUFFER: usize = 7 << 20;

/// Raises both socket buffers towards [`UDP_SOCKET_BUFFER`]; the kernel
/// caps the request at `net.core.{r,w}mem_max`, and a refusal only costs
/// speed.
fn enlarge_socket_buffers(socket: &std::net::UdpSocket) {
    let sock = socket2::SockRef::from(socket);
    if let Err(e) = sock.set_recv_buffer_size(UDP_SOCKET_BUFFER) {
        tracing::debug!(error = %e, "could not enlarge the UDP receive buffer");
    }
    if let Err(e) = sock.set_send_buffer_size(UDP_SOCKET_BUFFER) {
        tracing::debug!(error = %e, "could not enlarge the UDP send buffer");
    }
}

/// For request bodies we send: a peer that supports the ACK-frequency
/// extension (our connector) acknowledges every 10th packet instead of
/// every 2nd, which saves both ends most ACK processing on bulk uploads.
/// cloudflared (quic-go) does not support it and is unaffected.
fn ack_every_tenth_packet() -> quinn::AckFrequencyConfig {
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(VarInt::from_u32(9));
    acks
}

/// Accepts connections until shutdown. Each handshake runs on the main
/// runtime, so that quinn spawns the connection's driver there, next to the
/// proxy tasks that open its streams; only the capnp-rpc control session (not
/// `Send`) becomes an actor on the pinned pool.
pub(crate) async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    loop {
        let incoming = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        if endpoint.open_connections() >= shared.tuning.max_quic_connections {
            tracing::warn!(peer = %incoming.remote_address(), "too many QUIC connections; refusing");
            incoming.refuse();
            continue;
        }
        // Detached: the task cleans up after itself.
        tokio::spawn(serve_incoming(shared.clone(), incoming));
    }
}

async fn serve_incoming(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let peer = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "QUIC handshake refused");
            return;
        }
    };
    let conn = match tokio::time::timeout(shared.tuning.handshake_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "QUIC handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "QUIC handshake timed out");
            return;
        }
    };
    let pool = shared.rpc_pool.clone();
    // The JoinHandle is dropped: the actor runs detached and cleans up after
    // itself.
    drop(pool.spawn_pinned(move || serve_connection(shared, conn)));
}

/// What the control session learned, shared between the RPC server object
/// and the actor (both on this pinned thread).
#[derive(Default)]
pub(crate) struct ConnState {
    registered: Option<Registered>,
}

impl ConnState {
    pub(crate) fn is_registered(&self) -> bool {
        self.registered.is_some()
    }
}

#[derive(Clone)]
struct Registered {
    conn_id: Uuid,
    tunnel_id: Uuid,
    details: ConnectionDetails,
}

async fn serve_connection(shared: Arc<Shared>, conn: quinn::Connection) {
    let peer = conn.remote_address();
    let deadline = tokio::time::Instant::now() + shared.tuning.registration_timeout;
    let state = Rc::new(RefCell::new(ConnState::default()));
    let registered = Rc::new(tokio::sync::Notify::new());

    // The first client-opened bidi stream is the control stream.
    let control = tokio::select! {
        s = tokio::time::timeout_at(deadline, conn.accept_bi()) => s,
        _ = shared.shutdown.cancelled() => return,
    };
    let (send, recv) = match control {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "connection ended before its control stream");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "no control stream in time; closing");
            conn.close(CODE_NOT_REGISTERED, b"registration timeout");
            return;
        }
    };

    let rpc_task = spawn_control_rpc(
        &shared,
        Transport::Quic(conn.clone()),
        peer,
        &state,
        &registered,
        recv,
        send,
    );

    let ok = tokio::select! {
        _ = registered.notified() => true,
        _ = tokio::time::sleep_until(deadline) => {
            if state.borrow().registered.is_some() {
                true
            } else {
                tracing::info!(%peer, "connection did not register in time; closing");
                conn.close(CODE_NOT_REGISTERED, b"registration timeout");
                false
            }
        }
        _ = conn.closed() => false,
        _ = shared.shutdown.cancelled() => false,
    };

    if ok {
        // Serve peer-opened streams until the connection ends.
        loop {
            tokio::select! {
                s = conn.accept_bi() => match s {
                    Ok((send, recv)) => {
                        tokio::task::spawn_local(serve_peer_stream(send, recv));
                    }
                    Err(_) => break,
                },
                _ = shared.shutdown.cancelled() => break,
            }
        }
    }
    let reason = conn.closed().await;
    rpc_task.abort();

    end_connection(&shared, &state, peer, &reason).await;
}

/// Serves `RegistrationServer` on a control stream, whatever carries its
/// bytes (a QUIC stream, or the bodies of the HTTP/2 control-stream
/// request). Must run on a pinned (`LocalSet`) runtime: capnp-rpc is
/// `!Send`. A session that fails (not a normal end) closes the connection.
pub(crate) fn spawn_control_rpc<R, W>(
    shared: &Arc<Shared>,
    conn: Transport,
    peer: SocketAddr,
    state: &Rc<RefCell<ConnState>>,
    registered: &Rc<tokio::sync::Notify>,
    recv: R,
    send: W,
) -> tokio::task::JoinHandle<()>
where
    R: futures::AsyncRead + Unpin + 'static,
    W: futures::AsyncWrite + Unpin + 'static,
{
    let server = ControlServer {
        shared: shared.clone(),
        conn: conn.clone(),
        peer,
        state: state.clone(),
        registered: registered.clone(),
    };
    let client: registration_server::Client = capnp_rpc::new_client(server);
    let network = twoparty::VatNetwork::new(recv, send, Side::Server, control_reader_options());
    let rpc = RpcSystem::new(Box::new(network), Some(client.client));
    tokio::task::spawn_local(async move {
        // Ok or an error ("rpc: shutdown" abort, stream reset) are both normal
        // ends; a malformed frame also lands here and closes the connection.
        match rpc.await {
            Ok(()) => tracing::debug!(%peer, transport = conn.name(), "control stream ended"),
            Err(e) => {
                tracing::debug!(%peer, transport = conn.name(), error = %e, "control stream failed");
                if e.kind != capnp::ErrorKind::Disconnected
                    && !e.extra.contains("rpc: shutdown")
                    && !conn.is_closed()
                {
                    conn.close(CODE_PROTOCOL, b"control stream error");
                }
            }
        }
    })
}

/// After a connection ended: forgets its registration (registry, store).
pub(crate) async fn end_connection(
    shared: &Arc<Shared>,
    state: &Rc<RefCell<ConnState>>,
    peer: SocketAddr,
    reason: &dyn std::fmt::Display,
) {
    let reg = state.borrow_mut().registered.take();
    if let Some(reg) = reg {
        tracing::info!(%peer, connection = %reg.conn_id, tunnel = %reg.tunnel_id, %reason, "tunnel connection ended");
        let s = shared.clone();
        // Store work runs on the main runtime; awaiting keeps the order
        // (registry, then store) observable to tests.
        let _ = shared
            .rt
            .spawn(async move { forget_connection(&s, reg.conn_id).await })
            .await;
    } else {
        tracing::debug!(%peer, %reason, "unregistered connection ended");
    }
}

/// Removes a connection from the live registry and the store.
pub(crate) async fn forget_connection(shared: &Shared, conn_id: Uuid) {
    shared.registry.remove(conn_id);
    if let Err(e) = shared.store.unregister_connection(conn_id).await {
        tracing::warn!(connection = %conn_id, error = %e, "could not unregister connection in the store");
    }
}

/// A stream cloudflared opened after registration: an RPC stream (it calls
/// `SessionManager.unregisterUdpSession` on the edge) or something we reset.
async fn serve_peer_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let mut sig = [0u8; SIGNATURE_LEN];
    let read = tokio::time::timeout(Duration::from_secs(10), recv.read_exact(&mut sig)).await;
    if !matches!(read, Ok(Ok(()))) || sig != RPC_STREAM_SIGNATURE {
        let _ = recv.stop(VarInt::from_u32(0));
        let _ = send.reset(VarInt::from_u32(0));
        return;
    }
    let client: session_manager::Client = capnp_rpc::new_client(SessionManagerServer);
    let network = twoparty::VatNetwork::new(recv, send, Side::Server, peer_rpc_reader_options());
    let rpc = RpcSystem::new(Box::new(network), Some(client.client));
    // cloudflared closes these after one call; bound them anyway.
    let _ = tokio::time::timeout(Duration::from_secs(30), rpc).await;
}

/// The edge's `SessionManager`: UDP sessions are not offered yet, so there
/// is never a session to unregister; the call is acknowledged.
struct SessionManagerServer;

impl session_manager::Server for SessionManagerServer {
    fn unregister_udp_session(
        self: Rc<Self>,
        _: session_manager::UnregisterUdpSessionParams,
        _: session_manager::UnregisterUdpSessionResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        std::future::ready(Ok(()))
    }
}

/// The bootstrap capability of a control stream.
struct ControlServer {
    shared: Arc<Shared>,
    conn: Transport,
    peer: SocketAddr,
    state: Rc<RefCell<ConnState>>,
    registered: Rc<tokio::sync::Notify>,
}

/// Why a registration did not produce details.
enum RegisterFailure {
    /// Answered with `ConnectionError` (cloudflared retries "Unauthorized").
    Refused(ConnectionError),
    /// Something on our side failed: the connection is closed instead, which
    /// cloudflared retries with backoff (a `ConnectionError` without
    /// "Unauthorized" would make a fresh cloudflared exit).
    Internal(String),
}

impl From<StoreError> for RegisterFailure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TunnelNotFound(_) => {
                RegisterFailure::Refused(refusal(ConnectionError::UNKNOWN_TUNNEL))
            }
            e => RegisterFailure::Internal(e.to_string()),
        }
    }
}

/// A refusal with cloudflared's usual hint (it ignores `retryAfter`).
fn refusal(cause: &str) -> ConnectionError {
    ConnectionError::retryable(cause, Duration::from_secs(3))
}

fn rpc_err(e: impl std::fmt::Display) -> capnp::Error {
    capnp::Error::failed(e.to_string())
}

impl registration_server::Server for ControlServer {
    async fn register_connection(
        self: Rc<Self>,
        params: registration_server::RegisterConnectionParams,
        mut results: registration_server::RegisterConnectionResults,
    ) -> Result<(), capnp::Error> {
        let p = RegisterConnectionParams::read_from(params.get()?).map_err(rpc_err)?;
        // A second registerConnection on the same control stream (never
        // sent by cloudflared) gets the first answer again.
        let existing = self.state.borrow().registered.clone();
        if let Some(reg) = existing {
            ConnectionResponse::Details(reg.details).write_results(results.get());
            return Ok(());
        }
        let shared = self.shared.clone();
        let conn = self.conn.clone();
        let peer = self.peer;
        let outcome = self
            .shared
            .rt
            .spawn(async move { register(&shared, conn, peer, p).await })
            .await
            .unwrap_or_else(|e| Err(RegisterFailure::Internal(e.to_string())));
        match outcome {
            Ok(reg) => {
                ConnectionResponse::Details(reg.details.clone()).write_results(results.get());
                self.state.borrow_mut().registered = Some(reg);
                self.registered.notify_one();
                Ok(())
            }
            Err(RegisterFailure::Refused(e)) => {
                tracing::info!(peer = %self.peer, cause = %e.cause, "registration refused");
                ConnectionResponse::Error(e).write_results(results.get());
                Ok(())
            }
            Err(RegisterFailure::Internal(msg)) => {
                tracing::error!(peer = %self.peer, error = %msg, "registration failed");
                self.conn
                    .close(CODE_INTERNAL, b"edge error during registration");
                Err(capnp::Error::failed(format!("edge error: {msg}")))
            }
        }
    }

    fn unregister_connection(
        self: Rc<Self>,
        _: registration_server::UnregisterConnectionParams,
        _: registration_server::UnregisterConnectionResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let reg = self.state.borrow().registered.clone();
        if let Some(reg) = reg {
            // Stop routing new requests here at once; in-flight streams go on
            // until the connector closes the connection.
            self.shared.registry.set_draining(reg.conn_id);
            tracing::info!(connection = %reg.conn_id, tunnel = %reg.tunnel_id, "connection draining (unregistered)");
        }
        std::future::ready(Ok(()))
    }

    async fn update_local_configuration(
        self: Rc<Self>,
        params: registration_server::UpdateLocalConfigurationParams,
        _: registration_server::UpdateLocalConfigurationResults,
    ) -> Result<(), capnp::Error> {
        let p = UpdateLocalConfigurationParams::read_from(params.get()?).map_err(rpc_err)?;
        let reg = self.state.borrow().registered.clone();
        let Some(reg) = reg else {
            return Err(capnp::Error::failed("not registered".into()));
        };
        let config: serde_json::Value = serde_json::from_slice(&p.config)
            .map_err(|e| rpc_err(format!("local configuration is not JSON: {e}")))?;
        let shared = self.shared.clone();
        self.shared
            .rt
            .spawn(async move { store_local_config(&shared, reg.tunnel_id, config).await })
            .await
            .map_err(rpc_err)?
    }
}

/// Checks the credentials against the store and records the connection.
async fn register(
    shared: &Arc<Shared>,
    conn: Transport,
    peer: SocketAddr,
    p: RegisterConnectionParams,
) -> Result<Registered, RegisterFailure> {
    let tunnel = match shared.store.get_tunnel_by_id(p.tunnel_id).await? {
        Some(t) if t.deleted_at.is_none() => t,
        _ => {
            return Err(RegisterFailure::Refused(refusal(
                ConnectionError::UNKNOWN_TUNNEL,
            )));
        }
    };
    // Read at every registration, so a rotated secret refuses new
    // registrations at once while existing connections stay up.
    let secret_ok: bool = tunnel.secret.ct_eq(&p.auth.tunnel_secret).into();
    let account_ok = tunnel.account_id.as_bytes() == p.auth.account_tag.as_bytes();
    if !(secret_ok && account_ok) {
        return Err(RegisterFailure::Refused(refusal(
            ConnectionError::INVALID_SECRET,
        )));
    }

    let client = &p.options.client;
    let conn_id = Uuid::new_v4();
    let now = now_micros();
    // `run_at` is when the connector started: keep the first registration's
    // time while any of its connections is known (HA connections register
    // about a second apart, reconnects much later).
    let run_at = match shared
        .store
        .get_connector(tunnel.id, client.client_id)
        .await?
    {
        Some(k) => k.run_at,
        None => now,
    };
    let registration = Registration {
        connector: ConnectorInfo {
            connector_id: client.client_id,
            arch: client.arch.clone(),
            version: client.version.clone(),
            features: client.features.clone(),
            run_at,
        },
        connection: ConnectionInfo {
            id: conn_id,
            tunnel_id: tunnel.id,
            connector_id: client.client_id,
            conn_index: p.conn_index,
            colo_name: shared.config.location.clone(),
            origin_ip: peer.ip().to_canonical().to_string(),
            opened_at: now,
            edge_node: shared.config.node_id.clone(),
        },
    };
    let removed = shared.store.register_connection(&registration).await?;

    let live = Arc::new(LiveConn::new(
        conn_id,
        tunnel.id,
        client.client_id,
        p.conn_index,
        conn.clone(),
    ));
    // A reconnect of the same connector and index replaces the stale
    // connection (never EDUPCONN: with one edge address cloudflared would
    // loop on it).
    for old in shared.registry.insert(live) {
        tracing::info!(old = %old.id, new = %conn_id, "replacing the connector's previous connection");
        old.conn
            .close(CODE_REPLACED, b"replaced by a new connection");
    }
    for id in removed.connections {
        if let Some(old) = shared.registry.remove(id) {
            old.conn
                .close(CODE_REPLACED, b"replaced by a new connection");
        }
    }
    // The connection may have closed while we were registering; the actor's
    // clean-up may already have run, so undo here.
    if conn.is_closed() {
        forget_connection(shared, conn_id).await;
    }

    let remotely_managed = tunnel.config_src == ConfigSource::Cloudflare;
    tracing::info!(
        tunnel = %tunnel.id, connection = %conn_id, connector = %client.client_id,
        index = p.conn_index, version = %client.version, %peer, transport = conn.name(),
        "tunnel connection registered"
    );
    if remotely_managed {
        crate::push::schedule_push_on_registration(shared, tunnel.id, client.client_id);
    }
    Ok(Registered {
        conn_id,
        tunnel_id: tunnel.id,
        details: ConnectionDetails {
            uuid: conn_id,
            location_name: shared.config.location.clone(),
            tunnel_is_remotely_managed: remotely_managed,
        },
    })
}

/// `updateLocalConfiguration`: kept as the tunnel's configuration with
/// source `local` (the API's "local config" view). A remotely managed
/// tunnel's configuration is never overwritten this way.
async fn store_local_config(
    shared: &Shared,
    tunnel_id: Uuid,
    config: serde_json::Value,
) -> Result<(), capnp::Error> {
    let tunnel = shared
        .store
        .get_tunnel_by_id(tunnel_id)
        .await
        .map_err(rpc_err)?
        .ok_or_else(|| capnp::Error::failed("tunnel no longer exists".into()))?;
    if tunnel.config_src == ConfigSource::Cloudflare {
        tracing::debug!(tunnel = %tunnel_id, "ignoring local configuration of a remotely managed tunnel");
        return Ok(());
    }
    shared
        .store
        .put_config(&tunnel.account_id, tunnel_id, &config, ConfigSource::Local)
        .await
        .map_err(rpc_err)?;
    tracing::info!(tunnel = %tunnel_id, "stored the connector's local configuration");
    Ok(())
}
