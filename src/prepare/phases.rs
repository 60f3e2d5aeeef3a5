//! `prepare`: the source's public schema (and the other schemas of
//! `--schemas`), restored into the destination's shadow schemas (`shadow`,
//! `pgshift_shadow_<schema>`: `pg::meta`) from one consistent snapshot,
//! indexed, analysed, validated, with the destination's owners and
//! privileges. One pg_dump covers every chosen schema; its SQL is remapped
//! in one pass (`dump::sql::remap_many`), each schema's references to its own
//! shadow. Tables are named by [`TableInfo::key`] (`name` in public,
//! `schema.name` elsewhere) wherever one name per table is needed. Casts
//! belong to no schema, so `pg_dump -n` leaves them out: those from or to a
//! type the migration creates are read from the catalog under the snapshot
//! and placed among the dump's entries as pg_dump would place them
//! ([`place_casts`]).
//!
//! Phases: snapshot, dump (schema only), schema (pre-data), data (streamed
//! COPY), indexes (post-data), sequences, sync (preserved tables: the
//! destination's rows copied in, then kept in sync), matviews (refreshed once
//! every table holds its rows, preserved ones included), analyze, privileges,
//! validate. A failure in any phase removes everything the
//! run created on the destination (the destination's public is never touched)
//! and records the phase and the error.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::dump::sql::{self, DefinedNames, Entry};
use crate::migration::lifecycle::{Phase, Status};
use crate::migration::record::{self, TableRecord};
use crate::migration::session::{Recorder, Session, app_name};
use crate::pg::batch;
use crate::pg::catalog::{self, SequenceInfo, TableInfo};
use crate::pg::conn::connect::{connect, describe_pg_error};
use crate::pg::conn::connspec::ConnSpec;
use crate::pg::exec::pg_error_as;
use crate::pg::ident::{TableName, qualified, quote_ident, quote_literal};
use crate::pg::lock::{Watched, naming_lock_waits, naming_lock_waits_from_a_new_session};
use crate::pg::locks_budget::{self, Budget};
use crate::pg::meta::{self, PUBLIC, SHADOW_SCHEMA, SchemaPair};
use crate::pg::objects;
use crate::pg::settings;
use crate::prepare::data::{self, CopyJob, DataPlan, Loaded};
use crate::prepare::discard;
use crate::prepare::filters::{self, Matched, Resolved, TableFilters};
use crate::prepare::postdata;
use crate::prepare::preflight::{self, ExtensionPlan, Leftover, Tools};
use crate::prepare::privileges;
use crate::prepare::progress::Progress;
use crate::prepare::sync;
use crate::process::{self, ChildSpec};
use crate::swap::engine::{self, Policy};
use crate::swap::impact;
use crate::swap::mode::{Mode, ModeRequest};

/// A table in the plan (dry run and report).
#[derive(Debug, Clone, Serialize)]
pub struct PlannedTable {
    /// `name` in public, `schema.name` elsewhere.
    pub name: String,
    /// Its schema (absent = public), as prepare's report and manifests say it.
    #[serde(skip_serializing_if = "crate::pg::meta::is_public_str")]
    pub schema: String,
    pub kind: String,
    pub bytes: i64,
    pub total_bytes: i64,
    pub estimated_rows: i64,
    /// The source never counted its rows (`reltuples` -1: never vacuumed or
    /// analyzed, PostgreSQL 14+): `estimated_rows` is 0 but unknown
    /// (`"estimate_unknown": true`, absent otherwise).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub estimate_unknown: bool,
    pub preserved: bool,
    /// Migrated without its rows (`--exclude-table-data`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub data_excluded: bool,
}

/// What a dry run prints.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub source: String,
    pub dest: String,
    pub tables: Vec<PlannedTable>,
    pub total_bytes: i64,
    pub phases: Vec<&'static str>,
    pub extensions: Vec<ExtensionPlan>,
    pub preserved_tables: Vec<String>,
    pub warnings: Vec<String>,
    pub leftovers: Option<String>,
    pub jobs: usize,
    /// The swap's lock budget as far as the plan can tell (the source's objects
    /// moving in, the destination's moving out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_lock_budget: Option<Budget>,
    /// What each table filter matched (only when filters were given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filters: Option<Matched>,
    /// The schemas migrated (only when other than `["public"]`).
    #[serde(skip_serializing_if = "meta::is_default_schemas")]
    pub schemas: Vec<String>,
}

/// What a successful prepare reports.
#[derive(Debug, Clone, Serialize)]
pub struct PrepareReport {
    pub migration_id: i64,
    pub status: &'static str,
    pub snapshot_at: Option<DateTime<Utc>>,
    pub tables: Vec<TableRecord>,
    pub total_rows: i64,
    pub phases_ms: serde_json::Map<String, serde_json::Value>,
    pub extensions_created: Vec<String>,
    pub deferred_statements: usize,
    pub warnings: Vec<String>,
    /// The lock-table slots the swap of this shadow will need, against the
    /// destination's lock table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_lock_budget: Option<Budget>,
    /// The schemas migrated (only when other than `["public"]`).
    #[serde(skip_serializing_if = "meta::is_default_schemas")]
    pub schemas: Vec<String>,
    /// What each table filter matched (only when filters were given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filters: Option<Matched>,
}

/// How the shadow is validated after the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Exact row counts (sent by the source = stored by the destination).
    Counts,
    /// Counts plus a content checksum per table.
    Checksums,
}

/// What the caller asks of a prepare.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    pub source: ConnSpec,
    pub dest: ConnSpec,
    /// Destination tables whose rows survive the migration.
    pub preserved_tables: Vec<TableName>,
    /// Parallel workers for the load, index builds and ANALYZE.
    pub jobs: usize,
    /// Where pg_dump writes the schema dump.
    pub dump_dir: PathBuf,
    /// The state file names `dump_dir` as its migration's, whose dump phase
    /// completed: one an earlier version made without the marker is
    /// pgshift's too ([`is_recorded_dump`]).
    pub dump_dir_recorded: bool,
    pub verify: Verify,
    /// Give shadow objects the source's owners where those roles exist.
    pub keep_source_owners: bool,
    /// `--no-tablespaces`: the SQL is rendered without tablespaces, so every
    /// object lands in the destination's default one (see
    /// [`preflight::check_tablespaces`]).
    pub no_tablespaces: bool,
    /// lock_timeout for DDL on tables the application uses (sync triggers, cleanup).
    pub lock_timeout: Duration,
    /// Retries of such DDL after a lock timeout.
    pub swap_retries: u32,
    /// The swap mode the lock budget at the end is computed for (the
    /// configured `swap_mode`; the swap chooses again when it runs).
    pub swap_mode: ModeRequest,
    /// `--exclude-table-data`, `--exclude-table`, `--keep-tables`.
    pub filters: TableFilters,
    /// The schemas to migrate (`--schemas`; `["public"]` by default).
    pub schemas: Vec<String>,
}

impl PrepareOptions {
    /// Each chosen schema with its shadow.
    pub fn pairs(&self) -> Vec<SchemaPair> {
        meta::schema_pairs(&self.schemas)
    }
}

/// Everything the read-only checks found.
pub struct Checked {
    pub tools: Tools,
    pub extensions: Vec<ExtensionPlan>,
    pub warnings: Vec<String>,
    /// Those of `warnings` the trials of the preserved tables gave: tried
    /// again once prepare has created the extensions they need, whose
    /// answers replace them.
    pub preserved_warnings: Vec<String>,
    pub leftover: Leftover,
    pub tables: Vec<TableInfo>,
    /// Only for a dry run (see [`plan_budget`]).
    pub swap_lock_budget: Option<Budget>,
    /// The table filters, matched.
    pub filters: Resolved,
}

