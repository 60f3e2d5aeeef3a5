//! Interruption, crashes, server restarts and secrets: every way a run can end
//! leaves both databases in a known state, and a re-run succeeds.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{
    Cluster, TestDb, TestDbs, Workdir, assert_same_ddl, assert_success, can_start_clusters,
    catalog_fingerprint, pg_bindir, schema_fingerprint,
};

/// A source big enough that the data and index phases take a few seconds.
fn big_source(db: &TestDb, rows: u32) {
    db.psql(&format!(
        "CREATE TABLE big (id bigserial PRIMARY KEY, a text, b text, c int, d timestamptz DEFAULT now());
         INSERT INTO big (a, b, c) SELECT md5(g::text), repeat(md5((g * 7)::text), 3), g % 1000
           FROM generate_series(1, {rows}) g;
         CREATE INDEX big_a ON big (a);
         CREATE INDEX big_b ON big (b);
         CREATE INDEX big_c ON big (c, a);
         CREATE INDEX big_ab ON big (a, b);
         CREATE TABLE small (id int PRIMARY KEY, big_id bigint REFERENCES big (id));
         INSERT INTO small SELECT g, g FROM generate_series(1, 100) g;"
    ));
}

fn state_file(wd: &Workdir, db: &TestDb) -> PathBuf {
    wd.join(format!(".migration-state-{}.json", db.name()))
}

/// Wait until the run records `phase` as running (state file), or panic.
fn wait_for_phase(wd: &Workdir, db: &TestDb, phase: &str, child: &mut Child) {
    let path = state_file(wd, db);
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && v["phase"] == phase
        {
            return;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "pgshift exited ({st}) before reaching phase {phase}: {}",
                drain_stderr(child)
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "phase {phase} never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until a destination session runs a statement starting with `prefix`.
fn wait_for_statement(db: &TestDb, prefix: &str, child: &mut Child) {
    let start = Instant::now();
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%{prefix}%' AND pid <> pg_backend_pid()"
    );
    while db.psql(&sql) == "0" {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "pgshift exited ({st}) before running {prefix}: {}",
                drain_stderr(child)
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{prefix} never ran"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What an exited child wrote on stderr.
fn drain_stderr(child: &mut Child) -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut text);
    }
    text
}

/// `pgshift prepare` from the pair's source into its destination, in the background.
fn spawn_prepare(wd: &Workdir, dbs: &TestDbs, env: &[(&str, &str)]) -> Child {
    spawn(
        wd,
        &[
            "prepare",
            "--source",
            &dbs.src.url(),
            "--dest",
            &dbs.dst.url(),
        ],
        env,
    )
}

fn spawn(wd: &Workdir, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = wd.cmd();
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Processes (other than `except`) whose command line contains `needle`.
fn processes_with(needle: &str, except: &[u32]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() || except.contains(&pid) {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z'))
        {
            continue; // a zombie has no command line and runs nothing
        }
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) {
                found.push(format!("{pid}: {text}"));
            }
        }
    }
    found
}

/// A bindir whose pg_dump is a wrapper that sleeps first (so a test can catch it
/// running); everything else links to the real tools.
fn slow_pg_dump_bindir(dir: &Path, sleep_secs: u32) -> PathBuf {
    let bindir = dir.join("slowbin");
    std::fs::create_dir_all(&bindir).unwrap();
    let real = pg_bindir();
    for e in std::fs::read_dir(&real).unwrap().flatten() {
        let name = e.file_name();
        if name != "pg_dump" {
            std::os::unix::fs::symlink(e.path(), bindir.join(&name)).unwrap();
        }
    }
    // `--version` answers at once (pgshift checks versions before starting),
    // and leaves the environment it got in `version-env`.
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in --version) env > {bin}/version-env; exec {real}/pg_dump --version;; esac\nsleep {sleep_secs}\nexec {real}/pg_dump \"$@\"\n",
        real = real.display(),
        bin = bindir.display()
    );
    let path = bindir.join("pg_dump");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    bindir
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            start.elapsed() < within,
            "pgshift did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn leftover_free(dst: &TestDb) {
    assert_eq!(
        dst.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'shadow'"),
        "0"
    );
    assert_eq!(
        dst.psql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgshift%'"),
        "0"
    );
}

#[test]
fn sigint_during_dump_load_and_index_build_stops_cleanly() {
    let dbs = TestDbs::new("sigint");
    big_source(&dbs.src, 400_000);
    dbs.dst
        .psql("CREATE TABLE keep (x int); INSERT INTO keep VALUES (1);");
    let before = catalog_without_pgshift(&dbs.dst);
    let src_before = catalog_fingerprint(&dbs.src);
    let work = Workdir::new();
    let bindir = slow_pg_dump_bindir(work.path(), 30);
    // (what is running when the signal arrives, the phase it belongs to)
    for (moment, phase) in [
        ("pg_dump", "dump"),
        ("COPY", "data"),
        ("CREATE INDEX", "data"),
    ] {
        let wd = Workdir::new();
        let bindir_s = bindir.to_string_lossy().into_owned();
        let env: Vec<(&str, &str)> = if phase == "dump" {
            vec![("PGSHIFT_PG_BINDIR", bindir_s.as_str())]
        } else {
            vec![]
        };
        let mut child = spawn_prepare(&wd, &dbs, &env);
        wait_for_phase(&wd, &dbs.dst, phase, &mut child);
        if phase == "dump" {
            // The wrapper (and its sleep) are running as pg_dump.
            let start = Instant::now();
            while processes_with(&bindir_s, &[child.id()]).is_empty() {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "pg_dump never started"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        } else {
            wait_for_statement(&dbs.dst, moment, &mut child);
        }
        let sent = Instant::now();
        signal(&child, libc::SIGINT);
        let status = wait_exit(&mut child, Duration::from_secs(15));
        let took = sent.elapsed();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(status.code(), Some(130), "{moment}: {stderr}");
        assert!(
            took < Duration::from_secs(8),
            "{moment}: exit took {took:?}"
        );
        assert!(stderr.contains("interrupted"), "{moment}: {stderr}");
        assert!(
            processes_with(&bindir_s, &[]).is_empty(),
            "{moment}: children survived"
        );
        assert!(
            processes_with(&wd.path().to_string_lossy(), &[]).is_empty(),
            "{moment}: pg_dump or pg_restore survived"
        );
        // The destination's public is as before and nothing is left behind.
        assert_eq!(
            catalog_without_pgshift(&dbs.dst),
            before.clone(),
            "{moment}"
        );
        leftover_free(&dbs.dst);
        // The state file says where the run stopped.
        let st: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(state_file(&wd, &dbs.dst)).unwrap())
                .unwrap();
        assert_eq!(st["status"], "failed", "{moment}: {st}");
        assert_eq!(st["phase"], phase, "{moment}: {st}");
        assert!(
            st["error"].as_str().unwrap().contains("interrupted"),
            "{st}"
        );
        // A following prepare completes: the next moment's run starts from
        // what this one left (and is interrupted in a later phase); after
        // the last, one runs to the end, from the same state directory.
        if moment == "CREATE INDEX" {
            assert_success(&wd.prepare(&dbs, &[]));
            assert_eq!(dbs.dst.psql("SELECT count(*) FROM shadow.big"), "400000");
            assert_success(&wd.run_env(&["abort", "--dest", &dbs.dst.url()], &[]));
        }
    }
    assert_eq!(catalog_fingerprint(&dbs.src), src_before);
}

/// What the destination's applications see: the public schema and its rows.
fn catalog_without_pgshift(db: &TestDb) -> String {
    schema_fingerprint(db, "public")
}

#[test]
fn sigkill_leaves_leftovers_that_the_next_prepare_replaces() {
    let dbs = TestDbs::new("sigkill");
    big_source(&dbs.src, 300_000);
    dbs.dst
        .psql("CREATE TABLE keep (x int); INSERT INTO keep VALUES (1);");
    let before = catalog_without_pgshift(&dbs.dst);
    for (moment, phase) in [("COPY", "data"), ("CREATE INDEX", "data")] {
        let wd = Workdir::new();
        let mut child = spawn_prepare(&wd, &dbs, &[]);
        wait_for_phase(&wd, &dbs.dst, phase, &mut child);
        wait_for_statement(&dbs.dst, moment, &mut child);
        signal(&child, libc::SIGKILL);
        child.wait().unwrap();
        // The destination's public is untouched; the shadow is a leftover.
        let with_leftovers = catalog_fingerprint(&dbs.dst);
        assert!(
            with_leftovers.contains("CREATE TABLE shadow.big"),
            "{moment}: no leftover shadow?"
        );
        let out = wd.run_env(&["status", "--dest", &dbs.dst.url(), "--json"], &[]);
        assert_success(&out);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        // The run is gone: status calls it failed and names the leftover shadow.
        assert_eq!(status["state"], "failed", "{moment}: {status}");
        assert_eq!(
            status["leftovers"]["shadow"], true,
            "{moment}: leftovers not reported: {status}"
        );
        // The next prepare says it starts over, and produces an exact shadow.
        let out = wd.prepare(&dbs, &[]);
        assert_success(&out);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("starting over"),
            "{moment}"
        );
        assert_eq!(dbs.dst.psql("SELECT count(*) FROM shadow.big"), "300000");
        assert_same_ddl(&dbs.src, &dbs.dst);
        assert_success(&wd.run_env(&["abort", "--dest", &dbs.dst.url()], &[]));
        assert_eq!(catalog_without_pgshift(&dbs.dst), before, "{moment}");
    }
}

