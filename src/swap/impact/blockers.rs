//! Blockers: sessions that will hold the swap up or be hit by it.
//!
//! The swap takes ACCESS EXCLUSIVE locks on every relation of the live and
//! incoming schemas under a short `lock_timeout`, so a transaction that holds
//! any lock on one of them makes it wait and, past `lock_timeout`, retry. Listed
//! here (the check migration frameworks run before they touch production):
//!
//! * sessions whose transaction is older than `lock_timeout` and that hold a
//!   granted lock on a relation of those schemas;
//! * sessions idle in transaction for longer than `lock_timeout` (they hold
//!   whatever they locked until their client acts, and may lock a swapped
//!   table any moment); a busy application's own transactions are idle
//!   between their statements for milliseconds, which holds nothing up.
//!
//! Only this database's client backends, never this session nor pgshift's own
//! (`application_name` starting with `pgshift`). PostgreSQL shows another role's
//! transaction start, state and query only to superusers and members of
//! `pg_read_all_stats`: without that, pgshift's role cannot see other roles'
//! sessions here (the swap still retries on their locks). [`hidden_sessions`]
//! says so, from what every role may read: the pids and roles of those
//! sessions, and the swapped tables they hold locks on (`pg_locks`).

use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

use super::SchemaPair;

/// One session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocker {
    pub pid: i32,
    pub role: String,
    pub application_name: String,
    /// Null for a Unix-domain socket.
    pub client_addr: Option<String>,
    /// Age of its transaction.
    pub xact_age_ms: i64,
    /// `idle in transaction`, `active`, …
    pub state: String,
    /// The start of its current or last query.
    pub query: String,
    /// It is itself waiting for a lock.
    pub waiting: bool,
    /// Swapped relations it holds a lock on (`accounts`, `billing.invoices`).
    #[serde(default)]
    pub tables: Vec<String>,
}

/// `locked (pid, tables)`: the sessions holding a granted lock on a relation
/// of the schemas `$1` (text[]) in this database, and which (`accounts`,
/// `billing.invoices`). From `pg_locks`, which every role may read.
const LOCKED: &str = "WITH locked AS (
     SELECT l.pid,
            array_agg(DISTINCT CASE WHEN n.nspname = 'public' THEN pg_catalog.quote_ident(c.relname)
                       ELSE pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) END) AS tables
       FROM pg_catalog.pg_locks l
       JOIN pg_catalog.pg_class c ON c.oid = l.relation
       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE l.locktype = 'relation' AND l.granted
        AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
        AND n.nspname = ANY($1::text[]) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
      GROUP BY l.pid)";

/// `FROM … WHERE …` of the other sessions of this database (`a`, with
/// [`LOCKED`]'s `locked` joined): not this one, nor pgshift's own.
const OTHERS: &str = "FROM pg_catalog.pg_stat_activity a
      LEFT JOIN locked ON locked.pid = a.pid
     WHERE a.datname = pg_catalog.current_database()
       AND a.pid <> pg_catalog.pg_backend_pid()
       AND COALESCE(a.application_name, '') NOT LIKE 'pgshift%'";

/// The schemas a swap of `pairs` locks relations of.
fn swapped(pairs: &[SchemaPair]) -> Vec<&str> {
    pairs
        .iter()
        .flat_map(|p| [p.live.as_str(), p.incoming.as_str()])
        .collect()
}

/// How much of a blocker's query is shown.
const QUERY_CHARS: i32 = 200;

/// Sessions that hold the swap up (see the module documentation).
pub async fn blockers(
    client: &impl GenericClient,
    pairs: &[SchemaPair],
    lock_timeout: Duration,
) -> Result<Vec<Blocker>> {
    let schemas = swapped(pairs);
    let ms = lock_timeout.as_millis() as i64;
    let rows = client
        .query(
            &format!("{LOCKED}
             SELECT a.pid, a.usename::text, a.application_name, pg_catalog.host(a.client_addr),
                    (extract(epoch FROM pg_catalog.clock_timestamp() - a.xact_start) * 1000)::int8,
                    a.state, pg_catalog.left(a.query, $3::int4), COALESCE(a.wait_event_type = 'Lock', false),
                    COALESCE(locked.tables, '{{}}')
               {OTHERS}
                AND a.backend_type = 'client backend'
                AND a.xact_start IS NOT NULL
                AND ((a.state LIKE 'idle in transaction%'
                      AND pg_catalog.clock_timestamp() - a.state_change > $2::int8 * interval '1 millisecond')
                     OR (locked.pid IS NOT NULL
                         AND pg_catalog.clock_timestamp() - a.xact_start > $2::int8 * interval '1 millisecond'))
              ORDER BY a.xact_start, a.pid"),
            &[&schemas, &ms, &QUERY_CHARS],
        )
        .await
        .context("looking for sessions that would hold the swap up")?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let mut tables: Vec<String> = r.get(8);
            tables.sort();
            Blocker {
                pid: r.get(0),
                role: r.get::<_, Option<String>>(1).unwrap_or_default(),
                application_name: r.get::<_, Option<String>>(2).unwrap_or_default(),
                client_addr: r.get(3),
                xact_age_ms: r.get::<_, Option<i64>>(4).unwrap_or(0),
                state: r.get::<_, Option<String>>(5).unwrap_or_default(),
                query: r.get::<_, Option<String>>(6).unwrap_or_default(),
                waiting: r.get(7),
                tables,
            }
        })
        .collect())
}

