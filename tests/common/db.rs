//! Per-test databases that are dropped when their guard drops (also on panic).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::conn::ServerInfo;

/// A database created for one test; `DROP DATABASE … WITH (FORCE)` on drop.
pub struct TestDb {
    server: Arc<ServerInfo>,
    name: String,
}

/// Lowercase `[a-z0-9_]` database name `<prefix>_<name>_<pid>_<n>`, at most 63 bytes.
pub fn unique_db_name(prefix: &str, name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix = format!("_{}_{n}", std::process::id());
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_alphanumeric() { c } else { '_' }
            })
            .collect()
    };
    let prefix = clean(prefix);
    let mut name = clean(name);
    let budget = 63usize.saturating_sub(prefix.len() + 1 + suffix.len());
    name.truncate(budget);
    format!("{prefix}_{name}{suffix}")
}

impl TestDb {
    /// Create a fresh database on `server`.
    pub fn create(server: Arc<ServerInfo>, prefix: &str, name: &str) -> TestDb {
        TestDb::create_with(server, prefix, name, "")
    }

    /// Create a fresh database on `server` with `options` after `CREATE
    /// DATABASE name` (e.g. `ENCODING 'LATIN1' LOCALE 'C' TEMPLATE template0`).
    pub fn create_with(server: Arc<ServerInfo>, prefix: &str, name: &str, options: &str) -> TestDb {
        let name = unique_db_name(prefix, name);
        server.psql(
            &server.maintenance_db,
            &format!("CREATE DATABASE \"{name}\" {options}"),
        );
        TestDb { server, name }
    }

    /// A database of this one's name on another server (staging and
    /// production both called `app`).
    pub fn twin_on(&self, server: Arc<ServerInfo>) -> TestDb {
        let name = self.name.clone();
        server.psql(
            &server.maintenance_db,
            &format!("CREATE DATABASE \"{name}\""),
        );
        TestDb { server, name }
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The server it lives on.
    pub fn server(&self) -> &Arc<ServerInfo> {
        &self.server
    }
    pub fn host(&self) -> &str {
        &self.server.host
    }
    pub fn port(&self) -> u16 {
        self.server.port
    }
    pub fn user(&self) -> &str {
        &self.server.user
    }
    pub fn password(&self) -> &str {
        &self.server.password
    }
    pub fn socket_dir(&self) -> Option<&Path> {
        self.server.socket_dir.as_deref()
    }
    pub fn bindir(&self) -> &Path {
        &self.server.bindir
    }

    /// `postgresql://user:password@127.0.0.1:PORT/db` (password percent-encoded).
    pub fn url(&self) -> String {
        self.server.url(&self.name)
    }
    /// `postgresql://user@127.0.0.1:PORT/db`.
    pub fn url_without_password(&self) -> String {
        self.server.url_without_password(&self.name)
    }
    /// `postgresql://user@/db?host=<socket dir>&port=PORT` (trust auth, no password).
    pub fn socket_url(&self) -> String {
        self.server.socket_url(&self.name)
    }
    /// `host=127.0.0.1 port=… user=… password=… dbname=…`.
    pub fn conninfo(&self) -> String {
        self.server.conninfo(&self.name)
    }
    /// tokio-postgres config for this database (TCP, no TLS).
    pub fn pg_config(&self) -> tokio_postgres::Config {
        self.server.pg_config(&self.name)
    }
    /// `PG*` variables selecting this database, for child processes.
    pub fn pg_env(&self) -> Vec<(&'static str, String)> {
        self.server.pg_env(&self.name)
    }
    /// A `Command` for a client program of the bindir (psql, pg_dump, …) aimed at this
    /// database through `PG*` variables.
    pub fn client_command(&self, program: &str) -> Command {
        self.server.client_command(program, &self.name)
    }

    /// A connected tokio-postgres client (TCP, NoTls; connection task spawned).
    pub async fn client(&self) -> tokio_postgres::Client {
        self.server.client(&self.name).await
    }

    /// Run SQL through `psql -X -q -v ON_ERROR_STOP=1 -At`; panics with stderr on failure.
    /// Output is unaligned, tuples only, `|`-separated, without the final newline.
    pub fn psql(&self, sql: &str) -> String {
        self.server.psql(&self.name, sql)
    }
    /// Like [`psql`](Self::psql) but returns psql's stderr as the error.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.server.try_psql(&self.name, sql)
    }
    /// The server's major version (`server_version_num / 10000`).
    pub fn server_major(&self) -> u32 {
        let n: u32 = self
            .query_one_string("SHOW server_version_num")
            .parse()
            .expect("server_version_num");
        n / 10000
    }
    /// The trimmed output of a query returning one value.
    pub fn query_one_string(&self, sql: &str) -> String {
        self.psql(sql).trim().to_string()
    }

