//! Connecting: retry while the server is not up yet, one clear line when it fails.
//!
//! Errors read `cannot connect to destination postgresql://app:***@db:5432/shop:
//! password authentication failed for user "app"`: which side, the redacted URL, and
//! the innermost cause (tokio-postgres' own text is often just "error connecting to
//! server").

use std::error::Error as StdError;
use std::io;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use itertools::Itertools;
use tokio_postgres::error::{DbError, SqlState};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};

use super::connspec::{ConnSpec, Endpoint, Host, TargetSessionAttrs};
use super::tls::{describe_rustls_error, make_tls};

/// Every connection's task, so that the process lets each one end cleanly before
/// it exits ([`close_connections`]).
static CONNECTIONS: std::sync::LazyLock<tokio_util::task::TaskTracker> =
    std::sync::LazyLock::new(tokio_util::task::TaskTracker::new);

/// Drive `connection` on the runtime until its clients are gone, when it sends
/// `Terminate` and closes; tracked for [`close_connections`].
fn spawn_connection<F>(connection: F, side: String) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    CONNECTIONS.spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(
                "{side} connection ended with an error: {}",
                describe_pg_error(&e)
            );
        }
    })
}

/// Let every connection whose clients are gone end cleanly (`Terminate`, then
/// the socket closed), waiting at most `within`. A runtime shut down under
/// them drops them mid-stream instead, and the server logs "could not receive
/// data from client: Connection reset by peer" or "unexpected EOF" for each:
/// lines operators are taught to look into.
pub async fn close_connections(within: Duration) {
    CONNECTIONS.close();
    if tokio::time::timeout(within, CONNECTIONS.wait())
        .await
        .is_err()
    {
        tracing::debug!(open = CONNECTIONS.len(), "connections still open at exit");
    }
}

type Connection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <RustlsMake as MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

/// `MakeRustlsConnect` that remembers whether a TLS session was started:
/// tokio-postgres starts one only when the server answers the SSLRequest with
/// yes, and does not say afterwards whether it did. One per attempt.
#[derive(Clone)]
struct WatchedTls {
    inner: tokio_postgres_rustls::MakeRustlsConnect,
    started: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

type RustlsMake = tokio_postgres_rustls::MakeRustlsConnect;
type RustlsConnect = <RustlsMake as MakeTlsConnect<tokio_postgres::Socket>>::TlsConnect;

impl WatchedTls {
    fn new(inner: &RustlsMake) -> Self {
        WatchedTls {
            inner: inner.clone(),
            started: Default::default(),
        }
    }

    fn started(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::Relaxed)
    }
}

struct WatchedConnect {
    inner: RustlsConnect,
    started: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl MakeTlsConnect<tokio_postgres::Socket> for WatchedTls {
    type Stream = <RustlsMake as MakeTlsConnect<tokio_postgres::Socket>>::Stream;
    type TlsConnect = WatchedConnect;
    type Error = <RustlsMake as MakeTlsConnect<tokio_postgres::Socket>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<WatchedConnect, Self::Error> {
        Ok(WatchedConnect {
            inner: <RustlsMake as MakeTlsConnect<tokio_postgres::Socket>>::make_tls_connect(
                &mut self.inner,
                domain,
            )?,
            started: self.started.clone(),
        })
    }
}

impl TlsConnect<tokio_postgres::Socket> for WatchedConnect {
    type Stream = <RustlsConnect as TlsConnect<tokio_postgres::Socket>>::Stream;
    type Error = <RustlsConnect as TlsConnect<tokio_postgres::Socket>>::Error;
    type Future = <RustlsConnect as TlsConnect<tokio_postgres::Socket>>::Future;

