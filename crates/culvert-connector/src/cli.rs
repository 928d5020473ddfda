//! `culvert tunnel [flags] run [flags]`: cloudflared's command line.
//!
//! A cloudflared command line works with the binary name changed, e.g.
//! `culvert tunnel --edge 127.0.0.1:7844 --cacert ca.pem --protocol quic run --token T`.
//! As in cloudflared, the edge and process flags belong to `tunnel`; they
//! are also accepted after `run` (clap `global`). Environment variables are
//! cloudflared's: `TUNNEL_TOKEN`, `TUNNEL_TOKEN_FILE`, `TUNNEL_CRED_FILE`,
//! `TUNNEL_CRED_CONTENTS`, `TUNNEL_EDGE` (comma separated), `TUNNEL_CACERT`,
//! `TUNNEL_TRANSPORT_PROTOCOL`, `TUNNEL_GRACE_PERIOD`, `TUNNEL_METRICS`,
//! `TUNNEL_URL`, `TUNNEL_HELLO_WORLD`, `TUNNEL_RETRIES`.
//!
//! Without `--edge`, the addresses come from the token's `culvert_edge` key,
//! and without `--cacert`, the CA from `culvert_ca` (see [`crate::identity`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use culvert_ingress::{GoDuration, Ingress};
use culvert_proto::{Credentials, TunnelToken};
use tokio_util::sync::CancellationToken;

use crate::backoff::BackoffPolicy;
use crate::connector::{Connector, ConnectorConfig, MAX_GRACE_PERIOD, TransportProtocol};
use crate::error::ConnectorError;
use crate::identity::TokenExtras;
use crate::localconfig::{self, ConfigWatcher, LocalConfig};

/// `culvert tunnel`: the flags shared by its subcommands, and the subcommand.
#[derive(Debug, Clone, Args)]
pub struct TunnelCommand {
    #[command(flatten)]
    pub options: TunnelOptions,
    #[command(subcommand)]
    pub command: TunnelSubcommand,
}

/// `tunnel`-level flags (accepted before or after the subcommand).
#[derive(Debug, Clone, Args)]
pub struct TunnelOptions {
    /// Edge address `host:port`; repeat for several (connections are spread
    /// round robin). Default: the token's `culvert_edge` addresses.
    #[arg(long, env = "TUNNEL_EDGE", value_name = "HOST:PORT", value_delimiter = ',', global = true, value_parser = parse_edge_addr)]
    pub edge: Vec<String>,
    /// PEM file of the CA that signed the edge certificate; replaces the
    /// system trust store. Default: the token's `culvert_ca`, else system roots.
    #[arg(long, env = "TUNNEL_CACERT", value_name = "PEM", global = true)]
    pub cacert: Option<PathBuf>,
    /// Transport to the edge: `quic`, `http2` (TLS over TCP, for networks
    /// that block UDP) or `auto` (QUIC, falling back to HTTP/2 per connection).
    #[arg(long, short = 'p', env = "TUNNEL_TRANSPORT_PROTOCOL", value_enum, default_value_t = Protocol::Auto, global = true)]
    pub protocol: Protocol,
    /// Number of connections to the edge (connIndex 0..N-1).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..), global = true)]
    pub ha_connections: u8,
    /// How long in-flight requests may finish after SIGINT/SIGTERM (Go
    /// duration, at most 3m). A second signal exits at once.
    #[arg(long, env = "TUNNEL_GRACE_PERIOD", default_value = "30s", value_parser = parse_grace_period, global = true)]
    pub grace_period: Duration,
    /// Serve `/ready` and `/healthcheck` on this address (e.g. `127.0.0.1:2000`).
    #[arg(long, env = "TUNNEL_METRICS", value_name = "ADDR", global = true)]
    pub metrics: Option<String>,
    /// cloudflared's `config.yml` (default: the first `config.yml` in
    /// ~/.culvert, ~/.cloudflared, ~/.cloudflare-warp, ~/cloudflare-warp,
    /// /etc/cloudflared, /usr/local/etc/cloudflared). Reloaded on change and
    /// on SIGHUP.
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    /// Send every request to this origin until the edge pushes a configuration.
    #[arg(long, env = "TUNNEL_URL", value_name = "URL", global = true)]
    pub url: Option<String>,
    /// Serve the built-in hello-world page until the edge pushes a configuration.
    #[arg(long, env = "TUNNEL_HELLO_WORLD", global = true)]
    pub hello_world: bool,
    /// Backoff exponent cap: the wait ceiling stops growing at 2^(N+1) s.
    #[arg(long, env = "TUNNEL_RETRIES", default_value_t = 5, global = true)]
    pub retries: u32,
    /// Host whose requests the connector serves itself (log streaming,
    /// `/ping`, `/host_details`); must match the edge's forwarding host.
    #[arg(long, env = "TUNNEL_MANAGEMENT_HOSTNAME", default_value = crate::management::DEFAULT_MANAGEMENT_HOSTNAME, global = true, hide = true)]
    pub management_hostname: String,
    /// Accepted for cloudflared compatibility; culvert never auto-updates.
    #[arg(long, global = true, hide = true)]
    pub no_autoupdate: bool,
    /// Accepted for cloudflared compatibility; use the binary's log flags.
    #[arg(long, env = "TUNNEL_LOGLEVEL", global = true, hide = true)]
    pub loglevel: Option<String>,
}

