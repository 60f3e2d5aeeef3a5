//! One run at a time: a session-level advisory lock on the destination, held by
//! a dedicated connection for the whole run of every mutating command.
//!
//! The holder is identified through its `application_name`
//! (`pgshift <command> pid=<pid> host=<host>`), which every session can see in
//! `pg_stat_activity`, so a refused run can name it. A run that just ended may
//! still hold the lock for a moment (its server session exits after the
//! connection closes): a lock whose holder is gone or whose process no longer
//! runs is asked for again, for about 2 s, before the run is refused.
//!
//! Also here: the sessions a run waits for. A statement that waits for a lock
//! says nothing while it waits (pg_dump's `LOCK TABLE`, a copy's `COPY`, an
//! index build behind a long transaction), and a progress line that does not
//! move looks like a hang. [`naming_lock_waits`] asks, on an idle session, every
//! few seconds, which of this run's sessions (`application_name` `pgshift …`)
//! wait and behind whom (`pg_blocking_pids`), and names the holder, as the swap
//! names the sessions its `lock_timeout` gives up on. Prepare asks on the
//! destination through the run lock's session, idle once it holds the lock,
//! for all its phases; and on the source, while pg_dump runs, through one
//! more session, opened only after pg_dump has run for a few seconds (pg_dump
//! has its own session by then, and the copies' are not open yet) and left
//! out if the server refuses it; `verify` likewise, on one more session once
//! its reads have run for a few seconds. Only this run's sessions are
//! watched (by their `application_name`s), and a holder that waits itself,
//! in a lock queue, is named with whom it waits for.

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use itertools::Itertools;
use tokio_postgres::Client;

use crate::pg::catalog::{MAY_END_SESSION, end_advice};

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
        crate::process::runs_here(pid, &host)
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

/// How often [`naming_lock_waits`] asks.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// A wait is named once it has lasted this long (a lock taken and released
/// in a moment is no news)…
const WAIT_WORTH_SAYING: i64 = 5;
/// …and named again, while it lasts, this often (per holder).
const SAY_AGAIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Whose waits a watcher names: the database (`side`, "source" or
/// "destination") and the `application_name`s of this run's sessions there
/// (another pgshift command's, a `verify` say, is not this run's business).
pub struct Watched<'a> {
    pub side: &'a str,
    pub sessions: &'a [String],
}

/// Run `work` while naming, on `watcher` (a session of the watched database,
/// idle otherwise), the sessions that keep this run's sessions there waiting
/// for a lock (see the module's doc). Without a watcher, just `work`.
pub async fn naming_lock_waits<T>(
    watcher: Option<&Client>,
    watched: &Watched<'_>,
    work: impl std::future::Future<Output = T>,
) -> T {
    let Some(client) = watcher else {
        return work.await;
    };
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => return r,
        () = name_lock_waits(client, watched) => {}
    }
    work.await
}

/// [`naming_lock_waits`] on a session that `open` makes once `work` has run
/// for [`WATCH_EVERY`] (a wait is no news before): by then the sessions
/// `work` opens have their slots (a server, a role or a pooler with room for
/// exactly those is no reason to fail), and a quick `work` costs no session.
/// None from `open` (refused: no room) leaves `work` unwatched.
pub async fn naming_lock_waits_from_a_new_session<T>(
    open: impl std::future::Future<Output = Option<Client>>,
    watched: &Watched<'_>,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => return r,
        () = tokio::time::sleep(WATCH_EVERY) => {}
    }
    let client = tokio::select! {
        r = &mut work => return r,
        c = open => c,
    };
    naming_lock_waits(client.as_ref(), watched, work).await
}

/// The loop of [`naming_lock_waits`]; it ends only when its session does. It
/// never takes a lock on a relation: `pg_locks` and `pg_stat_activity` are
/// read without one. A question that fails is asked again at the next tick.
async fn name_lock_waits(client: &Client, watched: &Watched<'_>) {
    let mut said: std::collections::HashMap<i32, std::time::Instant> =
        std::collections::HashMap::new();
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if client.is_closed() {
            return;
        }
        let Ok(waits) = waits(client, watched.sessions).await else {
            continue;
        };
        said.retain(|pid, _| waits.iter().any(|w| w.holder == *pid));
        for w in waits {
            if said.get(&w.holder).is_some_and(|t| t.elapsed() < SAY_AGAIN) {
                continue;
            }
            said.insert(w.holder, std::time::Instant::now());
            tracing::warn!("{}", w.shown(watched.side));
        }
    }
}

