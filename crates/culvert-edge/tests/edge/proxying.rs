//! The public listener: recorded HTTP exchanges (quic-03/04/05), error
//! pages, streaming with backpressure, connection selection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use culvert_proto::framing::Limits;
use culvert_proto::{ConnectRequest, ConnectResponse, ConnectionType, Metadata};
use culvert_store::ConfigSource;
use futures::StreamExt;
use uuid::Uuid;

use crate::harness::*;

fn recorded_request(file: &str, seq: u64) -> ConnectRequest {
    let t = transcript(file);
    ConnectRequest::decode_message(&event(&t, seq), &Limits::DATA_STREAM)
        .unwrap()
        .unwrap()
        .0
}

/// Checks our ConnectRequest against the recorded one: same dest, type and
/// metadata as a multiset (Cf-Ray compared by shape), plus exactly the
/// forwarding headers the recorder did not send.
fn assert_matches_recorded(ours: &DataStream, recorded: &ConnectRequest) {
    assert_eq!(ours.request.dest, recorded.dest);
    assert_eq!(ours.request.connection_type, ConnectionType::Http);
    let mut mine = ours.metadata();
    for m in &recorded.metadata {
        let pos = if m.key == "HttpHeader:Cf-Ray" {
            mine.iter().position(|(k, v)| {
                k == &m.key
                    && v.len() == 20
                    && v.ends_with("-LAB")
                    && v[..16].bytes().all(|b| b.is_ascii_hexdigit())
            })
        } else {
            mine.iter().position(|(k, v)| k == &m.key && v == &m.val)
        };
        let pos = pos.unwrap_or_else(|| panic!("missing {m:?} in {mine:?}"));
        mine.remove(pos);
    }
    let mut extra: Vec<&str> = mine.iter().map(|(k, _)| k.as_str()).collect();
    extra.sort();
    assert_eq!(
        extra,
        [
            "HttpHeader:Cf-Connecting-Ip",
            "HttpHeader:X-Forwarded-For",
            "HttpHeader:X-Forwarded-Proto"
        ]
    );
    assert_eq!(
        ours.meta("HttpHeader:Cf-Connecting-Ip").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        ours.meta("HttpHeader:X-Forwarded-Proto").as_deref(),
        Some("http")
    );
}

