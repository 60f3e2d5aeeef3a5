//! Table filters: which tables a migration leaves out or leaves alone.
//!
//! - `--exclude-table-data P`: the source's table is migrated without its
//!   rows (structure, indexes, constraints, sequences as usual); the record
//!   counts it with 0 rows, so the swap's check and `verify` expect it empty.
//!   A foreign key of a table migrated with its rows that references it (or
//!   its partitioned parent) could not be created: refused here (for a
//!   preserved table's key, which no filter can take, the ways out are the
//!   referenced table's rows or not preserving it).
//! - `--exclude-table P`: the source's table is not migrated at all: pg_dump
//!   is given its exact name (`--exclude-table="public"."t"`, with the
//!   sequences it owns) and no rows are copied. An object of the source that
//!   depends on it or on a sequence it owns (a view, a foreign key or a
//!   column default of another table, a function with an SQL body, a column,
//!   argument, attribute or domain of its row type or of an array of it, a
//!   rule of another table) would be restored without it, so it is refused
//!   here, naming the dependents, with advice that fits them: tables and
//!   views can be excluded too; functions, types and domains come with the
//!   schema (no flag leaves them out). A function whose body is text (plpgsql,
//!   an SQL function's string body) has no recorded dependencies: the
//!   excluded tables its body names are a warning (`bodies_naming`).
//! - `--keep-tables P`: destination tables that stay in the new public as
//!   they are: not copied, no triggers; the source's namesake is not migrated
//!   (as with `--exclude-table`). The swap leaves them in public (the engine's
//!   keep list, as `rollback --keep-tables` does) and fixes the foreign keys
//!   that then cross schemas with the same mechanism
//!   (`swap::rollback::fix_crossing_fks`); the source's foreign keys that
//!   reference a kept table are deferred to the swap's transaction like a
//!   preserved table's (checked for violations before it). A kept table's own
//!   foreign key to a table that the migration does not bring is refused here,
//!   and so is a migrated object that uses a column the kept table lacks on
//!   the destination (it would fail the restore), or a sequence the kept table's
//!   namesake owns (a column default) when the destination's sequence of that
//!   name is missing or behind the source's: after the swap it would hand out
//!   values the migrated rows already hold.
//!
//! With several schemas (`--schemas`) every filter matches in each chosen
//! schema (a pattern without a schema part in all of them) and tables are
//! named by key: `name` in public, `schema.name` elsewhere.
//!
//! Patterns are psql's (`pg::pattern`), matched against plain and
//! partitioned tables of the source's public (`--exclude-table` also matches
//! foreign tables, views and materialized views, as pg_dump's `-T` does;
//! `--keep-tables` matches the destination's tables). A matched table brings its
//! partitions and inheritance children along (a child with another parent
//! whose rows come must be named itself: it would take its rows out of that
//! parent); a kept partition needs its
//! parent kept, and a source table named like one that is not the source's
//! own partition of the kept table is left out with a warning (the name is
//! the kept partition's), or refused when source objects use it. A pattern
//! that matches nothing is a usage error (exit 2): a typo must not silently
//! migrate everything. A table both preserved and
//! filtered is a usage error too; `--keep-tables` wins over the exclusions
//! and `--exclude-table` over `--exclude-table-data` (as pg_dump's `-T`).
//! Everything here only reads the catalogs; the result is what
//! `prepare --dry-run` shows.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use anyhow::Result;
use itertools::Itertools;
use serde::Serialize;
use tokio_postgres::Client;

use crate::backups::manifest::ForeignKeyDef;
use crate::pg::exec::pg_error_as;
use crate::pg::ident::{TableName, display_ident};
use crate::pg::meta::{table_display, table_shown};
use crate::pg::pattern::TablePattern;
use crate::swap::rollback;

/// The filters as given (patterns, not yet matched against a catalog).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableFilters {
    pub exclude_table_data: Vec<TablePattern>,
    pub exclude_table: Vec<TablePattern>,
    pub keep_tables: Vec<TablePattern>,
}

impl TableFilters {
    pub fn is_empty(&self) -> bool {
        self.exclude_table_data.is_empty()
            && self.exclude_table.is_empty()
            && self.keep_tables.is_empty()
    }
}

/// What one pattern matched (partitions included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatternMatch {
    pub pattern: String,
    /// Keys: public's names as stored, others' `schema.name` (README's JSON).
    pub tables: Vec<String>,
    /// The same tables as a reader types them (`"Audit Log"`), for text.
    #[serde(skip)]
    pub shown: Vec<String>,
}

/// Each filter's patterns and their matches (`filters` in `prepare --dry-run --json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Matched {
    pub exclude_table_data: Vec<PatternMatch>,
    pub exclude_table: Vec<PatternMatch>,
    pub keep_tables: Vec<PatternMatch>,
}

/// The filters resolved against both catalogs: what prepare does.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub matched: Matched,
    /// Source tables created empty.
    pub data_excluded: BTreeSet<String>,
    /// Source tables not migrated: excluded ones and the kept tables' namesakes.
    pub not_migrated: BTreeSet<String>,
    /// Destination tables kept, as matched (parents; the swap adds partitions).
    pub kept: BTreeSet<String>,
    pub warnings: Vec<String>,
}

/// A relation of a schema: name, kind, parents (their keys: a parent may be
/// in another schema, as a partition's may; an inheritance child may have
/// several, in `inhseqno` order).
#[derive(Debug, Clone)]
struct Rel {
    schema: String,
    name: String,
    relkind: char,
    parents: Vec<String>,
}

/// Tables (plain, partitioned, foreign), views and materialized views of
/// `schema` (not extension members).
async fn relations(client: &Client, schema: &str) -> Result<Vec<Rel>> {
    let rows = client
        .query(
            "SELECT c.relname::text, c.relkind::text,
                    ARRAY(SELECT pn.nspname::text FROM pg_catalog.pg_inherits i
                            JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
                            JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
                           WHERE i.inhrelid = c.oid ORDER BY i.inhseqno),
                    ARRAY(SELECT p.relname::text FROM pg_catalog.pg_inherits i
                            JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
                           WHERE i.inhrelid = c.oid ORDER BY i.inhseqno)
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'f', 'v', 'm')
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                 WHERE d.classid = 'pg_catalog.pg_class'::regclass
                                   AND d.objid = c.oid AND d.deptype = 'e')
              ORDER BY 1",
            &[&schema],
        )
        .await
        .map_err(|e| pg_error_as(e, "listing tables for the table filters"))?;
    Ok(rows
        .into_iter()
        .map(|r| Rel {
            schema: schema.to_string(),
            name: r.get(0),
            relkind: r.get::<_, String>(1).chars().next().unwrap_or('r'),
            parents: r
                .get::<_, Vec<String>>(2)
                .iter()
                .zip(r.get::<_, Vec<String>>(3))
                .map(|(ps, pn)| table_display(ps, &pn))
                .collect(),
        })
        .collect())
}

