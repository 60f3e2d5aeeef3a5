//! One run at a time: a session-level advisory lock on the destination, held by
//! a dedicated connection for the whole run of every mutating command.
//!
//! The holder is identified through its `application_name`
//! (`pgshift <command> pid=<pid> host=<host>`), which every session can see in
//! `pg_stat_activity`, so a refused run can name it. A run that just ended may
//! still hold the lock for a moment (its server session exits after the
//! connection closes): a lock whose holder is gone or whose process no longer
//! runs is asked for again, for about 2 s, before the run is refused.

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use tokio_postgres::Client;

/// First key of pgshift's advisory locks: "pgsh" as an int4.
pub const LOCK_CLASS: i32 = 0x7067_7368;
/// Second key: the run lock.
pub const LOCK_RUN: i32 = 1;

/// `application_name` for the lock session of this process.
pub fn lock_application_name(command: &str) -> String {
    let host = Some(crate::process::this_host())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let mut name = format!("pgshift {command} pid={} host={host}", std::process::id());
    // application_name is truncated by the server at 63 bytes; keep it valid UTF-8.
    while name.len() > 63 {
        name.pop();
    }
    name
}

/// Who holds the run lock.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Holder {
    pub backend_pid: i32,
    pub application_name: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub client_addr: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.application_name.as_deref() {
            Some(app) if !app.is_empty() => write!(f, "{app}")?,
            _ => write!(f, "a session")?,
        }
        write!(f, " (server pid {}", self.backend_pid)?;
        if let Some(addr) = &self.client_addr {
            write!(f, ", from {addr}")?;
        }
        if let Some(since) = self.since {
            write!(f, ", since {}", since.format("%Y-%m-%d %H:%M:%S UTC"))?;
        }
        write!(f, ")")
    }
}

impl Holder {
    /// The pgshift process its `application_name` names
    /// (`pgshift <command> pid=<pid> host=<host>`): (pid, host).
    pub fn process(&self) -> (Option<u32>, Option<String>) {
        let mut pid = None;
        let mut host = None;
        for part in self
            .application_name
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
        {
            if let Some(p) = part.strip_prefix("pid=") {
                pid = p.parse().ok();
            } else if let Some(h) = part.strip_prefix("host=") {
                host = Some(h.to_string());
            }
        }
        (pid, host)
    }

    /// The pgshift command its `application_name` names (`swap`, `rollback`,
    /// …), if it is a pgshift run's.
    pub fn command(&self) -> Option<&str> {
        let mut words = self.application_name.as_deref()?.split_whitespace();
        (words.next() == Some("pgshift"))
            .then(|| words.next())
            .flatten()
    }

    /// false when that process ran on this host and runs no more (its server
    /// session lives on until the server notices); None when that cannot be
    /// told (another host, no pid).
    pub fn process_alive(&self) -> Option<bool> {
        let (Some(pid), Some(host)) = self.process() else {
            return None;
        };
        let me = crate::process::this_host();
        // application_name is cut at 63 bytes, so the host may be a prefix.
        if host.is_empty() || !(host == me || me.starts_with(&host)) {
            return None;
        }
        // SAFETY: signal 0 only checks for existence and permission.
        let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
        Some(rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
    }
}

/// Try to take the run lock on `client` (a session that stays open for the run).
/// Fails at once, naming the holder, if another session has it.
///
/// The lock is re-entrant, so the same statement's transaction first asks
/// whether this server session holds it already: pgshift takes it once per
/// run on a fresh connection, so it does only when a pooler in transaction
/// mode handed this run a server session that an earlier run left holding
/// it. Taking it again would let two runs in at once; that is refused.
pub async fn acquire(client: &Client) -> Result<()> {
    // A run that just ended (`pgshift prepare && pgshift swap`) has closed
    // its connection, but its server session may take a moment to exit and
    // release the lock: when the holder is gone by the time it is asked for,
    // or its process no longer runs, ask again for up to about 2 s.
    for _ in 0..20 {
        match try_acquire(client).await? {
            None => return Ok(()),
            Some(h) if h.as_ref().is_none_or(|h| h.process_alive() == Some(false)) => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Some(_) => break,
        }
    }
    match try_acquire(client).await? {
        None => Ok(()),
        Some(h) => refuse_held(h),
    }
}

/// One try of [`acquire`]: `None` when taken, else the holder as far as it
/// can be seen (`Some(None)`: it let go meanwhile).
async fn try_acquire(client: &Client) -> Result<Option<Option<Holder>>> {
    let taken = async {
        client.batch_execute("BEGIN").await?;
        let held: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
                                 WHERE l.pid = pg_catalog.pg_backend_pid() AND l.locktype = 'advisory'
                                   AND l.classid = $1::int4::oid AND l.objid = $2::int4::oid
                                   AND l.objsubid = 2)",
                &[&LOCK_CLASS, &LOCK_RUN],
            )
            .await?
            .get(0);
        let got: bool = if held {
            false
        } else {
            client
                .query_one(
                    "SELECT pg_catalog.pg_try_advisory_lock($1, $2)",
                    &[&LOCK_CLASS, &LOCK_RUN],
                )
                .await?
                .get(0)
        };
        let pid: i32 = client
            .query_one("SELECT pg_catalog.pg_backend_pid()", &[])
            .await?
            .get(0);
        client.batch_execute("COMMIT").await?;
        Ok::<_, tokio_postgres::Error>((held, got, pid))
    }
    .await;
    let (held, got, pid) = match taken {
        Ok(t) => t,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(
                anyhow::Error::new(e).context("taking pgshift's advisory lock on the destination")
            );
        }
    };
    if held {
        bail!(
            "this connection's server session (pid {pid}) already holds pgshift's lock from an earlier run: the destination is reached through a pooler in transaction mode, which pgshift's sessions cannot use (connect directly or through session pooling); if no pgshift is running, end that session with SELECT pg_terminate_backend({pid})"
        );
    }
    if got {
        return Ok(None);
    }
    Ok(Some(holder(client).await?))
}

