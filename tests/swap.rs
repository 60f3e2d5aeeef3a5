//! The swap's lock strategy, one-run-at-a-time, and dry runs.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{TestDbs, Workdir, assert_success, catalog_fingerprint};

fn setup(name: &str) -> TestDbs {
    let dbs = TestDbs::new(name);
    dbs.src.psql(
        "CREATE TABLE items (id serial PRIMARY KEY, label text);
         INSERT INTO items (label) SELECT 'new ' || g FROM generate_series(1, 200) g;
         CREATE VIEW item_labels AS SELECT label FROM items;",
    );
    dbs.dst.psql(
        "CREATE TABLE items (id serial PRIMARY KEY, label text);
         INSERT INTO items (label) SELECT 'old ' || g FROM generate_series(1, 10) g;",
    );
    dbs
}

/// Hold a lock on the destination from another session for `hold`.
fn hold_lock(dbs: &TestDbs, sql: &str, hold: Duration) -> std::thread::JoinHandle<()> {
    let info = dbs.dst.server().clone();
    let db = dbs.dst.name().to_string();
    let script = format!(
        "BEGIN; {sql}; SELECT pg_sleep({}); COMMIT;",
        hold.as_secs_f64()
    );
    let h = std::thread::spawn(move || {
        info.psql(&db, &script);
    });
    wait_for_lock(dbs, "items", None);
    h
}

