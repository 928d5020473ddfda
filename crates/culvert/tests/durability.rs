//! A write answered 200 survives `kill -9` of the server process.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

struct Proc {
    child: Child,
    api_url: String,
}

fn spawn(data_dir: &std::path::Path, database_url: Option<&str>) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_culvert"));
    cmd.args([
        "server",
        "--api-listen",
        "127.0.0.1:0",
        "--edge-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--log-level",
        "warn",
        "--data-dir",
    ])
    .arg(data_dir)
    .env_remove("CULVERT_DATABASE_URL")
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    if let Some(url) = database_url {
        cmd.args(["--database-url", url]);
    }
    let mut child = cmd.spawn().expect("spawn culvert server");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let api_url = loop {
        let line = lines.next().expect("server exited early").unwrap();
        if let Some(url) = line.strip_prefix("culvert API listening on ") {
            break url.trim().to_string();
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Proc { child, api_url }
}

async fn scenario(database_url: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut first = spawn(&data, database_url.as_deref());
    let boot: Value =
        serde_json::from_slice(&std::fs::read(data.join("bootstrap.json")).unwrap()).unwrap();
    let account = boot["account_id"].as_str().unwrap().to_string();
    let token = boot["api_token"].as_str().unwrap().to_string();
    let client = reqwest::Client::new();

    // Concurrent writes; every one that was answered 200 must be there after the kill.
    let mut acknowledged = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (client, url, token) = (
            client.clone(),
            format!("{}/accounts/{account}/cfd_tunnel", first.api_url),
            token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"name": format!("durable-{i}")}))
                .send()
                .await
                .ok()?;
            (resp.status() == 200).then_some(())?;
            let body: Value = resp.json().await.ok()?;
            Some(body["result"]["id"].as_str()?.to_string())
        }));
    }
    for t in tasks {
        if let Some(id) = t.await.unwrap() {
            acknowledged.push(id);
        }
    }
    assert_eq!(acknowledged.len(), 40);
    // A configuration write too.
    let cfg_url = format!(
        "{}/accounts/{account}/cfd_tunnel/{}/configurations",
        first.api_url, acknowledged[0]
    );
    let resp = client
        .put(&cfg_url)
        .bearer_auth(&token)
        .json(&json!({"config": {"ingress": [{"service": "http_status:404"}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    first.child.kill().unwrap(); // SIGKILL: no shutdown path runs.
    first.child.wait().unwrap();

    let mut second = spawn(&data, database_url.as_deref());
    for id in &acknowledged {
        let resp = client
            .get(format!(
                "{}/accounts/{account}/cfd_tunnel/{id}",
                second.api_url
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "tunnel {id} lost after kill -9");
    }
    let cfg_url = format!(
        "{}/accounts/{account}/cfd_tunnel/{}/configurations",
        second.api_url, acknowledged[0]
    );
    let body: Value = client
        .get(&cfg_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["result"]["version"], 1);
    second.child.kill().unwrap();
    second.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_sqlite() {
    scenario(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_postgres() {
    let Some(common::Backend::Postgres(base)) = common::Backend::postgres("kill -9 durability")
    else {
        return;
    };
    let (name, url) = common::pg_database(&base).await;
    scenario(Some(url)).await;
    let _ = culvert_store::testing::drop_isolated_postgres(&base, &name).await;
}
