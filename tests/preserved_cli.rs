//! Preserved tables through the command line: sync health in `status`, a
//! foreign-key violation that blocks the swap unless `--allow-fk-violations`,
//! and what reads a preserved table after the swap (materialized views, a
//! sequence its default draws from).

mod common;

use common::{TestDb, TestDbs, Workdir, assert_success, create_role, schema_fingerprint};

/// `<command> --preserved-tables users <extra>` between the pair.
fn run_users_preserved(
    wd: &Workdir,
    dbs: &TestDbs,
    command: &str,
    extra: &[&str],
) -> std::process::Output {
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let mut args = vec![
        command,
        "--source",
        &src,
        "--dest",
        &dst,
        "--preserved-tables",
        "users",
    ];
    args.extend(extra);
    wd.run(&args)
}

/// The same, which must succeed: its stdout.
fn with_users_preserved(wd: &Workdir, dbs: &TestDbs, command: &str, extra: &[&str]) -> String {
    assert_success(&run_users_preserved(wd, dbs, command, extra))
}

/// `users (id, name)` on both sides, one row on the destination, prepared
/// with `users` preserved.
fn users_prepared(name: &str) -> (TestDbs, Workdir) {
    let dbs = TestDbs::new(name);
    let ddl = "CREATE TABLE users (id int PRIMARY KEY, name text);";
    dbs.src.psql(ddl);
    dbs.dst.psql(ddl);
    dbs.dst.psql("INSERT INTO users VALUES (1, 'a')");
    let wd = Workdir::new();
    with_users_preserved(&wd, &dbs, "prepare", &[]);
    (dbs, wd)
}

/// The warning of the JSON array `warnings` that starts with `lead`.
fn warning_starting<'a>(warnings: &'a serde_json::Value, lead: &str) -> &'a str {
    warnings
        .as_array()
        .unwrap_or_else(|| panic!("no warnings: {warnings}"))
        .iter()
        .filter_map(|w| w.as_str())
        .find(|w| w.starts_with(lead))
        .unwrap_or_else(|| panic!("no warning starting {lead:?}: {warnings}"))
}

/// A successful run's `--json` output.
fn json_of(wd: &Workdir, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&assert_success(&wd.run(args))).unwrap()
}

/// Run `sql` on `db` in a thread of its own, once `started` (a count) is no
/// longer 0 (within 10 s): the thread, to join.
fn in_background(db: &TestDb, sql: &'static str, started: &str) -> std::thread::JoinHandle<()> {
    let info = db.server().clone();
    let name = db.name().to_string();
    let thread = std::thread::spawn(move || {
        info.psql(&name, sql);
    });
    assert!(common::wait_until(
        std::time::Duration::from_secs(10),
        || db.psql(started) != "0"
    ));
    thread
}

/// The swap's words for a row written to a preserved table since prepare that
/// the source's definition of the table rejects.
const REJECTED: &str = "a row written to it since prepare does not fit the source's definition of the table: fix that row on the destination, or run `pgshift abort` and prepare again";

/// Status and the swap's dry run foresee such a row, the reason naming
/// `needle`. Returns status's JSON.
fn rejection_foreseen(wd: &Workdir, dst: &str, needle: &str) -> serde_json::Value {
    let st = json_of(wd, &["status", "--dest", dst, "--json"]);
    assert_eq!(st["swap_allowed"], false, "{st}");
    let why = st["swap_blocked_reason"].as_str().unwrap_or_default();
    assert!(why.contains(REJECTED) && why.contains(needle), "{st}");
    let dry = json_of(wd, &["swap", "--dest", dst, "--dry-run", "--json"]);
    let refusal = dry["swap"]["refusal"].as_str().unwrap_or_default();
    assert!(refusal.contains(REJECTED), "{dry}");
    st
}

/// The swap refuses such a row: exit 1, its error naming `needle`, in those
/// words.
fn swap_refuses_rejection(wd: &Workdir, dst: &str, needle: &str) {
    let out = wd.run(&["swap", "--dest", dst]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(REJECTED) && err.contains(needle), "{err}");
}

/// [`swap_refuses_rejection`], then `fix` on the destination, and the swap
/// goes through.
fn swap_refused_until(wd: &Workdir, db: &TestDb, needle: &str, fix: &str) {
    let dst = db.url();
    swap_refuses_rejection(wd, &dst, needle);
    db.psql(fix);
    assert_success(&wd.run(&["swap", "--dest", &dst]));
}

/// `db`'s socket URL, connecting as `role`.
fn socket_url_as(db: &common::TestDb, role: &str) -> String {
    db.socket_url().replacen(
        &format!("postgresql://{}@", db.user()),
        &format!("postgresql://{role}@"),
        1,
    )
}

/// The destination database given to a plain login role `<prefix>_<pid>`
/// (no superuser), and its URL as that role through the harness's socket:
/// None, said, on clusters the harness did not start.
fn plain_owned_dest(dbs: &TestDbs, prefix: &str) -> Option<(String, String)> {
    if dbs.dst.socket_dir().is_none() {
        println!("skipped: needs the harness's own clusters");
        return None;
    }
    let role = format!("{prefix}_{}", std::process::id());
    dbs.dst.psql(&create_role(&role, "LOGIN"));
    dbs.dst.psql(&format!(
        "ALTER DATABASE \"{db}\" OWNER TO {role};",
        db = dbs.dst.name()
    ));
    let url = socket_url_as(&dbs.dst, &role);
    Some((role, url))
}

/// How many backup schemas `db` holds.
fn backup_schemas(db: &common::TestDb) -> String {
    db.psql("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'backup\\_%'")
}

/// The sequences the swap that made the backup `report` names fenced, as
/// its manifest records them: `name last_value is_called` each, by name.
fn fenced_in(db: &common::TestDb, report: &serde_json::Value) -> Vec<String> {
    let backup = report["backup_schema"].as_str().unwrap();
    db.psql(&format!(
        "SELECT format('%s %s %s', f->>'name', f->>'last_value', f->>'is_called')
           FROM pgshift.backups b,
                jsonb_array_elements(coalesce(b.manifest::jsonb->'fenced_sequences', '[]')) f
          WHERE b.schema_name = '{backup}'
          ORDER BY 1"
    ))
    .lines()
    .map(String::from)
    .collect()
}

/// `start --preserved-tables users --json <extra>`: its report.
fn start_users_preserved(wd: &Workdir, dbs: &TestDbs, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--json"];
    args.extend(extra);
    serde_json::from_str(&with_users_preserved(wd, dbs, "start", &args)).unwrap()
}

#[test]
fn fk_violations_block_the_swap_unless_allowed_and_status_tells() {
    let dbs = TestDbs::new("preserved_fk");
    dbs.src.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text);
         INSERT INTO users SELECT g, 'src' || g FROM generate_series(1, 100) g;
         CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users (id));
         INSERT INTO orders SELECT g, g FROM generate_series(1, 100) g;",
    );
    // The destination has only users 1..60: orders 61..100 will point nowhere.
    dbs.dst.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text);
         INSERT INTO users SELECT g, 'dst' || g FROM generate_series(1, 60) g;",
    );
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    with_users_preserved(&wd, &dbs, "prepare", &[]);

    // status: prepared, with the preserved table's sync health.
    let st = json_of(&wd, &["status", "--dest", &dst, "--json"]);
    assert_eq!(st["state"], "prepared");
    let health = &st["preserved_tables"][0]["health"];
    assert_eq!(health["triggers_ok"], true, "{st}");
    assert_eq!(health["rows_public"], 60, "{st}");
    assert_eq!(health["rows_shadow"], 60, "{st}");
    assert_eq!(st["swap_allowed"], false, "{st}");
    assert!(
        st["swap_blocked_reason"]
            .as_str()
            .unwrap()
            .contains("orders"),
        "{st}"
    );
    // Writes keep flowing into the shadow in real time.
    dbs.dst.psql("INSERT INTO users VALUES (61, 'late')");
    assert_eq!(
        dbs.dst.psql("SELECT email FROM shadow.users WHERE id = 61"),
        "late"
    );

    // The dry run says the swap would refuse, and why; with the flag it would not.
    let plan = json_of(&wd, &["swap", "--dest", &dst, "--dry-run", "--json"]);
    let refusal = plan["swap"]["refusal"].as_str().unwrap_or_default();
    assert!(
        refusal.contains("orders_user_id_fkey") && refusal.contains("--allow-fk-violations"),
        "{plan}"
    );
    let plan = json_of(
        &wd,
        &[
            "swap",
            "--dest",
            &dst,
            "--dry-run",
            "--json",
            "--allow-fk-violations",
        ],
    );
    assert_eq!(plan["swap"]["refusal"], serde_json::Value::Null, "{plan}");
    assert_eq!(
        plan["swap"]["fk_violations"].as_array().map(Vec::len),
        Some(1),
        "{plan}"
    );

    // The swap is refused, naming the constraint and the count; nothing changes.
    let before = schema_fingerprint(&dbs.dst, "public");
    let out = wd.run(&["swap", "--dest", &dst]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("orders_user_id_fkey") && err.contains("39 rows"),
        "{err}"
    );
    assert!(err.contains("--allow-fk-violations"), "{err}");
    assert_eq!(schema_fingerprint(&dbs.dst, "public"), before);

    // Allowed: the constraint is created NOT VALID, and status says so.
    let report = json_of(
        &wd,
        &["swap", "--dest", &dst, "--allow-fk-violations", "--json"],
    );
    assert_eq!(
        report["fk_not_valid"][0], "orders.orders_user_id_fkey",
        "{report}"
    );
    assert_eq!(
        dbs.dst
            .psql("SELECT convalidated FROM pg_constraint WHERE conname = 'orders_user_id_fkey'"),
        "f"
    );
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM users"), "61");
    let st = json_of(&wd, &["status", "--dest", &dst, "--json"]);
    assert_eq!(st["state"], "idle");
    assert_eq!(
        st["not_valid_foreign_keys"][0], "orders.orders_user_id_fkey",
        "{st}"
    );
    let human = assert_success(&wd.run(&["status", "--dest", &dst]));
    assert!(human.contains("NOT VALID"), "{human}");
    // New rows are still checked by the NOT VALID constraint.
    let out = dbs
        .dst
        .server()
        .try_psql(dbs.dst.name(), "INSERT INTO orders VALUES (1000, 999)");
    assert!(
        out.is_err(),
        "a NOT VALID foreign key must still check new rows"
    );
}

#[test]
fn a_valid_fk_to_a_preserved_table_is_validated_after_the_swap() {
    let dbs = TestDbs::new("preserved_fk_ok");
    dbs.src.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text);
         INSERT INTO users SELECT g, 'src' || g FROM generate_series(1, 10) g;
         CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users (id));
         INSERT INTO orders SELECT g, 1 + g % 10 FROM generate_series(1, 50) g;",
    );
    dbs.dst.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text);
         INSERT INTO users SELECT g, 'dst' || g FROM generate_series(1, 10) g;",
    );
    let wd = Workdir::new();
    let v = start_users_preserved(&wd, &dbs, &[]);
    assert_eq!(v["swap"]["fk_not_valid"], serde_json::json!([]), "{v}");
    assert_eq!(
        dbs.dst
            .psql("SELECT convalidated FROM pg_constraint WHERE conname = 'orders_user_id_fkey'"),
        "t"
    );
    assert_eq!(
        dbs.dst
            .psql("SELECT string_agg(DISTINCT left(email, 3), ',') FROM users"),
        "dst"
    );
}

/// A row written since prepare whose referenced row waits in its table's
/// changelog (the trigger's apply to the shadow gave way to a lock) breaks no
/// foreign key: the swap replays the changelogs before it creates the keys,
/// and `status`, the dry run and the swap's own check count that replay too
/// (they refused over the shadow alone, a swap that would have gone
/// through). A row that does break a key is still found through it, and the
/// trial replay is rolled back.
#[tokio::test]
async fn a_referenced_row_waiting_in_the_changelog_breaks_no_foreign_key() {
    let dbs = TestDbs::new("fk_waiting");
    dbs.src.psql(
        "CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent (id));",
    );
    // The destination has no key yet: child 2000 points nowhere.
    dbs.dst.psql(
        "CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE child (id int PRIMARY KEY, parent_id int);
         INSERT INTO parent SELECT g FROM generate_series(1, 10) g;
         INSERT INTO child SELECT g, g FROM generate_series(1, 10) g;",
    );
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    wd.run_ok(&[
        "prepare",
        "--source",
        &dbs.src.url(),
        "--dest",
        &dst,
        "--preserved-tables",
        "parent,child",
    ]);
    let locker = dbs.dst.client().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE shadow.parent IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    dbs.dst.psql(
        "BEGIN; INSERT INTO parent VALUES (1000); INSERT INTO child VALUES (1000, 1000), (2000, 2000); COMMIT;",
    );
    locker.batch_execute("COMMIT").await.unwrap();
    let waiting = "SELECT (SELECT count(*) FROM shadow.parent WHERE id = 1000) || ' ' || (SELECT count(*) FROM shadow.child WHERE id >= 1000)";
    assert_eq!(dbs.dst.psql(waiting), "0 2");

    let st = json_of(&wd, &["status", "--dest", &dst, "--json"]);
    assert_eq!(st["swap_allowed"], false, "{st}");
    let plan = json_of(&wd, &["swap", "--dest", &dst, "--dry-run", "--json"]);
    let found = &plan["swap"]["fk_violations"];
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{plan}");
    assert_eq!(found[0]["count"], 1, "{plan}");
    assert_eq!(
        found[0]["examples"],
        serde_json::json!(["(2000)"]),
        "{plan}"
    );
    assert_eq!(dbs.dst.psql(waiting), "0 2");

    dbs.dst.psql("DELETE FROM child WHERE id = 2000");
    let st = json_of(&wd, &["status", "--dest", &dst, "--json"]);
    assert_eq!(st["swap_allowed"], true, "{st}");
    let plan = json_of(&wd, &["swap", "--dest", &dst, "--dry-run", "--json"]);
    assert_eq!(plan["swap"]["refusal"], serde_json::Value::Null, "{plan}");
    assert_eq!(
        plan["swap"]["fk_violations"],
        serde_json::json!([]),
        "{plan}"
    );
    assert_eq!(dbs.dst.psql(waiting), "0 1");
    wd.run_ok(&["swap", "--dest", &dst]);
    assert_eq!(
        dbs.dst
            .psql("SELECT convalidated FROM pg_constraint WHERE conname = 'child_parent_id_fkey'"),
        "t"
    );
    assert_eq!(
        dbs.dst.psql("SELECT count(*) FROM parent WHERE id = 1000"),
        "1"
    );
}

/// A check the source added NOT VALID (Synapse's `profiles`: `CHECK
/// (full_user_id IS NOT NULL) NOT VALID`, from a migration that left the
/// old rows alone) exempts the rows that were there. The destination's rows
/// of a preserved table are such rows: prepare failed copying them in
/// ("violates check constraint"). The swap now adds the check after them,
/// NOT VALID as on the source, and it holds for new rows.
#[test]
fn a_not_valid_check_of_the_source_exempts_the_preserved_rows() {
    let dbs = TestDbs::new("preserved_check_not_valid");
    dbs.src.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text);
         ALTER TABLE users ADD CONSTRAINT users_email_set CHECK (email IS NOT NULL) NOT VALID;
         COMMENT ON CONSTRAINT users_email_set ON users IS 'new rows only';",
    );
    dbs.dst.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text);
         INSERT INTO users VALUES (1, NULL), (2, 'b@x');",
    );
    let wd = Workdir::new();
    with_users_preserved(&wd, &dbs, "prepare", &[]);
    // Written while prepared, replayed, exempt as well.
    dbs.dst.psql("INSERT INTO users VALUES (3, NULL)");
    assert_success(&wd.run(&["swap", "--dest", &dbs.dst.url()]));
    assert_eq!(
        dbs.dst.psql(
            "SELECT string_agg(id || ':' || coalesce(email, '-'), ',' ORDER BY id) FROM users"
        ),
        "1:-,2:b@x,3:-"
    );
    assert_eq!(
        dbs.dst.psql(
            "SELECT convalidated || ' ' || obj_description(oid, 'pg_constraint')
               FROM pg_constraint WHERE conname = 'users_email_set'"
        ),
        "false new rows only"
    );
    let err = dbs
        .dst
        .try_psql("INSERT INTO users VALUES (4, NULL)")
        .unwrap_err();
    assert!(err.contains("users_email_set"), "{err}");
}

