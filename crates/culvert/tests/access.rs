//! TCP services end to end: `culvert access` on the eyeball side carries a
//! local stream in a WebSocket to the public listener, the edge forwards it
//! over QUIC, and the connector bridges it to a real TCP service — a TCP
//! echo server, and a real `sshd` driven by a real `ssh` client when
//! `openssh-server` is installed.

mod common;
#[path = "common/tunnel.rs"]
mod tunnel;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{Backend, TestServer};
use culvert_connector::access_tcp::{AccessArgs, Target, serve_listener};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A TCP echo server.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

fn access_args(hostname: &str, edge: SocketAddr) -> AccessArgs {
    AccessArgs {
        hostname: hostname.into(),
        url: None,
        destination: None,
        headers: vec![],
        service_token_id: None,
        service_token_secret: None,
        edge_url: Some(format!("http://{edge}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_tcp_carries_a_tcp_echo_service() {
    let s = TestServer::start(Backend::Sqlite).await;
    let echo = echo_server().await;
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let connector = tunnel::serve_ingress(
        &s,
        "tcp",
        json!([
            {"hostname": "echo.example.com", "service": format!("tcp://{echo}")},
            {"hostname": "dead.example.com", "service": format!("tcp://{dead_addr}")},
            {"service": "http_status:404"}
        ]),
        "echo.example.com",
    )
    .await;
    let http = s.server.as_ref().unwrap().http_addr;

    // `culvert access tcp --hostname echo.example.com --url 127.0.0.1:0`.
    let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local_addr = local.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let target = Target::from_args(&access_args("echo.example.com", http)).unwrap();
    let access = tokio::spawn(serve_listener(target, local, cancel.clone()));

    // Two concurrent sessions, each a conversation and then 4 MiB each way.
    let session = |tag: u8| async move {
        let mut tcp = TcpStream::connect(local_addr).await.unwrap();
        for i in 0..3u8 {
            let msg = format!("session {tag} line {i}\n");
            tcp.write_all(msg.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; msg.len()];
            tcp.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf, msg.as_bytes());
        }
        let size = 4 * 1024 * 1024;
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8 ^ tag).collect();
        let (mut r, mut w) = tcp.into_split();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            w
        });
        let mut got = vec![0u8; size];
        r.read_exact(&mut got).await.unwrap();
        assert!(got == data, "session {tag}: echoed bytes differ");
        drop(writer.await.unwrap());
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join(session(1), session(2)),
    )
    .await
    .expect("sessions finish");

    // An unreachable service: the handshake fails with the edge's 502 and
    // the local connection is closed.
    let target = Target::from_args(&access_args("dead.example.com", http)).unwrap();
    let Err(err) = culvert_connector::access_tcp::open(&target).await else {
        panic!("a websocket to an unreachable TCP service opened");
    };
    assert!(err.to_string().contains("502"), "{err}");

    cancel.cancel();
    let _ = access.await;
    connector.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_tcp_over_the_http2_transport() {
    let s = TestServer::start(Backend::Sqlite).await;
    let echo = echo_server().await;
    let connector = tunnel::serve_ingress_over(
        &s,
        "tcp-h2",
        json!([
            {"hostname": "echo.example.com", "service": format!("tcp://{echo}")},
            {"service": "http_status:404"}
        ]),
        "echo.example.com",
        culvert_connector::connector::TransportProtocol::Http2,
    )
    .await;
    let http = s.server.as_ref().unwrap().http_addr;
    let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local_addr = local.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let target = Target::from_args(&access_args("echo.example.com", http)).unwrap();
    let access = tokio::spawn(serve_listener(target, local, cancel.clone()));

    let mut tcp = TcpStream::connect(local_addr).await.unwrap();
    let msg = b"hello over http2\n";
    tcp.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(20), tcp.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&buf, msg);
    let data: Vec<u8> = (0..1024 * 1024).map(|i| (i % 249) as u8).collect();
    let (mut r, mut w) = tcp.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w
    });
    let mut got = vec![0u8; data.len()];
    tokio::time::timeout(Duration::from_secs(30), r.read_exact(&mut got))
        .await
        .expect("1 MiB echoed in time")
        .unwrap();
    assert!(got == data, "echoed bytes differ");
    drop(writer.await.unwrap());

    cancel.cancel();
    let _ = access.await;
    connector.stop().await;
    s.stop().await;
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn keygen(path: &Path) {
    let ok = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ssh-keygen failed");
}

/// A real `ssh` client whose `ProxyCommand` is `culvert access ssh`,
/// against a real `sshd` behind the tunnel's `ssh://` rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_ssh_through_culvert_access_proxy_command() {
    let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let (Some(sshd), true) = (
        sshd,
        std::process::Command::new("ssh").arg("-V").output().is_ok(),
    ) else {
        eprintln!("skipped: sshd or ssh not installed (apt-get install openssh-server)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let host_key = dir.path().join("host_key");
    let user_key = dir.path().join("user_key");
    keygen(&host_key);
    keygen(&user_key);
    let authorized = dir.path().join("authorized_keys");
    std::fs::copy(user_key.with_extension("pub"), &authorized).unwrap();
    // sshd insists on its privilege separation directory.
    let _ = std::fs::create_dir_all("/run/sshd");
    let port = free_port();
    let config = dir.path().join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nPermitRootLogin prohibit-password\nPidFile none\n",
            host_key.display(),
            authorized.display()
        ),
    )
    .unwrap();
    let mut daemon = tokio::process::Command::new(sshd)
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            up = true;
            break;
        }
        if let Ok(Some(status)) = daemon.try_wait() {
            let mut err = String::new();
            let _ = daemon.stderr.take().unwrap().read_to_string(&mut err).await;
            eprintln!("skipped: sshd could not start ({status}): {err}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "sshd did not listen on port {port}");

    let s = TestServer::start(Backend::Sqlite).await;
    let connector = tunnel::serve_ingress(
        &s,
        "ssh",
        json!([
            {"hostname": "ssh.example.com", "service": format!("ssh://127.0.0.1:{port}")},
            {"service": "http_status:404"}
        ]),
        "ssh.example.com",
    )
    .await;
    let http = s.server.as_ref().unwrap().http_addr;

    let culvert = env!("CARGO_BIN_EXE_culvert");
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let out = tokio::process::Command::new("ssh")
        .args(["-F", "/dev/null", "-T", "-i"])
        .arg(&user_key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            &format!(
                "ProxyCommand={culvert} --log-level warn access ssh --hostname %h --edge-url http://{http}"
            ),
            &format!("{user}@ssh.example.com"),
            "echo hello-through-culvert; head -c 300000 /dev/zero | wc -c",
        ])
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("ssh finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ssh failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "hello-through-culvert\n300000\n");

    connector.stop().await;
    s.stop().await;
    let _ = daemon.kill().await;
}
