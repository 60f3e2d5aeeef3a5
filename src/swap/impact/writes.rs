//! Discarded writes: writes the application made, since prepare started, to
//! tables that are not preserved. The swap moves those tables (and the rows) to
//! the backup schema; the new public does not have them.
//!
//! * [`take_baseline`] records, for every ordinary table of the live schemas
//!   (partitions included; partitioned parents, views, foreign tables and
//!   extension members hold no rows the swap moves away), its OID, name, write
//!   counters and `relfilenode`, plus the database's `stats_reset` and
//!   `track_counts`. A [`WriteBaseline`] is serde-ready for the state file and
//!   `pgshift.migration`.
//! * `stats_reset` means two things. On 15+ it is null until the database's
//!   statistics are first reset. On 13 and 14 it is null while the statistics
//!   collector has no entry for the database (a young database, or statistics
//!   lost in a crash), and the collector sets it when it creates the entry, on
//!   the first counts a backend sends, though nothing was reset. A baseline
//!   that recorded that null would later see a timestamp and report a reset
//!   that never happened. It cannot simply treat a null baseline as "never
//!   reset" on 13 and 14: without an entry every table's counters read 0, so
//!   the counters-went-backwards test never fires, and a real `pg_stat_reset()`
//!   after the entry appeared would go unnoticed (the writes before it lost
//!   from the count). So [`take_baseline`] waits, on 13 and 14, until the
//!   collector has the entry (about a second; it gives up after a few seconds
//!   and records the null). Then every change of `stats_reset`, null included,
//!   is a reset, on every version.
//! * [`compare`] of the baseline with a later snapshot (taken the same way) gives a
//!   [`WriteCheck`]: per table, matched by OID, the writes since the baseline
//!   (`discarded`), or why they cannot be known (`unknown`: rewritten or
//!   truncated, counters went backwards, statistics reset, `track_counts` off).
//!   A table created in a live schema after the baseline counts all its writes.
//!   Tables named in `exempt` (preserved, kept) and partitions of them never
//!   appear.
//! * [`check_sql`] is the same comparison as one SQL query without parameters
//!   (the baseline and the names are quoted literals), returning JSON text that
//!   [`parse_check`] turns into the same [`WriteCheck`]: the swap can run it under
//!   its locks in the round trip it already makes. It clears the backend's
//!   statistics snapshot first (`pg_stat_clear_snapshot()`, evaluated before the
//!   rest through a `CASE`), so an earlier read in the same transaction does not
//!   make it stale.
//! * [`gate`] turns a check into the refusal (or not), [`AllowDiscard`] is
//!   `--allow-discard`.
//! * [`writes_since_reset`] lists the tables written since the statistics were
//!   last reset, for `prepare --dry-run` (the counts include every write since
//!   then, an earlier migration's initial load too).
//!
//! How exact the counters are, and what to do when exactness matters, is in the
//! module documentation of [`crate::swap::impact`].

use std::collections::HashMap;

use anyhow::{Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use itertools::Itertools;
use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

use super::display_table;
use super::report::plural;
use crate::pg::ident::{NameError, TableName, quote_literal};

/// The counters of the live schemas' tables at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteBaseline {
    pub taken_at: DateTime<Utc>,
    pub schemas: Vec<String>,
    /// `pg_stat_database.stats_reset` of this database (null: never reset).
    pub stats_reset: Option<DateTime<Utc>>,
    pub track_counts: bool,
    pub tables: Vec<TableCounters>,
}

/// One table's counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableCounters {
    pub oid: u32,
    /// Schema, name and partition ancestors.
    #[serde(flatten)]
    pub key: TableKey,
    /// `n_tup_ins`
    pub inserts: i64,
    /// `n_tup_upd` (HOT updates included)
    pub updates: i64,
    /// `n_tup_del`
    pub deletes: i64,
    /// Changes on TRUNCATE, VACUUM FULL, CLUSTER and table rewrites.
    pub relfilenode: u32,
}

/// Writes to one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableWrites {
    /// `accounts`, `billing.invoices`.
    pub table: String,
    pub inserts: i64,
    pub updates: i64,
    pub deletes: i64,
    /// The partitioned table this partition belongs to (its root), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_of: Option<String>,
    #[serde(skip)]
    pub at: TableKey,
}

/// What `--allow-discard`, `--preserved-tables` and kept tables match a
/// written table by: its schema, name and partition ancestors (`(schema,
/// name)`, nearest first). Stored with the counters of a baseline; not in
/// reports, whose readers see `table` and `partition_of`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableKey {
    pub schema: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<(String, String)>,
}

impl TableKey {
    /// From a query's columns: the ancestors as two parallel arrays.
    fn from_columns(schema: String, name: String, nsp: Vec<String>, rel: Vec<String>) -> TableKey {
        TableKey {
            schema,
            name,
            ancestors: nsp.into_iter().zip(rel).collect(),
        }
    }

    /// Whether `names` lists this table or one of its ancestors.
    fn is_in(&self, names: &[TableName]) -> bool {
        let hit = |s: &str, n: &str| {
            names
                .iter()
                .any(|t| t.schema_or_public() == s && t.name == n)
        };
        hit(&self.schema, &self.name) || self.ancestors.iter().any(|(s, n)| hit(s, n))
    }

    /// The partitioned table at the root, for people.
    fn root(&self) -> Option<String> {
        self.ancestors.last().map(|(s, n)| display_table(s, n))
    }
}

/// A write the swap would discard.
pub type DiscardedWrite = TableWrites;

impl TableWrites {
    pub fn total(&self) -> i64 {
        self.inserts + self.updates + self.deletes
    }

