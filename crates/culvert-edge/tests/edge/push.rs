//! Remote configuration push (quic-02) and the ingress hostname index.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use culvert_proto::rpc::RpcSummary;
use culvert_proto::{ConnectResponse, Metadata};
use culvert_store::ConfigSource;
use uuid::Uuid;

use crate::harness::*;

fn recorded_config() -> serde_json::Value {
    let t = transcript("quic-02-config-push.json");
    serde_json::from_str(t["pushed_config"].as_str().unwrap()).unwrap()
}

fn teardown_is_clean(rest: &[RpcSummary]) {
    assert!(
        rest.iter()
            .any(|s| matches!(s, RpcSummary::Finish { question_id: 1, .. })),
        "{rest:?}"
    );
    assert!(
        rest.iter().all(|s| matches!(
            s,
            RpcSummary::Release { .. } | RpcSummary::Finish { .. } | RpcSummary::Abort { .. }
        )),
        "{rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic02_config_updated_pushes_once_per_connector_and_indexes_hostnames() {
    let h = Harness::new(ConfigSource::Cloudflare).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let a0 = h.register(a, 0).await;
    let a1 = h.register(a, 1).await;
    let b0 = h.register(b, 0).await;

    let stored = h
        .store
        .put_config(
            &h.account,
            h.tunnel.id,
            &recorded_config(),
            ConfigSource::Cloudflare,
        )
        .await
        .unwrap();
    assert_eq!(stored.version, 1);
    let control = h.edge().control();
    let start = Instant::now();
    control.config_updated(&stored);
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "must not block the API"
    );

    let t = transcript("quic-02-config-push.json");
    for conn in [&a0.conn, &b0.conn] {
        let mut peer = accept_push(conn).await;
        let (call, p) = peer.read_update().await;
        assert_eq!(p.version, 1);
        assert_eq!(p.config, t["pushed_config"].as_str().unwrap().as_bytes());
        // Same capnp-rpc as the recorder: byte-identical Call.
        assert_eq!(call, event(&t, 9));
        teardown_is_clean(&peer.answer(1).await);
    }
    wait_config_version(&h, a, 1).await;
    wait_config_version(&h, b, 1).await;
    assert!(
        no_stream_within(&a1.conn, Duration::from_millis(300)).await,
        "one push per connector"
    );

    // app.test now reaches the tunnel through the ingress index.
    let served = Arc::new(AtomicUsize::new(0));
    for c in [&a0.conn, &a1.conn, &b0.conn] {
        let (conn, served) = (c.clone(), served.clone());
        tokio::spawn(async move {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let _ = recv.read_to_end(1 << 16).await;
                served.fetch_add(1, Ordering::SeqCst);
                let ok = ConnectResponse {
                    error: String::new(),
                    metadata: vec![Metadata::new("HttpStatus", "200")],
                };
                let _ = send.write_all(&ok.encode()).await;
                let _ = send.finish();
            }
        });
    }
    let eyeball = Harness::eyeball().await;
    let r = eyeball
        .get(h.http_url("/"))
        .header("host", "App.Test:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served.load(Ordering::SeqCst), 1);
    let r = eyeball
        .get(h.http_url("/"))
        .header("host", "x.app.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 530);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_pushes_the_stored_config_and_new_versions_follow() {
    let h = Harness::new(ConfigSource::Cloudflare).await;
    h.store
        .put_config(
            &h.account,
            h.tunnel.id,
            &recorded_config(),
            ConfigSource::Cloudflare,
        )
        .await
        .unwrap();
    let connector = Uuid::new_v4();
    let c0 = h.register(connector, 0).await;
    let mut peer = accept_push(&c0.conn).await;
    let (_, p) = peer.read_update().await;
    assert_eq!(p.version, 1);
    teardown_is_clean(&peer.answer(1).await);
    wait_config_version(&h, connector, 1).await;

    // The connector's next HA connection does not push the same version.
    let c1 = h.register(connector, 1).await;
    assert!(no_stream_within(&c1.conn, Duration::from_millis(300)).await);
    assert!(no_stream_within(&c0.conn, Duration::from_millis(10)).await);

    // A new version goes to the connector (on its lowest index).
    let mut cfg = recorded_config();
    cfg["ingress"][0]["hostname"] = "wild.test".into();
    let stored = h
        .store
        .put_config(&h.account, h.tunnel.id, &cfg, ConfigSource::Cloudflare)
        .await
        .unwrap();
    h.edge().control().config_updated(&stored);
    let mut peer = accept_push(&c0.conn).await;
    let (_, p) = peer.read_update().await;
    assert_eq!(p.version, 2);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&p.config).unwrap(),
        cfg
    );
    teardown_is_clean(&peer.answer(2).await);
    wait_config_version(&h, connector, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_configurations_are_never_pushed() {
    let h = Harness::new(ConfigSource::Local).await;
    let c0 = h.register(Uuid::new_v4(), 0).await;
    let stored = h
        .store
        .put_config(
            &h.account,
            h.tunnel.id,
            &recorded_config(),
            ConfigSource::Local,
        )
        .await
        .unwrap();
    h.edge().control().config_updated(&stored);
    assert!(no_stream_within(&c0.conn, Duration::from_millis(500)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostname_index_is_rebuilt_from_the_store_at_start() {
    let h = Harness::new(ConfigSource::Cloudflare).await;
    let mut cfg = recorded_config();
    cfg["ingress"][0]["hostname"] = "*.wild.test".into();
    h.store
        .put_config(&h.account, h.tunnel.id, &cfg, ConfigSource::Cloudflare)
        .await
        .unwrap();
    // A second edge on the same store indexes the stored remote configs.
    let dir = tempfile::tempdir().unwrap();
    let edge = culvert_edge::start_with(
        culvert_edge::EdgeConfig {
            edge_listen: "127.0.0.1:0".parse().unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            edge_cert: None,
            edge_key: None,
            tunnel_domain: "tunnels.test".into(),
            location: "LAB".into(),
            node_id: "node-b".into(),
            management: Default::default(),
            https: None,
        },
        h.store.clone(),
        tuning(),
    )
    .await
    .unwrap();
    let eyeball = Harness::eyeball().await;
    let r = eyeball
        .get(format!("http://{}/", edge.http_addr()))
        .header("host", "a.wild.test")
        .send()
        .await
        .unwrap();
    // Resolved to the tunnel, which has no connection on this edge: 530 —
    // the same as an unknown host, so check the resolution through the
    // tunnel-domain and a miss too, and then with a connection.
    assert_eq!(r.status().as_u16(), 530);
    let conn = within(
        "dial node-b",
        h.client
            .connect_with(
                client_config(edge.ca_pem()),
                edge.quic_addr(),
                "quic.cftunnel.com",
            )
            .unwrap(),
    )
    .await
    .unwrap();
    let mut fake = Fake::open(conn.clone()).await;
    let call = patched_register_call(
        &h.account,
        h.tunnel.id,
        &secret().try_into().unwrap(),
        Uuid::new_v4(),
        0,
    );
    assert!(matches!(
        fake.register_with(&call).await,
        culvert_proto::registration::ConnectionResponse::Details(_)
    ));
    // Registration pushes the stored config; answer it.
    let mut peer = accept_push(&conn).await;
    let _ = peer.read_update().await;
    peer.answer(1).await;
    let req = {
        let (e, url) = (eyeball.clone(), format!("http://{}/", edge.http_addr()));
        tokio::spawn(async move { e.get(url).header("host", "a.wild.test").send().await })
    };
    let mut ds = accept_data_stream(&conn).await;
    let _ = ds.read_body_to_end().await;
    assert_eq!(ds.meta("HttpHost").as_deref(), Some("a.wild.test"));
    let ok = ConnectResponse {
        error: String::new(),
        metadata: vec![Metadata::new("HttpStatus", "200")],
    };
    ds.send.write_all(&ok.encode()).await.unwrap();
    ds.send.finish().unwrap();
    assert_eq!(within("eyeball", req).await.unwrap().unwrap().status(), 200);
    let r = eyeball
        .get(format!("http://{}/", edge.http_addr()))
        .header("host", "wild.test")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        530,
        "the wildcard does not cover its apex"
    );
    edge.shutdown().await;
}
