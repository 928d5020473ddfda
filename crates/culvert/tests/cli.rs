//! The management CLI as users run it: the real `culvert` binary against a
//! real server started in process (API, QUIC edge, public listener on
//! 127.0.0.1:0), checking output, exit codes and the files it writes.

mod common;
#[path = "common/origin.rs"]
mod origin;
#[path = "common/tunnel.rs"]
mod tunnel;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use common::{Backend, TestServer, call};
use culvert_proto::{Credentials, TunnelToken};
use reqwest::Method;
use serde_json::{Value, json};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_culvert");

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A user: a HOME directory and the server they talk to.
struct User {
    home: TempDir,
}

impl User {
    fn new() -> User {
        User {
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn cert_path(&self) -> PathBuf {
        self.home.path().join(".culvert").join("cert.pem")
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(BIN);
        c.args(args)
            .env("HOME", self.home.path())
            .current_dir(self.home.path())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        for (k, _) in std::env::vars() {
            if k.starts_with("TUNNEL_") || k.starts_with("CULVERT_") {
                c.env_remove(k);
            }
        }
        c
    }

    /// Runs `culvert ARGS` to completion (bounded: a hang fails the test).
    async fn run(&self, args: &[&str]) -> Out {
        let out = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .expect("culvert finished in time")
            .expect("run culvert");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn ok(&self, args: &[&str]) -> Out {
        let o = self.run(args).await;
        assert_eq!(o.code, 0, "culvert {args:?} failed: {o:?}");
        o
    }

    /// Runs a command that must fail: exit 1, a one-line-per-cause message
    /// on stderr, no Rust panic or backtrace.
    async fn fails(&self, args: &[&str]) -> Out {
        let o = self.run(args).await;
        assert_eq!(o.code, 1, "culvert {args:?} should fail: {o:?}");
        assert!(o.stderr.starts_with("error: "), "{o:?}");
        assert!(!o.stderr.contains("panicked"), "{o:?}");
        assert!(!o.stderr.contains("stack backtrace"), "{o:?}");
        o
    }

    async fn login(&self, s: &TestServer, zone: Option<&str>) {
        let mut args = vec!["login", "--api-url", &s.base, "--token", &s.token];
        if let Some(z) = zone {
            args.extend(["--zone", z]);
        }
        self.ok(&args).await;
    }

    /// `culvert tunnel --edge … --cacert … ARGS` in the background, dialling
    /// the in-process edge; its log goes to a file in HOME (a pipe nobody
    /// reads could fill and stall it).
    fn connector(&self, s: &TestServer, args: &[&str]) -> ConnectorProcess {
        let server = s.server.as_ref().unwrap();
        let ca = self.home.path().join("edge-ca.pem");
        std::fs::write(&ca, &server.edge_ca_pem).unwrap();
        let edge = server.edge_addr.to_string();
        let mut argv = vec!["tunnel", "--edge", &edge, "--cacert", ca.to_str().unwrap()];
        argv.extend(args);
        let log = self.home.path().join("connector.log");
        let child = self
            .command(&argv)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        ConnectorProcess { child, log }
    }
}

/// A `culvert tunnel … run` child process (killed on drop).
struct ConnectorProcess {
    child: tokio::process::Child,
    log: PathBuf,
}

impl ConnectorProcess {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the API until tunnel `id` lists one connector with `conns`
    /// connections; returns it. Fails at once, with the log, if the process
    /// exits first.
    async fn wait_registered(&mut self, s: &TestServer, id: &str, conns: usize) -> Value {
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the connector exited ({status}):\n{}", self.log());
            }
            let listed = tunnel::connections(s, id).await;
            if let [one] = listed.as_slice()
                && one["conns"].as_array().is_some_and(|c| c.len() == conns)
            {
                return one.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the connector never registered:\n{}", self.log());
    }

    /// SIGTERM, as an operator stops it: the connector unregisters, so the
    /// next one is the only one listed. Killed if it takes over 10 s.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn pem_json(pem: &str) -> Value {
    assert!(
        pem.starts_with("-----BEGIN ARGO TUNNEL TOKEN-----\n"),
        "{pem}"
    );
    assert!(pem.ends_with("-----END ARGO TUNNEL TOKEN-----\n"), "{pem}");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

async fn zone(s: &TestServer, domain: &str) -> String {
    s.store().create_zone(&s.account, domain).await.unwrap().id
}

async fn tunnel_by_name(s: &TestServer, name: &str) -> Value {
    let (_, body) = call(s.req(
        Method::GET,
        &s.acct(&format!("/cfd_tunnel?is_deleted=false&name={name}")),
    ))
    .await;
    body["result"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_writes_a_cloudflared_cert_pem() {
    let s = TestServer::start(Backend::Sqlite).await;
    let u = User::new();

    // A wrong token is refused before anything is written.
    let o = u
        .fails(&["login", "--api-url", &s.base, "--token", "not-a-token"])
        .await;
    assert!(o.stderr.contains("Invalid API Token (code 1000"), "{o:?}");
    assert!(!u.cert_path().exists());
    // So is a token of another account, and an unreachable API.
    u.fails(&[
        "login",
        "--api-url",
        &s.base,
        "--token",
        &s.token,
        "--account",
        "0123456789abcdef0123456789abcdef",
    ])
    .await;
    let o = u
        .fails(&[
            "login",
            "--api-url",
            "http://127.0.0.1:1/client/v4",
            "--token",
            "t",
        ])
        .await;
    assert!(o.stderr.contains("cannot reach the API"), "{o:?}");

    // Without --account the server says which account the token belongs to.
    let o = u
        .ok(&[
            "login",
            "--api-url",
            &s.base,
            "--token",
            &s.token,
            "--zone",
            "zone-1",
        ])
        .await;
    assert!(o.stdout.contains("successfully logged in"), "{o:?}");
    let path = u.cert_path();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    let json = pem_json(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(json["zoneID"], "zone-1");
    assert_eq!(json["accountID"], s.account.as_str());
    assert_eq!(json["apiToken"], s.token.as_str());
    assert_eq!(json["culvertAPIURL"], s.base.as_str());

    // cloudflared refuses to overwrite an existing certificate; so do we.
    let o = u
        .fails(&["login", "--api-url", &s.base, "--token", &s.token])
        .await;
    assert!(o.stderr.contains("existing certificate"), "{o:?}");

    // --origincert chooses another place, with --account.
    let other = u.home.path().join("certs/other.pem");
    u.ok(&[
        "login",
        "--api-url",
        &s.base,
        "--token",
        &s.token,
        "--account",
        &s.account,
        "--origincert",
        other.to_str().unwrap(),
    ])
    .await;
    assert_eq!(mode(&other), 0o600);
    assert_eq!(
        pem_json(&std::fs::read_to_string(&other).unwrap())["zoneID"],
        ""
    );

    // Without any certificate, commands say how to log in.
    let fresh = User::new();
    let o = fresh.fails(&["tunnel", "list"]).await;
    assert!(o.stderr.contains("culvert login"), "{o:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_commands_end_to_end() {
    let s = TestServer::start(Backend::Sqlite).await;
    let zone_id = zone(&s, "example.com").await;
    let u = User::new();
    u.login(&s, Some(&zone_id)).await;

    // create: credentials next to cert.pem, mode 0600, cloudflared's format.
    let o = u.ok(&["tunnel", "create", "web"]).await;
    let id = tunnel_by_name(&s, "web").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        o.stdout
            .contains(&format!("Created tunnel web with id {id}")),
        "{o:?}"
    );
    let creds_path = u.home.path().join(format!(".culvert/{id}.json"));
    assert_eq!(mode(&creds_path), 0o600);
    let creds_text = std::fs::read_to_string(&creds_path).unwrap();
    let raw: Value = serde_json::from_str(&creds_text).unwrap();
    assert_eq!(raw["AccountTag"], s.account.as_str());
    assert_eq!(raw["TunnelID"], id.as_str());
    let creds = Credentials::from_json(&creds_text).unwrap();
    assert_eq!(creds.tunnel_secret.len(), 32);

    // Duplicate names: the server's message and code, exit 1.
    let o = u.fails(&["tunnel", "create", "web"]).await;
    assert!(o.stderr.contains("code 1013"), "{o:?}");
    assert!(
        o.stderr
            .contains("You already have a tunnel with this name"),
        "{o:?}"
    );
    // Client-side checks, as cloudflared.
    let o = u
        .fails(&["tunnel", "create", "5f3b7c1e-8a2d-4e6f-9b1c-2d3e4f5a6b7c"])
        .await;
    assert!(o.stderr.contains("cannot use UUIDs"), "{o:?}");
    let o = u
        .fails(&["tunnel", "create", "short", "--secret", "c2hvcnQ="])
        .await;
    assert!(o.stderr.contains("at least 32 bytes"), "{o:?}");

    // --secret and --credentials-file.
    let secret = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let custom = u.home.path().join("custom/api.json");
    u.ok(&[
        "tunnel",
        "create",
        "api",
        "--secret",
        &secret,
        "--credentials-file",
        custom.to_str().unwrap(),
    ])
    .await;
    let api_creds = Credentials::from_json(&std::fs::read_to_string(&custom).unwrap()).unwrap();
    assert_eq!(api_creds.tunnel_secret, vec![7u8; 32]);
    assert_eq!(mode(&custom), 0o600);

    // list: a table with human times; -o json / yaml; filters.
    let o = u.ok(&["tunnel", "list"]).await;
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert!(lines[1].starts_with("ID "), "{o:?}");
    assert!(lines[1].contains("NAME") && lines[1].contains("CONNECTIONS"));
    assert!(
        lines[2].contains("api") && lines[3].contains("web"),
        "sorted by name: {o:?}"
    );
    assert!(
        o.stdout.contains("ago") || o.stdout.contains("just now"),
        "{o:?}"
    );
    let o = u.ok(&["tunnel", "list", "-o", "json"]).await;
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[1]["id"], id.as_str());
    let o = u
        .ok(&["tunnel", "list", "-o", "yaml", "--name-prefix", "we"])
        .await;
    assert!(o.stdout.contains("name: web"), "{o:?}");
    assert!(!o.stdout.contains("name: api"), "{o:?}");
    let o = u
        .ok(&[
            "tunnel",
            "list",
            "-o",
            "json",
            "--exclude-name-prefix",
            "we",
            "--sort-by",
            "createdAt",
            "--invert-sort",
        ])
        .await;
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["name"], "api");
    // cloudflared's multi-letter short flags.
    let o = u
        .ok(&["tunnel", "list", "-o", "json", "-np", "a", "-rd"])
        .await;
    assert_eq!(
        serde_json::from_str::<Value>(&o.stdout).unwrap()[0]["name"],
        "api"
    );
    let o = u.ok(&["tunnel", "list", "--id", &id, "-o", "json"]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&o.stdout).unwrap()[0]["name"],
        "web"
    );
    let o = u.ok(&["tunnel", "list", "--name", "nope"]).await;
    assert!(o.stdout.contains("No tunnels were found"), "{o:?}");
    let o = u
        .ok(&["tunnel", "list", "--when", "2000-01-01T00:00:00Z"])
        .await;
    assert!(o.stdout.contains("No tunnels were found"), "{o:?}");
    // Usage errors are clap's: exit 2.
    let o = u.run(&["tunnel", "list", "--when", "yesterday"]).await;
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("not an RFC 3339 time"), "{o:?}");

    // info by name and by id.
    let o = u.ok(&["tunnel", "info", "web"]).await;
    assert!(o.stdout.contains(&format!("ID:       {id}")), "{o:?}");
    assert!(
        o.stdout.contains("does not have any active connection"),
        "{o:?}"
    );
    let o = u.ok(&["tunnel", "info", &id, "-o", "json"]).await;
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["name"], "web");
    assert_eq!(v["conns"], json!([]));
    let o = u.fails(&["tunnel", "info", "missing"]).await;
    assert!(
        o.stderr
            .contains("missing is neither the ID nor the name of any of your tunnels"),
        "{o:?}"
    );
    let o = u
        .fails(&["tunnel", "info", "00000000-0000-4000-8000-000000000000"])
        .await;
    assert!(o.stderr.contains("code 1003"), "{o:?}");

    // token, and --cred-file.
    let o = u.ok(&["tunnel", "token", "web"]).await;
    let token = TunnelToken::decode(o.stdout.trim()).unwrap();
    assert_eq!(token.tunnel_id.to_string(), id);
    assert_eq!(token.secret, creds.tunnel_secret);
    let tok_creds = u.home.path().join("from-token.json");
    u.ok(&[
        "tunnel",
        "token",
        "web",
        "--cred-file",
        tok_creds.to_str().unwrap(),
    ])
    .await;
    assert_eq!(
        Credentials::from_json(&std::fs::read_to_string(&tok_creds).unwrap()).unwrap(),
        creds
    );
    assert_eq!(mode(&tok_creds), 0o600);

    // rename, and a rename onto a live name.
    u.ok(&["tunnel", "rename", "api", "api2"]).await;
    assert_eq!(
        tunnel_by_name(&s, "api2").await["id"].as_str(),
        Some(api_creds.tunnel_id.to_string().as_str())
    );
    let o = u.fails(&["tunnel", "rename", "api2", "web"]).await;
    assert!(o.stderr.contains("code 1013"), "{o:?}");

    // rotate: a new token; the credentials file next to cert.pem follows.
    let o = u.ok(&["tunnel", "rotate", "web"]).await;
    let rotated = TunnelToken::decode(o.stdout.trim()).unwrap();
    assert_ne!(rotated.secret, creds.tunnel_secret);
    let now_creds = Credentials::from_json(&std::fs::read_to_string(&creds_path).unwrap()).unwrap();
    assert_eq!(now_creds.tunnel_secret, rotated.secret);
    assert_eq!(mode(&creds_path), 0o600);
    let o = u.ok(&["tunnel", "token", &id]).await;
    assert_eq!(
        TunnelToken::decode(o.stdout.trim()).unwrap().secret,
        rotated.secret
    );

    // config set (YAML, validated locally first) and get.
    let cfg = u.home.path().join("config.yml");
    std::fs::write(
        &cfg,
        "ingress:\n  - hostname: web.example.com\n    service: http://127.0.0.1:9\n  - service: http_status:404\n",
    )
    .unwrap();
    let o = u
        .ok(&["tunnel", "config", "set", "web", cfg.to_str().unwrap()])
        .await;
    assert!(o.stdout.contains("configuration version 1"), "{o:?}");
    let o = u.ok(&["tunnel", "config", "get", "web"]).await;
    assert!(o.stdout.contains("hostname: web.example.com"), "{o:?}");
    let o = u
        .ok(&["tunnel", "config", "get", "web", "-o", "json"])
        .await;
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["config"]["ingress"][1]["service"], "http_status:404");
    std::fs::write(
        &cfg,
        "ingress:\n  - hostname: web.example.com\n    service: http://127.0.0.1:9\n",
    )
    .unwrap();
    let o = u
        .fails(&["tunnel", "config", "set", "web", cfg.to_str().unwrap()])
        .await;
    assert!(o.stderr.contains("Validation failed"), "{o:?}");
    let o = u
        .ok(&["tunnel", "config", "get", "web", "-o", "yaml"])
        .await;
    assert!(o.stdout.contains("version: 1"), "nothing uploaded: {o:?}");

    // route dns: the zone from cert.pem; the second time is a no-op.
    let o = u
        .ok(&["tunnel", "route", "dns", "web", "web.example.com"])
        .await;
    assert!(
        o.stdout
            .contains("Added CNAME web.example.com which will route to this tunnel"),
        "{o:?}"
    );
    let o = u.ok(&["tunnel", "route", "dns", "web", "web"]).await;
    assert!(
        o.stdout.contains("web.example.com is already configured"),
        "{o:?}"
    );
    let o = u
        .fails(&["tunnel", "route", "dns", "api2", "web.example.com"])
        .await;
    assert!(o.stderr.contains("code"), "{o:?}");
    u.ok(&[
        "tunnel",
        "route",
        "dns",
        "--overwrite-dns",
        "api2",
        "web.example.com",
    ])
    .await;
    let o = u
        .fails(&["tunnel", "route", "dns", "web", "x.other.org"])
        .await;
    assert!(o.stderr.contains("not in zone"), "{o:?}");

    // cleanup of a tunnel without connections succeeds.
    let o = u.ok(&["tunnel", "cleanup", "web", "api2"]).await;
    assert_eq!(o.stdout.lines().count(), 2, "{o:?}");
    u.fails(&["tunnel", "cleanup", "--connector-id", &id, "web", "api2"])
        .await;

    // delete: by name; the credentials file goes too; again → already deleted.
    let o = u
        .fails(&["tunnel", "delete", "web", "nope1", "nope2"])
        .await;
    assert!(
        o.stderr
            .contains("The following inputs were neither: nope1, nope2"),
        "{o:?}"
    );
    let o = u.ok(&["tunnel", "delete", "web"]).await;
    assert!(
        o.stdout.contains(&format!("Deleted tunnel web ({id})")),
        "{o:?}"
    );
    assert!(!creds_path.exists());
    let o = u.fails(&["tunnel", "delete", &id]).await;
    assert!(o.stderr.contains("has already been deleted"), "{o:?}");
    let o = u.ok(&["tunnel", "info", &id]).await;
    assert!(o.stdout.contains("DELETED:"), "{o:?}");
    let o = u.fails(&["tunnel", "token", &id]).await;
    assert!(o.stderr.contains("code 1003"), "{o:?}");
    let o = u.ok(&["tunnel", "list", "--show-deleted"]).await;
    assert!(
        o.stdout.contains("DELETED") && o.stdout.contains(&id),
        "{o:?}"
    );
    let o = u.ok(&["tunnel", "list"]).await;
    assert!(!o.stdout.contains(&id), "{o:?}");
    // A name is free again once its tunnel is deleted.
    u.ok(&["tunnel", "create", "web"]).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_fetches_every_page() {
    let s = TestServer::start(Backend::Sqlite).await;
    for i in 0..23 {
        s.create_tunnel(&format!("t{i:02}")).await;
    }
    let u = User::new();
    u.login(&s, None).await;
    for page in ["1", "5", "23", "1000"] {
        let o = u
            .ok(&["tunnel", "list", "-o", "json", "--max-fetch-size", page])
            .await;
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 23, "per_page {page}");
    }
    // The default page size (20) needs two pages too.
    let o = u.ok(&["tunnel", "list"]).await;
    assert_eq!(o.stdout.lines().count(), 2 + 23, "{o:?}");
    // Bulk deletes name many tunnels at once.
    let names: Vec<String> = (0..23).map(|i| format!("t{i:02}")).collect();
    let mut args = vec!["tunnel", "delete"];
    args.extend(names.iter().map(String::as_str));
    let o = u.ok(&args).await;
    assert_eq!(o.stdout.lines().count(), 23, "{o:?}");
    assert!(
        o.stderr.is_empty(),
        "no progress output when stderr is not a terminal: {o:?}"
    );
    let o = u.ok(&["tunnel", "list"]).await;
    assert!(o.stdout.contains("No tunnels were found"), "{o:?}");
    s.stop().await;
}

/// From `culvert login` to a routed, running tunnel, as the README tells it;
/// then the errors only a live connector can cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn walkthrough_with_a_running_connector() {
    let s = TestServer::start(Backend::Sqlite).await;
    let origin = origin::start().await;
    let zone_id = zone(&s, "example.com").await;
    let u = User::new();
    u.login(&s, Some(&zone_id)).await;
    u.ok(&["tunnel", "create", "app"]).await;
    let id = tunnel_by_name(&s, "app").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let cfg = u.home.path().join("app.yml");
    std::fs::write(
        &cfg,
        format!(
            "ingress:\n  - hostname: app.example.com\n    service: http://{}\n  - service: http_status:404\n",
            origin.addr
        ),
    )
    .unwrap();
    u.ok(&["tunnel", "config", "set", "app", cfg.to_str().unwrap()])
        .await;
    u.ok(&["tunnel", "route", "dns", "app", "app.example.com"])
        .await;

