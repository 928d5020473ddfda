//! Cap'n Proto RPC on QUIC streams (edge-protocol.md §3, §4.7;
//! capnp-interop.md).
//!
//! capnp-rpc objects are `!Send`, so every RPC session runs as a task
//! pinned to a thread of a [`LocalPoolHandle`]; the rest of the connector
//! talks to it through `Send` channels.
//!
//! - The **control stream** (the first bidi stream we open) runs an RPC
//!   client: Bootstrap and a pipelined `registerConnection`, exactly like
//!   cloudflared; then it idles until we ask for `unregisterConnection`.
//! - **RPC streams** the edge opens (signature `52BB825CDB65`) get an RPC
//!   server whose bootstrap is `CloudflaredServer`; `updateConfiguration`
//!   goes to the [`Orchestrator`].

use std::sync::Arc;
use std::time::Duration;

use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{RpcSystem, twoparty};
use culvert_proto::framing::Limits;
use culvert_proto::registration::{
    ConnectionDetails, ConnectionResponse, RegisterConnectionParams, RegisterUdpSessionResponse,
    UpdateConfigurationParams, UpdateLocalConfigurationParams,
};
use culvert_proto::schema::tunnelrpc_capnp::{
    cloudflared_server, configuration_manager, registration_server, session_manager,
};
use tokio::sync::oneshot;
use tokio_util::task::LocalPoolHandle;

use crate::error::ConnectorError;
use crate::orchestrator::Orchestrator;

/// How long an edge-opened RPC stream may live (HEAD cloudflared ends such
/// sessions after `--rpc-timeout`; 2023.7.3 waits for the edge).
pub const RPC_STREAM_LIFETIME: Duration = Duration::from_secs(30);

type UnregisterReply = oneshot::Sender<Result<(), ConnectorError>>;
/// An `updateLocalConfiguration` request: the JSON and where to answer.
type LocalConfigCall = (Arc<str>, oneshot::Sender<Result<(), ConnectorError>>);

/// A registered control session. Dropping it ends the RPC session.
#[derive(Debug)]
pub struct ControlSession {
    unregister: Option<oneshot::Sender<UnregisterReply>>,
    local_config: tokio::sync::mpsc::Sender<LocalConfigCall>,
    done: tokio::task::JoinHandle<()>,
}

/// Sends `updateLocalConfiguration` on a control session (cloneable, so an
/// uploader task can run beside the session's owner).
#[derive(Debug, Clone)]
pub struct LocalConfigUploader(tokio::sync::mpsc::Sender<LocalConfigCall>);

impl LocalConfigUploader {
    /// Calls `RegistrationServer.updateLocalConfiguration(config)` and waits
    /// (bounded by `timeout`) for the edge's answer.
    pub async fn upload(&self, config: Arc<str>, timeout: Duration) -> Result<(), ConnectorError> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send((config, tx))
            .await
            .map_err(|_| ConnectorError::Task("control session ended".into()))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ConnectorError::Task("control session ended".into())),
            Err(_) => Err(ConnectorError::Timeout {
                what: "updateLocalConfiguration",
                after: timeout,
            }),
        }
    }
}

impl ControlSession {
    /// A handle for `updateLocalConfiguration` calls.
    pub fn local_config_uploader(&self) -> LocalConfigUploader {
        LocalConfigUploader(self.local_config.clone())
    }

    /// Calls `unregisterConnection` and waits for the answer (bounded by
    /// `timeout`). The RPC session then disconnects.
    pub async fn unregister(&mut self, timeout: Duration) -> Result<(), ConnectorError> {
        let Some(tx) = self.unregister.take() else {
            return Ok(());
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        if tx.send(reply_tx).is_err() {
            return Err(ConnectorError::Task("control session already ended".into()));
        }
        match tokio::time::timeout(timeout, reply_rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ConnectorError::Task("control session ended".into())),
            Err(_) => Err(ConnectorError::Timeout {
                what: "unregisterConnection",
                after: timeout,
            }),
        }
    }

    /// Waits (bounded) for the RPC session task to finish, e.g. after
    /// [`ControlSession::unregister`], so the Finish/Abort messages are out.
    pub async fn finish(self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.done).await;
    }
}

/// Opens the RPC client on the control stream and registers. Returns the
/// edge's `ConnectionDetails` and the session, or the refusal/failure.
/// The control stream is any byte pipe: a QUIC stream, or the bodies of
/// the HTTP/2 control-stream request.
pub async fn register<R, W>(
    pool: &LocalPoolHandle,
    send: W,
    recv: R,
    params: RegisterConnectionParams,
    timeout: Duration,
) -> Result<(ConnectionDetails, ControlSession), ConnectorError>
where
    R: futures::AsyncRead + Unpin + Send + 'static,
    W: futures::AsyncWrite + Unpin + Send + 'static,
{
    let (reg_tx, reg_rx) = oneshot::channel::<Result<ConnectionDetails, ConnectorError>>();
    let (unreg_tx, unreg_rx) = oneshot::channel::<UnregisterReply>();
    let (local_tx, local_rx) = tokio::sync::mpsc::channel::<LocalConfigCall>(1);
    let done =
        pool.spawn_pinned(move || control_session(send, recv, params, reg_tx, unreg_rx, local_rx));
    let done = tokio::spawn(async move {
        let _ = done.await;
    });
    let result = match tokio::time::timeout(timeout, reg_rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(ConnectorError::Task(
            "control session ended before registering".into(),
        )),
        Err(_) => Err(ConnectorError::Timeout {
            what: "registerConnection",
            after: timeout,
        }),
    };
    match result {
        Ok(details) => Ok((
            details,
            ControlSession {
                unregister: Some(unreg_tx),
                local_config: local_tx,
                done,
            },
        )),
        Err(e) => {
            done.abort();
            Err(e)
        }
    }
}

