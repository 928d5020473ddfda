//! Control stream: registration (quic-01), refusal (quic-07), local config
//! (quic-08), unregister + shutdown (quic-06), and hostile input.

use std::time::{Duration, Instant};

use culvert_proto::framing::{self, Limits};
use culvert_proto::registration::{ConnectionError, ConnectionResponse, Method};
use culvert_proto::rpc::{RpcSummary, TunnelCall, TunnelReturn};
use culvert_store::{ConfigSource, TunType, TunnelPatch};
use uuid::Uuid;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic01_registration_is_recorded_and_quic06_unregister_drains_then_close_forgets() {
    let h = Harness::new(ConfigSource::Cloudflare).await;
    let connector = Uuid::parse_str("956918a2-1ccc-459f-bf6a-0fcdc690d3cd").unwrap();
    let conn = h.dial().await;
    let mut fake = Fake::open(conn.clone()).await;
    let call = patched_register_call(
        &h.account,
        h.tunnel.id,
        &secret().try_into().unwrap(),
        connector,
        0,
    );
    let resp = fake.register_with(&call).await;
    let ConnectionResponse::Details(details) = resp else {
        panic!("{resp:?}")
    };
    assert_eq!(details.location_name, "LAB");
    assert!(details.tunnel_is_remotely_managed);
    assert!(!details.uuid.is_nil());

    // The store's registry has the connection with what the edge saw.
    let conns = h.wait_connections(1).await;
    let c = &conns[0];
    assert_eq!(c.id, details.uuid);
    assert_eq!(c.connector_id, connector);
    assert_eq!(c.conn_index, 0);
    assert_eq!(c.colo_name, "LAB");
    assert_eq!(c.origin_ip, "127.0.0.1");
    assert_eq!(c.edge_node, "node-a");
    let k = h
        .store
        .get_connector(h.tunnel.id, connector)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(k.version, "2023.7.3");
    assert_eq!(k.arch, "linux_amd64");
    let mut features = k.features.clone();
    features.sort();
    assert_eq!(
        features,
        [
            "allow_remote_config",
            "management_logs",
            "serialized_headers",
            "support_datagram_v2",
            "support_quic_eof"
        ]
    );
    assert_eq!(h.edge().live_connections(), 1);

    // A request through the tunnel reaches this connection…
    let url = h.http_url("/");
    let host = format!("{}.cfargotunnel.localhost", h.tunnel.id);
    let eyeball = Harness::eyeball().await;
    let req = {
        let (eyeball, url, host) = (eyeball.clone(), url.clone(), host.clone());
        tokio::spawn(async move { eyeball.get(url).header("host", host).send().await })
    };
    let mut ds = accept_data_stream(&conn).await;
    let _ = ds.read_body_to_end().await;
    let ok = culvert_proto::ConnectResponse {
        error: String::new(),
        metadata: vec![culvert_proto::Metadata::new("HttpStatus", "204")],
    };
    ds.send.write_all(&ok.encode()).await.unwrap();
    ds.send.finish().unwrap();
    assert_eq!(within("eyeball", req).await.unwrap().unwrap().status(), 204);

    // …but not after unregisterConnection (draining): 530 at once.
    fake.unregister().await;
    let r = eyeball
        .get(&url)
        .header("host", &host)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 530);
    // Still registered in the store until the connection ends.
    h.wait_connections(1).await;

    fake.shutdown().await;
    h.wait_connections(0).await;
    let deadline = Instant::now() + T;
    while h.edge().live_connections() != 0 {
        assert!(Instant::now() < deadline, "live registry not emptied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn refused(h: &Harness, call: Vec<u8>) -> ConnectionError {
    let conn = h.dial().await;
    let mut fake = Fake::open(conn.clone()).await;
    let resp = fake.register_with(&call).await;
    let ConnectionResponse::Error(e) = resp else {
        panic!("expected a refusal, got {resp:?}")
    };
    // cloudflared then tears down (quic-07 canonical variant).
    let t = transcript("quic-07-registration-refused.json");
    let mut tail = event(&t, 7);
    tail.extend(event(&t, 8));
    fake.write(&tail).await;
    let _ = fake.send.finish();
    conn.close(0u32.into(), b"");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic07_refusals_carry_the_exact_unauthorized_causes() {
    let h = Harness::new(ConfigSource::Cloudflare).await;
    let good: [u8; 32] = secret().try_into().unwrap();
    let mut bad = good;
    bad[31] ^= 1;
    let connector = Uuid::new_v4();

    let e = refused(
        &h,
        patched_register_call(&h.account, h.tunnel.id, &bad, connector, 0),
    )
    .await;
    assert_eq!(e.cause, "Unauthorized: Invalid tunnel secret");
    assert!(e.should_retry);
    assert!(e.retry_after_ns > 0);

    let other_account = "ffffffffffffffffffffffffffffffff";
    let e = refused(
        &h,
        patched_register_call(other_account, h.tunnel.id, &good, connector, 0),
    )
    .await;
    assert_eq!(e.cause, "Unauthorized: Invalid tunnel secret");

    let e = refused(
        &h,
        patched_register_call(&h.account, Uuid::new_v4(), &good, connector, 0),
    )
    .await;
    assert_eq!(e.cause, "Unauthorized: Failed to get tunnel");

    // A deleted tunnel's credentials are revoked.
    h.store
        .delete_tunnel(&h.account, TunType::CfdTunnel, h.tunnel.id, true)
        .await
        .unwrap();
    let e = refused(
        &h,
        patched_register_call(&h.account, h.tunnel.id, &good, connector, 0),
    )
    .await;
    assert_eq!(e.cause, "Unauthorized: Failed to get tunnel");
    assert!(
        h.store
            .list_connectors(h.tunnel.id)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_that_stays_is_closed_after_the_registration_timeout() {
    let h = Harness::new(ConfigSource::Cloudflare).await;
    let mut bad: [u8; 32] = secret().try_into().unwrap();
    bad[0] ^= 0xff;
    let conn = h.dial().await;
    let mut fake = Fake::open(conn.clone()).await;
    let resp = fake
        .register_with(&patched_register_call(
            &h.account,
            h.tunnel.id,
            &bad,
            Uuid::new_v4(),
            0,
        ))
        .await;
    assert!(matches!(resp, ConnectionResponse::Error(_)));
    // The fake keeps the connection open; the edge closes it (3 s in tests).
    let start = Instant::now();
    within("edge closes", conn.closed()).await;
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic08_local_configuration_is_stored_with_source_local() {
    let h = Harness::new(ConfigSource::Local).await;
    let conn = h.dial().await;
    let mut fake = Fake::open(conn).await;
    let call = patched_register_call(
        &h.account,
        h.tunnel.id,
        &secret().try_into().unwrap(),
        Uuid::new_v4(),
        0,
    );
    let ConnectionResponse::Details(d) = fake.register_with(&call).await else {
        panic!("refused")
    };
    assert!(!d.tunnel_is_remotely_managed);

    let t = transcript("quic-08-registration-local-config.json");
    let upload = event(&t, 7);
    let (msg, _) = framing::decode_message(&upload, &Limits::CONTROL_STREAM)
        .unwrap()
        .unwrap();
    let Some((_, _, TunnelCall::UpdateLocalConfiguration(p))) =
        TunnelCall::read_call(msg.get_root().unwrap()).unwrap()
    else {
        panic!("recorded call")
    };
    let want: serde_json::Value = serde_json::from_slice(&p.config).unwrap();
    fake.write(&upload).await;
    let f = fake.next_frame().await.expect("Return");
    let (msg, _) = framing::decode_message(&f, &Limits::CONTROL_STREAM)
        .unwrap()
        .unwrap();
    assert_eq!(
        TunnelReturn::read_return(msg.get_root().unwrap(), Method::UpdateLocalConfiguration)
            .unwrap(),
        Some((1, TunnelReturn::Empty))
    );
    fake.write(&event(&t, 9)).await;
    let cfg = h.store.get_config(h.tunnel.id).await.unwrap().unwrap();
    assert_eq!(cfg.source, ConfigSource::Local);
    assert_eq!(cfg.config, want);
    assert_eq!(cfg.config["warp-routing"]["enabled"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_register_are_closed() {
    let h = Harness::new(ConfigSource::Cloudflare).await;
    // No stream at all.
    let idle = h.dial().await;
    // A control stream with only a Bootstrap.
    let half = h.dial().await;
    let mut fake = Fake::open(half.clone()).await;
    let t = transcript("quic-01-registration.json");
    fake.write(&event(&t, 1)).await;
    let start = Instant::now();
    within("idle closed", idle.closed()).await;
    within("half closed", half.closed()).await;
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(h.edge().live_connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_control_streams_are_closed_cleanly() {
    // A long registration timeout, so a close within T is the edge reacting
    // to the bytes, not the timeout.
    let tuning = culvert_edge::Tuning {
        registration_timeout: Duration::from_secs(60),
        ..tuning()
    };
    let h = Harness::with_tuning(ConfigSource::Cloudflare, tuning).await;
    let t = transcript("quic-01-registration.json");
    let call = patched_register_call(
        &h.account,
        h.tunnel.id,
        &secret().try_into().unwrap(),
        Uuid::new_v4(),
        0,
    );

    // Garbage: a segment count far above any limit.
    let conn = h.dial().await;
    let mut fake = Fake::open(conn.clone()).await;
    fake.write(&[0xff; 64]).await;
    within("garbage closes", conn.closed()).await;

    // A segment table announcing a 1 GiB message: refused before allocation.
    let conn = h.dial().await;
    let mut fake = Fake::open(conn.clone()).await;
    fake.write(&[0, 0, 0, 0, 0, 0, 0, 8]).await;
    within("oversized closes", conn.closed()).await;

    // A truncated frame: Bootstrap, half of the Call, then FIN.
    let conn = h.dial().await;
    let mut fake = Fake::open(conn.clone()).await;
    let mut bytes = event(&t, 1);
    bytes.extend_from_slice(&call[..call.len() / 2]);
    fake.write(&bytes).await;
    fake.send.finish().unwrap();
    // The bootstrap is answered; the registration never happens.
    let f = fake.next_frame().await;
    if let Some(f) = f {
        let (s, _) = RpcSummary::decode(&f, &Limits::CONTROL_STREAM)
            .unwrap()
            .unwrap();
        assert!(
            matches!(
                s,
                RpcSummary::Return { answer_id: 0, .. } | RpcSummary::Abort { .. }
            ),
            "{s:?}"
        );
    }
    within("truncated closes", conn.closed()).await;

    // A well-formed registration with a bad credential (an empty secret).
    let conn = h.dial().await;
    let mut fake = Fake::open(conn.clone()).await;
    let (msg, _) = framing::decode_message(&call, &Limits::CONTROL_STREAM)
        .unwrap()
        .unwrap();
    let Some((_, target, TunnelCall::RegisterConnection(mut p))) =
        TunnelCall::read_call(msg.get_root().unwrap()).unwrap()
    else {
        panic!()
    };
    p.auth.tunnel_secret = vec![];
    let bad =
        culvert_proto::rpc::encode_call(1, target, &TunnelCall::RegisterConnection(p)).unwrap();
    let resp = fake.register_with(&bad).await;
    assert!(
        matches!(&resp, ConnectionResponse::Error(e) if e.cause == "Unauthorized: Invalid tunnel secret"),
        "{resp:?}"
    );
    conn.close(0u32.into(), b"");

    // The edge still works afterwards.
    let fake = h.register(Uuid::new_v4(), 0).await;
    h.wait_connections(1).await;
    fake.shutdown().await;
    h.wait_connections(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_rotation_refuses_new_registrations_and_keeps_existing_ones() {
    let h = Harness::new(ConfigSource::Cloudflare).await;
    let fake = h.register(Uuid::new_v4(), 0).await;
    let new_secret: Vec<u8> = (100u8..132).collect();
    h.store
        .update_tunnel(
            &h.account,
            TunType::CfdTunnel,
            h.tunnel.id,
            TunnelPatch {
                secret: Some(new_secret.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let old: [u8; 32] = secret().try_into().unwrap();
    let e = refused(
        &h,
        patched_register_call(&h.account, h.tunnel.id, &old, Uuid::new_v4(), 1),
    )
    .await;
    assert_eq!(e.cause, "Unauthorized: Invalid tunnel secret");
    // The new secret works; the old connection is still up.
    let conn = h.dial().await;
    let mut fresh = Fake::open(conn).await;
    let resp = fresh
        .register_with(&patched_register_call(
            &h.account,
            h.tunnel.id,
            &new_secret.clone().try_into().unwrap(),
            Uuid::new_v4(),
            0,
        ))
        .await;
    assert!(matches!(resp, ConnectionResponse::Details(_)));
    assert!(fake.conn.close_reason().is_none());
    h.wait_connections(2).await;
}
