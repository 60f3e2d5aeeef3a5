//! prepare against real clusters: the basics.

mod common;

use common::{TestDbs, Workdir, assert_success, create_role};

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
         CREATE TABLE empty (x int);
         -- A column named as the checksum's row alias: the checksum still
         -- covers the whole row.
         CREATE TABLE a (t text, v int); INSERT INTO a VALUES ('x', 1);
         CREATE TABLE b (t text, v int); INSERT INTO b VALUES ('x', 2);",
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
    assert_eq!(tables.len(), 4);
    for t in tables {
        let sum = t["checksum"]
            .as_str()
            .unwrap_or_else(|| panic!("no checksum: {t}"));
        assert!(sum.starts_with(&format!("{}:", t["rows"])), "{t}");
    }
    let sum_of = |name: &str| {
        tables
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no table {name}: {v}"))["checksum"]
            .clone()
    };
    assert_ne!(sum_of("a"), sum_of("b"), "{v}");
}

#[test]
fn prepare_warns_about_what_will_not_follow_the_swap() {
    let dbs = TestDbs::new("prep_warnings");
    dbs.src.psql(
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);
         SELECT lo_from_bytea(0, 'large object');
         CREATE DOMAIN lo AS oid;
         CREATE TABLE \"Files\" (id int PRIMARY KEY, content oid, thumb lo, owner_id int);
         -- Belong to no schema: a cast between types the migration does
         -- not create (one of a migrated type comes with it), a
         -- publication, an event trigger.
         CREATE TYPE pair AS (a int, b int);
         CREATE FUNCTION to_pair(text) RETURNS pair LANGUAGE sql IMMUTABLE AS 'SELECT ROW(1, 2)::pair';
         CREATE CAST (text AS pair) WITH FUNCTION to_pair(text);
         CREATE FUNCTION point_words(point) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT ''p''';
         CREATE CAST (point AS text) WITH FUNCTION point_words(point);
         -- A range's cast to its multirange comes with the type: not named.
         CREATE TYPE floatrange AS RANGE (subtype = float8);
         CREATE PUBLICATION src_pub FOR TABLE t;
         CREATE FUNCTION on_ddl() RETURNS event_trigger LANGUAGE plpgsql AS 'BEGIN END';
         CREATE EVENT TRIGGER src_ddl ON ddl_command_end EXECUTE FUNCTION on_ddl();
         -- A schema public uses that the destination lacks.
         CREATE SCHEMA lookup; CREATE FUNCTION lookup.rate() RETURNS int LANGUAGE sql AS 'SELECT 2';
         CREATE VIEW rated AS SELECT id * lookup.rate() AS r FROM t;",
    );
    dbs.dst.psql(
        "CREATE TABLE t (id int PRIMARY KEY);
         CREATE SCHEMA reporting;
         CREATE VIEW reporting.t_ids AS SELECT id FROM public.t;
         -- An application's schema named like a backup is not one.
         CREATE SCHEMA backup_2023; CREATE VIEW backup_2023.t_ids AS SELECT id FROM public.t;
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
        "view backup_2023.t_ids reads public.t",
        "foreign key",
        "reporting.refs",
        "publication pub_t",
        "the source has 1 large object; pgshift migrates the public schema only and does not copy them (columns that may hold their OIDs, which then name no large object on the destination, or one of its own that has the same OID: public.\\\"Files\\\".content, public.\\\"Files\\\".thumb)",
        "casts belong to no schema; these do not come with the migration: cast from point to text (a cast comes along when",
        "the source's publications are not migrated: src_pub",
        "the source's event triggers are not migrated: src_ddl",
        "reference schema lookup of the source, which is not migrated and does not exist on the destination",
    ] {
        assert!(
            warnings.contains(needle),
            "{needle:?} missing from {warnings}"
        );
    }
    assert!(!warnings.contains("floatmultirange"), "{warnings}");
    assert!(!warnings.contains("to pair"), "{warnings}");
    dbs.src
        .psql("DROP VIEW rated; DROP SCHEMA lookup CASCADE; DROP EVENT TRIGGER src_ddl;");
    // The text plan names the mode its lock budget is for (the upper bound).
    let out = wd.run_ok(&[
        "prepare",
        "--dry-run",
        "--source",
        &dbs.src.url(),
        "--dest",
        &dbs.dst.url(),
    ]);
    assert!(
        out.lines().any(|l| l.starts_with("Lock table: needs about")
            && l.ends_with(" for an object-level swap: fits")),
        "{out}"
    );
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
        // statement (idle_session_timeout ends a session before any SET could),
        // nor than pg_dump's first statements take before it resets the
        // timeouts itself.
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

/// A table owned by another role, whose owned sequence grants this role
/// rights: the shadow's sequence carries the same grants from prepare on. (A
/// grant made before the table's owner change, which gives the sequence to
/// the new owner too, was rewritten by PostgreSQL as the new owner's own and
/// lost until the swap's catch-up, when the sequence was listed before its
/// table.)
#[test]
fn grants_on_a_sequence_owned_through_another_roles_table_survive_prepare() {
    let dbs = TestDbs::new("prep_seq_grant");
    let role = "pgshift_t_seq_owner";
    let ddl = format!(
        "{}
         CREATE SEQUENCE a_tokens_seq;
         CREATE TABLE tokens (id bigint PRIMARY KEY DEFAULT nextval('a_tokens_seq'), pad text);
         ALTER SEQUENCE a_tokens_seq OWNED BY tokens.id;
         ALTER TABLE tokens OWNER TO {role};
         GRANT USAGE, SELECT ON SEQUENCE a_tokens_seq TO CURRENT_USER;",
        create_role(role, "NOLOGIN")
    );
    dbs.src.psql(&ddl);
    // Big enough to be loaded with TRUNCATE + COPY FREEZE, which gives the
    // table a new catalog row after its sequence's: listed after it.
    dbs.src
        .psql("INSERT INTO tokens (pad) SELECT repeat('x', 200) FROM generate_series(1, 30000)");
    dbs.dst.psql(&ddl);
    let wd = Workdir::new();
    assert_success(&wd.prepare(&dbs, &[]));
    let acl = |schema: &str| {
        dbs.dst.query_one_string(&format!(
            "SELECT string_agg(pg_get_userbyid(a.grantee) || ':' || a.privilege_type, ',' ORDER BY 1)
               FROM pg_class c, aclexplode(c.relacl) a
              WHERE c.oid = '{schema}.a_tokens_seq'::regclass"
        ))
    };
    assert_eq!(acl("shadow"), acl("public"));
    assert!(
        acl("shadow").contains(&format!("{role}:UPDATE")),
        "{}",
        acl("shadow")
    );
}

/// Every pgshift session resets the database's timeouts first thing, even a
/// `statement_timeout` of 1 ms, which cancels any catalog lookup: the first
/// statement is a plain SET (it used to be a lookup of pg_settings, which a
/// short statement_timeout cancelled on a busy server, leaving every timeout
/// in force and, once, ending a source session mid-prepare).
#[tokio::test]
async fn a_sessions_first_statement_resets_even_a_1ms_statement_timeout() {
    use pgshift::pg::conn::connect::connect;
    use pgshift::pg::conn::connspec::ConnSpec;
    let dbs = TestDbs::new("prep_1ms");
    for (setting, value) in [
        ("statement_timeout", "1ms"),
        ("idle_in_transaction_session_timeout", "100ms"),
    ] {
        dbs.dst.psql(&format!(
            "ALTER DATABASE \"{}\" SET {setting} = '{value}'",
            dbs.dst.name()
        ));
    }
    let spec = ConnSpec::parse(&dbs.dst.url()).unwrap();
    for _ in 0..5 {
        let c = connect(
            &spec,
            "destination",
            "pgshift-test",
            std::time::Duration::ZERO,
        )
        .await
        .unwrap();
        let row = c
            .query_one(
                "SELECT current_setting('statement_timeout'), current_setting('idle_in_transaction_session_timeout')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            (row.get::<_, String>(0), row.get::<_, String>(1)),
            ("0".to_string(), "0".to_string())
        );
    }
}

/// A restore transaction that fails (a source of a newer version whose DDL
/// the destination does not know: `COMPRESSION` on 13, say) said only
/// `syntax error at or near "COMPRESSION" (transaction 1 of 1, 4 statements)`.
/// The statement the server points at is named now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_restore_transaction_names_its_statement() {
    use pgshift::pg::batch::{self, Stmt};
    let dbs = TestDbs::new("batch_error");
    let client = dbs.dst.client().await;
    let opts = batch::Options::for_server(&client, "schema").await.unwrap();
    let stmt = |sql: &str| Stmt {
        sql: sql.into(),
        locks: 1,
    };
    let stmts = [
        stmt("CREATE TABLE a (id int);"),
        stmt("CREATE TABLE public.b (\n    id int COMPRESSIONX pglz\n);"),
        stmt("CREATE TABLE c (id int);"),
    ];
    let err = format!(
        "{:#}",
        batch::run(&client, &stmts, &opts).await.unwrap_err()
    );
    assert!(
        err.contains("syntax error") && err.contains(", in: CREATE TABLE public.b ("),
        "{err}"
    );
    // Rolled back, as before.
    assert_eq!(
        dbs.dst
            .psql("SELECT count(*) FROM pg_class WHERE relname = 'a'"),
        "0"
    );
}

/// A source string of several hosts (the first refuses connections): the
/// snapshot's session finds the one that answers, and everything after it,
/// the copies and pg_dump, goes to that same server.
#[test]
fn a_source_of_several_hosts_is_used_through_the_one_that_answers() {
    let dbs = TestDbs::new("prep_hosts");
    dbs.src.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 500) g;",
    );
    let dead = common::closed_port();
    let url = dbs.src.url();
    let hosts = url.replacen("@127.0.0.1:", &format!("@127.0.0.1:{dead},127.0.0.1:"), 1);
    assert_ne!(hosts, url, "{url}");
    let wd = Workdir::new();
    let out = wd.run(&["prepare", "--source", &hosts, "--dest", &dbs.dst.url()]);
    assert_success(&out);
    assert_eq!(
        dbs.dst.query_one_string("SELECT count(*) FROM shadow.t"),
        "500"
    );
}

/// A destination string of several hosts: the run stays on the server that
/// took its run lock. Here the first host (another server, each host with its
/// own password-file line) is passed over when the run starts, its database
/// being read-only (`target_session_attrs=read-write`: libpq moves on from a
/// server of the wrong kind, not from one that refuses the login or lacks the
/// database), and becomes writable mid-run, as a failover would make it;
/// prepare's later sessions and workers still go to the server of the lock,
/// and nothing lands on the other one.
#[test]
fn a_destination_of_several_hosts_stays_on_the_server_of_the_run_lock() {
    let dbs = TestDbs::new("prep_dest_hosts");
    dbs.src.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 500) g;",
    );
    let (other, dst) = (dbs.src.server().clone(), dbs.dst.server().clone());
    let wd = Workdir::new();
    let passfile = wd.join("pgpass");
    let esc = |p: &str| p.replace('\\', "\\\\").replace(':', "\\:");
    std::fs::write(
        &passfile,
        format!(
            "127.0.0.1:{}:*:{}:{}\n127.0.0.1:{}:*:{}:{}\n",
            other.port,
            dbs.src.user(),
            esc(dbs.src.password()),
            dst.port,
            dbs.dst.user(),
            esc(dbs.dst.password()),
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &passfile,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    assert_eq!(dbs.src.user(), dbs.dst.user());
    let name = dbs.dst.name().to_string();
    other.psql(
        &other.maintenance_db,
        &format!(
            "CREATE DATABASE \"{name}\"; ALTER DATABASE \"{name}\" SET default_transaction_read_only = on"
        ),
    );
    let dest = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user={} dbname={name} target_session_attrs=read-write",
        other.port,
        dst.port,
        dbs.dst.user()
    );
    let child = wd
        .cmd()
        .args(["prepare", "--source", &dbs.src.url(), "--dest", &dest])
        .env("PGPASSFILE", &passfile)
        .env("PGSHIFT_FAILPOINT", "snapshot:sleep=4000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        common::wait_until(std::time::Duration::from_secs(30), || {
            dbs.dst.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgshift prepare pid=%' AND datname = current_database()"
        ) == "1"
        }),
        "the run never took its lock"
    );
    // The first host now takes writes too.
    other.psql(
        &other.maintenance_db,
        &format!("ALTER DATABASE \"{name}\" SET default_transaction_read_only = off"),
    );
    let out = child.wait_with_output().unwrap();
    let on_other = other.try_psql(
        &name,
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE '%shadow%' OR nspname = 'pgshift'",
    );
    other.psql(
        &other.maintenance_db,
        &format!("DROP DATABASE \"{name}\" WITH (FORCE)"),
    );
    assert_success(&out);
    assert_eq!(
        on_other.as_deref(),
        Ok("0"),
        "the other server was written to"
    );
    assert_eq!(
        dbs.dst.query_one_string("SELECT count(*) FROM shadow.t"),
        "500"
    );
}

/// A destination older than the source is told, before anything changes,
/// every object of the source's schema it could not restore, by feature;
/// relations the filters leave out do not count.
#[tokio::test]
async fn an_older_destination_is_told_what_it_cannot_restore() {
    use pgshift::prepare::downgrade::lacking;
    let dbs = TestDbs::new("prep_downgrade");
    let major = dbs.src.server_major();
    if major < 15 {
        eprintln!("skipped: the source runs PostgreSQL {major}, which lacks the features");
        return;
    }
    dbs.src.psql(
        "CREATE FUNCTION std_body(a int) RETURNS int LANGUAGE sql RETURN a + 1;
         CREATE FUNCTION string_body(a int) RETURNS int LANGUAGE sql AS 'SELECT a + 1';
         CREATE PROCEDURE with_out(IN a int, OUT b int) LANGUAGE plpgsql AS $$BEGIN b := a; END$$;
         CREATE PROCEDURE with_inout(INOUT a int) LANGUAGE plpgsql AS $$BEGIN a := a; END$$;
         CREATE TYPE floatrange AS RANGE (subtype = float8);
         CREATE TABLE t (id int PRIMARY KEY, spans int4multirange, body text COMPRESSION pglz,
                         code text, a int, b int, plain text);
         CREATE STATISTICS t_expr ON (a + b), (a - b) FROM t;
         CREATE STATISTICS t_cols ON a, b FROM t;
         CREATE UNIQUE INDEX t_code ON t (code) NULLS NOT DISTINCT;
         CREATE UNIQUE INDEX t_plain ON t (plain);
         CREATE VIEW v_inv WITH (security_invoker = true) AS SELECT id FROM t;
         CREATE VIEW v_plain AS SELECT id FROM t;
         CREATE TABLE c (id int, t_id int, other int,
                         FOREIGN KEY (t_id) REFERENCES t ON DELETE SET NULL (t_id));
         CREATE TABLE big_log (id int, body text COMPRESSION pglz, r floatrange);",
    );
    let client = dbs.src.client().await;
    let schemas = vec!["public".to_string()];
    let left_out: std::collections::BTreeSet<String> = ["big_log".to_string()].into();
    let on = |dest: u32| {
        let (client, schemas, left_out) = (&client, &schemas, &left_out);
        async move {
            lacking(client, schemas, major, dest, left_out)
                .await
                .unwrap()
        }
    };
    let since_15 = [
        "unique indexes and constraints with NULLS NOT DISTINCT (PostgreSQL 15+): public.t_code",
        "views with the security_invoker option (PostgreSQL 15+): public.v_inv",
        "foreign keys with ON DELETE SET NULL or SET DEFAULT of chosen columns (PostgreSQL 15+): public.c_t_id_fkey",
    ];
    let mut expected = vec![
        "functions with an SQL-standard body (BEGIN ATOMIC or RETURN) (PostgreSQL 14+): public.std_body",
        "procedures with OUT parameters (PostgreSQL 14+): public.with_out",
        "range types (pg_dump names their multirange type) (PostgreSQL 14+): public.floatrange",
        "columns of a multirange type (PostgreSQL 14+): public.t.spans",
        "columns with a compression method (COMPRESSION pglz or lz4) (PostgreSQL 14+): public.t.body",
        "statistics on expressions (PostgreSQL 14+): public.t_expr",
    ];
    expected.extend(since_15);
    assert_eq!(on(13).await, expected);
    assert_eq!(on(14).await, since_15);
    assert!(on(major).await.is_empty());
    // Without the filter, the left-out table's column counts too.
    let all = lacking(&client, &schemas, major, 13, &Default::default())
        .await
        .unwrap();
    assert!(
        all.iter()
            .any(|l| l.contains("public.big_log.body, public.t.body")),
        "{all:?}"
    );
}

/// Two tables whose foreign keys reference each other, built by two workers:
/// `ADD FOREIGN KEY` takes SHARE ROW EXCLUSIVE on its table and then on the
/// one it references, a lock that conflicts with itself, so run side by side
/// the two keys wait on each other (and deadlock when each holds its first
/// lock, as GitLab's `projects` and `namespaces` did). Prepare must never run
/// them together: a poller watches `pg_locks` for one of prepare's sessions
/// waiting for that lock while the keys are built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_keys_between_the_same_tables_are_never_built_side_by_side() {
    let dbs = TestDbs::new("fk_sched");
    dbs.src.psql(
        "CREATE TABLE a (id int PRIMARY KEY, b_id int);
         CREATE TABLE b (id int PRIMARY KEY, a_id int);
         INSERT INTO a SELECT g, g FROM generate_series(1, 300000) g;
         INSERT INTO b SELECT g, g FROM generate_series(1, 300000) g;
         ALTER TABLE a ADD CONSTRAINT a_b_fkey FOREIGN KEY (b_id) REFERENCES b (id);
         ALTER TABLE b ADD CONSTRAINT b_a_fkey FOREIGN KEY (a_id) REFERENCES a (id);",
    );
    let wd = Workdir::new();
    let child = tokio::process::Command::from(wd.prepare_cmd(&dbs, &["--jobs", "2"]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn prepare");
    let watcher = dbs.dst.client().await;
    let poll = watcher
        .prepare(
            "SELECT count(*) FROM pg_catalog.pg_locks l
               JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
              WHERE NOT l.granted AND l.locktype = 'relation'
                AND l.mode = 'ShareRowExclusiveLock'
                AND a.datname = current_database()",
        )
        .await
        .unwrap();
    let done = tokio::spawn(child.wait_with_output());
    let (mut polls, mut waits) = (0u32, 0i64);
    while !done.is_finished() {
        waits += watcher
            .query_one(&poll, &[])
            .await
            .unwrap()
            .get::<_, i64>(0);
        polls += 1;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let out = done.await.unwrap().unwrap();
    assert_success(&out);
    assert!(polls > 10, "the poller ran {polls} times");
    assert_eq!(
        waits, 0,
        "prepare's foreign-key sessions waited on each other"
    );
    assert_eq!(
        dbs.dst.query_one_string(
            "SELECT string_agg(conname, ',' ORDER BY conname) FROM pg_constraint
              WHERE contype = 'f' AND connamespace = 'shadow'::regnamespace AND convalidated"
        ),
        "a_b_fkey,b_a_fkey"
    );
}

/// `--max-connections 3` is what pgshift may open on each server, as its
/// refusal of anything lower says (a lock session, a control session, one
/// worker). On a destination whose role has exactly 3 connection slots,
/// prepare opened a fourth to read the destination's settings while the
/// schema's session was open, and failed after 10 s of retries ("remaining
/// connection slots are reserved"). The lifecycle now runs within 3.
#[test]
fn three_connection_slots_are_enough_for_prepare_swap_and_rollback() {
    if !common::can_start_clusters() {
        return;
    }
    let (src_cluster, _) = common::clusters();
    let dst_cluster = common::Cluster::start_with(
        "three-slots",
        "max_connections = 6\nsuperuser_reserved_connections = 3",
    );
    let dbs = TestDbs::on(src_cluster, &dst_cluster, "three_slots");
    let ddl = "CREATE TABLE posts (id int PRIMARY KEY, body text);
               CREATE TABLE channels (id int PRIMARY KEY);";
    dbs.src.psql(ddl);
    dbs.src
        .psql("INSERT INTO posts SELECT g, 'p' || g FROM generate_series(1, 100) g;");
    let role = format!("slots_owner_{}", std::process::id());
    dbs.dst.psql(&create_role(&role, "LOGIN PASSWORD 'slots'"));
    dbs.dst.psql(&format!(
        "ALTER DATABASE \"{}\" OWNER TO {role}; ALTER SCHEMA public OWNER TO {role};",
        dbs.dst.name()
    ));
    let dst = format!(
        "postgresql://{role}:slots@{}:{}/{}",
        dbs.dst.host(),
        dbs.dst.port(),
        dbs.dst.name()
    );
    dbs.dst.psql(&format!(
        "SET ROLE {role}; {ddl} INSERT INTO posts VALUES (1, 'mine');"
    ));
    let wd = Workdir::new();
    let src = dbs.src.url();
    let budget = ["--max-connections", "3", "--dest", dst.as_str()];
    for args in [
        &["prepare", "--source", &src, "--preserved-tables", "posts"][..],
        &["swap"],
        &["rollback", "--latest", "--keep-tables", "posts"],
    ] {
        assert_success(&wd.run(&[args, &budget[..]].concat()));
    }
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT string_agg(body, ',') FROM posts"),
        "mine"
    );
}

/// The plan's row estimates come from `reltuples`: a table the source never
/// analyzed reads "?", not 0 rows (MLflow's `experiments` held 5).
#[test]
fn the_plan_says_when_a_row_estimate_is_unknown() {
    let dbs = TestDbs::new("plan_unknown_rows");
    dbs.src.psql(
        "CREATE TABLE counted (id int); INSERT INTO counted VALUES (1), (2), (3); ANALYZE counted;
         CREATE TABLE fresh (id int); INSERT INTO fresh VALUES (1), (2), (3);",
    );
    if dbs.src.server_major() < 14 {
        return; // reltuples is 0 there until the first VACUUM or ANALYZE
    }
    let wd = Workdir::new();
    let text = assert_success(&wd.prepare(&dbs, &["--dry-run"]));
    let row = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not in:\n{text}"))
            .split_whitespace()
            .nth(2)
            .unwrap()
            .to_string()
    };
    assert_eq!(
        (row("counted"), row("fresh")),
        ("3".into(), "?".into()),
        "{text}"
    );
}
