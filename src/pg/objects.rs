//! The movable objects of a schema, for the object-level swap.
//!
//! `ALTER … SET SCHEMA` moves a table with its indexes, constraints, owned
//! sequences, row type and array type; a type with its array type. So the list
//! holds every non-extension object of the schema that is *not* carried by
//! another: tables (each partition too), views, materialized views, foreign
//! tables, standalone sequences, functions, procedures, aggregates (a range
//! type's constructors among them), types and domains (multirange types too:
//! they do not follow their range type), collations, conversions, operators,
//! operator classes and families, text search objects and extended
//! statistics. Extension members (and objects that belong to them) never
//! move, so PostGIS stays where it is. Extended statistics do not follow
//! their table either: those on a table that stays (a kept table) stay, or
//! move back, with it ([`Movable::kept_with`]).
//!
//! Functions, procedures, aggregates and operators are named by a signature
//! whose types are written out with their schema, so the swap moves them
//! before any type or table ([`Movable::named_by_signature`]).
//!
//! `ALTER … SET SCHEMA` needs the privileges of the object's owner (a text
//! search parser or template, which has none, needs a superuser): each
//! object says whose privileges this role lacks ([`Movable::owner_lacked`]).
//! A range type's constructors are the usual case: PostgreSQL gives them the
//! bootstrap superuser, whoever creates the type, and `ALTER TYPE … SET
//! SCHEMA` leaves them where they are.
//!
//! A kept table stays with its indexes, owned sequences, row and array types
//! and statistics, whose names the incoming objects must not hold: each
//! schema's names are listed once per database ([`names_in`]) and paired in
//! Rust ([`clashes`]), for the swap (live against incoming, on the
//! destination) and for a dry run of prepare (the destination's kept tables
//! against the source's catalog).

use anyhow::{Context, Result};
use tokio_postgres::GenericClient;

use crate::pg::ident::{qualified, qualified_display, quote_ident};

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
    /// The owner whose privileges this role lacks (it may not move the
    /// object), or None.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_lacked: Option<String>,
    /// Extended statistics: the table they are on, (schema, name), in
    /// whichever schema. They do not follow it (`ALTER TABLE … SET SCHEMA`
    /// leaves them), so they stay, or move, with a table that stays (a kept
    /// table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub of_table: Option<(String, String)>,
}

/// Tables that stay where they are, as (schema, name): each kept table in
/// its live schema and its namesake in the incoming one.
pub type KeptTables = std::collections::BTreeSet<(String, String)>;

impl Movable {
    /// Named by a signature whose types are qualified (`f(m public.mood)`,
    /// `f(u public.users)`, `public.=== (public.mood, public.mood)`): the text
    /// no longer resolves once those types (or tables, with their row types)
    /// have moved, so these move first.
    pub fn named_by_signature(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "FUNCTION" | "PROCEDURE" | "AGGREGATE" | "OPERATOR"
        )
    }

    /// Stays with the kept tables: one of them (this object of `schema`),
    /// or statistics on one, in whichever schema.
    pub fn kept_with(&self, schema: &str, kept: &KeptTables) -> bool {
        match self.kind.as_str() {
            "TABLE" => kept.contains(&(schema.to_string(), self.name.clone())),
            "STATISTICS" => self.of_table.as_ref().is_some_and(|t| kept.contains(t)),
            _ => false,
        }
    }

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

