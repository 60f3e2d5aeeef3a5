//! prepare against real clusters: the basics.

mod common;

use common::{TestDbs, Workdir};

#[test]
fn prepare_copies_a_simple_schema_into_shadow() {
    let dbs = TestDbs::new("prep_basic");
    dbs.src.psql(
        "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, created timestamptz DEFAULT now());
         INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, 1000) g;
         CREATE TABLE orders (id bigserial PRIMARY KEY, user_id int REFERENCES users(id), total numeric(10,2));
         INSERT INTO orders (user_id, total) SELECT (g % 1000) + 1, g * 1.5 FROM generate_series(1, 5000) g;
         CREATE INDEX orders_user_idx ON orders (user_id);
         CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;",
    );
    dbs.dst
        .psql("CREATE TABLE old_stuff (x int); INSERT INTO old_stuff VALUES (1);");
    let wd = Workdir::new();
    let out = wd
        .cmd()
        .args([
            "prepare",
            "--source",
            &dbs.src.url(),
            "--dest",
            &dbs.dst.url(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "prepare failed: {stderr}");
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT count(*) FROM shadow.users"),
        "1000"
    );
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT count(*) FROM shadow.orders"),
        "5000"
    );
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT count(*) FROM shadow.big_orders"),
        dbs.src
            .query_one_string("SELECT count(*) FROM public.big_orders")
    );
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT count(*) FROM public.old_stuff"),
        "1"
    );
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT last_value FROM shadow.orders_id_seq"),
        dbs.src
            .query_one_string("SELECT last_value FROM public.orders_id_seq")
    );
}

#[test]
fn verify_checksums_records_a_checksum_per_table() {
    let dbs = TestDbs::new("prep_checksums");
    dbs.src.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text, f float8, at timestamptz DEFAULT now(), b bytea);
         INSERT INTO t SELECT g, md5(g::text), g / 3.0, now(), decode(md5(g::text), 'hex') FROM generate_series(1, 2000) g;
         CREATE TABLE empty (x int);",
    );
    let wd = Workdir::new();
    let out = wd.run_ok(&[
        "prepare",
        "--json",
        "--verify",
        "checksums",
        "--source",
        &dbs.src.url(),
        "--dest",
        &dbs.dst.url(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let tables = v["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 2);
    for t in tables {
        let sum = t["checksum"]
            .as_str()
            .unwrap_or_else(|| panic!("no checksum: {t}"));
        assert!(sum.starts_with(&format!("{}:", t["rows"])), "{t}");
    }
}

#[test]
fn prepare_warns_about_what_will_not_follow_the_swap() {
    let dbs = TestDbs::new("prep_warnings");
    dbs.src.psql(
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);
         SELECT lo_from_bytea(0, 'large object');",
    );
    dbs.dst.psql(
        "CREATE TABLE t (id int PRIMARY KEY);
         CREATE SCHEMA reporting;
         CREATE VIEW reporting.t_ids AS SELECT id FROM public.t;
         CREATE TABLE reporting.refs (t_id int REFERENCES public.t (id));
         CREATE PUBLICATION pub_t FOR TABLE public.t;",
    );
    let wd = Workdir::new();
    let out = wd.run_ok(&[
        "prepare",
        "--dry-run",
        "--json",
        "--source",
        &dbs.src.url(),
        "--dest",
        &dbs.dst.url(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let warnings = v["plan"]["warnings"].to_string();
    for needle in [
        "view reporting.t_ids reads public.t",
        "foreign key",
        "reporting.refs",
        "publication pub_t",
        "large objects",
    ] {
        assert!(
            warnings.contains(needle),
            "{needle:?} missing from {warnings}"
        );
    }
    // The real run reports the same warnings.
    let out = wd.run_ok(&[
        "prepare",
        "--json",
        "--source",
        &dbs.src.url(),
        "--dest",
        &dbs.dst.url(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["warnings"].to_string().contains("publication pub_t"),
        "{v}"
    );
}

/// Timeouts a database sets for its applications do not cut pgshift's own
/// sessions short (pg_dump resets them for itself too): a statement_timeout
/// shorter than the copy, an idle-in-transaction timeout shorter than the
/// source's snapshot session waits, an idle-session timeout shorter than the
/// control session that holds the run lock stays idle.
#[test]
fn the_databases_own_timeouts_do_not_stop_prepare_or_swap() {
    let dbs = TestDbs::new("db_timeouts");
    dbs.src.psql(
        "CREATE TABLE big (id int PRIMARY KEY, pad text);
         INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 200000) g;",
    );
    dbs.dst.psql(
        "CREATE TABLE big (id int PRIMARY KEY, pad text); INSERT INTO big VALUES (1, 'old');",
    );
    for db in [&dbs.src, &dbs.dst] {
        // Short, but not shorter than a connection takes to send its first
        // statement (idle_session_timeout ends a session before any SET could).
        for (setting, value) in [
            ("statement_timeout", "20ms"),
            ("idle_in_transaction_session_timeout", "100ms"),
            ("idle_session_timeout", "1s"),
        ] {
            if setting == "idle_session_timeout" && db.server_major() < 14 {
                println!(
                    "skipped on PostgreSQL {}: idle_session_timeout (from 14 on)",
                    db.server_major()
                );
                continue;
            }
            db.psql(&format!(
                "ALTER DATABASE \"{}\" SET {setting} = '{value}'",
                db.name()
            ));
        }
    }
    let wd = Workdir::new();
    let out = wd.run(&[
        "start",
        "--source",
        &dbs.src.url(),
        "--dest",
        &dbs.dst.url(),
    ]);
    common::assert_success(&out);
    assert_eq!(
        dbs.dst
            .query_one_string("SET statement_timeout = 0; SELECT count(*) FROM public.big"),
        "200000"
    );
}
