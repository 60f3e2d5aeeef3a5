//! `start` under a live application: clients holding prepared statements keep
//! working through prepare and the swap, every insert into a preserved table
//! survives, and afterwards the clients read the new tables.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{TestDbs, Workdir};
use tokio::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_under_a_live_client_loses_nothing() {
    let dbs = TestDbs::new("start_live");
    dbs.src.create_extensions();
    dbs.dst.create_extensions();
    // The source: new catalogue data, a users table with one more column.
    dbs.src.psql(
        "CREATE TABLE items (id int PRIMARY KEY, label text NOT NULL, geom geometry(Point, 4326));
         INSERT INTO items SELECT g, 'new ' || g, ST_SetSRID(ST_MakePoint(g, g), 4326) FROM generate_series(1, 20000) g;
         CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE, plan text NOT NULL DEFAULT 'free');
         INSERT INTO users (email) SELECT 'src' || g || '@x' FROM generate_series(1, 50) g;",
    );
    // The destination: old catalogue, live users.
    dbs.dst.psql(
        "CREATE TABLE items (id int PRIMARY KEY, label text NOT NULL, geom geometry(Point, 4326));
         INSERT INTO items SELECT g, 'old ' || g, ST_SetSRID(ST_MakePoint(g, g), 4326) FROM generate_series(1, 1000) g;
         CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE);
         INSERT INTO users (email) SELECT 'dst' || g || '@x' FROM generate_series(1, 200) g;",
    );

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let committed = Arc::new(Mutex::new(Vec::<String>::new()));
    let reads = Arc::new(AtomicU64::new(0));
    let last_label = Arc::new(Mutex::new(String::new()));
    let mut clients = Vec::new();
    // Two writers inserting users through a prepared statement.
    for w in 0..2 {
        let client = dbs.dst.client().await;
        let (stop, errors, committed) = (stop.clone(), errors.clone(), committed.clone());
        clients.push(tokio::spawn(async move {
            let stmt = client
                .prepare("INSERT INTO users (email) VALUES ($1) RETURNING id")
                .await
                .unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let email = format!("live-{w}-{n}@x");
                match client.query_one(&stmt, &[&email]).await {
                    Ok(_) => committed.lock().await.push(email),
                    Err(e) => errors.lock().await.push(format!("insert {email}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    // A reader with a prepared statement over a table the swap replaces, using PostGIS.
    {
        let client = dbs.dst.client().await;
        let (stop, errors, reads, last_label) = (
            stop.clone(),
            errors.clone(),
            reads.clone(),
            last_label.clone(),
        );
        clients.push(tokio::spawn(async move {
            let stmt = client
                .prepare("SELECT label, ST_AsText(geom) FROM items WHERE id = $1")
                .await
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                match client.query_one(&stmt, &[&7i32]).await {
                    Ok(row) => {
                        let label: String = row.get(0);
                        let wkt: String = row.get(1);
                        if wkt != "POINT(7 7)" {
                            errors.lock().await.push(format!("bad geometry {wkt}"));
                        }
                        *last_label.lock().await = label;
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.lock().await.push(format!("read: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*last_label.lock().await, "old 7");

    let (src_url, dst_url) = (dbs.src.url(), dbs.dst.url());
    let wd = Workdir::new();
    let mut cmd = wd.cmd();
    cmd.args([
        "start",
        "--source",
        &src_url,
        "--dest",
        &dst_url,
        "--preserved-tables",
        "users",
        "--json",
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "start failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Keep the clients going on the new tables for a moment.
    let reads_at_swap = reads.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let errors = errors.lock().await.clone();
    assert!(errors.is_empty(), "client errors: {errors:?}");
    assert!(
        reads.load(Ordering::Relaxed) > reads_at_swap,
        "the reader stopped reading"
    );
    // The reader's prepared statement now reads the new table.
    assert_eq!(*last_label.lock().await, "new 7");
    // Every committed insert is in the new public table, with the source's default.
    let committed = committed.lock().await.clone();
    assert!(
        committed.len() > 20,
        "too few inserts to prove anything: {}",
        committed.len()
    );
    let client = dbs.dst.client().await;
    let present: Vec<String> = client
        .query(
            "SELECT email FROM public.users WHERE email LIKE 'live-%' AND plan = 'free'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<&String> = committed.iter().filter(|e| !present.contains(e)).collect();
    assert!(
        missing.is_empty(),
        "{} committed inserts missing after the swap: {missing:?}",
        missing.len()
    );
    assert_eq!(present.len(), committed.len(), "ghost rows in users");
    // The destination's own users are there, the source's are not.
    let n: i64 = client
        .query_one("SELECT count(*) FROM users WHERE email LIKE 'dst%'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 200);
    let n: i64 = client
        .query_one("SELECT count(*) FROM users WHERE email LIKE 'src%'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // An insert relying on the sequence default still works (no duplicate key).
    client
        .execute("INSERT INTO users (email) VALUES ('after@x')", &[])
        .await
        .unwrap();
    // No pgshift trigger remains on any table.
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgshift%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}
