//! A destination older than the source: what of the source's schema it
//! cannot restore, found before anything is changed.
//!
//! pg_dump writes the source's schema in the source version's syntax, and
//! nothing in it is translated for an older server: a function with an
//! SQL-standard body (`BEGIN ATOMIC …`, PostgreSQL 14) or an index with
//! `NULLS NOT DISTINCT` (15) fails the schema phase on a destination of 13.
//! That failure is clean (the shadow is dropped) but comes after the snapshot
//! and the dump, and names one object at a time. So prepare, and its dry
//! run, look for those features in the source's catalog first and refuse
//! with every object found, grouped by feature (exit 2, nothing changed).
//!
//! The list holds only what certainly fails: catalog facts that pg_dump
//! always writes out in syntax or names the older server lacks (a range
//! type's `multirange_type_name`, a column's `SET COMPRESSION`, …). What a
//! function's string body or a view's query calls is not checked: a newer
//! built-in function there fails only when it runs, and PostgreSQL itself
//! does not check it at restore. Objects of extensions (which the
//! destination's own extension provides), relations the filters leave out
//! and the namesakes of kept tables are not counted. The general warning
//! that the destination is older stays. Grants are not the schema's: the
//! privileges phase leaves out the ones the destination lacks (`MAINTAIN`,
//! 17) with a warning.
//!
//! Each feature's query reads catalog columns that exist from the version
//! that brought the feature, so it runs only when the source has that
//! version and the destination does not.

use std::collections::BTreeSet;

use anyhow::Result;
use tokio_postgres::Client;

use crate::pg::catalog::not_ext_member;
use crate::pg::exec::pg_error_as;
use crate::pg::ident::display_ident;
use crate::pg::meta::table_display;
use crate::prepare::preflight::list_some;
use crate::swap::impact::qualified_display;

/// One feature: the version that brought it, what to call it, and the query
/// that finds its objects in the chosen schemas (`$1`). Each row: the
/// object's schema and name, a column (or NULL), and the relation it belongs
/// to (schema and name, or NULLs), by which the filters apply.
struct Feature {
    since: u32,
    what: &'static str,
    sql: String,
}