impl Rel {
    /// `name` in public, `schema.name` elsewhere (`TableInfo::key`).
    fn key(&self) -> String {
        table_display(&self.schema, &self.name)
    }
}

/// The relations of every schema in `schemas`.
async fn relations_of(client: &Client, schemas: &[String]) -> Result<Vec<Rel>> {
    let mut all = Vec::new();
    for s in schemas {
        all.extend(relations(client, s).await?);
    }
    Ok(all)
}

/// `names` (keys) and every descendant of them in `rels`.
fn with_descendants(rels: &[Rel], names: &BTreeSet<String>) -> BTreeSet<String> {
    let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rels {
        for p in &r.parents {
            children.entry(p.clone()).or_default().push(r.key());
        }
    }
    let mut out = names.clone();
    let mut todo: Vec<String> = names.iter().cloned().collect();
    while let Some(n) = todo.pop() {
        for c in children.get(&n).into_iter().flatten() {
            if out.insert(c.clone()) {
                todo.push(c.clone());
            }
        }
    }
    out
}

/// Match each pattern of one filter against `candidates` (the tables of the
/// migrated `schemas`); a pattern that matches nothing is a usage error
/// naming the flag and where it looked, and, when its schema part names none
/// of `schemas`, that this is why.
fn match_filter(
    flag: &str,
    patterns: &[TablePattern],
    rels: &[Rel],
    kinds: &[char],
    schemas: &[String],
    where_: &str,
) -> Result<(Vec<PatternMatch>, BTreeSet<String>)> {
    let mut out = Vec::new();
    let mut all = BTreeSet::new();
    for p in patterns {
        let hits = named_by(p, rels, kinds);
        if hits.is_empty() {
            let hint = if schemas.iter().any(|s| p.matches_schema(s)) {
                p.fold_hint(
                    rels.iter()
                        .filter(|r| kinds.contains(&r.relkind))
                        .map(|r| (r.schema.as_str(), r.name.as_str())),
                )
            } else {
                " (its schema is not among --schemas: pgshift migrates only those, and leaves the tables of the others as they are)".to_string()
            };
            crate::refuse!("{flag} {p}: no table of {where_} matches{hint}; nothing was changed");
        }
        let hits = with_descendants(rels, &hits);
        all.extend(hits.iter().cloned());
        let shown = shown_of(rels);
        out.push(PatternMatch {
            pattern: p.to_string(),
            tables: hits.iter().cloned().collect(),
            shown: hits.iter().map(|k| shown_key(k, &shown)).collect(),
        });
    }
    Ok((out, all))
}

/// The relations (of `kinds`) that pattern `p` names itself, without the
/// descendants [`match_filter`] adds.
fn named_by(p: &TablePattern, rels: &[Rel], kinds: &[char]) -> BTreeSet<String> {
    rels.iter()
        .filter(|r| kinds.contains(&r.relkind) && p.matches(&r.schema, &r.name))
        .map(Rel::key)
        .collect()
}

/// Each relation's key ([`table_display`]) and its name as a reader types
/// it ([`table_shown`]).
fn shown_of(rels: &[Rel]) -> BTreeMap<String, String> {
    rels.iter()
        .map(|r| (r.key(), table_shown(&r.schema, &r.name)))
        .collect()
}

/// Tables named by their keys ([`table_display`]: public's as stored), as a
/// reader must type them (`users`, `"Users"`, `"Sales"."Invoice"`): `shown`
/// maps the keys of the source's relations.
fn names(set: &BTreeSet<String>, shown: &BTreeMap<String, String>) -> String {
    set.iter().map(|k| shown_key(k, shown)).join(", ")
}

/// One key as [`names`] shows it; a key of no source relation is a name of
/// public as stored.
fn shown_key(key: &str, shown: &BTreeMap<String, String>) -> String {
    shown
        .get(key)
        .cloned()
        .unwrap_or_else(|| display_ident(key))
}

/// Match `--keep-tables` patterns against the destination's public: the
/// matches per pattern and every kept table (partitions included). A kept
/// partition needs its parent kept (it would stay attached to a table in the
/// backup otherwise).
pub async fn match_keep(
    dest: &Client,
    schemas: &[String],
    patterns: &[TablePattern],
) -> Result<(Vec<PatternMatch>, BTreeSet<String>)> {
    if patterns.is_empty() {
        return Ok((Vec::new(), BTreeSet::new()));
    }
    let rels = relations_of(dest, schemas).await?;
    let (m, kept) = match_filter(
        "--keep-tables",
        patterns,
        &rels,
        &['r', 'p'],
        schemas,
        &format!("the destination's {}", schemas.join(", ")),
    )?;
    let listed: HashSet<String> = rels.iter().map(Rel::key).collect();
    let shown = shown_of(&rels);
    for r in rels.iter().filter(|r| kept.contains(&r.key())) {
        if let Some(p) = r
            .parents
            .iter()
            .find(|p| listed.contains(*p) && !kept.contains(*p))
        {
            let p = shown_key(p, &shown);
            crate::refuse!(
                "--keep-tables: {} is a partition (or child) of {p}, which is not kept; keep {p} itself; nothing was changed",
                table_shown(&r.schema, &r.name),
            );
        }
    }
    // Partitions (or children) in another schema are refused.
    for (schema, names) in by_schema(&rels, &kept) {
        let names: Vec<String> = names.into_iter().collect();
        rollback::descendants(dest, &schema, &names).await?;
    }
    Ok((m, kept))
}

/// Keys (`name`, `schema.name`) of `rels` grouped by schema.
fn by_schema(rels: &[Rel], keys: &BTreeSet<String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in rels.iter().filter(|r| keys.contains(&r.key())) {
        out.entry(r.schema.clone())
            .or_default()
            .insert(r.name.clone());
    }
    out
}

