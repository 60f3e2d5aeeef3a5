//! The impact report through the pgshift binary, on a cluster started with
//! `pg_stat_statements` preloaded (source and destination are two databases
//! on it): the discarded-writes gate of `swap` (before and under its locks),
//! `start` and `rollback`; the report in `status`, `prepare` and
//! `swap --dry-run`; `--fail-on-breaking`; blockers. The engine's own cases
//! (every hazard class, a pgbench load, the counters' edge cases) are proven
//! in tests/impact.rs.

mod common;

use std::process::{Child, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{
    Cluster, TestDb, TestDbs, Workdir, assert_success, catalog_fingerprint, create_role,
    with_child_paused,
};
use serde_json::{Value, json};
use tokio_postgres::NoTls;

fn cluster() -> Option<&'static Cluster> {
    static C: OnceLock<Cluster> = OnceLock::new();
    common::pg_stat_statements_cluster(&C, "impact_cli")
}

/// A source and a destination database on the pg_stat_statements cluster.
/// The tests of this file share it and run at once: each resets only its
/// own database's statistics (`pg_stat_statements_reset(0, dbid, 0)`), as a
/// plain reset would wipe the statements another test just recorded.
fn pair(name: &str) -> Option<TestDbs> {
    let c = cluster()?;
    Some(TestDbs {
        src: c.create_db("src", name),
        dst: c.create_db("dst", name),
    })
}

/// `ddl` in `db` with pg_stat_statements created there first, then this
/// database's statements forgotten: what the application runs next is all
/// it records.
fn recording(db: &TestDb, ddl: &str) {
    db.psql(&format!(
        "CREATE EXTENSION pg_stat_statements;
         {ddl}
         SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = current_database()), 0);"
    ));
}

/// The statistics' (inserts, updates, deletes) of `table` now.
fn counts(db: &TestDb, table: &str) -> (i64, i64, i64) {
    let got = db.psql(&format!(
        "SELECT pg_stat_get_tuples_inserted('{table}'::regclass) || ',' || pg_stat_get_tuples_updated('{table}'::regclass)
                || ',' || pg_stat_get_tuples_deleted('{table}'::regclass)"
    ));
    let n: Vec<i64> = got.split(',').map(|x| x.parse().unwrap()).collect();
    (n[0], n[1], n[2])
}

/// Wait until the statistics show these absolute (inserts, updates, deletes)
/// for `table` (a writer publishes them when its session ends).
fn wait_counts(db: &TestDb, table: &str, want: (i64, i64, i64)) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = counts(db, table);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "counters of {table}: {got:?}, expected {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn json_of(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

