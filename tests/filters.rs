//! Table filters: `--exclude-table-data`, `--exclude-table`, `--keep-tables`
//! (prepare, start, swap), the dry run's report of what each matched, and the
//! refusals (a pattern that matches nothing, a filtered preserved table, an
//! excluded table other objects need), against real clusters.

mod common;

use common::{TestDbs, Workdir, assert_usage_error, catalog_fingerprint, stderr_of};

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn filters_dry_run_refusals_start_and_rollback() {
    let dbs = TestDbs::new("filters_start");
    dbs.src.psql(
        "CREATE TABLE users (id int PRIMARY KEY, name text);
         CREATE TABLE audit (id int PRIMARY KEY, what text, user_id int);
         CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users(id), audit_id int REFERENCES audit(id));
         CREATE TABLE events (id int, at date NOT NULL) PARTITION BY RANGE (at);
         CREATE TABLE events_1 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2024-07-01');
         CREATE TABLE events_2 PARTITION OF events FOR VALUES FROM ('2024-07-01') TO ('2025-01-01');
         CREATE INDEX events_at ON events (at);
         CREATE TABLE tmp_a (id serial PRIMARY KEY, x text);
         CREATE TABLE tmp_b (id int);
         CREATE VIEW tmp_view AS SELECT * FROM tmp_b;
         -- Not migrated, so no reason to refuse excluding what it reads.
         CREATE SCHEMA reporting;
         CREATE VIEW reporting.tmp_count AS SELECT count(*) FROM tmp_a;
         INSERT INTO users SELECT g, 'src' || g FROM generate_series(1, 20) g;
         INSERT INTO audit SELECT g, 'src', g FROM generate_series(1, 5) g;
         INSERT INTO orders SELECT g, g, 1 + g % 3 FROM generate_series(1, 10) g;
         INSERT INTO events SELECT g, date '2024-01-01' + g FROM generate_series(1, 300) g;
         INSERT INTO tmp_a (x) SELECT 'x' FROM generate_series(1, 7);
         INSERT INTO tmp_b SELECT generate_series(1, 7);",
    );
    dbs.dst.psql(
        "CREATE TABLE users (id int PRIMARY KEY, name text);
         CREATE TABLE audit (id int PRIMARY KEY, what text, user_id int REFERENCES users(id));
         CREATE TABLE sessions (id int PRIMARY KEY, audit_id int REFERENCES audit(id));
         CREATE TABLE \"Settings\" (k text PRIMARY KEY, v text);
         CREATE TABLE logs (id int);
         INSERT INTO users SELECT g, 'dst' || g FROM generate_series(1, 3) g;
         INSERT INTO audit SELECT g, 'dst', 1 + g % 3 FROM generate_series(1, 4) g;
         INSERT INTO sessions VALUES (1, 1), (2, 2);
         INSERT INTO \"Settings\" VALUES ('mode', 'live');",
    );
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let filters = [
        "--exclude-table-data",
        "events",
        "--exclude-table",
        "tmp_*",
        "--keep-tables",
        "audit,\"Settings\"",
    ];

    // The dry run: what each pattern matched, in JSON and in text.
    let mut args = vec!["prepare", "--source", &src, "--dest", &dst, "--dry-run"];
    args.extend(filters);
    let plan = json(&wd.run_ok(&[args.as_slice(), &["--json"]].concat()));
    let f = &plan["plan"]["filters"];
    assert_eq!(
        f["exclude_table_data"],
        serde_json::json!([{"pattern": "events", "tables": ["events", "events_1", "events_2"]}])
    );
    assert_eq!(
        f["exclude_table"],
        serde_json::json!([{"pattern": "tmp_*", "tables": ["tmp_a", "tmp_b", "tmp_view"]}])
    );
    assert_eq!(
        f["keep_tables"],
        serde_json::json!([{"pattern": "audit", "tables": ["audit"]}, {"pattern": "\"Settings\"", "tables": ["Settings"]}])
    );
    let planned: Vec<(String, bool)> = plan["plan"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["data_excluded"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert!(planned.contains(&("events_1".into(), true)), "{planned:?}");
    assert!(planned.contains(&("orders".into(), false)), "{planned:?}");
    assert!(
        !planned
            .iter()
            .any(|(n, _)| n.starts_with("tmp_") || n == "audit"),
        "{planned:?}"
    );
    let text = wd.run_ok(&args);
    assert!(
        text.contains("exclude:     tmp_* -> tmp_a, tmp_b, tmp_view"),
        "{text}"
    );
    assert!(text.contains("events_2 (no data)"), "{text}");
    // The destination's written tables: the kept ones are said to be kept.
    for table in ["audit", "\"Settings\""] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(table) && l.trim_end().ends_with("kept")),
            "{table}: {text}"
        );
    }

    // Refusals: exit 2, one line, nothing changed on the destination.
    let before = catalog_fingerprint(&dbs.dst);
    let base = ["prepare", "--source", &src, "--dest", &dst];
    let out = wd.run(&[base.as_slice(), &["--exclude-table", "tmp_*,nomatch*"]].concat());
    assert_usage_error(
        &out,
        "--exclude-table nomatch*: no table of the source's public matches",
    );
    let out = wd.run_env(&base, &[("PGSHIFT_KEEP_TABLES", "Settings")]);
    assert_usage_error(
        &out,
        "--keep-tables Settings: no table of the destination's public matches (letters outside double quotes are folded to lower case, as in psql: write \"Settings\" with its quotes); nothing was changed",
    );
    std::fs::write(
        wd.join("pgshift.toml"),
        "exclude_table_data = ['events', 'nope']\n",
    )
    .unwrap();
    let out = wd.run(&base);
    assert_usage_error(&out, "--exclude-table-data nope: no table");
    std::fs::remove_file(wd.join("pgshift.toml")).unwrap();
    let out = wd.run(&[base.as_slice(), &["--exclude-table-data", "users"]].concat());
    assert_usage_error(&out, "orders_user_id_fkey of orders references users");
    let out = wd.run(&[base.as_slice(), &["--exclude-table", "tmp_b"]].concat());
    assert_usage_error(&out, "view public.tmp_view");
    let out = wd.run(
        &[
            base.as_slice(),
            &["--keep-tables", "audit", "--preserved-tables", "audit"],
        ]
        .concat(),
    );
    assert_usage_error(&out, "--keep-tables matches preserved table audit");
    assert_eq!(catalog_fingerprint(&dbs.dst), before);

    // start with the filters.
    let audit_oid = dbs
        .dst
        .query_one_string("SELECT 'public.audit'::regclass::oid");
    // Checksums too: a table without its rows is not compared with the source's.
    let mut args = vec![
        "start",
        "--source",
        &src,
        "--dest",
        &dst,
        "--json",
        "--verify",
        "checksums",
    ];
    args.extend(filters);
    let out = json(&wd.run_ok(&args));
    let swap = &out["swap"];
    assert_eq!(
        swap["kept_tables"],
        serde_json::json!(["Settings", "audit"])
    );
    assert_eq!(swap["warnings"], serde_json::json!([]), "{swap}");
    assert_eq!(swap["swap_mode"], "rename");
    let tables = out["prepare"]["tables"].as_array().unwrap();
    let events_1 = tables.iter().find(|t| t["name"] == "events_1").unwrap();
    assert_eq!(events_1["rows"], 0);
    assert_eq!(events_1["data_excluded"], true);
    let orders = tables.iter().find(|t| t["name"] == "orders").unwrap();
    assert!(orders.get("data_excluded").is_none(), "{orders}");

    // --exclude-table-data: the structure (partitions, index), no rows.
    assert_eq!(
        dbs.dst.query_one_string(
            "SELECT count(*) || ':' || (SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.events'::regclass)
                    || ':' || (SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'events_2')
               FROM public.events"
        ),
        "0:2:1"
    );
    // --exclude-table: neither the tables nor their sequences nor the view.
    assert_eq!(
        dbs.dst.query_one_string(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relname LIKE 'tmp%'"
        ),
        "0"
    );
    // --keep-tables: the destination's own tables, untouched, still in public.
    assert_eq!(
        dbs.dst.query_one_string(
            "SELECT 'public.audit'::regclass::oid || ':' || string_agg(what, ',') FROM (SELECT DISTINCT what FROM public.audit) a"
        ),
        format!("{audit_oid}:dst")
    );
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT v FROM public.\"Settings\""),
        "live"
    );
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT count(*) FROM public.users"),
        "20"
    );
    // Foreign keys: the source's orders -> audit made in the swap, now valid;
    // the kept audit's key re-pointed from the old users to the new one.
    assert_eq!(
        dbs.dst.query_one_string(
            "SELECT string_agg(conrelid::regclass || '>' || confrelid::regclass || ':' || convalidated, ' ' ORDER BY conname)
               FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace"
        ),
        "audit>users:true orders>audit:true orders>users:true"
    );
    let backup = swap["backup_schema"].as_str().unwrap().to_string();
    let changes: Vec<String> = swap["foreign_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {} {}",
                c["table"].as_str().unwrap(),
                c["action"].as_str().unwrap(),
                c["references"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            format!("{backup}.sessions detached public.audit"),
            "public.audit repointed public.users".to_string(),
        ]
    );
    let ts = swap["backup_timestamp"].as_i64().unwrap().to_string();
    let manifest = dbs.dst.query_one_string(&format!(
        "SELECT (manifest->'kept_tables') || (manifest->'detached_foreign_keys'->0->'name') FROM pgshift.backups WHERE ts = {ts}"
    ));
    assert_eq!(
        manifest,
        "[\"Settings\", \"audit\", \"sessions_audit_id_fkey\"]"
    );

    // The backup verifies; a rollback keeps the kept tables live (the backup
    // has no copy of them) and re-attaches the detached key.
    wd.run_ok(&["verify", "--dest", &dst, "--timestamp", &ts]);
    let rb = json(&wd.run_ok(&["rollback", "--dest", &dst, "--latest", "--json"]));
    assert_eq!(rb["kept_tables"], serde_json::json!(["Settings", "audit"]));
    assert_eq!(
        dbs.dst.query_one_string(
            "SELECT 'public.audit'::regclass::oid || ':' || (SELECT count(*) FROM public.users)
                    || ':' || (SELECT confrelid::regclass::text FROM pg_constraint WHERE conname = 'sessions_audit_id_fkey')"
        ),
        format!("{audit_oid}:3:audit")
    );
}