/// [`check`], given up at the first interrupt: its trials of the preserved
/// rows take up to 10 s a column. The statement the destination runs is
/// cancelled (the trial's transaction rolls back), and the run ends as
/// interrupted.
pub async fn check_or_interrupted(
    settings: &PrepareOptions,
    sess_dest: &Client,
    src: &Client,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Checked> {
    tokio::select! {
        checked = check(settings, sess_dest, src) => checked,
        _ = cancel.cancelled() => {
            crate::pg::conn::connect::cancel_running(sess_dest, &settings.dest).await;
            crate::pg::conn::connect::cancel_running(src, &settings.source).await;
            Err(anyhow::Error::new(crate::error::Interrupted))
        }
    }
}

/// The read-only part: connections, versions, privileges, extensions,
/// leftovers, preserved-table validation. Changes nothing.
pub async fn check(settings: &PrepareOptions, sess_dest: &Client, src: &Client) -> Result<Checked> {
    let ctx_source = &settings.source;
    if ctx_source.same_server_and_db(&settings.dest)
        || catalog::server_identity(src).await? == catalog::server_identity(sess_dest).await?
    {
        crate::refuse!(
            "source and destination are the same database ({}); pgshift needs two different databases",
            ctx_source.redacted()
        );
    }
    let source_major = catalog::server_major(src).await?;
    let dest_major = catalog::server_major(sess_dest).await?;
    let tools = preflight::tools(source_major)?;
    // pg_dump connects to the source with the same settings: libpq before 16
    // reads sslrootcert=system as a file name, and would fail after the
    // snapshot is taken.
    if tools.major < 16
        && ctx_source.effective_root_cert() == Some(crate::pg::conn::connspec::RootCert::System)
    {
        crate::refuse!(
            "the source's sslrootcert=system needs pg_dump 16 or later, and {} is version {}; install newer client tools (PGSHIFT_PG_BINDIR) or give sslrootcert a CA file; nothing was changed",
            tools.pg_dump.display(),
            tools.major
        );
    }
    let mut warnings = Vec::new();
    // Only a dry run gets here with such a destination: a run's session
    // refused it already.
    if let Some(why) = crate::migration::session::takes_no_writes(sess_dest).await? {
        warnings.push(why.warning().to_string());
    }
    if dest_major < source_major {
        warnings.push(format!(
            "the destination runs PostgreSQL {dest_major}, older than the source ({source_major}); the schema may use features it lacks"
        ));
    }
    warnings.extend(preflight::check_source(src, &settings.schemas).await?);
    warnings.extend(preflight::locale_differences(src, sess_dest).await?);
    warnings.extend(preflight::connection_room(sess_dest).await?);
    // The swap renames the schemas when it can (kept tables and an
    // extension such as PostGIS in public make it move objects instead).
    let may_rename = settings.swap_mode != ModeRequest::Object
        && settings.filters.keep_tables.is_empty()
        && crate::swap::mode::rename_refusal(sess_dest, &settings.schemas)
            .await?
            .is_none();
    warnings.extend(preflight::check_dest(sess_dest, &settings.schemas, may_rename).await?);
    // A swap that must rename but cannot: say so before the prepare, not
    // after it.
    if settings.swap_mode == ModeRequest::Rename
        && let Some(why) = crate::swap::mode::rename_refusal(sess_dest, &settings.schemas).await?
    {
        crate::refuse!("{why}");
    }
    let src_exts = catalog::extensions(src).await?;
    let (extensions, ext_warnings) = preflight::plan_extensions(&src_exts, sess_dest).await?;
    warnings.extend(ext_warnings);
    warnings.extend(preflight::extension_config_rows(src, sess_dest).await?);
    let leftover = preflight::leftovers(sess_dest).await?;
    warnings.extend(preflight::check_schemas(&settings.schemas, src, sess_dest).await?);
    let mut tables = Vec::new();
    for s in &settings.schemas {
        tables.extend(catalog::tables(src, s).await?);
    }
    let preserved_warnings = sync::validate(
        &settings.preserved_tables,
        &settings.schemas,
        &tables,
        src,
        sess_dest,
    )
    .await?;
    warnings.extend(preserved_warnings.iter().cloned());
    let filters = filters::resolve(
        &settings.filters,
        &settings.preserved_tables,
        &settings.schemas,
        src,
        sess_dest,
    )
    .await?;
    warnings.extend(filters.warnings.iter().cloned());
    if may_rename {
        preflight::refuse_unowned_namesakes(
            sess_dest,
            src,
            &settings.schemas,
            &filters.not_migrated,
        )
        .await?;
    }
    warnings.extend(
        preflight::casts_left_behind(src, sess_dest, &settings.schemas, &filters.not_migrated)
            .await?,
    );
    preflight::refuse_missing_servers(src, sess_dest, &settings.schemas, &filters.not_migrated)
        .await?;
    warnings.extend(
        preflight::check_tablespaces(
            src,
            sess_dest,
            &settings.schemas,
            &filters.not_migrated,
            settings.no_tablespaces,
        )
        .await?,
    );
    if dest_major < source_major {
        let lacking = super::downgrade::lacking(
            src,
            &settings.schemas,
            source_major,
            dest_major,
            &filters.not_migrated,
        )
        .await?;
        if !lacking.is_empty() {
            crate::refuse!(
                "the destination runs PostgreSQL {dest_major}, older than the source ({source_major}), and cannot restore what the source's schema uses: {}; nothing was changed",
                lacking.join("; ")
            );
        }
    }
    let tables: Vec<_> = tables
        .into_iter()
        .filter(|t| !filters.not_migrated.contains(&t.key()))
        .collect();
    // The tables whose rows come from the source (preserved ones come from
    // the destination).
    let copied: Vec<u32> = tables
        .iter()
        .filter(|t| !filters.data_excluded.contains(&t.key()))
        .filter(|t| {
            !settings
                .preserved_tables
                .iter()
                .any(|p| p.schema_or_public() == t.schema && p.name == t.name)
        })
        .map(|t| t.oid)
        .collect();
    preflight::refuse_row_security(src, &copied).await?;
    Ok(Checked {
        tools,
        extensions,
        warnings,
        preserved_warnings,
        leftover,
        tables,
        swap_lock_budget: None,
        filters,
    })
}

impl Checked {
    /// For the dry-run plan: the swap's lock budget before anything is
    /// restored (a warning when it does not fit).
    pub async fn with_plan_budget(
        mut self,
        settings: &PrepareOptions,
        dest: &Client,
        src: &Client,
    ) -> Self {
        self.swap_lock_budget = budget_or_warn(
            plan_budget(dest, src, &settings.schemas, &settings.preserved_tables).await,
        );
        self.warnings.extend(
            self.swap_lock_budget
                .as_ref()
                .and_then(Budget::plan_warning),
        );
        self
    }

    /// For the dry-run plan: the kept tables' names (indexes, owned
    /// sequences, row and array types, statistics) that the source's
    /// objects share, which the swap will refuse once prepared
    /// (`pg::objects::name_clashes`), foreseen from the source's catalog.
    pub async fn with_foreseen_name_clashes(
        mut self,
        settings: &PrepareOptions,
        dest: &Client,
        src: &Client,
    ) -> Self {
        if self.filters.kept.is_empty() {
            return self;
        }
        match foreseen_name_clashes(dest, src, &settings.schemas, &self.filters).await {
            Ok(w) => self
                .warnings
                .extend(w.map(|c| format!("the swap will be refused once prepared: {c}"))),
            Err(e) => self.warnings.push(format!(
                "could not foresee the names the kept tables share with the source's: {e:#}"
            )),
        }
        self
    }

    /// For the dry-run plan: the warnings the privileges phase will give
    /// (new objects whose source owner this role may not give them to,
    /// grants to roles the destination lacks, …), foreseen from the source.
    pub async fn with_foreseen_privileges(
        mut self,
        settings: &PrepareOptions,
        dest: &Client,
        src: &Client,
    ) -> Self {
        for s in &settings.schemas {
            match privileges::foresee(
                dest,
                src,
                s,
                settings.keep_source_owners,
                &self.filters.not_migrated,
            )
            .await
            {
                Ok(w) => self.warnings.extend(w),
                Err(e) => self.warnings.push(format!(
                    "could not foresee the owners and grants of the shadow of {}: {e:#}",
                    crate::pg::ident::display_ident(s)
                )),
            }
        }
        self
    }
}

/// For `start`, before it prepares: the name clashes its swap would refuse
/// (those [`Checked::with_foreseen_name_clashes`] warns of), refused now,
/// before anything is made, rather than after a whole prepare. A failure to
/// foresee them is only a warning: the swap still checks.
pub async fn refuse_foreseen_name_clashes(
    settings: &PrepareOptions,
    checked: &Checked,
    dest: &Client,
    src: &Client,
) -> Result<()> {
    if checked.filters.kept.is_empty() {
        return Ok(());
    }
    match foreseen_name_clashes(dest, src, &settings.schemas, &checked.filters).await {
        Ok(None) => Ok(()),
        Ok(Some(clashes)) => anyhow::bail!(
            "the swap would be refused, so nothing was prepared: {clashes} (`pgshift start --dry-run` shows it)"
        ),
        Err(e) => {
            tracing::warn!(
                "could not foresee the names the kept tables share with the source's (the swap checks them): {e:#}"
            );
            Ok(())
        }
    }
}

/// Relation kinds a filter leaves out of the shadow (tables, views and
/// materialized views).
const LEFT_OUT_KINDS: &[&str] = &["r", "p", "f", "v", "m"];

/// [`Checked::with_foreseen_name_clashes`]: one warning naming each clash,
/// or none. The kept tables of every schema count in each (statistics may
/// be in another schema than their table's).
async fn foreseen_name_clashes(
    dest: &Client,
    src: &Client,
    schemas: &[String],
    filters: &Resolved,
) -> Result<Option<String>> {
    // Relations of `schema` on `client` (of `kinds`) whose keys are among
    // `keys`, with their partitions when `partitions` (the filters' keys
    // of what is left out hold them already).
    async fn listed(
        client: &Client,
        schema: &str,
        keys: &std::collections::BTreeSet<String>,
        kinds: &[&str],
        partitions: bool,
    ) -> Result<objects::KeptTables> {
        let rows = client
            .query(
                "SELECT c.relname::text FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relkind::text = ANY($2)",
                &[&schema, &kinds],
            )
            .await
            .map_err(|e| pg_error_as(e, "listing the kept and left-out tables"))?;
        let roots: Vec<String> = rows
            .into_iter()
            .map(|r| r.get::<_, String>(0))
            .filter(|t| keys.contains(&meta::table_display(schema, t)))
            .collect();
        let mut all: Vec<String> = if partitions {
            crate::swap::rollback::descendants(client, schema, &roots).await?
        } else {
            Vec::new()
        };
        all.extend(roots);
        Ok(all.into_iter().map(|t| (schema.to_string(), t)).collect())
    }
    let mut kept = objects::KeptTables::new();
    let mut left_out = objects::KeptTables::new();
    for s in schemas {
        kept.extend(listed(dest, s, &filters.kept, objects::TABLE_KINDS, true).await?);
        // Views and materialized views of a kept table's name are left out
        // too, and so are excluded ones.
        left_out.extend(listed(src, s, &filters.not_migrated, LEFT_OUT_KINDS, false).await?);
    }
    if kept.is_empty() {
        return Ok(None);
    }
    let mut found = Vec::new();
    for s in schemas {
        let staying = objects::names_in(dest, s, &kept, objects::TABLE_KINDS).await?;
        let coming = objects::names_in(src, s, &left_out, LEFT_OUT_KINDS).await?;
        found.extend(objects::clashes(s, s, &staying, &coming));
    }
    if found.is_empty() {
        return Ok(None);
    }
    let pairs: Vec<String> = found.iter().map(|c| c.item("the source's ")).collect();
    let alter = objects::NameClash::first_rename(&found)
        .map(|a| format!("rename the kept table's ({a}) or the source's"))
        .unwrap_or_else(|| "rename the source's".to_string());
    Ok(Some(format!(
        "the source's objects share names with what stays with the kept tables: {}; {alter} before preparing, or do not keep the table",
        preflight::list_some(&pairs)
    )))
}

/// The swap's lock budget before prepare, for an object-level swap (the
/// upper bound: the mode is chosen at swap time): the destination's public
/// moves out, the source's public (what the shadow will hold) moves in.
async fn plan_budget(
    dest: &Client,
    src: &Client,
    schemas: &[String],
    preserved: &[TableName],
) -> Result<Budget> {
    let (mut out, mut inc) = (Vec::new(), Vec::new());
    for s in schemas {
        out.extend(objects::movables(dest, s).await?);
        inc.extend(objects::movables(src, s).await?);
    }
    // The preserved tables: their replay locks the indexes of the live table
    // (the destination's) and of its shadow (the source's structure); their
    // deferred statements are at least the source's foreign keys to them
    // (one per leaf partition of a partitioned table).
    let names: Vec<String> = preserved
        .iter()
        .map(|t| qualified(t.schema.as_deref().unwrap_or(PUBLIC), &t.name))
        .collect();
    let (dest_oids, src_oids) = (oids_of(dest, &names).await?, oids_of(src, &names).await?);
    let deferred: i64 = src
        .query_one(
            "SELECT COALESCE(sum(CASE WHEN c.relkind = 'p'
                                      THEN (SELECT count(*) FROM pg_catalog.pg_partition_tree(c.oid) t WHERE t.isleaf) + 1
                                      ELSE 1 END), 0)::bigint
               FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
              WHERE k.contype = 'f' AND k.conparentid = 0 AND k.confrelid = ANY($1::pg_catalog.oid[])",
            &[&src_oids],
        )
        .await
        .context("counting the foreign keys to the preserved tables")?
        .get(0);
    let mut need = locks_budget::object_swap(
        dest,
        &out,
        src,
        &inc,
        preserved.len(),
        deferred.max(0) as usize,
        schemas.len(),
    )
    .await?
        + locks_budget::replay(dest, &dest_oids).await?
        + locks_budget::replay(src, &src_oids).await?;
    // The fence locks the live preserved tables' column sequences, and the
    // carry each sequence no column uses that both sides have: counted on
    // the destination alone, at most that many (`sync::swap_need` after
    // prepare; the plan left them out and read 20 slots under it).
    if !preserved.is_empty() {
        let mut sequences = HashSet::new();
        for oid in &dest_oids {
            sequences.extend(
                sync::column_sequences(dest, *oid)
                    .await?
                    .into_iter()
                    .map(|s| s.qual),
            );
        }
        let standalone: Vec<String> = crate::pg::exec::query_map(
            dest,
            "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(s.relname)
               FROM pg_catalog.pg_class s
               JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace
              WHERE s.relkind = 'S' AND n.nspname = ANY($1::text[])
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                 WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = s.oid
                                   AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i'))
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                 WHERE d.classid = 'pg_catalog.pg_attrdef'::regclass AND d.refobjid = s.oid
                                   AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype = 'n')",
            &[&schemas],
            "counting the sequences no column uses",
            |r| r.get::<_, String>(0),
        )
        .await?;
        sequences.extend(standalone);
        need.sync += sequences.len() as u64;
    }
    let mut b = Budget::evaluate(dest, need).await?;
    b.swap_mode = Some(Mode::Object.as_str().into());
    Ok(b)
}