/// A refused run: exit 1 and exactly one `error:` line on stderr, returned.
fn refused(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected a refusal:\n{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{stderr}");
    assert_eq!(
        stderr.trim_end().lines().last(),
        Some(errors[0]),
        "the error line comes last:\n{stderr}"
    );
    errors[0].to_string()
}

fn spawn(wd: &Workdir, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = wd.cmd();
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn pgshift")
}

fn status(wd: &Workdir, db: &TestDb, extra: &[&str]) -> Value {
    let url = db.url();
    let mut args = vec!["status", "--dest", url.as_str(), "--json"];
    args.extend_from_slice(extra);
    json_of(&wd.run_ok(&args))
}

fn writes(v: &Value) -> Vec<(String, i64, i64, i64)> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|w| {
            (
                w["table"].as_str().unwrap().to_string(),
                w["inserts"].as_i64().unwrap(),
                w["updates"].as_i64().unwrap(),
                w["deletes"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn orders(n: i64) -> Vec<(String, i64, i64, i64)> {
    vec![("orders".to_string(), n, 0, 0)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_tables_that_are_not_preserved_refuse_swap_and_rollback() {
    let Some(dbs) = pair("writes") else { return };
    dbs.src.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, note text);
         INSERT INTO orders SELECT g, 'src' FROM generate_series(1, 20) g;
         CREATE TABLE users (id int PRIMARY KEY, name text);
         CREATE TABLE catalog (id int PRIMARY KEY);
         INSERT INTO catalog SELECT generate_series(1, 5);",
    );
    dbs.dst.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, note text);
         INSERT INTO orders SELECT g, 'dst' FROM generate_series(1, 10) g;
         CREATE TABLE users (id int PRIMARY KEY, name text);
         INSERT INTO users VALUES (1, 'a');
         CREATE TABLE catalog (id int PRIMARY KEY);",
    );
    wait_counts(&dbs.dst, "public.orders", (10, 0, 0));
    let wd = Workdir::new();
    let url = dbs.dst.url();

    // prepare ends with the report: nothing written yet, workload unchecked
    // (pg_stat_statements is not installed in this database).
    let p = json_of(&assert_success(
        &wd.prepare(&dbs, &["--preserved-tables", "users", "--json"]),
    ));
    assert_eq!(p["impact"]["discarded_writes"], json!([]), "{p}");
    assert_eq!(p["impact"]["unknown_writes"], json!([]), "{p}");
    assert_eq!(p["impact"]["statements"]["source"], "none", "{p}");
    assert!(
        p["impact"]["statements"]["not_checked"]
            .as_str()
            .unwrap()
            .contains("shared_preload_libraries"),
        "{p}"
    );

    // 1. Writes that land while the swap waits for its locks (after its check
    // before the locks passed) are caught under the locks: rolled back, the
    // migration stays prepared with the error recorded.
    let child = spawn(
        &wd,
        &["swap", "--dest", &url],
        &[("PGSHIFT_FAILPOINT", "swap-locks:sleep=4000")],
    );
    let out = with_child_paused(child, "pausing 4000 ms at swap-locks", || {
        dbs.dst.psql(
            "INSERT INTO orders VALUES (11, 'late'), (12, 'late'), (13, 'late');
             INSERT INTO users VALUES (2, 'b');",
        );
        wait_counts(&dbs.dst, "public.orders", (13, 0, 0));
    });
    let line = refused(&out);
    assert!(line.contains("rolled back"), "{line}");
    assert!(
        line.contains("the swap would discard writes made since prepare started to 1 table that is not preserved (the rows would stay in the backup, not in the new public): orders (3 inserts)"),
        "{line}"
    );
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM public.orders"), "13");
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM shadow.orders"), "20");
    let s = status(&wd, &dbs.dst, &[]);
    assert_eq!(s["state"], "prepared", "{s}");
    assert_eq!(s["migration"]["status"], "prepared", "{s}");
    assert!(
        s["migration"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("orders (3 inserts)"),
        "{s}"
    );

    // 2. status and swap --dry-run show the counts; users is preserved.
    assert_eq!(writes(&s["impact"]["discarded_writes"]), orders(3), "{s}");
    assert_eq!(s["swap_allowed"], false, "{s}");
    assert!(
        s["swap_blocked_reason"]
            .as_str()
            .unwrap()
            .contains("orders (3 inserts)"),
        "{s}"
    );
    // status judges the swap that would run in the same environment: the
    // variables a swap reads without flags allow (or refuse) it there too.
    let with_env = |env: &[(&str, &str)]| {
        let out = wd.run_env(&["status", "--dest", &url, "--json"], env);
        assert!(out.status.success(), "{out:?}");
        json_of(&String::from_utf8_lossy(&out.stdout))
    };
    let s = with_env(&[("PGSHIFT_ALLOW_DISCARD", "orders")]);
    assert_eq!(s["swap_allowed"], true, "{s}");
    assert_eq!(s["swap_blocked_reasons"], json!([]), "{s}");
    let s = with_env(&[
        ("PGSHIFT_ALLOW_DISCARD", "all"),
        ("PGSHIFT_FAIL_ON_BREAKING", "true"),
    ]);
    assert_eq!(s["swap_allowed"], true, "nothing breaks: {s}");
    // A table the swap would refuse to allow, as it refuses it.
    let s = with_env(&[("PGSHIFT_ALLOW_DISCARD", "orders,nosuch")]);
    assert_eq!(s["swap_allowed"], false, "{s}");
    assert!(
        s["swap_blocked_reason"]
            .as_str()
            .unwrap()
            .contains("public has no table nosuch"),
        "{s}"
    );
    // Values the swap's flag refuses are refused (an empty one too).
    for bad in ["", " 1 "] {
        let out = wd.run_env(
            &["status", "--dest", &url],
            &[("PGSHIFT_FAIL_ON_BREAKING", bad)],
        );
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {out:?}");
    }
    // A role misspelt is refused, also with no recorded workload to filter
    // (pg_stat_statements is not installed here).
    let out = wd.run(&[
        "swap",
        "--dest",
        &url,
        "--dry-run",
        "--workload-roles",
        "nobody",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--workload-roles: no role named \"nobody\" on the destination"),
        "{out:?}"
    );
    let out = wd.run_env(
        &["status", "--dest", &url],
        &[("PGSHIFT_FAIL_ON_BREAKING", "maybe")],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PGSHIFT_FAIL_ON_BREAKING \"maybe\""),
        "{out:?}"
    );
    let text = wd.run_ok(&["status", "--dest", &url]);
    assert!(
        text.contains("impact:") && text.contains("writes to 1 non-preserved table"),
        "{text}"
    );
    // A transaction left open on a public table is a blocker.
    let mut cfg = dbs.dst.pg_config();
    cfg.application_name("shop-app");
    let (app, conn) = cfg.connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    app.batch_execute("BEGIN; SELECT count(*) FROM catalog")
        .await
        .unwrap();
    let app_pid: i32 = dbs
        .dst
        .psql("SELECT pid FROM pg_stat_activity WHERE application_name = 'shop-app'")
        .parse()
        .unwrap();
    // Idle past the lock timeout (1 s): not a transaction between two of its
    // statements.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let d = json_of(&wd.run_ok(&["swap", "--dest", &url, "--dry-run", "--json"]));
    let impact = &d["swap"]["impact"];
    assert_eq!(writes(&impact["discarded_writes"]), orders(3), "{d}");
    let blockers = impact["blockers"].as_array().unwrap();
    assert_eq!(blockers.len(), 1, "{d}");
    assert_eq!(blockers[0]["pid"], app_pid, "{d}");
    assert_eq!(blockers[0]["application_name"], "shop-app", "{d}");
    assert_eq!(blockers[0]["state"], "idle in transaction", "{d}");
    assert!(blockers[0]["xact_age_ms"].as_i64().unwrap() >= 0, "{d}");
    assert!(
        d["swap"]["refusal"]
            .as_str()
            .unwrap()
            .contains("--allow-discard orders"),
        "{d}"
    );
    let text = wd.run_ok(&["swap", "--dest", &url, "--dry-run"]);
    for part in [
        "Impact on the running application",
        "Discarded writes",
        "Sessions that would hold the swap up",
        "Recorded statements: not checked",
        "The swap would refuse",
    ] {
        assert!(text.contains(part), "{part:?} not in:\n{text}");
    }
    app.batch_execute("ROLLBACK").await.unwrap();
    drop(app);

    // 3. The swap refuses before its locks: one line, nothing changed.
    let before = catalog_fingerprint(&dbs.dst);
    let line = refused(&wd.run(&["swap", "--dest", &url]));
    for part in [
        "orders (3 inserts)",
        "nothing was changed",
        "Prepare again with this table in --preserved-tables",
        "a table the source does not have cannot be preserved: keep it live with --keep-tables",
        "--allow-discard orders (or --allow-discard all) to swap anyway",
    ] {
        assert!(line.contains(part), "{part:?} not in {line:?}");
    }
    assert!(!line.contains("rolled back"), "{line}");
    assert_eq!(catalog_fingerprint(&dbs.dst), before);

    // 4. Allowed: the swap goes ahead and reports what it discarded.
    let r = json_of(&wd.run_ok(&[
        "swap",
        "--dest",
        &url,
        "--allow-discard",
        "orders",
        "--json",
    ]));
    assert_eq!(writes(&r["impact"]["discarded_writes"]), orders(3), "{r}");
    // Named in its warnings, as a rollback's are (h38b).
    assert!(
        r["warnings"].to_string().contains(
            "discarding writes since prepare started (--allow-discard): orders: 3 inserts"
        ),
        "{r}"
    );
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM public.orders"), "20");
    let backup = r["backup_schema"].as_str().unwrap().to_string();
    assert_eq!(
        dbs.dst.psql(&format!(
            "SELECT count(*) FROM {backup}.orders WHERE note = 'late'"
        )),
        "3"
    );

    // 5. A rollback refuses to discard what was written since the swap (and
    // nothing else: the swap's own replay into users is not a write since).
    let (ins, upd, del) = counts(&dbs.dst, "public.orders");
    dbs.dst.psql("INSERT INTO orders VALUES (100, 'new')");
    wait_counts(&dbs.dst, "public.orders", (ins + 1, upd, del));
    let d = json_of(&wd.run_ok(&[
        "rollback",
        "--dest",
        &url,
        "--latest",
        "--dry-run",
        "--json",
    ]));
    assert_eq!(writes(&d["rollback"]["discarded_writes"]), orders(1), "{d}");
    assert_eq!(d["rollback"]["unknown_writes"], json!([]), "{d}");
    // In the text, once: in the impact report (a second table repeated it).
    let text = wd.run_ok(&["rollback", "--dest", &url, "--latest", "--dry-run"]);
    assert_eq!(text.matches("Discarded writes").count(), 1, "{text}");
    assert!(
        !text.contains("Written since the current public went live"),
        "{text}"
    );
    let before = catalog_fingerprint(&dbs.dst);
    let line = refused(&wd.run(&["rollback", "--dest", &url, "--latest"]));
    for part in [
        "the rollback would discard writes made since the current public went live to 1 table that is not kept",
        "orders (1 insert)",
        "Keep this table with --keep-tables orders",
        "--allow-discard orders (or --allow-discard all) to roll back anyway",
    ] {
        assert!(line.contains(part), "{part:?} not in {line:?}");
    }
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
    wd.run_ok(&[
        "rollback",
        "--dest",
        &url,
        "--latest",
        "--allow-discard",
        "orders",
    ]);
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM public.orders"), "13");

    // 6. Rolling the rollback back: kept tables are exempt.
    dbs.dst.psql("INSERT INTO catalog VALUES (1)");
    wait_counts(&dbs.dst, "public.catalog", (1, 0, 0));
    let line = refused(&wd.run(&["rollback", "--dest", &url, "--latest"]));
    assert!(line.contains("catalog (1 insert)"), "{line}");
    assert!(!line.contains("orders"), "{line}");
    wd.run_ok(&[
        "rollback",
        "--dest",
        &url,
        "--latest",
        "--keep-tables",
        "catalog",
    ]);
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM public.orders"), "21");
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM public.catalog"), "1");

    // 7. A table truncated since the current public went live is unknown,
    // and said so in the rollback's words.
    dbs.dst.psql("TRUNCATE orders");
    let d = json_of(&wd.run_ok(&[
        "rollback",
        "--dest",
        &url,
        "--latest",
        "--dry-run",
        "--json",
    ]));
    let unknown = d["rollback"]["unknown_writes"].to_string();
    assert!(
        unknown.contains("truncated or rewritten since the current public went live"),
        "{d}"
    );
}

/// The destination's application: four statements recorded by
/// pg_stat_statements, run by the role `app_role` through prepared statements.
const APP_STATEMENTS: [&str; 4] = [
    "SELECT email FROM accounts WHERE id = $1",
    "SELECT id FROM legacy WHERE id = $1",
    "SELECT n FROM quiet WHERE id = $1",
    "SELECT * FROM products WHERE id = $1",
];

/// A connection to `db` holding `queries` prepared, each run once with
/// `$1 = 1`, as an application's pool holds them across the swap.
async fn holding<const N: usize>(
    db: &TestDb,
    queries: [&str; N],
) -> (tokio_postgres::Client, [tokio_postgres::Statement; N]) {
    let (app, conn) = db.pg_config().connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    let mut held = Vec::new();
    for q in queries {
        let st = app.prepare(q).await.unwrap();
        app.query(&st, &[&1i32]).await.unwrap();
        held.push(st);
    }
    (app, held.try_into().unwrap())
}

/// `prepare` between the pair, which must succeed, then the swap's dry run:
/// the working directory, the destination's URL and the plan's JSON.
fn prepared_plan(dbs: &TestDbs) -> (Workdir, String, Value) {
    let wd = Workdir::new();
    let url = dbs.dst.url();
    assert_success(&wd.prepare(dbs, &[]));
    let d = json_of(&wd.run_ok(&["swap", "--dest", &url, "--dry-run", "--json"]));
    (wd, url, d)
}

/// The swap goes through; then `broken`, held by `app` from before it,
/// fails with `cached plan must not change result type` and `intact` runs.
async fn swap_breaks_result_type(
    wd: &Workdir,
    url: &str,
    app: &tokio_postgres::Client,
    broken: &tokio_postgres::Statement,
    intact: &tokio_postgres::Statement,
) {
    assert_success(&wd.run(&["swap", "--dest", url]));
    let err = app.query(broken, &[&1i32]).await.unwrap_err();
    assert_eq!(
        err.as_db_error().map(|e| e.message()),
        Some("cached plan must not change result type"),
        "{err:?}"
    );
    app.query(intact, &[&1i32]).await.unwrap();
}

/// A report's `result_type_changed` as (query, columns), sorted; each
/// statement was called once.
fn result_type_changes(statements: &Value) -> Vec<(String, Vec<String>)> {
    let mut changed: Vec<(String, Vec<String>)> = statements["result_type_changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["calls"], 1, "{c}");
            (
                c["query"].as_str().unwrap().to_string(),
                serde_json::from_value(c["columns"].clone()).unwrap(),
            )
        })
        .collect();
    changed.sort();
    changed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_statements_are_reported_and_fail_on_breaking_refuses() {
    let Some(dbs) = pair("workload") else { return };
    dbs.src.psql(
        "CREATE DOMAIN email AS text CHECK (VALUE LIKE '%@%');
         CREATE TABLE accounts (id int PRIMARY KEY, email email);
         INSERT INTO accounts VALUES (1, 'a@x');
         CREATE TABLE quiet (id int PRIMARY KEY, n int);
         CREATE TABLE products (id int PRIMARY KEY, title text CHECK (title <> ''), tags text[]);",
    );
    dbs.dst
        .psql(&create_role("app_role", "LOGIN PASSWORD 'app-pw'"));
    recording(
        &dbs.dst,
        "CREATE TABLE accounts (id int PRIMARY KEY, email text);
         INSERT INTO accounts VALUES (1, 'a@x');
         CREATE TABLE legacy (id int PRIMARY KEY);
         CREATE TABLE quiet (id int PRIMARY KEY, n int, old int);
         CREATE TABLE products (id int PRIMARY KEY, title text);
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_role;",
    );
    wait_counts(&dbs.dst, "public.accounts", (1, 0, 0));
    let mut cfg = dbs.dst.pg_config();
    cfg.user("app_role").password("app-pw");
    let (app, conn) = cfg.connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    for sql in APP_STATEMENTS {
        let st = app.prepare(sql).await.unwrap();
        app.query(&st, &[&1i32]).await.unwrap();
    }
    drop(app);

    let wd = Workdir::new();
    let url = dbs.dst.url();
    assert_success(&wd.prepare(&dbs, &[]));
    let roles = ["--workload-roles", "app_role"];

    let dry = |extra: &[&str]| {
        let mut args = vec!["swap", "--dest", url.as_str(), "--dry-run", "--json"];
        args.extend_from_slice(extra);
        json_of(&wd.run_ok(&args))
    };
    let d = dry(&roles);
    let st = &d["swap"]["impact"]["statements"];
    assert_eq!(st["source"], "pg_stat_statements", "{d}");
    assert_eq!(st["checked"], 4, "{d}");
    assert_eq!(
        st["failing"],
        json!([{"query": APP_STATEMENTS[1], "calls": 1, "error": "relation \"legacy\" does not exist"}]),
        "{d}"
    );
    assert_eq!(
        result_type_changes(st),
        vec![
            (
                APP_STATEMENTS[3].to_string(),
                vec!["tags: (none) -> text[]".to_string()]
            ),
            (
                APP_STATEMENTS[0].to_string(),
                vec!["email: text -> email".to_string()]
            ),
        ],
        "{d}"
    );
    assert_eq!(st["unchecked"], json!([]), "{d}");
    assert!(d["swap"]["refusal"].is_null(), "{d}");
    // Kept, legacy stays in public: nothing drops it, its statement still
    // finds it, and --fail-on-breaking has one finding less.
    let k = dry(&["--workload-roles", "app_role", "--keep-tables", "legacy"]);
    let ks = &k["swap"]["impact"]["statements"];
    assert_eq!(ks["failing"], json!([]), "{k}");
    assert_eq!(ks["result_type_changed"], st["result_type_changed"], "{k}");
    assert!(
        !k["swap"]["impact"]["hazards"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["object"] == "public.legacy"),
        "{k}"
    );
    assert!(
        dry(&["--workload-roles", "app_role", "--fail-on-breaking"])["swap"]["refusal"]
            .as_str()
            .unwrap()
            .contains("--fail-on-breaking"),
    );
    let s = status(&wd, &dbs.dst, &roles);
    assert_eq!(
        s["impact"]["statements"], d["swap"]["impact"]["statements"],
        "{s}"
    );
    let text = wd.run_ok(&["status", "--dest", &url, "--workload-roles", "app_role"]);
    assert!(
        text.contains("impact:")
            && text.contains("1 statement will fail, 2 will change result type"),
        "{text}"
    );

    // A write the swap would discard refuses too: the dry run lists every
    // reason, in the swap's order, not only the first.
    dbs.dst.psql("INSERT INTO quiet VALUES (1, 1)");
    wait_counts(&dbs.dst, "public.quiet", (1, 0, 0));
    let both = dry(&["--workload-roles", "app_role", "--fail-on-breaking"]);
    let reasons: Vec<&str> = both["swap"]["refusals"]
        .as_array()
        .unwrap_or_else(|| panic!("{both}"))
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    assert_eq!(reasons.len(), 2, "{both}");
    assert!(reasons[0].contains("quiet (1 insert)"), "{both}");
    assert!(reasons[1].contains("--fail-on-breaking"), "{both}");
    let roles = ["--workload-roles", "app_role", "--allow-discard", "quiet"];

    // --fail-on-breaking refuses and changes nothing.
    let before = catalog_fingerprint(&dbs.dst);
    let mut args = vec!["swap", "--dest", url.as_str(), "--fail-on-breaking"];
    args.extend_from_slice(&roles);
    let line = refused(&wd.run(&args));
    assert!(
        line.contains("--fail-on-breaking")
            && line.contains("statement will fail (1 call")
            && line.contains("relation \"legacy\" does not exist"),
        "{line}"
    );
    assert_eq!(catalog_fingerprint(&dbs.dst), before);

    // Without it the swap goes ahead, with the findings as warnings first.
    let mut args = vec!["swap", "--dest", url.as_str(), "--json"];
    args.extend_from_slice(&roles);
    let out = wd.run(&args);
    let r = json_of(&assert_success(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WARN") && stderr.contains("statement will change result type"),
        "{stderr}"
    );
    let warnings: Vec<&str> = r["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(
        warnings
            .iter()
            .filter(|w| w.starts_with("statement will"))
            .count(),
        3,
        "{r}"
    );
    // A column dropped from a table the application uses counts, though its
    // statement passed the check: another statement of the table that does
    // not name it (an INSERT without a column list, a whole-row reference)
    // would pass it too, and then put or read the wrong values (h39a).
    assert!(
        warnings
            .contains(&"COLUMN_DROPPED public.quiet.old (integer), used by recorded statements"),
        "{r}"
    );
    // A new constraint of a table the application uses: a warning (whether a
    // write is refused depends on its values), never a refusal.
    assert!(
        warnings.contains(
            &"CHECK_ADDED public.products.products_title_check (CHECK ((title <> ''::text))): recorded statements use it, and their writes may be refused"
        ),
        "{r}"
    );
    assert_eq!(
        dbs.dst.psql(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.accounts'::regclass AND attname = 'email'"
        ),
        "email"
    );

    // A rollback is judged the same way, against the backup it restores:
    // email goes back to text, products loses tags, legacy comes back.
    let rollback = |extra: &[&str]| {
        let mut args = vec!["rollback", "--dest", url.as_str(), "--latest"];
        args.extend_from_slice(&roles);
        args.extend_from_slice(extra);
        wd.run(&args)
    };
    let out = rollback(&["--dry-run", "--json"]);
    let d = json_of(&assert_success(&out));
    // The dry run prints the report; its findings are not logged too.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("will change result type") && !stderr.contains("WARN"),
        "{stderr}"
    );
    let rst = &d["rollback"]["impact"]["statements"];
    assert_eq!(rst["source"], "pg_stat_statements", "{d}");
    assert_eq!(rst["failing"], json!([]), "{d}");
    assert_eq!(
        result_type_changes(rst),
        vec![
            (
                APP_STATEMENTS[3].to_string(),
                vec!["tags: text[] -> (none)".to_string()]
            ),
            (
                APP_STATEMENTS[0].to_string(),
                vec!["email: email -> text".to_string()]
            ),
        ],
        "{d}"
    );
    assert!(d["rollback"]["refusal"].is_null(), "{d}");
    // Kept, accounts and products stay as they are (the backup's copies do
    // not come in): their statements do not change, no hazard names them,
    // and --fail-on-breaking has nothing to refuse.
    let k = json_of(&assert_success(&rollback(&[
        "--dry-run",
        "--json",
        "--fail-on-breaking",
        "--keep-tables",
        "accounts,products",
    ])));
    let kst = &k["rollback"]["impact"]["statements"];
    assert_eq!(kst["failing"], json!([]), "{k}");
    assert_eq!(kst["result_type_changed"], json!([]), "{k}");
    assert!(
        !k["rollback"]["impact"]["hazards"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["object"] == "public.accounts" || h["object"] == "public.products"),
        "{k}"
    );
    assert!(k["rollback"]["refusal"].is_null(), "{k}");
    let d = json_of(&assert_success(&rollback(&[
        "--dry-run",
        "--json",
        "--fail-on-breaking",
    ])));
    assert!(
        d["rollback"]["refusal"]
            .as_str()
            .unwrap_or_default()
            .starts_with("the rollback would break statements the application runs"),
        "{d}"
    );
    let text = String::from_utf8_lossy(&rollback(&["--dry-run"]).stdout).into_owned();
    assert!(text.contains("Impact on the running application"), "{text}");

    // --fail-on-breaking refuses and changes nothing; without it the
    // rollback goes ahead, the findings as warnings.
    let before = catalog_fingerprint(&dbs.dst);
    let line = refused(&rollback(&["--fail-on-breaking"]));
    assert!(
        line.contains("the rollback would break statements")
            && line.contains("email: email -> text"),
        "{line}"
    );
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
    let r = json_of(&assert_success(&rollback(&["--json"])));
    let changing = r["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| {
            w.as_str()
                .unwrap()
                .starts_with("statement will change result type")
        })
        .count();
    assert_eq!(changing, 2, "{r}");
    assert_eq!(
        r["impact"]["statements"]["result_type_changed"], rst["result_type_changed"],
        "{r}"
    );
    assert_eq!(
        dbs.dst.psql(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.accounts'::regclass AND attname = 'email'"
        ),
        "text"
    );
}

#[test]
fn start_refuses_to_discard_writes_made_during_prepare() {
    let Some(dbs) = pair("start") else { return };
    dbs.src.psql(
        "CREATE TABLE orders (id int PRIMARY KEY);
         INSERT INTO orders SELECT generate_series(1, 50);",
    );
    dbs.dst.psql(
        "CREATE TABLE orders (id int PRIMARY KEY);
         INSERT INTO orders SELECT generate_series(1, 5);",
    );
    wait_counts(&dbs.dst, "public.orders", (5, 0, 0));
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let child = spawn(
        &wd,
        &["start", "--source", &src, "--dest", &dst],
        &[("PGSHIFT_FAILPOINT", "data:sleep=3000")],
    );
    let out = with_child_paused(child, "pausing 3000 ms at data", || {
        dbs.dst.psql("INSERT INTO orders VALUES (6), (7)");
        wait_counts(&dbs.dst, "public.orders", (7, 0, 0));
    });
    let line = refused(&out);
    assert!(
        line.contains("swap step") && line.contains("orders (2 inserts)"),
        "{line}"
    );
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM public.orders"), "7");
    let s = status(&wd, &dbs.dst, &[]);
    assert_eq!(s["state"], "prepared", "{s}");
    assert_eq!(writes(&s["impact"]["discarded_writes"]), orders(2), "{s}");
}

/// A CHECK listing the values of a varchar column reads differently after a
/// dump and restore (PostgreSQL moves the casts into the array), so the
/// shadow's copy of an unchanged constraint prints otherwise than the live
/// one: it is no `CHECK_ADDED` hazard, while a changed list still is. A list
/// that only grew refuses nothing it allowed: `CHECK_WIDENED`, for
/// information.
#[test]
fn a_check_reprinted_by_a_dump_is_no_hazard() {
    let dbs = TestDbs::new("imp_check_print");
    let ddl = |kinds: &str, levels: &str| {
        format!(
            "CREATE TABLE orders (id int PRIMARY KEY,
               status varchar(10) CONSTRAINT status_ok CHECK (status IN ('new', 'paid')),
               kind varchar(10) CONSTRAINT kind_ok CHECK (kind IN ({kinds})),
               level varchar(10) CONSTRAINT level_ok CHECK (level IN ({levels})));"
        )
    };
    dbs.src.psql(&ddl("'x', 'z'", "'low', 'high', 'urgent'"));
    dbs.dst.psql(&ddl("'x', 'y'", "'low', 'high'"));
    // A key over more columns is less strict, so it too is for information.
    dbs.src
        .psql("CREATE TABLE runs (a int, b int, c int NOT NULL, PRIMARY KEY (a, b, c));");
    dbs.dst
        .psql("CREATE TABLE runs (a int, b int, c int NOT NULL, PRIMARY KEY (a, b));");
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let p = json_of(&wd.run_ok(&["prepare", "--source", &src, "--dest", &dst, "--json"]));
    let checks = |code: &str| -> Vec<(String, String)> {
        p["impact"]["hazards"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["code"] == code)
            .map(|h| {
                (
                    h["object"].as_str().unwrap().to_string(),
                    h["effect"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        checks("CHECK_ADDED"),
        [(
            "public.orders.kind_ok".to_string(),
            "rejects_writes".to_string()
        )],
        "{p}"
    );
    assert_eq!(
        checks("CHECK_WIDENED"),
        [("public.orders.level_ok".to_string(), "info".to_string())],
        "{p}"
    );
    assert_eq!(checks("UNIQUE_ADDED"), [], "{p}");
    assert_eq!(
        checks("UNIQUE_KEY_WIDENED"),
        [("public.runs.runs_pkey".to_string(), "info".to_string())],
        "{p}"
    );
}

/// A transaction that began before prepare and still holds its snapshot:
/// the report notes it (a REPEATABLE READ one reads the new tables as empty
/// after the swap, as the session below shows, until it ends).
#[tokio::test]
async fn a_snapshot_older_than_prepare_is_noted() {
    let dbs = TestDbs::new("old_snapshot");
    dbs.src
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10);");
    dbs.dst.psql("CREATE TABLE t (id int PRIMARY KEY);");
    let mut cfg = dbs.dst.pg_config();
    cfg.application_name("app");
    let (app, conn) = cfg.connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    // Its snapshot taken, no lock on a table (the swap need not wait).
    app.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1;")
        .await
        .unwrap();
    let pid = common::backend_pid(&app).await;
    let wd = Workdir::new();
    let url = dbs.dst.url();
    assert_success(&wd.prepare(&dbs, &[]));
    let dry = |wd: &Workdir| json_of(&wd.run_ok(&["swap", "--dest", &url, "--dry-run", "--json"]));
    let notes = dry(&wd)["swap"]["impact"]["notes"].to_string();
    assert!(
        notes.contains(&format!(
            "1 transaction that began before prepare is still open (pid {pid})"
        )),
        "{notes}"
    );
    assert_success(&wd.run(&["swap", "--dest", &url]));
    let seen: i64 = app
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "PostgreSQL's MVCC: the snapshot predates the rows");
    app.batch_execute("COMMIT").await.unwrap();
    let seen: i64 = app
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 10);
}

/// A column whose collation changes (`text` to `text COLLATE "C"`) fails a
/// statement prepared before the swap as a type change does: PostgreSQL
/// compares result collations too. The report said nothing (no hazard, the
/// statement not among `result_type_changed`, `--fail-on-breaking` let it
/// through); now it names both, and the statement does fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_whose_collation_changes_is_a_result_type_change() {
    let Some(dbs) = pair("collation") else { return };
    dbs.src.psql(
        "CREATE TABLE acct (id int PRIMARY KEY, email text COLLATE \"C\", note text);
         INSERT INTO acct VALUES (1, 'a@x', 'n');",
    );
    recording(
        &dbs.dst,
        "CREATE TABLE acct (id int PRIMARY KEY, email text, note text);
         INSERT INTO acct VALUES (1, 'a@x', 'n');",
    );
    let (app, [email, note]) = holding(
        &dbs.dst,
        [
            "SELECT email FROM acct WHERE id = $1",
            "SELECT note FROM acct WHERE id = $1",
        ],
    )
    .await;

    let (wd, url, d) = prepared_plan(&dbs);
    let impact = &d["swap"]["impact"];
    assert!(
        impact["hazards"].as_array().unwrap().iter().any(|h| {
            h["code"] == "COLUMN_TYPE_CHANGED"
                && h["object"] == "public.acct.email"
                && h["detail"] == "text -> text COLLATE \"C\""
        }),
        "{d}"
    );
    assert_eq!(
        result_type_changes(&impact["statements"]),
        vec![(
            "SELECT email FROM acct WHERE id = $1".to_string(),
            vec!["email: text -> text COLLATE \"C\"".to_string()]
        )],
        "{d}"
    );
    swap_breaks_result_type(&wd, &url, &app, &email, &note).await;
}

