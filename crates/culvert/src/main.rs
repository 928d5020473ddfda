//! The `culvert` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use culvert::server::{self, ServerConfig};
use culvert_api::auth::PERMISSION_GROUPS;
use culvert_api::timefmt::{format_micros, parse_timestamp};
use culvert_store::Store;

/// mimalloc: with glibc's malloc, allocation was about a third of the
/// connector's CPU per proxied request (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "culvert",
    version,
    about = "Self-hosted, Cloudflare-Tunnel-compatible tunnels"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "CULVERT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter (e.g. `info`, `culvert=debug`).
    #[arg(long, global = true, env = "CULVERT_LOG_LEVEL", default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane (REST API) on the embedded store or PostgreSQL.
    Server(ServerArgs),
    /// Run a connector (`culvert tunnel [--edge A --cacert CA] run --token T`) or
    /// manage tunnels through the API (`create`, `list`, `info`, `delete`, `token`, …).
    Tunnel(TunnelCli),
    /// Verify an API token and write an origin certificate (cert.pem) for `culvert tunnel`.
    Login(culvert_cli::LoginArgs),
    /// Stream a tunnel connector's logs live (as `cloudflared tail`).
    Tail(culvert::tail::TailCommand),
    /// Reach a tunnel's TCP service (SSH, RDP, SMB, TCP) through the public
    /// listener: `culvert access ssh --hostname H [--url 127.0.0.1:PORT]`.
    #[command(subcommand)]
    Access(culvert_connector::access_tcp::AccessCommand),
    /// Administer accounts and API tokens in the server's store.
    Admin {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: AdminCommand,
    },
}

/// `culvert tunnel`: the connector's flags and subcommands (culvert-connector)
/// merged with the management commands (culvert-cli).
#[derive(Args)]
struct TunnelCli {
    #[command(flatten)]
    options: culvert_connector::cli::TunnelOptions,
    #[command(flatten)]
    manage: culvert_cli::ManagementOptions,
    #[command(subcommand)]
    command: TunnelCliCommand,
}

#[derive(Subcommand)]
enum TunnelCliCommand {
    #[command(flatten)]
    Connector(culvert_connector::cli::TunnelSubcommand),
    #[command(flatten)]
    Manage(culvert_cli::TunnelManagement),
}

/// Runs a culvert-cli command; its errors are printed as the message alone
/// (the server's message and code), never as a trace, and exit with 1.
async fn run_cli(
    fut: impl std::future::Future<Output = Result<(), culvert_cli::CliError>>,
) -> Result<()> {
    if let Err(e) = fut.await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    Ok(())
}

#[derive(Args, Clone)]
struct StoreArgs {
    /// Directory for the SQLite database, bootstrap.json and key material.
    #[arg(
        long,
        env = "CULVERT_DATA_DIR",
        default_value = "./culvert-data",
        global = true
    )]
    data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://…` (default: a SQLite file in the data dir).
    #[arg(long, env = "CULVERT_DATABASE_URL", global = true)]
    database_url: Option<String>,
}

impl StoreArgs {
    async fn open(&self) -> Result<Store> {
        server::prepare_data_dir(&self.data_dir)?;
        let url = self
            .database_url
            .clone()
            .unwrap_or_else(|| server::default_database_url(&self.data_dir));
        Store::open(&url)
            .await
            .with_context(|| format!("opening the store at {}", server::redact(&url)))
    }
}

