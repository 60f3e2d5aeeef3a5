//! status and abort against real clusters, with and without the state file.

mod common;

use common::{TestDb, TestDbs, Workdir, assert_success};
use serde_json::Value;

fn status(wd: &Workdir, db: &TestDb) -> Value {
    let out = wd.run_ok(&["status", "--dest", &db.url(), "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status: not JSON ({e}):\n{out}"))
}

fn state_files(wd: &Workdir) -> Vec<String> {
    std::fs::read_dir(wd.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".migration-state-") && n.ends_with(".json"))
        .collect()
}

fn sample(dbs: &TestDbs) {
    dbs.src.psql(
        "CREATE TABLE items (id serial PRIMARY KEY, name text);
         INSERT INTO items (name) SELECT 'i' || g FROM generate_series(1, 500) g;
         CREATE TABLE tags (id int PRIMARY KEY, item_id int REFERENCES items (id));
         INSERT INTO tags SELECT g, g FROM generate_series(1, 100) g;",
    );
    dbs.dst
        .psql("CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (1);");
}

#[test]
fn status_idle_prepared_swapped_with_and_without_state_file() {
    let dbs = TestDbs::new("st_cycle");
    sample(&dbs);
    let wd = Workdir::new();
    let other = Workdir::new(); // another machine: no state file
    let url = dbs.dst.url();

    // Nothing ever ran: idle, nothing else; no pgshift schema is created.
    let s = status(&wd, &dbs.dst);
    assert_eq!(s["state"], "idle", "{s}");
    assert!(s["migration"].is_null());
    assert_eq!(s["record_from"], "none");
    assert_eq!(s["swap_allowed"], false);
    assert_eq!(s["leftovers"]["found"], false);
    assert_eq!(s["backups"], 0);
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgshift'"),
        "0"
    );
    let human = wd.run_ok(&["status", "--dest", &url]);
    assert!(
        human.contains("state:") && human.contains("idle"),
        "{human}"
    );

    wd.run_ok(&["prepare", "--source", &dbs.src.url(), "--dest", &url]);
    assert_eq!(state_files(&wd).len(), 1);
    for (w, from) in [(&wd, "both"), (&other, "destination")] {
        let s = status(w, &dbs.dst);
        assert_eq!(s["state"], "prepared", "{s}");
        assert_eq!(s["record_from"], from, "{s}");
        assert_eq!(s["swap_allowed"], true, "{s}");
        assert!(s["swap_blocked_reason"].is_null());
        assert_eq!(s["shadow"]["exists"], true);
        assert_eq!(s["shadow"]["tables"], 2);
        assert!(s["shadow"]["size_bytes"].as_i64().unwrap() > 0);
        assert_eq!(s["leftovers"]["found"], false, "{s}");
        let m = &s["migration"];
        assert_eq!(m["status"], "prepared");
        assert!(m["id"].as_i64().unwrap() > 0);
        chrono::DateTime::parse_from_rfc3339(m["started_at"].as_str().unwrap()).unwrap();
        assert!(m["error"].is_null());
    }
    let human = other.run_ok(&["status", "--dest", &url]);
    assert!(
        human.contains("prepared") && human.contains("allowed"),
        "{human}"
    );

    // status takes no lock: it works while another run holds it, and says so.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let holder = rt.block_on(dbs.dst.client());
    rt.block_on(holder.batch_execute(
        "SET application_name = 'pgshift swap pid=1 host=elsewhere'; SELECT pg_advisory_lock(1885827944, 1)",
    ))
    .unwrap();
    let s = status(&other, &dbs.dst);
    assert_eq!(s["state"], "prepared");
    assert_eq!(s["swap_allowed"], false);
    assert!(
        s["swap_blocked_reason"]
            .as_str()
            .unwrap()
            .contains("pgshift swap pid=1 host=elsewhere"),
        "{s}"
    );
    assert_eq!(s["running"]["pid"], 1);
    assert!(
        s["running"]["alive"].is_null(),
        "another host cannot be checked: {s}"
    );
    drop(holder);

    wd.run_ok(&["swap", "--dest", &url]);
    assert!(state_files(&wd).is_empty());
    for w in [&wd, &other] {
        let s = status(w, &dbs.dst);
        assert_eq!(s["state"], "idle", "{s}");
        assert_eq!(s["migration"]["status"], "swapped");
        assert_eq!(s["swap_allowed"], false);
        assert_eq!(s["leftovers"]["found"], false, "{s}");
        assert_eq!(s["shadow"]["empty"], true, "{s}");
        assert_eq!(s["backups"], 1);
    }
    // With nothing prepared, abort says so and exits 0.
    let out = wd.run_ok(&["abort", "--dest", &url, "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["aborted"], false, "{v}");
    assert_eq!(
        dbs.dst.query_one_string("SELECT count(*) FROM items"),
        "500"
    );
}

#[test]
fn status_failed_then_abort() {
    let dbs = TestDbs::new("st_failed");
    sample(&dbs);
    let wd = Workdir::new();
    let url = dbs.dst.url();
    let out = wd
        .cmd()
        .env("PGSHIFT_FAILPOINT", "data")
        .args(["prepare", "--source", &dbs.src.url(), "--dest", &url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(state_files(&wd).len(), 1);

    let check = |s: &Value, from: &str| {
        assert_eq!(s["state"], "failed", "{s}");
        assert_eq!(s["record_from"], from, "{s}");
        assert_eq!(s["migration"]["phase"], "data", "{s}");
        assert!(
            s["migration"]["error"]
                .as_str()
                .unwrap()
                .contains("injected failure at data"),
            "{s}"
        );
        assert_eq!(s["swap_allowed"], false);
        assert!(
            s["swap_blocked_reason"]
                .as_str()
                .unwrap()
                .contains("failed")
        );
    };
    // Exit 0: a failed state is data, not an error.
    check(&status(&wd, &dbs.dst), "both");
    // From the destination's own records (another machine / CI).
    let other = Workdir::new();
    check(&status(&other, &dbs.dst), "destination");
    // The state file alone is read too (--state-dir), and the human output names the phase.
    let out = other.run_ok(&[
        "status",
        "--dest",
        &url,
        "--state-dir",
        wd.path().to_str().unwrap(),
    ]);
    assert!(out.contains("failed in:") && out.contains("data"), "{out}");
    assert!(out.contains("injected failure at data"), "{out}");

    // Abort clears the record and the state file.
    let out = wd.run_ok(&["abort", "--dest", &url, "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["aborted"], true, "{v}");
    assert_eq!(v["previous_status"], "failed");
    assert!(state_files(&wd).is_empty());
    let s = status(&wd, &dbs.dst);
    assert_eq!(s["state"], "idle", "{s}");
    assert_eq!(s["migration"]["status"], "aborted");
    let out = wd.run_ok(&["abort", "--dest", &url]);
    assert!(out.contains("othing to abort"), "{out}");
}

/// Turn pgshift's dump directory into version one's: pg_dump's files straight
/// in it, no marker.
fn as_version_one(dump: &std::path::Path) {
    let schema = dump.join("schema");
    for e in std::fs::read_dir(&schema).unwrap() {
        let e = e.unwrap();
        std::fs::rename(e.path(), dump.join(e.file_name())).unwrap();
    }
    std::fs::remove_dir(schema).unwrap();
    std::fs::remove_file(dump.join(".pgshift-dump")).unwrap();
    assert!(dump.join("toc.dat").is_file());
}

/// Version one had pg_dump write straight into the dump directory, with no
/// marker: after an upgrade, the swap and abort left it, and the next
/// prepare refused it as "files pgshift did not write" (found by a helper).
/// The one the state file names is pgshift's: prepare starts over in it,
/// abort and the swap remove it. A directory holding one file more is not.
#[test]
fn a_dump_directory_of_an_earlier_version_is_pgshifts_when_the_state_file_names_it() {
    let dbs = TestDbs::new("st_v1_dump");
    sample(&dbs);
    let wd = Workdir::new();
    let url = dbs.dst.url();
    let dump = wd.join("dump");
    let prepare = [
        "prepare",
        "--source",
        &dbs.src.url(),
        "--dest",
        &url,
        "--dump-dir",
        dump.to_str().unwrap(),
    ];
    let out = wd.run_env(&prepare, &[("PGSHIFT_FAILPOINT", "data")]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    as_version_one(&dump);
    wd.run_ok(&prepare);
    assert!(dump.join(".pgshift-dump").is_file());
    as_version_one(&dump);
    let out = wd.run_ok(&["abort", "--dest", &url]);
    assert!(out.contains("removed the dump directory"), "{out}");
    assert!(!dump.exists());

    wd.run_ok(&prepare);
    as_version_one(&dump);
    wd.run_ok(&["swap", "--dest", &url]);
    assert!(!dump.exists());

    // Not only pg_dump's files: the user's, left alone.
    let out = wd.run_env(&prepare, &[("PGSHIFT_FAILPOINT", "data")]);
    assert_eq!(out.status.code(), Some(1));
    as_version_one(&dump);
    std::fs::write(dump.join("notes.txt"), "mine").unwrap();
    let out = wd.run(&prepare);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("holds files pgshift did not write"), "{err}");
    wd.run_ok(&["abort", "--dest", &url]);
    assert!(dump.join("notes.txt").is_file());

    // A run that stopped before its dump made no directory: a pg_dump -Fd
    // backup the user puts at that path since is theirs (h43a: abort
    // removed it).
    std::fs::remove_dir_all(&dump).unwrap();
    let out = wd.run_env(&prepare, &[("PGSHIFT_FAILPOINT", "snapshot")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!dump.exists());
    std::fs::create_dir(&dump).unwrap();
    for f in ["toc.dat", "3362.dat.gz"] {
        std::fs::write(dump.join(f), "the user's backup").unwrap();
    }
    let out = wd.run(&prepare);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = wd.run_ok(&["abort", "--dest", &url]);
    assert!(!out.contains("removed the dump directory"), "{out}");
    assert!(dump.join("3362.dat.gz").is_file());
}

#[test]
fn abort_drops_a_prepared_migration() {
    let dbs = TestDbs::new("st_abort");
    sample(&dbs);
    let wd = Workdir::new();
    let url = dbs.dst.url();
    wd.run_ok(&["prepare", "--source", &dbs.src.url(), "--dest", &url]);
    let other = Workdir::new();
    // A dry run asked for in the environment: abort has none, so it refuses
    // rather than drop the migration.
    let out = other.run_env(&["abort", "--dest", &url], &[("PGSHIFT_DRY_RUN", "1")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("error: PGSHIFT_DRY_RUN is set, but abort has no dry run"),
        "{err}"
    );
    assert_eq!(status(&wd, &dbs.dst)["state"], "prepared");
    // From another machine: the destination's record is enough.
    let out = other.run_ok(&["abort", "--dest", &url, "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["aborted"], true, "{v}");
    assert_eq!(v["previous_status"], "prepared");
    assert_eq!(v["removed"]["shadow"], true);
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT count(*) FROM pg_namespace WHERE nspname = 'shadow'"),
        "0"
    );
    assert_eq!(dbs.dst.query_one_string("SELECT count(*) FROM items"), "1");
    let s = status(&wd, &dbs.dst);
    // The first machine's state file is stale now: the destination's record wins.
    assert_eq!(s["state"], "idle", "{s}");
    assert_eq!(s["migration"]["status"], "aborted");
    assert!(!s["warnings"].as_array().unwrap().is_empty(), "{s}");
    // A prepare after the abort starts cleanly.
    wd.run_ok(&["prepare", "--source", &dbs.src.url(), "--dest", &url]);
    assert_eq!(status(&other, &dbs.dst)["state"], "prepared");
}

/// One operator prepares, another swaps from another directory, then the
/// first runs `abort` with its out-of-date state file: it said it aborted the
/// migration (`"aborted": true`, `"previous_status": "prepared"`) that was
/// swapped. Nothing is left to abort: it says so, with the destination's
/// status, and clears the file.
#[test]
fn abort_with_a_state_file_the_destination_has_gone_past_aborts_nothing() {
    let dbs = TestDbs::new("st_abort_stale");
    sample(&dbs);
    let (wd, other) = (Workdir::new(), Workdir::new());
    let url = dbs.dst.url();
    wd.run_ok(&["prepare", "--source", &dbs.src.url(), "--dest", &url]);
    other.run_ok(&["swap", "--dest", &url]);
    let v: Value = serde_json::from_str(&wd.run_ok(&["abort", "--dest", &url, "--json"])).unwrap();
    assert_eq!(v["aborted"], false, "{v}");
    assert_eq!(v["previous_status"], "swapped", "{v}");
    assert_eq!(v["state_file_cleared"], true, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("out of date"),
        "{v}"
    );
    assert!(state_files(&wd).is_empty(), "{:?}", state_files(&wd));
    let s = status(&wd, &dbs.dst);
    assert_eq!(s["migration"]["status"], "swapped", "{s}");
}

/// An abort run from a state directory whose migration the destination has
/// gone past (swapped from elsewhere) while another operator prepared a newer
/// one aborts the destination's migration, the newer one, and says that the
/// file here recorded another.
#[test]
fn abort_from_an_older_state_directory_says_which_migration_it_aborted() {
    let dbs = TestDbs::new("st_abort_older_dir");
    sample(&dbs);
    let (wd, other) = (Workdir::new(), Workdir::new());
    let (src, url) = (dbs.src.url(), dbs.dst.url());
    wd.run_ok(&["prepare", "--source", &src, "--dest", &url]);
    let first = status(&wd, &dbs.dst)["migration"]["id"].clone();
    other.run_ok(&["swap", "--dest", &url]);
    other.run_ok(&["prepare", "--source", &src, "--dest", &url]);
    let newer = status(&other, &dbs.dst)["migration"]["id"].clone();
    assert_ne!(first, newer);
    let v: Value = serde_json::from_str(&wd.run_ok(&["abort", "--dest", &url, "--json"])).unwrap();
    assert_eq!(v["aborted"], true, "{v}");
    assert_eq!(v["migration_id"], newer, "{v}");
    assert_eq!(
        v["message"],
        format!(
            "aborted migration {newer} (it was prepared); the state file here recorded migration {first}, which the destination has gone past"
        ),
        "{v}"
    );
    assert!(state_files(&wd).is_empty(), "{:?}", state_files(&wd));
}

/// Prepare creates the extensions the source uses and the destination lacks
/// (in public, where the source has them). An abort said "the destination's
/// public was not touched" while hstore's functions stayed in public; it now
/// names what it keeps (the application may have started using it: a call
/// leaves no dependency to check), as a failed prepare does.
#[test]
fn abort_names_the_extensions_prepare_created_and_keeps() {
    let dbs = TestDbs::new("st_abort_ext");
    dbs.src.psql(
        "CREATE EXTENSION hstore;
         CREATE TABLE items (id int PRIMARY KEY, attrs hstore);
         INSERT INTO items VALUES (1, 'a=>1');",
    );
    dbs.dst.psql("CREATE TABLE items (id int PRIMARY KEY);");
    let wd = Workdir::new();
    let url = dbs.dst.url();
    wd.run_ok(&["prepare", "--source", &dbs.src.url(), "--dest", &url]);
    let out = wd.run_ok(&["abort", "--dest", &url]);
    assert!(
        out.contains("kept the extensions prepare created: hstore")
            && out.contains("public was otherwise not touched"),
        "{out}"
    );
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT count(*) FROM pg_extension WHERE extname = 'hstore'"),
        "1"
    );
    // In JSON, too (hstore dropped first, so that prepare creates it again).
    dbs.dst.psql("DROP EXTENSION hstore");
    wd.run_ok(&["prepare", "--source", &dbs.src.url(), "--dest", &url]);
    let out = wd.run_ok(&["abort", "--dest", &url, "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["aborted"], true, "{v}");
    assert_eq!(v["extensions_kept"], serde_json::json!(["hstore"]), "{v}");
}

#[test]
fn status_reports_leftovers_and_a_dead_lock_holder() {
    let dbs = TestDbs::new("st_leftovers");
    sample(&dbs);
    let wd = Workdir::new();
    let url = dbs.dst.url();
    wd.run_ok(&["start", "--source", &dbs.src.url(), "--dest", &url]);
    // A pgshift sync trigger (its name, its function in the pgshift schema)
    // left on a public table, and the lock held by a session whose pgshift
    // process (on this host) is gone. Beside it, application triggers that
    // only look like pgshift's: not leftovers.
    dbs.dst.psql(
        "CREATE SCHEMA IF NOT EXISTS pgshift;
         CREATE FUNCTION pgshift.sync_1_ins() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
         CREATE TRIGGER pgshift_sync_ins AFTER INSERT ON items FOR EACH STATEMENT EXECUTE FUNCTION pgshift.sync_1_ins();
         CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
         CREATE TRIGGER pgshift_sync_upd AFTER UPDATE ON items FOR EACH ROW EXECUTE FUNCTION noop();
         CREATE TRIGGER pgshift_audit AFTER INSERT ON items FOR EACH ROW EXECUTE FUNCTION noop();",
    );
    let (_rt, holder, dead_pid) = hold_lock_as_dead_run(&dbs.dst, "prepare");
    let s = status(&wd, &dbs.dst);
    assert_eq!(s["state"], "idle", "{s}");
    let l = &s["leftovers"];
    assert_eq!(l["found"], true, "{s}");
    assert_eq!(
        l["triggers"],
        serde_json::json!(["pgshift_sync_ins on public.items"]),
        "{s}"
    );
    assert!(
        l["dead_lock_holder"]
            .as_str()
            .unwrap()
            .contains(&format!("pgshift pid {dead_pid}")),
        "{s}"
    );
    assert_eq!(s["running"]["alive"], false);
    drop(holder);
}

/// Take the destination's run lock in a session named as a `command` run
/// of this host whose process is gone. Keep the runtime and the client: the
/// lock lasts as long as they do.
fn hold_lock_as_dead_run(
    db: &TestDb,
    command: &str,
) -> (tokio::runtime::Runtime, tokio_postgres::Client, u32) {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let host = hostname();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let holder = rt.block_on(db.client());
    rt.block_on(holder.batch_execute(&format!(
        "SET application_name = 'pgshift {command} pid={dead_pid} host={host}'; SELECT pg_advisory_lock(1885827944, 1)"
    )))
    .unwrap();
    (rt, holder, dead_pid)
}

/// A prepared migration whose lock a dead run's session still holds: the
/// swap would be refused, and status says so (and how to end that session).
#[test]
fn a_dead_lock_holder_blocks_the_swap_in_status_too() {
    let dbs = TestDbs::new("st_dead_holder");
    sample(&dbs);
    let wd = Workdir::new();
    let url = dbs.dst.url();
    wd.run_ok(&["prepare", "--source", &dbs.src.url(), "--dest", &url]);
    let (rt, holder, _) = hold_lock_as_dead_run(&dbs.dst, "swap");
    let s = status(&wd, &dbs.dst);
    assert_eq!(s["state"], "prepared", "{s}");
    assert_eq!(s["running"]["alive"], false, "{s}");
    assert_eq!(s["swap_allowed"], false, "{s}");
    assert!(
        s["swap_blocked_reason"]
            .as_str()
            .unwrap()
            .contains("pg_terminate_backend("),
        "{s}"
    );
    rt.block_on(holder.batch_execute("SELECT pg_advisory_unlock_all()"))
        .unwrap();
    let s = status(&wd, &dbs.dst);
    assert_eq!(s["swap_allowed"], true, "{s}");
}

/// A cron cleanup with nothing old enough to drop exits 0 while another run
/// holds the lock (it failed, exit 1, whenever a prepare or a swap ran); one
/// with something to drop is still refused, naming the holder.
#[test]
fn a_cleanup_with_nothing_to_do_succeeds_while_another_run_holds_the_lock() {
    let dbs = TestDbs::new("st_cleanup_busy");
    sample(&dbs);
    let wd = Workdir::new();
    let url = dbs.dst.url();
    wd.run_ok(&["start", "--source", &dbs.src.url(), "--dest", &url]);
    let (_rt, _holder, _) = hold_lock_as_dead_run(&dbs.dst, "prepare");
    let out = wd.run_ok(&[
        "cleanup",
        "--dest",
        &url,
        "--before",
        "2000-01-01",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["dry_run"], false, "{v}");
    assert_eq!(v["dropped"], serde_json::json!([]), "{v}");
    assert_eq!(v["kept"], 1, "{v}");
    let out = wd.run(&["cleanup", "--dest", &url, "--before", "2999-01-01"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("another pgshift run holds the destination's lock"),
        "{err}"
    );
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM pgshift.backups"), "1");
}

/// The live triggers on `public.items`, by name.
fn items_triggers(db: &TestDb) -> String {
    db.query_one_string(
        "SELECT string_agg(tgname, ',' ORDER BY tgname) FROM pg_trigger
          WHERE tgrelid = 'public.items'::regclass AND NOT tgisinternal",
    )
}

/// An application's own trigger whose name starts with `pgshift_` is not
/// pgshift's: status does not call it a leftover, prepare (whose own sync
/// triggers sit beside it on a preserved table), abort and the swap leave it
/// alone, and it keeps firing throughout.
#[test]
fn an_application_trigger_named_pgshift_is_left_alone() {
    let dbs = TestDbs::new("st_apptrig");
    let audit = "CREATE TABLE aud (id int);
         CREATE FUNCTION audf() RETURNS trigger LANGUAGE plpgsql
             AS $$ BEGIN INSERT INTO aud VALUES (NEW.id); RETURN NEW; END $$;
         CREATE TRIGGER pgshift_audit AFTER INSERT ON items FOR EACH ROW EXECUTE FUNCTION audf();";
    dbs.src.psql(&format!(
        "CREATE TABLE items (id serial PRIMARY KEY, name text);
         INSERT INTO items (name) SELECT 'i' || g FROM generate_series(1, 10) g;
         {audit}"
    ));
    dbs.dst.psql(&format!(
        "CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (1);
         {audit}"
    ));
    let wd = Workdir::new();
    let url = dbs.dst.url();
    // The audit trigger fires: one more row in the (live) audit table.
    let fires = |id: i32| {
        let before: i64 = dbs
            .dst
            .query_one_string("SELECT count(*) FROM aud")
            .parse()
            .unwrap();
        dbs.dst
            .psql(&format!("INSERT INTO items (id) VALUES ({id})"));
        let after: i64 = dbs
            .dst
            .query_one_string("SELECT count(*) FROM aud")
            .parse()
            .unwrap();
        assert_eq!(after, before + 1, "the audit trigger did not fire for {id}");
    };

    let s = status(&wd, &dbs.dst);
    assert_eq!(s["leftovers"]["found"], false, "{s}");
    let human = wd.run_ok(&["status", "--dest", &url]);
    assert!(!human.contains("pgshift_audit"), "{human}");

    let prepare = || {
        let out = wd
            .cmd()
            .args(["prepare", "--source", &dbs.src.url(), "--dest", &url])
            .args(["--preserved-tables", "items"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "prepare failed: {err}");
        assert!(!err.contains("pgshift_audit"), "{err}");
    };
    prepare();
    assert_eq!(
        items_triggers(&dbs.dst),
        "pgshift_audit,pgshift_sync_del,pgshift_sync_ins,pgshift_sync_trunc,pgshift_sync_upd"
    );
    fires(100);
    let s = status(&wd, &dbs.dst);
    assert_eq!(s["state"], "prepared", "{s}");
    assert!(!s.to_string().contains("pgshift_audit"), "{s}");

    let out = wd.run_ok(&["abort", "--dest", &url, "--json"]);
    assert!(!out.contains("pgshift_audit"), "{out}");
    assert_eq!(items_triggers(&dbs.dst), "pgshift_audit");
    fires(101);
    // Nothing prepared: abort still leaves it alone.
    let out = wd.run_ok(&["abort", "--dest", &url, "--json"]);
    assert!(!out.contains("pgshift_audit"), "{out}");
    assert_eq!(items_triggers(&dbs.dst), "pgshift_audit");

    // Prepare and swap: the trigger goes along with its table.
    prepare();
    wd.run_ok(&["swap", "--dest", &url]);
    assert_eq!(items_triggers(&dbs.dst), "pgshift_audit");
    fires(102);
    let s = status(&wd, &dbs.dst);
    assert_eq!(s["migration"]["status"], "swapped", "{s}");
    assert_eq!(s["leftovers"]["found"], false, "{s}");
}

fn hostname() -> String {
    let out = std::process::Command::new("hostname").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn status_reports_a_run_that_died_during_prepare() {
    let dbs = TestDbs::new("st_dead");
    sample(&dbs);
    let wd = Workdir::new();
    let url = dbs.dst.url();
    wd.run_ok(&["prepare", "--source", &dbs.src.url(), "--dest", &url]);
    // As if the prepare had been killed during its indexes phase (SIGKILL
    // records nothing): the record still says preparing, nobody holds the lock.
    dbs.dst
        .psql("UPDATE pgshift.migration SET status = 'preparing', phase = 'indexes'");
    let other = Workdir::new();
    let s = status(&other, &dbs.dst);
    assert_eq!(s["state"], "failed", "{s}");
    assert_eq!(s["migration"]["phase"], "indexes");
    assert!(
        s["migration"]["error"]
            .as_str()
            .unwrap()
            .contains("stopped during phase indexes"),
        "{s}"
    );
    assert_eq!(s["leftovers"]["shadow"], true, "{s}");
    assert!(s["leftovers"]["hint"].as_str().unwrap().contains("abort"));
    assert_eq!(s["swap_allowed"], false);
    let v: Value =
        serde_json::from_str(&other.run_ok(&["abort", "--dest", &url, "--json"])).unwrap();
    assert_eq!(v["aborted"], true, "{v}");
    assert_eq!(v["removed"]["shadow"], true);
    let s = status(&other, &dbs.dst);
    assert_eq!(s["state"], "idle", "{s}");
    assert_eq!(s["leftovers"]["found"], false, "{s}");
}

/// A reader that goes away (`pgshift status | head -1`) ends pgshift as it
/// ends `cat`: by SIGPIPE, quietly (no panic, no backtrace, no error line),
/// with `--json` too.
#[test]
fn a_closed_stdout_ends_pgshift_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dbs = TestDbs::new("st_pipe");
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    for json in [false, true] {
        let mut cmd = wd.cmd();
        cmd.args(["status", "--dest", &dst]);
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running pgshift");
        // The reader is gone before anything is written.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("waiting for pgshift");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(13), "json {json}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("error"),
            "json {json}: {stderr}"
        );
    }
}

fn warned_of_another_destination(s: &Value) -> bool {
    s["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w.as_str().unwrap().contains("of another destination"))
}

/// The state file is named after the database only, so one directory used
/// for two destinations of one name (staging and production both `app`)
/// held one file for both: `status` against the second said "prepared"
/// with the first's record, and `abort` against it "cleared the leftovers"
/// of the first's migration, deleting its state file and its dump. Another
/// destination's file is now ignored with a warning and left alone; a
/// prepare into the second says it replaces the file.
#[test]
fn a_state_file_of_a_namesake_on_another_server_is_left_alone() {
    let dbs = TestDbs::new("st_twin");
    sample(&dbs);
    let (other_server, _) = common::clusters();
    let twin = dbs.dst.twin_on(other_server.info().clone());
    twin.psql("CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (7);");
    let wd = Workdir::new();
    let (url, twin_url) = (dbs.dst.url(), twin.url());
    wd.run_ok(&["prepare", "--source", &dbs.src.url(), "--dest", &url]);
    let files = state_files(&wd);
    assert_eq!(files.len(), 1);
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(wd.join(&files[0])).unwrap()).unwrap();
    let dump_dir = wd.join(file["dump_dir"].as_str().unwrap());
    assert!(dump_dir.is_dir(), "{file}");

    // Nothing is prepared on the namesake, whatever the file says.
    let s = status(&wd, &twin);
    assert_eq!(s["state"], "idle", "{s}");
    assert_eq!(s["record_from"], "none", "{s}");
    assert!(s["migration"].is_null(), "{s}");
    assert!(warned_of_another_destination(&s), "{s}");
    let out = wd.run(&["abort", "--dest", &twin_url, "--json"]);
    let v: Value = serde_json::from_str(&assert_success(&out)).unwrap();
    assert_eq!(v["aborted"], false, "{v}");
    assert_eq!(v["state_file_cleared"], false, "{v}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("of another destination"),
        "{out:?}"
    );
    assert_eq!(state_files(&wd), files);
    assert!(dump_dir.is_dir(), "the first migration's dump was removed");
    let s = status(&wd, &dbs.dst);
    assert_eq!(
        (&s["state"], &s["record_from"]),
        (&"prepared".into(), &"both".into()),
        "{s}"
    );

    // A prepare into the namesake replaces the file, and says so.
    let out = wd.run(&["prepare", "--source", &dbs.src.url(), "--dest", &twin_url]);
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("records migration") && stderr.contains("replaces the file"),
        "{stderr}"
    );
    // The first destination goes by its own record; its swap leaves the
    // namesake's file in place.
    let s = status(&wd, &dbs.dst);
    assert_eq!(s["state"], "prepared", "{s}");
    assert_eq!(s["record_from"], "destination", "{s}");
    assert!(warned_of_another_destination(&s), "{s}");
    let out = wd.run(&["swap", "--dest", &url]);
    assert_success(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("of another destination"),
        "the swap says it leaves the file alone: {out:?}"
    );
    assert_eq!(
        dbs.dst.query_one_string("SELECT count(*) FROM items"),
        "500"
    );
    assert_eq!(state_files(&wd).len(), 1);
    let s = status(&wd, &twin);
    assert_eq!(
        (&s["state"], &s["record_from"]),
        (&"prepared".into(), &"both".into()),
        "{s}"
    );
    wd.run_ok(&["swap", "--dest", &twin_url]);
    assert_eq!(twin.query_one_string("SELECT count(*) FROM items"), "500");
    assert!(state_files(&wd).is_empty());
}