#[test]
fn swap_keeps_destination_only_tables() {
    let dbs = TestDbs::new("filters_swap_keep");
    dbs.src
        .psql("CREATE TABLE t1 (id int PRIMARY KEY); INSERT INTO t1 SELECT generate_series(1, 5);");
    dbs.dst.psql(
        "CREATE TABLE t1 (id int PRIMARY KEY);
         CREATE TABLE app_state (k text PRIMARY KEY, v text) PARTITION BY LIST (k);
         CREATE TABLE app_state_a PARTITION OF app_state FOR VALUES IN ('a');
         INSERT INTO app_state VALUES ('a', 'keep me');",
    );
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    common::assert_success(&wd.prepare(&dbs, &["--json"]));
    // The application writes the table it keeps after prepare: those rows stay
    // in public, so the discarded-writes gate lets the swap through.
    dbs.dst
        .psql("UPDATE app_state SET v = 'kept, written after prepare' WHERE k = 'a'");

    // The shadow has its own t1: keeping the destination's is refused.
    let out = wd.run(&["swap", "--dest", &dst, "--keep-tables", "t1"]);
    assert_usage_error(&out, "the prepared shadow has its own t1");
    let out = wd.run(&["swap", "--dest", &dst, "--keep-tables", "app_state_a"]);
    assert_usage_error(&out, "app_state_a is a partition (or child) of app_state");

    // The dry run's transaction shows the kept tables' foreign-key step.
    let dry = json(&wd.run_ok(&[
        "swap",
        "--dest",
        &dst,
        "--keep-tables",
        "app_*",
        "--dry-run",
        "--json",
    ]));
    // Its writes after prepare stay live: no refusal (the dry run counted
    // them as discarded, where the swap does not).
    assert_eq!(dry["swap"]["refusal"], serde_json::Value::Null, "{dry}");
    assert_eq!(
        dry["swap"]["impact"]["discarded_writes"],
        serde_json::json!([]),
        "{dry}"
    );
    let sql: Vec<&str> = dry["swap"]["sql"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let fk_note = sql
        .iter()
        .position(|l| l.starts_with("-- foreign keys between kept tables and the backup"));
    let manifest_note = sql
        .iter()
        .position(|l| l.starts_with("-- backup manifest written"));
    assert!(fk_note.is_some() && fk_note < manifest_note, "{sql:#?}");

    let out = json(&wd.run_ok(&[
        "swap",
        "--dest",
        &dst,
        "--keep-tables",
        "app_*",
        "--swap-mode",
        "object",
        "--json",
    ]));
    assert_eq!(
        out["kept_tables"],
        serde_json::json!(["app_state", "app_state_a"])
    );
    assert_eq!(out["warnings"], serde_json::json!([]), "{out}");
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT v || ':' || (SELECT count(*) FROM t1) FROM public.app_state"),
        "kept, written after prepare:5"
    );
}

