//! Remotely managed tunnels and our connector in process: creating a tunnel,
//! pushing its ingress, running a connector for it (shared by the end-to-end,
//! HTTP/2, WebSocket, streaming, `access`, `tail` … tests).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use culvert_connector::connector::{Connector, ConnectorConfig, ConnectorState, TransportProtocol};
use culvert_proto::TunnelToken;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::common::{TestServer, call, eventually, public};

/// How a test connector runs; [`Default`] is one connection to the
/// server's own edge with a short grace period.
#[derive(Debug, Clone)]
pub struct ConnectorOptions {
    /// Where to dial; `None` = the server's edge listener.
    pub edge: Option<SocketAddr>,
    pub ha: u8,
    pub protocol: TransportProtocol,
    pub grace_period: Duration,
    /// Spacing of connections 1..n: short, so tests need not wait 1 s each.
    pub registration_interval: Duration,
}

impl ConnectorOptions {
    /// The defaults with `ha` connections.
    pub fn ha(ha: u8) -> Self {
        ConnectorOptions {
            ha,
            ..ConnectorOptions::default()
        }
    }
}

impl Default for ConnectorOptions {
    fn default() -> Self {
        ConnectorOptions {
            edge: None,
            ha: 1,
            protocol: TransportProtocol::Auto,
            grace_period: Duration::from_secs(1),
            registration_interval: Duration::from_millis(20),
        }
    }
}

pub struct RunningConnector {
    pub state: Arc<ConnectorState>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), culvert_connector::error::ConnectorError>>,
}

impl RunningConnector {
    /// Waits (up to 20 s) until `n` connections are registered.
    pub async fn wait_ready(&self, n: usize) {
        self.wait_ready_within(n, Duration::from_secs(20)).await;
    }

    pub async fn wait_ready_within(&self, n: usize, within: Duration) {
        tokio::time::timeout(within, self.state.wait_ready(n))
            .await
            .expect("connector registered in time");
    }

    /// Cancels and waits (up to 10 s), whatever the connector returns.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }

    /// Cancels and asserts the connector shut down without error in time.
    pub async fn stop_cleanly(self) {
        self.cancel.cancel();
        let r = tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("connector stopped in time");
        assert!(matches!(r, Ok(Ok(()))), "{r:?}");
    }
}

/// Creates a remotely managed tunnel; returns its id and token.
pub async fn create_tunnel(s: &TestServer, name: &str) -> (String, String) {
    let (status, body) = call(
        s.req(Method::POST, &s.acct("/cfd_tunnel"))
            .json(&json!({"name": name, "config_src": "cloudflare"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = body["result"]["id"].as_str().unwrap().to_string();
    let token = body["result"]["token"].as_str().unwrap().to_string();
    (id, token)
}

/// PUTs the tunnel's configuration: `ingress` is the `config.ingress` array.
pub async fn put_ingress(s: &TestServer, id: &str, ingress: Value) {
    let (status, body) = call(
        s.req(
            Method::PUT,
            &s.acct(&format!("/cfd_tunnel/{id}/configurations")),
        )
        .json(&json!({"config": {"ingress": ingress}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// An ingress routing `host` to `service`, anything else to a 404.
pub fn host_ingress(host: &str, service: &str) -> Value {
    json!([
        {"hostname": host, "service": service},
        {"service": "http_status:404"}
    ])
}

/// A remotely managed tunnel routing `host` to `service`: its id and token.
pub async fn tunnel_for(s: &TestServer, name: &str, host: &str, service: &str) -> (String, String) {
    let (id, token) = create_tunnel(s, name).await;
    put_ingress(s, &id, host_ingress(host, service)).await;
    (id, token)
}

/// The tunnel's connectors as the API lists them (`…/connections`).
pub async fn connections(s: &TestServer, id: &str) -> Vec<Value> {
    let (_, body) = call(s.req(
        Method::GET,
        &s.acct(&format!("/cfd_tunnel/{id}/connections")),
    ))
    .await;
    body["result"].as_array().unwrap().clone()
}

/// Waits until the tunnel shows one connector with `conns` connections
/// that applied configuration `version`; returns `/connections`.
pub async fn wait_one_connector(
    s: &TestServer,
    id: &str,
    conns: usize,
    version: i64,
) -> Vec<Value> {
    crate::common::eventually(
        &format!("one connector, {conns} connections, config version {version}"),
        || async {
            let cs = connections(s, id).await;
            cs.len() == 1
                && cs[0]["config_version"] == version
                && cs[0]["conns"].as_array().unwrap().len() == conns
        },
    )
    .await;
    connections(s, id).await
}

/// The connector configuration for `token` with `opts`, trusting the
/// server's edge CA.
pub fn connector_config(s: &TestServer, token: &str, opts: &ConnectorOptions) -> ConnectorConfig {
    let server = s.server.as_ref().unwrap();
    let edge = opts.edge.unwrap_or(server.edge_addr);
    let mut cfg = ConnectorConfig::new(TunnelToken::decode(token).unwrap(), vec![edge.to_string()]);
    cfg.ca_pem = Some(server.edge_ca_pem.as_bytes().to_vec());
    cfg.ha_connections = opts.ha;
    cfg.registration_interval = opts.registration_interval;
    cfg.grace_period = opts.grace_period;
    cfg.protocol = opts.protocol;
    cfg
}

/// Starts a connector for `token`; it registers in the background.
pub fn start_connector(s: &TestServer, token: &str, opts: ConnectorOptions) -> RunningConnector {
    let connector = Connector::new(connector_config(s, token, &opts)).unwrap();
    let state = connector.state();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(connector.run(cancel.clone()));
    RunningConnector {
        state,
        cancel,
        task,
    }
}

/// Creates a tunnel with `ingress` (the `config.ingress` array), starts a
/// connector for it and waits until `probe_host` is routed by the pushed
/// configuration.
pub async fn serve_ingress(
    s: &TestServer,
    name: &str,
    ingress: Value,
    probe_host: &str,
) -> RunningConnector {
    serve_ingress_over(s, name, ingress, probe_host, TransportProtocol::Auto).await
}

/// [`serve_ingress`] with the connector on a given transport.
pub async fn serve_ingress_over(
    s: &TestServer,
    name: &str,
    ingress: Value,
    probe_host: &str,
    protocol: TransportProtocol,
) -> RunningConnector {
    let (id, token) = create_tunnel(s, name).await;
    put_ingress(s, &id, ingress).await;
    let c = start_connector(
        s,
        &token,
        ConnectorOptions {
            protocol,
            ..ConnectorOptions::default()
        },
    );
    c.wait_ready(1).await;
    eventually(&format!("{probe_host} routed"), || async {
        let r = public(s, probe_host, "/").send().await.unwrap();
        // 530: not routed yet; 503: the connector has not applied the
        // pushed configuration yet (its empty default answers 503).
        r.status() != 530 && r.status() != 503
    })
    .await;
    c
}
