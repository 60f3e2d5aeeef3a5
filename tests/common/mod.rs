//! The throwaway-cluster harness shared by the integration tests (`mod common;`).
//!
//! * [`clusters()`]: a source and a destination PostgreSQL cluster, started once per
//!   test binary, torn down at exit (also after failures, panics or SIGKILL).
//! * [`TestDbs::new`]: a fresh database on each, dropped when the guard drops.
//! * [`Cluster::start_new`]: a private cluster for tests that stop/restart servers.
//! * [`Workdir`]: a temporary working/state directory and a hermetic `pgshift` command.
//!
//! With `TEST_PGHOST` (and `TEST_PGPORT`, `TEST_PGUSER`, `TEST_PGPASSWORD`,
//! `TEST_PGDATABASE`) the tests use that server for both sides instead; tests needing
//! private clusters check [`can_start_clusters()`] and skip.
//!
//! Other knobs: `PGSHIFT_PG_BINDIR` (default `pg_config --bindir`), `PGSHIFT_TEST_TMPDIR`
//! (where cluster directories go, see [`cluster_tmp_root`]),
//! `PGSHIFT_TEST_OS_USER` (server OS user when running as root, default `postgres`).
#![allow(dead_code)]

mod cluster;
mod conn;
mod db;
pub mod pooler;
mod proc;
pub mod proxy;
mod teardown;
pub mod writers;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

// Re-exports for the test files; not every file uses every item.
#[allow(unused_imports)]
pub use cluster::{
    Cluster, SUPERUSER, can_start_clusters, cluster_tmp_root, pg_stat_statements_cluster,
};
#[allow(unused_imports)]
pub use conn::{ServerInfo, conninfo_value};
#[allow(unused_imports)]
pub use db::{TestDb, TestDbs, database_exists, fresh_pair, sql_bodies_for, unique_db_name};
#[allow(unused_imports)]
pub use proc::{bin_major, pg_bindir, process_alive, wait_until};
#[allow(unused_imports)]
pub use teardown::NO_WATCHDOG_ENV;

/// The strings of a JSON array (a report's `warnings`, say) that contain `needle`.
pub fn strings_containing(list: &serde_json::Value, needle: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .filter(|w| w.contains(needle))
        .collect()
}

/// The shared source and destination servers of this test process, started on first use.
/// In external mode (`TEST_PGHOST`) both are the external server.
pub fn clusters() -> (&'static Cluster, &'static Cluster) {
    static CLUSTERS: OnceLock<Result<(Cluster, Cluster), String>> = OnceLock::new();
    let result = CLUSTERS.get_or_init(|| {
        if !can_start_clusters() {
            return Ok((Cluster::external(), Cluster::external()));
        }
        // Start both at once (initdb is mostly single-threaded).
        std::thread::scope(|s| {
            let src = s.spawn(|| Cluster::create("src"));
            let dst = s.spawn(|| Cluster::create("dst"));
            let src = src.join();
            let dst = dst.join();
            match (src, dst) {
                (Ok(src), Ok(dst)) => Ok((src, dst)),
                (Err(e), _) | (_, Err(e)) => Err(panic_message(&e)),
            }
        })
    });
    match result {
        Ok((src, dst)) => (src, dst),
        Err(msg) => panic!("the shared test clusters could not be started: {msg}"),
    }
}

fn panic_message(e: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = e.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "(non-string panic)".to_string()
    }
}

/// Path of the pgshift binary built for these tests.
pub fn pgshift_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pgshift"))
}

