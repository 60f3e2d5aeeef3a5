//! Running SQL and retrying it: one way for the whole code base.
//!
//! * [`exec`] / [`simple`] run SQL text with the simple protocol and keep the
//!   server's error in the chain (so a retry decision can read its SQLSTATE)
//!   under a readable message (`describe_pg_error`: message, detail, hint).
//! * [`retry`] runs one attempt after another under one policy: an attempt
//!   that failed on a lock timeout (55P03), a deadlock (40P01), a serialization
//!   failure (40001, where the caller's transactions can see one) or a
//!   [`Transient`] condition of the caller's own is retried after a jittered
//!   exponential [`backoff`], up to `retries` times; cancellation (Ctrl-C) is
//!   honoured between attempts when a token is given. Everything else stops at
//!   once. The attempt itself rolls back what it began ([`rollback_on_err`]),
//!   so every retry starts from a clean session.
//!
//! Callers: the swap transaction (swap and rollback), the preserved tables'
//! trigger setup and changelog replay, and the removal of a prepared migration.

use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};
use tokio_util::sync::CancellationToken;

use crate::error::Interrupted;
use crate::pg::conn::connect::describe_pg_error;

/// `SELECT set_config('lock_timeout', …, true)`: at most `max`, and below
/// the server's `deadlock_timeout` (4/5 of it). A transaction of pgshift's
/// that waits for a lock while holding others then gives up before the
/// deadlock detector could act, so an application transaction that comes to
/// wait for it meanwhile is never the one cancelled.
pub fn lock_timeout_under_deadlock_sql(max: Duration) -> String {
    format!(
        "SELECT pg_catalog.set_config('lock_timeout', LEAST({}, GREATEST(1, (SELECT s.setting::bigint * 4 / 5 \
         FROM pg_catalog.pg_settings s WHERE s.name = 'deadlock_timeout')))::text || 'ms', true)",
        max.as_millis().max(1)
    )
}

/// Have the server cancel an autovacuum worker that holds `rel` (quoted,
/// qualified), as it cancels one for any session that waits for it past
/// `deadlock_timeout`: pgshift's own waits on tables the application uses end
/// before that (see [`lock_timeout_under_deadlock_sql`]), so a vacuum of a big
/// table outlasted every retry of a swap. This waits for `rel` alone, in a
/// transaction of its own that holds nothing else, in SHARE UPDATE EXCLUSIVE
/// mode (the application's reads and writes do not conflict with it), for a
/// little longer than `deadlock_timeout`, then rolls back. A vacuum to prevent
/// wraparound is not cancelled; nor is anything when this role may not lock
/// the table. True when a worker held it.
pub async fn nudge_autovacuum(client: &Client, rel: &str) -> bool {
    let held = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
                              JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
                             WHERE a.backend_type = 'autovacuum worker' AND l.granted
                               AND l.locktype = 'relation' AND l.relation = pg_catalog.to_regclass($1))",
            &[&rel],
        )
        .await
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false);
    if !held {
        return false;
    }
    tracing::info!(
        "{rel} is being vacuumed by autovacuum: waiting for it past deadlock_timeout, so that the server cancels the vacuum"
    );
    let wait = past_deadlock_timeout(client, Duration::ZERO).await;
    let sql = format!(
        "BEGIN;
         SET LOCAL lock_timeout = '{}ms';
         LOCK TABLE ONLY {rel} IN SHARE UPDATE EXCLUSIVE MODE;
         ROLLBACK;",
        wait.as_millis()
    );
    if let Err(e) = client.batch_execute(&sql).await {
        let _ = client.batch_execute("ROLLBACK").await;
        tracing::debug!(
            "waiting out the autovacuum of {rel}: {}",
            describe_pg_error(&e)
        );
    }
    true
}

/// A lock wait that outlasts the server's `deadlock_timeout` by a second, or
/// `at_least` when that is more: long enough for the server to cancel an
/// autovacuum that holds the lock (it does for a waiter once its deadlock
/// check runs), for waits no application transaction can queue behind (the
/// counterpart of [`lock_timeout_under_deadlock_sql`]).
pub async fn past_deadlock_timeout(client: &Client, at_least: Duration) -> Duration {
    let deadlock: i64 = client
        .query_one(
            "SELECT s.setting::bigint FROM pg_catalog.pg_settings s WHERE s.name = 'deadlock_timeout'",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(1000);
    at_least.max(Duration::from_millis(deadlock.max(0) as u64 + 1000))
}

/// Run SQL text (one or more statements), keeping the server error in the chain.
pub async fn exec(client: &Client, sql: &str) -> Result<()> {
    client.batch_execute(sql).await.map_err(pg_error)
}

/// [`exec`], with what was being done in front of the server's message.
pub async fn exec_as(client: &Client, sql: &str, what: &str) -> Result<()> {
    client
        .batch_execute(sql)
        .await
        .map_err(|e| pg_error_as(e, what))
}

/// Run SQL text and return its rows as text (simple protocol).
pub async fn simple(client: &Client, sql: &str) -> Result<Vec<SimpleQueryMessage>> {
    client.simple_query(sql).await.map_err(pg_error)
}

/// A failed statement: the readable message (`describe_pg_error`) and the
/// SQLSTATE. It has no `source`, so `{:#}` prints the message once, not the
/// driver's "db error: …" after it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PgError {
    pub message: String,
    pub code: Option<SqlState>,
}