/// A partitioned table's key to a preserved table (PostgreSQL before 18
/// cannot add it NOT VALID): each leaf partition gets it NOT VALID inside the
/// swap, validated after it, then the parent's key is added and attaches them.
/// The result is the source's DDL, and the key works.
#[test]
fn a_partitioned_tables_fk_to_a_preserved_table_survives_the_swap() {
    let dbs = TestDbs::new("preserved_fk_part");
    let users = "CREATE TABLE users (id int PRIMARY KEY, email text);
         INSERT INTO users SELECT g, 'x' || g FROM generate_series(1, 10) g;";
    dbs.src.psql(&format!(
        "{users}
         CREATE TABLE events (id int, user_id int REFERENCES users (id) ON DELETE CASCADE,
                              kind text, at int) PARTITION BY LIST (kind);
         CREATE TABLE events_a PARTITION OF events FOR VALUES IN ('a');
         CREATE TABLE events_b PARTITION OF events FOR VALUES IN ('b') PARTITION BY RANGE (at);
         CREATE TABLE events_b1 PARTITION OF events_b FOR VALUES FROM (0) TO (100);
         CREATE TABLE events_b2 PARTITION OF events_b FOR VALUES FROM (100) TO (200);
         INSERT INTO events SELECT g, 1 + g % 10, CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END, g % 200
           FROM generate_series(1, 60) g;"
    ));
    dbs.dst.psql(users);
    let wd = Workdir::new();
    let v = start_users_preserved(&wd, &dbs, &[]);
    assert_eq!(v["swap"]["fk_not_valid"], serde_json::json!([]), "{v}");
    assert_eq!(v["swap"]["warnings"], serde_json::json!([]), "{v}");
    let keys = "SELECT string_agg(conrelid::regclass || ':' || convalidated || ':' || (conparentid <> 0), ' ' ORDER BY conrelid::regclass::text)
                  FROM pg_constraint WHERE contype = 'f'";
    assert_eq!(
        dbs.dst.psql(keys),
        "events:true:false events_a:true:true events_b:true:true events_b1:true:true events_b2:true:true"
    );
    assert_eq!(dbs.dst.psql(keys), dbs.src.psql(keys));
    assert_eq!(
        common::schema_ddl(&dbs.dst, &["public"]),
        common::schema_ddl(&dbs.src, &["public"])
    );
    // The key works: a cascade from the preserved table, a refused orphan.
    dbs.dst.psql("DELETE FROM users WHERE id = 2");
    assert_eq!(
        dbs.dst
            .psql("SELECT count(*) FROM events WHERE user_id = 2"),
        "0"
    );
    let err = dbs
        .dst
        .try_psql("INSERT INTO events VALUES (999, 999, 'b', 150)")
        .unwrap_err();
    assert!(err.contains("violates foreign key constraint"), "{err}");

    // With a violation allowed, the partitions' copies stay NOT VALID and the
    // parent's key is not added (it would claim rows it does not hold).
    let bad = TestDbs::new("preserved_fk_part_bad");
    bad.src.psql(&format!(
        "{users}
         INSERT INTO users VALUES (11, 'x11');
         CREATE TABLE events (id int, user_id int REFERENCES users (id), kind text)
           PARTITION BY LIST (kind);
         CREATE TABLE events_a PARTITION OF events FOR VALUES IN ('a');
         CREATE TABLE events_b PARTITION OF events FOR VALUES IN ('b');
         INSERT INTO events VALUES (1, 1, 'a'), (2, 11, 'b');"
    ));
    bad.dst.psql(users);
    let wd = Workdir::new();
    let v = start_users_preserved(&wd, &bad, &["--allow-fk-violations"]);
    assert_eq!(
        v["swap"]["fk_not_valid"],
        serde_json::json!([
            "events_a.events_user_id_fkey",
            "events_b.events_user_id_fkey",
            "events.events_user_id_fkey"
        ]),
        "{v}"
    );
    assert_eq!(
        bad.dst.psql(keys),
        "events_a:false:false events_b:false:false"
    );
    // The report says the parent has no key at all (it read as if it had one
    // NOT VALID), and how to add it once the rows match.
    assert_eq!(
        v["swap"]["fk_not_added"],
        serde_json::json!(["events.events_user_id_fkey"]),
        "{v}"
    );
    let advice = warning_starting(
        &v["swap"]["warnings"],
        "foreign key events.events_user_id_fkey of a partitioned table was not added",
    );
    let add = advice
        .split("run: ")
        .nth(1)
        .unwrap_or_else(|| panic!("{advice}"));
    bad.dst.psql(&format!(
        "DELETE FROM events WHERE user_id = 11;
         ALTER TABLE events_a VALIDATE CONSTRAINT events_user_id_fkey;
         ALTER TABLE events_b VALIDATE CONSTRAINT events_user_id_fkey;
         {add};"
    ));
    assert_eq!(bad.dst.psql(keys), bad.src.psql(keys));
}

/// After the swap, what depends on a preserved table agrees with its rows
/// (the destination's): a materialized view over it (directly, and through a
/// view, into a second materialized view) counts them, and a sequence that
/// its default draws from without owning it (shared with a table that is not
/// preserved) continues after both sides' values.
#[test]
fn matviews_and_default_sequences_follow_the_preserved_rows() {
    let dbs = TestDbs::new("preserved_deps");
    let schema = "CREATE SEQUENCE ids;
         CREATE TABLE users (id bigint DEFAULT nextval('ids') PRIMARY KEY, name text);
         CREATE TABLE notes (id bigint DEFAULT nextval('ids') PRIMARY KEY, body text);
         CREATE MATERIALIZED VIEW user_count AS SELECT count(*) AS n FROM users;
         CREATE VIEW named AS SELECT name FROM users WHERE name IS NOT NULL;
         CREATE MATERIALIZED VIEW named_count AS SELECT count(*) AS n FROM named;";
    dbs.src.psql(schema);
    dbs.dst.psql(schema);
    // Source: ids up to 15 (5 users, 10 notes). Destination: 40 users.
    dbs.src.psql(
        "INSERT INTO users (name) SELECT 's' || g FROM generate_series(1, 5) g;
         INSERT INTO notes (body) SELECT 'n' FROM generate_series(1, 10) g;
         REFRESH MATERIALIZED VIEW user_count; REFRESH MATERIALIZED VIEW named_count;",
    );
    dbs.dst.psql(
        "INSERT INTO users (name) SELECT 'd' || g FROM generate_series(1, 40) g;
         REFRESH MATERIALIZED VIEW user_count; REFRESH MATERIALIZED VIEW named_count;",
    );
    let wd = Workdir::new();
    with_users_preserved(&wd, &dbs, "start", &[]);
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM users"), "40");
    assert_eq!(dbs.dst.psql("SELECT n FROM user_count"), "40");
    assert_eq!(dbs.dst.psql("SELECT n FROM named_count"), "40");
    // The shared sequence continues after the destination's 40 (the source
    // was at 15): inserts into both tables work.
    assert_eq!(
        dbs.dst
            .psql("INSERT INTO users (name) VALUES ('new') RETURNING id"),
        "41"
    );
    assert_eq!(
        dbs.dst
            .psql("INSERT INTO notes (body) VALUES ('new') RETURNING id"),
        "42"
    );
}

/// A sequence no column owns or draws from, whose values the application
/// takes itself (`SELECT nextval('users_seq')`, then the INSERT: Hibernate's
/// ids), continues after the greater of the destination's and the source's
/// values when tables are preserved: the destination's users keep their ids,
/// and the next id is new. One the source is further on keeps the source's.
/// One whose value the source's definition cannot hold, or holds as its very
/// last, is warned about at prepare, in the dry run and by the swap.
#[test]
fn a_sequence_the_application_draws_from_itself_does_not_go_back() {
    let dbs = TestDbs::new("preserved_app_seq");
    let schema =
        "CREATE SEQUENCE users_seq; CREATE SEQUENCE other_seq; CREATE SEQUENCE bounded_seq;
         CREATE SEQUENCE end_seq; CREATE TABLE users (id bigint PRIMARY KEY, name text);";
    dbs.src.psql(schema);
    dbs.dst.psql(schema);
    dbs.src.psql(
        "INSERT INTO users SELECT nextval('users_seq'), 's' FROM generate_series(1, 100);
         SELECT setval('other_seq', 5000);
         ALTER SEQUENCE bounded_seq MAXVALUE 1000; SELECT setval('bounded_seq', 100);
         ALTER SEQUENCE end_seq MAXVALUE 1000; SELECT setval('end_seq', 10);",
    );
    dbs.dst.psql(
        "INSERT INTO users SELECT nextval('users_seq'), 'd' FROM generate_series(1, 3000);
         SELECT setval('other_seq', 70); SELECT setval('bounded_seq', 4000);
         SELECT setval('end_seq', 1000);",
    );
    let bounded = "sequence public.bounded_seq: the destination's sequence is further on (4000), but its value does not fit the source's definition (increment 1, 1 to 1000): it takes the source's value, which the destination has passed";
    let end = "sequence public.end_seq: the destination's sequence is at 1000, the end of the source's definition (increment 1, 1 to 1000), so its next nextval fails; widen it on the source (ALTER SEQUENCE … MAXVALUE/MINVALUE) and prepare again";
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    // Said at prepare, as things stand then, and by the dry run.
    let prepared: serde_json::Value =
        serde_json::from_str(&with_users_preserved(&wd, &dbs, "prepare", &["--json"])).unwrap();
    for w in [bounded, end] {
        assert!(
            prepared["warnings"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!(format!(
                    "{w} (as things stand now; the swap looks again)"
                ))),
            "{prepared}"
        );
    }
    let dry = json_of(&wd, &["swap", "--dest", &dst, "--dry-run", "--json"]);
    assert_eq!(
        dry["swap"]["warnings"],
        serde_json::json!([bounded, end]),
        "{dry}"
    );
    assert_eq!(dry["swap"]["refusal"], serde_json::Value::Null, "{dry}");
    // The dry run for people says them too.
    let text = assert_success(&wd.run(&["swap", "--dest", &dst, "--dry-run"]));
    for w in [bounded, end] {
        assert!(text.contains(&format!("warning: {w}")), "{text}");
    }
    let out = wd.run(&["swap", "--dest", &dst, "--json"]);
    let report: serde_json::Value = serde_json::from_str(&assert_success(&out)).unwrap();
    assert_eq!(dbs.dst.psql("SELECT max(id) FROM users"), "3000");
    assert_eq!(dbs.dst.psql("SELECT nextval('users_seq')"), "3001");
    assert_eq!(dbs.dst.psql("SELECT nextval('other_seq')"), "5001");
    // A value the source's definition cannot hold: the source's, with a warning.
    assert_eq!(dbs.dst.psql("SELECT nextval('bounded_seq')"), "101");
    assert!(
        common::stderr_of(&out)
            .contains("does not fit the source's definition (increment 1, 1 to 1000)"),
        "{out:?}"
    );
    // At the end of it: carried on (no value comes twice), with a warning.
    let err = dbs
        .dst
        .try_psql("SELECT nextval('end_seq')")
        .expect_err("end_seq is at its end");
    assert!(err.contains("reached maximum value"), "{err}");
    // And in the report's warnings, for a CI job reading --json.
    let warnings = report["warnings"].as_array().unwrap();
    for w in [bounded, end] {
        assert!(warnings.contains(&serde_json::json!(w)), "{report}");
    }
}

/// Status lists every reason the swap would refuse for, in the order the
/// swap checks them, not only the first: here foreign-key violations of a
/// preserved table and its sequence beyond the source's bounds, which the
/// swap would refuse one after the other.
#[test]
fn status_lists_every_reason_the_swap_would_refuse() {
    let dbs = TestDbs::new("preserved_reasons");
    dbs.src.psql(
        "CREATE TABLE users (id int GENERATED BY DEFAULT AS IDENTITY (MAXVALUE 1000) PRIMARY KEY, name text);
         INSERT INTO users (name) SELECT 's' FROM generate_series(1, 10);
         CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users (id));
         INSERT INTO orders SELECT g, g FROM generate_series(1, 10) g;",
    );
    dbs.dst.psql(
        "CREATE TABLE users (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, name text);
         INSERT INTO users (name) SELECT 'd' FROM generate_series(1, 4000);
         DELETE FROM users WHERE id <= 5;",
    );
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    // Prepare says so already, rather than the swap after a whole prepare.
    let prepared = with_users_preserved(&wd, &dbs, "prepare", &["--json"]);
    let prepared: serde_json::Value = serde_json::from_str(&prepared).unwrap();
    let fk = warning_starting(
        &prepared["warnings"],
        "foreign keys involving preserved tables do not match the destination's rows: ",
    );
    assert!(fk.contains("orders_user_id_fkey"), "{fk}");
    let st = json_of(&wd, &["status", "--dest", &dst, "--json"]);
    assert_eq!(st["swap_allowed"], false, "{st}");
    let reasons: Vec<&str> = st["swap_blocked_reasons"]
        .as_array()
        .unwrap_or_else(|| panic!("no swap_blocked_reasons: {st}"))
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 2, "{st}");
    assert!(
        reasons[0].starts_with(
            "foreign keys involving preserved or kept tables do not match the destination's rows"
        ),
        "{st}"
    );
    assert!(reasons[0].contains("orders"), "{st}");
    assert_eq!(
        reasons[1],
        "sequence users_id_seq of preserved table users (column id) cannot continue after the destination's rows: the destination's sequence is at 4000, outside the source's definition (1 to 1000); widen it on the source (ALTER SEQUENCE … MAXVALUE/MINVALUE) and prepare again"
    );
    assert_eq!(st["swap_blocked_reason"], reasons[0], "{st}");
    // So does the dry run, in the order the swap checks them.
    let dry = json_of(&wd, &["swap", "--dest", &dst, "--dry-run", "--json"]);
    let refusals = dry["swap"]["refusals"].as_array().unwrap();
    assert_eq!(refusals.len(), 2, "{dry}");
    assert_eq!(refusals[0], dry["swap"]["refusal"], "{dry}");
    assert!(
        refusals[1]
            .as_str()
            .unwrap()
            .starts_with("sequence users_id_seq"),
        "{dry}"
    );
    let text = assert_success(&wd.run(&["swap", "--dest", &dst, "--dry-run"]));
    assert!(
        text.contains("The swap would refuse, for 2 reasons:"),
        "{text}"
    );
    assert!(text.contains("  - sequence users_id_seq"), "{text}");
    // The terminal output names both.
    let text = assert_success(&wd.run(&["status", "--dest", &dst]));
    assert!(text.contains("not allowed, for 2 reasons:"), "{text}");
    assert!(text.contains("users_id_seq"), "{text}");
    // Each fixed, the list shrinks to what is left.
    dbs.dst
        .psql("INSERT INTO users (id, name) SELECT g, 'back' FROM generate_series(1, 5) g");
    let st = json_of(&wd, &["status", "--dest", &dst, "--json"]);
    assert_eq!(
        st["swap_blocked_reasons"].as_array().map(Vec::len),
        Some(1),
        "{st}"
    );
    assert!(
        st["swap_blocked_reason"]
            .as_str()
            .unwrap()
            .starts_with("sequence users_id_seq"),
        "{st}"
    );
}