/// `--protocol` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// QUIC, with a per-connection fallback to HTTP/2.
    Auto,
    Quic,
    Http2,
    /// Old name of http2.
    H2mux,
}

/// `culvert tunnel` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum TunnelSubcommand {
    /// Run a tunnel: connect to the edge and serve its requests.
    Run(RunArgs),
    /// Check the ingress rules of the configuration file.
    #[command(subcommand)]
    Ingress(IngressCommand),
}

/// `culvert tunnel ingress …` (cloudflared's wording and output).
#[derive(Debug, Clone, Subcommand)]
pub enum IngressCommand {
    /// Validate the ingress rules of the configuration file.
    Validate,
    /// Print which ingress rule matches a URL.
    Rule {
        /// The URL to test, e.g. https://app.example.com/path.
        #[arg(value_name = "URL")]
        url: Option<String>,
    },
}

/// `culvert tunnel run` flags.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The tunnel token (overrides credentials files).
    #[arg(long, env = "TUNNEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the tunnel token.
    #[arg(long, env = "TUNNEL_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// cloudflared credentials file (`{"AccountTag","TunnelSecret","TunnelID"}`).
    #[arg(
        long,
        visible_alias = "cred-file",
        env = "TUNNEL_CRED_FILE",
        value_name = "PATH"
    )]
    pub credentials_file: Option<PathBuf>,
    /// The credentials file's JSON itself.
    #[arg(long, env = "TUNNEL_CRED_CONTENTS", hide_env_values = true)]
    pub credentials_contents: Option<String>,
    /// Tunnel UUID: picks the credentials file `<UUID>.json` (unless
    /// --credentials-file or `credentials-file` says where it is) and fills a
    /// credentials file without `TunnelID`. Default: `tunnel:` of the config.
    #[arg(value_name = "NAME_OR_UUID")]
    pub tunnel: Option<String>,
}

/// Parses an `--edge` entry: `host:port` or `[v6]:port`, port 1–65535.
/// Returns it trimmed.
pub fn parse_edge_addr(s: &str) -> Result<String, String> {
    let s = s.trim();
    let bad = || format!("invalid edge address {s:?}: want host:port");
    let (host, port) = culvert_ingress::split_host_port(s).ok_or_else(bad)?;
    if host.is_empty()
        || host
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c == '@')
    {
        return Err(bad());
    }
    if s.starts_with('[') && host.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(s.to_owned()),
        _ => Err(format!("invalid port in edge address {s:?}")),
    }
}

/// Go duration syntax (`30s`, `1m30s`, `500ms`, `0`); negative is refused.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let d = GoDuration::parse_go(s.trim())?;
    if d.as_nanos() < 0 {
        return Err(format!("duration {s:?} is negative"));
    }
    Ok(d.to_std())
}

/// `--grace-period`: a Go duration of at most 3 minutes.
pub fn parse_grace_period(s: &str) -> Result<Duration, String> {
    let d = parse_go_duration(s)?;
    if d > MAX_GRACE_PERIOD {
        return Err(format!(
            "grace-period must be equal or less than 3m0s, got {s:?}"
        ));
    }
    Ok(d)
}

/// Where configuration and credentials files are looked for.
#[derive(Debug, Clone)]
pub struct SearchPaths {
    /// Directories searched for `config.yml` and `<UUID>.json`, in order.
    pub dirs: Vec<PathBuf>,
    /// Searched for `<UUID>.json` only, before `dirs`: the origin
    /// certificate's directory, where `tunnel create` writes credentials.
    pub credentials_dirs: Vec<PathBuf>,
}

impl SearchPaths {
    /// culvert's and cloudflared's default directories under `$HOME`.
    pub fn default_paths() -> SearchPaths {
        SearchPaths {
            dirs: localconfig::default_config_dirs(localconfig::home_dir().as_deref()),
            credentials_dirs: Vec::new(),
        }
    }
}

/// The configuration file: `--config` (must exist), else the first one in
/// the default directories, else none.
pub fn load_local_config(
    opts: &TunnelOptions,
    paths: &SearchPaths,
) -> Result<Option<LocalConfig>, ConnectorError> {
    let path = match &opts.config {
        Some(p) => Some(PathBuf::from(localconfig::expand_home(
            &p.to_string_lossy(),
        ))),
        None => localconfig::find_config_file(&paths.dirs),
    };
    path.map(|p| LocalConfig::load(&p)).transpose()
}