    fn connect(self, stream: tokio_postgres::Socket) -> Self::Future {
        self.started
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.inner.connect(stream)
    }
}

/// Why `sslmode=prefer` asks again without TLS.
#[derive(Clone, Copy)]
enum PlainRetry {
    /// The TLS handshake failed (a certificate the root certificates do not
    /// vouch for, say).
    Handshake,
    /// The server refused the login it was asked for over TLS (a `hostssl …
    /// reject` line, only `hostnossl` lines, a password line for TLS only):
    /// libpq asks again without TLS on any error before the login is
    /// accepted. Only the authentication class (28) is taken as such; an
    /// error after the login (no such database) is not asked again, by libpq
    /// either.
    RefusedOverTls,
}

/// One connection attempt as libpq makes it. With `sslmode=prefer` (the
/// default) a TLS handshake that fails, on a certificate the root certificates
/// do not vouch for say, or a server that refuses the login over TLS, is
/// followed by one attempt without TLS, as libpq (and so pg_dump) does; the
/// first such fallback of a run is logged as a warning. A server that declined
/// TLS is not asked twice: its refusal stands. If the attempt without TLS fails
/// too, the server's refusal of it is reported (a wrong password behind an
/// untrusted certificate), or the first error when the server refuses sessions
/// without TLS. A TLS error after the handshake is no reason to, for libpq
/// either: in TLS 1.3 a server that rejects the client's certificate says so
/// after the client has finished its handshake, and pg_dump then fails
/// ("tlsv1 alert unknown ca") where a fallback would have let pgshift's own
/// sessions in.
async fn connect_as_libpq(
    config: &tokio_postgres::Config,
    tls: &RustlsMake,
) -> Result<(tokio_postgres::Client, Connection), tokio_postgres::Error> {
    use tokio_postgres::config::SslMode;
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let watched = WatchedTls::new(tls);
    let prefer = config.get_ssl_mode() == SslMode::Prefer;
    let (first_error, why) = match config.connect(watched.clone()).await {
        Err(e) if prefer && is_handshake_failure(&e) => (e, PlainRetry::Handshake),
        Err(e)
            if prefer
                && watched.started()
                && e.code().is_some_and(|c| c.code().starts_with("28")) =>
        {
            (e, PlainRetry::RefusedOverTls)
        }
        other => return other,
    };
    let mut plain = config.clone();
    plain.ssl_mode(SslMode::Disable);
    match plain.connect(WatchedTls::new(tls)).await {
        Ok(connected) => {
            let text = describe_pg_error(&first_error);
            let what = match why {
                PlainRetry::Handshake => "the TLS handshake failed",
                PlainRetry::RefusedOverTls => "the server refused the login over TLS",
            };
            if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::debug!("sslmode=prefer: connected without TLS ({what}: {text})");
            } else {
                tracing::warn!(
                    "sslmode=prefer: {what} ({text}); connected without TLS, as libpq does (sslmode=require or stricter refuses that)"
                );
            }
            Ok(connected)
        }
        Err(e) => {
            // libpq reports both; one line says the one to act on: the
            // server's refusal of the plain session (a wrong password, no
            // such database), unless what it refuses is a session without
            // TLS (no pg_hba line for it, 28000): then the first attempt's.
            let refused_plain = e
                .as_db_error()
                .is_some_and(|d| *d.code() != SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
            let (said, other) = if refused_plain {
                (e, first_error)
            } else {
                (first_error, e)
            };
            tracing::debug!(
                "sslmode=prefer: with TLS and without, both failed; the other error: {}",
                describe_pg_error(&other)
            );
            Err(said)
        }
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The shortest bound of one connection attempt (libpq's connect_timeout
/// minimum).
const MIN_ATTEMPT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Connect to `spec` (`label` is "source" or "destination"), with `application_name`
/// `app_name` (unless empty). Transient failures (refused, reset, server starting up or
/// shutting down, too many connections) are retried with a short backoff until
/// `retry_for` has passed; authentication, missing database and TLS errors are not.
/// The connection task is spawned on the current tokio runtime.
pub async fn connect(
    spec: &ConnSpec,
    label: &str,
    app_name: &str,
    retry_for: Duration,
) -> anyhow::Result<tokio_postgres::Client> {
    Ok(connect_pinned(spec, label, app_name, retry_for).await?.0)
}

/// The server's role as `target_session_attrs` `primary`, `standby` and
/// `prefer-standby` ask for it, which libpq reads from `pg_is_in_recovery()`
/// (tokio-postgres only knows `read-write` and `read-only`, which read
/// `transaction_read_only`: a primary whose default is read-only is no
/// standby).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    /// Whatever tokio-postgres checks (any, read-write, read-only).
    AsConfigured,
    Primary,
    Standby,
    PreferStandby,
}

impl Wanted {
    fn of(spec: &ConnSpec) -> Wanted {
        match spec.target_session_attrs() {
            TargetSessionAttrs::Primary => Wanted::Primary,
            TargetSessionAttrs::Standby => Wanted::Standby,
            TargetSessionAttrs::PreferStandby => Wanted::PreferStandby,
            _ => Wanted::AsConfigured,
        }
    }
}

/// [`connect`], also returning `spec` pinned to the host the session is on
/// ([`ConnSpec::pinned`]). Hosts are tried in order, as libpq does (a host
/// that answers and refuses the login, or has no such database, ends the
/// search: the next host is tried only after a connection failure or a
/// server not accepting connections yet), with
/// `target_session_attrs` as libpq means it: `primary` skips servers in
/// recovery, `standby` skips the others, `prefer-standby` takes the first
/// standby, else the first server.
pub async fn connect_pinned(
    spec: &ConnSpec,
    label: &str,
    app_name: &str,
    retry_for: Duration,
) -> anyhow::Result<(tokio_postgres::Client, ConnSpec)> {
    let tls = make_tls(spec).map_err(|e| anyhow!("cannot connect to {label} {spec}: {e}"))?;
    let wanted = Wanted::of(spec);
    let deadline = Instant::now() + retry_for;
    // One attempt, TCP to authenticated session, ends after the string's
    // connect_timeout (libpq's bound per host), else after --connect-timeout:
    // a server (or a proxy) that accepts the connection and never answers
    // must not hang the run.
    let bound = spec.connect_timeout().unwrap_or(retry_for).max(MIN_ATTEMPT);
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let mut failures: Vec<(&Endpoint, tokio_postgres::Error)> = Vec::new();
        let mut timed_out: Vec<&Endpoint> = Vec::new();
        // Servers that answered but are not what target_session_attrs asks for.
        let mut unwanted: Vec<(&Endpoint, String)> = Vec::new();
        // prefer-standby: the first server that is not one, if no standby answers.
        let mut fallback: Option<(tokio_postgres::Client, usize, tokio_postgres::Config)> = None;
        for (i, endpoint) in spec.hosts().iter().enumerate() {
            let mut config = spec.pg_config_for_host(i);
            if !app_name.is_empty() {
                config.application_name(app_name);
            }
            if wanted != Wanted::AsConfigured {
                config.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::Any);
            }
            let Ok(result) = tokio::time::timeout(bound, connect_as_libpq(&config, &tls)).await
            else {
                timed_out.push(endpoint);
                continue;
            };
            match result {
                Ok((client, connection)) => {
                    spawn_connection(connection, label.to_string());
                    if wanted != Wanted::AsConfigured {
                        let standby: bool = match client
                            .query_one("SELECT pg_catalog.pg_is_in_recovery()", &[])
                            .await
                        {
                            Ok(row) => row.get(0),
                            Err(e) => {
                                failures.push((endpoint, e));
                                continue;
                            }
                        };
                        match (wanted, standby) {
                            (Wanted::Primary, true) => {
                                unwanted.push((endpoint, "server is in hot standby mode".into()));
                                continue;
                            }
                            (Wanted::Standby, false) => {
                                unwanted
                                    .push((endpoint, "server is not in hot standby mode".into()));
                                continue;
                            }
                            (Wanted::PreferStandby, false) => {
                                if fallback.is_none() {
                                    fallback = Some((client, i, config.clone()));
                                }
                                continue;
                            }
                            _ => {}
                        }
                    }
                    if attempt > 1 {
                        tracing::info!("connected to {label} {spec} after {attempt} attempts");
                    }
                    refuse_transaction_pooling(&client, &config, &tls, label, spec, i).await?;
                    session_defaults(&client, label).await;
                    return Ok((client, spec.pinned(i)));
                }
                Err(e) => {
                    // As libpq: a server that answered and refused (the
                    // login failed or asked for a password none was given
                    // for, no such database, the TLS checks failed) ends the
                    // search; the next host is tried after a connection
                    // failure or a server not accepting connections yet
                    // (57P03) only.
                    let refused = refused_the_login(&e) || is_tls_failure(&e);
                    failures.push((endpoint, e));
                    if refused {
                        break;
                    }
                }
            }
        }
        if let Some((client, i, config)) = fallback {
            refuse_transaction_pooling(&client, &config, &tls, label, spec, i).await?;
            session_defaults(&client, label).await;
            return Ok((client, spec.pinned(i)));
        }
        // A server that did not answer in time is not waited for again, nor
        // one that is not what target_session_attrs asks for (as libpq).
        let transient = timed_out.is_empty()
            && unwanted.is_empty()
            && failures.iter().all(|(_, e)| is_transient(e));
        let now = Instant::now();
        if !transient || now + backoff > deadline {
            let silent = |ep: &Endpoint| {
                format!(
                    "timeout expired: no answer within {bound:?} (is {} a PostgreSQL server, and is it responding?)",
                    ep.describe()
                )
            };
            let mut texts: Vec<(&Endpoint, String)> = failures
                .iter()
                .map(|(ep, e)| (*ep, describe_attempt(ep, e)))
                .chain(timed_out.iter().map(|ep| (*ep, silent(ep))))
                .chain(unwanted.iter().map(|(ep, t)| {
                    (
                        *ep,
                        format!(
                            "{t} (target_session_attrs={})",
                            spec.target_session_attrs().as_str()
                        ),
                    )
                }))
                .collect();
            let text = if texts.len() == 1 {
                texts.pop().expect("one").1
            } else {
                texts
                    .iter()
                    .map(|(ep, t)| format!("{}: {t}", ep.describe()))
                    .join("; ")
            };
            return Err(anyhow!("cannot connect to {label} {spec}: {text}"));
        }
        let Some((ep, e)) = failures.last() else {
            unreachable!("a transient round has a failure")
        };
        if attempt == 1 {
            // debug, not info: an unreachable server is reported once, by the error.
            tracing::debug!(
                "waiting for {label} {spec}: {} (retrying for up to {:?})",
                describe_attempt(ep, e),
                retry_for
            );
        } else {
            tracing::debug!(
                "{label} attempt {attempt} failed: {}",
                describe_attempt(ep, e)
            );
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// How long the pooler check waits for its first session's answer while a
/// second session holds a transaction open: a server answers
/// `SELECT pg_backend_pid()` at once; a pooler in transaction mode with one
/// server connection makes it wait for that transaction.
const POOLER_CHECK_WAIT: Duration = Duration::from_secs(10);
/// How long the pooler check's second session may take to get its
/// transaction going: behind a pooler in session mode with no server session
/// to spare it never does, and the check concludes nothing.
const POOLER_SECOND_WAIT: Duration = Duration::from_secs(3);

/// The servers (endpoint, database, role) this process has checked for a
/// pooler in transaction mode: the first session of a run to each is checked,
/// the others are not.
static POOLER_CHECKED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Refuse a server reached through a pooler in transaction mode (PgBouncer
/// `pool_mode = transaction`, proxies that multiplex sessions), before this
/// first session of the run sets anything. Such a pooler hands each
/// transaction whatever server session is free: pgshift's session-level
/// settings (`row_security = off` among them) and its advisory run lock
/// would stay on server sessions the pooler then gives the application, and
/// pgshift's own statements would fail mid-run (`prepared statement "s103"
/// does not exist`), or, worse, a run would succeed and leave the lock held.
///
/// The check: this session asks for its server's process id; a second
/// session opens a transaction (which a pooler pins to one server session)
/// and asks too; this session asks again. A server, or a pooler in session
/// mode, gives two sessions two process ids and one session the same one
/// twice. A pooler in transaction mode gives the second session the first
/// one's (it is idle, and PgBouncer reuses the last one freed), then the
/// first session another, or keeps the first waiting when it has no other;
/// the first asks up to three times, for a pooler that hands out server
/// sessions round-robin. A pooler in statement mode refuses the
/// transaction, which no server does. Nothing here writes or sets anything;
/// the second session only reads. When the second session cannot be opened
/// (no slot left), or gets no server session within a few seconds (a pooler
/// in session mode with none to spare), nothing is concluded.
async fn refuse_transaction_pooling(
    client: &tokio_postgres::Client,
    config: &tokio_postgres::Config,
    tls: &tokio_postgres_rustls::MakeRustlsConnect,
    label: &str,
    spec: &ConnSpec,
    host: usize,
) -> anyhow::Result<()> {
    let key = format!(
        "{} {} {}",
        spec.hosts()[host].describe(),
        spec.dbname(),
        spec.user()
    );
    {
        let mut checked = POOLER_CHECKED.lock().unwrap_or_else(|p| p.into_inner());
        if checked.contains(&key) {
            return Ok(());
        }
        checked.push(key);
    }
    let first = match backend_pid(client).await {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!("{label}: pooler check: {}", describe_pg_error(&e));
            return Ok(());
        }
    };
    let second = match tokio::time::timeout(MIN_ATTEMPT * 5, connect_as_libpq(config, tls)).await {
        Ok(Ok((c, connection))) => {
            spawn_connection(connection, label.to_string());
            c
        }
        Ok(Err(e)) => {
            tracing::debug!(
                "{label}: pooler check: a second session: {}",
                describe_pg_error(&e)
            );
            return Ok(());
        }
        Err(_) => {
            tracing::debug!("{label}: pooler check: a second session did not connect in time");
            return Ok(());
        }
    };
    // Bounded: behind a pooler in session mode whose server sessions are
    // all taken (one, held by the first session), the second session's
    // statement waits for one that never frees up; nothing is concluded.
    let pinned = tokio::time::timeout(POOLER_SECOND_WAIT, async {
        second.batch_execute("BEGIN").await?;
        backend_pid(&second).await
    })
    .await;
    let pinned = match pinned {
        Ok(Ok(p)) => p,
        // No server refuses BEGIN: a pooler in statement mode does (PgBouncer:
        // "transaction blocks not allowed in statement pooling mode"). Its
        // other errors (a wait for a server session that timed out) tell
        // nothing.
        Ok(Err(e))
            if e.as_db_error().is_some_and(|d| {
                let m = d.message().to_lowercase();
                m.contains("pooling mode") || m.contains("statement mode")
            }) =>
        {
            return Err(pooled(
                label,
                spec,
                "statement",
                &format!("a transaction was refused: {}", describe_pg_error(&e)),
            ));
        }
        Ok(Err(e)) => {
            tracing::debug!("{label}: pooler check: {}", describe_pg_error(&e));
            return Ok(());
        }
        Err(_) => {
            tracing::debug!(
                "{label}: pooler check: a second session got no server session in time"
            );
            return Ok(());
        }
    };
    // While the second session holds its server session: a pooler in
    // transaction mode serves the first one's statements from the others
    // (round-robin ones even when the last one freed is free again).
    let mut evidence = (pinned == first).then(|| {
        format!(
            "a second session of pgshift's was given the first one's server session (pid {first})"
        )
    });
    for _ in 0..3 {
        if evidence.is_some() {
            break;
        }
        match tokio::time::timeout(POOLER_CHECK_WAIT, backend_pid(client)).await {
            Ok(Ok(p)) if p != first => {
                evidence = Some(format!(
                    "one session of pgshift's was served by server session pid {first}, then by pid {p}"
                ));
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                evidence = Some(format!(
                    "a session of pgshift's got no answer to SELECT pg_backend_pid() for {}s while another held a transaction open",
                    POOLER_CHECK_WAIT.as_secs()
                ));
            }
        }
    }
    let _ = second.batch_execute("ROLLBACK").await;
    drop(second);
    let Some(evidence) = evidence else {
        return Ok(());
    };
    Err(pooled(label, spec, "transaction", &evidence))
}

/// The refusal of a server reached through a pooler that multiplexes sessions.
fn pooled(label: &str, spec: &ConnSpec, mode: &str, evidence: &str) -> anyhow::Error {
    crate::error::UserError::new(format!(
        "the {label} {spec} is reached through a connection pooler in {mode} mode ({evidence}): pgshift's sessions keep a lock and settings from one statement to the next, which such a pooler hands to other clients; connect pgshift directly to the server, or through session pooling (the application can stay on its pooler); nothing was changed"
    ))
    .into()
}

/// The server process serving `client` now (simple protocol: no statement is
/// prepared, which a pooler in transaction mode could lose).
async fn backend_pid(client: &tokio_postgres::Client) -> Result<i32, tokio_postgres::Error> {
    let msgs = client
        .simple_query("SELECT pg_catalog.pg_backend_pid()")
        .await?;
    Ok(msgs
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .unwrap_or(0))
}

/// Session settings of every pgshift session, as SETs (not startup options:
/// poolers refuse unknown startup parameters).
///
/// - `row_security = off`, as pg_dump sets it: a read that row-level security
///   would filter fails instead of copying, replaying or counting fewer rows
///   (prepare refuses such source tables up front,
///   `preflight::refuse_row_security`; the swap refuses such preserved tables,
///   `sync::hidden_rows`; counts of such tables are not taken,
///   `manifest::count_rows`). The impact report's probes run with it on, as
///   the application's statements do.
/// - `quote_all_identifiers = off`: names pgshift reads back from the catalog
///   as text are compared and printed as PostgreSQL writes them by default.
/// - `jit = off`: pgshift's own queries read the catalogs; on a large one their
///   cost estimates pass jit_above_cost and compiling them takes seconds (3.4 s
///   instead of 80 ms for cleanup's drop planning on 600 tables).
/// - The timeouts a role or database may set for its applications
///   (`statement_timeout`, `idle_in_transaction_session_timeout`,
///   `idle_session_timeout` 14+, `transaction_timeout` 17+) are 0, as pg_dump
///   sets them for itself: they would cancel a long copy, end the source's
///   snapshot session while the copies run, or drop the control session that
///   holds the run lock. pgshift bounds its own waits where they matter
///   (`SET LOCAL` in the swap, the impact check, the DDL retries).
///
/// - `default_transaction_isolation = 'read committed'` (and not deferrable):
///   pgshift's transactions are written for it and ask for `repeatable read`
///   where they need a snapshot (the source's). Under a database's
///   `repeatable read` or `serializable` default the swap's replay met the
///   application's writes to the same rows and failed (could not serialize
///   access), every time under load, and its reads took part in the
///   application's serialization conflicts.
///
/// The first statement is a plain `SET statement_timeout = 0` (microseconds),
/// retried if a short `statement_timeout` still cancels it on a loaded
/// server; only then the slower lookup of the settings that depend on the
/// server's version.
pub async fn session_defaults(client: &tokio_postgres::Client, label: &str) {
    // `quote_all_identifiers` set for a database or role would quote every
    // name pgshift reads back as text from the catalog (`"array_recv"` is
    // not `array_recv`: an enum array went to binary COPY and failed).
    const FIRST: &str = "SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0; SET jit = off; SET quote_all_identifiers = off; SET row_security = off; SET default_transaction_isolation = 'read committed'; SET default_transaction_deferrable = off";
    for attempt in 1..=5 {
        match client.batch_execute(FIRST).await {
            Ok(()) => break,
            Err(e) if e.code() == Some(&SqlState::QUERY_CANCELED) && attempt < 5 => continue,
            Err(e) => {
                tracing::debug!("{label}: resetting timeouts: {}", describe_pg_error(&e));
                break;
            }
        }
    }
    if let Err(e) = client
        .batch_execute(
            "SELECT pg_catalog.set_config(name, '0', false) FROM pg_catalog.pg_settings
              WHERE name IN ('idle_session_timeout', 'transaction_timeout')",
        )
        .await
    {
        tracing::debug!("{label}: resetting timeouts: {}", describe_pg_error(&e));
    }
    // A session whose pgshift is gone (killed, or stopped while this session
    // waits on a lock) ends when the server next checks, not once the wait
    // is over: it would otherwise hold its locks, and its queue place, for as
    // long. From PostgreSQL 14 on, and where the server's platform has it.
    // An idle one (the run lock's) whose pgshift is cut off by the network
    // ends when the server's keepalives give up: within about a minute, as
    // pgshift's own side does, not the system's two hours (TCP only; the
    // server ignores them on a Unix socket).
    if let Err(e) = client
        .batch_execute(&format!(
            "SELECT pg_catalog.set_config(name,
                      CASE name WHEN 'client_connection_check_interval' THEN '{CLIENT_CHECK_MS}'
                                WHEN 'tcp_keepalives_idle' THEN '30'
                                WHEN 'tcp_keepalives_interval' THEN '10'
                                WHEN 'tcp_keepalives_count' THEN '3'
                                ELSE '60000' END, false)
               FROM pg_catalog.pg_settings
              WHERE name IN ('client_connection_check_interval', 'tcp_keepalives_idle',
                             'tcp_keepalives_interval', 'tcp_keepalives_count', 'tcp_user_timeout')"
        ))
        .await
    {
        tracing::debug!(
            "{label}: client connection checks: {}",
            describe_pg_error(&e)
        );
    }
}

/// `client_connection_check_interval` for pgshift's sessions and pg_dump's (ms).
pub const CLIENT_CHECK_MS: u32 = 2000;

/// What went wrong, in one line: the server's message (with DETAIL and HINT) for
/// errors from the server, else the innermost cause in plain words. Never contains
/// a password (tokio-postgres errors never carry one).
pub fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return describe_db_error(db);
    }
    let kind = e.to_string();
    let tls = is_handshake_failure(e);
    let cause = match e.source() {
        Some(source) => describe_cause(source),
        None => match kind.as_str() {
            "connection closed" => "the server closed the connection unexpectedly".to_string(),
            _ => kind.clone(),
        },
    };
    match kind.as_str() {
        _ if tls => format!("TLS: {cause}"),
        "authentication error" => format!("authentication failed: {cause}"),
        _ if password_missing(e) => {
            "the server asks for a password and none was given (set it in the URL, PGPASSWORD or ~/.pgpass)"
                .to_string()
        }
        "timeout waiting for server" => "timed out waiting for the server".to_string(),
        _ => cause,
    }
}

fn describe_db_error(db: &DbError) -> String {
    describe_fields(db.message(), db.detail(), db.hint())
}

/// A server error's message, detail and hint on one line.
pub fn describe_fields(message: &str, detail: Option<&str>, hint: Option<&str>) -> String {
    let mut s = message.to_string();
    if let Some(d) = detail {
        s.push_str("; DETAIL: ");
        s.push_str(d);
    }
    if let Some(h) = hint {
        s.push_str("; HINT: ");
        s.push_str(h);
    }
    s.replace('\n', " ")
}

/// The innermost cause of an error chain, looking inside `io::Error`s (whose `source()`
/// skips the wrapped error).
fn describe_cause(e: &(dyn StdError + 'static)) -> String {
    if let Some(db) = e.downcast_ref::<DbError>() {
        return describe_db_error(db);
    }
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return describe_rustls_error(r);
    }
    if let Some(io) = e.downcast_ref::<io::Error>() {
        if let Some(inner) = io.get_ref() {
            return describe_cause(inner);
        }
        return describe_io(io);
    }
    match e.source() {
        Some(inner) => describe_cause(inner),
        None => e.to_string(),
    }
}

fn describe_io(e: &io::Error) -> String {
    use io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".to_string(),
        K::ConnectionReset => "connection reset by the server".to_string(),
        K::ConnectionAborted => "connection aborted".to_string(),
        K::TimedOut => "timed out".to_string(),
        K::NotFound => "no such file or directory".to_string(),
        K::PermissionDenied => "permission denied".to_string(),
        K::UnexpectedEof => "the server closed the connection unexpectedly".to_string(),
        K::BrokenPipe => "the server closed the connection (broken pipe)".to_string(),
        _ => {
            let s = e.to_string();
            // "Connection refused (os error 111)" -> "Connection refused"
            match s.find(" (os error ") {
                Some(i) => s[..i].to_string(),
                None => s,
            }
        }
    }
}

