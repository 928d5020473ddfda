//! cloudflared's local files: `config.yml` (`tunnel`, `credentials-file`,
//! `ingress`, `originRequest`, `warp-routing`, Go durations such as `30s`)
//! and credentials files (`{"AccountTag","TunnelSecret","TunnelID","Endpoint"}`).
//!
//! Lookup follows cloudflared: `--config PATH`, else the first `config.yml`
//! (or `config.yaml`) in `~/.culvert` (culvert's own, searched first),
//! `~/.cloudflared`, `~/.cloudflare-warp`, `~/cloudflare-warp`,
//! `/etc/cloudflared`, `/usr/local/etc/cloudflared`. A tunnel's credentials
//! are `credentials-file` (flag or config key), else `<UUID>.json` next to
//! the config file or in those directories.
//!
//! [`ConfigWatcher`] reloads the file when its modification time or size
//! changes (polled) and on SIGHUP, and applies the new ingress through the
//! [`Orchestrator`] without touching connections.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use culvert_ingress::Ingress;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::ConnectorError;
use crate::orchestrator::Orchestrator;

/// File names looked for in each directory, in order.
pub const CONFIG_FILE_NAMES: [&str; 2] = ["config.yml", "config.yaml"];
/// Largest configuration or credentials file read.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// How often [`ConfigWatcher`] checks the file.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The default search directories, culvert's first, then cloudflared's.
pub fn default_config_dirs(home: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(h) = home {
        for d in [
            ".culvert",
            ".cloudflared",
            ".cloudflare-warp",
            "cloudflare-warp",
        ] {
            dirs.push(h.join(d));
        }
    }
    dirs.push(PathBuf::from("/etc/cloudflared"));
    dirs.push(PathBuf::from("/usr/local/etc/cloudflared"));
    dirs
}

/// `$HOME`, if set.
pub fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// The first configuration file in `dirs`.
pub fn find_config_file(dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter()
        .flat_map(|d| CONFIG_FILE_NAMES.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

/// Reads a small file, refusing anything larger than [`MAX_FILE_BYTES`].
pub fn read_small(path: &Path, what: &str) -> Result<String, ConnectorError> {
    let io = |source| ConnectorError::Io {
        what: format!("reading the {what} {}", path.display()),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(ConnectorError::Config(format!(
            "the {what} {} is larger than {MAX_FILE_BYTES} bytes",
            path.display()
        )));
    }
    std::fs::read_to_string(path).map_err(io)
}

/// A parsed `config.yml`.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Where it was read from.
    pub source: PathBuf,
    /// The whole document as JSON (YAML mappings become objects).
    pub doc: Value,
}

impl LocalConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<LocalConfig, ConnectorError> {
        let text = read_small(path, "configuration file")?;
        LocalConfig::parse(&text, path)
    }

    /// Parses YAML text. An empty document is an empty configuration.
    pub fn parse(text: &str, source: &Path) -> Result<LocalConfig, ConnectorError> {
        let doc: Value = if text.trim().is_empty() {
            Value::Object(Map::new())
        } else {
            serde_saphyr::from_str(text).map_err(|e| {
                ConnectorError::Config(format!(
                    "{} is not a valid configuration file: {e}",
                    source.display()
                ))
            })?
        };
        let doc = match doc {
            Value::Null => Value::Object(Map::new()),
            Value::Object(_) => doc,
            _ => {
                return Err(ConnectorError::Config(format!(
                    "{} is not a valid configuration file: expected a mapping at the top level",
                    source.display()
                )));
            }
        };
        Ok(LocalConfig {
            source: source.to_owned(),
            doc,
        })
    }

    fn string(&self, key: &str) -> Option<String> {
        match self.doc.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        }
    }

    /// A command-line flag given as a key of the file (cloudflared accepts
    /// any flag there, e.g. `url: http://localhost:8000`).
    pub fn flag_string(&self, key: &str) -> Option<String> {
        self.string(key)
    }

    /// A boolean flag given as a key of the file.
    pub fn flag_bool(&self, key: &str) -> bool {
        match self.doc.get(key) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.trim().eq_ignore_ascii_case("true"),
            _ => false,
        }
    }

    /// `tunnel:` (UUID or name).
    pub fn tunnel(&self) -> Option<String> {
        self.string("tunnel")
    }

    /// `credentials-file:` (`~/` expanded; a relative path is taken from the
    /// working directory, as cloudflared does).
    pub fn credentials_file(&self) -> Option<PathBuf> {
        Some(PathBuf::from(expand_home(
            &self.string("credentials-file")?,
        )))
    }

    /// The directory holding the file.
    pub fn dir(&self) -> PathBuf {
        self.source
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// Whether the file defines ingress rules.
    pub fn has_ingress(&self) -> bool {
        self.doc
            .get("ingress")
            .is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    }

    /// The validated ingress rules (cloudflared's local dialect), or `None`
    /// when the file has none.
    pub fn ingress(&self) -> Result<Option<Ingress>, culvert_ingress::ValidationError> {
        if !self.has_ingress() {
            return Ok(None);
        }
        culvert_ingress::parse_local_config(&self.doc).map(Some)
    }

    /// What `updateLocalConfiguration` carries for this file: its
    /// `ingress`, `originRequest` and `warp-routing`, plus the
    /// `__configuration_flags` cloudflared adds.
    pub fn upload_json(&self, flags: &Map<String, Value>) -> String {
        upload_json(
            self.doc.get("ingress").cloned(),
            self.doc.get("originRequest").cloned(),
            self.doc.get("warp-routing").cloned(),
            flags,
        )
    }
}

