//! Where the destination stands, derived in one place from everything that
//! says something about it: the state file, the destination's migration
//! record, the shadow schema, the run lock and the backups.
//!
//! `status` prints it; `swap`, `abort`, `rollback` and prepare's preflight
//! decide with it. The rules:
//!
//! * **Which record.** The state file (this machine's) and the destination's
//!   latest `pgshift.migration` row describe the same migration when their ids
//!   match: a finished row (swapped, aborted) or a newer one wins, otherwise
//!   the file (it is written first). An older file than the row is stale.
//! * **Whose file.** The state file is named after the database only, so one
//!   directory can hold the file of a migration to a database of that name on
//!   another server (staging and production both called `app`). A file whose
//!   recorded destination is another server or database
//!   ([`ConnSpec::same_server_and_db`]) and whose migration this destination's
//!   latest row is not, is another destination's: it is ignored, with a
//!   warning, and the commands that clear the file leave it alone.
//! * **A run that died.** A `preparing` or `swapping` record whose run does
//!   not hold the destination's lock is not running any more: a prepare that
//!   died is `failed`; a swap that died either committed (the record says
//!   `swapped`, or — records of earlier versions — a backup of the migration
//!   exists), rolled back (the shadow is intact: still `prepared`), or left
//!   nothing usable (`failed`).
//! * **Leftovers.** Migration objects (a shadow with objects, pgshift
//!   triggers, helper tables and functions) while nothing is prepared, and a
//!   lock held for a process that is gone.
//!
//! [`Destination::observe`] only reads. The one repair — recording `swapped`
//! for a swap of an earlier version that committed without recording it — is
//! [`settle_committed_swap`], called by the commands that hold the run lock.

use anyhow::Result;
use serde::Serialize;
use tokio_postgres::Client;

use crate::backups::manifest as backups;
use crate::migration::lifecycle::Status;
use crate::migration::record::{self, MigrationRow, MigrationState};
use crate::pg::conn::connspec::ConnSpec;
use crate::pg::lock::{self, Holder};
use crate::pg::meta::{self, ShadowState};
use crate::prepare::discard::{self, Removed};
use crate::words::words;

words! {
    /// The destination as a whole.
    pub enum State {
        Idle = "idle",
        Preparing = "preparing",
        Prepared = "prepared",
        Swapping = "swapping",
        Failed = "failed",
    }
}

impl State {
    /// A migration is under way or ready: its objects are not leftovers.
    pub fn is_busy(self) -> bool {
        matches!(self, State::Preparing | State::Prepared | State::Swapping)
    }
}

words! {
    /// Where the record came from.
    pub enum RecordFrom {
        None = "none",
        StateFile = "state_file",
        Destination = "destination",
        Both = "both",
    }
}

/// The pgshift run holding the destination's lock.
#[derive(Debug, Clone, Serialize)]
pub struct RunningInfo {
    pub holder: Holder,
    /// pid and host parsed from the holder's application_name.
    pub pid: Option<u32>,
    pub host: Option<String>,
    /// false when the holder's process is on this host and no longer runs;
    /// null when that cannot be told (another host).
    pub alive: Option<bool>,
}

impl RunningInfo {
    fn from_holder(h: Holder) -> RunningInfo {
        let (pid, host) = h.process();
        let alive = h.process_alive();
        RunningInfo {
            holder: h,
            pid,
            host,
            alive,
        }
    }

    /// Is this the run that wrote `st`, and alive? (A lock held by another
    /// run, e.g. a rollback, says nothing about a crashed prepare.)
    fn runs(&self, st: &MigrationState) -> bool {
        self.alive != Some(false)
            && self.pid.is_none_or(|p| p == st.pid)
            && self.host.as_deref().is_none_or(|h| st.host.starts_with(h))
    }
}

/// The shadow schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow {
    pub state: ShadowState,
    /// No objects in it (pgshift leaves an empty shadow after a swap).
    pub empty: bool,
}

