//! Test harness: a real `culvert server` in process on 127.0.0.1:0, on a
//! SQLite file in a temp dir or on a throw-away PostgreSQL database.

#![allow(dead_code)]

use std::net::SocketAddr;

use culvert::server::{self, Bootstrap, RunningServer, ServerConfig};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use tempfile::TempDir;

pub const PG_ENV: &str = "CULVERT_TEST_POSTGRES_URL";

#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    /// PostgreSQL from the environment, or `None` after saying it is skipped.
    pub fn postgres(test: &str) -> Option<Backend> {
        match std::env::var(PG_ENV) {
            Ok(url) if !url.is_empty() => Some(Backend::Postgres(url)),
            _ => {
                eprintln!("skipped: {test} on PostgreSQL: {PG_ENV} not set");
                None
            }
        }
    }
}

pub struct TestServer {
    pub server: Option<RunningServer>,
    pub dir: TempDir,
    pub client: reqwest::Client,
    pub base: String,
    pub account: String,
    pub token: String,
    backend: Backend,
    pg_db: Option<String>,
    database_url: Option<String>,
}

pub async fn pg_database(base: &str) -> (String, String) {
    let (store, name) = culvert_store::testing::open_isolated_postgres(base)
        .await
        .expect("create a PostgreSQL test database");
    store.close().await;
    let url = culvert_store::testing::database_url(base, &name).unwrap();
    (name, url)
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, |_| {}).await
    }

    /// Like [`TestServer::start`], with `tweak` applied to the configuration.
    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let (pg_db, database_url) = match &backend {
            Backend::Sqlite => (None, None),
            Backend::Postgres(base) => {
                let (name, url) = pg_database(base).await;
                (Some(name), Some(url))
            }
        };
        let mut cfg = config(&dir, database_url.clone());
        tweak(&mut cfg);
        let server = server::start(cfg).await.unwrap();
        let Bootstrap {
            account_id,
            api_token,
            api_url,
        } = server.bootstrap.clone().expect("first start bootstraps");
        TestServer {
            server: Some(server),
            client: reqwest::Client::new(),
            base: api_url,
            account: account_id,
            token: api_token,
            dir,
            backend,
            pg_db,
            database_url,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.as_ref().unwrap().api_addr
    }

    pub fn store(&self) -> &culvert_store::Store {
        &self.server.as_ref().unwrap().store
    }

    /// Stops and starts the server on the same data (a restart).
    pub async fn restart(&mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
        let server = server::start(config(&self.dir, self.database_url.clone()))
            .await
            .unwrap();
        assert!(
            server.bootstrap.is_none(),
            "a restart must not bootstrap again"
        );
        self.base = server.api_url.clone();
        self.server = Some(server);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn acct(&self, rest: &str) -> String {
        format!("/accounts/{}{}", self.account, rest)
    }

    /// A request with the admin bearer token.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    pub fn req_as(&self, token: &str, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
    }

    pub async fn create_tunnel(&self, name: &str) -> Value {
        let (status, body) = call(
            self.req(Method::POST, &self.acct("/cfd_tunnel"))
                .json(&serde_json::json!({"name": name})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        body["result"].clone()
    }

    /// A token of the bootstrap account with these permission groups.
    pub async fn token_with(&self, groups: &[&str]) -> String {
        let (_, secret) = server::create_token(
            self.store(),
            &self.account,
            "test",
            groups.iter().map(|g| g.to_string()).collect(),
            None,
            None,
        )
        .await
        .unwrap();
        secret
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.unwrap();
        }
        if let (Backend::Postgres(base), Some(db)) = (&self.backend, &self.pg_db) {
            let _ = culvert_store::testing::drop_isolated_postgres(base, db).await;
        }
    }
}

pub fn config(dir: &TempDir, database_url: Option<String>) -> ServerConfig {
    let mut c = ServerConfig::loopback(dir.path().join("data"), database_url);
    c.max_body_bytes = 64 * 1024;
    c
}

/// Sends a request; returns the status and the JSON body, after checking the
/// envelope invariants every answer must keep.
pub async fn call(req: RequestBuilder) -> (u16, Value) {
    let resp: Response = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        ct.as_deref(),
        Some("application/json"),
        "exact content type (status {status})"
    );
    let text = resp.text().await.unwrap();
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(body["messages"], serde_json::json!([]), "{text}");
    assert!(body["errors"].is_array(), "{text}");
    if (200..300).contains(&status) {
        assert_eq!(body["success"], true, "{text}");
        assert_eq!(body["errors"], serde_json::json!([]), "{text}");
    } else {
        assert_eq!(body["success"], false, "{text}");
        assert!(body["result"].is_null(), "{text}");
        assert!(!body["errors"].as_array().unwrap().is_empty(), "{text}");
    }
    (status, body)
}

/// Polls every 100 ms until `check` holds; fails the test after 20 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A GET for `host` through the server's public (eyeball) listener.
pub fn public(s: &TestServer, host: &str, path: &str) -> RequestBuilder {
    public_with(s, Method::GET, host, path)
}

/// [`public`] with another method.
pub fn public_with(s: &TestServer, method: Method, host: &str, path: &str) -> RequestBuilder {
    let addr = s.server.as_ref().unwrap().http_addr;
    s.client
        .request(method, format!("http://{addr}{path}"))
        .header("host", host)
}

/// The first error code of a failure body.
pub fn code(body: &Value) -> i64 {
    body["errors"][0]["code"].as_i64().unwrap()
}

/// Runs one scenario on SQLite and (when configured) on PostgreSQL.
#[macro_export]
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let s = $crate::common::TestServer::start($crate::common::Backend::Sqlite).await;
                super::$name(&s).await;
                s.stop().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(b) = $crate::common::Backend::postgres(stringify!($name)) else {
                    return;
                };
                let s = $crate::common::TestServer::start(b).await;
                super::$name(&s).await;
                s.stop().await;
            }
        }
    };
}