/// A collation of a migrated schema that the source defines too (MusicBrainz
/// defines `musicbrainz.musicbrainz` for its names) comes in as a new
/// collation of the same name: a statement prepared before the swap that
/// returns a column using it fails after the swap, as for a replaced type.
/// The report said nothing (names equal, types equal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collation_defined_again_is_a_result_type_change() {
    let Some(dbs) = pair("collation_again") else {
        return;
    };
    let ddl = "CREATE COLLATION nat FROM \"C\";
         CREATE TABLE acct (id int PRIMARY KEY, name text COLLATE nat, note text);
         INSERT INTO acct VALUES (1, 'a', 'n');";
    dbs.src.psql(ddl);
    recording(&dbs.dst, ddl);
    let (app, [name, note]) = holding(
        &dbs.dst,
        [
            "SELECT name FROM acct WHERE id = $1",
            "SELECT note FROM acct WHERE id = $1",
        ],
    )
    .await;

    let (wd, url, d) = prepared_plan(&dbs);
    let impact = &d["swap"]["impact"];
    let hazards: Vec<(&str, &str, &str)> = impact["hazards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["code"].as_str().unwrap(),
                h["object"].as_str().unwrap(),
                h["detail"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        hazards,
        vec![(
            "COLLATION_REPLACED",
            "public.nat",
            "replaced by the incoming schema's copy (same name, new collation): statements prepared before the swap that return public.acct.name fail until prepared again"
        )],
        "{d}"
    );
    assert_eq!(
        result_type_changes(&impact["statements"]),
        vec![(
            "SELECT name FROM acct WHERE id = $1".to_string(),
            vec!["name: text COLLATE public.nat -> text COLLATE public.nat (its collation replaced by the incoming schema's of the same name)".to_string()]
        )],
        "{d}"
    );
    swap_breaks_result_type(&wd, &url, &app, &name, &note).await;
}