/// The kinds `ALTER … SET SCHEMA` takes with a plain qualified name, and
/// where they live: (keyword, catalog, name column, namespace column, owner
/// column; none: only a superuser moves it).
const SIMPLE_KINDS: &[(&str, &str, &str, &str, Option<&str>)] = &[
    (
        "COLLATION",
        "pg_collation",
        "collname",
        "collnamespace",
        Some("collowner"),
    ),
    (
        "CONVERSION",
        "pg_conversion",
        "conname",
        "connamespace",
        Some("conowner"),
    ),
    (
        "TEXT SEARCH CONFIGURATION",
        "pg_ts_config",
        "cfgname",
        "cfgnamespace",
        Some("cfgowner"),
    ),
    (
        "TEXT SEARCH DICTIONARY",
        "pg_ts_dict",
        "dictname",
        "dictnamespace",
        Some("dictowner"),
    ),
    (
        "TEXT SEARCH PARSER",
        "pg_ts_parser",
        "prsname",
        "prsnamespace",
        None,
    ),
    (
        "TEXT SEARCH TEMPLATE",
        "pg_ts_template",
        "tmplname",
        "tmplnamespace",
        None,
    ),
    (
        "STATISTICS",
        "pg_statistic_ext",
        "stxname",
        "stxnamespace",
        Some("stxowner"),
    ),
];

/// Operator classes and families: (keyword, catalog, name, namespace, access
/// method, owner).
const AM_KINDS: &[(&str, &str, &str, &str, &str, &str)] = &[
    (
        "OPERATOR CLASS",
        "pg_opclass",
        "opcname",
        "opcnamespace",
        "opcmethod",
        "opcowner",
    ),
    (
        "OPERATOR FAMILY",
        "pg_opfamily",
        "opfname",
        "opfnamespace",
        "opfmethod",
        "opfowner",
    ),
];

/// The objects of `schema` that have an owner but no privileges, not
/// extension members: collations, conversions, text search configurations
/// and dictionaries, extended statistics, operators, operator classes and
/// families. Each as (keyword, name to match across schemas, name to use
/// after the keyword, owner): an operator is matched by its name and
/// argument types without `schema`'s qualifier (its shadow's differs), a
/// class or family by its name and access method.
pub async fn owned_only(
    client: &impl GenericClient,
    schema: &str,
) -> Result<Vec<(&'static str, String, String, String)>> {
    let not_ext = |cat: &str| {
        format!(
            "NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.{cat}'::pg_catalog.regclass
                            AND d.objid = o.oid AND d.deptype = 'e')"
        )
    };
    let mut parts = Vec::new();
    for (kind, cat, namecol, nscol, owner) in SIMPLE_KINDS {
        let Some(owner) = owner else { continue };
        parts.push(format!(
            "SELECT '{kind}', o.{namecol}::text, pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(o.{namecol}),
                    pg_catalog.pg_get_userbyid(o.{owner})::text
               FROM pg_catalog.{cat} o JOIN pg_catalog.pg_namespace n ON n.oid = o.{nscol}
              WHERE n.nspname = $1 AND {}",
            not_ext(cat)
        ));
    }
    parts.push(format!(
        "SELECT 'OPERATOR', o.oprname || ' (' || a.args || ')',
                pg_catalog.quote_ident(n.nspname) || '.' || o.oprname || ' (' || a.args || ')',
                pg_catalog.pg_get_userbyid(o.oprowner)::text
           FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace,
                LATERAL (SELECT COALESCE(pg_catalog.format_type(NULLIF(o.oprleft, 0), NULL), 'NONE') || ', ' ||
                                COALESCE(pg_catalog.format_type(NULLIF(o.oprright, 0), NULL), 'NONE') AS args) a
          WHERE n.nspname = $1 AND {}",
        not_ext("pg_operator")
    ));
    for (kind, cat, namecol, nscol, amcol, owner) in AM_KINDS {
        parts.push(format!(
            "SELECT '{kind}', o.{namecol} || ' USING ' || am.amname,
                    pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(o.{namecol})
                      || ' USING ' || pg_catalog.quote_ident(am.amname),
                    pg_catalog.pg_get_userbyid(o.{owner})::text
               FROM pg_catalog.{cat} o JOIN pg_catalog.pg_namespace n ON n.oid = o.{nscol}
               JOIN pg_catalog.pg_am am ON am.oid = o.{amcol}
              WHERE n.nspname = $1 AND {}",
            not_ext(cat)
        ));
    }
    let rows = client
        .query(parts.join("\nUNION ALL\n").as_str(), &[&schema])
        .await
        .with_context(|| format!("listing the owners of {schema}'s other objects"))?;
    let unqualified = [format!("{}.", quote_ident(schema)), format!("{schema}.")];
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let what: String = r.get(0);
        let kind = SIMPLE_KINDS
            .iter()
            .map(|k| k.0)
            .chain(AM_KINDS.iter().map(|k| k.0))
            .chain(["OPERATOR"])
            .find(|k| *k == what)
            .context("an object kind pgshift did not ask for")?;
        let mut name: String = r.get(1);
        if kind == "OPERATOR" {
            for q in &unqualified {
                name = name.replace(q.as_str(), "");
            }
        }
        out.push((kind, name, r.get(2), r.get(3)));
    }
    Ok(out)
}

