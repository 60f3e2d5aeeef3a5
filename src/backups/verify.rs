//! Checking a backup schema against its manifest and the objects recorded
//! beside it ([`crate::backups::objects`]) (`verify`, and `rollback` before
//! it restores anything), and the facts `list` shows about a backup.
//!
//! Only reads, except [`record`], which writes the outcome into the manifest
//! row (`last_verified_at`, `last_verify_ok`).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use itertools::Itertools;
use serde::Serialize;
use tokio_postgres::{Client, GenericClient};

use crate::backups::manifest::{self, BackupRow};
use crate::backups::objects;
use crate::error::UserError;
use crate::pg::meta::MARKER;

/// A backup reference as typed (`1752567000000` or `backup_1752567000000`),
/// or a usage error (exit 2).
pub fn parse_ref(text: &str) -> Result<i64> {
    manifest::parse_backup_ref(text).ok_or_else(|| {
        // The schema of another live schema in a backup of several
        // (`backup_<ts>_billing`, as `list` prints it): the backup goes as one.
        let part = text
            .trim()
            .strip_prefix(crate::pg::meta::BACKUP_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .filter(|(ts, other)| {
                !ts.is_empty() && ts.chars().all(|c| c.is_ascii_digit()) && !other.is_empty()
            });
        match part {
            Some((ts, _)) => UserError::new(format!(
                "{text:?} is not a backup name: a backup of several schemas goes by its first schema's name, so if this is one of a backup's other schemas, give {}{ts} (or {ts}), which is verified, restored and dropped as a whole; see `pgshift list`",
                crate::pg::meta::BACKUP_PREFIX
            )),
            None => UserError::new(format!(
                "{text:?} is not a backup: give its timestamp (unix milliseconds, e.g. 1752567000000) or its schema name (backup_1752567000000); see `pgshift list`"
            )),
        }
        .into()
    })
}

/// The backup a user named, or a usage error (exit 2) for text that is not a
/// timestamp or a timestamp without a manifest.
pub async fn find(client: &impl GenericClient, text: &str) -> Result<BackupRow> {
    let ts = parse_ref(text)?;
    let all = manifest::list_backups(client).await?;
    if let Some(b) = all.iter().find(|b| b.ts == ts) {
        return Ok(b.clone());
    }
    // A migration's id is unix milliseconds too, and `status` shows it: the
    // backup its swap made has a timestamp of its own.
    let made = all
        .iter()
        .find(|b| b.manifest.migration_id == Some(ts))
        .map(|b| {
            format!(
                " ({ts} is the id of the migration whose swap made backup {}: give its timestamp, {})",
                b.schema_name, b.ts
            )
        })
        .unwrap_or_default();
    Err(crate::user_error!(
        "there is no backup with timestamp {ts} on the destination{made}; see `pgshift list`"
    ))
}

/// The newest backup (`--latest`), or a usage error (exit 2) naming what
/// there was none `to` do.
pub async fn latest(client: &impl GenericClient, to: &str) -> Result<BackupRow> {
    manifest::list_backups(client)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| {
            UserError::new(format!("there are no backups on the destination to {to}")).into()
        })
}

/// What a backup is once a rollback restored it with kept tables: only the
/// backup's copies of those tables stay in it (the manifest lists them), and
/// it is no version of the database to roll back to.
pub fn restored_remnant(b: &BackupRow, at: &DateTime<Utc>) -> String {
    format!(
        "a rollback restored it at {}, keeping {} live: what is left of it is the backup's own copies of {} ({}), not a whole version of the database, so it cannot be rolled back to (cleanup drops it)",
        crate::output::rfc3339(at),
        if b.manifest.tables.len() == 1 {
            "a table"
        } else {
            "tables"
        },
        if b.manifest.tables.len() == 1 {
            "it"
        } else {
            "them"
        },
        b.manifest.tables.iter().map(|t| t.display()).join(", ")
    )
}

/// One way a backup differs from its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// The table concerned (empty for the schema itself).
    pub table: String,
    /// `missing_schema`, `missing_table`, `unexpected_table`, `row_count`,
    /// `checksum`, `missing_index`, `invalid_index`, `missing_sequence`,
    /// `missing_object`, `unexpected_object`, `unmarked_schema`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual: Option<String>,
    /// One line for people, naming the table and the difference.
    pub message: String,
}