/// The OIDs of the relations `names` (qualified) that exist on `c`.
async fn oids_of(c: &Client, names: &[String]) -> Result<Vec<u32>> {
    let rows = c
        .query(
            "SELECT pg_catalog.to_regclass(n)::pg_catalog.oid FROM pg_catalog.unnest($1::text[]) AS n",
            &[&names],
        )
        .await
        .context("looking up the preserved tables")?;
    Ok(rows
        .iter()
        .filter_map(|r| r.get::<_, Option<u32>>(0))
        .collect())
}

/// A budget that could not be computed is reported, not fatal.
fn budget_or_warn(b: Result<Budget>) -> Option<Budget> {
    b.map_err(|e| tracing::warn!("could not compute the swap's lock budget: {e:#}"))
        .ok()
}

/// Print or return the dry-run plan.
pub fn plan_report(settings: &PrepareOptions, checked: &Checked) -> PlanReport {
    let preserved: HashSet<String> = settings.preserved_tables.iter().map(key_of).collect();
    let tables: Vec<PlannedTable> = checked
        .tables
        .iter()
        .map(|t| PlannedTable {
            name: t.key(),
            schema: t.schema.clone(),
            kind: match t.relkind {
                'p' => "partitioned table",
                'm' => "materialized view",
                'f' => "foreign table",
                _ => "table",
            }
            .into(),
            bytes: t.bytes,
            total_bytes: t.total_bytes,
            estimated_rows: t.est_rows.max(0.0) as i64,
            estimate_unknown: t.est_rows < 0.0,
            preserved: preserved.contains(&t.key()),
            data_excluded: checked.filters.data_excluded.contains(&t.key()),
        })
        .collect();
    PlanReport {
        source: settings.source.redacted(),
        dest: settings.dest.redacted(),
        total_bytes: tables.iter().map(|t| t.total_bytes).sum(),
        tables,
        phases: Phase::PREPARE.iter().map(|p| p.as_str()).collect(),
        extensions: checked.extensions.clone(),
        preserved_tables: settings
            .preserved_tables
            .iter()
            .map(|t| t.to_string())
            .collect(),
        warnings: checked.warnings.clone(),
        leftovers: match &checked.leftover {
            Leftover::None => None,
            Leftover::StartOver(s) => Some(s.clone()),
        },
        jobs: settings.jobs,
        swap_lock_budget: checked.swap_lock_budget.clone(),
        filters: (!settings.filters.is_empty()).then(|| checked.filters.matched.clone()),
        schemas: settings.schemas.clone(),
    }
}

/// A preserved table's key: `name` in public, `schema.name` elsewhere (as
/// [`TableInfo::key`]).
fn key_of(t: &TableName) -> String {
    meta::table_display(t.schema_or_public(), &t.name)
}

/// State carried between phases.
struct Run<'a> {
    sess: &'a Session,
    opts: &'a PrepareOptions,
    id: i64,
    source: ConnSpec,
    tools: Tools,
    progress: &'a Progress,
    dump_dir: PathBuf,
    snapshot: Option<String>,
    snap_client: Option<Client>,
    /// The chosen schemas and their shadows.
    pairs: Vec<SchemaPair>,
    tables: Vec<TableInfo>,
    sequences: Vec<SequenceInfo>,
    /// (schema, sequence) -> the source's value.
    sequence_values: HashMap<(String, String), (i64, bool)>,
    /// (schema, name, populated), in dependency order within each schema.
    matviews: Vec<(String, String, bool)>,
    /// Per pair (same order): the names its schema defines.
    defined: Vec<DefinedNames>,
    /// Lock footprints of the source's relations (as shadow's), for batching.
    footprints: batch::Footprints,
    loaded: Vec<Loaded>,
    preserved: HashSet<String>,
    post: postdata::Plan,
    /// The table filters, matched at the checks.
    filters: Resolved,
    /// Relations pg_dump leaves out (quoted, qualified): tables not migrated
    /// and the sequences they own.
    dump_exclude: Vec<String>,
    /// What the phases found worth saying (logged, and in the report).
    warnings: Vec<String>,
    /// The statements that put back the definitions of the functions restored
    /// in their prepare-time form ([`prepare_time_functions`]).
    function_restores: Vec<String>,
    /// The source's casts the migration brings ([`catalog::CastInfo`]), read
    /// under the snapshot.
    casts: Vec<catalog::CastInfo>,
}

impl Run<'_> {
    /// The shadow of a chosen live schema.
    fn shadow_of(&self, live: &str) -> &str {
        self.pairs
            .iter()
            .find(|p| p.live == live)
            .map_or(SHADOW_SCHEMA, |p| p.shadow.as_str())
    }

    /// The key of a relation as the remapped SQL names it (its shadow schema).
    fn key_in_shadow(&self, schema: &str, name: &str) -> String {
        match self.pairs.iter().find(|p| p.shadow == schema) {
            Some(p) => meta::table_display(&p.live, name),
            None => meta::table_display(schema, name),
        }
    }

    /// A connection of prepare's own to the destination.
    async fn dest_client(&self) -> Result<Client> {
        connect(
            &self.sess.dest,
            "destination",
            &app_name("prepare"),
            self.sess.run.connect_timeout,
        )
        .await
    }
}

/// Run prepare on an open session. `rec` is a fresh record; on success its
/// status is `prepared`.
pub async fn run(
    sess: &Session,
    rec: &mut Recorder,
    settings: &PrepareOptions,
    checked: Checked,
    progress: &Progress,
) -> Result<PrepareReport> {
    let source = &settings.source;
    let mut warnings = checked.warnings.clone();
    // A swap or rollback that stopped after its COMMIT: finish its steps
    // first, as the next swap or rollback would (the backup this migration
    // makes becomes the newest, and its steps would be left for good).
    let finished = engine::finish_committed(&sess.control).await?;
    for line in finished.iter().flat_map(engine::Finished::lines) {
        tracing::warn!("{line}");
        warnings.push(line);
    }
    if let Leftover::StartOver(why) = &checked.leftover {
        tracing::warn!("{why}");
        warnings.push(why.clone());
        let removed = discard::remove_prepared(
            &sess.control,
            settings.lock_timeout,
            settings.swap_retries,
            Some(&sess.run.cancel),
            None,
        )
        .await?;
        tracing::info!(
            "removed leftovers of the earlier run: {}",
            removed.summary()
        );
    }
    for w in &checked.warnings {
        tracing::warn!("{w}");
    }
    let extensions_created =
        preflight::create_extensions(&sess.control, &checked.extensions).await?;
    rec.state.details.extensions_created = extensions_created.clone();
    // A preserved column of an extension's type that the destination did not
    // have could not be checked before: it is now.
    if !extensions_created.is_empty() && !settings.preserved_tables.is_empty() {
        tracing::info!(
            "trying the preserved tables' rows again, now that the extensions they may need exist"
        );
        let checked_again = async {
            let src = connect(
                source,
                "source",
                &app_name("prepare"),
                sess.run.connect_timeout,
            )
            .await?;
            let mut tables = Vec::new();
            for s in &settings.schemas {
                tables.extend(catalog::tables(&src, s).await?);
            }
            sync::validate(
                &settings.preserved_tables,
                &settings.schemas,
                &tables,
                &src,
                &sess.control,
            )
            .await
        };
        match checked_again.await {
            // The second answers replace the first (a trial that could not
            // run without the extension may have run now).
            Ok(again) => {
                for w in again
                    .iter()
                    .filter(|w| !checked.preserved_warnings.contains(w))
                {
                    tracing::warn!("{w}");
                }
                warnings.retain(|w| !checked.preserved_warnings.contains(w));
                warnings.extend(again);
            }
            Err(e) => {
                tracing::warn!("{}", discard::extensions_left(&extensions_created));
                return Err(e);
            }
        }
    }
    meta::ensure_meta(&sess.control).await?;
    rec.meta_ready = true;
    rec.state.preserved_tables = settings.preserved_tables.iter().map(key_of).collect();
    rec.state.schemas = settings.schemas.clone();
    rec.state.keep_tables = checked.filters.kept.iter().cloned().collect();
    let dump_dir = settings.dump_dir.clone();
    rec.state.dump_dir = Some(dump_dir.clone());
    // Before the snapshot: every write to public from now on is counted
    // (the swap refuses to discard writes to tables that are not preserved).
    rec.state.details.write_baseline =
        Some(impact::take_baseline(&sess.control, &settings.schemas).await?);
    rec.set_status(sess, Status::Preparing).await?;

    let mut run = Run {
        sess,
        opts: settings,
        id: rec.state.id,
        source: source.clone(),
        tools: checked.tools.clone(),
        progress,
        dump_dir,
        snapshot: None,
        snap_client: None,
        pairs: settings.pairs(),
        tables: Vec::new(),
        sequences: Vec::new(),
        sequence_values: HashMap::new(),
        matviews: Vec::new(),
        defined: Vec::new(),
        footprints: batch::Footprints::default(),
        loaded: Vec::new(),
        preserved: settings.preserved_tables.iter().map(key_of).collect(),
        post: postdata::Plan::default(),
        filters: checked.filters.clone(),
        dump_exclude: Vec::new(),
        warnings: Vec::new(),
        function_restores: Vec::new(),
        casts: Vec::new(),
    };
    // A phase that waits for a lock on the destination (an index build
    // behind a long transaction, the sync's triggers) names whom it waits for.
    let watched = Watched {
        side: "destination",
        sessions: &[app_name("prepare"), app_name(sess.run.command)],
    };
    let lock_session = Some(sess.lock_session());
    let result = naming_lock_waits(lock_session, &watched, phases(&mut run, rec)).await;
    // The snapshot session is no longer needed either way.
    if let Some(c) = run.snap_client.take() {
        let _ = c.batch_execute("COMMIT").await;
    }
    match result {
        Ok(deferred) => {
            rec.state.status = Status::Prepared;
            rec.state.phase = None;
            rec.save(sess).await?;
            // As `status` sees it: the kept tables, the preserved tables'
            // final sync, in the mode the swap would choose.
            let row = record::MigrationRow {
                id: rec.state.id,
                shadow_oid: None,
                state: rec.state.clone(),
            };
            let policy = Policy {
                mode: run.opts.swap_mode,
                ..Policy::default()
            };
            let outlook = crate::swap::cutover::outlook(&sess.control, &row, policy).await;
            // What the swap will refuse (in the words of `status`).
            let unmovable = outlook.as_ref().ok().and_then(|o| {
                o.unmovable
                    .reason("the swap")
                    .map(|why| format!("the swap will be refused as things stand: {why}"))
            });
            let swap_lock_budget = budget_or_warn(outlook.map(|o| o.lock_budget));
            for w in unmovable
                .into_iter()
                .chain(swap_lock_budget.as_ref().and_then(Budget::warning))
            {
                tracing::warn!("{w}");
                warnings.push(w);
            }
            warnings.append(&mut run.warnings);
            let total_rows = rec.state.tables.iter().map(|t| t.rows).sum();
            Ok(PrepareReport {
                migration_id: rec.state.id,
                status: "prepared",
                snapshot_at: rec.state.snapshot_at,
                tables: rec.state.tables.clone(),
                total_rows,
                phases_ms: rec.timings(),
                extensions_created,
                deferred_statements: deferred,
                warnings,
                swap_lock_budget,
                filters: (!settings.filters.is_empty()).then(|| run.filters.matched.clone()),
                schemas: settings.schemas.clone(),
            })
        }
        Err(e) => {
            let client = sess.recovery_client().await;
            let e = match &client {
                Some(c) => restarted_meanwhile(c, rec.state.started_at, e).await,
                None => e,
            };
            let e = which_side_was_lost(&settings.source, client.is_some(), e).await;
            rec.fail(sess, client.as_deref(), &e).await;
            if !rec.state.details.extensions_created.is_empty() {
                tracing::warn!(
                    "{}",
                    discard::extensions_left(&rec.state.details.extensions_created)
                );
            }
            // Streaming cannot resume from a dead snapshot: remove what this
            // run made, unless the run lock is gone: another run may own the
            // shadow by now.
            match client {
                Some(_) if !sess.lock_alive() => tracing::warn!(
                    "the run lock is no longer held, so another run may have started: left what this run made; `pgshift status` says what is there, `pgshift abort` (or prepare again) removes it"
                ),
                Some(c) => {
                    match discard::remove_prepared(
                        &c,
                        settings.lock_timeout,
                        settings.swap_retries,
                        None,
                        None,
                    )
                    .await
                    {
                        Ok(r) if !r.is_empty() => {
                            tracing::info!("removed the partial shadow and sync objects")
                        }
                        Ok(_) => {}
                        Err(ce) => tracing::warn!(
                            "could not remove the partial migration: {ce:#}; run `pgshift abort`"
                        ),
                    }
                }
                None => tracing::warn!(
                    "the destination is unreachable; run `pgshift abort` (or prepare again) once it is back"
                ),
            }
            Err(e)
        }
    }
}

