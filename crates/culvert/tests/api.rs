//! Every endpoint and error of the REST API, against the real server on
//! SQLite and PostgreSQL.

mod common;

use std::os::unix::fs::PermissionsExt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{TestServer, call, code};
use culvert_api::auth::{TUNNEL_READ, TUNNEL_WRITE, WARP_READ};
use culvert_proto::TunnelToken;
use culvert_store::{ConnectionInfo, ConnectorInfo, Registration, now_micros};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

fn is_rfc3339_micros(v: &Value) -> bool {
    let s = v.as_str().unwrap_or("");
    s.len() == 27 && s.ends_with('Z') && s.as_bytes()[19] == b'.'
}

async fn register(s: &TestServer, tunnel: Uuid, connector: Uuid, index: u8) -> Uuid {
    let id = Uuid::new_v4();
    s.store()
        .register_connection(&Registration {
            connector: ConnectorInfo {
                connector_id: connector,
                arch: "linux_amd64".into(),
                version: "2024.1.0".into(),
                features: vec!["serialized_headers".into(), "management_logs".into()],
                run_at: now_micros(),
            },
            connection: ConnectionInfo {
                id,
                tunnel_id: tunnel,
                connector_id: connector,
                conn_index: index,
                colo_name: "LOCAL".into(),
                origin_ip: "127.0.0.1".into(),
                opened_at: now_micros(),
                edge_node: "test".into(),
            },
        })
        .await
        .unwrap();
    id
}