/// A statement prepared before the swap keeps its parameter types: with
/// `code` retyped from text to integer, `WHERE code = $1` prepared with a
/// text parameter fails after the swap (`operator does not exist: integer =
/// text`). The report listed only the column's hazard, not the statement
/// (only parameter types the swap moves to the backup were checked so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parameter_compared_with_a_retyped_column_fails_when_prepared_before() {
    let Some(dbs) = pair("param_retyped") else {
        return;
    };
    dbs.src.psql(
        "CREATE TABLE acct (id int PRIMARY KEY, code int);
         INSERT INTO acct VALUES (1, 5);",
    );
    recording(
        &dbs.dst,
        "CREATE TABLE acct (id int PRIMARY KEY, code text);
         INSERT INTO acct VALUES (1, '5');",
    );
    let (app, conn) = dbs.dst.pg_config().connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    let by_code = app
        .prepare("SELECT id FROM acct WHERE code = $1")
        .await
        .unwrap();
    app.query(&by_code, &[&"5"]).await.unwrap();

    let (wd, url, d) = prepared_plan(&dbs);
    let failing = &d["swap"]["impact"]["statements"]["failing"];
    assert_eq!(
        failing,
        &json!([{
            "query": "SELECT id FROM acct WHERE code = $1",
            "calls": 1,
            "error": "when prepared before the swap (it keeps its parameter types: $1 text (now int4)): operator does not exist: integer = text"
        }]),
        "{d}"
    );
    assert_success(&wd.run(&["swap", "--dest", &url]));
    let err = app.query(&by_code, &[&"5"]).await.unwrap_err();
    assert_eq!(
        err.as_db_error().map(|e| e.message()),
        Some("operator does not exist: integer = text"),
        "{err:?}"
    );
    // Prepared again, with an integer: a rollback brings the text column
    // back, and its report says so as the rollback's (h38b).
    let by_code = app
        .prepare("SELECT id FROM acct WHERE code = $1")
        .await
        .unwrap();
    app.query(&by_code, &[&5i32]).await.unwrap();
    let out = wd.run(&[
        "rollback",
        "--dest",
        &url,
        "--latest",
        "--allow-discard",
        "all",
        "--dry-run",
        "--json",
    ]);
    let r = json_of(&assert_success(&out));
    assert!(
        r["rollback"]["impact"]["statements"]["failing"]
            .to_string()
            .contains("when prepared before the rollback (it keeps its parameter types: $1 int4 (now text))"),
        "{r}"
    );
}

