//! The objects of a backup schema besides its tables: what `verify` compares
//! so that a backup which lost a view, a function, a column, a default, a
//! constraint or a trigger is not called intact.
//!
//! A manifest's tables record row counts, indexes and owned sequences
//! ([`crate::backups::manifest::ManifestTable`]); a restore also needs
//! everything else the replaced schema held. Right after the COMMIT that made
//! a backup (nothing writes a backup after it), the swap records, for each of
//! its schemas, every object in it as PostgreSQL identifies it
//! (`pg_identify_object`: a type such as `view` or `table constraint` and an
//! identity such as `backup_1752567000000.orders_total_check on
//! backup_1752567000000.orders`), with the relation it belongs to. `verify`
//! lists the same now and reports what went missing or appeared.
//!
//! What is listed: views, materialized views, foreign and partitioned tables,
//! sequences no column owns, indexes of relations other than plain tables,
//! the columns of tables, defaults, constraints (of tables and of domains),
//! triggers other than PostgreSQL's internal ones, rules other than a view's
//! `_RETURN`, policies, extended statistics, functions and procedures, types
//! (not arrays, not the row types of tables), operators, operator classes and
//! families, collations, conversions, text search objects and extensions
//! created in the schema (not their members). Not listed:
//! plain tables, their indexes and owned sequences (the manifest's tables
//! cover them), and members of extensions (an extension's objects are its
//! own, and a non-relocatable one such as PostGIS stays in public).
//!
//! Storage: the list goes into the manifest row under the key `objects`
//! (`{"<backup schema>": [[type, identity, relation], …]}`), outside the
//! [`crate::backups::manifest::Manifest`] type: a schema of thousands of
//! tables has tens of thousands of objects, which `list`, `status` and every
//! swap read no part of. [`crate::backups::manifest::list_backups`] leaves the
//! key out, [`crate::backups::manifest::update_manifest`] keeps it, and only
//! [`recorded`] reads it. Manifests of earlier versions have no such key:
//! `verify` then compares the tables alone and says so.
//!
//! Objects are compared by type and identity, not by oid: a dump and restore
//! or a `pg_upgrade` gives functions, constraints and triggers new oids. An
//! identity names the schemas of what it mentions: the backup schema, whose
//! name a backup keeps for its whole life, and, in a function's, an
//! aggregate's or an operator's argument types, other schemas, which a later
//! migration may rename (a type of `billing` that a swap of `billing` moves
//! to its backup schema). So a recorded object missing by identity is found
//! when one of the same type and identity but for its argument types'
//! schemas is there instead (and unrecorded): the same object, whose
//! argument types moved (a rollback to the backup says what it would then
//! use of other backups). A rename in the backup itself is a difference.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

/// One object: its type and identity as `pg_identify_object` gives them, and
/// the relation of the schema it belongs to (a column's, a constraint's, a
/// trigger's), if any (none for a relation itself).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SchemaObject(pub String, pub String, pub Option<String>);

impl SchemaObject {
    /// What the comparison goes by: type and identity.
    pub fn key(&self) -> (&str, &str) {
        (&self.0, &self.1)
    }

    /// Type and identity without the schemas of its argument types (see
    /// the module doc): the same function, whichever schema its argument's
    /// type is in now.
    pub fn loose_key(&self) -> (String, String) {
        (self.0.clone(), argument_schemas(&self.1).0)
    }

    /// The schemas its argument types were in (a function's, an
    /// aggregate's, an operator's), unquoted.
    pub fn argument_schemas(&self) -> Vec<String> {
        argument_schemas(&self.1).1
    }

    /// `view backup_1752567000000.totals`.
    pub fn described(&self) -> String {
        format!("{} {}", self.0, self.1)
    }

    /// The relation it belongs to.
    pub fn relation(&self) -> Option<&str> {
        self.2.as_deref()
    }
}

/// The recorded objects of each backup schema of a backup.
pub type Recorded = BTreeMap<String, Vec<SchemaObject>>;

