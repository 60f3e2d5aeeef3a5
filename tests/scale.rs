//! Thousands of objects on a destination whose lock table they overflow
//! (`max_connections = 20`, `max_locks_per_transaction = 64`: 2,688 slots).
//!
//! * prepare of a schema that needs several times the lock table in one
//!   transaction succeeds, in lock-bounded batches, and the shadow is exact;
//!   every batch transaction checks its real lock count against its estimate
//!   (`PGSHIFT_CHECK_LOCKS=1`);
//! * a failure in the middle of a batched phase leaves nothing behind, and a
//!   cleanup that itself stopped half-way is finished by `abort`;
//! * the swap's lock budget: the estimate is never below the real count of a
//!   swap held at its commit, nor far above it; a swap that cannot fit is
//!   announced by `prepare --dry-run` and by the end of `prepare`;
//! * the source: no session of pgshift holds a lock per table (pg_dump does);
//! * `cleanup` of a backup too big for one transaction's share of the lock
//!   table drops it in batches.
//!
//! The source is a default-sized cluster (pg_dump needs a slot per table
//! there, as it always does); both clusters and the generated source database
//! are shared by the tests of this file.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use common::{Cluster, TestDb, TestDbs, Workdir, assert_same_ddl, can_start_clusters, create_role};
use serde_json::Value;

/// Tables in the generated schema, besides `hub` and the partitioned `events`.
const TABLES: usize = 1300;
/// Partitions of `events`.
const PARTITIONS: usize = 200;

struct Env {
    src: Cluster,
    small: Cluster,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        std::thread::scope(|s| {
            let src = s.spawn(|| Cluster::start_with("scale-src", ""));
            let small = s.spawn(|| {
                // The lock table has max_locks_per_transaction slots per server
                // process. PostgreSQL 18 counts autovacuum_worker_slots (default
                // 16) where 13-17 count autovacuum_max_workers (3): 3 slots give
                // it the same size (within a special process) on every version.
                let mut conf = String::from("max_connections = 20\nmax_locks_per_transaction = 64");
                if common::bin_major() >= 18 {
                    conf.push_str("\nautovacuum_worker_slots = 3");
                }
                Cluster::start_with("small-locks", &conf)
            });
            let env = Env {
                src: src.join().expect("source cluster"),
                small: small.join().expect("small-locks cluster"),
            };
            // Roles the schema uses, on both clusters (roles are cluster-wide).
            for c in [&env.src, &env.small] {
                for role in ["scale_owner", "scale_ro"] {
                    c.psql("postgres", &create_role(role, ""));
                }
            }
            env
        })
    })
}

/// The big source database, generated once: TABLES tables (bigserial key,
/// a foreign key to the previous table, text, a second index, a grant), a
/// `hub`, and `events` partitioned into PARTITIONS (with an index and a
/// foreign key to `hub`), all owned by scale_owner, and an aggregate over
/// `(*)`, whose drop needs `cnt(*)` where PostgreSQL prints `cnt()`. Committed
/// every 200 tables: the source's own lock table is default-sized.
fn big_source() -> &'static TestDb {
    static SRC: OnceLock<TestDb> = OnceLock::new();
    SRC.get_or_init(|| {
        let db = env().src.create_db("src", "scale_big");
        db.psql(&format!(
            "CREATE TABLE hub (id int PRIMARY KEY, name text);
             INSERT INTO hub SELECT g, 'hub ' || g FROM generate_series(1, 10) g;
             ALTER TABLE hub OWNER TO scale_owner;
             DO $$
             DECLARE t text; prev text;
             BEGIN
               FOR i IN 1..{TABLES} LOOP
                 t := 't_' || lpad(i::text, 5, '0');
                 EXECUTE format('CREATE TABLE %I (id bigserial PRIMARY KEY, hub_id int NOT NULL,
                                  prev_id bigint %s, name text NOT NULL)', t,
                                CASE WHEN prev IS NULL THEN '' ELSE format('REFERENCES %I', prev) END);
                 EXECUTE format('CREATE INDEX ON %I (name)', t);
                 EXECUTE format('INSERT INTO %I (hub_id, name) SELECT 1 + g %% 10, %L || g FROM generate_series(1, 3) g', t, t);
                 EXECUTE format('ALTER TABLE %I OWNER TO scale_owner', t);
                 EXECUTE format('GRANT SELECT ON %I TO scale_ro', t);
                 prev := t;
                 IF i % 200 = 0 THEN COMMIT; END IF;
               END LOOP;
             END $$;
             CREATE TABLE events (id bigint NOT NULL, at date NOT NULL, hub_id int NOT NULL REFERENCES hub,
                                  payload text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
             ALTER TABLE events OWNER TO scale_owner;
             DO $$
             BEGIN
               FOR i IN 0..{PARTITIONS} - 1 LOOP
                 EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                                'events_' || lpad(i::text, 4, '0'), date '2020-01-01' + 7 * i, date '2020-01-01' + 7 * (i + 1));
                 EXECUTE format('ALTER TABLE %I OWNER TO scale_owner', 'events_' || lpad(i::text, 4, '0'));
                 IF i % 100 = 99 THEN COMMIT; END IF;
               END LOOP;
             END $$;
             CREATE INDEX ON events (hub_id);
             INSERT INTO events SELECT g, date '2020-01-01' + g % (7 * {PARTITIONS}), 1 + g % 10, 'p' || g
               FROM generate_series(1, 5000) g;
             GRANT SELECT ON events TO scale_ro;
             CREATE VIEW recent AS SELECT e.id, h.name FROM events e JOIN hub h ON h.id = e.hub_id;
             CREATE FUNCTION inc(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1 + 1';
             CREATE AGGREGATE cnt(*) (sfunc = inc, stype = int, initcond = '0');
             ANALYZE;"
        ));
        db
    })
}

