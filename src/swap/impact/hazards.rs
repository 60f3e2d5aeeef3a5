//! Schema hazards: the objects the application sees in each live schema
//! against those that will replace them, classified with stable codes (in the
//! spirit of pg-schema-diff's hazards and Atlas's lint codes).
//!
//! | code | effect | when |
//! |---|---|---|
//! | `TABLE_DROPPED` | breaks | a table (partitioned, foreign) has no namesake relation |
//! | `VIEW_DROPPED` | breaks | a view or materialized view has no namesake relation |
//! | `SEQUENCE_DROPPED` | breaks | a sequence not owned by a column has no namesake |
//! | `RELATION_KIND_CHANGED` | rejects_writes (table -> view) / info | same name, other kind |
//! | `COLUMN_DROPPED` | breaks | a column of a relation kept by name is gone |
//! | `COLUMN_TYPE_CHANGED` | result_type | `format_type` text differs (domain, enum, typmod, array element), or the column's collation (`text -> text COLLATE "C"`: PostgreSQL compares result collations too) |
//! | `COLUMN_LIST_CHANGED` | result_type | the ordered column names differ (`SELECT *` gets other columns) |
//! | `TYPE_REPLACED` | result_type | a type columns use is replaced by the incoming copy (same name, new OID) |
//! | `COLLATION_REPLACED` | result_type | a collation of a migrated schema columns use is replaced by the incoming copy (same name, new OID) |
//! | `NOT_NULL_ADDED` | rejects_writes | a column became NOT NULL, or a new NOT NULL column has no default |
//! | `CHECK_ADDED`, `UNIQUE_ADDED`, `FOREIGN_KEY_ADDED`, `EXCLUSION_ADDED` | rejects_writes | a constraint the old table did not have (compared by definition, as parsed: the casts a dump and restore re-prints do not count); `UNIQUE_ADDED` also for a unique index of its own (`lower(email)`, a partial one), compared by its keys and WHERE |
//! | `CHECK_WIDENED` | info | a CHECK `x IN (…)` (`x = ANY (ARRAY[…])`) whose list holds the old table's same check's and more: it refuses nothing the old check allowed |
//! | `UNIQUE_KEY_WIDENED` | info | a unique or primary key over the columns of one the old table has, and more (`(a, b)` became `(a, b, c)`): it refuses nothing the old key accepted |
//! | `FOREIGN_KEY_ACTION_CHANGED` | rejects_writes (where the new action refuses a delete or update the old one did not) / info | a foreign key the old table has too, but for its `ON DELETE` / `ON UPDATE` actions |
//! | `ENUM_VALUE_DROPPED` | rejects_writes | an enum lost a label |
//! | `TYPE_DROPPED` | breaks | a type or domain has no namesake |
//! | `FUNCTION_DROPPED` | breaks | no function/procedure/aggregate of that name is left |
//! | `FUNCTION_SIGNATURE_CHANGED` | breaks | an overload's argument types, result or kind changed |
//! | `TABLE_ADDED`, `VIEW_ADDED`, `COLUMN_ADDED` | info | only added |
//! | `RLS_ENABLED`, `RLS_DISABLED`, `POLICY_ADDED`, `POLICY_DROPPED`, `POLICY_CHANGED` | row_access | row-level security or a policy of a table both sides have (see [`super::rls`]) |
//! | `SECURITY_INVOKER_ADDED`, `SECURITY_INVOKER_DROPPED` | row_access | a view's `security_invoker` turned on or off: it reads its tables with the caller's or its owner's rights (row-level security included) |
//! | `SECURITY_DEFINER_ADDED`, `SECURITY_DEFINER_DROPPED` | row_access | an overload of the same signature became `SECURITY DEFINER` or `SECURITY INVOKER` |
//!
//! Objects are matched by name, never by OID (every incoming object is a
//! different object). Everything is read with `search_path = ''`, so
//! `format_type`, `pg_get_constraintdef` and friends qualify every name outside
//! `pg_catalog`; the incoming schema's qualifier is then mapped back to the
//! live one with PostgreSQL's own scanner ([`crate::dump::sql::remap`]), so a
//! column of type `shadow.email` equals one of type `public.email`, while an
//! extension's type (`public.geometry`, never moved) is the same on both sides.
//! Extension members are left out on both sides; partitions are compared as
//! relations (dropped, added) but their columns and constraints only through
//! their parent's. Each object class is one set-based catalog query for all
//! pairs at once (about 0.4 s at 1,000 tables with PostGIS installed).
//!
//! `TYPE_REPLACED` exists because PostgreSQL checks a prepared statement's
//! result row by type OID: after the swap a column of an enum or domain that
//! kept its name still has a new type, and a statement prepared before the swap
//! that returns it fails with `cached plan must not change result type` until
//! it is prepared again. PostgreSQL compares the result's collations too, so a
//! collation a migrated schema defines (MusicBrainz's `musicbrainz.musicbrainz`
//! on `artist.name`) is `COLLATION_REPLACED` for the same reason.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use anyhow::{Context, Result};
use itertools::Itertools;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::resolve::Mapper;
use super::{SchemaPair, qualified_display};
use crate::pg::catalog::not_ext_member;
use crate::pg::ident::display_ident;
use crate::words::words;

words! {
    /// What a difference does to the running application.
    #[derive(PartialOrd, Ord)]
    pub enum Effect {
        /// Statements that use the object fail.
        Breaks = "breaks",
        /// Which rows the application's roles may read and write changes:
        /// row-level security turned on or off, a policy added, dropped or
        /// changed (see [`super::rls`]). No statement fails; rows appear or
        /// disappear.
        RowAccess = "row_access",
        /// Writes the old application makes may be rejected.
        RejectsWrites = "rejects_writes",
        /// Prepared statements fail until prepared again (`cached plan must not
        /// change result type`); a `SELECT *` gets other columns.
        ResultType = "result_type",
        /// Only added.
        Info = "info",
    }
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hazard {
    /// Stable code, e.g. `COLUMN_TYPE_CHANGED`.
    pub code: String,
    pub effect: Effect,
    /// Qualified with the live schema: `public.accounts.email`, `public.f(integer)`.
    pub object: String,
    /// `text -> email`, the constraint's definition, …
    pub detail: String,
}

impl Hazard {
    fn new(code: &str, effect: Effect, object: String, detail: impl Into<String>) -> Hazard {
        Hazard {
            code: code.to_string(),
            effect,
            object,
            detail: detail.into(),
        }
    }
}

/// `ns(pair, side, oid)`: pair index (1-based) and side (`L` live, `I`
/// incoming) of each schema; `$1` live names, `$2` incoming names.
pub(super) const NS: &str = "ns(pair, side, oid) AS (
    SELECT p.i, 'L', n.oid FROM pg_catalog.unnest($1::text[]) WITH ORDINALITY AS p(name, i)
      JOIN pg_catalog.pg_namespace n ON n.nspname = p.name
    UNION ALL
    SELECT p.i, 'I', n.oid FROM pg_catalog.unnest($2::text[]) WITH ORDINALITY AS p(name, i)
      JOIN pg_catalog.pg_namespace n ON n.nspname = p.name)";

