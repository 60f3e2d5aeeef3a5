//! The movable objects of a schema, for the object-level swap.
//!
//! `ALTER … SET SCHEMA` moves a table with its indexes, constraints, owned
//! sequences, row type and array type; a type with its array type. So the list
//! holds every non-extension object of the schema that is *not* carried by
//! another: tables (each partition too), views, materialized views, foreign
//! tables, standalone sequences, functions, procedures, aggregates, types and
//! domains, collations, conversions, operators, operator classes and families,
//! text search objects and extended statistics. Extension members (and objects
//! that belong to them) never move, so PostGIS stays where it is.

use anyhow::{Context, Result};
use tokio_postgres::GenericClient;

use crate::pg::ident::{qualified, quote_ident};

/// One object to move.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Movable {
    /// `TABLE`, `VIEW`, `FUNCTION`, …: the keyword after ALTER.
    pub kind: String,
    /// The name as used after the keyword (quoted, schema-qualified, with
    /// arguments for functions and operators, `USING am` for opclasses).
    pub sql_name: String,
    /// Plain name for reports.
    pub name: String,
    /// For relations that LOCK TABLE accepts: the qualified name to lock.
    pub lockable: Option<String>,
}

impl Movable {
    /// `ALTER <kind> <name> SET SCHEMA <target>`.
    pub fn set_schema_sql(&self, target: &str) -> String {
        format!(
            "ALTER {} {} SET SCHEMA {}",
            self.kind,
            self.sql_name,
            quote_ident(target)
        )
    }
}

/// Objects that belong to extensions, transitively (see catalog.rs).
const EXT: &str = "WITH RECURSIVE ext(classid, objid) AS (
        SELECT d.classid, d.objid FROM pg_catalog.pg_depend d WHERE d.deptype = 'e'
        UNION
        SELECT d.classid, d.objid FROM pg_catalog.pg_depend d
          JOIN ext ON d.refclassid = ext.classid AND d.refobjid = ext.objid
         WHERE d.deptype IN ('i', 'a'))";

