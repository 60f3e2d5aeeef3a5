//! What every mutating command holds for its whole run: a destination session
//! with the advisory run lock, a control session for records, and the locked
//! state file. Plus the [`Recorder`], which writes each phase's progress to
//! the state file and to `pgshift.migration` on the destination.
//!
//! The library knows nothing of the command line: a command hands it a
//! [`RunContext`] (its name, the Ctrl-C token, the connect timeout) and the
//! options of the work it asks for.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use tokio_postgres::Client;

use tokio_util::sync::CancellationToken;

use crate::error::{Interrupted, LockLost};
use crate::migration::derive::{self, Destination};
use crate::migration::lifecycle::{Phase, PhaseStatus, Status};
use crate::migration::record::{self, MigrationState, PhaseRecord};
use crate::migration::state_file::StateFile;
use crate::pg::conn::connect::{connect, connect_pinned};
use crate::pg::conn::connspec::ConnSpec;
use crate::pg::lock;

/// What a command hands the library for one run.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The command's name (`prepare`, `swap`, …): application_name, records.
    pub command: &'static str,
    /// Cancelled on the first SIGINT/SIGTERM.
    pub cancel: CancellationToken,
    /// How long to keep retrying a refused or reset connection.
    pub connect_timeout: Duration,
}

impl RunContext {
    /// A new connection to `spec` named for this run (`pgshift <command>`).
    pub async fn connect(&self, spec: &ConnSpec, what: &str) -> Result<Client> {
        connect(spec, what, &app_name(self.command), self.connect_timeout).await
    }
}

/// A mutating command's hold on the destination.
pub struct Session {
    pub run: RunContext,
    /// The destination pinned to the server the run lock is held on
    /// ([`ConnSpec::pinned`]): every later session, pool and retry of this run
    /// goes to that same server, never to another host of a multi-host string
    /// that starts answering mid-run (a failover, a host coming back).
    pub dest: ConnSpec,
    /// Holds the advisory lock; never used for anything else.
    lock_client: Client,
    /// Autocommit session for records and catalog reads.
    pub control: Client,
    pub state_file: StateFile,
}

impl Session {
    /// Connect to the destination, take the state-file lock (in `state_dir`)
    /// and the advisory lock. The hosts of `dest` are tried in order, as libpq
    /// does; the one that takes the lock is the run's destination from then on.
    pub async fn open(run: &RunContext, dest: &ConnSpec, state_dir: &Path) -> Result<Session> {
        let state_file = StateFile::lock(
            state_dir,
            dest.dbname(),
            &lock::lock_application_name(run.command),
        )?;
        let (lock_client, dest) = connect_pinned(
            dest,
            "destination",
            &lock::lock_application_name(run.command),
            run.connect_timeout,
        )
        .await?;
        refuse_read_only(&lock_client, &dest).await?;
        lock::acquire(&lock_client).await?;
        let control = run.connect(&dest, "destination").await?;
        Ok(Session {
            run: run.clone(),
            dest,
            lock_client,
            control,
            state_file,
        })
    }

    /// Another destination session for this run (the swap's transaction,
    /// workers).
    pub async fn connect(&self) -> Result<Client> {
        self.run.connect(&self.dest, "destination").await
    }