impl VerifyReport {
    /// A difference in `table` (empty for the schema itself) of `kind`:
    /// what the manifest records (`expected`) against what is there
    /// (`actual`).
    fn differ(
        &mut self,
        table: &str,
        kind: &str,
        expected: Option<&str>,
        actual: Option<&str>,
        message: String,
    ) {
        self.differences.push(Difference {
            table: table.to_string(),
            kind: kind.to_string(),
            expected: expected.map(str::to_string),
            actual: actual.map(str::to_string),
            message,
        });
    }

    /// A difference about something the manifest records (`expected`).
    fn recorded(&mut self, table: &str, kind: &str, expected: &str, message: String) {
        self.differ(table, kind, Some(expected), None, message);
    }
}

/// One table as checked.
#[derive(Debug, Clone, Serialize)]
pub struct TableCheck {
    pub name: String,
    pub expected_rows: Option<i64>,
    pub rows: Option<i64>,
    /// How many of the indexes the manifest recorded are there and valid.
    pub indexes: usize,
    /// How many of the owned sequences the manifest recorded are there.
    pub sequences: usize,
    pub ok: bool,
}

/// How many objects besides the tables were recorded, and found.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ObjectCount {
    pub recorded: usize,
    pub found: usize,
}

/// What `verify` reports.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub timestamp: i64,
    pub schema: String,
    pub ok: bool,
    pub verified_at: DateTime<Utc>,
    pub tables: Vec<TableCheck>,
    pub differences: Vec<Difference>,
    /// A migration of several schemas: each live schema and its backup
    /// schema (absent for public alone).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<crate::backups::manifest::SchemaMap>,
    /// What could not be checked (absent when everything could): a manifest
    /// without recorded row counts lists no tables to compare.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The objects besides the tables ([`objects`]): how many were recorded
    /// and how many of them are there (absent when none were compared).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects: Option<ObjectCount>,
    /// The manifest had tables to compare: the outcome is worth recording
    /// (not while the run that made the backup has yet to record them).
    #[serde(skip)]
    pub recordable: bool,
}

impl VerifyReport {
    /// `t: rows 5 != 4; u: missing` — the differences on one line.
    pub fn summary(&self) -> String {
        self.differences
            .iter()
            .map(|d| d.message.clone())
            .join("; ")
    }
}

/// A table of the backup schema as it is now.
struct Present {
    indexes: BTreeMap<String, bool>,
    sequences: BTreeSet<String>,
}

/// Compare the backup schema with its manifest: every recorded table present
/// with its recorded row count (and checksum where recorded), its recorded
/// indexes present and valid (`pg_index.indisvalid`), its owned sequences
/// present, and no table the manifest does not know; then, for a backup
/// known to be whole, its other objects against those recorded.
pub async fn check(client: &Client, b: &BackupRow) -> Result<VerifyReport> {
    let mut report = VerifyReport {
        timestamp: b.ts,
        schema: b.schema_name.clone(),
        ok: true,
        verified_at: Utc::now(),
        tables: Vec::new(),
        differences: Vec::new(),
        schemas: b.manifest.schemas.clone(),
        warnings: Vec::new(),
        objects: None,
        recordable: !b.manifest.steps_pending(),
    };
    if let Some(since) = b.manifest.dropping_since {
        report.warnings.push(format!(
            "{} is partly dropped: a cleanup began dropping it in parts at {} and did not finish, so its missing tables are gone, not damaged; it cannot be restored, and the next cleanup whose --before covers it drops the rest",
            b.schema_name,
            crate::output::rfc3339(&since)
        ));
    }
    if let Some(at) = b.manifest.restored_since() {
        report
            .warnings
            .push(format!("{}: {}", b.schema_name, restored_remnant(b, &at)));
    }
    if b.manifest.steps_pending() {
        report.warnings.push(format!(
            "the {} that made {} has not recorded its tables yet (a {} still running records them after its COMMIT, else the next swap or rollback does): only that its schemas exist was checked, and this verification is not recorded; verify again then",
            b.kind, b.schema_name, b.kind
        ));
    } else if !b.manifest.counts_recorded {
        report.warnings.push(format!(
            "the manifest of {} recorded no tables (their row counts could not be taken after the swap): only that its schemas exist was checked",
            b.schema_name
        ));
    }
    readable(client, b).await?;
    // Its other objects, unless it is known not to be whole (said above).
    let whole = b.manifest.dropping_since.is_none() && b.manifest.restored_since().is_none();
    let objects = if whole && b.manifest.counts_recorded {
        let not_compared = |why: &str| {
            format!(
                "the manifest of {} records its tables but not its other objects ({why}): views, functions, types, columns, constraints, defaults and triggers were not compared",
                b.schema_name
            )
        };
        match objects::recorded(client, b.ts).await? {
            Some(Ok(recorded)) => Some(recorded),
            Some(Err(why)) => {
                report.warnings.push(not_compared(&why));
                None
            }
            None => {
                report.warnings.push(not_compared(
                    "written by an earlier version of pgshift, or they could not be recorded",
                ));
                None
            }
        }
    } else {
        None
    };
    // Every schema of the backup (one for a migration of public alone).
    for m in b.manifest.schema_maps() {
        check_schema(client, b, &m.live, &m.backup, &mut report).await?;
        if let Some(recorded) = objects.as_ref().and_then(|o| o.get(&m.backup)) {
            check_objects(client, b, &m.live, &m.backup, recorded, &mut report).await?;
        }
    }
    // A schema gone while verify read the others: a cleanup dropping the
    // backup, or a rollback restoring it, ran meanwhile (its manifest is
    // gone too), which is no damage to report.
    if report
        .differences
        .iter()
        .any(|d| d.kind == "missing_schema")
        && manifest::find_backup(client, b.ts).await?.is_none()
    {
        anyhow::bail!(
            "the backup changed while verify read it: {} and its manifest are gone (a cleanup or rollback that ran meanwhile dropped or restored it); see `pgshift list`",
            b.schema_name
        );
    }
    report.ok = report.differences.is_empty();
    Ok(report)
}