#[derive(Args)]
struct ServerArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Address of the REST API.
    #[arg(long, env = "CULVERT_API_LISTEN", default_value = "127.0.0.1:8787")]
    api_listen: SocketAddr,
    /// Largest accepted API request body, in bytes.
    #[arg(long, env = "CULVERT_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    max_body_bytes: usize,
    /// Where connectors (culvert or cloudflared) dial: QUIC on UDP and
    /// HTTP/2 over TLS on TCP, same port number.
    #[arg(long, env = "CULVERT_EDGE_LISTEN", default_value = "0.0.0.0:7844")]
    edge_listen: SocketAddr,
    /// Public HTTP listener routing eyeball requests by Host.
    #[arg(long, env = "CULVERT_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    http_listen: SocketAddr,
    /// Edge certificate chain (PEM) instead of the generated one; needs --edge-key.
    #[arg(long, env = "CULVERT_EDGE_CERT", requires = "edge_key")]
    edge_cert: Option<PathBuf>,
    /// Private key (PEM) of --edge-cert.
    #[arg(long, env = "CULVERT_EDGE_KEY", requires = "edge_cert")]
    edge_key: Option<PathBuf>,
    /// `<tunnel-id>.<tunnel-domain>` always reaches its tunnel.
    #[arg(long, env = "CULVERT_TUNNEL_DOMAIN", default_value = culvert_edge::DEFAULT_TUNNEL_DOMAIN)]
    tunnel_domain: String,
    /// Location name reported to connectors and in /connections (colo_name).
    #[arg(long, env = "CULVERT_LOCATION", default_value = culvert_edge::DEFAULT_LOCATION)]
    location: String,
    /// Edge address connectors should dial (HOST:PORT, repeatable); written with
    /// the edge CA into minted tunnel tokens so `culvert tunnel run --token T` needs no flags.
    #[arg(long, env = "CULVERT_PUBLIC_EDGE_ADDRESS", value_delimiter = ',')]
    public_edge_address: Vec<String>,
    /// Serve Prometheus `/metrics`, `/healthz` and `/readyz` on this address.
    #[arg(long, env = "CULVERT_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Public HTTPS listener (eyeballs and `wss://` for the management host);
    /// needs --tls-cert and --tls-key.
    #[arg(long, env = "CULVERT_HTTPS_LISTEN", requires_all = ["tls_cert", "tls_key"])]
    https_listen: Option<SocketAddr>,
    /// Certificate chain (PEM) of --https-listen; reloaded when it changes.
    #[arg(long, env = "CULVERT_TLS_CERT", requires = "https_listen")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "CULVERT_TLS_KEY", requires = "https_listen")]
    tls_key: Option<PathBuf>,
    /// Public name of the management host (`culvert tail`, `cloudflared tail`);
    /// default `management.<tunnel-domain>`.
    #[arg(long, env = "CULVERT_MANAGEMENT_HOSTNAME")]
    management_hostname: Option<String>,
    /// How long the edge waits for an origin's response head (Go duration,
    /// e.g. `100s`); streamed bodies and WebSockets are never cut. Default: no limit.
    #[arg(long, env = "CULVERT_ORIGIN_RESPONSE_TIMEOUT", value_parser = parse_response_timeout)]
    origin_response_timeout: Option<std::time::Duration>,
}

/// `--origin-response-timeout`: a positive Go duration (`0` means none).
fn parse_response_timeout(s: &str) -> Result<std::time::Duration, String> {
    culvert_connector::cli::parse_go_duration(s)
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Accounts.
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// API tokens (Bearer) and legacy global keys.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// DNS zones: public hostnames routed to tunnels must fall inside one.
    Zone {
        #[command(subcommand)]
        command: ZoneCommand,
    },
    /// Print an origin certificate (cert.pem) for an account, for `culvert
    /// tunnel` or cloudflared's `tunnel --origincert … --api-url …`; mints an
    /// API token with "Cloudflare Tunnel Write" unless --token is given.
    Cert {
        #[arg(long)]
        account: String,
        /// Zone id for `tunnel route dns` (default: the account's only zone, if it has one).
        #[arg(long)]
        zone: Option<String>,
        /// API URL to record in the certificate (default: bootstrap.json's api_url).
        #[arg(long)]
        api_url: Option<String>,
        /// Use this existing API token instead of minting one (base64url: it
        /// may start with `-`).
        #[arg(long, hide_env_values = true, allow_hyphen_values = true)]
        token: Option<String>,
    },
}

