//! Connection lifecycle: removal from the API, reconnects, shutdown and
//! restart.

use culvert_proto::registration::ConnectionResponse;
use culvert_store::{ConfigSource, TunType};
use uuid::Uuid;

use crate::harness::*;

fn closed_by_edge(conn: &quinn::Connection) -> bool {
    matches!(
        conn.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_removed_closes_them_and_the_store_shows_them_gone() {
    let h = Harness::new(ConfigSource::Cloudflare).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let a0 = h.register(a, 0).await;
    let a1 = h.register(a, 1).await;
    let b0 = h.register(b, 0).await;
    h.wait_connections(3).await;

    // DELETE …/connections?client_id=a
    let removed = h
        .store
        .remove_connections(h.tunnel.id, Some(a))
        .await
        .unwrap();
    assert_eq!(removed.connections.len(), 2);
    h.edge()
        .control()
        .connections_removed(h.tunnel.id, &removed);
    within("a0 closed", a0.conn.closed()).await;
    within("a1 closed", a1.conn.closed()).await;
    assert!(closed_by_edge(&a0.conn) && closed_by_edge(&a1.conn));
    assert!(b0.conn.close_reason().is_none());
    let left = h.wait_connections(1).await;
    assert_eq!(left[0].id, b0.conn_id);
    assert_eq!(h.edge().live_connections(), 1);

    // Delete with cascade: the rest goes, and the credentials stop working.
    let (_, removed) = h
        .store
        .delete_tunnel(&h.account, TunType::CfdTunnel, h.tunnel.id, true)
        .await
        .unwrap();
    h.edge()
        .control()
        .connections_removed(h.tunnel.id, &removed);
    within("b0 closed", b0.conn.closed()).await;
    h.wait_connections(0).await;
    let conn = h.dial().await;
    let mut fake = Fake::open(conn).await;
    let resp = fake
        .register_with(&patched_register_call(
            &h.account,
            h.tunnel.id,
            &secret().try_into().unwrap(),
            b,
            0,
        ))
        .await;
    assert!(
        matches!(&resp, ConnectionResponse::Error(e) if e.cause == "Unauthorized: Failed to get tunnel"),
        "{resp:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_replaces_the_stale_connection_of_the_same_slot() {
    let h = Harness::new(ConfigSource::Cloudflare).await;
    let connector = Uuid::new_v4();
    let old = h.register(connector, 0).await;
    let run_at = h
        .store
        .get_connector(h.tunnel.id, connector)
        .await
        .unwrap()
        .unwrap()
        .run_at;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let other_slot = h.register(connector, 1).await;
    let new = h.register(connector, 0).await;
    within("stale connection closed", old.conn.closed()).await;
    assert!(closed_by_edge(&old.conn));
    assert!(new.conn.close_reason().is_none());
    assert!(other_slot.conn.close_reason().is_none());
    let conns = h.wait_connections(2).await;
    let mut ids: Vec<Uuid> = conns.iter().map(|c| c.id).collect();
    ids.sort();
    let mut want = vec![new.conn_id, other_slot.conn_id];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(h.edge().live_connections(), 2);
    // The connector's start time is its first registration's.
    let k = h
        .store
        .get_connector(h.tunnel.id, connector)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(k.run_at, run_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_and_clears_the_node() {
    let mut h = Harness::new(ConfigSource::Cloudflare).await;
    let fake = h.register(Uuid::new_v4(), 0).await;
    h.wait_connections(1).await;
    let edge = h.edge.take().unwrap();
    within("shutdown", edge.shutdown()).await;
    within("closed", fake.conn.closed()).await;
    h.wait_connections(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reuses_the_ca_and_forgets_the_previous_runs_connections() {
    let h = Harness::new(ConfigSource::Cloudflare).await;
    let _fake = h.register(Uuid::new_v4(), 0).await;
    h.wait_connections(1).await;
    // Same node id and data dir, as after a crash and restart.
    let again = culvert_edge::start_with(
        culvert_edge::EdgeConfig {
            edge_listen: "127.0.0.1:0".parse().unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: h._dir.path().join("edge"),
            edge_cert: None,
            edge_key: None,
            tunnel_domain: culvert_edge::DEFAULT_TUNNEL_DOMAIN.into(),
            location: "LAB".into(),
            node_id: "node-a".into(),
            management: Default::default(),
            https: None,
        },
        h.store.clone(),
        tuning(),
    )
    .await
    .unwrap();
    assert_eq!(again.ca_pem(), h.edge().ca_pem());
    h.wait_connections(0).await;
    again.shutdown().await;
}