/// Poll `cond` every 20 ms; panic if it does not come true within `secs`.
fn wait_until(what: &str, secs: u64, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "not within {secs} s: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Some session holds an ACCESS EXCLUSIVE lock on a table named `t`.
fn t_locked_exclusively(db: &TestDb) -> bool {
    db.psql("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 't' AND l.mode = 'AccessExclusiveLock'") != "0"
}

/// A prepared migration of a table `t` (100 rows over the destination's 1),
/// and a swap that pauses `pause_ms` before its COMMIT, returned once it
/// holds its locks; with the destination's catalog as prepared.
fn swap_paused_before_commit(name: &str, pause_ms: u32) -> (TestDbs, Workdir, String, Child) {
    let dbs = TestDbs::new(name);
    dbs.src
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100);");
    dbs.dst
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);");
    let wd = Workdir::new();
    assert_success(&wd.prepare(&dbs, &[]));
    let prepared = catalog_without_pgshift(&dbs.dst);
    let failpoint = format!("swap-commit:sleep={pause_ms}");
    let child = spawn(
        &wd,
        &["swap", "--dest", &dbs.dst.url()],
        &[("PGSHIFT_FAILPOINT", &failpoint)],
    );
    wait_until("the swap took its locks", 20, || {
        t_locked_exclusively(&dbs.dst)
    });
    (dbs, wd, prepared, child)
}

#[test]
fn sigkill_during_the_swap_leaves_it_all_before() {
    // Inside the transaction: the moves are done but not committed.
    let (dbs, wd, prepared, mut child) = swap_paused_before_commit("sigkill_swap", 5000);
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    // The server rolls the transaction back once the connection is gone.
    wait_until("the swap's locks were released", 20, || {
        !t_locked_exclusively(&dbs.dst)
    });
    assert_eq!(catalog_without_pgshift(&dbs.dst), prepared);
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM public.t"), "1");
    // Swapping again completes it.
    assert_success(&wd.run_env(&["swap", "--dest", &dbs.dst.url()], &[]));
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM public.t"), "100");
}

/// Ctrl-C once the migration is prepared (while prepare makes its impact
/// report): the migration stays prepared, and the run still exits 130, so
/// `prepare && swap` stops there.
#[test]
fn an_interrupt_after_prepare_completed_still_exits_130() {
    let dbs = TestDbs::new("sigint_tail");
    dbs.src
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);");
    let wd = Workdir::new();
    let mut child = spawn_prepare(
        &wd,
        &dbs,
        &[("PGSHIFT_FAILPOINT", "prepare-impact:sleep=3000")],
    );
    let start = Instant::now();
    let prepared = || {
        dbs.dst
            .psql("SELECT to_regclass('pgshift.migration') IS NOT NULL")
            == "t"
            && dbs
                .dst
                .psql("SELECT count(*) FROM pgshift.migration WHERE status = 'prepared'")
                == "1"
    };
    while !prepared() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "prepare never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&child, libc::SIGINT);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .contains("it stays prepared"),
        "{stderr}"
    );
    let s: serde_json::Value =
        serde_json::from_str(&wd.run_ok(&["status", "--json", "--dest", &dbs.dst.url()])).unwrap();
    assert_eq!(s["state"], "prepared", "{s}");
}

/// `users` and `orders` (a foreign key to users) on both sides, with rows.
fn users_and_orders(name: &str) -> TestDbs {
    let dbs = TestDbs::new(name);
    let ddl = "CREATE TABLE users (id int PRIMARY KEY);
               CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users (id));";
    dbs.src.psql(ddl);
    dbs.src
        .psql("INSERT INTO users VALUES (1); INSERT INTO orders VALUES (1, 1);");
    dbs.dst.psql(ddl);
    dbs.dst.psql(
        "INSERT INTO users SELECT generate_series(1, 10); INSERT INTO orders SELECT g, g FROM generate_series(1, 10) g;",
    );
    dbs
}

/// Run `args` paused right after its COMMIT; SIGKILL it once `committed`
/// (a count on `db`) is no longer 0.
fn kill_after_commit(wd: &Workdir, db: &TestDb, args: &[&str], committed: &str) {
    kill_at(wd, db, args, "swap-committed", committed);
}

/// Run `args` paused at failpoint `point`; SIGKILL it once `reached` (a
/// count on `db`) is no longer 0.
fn kill_at(wd: &Workdir, db: &TestDb, args: &[&str], point: &str, reached: &str) {
    let mut child = paused_at(wd, db, args, point, reached);
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
}

/// Run `args` paused at failpoint `point`, once `reached` (a count on `db`)
/// is no longer 0: the running child.
fn paused_at(wd: &Workdir, db: &TestDb, args: &[&str], point: &str, reached: &str) -> Child {
    let child = spawn(
        wd,
        args,
        &[("PGSHIFT_FAILPOINT", &format!("{point}:sleep=60000"))],
    );
    wait_until(&format!("{} at {point}", args[0]), 30, || {
        db.psql(reached) != "0"
    });
    child
}

/// A backup whose manifest records the steps after its COMMIT up to the
/// validation of its keys (its row counts).
const COUNTED: &str =
    "SELECT count(*) FROM pgshift.backups WHERE (manifest->>'counts_recorded')::bool";

/// `swap` run paused right after its COMMIT, SIGKILLed once its backup
/// schema exists.
fn swap_killed_after_commit(wd: &Workdir, db: &TestDb) {
    kill_after_commit(
        wd,
        db,
        &["swap", "--dest", &db.url()],
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'backup\\_%'",
    );
}

fn status_json(wd: &Workdir, dst: &str) -> serde_json::Value {
    serde_json::from_str(&assert_success(
        &wd.run(&["status", "--dest", dst, "--json"]),
    ))
    .unwrap()
}