struct Rel {
    kind: char,
    /// Partitions mirror their parent's columns and constraints: compared
    /// through the parent only.
    partition: bool,
    /// A sequence a column owns (serial, identity): the table's name.
    owned_by: Option<String>,
    /// A view with `security_invoker` (PostgreSQL 15+): it reads its tables
    /// with the caller's rights, not its owner's.
    security_invoker: bool,
    columns: Vec<Col>,
    /// (contype, definition mapped, name)
    constraints: Vec<(char, String, String)>,
}

struct Col {
    name: String,
    /// `format_type`, qualified, mapped to the live schema, with ` COLLATE …`
    /// when the column's collation is not its type's.
    type_name: String,
    not_null: bool,
    has_default: bool,
    /// On the incoming side, the column's own collation (mapped, as in
    /// `type_name`) when an incoming schema holds it: after the swap the
    /// column has a collation of the same name and a new OID.
    incoming_collation: Option<String>,
}

struct Func {
    kind: char,
    /// Argument types (`oidvectortypes`), mapped.
    args: String,
    result: Option<String>,
    /// `SECURITY DEFINER`: runs with its owner's rights.
    definer: bool,
}

struct Type {
    kind: char,
    labels: Vec<String>,
}

/// One side (live or incoming) of one pair.
#[derive(Default)]
struct Side {
    rels: BTreeMap<String, Rel>,
    funcs: BTreeMap<String, Vec<Func>>,
    types: BTreeMap<String, Type>,
}

/// SQL: the collation of column `a` (`pg_attribute`; its type joined as
/// `ty`) when it is not its type's, as people read it; else NULL. A result
/// column whose collation changes fails a prepared statement as a change
/// of type does (PostgreSQL compares both), so it is part of the type
/// compared ([`with_collation`]).
pub(super) const COLUMN_COLLATION: &str = "CASE WHEN a.attcollation <> ty.typcollation
         THEN a.attcollation::pg_catalog.regcollation::text END";

/// A column's type as compared and shown: `text`, or `text COLLATE "C"`
/// for a column with a collation of its own ([`COLUMN_COLLATION`]).
pub(super) fn with_collation(type_name: String, collation: Option<&str>) -> String {
    match collation {
        Some(c) => format!("{type_name} COLLATE {c}"),
        None => type_name,
    }
}

/// A type as people read it: `email` for `public.email`, `billing.email`.
pub(crate) fn show_type(t: &str) -> String {
    t.strip_prefix("public.").unwrap_or(t).to_string()
}

/// Compare the objects of each live schema with its incoming schema.
/// Read-only; the client must not be inside a transaction.
pub async fn hazards(client: &Client, pairs: &[SchemaPair]) -> Result<Vec<Hazard>> {
    // Definitions print their constants as values are written
    // (`settings::OUTPUT`): ISO dates in UTC, not the destination's
    // `SQL, DMY` and its time zone.
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET LOCAL search_path = ''; {}",
            crate::pg::settings::set_local(crate::pg::settings::OUTPUT)
        ))
        .await
        .context("comparing the schemas")?;
    let result = read_and_compare(client, pairs).await;
    let rollback = client.batch_execute("ROLLBACK").await;
    let out = result?;
    rollback.context("comparing the schemas")?;
    Ok(out)
}

