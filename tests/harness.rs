//! Tests of the test harness itself (tests/common): real clusters, real psql.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, TestDbs, Workdir, can_start_clusters, clusters, process_alive, wait_until};

fn skip_external(test: &str) -> bool {
    if can_start_clusters() {
        return false;
    }
    println!("skipping {test}: needs clusters started by the harness (TEST_PGHOST is set)");
    true
}

/// psql aimed only by `conn` (URL or conninfo, plus explicit `env`), with an empty HOME and no
/// inherited PG* variables, so nothing but what the test passes is used.
fn raw_psql(conn: &str, sql: &str, env: &[(&str, &str)]) -> Result<String, String> {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(common::pg_bindir().join("psql"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", home.path())
        .env("PGCONNECT_TIMEOUT", "10")
        .envs(env.iter().copied())
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", conn, "-c", sql]);
    let out = cmd.output().expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn clusters_accept_tcp_with_password_and_unix_socket() {
    let (src, dst) = clusters();
    for c in [src, dst] {
        let v = c.psql(&c.info().maintenance_db, "SELECT version()");
        assert!(v.starts_with("PostgreSQL "), "{v}");
        if c.is_managed() {
            assert_eq!(c.host(), "127.0.0.1");
            assert!(!c.password().is_empty());
            // TCP, password from the URL only.
            let url = c.info().url("postgres");
            let v = raw_psql(&url, "SELECT inet_server_addr()", &[]).unwrap();
            assert_eq!(v, "127.0.0.1");
            // Unix socket, trust.
            let sock = c.info().socket_url("postgres");
            let v = raw_psql(&sock, "SELECT inet_server_addr() IS NULL", &[]).unwrap();
            assert_eq!(v, "t", "connection should be over the unix socket");
            let dir = c.socket_dir().unwrap();
            let local = raw_psql(
                &format!(
                    "host={} port={} user={} dbname=postgres",
                    dir.display(),
                    c.port(),
                    c.superuser()
                ),
                "SELECT inet_server_addr() IS NULL",
                &[],
            )
            .unwrap();
            assert_eq!(local, "t", "connection should be over the unix socket");
        }
    }
    if src.is_managed() {
        // Two genuinely different servers.
        assert_ne!(src.port(), dst.port());
        assert_ne!(src.base_dir(), dst.base_dir());
        assert_ne!(src.password(), dst.password());
        let sysid = "SELECT system_identifier FROM pg_control_system()";
        assert_ne!(src.psql("postgres", sysid), dst.psql("postgres", sysid));
    }
}

#[tokio::test]
async fn test_db_connection_strings_work() {
    let dbs = TestDbs::new("Conn Strings!");
    for db in [&dbs.src, &dbs.dst] {
        assert!(db.name().len() <= 63);
        assert!(
            db.name()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{}",
            db.name()
        );
        let q = "SELECT current_database()";
        assert_eq!(raw_psql(&db.url(), q, &[]).unwrap(), db.name());
        assert_eq!(raw_psql(&db.conninfo(), q, &[]).unwrap(), db.name());
        assert_eq!(db.query_one_string(q), db.name());
        let client = db.client().await;
        let row = client.query_one(q, &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), db.name());
        if db.socket_dir().is_some() {
            assert_eq!(raw_psql(&db.socket_url(), q, &[]).unwrap(), db.name());
        }
        if can_start_clusters() {
            // scram over TCP: no password, no connection.
            let err = raw_psql(&db.url_without_password(), q, &[]).unwrap_err();
            assert!(err.contains("password"), "{err}");
            assert!(
                db.url().contains('%'),
                "password should need percent-encoding"
            );
            assert!(!db.url_without_password().contains(db.password()));
        }
    }
    assert!(dbs.src.name().starts_with("src_conn_strings_"));
    assert!(dbs.dst.name().starts_with("dst_conn_strings_"));
    let long = common::unique_db_name("src", &"x".repeat(100));
    assert!(long.len() <= 63, "{long}");
}

#[test]
fn postgis_and_uuid_ossp_are_available() {
    let dbs = TestDbs::new("extensions");
    dbs.src.create_extensions();
    dbs.dst.create_extensions();
    for db in [&dbs.src, &dbs.dst] {
        let row = db.psql("SELECT ST_AsText(ST_MakePoint(1,2)), uuid_generate_v4()");
        let (point, uuid) = row.split_once('|').unwrap();
        assert_eq!(point, "POINT(1 2)");
        assert_eq!(uuid.len(), 36, "{uuid}");
        let schema = db.query_one_string(
            "SELECT string_agg(extname || ':' || extnamespace::regnamespace, ',' ORDER BY extname)
             FROM pg_extension WHERE extname IN ('postgis', 'uuid-ossp')",
        );
        assert_eq!(schema, "postgis:public,uuid-ossp:public");
    }
}

#[test]
fn psql_errors_and_schema_dump() {
    let dbs = TestDbs::new("dump");
    let db = &dbs.src;
    db.psql(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL);
         CREATE SCHEMA other; CREATE TABLE other.t (x int);
         INSERT INTO items VALUES (1, 'a'), (2, 'b');",
    );
    assert_eq!(
        db.psql("SELECT id, name FROM items ORDER BY id"),
        "1|a\n2|b"
    );
    let err = db
        .try_psql("SELECT 1; SELECT * FROM nope; SELECT 2")
        .unwrap_err();
    assert!(err.contains("relation \"nope\" does not exist"), "{err}");
    let dump = db.dump_schema("public");
    assert!(dump.contains("CREATE TABLE public.items"), "{dump}");
    assert!(!dump.contains("other.t"), "{dump}");
    assert!(!dump.contains("OWNER TO"), "{dump}");
    // The other side is a different database.
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT to_regclass('public.items') IS NULL"),
        "t"
    );
}