    let server = s.server.as_ref().unwrap();
    let creds = u.home.path().join(format!(".culvert/{id}.json"));
    let connector = u.connector(
        &s,
        &[
            "--ha-connections",
            "2",
            "--grace-period",
            "0s",
            "run",
            "--credentials-file",
            creds.to_str().unwrap(),
        ],
    );

    // Wait until both connections registered.
    let mut info = String::new();
    for _ in 0..200 {
        let o = u.ok(&["tunnel", "info", "app", "-o", "json"]).await;
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        if v["conns"][0]["conns"]
            .as_array()
            .is_some_and(|c| c.len() == 2)
        {
            info = o.stdout;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!info.is_empty(), "the connector registered");
    let v: Value = serde_json::from_str(&info).unwrap();
    let connector_id = v["conns"][0]["id"].as_str().unwrap().to_string();

    // The hostname reaches the origin through the tunnel.
    let resp = s
        .client
        .get(format!("http://{}/hello", server.http_addr))
        .header("host", "app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "hello from origin");

    // Tables show the connector.
    let o = u.ok(&["tunnel", "info", "app"]).await;
    assert!(
        o.stdout.contains("CONNECTOR ID") && o.stdout.contains(&connector_id),
        "{o:?}"
    );
    assert!(o.stdout.contains("2xLOCAL"), "{o:?}");
    let o = u.ok(&["tunnel", "list"]).await;
    // Two of the four expected connections: degraded (spec §2.4).
    assert!(
        o.stdout.contains("2xLOCAL") && o.stdout.contains("degraded"),
        "{o:?}"
    );

    // Deleting a tunnel with connections needs -f.
    let o = u.fails(&["tunnel", "delete", "app"]).await;
    assert!(o.stderr.contains("code 1022"), "{o:?}");
    assert!(o.stderr.contains("active connections"), "{o:?}");
    assert!(creds.exists(), "nothing was deleted");

    // cleanup --connector-id removes that connector's connections.
    u.ok(&["tunnel", "cleanup", "--connector-id", &connector_id, "app"])
        .await;
    let (_, body) = call(s.req(
        Method::GET,
        &s.acct(&format!("/cfd_tunnel/{id}/connections")),
    ))
    .await;
    assert!(
        !body["result"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == connector_id.as_str()),
        "{body}"
    );

    // delete -f (cascade) succeeds whatever the connector does meanwhile.
    let o = u.ok(&["tunnel", "delete", "-f", "app"]).await;
    assert!(o.stdout.contains("Deleted tunnel app"), "{o:?}");
    assert!(!creds.exists());
    connector.stop().await;
    s.stop().await;
}

/// `culvert admin cert` prints a cert.pem that `culvert tunnel` (and
/// cloudflared) use with `--origincert`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cert_for_an_account() {
    let s = TestServer::start(Backend::Sqlite).await;
    let zone_id = zone(&s, "example.org").await;
    let u = User::new();
    let data_dir = s.dir.path().join("data");
    let o = u
        .ok(&[
            "admin",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "cert",
            "--account",
            &s.account,
        ])
        .await;
    let json = pem_json(&o.stdout);
    assert_eq!(json["accountID"], s.account.as_str());
    assert_eq!(json["zoneID"], zone_id.as_str(), "the account's only zone");
    assert_eq!(json["culvertAPIURL"], s.base.as_str());
    assert_ne!(json["apiToken"], s.token.as_str(), "a new token was minted");
    let cert = u.home.path().join("admin-cert.pem");
    std::fs::write(&cert, &o.stdout).unwrap();
    let cert = cert.to_str().unwrap();
    u.ok(&["tunnel", "--origincert", cert, "create", "from-admin"])
        .await;
    let o = u
        .ok(&["tunnel", "list", "--origincert", cert, "--api-url", &s.base])
        .await;
    assert!(o.stdout.contains("from-admin"), "{o:?}");
    u.ok(&[
        "tunnel",
        "--origincert",
        cert,
        "route",
        "dns",
        "from-admin",
        "www",
    ])
    .await;
    // Unknown account: a clear failure.
    let o = u
        .run(&[
            "admin",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "cert",
            "--account",
            "0123456789abcdef0123456789abcdef",
        ])
        .await;
    assert_ne!(o.code, 0, "{o:?}");
    s.stop().await;
}

/// An API token without write permission: the server's 403 reaches the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_errors_are_reported() {
    let s = TestServer::start(Backend::Sqlite).await;
    s.create_tunnel("ro").await;
    let read_only = s.token_with(&["Cloudflare Tunnel Read"]).await;
    let u = User::new();
    u.ok(&[
        "login",
        "--api-url",
        &s.base,
        "--token",
        &read_only,
        "--account",
        &s.account,
    ])
    .await;
    let o = u.ok(&["tunnel", "list"]).await;
    assert!(o.stdout.contains("ro"), "{o:?}");
    let o = u.fails(&["tunnel", "create", "x"]).await;
    assert!(
        o.stderr.contains("code 10000") && o.stderr.contains("HTTP 403"),
        "{o:?}"
    );
    let o = u.fails(&["tunnel", "token", "ro"]).await;
    assert!(o.stderr.contains("HTTP 403"), "{o:?}");
    // A server that went away.
    let base = s.base.clone();
    s.stop().await;
    let o = u.fails(&["tunnel", "list", "--api-url", &base]).await;
    assert!(o.stderr.contains("cannot reach the API"), "{o:?}");
}