/// Check the backup schema `schema` (of live schema `live`) against the
/// manifest's tables of `live`. Tables are named as `live`'s (`name` in
/// public, `live.name` elsewhere).
async fn check_schema(
    client: &Client,
    b: &BackupRow,
    live: &str,
    schema: &str,
    report: &mut VerifyReport,
) -> Result<()> {
    let shown = |name: &str| crate::pg::meta::table_display(live, name);
    let Some(ours) = schema_marked(client, schema).await? else {
        report.recorded(
            "",
            "missing_schema",
            schema,
            format!("schema {schema} does not exist"),
        );
        return Ok(());
    };
    // Rollback and cleanup touch only a schema that carries pgshift's
    // marker: without it the backup can be neither restored nor dropped.
    if !ours {
        report.recorded(
            "",
            "unmarked_schema",
            schema,
            format!(
                "schema {schema} does not carry pgshift's marker comment (its comment was changed, or the schema replaced): rollback refuses it and cleanup skips it"
            ),
        );
    }
    let present = present_tables(client, schema).await?;
    // A pause for the test of a backup that changes while it is read.
    crate::migration::session::failpoint("verify-listed").await?;
    let tables: Vec<&manifest::ManifestTable> = b
        .manifest
        .tables
        .iter()
        .filter(|t| t.schema == live)
        .collect();
    for t in &tables {
        let name = shown(&t.name);
        let mut check = TableCheck {
            name: name.clone(),
            expected_rows: t.rows,
            rows: None,
            indexes: 0,
            sequences: 0,
            ok: true,
        };
        let before = report.differences.len();
        match present.get(&t.name) {
            None => report.recorded(
                &name,
                "missing_table",
                &name,
                format!("table {name} is missing"),
            ),
            Some(p) => {
                let counted = manifest::count_rows(client, schema, &t.name).await?;
                check.rows = counted;
                if t.rows.is_none() && b.manifest.counts_recorded {
                    report.warnings.push(format!(
                        "table {name}: the manifest has no row count (row-level security applied to the role that made the backup, or it may not read the table), so its rows were not compared"
                    ));
                }
                if let (Some(want), None) = (t.rows, counted) {
                    report.differ(
                        &name,
                        "row_count",
                        Some(&want.to_string()),
                        None,
                        format!(
                            "table {name}: its rows cannot be counted, row-level security applies to this role or it may not read the table (verify as a role with BYPASSRLS that may read it, or the table's owner without FORCE ROW LEVEL SECURITY)"
                        ),
                    );
                }
                if let (Some(want), Some(n)) = (t.rows, counted)
                    && want != n
                {
                    report.differ(
                        &name,
                        "row_count",
                        Some(&want.to_string()),
                        Some(&n.to_string()),
                        format!("table {name}: {n} rows, the manifest recorded {want}"),
                    );
                }
                if let Some(want) = &t.checksum {
                    let maps = b.manifest.schema_maps();
                    let lives: Vec<&str> = maps.iter().map(|m| m.live.as_str()).collect();
                    let path = crate::pg::settings::text_path(
                        maps.iter().map(|m| m.backup.as_str()),
                        &lives,
                    );
                    let got = crate::prepare::phases::own_checksum(client, &path, schema, &t.name)
                        .await?;
                    if &got != want {
                        let message = format!(
                            "table {name}: content checksum {got}, the manifest recorded {want}"
                        );
                        report.differ(&name, "checksum", Some(want), Some(&got), message);
                    }
                }
                for i in &t.indexes {
                    match p.indexes.get(i) {
                        None => {
                            let message = format!("table {name}: index {i} is missing");
                            report.recorded(&name, "missing_index", i, message)
                        }
                        Some(false) => {
                            let message = format!("table {name}: index {i} is not valid");
                            report.recorded(&name, "invalid_index", i, message)
                        }
                        Some(true) => check.indexes += 1,
                    }
                }
                for (i, valid) in &p.indexes {
                    if !valid && !t.indexes.contains(i) {
                        let message = format!("table {name}: index {i} is not valid");
                        report.differ(&name, "invalid_index", None, Some(i), message);
                    }
                }
                for s in &t.sequences {
                    if !p.sequences.contains(s) {
                        let message = format!("table {name}: sequence {s} is missing");
                        report.recorded(&name, "missing_sequence", s, message);
                    } else {
                        check.sequences += 1;
                    }
                }
            }
        }
        check.ok = report.differences.len() == before;
        report.tables.push(check);
    }
    let known: BTreeSet<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    // Without recorded counts the manifest may list no tables at all; then only
    // what it does list can be checked.
    if b.manifest.counts_recorded {
        for name in present.keys().filter(|n| !known.contains(n.as_str())) {
            let name = shown(name);
            let message = format!("table {name} is in the backup but not in its manifest");
            report.differ(&name, "unexpected_table", None, Some(&name), message);
        }
    }
    Ok(())
}

