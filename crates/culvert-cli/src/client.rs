//! The REST client: the same requests cloudflared's `cfapi` package sends
//! (spec §1.1, §3–§10), over reqwest with rustls/ring.

use std::time::Duration;

use futures::StreamExt as _;
use reqwest::{Method, RequestBuilder};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::{ApiErrorItem, ApiFailure, CliError};
use crate::types::{Connector, ResultInfo, RouteResult, TokenStatus, Tunnel, TunnelConfiguration};

/// cloudflared's default API base.
pub const DEFAULT_API_URL: &str = "https://api.cloudflare.com/client/v4";

/// Largest API answer read (a page of 1000 tunnels is well under this).
pub const MAX_RESPONSE_LEN: usize = 16 * 1024 * 1024;

/// Filters of `GET …/cfd_tunnel` (cloudflared's `TunnelFilter`).
#[derive(Debug, Clone, Default)]
pub struct TunnelFilter {
    pub name: Option<String>,
    pub name_prefix: Option<String>,
    pub exclude_prefix: Option<String>,
    /// RFC 3339.
    pub existed_at: Option<String>,
    pub uuid: Option<Uuid>,
    /// Include deleted tunnels (no `is_deleted=false`).
    pub show_deleted: bool,
    pub per_page: Option<u32>,
}

impl TunnelFilter {
    /// Only the live tunnel(s) named `name`.
    pub fn live_named(name: &str) -> Self {
        TunnelFilter {
            name: Some(name.to_owned()),
            ..Default::default()
        }
    }

    fn query(&self, page: u32) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if !self.show_deleted {
            q.append_pair("is_deleted", "false");
        }
        if let Some(v) = &self.name {
            q.append_pair("name", v);
        }
        if let Some(v) = &self.name_prefix {
            q.append_pair("name_prefix", v);
        }
        if let Some(v) = &self.exclude_prefix {
            q.append_pair("exclude_prefix", v);
        }
        if let Some(v) = &self.existed_at {
            q.append_pair("existed_at", v);
        }
        if let Some(v) = &self.uuid {
            q.append_pair("uuid", &v.to_string());
        }
        if let Some(v) = self.per_page {
            q.append_pair("per_page", &v.to_string());
        }
        q.append_pair("page", &page.to_string());
        q.finish()
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    errors: Vec<ApiErrorItem>,
    #[serde(default)]
    result: Value,
    #[serde(default)]
    result_info: Option<ResultInfo>,
}

/// An authenticated client for one account.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    pub account_id: String,
    token: String,
}

