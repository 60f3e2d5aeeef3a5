//! The record of one migration: what the state file holds and what the
//! destination keeps in `pgshift.migration` (one row per migration, the same
//! record as JSON next to a few columns other tools can query: `status`,
//! `phase`, `error`, `shadow_oid`). Both are written by the
//! [`Recorder`](super::session::Recorder) at every step, so `status` works
//! from any machine.
//!
//! Connection strings in a record are always redacted. What later phases need
//! from earlier ones (the preserved tables' sync, the deferred statements) are
//! typed fields of [`Details`], stored under the JSON key `extra` where
//! earlier versions kept a free-form map with the same keys.

use std::path::PathBuf;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

use crate::migration::lifecycle::{Phase, PhaseStatus, Status};
use crate::pg::conn::connspec::ConnSpec;
use crate::pg::ident::TableName;
use crate::pg::meta::{self, SHADOW_SCHEMA, is_public_str, public_string};
use crate::prepare::sync::SyncedTable;
use crate::process::this_host;
use crate::swap::impact::WriteBaseline;

/// Current layout version of the record (state file and JSON copy).
pub const STATE_VERSION: u32 = 1;

/// One phase of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub name: Phase,
    pub status: PhaseStatus,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One table of the migration, as loaded and validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableRecord {
    /// The live schema (absent in records and JSON when `public`).
    #[serde(default = "public_string", skip_serializing_if = "is_public_str")]
    pub schema: String,
    pub name: String,
    pub rows: i64,
    #[serde(default)]
    pub bytes: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(default)]
    pub preserved: bool,
    /// Migrated without its rows (`--exclude-table-data`): 0 rows expected.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub data_excluded: bool,
}

impl TableRecord {
    /// `name`, or `schema.name` outside public.
    pub fn display(&self) -> String {
        crate::pg::meta::table_display(&self.schema, &self.name)
    }
}

/// What later steps need from earlier ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Details {
    /// The preserved tables' sync (changelogs, triggers, functions): written
    /// by prepare's sync phase, finished by the swap.
    #[serde(default)]
    pub sync: Vec<SyncedTable>,
    /// Constraints, triggers and rules of preserved tables that the swap
    /// creates inside its transaction.
    #[serde(default)]
    pub deferred_sql: Vec<String>,
    /// The backup schema the swap made of the replaced public.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// Foreign keys the swap left NOT VALID (`table.constraint`).
    #[serde(default)]
    pub fk_not_valid: Vec<String>,
    /// The write counters of public's tables when prepare started (before the
    /// snapshot): the swap compares them to find writes it would discard.
    /// Absent in records of earlier versions; dropped from the record once
    /// the swap committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_baseline: Option<WriteBaseline>,
    /// Prepare gave relations the source's owners (`--keep-source-owners`):
    /// the swap then leaves owners as they are in the shadow.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_source_owners: bool,
    /// The shadow's structure when prepare finished
    /// (`catalog::structure_fingerprint`): the swap refuses a shadow whose
    /// tables, columns, constraints or indexes changed since. Absent in
    /// records of earlier versions (not checked then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_structure: Option<String>,
    /// Extensions this prepare created on the destination (in the live
    /// schemas, where the source has them). An abort or a failed prepare
    /// leaves them, and says so: the application may have started using them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions_created: Vec<String>,
}

/// The whole record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationState {
    pub version: u32,
    /// Migration id: unix milliseconds when the prepare started.
    pub id: i64,
    pub database: String,
    pub status: Status,
    /// The command that wrote this record last (prepare, swap, start, abort, ...).
    pub command: String,
    pub pid: u32,
    pub host: String,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The phase running now, or the one that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default)]
    pub phases: Vec<PhaseRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub source: String,
    pub dest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump_dir: Option<PathBuf>,
    /// True only once pg_dump exited 0 for `dump_dir`.
    #[serde(default)]
    pub dump_complete: bool,
    /// The schemas this migration moves (`--schemas`); absent = `["public"]`.
    #[serde(
        default = "crate::pg::meta::default_schemas",
        skip_serializing_if = "crate::pg::meta::is_default_schemas"
    )]
    pub schemas: Vec<String>,
    /// Preserved tables: `name` in public, `schema.name` (display form) elsewhere.
    #[serde(default)]
    pub preserved_tables: Vec<String>,
    /// Destination tables that stay in public as they are (`--keep-tables`
    /// of prepare and swap; partitions are found again by the swap).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_tables: Vec<String>,
    #[serde(default)]
    pub tables: Vec<TableRecord>,
    #[serde(default, rename = "extra")]
    pub details: Details,
}

impl MigrationState {
    /// Tables whose writes the swap keeps, for the impact report's
    /// discarded-writes gate: preserved tables (synchronised) and kept tables
    /// (they stay in public).
    pub fn writes_kept(&self) -> Vec<TableName> {
        let preserved = self
            .tables
            .iter()
            .filter(|t| t.preserved)
            .map(|t| TableName::in_schema(&t.schema, &t.name));
        // Records of a migration still preparing have no tables yet: their
        // preserved tables are public's.
        let listed = self.tables.iter().any(|t| t.preserved);
        let early = self
            .preserved_tables
            .iter()
            .filter(|_| !listed)
            .map(|key| self.table_of_key(key));
        preserved
            .chain(early)
            .chain(self.keep_tables.iter().map(|key| self.table_of_key(key)))
            .collect()
    }

    /// The table a key names (`name` in public, `schema.name` in another
    /// of the migration's schemas).
    pub fn table_of_key(&self, key: &str) -> TableName {
        TableName::of_key(key, |s| self.schemas.iter().any(|m| m == s))
    }