    /// `3 inserts, 1 update` (kinds with a zero count left out).
    pub fn counts(&self) -> String {
        let mut parts = Vec::new();
        for (n, what) in [
            (self.inserts, "insert"),
            (self.updates, "update"),
            (self.deletes, "delete"),
        ] {
            if n != 0 {
                parts.push(plural(n.max(0) as usize, what));
            }
        }
        if parts.is_empty() {
            "no writes".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// A table whose writes since the baseline cannot be known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnknownWrite {
    pub table: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_of: Option<String>,
    #[serde(skip)]
    pub at: TableKey,
}

/// The result of comparing counters with the baseline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteCheck {
    /// Largest first.
    pub discarded: Vec<DiscardedWrite>,
    /// By table.
    pub unknown: Vec<UnknownWrite>,
}

impl WriteCheck {
    pub fn is_clean(&self) -> bool {
        self.discarded.is_empty() && self.unknown.is_empty()
    }

    fn sort(&mut self) {
        self.discarded.sort_by(|a, b| {
            b.total()
                .cmp(&a.total())
                .then_with(|| (&a.at.schema, &a.at.name).cmp(&(&b.at.schema, &b.at.name)))
        });
        self.unknown
            .sort_by(|a, b| (&a.at.schema, &a.at.name).cmp(&(&b.at.schema, &b.at.name)));
    }
}

/// Why a table's writes are unknown. The code is what [`check_sql`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unknown {
    TrackCountsOff,
    TrackCountsWasOff,
    StatsReset,
    Rewritten,
    Backwards,
    NoBaseline,
    NoLiveBaseline,
}

impl Unknown {
    const ALL: [Unknown; 7] = [
        Unknown::TrackCountsOff,
        Unknown::TrackCountsWasOff,
        Unknown::StatsReset,
        Unknown::Rewritten,
        Unknown::Backwards,
        Unknown::NoBaseline,
        Unknown::NoLiveBaseline,
    ];

    fn code(self) -> &'static str {
        match self {
            Unknown::TrackCountsOff => "track_counts_off",
            Unknown::TrackCountsWasOff => "track_counts_was_off",
            Unknown::StatsReset => "stats_reset",
            Unknown::Rewritten => "rewritten",
            Unknown::Backwards => "backwards",
            Unknown::NoBaseline => "no_baseline",
            Unknown::NoLiveBaseline => "no_live_baseline",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Unknown::TrackCountsOff => "track_counts is off, so writes are not counted",
            Unknown::TrackCountsWasOff => "track_counts was off when prepare started",
            Unknown::StatsReset => "the statistics were reset since prepare started",
            Unknown::Rewritten => {
                "truncated or rewritten since prepare started (TRUNCATE, VACUUM FULL, CLUSTER or ALTER TABLE; TRUNCATE is not counted)"
            }
            Unknown::Backwards => {
                "its write counters went backwards (statistics reset since prepare started)"
            }
            Unknown::NoBaseline => {
                "no write counters were recorded when prepare started (the migration was prepared by an earlier version of pgshift)"
            }
            Unknown::NoLiveBaseline => {
                "no write counters were recorded when the current public went live (by an earlier version of pgshift, or the recording failed), or they went with the backup that held them (dropped by cleanup or by hand)"
            }
        }
    }

    fn from_code(code: &str) -> Option<Unknown> {
        Unknown::ALL.into_iter().find(|u| u.code() == code)
    }
}

/// The ordinary tables of the schemas that `schema_filter` (a condition on
/// `n.nspname`) selects, with counters and partition ancestors. Columns: oid,
/// nsp, rel, node, ins, upd, del, anc_nsp, anc_rel.
fn tables_sql(schema_filter: &str) -> String {
    format!(
        "{}
          WHERE {schema_filter} AND c.relkind = 'r'
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                             WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                               AND d.objid = c.oid AND d.deptype = 'e')",
        TABLE_COLUMNS
    )
}

/// [`tables_sql`]'s columns over `pg_class c` and `pg_namespace n`.
const TABLE_COLUMNS: &str =
    "SELECT c.oid, n.nspname::text AS nsp, c.relname::text AS rel, c.relfilenode AS node,
                pg_catalog.pg_stat_get_tuples_inserted(c.oid) AS ins,
                pg_catalog.pg_stat_get_tuples_updated(c.oid) AS upd,
                pg_catalog.pg_stat_get_tuples_deleted(c.oid) AS del,
                CASE WHEN c.relispartition THEN ARRAY(
                    SELECT an.nspname::text
                      FROM pg_catalog.pg_partition_ancestors(c.oid) WITH ORDINALITY AS p(relid, o)
                      JOIN pg_catalog.pg_class ac ON ac.oid = p.relid
                      JOIN pg_catalog.pg_namespace an ON an.oid = ac.relnamespace
                     WHERE p.relid <> c.oid ORDER BY p.o) ELSE '{}'::text[] END AS anc_nsp,
                CASE WHEN c.relispartition THEN ARRAY(
                    SELECT ac.relname::text
                      FROM pg_catalog.pg_partition_ancestors(c.oid) WITH ORDINALITY AS p(relid, o)
                      JOIN pg_catalog.pg_class ac ON ac.oid = p.relid
                     WHERE p.relid <> c.oid ORDER BY p.o) ELSE '{}'::text[] END AS anc_rel
           FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace";

/// `track_counts`, the database's `stats_reset` and the time, in one row.
const GLOBAL_SQL: &str = "SELECT pg_catalog.current_setting('track_counts')::bool AS track,
        pg_catalog.pg_stat_get_db_stat_reset_time(d.oid) AS reset,
        pg_catalog.clock_timestamp() AS now
   FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()";

