//! `swap` of a prepared migration: checks, catch-up of preserved tables, the
//! swap transaction (with the final replay, deferred constraints and the
//! manifest inside it), then the backup's row counts, foreign-key validation,
//! and clearing the state file and the dump directory.

use std::collections::HashSet;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use serde::Serialize;
use tokio_postgres::Client;

use crate::backups::manifest;
use crate::error::UserError;
use crate::migration::session::{Recorder, Session, app_name};
use crate::migration::state_file::Status;
use crate::pg::connect::{connect, describe_pg_error};
use crate::pg::meta::{self, Manifest, ManifestTable, SHADOW_SCHEMA, ShadowState};
use crate::prepare::sync::{self, FkViolation, SyncedTable};
use crate::swap::engine::{self, InTx, SwapOutcome, SwapRequest};

/// What a swap reports.
#[derive(Debug, Clone, Serialize)]
pub struct SwapReport {
    pub migration_id: i64,
    pub backup_schema: String,
    pub backup_timestamp: i64,
    pub lock_held_ms: u64,
    pub attempts: u32,
    pub moved_out: usize,
    pub moved_in: usize,
    pub tables: usize,
    pub preserved_tables: Vec<String>,
    pub fk_not_valid: Vec<String>,
    pub warnings: Vec<String>,
}

/// A dry run's output.
#[derive(Debug, Clone, Serialize)]
pub struct SwapPreview {
    pub migration_id: i64,
    pub backup_schema: String,
    pub move_out: Vec<String>,
    pub move_in: Vec<String>,
    pub sql: Vec<String>,
    pub fk_violations: Vec<FkViolation>,
}

/// The prepared migration on the destination, or a usage error.
pub async fn prepared(
    sess_control: &Client,
    timestamp: Option<&str>,
) -> Result<meta::MigrationRow> {
    let latest = meta::latest_migration(sess_control).await?;
    let shadow = meta::shadow_state(sess_control).await?;
    if let Some(m) = &latest
        && m.status == "swapping"
    {
        // An earlier swap of this migration died. Its transaction either
        // committed (a backup of this migration exists) or rolled back.
        let done: Option<String> = sess_control
            .query_opt(
                "SELECT schema_name FROM pgshift.backups WHERE migration_id = $1 AND kind = 'swap'",
                &[&m.id],
            )
            .await?
            .map(|r| r.get(0));
        if let Some(backup) = done {
            let mut st = m.state.clone();
            st.status = Status::Idle;
            st.phase = None;
            meta::save_migration(sess_control, &st, "swapped").await?;
            return Err(UserError::new(format!(
                "migration {} was already swapped into public (the old public is {backup}); nothing left to swap",
                m.id
            ))
            .into());
        }
        tracing::warn!(
            "an earlier swap of migration {} stopped before committing; the shadow is intact, swapping again",
            m.id
        );
    }
    let Some(m) = latest.filter(|m| {
        (m.status == "prepared" || m.status == "swapping") && matches!(shadow, ShadowState::Ours(_))
    }) else {
        return Err(UserError::new(
            "nothing is prepared on the destination: run `pgshift prepare` first",
        )
        .into());
    };
    if let ShadowState::Ours(oid) = shadow
        && m.shadow_oid.is_some_and(|s| s != oid)
    {
        bail!(
            "the shadow schema is not the one migration {} created; run `pgshift abort` and prepare again",
            m.id
        );
    }
    if let Some(ts) = timestamp {
        let want: i64 = ts.trim().parse().map_err(|_| {
            UserError::new(format!(
                "--timestamp {ts:?} is not a migration id (unix milliseconds)"
            ))
        })?;
        if want != m.id {
            return Err(UserError::new(format!(
                "--timestamp {want} does not match the prepared migration ({}); see `pgshift status`",
                m.id
            ))
            .into());
        }
    }
    Ok(m)
}

fn synced_of(m: &meta::MigrationRow) -> Result<Vec<SyncedTable>> {
    match m.state.extra.get("sync") {
        Some(v) => {
            serde_json::from_value(v.clone()).context("reading the preserved tables' sync record")
        }
        None => Ok(Vec::new()),
    }
}

fn deferred_of(m: &meta::MigrationRow) -> Result<Vec<String>> {
    match m.state.extra.get("deferred_sql") {
        Some(v) => serde_json::from_value(v.clone()).context("reading the deferred statements"),
        None => Ok(Vec::new()),
    }
}

/// Work inside the swap transaction for a migration.
struct MigrationTx<'a> {
    synced: &'a [SyncedTable],
    deferred: &'a [String],
    manifest: &'a Manifest,
    fks: Mutex<Vec<sync::CreatedFk>>,
}

impl InTx for MigrationTx<'_> {
    async fn before_moves(&self, client: &Client) -> Result<()> {
        sync::final_sync(client, self.synced).await?;
        let fks = sync::apply_deferred(client, self.deferred).await?;
        if let Ok(mut f) = self.fks.lock() {
            *f = fks;
        }
        Ok(())
    }

    async fn after_moves(&self, _client: &Client) -> Result<()> {
        Ok(())
    }

    fn commit_sql(&self) -> Result<Option<String>> {
        meta::insert_backup_sql(self.manifest).map(Some)
    }
}