/// What an excluded table takes along (the sequences it owns, every child of
/// a parent) and what a partition without its rows breaks are refused or
/// followed before anything changes.
#[test]
fn owned_sequences_inheritance_and_partitions_without_rows() {
    let dbs = TestDbs::new("filters_deps");
    dbs.src.psql(
        "CREATE TABLE legacy (id serial PRIMARY KEY, x text);
         SELECT setval('legacy_id_seq', 1000);
         CREATE TABLE newt (id int PRIMARY KEY DEFAULT nextval('legacy_id_seq'), y text);
         INSERT INTO newt (y) VALUES ('n');
         CREATE TABLE pa (a int);
         CREATE TABLE pb (b int);
         CREATE TABLE kid () INHERITS (pa, pb);
         INSERT INTO kid VALUES (1, 2);
         CREATE TABLE p (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE p_2024 PARTITION OF p FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         CREATE TABLE p_2025 PARTITION OF p FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         CREATE TABLE pref (id int PRIMARY KEY, p_id int, p_at date, FOREIGN KEY (p_id, p_at) REFERENCES p);
         INSERT INTO p VALUES (1, '2024-05-01');
         INSERT INTO pref VALUES (1, 1, '2024-05-01');",
    );
    dbs.dst.psql(
        "CREATE TABLE legacy (id serial PRIMARY KEY, x text);
         INSERT INTO legacy (x) VALUES ('dst');
         CREATE TABLE pa (a int);",
    );
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let base = ["prepare", "--source", &src, "--dest", &dst];
    let before = catalog_fingerprint(&dbs.dst);

    // newt's default draws from the sequence legacy owns, which pg_dump
    // leaves out with it: after the swap it would draw from the backup's.
    let out = wd.run(&[base.as_slice(), &["--exclude-table", "legacy", "--dry-run"]].concat());
    assert_usage_error(
        &out,
        "objects of the source depend on excluded tables and would be migrated without them: default value for column id of table newt",
    );
    // pref's rows reference rows of a partition migrated without them.
    let out = wd.run(
        &[
            base.as_slice(),
            &["--exclude-table-data", "p_2024", "--dry-run"],
        ]
        .concat(),
    );
    assert_usage_error(
        &out,
        "pref_p_id_p_at_fkey of pref references p (its partitions p_2024 without rows)",
    );
    assert_eq!(catalog_fingerprint(&dbs.dst), before);

    // kid inherits from pa and pb: leaving out either one's rows takes
    // kid's out of the other, which is refused unless kid is named too.
    for (parent, other) in [("pa", "pb"), ("pb", "pa")] {
        for flag in ["--exclude-table-data", "--exclude-table"] {
            let out = wd.run(&[base.as_slice(), &[flag, parent, "--dry-run"]].concat());
            assert_usage_error(
                &out,
                &format!("{flag}: the source's kid inherits from {parent} and from {other}: "),
            );
            assert!(stderr_of(&out).contains(&format!("(`{flag} kid`)")));
        }
        let named = format!("{parent},kid");
        let plan = json(
            &wd.run_ok(
                &[
                    base.as_slice(),
                    &["--exclude-table-data", &named, "--dry-run", "--json"],
                ]
                .concat(),
            ),
        );
        assert_eq!(
            plan["plan"]["filters"]["exclude_table_data"],
            serde_json::json!([{"pattern": parent, "tables": ["kid", parent]}, {"pattern": "kid", "tables": ["kid"]}])
        );
    }
    // The destination's pa kept: the source's kid is left out with its
    // namesake.
    let out = wd.run(&[base.as_slice(), &["--keep-tables", "pa", "--dry-run"]].concat());
    assert_usage_error(
        &out,
        "--keep-tables: the source's kid inherits from pa and from pb: it is left out with pa, so pb would be migrated without kid's rows",
    );
    wd.run_ok(
        &[
            base.as_slice(),
            &["--keep-tables", "pa", "--exclude-table", "kid", "--dry-run"],
        ]
        .concat(),
    );
    // A partition or child left out by name: what was asked, warned once
    // (its parent comes without those rows; h39b).
    let plan = json(
        &wd.run_ok(
            &[
                base.as_slice(),
                &["--exclude-table", "p_2025,kid,pref", "--dry-run", "--json"],
            ]
            .concat(),
        ),
    );
    let warned = plan["plan"]["warnings"].to_string();
    for w in [
        "--exclude-table p_2025: its partitioned table p is migrated without p_2025's rows, and without a partition for their range",
        "--exclude-table kid: its parent pa is migrated without kid's rows",
        "--exclude-table kid: its parent pb is migrated without kid's rows",
    ] {
        assert!(warned.contains(w), "{w}: {warned}");
    }
    // pb migrated without its rows anyway: nothing of it is lost (h39a).
    for leave in [["--exclude-table", "pa"], ["--keep-tables", "pa"]] {
        wd.run_ok(
            &[
                base.as_slice(),
                &leave,
                &["--exclude-table-data", "pb", "--dry-run"],
            ]
            .concat(),
        );
    }
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
}

/// A migrated table's default draws from a sequence the kept table's
/// namesake owns: after the swap it draws from the destination's sequence,
/// so one behind the source's is refused (its next values are ids the
/// migrated rows hold), with the setval that fixes it; once set, the swap
/// leaves new rows clear of the migrated ones.
#[test]
fn a_kept_tables_sequence_behind_the_sources_is_refused() {
    let dbs = TestDbs::new("filters_kept_seq");
    dbs.src.psql(
        "CREATE TABLE legacy (id serial PRIMARY KEY, x text);
         SELECT setval('legacy_id_seq', 1000);
         CREATE TABLE newt (id int PRIMARY KEY DEFAULT nextval('legacy_id_seq'), y text);
         INSERT INTO newt (y) SELECT 'src' FROM generate_series(1, 3);",
    );
    dbs.dst.psql(
        "CREATE TABLE legacy (id serial PRIMARY KEY, x text);
         INSERT INTO legacy (x) VALUES ('dst');",
    );
    let (wd, args) = refused_before_anything(
        &dbs,
        "legacy",
        "--keep-tables: default value for column id of table newt of the source uses sequence legacy_id_seq, which the source's legacy owns; after the swap they draw from the destination's legacy_id_seq, owned by the kept legacy, which would next give 2 while the source's gives 1004: values the migrated rows already hold; on the destination run `SELECT pg_catalog.setval('public.legacy_id_seq', 1003, true)` (or keep the tables that use it too), then prepare again; nothing was changed",
    );
    let dst = dbs.dst.url();

    dbs.dst
        .psql("SELECT pg_catalog.setval('public.legacy_id_seq', 1003, true);");
    wd.run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    wd.run_ok(&["swap", "--dest", &dst]);
    assert_eq!(
        dbs.dst
            .psql("INSERT INTO newt (y) VALUES ('after') RETURNING id; SELECT x FROM legacy;")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["1004", "dst"]
    );
}

/// Migrated objects that use columns the kept table lacks on the destination
/// (a view's column, a foreign key's referenced column) are refused before
/// anything is changed, instead of failing the restore halfway.
#[test]
fn a_column_the_kept_table_lacks_is_refused() {
    let dbs = TestDbs::new("filters_kept_cols");
    dbs.src.psql(
        "CREATE TABLE audit (id int PRIMARY KEY, msg text, extra int UNIQUE, \"Note\" text);
         CREATE VIEW v_audit AS SELECT id, extra, \"Note\" FROM audit;
         CREATE VIEW v_ok AS SELECT id, msg FROM audit;
         CREATE TABLE refs (id int PRIMARY KEY, audit_extra int REFERENCES audit (extra));",
    );
    dbs.dst.psql(
        "CREATE TABLE audit (id int PRIMARY KEY, msg text);
         INSERT INTO audit VALUES (1, 'dst');",
    );
    refused_before_anything(
        &dbs,
        "audit",
        "--keep-tables: objects of the source use columns the kept tables do not have on the destination: constraint refs_audit_extra_fkey on table refs uses audit.extra, view public.v_audit uses audit.\"Note\", view public.v_audit uses audit.extra; exclude those objects (--exclude-table), keep their tables too, or add the columns on the destination; nothing was changed",
    );
}

/// `prepare --keep-tables kept` from `dbs`'s source into its destination,
/// with and without `--dry-run`: a usage error containing `needle` both
/// times, the destination unchanged. The work dir and prepare's arguments.
fn refused_before_anything(dbs: &TestDbs, kept: &str, needle: &str) -> (Workdir, Vec<String>) {
    let wd = Workdir::new();
    let args: Vec<String> = [
        "prepare",
        "--source",
        &dbs.src.url(),
        "--dest",
        &dbs.dst.url(),
    ]
    .into_iter()
    .map(String::from)
    .chain(["--keep-tables".to_string(), kept.to_string()])
    .collect();
    let before = catalog_fingerprint(&dbs.dst);
    for dry in [&["--dry-run"][..], &[]] {
        let all: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .chain(dry.iter().copied())
            .collect();
        assert_usage_error(&wd.run(&all), needle);
    }
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
    (wd, args)
}

/// A kept table's key to a table migrated without its rows: `status` says
/// the swap would be refused, and the swap's refusal names kept tables.
#[test]
fn status_sees_a_kept_tables_broken_key() {
    let dbs = TestDbs::new("filters_kept_fk");
    dbs.src.psql(
        "CREATE TABLE orders (id int PRIMARY KEY);
         INSERT INTO orders SELECT generate_series(1, 3);
         CREATE TABLE dst_log (id int PRIMARY KEY, order_id int);
         CREATE TABLE src_ref (id int PRIMARY KEY, log_id int REFERENCES dst_log);
         INSERT INTO dst_log VALUES (7, NULL); INSERT INTO src_ref VALUES (1, 7);",
    );
    dbs.dst.psql(
        "CREATE TABLE orders (id int PRIMARY KEY);
         CREATE TABLE dst_log (id int PRIMARY KEY, order_id int REFERENCES orders);
         INSERT INTO orders VALUES (1);
         INSERT INTO dst_log VALUES (1, 1);",
    );
    let (wd, dst, status, prepared) = prepare_then_status(
        &dbs,
        &["--keep-tables", "dst_log", "--exclude-table-data", "orders"],
    );
    // Said by prepare already, as for a preserved table's key, both ways:
    // the kept table's rows, and the source's rows referencing it (h39b).
    let warned = prepared["warnings"].to_string();
    for w in [
        "dst_log_order_id_fkey: 1 row of dst_log (order_id) references no row of orders (id)",
        "src_ref_log_id_fkey: 1 row of src_ref (log_id) references no row of dst_log (id)",
    ] {
        assert!(
            warned.contains("foreign keys involving kept tables do not match")
                && warned.contains(w),
            "{w}: {prepared}"
        );
    }
    assert_eq!(status["swap_allowed"], false, "{status}");
    let why = status["swap_blocked_reason"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("foreign keys involving preserved or kept tables do not match"),
        "{status}"
    );
    let out = wd.run(&["swap", "--dest", &dst]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("foreign keys involving preserved or kept tables do not match"),
        "{stderr}"
    );
}

/// The source's key to a kept table that has no unique key on the referenced
/// columns: `status` and the swap say so before the swap's transaction.
#[test]
fn a_kept_table_without_the_referenced_unique_key_is_named() {
    let dbs = TestDbs::new("filters_kept_unique");
    dbs.src.psql(
        "CREATE TABLE audit (id int PRIMARY KEY);
         CREATE TABLE audit_ref (id int PRIMARY KEY, audit_id int REFERENCES audit (id));
         INSERT INTO audit VALUES (1); INSERT INTO audit_ref VALUES (1, 1);",
    );
    dbs.dst
        .psql("CREATE TABLE audit (id int, note text); INSERT INTO audit VALUES (1, 'dst');");
    let (wd, dst, status, _) = prepare_then_status(&dbs, &["--keep-tables", "audit"]);
    let needle = "foreign key audit_ref_audit_id_fkey of audit_ref references audit (id), which has no unique key on those columns on the destination";
    assert_eq!(status["swap_allowed"], false, "{status}");
    assert!(
        status["swap_blocked_reason"]
            .as_str()
            .unwrap_or_default()
            .contains(needle),
        "{status}"
    );
    let before = catalog_fingerprint(&dbs.dst);
    let out = wd.run(&["swap", "--dest", &dst]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains(needle), "{err}");
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
}

/// `prepare` from `dbs`'s source into its destination with `args`, then
/// `status --json`: the work dir, the destination's URL and the status.
/// Prepare with `args`, then `status`: the workdir, the destination's URL,
/// status's JSON and prepare's.
fn prepare_then_status(
    dbs: &TestDbs,
    args: &[&str],
) -> (Workdir, String, serde_json::Value, serde_json::Value) {
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let prepared = json(
        &wd.run_ok(
            &[
                ["prepare", "--json", "--source", &src, "--dest", &dst].as_slice(),
                args,
            ]
            .concat(),
        ),
    );
    let status = json(&wd.run_ok(&["status", "--dest", &dst, "--json"]));
    (wd, dst, status, prepared)
}

/// The same when the destination's sequence of that name is not the kept
/// table's (not owned by it): it went to the backup with the rest of public
/// at the swap, and the migrated table's default drew from the backup's
/// copy (`nextval('backup_<ts>.legacy_id_seq')`), which also kept cleanup
/// from ever dropping that backup. Refused, with the statement that makes it
/// the kept table's; then the default draws from the live sequence.
#[test]
fn a_sequence_the_kept_table_does_not_own_is_refused() {
    let dbs = TestDbs::new("filters_kept_seq_unowned");
    dbs.src.psql(
        "CREATE TABLE legacy (id serial PRIMARY KEY, x text);
         SELECT setval('legacy_id_seq', 500);
         CREATE TABLE newt (id int PRIMARY KEY DEFAULT nextval('legacy_id_seq'), y text);
         INSERT INTO newt (y) VALUES ('src');",
    );
    dbs.dst.psql(
        "CREATE SEQUENCE legacy_id_seq START 1000;
         CREATE TABLE legacy (id int PRIMARY KEY DEFAULT nextval('legacy_id_seq'), x text);
         INSERT INTO legacy (x) VALUES ('dst');",
    );
    let (wd, args) = refused_before_anything(
        &dbs,
        "legacy",
        "--keep-tables: default value for column id of table newt of the source uses sequence legacy_id_seq, which the source's legacy owns; the destination's legacy_id_seq is not the kept legacy's: it goes to the backup with the rest of public at the swap, and they would draw from that copy; on the destination run `ALTER SEQUENCE public.legacy_id_seq OWNED BY public.legacy.id` (or keep the tables that use it too), then prepare again; nothing was changed",
    );
    dbs.dst
        .psql("ALTER SEQUENCE public.legacy_id_seq OWNED BY public.legacy.id;");
    wd.run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    wd.run_ok(&["swap", "--dest", &dbs.dst.url()]);
    assert_eq!(
        dbs.dst.psql(
            "INSERT INTO newt (y) VALUES ('after') RETURNING id;
             SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'public.newt'::regclass;"
        )
        .lines()
        .collect::<Vec<_>>(),
        ["1001", "nextval('legacy_id_seq'::regclass)"]
    );
}

/// `swap --keep-tables` says what a kept table leaves behind as the rest of
/// public moves to the backup, as `prepare --keep-tables` and `rollback
/// --keep-tables` do: a view that reads it goes along, a type it uses goes
/// along and it keeps using the backup's copy. The swap and its dry run
/// said nothing.
#[test]
fn swap_keep_tables_warns_of_what_the_kept_table_leaves_behind() {
    let dbs = TestDbs::new("filters_swap_keep_warn");
    dbs.dst.psql(
        "CREATE TYPE lvl AS ENUM ('info', 'warn');
         CREATE TABLE applog (id serial PRIMARY KEY, l lvl);
         INSERT INTO applog (l) VALUES ('info');
         CREATE VIEW applog_v AS SELECT * FROM applog;",
    );
    dbs.src.psql(
        "CREATE TYPE lvl AS ENUM ('info', 'warn', 'error');
         CREATE TABLE t (id int PRIMARY KEY, l lvl);",
    );
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    wd.run_ok(&["prepare", "--source", &dbs.src.url(), "--dest", &dst]);
    let warned = |v: &serde_json::Value| {
        let w = v["warnings"].to_string();
        assert!(
            w.contains("a kept table uses type lvl, which moves to the backup"),
            "{v}"
        );
        assert!(
            w.contains("view public.applog_v depends on a kept table"),
            "{v}"
        );
    };
    let plan = json(&wd.run_ok(&[
        "swap",
        "--dry-run",
        "--json",
        "--keep-tables",
        "applog",
        "--dest",
        &dst,
    ]));
    warned(&plan["swap"]);
    let report = json(&wd.run_ok(&["swap", "--json", "--keep-tables", "applog", "--dest", &dst]));
    warned(&report);
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM public.applog"), "1");
}

/// An object that uses an array of an excluded table's row type (`base[]`: a
/// column, a function's argument or result, a composite type's attribute, a
/// domain) needs the table as much as one of its row type does. Each was
/// missed: prepare failed in the schema phase (`type "public.base[]" does
/// not exist`) with a clean dry run, or, when the destination had its own
/// `base`, bound the shadow's column to the live `base[]`, which the swap
/// moves to the backup. Each is refused before anything changes, in the dry
/// run too, whether the destination has a `base` or not, as an object of
/// the row type itself is (a domain over `base`, and what uses an array of
/// that domain through it).
#[test]
fn an_array_of_an_excluded_tables_row_type_is_refused() {
    let dbs = TestDbs::new("filters_array_rowtype");
    dbs.src.psql(
        "CREATE TABLE base (id int PRIMARY KEY, v text);
         INSERT INTO base VALUES (1, 'a');
         CREATE TABLE arr_user (id int, bs base[]);
         INSERT INTO arr_user VALUES (1, ARRAY[ROW(1, 'a')::base]);
         CREATE FUNCTION f_arg(xs base[]) RETURNS int LANGUAGE sql AS 'SELECT 1';
         CREATE FUNCTION f_ret() RETURNS base[] LANGUAGE sql AS 'SELECT NULL::base[]';
         CREATE TYPE ct AS (xs base[]);
         CREATE DOMAIN d_arr AS base[];
         CREATE DOMAIN d_row AS base;
         CREATE TABLE dom_arr_user (id int, ds d_row[]);
         CREATE TABLE plain (id int);",
    );
    let needle = "--exclude-table: objects of the source depend on excluded tables and would be migrated without them: composite type ct, function f_arg(base[]), function f_ret(), table arr_user, type d_arr, type d_row; exclude the tables and views they belong to too (--exclude-table); composite type ct, function f_arg(base[]), function f_ret(), type d_arr, type d_row are migrated with the schema (no flag leaves them out)";
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let base = [
        "prepare",
        "--source",
        &src,
        "--dest",
        &dst,
        "--exclude-table",
        "base",
    ];
    for dest_has_base in [false, true] {
        if dest_has_base {
            dbs.dst
                .psql("CREATE TABLE base (id int PRIMARY KEY, v text); INSERT INTO base VALUES (7, 'dst');");
        }
        let before = catalog_fingerprint(&dbs.dst);
        for dry in [&["--dry-run"][..], &[]] {
            assert_usage_error(&wd.run(&[base.as_slice(), dry].concat()), needle);
        }
        assert_eq!(catalog_fingerprint(&dbs.dst), before);
    }
}

/// `--exclude-table` on a populated materialized view: pg_dump leaves it out,
/// but the matviews phase still refreshed it in the shadow and failed
/// prepare part way (`relation "shadow.mv" does not exist`) after a clean
/// dry run. It is not migrated; the other materialized views are refreshed
/// and the rest arrives as on the source.
#[test]
fn an_excluded_materialized_view_is_not_refreshed() {
    let dbs = TestDbs::new("filters_matview");
    dbs.src.psql(
        "CREATE TABLE t (id int);
         INSERT INTO t VALUES (1), (2);
         CREATE MATERIALIZED VIEW mv AS SELECT count(*) AS c FROM t;
         CREATE MATERIALIZED VIEW mv_kept AS SELECT sum(id) AS s FROM t;",
    );
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    wd.run_ok(&[
        "start",
        "--source",
        &src,
        "--dest",
        &dst,
        "--exclude-table",
        "mv",
    ]);
    assert_eq!(
        dbs.dst.query_one_string(
            "SELECT (SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class
                      WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'm'))
                    || ':' || (SELECT count(*) FROM public.t) || ':' || (SELECT s FROM public.mv_kept)"
        ),
        "mv_kept,t:2:3"
    );
}