/// Match the filters against the source's and the destination's public and
/// check that the result can be migrated. Read only.
pub async fn resolve(
    filters: &TableFilters,
    preserved: &[TableName],
    schemas: &[String],
    src: &Client,
    dest: &Client,
) -> Result<Resolved> {
    let mut res = Resolved::default();
    if filters.is_empty() {
        return Ok(res);
    }
    let src_rels = relations_of(src, schemas).await?;
    let shown_of = shown_of(&src_rels);
    let where_ = format!("the source's {}", schemas.join(", "));
    let data_kinds = ['r', 'p'];
    let (m, data) = match_filter(
        "--exclude-table-data",
        &filters.exclude_table_data,
        &src_rels,
        &data_kinds,
        schemas,
        &where_,
    )?;
    res.matched.exclude_table_data = m;
    let exclude_kinds = ['r', 'p', 'f', 'v', 'm'];
    let (m, excluded) = match_filter(
        "--exclude-table",
        &filters.exclude_table,
        &src_rels,
        &exclude_kinds,
        schemas,
        &where_,
    )?;
    res.matched.exclude_table = m;
    let (m, kept) = match_keep(dest, schemas, &filters.keep_tables).await?;
    res.matched.keep_tables = m;
    let preserved: BTreeSet<String> = preserved
        .iter()
        .map(|t| table_display(t.schema_or_public(), &t.name))
        .collect();
    for (flag, set) in [
        ("--exclude-table-data", &data),
        ("--exclude-table", &excluded),
        ("--keep-tables", &kept),
    ] {
        let both: BTreeSet<String> = set.intersection(&preserved).cloned().collect();
        if !both.is_empty() {
            crate::refuse!(
                "{flag} matches preserved table{} {}: a preserved table is migrated and kept in sync, so it cannot also be filtered; nothing was changed",
                if both.len() == 1 { "" } else { "s" },
                names(&both, &shown_of)
            );
        }
    }

    let src_names: HashSet<String> = src_rels.iter().map(Rel::key).collect();
    let namesakes: BTreeSet<String> = kept
        .iter()
        .filter(|t| src_names.contains(*t))
        .cloned()
        .collect();
    res.not_migrated = with_descendants(&src_rels, &namesakes);
    res.not_migrated.extend(excluded.iter().cloned());
    let excluded_by_name: BTreeSet<String> = filters
        .exclude_table
        .iter()
        .flat_map(|p| named_by(p, &src_rels, &exclude_kinds))
        .collect();
    // A partition or child left out by name while its parent is migrated:
    // what was asked, said once, since the parent then comes without those
    // rows (and a partitioned one without a partition for their range).
    for r in src_rels
        .iter()
        .filter(|r| excluded_by_name.contains(&r.key()))
    {
        for p in r.parents.iter().filter(|p| !res.not_migrated.contains(*p)) {
            let Some(parent) = src_rels.iter().find(|x| x.key() == *p) else {
                continue;
            };
            let child = shown_key(&r.key(), &shown_of);
            res.warnings.push(format!(
                "--exclude-table {child}: {} {} is migrated without {child}'s rows{}",
                if parent.relkind == 'p' { "its partitioned table" } else { "its parent" },
                shown_key(p, &shown_of),
                if parent.relkind == 'p' {
                    ", and without a partition for their range: after the swap, rows of that range go to its default partition if it has one, else are refused"
                } else {
                    ""
                }
            ));
        }
    }
    let namesakes_and_theirs = with_descendants(&src_rels, &namesakes);
    let cause = |child: &str| {
        if namesakes_and_theirs.contains(child) {
            "--keep-tables"
        } else {
            "--exclude-table"
        }
    };
    refuse_rows_lost_to_another_parent(
        &src_rels,
        &res.not_migrated,
        &(&res.not_migrated | &data),
        &excluded_by_name,
        &Wording {
            flag: "--exclude-table",
            cause: &cause,
            left: "it is left out with",
        },
        &shown_of,
    )?;
    res.data_excluded = data
        .difference(&res.not_migrated)
        .cloned()
        .collect::<BTreeSet<_>>();
    let data_by_name: BTreeSet<String> = filters
        .exclude_table_data
        .iter()
        .flat_map(|p| named_by(p, &src_rels, &data_kinds))
        .chain(excluded_by_name)
        .collect();
    let rowless = &res.data_excluded | &res.not_migrated;
    refuse_rows_lost_to_another_parent(
        &src_rels,
        &rowless,
        &rowless,
        &data_by_name,
        &Wording {
            flag: "--exclude-table-data",
            cause: &|_| "--exclude-table-data",
            left: "its rows are left out with those of",
        },
        &shown_of,
    )?;

    // Objects of the source that need an excluded table.
    let by_key: BTreeMap<String, &Rel> = src_rels.iter().map(|r| (r.key(), r)).collect();
    let parts = |keys: &mut dyn Iterator<Item = &String>| -> (Vec<String>, Vec<String>) {
        keys.filter_map(|k| by_key.get(k))
            .map(|r| (r.schema.clone(), r.name.clone()))
            .unzip()
    };
    let excluded_only = parts(&mut excluded.difference(&namesakes));
    let leaving = parts(&mut res.not_migrated.iter());
    // Objects of other schemas are not migrated: they do not need the tables.
    let deps = dependents(src, &excluded_only, &leaving, schemas).await?;
    if !deps.is_empty() {
        crate::refuse!(
            "--exclude-table: objects of the source depend on excluded tables and would be migrated without them: {}; {}; nothing was changed",
            deps.iter().map(|(d, _)| d).join(", "),
            dependents_advice(&deps)
        );
    }

    res.warnings
        .extend(bodies_naming(src, &excluded_only, &res.not_migrated, schemas).await?);

    // Sequences the kept tables' namesakes own that migrated objects use.
    let kept_sources = parts(&mut namesakes_and_theirs.iter());
    let sources = KeptSources {
        src,
        dest,
        tables: &kept_sources,
        leaving: &leaving,
        schemas,
    };
    sources.sequences().await?;
    sources.columns().await?;

    // A table migrated with its rows whose foreign key references a table
    // migrated without them: the key could not be created.
    if !res.data_excluded.is_empty() {
        let pg15 = crate::pg::catalog::server_major(src).await? >= 15;
        let mut blocking = Vec::new();
        for schema in schemas {
            let with_rows: Vec<String> = src_rels
                .iter()
                .filter(|r| &r.schema == schema)
                .filter(|r| {
                    !res.not_migrated.contains(&r.key()) && !res.data_excluded.contains(&r.key())
                })
                .map(|r| r.name.clone())
                .collect();
            blocking.extend(
                rollback::foreign_keys_of(src, schema, &with_rows, pg15)
                    .await?
                    .into_iter()
                    .filter_map(|fk| {
                        let to = table_display(&fk.ref_schema, &fk.def.ref_table);
                        let from = table_display(&fk.schema, &fk.def.table);
                        let shown = format!(
                            "{} of {} references {}",
                            display_ident(&fk.def.name),
                            table_shown(&fk.schema, &fk.def.table),
                            table_shown(&fk.ref_schema, &fk.def.ref_table)
                        );
                        if res.data_excluded.contains(&to) {
                            return Some((shown, from, vec![to]));
                        }
                        // A partitioned table's rows are its partitions'.
                        let partitioned = by_key.get(&to).is_some_and(|r| r.relkind == 'p');
                        let empty: Vec<String> = if partitioned {
                            with_descendants(&src_rels, &BTreeSet::from([to]))
                                .intersection(&res.data_excluded)
                                .cloned()
                                .collect()
                        } else {
                            Vec::new()
                        };
                        (!empty.is_empty()).then(|| {
                            let shown = format!(
                                "{shown} (its partitions {} without rows)",
                                empty.iter().map(|k| shown_key(k, &shown_of)).join(", ")
                            );
                            (shown, from, empty)
                        })
                    }),
            );
        }
        if !blocking.is_empty() {
            blocking.sort();
            crate::refuse!(
                "--exclude-table-data: tables migrated with their rows have foreign keys to tables migrated without them: {}; {}; nothing was changed",
                blocking.iter().map(|(shown, _, _)| shown).join(", "),
                blocking_advice(&blocking, &preserved, &shown_of)
            );
        }
    }

    if !kept.is_empty() {
        let dest_rels = relations_of(dest, schemas).await?;
        let unrelated = left_out_by_a_kept_descendant(&src_rels, &dest_rels, &kept, &excluded);
        // What uses them would use the kept partition of that name instead.
        let (mut used, mut deps) = (BTreeSet::new(), Vec::new());
        for u in &unrelated {
            let d = dependents(src, &parts(&mut u.keys.iter()), &leaving, schemas).await?;
            if !d.is_empty() {
                used.insert(u.key.clone());
                deps.extend(d.into_iter().map(|(d, _)| d));
            }
        }
        if !deps.is_empty() {
            crate::refuse!(
                "--keep-tables: objects of the source use {}, which {} not migrated: a partition (or child) of a kept table has that name on the destination, so they would use it instead: {}; rename one of the two tables (on the source or the destination), or exclude those objects too; nothing was changed",
                names(&used, &shown_of),
                if used.len() == 1 { "is" } else { "are" },
                deps.join(", "),
            );
        }
        res.warnings
            .extend(unrelated.into_iter().filter_map(|u| u.warning));
        let kept_by_schema = by_schema(&dest_rels, &kept);
        let migrated: BTreeSet<String> = src_rels
            .iter()
            .map(Rel::key)
            .filter(|k| !res.not_migrated.contains(k))
            .collect();
        kept_foreign_keys(dest, schemas, &kept_by_schema, |s, t| {
            migrated.contains(&table_display(s, t))
        })
        .await?;
        let all: Vec<(String, String)> = kept_by_schema
            .iter()
            .flat_map(|(s, t)| t.iter().map(|t| (s.clone(), t.clone())))
            .collect();
        for (s, tables) in &kept_by_schema {
            let roots: Vec<String> = tables.iter().cloned().collect();
            res.warnings.extend(
                rollback::kept_table_warnings(dest, s, &roots, &all, schemas, "the backup").await?,
            );
        }
        res.kept = kept;
    }
    Ok(res)
}