/// The catalogs [`SIMPLE_KINDS`] and [`AM_KINDS`] read, with their name and
/// namespace columns (also what `catalog::defined_names` lists).
pub fn named_catalogs() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    SIMPLE_KINDS
        .iter()
        .map(|(_, c, n, s, _)| (*c, *n, *s))
        .chain(AM_KINDS.iter().map(|(_, c, n, s, _, _)| (*c, *n, *s)))
}

/// SQL: the argument list of `pg_proc` row `p` as `ALTER`/`DROP AGGREGATE`
/// take it: PostgreSQL prints an aggregate over `(*)` with no arguments
/// (`cnt()`), which those statements refuse as a syntax error.
pub fn signature_args_sql(p: &str) -> String {
    format!(
        "CASE WHEN {p}.prokind = 'a' AND {p}.pronargs = 0 THEN '*'
              ELSE pg_catalog.pg_get_function_identity_arguments({p}.oid) END"
    )
}

/// SQL: the name of owner `col` when this role lacks its privileges (it may
/// not move the object), else NULL; without an owner column, a superuser
/// alone may (named as the bootstrap superuser).
fn owner_lacked_sql(col: Option<&str>) -> String {
    match col {
        Some(col) => format!(
            "CASE WHEN pg_catalog.pg_has_role({col}, 'USAGE') THEN NULL
                  ELSE pg_catalog.pg_get_userbyid({col})::text END"
        ),
        None => {
            "CASE WHEN (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)
                      THEN NULL ELSE pg_catalog.pg_get_userbyid(10)::text END"
                .to_string()
        }
    }
}