/// The recorded cloudflared→edge bytes of a data stream (preamble,
/// ConnectResponse, body) in one buffer.
fn recorded_answer(file: &str, seqs: &[u64]) -> Vec<u8> {
    let t = transcript(file);
    seqs.iter().flat_map(|s| event(&t, *s)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic03_04_05_recorded_exchanges_round_trip() {
    let h = Harness::new(ConfigSource::Cloudflare).await;
    create_route(&h, "test", "app.test").await;
    let z = h.store.create_zone(&h.account, "other.test").await.unwrap();
    h.store
        .upsert_route(&z, "other.test", h.tunnel.id, false)
        .await
        .unwrap();
    let fake = h.register(Uuid::new_v4(), 0).await;
    let eyeball = Harness::eyeball().await;

    // quic-03: GET http://app.test/
    let req = {
        let e = eyeball.clone();
        let url = h.http_url("/");
        tokio::spawn(async move {
            e.get(url)
                .header("host", "app.test")
                .header("user-agent", "golden-edge/1")
                .header("accept", "*/*")
                .send()
                .await
        })
    };
    let mut ds = accept_data_stream(&fake.conn).await;
    assert!(ds.read_body_to_end().await.is_empty());
    assert_matches_recorded(&ds, &recorded_request("quic-03-http-get.json", 19));
    ds.send
        .write_all(&recorded_answer("quic-03-http-get.json", &[21, 22, 23]))
        .await
        .unwrap();
    ds.send.finish().unwrap();
    let resp = within("GET", req).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let hd = resp.headers();
    assert_eq!(hd["content-type"], "text/html");
    assert_eq!(hd["content-length"], "75");
    assert_eq!(hd["server"], "golden-origin/1.0");
    assert_eq!(hd["date"], "Mon, 01 Jan 2024 00:00:00 GMT");
    assert_eq!(hd["last-modified"], "Mon, 01 Jan 2024 00:00:00 GMT");
    assert!(hd["cf-ray"].to_str().unwrap().ends_with("-LAB"));
    let body = resp.bytes().await.unwrap();
    assert_eq!(
        body,
        Bytes::from(event(&transcript("quic-03-http-get.json"), 23))
    );

    // quic-04: POST http://app.test/submit with a 16-byte body.
    let req = {
        let e = eyeball.clone();
        let url = h.http_url("/submit");
        tokio::spawn(async move {
            e.post(url)
                .header("host", "app.test")
                .header("user-agent", "golden-edge/1")
                .header("content-type", "application/x-www-form-urlencoded")
                .body("name=golden&n=42")
                .send()
                .await
        })
    };
    let mut ds = accept_data_stream(&fake.conn).await;
    assert_eq!(ds.read_body_to_end().await, b"name=golden&n=42");
    let mut recorded = recorded_request("quic-04-http-post.json", 26);
    // reqwest sends `accept: */*` on every request; the recorder did not.
    recorded
        .metadata
        .push(Metadata::new("HttpHeader:Accept", "*/*"));
    assert_matches_recorded(&ds, &recorded);
    ds.send
        .write_all(&recorded_answer("quic-04-http-post.json", &[29, 30, 31]))
        .await
        .unwrap();
    ds.send.finish().unwrap();
    let resp = within("POST", req).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-echo"], "yes");
    assert_eq!(resp.headers()["content-type"], "text/plain");
    let body = resp.bytes().await.unwrap();
    assert_eq!(
        body,
        Bytes::from(event(&transcript("quic-04-http-post.json"), 31))
    );

    // quic-05: the connector's catch-all 404, no body.
    let req = {
        let e = eyeball.clone();
        let url = h.http_url("/nothing");
        tokio::spawn(async move { e.get(url).header("host", "other.test").send().await })
    };
    let mut ds = accept_data_stream(&fake.conn).await;
    let _ = ds.read_body_to_end().await;
    assert_eq!(ds.request.dest, "http://other.test/nothing");
    ds.send
        .write_all(&recorded_answer(
            "quic-05-http-unmatched-404.json",
            &[36, 37],
        ))
        .await
        .unwrap();
    ds.send.finish().unwrap();
    let resp = within("404", req).await.unwrap().unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.bytes().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_hosts_and_tunnels_without_connections_get_530_at_once() {
    let h = Harness::new(ConfigSource::Cloudflare).await;
    create_route(&h, "example.com", "app.example.com").await;
    let eyeball = Harness::eyeball().await;
    for host in [
        "unknown.example".to_owned(),
        format!("{}.cfargotunnel.localhost", h.tunnel.id),
        format!("{}.cfargotunnel.localhost", Uuid::new_v4()),
        "app.example.com".to_owned(),
        "APP.example.com:8080".to_owned(),
    ] {
        let start = Instant::now();
        let r = eyeball
            .get(h.http_url("/x"))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 530, "{host}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let body = r.text().await.unwrap();
        assert!(body.contains("error 1033"), "{body}");
        assert!(body.contains("Argo Tunnel error"));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{host}: not immediate"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_failed_responses_become_502_and_silence_524() {
    let h = Harness::new(ConfigSource::Cloudflare).await;
    let fake = h.register(Uuid::new_v4(), 0).await;
    let host = format!("{}.cfargotunnel.localhost", h.tunnel.id);
    let eyeball = Harness::eyeball().await;

    let mut preamble_garbage = culvert_proto::stream::DATA_STREAM_PREAMBLE.to_vec();
    preamble_garbage.extend_from_slice(&[0xff; 64]);
    let bad_status = ConnectResponse {
        error: String::new(),
        metadata: vec![Metadata::new("HttpStatus", "abc")],
    }
    .encode();
    let boom = ConnectResponse::error("boom").encode();
    let rpc_sig = culvert_proto::stream::RPC_STREAM_SIGNATURE.to_vec();
    let truncated = {
        let ok = ConnectResponse {
            error: String::new(),
            metadata: vec![Metadata::new("HttpStatus", "200")],
        }
        .encode();
        ok[..ok.len() - 5].to_vec()
    };
    enum Answer {
        Bytes(Vec<u8>),
        Reset,
        Silence,
    }
    let cases: Vec<(&str, Answer, u16)> = vec![
        (
            "garbage after the preamble",
            Answer::Bytes(preamble_garbage),
            502,
        ),
        ("bad HttpStatus", Answer::Bytes(bad_status), 502),
        ("connector error", Answer::Bytes(boom), 502),
        ("wrong signature", Answer::Bytes(rpc_sig), 502),
        ("truncated head then FIN", Answer::Bytes(truncated), 502),
        ("FIN without a head", Answer::Bytes(Vec::new()), 502),
        ("stream reset", Answer::Reset, 502),
        ("no answer", Answer::Silence, 524),
    ];
    for (what, answer, status) in cases {
        let req = {
            let (e, url, host) = (eyeball.clone(), h.http_url("/"), host.clone());
            tokio::spawn(async move { e.get(url).header("host", host).send().await })
        };
        let mut ds = accept_data_stream(&fake.conn).await;
        match answer {
            Answer::Bytes(b) => {
                ds.send.write_all(&b).await.unwrap();
                ds.send.finish().unwrap();
            }
            Answer::Reset => {
                ds.send.reset(7u32.into()).unwrap();
            }
            Answer::Silence => {}
        }
        let start = Instant::now();
        let r = within(what, req).await.unwrap().unwrap();
        assert_eq!(r.status().as_u16(), status, "{what}");
        assert!(start.elapsed() < Duration::from_secs(5), "{what}");
        let body = r.text().await.unwrap();
        assert!(body.contains(&status.to_string()), "{what}: {body}");
        drop(ds);
    }
    // The connection survived all of it.
    assert!(fake.conn.close_reason().is_none());
}

/// Serves data streams on a fake connection: answers 200 with the fake's
/// name as the body, counting requests.
fn serve(conn: quinn::Connection, name: &'static str, count: Arc<AtomicUsize>) {
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let count = count.clone();
            tokio::spawn(async move {
                let _ = recv.read_to_end(1 << 20).await;
                count.fetch_add(1, Ordering::SeqCst);
                let ok = ConnectResponse {
                    error: String::new(),
                    metadata: vec![Metadata::new("HttpStatus", "200")],
                };
                let mut out = ok.encode();
                out.extend_from_slice(name.as_bytes());
                let _ = send.write_all(&out).await;
                let _ = send.finish();
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_round_robin_skip_draining_and_retry_unopenable_connections() {
    let h = Harness::new(ConfigSource::Cloudflare).await;
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let a0 = h.register(a, 0).await;
    let mut a1 = h.register(a, 1).await;
    let b0 = h.register(b, 0).await;
    let counts: Vec<Arc<AtomicUsize>> = (0..4).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    serve(a0.conn.clone(), "a0", counts[0].clone());
    serve(a1.conn.clone(), "a1", counts[1].clone());
    serve(b0.conn.clone(), "b0", counts[2].clone());
    let host = format!("{}.cfargotunnel.localhost", h.tunnel.id);
    let eyeball = Harness::eyeball().await;
    let get = |n: usize| {
        let (e, url, host) = (eyeball.clone(), h.http_url("/"), host.clone());
        async move {
            let mut served = Vec::new();
            for _ in 0..n {
                let r = e.get(&url).header("host", &host).send().await.unwrap();
                assert_eq!(r.status(), 200);
                served.push(r.text().await.unwrap());
            }
            served
        }
    };
    let load = |c: &Vec<Arc<AtomicUsize>>| -> Vec<usize> {
        c.iter().map(|x| x.swap(0, Ordering::SeqCst)).collect()
    };

    // Round robin over all three connections (two connectors).
    let served = within("round robin", get(6)).await;
    assert_eq!(load(&counts), [2, 2, 2, 0], "{served:?}");
    // Consecutive requests alternate connectors first: index 0 of a and b,
    // then a's index 1.
    assert_ne!(served[0], served[1]);

    // A draining connection gets no new requests.
    a1.unregister().await;
    let served = within("draining", get(4)).await;
    assert_eq!(load(&counts), [2, 0, 2, 0], "{served:?}");

    // A connection that grants no streams: opening times out and the request
    // is retried on another connection.
    let cfg = client_config_with(h.edge().ca_pem(), |t| {
        t.max_concurrent_bidi_streams(0u32.into());
    });
    let conn = h.dial_with(cfg).await;
    let mut stuck = Fake::open(conn).await;
    let resp = stuck
        .register_with(&patched_register_call(
            &h.account,
            h.tunnel.id,
            &secret().try_into().unwrap(),
            c,
            0,
        ))
        .await;
    assert!(matches!(
        resp,
        culvert_proto::registration::ConnectionResponse::Details(_)
    ));
    let served = within("retry", get(6)).await;
    let l = load(&counts);
    assert_eq!(l[0] + l[2], 6, "{served:?}");
    assert_eq!(l[1], 0);
    drop((a0, b0, stuck));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways_with_backpressure() {
    const TOTAL: usize = 32 << 20;
    const CHUNK: usize = 64 << 10;
    const STALL_BOUND: usize = 20 << 20;
    // The connector answers only after reading the whole upload, slowly
    // (debug build, byte checks): give it time.
    let tuning = culvert_edge::Tuning {
        response_timeout: Some(Duration::from_secs(30)),
        ..tuning()
    };
    let h = Harness::with_tuning(ConfigSource::Cloudflare, tuning).await;
    let fake = h.register(Uuid::new_v4(), 0).await;
    let host = format!("{}.cfargotunnel.localhost", h.tunnel.id);

    // Upload: a streamed (chunked) body the connector does not read yet.
    let produced = Arc::new(AtomicUsize::new(0));
    let p = produced.clone();
    let body_stream = futures::stream::unfold(0usize, move |sent| {
        let p = p.clone();
        async move {
            if sent >= TOTAL {
                return None;
            }
            let chunk = Bytes::from(vec![(sent / CHUNK) as u8; CHUNK]);
            p.fetch_add(CHUNK, Ordering::SeqCst);
            Some((Ok::<_, std::io::Error>(chunk), sent + CHUNK))
        }
    });
    let eyeball = Harness::eyeball().await;
    let req = {
        let (e, url, host) = (eyeball.clone(), h.http_url("/upload"), host.clone());
        tokio::spawn(async move {
            e.post(url)
                .header("host", host)
                .body(reqwest::Body::wrap_stream(body_stream))
                .send()
                .await
        })
    };
    let mut ds = accept_data_stream(&fake.conn).await;
    assert_eq!(
        ds.meta("HttpHeader:Transfer-Encoding").as_deref(),
        Some("chunked")
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let stalled_at = produced.load(Ordering::SeqCst);
    assert!(
        stalled_at < STALL_BOUND,
        "upload not held back: {stalled_at} bytes produced while the connector read nothing"
    );
    // Now read it all, in order, checking every chunk's fill byte.
    fn check(data: &[u8], pos: &mut usize) -> bool {
        let mut ok = true;
        for b in data {
            ok &= *b == (*pos / CHUNK) as u8;
            *pos += 1;
        }
        ok
    }
    let mut pos = 0usize;
    let mut ok = check(&std::mem::take(&mut ds.body), &mut pos);
    while let Some(chunk) = within("read upload", ds.recv.read_chunk(1 << 20, true))
        .await
        .unwrap()
    {
        ok &= check(&chunk.bytes, &mut pos);
    }
    assert_eq!(pos, TOTAL);
    assert!(ok, "upload bytes corrupted");

    // Download: the connector writes more than any buffer while the eyeball
    // waits before reading.
    let written = Arc::new(AtomicUsize::new(0));
    let w = written.clone();
    let mut send = ds.send;
    let writer = tokio::spawn(async move {
        let head = ConnectResponse {
            error: String::new(),
            metadata: vec![
                Metadata::new("HttpStatus", "200"),
                Metadata::new("HttpHeader:Content-Length", TOTAL.to_string()),
            ],
        };
        send.write_all(&head.encode()).await.unwrap();
        let chunk = vec![0x5a; CHUNK];
        for _ in 0..TOTAL / CHUNK {
            send.write_all(&chunk).await.unwrap();
            w.fetch_add(CHUNK, Ordering::SeqCst);
        }
        send.finish().unwrap();
    });
    let resp = within("upload response", req).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let stalled_at = written.load(Ordering::SeqCst);
    assert!(
        stalled_at < STALL_BOUND,
        "download not held back: {stalled_at} bytes written while the eyeball read nothing"
    );
    let mut resp = resp;
    let mut total = 0usize;
    while let Some(chunk) = within("read download", resp.chunk()).await.unwrap() {
        assert!(chunk.iter().all(|b| *b == 0x5a));
        total += chunk.len();
    }
    assert_eq!(total, TOTAL);
    within("writer", writer).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_exchange_resets_the_request_stream_instead_of_finishing_it() {
    let h = Harness::new(ConfigSource::Cloudflare).await;
    let fake = h.register(Uuid::new_v4(), 0).await;
    let host = format!("{}.cfargotunnel.localhost", h.tunnel.id);
    // One chunk, then the eyeball's body stalls; the connector stays silent.
    let body =
        futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b"part")) })
            .chain(futures::stream::pending());
    let eyeball = Harness::eyeball().await;
    let req = {
        let (e, url) = (eyeball.clone(), h.http_url("/slow"));
        tokio::spawn(async move {
            e.post(url)
                .header("host", host)
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
        })
    };
    let mut ds = accept_data_stream(&fake.conn).await;
    let r = within("eyeball", req).await.unwrap().unwrap();
    assert_eq!(r.status().as_u16(), 524);
    // The connector must not see a FIN (a "complete" cut-off body).
    let end = within("request stream end", ds.recv.read_to_end(1 << 20)).await;
    assert!(
        matches!(
            end,
            Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(_)))
        ),
        "{end:?}"
    );
}

/// Resets every data stream it is given without answering, as a connector
/// that is shutting down does with streams it had not started to serve.
fn reset_all(conn: quinn::Connection, count: Arc<AtomicUsize>) {
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            count.fetch_add(1, Ordering::SeqCst);
            let _ = recv.stop(0u32.into());
            let _ = send.reset(0u32.into());
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_requests_lost_before_any_response_byte_are_retried_elsewhere() {
    let h = Harness::new(ConfigSource::Cloudflare).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let a0 = h.register(a, 0).await;
    let b0 = h.register(b, 0).await;
    let (resets, served) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    reset_all(a0.conn.clone(), resets.clone());
    serve(b0.conn.clone(), "b0", served.clone());
    let host = format!("{}.cfargotunnel.localhost", h.tunnel.id);
    let eyeball = Harness::eyeball().await;

    // Round robin sends half of these to the resetting connection first.
    for _ in 0..6 {
        let r = within(
            "GET",
            eyeball.get(h.http_url("/")).header("host", &host).send(),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "b0");
    }
    assert_eq!(served.load(Ordering::SeqCst), 6);
    assert_eq!(resets.load(Ordering::SeqCst), 3);

    // A request with a body may already have reached the origin: never
    // replayed, the eyeball gets 502 from the resetting connection.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let r = within(
            "POST",
            eyeball
                .post(h.http_url("/"))
                .header("host", &host)
                .body("payload")
                .send(),
        )
        .await
        .unwrap();
        statuses.push(r.status().as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 502]);
    assert_eq!(resets.load(Ordering::SeqCst), 4);
    drop((a0, b0));
}
