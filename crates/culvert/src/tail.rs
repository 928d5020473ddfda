//! `culvert tail [TUNNEL]`: watch a connector's logs live, as `cloudflared
//! tail` does (edge-protocol.md §6): obtain a management token (flag,
//! `TUNNEL_MANAGEMENT_TOKEN`, or the API), open
//! `wss://<management-hostname>/logs?access_token=…[&connector_id=…]`, send
//! `start_streaming` with the filters, print one line per entry.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use culvert_connector::management::protocol::{
    ClientMessage, EventType, Filters, LogEntry, LogLevel, LogsMessage,
};
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Default management host: the culvert edge's `management.<tunnel-domain>`.
pub const DEFAULT_MANAGEMENT_HOSTNAME: &str = "management.cfargotunnel.localhost";
/// Bound on one log frame.
const MAX_FRAME: usize = 1024 * 1024;

#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TailCommand {
    #[command(subcommand)]
    pub command: Option<TailSubcommand>,
    #[command(flatten)]
    pub args: TailArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TailSubcommand {
    /// Print a management token for TUNNEL as `{"token":"…"}`.
    Token {
        tunnel: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Where to get a token from when `--token` is not given.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Base URL of the culvert API.
    #[arg(
        long,
        env = "CULVERT_API_URL",
        default_value = "http://127.0.0.1:8787/client/v4"
    )]
    pub api_url: String,
    /// Account id the tunnel belongs to (also `CLOUDFLARE_ACCOUNT_ID`).
    #[arg(long, env = "CULVERT_ACCOUNT_ID")]
    pub account_id: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// Tunnel id or name (not needed with --token).
    pub tunnel: Option<String>,
    /// Management token (JWT).
    #[arg(long, env = "TUNNEL_MANAGEMENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Stream from this connector of the tunnel.
    #[arg(long, env = "TUNNEL_MANAGEMENT_CONNECTOR")]
    pub connector_id: Option<String>,
    /// Event types to show: cloudflared, http, tcp, udp (repeatable).
    #[arg(
        long = "event",
        env = "TUNNEL_MANAGEMENT_FILTER_EVENTS",
        value_delimiter = ','
    )]
    pub events: Vec<String>,
    /// Minimum level: debug, info, warn, error.
    #[arg(long, env = "TUNNEL_MANAGEMENT_FILTER_LEVEL", default_value = "debug")]
    pub level: String,
    /// Share of entries to show, 0 < sample <= 1.
    #[arg(long, env = "TUNNEL_MANAGEMENT_FILTER_SAMPLE", default_value_t = 1.0)]
    pub sample: f64,
    /// Output format.
    #[arg(long, env = "TUNNEL_MANAGEMENT_OUTPUT", value_enum, default_value_t = Output::Default)]
    pub output: Output,
    /// Host of the management endpoint (HOST or HOST:PORT).
    #[arg(long, env = "TUNNEL_MANAGEMENT_HOSTNAME", default_value = DEFAULT_MANAGEMENT_HOSTNAME)]
    pub management_hostname: String,
    /// Dial this address (HOST:PORT) instead of resolving the management host;
    /// the Host header and TLS name stay the management host.
    #[arg(long, env = "CULVERT_MANAGEMENT_CONNECT", value_name = "HOST:PORT")]
    pub connect: Option<String>,
    /// Use plain `ws://` (e.g. the edge's HTTP listener) instead of `wss://`.
    #[arg(long)]
    pub plaintext: bool,
    /// PEM file of a CA to trust in addition to the system roots
    /// (`SSL_CERT_FILE` also works).
    #[arg(long, env = "CULVERT_MANAGEMENT_CACERT")]
    pub cacert: Option<PathBuf>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Default,
    Json,
}

/// The API token from the environment (no login file dependency here).
pub fn api_token_from_env() -> Option<String> {
    ["CULVERT_API_TOKEN", "CLOUDFLARE_API_TOKEN"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
}

/// Gets a management token for `tunnel` (id or name) from the API.
pub async fn fetch_token(api: &ApiArgs, api_token: &str, tunnel: &str) -> Result<String> {
    let client = reqwest::Client::new();
    let base = api.api_url.trim_end_matches('/');
    let account = api.account_id.clone().ok_or_else(|| {
        anyhow!("no account: pass --account-id (or set CULVERT_ACCOUNT_ID / CLOUDFLARE_ACCOUNT_ID)")
    })?;
    let tunnel_id = if uuid::Uuid::parse_str(tunnel).is_ok() {
        tunnel.to_owned()
    } else {
        let v: serde_json::Value = client
            .get(format!("{base}/accounts/{account}/cfd_tunnel"))
            .query(&[("name", tunnel), ("is_deleted", "false")])
            .bearer_auth(api_token)
            .send()
            .await?
            .json()
            .await?;
        v["result"][0]["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no tunnel named {tunnel:?}"))?
    };
    let resp = client
        .post(format!(
            "{base}/accounts/{account}/cfd_tunnel/{tunnel_id}/management"
        ))
        .bearer_auth(api_token)
        .json(&serde_json::json!({"resources": ["logs"]}))
        .send()
        .await
        .context("requesting a management token")?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.context("reading the API answer")?;
    match v["result"].as_str() {
        Some(t) if status.is_success() => Ok(t.to_owned()),
        _ => bail!(
            "the API refused a management token ({status}): {}",
            v["errors"]
        ),
    }
}