/// The tunnel identity and token extras: token or token file, then
/// credentials contents or file, then the credentials of the tunnel named
/// by the argument or the config's `tunnel:` (`credentials-file`, else
/// `<UUID>.json` beside the config file or in the default directories).
pub fn resolve_identity(
    run: &RunArgs,
    config: Option<&LocalConfig>,
    paths: &SearchPaths,
) -> Result<(TunnelToken, TokenExtras), ConnectorError> {
    let token_text = match (&run.token, &run.token_file) {
        (Some(t), _) if !t.trim().is_empty() => Some(t.clone()),
        (_, Some(path)) => Some(localconfig::read_small(path, "token file")?),
        _ => None,
    };
    if let Some(t) = token_text {
        let token = TunnelToken::decode(&t).map_err(|e| {
            ConnectorError::Config(format!("Provided Tunnel token is not valid ({e})"))
        })?;
        let extras = TokenExtras::decode(&t)
            .map_err(|e| ConnectorError::Config(format!("culvert token keys: {e}")))?;
        return Ok((token, extras));
    }
    let tunnel_ref = run
        .tunnel
        .clone()
        .or_else(|| config.and_then(LocalConfig::tunnel));
    let tunnel_id = tunnel_ref.as_deref().map(parse_tunnel_ref).transpose()?;
    let json = match (&run.credentials_contents, &run.credentials_file) {
        (Some(c), _) => c.clone(),
        (None, Some(path)) => localconfig::read_small(path, "credentials file")?,
        (None, None) => {
            let Some(id) = tunnel_id else {
                return Err(ConnectorError::Config(
                    "no tunnel credentials: pass --token (or TUNNEL_TOKEN), --token-file or --credentials-file, or name the tunnel (`culvert tunnel run UUID`, or `tunnel:` in the configuration file)".into(),
                ));
            };
            let mut search = Vec::new();
            if let Some(c) = config {
                search.push(c.dir());
            }
            search.extend(paths.credentials_dirs.iter().cloned());
            search.extend(paths.dirs.iter().cloned());
            let explicit = config.and_then(LocalConfig::credentials_file);
            let path = localconfig::find_credentials(id, explicit.as_deref(), &search)?;
            localconfig::read_small(&path, "credentials file")?
        }
    };
    let mut creds = Credentials::from_json(&json)
        .map_err(|e| ConnectorError::Config(format!("invalid credentials: {e}")))?;
    if creds.tunnel_id.is_nil() {
        creds.tunnel_id = tunnel_id.ok_or_else(|| {
            ConnectorError::Config(
                "the credentials have no TunnelID: pass the tunnel UUID as an argument".into(),
            )
        })?;
    } else if let Some(id) = tunnel_id
        && id != creds.tunnel_id
    {
        tracing::warn!(tunnel = %id, credentials = %creds.tunnel_id, "the credentials file belongs to another tunnel; using its TunnelID");
    }
    Ok((creds.to_token(), TokenExtras::default()))
}

/// The tunnel that `--credentials-contents`, `--credentials-file` or the
/// configuration's `credentials-file:` belong to, if they say (`TunnelID`).
/// cloudflared's `findID` takes this before asking the API about a name.
pub fn credentials_tunnel_id(run: &RunArgs, config: Option<&LocalConfig>) -> Option<uuid::Uuid> {
    let json = match (&run.credentials_contents, &run.credentials_file) {
        (Some(c), _) => c.clone(),
        (None, Some(path)) => localconfig::read_small(path, "credentials file").ok()?,
        (None, None) => {
            let path = config?.credentials_file()?;
            localconfig::read_small(&path, "credentials file").ok()?
        }
    };
    let creds = Credentials::from_json(&json).ok()?;
    (!creds.tunnel_id.is_nil()).then_some(creds.tunnel_id)
}

/// A tunnel named on the command line or in `tunnel:`: a UUID. Names need
/// the API (`culvert tunnel list` shows the UUID of each name).
pub fn parse_tunnel_ref(s: &str) -> Result<uuid::Uuid, ConnectorError> {
    s.trim().parse().map_err(|_| {
        ConnectorError::Config(format!(
            "{s:?} is not a tunnel UUID: running a tunnel by name needs the API to resolve the name; pass the tunnel's UUID instead (`culvert tunnel list` shows it)"
        ))
    })
}

/// cloudflared's `ErrURLIncompatibleWithIngress`.
pub const URL_INCOMPATIBLE_WITH_INGRESS: &str =
    "You can't set the --url flag (or $TUNNEL_URL) when using multiple-origin ingress rules";

/// The ingress before any push, and the JSON uploaded for it: the config
/// file's rules, else `--hello-world` / `--url` (with the file's
/// `originRequest`), else 503 for all.
pub fn initial_ingress(
    opts: &TunnelOptions,
    config: Option<&LocalConfig>,
) -> Result<(Ingress, String), ConnectorError> {
    // cloudflared reads any flag from the file too; `url` and `hello-world`
    // are the ones that shape the ingress (flags win).
    let mut merged;
    let opts = match config {
        Some(c) if opts.url.is_none() && !opts.hello_world => {
            merged = opts.clone();
            merged.url = c.flag_string("url");
            merged.hello_world = c.flag_bool("hello-world");
            &merged
        }
        _ => opts,
    };
    let mut flags = serde_json::Map::new();
    if let Some(c) = config {
        flags.insert("config".into(), c.source.display().to_string().into());
    }
    if let Some(u) = &opts.url {
        flags.insert("url".into(), u.clone().into());
    }
    if opts.hello_world {
        flags.insert("hello-world".into(), "true".into());
    }
    if let Some(c) = config
        && c.has_ingress()
    {
        if opts.url.is_some() || opts.hello_world {
            return Err(ConnectorError::Config(URL_INCOMPATIBLE_WITH_INGRESS.into()));
        }
        let ingress = c
            .ingress()
            .map_err(|e| ConnectorError::Config(format!("{}: {e}", c.source.display())))?
            .unwrap_or_else(Ingress::default_no_rules);
        return Ok((ingress, c.upload_json(&flags)));
    }
    let origin_request = config.and_then(|c| c.doc.get("originRequest").cloned());
    let warp = config.and_then(|c| c.doc.get("warp-routing").cloned());
    let service = if opts.hello_world {
        Some("hello_world".to_owned())
    } else {
        opts.url.clone()
    };
    match service {
        None => Ok((
            Ingress::default_no_rules(),
            localconfig::upload_json(None, origin_request, warp, &flags),
        )),
        Some(s) => {
            // cloudflared accepts `--url localhost:8080` without a scheme.
            let s = if s.contains("://") || s == "hello_world" {
                s
            } else {
                format!("http://{s}")
            };
            let rules = serde_json::json!([{ "service": s }]);
            let mut doc = serde_json::json!({ "ingress": rules });
            if let Some(o) = &origin_request {
                doc["originRequest"] = o.clone();
            }
            let ingress = culvert_ingress::parse_local_config(&doc)
                .map_err(|e| ConnectorError::Config(format!("--url: {e}")))?;
            Ok((
                ingress,
                localconfig::upload_json(Some(rules), origin_request, warp, &flags),
            ))
        }
    }
}