    /// A fresh record for a new migration started by `command`.
    pub fn new(id: i64, command: &str, source: Option<&ConnSpec>, dest: &ConnSpec) -> Self {
        let now = Utc::now();
        MigrationState {
            version: STATE_VERSION,
            id,
            database: dest.dbname().to_string(),
            status: Status::Preparing,
            command: command.to_string(),
            pid: std::process::id(),
            host: this_host(),
            started_at: now,
            updated_at: now,
            phase: None,
            phases: Vec::new(),
            error: None,
            source: source.map(|s| s.redacted()).unwrap_or_default(),
            dest: dest.redacted(),
            snapshot_at: None,
            dump_dir: None,
            dump_complete: false,
            schemas: crate::pg::meta::default_schemas(),
            preserved_tables: Vec::new(),
            keep_tables: Vec::new(),
            tables: Vec::new(),
            details: Details::default(),
        }
    }

    /// The record as this run continues it (`command`, pid, host).
    pub fn continued_by(mut self, command: &str) -> Self {
        self.command = command.to_string();
        self.pid = std::process::id();
        self.host = this_host();
        self
    }

    /// Phase durations in ms, for summaries and manifests.
    pub fn timings(&self) -> serde_json::Map<String, serde_json::Value> {
        self.phases
            .iter()
            .filter_map(|p| {
                p.duration_ms
                    .map(|ms| (p.name.to_string(), serde_json::Value::from(ms)))
            })
            .collect()
    }
}

/// One row of `pgshift.migration`: the record, with the row's own columns
/// (`status`, `phase`, `error`) applied over the JSON copy.
#[derive(Debug, Clone)]
pub struct MigrationRow {
    pub id: i64,
    pub shadow_oid: Option<u32>,
    pub state: MigrationState,
}

const UPSERT_MIGRATION: &str = "INSERT INTO pgshift.migration (id, status, command, phase, error, started_at, updated_at, pid, host, state)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
     ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, command = EXCLUDED.command,
         phase = EXCLUDED.phase, error = EXCLUDED.error, updated_at = EXCLUDED.updated_at,
         pid = EXCLUDED.pid, host = EXCLUDED.host, state = EXCLUDED.state";

/// Insert or update the record of a migration (its status is `st.status`).
pub async fn save_migration(client: &impl GenericClient, st: &MigrationState) -> Result<()> {
    let state = serde_json::to_value(st)?;
    let phase = st.phase.map(|p| p.as_str());
    client
        .execute(
            UPSERT_MIGRATION,
            &[
                &st.id,
                &st.status.as_str(),
                &st.command,
                &phase,
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

/// [`save_migration`] as SQL text, to travel with the swap's COMMIT in one
/// round trip (the record says `swapped` exactly when the swap committed).
/// Every value is a quoted literal.
pub fn save_migration_sql(st: &MigrationState) -> Result<String> {
    use crate::pg::ident::quote_literal;
    let opt = |v: Option<&str>| v.map(quote_literal).unwrap_or_else(|| "NULL".into());
    Ok(format!(
        "UPDATE pgshift.migration SET status = {}, command = {}, phase = {}, error = {}, updated_at = {}::timestamptz,
                pid = {}, host = {}, state = {}::jsonb
          WHERE id = {}",
        quote_literal(st.status.as_str()),
        quote_literal(&st.command),
        opt(st.phase.map(|p| p.as_str())),
        opt(st.error.as_deref()),
        quote_literal(&st.updated_at.to_rfc3339()),
        st.pid as i32,
        quote_literal(&st.host),
        quote_literal(&serde_json::to_string(st)?),
        st.id,
    ))
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
    if !meta::meta_exists(client).await? {
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
    let unreadable = "the destination's migration record is not readable";
    let mut state: MigrationState = serde_json::from_value(r.get(5)).context(unreadable)?;
    state.status = r
        .get::<_, String>(1)
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))
        .context(unreadable)?;
    if let Some(p) = r.get::<_, Option<String>>(2) {
        state.phase = Some(
            p.parse()
                .map_err(|e: String| anyhow::anyhow!(e))
                .context(unreadable)?,
        );
    } else {
        state.phase = None;
    }
    state.error = r.get(3);
    Ok(Some(MigrationRow {
        id: r.get(0),
        shadow_oid: r.get(4),
        state,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlier_records_still_read() {
        // A record as pgshift wrote it before the lifecycle was one type: a
        // finished migration's JSON said `idle`, details in a free-form map.
        let old = r#"{"version":1,"id":1,"database":"shop","status":"idle","command":"swap",
            "pid":4,"host":"h","started_at":"2025-07-15T08:30:00Z","updated_at":"2025-07-15T08:31:00Z",
            "phases":[{"name":"data","status":"done","started_at":"2025-07-15T08:30:00Z","duration_ms":5}],
            "source":"postgresql://u:***@h/db","dest":"postgresql://u:***@h/shop",
            "extra":{"deferred_sql":["ALTER TABLE x"],"backup":"backup_5","fk_not_valid":[]}}"#;
        let st: MigrationState = serde_json::from_str(old).unwrap();
        assert_eq!(st.status, Status::Swapped);
        assert_eq!(st.phases[0].name, Phase::Data);
        assert_eq!(st.phases[0].status, PhaseStatus::Done);
        assert_eq!(st.details.deferred_sql, vec!["ALTER TABLE x".to_string()]);
        assert_eq!(st.details.backup.as_deref(), Some("backup_5"));
        // Written back, the same keys come out.
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["extra"]["backup"], "backup_5");
        assert_eq!(v["status"], "swapped");
    }
}