/// `e`, and when the destination server started again since the run did (a
/// crash: its write-ahead log's disk full, which is a PANIC, or a restart),
/// that too: the run's own error is only the connection that broke.
async fn restarted_meanwhile(
    client: &Client,
    run_started: chrono::DateTime<chrono::Utc>,
    e: anyhow::Error,
) -> anyhow::Error {
    let restarted = client
        .query_one(
            "SELECT pg_catalog.pg_postmaster_start_time() > $1",
            &[&run_started],
        )
        .await
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false);
    let typed = e
        .chain()
        .any(|c| c.is::<crate::error::Interrupted>() || c.is::<crate::error::UserError>());
    if restarted && !typed {
        anyhow::anyhow!(
            "{e:#} (the destination server restarted while prepare ran: it crashed or was restarted, and its log says why; a full disk, pg_wal's included, is a common cause)"
        )
    } else {
        e
    }
}

/// `e`, and when it is a lost connection (whose words name no server), which
/// server does not answer now: the destination (`dest_answers` false), or
/// else the source, asked once.
async fn which_side_was_lost(
    source: &ConnSpec,
    dest_answers: bool,
    e: anyhow::Error,
) -> anyhow::Error {
    let text = format!("{e:#}").to_lowercase();
    let lost = [
        "connection closed",
        "closed the connection",
        "connection reset",
        "broken pipe",
        "terminating connection",
    ]
    .iter()
    .any(|w| text.contains(w));
    let typed = e
        .chain()
        .any(|c| c.is::<crate::error::Interrupted>() || c.is::<crate::error::UserError>());
    if !lost || typed || text.contains("server restarted while") {
        return e;
    }
    if !dest_answers {
        return anyhow!(
            "{e:#} (the destination does not answer now: its server stopped, or the network to it failed)"
        );
    }
    match connect(source, "source", &app_name("prepare"), Duration::ZERO).await {
        Ok(_) => e,
        Err(why) => anyhow!(
            "{e:#} (the source does not answer now, so the connection lost was probably the source's: {why:#})"
        ),
    }
}

async fn phases(run: &mut Run<'_>, rec: &mut Recorder) -> Result<usize> {
    let sess = run.sess;
    let at = rec.phase(sess, Phase::Snapshot, snapshot(run)).await?;
    rec.state.snapshot_at = Some(at);
    rec.phase(sess, Phase::Dump, dump(run)).await?;
    rec.state.dump_complete = true;
    rec.save(sess).await?;
    rec.phase(sess, Phase::Schema, schema(run)).await?;
    let loaded = rec.phase(sess, Phase::Data, load(run)).await?;
    let bytes: u64 = loaded.iter().map(|l| l.bytes).sum();
    rec.detail(
        Phase::Data,
        format!(
            "{} table{}, {} streamed",
            loaded.len(),
            if loaded.len() == 1 { "" } else { "s" },
            crate::output::human_bytes(bytes as i64)
        ),
    );
    run.loaded = loaded;
    let deferred = rec.phase(sess, Phase::Indexes, indexes(run)).await?;
    let deferred_count = deferred.len();
    rec.state.details.deferred_sql = deferred;
    rec.state.details.keep_source_owners = run.opts.keep_source_owners;
    rec.phase(sess, Phase::Sequences, sequences(run)).await?;
    let deferred = rec.state.details.deferred_sql.clone();
    let synced = rec
        .phase(sess, Phase::Sync, sync_phase(run, rec.state.id, &deferred))
        .await?;
    rec.state.details.sync = synced;
    let applied = rec.phase(sess, Phase::Privileges, privs(run)).await?;
    rec.detail(
        Phase::Privileges,
        format!(
            "{} owners, {} grants",
            applied.owners_changed, applied.grants
        ),
    );
    for w in applied.warnings {
        tracing::warn!("{w}");
        run.warnings.push(w);
    }
    // After the sync's initial copy: a materialized view that reads a
    // preserved table sees the destination's rows, as the new public will.
    // After the owners: REFRESH runs the view's query as its owner, whose
    // privileges and row-level security policies decide what it holds, as
    // on the source.
    rec.phase(sess, Phase::Matviews, matviews(run)).await?;
    rec.phase(sess, Phase::Analyze, analyze(run)).await?;
    let synced = rec.state.details.sync.clone();
    let tables = rec
        .phase(sess, Phase::Validate, validate(run, &synced))
        .await?;
    rec.state.tables = tables;
    let shadows: Vec<String> = run.pairs.iter().map(|p| p.shadow.clone()).collect();
    rec.state.details.shadow_structure =
        catalog::structure_fingerprint(&run.sess.control, &shadows, None).await?;
    Ok(deferred_count)
}

async fn snapshot(run: &mut Run<'_>) -> Result<DateTime<Utc>> {
    // The snapshot lives on the server this session reaches: every later
    // source session (the copies importing it) and pg_dump go to that one
    // host, whatever other hosts the string names.
    let (client, pinned) = crate::pg::conn::connect::connect_pinned(
        &run.source,
        "source",
        &app_name("prepare"),
        run.sess.run.connect_timeout,
    )
    .await?;
    run.source = pinned;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .context("starting the snapshot transaction on the source")?;
    let row = client
        .query_one("SELECT pg_catalog.pg_export_snapshot(), now()", &[])
        .await
        .map_err(|e| {
            anyhow!(
                "exporting a snapshot on the source: {}",
                describe_pg_error(&e)
            )
        })?;
    let snap: String = row.get(0);
    let at: DateTime<Utc> = row.get(1);
    // Tables the filters leave out are neither dumped nor copied, nor the
    // sequences they own; references to them stay `public.…` (a kept table is
    // the destination's own).
    let leaving = run.filters.not_migrated.clone();
    let leaves = |schema: &str, name: &str| leaving.contains(&meta::table_display(schema, name));
    run.tables.clear();
    run.sequences.clear();
    run.dump_exclude.clear();
    run.defined.clear();
    run.matviews.clear();
    run.footprints = batch::Footprints::default();
    for pair in run.pairs.clone() {
        let schema = pair.live.as_str();
        run.tables.extend(
            catalog::tables(&client, schema)
                .await?
                .into_iter()
                .filter(|t| !leaves(schema, &t.name)),
        );
        let (sequences, left): (Vec<SequenceInfo>, Vec<SequenceInfo>) =
            catalog::sequences(&client, schema)
                .await?
                .into_iter()
                .partition(|s| !s.owned_by.as_ref().is_some_and(|o| leaves(schema, &o.0)));
        let defined = catalog::defined_names(&client, schema).await?;
        let mut dropped: HashSet<String> = left.iter().map(|s| s.name.clone()).collect();
        dropped.extend(defined.iter().filter(|n| leaves(schema, n)).cloned());
        let mut excluded: Vec<String> = dropped.iter().map(|n| qualified(schema, n)).collect();
        excluded.sort();
        run.dump_exclude.extend(excluded);
        run.defined.push(
            defined
                .into_iter()
                .filter(|n| !dropped.contains(n))
                .collect(),
        );
        let names: Vec<String> = sequences.iter().map(|s| s.name.clone()).collect();
        run.sequences.extend(sequences);
        // Reading a sequence locks it until the (long) snapshot transaction ends:
        // read them in subtransactions that release those locks.
        for chunk in names.chunks(100) {
            let values =
                batch::released(&client, catalog::sequence_values(&client, schema, chunk)).await?;
            run.sequence_values.extend(
                values
                    .into_iter()
                    .map(|(n, v)| ((schema.to_string(), n), v)),
            );
        }
        // The source's relations are the shadow's to be: their lock footprints
        // size the schema phase's batches.
        run.footprints
            .extend(batch::Footprints::load(&client, schema).await?);
        // A materialized view the filters leave out is not dumped: nothing
        // to refresh.
        run.matviews.extend(
            catalog::matviews_in_order(&client, schema)
                .await?
                .into_iter()
                .filter(|(n, _)| !leaves(schema, n))
                .map(|(n, populated)| (schema.to_string(), n, populated)),
        );
    }
    // Casts belong to no schema, so pg_dump -n leaves them out: those from
    // or to a type the migration creates are made on the shadow's type
    // (the others were warned about at the checks).
    let schemas: Vec<String> = run.pairs.iter().map(|p| p.live.clone()).collect();
    run.casts = preflight::plan_casts(&client, &run.sess.control, &schemas, leaves)
        .await?
        .0;
    for p in &run.preserved {
        if !run.tables.iter().any(|t| &t.key() == p && t.relkind == 'r') {
            bail!("preserved table {p} is not a table of the source");
        }
    }
    tracing::info!(snapshot = %snap, tables = run.tables.len(), "source snapshot exported");
    run.snapshot = Some(snap);
    run.snap_client = Some(client);
    Ok(at)
}