/// One query listing every object of schema `$1` that must move, in a stable
/// order: relations, types, functions, then the rarer kinds. Columns: group,
/// keyword (or relkind/typtype/prokind), name, extra (access method, or the
/// server-rendered signature of functions and operators), the owner whose
/// privileges this role lacks.
fn movables_sql() -> String {
    let mut parts = vec![
        // Relations. Sequences owned by a column move with their table.
        format!("SELECT 1 AS grp, c.relkind::text AS what, c.relname::text AS name, NULL::text AS extra,
                c.relname AS sort_name, NULL::text AS sort_text, c.oid AS sort_oid,
                {} AS owner_lacked, NULL::text[] AS of_table
           FROM pg_catalog.pg_class c, ns WHERE c.relnamespace = ns.oid
            AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S', 'c')
            AND (c.tableoid, c.oid) NOT IN (SELECT classid, objid FROM ext)
            AND NOT (c.relkind = 'S' AND EXISTS (
                 SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                    AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i')))",
            owner_lacked_sql(Some("c.relowner"))),
        // Types and domains: not row types of relations (they move with them,
        // except standalone composites listed above), not array types (they
        // move with their element type). Multirange types do not move with
        // their range type (nor do the range's constructor functions, listed
        // below), so they are listed too.
        format!("SELECT 2, t.typtype::text, t.typname::text, NULL, t.typname, NULL, t.oid, {}, NULL
           FROM pg_catalog.pg_type t, ns WHERE t.typnamespace = ns.oid
            AND t.typtype IN ('b', 'd', 'e', 'r', 'm') AND t.typrelid = 0
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type e WHERE e.typarray = t.oid)
            AND (t.tableoid, t.oid) NOT IN (SELECT classid, objid FROM ext)",
            owner_lacked_sql(Some("t.typowner"))),
        // Functions, procedures, aggregates: regprocedure-style text, quoted and
        // (with an empty search_path) qualified.
        format!("SELECT 3, p.prokind::text, p.proname::text,
                pg_catalog.quote_ident(ns.nspname) || '.' || pg_catalog.quote_ident(p.proname)
                || '(' || {} || ')',
                p.proname, NULL, p.oid, {}, NULL
           FROM pg_catalog.pg_proc p, ns WHERE p.pronamespace = ns.oid
            AND (p.tableoid, p.oid) NOT IN (SELECT classid, objid FROM ext)",
            signature_args_sql("p"),
            owner_lacked_sql(Some("p.proowner"))),
    ];
    let mut grp = 4;
    for (kind, cat, namecol, nscol, owner) in SIMPLE_KINDS {
        let lacked = owner_lacked_sql(owner.map(|o| format!("o.{o}")).as_deref());
        let of_table = if *cat == "pg_statistic_ext" {
            "(SELECT ARRAY[n.nspname::text, c.relname::text] FROM pg_catalog.pg_class c
                JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = o.stxrelid)"
        } else {
            "NULL"
        };
        parts.push(format!(
            "SELECT {grp}, '{kind}', o.{namecol}::text, NULL, NULL, o.{namecol}::text, o.oid, {lacked}, {of_table}
               FROM pg_catalog.{cat} o, ns WHERE o.{nscol} = ns.oid
                AND (o.tableoid, o.oid) NOT IN (SELECT classid, objid FROM ext)"
        ));
        grp += 1;
    }
    parts.push(format!(
        "SELECT {grp}, 'OPERATOR', o.oprname::text,
                pg_catalog.quote_ident(ns.nspname) || '.' || o.oprname || ' (' ||
                COALESCE(pg_catalog.format_type(NULLIF(o.oprleft, 0), NULL), 'NONE') || ', ' ||
                COALESCE(pg_catalog.format_type(NULLIF(o.oprright, 0), NULL), 'NONE') || ')',
                NULL, o.oprname::text, o.oid, {lacked}, NULL
           FROM pg_catalog.pg_operator o, ns WHERE o.oprnamespace = ns.oid
            AND (o.tableoid, o.oid) NOT IN (SELECT classid, objid FROM ext)",
        lacked = owner_lacked_sql(Some("o.oprowner"))
    ));
    grp += 1;
    for (kind, cat, namecol, nscol, amcol, owner) in AM_KINDS {
        let lacked = owner_lacked_sql(Some(&format!("o.{owner}")));
        parts.push(format!(
            "SELECT {grp}, '{kind}', o.{namecol}::text, am.amname::text, NULL, o.{namecol}::text, o.oid, {lacked}, NULL
               FROM pg_catalog.{cat} o JOIN pg_catalog.pg_am am ON am.oid = o.{amcol}, ns
              WHERE o.{nscol} = ns.oid AND (o.tableoid, o.oid) NOT IN (SELECT classid, objid FROM ext)"
        ));
        grp += 1;
    }
    format!(
        "WITH RECURSIVE {},
              ns AS (SELECT oid, nspname FROM pg_catalog.pg_namespace WHERE nspname = $1)
         SELECT grp, what, name, extra, owner_lacked, of_table FROM ({}) m
          ORDER BY grp, sort_name, sort_text, sort_oid",
        crate::pg::catalog::EXT_CLOSURE,
        parts.join("\n UNION ALL ")
    )
}