    /// `pg_dump --schema-only -n <schema> --no-owner --no-privileges` (schema is a
    /// pg_dump pattern: quote mixed-case names as `"\"Name\""`).
    pub fn dump_schema(&self, schema: &str) -> String {
        let out = self
            .client_command("pg_dump")
            .args([
                "--schema-only",
                "-n",
                schema,
                "--no-owner",
                "--no-privileges",
            ])
            .output()
            .expect("run pg_dump");
        assert!(
            out.status.success(),
            "pg_dump of schema {schema} in {} failed:\n{}",
            self.url_without_password(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("pg_dump output is UTF-8")
    }

    /// `CREATE EXTENSION IF NOT EXISTS postgis` and `"uuid-ossp"`, in schema public.
    pub fn create_extensions(&self) {
        self.psql(
            "CREATE EXTENSION IF NOT EXISTS postgis SCHEMA public;
             CREATE EXTENSION IF NOT EXISTS \"uuid-ossp\" SCHEMA public;",
        );
    }

    /// Whether a database with this name exists (checked from the maintenance database).
    pub fn exists(&self) -> bool {
        database_exists(&self.server, &self.name)
    }
}

/// Whether database `name` exists on `server`.
pub fn database_exists(server: &ServerInfo, name: &str) -> bool {
    let n = server.psql(
        &server.maintenance_db,
        &format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{}'",
            name.replace('\'', "''")
        ),
    );
    n.trim() == "1"
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = self.server.try_psql(
            &self.server.maintenance_db,
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
        );
    }
}

/// A fresh source database and a fresh destination database for one test.
pub struct TestDbs {
    pub src: TestDb,
    pub dst: TestDb,
}

impl TestDbs {
    /// `src_<name>_<pid>_<n>` on the shared source cluster and `dst_<name>_<pid>_<n>`
    /// on the shared destination cluster.
    pub fn new(name: &str) -> TestDbs {
        let (src, dst) = super::clusters();
        TestDbs::on(src, dst, name)
    }

    /// The same on clusters of your choice (e.g. from `Cluster::start_new()`).
    pub fn on(src: &super::Cluster, dst: &super::Cluster, name: &str) -> TestDbs {
        TestDbs {
            src: src.create_db("src", name),
            dst: dst.create_db("dst", name),
        }
    }
}

/// Same as [`TestDbs::new`].
pub fn fresh_pair(name: &str) -> TestDbs {
    TestDbs::new(name)
}

/// `sql` for a server of major version `major`: below 14, one-line SQL-standard
/// function bodies (`BEGIN ATOMIC <stmt>; END;`, `RETURN <expr>;`, PostgreSQL 14+)
/// become string bodies (`AS $f$ <stmt> $f$`, `AS $f$ SELECT <expr> $f$`).
pub fn sql_bodies_for(major: u32, sql: &str) -> String {
    if major >= 14 {
        return sql.to_string();
    }
    eprintln!("on PostgreSQL {major}: SQL-standard function bodies are written as string bodies");
    sql.lines()
        .map(|line| {
            let t = line.trim_start();
            if !t.starts_with("CREATE FUNCTION") && !t.starts_with("CREATE OR REPLACE FUNCTION") {
                return line.to_string();
            }
            if let (Some(i), true) = (
                line.find(" BEGIN ATOMIC "),
                line.trim_end().ends_with("END;"),
            ) {
                let body = line[i + " BEGIN ATOMIC ".len()..].trim_end();
                let body = body.strip_suffix("END;").unwrap().trim_end();
                return format!("{} AS $f${}$f$;", &line[..i], body);
            }
            if let Some(i) = line.find(" RETURN ") {
                let body = line[i + " RETURN ".len()..].trim_end();
                let body = body.strip_suffix(';').unwrap_or(body);
                return format!("{} AS $f$SELECT {}$f$;", &line[..i], body);
            }
            line.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