/// How [`refuse_rows_lost_to_another_parent`] words its refusal.
struct Wording<'a> {
    /// The flag that names a child to leave out knowingly.
    flag: &'a str,
    /// The flag named first, for a child (`--keep-tables` for the
    /// descendants of a kept table's namesake).
    cause: &'a dyn Fn(&str) -> &'static str,
    /// What happens to the child ("it is left out with").
    left: &'a str,
}

/// An inheritance child follows a parent whose rows do not come (a kept
/// table's namesake, an excluded table, one migrated without its rows);
/// when it inherits from another parent whose rows do come, that parent
/// would be migrated without the child's rows, which a query of it on the
/// source includes. Refused (exit 2), unless `flag` names the child itself:
/// then leaving its rows out is what was asked. A parent in `without_rows`
/// (left out, or migrated without its rows) loses nothing.
fn refuse_rows_lost_to_another_parent(
    rels: &[Rel],
    rowless: &BTreeSet<String>,
    without_rows: &BTreeSet<String>,
    named: &BTreeSet<String>,
    wording: &Wording,
    shown: &BTreeMap<String, String>,
) -> Result<()> {
    let Wording { flag, cause, left } = wording;
    let listed: HashSet<String> = rels.iter().map(Rel::key).collect();
    let mut lost = Vec::new();
    let mut children = BTreeSet::new();
    for r in rels {
        let key = r.key();
        if !rowless.contains(&key) || named.contains(&key) {
            continue;
        }
        let out: Vec<&String> = r.parents.iter().filter(|p| rowless.contains(*p)).collect();
        let with_rows: Vec<&String> = r
            .parents
            .iter()
            .filter(|p| listed.contains(*p) && !without_rows.contains(*p))
            .collect();
        if out.is_empty() || with_rows.is_empty() {
            continue;
        }
        let show = |ps: &[&String]| ps.iter().map(|p| shown_key(p, shown)).join(", ");
        let child = shown_key(&key, shown);
        lost.push((
            cause(&key),
            format!(
                "the source's {child} inherits from {} and from {}: {left} {}, so {} would be migrated without {child}'s rows",
                show(&out),
                show(&with_rows),
                show(&out),
                show(&with_rows)
            ),
        ));
        children.insert(child);
    }
    let Some((first, _)) = lost.first() else {
        return Ok(());
    };
    // As a shell takes it: a quoted name inside single quotes.
    let children = children.into_iter().join(",");
    let children = if children.contains('"') {
        crate::pg::ident::as_typed(&children)
    } else {
        children
    };
    crate::refuse!(
        "{first}: {}; leave those parents out too, or name the children in {flag} to leave their rows out knowingly (`{flag} {children}`); nothing was changed",
        lost.iter().map(|(_, l)| l).join("; "),
    );
}

/// One of [`left_out_by_a_kept_descendant`]'s relations.
struct Unrelated {
    key: String,
    /// `key` and its own descendants, left out with it.
    keys: BTreeSet<String>,
    /// None for a table `--exclude-table` leaves out anyway.
    warning: Option<String>,
}