/// Every object of `schema` that must move for the schema to be replaced.
/// Run with `search_path = ''` semantics: names come back qualified.
pub async fn movables(client: &impl GenericClient, schema: &str) -> Result<Vec<Movable>> {
    let mut out = Vec::new();
    // Relations. Sequences owned by a column move with their table.
    let rows = client
        .query(
            &format!(
                "{EXT}
                 SELECT c.relname, c.relkind::text
                   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S', 'c')
                    AND (c.tableoid, c.oid) NOT IN (SELECT classid, objid FROM ext)
                    AND NOT (c.relkind = 'S' AND EXISTS (
                         SELECT 1 FROM pg_catalog.pg_depend d
                          WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                            AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i')))
                  ORDER BY c.relname"
            ),
            &[&schema],
        )
        .await
        .context("listing relations to move")?;
    for r in rows {
        let name: String = r.get(0);
        let relkind: String = r.get(1);
        let (kind, lockable) = match relkind.as_str() {
            "r" | "p" => ("TABLE", true),
            "v" => ("VIEW", true),
            "m" => ("MATERIALIZED VIEW", false),
            "f" => ("FOREIGN TABLE", true),
            "S" => ("SEQUENCE", false),
            _ => ("TYPE", false), // standalone composite type
        };
        let q = qualified(schema, &name);
        out.push(Movable {
            kind: kind.into(),
            lockable: lockable.then(|| q.clone()),
            sql_name: q,
            name,
        });
    }
    // Types and domains: not row types of relations (they move with them, except
    // standalone composites listed above), not array types, not multiranges
    // (they move with their range type).
    let rows = client
        .query(
            &format!(
                "{EXT}
                 SELECT t.typname, t.typtype::text
                   FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
                  WHERE n.nspname = $1 AND t.typtype IN ('b', 'd', 'e', 'r') AND t.typrelid = 0
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type e WHERE e.typarray = t.oid)
                    AND (t.tableoid, t.oid) NOT IN (SELECT classid, objid FROM ext)
                  ORDER BY t.typname"
            ),
            &[&schema],
        )
        .await
        .context("listing types to move")?;
    for r in rows {
        let name: String = r.get(0);
        let typtype: String = r.get(1);
        let kind = if typtype == "d" { "DOMAIN" } else { "TYPE" };
        out.push(Movable {
            kind: kind.into(),
            sql_name: qualified(schema, &name),
            name,
            lockable: None,
        });
    }
    // Functions, procedures, aggregates: regprocedure text is quoted and, with an
    // empty search_path, qualified.
    let rows = client
        .query(
            &format!(
                "{EXT}
                 SELECT p.proname, p.prokind::text, p.oid
                   FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                  WHERE n.nspname = $1
                    AND (p.tableoid, p.oid) NOT IN (SELECT classid, objid FROM ext)
                  ORDER BY p.proname, p.oid"
            ),
            &[&schema],
        )
        .await
        .context("listing functions to move")?;
    for r in rows {
        let name: String = r.get(0);
        let kind = match r.get::<_, String>(1).as_str() {
            "p" => "PROCEDURE",
            "a" => "AGGREGATE",
            _ => "FUNCTION",
        };
        let oid: u32 = r.get(2);
        let sig: String = client
            .query_one(
                "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(p.proname)
                        || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')'
                   FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                  WHERE p.oid = $1",
                &[&oid],
            )
            .await?
            .get(0);
        out.push(Movable {
            kind: kind.into(),
            sql_name: sig,
            name,
            lockable: None,
        });
    }
    // The rarer kinds, each with the syntax ALTER needs.
    let simple: &[(&str, &str, &str, &str)] = &[
        ("COLLATION", "pg_collation", "collname", "collnamespace"),
        ("CONVERSION", "pg_conversion", "conname", "connamespace"),
        (
            "TEXT SEARCH CONFIGURATION",
            "pg_ts_config",
            "cfgname",
            "cfgnamespace",
        ),
        (
            "TEXT SEARCH DICTIONARY",
            "pg_ts_dict",
            "dictname",
            "dictnamespace",
        ),
        (
            "TEXT SEARCH PARSER",
            "pg_ts_parser",
            "prsname",
            "prsnamespace",
        ),
        (
            "TEXT SEARCH TEMPLATE",
            "pg_ts_template",
            "tmplname",
            "tmplnamespace",
        ),
        ("STATISTICS", "pg_statistic_ext", "stxname", "stxnamespace"),
    ];
    for (kind, cat, namecol, nscol) in simple {
        let rows = client
            .query(
                &format!(
                    "{EXT}
                     SELECT o.{namecol}::text FROM pg_catalog.{cat} o JOIN pg_catalog.pg_namespace n ON n.oid = o.{nscol}
                      WHERE n.nspname = $1 AND (o.tableoid, o.oid) NOT IN (SELECT classid, objid FROM ext)
                      ORDER BY 1"
                ),
                &[&schema],
            )
            .await
            .with_context(|| format!("listing {kind} objects to move"))?;
        for r in rows {
            let name: String = r.get(0);
            out.push(Movable {
                kind: (*kind).into(),
                sql_name: qualified(schema, &name),
                name,
                lockable: None,
            });
        }
    }
    let rows = client
        .query(
            &format!(
                "{EXT}
                 SELECT o.oprname::text,
                        pg_catalog.quote_ident(n.nspname) || '.' || o.oprname || ' (' ||
                        COALESCE(pg_catalog.format_type(NULLIF(o.oprleft, 0), NULL), 'NONE') || ', ' ||
                        COALESCE(pg_catalog.format_type(NULLIF(o.oprright, 0), NULL), 'NONE') || ')'
                   FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
                  WHERE n.nspname = $1 AND (o.tableoid, o.oid) NOT IN (SELECT classid, objid FROM ext)
                  ORDER BY 1"
            ),
            &[&schema],
        )
        .await
        .context("listing operators to move")?;
    for r in rows {
        out.push(Movable {
            kind: "OPERATOR".into(),
            name: r.get(0),
            sql_name: r.get(1),
            lockable: None,
        });
    }
    for (kind, cat, namecol, nscol, amcol) in [
        (
            "OPERATOR CLASS",
            "pg_opclass",
            "opcname",
            "opcnamespace",
            "opcmethod",
        ),
        (
            "OPERATOR FAMILY",
            "pg_opfamily",
            "opfname",
            "opfnamespace",
            "opfmethod",
        ),
    ] {
        let rows = client
            .query(
                &format!(
                    "{EXT}
                     SELECT o.{namecol}::text, am.amname::text
                       FROM pg_catalog.{cat} o JOIN pg_catalog.pg_namespace n ON n.oid = o.{nscol}
                       JOIN pg_catalog.pg_am am ON am.oid = o.{amcol}
                      WHERE n.nspname = $1 AND (o.tableoid, o.oid) NOT IN (SELECT classid, objid FROM ext)
                      ORDER BY 1"
                ),
                &[&schema],
            )
            .await
            .with_context(|| format!("listing {kind} objects to move"))?;
        for r in rows {
            let name: String = r.get(0);
            let am: String = r.get(1);
            out.push(Movable {
                kind: kind.into(),
                sql_name: format!("{} USING {}", qualified(schema, &name), quote_ident(&am)),
                name,
                lockable: None,
            });
        }
    }
    Ok(out)
}