/// A statement prepared with SQL (`PREPARE p(int) AS SELECT * …`, then
/// `EXECUTE p(1)`: psql scripts, some poolers' clients) fails after the swap
/// as a protocol-level one does. pg_stat_statements records it as the
/// `PREPARE`, which the check left out as a utility statement; it is now
/// checked as the statement it prepares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_prepared_with_sql_is_checked_as_what_it_prepares() {
    let Some(dbs) = pair("sql_prepare") else {
        return;
    };
    dbs.src.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text, age int);
         INSERT INTO users VALUES (1, 'a@x', 30);",
    );
    recording(
        &dbs.dst,
        "CREATE TABLE users (id int PRIMARY KEY, email text);
         INSERT INTO users VALUES (1, 'a@x');",
    );
    let (app, conn) = dbs.dst.pg_config().connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    app.batch_execute("PREPARE p(int) AS SELECT * FROM users WHERE id = $1")
        .await
        .unwrap();
    app.batch_execute("EXECUTE p(1)").await.unwrap();

    let (wd, url, d) = prepared_plan(&dbs);
    let changed = &d["swap"]["impact"]["statements"]["result_type_changed"];
    assert!(
        changed.as_array().unwrap().iter().any(|c| {
            c["query"] == "PREPARE p(int) AS SELECT * FROM users WHERE id = $1"
                && c["columns"] == json!(["age: (none) -> integer"])
        }),
        "{d}"
    );
    assert_success(&wd.run(&["swap", "--dest", &url]));
    let err = app.batch_execute("EXECUTE p(1)").await.unwrap_err();
    assert_eq!(
        err.as_db_error().map(|e| e.message()),
        Some("cached plan must not change result type"),
        "{err:?}"
    );
}