/// A fresh destination database on the small-locks cluster, serving an
/// application: its own `hub` with a grant the shadow must inherit.
fn small_dest(name: &str) -> TestDb {
    let db = env().small.create_db("dst", name);
    db.psql(
        "CREATE TABLE hub (id int PRIMARY KEY, name text); INSERT INTO hub VALUES (1, 'old');
         GRANT SELECT ON hub TO scale_ro;",
    );
    db
}

fn prepare(wd: &Workdir, src: &TestDb, dst: &TestDb, env: &[(&str, &str)]) -> std::process::Output {
    wd.run_env(
        &[
            "prepare",
            "--source",
            &src.url(),
            "--dest",
            &dst.url(),
            "--keep-source-owners",
            "--json",
        ],
        &[&[("PGSHIFT_CHECK_LOCKS", "1")], env].concat(),
    )
}

/// `relation|rows` of every table of `schema`, one transaction per table (a
/// query counting them all would need a lock per table at once).
fn row_counts(db: &TestDb, schema: &str) -> String {
    db.psql(&format!(
        "SELECT format('SELECT %L, count(*) FROM ONLY %I.%I', c.relname, n.nspname, c.relname)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = '{schema}' AND c.relkind = 'r' ORDER BY c.relname
         \\gexec"
    ))
}

/// Nothing of a migration is left on the destination.
fn assert_nothing_left(dst: &TestDb, what: &str) {
    assert_eq!(
        dst.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'shadow'"),
        "0",
        "{what}: shadow left"
    );
    assert_eq!(
        dst.psql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgshift%'"),
        "0",
        "{what}: trigger left"
    );
    assert_eq!(
        dst.psql(
            "SELECT coalesce(string_agg(c.relname, ',' ORDER BY c.relname), '') FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'pgshift' AND c.relkind = 'r'"
        ),
        "backups,meta,migration",
        "{what}: helper tables left"
    );
    assert_eq!(
        dst.psql("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pgshift'"),
        "0",
        "{what}: helper functions left"
    );
    // The application's public is as it was.
    assert_eq!(
        dst.psql("SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"),
        "hub,hub_pkey",
        "{what}: public changed"
    );
}