/// Compare the objects of backup schema `schema` (of live schema `live`)
/// besides its tables with those recorded after the COMMIT that made it
/// ([`objects`]). The objects of a relation that is itself missing (or
/// unexpected) are not listed again.
async fn check_objects(
    client: &Client,
    b: &BackupRow,
    live: &str,
    schema: &str,
    recorded: &[objects::SchemaObject],
    report: &mut VerifyReport,
) -> Result<()> {
    if !crate::pg::catalog::schema_exists(client, schema).await? {
        return Ok(());
    }
    let now = objects::list(client, schema).await?;
    let tables = b.manifest.tables.iter().filter(|t| t.schema == live);
    // The relations there were: those objects were recorded of, and tables.
    let mut known: BTreeSet<String> = recorded
        .iter()
        .filter_map(|o| o.relation().map(str::to_string))
        .collect();
    known.extend(tables.map(|t| t.name.clone()));
    let present = objects::relations(client, schema).await?;
    let recorded_keys: BTreeSet<(&str, &str)> = recorded.iter().map(|o| o.key()).collect();
    let now_keys: BTreeSet<(&str, &str)> = now.iter().map(|o| o.key()).collect();
    let missing = recorded.iter().filter(|o| {
        !now_keys.contains(&o.key()) && o.relation().is_none_or(|r| present.contains(r))
    });
    // Unrecorded objects by type and identity without their argument types'
    // schemas: one of them may be a missing one whose types moved.
    let mut unexpected: BTreeMap<(String, String), Vec<&objects::SchemaObject>> = BTreeMap::new();
    for o in now.iter().filter(|o| {
        !recorded_keys.contains(&o.key()) && o.relation().is_none_or(|r| known.contains(r))
    }) {
        unexpected.entry(o.loose_key()).or_default().push(o);
    }
    let table_of = |o: &objects::SchemaObject| {
        o.relation()
            .map(|r| crate::pg::meta::table_display(live, r))
            .unwrap_or_default()
    };
    // Only an object whose argument types' schema is gone (renamed) is
    // looked for without it: a function dropped and another created in the
    // backup is no rename.
    let missing: Vec<&objects::SchemaObject> = missing.collect();
    let named: Vec<String> = missing.iter().flat_map(|o| o.argument_schemas()).collect();
    let schemas = crate::pg::catalog::existing_schemas(client, &named).await?;
    let mut lost = 0;
    for o in missing {
        let moved = o.argument_schemas().iter().any(|s| !schemas.contains(s));
        if moved
            && let Some(same) = unexpected.get_mut(&o.loose_key())
            && same.pop().is_some()
        {
            continue;
        }
        lost += 1;
        let what = o.described();
        let message = format!("{what} is missing");
        report.recorded(&table_of(o), "missing_object", &what, message);
    }
    for o in unexpected.values().flatten() {
        let what = o.described();
        let message = format!("{what} is in the backup but not in its manifest");
        report.differ(
            &table_of(o),
            "unexpected_object",
            None,
            Some(&what),
            message,
        );
    }
    let count = report.objects.get_or_insert_with(ObjectCount::default);
    count.recorded += recorded.len();
    count.found += recorded.len() - lost;
    Ok(())
}