async fn control_session<R, W>(
    send: W,
    recv: R,
    params: RegisterConnectionParams,
    reg_tx: oneshot::Sender<Result<ConnectionDetails, ConnectorError>>,
    unreg_rx: oneshot::Receiver<UnregisterReply>,
    mut local_rx: tokio::sync::mpsc::Receiver<LocalConfigCall>,
) where
    R: futures::AsyncRead + Unpin + 'static,
    W: futures::AsyncWrite + Unpin + 'static,
{
    let network = twoparty::VatNetwork::new(
        recv,
        send,
        Side::Client,
        Limits::CONTROL_STREAM.reader_options(),
    );
    let mut rpc = RpcSystem::new(Box::new(network), None);
    let client: registration_server::Client = rpc.bootstrap(Side::Server);
    let disconnector = rpc.get_disconnector();
    let mut rpc_task = tokio::task::spawn_local(rpc);

    // Pipelined on the bootstrap promise: Bootstrap{q=0} then Call{q=1,
    // target=promisedAnswer(0)}, back to back, as cloudflared sends them.
    let mut req = client.register_connection_request();
    let written = params.write_to(req.get()).map_err(ConnectorError::Decode);
    let result = match written {
        Err(e) => Err(e),
        Ok(()) => match req.send().promise.await {
            Err(e) => Err(ConnectorError::Rpc(e)),
            Ok(resp) => resp
                .get()
                .map_err(ConnectorError::Rpc)
                .and_then(|r| ConnectionResponse::read_results(r).map_err(ConnectorError::Decode))
                .and_then(|r| match r {
                    ConnectionResponse::Details(d) => Ok(d),
                    ConnectionResponse::Error(e) => Err(ConnectorError::Refused(e)),
                }),
        },
    };
    let registered = result.is_ok();
    let _ = reg_tx.send(result);
    if registered {
        tokio::pin!(unreg_rx);
        loop {
            tokio::select! {
                reply = &mut unreg_rx => {
                    if let Ok(reply) = reply {
                        let r = client
                            .unregister_connection_request()
                            .send()
                            .promise
                            .await
                            .map(|_| ())
                            .map_err(ConnectorError::Rpc);
                        let _ = reply.send(r);
                    }
                    break;
                }
                Some((config, reply)) = local_rx.recv() => {
                    let mut req = client.update_local_configuration_request();
                    UpdateLocalConfigurationParams {
                        config: config.as_bytes().to_vec(),
                    }
                    .write_to(req.get());
                    let r = req
                        .send()
                        .promise
                        .await
                        .map(|_| ())
                        .map_err(ConnectorError::Rpc);
                    let _ = reply.send(r);
                }
                // The edge or the connection ended the session.
                _ = &mut rpc_task => return,
            }
        }
    }
    drop(client);
    // Sends Abort and lets quinn FIN the stream when the system is dropped.
    let _ = tokio::time::timeout(Duration::from_secs(2), disconnector).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), rpc_task).await;
}

/// Serves one edge-opened RPC stream (signature already read) until the
/// edge disconnects or [`RPC_STREAM_LIFETIME`] passes.
pub async fn serve_rpc_stream(
    pool: &LocalPoolHandle,
    orchestrator: Arc<Orchestrator>,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let task = pool.spawn_pinned(move || async move {
        let network = twoparty::VatNetwork::new(
            recv,
            send,
            Side::Server,
            Limits::RPC_STREAM.reader_options(),
        );
        let server: cloudflared_server::Client =
            capnp_rpc::new_client(CloudflaredServer { orchestrator });
        let rpc = RpcSystem::new(Box::new(network), Some(server.client));
        match tokio::time::timeout(RPC_STREAM_LIFETIME, rpc).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "RPC stream ended"),
            Err(_) => tracing::debug!("RPC stream reached its lifetime"),
        }
    });
    if let Err(e) = task.await {
        tracing::warn!(error = %e, "RPC stream task failed");
    }
}

/// The capability we serve on edge-opened RPC streams.
struct CloudflaredServer {
    orchestrator: Arc<Orchestrator>,
}

impl configuration_manager::Server for CloudflaredServer {
    async fn update_configuration(
        self: capnp::capability::Rc<Self>,
        params: configuration_manager::UpdateConfigurationParams,
        mut results: configuration_manager::UpdateConfigurationResults,
    ) -> Result<(), capnp::Error> {
        let p = UpdateConfigurationParams::read_from(params.get()?)
            .map_err(|e| capnp::Error::failed(e.to_string()))?;
        let resp = self.orchestrator.update_configuration(p.version, &p.config);
        resp.write_results(results.get());
        Ok(())
    }
}

impl session_manager::Server for CloudflaredServer {
    async fn register_udp_session(
        self: capnp::capability::Rc<Self>,
        _params: session_manager::RegisterUdpSessionParams,
        mut results: session_manager::RegisterUdpSessionResults,
    ) -> Result<(), capnp::Error> {
        RegisterUdpSessionResponse {
            err: "UDP sessions are not supported by this connector".into(),
            spans: Vec::new(),
        }
        .write_results(results.get());
        Ok(())
    }

    async fn unregister_udp_session(
        self: capnp::capability::Rc<Self>,
        _params: session_manager::UnregisterUdpSessionParams,
        _results: session_manager::UnregisterUdpSessionResults,
    ) -> Result<(), capnp::Error> {
        Ok(())
    }
}

impl cloudflared_server::Server for CloudflaredServer {}
