//! Tests against the recorded cloudflared 2023.7.3 transcripts
//! (`shared/testdata/cloudflared-2023.7.3`, see its README).

use crate::connect::{ConnectRequest, ConnectResponse, ConnectionType};
use crate::framing::Limits;
use crate::http_meta::{HttpRequestHead, HttpResponseHead};
use crate::stream::{DATA_STREAM_PREAMBLE, StreamKind, classify_stream};
use crate::testutil::{event_bytes, events, transcript};

fn pairs(v: &serde_json::Value) -> Vec<(String, String)> {
    v.as_array()
        .expect("metadata array")
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// quic-03/04/05: decode every data-stream head, check it against the
/// recorder's decoded form, re-encode byte-exactly, and read the HTTP heads.
#[test]
fn quic_data_streams() {
    for (file, status, body_len) in [
        ("quic-03-http-get.json", 200, 75),
        ("quic-04-http-post.json", 200, 85),
        ("quic-05-http-unmatched-404.json", 404, 0),
    ] {
        let t = transcript(file);
        let preambles: Vec<_> = events(&t, |e| e["kind"] == "preamble").collect();
        assert_eq!(preambles.len(), 2, "{file}");
        for p in preambles {
            assert_eq!(event_bytes(p), DATA_STREAM_PREAMBLE);
            assert_eq!(
                classify_stream(&event_bytes(p)).unwrap(),
                Some(StreamKind::Data)
            );
        }

        let req_ev = events(&t, |e| {
            e["kind"] == "capnp-message" && e["dir"] == "edge->cloudflared"
        })
        .next()
        .expect("ConnectRequest");
        let bytes = event_bytes(req_ev);
        let (req, used) = ConnectRequest::decode_message(&bytes, &Limits::DATA_STREAM)
            .unwrap()
            .unwrap();
        assert_eq!(used, bytes.len());
        let d = &req_ev["decoded"];
        assert_eq!(req.dest, d["dest"].as_str().unwrap());
        assert_eq!(req.connection_type, ConnectionType::Http);
        let got: Vec<_> = req
            .metadata
            .iter()
            .map(|m| (m.key.clone(), m.val.clone()))
            .collect();
        assert_eq!(got, pairs(&d["metadata"]), "{file}");
        assert_eq!(req.to_message_bytes(), bytes, "{file}: re-encode");

        // Preamble + message + body as one buffer, as a reader would see it.
        let mut stream = DATA_STREAM_PREAMBLE.to_vec();
        stream.extend(&bytes);
        let body: Vec<u8> = events(&t, |e| {
            e["kind"] == "body" && e["dir"] == "edge->cloudflared"
        })
        .flat_map(event_bytes)
        .collect();
        stream.extend(&body);
        let (again, used) = ConnectRequest::decode(&stream, &Limits::DATA_STREAM)
            .unwrap()
            .unwrap();
        assert_eq!(again, req);
        assert_eq!(&stream[used..], &body[..]);

        let head = HttpRequestHead::from_connect_request(&req).unwrap();
        assert_eq!(head.has_body(), !body.is_empty(), "{file}: body rule");
        assert_eq!(head.to_connect_request().unwrap(), req);

        let resp_ev = events(&t, |e| {
            e["kind"] == "capnp-message" && e["dir"] == "cloudflared->edge"
        })
        .next()
        .expect("ConnectResponse");
        let bytes = event_bytes(resp_ev);
        let (resp, used) = ConnectResponse::decode_message(&bytes, &Limits::DATA_STREAM)
            .unwrap()
            .unwrap();
        assert_eq!(used, bytes.len());
        assert!(!resp.is_error());
        let got: Vec<_> = resp
            .metadata
            .iter()
            .map(|m| (m.key.clone(), m.val.clone()))
            .collect();
        assert_eq!(got, pairs(&resp_ev["decoded"]["metadata"]), "{file}");
        // These bytes come from cloudflared's Go encoder: ours must agree.
        assert_eq!(
            resp.to_message_bytes(),
            bytes,
            "{file}: re-encode (Go bytes)"
        );

        let head = HttpResponseHead::from_connect_response(&resp).unwrap();
        assert_eq!(head.status, status);
        if body_len > 0 {
            let cl: Vec<_> = head.header("content-length").collect();
            assert_eq!(cl, [body_len.to_string()]);
        }
        let body_bytes: usize = events(&t, |e| {
            e["kind"] == "body" && e["dir"] == "cloudflared->edge"
        })
        .map(|e| e["len"].as_u64().unwrap() as usize)
        .sum();
        assert_eq!(body_bytes, body_len);
    }
}

use crate::registration::{ConnectionResponse, Method};
use crate::rpc::{self, RpcSummary, Target, TunnelCall, TunnelReturn};
use crate::stream::RPC_STREAM_SIGNATURE;
use crate::testutil::{hex, unhex};
use std::collections::HashMap;

/// One recorded RPC frame: (stream, direction, bytes, recorder's decoding).
struct Frame {
    file: String,
    stream: i64,
    dir: String,
    bytes: Vec<u8>,
    decoded: serde_json::Value,
    raw: serde_json::Value,
}

fn rpc_frames(file: &str) -> Vec<Frame> {
    let t = transcript(file);
    let mut out = Vec::new();
    for e in t["events"].as_array().unwrap() {
        let stream = e["stream"].as_i64().unwrap_or(-1);
        let dir = e["dir"].as_str().unwrap_or_default().to_owned();
        if e["kind"] == "rpc-message" {
            out.push(Frame {
                file: file.into(),
                stream,
                dir,
                bytes: event_bytes(e),
                decoded: e["decoded"].clone(),
                raw: e.clone(),
            });
        } else if let Some(msgs) = e["rpc_messages"].as_array() {
            for m in msgs {
                out.push(Frame {
                    file: file.into(),
                    stream,
                    dir: dir.clone(),
                    bytes: unhex(m["hex"].as_str().unwrap()),
                    decoded: m["decoded"].clone(),
                    raw: m.clone(),
                });
            }
        }
    }
    out
}

const RPC_FILES: [&str; 7] = [
    "quic-01-registration.json",
    "quic-02-config-push.json",
    "quic-06-graceful-shutdown.json",
    "quic-07-registration-refused.json",
    "quic-08-registration-local-config.json",
    "h2-01-registration.json",
    "h2-06-graceful-shutdown.json",
];

fn uuid_hex(s: &str) -> String {
    s.replace('-', "")
}

fn check_register_params(f: &Frame, p: &crate::registration::RegisterConnectionParams) {
    let d = &f.decoded["params"];
    assert_eq!(
        p.auth.account_tag,
        d["auth"]["accountTag"].as_str().unwrap()
    );
    assert_eq!(
        hex(&p.auth.tunnel_secret),
        d["auth"]["tunnelSecretHex"].as_str().unwrap()
    );
    assert_eq!(p.tunnel_id.to_string(), d["tunnelId"].as_str().unwrap());
    assert_eq!(u64::from(p.conn_index), d["connIndex"].as_u64().unwrap());
    let o = &d["options"];
    let c = &p.options.client;
    assert_eq!(
        c.client_id.to_string(),
        o["client"]["clientId"].as_str().unwrap()
    );
    let want: Vec<&str> = o["client"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(c.features, want);
    assert_eq!(c.version, "2023.7.3");
    assert_eq!(c.arch, "linux_amd64");
    let ip = p.options.origin_local_ip.unwrap();
    assert_eq!(ip.to_string(), o["originLocalIp"].as_str().unwrap());
    assert_eq!(
        p.options.replace_existing,
        o["replaceExisting"].as_bool().unwrap()
    );
    assert_eq!(
        u64::from(p.options.compression_quality),
        o["compressionQuality"].as_u64().unwrap()
    );
    assert_eq!(
        u64::from(p.options.num_previous_attempts),
        o["numPreviousAttempts"].as_u64().unwrap()
    );
    // The README's variable range [328, 344) is the connector ID.
    assert_eq!(&f.bytes[328..344], c.client_id.as_bytes(), "{}", f.file);
    // Fixed identity (README "Fixed test identity").
    assert_eq!(p.auth.account_tag, "0123456789abcdef0123456789abcdef");
    assert_eq!(p.auth.tunnel_secret, (0u8..32).collect::<Vec<_>>());
}

/// Every RPC frame of every transcript: the summary matches the recorder's
/// decoding, tunnelrpc params/results decode to the recorded values, and
/// frames we can build are byte-identical to what cloudflared (Go) and the
/// recorder edge (capnp-rust) sent.
#[test]
fn rpc_frames_decode_and_reencode() {
    let limits = Limits::CONTROL_STREAM;
    let mut seen_methods = Vec::new();
    for file in RPC_FILES {
        // (stream, caller direction, question id) → method.
        let mut questions: HashMap<(i64, String, u32), Method> = HashMap::new();
        for f in rpc_frames(file) {
            let ctx = format!("{file} {} {}", f.dir, f.decoded);
            let (summary, used) = RpcSummary::decode(&f.bytes, &limits)
                .unwrap()
                .unwrap_or_else(|| panic!("incomplete frame: {ctx}"));
            assert_eq!(used, f.bytes.len(), "{ctx}");
            let d = &f.decoded;
            match &summary {
                RpcSummary::Bootstrap { question_id } => {
                    assert_eq!(d["type"], "bootstrap");
                    assert_eq!(u64::from(*question_id), d["questionId"].as_u64().unwrap());
                    assert_eq!(rpc::encode_bootstrap(*question_id), f.bytes, "{ctx}");
                }
                RpcSummary::Finish {
                    question_id,
                    release_result_caps,
                } => {
                    assert_eq!(d["type"], "finish");
                    assert_eq!(u64::from(*question_id), d["questionId"].as_u64().unwrap());
                    assert_eq!(
                        rpc::encode_finish(*question_id, *release_result_caps),
                        f.bytes,
                        "{ctx}"
                    );
                }
                RpcSummary::Release {
                    id,
                    reference_count,
                } => {
                    assert_eq!(d["type"], "release");
                    assert_eq!(rpc::encode_release(*id, *reference_count), f.bytes, "{ctx}");
                }
                RpcSummary::Abort { reason } => {
                    assert_eq!(d["type"], "abort");
                    assert_eq!(reason, d["reason"].as_str().unwrap());
                    // Structural only: our rpc.capnp's Exception has a
                    // second pointer (`trace`) that Go's schema lacks.
                    let (again, _) = RpcSummary::decode(&rpc::encode_abort(reason), &limits)
                        .unwrap()
                        .unwrap();
                    assert_eq!(&again, &summary);
                }
                RpcSummary::Call {
                    question_id,
                    target,
                    interface_id,
                    method,
                    ..
                } => {
                    assert_eq!(d["type"], "call");
                    assert_eq!(
                        format!("{interface_id:#x}"),
                        d["interfaceId"].as_str().unwrap()
                    );
                    let method = method.expect("tunnelrpc method");
                    seen_methods.push(method);
                    match target {
                        Target::ImportedCap(id) => {
                            assert_eq!(u64::from(*id), d["target"]["importedCap"].as_u64().unwrap())
                        }
                        Target::PromisedAnswer { question_id, .. } => assert_eq!(
                            u64::from(*question_id),
                            d["target"]["promisedAnswer"]["questionId"]
                                .as_u64()
                                .unwrap()
                        ),
                    }
                    questions.insert((f.stream, f.dir.clone(), *question_id), method);
                    let (q, tgt, call) = TunnelCall::decode(&f.bytes, &limits)
                        .unwrap()
                        .unwrap()
                        .0
                        .expect("tunnel call");
                    assert_eq!((q, tgt), (*question_id, *target));
                    match &call {
                        TunnelCall::RegisterConnection(p) => check_register_params(&f, p),
                        TunnelCall::UpdateConfiguration(p) => {
                            assert_eq!(
                                i64::from(p.version),
                                d["params"]["version"].as_i64().unwrap()
                            );
                            assert_eq!(
                                p.config,
                                d["params"]["config"].as_str().unwrap().as_bytes()
                            );
                        }
                        TunnelCall::UpdateLocalConfiguration(p) => {
                            assert_eq!(
                                p.config,
                                d["params"]["config"].as_str().unwrap().as_bytes()
                            );
                            let json: serde_json::Value =
                                serde_json::from_slice(&p.config).unwrap();
                            assert!(json["__configuration_flags"].is_object());
                        }
                        TunnelCall::UnregisterConnection => {}
                        other => panic!("unexpected call {other:?}"),
                    }
                    // Checked structurally: Go places the empty
                    // promisedAnswer.transform list at the end of the message
                    // and capnp-rpc orders payload pointers differently, so
                    // neither is byte-identical to a fresh encoding.
                    let ours = rpc::encode_call(q, tgt, &call).unwrap();
                    let (again, _) = TunnelCall::decode(&ours, &limits).unwrap().unwrap();
                    assert_eq!(again, Some((q, tgt, call.clone())));
                }
                RpcSummary::Return {
                    answer_id,
                    release_param_caps,
                    kind,
                } => {
                    assert_eq!(d["type"], "return");
                    assert_eq!(u64::from(*answer_id), d["answerId"].as_u64().unwrap());
                    let caller = if f.dir == "cloudflared->edge" {
                        "edge->cloudflared"
                    } else {
                        "cloudflared->edge"
                    };
                    let Some(&method) = questions.get(&(f.stream, caller.to_owned(), *answer_id))
                    else {
                        // The bootstrap answer carries a capability.
                        assert_eq!(d["answers"], "bootstrap", "{ctx}");
                        assert!(matches!(
                            kind,
                            rpc::ReturnKind::Results { cap_table_len: 1 }
                        ));
                        continue;
                    };
                    let (msg, _) = crate::framing::decode_message(&f.bytes, &limits)
                        .unwrap()
                        .unwrap();
                    let (a, ret) = TunnelReturn::read_return(msg.get_root().unwrap(), method)
                        .unwrap()
                        .expect("results");
                    assert_eq!(a, *answer_id);
                    let content = &d["which"]["results"]["content"];
                    match &ret {
                        TunnelReturn::RegisterConnection(ConnectionResponse::Details(det)) => {
                            let c = &content["result"]["connectionDetails"];
                            assert_eq!(det.uuid.to_string(), c["uuid"].as_str().unwrap());
                            assert_eq!(det.location_name, c["locationName"].as_str().unwrap());
                            assert_eq!(
                                det.tunnel_is_remotely_managed,
                                c["tunnelIsRemotelyManaged"].as_bool().unwrap()
                            );
                        }
                        TunnelReturn::RegisterConnection(ConnectionResponse::Error(e)) => {
                            let c = &content["result"]["error"];
                            assert_eq!(e.cause, c["cause"].as_str().unwrap());
                            assert_eq!(e.retry_after_ns, c["retryAfter"].as_i64().unwrap());
                            assert_eq!(e.should_retry, c["shouldRetry"].as_bool().unwrap());
                            assert!(e.is_unauthorized());
                        }
                        TunnelReturn::UpdateConfiguration(u) => {
                            assert_eq!(
                                i64::from(u.latest_applied_version),
                                content["result"]["latestAppliedVersion"].as_i64().unwrap()
                            );
                            assert_eq!(u.err, content["result"]["err"].as_str().unwrap());
                        }
                        TunnelReturn::Empty => {}
                        other => panic!("unexpected return {other:?}"),
                    }
                    // Re-encoding is checked structurally only: capnp-rpc
                    // 0.27 also sets Return.noFinishNeeded (absent from the
                    // Debian rpc.capnp we generate from) and orders the
                    // payload pointers differently.
                    let ours = rpc::encode_return(*answer_id, *release_param_caps, &ret);
                    let (msg, _) = crate::framing::decode_message(&ours, &limits)
                        .unwrap()
                        .unwrap();
                    assert_eq!(
                        TunnelReturn::read_return(msg.get_root().unwrap(), method).unwrap(),
                        Some((*answer_id, ret))
                    );
                }
                RpcSummary::Other { which } => panic!("unexpected message kind {which}: {ctx}"),
            }
            let _ = &f.raw;
        }
    }
    for m in [
        Method::RegisterConnection,
        Method::UnregisterConnection,
        Method::UpdateLocalConfiguration,
        Method::UpdateConfiguration,
    ] {
        assert!(seen_methods.contains(&m), "{m:?} not covered");
    }
}

/// The README: cloudflared's capnp messages over HTTP/2 are byte-identical
/// to the QUIC ones apart from the connector ID and feature order.
#[test]
fn h2_control_stream_matches_quic() {
    let quic = rpc_frames("quic-01-registration.json");
    let h2 = rpc_frames("h2-01-registration.json");
    let from_cfd = |v: &[Frame]| -> Vec<Vec<u8>> {
        v.iter()
            .filter(|f| f.dir == "cloudflared->edge")
            .map(|f| f.bytes.clone())
            .collect()
    };
    let (q, h) = (from_cfd(&quic), from_cfd(&h2));
    assert_eq!(q.len(), h.len());
    for (a, b) in q.iter().zip(&h) {
        assert_eq!(a.len(), b.len());
        if a.len() == 552 {
            assert_eq!(a[..328], b[..328]);
            assert_eq!(a[496..], b[496..]);
        } else {
            assert_eq!(a, b);
        }
    }
    // The capnp bytes inside DATA frames split cleanly with MessageSplitter.
    let mut s = crate::framing::MessageSplitter::new(Limits::CONTROL_STREAM);
    let joined: Vec<u8> = h.concat();
    assert_eq!(s.push(&joined).unwrap(), h);
}

/// quic-02: the edge-opened RPC stream starts with the 6-byte RPC signature.
#[test]
fn rpc_stream_preamble() {
    let t = transcript("quic-02-config-push.json");
    let p = events(&t, |e| e["kind"] == "preamble").next().unwrap();
    assert_eq!(event_bytes(p), RPC_STREAM_SIGNATURE);
    assert_eq!(
        classify_stream(&event_bytes(p)).unwrap(),
        Some(StreamKind::Rpc)
    );
    let _ = uuid_hex("");
}

/// The README's fixed identity token decodes to the identity the
/// registration frames carry, and re-encodes byte-exactly.
#[test]
fn identity_token() {
    let t = transcript("quic-01-registration.json");
    let id = &t["identity"];
    let token = id["token"].as_str().unwrap();
    let tok = crate::TunnelToken::decode(token).unwrap();
    assert_eq!(tok.account_tag, id["accountTag"].as_str().unwrap());
    assert_eq!(tok.tunnel_id.to_string(), id["tunnelId"].as_str().unwrap());
    assert_eq!(
        hex(tok.tunnel_id.as_bytes()),
        uuid_hex(id["tunnelId"].as_str().unwrap())
    );
    assert_eq!(hex(&tok.secret), id["tunnelSecretHex"].as_str().unwrap());
    assert_eq!(tok.encode(), token);
}