/// A kept table's own sequence stays with it: a statement reading it was
/// reported as failing (`relation "audit_id_seq" does not exist`), and
/// would have made `--fail-on-breaking` refuse a swap that breaks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_tables_own_sequence_is_no_failing_statement() {
    let Some(dbs) = pair("kept_seq") else {
        return;
    };
    dbs.src.psql("CREATE TABLE t (id int PRIMARY KEY);");
    recording(
        &dbs.dst,
        "CREATE TABLE t (id int PRIMARY KEY);
         CREATE TABLE audit (id serial PRIMARY KEY, msg text);
         INSERT INTO audit (msg) VALUES ('kept');",
    );
    // Alone, and beside a table the swap replaces (whose names are mapped
    // to the incoming schema: the kept table's sequence and array type were).
    let (app, [seq, with_t, array]) = holding(
        &dbs.dst,
        [
            "SELECT last_value FROM audit_id_seq WHERE $1 = 1",
            "SELECT s.last_value FROM audit_id_seq s, t WHERE $1 = 1",
            "SELECT NULL::_audit AS a, t.id FROM t WHERE $1 = 1",
        ],
    )
    .await;
    let wd = Workdir::new();
    let url = dbs.dst.url();
    assert_success(&wd.prepare(&dbs, &["--keep-tables", "audit"]));
    let d = json_of(&wd.run_ok(&["swap", "--dest", &url, "--dry-run", "--json"]));
    let statements = &d["swap"]["impact"]["statements"];
    assert_eq!(statements["failing"], json!([]), "{d}");
    assert_success(&wd.run(&["swap", "--dest", &url, "--fail-on-breaking"]));
    let last: i64 = app.query_one(&seq, &[&1i32]).await.unwrap().get(0);
    assert_eq!(last, 1);
    app.query(&with_t, &[&1i32]).await.unwrap();
    app.query(&array, &[&1i32]).await.unwrap();
}