/// The source's relations left out only because a kept table's partition
/// (or inheritance child) on the destination has their name, while they are
/// not the source's own partitions of that kept table (whose namesake is left
/// out with its partitions, as the user asked): a table of unrelated rows,
/// a partition of another table, a view. The name stays the kept
/// partition's, so they cannot be migrated (nor their own partitions); said,
/// since nothing else would (not for those `excluded` anyway); what uses
/// them is refused either way.
fn left_out_by_a_kept_descendant(
    src_rels: &[Rel],
    dest_rels: &[Rel],
    kept: &BTreeSet<String>,
    excluded: &BTreeSet<String>,
) -> Vec<Unrelated> {
    let dest: BTreeMap<String, &Rel> = dest_rels.iter().map(|r| (r.key(), r)).collect();
    let kept_parent = |k: &String| {
        dest.get(k)
            .and_then(|r| r.parents.iter().find(|p| kept.contains(*p)))
    };
    let src: BTreeMap<String, &Rel> = src_rels.iter().map(|r| (r.key(), r)).collect();
    let roots: BTreeSet<String> = kept
        .iter()
        .filter(|k| kept_parent(k).is_none() && src.contains_key(*k))
        .cloned()
        .collect();
    let expected = with_descendants(src_rels, &roots);
    let unrelated: BTreeSet<String> = kept
        .iter()
        .filter(|k| !expected.contains(*k))
        .filter(|k| kept_parent(k).is_some() && src.contains_key(*k))
        .cloned()
        .collect();
    let (dest_shown, src_shown) = (shown_of(dest_rels), shown_of(src_rels));
    let descendants = |k: &String| with_descendants(src_rels, &BTreeSet::from([k.clone()]));
    // One under another (a partition of a left-out table) goes with it.
    let under: BTreeSet<String> = unrelated
        .iter()
        .flat_map(|u| descendants(u).into_iter().filter(move |d| d != u))
        .collect();
    unrelated
        .iter()
        .filter(|k| !under.contains(*k))
        .map(|k| {
            let (r, d) = (src[k], dest[k]);
            let kind = match r.relkind {
                'v' => "view",
                'm' => "materialized view",
                'f' => "foreign table",
                _ => "table",
            };
            let whose = match r.parents.as_slice() {
                [] => String::new(),
                ps => format!(
                    ", a partition (or child) of {},",
                    ps.iter().map(|p| shown_key(p, &src_shown)).join(" and ")
                ),
            };
            let keys = descendants(k);
            let along: Vec<String> = keys
                .iter()
                .filter(|o| *o != k)
                .map(|o| shown_key(o, &src_shown))
                .collect();
            let along = match along.len() {
                0 => String::new(),
                _ => format!(" (with its partitions or children {})", along.join(", ")),
            };
            let rows = if r.relkind == 'v' { "" } else { ", nor its rows" };
            Unrelated {
                // Excluded on purpose: no news, but what uses it is refused.
                warning: (!excluded.contains(k)).then(|| format!(
                    "the source's {kind} {}{whose} is not migrated{along}{rows}: the destination's {}, a partition (or child) of the kept table {}, keeps that name in {}; rename one of them to migrate it",
                    table_shown(&r.schema, &r.name),
                    shown_key(k, &dest_shown),
                    shown_key(&d.parents.iter().find(|p| kept.contains(*p)).cloned().unwrap_or_default(), &dest_shown),
                    display_ident(&d.schema),
                )),
                key: k.clone(),
                keys,
            }
        })
        .collect()
}

/// What to do about foreign keys of tables migrated with their rows to
/// tables migrated without them (`blocking`: each key shown, its table, the
/// tables without rows it needs): exclude the referencing tables' data too;
/// a preserved table cannot be filtered, so for its keys the ways out are to
/// keep the referenced table's rows or not to preserve it.
fn blocking_advice(
    blocking: &[(String, String, Vec<String>)],
    preserved: &BTreeSet<String>,
    shown: &BTreeMap<String, String>,
) -> String {
    let (kept, plain): (Vec<_>, Vec<_>) = blocking
        .iter()
        .partition(|(_, from, _)| preserved.contains(from));
    if kept.is_empty() {
        return "exclude their data too".into();
    }
    let tables = |v: &[&(String, String, Vec<String>)]| -> BTreeSet<String> {
        v.iter().map(|(_, from, _)| from.clone()).collect()
    };
    let kept_tables = tables(&kept);
    let targets: BTreeSet<String> = kept
        .iter()
        .flat_map(|(_, _, to)| to.iter().cloned())
        .collect();
    let mut advice = String::new();
    if !plain.is_empty() {
        advice.push_str(&format!(
            "exclude the data of {} too; ",
            names(&tables(&plain), shown)
        ));
    }
    advice.push_str(&format!(
        "{} {} preserved, and a preserved table cannot be filtered: do not exclude the data of {}, or do not preserve {}",
        names(&kept_tables, shown),
        if kept_tables.len() == 1 { "is" } else { "are" },
        names(&targets, shown),
        names(&kept_tables, shown),
    ));
    advice
}

/// The foreign keys of kept tables (`kept`: names by live schema) that
/// reference tables of the migrated `schemas` which are not kept: after the
/// swap they point at the new namesakes, so each must be one that `arrives`
/// (schema, table) with the migration; otherwise a usage error naming the
/// others. Keys to other schemas stay as they are. Read only; the keys come
/// back with live schema names.
pub async fn kept_foreign_keys(
    client: &Client,
    schemas: &[String],
    kept: &BTreeMap<String, BTreeSet<String>>,
    arrives: impl Fn(&str, &str) -> bool,
) -> Result<Vec<ForeignKeyDef>> {
    let pg15 = crate::pg::catalog::server_major(client).await? >= 15;
    let mut out = Vec::new();
    let mut missing = Vec::new();
    let is_kept = |s: &str, t: &str| kept.get(s).is_some_and(|k| k.contains(t));
    for (schema, tables) in kept {
        let list: Vec<String> = tables.iter().cloned().collect();
        for fk in rollback::foreign_keys_of(client, schema, &list, pg15).await? {
            let (rs, target) = (&fk.ref_schema, &fk.def.ref_table);
            if !schemas.contains(rs) || is_kept(rs, target) {
                continue;
            }
            if arrives(rs, target) {
                out.push(fk.def);
            } else {
                missing.push(format!(
                    "{} of {} references {}",
                    display_ident(&fk.def.name),
                    table_display(schema, &fk.def.table),
                    table_display(rs, target)
                ));
            }
        }
    }
    if !missing.is_empty() {
        crate::refuse!(
            "--keep-tables: foreign keys of kept tables reference tables the new {} will not have: {}; keep those tables too, or drop the keys; nothing was changed",
            schemas.join(", "),
            missing.join(", ")
        );
    }
    Ok(out)
}