/// One session that keeps this run's sessions waiting.
struct Wait {
    holder: i32,
    /// The holder as [`SESSION_WITH_QUERY`] names it.
    holder_shown: String,
    /// When the holder waits for a lock itself (queued ahead of this run's
    /// session, behind another): the sessions it waits for, shown alike.
    holder_waits_for: Vec<(i32, String)>,
    /// Whether this role may end the session the line offers to end (the
    /// holder, or the first it waits for).
    may_end: bool,
    /// The waiting sessions: pid, and name without `pgshift ` (`pg_dump`).
    waiters: Vec<(i32, String)>,
    /// What they wait for, and the longest wait (seconds).
    what: Vec<String>,
    secs: i64,
}

impl Wait {
    fn shown(&self, side: &str) -> String {
        let mut names: Vec<&str> = self.waiters.iter().map(|(_, n)| n.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let waiters = match self.waiters.len() {
            1 => format!("pgshift's {} session has", names.join("")),
            n => format!("{n} of pgshift's sessions ({}) have", names.join(", ")),
        };
        let what = match self.what.as_slice() {
            [one] => one.clone(),
            more => format!(
                "locks on {}",
                more.iter()
                    .map(|w| w.trim_start_matches("a lock on "))
                    .join(", ")
            ),
        };
        let up_to = if self.waiters.len() > 1 { "up to " } else { "" };
        let head = format!(
            "on the {side}, {waiters} waited {up_to}{} s for {what}",
            self.secs
        );
        let goes = if self.waiters.len() > 1 {
            "they go"
        } else {
            "it goes"
        };
        if self.holder_waits_for.is_empty() {
            return format!(
                "{head}, held by {}: {goes} on once that is released ({})",
                self.holder_shown,
                end_advice(self.holder, self.may_end, "that session")
            );
        }
        let roots = self
            .holder_waits_for
            .iter()
            .map(|(_, s)| s.as_str())
            .join("; ");
        format!(
            "{head}, queued behind {}, which waits itself for {roots}: {goes} on once those are done ({})",
            self.holder_shown,
            end_advice(
                self.holder_waits_for[0].0,
                self.may_end,
                "the session that holds them up"
            )
        )
    }
}

/// A session as the lines name it, as SQL over `pg_stat_activity` aliased
/// `a`: [`SESSION_SHOWN`]'s words, how long its transaction has been open,
/// its query cut to 120 characters on one line (of another role's session,
/// a role without pg_read_all_stats sees its role and application only).
const SESSION_WITH_QUERY: &str = "'pid ' || a.pid || ' (' || concat_ws(', ', a.usename::text, NULLIF(a.application_name, ''),
     NULLIF(a.backend_type, 'client backend'), a.state,
     'its transaction open for ' || EXTRACT(epoch FROM pg_catalog.now() - a.xact_start)::int8 || ' s',
     'query: ' || NULLIF(NULLIF(pg_catalog.regexp_replace(pg_catalog.left(a.query, 120), '[[:space:]]+', ' ', 'g'), ''),
                         '<insufficient privilege>')) || ')'";

