//! Rough read throughput of the API's hottest store calls on SQLite:
//! `get_tunnel` and `find_api_token_by_hash`, 64 concurrent callers, 10,000
//! tunnels. Run with `cargo run --release -p culvert-store --example read_bench`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use culvert_store::*;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::TempDir::new()?;
    let store = Store::open(&format!("sqlite://{}/bench.db", dir.path().display())).await?;
    let account = store.create_account("bench").await?;
    let mut ids = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let t = store
            .create_tunnel(NewTunnel {
                account_id: account.id.clone(),
                name: format!("tunnel-{i}"),
                tun_type: TunType::CfdTunnel,
                config_src: ConfigSource::Local,
                secret: vec![1; 32],
                metadata: serde_json::json!({}),
                ha: false,
            })
            .await?;
        ids.push(t.id);
    }
    store
        .create_api_token(&ApiToken {
            id: uuid::Uuid::new_v4().simple().to_string(),
            account_id: account.id.clone(),
            name: "bench".into(),
            kind: CredentialKind::ApiToken,
            email: None,
            secret_hash: vec![3; 32],
            permissions: vec!["Cloudflare Tunnel Read".into()],
            created_at: now_micros(),
            expires_on: None,
            not_before: None,
            revoked_at: None,
        })
        .await?;
    let ids = Arc::new(ids);

    for (label, token) in [("get_tunnel", false), ("find_api_token_by_hash", true)] {
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(5);
        let tasks: Vec<_> = (0..64)
            .map(|w| {
                let (store, ids, done, account) =
                    (store.clone(), ids.clone(), done.clone(), account.id.clone());
                tokio::spawn(async move {
                    let mut i = w * 97;
                    while Instant::now() < deadline {
                        if token {
                            store
                                .find_api_token_by_hash(&[3; 32])
                                .await
                                .unwrap()
                                .unwrap();
                        } else {
                            let id = ids[i % ids.len()];
                            store.get_tunnel(&account, None, id).await.unwrap().unwrap();
                        }
                        i += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await?;
        }
        println!(
            "{label}: {:.0}/s",
            done.load(Ordering::Relaxed) as f64 / 5.0
        );
    }
    store.close().await;
    Ok(())
}