/// Builds the connector configuration from the command line (reads the
/// token/credentials, configuration and CA files) with the default search
/// directories.
pub fn connector_config(
    opts: &TunnelOptions,
    run: &RunArgs,
) -> Result<ConnectorConfig, ConnectorError> {
    let paths = SearchPaths::default_paths();
    let config = load_local_config(opts, &paths)?;
    connector_config_with(opts, run, config.as_ref(), &paths)
}

/// [`connector_config`] with an already loaded configuration file.
pub fn connector_config_with(
    opts: &TunnelOptions,
    run: &RunArgs,
    local: Option<&LocalConfig>,
    paths: &SearchPaths,
) -> Result<ConnectorConfig, ConnectorError> {
    let (token, extras) = resolve_identity(run, local, paths)?;
    let edge_addrs = if !opts.edge.is_empty() {
        opts.edge.clone()
    } else {
        extras
            .edge
            .iter()
            .map(|e| {
                parse_edge_addr(e).map_err(|m| ConnectorError::Config(format!("culvert_edge: {m}")))
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    if edge_addrs.is_empty() {
        return Err(ConnectorError::Config(
            "no edge address: pass --edge host:port (or TUNNEL_EDGE); culvert does not use Cloudflare's edge discovery".into(),
        ));
    }
    let ca_pem = match &opts.cacert {
        Some(path) => Some(std::fs::read(path).map_err(|source| ConnectorError::Io {
            what: format!("reading --cacert {}", path.display()),
            source,
        })?),
        None => extras.ca_pem.map(String::into_bytes),
    };
    let mut config = ConnectorConfig::new(token, edge_addrs);
    config.ca_pem = ca_pem;
    config.ha_connections = opts.ha_connections;
    config.grace_period = opts.grace_period;
    config.backoff = BackoffPolicy::with_retries(opts.retries);
    let (ingress, json) = initial_ingress(opts, local)?;
    config.initial_ingress = ingress;
    config.local_config_json = Some(json);
    config.protocol = match opts.protocol {
        Protocol::Auto => TransportProtocol::Auto,
        Protocol::Quic => TransportProtocol::Quic,
        // cloudflared upgrades h2mux to http2.
        Protocol::Http2 | Protocol::H2mux => TransportProtocol::Http2,
    };
    config.management_hostname = opts.management_hostname.clone();
    Ok(config)
}

/// Reloads `config` on change and SIGHUP for a running connector.
pub fn config_watcher(
    opts: &TunnelOptions,
    config: &LocalConfig,
    orchestrator: std::sync::Arc<crate::Orchestrator>,
    poll_interval: Duration,
) -> ConfigWatcher {
    let opts = opts.clone();
    ConfigWatcher {
        path: config.source.clone(),
        orchestrator,
        prepare: std::sync::Arc::new(move |c: &LocalConfig| {
            for (i, rule) in c
                .ingress()
                .map_err(|e| ConnectorError::Config(e.to_string()))?
                .iter()
                .flat_map(|i| i.rules.iter())
                .enumerate()
            {
                crate::origin::check_rule(rule)
                    .map_err(|e| ConnectorError::Config(format!("Rule #{}: {e}", i + 1)))?;
            }
            initial_ingress(&opts, Some(c))
        }),
        poll_interval,
    }
}

const NO_CONFIG_FILE: &str = "No configuration file was found. Please create one, or use the --config flag to specify its filepath. You can use the help command to learn more about configuration files";

/// `culvert tunnel ingress validate`: cloudflared's output.
pub fn ingress_validate(
    opts: &TunnelOptions,
    paths: &SearchPaths,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let Some(config) = load_local_config(opts, paths)? else {
        writeln!(out, "{NO_CONFIG_FILE}")?;
        return Ok(());
    };
    writeln!(out, "Validating rules from {}", config.source.display())?;
    let ingress = config
        .ingress()
        .map_err(|e| anyhow::anyhow!("Validation failed: {e}"))?;
    for (i, rule) in ingress.iter().flat_map(|i| i.rules.iter()).enumerate() {
        crate::origin::check_rule(rule).map_err(|e| {
            anyhow::anyhow!("Validation failed: Rule #{}: {}", i + 1, config_message(&e))
        })?;
    }
    if opts.url.is_some() {
        anyhow::bail!(URL_INCOMPATIBLE_WITH_INGRESS);
    }
    writeln!(out, "OK")?;
    Ok(())
}

fn config_message(e: &ConnectorError) -> String {
    match e {
        ConnectorError::Config(m) => m.clone(),
        other => other.to_string(),
    }
}

/// cloudflared's `Service.String()` as `ingress rule` prints it.
pub fn service_display(s: &culvert_ingress::Service) -> String {
    match s {
        culvert_ingress::Service::HelloWorld => "Hello World test origin".into(),
        other => other.to_string(),
    }
}

/// `culvert tunnel ingress rule URL`: cloudflared's output.
pub fn ingress_rule(
    opts: &TunnelOptions,
    url: Option<&str>,
    paths: &SearchPaths,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let raw = url.unwrap_or("");
    if raw.is_empty() {
        anyhow::bail!("cloudflared tunnel rule expects a single argument, the URL to test");
    }
    let u = culvert_ingress::gourl::parse(raw)
        .map_err(|_| anyhow::anyhow!("{raw} is not a valid URL"))?;
    if u.hostname().is_empty() && u.scheme.is_empty() {
        anyhow::bail!("{raw} doesn't have a hostname, consider adding a scheme");
    }
    let config = load_local_config(opts, paths)?;
    let source = config
        .as_ref()
        .map(|c| c.source.display().to_string())
        .unwrap_or_default();
    writeln!(out, "Using rules from {source}")?;
    let ingress = match &config {
        Some(c) => c
            .ingress()
            .map_err(|e| anyhow::anyhow!("Validation failed: {e}"))?,
        None => None,
    }
    .ok_or_else(|| {
        anyhow::anyhow!("Validation failed: No ingress rules were defined in provided config (if any) nor from the cli, cloudflared will return 503 for all incoming HTTP requests")
    })?;
    let (i, rule) = ingress.find_match(u.hostname(), &u.path);
    writeln!(out, "Matched rule #{}", i + 1)?;
    if let Some(h) = rule.hostname.as_deref().filter(|h| !h.is_empty()) {
        writeln!(out, "\thostname: {h}")?;
    }
    if let Some(p) = &rule.path {
        writeln!(out, "\tpath: {p}")?;
    }
    writeln!(out, "\tservice: {}", service_display(&rule.service))?;
    Ok(())
}

/// Waits for SIGINT or SIGTERM (Ctrl-C elsewhere).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs `culvert tunnel …` until SIGINT/SIGTERM (graceful: unregister,
/// drain for the grace period; a second signal exits at once).
pub async fn run_tunnel_command(cmd: TunnelCommand) -> anyhow::Result<()> {
    run_tunnel_command_in(cmd, SearchPaths::default_paths()).await
}

/// [`run_tunnel_command`] with explicit search directories.
pub async fn run_tunnel_command_in(cmd: TunnelCommand, paths: SearchPaths) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("Initiating graceful shutdown due to signal");
        signals.cancel();
        shutdown_signal().await;
        tracing::warn!("second signal: exiting immediately");
        std::process::exit(1);
    });
    run_tunnel_command_with(
        cmd,
        shutdown,
        paths,
        localconfig::DEFAULT_POLL_INTERVAL,
        None,
    )
    .await
}