/// This run's sessions (`sessions`: their `application_name`s) of this
/// database that have waited for a lock for [`WAIT_WORTH_SAYING`] seconds or
/// more, grouped by the session they wait for (a waiter behind several
/// sessions is counted with each).
async fn waits(client: &Client, sessions: &[String]) -> Result<Vec<Wait>> {
    // `pg_locks.waitstart` is from PostgreSQL 14: read through to_jsonb, so
    // that older servers fall back to the statement's start. A holder that
    // waits itself (a lock queue: an ALTER TABLE queued behind a long
    // transaction, pgshift's session behind both) is shown with whom it
    // waits for, one level down.
    let sql = format!(
        "SELECT b.pid, (SELECT {SESSION_WITH_QUERY} FROM pg_catalog.pg_stat_activity a WHERE a.pid = b.pid),
                w.pid, pg_catalog.substr(w.application_name, 9),
                l.locktype, n.nspname::text, c.relname::text,
                EXTRACT(epoch FROM pg_catalog.now() - COALESCE((pg_catalog.to_jsonb(l) ->> 'waitstart')::timestamptz,
                                                               w.query_start, pg_catalog.now()))::int8 AS secs,
                ARRAY(SELECT r.pid FROM pg_catalog.unnest(pg_catalog.pg_blocking_pids(b.pid)) AS r(pid) ORDER BY 1),
                ARRAY(SELECT (SELECT {SESSION_WITH_QUERY} FROM pg_catalog.pg_stat_activity a WHERE a.pid = r.pid)
                        FROM pg_catalog.unnest(pg_catalog.pg_blocking_pids(b.pid)) AS r(pid) ORDER BY r.pid),
                -- Whether this role may end the holder, and the first session
                -- it waits for (the one the line offers to end).
                (SELECT {MAY_END_SESSION} FROM pg_catalog.pg_stat_activity a WHERE a.pid = b.pid),
                (SELECT {MAY_END_SESSION} FROM pg_catalog.pg_stat_activity a
                  WHERE a.pid = (SELECT pg_catalog.min(r.pid)
                                   FROM pg_catalog.unnest(pg_catalog.pg_blocking_pids(b.pid)) AS r(pid)))
           FROM pg_catalog.pg_stat_activity w
           JOIN pg_catalog.pg_locks l ON l.pid = w.pid AND NOT l.granted
           LEFT JOIN pg_catalog.pg_class c ON l.locktype = 'relation' AND c.oid = l.relation
           LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           CROSS JOIN LATERAL pg_catalog.unnest(pg_catalog.pg_blocking_pids(w.pid)) AS b(pid)
          WHERE w.datname = pg_catalog.current_database() AND w.application_name = ANY($1)
            AND w.pid <> pg_catalog.pg_backend_pid()
          ORDER BY b.pid, secs DESC, w.pid"
    );
    let mut out: Vec<Wait> = Vec::new();
    for r in client.query(&sql, &[&sessions]).await? {
        let secs: i64 = r.get(7);
        if secs < WAIT_WORTH_SAYING {
            continue;
        }
        let holder: i32 = r.get(0);
        let waiter: (i32, String) = (r.get(2), r.get(3));
        let (locktype, schema, rel): (String, Option<String>, Option<String>) =
            (r.get(4), r.get(5), r.get(6));
        let what = match (schema, rel) {
            (Some(s), Some(t)) => {
                format!("a lock on {}", crate::pg::ident::qualified_display(&s, &t))
            }
            // Waiting for another transaction to end: a row it changed or
            // locked (FOR UPDATE, FOR SHARE).
            _ if locktype == "transactionid" => {
                "a row another transaction changed or locked".to_string()
            }
            _ => format!("a lock ({locktype})"),
        };
        if let Some(w) = out.last_mut().filter(|w| w.holder == holder) {
            if !w.waiters.contains(&waiter) {
                w.waiters.push(waiter);
            }
            if !w.what.contains(&what) && w.what.len() < 3 {
                w.what.push(what);
            }
            continue;
        }
        let (roots, shown): (Vec<i32>, Vec<Option<String>>) = (r.get(8), r.get(9));
        let may_end: (Option<bool>, Option<bool>) = (r.get(10), r.get(11));
        out.push(Wait {
            holder,
            may_end: if roots.is_empty() {
                may_end.0
            } else {
                may_end.1
            }
            .unwrap_or(false),
            holder_shown: r
                .get::<_, Option<String>>(1)
                .unwrap_or_else(|| format!("pid {holder}")),
            holder_waits_for: roots
                .into_iter()
                .zip(shown)
                .map(|(pid, s)| (pid, s.unwrap_or_else(|| format!("pid {pid}"))))
                .collect(),
            waiters: vec![waiter],
            what: vec![what],
            secs,
        });
    }
    Ok(out)
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