    /// A working destination session for recording a failure and cleaning up:
    /// the control session, or a new one if the control session died (the
    /// destination restarted). None if the destination cannot be reached.
    pub async fn recovery_client(&self) -> Option<RecoveryClient<'_>> {
        if !self.control.is_closed() && self.control.batch_execute("SELECT 1").await.is_ok() {
            return Some(RecoveryClient::Control(&self.control));
        }
        match self.connect().await {
            Ok(c) => Some(RecoveryClient::Fresh(c)),
            Err(e) => {
                tracing::warn!("{e:#}");
                None
            }
        }
    }

    /// The destination as it stands, with this directory's state file (see
    /// `migration::derive`): an unreadable file, or one that is another
    /// destination's, is warned about and not used; the latter is left
    /// alone from then on, neither written nor removed by this run.
    pub async fn observe(&self) -> Result<Destination> {
        let file = self.state_file.load().unwrap_or_else(|e| {
            tracing::warn!("ignoring the unreadable state file: {e:#}");
            None
        });
        let d = Destination::observe_with_file(&self.control, Ok(file), &self.dest).await?;
        if let Some(f) = &d.foreign_file {
            tracing::warn!("{}", derive::foreign_file_note(f));
            self.state_file.leave_alone();
        }
        Ok(d)
    }

    /// Clear a state file the destination has gone past ([`Destination::file_stale`]:
    /// its migration swapped, also by a run that died after its COMMIT, or
    /// aborted, or a newer one recorded since), as a swap clears its own at
    /// its end: `status` would go on calling it stale. Its dump directory is
    /// left, and named.
    pub fn clear_stale_file(&self, d: &Destination) -> Result<()> {
        if let Some(f) = d.file.as_ref().filter(|_| d.file_stale()) {
            self.state_file.clear()?;
            let dump = f
                .dump_dir
                .as_ref()
                .filter(|p| p.exists())
                .map(|p| format!(" (its dump directory {} is left)", p.display()))
                .unwrap_or_default();
            tracing::info!(
                "cleared the state file of migration {}, which the destination has gone past{dump}",
                f.id
            );
        }
        Ok(())
    }

    /// The run lock's session, idle once it holds the lock: for questions
    /// asked while the run's other sessions work or wait
    /// ([`crate::pg::lock::naming_lock_waits`]).
    pub fn lock_session(&self) -> &Client {
        &self.lock_client
    }

    /// Is the lock session still alive? (A dead one means the lock is gone.)
    pub fn lock_alive(&self) -> bool {
        !self.lock_client.is_closed()
    }

    /// Resolves once the lock session has died (looked at five times a second).
    pub async fn lock_lost(&self) {
        while self.lock_alive() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A mutating command writes to the destination: a standby, or a database or
/// role whose sessions start read-only (`default_transaction_read_only`, a
/// frozen database), is refused before anything, naming which (rather than
/// failing on the first write with "cannot execute … in a read-only
/// transaction"). pgshift does not override a read-only default: whoever set
/// it meant the database not to change.
pub async fn refuse_read_only(client: &Client, dest: &ConnSpec) -> Result<()> {
    match takes_no_writes(client).await? {
        Some(NoWrites::Standby) => crate::refuse!(
            "the destination {dest} is a standby (in recovery) and takes no writes; give the primary (with several hosts, target_session_attrs=primary); nothing was changed"
        ),
        Some(NoWrites::ReadOnly) => crate::refuse!(
            "the destination {dest} starts its sessions read-only (default_transaction_read_only is on for the database, the role or the server); pgshift does not override it: turn it off to migrate; nothing was changed"
        ),
        None => Ok(()),
    }
}

/// Why a destination takes no writes, if it does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoWrites {
    /// In recovery.
    Standby,
    /// `transaction_read_only` on from the session's start.
    ReadOnly,
}

impl NoWrites {
    /// What the destination is, in a few words.
    pub fn describe(self) -> &'static str {
        match self {
            NoWrites::Standby => "the destination is a standby (in recovery) and takes no writes",
            NoWrites::ReadOnly => {
                "the destination starts its sessions read-only (default_transaction_read_only)"
            }
        }
    }

    /// For a dry run's warnings (a dry run itself only reads).
    pub fn warning(self) -> String {
        format!("{}: the run itself will be refused", self.describe())
    }
}

