//! Preserved tables against real clusters: validation, the initial copy, the
//! real-time sync under concurrent writers, the trigger's failure isolation,
//! sequences and foreign-key checks.

mod common;

use std::process::Output;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::writers::{USERS, assert_no_writer_errors, start_writers, sync_phase_window};
use common::{TestDb, TestDbs, Workdir};
use pgshift::prepare::sync::{self, SyncedTable};
use tokio_postgres::Client;

/// `pgshift prepare` from `dbs.src` into `dbs.dst`, extra arguments appended.
fn prepare(dbs: &TestDbs, extra: &[&str]) -> Output {
    Workdir::new().prepare(dbs, extra)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_prepared(out: &Output) {
    assert!(
        out.status.success(),
        "prepare failed ({:?}): {}",
        out.status.code(),
        stderr(out)
    );
}

/// What prepare stored for the swap: the synced tables and the deferred SQL.
async fn recorded(c: &Client) -> (Vec<SyncedTable>, Vec<String>) {
    let r = c
        .query_one(
            "SELECT state->'extra'->'sync', state->'extra'->'deferred_sql' FROM pgshift.migration ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let s: serde_json::Value = r.get(0);
    let d: serde_json::Value = r.get(1);
    (
        serde_json::from_value(s).unwrap(),
        serde_json::from_value(d).unwrap(),
    )
}

async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

/// Rows in one table and not the other, both ways, over `cols`.
async fn differences(c: &Client, table: &str, cols: &str) -> i64 {
    count(
        c,
        &format!(
            "SELECT (SELECT count(*) FROM (SELECT {cols} FROM public.{table} EXCEPT SELECT {cols} FROM shadow.{table}) a)
                  + (SELECT count(*) FROM (SELECT {cols} FROM shadow.{table} EXCEPT SELECT {cols} FROM public.{table}) b)"
        ),
    )
    .await
}

async fn pgshift_triggers(c: &Client) -> i64 {
    count(
        c,
        "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'pgshift%'",
    )
    .await
}

/// Everything in the catalog that prepare could create or change.
fn fingerprint(db: &TestDb) -> String {
    db.psql(
        "SELECT (SELECT count(*) FROM pg_namespace), (SELECT count(*) FROM pg_class),
                (SELECT count(*) FROM pg_trigger), (SELECT count(*) FROM pg_proc),
                (SELECT count(*) FROM pg_type), (SELECT max(xmin::text::bigint) FROM pg_class),
                (SELECT count(*) FROM pg_namespace WHERE nspname IN ('shadow', 'pgshift'))",
    )
}

// ---------------------------------------------------------------------------------------
// 1. Validation
// ---------------------------------------------------------------------------------------

/// A type with an explicit-only cast from text (semver's, here a string-like
/// type of a schema both sides have) is no assignment target, although
/// PostgreSQL would convert text to a string type through I/O when no cast
/// says otherwise: prepare took it for one and failed in its sync phase
/// (`column "version" is of type ext.vers but expression is of type text`).
/// It is refused up front now, changing nothing.
#[test]
fn an_explicit_only_cast_from_text_is_refused_up_front() {
    let dbs = TestDbs::new("preserved_explicit_cast");
    let ext = "CREATE SCHEMA ext;
         CREATE TYPE ext.vers;
         CREATE FUNCTION ext.vers_in(cstring) RETURNS ext.vers AS 'textin' LANGUAGE internal IMMUTABLE STRICT;
         CREATE FUNCTION ext.vers_out(ext.vers) RETURNS cstring AS 'textout' LANGUAGE internal IMMUTABLE STRICT;
         CREATE TYPE ext.vers (INPUT = ext.vers_in, OUTPUT = ext.vers_out, LIKE = text, CATEGORY = 'S');
         CREATE CAST (text AS ext.vers) WITHOUT FUNCTION;";
    dbs.src.psql(ext);
    dbs.dst.psql(ext);
    dbs.src
        .psql("CREATE TABLE pkg (id int PRIMARY KEY, version ext.vers);");
    dbs.dst.psql(
        "CREATE TABLE pkg (id int PRIMARY KEY, version text);
         INSERT INTO pkg VALUES (1, '1.0.0');",
    );
    let before = fingerprint(&dbs.dst);
    let out = prepare(&dbs, &["--preserved-tables", "pkg"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("pkg.version: destination type text cannot be converted to the source's type ext.vers by assignment"),
        "{err}"
    );
    assert_eq!(fingerprint(&dbs.dst), before, "the destination changed");
}

#[test]
fn validation_lists_every_problem_and_changes_nothing() {
    let dbs = TestDbs::new("pres_validate");
    dbs.src.psql(
        "CREATE TYPE mood AS ENUM ('happy', 'sad');
         CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, score int, mood mood,
                             tier int NOT NULL, note text NOT NULL DEFAULT '');
         CREATE TABLE nokey (id int, v text);
         CREATE TABLE badtype (id int PRIMARY KEY, data jsonb);
         CREATE TABLE keys_differ (id int PRIMARY KEY, email text NOT NULL);
         CREATE TABLE only_in_source (id int PRIMARY KEY);
         CREATE TABLE parent_t (id int PRIMARY KEY);
         CREATE TABLE fine (id int PRIMARY KEY, v bigint);",
    );
    dbs.dst.psql(
        "CREATE TYPE mood AS ENUM ('happy', 'sad', 'angry');
         CREATE TABLE users (id serial PRIMARY KEY, name text, score text, mood mood);
         INSERT INTO users (name) VALUES ('a');
         CREATE TABLE nokey (id int, v text);
         CREATE TABLE badtype (id int PRIMARY KEY, data point);
         CREATE TABLE keys_differ (id int, email text PRIMARY KEY);
         CREATE TABLE only_in_dest (id int PRIMARY KEY);
         CREATE TABLE parent_t (id int PRIMARY KEY);
         CREATE TABLE child_t () INHERITS (parent_t);
         CREATE TABLE fine (id int PRIMARY KEY, v int);",
    );
    let before = fingerprint(&dbs.dst);
    let out = prepare(
        &dbs,
        &[
            "--preserved-tables",
            "users,nokey,badtype,keys_differ,only_in_source,only_in_dest,parent_t,fine",
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for expected in [
        "users.score: destination type text cannot be converted to the source's type integer",
        "users.mood: the source's enum type mood lacks labels the destination's rows may hold: 'angry'",
        "users.tier: only in the source, NOT NULL and without a default",
        "nokey: no primary key or unique NOT NULL key with the same columns on both sides (destination: none; source: none)",
        "badtype.data: destination type point cannot be converted to the source's type jsonb",
        "keys_differ: no primary key or unique NOT NULL key with the same columns on both sides (destination: (email); source: (id))",
        "only_in_source: no such table in the destination's public schema",
        "only_in_dest: not in the source's public schema",
        "parent_t: the destination's table has inheritance parents or children",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(
        err.contains("9 problems found, nothing was changed"),
        "{err}"
    );
    // Nothing about the fine table, nor about users.note (NOT NULL with a default).
    assert!(!err.contains("fine"), "{err}");
    assert!(!err.contains("users.note"), "{err}");
    // One line per problem.
    let lines = err.lines().filter(|l| l.starts_with("  ")).count();
    assert_eq!(lines, 9, "{err}");
    assert_eq!(fingerprint(&dbs.dst), before, "the destination changed");

    // One problem is one line; a table on neither side is one problem.
    for (name, expected) in [
        (
            "nosuch",
            "error: --preserved-tables: nosuch: no such table in the destination's public schema, nor in the source's; nothing was changed",
        ),
        (
            "only_in_dest",
            "error: --preserved-tables: only_in_dest: not in the source's public schema",
        ),
    ] {
        let out = prepare(&dbs, &["--preserved-tables", name]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "{err}");
        assert!(!err.lines().any(|l| l.starts_with("  ")), "{err}");
        assert!(errors[0].starts_with(expected), "{err}");
    }
    assert_eq!(fingerprint(&dbs.dst), before, "the destination changed");

    // Names are identifiers, never SQL: refused while parsing the flags.
    for (name, why) in [
        ("users;drop table fine", "semicolon"),
        ("\"us\"\"ers\"", "quote"),
        ("users'", "quote"),
    ] {
        let out = prepare(&dbs, &["--preserved-tables", name]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains("--preserved-tables"), "{err}");
        assert!(err.contains(why), "{name}: {err}");
    }
    assert_eq!(fingerprint(&dbs.dst), before, "the destination changed");
    assert_eq!(dbs.dst.query_one_string("SELECT count(*) FROM fine"), "0");
}

// ---------------------------------------------------------------------------------------
// 2. Initial copy and real-time sync
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_copy_then_real_time_sync_then_abort() {
    let dbs = TestDbs::new("pres_sync");
    dbs.src.psql(
        "CREATE TYPE mood AS ENUM ('happy', 'sad', 'angry', 'meh');
         CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, score bigint, mood mood,
                             bio text DEFAULT 'new', tags text[]);
         INSERT INTO users (name) SELECT 'src' || g FROM generate_series(1, 50) g;
         CREATE TABLE \"Sessions\" (token text PRIMARY KEY, user_id int REFERENCES users (id), seen timestamptz);
         CREATE TABLE other (id int PRIMARY KEY);
         INSERT INTO other VALUES (1), (2);",
    );
    dbs.dst.psql(
        "CREATE TYPE mood AS ENUM ('happy', 'sad');
         CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, score int, mood mood,
                             legacy text, tags text[]);
         INSERT INTO users (name, score, mood, legacy, tags)
              SELECT 'dst' || g, g, CASE WHEN g % 2 = 0 THEN 'happy' ELSE 'sad' END::mood, 'x', ARRAY['t' || g]
                FROM generate_series(1, 200) g;
         CREATE TABLE \"Sessions\" (token text PRIMARY KEY, user_id int, seen timestamptz);
         INSERT INTO \"Sessions\" VALUES ('a', 1, now()), ('b', 2, now());",
    );
    let out = prepare(&dbs, &["--preserved-tables", "users,\"Sessions\""]);
    assert_prepared(&out);
    let c = dbs.dst.client().await;
    let cols = "id, name, score, mood::text, tags";

    // The destination's rows, not the source's; source-only columns get defaults.
    assert_eq!(count(&c, "SELECT count(*) FROM shadow.users").await, 200);
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM shadow.users WHERE name LIKE 'dst%' AND bio = 'new'"
        )
        .await,
        200
    );
    assert_eq!(differences(&c, "users", cols).await, 0);
    assert_eq!(
        count(&c, "SELECT count(*) FROM shadow.\"Sessions\"").await,
        2
    );
    assert_eq!(
        count(&c, "SELECT count(*) FROM shadow.other").await,
        2,
        "other tables come from the source"
    );

    let (synced, _) = recorded(&c).await;
    assert_eq!(synced.len(), 2);
    let users = synced.iter().find(|t| t.name == "users").unwrap();
    assert_eq!(users.key, ["id"]);
    assert!(!users.columns.contains(&"legacy".to_string()));
    assert!(!users.columns.contains(&"bio".to_string()));
    let h = sync::health(&c, &synced).await.unwrap();
    for t in &h {
        assert!(t.triggers_ok, "{t}");
        assert_eq!(t.pending, Some(0), "{t}");
        assert_eq!(t.rows_public, t.rows_shadow, "{t}");
    }

    // Real time: every change is in shadow as soon as it commits.
    let id: i32 = c
        .query_one(
            "INSERT INTO users (name, mood) VALUES ('live', 'happy') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        count(
            &c,
            &format!("SELECT count(*) FROM shadow.users WHERE id = {id} AND name = 'live' AND bio = 'new'")
        )
        .await,
        1
    );
    c.batch_execute("UPDATE users SET name = 'renamed', score = 999, mood = 'happy' WHERE id = 5")
        .await
        .unwrap();
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM shadow.users WHERE id = 5 AND name = 'renamed' AND score = 999"
        )
        .await,
        1
    );
    c.batch_execute("UPDATE users SET id = 10000 WHERE id = 6")
        .await
        .unwrap();
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM shadow.users WHERE id IN (6, 10000)"
        )
        .await,
        1
    );
    assert_eq!(
        count(&c, "SELECT count(*) FROM shadow.users WHERE id = 10000").await,
        1
    );
    c.batch_execute("DELETE FROM users WHERE id = 7")
        .await
        .unwrap();
    c.batch_execute("UPDATE users SET score = score + 1 WHERE id <= 50")
        .await
        .unwrap();
    // Many keys changing in one statement.
    c.batch_execute("UPDATE users SET id = -id WHERE id BETWEEN 100 AND 110")
        .await
        .unwrap();
    assert_eq!(differences(&c, "users", cols).await, 0);

    // Health: 1 insert + 1 update + 2 keys of the key change + 1 delete + 48
    // updates (ids 6 and 7 are gone) + 22 keys of the negation.
    let h = sync::health(&c, &synced).await.unwrap();
    let hu = h.iter().find(|t| t.table == "users").unwrap();
    assert_eq!(hu.pending, Some(1 + 1 + 2 + 1 + 48 + 22), "{hu}");
    assert_eq!(hu.rows_public, Some(200));
    assert_eq!(hu.rows_shadow, Some(200));
    let replayed = sync::catch_up(&c, &synced).await.unwrap();
    assert_eq!(replayed, 75);
    assert_eq!(differences(&c, "users", cols).await, 0);
    let h = sync::health(&c, &synced).await.unwrap();
    assert!(h.iter().all(|t| t.in_sync()), "{h:?}");

    // TRUNCATE (and a mixed-case name).
    c.batch_execute("TRUNCATE \"Sessions\"").await.unwrap();
    assert_eq!(
        count(&c, "SELECT count(*) FROM shadow.\"Sessions\"").await,
        0
    );
    c.batch_execute("INSERT INTO \"Sessions\" VALUES ('c', 3, now())")
        .await
        .unwrap();
    let h = sync::health(&c, &synced).await.unwrap();
    let hs = h.iter().find(|t| t.table == "Sessions").unwrap();
    assert_eq!(hs.pending, Some(2), "{hs}");
    assert_eq!(hs.rows_shadow, Some(1), "{hs}");
    sync::catch_up(&c, &synced).await.unwrap();
    assert_eq!(
        differences(&c, "\"Sessions\"", "token, user_id, seen").await,
        0
    );
    let sessions = synced.iter().find(|t| t.name == "Sessions").unwrap();
    assert_eq!(
        count(
            &c,
            &format!("SELECT count(*) FROM pgshift.log_{}", sessions.oid)
        )
        .await,
        0
    );

    // The sync lives in the database: another session's writes are synced too,
    // also under session_replication_role = replica (ENABLE ALWAYS).
    dbs.dst.psql(
        "SET session_replication_role = replica; INSERT INTO users (name) VALUES ('replica');",
    );
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM shadow.users WHERE name = 'replica'"
        )
        .await,
        1
    );

    // abort: cleanup removes triggers, changelogs, functions and shadow.
    let removed =
        pgshift::prepare::discard::remove_prepared(&c, Duration::from_secs(2), 3, None, None)
            .await
            .unwrap();
    assert!(removed.shadow);
    assert_eq!(removed.triggers.len(), 8, "{removed:?}");
    assert_eq!(pgshift_triggers(&c).await, 0);
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'pgshift' AND c.relkind IN ('r', 'S')
                AND c.relname NOT IN ('meta', 'migration', 'backups')"
        )
        .await,
        0,
        "changelogs or their sequences are left"
    );
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pgshift'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'shadow'"
        )
        .await,
        0
    );
    c.batch_execute("INSERT INTO users (name) VALUES ('after abort'); TRUNCATE \"Sessions\"")
        .await
        .unwrap();
}

