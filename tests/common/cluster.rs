//! Throwaway PostgreSQL clusters (initdb + pg_ctl), or an external server.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::conn::ServerInfo;
use super::db::TestDb;
use super::proc::{RunAs, chown_to, pg_bindir, random_u64, server_os_user};
use super::teardown::{self, Registration};

/// Name of the superuser the harness creates in its clusters.
pub const SUPERUSER: &str = "pgshift_test";

/// A PostgreSQL server the tests talk to: a throwaway cluster this process started
/// (stopped and removed on drop / at exit / by the watchdog), or the external server
/// named by `TEST_PGHOST` (which the harness never stops).
pub struct Cluster {
    info: Arc<ServerInfo>,
    managed: Option<Managed>,
}

/// The parts that only exist for a cluster we started. Dropping it tears the cluster down.
struct Managed {
    reg: Registration,
    log: PathBuf,
    ca_cert: PathBuf,
}

impl Drop for Managed {
    fn drop(&mut self) {
        teardown::unregister(self.reg.id);
        teardown::stop_and_remove(&self.reg);
        teardown::reap_watchdog(&self.reg);
    }
}

/// False when `TEST_PGHOST` selects an external server: tests that need a private
/// cluster (`Cluster::start_new`), restarts or the harness's certificates skip themselves.
/// A private cluster with pg_stat_statements preloaded (top-level statements),
/// started once per test binary in `cell`; None (with a note) when the suite
/// runs against an external server.
pub fn pg_stat_statements_cluster(
    cell: &'static std::sync::OnceLock<Cluster>,
    label: &str,
) -> Option<&'static Cluster> {
    if !can_start_clusters() {
        println!("skipping: needs a cluster started by the harness (TEST_PGHOST is set)");
        return None;
    }
    Some(cell.get_or_init(|| {
        Cluster::start_with(
            label,
            "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = top",
        )
    }))
}

pub fn can_start_clusters() -> bool {
    std::env::var("TEST_PGHOST").map_or(true, |h| h.is_empty())
}

impl Cluster {
    /// Start a private cluster for a test that stops/restarts servers.
    /// Panics in external-server mode (check [`can_start_clusters`] first).
    pub fn start_new() -> Cluster {
        assert!(
            can_start_clusters(),
            "Cluster::start_new() is not available with TEST_PGHOST (external server mode); \
             check common::can_start_clusters() and skip the test"
        );
        Cluster::create("priv")
    }

    /// Start a private cluster with extra `postgresql.conf` lines appended to the
    /// harness's own (later lines win), e.g.
    /// `"shared_preload_libraries = 'pg_stat_statements'"` or
    /// `"max_connections = 20\nmax_locks_per_transaction = 64"`. Tests state the
    /// settings they need here instead of assuming them from the machine.
    /// Panics in external-server mode (check [`can_start_clusters`] first).
    pub fn start_with(label: &str, extra_conf: &str) -> Cluster {
        assert!(
            can_start_clusters(),
            "Cluster::start_with() is not available with TEST_PGHOST (external server mode); \
             check common::can_start_clusters() and skip the test"
        );
        Cluster::create_with(label, extra_conf)
    }

