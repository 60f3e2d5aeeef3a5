//! Backup manifests: one row of `pgshift.backups` per backup schema (what it
//! holds, row counts, indexes, sequences, where it came from, timings), read
//! by `list`, `verify`, `rollback` and `cleanup` from any machine; and
//! describing a schema's tables for a manifest.
//!
//! A backup's name is `backup_<unix ms>`; the timestamp is its id.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

use crate::pg::ident::qualified;
use crate::pg::meta::{self, BACKUP_PREFIX, is_public_str, public_string};

/// One table in a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestTable {
    /// The live schema the table belongs to (absent = public).
    #[serde(default = "public_string", skip_serializing_if = "is_public_str")]
    pub schema: String,
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
    /// The keys the swap (or rollback) that made this backup created NOT
    /// VALID are still to be validated: written with the manifest at its
    /// COMMIT, removed once the validation after it has run, so that one
    /// killed during that validation (which can take long) is finished by
    /// the next swap or rollback ([`crate::swap::engine::finish_committed`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keys_pending: bool,
    /// A cleanup began emptying this backup in parts (too big to drop in
    /// one transaction) at this moment: until the schema is gone, part of it
    /// may be gone already (a later cleanup drops the rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropping_since: Option<DateTime<Utc>>,
    /// For rollback backups: the backup that was restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_at: Option<DateTime<Utc>>,
    /// Tables that stayed live in public when this backup was made (`rollback
    /// --keep-tables`): the backup has no copy of its own of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept_tables: Vec<String>,
    /// How the swap that made this backup moved the schemas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_mode: Option<crate::swap::mode::Mode>,
    /// Foreign keys removed from this backup's tables because they pointed out
    /// of the backup (at a table that stayed live); re-created when it is restored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detached_foreign_keys: Vec<ForeignKeyDef>,
    /// Every schema of the backup: the live schema it replaced and the backup
    /// schema that holds it. Absent in manifests of single-public backups
    /// (and of earlier versions): then `[{"live": "public", "backup": schema}]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<SchemaMap>,
    /// The write counters of the tables this operation made live in public,
    /// taken right after its COMMIT: a rollback of that public compares them
    /// to find writes it would discard. Absent in manifests of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_baseline: Option<crate::swap::impact::WriteBaseline>,
    /// The sequences the swap that made this backup fenced (carried over to
    /// the new public, stopped here at the value carried; `swap::fence`), as
    /// they were before: a rollback to this backup gives them back. Absent
    /// when none was, and in manifests of earlier versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fenced_sequences: Vec<crate::swap::fence::FencedSequence>,
}

/// One schema of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaMap {
    pub live: String,
    pub backup: String,
    /// The live schema did not exist before this backup was made (a schema
    /// only the source had, created by the swap): a rollback to this backup
    /// drops it again when it ends up empty. Absent (false) otherwise, and in
    /// manifests of earlier versions.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub created: bool,
}

impl Manifest {
    /// When a rollback restored this backup while keeping tables live: the
    /// backup's own copies of those tables are all that is left of it (its
    /// `tables`), and it is no version of the database to roll back to.
    /// (A rollback's backup records, as `restored_at`, when it restored
    /// another, before its COMMIT set `created_at`: not this.)
    pub fn restored_since(&self) -> Option<DateTime<Utc>> {
        self.restored_at.filter(|at| *at > self.created_at)
    }

    /// The steps after the COMMIT that made this backup have not run (yet:
    /// the run may still be at them, or it was killed): only they record the
    /// lock time and the row counts.
    pub fn steps_pending(&self) -> bool {
        !self.counts_recorded && self.lock_held_ms.is_none()
    }

    /// Every schema of the backup (public's alone for earlier manifests).
    pub fn schema_maps(&self) -> Vec<SchemaMap> {
        if self.schemas.is_empty() {
            vec![SchemaMap {
                live: crate::pg::meta::PUBLIC.to_string(),
                backup: self.schema.clone(),
                created: false,
            }]
        } else {
            self.schemas.clone()
        }
    }
}