/// The sync lives in the database: it keeps working across a destination
/// restart with no pgshift process around.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_survives_a_destination_restart() {
    if !common::can_start_clusters() {
        eprintln!("skipped: needs a private cluster (TEST_PGHOST is set)");
        return;
    }
    let (shared_src, _) = common::clusters();
    let dest = common::Cluster::start_new();
    let dbs = TestDbs::on(shared_src, &dest, "pres_restart");
    let ddl = "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL);";
    dbs.src.psql(ddl);
    dbs.dst.psql(&format!(
        "{ddl} INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, 100) g;"
    ));
    assert_prepared(&prepare(&dbs, &["--preserved-tables", "users"]));
    dest.restart();
    dbs.dst.psql(
        "INSERT INTO users (name) VALUES ('after restart'); DELETE FROM users WHERE id = 1;
         UPDATE users SET name = 'changed' WHERE id = 2;",
    );
    let c = dbs.dst.client().await;
    assert_eq!(differences(&c, "users", "id, name").await, 0);
    let (synced, _) = recorded(&c).await;
    let h = sync::health(&c, &synced).await.unwrap();
    assert!(h[0].triggers_ok, "{}", h[0]);
    assert_eq!(h[0].pending, Some(3), "{}", h[0]);
    assert_eq!(h[0].rows_shadow, Some(100), "{}", h[0]);
}