async fn read_and_compare(client: &Client, pairs: &[SchemaPair]) -> Result<Vec<Hazard>> {
    let mapper = Mapper::load(client, pairs).await?;
    let live: Vec<&str> = pairs.iter().map(|p| p.live.as_str()).collect();
    let incoming: Vec<&str> = pairs.iter().map(|p| p.incoming.as_str()).collect();
    let mut sides: HashMap<(i64, char), Side> = HashMap::new();
    let side_of = |r: &tokio_postgres::Row| -> (i64, char) {
        let s: String = r.get(1);
        (r.get(0), if s == "L" { 'L' } else { 'I' })
    };
    let first_char = |s: String| s.chars().next().unwrap_or(' ');
    // One query per kind of object, `$1` the live schemas, `$2` the incoming.
    let list = |what: &'static str, sql: &str| {
        let (live, incoming) = (&live, &incoming);
        let sql = sql.to_string();
        async move {
            client
                .query(&sql, &[live, incoming])
                .await
                .with_context(|| format!("listing {what}"))
        }
    };

    let rows = list(
        "relations",
        &format!(
            "WITH {NS}
             SELECT ns.pair, ns.side, c.relname::text, c.relkind::text, c.relispartition,
                    CASE WHEN c.relkind = 'S' THEN (
                      SELECT t.relname::text FROM pg_catalog.pg_depend d
                        JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
                       WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid
                         AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype IN ('a', 'i')
                       LIMIT 1) END,
                    -- PostgreSQL's parse_bool: on, 1, and any prefix of true or yes.
                    c.relkind = 'v' AND EXISTS (
                      SELECT 1 FROM pg_catalog.pg_options_to_table(c.reloptions) o
                       WHERE o.option_name = 'security_invoker'
                         AND (pg_catalog.lower(o.option_value) IN ('on', '1')
                              OR (o.option_value <> '' AND ('true' LIKE pg_catalog.lower(o.option_value) || '%'
                                                            OR 'yes' LIKE pg_catalog.lower(o.option_value) || '%'))))
               FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S') AND {}",
            not_ext_member!("pg_class", "c.oid")
        ),
    )
    .await?;
    for r in rows {
        sides.entry(side_of(&r)).or_default().rels.insert(
            r.get(2),
            Rel {
                kind: first_char(r.get(3)),
                partition: r.get(4),
                owned_by: r.get(5),
                security_invoker: r.get(6),
                columns: Vec::new(),
                constraints: Vec::new(),
            },
        );
    }

    // Kept tables stay as they are: not compared, never dropped; the
    // incoming schema's namesake (a rollback's backup has one) does not come
    // in.
    for (i, p) in pairs.iter().enumerate() {
        for letter in ['L', 'I'] {
            if let Some(side) = sides.get_mut(&(i as i64 + 1, letter)) {
                for t in &p.stays {
                    side.rels.remove(t);
                }
            }
        }
    }

    let rows = list(
        "columns",
        &format!(
            "WITH {NS}
             SELECT ns.pair, ns.side, c.relname::text, a.attname::text,
                    pg_catalog.format_type(a.atttypid, a.atttypmod), {COLUMN_COLLATION},
                    a.attnotnull,
                    a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',
                    a.attcollation <> ty.typcollation AND EXISTS (
                        SELECT 1 FROM pg_catalog.pg_collation co JOIN ns i ON i.oid = co.collnamespace AND i.side = 'I'
                         WHERE co.oid = a.attcollation)
               FROM pg_catalog.pg_attribute a
               JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid
               JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
               JOIN ns ON ns.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm') AND a.attnum > 0 AND NOT a.attisdropped
                AND {}
              ORDER BY 1, 2, 3, a.attnum",
            not_ext_member!("pg_class", "c.oid")
        ),
    )
    .await?;
    for r in rows {
        let side = side_of(&r);
        let collation: Option<String> = r.get(5);
        let raw = with_collation(r.get(4), collation.as_deref());
        let type_name = if side.1 == 'I' { mapper.map(&raw) } else { raw };
        let incoming_collation = match (r.get::<_, bool>(8), collation) {
            (true, Some(c)) => Some(mapper.map(&c)),
            _ => None,
        };
        if let Some(rel) = sides
            .get_mut(&side)
            .and_then(|s| s.rels.get_mut(&r.get::<_, String>(2)))
        {
            rel.columns.push(Col {
                name: r.get(3),
                type_name,
                not_null: r.get(6),
                has_default: r.get(7),
                incoming_collation,
            });
        }
    }

    let rows = list(
        "constraints",
        &format!(
            "WITH {NS}
             SELECT ns.pair, ns.side, c.relname::text, co.contype::text, co.conname::text,
                    pg_catalog.pg_get_constraintdef(co.oid)
               FROM pg_catalog.pg_constraint co
               JOIN pg_catalog.pg_class c ON c.oid = co.conrelid
               JOIN ns ON ns.oid = c.relnamespace
              WHERE co.contype IN ('c', 'u', 'p', 'f', 'x') AND co.conislocal AND co.conparentid = 0
                AND c.relkind IN ('r', 'p', 'f') AND {}
             UNION ALL
             -- A unique index that backs no constraint (an expression's, a
             -- partial one) rejects writes as a UNIQUE does: written as
             -- pg_get_constraintdef writes a UNIQUE, so that an index and a
             -- constraint of the same keys compare equal, with its WHERE.
             SELECT ns.pair, ns.side, c.relname::text, 'u', ic.relname::text,
                    'UNIQUE '
                    || CASE WHEN coalesce((pg_catalog.to_jsonb(i) ->> 'indnullsnotdistinct')::bool, false) THEN 'NULLS NOT DISTINCT ' ELSE '' END
                    || '(' || pg_catalog.array_to_string(ARRAY(
                        SELECT pg_catalog.pg_get_indexdef(i.indexrelid, k, true)
                          FROM pg_catalog.generate_series(1, i.indnkeyatts) k ORDER BY k), ', ') || ')'
                    || coalesce(' WHERE (' || pg_catalog.pg_get_expr(i.indpred, i.indrelid, true) || ')', '')
               FROM pg_catalog.pg_index i
               JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
               JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
               JOIN ns ON ns.oid = c.relnamespace
              WHERE i.indisunique AND NOT ic.relispartition AND c.relkind IN ('r', 'p')
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid)
                AND {}",
            not_ext_member!("pg_class", "c.oid"),
            not_ext_member!("pg_class", "c.oid")
        ),
    )
    .await?;
    for r in rows {
        let side = side_of(&r);
        let raw: String = r.get(5);
        let def = if side.1 == 'I' { mapper.map(&raw) } else { raw };
        let def = def.strip_suffix(" NOT VALID").unwrap_or(&def).to_string();
        if let Some(rel) = sides
            .get_mut(&side)
            .and_then(|s| s.rels.get_mut(&r.get::<_, String>(2)))
        {
            rel.constraints.push((first_char(r.get(3)), def, r.get(4)));
        }
    }

    let rows = list(
        "functions",
        &format!(
            "WITH {NS}
             SELECT ns.pair, ns.side, p.proname::text, p.prokind::text,
                    pg_catalog.oidvectortypes(p.proargtypes),
                    pg_catalog.pg_get_function_result(p.oid), p.prosecdef
               FROM pg_catalog.pg_proc p JOIN ns ON ns.oid = p.pronamespace
              WHERE {}
              ORDER BY 1, 2, 3, 5",
            not_ext_member!("pg_proc", "p.oid")
        ),
    )
    .await?;
    for r in rows {
        let side = side_of(&r);
        let map = |s: String| if side.1 == 'I' { mapper.map(&s) } else { s };
        let f = Func {
            kind: first_char(r.get(3)),
            args: map(r.get(4)),
            result: r.get::<_, Option<String>>(5).map(map),
            definer: r.get(6),
        };
        sides
            .entry(side)
            .or_default()
            .funcs
            .entry(r.get(2))
            .or_default()
            .push(f);
    }

    let rows = list(
        "types",
        &format!(
            "WITH {NS}
             SELECT ns.pair, ns.side, t.typname::text, t.typtype::text,
                    CASE WHEN t.typtype = 'e' THEN ARRAY(
                        SELECT e.enumlabel::text FROM pg_catalog.pg_enum e
                         WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder) END
               FROM pg_catalog.pg_type t JOIN ns ON ns.oid = t.typnamespace
              WHERE t.typtype IN ('b', 'c', 'd', 'e', 'r')
                AND (t.typrelid = 0 OR EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                                                WHERE c.oid = t.typrelid AND c.relkind = 'c'))
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type e WHERE e.typarray = t.oid)
                AND {}",
            not_ext_member!("pg_type", "t.oid")
        ),
    )
    .await?;
    for r in rows {
        sides.entry(side_of(&r)).or_default().types.insert(
            r.get(2),
            Type {
                kind: first_char(r.get(3)),
                labels: r.get::<_, Option<Vec<String>>>(4).unwrap_or_default(),
            },
        );
    }

    let mut out = Vec::new();
    let empty_l = Side::default();
    let empty_i = Side::default();
    let incoming: Vec<(&SchemaPair, &Side, &Side)> = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let idx = i as i64 + 1;
            (
                p,
                sides.get(&(idx, 'L')).unwrap_or(&empty_l),
                sides.get(&(idx, 'I')).unwrap_or(&empty_i),
            )
        })
        .collect();
    for (i, p) in pairs.iter().enumerate() {
        let idx = i as i64 + 1;
        let l = sides.get(&(idx, 'L')).unwrap_or(&empty_l);
        let inc = sides.get(&(idx, 'I')).unwrap_or(&empty_i);
        compare_pair(p, l, inc, &incoming, &mut out);
    }
    replaced_collations(&incoming, &mut out);
    // Row-level security, of the tables both sides have (kept ones are out
    // of `rels` already).
    let table = |side: &Side, name: &str| {
        side.rels
            .get(name)
            .is_some_and(|r| matches!(r.kind, 'r' | 'p'))
    };
    let in_both = |pair: i64, name: &str| {
        usize::try_from(pair - 1)
            .ok()
            .and_then(|i| incoming.get(i))
            .is_some_and(|(_, l, i)| table(l, name) && table(i, name))
    };
    out.extend(super::rls::hazards(client, pairs, &mapper, in_both).await?);
    out.sort_by(|a, b| (a.effect, &a.object, &a.code).cmp(&(b.effect, &b.object, &b.code)));
    Ok(out)
}