/// The note about this database's sessions of other roles that this role
/// cannot see (`<insufficient privilege>`: no transaction start, state nor
/// query without `pg_read_all_stats`), so neither [`blockers`] nor
/// [`older_snapshots`] can judge them: those in a transaction now (they
/// hold their virtual transaction id's lock), and of those the ones holding
/// locks on the swapped relations named with their tables. Not autovacuum
/// (no role: the swap's waits end before it would hold them up). None when
/// there are none.
pub async fn hidden_sessions(
    client: &impl GenericClient,
    pairs: &[SchemaPair],
) -> Result<Option<String>> {
    let schemas = swapped(pairs);
    let rows: Vec<(i32, String, String, Vec<String>)> = crate::pg::exec::query_map(
        client,
        &format!(
            "{LOCKED}
         SELECT a.pid, coalesce(a.usename::text, ''), coalesce(a.application_name, ''),
                coalesce(locked.tables, '{{}}')
           {OTHERS}
            AND a.query = '<insufficient privilege>'
            AND a.usesysid IS NOT NULL
            -- In a transaction now: it holds its own virtual transaction
            -- id's lock (an idle session holds nothing up).
            AND EXISTS (SELECT 1 FROM pg_catalog.pg_locks v
                         WHERE v.pid = a.pid AND v.locktype = 'virtualxid' AND v.granted)
          ORDER BY locked.pid IS NULL, a.pid"
        ),
        &[&schemas],
        "looking for sessions this role cannot see",
        |r| (r.get(0), r.get(1), r.get(2), r.get(3)),
    )
    .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let holding: Vec<String> = rows
        .iter()
        .filter(|(.., tables)| !tables.is_empty())
        .take(10)
        .map(|(pid, role, app, tables)| {
            let mut tables = tables.clone();
            tables.sort();
            let app = if app.is_empty() {
                String::new()
            } else {
                format!(", {app}")
            };
            format!("pid {pid} ({role}{app}) on {}", tables.join(", "))
        })
        .collect();
    let n = rows.len();
    let locks = if holding.is_empty() {
        String::new()
    } else {
        format!(
            " Holding locks on swapped tables now: {}.",
            holding.join("; ")
        )
    };
    let (sessions, they) = if n == 1 {
        (
            "1 transaction of another role".to_string(),
            ["is", "it has", "it began"],
        )
    } else {
        (
            format!("{n} transactions of other roles"),
            ["are", "they have", "they began"],
        )
    };
    Ok(Some(format!(
        "{sessions} open in this database {} hidden from this role, so how long {} been open (a long one holds the swap up) and whether {} before prepare are not known; grant this role pg_read_all_stats to see them.{locks}",
        they[0], they[1], they[2]
    )))
}

/// The note about transactions that began before `since` (when prepare
/// started: the incoming tables were filled after it) and are still open
/// with a snapshot: one at REPEATABLE READ or SERIALIZABLE keeps that
/// snapshot, in which the rows written since are not there yet, so after
/// the swap it reads the new tables as empty (PostgreSQL's MVCC, as after a
/// TRUNCATE). None when there are none.
pub async fn older_snapshots(
    client: &impl GenericClient,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<Option<String>> {
    let pids: Vec<i32> = crate::pg::exec::query_map(
        client,
        "SELECT a.pid FROM pg_catalog.pg_stat_activity a
              WHERE a.datname = pg_catalog.current_database()
                AND a.pid <> pg_catalog.pg_backend_pid()
                AND a.backend_type = 'client backend'
                AND COALESCE(a.application_name, '') NOT LIKE 'pgshift%'
                AND a.backend_xmin IS NOT NULL
                AND a.xact_start < $1
              ORDER BY a.xact_start, a.pid",
        &[&since],
        "looking for transactions older than prepare",
        |r| r.get(0),
    )
    .await?;
    if pids.is_empty() {
        return Ok(None);
    }
    let shown: Vec<String> = pids.iter().take(10).map(i32::to_string).collect();
    Ok(Some(format!(
        "{} transaction{} that began before prepare {} still open (pid {}{}): one at REPEATABLE READ or SERIALIZABLE keeps its snapshot, which predates the new tables' rows, and reads them as empty after the swap; end {} before the swap",
        pids.len(),
        if pids.len() == 1 { "" } else { "s" },
        if pids.len() == 1 { "is" } else { "are" },
        shown.join(", "),
        if pids.len() > shown.len() {
            ", …"
        } else {
            ""
        },
        if pids.len() == 1 { "it" } else { "them" },
    )))
}