/// How long [`database_statistics`] waits for the statistics collector of
/// PostgreSQL 13 and 14 to start counting for a database it has no entry for:
/// a backend sends its counts at most every 500 ms (`PGSTAT_STAT_INTERVAL`)
/// and a reader accepts a statistics file up to 500 ms old, so about a second,
/// with room for a busy collector.
const COLLECTOR_ENTRY_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// [`GLOBAL_SQL`]'s row, read after discarding the backend's statistics
/// snapshot. On PostgreSQL 13 and 14 a database the statistics collector has
/// no entry for yet (a young database, or statistics lost in a crash) has a
/// null `stats_reset`, and the collector sets it to the time it creates the
/// entry, on the first counts any backend sends: a later reading would see a
/// change that is no reset. So there, with `track_counts` on, this waits (up
/// to [`COLLECTOR_ENTRY_WAIT`]) for the entry; each query ends a transaction,
/// after which this backend itself sends its counts, so outside a transaction
/// the wait ends in about a second. On 15+ `stats_reset` stays null until the
/// first reset, and is read once.
async fn database_statistics(client: &impl GenericClient) -> Result<tokio_postgres::Row> {
    let read = || async {
        client
            .execute("SELECT pg_catalog.pg_stat_clear_snapshot()", &[])
            .await
            .context("reading the write counters")?;
        client
            .query_one(GLOBAL_SQL, &[])
            .await
            .context("reading the statistics settings")
    };
    let g = read().await?;
    let waits = |g: &tokio_postgres::Row| {
        g.get::<_, bool>("track") && g.get::<_, Option<DateTime<Utc>>>("reset").is_none()
    };
    if !waits(&g) || crate::pg::catalog::server_major(client).await? >= 15 {
        return Ok(g);
    }
    let deadline = std::time::Instant::now() + COLLECTOR_ENTRY_WAIT;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let g = read().await?;
        if !waits(&g) || std::time::Instant::now() >= deadline {
            if waits(&g) {
                tracing::debug!(
                    "the statistics collector has no entry for this database yet: its stats_reset is recorded as null"
                );
            }
            return Ok(g);
        }
    }
}

/// The counters of every ordinary table of `schemas` now. Works inside or
/// outside a transaction (it discards the backend's statistics snapshot first).
/// On PostgreSQL 13 and 14 it first waits for the statistics collector to
/// know the database ([`database_statistics`]).
pub async fn take_baseline(
    client: &impl GenericClient,
    schemas: &[String],
) -> Result<WriteBaseline> {
    let g = database_statistics(client).await?;
    let sql = format!(
        "{} ORDER BY 2, 3",
        tables_sql("n.nspname = ANY($1::text[])")
    );
    let rows = client
        .query(sql.as_str(), &[&schemas])
        .await
        .context("reading the tables' write counters")?;
    let tables = rows
        .into_iter()
        .map(|r| TableCounters {
            oid: r.get(0),
            key: TableKey::from_columns(r.get(1), r.get(2), r.get(7), r.get(8)),
            relfilenode: r.get(3),
            inserts: r.get(4),
            updates: r.get(5),
            deletes: r.get(6),
        })
        .collect();
    Ok(WriteBaseline {
        taken_at: g.get(2),
        schemas: schemas.to_vec(),
        stats_reset: g.get(1),
        track_counts: g.get(0),
        tables,
    })
}

fn writes(at: &TableKey, counts: [i64; 3]) -> TableWrites {
    TableWrites {
        table: display_table(&at.schema, &at.name),
        inserts: counts[0],
        updates: counts[1],
        deletes: counts[2],
        partition_of: at.root(),
        at: at.clone(),
    }
}

fn unknown(at: &TableKey, why: Unknown) -> UnknownWrite {
    UnknownWrite {
        table: display_table(&at.schema, &at.name),
        reason: why.reason().to_string(),
        partition_of: at.root(),
        at: at.clone(),
    }
}

/// Compare a later snapshot `now` (from [`take_baseline`] on the same schemas)
/// with `base`. Tables in `exempt` (and their partitions) are left out.
pub fn compare(base: &WriteBaseline, now: &WriteBaseline, exempt: &[TableName]) -> WriteCheck {
    let global = if !now.track_counts {
        Some(Unknown::TrackCountsOff)
    } else if !base.track_counts {
        Some(Unknown::TrackCountsWasOff)
    } else if now.stats_reset != base.stats_reset {
        Some(Unknown::StatsReset)
    } else {
        None
    };
    let by_oid: HashMap<u32, &TableCounters> = base.tables.iter().map(|t| (t.oid, t)).collect();
    let mut check = WriteCheck::default();
    for t in &now.tables {
        if t.key.is_in(exempt) {
            continue;
        }
        let b = by_oid.get(&t.oid);
        let why = global.or_else(|| {
            let b = b?;
            if b.relfilenode != t.relfilenode {
                Some(Unknown::Rewritten)
            } else if t.inserts < b.inserts || t.updates < b.updates || t.deletes < b.deletes {
                Some(Unknown::Backwards)
            } else {
                None
            }
        });
        if let Some(why) = why {
            check.unknown.push(unknown(&t.key, why));
            continue;
        }
        let (i, u, d) = b.map_or((0, 0, 0), |b| (b.inserts, b.updates, b.deletes));
        let w = writes(&t.key, [t.inserts - i, t.updates - u, t.deletes - d]);
        if w.total() > 0 {
            check.discarded.push(w);
        }
    }
    check.sort();
    check
}