fn kind_word(kind: char) -> &'static str {
    match kind {
        'r' => "table",
        'p' => "partitioned table",
        'f' => "foreign table",
        'v' => "view",
        'm' => "materialized view",
        'S' => "sequence",
        _ => "relation",
    }
}

fn is_table(kind: char) -> bool {
    matches!(kind, 'r' | 'p' | 'f')
}

fn func_kind_word(kind: char) -> &'static str {
    match kind {
        'p' => "procedure",
        'a' => "aggregate",
        'w' => "window function",
        _ => "function",
    }
}

/// `incoming`: every pair with its live and incoming sides, where columns of
/// a replaced type are looked for (a table of one schema may use another
/// schema's type).
fn compare_pair(
    p: &SchemaPair,
    l: &Side,
    inc: &Side,
    incoming: &[(&SchemaPair, &Side, &Side)],
    out: &mut Vec<Hazard>,
) {
    let rel_obj = |name: &str| qualified_display(&p.live, name);
    let col_obj = |rel: &str, col: &str| format!("{}.{}", rel_obj(rel), display_ident(col));

    // Relations.
    for (name, lr) in &l.rels {
        match inc.rels.get(name) {
            None => {
                let code = match lr.kind {
                    'v' | 'm' => "VIEW_DROPPED",
                    // A dropped table's own sequence goes with it, which
                    // TABLE_DROPPED says; one whose table stays (a serial
                    // column made plain, an identity's sequence renamed) is
                    // a drop of its own, which `nextval('u_id_seq')` feels
                    // (h49a).
                    'S' if lr
                        .owned_by
                        .as_ref()
                        .is_some_and(|t| !inc.rels.contains_key(t)) =>
                    {
                        continue;
                    }
                    'S' => "SEQUENCE_DROPPED",
                    _ => "TABLE_DROPPED",
                };
                out.push(Hazard::new(
                    code,
                    Effect::Breaks,
                    rel_obj(name),
                    kind_word(lr.kind),
                ));
            }
            Some(ir) if ir.kind != lr.kind && !(is_table(ir.kind) && is_table(lr.kind)) => {
                let effect = if is_table(lr.kind) {
                    Effect::RejectsWrites
                } else {
                    Effect::Info
                };
                out.push(Hazard::new(
                    "RELATION_KIND_CHANGED",
                    effect,
                    rel_obj(name),
                    format!("{} -> {}", kind_word(lr.kind), kind_word(ir.kind)),
                ));
            }
            Some(ir) if lr.kind != 'S' && !(lr.partition && ir.partition) => {
                compare_columns(name, lr, ir, &col_obj, &rel_obj, out);
                rights_changed(
                    (lr.security_invoker, ir.security_invoker),
                    &SECURITY_INVOKER,
                    rel_obj(name),
                    out,
                );
            }
            Some(_) => {}
        }
    }
    for (name, ir) in &inc.rels {
        if !l.rels.contains_key(name) && ir.kind != 'S' {
            let code = if matches!(ir.kind, 'v' | 'm') {
                "VIEW_ADDED"
            } else {
                "TABLE_ADDED"
            };
            out.push(Hazard::new(
                code,
                Effect::Info,
                rel_obj(name),
                kind_word(ir.kind),
            ));
        }
    }

    // Functions, procedures, aggregates: by name, then by argument types.
    for (name, lfs) in &l.funcs {
        let show = |f: &Func| {
            format!(
                "{}({})",
                qualified_display(&p.live, name),
                show_args(&f.args)
            )
        };
        let Some(ifs) = inc.funcs.get(name) else {
            for f in lfs {
                out.push(Hazard::new(
                    "FUNCTION_DROPPED",
                    Effect::Breaks,
                    show(f),
                    func_kind_word(f.kind),
                ));
            }
            continue;
        };
        for f in lfs {
            let detail = match ifs.iter().find(|g| g.args == f.args) {
                None => Some(format!(
                    "{} -> {}",
                    show(f),
                    ifs.iter().map(&show).join(", ")
                )),
                Some(g) if g.kind != f.kind => Some(format!(
                    "{} -> {}",
                    func_kind_word(f.kind),
                    func_kind_word(g.kind)
                )),
                Some(g) if g.result != f.result => Some(format!(
                    "returns {} -> {}",
                    f.result.as_deref().map_or("nothing".to_string(), show_args),
                    g.result.as_deref().map_or("nothing".to_string(), show_args)
                )),
                Some(g) => {
                    rights_changed((f.definer, g.definer), &SECURITY_DEFINER, show(f), out);
                    None
                }
            };
            if let Some(detail) = detail {
                out.push(Hazard::new(
                    "FUNCTION_SIGNATURE_CHANGED",
                    Effect::Breaks,
                    show(f),
                    detail,
                ));
            }
        }
    }

    // Types.
    let live_type = |name: &str| format!("{}.{}", display_ident(&p.live), display_ident(name));
    for (name, lt) in &l.types {
        match inc.types.get(name) {
            None => out.push(Hazard::new(
                "TYPE_DROPPED",
                Effect::Breaks,
                qualified_display(&p.live, name),
                if lt.kind == 'd' { "domain" } else { "type" },
            )),
            Some(it) => {
                let gone: Vec<String> = lt
                    .labels
                    .iter()
                    .filter(|x| !it.labels.contains(x))
                    .map(|x| format!("'{x}'"))
                    .collect();
                if !gone.is_empty() {
                    out.push(Hazard::new(
                        "ENUM_VALUE_DROPPED",
                        Effect::RejectsWrites,
                        qualified_display(&p.live, name),
                        format!("no longer accepts {}", gone.join(", ")),
                    ));
                }
                // Columns of the incoming relations that use this type (or an
                // array of it) get a new type OID with the same name.
                let qualified = live_type(name);
                let array = format!("{qualified}[]");
                let mut users: Vec<String> = Vec::new();
                // Only columns the live relation has too: statements prepared
                // before the swap cannot return the others.
                for (q, live_side, side) in incoming {
                    for (rel, r) in side.rels.iter().filter(|(_, r)| !r.partition) {
                        let was_there = |col: &str| {
                            live_side
                                .rels
                                .get(rel)
                                .is_some_and(|lr| lr.columns.iter().any(|lc| lc.name == col))
                        };
                        for c in &r.columns {
                            if (c.type_name == qualified || c.type_name == array)
                                && was_there(&c.name)
                            {
                                users.push(format!(
                                    "{}.{}",
                                    qualified_display(&q.live, rel),
                                    display_ident(&c.name)
                                ));
                            }
                        }
                    }
                }
                if !users.is_empty() {
                    out.push(Hazard::new(
                        "TYPE_REPLACED",
                        Effect::ResultType,
                        qualified_display(&p.live, name),
                        replaced_detail("type", &users),
                    ));
                }
            }
        }
    }
}

