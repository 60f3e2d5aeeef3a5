//! The `pgshift` schema on the destination: pgshift's own records.
//!
//! - `pgshift.migration`: one row per migration (prepare..swap), holding the same
//!   record as the state file, so `status` works from any machine.
//! - `pgshift.backups`: one manifest per backup schema, read by `list`,
//!   `verify`, `rollback` and `cleanup`.
//!
//! Sync changelogs and trigger functions for preserved tables also live in this
//! schema while a migration is prepared. Nothing of pgshift's ever goes into
//! `public` or `shadow`.

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, GenericClient};

use crate::migration::state_file::MigrationState;

pub const META_SCHEMA: &str = "pgshift";
pub const SHADOW_SCHEMA: &str = "shadow";
pub const BACKUP_PREFIX: &str = "backup_";
/// Marker in the comments of schemas pgshift creates.
pub const MARKER: &str = "pgshift:";
const META_VERSION: i32 = 1;

const META_DDL: &str = r#"
CREATE SCHEMA pgshift;
COMMENT ON SCHEMA pgshift IS 'pgshift: migration records, backup manifests and sync helpers (managed by pgshift)';
CREATE TABLE pgshift.meta (version integer NOT NULL);
INSERT INTO pgshift.meta VALUES (1);
CREATE TABLE pgshift.migration (
    id          bigint PRIMARY KEY,
    status      text NOT NULL,
    command     text NOT NULL,
    phase       text,
    error       text,
    started_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    pid         integer,
    host        text,
    shadow_oid  oid,
    state       jsonb NOT NULL
);
CREATE TABLE pgshift.backups (
    ts               bigint PRIMARY KEY,
    schema_name      text NOT NULL UNIQUE,
    created_at       timestamptz NOT NULL,
    kind             text NOT NULL,
    migration_id     bigint,
    source           text,
    snapshot_at      timestamptz,
    manifest         jsonb NOT NULL,
    last_verified_at timestamptz,
    last_verify_ok   boolean
);
"#;

/// Is there a `pgshift` schema, and is it ours?
pub async fn meta_exists(client: &impl GenericClient) -> Result<bool> {
    let row = client
        .query_opt(
            "SELECT obj_description(n.oid, 'pg_namespace'),
                    to_regclass('pgshift.migration') IS NOT NULL AND to_regclass('pgshift.backups') IS NOT NULL
               FROM pg_catalog.pg_namespace n WHERE n.nspname = $1",
            &[&META_SCHEMA],
        )
        .await
        .context("looking for the pgshift schema")?;
    match row {
        None => Ok(false),
        Some(r) => {
            let comment: Option<String> = r.get(0);
            let tables: bool = r.get(1);
            if !comment.as_deref().unwrap_or("").starts_with(MARKER) || !tables {
                bail!(
                    "the destination has a schema named \"pgshift\" that pgshift did not create; rename or drop it first"
                );
            }
            Ok(true)
        }
    }
}

/// Create the `pgshift` schema and its tables if missing (idempotent; safe
/// against a concurrent creator because mutating runs hold the run lock).
pub async fn ensure_meta(client: &Client) -> Result<()> {
    if meta_exists(client).await? {
        let v: i32 = client
            .query_one("SELECT max(version) FROM pgshift.meta", &[])
            .await
            .context("reading pgshift.meta")?
            .get::<_, Option<i32>>(0)
            .unwrap_or(0);
        if v > META_VERSION {
            bail!(
                "the destination's pgshift schema (version {v}) was created by a newer pgshift; upgrade pgshift"
            );
        }
        return Ok(());
    }
    client
        .batch_execute(&format!("BEGIN;\n{META_DDL}\nCOMMIT;"))
        .await
        .context("creating the pgshift schema on the destination")?;
    Ok(())
}