#[test]
fn ssl_verify_full_with_the_test_ca() {
    if skip_external("ssl_verify_full_with_the_test_ca") {
        return;
    }
    let (src, dst) = clusters();
    let q = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    // libpq matches an IP address against a certificate's IP addresses from 14 on.
    let hosts: &[&str] = if common::bin_major() >= 14 {
        &["host=localhost", "host=127.0.0.1"]
    } else {
        println!(
            "skipped on libpq {}: verify-full to host=127.0.0.1 (libpq matches IP addresses in certificates from 14 on)",
            common::bin_major()
        );
        &["host=localhost"]
    };
    for c in [src, dst] {
        let pw = [("PGPASSWORD", c.password())];
        let base = format!("port={} user={} dbname=postgres", c.port(), c.superuser());
        let ca = c.ca_cert_path().display().to_string();
        for host in hosts {
            let conn = format!("{host} {base} sslmode=verify-full sslrootcert={ca}");
            assert_eq!(raw_psql(&conn, q, &pw).unwrap(), "t", "{conn}");
        }
        let conn = format!("host=127.0.0.1 {base} sslmode=require");
        assert_eq!(raw_psql(&conn, q, &pw).unwrap(), "t");
        // Plain connections are accepted too (tokio-postgres NoTls clients).
        let conn = format!("host=127.0.0.1 {base} sslmode=disable");
        assert_eq!(raw_psql(&conn, q, &pw).unwrap(), "f");

        // verify-full without the CA: HOME is empty, so no ~/.postgresql/root.crt.
        let conn = format!("host=localhost {base} sslmode=verify-full");
        let err = raw_psql(&conn, q, &pw).unwrap_err();
        assert!(err.contains("root certificate file"), "{err}");
        // ... and with some other CA the server certificate must not verify.
        let other = tempfile::tempdir().unwrap();
        let other_ca = other.path().join("other-ca.crt");
        std::fs::write(&other_ca, unrelated_ca_pem()).unwrap();
        let conn = format!("host=localhost {base} sslmode=verify-full");
        let err = raw_psql(
            &conn,
            q,
            &[pw[0], ("PGSSLROOTCERT", other_ca.to_str().unwrap())],
        )
        .unwrap_err();
        assert!(err.contains("certificate verify failed"), "{err}");
    }
}