/// Every list flag splits on commas outside double quotes: a table whose
/// name holds a comma can be preserved as it can be filtered.
#[test]
fn a_quoted_name_with_a_comma_in_every_list_flag() {
    let dbs = TestDbs::new("filters_comma");
    for db in [&dbs.src, &dbs.dst] {
        db.psql("CREATE TABLE \"a,b\" (id int PRIMARY KEY); CREATE TABLE \"c,d\" (id int);");
    }
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let base = ["prepare", "--source", &src, "--dest", &dst, "--dry-run"];
    let plan = json(
        &wd.run_ok(
            &[
                base.as_slice(),
                &[
                    "--json",
                    "--preserved-tables",
                    "\"a,b\"",
                    "--exclude-table",
                    "\"c,d\"",
                ],
            ]
            .concat(),
        ),
    );
    assert_eq!(
        plan["plan"]["preserved_tables"],
        serde_json::json!(["\"a,b\""])
    );
    // The same from the environment.
    let out = wd.run_env(
        &[base.as_slice(), &["--json"]].concat(),
        &[("PGSHIFT_PRESERVED_TABLES", "\"a,b\"")],
    );
    let plan = json(&common::assert_success(&out));
    assert_eq!(
        plan["plan"]["preserved_tables"],
        serde_json::json!(["\"a,b\""])
    );
}