/// A command running `program` in `dir` with a hermetic environment: every inherited
/// `PG*`/`PGSHIFT_*` variable and `RUST_LOG` removed, `HOME` set to `dir` (no stray
/// `~/.pgpass`, `~/.postgresql/root.crt` or `./pgshift.toml`), and the PostgreSQL
/// bindir first in `PATH` so the client tools match the test servers.
pub fn hermetic_command(program: impl AsRef<OsStr>, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    proc::remove_pg_env(&mut cmd);
    cmd.env_remove("RUST_LOG");
    cmd.current_dir(dir).env("HOME", dir);
    let mut path = vec![pg_bindir()];
    if let Some(p) = std::env::var_os("PATH") {
        path.extend(std::env::split_paths(&p));
    }
    cmd.env(
        "PATH",
        std::env::join_paths(path).expect("PATH entries without ':'"),
    );
    cmd
}

/// The pgshift binary, run in `dir` (its default state directory) with a hermetic
/// environment (see [`hermetic_command`]).
pub fn pgshift_cmd(dir: &Path) -> Command {
    hermetic_command(pgshift_bin(), dir)
}

/// A temporary directory for one pgshift invocation or scenario: current directory,
/// state directory (pgshift's default is the current directory) and `HOME`.
/// Removed on drop.
pub struct Workdir {
    dir: tempfile::TempDir,
}

impl Default for Workdir {
    fn default() -> Self {
        Self::new()
    }
}

impl Workdir {
    pub fn new() -> Workdir {
        Workdir {
            dir: tempfile::Builder::new()
                .prefix("pgshift-work-")
                .tempdir()
                .expect("create work dir"),
        }
    }
    /// The directory (cwd, state dir and HOME of commands from [`cmd`](Self::cmd)).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// `path/<file>`.
    pub fn join(&self, file: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(file)
    }
    /// `pgshift` running in this directory, hermetic environment, no arguments yet.
    pub fn cmd(&self) -> Command {
        pgshift_cmd(self.path())
    }
    /// Run pgshift with `args` to completion.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.run_env(args, &[])
    }
    /// Run pgshift with `args` and extra environment variables to completion.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let mut cmd = self.cmd();
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("running pgshift")
    }
    /// `pgshift prepare` from the pair's source into its destination, plus `extra` arguments.
    pub fn prepare(&self, dbs: &TestDbs, extra: &[&str]) -> std::process::Output {
        self.prepare_cmd(dbs, extra)
            .output()
            .expect("running pgshift")
    }
    /// The [`prepare`](Self::prepare) command, not started (to spawn it).
    pub fn prepare_cmd(&self, dbs: &TestDbs, extra: &[&str]) -> Command {
        self.between("prepare", dbs, extra)
    }
    /// `pgshift start` from the pair's source into its destination, plus `extra` arguments.
    pub fn start(&self, dbs: &TestDbs, extra: &[&str]) -> std::process::Output {
        self.between("start", dbs, extra)
            .output()
            .expect("running pgshift")
    }
    /// [`prepare`](Self::prepare) into `dest`, another way to the pair's
    /// destination (through a proxy, as another role).
    pub fn prepare_to(&self, dbs: &TestDbs, dest: &str, extra: &[&str]) -> std::process::Output {
        self.between_to("prepare", dbs, dest, extra)
            .output()
            .expect("running pgshift")
    }
    /// `pgshift <command> --source <src> --dest <dst> <extra>`, not started.
    fn between(&self, command: &str, dbs: &TestDbs, extra: &[&str]) -> Command {
        self.between_to(command, dbs, &dbs.dst.url(), extra)
    }
    fn between_to(&self, command: &str, dbs: &TestDbs, dest: &str, extra: &[&str]) -> Command {
        let mut cmd = self.cmd();
        cmd.args([command, "--source", &dbs.src.url(), "--dest", dest])
            .args(extra);
        cmd
    }
    /// Run pgshift, assert it succeeded, return its stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        assert_success(&self.run(args))
    }
    /// Run pgshift (with `--json` among `args`), assert it succeeded, return
    /// its stdout parsed.
    pub fn run_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run_ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