impl PgError {
    /// The SQLSTATE of the first [`PgError`] (or driver error) in a chain.
    pub fn code_in(e: &anyhow::Error) -> Option<SqlState> {
        e.chain().find_map(|c| {
            c.downcast_ref::<PgError>()
                .and_then(|p| p.code.clone())
                .or_else(|| {
                    c.downcast_ref::<tokio_postgres::Error>()
                        .and_then(|p| p.code().cloned())
                })
                .or_else(|| {
                    c.downcast_ref::<HeldUp>()
                        .map(|_| SqlState::LOCK_NOT_AVAILABLE)
                })
        })
    }
}

/// A lock timeout, with the sessions that held the lock
/// ([`naming_lock_holders`]). It reads as the timeout it was, so that an
/// error that names the holders itself does not say so twice; a retry's log
/// line names them ([`RetryPolicy::retryable`]).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HeldUp {
    /// The server's message (`canceling statement due to lock timeout`).
    pub message: String,
    /// `pid 4242 (app, psql, idle in transaction), …`
    pub holders: String,
}

/// `result`, with a lock timeout's holders found (from `holders`, asked only
/// then) and kept as [`HeldUp`], so that a retry's log line names the session
/// to end. Other results (and a timeout whose holders are gone) are returned
/// as they are.
pub async fn naming_lock_holders<T, F>(result: Result<T>, holders: impl FnOnce() -> F) -> Result<T>
where
    F: Future<Output = Vec<String>>,
{
    match result {
        Err(e) if PgError::code_in(&e) == Some(SqlState::LOCK_NOT_AVAILABLE) => {
            let holders = holders().await;
            if holders.is_empty() {
                return Err(e);
            }
            let message = e
                .chain()
                .find_map(|c| c.downcast_ref::<PgError>().map(|p| p.message.clone()))
                .unwrap_or_else(|| e.to_string());
            Err(anyhow::Error::new(HeldUp {
                message,
                holders: holders.join(", "),
            }))
        }
        done => done,
    }
}

/// A server error as an anyhow error: readable message, SQLSTATE kept.
pub fn pg_error(e: tokio_postgres::Error) -> anyhow::Error {
    anyhow::Error::new(PgError {
        message: describe_pg_error(&e),
        code: e.code().cloned(),
    })
}

/// [`pg_error`] with `what: ` in front of the message.
pub fn pg_error_as(e: tokio_postgres::Error, what: &str) -> anyhow::Error {
    anyhow::Error::new(PgError {
        message: format!("{what}: {}", describe_pg_error(&e)),
        code: e.code().cloned(),
    })
}

/// The first column of every row a query returns.
pub async fn column<T>(
    client: &impl tokio_postgres::GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<T>>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    let rows = client.query(sql, params).await.map_err(pg_error)?;
    rows.iter()
        .map(|r| r.try_get(0).map_err(pg_error))
        .collect()
}

/// Every row a query returns, through `f`, collected; a failure reads
/// `what: <the server's message>` (SQLSTATE kept).
pub async fn query_map<T, C>(
    client: &impl tokio_postgres::GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    what: &str,
    f: impl FnMut(tokio_postgres::Row) -> T,
) -> Result<C>
where
    C: FromIterator<T>,
{
    let rows = client
        .query(sql, params)
        .await
        .map_err(|e| pg_error_as(e, what))?;
    Ok(rows.into_iter().map(f).collect())
}

/// Roll the session back when `result` is an error (best effort: the session
/// may be the thing that failed), then hand the result on.
pub async fn rollback_on_err<T>(client: &Client, result: Result<T>) -> Result<T> {
    if result.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

/// A condition of the caller's own that is worth another attempt (e.g. the
/// objects to move changed between listing and locking them).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Transient(pub String);

/// How [`retry`] retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub retries: u32,
    /// Also retry serialization failures (REPEATABLE READ / SERIALIZABLE work).
    pub serialization_failures: bool,
}

impl RetryPolicy {
    pub fn new(retries: u32) -> RetryPolicy {
        RetryPolicy {
            retries,
            serialization_failures: false,
        }
    }

    pub fn with_serialization_failures(mut self) -> RetryPolicy {
        self.serialization_failures = true;
        self
    }

    /// Why `e` is worth another attempt under this policy, or None.
    pub fn retryable(&self, e: &anyhow::Error) -> Option<String> {
        if let Some(t) = e.chain().find_map(|c| c.downcast_ref::<Transient>()) {
            return Some(t.0.clone());
        }
        if let Some(h) = e.chain().find_map(|c| c.downcast_ref::<HeldUp>()) {
            return Some(format!("held up by {}", h.holders));
        }
        let code = PgError::code_in(e)?;
        let retry = code == SqlState::LOCK_NOT_AVAILABLE
            || code == SqlState::T_R_DEADLOCK_DETECTED
            || (self.serialization_failures && code == SqlState::T_R_SERIALIZATION_FAILURE);
        retry.then(|| {
            e.chain()
                .find_map(|c| c.downcast_ref::<PgError>().map(|p| p.message.clone()))
                .unwrap_or_else(|| e.to_string())
        })
    }
}