/// One row of `pgshift.migration`.
#[derive(Debug, Clone)]
pub struct MigrationRow {
    pub id: i64,
    pub status: String,
    pub phase: Option<String>,
    pub error: Option<String>,
    pub shadow_oid: Option<u32>,
    pub state: MigrationState,
}

/// Insert or update the record of a migration.
pub async fn save_migration(
    client: &impl GenericClient,
    st: &MigrationState,
    status: &str,
) -> Result<()> {
    let state = serde_json::to_value(st)?;
    client
        .execute(
            "INSERT INTO pgshift.migration (id, status, command, phase, error, started_at, updated_at, pid, host, state)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, command = EXCLUDED.command,
                 phase = EXCLUDED.phase, error = EXCLUDED.error, updated_at = EXCLUDED.updated_at,
                 pid = EXCLUDED.pid, host = EXCLUDED.host, state = EXCLUDED.state",
            &[
                &st.id,
                &status,
                &st.command,
                &st.phase,
                &st.error,
                &st.started_at,
                &st.updated_at,
                &(st.pid as i32),
                &st.host,
                &state,
            ],
        )
        .await
        .context("recording the migration state on the destination")?;
    // Keep the history short.
    client
        .execute(
            "DELETE FROM pgshift.migration WHERE id NOT IN (SELECT id FROM pgshift.migration ORDER BY id DESC LIMIT 20)",
            &[],
        )
        .await?;
    Ok(())
}

/// Record which schema oid is the shadow this migration created.
pub async fn set_shadow_oid(client: &impl GenericClient, id: i64) -> Result<()> {
    client
        .execute(
            "UPDATE pgshift.migration SET shadow_oid = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $2) WHERE id = $1",
            &[&id, &SHADOW_SCHEMA],
        )
        .await
        .context("recording the shadow schema")?;
    Ok(())
}

/// The newest migration record, if any (and if the pgshift schema exists).
pub async fn latest_migration(client: &impl GenericClient) -> Result<Option<MigrationRow>> {
    if !meta_exists(client).await? {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT id, status, phase, error, shadow_oid, state FROM pgshift.migration ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .context("reading pgshift.migration")?;
    let Some(r) = row else { return Ok(None) };
    let state: serde_json::Value = r.get(5);
    let state: MigrationState = serde_json::from_value(state)
        .context("the destination's migration record is not readable")?;
    Ok(Some(MigrationRow {
        id: r.get(0),
        status: r.get(1),
        phase: r.get(2),
        error: r.get(3),
        shadow_oid: r.get(4),
        state,
    }))
}

/// What the destination's shadow schema is, if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShadowState {
    Absent,
    /// Created by pgshift (comment marker), with its oid.
    Ours(u32),
    /// Someone else's schema named shadow.
    Foreign,
}

pub async fn shadow_state(client: &impl GenericClient) -> Result<ShadowState> {
    let row = client
        .query_opt(
            "SELECT n.oid, obj_description(n.oid, 'pg_namespace') FROM pg_catalog.pg_namespace n WHERE n.nspname = $1",
            &[&SHADOW_SCHEMA],
        )
        .await
        .context("looking for the shadow schema")?;
    Ok(match row {
        None => ShadowState::Absent,
        Some(r) => {
            let oid: u32 = r.get(0);
            let comment: Option<String> = r.get(1);
            if comment.as_deref().unwrap_or("").starts_with(MARKER) {
                ShadowState::Ours(oid)
            } else {
                ShadowState::Foreign
            }
        }
    })
}

/// One table in a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestTable {
    pub name: String,
    /// Row count; None when it could not be recorded.
    pub rows: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(default)]
    pub indexes: Vec<String>,
    #[serde(default)]
    pub sequences: Vec<String>,
}