/// A view whose `security_invoker` changed reads its tables with other
/// rights, so other rows (row-level security applies to the role whose
/// rights it uses) and other refusals: (code, detail) turned on, turned off.
const SECURITY_INVOKER: [(&str, &str); 2] = [
    (
        "SECURITY_INVOKER_ADDED",
        "security_invoker off -> on: the view reads its tables with the caller's rights: the caller's row-level security applies, and a caller without privileges on them is refused",
    ),
    (
        "SECURITY_INVOKER_DROPPED",
        "security_invoker on -> off: the view reads its tables with its owner's rights, not the caller's: row-level security and privileges are its owner's (an owner of the tables reads every row)",
    ),
];

/// The same for an overload of the same signature that became `SECURITY
/// DEFINER` or `SECURITY INVOKER`.
const SECURITY_DEFINER: [(&str, &str); 2] = [
    (
        "SECURITY_DEFINER_ADDED",
        "SECURITY INVOKER -> SECURITY DEFINER: it runs with its owner's rights: row-level security and privileges are its owner's, not the caller's",
    ),
    (
        "SECURITY_DEFINER_DROPPED",
        "SECURITY DEFINER -> SECURITY INVOKER: it runs with the caller's rights: the caller's row-level security applies, and a caller without privileges on what it uses is refused",
    ),
];

/// A `row_access` hazard when a flag of `object` changed from `was` to
/// `is`: `words`' first (code, detail) for turned on, its second for off.
fn rights_changed(
    (was, is): (bool, bool),
    words: &[(&str, &str); 2],
    object: String,
    out: &mut Vec<Hazard>,
) {
    let (code, detail) = match (was, is) {
        (false, true) => words[0],
        (true, false) => words[1],
        _ => return,
    };
    out.push(Hazard::new(code, Effect::RowAccess, object, detail));
}

/// "replaced by the incoming schema's copy …" naming the first three
/// columns of `users` (`public.artist.name`) and how many more.
fn replaced_detail(what: &str, users: &[String]) -> String {
    format!(
        "replaced by the incoming schema's copy (same name, new {what}): statements prepared before the swap that return {} fail until prepared again",
        crate::prepare::preflight::list_first(users, 3)
    )
}

/// `COLLATION_REPLACED`: columns the live relation has too (statements
/// prepared before the swap cannot return the others) whose own collation
/// an incoming schema holds, under the same name as the live column's (a
/// collation of another name is a `COLUMN_TYPE_CHANGED`), by collation.
fn replaced_collations(incoming: &[(&SchemaPair, &Side, &Side)], out: &mut Vec<Hazard>) {
    let mut users: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (q, live_side, side) in incoming {
        for (rel, r) in side.rels.iter().filter(|(_, r)| !r.partition) {
            for c in &r.columns {
                let Some(coll) = &c.incoming_collation else {
                    continue;
                };
                let same = live_side.rels.get(rel).is_some_and(|lr| {
                    lr.columns
                        .iter()
                        .any(|lc| lc.name == c.name && lc.type_name == c.type_name)
                });
                if same {
                    users.entry(coll).or_default().push(format!(
                        "{}.{}",
                        qualified_display(&q.live, rel),
                        display_ident(&c.name)
                    ));
                }
            }
        }
    }
    for (coll, users) in users {
        out.push(Hazard::new(
            "COLLATION_REPLACED",
            Effect::ResultType,
            coll.to_string(),
            replaced_detail("collation", &users),
        ));
    }
}