/// What to do about objects that need an excluded table, as fits them
/// (`deps`: each named, with whether it is or belongs to a relation): tables
/// and views (and what belongs to them: rules, defaults, policies, keys) can
/// be excluded too; functions, types and domains come with the schema, and
/// no flag leaves them out.
fn dependents_advice(deps: &[(String, bool)]) -> String {
    let others: Vec<&str> = deps
        .iter()
        .filter(|(_, in_relation)| !in_relation)
        .map(|(d, _)| d.as_str())
        .collect();
    if others.is_empty() {
        "exclude them too (views and tables: --exclude-table), or migrate the tables".into()
    } else if others.len() == deps.len() {
        "they are migrated with the schema (no flag leaves them out): drop or change them on the source, or do not exclude the tables".into()
    } else {
        format!(
            "exclude the tables and views they belong to too (--exclude-table); {} {} migrated with the schema (no flag leaves them out): drop or change them on the source; or do not exclude the tables",
            others.join(", "),
            if others.len() == 1 { "is" } else { "are" }
        )
    }
}

/// Objects of the source's migrated `schemas` that depend on `tables` other than the
/// tables' own parts and other tables in `leaving` (views, foreign keys of
/// other tables, SQL-body functions, columns of their row type …), each with
/// whether it is or belongs to a relation.
async fn dependents(
    client: &Client,
    tables: &(Vec<String>, Vec<String>),
    leaving: &(Vec<String>, Vec<String>),
    schemas: &[String],
) -> Result<Vec<(String, bool)>> {
    if tables.0.is_empty() {
        return Ok(Vec::new());
    }
    rollback::depending_on(
        client,
        // The sequences they own go with them (pg_dump's -T): a default,
        // a view or a function of a migrated table using one is a dependent
        // too (it would go on drawing from the backup's copy).
        "x AS (SELECT c.oid, c.reltype FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))),
         t AS (SELECT oid, reltype FROM x
               UNION SELECT s.oid, s.reltype FROM pg_catalog.pg_depend o
                       JOIN pg_catalog.pg_class s ON s.oid = o.objid AND s.relkind = 'S'
                      WHERE o.classid = 'pg_catalog.pg_class'::regclass AND o.refclassid = 'pg_catalog.pg_class'::regclass
                        AND o.deptype IN ('a', 'i') AND o.refobjid IN (SELECT oid FROM x)),
         l AS (SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest($3::text[], $4::text[])))",
        "l",
        false,
        Some("$5"),
        &[&tables.0, &tables.1, &leaving.0, &leaving.1, &schemas],
        "excluded tables",
    )
    .await
}

/// Functions and procedures of the source's migrated `schemas` whose bodies
/// name excluded `tables` (schemas, names): an SQL function's string body or
/// a plpgsql one, which PostgreSQL records no dependency of, so
/// [`dependents`] cannot see them. They are migrated and, after the swap,
/// fail when they reach those statements: the tables are in the backup.
/// Warnings, not refusals: the body is read as text
/// ([`crate::dump::sql::relations_named_in_body`]), which may name more than
/// it uses. A trigger function counts only while a trigger of a migrated
/// table fires it (`not_migrated`: the tables that are not), and the
/// warning names those tables.
async fn bodies_naming(
    client: &Client,
    tables: &(Vec<String>, Vec<String>),
    not_migrated: &BTreeSet<String>,
    schemas: &[String],
) -> Result<Vec<String>> {
    if tables.0.is_empty() {
        return Ok(Vec::new());
    }
    const TRIGGERS: &str = "pg_catalog.pg_trigger tg
           JOIN pg_catalog.pg_class c ON c.oid = tg.tgrelid
           JOIN pg_catalog.pg_namespace tn ON tn.oid = c.relnamespace
          WHERE tg.tgfoid = p.oid AND NOT tg.tgisinternal";
    let sql = format!(
            "SELECT pg_catalog.pg_describe_object('pg_catalog.pg_proc'::pg_catalog.regclass, p.oid, 0),
                    p.prosrc,
                    p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype,
                    ARRAY(SELECT tn.nspname::text FROM {TRIGGERS} ORDER BY tn.nspname || '.' || c.relname),
                    ARRAY(SELECT c.relname::text FROM {TRIGGERS} ORDER BY tn.nspname || '.' || c.relname),
                    (SELECT substr(c, 13) FROM unnest(p.proconfig) c WHERE c LIKE 'search\\_path=%' LIMIT 1)
               FROM pg_catalog.pg_proc p
               JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
               JOIN pg_catalog.pg_language l ON l.oid = p.prolang
              WHERE n.nspname = ANY($1) AND l.lanname IN ('sql', 'plpgsql') AND p.prokind IN ('f', 'p')
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
                                 WHERE e.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                                   AND e.objid = p.oid AND e.deptype = 'e')
              ORDER BY 1"
    );
    let rows = client
        .query(sql.as_str(), &[&schemas])
        .await
        .map_err(|e| pg_error_as(e, "reading the source's function bodies"))?;
    let excluded: Vec<(&String, &String)> = tables.0.iter().zip(&tables.1).collect();
    // Where an unqualified name resolves for a function with its own
    // search_path: the relations named like an excluded table, anywhere.
    let namesakes: HashSet<(String, String)> = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relname = ANY($1) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
            &[&tables.1],
        )
        .await
        .map_err(|e| pg_error_as(e, "reading the source's tables"))?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut out = Vec::new();
    for r in rows {
        let (what, body, trigger, t_schemas, t_names, path): (
            String,
            String,
            bool,
            Vec<String>,
            Vec<String>,
            Option<String>,
        ) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        // `SET search_path = billing, public`: an unqualified name is the
        // first of those schemas' relations of that name. Without one, the
        // caller's search_path decides: any schema's.
        let path: Option<Vec<String>> = path.map(|p| {
            p.split(',')
                .map(|s| s.trim().trim_matches('"').to_string())
                .collect()
        });
        let resolves_to = |schema: &str, table: &str| match &path {
            None => true,
            Some(path) => path
                .iter()
                .find(|s| namesakes.contains(&((*s).clone(), table.to_string())))
                .is_some_and(|s| s == schema),
        };
        let fired_by: Vec<String> = t_schemas
            .iter()
            .zip(&t_names)
            .filter(|(s, t)| schemas.contains(s) && !not_migrated.contains(&table_display(s, t)))
            .map(|(s, t)| table_shown(s, t))
            .dedup()
            .collect();
        if trigger && fired_by.is_empty() {
            continue;
        }
        let named = crate::dump::sql::relations_named_in_body(&body);
        let used: BTreeSet<String> = excluded
            .iter()
            .filter(|(s, t)| {
                named.iter().any(|(ns, nt)| {
                    nt == *t
                        && match ns {
                            Some(ns) => ns == *s,
                            None => resolves_to(s, t),
                        }
                })
            })
            .map(|(s, t)| table_shown(s, t))
            .collect();
        if used.is_empty() {
            continue;
        }
        let one = used.len() == 1;
        let used = used.iter().join(", ");
        out.push(format!(
            "--exclude-table: {what}{} names {used} in its body, which {} not migrated: after the swap it fails at the statements that use {} (PostgreSQL does not track what a body names, so nothing refused it); change the function on the source, or do not exclude {used}",
            if fired_by.is_empty() {
                String::new()
            } else {
                format!(" (fired by triggers of {})", fired_by.join(", "))
            },
            if one { "is" } else { "are" },
            if one { "it" } else { "them" },
        ));
    }
    Ok(out)
}

