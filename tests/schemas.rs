//! Several schemas in one migration (`--schemas public,billing`), against real
//! clusters: both schemas get exactly the source's DDL and rows with every
//! cross-schema reference pointing at the new live schemas; one backup holds
//! them all (list, verify, rollback both ways, cleanup); a failure in any
//! phase or swap point leaves every destination schema as it was; a
//! preserved table in `billing` stays in sync under concurrent writers; bad
//! input is refused with exit 2 and changes nothing.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::writers::{WrittenTable, assert_no_writer_errors, start_writers, sync_phase_window};
use common::{
    PREPARE_PHASES, TestDb, TestDbs, Workdir, assert_success, assert_usage_error,
    catalog_fingerprint, normalised_dump, schema_ddl, schema_fingerprint, stderr_of,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn parse(what: &str, out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{what}: not JSON ({e}):\n{out}"))
}

/// Run pgshift with `args` plus `--json`, assert it succeeded, parse stdout.
fn run_json(wd: &Workdir, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    parse(&format!("{args:?}"), &wd.run_ok(&a))
}

/// `prepare <extra> --json` between the pair (public only), which must
/// succeed: its report.
fn prepare_json(wd: &Workdir, dbs: &TestDbs, extra: &[&str]) -> Value {
    let out = wd.prepare(dbs, &[extra, &["--json"]].concat());
    parse("prepare", &assert_success(&out))
}

/// A source and a destination named `name`, each given `ddl`.
fn same_on_both(name: &str, ddl: &str) -> TestDbs {
    let dbs = TestDbs::new(name);
    dbs.src.psql(ddl);
    dbs.dst.psql(ddl);
    dbs
}

/// The fingerprints (DDL and row counts) of public and billing.
fn both_fingerprints(db: &TestDb) -> (String, String) {
    (
        schema_fingerprint(db, "public"),
        schema_fingerprint(db, "billing"),
    )
}

/// `start --schemas public,billing <extra> --json` between the pair.
fn start_two(wd: &Workdir, dbs: &TestDbs, extra: &[&str]) -> Value {
    run_two(wd, dbs, "start", extra)
}

/// `<command> --schemas public,billing <extra> --json` between the pair.
fn run_two(wd: &Workdir, dbs: &TestDbs, command: &str, extra: &[&str]) -> Value {
    run_schemas(wd, dbs, command, "public,billing", extra)
}

/// `<command> --schemas <schemas> <extra> --json` between the pair.
fn run_schemas(wd: &Workdir, dbs: &TestDbs, command: &str, schemas: &str, extra: &[&str]) -> Value {
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let mut args = vec![
        command,
        "--source",
        &src,
        "--dest",
        &dst,
        "--schemas",
        schemas,
    ];
    args.extend_from_slice(extra);
    run_json(wd, &args)
}

/// `rollback --dest dst --timestamp ts --dry-run --json`, which must succeed.
fn rollback_plan(wd: &Workdir, dst: &str, ts: &str) -> Value {
    run_json(
        wd,
        &["rollback", "--dest", dst, "--timestamp", ts, "--dry-run"],
    )
}

/// A rollback dry run's writes: none discarded, `table`'s unknown for
/// `reason`, and no other.
fn assert_only_unknown(plan: &Value, table: &str, reason: &str) {
    assert_eq!(plan["rollback"]["discarded_writes"], json!([]), "{plan}");
    assert_eq!(
        plan["rollback"]["unknown_writes"],
        json!([{ "table": table, "reason": reason }]),
        "{plan}"
    );
}

/// Far in the future, for `cleanup --before`.
fn far_future() -> String {
    (Utc::now() + chrono::Duration::days(1))
        .timestamp_millis()
        .to_string()
}

fn schema_exists(db: &TestDb, schema: &str) -> bool {
    db.query_one_string(&format!(
        "SELECT count(*) FROM pg_namespace WHERE nspname = '{schema}'"
    )) == "1"
}

/// The ordinary tables of `schema`, comma-separated ("" when none or no schema).
fn tables_of(db: &TestDb, schema: &str) -> String {
    db.query_one_string(&format!(
        "SELECT coalesce(string_agg(c.relname, ',' ORDER BY c.relname), '') FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = '{schema}' AND c.relkind IN ('r', 'p')"
    ))
}

/// Relations and functions left in `schema` (tables, views, indexes, sequences, routines).
fn objects_in(db: &TestDb, schema: &str) -> String {
    db.query_one_string(&format!(
        "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '{schema}')
              + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = '{schema}')"
    ))
}

/// Every table of `schema` with its row count and a digest of its rows
/// (`table:count:md5`), schema-independent so a backup compares with a live schema.
fn data_of(db: &TestDb, schema: &str) -> Vec<String> {
    let tables = tables_of(db, schema);
    tables
        .split(',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            let q = format!("\"{schema}\".\"{t}\"");
            let v = db.query_one_string(&format!(
                "SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM {q} x"
            ));
            format!("{t}:{v}")
        })
        .collect()
}

/// pgshift's shadows left on the destination: `shadow` and `pgshift_shadow_*`.
fn shadows_left(db: &TestDb) -> String {
    db.query_one_string(
        "SELECT coalesce(string_agg(nspname, ',' ORDER BY nspname), '') FROM pg_namespace
          WHERE nspname = 'shadow' OR nspname LIKE 'pgshift\\_shadow\\_%'",
    )
}

/// Backup schemas on the destination.
fn backups_left(db: &TestDb) -> String {
    db.query_one_string(
        "SELECT coalesce(string_agg(nspname, ',' ORDER BY nspname), '') FROM pg_namespace
          WHERE nspname LIKE 'backup\\_%'",
    )
}

/// `schema` of the destination has exactly the source's DDL (pg_dump of both,
/// compared entry by entry) and rows.
fn assert_same_schema(src: &TestDb, dst: &TestDb, schema: &str) {
    let a = normalised_dump(src, schema);
    let b = normalised_dump(dst, schema);
    if a != b {
        let sa: BTreeSet<&String> = a.iter().collect();
        let sb: BTreeSet<&String> = b.iter().collect();
        let only = |x: &BTreeSet<&String>, y: &BTreeSet<&String>| {
            x.difference(y)
                .take(6)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "schema {schema}: the destination's DDL differs from the source's.\n--- only in source:\n{}\n--- only in destination:\n{}",
            only(&sa, &sb),
            only(&sb, &sa)
        );
    }
    assert_eq!(
        data_of(dst, schema),
        data_of(src, schema),
        "schema {schema}: rows differ"
    );
}

/// The `schemas` of a `list --json` row as `live=backup` strings.
fn schema_pairs(row: &Value) -> Vec<String> {
    row["schemas"]
        .as_array()
        .unwrap_or_else(|| panic!("no schemas array in {row}"))
        .iter()
        .map(|s| {
            format!(
                "{}={}",
                s["live"].as_str().unwrap(),
                s["backup"].as_str().unwrap()
            )
        })
        .collect()
}

fn list(wd: &Workdir, db: &TestDb) -> Vec<Value> {
    run_json(wd, &["list", "--dest", &db.url()])
        .as_array()
        .expect("list --json prints an array")
        .clone()
}

fn sorted_strings(v: &Value) -> Vec<String> {
    let mut names: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------
// 1. start, list, verify, rollback (both ways), tampering, cleanup
// ---------------------------------------------------------------------------------------

/// v2 on the source: public and billing referencing each other in every way.
const SRC_V2: &str = "
    CREATE SCHEMA billing;
    CREATE TYPE billing.currency AS ENUM ('EUR', 'USD');
    CREATE DOMAIN public.amount AS numeric(12,2) CHECK (VALUE >= 0);
    CREATE FUNCTION public.vat(numeric) RETURNS numeric LANGUAGE sql IMMUTABLE AS $$ SELECT round($1 * 1.2, 2) $$;
    -- a public column of a type from billing
    CREATE TABLE public.accounts (id int PRIMARY KEY, name text NOT NULL,
                                  currency billing.currency NOT NULL DEFAULT 'EUR');
    -- a billing foreign key to public, a billing column of a type from public
    CREATE TABLE billing.invoices (id serial PRIMARY KEY, account_id int NOT NULL REFERENCES public.accounts (id),
                                   amount public.amount NOT NULL);
    CREATE INDEX invoices_account ON billing.invoices (account_id);
    CREATE TABLE billing.payments (id serial PRIMARY KEY, invoice_id int NOT NULL REFERENCES billing.invoices (id),
                                   paid public.amount NOT NULL);
    -- a public default from a billing sequence, a public foreign key to billing
    CREATE SEQUENCE billing.order_no;
    CREATE TABLE public.orders (id bigint PRIMARY KEY DEFAULT nextval('billing.order_no'),
                                account_id int NOT NULL REFERENCES public.accounts (id),
                                invoice_id int REFERENCES billing.invoices (id));
    -- a public view over billing
    CREATE VIEW public.account_totals AS
        SELECT a.name, count(i.id) AS invoices, sum(i.amount) AS total
          FROM public.accounts a JOIN billing.invoices i ON i.account_id = a.id GROUP BY a.name;
    -- billing functions calling public.vat(): an SQL-standard body (bound at creation) and a string body
    CREATE FUNCTION billing.with_vat(x numeric) RETURNS numeric LANGUAGE sql IMMUTABLE
        BEGIN ATOMIC SELECT public.vat(x); END;
    CREATE FUNCTION billing.account_total(acc int) RETURNS numeric LANGUAGE sql STABLE
        AS $$ SELECT public.vat(sum(amount)) FROM billing.invoices WHERE account_id = acc $$;
    INSERT INTO public.accounts
        SELECT g, 'acc' || g, (CASE WHEN g % 3 = 0 THEN 'USD' ELSE 'EUR' END)::billing.currency
          FROM generate_series(1, 30) g;
    INSERT INTO billing.invoices (account_id, amount) SELECT g % 30 + 1, g FROM generate_series(1, 100) g;
    INSERT INTO billing.payments (invoice_id, paid) SELECT g, g FROM generate_series(1, 40) g;
    INSERT INTO public.orders (account_id, invoice_id) SELECT g % 30 + 1, g FROM generate_series(1, 60) g;";

/// [`SRC_V2`] for `db`'s server: before 14, which has no SQL-standard function
/// bodies, `billing.with_vat` has a string body.
fn src_v2(db: &TestDb) -> String {
    let atomic = "BEGIN ATOMIC SELECT public.vat(x); END;";
    assert!(SRC_V2.contains(atomic));
    if db.server_major() >= 14 {
        return SRC_V2.to_string();
    }
    println!(
        "skipped on PostgreSQL {}: billing.with_vat's SQL-standard body (BEGIN ATOMIC, from 14 on); it has a string body",
        db.server_major()
    );
    SRC_V2.replace(atomic, "AS $$ SELECT public.vat(x) $$;")
}

/// v1 on the destination: an older public and an older billing (other columns,
/// fewer tables, an older public.vat).
const DST_V1: &str = "
    CREATE SCHEMA billing;
    CREATE FUNCTION public.vat(numeric) RETURNS numeric LANGUAGE sql IMMUTABLE AS $$ SELECT round($1 * 1.1, 2) $$;
    CREATE TABLE public.accounts (id int PRIMARY KEY, name text NOT NULL);
    CREATE TABLE public.orders (id serial PRIMARY KEY, account_id int NOT NULL REFERENCES public.accounts (id));
    CREATE TABLE billing.invoices (id int PRIMARY KEY, account_id int NOT NULL REFERENCES public.accounts (id),
                                   total numeric NOT NULL);
    INSERT INTO public.accounts SELECT g, 'old' || g FROM generate_series(1, 10) g;
    INSERT INTO public.orders (account_id) SELECT g FROM generate_series(1, 5) g;
    INSERT INTO billing.invoices SELECT g, g, g * 10 FROM generate_series(1, 7) g;";

/// What the cross-schema objects answer (the same on the source and on a
/// correctly migrated destination).
fn cross_schema_answers(db: &TestDb) -> String {
    db.query_one_string(
        "SELECT billing.with_vat(100) || ' ' || billing.account_total(1) || ' '
                || (SELECT string_agg(name || '=' || invoices || '/' || total, ',' ORDER BY name) FROM account_totals) || ' '
                || (SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef
                     WHERE adrelid = 'public.orders'::regclass AND adnum = 1) || ' '
                || (SELECT last_value FROM billing.order_no) || ' '
                || (SELECT atttypid::regtype::text FROM pg_attribute
                     WHERE attrelid = 'public.accounts'::regclass AND attname = 'currency')",
    )
}

#[test]
fn two_schemas_start_list_verify_rollback_cleanup() {
    let dbs = TestDbs::new("sch_cycle");
    dbs.src.psql(&src_v2(&dbs.src));
    dbs.dst.psql(DST_V1);
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    let old = both_fingerprints(&dbs.dst);
    let old_pub_data = data_of(&dbs.dst, "public");
    let old_bill_data = data_of(&dbs.dst, "billing");
    let answers = cross_schema_answers(&dbs.src);
    // The source's own answers, so the comparison below means something.
    assert!(
        answers.starts_with("120.00 "),
        "source's billing.with_vat(100): {answers}"
    );
    assert!(
        answers.contains("acc1=3/")
            && answers.contains(" nextval('billing.order_no'::regclass) 60 billing.currency"),
        "{answers}"
    );

    let started = start_two(&wd, &dbs, &["--swap-mode", "object"]);
    assert_eq!(
        started["swap"]["swap_mode"], "object",
        "{}",
        started["swap"]
    );
    assert_eq!(
        sorted_strings(&started["prepare"]["schemas"]),
        ["billing", "public"],
        "{}",
        started["prepare"]
    );
    let prepared_tables: Vec<String> = started["prepare"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(tn)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        prepared_tables,
        ["accounts", "billing.invoices", "billing.payments", "orders"],
        "prepare's tables: public's bare, the others qualified"
    );
    let ts = started["swap"]["backup_timestamp"].as_i64().unwrap();
    let b1 = format!("backup_{ts}");
    let b1_billing = format!("backup_{ts}_billing");
    assert_eq!(started["swap"]["backup_schema"], b1.as_str());

    // Both schemas: exactly the source's DDL and rows; every cross-schema
    // reference resolves to the new live schemas.
    assert_same_schema(&dbs.src, &dbs.dst, "public");
    assert_same_schema(&dbs.src, &dbs.dst, "billing");
    assert_eq!(cross_schema_answers(&dbs.dst), answers);
    let new = both_fingerprints(&dbs.dst);

    // list: one backup, both schemas; the backups hold the destination's old objects.
    let backups = list(&wd, &dbs.dst);
    assert_eq!(backups.len(), 1, "{backups:?}");
    let b = &backups[0];
    assert_eq!(b["timestamp"].as_i64(), Some(ts));
    assert_eq!(b["schema"], b1.as_str());
    assert_eq!(b["kind"], "swap");
    assert_eq!(
        schema_pairs(b),
        [format!("public={b1}"), format!("billing={b1_billing}")]
    );
    assert_eq!(b["tables"], 3, "{b}");
    assert_eq!(b["total_rows"], 10 + 5 + 7, "{b}");
    assert_eq!(backups_left(&dbs.dst), format!("{b1},{b1_billing}"));
    assert_eq!(tables_of(&dbs.dst, &b1), "accounts,orders");
    assert_eq!(tables_of(&dbs.dst, &b1_billing), "invoices");
    assert_eq!(data_of(&dbs.dst, &b1), old_pub_data);
    assert_eq!(data_of(&dbs.dst, &b1_billing), old_bill_data);
    assert_eq!(
        dbs.dst.query_one_string(&format!("SELECT {b1}.vat(100)")),
        "110.00"
    );

    // verify: both schemas checked, public's tables bare, billing's qualified.
    let v = run_json(
        &wd,
        &["verify", "--dest", &dst, "--timestamp", &ts.to_string()],
    );
    assert_eq!(v["ok"], true, "{v}");
    let verified: BTreeSet<&str> = v["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        verified,
        BTreeSet::from(["accounts", "billing.invoices", "orders"]),
        "{v}"
    );
    // The billing part, as `list` prints it, names the backup it is part of.
    let out = wd.run(&["verify", "--dest", &dst, "--timestamp", &b1_billing]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains(&format!(
            "if this is one of a backup's other schemas, give {b1} (or {ts})"
        )),
        "{}",
        stderr_of(&out)
    );

    // rollback --latest: the old public and billing back, exactly.
    let r = run_json(&wd, &["rollback", "--dest", &dst, "--latest"]);
    assert_eq!(r["restored_schema"], b1.as_str(), "{r}");
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(both_fingerprints(&dbs.dst), old, "after the rollback");
    assert_eq!(dbs.dst.query_one_string("SELECT vat(100)"), "110.00");
    let b2_ts = r["backup_timestamp"].as_i64().unwrap();
    let b2 = format!("backup_{b2_ts}");
    assert_eq!(r["backup_schema"], b2.as_str(), "{r}");
    // The replaced schemas are one new backup, kind rollback, with both schemas.
    let backups = list(&wd, &dbs.dst);
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(backups[0]["schema"], b2.as_str());
    assert_eq!(backups[0]["kind"], "rollback");
    assert_eq!(backups[0]["restored_from"], b1.as_str());
    assert_eq!(
        schema_pairs(&backups[0]),
        [format!("public={b2}"), format!("billing={b2}_billing")]
    );
    assert_eq!(backups[0]["tables"], 4, "{}", backups[0]);
    assert_eq!(backups_left(&dbs.dst), format!("{b2},{b2}_billing"));
    wd.run_ok(&["verify", "--dest", &dst, "--timestamp", &b2_ts.to_string()]);

    // The rollback is reversible: the migrated version is back, references and all.
    let r2 = run_json(&wd, &["rollback", "--dest", &dst, "--timestamp", &b2]);
    assert_eq!(r2["restored_schema"], b2.as_str(), "{r2}");
    assert_eq!(
        both_fingerprints(&dbs.dst),
        new,
        "after rolling back the rollback"
    );
    assert_same_schema(&dbs.src, &dbs.dst, "public");
    assert_same_schema(&dbs.src, &dbs.dst, "billing");
    assert_eq!(cross_schema_answers(&dbs.dst), answers);
    let b3_ts = r2["backup_timestamp"].as_i64().unwrap().to_string();
    let b3 = format!("backup_{b3_ts}");
    assert_eq!(backups_left(&dbs.dst), format!("{b3},{b3}_billing"));

    // Tampering with either schema of a backup is caught (b3 is not needed any more).
    dbs.dst
        .psql(&format!("DELETE FROM {b3}_billing.invoices WHERE id = 3"));
    let diffs = |expect: usize| -> Vec<String> {
        let out = wd.run(&["verify", "--dest", &dst, "--timestamp", &b3_ts, "--json"]);
        assert_eq!(out.status.code(), Some(3), "verify: {}", stderr_of(&out));
        let v = parse("verify", &String::from_utf8_lossy(&out.stdout));
        assert_eq!(v["ok"], false, "{v}");
        let d: Vec<String> = v["differences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                format!(
                    "{} {} {}->{}",
                    d["table"].as_str().unwrap(),
                    d["kind"].as_str().unwrap(),
                    d["expected"].as_str().unwrap_or("-"),
                    d["actual"].as_str().unwrap_or("-")
                )
            })
            .collect();
        assert_eq!(d.len(), expect, "{v}");
        d
    };
    assert_eq!(diffs(1), ["billing.invoices row_count 7->6"]);
    dbs.dst
        .psql(&format!("DELETE FROM {b3}.orders WHERE id = 2"));
    let d = diffs(2);
    assert!(d.contains(&"orders row_count 5->4".to_string()), "{d:?}");
    assert!(
        d.contains(&"billing.invoices row_count 7->6".to_string()),
        "{d:?}"
    );

    // cleanup drops every schema of the backup; the live schemas stay.
    let c = run_json(
        &wd,
        &[
            "cleanup",
            "--dest",
            &dst,
            "--before",
            &far_future(),
            "--keep-latest",
            "0",
        ],
    );
    let dropped: Vec<&str> = c["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["schema"].as_str().unwrap())
        .collect();
    assert_eq!(dropped, [b3.as_str()], "{c}");
    // The report names every schema it dropped with the backup.
    assert_eq!(
        c["dropped"][0]["schemas"],
        json!([
            {"live": "public", "backup": b3},
            {"live": "billing", "backup": format!("{b3}_billing")}
        ]),
        "{c}"
    );
    assert_eq!(backups_left(&dbs.dst), "");
    assert!(list(&wd, &dbs.dst).is_empty());
    assert_eq!(both_fingerprints(&dbs.dst), new);
}