impl Shadow {
    pub fn ours(&self) -> bool {
        matches!(self.state, ShadowState::Ours(_))
    }

    /// Ours, with objects in it.
    pub fn ours_with_objects(&self) -> bool {
        self.ours() && !self.empty
    }
}

/// Everything known about the destination's migration.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The chosen record, with its own status (see the module doc).
    pub record: Option<MigrationState>,
    pub record_from: RecordFrom,
    /// The state file's record, when it is this destination's.
    pub file: Option<MigrationState>,
    /// The state file's record when it is another destination's (left alone).
    pub foreign_file: Option<MigrationState>,
    /// The destination's latest row (the shadow oid it recorded).
    pub row: Option<MigrationRow>,
    pub state: State,
    pub shadow: Shadow,
    /// Whether the `pgshift` schema exists (and is ours).
    pub meta_ok: bool,
    /// The run holding the destination's lock, if any.
    pub running: Option<RunningInfo>,
    /// A swap of the record's migration committed while the record still says
    /// `swapping` (a run of an earlier version stopped before recording it):
    /// the backup it made.
    pub committed_unrecorded: Option<String>,
    /// Migration objects on the destination (whatever the state).
    pub objects: Removed,
    pub warnings: Vec<String>,
}

impl Destination {
    /// Read everything on the destination; change nothing. No state file.
    pub async fn observe(client: &Client) -> Result<Self> {
        Self::observe_inner(client, Ok(None), None).await
    }

    /// Read everything; change nothing. `file` is the state file as read (an
    /// unreadable one becomes a warning); `here` is the destination `client`
    /// was reached by, to tell another destination's file (see the module doc).
    pub async fn observe_with_file(
        client: &Client,
        file: Result<Option<MigrationState>>,
        here: &ConnSpec,
    ) -> Result<Self> {
        Self::observe_inner(client, file, Some(here)).await
    }

    async fn observe_inner(
        client: &Client,
        file: Result<Option<MigrationState>>,
        here: Option<&ConnSpec>,
    ) -> Result<Self> {
        let mut warnings = Vec::new();
        let file = file.unwrap_or_else(|e| {
            warnings.push(format!("ignoring the state file: {e:#}"));
            None
        });
        let meta_ok = match meta::meta_exists(client).await {
            Ok(b) => b,
            Err(e) => {
                warnings.push(format!("{e:#}"));
                false
            }
        };
        let row = if meta_ok {
            record::latest_migration(client).await?
        } else {
            None
        };
        let running = lock::holder(client).await?.map(RunningInfo::from_holder);
        let shadow_state = meta::shadow_state(client).await?;
        let objects = discard::find_leftovers(client).await?;
        let empty = match shadow_state {
            ShadowState::Ours(oid) | ShadowState::Foreign(oid) => {
                !discard::schema_has_objects(client, oid).await?
            }
            ShadowState::Absent => true,
        };
        let shadow = Shadow {
            empty,
            state: shadow_state,
        };
        let (file, foreign_file) = match file {
            Some(f)
                if here.is_some_and(|h| recorded_elsewhere(&f, h))
                    && row.as_ref().is_none_or(|r| r.id != f.id) =>
            {
                (None, Some(f))
            }
            f => (f, None),
        };
        if let Some(f) = &foreign_file {
            warnings.push(foreign_file_note(f));
        }
        // The file's own run still at work (a swap between its COMMIT and
        // the end, which clears the file): not stale.
        let in_flight = match (&file, &running) {
            (Some(f), Some(r)) => r.runs(f),
            _ => false,
        };
        let (record, record_from) =
            choose_record(file.clone(), row.as_ref(), in_flight, &mut warnings);
        let committed_unrecorded = match &record {
            Some(st) if st.status == Status::Swapping && meta_ok => {
                backups::backup_of_migration(client, st.id).await?
            }
            _ => None,
        };
        let mut d = Destination {
            record,
            record_from,
            file,
            foreign_file,
            row,
            state: State::Idle,
            shadow,
            meta_ok,
            running,
            committed_unrecorded,
            objects,
            warnings,
        };
        d.state = d.derive_state();
        Ok(d)
    }

