//! `pgshift abort`: drop a prepared (not yet swapped) migration — the shadow,
//! the sync triggers and pgshift's helper objects — mark its record `aborted`
//! and clear the state file. With nothing to abort it says so and exits 0.
//! The destination's public and the backups are never touched.

use anyhow::Result;
use chrono::Utc;
use serde::Serialize;
use tokio_postgres::Client;

use crate::commands::Ctx;
use crate::error::ExitCode;
use crate::migration::session::Session;
use crate::migration::state_file::Status;
use crate::output;
use crate::pg::meta::{self, MigrationRow, SHADOW_SCHEMA, ShadowState};
use crate::pg::objects;
use crate::prepare::discard::{self, Removed};

/// What `abort --json` prints (documented in README.md, "JSON output").
#[derive(Debug, Clone, Serialize)]
pub struct AbortReport {
    /// False when there was nothing to abort.
    pub aborted: bool,
    pub migration_id: Option<i64>,
    /// The record's status before the abort (`prepared`, `failed`, …).
    pub previous_status: Option<String>,
    pub removed: Removed,
    pub state_file_cleared: bool,
    pub dump_dir_removed: Option<String>,
    pub message: String,
}

/// Statuses of a migration that has not been swapped and is not finished.
fn is_open(status: &str) -> bool {
    matches!(status, "preparing" | "prepared" | "swapping" | "failed")
}

/// Did the swap of migration `id` commit (its backup manifest exists)?
pub async fn swap_committed(client: &Client, id: i64) -> Result<bool> {
    Ok(meta::list_backups(client)
        .await?
        .iter()
        .any(|b| b.manifest.migration_id == Some(id)))
}

/// An empty shadow that pgshift left after a swap (not something to abort).
pub async fn shadow_is_empty(client: &Client) -> Result<bool> {
    client.batch_execute("SET search_path = ''").await?;
    let objs = objects::movables(client, SHADOW_SCHEMA).await;
    client.batch_execute("RESET search_path").await?;
    Ok(objs?.is_empty())
}

pub async fn run(ctx: Ctx) -> Result<ExitCode> {
    let sess = Session::open(&ctx).await?;
    let client = &sess.control;
    let settings = &ctx.settings;
    let latest: Option<MigrationRow> = meta::latest_migration(client).await?;
    let shadow = meta::shadow_state(client).await?;
    let found = discard::find_leftovers(client).await?;
    let file_state = sess.state_file.load().unwrap_or_else(|e| {
        tracing::warn!("ignoring the unreadable state file: {e:#}");
        None
    });

    let mut open = latest.as_ref().filter(|m| is_open(&m.status)).cloned();
    if let Some(m) = &open
        && swap_committed(client, m.id).await?
    {
        // The swap committed but its run stopped before recording it.
        tracing::warn!(
            "migration {} was swapped (its backup exists); recording it as swapped, not aborting it",
            m.id
        );
        let mut st = m.state.clone();
        st.status = Status::Idle;
        st.phase = None;
        st.updated_at = Utc::now();
        meta::save_migration(client, &st, "swapped").await?;
        open = None;
    }
    let shadow_has_objects =
        matches!(shadow, ShadowState::Ours(_)) && !shadow_is_empty(client).await?;
    let leftovers = shadow_has_objects
        || !found.triggers.is_empty()
        || !found.helper_tables.is_empty()
        || found.helper_functions > 0;
    let file_open = file_state
        .as_ref()
        .is_some_and(|s| s.status != Status::Idle);

    if open.is_none() && !leftovers && !file_open {
        let report = AbortReport {
            aborted: false,
            migration_id: None,
            previous_status: latest.as_ref().map(|m| m.status.clone()),
            removed: Removed::default(),
            state_file_cleared: false,
            dump_dir_removed: None,
            message: "nothing to abort: no migration is prepared on the destination".into(),
        };
        print(&ctx, &report)?;
        return Ok(ExitCode::Ok);
    }

    let removed = if open.is_some() || leftovers {
        discard::remove_prepared(client, settings.lock_timeout, settings.swap_retries).await?
    } else {
        Removed::default()
    };
    let mut state = open
        .as_ref()
        .map(|m| m.state.clone())
        .or_else(|| file_state.clone().filter(|s| s.status != Status::Idle));
    if let (Some(m), Some(st)) = (&open, state.as_mut()) {
        st.status = Status::Idle;
        st.command = ctx.command.to_string();
        st.phase = None;
        st.updated_at = Utc::now();
        meta::save_migration(client, st, "aborted").await?;
        tracing::info!(id = m.id, "migration record marked aborted");
    }
    let mut dump_dir_removed = None;
    if let Some(dir) = state.as_ref().and_then(|s| s.dump_dir.clone())
        && !settings.keep_dump
        && dir.join("toc.dat").is_file()
    {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => dump_dir_removed = Some(dir.display().to_string()),
            Err(e) => tracing::warn!("could not remove the dump directory {}: {e}", dir.display()),
        }
    }
    sess.state_file.clear()?;
    let id = open
        .as_ref()
        .map(|m| m.id)
        .or_else(|| state.as_ref().map(|s| s.id));
    let message = match (&open, id) {
        (Some(m), _) => format!("aborted migration {} (it was {})", m.id, m.status),
        (None, Some(id)) => format!("cleared the leftovers of migration {id}"),
        (None, None) => "removed leftovers of an earlier migration".into(),
    };
    let report = AbortReport {
        aborted: true,
        migration_id: id,
        previous_status: open
            .as_ref()
            .map(|m| m.status.clone())
            .or_else(|| state.as_ref().map(|s| s.status.to_string())),
        removed,
        state_file_cleared: true,
        dump_dir_removed,
        message,
    };
    print(&ctx, &report)?;
    Ok(ExitCode::Ok)
}

fn print(ctx: &Ctx, r: &AbortReport) -> Result<()> {
    if ctx.settings.json {
        return output::print_json(r);
    }
    println!("{}", capitalised(&r.message));
    if r.removed.shadow {
        println!("  dropped the shadow schema");
    }
    for t in &r.removed.triggers {
        println!("  dropped trigger {t}");
    }
    for t in &r.removed.helper_tables {
        println!("  dropped helper table pgshift.{t}");
    }
    if r.removed.helper_functions > 0 {
        println!(
            "  dropped {} helper function{}",
            r.removed.helper_functions,
            if r.removed.helper_functions == 1 {
                ""
            } else {
                "s"
            }
        );
    }
    if let Some(d) = &r.dump_dir_removed {
        println!("  removed the dump directory {d}");
    }
    if r.aborted {
        println!("The destination's public was not touched.");
    }
    Ok(())
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}
