//! `culvert server`: opens the store, bootstraps the first account and admin
//! token, and serves the API until shut down.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use culvert_api::auth::{PERMISSION_GROUPS, generate_token_secret, hash_secret};
use culvert_api::{ApiSettings, ApiState, EdgeControl, ManagementKeys};
use culvert_edge::{EdgeConfig, RunningEdge};
use culvert_store::{ApiToken, CredentialKind, Store, now_micros};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where the server keeps its state and where it listens.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub api_listen: SocketAddr,
    /// `None`: a SQLite file in the data dir.
    pub database_url: Option<String>,
    pub max_body_bytes: usize,
    /// QUIC listener for connectors.
    pub edge_listen: SocketAddr,
    /// Public HTTP listener for eyeballs.
    pub http_listen: SocketAddr,
    /// Operator-supplied edge certificate chain and key (PEM); else a CA in
    /// the data dir signs one.
    pub edge_cert: Option<PathBuf>,
    pub edge_key: Option<PathBuf>,
    /// `<tunnel-id>.<tunnel_domain>` always reaches its tunnel.
    pub tunnel_domain: String,
    /// Location name reported to connectors (`colo_name`).
    pub location: String,
    /// Edge address(es) written into minted tokens (`culvert_edge`, with the
    /// CA as `culvert_ca`), so `culvert tunnel run --token T` needs no flags.
    pub public_edge_address: Vec<String>,
    /// Prometheus `/metrics`, `/healthz` and `/readyz`.
    pub metrics_listen: Option<SocketAddr>,
    /// Public HTTPS listener (eyeballs, `wss://` management host) with the
    /// certificate chain and key files (reloaded on change).
    pub https: Option<culvert_edge::HttpsOptions>,
    /// Public management host name; `None` = `management.<tunnel_domain>`.
    pub management_hostname: Option<String>,
    /// How long the edge waits for a connector's response head
    /// (`--origin-response-timeout`); `None`: no limit.
    pub origin_response_timeout: Option<std::time::Duration>,
}

impl ServerConfig {
    /// Everything on 127.0.0.1 port 0 (tests).
    pub fn loopback(data_dir: PathBuf, database_url: Option<String>) -> Self {
        let any: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        ServerConfig {
            data_dir,
            api_listen: any,
            database_url,
            max_body_bytes: 1024 * 1024,
            edge_listen: any,
            http_listen: any,
            edge_cert: None,
            edge_key: None,
            tunnel_domain: culvert_edge::DEFAULT_TUNNEL_DOMAIN.to_string(),
            location: culvert_edge::DEFAULT_LOCATION.to_string(),
            public_edge_address: Vec::new(),
            metrics_listen: Some(any),
            https: None,
            management_hostname: None,
            origin_response_timeout: None,
        }
    }
}

impl ServerConfig {
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| default_database_url(&self.data_dir))
    }
}

pub fn default_database_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("culvert.db").display())
}

/// The first-start credentials, as written to `<data-dir>/bootstrap.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Bootstrap {
    pub account_id: String,
    pub api_token: String,
    pub api_url: String,
}

const BOOTSTRAP_MARKER: &str = "bootstrap_account_id";

/// Creates the data directory (0700) if needed.
pub fn prepare_data_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut perms = std::fs::metadata(dir)?.permissions();
    if perms.mode() & 0o077 != 0 {
        perms.set_mode(0o700);
        std::fs::set_permissions(dir, perms)?;
    }
    Ok(())
}

/// Writes `contents` to `path` with mode 0600 (never readable by others, even briefly).
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Creates an API token and returns its secret (shown once, stored hashed).
pub async fn create_token(
    store: &Store,
    account_id: &str,
    name: &str,
    permissions: Vec<String>,
    expires_on: Option<i64>,
    not_before: Option<i64>,
) -> Result<(ApiToken, String)> {
    let secret = generate_token_secret().map_err(|_| anyhow::anyhow!("system RNG failed"))?;
    let token = ApiToken {
        id: uuid::Uuid::new_v4().simple().to_string(),
        account_id: account_id.to_string(),
        name: name.to_string(),
        kind: CredentialKind::ApiToken,
        email: None,
        secret_hash: hash_secret(&secret),
        permissions,
        created_at: now_micros(),
        expires_on,
        not_before,
        revoked_at: None,
    };
    store.create_api_token(&token).await?;
    Ok((token, secret))
}

/// On first start: an account and an admin token with every permission group.
/// Returns `Some` only the first time.
async fn bootstrap(store: &Store, api_url: &str) -> Result<Option<Bootstrap>> {
    if store.get_setting(BOOTSTRAP_MARKER).await?.is_some() {
        return Ok(None);
    }
    let account = store.create_account("default").await?;
    let winner = store
        .put_setting_if_absent(BOOTSTRAP_MARKER, &account.id)
        .await?;
    if winner != account.id {
        // Another server sharing the database bootstrapped first.
        return Ok(None);
    }
    let groups = PERMISSION_GROUPS.iter().map(|g| g.to_string()).collect();
    let (_, secret) =
        create_token(store, &account.id, "bootstrap admin", groups, None, None).await?;
    Ok(Some(Bootstrap {
        account_id: account.id,
        api_token: secret,
        api_url: api_url.to_string(),
    }))
}

fn url_host(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        "127.0.0.1".parse().unwrap_or(addr.ip())
    } else {
        addr.ip()
    };
    SocketAddr::new(ip, addr.port()).to_string()
}