/// [`compare`] for the tables of `now` in `base`'s schemas; every other table
/// of `now` that is not exempt (of a schema the baseline does not cover, or
/// all of them without a baseline) is unknown: for a swap, a migration
/// prepared before pgshift recorded a baseline; for a rollback, a live schema
/// whose going live recorded no counters (by an earlier version, or the
/// recording after the commit failed).
///
/// `reset`: schemas whose counters were recorded before the statistics were
/// last reset (a rollback's [`crate::swap::impact::gate::rollback_baseline`]
/// leaves them out of `base`): their tables are unknown for that reason.
pub fn compare_covered(
    base: Option<&WriteBaseline>,
    now: &WriteBaseline,
    exempt: &[TableName],
    op: Operation,
    reset: &[String],
) -> WriteCheck {
    let (known, rest): (Vec<TableCounters>, Vec<TableCounters>) = now
        .tables
        .iter()
        .cloned()
        .partition(|t| base.is_some_and(|b| b.schemas.contains(&t.key.schema)));
    let (reset_tables, rest): (Vec<TableCounters>, Vec<TableCounters>) = rest
        .into_iter()
        .partition(|t| reset.contains(&t.key.schema));
    let part = |tables| WriteBaseline {
        tables,
        ..now.clone()
    };
    let mut check = base.map_or_else(WriteCheck::default, |b| compare(b, &part(known), exempt));
    let why = match op {
        Operation::Swap => Unknown::NoBaseline,
        Operation::Rollback => Unknown::NoLiveBaseline,
    };
    check
        .unknown
        .extend(all_unknown(&part(rest), exempt, why).unknown);
    check
        .unknown
        .extend(all_unknown(&part(reset_tables), exempt, Unknown::StatsReset).unknown);
    check.sort();
    check
}

fn all_unknown(now: &WriteBaseline, exempt: &[TableName], why: Unknown) -> WriteCheck {
    let mut check = WriteCheck {
        discarded: Vec::new(),
        unknown: now
            .tables
            .iter()
            .filter(|t| !t.key.is_in(exempt))
            .map(|t| unknown(&t.key, why))
            .collect(),
    };
    check.sort();
    check
}

fn text_array(items: &[String]) -> String {
    if items.is_empty() {
        "'{}'::text[]".to_string()
    } else {
        format!(
            "ARRAY[{}]::text[]",
            items.iter().map(|s| quote_literal(s)).join(", ")
        )
    }
}

fn timestamp_literal(t: Option<DateTime<Utc>>) -> String {
    match t {
        Some(t) => format!(
            "{}::timestamptz",
            quote_literal(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        ),
        None => "NULL::timestamptz".to_string(),
    }
}

/// One query, without parameters, computing [`compare`]`(base, <counters now>,
/// exempt)` as JSON text for [`parse_check`]. Meant to run under the swap's
/// locks, in the round trip of other statements.
pub fn check_sql(base: &WriteBaseline, exempt: &[TableName]) -> String {
    let schemas = text_array(&base.schemas);
    comparison_sql(
        base,
        exempt,
        &tables_sql(&format!("n.nspname = ANY({schemas})")),
    )
}

/// [`check_sql`] over the tables a snapshot taken shortly before (`listed`,
/// e.g. the check before the swap's locks) saw, looked up by OID: no scan of
/// `pg_class` for the live schemas' tables and no extension-membership test
/// (the snapshot already left extension members out). About a third of
/// [`check_sql`]'s time at 1,000 tables. A table created after `listed` was
/// taken is not looked at (in an object-level swap it stays in public; in a
/// rename-mode swap it would go to the backup unchecked): take `listed` as
/// late as possible.
pub fn listed_check_sql(
    base: &WriteBaseline,
    listed: &WriteBaseline,
    exempt: &[TableName],
) -> String {
    let oids: Vec<String> = listed
        .tables
        .iter()
        .filter(|t| !t.key.is_in(exempt))
        .map(|t| t.oid.to_string())
        .collect();
    let schemas = text_array(&base.schemas);
    let cur = format!(
        "{TABLE_COLUMNS}
          WHERE c.oid = ANY({}::oid[]) AND n.nspname = ANY({schemas}) AND c.relkind = 'r'",
        quote_literal(&format!("{{{}}}", oids.join(",")))
    );
    comparison_sql(base, exempt, &cur)
}

/// The comparison of `base` with the tables `tables` (a query with
/// [`tables_sql`]'s columns) selects, as JSON text for [`parse_check`].
fn comparison_sql(base: &WriteBaseline, exempt: &[TableName], tables: &str) -> String {
    // Five array literals: parsed and planned in microseconds, where a VALUES
    // list of a thousand rows takes tens of milliseconds to plan (and this runs
    // while the swap holds its locks).
    let column = |f: &dyn Fn(&TableCounters) -> String, ty: &str| -> String {
        let items: Vec<String> = base.tables.iter().map(f).collect();
        format!(
            "pg_catalog.unnest({}::{ty}[])",
            quote_literal(&format!("{{{}}}", items.join(",")))
        )
    };
    let base_rows = format!(
        "SELECT * FROM ROWS FROM ({}, {}, {}, {}, {})",
        column(&|t| t.oid.to_string(), "oid"),
        column(&|t| t.inserts.to_string(), "int8"),
        column(&|t| t.updates.to_string(), "int8"),
        column(&|t| t.deletes.to_string(), "int8"),
        column(&|t| t.relfilenode.to_string(), "oid"),
    );
    let exempt_rows = if exempt.is_empty() {
        "SELECT NULL::text, NULL::text WHERE false".to_string()
    } else {
        let rows: Vec<String> = exempt
            .iter()
            .map(|t| {
                format!(
                    "({}::text, {}::text)",
                    quote_literal(t.schema_or_public()),
                    quote_literal(&t.name)
                )
            })
            .collect();
        format!("VALUES {}", rows.join(", "))
    };
    let base_track = if base.track_counts { "true" } else { "false" };
    let base_reset = timestamp_literal(base.stats_reset);
    format!(
        "SELECT CASE WHEN pg_catalog.pg_stat_clear_snapshot() IS NULL THEN NULL ELSE (
WITH base(oid, ins, upd, del, node) AS ({base_rows}),
     ex(nsp, rel) AS ({exempt_rows}),
     g AS ({GLOBAL_SQL}),
     cur AS ({tables}),
     v AS (
       SELECT cur.nsp, cur.rel, cur.anc_nsp, cur.anc_rel,
              cur.ins - COALESCE(b.ins, 0) AS dins,
              cur.upd - COALESCE(b.upd, 0) AS dupd,
              cur.del - COALESCE(b.del, 0) AS ddel,
              CASE WHEN NOT g.track THEN 'track_counts_off'
                   WHEN NOT {base_track} THEN 'track_counts_was_off'
                   WHEN g.reset IS DISTINCT FROM {base_reset} THEN 'stats_reset'
                   WHEN b.oid IS NOT NULL AND b.node <> cur.node THEN 'rewritten'
                   WHEN b.oid IS NOT NULL AND (cur.ins < b.ins OR cur.upd < b.upd OR cur.del < b.del)
                        THEN 'backwards'
              END AS code
         FROM cur CROSS JOIN g LEFT JOIN base b ON b.oid = cur.oid
        WHERE NOT EXISTS (
              SELECT 1 FROM ex
               WHERE (ex.nsp = cur.nsp AND ex.rel = cur.rel)
                  OR EXISTS (SELECT 1 FROM ROWS FROM (pg_catalog.unnest(cur.anc_nsp), pg_catalog.unnest(cur.anc_rel)) AS a(nsp, rel)
                              WHERE a.nsp = ex.nsp AND a.rel = ex.rel)))
SELECT pg_catalog.json_build_object(
  'discarded', COALESCE((SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
        'schema', nsp, 'name', rel, 'inserts', dins, 'updates', dupd, 'deletes', ddel,
        'anc_nsp', anc_nsp, 'anc_rel', anc_rel))
      FROM v WHERE code IS NULL AND dins + dupd + ddel > 0), '[]'::json),
  'unknown', COALESCE((SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
        'schema', nsp, 'name', rel, 'code', code, 'anc_nsp', anc_nsp, 'anc_rel', anc_rel))
      FROM v WHERE code IS NOT NULL), '[]'::json))::text
) END"
    )
}