/// Tables of `schema` (as `manifest::describe` lists them) with their indexes'
/// validity and their owned sequences.
async fn present_tables(client: &Client, schema: &str) -> Result<BTreeMap<String, Present>> {
    Ok(manifest::table_facts(client, schema)
        .await?
        .into_iter()
        .map(|t| {
            let present = Present {
                indexes: t.indexes.into_iter().collect(),
                sequences: t.sequences.into_iter().collect(),
            };
            (t.name, present)
        })
        .collect())
}

/// Write the outcome into the manifest row (unless nothing could be
/// compared yet, [`VerifyReport::recordable`]).
pub async fn record(client: &impl GenericClient, r: &VerifyReport) -> Result<()> {
    if !r.recordable {
        return Ok(());
    }
    manifest::record_verification(client, r.timestamp, r.verified_at, r.ok).await
}

/// Facts about a backup schema as it is now.
#[derive(Debug, Clone, Default)]
pub struct SchemaFacts {
    pub exists: bool,
    /// The schema carries pgshift's marker comment.
    pub ours: bool,
    /// Tables, indexes, TOAST, sequences and materialized views, in bytes.
    pub size_bytes: i64,
}

/// The size of `schema` without waiting behind a session that holds its
/// tables (a running prepare's loads lock them): measured under a short
/// `lock_timeout`, else estimated from `pg_class.relpages` (as of the last
/// VACUUM, ANALYZE or index build), which takes no lock. For `status`.
pub async fn schema_size_nowait(client: &Client, schema: &str) -> Result<i64> {
    client
        .batch_execute("BEGIN READ ONLY; SET LOCAL lock_timeout = '200ms'")
        .await
        .with_context(|| format!("measuring schema {schema}"))?;
    let measured = schema_facts(client, schema).await;
    client
        .batch_execute("ROLLBACK")
        .await
        .with_context(|| format!("measuring schema {schema}"))?;
    match measured {
        Ok(f) => Ok(f.size_bytes),
        Err(e)
            if e.downcast_ref::<tokio_postgres::Error>()
                .and_then(tokio_postgres::Error::code)
                == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
        {
            Ok(client
                .query_one(
                    "SELECT (COALESCE(sum(c.relpages + COALESCE(t.relpages, 0)), 0)
                             * pg_catalog.current_setting('block_size')::bigint)::bigint
                       FROM pg_catalog.pg_class c
                       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                       LEFT JOIN pg_catalog.pg_class t ON t.oid = c.reltoastrelid
                      WHERE n.nspname = $1 AND c.relkind IN ('r', 'm', 'S', 'i')",
                    &[&schema],
                )
                .await
                .with_context(|| format!("estimating the size of schema {schema}"))?
                .get(0))
        }
        Err(e) => Err(e),
    }
}