/// Every object of `schema` that must move for the schema to be replaced.
/// Run with `search_path = ''` semantics: names come back qualified.
pub async fn movables(client: &impl GenericClient, schema: &str) -> Result<Vec<Movable>> {
    let rows = client
        .query(movables_sql().as_str(), &[&schema])
        .await
        .with_context(|| format!("listing the objects of {schema} to move"))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let grp: i32 = r.get(0);
        let what: String = r.get(1);
        let name: String = r.get(2);
        let extra: Option<String> = r.get(3);
        let owner_lacked: Option<String> = r.get(4);
        let of_table: Option<Vec<String>> = r.get(5);
        let of_table = of_table.and_then(|t| match <[String; 2]>::try_from(t) {
            Ok([s, t]) => Some((s, t)),
            Err(_) => None,
        });
        let q = qualified(schema, &name);
        let (kind, sql_name, lockable) = match (grp, what.as_str()) {
            (1, "r" | "p") => ("TABLE", q.clone(), true),
            // Not locked: LOCK on a view locks what it reads, with the view
            // owner's privileges (a read-only owner fails the swap), and its
            // sessions lock the tables it reads themselves.
            (1, "v") => ("VIEW", q.clone(), false),
            (1, "m") => ("MATERIALIZED VIEW", q.clone(), false),
            // Not locked: LOCK TABLE refuses foreign tables ("This
            // operation is not supported for foreign tables"); a move takes
            // its lock itself, and a rename takes none.
            (1, "f") => ("FOREIGN TABLE", q.clone(), false),
            (1, "S") => ("SEQUENCE", q.clone(), false),
            (1, _) => ("TYPE", q.clone(), false), // standalone composite type
            (2, "d") => ("DOMAIN", q.clone(), false),
            (2, _) => ("TYPE", q.clone(), false),
            (3, "p") => ("PROCEDURE", extra.unwrap_or_default(), false),
            (3, "a") => ("AGGREGATE", extra.unwrap_or_default(), false),
            (3, _) => ("FUNCTION", extra.unwrap_or_default(), false),
            (_, "OPERATOR") => ("OPERATOR", extra.unwrap_or_default(), false),
            (_, k) => match AM_KINDS.iter().find(|a| a.0 == k) {
                Some(a) => (
                    a.0,
                    format!("{q} USING {}", quote_ident(extra.as_deref().unwrap_or(""))),
                    false,
                ),
                None => match SIMPLE_KINDS.iter().find(|s| s.0 == k) {
                    Some(s) => (s.0, q.clone(), false),
                    None => anyhow::bail!("unexpected object kind {k:?} in {schema}"),
                },
            },
        };
        out.push(Movable {
            kind: kind.into(),
            lockable: lockable.then(|| q.clone()),
            sql_name,
            name,
            owner_lacked,
            of_table,
        });
    }
    Ok(out)
}

/// Two objects that would share a name in a live schema after the swap:
/// one that stays there with a kept table (an index, an owned sequence, the
/// row or array type, extended statistics) and one that comes in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameClash {
    /// The name they share.
    pub name: String,
    /// `index public.legacy_x of the kept table public.legacy`.
    pub kept: String,
    /// `index shadow.legacy_x`.
    pub incoming: String,
    /// `ALTER INDEX public.legacy_x RENAME TO …`: how to rename the kept
    /// one; None for the table's row and array types (renaming the table
    /// would no longer keep it).
    pub rename: Option<String>,
}

impl NameClash {
    /// For a message: `legacy_x (index shadow.legacy_x; index
    /// public.legacy_x of the kept table public.legacy)`, with `whose`
    /// before the incoming side (`the source's `).
    pub fn item(&self, whose: &str) -> String {
        format!(
            "{} ({whose}{}; {})",
            crate::pg::ident::display_ident(&self.name),
            self.incoming,
            self.kept
        )
    }

    /// The first of `clashes` that can be renamed on the kept side: its
    /// statement.
    pub fn first_rename(clashes: &[NameClash]) -> Option<&str> {
        clashes.iter().find_map(|c| c.rename.as_deref())
    }
}

