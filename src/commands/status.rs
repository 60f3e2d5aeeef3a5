//! `pgshift status`: where the destination's migration stands. Read only, no
//! lock; exit 0 whatever the state (a `failed` state is data, not an error).
//!
//! The record comes from the state file in the state directory when there is
//! one, and from the destination's own `pgshift.migration` (so it also works
//! from another machine or a CI job); when both exist the newer wins.

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::backups::verify;
use crate::commands::Ctx;
use crate::commands::abort::{shadow_is_empty, swap_committed};
use crate::commands::list::rfc3339;
use crate::error::ExitCode;
use crate::migration::session::app_name;
use crate::migration::state_file::{self, MigrationState, PhaseRecord};
use crate::output::{self, Table, human_bytes, human_ms};
use crate::pg::connect::connect;
use crate::pg::lock::{self, Holder};
use crate::pg::meta::{self, SHADOW_SCHEMA, ShadowState};
use crate::prepare::discard;
use crate::prepare::sync::{self, SyncedTable};

/// What `status --json` prints (documented in README.md, "JSON output").
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// `idle`, `preparing`, `prepared`, `swapping` or `failed`.
    pub state: String,
    /// The destination, redacted.
    pub destination: String,
    /// Where the migration record came from: `state_file`, `destination`,
    /// `both` (they agree) or `none`.
    pub record_from: String,
    /// The latest migration, if any (also after it finished: status `swapped`
    /// or `aborted`).
    pub migration: Option<MigrationInfo>,
    pub shadow: ShadowInfo,
    /// Preserved tables of the prepared migration and their sync health.
    pub preserved_tables: Vec<PreservedInfo>,
    /// Would `pgshift swap` be allowed now?
    pub swap_allowed: bool,
    /// Why not, when it would not.
    pub swap_blocked_reason: Option<String>,
    /// The pgshift run holding the destination's lock now, if any.
    pub running: Option<RunningInfo>,
    pub leftovers: LeftoverInfo,
    pub backups: usize,
    pub latest_backup: Option<String>,
    /// Foreign keys in public that are NOT VALID (`table.constraint`), e.g.
    /// created so by a swap with `--allow-fk-violations`.
    pub not_valid_foreign_keys: Vec<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MigrationInfo {
    pub id: i64,
    /// The record's own status: preparing, prepared, swapping, failed, swapped, aborted.
    pub status: String,
    pub command: String,
    pub started_at: String,
    pub updated_at: String,
    /// The phase running now, or the one that failed.
    pub phase: Option<String>,
    pub error: Option<String>,
    pub pid: u32,
    pub host: String,
    pub source: String,
    pub snapshot_at: Option<String>,
    pub tables: usize,
    pub phases: Vec<PhaseRecord>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ShadowInfo {
    pub exists: bool,
    /// Created by pgshift (marker comment).
    pub ours: bool,
    /// No objects in it (pgshift leaves an empty shadow after a swap).
    pub empty: bool,
    pub size_bytes: i64,
    pub tables: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PreservedInfo {
    pub name: String,
    /// The sync health as `sync::health` reports it (trigger present and
    /// enabled, pending changelog rows, rows in public and shadow); null until
    /// the destination can report it.
    pub health: Option<serde_json::Value>,
}

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

#[derive(Debug, Clone, Serialize, Default)]
pub struct LeftoverInfo {
    pub found: bool,
    /// A shadow with objects in it while nothing is prepared.
    pub shadow: bool,
    pub triggers: Vec<String>,
    pub helper_tables: Vec<String>,
    pub helper_functions: usize,
    /// The destination's lock held by a session whose pgshift process is gone.
    pub dead_lock_holder: Option<String>,
    pub hint: Option<String>,
}

fn migration_info(st: &MigrationState, status: &str) -> MigrationInfo {
    MigrationInfo {
        id: st.id,
        status: status.to_string(),
        command: st.command.clone(),
        started_at: rfc3339(&st.started_at),
        updated_at: rfc3339(&st.updated_at),
        phase: st.phase.clone(),
        error: st.error.clone(),
        pid: st.pid,
        host: st.host.clone(),
        source: st.source.clone(),
        snapshot_at: st.snapshot_at.as_ref().map(rfc3339),
        tables: st.tables.len(),
        phases: st.phases.clone(),
    }
}

/// `pgshift <command> pid=<pid> host=<host>` -> (pid, host).
fn parse_app_name(app: &str) -> (Option<u32>, Option<String>) {
    let mut pid = None;
    let mut host = None;
    for part in app.split_whitespace() {
        if let Some(p) = part.strip_prefix("pid=") {
            pid = p.parse().ok();
        } else if let Some(h) = part.strip_prefix("host=") {
            host = Some(h.to_string());
        }
    }
    (pid, host)
}

fn this_host() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn running_info(h: Holder) -> RunningInfo {
    let (pid, host) = h
        .application_name
        .as_deref()
        .map(parse_app_name)
        .unwrap_or((None, None));
    let me = this_host();
    // application_name is cut at 63 bytes, so the host may be a prefix.
    let local = host
        .as_deref()
        .is_some_and(|hn| !hn.is_empty() && (hn == me || me.starts_with(hn)));
    let alive = match (pid, local) {
        (Some(p), true) => Some(process_alive(p)),
        _ => None,
    };
    RunningInfo {
        holder: h,
        pid,
        host,
        alive,
    }
}

/// Health of the preserved tables' sync (`sync::health`): triggers present and
/// enabled, pending changelog rows, rows in public and shadow.
async fn preserved_health(
    client: &Client,
    synced: &[SyncedTable],
) -> Result<(Vec<PreservedInfo>, Option<String>)> {
    if synced.is_empty() {
        return Ok((Vec::new(), None));
    }
    let health = sync::health(client, synced).await?;
    let problem = health
        .iter()
        .filter(|h| !h.triggers_ok || !h.changelog_present)
        .map(|h| {
            format!(
                "the sync of {} is broken ({h}); run `pgshift abort` and prepare again",
                h.table
            )
        })
        .next();
    let infos = synced
        .iter()
        .map(|s| PreservedInfo {
            name: s.name.clone(),
            health: health
                .iter()
                .find(|h| h.table == s.name)
                .and_then(|h| serde_json::to_value(h).ok()),
        })
        .collect();
    Ok((infos, problem))
}

async fn shadow_info(client: &Client) -> Result<ShadowInfo> {
    let st = meta::shadow_state(client).await?;
    if st == ShadowState::Absent {
        return Ok(ShadowInfo::default());
    }
    let facts = verify::schema_facts(client, SHADOW_SCHEMA).await?;
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')",
            &[&SHADOW_SCHEMA],
        )
        .await?
        .get(0);
    Ok(ShadowInfo {
        exists: true,
        ours: matches!(st, ShadowState::Ours(_)),
        empty: shadow_is_empty(client).await?,
        size_bytes: facts.size_bytes,
        tables: tables as usize,
    })
}

/// Would `swap` go ahead now? (The same checks `swap` makes before it changes
/// anything, without taking the lock.)
async fn swap_verdict(
    client: &Client,
    state: &str,
    record: Option<&(MigrationState, String)>,
    running: Option<&RunningInfo>,
) -> Result<Option<String>> {
    if let Some(r) = running {
        return Ok(Some(format!(
            "another pgshift run holds the destination's lock: {}",
            r.holder
        )));
    }
    if state != "prepared" {
        return Ok(Some(match state {
            "failed" => {
                "the last prepare failed; run `pgshift prepare` again (or `pgshift abort`)".into()
            }
            _ => "nothing is prepared on the destination".into(),
        }));
    }
    let Some((st, _)) = record else {
        return Ok(Some("nothing is prepared on the destination".into()));
    };
    match meta::shadow_state(client).await? {
        ShadowState::Ours(oid) => {
            if let Some(m) = meta::latest_migration(client).await?
                && m.id == st.id
                && m.shadow_oid.is_some_and(|s| s != oid)
            {
                return Ok(Some(format!(
                    "the shadow schema is not the one migration {} created; run `pgshift abort` and prepare again",
                    st.id
                )));
            }
        }
        ShadowState::Absent => {
            return Ok(Some(
                "the shadow schema is gone; run `pgshift abort` and prepare again".into(),
            ));
        }
        ShadowState::Foreign => {
            return Ok(Some(
                "the schema named shadow was not created by pgshift".into(),
            ));
        }
    }
    let deferred: Vec<String> = st
        .extra
        .get("deferred_sql")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    match sync::fk_violations(client, &deferred).await {
        Ok(v) if v.is_empty() => {}
        Ok(v) => {
            return Ok(Some(format!(
                "foreign keys involving preserved tables do not match the destination's rows: {} (fix the rows, or swap with --allow-fk-violations)",
                v.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        Err(e) => return Ok(Some(format!("could not check foreign keys: {e:#}"))),
    }
    Ok(None)
}

/// The destination's record, with its `phase` and `error` columns (what
/// queries and other tools see) over the copies inside the JSON.
fn row_state(d: &meta::MigrationRow) -> MigrationState {
    let mut st = d.state.clone();
    st.phase = d.phase.clone();
    st.error = d.error.clone();
    st
}

pub async fn status(ctx: &Ctx) -> Result<StatusReport> {
    let settings = &ctx.settings;
    let dest = settings.require_dest()?;
    let client = connect(
        dest,
        "destination",
        &app_name(ctx.command),
        settings.connect_timeout,
    )
    .await?;
    let mut warnings = Vec::new();

    let file_state = match state_file::read(&settings.state_dir, dest.dbname()) {
        Ok(s) => s,
        Err(e) => {
            warnings.push(format!("ignoring the state file: {e:#}"));
            None
        }
    };
    let meta_ok = match meta::meta_exists(&client).await {
        Ok(b) => b,
        Err(e) => {
            warnings.push(format!("{e:#}"));
            false
        }
    };
    let db_row = if meta_ok {
        meta::latest_migration(&client).await?
    } else {
        None
    };
    let running = lock::holder(&client).await?.map(running_info);
    // Is the recorded run the one holding the lock, and alive? (A lock held by
    // another run, e.g. a rollback, says nothing about a crashed prepare.)
    let run_alive = |st: &MigrationState| {
        running.as_ref().is_some_and(|r| {
            r.alive != Some(false)
                && r.pid.is_none_or(|p| p == st.pid)
                && r.host.as_deref().is_none_or(|h| st.host.starts_with(h))
        })
    };

    // The record: (state, the record's own status word), and where it came from.
    let terminal = |s: &str| matches!(s, "swapped" | "aborted");
    let (record, record_from): (Option<(MigrationState, String)>, &str) = match (
        &file_state,
        &db_row,
    ) {
        (None, None) => (None, "none"),
        (Some(f), None) => (
            Some((f.clone(), f.status.as_str().to_string())),
            "state_file",
        ),
        (None, Some(d)) => (Some((row_state(d), d.status.clone())), "destination"),
        (Some(f), Some(d)) if f.id == d.id => {
            if terminal(&d.status) || d.state.updated_at >= f.updated_at {
                if terminal(&d.status) {
                    warnings.push(format!(
                        "the state file still records migration {} as {}, but the destination says {}; the state file is stale",
                        f.id, f.status, d.status
                    ));
                }
                (Some((row_state(d), d.status.clone())), "both")
            } else {
                (Some((f.clone(), f.status.as_str().to_string())), "both")
            }
        }
        (Some(f), Some(d)) if f.id < d.id => {
            warnings.push(format!(
                "the state file records migration {}, but the destination's latest is {}; using the destination's record (the state file is stale)",
                f.id, d.id
            ));
            (Some((row_state(d), d.status.clone())), "destination")
        }
        (Some(f), Some(_)) => (
            Some((f.clone(), f.status.as_str().to_string())),
            "state_file",
        ),
    };

    let shadow = shadow_info(&client).await?;
    let mut state = "idle".to_string();
    let mut record = record;
    if let Some((st, word)) = record.as_mut() {
        state = match word.as_str() {
            "preparing" | "swapping" if run_alive(st) => word.clone(),
            "preparing" => {
                let why = format!(
                    "the {} run (pid {} on {}) stopped during phase {} without recording a result",
                    st.command,
                    st.pid,
                    st.host,
                    st.phase.as_deref().unwrap_or("?")
                );
                if st.error.is_none() {
                    st.error = Some(why.clone());
                }
                warnings.push(why);
                "failed".into()
            }
            "swapping" => {
                if meta_ok && swap_committed(&client, st.id).await? {
                    warnings.push(format!(
                        "migration {} was swapped (its backup exists) but its run stopped before recording it",
                        st.id
                    ));
                    "idle".into()
                } else if shadow.ours && !shadow.empty {
                    warnings.push(format!(
                        "the swap of migration {} did not finish (its transaction was rolled back); the migration is still prepared",
                        st.id
                    ));
                    "prepared".into()
                } else {
                    "failed".into()
                }
            }
            "prepared" => "prepared".into(),
            "failed" => "failed".into(),
            _ => "idle".into(),
        };
    }

    let synced: Vec<SyncedTable> = match &record {
        Some((st, _)) if state == "prepared" || state == "preparing" || state == "swapping" => st
            .extra
            .get("sync")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let (preserved_tables, sync_problem) = preserved_health(&client, &synced).await?;

    // Leftovers: migration objects while nothing is prepared or running.
    let mut leftovers = LeftoverInfo::default();
    let busy = matches!(state.as_str(), "prepared" | "preparing" | "swapping");
    if !busy {
        let found = discard::find_leftovers(&client).await?;
        leftovers.shadow = shadow.ours && !shadow.empty;
        leftovers.triggers = found.triggers;
        if meta_ok {
            leftovers.helper_tables = found.helper_tables;
            leftovers.helper_functions = found.helper_functions;
        }
    }
    if let Some(r) = &running
        && r.alive == Some(false)
    {
        leftovers.dead_lock_holder = Some(format!(
            "{} holds the destination's lock, but pgshift pid {} on this host is no longer running; the server releases the lock when it notices the connection is gone (or: SELECT pg_terminate_backend({}))",
            r.holder,
            r.pid.unwrap_or(0),
            r.holder.backend_pid
        ));
    }
    leftovers.found = leftovers.shadow
        || !leftovers.triggers.is_empty()
        || !leftovers.helper_tables.is_empty()
        || leftovers.helper_functions > 0
        || leftovers.dead_lock_holder.is_some();
    if leftovers.found {
        leftovers.hint = Some(
            if leftovers.dead_lock_holder.is_some()
                && !leftovers.shadow
                && leftovers.triggers.is_empty()
            {
                "end the dead session holding the lock".into()
            } else {
                "run `pgshift abort` to remove them".into()
            },
        );
    }

    let running_now = running.as_ref().filter(|r| r.alive != Some(false));
    let blocked = match sync_problem {
        Some(p) if state == "prepared" => Some(p),
        _ => swap_verdict(&client, &state, record.as_ref(), running_now).await?,
    };

    let not_valid_foreign_keys: Vec<String> = client
        .query(
            "SELECT c.relname::text || '.' || con.conname::text FROM pg_catalog.pg_constraint con
               JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND con.contype = 'f' AND NOT con.convalidated
              ORDER BY 1",
            &[],
        )
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let backups = if meta_ok {
        meta::list_backups(&client).await?
    } else {
        Vec::new()
    };
    Ok(StatusReport {
        state,
        destination: dest.redacted(),
        record_from: record_from.to_string(),
        migration: record.as_ref().map(|(st, w)| migration_info(st, w)),
        shadow,
        preserved_tables,
        swap_allowed: blocked.is_none(),
        swap_blocked_reason: blocked,
        running,
        leftovers,
        backups: backups.len(),
        latest_backup: backups.first().map(|b| b.schema_name.clone()),
        not_valid_foreign_keys,
        warnings,
    })
}

pub async fn run(ctx: Ctx) -> Result<ExitCode> {
    let r = status(&ctx).await?;
    print(&ctx, &r)?;
    Ok(ExitCode::Ok)
}

fn short(rfc: &str) -> String {
    DateTime::parse_from_rfc3339(rfc)
        .map(|t| {
            t.with_timezone(&Utc)
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string()
        })
        .unwrap_or_else(|_| rfc.to_string())
}

fn print(ctx: &Ctx, r: &StatusReport) -> Result<()> {
    if ctx.settings.json {
        return output::print_json(r);
    }
    let mut lines: Vec<(&str, String)> = vec![("destination", r.destination.clone())];
    lines.push(("state", r.state.clone()));
    if let Some(m) = &r.migration {
        lines.push((
            "migration",
            format!(
                "{} ({}; {} by pid {} on {})",
                m.id, m.status, m.command, m.pid, m.host
            ),
        ));
        lines.push(("started", short(&m.started_at)));
        lines.push(("updated", short(&m.updated_at)));
        if let Some(p) = &m.phase {
            let label = if r.state == "failed" {
                "failed in"
            } else {
                "phase"
            };
            lines.push((label, p.clone()));
        }
        if r.state == "failed"
            && let Some(e) = &m.error
        {
            lines.push(("error", e.clone()));
        }
        if !m.source.is_empty() {
            lines.push(("source", m.source.clone()));
        }
    }
    lines.push((
        "shadow",
        if !r.shadow.exists {
            "none".into()
        } else if r.shadow.empty {
            "empty".into()
        } else {
            format!(
                "{} tables, {}{}",
                r.shadow.tables,
                human_bytes(r.shadow.size_bytes),
                if r.shadow.ours {
                    ""
                } else {
                    " (not pgshift's)"
                }
            )
        },
    ));
    if !r.preserved_tables.is_empty() {
        let names: Vec<String> = r
            .preserved_tables
            .iter()
            .map(|p| match &p.health {
                Some(h) => format!(
                    "{}: triggers {}, {} pending, {} rows in public, {} in shadow",
                    p.name,
                    if h["triggers_ok"] == true {
                        "ok"
                    } else {
                        "BROKEN"
                    },
                    h["pending"],
                    h["rows_public"],
                    h["rows_shadow"]
                ),
                None => format!("{} (sync health not available)", p.name),
            })
            .collect();
        lines.push(("preserved", names.join("; ")));
    }
    if !r.not_valid_foreign_keys.is_empty() {
        lines.push((
            "NOT VALID",
            format!("foreign keys {}", r.not_valid_foreign_keys.join(", ")),
        ));
    }
    lines.push((
        "swap now",
        match &r.swap_blocked_reason {
            None => "allowed".into(),
            Some(why) => format!("not allowed: {why}"),
        },
    ));
    if let Some(run) = &r.running {
        lines.push(("running", run.holder.to_string()));
    }
    let mut left = Vec::new();
    if r.leftovers.shadow {
        left.push("a shadow schema with objects".to_string());
    }
    if !r.leftovers.triggers.is_empty() {
        left.push(format!(
            "pgshift triggers ({})",
            r.leftovers.triggers.join(", ")
        ));
    }
    if !r.leftovers.helper_tables.is_empty() {
        left.push(format!(
            "helper tables ({})",
            r.leftovers.helper_tables.join(", ")
        ));
    }
    if r.leftovers.helper_functions > 0 {
        left.push(format!("{} helper functions", r.leftovers.helper_functions));
    }
    if let Some(d) = &r.leftovers.dead_lock_holder {
        left.push(d.clone());
    }
    lines.push((
        "leftovers",
        if left.is_empty() {
            "none".into()
        } else {
            format!(
                "{}; {}",
                left.join("; "),
                r.leftovers.hint.as_deref().unwrap_or("")
            )
        },
    ));
    lines.push((
        "backups",
        match &r.latest_backup {
            Some(b) => format!("{} (newest {b})", r.backups),
            None => "none".into(),
        },
    ));
    lines.push(("record", r.record_from.replace('_', " ")));
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &lines {
        println!("{:width$}  {v}", format!("{k}:"), width = width + 1);
    }
    if let Some(m) = &r.migration
        && !m.phases.is_empty()
        && r.state != "idle"
    {
        println!();
        let mut t = Table::new(["phase", "status", "duration", "detail"]).right(2);
        for p in &m.phases {
            t.row([
                p.name.clone(),
                p.status.clone(),
                p.duration_ms.map(human_ms).unwrap_or_else(|| "-".into()),
                p.detail.clone().unwrap_or_default(),
            ]);
        }
        t.print();
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names() {
        assert_eq!(
            parse_app_name("pgshift prepare pid=42 host=db-1"),
            (Some(42), Some("db-1".into()))
        );
        assert_eq!(parse_app_name("psql"), (None, None));
    }
}
