//! A PgBouncer in front of a test database, for the tests of what pgshift
//! does behind a connection pooler. `scripts/install-deps.sh` installs it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TestDb;
use super::proc::{chown_to, server_os_user};

/// A running PgBouncer (stopped on drop): `postgresql://<user>@127.0.0.1:<port>/<db>`
/// reaches the database through it, any user name, no password (`auth_type =
/// any`; it logs in to the server as the database's user).
pub struct Bouncer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Bouncer {
    /// PgBouncer in `pool_mode` (`session`, `transaction`) before `db`'s server.
    pub fn start(db: &TestDb, pool_mode: &str) -> Bouncer {
        Bouncer::start_with(db, pool_mode, "")
    }

    /// [`Bouncer::start`] with more `[pgbouncer]` settings (later lines win).
    pub fn start_with(db: &TestDb, pool_mode: &str, extra: &str) -> Bouncer {
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("pgbouncer is not installed: run scripts/install-deps.sh");
        let dir = tempfile::tempdir().expect("temp dir");
        let run_as = server_os_user();
        chown_to(dir.path(), run_as.as_ref());
        let port = free_port();
        let ini = dir.path().join("pgbouncer.ini");
        let quoted = |v: &str| format!("'{}'", v.replace('\'', "''"));
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host={} port={} user={} password={}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = any\npool_mode = {pool_mode}\ndefault_pool_size = 4\nmax_client_conn = 50\n\
                 logfile = {}\npidfile = {}\n{extra}\n",
                db.host(),
                db.port(),
                quoted(db.user()),
                quoted(db.password()),
                dir.path().join("pgbouncer.log").display(),
                dir.path().join("pgbouncer.pid").display(),
            ),
        )
        .expect("write pgbouncer.ini");
        chown_to(&ini, run_as.as_ref());
        let mut cmd = Command::new(bin);
        cmd.arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(u) = &run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(u.uid).gid(u.gid);
        }
        let child = cmd.spawn().expect("start pgbouncer");
        let bouncer = Bouncer {
            child,
            port,
            _dir: dir,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "pgbouncer did not listen on {port}: {}",
                std::fs::read_to_string(bouncer._dir.path().join("pgbouncer.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        bouncer
    }

    /// The URL of `db` through this PgBouncer.
    pub fn url(&self, db: &TestDb) -> String {
        format!(
            "postgresql://{}@127.0.0.1:{}/{}",
            db.user(),
            self.port,
            db.name()
        )
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