impl ApiClient {
    pub fn new(base: &str, account_id: &str, token: &str) -> Result<Self, CliError> {
        let base = base.trim_end_matches('/').to_owned();
        let parsed = url::Url::parse(&base)
            .map_err(|e| CliError::usage(format!("--api-url {base:?} is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(CliError::usage(format!(
                "--api-url {base:?} must be an http:// or https:// URL"
            )));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("culvert/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|source| CliError::Transport {
                context: "building the HTTP client".into(),
                url: base.clone(),
                source,
            })?;
        Ok(ApiClient {
            http,
            base,
            account_id: account_id.to_owned(),
            token: token.to_owned(),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        // Headers as cloudflared sends them; Content-Type only with a body
        // (reqwest's `.json()` adds it).
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("Accept", "application/json;version=1")
    }

    fn tunnel_path(&self, id: Uuid) -> String {
        format!("/accounts/{}/cfd_tunnel/{id}", self.account_id)
    }

    /// Sends a request and unwraps the envelope: `(result, result_info)`.
    async fn send(
        &self,
        req: RequestBuilder,
        context: &str,
    ) -> Result<(Value, Option<ResultInfo>), CliError> {
        let url_of = |r: &reqwest::Error| {
            r.url()
                .map(|u| u.to_string())
                .unwrap_or_else(|| self.base.clone())
        };
        let resp = req.send().await.map_err(|source| CliError::Transport {
            context: context.to_owned(),
            url: url_of(&source),
            source,
        })?;
        let status = resp.status().as_u16();
        let json_ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| CliError::Transport {
                context: context.to_owned(),
                url: self.base.clone(),
                source,
            })?;
            if body.len() + chunk.len() > MAX_RESPONSE_LEN {
                return Err(CliError::Protocol {
                    context: context.to_owned(),
                    status,
                    detail: format!("answer larger than {MAX_RESPONSE_LEN} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        let envelope: Option<Envelope> = if json_ct {
            serde_json::from_slice(&body).ok()
        } else {
            None
        };
        let Some(env) = envelope else {
            let snippet: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            return Err(CliError::Protocol {
                context: context.to_owned(),
                status,
                detail: if snippet.is_empty() {
                    "empty body".into()
                } else {
                    format!("not a v4 JSON envelope: {snippet:?}")
                },
            });
        };
        if !(200..300).contains(&status) || !env.success {
            return Err(CliError::Api {
                context: context.to_owned(),
                failure: ApiFailure {
                    status,
                    errors: env.errors,
                },
            });
        }
        Ok((env.result, env.result_info))
    }

    async fn send_as<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
        context: &str,
    ) -> Result<T, CliError> {
        let (result, _) = self.send(req, context).await?;
        serde_json::from_value(result).map_err(|e| CliError::Protocol {
            context: context.to_owned(),
            status: 200,
            detail: format!("result does not parse: {e}"),
        })
    }

    /// `GET /accounts/{id}/tokens/verify` (or `/user/tokens/verify` without an account).
    pub async fn verify_token(&self) -> Result<TokenStatus, CliError> {
        let path = if self.account_id.is_empty() {
            "/user/tokens/verify".to_owned()
        } else {
            format!("/accounts/{}/tokens/verify", self.account_id)
        };
        self.send_as(self.request(Method::GET, &path), "verifying the API token")
            .await
    }

    /// Every page of `GET …/cfd_tunnel`, stopping as cloudflared does: when a
    /// page is short (`count < per_page`) or `total_count` items were fetched.
    /// `on_page` sees the running total (for progress output).
    pub async fn list_tunnels(&self, filter: &TunnelFilter) -> Result<Vec<Tunnel>, CliError> {
        let path = format!("/accounts/{}/cfd_tunnel", self.account_id);
        let mut all: Vec<Tunnel> = Vec::new();
        let mut page = 0u32;
        loop {
            page += 1;
            let req = self.request(Method::GET, &format!("{path}?{}", filter.query(page)));
            let (result, info) = self.send(req, "listing tunnels").await?;
            let items: Vec<Tunnel> =
                serde_json::from_value(result).map_err(|e| CliError::Protocol {
                    context: "listing tunnels".into(),
                    status: 200,
                    detail: format!("result does not parse: {e}"),
                })?;
            let got = items.len();
            all.extend(items);
            let info = info.unwrap_or_default();
            if info.count < info.per_page || all.len() as i64 >= info.total_count || got == 0 {
                break;
            }
        }
        Ok(all)
    }

    pub async fn get_tunnel(&self, id: Uuid) -> Result<Tunnel, CliError> {
        self.send_as(
            self.request(Method::GET, &self.tunnel_path(id)),
            &format!("getting tunnel {id}"),
        )
        .await
    }

    /// `POST …/cfd_tunnel {"name","tunnel_secret"}` (a locally managed tunnel, as cloudflared creates).
    pub async fn create_tunnel(&self, name: &str, secret_b64: &str) -> Result<Tunnel, CliError> {
        let path = format!("/accounts/{}/cfd_tunnel", self.account_id);
        self.send_as(
            self.request(Method::POST, &path)
                .json(&json!({"name": name, "tunnel_secret": secret_b64})),
            &format!("creating tunnel {name:?}"),
        )
        .await
    }

    /// `DELETE …/cfd_tunnel/{id}[?cascade=true]`, no body.
    pub async fn delete_tunnel(&self, id: Uuid, cascade: bool) -> Result<(), CliError> {
        let mut path = self.tunnel_path(id);
        if cascade {
            path.push_str("?cascade=true");
        }
        self.send(
            self.request(Method::DELETE, &path),
            &format!("deleting tunnel {id}"),
        )
        .await
        .map(drop)
    }

    /// `PATCH …/cfd_tunnel/{id}` with the given fields.
    pub async fn patch_tunnel(&self, id: Uuid, body: Value) -> Result<Tunnel, CliError> {
        self.send_as(
            self.request(Method::PATCH, &self.tunnel_path(id))
                .json(&body),
            &format!("updating tunnel {id}"),
        )
        .await
    }

    /// `GET …/cfd_tunnel/{id}/token`.
    pub async fn tunnel_token(&self, id: Uuid) -> Result<String, CliError> {
        self.send_as(
            self.request(Method::GET, &format!("{}/token", self.tunnel_path(id))),
            &format!("getting the token of tunnel {id}"),
        )
        .await
    }

    /// `GET …/cfd_tunnel/{id}/connections`.
    pub async fn connectors(&self, id: Uuid) -> Result<Vec<Connector>, CliError> {
        self.send_as(
            self.request(
                Method::GET,
                &format!("{}/connections", self.tunnel_path(id)),
            ),
            &format!("listing the connections of tunnel {id}"),
        )
        .await
    }

    /// `DELETE …/cfd_tunnel/{id}/connections[?client_id=…]`, no body.
    pub async fn cleanup_connections(
        &self,
        id: Uuid,
        client_id: Option<Uuid>,
    ) -> Result<(), CliError> {
        let mut path = format!("{}/connections", self.tunnel_path(id));
        if let Some(c) = client_id {
            path.push_str(&format!("?client_id={c}"));
        }
        self.send(
            self.request(Method::DELETE, &path),
            &format!("cleaning up the connections of tunnel {id}"),
        )
        .await
        .map(drop)
    }

    /// `GET …/cfd_tunnel/{id}/configurations`.
    pub async fn get_config(&self, id: Uuid) -> Result<TunnelConfiguration, CliError> {
        self.send_as(
            self.request(
                Method::GET,
                &format!("{}/configurations", self.tunnel_path(id)),
            ),
            &format!("getting the configuration of tunnel {id}"),
        )
        .await
    }

    /// `PUT …/cfd_tunnel/{id}/configurations {"config": …}`.
    pub async fn put_config(
        &self,
        id: Uuid,
        config: &Value,
    ) -> Result<TunnelConfiguration, CliError> {
        self.send_as(
            self.request(
                Method::PUT,
                &format!("{}/configurations", self.tunnel_path(id)),
            )
            .json(&json!({ "config": config })),
            &format!("updating the configuration of tunnel {id}"),
        )
        .await
    }

    /// `PUT /zones/{zone_id}/tunnels/{tunnel_id}/routes` (cloudflared's `route dns`).
    pub async fn route_dns(
        &self,
        zone_id: &str,
        id: Uuid,
        hostname: &str,
        overwrite: bool,
    ) -> Result<RouteResult, CliError> {
        self.send_as(
            self.request(
                Method::PUT,
                &format!("/zones/{zone_id}/tunnels/{id}/routes"),
            )
            .json(
                &json!({"type": "dns", "user_hostname": hostname, "overwrite_existing": overwrite}),
            ),
            &format!("routing {hostname} to tunnel {id}"),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_query_matches_cloudflared() {
        let f = TunnelFilter::default();
        assert_eq!(f.query(1), "is_deleted=false&page=1");
        let f = TunnelFilter {
            name: Some("a b".into()),
            name_prefix: Some("p".into()),
            exclude_prefix: Some("x".into()),
            existed_at: Some("2024-01-01T00:00:00Z".into()),
            uuid: Some(Uuid::nil()),
            show_deleted: true,
            per_page: Some(5),
        };
        assert_eq!(
            f.query(3),
            "name=a+b&name_prefix=p&exclude_prefix=x&existed_at=2024-01-01T00%3A00%3A00Z&uuid=00000000-0000-0000-0000-000000000000&per_page=5&page=3"
        );
    }

    #[test]
    fn bad_api_urls_are_refused() {
        assert!(ApiClient::new("ftp://x", "a", "t").is_err());
        assert!(ApiClient::new("not a url", "a", "t").is_err());
        let c = ApiClient::new("http://127.0.0.1:1/client/v4/", "a", "t").unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:1/client/v4");
    }
}