/// A running server (tests start it in process on port 0).
pub struct RunningServer {
    pub api_addr: SocketAddr,
    /// QUIC edge address connectors dial.
    pub edge_addr: SocketAddr,
    /// Public HTTP listener.
    pub http_addr: SocketAddr,
    /// PEM of the CA connectors must trust (`--cacert`).
    pub edge_ca_pem: String,
    pub api_url: String,
    /// Set on the very first start only.
    pub bootstrap: Option<Bootstrap>,
    pub store: Store,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
    edge: Option<RunningEdge>,
    /// `/metrics`, `/healthz`, `/readyz` (with `metrics_listen`).
    pub metrics_addr: Option<SocketAddr>,
    /// Public HTTPS listener (with `https`).
    pub https_addr: Option<SocketAddr>,
    observed: Arc<crate::observe::Observed>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight requests finish, closes the store.
    pub async fn shutdown(mut self) -> Result<()> {
        self.observed
            .api_up
            .store(false, std::sync::atomic::Ordering::Release);
        let _ = self.shutdown.send(true);
        let api = self.task.await.context("server task panicked")?;
        if let Some(edge) = self.edge.take() {
            edge.shutdown().await;
        }
        self.store.close().await;
        api
    }
}

/// This node's id in the shared registry, kept in the data dir so a restart
/// can clear the connections it held before.
fn node_id(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let id = uuid::Uuid::new_v4().to_string();
            write_private_file(&path, id.as_bytes())?;
            Ok(id)
        }
    }
}

/// Opens everything and starts serving in the background.
pub async fn start(config: ServerConfig) -> Result<RunningServer> {
    prepare_data_dir(&config.data_dir)?;
    let url = config.database_url();
    let store = Store::open(&url)
        .await
        .with_context(|| format!("opening the store at {}", redact(&url)))?;
    let keys = ManagementKeys::load_or_create(&store).await?;
    let listener = TcpListener::bind(config.api_listen)
        .await
        .with_context(|| format!("binding the API on {}", config.api_listen))?;
    let api_addr = listener.local_addr()?;
    let api_url = format!("http://{}/client/v4", url_host(api_addr));

    let bootstrap = bootstrap(&store, &api_url).await?;
    if let Some(b) = &bootstrap {
        let path = config.data_dir.join("bootstrap.json");
        write_private_file(&path, &serde_json::to_vec_pretty(b)?)?;
    }

    let edge = culvert_edge::start_with(
        EdgeConfig {
            edge_listen: config.edge_listen,
            http_listen: config.http_listen,
            data_dir: config.data_dir.clone(),
            edge_cert: config.edge_cert.clone(),
            edge_key: config.edge_key.clone(),
            tunnel_domain: config.tunnel_domain.clone(),
            location: config.location.clone(),
            node_id: node_id(&config.data_dir)?,
            management: culvert_edge::ManagementOptions {
                hostname: config.management_hostname.clone(),
                connector_hostname: None,
            },
            https: config.https.clone(),
        },
        store.clone(),
        culvert_edge::Tuning {
            response_timeout: config.origin_response_timeout,
            ..culvert_edge::Tuning::default()
        },
    )
    .await
    .context("starting the edge")?;
    let control: Arc<dyn EdgeControl> = edge.control();
    let mut token_extras = serde_json::Map::new();
    if !config.public_edge_address.is_empty() {
        token_extras.insert(
            "culvert_edge".into(),
            serde_json::json!(config.public_edge_address),
        );
        token_extras.insert("culvert_ca".into(), serde_json::json!(edge.ca_pem()));
    }
    let state = ApiState::new(
        store.clone(),
        keys,
        control,
        ApiSettings {
            max_body_bytes: config.max_body_bytes,
            token_extras,
        },
    );
    let api_metrics = Arc::new(crate::observe::ApiMetrics::default());
    let app = culvert_api::router(state).layer(axum::middleware::from_fn_with_state(
        api_metrics.clone(),
        crate::observe::track,
    ));
    let observed = Arc::new(crate::observe::Observed {
        api: api_metrics,
        edge: edge.observer(),
        store: store.clone(),
        api_up: std::sync::atomic::AtomicBool::new(true),
    });
    let (tx, mut rx) = watch::channel(false);
    let metrics_addr = match config.metrics_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics listener on {addr}"))?;
            let bound = l.local_addr()?;
            let mut stop = rx.clone();
            let app = crate::observe::router(observed.clone());
            tokio::spawn(async move {
                let r = axum::serve(l, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "metrics listener failed");
                }
            });
            Some(bound)
        }
        None => None,
    };
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|stop| *stop).await;
            })
            .await
            .context("API server failed")
    });
    tracing::info!(
        api = %api_addr,
        edge = %edge.quic_addr(),
        http = %edge.http_addr(),
        database = %redact(&url),
        "culvert server started"
    );
    let https_addr = edge.https_addr();
    Ok(RunningServer {
        api_addr,
        edge_addr: edge.quic_addr(),
        http_addr: edge.http_addr(),
        edge_ca_pem: edge.ca_pem().to_string(),
        api_url,
        bootstrap,
        store,
        shutdown: tx,
        task,
        edge: Some(edge),
        metrics_addr,
        https_addr,
        observed,
    })
}

/// Hides a password in a database URL for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:///x/y.db"), "sqlite:///x/y.db");
    }

    #[test]
    fn api_url_uses_loopback_for_unspecified() {
        assert_eq!(url_host("0.0.0.0:8787".parse().unwrap()), "127.0.0.1:8787");
        assert_eq!(url_host("127.0.0.2:1".parse().unwrap()), "127.0.0.2:1");
    }
}