    /// The external server from `TEST_PG*`.
    pub(crate) fn external() -> Cluster {
        let host = std::env::var("TEST_PGHOST").expect("TEST_PGHOST");
        let port = std::env::var("TEST_PGPORT")
            .ok()
            .filter(|s| !s.is_empty())
            .map(|p| p.parse().expect("TEST_PGPORT must be a port number"))
            .unwrap_or(5432);
        let user = std::env::var("TEST_PGUSER")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "postgres".into());
        let password = std::env::var("TEST_PGPASSWORD").unwrap_or_default();
        let maintenance_db = std::env::var("TEST_PGDATABASE")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "postgres".into());
        let socket_dir = host.starts_with('/').then(|| PathBuf::from(&host));
        Cluster {
            info: Arc::new(ServerInfo {
                host,
                port,
                user,
                password,
                maintenance_db,
                socket_dir,
                bindir: pg_bindir(),
            }),
            managed: None,
        }
    }

    /// initdb + pg_ctl start. `label` ends up in the temp dir name.
    ///
    /// (Every cluster gets its own initdb rather than a copy of a template: copies would
    /// share the system identifier, which pgshift may use to tell servers apart.)
    pub(crate) fn create(label: &str) -> Cluster {
        Cluster::create_with(label, "")
    }

    fn create_with(label: &str, extra_conf: &str) -> Cluster {
        let managed = Managed::new_dir(label);
        // From here on, a panic drops `managed`, which cleans up.
        let run_as = managed.reg.run_as.clone();
        let base = managed.reg.base.clone();
        let data = managed.reg.data.clone();

        let sock = base.join("sock");
        std::fs::create_dir(&sock).expect("create socket dir");
        chown_to(&sock, run_as.as_ref());
        write_certs(&base, run_as.as_ref());

        // Each cluster has its own password (catches mixed-up credentials), with
        // characters that need percent-encoding in URLs.
        let password = format!("S3cr@t/:%-{:012x}", random_u64() & 0xffff_ffff_ffff);
        let pwfile = base.join("pwfile");
        write_private(&pwfile, &format!("{password}\n"), run_as.as_ref());
        let out = managed
            .server_cmd("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args([
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(&pwfile);
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str("\n# pgshift test harness\ninclude 'pgshift_harness.conf'\n");
        std::fs::write(&conf, text).expect("write postgresql.conf");

        // A free port is only free until someone takes it: retry on bind errors.
        let mut port = 0;
        for attempt in 1..=8 {
            port = pick_port();
            let mut settings = harness_settings(&base, &sock, port);
            if !extra_conf.is_empty() {
                settings.push_str("# settings this test asked for\n");
                settings.push_str(extra_conf);
                settings.push('\n');
            }
            write_private(
                &data.join("pgshift_harness.conf"),
                &settings,
                run_as.as_ref(),
            );
            let log_len = std::fs::metadata(&managed.log).map_or(0, |m| m.len());
            match managed.pg_ctl_start() {
                Ok(()) => break,
                Err(msg) => {
                    let log = std::fs::read_to_string(&managed.log).unwrap_or_default();
                    let new_part = log.get(log_len as usize..).unwrap_or("");
                    let bind_error = new_part.contains("could not bind")
                        || new_part.contains("Address already in use");
                    if !(bind_error && attempt < 8) {
                        panic!(
                            "cannot start PostgreSQL cluster in {}: {msg}\n--- log tail ---\n{}",
                            base.display(),
                            tail(&log, 40)
                        );
                    }
                }
            }
        }
        let info = ServerInfo {
            host: "127.0.0.1".into(),
            port,
            user: SUPERUSER.into(),
            password,
            maintenance_db: "postgres".into(),
            socket_dir: Some(sock),
            bindir: managed.reg.bindir.clone(),
        };
        Cluster {
            info: Arc::new(info),
            managed: Some(managed),
        }
    }

    fn managed(&self, what: &str) -> &Managed {
        self.managed.as_ref().unwrap_or_else(|| {
            panic!(
                "{what} needs a cluster started by the harness, not the external TEST_PGHOST \
                 server; check common::can_start_clusters() and skip the test"
            )
        })
    }

    /// Connection parameters (shared with the `TestDb`s created on this server).
    pub fn info(&self) -> &Arc<ServerInfo> {
        &self.info
    }
    /// Whether this process started the cluster (false for the external server).
    pub fn is_managed(&self) -> bool {
        self.managed.is_some()
    }
    /// TCP host: `127.0.0.1` for clusters the harness started.
    pub fn host(&self) -> &str {
        &self.info.host
    }
    pub fn port(&self) -> u16 {
        self.info.port
    }
    /// Directory holding the unix socket (None for an external TCP server).
    pub fn socket_dir(&self) -> Option<&Path> {
        self.info.socket_dir.as_deref()
    }
    pub fn superuser(&self) -> &str {
        &self.info.user
    }
    pub fn password(&self) -> &str {
        &self.info.password
    }
    /// Where psql, pg_dump, pg_ctl … live.
    pub fn bindir(&self) -> &Path {
        &self.info.bindir
    }
    /// PEM file of the CA that signed the server certificate (valid for `localhost`
    /// and `127.0.0.1`). The same CA signs every cluster of this process.
    pub fn ca_cert_path(&self) -> &Path {
        &self.managed("ca_cert_path()").ca_cert
    }
    /// The temporary directory holding data dir, socket dir, certificates and log.
    pub fn base_dir(&self) -> &Path {
        &self.managed("base_dir()").reg.base
    }
    pub fn data_dir(&self) -> &Path {
        &self.managed("data_dir()").reg.data
    }
    pub fn log_path(&self) -> &Path {
        &self.managed("log_path()").log
    }
    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        tail(&log, lines).to_string()
    }
    /// The server log's length now, to read what is logged after it
    /// ([`Cluster::errors_since`]).
    pub fn log_len(&self) -> usize {
        std::fs::metadata(self.log_path()).map_or(0, |m| m.len() as usize)
    }
    /// ERROR lines logged in database `db` since the log was `len` long
    /// (`log_line_prefix` names the database). pgshift's normal work logs
    /// none: operators alert on them.
    pub fn errors_since(&self, len: usize, db: &str) -> Vec<String> {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        log.get(len..)
            .unwrap_or("")
            .lines()
            .filter(|l| l.contains(&format!("@{db} ERROR:")))
            .map(str::to_string)
            .collect()
    }
    /// Lines logged in database `db` since the log was `len` long that say a
    /// client went away without ending its session (no `Terminate`): what a
    /// process exiting under its open connections leaves.
    pub fn lost_clients_since(&self, len: usize, db: &str) -> Vec<String> {
        const LOST: [&str; 4] = [
            "could not receive data from client",
            "could not send data to client",
            "unexpected EOF on client connection",
            "connection to client lost",
        ];
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        log.get(len..)
            .unwrap_or("")
            .lines()
            .filter(|l| l.contains(&format!("@{db} ")) && LOST.iter().any(|m| l.contains(m)))
            .map(str::to_string)
            .collect()
    }
    /// The postmaster's pid, from `postmaster.pid` (None when stopped).
    pub fn postmaster_pid(&self) -> Option<i32> {
        teardown::postmaster_pid_from(&self.data_dir().join("postmaster.pid"))
    }

    /// `pg_ctl stop -m fast`. Only for clusters from [`Cluster::start_new`]: the shared
    /// clusters from `clusters()` are used by concurrently running tests.
    pub fn stop(&self) {
        let m = self.managed("stop()");
        let out = m
            .server_cmd("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&m.reg.data)
            .args(["-m", "fast", "-w", "-t", "60"])
            .output()
            .expect("run pg_ctl stop");
        m.check(out, "pg_ctl stop");
    }

    /// `pg_ctl start` (same port as before).
    pub fn start(&self) {
        let m = self.managed("start()");
        if let Err(msg) = m.pg_ctl_start() {
            panic!("{msg}\n--- log tail ---\n{}", self.log_tail(40));
        }
    }

    /// Restart this cluster as a standby with no primary (`standby.signal`,
    /// no `primary_conninfo`): it stays in recovery, answering read-only
    /// queries, as a read replica a destination URL may point at by mistake.
    /// Only for clusters from [`Cluster::start_with`].
    pub fn become_standby(&self) {
        let m = self.managed("become_standby()");
        self.stop();
        let signal = m.reg.data.join("standby.signal");
        std::fs::write(&signal, "").expect("write standby.signal");
        chown_to(&signal, m.reg.run_as.as_ref());
        self.start();
    }

    /// `pg_ctl restart -m fast`.
    pub fn restart(&self) {
        let m = self.managed("restart()");
        let out = m
            .server_cmd("pg_ctl")
            .arg("restart")
            .arg("-D")
            .arg(&m.reg.data)
            .arg("-l")
            .arg(&m.log)
            .args(["-m", "fast", "-w", "-t", "60"])
            .output()
            .expect("run pg_ctl restart");
        m.check(out, "pg_ctl restart");
    }

    /// Run SQL with psql in database `db` (see [`ServerInfo::psql`]).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.info.psql(db, sql)
    }

    /// Create tablespace `name` (a plain lower-case name) on this cluster, in a
    /// directory of its own below the cluster's base directory: owned by the
    /// server's OS user, removed with the cluster. Tablespaces belong to the
    /// whole cluster, which the tests of one binary share: each test names its
    /// own. Panics in external-server mode (check [`can_start_clusters`] first).
    pub fn create_tablespace(&self, name: &str) {
        let managed = self.managed("create_tablespace()");
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "tablespace name {name:?}: lower-case letters, digits and _ only"
        );
        let parent = managed.reg.base.join("tablespaces");
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).expect("create tablespace dir");
        chown_to(&parent, managed.reg.run_as.as_ref());
        chown_to(&dir, managed.reg.run_as.as_ref());
        let location = dir.to_str().expect("a UTF-8 tablespace path");
        assert!(!location.contains('\''), "{location}");
        self.psql(
            &self.info.maintenance_db,
            &format!("CREATE TABLESPACE {name} LOCATION '{location}'"),
        );
    }

    /// A fresh database `<prefix>_<name>_<pid>_<n>` on this server, dropped when the guard drops.
    pub fn create_db(&self, prefix: &str, name: &str) -> TestDb {
        TestDb::create(self.info.clone(), prefix, name)
    }

    /// [`create_db`](Self::create_db) with `CREATE DATABASE` options.
    pub fn create_db_with(&self, prefix: &str, name: &str, options: &str) -> TestDb {
        TestDb::create_with(self.info.clone(), prefix, name, options)
    }
}

