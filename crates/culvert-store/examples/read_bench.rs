//! Rough read throughput of the API's hottest store calls: `get_tunnel` and
//! `find_api_token_by_hash` (64 concurrent callers), and `list_tunnels` pages
//! of 100 at a random page (8 concurrent callers), with 10,000 tunnels in one
//! account. SQLite by default; also PostgreSQL when `READ_BENCH_POSTGRES_URL`
//! names a server (a throw-away database is created there and dropped).
//! Run with `cargo run --release -p culvert-store --example read_bench`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use culvert_store::*;

const TUNNELS: usize = 10_000;
const PER_PAGE: u32 = 100;

#[derive(Clone, Copy)]
enum Call {
    GetTunnel,
    FindToken,
    ListPage,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::TempDir::new()?;
    let store = Store::open(&format!("sqlite://{}/bench.db", dir.path().display())).await?;
    println!("SQLite:");
    run(&store).await?;
    store.close().await;

    if let Ok(base) = std::env::var("READ_BENCH_POSTGRES_URL") {
        let (store, name) = testing::open_isolated_postgres(&base).await?;
        println!("PostgreSQL:");
        let result = run(&store).await;
        store.close().await;
        testing::drop_isolated_postgres(&base, &name).await?;
        result?;
    }
    Ok(())
}

async fn run(store: &Store) -> anyhow::Result<()> {
    let account = store.create_account("bench").await?;
    let mut ids = Vec::with_capacity(TUNNELS);
    for i in 0..TUNNELS {
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
    let pages = TUNNELS.div_ceil(PER_PAGE as usize);

    for (label, call, callers) in [
        ("get_tunnel", Call::GetTunnel, 64),
        ("find_api_token_by_hash", Call::FindToken, 64),
        ("list_tunnels (page of 100)", Call::ListPage, 8),
    ] {
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(5);
        let tasks: Vec<_> = (0..callers)
            .map(|w| {
                let (store, ids, done, account) =
                    (store.clone(), ids.clone(), done.clone(), account.id.clone());
                tokio::spawn(async move {
                    let mut i = w * 97;
                    let filter = TunnelFilter {
                        tun_types: vec![TunType::CfdTunnel],
                        ..TunnelFilter::default()
                    };
                    while Instant::now() < deadline {
                        match call {
                            Call::FindToken => {
                                store
                                    .find_api_token_by_hash(&[3; 32])
                                    .await
                                    .unwrap()
                                    .unwrap();
                            }
                            Call::GetTunnel => {
                                let id = ids[i % ids.len()];
                                store.get_tunnel(&account, None, id).await.unwrap().unwrap();
                            }
                            Call::ListPage => {
                                // A spread of pages, as the API benchmark asks.
                                let page = (i * 37 % pages) as u32 + 1;
                                let got = store
                                    .list_tunnels(&account, &filter, page, PER_PAGE)
                                    .await
                                    .unwrap();
                                assert_eq!(got.items.len(), PER_PAGE as usize);
                            }
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
    Ok(())
}