fn json(out: &std::process::Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn prepare_of_a_schema_larger_than_the_lock_table_is_exact() {
    if !can_start_clusters() {
        return;
    }
    let src = big_source();
    let dst = small_dest("scale_ok");
    let wd = Workdir::new();

    // The plan already knows the swap will not fit this lock table.
    let (src_url, dst_url) = (src.url(), dst.url());
    let dry = [
        "prepare",
        "--source",
        &src_url,
        "--dest",
        &dst_url,
        "--dry-run",
    ];
    let plan = json(&wd.run(&[&dry[..], &["--json"]].concat()));
    let budget = &plan["plan"]["swap_lock_budget"];
    assert_eq!(budget["fits"], false, "{budget}");
    // 64 × (20 connections + autovacuum, worker and WAL sender processes).
    let capacity = budget["capacity"].as_u64().unwrap();
    assert!(
        capacity.is_multiple_of(64) && capacity > 64 * 20,
        "{budget}"
    );
    assert!(budget["needed"].as_u64().unwrap() > capacity, "{budget}");
    let setting = budget["setting_that_fits"].as_u64().unwrap();
    assert!(setting > 64 && setting.is_multiple_of(64), "{budget}");
    let warned = plan["plan"]["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| {
            let w = w.as_str().unwrap();
            w.contains(&format!("max_locks_per_transaction = {setting}"))
                && w.contains("restart")
                // The plan's budget is the object-level upper bound, and it says so.
                && w.starts_with("an object-level swap would need about")
                && w.contains("a swap by renaming schemas needs far fewer")
        });
    assert!(warned, "{plan}");
    // The text plan says it once, as that bound, not as a refusal too.
    let text = String::from_utf8_lossy(&wd.run(&dry).stdout).into_owned();
    let said: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("lock-table slots"))
        .collect();
    assert!(
        said.len() == 1 && said[0].starts_with("warning: an object-level swap would need about"),
        "{text}"
    );

    // Meanwhile, the most lock-table slots any of pgshift's own sessions holds
    // on the source (pg_dump, which needs one per table, is not one of them).
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let info = src.server().clone();
        let dbname = src.name().to_string();
        std::thread::spawn(move || {
            let mut most = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let n: i64 = info
                    .psql(
                        &dbname,
                        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM pg_locks l
                           JOIN pg_stat_activity a ON a.pid = l.pid
                          WHERE a.application_name = 'pgshift prepare' AND NOT l.fastpath GROUP BY l.pid) s",
                    )
                    .parse()
                    .unwrap_or(0);
                most = most.max(n);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            most
        })
    };
    let out = prepare(&wd, src, &dst, &[]);
    stop.store(true, Ordering::Relaxed);
    let most = sampler.join().unwrap();
    let report = json(&out);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each COPY releases its table's lock, sequences are read 100 at a time
    // (with catalog locks: 135 rows of pg_locks): no session accumulates a
    // lock per table.
    assert!(
        most > 0 && most <= 200,
        "a pgshift session held {most} locks on the source"
    );
    assert_same_ddl(src, &dst);
    assert_eq!(row_counts(&dst, "shadow"), row_counts(src, "public"));
    // Owners (--keep-source-owners) and the destination's grant, batched too.
    assert_eq!(
        dst.psql(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'shadow' AND c.relkind IN ('r', 'p') AND c.relowner <> 'scale_owner'::regrole"
        ),
        "0"
    );
    assert_eq!(
        dst.psql("SELECT has_table_privilege('scale_ro', 'shadow.hub', 'SELECT')"),
        "t"
    );
    // At the end of prepare, the budget of the swap as it will run: by
    // renaming schemas it locks public's relations only, and fits.
    let budget = &report["swap_lock_budget"];
    assert_eq!(budget["swap_mode"], "rename", "{budget}");
    assert_eq!(budget["fits"], true, "{budget}");

    // An object-level swap (every object moves) does not fit: refused before
    // any lock, in the dry run, in status and by the swap itself, naming the
    // setting and the value; the destination is unchanged.
    let object = [("PGSHIFT_SWAP_MODE", "object")];
    let dry = json(&wd.run_env(
        &["swap", "--dest", &dst.url(), "--dry-run", "--json"],
        &object,
    ));
    let budget = &dry["swap"]["swap_lock_budget"];
    assert_eq!(budget["swap_mode"], "object", "{budget}");
    assert_eq!(budget["fits"], false, "{budget}");
    let setting = budget["setting_that_fits"].as_u64().unwrap();
    assert!(
        setting > 64 && budget["needed"].as_u64() > budget["capacity"].as_u64(),
        "{budget}"
    );
    // The text dry run says so too, and that the rename swap fits.
    let text = |env: &[(&str, &str)]| {
        let out = wd.run_env(&["swap", "--dest", &dst.url(), "--dry-run"], env);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = text(&object);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("warning: the swap needs about")
                && l.ends_with("the swap would be refused before any lock")),
        "{shown}"
    );
    let shown = text(&[]);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("Lock table: needs about")
                && l.ends_with(" for the swap by renaming schemas: fits")),
        "{shown}"
    );
    let st = json(&wd.run_env(&["status", "--dest", &dst.url(), "--json"], &object));
    assert_eq!(st["swap_lock_budget"]["fits"], false, "{st}");
    assert_eq!(st["swap_allowed"], false, "{st}");
    assert!(
        st["swap_blocked_reason"]
            .as_str()
            .unwrap_or("")
            .contains("max_locks_per_transaction"),
        "{st}"
    );
    let before = row_counts(&dst, "public");
    let out = wd.run_env(&["swap", "--dest", &dst.url()], &object);
    let (line, stderr) = error_line(&out);
    assert!(
        line.contains(&format!("max_locks_per_transaction = {setting}"))
            && line.contains("nothing was changed"),
        "{stderr}"
    );
    assert_eq!(row_counts(&dst, "public"), before);
    assert_eq!(
        dst.psql("SELECT status FROM pgshift.migration ORDER BY id DESC LIMIT 1"),
        "prepared"
    );
    assert_eq!(dst.psql("SELECT count(*) FROM pgshift.backups"), "0");

    // The default (rename) swap of the same shadow fits and completes.
    let out = wd.run(&["swap", "--dest", &dst.url(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["swap_mode"], "rename");
    assert_eq!(row_counts(&dst, "public"), row_counts(src, "public"));
    // --keep-source-owners holds through the swap (it does not level owners
    // with the destination's).
    assert_eq!(
        dst.psql(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relowner <> 'scale_owner'::regrole"
        ),
        "0"
    );

    // Rolling back object by object does not fit either: refused under its
    // own name before any lock; the destination is unchanged.
    let out = wd.run_env(&["rollback", "--dest", &dst.url(), "--latest"], &object);
    let (line, stderr) = error_line(&out);
    assert!(
        line.contains("the rollback needs about")
            && line.contains("max_locks_per_transaction = ")
            && line.contains("nothing was changed"),
        "{stderr}"
    );
    assert_eq!(row_counts(&dst, "public"), row_counts(src, "public"));
    assert_eq!(dst.psql("SELECT count(*) FROM pgshift.backups"), "1");
}

#[test]
fn a_failure_in_the_middle_of_a_batched_phase_leaves_nothing_behind() {
    if !can_start_clusters() {
        return;
    }
    let src = big_source();
    let dst = small_dest("scale_fail");
    // Half-way through the pre-data restore; half-way through the privileges
    // (everything else built: the cleanup drops a complete shadow in batches).
    for point in ["schema-batch", "privileges-batch"] {
        let wd = Workdir::new();
        let out = prepare(&wd, src, &dst, &[("PGSHIFT_FAILPOINT", point)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{point}: {stderr}");
        assert!(stderr.contains("injected failure"), "{point}: {stderr}");
        let phase = point.trim_end_matches("-batch");
        assert_eq!(
            dst.psql(
                "SELECT status || ':' || phase FROM pgshift.migration ORDER BY id DESC LIMIT 1"
            ),
            format!("failed:{phase}")
        );
        assert_nothing_left(&dst, point);
    }
    // The cleanup after a failure stops half-way itself: what is left is
    // found, and `abort` finishes the job.
    let wd = Workdir::new();
    let out = prepare(
        &wd,
        src,
        &dst,
        &[("PGSHIFT_FAILPOINT", "analyze,cleanup-batch")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("pgshift abort"), "{stderr}");
    assert_eq!(
        dst.psql("SELECT status || ':' || phase FROM pgshift.migration ORDER BY id DESC LIMIT 1"),
        "failed:analyze"
    );
    let left: i64 = dst
        .psql("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'shadow'")
        .parse()
        .unwrap();
    assert!(left > 0, "the interrupted cleanup left nothing to finish");
    let out = wd.run_env(
        &["abort", "--dest", &dst.url(), "--json"],
        &[("PGSHIFT_CHECK_LOCKS", "1")],
    );
    let r = json(&out);
    assert_eq!(r["aborted"], true, "{r}");
    assert_nothing_left(&dst, "abort after a half-done cleanup");
}

/// A run that failed (exit 1): its `error: ` line and the whole stderr.
fn error_line(out: &std::process::Output) -> (String, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default()
        .to_string();
    (line, stderr)
}

/// Count the lock-table slots (distinct locks outside the fast path) held by
/// the backend of `application_name` on `db`.
fn slots_held(db: &TestDb, application_name: &str) -> i64 {
    db.psql(&format!(
        "SELECT count(*) FROM (SELECT DISTINCT l.locktype, l.database, l.relation, l.page, l.tuple, l.virtualxid,
                l.transactionid::text, l.classid, l.objid, l.objsubid
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE a.application_name = '{application_name}' AND a.datname = current_database()
            AND NOT l.fastpath) s"
    ))
    .parse()
    .unwrap()
}

/// Run `args` (a swap or a rollback) paused after it has listed what it moves (where
/// `at_listed` runs) and at its commit, and count the lock-table slots its
/// backend holds there; the swap must then succeed.
fn held_at_commit(wd: &Workdir, dbs: &TestDbs, args: &[&str], at_listed: impl FnOnce()) -> i64 {
    let mut swap = wd
        .cmd()
        .args(args)
        .env(
            "PGSHIFT_FAILPOINT",
            "swap-listed:sleep=2000,swap-commit:sleep=3000",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(swap.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let mut at_listed = Some(at_listed);
    let paused = loop {
        match lines.next() {
            Some(Ok(l)) => {
                log.push_str(&l);
                log.push('\n');
                if l.contains("pausing") && l.contains("swap-listed") {
                    if let Some(act) = at_listed.take() {
                        act();
                    }
                } else if l.contains("pausing") {
                    break true;
                }
            }
            _ => break false,
        }
    };
    assert!(paused, "the swap never reached its commit:\n{log}");
    let held = slots_held(&dbs.dst, &format!("pgshift {}", args[0]));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(swap.wait().unwrap().success(), "{log}{}", rest.join("\n"));
    held
}

/// `args` (a swap or a rollback, `key` its dry run's JSON key) run once as
/// a dry run for its budget, then for real, held at its commit: the budget,
/// its estimate, and the slots held.
fn estimated_and_held(wd: &Workdir, dbs: &TestDbs, args: &[&str], key: &str) -> (Value, i64, i64) {
    let mut dry = args.to_vec();
    dry.extend(["--dry-run", "--json"]);
    let budget = json(&wd.run(&dry))[key]["swap_lock_budget"].clone();
    let needed = budget["needed"].as_i64().unwrap();
    let held = held_at_commit(wd, dbs, args, || {});
    (budget, needed, held)
}

/// The budget's estimate `needed` against the slots the `what` ("swap",
/// "rollback") `held`: never below, and not far above (a quarter and the
/// fixed part's 40).
fn assert_estimate_covers(needed: i64, held: i64, what: &str, budget: &Value) {
    assert!(
        needed >= held,
        "estimated {needed}, the {what} held {held}: {budget}"
    );
    assert!(
        needed <= held + held / 4 + 40,
        "estimated {needed}, far above the {held} the {what} held: {budget}"
    );
}

/// Each schema pair adds its live, incoming and backup schemas to the fixed
/// part: a swap of 15 schemas of one table each holds more than one pair's
/// fixed part allows for.
#[test]
fn the_budget_of_a_swap_of_many_schemas_covers_their_locks() {
    let Some(dbs) = small_pair("scale_budget_schemas") else {
        return;
    };
    let schemas: Vec<String> = std::iter::once("public".to_string())
        .chain((1..15).map(|i| format!("s{i}")))
        .collect();
    let ddl: String = schemas
        .iter()
        .map(|s| {
            format!("CREATE SCHEMA IF NOT EXISTS {s}; CREATE TABLE {s}.t (id int PRIMARY KEY);")
        })
        .collect();
    dbs.src.psql(&ddl);
    dbs.dst.psql(&ddl);
    let wd = Workdir::new();
    let list = schemas.join(",");
    json(&wd.prepare(&dbs, &["--schemas", &list, "--json"]));
    let url = dbs.dst.url();
    let swap = ["swap", "--dest", &url, "--swap-mode", "object"];
    let (budget, needed, held) = estimated_and_held(&wd, &dbs, &swap, "swap");
    let budget = &budget;
    eprintln!(
        "swap of {} schemas: estimated {needed}, held {held}",
        schemas.len()
    );
    assert_estimate_covers(needed, held, "swap", budget);
}

/// Types and domains (enums, composites, ranges) move with `ALTER TYPE …
/// SET SCHEMA`, which takes no lock; the budget counted one each and
/// refused, on a small lock table, a swap of a schema of many types that
/// fitted it (h42b: 762 estimated, 488 held).
#[test]
fn the_budget_of_an_object_swap_does_not_count_types_as_locks() {
    let Some(dbs) = small_pair("scale_budget_types") else {
        return;
    };
    let ddl = "CREATE TABLE t (id int PRIMARY KEY);
         DO $$ BEGIN FOR i IN 1..40 LOOP
           EXECUTE format('CREATE TYPE %I AS ENUM (''a'', ''b'')', 'e_' || i);
           EXECUTE format('CREATE DOMAIN %I AS int CHECK (VALUE > 0)', 'd_' || i);
           EXECUTE format('CREATE TYPE %I AS (a int, b text)', 'c_' || i);
           EXECUTE format('CREATE TYPE %I AS RANGE (subtype = int8)', 'r_' || i);
           EXECUTE format('CREATE FUNCTION %I() RETURNS int LANGUAGE sql AS ''SELECT 1''', 'f_' || i);
         END LOOP; END $$;";
    dbs.src.psql(ddl);
    dbs.dst.psql(ddl);
    let wd = Workdir::new();
    json(&wd.prepare(&dbs, &["--json"]));
    let url = dbs.dst.url();
    let swap = ["swap", "--dest", &url, "--swap-mode", "object"];
    let (budget, needed, held) = estimated_and_held(&wd, &dbs, &swap, "swap");
    let budget = &budget;
    eprintln!(
        "object swap of 160 types and domains and 40 functions: estimated {needed}, held {held}: {budget}"
    );
    assert!(
        held >= 40,
        "only {held} slots held: the swap was not measured"
    );
    assert_estimate_covers(needed, held, "swap", budget);
}

/// A kept table that the others reference: the swap detaches each key of a
/// table moving to the backup, and a rollback that keeps it again re-points
/// or detaches each; dropping a key locks it and its four triggers. The
/// budget left those out (h40b: a rollback "fits" by 6,258 slots failed with
/// "out of shared memory").
#[test]
fn the_budget_of_a_swap_and_a_rollback_keeping_a_referenced_table_covers_its_keys() {
    let Some(dbs) = small_pair("scale_budget_keys") else {
        return;
    };
    let ddl = "CREATE TABLE users (id int PRIMARY KEY);
         INSERT INTO users SELECT generate_series(1, 5);
         DO $$ BEGIN FOR i IN 1..60 LOOP
           EXECUTE format('CREATE TABLE %I (id serial PRIMARY KEY, u int REFERENCES users)', 't_' || i);
         END LOOP; END $$;";
    dbs.src.psql(ddl);
    dbs.dst.psql(ddl);
    let wd = Workdir::new();
    json(&wd.prepare(&dbs, &["--keep-tables", "users", "--json"]));
    let url = dbs.dst.url();
    for (args, key) in [
        (vec!["swap", "--dest", &url], "swap"),
        (
            vec![
                "rollback",
                "--dest",
                &url,
                "--latest",
                "--keep-tables",
                "users",
            ],
            "rollback",
        ),
    ] {
        let (budget, needed, held) = estimated_and_held(&wd, &dbs, &args, key);
        let budget = &budget;
        eprintln!("{key} keeping a referenced table: estimated {needed}, held {held}");
        assert!(
            held > 300,
            "only {held} slots held: the {key} was not measured"
        );
        assert_estimate_covers(needed, held, key, budget);
    }
}

#[test]
fn the_swap_budget_covers_the_locks_a_real_swap_holds() {
    let Some(dbs) = small_pair("scale_budget") else {
        return;
    };
    // Every kind of object the swap moves: tables with owned sequences
    // (serial, identity), a partitioned table, inheritance, views on views, a
    // materialized view, standalone sequences, functions, a procedure, an
    // aggregate, types; a preserved table with a deferred foreign key.
    let schema = "CREATE TABLE users (id bigserial PRIMARY KEY, name text);
         INSERT INTO users (name) VALUES ('a'), ('b');
         DO $$ BEGIN FOR i IN 1..12 LOOP
           EXECUTE format('CREATE INDEX %I ON users (name, id) WHERE id > %s', 'users_i' || i, i);
         END LOOP; END $$;
         CREATE TABLE orders (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, user_id bigint REFERENCES users, note text);
         DO $$ BEGIN FOR i IN 1..80 LOOP
           EXECUTE format('CREATE TABLE %I (id serial PRIMARY KEY, v text)', 'x_' || i);
         END LOOP; END $$;
         CREATE TABLE ev (id bigint, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         DO $$ BEGIN FOR i IN 0..29 LOOP
           EXECUTE format('CREATE TABLE %I PARTITION OF ev FOR VALUES FROM (%L) TO (%L)', 'ev_' || i,
                          date '2020-01-01' + 10 * i, date '2020-01-01' + 10 * (i + 1));
         END LOOP; END $$;
         CREATE TABLE parent (a int); CREATE TABLE child (b int) INHERITS (parent);
         CREATE VIEW v1 AS SELECT * FROM users; CREATE VIEW v2 AS SELECT v1.name, orders.note FROM v1 JOIN orders ON orders.user_id = v1.id;
         CREATE MATERIALIZED VIEW mv AS SELECT count(*) FROM ev;
         CREATE SEQUENCE s1; CREATE SEQUENCE s2;
         CREATE TYPE mood AS ENUM ('a', 'b'); CREATE TYPE pair AS (a int, b text); CREATE DOMAIN posint AS int CHECK (VALUE > 0);
         CREATE FUNCTION f1(int) RETURNS int LANGUAGE sql AS 'SELECT $1';
         CREATE FUNCTION f2() RETURNS bigint LANGUAGE sql BEGIN ATOMIC SELECT count(*) FROM users; END;
         CREATE PROCEDURE p1() LANGUAGE sql AS 'SELECT 1';
         CREATE AGGREGATE agg1(int) (sfunc = int4pl, stype = int);";
    let atomic = "BEGIN ATOMIC SELECT count(*) FROM users; END;";
    assert!(schema.contains(atomic));
    if dbs.src.server_major() >= 14 {
        dbs.src.psql(schema);
    } else {
        println!(
            "skipped on PostgreSQL {}: f2's SQL-standard body (BEGIN ATOMIC, from 14 on); it has a string body",
            dbs.src.server_major()
        );
        dbs.src
            .psql(&schema.replace(atomic, "AS 'SELECT count(*) FROM users';"));
    }
    // The destination's public (moved out to the backup): an older version.
    dbs.dst.psql(
        "CREATE TABLE users (id bigserial PRIMARY KEY, name text); INSERT INTO users (name) VALUES ('x'), ('y'), ('z');
         DO $$ BEGIN FOR i IN 1..12 LOOP
           EXECUTE format('CREATE INDEX %I ON users (name, id) WHERE id > %s', 'users_i' || i, i);
         END LOOP; END $$;
         DO $$ BEGIN FOR i IN 1..100 LOOP
           EXECUTE format('CREATE TABLE %I (id serial PRIMARY KEY, v text)', 'old_' || i);
         END LOOP; END $$;
         CREATE VIEW oldv AS SELECT * FROM old_1; CREATE FUNCTION oldf() RETURNS int LANGUAGE sql AS 'SELECT 1';",
    );
    let wd = Workdir::new();
    let dry = json(&wd.prepare(
        &dbs,
        &["--preserved-tables", "users", "--dry-run", "--json"],
    ));
    let planned = dry["plan"]["swap_lock_budget"]["needed"].as_i64().unwrap();
    let out = wd.prepare(&dbs, &["--preserved-tables", "users", "--json"]);
    let report = json(&out);
    assert_eq!(report["swap_lock_budget"]["fits"], true, "{report}");
    // The object-level swap's budget (it moves every object: the most locks).
    let dry = json(&wd.run(&[
        "swap",
        "--dest",
        &dbs.dst.url(),
        "--swap-mode",
        "object",
        "--dry-run",
        "--json",
    ]));
    let budget = &dry["swap"]["swap_lock_budget"];
    assert_eq!(budget["fits"], true, "{budget}");
    let needed = budget["needed"].as_i64().unwrap();

    // Hold the swap at its commit and count what its backend holds. Rows
    // written to the preserved table after its last catch-up (while the swap
    // pauses once it has listed what moves) are replayed under the locks,
    // which locks the indexes of both its sides.
    let held = held_at_commit(
        &wd,
        &dbs,
        &["swap", "--dest", &dbs.dst.url(), "--swap-mode", "object"],
        || {
            dbs.dst.psql(
                "UPDATE users SET name = name || '!'; INSERT INTO users (name) VALUES ('late')",
            );
        },
    );
    eprintln!("swap lock budget: planned {planned}, estimated {needed}, held {held}");
    // Never below the real count; not far above it.
    assert!(
        held > 150,
        "only {held} slots held: the swap was not measured"
    );
    assert_estimate_covers(needed, held, "swap", budget);
    // The plan (from the source's catalog) is as close, and the upper bound
    // it says it is: never below the prepared migration's estimate (it left
    // out the sequences the swap fences and carries).
    assert!(
        planned >= held && planned <= held + held / 4 + 40,
        "planned {planned}, held {held}"
    );
    assert!(planned >= needed, "planned {planned}, estimated {needed}");

    // The backup (the old public: 100 tables with their sequences, keys and
    // TOAST) needs more than one transaction's share of this lock table to
    // drop: cleanup empties it in batches, then drops it with its manifest.
    let backup = dbs
        .dst
        .psql("SELECT schema_name FROM pgshift.backups ORDER BY ts DESC LIMIT 1");
    // A reader of one of its tables: dropping in parts would stop half way
    // at that table, so the backup is skipped before anything is dropped.
    let count_relations = || {
        dbs.dst.psql(&format!(
            "SELECT count(*) FROM pg_class WHERE relnamespace = '{backup}'::regnamespace"
        ))
    };
    let before = count_relations();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let holder = rt.block_on(dbs.dst.client());
    let table = dbs.dst.psql(&format!(
        "SELECT relname FROM pg_class WHERE relnamespace = '{backup}'::regnamespace AND relkind = 'r' ORDER BY relname DESC LIMIT 1"
    ));
    rt.block_on(holder.batch_execute(&format!(
        "BEGIN; LOCK TABLE {backup}.{table} IN ACCESS SHARE MODE"
    )))
    .unwrap();
    let cleanup_with = |failpoint: &str, extra: &[&str]| {
        cleanup_all(
            &wd,
            &dbs.dst,
            extra,
            &[
                ("PGSHIFT_FAILPOINT", failpoint),
                ("PGSHIFT_CHECK_LOCKS", "1"),
            ],
        )
    };
    let cleanup = |failpoint: &str| cleanup_with(failpoint, &[]);
    let r = json(&cleanup(""));
    assert!(r["dropped"].as_array().unwrap().is_empty(), "{r}");
    let reason = r["skipped"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("is in use (by the session with pid")
            && reason.contains("nothing was dropped"),
        "{r}"
    );
    assert_eq!(count_relations(), before);
    rt.block_on(holder.batch_execute("ROLLBACK")).unwrap();
    // Stopped once emptied in parts, before the last drop: list, status and
    // rollback (even forced) say it is partly dropped; the next cleanup
    // drops the rest.
    let out = cleanup("cleanup-shrunk");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lock-bounded transactions"),
        "the backup was not dropped in batches: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = json(&wd.run(&["list", "--dest", &dbs.dst.url(), "--json"]));
    assert_eq!(list[0]["partly_dropped"], true, "{list}");
    let out = wd.run(&["verify", "--latest", "--dest", &dbs.dst.url(), "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let verified = json(&out);
    assert!(
        verified["warnings"]
            .to_string()
            .contains(&format!("{backup} is partly dropped")),
        "{verified}"
    );
    let status = json(&wd.run(&["status", "--dest", &dbs.dst.url(), "--json"]));
    assert!(
        status["warnings"]
            .to_string()
            .contains(&format!("backup {backup} is partly dropped")),
        "{status}"
    );
    let out = wd.run(&[
        "rollback",
        "--dest",
        &dbs.dst.url(),
        "--latest",
        "--force",
        "--allow-discard",
        "all",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!("{backup} is partly dropped"))
            && err.contains("cannot be restored, even with --force"),
        "{err}"
    );
    // A partly dropped backup can no longer be restored: `--keep-latest`
    // does not keep it as one of the newest (an intact older one went in
    // its place).
    let r = json(&cleanup_with("", &["--keep-latest", "1"]));
    assert_eq!(r["dropped"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(
        dbs.dst.psql(&format!(
            "SELECT count(*) FROM pg_namespace WHERE nspname = '{backup}'"
        )),
        "0"
    );
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM pgshift.backups"), "0");
}

/// Two backups that each fit one transaction's share of the lock table but
/// not together, and hold each other's dependents (so they go in one
/// transaction): each is emptied down to its half first, and the last
/// transaction holds no more than its share (`PGSHIFT_CHECK_LOCKS`).
#[test]
fn backups_dropped_together_fit_one_transaction_together() {
    let Some(dbs) = small_pair("scale_cleanup_group") else {
        return;
    };
    // About 60% of a transaction's share each (a table with its key, its
    // sequence and its TOAST takes about six slots).
    let tables = "DO $$ BEGIN FOR i IN 1..60 LOOP
           EXECUTE format('CREATE TABLE %I (id serial PRIMARY KEY, v text)', 't_' || i);
         END LOOP; END $$;";
    dbs.src.psql(tables);
    dbs.dst.psql(tables);
    let wd = Workdir::new();
    let [b0, b1] = &backups_made(&wd, &dbs, 2)[..] else {
        unreachable!()
    };
    dbs.dst.psql(&format!(
        "CREATE VIEW {b0}.v AS SELECT * FROM {b1}.t_1; CREATE VIEW {b1}.v AS SELECT * FROM {b0}.t_1;"
    ));
    // A reader done within --lock-timeout is waited for, as by a drop in one
    // transaction, not skipped at once (h38a).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let holder = rt.block_on(dbs.dst.client());
    rt.block_on(holder.batch_execute(&format!("BEGIN; LOCK TABLE {b0}.t_2 IN ACCESS SHARE MODE")))
        .unwrap();
    let reader = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        rt.block_on(holder.batch_execute("ROLLBACK")).unwrap();
    });
    let out = cleanup_all(
        &wd,
        &dbs.dst,
        &["--lock-timeout", "20s"],
        &[("PGSHIFT_CHECK_LOCKS", "1")],
    );
    reader.join().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{log}");
    let r = json(&out);
    let dropped: Vec<&str> = r["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["schema"].as_str().unwrap())
        .collect();
    assert_eq!(dropped, [b0.as_str(), b1.as_str()], "{r}");
    assert_eq!(r["dropped"][0]["together_with"][0], b1.as_str(), "{r}");
    assert!(
        log.contains("lock-bounded transactions"),
        "not emptied first: {log}"
    );
    assert_no_backups(&dbs.dst);
}

/// A group emptied in parts marks as partly dropped exactly the backups
/// that lose something: the one emptied, those whose objects CASCADE takes
/// along, however indirectly (a view over a view over its function; an
/// operator of its function), and not one whose dependency survives (a view
/// over the table dropped last).
#[test]
fn a_group_emptied_in_parts_marks_exactly_the_backups_that_lose_objects() {
    let Some(dbs) = small_pair("scale_cleanup_marks") else {
        return;
    };
    dbs.src.psql("CREATE TABLE t (id int PRIMARY KEY);");
    // The oldest backup (the destination's public) is several transactions'
    // worth; its `big` (many indexes) is the last thing the emptying drops,
    // its function `f` (with the views that depend on it) among the first,
    // as it takes fewer locks than any table.
    dbs.dst.psql(
        "DO $$ BEGIN FOR i IN 1..150 LOOP
           EXECUTE format('CREATE TABLE %I (id serial PRIMARY KEY, v text)', 't_' || i);
           FOR j IN 1..6 LOOP
             EXECUTE format('CREATE INDEX %I ON %I (v, id) WHERE id > %s', 't_' || i || '_' || j, 't_' || i, j);
           END LOOP;
         END LOOP; END $$;
         CREATE TABLE big (id int PRIMARY KEY, a int, b int, c int);
         DO $$ BEGIN FOR i IN 1..30 LOOP
           EXECUTE format('CREATE INDEX %I ON big (a, b, c, id) WHERE id > %s', 'big_' || i, i);
         END LOOP; END $$;
         CREATE FUNCTION f() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1';
         CREATE FUNCTION f2(int, int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT $1 = $2';",
    );
    let wd = Workdir::new();
    let url = dbs.dst.url();
    let b = backups_made(&wd, &dbs, 5);
    dbs.dst.psql(&format!(
        "CREATE VIEW {1}.v AS SELECT {0}.f() AS x;
         CREATE VIEW {2}.v AS SELECT * FROM {1}.v;
         CREATE VIEW {3}.w AS SELECT * FROM {0}.big;
         CREATE OPERATOR {4}.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = {0}.f2);",
        b[0], b[1], b[2], b[3], b[4]
    ));
    // Stopped once emptied, before the last transaction.
    let cleanup =
        |failpoint: &str| cleanup_all(&wd, &dbs.dst, &[], &[("PGSHIFT_FAILPOINT", failpoint)]);
    let out = cleanup("cleanup-shrunk");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = json(&wd.run(&["list", "--dest", &url, "--json"]));
    let partly = |schema: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e["schema"] == schema)
            .unwrap_or_else(|| panic!("{schema} not in {list}"))["partly_dropped"]
            .clone()
    };
    // (b4 lost only an operator: counted as the other kinds are.)
    assert_eq!(
        [&b[0], &b[1], &b[2], &b[3], &b[4]].map(|s| partly(s)),
        [true, true, true, false, true].map(serde_json::Value::Bool),
        "{list}"
    );
    assert_eq!(
        dbs.dst.psql(&format!(
            "SELECT count(*) FROM pg_views WHERE schemaname IN ('{}', '{}', '{}')",
            b[1], b[2], b[3]
        )),
        "1",
        "only the view over big is left"
    );
    // The next cleanup drops them all.
    let out = cleanup("");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["dropped"].as_array().unwrap().len(), 5);
    assert_no_backups(&dbs.dst);
}

/// A source on the default-sized cluster and a destination on the small
/// one, or None where clusters cannot be started.
fn small_pair(name: &str) -> Option<TestDbs> {
    if !can_start_clusters() {
        return None;
    }
    let e = env();
    Some(TestDbs::on(&e.src, &e.small, name))
}

/// `n` backups, each the public a `start` from `dbs.src` replaced.
fn backups_made(wd: &Workdir, dbs: &TestDbs, n: usize) -> Vec<String> {
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let start = ["start", "--source", &src, "--dest", &dst, "--json"];
    (0..n)
        .map(|_| {
            json(&wd.run(&start))["swap"]["backup_schema"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// `cleanup --before 2999-01-01 --json` with `extra` and `env` (and info logs).
fn cleanup_all(
    wd: &Workdir,
    dst: &TestDb,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let url = dst.url();
    let mut args = vec![
        "cleanup",
        "--dest",
        &url,
        "--before",
        "2999-01-01",
        "--json",
    ];
    args.extend(extra);
    wd.run_env(&args, &[env, &[("RUST_LOG", "pgshift=info")]].concat())
}

/// No backup record nor backup schema is left.
fn assert_no_backups(db: &TestDb) {
    assert_eq!(db.psql("SELECT count(*) FROM pgshift.backups"), "0");
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'backup\\_%'"),
        "0"
    );
}