#[derive(Deserialize)]
struct RawCheck {
    discarded: Vec<RawDiscarded>,
    unknown: Vec<RawUnknown>,
}

#[derive(Deserialize)]
struct RawDiscarded {
    schema: String,
    name: String,
    inserts: i64,
    updates: i64,
    deletes: i64,
    anc_nsp: Vec<String>,
    anc_rel: Vec<String>,
}

#[derive(Deserialize)]
struct RawUnknown {
    schema: String,
    name: String,
    code: String,
    anc_nsp: Vec<String>,
    anc_rel: Vec<String>,
}

/// The [`WriteCheck`] of [`check_sql`]'s output.
pub fn parse_check(json: &str) -> Result<WriteCheck> {
    let raw: RawCheck =
        serde_json::from_str(json).context("reading the result of the discarded-writes check")?;
    let mut check = WriteCheck::default();
    for d in raw.discarded {
        let at = TableKey::from_columns(d.schema, d.name, d.anc_nsp, d.anc_rel);
        check
            .discarded
            .push(writes(&at, [d.inserts, d.updates, d.deletes]));
    }
    for u in raw.unknown {
        let at = TableKey::from_columns(u.schema, u.name, u.anc_nsp, u.anc_rel);
        let why = Unknown::from_code(&u.code).with_context(|| {
            format!(
                "the discarded-writes check returned an unknown code {:?}",
                u.code
            )
        })?;
        check.unknown.push(unknown(&at, why));
    }
    check.sort();
    Ok(check)
}

/// `--allow-discard`: which discarded or unknown writes the operator accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllowDiscard {
    /// Nothing (the default): any discarded or unknown write refuses the swap.
    #[default]
    Nothing,
    /// `--allow-discard all`.
    All,
    /// `--allow-discard a,billing.b` (a partitioned table covers its partitions).
    Tables(Vec<TableName>),
}

impl AllowDiscard {
    /// `all`, or a comma-separated list of table names (identifiers, never SQL).
    pub fn parse(input: &str) -> Result<AllowDiscard, NameError> {
        let items: Vec<String> = crate::pg::pattern::split_list(input)
            .into_iter()
            .map(|i| i.trim().to_string())
            .collect();
        if items.iter().any(|i| i.eq_ignore_ascii_case("all")) {
            return Ok(AllowDiscard::All);
        }
        let names = TableName::parse_list(&items)?;
        Ok(AllowDiscard::Tables(names))
    }

    /// Whether the writes to this table are accepted.
    pub fn covers(&self, at: &TableKey) -> bool {
        match self {
            AllowDiscard::Nothing => false,
            AllowDiscard::All => true,
            AllowDiscard::Tables(t) => at.is_in(t),
        }
    }
}

/// How many tables the refusal names before "and N more".
const LISTED: usize = 5;

fn and_more(items: Vec<String>, total: usize) -> String {
    let mut s = items.join(", ");
    if total > items.len() {
        s.push_str(&format!(" and {} more", total - items.len()));
    }
    s
}

/// The live schemas of `tables` as a refusal names them: `the current
/// public` (also for none), `the current billing schema`, `the current
/// public and billing schemas` (a rollback counts each from when its
/// current tables went live).
pub(crate) fn current_schemas<'a>(tables: impl IntoIterator<Item = &'a TableKey>) -> String {
    let schemas: std::collections::BTreeSet<&str> = tables
        .into_iter()
        .map(|t| {
            if t.schema.is_empty() {
                crate::pg::meta::PUBLIC
            } else {
                t.schema.as_str()
            }
        })
        .collect();
    // public first, then the others by name.
    let shown: Vec<String> = schemas
        .iter()
        .filter(|s| **s == crate::pg::meta::PUBLIC)
        .chain(schemas.iter().filter(|s| **s != crate::pg::meta::PUBLIC))
        .map(|s| crate::pg::ident::display_ident(s))
        .collect();
    match shown.as_slice() {
        [] => "the current public".into(),
        [one] if one == crate::pg::meta::PUBLIC => "the current public".into(),
        [one] => format!("the current {one} schema"),
        [init @ .., last] => format!("the current {} and {last} schemas", init.join(", ")),
    }
}

