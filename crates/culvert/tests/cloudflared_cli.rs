//! What cloudflared's own CLI (`cloudflared tunnel --api-url … --origincert
//! … create|list|info|delete|token|cleanup|route dns`) sends, and how it
//! parses the answers (spec api.md §1.1, §3–§10), written down as tests since
//! the cloudflared binary is not available here.
//!
//! Requests carry cloudflared's headers (`Authorization: Bearer`, `Accept:
//! application/json;version=1`, a cloudflared User-Agent, `Content-Type:
//! application/json` only with a body). Answers are decoded with strict
//! mirrors of cloudflared's `cfapi` Go types: `messages` must be strings,
//! `errors[].code` a JSON number, `result_info` integers, ids UUIDs, origin
//! IPs IP addresses, times RFC 3339; the error path needs `Content-Type`
//! exactly `application/json`.

mod common;
#[path = "common/tunnel.rs"]
mod tunnel;

use std::net::IpAddr;
use std::time::Duration;

use common::{Backend, TestServer, eventually};
use culvert_proto::TunnelToken;
use reqwest::Method;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tunnel::{ConnectorOptions, start_connector};
use uuid::Uuid;

/// `cfapi.response`.
#[derive(Debug, Deserialize)]
struct GoResponse {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    errors: Vec<GoApiErr>,
    #[serde(default)]
    #[allow(dead_code)]
    messages: Vec<String>,
    #[serde(default)]
    result: Value,
    #[serde(default)]
    result_info: GoPagination,
}

/// `cfapi.apiErr`: `code` is a `json.Number`.
#[derive(Debug, Deserialize)]
struct GoApiErr {
    code: serde_json::Number,
    message: String,
}

/// `cfapi.Pagination`: Go `int`s.
#[derive(Debug, Default, Deserialize)]
struct GoPagination {
    #[serde(default)]
    count: i64,
    #[serde(default)]
    #[allow(dead_code)]
    page: i64,
    #[serde(default)]
    per_page: i64,
    #[serde(default)]
    total_count: i64,
}

mod go_time {
    //! Go's `time.Time` JSON: RFC 3339, `null` leaves the zero time.
    use serde::{Deserialize, Deserializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub fn opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<OffsetDateTime>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => OffsetDateTime::parse(&s, &Rfc3339)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }

    pub fn req<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        opt(d)?.ok_or_else(|| serde::de::Error::custom("time is null"))
    }
}

/// `cfapi.Tunnel` / `TunnelWithToken`.
#[derive(Debug, Deserialize)]
struct GoTunnel {
    id: Uuid,
    name: String,
    #[serde(deserialize_with = "go_time::req")]
    created_at: OffsetDateTime,
    #[serde(default, deserialize_with = "go_time::opt")]
    deleted_at: Option<OffsetDateTime>,
    #[serde(default)]
    connections: Option<Vec<GoConnection>>,
    #[serde(default)]
    token: Option<String>,
}

/// `cfapi.Connection`.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct GoConnection {
    colo_name: String,
    id: Uuid,
    is_pending_reconnect: bool,
    origin_ip: IpAddr,
    #[serde(deserialize_with = "go_time::req")]
    opened_at: OffsetDateTime,
}

/// `cfapi.ActiveClient` (`tunnel info`).
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct GoActiveClient {
    id: Uuid,
    features: Vec<String>,
    conns: Vec<GoConnection>,
    arch: String,
    #[serde(deserialize_with = "go_time::req")]
    run_at: OffsetDateTime,
    version: String,
}

/// `cfapi.DNSRouteResult`.
#[derive(Debug, Deserialize)]
struct GoDnsRouteResult {
    cname: String,
    name: String,
}

/// cloudflared's request: its headers, `Content-Type` only with a body.
async fn cloudflared(
    s: &TestServer,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, GoResponse) {
    let mut req = s
        .client
        .request(method, s.url(path))
        .bearer_auth(&s.token)
        .header("Accept", "application/json;version=1")
        .header("User-Agent", "cloudflared/2023.7.3");
    if let Some(b) = body {
        req = req
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    // statusCodeToError decodes error bodies only on this exact value.
    assert_eq!(
        resp.headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("application/json"),
        "{path}"
    );
    let text = resp.text().await.unwrap();
    let parsed: GoResponse = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("cloudflared cannot decode {path} ({e}): {text}"));
    if status == 200 {
        assert!(parsed.success && parsed.errors.is_empty(), "{text}");
    } else {
        assert!(!parsed.success, "{text}");
        assert!(!parsed.errors.is_empty(), "{text}");
        for e in &parsed.errors {
            assert!(e.code.as_i64().is_some(), "integer code: {text}");
            assert!(!e.message.is_empty(), "{text}");
        }
    }
    (status, parsed)
}

