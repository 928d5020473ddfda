//! Integration tests of the store. Every scenario runs against SQLite (a file
//! in a temporary directory) and against PostgreSQL when
//! `CULVERT_TEST_POSTGRES_URL` is set (each test in its own database).

use std::collections::HashSet;
use std::time::Duration;

use culvert_store::testing;
use culvert_store::*;
use serde_json::json;
use tempfile::TempDir;
use uuid::Uuid;

const PG_ENV: &str = "CULVERT_TEST_POSTGRES_URL";

// ---- harness ------------------------------------------------------------

enum Where {
    Sqlite { _dir: TempDir },
    Postgres { base: String, name: String },
}

struct TestDb {
    store: Store,
    url: String,
    place: Where,
}

impl TestDb {
    async fn sqlite() -> Self {
        let dir = TempDir::new().unwrap();
        let url = format!("sqlite://{}/data/culvert.db", dir.path().display());
        let store = Store::open(&url).await.unwrap();
        assert_eq!(store.backend(), Backend::Sqlite);
        TestDb {
            store,
            url,
            place: Where::Sqlite { _dir: dir },
        }
    }

    async fn postgres() -> Option<Self> {
        let Ok(base) = std::env::var(PG_ENV) else {
            eprintln!("skipped: {PG_ENV} not set");
            return None;
        };
        let (store, name) = testing::open_isolated_postgres(&base).await.unwrap();
        assert_eq!(store.backend(), Backend::Postgres);
        let url = testing::database_url(&base, &name).unwrap();
        Some(TestDb {
            store,
            url,
            place: Where::Postgres { base, name },
        })
    }

    /// Closes the store and opens the same database again (a restart).
    async fn reopen(&mut self) {
        self.store.close().await;
        self.store = Store::open(&self.url).await.unwrap();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Where::Postgres { base, name } = &self.place {
            // Drop cannot await: do it on a helper thread with its own runtime.
            let (base, name) = (base.clone(), name.clone());
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let _ = rt.block_on(testing::drop_isolated_postgres(&base, &name));
            })
            .join();
        }
    }
}

/// Generates a SQLite and a PostgreSQL test for each scenario function.
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let mut db = super::TestDb::sqlite().await;
                    super::$name(&mut db).await;
                    db.store.close().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(mut db) = super::TestDb::postgres().await else {
                        return;
                    };
                    super::$name(&mut db).await;
                    db.store.close().await;
                }
            )*
        }
    };
}

scenarios!(
    reopen_keeps_data,
    concurrent_first_start,
    accounts,
    settings,
    api_tokens,
    global_keys,
    tunnels_create_and_get,
    tunnel_name_conflicts,
    concurrent_creates_same_name,
    update_tunnel,
    delete_tunnel,
    delete_with_connections,
    list_filters,
    list_activity_filters,
    list_prefix_filters,
    pagination,
    configs,
    concurrent_config_puts,
    register_healthy_and_degraded,
    replace_same_index,
    unregister_until_down,
    remove_connections,
    clear_edge_node,
    concurrent_registrations,
    connector_config_version,
    registration_errors,
);

// ---- helpers --------------------------------------------------------------

fn new_tunnel(account: &Account, name: &str, tun_type: TunType) -> NewTunnel {
    NewTunnel {
        account_id: account.id.clone(),
        name: name.to_owned(),
        tun_type,
        config_src: ConfigSource::Local,
        secret: vec![7; 32],
        metadata: json!({}),
        ha: false,
    }
}

async fn cfd(store: &Store, account: &Account, name: &str) -> Tunnel {
    store
        .create_tunnel(new_tunnel(account, name, TunType::CfdTunnel))
        .await
        .unwrap()
}

fn registration(tunnel: Uuid, connector: Uuid, index: u8, edge: &str) -> Registration {
    Registration {
        connector: ConnectorInfo {
            connector_id: connector,
            arch: "linux_amd64".into(),
            version: "2024.1.0".into(),
            features: vec!["serialized_headers".into(), "support_datagram_v2".into()],
            run_at: 1_700_000_000_000_000,
        },
        connection: ConnectionInfo {
            id: Uuid::new_v4(),
            tunnel_id: tunnel,
            connector_id: connector,
            conn_index: index,
            colo_name: format!("colo{index}"),
            origin_ip: "198.51.100.7".into(),
            opened_at: now_micros(),
            edge_node: edge.into(),
        },
    }
}

/// Registers `n` connections (indexes 0..n) of a new connector; returns the
/// connector id and the connection ids.
async fn connect(store: &Store, tunnel: Uuid, n: u8, edge: &str) -> (Uuid, Vec<Uuid>) {
    let connector = Uuid::new_v4();
    let mut ids = Vec::new();
    for i in 0..n {
        let reg = registration(tunnel, connector, i, edge);
        let removed = store.register_connection(&reg).await.unwrap();
        assert!(removed.connections.is_empty());
        ids.push(reg.connection.id);
    }
    (connector, ids)
}

async fn tunnel_now(store: &Store, id: Uuid) -> Tunnel {
    store.get_tunnel_by_id(id).await.unwrap().unwrap()
}

fn names(page: &Page<Tunnel>) -> Vec<&str> {
    page.items.iter().map(|t| t.name.as_str()).collect()
}

fn sorted(mut v: Vec<Uuid>) -> Vec<Uuid> {
    v.sort();
    v
}

/// Makes sure the next `now_micros()` differs from every earlier one.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(2)).await;
}

// ---- scenarios ------------------------------------------------------------

async fn reopen_keeps_data(db: &mut TestDb) {
    let s = &db.store;
    s.ping().await.unwrap();
    let version = s.schema_version().await.unwrap();
    assert!(version >= 1);
    let account = s.create_account("acme").await.unwrap();
    let tunnel = cfd(s, &account, "web").await;
    let cfg = s
        .put_config(
            &account.id,
            tunnel.id,
            &json!({"ingress": []}),
            ConfigSource::Cloudflare,
        )
        .await
        .unwrap();
    s.put_setting_if_absent("key", "v1").await.unwrap();
    let tunnel = tunnel_now(s, tunnel.id).await;

    db.reopen().await;
    db.reopen().await; // migrations are idempotent
    let s = &db.store;
    assert_eq!(s.schema_version().await.unwrap(), version);
    assert_eq!(
        s.get_account(&account.id).await.unwrap(),
        Some(account.clone())
    );
    assert_eq!(tunnel_now(s, tunnel.id).await, tunnel);
    assert_eq!(s.get_config(tunnel.id).await.unwrap(), Some(cfg));
    assert_eq!(s.get_setting("key").await.unwrap().as_deref(), Some("v1"));
}

async fn concurrent_first_start(db: &mut TestDb) {
    // A brand-new, empty database opened by several processes at once.
    let (url, _cleanup) = match &db.place {
        Where::Sqlite { _dir } => (
            format!("sqlite://{}/fresh/other.db", _dir.path().display()),
            None,
        ),
        Where::Postgres { base, .. } => {
            let name = testing::create_isolated_postgres(base).await.unwrap();
            (
                testing::database_url(base, &name).unwrap(),
                Some(Cleanup(base.clone(), name)),
            )
        }
    };
    let opens = (0..4).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { Store::open(&url).await })
    });
    let mut stores = Vec::new();
    for h in opens {
        stores.push(h.await.unwrap().unwrap());
    }
    let version = stores[0].schema_version().await.unwrap();
    assert!(version >= 1);
    for s in &stores {
        assert_eq!(s.schema_version().await.unwrap(), version);
    }
    let a = stores[0].create_account("x").await.unwrap();
    assert_eq!(stores[3].get_account(&a.id).await.unwrap(), Some(a));
    for s in stores {
        s.close().await;
    }
}

/// Drops an extra PostgreSQL database when the test ends.
struct Cleanup(String, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (base, name) = (self.0.clone(), self.1.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = rt.block_on(testing::drop_isolated_postgres(&base, &name));
        })
        .join();
    }
}