async fn create_and_check_shape(s: &TestServer) {
    let (status, body) = call(
        s.req(Method::POST, &s.acct("/cfd_tunnel"))
            .json(&json!({"name": "shape", "config_src": "cloudflare"})),
    )
    .await;
    assert_eq!(status, 200);
    let t = &body["result"];
    let id = Uuid::parse_str(t["id"].as_str().unwrap()).unwrap();
    assert_eq!(t["account_tag"], s.account.as_str());
    assert_eq!(t["name"], "shape");
    assert!(is_rfc3339_micros(&t["created_at"]), "{t}");
    assert!(t["deleted_at"].is_null() && t.get("deleted_at").is_some());
    assert!(t["conns_active_at"].is_null() && t.get("conns_active_at").is_some());
    assert_eq!(t["conns_inactive_at"], t["created_at"]);
    assert_eq!(t["status"], "inactive");
    assert_eq!(t["tun_type"], "cfd_tunnel");
    assert_eq!(t["config_src"], "cloudflare");
    assert_eq!(t["remote_config"], true);
    assert_eq!(t["metadata"], json!({}));
    assert_eq!(t["connections"], json!([]));
    // The token: padded standard base64 of {"a","t","s"} in that order.
    let token = t["token"].as_str().unwrap();
    assert!(token.starts_with("eyJhIjoi"));
    let decoded = String::from_utf8(STANDARD.decode(token).unwrap()).unwrap();
    let secret_b64 = t["credentials_file"]["TunnelSecret"].as_str().unwrap();
    assert_eq!(
        decoded,
        format!(r#"{{"a":"{}","t":"{id}","s":"{secret_b64}"}}"#, s.account)
    );
    assert_eq!(STANDARD.decode(secret_b64).unwrap().len(), 32);
    assert_eq!(t["credentials_file"]["TunnelID"], id.to_string());
    assert_eq!(t["credentials_file"]["AccountTag"], s.account.as_str());
    assert_eq!(t["credentials_file"]["TunnelName"], "shape");

    // GET answers the same object (without the create-only extras).
    let (status, got) = call(s.req(Method::GET, &s.acct(&format!("/cfd_tunnel/{id}")))).await;
    assert_eq!(status, 200);
    assert!(got["result"].get("token").is_none());
    assert_eq!(got["result"]["created_at"], t["created_at"]);

    // A given secret is kept and shows up in the token.
    let secret = STANDARD.encode([7u8; 32]);
    let (_, body) = call(
        s.req(Method::POST, &s.acct("/cfd_tunnel"))
            .json(&json!({"name": "given-secret", "tunnel_secret": secret})),
    )
    .await;
    let tok = TunnelToken::decode(body["result"]["token"].as_str().unwrap()).unwrap();
    assert_eq!(tok.secret, vec![7u8; 32]);
    assert_eq!(body["result"]["config_src"], "local");
    assert_eq!(body["result"]["remote_config"], false);

    // GET …/token is byte-exact with the create response.
    let (status, tb) = call(s.req(Method::GET, &s.acct(&format!("/cfd_tunnel/{id}/token")))).await;
    assert_eq!(status, 200);
    assert_eq!(tb["result"], t["token"]);
}
both_backends!(create_and_check_shape);

async fn names_unique_among_live(s: &TestServer) {
    let t = s.create_tunnel("dup").await;
    let resp = s
        .req(Method::POST, &s.acct("/cfd_tunnel"))
        .json(&json!({"name": "dup"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    assert_eq!(resp.headers()["x-should-retry"], "false");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(code(&body), 1013);
    // Rename onto a live name conflicts too.
    let other = s.create_tunnel("other").await;
    let (status, body) = call(
        s.req(
            Method::PATCH,
            &s.acct(&format!("/cfd_tunnel/{}", other["id"].as_str().unwrap())),
        )
        .json(&json!({"name": "dup"})),
    )
    .await;
    assert_eq!((status, code(&body)), (409, 1013));
    // After a delete the name is free again.
    let (status, _) = call(s.req(
        Method::DELETE,
        &s.acct(&format!("/cfd_tunnel/{}", t["id"].as_str().unwrap())),
    ))
    .await;
    assert_eq!(status, 200);
    let again = s.create_tunnel("dup").await;
    assert_ne!(again["id"], t["id"]);
    // A warp connector may share a cfd tunnel's name (separate namespaces).
    let (status, _) = call(
        s.req(Method::POST, &s.acct("/warp_connector"))
            .json(&json!({"name": "dup"})),
    )
    .await;
    assert_eq!(status, 200);
}
both_backends!(names_unique_among_live);

async fn list_filters_and_pagination(s: &TestServer) {
    let mut ids = Vec::new();
    for i in 0..25 {
        let name = if i % 2 == 0 {
            format!("even-{i:02}")
        } else {
            format!("odd-{i:02}")
        };
        ids.push(
            s.create_tunnel(&name).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // Pages of 10: 10, 10, 5, then an empty page (never an error, never a repeat).
    let mut seen = Vec::new();
    for page in 1..=4 {
        let (status, body) = call(s.req(
            Method::GET,
            &s.acct(&format!("/cfd_tunnel?per_page=10&page={page}")),
        ))
        .await;
        assert_eq!(status, 200);
        let info = &body["result_info"];
        assert_eq!(info["page"], json!(page));
        assert_eq!(info["per_page"], json!(10));
        assert_eq!(info["total_count"], json!(25));
        assert_eq!(info["total_pages"], json!(3));
        let items = body["result"].as_array().unwrap();
        assert_eq!(info["count"], json!(items.len()));
        assert_eq!(items.len(), [10, 10, 5, 0][page - 1]);
        seen.extend(items.iter().map(|t| t["id"].as_str().unwrap().to_string()));
    }
    assert_eq!(seen, ids, "ordered by creation, no repeats");
    // The raw JSON has integer literals (cloudflared decodes into Go ints).
    let raw = s
        .req(Method::GET, &s.acct("/cfd_tunnel"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        raw.contains(r#""per_page":20"#) && raw.contains(r#""total_count":25"#),
        "{raw}"
    );

    let count = |q: &str| {
        let q = q.to_string();
        async move {
            let (status, body) =
                call(s.req(Method::GET, &s.acct(&format!("/cfd_tunnel?{q}")))).await;
            assert_eq!(status, 200, "{q}: {body}");
            body["result"].as_array().unwrap().len()
        }
    };
    assert_eq!(count("name=even-04").await, 1);
    assert_eq!(count("name=even").await, 0);
    assert_eq!(count("include_prefix=odd-&per_page=100").await, 12);
    assert_eq!(count("name_prefix=odd-&per_page=100").await, 12);
    assert_eq!(count("exclude_prefix=odd-&per_page=100").await, 13);
    assert_eq!(count(&format!("uuid={}", ids[3])).await, 1);
    assert_eq!(count("status=inactive&per_page=100").await, 25);
    assert_eq!(count("status=healthy").await, 0);
    assert_eq!(count("unknown_param=1&per_page=100").await, 25);
    // Soft delete: listed by default, hidden by is_deleted=false.
    call(s.req(Method::DELETE, &s.acct(&format!("/cfd_tunnel/{}", ids[0])))).await;
    assert_eq!(count("per_page=100").await, 25);
    assert_eq!(count("is_deleted=false&per_page=100").await, 24);
    assert_eq!(count("is_deleted=true").await, 1);
    // existed_at: now → the 24 live ones; before everything → none.
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert_eq!(
        count(&format!(
            "existed_at={}&per_page=100",
            form_urlencoded::byte_serialize(now.as_bytes()).collect::<String>()
        ))
        .await,
        24
    );
    assert_eq!(count("existed_at=2001-01-01T00:00:00Z").await, 0);
    // Python SDK encodings: float page numbers, +00:00 offsets.
    assert_eq!(count("page=2.0&per_page=10.0").await, 10);
    assert_eq!(
        count("was_inactive_at=2030-01-02T03%3A04%3A05%2B00%3A00&per_page=100").await,
        25
    );
    // Bad values are 400s.
    for q in [
        "per_page=0",
        "per_page=1001",
        "page=0",
        "status=bogus",
        "uuid=x",
        "is_deleted=perhaps",
    ] {
        let (status, body) = call(s.req(Method::GET, &s.acct(&format!("/cfd_tunnel?{q}")))).await;
        assert_eq!((status, code(&body)), (400, 1001), "{q}");
    }
}
both_backends!(list_filters_and_pagination);

async fn soft_delete_and_cascade(s: &TestServer) {
    let t = s.create_tunnel("to-delete").await;
    let id: Uuid = t["id"].as_str().unwrap().parse().unwrap();
    let path = s.acct(&format!("/cfd_tunnel/{id}"));
    let connector = Uuid::new_v4();
    register(s, id, connector, 0).await;
    // Live connections block a plain delete.
    let (status, body) = call(s.req(Method::DELETE, &path)).await;
    assert_eq!((status, code(&body)), (400, 1022));
    assert_eq!(
        body["errors"][0]["message"],
        "Cannot delete tunnel because it has active connections"
    );
    // cascade=true removes them and deletes.
    let (status, body) = call(s.req(Method::DELETE, &format!("{path}?cascade=true"))).await;
    assert_eq!(status, 200);
    assert!(is_rfc3339_micros(&body["result"]["deleted_at"]));
    assert_eq!(body["result"]["status"], "down");
    // Still readable by id, with deleted_at.
    let (status, got) = call(s.req(Method::GET, &path)).await;
    assert_eq!(status, 200);
    assert_eq!(got["result"]["deleted_at"], body["result"]["deleted_at"]);
    // A deleted tunnel has no token any more (deleting revokes credentials).
    let (status, _) = call(s.req(Method::GET, &format!("{path}/token"))).await;
    assert_eq!(status, 404);
    // Deleting again keeps the first deleted_at.
    let (status, again) = call(s.req(Method::DELETE, &path)).await;
    assert_eq!(status, 200);
    assert_eq!(again["result"]["deleted_at"], body["result"]["deleted_at"]);
    // Delete accepts a body too (the spec declares one).
    let t2 = s.create_tunnel("with-body").await;
    let (status, _) = call(
        s.req(
            Method::DELETE,
            &s.acct(&format!("/cfd_tunnel/{}", t2["id"].as_str().unwrap())),
        )
        .json(&json!({})),
    )
    .await;
    assert_eq!(status, 200);
}
both_backends!(soft_delete_and_cascade);

async fn edit_rename_and_rotate(s: &TestServer) {
    let t = s.create_tunnel("before").await;
    let path = s.acct(&format!("/cfd_tunnel/{}", t["id"].as_str().unwrap()));
    let (status, body) = call(s.req(Method::PATCH, &path).json(&json!({"name": "after"}))).await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["name"], "after");
    assert!(
        body["result"].get("token").is_none(),
        "no token without rotation"
    );
    let secret = STANDARD.encode([9u8; 40]);
    let (status, body) = call(
        s.req(Method::PATCH, &path)
            .json(&json!({"tunnel_secret": secret})),
    )
    .await;
    assert_eq!(status, 200);
    let new_token = body["result"]["token"].as_str().unwrap();
    assert_ne!(new_token, t["token"].as_str().unwrap());
    assert_eq!(
        TunnelToken::decode(new_token).unwrap().secret,
        vec![9u8; 40]
    );
    let (_, tb) = call(s.req(Method::GET, &format!("{path}/token"))).await;
    assert_eq!(tb["result"], new_token);
    // Too-short and non-base64 secrets are refused.
    for bad in [STANDARD.encode([1u8; 16]), "not base64!".to_string()] {
        let (status, body) = call(
            s.req(Method::PATCH, &path)
                .json(&json!({"tunnel_secret": bad})),
        )
        .await;
        assert_eq!((status, code(&body)), (400, 1001));
    }
    // An empty patch changes nothing.
    let (status, body) = call(s.req(Method::PATCH, &path).json(&json!({}))).await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["name"], "after");
}
both_backends!(edit_rename_and_rotate);

async fn configurations(s: &TestServer) {
    let t = s.create_tunnel("cfg").await;
    let path = s.acct(&format!(
        "/cfd_tunnel/{}/configurations",
        t["id"].as_str().unwrap()
    ));
    let (status, body) = call(s.req(Method::GET, &path)).await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["version"], 0);
    assert!(body["result"]["config"].is_null());
    let config = json!({
        "ingress": [
            {"hostname": "app.example.com", "service": "http://localhost:8000", "path": "/api",
             "originRequest": {"noTLSVerify": true, "connectTimeout": 10, "futureOption": {"x": 1}}},
            {"service": "http_status:404"}
        ],
        "originRequest": {"keepAliveTimeout": 90, "http2Origin": true},
        "warp-routing": {"enabled": true},
        "somethingNew": [1, 2, 3]
    });
    let (status, body) = call(s.req(Method::PUT, &path).json(&json!({"config": config}))).await;
    assert_eq!(status, 200, "{body}");
    let r = &body["result"];
    assert_eq!(r["version"], 1);
    assert_eq!(r["config"], config, "unknown keys are kept verbatim");
    assert_eq!(r["source"], "cloudflare");
    assert_eq!(r["tunnel_id"], t["id"]);
    assert_eq!(r["account_id"], s.account.as_str());
    assert!(is_rfc3339_micros(&r["created_at"]));
    // The tunnel was local; a remote configuration makes it remotely managed.
    assert_eq!(t["config_src"], "local");
    let (_, got) = call(s.req(
        Method::GET,
        &s.acct(&format!("/cfd_tunnel/{}", t["id"].as_str().unwrap())),
    ))
    .await;
    assert_eq!(got["result"]["config_src"], "cloudflare");
    assert_eq!(got["result"]["remote_config"], true);
    // Invalid configurations: 400 / 1056 with cloudflared's message; the version stays.
    let bad = json!({"config": {"ingress": [{"hostname": "a.example.com", "service": "http://localhost:1"}]}});
    let (status, body) = call(s.req(Method::PUT, &path).json(&bad)).await;
    assert_eq!((status, code(&body)), (400, 1056));
    let msg = body["errors"][0]["message"].as_str().unwrap();
    assert_eq!(
        msg,
        "Bad Configuration: Validation failed: The last ingress rule must match all URLs (i.e. it should not have a hostname or path filter)\n"
    );
    let (status, body) = call(s.req(Method::PUT, &path).json(&json!({}))).await;
    assert_eq!((status, code(&body)), (400, 1056));
    let (_, body) = call(s.req(Method::GET, &path)).await;
    assert_eq!(body["result"]["version"], 1);
    // The next good PUT is version 2.
    let (status, body) = call(
        s.req(Method::PUT, &path)
            .json(&json!({"config": {"ingress": [{"service": "hello_world"}]}})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["version"], 2);
}
both_backends!(configurations);

async fn connections_registry(s: &TestServer) {
    let t = s.create_tunnel("conns").await;
    let id: Uuid = t["id"].as_str().unwrap().parse().unwrap();
    let tpath = s.acct(&format!("/cfd_tunnel/{id}"));
    let (_, body) = call(s.req(Method::GET, &format!("{tpath}/connections"))).await;
    assert_eq!(body["result"], json!([]));
    assert!(body.get("result_info").is_none(), "single page");

    let a = Uuid::new_v4();
    let b = Uuid::new_v4();
    for i in 0..4 {
        register(s, id, a, i).await;
    }
    let (_, got) = call(s.req(Method::GET, &tpath)).await;
    assert_eq!(got["result"]["status"], "healthy");
    assert!(is_rfc3339_micros(&got["result"]["conns_active_at"]));
    assert!(got["result"]["conns_inactive_at"].is_null());
    register(s, id, b, 0).await;
    let (_, got) = call(s.req(Method::GET, &tpath)).await;
    assert_eq!(
        got["result"]["status"], "degraded",
        "connector b has 1 of 4"
    );

    let (_, body) = call(s.req(Method::GET, &format!("{tpath}/connections"))).await;
    let connectors = body["result"].as_array().unwrap();
    assert_eq!(connectors.len(), 2);
    let ca = connectors
        .iter()
        .find(|c| c["id"] == a.to_string())
        .unwrap();
    assert_eq!(ca["arch"], "linux_amd64");
    assert_eq!(ca["version"], "2024.1.0");
    assert_eq!(
        ca["features"],
        json!(["serialized_headers", "management_logs"])
    );
    assert_eq!(ca["config_version"], 0);
    assert!(is_rfc3339_micros(&ca["run_at"]));
    let conns = ca["conns"].as_array().unwrap();
    assert_eq!(conns.len(), 4);
    for c in conns {
        assert_eq!(c["client_id"], a.to_string());
        assert_eq!(c["id"], c["uuid"]);
        assert_eq!(c["colo_name"], "LOCAL");
        assert_eq!(c["origin_ip"], "127.0.0.1");
        assert_eq!(c["is_pending_reconnect"], false);
        assert_eq!(c["client_version"], "2024.1.0");
        assert!(is_rfc3339_micros(&c["opened_at"]));
    }
    // connectors/{id}
    let (status, one) = call(s.req(Method::GET, &format!("{tpath}/connectors/{a}"))).await;
    assert_eq!(status, 200);
    assert_eq!(one["result"]["id"], a.to_string());
    let (status, body) = call(s.req(
        Method::GET,
        &format!("{tpath}/connectors/{}", Uuid::new_v4()),
    ))
    .await;
    assert_eq!((status, code(&body)), (404, 1004));
    // Config version reported by a connector shows up.
    s.store().set_config_version(id, a, 3).await.unwrap();
    let (_, one) = call(s.req(Method::GET, &format!("{tpath}/connectors/{a}"))).await;
    assert_eq!(one["result"]["config_version"], 3);

    // Clean up one connector, then all.
    let (status, body) = call(s.req(
        Method::DELETE,
        &format!("{tpath}/connections?client_id={b}"),
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["result"], json!({}));
    let (_, body) = call(s.req(Method::GET, &format!("{tpath}/connections"))).await;
    assert_eq!(body["result"].as_array().unwrap().len(), 1);
    let (_, got) = call(s.req(Method::GET, &tpath)).await;
    assert_eq!(got["result"]["status"], "healthy");
    let (status, _) = call(s.req(Method::DELETE, &format!("{tpath}/connections"))).await;
    assert_eq!(status, 200);
    let (_, got) = call(s.req(Method::GET, &tpath)).await;
    assert_eq!(got["result"]["status"], "down");
    assert!(got["result"]["conns_active_at"].is_null());
    assert!(is_rfc3339_micros(&got["result"]["conns_inactive_at"]));
    assert_ne!(
        got["result"]["conns_inactive_at"],
        got["result"]["created_at"]
    );
    let (status, body) = call(s.req(
        Method::DELETE,
        &format!("{tpath}/connections?client_id=nope"),
    ))
    .await;
    assert_eq!((status, code(&body)), (400, 1001));
}
both_backends!(connections_registry);

fn jwt_parts(jwt: &str) -> (Value, Value) {
    let mut p = jwt.split('.');
    let h = URL_SAFE_NO_PAD.decode(p.next().unwrap()).unwrap();
    let c = URL_SAFE_NO_PAD.decode(p.next().unwrap()).unwrap();
    (
        serde_json::from_slice(&h).unwrap(),
        serde_json::from_slice(&c).unwrap(),
    )
}

async fn management_tokens(s: &TestServer) {
    let t = s.create_tunnel("mgmt").await;
    let id = t["id"].as_str().unwrap();
    let path = s.acct(&format!("/cfd_tunnel/{id}/management"));
    let keys = culvert_api::ManagementKeys::load_or_create(s.store())
        .await
        .unwrap();
    let now = now_micros() / 1_000_000;
    let (status, body) = call(
        s.req(Method::POST, &path)
            .json(&json!({"resources": ["logs"]})),
    )
    .await;
    assert_eq!(status, 200);
    let jwt = body["result"].as_str().unwrap();
    let (header, claims) = jwt_parts(jwt);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(claims["tun"]["id"], id);
    assert_eq!(claims["tun"]["account_tag"], s.account.as_str());
    assert_eq!(claims["res"], json!(["logs"]));
    assert_eq!(claims["iss"], "tunnelstore");
    assert_eq!(claims["actor"]["support"], false);
    assert!(!claims["actor"]["id"].as_str().unwrap().is_empty());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
    // Signed by the key the store holds.
    let verified = keys.verify(jwt, now).unwrap();
    assert_eq!(verified.tun.id, id);
    assert!(keys.verify(jwt, now + 3601).is_err(), "expires");
    let mut tampered = jwt.to_string();
    tampered.replace_range(jwt.len() - 3.., "AAA");
    assert!(keys.verify(&tampered, now).is_err());
    // The per-resource form (cloudflared 2026.2+), no body.
    for res in ["logs", "admin", "host_details"] {
        let (status, body) = call(s.req(Method::POST, &format!("{path}/{res}"))).await;
        assert_eq!(status, 200);
        assert_eq!(
            jwt_parts(body["result"].as_str().unwrap()).1["res"],
            json!([res])
        );
    }
    let (status, body) = call(s.req(Method::POST, &format!("{path}/everything"))).await;
    assert_eq!((status, code(&body)), (400, 1001));
    let (status, body) = call(s.req(Method::POST, &path).json(&json!({"resources": []}))).await;
    assert_eq!((status, code(&body)), (400, 1001));
    let (status, body) = call(
        s.req(Method::POST, &path)
            .json(&json!({"resources": "logs"})),
    )
    .await;
    assert_eq!((status, code(&body)), (400, 1030));
    // The key survives a restart: the same store, the same key.
    let again = culvert_api::ManagementKeys::load_or_create(s.store())
        .await
        .unwrap();
    assert_eq!(again.public_key(), keys.public_key());
}
both_backends!(management_tokens);

async fn all_tunnels_and_warp(s: &TestServer) {
    s.create_tunnel("cfd-1").await;
    let (status, body) = call(
        s.req(Method::POST, &s.acct("/warp_connector"))
            .json(&json!({"name": "warp-1", "ha": true})),
    )
    .await;
    assert_eq!(status, 200);
    let w = body["result"].clone();
    assert_eq!(w["tun_type"], "warp_connector");
    assert!(w.get("config_src").is_none() && w.get("remote_config").is_none());
    let wid = w["id"].as_str().unwrap();
    let n = |q: &'static str| async move {
        let (status, body) = call(s.req(Method::GET, &s.acct(&format!("/tunnels{q}")))).await;
        assert_eq!(status, 200, "{q}");
        body["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["tun_type"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(n("").await.len(), 2);
    assert_eq!(n("?tun_types=cfd_tunnel,warp_connector").await.len(), 2);
    assert_eq!(
        n("?tun_types=cfd_tunnel&tun_types=warp_connector")
            .await
            .len(),
        2
    );
    assert_eq!(n("?tun_types=warp_connector").await, vec!["warp_connector"]);
    assert_eq!(n("?tun_types=cfd_tunnel").await, vec!["cfd_tunnel"]);
    assert_eq!(n("?tun_types=ip_sec").await.len(), 0);
    let (status, body) = call(s.req(Method::GET, &s.acct("/tunnels?tun_types=bogus"))).await;
    assert_eq!((status, code(&body)), (400, 1001));
    // cfd_tunnel lists only cfd tunnels; warp_connector only warp.
    let (_, body) = call(s.req(Method::GET, &s.acct("/cfd_tunnel"))).await;
    assert_eq!(body["result"].as_array().unwrap().len(), 1);
    let (_, body) = call(s.req(Method::GET, &s.acct("/warp_connector"))).await;
    assert_eq!(body["result"].as_array().unwrap().len(), 1);
    // Warp get/edit/token/connections/delete; a warp id is not a cfd tunnel.
    let wpath = s.acct(&format!("/warp_connector/{wid}"));
    assert_eq!(call(s.req(Method::GET, &wpath)).await.0, 200);
    assert_eq!(
        call(s.req(Method::GET, &s.acct(&format!("/cfd_tunnel/{wid}"))))
            .await
            .0,
        404
    );
    let (_, body) = call(
        s.req(Method::PATCH, &wpath)
            .json(&json!({"name": "warp-renamed"})),
    )
    .await;
    assert_eq!(body["result"]["name"], "warp-renamed");
    let (status, body) = call(s.req(Method::GET, &format!("{wpath}/token"))).await;
    assert_eq!(status, 200);
    assert_eq!(
        TunnelToken::decode(body["result"].as_str().unwrap())
            .unwrap()
            .tunnel_id
            .to_string(),
        wid
    );
    let (_, body) = call(s.req(Method::GET, &format!("{wpath}/connections"))).await;
    assert_eq!(body["result"], json!([]));
    let (status, body) = call(s.req(Method::DELETE, &wpath)).await;
    assert_eq!(status, 200);
    assert!(is_rfc3339_micros(&body["result"]["deleted_at"]));
}
both_backends!(all_tunnels_and_warp);

async fn authentication_and_permissions(s: &TestServer) {
    let list = s.url(&s.acct("/cfd_tunnel"));
    // No credentials.
    let (status, body) = call(s.client.get(&list)).await;
    assert_eq!((status, code(&body)), (400, 9106));
    // Malformed header: 6003 with a 6111 chain.
    let (status, body) = call(s.client.get(&list).header("authorization", "Token abc")).await;
    assert_eq!((status, code(&body)), (400, 6003));
    assert_eq!(body["errors"][0]["error_chain"][0]["code"], 6111);
    // Unknown token.
    let (status, body) = call(s.client.get(&list).bearer_auth("x".repeat(40))).await;
    assert_eq!((status, code(&body)), (401, 10000));
    // Read-only token: reads work, writes and GET …/token do not.
    let read = s.token_with(&[TUNNEL_READ]).await;
    assert_eq!(
        call(s.req_as(&read, Method::GET, &s.acct("/cfd_tunnel")))
            .await
            .0,
        200
    );
    let (status, body) = call(
        s.req_as(&read, Method::POST, &s.acct("/cfd_tunnel"))
            .json(&json!({"name": "nope"})),
    )
    .await;
    assert_eq!((status, code(&body)), (403, 10000));
    let t = s.create_tunnel("perm").await;
    let tpath = s.acct(&format!("/cfd_tunnel/{}", t["id"].as_str().unwrap()));
    assert_eq!(call(s.req_as(&read, Method::GET, &tpath)).await.0, 200);
    assert_eq!(
        call(s.req_as(&read, Method::GET, &format!("{tpath}/token")))
            .await
            .0,
        403
    );
    // A WARP-only token cannot read cfd tunnels but can read warp connectors.
    let warp = s.token_with(&[WARP_READ]).await;
    assert_eq!(
        call(s.req_as(&warp, Method::GET, &s.acct("/cfd_tunnel")))
            .await
            .0,
        403
    );
    assert_eq!(
        call(s.req_as(&warp, Method::GET, &s.acct("/warp_connector")))
            .await
            .0,
        200
    );
    assert_eq!(
        call(s.req_as(&warp, Method::GET, &s.acct("/tunnels")))
            .await
            .0,
        403
    );
    // Another account's paths.
    let other = s.store().create_account("other").await.unwrap();
    let (status, body) =
        call(s.req(Method::GET, &format!("/accounts/{}/cfd_tunnel", other.id))).await;
    assert_eq!((status, code(&body)), (403, 9109));
    // Another account's tunnel id under our own account: not found.
    let (other_token, _) = {
        let (tok, secret) = culvert::server::create_token(
            s.store(),
            &other.id,
            "o",
            vec![TUNNEL_WRITE.into()],
            None,
            None,
        )
        .await
        .unwrap();
        (secret, tok)
    };
    let (_, ot) = call(
        s.req_as(
            &other_token,
            Method::POST,
            &format!("/accounts/{}/cfd_tunnel", other.id),
        )
        .json(&json!({"name": "theirs"})),
    )
    .await;
    let (status, _) = call(s.req(
        Method::GET,
        &s.acct(&format!(
            "/cfd_tunnel/{}",
            ot["result"]["id"].as_str().unwrap()
        )),
    ))
    .await;
    assert_eq!(status, 404);
    // Unknown and malformed account ids: 7003 + 7000.
    for acct in ["0123456789abcdef0123456789abcdef", "not-an-account"] {
        let (status, body) =
            call(s.req(Method::GET, &format!("/accounts/{acct}/cfd_tunnel"))).await;
        assert_eq!((status, code(&body)), (404, 7003), "{acct}");
        assert_eq!(body["errors"][1]["code"], 7000);
    }
    // Revoked and expired tokens.
    let (tok, secret) = culvert::server::create_token(
        s.store(),
        &s.account,
        "r",
        vec![TUNNEL_READ.into()],
        None,
        None,
    )
    .await
    .unwrap();
    s.store().revoke_api_token(&tok.id).await.unwrap();
    assert_eq!(
        call(s.req_as(&secret, Method::GET, &s.acct("/cfd_tunnel")))
            .await
            .0,
        401
    );
    let (_, expired) = culvert::server::create_token(
        s.store(),
        &s.account,
        "e",
        vec![TUNNEL_READ.into()],
        Some(now_micros() - 1),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        call(s.req_as(&expired, Method::GET, &s.acct("/cfd_tunnel")))
            .await
            .0,
        401
    );
    let (_, early) = culvert::server::create_token(
        s.store(),
        &s.account,
        "nb",
        vec![TUNNEL_READ.into()],
        None,
        Some(now_micros() + 3_600_000_000),
    )
    .await
    .unwrap();
    assert_eq!(
        call(s.req_as(&early, Method::GET, &s.acct("/cfd_tunnel")))
            .await
            .0,
        401
    );

    // Legacy global key.
    let key = "0123456789abcdef0123456789abcdef01234";
    s.store()
        .create_api_token(&culvert_store::ApiToken {
            id: Uuid::new_v4().simple().to_string(),
            account_id: s.account.clone(),
            name: "global".into(),
            kind: culvert_store::CredentialKind::GlobalKey,
            email: Some("ops@example.com".into()),
            secret_hash: culvert_api::auth::hash_secret(key),
            permissions: vec![TUNNEL_WRITE.into()],
            created_at: now_micros(),
            expires_on: None,
            not_before: None,
            revoked_at: None,
        })
        .await
        .unwrap();
    let (status, _) = call(
        s.client
            .get(&list)
            .header("x-auth-email", "ops@example.com")
            .header("x-auth-key", key),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = call(
        s.client
            .get(&list)
            .header("x-auth-email", "ops@example.com")
            .header("x-auth-key", "wrong"),
    )
    .await;
    assert_eq!((status, code(&body)), (401, 9103));
}
both_backends!(authentication_and_permissions);

async fn token_verification(s: &TestServer) {
    let (status, body) = call(s.req(Method::GET, "/user/tokens/verify")).await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["status"], "active");
    assert_eq!(body["result"]["id"].as_str().unwrap().len(), 32);
    assert!(body["result"].get("expires_on").is_none());
    let (status, body) = call(s.req(Method::GET, &s.acct("/tokens/verify"))).await;
    assert_eq!(status, 200, "{body}");
    let (_, exp) = culvert::server::create_token(
        s.store(),
        &s.account,
        "x",
        vec![TUNNEL_READ.into()],
        Some(now_micros() + 60_000_000),
        None,
    )
    .await
    .unwrap();
    let (_, body) = call(s.req_as(&exp, Method::GET, "/user/tokens/verify")).await;
    assert!(is_rfc3339_micros(&body["result"]["expires_on"]));
    for bad in [
        s.client
            .get(s.url("/user/tokens/verify"))
            .bearer_auth("bogus"),
        s.client.get(s.url("/user/tokens/verify")),
    ] {
        let (status, body) = call(bad).await;
        assert_eq!((status, code(&body)), (401, 1000));
        assert_eq!(body["errors"][0]["message"], "Invalid API Token");
    }
    let other = s.store().create_account("x").await.unwrap();
    let (status, _) = call(s.req(
        Method::GET,
        &format!("/accounts/{}/tokens/verify", other.id),
    ))
    .await;
    assert_eq!(status, 401);
}
both_backends!(token_verification);

async fn bad_input(s: &TestServer) {
    let create = s.acct("/cfd_tunnel");
    // Malformed JSON.
    let (status, body) = call(
        s.req(Method::POST, &create)
            .header("content-type", "application/json")
            .body("{\"name\": "),
    )
    .await;
    assert_eq!((status, code(&body)), (400, 1030));
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("Could not parse input. Json deserialize error: ")
    );
    // Wrong types and missing fields.
    for b in [
        json!({"name": 5}),
        json!({}),
        json!([1]),
        json!({"name": "x", "metadata": "m"}),
        json!({"name": "x", "config_src": "elsewhere"}),
        json!({"name": ""}),
    ] {
        let (status, body) = call(s.req(Method::POST, &create).json(&b)).await;
        assert_eq!(status, 400, "{b}");
        assert!([1001, 1030].contains(&(code(&body) as i32)), "{b}: {body}");
    }
    // Oversized body (the test server's limit is 64 KiB).
    let big = json!({"name": "x".repeat(100 * 1024)});
    let (status, body) = call(s.req(Method::POST, &create).json(&big)).await;
    assert_eq!((status, code(&body)), (413, 1002));
    // Nothing was written by any of the failures above.
    let (_, list) = call(s.req(Method::GET, &create)).await;
    assert_eq!(list["result_info"]["total_count"], 0);
    // Invalid UUIDs in the path.
    for p in [
        "/cfd_tunnel/not-a-uuid",
        "/cfd_tunnel/not-a-uuid/token",
        "/warp_connector/123",
    ] {
        let (status, body) = call(s.req(Method::GET, &s.acct(p))).await;
        assert_eq!((status, code(&body)), (404, 7003), "{p}");
    }
    let t = s.create_tunnel("bad-input").await;
    let (status, body) = call(s.req(
        Method::GET,
        &s.acct(&format!(
            "/cfd_tunnel/{}/connectors/xyz",
            t["id"].as_str().unwrap()
        )),
    ))
    .await;
    assert_eq!((status, code(&body)), (404, 7003));
    // Unknown tunnel.
    let (status, body) = call(s.req(
        Method::GET,
        &s.acct(&format!("/cfd_tunnel/{}", Uuid::new_v4())),
    ))
    .await;
    assert_eq!((status, code(&body)), (404, 1003));
    // Unknown routes and methods.
    for p in ["/nope", "/accounts", "/accounts/x/y/z/w/v"] {
        let (status, body) = call(s.req(Method::GET, p)).await;
        assert_eq!((status, code(&body)), (404, 7000), "{p}");
    }
    let (status, _) = call(s.client.get(format!("http://{}/elsewhere", s.addr()))).await;
    assert_eq!(status, 404);
    let (status, body) = call(s.req(Method::PUT, &create).json(&json!({}))).await;
    assert_eq!((status, code(&body)), (405, 10405));
}
both_backends!(bad_input);

async fn openapi_lists_every_route(s: &TestServer) {
    let resp = s.client.get(s.url("/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for (op, _) in culvert_api::routes::operations() {
        let path = format!("{}{}", culvert_api::BASE, op.path);
        let item = &paths[&path][op.method.as_str().to_ascii_lowercase()];
        assert_eq!(item["operationId"], op.operation_id, "{path}");
        for seg in op.path.split('/').filter(|s| s.starts_with('{')) {
            let name = seg.trim_matches(|c| c == '{' || c == '}');
            assert!(
                item["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == name && p["in"] == "path"),
                "{path} {name}"
            );
        }
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "TunnelView",
        "ConnectorView",
        "ConfigView",
        "CreateTunnelBody",
        "ErrorEnvelope",
    ] {
        assert!(schemas.contains_key(name), "{name}");
    }
    let list = &paths[&format!("{}/accounts/{{account_id}}/cfd_tunnel", culvert_api::BASE)]["get"];
    for q in culvert_api::query::LIST_PARAMS {
        assert!(
            list["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == q.name),
            "{}",
            q.name
        );
    }
}
both_backends!(openapi_lists_every_route);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_data_and_files_are_private() {
    let mut s = TestServer::start(common::Backend::Sqlite).await;
    let data = s.dir.path().join("data");
    for f in ["bootstrap.json", "culvert.db"] {
        let mode = std::fs::metadata(data.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let boot: Value =
        serde_json::from_slice(&std::fs::read(data.join("bootstrap.json")).unwrap()).unwrap();
    assert_eq!(boot["account_id"], s.account.as_str());
    assert_eq!(boot["api_token"], s.token.as_str());
    assert_eq!(boot["api_url"], s.base.as_str());
    let t = s.create_tunnel("persisted").await;
    let cfg = json!({"config": {"ingress": [{"service": "http_status:404"}]}});
    call(
        s.req(
            Method::PUT,
            &s.acct(&format!(
                "/cfd_tunnel/{}/configurations",
                t["id"].as_str().unwrap()
            )),
        )
        .json(&cfg),
    )
    .await;
    s.restart().await;
    let (status, got) = call(s.req(
        Method::GET,
        &s.acct(&format!("/cfd_tunnel/{}", t["id"].as_str().unwrap())),
    ))
    .await;
    assert_eq!(status, 200, "the bootstrap token and the tunnel survive");
    assert_eq!(got["result"]["name"], "persisted");
    let (_, c) = call(s.req(
        Method::GET,
        &s.acct(&format!(
            "/cfd_tunnel/{}/configurations",
            t["id"].as_str().unwrap()
        )),
    ))
    .await;
    assert_eq!(c["result"]["version"], 1);
    s.stop().await;
}

async fn zone_routes(s: &TestServer) {
    let zone = s
        .store()
        .create_zone(&s.account, "Example.COM.")
        .await
        .unwrap();
    assert_eq!(zone.name, "example.com");
    let sub = s
        .store()
        .create_zone(&s.account, "dev.example.org")
        .await
        .unwrap();
    let t = s.create_tunnel("routed").await;
    let u = s.create_tunnel("other-routed").await;
    let put = |zone_id: &str, tunnel: &Value, body: Value| {
        s.req(
            Method::PUT,
            &format!(
                "/zones/{zone_id}/tunnels/{}/routes",
                tunnel["id"].as_str().unwrap()
            ),
        )
        .json(&body)
    };
    // What `cloudflared tunnel route dns` sends.
    let (status, body) = call(put(
        &zone.id,
        &t,
        json!({"type": "dns", "user_hostname": "app.example.com", "overwrite_existing": false}),
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["result"],
        json!({"cname": "new", "name": "app.example.com"})
    );
    let (_, body) = call(put(
        &zone.id,
        &t,
        json!({"type": "dns", "user_hostname": "APP.example.com."}),
    ))
    .await;
    assert_eq!(body["result"]["cname"], "unchanged");
    // A bare label is qualified with the zone.
    let (_, body) = call(put(
        &zone.id,
        &t,
        json!({"type": "dns", "user_hostname": "www"}),
    ))
    .await;
    assert_eq!(body["result"]["name"], "www.example.com");
    // Another zone of the same account is found for a full name.
    let (_, body) = call(put(
        &zone.id,
        &t,
        json!({"type": "dns", "user_hostname": "api.dev.example.org"}),
    ))
    .await;
    assert_eq!(body["result"]["name"], "api.dev.example.org");
    let _ = sub;
    // Outside every zone of the account.
    let (status, body) = call(put(
        &zone.id,
        &t,
        json!({"type": "dns", "user_hostname": "evil.example.net"}),
    ))
    .await;
    assert_eq!((status, code(&body)), (400, 1001));
    // Taken by another tunnel: refused unless overwrite_existing.
    let (status, body) = call(put(
        &zone.id,
        &u,
        json!({"type": "dns", "user_hostname": "app.example.com"}),
    ))
    .await;
    assert_eq!((status, code(&body)), (409, 81053));
    let (status, body) = call(put(
        &zone.id,
        &u,
        json!({"type": "dns", "user_hostname": "app.example.com", "overwrite_existing": true}),
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["cname"], "new");
    let route = s
        .store()
        .find_route("app.example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(route.tunnel_id.to_string(), u["id"].as_str().unwrap());
    // Load-balancer routes, bad hostnames, unknown zones and tunnels.
    let (status, _) = call(put(
        &zone.id,
        &t,
        json!({"type": "lb", "lb_name": "x", "lb_pool": "y"}),
    ))
    .await;
    assert_eq!(status, 400);
    let (status, _) = call(put(
        &zone.id,
        &t,
        json!({"type": "dns", "user_hostname": "bad host"}),
    ))
    .await;
    assert_eq!(status, 400);
    let (status, body) = call(put(
        "0123456789abcdef0123456789abcdef",
        &t,
        json!({"type": "dns", "user_hostname": "a"}),
    ))
    .await;
    assert_eq!((status, code(&body)), (404, 7003));
    let ghost = json!({"id": Uuid::new_v4().to_string()});
    let (status, _) = call(put(
        &zone.id,
        &ghost,
        json!({"type": "dns", "user_hostname": "b"}),
    ))
    .await;
    assert_eq!(status, 404);
    // Another account's zone is not ours to route in.
    let other = s.store().create_account("z").await.unwrap();
    let theirs = s
        .store()
        .create_zone(&other.id, "their.example")
        .await
        .unwrap();
    let (status, body) = call(put(
        &theirs.id,
        &t,
        json!({"type": "dns", "user_hostname": "x"}),
    ))
    .await;
    assert_eq!((status, code(&body)), (403, 9109));
    // A read-only token cannot route.
    let read = s.token_with(&[TUNNEL_READ]).await;
    let (status, _) = call(
        s.req_as(
            &read,
            Method::PUT,
            &format!(
                "/zones/{}/tunnels/{}/routes",
                zone.id,
                t["id"].as_str().unwrap()
            ),
        )
        .json(&json!({"type": "dns", "user_hostname": "r"})),
    )
    .await;
    assert_eq!(status, 403);
}
both_backends!(zone_routes);