#[derive(Subcommand)]
enum ZoneCommand {
    /// Create a zone (a domain such as example.com) for an account; prints its id.
    Create {
        domain: String,
        #[arg(long)]
        account: String,
    },
    /// List zones (of one account with --account).
    List {
        #[arg(long)]
        account: Option<String>,
    },
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create an account and print its id.
    Create { name: String },
    /// List accounts.
    List,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create an API token; the secret is printed once.
    Create {
        #[arg(long)]
        account: String,
        /// A permission group, e.g. "Cloudflare Tunnel Read" (repeatable).
        #[arg(long = "permission", required = true)]
        permissions: Vec<String>,
        #[arg(long, default_value = "api token")]
        name: String,
        /// RFC 3339 expiry.
        #[arg(long)]
        expires_on: Option<String>,
        /// RFC 3339 start of validity.
        #[arg(long)]
        not_before: Option<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    // The console filter is per layer so that `/logs` sessions still get the
    // connector's debug events (HTTP requests) whatever --log-level says.
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(culvert_connector::management::layer::layer())
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run_server(args: ServerArgs) -> Result<()> {
    let running = server::start(ServerConfig {
        data_dir: args.store.data_dir.clone(),
        api_listen: args.api_listen,
        database_url: args.store.database_url.clone(),
        max_body_bytes: args.max_body_bytes,
        edge_listen: args.edge_listen,
        http_listen: args.http_listen,
        edge_cert: args.edge_cert,
        edge_key: args.edge_key,
        tunnel_domain: args.tunnel_domain,
        location: args.location,
        public_edge_address: args.public_edge_address,
        metrics_listen: args.metrics_listen,
        https: match (args.https_listen, args.tls_cert, args.tls_key) {
            (Some(listen), Some(cert), Some(key)) => {
                Some(culvert_edge::HttpsOptions { listen, cert, key })
            }
            _ => None,
        },
        management_hostname: args.management_hostname,
        origin_response_timeout: args.origin_response_timeout.filter(|d| !d.is_zero()),
    })
    .await?;
    if let Some(b) = &running.bootstrap {
        println!("{}", serde_json::to_string_pretty(b)?);
        println!(
            "# first start: these credentials are also in {} (mode 0600)",
            args.store.data_dir.join("bootstrap.json").display()
        );
    }
    println!("culvert API listening on {}", running.api_url);
    println!(
        "culvert edge listening on {} (QUIC), public HTTP on {}",
        running.edge_addr, running.http_addr
    );
    if let Some(a) = running.https_addr {
        println!("culvert public HTTPS on {a}");
    }
    if let Some(a) = running.metrics_addr {
        println!("culvert metrics on http://{a}/metrics");
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await
}

fn parse_time_arg(flag: &str, v: Option<String>) -> Result<Option<i64>> {
    v.map(|s| {
        parse_timestamp(&s).with_context(|| format!("{flag}: {s:?} is not an RFC 3339 date-time"))
    })
    .transpose()
}

async fn run_admin(store: StoreArgs, command: AdminCommand) -> Result<()> {
    let data_dir = store.data_dir.clone();
    let store = store.open().await?;
    match command {
        AdminCommand::Account {
            command: AccountCommand::Create { name },
        } => {
            let a = store.create_account(&name).await?;
            println!("{}", serde_json::json!({"id": a.id, "name": a.name}));
        }
        AdminCommand::Account {
            command: AccountCommand::List,
        } => {
            for a in store.list_accounts().await? {
                println!("{}\t{}\t{}", a.id, format_micros(a.created_at), a.name);
            }
        }
        AdminCommand::Token {
            command:
                TokenCommand::Create {
                    account,
                    permissions,
                    name,
                    expires_on,
                    not_before,
                },
        } => {
            if store.get_account(&account).await?.is_none() {
                bail!("no account {account}");
            }
            for p in &permissions {
                if !PERMISSION_GROUPS.contains(&p.as_str()) {
                    bail!(
                        "unknown permission group {p:?}; known groups: {}",
                        PERMISSION_GROUPS.join(", ")
                    );
                }
            }
            let expires_on = parse_time_arg("--expires-on", expires_on)?;
            let not_before = parse_time_arg("--not-before", not_before)?;
            let (t, secret) =
                server::create_token(&store, &account, &name, permissions, expires_on, not_before)
                    .await?;
            println!(
                "{}",
                serde_json::json!({"id": t.id, "account_id": t.account_id, "api_token": secret, "permissions": t.permissions})
            );
        }
        AdminCommand::Token {
            command: TokenCommand::List,
        } => {
            for t in store.list_api_tokens().await? {
                let state = if t.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    t.id,
                    t.account_id,
                    t.kind.as_str(),
                    state,
                    t.name,
                    t.permissions.join(", ")
                );
            }
        }
        AdminCommand::Zone {
            command: ZoneCommand::Create { domain, account },
        } => {
            if store.get_account(&account).await?.is_none() {
                bail!("no account {account}");
            }
            let z = store.create_zone(&account, &domain).await?;
            println!(
                "{}",
                serde_json::json!({"id": z.id, "name": z.name, "account_id": z.account_id})
            );
        }
        AdminCommand::Zone {
            command: ZoneCommand::List { account },
        } => {
            for z in store.list_zones(account.as_deref()).await? {
                println!("{}\t{}\t{}", z.id, z.account_id, z.name);
            }
        }
        AdminCommand::Cert {
            account,
            zone,
            api_url,
            token,
        } => {
            if store.get_account(&account).await?.is_none() {
                bail!("no account {account}");
            }
            let zone = match zone {
                Some(z) => Some(z),
                None => match store.list_zones(Some(&account)).await?.as_slice() {
                    [only] => Some(only.id.clone()),
                    _ => None,
                },
            };
            let api_url = api_url.or_else(|| {
                let text = std::fs::read_to_string(data_dir.join("bootstrap.json")).ok()?;
                serde_json::from_str::<server::Bootstrap>(&text)
                    .ok()
                    .map(|b| b.api_url)
            });
            let token = match token {
                Some(t) => t,
                None => {
                    let groups = vec![culvert_api::auth::TUNNEL_WRITE.to_owned()];
                    server::create_token(&store, &account, "cert.pem", groups, None, None)
                        .await?
                        .1
                }
            };
            print!(
                "{}",
                culvert_cli::origin_cert_pem(&account, zone.as_deref(), &token, api_url.as_deref())
            );
        }
        AdminCommand::Token {
            command: TokenCommand::Revoke { id },
        } => {
            store.revoke_api_token(&id).await?;
            println!("revoked {id}");
        }
    }
    store.close().await;
    Ok(())
}

/// `tunnel run NAME` (or `tunnel: NAME` in the configuration file): turns
/// the name into the tunnel's UUID as cloudflared's `findID` does, from the
/// credentials if they carry a `TunnelID`, else through the API with the
/// origin certificate. The credentials file then goes by UUID.
async fn resolve_run_tunnel(
    options: &culvert_connector::cli::TunnelOptions,
    manage: &culvert_cli::ManagementOptions,
    paths: &culvert_connector::cli::SearchPaths,
    run: &mut culvert_connector::cli::RunArgs,
) -> Result<(), culvert_cli::CliError> {
    use culvert_connector::cli::{credentials_tunnel_id, load_local_config};
    if run.token.is_some() || run.token_file.is_some() {
        return Ok(());
    }
    // An unreadable configuration is reported when the tunnel starts.
    let local = load_local_config(options, paths).ok().flatten();
    let Some(name) = run
        .tunnel
        .clone()
        .or_else(|| local.as_ref().and_then(|c| c.tunnel()))
    else {
        return Ok(());
    };
    if uuid::Uuid::parse_str(name.trim()).is_ok() {
        return Ok(());
    }
    let id = match credentials_tunnel_id(run, local.as_ref()) {
        Some(id) => id,
        None => culvert_cli::resolve_tunnel(manage, &name).await?,
    };
    run.tunnel = Some(id.to_string());
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse_from(culvert_cli::expand_cloudflared_aliases(std::env::args_os()));
    init_logging(cli.log_format, &cli.log_level);
    match cli.command {
        Command::Server(args) => run_server(args).await,
        Command::Admin { store, command } => run_admin(store, command).await,
        Command::Tunnel(TunnelCli {
            options,
            manage,
            command,
        }) => match command {
            TunnelCliCommand::Connector(mut command) => {
                use culvert_connector::cli::{
                    self as connector_cli, SearchPaths, TunnelSubcommand,
                };
                let mut paths = SearchPaths::default_paths();
                if let TunnelSubcommand::Run(run) = &mut command {
                    if let Err(e) = resolve_run_tunnel(&options, &manage, &paths, run).await {
                        return run_cli(async { Err(e) }).await;
                    }
                    // cloudflared also looks for `<UUID>.json` beside the
                    // origin certificate, where `tunnel create` writes it.
                    if let Ok(cert) =
                        culvert_cli::cert::find_cert_path(manage.origincert.as_deref())
                        && let Some(dir) = cert.parent()
                    {
                        paths.credentials_dirs.push(dir.to_path_buf());
                    }
                }
                connector_cli::run_tunnel_command_in(
                    connector_cli::TunnelCommand { options, command },
                    paths,
                )
                .await
            }
            TunnelCliCommand::Manage(command) => {
                run_cli(culvert_cli::run_management(&manage, command)).await
            }
        },
        Command::Login(args) => run_cli(culvert_cli::login(args)).await,
        Command::Tail(cmd) => culvert::tail::run(cmd).await,
        Command::Access(cmd) => Ok(culvert_connector::access_tcp::run_access_command(cmd).await?),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// The merged `tunnel` tree (connector + management) has no clashing flags.
    #[test]
    fn clap_definition_is_valid() {
        super::Cli::command().debug_assert();
    }

    /// API tokens are base64url: one may start with `-`.
    #[test]
    fn tokens_may_start_with_a_hyphen() {
        use clap::Parser as _;
        let cli = super::Cli::try_parse_from([
            "culvert",
            "login",
            "--api-url",
            "http://127.0.0.1:1/client/v4",
            "--token",
            "-zEtZueODdDV4zCl",
        ])
        .unwrap();
        let super::Command::Login(args) = cli.command else {
            panic!("not login");
        };
        assert_eq!(args.token, "-zEtZueODdDV4zCl");
    }
}
