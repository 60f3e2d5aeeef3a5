//! list, verify, rollback and cleanup against real clusters.

mod common;

use std::process::Output;

use common::{TestDb, TestDbs, Workdir, assert_success};
use serde_json::Value;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run_json(wd: &Workdir, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = wd.run_ok(&a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{out}"))
}

/// `rollback --latest --keep-tables <table>` with `extra`, as JSON.
fn rollback_keeping(wd: &Workdir, url: &str, table: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "rollback",
        "--dest",
        url,
        "--latest",
        "--keep-tables",
        table,
    ];
    args.extend(extra);
    run_json(wd, &args)
}

/// Prepare with `table` preserved, and swap: what a rollback keeping it
/// starts from. Returns the destination's URL.
fn swapped_preserving(wd: &Workdir, dbs: &TestDbs, table: &str) -> String {
    let url = dbs.dst.url();
    wd.run_ok(&[
        "prepare",
        "--source",
        &dbs.src.url(),
        "--dest",
        &url,
        "--preserved-tables",
        table,
    ]);
    wd.run_ok(&["swap", "--dest", &url]);
    url
}

/// Exit code and a one-line `error:` on stderr.
fn assert_usage_error(out: &Output, what: &str, needle: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: expected exit 2\nstdout: {}\nstderr: {stderr}",
        text(&out.stdout)
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: one line expected:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{what}: {stderr}");
    assert!(
        lines[0].contains(needle),
        "{what}: {needle:?} not in {stderr}"
    );
}

fn start(wd: &Workdir, dbs: &TestDbs) -> Value {
    run_json(
        wd,
        &[
            "start",
            "--source",
            &dbs.src.url(),
            "--dest",
            &dbs.dst.url(),
        ],
    )
}

/// The backup schema a `start --json` (or `swap --json` under `swap`) made.
fn backup_made(started: &Value) -> String {
    started["swap"]["backup_schema"]
        .as_str()
        .unwrap_or_else(|| panic!("no backup in {started}"))
        .to_string()
}

fn list(wd: &Workdir, db: &TestDb) -> Vec<Value> {
    run_json(wd, &["list", "--dest", &db.url()])
        .as_array()
        .expect("list --json prints an array")
        .clone()
}