    /// The state, from the record, the run lock, the backups and the shadow.
    fn derive_state(&mut self) -> State {
        let running = self.running.clone();
        let committed = self.committed_unrecorded.is_some();
        let shadow_intact = self.shadow.ours_with_objects();
        let Some(st) = self.record.as_mut() else {
            return State::Idle;
        };
        let alive = running.as_ref().is_some_and(|r| r.runs(st));
        match st.status {
            Status::Preparing if alive => State::Preparing,
            Status::Swapping if alive => State::Swapping,
            Status::Preparing => {
                let why = format!(
                    "the {} run (pid {} on {}) stopped during phase {} without recording a result",
                    st.command,
                    st.pid,
                    st.host,
                    st.phase.map(|p| p.as_str()).unwrap_or("?")
                );
                if st.error.is_none() {
                    st.error = Some(why.clone());
                }
                self.warnings.push(why);
                State::Failed
            }
            Status::Swapping if committed => {
                self.warnings.push(format!(
                    "migration {} was swapped (its backup exists) but its run stopped before recording it",
                    st.id
                ));
                State::Idle
            }
            Status::Swapping if shadow_intact => {
                self.warnings.push(format!(
                    "the swap of migration {} did not finish (its transaction was rolled back); the migration is still prepared",
                    st.id
                ));
                State::Prepared
            }
            Status::Swapping => State::Failed,
            Status::Prepared => State::Prepared,
            Status::Failed => State::Failed,
            Status::Swapped | Status::Aborted => State::Idle,
        }
    }

    /// The shadow is not the one the prepared migration created.
    pub fn shadow_replaced(&self) -> bool {
        match (&self.shadow.state, &self.row, &self.record) {
            (ShadowState::Ours(oid), Some(row), Some(st)) => {
                row.id == st.id && row.shadow_oid.is_some_and(|s| s != *oid)
            }
            _ => false,
        }
    }

    /// The state file records a migration the destination has since finished
    /// (swapped or aborted, from another directory, or swapped without a
    /// record of it) or gone past: nothing of it is left to act on.
    pub fn file_stale(&self) -> bool {
        match (&self.file, &self.row) {
            (Some(f), Some(row)) => {
                f.id < row.id
                    || (f.id == row.id
                        && (row.state.status.is_finished() || self.committed_unrecorded.is_some()))
            }
            _ => false,
        }
    }

    /// The migration a swap can complete now: the record of a prepared
    /// migration (or of a swap that was rolled back) whose shadow is ours,
    /// as the destination recorded it.
    pub fn swappable(&self) -> Option<&MigrationRow> {
        let row = self.row.as_ref()?;
        let ready = matches!(row.state.status, Status::Prepared | Status::Swapping)
            && self.committed_unrecorded.is_none()
            && self.shadow.ours();
        ready.then_some(row)
    }

    /// pgshift's sync triggers on live tables (`table.trigger`, `schema.table.trigger`
    /// outside public), in whichever migrated schema: a prepared migration
    /// keeps preserved tables in sync. (Not those a backup's tables may hold.)
    pub fn sync_triggers_on_live(&self) -> Vec<String> {
        self.objects
            .trigger_sites
            .iter()
            .filter(|t| !t.schema.starts_with(crate::pg::meta::BACKUP_PREFIX))
            .map(|t| {
                format!(
                    "{}.{}",
                    crate::pg::meta::table_display(&t.schema, &t.table),
                    t.trigger
                )
            })
            .collect()
    }