/// Refuses, naming the owner and the fix, when this role may not read the
/// backup: one of its schemas (a backup schema has no grants: its owner, a
/// member of the owner, or a superuser reads it), or a table in one whose
/// rows the manifest recorded (the schema may be this role's while a table
/// created in the live schema by another role after prepare is not; the
/// swap records no count of a table it may not read, and such a table is
/// not read, h46a). Missing schemas are left to the caller.
pub async fn readable(client: &impl GenericClient, b: &BackupRow) -> Result<()> {
    let maps = b.manifest.schema_maps();
    let schemas: Vec<String> = maps.iter().map(|m| m.backup.clone()).collect();
    let (read_schemas, read_tables): (Vec<String>, Vec<String>) = b
        .manifest
        .tables
        .iter()
        .filter(|t| t.rows.is_some() || t.checksum.is_some())
        .filter_map(|t| {
            let m = maps.iter().find(|m| m.live == t.schema)?;
            Some((m.backup.clone(), t.name.clone()))
        })
        .unzip();
    // 'schema' sorts before 'table': an unreadable schema is named first.
    let row = client
        .query_opt(
            "SELECT 'schema', n.nspname::text, '', pg_catalog.pg_get_userbyid(n.nspowner)::text, current_user::text
               FROM pg_catalog.pg_namespace n
              WHERE n.nspname = ANY($1) AND NOT pg_catalog.has_schema_privilege(n.oid, 'USAGE')
             UNION ALL
             SELECT 'table', n.nspname::text, c.relname::text, pg_catalog.pg_get_userbyid(c.relowner)::text, current_user::text
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              JOIN unnest($2::text[], $3::text[]) AS r(schema, name)
                ON r.schema = n.nspname AND r.name = c.relname
              WHERE NOT pg_catalog.has_table_privilege(c.oid, 'SELECT')
              ORDER BY 1, 2, 3 LIMIT 1",
            &[&schemas, &read_schemas, &read_tables],
        )
        .await
        .context("checking access to the backup")?;
    let Some(r) = row else { return Ok(()) };
    let (kind, schema, table, owner, me): (String, String, String, String, String) =
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
    let me = crate::pg::ident::display_ident(&me);
    let schema = crate::pg::ident::display_ident(&schema);
    if kind == "schema" {
        anyhow::bail!(
            "insufficient privileges: role {me} cannot read backup schema {schema}, which belongs to role {owner} (run as {owner}, or ALTER SCHEMA {schema} OWNER TO {me})"
        );
    }
    let name = format!("{schema}.{}", crate::pg::ident::display_ident(&table));
    let owner = crate::pg::ident::display_ident(&owner);
    anyhow::bail!(
        "insufficient privileges: role {me} cannot read table {name} of the backup, whose rows its manifest recorded; it belongs to role {owner}: have {owner} or a superuser GRANT SELECT ON {name} TO {me} ({owner} needs GRANT USAGE ON SCHEMA {schema} TO {owner} from the schema's owner first: a backup schema has no grants)"
    )
}

/// Whether `schema` carries pgshift's marker comment; None when there is no
/// such schema. Reads the catalog only ([`schema_facts`] also measures).
async fn schema_marked(client: &Client, schema: &str) -> Result<Option<bool>> {
    let row = client
        .query_opt(
            "SELECT COALESCE(obj_description(n.oid, 'pg_namespace'), '')
               FROM pg_catalog.pg_namespace n WHERE n.nspname = $1",
            &[&schema],
        )
        .await
        .with_context(|| format!("looking for schema {schema}"))?;
    Ok(row.map(|r| r.get::<_, String>(0).starts_with(MARKER)))
}

/// Size on disk and ownership of a schema.
pub async fn schema_facts(client: &impl GenericClient, schema: &str) -> Result<SchemaFacts> {
    let row = client
        .query_opt(
            "SELECT COALESCE(obj_description(n.oid, 'pg_namespace'), ''),
                    COALESCE((SELECT sum(pg_catalog.pg_total_relation_size(c.oid))
                                FROM pg_catalog.pg_class c
                               WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'm', 'S')), 0)::bigint
               FROM pg_catalog.pg_namespace n WHERE n.nspname = $1",
            &[&schema],
        )
        .await
        .with_context(|| format!("measuring schema {schema}"))?;
    Ok(match row {
        None => SchemaFacts::default(),
        Some(r) => SchemaFacts {
            exists: true,
            ours: r.get::<_, String>(0).starts_with(MARKER),
            size_bytes: r.get(1),
        },
    })
}
