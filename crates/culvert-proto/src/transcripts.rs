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