/// A preserved table's column sequence that the destination has drawn beyond
/// the source's definition (a lower MAXVALUE): the swap cannot carry it over,
/// and the rows hold those keys. Status and the dry run say so, naming the
/// sequence, and the swap refuses before any lock, changing nothing.
#[test]
fn a_column_sequence_beyond_the_sources_bounds_is_refused_before_the_swap() {
    let dbs = TestDbs::new("preserved_seq_misfit");
    dbs.src.psql(
        "CREATE TABLE users (id int GENERATED BY DEFAULT AS IDENTITY (MAXVALUE 1000) PRIMARY KEY, name text);
         INSERT INTO users (name) SELECT 's' FROM generate_series(1, 10);",
    );
    dbs.dst.psql(
        "CREATE TABLE users (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, name text);
         INSERT INTO users (name) SELECT 'd' FROM generate_series(1, 4000);",
    );
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    let prepared: serde_json::Value =
        serde_json::from_str(&with_users_preserved(&wd, &dbs, "prepare", &["--json"])).unwrap();
    let why = "sequence users_id_seq of preserved table users (column id) cannot continue after the destination's rows: the destination's sequence is at 4000, outside the source's definition (1 to 1000); widen it on the source (ALTER SEQUENCE … MAXVALUE/MINVALUE) and prepare again";
    // Said at prepare already.
    assert!(
        prepared["warnings"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(format!(
                "{why}; the swap refuses it until then"
            ))),
        "{prepared}"
    );
    let st = json_of(&wd, &["status", "--dest", &dst, "--json"]);
    assert_eq!(st["swap_allowed"], false, "{st}");
    assert_eq!(st["swap_blocked_reason"], why, "{st}");
    let dry = json_of(&wd, &["swap", "--dest", &dst, "--dry-run", "--json"]);
    assert_eq!(
        dry["swap"]["refusal"],
        format!("{why}; nothing was changed"),
        "{dry}"
    );
    let before = schema_fingerprint(&dbs.dst, "public");
    let out = wd.run(&["swap", "--dest", &dst]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = common::stderr_of(&out);
    assert!(
        err.contains(&format!("{why}; nothing was changed")),
        "{err}"
    );
    assert_eq!(schema_fingerprint(&dbs.dst, "public"), before);
    assert_eq!(backup_schemas(&dbs.dst), "0");
    assert_eq!(dbs.dst.psql("SELECT nextval('users_id_seq')"), "4001");
    // At the very end of the source's definition the value fits, but the
    // next insert would fail: refused too.
    dbs.dst.psql("SELECT setval('users_id_seq', 1000)");
    let st = json_of(&wd, &["status", "--dest", &dst, "--json"]);
    assert_eq!(
        st["swap_blocked_reason"],
        "sequence users_id_seq of preserved table users (column id) cannot continue after the destination's rows: the destination's sequence is at 1000, the end of the source's definition, so the next insert would fail (1 to 1000); widen it on the source (ALTER SEQUENCE … MAXVALUE/MINVALUE) and prepare again",
        "{st}"
    );
    // One short of it, the swap goes through and the sequence carries on.
    dbs.dst.psql("SELECT setval('users_id_seq', 999)");
    assert_success(&wd.run(&["swap", "--dest", &dst]));
    assert_eq!(dbs.dst.psql("SELECT nextval('users_id_seq')"), "1000");
}

/// Two columns of a preserved table that draw from one sequence: it carries
/// on after the furthest of them both, not set back by the second column's
/// plan to the source's value (duplicate keys after the swap).
#[test]
fn columns_sharing_a_sequence_carry_it_once() {
    let dbs = TestDbs::new("preserved_shared_seq");
    dbs.src.psql(
        "CREATE SEQUENCE ids;
         CREATE TABLE users (id int PRIMARY KEY DEFAULT nextval('ids'), ext int DEFAULT nextval('ids'), name text);
         INSERT INTO users (name) SELECT 's' FROM generate_series(1, 10);",
    );
    dbs.dst.psql(
        "CREATE TABLE users (id serial PRIMARY KEY, ext int, name text);
         INSERT INTO users (ext, name) SELECT 1, 'd' FROM generate_series(1, 500);",
    );
    let wd = Workdir::new();
    with_users_preserved(&wd, &dbs, "start", &[]);
    assert_eq!(
        dbs.dst
            .psql("INSERT INTO users (name) VALUES ('new') RETURNING id, ext"),
        "501|502"
    );
}

/// A column of a preserved table renamed on the destination after prepare:
/// status says the swap is not allowed and why, before the swap finds out.
#[test]
fn status_tells_when_a_preserved_table_can_no_longer_be_replayed() {
    let (dbs, wd) = users_prepared("preserved_renamed");
    let dst = dbs.dst.url();
    dbs.dst
        .psql("ALTER TABLE public.users RENAME COLUMN name TO full_name");
    let st = json_of(&wd, &["status", "--dest", &dst, "--json"]);
    assert_eq!(st["swap_allowed"], false, "{st}");
    assert_eq!(
        st["swap_blocked_reason"],
        "the sync of users cannot be replayed (preserved table users: column name is no longer in both tables); run `pgshift abort` and prepare again",
        "{st}"
    );
    // The dry run says the same, and so does the swap, which changes nothing.
    let dry = json_of(&wd, &["swap", "--dest", &dst, "--dry-run", "--json"]);
    assert_eq!(dry["swap"]["refusal"], st["swap_blocked_reason"], "{dry}");
    let out = wd.run(&["swap", "--dest", &dst]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the sync of users cannot be replayed"),
        "{out:?}"
    );
}

/// A write to a preserved table that the shadow's constraints reject (the
/// source made the column NOT NULL) succeeds in public and stays in the
/// changelog; the swap's catch-up fails on it, changing nothing, and the
/// migration record keeps the error for `status` until a swap gets through.
#[test]
fn a_write_the_shadow_rejects_fails_the_swap_and_status_shows_why() {
    let dbs = TestDbs::new("preserved_reject");
    dbs.src.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL,
                             shout text GENERATED ALWAYS AS (upper(email)) STORED);",
    );
    dbs.dst.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text, shout text);
         INSERT INTO users VALUES (1, 'a', 'mine');",
    );
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    let p: serde_json::Value =
        serde_json::from_str(&with_users_preserved(&wd, &dbs, "prepare", &["--json"])).unwrap();
    // A column the source generates replaces the destination's own values: said.
    assert!(
        p["warnings"].as_array().unwrap().iter().any(|w| w
            == "preserved table users: column shout is generated in the source but not in the destination; the destination's values are replaced by the computed ones"),
        "{p}"
    );
    dbs.dst.psql("INSERT INTO users VALUES (2, NULL)");
    // Status and the dry run foresee it (a replay tried and rolled back),
    // and change nothing: the row still waits in the changelog.
    let st = rejection_foreseen(&wd, &dst, "email");
    assert_eq!(st["preserved_tables"][0]["health"]["pending"], 1, "{st}");
    let before = schema_fingerprint(&dbs.dst, "public");
    // The swap refuses it, and says what to do about it.
    swap_refuses_rejection(&wd, &dst, "email");
    assert_eq!(schema_fingerprint(&dbs.dst, "public"), before);
    let st = json_of(&wd, &["status", "--dest", &dst, "--json"]);
    assert_eq!(st["state"], "prepared", "{st}");
    let recorded = st["migration"]["error"].as_str().unwrap_or_default();
    assert!(
        recorded.starts_with("swap failed") && recorded.contains("email"),
        "{st}"
    );
    // Fixed in public: the swap gets through, and the error is history.
    dbs.dst.psql("UPDATE users SET email = 'b' WHERE id = 2");
    assert_success(&wd.run(&["swap", "--dest", &dst]));
    assert_eq!(dbs.dst.psql("SELECT email FROM users WHERE id = 2"), "b");
    let st = json_of(&wd, &["status", "--dest", &dst, "--json"]);
    assert_eq!(st["migration"]["status"], "swapped", "{st}");
    assert_eq!(st["migration"]["error"], serde_json::Value::Null, "{st}");
}

/// PostgreSQL's errors for a value the source's type cannot hold (a
/// `varchar(n)` too short, a numeric's precision, a domain's check) name no
/// row, so "fix that row" did not say which: the row is looked for, key by
/// key, and its key added to the error, in status, the dry run and the swap.
#[test]
fn a_rejected_row_whose_error_names_no_row_is_named_by_its_key() {
    let dbs = TestDbs::new("preserved_named");
    dbs.src.psql(
        "CREATE DOMAIN adult AS int CHECK (VALUE >= 18);
         CREATE TABLE users (tenant int, id int, code varchar(5), age adult, PRIMARY KEY (tenant, id));",
    );
    dbs.dst.psql(
        "CREATE DOMAIN adult AS int CHECK (VALUE >= 0);
         CREATE TABLE users (tenant int, id int, code text, age adult, PRIMARY KEY (tenant, id));
         INSERT INTO users SELECT 1, g, 'c', 20 FROM generate_series(1, 100) g;",
    );
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    with_users_preserved(&wd, &dbs, "prepare", &[]);
    dbs.dst.psql(
        "INSERT INTO users SELECT 2, g, 'n', 30 FROM generate_series(1, 500) g;
         UPDATE users SET code = 'toolong' WHERE (tenant, id) = (2, 250);",
    );
    rejection_foreseen(
        &wd,
        &dst,
        "value too long for type character varying(5); DETAIL: Key (tenant, id)=(2, 250).",
    );
    swap_refuses_rejection(&wd, &dst, "Key (tenant, id)=(2, 250).");
    // A row prepare copied, its value made one the source's domain rejects.
    dbs.dst.psql(
        "UPDATE users SET code = 'ok' WHERE (tenant, id) = (2, 250);
         UPDATE users SET age = 3 WHERE (tenant, id) = (1, 42);",
    );
    rejection_foreseen(
        &wd,
        &dst,
        "adult_check\"; DETAIL: Key (tenant, id)=(1, 42).",
    );
    dbs.dst
        .psql("UPDATE users SET age = 18 WHERE (tenant, id) = (1, 42)");
    assert_success(&wd.run(&["swap", "--dest", &dst]));
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM users"), "600");
}

/// A column that becomes a new domain of the migration over its own type
/// (`text` to `email`, a domain over text with a CHECK) is preserved: its
/// values go in as INSERT assigns them to the type the domain is over, and the
/// domain's CHECK refuses, by key, a row that does not pass it. Prepare
/// refused it ("only a type of the same name can").
#[test]
fn a_column_that_becomes_a_new_domain_over_its_type_is_preserved() {
    let dbs = TestDbs::new("preserved_new_domain");
    dbs.src.psql(
        "CREATE DOMAIN email AS text CHECK (VALUE LIKE '%@%');
         CREATE TABLE users (id int PRIMARY KEY, name email);",
    );
    dbs.dst.psql(
        "CREATE TABLE users (id int PRIMARY KEY, name text);
         INSERT INTO users VALUES (1, 'a@x');",
    );
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    // A row the domain's CHECK refuses is found by the dry run (the domain
    // tried as itself), not by prepare after the whole copy.
    dbs.dst.psql("INSERT INTO users VALUES (9, 'nobody')");
    let out = run_users_preserved(&wd, &dbs, "prepare", &["--dry-run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("text becomes email over text): value for domain email violates check constraint \"email_check\" (Key (id)=(9), for one)"),
        "{err}"
    );
    dbs.dst.psql("DELETE FROM users WHERE id = 9");
    with_users_preserved(&wd, &dbs, "prepare", &["--dry-run"]);
    with_users_preserved(&wd, &dbs, "prepare", &[]);
    dbs.dst
        .psql("INSERT INTO users VALUES (2, 'b@x'), (3, 'nobody')");
    rejection_foreseen(&wd, &dst, "email_check\"; DETAIL: Key (id)=(3).");
    swap_refused_until(
        &wd,
        &dbs.dst,
        "Key (id)=(3).",
        "UPDATE users SET name = 'c@x' WHERE id = 3",
    );
    assert_eq!(
        dbs.dst
            .psql("SELECT string_agg(name || ':' || pg_typeof(name), ',' ORDER BY id) FROM users"),
        "a@x:email,b@x:email,c@x:email"
    );
}

/// After a TRUNCATE of a preserved table, the swap copies all of it again;
/// status's trial of that copy used to truncate the shadow table itself, which
/// waited for (and gave up behind, saying nothing) any open application
/// transaction that had written to the table, and would otherwise have held up
/// every write meanwhile. The trial copies into a temporary table like the
/// shadow's, beside the application's open write, and finds the row.
#[test]
fn a_truncated_preserved_table_is_tried_beside_an_open_application_write() {
    let dbs = TestDbs::new("preserved_trunc_trial");
    dbs.src
        .psql("CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL CHECK (email <> ''));");
    dbs.dst.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text);
         INSERT INTO users SELECT g, 'u' || g FROM generate_series(1, 50) g;",
    );
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    with_users_preserved(&wd, &dbs, "prepare", &[]);
    dbs.dst
        .psql("TRUNCATE users; INSERT INTO users VALUES (1, 'a'), (2, NULL);");
    // An application transaction writes to users and stays open: the sync
    // trigger's apply holds its lock on the shadow table until it ends.
    let (info, db) = (dbs.dst.server().clone(), dbs.dst.name().to_string());
    let app = std::thread::spawn(move || {
        info.psql(
            &db,
            "BEGIN; INSERT INTO users VALUES (3, 'c'); SELECT pg_sleep(4); COMMIT;",
        )
    });
    let started = std::time::Instant::now();
    while dbs.dst.psql(
        "SELECT count(*) FROM pg_locks WHERE relation = 'shadow.users'::regclass AND granted AND pid <> pg_backend_pid()",
    ) == "0"
    {
        assert!(started.elapsed().as_secs() < 10, "the write never reached the shadow");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let st = rejection_foreseen(&wd, &dst, "email");
    // The application's transaction went through, and nothing was replayed:
    // the TRUNCATE and both rows still wait, the application's row beside them.
    app.join().unwrap();
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM users"), "3");
    assert_eq!(st["preserved_tables"][0]["health"]["pending"], 3, "{st}");
    let st = json_of(&wd, &["status", "--dest", &dst, "--json"]);
    assert_eq!(st["preserved_tables"][0]["health"]["pending"], 4, "{st}");
    // The swap refuses it in the same words, and goes through once it is fixed.
    swap_refused_until(
        &wd,
        &dbs.dst,
        "email",
        "UPDATE users SET email = 'b' WHERE id = 2",
    );
    assert_eq!(
        dbs.dst
            .psql("SELECT string_agg(id || email, ',' ORDER BY id) FROM users"),
        "1a,2b,3c"
    );
}

/// The changelog keeps every write since prepare until the swap, so under
/// load a row written a minute ago lies far beyond the first batch the trial
/// replays; a rejected one there was not foreseen. The keys beyond it are
/// tried too.
#[test]
fn a_rejected_row_behind_a_long_backlog_is_foreseen() {
    let dbs = TestDbs::new("preserved_backlog");
    dbs.src
        .psql("CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL);");
    dbs.dst.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text);
         INSERT INTO users VALUES (1, 'a');",
    );
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    with_users_preserved(&wd, &dbs, "prepare", &[]);
    dbs.dst.psql(
        "INSERT INTO users SELECT g, 'e' || g FROM generate_series(100, 12099) g;
         INSERT INTO users VALUES (2, NULL);",
    );
    let st = rejection_foreseen(&wd, &dst, "email");
    assert_eq!(
        st["preserved_tables"][0]["health"]["pending"], 12001,
        "{st}"
    );
    // Fixed: the whole backlog is tried and fits, and the swap takes it.
    dbs.dst.psql("UPDATE users SET email = 'b' WHERE id = 2");
    let st = json_of(&wd, &["status", "--dest", &dst, "--json"]);
    assert_eq!(st["swap_allowed"], true, "{st}");
    assert_success(&wd.run(&["swap", "--dest", &dst]));
    assert_eq!(
        dbs.dst
            .psql("SELECT count(*) || ' ' || count(email) FROM users"),
        "12002 12002"
    );
}

/// A rejected row in each of two preserved tables: status and the dry run
/// name both, so that fixing one does not just uncover the other.
#[test]
fn a_rejected_row_in_each_of_two_preserved_tables_gives_two_reasons() {
    let dbs = TestDbs::new("preserved_two_rejects");
    dbs.src.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL);
         CREATE TABLE orders (id int PRIMARY KEY, qty int CHECK (qty > 0));",
    );
    dbs.dst.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text);
         CREATE TABLE orders (id int PRIMARY KEY, qty int);",
    );
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    assert_success(&wd.run(&[
        "prepare",
        "--source",
        &src,
        "--dest",
        &dst,
        "--preserved-tables",
        "users,orders",
    ]));
    dbs.dst
        .psql("INSERT INTO users VALUES (1, NULL); INSERT INTO orders VALUES (1, 0);");
    let named = |reasons: &serde_json::Value| {
        let all = reasons.as_array().cloned().unwrap_or_default();
        ["changelog of users", "changelog of orders"]
            .iter()
            .all(|t| {
                all.iter()
                    .any(|r| r.as_str().unwrap_or_default().contains(t))
            })
    };
    let st = json_of(&wd, &["status", "--dest", &dst, "--json"]);
    assert!(named(&st["swap_blocked_reasons"]), "{st}");
    let dry = json_of(&wd, &["swap", "--dest", &dst, "--dry-run", "--json"]);
    assert!(named(&dry["swap"]["refusals"]), "{dry}");
}

/// Two rows a unique key only the source has forbids, written far apart: the
/// first within the batch the trial replays, the second far beyond it. The
/// keys beyond the batch were tried apart from it, and the pair never met.
#[test]
fn two_rows_a_unique_key_of_the_source_forbids_are_foreseen_however_far_apart() {
    let dbs = TestDbs::new("preserved_far_dup");
    dbs.src
        .psql("CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE);");
    dbs.dst.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text);
         INSERT INTO users VALUES (1, 'a');",
    );
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    with_users_preserved(&wd, &dbs, "prepare", &[]);
    dbs.dst.psql(
        "INSERT INTO users VALUES (2, 'dup');
         INSERT INTO users SELECT g, 'e' || g FROM generate_series(100, 12099) g;
         INSERT INTO users VALUES (3, 'dup');",
    );
    let st = rejection_foreseen(&wd, &dst, "users_email_key");
    let why = st["swap_blocked_reason"].as_str().unwrap_or_default();
    assert!(why.contains("dup"), "{st}");
    swap_refuses_rejection(&wd, &dst, "users_email_key");
    dbs.dst.psql("DELETE FROM users WHERE id = 3");
    let st = json_of(&wd, &["status", "--dest", &dst, "--json"]);
    assert_eq!(st["swap_allowed"], true, "{st}");
    assert_success(&wd.run(&["swap", "--dest", &dst]));
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM users"), "12002");
}