/// One name in a schema, in its catalog's name space (`rel`: relations,
/// `typ`: types, `stx`: extended statistics), and the listed table it goes
/// with, if any: the table itself, its indexes, the sequences it owns, its
/// row and array types, statistics on it (see [`names_in`]).
#[derive(Debug, Clone)]
pub struct SchemaName {
    pub space: String,
    pub name: String,
    /// `INDEX`, `SEQUENCE`, `TYPE`, `STATISTICS`, …
    pub kind: String,
    /// (schema, name) of the listed table it goes with.
    pub table: Option<(String, String)>,
}

/// Relation kinds that are tables (`pg_class.relkind`): kept tables and
/// their namesakes.
pub const TABLE_KINDS: &[&str] = &["r", "p", "f"];

/// Every name of `schema` but extension members' (they never move), each
/// with the relation of `tables` (schema, name; of the `kinds` given) it
/// goes with. A partition is its own table, not its parent's part. Used on
/// the destination for the swap, and on the source to foresee the shadow at
/// a dry run (where views and materialized views can be left out too).
pub async fn names_in(
    client: &impl GenericClient,
    schema: &str,
    tables: &KeptTables,
    kinds: &[&str],
) -> Result<Vec<SchemaName>> {
    let (schemas, names): (Vec<&str>, Vec<&str>) =
        tables.iter().map(|(s, t)| (s.as_str(), t.as_str())).unzip();
    let rows = client
        .query(
            "WITH listed AS (
                 SELECT c.oid, c.relname AS tab, n.nspname AS tab_schema
                   FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[])) AS k(s, t)
                   JOIN pg_catalog.pg_namespace n ON n.nspname = k.s
                   JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = k.t
                  WHERE c.relkind::text = ANY($4)),
             -- What goes with a listed table: its indexes and the sequences
             -- it owns (serial, identity); not its partitions.
             with_rel AS (
                 SELECT oid, tab, tab_schema FROM listed
                 UNION SELECT i.indexrelid, k.tab, k.tab_schema
                   FROM pg_catalog.pg_index i JOIN listed k ON k.oid = i.indrelid
                 UNION SELECT d.objid, k.tab, k.tab_schema
                   FROM pg_catalog.pg_depend d JOIN listed k ON k.oid = d.refobjid
                   JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass
                    AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i')),
             with_typ AS (
                 SELECT t.oid, r.tab, r.tab_schema FROM pg_catalog.pg_type t JOIN with_rel r ON r.oid = t.typrelid
                 UNION SELECT t.typarray, r.tab, r.tab_schema FROM pg_catalog.pg_type t JOIN with_rel r ON r.oid = t.typrelid
                  WHERE t.typarray <> 0),
             ns AS (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1),
             ext AS (SELECT classid, objid FROM pg_catalog.pg_depend WHERE deptype = 'e')
             SELECT 'rel', c.relname::text,
                    CASE c.relkind WHEN 'i' THEN 'INDEX' WHEN 'I' THEN 'INDEX' WHEN 'S' THEN 'SEQUENCE'
                         WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                         WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'c' THEN 'TYPE' ELSE 'TABLE' END,
                    r.tab, r.tab_schema
               FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
               LEFT JOIN with_rel r ON r.oid = c.oid
              WHERE ('pg_catalog.pg_class'::regclass, c.oid) NOT IN (SELECT classid, objid FROM ext)
             UNION ALL
             SELECT 'typ', t.typname::text, CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
                    k.tab, k.tab_schema
               FROM pg_catalog.pg_type t JOIN ns ON ns.oid = t.typnamespace
               LEFT JOIN with_typ k ON k.oid = t.oid
              WHERE ('pg_catalog.pg_type'::regclass, t.oid) NOT IN (SELECT classid, objid FROM ext)
                -- nor the row type of a member relation, nor a member's array type
                AND NOT EXISTS (SELECT 1 FROM ext e JOIN pg_catalog.pg_class c ON c.oid = e.objid
                                 WHERE e.classid = 'pg_catalog.pg_class'::regclass AND c.reltype = t.oid)
                AND NOT EXISTS (SELECT 1 FROM ext e JOIN pg_catalog.pg_type el ON el.oid = e.objid
                                 WHERE e.classid = 'pg_catalog.pg_type'::regclass AND el.typarray = t.oid)
             UNION ALL
             SELECT 'stx', s.stxname::text, 'STATISTICS', k.tab, k.tab_schema
               FROM pg_catalog.pg_statistic_ext s JOIN ns ON ns.oid = s.stxnamespace
               LEFT JOIN listed k ON k.oid = s.stxrelid",
            &[&schema, &schemas, &names, &kinds],
        )
        .await
        .with_context(|| format!("listing the names of {schema}"))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let tab: Option<String> = r.get(3);
            let tab_schema: Option<String> = r.get(4);
            SchemaName {
                space: r.get(0),
                name: r.get(1),
                kind: r.get(2),
                table: tab.zip(tab_schema).map(|(t, s)| (s, t)),
            }
        })
        .collect())
}