/// The `updateLocalConfiguration` document (cloudflared's shape:
/// `{"__configuration_flags":{…},"ingress":[…],"warp-routing":{…}}`).
pub fn upload_json(
    ingress: Option<Value>,
    origin_request: Option<Value>,
    warp_routing: Option<Value>,
    flags: &Map<String, Value>,
) -> String {
    let mut out = Map::new();
    out.insert("__configuration_flags".into(), Value::Object(flags.clone()));
    out.insert(
        "ingress".into(),
        ingress.unwrap_or_else(|| json!([{"service": "http_status:503"}])),
    );
    if let Some(o) = origin_request {
        out.insert("originRequest".into(), o);
    }
    out.insert(
        "warp-routing".into(),
        warp_routing.unwrap_or_else(|| json!({"enabled": false})),
    );
    Value::Object(out).to_string()
}

/// `~/x` → `$HOME/x`.
pub fn expand_home(p: &str) -> String {
    match (p.strip_prefix("~/"), home_dir()) {
        (Some(rest), Some(h)) => h.join(rest).to_string_lossy().into_owned(),
        _ => p.to_owned(),
    }
}

/// Where the credentials of `tunnel_id` are: `explicit`, else
/// `<UUID>.json` in `search` (in order).
pub fn find_credentials(
    tunnel_id: Uuid,
    explicit: Option<&Path>,
    search: &[PathBuf],
) -> Result<PathBuf, ConnectorError> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    let name = format!("{tunnel_id}.json");
    search
        .iter()
        .map(|d| d.join(&name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            let dirs: Vec<String> = search.iter().map(|d| d.display().to_string()).collect();
            ConnectorError::Config(format!(
                "tunnel credentials file not found: looked for {name} in {}; pass --credentials-file or set credentials-file in the configuration",
                dirs.join(", ")
            ))
        })
}

/// A file's identity for change detection.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Turns a freshly read file into the ingress to serve and the JSON to
/// upload; `None` ingress means "keep serving what the flags gave".
pub type Prepare =
    Arc<dyn Fn(&LocalConfig) -> Result<(Ingress, String), ConnectorError> + Send + Sync>;

/// Reloads the configuration file on change and on SIGHUP.
pub struct ConfigWatcher {
    pub path: PathBuf,
    pub orchestrator: Arc<Orchestrator>,
    pub prepare: Prepare,
    pub poll_interval: Duration,
}

impl ConfigWatcher {
    /// Reads, validates and applies the file once. Errors leave the running
    /// configuration in place.
    pub fn reload(&self) -> Result<bool, ConnectorError> {
        let cfg = LocalConfig::load(&self.path)?;
        let (ingress, json) = (self.prepare)(&cfg)?;
        self.orchestrator.apply_local(ingress, json)
    }

    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut last = stamp(&self.path);
        let mut hup = sighup();
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let signalled = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => false,
                _ = recv_hup(&mut hup) => true,
            };
            let now = stamp(&self.path);
            if !signalled && now == last {
                continue;
            }
            last = now;
            match self.reload() {
                Ok(true) => {
                    tracing::info!(path = %self.path.display(), signalled, "reloaded the configuration file")
                }
                Ok(false) => {
                    tracing::warn!(path = %self.path.display(), "the tunnel is remotely managed: local ingress changes are ignored")
                }
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "configuration file not applied; keeping the running configuration")
                }
            }
        }
    }
}

#[cfg(unix)]
type Hup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hup = ();

#[cfg(unix)]
fn sighup() -> Hup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
#[cfg(not(unix))]
fn sighup() -> Hup {}