fn compare_columns(
    name: &str,
    lr: &Rel,
    ir: &Rel,
    col_obj: &dyn Fn(&str, &str) -> String,
    rel_obj: &dyn Fn(&str) -> String,
    out: &mut Vec<Hazard>,
) {
    let icols: HashMap<&str, &Col> = ir.columns.iter().map(|c| (c.name.as_str(), c)).collect();
    let lcols: HashMap<&str, &Col> = lr.columns.iter().map(|c| (c.name.as_str(), c)).collect();
    let table = is_table(ir.kind);
    for lc in &lr.columns {
        match icols.get(lc.name.as_str()) {
            None => out.push(Hazard::new(
                "COLUMN_DROPPED",
                Effect::Breaks,
                col_obj(name, &lc.name),
                show_type(&lc.type_name),
            )),
            Some(ic) => {
                if ic.type_name != lc.type_name {
                    out.push(Hazard::new(
                        "COLUMN_TYPE_CHANGED",
                        Effect::ResultType,
                        col_obj(name, &lc.name),
                        format!(
                            "{} -> {}",
                            show_type(&lc.type_name),
                            show_type(&ic.type_name)
                        ),
                    ));
                }
                if table && ic.not_null && !lc.not_null {
                    out.push(Hazard::new(
                        "NOT_NULL_ADDED",
                        Effect::RejectsWrites,
                        col_obj(name, &lc.name),
                        "NOT NULL",
                    ));
                }
            }
        }
    }
    for ic in &ir.columns {
        if lcols.contains_key(ic.name.as_str()) {
            continue;
        }
        out.push(Hazard::new(
            "COLUMN_ADDED",
            Effect::Info,
            col_obj(name, &ic.name),
            show_type(&ic.type_name),
        ));
        if table && ic.not_null && !ic.has_default {
            out.push(Hazard::new(
                "NOT_NULL_ADDED",
                Effect::RejectsWrites,
                col_obj(name, &ic.name),
                "new NOT NULL column without a default: inserts of the old application do not set it",
            ));
        }
    }
    let lnames: Vec<&str> = lr.columns.iter().map(|c| c.name.as_str()).collect();
    let inames: Vec<&str> = ir.columns.iter().map(|c| c.name.as_str()).collect();
    if lnames != inames {
        let added: Vec<String> = inames
            .iter()
            .filter(|n| !lcols.contains_key(**n))
            .map(|n| display_ident(n))
            .collect();
        let dropped: Vec<String> = lnames
            .iter()
            .filter(|n| !icols.contains_key(**n))
            .map(|n| display_ident(n))
            .collect();
        let mut parts = Vec::new();
        if !added.is_empty() {
            parts.push(format!("added {}", added.join(", ")));
        }
        if !dropped.is_empty() {
            parts.push(format!("dropped {}", dropped.join(", ")));
        }
        let kept_l: Vec<&&str> = lnames.iter().filter(|n| icols.contains_key(**n)).collect();
        let kept_i: Vec<&&str> = inames.iter().filter(|n| lcols.contains_key(**n)).collect();
        if kept_l != kept_i {
            parts.push("column order changed".to_string());
        }
        out.push(Hazard::new(
            "COLUMN_LIST_CHANGED",
            Effect::ResultType,
            rel_obj(name),
            format!("SELECT * returns other columns: {}", parts.join("; ")),
        ));
    }
    if table {
        let existing: HashSet<(char, &str)> = lr
            .constraints
            .iter()
            .map(|(t, d, _)| (*t, d.as_str()))
            .collect();
        // Only where the text differs: the parsed forms, for what a dump and
        // restore prints differently.
        let mut canonical_existing: Option<HashSet<(char, serde_json::Value)>> = None;
        for (t, def, cname) in &ir.constraints {
            if existing.contains(&(*t, def.as_str())) {
                continue;
            }
            let known = canonical_existing.get_or_insert_with(|| {
                lr.constraints
                    .iter()
                    .filter_map(|(t, d, _)| Some((*t, canonical_constraint(d)?)))
                    .collect()
            });
            if canonical_constraint(def).is_some_and(|c| known.contains(&(*t, c))) {
                continue;
            }
            if *t == 'f'
                && let Some(h) = fk_action_changed(&lr.constraints, def, &rel_obj(name), cname)
            {
                out.push(h);
                continue;
            }
            // Less strict than one the old table has: refuses nothing it took.
            let widened = match t {
                'u' | 'p' => looser_unique(&lr.constraints, def).map(|old| {
                    (
                        "UNIQUE_KEY_WIDENED",
                        format!("{def}, over the columns of {old} and more: no row that key accepted is refused"),
                    )
                }),
                'c' => narrower_in_list(&lr.constraints, def).map(|old| {
                    (
                        "CHECK_WIDENED",
                        format!("{def}: allows every value of {old} and more"),
                    )
                }),
                _ => None,
            };
            if let Some((code, detail)) = widened {
                out.push(Hazard::new(
                    code,
                    Effect::Info,
                    format!("{}.{}", rel_obj(name), display_ident(cname)),
                    detail,
                ));
                continue;
            }
            let code = match t {
                'c' => "CHECK_ADDED",
                'u' | 'p' => "UNIQUE_ADDED",
                'f' => "FOREIGN_KEY_ADDED",
                _ => "EXCLUSION_ADDED",
            };
            out.push(Hazard::new(
                code,
                Effect::RejectsWrites,
                format!("{}.{}", rel_obj(name), display_ident(cname)),
                def.clone(),
            ));
        }
    }
}

/// A unique key (or primary key) of the live table whose columns are among
/// those of the incoming `def`, with NULLs as distinct or the same way and
/// checked as early: any two rows equal on the incoming key are equal on
/// that one, so no write that key accepted is refused (`(a, b)` became
/// `(a, b, c)`). Its definition, or None.
fn looser_unique<'a>(live: &'a [(char, String, String)], def: &str) -> Option<&'a str> {
    let new = unique_key(def)?;
    live.iter()
        .filter(|(t, _, _)| matches!(t, 'u' | 'p'))
        .find(|(_, d, _)| {
            unique_key(d).is_some_and(|old| {
                old.columns.is_subset(&new.columns)
                    && (old.nulls_not_distinct || !new.nulls_not_distinct)
                    && old.timing == new.timing
            })
        })
        .map(|(_, d, _)| d.as_str())
}

/// A CHECK of the live table of the same form as the incoming `def`, `x =
/// ANY (ARRAY[…])` (an `IN` list), on the same expression, whose list is
/// part of the incoming one (`status IN ('a', 'b')` became `IN ('a', 'b',
/// 'c')`): no value it allowed is refused. Its definition, or None.
fn narrower_in_list<'a>(live: &'a [(char, String, String)], def: &str) -> Option<&'a str> {
    let (tree, list) = in_list(def)?;
    live.iter()
        .filter(|(t, _, _)| *t == 'c')
        .find(|(_, d, _)| {
            in_list(d).is_some_and(|(old_tree, old_list)| {
                old_tree == tree && old_list.iter().all(|e| list.contains(e))
            })
        })
        .map(|(_, d, _)| d.as_str())
}

/// A CHECK `x = ANY (ARRAY[…])` as parsed ([`canonical_constraint`]): the
/// tree with its list taken out, and the list.
fn in_list(def: &str) -> Option<(serde_json::Value, Vec<serde_json::Value>)> {
    let mut tree = canonical_constraint(def)?;
    let expr = tree
        .pointer_mut(CONSTRAINT_NODE)?
        .pointer_mut("/raw_expr/node/AExpr")?;
    // AEXPR_OP_ANY, with the operator `=`.
    if expr.get("kind")?.as_i64()? != 2
        || expr.pointer("/name/0/node/String/sval")?.as_str()? != "="
        || expr.get("name")?.as_array()?.len() != 1
    {
        return None;
    }
    let list = expr.pointer_mut("/rexpr/node/AArrayExpr/elements")?.take();
    Some((tree, list.as_array()?.clone()))
}

/// A unique or primary key as parsed.
struct UniqueKey {
    columns: BTreeSet<String>,
    nulls_not_distinct: bool,
    /// `DEFERRABLE`, `INITIALLY DEFERRED`.
    timing: (bool, bool),
}