/// Why [`retry`] stopped without a result.
#[derive(Debug)]
pub enum Stop {
    /// Every attempt hit a retryable condition; `why` is the last one.
    Exhausted {
        attempts: u32,
        why: String,
        error: anyhow::Error,
    },
    /// An error that is not worth retrying.
    Failed(anyhow::Error),
    /// Cancelled between attempts.
    Interrupted,
}

impl Stop {
    /// The error to report: the last attempt's (exhausted or failed), or
    /// [`Interrupted`].
    pub fn into_error(self) -> anyhow::Error {
        match self {
            Stop::Exhausted { error, .. } | Stop::Failed(error) => error,
            Stop::Interrupted => anyhow::Error::new(Interrupted),
        }
    }
}

/// Run `attempt` until it succeeds, fails for good, or the retries are spent.
/// `what` names the work in the log line written before each retry; `cancel`,
/// when given, stops the waiting between attempts (not a running attempt).
/// Returns the result and the number of attempts made.
pub async fn retry<T, F, Fut>(
    what: &str,
    policy: RetryPolicy,
    cancel: Option<&CancellationToken>,
    mut attempt: F,
) -> std::result::Result<(T, u32), Stop>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut n = 0u32;
    loop {
        n += 1;
        if cancel.is_some_and(|c| c.is_cancelled()) {
            return Err(Stop::Interrupted);
        }
        let e = match attempt().await {
            Ok(v) => return Ok((v, n)),
            Err(e) => e,
        };
        let Some(why) = policy.retryable(&e) else {
            return Err(Stop::Failed(e));
        };
        // Interrupted during the attempt (its wait ran to its timeout): no
        // "retrying" after "stopping cleanly".
        if cancel.is_some_and(|c| c.is_cancelled()) {
            return Err(Stop::Interrupted);
        }
        if n > policy.retries {
            return Err(Stop::Exhausted {
                attempts: n,
                why,
                error: e,
            });
        }
        let wait = backoff(n);
        tracing::warn!(
            attempt = n,
            retries = policy.retries,
            "{what}: {why}; rolled back, retrying in {} ms",
            wait.as_millis()
        );
        match cancel {
            Some(c) => tokio::select! {
                _ = c.cancelled() => return Err(Stop::Interrupted),
                _ = tokio::time::sleep(wait) => {}
            },
            None => tokio::time::sleep(wait).await,
        }
    }
}

/// Jittered exponential backoff for retry `attempt` (1-based): ~100 ms, 200 ms,
/// 400 ms ... capped at 5 s, each ±50%.
pub fn backoff(attempt: u32) -> Duration {
    let base = 100u64
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(6))
        .min(5000);
    let jitter = rand::random::<f64>() + 0.5;
    Duration::from_millis((base as f64 * jitter) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for a in 1..20 {
            let d = backoff(a).as_millis();
            assert!((50..=7500).contains(&d), "{a}: {d}");
        }
        assert!(backoff(1).as_millis() <= 150);
    }

    /// Retry an operation that always fails with `error()`: how often it ran,
    /// and how the retry stopped.
    async fn always_failing(policy: RetryPolicy, error: fn() -> anyhow::Error) -> (u32, Stop) {
        let mut calls = 0;
        let r: std::result::Result<((), u32), Stop> = retry("test", policy, None, || {
            calls += 1;
            let e = error();
            async move { Err(e) }
        })
        .await;
        (calls, r.unwrap_err())
    }

    #[tokio::test]
    async fn retries_transient_errors_then_gives_up() {
        let policy = RetryPolicy::new(2);
        let (calls, r) = always_failing(policy, || Transient("busy".into()).into()).await;
        assert_eq!(calls, 3);
        match r {
            Stop::Exhausted { attempts, why, .. } => {
                assert_eq!(attempts, 3);
                assert_eq!(why, "busy");
            }
            other => panic!("{other:?}"),
        }
        let mut calls = 0;
        let r = retry("test", policy, None, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 2 {
                    Err(anyhow::Error::new(Transient("busy".into())))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), (2, 2));
    }

    #[tokio::test]
    async fn other_errors_and_cancellation_stop_at_once() {
        let policy = RetryPolicy::new(5);
        let (calls, r) = always_failing(policy, || anyhow::anyhow!("syntax error")).await;
        assert_eq!(calls, 1);
        assert!(matches!(r, Stop::Failed(_)));
        let cancel = CancellationToken::new();
        cancel.cancel();
        let r: std::result::Result<((), u32), Stop> =
            retry("test", policy, Some(&cancel), || async { Ok(()) }).await;
        assert!(matches!(r, Err(Stop::Interrupted)));
        assert!(
            crate::error::exit_code_for(&Stop::Interrupted.into_error())
                == crate::error::ExitCode::Interrupted
        );
    }
}