impl ManifestTable {
    /// `name`, or `schema.name` outside public.
    pub fn display(&self) -> String {
        crate::pg::meta::table_display(&self.schema, &self.name)
    }
}

/// A foreign key, from `pg_constraint`'s columns (no SQL text), so it can be
/// re-created between other schemas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignKeyDef {
    pub name: String,
    /// The live schema of `table` (absent = public).
    #[serde(default = "public_string", skip_serializing_if = "is_public_str")]
    pub schema: String,
    pub table: String,
    /// The live schema of `ref_table` (absent = public).
    #[serde(default = "public_string", skip_serializing_if = "is_public_str")]
    pub ref_schema: String,
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

/// A cleanup begins emptying backup `ts` in parts (see
/// [`Manifest::dropping_since`]).
pub async fn mark_dropping(client: &impl GenericClient, ts: i64) -> Result<()> {
    client
        .execute(
            "UPDATE pgshift.backups
                SET manifest = manifest || pg_catalog.jsonb_build_object('dropping_since', $2::text)
              WHERE ts = $1 AND NOT manifest ? 'dropping_since'",
            &[&ts, &Utc::now().to_rfc3339()],
        )
        .await
        .context("recording that the backup is dropped in parts")?;
    Ok(())
}

/// Backup `ts` is whole again after all: a cleanup marked it before
/// emptying a backup it depends on ([`mark_dropping`]), and nothing of it
/// went.
pub async fn unmark_dropping(client: &impl GenericClient, ts: i64) -> Result<()> {
    client
        .execute(
            "UPDATE pgshift.backups SET manifest = manifest - 'dropping_since' WHERE ts = $1",
            &[&ts],
        )
        .await
        .context("recording that the backup is whole")?;
    Ok(())
}

/// The validation after the COMMIT that made backup `ts` has run (see
/// [`Manifest::keys_pending`]).
pub async fn keys_validated(client: &impl GenericClient, ts: i64) -> Result<()> {
    client
        .execute(
            "UPDATE pgshift.backups SET manifest = manifest - 'keys_pending' WHERE ts = $1",
            &[&ts],
        )
        .await
        .context("recording the validation of the backup's foreign keys")?;
    Ok(())
}

/// Write `m` as backup `m.timestamp`'s manifest, keeping the objects
/// recorded beside it ([`crate::backups::objects`]), which `m` does not carry.
pub async fn update_manifest(client: &impl GenericClient, m: &Manifest) -> Result<()> {
    let manifest = serde_json::to_value(m)?;
    client
        .execute(
            "UPDATE pgshift.backups
                SET manifest = $2::jsonb || CASE WHEN manifest ? 'objects'
                                                 THEN pg_catalog.jsonb_build_object('objects', manifest->'objects')
                                                 ELSE '{}'::jsonb END
              WHERE ts = $1",
            &[&m.timestamp, &manifest],
        )
        .await
        .context("updating the backup manifest")?;
    Ok(())
}