/// A prepare whose run-lock session is terminated (by an administrator, or
/// a broken connection) went on without the lock for as long as its phase
/// lasted, while another run could take the lock and start over; its
/// cleanup then dropped that run's shadow. It now stops at once and leaves
/// everything as it is for the next run. A prepare that finds one still
/// recorded as preparing, whose process still runs on this host, is refused
/// rather than dropping what that one is making.
#[test]
fn a_prepare_that_loses_its_run_lock_stops_and_touches_nothing_more() {
    let dbs = users_and_orders("lock_lost");
    let (wd, other) = (Workdir::new(), Workdir::new());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let preserved = ["--preserved-tables", "users"];
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let args = [
        &["prepare", "--source", &src, "--dest", &dst][..],
        &preserved,
    ]
    .concat();
    let terminate_lock = || dbs.dst.psql(common::TERMINATE_RUN_LOCK);
    // The sync phase waits to put its triggers on users.
    let blocker = rt.block_on(dbs.dst.client());
    rt.block_on(blocker.batch_execute("BEGIN; LOCK TABLE users IN ROW EXCLUSIVE MODE"))
        .unwrap();
    let mut first = spawn(&wd, &args, &[("PGSHIFT_FAILPOINT", "exit:sleep=60000")]);
    wait_for_phase(&wd, &dbs.dst, "sync", &mut first);
    terminate_lock();
    // The table comes free after the loss: the sync's retries, and the
    // attempt that waited, must not put their triggers on it then.
    std::thread::sleep(Duration::from_millis(1000));
    rt.block_on(blocker.batch_execute("ROLLBACK")).unwrap();
    wait_until("the first run records its failure", 30, || {
        std::fs::read_to_string(state_file(&wd, &dbs.dst)).is_ok_and(|t| t.contains("\"failed\""))
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        dbs.dst.psql("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.users'::regclass AND tgname LIKE 'pgshift%'"),
        "0"
    );
    // It left its shadow, for the next run to drop.
    let shadow = "SELECT count(*) FROM pg_namespace WHERE nspname = 'shadow'";
    assert_eq!(dbs.dst.psql(shadow), "1");
    assert_success(&other.prepare(&dbs, &preserved));
    signal(&first, libc::SIGKILL);
    let out = first.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the run lock was lost"), "{err}");
    assert!(err.contains("left what this run made"), "{err}");
    assert!(!err.contains("removed the partial shadow"), "{err}");
    assert_success(&other.run(&["abort", "--dest", &dst]));

    // Paused (a test hook, deaf to the lock), it is still preparing.
    let mut third = spawn(&wd, &args, &[("PGSHIFT_FAILPOINT", "data:sleep=60000")]);
    wait_for_phase(&wd, &dbs.dst, "data", &mut third);
    terminate_lock();
    let before = catalog_fingerprint(&dbs.dst);
    let out = other.prepare(&dbs, &preserved);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = common::stderr_of(&out);
    assert!(
        err.contains(&format!(
            "pid {} on this host) still runs, though it no longer holds the run lock",
            third.id()
        )),
        "{err}"
    );
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
    signal(&third, libc::SIGKILL);
    third.wait().unwrap();
}

/// A swap whose run-lock session ends while it holds its locks (here paused
/// before its COMMIT) committed all the same, while another run could hold
/// the lock. It now asks the lock's session before the COMMIT and rolls back.
#[test]
fn a_swap_that_loses_its_run_lock_rolls_back() {
    use std::io::{BufRead, BufReader};
    let dbs = users_and_orders("swap_lock_lost");
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    assert_success(&wd.prepare(&dbs, &["--preserved-tables", "users"]));
    let mut swap = spawn(
        &wd,
        &["swap", "--dest", &dst],
        &[("PGSHIFT_FAILPOINT", "swap-commit:sleep=2500")],
    );
    let mut lines = BufReader::new(swap.stderr.take().unwrap()).lines();
    let mut log = String::new();
    for l in lines.by_ref().map_while(Result::ok) {
        log.push_str(&l);
        log.push('\n');
        if l.contains("pausing") {
            break;
        }
    }
    assert!(log.contains("pausing"), "{log}");
    dbs.dst.psql(common::TERMINATE_RUN_LOCK);
    log.extend(lines.map_while(Result::ok).map(|l| l + "\n"));
    assert_eq!(swap.wait().unwrap().code(), Some(1), "{log}");
    assert!(
        log.contains(
            "the swap was rolled back; the destination is unchanged: the run lock was lost"
        ),
        "{log}"
    );
    let st = status_json(&wd, &dst);
    assert_eq!(st["state"], "prepared", "{st}");
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM pgshift.backups"), "0");
}

/// Killed after its COMMIT, before the steps that follow it: the backup's
/// row counts were never recorded and the foreign key the swap created NOT
/// VALID was never validated, for good, while the next `swap` said "nothing
/// is prepared: run prepare first". `status` now says what is pending; the
/// next swap finishes it and says the migration is already swapped.
#[test]
fn a_swap_killed_after_its_commit_is_finished_by_the_next_swap() {
    let dbs = users_and_orders("sigkill_committed");
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    assert_success(&wd.prepare(&dbs, &["--preserved-tables", "users"]));
    // While the swap is still at those steps, nothing says it stopped, and
    // verify says it could not compare yet, recording nothing.
    let mut child = paused_at(
        &wd,
        &dbs.dst,
        &["swap", "--dest", &dst],
        "swap-committed",
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'backup\\_%'",
    );
    let st = status_json(&wd, &dst);
    let said = st["warnings"].to_string();
    assert!(!said.contains("stopped") && !said.contains("stale"), "{st}");
    // Its changelog and functions, which it drops last, are its own, not
    // leftovers for `abort`.
    assert_eq!(dbs.dst.psql(common::SYNC_HELPERS), "1/4");
    assert_eq!(st["leftovers"]["found"], false, "{st}");
    let v = wd.run_ok(&["verify", "--latest", "--json", "--dest", &dst]);
    assert!(v.contains("has not recorded its tables yet"), "{v}");
    assert_eq!(
        dbs.dst
            .psql("SELECT count(*) FROM pgshift.backups WHERE last_verified_at IS NOT NULL"),
        "0"
    );
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    assert_eq!(dbs.dst.psql(ORDERS_KEY_NOT_VALID), "1");
    let st = status_json(&wd, &dst);
    assert!(
        st["warnings"]
            .to_string()
            .contains("stopped after its COMMIT"),
        "{st}"
    );
    // The sync triggers went under the locks; the changelog and functions
    // they used, dropped after the COMMIT, are still there.
    assert_eq!(dbs.dst.psql(common::SYNC_HELPERS), "1/4");
    assert_eq!(
        dbs.dst
            .psql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgshift\\_%'"),
        "0"
    );
    assert_eq!(st["leftovers"]["found"], true, "{st}");
    let again = wd.run(&["swap", "--dest", &dst]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{err}");
    assert!(err.contains("already swapped into public"), "{err}");
    assert!(
        err.contains("validated foreign keys orders.orders_user_id_fkey"),
        "{err}"
    );
    assert!(
        err.contains("dropped the changelogs and sync functions of 1 preserved table"),
        "{err}"
    );
    assert_eq!(dbs.dst.psql(common::SYNC_HELPERS), "0/0");
    assert_eq!(dbs.dst.psql(ORDERS_KEY_NOT_VALID), "0");
    let list: serde_json::Value = serde_json::from_str(&assert_success(
        &wd.run(&["list", "--dest", &dst, "--json"]),
    ))
    .unwrap();
    assert_eq!(list[0]["total_rows"], 20, "{list}");
    // Its objects besides the tables were recorded too: verify compares all.
    let v: serde_json::Value =
        serde_json::from_str(&wd.run_ok(&["verify", "--latest", "--json", "--dest", &dst]))
            .unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert!(v.get("warnings").is_none(), "{v}");
    let st = status_json(&wd, &dst);
    assert_eq!(st["state"], "idle", "{st}");
    assert_eq!(st["warnings"], serde_json::json!([]), "{st}");
    assert_eq!(st["not_valid_foreign_keys"], serde_json::json!([]), "{st}");
    assert_eq!(st["leftovers"]["found"], false, "{st}");
}

/// The swap's foreign key from orders to users is NOT VALID (a count).
const ORDERS_KEY_NOT_VALID: &str = "SELECT count(*) FROM pg_constraint WHERE conname = 'orders_user_id_fkey' AND conrelid = 'public.orders'::regclass AND NOT convalidated";

/// `out` succeeded and says it validated the killed swap's key, which is
/// valid now.
fn validated_the_killed_swaps_key(dbs: &TestDbs, out: &std::process::Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("stopped after its COMMIT: validated foreign keys orders.orders_user_id_fkey"),
        "{err}"
    );
    assert_eq!(dbs.dst.psql(ORDERS_KEY_NOT_VALID), "0");
}

/// [`users_and_orders`] prepared with users preserved, and its swap killed
/// after its COMMIT: the pair, the workdir and the destination's URL.
fn killed_after_commit(name: &str) -> (TestDbs, Workdir, String) {
    let dbs = users_and_orders(name);
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    assert_success(&wd.prepare(&dbs, &["--preserved-tables", "users"]));
    swap_killed_after_commit(&wd, &dbs.dst);
    (dbs, wd, dst)
}

/// A swap killed after its COMMIT leaves its preserved table's changelog
/// and trigger functions (its triggers went with the COMMIT); a rollback
/// run next drops them before it restores the backup, as the next swap
/// would.
#[test]
fn a_rollback_after_a_swap_killed_after_its_commit_drops_its_changelog() {
    let (dbs, wd, dst) = killed_after_commit("sigkill_then_rollback");
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM orders"), "1");
    assert_eq!(dbs.dst.psql(common::SYNC_HELPERS), "1/4");
    // (Its write counters at the swap are unknown: --allow-discard.)
    let out = wd.run(&[
        "rollback",
        "--latest",
        "--allow-discard",
        "all",
        "--dest",
        &dst,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("dropped the changelogs and sync functions of 1 preserved table"),
        "{err}"
    );
    assert_eq!(dbs.dst.psql(common::SYNC_HELPERS), "0/0");
    // The destination's own orders are back.
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM orders"), "10");
    // The killed swap's state file, which status called stale, is cleared
    // as the swap would have.
    assert!(err.contains("cleared the state file of migration"), "{err}");
    let st = status_json(&wd, &dst);
    assert_eq!(st["leftovers"]["found"], false, "{st}");
    assert_eq!(st["warnings"], serde_json::json!([]), "{st}");
}

/// A cleanup run after a swap killed after its COMMIT finishes that swap's
/// steps before it drops backups: dropping the backup whose manifest listed
/// them left its foreign key NOT VALID for good (found by a helper).
#[test]
fn a_cleanup_after_a_swap_killed_after_its_commit_finishes_its_steps() {
    let (dbs, wd, dst) = killed_after_commit("sigkill_then_cleanup");
    assert_eq!(dbs.dst.psql(ORDERS_KEY_NOT_VALID), "1");
    validated_the_killed_swaps_key(
        &dbs,
        &wd.run(&["cleanup", "--before", "2100-01-01", "--dest", &dst]),
    );
    assert_eq!(
        dbs.dst
            .psql("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'backup\\_%'"),
        "0"
    );
}

/// A prepare run after a swap killed after its COMMIT finishes that swap's
/// steps first: they were left for good once the new migration's swap made
/// a newer backup (found by a helper). Its changelog goes as a leftover.
#[test]
fn a_prepare_after_a_swap_killed_after_its_commit_finishes_its_steps() {
    let (dbs, wd, _) = killed_after_commit("sigkill_then_prepare");
    assert_eq!(dbs.dst.psql(ORDERS_KEY_NOT_VALID), "1");
    assert_eq!(dbs.dst.psql(common::SYNC_HELPERS), "1/4");
    validated_the_killed_swaps_key(&dbs, &wd.prepare(&dbs, &["--preserved-tables", "users"]));
    assert_eq!(
        dbs.dst.psql(COUNTED),
        "1",
        "the killed swap's backup has its row counts"
    );
    // The new migration's own changelog only.
    assert_eq!(dbs.dst.psql(common::SYNC_HELPERS), "1/4");
    let st = status_json(&wd, &dbs.dst.url());
    assert_eq!(st["state"], "prepared", "{st}");
    assert_eq!(st["warnings"], serde_json::json!([]), "{st}");
}

/// `users_and_orders` prepared with `users` preserved, its swap SIGKILLed
/// while it validates the key it created NOT VALID (after its COMMIT).
fn killed_while_validating(name: &str) -> (TestDbs, Workdir, String) {
    let dbs = users_and_orders(name);
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    assert_success(&wd.prepare(&dbs, &["--preserved-tables", "users"]));
    kill_at(
        &wd,
        &dbs.dst,
        &["swap", "--dest", &dst],
        "validating-keys",
        COUNTED,
    );
    (dbs, wd, dst)
}

/// Killed while it validates the keys it created NOT VALID (which can take
/// long), after it recorded the backup's row counts: the keys stayed NOT
/// VALID for good, `status` said nothing and the next swap did not notice.
/// The manifest now says the keys are pending until they are validated:
/// `status` says so, and the next swap validates them.
#[test]
fn a_swap_killed_while_it_validates_its_keys_is_finished_by_the_next_swap() {
    let (dbs, wd, _) = killed_while_validating("sigkill_validating");
    let err = finished_by_the_next_swap(
        &wd,
        &dbs.dst,
        "SELECT count(*) FROM pg_constraint WHERE conname = 'orders_user_id_fkey' AND NOT convalidated",
        "stopped while it validated the foreign keys it created NOT VALID",
    );
    assert!(err.contains("already swapped into public"), "{err}");
    assert!(
        err.contains("validated foreign keys orders.orders_user_id_fkey")
            && !err.contains("write counters"),
        "{err}"
    );
}

/// After a run killed among the steps after its COMMIT: one key is NOT
/// VALID (`not_valid` counts it), `status` warns (`warned`), and the next
/// `swap` finishes those steps (exit 2: nothing to swap), after which the
/// key is valid and `status` quiet. The swap's stderr.
fn finished_by_the_next_swap(wd: &Workdir, db: &TestDb, not_valid: &str, warned: &str) -> String {
    let dst = db.url();
    assert_eq!(db.psql(not_valid), "1");
    let st = status_json(wd, &dst);
    assert!(st["warnings"].to_string().contains(warned), "{st}");
    let again = wd.run(&["swap", "--dest", &dst]);
    let err = String::from_utf8_lossy(&again.stderr).into_owned();
    assert_eq!(again.status.code(), Some(2), "{err}");
    assert_eq!(db.psql(not_valid), "0");
    let st = status_json(wd, &dst);
    assert_eq!(st["warnings"], serde_json::json!([]), "{st}");
    err
}

/// An interrupt while prepare's checks try the destination's rows of a
/// preserved column into the source's type (up to 10 s a column) went
/// unheeded: the dry run went on and exited 0. It now stops there, the
/// trial's statement cancelled: exit 130, nothing left open.
#[test]
fn an_interrupt_stops_the_trial_of_the_preserved_rows() {
    let dbs = TestDbs::new("sigint_fit");
    let slow = "CREATE SCHEMA common;
                CREATE FUNCTION common.slow_ok(text) RETURNS boolean LANGUAGE sql
                  AS 'SELECT pg_sleep(0.01) IS NOT NULL';
                CREATE DOMAIN common.slow AS text CHECK (common.slow_ok(VALUE));";
    dbs.src.psql(&format!(
        "{slow} CREATE TABLE users (id int PRIMARY KEY, v common.slow);"
    ));
    dbs.dst.psql(&format!(
        "{slow} CREATE TABLE users (id int PRIMARY KEY, v text);
         INSERT INTO users SELECT g, 'x' FROM generate_series(1, 3000) g;"
    ));
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let mut child = spawn(
        &wd,
        &[
            "prepare",
            "--dry-run",
            "--source",
            &src,
            "--dest",
            &dst,
            "--preserved-tables",
            "users",
        ],
        &[],
    );
    std::thread::sleep(Duration::from_secs(3));
    signal(&child, libc::SIGINT);
    let status = wait_exit(&mut child, Duration::from_secs(20));
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("the trial's session to end", 10, || {
        dbs.dst.psql(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'users'",
        ) == "0"
    });
}

/// `prepare` then `swap` with `users` preserved, through a proxy that loses
/// the answer to the swap's last round trip (its manifest, its record and
/// COMMIT), the message reaching the server (`delivered`) or not. Returns the
/// destination's URL through the proxy and the swap's stderr (exit 1).
fn swap_losing_its_commit(dbs: &TestDbs, wd: &Workdir, delivered: bool) -> (String, String) {
    let proxy =
        common::proxy::LosingProxy::start(&dbs.dst, b"INSERT INTO pgshift.backups", delivered);
    let dst = proxy.url(&dbs.dst);
    assert_success(&wd.prepare_to(dbs, &dst, &["--preserved-tables", "users"]));
    let out = wd.run(&["swap", "--dest", &dst]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(proxy.cut.load(std::sync::atomic::Ordering::SeqCst), "{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    (dst, err)
}

/// The swap's COMMIT reaches the server and its answer is lost with the
/// connection: the swap committed, and it says so. It said "the swap was
/// rolled back; the destination is unchanged", and recorded the migration
/// as prepared again when it could. The next swap finishes what comes after
/// the COMMIT.
#[test]
fn a_swap_whose_commit_answer_is_lost_says_it_committed() {
    let dbs = users_and_orders("commit_answer_lost");
    let wd = Workdir::new();
    let (dst, err) = swap_losing_its_commit(&dbs, &wd, true);
    assert!(
        err.contains("the connection was lost as the swap committed, and it did commit (backup_"),
        "{err}"
    );
    assert!(!err.contains("rolled back"), "{err}");
    assert_eq!(
        dbs.dst
            .psql("SELECT status FROM pgshift.migration ORDER BY updated_at DESC LIMIT 1"),
        "swapped"
    );
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM public.orders"), "1");
    let st = status_json(&wd, &dst);
    assert_eq!(st["state"], "idle", "{st}");
    let again = wd.run(&["swap", "--dest", &dst]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{err}");
    assert!(err.contains("already swapped into public"), "{err}");
    assert_eq!(
        dbs.dst.psql(
            "SELECT count(*) FROM pg_constraint WHERE conname = 'orders_user_id_fkey' AND NOT convalidated"
        ),
        "0"
    );
}

/// The swap's COMMIT never reaches the server, which sees the connection
/// end inside the transaction: the swap rolled back, it says so once the
/// server has ended that session, and the next swap goes through.
#[test]
fn a_swap_whose_commit_never_arrives_says_it_rolled_back() {
    let dbs = users_and_orders("commit_never_sent");
    let wd = Workdir::new();
    let (dst, err) = swap_losing_its_commit(&dbs, &wd, false);
    assert!(
        err.contains("the swap was rolled back; the destination is unchanged"),
        "{err}"
    );
    assert_eq!(
        dbs.dst
            .psql("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'backup\\_%'"),
        "0"
    );
    let st = status_json(&wd, &dst);
    assert_eq!(st["state"], "prepared", "{st}");
    assert_success(&wd.run(&["swap", "--dest", &dst]));
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM public.orders"), "1");
}

/// The same in a schema whose names need quotes: the next swap names the key
/// it validated as the swap itself does (`"Sales"."Orders"."Orders_user_fkey"`);
/// it said `Sales.Orders."Orders_user_fkey"`, which names another table.
#[test]
fn a_killed_swaps_keys_are_named_quoted_when_the_next_swap_validates_them() {
    let dbs = TestDbs::new("sigkill_quoted");
    let ddl = "CREATE SCHEMA \"Sales\";
               CREATE TABLE \"Sales\".\"Users\" (id int PRIMARY KEY);
               CREATE TABLE \"Sales\".\"Orders\" (id int PRIMARY KEY,
                   \"user\" int CONSTRAINT \"Orders_user_fkey\" REFERENCES \"Sales\".\"Users\");";
    dbs.src.psql(ddl);
    dbs.dst.psql(ddl);
    dbs.dst.psql(
        "INSERT INTO \"Sales\".\"Users\" VALUES (1); INSERT INTO \"Sales\".\"Orders\" VALUES (1, 1);",
    );
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    let schemas = ["--schemas", "public,\"Sales\""];
    assert_success(&wd.prepare(
        &dbs,
        &[&schemas[..], &["--preserved-tables", "\"Sales\".\"Users\""]].concat(),
    ));
    swap_killed_after_commit(&wd, &dbs.dst);
    let not_valid = "SELECT count(*) FROM pg_constraint WHERE conname = 'Orders_user_fkey' AND NOT convalidated AND connamespace = '\"Sales\"'::regnamespace";
    assert_eq!(dbs.dst.psql(not_valid), "1");
    let again = wd.run(&["swap", "--dest", &dst]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{err}");
    assert!(
        err.contains("validated foreign keys \"Sales\".\"Orders\".\"Orders_user_fkey\""),
        "{err}"
    );
    assert_eq!(dbs.dst.psql(not_valid), "0");
}

/// A partitioned table's key to a preserved table is added after the
/// COMMIT, once its partitions' copies are valid: a swap killed in between
/// left the partitioned table without it for good (the next swap validated
/// the partitions' copies only). It now adds it.
#[test]
fn a_killed_swaps_partitioned_key_is_added_by_the_next_swap() {
    let dbs = TestDbs::new("sigkill_part_key");
    let users = "CREATE TABLE users (id int PRIMARY KEY);
                 INSERT INTO users SELECT generate_series(1, 5);";
    dbs.src.psql(&format!(
        "{users}
         CREATE TABLE events (id int, user_id int REFERENCES users, kind text) PARTITION BY LIST (kind);
         CREATE TABLE events_a PARTITION OF events FOR VALUES IN ('a');
         CREATE TABLE events_b PARTITION OF events FOR VALUES IN ('b');
         INSERT INTO events VALUES (1, 1, 'a'), (2, 2, 'b');"
    ));
    dbs.dst.psql(users);
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    assert_success(&wd.prepare(&dbs, &["--preserved-tables", "users"]));
    swap_killed_after_commit(&wd, &dbs.dst);
    let keys = "SELECT string_agg(conrelid::regclass || ':' || convalidated, ' ' ORDER BY conrelid::regclass::text)
                  FROM pg_constraint WHERE contype = 'f'";
    assert_eq!(dbs.dst.psql(keys), "events_a:false events_b:false");
    let again = wd.run(&["swap", "--dest", &dst]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{err}");
    assert!(err.contains("events.events_user_id_fkey"), "{err}");
    assert_eq!(dbs.dst.psql(keys), dbs.src.psql(keys));
    assert_eq!(
        dbs.dst.psql(keys),
        "events:true events_a:true events_b:true"
    );
}

/// The same for a rollback that keeps a table: the foreign key it re-pointed
/// NOT VALID to the kept table is validated by the next `swap`, which says
/// what it finished and that nothing was prepared to swap.
#[test]
fn a_rollback_killed_after_its_commit_is_finished_by_the_next_swap() {
    rollback_killed_then_finished_by_the_next_swap(
        "sigkill_rb_committed",
        "swap-committed",
        "SELECT count(*) FROM pgshift.backups WHERE kind = 'rollback'",
    );
}

/// And one killed while it validates that key.
#[test]
fn a_rollback_killed_while_it_validates_its_keys_is_finished_by_the_next_swap() {
    rollback_killed_then_finished_by_the_next_swap(
        "sigkill_rb_validating",
        "validating-keys",
        &format!("{COUNTED} AND kind = 'rollback'"),
    );
}

/// A rollback keeping `users`, killed at failpoint `point` once `reached`;
/// `status` says what is pending, and the next swap finishes it.
fn rollback_killed_then_finished_by_the_next_swap(name: &str, point: &str, reached: &str) {
    let dbs = users_and_orders(name);
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    assert_success(&wd.run(&[
        "start",
        "--source",
        &dbs.src.url(),
        "--dest",
        &dst,
        "--preserved-tables",
        "users",
    ]));
    kill_at(
        &wd,
        &dbs.dst,
        &[
            "rollback",
            "--latest",
            "--keep-tables",
            "users",
            "--allow-discard",
            "all",
            "--dest",
            &dst,
        ],
        point,
        reached,
    );
    let err = finished_by_the_next_swap(
        &wd,
        &dbs.dst,
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = 'public.orders'::regclass AND NOT convalidated",
        "the rollback that made backup",
    );
    assert!(
        err.contains("finished the steps after the COMMIT of the rollback"),
        "{err}"
    );
}

#[test]
fn a_destination_restart_during_the_load_fails_clearly_and_a_rerun_completes() {
    if !can_start_clusters() {
        eprintln!("skipped: needs private clusters");
        return;
    }
    let (src_cluster, _) = common::clusters();
    let dst_cluster = Cluster::start_new();
    let dbs = TestDbs::on(src_cluster, &dst_cluster, "restart");
    big_source(&dbs.src, 400_000);
    let wd = Workdir::new();
    let mut child = spawn_prepare(&wd, &dbs, &[]);
    wait_for_phase(&wd, &dbs.dst, "data", &mut child);
    // Restart while rows are flowing into the shadow.
    wait_for_statement(&dbs.dst, "COPY", &mut child);
    dst_cluster.restart();
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap();
    assert!(
        last.starts_with("error: prepare failed: phase data:"),
        "{stderr}"
    );
    // The broken connection is the run's error; the restart is its cause.
    assert!(
        last.ends_with("(the destination server restarted while prepare ran: it crashed or was restarted, and its log says why; a full disk, pg_wal's included, is a common cause)"),
        "{stderr}"
    );
    assert_success(&wd.prepare(&dbs, &[]));
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM shadow.big"), "400000");
}

#[test]
fn passwords_never_leak_into_argv_logs_or_the_state_file() {
    let dbs = TestDbs::new("secrets");
    dbs.src.psql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'x' FROM generate_series(1, 1000) g;");
    let src_pw = dbs.src.password().to_string();
    let dst_pw = dbs.dst.password().to_string();
    let secrets: Vec<String> = [&src_pw, &dst_pw]
        .iter()
        .flat_map(|p| {
            let enc = percent_encode(p);
            vec![p.to_string(), enc]
        })
        .collect();
    let wd = Workdir::new();
    let bindir = slow_pg_dump_bindir(wd.path(), 2);
    // URLs through the environment, so pgshift's own argv holds no password either.
    let mut child = wd
        .cmd()
        .args(["-vv", "prepare", "--json"])
        .env("PGSHIFT_SOURCE_URL", dbs.src.url())
        .env("PGSHIFT_DEST_URL", dbs.dst.url())
        .env("PGSHIFT_PG_BINDIR", &bindir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Watch every process's argv while the run (and its pg_dump) is alive.
    let mut saw_pg_dump = false;
    let me = child.id();
    while child.try_wait().unwrap().is_none() {
        let family = process_tree(me);
        for pid in &family {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            for s in &secrets {
                assert!(
                    !text.contains(s.as_str()),
                    "password in the argv of {pid}: {text}"
                );
            }
            if text.contains(&*bindir.to_string_lossy()) {
                saw_pg_dump = true;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        saw_pg_dump,
        "never saw pg_dump running; the argv check proved nothing"
    );
    // The version probe connects nowhere: none of pgshift's variables (the
    // URLs with their passwords), none of libpq's.
    let probe_env = std::fs::read_to_string(bindir.join("version-env")).unwrap();
    for s in &secrets {
        assert!(
            !probe_env.contains(s.as_str()),
            "password in the environment of pg_dump --version"
        );
    }
    assert!(
        !probe_env
            .lines()
            .any(|l| l.starts_with("PGSHIFT_") || l.starts_with("PGPASSWORD=")),
        "{probe_env}"
    );
    let out = child.wait_with_output().unwrap();
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("DEBUG") || stderr.contains("TRACE"),
        "-vv gave no debug logs"
    );
    let state = std::fs::read_to_string(state_file(&wd, &dbs.dst)).unwrap();
    let mode = std::fs::metadata(state_file(&wd, &dbs.dst))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let records = dbs.dst.psql("SELECT state::text FROM pgshift.migration");
    for s in &secrets {
        assert!(!stderr.contains(s.as_str()), "password in the logs");
        assert!(!stdout.contains(s.as_str()), "password in the JSON output");
        assert!(!state.contains(s.as_str()), "password in the state file");
        assert!(
            !records.contains(s.as_str()),
            "password in the destination's records"
        );
    }
    assert!(
        state.contains(":***@"),
        "the state file should name the redacted source: {state}"
    );
}

/// `root` and all its descendants.
fn process_tree(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some(rest) = stat.rsplit(") ").next()
            && let Some(ppid) = rest
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok())
        {
            parents.push((pid, ppid));
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The source ends every session of the running `child` (as a restart or a
/// DBA would; only this test's database: the cluster is shared with the
/// tests running beside this one), which must then fail (exit 1): its stderr.
fn source_ends_the_runs_sessions(dbs: &TestDbs, mut child: Child) -> String {
    dbs.src.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE application_name LIKE 'pgshift%' AND pid <> pg_backend_pid()
            AND datname = current_database()",
    );
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(status.code(), Some(1), "{stderr}");
    stderr
}

#[test]
fn the_source_dropping_connections_during_the_load_fails_clearly_and_a_rerun_completes() {
    let dbs = TestDbs::new("src_drop");
    big_source(&dbs.src, 300_000);
    dbs.dst
        .psql("CREATE TABLE keep (x int); INSERT INTO keep VALUES (1);");
    let before = catalog_without_pgshift(&dbs.dst);
    let wd = Workdir::new();
    let mut child = spawn_prepare(&wd, &dbs, &[]);
    wait_for_phase(&wd, &dbs.dst, "data", &mut child);
    wait_for_statement(&dbs.src, "COPY", &mut child);
    let stderr = source_ends_the_runs_sessions(&dbs, child);
    let last = stderr.trim_end().lines().last().unwrap();
    assert!(
        last.starts_with("error: prepare failed: phase data:"),
        "{stderr}"
    );
    assert_eq!(catalog_without_pgshift(&dbs.dst), before);
    leftover_free(&dbs.dst);
    assert_success(&wd.prepare(&dbs, &[]));
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM shadow.big"), "300000");
}

/// The source's snapshot session lost before pg_dump runs (the connection
/// dropped): the error says so, not pg_dump's "invalid snapshot identifier"
/// alone, which blamed pg_dump. The destination is left as it was.
#[test]
fn a_snapshot_session_lost_before_the_dump_is_named() {
    let dbs = TestDbs::new("snap_lost");
    dbs.src
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);");
    let wd = Workdir::new();
    let mut child = spawn_prepare(&wd, &dbs, &[("PGSHIFT_FAILPOINT", "dump:sleep=3000")]);
    wait_for_phase(&wd, &dbs.dst, "dump", &mut child);
    let stderr = source_ends_the_runs_sessions(&dbs, child);
    assert!(
        stderr.contains("phase dump: the source's snapshot session was lost (its connection to the source dropped), and the snapshot with it: prepare again"),
        "{stderr}"
    );
    leftover_free(&dbs.dst);
    assert_success(&wd.prepare(&dbs, &[]));
}

/// A pooler in transaction mode can hand a run the server session an earlier
/// run left holding pgshift's lock (the process died, the pooled session
/// lived on). The lock is re-entrant, so taking it again would let two runs
/// in at once: it is refused, naming the session to end. Simulated by taking
/// the lock twice on one session, which is what the pooler amounts to.
#[test]
fn a_server_session_that_already_holds_the_run_lock_is_refused() {
    let dbs = TestDbs::new("lock_reentry");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = dbs.dst.client().await;
        pgshift::pg::lock::acquire(&c).await.unwrap();
        let err = format!("{:#}", pgshift::pg::lock::acquire(&c).await.unwrap_err());
        assert!(err.contains("pooler in transaction mode"), "{err}");
        assert!(err.contains("pg_terminate_backend("), "{err}");
        // Still held once: the refusal took nothing.
        let unlocked: Vec<bool> = c
            .query(
                "SELECT pg_advisory_unlock($1, $2) FROM generate_series(1, 2)",
                &[&pgshift::pg::lock::LOCK_CLASS, &pgshift::pg::lock::LOCK_RUN],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(unlocked, vec![true, false]);
    });
}

/// Every session pgshift opens ends cleanly (`Terminate`, then the socket
/// closed), also the pooled ones of prepare's workers and those still open
/// when the command finishes: neither server logs a client that went away
/// ("unexpected EOF", "connection reset by peer"), lines operators alert on.
#[test]
fn every_session_ends_cleanly() {
    let dbs = TestDbs::new("hard_goodbye");
    big_source(&dbs.src, 2_000);
    dbs.dst.psql("CREATE TABLE old (id int PRIMARY KEY)");
    let (src_cluster, dst_cluster) = common::clusters();
    let (src_len, dst_len) = (src_cluster.log_len(), dst_cluster.log_len());
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    wd.run_ok(&["prepare", "--source", &src, "--dest", &dst, "--jobs", "3"]);
    wd.run_ok(&["status", "--dest", &dst]);
    wd.run_ok(&["swap", "--dest", &dst]);
    wd.run_ok(&["list", "--dest", &dst]);
    wd.run_ok(&["rollback", "--dest", &dst, "--latest"]);
    // Let the servers write what they have.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        src_cluster.lost_clients_since(src_len, dbs.src.name()),
        Vec::<String>::new()
    );
    assert_eq!(
        dst_cluster.lost_clients_since(dst_len, dbs.dst.name()),
        Vec::<String>::new()
    );
}

/// pg_dump waits on a lock of the source (another session holds a table
/// ACCESS EXCLUSIVE) when pgshift is killed: its session on the source ends
/// within seconds (the server checks that its client is still there), rather
/// than holding its place, and the locks it took, until that other session
/// ends. From PostgreSQL 14 on.
#[test]
fn a_killed_prepare_leaves_no_pg_dump_session_waiting_on_the_source() {
    let dbs = TestDbs::new("dump_orphan");
    if dbs.src.server_major() < 14 {
        println!("skipped: client_connection_check_interval is from PostgreSQL 14 on");
        return;
    }
    dbs.src.psql(
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);
         INSERT INTO a VALUES (1); INSERT INTO b VALUES (1);",
    );
    let wd = Workdir::new();
    let mut child = spawn_prepare(&wd, &dbs, &[("PGSHIFT_FAILPOINT", "dump:sleep=2000")]);
    wait_for_phase(&wd, &dbs.dst, "dump", &mut child);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let blocker = rt.block_on(dbs.src.client());
    rt.block_on(
        blocker.batch_execute(
            "SET lock_timeout = '20s'; BEGIN; LOCK TABLE b IN ACCESS EXCLUSIVE MODE",
        ),
    )
    .unwrap();
    let count = |sql: &str| dbs.src.psql(sql);
    wait_until("pg_dump waits on the lock", 30, || {
        count(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgshift pg_dump' AND wait_event_type = 'Lock' AND datname = current_database()",
        ) == "1"
    });
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    wait_until(
        "pg_dump's session on the source ends after pgshift was killed",
        15,
        || {
            count(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgshift pg_dump' AND datname = current_database()",
            ) == "0"
        },
    );
    rt.block_on(blocker.batch_execute("ROLLBACK")).unwrap();
}

/// pgshift's sessions ask the server to probe them (30 s, then every 10 s,
/// 3 times) and to give up on unacknowledged data after 60 s: a run cut off
/// by the network loses its server sessions, and with them the run lock and
/// any lock a swap held, within about a minute rather than the system's two
/// hours (the re-check's blackholed run left them for 117 minutes).
#[tokio::test]
async fn pgshift_sessions_ask_the_server_to_notice_a_vanished_client() {
    let dbs = TestDbs::new("server_keepalives");
    let spec = pgshift::pg::conn::connspec::ConnSpec::parse(&dbs.dst.url()).unwrap();
    let c = pgshift::pg::conn::connect::connect(
        &spec,
        "destination",
        "pgshift test",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let row = c
        .query_one(
            "SELECT current_setting('tcp_keepalives_idle'), current_setting('tcp_keepalives_interval'),
                    current_setting('tcp_keepalives_count'), current_setting('tcp_user_timeout')",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<String> = (0..4).map(|i| row.get(i)).collect();
    assert_eq!(got, ["30", "10", "3", "60000"]);
}

/// A prepare killed before it rebuilt the shadow, after a swap had left the
/// shadow empty: abort clears the run, drops the empty shadow and says so.
#[test]
fn abort_after_a_killed_prepare_reports_the_empty_shadow_it_dropped() {
    let dbs = TestDbs::new("abort_empty_shadow");
    dbs.src
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);");
    let wd = Workdir::new();
    assert_success(&wd.prepare(&dbs, &[]));
    assert_success(&wd.run_env(&["swap", "--dest", &dbs.dst.url()], &[]));
    let mut child = spawn_prepare(&wd, &dbs, &[("PGSHIFT_FAILPOINT", "dump:sleep=60000")]);
    wait_for_phase(&wd, &dbs.dst, "dump", &mut child);
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    let shadows = "SELECT count(*) FROM pg_namespace WHERE nspname = 'shadow'";
    assert_eq!(dbs.dst.query_one_string(shadows), "1");
    let out = wd.run_env(&["abort", "--json", "--dest", &dbs.dst.url()], &[]);
    let v: serde_json::Value = serde_json::from_str(&assert_success(&out)).unwrap();
    assert_eq!(v["aborted"], true, "{v}");
    assert_eq!(v["removed"]["shadow"], true, "{v}");
    assert_eq!(dbs.dst.query_one_string(shadows), "0");
}

/// The reader of pgshift's log going away (`2>&1 | head -3`, a log shipper
/// that died) costs the log lines, not the run: prepare and swap finish, exit
/// 0, and leave nothing half done (a failed write to stderr used to panic,
/// exit 101, mid-phase).
#[test]
fn a_log_reader_that_goes_away_costs_the_log_not_the_run() {
    let dbs = TestDbs::new("epipe");
    dbs.src.psql(
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000);",
    );
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    for (args, format) in [
        (
            vec!["prepare", "--source", &src, "--dest", &dst, "-v"],
            "text",
        ),
        (vec!["swap", "--dest", &dst, "-v"], "json"),
    ] {
        let mut child = spawn(&wd, &[&args[..], &["--log-format", format]].concat(), &[]);
        // The reader is gone before the first line.
        drop(child.stderr.take());
        let status = wait_exit(&mut child, Duration::from_secs(120));
        assert_eq!(status.code(), Some(0), "{args:?}");
    }
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM public.t"), "1000");
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM pgshift.backups"), "1");
    let st = status_json(&wd, &dst);
    assert_eq!(st["state"], "idle", "{st}");
}

/// Ctrl-C (once, or twice) while a command that has finished and printed
/// its error closes its connections: it stops with the command's own exit
/// code and says nothing more. It printed a second `error:` line
/// ("interrupted again") and exited 130, as if the command had been cut short.
#[test]
fn an_interrupt_after_the_command_has_reported_changes_nothing_it_said() {
    use std::io::BufRead;
    let dbs = TestDbs::new("interrupt_reported");
    let wd = Workdir::new();
    let mut child = spawn(
        &wd,
        &["swap", "--dest", &dbs.dst.url()],
        &[("PGSHIFT_FAILPOINT", "exit:sleep=20000")],
    );
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    while !log.contains("pausing") {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "swap ended: {log}");
        log.push_str(&line);
    }
    let sent = Instant::now();
    signal(&child, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(100));
    signal(&child, libc::SIGINT);
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let all = log + &rest;
    assert_eq!(status.code(), Some(2), "{all}");
    let errors: Vec<&str> = all.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{all}");
    assert!(errors[0].contains("nothing is prepared"), "{all}");
    assert!(!all.contains("interrupted"), "{all}");
}

/// A hang-up (the SSH session that ran pgshift closed) stops a prepare as
/// Ctrl-C does: exit 130, nothing left behind. Under `nohup` (SIGHUP
/// ignored, inherited) it goes on and completes.
#[test]
fn a_hang_up_stops_cleanly_unless_ignored() {
    use std::os::unix::process::CommandExt;
    let dbs = TestDbs::new("sighup");
    big_source(&dbs.src, 200_000);
    // A prepare whose SIGHUP is as a terminal leaves it (default), or as
    // nohup leaves it (ignored): set either way, whatever this test inherited
    // (CI may itself run under nohup).
    let spawn_with = |wd: &Workdir, disposition: libc::sighandler_t| {
        let mut cmd = wd.prepare_cmd(&dbs, &[]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        // SAFETY: only signal(2) between fork and exec, as nohup does.
        unsafe {
            cmd.pre_exec(move || {
                libc::signal(libc::SIGHUP, disposition);
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    };
    let wd = Workdir::new();
    let mut child = spawn_with(&wd, libc::SIG_DFL);
    wait_for_phase(&wd, &dbs.dst, "data", &mut child);
    signal(&child, libc::SIGHUP);
    let status = wait_exit(&mut child, Duration::from_secs(15));
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(130), "{out:?}");
    leftover_free(&dbs.dst);

    let wd = Workdir::new();
    let mut child = spawn_with(&wd, libc::SIG_IGN);
    wait_for_phase(&wd, &dbs.dst, "data", &mut child);
    signal(&child, libc::SIGHUP);
    let status = wait_exit(&mut child, Duration::from_secs(120));
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(0), "{out:?}");
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM shadow.big"), "200000");
}

/// A pgshift that stalls inside the swap transaction, holding its locks
/// (stopped with Ctrl-Z, a paused VM; here a pause injected before COMMIT):
/// the server ends its session after a few seconds idle, so the application
/// waits that long, not as long as the stall; the swap rolls back and says
/// so, and public is as before.
#[test]
fn a_swap_that_stalls_holding_its_locks_releases_them_within_seconds() {
    let (dbs, _wd, prepared, mut child) = swap_paused_before_commit("stalled_swap", 25000);
    // The application's query waits for the locks, and gets its answer
    // well before the stall ends.
    assert_eq!(
        dbs.dst
            .psql("SET statement_timeout = '15s'; SELECT count(*) FROM public.t"),
        "1"
    );
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let err = drain_stderr(&mut child);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("the destination is unchanged"), "{err}");
    assert_eq!(catalog_without_pgshift(&dbs.dst), prepared);
}

/// Ctrl-C while the shadow's index takes long to build: the build is
/// cancelled on the server (not left running by a dropped session, where it
/// held its table and failed the removal of the shadow), the run exits 130
/// within seconds, and nothing is left behind.
#[test]
fn an_interrupt_cancels_a_long_index_build_on_the_server() {
    let dbs = TestDbs::new("sigint_slow_index");
    dbs.src.psql(
        "CREATE FUNCTION slow(x int) RETURNS int IMMUTABLE LANGUAGE plpgsql
           AS $$ BEGIN
                   -- Slow on the destination only (30 s for the index).
                   IF current_database() LIKE 'dst%' THEN PERFORM pg_sleep(0.01); END IF;
                   RETURN x;
                 END $$;
         CREATE TABLE t (id int PRIMARY KEY);
         INSERT INTO t SELECT generate_series(1, 3000);
         CREATE INDEX t_slow ON t (slow(id));",
    );
    let wd = Workdir::new();
    let mut child = spawn_prepare(&wd, &dbs, &[]);
    wait_for_statement(&dbs.dst, "INDEX t_slow", &mut child);
    let sent = Instant::now();
    signal(&child, libc::SIGINT);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let took = sent.elapsed();
    let err = drain_stderr(&mut child);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(took < Duration::from_secs(10), "exit took {took:?}: {err}");
    assert!(!err.contains("could not remove"), "{err}");
    assert_eq!(
        dbs.dst.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%INDEX t_slow%' AND pid <> pg_backend_pid()"
        ),
        "0"
    );
    leftover_free(&dbs.dst);
}

/// Ctrl-C while `abort` retries against a session that holds the shadow
/// (a reader in a long transaction): it stops waiting, exits 130, and a
/// later `abort` completes once the reader is done.
#[test]
fn an_interrupt_stops_abort_between_its_retries() {
    use std::io::Write;
    let dbs = TestDbs::new("abort_interrupt");
    dbs.src
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);");
    let wd = Workdir::new();
    assert_success(&wd.prepare(&dbs, &[]));
    // A reader that keeps its transaction (and its lock on shadow.t) open.
    let mut reader = dbs
        .dst
        .client_command("psql")
        .args(["-X", "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = reader.stdin.take().unwrap();
    writeln!(input, "BEGIN; SELECT * FROM shadow.t;").unwrap();
    input.flush().unwrap();
    wait_until("the reader locked shadow.t", 20, || {
        dbs.dst.psql("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'shadow' AND c.relname = 't' AND l.granted") != "0"
    });
    let mut child = spawn(
        &wd,
        &["abort", "--dest", &dbs.dst.url(), "--lock-timeout", "200ms"],
        &[],
    );
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        use std::io::BufRead;
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "abort ended: {log}");
        log.push_str(&line);
        if line.contains("retrying in") {
            break;
        }
    }
    let sent = Instant::now();
    signal(&child, libc::SIGINT);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "took {:?}",
        sent.elapsed()
    );
    // What an abort that stopped may have dropped stays dropped: status says
    // so, and that abort finishes it.
    let text = assert_success(&wd.run(&["status", "--dest", &dbs.dst.url()]));
    assert!(
        text.lines().any(|l| l.starts_with("error")
            && l.contains("abort stopped before it finished")
            && l.contains("run pgshift abort again")),
        "{text}"
    );
    assert!(text.contains("state:        failed"), "{text}");
    drop(input);
    reader.wait().unwrap();
    assert_success(&wd.run(&["abort", "--dest", &dbs.dst.url()]));
    leftover_free(&dbs.dst);
}

/// `abort` killed (SIGKILL) after it dropped the triggers of one preserved
/// table, while it waited for the next: `status` said `prepared` though the
/// migration was no longer whole (the swap refused only on the missing
/// triggers). abort records the migration failed before its first drop:
/// `status` says an abort did not finish, the swap refuses naming it, and
/// the next abort finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_killed_half_way_is_named_and_finished_by_the_next() {
    let dbs = TestDbs::new("abort_killed");
    let ddl = "CREATE TABLE events (id int PRIMARY KEY); CREATE TABLE users (id int PRIMARY KEY);";
    dbs.src.psql(ddl);
    dbs.dst.psql(ddl);
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    assert_success(&wd.prepare(&dbs, &["--preserved-tables", "events,users"]));
    let app = dbs.dst.client().await;
    app.batch_execute("BEGIN; LOCK TABLE users IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let mut child = spawn(
        &wd,
        &["abort", "--dest", &dst, "--lock-timeout", "200ms"],
        &[],
    );
    let triggers = |table: &str| {
        dbs.dst.psql(&format!(
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgshift%' AND tgrelid = 'public.{table}'::regclass"
        ))
    };
    wait_until("abort dropped the triggers of events", 30, || {
        triggers("events") == "0"
    });
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    assert_eq!(triggers("users"), "4");
    let st = status_json(&wd, &dst);
    assert_eq!(st["state"], "failed", "{st}");
    assert_eq!(st["migration"]["command"], "abort", "{st}");
    assert!(
        st["migration"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("an abort began dropping migration")
                && e.contains("run `pgshift abort` again")),
        "{st}"
    );
    let before = catalog_fingerprint(&dbs.dst);
    let swap = wd.run(&["swap", "--dest", &dst]);
    let err = String::from_utf8_lossy(&swap.stderr);
    assert_eq!(swap.status.code(), Some(2), "{err}");
    assert!(
        err.contains("an abort of migration") && err.contains("did not finish"),
        "{err}"
    );
    assert_eq!(catalog_fingerprint(&dbs.dst), before);
    app.batch_execute("COMMIT").await.unwrap();
    let out = wd.run(&["abort", "--dest", &dst, "--json"]);
    let report: serde_json::Value =
        serde_json::from_slice(&assert_success(&out).into_bytes()).unwrap();
    assert_eq!(report["aborted"], true, "{report}");
    assert_eq!(report["previous_status"], "failed", "{report}");
    assert!(
        report["message"]
            .as_str()
            .is_some_and(|m| m.contains("an earlier abort of it had stopped")),
        "{report}"
    );
    leftover_free(&dbs.dst);
    assert_eq!(status_json(&wd, &dst)["state"], "idle");
}

/// A swap killed while it validates its keys left its changelog and its
/// state file (saying swapping): `abort` clears the leftovers and reported
/// `previous_status` "swapping", the stale file's, for a migration the
/// destination records as swapped. It reports "swapped", and leaves the key
/// to the next swap.
#[test]
fn abort_after_a_swap_killed_while_it_validates_says_it_was_swapped() {
    let (dbs, wd, dst) = killed_while_validating("abort_after_validating");
    let out = wd.run(&["abort", "--dest", &dst, "--json"]);
    let report: serde_json::Value =
        serde_json::from_slice(&assert_success(&out).into_bytes()).unwrap();
    assert_eq!(report["previous_status"], "swapped", "{report}");
    assert_eq!(report["removed"]["shadow"], false, "{report}");
    assert!(
        report["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("cleared the leftovers of migration")),
        "{report}"
    );
    assert_eq!(dbs.dst.psql(common::SYNC_HELPERS), "0/0");
    assert_eq!(dbs.dst.psql(ORDERS_KEY_NOT_VALID), "1");
    let st = status_json(&wd, &dst);
    assert!(
        st["warnings"]
            .to_string()
            .contains("stopped while it validated the foreign keys it created NOT VALID"),
        "{st}"
    );
}

/// `abort` (and the cleanup after an interrupted prepare) drops the sync
/// triggers of the preserved tables, each an ACCESS EXCLUSIVE lock. In one
/// transaction it held one table while it waited for the next, and an
/// application transaction writing the second and then the first deadlocked
/// with it; the application's was the one cancelled (the chaos run: 252 failed
/// transactions). Now no session of pgshift holds one preserved table while
/// it waits for another: a poller watches `pg_locks` while an application
/// transaction holds `users` and `abort` runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_never_holds_one_preserved_table_while_waiting_for_another() {
    let dbs = TestDbs::new("abort_order");
    let ddl = "CREATE TABLE events (id int PRIMARY KEY); CREATE TABLE users (id int PRIMARY KEY);";
    dbs.src.psql(ddl);
    dbs.dst.psql(ddl);
    dbs.dst.psql("INSERT INTO users VALUES (1)");
    let wd = Workdir::new();
    let dst = dbs.dst.url();
    assert_success(&wd.prepare(&dbs, &["--preserved-tables", "events,users"]));
    let app = dbs.dst.client().await;
    app.batch_execute("BEGIN; UPDATE users SET id = id")
        .await
        .unwrap();
    let child = tokio::process::Command::from({
        let mut c = wd.cmd();
        c.args(["abort", "--dest", &dst]);
        c
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let done = tokio::spawn(child.wait_with_output());
    let watcher = dbs.dst.client().await;
    let both = watcher
        .prepare(
            "SELECT count(*) FROM pg_catalog.pg_locks h
               JOIN pg_catalog.pg_locks w ON w.pid = h.pid AND NOT w.granted
               JOIN pg_catalog.pg_stat_activity a ON a.pid = h.pid
              WHERE h.granted AND h.mode = 'AccessExclusiveLock'
                AND h.relation IN ('public.events'::regclass, 'public.users'::regclass)
                AND w.relation IN ('public.events'::regclass, 'public.users'::regclass)
                AND h.relation <> w.relation AND a.application_name LIKE 'pgshift%'",
        )
        .await
        .unwrap();
    // Long enough for the removal to wait for users (its waits end within
    // deadlock_timeout, then it retries).
    let until = Instant::now() + Duration::from_millis(1500);
    let mut seen = 0i64;
    while Instant::now() < until {
        seen += watcher
            .query_one(&both, &[])
            .await
            .unwrap()
            .get::<_, i64>(0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The application's own transaction goes on and commits.
    app.batch_execute("INSERT INTO events VALUES (7); COMMIT")
        .await
        .unwrap();
    let out = done.await.unwrap().unwrap();
    assert_success(&out);
    assert_eq!(
        seen, 0,
        "abort held one preserved table while waiting for the other"
    );
    assert_eq!(
        dbs.dst
            .psql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgshift%'"),
        "0"
    );
}

/// The source's server stopped while prepare runs: the error named only a
/// lost connection ("connection closed"), not whose. It now says the source
/// does not answer; nothing is left on the destination.
#[test]
fn a_source_stopped_during_prepare_is_named() {
    if !can_start_clusters() {
        return;
    }
    let source = Cluster::start_with("stopped_source", "");
    let dbs = TestDbs {
        src: source.create_db("src", "stopped_source"),
        dst: common::clusters().1.create_db("dst", "stopped_source"),
    };
    dbs.src
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100);");
    let wd = Workdir::new();
    let mut child = spawn_prepare(&wd, &dbs, &[("PGSHIFT_FAILPOINT", "privileges:sleep=3000")]);
    wait_for_phase(&wd, &dbs.dst, "privileges", &mut child);
    source.stop();
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let err = drain_stderr(&mut child);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("(the source does not answer now, so the connection lost was probably the source's: cannot connect to source"),
        "{err}"
    );
    leftover_free(&dbs.dst);
}

/// Listing the source's tables with their sizes needs each one's ACCESS
/// SHARE lock: behind a session holding an ACCESS EXCLUSIVE one (a long ALTER
/// TABLE, a LOCK TABLE in an open transaction), prepare and its dry run
/// waited without a word. They say which table, which session, and that
/// they wait; they go on when it is released.
#[test]
fn prepare_says_which_session_it_waits_for_on_the_source() {
    let dbs = TestDbs::new("waits_said");
    dbs.src
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);");
    let wd = Workdir::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let blocker = rt.block_on(dbs.src.client());
    rt.block_on(blocker.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE"))
        .unwrap();
    let pid = rt.block_on(common::backend_pid(&blocker));
    let child = spawn(
        &wd,
        &[
            "prepare",
            "--source",
            &dbs.src.url(),
            "--dest",
            &dbs.dst.url(),
            "--dry-run",
        ],
        &[],
    );
    wait_until("the dry run waits on the lock", 30, || {
        dbs.src.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgshift%' AND wait_event_type = 'Lock' AND datname = current_database()",
        ) == "1"
    });
    rt.block_on(blocker.batch_execute("ROLLBACK")).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "table public.t of database {} is locked (ACCESS EXCLUSIVE) by pid {pid} (",
            dbs.src.name()
        )) && err.contains("its transaction open for ")
            && err.contains(&format!(
                "waiting until it is released (pg_terminate_backend({pid}) would end it)"
            )),
        "{err}"
    );
}