async fn accounts(db: &mut TestDb) {
    let s = &db.store;
    assert!(s.list_accounts().await.unwrap().is_empty());
    let a = s.create_account("first").await.unwrap();
    tick().await;
    let b = s.create_account("second").await.unwrap();
    assert_eq!(a.id.len(), 32);
    assert!(
        a.id.bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_ne!(a.id, b.id);
    assert_eq!(s.get_account(&a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(s.get_account(&"0".repeat(32)).await.unwrap(), None);
    assert_eq!(s.list_accounts().await.unwrap(), vec![a, b]);
}

async fn settings(db: &mut TestDb) {
    let s = &db.store;
    assert_eq!(s.get_setting("signing_key").await.unwrap(), None);
    assert_eq!(
        s.put_setting_if_absent("signing_key", "A").await.unwrap(),
        "A"
    );
    assert_eq!(
        s.put_setting_if_absent("signing_key", "B").await.unwrap(),
        "A"
    );
    assert_eq!(
        s.get_setting("signing_key").await.unwrap().as_deref(),
        Some("A")
    );

    // Concurrent first starts agree on one value.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.put_setting_if_absent("race", &format!("v{i}")).await })
        })
        .collect();
    let mut seen = HashSet::new();
    for t in tasks {
        seen.insert(t.await.unwrap().unwrap());
    }
    assert_eq!(seen.len(), 1);
    let winner = seen.into_iter().next().unwrap();
    assert_eq!(s.get_setting("race").await.unwrap(), Some(winner));
}

fn token(account: &Account, kind: CredentialKind, hash_byte: u8) -> ApiToken {
    ApiToken {
        id: Uuid::new_v4().simple().to_string(),
        account_id: account.id.clone(),
        name: format!("token {hash_byte}"),
        kind,
        email: match kind {
            CredentialKind::GlobalKey => Some("ops@example.com".into()),
            CredentialKind::ApiToken => None,
        },
        secret_hash: vec![hash_byte; 32],
        permissions: vec![
            "Cloudflare Tunnel Write".into(),
            "Cloudflare Tunnel Read".into(),
        ],
        created_at: now_micros(),
        expires_on: Some(now_micros() + 3_600_000_000),
        not_before: Some(now_micros() - 1),
        revoked_at: None,
    }
}

async fn api_tokens(db: &mut TestDb) {
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let t1 = token(&account, CredentialKind::ApiToken, 1);
    let mut t2 = token(&account, CredentialKind::ApiToken, 2);
    t2.created_at = t1.created_at + 1;
    t2.expires_on = None;
    t2.not_before = None;
    t2.permissions = vec![];
    s.create_api_token(&t1).await.unwrap();
    s.create_api_token(&t2).await.unwrap();

    assert_eq!(
        s.find_api_token_by_hash(&[1; 32]).await.unwrap(),
        Some(t1.clone())
    );
    assert_eq!(
        s.find_api_token_by_hash(&[2; 32]).await.unwrap(),
        Some(t2.clone())
    );
    assert_eq!(s.find_api_token_by_hash(&[3; 32]).await.unwrap(), None);
    assert_eq!(s.find_api_token_by_hash(&[]).await.unwrap(), None);
    assert_eq!(
        s.list_api_tokens().await.unwrap(),
        vec![t1.clone(), t2.clone()]
    );

    // Two bearer tokens never share a hash.
    let mut dup = token(&account, CredentialKind::ApiToken, 1);
    dup.id = Uuid::new_v4().simple().to_string();
    assert!(matches!(
        s.create_api_token(&dup).await,
        Err(StoreError::Database(_))
    ));

    // Unknown account.
    let mut orphan = token(&account, CredentialKind::ApiToken, 9);
    orphan.account_id = "f".repeat(32);
    assert!(matches!(
        s.create_api_token(&orphan).await,
        Err(StoreError::AccountNotFound(a)) if a == orphan.account_id
    ));

    // Revocation: found, marked, first instant kept.
    s.revoke_api_token(&t1.id).await.unwrap();
    let revoked = s.find_api_token_by_hash(&[1; 32]).await.unwrap().unwrap();
    let at = revoked.revoked_at.expect("revoked_at set");
    assert!(at >= t1.created_at);
    tick().await;
    s.revoke_api_token(&t1.id).await.unwrap();
    let again = s.find_api_token_by_hash(&[1; 32]).await.unwrap().unwrap();
    assert_eq!(again.revoked_at, Some(at));
    assert_eq!(
        s.find_api_token_by_hash(&[2; 32])
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        None
    );
    assert!(matches!(
        s.revoke_api_token("nope").await,
        Err(StoreError::TokenNotFound(id)) if id == "nope"
    ));
}

async fn global_keys(db: &mut TestDb) {
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let g1 = token(&account, CredentialKind::GlobalKey, 5);
    let mut g2 = token(&account, CredentialKind::GlobalKey, 6);
    g2.created_at = g1.created_at + 1;
    let mut other = token(&account, CredentialKind::GlobalKey, 7);
    other.email = Some("someone@example.com".into());
    // A global key may share its hash with a bearer token: kinds are separate.
    let bearer = token(&account, CredentialKind::ApiToken, 5);
    for t in [&g1, &g2, &other, &bearer] {
        s.create_api_token(t).await.unwrap();
    }
    assert_eq!(
        s.find_global_keys("ops@example.com").await.unwrap(),
        vec![g1.clone(), g2.clone()]
    );
    assert_eq!(
        s.find_global_keys("someone@example.com").await.unwrap(),
        vec![other]
    );
    assert!(
        s.find_global_keys("nobody@example.com")
            .await
            .unwrap()
            .is_empty()
    );
    // Only bearer tokens match by hash.
    assert_eq!(
        s.find_api_token_by_hash(&[5; 32]).await.unwrap(),
        Some(bearer)
    );
    assert_eq!(s.find_api_token_by_hash(&[6; 32]).await.unwrap(), None);
    assert_eq!(s.list_api_tokens().await.unwrap().len(), 4);
}

async fn tunnels_create_and_get(db: &mut TestDb) {
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let other = s.create_account("other").await.unwrap();
    let before = now_micros();
    let mut nt = new_tunnel(&account, "web", TunType::CfdTunnel);
    nt.config_src = ConfigSource::Cloudflare;
    nt.secret = (0..48).collect();
    nt.metadata = json!({"qtid": "abc", "z": 1, "a": [true, null]});
    let t = s.create_tunnel(nt.clone()).await.unwrap();
    assert_eq!(t.id.get_version_num(), 4);
    assert_eq!(t.account_id, account.id);
    assert_eq!(t.name, "web");
    assert_eq!(t.tun_type, TunType::CfdTunnel);
    assert_eq!(t.config_src, ConfigSource::Cloudflare);
    assert_eq!(t.secret, nt.secret);
    assert_eq!(t.metadata, nt.metadata);
    assert!(t.created_at >= before);
    assert_eq!(t.deleted_at, None);
    assert_eq!(t.conns_active_at, None);
    assert_eq!(t.conns_inactive_at, Some(t.created_at));
    assert_eq!(t.status, TunnelStatus::Inactive);
    assert!(!t.ha);

    assert_eq!(
        s.get_tunnel(&account.id, None, t.id).await.unwrap(),
        Some(t.clone())
    );
    assert_eq!(
        s.get_tunnel(&account.id, Some(TunType::CfdTunnel), t.id)
            .await
            .unwrap(),
        Some(t.clone())
    );
    assert_eq!(
        s.get_tunnel(&account.id, Some(TunType::WarpConnector), t.id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.get_tunnel(&other.id, None, t.id).await.unwrap(), None);
    assert_eq!(
        s.get_tunnel(&account.id, None, Uuid::new_v4())
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.get_tunnel_by_id(t.id).await.unwrap(), Some(t.clone()));
    // Unknown key order survives verbatim.
    let stored = s.get_tunnel_by_id(t.id).await.unwrap().unwrap();
    assert_eq!(
        stored.metadata.to_string(),
        r#"{"qtid":"abc","z":1,"a":[true,null]}"#
    );

    let mut w = new_tunnel(&account, "mesh", TunType::WarpConnector);
    w.ha = true;
    let w = s.create_tunnel(w).await.unwrap();
    assert!(w.ha);
    assert_eq!(
        s.get_tunnel(&account.id, Some(TunType::WarpConnector), w.id)
            .await
            .unwrap(),
        Some(w)
    );

    let mut orphan = new_tunnel(&account, "x", TunType::CfdTunnel);
    orphan.account_id = "0".repeat(32);
    assert!(matches!(
        s.create_tunnel(orphan).await,
        Err(StoreError::AccountNotFound(_))
    ));
}

async fn tunnel_name_conflicts(db: &mut TestDb) {
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let other = s.create_account("other").await.unwrap();
    let t = cfd(s, &account, "web").await;
    match s
        .create_tunnel(new_tunnel(&account, "web", TunType::CfdTunnel))
        .await
    {
        Err(StoreError::NameConflict { name }) => assert_eq!(name, "web"),
        other => panic!("expected NameConflict, got {other:?}"),
    }
    // Names are case-sensitive, per account and per type.
    cfd(s, &account, "Web").await;
    cfd(s, &other, "web").await;
    s.create_tunnel(new_tunnel(&account, "web", TunType::WarpConnector))
        .await
        .unwrap();

    // A deleted tunnel's name is free again; the deleted one stays readable.
    let (deleted, _) = s
        .delete_tunnel(&account.id, TunType::CfdTunnel, t.id, false)
        .await
        .unwrap();
    let reborn = cfd(s, &account, "web").await;
    assert_ne!(reborn.id, t.id);
    assert_eq!(
        s.get_tunnel(&account.id, None, t.id).await.unwrap(),
        Some(deleted.clone())
    );
    // And again: several deleted tunnels may share a name.
    s.delete_tunnel(&account.id, TunType::CfdTunnel, reborn.id, false)
        .await
        .unwrap();
    cfd(s, &account, "web").await;
    let all = s
        .list_tunnels(
            &account.id,
            &TunnelFilter {
                name: Some("web".into()),
                tun_types: vec![TunType::CfdTunnel],
                ..Default::default()
            },
            1,
            50,
        )
        .await
        .unwrap();
    assert_eq!(all.total_count, 3);
}

async fn concurrent_creates_same_name(db: &mut TestDb) {
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let s = s.clone();
            let nt = new_tunnel(&account, "contested", TunType::CfdTunnel);
            tokio::spawn(async move { s.create_tunnel(nt).await })
        })
        .collect();
    let (mut ok, mut conflict) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::NameConflict { .. }) => conflict += 1,
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!((ok, conflict), (1, 11));
}