/// Write `m` as backup `m.timestamp`'s manifest, without the objects
/// recorded beside it (they no longer describe it: recorded again later).
pub async fn update_manifest_without_objects(
    client: &impl GenericClient,
    m: &Manifest,
) -> Result<()> {
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
/// The objects recorded beside each manifest are left out
/// ([`crate::backups::objects::recorded`] reads them).
pub async fn list_backups(client: &impl GenericClient) -> Result<Vec<BackupRow>> {
    if !meta::meta_exists(client).await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT ts, schema_name, created_at, kind, manifest - 'objects', last_verified_at, last_verify_ok
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

/// The schemas of every recorded backup (each manifest's schema and those of
/// its other live schemas), whether or not they still exist. Empty when the
/// pgshift schema does not exist. Does not read the manifests as a whole, so
/// an unreadable one does not stop the caller.
pub async fn backup_schemas(client: &impl GenericClient) -> Result<Vec<String>> {
    if !meta::meta_exists(client).await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT schema_name FROM pgshift.backups
             UNION
             SELECT s->>'backup' FROM pgshift.backups b,
                    pg_catalog.jsonb_array_elements(CASE WHEN pg_catalog.jsonb_typeof(b.manifest->'schemas') = 'array'
                                                         THEN b.manifest->'schemas' ELSE '[]' END) s
              WHERE s->>'backup' IS NOT NULL",
            &[],
        )
        .await
        .context("reading the backups' schemas from pgshift.backups")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The backup the swap of migration `id` made, if that swap committed.
pub async fn backup_of_migration(client: &impl GenericClient, id: i64) -> Result<Option<String>> {
    Ok(client
        .query_opt(
            "SELECT schema_name FROM pgshift.backups WHERE migration_id = $1 AND kind = 'swap'",
            &[&id],
        )
        .await
        .context("reading pgshift.backups")?
        .map(|r| r.get(0)))
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
    meta::backup_schema_for(ts, meta::PUBLIC)
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

/// A table of a schema as it is now: its indexes (with their validity) and
/// the sequences its columns own.
#[derive(Debug, Clone)]
pub struct TableFacts {
    pub name: String,
    /// (index name, `pg_index.indisvalid`), by name.
    pub indexes: Vec<(String, bool)>,
    pub sequences: Vec<String>,
}

/// Plain tables and partitions (partitioned parents hold no rows of their
/// own) of `schema`, not extension members, by name.
pub async fn table_facts(client: &impl GenericClient, schema: &str) -> Result<Vec<TableFacts>> {
    let rows = client
        .query(
            "SELECT c.relname::text,
                    COALESCE((SELECT array_agg(i.relname::text ORDER BY i.relname)
                                FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
                               WHERE x.indrelid = c.oid), '{}'),
                    COALESCE((SELECT array_agg(x.indisvalid ORDER BY i.relname)
                                FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
                               WHERE x.indrelid = c.oid), '{}'),
                    COALESCE((SELECT array_agg(s.relname::text ORDER BY s.relname)
                                FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class s ON s.oid = d.objid
                               WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
                                 AND d.refobjid = c.oid AND d.deptype IN ('a', 'i') AND s.relkind = 'S'
                                 AND s.relnamespace = c.relnamespace), '{}')
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind = 'r'
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass
                                 AND d.objid = c.oid AND d.deptype = 'e')
              ORDER BY c.relname",
            &[&schema],
        )
        .await
        .with_context(|| format!("describing the tables of {schema}"))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let names: Vec<String> = r.get(1);
            let valid: Vec<bool> = r.get(2);
            TableFacts {
                name: r.get(0),
                indexes: names.into_iter().zip(valid).collect(),
                sequences: r.get(3),
            }
        })
        .collect())
}

/// The tables of `schema` for a manifest ([`table_facts`]) and — when `count`
/// — their exact row counts.
pub async fn describe(
    client: &impl GenericClient,
    schema: &str,
    count: bool,
) -> Result<Vec<ManifestTable>> {
    let mut out = Vec::new();
    for t in table_facts(client, schema).await? {
        let rows = if count {
            count_rows(client, schema, &t.name).await?
        } else {
            None
        };
        out.push(ManifestTable {
            schema: crate::pg::meta::PUBLIC.to_string(),
            name: t.name,
            rows,
            checksum: None,
            indexes: t.indexes.into_iter().map(|(i, _)| i).collect(),
            sequences: t.sequences,
        });
    }
    Ok(out)
}

/// The tables of some schemas whose rows [`count_relation`] does not count,
/// by why: one query serves the dry runs' forecast ([`uncountable`]) and the
/// swap's account of the backup it recorded.
#[derive(Debug, Default)]
pub struct Uncounted {
    /// (schema, table, owner) of the tables this role may not read.
    pub unreadable: Vec<(String, String, String)>,
    /// (schema, table) of those whose rows row-level security hides from it.
    pub hidden: Vec<(String, String)>,
}