/// An excluded table other objects need: the refusal names each as what it
/// is (a table's rule is a rule, not a view) and gives advice that fits
/// them: views and tables can be excluded too, functions, types and domains
/// come with the schema.
#[test]
fn dependents_are_named_as_what_they_are_with_fitting_advice() {
    let dbs = TestDbs::new("filters_dep_kinds");
    dbs.src.psql(
        "CREATE TABLE rtarget (id int PRIMARY KEY, v text);
         CREATE TABLE rule_t (id int);
         CREATE RULE r AS ON INSERT TO rule_t DO ALSO INSERT INTO rtarget VALUES (new.id, 'x');
         CREATE TABLE ftarget (id int PRIMARY KEY, v text);
         CREATE FUNCTION f_arg(b ftarget) RETURNS int LANGUAGE plpgsql AS $$BEGIN RETURN 1; END$$;
         CREATE TYPE ct AS (x ftarget);
         CREATE DOMAIN d AS ftarget;",
    );
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let base = ["prepare", "--source", &src, "--dest", &dst, "--dry-run"];
    let before = catalog_fingerprint(&dbs.dst);
    let refused = |excluded: &str| {
        let out = wd.run(&[base.as_slice(), &["--exclude-table", excluded]].concat());
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        common::stderr_of(&out)
    };

    let err = refused("rtarget");
    assert_usage_error(
        &wd.run(&[base.as_slice(), &["--exclude-table", "rtarget"]].concat()),
        "would be migrated without them: rule r on table public.rule_t; exclude them too (views and tables: --exclude-table), or migrate the tables; nothing was changed",
    );
    assert!(!err.contains("view public.rule_t"), "{err}");

    let err = refused("ftarget");
    for part in ["composite type ", "function ", "f_arg(", "type ", "d"] {
        assert!(err.contains(part), "{part}: {err}");
    }
    assert!(
        err.contains("; they are migrated with the schema (no flag leaves them out): drop or change them on the source, or do not exclude the tables; nothing was changed"),
        "{err}"
    );
    assert!(!err.contains("--exclude-table)"), "{err}");

    let err = refused("rtarget,ftarget");
    assert!(
        err.contains("; exclude the tables and views they belong to too (--exclude-table); "),
        "{err}"
    );
    assert!(
        err.contains(" are migrated with the schema (no flag leaves them out): drop or change them on the source; or do not exclude the tables; nothing was changed"),
        "{err}"
    );
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
}