fn unrelated_ca_pem() -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}

#[test]
fn db_guards_drop_their_databases_even_on_panic() {
    let (src, dst) = clusters();
    let names = std::sync::Mutex::new(None);
    let holder = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let dbs = TestDbs::new("doomed");
        *names.lock().unwrap() = Some((dbs.src.name().to_string(), dbs.dst.name().to_string()));
        // An open session must not keep the database alive (WITH (FORCE)).
        let hold = dbs
            .src
            .client_command("psql")
            .args(["-X", "-c", "SELECT pg_sleep(30)"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        *holder.lock().unwrap() = Some(hold);
        wait_until(Duration::from_secs(5), || {
            src.psql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}'",
                    dbs.src.name()
                ),
            ) == "1"
        });
        assert!(dbs.src.exists() && dbs.dst.exists());
        panic!("deliberate panic with live test databases");
    }));
    assert!(result.is_err());
    let mut hold = holder.lock().unwrap().take().unwrap();
    let status = hold.wait().unwrap();
    assert!(
        !status.success(),
        "the session in the dropped database should have been terminated"
    );
    let (s, d) = names.lock().unwrap().clone().unwrap();
    assert!(!common::database_exists(src.info(), &s), "{s} survived");
    assert!(!common::database_exists(dst.info(), &d), "{d} survived");
}

#[test]
fn private_cluster_stop_start_restart_and_drop() {
    if skip_external("private_cluster_stop_start_restart_and_drop") {
        return;
    }
    let c = Cluster::start_new();
    let base = c.base_dir().to_path_buf();
    assert_eq!(c.psql("postgres", "SELECT 1"), "1");
    let pid1 = c.postmaster_pid().unwrap();
    c.restart();
    let pid2 = c.postmaster_pid().unwrap();
    assert_ne!(pid1, pid2);
    assert!(wait_until(Duration::from_secs(10), || !process_alive(pid1)));
    c.stop();
    assert!(c.postmaster_pid().is_none());
    assert!(c.info().try_psql("postgres", "SELECT 1").is_err());
    c.start();
    let dbs = TestDbs::on(&c, &c, "private");
    assert_eq!(dbs.src.query_one_string("SELECT 2"), "2");
    let pid3 = c.postmaster_pid().unwrap();
    drop(dbs);
    drop(c);
    assert!(!process_alive(pid3), "postmaster survived the drop");
    assert!(!base.exists(), "{} survived the drop", base.display());
}

#[test]
fn private_cluster_with_extra_settings() {
    if skip_external("private_cluster_with_extra_settings") {
        return;
    }
    let c = Cluster::start_with(
        "settings",
        "max_connections = 20\nmax_locks_per_transaction = 32\nshared_preload_libraries = 'pg_stat_statements'",
    );
    assert_eq!(c.psql("postgres", "SHOW max_connections"), "20");
    assert_eq!(c.psql("postgres", "SHOW max_locks_per_transaction"), "32");
    assert_eq!(
        c.psql("postgres", "SHOW shared_preload_libraries"),
        "pg_stat_statements"
    );
    // The harness's own settings are still there.
    assert_eq!(c.psql("postgres", "SHOW fsync"), "off");
}