/// A unique key only the source has, `DEFERRABLE INITIALLY DEFERRED`: the
/// sync trigger's apply of an application write that breaks it queued a check
/// for the application's own COMMIT, out of reach of the trigger's EXCEPTION
/// block, and the application's write failed. Now the shadow's deferrable
/// constraints are checked at the apply (the write goes through, the key is
/// logged); status and the dry run foresee the violation, and the swap
/// refuses it in its own words.
#[test]
fn a_deferred_unique_key_only_the_source_has_never_fails_the_applications_write() {
    let dbs = TestDbs::new("preserved_deferred");
    dbs.src.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text,
                             CONSTRAINT email_u UNIQUE (email) DEFERRABLE INITIALLY DEFERRED);",
    );
    dbs.dst.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text);
         INSERT INTO users VALUES (1, 'a'), (2, 'b');",
    );
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    with_users_preserved(&wd, &dbs, "prepare", &[]);
    // The application's write commits (it failed at COMMIT with
    // `duplicate key value violates unique constraint "email_u"`).
    assert_eq!(
        dbs.dst
            .psql("BEGIN; INSERT INTO users VALUES (3, 'a'); COMMIT; SELECT count(*) FROM users"),
        "3"
    );
    rejection_foreseen(&wd, &dst, "email_u");
    swap_refused_until(
        &wd,
        &dbs.dst,
        "email_u",
        "UPDATE users SET email = 'c' WHERE id = 3",
    );
    assert_eq!(
        dbs.dst
            .psql("SELECT string_agg(id || email, ',' ORDER BY id) FROM users"),
        "1a,2b,3c"
    );
}

/// The destination's rows break a deferrable unique key only the source has:
/// prepare's copy of them fails at the copy, saying so, not at its COMMIT
/// ("committing the copy"). The dry run's trial of unique keys refuses such
/// rows before prepare starts, so the duplicate is written while prepare
/// runs, after that trial and before the sync's copy.
#[test]
fn destination_rows_a_deferred_unique_key_of_the_source_forbids_fail_the_copy() {
    use std::io::{BufRead, BufReader, Read};
    let dbs = TestDbs::new("preserved_deferred_copy");
    dbs.src.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text,
                             CONSTRAINT email_u UNIQUE (email) DEFERRABLE INITIALLY DEFERRED);",
    );
    dbs.dst.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text);
         INSERT INTO users VALUES (1, 'a'), (2, 'b');",
    );
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let mut child = wd
        .cmd()
        .args(["prepare", "--source", &src, "--dest", &dst])
        .args(["--preserved-tables", "users"])
        .env("PGSHIFT_FAILPOINT", "sync:sleep=2000")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "{seen}");
        seen.push_str(&line);
        if line.contains("pausing 2000 ms at sync") {
            break;
        }
    }
    dbs.dst.psql("UPDATE users SET email = 'a' WHERE id = 2");
    stderr.read_to_string(&mut seen).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(1), "{seen}");
    let last = seen.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.contains("copying the destination's rows of users into shadow")
            && last.contains("email_u"),
        "{last}"
    );
    // Before prepare, the trial names the key.
    let out = run_users_preserved(&wd, &dbs, "prepare", &["--dry-run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("unique index email_u (email): Key (email)=(a)"),
        "{err}"
    );
}

/// A destination row the source's type cannot hold failed prepare's copy
/// with PostgreSQL's error, which names no row: the error names it by its
/// key, and prepare leaves nothing behind. (It is found before the copy now,
/// by the trial of the rows that do not fit, which names a key the same way.)
#[test]
fn destination_rows_the_source_rejects_fail_prepare_naming_the_row() {
    let dbs = TestDbs::new("preserved_copy_named");
    dbs.src
        .psql("CREATE TABLE users (id int PRIMARY KEY, code varchar(5));");
    dbs.dst.psql(
        "CREATE TABLE users (id int PRIMARY KEY, code text);
         INSERT INTO users SELECT g, 'c' FROM generate_series(1, 2000) g;
         UPDATE users SET code = 'toolong' WHERE id = 1234;",
    );
    let out = run_users_preserved(&Workdir::new(), &dbs, "prepare", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("users.code: the destination's rows do not all fit the source's column (text becomes character varying(5)): value too long for type character varying(5) (Key (id)=(1234), for one)"),
        "{err}"
    );
    assert_eq!(
        dbs.dst.psql(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'shadow'
             UNION ALL SELECT count(*) FROM pg_trigger WHERE tgrelid = 'users'::regclass"
        ),
        "0\n0"
    );
}

/// A key the source's type cannot hold (the destination's `bigint` past the
/// source's `int`), written since prepare and then deleted or given another
/// key, is not in the shadow and has no row left to fix; the replay converted
/// it to find its row and failed (`integer out of range`) at every swap, for
/// good. It is passed over.
#[test]
fn a_key_the_source_cannot_hold_that_is_gone_does_not_block_the_swap() {
    let dbs = TestDbs::new("preserved_stale_key");
    dbs.src
        .psql("CREATE TABLE users (id int PRIMARY KEY, email text);");
    dbs.dst.psql(
        "CREATE TABLE users (id bigint PRIMARY KEY, email text);
         INSERT INTO users VALUES (1, 'a');",
    );
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    with_users_preserved(&wd, &dbs, "prepare", &[]);
    dbs.dst.psql(
        "INSERT INTO users VALUES (5000000000, 'gone'), (6000000000, 'moved');
         DELETE FROM users WHERE id = 5000000000;
         UPDATE users SET id = 7 WHERE id = 6000000000;",
    );
    let st = json_of(&wd, &["status", "--dest", &dst, "--json"]);
    assert_eq!(st["swap_allowed"], true, "{st}");
    assert_success(&wd.run(&["swap", "--dest", &dst]));
    assert_eq!(
        dbs.dst
            .psql("SELECT string_agg(id || email, ',' ORDER BY id) FROM users"),
        "1a,7moved"
    );
}

/// A preserved column whose source type belongs to an extension the
/// destination lacks (citext) was refused up front ("destination type text
/// cannot be converted to the source's type citext"), although prepare
/// creates the extension first and the conversion then exists. It is checked
/// once the extension is there. So is a unique key over it: the
/// destination's case-sensitive `UNIQUE` on the text column held nothing of
/// the source's case-insensitive one (a silent pass, then the copy failed
/// on 'Ann@…' beside 'ann@…'); the key is tried as `citext`.
#[test]
fn a_preserved_column_of_an_extension_type_the_destination_lacks_is_checked_after_creating_it() {
    let dbs = TestDbs::new("preserved_citext");
    dbs.src.psql(
        "CREATE EXTENSION citext;
         CREATE TABLE users (id int PRIMARY KEY, email citext UNIQUE);",
    );
    dbs.dst.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE);
         INSERT INTO users VALUES (1, 'Ann@Example.com'), (2, 'ann@example.com');",
    );
    let wd = Workdir::new();
    let dry = run_users_preserved(&wd, &dbs, "prepare", &["--dry-run"]);
    let said = common::said_by(&dry);
    assert_eq!(dry.status.code(), Some(0), "{said}");
    for needle in [
        "checked once prepare has created it",
        "unique index users_email_key was not tried (column email changes type (text becomes citext))",
    ] {
        assert!(said.contains(needle), "{needle}: {said}");
    }
    let out = run_users_preserved(&wd, &dbs, "prepare", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("the destination's rows do not hold under the source's unique index users_email_key (email): Key (email)=("),
        "{err}"
    );
    assert_eq!(
        dbs.dst
            .psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'shadow'"),
        "0"
    );
    dbs.dst.psql("DELETE FROM users WHERE id = 2");
    // prepare checks it once the extension is there: its report carries
    // that answer, not the first round's "checked once…".
    let v = start_users_preserved(&wd, &dbs, &[]);
    assert!(
        !v["prepare"]["warnings"]
            .to_string()
            .contains("checked once prepare has created it"),
        "{v}"
    );
    assert_eq!(
        dbs.dst
            .psql("SELECT id FROM users WHERE email = 'ann@example.com'"),
        "1"
    );
    assert_eq!(
        dbs.dst.psql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.users'::regclass AND attname = 'email'"),
        "citext"
    );
}