/// What the refusal is about: a swap replaces public with the shadow, a
/// rollback replaces it with a backup. The refusal's wording and its ways out
/// differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Swap,
    Rollback,
}

impl Operation {
    pub(crate) fn subject(self) -> &'static str {
        match self {
            Operation::Swap => "the swap",
            Operation::Rollback => "the rollback",
        }
    }

    /// Since when `tables`' writes are counted.
    pub(crate) fn since<'a>(self, tables: impl IntoIterator<Item = &'a TableKey>) -> String {
        match self {
            Operation::Swap => "since prepare started".into(),
            Operation::Rollback => format!("since {} went live", current_schemas(tables)),
        }
    }

    /// Where `tables`' rows would end up.
    pub(crate) fn fate<'a>(self, tables: impl IntoIterator<Item = &'a TableKey>) -> String {
        match self {
            Operation::Swap => {
                let new = current_schemas(tables).replacen("the current", "the new", 1);
                format!("the rows would stay in the backup, not in {new}")
            }
            Operation::Rollback => {
                let restored = current_schemas(tables).replacen("the current", "the restored", 1);
                format!("the rows would stay in the new backup, not in {restored}")
            }
        }
    }

    pub(crate) fn not_covered(self, n: usize) -> String {
        let (these, are) = if n == 1 {
            ("table", "is")
        } else {
            ("tables", "are")
        };
        match self {
            Operation::Swap => format!("{these} that {are} not preserved"),
            Operation::Rollback => format!("{these} that {are} not kept"),
        }
    }

    fn anyway(self) -> &'static str {
        match self {
            Operation::Swap => "to swap anyway",
            Operation::Rollback => "to roll back anyway",
        }
    }
}

/// Refuse (the `error:` line's text, without the prefix) when the check found
/// discarded or unknown writes that `allow` does not cover, in a swap's words.
pub fn gate(check: &WriteCheck, allow: &AllowDiscard) -> Result<(), String> {
    gate_for(Operation::Swap, check, allow)
}

/// Tables a rollback cannot keep (`--keep-tables`), by the name the gate
/// shows, with the reason: left out of its advice and explained instead.
pub type Unkeepable = std::collections::BTreeMap<String, String>;

/// [`gate`] for a swap or a rollback: the tables with their counts (the
/// largest few, then "and N more"), and the two ways out.
pub fn gate_for(op: Operation, check: &WriteCheck, allow: &AllowDiscard) -> Result<(), String> {
    gate_keeping(op, check, allow, &Unkeepable::new())
}

/// [`gate_for`], advising `--keep-tables` only for the tables a rollback can
/// keep.
pub fn gate_keeping(
    op: Operation,
    check: &WriteCheck,
    allow: &AllowDiscard,
    unkeepable: &Unkeepable,
) -> Result<(), String> {
    let discarded: Vec<&DiscardedWrite> = check
        .discarded
        .iter()
        .filter(|d| !allow.covers(&d.at))
        .collect();
    let unknown: Vec<&UnknownWrite> = check
        .unknown
        .iter()
        .filter(|u| !allow.covers(&u.at))
        .collect();
    if discarded.is_empty() && unknown.is_empty() {
        return Ok(());
    }
    let mut parts = Vec::new();
    if !discarded.is_empty() {
        let n = discarded.len();
        let listed: Vec<String> = discarded
            .iter()
            .take(LISTED)
            .map(|d| format!("{} ({})", d.table, d.counts()))
            .collect();
        parts.push(format!(
            "{} would discard writes made {} to {} {} ({}): {}",
            op.subject(),
            op.since(discarded.iter().map(|d| &d.at)),
            n,
            op.not_covered(n),
            op.fate(discarded.iter().map(|d| &d.at)),
            and_more(listed, n)
        ));
    }
    if !unknown.is_empty() {
        // Group by reason, in order of first appearance.
        let mut reasons: Vec<(&str, Vec<&UnknownWrite>)> = Vec::new();
        for u in &unknown {
            match reasons.iter_mut().find(|(r, _)| *r == u.reason) {
                Some((_, v)) => v.push(u),
                None => reasons.push((&u.reason, vec![u])),
            }
        }
        for (reason, tables) in reasons {
            let listed: Vec<String> = tables
                .iter()
                .take(LISTED)
                .map(|u| u.table.clone())
                .collect();
            parts.push(format!(
                "writes to {} cannot be checked ({reason}): {}",
                plural(tables.len(), "table"),
                and_more(listed, tables.len())
            ));
        }
    }
    let names: Vec<&str> = discarded
        .iter()
        .map(|d| d.partition_of.as_deref().unwrap_or(&d.table))
        .chain(
            unknown
                .iter()
                .map(|u| u.partition_of.as_deref().unwrap_or(&u.table)),
        )
        .fold(Vec::new(), |mut acc, n| {
            if !acc.contains(&n) {
                acc.push(n);
            }
            acc
        });
    let list_of = |names: &[&str]| {
        if names.len() <= 10 {
            names.join(",")
        } else {
            "TABLES".to_string()
        }
    };
    let these_of = |names: &[&str]| {
        if names.len() == 1 {
            "this table"
        } else {
            "these tables"
        }
    };
    let (list, these) = (list_of(&names), these_of(&names));
    let only_unrecorded = discarded.is_empty()
        && unknown.iter().all(|u| {
            u.reason == Unknown::NoBaseline.reason() || u.reason == Unknown::NoLiveBaseline.reason()
        });
    // The advice, then how the way out by discarding follows it ("Pass"
    // alone when no table can be kept).
    let (keep, pass) = match op {
        Operation::Swap if only_unrecorded => (
            "Prepare again (`pgshift abort`, then `pgshift prepare`: this version records the counters; preserve the tables the application writes with --preserved-tables)".to_string(),
            ", or pass",
        ),
        Operation::Swap => (
            format!(
                "Prepare again with {these} in --preserved-tables (`pgshift abort`, then `pgshift prepare`; a table the source does not have cannot be preserved: keep it live with --keep-tables)"
            ),
            ", or pass",
        ),
        Operation::Rollback => {
            let (cannot, can): (Vec<&str>, Vec<&str>) =
                names.iter().partition(|n| unkeepable.contains_key(**n));
            let mut advice: Vec<String> = cannot
                .iter()
                .map(|n| format!("{n} cannot be kept ({})", unkeepable[*n]))
                .collect();
            if can.is_empty() {
                (advice.join(". "), ". Pass")
            } else if cannot.is_empty() {
                advice.push(format!(
                    "Keep {} with --keep-tables {}",
                    these_of(&can),
                    list_of(&can)
                ));
                (advice.join(". "), ", or pass")
            } else {
                // Keeping the ones it can leaves the others to discard
                // (h48b: the advice read as if keeping those were enough).
                advice.push(format!(
                    "Keep {} with --keep-tables {} and pass --allow-discard {} for the rest",
                    these_of(&can),
                    list_of(&can),
                    list_of(&cannot)
                ));
                (advice.join(". "), ", or pass")
            }
        }
    };
    Err(format!(
        "{}; nothing was changed. {keep}{pass} --allow-discard {list} (or --allow-discard all) {}",
        parts.join("; "),
        op.anyway(),
    ))
}