// ---------------------------------------------------------------------------------------
// 2. A failure anywhere leaves every destination schema as it was
// ---------------------------------------------------------------------------------------

/// public, billing (on both sides), reporting (source only), legacy (destination only).
fn four_schemas(dbs: &TestDbs) {
    dbs.src.psql(
        "CREATE SCHEMA billing; CREATE SCHEMA reporting;
         CREATE TABLE public.accounts (id int PRIMARY KEY, name text);
         CREATE TABLE billing.invoices (id int PRIMARY KEY, account_id int REFERENCES public.accounts (id), amount int);
         CREATE VIEW public.invoice_sums AS SELECT account_id, sum(amount) AS total FROM billing.invoices GROUP BY account_id;
         CREATE TABLE reporting.daily (d date PRIMARY KEY, n int);
         CREATE VIEW reporting.invoice_count AS SELECT count(*) AS n FROM billing.invoices;
         CREATE MATERIALIZED VIEW reporting.totals AS SELECT sum(amount) AS total FROM billing.invoices;
         INSERT INTO public.accounts SELECT g, 'new' || g FROM generate_series(1, 5) g;
         INSERT INTO billing.invoices SELECT g, g % 5 + 1, g FROM generate_series(1, 12) g;
         INSERT INTO reporting.daily SELECT date '2025-01-01' + g, g FROM generate_series(1, 3) g;
         REFRESH MATERIALIZED VIEW reporting.totals;",
    );
    dbs.dst.psql(
        "CREATE SCHEMA billing; CREATE SCHEMA legacy;
         CREATE TABLE public.accounts (id int PRIMARY KEY, name text);
         CREATE TABLE billing.invoices (id int PRIMARY KEY, account_id int REFERENCES public.accounts (id), total int);
         CREATE TABLE legacy.notes (id int PRIMARY KEY, body text);
         CREATE VIEW legacy.note_count AS SELECT count(*) AS n FROM legacy.notes;
         INSERT INTO public.accounts SELECT g, 'old' || g FROM generate_series(1, 3) g;
         INSERT INTO billing.invoices SELECT g, g, g FROM generate_series(1, 2) g;
         INSERT INTO legacy.notes SELECT g, 'note' || g FROM generate_series(1, 4) g;",
    );
}

const FOUR: &str = "public,billing,reporting,legacy";

