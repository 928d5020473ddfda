use culvert_store::*;
use std::time::Instant;

#[tokio::test]
#[ignore]
async fn scratch_plans() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("s.db");
    let store = Store::open(&format!("sqlite://{}", path.display())).await.unwrap();
    let acc = store.create_account("a").await.unwrap();
    let acc2 = store.create_account("b").await.unwrap();
    let mut c = rusqlite::Connection::open(&path).unwrap();
    let tx = c.transaction().unwrap();
    for (a, n) in [(&acc.id, 10_000), (&acc2.id, 3000)] {
        for i in 0..n {
            let ty = if i % 10 == 0 { "warp_connector" } else { "cfd_tunnel" };
            tx.execute("INSERT INTO tunnels (id, account_id, name, tun_type, config_src, secret, metadata, created_at, deleted_at, conns_active_at, conns_inactive_at, status, ha) VALUES (?1, ?2, ?3, ?4, 'local', '00', '{}', ?5, NULL, NULL, ?5, 'inactive', 0)",
                rusqlite::params![uuid::Uuid::new_v4().to_string(), a, format!("t-{i}"), ty, 1_000_000 + i as i64 / 3]).unwrap();
        }
    }
    tx.commit().unwrap();
    if std::env::var("DROPIDX").is_ok() { c.execute_batch("DROP INDEX tunnels_account_type_created").unwrap(); }
    if std::env::var("ANALYZE").is_ok() { c.execute_batch("ANALYZE").ok(); }
    let sqls = std::env::var("SQLS").unwrap();
    for sql in sqls.split(";;") {
        let sql = sql.trim().replace("ACC", &format!("'{}'", acc.id));
        if sql.is_empty() { continue; }
        println!("== {sql}");
        let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows: Vec<String> = st.query_map([], |r| r.get::<_, String>(3)).unwrap().map(|r| r.unwrap()).collect();
        for r in rows { println!("   {r}"); }
        let mut st = c.prepare(&sql).unwrap();
        let t = Instant::now();
        let mut n = 0;
        for _ in 0..20 { n = st.query_map([], |_| Ok(())).unwrap().count(); }
        println!("   rows {n}, {:?}/query", t.elapsed() / 20);
    }
}