/// The objects of `schema` as they are now (see the module doc), sorted.
pub async fn list(client: &impl GenericClient, schema: &str) -> Result<Vec<SchemaObject>> {
    // The kinds that are only named in the schema, as listed once in
    // `pg::catalog` (relations, types and statistics are asked above with
    // what they belong to).
    let named = crate::pg::catalog::per_schema_kind(
        &["pg_class", "pg_type", "pg_statistic_ext"],
        "\n               UNION ALL\n               ",
        |catalog, column| {
            format!(
                "SELECT 'pg_catalog.{catalog}'::regclass::oid, o.oid, 0, NULL
                 FROM pg_catalog.{catalog} o WHERE o.{column} = (SELECT oid FROM ns)"
            )
        },
    );
    let sql = format!(
            "WITH ns AS (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1),
             rels AS (
               SELECT c.oid, c.relname, c.relkind FROM pg_catalog.pg_class c
                WHERE c.relnamespace = (SELECT oid FROM ns)
                  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                   WHERE d.classid = 'pg_catalog.pg_class'::regclass
                                     AND d.objid = c.oid AND d.deptype = 'e')),
             objs(classid, objid, objsubid, rel) AS (
               SELECT 'pg_catalog.pg_class'::regclass::oid, r.oid, 0, NULL::name FROM rels r
                WHERE r.relkind IN ('v', 'm', 'f', 'p')
                   OR (r.relkind = 'S' AND NOT EXISTS (
                         SELECT 1 FROM pg_catalog.pg_depend d
                          WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = r.oid
                            AND d.refclassid = 'pg_catalog.pg_class'::regclass
                            AND d.deptype IN ('a', 'i')))
               UNION ALL
               SELECT 'pg_catalog.pg_class'::regclass::oid, x.indexrelid, 0, r.relname
                 FROM pg_catalog.pg_index x JOIN rels r ON r.oid = x.indrelid
                WHERE r.relkind <> 'r'
               UNION ALL
               SELECT 'pg_catalog.pg_class'::regclass::oid, a.attrelid, a.attnum, r.relname
                 FROM pg_catalog.pg_attribute a JOIN rels r ON r.oid = a.attrelid
                WHERE r.relkind IN ('r', 'p', 'f', 'v', 'm') AND a.attnum > 0 AND NOT a.attisdropped
               UNION ALL
               SELECT 'pg_catalog.pg_attrdef'::regclass::oid, d.oid, 0, r.relname
                 FROM pg_catalog.pg_attrdef d JOIN rels r ON r.oid = d.adrelid
               UNION ALL
               SELECT 'pg_catalog.pg_constraint'::regclass::oid, k.oid, 0, r.relname
                 FROM pg_catalog.pg_constraint k JOIN rels r ON r.oid = k.conrelid
               UNION ALL
               SELECT 'pg_catalog.pg_constraint'::regclass::oid, k.oid, 0, NULL
                 FROM pg_catalog.pg_constraint k
                WHERE k.connamespace = (SELECT oid FROM ns) AND k.contypid <> 0
               UNION ALL
               SELECT 'pg_catalog.pg_trigger'::regclass::oid, t.oid, 0, r.relname
                 FROM pg_catalog.pg_trigger t JOIN rels r ON r.oid = t.tgrelid
                WHERE NOT t.tgisinternal
               UNION ALL
               SELECT 'pg_catalog.pg_rewrite'::regclass::oid, w.oid, 0, r.relname
                 FROM pg_catalog.pg_rewrite w JOIN rels r ON r.oid = w.ev_class
                WHERE w.rulename <> '_RETURN'
               UNION ALL
               SELECT 'pg_catalog.pg_policy'::regclass::oid, p.oid, 0, r.relname
                 FROM pg_catalog.pg_policy p JOIN rels r ON r.oid = p.polrelid
               UNION ALL
               SELECT 'pg_catalog.pg_statistic_ext'::regclass::oid, s.oid, 0,
                      (SELECT r.relname FROM rels r WHERE r.oid = s.stxrelid)
                 FROM pg_catalog.pg_statistic_ext s WHERE s.stxnamespace = (SELECT oid FROM ns)
               UNION ALL
               SELECT 'pg_catalog.pg_type'::regclass::oid, t.oid, 0, NULL
                 FROM pg_catalog.pg_type t LEFT JOIN pg_catalog.pg_class c ON c.oid = t.typrelid
                WHERE t.typnamespace = (SELECT oid FROM ns) AND (t.typrelid = 0 OR c.relkind = 'c')
                  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type e WHERE e.typarray = t.oid)
               UNION ALL
               SELECT 'pg_catalog.pg_extension'::regclass::oid, e.oid, 0, NULL
                 FROM pg_catalog.pg_extension e WHERE e.extnamespace = (SELECT oid FROM ns)
               UNION ALL
               {named})
             SELECT i.type, i.identity, o.rel::text
               FROM objs o, LATERAL pg_catalog.pg_identify_object(o.classid, o.objid, o.objsubid) i
              WHERE o.objsubid <> 0
                 OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                 WHERE d.classid = o.classid AND d.objid = o.objid AND d.deptype = 'e')
              ORDER BY 1, 2"
    );
    let rows = client
        .query(sql.as_str(), &[&schema])
        .await
        .with_context(|| format!("listing the objects of {schema}"))?;
    Ok(rows
        .iter()
        .map(|r| SchemaObject(r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// The names of the relations of `schema` that are not extension members.
pub async fn relations(client: &impl GenericClient, schema: &str) -> Result<BTreeSet<String>> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                 WHERE d.classid = 'pg_catalog.pg_class'::regclass
                                   AND d.objid = c.oid AND d.deptype = 'e')",
            &[&schema],
        )
        .await
        .with_context(|| format!("listing the relations of {schema}"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Record the objects of each of `schemas` (a backup's, as they are now) in
/// backup `ts`'s manifest row.
pub async fn record(client: &impl GenericClient, ts: i64, schemas: &[&str]) -> Result<()> {
    let mut all = Recorded::new();
    for s in schemas {
        all.insert(s.to_string(), list(client, s).await?);
    }
    let value = serde_json::to_value(&all)?;
    client
        .execute(
            "UPDATE pgshift.backups
                SET manifest = manifest || pg_catalog.jsonb_build_object('objects', $2::jsonb)
              WHERE ts = $1",
            &[&ts, &value],
        )
        .await
        .context("recording the backup's objects in its manifest")?;
    Ok(())
}

/// The objects recorded for backup `ts`, or None when its manifest has none
/// (written by an earlier version, or the recording after its COMMIT did
/// not run); why not, when they cannot be read (a verify, and a rollback
/// with --force, still compare the tables).
pub async fn recorded(
    client: &impl GenericClient,
    ts: i64,
) -> Result<Option<std::result::Result<Recorded, String>>> {
    let row = client
        .query_opt(
            "SELECT manifest->'objects' FROM pgshift.backups WHERE ts = $1",
            &[&ts],
        )
        .await
        .context("reading the backup's objects from its manifest")?;
    let Some(value) = row.and_then(|r| r.get::<_, Option<serde_json::Value>>(0)) else {
        return Ok(None);
    };
    Ok(Some(
        serde_json::from_value(value).map_err(|e| format!("they are not readable ({e})")),
    ))
}

/// `identity` without the schema qualifiers of the names in its argument
/// list (`s.f(billing.money, integer)` → `s.f(money, integer)`; identities
/// without one are returned whole), and those schemas, unquoted.
fn argument_schemas(identity: &str) -> (String, Vec<String>) {
    let mut schemas = Vec::new();
    let mut out = String::new();
    let mut token = String::new();
    let mut in_args = false;
    let mut chars = identity.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' {
            token.push(c);
            while let Some(q) = chars.next() {
                token.push(q);
                if q == '"' {
                    match chars.peek() {
                        Some('"') => token.push(chars.next().unwrap_or('"')),
                        _ => break,
                    }
                }
            }
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            token.push(c);
        } else if c == '.' && in_args && !token.is_empty() {
            // What came before the dot was a schema.
            let unquoted = match token.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                Some(t) => t.replace("\"\"", "\""),
                None => token.clone(),
            };
            schemas.push(unquoted);
            token.clear();
        } else {
            in_args |= c == '(';
            out.push_str(&token);
            token.clear();
            out.push(c);
        }
    }
    out.push_str(&token);
    (out, schemas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_schemas_are_left_out() {
        let cases: [(&str, &str, &[&str]); 4] = [
            (
                "b.f(billing.money_t,integer)",
                "b.f(money_t,integer)",
                &["billing"],
            ),
            (
                r#"b."f(x)"("my ""s"".x".t, "a.b"."c.d"[])"#,
                r#"b."f(x)"(t, "c.d"[])"#,
                &[r#"my "s".x"#, "a.b"],
            ),
            ("c on b.t", "c on b.t", &[]),
            (
                "b.+(billing.m,billing.m)",
                "b.+(m,m)",
                &["billing", "billing"],
            ),
        ];
        for (identity, loose, schemas) in cases {
            let (l, s) = argument_schemas(identity);
            assert_eq!(l, loose, "{identity}");
            assert_eq!(s, schemas, "{identity}");
        }
    }
}