/// A function body that is text (plpgsql, an SQL function's string body)
/// has no dependencies PostgreSQL tracks, so an excluded table it names is
/// not refused: it is warned about, by the dry run and by prepare, naming
/// the function and what fires it. A trigger function only tables left out
/// fire, a body naming other tables, and an unqualified name that the
/// function's own search_path resolves to another schema's table, are not.
#[test]
fn a_function_body_naming_an_excluded_table_is_warned_about() {
    let dbs = TestDbs::new("filters_bodies");
    dbs.src.psql(
        "CREATE SCHEMA audit;
         CREATE TABLE audit.changes (id serial PRIMARY KEY, tbl text);
         CREATE TABLE audit.kept_log (id int);
         CREATE TABLE orders (id int PRIMARY KEY);
         CREATE TABLE quiet (id int PRIMARY KEY);
         CREATE FUNCTION audit.log_change() RETURNS trigger LANGUAGE plpgsql
           AS $$ BEGIN INSERT INTO audit.changes (tbl) VALUES (TG_TABLE_NAME); RETURN NEW; END $$;
         CREATE TRIGGER log AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION audit.log_change();
         CREATE FUNCTION quiet_log() RETURNS trigger LANGUAGE plpgsql
           AS $$ BEGIN INSERT INTO audit.changes (tbl) VALUES ('q'); RETURN NEW; END $$;
         CREATE TRIGGER log AFTER INSERT ON quiet FOR EACH ROW EXECUTE FUNCTION quiet_log();
         CREATE FUNCTION count_changes() RETURNS bigint LANGUAGE sql SET search_path = audit
           AS 'SELECT count(*) FROM changes';
         CREATE FUNCTION other() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM audit.kept_log';
         CREATE SCHEMA elsewhere;
         CREATE TABLE elsewhere.changes (id int);
         CREATE FUNCTION elsewhere_count() RETURNS bigint LANGUAGE sql SET search_path = elsewhere, audit
           AS 'SELECT count(*) FROM changes';",
    );
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let args = [
        "prepare",
        "--source",
        &src,
        "--dest",
        &dst,
        "--schemas",
        "public,audit",
        "--exclude-table",
        "audit.changes,quiet",
    ];
    let out = wd.run(&[args.as_slice(), &["--dry-run", "--json"]].concat());
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let plan = json(&String::from_utf8_lossy(&out.stdout));
    let warnings: Vec<&str> = plan["plan"]["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .filter_map(|w| w.as_str())
        .filter(|w| w.contains("in its body"))
        .collect();
    assert_eq!(
        warnings,
        [
            "--exclude-table: function audit.log_change() (fired by triggers of orders) names audit.changes in its body, which is not migrated: after the swap it fails at the statements that use it (PostgreSQL does not track what a body names, so nothing refused it); change the function on the source, or do not exclude audit.changes",
            "--exclude-table: function count_changes() names audit.changes in its body, which is not migrated: after the swap it fails at the statements that use it (PostgreSQL does not track what a body names, so nothing refused it); change the function on the source, or do not exclude audit.changes",
        ]
    );
    let out = wd.run(&args);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stderr_of(&out).contains("function audit.log_change() (fired by triggers of orders) names audit.changes in its body"),
        "{out:?}"
    );
}