fn unique_key(def: &str) -> Option<UniqueKey> {
    let tree = canonical_constraint(def)?;
    let c = tree.pointer(CONSTRAINT_NODE)?;
    let columns = c
        .get("keys")?
        .as_array()?
        .iter()
        .map(|k| k.pointer("/node/String/sval")?.as_str().map(str::to_string))
        .collect::<Option<BTreeSet<String>>>()?;
    let flag = |k: &str| {
        c.get(k)
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    };
    (!columns.is_empty()).then(|| UniqueKey {
        columns,
        nulls_not_distinct: flag("nulls_not_distinct"),
        timing: (flag("deferrable"), flag("initdeferred")),
    })
}

/// A foreign key of the incoming table that the live table has too, but for
/// its referential actions (`ON DELETE SET DEFAULT` became `SET NULL`): no
/// write that satisfied the old key violates it, so it is no
/// `FOREIGN_KEY_ADDED`. Deletes and updates of the referenced rows do other
/// things; they may be refused only where the new action refuses them
/// (`NO ACTION`, `RESTRICT`) and the old one did not.
fn fk_action_changed(
    live: &[(char, String, String)],
    def: &str,
    table: &str,
    cname: &str,
) -> Option<Hazard> {
    let (base, new) = fk_without_actions(def);
    let old = live
        .iter()
        .filter(|(t, _, _)| *t == 'f')
        .map(|(_, d, _)| fk_without_actions(d))
        .find(|(b, _)| *b == base)?
        .1;
    let refuses = |a: &str| matches!(a, "NO ACTION" | "RESTRICT");
    let rejects = ["UPDATE", "DELETE"]
        .iter()
        .any(|on| refuses(fk_action(&new, on)) && !refuses(fk_action(&old, on)));
    let shown = |actions: &[String]| {
        if actions.is_empty() {
            "NO ACTION".to_string()
        } else {
            actions.join(" ")
        }
    };
    Some(Hazard::new(
        "FOREIGN_KEY_ACTION_CHANGED",
        if rejects {
            Effect::RejectsWrites
        } else {
            Effect::Info
        },
        format!("{table}.{}", display_ident(cname)),
        format!("{} -> {}", shown(&old), shown(&new)),
    ))
}

/// A foreign key's definition without its referential actions, and the
/// actions as printed (`ON DELETE SET NULL (a)`; `NO ACTION`, the default,
/// is not printed).
fn fk_without_actions(def: &str) -> (String, Vec<String>) {
    let mut base = def.to_string();
    let mut actions = Vec::new();
    for on in [" ON UPDATE ", " ON DELETE "] {
        let Some(refs) = base.find("REFERENCES ") else {
            break;
        };
        let Some(at) = base[refs..].find(on).map(|i| refs + i) else {
            continue;
        };
        let after = at + on.len();
        let Some(word) = [
            "CASCADE",
            "RESTRICT",
            "SET NULL",
            "SET DEFAULT",
            "NO ACTION",
        ]
        .iter()
        .find(|w| base[after..].starts_with(**w)) else {
            continue;
        };
        let mut end = after + word.len();
        if base[end..].starts_with(" (")
            && let Some(close) = base[end..].find(')')
        {
            end += close + 1;
        }
        actions.push(base[at + 1..end].to_string());
        base.replace_range(at..end, "");
    }
    (base, actions)
}

/// The action `ON {on}` of [`fk_without_actions`]'s list (`CASCADE`, `SET
/// NULL (a)`), or `NO ACTION`.
fn fk_action<'a>(actions: &'a [String], on: &str) -> &'a str {
    actions
        .iter()
        .find_map(|a| a.strip_prefix("ON ")?.strip_prefix(on)?.strip_prefix(' '))
        .unwrap_or("NO ACTION")
}

/// A constraint's definition (`pg_get_constraintdef`) as PostgreSQL's parse
/// tree, without locations and with the casts a dump and restore moves put
/// back: a CHECK written `status IN ('a', 'b')` on a varchar column prints as
/// `((status)::text = ANY ((ARRAY['a'::character varying, …])::text[]))`,
/// and after a round trip through pg_dump (the shadow's copy) as
/// `… = ANY (ARRAY[('a'::character varying)::text, …])`: the same
/// constraint. An array constructor cast to an array type is taken as its
/// elements cast to the element type. `None` when it does not parse.
/// Where [`canonical_constraint`]'s tree holds the constraint itself.
const CONSTRAINT_NODE: &str =
    "/stmts/0/stmt/node/AlterTableStmt/cmds/0/node/AlterTableCmd/def/node/Constraint";

fn canonical_constraint(def: &str) -> Option<serde_json::Value> {
    let parsed = pg_query::parse(&format!("ALTER TABLE t ADD {def}"), 0).ok()?;
    let mut tree = serde_json::to_value(&parsed.protobuf).ok()?;
    canonicalise(&mut tree);
    Some(tree)
}

fn canonicalise(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            // Positions in the text: `location`, `stmt_location`,
            // `list_start`, `rexpr_list_end`, `stmt_len`, ...
            map.retain(|k, _| {
                !(k.ends_with("location")
                    || k.ends_with("list_start")
                    || k.ends_with("list_end")
                    || k == "stmt_len")
            });
            if let Some(cast) = map.get_mut("TypeCast")
                && let Some(pushed) = push_array_cast(cast)
            {
                *v = pushed;
                canonicalise(v);
                return;
            }
            map.values_mut().for_each(canonicalise);
        }
        Value::Array(items) => items.iter_mut().for_each(canonicalise),
        _ => {}
    }
}

/// `(ARRAY[a, b])::T[]` as `ARRAY[a::T, b::T]` (the `A_ArrayExpr` node),
/// when `cast` is such a cast.
fn push_array_cast(cast: &serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::{Value, json};
    let elements = cast
        .get("arg")?
        .get("node")?
        .get("AArrayExpr")?
        .get("elements");
    let mut element_type = cast.get("type_name")?.clone();
    let bounds = element_type.get_mut("array_bounds")?.as_array_mut()?;
    bounds.pop()?;
    let elements: Vec<Value> = elements
        .and_then(Value::as_array)
        .map(|els| {
            els.iter()
                .map(|e| json!({"node": {"TypeCast": {"arg": e, "type_name": element_type}}}))
                .collect()
        })
        .unwrap_or_default();
    Some(json!({"AArrayExpr": {"elements": elements}}))
}