/// Wait (up to 10 s) until another session holds a lock on `table` (in
/// `mode`, when given).
fn wait_for_lock(dbs: &TestDbs, table: &str, mode: Option<&str>) {
    let start = Instant::now();
    let sql = format!(
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
          WHERE c.relname = '{table}' AND l.granted AND l.pid <> pg_backend_pid(){}",
        mode.map(|m| format!(" AND l.mode = '{m}'"))
            .unwrap_or_default()
    );
    while start.elapsed() < Duration::from_secs(10) && dbs.dst.psql(&sql) == "0" {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `swap --json` with short lock waits and many retries, and `extra`.
fn swap_retrying(wd: &Workdir, dbs: &TestDbs, extra: &[&str]) -> std::process::Output {
    let url = dbs.dst.url();
    let mut args = vec![
        "swap",
        "--dest",
        &url,
        "--lock-timeout",
        "200ms",
        "--swap-retries",
        "50",
        "--json",
    ];
    args.extend(extra);
    wd.run(&args)
}

/// The report of a swap that succeeded after more than one attempt.
fn retried(out: &std::process::Output) -> serde_json::Value {
    let report: serde_json::Value = serde_json::from_str(&assert_success(out)).unwrap();
    let attempts = report["attempts"].as_u64().unwrap();
    assert!(attempts > 1, "{report}");
    // Each attempt that gave up waited out its lock wait (200 ms) holding
    // what it had locked: said beside the committing attempt's time.
    assert!(
        report["earlier_attempts_ms"].as_u64().unwrap() >= 150 * (attempts - 1),
        "{report}"
    );
    report
}

/// The swap's lock waits all end within 4/5 of `deadlock_timeout` from its
/// first lock (the lock window). Where taking the locks alone takes longer
/// than that (a tiny `deadlock_timeout`, a thousand tables), nobody holds the
/// swap up and retrying cannot help: the error says so and names the
/// setting, instead of blaming a long-running query.
#[test]
fn a_lock_window_shorter_than_taking_the_locks_names_deadlock_timeout() {
    let dbs = setup("swap_window");
    dbs.dst.psql(
        "DO $$ BEGIN FOR i IN 1..1000 LOOP
           EXECUTE format('CREATE TABLE %I (id int)', 'w_' || i);
         END LOOP; END $$;",
    );
    let wd = Workdir::new();
    assert_success(&wd.prepare(&dbs, &[]));
    let before = catalog_fingerprint(&dbs.dst);
    let db = dbs.dst.name().to_string();
    dbs.dst.psql(&format!(
        "ALTER DATABASE \"{db}\" SET deadlock_timeout = '1ms'"
    ));
    let out = wd.run(&["swap", "--dest", &dbs.dst.url(), "--swap-retries", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap();
    assert!(
        last.starts_with("error: swap failed: the swap could not take its locks after 2 attempts")
            && last.contains("nothing was changed. Taking the swap's locks alone takes longer than its lock window, 4/5 of deadlock_timeout (1ms)")
            && !last.contains("long-running query"),
        "{stderr}"
    );
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
    dbs.dst
        .psql(&format!("ALTER DATABASE \"{db}\" RESET deadlock_timeout"));
    assert_success(&wd.run(&["swap", "--dest", &dbs.dst.url()]));
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM items"), "200");
}

#[test]
fn a_held_lock_makes_the_swap_retry_then_succeed() {
    let dbs = setup("swap_retry");
    let wd = Workdir::new();
    assert_success(&wd.prepare(&dbs, &[]));
    let holder = hold_lock(&dbs, "SELECT count(*) FROM items", Duration::from_secs(3));
    let out = swap_retrying(&wd, &dbs, &[]);
    holder.join().unwrap();
    retried(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("retrying"));
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM items"), "200");
}

#[test]
fn a_lock_held_past_all_retries_fails_cleanly() {
    let dbs = setup("swap_giveup");
    let wd = Workdir::new();
    assert_success(&wd.prepare(&dbs, &[]));
    let before = catalog_fingerprint(&dbs.dst);
    let holder = hold_lock(
        &dbs,
        "LOCK TABLE items IN ACCESS SHARE MODE",
        Duration::from_secs(8),
    );
    let started = Instant::now();
    let out = wd.run_env(
        &[
            "swap",
            "--dest",
            &dbs.dst.url(),
            "--lock-timeout",
            "300ms",
            "--swap-retries",
            "3",
        ],
        &[],
    );
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap();
    assert!(
        last.starts_with("error: swap failed: the swap could not take its locks after 4 attempts"),
        "{stderr}"
    );
    // It names what it waited for and who holds it (the psql session sleeping
    // in its transaction).
    assert!(
        last.contains("; the last attempt waited for public.items, held by pid ")
            && last.contains(", active); nothing was changed"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(8), "gave up only after {took:?}");
    // Each retry's warning says what the attempt waited for, too.
    assert!(
        stderr.lines().any(
            |l| l.contains("the swap waited for public.items, held by pid ")
                && l.ends_with("; the next attempt locks it first")
        ),
        "{stderr}"
    );
    // Exactly as before: still prepared, public untouched.
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
    holder.join().unwrap();
    assert_eq!(
        dbs.dst
            .psql("SELECT status FROM pgshift.migration ORDER BY id DESC LIMIT 1"),
        "prepared"
    );
    // status says why the last swap did not go through.
    let text = assert_success(&wd.run(&["status", "--dest", &dbs.dst.url()]));
    assert!(
        text.lines().any(|l| l.starts_with("last error")
            && l.contains("the swap could not take its locks after 4 attempts")),
        "{text}"
    );
    // Once the lock is gone the swap goes through.
    assert_success(&wd.run_env(&["swap", "--dest", &dbs.dst.url()], &[]));
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM items"), "200");
}

#[test]
fn a_second_mutating_run_is_refused_naming_the_holder() {
    let dbs = setup("swap_two_runs");
    let wd1 = Workdir::new();
    let wd2 = Workdir::new();
    let mut first = wd1
        .cmd()
        .args([
            "prepare",
            "--source",
            &dbs.src.url(),
            "--dest",
            &dbs.dst.url(),
        ])
        .env("PGSHIFT_FAILPOINT", "data:sleep=4000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the first run holds the lock.
    let start = Instant::now();
    while dbs.dst.psql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgshift prepare pid=%' AND datname = current_database()",
    ) == "0"
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "first run never took the lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for args in [
        vec![
            "prepare",
            "--source",
            dbs.src.url().as_str(),
            "--dest",
            dbs.dst.url().as_str(),
        ],
        vec!["swap", "--dest", dbs.dst.url().as_str()],
    ] {
        let started = Instant::now();
        let out = wd2.run_env(&args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refusal took {:?}",
            started.elapsed()
        );
        assert!(
            stderr
                .contains("another pgshift run holds the destination's lock: pgshift prepare pid="),
            "{stderr}"
        );
        assert!(stderr.contains(&format!("pid={}", first.id())), "{stderr}");
        assert!(stderr.contains("SELECT pg_terminate_backend("), "{stderr}");
    }
    assert!(first.wait().unwrap().success());
}

/// A run lock whose pgshift process is gone (killed on this host; its
/// server session lives on until the server notices) is named so, with the
/// way out, rather than "wait for it to finish".
#[tokio::test]
async fn a_run_lock_left_by_a_process_that_is_gone_says_so() {
    let dbs = setup("swap_dead_holder");
    let mut cfg = dbs.dst.pg_config();
    cfg.application_name(format!(
        "pgshift swap pid=2147483000 host={}",
        pgshift::process::this_host()
    ));
    let (c, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    pgshift::pg::lock::acquire(&c).await.unwrap();
    let out = Workdir::new().run(&["swap", "--dest", &dbs.dst.url()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("its process (pid 2147483000) no longer runs on this host")
            && stderr.contains("end that session with SELECT pg_terminate_backend(")
            && !stderr.contains("wait for it"),
        "{stderr}"
    );
}

#[test]
fn dry_runs_change_nothing() {
    let dbs = setup("swap_dry");
    // Never analyzed nor vacuumed: its row count is unknown, not 0.
    dbs.src.psql("CREATE TABLE fresh (id int)");
    let wd = Workdir::new();
    let src_before = catalog_fingerprint(&dbs.src);
    let dst_before = catalog_fingerprint(&dbs.dst);
    let out = assert_success(&wd.run_env(
        &[
            "start",
            "--dry-run",
            "--source",
            &dbs.src.url(),
            "--dest",
            &dbs.dst.url(),
        ],
        &[],
    ));
    assert!(out.contains("items"), "{out}");
    let out = assert_success(&wd.run_env(
        &[
            "prepare",
            "--dry-run",
            "--json",
            "--source",
            &dbs.src.url(),
            "--dest",
            &dbs.dst.url(),
        ],
        &[],
    ));
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["plan"]["tables"][0]["name"], "items");
    let fresh = plan["plan"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "fresh")
        .unwrap_or_else(|| panic!("{plan}"));
    assert_eq!(fresh["estimated_rows"], 0, "{plan}");
    // PostgreSQL 14+ tells a table never counted (reltuples -1) from an empty one.
    if dbs
        .src
        .psql("SHOW server_version_num")
        .parse::<i32>()
        .unwrap()
        >= 140000
    {
        assert_eq!(fresh["estimate_unknown"], true, "{plan}");
    }
    assert_eq!(catalog_fingerprint(&dbs.src), src_before);
    assert_eq!(catalog_fingerprint(&dbs.dst), dst_before);
    assert!(
        std::fs::read_dir(wd.path()).unwrap().next().is_none(),
        "dry run wrote files"
    );

    // swap --dry-run after a real prepare prints the moves and the SQL, changes nothing.
    assert_success(&wd.prepare(&dbs, &[]));
    let prepared = catalog_fingerprint(&dbs.dst);
    // Without extensions in public the swap renames the schemas ...
    let out = assert_success(&wd.run_env(&["swap", "--dry-run", "--dest", &dbs.dst.url()], &[]));
    assert!(out.contains("ALTER SCHEMA public RENAME TO"), "{out}");
    assert!(
        out.contains("ALTER SCHEMA \"shadow\" RENAME TO public"),
        "{out}"
    );
    assert!(out.contains("LOCK TABLE"), "{out}");
    // ... and moves object by object when asked to.
    let out = assert_success(&wd.run_env(
        &[
            "swap",
            "--dry-run",
            "--swap-mode",
            "object",
            "--dest",
            &dbs.dst.url(),
        ],
        &[],
    ));
    assert!(
        out.contains("ALTER TABLE \"public\".\"items\" SET SCHEMA"),
        "{out}"
    );
    assert!(
        out.contains("ALTER TABLE \"shadow\".\"items\" SET SCHEMA \"public\""),
        "{out}"
    );
    assert!(out.contains("LOCK TABLE"), "{out}");
    assert_eq!(catalog_fingerprint(&dbs.dst), prepared);
}

#[test]
fn swap_with_nothing_prepared_is_refused() {
    let dbs = setup("swap_nothing");
    let wd = Workdir::new();
    let before = catalog_fingerprint(&dbs.dst);
    let out = wd.run_env(&["swap", "--dest", &dbs.dst.url()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "error: nothing is prepared on the destination: run `pgshift prepare` first"
    );
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
}

#[test]
fn a_shadow_changed_since_prepare_is_not_swapped() {
    let dbs = setup("swap_changed");
    let wd = Workdir::new();
    assert_success(&wd.run(&[
        "prepare",
        "--source",
        &dbs.src.url(),
        "--dest",
        &dbs.dst.url(),
    ]));
    dbs.dst.psql("DELETE FROM shadow.items WHERE id = 5");
    let before = catalog_fingerprint(&dbs.dst);
    let out = wd.run(&["swap", "--dest", &dbs.dst.url()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("items: prepared 200 rows, shadow has 199"),
        "{stderr}"
    );
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
}

/// An object of public dropped between the swap's listing and its locks: the
/// attempt fails ("does not exist"), the next one lists again and the swap
/// completes, once, in both modes.
#[test]
fn an_object_dropped_after_the_listing_makes_the_swap_list_again() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    for mode in ["rename", "object"] {
        let dbs = setup(&format!("swap_gone_{mode}"));
        // A table: the swap locks tables in both modes (views it does not lock).
        dbs.dst
            .psql("CREATE TABLE old_labels AS SELECT label FROM items");
        let wd = Workdir::new();
        assert_success(&wd.prepare(&dbs, &[]));
        let mut cmd = wd.cmd();
        cmd.args([
            "swap",
            "--json",
            "--swap-mode",
            mode,
            "--dest",
            &dbs.dst.url(),
        ])
        .env("PGSHIFT_FAILPOINT", "swap-listed:sleep=3000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn pgshift");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let mut log = common::lines_until(&mut lines, "pausing 3000 ms at swap-listed");
        dbs.dst.psql("DROP TABLE old_labels");
        log.extend(lines.map(Result::unwrap));
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{mode}: {}", log.join("\n"));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["attempts"], 2, "{mode}: {report}");
        assert_eq!(report["swap_mode"], mode, "{report}");
        assert_eq!(dbs.dst.psql("SELECT count(*) FROM items"), "200");
    }
}

/// An application transaction that updated `orders` and then inserts an order
/// (its key check locks `customers`) while the swap, holding `customers`,
/// waits for `orders`: they wait on each other. The swap's lock waits end
/// before the server's deadlock detector could act (even with a long
/// `--lock-timeout`), so the application's transaction is never the one
/// cancelled: it commits, and the swap retries and completes.
#[test]
fn an_application_transaction_is_never_the_victim_of_a_deadlock_with_the_swap() {
    let dbs = TestDbs::new("swap_deadlock");
    let ddl = "CREATE TABLE customers (id int PRIMARY KEY);
         CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES customers (id), note text);
         INSERT INTO customers SELECT generate_series(1, 5);
         INSERT INTO orders SELECT g, g, 'x' FROM generate_series(1, 5) g;";
    dbs.src.psql(ddl);
    dbs.dst.psql(ddl);
    let wd = Workdir::new();
    assert_success(&wd.prepare(&dbs, &[]));
    let info = dbs.dst.server().clone();
    let db = dbs.dst.name().to_string();
    let app = std::thread::spawn(move || {
        info.try_psql(
            &db,
            "BEGIN;
             UPDATE orders SET note = 'app' WHERE id = 1;
             SELECT pg_sleep(3);
             INSERT INTO orders VALUES (100, 2, 'app');
             COMMIT;",
        )
    });
    // Until the application holds its lock on orders.
    wait_for_lock(&dbs, "orders", Some("RowExclusiveLock"));
    let out = wd.run_env(
        &[
            "swap",
            "--dest",
            &dbs.dst.url(),
            "--lock-timeout",
            "8s",
            "--swap-retries",
            "30",
            "--allow-discard",
            "all",
            "--json",
        ],
        &[],
    );
    let app = app.join().unwrap();
    assert!(app.is_ok(), "the application's transaction failed: {app:?}");
    let report: serde_json::Value = serde_json::from_str(&assert_success(&out)).unwrap();
    assert!(report["attempts"].as_u64().unwrap() > 1, "{report}");
}

/// The same when the swap waited for another table first: it holds `events`
/// while it waits for `hold` (another session's), and an application
/// transaction that holds `users` queues behind it on `events`. When the swap
/// then waits for `users`, the application has waited longer than the swap:
/// each wait of the swap bounded by 4/5 of `deadlock_timeout` alone outlasted
/// the application's, whose deadlock check cancelled it (the chaos run: 12
/// transactions at once). All of the swap's waits now share one bound from
/// its first lock, so the application's INSERT goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_transaction_queued_behind_the_swaps_first_locks_is_never_the_victim() {
    let dbs = TestDbs::new("swap_window");
    let ddl = "CREATE TABLE events (id int PRIMARY KEY); CREATE TABLE hold (id int);
               CREATE TABLE users (id int PRIMARY KEY); INSERT INTO users VALUES (1);";
    dbs.src.psql(ddl);
    dbs.dst.psql(ddl);
    let wd = Workdir::new();
    assert_success(&wd.prepare(&dbs, &[]));
    let app = dbs.dst.client().await;
    app.batch_execute("BEGIN; UPDATE users SET id = id")
        .await
        .unwrap();
    let blocker = dbs.dst.client().await;
    blocker
        .batch_execute("BEGIN; LOCK hold IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let mut cmd = wd.cmd();
    cmd.args([
        "swap",
        "--dest",
        &dbs.dst.url(),
        "--swap-retries",
        "30",
        "--allow-discard",
        "all",
    ]);
    let swap = tokio::process::Command::from(cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let swap = tokio::spawn(swap.wait_with_output());
    // Until the swap holds events and waits for hold.
    let watcher = dbs.dst.client().await;
    let start = Instant::now();
    while watcher
        .query_one(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE NOT l.granted AND l.relation = 'public.hold'::regclass
                AND a.application_name LIKE 'pgshift%'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the swap never waited"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The application queues behind the swap on events; half a second later
    // hold is free and the swap goes on to wait for users.
    let insert = tokio::spawn(async move {
        let r = app.batch_execute("INSERT INTO events VALUES (1)").await;
        (app, r)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    blocker.batch_execute("COMMIT").await.unwrap();
    let (app, r) = insert.await.unwrap();
    assert!(r.is_ok(), "the application's transaction failed: {r:?}");
    app.batch_execute("COMMIT").await.unwrap();
    assert_success(&swap.await.unwrap().unwrap());
}

/// `status` never waits behind a session that holds the shadow's tables (as a
/// running prepare's loads do): the shadow's size is estimated instead, and
/// it exits 0 while the lock is still held.
#[test]
fn status_does_not_wait_behind_a_lock_on_the_shadow() {
    let dbs = setup("status_nowait");
    let wd = Workdir::new();
    assert_success(&wd.prepare(&dbs, &[]));
    let holder = hold_lock(
        &dbs,
        "LOCK TABLE shadow.items IN ACCESS EXCLUSIVE MODE",
        Duration::from_secs(30),
    );
    let out = wd.run(&["status", "--dest", &dbs.dst.url(), "--json"]);
    assert!(
        !holder.is_finished(),
        "status waited for the lock to be released"
    );
    let v: serde_json::Value = serde_json::from_str(&assert_success(&out)).unwrap();
    assert_eq!(v["shadow"]["exists"], true, "{v}");
    assert!(v["shadow"]["size_bytes"].as_i64().unwrap() > 0, "{v}");
    dbs.dst.psql(
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()",
    );
    let _ = holder.join();
}

/// An application whose every transaction takes `users` and then `sessions`
/// meets the swap's sorted lock order (`sessions`, `users`) in a cycle on
/// every attempt; the attempt after one that waited for `users` locks it
/// first, and the swap goes through under that load.
#[test]
fn a_retry_locks_first_what_the_last_attempt_waited_for() {
    let dbs = TestDbs::new("swap_lock_order");
    let ddl = "CREATE TABLE users (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO users SELECT generate_series(1, 20);
         CREATE TABLE sessions (id bigserial PRIMARY KEY, user_id int);";
    dbs.src.psql(ddl);
    dbs.dst.psql(ddl);
    let wd = Workdir::new();
    assert_success(&wd.prepare(&dbs, &[]));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app.sql");
    std::fs::write(
        &script,
        "\\set id random(1, 20)\n\
         BEGIN;\n\
         SELECT n FROM users WHERE id = :id;\n\
         INSERT INTO sessions (user_id) VALUES (:id);\n\
         UPDATE users SET n = n + 1 WHERE id = :id;\n\
         END;\n",
    )
    .unwrap();
    let mut cmd = dbs.dst.client_command("pgbench");
    cmd.args(["-n", "-c", "4", "-j", "2", "-T", "12", "-f"])
        .arg(&script)
        .arg(dbs.dst.name())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let pgbench = cmd.spawn().expect("start pgbench");
    std::thread::sleep(Duration::from_secs(1));
    let out = wd.run(&[
        "swap",
        "--dest",
        &dbs.dst.url(),
        "--swap-retries",
        "4",
        "--allow-discard",
        "all",
        "--json",
    ]);
    let bench = pgbench.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_str(&assert_success(&out)).unwrap();
    assert!(report["attempts"].as_u64().unwrap() <= 5, "{report}");
    assert!(
        bench.status.success(),
        "{}",
        String::from_utf8_lossy(&bench.stderr)
    );
}

/// While the swap waits and retries, the application keeps writing a
/// preserved table: each retry first replays that outside the locks (the
/// replay under them stays small), and no row is lost.
#[test]
fn retries_catch_the_preserved_tables_up_first() {
    let dbs = setup("swap_retry_catch_up");
    for db in [&dbs.src, &dbs.dst] {
        db.psql("CREATE TABLE users (id serial PRIMARY KEY, name text)");
    }
    let wd = Workdir::new();
    assert_success(&wd.prepare(&dbs, &["--preserved-tables", "users"]));
    let holder = hold_lock(&dbs, "SELECT count(*) FROM items", Duration::from_secs(3));
    let info = dbs.dst.server().clone();
    let db = dbs.dst.name().to_string();
    let app = std::thread::spawn(move || {
        info.psql(
            &db,
            "DO $$ BEGIN FOR i IN 1..30 LOOP
                INSERT INTO users (name) VALUES ('during ' || i); COMMIT;
                PERFORM pg_sleep(0.1);
             END LOOP; END $$",
        )
    });
    let out = swap_retrying(&wd, &dbs, &["--allow-discard", "items"]);
    holder.join().unwrap();
    app.join().unwrap();
    retried(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("preserved tables caught up before a retry"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM users"), "30");
    // The backup was made by the attempt that committed, not the first one
    // (whose time its name keeps).
    let listed: serde_json::Value = wd.run_json(&["list", "--dest", &dbs.dst.url(), "--json"]);
    let b = &listed.as_array().unwrap()[0];
    let created = chrono::DateTime::parse_from_rfc3339(b["created_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    let first_attempt = b["timestamp"].as_i64().unwrap();
    assert!(created - first_attempt > 1000, "{b}");
}

/// What the swap, its dry run and `status` say of a shadow that is no longer
/// the one prepare built (its structure, its rows) and of a preserved table
/// whose sync stopped logging: the same refusal, and nothing changes.
#[test]
fn a_changed_shadow_or_a_broken_sync_is_refused_by_swap_dry_run_and_status() {
    let dbs = setup("swap_changed");
    dbs.src
        .psql("CREATE TABLE users (id int PRIMARY KEY, name text);");
    dbs.dst.psql(
        "CREATE TABLE users (id int PRIMARY KEY, name text);
         INSERT INTO users VALUES (1, 'a');",
    );
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    let json = |args: &[&str]| -> serde_json::Value {
        serde_json::from_str(&assert_success(&wd.run(args))).unwrap()
    };
    // Each refusal: status blocks with it, the dry run says it, the swap
    // refuses with the exit code and nothing changes.
    let refused = |needle: &str, code: i32, in_status: bool| {
        let st = json(&["status", "--dest", &dst, "--json"]);
        if in_status {
            assert_eq!(st["swap_allowed"], false, "{st}");
            assert!(
                st["swap_blocked_reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(needle),
                "{st}"
            );
        }
        // The dry run exits as the swap would for a changed shadow (3),
        // after its plan; 0 for any other refusal.
        let out = wd.run(&["swap", "--dest", &dst, "--dry-run", "--json"]);
        assert_eq!(
            out.status.code(),
            Some(if code == 3 { 3 } else { 0 }),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            plan["swap"]["refusal"]
                .as_str()
                .unwrap_or_default()
                .contains(needle),
            "{plan}"
        );
        let before = catalog_fingerprint(&dbs.dst);
        let out = wd.run(&["swap", "--dest", &dst]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert!(err.contains(needle), "{err}");
        assert_eq!(catalog_fingerprint(&dbs.dst), before);
    };

    // The structure: a key dropped, a column added.
    assert_success(&wd.prepare(&dbs, &["--preserved-tables", "users"]));
    dbs.dst
        .psql("ALTER TABLE shadow.items DROP CONSTRAINT items_pkey; ALTER TABLE shadow.items ADD COLUMN junk int;");
    refused("are not what prepare built", 3, true);
    wd.run_ok(&["abort", "--dest", &dst]);

    // The rows (counted by the swap and its dry run, not by status).
    assert_success(&wd.prepare(&dbs, &["--preserved-tables", "users"]));
    dbs.dst.psql("DELETE FROM shadow.items WHERE id = 1");
    refused("items: prepared 200 rows, shadow has 199", 3, false);
    wd.run_ok(&["abort", "--dest", &dst]);

    // A sync trigger disabled: a write to users is not logged.
    assert_success(&wd.prepare(&dbs, &["--preserved-tables", "users"]));
    dbs.dst.psql(
        "ALTER TABLE users DISABLE TRIGGER pgshift_sync_ins; INSERT INTO users VALUES (2, 'unlogged');",
    );
    refused("the sync of users is broken", 1, true);
    wd.run_ok(&["abort", "--dest", &dst]);
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM users"), "2");
}

/// Wait (up to 60 s) until an autovacuum worker vacuums `table` (`schema.name`).
fn wait_for_autovacuum(db: &common::TestDb, table: &str) {
    let start = Instant::now();
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'
          AND query LIKE 'autovacuum: VACUUM%{table}%'"
    );
    while db.psql(&sql) == "0" {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no autovacuum of {table} started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A pair whose destination runs on a cluster of its own whose autovacuum
/// looks every second (the cluster is returned to outlive the databases);
/// None where clusters cannot be started.
fn on_eager_autovacuum(label: &str) -> Option<(common::Cluster, TestDbs)> {
    if !common::can_start_clusters() {
        return None;
    }
    let (src_cluster, _) = common::clusters();
    let dst_cluster = common::Cluster::start_with(label, "autovacuum_naptime = 1");
    let dbs = TestDbs::on(src_cluster, &dst_cluster, label);
    Some((dst_cluster, dbs))
}

/// Slow, eager autovacuum settings for one table: vacuumed as soon as it has a
/// dead or inserted row, a page every 100 ms (pg_dump copies them to the
/// shadow's copy).
const SLOW_VACUUM: &str = "autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0,
     autovacuum_vacuum_insert_threshold = 0, autovacuum_vacuum_insert_scale_factor = 0,
     autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1";

/// Autovacuum holds a table for as long as it vacuums it, and the server
/// cancels it for a session that waits for it past `deadlock_timeout`; the
/// swap's waits end before that (an application transaction queued behind
/// them must never be the deadlock detector's victim), and so did abort's. So
/// a vacuum of a big table made the swap fail after all its retries ("held
/// by pid … (active)"), and abort fail half-way through dropping a freshly
/// loaded shadow, whose tables autovacuum visits first. Now a retry first
/// waits for such a table alone, past deadlock_timeout, in a mode the
/// application's reads and writes do not conflict with; abort's drops of
/// pgshift's own objects wait past it themselves.
#[test]
fn an_autovacuum_holds_up_neither_the_swap_nor_abort() {
    let Some((_dst_cluster, dbs)) = on_eager_autovacuum("autovacuum") else {
        return;
    };
    dbs.src.psql(&format!(
        "CREATE TABLE fresh (id int PRIMARY KEY, pad text) WITH ({SLOW_VACUUM});
         INSERT INTO fresh SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g;"
    ));
    dbs.dst.psql(&format!(
        "CREATE TABLE live (id int PRIMARY KEY, pad text) WITH ({SLOW_VACUUM});
         INSERT INTO live SELECT g, repeat('y', 200) FROM generate_series(1, 20000) g;"
    ));
    wait_for_autovacuum(&dbs.dst, "public.live");
    let wd = Workdir::new();
    let url = dbs.dst.url();
    let quick = ["--lock-timeout", "300ms", "--swap-retries", "2"];
    assert_success(&wd.prepare(&dbs, &[]));
    wait_for_autovacuum(&dbs.dst, "shadow.fresh");
    assert_success(&wd.run_env(
        &["abort", "--dest", &url, "--lock-timeout", "300ms"],
        &[("PGSHIFT_SWAP_RETRIES", "2")],
    ));
    assert_eq!(
        dbs.dst
            .psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'shadow'"),
        "0"
    );
    assert_success(&wd.prepare(&dbs, &[]));
    dbs.dst.psql("DELETE FROM live WHERE id % 2 = 0");
    wait_for_autovacuum(&dbs.dst, "public.live");
    let out = wd.run(
        &[
            &["swap", "--dest", url.as_str(), "--allow-discard", "live"][..],
            &quick[..],
        ]
        .concat(),
    );
    let text = assert_success(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is being vacuumed by autovacuum"),
        "{text}"
    );
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM fresh"), "20000");
}

/// The server does not cancel an autovacuum that prevents transaction ID
/// wraparound, however long a session waits for it: the swap's retries then
/// cannot get past it, and the error says to wait for that vacuum (naming
/// the autovacuum worker), not to end a long-running query. The worker is
/// told apart by its backend type, read with the relation the swap waited
/// for.
#[test]
fn an_autovacuum_to_prevent_wraparound_is_waited_for_not_blamed_on_a_query() {
    let Some((_dst_cluster, dbs)) = on_eager_autovacuum("wraparound") else {
        return;
    };
    dbs.src
        .psql("CREATE TABLE frozen (id int PRIMARY KEY, pad text)");
    // Never vacuumed for its dead or inserted rows: only once its oldest
    // transaction ID is 100,000 transactions old, then slowly.
    dbs.dst.psql(
        "CREATE TABLE frozen (id int PRIMARY KEY, pad text) WITH (autovacuum_enabled = false,
             autovacuum_freeze_max_age = 100000, autovacuum_vacuum_cost_delay = 100,
             autovacuum_vacuum_cost_limit = 1);
         INSERT INTO frozen SELECT g, repeat('z', 200) FROM generate_series(1, 20000) g;",
    );
    let wd = Workdir::new();
    let url = dbs.dst.url();
    assert_success(&wd.prepare(&dbs, &[]));
    let before = catalog_fingerprint(&dbs.dst);
    dbs.dst.psql(
        "SET synchronous_commit = off;
         DO $$ BEGIN FOR i IN 1..101000 LOOP PERFORM pg_catalog.txid_current(); COMMIT; END LOOP; END $$;",
    );
    wait_for_autovacuum(&dbs.dst, "public.frozen (to prevent wraparound)");
    let out = wd.run(&[
        "swap",
        "--dest",
        &url,
        "--allow-discard",
        "frozen",
        "--lock-timeout",
        "300ms",
        "--swap-retries",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap();
    assert!(
        last.starts_with("error: swap failed: the swap could not take its locks after 2 attempts")
            && last.contains("the last attempt waited for public.frozen, held by pid ")
            && last.contains("autovacuum worker")
            && last.contains("An autovacuum that the server does not cancel (one that prevents transaction ID wraparound) holds the table")
            && !last.contains("long-running query"),
        "{stderr}"
    );
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
}

/// A rollback that keeps a table changes that table's foreign keys to and
/// from what moves, which locks it. It was not locked with the rest, up
/// front, but in the middle of the transaction, under a lock timeout set
/// before the moves: an application transaction that had written the kept
/// table and then read a table the rollback held waited for the rollback
/// while the rollback waited for it, and the deadlock detector cancelled the
/// application's transaction (Lago's `memberships`, kept while
/// `organizations` moved). Kept tables are now locked with the rest, and
/// every wait of the transaction gets what is left of its lock window. The
/// pause after the moves stands in for the moves of a big schema (object by
/// object, as with an extension in public that cannot be renamed along).
#[test]
fn a_rollback_keeping_a_table_never_makes_the_application_the_deadlock_victim() {
    let dbs = TestDbs::new("rollback_keep_deadlock");
    let ddl = "CREATE TABLE org (id int PRIMARY KEY);
               CREATE TABLE member (id int PRIMARY KEY, org int REFERENCES org);
               CREATE TABLE export (id int PRIMARY KEY, member int REFERENCES member);
               INSERT INTO org SELECT generate_series(1, 3);
               INSERT INTO member SELECT g, 1 + g % 3 FROM generate_series(1, 10) g;";
    dbs.src.psql(ddl);
    dbs.dst.psql(ddl);
    dbs.src.psql("INSERT INTO export VALUES (1, 1)");
    let wd = Workdir::new();
    let url = dbs.dst.url();
    assert_success(&wd.prepare(&dbs, &[]));
    assert_success(&wd.run(&["swap", "--dest", &url]));
    // The application: writes the kept table (no key to check: it holds no
    // lock on org), waits until the rollback holds the first table it locks,
    // then reads that table.
    let info = dbs.dst.server().clone();
    let db = dbs.dst.name().to_string();
    let app = std::thread::spawn(move || {
        info.try_psql(
            &db,
            "BEGIN;
             INSERT INTO member VALUES (100, NULL);
             DO $$ BEGIN
               FOR i IN 1..1000 LOOP
                 EXIT WHEN EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                                    WHERE c.relname = 'export' AND l.mode = 'AccessExclusiveLock'
                                      AND l.granted AND l.pid <> pg_backend_pid());
                 PERFORM pg_sleep(0.02);
               END LOOP;
             END $$;
             SELECT count(*) FROM export;
             COMMIT;",
        )
    });
    let out = wd.run_env(
        &[
            "rollback",
            "--dest",
            &url,
            "--latest",
            "--keep-tables",
            "member",
            "--swap-mode",
            "object",
            "--swap-retries",
            "5",
        ],
        &[("PGSHIFT_FAILPOINT", "swap-moved:sleep=600")],
    );
    let app = app.join().unwrap();
    assert_success(&out);
    assert!(app.is_ok(), "the application's transaction failed: {app:?}");
    assert_eq!(
        dbs.dst.psql("SELECT count(*) FROM member WHERE id = 100"),
        "1"
    );
    // The kept table's key now points at the restored org, validated.
    assert_eq!(
        dbs.dst.psql(
            "SELECT confrelid::regclass::text || ' ' || convalidated FROM pg_constraint
              WHERE conrelid = 'public.member'::regclass AND contype = 'f'"
        ),
        "org true"
    );
}