/// The refusal of a run lock that `h` holds.
fn refuse_held(h: Option<Holder>) -> Result<()> {
    match h {
        Some(h) if h.process_alive() == Some(false) => bail!(
            "another pgshift run holds the destination's lock: {h}; its process ({}) no longer runs on this host, and its server session lives on until the server notices: end that session with SELECT pg_terminate_backend({}) and try again",
            h.process()
                .0
                .map(|p| format!("pid {p}"))
                .unwrap_or_default(),
            h.backend_pid
        ),
        Some(h) => bail!(
            "another pgshift run holds the destination's lock: {h}; wait for it to finish (or stop it) and try again; if no pgshift is running, end that session with SELECT pg_terminate_backend({})",
            h.backend_pid
        ),
        None => bail!(
            "another pgshift run holds the destination's lock; wait for it to finish and try again"
        ),
    }
}

/// The session holding the run lock, if any (read-only; used by `status`).
pub async fn holder(client: &Client) -> Result<Option<Holder>> {
    let row = client
        .query_opt(
            "SELECT l.pid, a.application_name, a.backend_start, host(a.client_addr)
               FROM pg_catalog.pg_locks l
               LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted
                AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
                AND l.classid = $1::int4::oid AND l.objid = $2::int4::oid AND l.objsubid = 2
              LIMIT 1",
            &[&LOCK_CLASS, &LOCK_RUN],
        )
        .await
        .context("looking up the holder of pgshift's advisory lock")?;
    Ok(row.map(|r| Holder {
        backend_pid: r.get(0),
        application_name: r.get(1),
        since: r.get(2),
        client_addr: r.get(3),
    }))
}

/// How pgshift names another session in its messages, as SQL over
/// `pg_stat_activity` aliased `a`: `pid 4242 (app, psql, idle in transaction)`
/// — role, application, backend type (unless a client backend), state.
pub const SESSION_SHOWN: &str = "'pid ' || a.pid || ' (' || concat_ws(', ', a.usename::text, \
     NULLIF(a.application_name, ''), NULLIF(a.backend_type, 'client backend'), a.state) || ')'";

/// The other sessions holding locks on the relations of `schemas` or on
/// `relations` (quoted and qualified) in this database, named as
/// [`SESSION_SHOWN`], the first `limit` by pid. Best effort: empty when they
/// cannot be read (the caller is already reporting a failure).
pub async fn relation_lock_holders(
    client: &Client,
    schemas: &[String],
    relations: &[String],
    limit: i64,
) -> Vec<String> {
    let sql = format!(
        "SELECT s.shown FROM (
           SELECT DISTINCT a.pid, {SESSION_SHOWN} AS shown
             FROM pg_catalog.pg_locks l
             JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
             JOIN pg_catalog.pg_class c ON c.oid = l.relation
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE l.granted AND l.locktype = 'relation' AND l.pid <> pg_catalog.pg_backend_pid()
              AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
              AND (n.nspname = ANY($1) OR c.oid IN (SELECT pg_catalog.to_regclass(x) FROM pg_catalog.unnest($2::text[]) x))
         ) s ORDER BY s.pid LIMIT $3"
    );
    client
        .query(&sql, &[&schemas, &relations, &limit])
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(app: &str) -> Holder {
        Holder {
            backend_pid: 7,
            application_name: Some(app.into()),
            since: None,
            client_addr: None,
        }
    }

    #[test]
    fn the_holders_process() {
        assert_eq!(
            holder("pgshift prepare pid=42 host=db-1").process(),
            (Some(42), Some("db-1".into()))
        );
        assert_eq!(holder("psql").process(), (None, None));
        assert_eq!(
            holder("pgshift swap pid=42 host=elsewhere.example").process_alive(),
            None
        );
        let here = crate::process::this_host();
        let me = holder(&format!(
            "pgshift swap pid={} host={here}",
            std::process::id()
        ));
        assert_eq!(me.process_alive(), Some(true));
        // A pid no process has (above the kernel's pid_max).
        let gone = holder(&format!("pgshift swap pid=2147483000 host={here}"));
        assert_eq!(gone.process_alive(), Some(false));
    }

    #[test]
    fn application_name_fits() {
        let n = lock_application_name("rollback");
        assert!(n.starts_with("pgshift rollback pid="));
        assert!(n.len() <= 63);
    }
}