/// A preserved table's foreign key to a table migrated without its rows
/// cannot be fixed by excluding the preserved table's data (a preserved
/// table cannot be filtered): the refusal says so and what is possible.
#[test]
fn a_preserved_tables_key_to_a_table_without_rows_is_refused_with_what_is_possible() {
    let dbs = TestDbs::new("filters_preserved_fk");
    for db in [&dbs.src, &dbs.dst] {
        db.psql(
            "CREATE TABLE orgs (id int PRIMARY KEY);
             CREATE TABLE users (id int PRIMARY KEY, org_id int REFERENCES orgs (id));
             CREATE TABLE teams (id int PRIMARY KEY, org_id int REFERENCES orgs (id));
             INSERT INTO orgs VALUES (1), (2);
             INSERT INTO users VALUES (1, 1);",
        );
    }
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let base = ["prepare", "--source", &src, "--dest", &dst];
    let before = catalog_fingerprint(&dbs.dst);
    for dry in [&["--dry-run"][..], &[]] {
        let out = wd.run(
            &[
                base.as_slice(),
                &[
                    "--preserved-tables",
                    "users",
                    "--exclude-table-data",
                    "orgs,teams",
                ],
                dry,
            ]
            .concat(),
        );
        assert_usage_error(
            &out,
            "--exclude-table-data: tables migrated with their rows have foreign keys to tables migrated without them: users_org_id_fkey of users references orgs; users is preserved, and a preserved table cannot be filtered: do not exclude the data of orgs, or do not preserve users; nothing was changed",
        );
        let out = wd.run(
            &[
                base.as_slice(),
                &[
                    "--preserved-tables",
                    "users",
                    "--exclude-table-data",
                    "orgs",
                ],
                dry,
            ]
            .concat(),
        );
        assert_usage_error(
            &out,
            "references orgs, users_org_id_fkey of users references orgs; exclude the data of teams too; users is preserved, and a preserved table cannot be filtered: do not exclude the data of orgs, or do not preserve users; nothing was changed",
        );
    }
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
}

/// The refusals name tables as they must be typed back into the flags:
/// `"Users"`, `"Sales"."Invoice"`, never quoted twice (`"""Sales"".""Invoice"""`).
#[test]
fn refusals_name_tables_as_the_flags_take_them() {
    let dbs = TestDbs::new("filters_quoted_names");
    for db in [&dbs.src, &dbs.dst] {
        db.psql(
            r#"CREATE SCHEMA "Sales";
               CREATE TABLE "Orgs" (id int PRIMARY KEY);
               CREATE TABLE "Users" (id int PRIMARY KEY, org int REFERENCES "Orgs" (id));
               CREATE TABLE "Sales"."Invoice" (id int PRIMARY KEY, org int REFERENCES "Orgs" (id));"#,
        );
    }
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let base = [
        "prepare",
        "--dry-run",
        "--source",
        &src,
        "--dest",
        &dst,
        "--schemas",
        r#"public,"Sales""#,
    ];
    let refused = |extra: &[&str], said: &str| {
        assert_usage_error(&wd.run(&[base.as_slice(), extra].concat()), said);
    };
    refused(
        &[
            "--preserved-tables",
            r#""Users""#,
            "--exclude-table-data",
            r#""Orgs""#,
        ],
        r#"foreign keys to tables migrated without them: "Invoice_org_fkey" of "Sales"."Invoice" references "Orgs", "Users_org_fkey" of "Users" references "Orgs"; exclude the data of "Sales"."Invoice" too; "Users" is preserved, and a preserved table cannot be filtered: do not exclude the data of "Orgs", or do not preserve "Users"; nothing was changed"#,
    );
    refused(
        &[
            "--preserved-tables",
            r#""Sales"."Invoice""#,
            "--exclude-table-data",
            r#""Sales".*"#,
        ],
        r#"--exclude-table-data matches preserved table "Sales"."Invoice": a preserved table"#,
    );
}