/// Schemas and manifests: what bad input must leave unchanged.
fn catalog_fingerprint(db: &TestDb) -> String {
    db.psql(
        "SELECT (SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace),
                (SELECT string_agg(c.relnamespace::regnamespace::text || '.' || c.relname, ',' ORDER BY 1)
                   FROM pg_class c WHERE c.relnamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema', 'pg_toast')),
                (SELECT string_agg(ts || ':' || COALESCE(last_verified_at::text, '-') || ':' || manifest::text, ',' ORDER BY ts)
                   FROM pgshift.backups)",
    )
}

/// An older application on the destination, a newer one on the source.
fn app_v1_v2(dbs: &TestDbs) {
    dbs.src.create_extensions();
    dbs.dst.create_extensions();
    // v1: what the destination serves now.
    dbs.dst.psql(
        "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL);
         INSERT INTO users (name) SELECT 'old' || g FROM generate_series(1, 20) g;
         CREATE TABLE orders (id serial PRIMARY KEY, user_id int NOT NULL REFERENCES users (id), amount numeric NOT NULL);
         INSERT INTO orders (user_id, amount) SELECT (g % 20) + 1, g FROM generate_series(1, 50) g;
         CREATE TABLE places (id serial PRIMARY KEY, name text, geom geometry(Point, 4326));
         CREATE INDEX places_geom ON places USING gist (geom);
         INSERT INTO places (name, geom) VALUES ('v1', ST_SetSRID(ST_MakePoint(1, 2), 4326));
         CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 25;
         CREATE FUNCTION app_version() RETURNS text LANGUAGE sql AS $$ SELECT 'v1' $$;",
    );
    // v2: the new release, with more users (ids 1..40 include v1's) and a new column.
    dbs.src.psql(
        "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, email text);
         INSERT INTO users (name, email) SELECT 'new' || g, g || '@example.com' FROM generate_series(1, 40) g;
         CREATE TABLE orders (id serial PRIMARY KEY, user_id int NOT NULL REFERENCES users (id), amount numeric NOT NULL, note text);
         INSERT INTO orders (user_id, amount) SELECT (g % 40) + 1, g FROM generate_series(1, 80) g;
         CREATE TABLE places (id serial PRIMARY KEY, name text, geom geometry(Point, 4326));
         INSERT INTO places (name, geom) VALUES ('v2', ST_SetSRID(ST_MakePoint(3, 4), 4326));
         CREATE TABLE products (id serial PRIMARY KEY, title text);
         INSERT INTO products (title) VALUES ('p1'), ('p2');
         CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 60;
         CREATE FUNCTION app_version() RETURNS text LANGUAGE sql AS $$ SELECT 'v2' $$;",
    );
}

#[test]
fn list_and_verify_after_start() {
    let dbs = TestDbs::new("bk_list");
    app_v1_v2(&dbs);
    let wd = Workdir::new();
    let started = start(&wd, &dbs);
    let ts = started["swap"]["backup_timestamp"].as_i64().unwrap();
    let schema = backup_made(&started);

    let backups = list(&wd, &dbs.dst);
    assert_eq!(backups.len(), 1, "{backups:?}");
    let b = &backups[0];
    assert_eq!(b["timestamp"].as_i64(), Some(ts));
    assert_eq!(b["schema"].as_str(), Some(schema.as_str()));
    assert_eq!(b["kind"], "swap");
    let tables_in_backup: usize = dbs
        .dst
        .query_one_string(&format!(
            "SELECT count(*) FROM pg_tables WHERE schemaname = '{schema}'"
        ))
        .parse()
        .unwrap();
    assert_eq!(b["tables"].as_u64(), Some(tables_in_backup as u64));
    assert_eq!(tables_in_backup, 3);
    assert_eq!(b["total_rows"].as_i64(), Some(20 + 50 + 1));
    assert!(b["size_bytes"].as_i64().unwrap() > 0, "{b}");
    let created = b["created_at"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(created).expect("created_at is RFC 3339");
    let src = b["source"].as_str().unwrap();
    assert!(
        src.contains("***") && !src.contains(dbs.src.password()),
        "{src}"
    );
    assert!(b["last_verified_at"].is_null());

    // Human output: an aligned table with a header.
    let human = wd.run_ok(&["list", "--dest", &dbs.dst.url()]);
    assert!(human.starts_with("timestamp"), "{human}");
    assert!(human.contains(&schema), "{human}");

    // Intact: exit 0, recorded.
    let verify_json = || {
        run_json(
            &wd,
            &[
                "verify",
                "--dest",
                &dbs.dst.url(),
                "--timestamp",
                &ts.to_string(),
            ],
        )
    };
    let v = verify_json();
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["differences"].as_array().unwrap().is_empty());
    assert!(v.get("warnings").is_none(), "{v}");
    let found = |v: &Value, table: &str, what: &str| {
        v["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == table)
            .unwrap_or_else(|| panic!("{table} in {v}"))[what]
            .as_u64()
            .unwrap()
    };
    let (places_indexes, orders_sequences) = (
        found(&v, "places", "indexes"),
        found(&v, "orders", "sequences"),
    );
    assert!(places_indexes >= 1 && orders_sequences >= 1, "{v}");
    let b = &list(&wd, &dbs.dst)[0];
    assert_eq!(b["last_verify_ok"], true);
    assert!(b["last_verified_at"].as_str().is_some());
    // The schema name works as well as the timestamp, and --latest names it too.
    wd.run_ok(&["verify", "--dest", &dbs.dst.url(), "--timestamp", &schema]);
    let latest = run_json(&wd, &["verify", "--dest", &dbs.dst.url(), "--latest"]);
    assert_eq!(latest["schema"], schema.as_str(), "{latest}");

    // A row deleted from a backup table: exit 3, naming the table.
    dbs.dst
        .psql(&format!("DELETE FROM {schema}.orders WHERE id = 7"));
    let out = wd.run(&[
        "verify",
        "--dest",
        &dbs.dst.url(),
        "--timestamp",
        &ts.to_string(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let diffs = v["differences"].as_array().unwrap();
    assert_eq!(diffs.len(), 1, "{v}");
    assert_eq!(diffs[0]["table"], "orders");
    assert_eq!(diffs[0]["kind"], "row_count");
    assert_eq!(diffs[0]["expected"], "50");
    assert_eq!(diffs[0]["actual"], "49");
    assert!(
        text(&out.stderr).contains("orders"),
        "{}",
        text(&out.stderr)
    );
    let human = wd.run(&[
        "verify",
        "--dest",
        &dbs.dst.url(),
        "--timestamp",
        &ts.to_string(),
    ]);
    assert_eq!(human.status.code(), Some(3));
    assert!(text(&human.stdout).contains("table orders: 49 rows, the manifest recorded 50"));
    assert_eq!(list(&wd, &dbs.dst)[0]["last_verify_ok"], false);

    // An index made invalid and a dropped sequence are named too.
    dbs.dst.psql(&format!(
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{schema}.places_geom'::regclass;
         ALTER TABLE {schema}.orders ALTER COLUMN id DROP DEFAULT; DROP SEQUENCE {schema}.orders_id_seq;"
    ));
    let out = wd.run(&[
        "verify",
        "--dest",
        &dbs.dst.url(),
        "--timestamp",
        &ts.to_string(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<(String, String)> = v["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["table"].as_str().unwrap().to_string(),
                d["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("places".into(), "invalid_index".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("orders".into(), "missing_sequence".into())),
        "{kinds:?}"
    );
    // The counts are what was found, not what the manifest recorded.
    assert_eq!(found(&v, "places", "indexes"), places_indexes - 1, "{v}");
    assert_eq!(
        found(&v, "orders", "sequences"),
        orders_sequences - 1,
        "{v}"
    );

    // A manifest without recorded row counts lists no tables: verify can only
    // check the schema exists, and says so.
    dbs.dst.psql(&format!(
        "UPDATE pgshift.backups SET manifest = manifest || '{{\"counts_recorded\": false, \"tables\": []}}' WHERE ts = {ts}"
    ));
    let v = verify_json();
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap_or_default()
            .contains("only that its schemas exist was checked"),
        "{v}"
    );
}

/// A backup that lost objects besides its tables (a view, a function, a
/// type, a constraint, a trigger, and a column that `DROP EXTENSION …
/// CASCADE` on the live side took with it) is not intact: `verify` names
/// each, and an object added to it; rollback refuses it without --force. A
/// manifest of an earlier version, without its objects, is compared by its
/// tables alone, and verify says so.
#[test]
fn verify_names_the_objects_a_backup_lost_besides_its_tables() {
    let dbs = TestDbs::new("bk_objects");
    app_v1_v2(&dbs);
    dbs.dst.psql(
        "ALTER TABLE orders ADD CONSTRAINT orders_amount_check CHECK (amount > 0);
         CREATE TYPE mood AS ENUM ('ok', 'sad');
         CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
         CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch();
         CREATE SCHEMA other; CREATE TYPE other.kind AS ENUM ('a');
         CREATE FUNCTION of_kind(k other.kind) RETURNS int LANGUAGE sql AS 'SELECT 1';
         CREATE SCHEMA stay; CREATE TYPE stay.kind AS ENUM ('s');
         CREATE FUNCTION of_stay(k stay.kind) RETURNS int LANGUAGE sql AS 'SELECT 1';",
    );
    let wd = Workdir::new();
    let url = dbs.dst.url();
    let started = start(&wd, &dbs);
    let ts = started["swap"]["backup_timestamp"]
        .as_i64()
        .unwrap()
        .to_string();
    let s = backup_made(&started);
    let verify = || {
        let out = wd.run(&["verify", "--dest", &url, "--timestamp", &ts, "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stderr)));
        (out.status.code(), v)
    };
    let (code, v) = verify();
    assert_eq!((code, &v["ok"]), (Some(0), &Value::Bool(true)), "{v}");
    assert!(v.get("warnings").is_none(), "{v}");
    // A schema its argument types are in renamed: the same function.
    dbs.dst.psql("ALTER SCHEMA other RENAME TO other2");
    let (code, v) = verify();
    assert_eq!((code, &v["ok"]), (Some(0), &Value::Bool(true)), "{v}");
    assert!(v.get("warnings").is_none(), "{v}");
    let recorded = v["objects"]["recorded"].as_u64().unwrap();
    assert!(recorded > 10, "{v}");
    assert_eq!(v["objects"]["found"].as_u64(), Some(recorded), "{v}");
    // Its marker comment gone: rollback and cleanup would leave it alone,
    // so it is not intact (h38a).
    let marker = dbs
        .dst
        .psql(&format!("SELECT obj_description('{s}'::regnamespace)"));
    dbs.dst.psql(&format!("COMMENT ON SCHEMA {s} IS NULL"));
    let (code, v) = verify();
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(v["differences"][0]["kind"], "unmarked_schema", "{v}");
    assert_eq!(v["differences"].as_array().map(Vec::len), Some(1), "{v}");
    // Rollback refuses it the same way: exit 3, with --force too (h39a).
    let out = wd.run(&[
        "rollback",
        "--dest",
        &url,
        "--timestamp",
        &ts,
        "--dry-run",
        "--force",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("does not carry pgshift's marker comment"));
    dbs.dst
        .psql(&format!("COMMENT ON SCHEMA {s} IS '{marker}'"));
    assert_eq!(verify().0, Some(0));

    dbs.dst.psql(&format!(
        "DROP VIEW {s}.big_orders; DROP FUNCTION {s}.app_version(); DROP TYPE {s}.mood;
         ALTER TABLE {s}.orders DROP CONSTRAINT orders_amount_check;
         DROP TRIGGER orders_touch ON {s}.orders;
         DROP EXTENSION postgis CASCADE;
         ALTER FUNCTION {s}.touch() RENAME TO touch2;
         DROP FUNCTION {s}.of_stay(stay.kind);
         CREATE FUNCTION {s}.of_stay(k other2.kind) RETURNS int LANGUAGE sql AS 'SELECT 2';
         CREATE VIEW {s}.extra AS SELECT 1 AS one; CREATE EXTENSION citext SCHEMA {s};"
    ));
    let (code, v) = verify();
    assert_eq!(code, Some(3), "{v}");
    let mut found: Vec<(String, String, String)> = v["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let what = d["expected"].as_str().or(d["actual"].as_str());
            (
                d["kind"].as_str().unwrap().to_string(),
                d["table"].as_str().unwrap().to_string(),
                what.unwrap().to_string(),
            )
        })
        .collect();
    found.sort();
    let d = |kind: &str, table: &str, what: String| (kind.to_string(), table.to_string(), what);
    let mut want = vec![
        d("missing_index", "places", "places_geom".into()),
        d("missing_object", "", format!("function {s}.app_version()")),
        d("missing_object", "", format!("type {s}.mood")),
        d("missing_object", "", format!("view {s}.big_orders")),
        d(
            "missing_object",
            "orders",
            format!("table constraint orders_amount_check on {s}.orders"),
        ),
        d(
            "missing_object",
            "orders",
            format!("trigger orders_touch on {s}.orders"),
        ),
        d(
            "missing_object",
            "places",
            format!("table column {s}.places.geom"),
        ),
        d("missing_object", "", format!("function {s}.touch()")),
        // Its argument type's schema is still there: no rename, a change.
        d(
            "missing_object",
            "",
            format!("function {s}.of_stay(stay.kind)"),
        ),
        d(
            "unexpected_object",
            "",
            format!("function {s}.of_stay(other2.kind)"),
        ),
        d("unexpected_object", "", format!("function {s}.touch2()")),
        d("unexpected_object", "", format!("view {s}.extra")),
        d("unexpected_object", "", "extension citext".into()),
    ];
    want.sort();
    assert_eq!(found, want, "{v}");
    // Lost: the view, three functions, the type, the constraint, the
    // trigger, the column.
    assert_eq!(v["objects"]["found"].as_u64(), Some(recorded - 8), "{v}");
    let human = wd.run(&["verify", "--dest", &url, "--timestamp", &ts]);
    assert_eq!(human.status.code(), Some(3));
    assert!(
        text(&human.stdout).contains(&format!("view {s}.big_orders is missing")),
        "{}",
        text(&human.stdout)
    );

    // Rollback verifies first: refused, naming what is missing.
    let out = wd.run(&[
        "rollback",
        "--dest",
        &url,
        "--timestamp",
        &ts,
        "--allow-discard",
        "all",
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains(&format!("function {s}.app_version() is missing")),
        "{}",
        text(&out.stderr)
    );

    // A manifest written before objects were recorded: the tables alone.
    dbs.dst.psql(&format!(
        "UPDATE pgshift.backups SET manifest = manifest - 'objects' WHERE ts = {ts}"
    ));
    let (code, v) = verify();
    assert_eq!(code, Some(3), "{v}");
    let kinds: Vec<&str> = v["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["missing_index"], "{v}");
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("records its tables but not its other objects"),
        "{v}"
    );
    // Objects that cannot be read (a manifest damaged by hand, or a format
    // this version does not know) do not stop verify: the tables alone.
    dbs.dst.psql(&format!(
        "UPDATE pgshift.backups SET manifest = manifest || '{{\"objects\": {{\"x\": 1}}}}' WHERE ts = {ts}"
    ));
    let (code, v) = verify();
    assert_eq!(code, Some(3), "{v}");
    assert!(
        v["warnings"][0].as_str().unwrap().contains("not readable"),
        "{v}"
    );
}

/// A backup that changes while `verify` reads it (a rollback restoring it,
/// a cleanup dropping it) fails verify with the server's bare `relation …
/// does not exist`; it now says the backup changed meanwhile, naming the run
/// that holds the lock, and to verify again.
#[test]
fn a_backup_changed_while_verify_reads_it_is_said_so() {
    let (dbs, wd, url, backup) = started_backup("bk_verify_race");
    let mut child = wd
        .cmd()
        .args(["verify", "--dest", &url, "--latest"])
        .env("PGSHIFT_FAILPOINT", "verify-listed:sleep=5000")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Paused once it has listed the backup's tables: it says so.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("pausing 5000 ms at verify-listed") {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() == 0 {
            panic!("verify ended before the pause: {said}");
        }
        said.push_str(&line);
    }
    // A rollback's session holds the lock and moves the backup's tables.
    let holder = dbs.dst.server().clone();
    let db = dbs.dst.name().to_string();
    let lock = std::thread::spawn(move || {
        holder.psql(
            &db,
            "SET application_name = 'pgshift rollback pid=1 host=elsewhere'; SELECT pg_advisory_lock(1885827944, 1); SELECT pg_sleep(8)",
        );
    });
    assert!(common::wait_until(
        std::time::Duration::from_secs(10),
        || {
            dbs.dst
                .psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
                == "1"
        }
    ));
    dbs.dst.psql(&format!("DROP TABLE {backup}.orders CASCADE"));
    std::io::Read::read_to_string(&mut stderr, &mut said).unwrap();
    let (status, err) = (child.wait().unwrap(), said);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: verify failed: the backup changed while verify read it: pgshift rollback pid=1 host=elsewhere (server pid")
            && err.contains("verify again once it is done")
            && err.contains("does not exist"),
        "{err}"
    );
    lock.join().unwrap();
}

#[test]
fn bad_input_changes_nothing() {
    let dbs = TestDbs::new("bk_badinput");
    app_v1_v2(&dbs);
    let wd = Workdir::new();
    let started = start(&wd, &dbs);
    let ts = started["swap"]["backup_timestamp"].as_i64().unwrap();
    let before = catalog_fingerprint(&dbs.dst);
    let url = dbs.dst.url();

    let out = wd.run(&["verify", "--dest", &url, "--timestamp", "123"]);
    assert_usage_error(
        &out,
        "verify of a missing backup",
        "no backup with timestamp 123",
    );
    let out = wd.run(&["verify", "--dest", &url, "--timestamp", "backup_x;drop"]);
    assert_usage_error(&out, "verify of a bad reference", "is not a backup");
    let out = wd.run(&["verify", "--dest", &url]);
    assert_usage_error(&out, "verify of no backup", "--latest");
    let out = wd.run(&["verify", "--dest", &url, "--latest", "--timestamp", "1"]);
    assert_usage_error(&out, "verify of two backups", "cannot be used with");
    let out = wd.run(&["rollback", "--dest", &url, "--timestamp", "999"]);
    assert_usage_error(
        &out,
        "rollback to an unknown backup",
        "no backup with timestamp 999",
    );
    // A migration's id is unix milliseconds too: the backup its swap made is
    // named.
    let id = started["swap"]["migration_id"].as_i64().unwrap();
    let out = wd.run(&["rollback", "--dest", &url, "--timestamp", &id.to_string()]);
    assert_usage_error(
        &out,
        "rollback to a migration's id",
        &format!(
            "({id} is the id of the migration whose swap made backup backup_{ts}: give its timestamp, {ts})"
        ),
    );
    let out = wd.run(&["rollback", "--dest", &url, "--timestamp", "soon"]);
    assert_usage_error(&out, "rollback to a bad reference", "is not a backup");
    let out = wd.run(&[
        "rollback",
        "--dest",
        &url,
        "--latest",
        "--timestamp",
        &ts.to_string(),
    ]);
    assert_usage_error(&out, "--latest with --timestamp", "cannot be used with");
    let out = wd.run(&[
        "rollback",
        "--dest",
        &url,
        "--latest",
        "--keep-tables",
        "nosuch",
    ]);
    assert_usage_error(
        &out,
        "--keep-tables of a missing table",
        "public has no table nosuch",
    );
    let out = wd.run(&[
        "rollback",
        "--dest",
        &url,
        "--latest",
        "--keep-tables",
        "a;drop table b",
    ]);
    assert_usage_error(&out, "--keep-tables with SQL", "--keep-tables");
    // Only the object-level swap leaves a table where it is: said before
    // anything is read, without the impact report's warnings first.
    let out = wd.run(&[
        "rollback",
        "--dest",
        &url,
        "--latest",
        "--keep-tables",
        "users",
        "--swap-mode",
        "rename",
    ]);
    assert_usage_error(
        &out,
        "--keep-tables with --swap-mode rename",
        "--swap-mode rename is not possible with --keep-tables",
    );
    for bad in ["yesterday", "2025-13-45", "15/07/2025", "12h"] {
        let out = wd.run(&["cleanup", "--dest", &url, "--before", bad]);
        assert_usage_error(&out, "unparsable --before", "--before");
        assert!(text(&out.stderr).contains("unix milliseconds"));
    }
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
}

#[test]
fn rollback_restores_the_old_public_and_can_itself_be_rolled_back() {
    let dbs = TestDbs::new("bk_rollback");
    app_v1_v2(&dbs);
    let wd = Workdir::new();
    let url = dbs.dst.url();
    let started = start(&wd, &dbs);
    let b1 = backup_made(&started);
    assert_eq!(dbs.dst.query_one_string("SELECT app_version()"), "v2");

    // A dry run changes nothing.
    let before = catalog_fingerprint(&dbs.dst);
    let plan = run_json(&wd, &["rollback", "--dest", &url, "--latest", "--dry-run"]);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["rollback"]["restore_schema"], b1.as_str());
    assert_eq!(catalog_fingerprint(&dbs.dst), before);

    let r = run_json(&wd, &["rollback", "--dest", &url, "--latest"]);
    assert_eq!(r["restored_schema"], b1.as_str());
    assert_eq!(r["restored_schema_dropped"], true);
    assert_eq!(r["verified"], true);
    let b2 = r["backup_schema"].as_str().unwrap().to_string();
    let b2_ts = r["backup_timestamp"].as_i64().unwrap();

    // The old public is back: data, functions, views, PostGIS through the default search_path.
    assert_eq!(dbs.dst.query_one_string("SELECT app_version()"), "v1");
    assert_eq!(dbs.dst.query_one_string("SELECT count(*) FROM users"), "20");
    assert_eq!(
        dbs.dst.query_one_string("SELECT count(*) FROM big_orders"),
        "25"
    );
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT ST_AsText(geom) FROM places"),
        "POINT(1 2)"
    );
    assert_eq!(
        dbs.dst.query_one_string(
            "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'postgis'"
        ),
        "public"
    );
    assert_eq!(
        dbs.dst.query_one_string(&format!(
            "SELECT count(*) FROM pg_namespace WHERE nspname = '{b1}'"
        )),
        "0"
    );
    // The replaced public is a new backup with its own manifest, and it verifies.
    let backups = list(&wd, &dbs.dst);
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(backups[0]["schema"], b2.as_str());
    assert_eq!(backups[0]["kind"], "rollback");
    assert_eq!(backups[0]["restored_from"], b1.as_str());
    assert_eq!(backups[0]["tables"], 4);
    wd.run_ok(&["verify", "--dest", &url, "--timestamp", &b2_ts.to_string()]);
    assert_eq!(
        dbs.dst
            .query_one_string(&format!("SELECT count(*) FROM {b2}.products")),
        "2"
    );

    // The rollback of the rollback brings v2 back.
    let r2 = run_json(&wd, &["rollback", "--dest", &url, "--timestamp", &b2]);
    assert_eq!(r2["restored_schema"], b2.as_str());
    assert_eq!(dbs.dst.query_one_string("SELECT app_version()"), "v2");
    assert_eq!(dbs.dst.query_one_string("SELECT count(*) FROM users"), "40");
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT ST_AsText(geom) FROM places"),
        "POINT(3 4)"
    );
    let b3_ts = r2["backup_timestamp"].as_i64().unwrap();
    wd.run_ok(&["verify", "--dest", &url, "--timestamp", &b3_ts.to_string()]);
    // The foreign key between the restored tables still holds.
    let err = dbs
        .dst
        .try_psql("INSERT INTO orders (user_id, amount) VALUES (99999, 1)")
        .unwrap_err();
    assert!(err.contains("foreign key"), "{err}");
}

#[test]
fn rollback_keep_tables_carries_rows_and_sequences_over() {
    let dbs = TestDbs::new("bk_keep");
    app_v1_v2(&dbs);
    let wd = Workdir::new();
    let url = dbs.dst.url();
    let started = start(&wd, &dbs);
    let b1 = backup_made(&started);
    let b1_ts = started["swap"]["backup_timestamp"].as_i64().unwrap();
    // Sign-ups after the swap.
    dbs.dst.psql(
        "INSERT INTO users (name, email) VALUES ('signup1', 's1@example.com'), ('signup2', 's2@example.com')",
    );
    let seq_before = dbs
        .dst
        .query_one_string("SELECT last_value FROM users_id_seq");
    assert_eq!(seq_before, "42");

    let logged = common::clusters().1.log_len();
    let r = rollback_keeping(&wd, &url, "users", &[]);
    assert_eq!(r["kept_tables"], serde_json::json!(["users"]));
    assert_eq!(r["restored_schema_dropped"], false);
    // The restored schema keeps users: it is not even tried (no ERROR logged).
    assert_eq!(
        common::clusters().1.errors_since(logged, dbs.dst.name()),
        Vec::<String>::new()
    );
    assert!(r["fk_not_valid"].as_array().unwrap().is_empty(), "{r}");
    // The kept table stayed in public on purpose: not reported as created meanwhile.
    assert!(
        !r["warnings"]
            .to_string()
            .contains("created in public while"),
        "{r}"
    );
    let b2 = r["backup_schema"].as_str().unwrap().to_string();
    let b2_ts = r["backup_timestamp"].as_i64().unwrap();

    // v1 everywhere except users, which kept its current rows, structure and sequence.
    assert_eq!(dbs.dst.query_one_string("SELECT app_version()"), "v1");
    assert_eq!(
        dbs.dst.query_one_string("SELECT count(*) FROM orders"),
        "50"
    );
    assert_eq!(dbs.dst.query_one_string("SELECT count(*) FROM users"), "42");
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT email FROM users WHERE name = 'signup2'"),
        "s2@example.com"
    );
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT last_value FROM users_id_seq"),
        "42"
    );
    assert_eq!(
        dbs.dst
            .query_one_string("INSERT INTO users (name) VALUES ('signup3') RETURNING id"),
        "43"
    );
    // The restored orders now reference public.users (re-pointed and validated).
    assert_eq!(
        dbs.dst.query_one_string(
            "SELECT confrelid::regclass::text || ' ' || convalidated FROM pg_constraint
              WHERE conrelid = 'public.orders'::regclass AND contype = 'f'"
        ),
        "users true"
    );
    let fks = r["foreign_keys"].as_array().unwrap();
    assert!(
        fks.iter()
            .any(|f| f["action"] == "repointed" && f["table"] == "public.orders"),
        "{r}"
    );
    // The new backup's orders pointed at the kept users: detached, recorded.
    assert!(
        fks.iter()
            .any(|f| f["action"] == "detached" && f["table"] == format!("{b2}.orders")),
        "{r}"
    );
    assert_eq!(
        dbs.dst.query_one_string(&format!(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = '{b2}.orders'::regclass AND contype = 'f'"
        )),
        "0"
    );
    // The backup's own users stays behind in b1, whose manifest now lists just it.
    assert_eq!(
        dbs.dst
            .query_one_string(&format!("SELECT count(*) FROM {b1}.users")),
        "20"
    );
    let backups = list(&wd, &dbs.dst);
    assert_eq!(backups.len(), 2);
    let old = backups.iter().find(|b| b["schema"] == b1.as_str()).unwrap();
    assert_eq!(old["tables"], 1);
    // What is left of b1 is no version to roll back to: said by list and
    // verify, refused by rollback (it would replace every live table with
    // that one copy), which names the backup that undoes the rollback.
    assert!(old["restored_at"].is_string(), "{old}");
    let said = wd.run_ok(&["verify", "--dest", &url, "--timestamp", &b1_ts.to_string()]);
    assert!(
        said.contains("a rollback restored it") && said.contains("cannot be rolled back to"),
        "{said}"
    );
    let new = backups.iter().find(|b| b["schema"] == b2.as_str()).unwrap();
    assert!(new["restored_at"].is_null(), "{new}");
    let before = catalog_fingerprint(&dbs.dst);
    for target in [b1_ts.to_string(), b1.clone()] {
        let out = wd.run(&[
            "rollback",
            "--dest",
            &url,
            "--timestamp",
            &target,
            "--force",
        ]);
        assert_usage_error(&out, "remnant", "cannot be rolled back to");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("pgshift rollback --timestamp {b2_ts}")) && err.contains("users"),
            "{err}"
        );
    }
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
    assert_eq!(new["kept_tables"], serde_json::json!(["users"]));
    wd.run_ok(&["verify", "--dest", &url, "--timestamp", &b2_ts.to_string()]);

    // Rolling back the rollback: b2 has no users of its own, so public's stays;
    // b2's detached foreign key comes back.
    dbs.dst.psql("INSERT INTO users (name) VALUES ('signup4')");
    let r2 = run_json(&wd, &["rollback", "--dest", &url, "--latest"]);
    assert_eq!(r2["restored_schema"], b2.as_str());
    assert_eq!(r2["kept_tables"], serde_json::json!(["users"]));
    assert_eq!(dbs.dst.query_one_string("SELECT app_version()"), "v2");
    assert_eq!(dbs.dst.query_one_string("SELECT count(*) FROM users"), "44");
    assert_eq!(
        dbs.dst.query_one_string("SELECT count(*) FROM orders"),
        "80"
    );
    assert_eq!(
        dbs.dst.query_one_string(
            "SELECT confrelid::regclass::text || ' ' || convalidated FROM pg_constraint
              WHERE conrelid = 'public.orders'::regclass AND contype = 'f'"
        ),
        "users true"
    );
    let b3_ts = r2["backup_timestamp"].as_i64().unwrap();
    wd.run_ok(&["verify", "--dest", &url, "--timestamp", &b3_ts.to_string()]);
}

/// A rollback that keeps every table the backup has takes none of them out
/// of it: a backup of those tables alone stays a whole version (it was
/// marked "left by a rollback", refused even with --force, and cleanup
/// dropped it first). One that also held a function gave it to the live
/// schema: what is left is no version to restore (it was called whole and
/// verified intact, and a rollback to it left public without the function).
#[test]
fn a_rollback_keeping_every_table_of_the_backup_leaves_it_whole() {
    for (name, more, whole) in [
        ("bk_keep_all", "", true),
        (
            "bk_keep_all_f",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';",
            false,
        ),
    ] {
        let dbs = TestDbs::new(name);
        dbs.src.psql(
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'src');
             CREATE TABLE u (id int PRIMARY KEY); INSERT INTO u VALUES (1);",
        );
        dbs.dst.psql(&format!(
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'dst'); {more}"
        ));
        let wd = Workdir::new();
        let url = dbs.dst.url();
        let b0 = backup_made(&start(&wd, &dbs));
        rollback_keeping(&wd, &url, "t", &["--allow-discard", "all"]);
        let left = list(&wd, &dbs.dst)
            .into_iter()
            .find(|b| b["schema"] == b0.as_str())
            .unwrap();
        assert_eq!(left["restored_at"].is_null(), whole, "{name}: {left}");
        assert_eq!(left["tables"], 1, "{left}");
        let v = run_json(&wd, &["verify", "--dest", &url, "--timestamp", &b0]);
        assert_eq!(v["ok"], true, "{v}");
        if whole {
            // What is left is recorded as it is: intact.
            assert!(v.get("warnings").is_none(), "{v}");
        } else {
            assert!(
                v["warnings"].to_string().contains("(cleanup drops it)"),
                "{v}"
            );
        }
        let out = wd.run(&[
            "rollback",
            "--dest",
            &url,
            "--timestamp",
            &b0,
            "--dry-run",
            "--json",
            "--allow-discard",
            "all",
        ]);
        if whole {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["rollback"]["restore_schema"], b0.as_str(), "{v}");
            assert!(
                v["rollback"]["refusals"].as_array().unwrap().is_empty(),
                "{v}"
            );
        } else {
            assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
            assert!(
                text(&out.stderr).contains("cannot be rolled back to"),
                "{}",
                text(&out.stderr)
            );
        }
    }
}