/// Keys whose columns change type the way applications change them: a
/// same-named domain now over `citext` (it passed in silence, then the copy
/// failed on 'A@x' beside 'a@x'), a key widened from `varchar(10)` to `text`
/// (values stay apart: tried as they are, where it was a warning), and a
/// new domain over `citext`, of an extension in public (it was refused as a
/// type the migration creates).
#[test]
fn keys_over_retyped_columns_are_tried_as_the_copy_stores_them() {
    let dbs = TestDbs::new("preserved_retyped_keys");
    // dom (not migrated) holds a domain over a domain over numeric(10,0):
    // its scale rounds 1.1 and 1.2 to the same key.
    let dom = "CREATE SCHEMA dom; CREATE DOMAIN dom.m0 AS numeric(10,0); CREATE DOMAIN dom.m0b AS dom.m0;";
    dbs.src.psql(&format!(
        "CREATE EXTENSION citext; {dom}
         CREATE DOMAIN email AS citext; CREATE DOMAIN em AS citext; CREATE DOMAIN email2 AS email;
         CREATE TABLE users (id int PRIMARY KEY, email email UNIQUE, alt em, code text UNIQUE,
                             tags email[] UNIQUE, e2 email2 UNIQUE, amt dom.m0b UNIQUE);"
    ));
    dbs.dst.psql(&format!(
        "CREATE EXTENSION citext; {dom}
         CREATE DOMAIN email AS text; CREATE DOMAIN email2 AS email;
         CREATE TABLE users (id int PRIMARY KEY, email email UNIQUE, alt text, code varchar(10),
                             tags email[] UNIQUE, e2 email2 UNIQUE, amt numeric(10,2) UNIQUE);
         INSERT INTO users VALUES (1, 'A@x', 'a', 'c1', '{{A@x}}', 'A@x', 1.1),
                                  (2, 'a@x', 'b', 'c1', '{{a@x}}', 'a@x', 1.2);"
    ));
    let wd = Workdir::new();
    let out = run_users_preserved(&wd, &dbs, "prepare", &["--dry-run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for needle in [
        "unique index users_email_key (email): Key (email)=(",
        "unique index users_code_key (code): Key (code)=(c1)",
        "unique index users_tags_key (tags): Key (tags)=(",
        "unique index users_amt_key (amt): Key (amt)=(1)",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert!(!err.contains("alt"), "{err}");
    dbs.dst.psql(
        "UPDATE users SET email = 'b@x', code = 'c2', tags = '{b@x}', e2 = 'b@x', amt = 3 WHERE id = 2",
    );
    let out = run_users_preserved(&wd, &dbs, "prepare", &["--dry-run"]);
    let said = common::said_by(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    // A domain over a domain the migration creates, now over citext: not
    // tried here (its type is not here yet), said rather than passed.
    assert_eq!(said.matches("was not tried").count(), 1, "{said}");
    assert!(
        said.contains("unique index users_e2_key was not tried (column e2's domain email2 is over another type in the source)"),
        "{said}"
    );
    with_users_preserved(&wd, &dbs, "prepare", &[]);
    assert_eq!(
        dbs.dst.psql(
            "SELECT string_agg(email || alt || code || tags::text || e2, ',' ORDER BY id) FROM shadow.users"
        ),
        "A@xac1{A@x}A@x,b@xbc2{b@x}b@x"
    );
}

/// Columns widened by the new version (`int` to `bigint`, `varchar(20)` to
/// `text`), unique or not: every value fits and stays apart, so the dry run
/// reads none of the destination's rows for them (it scanned the whole
/// table for each, and a big one ran out of time with a warning).
#[test]
fn widened_columns_cost_no_scan_of_the_preserved_rows() {
    let dbs = TestDbs::new("preserved_widened");
    dbs.src.psql(
        "CREATE TABLE users (id int PRIMARY KEY, n bigint UNIQUE, s text UNIQUE, f float8, t timestamp);",
    );
    dbs.dst.psql(
        "CREATE TABLE users (id int PRIMARY KEY, n int UNIQUE, s varchar(20) UNIQUE, f float4, t timestamp(3));
         INSERT INTO users SELECT g, g, 'u' || g, g, now() FROM generate_series(1, 100) g;",
    );
    let reads = || {
        dbs.dst.psql(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relid = 'public.users'::regclass",
        )
    };
    let before = reads();
    let wd = Workdir::new();
    let out = run_users_preserved(&wd, &dbs, "prepare", &["--dry-run"]);
    let said = common::said_by(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(!said.contains("users."), "{said}");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(reads(), before, "{said}");
}

/// The destination's rows of a preserved table that the source's columns
/// cannot hold (a longer text than the new length, a number beyond the new
/// precision, a NULL where the source says NOT NULL) are found before
/// anything changes, by the dry run and by prepare: exit 2, naming each
/// column, instead of a prepare that fails at its sync phase after the whole
/// copy. Rows that fit a changed column pass, and once changed, prepare runs.
/// So do a domain of public whose `varchar` narrows (it was copied through
/// its text form, an explicit cast, and cut short without a word, at the
/// copy and at each later write) and a domain's CHECK. A later write that
/// does not fit is refused by the swap, not cut short.
#[test]
fn preserved_rows_that_do_not_fit_the_sources_columns_are_refused_before_prepare() {
    let dbs = TestDbs::new("preserved_fit");
    let common =
        "CREATE SCHEMA common; CREATE DOMAIN common.short AS text CHECK (length(VALUE) < 5);";
    dbs.src.psql(&format!(
        "{common} CREATE DOMAIN tag AS varchar(5); CREATE DOMAIN addr AS inet;
         CREATE TABLE users (id int PRIMARY KEY, name varchar(5), score numeric(4,2),
                             nick text NOT NULL DEFAULT '', born int8, email varchar(80),
                             tag tag, code common.short, ip addr);"
    ));
    dbs.dst.psql(&format!(
        "{common} CREATE DOMAIN tag AS varchar(50); CREATE DOMAIN addr AS text;
         CREATE TABLE users (id int PRIMARY KEY, name varchar(50), score numeric(6,2),
                             nick text, born int4, email varchar(40), tag tag, code text, ip addr);
         INSERT INTO users VALUES (1, 'Ann', 1.5, 'a', 1990, 'ann@example.com', 'a', 'x', '10.0.0.1'),
                                  (2, 'Bartholomew', 123.45, NULL, 1985, 'bart@example.com',
                                   'alexander', 'toolong', 'not-an-ip');"
    ));
    let wd = Workdir::new();
    let state = || {
        format!(
            "{}{}",
            schema_fingerprint(&dbs.dst, "public"),
            dbs.dst
                .psql("SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace")
        )
    };
    let before = state();
    for extra in [&["--dry-run"][..], &[]] {
        let out = run_users_preserved(&wd, &dbs, "prepare", extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        for needle in [
            "users.name: the destination's rows do not all fit the source's column (character varying(50) becomes character varying(5)): value too long for type character varying(5)",
            "users.score: the destination's rows do not all fit the source's column (numeric(6,2) becomes numeric(4,2)): numeric field overflow",
            "users.nick: the destination's rows do not all fit the source's column (text becomes NOT NULL): a row holds NULL",
            "users.tag: the destination's rows do not all fit the source's column (tag becomes tag over character varying(5)): value too long for type character varying(5)",
            "users.code: the destination's rows do not all fit the source's column (text becomes common.short): value for domain common.short violates check constraint",
            "users.ip: the destination's rows do not all fit the source's column (addr becomes addr over inet): invalid input syntax for type inet: \"not-an-ip\" (Key (id)=(2), for one)",
        ] {
            assert!(err.contains(needle), "{extra:?}: {needle}: {err}");
        }
        // Widened columns fit: not named.
        assert!(
            !err.contains("users.born") && !err.contains("users.email"),
            "{err}"
        );
        assert_eq!(state(), before, "{extra:?}");
    }
    dbs.dst.psql(
        "UPDATE users SET name = 'Bart', score = 99.5, nick = 'b', tag = 'alex', code = 'ok', ip = '10.0.0.2' WHERE id = 2",
    );
    with_users_preserved(&wd, &dbs, "prepare", &[]);
    dbs.dst
        .psql("INSERT INTO users (id, nick, tag) VALUES (3, 'c', 'christopher')");
    swap_refuses_rejection(
        &wd,
        &dbs.dst.url(),
        "value too long for type character varying(5)",
    );
    dbs.dst.psql("UPDATE users SET tag = 'chris' WHERE id = 3");
    assert_success(&wd.run(&["swap", "--dest", &dbs.dst.url()]));
    assert_eq!(
        dbs.dst.psql(
            "SELECT string_agg(concat_ws(' ', name, score, nick, born, tag, code), '; ' ORDER BY id) FROM users"
        ),
        "Ann 1.50 a 1990 a x; Bart 99.50 b 1985 alex ok; c chris"
    );
}

/// A preserved column whose type the restore re-creates (a domain, an enum
/// array) reaches the shadow through its text form: under the destination's
/// own `extra_float_digits = 0` a float came back as 0.3, under `array_nulls =
/// off` a NULL element failed (enums) or became 'NULL' (text). The copy, the
/// trigger functions and the replays now use fixed settings.
#[test]
fn preserved_values_through_text_ignore_the_destinations_settings() {
    let dbs = TestDbs::new("preserved_via_text");
    let ddl = "CREATE DOMAIN price AS float8;
               CREATE DOMAIN label AS text;
               CREATE TYPE mood AS ENUM ('sad', 'happy');
               CREATE TABLE users (id int PRIMARY KEY, p price, moods mood[], labels label[]);";
    dbs.src.psql(ddl);
    dbs.dst.psql(ddl);
    for (k, v) in [("extra_float_digits", "0"), ("array_nulls", "off")] {
        dbs.dst.psql(&format!(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET {k} = %L', current_database(), '{v}'); END $$;"
        ));
    }
    dbs.dst.psql(
        "INSERT INTO users VALUES (1, 0.1::float8 + 0.2, ARRAY['sad', NULL]::mood[], ARRAY['a', NULL]::label[]);",
    );
    let wd = Workdir::new();
    with_users_preserved(&wd, &dbs, "prepare", &[]);
    // Written between prepare and swap: through the triggers and the replay.
    dbs.dst.psql(
        "SET extra_float_digits = 0; SET array_nulls = off;
         INSERT INTO users VALUES (2, 0.1::float8 + 0.7, ARRAY[NULL, 'happy']::mood[], ARRAY[NULL, 'b']::label[]);",
    );
    assert_success(&wd.run(&["swap", "--dest", &dbs.dst.url()]));
    assert_eq!(
        dbs.dst.psql(
            "SET extra_float_digits = 3; SELECT string_agg(concat_ws(' ', id, p, moods, labels, labels[1] IS NULL), '; ' ORDER BY id) FROM users"
        ),
        "1 0.30000000000000004 {sad,NULL} {a,NULL} f; 2 0.7999999999999999 {NULL,happy} {NULL,b} t"
    );
}

/// Row-level security turned on and forced on a preserved table after
/// prepare, for a role that is not a superuser: the final replay would read
/// the live rows through its policies and lose those they hide. Status and
/// the swap refuse, naming the cause; nothing changes; once FORCE is off
/// again the swap carries every row. A forced table that is not preserved
/// is not counted for the backup's manifest rather than counted wrong.
#[test]
fn row_level_security_on_a_preserved_table_refuses_the_swap() {
    let dbs = TestDbs::new("preserved_rls");
    let Some((role, dst)) = plain_owned_dest(&dbs, "rls_mover") else {
        return;
    };
    let schema = "CREATE TABLE users (id int PRIMARY KEY, name text);
                  CREATE TABLE notes (id int PRIMARY KEY);";
    dbs.src.psql(schema);
    dbs.src
        .psql("INSERT INTO users SELECT g, 's' FROM generate_series(1, 5) g;");
    dbs.dst.psql(schema);
    dbs.dst.psql(&format!(
        "INSERT INTO users SELECT g, 'd' FROM generate_series(1, 50) g;
         INSERT INTO notes SELECT generate_series(1, 30);
         ALTER TABLE users OWNER TO {role}; ALTER TABLE notes OWNER TO {role};
         ALTER TABLE notes ENABLE ROW LEVEL SECURITY; ALTER TABLE notes FORCE ROW LEVEL SECURITY;
         CREATE POLICY few ON notes USING (id <= 10);"
    ));
    let src = dbs.src.url();
    let wd = Workdir::new();
    let prepare = [
        "prepare",
        "--source",
        &src,
        "--dest",
        &dst,
        "--preserved-tables",
        "users",
    ];
    // Forced on the source, it would be on the shadow: refused up front.
    dbs.src.psql(
        "ALTER TABLE users ENABLE ROW LEVEL SECURITY; ALTER TABLE users FORCE ROW LEVEL SECURITY;",
    );
    let out = wd.run(&prepare);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("the source's table forces row-level security, which its shadow takes"),
        "{out:?}"
    );
    dbs.src.psql(
        "ALTER TABLE users NO FORCE ROW LEVEL SECURITY; ALTER TABLE users DISABLE ROW LEVEL SECURITY;",
    );
    assert_success(&wd.run(&prepare));
    dbs.dst.psql(
        "ALTER TABLE users ENABLE ROW LEVEL SECURITY; ALTER TABLE users FORCE ROW LEVEL SECURITY;
         CREATE POLICY half ON users USING (id <= 25);
         UPDATE users SET name = 'changed' WHERE id > 25;",
    );
    let status = json_of(&wd, &["status", "--json", "--dest", &dst]);
    assert_eq!(status["swap_allowed"], false, "{status}");
    assert!(
        status["swap_blocked_reason"]
            .as_str()
            .unwrap()
            .contains("row-level security applies to role"),
        "{status}"
    );
    let out = wd.run(&["swap", "--dest", &dst]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("row-level security applies to role"),
        "{out:?}"
    );
    assert_eq!(backup_schemas(&dbs.dst), "0");

    dbs.dst
        .psql("ALTER TABLE users NO FORCE ROW LEVEL SECURITY");
    assert_success(&wd.run(&["swap", "--dest", &dst]));
    assert_eq!(
        dbs.dst
            .psql("SELECT count(*) || ' ' || count(*) FILTER (WHERE name = 'changed') FROM users"),
        "50 25"
    );
    let listed = json_of(&wd, &["list", "--json", "--dest", &dst]);
    // notes not counted (its policy would have shown 10 of 30): no total,
    // rather than users' 50 alone (h47a).
    assert!(listed[0]["total_rows"].is_null(), "{listed}");
    assert_eq!(listed[0]["tables"], 2, "{listed}");
}

/// Row-level security on a table outside the migration (an `auth.users`
/// its own role owns) that applies to the role running pgshift: a preserved
/// table's foreign key into it cannot be checked before the swap, which
/// refuses unless `--allow-fk-violations` leaves it to PostgreSQL's
/// validation right after; a materialized view over it holds the rows its
/// owner may see, as on the source.
#[test]
fn row_level_security_outside_the_migration_fails_neither_check_nor_refresh() {
    let dbs = TestDbs::new("outside_rls");
    if dbs.dst.socket_dir().is_none() {
        println!("skipped: needs the harness's own clusters");
        return;
    }
    let role = format!("rls_app_{}", std::process::id());
    // The view's owner sees 3 users; pgshift's role, a member of it, all 9.
    let viewer = format!("rls_viewer_{}", std::process::id());
    // Only the source grants the view's owner what `note_count` reads.
    let grant = format!("GRANT SELECT ON notes TO {viewer};");
    for (db, profiles, grant) in [
        (&dbs.src, "1, 2", grant.as_str()),
        (&dbs.dst, "1, 2, 3, 4, 5", ""),
    ] {
        db.psql(&create_role(&role, "LOGIN"));
        db.psql(&create_role(&viewer, ""));
        db.psql(&format!(
            "GRANT {viewer} TO {role};
             ALTER DATABASE \"{name}\" OWNER TO {role};
             CREATE SCHEMA auth;
             CREATE TABLE auth.users (id int PRIMARY KEY, email text);
             INSERT INTO auth.users SELECT g, 'u' || g FROM generate_series(1, 9) g;
             ALTER TABLE auth.users ENABLE ROW LEVEL SECURITY;
             CREATE POLICY few ON auth.users FOR SELECT TO PUBLIC USING (id <= 3);
             CREATE POLICY mover ON auth.users FOR SELECT TO {role} USING (true);
             GRANT USAGE ON SCHEMA auth TO {role}, {viewer};
             GRANT CREATE ON SCHEMA public TO {viewer};
             GRANT SELECT, REFERENCES ON auth.users TO {role}, {viewer};
             ALTER SCHEMA public OWNER TO {role};
             SET ROLE {role};
             CREATE TABLE profiles (id int PRIMARY KEY REFERENCES auth.users, name text);
             INSERT INTO profiles SELECT g, 'p' FROM unnest(ARRAY[{profiles}]) g;
             CREATE TABLE notes (id int); INSERT INTO notes VALUES (1), (2);
             GRANT SELECT ON notes TO {viewer};
             SET ROLE {viewer};
             CREATE MATERIALIZED VIEW emails AS SELECT id, email FROM auth.users;
             CREATE MATERIALIZED VIEW note_count AS SELECT count(*) AS n FROM notes;
             RESET ROLE;
             REVOKE SELECT ON notes FROM {viewer}; {grant}",
            name = db.name()
        ));
    }
    let dst = socket_url_as(&dbs.dst, &role);
    let wd = Workdir::new();
    let out = wd.run(&[
        "prepare",
        "--source",
        &dbs.src.url(),
        "--dest",
        &dst,
        "--preserved-tables",
        "profiles",
    ]);
    assert_success(&out);
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM shadow.emails"), "3");
    // A view its owner may not refresh on the destination is filled as
    // pgshift's role, with a warning, and keeps its owner.
    assert!(
        common::stderr_of(&out).contains(&format!(
            "materialized view note_count was filled as this role: its owner {viewer} may not read what it reads on the destination"
        )),
        "{out:?}"
    );
    assert_eq!(
        dbs.dst.psql("SELECT n || ' ' || pg_get_userbyid(c.relowner) FROM shadow.note_count, pg_class c WHERE c.oid = 'shadow.note_count'::regclass"),
        format!("2 {viewer}")
    );
    // The key cannot be checked: the swap refuses, changing nothing, unless
    // allowed; then PostgreSQL validates it right after.
    let unchecked = "foreign key profiles_id_fkey of profiles cannot be checked before the swap: row-level security on auth.users";
    let out = wd.run(&["swap", "--dest", &dst]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        common::stderr_of(&out).contains(unchecked)
            && common::stderr_of(&out).contains("--allow-fk-violations"),
        "{out:?}"
    );
    assert_eq!(backup_schemas(&dbs.dst), "0");
    let status = json_of(&wd, &["status", "--json", "--dest", &dst]);
    assert!(
        status["swap_blocked_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with(unchecked)),
        "{status}"
    );
    let dry = json_of(
        &wd,
        &[
            "swap",
            "--dest",
            &dst,
            "--dry-run",
            "--json",
            "--allow-fk-violations",
        ],
    );
    assert_eq!(dry["swap"]["refusal"], serde_json::Value::Null, "{dry}");
    assert!(
        dry["swap"]["fk_unchecked"][0]
            .as_str()
            .is_some_and(|u| u.starts_with(unchecked)),
        "{dry}"
    );
    let out = wd.run(&["swap", "--dest", &dst, "--json", "--allow-fk-violations"]);
    let report: serde_json::Value = serde_json::from_str(&assert_success(&out)).unwrap();
    assert!(common::stderr_of(&out).contains(unchecked), "{out:?}");
    assert!(
        report["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().starts_with(unchecked)),
        "{report}"
    );
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM profiles"), "5");
    assert_eq!(
        dbs.dst
            .psql("SELECT string_agg(email, ',' ORDER BY id) FROM emails"),
        dbs.src
            .psql("SELECT string_agg(email, ',' ORDER BY id) FROM emails")
    );
    assert_eq!(
        dbs.dst.psql(
            "SELECT convalidated FROM pg_constraint WHERE conrelid = 'public.profiles'::regclass AND contype = 'f'"
        ),
        "t"
    );
}

/// Run `hold` in a session of the destination and leave its transaction
/// open, then an abort that gives up after one retry of 100 ms (the
/// workdir's config says so from then on): the session,
/// its pid and the abort's stderr (the abort failed).
async fn abort_held_up(
    wd: &Workdir,
    dbs: &TestDbs,
    hold: &str,
) -> (tokio_postgres::Client, i32, String) {
    let (app, conn) = dbs
        .dst
        .pg_config()
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    app.batch_execute(hold).await.unwrap();
    std::fs::write(wd.join("pgshift.toml"), "swap_retries = 1\n").unwrap();
    let pid = common::backend_pid(&app).await;
    let out = wd.run(&["abort", "--dest", &dbs.dst.url(), "--lock-timeout", "100ms"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    (app, pid, err)
}

/// An abort that cannot take its locks (a session idle in transaction on a
/// preserved table) names the session that holds them, and changes
/// nothing; once it ends, the abort goes through.
#[tokio::test]
async fn an_abort_held_up_by_a_lock_names_the_holder() {
    let dbs = TestDbs::new("abort_holder");
    let schema = "CREATE TABLE users (id int PRIMARY KEY, name text);";
    dbs.src.psql(schema);
    dbs.dst.psql(schema);
    let wd = Workdir::new();
    with_users_preserved(&wd, &dbs, "prepare", &[]);
    let (app, pid, err) =
        abort_held_up(&wd, &dbs, "BEGIN; LOCK TABLE users IN ACCESS SHARE MODE;").await;
    assert!(
        err.contains(&format!(
            "sessions hold locks on what it removes: pid {pid} ("
        )),
        "{err}"
    );
    // Each retry names it too, not only the last error.
    assert!(
        err.contains(&format!(
            "removing the sync triggers: held up by pid {pid} ("
        )),
        "{err}"
    );
    assert_eq!(
        dbs.dst
            .psql("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.users'::regclass AND NOT tgisinternal"),
        "4"
    );
    app.batch_execute("COMMIT").await.unwrap();
    assert_success(&wd.run(&["abort", "--dest", &dbs.dst.url(), "--lock-timeout", "100ms"]));
}

/// The same when what is held is a table of the shadow (someone inspecting
/// it) in a migration big enough that the abort first empties the shadow in
/// lock-bounded transactions: that step gave up naming no one.
#[tokio::test]
async fn an_abort_held_up_emptying_a_big_shadow_names_the_holder() {
    let dbs = TestDbs::new("abort_holder_big");
    dbs.src.psql(
        "DO $$ BEGIN FOR i IN 1..200 LOOP
           EXECUTE format('CREATE TABLE t%s (id serial PRIMARY KEY, v text UNIQUE)', i);
         END LOOP; END $$;",
    );
    let wd = Workdir::new();
    assert_success(&wd.prepare(&dbs, &[]));
    let (app, pid, err) = abort_held_up(&wd, &dbs, "BEGIN; SELECT count(*) FROM shadow.t1;").await;
    assert!(err.contains("dropping the objects of shadow"), "{err}");
    assert!(
        err.contains(&format!(
            "sessions hold locks on what it removes: pid {pid} ("
        )),
        "{err}"
    );
    app.batch_execute("COMMIT").await.unwrap();
    assert_success(&wd.run(&["abort", "--dest", &dbs.dst.url(), "--lock-timeout", "100ms"]));
    assert_eq!(
        dbs.dst
            .psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'shadow'"),
        "0"
    );
}

/// A `nextval` that resolved a sequence the swap carries over before the
/// swap (it waits for the swap's lock) draws nothing from it after the
/// COMMIT, when it is in the backup: the swap fences the destination's
/// sequence at the value it carried, so the late call fails instead of
/// getting a value the new public hands out too. Both kinds: a sequence no
/// column uses, a preserved table's column sequence, and one never drawn
/// from. A rollback gives them their definitions and values back.
#[test]
fn a_nextval_waiting_for_the_swap_never_gets_a_value_twice() {
    nextval_waiting_for_the_swap("preserved_seq_fence", "rename");
}

/// The same, moving object by object.
#[test]
fn a_nextval_waiting_for_an_object_mode_swap_never_gets_a_value_twice() {
    nextval_waiting_for_the_swap("preserved_seq_fence_obj", "object");
}

fn nextval_waiting_for_the_swap(name: &str, mode: &str) {
    let dbs = TestDbs::new(name);
    let schema = "CREATE SEQUENCE ticket_seq; CREATE SEQUENCE fresh_seq START 7 MINVALUE 7 CYCLE;
                  CREATE TABLE users (id bigserial PRIMARY KEY, name text);";
    dbs.src.psql(schema);
    dbs.dst.psql(schema);
    dbs.src.psql(
        "INSERT INTO users (name) SELECT 's' FROM generate_series(1, 10); SELECT setval('ticket_seq', 5);",
    );
    dbs.dst.psql(
        "INSERT INTO users (name) SELECT 'd' FROM generate_series(1, 300); SELECT setval('ticket_seq', 500);",
    );
    let definitions = "SELECT string_agg(format('%s %s %s %s %s', seqrelid::regclass, seqmin, seqmax, seqstart, seqcycle), ', ' ORDER BY seqrelid::regclass::text)
                         FROM pg_sequence WHERE seqrelid::regclass::text IN ('ticket_seq', 'users_id_seq', 'fresh_seq')";
    let before = dbs.dst.psql(definitions);
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    with_users_preserved(&wd, &dbs, "prepare", &[]);
    let mut cmd = wd.cmd();
    cmd.args(["swap", "--dest", &dst, "--json", "--swap-mode", mode])
        .env("PGSHIFT_FAILPOINT", "swap-commit:sleep=3000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let swap = cmd.spawn().unwrap();
    let seqs = ["ticket_seq", "users_id_seq", "fresh_seq"];
    let locked = |mode: &str, granted: bool| {
        dbs.dst.psql(&format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
              WHERE c.relname IN ('ticket_seq', 'users_id_seq', 'fresh_seq') AND l.mode = '{mode}' AND l.granted = {granted}"
        ))
    };
    let until = |what: &str, cond: &dyn Fn() -> bool| {
        let start = std::time::Instant::now();
        while !cond() {
            assert!(start.elapsed().as_secs() < 30, "not within 30 s: {what}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    // ticket_seq is the last the swap locks before its COMMIT.
    until("the swap holds the sequences", &|| {
        dbs.dst.psql(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
              WHERE c.relname = 'ticket_seq' AND l.mode = 'ShareRowExclusiveLock' AND l.granted",
        ) == "1"
    });
    let done = std::sync::atomic::AtomicUsize::new(0);
    let late: Vec<Result<String, String>> = std::thread::scope(|s| {
        let calls: Vec<_> = seqs
            .iter()
            .map(|seq| {
                let (db, done) = (&dbs.dst, &done);
                s.spawn(move || {
                    let r = db.try_psql(&format!("SELECT nextval('{seq}')"));
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    r
                })
            })
            .collect();
        until("the nextval calls wait for the swap (or are done)", &|| {
            let waiting: usize = locked("RowExclusiveLock", false).parse().unwrap();
            waiting + done.load(std::sync::atomic::Ordering::SeqCst) == 3
        });
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let out = swap.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_str(&assert_success(&out)).unwrap();
    assert_eq!(report["swap_mode"], mode, "{report}");
    for (seq, r) in seqs.iter().zip(&late) {
        let err = r
            .as_ref()
            .expect_err(&format!("late nextval('{seq}') got a value"));
        assert!(err.contains("reached maximum value"), "{seq}: {err}");
    }
    // The new public's sequences continue after the destination's.
    assert_eq!(dbs.dst.psql("SELECT nextval('ticket_seq')"), "501");
    assert_eq!(dbs.dst.psql("SELECT nextval('users_id_seq')"), "301");
    assert_eq!(dbs.dst.psql("SELECT nextval('fresh_seq')"), "7");
    // The manifest records the three as they were.
    assert_eq!(
        fenced_in(&dbs.dst, &report),
        [
            "fresh_seq 7 false",
            "ticket_seq 500 true",
            "users_id_seq 300 true"
        ]
    );
    // A rollback gives them back: definitions, and values where they stopped.
    assert_success(&wd.run(&["rollback", "--dest", &dst, "--latest"]));
    assert_eq!(dbs.dst.psql(definitions), before);
    assert_eq!(dbs.dst.psql("SELECT nextval('ticket_seq')"), "501");
    assert_eq!(dbs.dst.psql("SELECT nextval('users_id_seq')"), "301");
    assert_eq!(dbs.dst.psql("SELECT nextval('fresh_seq')"), "7");
}

/// A carried sequence that something staying live also draws from (a table
/// of a schema the swap leaves alone) is not fenced: it goes on serving that
/// table from the backup.
#[test]
fn a_carried_sequence_a_live_table_still_uses_is_not_fenced() {
    let dbs = TestDbs::new("preserved_seq_shared");
    let schema = "CREATE SEQUENCE shared_seq;
                  CREATE TABLE users (id bigint PRIMARY KEY DEFAULT nextval('shared_seq'), name text);";
    dbs.src.psql(schema);
    dbs.dst.psql(schema);
    dbs.dst.psql(
        "CREATE SCHEMA audit;
         CREATE TABLE audit.log (id bigint PRIMARY KEY DEFAULT nextval('public.shared_seq'), what text);
         INSERT INTO users (name) SELECT 'd' FROM generate_series(1, 50);",
    );
    let wd = Workdir::new();
    with_users_preserved(&wd, &dbs, "prepare", &[]);
    let report = json_of(&wd, &["swap", "--dest", &dbs.dst.url(), "--json"]);
    assert_eq!(fenced_in(&dbs.dst, &report), Vec::<String>::new());
    // audit.log draws on from the backup's sequence.
    assert_eq!(
        dbs.dst
            .psql("INSERT INTO audit.log (what) VALUES ('x') RETURNING id"),
        "51"
    );
}

/// A destination sequence a preserved table's column draws from, that this
/// role does not own (nor is a member of its owner) and the source does not
/// have (prepare refuses a namesake it cannot give its owner), cannot be
/// fenced: the swap carries on after it and says, once, that a `nextval`
/// that resolved it before the swap may get a value twice.
#[test]
fn a_carried_sequence_of_another_role_is_said_to_be_unfenced() {
    let dbs = TestDbs::new("preserved_seq_notmine");
    if dbs.dst.socket_dir().is_none() {
        println!("skipped: needs the harness's own clusters");
        return;
    }
    let role = format!("seq_mover_{}", std::process::id());
    let owner = format!("seq_owner_{}", std::process::id());
    for db in [&dbs.src, &dbs.dst] {
        db.psql(&create_role(&role, "LOGIN"));
        db.psql(&create_role(&owner, ""));
        db.psql(&format!(
            "ALTER DATABASE \"{name}\" OWNER TO {role};
             ALTER SCHEMA public OWNER TO {role};
             SET ROLE {role};
             CREATE TABLE users (id bigserial PRIMARY KEY, name text);",
            name = db.name()
        ));
    }
    dbs.dst.psql(&format!(
        "CREATE SEQUENCE legacy_ids START 900; ALTER SEQUENCE legacy_ids OWNER TO {owner};
         GRANT USAGE, SELECT ON legacy_ids TO {role};
         ALTER TABLE users ALTER id SET DEFAULT nextval('legacy_ids');
         INSERT INTO users (name) SELECT 'd' FROM generate_series(1, 20);"
    ));
    let dst = socket_url_as(&dbs.dst, &role);
    let wd = Workdir::new();
    assert_success(&wd.prepare_to(&dbs, &dst, &["--preserved-tables", "users"]));
    let out = wd.run(&["swap", "--dest", &dst, "--json"]);
    let report: serde_json::Value = serde_json::from_str(&assert_success(&out)).unwrap();
    let unfenced =
        "sequence public.legacy_ids is not this role's to alter, so the swap does not fence it";
    assert_eq!(
        common::stderr_of(&out).matches(unfenced).count(),
        1,
        "{out:?}"
    );
    assert!(
        report["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().starts_with(unfenced)),
        "{report}"
    );
    // Carried on after it all the same; the users' own sequence, this
    // role's, fenced.
    assert_eq!(dbs.dst.psql("SELECT nextval('users_id_seq')"), "920");
    let names: Vec<String> = fenced_in(&dbs.dst, &report)
        .iter()
        .map(|f| f.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(names, ["users_id_seq"]);
}

/// A destination column whose default draws from another sequence than the
/// one it owns (a default changed after the serial column was created):
/// the shadow's sequence continues after the one the rows came from, not
/// after the owned one that stood still.
#[test]
fn a_column_drawing_from_another_sequence_than_its_own_continues_after_it() {
    let dbs = TestDbs::new("preserved_seq_redrawn");
    let schema = "CREATE TABLE users (id bigserial PRIMARY KEY, name text);";
    dbs.src.psql(schema);
    dbs.dst.psql(schema);
    dbs.dst.psql(
        "CREATE SEQUENCE legacy_ids START 900;
         ALTER TABLE users ALTER id SET DEFAULT nextval('legacy_ids');
         INSERT INTO users (name) SELECT 'd' FROM generate_series(1, 20);",
    );
    let wd = Workdir::new();
    with_users_preserved(&wd, &dbs, "prepare", &[]);
    assert_success(&wd.run(&["swap", "--dest", &dbs.dst.url()]));
    assert_eq!(
        dbs.dst
            .psql("INSERT INTO users (name) VALUES ('new') RETURNING id"),
        "920"
    );
}

/// A unique value that moves from one row to another (row 20010 gives up
/// `e20010` in a key shift whose apply to the shadow fails on the email key,
/// row 1 takes it), with the two rows' changelog entries in different replay
/// batches of 10,000: replaying the first batch re-inserted row 1 beside the
/// shadow's stale row 20010, and prepare, status, the dry run and every swap
/// refused a row that is valid ("fix that row"). A batch that meets a unique
/// violation is now replayed with the whole changelog, which is consistent.
#[test]
fn a_unique_value_moved_between_rows_of_different_replay_batches_is_no_rejection() {
    let dbs = TestDbs::new("uniq_moved");
    dbs.src
        .psql("CREATE TABLE u (id int PRIMARY KEY, email text UNIQUE, n int)");
    dbs.dst.psql(
        "CREATE TABLE u (id int PRIMARY KEY, email text UNIQUE, n int);
         INSERT INTO u SELECT g, 'e' || g, 0 FROM generate_series(1, 15000) g;
         INSERT INTO u SELECT g, 'e' || g, 0 FROM generate_series(20000, 20010) g ORDER BY g DESC;",
    );
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    assert_success(&wd.prepare(&dbs, &["--preserved-tables", "u"]));
    dbs.dst.psql("UPDATE u SET n = n + 1 WHERE id = 1");
    dbs.dst
        .psql("UPDATE u SET n = n + 1 WHERE id BETWEEN 1000 AND 11100");
    // In the rows' physical order (20010 first), whatever the statistics
    // say: an index scan would shift 20000 onto 20001 first.
    dbs.dst.psql(
        "SET enable_indexscan = off; SET enable_bitmapscan = off;
         UPDATE u SET id = id + 1, email = CASE WHEN id = 20010 THEN NULL ELSE email END
          WHERE id BETWEEN 20000 AND 20010",
    );
    dbs.dst.psql("UPDATE u SET email = 'e20010' WHERE id = 1");
    assert_eq!(
        dbs.dst
            .psql("SELECT id FROM shadow.u WHERE email = 'e20010'"),
        "20010",
        "the key shift was applied to the shadow: the case is not set up"
    );
    let st = json_of(&wd, &["status", "--dest", &dst, "--json"]);
    assert_eq!(st["swap_allowed"], true, "{st}");
    let dry = json_of(&wd, &["swap", "--dest", &dst, "--dry-run", "--json"]);
    assert!(dry["swap"]["refusal"].is_null(), "{dry}");
    let before = dbs
        .dst
        .psql("SELECT md5(string_agg(u::text, ',' ORDER BY id)) FROM u");
    assert_success(&wd.run(&["swap", "--dest", &dst]));
    assert_eq!(
        dbs.dst
            .psql("SELECT md5(string_agg(u::text, ',' ORDER BY id)) FROM u"),
        before
    );
}

/// A transaction that holds a preserved table past every retry of the sync
/// triggers' creation fails prepare; the error now names it, as the swap
/// names what it waited for (it said only "canceling statement due to lock
/// timeout").
#[test]
fn a_transaction_holding_a_preserved_table_is_named_when_prepare_gives_up() {
    let dbs = TestDbs::new("sync_held");
    dbs.src
        .psql("CREATE TABLE acct (id int PRIMARY KEY, n int)");
    dbs.dst
        .psql("CREATE TABLE acct (id int PRIMARY KEY, n int); INSERT INTO acct VALUES (1, 0)");
    let holder = in_background(
        &dbs.dst,
        "BEGIN; UPDATE acct SET n = 1; SELECT pg_sleep(6); COMMIT;",
        "SELECT count(*) FROM pg_locks WHERE relation = 'acct'::regclass AND mode = 'RowExclusiveLock' AND granted",
    );
    let wd = Workdir::new();
    std::fs::write(wd.join("pgshift.toml"), "swap_retries = 1\n").unwrap();
    let out = wd.prepare(
        &dbs,
        &["--preserved-tables", "acct", "--lock-timeout", "100ms"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.trim_end().lines().last().unwrap();
    assert!(
        last.contains("creating the sync triggers on acct")
            && last.contains("creating the sync triggers on acct was held up by pid ")
            && last.contains("pgshift-test-harness, active)")
            && last.contains("end that transaction (or wait for it), then prepare again")
            && last.matches("creating the sync triggers on acct").count() == 1,
        "{err}"
    );
    // So does the warning before each retry.
    assert!(
        err.lines().any(|l| l.contains("WARN")
            && l.contains("creating the sync triggers on acct: held up by pid ")
            && l.contains("rolled back, retrying")),
        "{err}"
    );
    holder.join().unwrap();
}

/// A unique value that moves while a replay runs: the replay picked row 1's
/// entry, then row 2 gave up `e2` and row 1 took it, and the sync triggers'
/// applies of both gave up (a session held row 2's shadow copy, as the
/// replay's own row locks do). Re-inserting row 1 met the shadow's stale row
/// 2, and the swap failed, calling a valid row one the source rejects. A
/// collision with entries written since the pick is now a moment's, retried;
/// the next replay picks row 2's entry too.
#[test]
fn a_unique_value_moved_during_a_replay_is_retried() {
    let dbs = TestDbs::new("uniq_during");
    dbs.src
        .psql("CREATE TABLE u (id int PRIMARY KEY, email text UNIQUE, n int)");
    dbs.dst.psql(
        "CREATE TABLE u (id int PRIMARY KEY, email text UNIQUE, n int);
         INSERT INTO u SELECT g, 'e' || g, 0 FROM generate_series(1, 100) g;",
    );
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    assert_success(&wd.prepare(&dbs, &["--preserved-tables", "u"]));
    // Row 1's entry, which the swap's catch-up picks and then pauses on.
    dbs.dst.psql("UPDATE u SET n = n + 1 WHERE id = 1");
    let mut cmd = wd.cmd();
    cmd.args(["swap", "--dest", &dst])
        .env("PGSHIFT_FAILPOINT", "replay-picked:sleep=2000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let out = common::with_child_paused(child, "pausing 2000 ms at replay-picked", || {
        let holder = in_background(
            &dbs.dst,
            "BEGIN; SELECT 1 FROM shadow.u WHERE id = 2 FOR UPDATE; SELECT pg_sleep(0.8); COMMIT;",
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(0.8)%' AND state = 'active'",
        );
        dbs.dst.psql(
            "UPDATE u SET email = NULL WHERE id = 2;
             UPDATE u SET email = 'e2' WHERE id = 1;",
        );
        assert_eq!(
            dbs.dst.psql("SELECT email FROM shadow.u WHERE id = 2"),
            "e2",
            "the applies went through: the case is not set up"
        );
        holder.join().unwrap();
    });
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("moved while the replay ran"), "{err}");
    assert_eq!(
        dbs.dst
            .psql("SELECT string_agg(id || ':' || coalesce(email, '-'), ',' ORDER BY id) FROM u WHERE id <= 2"),
        "1:e2,2:-"
    );
}

/// Writes the sync trigger could not apply (the shadow tables locked), made
/// after the swap's catch-up while it lists what to move, wait in the
/// changelogs for the final replay under the swap's locks. That replay
/// describes the written tables together: each of them, whatever its shape (an
/// enum column, a composite text key, a deferrable unique key whose value moves
/// between rows), ends with the destination's rows, and the table not written
/// is not replayed at all.
#[tokio::test]
async fn writes_waiting_at_the_locks_reach_every_preserved_table() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dbs = TestDbs::new("final_many");
    let ddl = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, feeling mood);
         CREATE TABLE events (tenant text, seq bigint, payload jsonb, PRIMARY KEY (tenant, seq));
         CREATE TABLE codes (id bigserial PRIMARY KEY, code text UNIQUE DEFERRABLE INITIALLY DEFERRED, n numeric);
         CREATE TABLE quiet (id int PRIMARY KEY, note text);
         CREATE TABLE wiped (id int PRIMARY KEY, note text);";
    dbs.src.psql(ddl);
    dbs.dst.psql(&format!(
        "{ddl}
         INSERT INTO users SELECT g, 'u' || g, 'ok' FROM generate_series(1, 20) g;
         INSERT INTO events SELECT 't' || (g % 3), g, jsonb_build_object('g', g) FROM generate_series(1, 30) g;
         INSERT INTO codes (code, n) SELECT 'c' || g, g / 7.0 FROM generate_series(1, 10) g;
         INSERT INTO quiet SELECT g, 'q' FROM generate_series(1, 5) g;
         INSERT INTO wiped SELECT g, 'w' FROM generate_series(1, 5) g;"
    ));
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    wd.run_ok(&[
        "prepare",
        "--source",
        &dbs.src.url(),
        "--dest",
        &dst,
        "--preserved-tables",
        "users,events,codes,quiet,wiped",
    ]);
    let mut child = wd
        .cmd()
        .args(["swap", "--json", "--swap-mode", "rename", "--dest", &dst])
        .env("PGSHIFT_FAILPOINT", "swap-listed:sleep=3000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pgshift");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = common::lines_until(&mut lines, "pausing 3000 ms at swap-listed");
    let locker = dbs.dst.client().await;
    locker
        .batch_execute(
            "BEGIN; LOCK TABLE shadow.users, shadow.events, shadow.codes, shadow.wiped IN ACCESS EXCLUSIVE MODE",
        )
        .await
        .unwrap();
    dbs.dst.psql(
        "INSERT INTO users VALUES (100, 'new', 'happy');
         UPDATE users SET feeling = 'sad', name = 'changed' WHERE id = 3;
         DELETE FROM users WHERE id = 4;
         INSERT INTO events VALUES ('t9', 1, '{\"x\": 1}');
         UPDATE events SET payload = '{}' WHERE tenant = 't1' AND seq = 1;
         DELETE FROM events WHERE tenant = 't2' AND seq = 2;
         BEGIN;
         UPDATE codes SET code = 'gone' WHERE id = 1;
         UPDATE codes SET code = 'c1' WHERE id = 2;
         COMMIT;
         INSERT INTO codes (code, n) VALUES ('new', 1.5);
         TRUNCATE wiped; INSERT INTO wiped VALUES (9, 'after the truncate');",
    );
    let contents = |db: &TestDb, schema: &str| {
        db.psql(&format!(
            "SELECT string_agg(r, ' | ' ORDER BY r) FROM (
               SELECT 'users ' || t::text AS r FROM {schema}.users t
               UNION ALL SELECT 'events ' || t::text FROM {schema}.events t
               UNION ALL SELECT 'codes ' || t::text FROM {schema}.codes t
               UNION ALL SELECT 'quiet ' || t::text FROM {schema}.quiet t
               UNION ALL SELECT 'wiped ' || t::text FROM {schema}.wiped t) x"
        ))
    };
    let written = contents(&dbs.dst, "public");
    locker.batch_execute("COMMIT").await.unwrap();
    // The trigger gave up on the locked shadow: only the final replay applies these.
    assert_ne!(contents(&dbs.dst, "shadow"), written);
    log.extend(lines.map(Result::unwrap));
    let out = child.wait_with_output().unwrap();
    let log = log.join("\n");
    assert!(out.status.success(), "{log}");
    assert_eq!(contents(&dbs.dst, "public"), written, "{log}");
    // (A TRUNCATE in a changelog is a resync of the whole table, batch by
    // batch; the others' few entries are replayed in one round trip each.)
    for table in ["users", "events", "codes", "wiped"] {
        assert!(
            log.lines().any(|l| l.contains("final replay done")
                && l.contains(&format!("table={table} "))
                && !l.contains("replayed=0")),
            "{table}: {log}"
        );
    }
    assert!(!log.contains("table=quiet"), "{log}");
}

/// A preserved table's changelog and trigger functions are dropped after
/// the swap's COMMIT, outside its locks (under them it loses only its
/// triggers). One a session still holds is left, and the swap says so
/// (exit 0: it committed); `status` lists it, `abort` removes it, and the
/// migration stays swapped.
#[test]
fn a_changelog_still_held_after_the_commit_is_left_to_abort() {
    let (dbs, wd) = users_prepared("preserved_changelog_held");
    let dst = dbs.dst.url();
    assert_eq!(dbs.dst.psql(common::SYNC_HELPERS), "1/4");
    let log = dbs.dst.psql(
        "SELECT relname FROM pg_class WHERE relnamespace = 'pgshift'::regnamespace AND relname LIKE 'log\\_%' AND relkind = 'r'",
    );
    // A reader of the changelog: it holds up no step of the swap, only the
    // drop after it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let holder = rt.block_on(dbs.dst.client());
    rt.block_on(holder.batch_execute(&format!(
        "BEGIN; LOCK TABLE pgshift.{log} IN ACCESS SHARE MODE"
    )))
    .unwrap();
    dbs.dst.psql("INSERT INTO users VALUES (2, 'b')");
    let out = json_of(&wd, &["swap", "--dest", &dst, "--json"]);
    rt.block_on(holder.batch_execute("ROLLBACK")).unwrap();
    let said = warning_starting(
        &out["warnings"],
        "dropping the changelogs and sync functions of the preserved tables",
    );
    assert!(
        said.contains("nothing uses them any more")
            && said.contains("pgshift abort")
            && said.contains("sessions holding locks on them: pid "),
        "{said}"
    );
    // The swap itself is whole: the write replayed, no trigger left.
    assert_eq!(
        dbs.dst
            .psql("SELECT string_agg(name, ',' ORDER BY id) FROM users"),
        "a,b"
    );
    assert_eq!(
        dbs.dst
            .psql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgshift\\_%'"),
        "0"
    );
    assert_eq!(dbs.dst.psql(common::SYNC_HELPERS), "1/4");
    let st = json_of(&wd, &["status", "--dest", &dst, "--json"]);
    assert_eq!(st["state"], "idle", "{st}");
    assert_eq!(
        st["leftovers"]["helper_tables"],
        serde_json::json!([log]),
        "{st}"
    );
    assert!(
        st["leftovers"]["hint"]
            .as_str()
            .unwrap()
            .contains("pgshift abort"),
        "{st}"
    );
    let ab = json_of(&wd, &["abort", "--dest", &dst, "--json"]);
    assert_eq!(
        ab["removed"]["helper_tables"],
        serde_json::json!([log]),
        "{ab}"
    );
    assert_eq!(ab["removed"]["helper_functions"], 4, "{ab}");
    assert_eq!(dbs.dst.psql(common::SYNC_HELPERS), "0/0");
    let st = json_of(&wd, &["status", "--dest", &dst, "--json"]);
    assert_eq!(st["leftovers"]["found"], false, "{st}");
    assert_eq!(st["migration"]["status"], "swapped", "{st}");
}

/// The changelogs and functions of many preserved tables are dropped after
/// the COMMIT in transactions that stay within the lock-table slots
/// estimated for them: with `PGSHIFT_CHECK_LOCKS` a transaction holding more
/// fails, and the swap would leave them with a warning.
#[test]
fn many_changelogs_are_dropped_within_their_lock_estimate() {
    let dbs = TestDbs::new("preserved_many_drops");
    let ddl = "DO $$ BEGIN FOR i IN 1..30 LOOP
                 EXECUTE format('CREATE TABLE %I (k text, n int, v text, PRIMARY KEY (k, n))', 't' || i);
               END LOOP; END $$;";
    dbs.src.psql(ddl);
    dbs.dst.psql(ddl);
    let tables = (1..=30)
        .map(|i| format!("t{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    let prepared = json_of(
        &wd,
        &[
            "prepare",
            "--source",
            &dbs.src.url(),
            "--dest",
            &dst,
            "--preserved-tables",
            &tables,
            "--json",
        ],
    );
    assert_eq!(dbs.dst.psql(common::SYNC_HELPERS), "30/120");
    // Prepare, status and the dry run give the swap the same budget (the
    // preserved tables' shadow copies it locks counted by each).
    let st = json_of(&wd, &["status", "--dest", &dst, "--json"]);
    let dry = json_of(&wd, &["swap", "--dest", &dst, "--dry-run", "--json"]);
    let needed = &dry["swap"]["swap_lock_budget"]["needed"];
    assert!(needed.as_i64().unwrap() > 30, "{dry}");
    assert_eq!(
        &prepared["swap_lock_budget"]["needed"], needed,
        "{prepared}"
    );
    assert_eq!(&st["swap_lock_budget"]["needed"], needed, "{st}");
    let out = wd.run_env(
        &["swap", "--dest", &dst, "--json"],
        &[("PGSHIFT_CHECK_LOCKS", "1")],
    );
    let report: serde_json::Value = serde_json::from_str(&assert_success(&out)).unwrap();
    assert_eq!(report["warnings"], serde_json::json!([]), "{report}");
    assert_eq!(dbs.dst.psql(common::SYNC_HELPERS), "0/0");
}

/// `abort` drops the shadow and the changelogs with CASCADE (their own
/// objects depend on one another). An object of the application's that
/// depends on them (a view over a shadow table or a changelog, a foreign key
/// to a shadow table, a default drawing from a shadow sequence) would go
/// along without a word: abort refuses, names each, and changes nothing.
/// A view over pgshift's records is not one (they stay).
#[test]
fn abort_refuses_to_drop_the_applications_objects_built_on_the_migration() {
    let (dbs, wd) = users_prepared("preserved_abort_dependents");
    let dst = dbs.dst.url();
    let log = dbs.dst.psql(
        "SELECT relname FROM pg_class WHERE relnamespace = 'pgshift'::regnamespace AND relname LIKE 'log\\_%' AND relkind = 'r'",
    );
    let users_oid = log.trim_start_matches("log_");
    dbs.dst.psql(&format!(
        "CREATE SEQUENCE shadow.tickets;
         CREATE VIEW peek AS SELECT * FROM shadow.users;
         CREATE VIEW peek_log AS SELECT * FROM pgshift.{log};
         CREATE VIEW runs AS SELECT id FROM pgshift.migration;
         CREATE TABLE notes (user_id int REFERENCES shadow.users (id),
                             ticket bigint DEFAULT nextval('shadow.tickets'));
         INSERT INTO notes VALUES (NULL, DEFAULT);
         -- An operator's own view and table in schema pgshift are not
         -- pgshift's objects: the view blocks like any, the table stays.
         CREATE VIEW pgshift.shadow_users AS SELECT * FROM shadow.users;
         CREATE TABLE pgshift.operator_notes (t text);
         CREATE TABLE pgshift.log_2024 (id int); INSERT INTO pgshift.log_2024 VALUES (1);
         -- An operator's own trigger calling a sync function.
         CREATE TRIGGER mine AFTER TRUNCATE ON notes
           FOR EACH STATEMENT EXECUTE FUNCTION pgshift.sync_{users_oid}_trunc();
         -- A column collated by a collation of the shadow.
         CREATE COLLATION shadow.c2 FROM \"C\";
         CREATE TABLE names (n text COLLATE shadow.c2);
         INSERT INTO names VALUES ('kept');"
    ));
    let out = wd.run(&["abort", "--dest", &dst]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for named in [
        "view peek,",
        "view peek_log",
        "constraint notes_user_id_fkey on table notes",
        "default value for column ticket of table notes",
        "view pgshift.shadow_users",
        "column n of table names",
        "trigger mine on table notes",
        "nothing was changed",
    ] {
        assert!(err.contains(named), "{named}: {err}");
    }
    assert!(!err.contains("runs"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // Nothing was dropped: the migration is still prepared and syncing.
    assert_eq!(dbs.dst.psql(common::SYNC_HELPERS), "1/4");
    dbs.dst.psql("INSERT INTO users VALUES (2, 'b')");
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM peek"), "2");
    let st = json_of(&wd, &["status", "--dest", &dst, "--json"]);
    assert_eq!(st["state"], "prepared", "{st}");
    // Nothing was dropped, so no abort "stopped before it finished".
    assert_eq!(st["migration"]["error"], serde_json::Value::Null, "{st}");
    // Once they point elsewhere, abort goes through and leaves them be.
    dbs.dst.psql(
        "DROP VIEW peek, peek_log, pgshift.shadow_users; DROP TRIGGER mine ON notes;
         ALTER TABLE notes DROP CONSTRAINT notes_user_id_fkey, ALTER ticket DROP DEFAULT;
         ALTER TABLE names ALTER n TYPE text COLLATE \"C\"",
    );
    let ab = json_of(&wd, &["abort", "--dest", &dst, "--json"]);
    assert_eq!(
        ab["removed"]["helper_tables"],
        serde_json::json!([log]),
        "{ab}"
    );
    assert_eq!(dbs.dst.psql(common::SYNC_HELPERS), "0/0");
    assert_eq!(
        dbs.dst.psql(
            "SELECT (SELECT count(*) FROM runs) > 0, (SELECT count(*) FROM notes),
                    to_regclass('pgshift.operator_notes') IS NOT NULL, (SELECT n FROM names),
                    (SELECT count(*) FROM pgshift.log_2024)"
        ),
        "t|1|t|kept|1"
    );
}

/// A destination whose database defaults to `repeatable read` (or
/// `serializable`): pgshift's sessions run at read committed whatever the
/// default. Under the default, the swap's transaction took its snapshot
/// before it waited for the preserved table's lock, and an application
/// transaction that committed a write meanwhile was not there for the
/// replay: the swap failed under load (could not serialize access), or went
/// on without the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeatable_read_default_keeps_a_write_committed_while_the_swap_waits() {
    let dbs = TestDbs::new("preserved_rr_default");
    dbs.dst.psql(
        "DO $$ BEGIN
           EXECUTE format('ALTER DATABASE %I SET default_transaction_isolation = %L', current_database(), 'repeatable read');
           EXECUTE format('ALTER DATABASE %I SET deadlock_timeout = %L', current_database(), '5s');
         END $$;",
    );
    let ddl = "CREATE TABLE users (id int PRIMARY KEY, name text);";
    dbs.src.psql(ddl);
    dbs.dst.psql(ddl);
    dbs.dst.psql("INSERT INTO users VALUES (1, 'a')");
    let wd = Workdir::new();
    with_users_preserved(&wd, &dbs, "prepare", &[]);
    dbs.dst
        .psql("INSERT INTO users SELECT g, 'w' FROM generate_series(100, 150) g");
    // Writers at the database's default, on the rows the swap replays.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2u64 {
        let (c, stop) = (dbs.dst.client().await, stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let id = 100 + ((n * 7 + w) % 50) as i32;
                let name = format!("w{n}");
                let _ = c
                    .execute("UPDATE users SET name = $2 WHERE id = $1", &[&id, &name])
                    .await;
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let app = dbs.dst.client().await;
    app.batch_execute(
        "BEGIN; INSERT INTO users VALUES (2, 'late'); UPDATE users SET name = 'b' WHERE id = 1",
    )
    .await
    .unwrap();
    let mut cmd = wd.cmd();
    cmd.args(["swap", "--dest", &dbs.dst.url()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let swap = cmd.spawn().unwrap();
    let started = std::time::Instant::now();
    while dbs.dst.psql(
        "SELECT count(*) FROM pg_locks WHERE relation = 'public.users'::regclass AND NOT granted",
    ) == "0"
    {
        assert!(
            started.elapsed().as_secs() < 30,
            "the swap never waited for users"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    app.batch_execute("COMMIT").await.unwrap();
    let out = swap.wait_with_output().unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    assert_success(&out);
    assert_eq!(
        dbs.dst
            .psql("SELECT string_agg(id || name, ',' ORDER BY id) FROM users WHERE id < 100"),
        "1b,2late"
    );
}

/// The source gives a preserved table a unique key the destination's rows
/// break: a new `UNIQUE`, and a unique index under a case-insensitive
/// collation of its own. The sync's copy failed on the duplicate after the
/// whole copy; the dry run (and prepare, before anything) now refuses,
/// naming the index and the key. A partial unique index counts only the
/// rows it covers, and a key the destination already enforces is not tried.
#[test]
fn a_unique_key_the_destinations_rows_break_is_foreseen() {
    let dbs = TestDbs::new("preserved_unique");
    dbs.src.psql(
        "CREATE COLLATION nocase (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
         CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE, login text, active bool);
         CREATE UNIQUE INDEX users_login_nocase ON users (login COLLATE nocase) WHERE active;
         CREATE UNIQUE INDEX users_login_lower ON users (lower(login)) WHERE active;",
    );
    dbs.dst.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text, login text, active bool);
         INSERT INTO users VALUES (1, 'a@x.org', 'Ann', true), (2, 'a@x.org', 'ann', true),
                                  (3, NULL, 'Bob', false), (4, NULL, 'bob', true), (5, 'c@x.org', 'cy', true);",
    );
    let wd = Workdir::new();
    let refused = |needle: &str| {
        let out = run_users_preserved(&wd, &dbs, "prepare", &["--dry-run"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "{needle}: {err}");
    };
    refused(
        "users: the destination's rows do not hold under the source's unique index users_email_key (email): Key (email)=(a@x.org) is held by more than one row",
    );
    refused("unique index users_login_nocase (login): Key (login)=(");
    // An index on an expression of built-in functions is tried over it.
    refused("unique index users_login_lower (lower(login)): Key (lower(login))=(ann)");
    // prepare itself refuses before it creates anything.
    let out = run_users_preserved(&wd, &dbs, "prepare", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("users_email_key"), "{err}");
    assert_eq!(
        dbs.dst
            .psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'shadow'"),
        "0"
    );
    dbs.dst
        .psql("UPDATE users SET email = 'b@x.org' WHERE id = 2");
    let out = run_users_preserved(&wd, &dbs, "prepare", &["--dry-run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("users_email_key"), "{err}");
    assert!(err.contains("users_login_nocase"), "{err}");
    // 'Bob' is not active: only 'Ann' and 'ann' collide.
    dbs.dst.psql("UPDATE users SET login = 'anne' WHERE id = 2");
    with_users_preserved(&wd, &dbs, "prepare", &[]);
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM shadow.users"), "5");
}

/// The unique-key trial reads each key as the source means it: a
/// destination column that is itself case-insensitive does not make the
/// source's (byte-wise) unique key refuse 'A@x' beside 'a@x'; a partial
/// index's date under the source's `SQL, DMY` DateStyle is the source's date,
/// not the destination's reading of '01/02/2024'; and a WHERE the
/// destination cannot run (a column only the source has) is a warning, not
/// a silent pass.
#[test]
fn unique_key_trials_read_the_key_as_the_source_means_it() {
    let dbs = TestDbs::new("preserved_unique_meaning");
    dbs.src.psql(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET datestyle = %L', current_database(), 'SQL, DMY'); END $$;
         CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE, code text, created date, deleted_at timestamptz);
         CREATE UNIQUE INDEX users_code_since ON users (code) WHERE created >= '2024-02-01';
         CREATE UNIQUE INDEX users_code_live ON users (code, created) WHERE deleted_at IS NULL;",
    );
    dbs.dst.psql(
        "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
         CREATE TABLE users (id int PRIMARY KEY, email text COLLATE ci, code text, created date);
         INSERT INTO users VALUES (1, 'A@x', 'c1', '2024-01-15'), (2, 'a@x', 'c1', '2024-01-20'),
                                  (3, 'b@x', 'c3', '2024-03-01');",
    );
    let wd = Workdir::new();
    let out = run_users_preserved(&wd, &dbs, "prepare", &["--dry-run"]);
    let err = common::said_by(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(
            "unique index users_code_live was not tried (column deleted_at is only in the source)"
        ),
        "{err}"
    );
    with_users_preserved(&wd, &dbs, "prepare", &[]);
    assert_eq!(
        dbs.dst
            .psql("SELECT string_agg(email, ',' ORDER BY id) FROM shadow.users"),
        "A@x,a@x,b@x"
    );
}

/// A CHECK the source's table has and the destination's lacks (new in this
/// version of the application): the destination's rows that fail it are
/// refused by the dry run and prepare, naming the constraint and one row's
/// key, where the sync's copy failed after the whole copy ("violates check
/// constraint"). A NULL passes a CHECK, here as in PostgreSQL.
#[test]
fn a_check_the_destinations_rows_fail_is_foreseen() {
    let dbs = TestDbs::new("preserved_check");
    // A CHECK compares under its column's collation and its enum's order:
    // where those differ between the sides, it is not tried here (the
    // destination's would answer), it is said.
    // A CHECK is tried as the copy writes the rows: a date as ISO text
    // whatever the destination database's DateStyle.
    dbs.src.psql(
        "CREATE TYPE mood AS ENUM ('ok', 'sad');
         CREATE TABLE users (id int PRIMARY KEY, price numeric CHECK (price > 0), email text,
                             code text COLLATE \"C\" CHECK (code < 'a'), m mood CHECK (m >= 'ok'),
                             created date CHECK (created::text LIKE '2024-%'),
                             CONSTRAINT email_at CHECK (email LIKE '%@%'));",
    );
    dbs.dst.psql(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET datestyle = %L', current_database(), 'SQL, DMY'); END $$;
         CREATE TYPE mood AS ENUM ('sad', 'ok');
         CREATE TABLE users (id int PRIMARY KEY, price numeric, email text,
                             code text COLLATE \"und-x-icu\", m mood, created date);
         INSERT INTO users VALUES (1, 5, 'a@x', 'B', 'sad', '2024-01-15'), (2, 0, 'b@x', NULL, NULL, NULL),
                                  (3, NULL, NULL, NULL, NULL, NULL);",
    );
    let wd = Workdir::new();
    for extra in [&["--dry-run"][..], &[][..]] {
        let out = run_users_preserved(&wd, &dbs, "prepare", extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("users: the destination's rows do not all pass the source's check constraint users_price_check ((price > (0)::numeric)) (Key (id)=(2), for one)"),
            "{err}"
        );
    }
    assert_eq!(
        dbs.dst
            .psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'shadow'"),
        "0"
    );
    dbs.dst.psql("UPDATE users SET price = 1 WHERE id = 2");
    let out = run_users_preserved(&wd, &dbs, "prepare", &["--dry-run"]);
    let all = common::said_by(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    for needle in [
        "check constraint users_code_check was not tried (column code's collation changes)",
        "check constraint users_m_check was not tried (column m's enum mood has other labels, or in another order, in the source)",
    ] {
        assert!(all.contains(needle), "{needle}: {all}");
    }
    with_users_preserved(&wd, &dbs, "prepare", &[]);
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM shadow.users"), "3");
}

/// What the unique-key trial cannot try as the copy will write it is said,
/// not passed in silence (prepare failed after the whole copy) nor refused
/// on values the copy replaces: a unique column the source generates (the
/// destination's own values, '' twice, are replaced by the computed ones),
/// one only the source has, and a partial index whose WHERE uses an
/// operator of the application's, which the destination may define
/// otherwise.
#[test]
fn unique_keys_the_trial_cannot_try_are_warnings() {
    let dbs = TestDbs::new("preserved_unique_untried");
    // Functions of the application: norm differs between the sides (so
    // even the destination's index of the same text holds nothing of the
    // source's), same_fn does not (tried as a built-in is).
    let same_fn = "CREATE FUNCTION same_fn(text) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT $1 IS NOT NULL';";
    dbs.src.psql(&format!(
        "{same_fn}
         CREATE FUNCTION live_op(text, text) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT $1 <> $2';
         CREATE OPERATOR <!> (FUNCTION = live_op, LEFTARG = text, RIGHTARG = text);
         CREATE FUNCTION norm(text) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT lower(trim($1))';
         CREATE TABLE users (id int PRIMARY KEY, email text, st text CHECK (same_fn(st)),
                             email_lc text GENERATED ALWAYS AS (lower(email)) STORED UNIQUE,
                             handle text UNIQUE, code text COLLATE \"C\");
         CREATE UNIQUE INDEX users_email_live ON users (email) WHERE st <!> 'dead';
         CREATE UNIQUE INDEX users_norm ON users (norm(email));
         CREATE UNIQUE INDEX users_code_lower ON users (lower(code));"
    ));
    dbs.dst.psql(&format!(
        "{same_fn}
         CREATE FUNCTION live_op(text, text) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT false';
         CREATE OPERATOR <!> (FUNCTION = live_op, LEFTARG = text, RIGHTARG = text);
         CREATE FUNCTION norm(text) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT trim($1)';
         CREATE TABLE users (id int PRIMARY KEY, email text, st text, email_lc text, code text);
         CREATE UNIQUE INDEX users_norm ON users (norm(email));
         INSERT INTO users VALUES (1, 'a@x', 'dead', '', 'É'), (2, 'b@x', 'live', '', 'é');"
    ));
    let wd = Workdir::new();
    let out = run_users_preserved(&wd, &dbs, "prepare", &["--dry-run"]);
    let all = common::said_by(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    for needle in [
        "unique index users_email_lc_key was not tried (column email_lc is generated in the source)",
        "unique index users_handle_key was not tried (column handle is only in the source)",
        "unique index users_email_live was not tried: it calls operator <!>(text,text), which the destination defines otherwise or lacks",
        "unique index users_norm was not tried: it calls norm(text), which the destination defines otherwise or lacks",
        // An expression computes under its column's collation ('É' and 'é'
        // are two under "C").
        "unique index users_code_lower was not tried (column code's collation changes)",
    ] {
        assert!(all.contains(needle), "{needle}: {all}");
    }
    assert!(!all.contains("same_fn"), "{all}");
    with_users_preserved(&wd, &dbs, "prepare", &[]);
    assert_eq!(
        dbs.dst
            .psql("SELECT string_agg(email_lc, ',' ORDER BY id) FROM shadow.users"),
        "a@x,b@x"
    );
}

/// The swap's dry run tries the changes waiting in a preserved table's
/// changelog as the swap would replay them. A trial that gets no answer (a
/// lock held on the shadow table, a value moved by a concurrent write) was
/// passed in silence, so the dry run's verdict hung on timing; it is a
/// warning now, and the swap tries again under its locks.
#[test]
fn a_replay_trial_without_an_answer_is_a_warning() {
    let (dbs, wd) = users_prepared("preserved_trial_untried");
    dbs.dst.psql("INSERT INTO users VALUES (2, 'b')");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let holder = rt.block_on(dbs.dst.client());
    rt.block_on(holder.batch_execute("BEGIN; LOCK TABLE shadow.users IN SHARE MODE"))
        .unwrap();
    let url = dbs.dst.url();
    let v = json_of(&wd, &["swap", "--dest", &url, "--dry-run", "--json"]);
    assert!(v["swap"]["refusal"].is_null(), "{v}");
    let w = warning_starting(
        &v["swap"]["warnings"],
        "the replay of the changes to users since prepare could not be tried now (",
    );
    // status says it too, and does not call the swap allowed in silence.
    let st = json_of(&wd, &["status", "--dest", &url, "--json"]);
    warning_starting(
        &st["warnings"],
        "the replay of the changes to users since prepare could not be tried now (",
    );
    assert!(
        w.ends_with("the swap tries it again under its locks, and refuses a row that does not fit"),
        "{w}"
    );
    rt.block_on(holder.batch_execute("ROLLBACK")).unwrap();
    let v = json_of(&wd, &["swap", "--dest", &url, "--dry-run", "--json"]);
    assert_eq!(v["swap"]["warnings"], serde_json::json!([]), "{v}");
}

/// A key or a CHECK whose expression fails on a destination row (a cast of
/// 'x' to int) fails the copy as surely as a duplicate: refused, where the
/// trial called it "could not be tried" and prepare failed after the whole
/// copy.
#[test]
fn a_key_a_row_cannot_compute_is_refused() {
    let dbs = TestDbs::new("preserved_key_error");
    dbs.src.psql(
        "CREATE TABLE users (id int PRIMARY KEY, data jsonb, n int);
         CREATE UNIQUE INDEX users_data_id ON users (((data ->> 'id')::int));
         CREATE UNIQUE INDEX users_share ON users ((100 / n)) WHERE n <> 0;",
    );
    // The row with n = 0 is outside users_share's WHERE: never divided.
    dbs.dst.psql(
        "CREATE TABLE users (id int PRIMARY KEY, data jsonb, n int);
         INSERT INTO users VALUES (1, '{\"id\": \"1\"}', 0), (2, '{\"id\": \"x\"}', 5);",
    );
    let wd = Workdir::new();
    let out = run_users_preserved(&wd, &dbs, "prepare", &["--dry-run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "users: a row of the destination's fails the source's unique index users_data_id"
        ) && err.contains("invalid input syntax for type integer")
            && !err.contains("users_share"),
        "{err}"
    );
}

/// A preserved table given to a role the one running pgshift does not act
/// as, after prepare: abort failed at its trigger drop ("must be owner of
/// relation users") and, recording the abort begun, left the migration
/// failed with nothing dropped (h43b). It now refuses before any drop,
/// naming the owner and the grant: the record stays prepared; once the
/// table is given back, abort finishes. The swap drops the same triggers
/// under its locks, and failed there the same way while `status` and the
/// dry run let it go (h46a): all three refuse it too, nothing changed.
#[test]
fn a_preserved_table_whose_owner_changed_is_refused_by_abort_status_and_swap() {
    let dbs = TestDbs::new("abort_unowned");
    let Some((role, dst)) = plain_owned_dest(&dbs, "ab_mover") else {
        return;
    };
    let other = format!("ab_legacy_{}", std::process::id());
    dbs.dst.psql(&create_role(&other, "NOLOGIN"));
    let ddl =
        "CREATE TABLE events (id int PRIMARY KEY); CREATE TABLE users (id serial PRIMARY KEY);";
    dbs.src.psql(ddl);
    dbs.dst.psql(&format!(
        "{ddl} ALTER TABLE events OWNER TO {role}; ALTER TABLE users OWNER TO {role};"
    ));
    let wd = Workdir::new();
    assert_success(&wd.run(&[
        "prepare",
        "--source",
        &dbs.src.url(),
        "--dest",
        &dst,
        "--preserved-tables",
        "events,users",
    ]));
    dbs.dst.psql(&format!("ALTER TABLE users OWNER TO {other}"));
    let triggers = "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgshift%'";
    assert_eq!(dbs.dst.psql(triggers), "8");
    let out = wd.run(&["abort", "--dest", &dst]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "may not drop pgshift's sync triggers on users (owned by {other})"
        )) && err.contains(&format!("GRANT {other} TO {role}"))
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(dbs.dst.psql(triggers), "8");
    let st: serde_json::Value = serde_json::from_str(&assert_success(
        &wd.run(&["status", "--dest", &dst, "--json"]),
    ))
    .unwrap();
    assert_eq!(st["state"], "prepared", "{st}");
    // status, which failed counting the table it may not read, shows the
    // count as not taken.
    let text = assert_success(&wd.run(&["status", "--dest", &dst]));
    assert!(
        text.contains("users: triggers ok, 0 pending, ? rows in public"),
        "{text}"
    );
    let refused = |why: &str| {
        why.contains(&format!(
            "may not drop pgshift's sync triggers on users (owned by {other}), which the swap does"
        )) && why.contains(&format!("GRANT {other} TO {role}"))
    };
    assert_eq!(st["swap_allowed"], false, "{st}");
    assert!(
        refused(st["swap_blocked_reason"].as_str().unwrap_or_default()),
        "{st}"
    );
    // Nor a check failing for the same cause after it (h46a).
    assert!(
        !st["swap_blocked_reasons"]
            .to_string()
            .contains("could not check"),
        "{st}"
    );
    let plan: serde_json::Value = wd.run_json(&["swap", "--dry-run", "--json", "--dest", &dst]);
    assert!(
        refused(plan["swap"]["refusal"].as_str().unwrap_or_default()),
        "{plan}"
    );
    let out = wd.run(&["swap", "--dest", &dst]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(refused(&err) && !err.contains("rolled back"), "{err}");
    assert_eq!(dbs.dst.psql(triggers), "8");
    // A role that inherits nothing: the grant would not help, and is not
    // what is advised (h47a).
    dbs.dst.psql(&format!(
        "GRANT {other} TO {role}; ALTER ROLE {role} NOINHERIT"
    ));
    let st = wd.run_json(&["status", "--dest", &dst, "--json"]);
    let why = st["swap_blocked_reason"].as_str().unwrap_or_default();
    assert!(
        why.contains(&format!("ALTER ROLE {role} INHERIT")) && !why.contains("GRANT"),
        "{st}"
    );
    dbs.dst.psql(&format!(
        "ALTER ROLE {role} INHERIT; REVOKE {other} FROM {role}"
    ));
    dbs.dst.psql(&format!("ALTER TABLE users OWNER TO {role}"));
    assert_success(&wd.run(&["abort", "--dest", &dst]));
    assert_eq!(dbs.dst.psql(triggers), "0");
}