#[test]
fn pgshift_commands_are_hermetic() {
    let wd = Workdir::new();
    let cmd = wd.cmd();
    assert_eq!(cmd.get_program(), common::pgshift_bin().as_os_str());
    assert!(common::pgshift_bin().exists());
    assert_eq!(cmd.get_current_dir(), Some(wd.path()));
    // Observe the real environment of a child built the same way, with PG* variables set.
    let out = helper_child(
        "hermetic_env_helper",
        &[
            ("PGSHIFT_JOBS", "7"),
            ("PGHOST", "nowhere.invalid"),
            ("PGPASSWORD", "leak"),
            ("RUST_LOG", "trace"),
            (REPORT_ENV, "stdout"),
        ],
    );
    let (status, stdout, stderr) = wait_output(out, Duration::from_secs(30));
    assert!(status.success(), "{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ENV:"))
        .unwrap_or_else(|| panic!("no ENV line in {stdout}"));
    assert_eq!(line, "", "leaked variables: {line}");
    let home = stdout
        .lines()
        .find_map(|l| l.strip_prefix("HOME_IS_CWD:"))
        .unwrap_or_else(|| panic!("no HOME line in {stdout}"));
    assert_eq!(home, "true");
}

/// Child side of `pgshift_commands_are_hermetic`: prints the PG*/RUST_LOG variables a
/// hermetic command sees (on stdout). Inert unless run by that test.
#[test]
#[ignore]
fn hermetic_env_helper() {
    if std::env::var_os(REPORT_ENV).is_none() {
        return;
    }
    let wd = Workdir::new();
    let out = common::hermetic_command("/bin/sh", wd.path())
        .args([
            "-c",
            r#"printf '\nENV:%s\n' "$(env | grep -E '^(PG|RUST_LOG)' | cut -d= -f1 | tr '\n' ' ')";
               [ "$HOME" = "$(pwd)" ] && echo HOME_IS_CWD:true || echo HOME_IS_CWD:false"#,
        ])
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

// ---------------------------------------------------------------------------
// Teardown proofs: a child test process starts the shared clusters and reports
// where they are; after it ends (pass, panic, SIGKILL) nothing may remain.

const REPORT_ENV: &str = "PGSHIFT_HARNESS_REPORT";

#[derive(Debug)]
struct Report {
    pids: Vec<i32>,
    dirs: Vec<PathBuf>,
}

/// Child side: start the shared clusters, write the report (atomically).
fn write_report() -> bool {
    let Some(path) = std::env::var_os(REPORT_ENV) else {
        return false;
    };
    let (src, dst) = clusters();
    let mut text = String::new();
    for c in [src, dst] {
        text.push_str(&format!(
            "{} {}\n",
            c.postmaster_pid().expect("running"),
            c.base_dir().display()
        ));
    }
    let tmp = PathBuf::from(format!("{}.tmp", Path::new(&path).display()));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    true
}

fn read_report(path: &Path) -> Option<Report> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut r = Report {
        pids: vec![],
        dirs: vec![],
    };
    for line in text.lines() {
        let (pid, dir) = line.split_once(' ')?;
        r.pids.push(pid.parse().ok()?);
        r.dirs.push(PathBuf::from(dir));
    }
    (r.pids.len() == 2).then_some(r)
}

#[test]
#[ignore]
fn teardown_helper_pass() {
    write_report();
}

#[test]
#[ignore]
fn teardown_helper_panic() {
    if write_report() {
        panic!("deliberate failure: the harness must still tear the clusters down");
    }
}

#[test]
#[ignore]
fn teardown_helper_hang() {
    if write_report() {
        // Killed by the parent long before this ends.
        std::thread::sleep(Duration::from_secs(120));
    }
}

/// Re-run this test binary for one ignored helper test.
fn helper_child(name: &str, env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        name,
        "--test-threads=1",
        "--nocapture",
    ])
    .env_remove("TEST_PGHOST")
    .env("RUST_BACKTRACE", "0")
    .envs(env.iter().copied())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd.spawn().unwrap()
}

/// Wait for the child and for EOF on its output pipes; failing to get EOF means a
/// leftover process (postmaster, watchdog) holds them, which would hang `cargo test`.
fn wait_output(mut child: Child, timeout: Duration) -> (ExitStatus, String, String) {
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, pipe) in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .enumerate()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut pipe = pipe;
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            let _ = tx.send((i, s));
        });
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("helper child did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut outs = [String::new(), String::new()];
    for _ in 0..2 {
        let (i, s) = rx.recv_timeout(Duration::from_secs(10)).expect(
            "the helper's output pipes stay open after it exited: a leftover process holds them",
        );
        outs[i] = s;
    }
    let [stdout, stderr] = outs;
    (status, stdout, stderr)
}