/// `SELECT nextval('hib_seq')` is recorded as `SELECT nextval($1)`: which
/// sequence it draws from is not known. It named nothing the swap changes, so
/// it was left out, and a swap that drops the sequence passed
/// `--fail-on-breaking`, then failed every call (h48a). It is unchecked,
/// saying which sequences it may name, and they count as used.
#[test]
fn a_sequence_named_by_a_constant_counts_as_used_when_the_swap_drops_a_sequence() {
    let Some(dbs) = pair("seq_param") else {
        return;
    };
    // u's own sequence goes while u stays (its serial made plain): a drop
    // too (h49a).
    dbs.src
        .psql("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE u (id bigint PRIMARY KEY);");
    recording(
        &dbs.dst,
        "CREATE TABLE t (id int PRIMARY KEY, z int);
         CREATE TABLE u (id serial PRIMARY KEY);
         CREATE SEQUENCE hib_seq;",
    );
    // Through two casts, as an old-style default writes it (h49a); and one
    // that fails whichever sequence it names is said failing (h49a).
    dbs.dst.psql(
        "SELECT nextval('hib_seq');
         SELECT nextval(('hib_seq'::text)::regclass);
         INSERT INTO t (id, z) VALUES (nextval('hib_seq'), 1);",
    );
    let (wd, url, d) = prepared_plan(&dbs);
    let statements = &d["swap"]["impact"]["statements"];
    let reason = "it names its sequence by a constant that pg_stat_statements keeps as a parameter, so which one is not known: it fails if that is one of public.hib_seq, public.u_id_seq, which the swap drops";
    let mut unchecked: Vec<(String, String)> = statements["unchecked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["query"].to_string(), u["reason"].to_string()))
        .collect();
    unchecked.sort();
    assert_eq!(
        unchecked,
        [
            (
                json!("SELECT nextval($1)").to_string(),
                json!(reason).to_string()
            ),
            (
                json!("SELECT nextval(($1::text)::regclass)").to_string(),
                json!(reason).to_string()
            ),
        ],
        "{d}"
    );
    assert_eq!(
        statements["failing"][0]["query"], "INSERT INTO t (id, z) VALUES (nextval($1), $2)",
        "{d}"
    );
    assert!(
        statements["used_objects"]
            .as_array()
            .unwrap()
            .contains(&json!("public.hib_seq")),
        "{d}"
    );
    let before = catalog_fingerprint(&dbs.dst);
    let line = refused(&wd.run(&["swap", "--dest", &url, "--fail-on-breaking"]));
    assert!(
        line.contains("SEQUENCE_DROPPED public.hib_seq (sequence), used by recorded statements"),
        "{line}"
    );
    let dropped: Vec<&Value> = d["swap"]["impact"]["hazards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["code"] == "SEQUENCE_DROPPED")
        .map(|h| &h["object"])
        .collect();
    assert_eq!(
        dropped,
        [&json!("public.hib_seq"), &json!("public.u_id_seq")],
        "{d}"
    );
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
    // What it foresaw: the call fails after the swap.
    assert_success(&wd.run(&["swap", "--dest", &url]));
    let err = dbs.dst.try_psql("SELECT nextval('hib_seq')").unwrap_err();
    assert!(err.contains("does not exist"), "{err}");
}

/// `--allow-discard` naming a table the replaced schemas do not have (a
/// typo) was accepted without a word, letting nothing through: it is bad
/// input, refused (exit 2) before anything changes, by the swap, its dry run,
/// the rollback and `start` (with or without `--dry-run`).
#[test]
fn allow_discard_of_a_table_that_does_not_exist_is_refused() {
    let dbs = TestDbs::new("imp_allow_typo");
    for db in [&dbs.src, &dbs.dst] {
        db.psql("CREATE TABLE orders (id int PRIMARY KEY); CREATE TABLE \"Items\" (id int);");
    }
    let wd = Workdir::new();
    let url = dbs.dst.url();
    assert_success(&wd.prepare(&dbs, &[]));
    let usage = |args: &[&str], needle: &str| {
        let out = wd.run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        let last = err.trim_end().lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains(needle),
            "{args:?}: {err}"
        );
    };
    for extra in [&[][..], &["--dry-run"]] {
        usage(
            &[
                &["swap", "--dest", &url, "--allow-discard", "orders,ordres"][..],
                extra,
            ]
            .concat(),
            "--allow-discard: public has no table ordres; nothing was changed",
        );
    }
    usage(
        &["swap", "--dest", &url, "--allow-discard", "items"],
        "public has no table items (letters outside double quotes are folded to lower case, as in psql: write \"Items\" with its quotes)",
    );
    usage(
        &["swap", "--dest", &url, "--allow-discard", "billing.orders"],
        "--allow-discard: billing.orders is not in a schema the swap replaces (public)",
    );
    let s = status(&wd, &dbs.dst, &[]);
    assert_eq!(s["state"], "prepared", "{s}");
    assert_success(&wd.run(&[
        "swap",
        "--dest",
        &url,
        "--allow-discard",
        "orders,\"Items\"",
    ]));
    usage(
        &[
            "rollback",
            "--dest",
            &url,
            "--latest",
            "--allow-discard",
            "ordres",
        ],
        "--allow-discard: public has no table ordres",
    );
    // From its variable: the error names the variable, not the flag.
    let out = wd.run_env(
        &["rollback", "--dest", &url, "--latest"],
        &[("PGSHIFT_ALLOW_DISCARD", "ordres")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.trim_end().ends_with(
            "error: PGSHIFT_ALLOW_DISCARD: public has no table ordres; nothing was changed"
        ),
        "{err}"
    );
    // start says so before it prepares, and so does its dry run.
    let src = dbs.src.url();
    for extra in [&[][..], &["--dry-run"]] {
        usage(
            &[
                &[
                    "start",
                    "--source",
                    &src,
                    "--dest",
                    &url,
                    "--allow-discard",
                    "ordres",
                ][..],
                extra,
            ]
            .concat(),
            "--allow-discard: public has no table ordres",
        );
    }
    assert_eq!(
        dbs.dst
            .psql("SELECT count(*) FROM pg_class WHERE relnamespace = 'shadow'::regnamespace"),
        "0"
    );
}

/// pgshift's own statements on the destination's live tables (status counts a
/// preserved table's rows in public; the swap reads public's sequences) are
/// recorded by pg_stat_statements beside the application's: they are no
/// application statements. Counted as such, a column the new version drops
/// from a preserved table was "used by recorded statements", and
/// `--fail-on-breaking` refused a swap that breaks nothing (Documenso's
/// `DocumentAuditLog`, after one `status`). Nor are prepare's trials of the
/// preserved rows (a changed column's values, a new unique key, a new
/// CHECK), which read the live table: listed as statements that could not
/// be checked ("relation pgshift_fit does not exist") in every report after.
#[test]
fn pgshifts_own_counts_are_no_application_statements() {
    let Some(dbs) = pair("own_counts") else {
        return;
    };
    dbs.src.psql(
        "CREATE TABLE \"AuditLog\" (id serial PRIMARY KEY CHECK (id > 0), what varchar(50) UNIQUE);
         CREATE TABLE other (id int PRIMARY KEY);",
    );
    recording(
        &dbs.dst,
        "CREATE TABLE \"AuditLog\" (id serial PRIMARY KEY, what text, \"documentId\" int);
         INSERT INTO \"AuditLog\" (what, \"documentId\") VALUES ('a', 1), ('b', 2);",
    );
    let wd = Workdir::new();
    let url = dbs.dst.url();
    assert_success(&wd.prepare(&dbs, &["--preserved-tables", "\"AuditLog\""]));
    let dry = || {
        json_of(&assert_success(&wd.run(&[
            "swap",
            "--dest",
            &url,
            "--dry-run",
            "--json",
            "--fail-on-breaking",
        ])))
    };
    let d = dry();
    assert!(d["swap"]["refusal"].is_null(), "{d}");
    assert_ne!(
        dbs.dst.psql(
            "SELECT count(*) FROM pg_stat_statements WHERE query LIKE '%pgshift_fit%' OR query LIKE '%HAVING count(*) > $%'"
        ),
        "0",
        "the trials were not recorded: the test proves nothing"
    );
    assert!(!d.to_string().contains("pgshift_fit"), "{d}");
    assert_eq!(
        d["swap"]["impact"]["statements"]["unchecked"],
        serde_json::json!([]),
        "{d}"
    );
    // status counts the preserved table's rows in public and shadow.
    let s = status(&wd, &dbs.dst, &[]);
    assert!(s.to_string().contains("AuditLog"), "{s}");
    assert_ne!(
        dbs.dst.psql(
            "SELECT count(*) FROM pg_stat_statements WHERE query LIKE '%count(*) FROM ONLY public.\"AuditLog\"%'"
        ),
        "0",
        "status's count was not recorded: the test proves nothing"
    );
    let d = dry();
    assert!(d["swap"]["refusal"].is_null(), "{d}");
    assert!(
        !d["swap"]["impact"]["statements"]["used_objects"]
            .to_string()
            .contains("AuditLog"),
        "{d}"
    );
    assert_success(&wd.run(&["swap", "--dest", &url, "--fail-on-breaking"]));
}

/// pg_stat_statements may be in any schema: moved to one the role running
/// pgshift may not use (`permission denied for schema ext`), the dry run said
/// to add it to shared_preload_libraries and create it, which it was; it
/// now says to grant USAGE on that schema, and SELECT on its view when that
/// is what is missing.
#[test]
fn pg_stat_statements_in_a_schema_the_role_may_not_use_says_what_to_grant() {
    let Some(dbs) = pair("pss_schema") else {
        return;
    };
    if dbs.dst.socket_dir().is_none() {
        println!("skipped: needs the harness's own clusters");
        return;
    }
    let role = format!("pss_owner_{}", std::process::id());
    dbs.dst.psql(&create_role(&role, "LOGIN"));
    dbs.src.psql("CREATE TABLE t (id int PRIMARY KEY);");
    dbs.dst.psql(&format!(
        "ALTER DATABASE \"{db}\" OWNER TO {role};
         CREATE EXTENSION pg_stat_statements;
         CREATE SCHEMA ext;
         ALTER EXTENSION pg_stat_statements SET SCHEMA ext;
         CREATE TABLE t (id int PRIMARY KEY);
         ALTER TABLE t OWNER TO {role};",
        db = dbs.dst.name()
    ));
    let dst = dbs.dst.socket_url().replacen(
        &format!("postgresql://{}@", dbs.dst.user()),
        &format!("postgresql://{role}@"),
        1,
    );
    let src = dbs.src.url();
    let wd = Workdir::new();
    assert_success(&wd.run(&["prepare", "--source", &src, "--dest", &dst]));
    let not_checked = || {
        let d = json_of(&wd.run_ok(&["swap", "--dest", &dst, "--dry-run", "--json"]));
        let why = d["swap"]["impact"]["statements"]["not_checked"].clone();
        why.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| panic!("{d}"))
    };
    let why = not_checked();
    assert!(
        why.contains("permission denied for schema ext")
            && why.contains(&format!("GRANT USAGE ON SCHEMA ext TO {role}"))
            && !why.contains("shared_preload_libraries"),
        "{why}"
    );
    dbs.dst.psql(&format!(
        "GRANT USAGE ON SCHEMA ext TO {role};
         REVOKE SELECT ON ext.pg_stat_statements FROM PUBLIC;"
    ));
    let why = not_checked();
    assert!(
        why.contains(&format!("GRANT SELECT ON ext.pg_stat_statements TO {role}"))
            && !why.contains("shared_preload_libraries"),
        "{why}"
    );
    dbs.dst.psql(&format!(
        "GRANT SELECT ON ext.pg_stat_statements TO {role};"
    ));
    let d = json_of(&wd.run_ok(&["swap", "--dest", &dst, "--dry-run", "--json"]));
    assert_eq!(
        d["swap"]["impact"]["statements"]["source"], "pg_stat_statements",
        "{d}"
    );
}

/// PostgreSQL's own statements of a foreign key (the check a deferred key
/// runs at COMMIT, which pg_stat_statements records as a top-level
/// statement) are no application statement: the table they check is gone
/// after the swap, but so is their key; the new tables' keys run their own.
/// They were reported as failing, one too many.
#[test]
fn a_foreign_keys_own_check_is_no_failing_statement() {
    let Some(dbs) = pair("ri_check") else {
        return;
    };
    dbs.src.psql(
        "CREATE TABLE clients (id int PRIMARY KEY);
         CREATE TABLE orders (id int PRIMARY KEY,
                              client_id int REFERENCES clients DEFERRABLE INITIALLY DEFERRED);",
    );
    recording(
        &dbs.dst,
        "CREATE TABLE customers (id int PRIMARY KEY);
         CREATE TABLE orders (id int PRIMARY KEY,
                              client_id int REFERENCES customers DEFERRABLE INITIALLY DEFERRED);
         INSERT INTO customers VALUES (1);",
    );
    dbs.dst
        .psql("BEGIN; INSERT INTO orders VALUES (1, 1); COMMIT;");
    assert_eq!(
        dbs.dst.psql(
            "SELECT count(*) FROM pg_stat_statements
              WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND query LIKE '%FOR KEY SHARE OF x'"
        ),
        "1",
        "the key's check is recorded"
    );
    let (_wd, _url, d) = prepared_plan(&dbs);
    let statements = &d["swap"]["impact"]["statements"];
    assert_eq!(statements["failing"], json!([]), "{d}");
}

/// An INSERT recorded before the application's own migration made a column
/// it does not set NOT NULL fails today already: it is left unchecked, as a
/// statement that fails today is, not reported as one the swap breaks (which
/// made `--fail-on-breaking` refuse a swap that changes nothing of it).
#[test]
fn an_insert_that_fails_today_already_is_no_failing_statement() {
    let Some(dbs) = pair("insert_fails_today") else {
        return;
    };
    dbs.src
        .psql("CREATE TABLE t (id int PRIMARY KEY, a text, b text NOT NULL);");
    recording(&dbs.dst, "CREATE TABLE t (id int PRIMARY KEY, a text);");
    dbs.dst.psql("INSERT INTO t (id, a) VALUES (1, 'x')");
    dbs.dst.psql(
        "ALTER TABLE t ADD COLUMN b text NOT NULL DEFAULT 'z';
         ALTER TABLE t ALTER b DROP DEFAULT;",
    );
    let (wd, url, d) = prepared_plan(&dbs);
    let statements = &d["swap"]["impact"]["statements"];
    assert_eq!(statements["failing"], json!([]), "{d}");
    let unchecked = statements["unchecked"].to_string();
    assert!(
        unchecked.contains("INSERT INTO t") && unchecked.contains("today's schema"),
        "{d}"
    );
    assert_success(&wd.run(&["swap", "--dest", &url, "--fail-on-breaking"]));
}

/// A statement of a schema other than public that the swap breaks is worded
/// as the application will see it (`relation "billing.old_inv" does not
/// exist`), not with the name of pgshift's incoming schema rewritten inside
/// it (`pgshift_shadow_backup_<unix ms>_billing.old_inv`).
#[tokio::test]
async fn a_failing_statement_of_another_schema_is_worded_as_the_application_sees_it() {
    let Some(dbs) = pair("impact_schemas") else {
        return;
    };
    dbs.src
        .psql("CREATE SCHEMA billing; CREATE TABLE billing.inv (id int PRIMARY KEY);");
    dbs.dst
        .psql(&create_role("billing_app", "LOGIN PASSWORD 'app-pw'"));
    recording(
        &dbs.dst,
        "CREATE SCHEMA billing;
         CREATE TABLE billing.inv (id int PRIMARY KEY);
         CREATE TABLE billing.old_inv (id int PRIMARY KEY);
         GRANT USAGE ON SCHEMA billing TO billing_app;
         GRANT SELECT ON ALL TABLES IN SCHEMA billing TO billing_app;",
    );
    let mut cfg = dbs.dst.pg_config();
    cfg.user("billing_app").password("app-pw");
    let (app, conn) = cfg.connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    let sql = "SELECT id FROM billing.old_inv WHERE id = $1";
    let st = app.prepare(sql).await.unwrap();
    app.query(&st, &[&1i32]).await.unwrap();
    drop(app);
    let wd = Workdir::new();
    assert_success(&wd.prepare(&dbs, &["--schemas", "public,billing"]));
    let url = dbs.dst.url();
    let d = json_of(&wd.run_ok(&[
        "swap",
        "--dest",
        &url,
        "--dry-run",
        "--json",
        "--workload-roles",
        "billing_app",
    ]));
    assert_eq!(
        d["swap"]["impact"]["statements"]["failing"],
        json!([{"query": sql, "calls": 1, "error": "relation \"billing.old_inv\" does not exist"}]),
        "{d}"
    );
}

/// Row-level security and policies come from the source with their tables:
/// a destination policy the source lacks is gone after the swap, and every
/// role allowed to use the table reads every row. The report names each such
/// change (`row_access`), in the dry run, `prepare`'s summary, the swap's
/// warnings, and, the other way round, the rollback's; a policy the same on
/// both sides (through a function of the migrated schema) is none.
#[test]
fn row_level_security_the_swap_changes_is_reported_and_warned() {
    let dbs = TestDbs::new("imp_rls");
    let both = "CREATE FUNCTION tenant() RETURNS text LANGUAGE sql STABLE
                  AS $$ SELECT current_setting('app.tenant', true) $$;
                CREATE TABLE docs (id int PRIMARY KEY, tenant text);
                ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
                CREATE POLICY by_tenant ON docs USING (tenant = public.tenant());
                CREATE TABLE users (id int PRIMARY KEY, tenant text);
                CREATE TABLE notes (id int PRIMARY KEY, who text);
                ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
                CREATE POLICY mine ON notes FOR SELECT USING (who = current_user);";
    dbs.src.psql(both);
    dbs.dst.psql(both);
    dbs.dst.psql(
        "ALTER TABLE users ENABLE ROW LEVEL SECURITY;
         CREATE POLICY tenant_isolation ON users USING (tenant = public.tenant());",
    );
    dbs.src
        .psql("CREATE POLICY theirs ON notes AS RESTRICTIVE FOR SELECT USING (who <> 'admin');");
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let p = json_of(&wd.run_ok(&["prepare", "--source", &src, "--dest", &dst, "--json"]));
    let row_access = |impact: &Value| -> Vec<(String, String, String)> {
        impact["hazards"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["effect"] == "row_access")
            .map(|h| {
                (
                    h["code"].as_str().unwrap().to_string(),
                    h["object"].as_str().unwrap().to_string(),
                    h["detail"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let found = row_access(&p["impact"]);
    let codes: Vec<(&str, &str)> = found
        .iter()
        .map(|(c, o, _)| (c.as_str(), o.as_str()))
        .collect();
    assert_eq!(
        codes,
        [
            ("POLICY_ADDED", "public.notes.theirs"),
            ("RLS_DISABLED", "public.users")
        ],
        "{p}"
    );
    assert_eq!(
        found[1].2,
        "row-level security on -> off: every role allowed to use the table reads and writes every row (policy tenant_isolation (PERMISSIVE FOR ALL TO PUBLIC) no longer applies)"
    );
    assert!(
        found[0].2.starts_with(
            "RESTRICTIVE FOR SELECT TO PUBLIC USING ((who <> 'admin'::text)): its roles no longer read or write"
        ),
        "{p}"
    );

    let plan = json_of(&wd.run_ok(&["swap", "--dest", &dst, "--dry-run", "--json"]));
    assert_eq!(row_access(&plan["swap"]["impact"]), found, "{plan}");
    let text = wd.run_ok(&["swap", "--dest", &dst, "--dry-run"]);
    assert!(
        text.contains("impact: 2 changes to row-level security"),
        "{text}"
    );

    // Warned whatever the statements use (none are recorded here).
    let out = wd.run(&["swap", "--dest", &dst, "--json"]);
    let r = json_of(&assert_success(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warned = "RLS_DISABLED public.users (row-level security on -> off";
    assert!(stderr.contains(warned), "{stderr}");
    assert!(
        r["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().starts_with(warned)),
        "{r}"
    );
    assert_eq!(
        dbs.dst.query_one_string(
            "SELECT relrowsecurity FROM pg_class WHERE oid = 'public.users'::regclass"
        ),
        "f"
    );

    // The rollback turns it back on, and says so.
    let back = json_of(&wd.run_ok(&[
        "rollback",
        "--latest",
        "--dest",
        &dst,
        "--dry-run",
        "--json",
    ]));
    let codes: Vec<(String, String)> = row_access(&back["rollback"]["impact"])
        .into_iter()
        .map(|(c, o, _)| (c, o))
        .collect();
    assert_eq!(
        codes,
        [
            (
                "POLICY_DROPPED".to_string(),
                "public.notes.theirs".to_string()
            ),
            ("RLS_ENABLED".to_string(), "public.users".to_string())
        ],
        "{back}"
    );
    let out = wd.run(&["rollback", "--latest", "--dest", &dst]);
    let said = common::said_by(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("RLS_ENABLED public.users (row-level security off -> on"),
        "{said}"
    );
}