/// What the destination's applications see of the chosen schemas, in one
/// pg_dump and two queries (this runs after every injected failure): the DDL
/// of public, billing and legacy; every row of their tables (count and
/// digest); and whether a backup schema, the source-only reporting schema or
/// a pgshift trigger exists.
fn live_state(db: &TestDb) -> (String, String, String) {
    let ddl = schema_ddl(db, &["public", "billing", "legacy"]);
    let rows = db.psql(
        "SELECT string_agg(format('%I.%I', n.nspname, c.relname) || ' ' || (xpath('/row/d/text()', query_to_xml(
                   format('SELECT count(*) || '':'' || coalesce(md5(string_agg(x::text, ''|'' ORDER BY x::text)), '''') AS d FROM %I.%I x',
                          n.nspname, c.relname), false, true, '')))[1]::text, ' ' ORDER BY n.nspname, c.relname)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname IN ('public', 'billing', 'legacy') AND c.relkind = 'r'",
    );
    let extras = db.query_one_string(
        "SELECT 'backups=' || coalesce((SELECT string_agg(nspname, ',') FROM pg_namespace WHERE nspname LIKE 'backup\\_%'), '')
                || ',reporting=' || (SELECT count(*) FROM pg_namespace WHERE nspname = 'reporting')
                || ',triggers=' || (SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'pgshift%')",
    );
    (ddl, rows, extras)
}

#[test]
fn two_schemas_failure_in_each_phase_leaves_both_untouched() {
    let dbs = TestDbs::new("sch_fail");
    four_schemas(&dbs);
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let before = live_state(&dbs.dst);
    assert!(
        before.0.contains("CREATE TABLE legacy.notes"),
        "{}",
        before.0
    );
    assert!(before.1.contains("legacy.notes 4:"), "{}", before.1);
    assert_eq!(before.2, "backups=,reporting=0,triggers=0");
    let untouched = |what: &str| {
        let now = live_state(&dbs.dst);
        assert_eq!(
            now.0, before.0,
            "{what}: the DDL of public, billing or legacy changed"
        );
        assert_eq!(
            now.1, before.1,
            "{what}: rows of public, billing or legacy changed"
        );
        assert_eq!(
            now.2, before.2,
            "{what}: a backup, the reporting schema or a trigger appeared"
        );
    };
    let prepare_args = [
        "prepare",
        "--source",
        &src,
        "--dest",
        &dst,
        "--schemas",
        FOUR,
    ];

    for phase in PREPARE_PHASES {
        let wd = Workdir::new();
        let out = wd.run_env(&prepare_args, &[("PGSHIFT_FAILPOINT", phase)]);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{phase}: {err}");
        assert!(err.contains(&format!("phase {phase}")), "{phase}: {err}");
        let last = err.trim_end().lines().last().unwrap_or("");
        assert!(
            last.starts_with("error: prepare failed: phase "),
            "{phase}: {err}"
        );
        untouched(phase);
        // A failed prepare removes its shadows itself (as with public alone).
        assert_eq!(shadows_left(&dbs.dst), "", "{phase}: shadow left");
        assert_eq!(
            dbs.dst.psql(
                "SELECT status || ':' || phase FROM pgshift.migration ORDER BY id DESC LIMIT 1"
            ),
            format!("failed:{phase}")
        );
    }

    // Prepared: every chosen schema in the report and in status.
    let wd = Workdir::new();
    let p = run_json(&wd, &prepare_args);
    assert_eq!(
        sorted_strings(&p["schemas"]),
        ["billing", "legacy", "public", "reporting"],
        "{p}"
    );
    let names: BTreeSet<String> = p["tables"].as_array().unwrap().iter().map(tn).collect();
    let names: BTreeSet<&str> = names.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["accounts", "billing.invoices", "reporting.daily"]),
        "{p}"
    );
    let st = run_json(&wd, &["status", "--dest", &dst]);
    assert_eq!(st["state"], "prepared", "{st}");
    assert_eq!(
        sorted_strings(&st["schemas"]),
        ["billing", "legacy", "public", "reporting"],
        "{st}"
    );
    untouched("after prepare");
    let prepared_shadows = shadows_left(&dbs.dst);
    for s in [
        "shadow",
        "pgshift_shadow_billing",
        "pgshift_shadow_reporting",
    ] {
        assert!(
            prepared_shadows.split(',').any(|x| x == s),
            "no {s} after prepare: {prepared_shadows}"
        );
    }

    // The swap's three points: nothing happens, the migration stays prepared.
    for point in ["swap", "swap-locks", "swap-commit"] {
        let out = wd.run_env(&["swap", "--dest", &dst], &[("PGSHIFT_FAILPOINT", point)]);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{point}: {err}");
        assert!(
            err.contains(&format!("injected failure at {point}")),
            "{point}: {err}"
        );
        untouched(point);
        assert_eq!(
            shadows_left(&dbs.dst),
            prepared_shadows,
            "{point}: shadows changed"
        );
        assert_eq!(
            dbs.dst.psql("SELECT count(*) FROM pgshift.backups"),
            "0",
            "{point}"
        );
        let st = run_json(&wd, &["status", "--dest", &dst]);
        assert_eq!(st["state"], "prepared", "{point}: {st}");
    }
    // A failed swap leaves the prepared shadows for the next swap; abort removes them all.
    wd.run_ok(&["abort", "--dest", &dst]);
    untouched("after abort");
    assert_eq!(shadows_left(&dbs.dst), "", "abort left a shadow");

    // And a clean run: the source-only schema is created, the destination-only
    // one ends empty, its objects in the backup.
    let s = run_json(
        &wd,
        &["start", "--source", &src, "--dest", &dst, "--schemas", FOUR],
    );
    // Every schema can be renamed (the source-only one is simply named).
    assert_eq!(
        s["swap"]["swap_mode"], "rename",
        "{}",
        s["swap"]["swap_mode_reason"]
    );
    let ts = s["swap"]["backup_timestamp"].as_i64().unwrap();
    for schema in ["public", "billing", "reporting"] {
        assert_same_schema(&dbs.src, &dbs.dst, schema);
    }
    assert_eq!(
        dbs.dst.query_one_string(
            "SELECT (SELECT n FROM reporting.invoice_count) || ':' || (SELECT total FROM reporting.totals)
                    || ':' || (SELECT total FROM invoice_sums WHERE account_id = 1)"
        ),
        "12:78:15"
    );
    assert!(
        schema_exists(&dbs.dst, "legacy"),
        "the live legacy schema was dropped"
    );
    assert_eq!(objects_in(&dbs.dst, "legacy"), "0", "legacy is not empty");
    let legacy_backup = format!("backup_{ts}_legacy");
    assert_eq!(tables_of(&dbs.dst, &legacy_backup), "notes");
    assert_eq!(
        dbs.dst
            .query_one_string(&format!("SELECT n FROM {legacy_backup}.note_count")),
        "4"
    );
    let backups = list(&wd, &dbs.dst);
    assert_eq!(backups.len(), 1, "{backups:?}");
    let pairs = schema_pairs(&backups[0]);
    for want in [
        format!("public=backup_{ts}"),
        format!("billing=backup_{ts}_billing"),
        format!("legacy={legacy_backup}"),
    ] {
        assert!(pairs.contains(&want), "{want} not in {pairs:?}");
    }
    wd.run_ok(&["verify", "--dest", &dst, "--timestamp", &ts.to_string()]);
    // The manifest says which live schema the swap created.
    let created: Vec<&str> = backups[0]["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["created"] == true)
        .map(|m| m["live"].as_str().unwrap())
        .collect();
    assert_eq!(created, ["reporting"], "{backups:?}");

    // A rollback leaves the schemas as they were: reporting, which the swap
    // created, is dropped again; rolling that back brings it back, and so on.
    for round in 0..3 {
        let r = run_json(&wd, &["rollback", "--dest", &dst, "--latest"]);
        let back = round % 2 == 1;
        assert_eq!(
            schema_exists(&dbs.dst, "reporting"),
            back,
            "round {round}: {r}"
        );
        if back {
            assert!(r.get("dropped_schemas").is_none(), "{r}");
            assert_eq!(
                dbs.dst
                    .query_one_string("SELECT n FROM reporting.invoice_count"),
                "12"
            );
        } else {
            assert_eq!(r["dropped_schemas"], json!(["reporting"]), "{r}");
            assert_eq!(tables_of(&dbs.dst, "legacy"), "notes");
        }
    }
}

// ---------------------------------------------------------------------------------------
// 3. A preserved table in billing under concurrent writers
// ---------------------------------------------------------------------------------------

/// billing.invoices, written like tests/preserved.rs's users.
const INVOICES: WrittenTable = WrittenTable {
    table: "billing.invoices",
    name: "customer",
    number: "amount",
    sequence: "billing.invoices_id_seq",
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preserved_table_in_billing_stays_in_sync_under_a_concurrent_writer() {
    let rows: i64 = 200_000;
    let dbs = TestDbs::new("sch_race");
    let ddl = "CREATE SCHEMA billing;
               CREATE TABLE public.accounts (id int PRIMARY KEY, name text);
               CREATE TABLE billing.invoices (id serial PRIMARY KEY, customer text NOT NULL, amount int, note text);";
    dbs.src.psql(&format!(
        "{ddl} INSERT INTO public.accounts SELECT g, 'src' FROM generate_series(1, 3) g;
               INSERT INTO billing.invoices (customer) SELECT 'src' || g FROM generate_series(1, 10) g;"
    ));
    dbs.dst.psql(&format!(
        "{ddl} INSERT INTO public.accounts SELECT g, 'dst' FROM generate_series(1, 2) g;
               INSERT INTO billing.invoices (customer, amount, note)
                 SELECT 'dst' || g, g % 100, 'n' FROM generate_series(1, {rows}) g;
               ANALYZE billing.invoices;"
    ));

    let writers = start_writers(&dbs.dst, INVOICES, 3, rows).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let wd = Arc::new(Workdir::new());
    let w = wd.clone();
    let out = tokio::task::spawn_blocking(move || {
        w.run(&[
            "prepare",
            "--source",
            &src,
            "--dest",
            &dst,
            "--schemas",
            "public,billing",
            "--preserved-tables",
            "billing.invoices",
            "--json",
        ])
    })
    .await
    .unwrap();
    let p = parse("prepare", &assert_success(&out));
    let inv = p["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| tn(t) == "billing.invoices")
        .unwrap_or_else(|| panic!("no billing.invoices in {p}"));
    assert_eq!(inv["preserved"], true, "{inv}");
    let c = dbs.dst.client().await;
    let one = |sql: String| {
        let c = &c;
        async move {
            c.query_one(sql.as_str(), &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
                .get::<_, i64>(0)
        }
    };
    assert!(
        one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'billing.invoices'::regclass AND tgname LIKE 'pgshift%'".into()).await
            > 0,
        "no sync trigger on billing.invoices"
    );
    assert_eq!(
        one("SELECT count(*) FROM pg_class WHERE oid = to_regclass('pgshift_shadow_billing.invoices')".into()).await,
        1,
        "no pgshift_shadow_billing.invoices"
    );
    // status names it as written, with its sync's health and text.
    let dst = dbs.dst.url();
    let w = wd.clone();
    let (st, text) = tokio::task::spawn_blocking(move || {
        (
            run_json(&w, &["status", "--dest", &dst]),
            w.run_ok(&["status", "--dest", &dst]),
        )
    })
    .await
    .unwrap();
    let pres = &st["preserved_tables"][0];
    assert_eq!(pres["name"], "billing.invoices", "{st}");
    assert_eq!(pres["health"]["table"], "billing.invoices", "{st}");
    assert_eq!(pres["health"]["triggers_ok"], true, "{st}");
    assert!(
        text.contains("billing.invoices: triggers ok") && text.contains(" in its shadow"),
        "{text}"
    );
    // When the initial copy ran, from the record.
    let (from, to) = sync_phase_window(&c).await;

    // Keep writing after prepare (the changelog grows), then stop and swap.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = writers.stop().await;
    assert_no_writer_errors(&stats);
    let during = stats.assert_wrote_during(from, to);
    let dst = dbs.dst.url();
    let w = wd.clone();
    let s = tokio::task::spawn_blocking(move || run_json(&w, &["swap", "--dest", &dst]))
        .await
        .unwrap();
    assert_eq!(s["preserved_tables"], json!(["billing.invoices"]), "{s}");
    let ts = s["backup_timestamp"].as_i64().unwrap();
    let old = format!("backup_{ts}_billing.invoices");

    // The old table (frozen at the swap) and the new live one: identical.
    let cols = "id, customer, amount, note";
    assert_eq!(
        one(format!(
            "SELECT (SELECT count(*) FROM (SELECT {cols} FROM billing.invoices EXCEPT SELECT {cols} FROM {old}) a)
                  + (SELECT count(*) FROM (SELECT {cols} FROM {old} EXCEPT SELECT {cols} FROM billing.invoices) b)"
        ))
        .await,
        0,
        "billing.invoices differs from the table it replaced"
    );
    assert_eq!(
        one("SELECT count(*) FROM billing.invoices".into()).await,
        one(format!("SELECT count(*) FROM {old}")).await
    );
    assert_ne!(
        one("SELECT 'billing.invoices'::regclass::oid::bigint".into()).await,
        one(format!("SELECT '{old}'::regclass::oid::bigint")).await,
        "the live table was not replaced"
    );
    assert_eq!(
        one("SELECT count(*) FROM billing.invoices WHERE customer LIKE 'src%' OR customer IN ('gone', 'rolled back')".into()).await,
        0
    );
    assert_eq!(
        one(
            "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'pgshift%'"
                .into()
        )
        .await,
        0
    );
    // The public side came from the source; the sequence continues after both sides.
    assert_eq!(
        one("SELECT count(*) FROM public.accounts WHERE name = 'src'".into()).await,
        3
    );
    let max_old = one(format!("SELECT max(id)::bigint FROM {old}")).await;
    let new_id = one(
        "INSERT INTO billing.invoices (customer) VALUES ('after the swap') RETURNING id::bigint"
            .into(),
    )
    .await;
    assert!(new_id > max_old, "new id {new_id} <= {max_old}");
    eprintln!(
        "billing race: {} writes, {during} during the {} ms sync phase",
        stats.ops.load(Ordering::Relaxed),
        to - from
    );
}

// ---------------------------------------------------------------------------------------
// 4. Bad input; table filters and rollback --keep-tables with two schemas
// ---------------------------------------------------------------------------------------

#[test]
fn schemas_usage_errors() {
    let dbs = TestDbs::new("sch_usage");
    dbs.src.psql(
        "CREATE SCHEMA billing; CREATE SCHEMA other;
         CREATE TABLE other.t (id int);
         CREATE TABLE public.accounts (id int PRIMARY KEY, name text);
         CREATE TABLE billing.invoices (id int PRIMARY KEY, account_id int NOT NULL REFERENCES public.accounts (id), amount int);
         CREATE TABLE billing.big_log (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), line text);
         CREATE INDEX big_log_at ON billing.big_log (at);
         INSERT INTO public.accounts SELECT g, 'new' || g FROM generate_series(1, 8) g;
         INSERT INTO billing.invoices SELECT g, g % 5 + 1, g * 10 FROM generate_series(1, 6) g;
         INSERT INTO billing.big_log (line) SELECT 'line ' || g FROM generate_series(1, 500) g;
         CREATE TABLE public.audit (id int PRIMARY KEY, what text);
         INSERT INTO public.audit SELECT g, 'a' || g FROM generate_series(1, 9) g;",
    );
    dbs.dst.psql(
        "CREATE SCHEMA billing; CREATE SCHEMA other;
         CREATE TABLE other.t (id int);
         CREATE TABLE public.accounts (id int PRIMARY KEY, name text);
         CREATE TABLE billing.invoices (id int PRIMARY KEY, account_id int NOT NULL REFERENCES public.accounts (id), amount int);
         INSERT INTO public.accounts SELECT g, 'old' || g FROM generate_series(1, 5) g;
         INSERT INTO billing.invoices SELECT g, g, g FROM generate_series(1, 2) g;",
    );
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let base = ["prepare", "--source", src.as_str(), "--dest", dst.as_str()];
    let two = [&base[..], &["--schemas", "public,billing"]].concat();

    // Refusals: exit 2, one line naming the culprit, nothing changed.
    let before = catalog_fingerprint(&dbs.dst);
    let out = wd.run(&[&base[..], &["--schemas", "public,nope"]].concat());
    assert_usage_error(&out, "nope");
    let out = wd.run_env(&base, &[("PGSHIFT_SCHEMAS", "public,nope")]);
    assert_usage_error(&out, "nope");
    let out = wd.run(&[&two[..], &["--preserved-tables", "other.t"]].concat());
    assert_usage_error(&out, "other");
    let out = wd.run(&[&two[..], &["--exclude-table", "billing.nomatch*"]].concat());
    assert_usage_error(&out, "billing.nomatch*");
    let out = wd.run(&[&two[..], &["--exclude-table-data", "other.t"]].concat());
    assert_usage_error(&out, "other.t");
    assert_eq!(
        catalog_fingerprint(&dbs.dst),
        before,
        "a refused run changed the destination"
    );

    // --keep-tables matches in every chosen schema; a pattern that matches
    // nothing is refused.
    let out = wd.run(&[&two[..], &["--keep-tables", "billing.nope*"]].concat());
    assert_usage_error(&out, "billing.nope*");
    // A chosen schema that uses a schema that is not migrated, and that the
    // destination lacks: the plan warns.
    dbs.src.psql(
        "CREATE SCHEMA lookup; CREATE FUNCTION lookup.rate() RETURNS int LANGUAGE sql AS 'SELECT 2';
         CREATE VIEW billing.rated AS SELECT id, amount * lookup.rate() AS rated FROM billing.invoices;",
    );
    let plan = run_json(
        &wd,
        &[&two[..], &["--dry-run", "--keep-tables", "billing.inv*"]].concat(),
    );
    assert_eq!(
        plan["plan"]["filters"]["keep_tables"],
        json!([{"pattern": "billing.inv*", "tables": ["billing.invoices"]}]),
        "{plan}"
    );
    let warned = plan["plan"]["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w.as_str().unwrap().contains("reference schema lookup"));
    assert!(warned, "no warning about schema lookup: {plan}");
    dbs.src
        .psql("DROP VIEW billing.rated; DROP SCHEMA lookup CASCADE;");
    // A foreign key from billing keeps public's referenced rows in.
    let out = wd.run(&[&two[..], &["--exclude-table-data", "accounts"]].concat());
    assert_usage_error(
        &out,
        "invoices_account_id_fkey of billing.invoices references accounts",
    );
    assert_eq!(
        catalog_fingerprint(&dbs.dst),
        before,
        "a refused run changed the destination"
    );

    // Filters in both schemas: the structure comes, the rows do not.
    let s = start_two(
        &wd,
        &dbs,
        &[
            "--exclude-table-data",
            "audit",
            "--exclude-table-data",
            "billing.big*",
        ],
    );
    let tables = s["prepare"]["tables"].as_array().unwrap();
    let audit = tables
        .iter()
        .find(|t| tn(t) == "audit")
        .unwrap_or_else(|| panic!("no audit in {}", s["prepare"]));
    assert_eq!(audit["rows"], 0, "{audit}");
    assert_eq!(audit["data_excluded"], true, "{audit}");
    let big = tables
        .iter()
        .find(|t| tn(t) == "billing.big_log")
        .unwrap_or_else(|| panic!("no billing.big_log in {}", s["prepare"]));
    assert_eq!(big["rows"], 0, "{big}");
    assert_eq!(big["data_excluded"], true, "{big}");
    assert_eq!(
        s["prepare"]["filters"]["exclude_table_data"],
        json!([
            {"pattern": "audit", "tables": ["audit"]},
            {"pattern": "billing.big*", "tables": ["billing.big_log"]}
        ])
    );
    assert_eq!(
        dbs.dst.query_one_string(
            "SELECT (SELECT count(*) FROM billing.big_log) || ':'
                    || (SELECT count(*) FROM pg_indexes WHERE schemaname = 'billing' AND tablename = 'big_log') || ':'
                    || (SELECT count(*) FROM public.accounts) || ':' || (SELECT count(*) FROM public.audit)"
        ),
        "0:2:8:0"
    );
    let src_ddl = normalised_dump(&dbs.src, "billing");
    assert_eq!(normalised_dump(&dbs.dst, "billing"), src_ddl);

    // rollback --keep-tables billing.invoices: the old schemas back, except
    // that table, which stays live with its rows and now references the old accounts.
    let inv_oid = dbs
        .dst
        .query_one_string("SELECT 'billing.invoices'::regclass::oid");
    let r = run_json(
        &wd,
        &[
            "rollback",
            "--dest",
            &dst,
            "--latest",
            "--keep-tables",
            "billing.invoices",
        ],
    );
    assert_eq!(r["kept_tables"], json!(["billing.invoices"]), "{r}");
    assert_eq!(
        dbs.dst.query_one_string(
            "SELECT 'billing.invoices'::regclass::oid || ':' || (SELECT count(*) FROM billing.invoices)
                    || ':' || (SELECT string_agg(DISTINCT left(name, 3), ',') FROM public.accounts)
                    || ':' || (SELECT confrelid::regclass::text || ' ' || convalidated FROM pg_constraint
                                WHERE conrelid = 'billing.invoices'::regclass AND contype = 'f')"
        ),
        format!("{inv_oid}:6:old:accounts true")
    );
    assert_eq!(
        tables_of(&dbs.dst, "billing"),
        "invoices",
        "big_log left with the migrated version"
    );
    let backups = list(&wd, &dbs.dst);
    assert_eq!(backups[0]["kind"], "rollback", "{backups:?}");
    assert_eq!(
        backups[0]["kept_tables"],
        json!(["billing.invoices"]),
        "{backups:?}"
    );
    // And back: the migrated version of both schemas, the kept table staying.
    let r = run_json(&wd, &["rollback", "--dest", &dst, "--latest"]);
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(
        dbs.dst.query_one_string(
            "SELECT 'billing.invoices'::regclass::oid || ':' || (SELECT count(*) FROM billing.big_log)
                    || ':' || (SELECT string_agg(DISTINCT left(name, 3), ',') FROM public.accounts)"
        ),
        format!("{inv_oid}:0:new")
    );
}

/// A `tables[]` entry of `prepare --json` as one name: public's bare, another
/// schema's qualified (`billing.invoices`). Accepts both shapes: a qualified
/// `name`, or a bare `name` with a `schema` field.
fn tn(t: &Value) -> String {
    match t["schema"].as_str() {
        Some(s) if s != "public" => format!("{s}.{}", t["name"].as_str().unwrap()),
        _ => t["name"].as_str().unwrap().to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// 5. A destination table kept in billing through the swap
// ---------------------------------------------------------------------------------------

#[test]
fn a_table_kept_in_billing_stays_live_through_the_swap() {
    let dbs = TestDbs::new("sch_keep");
    dbs.src.psql(
        "CREATE SCHEMA billing;
         CREATE TABLE public.accounts (id int PRIMARY KEY, name text);
         CREATE TABLE billing.invoices (id int PRIMARY KEY, account_id int REFERENCES public.accounts (id), amount int);
         INSERT INTO public.accounts SELECT g, 'new' || g FROM generate_series(1, 4) g;
         INSERT INTO billing.invoices SELECT g, g % 4 + 1, g FROM generate_series(1, 9) g;",
    );
    dbs.dst.psql(
        "CREATE SCHEMA billing;
         CREATE TABLE public.accounts (id int PRIMARY KEY, name text);
         CREATE TABLE billing.invoices (id int PRIMARY KEY, account_id int, amount int);
         CREATE TABLE billing.notes (id int PRIMARY KEY, invoice_id int REFERENCES billing.invoices (id), line text);
         INSERT INTO public.accounts SELECT g, 'old' || g FROM generate_series(1, 2) g;
         INSERT INTO billing.invoices SELECT g, 1, g FROM generate_series(1, 3) g;
         INSERT INTO billing.notes SELECT g, g, 'note ' || g FROM generate_series(1, 3) g;",
    );
    let notes_oid = dbs
        .dst
        .query_one_string("SELECT 'billing.notes'::regclass::oid");
    let old_invoices = dbs
        .dst
        .query_one_string("SELECT 'billing.invoices'::regclass::oid");
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    let s = start_two(&wd, &dbs, &["--keep-tables", "billing.notes"]);
    assert_eq!(
        s["prepare"]["filters"]["keep_tables"],
        json!([{"pattern": "billing.notes", "tables": ["billing.notes"]}]),
        "{s}"
    );
    // The kept table: same table, same rows, its key re-pointed at the new
    // billing.invoices (validated); the backup has no copy of it.
    assert_eq!(
        dbs.dst.query_one_string(
            "SELECT 'billing.notes'::regclass::oid || ':' || (SELECT count(*) FROM billing.notes)
                    || ':' || (SELECT (confrelid = 'billing.invoices'::regclass) || ' ' || convalidated
                                 FROM pg_constraint WHERE conrelid = 'billing.notes'::regclass AND contype = 'f')
                    || ':' || (SELECT count(*) FROM billing.invoices)"
        ),
        format!("{notes_oid}:3:true true:9")
    );
    assert_ne!(
        dbs.dst
            .query_one_string("SELECT 'billing.invoices'::regclass::oid"),
        old_invoices
    );
    let backups = list(&wd, &dbs.dst);
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(
        backups[0]["kept_tables"],
        json!(["billing.notes"]),
        "{backups:?}"
    );
    let ts = backups[0]["timestamp"].as_i64().unwrap();
    assert_eq!(
        tables_of(&dbs.dst, &format!("backup_{ts}_billing")),
        "invoices"
    );
    wd.run_ok(&["verify", "--dest", &dst, "--timestamp", &ts.to_string()]);
}

/// A kept table of billing that disappears before the swap: the swap refuses,
/// names it as the operator wrote it, and changes nothing.
#[test]
fn a_kept_table_gone_before_the_swap_is_named_as_written() {
    let dbs = TestDbs::new("sch_gone");
    dbs.src.psql(
        "CREATE SCHEMA billing;
         CREATE TABLE public.accounts (id int PRIMARY KEY);
         CREATE TABLE billing.invoices (id int PRIMARY KEY);",
    );
    dbs.dst.psql(
        "CREATE SCHEMA billing;
         CREATE TABLE public.accounts (id int PRIMARY KEY);
         CREATE TABLE billing.invoices (id int PRIMARY KEY);
         CREATE TABLE billing.notes (id int PRIMARY KEY);",
    );
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    run_two(&wd, &dbs, "prepare", &["--keep-tables", "billing.notes"]);
    dbs.dst.psql("DROP TABLE billing.notes");
    let before = catalog_fingerprint(&dbs.dst);
    let out = wd.run(&["swap", "--dest", &dst]);
    assert_usage_error(
        &out,
        "kept tables are no longer there: billing.notes; nothing was changed",
    );
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
}

/// A partitioned table of public whose partitions are in billing: migrating
/// public without billing is refused (the table would be split from its
/// partitions); keeping it
/// (prepare, swap or rollback `--keep-tables`) is refused, naming the
/// partitions, and nothing changes (the swap would take its partitions away
/// with billing). Excluding it (or its rows) takes the partitions along.
/// Without keeping it, it moves whole. And `cleanup` never drops a backup
/// that holds partitions of a live table, or is the parent of live ones. (The dry run's
/// hint of written tables covers billing's partitions too.)
#[test]
fn a_kept_table_with_partitions_in_another_schema_is_refused() {
    let dbs = same_on_both("sch_parts", "CREATE SCHEMA billing;
         CREATE TABLE public.ev (id int NOT NULL, at date NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE billing.ev_2024 PARTITION OF public.ev FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         CREATE TABLE billing.ev_2025 PARTITION OF public.ev FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');");
    dbs.src
        .psql("INSERT INTO ev SELECT g, date '2024-06-01' + g FROM generate_series(1, 60) g");
    dbs.dst
        .psql("INSERT INTO ev SELECT g, date '2025-03-01' + g FROM generate_series(1, 10) g");
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let refusal = "--keep-tables: partitions (or children) of ev are in another schema (billing.ev_2024, billing.ev_2025)";

    // Migrating public without billing would split the table from its partitions.
    assert_usage_error(
        &wd.run(&["prepare", "--source", &src, "--dest", &dst]),
        "--schemas: billing.ev_2024 is a partition (or child) of public.ev, and billing is not migrated (1 more like it); add that schema to --schemas; nothing was changed",
    );

    // The dry run's hint names the partitions written in billing.
    let plan = run_two(&wd, &dbs, "prepare", &["--dry-run"]);
    let written = &plan["plan"]["writes_since_reset"]["tables"];
    assert_eq!(written[0]["table"], "billing.ev_2025", "{plan}");
    assert_eq!(written[0]["inserts"], 10, "{plan}");
    assert_eq!(written[0]["partition_of"], "ev", "{plan}");
    // Each planned table says its schema (absent in public), as prepare's
    // report does.
    let planned = |name: &str| {
        plan["plan"]["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not planned: {plan}"))
    };
    assert_eq!(planned("billing.ev_2025")["schema"], "billing", "{plan}");
    assert_eq!(planned("ev")["schema"], serde_json::Value::Null, "{plan}");

    let before = catalog_fingerprint(&dbs.dst);
    let out = wd.run(&[
        "prepare",
        "--source",
        &src,
        "--dest",
        &dst,
        "--schemas",
        "public,billing",
        "--keep-tables",
        "ev",
    ]);
    assert_usage_error(&out, refusal);
    assert_eq!(catalog_fingerprint(&dbs.dst), before);

    // Excluding it takes its partitions in billing along: no table with
    // --exclude-table, no rows with --exclude-table-data.
    let plan = run_two(
        &wd,
        &dbs,
        "prepare",
        &["--dry-run", "--exclude-table", "ev"],
    );
    assert_eq!(
        plan["plan"]["filters"]["exclude_table"][0]["tables"],
        json!(["billing.ev_2024", "billing.ev_2025", "ev"]),
        "{plan}"
    );
    run_two(&wd, &dbs, "prepare", &["--exclude-table-data", "ev"]);
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT count(*) FROM pgshift_shadow_billing.ev_2024"),
        "0"
    );
    wd.run_ok(&["abort", "--dest", &dst]);

    run_two(&wd, &dbs, "prepare", &[]);
    let prepared = catalog_fingerprint(&dbs.dst);
    assert_usage_error(
        &wd.run(&["swap", "--dest", &dst, "--keep-tables", "ev"]),
        refusal,
    );
    assert_eq!(catalog_fingerprint(&dbs.dst), prepared);
    let swapped = run_json(&wd, &["swap", "--dest", &dst]);
    assert_eq!(dbs.dst.query_one_string("SELECT count(*) FROM ev"), "60");
    let after_swap = catalog_fingerprint(&dbs.dst);
    assert_usage_error(
        &wd.run(&[
            "rollback",
            "--latest",
            "--dest",
            &dst,
            "--keep-tables",
            "ev",
        ]),
        refusal,
    );
    assert_eq!(catalog_fingerprint(&dbs.dst), after_swap);

    // A live table with a partition in the backup (attached by hand): cleanup
    // skips that backup, and the table keeps its rows.
    let old_public = swapped["backup_schema"].as_str().unwrap().to_string();
    let old_billing = swapped["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["live"] == "billing")
        .unwrap()["backup"]
        .as_str()
        .unwrap()
        .to_string();
    dbs.dst.psql(&format!(
        "CREATE TABLE public.archive (id int NOT NULL, at date NOT NULL) PARTITION BY RANGE (at);
         ALTER TABLE \"{old_public}\".ev DETACH PARTITION \"{old_billing}\".ev_2025;
         ALTER TABLE public.archive ATTACH PARTITION \"{old_billing}\".ev_2025
               FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         CREATE TABLE billing.extra PARTITION OF \"{old_public}\".ev
               FOR VALUES FROM ('2030-01-01') TO ('2031-01-01');
         INSERT INTO billing.extra VALUES (1, '2030-05-05');"
    ));
    let cleaned = run_json(&wd, &["cleanup", "--dest", &dst, "--before", &far_future()]);
    assert_eq!(cleaned["dropped"], json!([]), "{cleaned}");
    let reason = cleaned["skipped"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "the rows of table archive in its partition (or child) {old_billing}.ev_2025"
        )),
        "{reason}"
    );
    assert!(
        reason.contains(&format!(
            "table billing.extra (a partition or child of {old_public}.ev)"
        )),
        "{reason}"
    );
    assert_eq!(
        dbs.dst.query_one_string("SELECT count(*) FROM archive"),
        "10"
    );
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT count(*) FROM billing.extra"),
        "1"
    );
}

/// A publication naming a table of another migrated schema is warned about as
/// public's are; `status` counts every shadow's tables, and lists the NOT
/// VALID foreign keys of every live schema of the migration
/// (`schema.table.constraint` outside public).
#[test]
fn publications_and_not_valid_keys_of_other_schemas_are_reported() {
    let dbs = same_on_both(
        "sch_pub",
        "CREATE SCHEMA billing;
         CREATE TABLE public.users (id int PRIMARY KEY);
         CREATE TABLE billing.invoices (id int PRIMARY KEY, user_id int);",
    );
    dbs.dst
        .psql("CREATE PUBLICATION pub_inv FOR TABLE billing.invoices");
    let wd = Workdir::new();
    let plan = run_two(&wd, &dbs, "prepare", &["--dry-run"]);
    assert!(
        sorted_strings(&plan["plan"]["warnings"]).iter().any(|w| w.starts_with(
            "publication pub_inv names billing.invoices; after the swap it will publish the backup's copy"
        )),
        "{plan}"
    );

    // The prepared shadows: both schemas' tables count.
    run_two(&wd, &dbs, "prepare", &[]);
    let st = run_json(&wd, &["status", "--dest", &dbs.dst.url()]);
    assert_eq!(st["shadow"]["tables"], 2, "{st}");
    run_json(&wd, &["swap", "--dest", &dbs.dst.url()]);
    dbs.dst.psql(
        "ALTER TABLE billing.invoices ADD CONSTRAINT invoices_user_fk
           FOREIGN KEY (user_id) REFERENCES public.users NOT VALID;
         ALTER TABLE public.users ADD CONSTRAINT users_self_fk
           FOREIGN KEY (id) REFERENCES public.users NOT VALID;",
    );
    let st = run_json(&wd, &["status", "--dest", &dbs.dst.url()]);
    assert_eq!(
        st["not_valid_foreign_keys"],
        json!(["billing.invoices.invoices_user_fk", "users.users_self_fk"]),
        "{st}"
    );
}

/// A type of one migrated schema used by a table of another: the impact
/// report names it as replaced, with the other schema's column (and not the
/// columns of tables the destination does not have yet).
#[test]
fn a_type_used_across_schemas_is_reported_replaced() {
    let dbs = same_on_both(
        "sch_type",
        "CREATE SCHEMA billing;
         CREATE DOMAIN public.amount AS numeric;
         CREATE TABLE billing.invoices (id int PRIMARY KEY, total public.amount);",
    );
    // A new table: no statement prepared before the swap returns its column.
    dbs.src
        .psql("CREATE TABLE billing.refunds (id int PRIMARY KEY, total public.amount)");
    let wd = Workdir::new();
    run_two(&wd, &dbs, "prepare", &[]);
    let dry = run_json(&wd, &["swap", "--dest", &dbs.dst.url(), "--dry-run"]);
    let hazards = dry["swap"]["impact"]["hazards"].as_array().unwrap();
    let detail = hazards
        .iter()
        .find(|h| h["code"] == "TYPE_REPLACED")
        .and_then(|h| h["detail"].as_str())
        .unwrap_or_else(|| panic!("no TYPE_REPLACED: {dry}"));
    assert!(detail.contains("billing.invoices.total"), "{detail}");
    assert!(!detail.contains("refunds"), "{detail}");
}

/// Functions whose bodies name their own schema (`SELECT app.norm_impl(t)`,
/// as functions used by indexes must, since a restore runs with an empty
/// search_path) or set a `search_path` with it run in the shadow during
/// prepare: CHECK constraints while the tables load, expression indexes. Both
/// must reach the source's functions in the shadow, not the destination's
/// live ones: into an empty destination prepare would fail, and where the
/// live version differs (`upper` instead of `lower`) the index would be built
/// with it and answer wrongly after the swap. The same for a text search
/// configuration named in a string (`to_tsvector('app.cfg', t)`, a regconfig
/// by the function's signature). After the swap the functions
/// read exactly as in the source, in public as in `app`.
#[test]
fn functions_naming_their_own_schema_run_on_the_shadow_during_prepare() {
    let ddl = |norm: &str, cfg: &str| {
        format!(
            "CREATE SCHEMA app;
             CREATE TEXT SEARCH CONFIGURATION app.cfg (COPY = {cfg});
             CREATE FUNCTION app.tsv(t text) RETURNS tsvector LANGUAGE sql IMMUTABLE AS $$ SELECT to_tsvector('app.cfg', t) $$;
             CREATE FUNCTION app.norm_impl(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT {norm}(t) $$;
             CREATE FUNCTION app.norm(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT app.norm_impl(t) $$;
             CREATE FUNCTION app.ok(t text) RETURNS bool LANGUAGE plpgsql IMMUTABLE SET search_path = app
               AS $$ BEGIN RETURN norm_impl(t) IS NOT NULL AND norm_impl(t) = app.norm(t); END $$;
             CREATE TABLE app.item (id int PRIMARY KEY, name text CHECK (app.ok(name)));
             CREATE INDEX item_norm ON app.item (app.norm(name));
             CREATE INDEX item_tsv ON app.item USING gin (app.tsv(name));
             CREATE FUNCTION public.pnorm_impl(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT {norm}(t) $$;
             CREATE FUNCTION public.pnorm(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT public.pnorm_impl(t) $$;
             CREATE TABLE public.person (id int PRIMARY KEY, name text);
             CREATE INDEX person_norm ON public.person (public.pnorm(name));"
        )
    };
    let found = |db: &TestDb, scan: &str| {
        db.query_one_string(&format!(
            "SET enable_seqscan = {scan}; SET enable_indexscan = {idx}; SET enable_bitmapscan = {idx};
             SELECT (SELECT count(*) FROM app.item WHERE app.norm(name) = 'name7 running')
                 || ',' || (SELECT count(*) FROM public.person WHERE public.pnorm(name) = 'name7')
                 || ',' || (SELECT count(*) FROM app.item WHERE app.tsv(name) @@ to_tsquery('simple', 'running'))",
            idx = if scan == "off" { "on" } else { "off" }
        ))
    };
    // An older destination (its functions differ), and an empty one.
    for (name, dest_ddl) in [
        ("fn_own_older", Some(ddl("upper", "english"))),
        ("fn_own_empty", None),
    ] {
        let dbs = TestDbs::new(name);
        dbs.src.psql(&ddl("lower", "simple"));
        dbs.src.psql(
            "INSERT INTO app.item SELECT g, 'Name' || g || ' running' FROM generate_series(1, 1000) g;
             INSERT INTO public.person SELECT g, 'Name' || g FROM generate_series(1, 1000) g;",
        );
        if let Some(d) = &dest_ddl {
            dbs.dst.psql(d);
        }
        let wd = Workdir::new();
        let (src, dst) = (dbs.src.url(), dbs.dst.url());
        wd.run_ok(&[
            "start",
            "--source",
            &src,
            "--dest",
            &dst,
            "--schemas",
            "public,app",
        ]);
        assert_eq!(found(&dbs.dst, "off"), "1,1,1000", "{name}: by the indexes");
        assert_eq!(found(&dbs.dst, "on"), "1,1,1000", "{name}: by scanning");
        assert_same_schema(&dbs.src, &dbs.dst, "app");
        assert_same_schema(&dbs.src, &dbs.dst, "public");
    }
}

/// A rollback that keeps a table of billing written since the swap goes
/// through: the check under the locks exempts it as the one before them
/// does (it used to look for `billing.kept` in public and refuse).
#[test]
fn a_rollback_keeping_a_written_table_of_billing_goes_through() {
    let dbs = same_on_both(
        "sch_rb_keep",
        "CREATE SCHEMA billing;
         CREATE TABLE public.t (id int PRIMARY KEY);
         CREATE TABLE billing.kept (id int PRIMARY KEY, v text);",
    );
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    start_two(&wd, &dbs, &[]);
    dbs.dst
        .psql("INSERT INTO billing.kept VALUES (1, 'written after the swap')");
    let args = [
        "rollback",
        "--dest",
        &dst,
        "--latest",
        "--keep-tables",
        "billing.kept",
    ];
    let plan = run_json(&wd, &[&args[..], &["--dry-run"]].concat());
    assert_eq!(plan["rollback"]["refusal"], Value::Null, "{plan}");
    // The object-level mode is the whole rollback's, not public's.
    assert_eq!(
        plan["rollback"]["swap_mode_reason"],
        "kept tables stay live where they are (--keep-tables, or kept when the backup was made), which only the object-level swap can do",
        "{plan}"
    );
    wd.run_ok(&args);
    assert_eq!(
        dbs.dst.query_one_string("SELECT v FROM billing.kept"),
        "written after the swap"
    );
}

/// The inserts the statistics count for `table`.
fn inserted(db: &TestDb, table: &str) -> i64 {
    db.query_one_string(&format!(
        "SELECT pg_stat_get_tuples_inserted('{table}'::regclass)"
    ))
    .parse()
    .unwrap()
}

/// Wait until the statistics count `n` inserts for `table` (a writer
/// publishes them when its session ends; on 13 and 14 the collector lags).
fn wait_inserted(db: &TestDb, table: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while inserted(db, table) < n {
        assert!(
            Instant::now() < deadline,
            "inserts of {table}: expected {n}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A rollback measures each schema it replaces from when that schema went
/// live. billing went live with a swap of public and billing and was left
/// alone by a later swap of public alone: a rollback to the first swap's
/// backup discards what was written to billing since, so it counts it and
/// refuses (h48b: it was discarded unsaid, the newest backup's counters
/// covering public only). A rollback to a backup of public alone keeps
/// billing live, so billing's writes are not counted against it.
#[test]
fn a_rollback_counts_the_writes_of_each_schema_since_that_schema_went_live() {
    let dbs = same_on_both(
        "sch_rb_writes",
        "CREATE SCHEMA billing;
         CREATE TABLE public.t (id int PRIMARY KEY);
         CREATE TABLE billing.inv (id int PRIMARY KEY, v text);
         INSERT INTO billing.inv VALUES (1, 'a'), (2, 'b');",
    );
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    start_two(&wd, &dbs, &[]);
    run_json(&wd, &["start", "--source", &src, "--dest", &dst]);
    let backups = list(&wd, &dbs.dst);
    let (public_only, both) = (
        backups[0]["timestamp"].to_string(),
        backups[1]["timestamp"].to_string(),
    );
    let before = inserted(&dbs.dst, "billing.inv");
    dbs.dst
        .psql("INSERT INTO billing.inv SELECT g, 'new' FROM generate_series(3, 7) g");
    wait_inserted(&dbs.dst, "billing.inv", before + 5);

    let to_both = ["rollback", "--dest", &dst, "--timestamp", &both];
    let plan = run_json(&wd, &[&to_both[..], &["--dry-run"]].concat());
    assert_eq!(
        plan["rollback"]["discarded_writes"],
        json!([{ "table": "billing.inv", "inserts": 5, "updates": 0, "deletes": 0 }]),
        "{plan}"
    );
    assert!(plan["rollback"]["refusal"].is_string(), "{plan}");
    let out = wd.run(&to_both);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    // Said of billing, counted since billing went live (h49a: "since the
    // current public went live").
    assert!(
        stderr_of(&out).contains(
            "the rollback would discard writes made since the current billing schema went live to 1 table that is not kept (the rows would stay in the new backup, not in the restored billing schema): billing.inv (5 inserts)"
        ),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(
        dbs.dst.query_one_string("SELECT count(*) FROM billing.inv"),
        "7"
    );
    let done = run_json(
        &wd,
        &[&to_both[..], &["--allow-discard", "billing.inv"]].concat(),
    );
    assert!(
        done["warnings"].as_array().unwrap().contains(&json!(
            "discarding writes since the current billing schema went live (--allow-discard): billing.inv: 5 inserts"
        )),
        "{done}"
    );
    assert_eq!(
        dbs.dst.query_one_string("SELECT count(*) FROM billing.inv"),
        "2"
    );

    // Now public and billing went live together (the rollback): a rollback
    // to the backup of public alone leaves billing's new row where it is.
    let before = inserted(&dbs.dst, "billing.inv");
    dbs.dst.psql("INSERT INTO billing.inv VALUES (9, 'kept')");
    wait_inserted(&dbs.dst, "billing.inv", before + 1);
    let to_public = ["rollback", "--dest", &dst, "--timestamp", &public_only];
    let plan = run_json(&wd, &[&to_public[..], &["--dry-run"]].concat());
    assert_eq!(plan["rollback"]["discarded_writes"], json!([]), "{plan}");
    assert_eq!(plan["rollback"]["refusal"], Value::Null, "{plan}");
    run_json(&wd, &to_public);
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT v FROM billing.inv WHERE id = 9"),
        "kept"
    );
}

/// Statistics reset after billing went live and before public did: a
/// rollback replacing both cannot count billing's writes (unknown, for that
/// reason) but counts public's, which went live after the reset (h49a: every
/// table was unknown, "reset since the current public went live"; and it
/// said so of billing).
#[test]
fn a_statistics_reset_between_two_schemas_going_live_leaves_only_the_older_unknown() {
    let dbs = same_on_both(
        "sch_rb_reset",
        "CREATE SCHEMA billing;
         CREATE TABLE public.t (id int PRIMARY KEY);
         CREATE TABLE billing.inv (id int PRIMARY KEY);",
    );
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    start_two(&wd, &dbs, &[]);
    dbs.dst.psql("SELECT pg_stat_reset()");
    run_json(&wd, &["start", "--source", &src, "--dest", &dst]);
    let both = list(&wd, &dbs.dst)[1]["timestamp"].to_string();
    let plan = rollback_plan(&wd, &dst, &both);
    assert_only_unknown(
        &plan,
        "billing.inv",
        "the statistics were reset since the current billing schema went live",
    );
}

/// The backup of public's latest going live is gone, and its record of the
/// write counters with it (dropped by hand here; `cleanup` does it when it
/// skipped an older, busy backup). A rollback to an older backup cannot
/// count the writes since, and says so: it counted every row of today's
/// tables as written, under the older record (h49a F5).
#[test]
fn a_rollback_whose_go_live_record_is_gone_says_the_writes_unknown() {
    let dbs = same_on_both(
        "sch_rb_lost",
        "CREATE TABLE public.t (id int PRIMARY KEY);
         INSERT INTO public.t SELECT generate_series(1, 10);",
    );
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    run_json(&wd, &["start", "--source", &src, "--dest", &dst]);
    run_json(&wd, &["start", "--source", &src, "--dest", &dst]);
    let backups = list(&wd, &dbs.dst);
    let older = backups[1]["timestamp"].to_string();
    dbs.dst.psql(&format!(
        "DROP SCHEMA {} CASCADE; DELETE FROM pgshift.backups WHERE ts = {}",
        backups[0]["schema"].as_str().unwrap(),
        backups[0]["timestamp"]
    ));
    let plan = rollback_plan(&wd, &dst, &older);
    assert_only_unknown(
        &plan,
        "t",
        "no write counters were recorded when the current public went live (by an earlier version of pgshift, or the recording failed), or they went with the backup that held them (dropped by cleanup or by hand)",
    );
    assert!(plan["rollback"]["refusal"].is_string(), "{plan}");
}

/// A preserved table of billing: the columns only the destination or only
/// the source has are warnings of prepare's report, the dry run's foreign-key violations name
/// their schemas, and a foreign key to it left NOT VALID by
/// `--allow-fk-violations` is named with its schema.
#[test]
fn a_preserved_table_of_billing_is_named_with_its_schema() {
    let dbs = TestDbs::new("sch_pres_names");
    let ddl = |extra: &str| {
        format!(
            "CREATE SCHEMA billing;
             CREATE TABLE public.t (id int PRIMARY KEY);
             CREATE TABLE billing.customers (id int PRIMARY KEY, name text{extra});
             CREATE TABLE billing.invoices (id int PRIMARY KEY, customer_id int REFERENCES billing.customers (id));"
        )
    };
    dbs.src
        .psql(&ddl(", tier text NOT NULL DEFAULT 'basic', \"Note\" text"));
    dbs.src.psql(
        "INSERT INTO billing.customers SELECT g, 'c' || g FROM generate_series(1, 5) g;
         INSERT INTO billing.invoices SELECT g, g FROM generate_series(1, 5) g;",
    );
    dbs.dst.psql(&ddl(", legacy text"));
    dbs.dst
        .psql("INSERT INTO billing.customers SELECT g, 'd' || g, 'x' FROM generate_series(1, 2) g");
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    let p = run_two(
        &wd,
        &dbs,
        "prepare",
        &["--preserved-tables", "billing.customers"],
    );
    let warned = p["warnings"].as_array().unwrap().iter().any(|w| {
        w.as_str().unwrap()
            == "preserved table billing.customers: column legacy exists only in the destination; its values are not carried over"
    });
    assert!(warned, "{p}");
    // And the columns only the source has, which the destination's rows get
    // the defaults of.
    let warned = p["warnings"].as_array().unwrap().iter().any(|w| {
        w.as_str().unwrap()
            == "preserved table billing.customers: columns tier, \"Note\" exist only in the source; the destination's rows get the default (NULL where there is none)"
    });
    assert!(warned, "{p}");
    let plan = run_json(&wd, &["swap", "--dest", &dst, "--dry-run"]);
    let v = &plan["swap"]["fk_violations"][0];
    assert_eq!(
        (&v["schema"], &v["table"], &v["referenced_schema"]),
        (&json!("billing"), &json!("invoices"), &json!("billing")),
        "{plan}"
    );
    let s = run_json(&wd, &["swap", "--dest", &dst, "--allow-fk-violations"]);
    assert_eq!(
        s["fk_not_valid"],
        json!(["billing.invoices.invoices_customer_id_fkey"]),
        "{s}"
    );
}

/// A preserved table whose columns use a type of another migrated schema
/// (an enum of public in billing.customers, billing's enum and an array of
/// public's in public.t): the shadow's type is the one the restore created
/// in the other shadow schema, which values reach through their text form as
/// they do a type of the table's own schema (the copy failed: `column "m" is
/// of type shadow.mood but expression is of type mood`).
#[test]
fn a_preserved_table_using_a_type_of_another_migrated_schema_is_synced() {
    let dbs = same_on_both(
        "sch_pres_types",
        "CREATE SCHEMA billing;
         CREATE TYPE public.mood AS ENUM ('ok', 'bad');
         CREATE TYPE billing.tier AS ENUM ('free', 'paid');
         CREATE TABLE public.t (id int PRIMARY KEY, tier billing.tier, moods public.mood[]);
         CREATE TABLE billing.customers (id int PRIMARY KEY, m public.mood, tier billing.tier);",
    );
    dbs.dst.psql(
        "INSERT INTO public.t VALUES (1, 'free', '{ok}');
         INSERT INTO billing.customers VALUES (1, 'ok', 'free');",
    );
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    run_two(
        &wd,
        &dbs,
        "prepare",
        &["--preserved-tables", "t,billing.customers"],
    );
    dbs.dst.psql(
        "INSERT INTO public.t VALUES (2, 'paid', '{bad,ok}');
         UPDATE billing.customers SET m = 'bad', tier = 'paid' WHERE id = 1;
         INSERT INTO billing.customers VALUES (2, 'ok', 'free');",
    );
    let st = run_json(&wd, &["status", "--dest", &dst]);
    assert_eq!(st["swap_allowed"], true, "{st}");
    run_json(&wd, &["swap", "--dest", &dst]);
    assert_eq!(
        dbs.dst.psql(
            "SELECT string_agg(format('%s %s %s', id, tier, moods), ', ' ORDER BY id) FROM public.t
             UNION ALL
             SELECT string_agg(format('%s %s %s', id, m, tier), ', ' ORDER BY id) FROM billing.customers"
        ),
        "1 free {ok}, 2 paid {bad,ok}\n1 bad paid, 2 ok free"
    );
}

/// A kept table of billing using a domain of public, and a view of billing
/// reading a kept table of public: the domain and the view move to their
/// schemas' backups as surely as the kept table's own schema's objects do,
/// and prepare says so (it looked in the kept table's own schema only: the
/// table was left bound to the backup's domain without a word).
#[test]
fn what_a_kept_table_leaves_in_another_migrated_schema_is_warned_about() {
    let dbs = same_on_both(
        "sch_kept_across",
        "CREATE DOMAIN public.label AS varchar(50);
         CREATE SCHEMA billing;
         CREATE TABLE billing.reasons (id int PRIMARY KEY, name public.label);
         CREATE TABLE public.t (id int PRIMARY KEY);
         CREATE VIEW billing.t_ids AS SELECT id FROM public.t;",
    );
    let wd = Workdir::new();
    let p = run_two(
        &wd,
        &dbs,
        "prepare",
        &["--keep-tables", "billing.reasons,t"],
    );
    let warnings = p["warnings"].to_string();
    for w in [
        "a kept table uses type label, which moves to the backup with the rest of public; the kept table (billing.reasons) keeps using that copy",
        "view billing.t_ids depends on a kept table of public; it moves to the backup with the rest of its schema and keeps reading the kept table",
    ] {
        assert!(warnings.contains(w), "{w}: {p}");
    }
}

/// Names that need quotes are quoted wherever a report names a table with
/// its schema, as status does (`"Sales"."Ticket"`): abort's triggers, the
/// swap's foreign keys left NOT VALID and a rollback's foreign keys said
/// `Sales.Ticket`, which names another table; a schema named unquoted
/// says how to write it. A key left NOT VALID is named alike by the swap,
/// status and the rollback, a public table's name quoted too
/// (`"WebhookCall"."WebhookCall_webhookId_fkey"`: Documenso's swap said
/// `WebhookCall."WebhookCall_webhookId_fkey"`, status
/// `WebhookCall.WebhookCall_webhookId_fkey`, its rollback the key alone).
#[test]
fn mixed_case_tables_are_quoted_in_abort_and_rollback_reports() {
    let dbs = same_on_both("sch_quoted_reports", "CREATE SCHEMA \"Sales\";
         CREATE TABLE public.t (id int PRIMARY KEY);
         CREATE TABLE \"Sales\".\"Reason\" (id int PRIMARY KEY);
         CREATE TABLE \"Sales\".\"Ticket\" (id int PRIMARY KEY, reason int REFERENCES \"Sales\".\"Reason\");
         CREATE TABLE \"Webhook\" (id int PRIMARY KEY);
         CREATE TABLE \"WebhookCall\" (id int PRIMARY KEY, \"webhookId\" int REFERENCES \"Webhook\");");
    // A ticket (and a webhook call) of the destination's whose reason (and
    // webhook) the source lacks.
    dbs.src
        .psql("INSERT INTO \"Sales\".\"Reason\" VALUES (1); INSERT INTO \"Webhook\" VALUES (1);");
    dbs.dst.psql(
        "INSERT INTO \"Sales\".\"Reason\" VALUES (1), (2);
         INSERT INTO \"Sales\".\"Ticket\" VALUES (1, 2);
         INSERT INTO \"Webhook\" VALUES (1), (2);
         INSERT INTO \"WebhookCall\" VALUES (1, 2);",
    );
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let base = [
        "--source",
        src.as_str(),
        "--dest",
        dst.as_str(),
        "--schemas",
        "public,\"Sales\"",
    ];
    let preserved = ["--preserved-tables", "\"Sales\".\"Ticket\",\"WebhookCall\""];
    assert_usage_error(
        &wd.run(
            &[
                &["prepare"][..],
                &base,
                &["--preserved-tables", "Sales.\"Ticket\""],
            ]
            .concat(),
        ),
        "is not in a schema the migration moves (public, \"Sales\") (letters outside double quotes are folded to lower case, as in psql: write \"Sales\" with its quotes)",
    );
    assert_usage_error(
        &wd.run(
            &[
                &["prepare"][..],
                &base,
                &["--preserved-tables", "\"Sales\".ticket"],
            ]
            .concat(),
        ),
        "(letters outside double quotes are folded to lower case, as in psql: write \"Ticket\" with its quotes)",
    );
    run_json(&wd, &[&["prepare"][..], &base, &preserved].concat());
    let aborted = run_json(&wd, &["abort", "--dest", &dst]);
    assert!(
        aborted["removed"]["triggers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "pgshift_sync_ins on \"Sales\".\"Ticket\""),
        "{aborted}"
    );
    let started = run_json(
        &wd,
        &[
            &["start"][..],
            &base,
            &preserved,
            &["--allow-fk-violations"],
        ]
        .concat(),
    );
    let keys = json!([
        "\"Sales\".\"Ticket\".\"Ticket_reason_fkey\"",
        "\"WebhookCall\".\"WebhookCall_webhookId_fkey\""
    ]);
    let mut swapped = started["swap"]["fk_not_valid"].clone();
    swapped
        .as_array_mut()
        .unwrap()
        .sort_by_key(|v| v.to_string());
    assert_eq!(swapped, keys, "{started}");
    let st = run_json(&wd, &["status", "--dest", &dst]);
    assert_eq!(st["not_valid_foreign_keys"], keys, "{st}");
    assert_usage_error(
        &wd.run(&[
            "rollback",
            "--dest",
            &dst,
            "--latest",
            "--keep-tables",
            "\"Sales\".reason",
        ]),
        "--keep-tables: Sales has no table reason (letters outside double quotes are folded to lower case, as in psql: write \"Reason\" with its quotes)",
    );
    let back = run_json(
        &wd,
        &[
            "rollback",
            "--dest",
            &dst,
            "--latest",
            "--keep-tables",
            "\"Sales\".\"Reason\"",
            // The destination's ticket of reason 2, which the kept reasons lack.
            "--allow-fk-violations",
        ],
    );
    let fks: Vec<(&str, &str, &str)> = back["foreign_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["table"].as_str().unwrap(),
                f["action"].as_str().unwrap(),
                f["references"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        fks.contains(&("\"Sales\".\"Ticket\"", "repointed", "\"Sales\".\"Reason\"")),
        "{back}"
    );
    // The rollback's fk_not_valid holds the constraint's name, as stored; its
    // warning names the table.
    assert_eq!(
        back["fk_not_valid"],
        json!(["Ticket_reason_fkey"]),
        "{back}"
    );
    assert!(
        back["warnings"].to_string().contains(
            "foreign key \\\"Sales\\\".\\\"Ticket\\\".\\\"Ticket_reason_fkey\\\" stays NOT VALID"
        ),
        "{back}"
    );
    // Back to the backup that rollback made: its ticket's key, detached from
    // the kept reasons, is re-created.
    let b2 = back["backup_schema"].as_str().unwrap();
    let again = run_json(
        &wd,
        &[
            "rollback",
            "--dest",
            &dst,
            "--timestamp",
            b2,
            "--allow-fk-violations",
        ],
    );
    let reattached = |f: &serde_json::Value| {
        f["action"] == "reattached"
            && f["table"] == "\"Sales\".\"Ticket\""
            && f["references"] == "\"Sales\".\"Reason\""
    };
    assert!(
        again["foreign_keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(reattached),
        "{again}"
    );
    // The text names kept tables of public as one types them (the reasons
    // stay live too: the backup restored lacks them, as its rollback kept
    // them).
    let plan = assert_success(&wd.run(&[
        "rollback",
        "--dest",
        &dst,
        "--latest",
        "--dry-run",
        "--keep-tables",
        "\"Webhook\",\"WebhookCall\"",
    ]));
    assert!(
        plan.contains(
            "Kept from the current public: \"Sales\".\"Reason\", \"Webhook\", \"WebhookCall\"\n"
        ),
        "{plan}"
    );
    // And so does the rollback's report (it printed them unquoted).
    let done = assert_success(&wd.run(&[
        "rollback",
        "--dest",
        &dst,
        "--latest",
        "--keep-tables",
        "\"Webhook\",\"WebhookCall\"",
        "--allow-fk-violations",
    ]));
    assert!(
        done.contains(
            "Kept from the replaced schemas: \"Sales\".\"Reason\", \"Webhook\", \"WebhookCall\"\n"
        ),
        "{done}"
    );
}

/// A schema the application uses but the migration leaves out (Lemmy's `r`
/// of trigger functions, migrating public only) exists on the destination in
/// its older version, without the function a new trigger calls: prepare
/// failed after the data copy (`function r.f_new() does not exist`); the dry
/// run and prepare now say which objects are missing before anything runs.
#[test]
fn what_the_migration_uses_of_a_schema_left_out_is_checked() {
    let dbs = TestDbs::new("sch_missing_outside");
    let old = "CREATE SCHEMA r;
         CREATE FUNCTION r.f_old() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';";
    dbs.src.psql(old);
    dbs.dst.psql(old);
    // An extension the destination lacks, in that schema: prepare creates
    // it, its types and their arrays; nothing to say about them.
    dbs.src.psql(
        "CREATE EXTENSION ltree SCHEMA r;
         CREATE FUNCTION r.f_new() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
         CREATE TABLE t (id int PRIMARY KEY, p r.ltree, ps r.ltree[]);
         CREATE TRIGGER t_new BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION r.f_new();
         CREATE TRIGGER t_old BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION r.f_old();",
    );
    let wd = Workdir::new();
    let plan = prepare_json(&wd, &dbs, &["--dry-run"]);
    assert_eq!(
        plan["plan"]["warnings"],
        json!([
            "the chosen schemas use function r.f_new() of schema r, which is not migrated and the destination lacks: prepare will fail where it creates what uses them (create them on the destination first, or add schema r to --schemas)"
        ]),
        "{plan}"
    );
    // Created on the destination, nothing is missing.
    dbs.dst.psql(
        "CREATE FUNCTION r.f_new() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';",
    );
    let p = prepare_json(&wd, &dbs, &[]);
    assert_eq!(p["warnings"], json!([]), "{p}");
}

/// A foreign key into a schema the migration leaves out (Supabase's
/// `auth.users`) keeps the destination's rows there: a source row whose
/// user the destination lacks fails prepare where the key is created,
/// saying which table keeps the destination's rows and what to do.
#[test]
fn a_key_into_a_schema_left_out_that_the_destinations_rows_break_says_so() {
    let dbs = TestDbs::new("sch_key_outside");
    let auth = "CREATE SCHEMA auth; CREATE TABLE auth.users (id int PRIMARY KEY);";
    dbs.src.psql(auth);
    dbs.dst.psql(auth);
    dbs.src.psql(
        "INSERT INTO auth.users VALUES (1), (2);
         CREATE TABLE todos (id int PRIMARY KEY, user_id int REFERENCES auth.users);
         INSERT INTO todos VALUES (10, 1), (11, 2);",
    );
    dbs.dst.psql("INSERT INTO auth.users VALUES (1);");
    let wd = Workdir::new();
    let out = wd.prepare(&dbs, &[]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.trim_end().lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: prepare failed: phase indexes: ")
            && last.contains("todos_user_id_fkey")
            && last.contains("(user_id)=(2)")
            && last.contains("(auth.users is not migrated and keeps the destination's rows, which lack the one the source's row references: add it on the destination, or fix the source's row, and prepare again)"),
        "{err}"
    );
    // Added there, prepare goes through.
    dbs.dst.psql("INSERT INTO auth.users VALUES (2);");
    assert_success(&wd.prepare(&dbs, &[]));
}

/// An extension's own objects are not objects outside the migrated schemas
/// bound to them: ltree's operator family (its support functions use
/// `ltree[]`), and a column outside of type `ltree[]`, whose array type goes
/// where the extension goes. Prepare warned four times that ltree's
/// `gist__ltree_ops` would use the backup's copy (Lemmy).
#[test]
fn an_extensions_own_objects_are_not_warned_about() {
    let dbs = same_on_both(
        "sch_ext_own",
        "CREATE EXTENSION ltree;
         CREATE SCHEMA other;
         CREATE TABLE other.o (paths ltree[]);
         CREATE TABLE t (id int PRIMARY KEY, p ltree, ps ltree[]);
         CREATE INDEX ON t USING gist (p);",
    );
    let wd = Workdir::new();
    let p = prepare_json(&wd, &dbs, &[]);
    assert_eq!(p["warnings"], json!([]), "{p}");
    // Rightly: after the swap the column outside still has public's type.
    run_json(&wd, &["swap", "--dest", &dbs.dst.url()]);
    assert_eq!(
        dbs.dst.psql(
            "SELECT format_type(atttypid, NULL) || ' ' || (SELECT extnamespace::regnamespace::text
                                                               FROM pg_extension WHERE extname = 'ltree')
               FROM pg_attribute WHERE attrelid = 'other.o'::regclass AND attname = 'paths'"
        ),
        "ltree[] public"
    );
    // Kept by a rollback, t's column of ltree[] stays the extension's as
    // well: it was said to move to the new backup with the rest of public.
    let plan = run_json(
        &wd,
        &[
            "rollback",
            "--dest",
            &dbs.dst.url(),
            "--latest",
            "--keep-tables",
            "t",
            "--dry-run",
        ],
    );
    assert_eq!(plan["rollback"]["warnings"], json!([]), "{plan}");
}

/// An extension's configuration table that names the application's objects
/// by OID (periods' `periods.periods`, `table_name regclass`) names the
/// backup's after the swap, which the extension then acts on: prepare and
/// the swap's dry run say so, for any `reg*` column or array of one, and
/// not of objects outside the migrated schemas or of tables the swap keeps.
/// The extension is emulated with a contrib one: tables made its members
/// and listed in `pg_extension.extconfig`, as `pg_extension_config_dump()`
/// does from an extension's script (the tests run as a superuser).
#[test]
fn outside_objects_extension_config_naming_migrated_objects_are_warned_about() {
    let dbs = TestDbs::new("sch_ext_config");
    let app = "CREATE TABLE public.ledger (id int PRIMARY KEY);
               CREATE FUNCTION public.f(int) RETURNS int LANGUAGE sql AS 'SELECT $1';
               CREATE TYPE public.mood AS ENUM ('ok');";
    dbs.src.psql(app);
    dbs.dst.psql(app);
    dbs.dst.psql(
        "CREATE TABLE public.audit (id int);
         CREATE SCHEMA auth;
         CREATE TABLE auth.users (id int);
         CREATE SCHEMA periods;
         CREATE EXTENSION hstore SCHEMA periods;
         CREATE TABLE periods.periods (table_name regclass, period_name name,
                                       PRIMARY KEY (table_name, period_name));
         CREATE TABLE periods.hooks (fns regprocedure[], t regtype, s regnamespace, note text);
         ALTER EXTENSION hstore ADD TABLE periods.periods;
         ALTER EXTENSION hstore ADD TABLE periods.hooks;
         UPDATE pg_catalog.pg_extension
            SET extconfig = ARRAY['periods.periods'::regclass, 'periods.hooks'::regclass]::oid[],
                extcondition = ARRAY['', '']
          WHERE extname = 'hstore';
         INSERT INTO periods.periods VALUES ('public.ledger', 'system_time'),
                                            ('public.audit', 'system_time'),
                                            ('auth.users', 'system_time');
         INSERT INTO periods.hooks VALUES
           (ARRAY['public.f(int)'::regprocedure, 'pg_catalog.now()'], 'public.mood', 'public', 'x'),
           (ARRAY['periods.hstore(text, text)'::regprocedure], 'auth.users', 'auth', 'y');",
    );
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let said = |warnings: &Value| common::strings_containing(warnings, "configuration table");
    let warning = |col: &str, table: &str, named: &str| {
        format!(
            "extension hstore: column {col} of its configuration table periods.{table} names {named} by OID; after the swap it names the backup's copy, which the extension then acts on instead of the new one, and a cleanup of that backup drops it from under the extension: register the new one with it again after the swap"
        )
    };
    let expected = [
        warning("fns", "hooks", "function public.f(integer)"),
        warning("t", "hooks", "type public.mood"),
        warning(
            "s",
            "hooks",
            "schema public (if the swap renames the schemas)",
        ),
        "extension hstore: column table_name of its configuration table periods.periods names table public.audit, table public.ledger by OID; after the swap they name the backup's copies, which the extension then acts on instead of the new ones, and a cleanup of that backup drops them from under the extension: register the new ones with it again after the swap".to_string(),
    ];
    let plan = run_json(
        &wd,
        &["prepare", "--source", &src, "--dest", &dst, "--dry-run"],
    );
    assert_eq!(said(&plan["plan"]["warnings"]), expected, "{plan}");
    let p = run_json(&wd, &["prepare", "--source", &src, "--dest", &dst]);
    assert_eq!(said(&p["warnings"]), expected, "{p}");
    // The swap's dry run says it again, without a table the swap keeps.
    let plan = run_json(
        &wd,
        &[
            "swap",
            "--dest",
            &dst,
            "--keep-tables",
            "audit",
            "--dry-run",
        ],
    );
    let mut kept = expected.to_vec();
    kept[3] = warning("table_name", "periods", "table public.ledger");
    assert_eq!(said(&plan["swap"]["warnings"]), kept, "{plan}");
    // What it warns about: after the swap, the OID is the backup's table.
    run_json(&wd, &["swap", "--dest", &dst, "--keep-tables", "audit"]);
    let named = dbs.dst.query_one_string(
        "SELECT table_name::text FROM periods.periods WHERE table_name::text LIKE '%ledger'",
    );
    assert!(named.starts_with("backup_"), "{named}");
}

/// Objects outside the migrated schemas bound to a function or type of a
/// migrated one (a trigger on auth.users running public.handle_new_user(),
/// a column of type public.mood) keep the backup's copy after the swap:
/// prepare says so, as it does for views, foreign keys and publications.
#[test]
fn outside_objects_using_a_migrated_function_or_type_are_warned_about() {
    let dbs = TestDbs::new("sch_outside_fn");
    let app = "CREATE TYPE public.mood AS ENUM ('ok', 'sad');
         CREATE TABLE public.profiles (id int PRIMARY KEY);
         CREATE FUNCTION public.handle_new_user() RETURNS trigger LANGUAGE plpgsql
           AS $$ BEGIN INSERT INTO public.profiles VALUES (NEW.id); RETURN NEW; END $$;
         CREATE FUNCTION public.plus(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1 + 1';
         CREATE SEQUENCE public.ticket;
         CREATE TABLE public.events (id int NOT NULL, at date NOT NULL) PARTITION BY RANGE (at);
         CREATE TABLE public.notes (id int);
         CREATE FUNCTION public.on_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$;";
    dbs.src.psql(app);
    dbs.dst.psql(app);
    dbs.dst.psql(
        "CREATE SCHEMA auth;
         CREATE TABLE auth.users (id int PRIMARY KEY, m public.mood);
         CREATE TRIGGER on_auth_user_created AFTER INSERT ON auth.users
           FOR EACH ROW EXECUTE FUNCTION public.handle_new_user();
         CREATE TABLE auth.g (a int, b int GENERATED ALWAYS AS (public.plus(a)) STORED);
         CREATE TABLE auth.tickets (n bigint DEFAULT nextval('public.ticket'));
         CREATE TABLE auth.events_2025 PARTITION OF public.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         CREATE TABLE auth.old_notes () INHERITS (public.notes);
         CREATE EVENT TRIGGER ddl_watch ON ddl_command_end EXECUTE FUNCTION public.on_ddl();
         CREATE PUBLICATION everything FOR ALL TABLES;
         -- a SQL-standard function body and a policy that read a table
         CREATE FUNCTION auth.profile_count() RETURNS bigint LANGUAGE sql
           BEGIN ATOMIC SELECT count(*) FROM public.profiles; END;
         CREATE POLICY with_profile ON auth.users USING (id IN (SELECT id FROM public.profiles));
         -- the application's own schema, named as pgshift names a backup but
         -- listed by no manifest: outside like any other
         CREATE SCHEMA backup_1234567890123;
         CREATE VIEW backup_1234567890123.profile_list AS SELECT id FROM public.profiles;",
    );
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let p = run_json(&wd, &["prepare", "--source", &src, "--dest", &dst]);
    let warnings: Vec<&str> = p["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    for expected in [
        "trigger on_auth_user_created on table auth.users uses function public.handle_new_user(); after the swap it will use the backup's copy (recreate it after the swap, or migrate its schema too)",
        "column m of table auth.users uses type public.mood; after the swap it will use the backup's copy (recreate it after the swap, or migrate its schema too)",
        // A generated column (its expression's dependency is the column's on
        // 13, its default value's on 15), a default's sequence, an event
        // trigger (no schema).
        "column b of table auth.g uses function public.plus(integer); after the swap it will use the backup's copy (recreate it after the swap, or migrate its schema too)",
        "default value for column n of table auth.tickets uses sequence public.ticket; after the swap it will use the backup's copy (recreate it after the swap, or migrate its schema too)",
        "event trigger ddl_watch uses function public.on_ddl(); after the swap it will use the backup's copy (recreate it after the swap, or migrate its schema too)",
        // It fires on pgshift's own DDL too; a publication of all tables
        // publishes pgshift's.
        "event trigger ddl_watch runs on ddl_command_end, also for pgshift's own DDL (prepare's restore, the swap's moves): one that fails, or writes to a table the swap replaces, makes the swap fail (rolled back, nothing changed) or counts as the application's writes; disable it for the migration (ALTER EVENT TRIGGER ddl_watch DISABLE, as its owner)",
        "publication everything publishes all tables: also the shadow's and pgshift's own as they are made, and the backup's after the swap; a subscriber without them stops replicating (logical replication target relation … does not exist): publish the application's tables by name or schema for the migration",
        // A partition and an inheritance child outside.
        "table auth.events_2025 is a partition of public.events; after the swap it stays with the backup's copy, and its rows are no longer in public.events (recreate it after the swap, or migrate its schema too)",
        "table auth.old_notes is an inheritance child of public.notes; after the swap it stays with the backup's copy, and its rows are no longer in public.notes (recreate it after the swap, or migrate its schema too)",
        "view backup_1234567890123.profile_list reads public.profiles; after the swap it will read the backup's copy (recreate it after the swap)",
        "function auth.profile_count() uses table public.profiles; after the swap it will use the backup's copy (recreate it after the swap, or migrate its schema too)",
        "policy with_profile on table auth.users uses table public.profiles; after the swap it will use the backup's copy (recreate it after the swap, or migrate its schema too)",
    ] {
        assert!(
            warnings.iter().any(|w| w.ends_with(expected)),
            "{expected}\n{warnings:#?}"
        );
    }
    // Nothing else is said about them (an object is named once).
    assert_eq!(
        warnings.iter().filter(|w| w.contains("auth.")).count(),
        8,
        "{warnings:#?}"
    );

    // A rollback says the same of what is bound to the public it replaces.
    run_json(&wd, &["swap", "--dest", &dst]);
    dbs.dst
        .psql("CREATE VIEW auth.profile_ids AS SELECT id FROM public.profiles");
    let plan = run_json(&wd, &["rollback", "--dest", &dst, "--latest", "--dry-run"]);
    let warnings = plan["rollback"]["warnings"].as_array().unwrap();
    assert_eq!(
        warnings,
        &vec![
            json!(
                "view auth.profile_ids reads public.profiles; after the rollback it will read the backup's copy (recreate it after the rollback)"
            ),
            json!(
                "event trigger ddl_watch runs on ddl_command_end, also for pgshift's own DDL (the rollback's moves): one that fails, or writes to a table the rollback replaces, makes the rollback fail (rolled back, nothing changed) or counts as the application's writes; disable it for the migration (ALTER EVENT TRIGGER ddl_watch DISABLE, as its owner)"
            ),
            json!(
                "publication everything publishes all tables: also pgshift's own and the backups'; a subscriber without them stops replicating (logical replication target relation … does not exist): publish the application's tables by name or schema for the migration"
            ),
        ],
        "{plan}"
    );
    let done = run_json(&wd, &["rollback", "--dest", &dst, "--latest"]);
    assert!(
        done["warnings"].as_array().unwrap().contains(&warnings[0]),
        "{done}"
    );
}

/// A rollback whose current public has no recorded write counters (its
/// backup made by an earlier version, or a swap killed after its COMMIT)
/// treats every table's writes as unknown: in every migrated schema, not in
/// public alone (writes to billing left with the new backup without a word).
#[test]
fn unknown_writes_are_checked_in_every_migrated_schema() {
    let dbs = TestDbs::new("unknown_all_schemas");
    dbs.src.psql(
        "CREATE SCHEMA billing;
         CREATE TABLE public.accounts (id int PRIMARY KEY);
         CREATE TABLE billing.invoices (id int PRIMARY KEY);",
    );
    dbs.dst.psql(
        "CREATE SCHEMA billing;
         CREATE TABLE public.accounts (id int PRIMARY KEY);
         CREATE TABLE billing.invoices (id int PRIMARY KEY);",
    );
    let wd = Workdir::new();
    start_two(&wd, &dbs, &[]);
    dbs.dst.psql(
        "UPDATE pgshift.backups SET manifest = manifest - 'live_baseline'
          WHERE ts = (SELECT max(ts) FROM pgshift.backups);
         INSERT INTO billing.invoices VALUES (7);",
    );
    let out = wd.run(&["rollback", "--latest", "--dest", &dbs.dst.url()]);
    let err = common::stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("billing.invoices"), "{err}");
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM billing.invoices"), "1");
}

/// A chosen schema whose name needs quotes (`"Mixed Case"`) gets every
/// dependency check an unquoted one gets (`pg_identify_object` gives schema
/// names quoted): a foreign key into a table it excludes is refused, objects
/// outside that use its types are warned about, a rollback does not keep a
/// table that the backup's own objects read, and cleanup drops a backup that
/// holds an operator of that schema.
#[test]
fn a_schema_whose_name_needs_quotes_gets_every_dependency_check() {
    let dbs = TestDbs::new("sch_quoted");
    let app = "CREATE SCHEMA \"Mixed Case\";
         CREATE TYPE \"Mixed Case\".mood AS ENUM ('ok', 'sad');
         CREATE TABLE \"Mixed Case\".t (id int PRIMARY KEY);
         CREATE FUNCTION \"Mixed Case\".cnt() RETURNS bigint LANGUAGE sql
           BEGIN ATOMIC SELECT count(*) FROM \"Mixed Case\".t; END;
         CREATE FUNCTION \"Mixed Case\".plus(int, int) RETURNS int LANGUAGE sql IMMUTABLE
           AS 'SELECT $1 + $2';
         CREATE OPERATOR \"Mixed Case\".## (LEFTARG = int, RIGHTARG = int, FUNCTION = \"Mixed Case\".plus);
         CREATE TABLE \"Mixed Case\".parent (id int PRIMARY KEY);
         CREATE VIEW public.t_count AS SELECT count(*) FROM \"Mixed Case\".t;
         CREATE TABLE \"Mixed Case\".s (id serial PRIMARY KEY);
         CREATE TABLE public.s_log (id int DEFAULT nextval('\"Mixed Case\".s_id_seq'));";
    dbs.src.psql(app);
    dbs.dst.psql(app);
    dbs.src.psql(
        "CREATE TABLE \"Mixed Case\".child (id int, pid int REFERENCES \"Mixed Case\".parent (id));
         INSERT INTO \"Mixed Case\".t SELECT generate_series(1, 10);
         INSERT INTO \"Mixed Case\".parent VALUES (1), (2);
         INSERT INTO \"Mixed Case\".child VALUES (1, 1), (2, 2);",
    );
    dbs.dst.psql(
        "INSERT INTO \"Mixed Case\".t SELECT generate_series(1, 3);
         CREATE SCHEMA other;
         CREATE TABLE other.moods (m \"Mixed Case\".mood);",
    );
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let base = [
        "--source",
        src.as_str(),
        "--dest",
        dst.as_str(),
        "--schemas",
        "public,\"Mixed Case\"",
    ];

    let before = catalog_fingerprint(&dbs.dst);
    let out = wd.run(
        &[
            &["prepare"][..],
            &base,
            &["--exclude-table", "\"Mixed Case\".parent"],
        ]
        .concat(),
    );
    assert_usage_error(&out, "child_pid_fkey");
    assert_eq!(catalog_fingerprint(&dbs.dst), before);

    let done = run_json(&wd, &[&["start"][..], &base].concat());
    let warnings = done["prepare"]["warnings"].to_string();
    assert!(
        warnings.contains("column m of table other.moods uses type \\\"Mixed Case\\\".mood"),
        "{warnings}"
    );

    dbs.dst.psql("INSERT INTO \"Mixed Case\".t VALUES (100)");
    let out = wd.run(&[
        "rollback",
        "--dest",
        &dst,
        "--latest",
        "--keep-tables",
        "\"Mixed Case\".t",
    ]);
    // The backup's other schemas count too: public's view would come back
    // reading the copy left in the backup.
    assert_usage_error(&out, "own copy of t, which would stay behind");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("t_count"), "{err}");
    // Kept beside a table nothing reads, only the one read is named.
    let out = wd.run(&[
        "rollback",
        "--dest",
        &dst,
        "--latest",
        "--keep-tables",
        "\"Mixed Case\".t,\"Mixed Case\".parent",
    ]);
    assert_usage_error(&out, "own copy of t, which would stay behind");
    // So does a default drawing from the sequence of the copy left behind.
    let out = wd.run(&[
        "rollback",
        "--dest",
        &dst,
        "--latest",
        "--keep-tables",
        "\"Mixed Case\".s",
    ]);
    assert_usage_error(&out, "own copy of s, which would stay behind");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("default value for column id of table"),
        "{err}"
    );
    assert!(err.contains("s_log"), "{err}");
    // Written, s and s_log can be kept together: the refusal to discard
    // their writes says so, rather than that s cannot be kept.
    dbs.dst.psql(
        "INSERT INTO \"Mixed Case\".s DEFAULT VALUES; INSERT INTO public.s_log DEFAULT VALUES;",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while dbs.dst.query_one_string(
        "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relid = 'public.s_log'::regclass",
    ) == "0"
    {
        assert!(Instant::now() < deadline, "no counters");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = wd.run(&["rollback", "--dest", &dst, "--latest"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains(".s cannot be kept"), "{err}");
    assert!(err.contains("\"Mixed Case\".s,"), "{err}");
    // The advice holds: both kept (in two schemas), t's write let go.
    let out = wd.run(&[
        "rollback",
        "--dest",
        &dst,
        "--latest",
        "--keep-tables",
        "\"Mixed Case\".s,s_log",
        "--allow-discard",
        "\"Mixed Case\".t",
        "--dry-run",
    ]);
    let said = common::said_by(&out);
    assert!(out.status.success(), "{said}");
    // Kept together, neither stays bound to a copy that moves.
    assert!(!said.contains("moves to the new backup"), "{said}");
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT count(*) FROM \"Mixed Case\".t"),
        "11"
    );

    // What used the backup's type is gone; the backup's own operator does
    // not hold it back.
    dbs.dst.psql("DROP TABLE other.moods");
    let cleaned = run_json(&wd, &["cleanup", "--dest", &dst, "--before", &far_future()]);
    assert_eq!(backups_left(&dbs.dst), "", "{cleaned}");
}

/// A later migration that takes in a schema the earlier one left out moves
/// what the earlier backup's objects use (a CHECK's function of `util`) into
/// its own backup: a rollback to the earlier backup brings them live bound
/// to that backup. It says so (it was silent, and cleanup then skipped that
/// backup for reasons nobody had been told).
#[test]
fn a_rollback_whose_objects_use_another_backup_says_so() {
    let dbs = TestDbs::new("sch_bound_backups");
    let app = "CREATE SCHEMA util;
         CREATE FUNCTION util.pos(int) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT $1 > 0';
         CREATE TABLE t (id int PRIMARY KEY CHECK (util.pos(id)));";
    dbs.src.psql(app);
    dbs.dst.psql(app);
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    run_schemas(&wd, &dbs, "start", "public", &[]);
    run_schemas(&wd, &dbs, "start", "public,util", &[]);
    let earliest = list(&wd, &dbs.dst)
        .iter()
        .filter_map(|b| b["timestamp"].as_i64())
        .min()
        .unwrap();
    let plan = rollback_plan(&wd, &dst, &earliest.to_string());
    let warnings = plan["rollback"]["warnings"].to_string();
    assert!(
        warnings.contains("objects that other backups hold now")
            && warnings.contains("constraint t_id_check on table"),
        "{plan}"
    );
    // The latest backup's own objects use nothing of another's.
    let plan = run_json(&wd, &["rollback", "--dest", &dst, "--latest", "--dry-run"]);
    assert!(
        !plan["rollback"]["warnings"]
            .to_string()
            .contains("other backups hold"),
        "{plan}"
    );
}

/// Tables kept at the swap in two schemas (`s` draws its ids from
/// `app2.s_log`'s sequence) stay live at a rollback without being asked:
/// kept together, neither is warned about as bound to a copy that moves
/// (the rollback said `app2.s_log_id_seq` moved to the new backup, which it
/// did not).
#[test]
fn tables_kept_at_the_swap_in_two_schemas_stay_together_at_a_rollback() {
    let dbs = TestDbs::new("sch_kept_pair");
    let app = "CREATE SCHEMA app2;
         CREATE TABLE app2.s_log (id serial PRIMARY KEY);
         CREATE TABLE s (id int DEFAULT nextval('app2.s_log_id_seq'));
         CREATE TABLE t (id int PRIMARY KEY);";
    dbs.src.psql(app);
    dbs.dst.psql(app);
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    run_schemas(
        &wd,
        &dbs,
        "start",
        "public,app2",
        &["--keep-tables", "s,app2.s_log"],
    );
    let out = wd.run(&["rollback", "--dest", &dst, "--latest", "--dry-run"]);
    let said = common::said_by(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("stayed live when"), "{said}");
    // The whole sentence (it ended "keeping app2's"; h39b).
    assert!(
        said.contains("so the backup has no copy of them: the rollback keeps the live ones of app2 as they are"),
        "{said}"
    );
    assert!(!said.contains("moves to the new backup"), "{said}");
}

/// A rollback keeping a table of public takes every object of the backup's
/// other schemas live (a function and a view of billing here): what is left
/// of the backup is no version to restore. It was called whole (only the
/// schemas with a kept table were looked at), and a rollback to it left
/// billing without its function and view.
#[test]
fn a_rollback_keeping_a_table_of_one_schema_takes_the_others_whole() {
    let dbs = TestDbs::new("sch_keep_takes_all");
    let app = |v: &str| {
        format!(
            "CREATE SCHEMA billing; CREATE TABLE k (id int PRIMARY KEY);
             CREATE FUNCTION billing.fn() RETURNS text LANGUAGE sql AS $$ SELECT '{v}' $$;
             CREATE VIEW billing.v AS SELECT billing.fn() AS f;"
        )
    };
    dbs.dst.psql(&app("v1"));
    dbs.src.psql(&app("v2"));
    dbs.src.psql("CREATE TABLE t (id int)");
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    let x = run_schemas(&wd, &dbs, "start", "public,billing", &[])["swap"]["backup_timestamp"]
        .as_i64()
        .unwrap()
        .to_string();
    run_json(
        &wd,
        &[
            "rollback",
            "--dest",
            &dst,
            "--timestamp",
            &x,
            "--keep-tables",
            "k",
            "--allow-discard",
            "all",
        ],
    );
    assert_eq!(dbs.dst.query_one_string("SELECT billing.fn()"), "v1");
    let left = list(&wd, &dbs.dst)
        .into_iter()
        .find(|b| b["timestamp"].as_i64().map(|t| t.to_string()) == Some(x.clone()))
        .unwrap();
    assert!(left["restored_at"].is_string(), "{left}");
    let out = wd.run(&["rollback", "--dest", &dst, "--timestamp", &x]);
    assert_eq!(out.status.code(), Some(2), "{}", common::said_by(&out));
    assert_eq!(dbs.dst.query_one_string("SELECT f FROM billing.v"), "v1");
}

/// A prepared migration keeps a preserved table of billing in sync with
/// triggers: a rollback then is refused, as it is for one of public (it went
/// ahead, moved the triggers into its backup, and the next swap lost the
/// rows written to billing's table after the rollback).
#[test]
fn a_rollback_is_refused_while_a_preserved_table_of_another_schema_is_synced() {
    let dbs = TestDbs::new("sch_rollback_synced");
    let app = "CREATE SCHEMA billing; CREATE TABLE billing.payments (id int PRIMARY KEY);
               CREATE TABLE t (id int);";
    dbs.src.psql(app);
    dbs.dst.psql(app);
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    run_two(&wd, &dbs, "start", &[]);
    run_two(
        &wd,
        &dbs,
        "prepare",
        &["--preserved-tables", "billing.payments"],
    );
    let rollback = [
        "rollback",
        "--dest",
        &dst,
        "--latest",
        "--allow-discard",
        "all",
    ];
    let out = wd.run(&rollback);
    let said = common::said_by(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("in sync with triggers on the live tables (billing.payments.pgshift_sync"),
        "{said}"
    );
    // The dry run gives the plan with that reason among its refusals, exit
    // 0, as for any refusal it foresees (h38a).
    let out = wd.run(&[&rollback[..], &["--dry-run", "--json"]].concat());
    let said = common::said_by(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        plan["rollback"]["refusal"]
            .as_str()
            .is_some_and(|r| r.contains("billing.payments.pgshift_sync")),
        "{plan}"
    );
}