/// The source's namesakes of kept tables (`tables`: schemas, names), which
/// are not migrated, and what migrated objects need of them. `leaving`:
/// every table not migrated; `schemas`: the migrated schemas. Read only.
struct KeptSources<'a> {
    src: &'a Client,
    dest: &'a Client,
    tables: &'a (Vec<String>, Vec<String>),
    leaving: &'a (Vec<String>, Vec<String>),
    schemas: &'a [String],
}

impl KeptSources<'_> {
    /// Columns of the namesakes that migrated objects use (a view's column, a
    /// foreign key's referenced column): those objects are restored against the
    /// destination's kept table, so a column it lacks would fail the restore in
    /// the middle of prepare. Refused here, naming each object and column.
    async fn columns(&self) -> Result<()> {
        let (src, dest, tables, leaving, schemas) =
            (self.src, self.dest, self.tables, self.leaving, self.schemas);
        if tables.0.is_empty() {
            return Ok(());
        }
        let sql = format!(
        "WITH t AS (SELECT c.oid, c.reltype FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                     WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))),
              l AS (SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                     WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest($3::text[], $4::text[])))
         SELECT DISTINCT {describe}, n.nspname::text, c.relname::text, a.attname::text
           FROM pg_catalog.pg_depend d
           JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
           JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE d.refobjsubid > 0 AND {filter} AND {dependent} = ANY($5)",
        describe = rollback::DESCRIBE_DEPENDENT,
        filter = rollback::not_part_of("l", false),
        dependent = rollback::DEPENDENT_SCHEMA,
    );
        let used = src
            .query(
                sql.as_str(),
                &[&tables.0, &tables.1, &leaving.0, &leaving.1, &schemas],
            )
            .await
            .map_err(|e| {
                pg_error_as(
                    e,
                    "looking for the columns of kept tables that migrated objects use",
                )
            })?;
        if used.is_empty() {
            return Ok(());
        }
        let present: HashSet<(String, String, String)> = dest
            .query(
                "SELECT n.nspname::text, c.relname::text, a.attname::text
               FROM pg_catalog.pg_attribute a
               JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))
                AND a.attnum > 0 AND NOT a.attisdropped",
                &[&tables.0, &tables.1],
            )
            .await
            .map_err(|e| pg_error_as(e, "reading the kept tables' columns"))?
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let missing: BTreeSet<String> = used
            .into_iter()
            .filter_map(|r| {
                let (what, schema, table, column): (Option<String>, String, String, String) =
                    (r.get(0), r.get(1), r.get(2), r.get(3));
                let key = (schema, table, column);
                (!present.contains(&key)).then(|| {
                    format!(
                        "{} uses {}.{}",
                        what.unwrap_or_else(|| "an object".into()),
                        table_display(&key.0, &key.1),
                        display_ident(&key.2)
                    )
                })
            })
            .collect();
        if !missing.is_empty() {
            crate::refuse!(
                "--keep-tables: objects of the source use columns the kept tables do not have on the destination: {}; exclude those objects (--exclude-table), keep their tables too, or add the columns on the destination; nothing was changed",
                missing.iter().join(", ")
            );
        }
        Ok(())
    }

    /// Sequences owned by the namesakes that migrated objects use, a column
    /// default `nextval('legacy_id_seq')` of a migrated table say: pg_dump
    /// leaves them out with their table, so after the swap those objects draw
    /// from the destination's sequence of that name, the one the kept table
    /// owns. That is refused when the destination's sequence would give values
    /// the source's already gave (the migrated rows hold them: duplicate keys
    /// after the swap), does not exist, or is not a kept table's (it would go
    /// to the backup, and they would draw from the backup's copy); the
    /// message says how to set it.
    async fn sequences(&self) -> Result<()> {
        let (src, dest, tables, leaving, schemas) =
            (self.src, self.dest, self.tables, self.leaving, self.schemas);
        if tables.0.is_empty() {
            return Ok(());
        }
        let owned = src
        .query(
            "SELECT s.oid, sn.nspname::text, s.relname::text, tn.nspname::text, t.relname::text, q.seqincrement
               FROM pg_catalog.pg_depend o
               JOIN pg_catalog.pg_class s ON s.oid = o.objid AND s.relkind = 'S'
               JOIN pg_catalog.pg_sequence q ON q.seqrelid = s.oid
               JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
               JOIN pg_catalog.pg_class t ON t.oid = o.refobjid
               JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
              WHERE o.classid = 'pg_catalog.pg_class'::regclass AND o.refclassid = 'pg_catalog.pg_class'::regclass
                AND o.deptype IN ('a', 'i')
                AND (tn.nspname, t.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))
              ORDER BY 2, 3",
            &[&tables.0, &tables.1],
        )
        .await
        .map_err(|e| pg_error_as(e, "listing the sequences of kept tables"))?;
        for r in owned {
            let (oid, schema, name, t_schema, table, increment): (
                u32,
                String,
                String,
                String,
                String,
                i64,
            ) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
            let users = rollback::names(rollback::depending_on(
            src,
            "t AS (SELECT oid, reltype FROM pg_catalog.pg_class WHERE oid = $1),
             l AS (SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                    WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest($2::text[], $3::text[])))",
            "l",
            false,
            Some("$4"),
            &[&oid, &leaving.0, &leaving.1, &schemas],
            "sequences of kept tables",
        )
        .await?);
            if users.is_empty() {
                continue;
            }
            let seq = table_display(&schema, &name);
            let kept = table_display(&t_schema, &table);
            let (last, called) = crate::pg::catalog::sequence_value(src, &schema, &name).await?;
            let next = |last: i64, called: bool| {
                i128::from(last) + if called { i128::from(increment) } else { 0 }
            };
            let setval = format!(
                "SELECT pg_catalog.setval({}, {last}, {called})",
                crate::pg::ident::quote_literal(&format!(
                    "{}.{}",
                    display_ident(&schema),
                    display_ident(&name)
                ))
            );
            let usage = format!(
                "{} of the source use{} sequence {seq}, which the source's {kept} owns",
                users.join(", "),
                if users.len() == 1 { "s" } else { "" }
            );
            // The destination's sequence stays live only as a kept table's
            // (owned by it, or its identity): any other goes to the backup
            // with the rest of its schema, and the migrated objects with it.
            let on_dest = dest
            .query_opt(
                "SELECT EXISTS (
                        SELECT 1 FROM pg_catalog.pg_depend d
                          JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
                          JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
                         WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                           AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i')
                           AND (tn.nspname, t.relname) IN (SELECT * FROM unnest($3::text[], $4::text[]))),
                        (SELECT a.attname::text
                           FROM pg_catalog.pg_depend d
                           JOIN pg_catalog.pg_attrdef ad ON ad.oid = d.objid
                           JOIN pg_catalog.pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
                           JOIN pg_catalog.pg_class t ON t.oid = ad.adrelid
                           JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
                          WHERE d.classid = 'pg_catalog.pg_attrdef'::regclass
                            AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = c.oid
                            AND tn.nspname = $5 AND t.relname = $6
                          ORDER BY a.attnum LIMIT 1)
                   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'S'",
                &[&schema, &name, &tables.0, &tables.1, &t_schema, &table],
            )
            .await
            .map_err(|e| pg_error_as(e, "looking for the destination's sequences"))?;
            let column = on_dest
                .as_ref()
                .and_then(|r| r.get::<_, Option<String>>(1))
                .map(|c| display_ident(&c))
                .unwrap_or_else(|| "<its column>".into());
            let seq_sql = format!("{}.{}", display_ident(&schema), display_ident(&name));
            let owned_by = format!(
                "{}.{}.{column}",
                display_ident(&t_schema),
                display_ident(&table)
            );
            match on_dest.map(|r| r.get::<_, bool>(0)) {
                None => crate::refuse!(
                    "--keep-tables: {usage}; the destination has no sequence {seq} for them after the swap; create it there, owned by the kept table (`CREATE SEQUENCE {seq_sql} OWNED BY {owned_by}`), or keep the tables that use it too, then prepare again; nothing was changed"
                ),
                Some(false) => crate::refuse!(
                    "--keep-tables: {usage}; the destination's {seq} is not the kept {kept}'s: it goes to the backup with the rest of {schema_d} at the swap, and they would draw from that copy; on the destination run `ALTER SEQUENCE {seq_sql} OWNED BY {owned_by}` (or keep the tables that use it too), then prepare again; nothing was changed",
                    schema_d = display_ident(&schema)
                ),
                Some(true) => {}
            }
            let (d_last, d_called) =
                crate::pg::catalog::sequence_value(dest, &schema, &name).await?;
            let (theirs, ours) = (next(d_last, d_called), next(last, called));
            let behind = if increment > 0 {
                theirs < ours
            } else {
                theirs > ours
            };
            if behind {
                crate::refuse!(
                    "--keep-tables: {usage}; after the swap they draw from the destination's {seq}, owned by the kept {kept}, which would next give {theirs} while the source's gives {ours}: values the migrated rows already hold; on the destination run `{setval}` (or keep the tables that use it too), then prepare again; nothing was changed"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(name: &str, parent: Option<&str>) -> Rel {
        Rel {
            schema: "public".into(),
            name: name.into(),
            relkind: if parent.is_none() { 'p' } else { 'r' },
            parents: parent.map(str::to_string).into_iter().collect(),
        }
    }

    /// The child to name is suggested as a shell takes it.
    #[test]
    fn a_quoted_child_is_suggested_in_single_quotes() {
        let mut kid = rel("My Kid", Some("P1"));
        kid.parents.push("pb".into());
        let rels = vec![rel("P1", None), rel("pb", None), kid];
        let out: BTreeSet<String> = ["P1".to_string(), "My Kid".to_string()].into();
        let err = refuse_rows_lost_to_another_parent(
            &rels,
            &out,
            &out,
            &BTreeSet::new(),
            &Wording {
                flag: "--exclude-table",
                cause: &|_| "--exclude-table",
                left: "it is left out with",
            },
            &shown_of(&rels),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(r#"the source's "My Kid" inherits from "P1" and from pb"#)
                && err.contains(r#"(`--exclude-table '"My Kid"'`)"#),
            "{err}"
        );
    }

    #[test]
    fn partitions_follow_their_parent_and_no_match_is_refused() {
        let here = ["public".to_string()];
        let rels = vec![
            rel("log", None),
            rel("log_2024", Some("log")),
            rel("log_2024_01", Some("log_2024")),
            rel("users", None),
        ];
        let pats = vec![TablePattern::parse("lo?").unwrap()];
        let (m, all) = match_filter("--x", &pats, &rels, &['r', 'p'], &here, "here").unwrap();
        assert_eq!(m[0].tables, ["log", "log_2024", "log_2024_01"]);
        assert_eq!(all.len(), 3);
        // An inheritance child follows each of its parents.
        let mut kid = rel("kid", Some("pa"));
        kid.parents.push("pb".into());
        let rels = vec![rel("pa", None), rel("pb", None), kid, rel("log", None)];
        for parent in ["pa", "pb"] {
            let pats = vec![TablePattern::parse(parent).unwrap()];
            let (m, _) = match_filter("--x", &pats, &rels, &['r', 'p'], &here, "here").unwrap();
            assert_eq!(m[0].tables, ["kid", parent]);
        }
        let refused = |pattern: &str| {
            let pats = vec![TablePattern::parse(pattern).unwrap()];
            match_filter("--x", &pats, &rels, &['r', 'p'], &here, "here")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused("nope*"),
            "--x nope*: no table of here matches; nothing was changed"
        );
        // A schema part that names no migrated schema says so.
        assert_eq!(
            refused("audit.log"),
            "--x audit.log: no table of here matches (its schema is not among --schemas: pgshift migrates only those, and leaves the tables of the others as they are); nothing was changed"
        );
    }
}