/// SQL creating the role `name` with `attributes` (`LOGIN PASSWORD '…'`, or
/// none) unless it exists: roles are cluster-wide, and a test binary's tests
/// share its clusters (and may run again on a kept one).
pub fn create_role(name: &str, attributes: &str) -> String {
    format!(
        "DO $$ BEGIN CREATE ROLE {name} {attributes}; EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
    )
}

/// The lines of a running child's output up to and including the first that
/// contains `needle` (all of them when none does): the moment a test acts at,
/// e.g. a run paused by `PGSHIFT_FAILPOINT=<point>:sleep=MS`.
pub fn lines_until(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    needle: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let found = line.contains(needle);
        seen.push(line);
        if found {
            break;
        }
    }
    seen
}

/// The server process of `client`'s session (`pg_backend_pid()`), to name
/// it in what pgshift says or to end it.
pub async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("asking for the backend pid")
        .get(0)
}

/// Assert a pgshift run succeeded (showing its output if not); returns stdout.
pub fn assert_success(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "pgshift failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loopback TCP port nobody listens on (bound, then released): connecting
/// to it is refused.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A run's stderr as text.
pub fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// All a run said, its log (stderr, where warnings go) then its report
/// (stdout, where a dry run lists them too).
pub fn said_by(out: &std::process::Output) -> String {
    stderr_of(out) + &String::from_utf8_lossy(&out.stdout)
}

/// Everything observable about a database's catalog and data, for "nothing
/// changed" assertions: the whole schema dump (volatile lines removed) and the
/// row count of every table.
pub fn catalog_fingerprint(db: &TestDb) -> String {
    fingerprint(db, None)
}

/// [`catalog_fingerprint`] of one schema only.
pub fn schema_fingerprint(db: &TestDb, schema: &str) -> String {
    fingerprint(db, Some(schema))
}

/// Ends the session holding pgshift's run lock on this database (pg_locks
/// shows every database of the cluster: other tests' runs are not touched).
pub const TERMINATE_RUN_LOCK: &str = "SELECT pg_terminate_backend(pid) FROM pg_locks
  WHERE locktype = 'advisory' AND objid = 1
    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// The preserved tables' changelogs and sync functions left in pgshift's
/// schema, `tables/functions`.
pub const SYNC_HELPERS: &str = "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = 'pgshift'::regnamespace AND relname LIKE 'log\\_%' AND relkind = 'r'
                                         AND obj_description(oid, 'pg_class') LIKE 'pgshift: changelog of %')
                       || '/' || (SELECT count(*) FROM pg_proc WHERE pronamespace = 'pgshift'::regnamespace)";

/// The prepare phases in order (`PGSHIFT_FAILPOINT=<phase>` fails one).
pub const PREPARE_PHASES: [&str; 11] = [
    "snapshot",
    "dump",
    "schema",
    "data",
    "indexes",
    "sequences",
    "sync",
    "privileges",
    "matviews",
    "analyze",
    "validate",
];

