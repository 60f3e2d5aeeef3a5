//! Connection parameters of a test server, and client programs run against it.

use std::path::PathBuf;
use std::process::Command;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::proc::{remove_pg_env, run_with_stdin};

/// How to reach a test server as its superuser.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    /// TCP host (`127.0.0.1` for harness clusters), or a socket directory for an
    /// external server given as a path.
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Empty when there is none (external server without TEST_PGPASSWORD).
    pub password: String,
    /// Database to connect to for CREATE/DROP DATABASE.
    pub maintenance_db: String,
    pub socket_dir: Option<PathBuf>,
    pub bindir: PathBuf,
}

/// Characters kept as-is in URL components (RFC 3986 unreserved).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub fn enc(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// Quote a libpq keyword/value value when needed.
pub fn conninfo_value(v: &str) -> String {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return v.to_string();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl ServerInfo {
    fn userinfo(&self, with_password: bool) -> String {
        if with_password && !self.password.is_empty() {
            format!("{}:{}", enc(&self.user), enc(&self.password))
        } else {
            enc(&self.user)
        }
    }

    fn url_impl(&self, db: &str, with_password: bool) -> String {
        let userinfo = self.userinfo(with_password);
        if self.host.starts_with('/') {
            format!(
                "postgresql://{userinfo}@/{}?host={}&port={}",
                enc(db),
                enc(&self.host),
                self.port
            )
        } else {
            format!(
                "postgresql://{userinfo}@{}:{}/{}",
                self.host,
                self.port,
                enc(db)
            )
        }
    }

    /// `postgresql://user:password@127.0.0.1:PORT/db` (percent-encoded).
    pub fn url(&self, db: &str) -> String {
        self.url_impl(db, true)
    }

    /// Like [`url`](Self::url) without the password.
    pub fn url_without_password(&self, db: &str) -> String {
        self.url_impl(db, false)
    }

    /// `postgresql://user@/db?host=<socket dir>&port=PORT` (local connections are `trust`).
    pub fn socket_url(&self, db: &str) -> String {
        let dir = self
            .socket_dir
            .as_ref()
            .expect("this server has no known unix socket directory");
        format!(
            "postgresql://{}@/{}?host={}&port={}",
            enc(&self.user),
            enc(db),
            enc(&dir.to_string_lossy()),
            self.port
        )
    }

    /// `host=… port=… user=… password=… dbname=…` (values quoted when needed).
    pub fn conninfo(&self, db: &str) -> String {
        let mut s = format!(
            "host={} port={} user={}",
            conninfo_value(&self.host),
            self.port,
            conninfo_value(&self.user)
        );
        if !self.password.is_empty() {
            s.push_str(&format!(" password={}", conninfo_value(&self.password)));
        }
        s.push_str(&format!(" dbname={}", conninfo_value(db)));
        s
    }

    /// tokio-postgres configuration for database `db` (TCP, no TLS).
    pub fn pg_config(&self, db: &str) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(db)
            .application_name("pgshift-test-harness")
            .ssl_mode(tokio_postgres::config::SslMode::Disable)
            .connect_timeout(std::time::Duration::from_secs(10));
        if !self.password.is_empty() {
            cfg.password(&self.password);
        }
        cfg
    }

    /// Connect to `db` with tokio-postgres (NoTls); the connection task is spawned
    /// on the current tokio runtime.
    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        let (client, connection) = self
            .pg_config(db)
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url_without_password(db)));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("test connection ended with an error: {e}");
            }
        });
        client
    }

    /// `PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD` (when set) for `db`.
    pub fn pg_env(&self, db: &str) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", self.user.clone()),
            ("PGDATABASE", db.to_string()),
        ];
        if !self.password.is_empty() {
            env.push(("PGPASSWORD", self.password.clone()));
        }
        env
    }

    /// A command for client program `program` of [`bindir`](Self::bindir) (psql,
    /// pg_dump, …) aimed at `db` through `PG*` variables (password never in argv);
    /// other inherited `PG*` variables are removed.
    pub fn client_command(&self, program: &str, db: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        remove_pg_env(&mut cmd);
        cmd.envs(self.pg_env(db))
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGAPPNAME", "pgshift-test-harness");
        cmd
    }

    /// Run `sql` with `psql -X -q -v ON_ERROR_STOP=1 -At -f -` in `db`; stdout without
    /// its final newline, or stderr on failure.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut cmd = self.client_command("psql", db);
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-f", "-"]);
        let out = run_with_stdin(&mut cmd, sql).map_err(|e| format!("cannot run psql: {e}"))?;
        if out.success {
            Ok(out
                .stdout
                .strip_suffix('\n')
                .unwrap_or(&out.stdout)
                .to_string())
        } else {
            Err(out.stderr)
        }
    }

    /// [`try_psql`](Self::try_psql), panicking with psql's stderr on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql).unwrap_or_else(|err| {
            panic!(
                "psql failed on {}:\n{err}\n--- SQL ---\n{}",
                self.url_without_password(db),
                truncate(sql, 2000)
            )
        })
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