/// A backup's manifest, as stored in `pgshift.backups.manifest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub timestamp: i64,
    pub schema: String,
    pub created_at: DateTime<Utc>,
    /// `swap` (the public replaced by a migration) or `rollback` (the public replaced by a rollback).
    pub kind: String,
    #[serde(default)]
    pub migration_id: Option<i64>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub snapshot_at: Option<DateTime<Utc>>,
    /// The backup schema's own tables (the replaced public), with row counts taken
    /// once the swap committed (nothing writes a backup after that).
    pub tables: Vec<ManifestTable>,
    /// The tables that went live in public, with the counts validated at prepare.
    #[serde(default)]
    pub migrated_tables: Vec<ManifestTable>,
    #[serde(default)]
    pub preserved_tables: Vec<String>,
    #[serde(default)]
    pub timings_ms: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub lock_held_ms: Option<u64>,
    #[serde(default)]
    pub counts_recorded: bool,
    /// For rollback backups: the backup that was restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_at: Option<DateTime<Utc>>,
    /// Tables that stayed live in public when this backup was made (`rollback
    /// --keep-tables`): the backup has no copy of its own of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept_tables: Vec<String>,
    /// Foreign keys removed from this backup's tables because they pointed out
    /// of the backup (at a table that stayed live); re-created when it is restored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detached_foreign_keys: Vec<ForeignKeyDef>,
}

/// A foreign key, from `pg_constraint`'s columns (no SQL text), so it can be
/// re-created between other schemas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignKeyDef {
    pub name: String,
    pub table: String,
    pub columns: Vec<String>,
    pub ref_table: String,
    pub ref_columns: Vec<String>,
    /// `FULL`, `PARTIAL` or `SIMPLE`.
    pub match_type: String,
    /// `NO ACTION`, `RESTRICT`, `CASCADE`, `SET NULL`, `SET DEFAULT`.
    pub on_update: String,
    pub on_delete: String,
    /// `ON DELETE SET NULL (cols)` (PostgreSQL 15+).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_delete_columns: Vec<String>,
    pub deferrable: bool,
    pub initially_deferred: bool,
}

/// A row of `pgshift.backups`.
#[derive(Debug, Clone)]
pub struct BackupRow {
    pub ts: i64,
    pub schema_name: String,
    pub created_at: DateTime<Utc>,
    pub kind: String,
    pub manifest: Manifest,
    pub last_verified_at: Option<DateTime<Utc>>,
    pub last_verify_ok: Option<bool>,
}

pub async fn insert_backup(client: &impl GenericClient, m: &Manifest) -> Result<()> {
    let manifest = serde_json::to_value(m)?;
    client
        .execute(
            "INSERT INTO pgshift.backups (ts, schema_name, created_at, kind, migration_id, source, snapshot_at, manifest)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[&m.timestamp, &m.schema, &m.created_at, &m.kind, &m.migration_id, &m.source, &m.snapshot_at, &manifest],
        )
        .await
        .context("writing the backup manifest")?;
    Ok(())
}

/// [`insert_backup`] as SQL text, to travel with the swap's COMMIT in one round
/// trip. Every value is a quoted literal.
pub fn insert_backup_sql(m: &Manifest) -> Result<String> {
    use crate::pg::ident::quote_literal;
    let manifest = serde_json::to_string(m)?;
    let opt = |v: Option<String>| {
        v.map(|v| quote_literal(&v))
            .unwrap_or_else(|| "NULL".into())
    };
    Ok(format!(
        "INSERT INTO pgshift.backups (ts, schema_name, created_at, kind, migration_id, source, snapshot_at, manifest)
         VALUES ({}, {}, {}::timestamptz, {}, {}, {}, {}::timestamptz, {}::jsonb)",
        m.timestamp,
        quote_literal(&m.schema),
        quote_literal(&m.created_at.to_rfc3339()),
        quote_literal(&m.kind),
        m.migration_id.map(|i| i.to_string()).unwrap_or_else(|| "NULL".into()),
        opt(m.source.clone()),
        opt(m.snapshot_at.map(|t| t.to_rfc3339())),
        quote_literal(&manifest),
    ))
}