/// `pg_dump --schema-only` of `schemas` (all when empty), without owners,
/// privileges and the lines that change from run to run.
pub fn schema_ddl(db: &TestDb, schemas: &[&str]) -> String {
    let mut cmd = db.client_command("pg_dump");
    cmd.args([
        "--schema-only",
        "--no-owner",
        "--no-privileges",
        "--dbname",
        db.name(),
    ]);
    for s in schemas {
        cmd.args(["--schema", s]);
    }
    let out = cmd.output().expect("running pg_dump");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| {
            !l.starts_with("\\restrict")
                && !l.starts_with("\\unrestrict")
                && !l.starts_with("-- Dumped")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One line on stderr, `error: …` containing `needle`, exit 2.
pub fn assert_usage_error(out: &std::process::Output, needle: &str) {
    let err = stderr_of(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(lines[0].contains(needle), "{err}");
}

fn fingerprint(db: &TestDb, schema: Option<&str>) -> String {
    let mut fp = schema_ddl(db, schema.as_slice());
    let tables = db.psql(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
          ORDER BY 1",
    );
    let prefix = schema.map(|s| format!("{s}."));
    let tables: Vec<&str> = tables
        .lines()
        .filter(|t| prefix.as_ref().is_none_or(|p| t.starts_with(p.as_str())))
        .collect();
    // A few hundred counts per psql: one process per table took half a
    // minute for a thousand tables.
    for chunk in tables.chunks(400) {
        let sql = chunk
            .iter()
            .enumerate()
            .map(|(i, t)| format!("SELECT {i} AS i, count(*) FROM ONLY {t}"))
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let counts = db.psql(&format!("SELECT count FROM ({sql}) c ORDER BY i"));
        let counts: Vec<&str> = counts.lines().collect();
        assert_eq!(counts.len(), chunk.len(), "row counts of {chunk:?}");
        for (t, n) in chunk.iter().zip(counts) {
            fp.push_str(&format!("\n-- rows {t}: {n}"));
        }
    }
    fp
}

/// pg_dump output split into entries; schema entries (and their comments) dropped,
/// volatile lines removed, `schema.` mapped back to `public.`.
pub fn normalised_dump(db: &TestDb, schema: &str) -> Vec<String> {
    let text = db.dump_schema(schema);
    let mut blocks: Vec<String> = Vec::new();
    let mut cur = String::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let starts_entry = line.starts_with("-- Name: ") && i > 0 && lines[i - 1] == "--";
        if starts_entry {
            blocks.push(std::mem::take(&mut cur));
        }
        if line.starts_with("\\restrict")
            || line.starts_with("\\unrestrict")
            || line.starts_with("-- Dumped ")
        {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    blocks.push(cur);
    blocks
        .into_iter()
        .filter(|b| {
            let header = b.lines().find(|l| l.starts_with("-- Name: ")).unwrap_or("");
            !(header.contains("; Type: SCHEMA;")
                || (header.contains("; Type: COMMENT;") && header.starts_with("-- Name: SCHEMA ")))
        })
        .map(|b| {
            if schema == "public" {
                b
            } else {
                b.replace(&format!("{schema}."), "public.")
                    .replace(&format!("Schema: {schema};"), "Schema: public;")
            }
        })
        .collect()
}

/// Assert the destination's shadow has exactly the source's public DDL.
pub fn assert_same_ddl(src: &TestDb, dst: &TestDb) {
    let a = normalised_dump(src, "public");
    let b = normalised_dump(dst, "shadow");
    if a != b {
        let sa: BTreeSet<&String> = a.iter().collect();
        let sb: BTreeSet<&String> = b.iter().collect();
        let only_src: Vec<&&String> = sa.difference(&sb).collect();
        let only_dst: Vec<&&String> = sb.difference(&sa).collect();
        panic!(
            "shadow DDL differs from the source's.\n--- only in source ({}):\n{}\n--- only in shadow ({}):\n{}",
            only_src.len(),
            only_src
                .iter()
                .take(5)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            only_dst.len(),
            only_dst
                .iter()
                .take(5)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }
}

/// Wait for `child` to log a line containing `needle` on stderr, then let it
/// finish (the caller acts in between through `act`); returns its output
/// with the whole of stderr.
pub fn with_child_paused(
    mut child: std::process::Child,
    needle: &str,
    act: impl FnOnce(),
) -> std::process::Output {
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = needle.to_string();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.expect("stderr line");
            if line.contains(&wanted) {
                let _ = tx.send(());
            }
            seen.push(line);
        }
        seen
    });
    let paused = rx.recv_timeout(std::time::Duration::from_secs(60)).is_ok();
    if paused {
        act();
    }
    let out = child.wait_with_output().expect("wait for pgshift");
    let seen = reader.join().expect("stderr reader");
    assert!(
        paused,
        "pgshift never logged {needle:?}:\n{}",
        seen.join("\n")
    );
    std::process::Output {
        stderr: seen.join("\n").into_bytes(),
        ..out
    }
}