/// What the application wrote since the statistics were last reset
/// (`prepare --dry-run`'s hint for `--preserved-tables`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WritesSinceReset {
    /// Null: never reset (counting since the cluster was created or since a crash).
    pub stats_reset: Option<DateTime<Utc>>,
    pub track_counts: bool,
    /// Tables with writes, largest first.
    pub tables: Vec<TableWrites>,
}

/// The tables of `schemas` written since the statistics were last reset.
pub async fn writes_since_reset(
    client: &impl GenericClient,
    schemas: &[String],
) -> Result<WritesSinceReset> {
    let now = take_baseline(client, schemas).await?;
    let mut tables: Vec<TableWrites> = now
        .tables
        .iter()
        .map(|t| writes(&t.key, [t.inserts, t.updates, t.deletes]))
        .filter(|w| w.total() > 0)
        .collect();
    tables.sort_by(|a, b| {
        b.total()
            .cmp(&a.total())
            .then_with(|| (&a.at.schema, &a.at.name).cmp(&(&b.at.schema, &b.at.name)))
    });
    Ok(WritesSinceReset {
        stats_reset: now.stats_reset,
        track_counts: now.track_counts,
        tables,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(oid: u32, name: &str, c: [i64; 3], node: u32) -> TableCounters {
        TableCounters {
            oid,
            key: TableKey {
                schema: "public".into(),
                name: name.into(),
                ancestors: Vec::new(),
            },
            inserts: c[0],
            updates: c[1],
            deletes: c[2],
            relfilenode: node,
        }
    }

    #[test]
    fn counters_of_earlier_records_still_read() {
        // As earlier versions wrote them: the key's fields among the counters,
        // ancestors last and absent when there are none.
        let old = r#"{"oid":7,"schema":"public","name":"p1","inserts":1,"updates":2,"deletes":3,"relfilenode":9,"ancestors":[["public","p"]]}"#;
        let t: TableCounters = serde_json::from_str(old).unwrap();
        assert_eq!(
            t.key,
            TableKey {
                schema: "public".into(),
                name: "p1".into(),
                ancestors: vec![("public".into(), "p".into())],
            }
        );
        assert_eq!(
            (t.oid, t.inserts, t.updates, t.deletes, t.relfilenode),
            (7, 1, 2, 3, 9)
        );
        let plain = r#"{"oid":8,"schema":"billing","name":"b","inserts":0,"updates":0,"deletes":0,"relfilenode":8}"#;
        let p: TableCounters = serde_json::from_str(plain).unwrap();
        assert_eq!(
            (p.key.schema.as_str(), p.key.name.as_str()),
            ("billing", "b")
        );
        assert!(p.key.ancestors.is_empty());
        for c in [t, p] {
            let again = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<TableCounters>(&again).unwrap(), c);
        }
    }

    fn snap(tables: Vec<TableCounters>) -> WriteBaseline {
        WriteBaseline {
            taken_at: Utc::now(),
            schemas: vec!["public".into()],
            stats_reset: None,
            track_counts: true,
            tables,
        }
    }

    #[test]
    fn compares_by_oid() {
        let base = snap(vec![
            t(1, "a", [10, 0, 0], 1),
            t(2, "b", [5, 5, 5], 2),
            t(3, "c", [0, 0, 0], 3),
            t(4, "kept", [0, 0, 0], 4),
        ]);
        let mut now = snap(vec![
            t(1, "a_renamed", [13, 1, 0], 1),
            t(2, "b", [4, 5, 5], 2),
            t(3, "c", [0, 0, 0], 30),
            t(4, "kept", [9, 9, 9], 4),
            t(5, "new", [0, 2, 0], 5),
            t(6, "new_empty", [0, 0, 0], 6),
        ]);
        now.tables[4].key.ancestors = vec![("public".into(), "parent".into())];
        let exempt = vec![TableName::parse("kept").unwrap()];
        let c = compare(&base, &now, &exempt);
        let d: Vec<(&str, i64, i64, i64)> = c
            .discarded
            .iter()
            .map(|d| (d.table.as_str(), d.inserts, d.updates, d.deletes))
            .collect();
        assert_eq!(d, vec![("a_renamed", 3, 1, 0), ("new", 0, 2, 0)]);
        assert_eq!(c.discarded[1].partition_of.as_deref(), Some("parent"));
        let u: Vec<(&str, &str)> = c
            .unknown
            .iter()
            .map(|u| (u.table.as_str(), u.reason.as_str()))
            .collect();
        assert_eq!(
            u,
            vec![
                ("b", Unknown::Backwards.reason()),
                ("c", Unknown::Rewritten.reason())
            ]
        );
        // A partition of an exempt parent is exempt.
        let c = compare(&base, &now, &[TableName::parse("parent").unwrap()]);
        assert!(c.discarded.iter().all(|d| d.table != "new"));
        // A reset makes everything unknown.
        now.stats_reset = Some(Utc::now());
        let c = compare(&base, &now, &exempt);
        assert!(c.discarded.is_empty());
        assert_eq!(c.unknown.len(), 5);
        assert!(
            c.unknown
                .iter()
                .all(|u| u.reason == Unknown::StatsReset.reason())
        );
    }

    #[test]
    fn gate_lists_the_largest_and_the_ways_out() {
        let base = snap(
            (1..=8)
                .map(|i| t(i, &format!("t{i}"), [0, 0, 0], i))
                .collect(),
        );
        let now = snap(
            (1..=8)
                .map(|i| {
                    t(
                        i,
                        &format!("t{i}"),
                        [i as i64, if i == 1 { 1 } else { 0 }, 0],
                        i,
                    )
                })
                .collect(),
        );
        let c = compare(&base, &now, &[]);
        let msg = gate(&c, &AllowDiscard::Nothing).unwrap_err();
        assert!(
            msg.starts_with("the swap would discard writes made since prepare started to 8 tables that are not preserved"),
            "{msg}"
        );
        assert!(
            msg.contains(": t8 (8 inserts), t7 (7 inserts), t6 (6 inserts), t5 (5 inserts), t4 (4 inserts) and 3 more;"),
            "{msg}"
        );
        assert!(msg.contains("in --preserved-tables"), "{msg}");
        assert!(
            msg.contains("--allow-discard t8,t7,t6,t5,t4,t3,t1,t2 (or --allow-discard all)"),
            "{msg}"
        );
        assert!(gate(&c, &AllowDiscard::All).is_ok());
        let all_but_one = AllowDiscard::parse("t2, t3,t4,t5,t6,t7,t8").unwrap();
        let msg = gate(&c, &all_but_one).unwrap_err();
        assert!(msg.contains("to 1 table that is not preserved"), "{msg}");
        assert!(msg.contains("t1 (1 insert, 1 update)"), "{msg}");
        // A prepared migration is aborted before another prepare.
        let advice = "Prepare again with this table in --preserved-tables (`pgshift abort`, then";
        assert!(msg.contains(advice), "{msg}");
        assert_eq!(AllowDiscard::parse("ALL").unwrap(), AllowDiscard::All);
        assert!(AllowDiscard::parse("a;b").is_err());
        assert!(AllowDiscard::parse("").is_err());
        assert!(AllowDiscard::parse("billing.b").unwrap().covers(&TableKey {
            schema: "billing".into(),
            name: "b".into(),
            ancestors: Vec::new(),
        }));
    }

    /// A rollback's advice when some written tables can be kept and some
    /// cannot: keeping the first is not enough by itself (h48b).
    #[test]
    fn rollback_gate_advises_keeping_what_it_can_and_discarding_the_rest() {
        let base = snap(vec![
            t(1, "actor", [0, 0, 0], 1),
            t(2, "events", [0, 0, 0], 2),
        ]);
        let now = snap(vec![
            t(1, "actor", [0, 10, 0], 1),
            t(2, "events", [3, 0, 0], 2),
        ]);
        let c = compare(&base, &now, &[]);
        let mut unkeepable = Unkeepable::new();
        unkeepable.insert(
            "actor".to_string(),
            "a view of the backup reads it".to_string(),
        );
        let msg =
            gate_keeping(Operation::Rollback, &c, &AllowDiscard::Nothing, &unkeepable).unwrap_err();
        assert!(
            msg.contains("actor cannot be kept (a view of the backup reads it). Keep this table with --keep-tables events and pass --allow-discard actor for the rest, or pass --allow-discard actor,events (or --allow-discard all) to roll back anyway"),
            "{msg}"
        );
        // Only keepable tables: keeping them is the whole way out.
        let msg = gate_keeping(
            Operation::Rollback,
            &c,
            &AllowDiscard::Nothing,
            &Unkeepable::new(),
        )
        .unwrap_err();
        assert!(
            msg.contains("Keep these tables with --keep-tables actor,events, or pass --allow-discard actor,events"),
            "{msg}"
        );
    }

    #[test]
    fn check_sql_quotes_everything() {
        let mut base = snap(vec![t(1, "a", [1, 2, 3], 1)]);
        base.schemas = vec!["it's".into()];
        base.stats_reset = Some(Utc::now());
        let odd = TableName {
            schema: None,
            name: "o'k".into(),
        };
        let sql = check_sql(&base, &[odd]);
        assert!(sql.contains("ARRAY['it''s']::text[]"), "{sql}");
        assert!(sql.contains("('public'::text, 'o''k'::text)"), "{sql}");
        assert!(!sql.contains('$'), "no bind parameters: {sql}");
    }
}
