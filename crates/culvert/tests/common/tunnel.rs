//! A remotely managed tunnel with a given ingress, served by our connector
//! in process (shared by the WebSocket, streaming and `access` tests).

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use culvert_connector::connector::{Connector, ConnectorConfig, ConnectorState, TransportProtocol};
use culvert_proto::TunnelToken;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::common::{TestServer, call};

pub struct RunningConnector {
    pub state: Arc<ConnectorState>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), culvert_connector::error::ConnectorError>>,
}

impl RunningConnector {
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
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
    let (status, body) = call(
        s.req(Method::POST, &s.acct("/cfd_tunnel"))
            .json(&json!({"name": name, "config_src": "cloudflare"})),
    )
    .await;
    assert_eq!(status, 200);
    let id = body["result"]["id"].as_str().unwrap().to_string();
    let token = body["result"]["token"].as_str().unwrap().to_string();
    let (status, body) = call(
        s.req(
            Method::PUT,
            &s.acct(&format!("/cfd_tunnel/{id}/configurations")),
        )
        .json(&json!({"config": {"ingress": ingress}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let server = s.server.as_ref().unwrap();
    let mut cfg = ConnectorConfig::new(
        TunnelToken::decode(&token).unwrap(),
        vec![server.edge_addr.to_string()],
    );
    cfg.ca_pem = Some(server.edge_ca_pem.as_bytes().to_vec());
    cfg.ha_connections = 1;
    cfg.grace_period = Duration::from_secs(1);
    cfg.protocol = protocol;
    let connector = Connector::new(cfg).unwrap();
    let state = connector.state();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(connector.run(cancel.clone()));
    tokio::time::timeout(Duration::from_secs(20), state.wait_ready(1))
        .await
        .expect("connector registered in time");
    let http = server.http_addr;
    for _ in 0..200 {
        let r = s
            .client
            .get(format!("http://{http}/"))
            .header("host", probe_host)
            .send()
            .await
            .unwrap();
        // 530: not routed yet; 503: the connector has not applied the
        // pushed configuration yet (its empty default answers 503).
        if r.status() != 530 && r.status() != 503 {
            return RunningConnector {
                state,
                cancel,
                task,
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{probe_host} never became routable");
}