fn features() -> Vec<Feature> {
    // Objects of the chosen schemas that stand alone (functions, types,
    // collations): `catalog` aliased `x`, with the object's name and schema
    // columns.
    let named = |catalog: &str, name: &str, schema: &str, cond: &str| {
        format!(
            "SELECT n.nspname::text, x.{name}::text, NULL::text, NULL::text, NULL::text
               FROM pg_catalog.{catalog} x
               JOIN pg_catalog.pg_namespace n ON n.oid = x.{schema}
              WHERE n.nspname = ANY($1) AND {cond}
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                 WHERE d.classid = 'pg_catalog.{catalog}'::pg_catalog.regclass
                                   AND d.objid = x.oid AND d.deptype = 'e')"
        )
    };
    let proc = |cond: &str| named("pg_proc", "proname", "pronamespace", cond);
    let collation = |cond: &str| named("pg_collation", "collname", "collnamespace", cond);
    // Columns of the chosen schemas' tables, views' and composite types.
    let column = |cond: &str| {
        format!(
            "SELECT n.nspname::text, c.relname::text, a.attname::text, n.nspname::text, c.relname::text
               FROM pg_catalog.pg_attribute a
               JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped
                AND c.relkind IN ('r', 'p', 'f', 'm', 'c') AND {cond} AND {}",
            not_ext_member!("pg_class", "c.oid")
        )
    };
    // Objects of a relation `c` of the chosen schemas (`from` joins it):
    // the relation itself, its indexes, its constraints.
    let of_relation = |object: &str, from: &str, cond: &str| {
        format!(
            "SELECT n.nspname::text, {object}::text, NULL::text, n.nspname::text, c.relname::text
               FROM {from}
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = ANY($1) AND {cond} AND {}",
            not_ext_member!("pg_class", "c.oid")
        )
    };
    let constraint = |cond: &str| {
        of_relation(
            "con.conname",
            "pg_catalog.pg_constraint con JOIN pg_catalog.pg_class c ON c.oid = con.conrelid",
            cond,
        )
    };
    vec![
        Feature {
            since: 14,
            what: "functions with an SQL-standard body (BEGIN ATOMIC or RETURN)",
            sql: proc("x.prosqlbody IS NOT NULL"),
        },
        Feature {
            since: 14,
            what: "procedures with OUT parameters",
            sql: proc("x.prokind = 'p' AND 'o' = ANY (x.proargmodes)"),
        },
        Feature {
            since: 14,
            what: "range types (pg_dump names their multirange type)",
            sql: named("pg_type", "typname", "typnamespace", "x.typtype = 'r'"),
        },
        Feature {
            since: 14,
            what: "columns of a multirange type",
            sql: column(
                "EXISTS (SELECT 1 FROM pg_catalog.pg_type t WHERE t.oid = a.atttypid AND t.typtype = 'm')",
            ),
        },
        Feature {
            since: 14,
            what: "columns with a compression method (COMPRESSION pglz or lz4)",
            sql: column("c.relkind IN ('r', 'p') AND a.attcompression IN ('p', 'l')"),
        },
        Feature {
            since: 14,
            what: "statistics on expressions",
            sql: format!(
                "SELECT n.nspname::text, s.stxname::text, NULL::text, cn.nspname::text, c.relname::text
                   FROM pg_catalog.pg_statistic_ext s
                   JOIN pg_catalog.pg_namespace n ON n.oid = s.stxnamespace
                   JOIN pg_catalog.pg_class c ON c.oid = s.stxrelid
                   JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
                  WHERE n.nspname = ANY($1) AND s.stxexprs IS NOT NULL AND {}",
                not_ext_member!("pg_statistic_ext", "s.oid")
            ),
        },
        Feature {
            since: 15,
            what: "unique indexes and constraints with NULLS NOT DISTINCT",
            sql: of_relation(
                "ic.relname",
                "pg_catalog.pg_index i
                 JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
                 JOIN pg_catalog.pg_class c ON c.oid = i.indrelid",
                "i.indnullsnotdistinct",
            ),
        },
        Feature {
            since: 15,
            what: "views with the security_invoker option",
            sql: of_relation(
                "c.relname",
                "pg_catalog.pg_class c",
                "c.relkind = 'v' AND EXISTS (SELECT 1 FROM pg_catalog.unnest(c.reloptions) o
                                              WHERE o LIKE 'security\\_invoker=%')",
            ),
        },
        Feature {
            since: 15,
            what: "foreign keys with ON DELETE SET NULL or SET DEFAULT of chosen columns",
            sql: constraint(
                "con.contype = 'f' AND pg_catalog.cardinality(con.confdelsetcols) > 0",
            ),
        },
        Feature {
            since: 16,
            what: "ICU collations with custom rules",
            sql: collation("x.collicurules IS NOT NULL"),
        },
        Feature {
            since: 17,
            what: "collations of the builtin provider",
            sql: collation("x.collprovider = 'b'"),
        },
        Feature {
            since: 17,
            what: "columns with a collation of the builtin provider (such as pg_c_utf8)",
            sql: column(
                "EXISTS (SELECT 1 FROM pg_catalog.pg_collation co WHERE co.oid = a.attcollation AND co.collprovider = 'b')",
            ),
        },
        Feature {
            since: 18,
            what: "virtual generated columns",
            sql: column("a.attgenerated = 'v'"),
        },
        Feature {
            since: 18,
            what: "constraints WITHOUT OVERLAPS or with PERIOD",
            sql: constraint("con.conperiod"),
        },
        Feature {
            since: 18,
            what: "NOT ENFORCED constraints",
            sql: constraint("NOT con.conenforced"),
        },
        Feature {
            since: 18,
            what: "NOT NULL constraints NOT VALID",
            sql: constraint("con.contype = 'n' AND NOT con.convalidated"),
        },
    ]
}

/// What a destination of `dest_major` lacks of the source's schema: one
/// line per feature (`what (PostgreSQL N+): objects`), none when the
/// destination is as new as the source. `not_migrated`: the keys of the
/// relations the filters leave out (their objects do not count).
pub async fn lacking(
    src: &Client,
    schemas: &[String],
    source_major: u32,
    dest_major: u32,
    not_migrated: &BTreeSet<String>,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for f in features() {
        if !(dest_major < f.since && f.since <= source_major) {
            continue;
        }
        let rows = src.query(&f.sql, &[&schemas]).await.map_err(|e| {
            pg_error_as(
                e,
                "reading the source's catalog for features the older destination lacks",
            )
        })?;
        let mut found = BTreeSet::new();
        for r in rows {
            let (schema, name, column): (String, String, Option<String>) =
                (r.get(0), r.get(1), r.get(2));
            let rel: (Option<String>, Option<String>) = (r.get(3), r.get(4));
            if let (Some(s), Some(t)) = &rel
                && not_migrated.contains(&table_display(s, t))
            {
                continue;
            }
            let mut shown = qualified_display(&schema, &name);
            if let Some(c) = column {
                shown = format!("{shown}.{}", display_ident(&c));
            }
            found.insert(shown);
        }
        if found.is_empty() {
            continue;
        }
        let found: Vec<String> = found.into_iter().collect();
        out.push(format!(
            "{} (PostgreSQL {}+): {}",
            f.what,
            f.since,
            list_some(&found)
        ));
    }
    Ok(out)
}
