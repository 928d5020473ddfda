//! Remote configuration push (edge-protocol.md §4.7): one edge-opened RPC
//! stream (`52BB825CDB65`) per push, bootstrap `ConfigurationManager`, call
//! `updateConfiguration(version, json)`, read `latestAppliedVersion`, close.
//! Over HTTP/2 the push is an `update-configuration` request instead
//! (`h2conn::push_config`).
//!
//! One push per connector is enough (its connections share one
//! configuration); the registry remembers which version each connector was
//! sent, so its other HA connections do not trigger the same push again.

use std::sync::Arc;
use std::time::Duration;

use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{RpcSystem, twoparty};
use culvert_proto::registration::{UpdateConfigurationParams, UpdateConfigurationResponse};
use culvert_proto::schema::tunnelrpc_capnp::configuration_manager;
use culvert_proto::stream::RPC_STREAM_SIGNATURE;
use culvert_store::{ConfigSource, TunnelConfig};
use uuid::Uuid;

use crate::Shared;
use crate::registry::LiveConn;
use crate::transport::Transport;

/// Why a push did not complete. A later trigger (reconnect, next change)
/// pushes again, so every variant is worth retrying then.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PushError {
    #[error("opening the RPC stream failed: {0}")]
    Open(#[from] quinn::ConnectionError),
    #[error("writing the RPC stream signature failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("updateConfiguration failed: {0}")]
    Rpc(#[from] capnp::Error),
    #[error("bad updateConfiguration result: {0}")]
    Decode(#[from] culvert_proto::DecodeError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("push task failed: {0}")]
    Task(String),
    #[error("update-configuration over HTTP/2 failed: {0}")]
    Http2(String),
}

/// Replies are one small struct; bound them tightly.
fn reply_reader_options() -> capnp::message::ReaderOptions {
    let mut o = capnp::message::ReaderOptions::new();
    o.traversal_limit_in_words(Some(64 * 1024 / 8));
    o.nesting_limit(16);
    o
}

/// Runs one push on `conn`. Must run on a pinned (`LocalSet`) runtime:
/// capnp-rpc is `!Send`.
pub(crate) async fn push_config(
    conn: quinn::Connection,
    version: i32,
    config: Vec<u8>,
    timeout: Duration,
) -> Result<UpdateConfigurationResponse, PushError> {
    let work = async {
        let (mut send, recv) = conn.open_bi().await?;
        // The signature goes out before the RPC system owns the stream.
        send.write_all(&RPC_STREAM_SIGNATURE).await?;
        let network = twoparty::VatNetwork::new(recv, send, Side::Client, reply_reader_options());
        let mut rpc = RpcSystem::new(Box::new(network), None);
        let manager: configuration_manager::Client = rpc.bootstrap(Side::Server);
        let disconnector = rpc.get_disconnector();
        let rpc_task = tokio::task::spawn_local(rpc);
        let mut req = manager.update_configuration_request();
        UpdateConfigurationParams { version, config }.write_to(req.get());
        let result = async {
            let reply = req.send().promise.await?;
            Ok::<_, PushError>(UpdateConfigurationResponse::read_results(reply.get()?)?)
        }
        .await;
        drop(manager);
        // Release/Finish/Abort, then the stream's FIN when the system drops.
        let _ = tokio::time::timeout(Duration::from_secs(2), disconnector).await;
        rpc_task.abort();
        result
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| PushError::Timeout(timeout))?
}

/// After a registration of a remotely managed tunnel: push its stored
/// remote configuration to that connector, off the registration path.
pub(crate) fn schedule_push_on_registration(
    shared: &Arc<Shared>,
    tunnel_id: Uuid,
    connector_id: Uuid,
) {
    let shared = shared.clone();
    shared.rt.clone().spawn(async move {
        let config = match shared.store.get_config(tunnel_id).await {
            Ok(Some(c)) if c.source == ConfigSource::Cloudflare => c,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(tunnel = %tunnel_id, error = %e, "cannot read the configuration to push");
                return;
            }
        };
        let target = shared
            .registry
            .one_per_connector(tunnel_id)
            .into_iter()
            .find(|c| c.connector_id == connector_id);
        if let Some(conn) = target {
            push_to_connector(&shared, conn, &config).await;
        }
    });
}

/// After `config_updated`: push to every connector of the tunnel, if the
/// tunnel is remotely managed. Spawned; never blocks the caller.
pub(crate) fn schedule_push_all(shared: &Arc<Shared>, config: TunnelConfig) {
    let shared = shared.clone();
    shared.rt.clone().spawn(async move {
        match shared.store.get_tunnel_by_id(config.tunnel_id).await {
            Ok(Some(t)) if t.config_src == ConfigSource::Cloudflare => {}
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(tunnel = %config.tunnel_id, error = %e, "cannot read the tunnel to push its configuration");
                return;
            }
        }
        let pushes = shared
            .registry
            .one_per_connector(config.tunnel_id)
            .into_iter()
            .map(|conn| {
                let shared = shared.clone();
                let config = config.clone();
                async move { push_to_connector(&shared, conn, &config).await }
            });
        futures::future::join_all(pushes).await;
    });
}

async fn push_to_connector(shared: &Arc<Shared>, conn: Arc<LiveConn>, config: &TunnelConfig) {
    let (tunnel_id, connector_id) = (conn.tunnel_id, conn.connector_id);
    if !shared
        .registry
        .claim_push(tunnel_id, connector_id, config.version)
    {
        return;
    }
    // cloudflared's version is an Int32; ours never gets near the limit.
    let version = i32::try_from(config.version).unwrap_or(i32::MAX);
    let json = match serde_json::to_vec(&config.config) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(tunnel = %tunnel_id, error = %e, "cannot serialise the configuration");
            shared
                .registry
                .release_push(tunnel_id, connector_id, config.version);
            return;
        }
    };
    let timeout = shared.tuning.push_timeout;
    let outcome = match &conn.conn {
        Transport::Quic(quic) => {
            let quic = quic.clone();
            shared
                .rpc_pool
                .spawn_pinned(move || push_config(quic, version, json, timeout))
                .await
                .unwrap_or_else(|e| Err(PushError::Task(e.to_string())))
        }
        Transport::Http2(h2) => {
            crate::h2conn::push_config(h2, version, &config.config, timeout).await
        }
    };
    match outcome {
        Ok(resp) => {
            let outcome = if resp.err.is_empty() {
                "ok"
            } else {
                "rejected"
            };
            shared.metrics.config_pushes.inc(outcome);
            if !resp.err.is_empty() {
                tracing::warn!(tunnel = %tunnel_id, connector = %connector_id, version, err = %resp.err, "connector rejected the configuration");
            } else {
                tracing::info!(tunnel = %tunnel_id, connector = %connector_id, applied = resp.latest_applied_version, "configuration pushed");
            }
            // What the connector reports it runs (cloudflared starts at -1).
            if resp.latest_applied_version >= 0
                && let Err(e) = shared
                    .store
                    .set_config_version(
                        tunnel_id,
                        connector_id,
                        i64::from(resp.latest_applied_version),
                    )
                    .await
            {
                tracing::warn!(tunnel = %tunnel_id, error = %e, "cannot record the applied configuration version");
            }
        }
        Err(e) => {
            shared.metrics.config_pushes.inc("failed");
            tracing::warn!(tunnel = %tunnel_id, connector = %connector_id, error = %e, "configuration push failed");
            shared
                .registry
                .release_push(tunnel_id, connector_id, config.version);
        }
    }
}