fn with_account_fallback(api: &ApiArgs) -> ApiArgs {
    let mut api = api.clone();
    if api.account_id.is_none() {
        api.account_id = std::env::var("CLOUDFLARE_ACCOUNT_ID")
            .ok()
            .filter(|v| !v.is_empty());
    }
    api
}

async fn resolve_token(args: &TailArgs) -> Result<String> {
    if let Some(t) = &args.token {
        return Ok(t.clone());
    }
    let tunnel = args
        .tunnel
        .as_deref()
        .ok_or_else(|| anyhow!("give a TUNNEL (id or name) or --token"))?;
    let api_token = api_token_from_env().ok_or_else(|| {
        anyhow!("no --token: set CULVERT_API_TOKEN (or CLOUDFLARE_API_TOKEN) to fetch one")
    })?;
    fetch_token(&with_account_fallback(&args.api), &api_token, tunnel).await
}

/// The filters of the command line, checked.
pub fn filters(args: &TailArgs) -> Result<Filters> {
    let mut events = Vec::new();
    for e in &args.events {
        events.push(
            EventType::parse(e.trim()).ok_or_else(|| {
                anyhow!("invalid --event {e:?}: use cloudflared, http, tcp or udp")
            })?,
        );
    }
    let level = LogLevel::parse(&args.level.to_ascii_lowercase()).ok_or_else(|| {
        anyhow!(
            "invalid --level {:?}: use debug, info, warn or error",
            args.level
        )
    })?;
    if !(args.sample > 0.0 && args.sample <= 1.0) {
        bail!("invalid --sample {}: use a value in (0, 1]", args.sample);
    }
    Ok(Filters {
        events,
        level: Some(level),
        sampling: args.sample,
    })
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// Management host, maybe with a port.
    pub host: String,
    pub connect: Option<String>,
    pub plaintext: bool,
    pub cacert: Option<PathBuf>,
}

impl Target {
    pub fn from_args(args: &TailArgs) -> Target {
        Target {
            host: args.management_hostname.clone(),
            connect: args.connect.clone(),
            plaintext: args.plaintext,
            cacert: args.cacert.clone(),
        }
    }

    fn url(&self, token: &str, connector_id: Option<&str>) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("access_token", token);
        if let Some(c) = connector_id {
            q.append_pair("connector_id", c);
        }
        let scheme = if self.plaintext { "ws" } else { "wss" };
        format!("{scheme}://{}/logs?{}", self.host, q.finish())
    }

    fn server_name(&self) -> &str {
        match self.host.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => &self.host,
        }
    }

    fn dial_addr(&self) -> String {
        if let Some(c) = &self.connect {
            return c.clone();
        }
        if self
            .host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, if self.plaintext { 80 } else { 443 })
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open `/logs` session.
pub struct LogSession {
    ws: WebSocketStream<Box<dyn Io>>,
    /// Close code and reason once the server closed.
    pub closed: Option<(u16, String)>,
}

fn tls_config(cacert: Option<&PathBuf>) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    // Honours SSL_CERT_FILE / SSL_CERT_DIR, as cloudflared's system roots do.
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    if let Some(path) = cacert {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        for c in CertificateDer::pem_slice_iter(&pem) {
            roots.add(c.context("parsing the CA file")?)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl LogSession {
    /// Connects and performs the WebSocket handshake.
    pub async fn connect(
        target: &Target,
        token: &str,
        connector_id: Option<&str>,
    ) -> Result<LogSession> {
        let url = target.url(token, connector_id);
        let addr = target.dial_addr();
        let tcp = TcpStream::connect(&addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if target.plaintext {
            Box::new(tcp)
        } else {
            let cfg = tls_config(target.cacert.as_ref())?;
            let name = rustls::pki_types::ServerName::try_from(target.server_name().to_owned())
                .context("management hostname is not a valid TLS name")?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .with_context(|| format!("TLS handshake with {}", target.host))?;
            Box::new(tls)
        };
        let request = url.as_str().into_client_request()?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME))
            .max_frame_size(Some(MAX_FRAME));
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, io, Some(config))
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(resp) => {
                    let body = resp
                        .body()
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default();
                    anyhow!("the management endpoint answered {}: {body}", resp.status())
                }
                e => anyhow!("WebSocket handshake failed: {e}"),
            })?;
        Ok(LogSession { ws, closed: None })
    }

    pub async fn start(&mut self, filters: Filters) -> Result<()> {
        let msg = ClientMessage::StartStreaming {
            filters: Some(filters),
        };
        self.ws.send(Message::text(msg.to_json())).await?;
        Ok(())
    }

    pub async fn stop(&mut self) -> Result<()> {
        self.ws
            .send(Message::text(ClientMessage::StopStreaming.to_json()))
            .await?;
        Ok(())
    }

    /// The next batch of entries; `None` once the session closed (see
    /// [`LogSession::closed`]).
    pub async fn next_logs(&mut self) -> Result<Option<Vec<LogEntry>>> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => match LogsMessage::decode(t.as_str()) {
                    Ok(m) => return Ok(Some(m.logs)),
                    Err(e) => tracing::debug!(error = %e, "ignoring an unexpected frame"),
                },
                Some(Ok(Message::Close(frame))) => {
                    self.closed = Some(
                        frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new())),
                    );
                    // Sends the close reply tungstenite queued.
                    let _ = self.ws.flush().await;
                    return Ok(None);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    if self.closed.is_some() {
                        return Ok(None);
                    }
                    return Err(e.into());
                }
                None => return Ok(None),
            }
        }
    }
}