/// `culvert tunnel run NAME`: the name resolves through the API with
/// cert.pem, then the credentials are the `<UUID>.json` that `tunnel create`
/// wrote beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_by_name() {
    let s = TestServer::start(Backend::Sqlite).await;
    let u = User::new();
    u.login(&s, None).await;
    u.ok(&["tunnel", "create", "by-name"]).await;
    let id = tunnel_by_name(&s, "by-name").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(u.home.path().join(format!(".culvert/{id}.json")).is_file());

    let mut c = u.connector(
        &s,
        &[
            "--ha-connections",
            "2",
            "--grace-period",
            "0s",
            "run",
            "by-name",
        ],
    );
    let listed = c.wait_registered(&s, &id, 2).await;
    assert!(
        listed["id"].as_str().is_some_and(|i| !i.is_empty()),
        "{listed}"
    );
    c.stop().await;

    // `tunnel: NAME` in the configuration file resolves the same way.
    let cfg = u.home.path().join("by-name.yml");
    std::fs::write(&cfg, "tunnel: by-name\n").unwrap();
    let mut c = u.connector(
        &s,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--ha-connections",
            "1",
            "--grace-period",
            "0s",
            "run",
        ],
    );
    c.wait_registered(&s, &id, 1).await;
    c.stop().await;

    // A name nobody has: a clear error before any connection is attempted.
    let o = u
        .fails(&[
            "tunnel",
            "--edge",
            &s.server.as_ref().unwrap().edge_addr.to_string(),
            "run",
            "no-such-tunnel",
        ])
        .await;
    assert!(
        o.stderr
            .contains("no-such-tunnel is neither the ID nor the name of any of your tunnels"),
        "{o:?}"
    );
    s.stop().await;
}