fn result<T: DeserializeOwned>(r: &GoResponse) -> T {
    serde_json::from_value(r.result.clone())
        .unwrap_or_else(|e| panic!("cloudflared cannot decode result ({e}): {}", r.result))
}

fn code(r: &GoResponse) -> i64 {
    r.errors[0].code.as_i64().unwrap()
}

/// A request cloudflared sends expecting success (HTTP 200).
async fn cloudflared_ok(
    s: &TestServer,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> GoResponse {
    let (status, r) = cloudflared(s, method, path, body).await;
    assert_eq!(status, 200, "{path}: {:?}", r.errors);
    r
}

/// A request that must fail with this HTTP status and error code.
async fn cloudflared_fails(
    s: &TestServer,
    method: Method,
    path: &str,
    body: Option<Value>,
    want: (u16, i64),
) -> GoResponse {
    let (status, r) = cloudflared(s, method, path, body).await;
    assert_eq!((status, code(&r)), want, "{path}");
    r
}

/// cloudflared's `fetchExhaustively`: pages until a short page or `total_count`.
async fn list_all(s: &TestServer, query: &str) -> (Vec<GoTunnel>, usize) {
    let mut all = Vec::new();
    let mut page = 0;
    loop {
        page += 1;
        let r = cloudflared_ok(
            s,
            Method::GET,
            &s.acct(&format!("/cfd_tunnel?{query}&page={page}")),
            None,
        )
        .await;
        let items: Vec<GoTunnel> = result(&r);
        assert_eq!(items.len() as i64, r.result_info.count);
        all.extend(items);
        if r.result_info.count < r.result_info.per_page
            || all.len() as i64 >= r.result_info.total_count
        {
            break;
        }
        assert!(page < 100, "pagination does not terminate");
    }
    (all, page)
}

/// The tunnels [`list_all`] finds for `query`, which must be `n`.
async fn listed(s: &TestServer, query: &str, n: usize) -> Vec<GoTunnel> {
    let (all, _) = list_all(s, query).await;
    assert_eq!(all.len(), n, "tunnels listed for {query}");
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cloudflared_tunnel_subcommands_parse_culverts_answers() {
    let s = TestServer::start(Backend::Sqlite).await;

    // `tunnel create NAME`: {"name","tunnel_secret"} → TunnelWithToken.
    let secret = [9u8; 32];
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, secret);
    let r = cloudflared_ok(
        &s,
        Method::POST,
        &s.acct("/cfd_tunnel"),
        Some(json!({"name": "cfd", "tunnel_secret": b64})),
    )
    .await;
    let created: GoTunnel = result(&r);
    assert_eq!(created.name, "cfd");
    assert!(created.deleted_at.is_none());
    assert!(created.connections.unwrap_or_default().is_empty());
    let token = TunnelToken::decode(created.token.as_deref().unwrap()).unwrap();
    assert_eq!(token.tunnel_id, created.id);
    assert_eq!(token.secret, secret);
    let id = created.id;
    // Later cloudflared versions also send config_src "local".
    cloudflared_ok(
        &s,
        Method::POST,
        &s.acct("/cfd_tunnel"),
        Some(json!({"name": "cfd2", "tunnel_secret": b64, "config_src": "local"})),
    )
    .await;
    // Duplicate name: 409 (cloudflared's ErrTunnelNameConflict), code 1013.
    cloudflared_fails(
        &s,
        Method::POST,
        &s.acct("/cfd_tunnel"),
        Some(json!({"name": "cfd", "tunnel_secret": b64})),
        (409, 1013),
    )
    .await;

    // `tunnel list` and name resolution: is_deleted=false, name, name_prefix, …
    for i in 0..23 {
        cloudflared_ok(
            &s,
            Method::POST,
            &s.acct("/cfd_tunnel"),
            Some(json!({"name": format!("bulk-{i:02}"), "tunnel_secret": b64})),
        )
        .await;
    }
    let (all, pages) = list_all(&s, "is_deleted=false").await;
    assert_eq!((all.len(), pages), (25, 2), "default per_page 20");
    let (all, pages) = list_all(&s, "is_deleted=false&per_page=5").await;
    assert_eq!(
        (all.len(), pages),
        (25, 5),
        "the last page is full: total_count ends it"
    );
    let hit = listed(&s, "is_deleted=false&name=cfd", 1).await;
    assert_eq!(hit[0].id, id);
    listed(&s, "is_deleted=false&name_prefix=bulk-1", 10).await;
    listed(&s, "is_deleted=false&exclude_prefix=bulk", 2).await;
    listed(&s, &format!("is_deleted=false&uuid={id}"), 1).await;
    listed(
        &s,
        "is_deleted=false&existed_at=2000-01-01T00%3A00%3A00Z",
        0,
    )
    .await;

    // `tunnel token`: result is the token string.
    let r = cloudflared_ok(
        &s,
        Method::GET,
        &s.acct(&format!("/cfd_tunnel/{id}/token")),
        None,
    )
    .await;
    let t: String = result(&r);
    assert_eq!(TunnelToken::decode(&t).unwrap().secret, secret);

    // `tunnel route dns`: the zone from cert.pem.
    let zone = s
        .store()
        .create_zone(&s.account, "example.com")
        .await
        .unwrap();
    let route = |host: &'static str, want: (&'static str, &'static str)| {
        let s = &s;
        let path = format!("/zones/{}/tunnels/{id}/routes", zone.id);
        async move {
            let r = cloudflared_ok(
                s,
                Method::PUT,
                &path,
                Some(json!({"type": "dns", "user_hostname": host, "overwrite_existing": false})),
            )
            .await;
            let rr: GoDnsRouteResult = result(&r);
            assert_eq!((rr.cname.as_str(), rr.name.as_str()), want, "{host}");
        }
    };
    route("cfd.example.com", ("new", "cfd.example.com")).await;
    route("cfd", ("unchanged", "cfd.example.com")).await;

    // A live connector, so that `info`, `cleanup` and `delete` see connections.
    let c = start_connector(
        &s,
        created.token.as_deref().unwrap(),
        ConnectorOptions {
            grace_period: Duration::ZERO,
            ..ConnectorOptions::ha(2)
        },
    );
    c.wait_ready(2).await;

    // `tunnel info`: GET the tunnel, then its connections as ActiveClients.
    let r = cloudflared_ok(&s, Method::GET, &s.acct(&format!("/cfd_tunnel/{id}")), None).await;
    let got: GoTunnel = result(&r);
    assert_eq!((got.id, got.name.as_str()), (id, "cfd"));
    assert!(got.created_at <= OffsetDateTime::now_utc());
    let connections = s.acct(&format!("/cfd_tunnel/{id}/connections"));
    let active_clients = || async {
        let r = cloudflared_ok(&s, Method::GET, &connections, None).await;
        result::<Vec<GoActiveClient>>(&r)
    };
    eventually("both connections listed", || async {
        active_clients()
            .await
            .first()
            .is_some_and(|c| c.conns.len() == 2)
    })
    .await;
    let clients = active_clients().await;
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0].id, c.state.connector_id());
    assert_eq!(clients[0].conns.len(), 2);
    for conn in &clients[0].conns {
        assert!(conn.origin_ip.is_loopback(), "{conn:?}");
        assert!(!conn.is_pending_reconnect);
    }

    // `tunnel delete` without -f: cloudflared GETs, then DELETEs without a body.
    let r = cloudflared_fails(
        &s,
        Method::DELETE,
        &s.acct(&format!("/cfd_tunnel/{id}")),
        None,
        (400, 1022),
    )
    .await;
    assert!(r.errors[0].message.contains("active connections"));

    // `tunnel cleanup --connector-id`: DELETE …/connections?client_id=, no body.
    cloudflared_ok(
        &s,
        Method::DELETE,
        &format!("{connections}?client_id={}", clients[0].id),
        None,
    )
    .await;
    // `tunnel cleanup` of a whole tunnel.
    cloudflared_ok(&s, Method::DELETE, &connections, None).await;

    // `tunnel delete -f`: cascade=true, whatever the connector does meanwhile.
    cloudflared_ok(
        &s,
        Method::DELETE,
        &s.acct(&format!("/cfd_tunnel/{id}?cascade=true")),
        None,
    )
    .await;
    c.stop().await;
    // The deleted tunnel stays readable with deleted_at (cloudflared's
    // "has already been deleted" check) and leaves is_deleted=false lists.
    let (_, r) = cloudflared(&s, Method::GET, &s.acct(&format!("/cfd_tunnel/{id}")), None).await;
    let got: GoTunnel = result(&r);
    assert!(got.deleted_at.is_some());
    listed(&s, "is_deleted=false&name=cfd", 0).await;
    // Without is_deleted, deleted tunnels are listed.
    listed(&s, "name=cfd", 1).await;

    // Errors cloudflared decodes: unknown tunnel, bad token.
    cloudflared_fails(
        &s,
        Method::GET,
        &s.acct(&format!("/cfd_tunnel/{}", Uuid::new_v4())),
        None,
        (404, 1003),
    )
    .await;
    let resp = s
        .client
        .get(s.url(&s.acct("/cfd_tunnel")))
        .bearer_auth("wrong")
        .header("Accept", "application/json;version=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let r: GoResponse = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert!(!r.success && r.errors[0].code.as_i64().is_some());
    s.stop().await;
}
