//! The management subcommands of `culvert tunnel` and `culvert login`:
//! clap definitions and what each one does.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt as _;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::cert::{OriginCert, find_cert_path};
use crate::client::{ApiClient, DEFAULT_API_URL, TunnelFilter};
use crate::error::CliError;
use crate::files::{expand_tilde, read_small, write_private};
use crate::output::{OutputFormat, Progress, Table, human_time, render};
use crate::types::{Connector, Tunnel};

/// `tunnel`-level flags of the management commands (accepted before or
/// after the subcommand, like cloudflared's).
#[derive(Debug, Clone, Default, Args)]
pub struct ManagementOptions {
    /// API base URL (cloudflared's `--api-url`). Default: the URL `culvert
    /// login` stored in cert.pem, else Cloudflare's API.
    #[arg(long, env = "TUNNEL_API_URL", value_name = "URL", global = true)]
    pub api_url: Option<String>,
    /// Origin certificate (cert.pem) holding the account and API token.
    /// Default: ~/.culvert/cert.pem, else ~/.cloudflared/cert.pem.
    #[arg(long, env = "TUNNEL_ORIGIN_CERT", value_name = "PATH", global = true)]
    pub origincert: Option<PathBuf>,
}

/// The management subcommands, flattened into `culvert tunnel`.
#[derive(Debug, Clone, Subcommand)]
pub enum TunnelManagement {
    /// Create a tunnel and write its credentials file.
    Create(CreateArgs),
    /// List tunnels (every page).
    List(ListArgs),
    /// Show a tunnel's connectors and their connections.
    Info(InfoArgs),
    /// Delete tunnels (`-f` also removes their connections).
    Delete(DeleteArgs),
    /// Print a tunnel's token (or write a credentials file with --cred-file).
    Token(TokenArgs),
    /// Remove stale connections of tunnels.
    Cleanup(CleanupArgs),
    /// Route traffic to a tunnel.
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
    /// Rename a tunnel.
    Rename(RenameArgs),
    /// Give a tunnel a new secret and print its new token.
    Rotate(RotateArgs),
    /// The tunnel's remote (API-managed) configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    pub name: String,
    /// Where to write the credentials file. Default: `<UUID>.json` next to cert.pem.
    #[arg(
        long,
        visible_alias = "cred-file",
        env = "TUNNEL_CRED_FILE",
        value_name = "PATH"
    )]
    pub credentials_file: Option<PathBuf>,
    /// The tunnel secret, base64 of at least 32 bytes (default: 32 random bytes).
    #[arg(
        long,
        short = 's',
        env = "TUNNEL_CREATE_SECRET",
        hide_env_values = true
    )]
    pub secret: Option<String>,
    #[arg(long, short = 'o', value_enum)]
    pub output: Option<OutputFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortBy {
    Name,
    Id,
    #[value(name = "createdAt")]
    CreatedAt,
    #[value(name = "deletedAt")]
    DeletedAt,
    #[value(name = "numConnections")]
    NumConnections,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[arg(long, short = 'o', value_enum)]
    pub output: Option<OutputFormat>,
    /// Include deleted tunnels.
    #[arg(long, short = 'd')]
    pub show_deleted: bool,
    /// Only the tunnel with this exact name.
    #[arg(long, short = 'n')]
    pub name: Option<String>,
    /// Only tunnels whose name starts with this.
    #[arg(long)]
    pub name_prefix: Option<String>,
    /// Only tunnels whose name does not start with this.
    #[arg(long)]
    pub exclude_name_prefix: Option<String>,
    /// Tunnels that existed at this RFC 3339 time.
    #[arg(long, short = 'w', value_parser = parse_rfc3339)]
    pub when: Option<String>,
    /// Only the tunnel with this id.
    #[arg(long, short = 'i')]
    pub id: Option<Uuid>,
    /// Accepted for cloudflared compatibility (pending reconnects no longer exist).
    #[arg(long)]
    pub show_recently_disconnected: bool,
    #[arg(long, value_enum, default_value_t = SortBy::Name)]
    pub sort_by: SortBy,
    #[arg(long)]
    pub invert_sort: bool,
    /// Page size of each request (`per_page`, 1..1000).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_fetch_size: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InfoSortBy {
    #[value(name = "createdAt")]
    CreatedAt,
    #[value(name = "numConnections")]
    NumConnections,
    Version,
}