#[test]
fn rollback_refusals_change_nothing() {
    let dbs = TestDbs::new("bk_refuse");
    app_v1_v2(&dbs);
    // A view of the old public that reads users.
    dbs.dst
        .psql("CREATE VIEW user_names AS SELECT name FROM users");
    let wd = Workdir::new();
    let url = dbs.dst.url();
    let started = start(&wd, &dbs);
    let b1 = backup_made(&started);
    let before = catalog_fingerprint(&dbs.dst);

    // --keep-tables users would leave the backup's users behind under a view that moves.
    let out = wd.run(&[
        "rollback",
        "--dest",
        &url,
        "--latest",
        "--keep-tables",
        "users",
    ]);
    assert_usage_error(
        &out,
        "keep a table a backup view reads",
        &format!("view {b1}.user_names"),
    );
    assert_eq!(catalog_fingerprint(&dbs.dst), before);

    // A write to users since the swap: the refusal explains why users cannot
    // be kept instead of advising the --keep-tables that would be refused.
    let inserted = |db: &TestDb| {
        db.query_one_string(
            "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relid = 'public.users'::regclass",
        )
    };
    let was = inserted(&dbs.dst);
    dbs.dst
        .psql("INSERT INTO users (id, name) VALUES (1000, 'late')");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while inserted(&dbs.dst) == was {
        assert!(
            std::time::Instant::now() < deadline,
            "no counters for the insert"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let before = catalog_fingerprint(&dbs.dst);
    let out = wd.run(&["rollback", "--dest", &url, "--latest"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    for part in [
        "users (1 insert)".to_string(),
        format!(
            "users cannot be kept (objects of the backup depend on {b1}'s own copy: view {b1}.user_names)"
        ),
        "Pass --allow-discard users (or --allow-discard all) to roll back anyway".to_string(),
    ] {
        assert!(err.contains(&part), "{part:?} not in {err:?}");
    }
    assert!(!err.contains("--keep-tables"), "{err}");
    assert_eq!(catalog_fingerprint(&dbs.dst), before);

    // A backup that no longer matches its manifest: refused (exit 3) unless forced.
    dbs.dst
        .psql(&format!("DELETE FROM {b1}.orders WHERE id = 1"));
    let before = catalog_fingerprint(&dbs.dst);
    let out = wd.run(&["rollback", "--dest", &url, "--latest"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("orders"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );
    // Not forced: no warning that reads as if it were.
    assert!(
        !text(&out.stderr).contains("(--force)"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
    // Its dry run shows the plan with the failed verification and the
    // refusal, and exits 3 as well.
    let out = wd.run(&[
        "rollback",
        "--dest",
        &url,
        "--latest",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let plan: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)));
    assert_eq!(plan["rollback"]["verification"]["ok"], false, "{plan}");
    assert!(
        plan["rollback"]["refusal"]
            .as_str()
            .unwrap_or_default()
            .contains("does not match its manifest"),
        "{plan}"
    );
    assert!(
        !plan["rollback"]["warnings"]
            .to_string()
            .contains("(--force)"),
        "{plan}"
    );
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
    // A backup whose schema is gone (dropped by hand) does not match its
    // manifest: exit 3, as verify says, with or without --force.
    dbs.dst
        .psql(&format!("ALTER SCHEMA {b1} RENAME TO gone_elsewhere"));
    for extra in [
        &["--dry-run"][..],
        &["--force", "--allow-discard", "users"][..],
    ] {
        let mut args = vec!["rollback", "--dest", url.as_str(), "--latest"];
        args.extend_from_slice(extra);
        let out = wd.run(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(
            err.contains("no longer exists; there is nothing to roll back to"),
            "{err}"
        );
    }
    dbs.dst
        .psql(&format!("ALTER SCHEMA gone_elsewhere RENAME TO {b1}"));
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
    let r = run_json(
        &wd,
        &[
            "rollback",
            "--dest",
            &url,
            "--latest",
            "--force",
            "--allow-discard",
            "users",
        ],
    );
    assert_eq!(r["verified"], false);
    assert_eq!(
        dbs.dst.query_one_string("SELECT count(*) FROM orders"),
        "49"
    );
}

fn schemas_left(db: &TestDb) -> Vec<String> {
    let out = db.psql(
        "SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace WHERE nspname LIKE 'backup\\_%'",
    );
    out.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn cleanup(wd: &Workdir, db: &TestDb, extra: &[&str]) -> Value {
    let mut args = vec!["cleanup", "--dest"];
    let url = db.url();
    args.push(&url);
    args.extend_from_slice(extra);
    run_json(wd, &args)
}

fn dropped(v: &Value) -> Vec<String> {
    v["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["schema"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn cleanup_drops_exactly_the_old_backups() {
    let dbs = TestDbs::new("bk_cleanup");
    dbs.src.psql(
        "CREATE TABLE t (id serial PRIMARY KEY, v text); INSERT INTO t (v) SELECT g::text FROM generate_series(1, 100) g;",
    );
    dbs.dst
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);");
    let wd = Workdir::new();
    let mut b = Vec::new();
    for _ in 0..4 {
        let s = start(&wd, &dbs);
        b.push(backup_made(&s));
    }
    // Ages: b0 2025-01-01, b1 2025-03-01 12:00, b2 2025-06-01, b3 now.
    dbs.dst.psql(&format!(
        "UPDATE pgshift.backups SET created_at = '2025-01-01 00:00:00+00' WHERE schema_name = '{}';
         UPDATE pgshift.backups SET created_at = '2025-03-01 12:00:00+00' WHERE schema_name = '{}';
         UPDATE pgshift.backups SET created_at = '2025-06-01 00:00:00+00' WHERE schema_name = '{}';",
        b[0], b[1], b[2]
    ));
    assert_eq!(schemas_left(&dbs.dst), b);

    // Dry run: names what it would drop, with sizes; drops nothing.
    let v = cleanup(&wd, &dbs.dst, &["--before", "2025-02-01", "--dry-run"]);
    assert_eq!(v["dry_run"], true);
    assert_eq!(dropped(&v), vec![b[0].clone()]);
    assert!(v["dropped"][0]["size_bytes"].as_i64().unwrap() > 0);
    assert_eq!(schemas_left(&dbs.dst), b);
    let human = wd.run_ok(&[
        "cleanup",
        "--dest",
        &dbs.dst.url(),
        "--before",
        "2025-02-01",
        "--dry-run",
    ]);
    assert!(
        human.contains("would drop") && human.contains(&b[0]),
        "{human}"
    );

    // ISO date: midnight UTC.
    let v = cleanup(&wd, &dbs.dst, &["--before", "2025-02-01"]);
    assert_eq!(dropped(&v), vec![b[0].clone()]);
    assert_eq!(schemas_left(&dbs.dst), b[1..].to_vec());
    assert_eq!(list(&wd, &dbs.dst).len(), 3);
    // Datetime with an offset: 13:00+02:00 is 11:00 UTC, before b1 (12:00 UTC).
    let v = cleanup(&wd, &dbs.dst, &["--before", "2025-03-01T13:00:00+02:00"]);
    assert!(dropped(&v).is_empty(), "{v}");
    // Datetime without offset: UTC.
    let v = cleanup(&wd, &dbs.dst, &["--before", "2025-03-01T12:30:00"]);
    assert_eq!(dropped(&v), vec![b[1].clone()]);
    assert_eq!(schemas_left(&dbs.dst), b[2..].to_vec());
    // --keep-latest keeps the newest whatever their age.
    let far = (chrono::Utc::now() + chrono::Duration::days(1))
        .timestamp_millis()
        .to_string();
    let v = cleanup(&wd, &dbs.dst, &["--before", &far, "--keep-latest", "2"]);
    assert!(dropped(&v).is_empty(), "{v}");
    assert_eq!(v["kept"], 2);
    // A backup whose schema is gone (dropped by hand) keeps nothing, so it
    // does not count among the newest: the one before it is kept.
    dbs.dst
        .psql(&format!("ALTER SCHEMA {} RENAME TO elsewhere", b[3]));
    let v = cleanup(
        &wd,
        &dbs.dst,
        &["--before", &far, "--keep-latest", "1", "--dry-run"],
    );
    assert_eq!(dropped(&v), vec![b[3].clone()], "{v}");
    assert_eq!(v["kept"], 1);
    // status says so (list said `exists: false`, status nothing).
    let s = run_json(&wd, &["status", "--dest", &dbs.dst.url()]);
    assert!(
        s["warnings"].to_string().contains(&format!(
            "backup {} has a record but its schema {} no longer exists",
            b[3], b[3]
        )),
        "{s}"
    );
    dbs.dst
        .psql(&format!("ALTER SCHEMA elsewhere RENAME TO {}", b[3]));
    // A cleanup paused before its first backup and sent `signal` there.
    let interrupted = |extra: &[&str], signal: i32| {
        let url = dbs.dst.url();
        let mut args = vec!["cleanup", "--dest", &url, "--before", "1751328000000"];
        args.extend(extra);
        let mut child = wd
            .cmd()
            .args(&args)
            .env("PGSHIFT_FAILPOINT", "cleanup-next:sleep=3000")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
        let log = common::lines_until(&mut lines, "pausing 3000 ms at cleanup-next");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(130), "{}", log.join("\n"));
        text(&out.stdout)
    };
    // SIGTERM (Ctrl-C alike): no backup is begun after it; exit 130.
    let said = interrupted(&[], libc::SIGTERM);
    assert_eq!(schemas_left(&dbs.dst), b[2..].to_vec());
    assert!(
        said.starts_with("Interrupted before dropping any backup"),
        "{said}"
    );
    // A dry run stops as well (it said "stopping cleanly", then went on).
    let said = interrupted(&["--dry-run"], libc::SIGINT);
    assert!(
        said.starts_with("Interrupted before looking at any backup"),
        "{said}"
    );
    // The run lock's session ended there (another run may take the lock):
    // no backup is begun either, and it says why, exit 1.
    let url = dbs.dst.url();
    let mut child = wd
        .cmd()
        .args(["cleanup", "--dest", &url, "--before", "1751328000000"])
        .env("PGSHIFT_FAILPOINT", "cleanup-next:sleep=3000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    common::lines_until(&mut lines, "pausing 3000 ms at cleanup-next");
    dbs.dst.psql(common::TERMINATE_RUN_LOCK);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(child.wait().unwrap().code(), Some(1), "{rest:?}");
    assert!(
        rest.last()
            .is_some_and(|l| l.starts_with("error: ") && l.contains("the run lock was lost")),
        "{rest:?}"
    );
    assert_eq!(schemas_left(&dbs.dst), b[2..].to_vec());
    // Unix milliseconds: 2025-07-01.
    let v = cleanup(
        &wd,
        &dbs.dst,
        &["--before", "1751328000000", "--keep-latest", "0"],
    );
    assert_eq!(dropped(&v), vec![b[2].clone()]);
    assert_eq!(schemas_left(&dbs.dst), vec![b[3].clone()]);
    // A second run has nothing to do: exit 0.
    let v = cleanup(&wd, &dbs.dst, &["--before", "1751328000000"]);
    assert!(dropped(&v).is_empty() && v["skipped"].as_array().unwrap().is_empty());
    let human = wd.run_ok(&[
        "cleanup",
        "--dest",
        &dbs.dst.url(),
        "--before",
        "2025-02-01",
    ]);
    assert!(human.starts_with("Nothing to clean up"), "{human}");

    // A backup table in use: skipped with a warning, exit 0, nothing blocks.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let holder = rt.block_on(dbs.dst.client());
    rt.block_on(holder.batch_execute(&format!(
        "BEGIN; LOCK TABLE {}.t IN ACCESS SHARE MODE",
        b[3]
    )))
    .unwrap();
    // The dry run foresees it (it had listed the backup as one it would drop).
    let v = cleanup(&wd, &dbs.dst, &["--before", &far, "--dry-run"]);
    assert!(dropped(&v).is_empty(), "{v}");
    assert_eq!(v["skipped"][0]["schema"], b[3].as_str(), "{v}");
    assert!(
        v["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("is in use now (by the session with pid"),
        "{v}"
    );
    let t0 = std::time::Instant::now();
    let out = wd.run(&[
        "cleanup",
        "--dest",
        &dbs.dst.url(),
        "--before",
        &far,
        "--lock-timeout",
        "300ms",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(t0.elapsed() < std::time::Duration::from_secs(20));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(dropped(&v).is_empty(), "{v}");
    assert_eq!(v["skipped"][0]["schema"], b[3].as_str());
    assert!(
        v["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("lock timeout")
    );
    assert!(text(&out.stderr).contains(&b[3]), "{}", text(&out.stderr));
    assert_eq!(schemas_left(&dbs.dst), vec![b[3].clone()]);
    rt.block_on(holder.batch_execute("ROLLBACK")).unwrap();
    let v = cleanup(&wd, &dbs.dst, &["--before", &far]);
    assert_eq!(dropped(&v), vec![b[3].clone()]);
    assert!(schemas_left(&dbs.dst).is_empty());
    assert!(list(&wd, &dbs.dst).is_empty());
    // The live public was never touched.
    assert_eq!(dbs.dst.query_one_string("SELECT count(*) FROM t"), "100");
}

#[test]
fn cleanup_never_drops_what_is_not_a_pgshift_backup() {
    let dbs = TestDbs::new("bk_cleanup_safe");
    dbs.src
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);");
    let wd = Workdir::new();
    let s = start(&wd, &dbs);
    let b = backup_made(&s);
    // A look-alike schema without a manifest, and a view outside the backup that reads it.
    dbs.dst.psql(&format!(
        "CREATE SCHEMA backup_1; CREATE TABLE backup_1.x (i int);
         CREATE TABLE {b}.kept (i int);
         CREATE SCHEMA reports; CREATE VIEW reports.v AS SELECT * FROM {b}.kept;
         CREATE FUNCTION {b}.plus(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1 + 1';
         CREATE TABLE reports.g (a int, b int GENERATED ALWAYS AS ({b}.plus(a)) STORED);
         -- The backup's own operator class and cast (their members and the
         -- cast have no schema of their own): they go with it.
         CREATE FUNCTION {b}.rcmp(int, int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $2 - $1';
         CREATE OPERATOR CLASS {b}.rev_ops FOR TYPE int USING btree AS
           OPERATOR 1 >, OPERATOR 3 =, OPERATOR 5 <, FUNCTION 1 {b}.rcmp(int, int);
         CREATE INDEX ON {b}.kept (i {b}.rev_ops);
         CREATE TYPE {b}.mp AS (a numeric);
         CREATE FUNCTION {b}.to_mp(text) RETURNS {b}.mp LANGUAGE sql IMMUTABLE AS 'SELECT ROW($1::numeric)::{b}.mp';
         CREATE CAST (text AS {b}.mp) WITH FUNCTION {b}.to_mp(text);
         -- A cast between types outside that calls a function of the backup
         -- is outside.
         CREATE TYPE reports.r AS (a int);
         CREATE FUNCTION {b}.to_r(text) RETURNS reports.r LANGUAGE sql IMMUTABLE AS 'SELECT ROW(length($1))::reports.r';
         CREATE CAST (text AS reports.r) WITH FUNCTION {b}.to_r(text);
         -- A column collated, and a view compared, by the backup's own
         -- collation and operator (CASCADE dropped the column with its data).
         CREATE COLLATION {b}.c2 FROM \"C\";
         CREATE TABLE reports.names (n text COLLATE {b}.c2);
         INSERT INTO reports.names VALUES ('kept');
         CREATE OPERATOR {b}.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = int4eq);
         CREATE VIEW reports.vop AS SELECT 1 OPERATOR({b}.===) 1 AS same;"
    ));
    let far = (chrono::Utc::now() + chrono::Duration::days(1))
        .timestamp_millis()
        .to_string();
    let out = wd.run(&[
        "cleanup",
        "--dest",
        &dbs.dst.url(),
        "--before",
        &far,
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(dropped(&v).is_empty(), "{v}");
    assert!(
        v["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("reports.v"),
        "{v}"
    );
    // A generated column outside that computes with a function of the backup
    // (CASCADE would drop the column and its data).
    assert!(
        v["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("column b of table reports.g"),
        "{v}"
    );
    let reason = v["skipped"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("cast from text to reports.r"), "{v}");
    assert!(
        reason.contains("column n of table reports.names") && reason.contains("view reports.vop"),
        "{v}"
    );
    assert!(
        !reason.contains("operator family") && !reason.contains(".mp"),
        "{v}"
    );
    assert_eq!(
        schemas_left(&dbs.dst),
        vec!["backup_1".to_string(), b.clone()]
    );
    dbs.dst.psql("DROP SCHEMA reports CASCADE");
    let v = cleanup(&wd, &dbs.dst, &["--before", &far]);
    assert_eq!(dropped(&v), vec![b]);
    assert_eq!(schemas_left(&dbs.dst), vec!["backup_1".to_string()]);
}

#[test]
fn cleanup_drops_backups_that_hold_each_others_dependents_together() {
    let dbs = TestDbs::new("bk_cleanup_group");
    dbs.src
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);");
    dbs.dst.psql("CREATE TABLE t (id int PRIMARY KEY);");
    let wd = Workdir::new();
    let b: Vec<String> = (0..3).map(|_| backup_made(&start(&wd, &dbs))).collect();
    // b0 and b1 are old, b2 is new; b0 and b1 read each other's table (apart,
    // each would be skipped for the other's view, run after run), and b2
    // reads b1's.
    dbs.dst.psql(&format!(
        "UPDATE pgshift.backups SET created_at = '2025-06-01 00:00:00+00' WHERE schema_name IN ('{0}', '{1}');
         CREATE VIEW {0}.v AS SELECT * FROM {1}.t;
         CREATE VIEW {1}.v AS SELECT * FROM {0}.t;
         CREATE VIEW {2}.v AS SELECT * FROM {1}.t;",
        b[0], b[1], b[2]
    ));
    let before = ["--before", "2025-07-01"];
    // The newer backup's view holds both back: skipped together, naming it.
    let v = cleanup(&wd, &dbs.dst, &before);
    assert!(dropped(&v).is_empty(), "{v}");
    let skipped = v["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 2, "{v}");
    for (s, other) in skipped.iter().zip([&b[1], &b[0]]) {
        assert_eq!(s["together_with"], serde_json::json!([other]), "{v}");
        let reason = s["reason"].as_str().unwrap();
        assert!(reason.contains(&format!("view {}.v", b[2])), "{v}");
        assert!(!reason.contains(&format!("view {}.v", b[0])), "{v}");
    }
    assert_eq!(v["kept"], 3, "{v}");
    assert_eq!(schemas_left(&dbs.dst), b);
    // Without it, both go in one transaction (a dry run says so first).
    dbs.dst.psql(&format!("DROP VIEW {}.v", b[2]));
    let mut args = vec!["cleanup", "--dest"];
    let url = dbs.dst.url();
    args.push(&url);
    args.extend(before);
    args.push("--dry-run");
    let human = wd.run_ok(&args);
    assert!(
        human.contains(&format!(
            "note: {} and {} would be dropped together",
            b[0], b[1]
        )),
        "{human}"
    );
    assert_eq!(schemas_left(&dbs.dst), b);
    let v = cleanup(&wd, &dbs.dst, &before);
    assert_eq!(dropped(&v), vec![b[0].clone(), b[1].clone()], "{v}");
    assert_eq!(v["dropped"][0]["together_with"], serde_json::json!([b[1]]));
    assert!(v["skipped"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(schemas_left(&dbs.dst), vec![b[2].clone()]);
    assert_eq!(list(&wd, &dbs.dst).len(), 1);
    // An older backup reading a newer one's table: the older goes first, then
    // nothing holds the newer; the dry run says the same as the real run.
    let b3 = backup_made(&start(&wd, &dbs));
    dbs.dst.psql(&format!(
        "UPDATE pgshift.backups SET created_at = '2025-06-01 00:00:00+00';
         CREATE VIEW {}.w AS SELECT * FROM {b3}.t;",
        b[2]
    ));
    let mut dry = before.to_vec();
    dry.push("--dry-run");
    for args in [&dry[..], &before[..]] {
        let v = cleanup(&wd, &dbs.dst, args);
        assert_eq!(dropped(&v), vec![b[2].clone(), b3.clone()], "{v}");
        assert!(v["skipped"].as_array().unwrap().is_empty(), "{v}");
    }
    assert!(schemas_left(&dbs.dst).is_empty());
}

#[test]
fn rollback_leaves_a_prepared_shadow_alone() {
    let dbs = TestDbs::new("bk_shadow");
    app_v1_v2(&dbs);
    let wd = Workdir::new();
    let url = dbs.dst.url();
    start(&wd, &dbs);
    // The next migration is prepared while we roll back the last one.
    wd.run_ok(&["prepare", "--source", &dbs.src.url(), "--dest", &url]);
    let shadow_before = dbs.dst.psql(
        "SELECT string_agg(c.relname || ':' || c.oid, ',' ORDER BY c.relname) FROM pg_class c
          WHERE c.relnamespace = 'shadow'::regnamespace",
    );
    let restored = run_json(&wd, &["status", "--dest", &url])["latest_backup"]
        .as_str()
        .unwrap()
        .to_string();
    run_json(&wd, &["rollback", "--dest", &url, "--latest"]);
    assert_eq!(dbs.dst.query_one_string("SELECT app_version()"), "v1");
    let shadow_after = dbs.dst.psql(
        "SELECT string_agg(c.relname || ':' || c.oid, ',' ORDER BY c.relname) FROM pg_class c
          WHERE c.relnamespace = 'shadow'::regnamespace",
    );
    assert_eq!(shadow_before, shadow_after);
    let s = run_json(&wd, &["status", "--dest", &url]);
    assert_eq!(s["state"], "prepared", "{s}");
    assert_eq!(s["swap_allowed"], true, "{s}");
    // status tells the rollback apart from the swap it undid: the newest
    // backup is the rollback's, and says which backup it restored.
    assert_eq!(s["latest_rollback_restored"], restored.as_str(), "{s}");
    let text = wd.run_ok(&["status", "--dest", &url]);
    assert!(
        text.contains(&format!("made by the rollback that restored {restored}")),
        "{text}"
    );
    // And the prepared migration still swaps.
    wd.run_ok(&["swap", "--dest", &url]);
    assert_eq!(dbs.dst.query_one_string("SELECT app_version()"), "v2");
}

/// A kept table's foreign key to a table only the current public has (the
/// new version's `"Tags"`) would reference nothing after the rollback: it is
/// refused before anything is locked (exit 2, one line naming the key and
/// the remedy), by the dry run too, and nothing changes. Keeping that table
/// as well goes through. (The dry run passed, and the rollback failed under
/// its locks.)
#[test]
fn a_kept_tables_key_to_a_table_the_backup_lacks_is_refused_before_any_lock() {
    let dbs = TestDbs::new("bk_orphan_fk");
    dbs.dst.psql(
        "CREATE TABLE articles (id int PRIMARY KEY, title text);
         INSERT INTO articles VALUES (1, 'old');",
    );
    dbs.src.psql(
        "CREATE TABLE \"Tags\" (id int PRIMARY KEY);
         INSERT INTO \"Tags\" VALUES (7);
         CREATE TABLE articles (id int PRIMARY KEY, title text, tag_id int REFERENCES \"Tags\" (id));
         INSERT INTO articles VALUES (1, 'new', 7);",
    );
    let wd = Workdir::new();
    let url = dbs.dst.url();
    start(&wd, &dbs);
    let before = catalog_fingerprint(&dbs.dst);
    for dry in [true, false] {
        let mut args = vec![
            "rollback",
            "--dest",
            &url,
            "--latest",
            "--keep-tables",
            "articles",
        ];
        if dry {
            args.push("--dry-run");
        }
        assert_usage_error(
            &wd.run(&args),
            "a kept table's key to a table the backup lacks",
            "--keep-tables: foreign key articles_tag_id_fkey of articles references \"Tags\", which the rollback moves out and backup_",
        );
        assert!(text(&wd.run(&args).stderr).contains(
            "does not have: keep \"Tags\" too, or drop that key first; nothing was changed"
        ),);
    }
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
    let r = rollback_keeping(&wd, &url, "articles,\"Tags\"", &[]);
    assert_eq!(r["fk_not_valid"], serde_json::json!([]), "{r}");
    assert_eq!(
        dbs.dst.query_one_string(
            "SELECT a.title || ' ' || t.id FROM articles a JOIN \"Tags\" t ON t.id = a.tag_id"
        ),
        "new 7"
    );
}

#[test]
fn rollback_keep_tables_repoints_foreign_keys_both_ways() {
    let dbs = TestDbs::new("bk_fks");
    let schema = |label: &str, users: i32| {
        format!(
            "CREATE TABLE plans (id int PRIMARY KEY, title text);
             INSERT INTO plans SELECT g, '{label}' || g FROM generate_series(1, 3) g;
             CREATE TABLE users (id serial PRIMARY KEY, plan_id int NOT NULL REFERENCES plans (id) ON DELETE CASCADE, name text);
             INSERT INTO users (plan_id, name) SELECT (g % 3) + 1, '{label}' || g FROM generate_series(1, {users}) g;
             CREATE TABLE orders (id serial PRIMARY KEY, user_id int NOT NULL, amount int,
                                  CONSTRAINT \"Orders User\" FOREIGN KEY (user_id) REFERENCES users (id) DEFERRABLE INITIALLY DEFERRED);
             INSERT INTO orders (user_id, amount) SELECT (g % {users}) + 1, g FROM generate_series(1, 30) g;"
        )
    };
    dbs.dst.psql(&schema("v1-", 10));
    dbs.src.psql(&schema("v2-", 25));
    let wd = Workdir::new();
    let url = dbs.dst.url();
    let started = start(&wd, &dbs);
    let b1 = backup_made(&started);

    let fk = |table: &str| {
        dbs.dst.query_one_string(&format!(
            "SELECT string_agg(conname || ' -> ' || confrelid::regclass::text || ' ' || convalidated
                               || ' ' || condeferrable || ' ' || confdeltype::text, ', ' ORDER BY conname)
               FROM pg_constraint WHERE conrelid = '{table}'::regclass AND contype = 'f'"
        ))
    };
    let r = rollback_keeping(&wd, &url, "users", &[]);
    assert!(r["fk_not_valid"].as_array().unwrap().is_empty(), "{r}");
    let b2 = r["backup_schema"].as_str().unwrap().to_string();
    // The kept users (v2) now reference the restored plans; the restored orders the kept users.
    assert_eq!(
        fk("public.users"),
        "users_plan_id_fkey -> plans true false c"
    );
    assert_eq!(fk("public.orders"), "Orders User -> users true true a");
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT title FROM plans WHERE id = 1"),
        "v1-1"
    );
    assert_eq!(dbs.dst.query_one_string("SELECT count(*) FROM users"), "25");
    // Backups hold no keys into live tables: b2.orders' and b1.users' keys were detached.
    assert_eq!(fk(&format!("{b2}.orders")), "");
    assert_eq!(fk(&format!("{b1}.users")), "");
    let backups = list(&wd, &dbs.dst);
    assert_eq!(backups.len(), 2);
    // Every backup still verifies.
    for b in &backups {
        wd.run_ok(&[
            "verify",
            "--dest",
            &url,
            "--timestamp",
            &b["timestamp"].to_string(),
        ]);
    }

    // Back to v2: users stays (b2 has none), b2's detached key comes back, the
    // kept users' key follows plans again.
    let r2 = run_json(&wd, &["rollback", "--dest", &url, "--timestamp", &b2]);
    let actions: Vec<String> = r2["foreign_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "{} {}",
                f["action"].as_str().unwrap(),
                f["table"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        actions.contains(&"reattached public.orders".to_string()),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"repointed public.users".to_string()),
        "{actions:?}"
    );
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT title FROM plans WHERE id = 1"),
        "v2-1"
    );
    assert_eq!(
        fk("public.users"),
        "users_plan_id_fkey -> plans true false c"
    );
    assert_eq!(fk("public.orders"), "Orders User -> users true true a");
    assert_eq!(
        dbs.dst.query_one_string("SELECT sum(amount) FROM orders"),
        "465"
    );
    // ON DELETE CASCADE from the restored plans reaches the kept users.
    dbs.dst
        .psql("DELETE FROM orders; DELETE FROM plans WHERE id = 1");
    assert_eq!(dbs.dst.query_one_string("SELECT count(*) FROM users"), "17");
}

/// The keys a rollback creates between kept and restored tables are checked
/// before any lock, as the swap checks its deferred keys: rows that would
/// not match refuse the rollback (exit 1, nothing changed), its dry run
/// lists them, and `--allow-fk-violations` creates the key NOT VALID. It
/// committed and left the key NOT VALID with a warning, whatever the flag
/// said (Wagtail's form submissions kept, pointing at pages the restored
/// backup lacks). Both directions: a kept table's key to a restored table,
/// and a restored table's key to a kept one.
#[test]
fn a_rollback_refuses_kept_rows_its_keys_would_not_match() {
    let dbs = TestDbs::new("bk_fk_refused");
    let ddl = "CREATE TABLE page (id int PRIMARY KEY);
               CREATE TABLE sub (id int PRIMARY KEY, page_id int REFERENCES page);
               CREATE TABLE users (id int PRIMARY KEY);
               CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users);";
    dbs.src.psql(ddl);
    dbs.dst.psql(ddl);
    dbs.src
        .psql("INSERT INTO page VALUES (1), (2); INSERT INTO users VALUES (1), (2);");
    dbs.dst.psql(
        "INSERT INTO page VALUES (1); INSERT INTO sub VALUES (1, 1);
         INSERT INTO users VALUES (1), (2); INSERT INTO orders VALUES (1, 1), (2, 2);",
    );
    let wd = Workdir::new();
    let url = swapped_preserving(&wd, &dbs, "sub,users");
    // A submission for a page only the new public has; a user the old
    // public's orders still reference, deleted.
    dbs.dst
        .psql("INSERT INTO sub VALUES (2, 2); DELETE FROM users WHERE id = 2;");
    let keep = ["--keep-tables", "sub,users"];
    let rollback = |extra: &[&str]| {
        let mut args = vec!["rollback", "--dest", url.as_str(), "--latest"];
        args.extend_from_slice(&keep);
        args.extend_from_slice(extra);
        wd.run(&args)
    };
    let before = catalog_fingerprint(&dbs.dst);
    let dry: Value =
        serde_json::from_str(&assert_success(&rollback(&["--dry-run", "--json"]))).unwrap();
    let shown: Vec<String> = dry["rollback"]["fk_violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| format!("{} {} {}", v["constraint"], v["count"], v["examples"]))
        .collect();
    assert_eq!(
        shown,
        [
            "\"sub_page_id_fkey\" 1 [\"(2)\"]",
            "\"orders_user_id_fkey\" 1 [\"(2)\"]"
        ],
        "{dry}"
    );
    let refusal = dry["rollback"]["refusal"].as_str().unwrap();
    assert!(refusal.contains("--allow-fk-violations"), "{dry}");
    let out = rollback(&[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("sub_page_id_fkey: 1 row of sub (page_id) references no row of page (id), e.g. (page_id)=(2)")
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
    let r = rollback_keeping(&wd, &url, "sub,users", &["--allow-fk-violations"]);
    let mut not_valid: Vec<&str> = r["fk_not_valid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    not_valid.sort_unstable();
    assert_eq!(
        not_valid,
        ["orders_user_id_fkey", "sub_page_id_fkey"],
        "{r}"
    );
}

/// `--latest` on a destination without backups: one usage error line (exit
/// 2) naming what there was none to do, and nothing changes.
#[test]
fn latest_without_backups_is_a_usage_error() {
    let dbs = TestDbs::new("bk_none");
    dbs.dst.psql("CREATE TABLE t (id int PRIMARY KEY)");
    let wd = Workdir::new();
    let url = dbs.dst.url();
    let ours = "SELECT count(*) FROM pg_namespace
                 WHERE nspname IN ('pgshift', 'shadow') OR nspname LIKE 'backup\\_%'";
    assert_usage_error(
        &wd.run(&["verify", "--dest", &url, "--latest"]),
        "verify --latest",
        "there are no backups on the destination to verify",
    );
    assert_usage_error(
        &wd.run(&["rollback", "--dest", &url, "--latest"]),
        "rollback --latest",
        "there are no backups on the destination to roll back to",
    );
    assert_eq!(dbs.dst.query_one_string(ours), "0");
}

/// A rollback that keeps a table keeps its rows: a sequence no column uses
/// that the application keys it with (Hibernate's `SEQUENCE` ids) must not
/// go back with the restored public, or its next value is a key the kept
/// table holds. It continues after the greater of the two, as the swap's
/// carry does; the current one is fenced in the new backup, recorded in its
/// manifest, and a rollback of the rollback gives it its definition back.
#[test]
fn a_rollback_keeping_a_table_does_not_take_its_key_sequence_back() {
    let dbs = TestDbs::new("bk_keep_seq");
    let ddl = "CREATE SEQUENCE ticket_seq;
               CREATE TABLE tickets (id bigint PRIMARY KEY, v text);
               CREATE TABLE notes (id int);";
    dbs.src.psql(ddl);
    dbs.dst.psql(ddl);
    dbs.dst.psql(
        "INSERT INTO tickets SELECT nextval('ticket_seq'), 'old' FROM generate_series(1, 50);",
    );
    let wd = Workdir::new();
    let url = swapped_preserving(&wd, &dbs, "tickets");
    dbs.dst.psql(
        "INSERT INTO tickets SELECT nextval('ticket_seq'), 'new' FROM generate_series(1, 5);",
    );
    let r = rollback_keeping(&wd, &url, "tickets", &[]);
    assert_eq!(
        dbs.dst
            .psql("INSERT INTO tickets VALUES (nextval('ticket_seq'), 'after') RETURNING id"),
        "56"
    );
    let b2 = r["backup_schema"].as_str().unwrap().to_string();
    let fenced = format!(
        "SELECT string_agg(f->>'name' || ' ' || (f->>'last_value'), ', ')
           FROM pgshift.backups b, jsonb_array_elements(b.manifest::jsonb->'fenced_sequences') f
          WHERE b.schema_name = '{b2}'"
    );
    assert_eq!(dbs.dst.psql(&fenced), "ticket_seq 55");
    assert_eq!(
        dbs.dst.psql(&format!(
            "SELECT seqmax FROM pg_sequence WHERE seqrelid = '{b2}.ticket_seq'::regclass"
        )),
        "55"
    );
    // Rolling the rollback back restores that public with its sequence's
    // definition as it was; tickets stays (that backup was made without it),
    // so the sequence continues after its rows again.
    wd.run_ok(&[
        "rollback",
        "--dest",
        &url,
        "--latest",
        "--allow-discard",
        "all",
    ]);
    assert_eq!(
        dbs.dst
            .psql("SELECT seqmax FROM pg_sequence WHERE seqrelid = 'public.ticket_seq'::regclass"),
        "9223372036854775807"
    );
    assert_eq!(dbs.dst.psql("SELECT max(id) FROM tickets"), "56");
    assert_eq!(
        dbs.dst
            .psql("INSERT INTO tickets VALUES (nextval('ticket_seq'), 'again') RETURNING id"),
        "57"
    );
}

/// A rollback keeping a table carries the sequences no column uses from the
/// current public into the backup's, as a swap does from the destination into
/// the source's; its warnings say which is which (the current sequence, the
/// backup's definition) and what to do after the rollback.
#[test]
fn a_rollback_keeping_a_table_warns_about_sequences_in_its_own_words() {
    let dbs = TestDbs::new("bk_keep_seq_words");
    let tables = "CREATE TABLE tickets (id bigint PRIMARY KEY, v text);";
    dbs.src.psql(&format!(
        "CREATE SEQUENCE end_seq; CREATE SEQUENCE bounded_seq; {tables}"
    ));
    dbs.dst.psql(&format!(
        "CREATE SEQUENCE end_seq MAXVALUE 100; CREATE SEQUENCE bounded_seq MAXVALUE 100; {tables}"
    ));
    let wd = Workdir::new();
    let url = swapped_preserving(&wd, &dbs, "tickets");
    dbs.dst
        .psql("SELECT setval('end_seq', 100); SELECT setval('bounded_seq', 150);");
    let words = [
        "sequence public.bounded_seq: the current sequence is further on (150), but its value does not fit the backup's definition (increment 1, 1 to 100): it takes the backup's value, which the current public has passed",
        "sequence public.end_seq: the current sequence is at 100, the end of the backup's definition (increment 1, 1 to 100), so its next nextval fails; widen it after the rollback (ALTER SEQUENCE … MAXVALUE/MINVALUE)",
    ];
    // The dry run foresees them, weighing the backup's sequences as the
    // rollback gives them back (the swap fenced them at 1).
    let dry = rollback_keeping(&wd, &url, "tickets", &["--dry-run"]);
    let foreseen = dry["rollback"]["warnings"].as_array().unwrap();
    for want in words {
        assert!(
            foreseen.contains(&Value::from(want)),
            "{want:?} not in {dry:#}"
        );
    }
    let r = rollback_keeping(&wd, &url, "tickets", &[]);
    let warnings: Vec<&str> = r["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    for want in words {
        assert!(warnings.contains(&want), "{want:?} not in {warnings:#?}");
    }
    assert_eq!(
        dbs.dst
            .psql("SELECT last_value || ' ' || is_called FROM end_seq"),
        "100 true"
    );
}

/// While another run holds the destination's lock (a swap waiting on the
/// application's locks, say), the swap's and the rollback's dry runs say
/// they would be refused, naming the holder, as the real ones are: they
/// said "go", and the swap's also warned that an earlier swap had stopped.
#[test]
fn dry_runs_while_another_run_holds_the_lock_say_they_would_be_refused() {
    let dbs = TestDbs::new("bk_dry_busy");
    dbs.src
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);");
    dbs.dst.psql("CREATE TABLE t (id int PRIMARY KEY);");
    let wd = Workdir::new();
    start(&wd, &dbs);
    assert_success(&wd.prepare(&dbs, &[]));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let holder = rt.block_on(dbs.dst.client());
    rt.block_on(pgshift::pg::lock::acquire(&holder)).unwrap();
    let url = dbs.dst.url();
    for args in [
        vec!["swap", "--dest", &url, "--dry-run"],
        vec!["rollback", "--dest", &url, "--latest", "--dry-run"],
    ] {
        let v = run_json(&wd, &args);
        let what = if args[0] == "swap" {
            "swap"
        } else {
            "rollback"
        };
        let refusal = v[what]["refusal"].as_str().unwrap_or_default();
        assert!(
            refusal.starts_with("another pgshift run holds the destination's lock: "),
            "{v}"
        );
    }
    // cleanup's dry run lists what it would drop, and says a real run now
    // would fail (h38a).
    let out = wd.run(&[
        "cleanup",
        "--dest",
        &url,
        "--before",
        "2999-01-01",
        "--dry-run",
    ]);
    assert!(
        text(&out.stderr).contains(
            "a real run now would drop nothing and exit 1: another pgshift run holds the destination's lock"
        ) && text(&out.stdout).contains("would drop"),
        "{}{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    drop(holder);
    let v = run_json(&wd, &["swap", "--dest", &url, "--dry-run"]);
    assert!(v["swap"]["refusal"].is_null(), "{v}");
}

/// Reading a backup's tables waits behind a session holding one's ACCESS
/// EXCLUSIVE lock: verify said nothing meanwhile. It names the session
/// once the wait has lasted 5 s, and goes on when it is released.
#[test]
fn verify_names_the_session_it_waits_for() {
    let (dbs, wd, url, backup) = started_backup("bk_verify_waits");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let holder = rt.block_on(dbs.dst.client());
    let pid = rt.block_on(common::backend_pid(&holder));
    rt.block_on(holder.batch_execute(&format!(
        "BEGIN; LOCK TABLE {backup}.users IN ACCESS EXCLUSIVE MODE"
    )))
    .unwrap();
    let child = wd
        .cmd()
        .args(["verify", "--dest", &url, "--latest"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Named once the wait has lasted 5 s, asked every 5 s from 5 s on.
    std::thread::sleep(std::time::Duration::from_secs(13));
    rt.block_on(holder.batch_execute("ROLLBACK")).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("on the destination, pgshift's verify session has waited ")
            && err.contains(&format!(
                " s for a lock on {backup}.users, held by pid {pid} ("
            ))
            && err.contains(&format!(
                "pg_terminate_backend({pid}) would end that session"
            )),
        "{err}"
    );
}

/// Version 1 on the destination replaced by version 2 with `start`: the
/// databases, the workdir, the destination's URL and the backup's schema.
fn started_backup(name: &str) -> (TestDbs, Workdir, String, String) {
    let dbs = TestDbs::new(name);
    app_v1_v2(&dbs);
    let wd = Workdir::new();
    start(&wd, &dbs);
    let url = dbs.dst.url();
    let backup = dbs.dst.psql("SELECT schema_name FROM pgshift.backups");
    (dbs, wd, url, backup)
}

/// A rollback to a backup older than the newest: the later swap carried the
/// rows written to its preserved table while the public it replaced was
/// live into the current public, and the older backup lacks them. The
/// rollback leaves them out and counted only the current public's writes
/// (found by a helper: "1 insert" for 3 rows gone). It says so, naming the
/// table and the later swap's backup; a rollback to the newest does not.
#[test]
fn a_rollback_past_a_later_swap_says_what_that_swap_carried_over() {
    let dbs = TestDbs::new("bk_carried");
    let ddl = "CREATE TABLE users (id int PRIMARY KEY); CREATE TABLE items (id int PRIMARY KEY);";
    dbs.src.psql(ddl);
    dbs.dst.psql(ddl);
    let wd = Workdir::new();
    let url = dbs.dst.url();
    let start = [
        "start",
        "--source",
        &dbs.src.url(),
        "--dest",
        &url,
        "--preserved-tables",
        "users",
    ];
    let first = run_json(&wd, &start);
    let older = first["swap"]["backup_schema"].as_str().unwrap().to_string();
    dbs.dst.psql("INSERT INTO users VALUES (1), (2)");
    let second = run_json(&wd, &start);
    let newer = second["swap"]["backup_schema"]
        .as_str()
        .unwrap()
        .to_string();
    dbs.dst.psql("INSERT INTO users VALUES (3)");
    let carried = |plan: &Value| {
        plan["rollback"]["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .filter(|w| w.contains("is older than the newest backup"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let older_dry = [
        "rollback",
        "--dest",
        &url,
        "--timestamp",
        &older,
        "--dry-run",
    ];
    let plan = run_json(&wd, &older_dry);
    let said = carried(&plan);
    assert_eq!(said.len(), 1, "{plan}");
    assert!(
        said[0].starts_with(&format!("{older} is older than the newest backup"))
            && said[0].contains(&format!("users, carried by the swap that made {newer}")),
        "{said:?}"
    );
    // Kept, users stays live with those rows: nothing is left out (h45a).
    let plan = run_json(&wd, &[&older_dry[..], &["--keep-tables", "users"]].concat());
    assert_eq!(carried(&plan), Vec::<String>::new(), "{plan}");
    let plan = run_json(&wd, &["rollback", "--dest", &url, "--latest", "--dry-run"]);
    assert_eq!(carried(&plan), Vec::<String>::new(), "{plan}");
    // A swap that does not preserve users ends the chain: those rows are in
    // its backup, not in the current public (h43a: still warned).
    let third = run_json(&wd, &start[..5]);
    let third = third["swap"]["backup_schema"].as_str().unwrap().to_string();
    let plan = run_json(&wd, &older_dry);
    assert_eq!(carried(&plan), Vec::<String>::new(), "{plan}");
    // The rows come back with the public a rollback restores: written while
    // it was live the first time, before the third swap, they are not in
    // the older backup, and no counter counts them (h43a: nothing said).
    run_json(
        &wd,
        &[
            "rollback",
            "--dest",
            &url,
            "--latest",
            "--allow-discard",
            "all",
        ],
    );
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM users"), "3");
    let plan = run_json(&wd, &older_dry);
    let restored = format!("the current public was restored from {third} by a rollback");
    let said = plan["rollback"]["warnings"].to_string();
    assert!(said.contains(&restored), "{plan}");
    run_json(
        &wd,
        &[
            "rollback",
            "--dest",
            &url,
            "--timestamp",
            &older,
            "--allow-discard",
            "all",
        ],
    );
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM users"), "0");
}

/// A rollback held up by a lock on a live table retries as the swap does;
/// its log and its error said "the swap waited for …", "the swap could not
/// take its locks" (h41a). They name the rollback.
#[test]
fn a_rollback_held_up_by_a_lock_says_it_is_the_rollback() {
    let dbs = TestDbs::new("bk_rb_held");
    dbs.src
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);");
    let wd = Workdir::new();
    start(&wd, &dbs);
    let url = dbs.dst.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let holder = rt.block_on(dbs.dst.client());
    rt.block_on(holder.batch_execute("BEGIN; LOCK TABLE public.t IN ACCESS SHARE MODE"))
        .unwrap();
    let out = wd.run(&[
        "rollback",
        "--dest",
        &url,
        "--latest",
        "--lock-timeout",
        "500ms",
        "--swap-retries",
        "1",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the rollback waited for public.t, held by pid ")
            && !stderr.contains("the swap waited")
            && !stderr.contains("the swap could not"),
        "{stderr}"
    );
    assert!(
        stderr
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .contains("the rollback could not take its locks after 2 attempts"),
        "{stderr}"
    );
    rt.block_on(holder.batch_execute("ROLLBACK")).unwrap();
    assert_eq!(list(&wd, &dbs.dst).len(), 1);
}

/// The restored objects come back with the owners and grants they had when
/// the backup was made: a GRANT, a REVOKE, a new owner given to the current
/// public's objects since goes back with the rollback. It said nothing (h44b);
/// its dry run and the rollback now warn, naming the objects. Right after the
/// swap, with nothing changed, there is nothing to say.
#[test]
fn a_rollback_says_which_owners_and_grants_go_back() {
    let dbs = TestDbs::new("bk_acl");
    for r in ["bk_acl_bi", "bk_acl_rep", "bk_acl_own"] {
        dbs.dst.psql(&common::create_role(r, ""));
    }
    let ddl = "CREATE TABLE t (id serial PRIMARY KEY, v text);
               CREATE TABLE u (id int PRIMARY KEY);
               CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';";
    dbs.src.psql(ddl);
    dbs.dst.psql(ddl);
    dbs.dst
        .psql("GRANT SELECT ON t, u TO bk_acl_rep; GRANT USAGE ON SCHEMA public TO bk_acl_own;");
    let wd = Workdir::new();
    start(&wd, &dbs);
    let url = dbs.dst.url();
    let said = "come back with the owners and grants they had when it was made";
    let dry = run_json(&wd, &["rollback", "--latest", "--dest", &url, "--dry-run"]);
    assert!(
        !dry["rollback"]["warnings"].to_string().contains(said),
        "{dry}"
    );

    dbs.dst.psql(
        "GRANT SELECT ON t TO bk_acl_bi; REVOKE EXECUTE ON FUNCTION f() FROM PUBLIC;
         GRANT CREATE ON SCHEMA public TO bk_acl_own; ALTER TABLE t OWNER TO bk_acl_own;
         GRANT SELECT ON SEQUENCE t_id_seq TO bk_acl_bi;",
    );
    // Kept, t and its own sequence stay live as they are: not named (h45b).
    let kept = run_json(
        &wd,
        &[
            "rollback",
            "--latest",
            "--dest",
            &url,
            "--dry-run",
            "--keep-tables",
            "t",
        ],
    );
    assert!(
        kept["rollback"]["warnings"]
            .to_string()
            .contains("and 1 of them differs from their namesakes' in public now (function f()):"),
        "{kept}"
    );
    let dry = run_json(&wd, &["rollback", "--latest", "--dest", &url, "--dry-run"]);
    let warned = dry["rollback"]["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .find(|w| w.contains(said))
        .unwrap_or_else(|| panic!("{dry}"));
    assert!(
        warned.contains("and 3 of them differ from their namesakes' in public now (")
            && warned.contains("table t")
            && warned.contains("sequence t_id_seq")
            && warned.contains("function f()")
            && !warned.contains("table u"),
        "{warned}"
    );
    let out = wd.run(&["rollback", "--latest", "--dest", &url]);
    let text = common::said_by(&out);
    assert!(out.status.success() && text.contains(said), "{text}");
    // As documented: the backup's owners and grants.
    assert_eq!(
        dbs.dst.psql(
            "SELECT has_table_privilege('bk_acl_bi', 'public.t', 'SELECT') || ' '
                    || has_function_privilege('bk_acl_bi', 'public.f()', 'EXECUTE') || ' '
                    || (SELECT relowner::regrole::text FROM pg_class WHERE oid = 'public.t'::regclass)"
        ),
        "false true pgshift_test"
    );
}