/// Options beyond the settings.
#[derive(Debug, Clone, Default)]
pub struct SwapOptions {
    pub timestamp: Option<String>,
    pub keep_dump: bool,
    /// The shadow was validated moments ago by the same run (`start`).
    pub prevalidated: bool,
}

/// Plan without changing anything (`--dry-run`).
pub async fn preview(
    sess_control: &Client,
    opts: &SwapOptions,
    settings: &crate::config::Settings,
) -> Result<SwapPreview> {
    let m = prepared(sess_control, opts.timestamp.as_deref()).await?;
    let deferred = deferred_of(&m)?;
    let req = request(&m, "backup_<unix ms>".into(), settings);
    let (sql, out, inc) = engine::preview(sess_control, &req).await?;
    let fk_violations = sync::fk_violations(sess_control, &deferred).await?;
    Ok(SwapPreview {
        migration_id: m.id,
        backup_schema: req.backup,
        move_out: out
            .iter()
            .map(|m| format!("{} {}", m.kind, m.sql_name))
            .collect(),
        move_in: inc
            .iter()
            .map(|m| format!("{} {}", m.kind, m.sql_name))
            .collect(),
        sql,
        fk_violations,
    })
}

fn request(
    m: &meta::MigrationRow,
    backup: String,
    settings: &crate::config::Settings,
) -> SwapRequest {
    SwapRequest {
        incoming: SHADOW_SCHEMA.into(),
        backup,
        keep_in_public: HashSet::new(),
        recreate_incoming: true,
        expected_tables: m.state.tables.iter().map(|t| t.name.clone()).collect(),
        lock_timeout: settings.lock_timeout,
        statement_timeout: settings.statement_timeout,
        retries: settings.swap_retries,
    }
}