/// A phase that waits for a lock said nothing while it waited, and its
/// progress line did not move. prepare names whom it waits for, while the
/// wait lasts, and goes on when it ends: on the source pg_dump's `LOCK
/// TABLE`, here queued behind an ALTER TABLE that waits itself for a long
/// transaction (named as the one to end); on the destination any of its
/// sessions, here behind an ACCESS EXCLUSIVE lock on a shadow table.
#[test]
fn prepare_names_the_sessions_its_phases_wait_for() {
    let dbs = TestDbs::new("waits_named");
    dbs.src.psql(
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);
         INSERT INTO a VALUES (1); INSERT INTO b VALUES (1);",
    );
    let wd = Workdir::new();
    let mut child = spawn_prepare(
        &wd,
        &dbs,
        &[("PGSHIFT_FAILPOINT", "dump:sleep=2000,privileges:sleep=2000")],
    );
    // Its stderr as it comes: each wait is ended once it has been named.
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let pipe = child.stderr.take().unwrap();
        let stderr = stderr.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(pipe).lines() {
                let l = l.unwrap_or_default();
                let mut all = stderr.lock().unwrap();
                all.push_str(&l);
                all.push('\n');
            }
        })
    };
    let said = |what: &str| stderr.lock().unwrap().contains(what);
    wait_for_phase(&wd, &dbs.dst, "dump", &mut child);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pid_of = |c: &tokio_postgres::Client| rt.block_on(common::backend_pid(c));
    let long = rt.block_on(dbs.src.client());
    let long_pid = pid_of(&long);
    rt.block_on(long.batch_execute("BEGIN; SELECT count(*) FROM b"))
        .unwrap();
    let alter = rt.block_on(dbs.src.client());
    let alter_pid = pid_of(&alter);
    let altered = rt.spawn(async move {
        alter
            .batch_execute("ALTER TABLE b ADD COLUMN z int")
            .await
            .unwrap()
    });
    wait_until("pg_dump waits in the queue", 30, || {
        dbs.src.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgshift pg_dump' AND wait_event_type = 'Lock' AND datname = current_database()",
        ) == "1"
    });
    // Named once the wait has lasted 5 s, asked every 5 s (from 5 s after
    // pg_dump started).
    wait_until("the source's wait named", 30, || {
        said("on the source, pgshift's pg_dump session has waited")
    });
    rt.block_on(long.batch_execute("COMMIT")).unwrap();
    rt.block_on(altered).unwrap();

    wait_for_phase(&wd, &dbs.dst, "privileges", &mut child);
    let holder = rt.block_on(dbs.dst.client());
    let holder_pid = pid_of(&holder);
    rt.block_on(holder.batch_execute("BEGIN; LOCK TABLE shadow.b IN ACCESS EXCLUSIVE MODE"))
        .unwrap();
    wait_until("the destination's wait named", 30, || {
        said("on the destination, pgshift's prepare session has waited")
    });
    rt.block_on(holder.batch_execute("ROLLBACK")).unwrap();

    let out = child.wait_with_output().unwrap();
    reader.join().unwrap();
    let err = stderr.lock().unwrap().clone();
    assert!(out.status.success(), "{err}");
    let line = |start: &str| {
        err.lines()
            .find(|l| l.contains(start))
            .unwrap_or_else(|| panic!("no line with {start:?}: {err}"))
            .to_string()
    };
    let source = line("on the source, pgshift's pg_dump session has waited");
    assert!(
        source.contains(" s for a lock on public.b, queued behind ")
            && source.contains(&format!(
                "pid {alter_pid} (pgshift_test, pgshift-test-harness, active,"
            ))
            && source.contains("query: ALTER TABLE b ADD COLUMN z int), which waits itself for ")
            && source.contains(&format!("pid {long_pid} ("))
            && source.contains("query: BEGIN; SELECT count(*) FROM b)")
            && source.contains(&format!(
                "pg_terminate_backend({long_pid}) would end the session that holds them up"
            )),
        "{source}"
    );
    let dest = line("on the destination, pgshift's prepare session has waited");
    assert!(
        dest.contains(" s for a lock on shadow.b, held by ")
            && dest.contains(&format!("pid {holder_pid} ("))
            && dest.contains("query: BEGIN; LOCK TABLE shadow.b IN ACCESS EXCLUSIVE MODE)")
            && dest.contains(&format!(
                "pg_terminate_backend({holder_pid}) would end that session"
            )),
        "{dest}"
    );
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM shadow.b"), "1");
}