    /// Why no swap or rollback can run now because another run holds the
    /// destination's lock (a dead run's session holds it as firmly, until
    /// the server notices or someone ends it), or None. The dry runs say it
    /// as the real ones would be refused.
    pub fn lock_refusal(&self) -> Option<String> {
        let r = self.running.as_ref()?;
        Some(if r.alive == Some(false) {
            format!(
                "a session of a pgshift run that is no longer running holds the destination's lock: {}; end it with SELECT pg_terminate_backend({})",
                r.holder, r.holder.backend_pid
            )
        } else {
            format!(
                "another pgshift run holds the destination's lock: {}",
                r.holder
            )
        })
    }

    /// Leftovers of earlier runs: migration objects while nothing is prepared
    /// or running. While a live run holds the destination they are its own
    /// (a swap drops its changelogs after its COMMIT, when the record already
    /// says swapped), not leftovers.
    pub fn leftovers(&self) -> Removed {
        let run_alive = self
            .running
            .as_ref()
            .is_some_and(|r| r.alive != Some(false));
        if self.state.is_busy() || run_alive {
            return Removed::default();
        }
        let mut found = self.objects.clone();
        found.shadow = self.shadow.ours_with_objects();
        if !self.meta_ok {
            found.helper_tables.clear();
            found.helper_functions = 0;
        }
        found
    }
}

/// The warning about another destination's state file.
pub fn foreign_file_note(f: &MigrationState) -> String {
    format!(
        "ignoring the state file: it records migration {} ({}) of another destination, {}",
        f.id, f.status, f.dest
    )
}

/// The record names a destination that is not `here`: another server, or
/// another database. A record without a readable destination (written by an
/// older version) is not told apart.
pub fn recorded_elsewhere(st: &MigrationState, here: &ConnSpec) -> bool {
    if st.dest.is_empty() {
        return false;
    }
    // The recorded destination is redacted; its password and the machine's
    // environment play no part in where it points.
    match ConnSpec::parse_with_env(&st.dest, &|_| None) {
        Ok(there) => !here.same_server_and_db(&there),
        Err(_) => false,
    }
}

/// Pick the record: the state file, the destination's row, or both.
/// `in_flight`: the run the file records is still at work.
fn choose_record(
    file: Option<MigrationState>,
    row: Option<&MigrationRow>,
    in_flight: bool,
    warnings: &mut Vec<String>,
) -> (Option<MigrationState>, RecordFrom) {
    match (file, row) {
        (None, None) => (None, RecordFrom::None),
        (Some(f), None) => (Some(f), RecordFrom::StateFile),
        (None, Some(d)) => (Some(d.state.clone()), RecordFrom::Destination),
        (Some(f), Some(d)) if f.id == d.id => {
            let finished = d.state.status.is_finished();
            if finished || d.state.updated_at >= f.updated_at {
                if finished && !in_flight {
                    warnings.push(format!(
                        "the state file still records migration {} as {}, but the destination says {}; the state file is stale",
                        f.id, f.status, d.state.status
                    ));
                }
                (Some(d.state.clone()), RecordFrom::Both)
            } else {
                (Some(f), RecordFrom::Both)
            }
        }
        (Some(f), Some(d)) if f.id < d.id => {
            warnings.push(format!(
                "the state file records migration {}, but the destination's latest is {}; using the destination's record (the state file is stale)",
                f.id, d.id
            ));
            (Some(d.state.clone()), RecordFrom::Destination)
        }
        (Some(f), Some(_)) => (Some(f), RecordFrom::StateFile),
    }
}

/// A swap of an earlier version committed but stopped before recording it:
/// record it as swapped now (under the run lock). Returns the backup it made.
pub async fn settle_committed_swap(client: &Client, d: &Destination) -> Result<Option<String>> {
    let (Some(backup), Some(row)) = (&d.committed_unrecorded, &d.row) else {
        return Ok(None);
    };
    let mut st = row.state.clone();
    st.status = Status::Swapped;
    st.phase = None;
    st.updated_at = chrono::Utc::now();
    st.details.backup = Some(backup.clone());
    record::save_migration(client, &st).await?;
    Ok(Some(backup.clone()))
}