/// Swap the prepared migration on an open session.
pub async fn swap(sess: &Session, opts: &SwapOptions) -> Result<SwapReport> {
    let settings = &sess.ctx.settings;
    let m = prepared(&sess.control, opts.timestamp.as_deref()).await?;
    crate::migration::session::failpoint("swap").await?;
    let synced = synced_of(&m)?;
    let deferred = deferred_of(&m)?;
    let mut warnings = Vec::new();
    let mut rec = Recorder::resume(m.state.clone(), sess.ctx.command);

    if !opts.prevalidated {
        check_shadow_counts(&sess.control, &m).await?;
    }
    let replayed = sync::catch_up(&sess.control, &synced).await?;
    if replayed > 0 {
        tracing::info!(
            rows = replayed,
            "preserved tables caught up before the swap"
        );
    }
    let violations = sync::fk_violations(&sess.control, &deferred).await?;
    if !violations.is_empty() {
        let lines: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
        if !settings.allow_fk_violations {
            bail!(
                "foreign keys involving preserved tables do not match the destination's rows; nothing was changed. {} (fix the rows, or pass --allow-fk-violations to create these constraints NOT VALID)",
                lines.join("; ")
            );
        }
        for l in &lines {
            tracing::warn!("{l} (allowed: the constraint will be NOT VALID)");
        }
        warnings.extend(lines);
    }

    rec.state.status = Status::Swapping;
    rec.state.phase = Some("swap".into());
    rec.save(sess).await?;

    let ts = meta::fresh_backup_timestamp(&sess.control).await?;
    let backup = meta::backup_schema_name(ts);
    let manifest = Manifest {
        timestamp: ts,
        schema: backup.clone(),
        created_at: Utc::now(),
        kind: "swap".into(),
        migration_id: Some(m.id),
        source: Some(m.state.source.clone()),
        snapshot_at: m.state.snapshot_at,
        tables: Vec::new(),
        migrated_tables: m
            .state
            .tables
            .iter()
            .map(|t| ManifestTable {
                name: t.name.clone(),
                rows: (!t.preserved).then_some(t.rows),
                checksum: t.checksum.clone(),
                indexes: Vec::new(),
                sequences: Vec::new(),
            })
            .collect(),
        preserved_tables: m.state.preserved_tables.clone(),
        timings_ms: rec.timings(),
        lock_held_ms: None,
        counts_recorded: false,
        restored_from: None,
        restored_at: None,
        kept_tables: Vec::new(),
        detached_foreign_keys: Vec::new(),
    };
    let req = request(&m, backup.clone(), settings);
    let hook = MigrationTx {
        synced: &synced,
        deferred: &deferred,
        manifest: &manifest,
        fks: Mutex::new(Vec::new()),
    };
    let swap_client = connect(
        &sess.dest,
        "destination",
        &app_name(sess.ctx.command),
        settings.connect_timeout,
    )
    .await?;
    let outcome: SwapOutcome =
        match engine::execute(&swap_client, &req, &hook, &sess.ctx.cancel).await {
            Ok(o) => o,
            Err(e) => {
                // Nothing changed: the migration is still prepared.
                rec.state.status = Status::Prepared;
                rec.state.phase = None;
                rec.state.error = Some(format!("swap failed: {e:#}"));
                if let Err(se) = rec.save(sess).await {
                    tracing::warn!("could not record the failed swap: {se:#}");
                }
                return Err(e);
            }
        };
    tracing::info!(
        lock_held_ms = outcome.lock_held_ms,
        attempts = outcome.attempts,
        "swap committed"
    );
    let fks = hook.fks.lock().map(|f| f.clone()).unwrap_or_default();
    match engine::strays(&sess.control, &outcome).await {
        Ok(strays) if !strays.is_empty() => warnings.push(format!(
            "created in public while the swap waited for its locks, and left there: {}",
            strays.join(", ")
        )),
        Ok(_) => {}
        Err(e) => warnings.push(format!("could not check public after the swap: {e:#}")),
    }

    // After the commit nothing writes the backup any more: record its contents.
    let mut manifest = manifest;
    manifest.lock_held_ms = Some(outcome.lock_held_ms);
    let mut timings = rec.timings();
    timings.insert("swap".into(), serde_json::Value::from(outcome.lock_held_ms));
    manifest.timings_ms = timings;
    match manifest::describe(&sess.control, &backup, true).await {
        Ok(tables) => {
            manifest.tables = tables;
            manifest.counts_recorded = true;
        }
        Err(e) => warnings.push(format!("could not record the backup's row counts: {e:#}")),
    }
    if let Ok(migrated) = manifest::describe(&sess.control, "public", false).await {
        for t in manifest.migrated_tables.iter_mut() {
            if let Some(d) = migrated.iter().find(|d| d.name == t.name) {
                t.indexes = d.indexes.clone();
                t.sequences = d.sequences.clone();
            }
        }
    }
    meta::update_manifest(&sess.control, &manifest).await?;

    // Foreign keys involving preserved tables were created NOT VALID inside the
    // swap; validate them now (SHARE UPDATE EXCLUSIVE: the application's reads
    // and writes go on). Those with known violations stay NOT VALID (allowed).
    let mut not_valid = Vec::new();
    for fk in &fks {
        let name = format!("{}.{}", fk.table, fk.constraint);
        if violations
            .iter()
            .any(|v| v.constraint == fk.constraint && v.table == fk.table)
        {
            not_valid.push(name);
            continue;
        }
        if let Err(e) = sess.control.batch_execute(&fk.validate_sql("public")).await {
            warnings.push(format!(
                "foreign key {name} stays NOT VALID: {}",
                describe_pg_error(&e)
            ));
            not_valid.push(name);
        }
    }

    rec.state.status = Status::Idle;
    rec.state.phase = None;
    rec.state.error = None;
    rec.state
        .extra
        .insert("backup".into(), serde_json::Value::from(backup.clone()));
    rec.state
        .extra
        .insert("fk_not_valid".into(), serde_json::to_value(&not_valid)?);
    rec.state.updated_at = Utc::now();
    meta::save_migration(&sess.control, &rec.state, "swapped").await?;
    sess.state_file.clear()?;
    if let Some(dir) = &m.state.dump_dir
        && !opts.keep_dump
        && !settings.keep_dump
        && dir.join("toc.dat").is_file()
        && let Err(e) = std::fs::remove_dir_all(dir)
    {
        warnings.push(format!(
            "could not remove the dump directory {}: {e}",
            dir.display()
        ));
    }
    Ok(SwapReport {
        migration_id: m.id,
        backup_schema: backup,
        backup_timestamp: ts,
        lock_held_ms: outcome.lock_held_ms,
        attempts: outcome.attempts,
        moved_out: outcome.moved_out,
        moved_in: outcome.moved_in,
        tables: m.state.tables.len(),
        preserved_tables: m.state.preserved_tables.clone(),
        fk_not_valid: not_valid,
        warnings,
    })
}

/// The shadow still holds the rows prepare validated (someone may have touched it).
async fn check_shadow_counts(client: &Client, m: &meta::MigrationRow) -> Result<()> {
    let mut diffs = Vec::new();
    for t in m.state.tables.iter().filter(|t| !t.preserved) {
        match manifest::count_rows(client, SHADOW_SCHEMA, &t.name).await {
            Ok(n) if n == t.rows => {}
            Ok(n) => diffs.push(format!(
                "{}: prepared {} rows, shadow has {n}",
                t.name, t.rows
            )),
            Err(e) => diffs.push(format!("{}: {e:#}", t.name)),
        }
    }
    if !diffs.is_empty() {
        return Err(anyhow::Error::new(crate::error::VerificationFailed(
            format!(
                "the shadow changed since prepare; nothing was swapped: {} (run `pgshift abort` and prepare again)",
                diffs.join("; ")
            ),
        )));
    }
    Ok(())
}