/// The tables and partitioned tables of `schemas` this role may not read,
/// or on which row-level security applies to it: [`count_relation`]'s two
/// reasons to count nothing, asked of all at once.
pub async fn uncounted(client: &impl GenericClient, schemas: &[String]) -> Result<Uncounted> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, pg_catalog.pg_get_userbyid(c.relowner)::text,
                    pg_catalog.has_table_privilege(c.oid, 'SELECT')
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p')
                AND (NOT pg_catalog.has_table_privilege(c.oid, 'SELECT')
                     OR pg_catalog.row_security_active(c.oid))
              ORDER BY 1, 2",
            &[&schemas],
        )
        .await
        .context("reading which tables this role may read")?;
    let mut out = Uncounted::default();
    for r in rows {
        let (schema, table): (String, String) = (r.get(0), r.get(1));
        if r.get::<_, bool>(3) {
            out.hidden.push((schema, table));
        } else {
            out.unreadable.push((schema, table, r.get(2)));
        }
    }
    Ok(out)
}

/// The tables of the live schemas `lives` that go into a new backup (not
/// those `stays` says stay live) and that [`uncounted`] finds: the swap or
/// rollback records no row count for them, so verify will not compare their
/// rows. Said by the dry runs, before it happens (h46a, h47a).
pub async fn uncountable(
    client: &impl GenericClient,
    lives: &[String],
    stays: impl Fn(&str, &str) -> bool,
) -> Result<Vec<String>> {
    let found = uncounted(client, lives).await?;
    let shown = crate::pg::meta::table_shown;
    let unreadable: Vec<String> = found
        .unreadable
        .iter()
        .filter(|(s, t, _)| !stays(s, t))
        .map(|(s, t, owner)| {
            format!(
                "{} (owned by {})",
                shown(s, t),
                crate::pg::ident::display_ident(owner)
            )
        })
        .collect();
    let hidden: Vec<String> = found
        .hidden
        .iter()
        .filter(|(s, t)| !stays(s, t))
        .map(|(s, t)| shown(s, t))
        .collect();
    let list = crate::prepare::preflight::list_some;
    Ok([
        (!unreadable.is_empty()).then(|| format!(
            "this role may not read {}: the backup will record no row count for them, so verify will not compare their rows (GRANT SELECT on them to this role first to have them counted)",
            list(&unreadable)
        )),
        (!hidden.is_empty()).then(|| format!(
            "row-level security applies to this role on {}: the backup will record no row count for them, so verify will not compare their rows (a role with BYPASSRLS, or their owner without FORCE ROW LEVEL SECURITY, counts them)",
            list(&hidden)
        )),
    ]
    .into_iter()
    .flatten()
    .collect())
}

/// `SELECT count(*) FROM ONLY schema.table`; see [`count_relation`].
pub async fn count_rows(
    client: &impl GenericClient,
    schema: &str,
    table: &str,
) -> Result<Option<i64>> {
    count_relation(client, &qualified(schema, table)).await
}

/// `SELECT count(*) FROM ONLY rel` (`rel` quoted SQL); None when row-level
/// security applies to this role on it (its policies would hide rows, and
/// pgshift's sessions run with `row_security = off`), or when this role may
/// not read it (a table of another role, h46a: the swap recorded no table
/// of its backup at all, and verify and rollback refused it): such a count
/// is not taken rather than taken wrong, or failing everything else.
pub async fn count_relation(client: &impl GenericClient, rel: &str) -> Result<Option<i64>> {
    let what = || format!("counting the rows of {rel}");
    let row = client
        .query_one(
            "SELECT pg_catalog.row_security_active(r), pg_catalog.has_table_privilege(r, 'SELECT')
               FROM (SELECT $1::text::regclass AS r) AS rel",
            &[&rel],
        )
        .await
        .with_context(what)?;
    let (hidden, readable): (bool, bool) = (row.get(0), row.get(1));
    if hidden || !readable {
        return Ok(None);
    }
    let sql = format!(
        "SELECT {} count(*) FROM ONLY {rel}",
        crate::pg::meta::OWN_STATEMENT
    );
    let n: i64 = client
        .query_one(sql.as_str(), &[])
        .await
        .with_context(what)?
        .get(0);
    Ok(Some(n))
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