/// Live processes whose working directory is inside `dir` (every PostgreSQL server
/// process, postmaster and children, runs in its data directory).
fn processes_in(dir: &Path) -> Vec<i32> {
    let mut pids = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) {
            let cwd = cwd.to_string_lossy();
            let cwd = cwd.trim_end_matches(" (deleted)");
            if Path::new(cwd).starts_with(dir) && process_alive(pid) {
                pids.push(pid);
            }
        }
    }
    pids
}

fn assert_torn_down(report: &Report, how: &str) {
    let gone = wait_until(Duration::from_secs(20), || {
        report.pids.iter().all(|p| !process_alive(*p))
            && report
                .dirs
                .iter()
                .all(|d| !d.exists() && processes_in(d).is_empty())
    });
    if !gone {
        let state = format!(
            "postmasters alive: {:?}, dirs left: {:?}, server processes left: {:?}",
            report
                .pids
                .iter()
                .filter(|p| process_alive(**p))
                .collect::<Vec<_>>(),
            report
                .dirs
                .iter()
                .filter(|d| d.exists())
                .collect::<Vec<_>>(),
            report
                .dirs
                .iter()
                .flat_map(|d| processes_in(d))
                .collect::<Vec<_>>()
        );
        // Do not leak anything ourselves.
        for p in &report.pids {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
        for d in &report.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        panic!("clusters not torn down after {how}: {state}");
    }
}

fn run_helper_to_completion(name: &str, expect_success: bool, how: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let report_path = tmp.path().join("report");
    let child = helper_child(
        name,
        &[
            (REPORT_ENV, report_path.to_str().unwrap()),
            // Prove the atexit path on its own.
            (common::NO_WATCHDOG_ENV, "1"),
        ],
    );
    let (status, stdout, stderr) = wait_output(child, Duration::from_secs(90));
    assert_eq!(
        status.success(),
        expect_success,
        "{status}\n{stdout}\n{stderr}"
    );
    let report = read_report(&report_path)
        .unwrap_or_else(|| panic!("helper wrote no report\n{stdout}\n{stderr}"));
    assert_torn_down(&report, how);
}

#[test]
fn teardown_after_a_passing_test() {
    if skip_external("teardown_after_a_passing_test") {
        return;
    }
    run_helper_to_completion("teardown_helper_pass", true, "a passing test");
}

#[test]
fn teardown_after_a_panicking_test() {
    if skip_external("teardown_after_a_panicking_test") {
        return;
    }
    run_helper_to_completion("teardown_helper_panic", false, "a panicking test");
}

#[test]
fn teardown_after_sigkill_by_the_watchdog() {
    if skip_external("teardown_after_sigkill_by_the_watchdog") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let report_path = tmp.path().join("report");
    let mut child = helper_child(
        "teardown_helper_hang",
        &[(REPORT_ENV, report_path.to_str().unwrap())],
    );
    let mut report = None;
    let started = wait_until(Duration::from_secs(60), || {
        report = read_report(&report_path);
        report.is_some() || child.try_wait().unwrap().is_some()
    });
    let Some(report) = report else {
        let _ = child.kill();
        let (_, out, err) = wait_output(child, Duration::from_secs(10));
        panic!("helper did not report (started={started})\n{out}\n{err}");
    };
    assert!(report.pids.iter().all(|p| process_alive(*p)));
    child.kill().unwrap(); // SIGKILL: no atexit, no unwinding
    let (status, _, _) = wait_output(child, Duration::from_secs(10));
    assert!(!status.success());
    assert_torn_down(&report, "SIGKILL");
}
