//! The object-level swap: one short transaction that moves every
//! non-extension object of `public` into a new backup schema and every object
//! of the incoming schema (`shadow`, or a backup for a rollback) into `public`.
//!
//! - ACCESS EXCLUSIVE locks on every affected relation first, in a stable
//!   order, under a short `lock_timeout`; on a lock timeout (or deadlock) the
//!   transaction rolls back and is retried after a jittered backoff, so a
//!   long-running query causes a retry rather than a queue of application
//!   queries piling up behind the swap.
//! - `statement_timeout` and `idle_in_transaction_session_timeout` bound the
//!   transaction even if pgshift stalls.
//! - Work that must happen under the same locks (the preserved tables' final
//!   replay, deferred constraints, the manifest) runs inside it through [`InTx`].
//! - Before COMMIT the result is checked (every expected table in public,
//!   nothing left in the incoming schema, no pgshift trigger left); any
//!   difference rolls the whole thing back: the swap is all or nothing.

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use crate::error::Interrupted;
use crate::pg::exec::{
    PgError, RetryPolicy, Stop, Transient, exec, retry, rollback_on_err, simple,
};
use crate::pg::ident::{quote_ident, quote_literal};
use crate::pg::meta::MARKER;
use crate::pg::objects::{self, Movable};

/// Work done inside the swap transaction, after the locks and before the moves.
pub trait InTx {
    /// Runs on the swap session inside its transaction; must not COMMIT or ROLLBACK.
    fn before_moves(&self, client: &Client) -> impl Future<Output = Result<()>>;
    /// Runs after the moves and the checks, before COMMIT.
    fn after_moves(&self, client: &Client) -> impl Future<Output = Result<()>>;
    /// SQL sent together with COMMIT, in the same round trip (the manifest):
    /// the fewer round trips while the locks are held, the shorter the swap.
    fn commit_sql(&self) -> Result<Option<String>> {
        Ok(None)
    }
}

/// No extra work.
pub struct Nothing;

impl InTx for Nothing {
    async fn before_moves(&self, _client: &Client) -> Result<()> {
        Ok(())
    }
    async fn after_moves(&self, _client: &Client) -> Result<()> {
        Ok(())
    }
}

/// What to swap.
#[derive(Debug, Clone)]
pub struct SwapRequest {
    /// The schema whose objects become public (`shadow`, or `backup_<ts>`).
    pub incoming: String,
    /// The new backup schema for the current public.
    pub backup: String,
    /// Tables of the current public that stay in public; their namesakes in the
    /// incoming schema stay where they are (rollback `--keep-tables`).
    pub keep_in_public: HashSet<String>,
    /// Recreate the incoming schema empty afterwards (shadow), or drop it when
    /// it ends up empty (a backup being restored).
    pub recreate_incoming: bool,
    /// Tables that must be in public after the moves.
    pub expected_tables: Vec<String>,
    pub lock_timeout: Duration,
    pub statement_timeout: Duration,
    pub retries: u32,
}

/// What the swap did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SwapOutcome {
    /// From the first lock request to the end of COMMIT, in milliseconds.
    pub lock_held_ms: u64,
    pub attempts: u32,
    pub moved_out: usize,
    pub moved_in: usize,
    pub locked_relations: usize,
    /// (kind, name) of every object moved into public, for the after-commit check.
    #[serde(skip)]
    pub moved_in_objects: Vec<(String, String)>,
}

/// After the commit: objects in public that the swap did not move there, i.e.
/// created by someone else while the swap waited for its locks (they stayed).
pub async fn strays(client: &Client, outcome: &SwapOutcome) -> Result<Vec<String>> {
    let moved: std::collections::HashSet<&(String, String)> =
        outcome.moved_in_objects.iter().collect();
    Ok(objects::movables(client, "public")
        .await?
        .into_iter()
        .filter(|m| !moved.contains(&(m.kind.clone(), m.name.clone())))
        .map(|m| format!("{} {}", m.kind, m.sql_name))
        .collect())
}