/// [`describe_pg_error`] plus a hint naming the address when nothing answered there.
fn describe_attempt(ep: &Endpoint, e: &tokio_postgres::Error) -> String {
    let text = describe_pg_error(e);
    // Bytes that are not PostgreSQL's protocol (a web server on the port).
    let garbled = matches!(
        e.to_string().as_str(),
        "error parsing response from server" | "unexpected message from server"
    ) || text == "bytes remaining on stream"
        || text.starts_with("invalid message length");
    if garbled && e.as_db_error().is_none() {
        return format!("{text} (is {} a PostgreSQL server?)", ep.describe());
    }
    match innermost_io_kind(e) {
        Some(io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound) => match &ep.host {
            Host::Unix(_) => format!(
                "{text} (is the server running locally and accepting connections on socket \"{}\"?)",
                ep.describe()
            ),
            Host::Tcp(_) => format!("{text} (is the server running on {}?)", ep.describe()),
        },
        Some(io::ErrorKind::TimedOut) => {
            format!(
                "{text} (is {} reachable and the server running?)",
                ep.describe()
            )
        }
        _ => text,
    }
}

/// The kind of the innermost `io::Error` not wrapping a TLS error.
fn innermost_io_kind(e: &tokio_postgres::Error) -> Option<io::ErrorKind> {
    let mut cur: Option<&(dyn StdError + 'static)> = e.source();
    let mut kind = None;
    while let Some(err) = cur {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return None;
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            kind = Some(io.kind());
            cur = io.get_ref().map(|inner| inner as &(dyn StdError + 'static));
        } else {
            cur = err.source();
        }
    }
    kind
}

/// A server that answered and refused: an error of its own (the login
/// failed, no such database) other than "not accepting connections yet"
/// (57P03), or a login that could not go on on the client's side (it asks
/// for a password and none was given, a SCRAM exchange that failed), where
/// libpq's `pg_fe_sendauth` fails: either ends libpq's search of the hosts,
/// as a TLS failure does (the caller's `is_tls_failure`).
fn refused_the_login(e: &tokio_postgres::Error) -> bool {
    if let Some(d) = e.as_db_error() {
        return *d.code() != SqlState::CANNOT_CONNECT_NOW;
    }
    e.to_string() == "authentication error" || password_missing(e)
}

/// The server asks for a password and none was given (tokio-postgres's
/// words for it).
fn password_missing(e: &tokio_postgres::Error) -> bool {
    e.to_string() == "invalid configuration"
        && e.source()
            .is_some_and(|s| s.to_string() == "password missing")
}

/// The TLS handshake itself failed (tokio-postgres's own words for it), as
/// libpq's `pqsecure_open_client` fails: not a TLS error read later.
fn is_handshake_failure(e: &tokio_postgres::Error) -> bool {
    e.to_string() == "error performing TLS handshake"
}

fn is_tls_failure(e: &tokio_postgres::Error) -> bool {
    if is_handshake_failure(e) {
        return true;
    }
    let mut cur: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(err) = cur {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        cur = match err.downcast_ref::<io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    false
}

/// Whether waiting could help: the server is not up yet, restarting, or full.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return *code == SqlState::CANNOT_CONNECT_NOW
            || *code == SqlState::TOO_MANY_CONNECTIONS
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN;
    }
    if e.as_db_error().is_some() || is_tls_failure(e) {
        return false;
    }
    if e.is_closed() {
        return true;
    }
    matches!(
        innermost_io_kind(e),
        Some(
            io::ErrorKind::ConnectionRefused
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::TimedOut
                | io::ErrorKind::NotFound
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::BrokenPipe
        )
    )
}

/// Ask the server to cancel whatever `client` is running (best effort). Used
/// when pgshift is interrupted: a backend busy building an index would
/// otherwise only notice the closed connection when it finishes.
pub async fn cancel_running(client: &tokio_postgres::Client, spec: &ConnSpec) {
    let token = client.cancel_token();
    match crate::pg::conn::tls::make_tls(spec) {
        Ok(tls) => {
            if let Err(e) = token.cancel_query(tls).await {
                tracing::debug!("cancel request failed: {}", describe_pg_error(&e));
            }
        }
        Err(e) => tracing::debug!("cancel request not sent: {e}"),
    }
}

/// Settings for pgshift's long-running destination sessions: notice a vanished
/// pgshift (killed with -9) within seconds even in the middle of a long
/// statement (PostgreSQL 14+; set only where the server has it, so 13 logs no
/// `unrecognized configuration parameter` error).
pub async fn watch_client(client: &tokio_postgres::Client) {
    let _ = client
        .batch_execute(
            "SELECT pg_catalog.set_config(name, '2s', false) FROM pg_catalog.pg_settings
              WHERE name = 'client_connection_check_interval'",
        )
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn spec(input: &str) -> ConnSpec {
        ConnSpec::parse_with_env(input, &|k| match k {
            "HOME" => Some("/nonexistent/pgshift-test-home".into()),
            "PGUSER" => Some("tester".into()),
            _ => None,
        })
        .unwrap()
    }

    /// Connect with `s` (as `who`, for at most `budget`), which must fail: the
    /// error's text.
    async fn failure(s: &ConnSpec, who: &str, budget: Duration) -> String {
        connect(s, who, "pgshift", budget)
            .await
            .unwrap_err()
            .to_string()
    }

    /// Connect to the source for `budget` against a server that answers as
    /// `reply`: the error, and how many connection attempts the server saw.
    async fn attempts(reply: Reply, budget: Duration) -> (String, usize) {
        let (port, count) = fake_server(reply).await;
        let s = spec(&format!("host=127.0.0.1 port={port} dbname=nope"));
        let e = failure(&s, "source", budget).await;
        (e, count.load(Ordering::SeqCst))
    }

    async fn free_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    }

    enum Reply {
        /// ErrorResponse with this SQLSTATE and message.
        Error(&'static str, &'static str),
        /// AuthenticationCleartextPassword, then hang up.
        AskPassword,
    }

    /// A pretend server: refuses TLS, answers the startup message with `reply`.
    /// Returns its port and a counter of accepted connections.
    async fn fake_server(reply: Reply) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(AtomicUsize::new(0));
        let accepted = count.clone();
        let reply = Arc::new(reply);
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                accepted.fetch_add(1, Ordering::SeqCst);
                let reply = reply.clone();
                tokio::spawn(async move {
                    loop {
                        let mut len = [0u8; 4];
                        sock.read_exact(&mut len).await?;
                        let len = u32::from_be_bytes(len) as usize;
                        let mut body = vec![0; len - 4];
                        sock.read_exact(&mut body).await?;
                        if body == SSL_REQUEST[4..] {
                            sock.write_all(b"N").await?; // SSLRequest: no TLS here
                            continue;
                        }
                        let msg = match &*reply {
                            Reply::Error(code, message) => {
                                let mut fields = Vec::new();
                                for (t, v) in [
                                    (b'S', "FATAL"),
                                    (b'V', "FATAL"),
                                    (b'C', *code),
                                    (b'M', *message),
                                ] {
                                    fields.push(t);
                                    fields.extend(v.as_bytes());
                                    fields.push(0);
                                }
                                fields.push(0);
                                let mut msg = vec![b'E'];
                                msg.extend(((fields.len() + 4) as u32).to_be_bytes());
                                msg.extend(fields);
                                msg
                            }
                            Reply::AskPassword => vec![b'R', 0, 0, 0, 8, 0, 0, 0, 3],
                        };
                        sock.write_all(&msg).await?;
                        sock.flush().await?;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        return Ok::<_, io::Error>(());
                    }
                });
            }
        });
        (port, count)
    }

    #[tokio::test]
    async fn refused_names_the_address() {
        let port = free_port().await;
        let s = spec(&format!("postgresql://app:pw@127.0.0.1:{port}/shop"));
        let e = failure(&s, "destination", Duration::ZERO).await;
        assert_eq!(
            e,
            format!(
                "cannot connect to destination postgresql://app:***@127.0.0.1:{port}/shop: connection refused (is the server running on 127.0.0.1:{port}?)"
            )
        );
    }

    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

    /// Something that is not PostgreSQL (a web server, say) on the port: the
    /// error says so, whether TLS was asked for first or not.
    #[tokio::test]
    async fn a_server_that_is_not_postgresql_is_named() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    // Each request gets an answer; the connection ends after
                    // the first that is not an SSLRequest.
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = sock.read(&mut buf).await {
                        let reply = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
                        if sock.write_all(reply).await.is_err() || buf[..n] != SSL_REQUEST {
                            break;
                        }
                    }
                });
            }
        });
        for mode in ["disable", "prefer"] {
            let s = spec(&format!("host=127.0.0.1 port={port} sslmode={mode}"));
            let e = failure(&s, "source", Duration::ZERO).await;
            assert!(
                e.ends_with(&format!("(is 127.0.0.1:{port} a PostgreSQL server?)")),
                "{mode}: {e}"
            );
        }
    }

    #[tokio::test]
    async fn refused_is_retried_until_the_deadline() {
        let port = free_port().await;
        let s = spec(&format!("host=127.0.0.1 port={port}"));
        let start = Instant::now();
        let e = failure(&s, "source", Duration::from_millis(700)).await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
        assert!(e.contains("connection refused"), "{e}");
    }

    #[tokio::test]
    async fn missing_socket_names_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(&format!("host={} port=5499 dbname=d", dir.path().display()));
        let e = failure(&s, "source", Duration::ZERO).await;
        assert_eq!(
            e,
            format!(
                "cannot connect to source postgresql://tester@/d?host={}&port=5499: no such file or directory (is the server running locally and accepting connections on socket \"{}/.s.PGSQL.5499\"?)",
                dir.path().display(),
                dir.path().display()
            )
        );
    }

    #[tokio::test]
    async fn authentication_failure_is_not_retried() {
        let (port, count) = fake_server(Reply::Error(
            "28P01",
            "password authentication failed for user \"app\"",
        ))
        .await;
        let s = spec(&format!(
            "postgresql://app:Sup3rS3cret@127.0.0.1:{port}/shop"
        ));
        let e = failure(&s, "destination", Duration::from_secs(5)).await;
        assert_eq!(
            e,
            format!(
                "cannot connect to destination postgresql://app:***@127.0.0.1:{port}/shop: password authentication failed for user \"app\""
            )
        );
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn missing_database_is_not_retried() {
        let reply = Reply::Error("3D000", "database \"nope\" does not exist");
        let (e, count) = attempts(reply, Duration::from_secs(5)).await;
        assert!(e.ends_with(": database \"nope\" does not exist"), "{e}");
        assert_eq!(count, 1);
    }

    #[tokio::test]
    async fn starting_up_is_retried() {
        let reply = Reply::Error("57P03", "the database system is starting up");
        let (e, count) = attempts(reply, Duration::from_millis(600)).await;
        assert!(e.ends_with(": the database system is starting up"), "{e}");
        assert!(count >= 3, "{count}");
    }

    #[tokio::test]
    async fn too_many_connections_is_retried() {
        let reply = Reply::Error("53300", "sorry, too many clients already");
        let (_, count) = attempts(reply, Duration::from_millis(300)).await;
        assert!(count >= 2, "{count}");
    }

    #[tokio::test]
    async fn missing_password_is_explained() {
        let (e, count) = attempts(Reply::AskPassword, Duration::from_secs(2)).await;
        assert!(
            e.ends_with(
                ": the server asks for a password and none was given (set it in the URL, PGPASSWORD or ~/.pgpass)"
            ),
            "{e}"
        );
        assert_eq!(count, 1);
    }

    #[tokio::test]
    async fn every_host_is_reported() {
        let p1 = free_port().await;
        let (p2, _) = fake_server(Reply::Error("28000", "no pg_hba.conf entry")).await;
        let s = spec(&format!("host=127.0.0.1,localhost port={p1},{p2} dbname=d"));
        let e = failure(&s, "source", Duration::from_secs(2)).await;
        assert!(
            e.contains(&format!(
                "127.0.0.1:{p1}: connection refused (is the server running on 127.0.0.1:{p1}?); localhost:{p2}: no pg_hba.conf entry"
            )),
            "{e}"
        );
    }

    #[tokio::test]
    async fn tls_required_but_refused_by_server() {
        let (port, _) = fake_server(Reply::Error("28P01", "x")).await;
        let s = spec(&format!("host=127.0.0.1 port={port} sslmode=require"));
        let e = failure(&s, "source", Duration::from_secs(2)).await;
        assert!(e.ends_with(": TLS: server does not support TLS"), "{e}");
    }

    #[tokio::test]
    async fn tls_setup_errors_are_reported_before_connecting() {
        let s = spec("host=db sslmode=verify-full");
        let e = failure(&s, "destination", Duration::ZERO).await;
        assert!(
            e.starts_with(
                "cannot connect to destination postgresql://tester@db:5432/tester?sslmode=verify-full: sslmode=verify-full needs"
            ),
            "{e}"
        );
    }
}