/// As cloudflared: with --origincert elsewhere, `tunnel create` writes
/// `<UUID>.json` beside that certificate and `tunnel run NAME` finds it
/// there; with --credentials-file the name needs neither API nor cert.pem.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_by_name_finds_credentials_as_cloudflared_does() {
    let s = TestServer::start(Backend::Sqlite).await;
    let u = User::new();
    let cert = u.home.path().join("elsewhere/cert.pem");
    let cert = cert.to_str().unwrap();
    u.ok(&[
        "login",
        "--api-url",
        &s.base,
        "--token",
        &s.token,
        "--origincert",
        cert,
    ])
    .await;
    u.ok(&["tunnel", "--origincert", cert, "create", "elsewhere"])
        .await;
    let id = tunnel_by_name(&s, "elsewhere").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let creds = u.home.path().join(format!("elsewhere/{id}.json"));
    assert!(creds.is_file());

    let mut c = u.connector(
        &s,
        &[
            "--origincert",
            cert,
            "--grace-period",
            "0s",
            "run",
            "elsewhere",
        ],
    );
    c.wait_registered(&s, &id, 1).await;
    c.stop().await;

    // No cert.pem at all: the credentials file says which tunnel it is.
    let other = User::new();
    let mut c = other.connector(
        &s,
        &[
            "--grace-period",
            "0s",
            "run",
            "--credentials-file",
            creds.to_str().unwrap(),
            "elsewhere",
        ],
    );
    c.wait_registered(&s, &id, 1).await;
    c.stop().await;
    s.stop().await;
}