pub async fn update_manifest(client: &impl GenericClient, m: &Manifest) -> Result<()> {
    let manifest = serde_json::to_value(m)?;
    client
        .execute(
            "UPDATE pgshift.backups SET manifest = $2 WHERE ts = $1",
            &[&m.timestamp, &manifest],
        )
        .await
        .context("updating the backup manifest")?;
    Ok(())
}

/// All backups, newest first. Empty when the pgshift schema does not exist.
pub async fn list_backups(client: &impl GenericClient) -> Result<Vec<BackupRow>> {
    if !meta_exists(client).await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT ts, schema_name, created_at, kind, manifest, last_verified_at, last_verify_ok
               FROM pgshift.backups ORDER BY ts DESC",
            &[],
        )
        .await
        .context("reading pgshift.backups")?;
    rows.into_iter()
        .map(|r| {
            let manifest: serde_json::Value = r.get(4);
            let schema_name: String = r.get(1);
            Ok(BackupRow {
                ts: r.get(0),
                manifest: serde_json::from_value(manifest)
                    .with_context(|| format!("the manifest of {schema_name} is not readable"))?,
                schema_name,
                created_at: r.get(2),
                kind: r.get(3),
                last_verified_at: r.get(5),
                last_verify_ok: r.get(6),
            })
        })
        .collect()
}

/// One backup by its timestamp, if it has a manifest.
pub async fn find_backup(client: &impl GenericClient, ts: i64) -> Result<Option<BackupRow>> {
    Ok(list_backups(client).await?.into_iter().find(|b| b.ts == ts))
}

/// Remove a backup's manifest row.
pub async fn delete_backup(client: &impl GenericClient, ts: i64) -> Result<()> {
    client
        .execute("DELETE FROM pgshift.backups WHERE ts = $1", &[&ts])
        .await
        .context("removing the backup manifest")?;
    Ok(())
}

/// Record the outcome of a verification (`last_verified_at`, `last_verify_ok`).
pub async fn record_verification(
    client: &impl GenericClient,
    ts: i64,
    at: DateTime<Utc>,
    ok: bool,
) -> Result<()> {
    client
        .execute(
            "UPDATE pgshift.backups SET last_verified_at = $2, last_verify_ok = $3 WHERE ts = $1",
            &[&ts, &at, &ok],
        )
        .await
        .context("recording the verification in pgshift.backups")?;
    Ok(())
}

/// A fresh backup timestamp (unix ms, now or just after): no schema and no
/// manifest with it yet.
pub async fn fresh_backup_timestamp(client: &impl GenericClient) -> Result<i64> {
    let mut ts = chrono::Utc::now().timestamp_millis();
    loop {
        let taken: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)
                     OR (to_regclass('pgshift.backups') IS NOT NULL
                         AND EXISTS (SELECT 1 FROM pgshift.backups WHERE ts = $2))",
                &[&backup_schema_name(ts), &ts],
            )
            .await
            .context("choosing a backup timestamp")?
            .get(0);
        if !taken {
            return Ok(ts);
        }
        ts += 1;
    }
}

/// Backup schema name for a timestamp.
pub fn backup_schema_name(ts: i64) -> String {
    format!("{BACKUP_PREFIX}{ts}")
}

/// Parse what users pass as a backup: `1752567000000` or `backup_1752567000000`.
pub fn parse_backup_ref(text: &str) -> Option<i64> {
    let t = text.trim();
    let digits = t.strip_prefix(BACKUP_PREFIX).unwrap_or(t);
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_refs() {
        assert_eq!(parse_backup_ref("1752567000000"), Some(1752567000000));
        assert_eq!(
            parse_backup_ref("backup_1752567000000"),
            Some(1752567000000)
        );
        assert_eq!(parse_backup_ref("backup_x"), None);
        assert_eq!(parse_backup_ref("1;drop"), None);
        assert_eq!(backup_schema_name(5), "backup_5");
    }
}
