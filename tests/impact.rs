//! The impact engine (`pgshift::swap::impact`) against a real cluster started with
//! `pg_stat_statements` preloaded: discarded writes from the statistics
//! counters, schema hazards, the recorded workload checked against the incoming
//! schema (and the predictions checked against a real swap), the check under a
//! pgbench load, and blockers. The schemas are set up by hand (a `public` and a
//! `shadow` schema in one database); no prepare runs.

mod common;

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, TestDb, can_start_clusters};
use pgshift::pg::ident::TableName;
use pgshift::swap::impact::{
    self, AllowDiscard, Effect, Impact, ImpactRequest, SchemaPair, WorkloadOptions, WriteBaseline,
};
use tokio_postgres::{Client, NoTls};

/// One cluster with pg_stat_statements for the whole file.
fn cluster() -> Option<&'static Cluster> {
    static C: OnceLock<Cluster> = OnceLock::new();
    common::pg_stat_statements_cluster(&C, "impact")
}

fn db(name: &str) -> Option<TestDb> {
    cluster().map(|c| c.create_db("impact", name))
}

fn public_shadow() -> Vec<SchemaPair> {
    vec![SchemaPair::new("public", "shadow")]
}

/// A connection with its own application_name (the harness's own starts with
/// `pgshift`, which blockers leave out).
async fn connect_as(db: &TestDb, app: &str) -> Client {
    let mut cfg = db.pg_config();
    cfg.application_name(app);
    let (client, conn) = cfg.connect(NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Wait until the statistics show these absolute counters for `table`
/// (writers publish them when they go idle or disconnect).
async fn wait_counts(c: &Client, table: &str, want: (i64, i64, i64)) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        c.batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        let r = c
            .query_one(
                "SELECT pg_stat_get_tuples_inserted($1::text::regclass), pg_stat_get_tuples_updated($1::text::regclass),
                        pg_stat_get_tuples_deleted($1::text::regclass)",
                &[&table],
            )
            .await
            .unwrap();
        let got: (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "counters of {table}: {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until this database's `stats_reset` is later than `than` (on 13 and 14
/// the statistics collector carries out `pg_stat_reset()` asynchronously).
async fn wait_reset_after(c: &Client, than: Option<chrono::DateTime<chrono::Utc>>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        c.batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        let reset: Option<chrono::DateTime<chrono::Utc>> = c
            .query_one(
                "SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if reset.is_some() && reset > than {
            return;
        }
        assert!(Instant::now() < deadline, "stats_reset still {reset:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run_check_sql(
    c: &Client,
    base: &WriteBaseline,
    exempt: &[TableName],
) -> impact::WriteCheck {
    let run = |sql: String| async move {
        let json: String = c
            .query_one(sql.as_str(), &[])
            .await
            .expect("the check runs")
            .get(0);
        impact::parse_check(&json).unwrap()
    };
    let full = run(impact::check_sql(base, exempt)).await;
    // The check under the swap's locks looks the tables of a recent snapshot
    // up by OID instead: the same answer.
    let listed = impact::take_baseline(c, &base.schemas).await.unwrap();
    let by_oid = run(impact::listed_check_sql(base, &listed, exempt)).await;
    assert_eq!(by_oid, full);
    full
}

fn tables(check: &impact::WriteCheck) -> Vec<(String, i64, i64, i64)> {
    check
        .discarded
        .iter()
        .map(|d| (d.table.clone(), d.inserts, d.updates, d.deletes))
        .collect()
}

#[tokio::test]
async fn writes_to_tables_that_are_not_preserved_are_counted_exactly() {
    let Some(db) = db("writes") else { return };
    db.psql(
        "CREATE SCHEMA shadow; CREATE SCHEMA billing; CREATE SCHEMA billing_shadow;
         CREATE TABLE accounts (id int PRIMARY KEY, email text);
         CREATE TABLE orders (id int PRIMARY KEY);
         CREATE TABLE users (id int PRIMARY KEY);
         CREATE TABLE quiet (id int);
         CREATE TABLE events (id int, at date) PARTITION BY RANGE (at);
         CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         CREATE TABLE billing.invoices (id int);
         INSERT INTO accounts SELECT g, 'a' || g FROM generate_series(1, 10) g;",
    );
    let c = db.client().await;
    wait_counts(&c, "public.accounts", (10, 0, 0)).await;
    let schemas = vec!["public".to_string(), "billing".to_string()];
    let base = impact::take_baseline(&c, &schemas).await.unwrap();
    assert_eq!(base.tables.len(), 6, "{:?}", base.tables);
    // The baseline survives the state file and pgshift.migration's JSON.
    let again: WriteBaseline =
        serde_json::from_str(&serde_json::to_string(&base).unwrap()).unwrap();
    assert_eq!(again, base);

    db.psql(
        "INSERT INTO accounts VALUES (11, 'x'), (12, 'y'), (13, 'z');
         UPDATE accounts SET email = 'w' WHERE id = 1;
         DELETE FROM accounts WHERE id = 2;
         INSERT INTO users VALUES (1), (2);
         INSERT INTO events VALUES (1, '2024-05-01');
         INSERT INTO billing.invoices SELECT generate_series(1, 4);
         BEGIN; INSERT INTO orders VALUES (1), (2); ROLLBACK;",
    );
    wait_counts(&c, "public.accounts", (13, 1, 1)).await;
    wait_counts(&c, "public.users", (2, 0, 0)).await;
    wait_counts(&c, "public.events_2024", (1, 0, 0)).await;
    wait_counts(&c, "billing.invoices", (4, 0, 0)).await;
    wait_counts(&c, "public.orders", (2, 0, 0)).await;

    // users is preserved, events (a partitioned table: its partitions) is kept.
    let exempt = vec![
        TableName::parse("users").unwrap(),
        TableName::parse("public.events").unwrap(),
    ];
    let now = impact::take_baseline(&c, &schemas).await.unwrap();
    let check = impact::compare(&base, &now, &exempt);
    // The rolled-back insert counts too (the counters include aborted rows).
    assert_eq!(
        tables(&check),
        vec![
            ("accounts".into(), 3, 1, 1),
            ("billing.invoices".into(), 4, 0, 0),
            ("orders".into(), 2, 0, 0)
        ]
    );
    assert!(check.unknown.is_empty(), "{:?}", check.unknown);
    assert_eq!(run_check_sql(&c, &base, &exempt).await, check);

    let refusal = impact::gate(&check, &AllowDiscard::Nothing).unwrap_err();
    assert!(
        refusal.contains(
            "to 3 tables that are not preserved (the rows would stay in the backup, not in the new public and billing schemas): accounts (3 inserts, 1 update, 1 delete), billing.invoices (4 inserts), orders (2 inserts); nothing was changed"
        ),
        "{refusal}"
    );
    assert!(
        refusal
            .contains("--allow-discard accounts,billing.invoices,orders (or --allow-discard all)"),
        "{refusal}"
    );
    assert!(
        impact::gate(
            &check,
            &AllowDiscard::parse("accounts,billing.invoices,orders").unwrap()
        )
        .is_ok()
    );
    let partly = impact::gate(&check, &AllowDiscard::parse("accounts").unwrap()).unwrap_err();
    assert!(partly.contains("to 2 tables"), "{partly}");

    // Inside a transaction that read the statistics before (as the swap's
    // would), the check still sees a write made meanwhile.
    c.batch_execute("BEGIN").await.unwrap();
    let before = run_check_sql(&c, &base, &exempt).await;
    assert_eq!(before, check);
    db.psql("INSERT INTO orders VALUES (3)");
    let other = db.client().await;
    wait_counts(&other, "public.orders", (3, 0, 0)).await;
    let inside = run_check_sql(&c, &base, &exempt).await;
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        tables(&inside).last(),
        Some(&("orders".to_string(), 3, 0, 0))
    );

    // prepare --dry-run's hint: everything written since the last reset.
    let hint = impact::writes_since_reset(&c, &schemas).await.unwrap();
    let hinted: Vec<(String, i64)> = hint
        .tables
        .iter()
        .map(|t| (t.table.clone(), t.total()))
        .collect();
    assert_eq!(
        hinted,
        vec![
            ("accounts".to_string(), 15),
            ("billing.invoices".to_string(), 4),
            ("orders".to_string(), 3),
            ("users".to_string(), 2),
            ("events_2024".to_string(), 1)
        ]
    );
    assert_eq!(hint.tables[4].partition_of.as_deref(), Some("events"));
}

/// The check under the locks (by OID) names partitions as the full check
/// does: the same ancestors, names with quotes and backslashes, two levels
/// deep, and a partition exempt through its grandparent.
#[tokio::test]
async fn the_check_under_the_locks_names_partitions_as_the_full_check() {
    let Some(db) = db("partition_ancestors") else {
        return;
    };
    db.psql(
        r#"CREATE SCHEMA "bil""ling\";
         CREATE TABLE "ev""ents\" (id int, at date) PARTITION BY RANGE (at);
         CREATE TABLE "bil""ling\"."ev 2024" PARTITION OF "ev""ents\"
           FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') PARTITION BY RANGE (id);
         CREATE TABLE "ev,{low}" PARTITION OF "bil""ling\"."ev 2024" FOR VALUES FROM (0) TO (100);
         CREATE TABLE plain (id int);"#,
    );
    let c = db.client().await;
    let schemas = vec!["public".to_string(), "bil\"ling\\".to_string()];
    let base = impact::take_baseline(&c, &schemas).await.unwrap();
    db.psql(
        r#"INSERT INTO "ev""ents\" VALUES (1, '2024-05-01'), (2, '2024-06-01');
         INSERT INTO plain VALUES (1);"#,
    );
    wait_counts(&c, r#"public."ev,{low}""#, (2, 0, 0)).await;
    wait_counts(&c, "public.plain", (1, 0, 0)).await;
    let now = impact::take_baseline(&c, &schemas).await.unwrap();
    let check = impact::compare(&base, &now, &[]);
    assert_eq!(
        tables(&check),
        vec![(r#""ev,{low}""#.into(), 2, 0, 0), ("plain".into(), 1, 0, 0)]
    );
    assert_eq!(
        check.discarded[0].partition_of.as_deref(),
        Some(r#""ev""ents\""#)
    );
    assert_eq!(run_check_sql(&c, &base, &[]).await, check);
    // Exempt through its grandparent: left out by the same ancestors.
    let exempt = vec![TableName {
        schema: None,
        name: r#"ev"ents\"#.into(),
    }];
    let without = run_check_sql(&c, &base, &exempt).await;
    assert_eq!(tables(&without), vec![("plain".into(), 1, 0, 0)]);
}

#[tokio::test]
async fn truncate_new_tables_and_reset_statistics_are_reported() {
    let Some(db) = db("unknown_writes") else {
        return;
    };
    db.psql(
        "CREATE SCHEMA shadow;
         CREATE TABLE t1 AS SELECT generate_series(1, 5) AS id;
         CREATE TABLE t2 AS SELECT generate_series(1, 5) AS id;
         CREATE TABLE kept (id int);",
    );
    let c = db.client().await;
    wait_counts(&c, "t1", (5, 0, 0)).await;
    wait_counts(&c, "t2", (5, 0, 0)).await;
    let schemas = vec!["public".to_string()];
    let exempt = vec![TableName::parse("kept").unwrap()];
    let base = impact::take_baseline(&c, &schemas).await.unwrap();

    // TRUNCATE is not counted: the table's new relfilenode gives it away. A
    // table created after the baseline counts all its writes.
    db.psql(
        "TRUNCATE t1; CREATE TABLE fresh (id int); INSERT INTO fresh VALUES (1), (2);
         TRUNCATE kept;",
    );
    wait_counts(&c, "fresh", (2, 0, 0)).await;
    let now = impact::take_baseline(&c, &schemas).await.unwrap();
    let check = impact::compare(&base, &now, &exempt);
    assert_eq!(tables(&check), vec![("fresh".to_string(), 2, 0, 0)]);
    let unknown: Vec<(&str, &str)> = check
        .unknown
        .iter()
        .map(|u| (u.table.as_str(), u.reason.as_str()))
        .collect();
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert_eq!(unknown[0].0, "t1");
    assert!(
        unknown[0].1.starts_with("truncated or rewritten"),
        "{unknown:?}"
    );
    assert_eq!(run_check_sql(&c, &base, &exempt).await, check);
    let refusal = impact::gate(&check, &AllowDiscard::Nothing).unwrap_err();
    assert!(
        refusal.contains("fresh (2 inserts); writes to 1 table cannot be checked (truncated or rewritten since prepare started"),
        "{refusal}"
    );
    assert!(refusal.contains("--allow-discard fresh,t1 "), "{refusal}");

    // track_counts off: nothing can be known.
    c.batch_execute("SET track_counts = off").await.unwrap();
    let off = run_check_sql(&c, &base, &exempt).await;
    assert!(off.discarded.is_empty());
    assert_eq!(off.unknown.len(), 3, "{off:?}");
    assert!(
        off.unknown
            .iter()
            .all(|u| u.reason.contains("track_counts is off"))
    );
    let now = impact::take_baseline(&c, &schemas).await.unwrap();
    assert_eq!(impact::compare(&base, &now, &exempt), off);
    c.batch_execute("RESET track_counts").await.unwrap();

    // A statistics reset: every table (not exempt) is unknown. On 13 and 14 the
    // statistics collector carries it out a moment later.
    c.batch_execute("SELECT pg_stat_reset()").await.unwrap();
    wait_reset_after(&c, base.stats_reset).await;
    let now = impact::take_baseline(&c, &schemas).await.unwrap();
    let check = impact::compare(&base, &now, &exempt);
    assert!(check.discarded.is_empty());
    let names: Vec<&str> = check.unknown.iter().map(|u| u.table.as_str()).collect();
    assert_eq!(names, vec!["fresh", "t1", "t2"]);
    assert!(
        check
            .unknown
            .iter()
            .all(|u| u.reason == "the statistics were reset since prepare started")
    );
    assert_eq!(run_check_sql(&c, &base, &exempt).await, check);
    assert!(impact::gate(&check, &AllowDiscard::All).is_ok());
}

/// Hazards as (code, object).
fn codes(h: &[impact::Hazard]) -> BTreeSet<(String, String)> {
    h.iter()
        .map(|h| (h.code.clone(), h.object.clone()))
        .collect()
}

fn detail<'a>(h: &'a [impact::Hazard], code: &str, object: &str) -> &'a impact::Hazard {
    h.iter()
        .find(|x| x.code == code && x.object == object)
        .unwrap_or_else(|| panic!("no {code} on {object} in {h:#?}"))
}

#[tokio::test]
async fn every_hazard_class_is_found() {
    let Some(db) = db("hazards") else { return };
    db.psql(
        "CREATE EXTENSION btree_gist SCHEMA public;
         CREATE SCHEMA shadow;
         CREATE TYPE mood AS ENUM ('happy', 'sad', 'meh');
         CREATE TYPE old_status AS ENUM ('x');
         CREATE TABLE accounts (id int PRIMARY KEY, email text, nick text, name varchar(10),
                                tags int[], m mood, score int);
         CREATE TABLE legacy (id int);
         CREATE VIEW v_old AS SELECT id FROM accounts;
         CREATE SEQUENCE counter;
         CREATE TABLE orders (id int, amount numeric, account_id int, code text);
         CREATE TABLE things (id int);
         CREATE TABLE events (id int, at date) PARTITION BY RANGE (at);
         CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         CREATE TABLE same (id int PRIMARY KEY, account_id int REFERENCES accounts (id), n int CHECK (n > 0));
         CREATE UNIQUE INDEX same_n_big ON same (n) WHERE n > 5;
         ALTER TABLE same ADD CONSTRAINT same_account_key UNIQUE (account_id);
         CREATE TABLE notes (id int, account_id int REFERENCES accounts (id) ON DELETE CASCADE);
         CREATE FUNCTION gone(int) RETURNS int LANGUAGE sql AS 'SELECT 1';
         CREATE FUNCTION calc(int) RETURNS int LANGUAGE sql AS 'SELECT 1';
         CREATE FUNCTION total() RETURNS int LANGUAGE sql AS 'SELECT 1';
         CREATE FUNCTION kept(a int, b mood) RETURNS int LANGUAGE sql AS 'SELECT 1';
         CREATE PROCEDURE cleanup(int) LANGUAGE sql AS 'SELECT 1';

         CREATE TYPE shadow.mood AS ENUM ('happy', 'meh');
         CREATE DOMAIN shadow.email AS text;
         CREATE TABLE shadow.accounts (id int PRIMARY KEY, email shadow.email, name varchar(20),
                                       tags bigint[], m shadow.mood, score int NOT NULL,
                                       created_at timestamptz NOT NULL DEFAULT now(), region text NOT NULL);
         CREATE TABLE shadow.orders (id int UNIQUE, amount numeric CHECK (amount > 0),
                                     account_id int REFERENCES shadow.accounts (id), code text,
                                     EXCLUDE USING btree (code WITH =));
         CREATE VIEW shadow.things AS SELECT 1 AS id;
         CREATE TABLE shadow.events (id int, at date, note text) PARTITION BY RANGE (at);
         CREATE TABLE shadow.events_2024 PARTITION OF shadow.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         CREATE TABLE shadow.same (id int PRIMARY KEY, account_id int REFERENCES shadow.accounts (id), n int CHECK (n > 0));
         CREATE UNIQUE INDEX same_n_big ON shadow.same (n) WHERE n > 5;
         -- The same keys as an index of its own: rejects what the constraint did.
         CREATE UNIQUE INDEX same_account_idx ON shadow.same (account_id);
         CREATE UNIQUE INDEX accounts_email_lower ON shadow.accounts (lower(email));
         CREATE TABLE shadow.notes (id int, account_id int REFERENCES shadow.accounts (id));
         CREATE TABLE shadow.fresh (id int);
         CREATE VIEW shadow.v_new AS SELECT 1 AS x;
         CREATE FUNCTION shadow.calc(bigint) RETURNS int LANGUAGE sql AS 'SELECT 1';
         CREATE FUNCTION shadow.total() RETURNS bigint LANGUAGE sql AS 'SELECT 1';
         CREATE FUNCTION shadow.kept(x int, y shadow.mood) RETURNS int LANGUAGE sql AS 'SELECT 1';",
    );
    let c = db.client().await;
    let h = impact::hazards(&c, &public_shadow()).await.unwrap();
    let expected: BTreeSet<(String, String)> = [
        ("TABLE_DROPPED", "public.legacy"),
        ("VIEW_DROPPED", "public.v_old"),
        ("SEQUENCE_DROPPED", "public.counter"),
        ("RELATION_KIND_CHANGED", "public.things"),
        ("COLUMN_DROPPED", "public.accounts.nick"),
        ("COLUMN_TYPE_CHANGED", "public.accounts.email"),
        ("COLUMN_TYPE_CHANGED", "public.accounts.name"),
        ("COLUMN_TYPE_CHANGED", "public.accounts.tags"),
        ("COLUMN_LIST_CHANGED", "public.accounts"),
        ("COLUMN_ADDED", "public.accounts.created_at"),
        ("COLUMN_ADDED", "public.accounts.region"),
        // A partitioned table's new column: on the parent only.
        ("COLUMN_ADDED", "public.events.note"),
        ("COLUMN_LIST_CHANGED", "public.events"),
        ("NOT_NULL_ADDED", "public.accounts.score"),
        ("NOT_NULL_ADDED", "public.accounts.region"),
        ("UNIQUE_ADDED", "public.orders.orders_id_key"),
        // A unique index of its own (an expression's) rejects writes too;
        // the same partial one on both sides does not count, nor an index
        // of the keys of a constraint the old table had.
        ("UNIQUE_ADDED", "public.accounts.accounts_email_lower"),
        ("CHECK_ADDED", "public.orders.orders_amount_check"),
        ("FOREIGN_KEY_ADDED", "public.orders.orders_account_id_fkey"),
        // Only its action changed: no write the old key took breaks it,
        // but the deletes that cascaded are refused now.
        (
            "FOREIGN_KEY_ACTION_CHANGED",
            "public.notes.notes_account_id_fkey",
        ),
        ("EXCLUSION_ADDED", "public.orders.orders_code_excl"),
        ("ENUM_VALUE_DROPPED", "public.mood"),
        ("TYPE_REPLACED", "public.mood"),
        ("TYPE_DROPPED", "public.old_status"),
        ("FUNCTION_DROPPED", "public.gone(integer)"),
        ("FUNCTION_DROPPED", "public.cleanup(integer)"),
        ("FUNCTION_SIGNATURE_CHANGED", "public.calc(integer)"),
        ("FUNCTION_SIGNATURE_CHANGED", "public.total()"),
        ("TABLE_ADDED", "public.fresh"),
        ("VIEW_ADDED", "public.v_new"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(codes(&h), expected, "{h:#?}");

    let d = |code: &str, object: &str| detail(&h, code, object).detail.clone();
    assert_eq!(
        d("COLUMN_TYPE_CHANGED", "public.accounts.email"),
        "text -> email"
    );
    assert_eq!(
        d("COLUMN_TYPE_CHANGED", "public.accounts.name"),
        "character varying(10) -> character varying(20)"
    );
    assert_eq!(
        d("COLUMN_TYPE_CHANGED", "public.accounts.tags"),
        "integer[] -> bigint[]"
    );
    assert_eq!(
        d("COLUMN_LIST_CHANGED", "public.accounts"),
        "SELECT * returns other columns: added created_at, region; dropped nick"
    );
    assert_eq!(
        d("FOREIGN_KEY_ADDED", "public.orders.orders_account_id_fkey"),
        "FOREIGN KEY (account_id) REFERENCES public.accounts(id)"
    );
    assert_eq!(
        d(
            "FOREIGN_KEY_ACTION_CHANGED",
            "public.notes.notes_account_id_fkey"
        ),
        "ON DELETE CASCADE -> NO ACTION"
    );
    assert_eq!(
        detail(
            &h,
            "FOREIGN_KEY_ACTION_CHANGED",
            "public.notes.notes_account_id_fkey"
        )
        .effect,
        impact::Effect::RejectsWrites
    );
    assert_eq!(
        d("CHECK_ADDED", "public.orders.orders_amount_check"),
        "CHECK ((amount > (0)::numeric))"
    );
    assert_eq!(
        d("ENUM_VALUE_DROPPED", "public.mood"),
        "no longer accepts 'sad'"
    );
    assert_eq!(
        d("FUNCTION_SIGNATURE_CHANGED", "public.calc(integer)"),
        "public.calc(integer) -> public.calc(bigint)"
    );
    assert_eq!(
        d("FUNCTION_SIGNATURE_CHANGED", "public.total()"),
        "returns integer -> bigint"
    );
    assert_eq!(
        d("FUNCTION_DROPPED", "public.cleanup(integer)"),
        "procedure"
    );
    assert_eq!(d("RELATION_KIND_CHANGED", "public.things"), "table -> view");
    let effect = |code: &str, object: &str| detail(&h, code, object).effect;
    assert_eq!(effect("TABLE_DROPPED", "public.legacy"), Effect::Breaks);
    assert_eq!(
        effect("COLUMN_TYPE_CHANGED", "public.accounts.email"),
        Effect::ResultType
    );
    assert_eq!(
        effect("NOT_NULL_ADDED", "public.accounts.score"),
        Effect::RejectsWrites
    );
    assert_eq!(
        effect("RELATION_KIND_CHANGED", "public.things"),
        Effect::RejectsWrites
    );
    assert_eq!(
        effect("COLUMN_ADDED", "public.accounts.region"),
        Effect::Info
    );
    // JSON: the effect is a lower-case word.
    let json = serde_json::to_value(detail(&h, "TYPE_REPLACED", "public.mood")).unwrap();
    assert_eq!(json["effect"], "result_type");
}

/// Row-level security and policies, each change named (`row_access`): on or
/// off, FORCE on or off, a policy added, dropped or changed, the last
/// permissive one gone (nothing admitted, h44a); views and functions that
/// read with other rights (`security_invoker`, `SECURITY DEFINER`). Policies
/// of a table whose security is off on both sides, the same policy through a
/// function of the migrated schema, and a kept table are none.
#[tokio::test]
async fn row_level_security_changes_are_found() {
    let Some(db) = db("rls_hazards") else { return };
    let ddl = "CREATE FUNCTION tenant() RETURNS text LANGUAGE sql STABLE AS $$ SELECT 'a' $$;
               CREATE TABLE same (id int, t text);
               ALTER TABLE same ENABLE ROW LEVEL SECURITY;
               CREATE POLICY p ON same FOR UPDATE TO PUBLIC USING (t = tenant()) WITH CHECK (t = tenant());
               CREATE TABLE inert (id int, t text);
               CREATE TABLE off_on (id int, t text);
               CREATE TABLE on_off (id int, t text);
               CREATE TABLE forced (id int, t text);
               ALTER TABLE forced ENABLE ROW LEVEL SECURITY;
               CREATE TABLE policies (id int, t text);
               ALTER TABLE policies ENABLE ROW LEVEL SECURITY;
               CREATE TABLE kept (id int);
               CREATE TABLE ev (id int, at date) PARTITION BY RANGE (at);
               CREATE TABLE ev_1 PARTITION OF ev FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
               CREATE TABLE onlyr (id int, t text);
               ALTER TABLE onlyr ENABLE ROW LEVEL SECURITY;
               CREATE TABLE ro (id int, t text);
               CREATE TABLE moved (id int);
               ALTER TABLE moved ENABLE ROW LEVEL SECURITY;
               CREATE TABLE pub (id int);
               ALTER TABLE pub ENABLE ROW LEVEL SECURITY;
               CREATE TABLE via (id int);
               ALTER TABLE via ENABLE ROW LEVEL SECURITY;
               CREATE TABLE exempt (id int);
               ALTER TABLE exempt ENABLE ROW LEVEL SECURITY;
               ALTER TABLE exempt OWNER TO rls_owner;";
    db.psql(
        "DO $$ BEGIN CREATE ROLE rls_reporting; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         DO $$ BEGIN CREATE ROLE rls_app; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         DO $$ BEGIN CREATE ROLE rls_analyst; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         GRANT rls_reporting TO rls_analyst;
         DO $$ BEGIN CREATE ROLE rls_bypass BYPASSRLS; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         DO $$ BEGIN CREATE ROLE rls_owner; EXCEPTION WHEN duplicate_object THEN NULL; END $$;",
    );
    db.psql(&format!(
        "CREATE SCHEMA shadow;
         {ddl}
         CREATE POLICY r ON moved FOR SELECT TO rls_reporting USING (true);
         CREATE POLICY w ON moved TO rls_app USING (true);
         CREATE POLICY p ON pub FOR SELECT USING (true);
         CREATE POLICY a ON via TO rls_analyst USING (true);
         CREATE POLICY b ON exempt FOR SELECT TO rls_bypass USING (true);
         CREATE POLICY o ON exempt FOR DELETE TO rls_owner USING (true);
         CREATE POLICY u ON exempt FOR UPDATE TO rls_app USING (true);
         CREATE POLICY gone ON inert USING (true);
         ALTER TABLE on_off ENABLE ROW LEVEL SECURITY;
         CREATE POLICY p ON on_off USING (t = 'x');
         ALTER TABLE kept ENABLE ROW LEVEL SECURITY;
         CREATE POLICY dropped ON policies AS RESTRICTIVE USING (t <> 'x');
         CREATE POLICY changed ON policies FOR SELECT USING (t = 'x');
         ALTER TABLE ev_1 ENABLE ROW LEVEL SECURITY;
         CREATE POLICY p ON onlyr USING (true);
         CREATE VIEW v_inv WITH (security_invoker = on) AS SELECT * FROM same;
         CREATE VIEW v_def AS SELECT * FROM same;
         CREATE FUNCTION cnt() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM public.same';
         CREATE FUNCTION cnt(int) RETURNS bigint LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';
         SET search_path = shadow, public;
         {ddl}
         CREATE VIEW v_inv AS SELECT * FROM same;
         CREATE VIEW v_def WITH (security_invoker = tru) AS SELECT * FROM same;
         CREATE FUNCTION cnt() RETURNS bigint LANGUAGE sql SECURITY DEFINER AS 'SELECT count(*) FROM shadow.same';
         CREATE FUNCTION cnt(int) RETURNS bigint LANGUAGE sql AS 'SELECT 1';
         CREATE POLICY r ON onlyr AS RESTRICTIVE USING (t = 'x');
         ALTER TABLE ro ENABLE ROW LEVEL SECURITY;
         CREATE POLICY r ON ro AS RESTRICTIVE USING (t = 'x');
         ALTER TABLE off_on ENABLE ROW LEVEL SECURITY;
         ALTER TABLE forced FORCE ROW LEVEL SECURITY;
         CREATE POLICY mine ON forced USING (t = current_user);
         CREATE POLICY added ON policies FOR INSERT WITH CHECK (t = tenant());
         CREATE POLICY changed ON policies FOR SELECT USING (t = 'y');
         CREATE POLICY r ON moved FOR SELECT TO rls_app USING (true);
         CREATE POLICY w ON moved FOR SELECT TO rls_app USING (true);
         CREATE POLICY p ON pub FOR SELECT TO rls_reporting USING (true);
         CREATE POLICY a ON via TO rls_reporting USING (true);
         CREATE POLICY b ON exempt FOR SELECT TO rls_app USING (true);
         CREATE POLICY u ON exempt FOR SELECT TO rls_app USING (true);"
    ));
    let c = db.client().await;
    let mut pairs = public_shadow();
    pairs[0].stays = vec!["kept".to_string()];
    let h = impact::hazards(&c, &pairs).await.unwrap();
    let expected: BTreeSet<(String, String)> = [
        ("RLS_ENABLED", "public.off_on"),
        ("RLS_DISABLED", "public.on_off"),
        ("RLS_ENABLED", "public.forced"),
        ("POLICY_ADDED", "public.forced.mine"),
        ("POLICY_ADDED", "public.policies.added"),
        ("POLICY_DROPPED", "public.policies.dropped"),
        ("POLICY_CHANGED", "public.policies.changed"),
        // A partition's own setting applies when it is used directly.
        ("RLS_DISABLED", "public.ev_1"),
        // The last permissive policy gone, or none: nothing is admitted.
        ("POLICY_DROPPED", "public.onlyr.p"),
        ("POLICY_ADDED", "public.onlyr.r"),
        ("RLS_ENABLED", "public.ro"),
        // Views and functions that read with other rights.
        ("SECURITY_INVOKER_DROPPED", "public.v_inv"),
        ("SECURITY_INVOKER_ADDED", "public.v_def"),
        ("SECURITY_DEFINER_ADDED", "public.cnt()"),
        ("SECURITY_DEFINER_DROPPED", "public.cnt(integer)"),
        // Policies moved to other roles or commands: who loses every row
        // (h45b), not a member of a role still admitted (via).
        ("POLICY_CHANGED", "public.moved.r"),
        ("POLICY_CHANGED", "public.moved.w"),
        ("ROWS_NO_LONGER_ADMITTED", "public.moved"),
        ("POLICY_CHANGED", "public.pub.p"),
        ("ROWS_NO_LONGER_ADMITTED", "public.pub"),
        ("POLICY_CHANGED", "public.via.a"),
        // Not the roles security does not apply to (h47a): a BYPASSRLS
        // role, the owner of a table that does not force it.
        ("POLICY_CHANGED", "public.exempt.b"),
        ("POLICY_DROPPED", "public.exempt.o"),
        ("POLICY_CHANGED", "public.exempt.u"),
        ("ROWS_NO_LONGER_ADMITTED", "public.exempt"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(codes(&h), expected, "{h:#?}");
    assert!(h.iter().all(|x| x.effect == Effect::RowAccess), "{h:#?}");
    let d = |code: &str, object: &str| detail(&h, code, object).detail.clone();
    assert_eq!(
        d("RLS_ENABLED", "public.off_on"),
        "row-level security off -> on: with no policy, roles other than the owner and BYPASSRLS roles read no row and may write none"
    );
    assert_eq!(
        d("RLS_DISABLED", "public.on_off"),
        "row-level security on -> off: every role allowed to use the table reads and writes every row (policy p (PERMISSIVE FOR ALL TO PUBLIC) no longer applies)"
    );
    assert_eq!(
        d("RLS_ENABLED", "public.forced"),
        "NO FORCE -> FORCE: the table's owner too reads and writes only the rows a permissive policy for the command and role admits, and every restrictive one: mine (PERMISSIVE FOR ALL TO PUBLIC)"
    );
    // `forced` had no policy: nothing was admitted before (h45b).
    assert!(
        d("POLICY_ADDED", "public.forced.mine")
            .ends_with(": its roles read and write the rows it admits, where no permissive policy admitted any before"),
        "{h:#?}"
    );
    assert_eq!(
        d("POLICY_ADDED", "public.policies.added"),
        "PERMISSIVE FOR INSERT TO PUBLIC WITH CHECK ((t = public.tenant())): its roles read and write the rows it admits too"
    );
    assert_eq!(
        d("POLICY_DROPPED", "public.policies.dropped"),
        "RESTRICTIVE FOR ALL TO PUBLIC USING ((t <> 'x'::text)): its roles read and write the rows it kept from them"
    );
    assert_eq!(
        d("POLICY_CHANGED", "public.policies.changed"),
        "PERMISSIVE FOR SELECT TO PUBLIC USING ((t = 'x'::text)) -> PERMISSIVE FOR SELECT TO PUBLIC USING ((t = 'y'::text))"
    );
    let none_left = "; no permissive policy is left: roles other than the owner and BYPASSRLS roles read no row and may write none";
    assert!(
        d("POLICY_DROPPED", "public.onlyr.p").ends_with(none_left)
            && d("POLICY_ADDED", "public.onlyr.r").ends_with(none_left),
        "{h:#?}"
    );
    assert_eq!(
        d("RLS_ENABLED", "public.ro"),
        "row-level security off -> on: with no permissive policy, roles other than the owner and BYPASSRLS roles read no row and may write none (restrictive policies alone admit nothing: r (RESTRICTIVE FOR ALL TO PUBLIC))"
    );
    assert!(
        d("SECURITY_INVOKER_DROPPED", "public.v_inv").starts_with(
            "security_invoker on -> off: the view reads its tables with its owner's rights"
        ),
        "{h:#?}"
    );
    assert_eq!(
        d("ROWS_NO_LONGER_ADMITTED", "public.moved"),
        "no permissive policy admits rls_reporting for SELECT; rls_app for INSERT, UPDATE, DELETE any more: for them a SELECT reads no row, an UPDATE or DELETE changes none and an INSERT fails (policies now: r (PERMISSIVE FOR SELECT TO rls_app), w (PERMISSIVE FOR SELECT TO rls_app))"
    );
    assert!(
        d("ROWS_NO_LONGER_ADMITTED", "public.pub").starts_with(
            "no permissive policy admits every role but rls_reporting and their members for SELECT any more:"
        ),
        "{h:#?}"
    );
    assert_eq!(
        d("ROWS_NO_LONGER_ADMITTED", "public.exempt"),
        "no permissive policy admits rls_app for UPDATE any more: for them an UPDATE changes none (policies now: b (PERMISSIVE FOR SELECT TO rls_app), u (PERMISSIVE FOR SELECT TO rls_app))"
    );
    let json = serde_json::to_value(detail(&h, "RLS_DISABLED", "public.on_off")).unwrap();
    assert_eq!(json["effect"], "row_access");
}

#[tokio::test]
async fn an_unchanged_schema_has_no_hazards() {
    let Some(db) = db("no_hazards") else { return };
    let ddl = "CREATE TABLE accounts (id int PRIMARY KEY, email varchar(200) NOT NULL UNIQUE, tags text[]);
               CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                    account_id int NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
                                    amount numeric(12, 2) CHECK (amount >= 0), at timestamptz DEFAULT now());
               CREATE INDEX ON orders (account_id);
               CREATE SEQUENCE invoice_no;
               CREATE DOMAIN positive AS int CHECK (VALUE > 0);
               CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 100;
               CREATE MATERIALIZED VIEW totals AS SELECT account_id, sum(amount) FROM orders GROUP BY 1;
               CREATE FUNCTION add(a int, b int) RETURNS int LANGUAGE sql AS 'SELECT a + b';
               CREATE PROCEDURE noop() LANGUAGE sql AS 'SELECT 1';";
    db.psql(&format!(
        "CREATE EXTENSION btree_gist SCHEMA public;
         CREATE SCHEMA shadow;
         {ddl}
         SET search_path = shadow, public;
         {ddl}"
    ));
    let c = db.client().await;
    let h = impact::hazards(&c, &public_shadow()).await.unwrap();
    assert!(h.is_empty(), "{h:#?}");
}

/// The app's statements, run through the extended protocol (as a driver with
/// prepared statements does), prepared before the swap.
struct App {
    client: Client,
    by_email: tokio_postgres::Statement,
    legacy: tokio_postgres::Statement,
    product: tokio_postgres::Statement,
    all_orders: tokio_postgres::Statement,
    /// Uses an extension member of public (citext): public stays on the
    /// checked search path, and still legacy must not be found there.
    legacy_ext: tokio_postgres::Statement,
    /// The live schema's own function next to an extension member.
    scored: tokio_postgres::Statement,
}

impl App {
    async fn start(db: &TestDb) -> App {
        let client = connect_as(db, "app").await;
        client.batch_execute("SET ROLE app").await.unwrap();
        let by_email = client
            .prepare("SELECT email FROM accounts WHERE id = $1")
            .await
            .unwrap();
        let legacy = client
            .prepare("SELECT note FROM legacy WHERE id = $1")
            .await
            .unwrap();
        let product = client
            .prepare("SELECT name FROM products WHERE id = $1")
            .await
            .unwrap();
        let all_orders = client.prepare("SELECT * FROM orders").await.unwrap();
        let legacy_ext = client
            .prepare("SELECT count(*) FROM legacy WHERE note::citext = $1")
            .await
            .unwrap();
        let scored = client
            .prepare("SELECT score(id) FROM products WHERE name::citext = $1")
            .await
            .unwrap();
        App {
            client,
            by_email,
            legacy,
            product,
            all_orders,
            legacy_ext,
            scored,
        }
    }

    async fn run(&self) {
        for _ in 0..3 {
            self.client.query(&self.by_email, &[&1i32]).await.unwrap();
        }
        self.client.query(&self.legacy, &[&1i32]).await.unwrap();
        self.client.query(&self.product, &[&1i32]).await.unwrap();
        self.client.query(&self.all_orders, &[]).await.unwrap();
        self.client.query(&self.legacy_ext, &[&"n"]).await.unwrap();
        self.client.query(&self.scored, &[&"p"]).await.unwrap();
        // pg_stat_statements records `interval $2`, which does not parse: it is
        // checked as `$2::interval`.
        self.client
            .simple_query(
                "SELECT name FROM products WHERE id = 1 AND now() - interval '1 day' < now()",
            )
            .await
            .unwrap();
        // pg_stat_statements turns the constant into $1, whose type cannot be
        // inferred any more.
        self.client
            .simple_query("SELECT count(*) FROM accounts WHERE 'x' IS NULL")
            .await
            .unwrap();
        // And a call that becomes ambiguous: generate_series(unknown, unknown).
        self.client
            .simple_query(
                "SELECT count(*) FROM accounts WHERE id IN (SELECT generate_series(1, 3))",
            )
            .await
            .unwrap();
    }
}

const WORKLOAD_SCHEMA: &str = "CREATE SCHEMA \"Stats\";
     CREATE EXTENSION pg_stat_statements SCHEMA \"Stats\";
     CREATE EXTENSION citext SCHEMA public;
     CREATE ROLE app; CREATE ROLE idle_role;
     CREATE SCHEMA shadow;
     CREATE FUNCTION score(int) RETURNS int LANGUAGE sql AS 'SELECT $1';
     CREATE FUNCTION shadow.score(bigint) RETURNS bigint LANGUAGE sql AS 'SELECT $1';
     CREATE TABLE accounts (id int PRIMARY KEY, email text);
     CREATE TABLE legacy (id int PRIMARY KEY, note text);
     CREATE TABLE products (id int PRIMARY KEY, name text);
     CREATE TABLE orders (id int PRIMARY KEY, total numeric);
     INSERT INTO accounts VALUES (1, 'a@example.com');
     INSERT INTO legacy VALUES (1, 'n');
     INSERT INTO products VALUES (1, 'p');
     INSERT INTO orders VALUES (1, 10);
     GRANT SELECT ON ALL TABLES IN SCHEMA public TO app;
     CREATE DOMAIN shadow.email AS text;
     CREATE TABLE shadow.accounts (id int PRIMARY KEY, email shadow.email);
     CREATE TABLE shadow.products (id int PRIMARY KEY, name text);
     CREATE TABLE shadow.orders (id int PRIMARY KEY, total numeric, created_at timestamptz);
     INSERT INTO shadow.accounts VALUES (1, 'a@example.com');
     INSERT INTO shadow.products VALUES (1, 'p');
     INSERT INTO shadow.orders VALUES (1, 10, now());
     GRANT USAGE ON SCHEMA shadow TO app;
     GRANT SELECT ON ALL TABLES IN SCHEMA shadow TO app;
     SELECT \"Stats\".pg_stat_statements_reset();";

/// The swap's moves, by hand: every table of public to a backup, shadow's into public.
const SWAP_BY_HAND: &str = "BEGIN;
     CREATE SCHEMA backup_1;
     ALTER TABLE public.accounts SET SCHEMA backup_1;
     ALTER TABLE public.legacy SET SCHEMA backup_1;
     ALTER TABLE public.products SET SCHEMA backup_1;
     ALTER TABLE public.orders SET SCHEMA backup_1;
     ALTER TABLE shadow.accounts SET SCHEMA public;
     ALTER TABLE shadow.products SET SCHEMA public;
     ALTER TABLE shadow.orders SET SCHEMA public;
     ALTER DOMAIN shadow.email SET SCHEMA public;
     ALTER FUNCTION public.score(int) SET SCHEMA backup_1;
     ALTER FUNCTION shadow.score(bigint) SET SCHEMA public;
     COMMIT;";

fn opts() -> WorkloadOptions {
    WorkloadOptions {
        roles: Vec::new(),
        timeout: Duration::from_secs(30),
        lock_timeout: Duration::from_millis(100),
        ..WorkloadOptions::default()
    }
}

#[tokio::test]
async fn recorded_statements_are_checked_against_the_incoming_schema() {
    let Some(db) = db("workload") else { return };
    db.psql(WORKLOAD_SCHEMA);
    let app = App::start(&db).await;
    app.run().await;
    let c = db.client().await;
    let pairs = public_shadow();

    let logged = cluster().unwrap().log_len();
    let report = impact::check_workload(&c, &pairs, &opts(), &[])
        .await
        .unwrap();
    assert_eq!(
        cluster().unwrap().errors_since(logged, db.name()),
        Vec::<String>::new()
    );
    assert_eq!(report.source, "pg_stat_statements");
    assert_eq!(report.not_checked, None);
    let failing: Vec<(&str, i64, &str)> = report
        .failing
        .iter()
        .map(|f| (f.query.as_str(), f.calls, f.error.as_str()))
        .collect();
    // legacy still exists in the old public while the check runs; it fails anyway.
    assert_eq!(
        failing,
        vec![
            (
                "SELECT count(*) FROM legacy WHERE note::citext = $1",
                1,
                "relation \"legacy\" does not exist"
            ),
            (
                "SELECT note FROM legacy WHERE id = $1",
                1,
                "relation \"legacy\" does not exist"
            )
        ]
    );
    let mut changed: Vec<(&str, i64, Vec<String>)> = report
        .result_type_changed
        .iter()
        .map(|c| (c.query.as_str(), c.calls, c.columns.clone()))
        .collect();
    changed.sort();
    assert_eq!(
        changed,
        vec![
            (
                "SELECT * FROM orders",
                1,
                vec!["created_at: (none) -> timestamp with time zone".to_string()]
            ),
            (
                "SELECT email FROM accounts WHERE id = $1",
                3,
                vec!["email: text -> email".to_string()]
            ),
            (
                "SELECT score(id) FROM products WHERE name::citext = $1",
                1,
                vec!["score: integer -> bigint".to_string()]
            ),
        ]
    );
    let mut unchecked: Vec<&str> = report.unchecked.iter().map(|u| u.query.as_str()).collect();
    unchecked.sort();
    assert_eq!(
        unchecked,
        vec![
            "SELECT count(*) FROM accounts WHERE $1 IS NULL",
            "SELECT count(*) FROM accounts WHERE id IN (SELECT generate_series($1, $2))"
        ]
    );
    assert!(
        report
            .unchecked
            .iter()
            .all(|u| u.reason.contains("cannot be inferred")),
        "{:?}",
        report.unchecked
    );
    // The server's words, as the error gave them (no empty DETAIL or HINT).
    assert!(
        report.unchecked.iter().any(|u| u.reason
            == "a parameter's type cannot be inferred from the recorded text (pg_stat_statements replaces constants by parameters): could not determine data type of parameter $1"),
        "{:?}",
        report.unchecked
    );
    assert_eq!(report.checked, 7, "{report:#?}");
    assert_eq!(
        report.used_objects,
        vec![
            "public.accounts",
            "public.legacy",
            "public.orders",
            "public.products",
            "public.score"
        ]
    );

    // --workload-roles narrows to the application's roles; unknown roles are
    // usage errors.
    let mut o = opts();
    o.roles = vec!["app".into()];
    let only_app = impact::check_workload(&c, &pairs, &o, &[]).await.unwrap();
    assert_eq!(only_app.checked, 7);
    o.roles = vec!["idle_role".into()];
    let none = impact::check_workload(&c, &pairs, &o, &[]).await.unwrap();
    assert_eq!((none.checked, none.unchecked.len()), (0, 0));
    o.roles = vec!["app".into(), "nobody".into()];
    let err = impact::check_workload(&c, &pairs, &o, &[])
        .await
        .unwrap_err();
    assert!(
        err.downcast_ref::<pgshift::UserError>().is_some(),
        "{err:#}"
    );
    assert!(format!("{err:#}").contains("\"nobody\""), "{err:#}");

    // As a role without superuser (a managed cloud's): other roles' statements
    // are hidden until it may read all statistics.
    c.batch_execute(
        "CREATE ROLE checker LOGIN PASSWORD 'checker-pw'; GRANT USAGE ON SCHEMA shadow TO checker;",
    )
    .await
    .unwrap();
    let mut cfg = db.pg_config();
    cfg.user("checker").password("checker-pw");
    let (checker, conn) = cfg.connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    let unreadable = impact::check_workload(&checker, &pairs, &opts(), &[])
        .await
        .unwrap();
    let why = unreadable.not_checked.unwrap_or_default();
    assert!(
        why.starts_with("pg_stat_statements cannot be read")
            && why.contains("permission denied for schema Stats"),
        "{why}"
    );
    c.batch_execute("GRANT USAGE ON SCHEMA \"Stats\" TO checker")
        .await
        .unwrap();
    let hidden = impact::check_workload(&checker, &pairs, &opts(), &[])
        .await
        .unwrap();
    assert_eq!(hidden.checked, 0, "{hidden:#?}");
    assert_eq!(hidden.unchecked.len(), 1, "{hidden:#?}");
    assert_eq!(hidden.unchecked[0].query, "<insufficient privilege>");
    assert!(
        hidden.unchecked[0]
            .reason
            .contains("grant it pg_read_all_stats"),
        "{hidden:#?}"
    );
    // Counted by statement, not by role (each role's hidden statements
    // read alike): the application's alone are more than its roles.
    let counted: usize = hidden.unchecked[0]
        .reason
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_default();
    assert!(counted >= report.checked, "{hidden:#?}");
    c.batch_execute("GRANT pg_read_all_stats TO checker")
        .await
        .unwrap();
    let visible = impact::check_workload(&checker, &pairs, &opts(), &[])
        .await
        .unwrap();
    assert_eq!(
        (
            &visible.failing,
            &visible.result_type_changed,
            visible.checked
        ),
        (&report.failing, &report.result_type_changed, report.checked)
    );

    // The time bound: what is left is reported unchecked.
    let mut o = opts();
    o.timeout = Duration::ZERO;
    let bounded = impact::check_workload(&c, &pairs, &o, &[]).await.unwrap();
    assert_eq!(bounded.checked, 0);
    assert_eq!(bounded.unchecked.len(), 9, "{bounded:#?}");
    assert!(
        bounded
            .unchecked
            .iter()
            .all(|u| u.reason.contains("time bound of 0s was reached")),
        "{bounded:#?}"
    );
    assert_eq!(bounded.used_objects, report.used_objects);

    // A table locked by someone else: that statement is unchecked, quickly,
    // the others are checked.
    let holder = connect_as(&db, "holder").await;
    holder
        .batch_execute("BEGIN; LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = Instant::now();
    let locked = impact::check_workload(&c, &pairs, &opts(), &[])
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let why: Vec<(&str, &str)> = locked
        .unchecked
        .iter()
        .map(|u| (u.query.as_str(), u.reason.as_str()))
        .collect();
    assert_eq!(why.len(), 5, "{why:?}");
    assert!(
        why.iter()
            .any(|(q, r)| *q == "SELECT name FROM products WHERE id = $1"
                && r.contains("lock_timeout")),
        "{why:?}"
    );
    assert_eq!(locked.checked, 4);
    holder.batch_execute("ROLLBACK").await.unwrap();

    // The whole report, and what --fail-on-breaking would refuse.
    let mut full = Impact::collect(
        &c,
        &ImpactRequest {
            pairs: &pairs,
            baseline: None,
            exempt: &[],
            workload: opts(),
            lock_timeout: Duration::from_secs(1),
        },
    )
    .await
    .unwrap();
    full.add_notes();
    let breaking = full.breaking();
    assert!(
        breaking
            .iter()
            .any(|b| b.starts_with("statement will fail (1 call): SELECT note FROM legacy")),
        "{breaking:#?}"
    );
    for hazard in [
        "TABLE_DROPPED public.legacy",
        "FUNCTION_SIGNATURE_CHANGED public.score(integer)",
    ] {
        assert!(
            breaking.iter().any(|b| b.starts_with(hazard)),
            "{breaking:#?}"
        );
    }
    assert_eq!(
        full.summary(),
        "impact: 2 statements will fail, 3 will change result type, 2 breaking schema changes, 2 statements unchecked"
    );
    let json = serde_json::to_value(&full).unwrap();
    for key in [
        "discarded_writes",
        "unknown_writes",
        "hazards",
        "statements",
        "blockers",
    ] {
        assert!(json.get(key).is_some(), "{key} missing in {json}");
    }
    assert_eq!(json["statements"]["failing"][0]["calls"], 1);
    let text = full.render();
    assert!(
        text.contains("relation \"legacy\" does not exist"),
        "{text}"
    );

    // What really happens after the swap, for statements prepared before it.
    db.psql(SWAP_BY_HAND);
    let err = |r: Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>| -> String {
        r.err()
            .and_then(|e| e.as_db_error().map(|d| d.message().to_string()))
            .unwrap_or_default()
    };
    let a = &app;
    assert_eq!(
        err(a.client.query(&a.by_email, &[&1i32]).await),
        "cached plan must not change result type"
    );
    assert_eq!(
        err(a.client.query(&a.all_orders, &[]).await),
        "cached plan must not change result type"
    );
    assert_eq!(
        err(a.client.query(&a.legacy, &[&1i32]).await),
        "relation \"legacy\" does not exist"
    );
    assert_eq!(
        err(a.client.query(&a.legacy_ext, &[&"n"]).await),
        "relation \"legacy\" does not exist"
    );
    assert_eq!(
        err(a.client.query(&a.scored, &[&"p"]).await),
        "cached plan must not change result type"
    );
    assert_eq!(a.client.query(&a.product, &[&1i32]).await.unwrap().len(), 1);
}

#[tokio::test]
async fn types_the_swap_replaces_break_prepared_statements() {
    let Some(db) = db("replaced_types") else {
        return;
    };
    db.psql(
        "CREATE EXTENSION pg_stat_statements;
         CREATE SCHEMA shadow;
         CREATE TYPE mood AS ENUM ('a', 'b');
         CREATE TABLE people (id int, m mood);
         INSERT INTO people VALUES (1, 'a');
         CREATE TYPE shadow.mood AS ENUM ('a', 'b');
         CREATE TABLE shadow.people (id int, m shadow.mood);
         SELECT pg_stat_statements_reset();",
    );
    let app = connect_as(&db, "app").await;
    let returns = app
        .prepare("SELECT m FROM people WHERE id = $1")
        .await
        .unwrap();
    // The server infers the parameter's type: the enum.
    let filters = app
        .prepare("SELECT id FROM people WHERE m = $1")
        .await
        .unwrap();
    app.query(&returns, &[&1i32]).await.unwrap();
    app.query_raw(&filters, std::iter::once(Mood("a")))
        .await
        .unwrap();
    let c = db.client().await;
    let logged = cluster().unwrap().log_len();
    let report = impact::check_workload(&c, &public_shadow(), &opts(), &[])
        .await
        .unwrap();
    assert_eq!(
        cluster().unwrap().errors_since(logged, db.name()),
        Vec::<String>::new()
    );
    let changed: Vec<(&str, &Vec<String>)> = report
        .result_type_changed
        .iter()
        .map(|c| (c.query.as_str(), &c.columns))
        .collect();
    assert_eq!(
        changed,
        vec![(
            "SELECT m FROM people WHERE id = $1",
            &vec![
                "m: mood -> mood (replaced by the incoming schema's type of the same name)"
                    .to_string()
            ]
        )]
    );
    let failing: Vec<(&str, &str)> = report
        .failing
        .iter()
        .map(|f| (f.query.as_str(), f.error.as_str()))
        .collect();
    assert_eq!(failing.len(), 1, "{report:#?}");
    assert_eq!(failing[0].0, "SELECT id FROM people WHERE m = $1");
    assert!(
        // The type named where the swap puts it, as the server will name it
        // (it read `mood = public.mood`, as if public kept it).
        failing[0].1.starts_with("when prepared before the swap (its parameter types mood then belong to the backup schema): operator does not exist: mood = backup_<unix ms>.mood"),
        "{failing:?}"
    );

    // And that is what happens.
    db.psql(
        "BEGIN; CREATE SCHEMA backup_1;
         ALTER TABLE public.people SET SCHEMA backup_1; ALTER TYPE public.mood SET SCHEMA backup_1;
         ALTER TABLE shadow.people SET SCHEMA public; ALTER TYPE shadow.mood SET SCHEMA public;
         COMMIT;",
    );
    let e = app.query(&returns, &[&1i32]).await.unwrap_err();
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "cached plan must not change result type"
    );
    let e = app
        .query_raw(&filters, std::iter::once(Mood("a")))
        .await
        .err()
        .expect("the prepared statement fails after the swap");
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .starts_with("operator does not exist: mood = backup_1.mood"),
        "{e:?}"
    );
}

/// An enum value sent as text (the server knows the parameter's type).
#[derive(Debug)]
struct Mood(&'static str);

impl tokio_postgres::types::ToSql for Mood {
    fn to_sql(
        &self,
        _ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(tokio_postgres::types::IsNull::No)
    }
    fn accepts(_ty: &tokio_postgres::types::Type) -> bool {
        true
    }
    tokio_postgres::types::to_sql_checked!();
}

#[tokio::test]
async fn without_pg_stat_statements_the_workload_is_not_checked() {
    let Some(db) = db("no_pgss") else { return };
    db.psql("CREATE SCHEMA shadow; CREATE TABLE accounts (id int);");
    let c = db.client().await;
    let r = impact::check_workload(&c, &public_shadow(), &opts(), &[])
        .await
        .unwrap();
    assert_eq!(r.source, "none");
    let why = r.not_checked.unwrap();
    assert!(why.contains("pg_stat_statements is not installed"), "{why}");
    assert!(why.contains("shared_preload_libraries"), "{why}");
    assert!(why.contains("CREATE EXTENSION pg_stat_statements"), "{why}");
}

#[tokio::test]
async fn the_report_never_blocks_a_pgbench_load() {
    let Some(db) = db("pgbench") else { return };
    db.psql(
        "CREATE EXTENSION pg_stat_statements;
         CREATE SCHEMA shadow;
         CREATE TABLE accounts (id int PRIMARY KEY, email text, hits int NOT NULL DEFAULT 0);
         INSERT INTO accounts SELECT g, 'a' || g FROM generate_series(1, 1000) g;
         CREATE TABLE history (id bigserial PRIMARY KEY, account int, at timestamptz DEFAULT now());
         CREATE DOMAIN shadow.email AS text;
         CREATE TABLE shadow.accounts (id int PRIMARY KEY, email shadow.email, hits int NOT NULL DEFAULT 0);
         CREATE TABLE shadow.history (id bigserial PRIMARY KEY, account int, at timestamptz DEFAULT now());",
    );
    let c = db.client().await;
    let pairs = public_shadow();
    let base = impact::take_baseline(&c, &impact::live_schemas(&pairs))
        .await
        .unwrap();
    let checker_pid = common::backend_pid(&c).await;

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app.sql");
    std::fs::write(
        &script,
        "\\set id random(1, 1000)\n\
         SELECT email FROM accounts WHERE id = :id;\n\
         UPDATE accounts SET hits = hits + 1 WHERE id = :id;\n\
         INSERT INTO history (account) VALUES (:id);\n",
    )
    .unwrap();
    let mut cmd = db.client_command("pgbench");
    cmd.env("PGAPPNAME", "pgbench-app")
        .args([
            "-n", "-M", "prepared", "-c", "4", "-j", "2", "-T", "6", "-f",
        ])
        .arg(&script)
        .arg(db.name())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let pgbench = cmd.spawn().expect("start pgbench");

    // Sample who blocks pgbench's backends, and what the checker holds.
    let sampler = connect_as(&db, "sampler").await;
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let samples = std::sync::Arc::new(AtomicUsize::new(0));
    let sampling = {
        let done = done.clone();
        let samples = samples.clone();
        tokio::spawn(async move {
            let mut blocked_by_checker = Vec::new();
            let mut exclusive = 0;
            while !done.load(Ordering::Relaxed) {
                let rows = sampler
                    .query(
                        "SELECT a.pid, pg_blocking_pids(a.pid) FROM pg_stat_activity a
                          WHERE a.application_name = 'pgbench-app'",
                        &[],
                    )
                    .await
                    .unwrap();
                for r in rows {
                    let blockers: Vec<i32> = r.get(1);
                    if blockers.contains(&checker_pid) {
                        blocked_by_checker.push(r.get::<_, i32>(0));
                    }
                }
                let n: i64 = sampler
                    .query_one(
                        "SELECT count(*) FROM pg_locks WHERE pid = $1 AND mode = 'AccessExclusiveLock'",
                        &[&checker_pid],
                    )
                    .await
                    .unwrap()
                    .get(0);
                exclusive += n;
                samples.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (blocked_by_checker, exclusive)
        })
    };

    // Let pgbench's statements reach pg_stat_statements, then report in a loop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut pgbench = pgbench;
    let mut reports = Vec::new();
    while pgbench.try_wait().unwrap().is_none() {
        let r = Impact::collect(
            &c,
            &ImpactRequest {
                pairs: &pairs,
                baseline: Some(&base),
                exempt: &[],
                workload: opts(),
                lock_timeout: Duration::from_secs(1),
            },
        )
        .await
        .unwrap();
        reports.push(r);
    }
    done.store(true, Ordering::Relaxed);
    let (blocked, exclusive) = sampling.await.unwrap();
    let out = pgbench.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains("number of failed transactions")
            || stdout.contains("number of failed transactions: 0 "),
        "{stdout}"
    );
    assert!(
        blocked.is_empty(),
        "pgbench backends waited on the report: {blocked:?}"
    );
    assert_eq!(exclusive, 0, "the report took ACCESS EXCLUSIVE locks");
    assert!(samples.load(Ordering::Relaxed) > 50);
    assert!(reports.len() >= 2, "{} reports", reports.len());
    let last = reports.last().unwrap();
    // It really checked pgbench's statements, and saw its writes.
    assert!(
        last.statements
            .result_type_changed
            .iter()
            .any(|s| s.query == "SELECT email FROM accounts WHERE id = $1"),
        "{:#?}",
        last.statements
    );
    let written: Vec<&str> = last
        .discarded_writes
        .iter()
        .map(|d| d.table.as_str())
        .collect();
    assert!(
        written.contains(&"accounts") && written.contains(&"history"),
        "{written:?}"
    );
}

/// A blocker as (pid, application_name, state, tables).
type Seen<'a> = (i32, &'a str, &'a str, Vec<String>);

#[tokio::test]
async fn long_transactions_and_idle_sessions_are_blockers() {
    let Some(db) = db("blockers") else { return };
    db.psql(
        "CREATE SCHEMA shadow; CREATE TABLE accounts (id int); CREATE TABLE orders (id int);
         CREATE TABLE shadow.accounts (id int);",
    );
    let idle = connect_as(&db, "app-idle").await;
    idle.batch_execute("BEGIN").await.unwrap();
    idle.batch_execute("SELECT count(*) FROM accounts")
        .await
        .unwrap();
    let idle_no_lock = connect_as(&db, "app-idle-no-lock").await;
    idle_no_lock.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let busy = connect_as(&db, "app-busy").await;
    busy.batch_execute("BEGIN; LOCK TABLE orders IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let busy_query = tokio::spawn(async move {
        let _ = busy.batch_execute("SELECT pg_sleep(60)").await;
        busy
    });
    let ours = connect_as(&db, "pgshift swap").await;
    ours.batch_execute("BEGIN; SELECT count(*) FROM accounts")
        .await
        .unwrap();
    let sleeper = connect_as(&db, "app-short").await;
    let sleeping = tokio::spawn(async move {
        let _ = sleeper.batch_execute("SELECT pg_sleep(60)").await;
        sleeper
    });
    let pid_of = |app: &'static str| {
        let db = &db;
        async move {
            let c = db.client().await;
            let r = c
                .query_one(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                    &[&app],
                )
                .await
                .unwrap();
            r.get::<_, i32>(0)
        }
    };
    let c = db.client().await;
    // Wait until both sleeps run and the transactions are older than the lock timeout.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the sleeps did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let b = impact::blockers(&c, &public_shadow(), Duration::from_millis(100))
        .await
        .unwrap();
    let seen: Vec<Seen> = b
        .iter()
        .map(|b| {
            (
                b.pid,
                b.application_name.as_str(),
                b.state.as_str(),
                b.tables.clone(),
            )
        })
        .collect();
    let (p_idle, p_no_lock, p_busy) = (
        pid_of("app-idle").await,
        pid_of("app-idle-no-lock").await,
        pid_of("app-busy").await,
    );
    assert_eq!(
        seen,
        vec![
            (
                p_idle,
                "app-idle",
                "idle in transaction",
                vec!["accounts".to_string()]
            ),
            (p_no_lock, "app-idle-no-lock", "idle in transaction", vec![]),
            (p_busy, "app-busy", "active", vec!["orders".to_string()]),
        ]
    );
    let first = &b[0];
    assert_eq!(first.query, "SELECT count(*) FROM accounts");
    assert_eq!(first.client_addr.as_deref(), Some("127.0.0.1"));
    assert_eq!(first.role, common::SUPERUSER);
    assert!(first.xact_age_ms >= 300, "{first:?}");
    assert!(!first.waiting);

    // A transaction younger than the lock timeout does not hold the swap up,
    // nor one idle for less (a busy application's transactions are idle
    // between their statements: they were all listed).
    let b = impact::blockers(&c, &public_shadow(), Duration::from_secs(3600))
        .await
        .unwrap();
    let pids: Vec<i32> = b.iter().map(|b| b.pid).collect();
    assert_eq!(pids, Vec::<i32>::new());

    // A role without pg_read_all_stats sees none of those sessions as
    // blockers; it is told so, with the pids and tables pg_locks shows it.
    db.psql(&common::create_role(
        "blockers_watcher",
        "LOGIN PASSWORD 'watch-pw'",
    ));
    let mut cfg = db.pg_config();
    cfg.user("blockers_watcher").password("watch-pw");
    let (watcher, conn) = cfg.connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    let unseen = impact::blockers(&watcher, &public_shadow(), Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(unseen, Vec::new());
    let note = impact::hidden_sessions(&watcher, &public_shadow())
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no note"));
    for needle in [
        format!("pid {p_idle} ({}, app-idle) on accounts", common::SUPERUSER),
        format!("pid {p_busy} ({}, app-busy) on orders", common::SUPERUSER),
        "grant this role pg_read_all_stats".to_string(),
    ] {
        assert!(note.contains(&needle), "{needle}: {note}");
    }
    assert!(!note.contains("pgshift swap"), "{note}");
    // Those in a transaction: not the idle sessions (this test's own).
    assert!(
        note.starts_with("4 transactions of other roles open in this database are hidden"),
        "{note}"
    );
    assert_eq!(
        impact::hidden_sessions(&c, &public_shadow()).await.unwrap(),
        None
    );
    drop(watcher);

    c.batch_execute(
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'",
    )
    .await
    .unwrap();
    let _ = busy_query.await;
    let _ = sleeping.await;
}

#[tokio::test]
async fn statements_pg_stat_statements_evicted_are_reported() {
    if !can_start_clusters() {
        return;
    }
    // The smallest pg_stat_statements.max: 250 distinct statements overflow it.
    let small = Cluster::start_with(
        "impact_small_pgss",
        "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.max = 100",
    );
    let db = small.create_db("impact", "evicted");
    db.psql("CREATE EXTENSION pg_stat_statements; CREATE SCHEMA shadow; CREATE TABLE accounts (id int);");
    let c = db.client().await;
    let before = impact::check_workload(&c, &public_shadow(), &opts(), &[])
        .await
        .unwrap();
    assert!(
        before.unchecked.iter().all(|u| u.query != "<evicted>"),
        "{:?}",
        before.unchecked
    );
    if db.server_major() < 14 {
        println!(
            "skipped on PostgreSQL {}: evictions (pg_stat_statements_info, from 14 on)",
            db.server_major()
        );
        return;
    }
    for i in 0..250 {
        c.batch_execute(&format!("CREATE TABLE evict_{i} (id int)"))
            .await
            .unwrap();
    }
    let after = impact::check_workload(&c, &public_shadow(), &opts(), &[])
        .await
        .unwrap();
    let evicted = after
        .unchecked
        .iter()
        .find(|u| u.query == "<evicted>")
        .unwrap_or_else(|| panic!("no eviction reported: {:?}", after.unchecked));
    assert!(
        evicted.reason.contains("pg_stat_statements.max (100)"),
        "{}",
        evicted.reason
    );
}

/// An INSERT that leaves out a column the incoming table requires (a new NOT
/// NULL column without a default) parses and describes after the swap, and
/// fails on every call: Airflow 2.8's `INSERT INTO dag (…)` against 2.10's
/// `max_consecutive_failed_dag_runs`. Named or positional, it is a failing
/// statement; a default, an identity, a domain's default or a BEFORE INSERT
/// trigger that may fill it in are not.
#[tokio::test]
async fn an_insert_that_leaves_out_a_new_required_column_fails() {
    let Some(db) = db("insert_required") else {
        return;
    };
    db.psql(
        "CREATE SCHEMA \"Stats\";
         CREATE EXTENSION pg_stat_statements SCHEMA \"Stats\";
         CREATE SCHEMA shadow;
         CREATE TABLE dag (id int PRIMARY KEY, name text);
         CREATE TABLE shadow.dag (id int PRIMARY KEY, name text, max_runs int NOT NULL);
         CREATE TABLE note (id int PRIMARY KEY, body text);
         CREATE TABLE shadow.note (id int PRIMARY KEY, body text, lang text NOT NULL);
         CREATE TABLE job (id int PRIMARY KEY);
         CREATE TABLE shadow.job (id int PRIMARY KEY, state text NOT NULL);
         CREATE FUNCTION shadow.fill() RETURNS trigger LANGUAGE plpgsql
             AS 'BEGIN NEW.state := ''new''; RETURN NEW; END';
         CREATE TRIGGER fill BEFORE INSERT ON shadow.job FOR EACH ROW EXECUTE FUNCTION shadow.fill();
         CREATE DOMAIN shadow.positive AS int DEFAULT 1 NOT NULL;
         CREATE TABLE run (id int PRIMARY KEY);
         CREATE TABLE shadow.run (id int PRIMARY KEY, tries int NOT NULL DEFAULT 0,
                                  seq int GENERATED ALWAYS AS IDENTITY, weight shadow.positive);
         SELECT \"Stats\".pg_stat_statements_reset();",
    );
    let app = connect_as(&db, "app").await;
    for sql in [
        "INSERT INTO dag (id, name) VALUES (1, 'a')",
        "INSERT INTO note VALUES (1, 'x')",
        "INSERT INTO job (id) VALUES (1)",
        "INSERT INTO run (id) VALUES (1)",
    ] {
        app.simple_query(sql).await.unwrap();
    }
    let c = db.client().await;
    let report = impact::check_workload(&c, &public_shadow(), &opts(), &[])
        .await
        .unwrap();
    let mut failing: Vec<(&str, &str)> = report
        .failing
        .iter()
        .map(|f| (f.query.as_str(), f.error.as_str()))
        .collect();
    failing.sort();
    assert_eq!(
        failing,
        vec![
            (
                "INSERT INTO dag (id, name) VALUES ($1, $2)",
                "null value in column \"max_runs\" of relation \"dag\" violates not-null constraint (the statement does not set it, and it has no default)"
            ),
            (
                "INSERT INTO note VALUES ($1, $2)",
                "null value in column \"lang\" of relation \"note\" violates not-null constraint (the statement does not set it, and it has no default)"
            ),
        ],
        "{report:#?}"
    );
    assert_eq!(report.checked, 4, "{report:#?}");
}