/// [`run_tunnel_command`] with the caller's shutdown token instead of signals.
pub async fn run_tunnel_command_until(
    cmd: TunnelCommand,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_tunnel_command_with(
        cmd,
        shutdown,
        SearchPaths::default_paths(),
        localconfig::DEFAULT_POLL_INTERVAL,
        None,
    )
    .await
}

/// [`run_tunnel_command_until`] with explicit search directories and
/// reload poll interval; `started` receives the connector's live state
/// (tests use it to wait for registration).
pub async fn run_tunnel_command_with(
    cmd: TunnelCommand,
    shutdown: CancellationToken,
    paths: SearchPaths,
    poll_interval: Duration,
    started: Option<tokio::sync::oneshot::Sender<std::sync::Arc<crate::ConnectorState>>>,
) -> anyhow::Result<()> {
    let run = match &cmd.command {
        TunnelSubcommand::Run(run) => run,
        TunnelSubcommand::Ingress(IngressCommand::Validate) => {
            return ingress_validate(&cmd.options, &paths, &mut std::io::stdout());
        }
        TunnelSubcommand::Ingress(IngressCommand::Rule { url }) => {
            return ingress_rule(&cmd.options, url.as_deref(), &paths, &mut std::io::stdout());
        }
    };
    let local = load_local_config(&cmd.options, &paths)?;
    if let Some(c) = &local {
        tracing::info!(path = %c.source.display(), "Using the configuration file");
    }
    let config = connector_config_with(&cmd.options, run, local.as_ref(), &paths)?;
    if cmd.options.ha_connections as usize > config.edge_addrs.len() {
        tracing::info!(
            ha_connections = cmd.options.ha_connections,
            edges = config.edge_addrs.len(),
            "more connections than edge addresses: connections share addresses round robin"
        );
    }
    let connector = Connector::new(config).context("starting the connector")?;
    let metrics = cmd
        .options
        .metrics
        .clone()
        .or_else(|| local.as_ref().and_then(|c| c.flag_string("metrics")));
    let metrics_task = match &metrics {
        Some(addr) => {
            let listener = crate::metrics::bind(addr).await?;
            let state = connector.state();
            let token = shutdown.clone();
            Some(tokio::spawn(crate::metrics::serve(listener, state, token)))
        }
        None => None,
    };
    let watcher = local.as_ref().map(|c| {
        let w = config_watcher(&cmd.options, c, connector.orchestrator(), poll_interval);
        tokio::spawn(w.run(shutdown.clone()))
    });
    if let Some(tx) = started {
        let _ = tx.send(connector.state());
    }
    let result = connector.run(shutdown.clone()).await;
    if let Some(w) = watcher {
        w.abort();
    }
    shutdown.cancel();
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    result.map_err(anyhow::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory as _, Parser};
    use proptest::prelude::*;

    #[derive(Debug, Parser)]
    #[command(name = "culvert")]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }

    #[derive(Debug, Subcommand)]
    enum Top {
        Tunnel(TunnelCommand),
    }

    fn parse(args: &[&str]) -> Result<TunnelCommand, clap::Error> {
        let mut v = vec!["culvert", "tunnel"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).map(|c| match c.cmd {
            Top::Tunnel(t) => t,
        })
    }

    fn run_of(t: &TunnelCommand) -> &RunArgs {
        match &t.command {
            TunnelSubcommand::Run(r) => r,
            other => panic!("not run: {other:?}"),
        }
    }

    /// `connector_config` without the machine's default directories.
    fn cc(t: &TunnelCommand) -> Result<ConnectorConfig, ConnectorError> {
        let paths = SearchPaths {
            dirs: Vec::new(),
            credentials_dirs: Vec::new(),
        };
        let local = load_local_config(&t.options, &paths)?;
        connector_config_with(&t.options, run_of(t), local.as_ref(), &paths)
    }

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cloudflared_command_lines() {
        let t = parse(&[
            "--edge",
            "127.0.0.1:7844",
            "--cacert",
            "ca.pem",
            "--protocol",
            "quic",
            "--metrics",
            "127.0.0.1:0",
            "--no-autoupdate",
            "run",
            "--token",
            "T",
        ])
        .unwrap();
        assert_eq!(t.options.edge, ["127.0.0.1:7844"]);
        assert_eq!(t.options.protocol, Protocol::Quic);
        assert_eq!(t.options.ha_connections, 4);
        assert_eq!(t.options.grace_period, Duration::from_secs(30));
        assert_eq!(run_of(&t).token.as_deref(), Some("T"));

        // Edge flags after `run` too, repeated.
        let t = parse(&[
            "run",
            "--edge",
            "a:1",
            "--edge",
            "[::1]:2",
            "--ha-connections",
            "2",
            "--grace-period",
            "1m30s",
            "-p",
            "auto",
            "--token",
            "T",
        ])
        .unwrap();
        assert_eq!(t.options.edge, ["a:1", "[::1]:2"]);
        assert_eq!(t.options.ha_connections, 2);
        assert_eq!(t.options.grace_period, Duration::from_secs(90));

        assert!(parse(&["run", "--grace-period", "4m"]).is_err());
        assert!(parse(&["run", "--edge", "nohost"]).is_err());
        assert!(parse(&["--ha-connections", "0", "run"]).is_err());
    }

    #[test]
    fn protocols_and_edge_is_required() {
        let token = TunnelToken {
            account_tag: "acc".into(),
            tunnel_id: uuid::Uuid::from_u128(9),
            secret: vec![7; 32],
            endpoint: None,
        };
        let t = parse(&["run", "--token", &token.encode()]).unwrap();
        let e = cc(&t).unwrap_err().to_string();
        assert!(e.contains("--edge"), "{e}");

        // The token's culvert_edge / culvert_ca fill in; flags override them.
        let extras = TokenExtras {
            edge: vec!["edge.test:7844".into()],
            ca_pem: Some("PEM".into()),
        };
        let tok = extras.encode_with(&token);
        let t = parse(&["run", "--token", &tok]).unwrap();
        let c = cc(&t).unwrap();
        assert_eq!(c.edge_addrs, ["edge.test:7844"]);
        assert_eq!(c.ca_pem.as_deref(), Some(&b"PEM"[..]));
        assert_eq!(c.token, token);
        assert_eq!(c.protocol, TransportProtocol::Auto);
        for (flag, want) in [
            ("http2", TransportProtocol::Http2),
            ("h2mux", TransportProtocol::Http2),
            ("quic", TransportProtocol::Quic),
            ("auto", TransportProtocol::Auto),
        ] {
            let t = parse(&["--protocol", flag, "run", "--token", &tok]).unwrap();
            assert_eq!(cc(&t).unwrap().protocol, want);
        }
        let t = parse(&["--edge", "127.0.0.1:1", "run", "--token", &tok]).unwrap();
        assert_eq!(cc(&t).unwrap().edge_addrs, ["127.0.0.1:1"]);
    }

    #[test]
    fn credentials_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds.json");
        let id = "5f3b7c1e-8a2d-4e6f-9b1c-2d3e4f5a6b7c";
        std::fs::write(
            &path,
            r#"{"AccountTag":"acc","TunnelSecret":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}"#,
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let t = parse(&["--edge", "e:1", "run", "--cred-file", p, id]).unwrap();
        let c = cc(&t).unwrap();
        assert_eq!(c.token.tunnel_id.to_string(), id);
        assert_eq!(c.token.secret.len(), 32);
        let t = parse(&["--edge", "e:1", "run", "--credentials-file", p]).unwrap();
        assert!(cc(&t).is_err());
        let t = parse(&["--edge", "e:1", "run"]).unwrap();
        assert!(cc(&t).unwrap_err().to_string().contains("--token"));
    }

    const CREDS: &str = r#"{"AccountTag":"acc","TunnelSecret":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","TunnelID":"5f3b7c1e-8a2d-4e6f-9b1c-2d3e4f5a6b7c","Endpoint":""}"#;
    const ID: &str = "5f3b7c1e-8a2d-4e6f-9b1c-2d3e4f5a6b7c";

    #[test]
    fn config_file_and_credentials_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!("tunnel: {ID}\ningress:\n  - hostname: app.test\n    service: http://127.0.0.1:9\n  - service: http_status:404\n"),
        )
        .unwrap();
        let c = cfg.to_str().unwrap();
        // `tunnel:` → <UUID>.json beside the config file.
        let t = parse(&["--edge", "e:1", "--config", c, "run"]).unwrap();
        let e = cc(&t).unwrap_err().to_string();
        assert!(e.contains(&format!("{ID}.json")), "{e}");
        std::fs::write(dir.path().join(format!("{ID}.json")), CREDS).unwrap();
        let conf = cc(&t).unwrap();
        assert_eq!(conf.token.tunnel_id.to_string(), ID);
        assert_eq!(conf.token.account_tag, "acc");
        assert_eq!(conf.initial_ingress.rules.len(), 2);
        let up: serde_json::Value =
            serde_json::from_str(conf.local_config_json.as_deref().unwrap()).unwrap();
        assert_eq!(up["ingress"][0]["hostname"], "app.test");
        assert_eq!(up["__configuration_flags"]["config"], c);
        // The UUID argument works the same without `tunnel:`; names do not.
        let t = parse(&["--edge", "e:1", "--config", c, "run", ID]).unwrap();
        assert_eq!(cc(&t).unwrap().token.tunnel_id.to_string(), ID);
        let t = parse(&["--edge", "e:1", "--config", c, "run", "my-tunnel"]).unwrap();
        let e = cc(&t).unwrap_err().to_string();
        assert!(e.contains("\"my-tunnel\" is not a tunnel UUID"), "{e}");
        // credentials-file in the config wins over the search.
        std::fs::write(
            &cfg,
            format!(
                "tunnel: {ID}\ncredentials-file: {}/elsewhere.json\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let t = parse(&["--edge", "e:1", "--config", c, "run"]).unwrap();
        assert!(cc(&t).unwrap_err().to_string().contains("elsewhere.json"));
        // --url with ingress rules is refused, as cloudflared does.
        std::fs::write(&cfg, "ingress:\n  - service: http_status:404\n").unwrap();
        let t = parse(&[
            "--edge", "e:1", "--config", c, "--url", "http://x", "run", ID,
        ])
        .unwrap();
        let e = cc(&t).unwrap_err().to_string();
        assert!(e.contains(URL_INCOMPATIBLE_WITH_INGRESS), "{e}");
        // Flags as keys of the file: `url:` serves a single origin.
        std::fs::write(
            &cfg,
            format!("tunnel: {ID}\nurl: localhost:8080\nhello-world: false\n"),
        )
        .unwrap();
        let t = parse(&["--edge", "e:1", "--config", c, "run"]).unwrap();
        let conf = cc(&t).unwrap();
        assert_eq!(
            conf.initial_ingress.rules[0].service.to_string(),
            "http://localhost:8080"
        );
        // A missing --config file is an error, not a silent default.
        let t = parse(&["--config", "/nonexistent/c.yml", "run"]).unwrap();
        assert!(cc(&t).is_err());
    }

    #[test]
    fn credentials_name_their_tunnel_and_credentials_dirs_are_searched() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join(format!("{ID}.json"));
        std::fs::write(&creds, CREDS).unwrap();
        let p = creds.to_str().unwrap();
        let t = parse(&["--edge", "e:1", "run", "--credentials-file", p, "a-name"]).unwrap();
        assert_eq!(
            credentials_tunnel_id(run_of(&t), None).map(|u| u.to_string()),
            Some(ID.to_owned())
        );
        let t = parse(&["--edge", "e:1", "run", "a-name"]).unwrap();
        assert_eq!(credentials_tunnel_id(run_of(&t), None), None);
        // `<UUID>.json` in a credentials directory (the origin certificate's).
        let t = parse(&["--edge", "e:1", "run", ID]).unwrap();
        let paths = SearchPaths {
            dirs: Vec::new(),
            credentials_dirs: vec![dir.path().to_owned()],
        };
        let c = connector_config_with(&t.options, run_of(&t), None, &paths).unwrap();
        assert_eq!(c.token.tunnel_id.to_string(), ID);
        assert!(cc(&t).is_err(), "not found without that directory");
    }

    fn output(f: impl FnOnce(&mut Vec<u8>) -> anyhow::Result<()>) -> (String, Result<(), String>) {
        let mut out = Vec::new();
        let r = f(&mut out).map_err(|e| e.to_string());
        (String::from_utf8(out).unwrap(), r)
    }

    #[test]
    fn ingress_validate_and_rule_print_what_cloudflared_prints() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            "ingress:\n  - hostname: app.example.com\n    service: http://localhost:8000\n  - hostname: \"*.example.com\"\n    path: ^/static\n    service: https://localhost:8443\n  - service: http_status:404\n",
        )
        .unwrap();
        let c = cfg.to_str().unwrap();
        let paths = SearchPaths {
            dirs: Vec::new(),
            credentials_dirs: Vec::new(),
        };
        let t = parse(&["--config", c, "ingress", "validate"]).unwrap();
        let (out, r) = output(|o| ingress_validate(&t.options, &paths, o));
        assert_eq!(out, format!("Validating rules from {c}\nOK\n"));
        assert_eq!(r, Ok(()));

        let (out, r) = output(|o| {
            ingress_rule(
                &t.options,
                Some("https://x.example.com/static/a.css"),
                &paths,
                o,
            )
        });
        assert_eq!(r, Ok(()));
        assert_eq!(
            out,
            format!(
                "Using rules from {c}\nMatched rule #2\n\thostname: *.example.com\n\tpath: ^/static\n\tservice: https://localhost:8443\n"
            )
        );
        let (out, _) = output(|o| ingress_rule(&t.options, Some("https://other.test/"), &paths, o));
        assert!(
            out.ends_with("Matched rule #3\n\tservice: http_status:404\n"),
            "{out}"
        );
        let (_, r) = output(|o| ingress_rule(&t.options, Some("example.com"), &paths, o));
        assert_eq!(
            r,
            Err("example.com doesn't have a hostname, consider adding a scheme".into())
        );
        let (_, r) = output(|o| ingress_rule(&t.options, None, &paths, o));
        assert_eq!(
            r,
            Err("cloudflared tunnel rule expects a single argument, the URL to test".into())
        );

        std::fs::write(
            &cfg,
            "ingress:\n  - hostname: a.com\n    service: http://x\n",
        )
        .unwrap();
        let (out, r) = output(|o| ingress_validate(&t.options, &paths, o));
        assert_eq!(out, format!("Validating rules from {c}\n"));
        assert_eq!(r, Err("Validation failed: The last ingress rule must match all URLs (i.e. it should not have a hostname or path filter)".into()));
        std::fs::write(&cfg, "ingress:\n  - service: http://x\n    originRequest:\n      access:\n        required: true\n").unwrap();
        let (_, r) = output(|o| ingress_validate(&t.options, &paths, o));
        let e = r.unwrap_err();
        assert!(
            e.starts_with("Validation failed: Rule #1: originRequest.access.required"),
            "{e}"
        );

        let t = parse(&["ingress", "validate"]).unwrap();
        let (out, r) = output(|o| ingress_validate(&t.options, &paths, o));
        assert_eq!((out.trim_end(), r), (NO_CONFIG_FILE, Ok(())));
    }

    #[test]
    fn initial_ingress_from_flags() {
        let t = parse(&["--url", "localhost:8080", "run"]).unwrap();
        let i = initial_ingress(&t.options, None).unwrap().0;
        assert_eq!(i.rules[0].service.to_string(), "http://localhost:8080");
        let t = parse(&["--hello-world", "--url", "http://x", "run"]).unwrap();
        let i = initial_ingress(&t.options, None).unwrap().0;
        assert_eq!(i.rules[0].service, culvert_ingress::Service::HelloWorld);
        let t = parse(&["run"]).unwrap();
        assert_eq!(
            initial_ingress(&t.options, None).unwrap().0.rules[0].service,
            culvert_ingress::Service::HttpStatus(503)
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_go_duration("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_go_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_go_duration("-1s").is_err());
        assert!(parse_go_duration("30").is_err());
        assert!(parse_go_duration("").is_err());
        assert_eq!(parse_grace_period("3m").unwrap(), MAX_GRACE_PERIOD);
        assert!(parse_grace_period("3m1s").is_err());
    }

    #[test]
    fn edge_addrs() {
        for ok in [
            "127.0.0.1:7844",
            "edge.example:1",
            "[::1]:7844",
            " h:65535 ",
        ] {
            assert!(parse_edge_addr(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "h",
            "h:",
            ":1",
            "h:0",
            "h:65536",
            "h:+1",
            "::1:7844",
            "[::1]",
            "[x]:1",
            "a b:1",
            "http://h:1",
        ] {
            assert!(parse_edge_addr(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn go_durations_round_trip(secs in 0u64..10_000, ms in 0u64..1000) {
            let s = format!("{secs}s{ms}ms");
            prop_assert_eq!(parse_go_duration(&s).unwrap(), Duration::from_secs(secs) + Duration::from_millis(ms));
            let m = format!("{}m{}s", secs / 60, secs % 60);
            prop_assert_eq!(parse_go_duration(&m).unwrap(), Duration::from_secs(secs));
        }

        #[test]
        fn duration_parser_total(s in any::<String>()) {
            let _ = parse_go_duration(&s);
            let _ = parse_grace_period(&s);
        }

        #[test]
        fn edge_addr_parser(host in "[a-z0-9][a-z0-9.-]{0,20}", port in 1u16..) {
            let s = format!("{host}:{port}");
            prop_assert_eq!(parse_edge_addr(&s).unwrap(), s);
            let v6 = format!("[::{port:x}]:{port}");
            prop_assert!(parse_edge_addr(&v6).is_ok());
        }

        #[test]
        fn edge_addr_parser_total(s in any::<String>()) {
            if let Ok(a) = parse_edge_addr(&s) {
                prop_assert!(culvert_ingress::split_host_port(&a).is_some());
            }
        }
    }
}