/// The SQL of the swap as it would run now (for `--dry-run`), and the objects.
pub async fn preview(
    client: &Client,
    req: &SwapRequest,
) -> Result<(Vec<String>, Vec<Movable>, Vec<Movable>)> {
    client.batch_execute("SET search_path = ''").await?;
    let out = objects::movables(client, "public").await?;
    let inc = objects::movables(client, &req.incoming).await?;
    client.batch_execute("RESET search_path").await?;
    let (out, inc) = filter_keep(out, inc, &req.keep_in_public);
    let mut sql = vec!["BEGIN".to_string()];
    sql.extend(session_settings(req));
    if let Some(l) = lock_statement(&out, &inc) {
        sql.push(l);
    }
    sql.push(
        "-- preserved tables: final replay, sequences carried over, sync triggers dropped".into(),
    );
    sql.push("-- deferred constraints, triggers and rules of preserved tables".into());
    sql.extend(move_statements(req, &out, &inc));
    sql.push("-- backup manifest written to pgshift.backups".into());
    sql.push("COMMIT".into());
    Ok((sql, out, inc))
}

fn session_settings(req: &SwapRequest) -> Vec<String> {
    vec![
        format!(
            "SET LOCAL lock_timeout = '{}ms'",
            req.lock_timeout.as_millis().max(1)
        ),
        format!(
            "SET LOCAL statement_timeout = '{}ms'",
            req.statement_timeout.as_millis().max(1)
        ),
        format!(
            "SET LOCAL idle_in_transaction_session_timeout = '{}ms'",
            req.statement_timeout.as_millis().clamp(1000, 60_000)
        ),
        "SET LOCAL search_path = ''".to_string(),
    ]
}

fn filter_keep(
    out: Vec<Movable>,
    inc: Vec<Movable>,
    keep: &HashSet<String>,
) -> (Vec<Movable>, Vec<Movable>) {
    let is_kept = |m: &Movable| m.kind == "TABLE" && keep.contains(&m.name);
    (
        out.into_iter().filter(|m| !is_kept(m)).collect(),
        inc.into_iter().filter(|m| !is_kept(m)).collect(),
    )
}

/// One LOCK statement for every lockable relation, in a stable order.
fn lock_statement(out: &[Movable], inc: &[Movable]) -> Option<String> {
    let mut names: Vec<&str> = out
        .iter()
        .chain(inc.iter())
        .filter_map(|m| m.lockable.as_deref())
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return None;
    }
    Some(format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        names.join(", ")
    ))
}

fn move_statements(req: &SwapRequest, out: &[Movable], inc: &[Movable]) -> Vec<String> {
    let mut sql = Vec::with_capacity(out.len() + inc.len() + 4);
    sql.push(format!("CREATE SCHEMA {}", quote_ident(&req.backup)));
    sql.push(format!(
        "COMMENT ON SCHEMA {} IS {}",
        quote_ident(&req.backup),
        quote_literal(&format!("{MARKER} backup of public (managed by pgshift)"))
    ));
    for m in out {
        sql.push(m.set_schema_sql(&req.backup));
    }
    for m in inc {
        sql.push(m.set_schema_sql("public"));
    }
    if req.recreate_incoming {
        sql.push(format!("DROP SCHEMA {}", quote_ident(&req.incoming)));
        sql.push(format!("CREATE SCHEMA {}", quote_ident(&req.incoming)));
        sql.push(format!(
            "COMMENT ON SCHEMA {} IS {}",
            quote_ident(&req.incoming),
            quote_literal(&format!("{MARKER} shadow (empty; managed by pgshift)"))
        ));
    }
    sql
}

/// Run the swap, retrying on lock timeouts and deadlocks. On any failure the
/// transaction is rolled back and the destination is exactly as before.
pub async fn execute<H: InTx>(
    client: &Client,
    req: &SwapRequest,
    hook: &H,
    cancel: &CancellationToken,
) -> Result<SwapOutcome> {
    let attempt = || async { rollback_on_err(client, one_attempt(client, req, hook).await).await };
    match retry(
        "the swap could not take its locks",
        RetryPolicy::new(req.retries),
        Some(cancel),
        attempt,
    )
    .await
    {
        Ok((mut o, attempts)) => {
            o.attempts = attempts;
            Ok(o)
        }
        Err(Stop::Exhausted { attempts, why, .. }) => bail!(
            "the swap could not take its locks after {attempts} attempts ({why}); nothing was changed. A long-running query or transaction on the destination holds a lock on a public table: end it, or raise --lock-timeout / --swap-retries"
        ),
        Err(Stop::Failed(e)) => {
            Err(e.context("the swap was rolled back; the destination is unchanged"))
        }
        Err(Stop::Interrupted) => Err(anyhow::Error::new(Interrupted)),
    }
}

/// The last value of the last row a simple query returned.
fn last_value(msgs: &[tokio_postgres::SimpleQueryMessage]) -> Option<String> {
    msgs.iter().rev().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_string()),
        _ => None,
    })
}