/// Whether `client`'s server takes writes in a new session's transactions.
pub async fn takes_no_writes(client: &Client) -> Result<Option<NoWrites>> {
    let row = client
        .query_one(
            "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.current_setting('transaction_read_only') = 'on'",
            &[],
        )
        .await
        .map_err(|e| crate::pg::exec::pg_error_as(e, "checking that the destination takes writes"))?;
    Ok(match (row.get(0), row.get(1)) {
        (true, _) => Some(NoWrites::Standby),
        (false, true) => Some(NoWrites::ReadOnly),
        (false, false) => None,
    })
}

/// A destination session for recovery work.
pub enum RecoveryClient<'a> {
    Control(&'a Client),
    Fresh(Client),
}

impl std::ops::Deref for RecoveryClient<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        match self {
            RecoveryClient::Control(c) => c,
            RecoveryClient::Fresh(c) => c,
        }
    }
}

/// `application_name` for pgshift's working sessions.
pub fn app_name(command: &str) -> String {
    format!("pgshift {command}")
}

/// Test hook: `PGSHIFT_FAILPOINT` is a comma-separated list of `point` (fail
/// with an injected error there) or `point:sleep=MS` (pause there). Points are
/// phase names. Used by the tests that prove a failure in each phase leaves
/// nothing behind, and that a second run is refused while one is busy.
pub async fn failpoint(name: &str) -> Result<()> {
    let Ok(v) = std::env::var("PGSHIFT_FAILPOINT") else {
        return Ok(());
    };
    for item in v.split(',').map(str::trim) {
        let (point, action) = item.split_once(':').unwrap_or((item, "fail"));
        if point != name {
            continue;
        }
        if let Some(ms) = action.strip_prefix("sleep=") {
            let ms: u64 = ms.parse().unwrap_or(0);
            tracing::warn!("pausing {ms} ms at {name} (PGSHIFT_FAILPOINT)");
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        } else {
            anyhow::bail!("injected failure at {name} (PGSHIFT_FAILPOINT)");
        }
    }
    Ok(())
}

/// How long an interrupted phase has to cancel its running statements on
/// the server and return, before it is dropped.
const PHASE_WIND_DOWN: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes progress to the state file and the destination's record.
pub struct Recorder {
    pub state: MigrationState,
    /// Whether `pgshift.migration` exists yet (created by the first mutating run).
    pub meta_ready: bool,
}

impl Recorder {
    /// A fresh record for a new migration started by `command`.
    pub fn new(id: i64, command: &str, source: Option<&ConnSpec>, dest: &ConnSpec) -> Recorder {
        Recorder {
            state: MigrationState::new(id, command, source, dest),
            meta_ready: false,
        }
    }

    /// Continue an existing record (swap after prepare).
    pub fn resume(state: MigrationState, command: &str) -> Recorder {
        Recorder {
            state: state.continued_by(command),
            meta_ready: true,
        }
    }

    /// Persist to the state file and, once it exists, to `pgshift.migration`.
    pub async fn save(&mut self, sess: &Session) -> Result<()> {
        self.save_via(sess, &sess.control).await
    }

    /// [`save`](Self::save) through a given destination session.
    pub async fn save_via(&mut self, sess: &Session, client: &Client) -> Result<()> {
        self.state.updated_at = Utc::now();
        sess.state_file.save(&self.state)?;
        if self.meta_ready {
            record::save_migration(client, &self.state).await?;
        }
        Ok(())
    }

    pub async fn set_status(&mut self, sess: &Session, status: Status) -> Result<()> {
        self.state.status = status;
        self.save(sess).await
    }