impl Managed {
    /// A fresh temp dir owned by the server user, registered for teardown and watched
    /// by a watchdog.
    fn new_dir(label: &str) -> Managed {
        static IDS: AtomicU64 = AtomicU64::new(1);
        let run_as = server_os_user();
        let base = tempfile::Builder::new()
            .prefix(&format!("pgshift-test-{label}-"))
            .tempdir_in(cluster_tmp_root())
            .expect("create cluster temp dir")
            .keep();
        chown_to(&base, run_as.as_ref());
        let data = base.join("data");
        let mut reg = Registration {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            base: base.clone(),
            data: data.clone(),
            bindir: pg_bindir(),
            run_as,
            watchdog_pid: None,
        };
        teardown::register(reg.clone());
        reg.watchdog_pid = teardown::spawn_watchdog(&base, &data);
        if let Some(pid) = reg.watchdog_pid {
            teardown::set_watchdog(reg.id, pid);
        }
        Managed {
            reg,
            log: base.join("postgres.log"),
            ca_cert: base.join("ca.crt"),
        }
    }

    fn server_cmd(&self, program: &str) -> Command {
        self.server_cmd_at(&self.reg.bindir.join(program))
    }

    fn server_cmd_at(&self, program: &Path) -> Command {
        let mut cmd = teardown::server_command(program, &self.reg.base, self.reg.run_as.as_ref());
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let out = self
            .server_cmd("pg_ctl")
            .arg("start")
            .arg("-D")
            .arg(&self.reg.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60"])
            .output()
            .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn check(&self, out: std::process::Output, what: &str) {
        if !out.status.success() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!(
                "{what} failed ({}): {}{}\n--- log tail ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail(&log, 40)
            );
        }
    }
}

/// Where cluster directories go: `PGSHIFT_TEST_TMPDIR`, else `TMPDIR`, else `/dev/shm`
/// when it has at least 2 GiB free (initdb writes ~1000 files / 40 MB, several times
/// faster on tmpfs; the clusters run with fsync=off anyway), else the system temp dir.
pub fn cluster_tmp_root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        for var in ["PGSHIFT_TEST_TMPDIR", "TMPDIR"] {
            if let Some(dir) = std::env::var_os(var).filter(|v| !v.is_empty()) {
                return PathBuf::from(dir);
            }
        }
        let shm = Path::new("/dev/shm");
        if free_bytes(shm).is_some_and(|free| free >= 2 << 30) {
            return shm.to_path_buf();
        }
        std::env::temp_dir()
    })
    .clone()
}

fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data filled in by the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    // SAFETY: access(2) with a valid C string.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

fn harness_settings(base: &Path, sock: &Path, port: u16) -> String {
    let q = |p: &Path| p.display().to_string().replace('\'', "''");
    format!(
        "listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sock}'
max_connections = 100
max_prepared_transactions = 0
shared_buffers = 32MB
max_wal_size = 1GB
fsync = off
synchronous_commit = off
full_page_writes = off
jit = off
huge_pages = off
timezone = 'UTC'
log_timezone = 'UTC'
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
ssl = on
ssl_cert_file = '{cert}'
ssl_key_file = '{key}'
",
        sock = q(sock),
        cert = q(&base.join("server.crt")),
        key = q(&base.join("server.key")),
    )
}

/// A port nobody listens on right now, outside the usual ephemeral range.
fn pick_port() -> u16 {
    for _ in 0..200 {
        let port = 15000 + (random_u64() % 17000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port found on 127.0.0.1");
}

fn tail(text: &str, lines: usize) -> &str {
    let mut idx = text.len();
    for _ in 0..=lines {
        match text[..idx].rfind('\n') {
            Some(i) => idx = i,
            None => return text,
        }
    }
    &text[idx + 1..]
}

/// Write a file only the server user can read (0600).
fn write_private(path: &Path, contents: &str, run_as: Option<&RunAs>) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    f.write_all(contents.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    chown_to(path, run_as);
}

struct TestCa {
    cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// One CA per test process; it signs the server certificate of every cluster.
fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "pgshift test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa {
            cert_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    })
}

/// ca.crt, server.crt (CN/SAN localhost + SAN 127.0.0.1), server.key (0600, server user).
fn write_certs(base: &Path, run_as: Option<&RunAs>) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
    let ca = test_ca();
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("server cert params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("server key");
    let cert = params
        .signed_by(&key, &ca.issuer)
        .expect("sign server cert");
    std::fs::write(base.join("ca.crt"), &ca.cert_pem).expect("write ca.crt");
    std::fs::write(base.join("server.crt"), cert.pem()).expect("write server.crt");
    chown_to(&base.join("ca.crt"), run_as);
    chown_to(&base.join("server.crt"), run_as);
    write_private(&base.join("server.key"), &key.serialize_pem(), run_as);
}