/// What stays in `live` with the kept tables and has a namesake in
/// `incoming` that moves in ([`NameClash`]); `kept` names every kept table
/// and its namesake (the incoming schema's stays too, with what goes with
/// it). Relations and types have a name each in their own catalog (an index
/// and a type of one name do not meet), extended statistics in theirs.
/// `ALTER … SET SCHEMA` of the incoming one (or, renaming the schemas, of
/// the kept table moving back) fails on such a pair: "relation … already
/// exists". Run before any lock, so the swap refuses instead.
pub async fn name_clashes(
    client: &impl GenericClient,
    live: &str,
    incoming: &str,
    kept: &KeptTables,
) -> Result<Vec<NameClash>> {
    let staying = names_in(client, live, kept, TABLE_KINDS).await?;
    let coming = names_in(client, incoming, kept, TABLE_KINDS).await?;
    Ok(clashes(live, incoming, &staying, &coming))
}

/// The pairs of [`name_clashes`] between what stays in `live` (the names
/// that go with a kept table) and what comes in from `incoming` (the names
/// that go with none), one per name (a relation's name is its row type's
/// too; statistics have names of their own).
pub fn clashes(
    live: &str,
    incoming: &str,
    staying: &[SchemaName],
    coming: &[SchemaName],
) -> Vec<NameClash> {
    let coming: std::collections::HashMap<(&str, &str), &SchemaName> = coming
        .iter()
        .filter(|n| n.table.is_none())
        .map(|n| ((n.space.as_str(), n.name.as_str()), n))
        .collect();
    let mut pairs: Vec<(&SchemaName, &SchemaName)> = staying
        .iter()
        .filter_map(|a| {
            let b = coming.get(&(a.space.as_str(), a.name.as_str()))?;
            a.table.as_ref().map(|_| (a, *b))
        })
        .collect();
    pairs.sort_by(|x, y| {
        (&x.0.name, &x.0.space, &x.0.kind, &x.0.table)
            .cmp(&(&y.0.name, &y.0.space, &y.0.kind, &y.0.table))
    });
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (a, b) in pairs {
        let Some((table_schema, table)) = &a.table else {
            continue;
        };
        if !seen.insert((a.space == "stx", a.name.clone())) {
            continue;
        }
        let kept_table = qualified_display(table_schema, table);
        // The table itself, or its row type: a type of the same name.
        let itself =
            (a.kind == "TABLE" || a.kind == "TYPE") && &a.name == table && table_schema == live;
        let kept = if itself {
            format!("the kept table {kept_table}")
        } else {
            format!(
                "{} {} of the kept table {kept_table}",
                a.kind.to_lowercase(),
                qualified_display(live, &a.name)
            )
        };
        out.push(NameClash {
            incoming: format!(
                "{} {}",
                b.kind.to_lowercase(),
                qualified_display(incoming, &b.name)
            ),
            rename: (a.kind != "TYPE" && a.kind != "TABLE")
                .then(|| format!("ALTER {} {} RENAME TO …", a.kind, qualified(live, &a.name))),
            name: a.name.clone(),
            kept,
        });
    }
    out
}