/// An object listed before the locks no longer existed when its ALTER ran.
fn gone_meanwhile(e: &anyhow::Error) -> bool {
    PgError::code_in(e).is_some_and(|code| {
        code == SqlState::UNDEFINED_TABLE
            || code == SqlState::UNDEFINED_OBJECT
            || code == SqlState::UNDEFINED_FUNCTION
    })
}

/// The objects changed between listing them and locking them: list again.
fn changed(incoming: &str) -> anyhow::Error {
    anyhow::Error::new(Transient(format!(
        "objects in public or {incoming} were dropped while the swap waited for its locks"
    )))
}

async fn one_attempt<H: InTx>(client: &Client, req: &SwapRequest, hook: &H) -> Result<SwapOutcome> {
    // Outside the transaction and before any lock: what moves. (Under the locks
    // nothing scans the catalogs: at a thousand tables with PostGIS installed
    // that alone costs over 10 ms of the locked window. An object dropped in
    // between fails its ALTER and the attempt is retried with fresh lists; one
    // created in between stays where it is and is reported after the commit.)
    exec(client, "SET search_path = ''").await?;
    let out = objects::movables(client, "public").await?;
    let inc = objects::movables(client, &req.incoming).await?;
    let (out, inc) = filter_keep(out, inc, &req.keep_in_public);
    let lock = lock_statement(&out, &inc);
    let locked = lock
        .as_ref()
        .map(|l| l.matches(", ").count() + 1)
        .unwrap_or(0);

    // The locked window starts here. Round trip 1: begin, bounds, locks.
    let started = Instant::now();
    let mut first = String::from("BEGIN;\n");
    first.push_str(&session_settings(req).join(";\n"));
    if let Some(l) = &lock {
        first.push_str(";\n");
        first.push_str(l);
    }
    exec(client, &first).await.context("locking the tables")?;
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        relations = locked,
        "swap locks taken"
    );
    hook.before_moves(client).await?;
    // Round trip 2: every move, then one query checking the result.
    let mut moves = move_statements(req, &out, &inc).join(";\n");
    moves.push_str(";\n");
    moves.push_str(&check_sql(req));
    let problems = match simple(client, &moves).await {
        Ok(msgs) => last_value(&msgs).unwrap_or_default(),
        Err(e) if gone_meanwhile(&e) => {
            return Err(changed(&req.incoming));
        }
        Err(e) => return Err(e.context("moving objects")),
    };
    if !problems.is_empty() {
        bail!("{problems}; rolling back");
    }
    hook.after_moves(client).await?;
    crate::migration::session::failpoint("swap-commit").await?;
    // Round trip 3: the manifest and COMMIT.
    let mut last = hook.commit_sql()?.unwrap_or_default();
    if !last.is_empty() && !last.trim_end().ends_with(';') {
        last.push(';');
    }
    last.push_str("\nCOMMIT");
    exec(client, &last).await.context("committing the swap")?;
    let held = started.elapsed().as_millis() as u64;
    exec(client, "RESET search_path").await?;
    Ok(SwapOutcome {
        lock_held_ms: held,
        attempts: 0,
        moved_out: out.len(),
        moved_in: inc.len(),
        locked_relations: locked,
        moved_in_objects: inc
            .iter()
            .map(|m| (m.kind.clone(), m.name.clone()))
            .collect(),
    })
}

/// One query run after the moves, before COMMIT: empty when the expected tables
/// are in public and (for a swap) no pgshift trigger is left on a public
/// table; otherwise what is wrong.
fn check_sql(req: &SwapRequest) -> String {
    let expected = if req.expected_tables.is_empty() {
        "'{}'::text[]".to_string()
    } else {
        format!(
            "ARRAY[{}]::text[]",
            req.expected_tables
                .iter()
                .map(|t| quote_literal(t))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let triggers = if req.recreate_incoming {
        "(SELECT count(*) || ' pgshift triggers are still on public tables' FROM pg_catalog.pg_trigger t
           JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND NOT t.tgisinternal AND t.tgname LIKE 'pgshift\\_%' HAVING count(*) > 0)"
    } else {
        "NULL"
    };
    format!(
        "SELECT concat_ws('; ',
            (SELECT 'after the moves these tables are not in public: ' || string_agg(t, ', ')
               FROM unnest({expected}) t
              WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                                 WHERE n.nspname = 'public' AND c.relname = t AND c.relkind IN ('r', 'p'))
             HAVING count(*) > 0),
            {triggers})"
    )
}
