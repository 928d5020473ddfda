//! Locally managed tunnels end to end: `culvert tunnel --config config.yml
//! run` with a cloudflared credentials file against the real server (API +
//! QUIC edge + public listener) and a real origin, all in process on
//! 127.0.0.1:0; configuration reload on change and on SIGHUP without
//! dropping connections; the upload with `updateLocalConfiguration`;
//! `--url` and `--hello-world` without a configuration file.

mod common;
#[path = "common/origin.rs"]
mod origin;
#[path = "common/tunnel.rs"]
mod tunnel;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::{Backend, TestServer, call, eventually, public};
use culvert_connector::cli::{SearchPaths, TunnelCommand, run_tunnel_command_with};
use culvert_connector::connector::ConnectorState;
use culvert_proto::TunnelToken;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tunnel::connections;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Top,
}

#[derive(clap::Subcommand)]
enum Top {
    Tunnel(TunnelCommand),
}

struct Running {
    state: Arc<ConnectorState>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        let r = tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("connector stopped in time")
            .unwrap();
        r.unwrap();
    }
}

/// `culvert tunnel --edge … --cacert … ARGS` with a reload poll interval.
async fn run_tunnel(s: &TestServer, dir: &Path, args: &[&str], poll: Duration) -> Running {
    let server = s.server.as_ref().unwrap();
    let ca = dir.join("edge-ca.pem");
    std::fs::write(&ca, &server.edge_ca_pem).unwrap();
    let edge = server.edge_addr.to_string();
    let mut argv = vec![
        "culvert".to_string(),
        "tunnel".into(),
        "--edge".into(),
        edge,
        "--cacert".into(),
        ca.to_str().unwrap().into(),
        "--ha-connections".into(),
        "2".into(),
        "--grace-period".into(),
        "1s".into(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    let Top::Tunnel(cmd) = Cli::try_parse_from(argv).unwrap().cmd;
    let cancel = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // No default directories: only what the test names.
    let paths = SearchPaths {
        dirs: Vec::new(),
        credentials_dirs: Vec::new(),
    };
    let task = tokio::spawn(run_tunnel_command_with(
        cmd,
        cancel.clone(),
        paths,
        poll,
        Some(tx),
    ));
    let state = tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .expect("connector started")
        .expect("connector started");
    tokio::time::timeout(Duration::from_secs(20), state.wait_ready(2))
        .await
        .expect("connector registered in time");
    Running {
        state,
        cancel,
        task,
    }
}

/// A locally managed tunnel and its cloudflared credentials file.
async fn local_tunnel(s: &TestServer, dir: &Path, name: &str) -> (String, std::path::PathBuf) {
    let (status, body) = call(
        s.req(Method::POST, &s.acct("/cfd_tunnel"))
            .json(&json!({"name": name, "config_src": "local"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = TunnelToken::decode(body["result"]["token"].as_str().unwrap()).unwrap();
    let id = token.tunnel_id.to_string();
    let creds = dir.join(format!("{id}.json"));
    std::fs::write(&creds, token.to_credentials().to_json()).unwrap();
    (id, creds)
}

async fn stored_config(s: &TestServer, id: &str) -> Value {
    let (_, body) = call(s.req(
        Method::GET,
        &s.acct(&format!("/cfd_tunnel/{id}/configurations")),
    ))
    .await;
    body["result"]["config"].clone()
}

fn config_yml(id: &str, creds: &Path, host: &str, hello: &str) -> String {
    format!(
        "tunnel: {id}\n\
         credentials-file: {creds}\n\
         originRequest:\n  connectTimeout: 5s\n  keepAliveTimeout: 1m30s\n\
         warp-routing:\n  enabled: false\n\
         ingress:\n\
         \x20 - hostname: {host}\n    path: ^/bytes/\n    service: {hello}\n\
         \x20 - hostname: {host}\n    service: {hello}\n\
         \x20 - service: http_status:404\n",
        creds = creds.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_yml_run_reload_and_upload() {
    let s = TestServer::start(Backend::Sqlite).await;
    let origin = origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (id, creds) = local_tunnel(&s, dir.path(), "local-yml").await;
    let host = format!("{id}.cfargotunnel.localhost");
    let svc = format!("http://{}", origin.addr);
    let cfg = dir.path().join("config.yml");
    std::fs::write(&cfg, config_yml(&id, &creds, &host, &svc)).unwrap();

    let c = run_tunnel(
        &s,
        dir.path(),
        &["--config", cfg.to_str().unwrap(), "run"],
        Duration::from_millis(100),
    )
    .await;

    // Served from config.yml.
    let resp = public(&s, &host, "/hello").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "hello from origin");

    // The edge stored what updateLocalConfiguration carried.
    eventually("local configuration uploaded", || async {
        stored_config(&s, &id).await["ingress"][1]["hostname"] == host.as_str()
    })
    .await;
    let stored = stored_config(&s, &id).await;
    assert_eq!(stored["ingress"][2]["service"], "http_status:404");
    assert_eq!(stored["originRequest"]["connectTimeout"], "5s");
    assert_eq!(
        stored["__configuration_flags"]["config"],
        cfg.to_str().unwrap()
    );
    let conns_before = connections(&s, &id).await;
    assert_eq!(conns_before.len(), 1);

    // A download in flight while the file changes.
    let total: u64 = 4 * 1024 * 1024;
    let mut download = public(&s, &host, &format!("/bytes/{total}"))
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    let first = download.chunk().await.unwrap().unwrap();

    // Change the file: /hello now answers 418.
    let changed = config_yml(&id, &creds, &host, &svc).replacen(
        &format!("  - hostname: {host}\n    service: {svc}\n"),
        &format!("  - hostname: {host}\n    service: http_status:418\n"),
        1,
    );
    assert_ne!(changed, config_yml(&id, &creds, &host, &svc));
    std::fs::write(&cfg, &changed).unwrap();
    eventually("reloaded configuration serves 418", || async {
        public(&s, &host, "/hello")
            .send()
            .await
            .is_ok_and(|r| r.status() == 418)
    })
    .await;

    // The in-flight download finishes intact on the old configuration.
    let mut got = first.len() as u64;
    let mut ok = first
        .iter()
        .enumerate()
        .all(|(i, b)| *b == origin::pattern_byte(i as u64));
    while let Some(chunk) = download.chunk().await.unwrap() {
        ok &= chunk
            .iter()
            .enumerate()
            .all(|(i, b)| *b == origin::pattern_byte(got + i as u64));
        got += chunk.len() as u64;
    }
    assert_eq!(got, total);
    assert!(ok, "download bytes intact");

    // Same connector, same connections: nothing was dropped.
    assert_eq!(c.state.ready_connections(), 2);
    let conns_after = connections(&s, &id).await;
    assert_eq!(conns_after.len(), 1);
    assert_eq!(conns_after[0]["id"], conns_before[0]["id"]);
    let ids = |v: &Value| {
        let mut ids: Vec<String> = v["conns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&conns_after[0]), ids(&conns_before[0]));

    // The reloaded configuration was uploaded too.
    eventually("reloaded configuration uploaded", || async {
        stored_config(&s, &id).await["ingress"][1]["service"] == "http_status:418"
    })
    .await;

    // An invalid file is refused; the running configuration stays.
    std::fs::write(
        &cfg,
        "ingress:\n  - hostname: x.test\n    service: http://x\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        public(&s, &host, "/hello").send().await.unwrap().status(),
        418
    );

    c.stop().await;
    s.stop().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_reloads_the_configuration() {
    let s = TestServer::start(Backend::Sqlite).await;
    let origin = origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (id, creds) = local_tunnel(&s, dir.path(), "local-hup").await;
    let host = format!("{id}.cfargotunnel.localhost");
    let svc = format!("http://{}", origin.addr);
    let cfg = dir.path().join("config.yml");
    std::fs::write(&cfg, config_yml(&id, &creds, &host, &svc)).unwrap();
    // The UUID argument and an hour-long poll: only SIGHUP can reload.
    let c = run_tunnel(
        &s,
        dir.path(),
        &["--config", cfg.to_str().unwrap(), "run", &id],
        Duration::from_secs(3600),
    )
    .await;
    assert_eq!(
        public(&s, &host, "/hello").send().await.unwrap().status(),
        200
    );
    std::fs::write(&cfg, config_yml(&id, &creds, &host, "http_status:402")).unwrap();
    let pid = std::process::id().to_string();
    eventually("SIGHUP reload serves 402", || {
        let pid = pid.clone();
        let req = public(&s, &host, "/hello");
        async move {
            // Repeated: the signal handler may not be installed at the first try.
            let _ = std::process::Command::new("kill")
                .args(["-HUP", &pid])
                .status();
            req.send().await.is_ok_and(|r| r.status() == 402)
        }
    })
    .await;
    assert_eq!(c.state.ready_connections(), 2);
    c.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn url_and_hello_world_without_a_config_file() {
    let s = TestServer::start(Backend::Sqlite).await;
    let origin = origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (id, creds) = local_tunnel(&s, dir.path(), "local-url").await;
    let host = format!("{id}.cfargotunnel.localhost");
    let url = format!("http://{}", origin.addr);
    let c = run_tunnel(
        &s,
        dir.path(),
        &[
            "--url",
            &url,
            "run",
            "--credentials-file",
            creds.to_str().unwrap(),
        ],
        Duration::from_secs(3600),
    )
    .await;
    let resp = public(&s, &host, "/hello").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "hello from origin");
    eventually("--url uploaded", || async {
        stored_config(&s, &id).await["ingress"][0]["service"] == url.as_str()
    })
    .await;
    c.stop().await;

    let c = run_tunnel(
        &s,
        dir.path(),
        &[
            "--hello-world",
            "run",
            "--credentials-file",
            creds.to_str().unwrap(),
        ],
        Duration::from_secs(3600),
    )
    .await;
    let resp = public(&s, &host, "/").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("Congrats! You created a tunnel!")
    );
    c.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_request_options_through_the_tunnel() {
    let s = TestServer::start(Backend::Sqlite).await;
    let origin = origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (id, creds) = local_tunnel(&s, dir.path(), "local-opts").await;
    let host = format!("{id}.cfargotunnel.localhost");
    let svc = format!("http://{}", origin.addr);
    let cfg = dir.path().join("config.yml");
    // Access keys from a port nobody listens on: every token is refused,
    // and a request without one never reaches the origin.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let certs = format!("http://{}/certs", closed.local_addr().unwrap());
    drop(closed);
    std::fs::write(
        &cfg,
        format!(
            "tunnel: {id}\n\
             credentials-file: {creds}\n\
             originRequest:\n  httpHostHeader: rewritten.internal\n\
             ingress:\n\
             \x20 - hostname: {host}\n    path: ^/secure\n    service: {svc}\n    originRequest:\n      access:\n        required: true\n        teamName: myteam\n        audTag: [aud]\n        certsUrl: {certs}\n\
             \x20 - hostname: {host}\n    service: {svc}\n\
             \x20 - service: http_status:404\n",
            creds = creds.display()
        ),
    )
    .unwrap();
    let c = run_tunnel(
        &s,
        dir.path(),
        &["--config", cfg.to_str().unwrap(), "run"],
        Duration::from_secs(3600),
    )
    .await;
    let resp = public(&s, &host, "/hello").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-seen-host"], "rewritten.internal");
    let resp = public(&s, &host, "/secure").send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let resp = public(&s, &host, "/secure")
        .header("Cf-Access-Jwt-Assertion", "e30.e30.sig")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    c.stop().await;
    s.stop().await;
}