#[cfg(unix)]
async fn recv_hup(h: &mut Hup) {
    match h {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}
#[cfg(not(unix))]
async fn recv_hup(_: &mut Hup) {
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    const YML: &str = r#"
tunnel: 5f3b7c1e-8a2d-4e6f-9b1c-2d3e4f5a6b7c
credentials-file: /etc/cloudflared/creds/tunnel.json
originRequest:
  connectTimeout: 30s
  noTLSVerify: true
warp-routing:
  enabled: true
ingress:
  - hostname: app.example.com
    service: http://localhost:8000
    originRequest:
      keepAliveTimeout: 1m30s
  - hostname: "*.example.com"
    path: ^/static/
    service: https://localhost:8443
  - service: http_status:404
"#;

    #[test]
    fn parses_cloudflared_yaml() {
        let c = LocalConfig::parse(YML, Path::new("/etc/cloudflared/config.yml")).unwrap();
        assert_eq!(
            c.tunnel().as_deref(),
            Some("5f3b7c1e-8a2d-4e6f-9b1c-2d3e4f5a6b7c")
        );
        assert_eq!(
            c.credentials_file().unwrap(),
            PathBuf::from("/etc/cloudflared/creds/tunnel.json")
        );
        let i = c.ingress().unwrap().unwrap();
        assert_eq!(i.rules.len(), 3);
        assert_eq!(i.find_match("app.example.com", "/").0, 0);
        assert_eq!(i.find_match("x.example.com", "/static/a").0, 1);
        assert_eq!(i.find_match("x.example.com", "/").0, 2);
        assert_eq!(
            i.rules[0].origin_request.keep_alive_timeout(),
            Duration::from_secs(90)
        );
        assert_eq!(
            i.rules[0].origin_request.connect_timeout(),
            Duration::from_secs(30)
        );
        assert!(i.rules[1].origin_request.no_tls_verify());
        let up: Value = serde_json::from_str(&c.upload_json(&Map::new())).unwrap();
        assert_eq!(up["ingress"][1]["hostname"], "*.example.com");
        assert_eq!(up["warp-routing"]["enabled"], true);
        assert_eq!(up["originRequest"]["connectTimeout"], "30s");
        assert!(up["__configuration_flags"].is_object());
    }

    #[test]
    fn bad_files_fail_clearly() {
        let p = Path::new("c.yml");
        assert!(
            LocalConfig::parse("", p)
                .unwrap()
                .ingress()
                .unwrap()
                .is_none()
        );
        assert!(
            LocalConfig::parse("tunnel: x\n", p)
                .unwrap()
                .ingress()
                .unwrap()
                .is_none()
        );
        let e = LocalConfig::parse("ingress: [", p).unwrap_err().to_string();
        assert!(e.contains("c.yml is not a valid configuration file"), "{e}");
        let e = LocalConfig::parse("- a\n- b\n", p).unwrap_err().to_string();
        assert!(e.contains("mapping"), "{e}");
        let c = LocalConfig::parse("ingress:\n  - hostname: a.com\n    service: http://x\n", p)
            .unwrap();
        assert_eq!(
            c.ingress().unwrap_err().to_string(),
            "The last ingress rule must match all URLs (i.e. it should not have a hostname or path filter)"
        );
    }

    #[test]
    fn lookup_order() {
        let home = tempfile::tempdir().unwrap();
        let dirs = default_config_dirs(Some(home.path()));
        assert_eq!(dirs[0], home.path().join(".culvert"));
        assert_eq!(dirs[1], home.path().join(".cloudflared"));
        assert_eq!(
            dirs.last().unwrap(),
            Path::new("/usr/local/etc/cloudflared")
        );
        let local: Vec<PathBuf> = dirs[..4].to_vec();
        assert_eq!(find_config_file(&local), None);
        std::fs::create_dir_all(home.path().join(".cloudflared")).unwrap();
        std::fs::write(home.path().join(".cloudflared/config.yaml"), "{}").unwrap();
        assert_eq!(
            find_config_file(&local),
            Some(home.path().join(".cloudflared/config.yaml"))
        );
        std::fs::create_dir_all(home.path().join(".culvert")).unwrap();
        std::fs::write(home.path().join(".culvert/config.yml"), "{}").unwrap();
        assert_eq!(
            find_config_file(&local),
            Some(home.path().join(".culvert/config.yml"))
        );

        let id = Uuid::from_u128(7);
        assert!(find_credentials(id, None, &local).is_err());
        std::fs::write(home.path().join(format!(".cloudflared/{id}.json")), "{}").unwrap();
        assert_eq!(
            find_credentials(id, None, &local).unwrap(),
            home.path().join(format!(".cloudflared/{id}.json"))
        );
        assert_eq!(
            find_credentials(id, Some(Path::new("/x.json")), &local).unwrap(),
            PathBuf::from("/x.json")
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_is_total(s in ".{0,300}") {
            if let Ok(c) = LocalConfig::parse(&s, Path::new("p")) {
                let _ = c.ingress();
                let _ = c.tunnel();
            }
        }
    }
}