/// Argument lists and results for display: `public.` dropped from type names.
fn show_args(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("public.") {
        let boundary = out
            .chars()
            .chain(rest[..i].chars())
            .last()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '"' || c == '$'));
        out.push_str(&rest[..i]);
        if !boundary {
            out.push_str("public.");
        }
        rest = &rest[i + "public.".len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// listmonk's `campaigns_template_id_fkey` went from `SET DEFAULT` to
    /// `SET NULL`: no write the old key took breaks the new one.
    #[test]
    fn a_foreign_key_whose_actions_changed_is_not_added() {
        let refs = "FOREIGN KEY (t) REFERENCES public.templates(id)";
        let live = |actions: &str| vec![('f', format!("{refs}{actions}"), "c_t_fkey".to_string())];
        let changed = |old: &str, new: &str| {
            fk_action_changed(&live(old), &format!("{refs}{new}"), "public.c", "c_t_fkey")
                .map(|h| (h.code, h.effect, h.object, h.detail))
        };
        assert_eq!(
            changed(" ON DELETE SET DEFAULT", " ON DELETE SET NULL (t)"),
            Some((
                "FOREIGN_KEY_ACTION_CHANGED".into(),
                Effect::Info,
                "public.c.c_t_fkey".into(),
                "ON DELETE SET DEFAULT -> ON DELETE SET NULL (t)".into()
            ))
        );
        // Deletes that cascaded are refused now.
        assert_eq!(
            changed(
                " ON UPDATE CASCADE ON DELETE CASCADE DEFERRABLE",
                " ON UPDATE CASCADE DEFERRABLE"
            )
            .map(|h| (h.1, h.3)),
            Some((
                Effect::RejectsWrites,
                "ON UPDATE CASCADE ON DELETE CASCADE -> ON UPDATE CASCADE".into()
            ))
        );
        // Another column, another table, or MATCH FULL: a key of its own.
        for other in [
            "FOREIGN KEY (u) REFERENCES public.templates(id)",
            "FOREIGN KEY (t) REFERENCES public.layouts(id)",
            "FOREIGN KEY (t) REFERENCES public.templates(id) MATCH FULL ON DELETE CASCADE",
        ] {
            assert_eq!(
                fk_action_changed(&live(" ON DELETE CASCADE"), other, "public.c", "k"),
                None,
                "{other}"
            );
        }
    }

    /// Medusa's payment status checks gained values: nothing they allowed
    /// is refused.
    #[test]
    fn a_check_whose_list_grew_is_no_added_check() {
        let list = |values: &[&str]| {
            format!(
                "CHECK (((status)::text = ANY ((ARRAY[{}])::text[])))",
                values
                    .iter()
                    .map(|v| format!("'{v}'::character varying"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let live = vec![('c', list(&["a", "b"]), "k".to_string())];
        let old = live[0].1.as_str();
        assert_eq!(narrower_in_list(&live, &list(&["b", "c", "a"])), Some(old));
        // As a dump and restore prints it.
        assert_eq!(
            narrower_in_list(
                &live,
                "CHECK (((status)::text = ANY (ARRAY[('a'::character varying)::text, ('b'::character varying)::text, ('c'::character varying)::text])))"
            ),
            Some(old)
        );
        for new in [
            list(&["a", "c"]),
            list(&["a"]).replace("(status)", "(kind)"),
            list(&["a", "b", "c"]).replace(" = ANY", " <> ALL"),
            format!("{} NOT VALID", list(&["a", "b", "c"])),
            "CHECK ((n > 0))".to_string(),
        ] {
            assert_eq!(narrower_in_list(&live, &new), None, "{new}");
        }
    }

    /// Medusa's `workflow_execution` key gained `run_id`: less strict, so
    /// nothing the old key accepted is refused.
    #[test]
    fn a_unique_key_over_more_columns_is_no_added_key() {
        let live = |def: &str| vec![('p', def.to_string(), "pk".to_string())];
        let old = "PRIMARY KEY (workflow_id, transaction_id)";
        assert_eq!(
            looser_unique(
                &live(old),
                "PRIMARY KEY (workflow_id, transaction_id, run_id)"
            ),
            Some(old)
        );
        assert_eq!(
            looser_unique(
                &live("UNIQUE (\"A, b\", c)"),
                "UNIQUE (c, \"A, b\", d) INCLUDE (e)"
            ),
            Some("UNIQUE (\"A, b\", c)")
        );
        // Fewer columns, other columns, NULLs now equal, checked earlier (or
        // later): a key that may refuse what the old one took.
        for (old, new) in [
            (old, "PRIMARY KEY (workflow_id)"),
            (old, "UNIQUE (workflow_id, run_id)"),
            (
                old,
                "UNIQUE NULLS NOT DISTINCT (workflow_id, transaction_id, run_id)",
            ),
            ("UNIQUE (a) DEFERRABLE", "UNIQUE (a, b)"),
            ("UNIQUE (a)", "UNIQUE (a, b) DEFERRABLE INITIALLY DEFERRED"),
        ] {
            assert_eq!(looser_unique(&live(old), new), None, "{old} -> {new}");
        }
        assert_eq!(
            looser_unique(
                &live("UNIQUE NULLS NOT DISTINCT (a)"),
                "UNIQUE NULLS NOT DISTINCT (a, b)"
            ),
            Some("UNIQUE NULLS NOT DISTINCT (a)")
        );
    }

    #[test]
    fn a_check_printed_after_a_dump_and_restore_is_the_same_check() {
        let before = "CHECK (((status)::text = ANY ((ARRAY['a'::character varying, 'b'::character varying])::text[])))";
        let after = "CHECK (((status)::text = ANY (ARRAY[('a'::character varying)::text, ('b'::character varying)::text])))";
        assert_eq!(canonical_constraint(before), canonical_constraint(after));
        assert!(canonical_constraint(before).is_some());
        // Another list is another constraint.
        let other = "CHECK (((status)::text = ANY (ARRAY[('a'::character varying)::text, ('c'::character varying)::text])))";
        assert_ne!(canonical_constraint(before), canonical_constraint(other));
        // Locations do not matter; names do.
        assert_eq!(
            canonical_constraint("CHECK ((a > 0))"),
            canonical_constraint("CHECK ( (a >   0))")
        );
        assert_ne!(
            canonical_constraint("CHECK ((a > 0))"),
            canonical_constraint("CHECK ((b > 0))")
        );
    }

    #[test]
    fn shows_types() {
        assert_eq!(show_type("public.email"), "email");
        assert_eq!(show_type("billing.email"), "billing.email");
        assert_eq!(show_args("a public.mood, b text"), "a mood, b text");
        assert_eq!(show_args("notpublic.x"), "notpublic.x");
    }
}