/// One human-readable line: time, level, event, message, fields.
pub fn format_line(e: &LogEntry) -> String {
    let level = match e.level {
        LogLevel::Debug => "DBG",
        LogLevel::Info => "INF",
        LogLevel::Warn => "WRN",
        LogLevel::Error => "ERR",
    };
    let mut line = format!("{} {level} {}", e.time, e.message);
    if e.event != EventType::Cloudflared {
        line = format!("{} {level} [{}] {}", e.time, e.event.as_str(), e.message);
    }
    for (k, v) in &e.fields {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        line.push_str(&format!(" {k}={v}"));
    }
    line
}

pub async fn run(cmd: TailCommand) -> Result<()> {
    if let Some(TailSubcommand::Token { tunnel, api }) = cmd.command {
        let api_token = api_token_from_env()
            .ok_or_else(|| anyhow!("set CULVERT_API_TOKEN (or CLOUDFLARE_API_TOKEN)"))?;
        let token = fetch_token(&with_account_fallback(&api), &api_token, &tunnel).await?;
        println!("{}", serde_json::json!({ "token": token }));
        return Ok(());
    }
    let args = cmd.args;
    let filters = filters(&args)?;
    let token = resolve_token(&args).await?;
    let target = Target::from_args(&args);
    let mut session = LogSession::connect(&target, &token, args.connector_id.as_deref()).await?;
    session.start(filters).await?;
    use std::io::Write as _;
    let stdout = std::io::stdout();
    loop {
        tokio::select! {
            r = session.next_logs() => match r? {
                Some(logs) => {
                    let mut out = stdout.lock();
                    for e in &logs {
                        let line = match args.output {
                            Output::Json => serde_json::to_string(e)?,
                            Output::Default => format_line(e),
                        };
                        writeln!(out, "{line}")?;
                    }
                    out.flush()?;
                }
                None => break,
            },
            _ = tokio::signal::ctrl_c() => {
                let _ = session.stop().await;
                return Ok(());
            }
        }
    }
    match session.closed {
        Some((code, reason)) if code >= 4000 => {
            bail!("the connector closed the session: {code} {reason}")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        tail: TailCommand,
    }

    #[test]
    fn flags_like_cloudflared_tail() {
        let c = Cli::try_parse_from([
            "tail",
            "--token",
            "a.b.c",
            "--event",
            "http",
            "--event",
            "tcp",
            "--level",
            "info",
            "--sample",
            "0.5",
            "--output",
            "json",
            "--connector-id",
            "x",
            "t1",
        ])
        .unwrap()
        .tail;
        assert!(c.command.is_none());
        let f = filters(&c.args).unwrap();
        assert_eq!(f.events, vec![EventType::Http, EventType::Tcp]);
        assert_eq!(f.level, Some(LogLevel::Info));
        assert_eq!(c.args.output, Output::Json);
        assert_eq!(c.args.tunnel.as_deref(), Some("t1"));
        let t = Cli::try_parse_from(["tail", "token", "t1"]).unwrap().tail;
        assert!(matches!(t.command, Some(TailSubcommand::Token { .. })));
        let bad = Cli::try_parse_from(["tail", "--level", "loud"])
            .unwrap()
            .tail;
        assert!(filters(&bad.args).is_err());
        let bad = Cli::try_parse_from(["tail", "--sample", "0"]).unwrap().tail;
        assert!(filters(&bad.args).is_err());
    }

    #[test]
    fn urls_and_lines() {
        let t = Target {
            host: "management.example:8443".into(),
            connect: None,
            plaintext: false,
            cacert: None,
        };
        assert_eq!(
            t.url("a.b", Some("c")),
            "wss://management.example:8443/logs?access_token=a.b&connector_id=c"
        );
        assert_eq!(t.server_name(), "management.example");
        assert_eq!(t.dial_addr(), "management.example:8443");
        let mut fields = serde_json::Map::new();
        fields.insert("status".into(), 200.into());
        let e = LogEntry {
            time: "T".into(),
            level: LogLevel::Debug,
            message: "GET /x 200".into(),
            event: EventType::Http,
            fields,
        };
        assert_eq!(format_line(&e), "T DBG [http] GET /x 200 status=200");
    }
}