/// The dry run's text names tables as a reader types them: the pattern's
/// matches and the plan's public tables quoted where they must be (they were
/// printed bare, `Audit Log`, beside other schemas' quoted names).
#[test]
fn the_dry_run_names_tables_as_the_flags_take_them() {
    let dbs = TestDbs::new("filters_quoted_text");
    for db in [&dbs.src, &dbs.dst] {
        db.psql(r#"CREATE TABLE "Users" (id int PRIMARY KEY); CREATE TABLE "Audit Log" (id int);"#);
    }
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let out = common::assert_success(&wd.run(&[
        "prepare",
        "--dry-run",
        "--source",
        &src,
        "--dest",
        &dst,
        "--preserved-tables",
        r#""Users""#,
        "--keep-tables",
        r#""Audit Log""#,
    ]));
    assert!(
        out.lines()
            .any(|l| l.trim_end() == r#"  keep:        "Audit Log" -> "Audit Log""#),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with(r#""Users" (preserved) "#)),
        "{out}"
    );
}

/// A kept table takes its partitions (or children) along, and with them
/// their names: a table of the other side named like one of them, but not
/// one of that side's partitions of the kept table, cannot go where it would
/// go. Prepare left the source's out, rows and all, and a rollback left the
/// backup's behind in the backup (and the current one in place), without a
/// word. Each is warned about, naming both tables; the kept table's own
/// partitions of the same name are not.
#[test]
fn a_table_named_like_a_kept_tables_partition_is_warned_about() {
    let dbs = TestDbs::new("filters_keep_partition_names");
    dbs.src.psql(
        "CREATE TABLE lg (id int, k int) PARTITION BY RANGE (k);
         CREATE TABLE lg_1 PARTITION OF lg FOR VALUES FROM (0) TO (100);
         CREATE TABLE lg_a (id int PRIMARY KEY, v text);
         INSERT INTO lg_a SELECT g, 'source' FROM generate_series(1, 7) g;
         CREATE TABLE lg_b (id int, k int) PARTITION BY LIST (k);
         CREATE TABLE lg_b_1 PARTITION OF lg_b FOR VALUES IN (1);
         CREATE TABLE t (id int PRIMARY KEY);",
    );
    dbs.dst.psql(
        "CREATE TABLE lg (id int, k int) PARTITION BY RANGE (k);
         CREATE TABLE lg_a PARTITION OF lg FOR VALUES FROM (0) TO (100);
         CREATE TABLE lg_b PARTITION OF lg FOR VALUES FROM (100) TO (200);
         CREATE TABLE lg_1 (id int PRIMARY KEY, v text);
         INSERT INTO lg_1 SELECT g, 'destination' FROM generate_series(1, 50) g;
         CREATE TABLE t (id int PRIMARY KEY);",
    );
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let dry = [
        "prepare",
        "--source",
        &src,
        "--dest",
        &dst,
        "--keep-tables",
        "lg",
        "--dry-run",
    ];
    let plan = json(&wd.run_ok(&[dry.as_slice(), &["--json"]].concat()));
    let w = plan["plan"]["warnings"].to_string();
    assert!(
        w.contains("the source's table lg_a is not migrated, nor its rows: the destination's lg_a, a partition (or child) of the kept table lg, keeps that name in public"),
        "{plan}"
    );
    assert!(
        w.contains("the source's table lg_b is not migrated (with its partitions or children lg_b_1), nor its rows"),
        "{plan}"
    );
    assert!(!w.contains("lg_1"), "{plan}");
    assert!(!w.contains("the source's table lg_b_1"), "{plan}");
    // What uses such a table would use the kept partition instead: refused.
    dbs.src.psql("CREATE VIEW v_lga AS SELECT id FROM lg_a");
    let out = wd.run(&dry);
    assert_usage_error(
        &out,
        "--keep-tables: objects of the source use lg_a, which is not migrated: a partition (or child) of a kept table has that name on the destination, so they would use it instead: view public.v_lga;",
    );
    // Excluded on purpose too: no warning, but the view is still refused.
    let out = wd.run(&[dry.as_slice(), &["--exclude-table", "lg_a"]].concat());
    assert_usage_error(
        &out,
        "objects of the source use lg_a, which is not migrated",
    );
    dbs.src.psql("DROP VIEW v_lga; DROP TABLE lg_b");

    // Migrated whole, then rolled back keeping the new lg: the backup's lg_1
    // is not lg's partition, nor is the current lg_a the backup's.
    wd.run_ok(&["prepare", "--source", &src, "--dest", &dst]);
    // Keeping lg only at the swap: the shadow holds the source's lg_a, and
    // the refusal says it is there as lg's partition, and what to keep.
    let out = wd.run(&["swap", "--dest", &dst, "--keep-tables", "lg", "--dry-run"]);
    assert_usage_error(
        &out,
        "lg_a (a partition or child of the kept lg), which the source has too; keep lg when preparing (`pgshift prepare --keep-tables lg`)",
    );
    wd.run_ok(&["swap", "--dest", &dst]);
    let backup = dbs
        .dst
        .query_one_string("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'backup_%'");
    let warned = |v: &serde_json::Value| {
        let w = v["warnings"].to_string();
        assert!(
            w.contains(&format!("table {backup}.lg_1 is not restored and stays behind in its backup, rows and all (cleanup drops what a rollback leaves of a backup): the current lg_1, a partition (or child) of the kept table lg")),
            "{v}"
        );
        assert!(
            w.contains(&format!("the current table lg_a is not moved to the new backup and stays in public: {backup}.lg_a, a partition (or child) of the backup's copy of the kept table lg")),
            "{v}"
        );
    };
    let rollback = [
        "rollback",
        "--latest",
        "--keep-tables",
        "lg",
        "--dest",
        &dst,
        "--json",
    ];
    // Such a table attached to one that moves would end up attached across
    // schemas: refused.
    dbs.dst.psql(
        "CREATE TABLE holder (id int, v text) PARTITION BY RANGE (id);
         ALTER TABLE lg_a DROP CONSTRAINT lg_a_pkey;
         ALTER TABLE holder ATTACH PARTITION lg_a FOR VALUES FROM (0) TO (1000);",
    );
    let out = wd.run(&[rollback.as_slice(), &["--dry-run"]].concat());
    assert_usage_error(
        &out,
        "--keep-tables: a partition (or child) of a kept table has the name of lg_a (attached to holder): each would stay where it is while the table it is attached to moves",
    );
    dbs.dst
        .psql("ALTER TABLE holder DETACH PARTITION lg_a; DROP TABLE holder;");
    let dry = json(&wd.run_ok(&[rollback.as_slice(), &["--dry-run"]].concat()));
    warned(&dry["rollback"]);
    warned(&json(&wd.run_ok(&rollback)));
    assert_eq!(
        dbs.dst
            .psql(&format!("SELECT count(*) FROM \"{backup}\".lg_1")),
        "50"
    );
}

/// `rollback --keep-tables` of a partitioned table with a serial column: the
/// backup's partitions' defaults draw from its copy's sequence, and all of
/// them stay behind together. It was refused ("objects of the backup depend
/// on its own copy …: default value for column id of table …metrics_p1").
#[test]
fn a_partitioned_table_with_a_serial_column_can_be_kept_by_a_rollback() {
    let dbs = TestDbs::new("filters_keep_partitioned_serial");
    let ddl = |tag: &str| {
        format!(
            "CREATE TABLE metrics (id bigserial, k int NOT NULL, note text, PRIMARY KEY (id, k)) PARTITION BY RANGE (k);
             CREATE TABLE metrics_p1 PARTITION OF metrics FOR VALUES FROM (0) TO (100);
             CREATE TABLE metrics_p2 PARTITION OF metrics FOR VALUES FROM (100) TO (200);
             INSERT INTO metrics (k, note) SELECT g, '{tag}' FROM generate_series(0, 199, 10) g;"
        )
    };
    dbs.src.psql(&ddl("new"));
    dbs.dst.psql(&ddl("old"));
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    wd.run_ok(&["start", "--source", &dbs.src.url(), "--dest", &dst]);
    let out = json(&wd.run_ok(&[
        "rollback",
        "--latest",
        "--keep-tables",
        "metrics",
        "--dest",
        &dst,
        "--json",
    ]));
    assert_eq!(
        out["kept_tables"],
        serde_json::json!(["metrics", "metrics_p1", "metrics_p2"]),
        "{out}"
    );
    // The kept partitions' defaults stay with them: nothing to warn about.
    assert_eq!(out["warnings"], serde_json::json!([]), "{out}");
    assert_eq!(
        dbs.dst.psql(
            "SELECT count(*) FILTER (WHERE note = 'new') || '/' || count(*) FROM public.metrics"
        ),
        "20/20"
    );
}