/// The file that makes a dump directory pgshift's: written into it before
/// pg_dump runs (pg_dump writes into [`schema_dump`] below it), so a
/// directory only ever counts as pgshift's, and is only ever removed, when
/// pgshift made it, also after a run killed halfway through its dump. A
/// directory of the user's (a `pg_dump -Fd` backup of their own, say) never
/// has it.
pub const DUMP_MARKER: &str = ".pgshift-dump";

/// Whether `dir` is a dump directory pgshift made.
pub fn is_pgshift_dump(dir: &Path) -> bool {
    dir.join(DUMP_MARKER).is_file()
}

/// Whether `dir`, which a migration's record names as its dump directory,
/// is the dump pgshift made: with the marker, or made by a version before
/// the marker (it had pg_dump write straight into the directory), holding
/// nothing but what `pg_dump -Fd` writes, once the record says its dump
/// phase completed (`dump_complete`): a run that stopped before its dump
/// made no directory, and one the user put at that path since (a `pg_dump
/// -Fd` backup of their own looks the same) is not pgshift's.
pub fn is_recorded_dump(dir: &Path, dump_complete: bool) -> bool {
    is_pgshift_dump(dir) || (dump_complete && is_bare_pg_dump(dir))
}

/// A `pg_dump -Fd` directory and nothing else: `toc.dat`, and only the
/// files pg_dump writes beside it (`NNNN.dat`, blobs, each maybe compressed).
fn is_bare_pg_dump(dir: &Path) -> bool {
    fn pg_dump_file(name: &str) -> bool {
        let base = [".gz", ".lz4", ".zst"]
            .iter()
            .find_map(|ext| name.strip_suffix(ext))
            .unwrap_or(name);
        let numbered = |s: &str, prefix: &str, suffix: &str| {
            s.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(suffix))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        name == "toc.dat"
            || name == "blobs.toc"
            || numbered(name, "blobs_", ".toc")
            || numbered(base, "", ".dat")
            || numbered(base, "blob_", ".dat")
    }
    if !dir.join("toc.dat").is_file() {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.into_iter().all(|e| {
        e.is_ok_and(|e| {
            e.file_type().is_ok_and(|t| t.is_file())
                && e.file_name().to_str().is_some_and(pg_dump_file)
        })
    })
}

/// Whether `dir` may serve as a dump directory: absent, empty, or pgshift's
/// (`recorded`: the state file names it as the dump directory of its
/// migration, whose dump phase completed, which one made by an earlier
/// version without the marker may be: [`is_recorded_dump`]).
pub fn dump_dir_usable(dir: &Path, recorded: bool) -> bool {
    !dir.exists()
        || is_pgshift_dump(dir)
        || (recorded && is_bare_pg_dump(dir))
        || std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
}

/// pg_dump's directory-format dump inside a dump directory.
fn schema_dump(dir: &Path) -> PathBuf {
    dir.join("schema")
}

/// Remove a previous dump directory (only if it is pgshift's or empty),
/// create it with its marker, and check free space.
fn prepare_dump_dir(dir: &Path, recorded: bool, objects: usize) -> Result<()> {
    if dir.exists() {
        if !dump_dir_usable(dir, recorded) {
            bail!(
                "dump directory {} exists and is not a pgshift dump; choose another --dump-dir",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("removing the old dump directory {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(DUMP_MARKER),
        "The source's schema dump of a pgshift migration (pg_dump -Fd in ./schema).\n\
         pgshift removes this directory after the swap or abort, unless --keep-dump.\n",
    )
    .with_context(|| format!("writing into {}", dir.display()))?;
    // A schema-only dump: a few kB per object, plus headroom.
    let needed: u64 = 16 * 1024 * 1024 + 8 * 1024 * objects as u64;
    let st = nix::sys::statvfs::statvfs(dir)
        .with_context(|| format!("checking free space in {}", dir.display()))?;
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    if free < needed {
        bail!(
            "not enough free disk space for the dump in {}: {} free, about {} needed",
            dir.display(),
            crate::output::human_bytes(free as i64),
            crate::output::human_bytes(needed as i64)
        );
    }
    Ok(())
}

async fn dump(run: &mut Run<'_>) -> Result<()> {
    let snap = run.snapshot.clone().context("no snapshot")?;
    prepare_dump_dir(
        &run.dump_dir,
        run.opts.dump_dir_recorded,
        run.defined.iter().map(DefinedNames::len).sum(),
    )?;
    // pg_dump's session, too, ends when the server notices pgshift is gone
    // (see `session_defaults`), where the source's server has the setting.
    let snap_client = run.snap_client.as_ref().context("no snapshot session")?;
    let checks = batch::released(snap_client, async {
        snap_client
            .batch_execute(&format!(
                "SET LOCAL client_connection_check_interval = {}",
                crate::pg::conn::connect::CLIENT_CHECK_MS
            ))
            .await
            .map_err(anyhow::Error::from)
    })
    .await
    .is_ok();
    let mut env = run.source.child_env();
    if checks {
        let check = format!(
            "-c client_connection_check_interval={}",
            crate::pg::conn::connect::CLIENT_CHECK_MS
        );
        match env.iter_mut().find(|(k, _)| k == "PGOPTIONS") {
            Some((_, v)) => *v = format!("{v} {check}"),
            None => env.push(("PGOPTIONS".into(), check)),
        }
    }
    let spec = ChildSpec::new(&run.tools.pg_dump)
        // In UTF-8, whatever the source's encoding: pgshift's sessions
        // speak UTF-8, and run the dump's preamble (its client_encoding).
        .args([
            "--format=directory",
            "--schema-only",
            "--no-password",
            "--encoding=UTF8",
        ])
        .args(
            run.pairs
                .iter()
                .map(|p| format!("--schema={}", quote_ident(&p.live))),
        )
        .arg(format!("--snapshot={snap}"))
        .args(
            run.dump_exclude
                .iter()
                .map(|t| format!("--exclude-table={t}")),
        )
        .arg("--file")
        .arg(schema_dump(&run.dump_dir).as_os_str())
        .env_remove(ConnSpec::child_env_remove())
        .envs(env);
    let spec = with_appname(spec, PG_DUMP_APP);
    // The snapshot lives as long as its session: lost, pg_dump fails on it
    // ("invalid snapshot identifier"), which is not pg_dump's fault.
    const LOST: &str = "the source's snapshot session was lost (its connection to the source dropped), and the snapshot with it: prepare again";
    if !checks && snap_client.is_closed() {
        bail!("{LOST}");
    }
    // pg_dump locks every table it dumps (ACCESS SHARE), and waits without a
    // word behind a session holding a table's ACCESS EXCLUSIVE lock: name it,
    // on one more source session (refused by a full server without a wait).
    let open = async {
        connect(&run.source, "source", &app_name("prepare"), Duration::ZERO)
            .await
            .inspect_err(|e| {
                tracing::info!("not watching pg_dump's lock waits (no session to spare): {e:#}")
            })
            .ok()
    };
    let watched = Watched {
        side: "source",
        sessions: &[PG_DUMP_APP.to_string()],
    };
    naming_lock_waits_from_a_new_session(open, &watched, process::run(&spec, &run.sess.run.cancel))
        .await
        .context("dumping the source schema")
        .map_err(|e| {
            if snap_client.is_closed() {
                e.context(LOST)
            } else {
                e
            }
        })?;
    Ok(())
}

/// pg_dump's `application_name`, as README promises it.
const PG_DUMP_APP: &str = "pgshift pg_dump";

fn with_appname(mut spec: ChildSpec, name: &str) -> ChildSpec {
    spec.env.retain(|(k, _)| k != "PGAPPNAME");
    spec.env.push(("PGAPPNAME".into(), name.into()));
    spec
}

/// `pg_restore --section=… -f -`, meta-commands stripped, split into entries.
async fn restore_section(run: &Run<'_>, section: &str) -> Result<Vec<Entry>> {
    let spec = ChildSpec::new(&run.tools.pg_restore)
        .arg(format!("--section={section}"))
        .args(["--no-owner", "--no-privileges", "--file=-"])
        // No `SET default_tablespace` then: everything lands in the
        // destination's default tablespace.
        .args(run.opts.no_tablespaces.then_some("--no-tablespaces"))
        .arg(schema_dump(&run.dump_dir).as_os_str())
        .env_remove(ConnSpec::child_env_remove());
    let out = process::run(&spec, &run.sess.run.cancel)
        .await
        .with_context(|| format!("rendering the {section} section"))?;
    let text = String::from_utf8(out.stdout).context("pg_restore output is not UTF-8")?;
    let text = sql::strip_meta_commands(&text)?;
    let mut entries = sql::split_entries(&text)?;
    // A newer pg_dump's session settings an older destination lacks
    // (`transaction_timeout`, pg_dump 17+) are left out, not failed on.
    // Read on the control session: a session of its own here would be one
    // more than --max-connections allows while the schema's is open.
    if let Some(preamble) = entries.first_mut().filter(|e| e.header.is_none()) {
        let known: HashSet<String> = run
            .sess
            .control
            .query("SELECT name FROM pg_catalog.pg_settings", &[])
            .await
            .map_err(|e| pg_error_as(e, "listing the destination's settings"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let (sql, dropped) = sql::drop_unknown_settings(&preamble.sql, |n| known.contains(n))?;
        if !dropped.is_empty() {
            tracing::debug!(
                ?dropped,
                section,
                "session settings the destination lacks left out"
            );
        }
        preamble.sql = sql;
    }
    Ok(entries)
}

/// Entries that must not land in shadow.
fn skip_entry(e: &Entry) -> bool {
    let Some(h) = &e.header else { return false };
    match h.kind.as_str() {
        "SCHEMA" | "EXTENSION" => true,
        "COMMENT" => h.name.starts_with("SCHEMA ") || h.name.starts_with("EXTENSION "),
        _ => false,
    }
}

/// Each chosen schema's remapping to its shadow.
fn mappings<'a>(run: &'a Run<'_>) -> Vec<sql::Mapping<'a>> {
    run.pairs
        .iter()
        .zip(&run.defined)
        .map(|(p, d)| sql::Mapping {
            from: &p.live,
            to: &p.shadow,
            defined: d,
        })
        .collect()
}

/// The entries for the shadow, remapped. An entry left out ([`skip_entry`])
/// leaves its `SET default_tablespace` and `SET default_table_access_method`
/// to the entry before it: pg_restore writes them at the end of the entry
/// before the one they are for, and the first table after `CREATE SCHEMA
/// public` and its comment would otherwise land in the default tablespace.
fn remap_entries(run: &Run<'_>, entries: Vec<Entry>) -> Result<Vec<Entry>> {
    let maps = mappings(run);
    let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
    for e in entries {
        let label = e.label();
        if skip_entry(&e) {
            let sets = sql::object_settings(&e.sql).with_context(|| format!("reading {label}"))?;
            if sets.is_empty() {
                continue;
            }
            let sets: String = sets.iter().map(|(_, s)| format!("{s};\n")).collect();
            match out.last_mut() {
                Some(prev) => prev.sql.push_str(&format!("\n{sets}")),
                None => out.push(Entry {
                    header: None,
                    sql: sets,
                }),
            }
            continue;
        }
        let sql = sql::remap_many(&e.sql, &maps).with_context(|| format!("remapping {label}"))?;
        out.push(Entry {
            header: e.header,
            sql,
        });
    }
    Ok(out)
}

/// The functions whose body or `search_path` names a chosen schema get their
/// definition for the time before the swap ([`sql::prepare_time_function`]);
/// returns the entries and the statements that put back each one's definition
/// as written, which the swap runs with the deferred statements.
fn prepare_time_functions(run: &Run<'_>, entries: Vec<Entry>) -> Result<(Vec<Entry>, Vec<String>)> {
    let maps = mappings(run);
    let sigs = sql::NameSignatures::from_sql(
        entries
            .iter()
            .filter(|e| {
                e.header
                    .as_ref()
                    .is_some_and(|h| matches!(h.kind.as_str(), "FUNCTION" | "DOMAIN"))
            })
            .map(|e| e.sql.as_str()),
    );
    let mut restores = Vec::new();
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        if e.header.as_ref().is_some_and(|h| h.kind == "FUNCTION")
            && let Some(sql) = sql::prepare_time_function(&e.sql, &maps, &sigs)
                .with_context(|| format!("rewriting {}", e.label()))?
        {
            restores.push(sql::restore_function(&e.sql)?);
            out.push(Entry {
                header: e.header,
                sql,
            });
        } else {
            out.push(e);
        }
    }
    Ok((out, restores))
}

/// The migrated casts among the schema's entries (pg_dump -n leaves them
/// out), each remapped to the shadows and placed as pg_dump places one:
/// right after the last entry that defines one of its types (the type, the
/// table of a row type, the element of an array, the range of a multirange)
/// or its function (by its whole signature), so before what may use it (a
/// default, a view, a function's SQL body).
fn place_casts(
    mut entries: Vec<Entry>,
    casts: &[catalog::CastInfo],
    maps: &[sql::Mapping<'_>],
) -> Result<Vec<Entry>> {
    // (position, cast), inserted from the back so positions hold.
    let mut placed = Vec::with_capacity(casts.len());
    for c in casts {
        // Entry headers write names with newlines as spaces, as
        // `defined_as` and the function's tag do.
        let flat = |name: &str| name.replace(['\n', '\r'], " ");
        let defines = |h: &sql::EntryHeader| {
            let in_schema = |s: &str| h.schema.as_deref() == Some(flat(s).as_str());
            let type_entry = matches!(
                h.kind.as_str(),
                "TYPE" | "DOMAIN" | "TABLE" | "VIEW" | "MATERIALIZED VIEW" | "FOREIGN TABLE"
            );
            (type_entry
                && [&c.source, &c.target]
                    .iter()
                    .any(|t| in_schema(&t.schema) && h.name == t.defined_as))
                || c.function.as_ref().is_some_and(|(fs, tag)| {
                    h.kind == "FUNCTION" && in_schema(fs) && &h.name == tag
                })
        };
        let after = entries
            .iter()
            .rposition(|e| e.header.as_ref().is_some_and(defines))
            .map_or_else(
                || usize::from(entries.first().is_some_and(|e| e.header.is_none())),
                |i| i + 1,
            );
        let sql = sql::remap_many(&c.sql, maps)
            .with_context(|| format!("remapping the {}", c.display))?;
        placed.push((
            after,
            Entry {
                header: Some(sql::EntryHeader {
                    name: c.display.clone(),
                    kind: "CAST".into(),
                    schema: None,
                    owner: None,
                }),
                sql: format!("{sql}\n"),
            },
        ));
    }
    // Stable: casts placed at the same spot keep the source's order.
    placed.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    let mut by_spot: Vec<(usize, Vec<Entry>)> = Vec::new();
    for (at, e) in placed {
        match by_spot.last_mut() {
            Some((spot, es)) if *spot == at => es.push(e),
            _ => by_spot.push((at, vec![e])),
        }
    }
    for (at, es) in by_spot {
        entries.splice(at..at, es);
    }
    Ok(entries)
}

async fn schema(run: &mut Run<'_>) -> Result<()> {
    let entries = restore_section(run, "pre-data").await?;
    let entries = remap_entries(run, entries)?;
    let (entries, restores) = prepare_time_functions(run, entries)?;
    run.function_restores = restores;
    let entries = place_casts(entries, &run.casts, &mappings(run))?;
    let client = run.dest_client().await?;
    // An empty shadow left by the last swap is replaced (RESTRICT: never
    // anything in it; leftovers were handled before).
    let mut create = String::from("BEGIN;\n");
    for p in &run.pairs {
        create.push_str(&format!(
            "DROP SCHEMA IF EXISTS {shadow} RESTRICT;\nCREATE SCHEMA {shadow};\nCOMMENT ON SCHEMA {shadow} IS {};\n",
            quote_literal(&meta::shadow_comment(&p.live, run.id)),
            shadow = quote_ident(&p.shadow)
        ));
    }
    create.push_str("COMMIT;");
    if let Err(e) = client.batch_execute(&create).await {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(anyhow!(
            "creating the shadow schema: {}",
            describe_pg_error(&e)
        ));
    }
    // The entries in pg_restore's order, in transactions that stay within the
    // destination's lock table (one transaction for everything needs a slot
    // per table, TOAST table, sequence …: thousands of tables overflow it).
    let opts = batch::Options::for_server(&client, "schema").await?;
    let stmts = batch::estimated(entries.into_iter().map(|e| e.sql), &run.footprints);
    let ran = batch::run(&client, &stmts, &opts)
        .await
        .context("restoring the schema into shadow")?;
    tracing::debug!(
        entries = ran.statements,
        transactions = ran.transactions,
        limit = opts.limit,
        "schema restored"
    );
    record::set_shadow_oid(&run.sess.control, run.id).await?;
    // Plan the post-data section now: each table's indexes are built in the
    // data phase, as soon as the table is loaded.
    let entries = restore_section(run, "post-data").await?;
    let entries = remap_entries(run, entries)?;
    let sizes: HashMap<String, i64> = run
        .tables
        .iter()
        .map(|t| (t.key(), t.total_bytes))
        .collect();
    // Foreign keys that reference a kept table are created by the swap, as
    // those of preserved tables are.
    let deferring: HashSet<String> = run
        .preserved
        .iter()
        .chain(run.filters.kept.iter())
        .cloned()
        .collect();
    let key = |schema: &str, name: &str| run.key_in_shadow(schema, name);
    run.post = postdata::plan(&entries, &sizes, &deferring, &key)?;
    Ok(())
}

async fn load(run: &mut Run<'_>) -> Result<Vec<Loaded>> {
    let settings = run.opts;
    let loads: Vec<CopyJob> = run
        .tables
        .iter()
        .filter(|t| {
            t.holds_data()
                && !run.preserved.contains(&t.key())
                && !run.filters.data_excluded.contains(&t.key())
        })
        .map(|t| CopyJob::for_table(t, run.shadow_of(&t.schema)))
        .collect();
    let analyze_rels: HashMap<String, String> = run
        .tables
        .iter()
        .map(|t| (t.key(), qualified(run.shadow_of(&t.schema), &t.name)))
        .collect();
    let work = data::Work {
        analyze: loads.iter().map(|j| j.name.clone()).collect(),
        loads,
        indexes: run.post.waves[0]
            .iter()
            .map(|j| (j.table.clone(), j.label.clone(), j.sql.clone()))
            .collect(),
        index_session: run.post.preamble.clone(),
    };
    let snapshot = run.snapshot.clone().context("no snapshot")?;
    let pairs: Vec<(&str, &str)> = run
        .pairs
        .iter()
        .map(|p| (p.live.as_str(), p.shadow.as_str()))
        .collect();
    let text_io = data::TextIo::new(&pairs);
    let plan = DataPlan {
        source: &run.source,
        dest: &run.sess.dest,
        snapshot: &snapshot,
        analyze_rels: &analyze_rels,
        workers: settings.jobs,
        connect_timeout: run.sess.run.connect_timeout,
        cancel: &run.sess.run.cancel,
        progress: run.progress,
        text_io: &text_io,
    };
    data::load_all(&plan, work).await
}

async fn indexes(run: &mut Run<'_>) -> Result<Vec<String>> {
    let settings = run.opts;
    postdata::run(
        &run.post,
        &run.sess.dest,
        settings.jobs,
        run.sess.run.connect_timeout,
        &run.sess.run.cancel,
        run.progress,
    )
    .await?;
    // The functions' own definitions go back last, after the preserved
    // tables' constraints, which are checked with the prepare-time ones.
    let mut deferred = run.post.deferred.clone();
    deferred.extend(run.function_restores.iter().cloned());
    Ok(deferred)
}

async fn sequences(run: &mut Run<'_>) -> Result<()> {
    if run.sequences.is_empty() {
        return Ok(());
    }
    // setval locks its sequence: one slot each, batched.
    let stmts: Vec<batch::Stmt> = run
        .sequences
        .iter()
        .map(|s| {
            // Sequences of preserved tables get the source's value too; the swap
            // moves them on to the destination's value when that is greater.
            let (v, called) = run.sequence_values[&(s.schema.clone(), s.name.clone())];
            let name = qualified(run.shadow_of(&s.schema), &s.name);
            batch::Stmt {
                sql: format!(
                    "SELECT pg_catalog.setval({}, {v}, {called})",
                    quote_literal(&name)
                ),
                locks: 1,
            }
        })
        .collect();
    let opts = batch::Options::for_server(&run.sess.control, "sequences").await?;
    batch::run(&run.sess.control, &stmts, &opts)
        .await
        .context("setting sequence values")?;
    Ok(())
}

/// Refresh the populated materialized views. A function a view calls that
/// names tables without a schema (and sets no search_path of its own) finds
/// them on the search path: the shadows', in the chosen schemas' order, so
/// that it reads the migrated rows, as it will once the shadows are live,
/// and not the destination's live tables of the same names: the
/// destination's search path with each migrated schema replaced by its
/// shadow and no other schema but those that hold extensions (the shadows
/// it lacks first). The schemas that hold extensions follow where it lacks
/// them (a live public too, where PostGIS or pgvector
/// stay while the shadow is built), so the operators and functions such a
/// body names without a schema (`embedding <=> q`, `ST_Distance`) are
/// found as on the source. (A name spelled
/// out in dynamic SQL, `EXECUTE 'SELECT … FROM public.t'`, still reads the
/// live table: README, Limitations.) It runs after the privileges phase:
/// REFRESH runs the query as the view's owner, so the owner the view will
/// have, with its privileges and row-level security policies, decides its
/// rows, as on the source.
async fn matviews(run: &mut Run<'_>) -> Result<()> {
    if !run.matviews.iter().any(|(_, _, populated)| *populated) {
        return Ok(());
    }
    let client = &run.sess.control;
    let was: String = client
        .query_one("SELECT pg_catalog.current_setting('search_path')", &[])
        .await?
        .get(0);
    let shadows: Vec<&str> = run.pairs.iter().map(|p| p.shadow.as_str()).collect();
    let extension_schemas: Vec<String> = crate::pg::exec::query_map(
        client,
        "SELECT DISTINCT n.nspname::text FROM pg_catalog.pg_extension e
           JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
          WHERE n.nspname <> 'pg_catalog' AND n.nspname <> ALL($1::text[])
          ORDER BY 1",
        &[&shadows],
        "listing the schemas that hold extensions",
        |r| r.get(0),
    )
    .await?;
    // The destination's own search path, each migrated schema in it replaced
    // by its shadow, and of the others only those that hold extensions (so
    // that an extension schema it puts first stays first, as the source's
    // would: a function of the application's of the same name as an
    // extension's does not take its place; and a schema the migration does
    // not move, "$user" or another, never lends a table of the same name);
    // the shadows it lacks first, the schemas that hold extensions it lacks
    // last.
    let current: Vec<String> = crate::pg::exec::query_map(
        client,
        "SELECT s::text FROM pg_catalog.unnest(pg_catalog.current_schemas(false)) WITH ORDINALITY AS u(s, i) ORDER BY i",
        &[],
        "reading the search path",
        |r| r.get(0),
    )
    .await?;
    let mapped: Vec<&str> = current
        .iter()
        .filter_map(|s| match run.pairs.iter().find(|p| p.live == *s) {
            Some(p) => Some(p.shadow.as_str()),
            None => extension_schemas.contains(s).then_some(s.as_str()),
        })
        .collect();
    let mut order: Vec<&str> = shadows
        .iter()
        .copied()
        .filter(|s| !mapped.contains(s))
        .collect();
    for s in mapped
        .into_iter()
        .chain(extension_schemas.iter().map(String::as_str))
    {
        if !order.contains(&s) {
            order.push(s);
        }
    }
    let path = order
        .into_iter()
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(", ");
    // Row-level security on as the source had it when it refreshed: a view
    // over a table whose policies apply to the view's owner holds the rows
    // they let it see (with pgshift's `row_security = off` the refresh would
    // fail instead).
    client
        .batch_execute(&format!("SET search_path = {path}; SET row_security = on"))
        .await?;
    let mut warnings = Vec::new();
    for (schema, name, populated) in &run.matviews {
        if !populated {
            continue;
        }
        let qual = qualified(run.shadow_of(schema), name);
        let Err(e) = client
            .batch_execute(&format!("REFRESH MATERIALIZED VIEW {qual}"))
            .await
        else {
            continue;
        };
        let why = describe_pg_error(&e);
        let shown = meta::table_display(schema, name);
        if e.code() != Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
            bail!("refreshing materialized view {shown}: {why}");
        }
        // Its owner may not read what it reads on the destination (the
        // source granted it more): filled as pgshift's role instead, the
        // owner and its grants put back in the same transaction.
        let owner = fill_as_self(client, &qual)
            .await
            .with_context(|| format!("refreshing materialized view {shown}: {why}"))?;
        warnings.push(format!(
            "materialized view {shown} was filled as this role: its owner {} may not read what it reads on the destination ({why}); a REFRESH there as its owner fails until that is granted",
            crate::pg::ident::display_ident(&owner)
        ));
    }
    for w in warnings {
        tracing::warn!("{w}");
        run.warnings.push(w);
    }
    client
        .execute(
            "SELECT pg_catalog.set_config('search_path', $1, false), pg_catalog.set_config('row_security', 'off', false)",
            &[&was],
        )
        .await?;
    Ok(())
}

/// Refresh the materialized view `qual` as the connecting role, its owner
/// for the time of one transaction; its owner's name. Refused (rolled back)
/// if handing it over and back would change its grants (which name this
/// role or its owner).
async fn fill_as_self(client: &Client, qual: &str) -> Result<String> {
    const ACL: &str = "SELECT pg_catalog.pg_get_userbyid(c.relowner)::text, c.relacl::text
                         FROM pg_catalog.pg_class c WHERE c.oid = $1::text::regclass";
    client.batch_execute("BEGIN").await?;
    let result = async {
        let before = client.query_one(ACL, &[&qual]).await?;
        let (owner, acl): (String, Option<String>) = (before.get(0), before.get(1));
        client
            .batch_execute(&format!(
                "ALTER MATERIALIZED VIEW {qual} OWNER TO CURRENT_USER; REFRESH MATERIALIZED VIEW {qual}; ALTER MATERIALIZED VIEW {qual} OWNER TO {}",
                quote_ident(&owner)
            ))
            .await?;
        let after: Option<String> = client.query_one(ACL, &[&qual]).await?.get(1);
        if after != acl {
            bail!("filling it as this role would change its grants");
        }
        client.batch_execute("COMMIT").await?;
        Ok(owner)
    }
    .await;
    crate::pg::exec::rollback_on_err(client, result).await
}

async fn sync_phase(
    run: &mut Run<'_>,
    id: i64,
    deferred: &[String],
) -> Result<Vec<sync::SyncedTable>> {
    let settings = run.opts;
    let synced = sync::setup(
        &run.sess.control,
        &settings.preserved_tables,
        id,
        settings.lock_timeout,
        settings.swap_retries,
        &run.sess.run.cancel,
    )
    .await?;
    // A sequence the swap could not carry over as things stand: said now,
    // not first by the swap's refusal.
    for why in sync::sequence_misfits(&run.sess.control, &synced).await? {
        let w = format!("{why}; the swap refuses it until then");
        tracing::warn!("{w}");
        run.warnings.push(w);
    }
    // The rows the foreign keys the swap creates (to and from the preserved
    // tables) would refuse: said now, not first by the swap's refusal after
    // the operator waited for a whole prepare.
    if !synced.is_empty() && !deferred.is_empty() {
        let w = match sync::fk_violations(&run.sess.control, deferred, &run.pairs).await {
            Ok(c) if !c.violations.is_empty() => Some(format!(
                "foreign keys involving preserved tables do not match the destination's rows: {}; the swap refuses them until the rows are fixed (or creates them NOT VALID with --allow-fk-violations)",
                sync::violations_line(&c.violations)
            )),
            Ok(_) => None,
            Err(e) => Some(format!(
                "could not check the foreign keys involving preserved tables (the swap checks them again): {e:#}"
            )),
        };
        if let Some(w) = w {
            tracing::warn!("{w}");
            run.warnings.push(w);
        }
    }
    // And what the swap would say of the sequences no column uses.
    if !synced.is_empty() {
        for w in sync::standalone_sequence_warnings(
            &run.sess.control,
            &run.pairs,
            sync::CarrySides::SWAP,
            &[],
        )
        .await?
        {
            let w = format!("{w} (as things stand now; the swap looks again)");
            tracing::warn!("{w}");
            run.warnings.push(w);
        }
    }
    Ok(synced)
}

async fn analyze(run: &mut Run<'_>) -> Result<()> {
    let settings = run.opts;
    // Loaded tables were analyzed in the data phase; what is left: partitioned
    // parents, materialized views and preserved tables (filled by the sync).
    let names: Vec<(String, String)> = run
        .tables
        .iter()
        .filter(|t| matches!(t.relkind, 'p' | 'm') || run.preserved.contains(&t.key()))
        .map(|t| (t.key(), qualified(run.shadow_of(&t.schema), &t.name)))
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    // One connection at least (waited for, as every connection is); the
    // others only where the server has room for them now: a server (or a
    // role) with few connection slots left got "too many clients" here,
    // after the whole copy.
    let workers = settings.jobs.max(1).min(names.len()).max(1);
    let mut clients = vec![run.dest_client().await?];
    while clients.len() < workers {
        match connect(
            &run.sess.dest,
            "destination",
            &app_name("prepare"),
            Duration::ZERO,
        )
        .await
        {
            Ok(c) => clients.push(c),
            Err(e) => {
                tracing::debug!(
                    "analyze: {} connections, not {workers}: {e:#}",
                    clients.len()
                );
                break;
            }
        }
    }
    let mut set = tokio::task::JoinSet::new();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(names));
    for client in clients {
        let queue = queue.clone();
        set.spawn(async move {
            loop {
                let Some((name, rel)) = queue.lock().ok().and_then(|mut q| q.pop()) else {
                    return Ok::<_, anyhow::Error>(());
                };
                client
                    .batch_execute(&format!("ANALYZE {rel}"))
                    .await
                    .map_err(|e| anyhow!("analyzing {name}: {}", describe_pg_error(&e)))?;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("analyze worker")??;
    }
    Ok(())
}

async fn privs(run: &mut Run<'_>) -> Result<privileges::Applied> {
    let settings = run.opts;
    let client = run.dest_client().await?;
    let mut total = privileges::Applied::default();
    for p in &run.pairs {
        let applied = privileges::apply(
            &client,
            &p.shadow,
            &p.live,
            settings.keep_source_owners,
            run.snap_client.as_ref(),
        )
        .await?;
        total.owners_changed += applied.owners_changed;
        total.grants += applied.grants;
        total.warnings.extend(applied.warnings);
    }
    Ok(total)
}

async fn validate(run: &mut Run<'_>, synced: &[sync::SyncedTable]) -> Result<Vec<TableRecord>> {
    let settings = run.opts;
    let started = Instant::now();
    // Sequences: every shadow sequence holds the source's value, but for
    // those of preserved tables' columns (owned, or drawn from by a default):
    // the sync's copy of the destination's rows may have drawn from them, and
    // the swap takes the greater of the two values.
    let mut drawn: HashSet<(String, String)> = HashSet::new();
    for t in synced {
        for s in sync::column_sequences(&run.sess.control, t.shadow_oid).await? {
            let live = run
                .pairs
                .iter()
                .find(|p| p.shadow == s.schema)
                .map_or(s.schema.clone(), |p| p.live.clone());
            drawn.insert((live, s.name));
        }
    }
    let mut mismatches = Vec::new();
    for pair in &run.pairs {
        let names: Vec<String> = run
            .sequences
            .iter()
            .filter(|s| s.schema == pair.live)
            .filter(|s| {
                !s.owned_by.as_ref().is_some_and(|o| {
                    run.preserved
                        .contains(&meta::table_display(&s.schema, &o.0))
                })
            })
            .filter(|s| !drawn.contains(&(s.schema.clone(), s.name.clone())))
            .map(|s| s.name.clone())
            .collect();
        let got_all = catalog::sequence_values(&run.sess.control, &pair.shadow, &names).await?;
        for name in &names {
            let want = run.sequence_values[&(pair.live.clone(), name.clone())];
            let got = got_all.get(name).copied();
            if got != Some(want) {
                let shown = meta::table_display(&pair.live, name);
                let got = got.map_or_else(|| "missing".to_string(), |g| format!("{g:?}"));
                mismatches.push(format!("sequence {shown}: source {want:?}, shadow {got}"));
            }
        }
    }
    let by_key: HashMap<String, &TableInfo> = run.tables.iter().map(|t| (t.key(), t)).collect();
    let record = |key: &str, rows: i64, bytes: i64| -> Result<TableRecord> {
        let t = by_key
            .get(key)
            .with_context(|| format!("table {key} is not in the migration"))?;
        Ok(TableRecord {
            schema: t.schema.clone(),
            name: t.name.clone(),
            rows,
            bytes,
            checksum: None,
            preserved: false,
            data_excluded: false,
        })
    };
    let mut records: Vec<TableRecord> = run
        .loaded
        .iter()
        .map(|l| record(&l.name, l.rows, l.bytes as i64))
        .collect::<Result<_>>()?;
    for t in run
        .tables
        .iter()
        .filter(|t| t.holds_data() && run.filters.data_excluded.contains(&t.key()))
    {
        let mut r = record(&t.key(), 0, 0)?;
        r.data_excluded = true;
        records.push(r);
    }
    for p in &run.preserved {
        let t = by_key
            .get(p)
            .with_context(|| format!("preserved table {p} is not in the migration"))?;
        let n: i64 = run
            .sess
            .control
            .query_one(
                &format!(
                    "SELECT count(*) FROM ONLY {}",
                    qualified(run.shadow_of(&t.schema), &t.name)
                ),
                &[],
            )
            .await?
            .get(0);
        let mut r = record(p, n, 0)?;
        r.preserved = true;
        records.push(r);
    }
    if settings.verify == Verify::Checksums {
        let src = run.snap_client.as_ref().context("no snapshot session")?;
        // As the copy has them (`data::TextIo`).
        let live: Vec<&str> = run.pairs.iter().map(|p| p.live.as_str()).collect();
        let lives = settings::text_path(live.iter().copied(), &[]);
        let shadows = settings::text_path(run.pairs.iter().map(|p| p.shadow.as_str()), &live);
        for r in records
            .iter_mut()
            .filter(|r| !r.preserved && !r.data_excluded)
        {
            let a = batch::released(src, checksum(src, &lives, &r.schema, &r.name)).await?;
            let b = own_checksum(
                &run.sess.control,
                &shadows,
                run.shadow_of(&r.schema),
                &r.name,
            )
            .await?;
            if a != b {
                mismatches.push(format!(
                    "table {}: content checksum differs (source {a}, shadow {b})",
                    r.display()
                ));
            }
            r.checksum = Some(b);
        }
    }
    if !mismatches.is_empty() {
        return Err(anyhow::Error::new(crate::error::VerificationFailed(
            format!(
                "the shadow does not match the source: {}",
                mismatches.join("; ")
            ),
        )));
    }
    // public's tables first (by name, as always), then each other schema's.
    records.sort_by(|a, b| {
        (a.schema != PUBLIC, &a.schema, &a.name).cmp(&(b.schema != PUBLIC, &b.schema, &b.name))
    });
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "validated");
    Ok(records)
}

/// An order-independent content checksum: row count and the sum of each row's
/// md5 (first 64 bits), with session settings that make text output identical.
/// `path`: the schemas of the migration as they are named where the table is
/// (the source's, the shadows, a backup's), public's first, then (for a
/// shadow or a backup) the live schemas, where extensions' objects stay: a
/// `reg*` value naming one of their objects is written unqualified, so the
/// same row has the same text in the source, the shadow and the backups.
pub async fn checksum(client: &Client, path: &[&str], schema: &str, table: &str) -> Result<String> {
    // The session's own settings come back afterwards (the control session
    // goes on to print the shadow's structure, say).
    let names: Vec<&str> = ["search_path"]
        .into_iter()
        .chain(settings::names(settings::OUTPUT))
        .collect();
    let was: Vec<String> = client
        .query_one(
            "SELECT pg_catalog.array_agg(pg_catalog.current_setting(n) ORDER BY o)
               FROM pg_catalog.unnest($1::text[]) WITH ORDINALITY AS u(n, o)",
            &[&names],
        )
        .await?
        .get(0);
    let sum = checksum_with_path(client, path, schema, table).await;
    client
        .execute(
            "SELECT pg_catalog.set_config(($1::text[])[i], ($2::text[])[i], false)
               FROM pg_catalog.generate_subscripts($1::text[], 1) AS i",
            &[&names, &was],
        )
        .await?;
    sum
}

/// [`checksum`] of a table in one of pgshift's own schemas (a shadow, a
/// backup), which no application reads. A table that forces row-level
/// security on its owner hides rows from pgshift's role too (and with
/// `row_security = off` the read fails, after the whole copy): its checksum is
/// taken in a transaction that lifts FORCE for the read and is rolled back, so
/// the table keeps it. Only the owner (or a member of its role) may lift it;
/// anyone else gets the read's own error, naming the table.
pub async fn own_checksum(
    client: &Client,
    path: &[&str],
    schema: &str,
    table: &str,
) -> Result<String> {
    let rel = qualified(schema, table);
    let forced: bool = client
        .query_one(
            "SELECT c.relforcerowsecurity AND pg_catalog.row_security_active(c.oid)
                    AND pg_catalog.pg_has_role(c.relowner, 'USAGE')
               FROM pg_catalog.pg_class c WHERE c.oid = $1::text::regclass",
            &[&rel],
        )
        .await
        .map_err(|e| anyhow!("checksumming {table}: {}", describe_pg_error(&e)))?
        .get(0);
    if !forced {
        return checksum(client, path, schema, table).await;
    }
    let lifted = client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = '{OWN_CHECKSUM_LOCK_TIMEOUT}';
             ALTER TABLE {rel} NO FORCE ROW LEVEL SECURITY"
        ))
        .await
        .map_err(|e| anyhow!("checksumming {table}: {}", describe_pg_error(&e)));
    let sum = match lifted {
        Ok(()) => checksum(client, path, schema, table).await,
        Err(e) => Err(e),
    };
    client.batch_execute("ROLLBACK").await?;
    sum
}

/// How long [`own_checksum`] waits for its table (someone reading a backup).
const OWN_CHECKSUM_LOCK_TIMEOUT: &str = "10s";

async fn checksum_with_path(
    client: &Client,
    path: &[&str],
    schema: &str,
    table: &str,
) -> Result<String> {
    client
        .batch_execute(&format!(
            "{}; SET search_path = {}",
            settings::set(settings::OUTPUT),
            path.iter()
                .map(|s| quote_ident(s))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await?;
    let rel = qualified(schema, table);
    // `ROW(t.*)`, not `t`: a lone `t` names a column called t before the
    // row, and would checksum that column alone. The text is the same.
    // Hashed as UTF-8 (the same bytes as the text in a UTF-8 database): a
    // LATIN1 source and a UTF-8 destination hold the same characters in
    // other bytes. (An SQL_ASCII database's bytes that are not UTF-8 fail
    // here, as they fail the copy.)
    let row = client
        .query_one(
            &format!(
                "SELECT count(*)::text || ':' || COALESCE(sum(('x' || substr(md5(pg_catalog.convert_to(ROW(t.*)::text, 'UTF8')), 1, 16))::bit(64)::bigint::numeric), 0)::text
                   FROM ONLY {rel} t"
            ),
            &[],
        )
        .await
        .map_err(|e| anyhow!("checksumming {table}: {}", describe_pg_error(&e)))?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: &str, name: &str) -> Entry {
        Entry {
            header: Some(sql::EntryHeader {
                name: name.into(),
                kind: kind.into(),
                schema: Some("public".into()),
                owner: None,
            }),
            sql: format!("-- {kind} {name}\n"),
        }
    }

    fn cast_type(name: &str, defined_as: &str) -> catalog::CastType {
        catalog::CastType {
            schema: "public".into(),
            extension: false,
            table: None,
            defined_as: defined_as.into(),
            sql: format!("public.{name}"),
        }
    }

    /// A cast goes right after the last entry it needs (its types, the
    /// element of an array, its function by its whole signature, not an
    /// overload or a later entry of the same name such as a partition's
    /// ATTACH), before what uses it; casts at one spot keep their order.
    #[test]
    fn a_cast_goes_after_what_it_needs_and_before_what_uses_it() {
        let entries = vec![
            Entry {
                header: None,
                sql: "SET x = 1;\n".into(),
            },
            entry("TYPE", "mood"),
            entry("FUNCTION", "mood_text(public.mood)"),
            entry("FUNCTION", "mood_textual(public.mood)"),
            entry("TABLE", "t"),
            entry("VIEW", "v"),
            entry("FUNCTION", "mood_text(public.v)"),
            entry("TABLE ATTACH", "t"),
        ];
        let cast =
            |src: catalog::CastType, tgt: &str, f: Option<&str>, sql: &str| catalog::CastInfo {
                source: src,
                target: cast_type(tgt, tgt),
                method: if f.is_some() { 'f' } else { 'i' },
                function: f.map(|f| ("public".to_string(), f.to_string())),
                display: sql.into(),
                sql: format!("CREATE CAST ({sql});"),
            };
        let casts = vec![
            cast(
                cast_type("mood", "mood"),
                "text",
                Some("mood_text(public.mood)"),
                "public.mood AS text",
            ),
            cast(
                cast_type("_mood", "mood"),
                "int4",
                None,
                "public.mood[] AS int4",
            ),
            cast(cast_type("t", "t"), "int4", None, "public.t AS int4"),
            cast(
                cast_type("mood", "mood"),
                "int8",
                None,
                "public.mood AS int8",
            ),
        ];
        let defined: DefinedNames = ["mood", "_mood", "t", "mood_text"].into_iter().collect();
        let maps = [sql::Mapping {
            from: "public",
            to: "shadow",
            defined: &defined,
        }];
        let placed = place_casts(entries, &casts, &maps).unwrap();
        let order: Vec<String> = placed.iter().map(|e| e.sql.trim().to_string()).collect();
        assert_eq!(
            order,
            [
                "SET x = 1;",
                "-- TYPE mood",
                "CREATE CAST (shadow.mood[] AS int4);",
                "CREATE CAST (shadow.mood AS int8);",
                "-- FUNCTION mood_text(public.mood)",
                "CREATE CAST (shadow.mood AS text);",
                "-- FUNCTION mood_textual(public.mood)",
                "-- TABLE t",
                "CREATE CAST (shadow.t AS int4);",
                "-- VIEW v",
                "-- FUNCTION mood_text(public.v)",
                "-- TABLE ATTACH t",
            ]
        );
    }
}