    /// Run one phase: record its start, run it (stopping on Ctrl-C, with up
    /// to [`PHASE_WIND_DOWN`] for its statements to be cancelled, and likewise
    /// when the run lock's session dies: [`LockLost`]), record the outcome
    /// with its duration. Errors carry the phase name.
    pub async fn phase<T, F>(&mut self, sess: &Session, name: Phase, fut: F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let started = Instant::now();
        self.state.phase = Some(name);
        self.state.phases.retain(|p| p.name != name);
        self.state.phases.push(PhaseRecord {
            name,
            status: PhaseStatus::Running,
            started_at: Utc::now(),
            finished_at: None,
            duration_ms: None,
            detail: None,
        });
        self.save(sess)
            .await
            .with_context(|| format!("phase {name}"))?;
        tracing::info!(phase = name.as_str(), "phase started");
        let result = async {
            if sess.control.is_closed() {
                anyhow::bail!(
                    "lost the connection to the destination (did the server restart?); the run lock is no longer held"
                );
            }
            if !sess.lock_alive() {
                return Err(anyhow::Error::new(LockLost));
            }
            failpoint(name.as_str()).await?;
            let mut fut = std::pin::pin!(fut);
            tokio::select! {
                biased;
                _ = sess.run.cancel.cancelled() => {
                    // The phase's workers see the cancellation too: they
                    // cancel their statements on the server and return.
                    // Dropped at once, their sessions would leave a long
                    // statement (an index build) running, holding what the
                    // removal of the shadow then waits for.
                    let _ = tokio::time::timeout(PHASE_WIND_DOWN, &mut fut).await;
                    Err(anyhow::Error::new(Interrupted))
                }
                // Another run may take the lock now: the phase's workers stop
                // as for Ctrl-C, and the run with them.
                _ = sess.lock_lost() => {
                    tracing::error!("the run lock's session ended: stopping");
                    sess.run.cancel.cancel();
                    // The control session's statement (the sync's DDL on a
                    // live table, waiting for its lock) must not go on.
                    crate::pg::conn::connect::cancel_running(&sess.control, &sess.dest).await;
                    let _ = tokio::time::timeout(PHASE_WIND_DOWN, &mut fut).await;
                    Err(anyhow::Error::new(LockLost))
                }
                r = &mut fut => r,
            }
        }
        .await;
        let ms = started.elapsed().as_millis() as u64;
        if let Some(p) = self.state.phases.iter_mut().find(|p| p.name == name) {
            p.finished_at = Some(Utc::now());
            p.duration_ms = Some(ms);
            p.status = if result.is_ok() {
                PhaseStatus::Done
            } else {
                PhaseStatus::Failed
            };
        }
        match result {
            Ok(v) => {
                tracing::info!(phase = name.as_str(), ms, "phase done");
                self.save(sess)
                    .await
                    .with_context(|| format!("phase {name}"))?;
                Ok(v)
            }
            Err(e) => Err(e.context(format!("phase {name}"))),
        }
    }

    /// Attach a detail line to a finished phase (sizes, counts).
    pub fn detail(&mut self, name: Phase, detail: impl Into<String>) {
        if let Some(p) = self.state.phases.iter_mut().find(|p| p.name == name) {
            p.detail = Some(detail.into());
        }
    }

    /// Record a failure (best effort: the destination may be the thing that
    /// failed). `client` is a working destination session, if there is one.
    pub async fn fail(&mut self, sess: &Session, client: Option<&Client>, err: &anyhow::Error) {
        self.state.status = Status::Failed;
        let interrupted = err.chain().any(|c| c.is::<Interrupted>());
        self.state.error = Some(if interrupted {
            format!(
                "interrupted during phase {}",
                self.state.phase.map(|p| p.as_str()).unwrap_or("?")
            )
        } else {
            format!("{err:#}")
        });
        // Each place on its own: a full disk under the state file does not
        // keep the destination's record from saying `failed`, nor the other
        // way round; the warning says which one failed.
        self.state.updated_at = Utc::now();
        if let Err(e) = sess.state_file.save(&self.state) {
            tracing::warn!("could not record the failure in the state file: {e:#}");
        }
        if let Some(c) = client
            && self.meta_ready
            && let Err(e) = record::save_migration(c, &self.state).await
        {
            tracing::warn!("could not record the failure on the destination: {e:#}");
        }
    }

    /// Phase durations in ms, for summaries and manifests.
    pub fn timings(&self) -> serde_json::Map<String, serde_json::Value> {
        self.state.timings()
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}