async fn update_tunnel(db: &mut TestDb) {
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let t = cfd(s, &account, "web").await;
    let other = cfd(s, &account, "api").await;

    // Empty patch: unchanged.
    let same = s
        .update_tunnel(
            &account.id,
            TunType::CfdTunnel,
            t.id,
            TunnelPatch::default(),
        )
        .await
        .unwrap();
    assert_eq!(same, t);

    let renamed = s
        .update_tunnel(
            &account.id,
            TunType::CfdTunnel,
            t.id,
            TunnelPatch {
                name: Some("www".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(renamed.name, "www");
    assert_eq!(renamed.secret, t.secret);
    assert_eq!(renamed.created_at, t.created_at);
    assert_eq!(tunnel_now(s, t.id).await, renamed);
    // The old name is free now.
    cfd(s, &account, "web").await;

    // Rename onto a live name.
    match s
        .update_tunnel(
            &account.id,
            TunType::CfdTunnel,
            t.id,
            TunnelPatch {
                name: Some("api".into()),
                ..Default::default()
            },
        )
        .await
    {
        Err(StoreError::NameConflict { name }) => assert_eq!(name, "api"),
        other => panic!("expected NameConflict, got {other:?}"),
    }
    // Renaming to its own name is fine.
    s.update_tunnel(
        &account.id,
        TunType::CfdTunnel,
        t.id,
        TunnelPatch {
            name: Some("www".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    // Secret rotation and metadata together.
    let rotated = s
        .update_tunnel(
            &account.id,
            TunType::CfdTunnel,
            t.id,
            TunnelPatch {
                name: None,
                secret: Some(vec![9; 40]),
                metadata: Some(json!({"owner": "ops"})),
            },
        )
        .await
        .unwrap();
    assert_eq!(rotated.secret, vec![9; 40]);
    assert_eq!(rotated.metadata, json!({"owner": "ops"}));
    assert_eq!(rotated.name, "www");
    assert_eq!(tunnel_now(s, t.id).await, rotated);

    // Unknown id, wrong type, wrong account.
    let patch = TunnelPatch {
        name: Some("zzz".into()),
        ..Default::default()
    };
    let unknown = Uuid::new_v4();
    assert!(matches!(
        s.update_tunnel(&account.id, TunType::CfdTunnel, unknown, patch.clone()).await,
        Err(StoreError::TunnelNotFound(id)) if id == unknown
    ));
    assert!(matches!(
        s.update_tunnel(&account.id, TunType::WarpConnector, t.id, patch.clone())
            .await,
        Err(StoreError::TunnelNotFound(_))
    ));
    assert!(matches!(
        s.update_tunnel(
            &account.id,
            TunType::WarpConnector,
            t.id,
            TunnelPatch::default()
        )
        .await,
        Err(StoreError::TunnelNotFound(_))
    ));
    assert!(matches!(
        s.update_tunnel(&"a".repeat(32), TunType::CfdTunnel, t.id, patch)
            .await,
        Err(StoreError::TunnelNotFound(_))
    ));

    // A deleted tunnel can be patched, even onto a live name.
    s.delete_tunnel(&account.id, TunType::CfdTunnel, other.id, false)
        .await
        .unwrap();
    let patched = s
        .update_tunnel(
            &account.id,
            TunType::CfdTunnel,
            other.id,
            TunnelPatch {
                name: Some("www".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(patched.name, "www");
    assert!(patched.deleted_at.is_some());
}

async fn delete_tunnel(db: &mut TestDb) {
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let t = cfd(s, &account, "web").await;
    let (deleted, removed) = s
        .delete_tunnel(&account.id, TunType::CfdTunnel, t.id, false)
        .await
        .unwrap();
    assert!(removed.connections.is_empty());
    let at = deleted.deleted_at.expect("deleted_at set");
    assert!(at >= t.created_at);
    assert_eq!(deleted.status, TunnelStatus::Inactive);
    assert_eq!(deleted.name, t.name);
    assert_eq!(tunnel_now(s, t.id).await, deleted);

    // Deleting again returns it unchanged, with or without cascade.
    tick().await;
    for cascade in [false, true] {
        let (again, removed) = s
            .delete_tunnel(&account.id, TunType::CfdTunnel, t.id, cascade)
            .await
            .unwrap();
        assert_eq!(again, deleted);
        assert!(removed.connections.is_empty());
    }

    let w = s
        .create_tunnel(new_tunnel(&account, "mesh", TunType::WarpConnector))
        .await
        .unwrap();
    assert!(matches!(
        s.delete_tunnel(&account.id, TunType::CfdTunnel, w.id, false).await,
        Err(StoreError::TunnelNotFound(id)) if id == w.id
    ));
    assert!(matches!(
        s.delete_tunnel(&account.id, TunType::CfdTunnel, Uuid::new_v4(), true)
            .await,
        Err(StoreError::TunnelNotFound(_))
    ));
    let (w2, _) = s
        .delete_tunnel(&account.id, TunType::WarpConnector, w.id, false)
        .await
        .unwrap();
    assert!(w2.deleted_at.is_some());
}

async fn delete_with_connections(db: &mut TestDb) {
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let t = cfd(s, &account, "web").await;
    let (_, ids_a) = connect(s, t.id, 4, "edge-1").await;
    let (_, ids_b) = connect(s, t.id, 1, "edge-2").await;

    assert!(matches!(
        s.delete_tunnel(&account.id, TunType::CfdTunnel, t.id, false).await,
        Err(StoreError::HasActiveConnections(id)) if id == t.id
    ));
    // Nothing changed.
    let still = tunnel_now(s, t.id).await;
    assert_eq!(still.deleted_at, None);
    assert_eq!(s.count_live_connections(t.id).await.unwrap(), 5);

    let (deleted, removed) = s
        .delete_tunnel(&account.id, TunType::CfdTunnel, t.id, true)
        .await
        .unwrap();
    let all: Vec<Uuid> = ids_a.iter().chain(&ids_b).copied().collect();
    assert_eq!(sorted(removed.connections), sorted(all));
    assert!(deleted.deleted_at.is_some());
    assert_eq!(deleted.status, TunnelStatus::Down);
    assert_eq!(deleted.conns_active_at, None);
    assert!(deleted.conns_inactive_at.is_some());
    assert_eq!(s.count_live_connections(t.id).await.unwrap(), 0);
    assert!(s.list_connectors(t.id).await.unwrap().is_empty());

    // A deleted tunnel accepts no new connection.
    let reg = registration(t.id, Uuid::new_v4(), 0, "edge-1");
    assert!(matches!(
        s.register_connection(&reg).await,
        Err(StoreError::TunnelNotFound(id)) if id == t.id
    ));
}

async fn list_filters(db: &mut TestDb) {
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let other = s.create_account("other").await.unwrap();
    cfd(s, &other, "alpha").await;

    let alpha = cfd(s, &account, "alpha").await;
    tick().await;
    let beta = cfd(s, &account, "beta").await;
    tick().await;
    let mesh = s
        .create_tunnel(new_tunnel(&account, "mesh", TunType::WarpConnector))
        .await
        .unwrap();
    tick().await;
    let (beta_deleted, _) = s
        .delete_tunnel(&account.id, TunType::CfdTunnel, beta.id, false)
        .await
        .unwrap();
    let beta_deleted_at = beta_deleted.deleted_at.unwrap();
    tick().await;
    let gamma = cfd(s, &account, "gamma").await;

    let list = |f: TunnelFilter| {
        let s = s.clone();
        let account = account.id.clone();
        async move { s.list_tunnels(&account, &f, 1, 100).await.unwrap() }
    };

    let all = list(TunnelFilter::default()).await;
    assert_eq!(names(&all), ["alpha", "beta", "mesh", "gamma"]);
    assert_eq!(all.total_count, 4);

    let cfd_only = list(TunnelFilter {
        tun_types: vec![TunType::CfdTunnel],
        ..Default::default()
    })
    .await;
    assert_eq!(names(&cfd_only), ["alpha", "beta", "gamma"]);
    let both = list(TunnelFilter {
        tun_types: vec![
            TunType::WarpConnector,
            TunType::CfdTunnel,
            TunType::WarpConnector,
        ],
        ..Default::default()
    })
    .await;
    assert_eq!(both.total_count, 4);
    let warp = list(TunnelFilter {
        tun_types: vec![TunType::WarpConnector],
        ..Default::default()
    })
    .await;
    assert_eq!(names(&warp), ["mesh"]);

    let by_name = list(TunnelFilter {
        name: Some("beta".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(by_name.items, vec![beta_deleted.clone()]);
    assert_eq!(
        list(TunnelFilter {
            name: Some("BETA".into()),
            ..Default::default()
        })
        .await
        .total_count,
        0
    );

    let live = list(TunnelFilter {
        is_deleted: Some(false),
        ..Default::default()
    })
    .await;
    assert_eq!(names(&live), ["alpha", "mesh", "gamma"]);
    let dead = list(TunnelFilter {
        is_deleted: Some(true),
        ..Default::default()
    })
    .await;
    assert_eq!(names(&dead), ["beta"]);

    let by_uuid = list(TunnelFilter {
        uuid: Some(mesh.id),
        ..Default::default()
    })
    .await;
    assert_eq!(by_uuid.items, vec![mesh.clone()]);
    assert_eq!(
        list(TunnelFilter {
            uuid: Some(Uuid::new_v4()),
            ..Default::default()
        })
        .await
        .total_count,
        0
    );

    // existed_at: created at or before, not deleted at or before.
    let at = |t: Micros| {
        list(TunnelFilter {
            existed_at: Some(t),
            ..Default::default()
        })
    };
    assert_eq!(names(&at(alpha.created_at - 1).await), Vec::<&str>::new());
    assert_eq!(names(&at(alpha.created_at).await), ["alpha"]);
    assert_eq!(names(&at(mesh.created_at).await), ["alpha", "beta", "mesh"]);
    assert_eq!(
        names(&at(beta_deleted_at - 1).await),
        ["alpha", "beta", "mesh"]
    );
    assert_eq!(names(&at(beta_deleted_at).await), ["alpha", "mesh"]);
    assert_eq!(
        names(&at(gamma.created_at).await),
        ["alpha", "mesh", "gamma"]
    );

    let inactive = list(TunnelFilter {
        status: Some(TunnelStatus::Inactive),
        ..Default::default()
    })
    .await;
    assert_eq!(inactive.total_count, 4);
    connect(s, gamma.id, 4, "edge").await;
    connect(s, alpha.id, 1, "edge").await;
    let status = |st: TunnelStatus| {
        list(TunnelFilter {
            status: Some(st),
            ..Default::default()
        })
    };
    assert_eq!(names(&status(TunnelStatus::Healthy).await), ["gamma"]);
    assert_eq!(names(&status(TunnelStatus::Degraded).await), ["alpha"]);
    assert_eq!(
        names(&status(TunnelStatus::Inactive).await),
        ["beta", "mesh"]
    );
    assert_eq!(names(&status(TunnelStatus::Down).await), Vec::<&str>::new());

    // Filters combine with AND.
    let combined = list(TunnelFilter {
        tun_types: vec![TunType::CfdTunnel],
        is_deleted: Some(false),
        status: Some(TunnelStatus::Degraded),
        include_prefix: Some("al".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(names(&combined), ["alpha"]);
}

async fn list_activity_filters(db: &mut TestDb) {
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let a = cfd(s, &account, "a").await;
    let b = cfd(s, &account, "b").await;
    tick().await;
    let (_, ids) = connect(s, a.id, 2, "edge").await;
    let active_since = tunnel_now(s, a.id).await.conns_active_at.unwrap();
    tick().await;

    let active = |t: Micros| {
        let s = s.clone();
        let account = account.id.clone();
        async move {
            let f = TunnelFilter {
                was_active_at: Some(t),
                ..Default::default()
            };
            s.list_tunnels(&account, &f, 1, 10).await.unwrap()
        }
    };
    let inactive = |t: Micros| {
        let s = s.clone();
        let account = account.id.clone();
        async move {
            let f = TunnelFilter {
                was_inactive_at: Some(t),
                ..Default::default()
            };
            s.list_tunnels(&account, &f, 1, 10).await.unwrap()
        }
    };
    let now = now_micros();
    assert_eq!(names(&active(now).await), ["a"]);
    assert_eq!(names(&active(active_since).await), ["a"]);
    assert_eq!(names(&active(active_since - 1).await), Vec::<&str>::new());
    assert_eq!(names(&inactive(now).await), ["b"]);
    assert_eq!(names(&inactive(active_since - 1).await), ["a", "b"]);

    for id in ids {
        assert!(s.unregister_connection(id).await.unwrap());
    }
    let down = tunnel_now(s, a.id).await;
    assert_eq!(down.status, TunnelStatus::Down);
    assert_eq!(names(&active(now_micros()).await), Vec::<&str>::new());
    assert_eq!(names(&inactive(now_micros()).await), ["a", "b"]);
    let _ = b;
}

async fn list_prefix_filters(db: &mut TestDb) {
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let names_in = [
        "web-1", "web-2", "Web-3", "webby", "w%b", "wxb", "w_b", "w\\b", "w\\x", "100%", "100a",
        "_x", "ax", "é-one", "",
    ];
    for n in names_in {
        cfd(s, &account, n).await;
    }
    let check = |prefix: &'static str| {
        let s = s.clone();
        let account = account.id.clone();
        async move {
            let inc = s
                .list_tunnels(
                    &account,
                    &TunnelFilter {
                        include_prefix: Some(prefix.into()),
                        ..Default::default()
                    },
                    1,
                    100,
                )
                .await
                .unwrap();
            let exc = s
                .list_tunnels(
                    &account,
                    &TunnelFilter {
                        exclude_prefix: Some(prefix.into()),
                        ..Default::default()
                    },
                    1,
                    100,
                )
                .await
                .unwrap();
            let mut got_inc: Vec<String> = inc.items.into_iter().map(|t| t.name).collect();
            let mut got_exc: Vec<String> = exc.items.into_iter().map(|t| t.name).collect();
            got_inc.sort();
            got_exc.sort();
            (got_inc, got_exc)
        }
    };
    for prefix in [
        "web", "Web", "w%", "w_", "w\\", "100%", "_", "%", "é", "web-1", "zzz",
    ] {
        let (inc, exc) = check(prefix).await;
        let mut want_inc: Vec<String> = names_in
            .iter()
            .filter(|n| n.starts_with(prefix))
            .map(|n| n.to_string())
            .collect();
        let mut want_exc: Vec<String> = names_in
            .iter()
            .filter(|n| !n.starts_with(prefix))
            .map(|n| n.to_string())
            .collect();
        want_inc.sort();
        want_exc.sort();
        assert_eq!(inc, want_inc, "include_prefix {prefix:?}");
        assert_eq!(exc, want_exc, "exclude_prefix {prefix:?}");
    }
}

async fn pagination(db: &mut TestDb) {
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(cfd(s, &account, &format!("t{i}")).await);
    }
    created.sort_by_key(|a| (a.created_at, a.id));
    let f = TunnelFilter::default();
    let mut seen = Vec::new();
    for (page, len) in [(1, 3), (2, 3), (3, 1), (4, 0), (100, 0)] {
        let p = s.list_tunnels(&account.id, &f, page, 3).await.unwrap();
        assert_eq!(p.total_count, 7, "page {page}");
        assert_eq!(p.items.len(), len, "page {page}");
        seen.extend(p.items);
    }
    assert_eq!(seen, created);
    // Page 0 is read as page 1; huge pages are fine.
    let p0 = s.list_tunnels(&account.id, &f, 0, 3).await.unwrap();
    assert_eq!(p0.items, created[..3].to_vec());
    let big = s.list_tunnels(&account.id, &f, 1, 1000).await.unwrap();
    assert_eq!(big.items, created);
    let far = s
        .list_tunnels(&account.id, &f, u32::MAX, u32::MAX)
        .await
        .unwrap();
    assert!(far.items.is_empty());
    assert_eq!(far.total_count, 7);
    // The count follows the filter.
    let filtered = TunnelFilter {
        include_prefix: Some("t1".into()),
        ..Default::default()
    };
    let p = s.list_tunnels(&account.id, &filtered, 2, 1).await.unwrap();
    assert_eq!((p.total_count, p.items.len()), (1, 0));
    // An empty account.
    let empty = s.create_account("empty").await.unwrap();
    let p = s.list_tunnels(&empty.id, &f, 1, 20).await.unwrap();
    assert_eq!((p.total_count, p.items.len()), (0, 0));
}

async fn configs(db: &mut TestDb) {
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let other = s.create_account("other").await.unwrap();
    let t = cfd(s, &account, "web").await;
    assert_eq!(s.get_config(t.id).await.unwrap(), None);

    let c1 = json!({"ingress": [{"hostname": "a.example.com", "service": "http://localhost:8080"}, {"service": "http_status:404"}], "x-unknown": {"b": 1, "a": 2}});
    let v1 = s
        .put_config(&account.id, t.id, &c1, ConfigSource::Cloudflare)
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    assert_eq!(v1.tunnel_id, t.id);
    assert_eq!(v1.account_id, account.id);
    assert_eq!(v1.config, c1);
    assert_eq!(v1.source, ConfigSource::Cloudflare);
    assert_eq!(s.get_config(t.id).await.unwrap(), Some(v1.clone()));

    let c2 = json!({"ingress": [{"service": "http_status:503"}]});
    let v2 = s
        .put_config(&account.id, t.id, &c2, ConfigSource::Local)
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    let got = s.get_config(t.id).await.unwrap().unwrap();
    assert_eq!(got, v2);
    assert_eq!(got.config.to_string(), c2.to_string());

    // Failures do not bump the version.
    assert!(matches!(
        s.put_config(&other.id, t.id, &c1, ConfigSource::Cloudflare).await,
        Err(StoreError::TunnelNotFound(id)) if id == t.id
    ));
    assert!(matches!(
        s.put_config(&account.id, Uuid::new_v4(), &c1, ConfigSource::Cloudflare)
            .await,
        Err(StoreError::TunnelNotFound(_))
    ));
    // Deleting and re-using the name never resets or reuses versions.
    s.delete_tunnel(&account.id, TunType::CfdTunnel, t.id, false)
        .await
        .unwrap();
    let v3 = s
        .put_config(&account.id, t.id, &c1, ConfigSource::Cloudflare)
        .await
        .unwrap();
    assert_eq!(v3.version, 3);
    let fresh = cfd(s, &account, "web").await;
    let f1 = s
        .put_config(&account.id, fresh.id, &c1, ConfigSource::Cloudflare)
        .await
        .unwrap();
    assert_eq!(f1.version, 1);
    assert_eq!(s.get_config(t.id).await.unwrap().unwrap().version, 3);
}

async fn concurrent_config_puts(db: &mut TestDb) {
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let t = cfd(s, &account, "web").await;
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let s = s.clone();
            let account = account.id.clone();
            tokio::spawn(async move {
                s.put_config(&account, t.id, &json!({"n": i}), ConfigSource::Cloudflare)
                    .await
            })
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.unwrap().unwrap().version);
    }
    versions.sort();
    assert_eq!(versions, (1..=10).collect::<Vec<i64>>());
    assert_eq!(s.get_config(t.id).await.unwrap().unwrap().version, 10);
}

async fn register_healthy_and_degraded(db: &mut TestDb) {
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let t = cfd(s, &account, "web").await;
    assert_eq!(s.count_live_connections(t.id).await.unwrap(), 0);
    assert!(s.list_connectors(t.id).await.unwrap().is_empty());

    let before = now_micros();
    let (k1, ids1) = connect(s, t.id, 4, "edge-1").await;
    let now = tunnel_now(s, t.id).await;
    assert_eq!(now.status, TunnelStatus::Healthy);
    let active_at = now.conns_active_at.expect("active");
    assert!(active_at >= before);
    assert_eq!(now.conns_inactive_at, None);
    assert_eq!(s.count_live_connections(t.id).await.unwrap(), 4);

    let connectors = s.list_connectors(t.id).await.unwrap();
    assert_eq!(connectors.len(), 1);
    let c = &connectors[0];
    assert_eq!(c.id, k1);
    assert_eq!(c.tunnel_id, t.id);
    assert_eq!(c.arch, "linux_amd64");
    assert_eq!(c.version, "2024.1.0");
    assert_eq!(
        c.features,
        vec!["serialized_headers", "support_datagram_v2"]
    );
    assert_eq!(c.run_at, 1_700_000_000_000_000);
    assert_eq!(c.config_version, 0);
    assert_eq!(c.conns.iter().map(|c| c.id).collect::<Vec<_>>(), ids1);
    assert_eq!(
        c.conns.iter().map(|c| c.conn_index).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert_eq!(c.conns[2].colo_name, "colo2");
    assert_eq!(c.conns[2].origin_ip, "198.51.100.7");
    assert_eq!(c.conns[2].edge_node, "edge-1");
    assert_eq!(c.conns[2].connector_id, k1);
    assert_eq!(c.conns[2].tunnel_id, t.id);
    assert_eq!(s.get_connector(t.id, k1).await.unwrap().as_ref(), Some(c));
    assert_eq!(s.get_connector(t.id, Uuid::new_v4()).await.unwrap(), None);
    assert_eq!(s.get_connector(Uuid::new_v4(), k1).await.unwrap(), None);

    // A second connector with only two connections degrades the tunnel; the
    // active period goes on.
    let mut reg = registration(t.id, Uuid::new_v4(), 0, "edge-2");
    reg.connector.run_at += 10;
    reg.connector.arch = "linux_arm64".into();
    let k2 = reg.connection.connector_id;
    s.register_connection(&reg).await.unwrap();
    let mut reg = registration(t.id, k2, 1, "edge-2");
    reg.connector.run_at += 10;
    reg.connector.arch = "linux_arm64".into();
    s.register_connection(&reg).await.unwrap();
    let now = tunnel_now(s, t.id).await;
    assert_eq!(now.status, TunnelStatus::Degraded);
    assert_eq!(now.conns_active_at, Some(active_at));
    let connectors = s.list_connectors(t.id).await.unwrap();
    assert_eq!(
        connectors
            .iter()
            .map(|c| (c.id, c.conns.len()))
            .collect::<Vec<_>>(),
        vec![(k1, 4), (k2, 2)]
    );
    assert_eq!(connectors[1].arch, "linux_arm64");

    // Filling it up makes it healthy again.
    for i in 2..4 {
        let mut reg = registration(t.id, k2, i, "edge-2");
        reg.connector.run_at += 10;
        s.register_connection(&reg).await.unwrap();
    }
    assert_eq!(tunnel_now(s, t.id).await.status, TunnelStatus::Healthy);
    assert_eq!(s.count_live_connections(t.id).await.unwrap(), 8);

    // Another tunnel with two connections is degraded from the start.
    let u = cfd(s, &account, "two").await;
    connect(s, u.id, 2, "edge-1").await;
    assert_eq!(tunnel_now(s, u.id).await.status, TunnelStatus::Degraded);
}

async fn replace_same_index(db: &mut TestDb) {
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let t = cfd(s, &account, "web").await;
    let (k, ids) = connect(s, t.id, 4, "edge-1").await;
    let set_version = s.set_config_version(t.id, k, 7).await;
    set_version.unwrap();
    let active_at = tunnel_now(s, t.id).await.conns_active_at;

    // Reconnect of index 2 (new connection id, new facts).
    let mut reg = registration(t.id, k, 2, "edge-9");
    reg.connector.version = "2025.1.0".into();
    reg.connector.features = vec!["management_logs".into()];
    reg.connector.run_at = 42;
    let removed = s.register_connection(&reg).await.unwrap();
    assert_eq!(removed.connections, vec![ids[2]]);
    assert_eq!(s.count_live_connections(t.id).await.unwrap(), 4);
    let c = s.get_connector(t.id, k).await.unwrap().unwrap();
    assert_eq!(c.conns[2].id, reg.connection.id);
    assert_eq!(c.conns[2].edge_node, "edge-9");
    assert_eq!(c.version, "2025.1.0");
    assert_eq!(c.features, vec!["management_logs"]);
    assert_eq!(c.run_at, 42);
    assert_eq!(c.config_version, 7, "config_version survives the upsert");
    let now = tunnel_now(s, t.id).await;
    assert_eq!(now.status, TunnelStatus::Healthy);
    assert_eq!(now.conns_active_at, active_at);

    // Registering the very same connection again replaces nothing visible.
    let removed = s.register_connection(&reg).await.unwrap();
    assert!(removed.connections.is_empty());
    assert_eq!(s.count_live_connections(t.id).await.unwrap(), 4);

    // The old connection is gone for good.
    assert!(!s.unregister_connection(ids[2]).await.unwrap());
}

async fn unregister_until_down(db: &mut TestDb) {
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let t = cfd(s, &account, "web").await;
    let (k, ids) = connect(s, t.id, 4, "edge-1").await;
    let active_at = tunnel_now(s, t.id).await.conns_active_at.unwrap();

    assert!(s.unregister_connection(ids[0]).await.unwrap());
    assert!(!s.unregister_connection(ids[0]).await.unwrap());
    assert!(!s.unregister_connection(Uuid::new_v4()).await.unwrap());
    let now = tunnel_now(s, t.id).await;
    assert_eq!(now.status, TunnelStatus::Degraded);
    assert_eq!(now.conns_active_at, Some(active_at));
    assert_eq!(now.conns_inactive_at, None);

    for id in &ids[1..] {
        assert!(s.unregister_connection(*id).await.unwrap());
    }
    let down = tunnel_now(s, t.id).await;
    assert_eq!(down.status, TunnelStatus::Down);
    assert_eq!(down.conns_active_at, None);
    let inactive_at = down.conns_inactive_at.expect("inactive_at set");
    assert!(inactive_at >= active_at);
    // The connector is forgotten with its last connection.
    assert!(s.list_connectors(t.id).await.unwrap().is_empty());
    assert_eq!(s.get_connector(t.id, k).await.unwrap(), None);
    assert_eq!(s.count_live_connections(t.id).await.unwrap(), 0);

    // Removing nothing changes nothing: still down, same instant.
    tick().await;
    assert!(
        s.remove_connections(t.id, None)
            .await
            .unwrap()
            .connections
            .is_empty()
    );
    assert_eq!(tunnel_now(s, t.id).await, down);

    // Coming back starts a new active period.
    tick().await;
    connect(s, t.id, 1, "edge-1").await;
    let back = tunnel_now(s, t.id).await;
    assert_eq!(back.status, TunnelStatus::Degraded);
    assert!(back.conns_active_at.unwrap() > inactive_at);
    assert_eq!(back.conns_inactive_at, None);

    // A never-connected tunnel stays inactive when nothing is removed.
    let idle = cfd(s, &account, "idle").await;
    s.remove_connections(idle.id, None).await.unwrap();
    assert_eq!(tunnel_now(s, idle.id).await, idle);
}

async fn remove_connections(db: &mut TestDb) {
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let t = cfd(s, &account, "web").await;
    let (k1, ids1) = connect(s, t.id, 4, "edge-1").await;
    let (k2, ids2) = connect(s, t.id, 4, "edge-2").await;
    let (k3, ids3) = connect(s, t.id, 2, "edge-2").await;
    let other = cfd(s, &account, "other").await;
    let (_, other_ids) = connect(s, other.id, 4, "edge-1").await;
    assert_eq!(tunnel_now(s, t.id).await.status, TunnelStatus::Degraded);

    // One connector: the healthy rest stays.
    let removed = s.remove_connections(t.id, Some(k3)).await.unwrap();
    assert_eq!(sorted(removed.connections), sorted(ids3));
    assert_eq!(tunnel_now(s, t.id).await.status, TunnelStatus::Healthy);
    assert_eq!(
        s.list_connectors(t.id)
            .await
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect::<HashSet<_>>(),
        HashSet::from([k1, k2])
    );
    // An unknown connector removes nothing.
    assert!(
        s.remove_connections(t.id, Some(Uuid::new_v4()))
            .await
            .unwrap()
            .connections
            .is_empty()
    );
    // An unknown tunnel neither.
    assert!(
        s.remove_connections(Uuid::new_v4(), None)
            .await
            .unwrap()
            .connections
            .is_empty()
    );

    // All of them.
    let removed = s.remove_connections(t.id, None).await.unwrap();
    let all: Vec<Uuid> = ids1.into_iter().chain(ids2).collect();
    assert_eq!(sorted(removed.connections), sorted(all));
    let down = tunnel_now(s, t.id).await;
    assert_eq!(down.status, TunnelStatus::Down);
    assert_eq!(down.conns_active_at, None);
    assert!(down.conns_inactive_at.is_some());
    assert!(s.list_connectors(t.id).await.unwrap().is_empty());

    // Other tunnels are untouched.
    assert_eq!(tunnel_now(s, other.id).await.status, TunnelStatus::Healthy);
    let kept: Vec<Uuid> = s.list_connectors(other.id).await.unwrap()[0]
        .conns
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(kept, other_ids);
}

async fn clear_edge_node(db: &mut TestDb) {
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let a = cfd(s, &account, "a").await;
    let b = cfd(s, &account, "b").await;
    let c = cfd(s, &account, "c").await;
    // a: all on edge-1; b: half on each; c: all on edge-2.
    let (_, a_ids) = connect(s, a.id, 4, "edge-1").await;
    let kb = Uuid::new_v4();
    let mut b_edge1 = Vec::new();
    for i in 0..4u8 {
        let edge = if i % 2 == 0 { "edge-1" } else { "edge-2" };
        let reg = registration(b.id, kb, i, edge);
        s.register_connection(&reg).await.unwrap();
        if edge == "edge-1" {
            b_edge1.push(reg.connection.id);
        }
    }
    connect(s, c.id, 4, "edge-2").await;

    let removed = s.clear_edge_node("edge-1").await.unwrap();
    let want: Vec<Uuid> = a_ids.iter().chain(&b_edge1).copied().collect();
    assert_eq!(sorted(removed.connections), sorted(want));
    let a_now = tunnel_now(s, a.id).await;
    assert_eq!(a_now.status, TunnelStatus::Down);
    assert_eq!(a_now.conns_active_at, None);
    assert!(s.list_connectors(a.id).await.unwrap().is_empty());
    assert_eq!(tunnel_now(s, b.id).await.status, TunnelStatus::Degraded);
    let b_conns = s.get_connector(b.id, kb).await.unwrap().unwrap().conns;
    assert_eq!(
        b_conns.iter().map(|c| c.conn_index).collect::<Vec<_>>(),
        vec![1, 3]
    );
    assert_eq!(tunnel_now(s, c.id).await.status, TunnelStatus::Healthy);

    // Nothing left there.
    assert!(
        s.clear_edge_node("edge-1")
            .await
            .unwrap()
            .connections
            .is_empty()
    );
    assert!(
        s.clear_edge_node("never")
            .await
            .unwrap()
            .connections
            .is_empty()
    );
    let removed = s.clear_edge_node("edge-2").await.unwrap();
    assert_eq!(removed.connections.len(), 6);
    for t in [&a, &b, &c] {
        assert_eq!(tunnel_now(s, t.id).await.status, TunnelStatus::Down);
        assert_eq!(s.count_live_connections(t.id).await.unwrap(), 0);
    }
}

async fn concurrent_registrations(db: &mut TestDb) {
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let t = cfd(s, &account, "web").await;
    let u = cfd(s, &account, "web2").await;

    // 4 connectors × 4 HA connections on each of two tunnels, all at once.
    let mut regs = Vec::new();
    for tunnel in [t.id, u.id] {
        for _ in 0..4 {
            let k = Uuid::new_v4();
            for i in 0..4 {
                regs.push(registration(tunnel, k, i, "edge-1"));
            }
        }
    }
    let tasks: Vec<_> = regs
        .iter()
        .cloned()
        .map(|reg| {
            let s = s.clone();
            tokio::spawn(async move { s.register_connection(&reg).await })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().unwrap().connections.is_empty());
    }
    for tunnel in [t.id, u.id] {
        let now = tunnel_now(s, tunnel).await;
        assert_eq!(now.status, TunnelStatus::Healthy);
        assert!(now.conns_active_at.is_some());
        assert_eq!(now.conns_inactive_at, None);
        assert_eq!(s.count_live_connections(tunnel).await.unwrap(), 16);
        let connectors = s.list_connectors(tunnel).await.unwrap();
        assert_eq!(connectors.len(), 4);
        assert!(connectors.iter().all(|c| c.conns.len() == 4));
    }

    // Reconnects racing on the same index: exactly one survives per index.
    let k = Uuid::new_v4();
    let racers: Vec<Registration> = (0..6).map(|_| registration(t.id, k, 0, "edge-2")).collect();
    let tasks: Vec<_> = racers
        .iter()
        .cloned()
        .map(|reg| {
            let s = s.clone();
            tokio::spawn(async move { s.register_connection(&reg).await })
        })
        .collect();
    let mut replaced = 0;
    for task in tasks {
        replaced += task.await.unwrap().unwrap().connections.len();
    }
    assert_eq!(replaced, 5);
    assert_eq!(
        s.get_connector(t.id, k).await.unwrap().unwrap().conns.len(),
        1
    );
    assert_eq!(tunnel_now(s, t.id).await.status, TunnelStatus::Degraded);
    s.remove_connections(t.id, Some(k)).await.unwrap();

    // And all unregistered at once: down, with the inactive instant set.
    let tasks: Vec<_> = regs
        .iter()
        .map(|reg| {
            let s = s.clone();
            let id = reg.connection.id;
            tokio::spawn(async move { s.unregister_connection(id).await })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().unwrap());
    }
    for tunnel in [t.id, u.id] {
        let now = tunnel_now(s, tunnel).await;
        assert_eq!(now.status, TunnelStatus::Down);
        assert_eq!(now.conns_active_at, None);
        assert!(now.conns_inactive_at.is_some());
        assert!(s.list_connectors(tunnel).await.unwrap().is_empty());
    }
}

async fn connector_config_version(db: &mut TestDb) {
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let t = cfd(s, &account, "web").await;
    let (k1, _) = connect(s, t.id, 4, "edge-1").await;
    let (k2, _) = connect(s, t.id, 4, "edge-1").await;
    s.set_config_version(t.id, k1, 3).await.unwrap();
    let connectors = s.list_connectors(t.id).await.unwrap();
    let versions: Vec<(Uuid, i64)> = connectors
        .iter()
        .map(|c| (c.id, c.config_version))
        .collect();
    assert!(versions.contains(&(k1, 3)));
    assert!(versions.contains(&(k2, 0)));
    s.set_config_version(t.id, k2, 5).await.unwrap();
    assert_eq!(
        s.get_connector(t.id, k2)
            .await
            .unwrap()
            .unwrap()
            .config_version,
        5
    );
    // Unknown connectors are ignored.
    s.set_config_version(t.id, Uuid::new_v4(), 9).await.unwrap();
    s.set_config_version(Uuid::new_v4(), k1, 9).await.unwrap();
    assert_eq!(
        s.get_connector(t.id, k1)
            .await
            .unwrap()
            .unwrap()
            .config_version,
        3
    );
    // A connector that lost all connections starts over.
    s.remove_connections(t.id, Some(k1)).await.unwrap();
    let reg = registration(t.id, k1, 0, "edge-1");
    s.register_connection(&reg).await.unwrap();
    assert_eq!(
        s.get_connector(t.id, k1)
            .await
            .unwrap()
            .unwrap()
            .config_version,
        0
    );
}

async fn registration_errors(db: &mut TestDb) {
    let s = &db.store;
    let unknown = Uuid::new_v4();
    let reg = registration(unknown, Uuid::new_v4(), 0, "edge-1");
    assert!(matches!(
        s.register_connection(&reg).await,
        Err(StoreError::TunnelNotFound(id)) if id == unknown
    ));
    assert_eq!(s.count_live_connections(unknown).await.unwrap(), 0);
    assert!(s.list_connectors(unknown).await.unwrap().is_empty());
}

// ---- SQLite-specific ----------------------------------------------------------

#[cfg(unix)]
#[tokio::test]
async fn sqlite_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("a/b/c/culvert.db");
    let store = Store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    store.create_account("x").await.unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // The WAL file inherits the mode.
    let wal = dir.path().join("a/b/c/culvert.db-wal");
    assert_eq!(
        std::fs::metadata(&wal).unwrap().permissions().mode() & 0o777,
        0o600
    );
    store.close().await;

    // An existing, world-readable file is tightened; `sqlite:` works too.
    let loose = dir.path().join("loose.db");
    std::fs::write(&loose, b"").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = Store::open(&format!("sqlite:{}", loose.display()))
        .await
        .unwrap();
    assert_eq!(
        std::fs::metadata(&loose).unwrap().permissions().mode() & 0o777,
        0o600
    );
    store.close().await;
}

#[tokio::test]
async fn sqlite_odd_paths() {
    // Characters that mean something in URLs are kept literally.
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("we ird%20#dir/da?ta.db");
    let url = format!("sqlite://{}", path.display());
    // `?` starts sqlx options, so it cannot be part of a path here…
    let store = Store::open(&url).await.unwrap();
    store.close().await;
    assert!(dir.path().join("we ird%20#dir/da").exists());
    // …but everything before it is taken verbatim.
    let path = dir.path().join("sp ace/100%/x#y.db");
    let store = Store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let a = store.create_account("x").await.unwrap();
    store.close().await;
    assert!(path.exists());
    let store = Store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    assert_eq!(store.get_account(&a.id).await.unwrap(), Some(a));
    store.close().await;

    // Relative paths are resolved against the working directory.
    let rel = format!(
        "sqlite://{}",
        pathdiff(
            &dir.path().join("rel.db"),
            &std::env::current_dir().unwrap()
        )
    );
    let store = Store::open(&rel).await.unwrap();
    store.close().await;
    assert!(dir.path().join("rel.db").exists());
}

/// `target` relative to `base` (both absolute), with `..` segments.
fn pathdiff(target: &std::path::Path, base: &std::path::Path) -> String {
    let t: Vec<_> = target.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = std::path::PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out.display().to_string()
}

#[tokio::test]
async fn unsupported_urls() {
    for url in [
        "mysql://localhost/db",
        "sqlite://",
        "sqlite::memory:",
        "",
        "file:///tmp/x.db",
        "postgres",
    ] {
        assert!(
            matches!(Store::open(url).await, Err(StoreError::UnsupportedUrl(u)) if u == url),
            "{url:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_readers_do_not_wait_for_writers() {
    use sqlx::Connection;
    let db = TestDb::sqlite().await;
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    let t = cfd(s, &account, "web").await;

    // Another process holds the write lock (an open write transaction)…
    sqlx::any::install_default_drivers();
    let mut other = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let mut tx = other.begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("INSERT INTO settings (key, value) VALUES ('held', 'x')")
        .execute(&mut *tx)
        .await
        .unwrap();

    // …and many concurrent reads still go through at once.
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let s = s.clone();
            let account = account.id.clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    let got = s.get_tunnel(&account, None, t.id).await.unwrap();
                    assert!(got.is_some());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(s.get_setting("held").await.unwrap(), None);
    tx.commit().await.unwrap();
    other.close().await.unwrap();
    assert_eq!(s.get_setting("held").await.unwrap().as_deref(), Some("x"));
    db.store.close().await;
}

/// The pool does not ping a connection before handing it out: a connection
/// the server has dropped fails the statement that uses it with a retryable
/// error, is discarded, and the next call gets a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dead_connection_is_retryable() {
    use sqlx::Connection;
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let Where::Postgres { base, name } = &db.place else {
        unreachable!()
    };
    let s = &db.store;
    let account = s.create_account("acme").await.unwrap();
    // Several idle connections in the pool.
    let id = account.id.as_str();
    let reads = tokio::join!(
        s.get_account(id),
        s.get_account(id),
        s.get_account(id),
        s.get_account(id)
    );
    for r in [reads.0, reads.1, reads.2, reads.3] {
        assert!(r.unwrap().is_some());
    }

    // The server ends every session of the store's database (as a restart
    // or an administrator would), waiting until they are gone.
    sqlx::any::install_default_drivers();
    let mut admin = sqlx::AnyConnection::connect(base).await.unwrap();
    let killed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid()) AS t",
    )
    .bind(name.as_str())
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(killed >= 1);
    admin.close().await.unwrap();

    let mut failures = 0;
    for _ in 0..50 {
        match s.get_account(&account.id).await {
            Ok(got) => {
                assert!(got.is_some());
                break;
            }
            Err(e) => {
                assert!(e.is_retryable(), "{e:?}");
                failures += 1;
            }
        }
    }
    assert!(
        failures >= 1,
        "a dead connection was handed out and noticed"
    );
    assert!(failures < 50, "the pool recovered");
    // Everything works again.
    assert!(s.get_account(&account.id).await.unwrap().is_some());
    s.create_account("after").await.unwrap();
    db.store.close().await;
}

// ---- property tests -------------------------------------------------------------

mod props {
    use super::*;
    use proptest::prelude::*;

    fn name_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just('%'),
                Just('_'),
                Just('\\'),
                Just('a'),
                Just('A'),
                Just('b'),
                Just('é'),
                Just('\''),
                Just('*'),
            ],
            0..5,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    async fn check_prefixes(store: &Store, names: &[String], prefixes: &[String]) {
        let account = store.create_account("prop").await.unwrap();
        let mut created = Vec::new();
        for n in names {
            match store
                .create_tunnel(new_tunnel(&account, n, TunType::CfdTunnel))
                .await
            {
                Ok(_) => created.push(n.clone()),
                Err(StoreError::NameConflict { .. }) => {}
                Err(e) => panic!("{e:?}"),
            }
        }
        for p in prefixes {
            for include in [true, false] {
                let f = TunnelFilter {
                    include_prefix: include.then(|| p.clone()),
                    exclude_prefix: (!include).then(|| p.clone()),
                    ..Default::default()
                };
                let page = store.list_tunnels(&account.id, &f, 1, 1000).await.unwrap();
                let mut got: Vec<String> = page.items.into_iter().map(|t| t.name).collect();
                got.sort();
                let mut want: Vec<String> = created
                    .iter()
                    .filter(|n| n.starts_with(p.as_str()) == include)
                    .cloned()
                    .collect();
                want.sort();
                assert_eq!(got, want, "prefix {p:?} include={include}");
                assert_eq!(page.total_count as usize, want.len());
            }
        }
    }

    #[test]
    fn prefix_filters_are_literal() {
        use proptest::test_runner::{Config, TestRunner};
        // One runtime and one database for all cases: each case works in an
        // account of its own.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dbs = rt.block_on(async {
            let mut dbs = vec![TestDb::sqlite().await];
            if std::env::var(PG_ENV).is_ok() {
                dbs.push(TestDb::postgres().await.unwrap());
            }
            dbs
        });
        let strategy = (
            proptest::collection::vec(name_strategy(), 1..12),
            proptest::collection::vec(name_strategy(), 1..4),
        );
        let mut runner = TestRunner::new(Config::with_cases(32));
        runner
            .run(&strategy, |(names, mut prefixes)| {
                // Prefixes of existing names are the interesting ones.
                for n in names.iter().take(3) {
                    prefixes.push(n.chars().take(2).collect());
                }
                rt.block_on(async {
                    for db in &dbs {
                        check_prefixes(&db.store, &names, &prefixes).await;
                    }
                });
                Ok(())
            })
            .unwrap();
        rt.block_on(async {
            for db in &dbs {
                db.store.close().await;
            }
        });
        drop(dbs);
    }
}