#[derive(Debug, Clone, Args)]
pub struct InfoArgs {
    /// Tunnel name or UUID.
    pub tunnel: String,
    #[arg(long, short = 'o', value_enum)]
    pub output: Option<OutputFormat>,
    #[arg(long, value_enum, default_value_t = InfoSortBy::CreatedAt)]
    pub sort_info_by: InfoSortBy,
    #[arg(long)]
    pub invert_info_sort: bool,
    /// Accepted for cloudflared compatibility (pending reconnects no longer exist).
    #[arg(long)]
    pub show_recently_disconnected: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    /// Tunnel names or UUIDs.
    #[arg(required = true)]
    pub tunnels: Vec<String>,
    /// Also remove the tunnels' connections (`cascade=true`), so live
    /// connectors do not block the delete.
    #[arg(long, short = 'f')]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Tunnel name or UUID.
    pub tunnel: String,
    /// Write a credentials file here instead of printing the token.
    #[arg(long, visible_alias = "credentials-file", value_name = "PATH")]
    pub cred_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    /// Tunnel names or UUIDs.
    #[arg(required = true)]
    pub tunnels: Vec<String>,
    /// Remove only this connector's connections (one tunnel only).
    #[arg(long, short = 'c')]
    pub connector_id: Option<Uuid>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum RouteCommand {
    /// Route a hostname of the zone in cert.pem to the tunnel.
    Dns(RouteDnsArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RouteDnsArgs {
    /// Tunnel name or UUID.
    pub tunnel: String,
    /// A hostname in the zone (a bare label is qualified with the zone).
    pub hostname: String,
    /// Replace a route of the hostname to another tunnel.
    #[arg(long, short = 'f')]
    pub overwrite_dns: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RenameArgs {
    /// Tunnel name or UUID.
    pub tunnel: String,
    pub new_name: String,
}

#[derive(Debug, Clone, Args)]
pub struct RotateArgs {
    /// Tunnel name or UUID.
    pub tunnel: String,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ConfigCommand {
    /// Print the remote configuration (YAML of `config`; `-o json|yaml` for the whole object).
    Get {
        /// Tunnel name or UUID.
        tunnel: String,
        #[arg(long, short = 'o', value_enum)]
        output: Option<OutputFormat>,
    },
    /// Validate a YAML or JSON file with cloudflared's ingress rules, then
    /// upload it (`{"ingress":[…]}` or `{"config":{…}}`; `-` reads stdin).
    Set {
        /// Tunnel name or UUID.
        tunnel: String,
        file: PathBuf,
    },
}

/// `culvert login`.
#[derive(Debug, Clone, Args)]
pub struct LoginArgs {
    /// API base URL, e.g. http://127.0.0.1:8787/client/v4.
    #[arg(long, env = "TUNNEL_API_URL", value_name = "URL")]
    pub api_url: Option<String>,
    /// API token (Bearer), e.g. the `api_token` of the server's bootstrap.json.
    /// Tokens are base64url and may start with `-`, so hyphen values are taken.
    #[arg(
        long,
        env = "CULVERT_API_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub token: String,
    /// Account id (default: the token's account, when the server tells it).
    #[arg(long)]
    pub account: Option<String>,
    /// Zone id used by `tunnel route dns`.
    #[arg(long)]
    pub zone: Option<String>,
    /// Where to write cert.pem (default ~/.culvert/cert.pem).
    #[arg(long, env = "TUNNEL_ORIGIN_CERT", value_name = "PATH")]
    pub origincert: Option<PathBuf>,
}

fn parse_rfc3339(s: &str) -> Result<String, String> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|_| s.to_owned())
        .map_err(|_| format!("{s:?} is not an RFC 3339 time such as 2006-01-02T15:04:05Z"))
}

/// Everything a management command needs: the client and where cert.pem is.
struct Ctx {
    client: ApiClient,
    cert: OriginCert,
    cert_path: PathBuf,
}

impl Ctx {
    fn open(opts: &ManagementOptions) -> Result<Ctx, CliError> {
        let cert_path = find_cert_path(opts.origincert.as_deref())?;
        let cert = OriginCert::read(&cert_path)?;
        let api_url = opts
            .api_url
            .clone()
            .filter(|u| !u.is_empty())
            .or_else(|| cert.api_url.clone())
            .unwrap_or_else(|| DEFAULT_API_URL.to_owned());
        let client = ApiClient::new(&api_url, &cert.account_id, &cert.api_token)?;
        Ok(Ctx {
            client,
            cert,
            cert_path,
        })
    }

    /// `<dir of cert.pem>/<UUID>.json`, where cloudflared keeps credentials.
    fn default_credentials_path(&self, id: Uuid) -> PathBuf {
        self.cert_path
            .parent()
            .unwrap_or(Path::new("."))
            .join(format!("{id}.json"))
    }

    /// cloudflared's `findID`: a UUID is taken as is; a name resolves to the
    /// first live tunnel of that name.
    async fn find_id(&self, input: &str) -> Result<Uuid, CliError> {
        if let Ok(id) = Uuid::parse_str(input) {
            return Ok(id);
        }
        let hits = self
            .client
            .list_tunnels(&TunnelFilter::live_named(input))
            .await?;
        hits.first().map(|t| t.id).ok_or_else(|| {
            CliError::usage(format!(
                "{input} is neither the ID nor the name of any of your tunnels"
            ))
        })
    }

    /// Several names or UUIDs; names must match exactly one live tunnel.
    async fn find_ids(&self, inputs: &[String]) -> Result<Vec<Uuid>, CliError> {
        let mut ids = Vec::with_capacity(inputs.len());
        let mut bad = Vec::new();
        for input in inputs {
            if let Ok(id) = Uuid::parse_str(input) {
                ids.push(id);
                continue;
            }
            let hits = self
                .client
                .list_tunnels(&TunnelFilter::live_named(input))
                .await?;
            match hits.as_slice() {
                [one] => ids.push(one.id),
                [] => bad.push(input.as_str()),
                _ => {
                    return Err(CliError::usage(format!(
                        "there should only be 1 non-deleted Tunnel named {input}"
                    )));
                }
            }
        }
        if !bad.is_empty() {
            return Err(CliError::usage(format!(
                "Please specify either the ID or name of a tunnel. The following inputs were neither: {}",
                bad.join(", ")
            )));
        }
        Ok(ids)
    }
}

/// Resolves a tunnel name to its id through the API, as cloudflared does for
/// `tunnel run NAME` (cert.pem and the API URL as for the other commands).
pub async fn resolve_tunnel(opts: &ManagementOptions, name_or_id: &str) -> Result<Uuid, CliError> {
    Ctx::open(opts)?.find_id(name_or_id).await
}

/// Runs a management subcommand of `culvert tunnel`.
pub async fn run_management(
    opts: &ManagementOptions,
    command: TunnelManagement,
) -> Result<(), CliError> {
    let ctx = Ctx::open(opts)?;
    match command {
        TunnelManagement::Create(a) => create(&ctx, a).await,
        TunnelManagement::List(a) => list(&ctx, a).await,
        TunnelManagement::Info(a) => info(&ctx, a).await,
        TunnelManagement::Delete(a) => delete(&ctx, a).await,
        TunnelManagement::Token(a) => token(&ctx, a).await,
        TunnelManagement::Cleanup(a) => cleanup(&ctx, a).await,
        TunnelManagement::Route {
            command: RouteCommand::Dns(a),
        } => route_dns(&ctx, a).await,
        TunnelManagement::Rename(a) => rename(&ctx, a).await,
        TunnelManagement::Rotate(a) => rotate(&ctx, a).await,
        TunnelManagement::Config {
            command: ConfigCommand::Get { tunnel, output },
        } => config_get(&ctx, &tunnel, output).await,
        TunnelManagement::Config {
            command: ConfigCommand::Set { tunnel, file },
        } => config_set(&ctx, &tunnel, &file).await,
    }
}

fn new_secret() -> Result<Vec<u8>, CliError> {
    use ring::rand::SecureRandom as _;
    let mut s = vec![0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut s)
        .map_err(|_| CliError::usage("the system random number generator failed"))?;
    Ok(s)
}

fn check_name(name: &str) -> Result<(), CliError> {
    if name.trim().is_empty() {
        return Err(CliError::usage("a tunnel name must not be empty"));
    }
    if Uuid::parse_str(name).is_ok() {
        return Err(CliError::usage("you cannot use UUIDs as tunnel names"));
    }
    Ok(())
}

fn print(s: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

async fn create(ctx: &Ctx, a: CreateArgs) -> Result<(), CliError> {
    check_name(&a.name)?;
    let secret = match &a.secret {
        Some(s) => {
            let bytes = STANDARD
                .decode(s.trim())
                .map_err(|e| CliError::usage(format!("--secret must be base64: {e}")))?;
            if bytes.len() < 32 {
                return Err(CliError::usage("Tunnel secret must be at least 32 bytes"));
            }
            bytes
        }
        None => new_secret()?,
    };
    // Refuse an existing explicit path before creating anything.
    if let Some(p) = &a.credentials_file {
        let p = expand_tilde(p);
        if p.exists() {
            return Err(CliError::usage(format!(
                "{} already exists; refusing to overwrite it",
                p.display()
            )));
        }
    }
    let mut tunnel = ctx
        .client
        .create_tunnel(&a.name, &STANDARD.encode(&secret))
        .await?;
    let path = a
        .credentials_file
        .as_deref()
        .map(expand_tilde)
        .unwrap_or_else(|| ctx.default_credentials_path(tunnel.id));
    let creds = culvert_proto::Credentials {
        account_tag: ctx.client.account_id.clone(),
        tunnel_secret: secret,
        tunnel_id: tunnel.id,
        endpoint: ctx.cert.endpoint.clone(),
    };
    if let Err(e) = write_private(&path, creds.to_json().as_bytes(), false) {
        // As cloudflared does: no credentials, no tunnel.
        let undo = ctx.client.delete_tunnel(tunnel.id, true).await;
        return Err(CliError::usage(format!(
            "tunnel {} was created but its credentials could not be written ({e}); {}",
            tunnel.id,
            match undo {
                Ok(()) => "the tunnel was deleted again".to_owned(),
                Err(u) => format!("deleting it again failed too: {u}"),
            }
        )));
    }
    tunnel.token = None;
    match a.output {
        Some(f) => print(&render(&tunnel, f)?),
        None => print(&format!(
            "Tunnel credentials written to {}. culvert chose this file based on where your origin certificate was found. Keep this file secret. To revoke these credentials, delete the tunnel.\n\nCreated tunnel {} with id {}\n",
            path.display(),
            tunnel.name,
            tunnel.id
        )),
    }
    Ok(())
}

/// Fills `connections` of live tunnels from `…/connections` (the API's
/// deprecated field is empty), eight requests at a time.
async fn fill_connections(ctx: &Ctx, tunnels: &mut [Tunnel]) -> Result<(), CliError> {
    let wanted: Vec<(usize, Uuid)> = tunnels
        .iter()
        .enumerate()
        .filter(|(_, t)| {
            t.deleted_at.is_none()
                && t.connections.is_empty()
                && (t.conns_active_at.is_some()
                    || matches!(t.status.as_str(), "healthy" | "degraded"))
        })
        .map(|(i, t)| (i, t.id))
        .collect();
    let mut progress = Progress::new(wanted.len());
    let mut results = futures::stream::iter(
        wanted
            .into_iter()
            .map(|(i, id)| async move { (i, ctx.client.connectors(id).await) }),
    )
    .buffer_unordered(8);
    while let Some((i, r)) = results.next().await {
        progress.step("fetching connections");
        match r {
            Ok(connectors) => {
                tunnels[i].connections = connectors
                    .into_iter()
                    .flat_map(|c| {
                        let id = c.id;
                        let version = c.version.clone();
                        c.conns.into_iter().map(move |mut conn| {
                            conn.client_id.get_or_insert(id);
                            conn.client_version.get_or_insert_with(|| version.clone());
                            conn
                        })
                    })
                    .collect();
            }
            // Deleted in between: no connections to show.
            Err(e) if e.api_failure().is_some_and(|f| f.status == 404) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// "2xLOCAL, 1xDFW": connections per location, as cloudflared prints them.
fn conns_summary<'a>(colos: impl Iterator<Item = &'a str>) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for c in colos {
        match counts.iter_mut().find(|(name, _)| *name == c) {
            Some((_, n)) => *n += 1,
            None => counts.push((c, 1)),
        }
    }
    counts.sort();
    counts
        .iter()
        .map(|(c, n)| format!("{n}x{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn list(ctx: &Ctx, a: ListArgs) -> Result<(), CliError> {
    let filter = TunnelFilter {
        name: a.name.clone(),
        name_prefix: a.name_prefix.clone(),
        exclude_prefix: a.exclude_name_prefix.clone(),
        existed_at: a.when.clone(),
        uuid: a.id,
        show_deleted: a.show_deleted,
        per_page: a.max_fetch_size,
    };
    let mut tunnels = ctx.client.list_tunnels(&filter).await?;
    fill_connections(ctx, &mut tunnels).await?;
    tunnels.sort_by(|x, y| match a.sort_by {
        SortBy::Name => x.name.cmp(&y.name),
        SortBy::Id => x.id.cmp(&y.id),
        SortBy::CreatedAt => x.created_at.cmp(&y.created_at),
        SortBy::DeletedAt => x.deleted_at.cmp(&y.deleted_at),
        SortBy::NumConnections => x.connections.len().cmp(&y.connections.len()),
    });
    if a.invert_sort {
        tunnels.reverse();
    }
    if let Some(f) = a.output {
        print(&render(&tunnels, f)?);
        return Ok(());
    }
    if tunnels.is_empty() {
        print(
            "No tunnels were found for the given filter flags. You can use 'culvert tunnel create' to create a tunnel.\n",
        );
        return Ok(());
    }
    let now = OffsetDateTime::now_utc();
    let mut header = vec!["ID", "NAME", "CREATED"];
    if a.show_deleted {
        header.push("DELETED");
    }
    header.extend(["STATUS", "CONNECTIONS"]);
    let mut table = Table::new(&header);
    for t in &tunnels {
        let mut row = vec![
            t.id.to_string(),
            t.name.clone(),
            human_time(t.created_at, now),
        ];
        if a.show_deleted {
            row.push(t.deleted_at.map(|d| human_time(d, now)).unwrap_or_default());
        }
        row.push(t.status.clone());
        row.push(conns_summary(
            t.connections.iter().map(|c| c.colo_name.as_str()),
        ));
        table.row(row);
    }
    print(&format!(
        "You can obtain more detailed information for each tunnel with `culvert tunnel info <name/uuid>`\n{}",
        table.render()
    ));
    Ok(())
}

async fn info(ctx: &Ctx, a: InfoArgs) -> Result<(), CliError> {
    let id = ctx.find_id(&a.tunnel).await?;
    let tunnel = ctx.client.get_tunnel(id).await?;
    let mut connectors: Vec<Connector> = ctx.client.connectors(id).await?;
    connectors.sort_by(|x, y| match a.sort_info_by {
        InfoSortBy::CreatedAt => x.run_at.cmp(&y.run_at),
        InfoSortBy::NumConnections => x.conns.len().cmp(&y.conns.len()),
        InfoSortBy::Version => x.version.cmp(&y.version),
    });
    if a.invert_info_sort {
        connectors.reverse();
    }
    if let Some(f) = a.output {
        let created = tunnel
            .created_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let v = json!({"id": tunnel.id, "name": tunnel.name, "createdAt": created, "conns": connectors});
        print(&render(&v, f)?);
        return Ok(());
    }
    let now = OffsetDateTime::now_utc();
    let mut out = format!(
        "NAME:     {}\nID:       {}\nCREATED:  {}\nSTATUS:   {}\n",
        tunnel.name,
        tunnel.id,
        human_time(tunnel.created_at, now),
        tunnel.status
    );
    if let Some(d) = tunnel.deleted_at {
        out.push_str(&format!("DELETED:  {}\n", human_time(d, now)));
    }
    if connectors.is_empty() {
        out.push_str(&format!(
            "\nYour tunnel {} does not have any active connection.\n",
            tunnel.id
        ));
    } else {
        let mut table = Table::new(&[
            "CONNECTOR ID",
            "CREATED",
            "ARCHITECTURE",
            "VERSION",
            "ORIGIN IP",
            "EDGE",
        ]);
        for c in &connectors {
            let mut ips: Vec<String> = c.conns.iter().map(|x| x.origin_ip.to_string()).collect();
            ips.dedup();
            table.row(vec![
                c.id.to_string(),
                human_time(c.run_at, now),
                c.arch.clone(),
                c.version.clone(),
                ips.join(", "),
                conns_summary(c.conns.iter().map(|x| x.colo_name.as_str())),
            ]);
        }
        out.push('\n');
        out.push_str(&table.render());
    }
    print(&out);
    Ok(())
}

async fn delete(ctx: &Ctx, a: DeleteArgs) -> Result<(), CliError> {
    let ids = ctx.find_ids(&a.tunnels).await?;
    let mut progress = Progress::new(ids.len());
    for id in ids {
        progress.step(&format!("deleting {id}"));
        let tunnel = ctx.client.get_tunnel(id).await?;
        if tunnel.deleted_at.is_some() {
            return Err(CliError::usage(format!(
                "Tunnel {id} has already been deleted"
            )));
        }
        match ctx.client.delete_tunnel(id, a.force).await {
            Err(e) if e.api_failure().is_some_and(|f| f.has_code(1022)) => {
                return Err(CliError::usage(format!(
                    "{e}\nhint: stop its connectors, run `culvert tunnel cleanup {id}`, or delete with -f"
                )));
            }
            r => r?,
        }
        let creds = ctx.default_credentials_path(id);
        if creds.is_file()
            && let Err(e) = std::fs::remove_file(&creds)
        {
            eprintln!(
                "Tunnel {id} was deleted, but its credentials file {} could not be removed: {e}. Consider deleting it manually.",
                creds.display()
            );
        }
        progress.clear();
        print(&format!("Deleted tunnel {} ({id})\n", tunnel.name));
    }
    Ok(())
}

async fn token(ctx: &Ctx, a: TokenArgs) -> Result<(), CliError> {
    let id = ctx.find_id(&a.tunnel).await?;
    let token = ctx.client.tunnel_token(id).await?;
    match &a.cred_file {
        None => print(&format!("{token}\n")),
        Some(p) => {
            let creds = culvert_proto::TunnelToken::decode(&token)
                .map_err(|e| CliError::usage(format!("the API returned an invalid token: {e}")))?
                .to_credentials();
            let p = expand_tilde(p);
            write_private(&p, creds.to_json().as_bytes(), false)?;
            eprintln!("Credentials of tunnel {id} written to {}", p.display());
        }
    }
    Ok(())
}

async fn cleanup(ctx: &Ctx, a: CleanupArgs) -> Result<(), CliError> {
    if a.connector_id.is_some() && a.tunnels.len() > 1 {
        return Err(CliError::usage(
            "--connector-id can only be used with a single tunnel",
        ));
    }
    let ids = ctx.find_ids(&a.tunnels).await?;
    let mut progress = Progress::new(ids.len());
    for id in ids {
        progress.step(&format!("cleaning up {id}"));
        ctx.client.cleanup_connections(id, a.connector_id).await?;
        progress.clear();
        print(&format!("Cleaned up connections of tunnel {id}\n"));
    }
    Ok(())
}

async fn route_dns(ctx: &Ctx, a: RouteDnsArgs) -> Result<(), CliError> {
    if ctx.cert.zone_id.is_empty() {
        return Err(CliError::usage(format!(
            "{} has no zoneID: run `culvert login … --zone ZONE_ID` (zones: `culvert admin zone list`)",
            ctx.cert_path.display()
        )));
    }
    let id = ctx.find_id(&a.tunnel).await?;
    let r = ctx
        .client
        .route_dns(&ctx.cert.zone_id, id, &a.hostname, a.overwrite_dns)
        .await?;
    print(&format!("{} (tunnel {id})\n", r.summary()));
    Ok(())
}

async fn rename(ctx: &Ctx, a: RenameArgs) -> Result<(), CliError> {
    check_name(&a.new_name)?;
    let id = ctx.find_id(&a.tunnel).await?;
    let t = ctx
        .client
        .patch_tunnel(id, json!({"name": a.new_name}))
        .await?;
    print(&format!("Renamed tunnel {id} to {}\n", t.name));
    Ok(())
}

async fn rotate(ctx: &Ctx, a: RotateArgs) -> Result<(), CliError> {
    let id = ctx.find_id(&a.tunnel).await?;
    let secret = new_secret()?;
    let t = ctx
        .client
        .patch_tunnel(id, json!({"tunnel_secret": STANDARD.encode(&secret)}))
        .await?;
    let token = match t.token {
        Some(tok) => tok,
        None => ctx.client.tunnel_token(id).await?,
    };
    // Keep a credentials file next to cert.pem in step with the new secret.
    let creds_path = ctx.default_credentials_path(id);
    if creds_path.is_file() {
        let creds = culvert_proto::Credentials {
            account_tag: ctx.client.account_id.clone(),
            tunnel_secret: secret,
            tunnel_id: id,
            endpoint: ctx.cert.endpoint.clone(),
        };
        write_private(&creds_path, creds.to_json().as_bytes(), true)?;
        eprintln!("Updated {}", creds_path.display());
    }
    eprintln!(
        "New secret for tunnel {id}. Running connectors keep their connections until restarted; `culvert tunnel cleanup {id}` removes them."
    );
    print(&format!("{token}\n"));
    Ok(())
}

async fn config_get(ctx: &Ctx, tunnel: &str, output: Option<OutputFormat>) -> Result<(), CliError> {
    let id = ctx.find_id(tunnel).await?;
    let c = ctx.client.get_config(id).await?;
    match output {
        Some(f) => print(&render(&c, f)?),
        None if c.config.is_null() => {
            eprintln!(
                "Tunnel {id} has no remote configuration yet (`culvert tunnel config set {id} FILE`)."
            );
        }
        None => {
            print(&format!(
                "# tunnel {id}, configuration version {}\n{}",
                c.version,
                render(&c.config, OutputFormat::Yaml)?
            ));
        }
    }
    Ok(())
}

/// Reads a configuration file (JSON or YAML; `-` is stdin) into the
/// `config` object, and validates it as the API will.
pub fn load_config_file(path: &Path) -> Result<Value, CliError> {
    let text = if path == Path::new("-") {
        use std::io::Read as _;
        let mut s = String::new();
        std::io::stdin()
            .take(crate::files::MAX_FILE_LEN + 1)
            .read_to_string(&mut s)
            .map_err(|e| CliError::io("reading", "stdin", e))?;
        if s.len() as u64 > crate::files::MAX_FILE_LEN {
            return Err(CliError::usage("the configuration on stdin is too large"));
        }
        s
    } else {
        read_small(path, "reading the configuration")?
    };
    let is_json =
        path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
    let value: Value = if is_json {
        serde_json::from_str(&text)
            .map_err(|e| CliError::usage(format!("{} is not valid JSON: {e}", path.display())))?
    } else {
        serde_saphyr::from_str(&text)
            .map_err(|e| CliError::usage(format!("{} is not valid YAML: {e}", path.display())))?
    };
    let config = match value {
        Value::Object(mut m) if m.contains_key("config") && !m.contains_key("ingress") => {
            m.remove("config").unwrap_or_default()
        }
        v => v,
    };
    if !config.is_object() {
        return Err(CliError::usage(format!(
            "{}: the configuration must be an object with an `ingress` list",
            path.display()
        )));
    }
    culvert_ingress::parse_remote_config(&config).map_err(|e| {
        CliError::usage(format!(
            "{}: Validation failed: {e} (nothing was uploaded)",
            path.display()
        ))
    })?;
    Ok(config)
}

async fn config_set(ctx: &Ctx, tunnel: &str, file: &Path) -> Result<(), CliError> {
    let config = load_config_file(file)?;
    let id = ctx.find_id(tunnel).await?;
    let c = ctx.client.put_config(id, &config).await?;
    print(&format!(
        "Tunnel {id}: configuration version {} uploaded\n",
        c.version
    ));
    Ok(())
}

/// `culvert login`: verifies the token against the server, then writes cert.pem.
pub async fn login(a: LoginArgs) -> Result<(), CliError> {
    let path = match &a.origincert {
        Some(p) => expand_tilde(p),
        None => crate::cert::default_cert_path()
            .ok_or_else(|| CliError::usage("HOME is not set: pass --origincert PATH"))?,
    };
    if path.exists() {
        return Err(CliError::usage(format!(
            "You have an existing certificate at {} which login would overwrite. If this is intentional, please move or delete that file then run this command again.",
            path.display()
        )));
    }
    let api_url = a
        .api_url
        .clone()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_API_URL.to_owned());
    let account = a.account.clone().unwrap_or_default();
    let client = ApiClient::new(&api_url, &account, a.token.trim())?;
    let status = client.verify_token().await?;
    if status.status != "active" {
        return Err(CliError::usage(format!(
            "the API token is {} (not active)",
            status.status
        )));
    }
    let account = match (a.account, status.account_id) {
        (Some(acc), _) => acc,
        (None, Some(acc)) if !acc.is_empty() => acc,
        _ => {
            return Err(CliError::usage(
                "the server did not say which account the token belongs to: pass --account ID",
            ));
        }
    };
    let cert = OriginCert {
        zone_id: a.zone.unwrap_or_default(),
        account_id: account.clone(),
        api_token: a.token.trim().to_owned(),
        endpoint: None,
        api_url: Some(client.base_url().to_owned()),
    };
    write_private(&path, cert.to_pem().as_bytes(), false)?;
    print(&format!(
        "You have successfully logged in (account {account}).\nIf you wish to copy your credentials to a server, they have been saved to:\n{}\n",
        path.display()
    ));
    Ok(())
}

/// The cert.pem for an account, token and zone (for `culvert admin cert`).
pub fn origin_cert_pem(
    account: &str,
    zone: Option<&str>,
    token: &str,
    api_url: Option<&str>,
) -> String {
    OriginCert {
        zone_id: zone.unwrap_or_default().to_owned(),
        account_id: account.to_owned(),
        api_token: token.to_owned(),
        endpoint: None,
        api_url: api_url.map(str::to_owned),
    }
    .to_pem()
}

/// Name → connections summary, for tests of the table format.
#[doc(hidden)]
pub fn summary_for_tests(colos: &[&str]) -> String {
    conns_summary(colos.iter().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        assert_eq!(summary_for_tests(&[]), "");
        assert_eq!(summary_for_tests(&["LAX", "DFW", "LAX"]), "1xDFW, 2xLAX");
    }

    #[test]
    fn names() {
        assert!(check_name("ok").is_ok());
        assert!(check_name(" ").is_err());
        assert!(
            check_name("5f3b7c1e-8a2d-4e6f-9b1c-2d3e4f5a6b7c")
                .unwrap_err()
                .to_string()
                .contains("UUIDs")
        );
    }

    #[test]
    fn config_files() {
        let dir = tempfile::tempdir().unwrap();
        let y = dir.path().join("c.yml");
        std::fs::write(
            &y,
            "ingress:\n  - hostname: a.example.com\n    service: http://127.0.0.1:8000\n  - service: http_status:404\n",
        )
        .unwrap();
        let v = load_config_file(&y).unwrap();
        assert_eq!(v["ingress"][1]["service"], "http_status:404");
        let j = dir.path().join("c.json");
        std::fs::write(
            &j,
            r#"{"config":{"ingress":[{"service":"http_status:404"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            load_config_file(&j).unwrap()["ingress"][0]["service"],
            "http_status:404"
        );
        std::fs::write(
            &y,
            "ingress:\n  - hostname: a.example.com\n    service: http://x\n",
        )
        .unwrap();
        let e = load_config_file(&y).unwrap_err().to_string();
        assert!(e.contains("Validation failed"), "{e}");
        std::fs::write(&y, "ingress: [").unwrap();
        assert!(load_config_file(&y).is_err());
        std::fs::write(&y, "- 1\n").unwrap();
        assert!(load_config_file(&y).is_err());
    }
}

/// cloudflared's multi-letter short aliases (`-np`, `-enp`, `-rd`), which
/// clap cannot declare, rewritten to the long flags. Only exact arguments
/// after `tunnel` and before `--` are touched.
pub fn expand_cloudflared_aliases<I>(args: I) -> Vec<std::ffi::OsString>
where
    I: IntoIterator<Item = std::ffi::OsString>,
{
    let mut in_tunnel = false;
    let mut done = false;
    args.into_iter()
        .map(|a| {
            if done {
                return a;
            }
            match a.to_str() {
                Some("--") => {
                    done = true;
                    a
                }
                Some("tunnel") => {
                    in_tunnel = true;
                    a
                }
                Some("-np") if in_tunnel => "--name-prefix".into(),
                Some("-enp") if in_tunnel => "--exclude-name-prefix".into(),
                Some("-rd") if in_tunnel => "--show-recently-disconnected".into(),
                _ => a,
            }
        })
        .collect()
}

#[cfg(test)]
mod alias_tests {
    use super::expand_cloudflared_aliases as expand;

    #[test]
    fn multi_letter_shorts() {
        let v = |s: &[&str]| s.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert_eq!(
            expand(v(&[
                "culvert", "tunnel", "list", "-np", "a", "-enp", "b", "-rd"
            ])),
            v(&[
                "culvert",
                "tunnel",
                "list",
                "--name-prefix",
                "a",
                "--exclude-name-prefix",
                "b",
                "--show-recently-disconnected"
            ])
        );
        assert_eq!(expand(v(&["culvert", "-np"])), v(&["culvert", "-np"]));
        assert_eq!(
            expand(v(&["culvert", "tunnel", "--", "-np"])),
            v(&["culvert", "tunnel", "--", "-np"])
        );
    }
}
