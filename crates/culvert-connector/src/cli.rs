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
use crate::connector::{Connector, ConnectorConfig, MAX_GRACE_PERIOD};
use crate::error::ConnectorError;
use crate::identity::TokenExtras;

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
    /// Transport to the edge: `quic`, `http2` (not implemented yet) or `auto` (= quic).
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
    /// QUIC (the only transport implemented so far).
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
    /// Tunnel UUID (fills a credentials file without `TunnelID`).
    #[arg(value_name = "TUNNEL")]
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

/// The tunnel identity and token extras from `run`'s flags: token, token
/// file, then credentials (file or contents).
pub fn resolve_identity(run: &RunArgs) -> Result<(TunnelToken, TokenExtras), ConnectorError> {
    let token_text = match (&run.token, &run.token_file) {
        (Some(t), _) if !t.trim().is_empty() => Some(t.clone()),
        (_, Some(path)) => {
            Some(
                std::fs::read_to_string(path).map_err(|source| ConnectorError::Io {
                    what: format!("reading the token file {}", path.display()),
                    source,
                })?,
            )
        }
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
    let json = match (&run.credentials_contents, &run.credentials_file) {
        (Some(c), _) => c.clone(),
        (None, Some(path)) => {
            std::fs::read_to_string(path).map_err(|source| ConnectorError::Io {
                what: format!("reading the credentials file {}", path.display()),
                source,
            })?
        }
        (None, None) => {
            return Err(ConnectorError::Config(
                "no tunnel credentials: pass --token (or TUNNEL_TOKEN), --token-file or --credentials-file".into(),
            ));
        }
    };
    let mut creds = Credentials::from_json(&json)
        .map_err(|e| ConnectorError::Config(format!("invalid credentials: {e}")))?;
    if creds.tunnel_id.is_nil() {
        let id = run.tunnel.as_deref().ok_or_else(|| {
            ConnectorError::Config(
                "the credentials have no TunnelID: pass the tunnel UUID as an argument".into(),
            )
        })?;
        creds.tunnel_id = id
            .parse()
            .map_err(|_| ConnectorError::Config(format!("{id:?} is not a tunnel UUID")))?;
    }
    Ok((creds.to_token(), TokenExtras::default()))
}

/// The ingress before any push: `--hello-world`, `--url`, or 503 for all.
pub fn initial_ingress(opts: &TunnelOptions) -> Result<Ingress, ConnectorError> {
    let service = if opts.hello_world {
        Some("hello_world".to_owned())
    } else {
        opts.url.clone()
    };
    match service {
        None => Ok(Ingress::default_no_rules()),
        Some(s) => {
            // cloudflared accepts `--url localhost:8080` without a scheme.
            let s = if s.contains("://") || s == "hello_world" {
                s
            } else {
                format!("http://{s}")
            };
            culvert_ingress::parse_remote_config(
                &serde_json::json!({ "ingress": [{ "service": s }] }),
            )
            .map_err(|e| ConnectorError::Config(format!("--url: {e}")))
        }
    }
}

/// Builds the connector configuration from the command line (reads the
/// token/credentials and CA files).
pub fn connector_config(
    opts: &TunnelOptions,
    run: &RunArgs,
) -> Result<ConnectorConfig, ConnectorError> {
    match opts.protocol {
        Protocol::Auto | Protocol::Quic => {}
        Protocol::Http2 | Protocol::H2mux => {
            return Err(ConnectorError::Config(
                "the http2 transport is not implemented yet: use --protocol quic (or auto)".into(),
            ));
        }
    }
    let (token, extras) = resolve_identity(run)?;
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
    config.initial_ingress = initial_ingress(opts)?;
    config.management_hostname = opts.management_hostname.clone();
    Ok(config)
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
    run_tunnel_command_until(cmd, shutdown).await
}

/// [`run_tunnel_command`] with the caller's shutdown token instead of signals.
pub async fn run_tunnel_command_until(
    cmd: TunnelCommand,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let TunnelSubcommand::Run(run) = &cmd.command;
    let config = connector_config(&cmd.options, run)?;
    if cmd.options.ha_connections as usize > config.edge_addrs.len() {
        tracing::info!(
            ha_connections = cmd.options.ha_connections,
            edges = config.edge_addrs.len(),
            "more connections than edge addresses: connections share addresses round robin"
        );
    }
    let connector = Connector::new(config).context("starting the connector")?;
    let metrics_task = match &cmd.options.metrics {
        Some(addr) => {
            let listener = crate::metrics::bind(addr).await?;
            let state = connector.state();
            let token = shutdown.clone();
            Some(tokio::spawn(crate::metrics::serve(listener, state, token)))
        }
        None => None,
    };
    let result = connector.run(shutdown.clone()).await;
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
        let TunnelSubcommand::Run(run) = &t.command;
        assert_eq!(run.token.as_deref(), Some("T"));

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
    fn http2_fails_clearly_and_edge_is_required() {
        let t = parse(&["--protocol", "http2", "run", "--token", "x"]).unwrap();
        let TunnelSubcommand::Run(run) = &t.command;
        let e = connector_config(&t.options, run).unwrap_err().to_string();
        assert!(e.contains("http2 transport is not implemented"), "{e}");

        let token = TunnelToken {
            account_tag: "acc".into(),
            tunnel_id: uuid::Uuid::from_u128(9),
            secret: vec![7; 32],
            endpoint: None,
        };
        let t = parse(&["run", "--token", &token.encode()]).unwrap();
        let TunnelSubcommand::Run(run) = &t.command;
        let e = connector_config(&t.options, run).unwrap_err().to_string();
        assert!(e.contains("--edge"), "{e}");

        // The token's culvert_edge / culvert_ca fill in; flags override them.
        let extras = TokenExtras {
            edge: vec!["edge.test:7844".into()],
            ca_pem: Some("PEM".into()),
        };
        let tok = extras.encode_with(&token);
        let t = parse(&["run", "--token", &tok]).unwrap();
        let TunnelSubcommand::Run(run) = &t.command;
        let c = connector_config(&t.options, run).unwrap();
        assert_eq!(c.edge_addrs, ["edge.test:7844"]);
        assert_eq!(c.ca_pem.as_deref(), Some(&b"PEM"[..]));
        assert_eq!(c.token, token);
        let t = parse(&["--edge", "127.0.0.1:1", "run", "--token", &tok]).unwrap();
        let TunnelSubcommand::Run(run) = &t.command;
        assert_eq!(
            connector_config(&t.options, run).unwrap().edge_addrs,
            ["127.0.0.1:1"]
        );
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
        let TunnelSubcommand::Run(run) = &t.command;
        let c = connector_config(&t.options, run).unwrap();
        assert_eq!(c.token.tunnel_id.to_string(), id);
        assert_eq!(c.token.secret.len(), 32);
        let t = parse(&["--edge", "e:1", "run", "--credentials-file", p]).unwrap();
        let TunnelSubcommand::Run(run) = &t.command;
        assert!(connector_config(&t.options, run).is_err());
        let t = parse(&["--edge", "e:1", "run"]).unwrap();
        let TunnelSubcommand::Run(run) = &t.command;
        assert!(
            connector_config(&t.options, run)
                .unwrap_err()
                .to_string()
                .contains("--token")
        );
    }

    #[test]
    fn initial_ingress_from_flags() {
        let t = parse(&["--url", "localhost:8080", "run"]).unwrap();
        let i = initial_ingress(&t.options).unwrap();
        assert_eq!(i.rules[0].service.to_string(), "http://localhost:8080");
        let t = parse(&["--hello-world", "--url", "http://x", "run"]).unwrap();
        let i = initial_ingress(&t.options).unwrap();
        assert_eq!(i.rules[0].service, culvert_ingress::Service::HelloWorld);
        let t = parse(&["run"]).unwrap();
        assert_eq!(
            initial_ingress(&t.options).unwrap().rules[0].service,
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