// ---------------------------------------------------------------------------------------
// 3. Races: concurrent writers during prepare, catch-up and the final sync
// ---------------------------------------------------------------------------------------

const RACE_COLS: &str = "id, name, score, note";

fn race_setup(name: &str, rows: i64) -> TestDbs {
    let dbs = TestDbs::new(name);
    let ddl =
        "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, score int, note text);";
    dbs.src.psql(&format!(
        "{ddl} INSERT INTO users (name) SELECT 'src' || g FROM generate_series(1, 10) g;"
    ));
    dbs.dst.psql(&format!(
        "{ddl} INSERT INTO users (name, score, note) SELECT 'dst' || g, g % 100, 'n' FROM generate_series(1, {rows}) g;
         ANALYZE users;"
    ));
    dbs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_during_prepare_and_after_end_identical() {
    let rows = 200_000;
    let dbs = race_setup("pres_race", rows);
    let writers = start_writers(&dbs.dst, USERS, 3, rows).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let src = dbs.src.url();
    let dst = dbs.dst.url();
    let out = tokio::task::spawn_blocking(move || {
        let wd = Workdir::new();
        wd.cmd()
            .args([
                "prepare",
                "--source",
                &src,
                "--dest",
                &dst,
                "--preserved-tables",
                "users",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_prepared(&out);
    let c = dbs.dst.client().await;
    let (from, to) = sync_phase_window(&c).await;
    // Keep writing after prepare, then stop.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = writers.stop().await;
    assert_no_writer_errors(&stats);
    let during = stats.assert_wrote_during(from, to);

    let (synced, _) = recorded(&c).await;
    let caught_up = sync::catch_up(&c, &synced).await.unwrap();
    eprintln!(
        "race: {} writes, {during} during the {} ms sync phase, {caught_up} changelog entries caught up",
        stats.ops.load(Ordering::Relaxed),
        to - from
    );
    c.batch_execute("BEGIN; LOCK TABLE public.users, shadow.users IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    sync::final_sync(&c, &synced, &mut Default::default())
        .await
        .unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    // As the swap does after its COMMIT.
    assert_eq!(
        sync::remove_changelogs(&c, &synced, Duration::from_secs(1))
            .await
            .unwrap(),
        1
    );

    assert_eq!(differences(&c, "users", RACE_COLS).await, 0);
    assert_eq!(
        count(&c, "SELECT count(*) FROM public.users").await,
        count(&c, "SELECT count(*) FROM shadow.users").await
    );
    assert!(
        count(
            &c,
            "SELECT count(*) FROM shadow.users WHERE name LIKE 'src%'"
        )
        .await
            == 0
    );
    assert!(
        count(
            &c,
            "SELECT count(*) FROM shadow.users WHERE name = 'rolled back' OR name = 'gone'"
        )
        .await
            == 0
    );
    assert_eq!(pgshift_triggers(&c).await, 0);
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pgshift'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &c,
            &format!(
                "SELECT count(*) FROM pg_class WHERE relname LIKE 'log\\_{}%'",
                synced[0].oid
            )
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_keep_running_through_the_final_sync() {
    let rows = 100_000;
    let dbs = race_setup("pres_race_final", rows);
    let writers = start_writers(&dbs.dst, USERS, 3, rows).await;
    let src = dbs.src.url();
    let dst = dbs.dst.url();
    let out = tokio::task::spawn_blocking(move || {
        let wd = Workdir::new();
        wd.cmd()
            .args([
                "prepare",
                "--source",
                &src,
                "--dest",
                &dst,
                "--preserved-tables",
                "users",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_prepared(&out);
    let c = dbs.dst.client().await;
    let (synced, _) = recorded(&c).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    sync::catch_up(&c, &synced).await.unwrap();

    // The swap's transaction, with the writers still going.
    c.batch_execute("BEGIN; LOCK TABLE public.users, shadow.users IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let locked_at = Instant::now();
    let ops_at_lock = writers.stats.ops.load(Ordering::Relaxed);
    sync::final_sync(&c, &synced, &mut Default::default())
        .await
        .unwrap();
    // Under the lock: identical, and the writers are waiting.
    assert_eq!(differences(&c, "users", RACE_COLS).await, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ops_under_lock = writers.stats.ops.load(Ordering::Relaxed) - ops_at_lock;
    assert!(
        ops_under_lock <= 3,
        "{ops_under_lock} writes went through the lock"
    );
    c.batch_execute("COMMIT").await.unwrap();
    let held = locked_at.elapsed();
    let ops_at_commit = writers.stats.ops.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let stats = writers.stop().await;
    assert_no_writer_errors(&stats);
    assert!(
        stats.ops.load(Ordering::Relaxed) > ops_at_commit + 20,
        "the writers did not continue after the commit"
    );
    assert!(held < Duration::from_secs(10), "lock held {held:?}");
    assert_eq!(pgshift_triggers(&c).await, 0);
}

// ---------------------------------------------------------------------------------------
// 4. The trigger cannot break the application
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_shadow_apply_never_fails_the_application() {
    let dbs = TestDbs::new("pres_isolation");
    let ddl = "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, score int);";
    dbs.src.psql(ddl);
    dbs.dst.psql(&format!(
        "{ddl} INSERT INTO users (name, score) SELECT 'u' || g, g FROM generate_series(1, 100) g;"
    ));
    assert_prepared(&prepare(&dbs, &["--preserved-tables", "users"]));
    let c = dbs.dst.client().await;
    let (synced, _) = recorded(&c).await;
    let log = format!("pgshift.log_{}", synced[0].oid);

    // (a) A constraint the shadow apply violates.
    c.batch_execute("ALTER TABLE shadow.users ADD CONSTRAINT no_big CHECK (score < 1000)")
        .await
        .unwrap();
    let app = dbs.dst.client().await;
    app.batch_execute("UPDATE users SET score = 5000 WHERE id = 1")
        .await
        .expect("the application's write must succeed");
    assert_eq!(
        count(&c, "SELECT score::bigint FROM public.users WHERE id = 1").await,
        5000
    );
    assert_eq!(
        count(&c, "SELECT score::bigint FROM shadow.users WHERE id = 1").await,
        1
    );
    assert_eq!(
        count(&c, &format!("SELECT count(*) FROM {log} WHERE k1 = 1")).await,
        1
    );
    // The replay reports it, loudly.
    let err = sync::catch_up(&c, &synced).await.unwrap_err();
    assert!(format!("{err:#}").contains("no_big"), "{err:#}");
    c.batch_execute("ALTER TABLE shadow.users DROP CONSTRAINT no_big")
        .await
        .unwrap();
    sync::catch_up(&c, &synced).await.unwrap();
    assert_eq!(
        count(&c, "SELECT score::bigint FROM shadow.users WHERE id = 1").await,
        5000
    );
    assert_eq!(count(&c, &format!("SELECT count(*) FROM {log}")).await, 0);

    // (b) A lock held on the shadow table: the write waits at most the apply's
    // lock_timeout, succeeds, and keeps the caller's own lock_timeout.
    let locker = dbs.dst.client().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE shadow.users IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = Instant::now();
    app.batch_execute("BEGIN; SET LOCAL lock_timeout = '7s'")
        .await
        .unwrap();
    let id: i32 = app
        .query_one(
            "INSERT INTO users (name, score) VALUES ('locked', 1) RETURNING id",
            &[],
        )
        .await
        .expect("the application's write must succeed")
        .get(0);
    let lt: String = app
        .query_one("SHOW lock_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(lt, "7s", "the trigger changed the caller's lock_timeout");
    app.batch_execute("COMMIT").await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        count(
            &c,
            &format!("SELECT count(*) FROM shadow.users WHERE id = {id}")
        )
        .await,
        0
    );
    assert_eq!(
        count(&c, &format!("SELECT count(*) FROM {log} WHERE k1 = {id}")).await,
        1
    );
    sync::catch_up(&c, &synced).await.unwrap();
    assert_eq!(differences(&c, "users", "id, name, score").await, 0);

    // (c) Every statement kind with the apply failing (the shadow table renamed
    // away): all succeed, all are replayed.
    c.batch_execute("ALTER TABLE shadow.users RENAME TO users_away")
        .await
        .unwrap();
    app.batch_execute(
        "INSERT INTO users (name) VALUES ('x'); UPDATE users SET score = -1 WHERE id < 10;
         UPDATE users SET id = id + 1000 WHERE id = 50; DELETE FROM users WHERE id = 60;
         TRUNCATE users; INSERT INTO users (name) VALUES ('after truncate');",
    )
    .await
    .expect("the application's writes must succeed");
    c.batch_execute("ALTER TABLE shadow.users_away RENAME TO users")
        .await
        .unwrap();
    sync::catch_up(&c, &synced).await.unwrap();
    assert_eq!(differences(&c, "users", "id, name, score").await, 0);
    assert_eq!(count(&c, "SELECT count(*) FROM shadow.users").await, 1);
}

// ---------------------------------------------------------------------------------------
// 5. Sequences
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_continue_after_both_sides() {
    let dbs = TestDbs::new("pres_seq");
    dbs.src.psql(
        "CREATE TABLE users (id serial PRIMARY KEY, name text);
         SELECT setval('users_id_seq', 5000);
         CREATE TABLE sessions (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
         INSERT INTO sessions (v) SELECT 's' FROM generate_series(1, 10);
         CREATE TABLE accounts (id serial PRIMARY KEY, v text);
         SELECT setval('accounts_id_seq', 50);
         -- A column the destination's table lacks, drawing from a sequence
         -- it does not own: filling it for the destination's rows draws from
         -- the shadow's sequence, which validation allows.
         CREATE SEQUENCE member_no START 1000;
         CREATE TABLE members (id int PRIMARY KEY, no bigint NOT NULL DEFAULT nextval('member_no'));
         INSERT INTO members (id) SELECT generate_series(1, 100);",
    );
    dbs.dst.psql(
        "CREATE TABLE users (id serial PRIMARY KEY, name text);
         INSERT INTO users (name) SELECT 'u' FROM generate_series(1, 300);
         CREATE TABLE sessions (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
         INSERT INTO sessions (v) SELECT 'd' FROM generate_series(1, 2000);
         CREATE TABLE accounts (id int PRIMARY KEY, v text);
         INSERT INTO accounts SELECT g, 'a' FROM generate_series(1, 700) g;
         CREATE TABLE members (id int PRIMARY KEY);
         INSERT INTO members SELECT generate_series(1, 50);",
    );
    assert_prepared(&prepare(
        &dbs,
        &["--preserved-tables", "users,sessions,accounts,members"],
    ));
    let c = dbs.dst.client().await;
    let (synced, _) = recorded(&c).await;
    assert_eq!(synced.iter().map(|t| t.sequences.len()).sum::<usize>(), 4);
    c.batch_execute(
        "BEGIN; LOCK TABLE public.users, shadow.users, public.sessions, shadow.sessions,
                           public.accounts, shadow.accounts, public.members, shadow.members
                           IN ACCESS EXCLUSIVE MODE",
    )
    .await
    .unwrap();
    sync::final_sync(&c, &synced, &mut Default::default())
        .await
        .unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    // Each sequence reads like the one it continues: pg_sequences shows its
    // last value (the source's, the destination's, the column's largest).
    let last: Vec<String> = c
        .query(
            "SELECT sequencename || '=' || coalesce(last_value::text, 'null') FROM pg_sequences
              WHERE schemaname = 'shadow' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        last,
        vec![
            "accounts_id_seq=700",
            "member_no=1149",
            "sessions_id_seq=2000",
            "users_id_seq=5000"
        ]
    );
    // Source 5000 > destination 300.
    assert_eq!(
        count(&c, "SELECT nextval('shadow.users_id_seq')").await,
        5001
    );
    // Destination 2000 > source 10 (identity, GENERATED ALWAYS).
    assert_eq!(
        count(
            &c,
            "INSERT INTO shadow.sessions (v) VALUES ('new') RETURNING id::bigint"
        )
        .await,
        2001
    );
    // No sequence on the destination's column: past its largest value.
    assert_eq!(
        count(&c, "SELECT nextval('shadow.accounts_id_seq')").await,
        701
    );
}

// ---------------------------------------------------------------------------------------
// 6. Foreign keys
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_key_violations_are_reported_and_not_valid_works() {
    let dbs = TestDbs::new("pres_fk");
    dbs.src.psql(
        "CREATE TABLE orgs (id int PRIMARY KEY);
         INSERT INTO orgs VALUES (1), (2);
         CREATE TABLE users (id int PRIMARY KEY, org_id int REFERENCES orgs (id));
         INSERT INTO users SELECT g, 1 FROM generate_series(1, 10) g;
         CREATE TABLE orders (id int PRIMARY KEY, user_id int CONSTRAINT orders_user_fk REFERENCES users (id));
         INSERT INTO orders SELECT g, (g % 10) + 1 FROM generate_series(1, 100) g;
         INSERT INTO orders VALUES (1000, NULL);",
    );
    dbs.dst.psql(
        "CREATE TABLE users (id int PRIMARY KEY, org_id int);
         INSERT INTO users SELECT g, CASE WHEN g = 5 THEN 3 ELSE 1 END FROM generate_series(1, 5) g;",
    );
    assert_prepared(&prepare(&dbs, &["--preserved-tables", "users"]));
    let c = dbs.dst.client().await;
    let (_, deferred) = recorded(&c).await;
    let pairs = pgshift::pg::meta::schema_pairs(&["public".to_string()]);
    let mut v = sync::fk_violations(&c, &deferred, &pairs)
        .await
        .unwrap()
        .violations;
    v.sort_by(|a, b| a.constraint.cmp(&b.constraint));
    assert_eq!(v.len(), 2, "{v:?}");
    assert_eq!(v[0].constraint, "orders_user_fk");
    assert_eq!(
        (v[0].schema.as_str(), v[0].table.as_str()),
        ("public", "orders")
    );
    assert_eq!(v[0].referenced_table, "users");
    // Users 6..10 are missing: 50 orders (the NULL one is fine).
    assert_eq!(v[0].count, 50);
    assert_eq!(v[0].examples, ["(10)", "(6)", "(7)", "(8)", "(9)"]);
    assert_eq!(v[1].constraint, "users_org_id_fkey");
    assert_eq!(v[1].count, 1);
    assert_eq!(v[1].examples, ["(3)"]);
    assert!(v[0].to_string().starts_with("orders_user_fk: 50 rows of orders (user_id) reference no row of users (id), e.g. (user_id)=(10)"), "{}", v[0]);
    let json = serde_json::to_value(&v[0]).unwrap();
    assert_eq!(json["count"], 50);

    // NOT VALID: the statement runs, the constraint exists unvalidated, and
    // validating it fails.
    let leaves = sync::deferred_leaves(&c, &deferred).await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    let created = sync::apply_deferred(
        &c,
        &deferred,
        &pgshift::pg::meta::schema_pairs(&pgshift::pg::meta::default_schemas()),
        &leaves,
    )
    .await
    .unwrap();
    assert_eq!(created.len(), 2, "{created:?}");
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM pg_constraint WHERE conname IN ('orders_user_fk', 'users_org_id_fkey')
                AND NOT convalidated AND connamespace = 'shadow'::regnamespace"
        )
        .await,
        2
    );
    let orders_fk = created
        .iter()
        .find(|f| f.constraint == "orders_user_fk")
        .unwrap();
    c.batch_execute("SAVEPOINT v").await.unwrap();
    let err = c
        .batch_execute(&orders_fk.validate_sql("shadow"))
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("orders_user_fk"), "{err:?}");
    c.batch_execute("ROLLBACK").await.unwrap();

    // not_valid output runs on its own too.
    let fk_sql = deferred
        .iter()
        .find(|s| s.contains("orders_user_fk") && s.contains("FOREIGN KEY"))
        .unwrap();
    let nv = sync::not_valid(fk_sql).unwrap();
    assert!(nv.contains("NOT VALID"));
    c.batch_execute(&nv).await.unwrap();
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM pg_constraint WHERE conname = 'orders_user_fk' AND NOT convalidated"
        )
        .await,
        1
    );
}
