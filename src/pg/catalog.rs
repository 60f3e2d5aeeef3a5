//! Catalog queries. Every user-visible name is passed as a bind parameter; the
//! results are exact catalog names (case-sensitive, possibly non-ASCII).

use anyhow::{Context, Result};
use itertools::Itertools;
use tokio_postgres::{Client, GenericClient};

/// `WHERE` fragment: the object (`classid`, `oid`) is not an extension member.
macro_rules! not_ext_member {
    ($classid:literal, $oid:literal) => {
        concat!(
            "NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = '",
            $classid,
            "'::regclass AND d.objid = ",
            $oid,
            " AND d.deptype = 'e')"
        )
    };
}
pub(crate) use not_ext_member;

/// SQL condition on a `pg_depend` row `d`: what it refers to is not the
/// array type of an extension's type (`ltree[]`, `citext[]`), which belongs
/// to no extension itself but goes where its element type's extension goes.
pub const NOT_EXT_ARRAY_REF: &str = "NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type a
                    JOIN pg_catalog.pg_depend e ON e.classid = 'pg_catalog.pg_type'::regclass
                     AND e.objid = a.typelem AND e.deptype = 'e'
                   WHERE d.refclassid = 'pg_catalog.pg_type'::regclass
                     AND a.oid = d.refobjid AND a.typelem <> 0)";

/// One column of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnInfo {
    pub name: String,
    /// `format_type()` as seen from `search_path = ''`-neutral context.
    pub type_name: String,
    pub type_oid: u32,
    pub not_null: bool,
    pub has_default: bool,
    /// Generated (stored) columns cannot be copied or inserted into.
    pub generated: bool,
    /// The column's type round-trips through binary COPY between two databases.
    pub binary_safe: bool,
}

/// A relation of a schema that holds or describes data.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub oid: u32,
    /// The schema the table is in (on the source: the live schema it goes to).
    pub schema: String,
    pub name: String,
    /// r (table), p (partitioned), m (matview), f (foreign)
    pub relkind: char,
    pub is_partition: bool,
    /// Heap + TOAST size in bytes (what COPY will read).
    pub bytes: i64,
    /// Total size including indexes.
    pub total_bytes: i64,
    pub est_rows: f64,
    pub columns: Vec<ColumnInfo>,
    pub owner: String,
}

impl TableInfo {
    /// How the migration names it: `name` in public, `schema.name` elsewhere
    /// (one string per table across the chosen schemas).
    pub fn key(&self) -> String {
        crate::pg::meta::table_display(&self.schema, &self.name)
    }

    /// Columns COPY moves (not generated).
    pub fn copy_columns(&self) -> Vec<&ColumnInfo> {
        self.columns.iter().filter(|c| !c.generated).collect()
    }

    /// Does this relation hold rows of its own that pgshift copies?
    pub fn holds_data(&self) -> bool {
        self.relkind == 'r'
    }
}

/// Does a schema of this name exist?
pub async fn schema_exists(client: &impl GenericClient, schema: &str) -> Result<bool> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await
        .with_context(|| format!("looking up schema {schema}"))?
        .get(0))
}

/// Which of `names` are schemas now.
pub async fn existing_schemas(
    client: &impl GenericClient,
    names: &[String],
) -> Result<std::collections::BTreeSet<String>> {
    let rows = client
        .query(
            "SELECT nspname::text FROM pg_catalog.pg_namespace WHERE nspname = ANY($1)",
            &[&names],
        )
        .await
        .map_err(|e| crate::pg::exec::pg_error_as(e, "looking up schemas"))?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// Refuses, in one line naming the owner and the fix, the first of `schemas`
/// (that exists) whose owner's privileges this role lacks: renaming or
/// dropping a schema needs its owner. `action` says what this run would do
/// ("replace", "rename or drop"). Checked before any work, so that the server's
/// "must be owner of schema …" never comes half-way through a run.
pub async fn refuse_unowned_schemas(
    client: &impl GenericClient,
    schemas: &[String],
    action: &str,
) -> Result<()> {
    let row = client
        .query_opt(
            "SELECT n.nspname::text, pg_catalog.pg_get_userbyid(n.nspowner)::text, current_user::text
               FROM pg_catalog.pg_namespace n
              WHERE n.nspname = ANY($1) AND NOT pg_catalog.pg_has_role(n.nspowner, 'USAGE')
              ORDER BY pg_catalog.array_position($1, n.nspname) LIMIT 1",
            &[&schemas],
        )
        .await
        .context("checking the owners of the schemas this run changes")?;
    if let Some(r) = row {
        let (schema, owner, me): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        anyhow::bail!(
            "insufficient privileges on the destination: schema {schema} belongs to role {owner}, and role {me} cannot {action} it (run as {owner}, or ALTER SCHEMA {} OWNER TO {})",
            crate::pg::ident::display_ident(&schema),
            crate::pg::ident::display_ident(&me)
        );
    }
    Ok(())
}

/// The catalogs of the objects a schema holds, with their namespace column
/// (the schema's own dependents, a publication of all its tables, are asked
/// apart).
const SCHEMA_OBJECTS: &[(&str, &str)] = &[
    ("pg_class", "relnamespace"),
    ("pg_type", "typnamespace"),
    ("pg_proc", "pronamespace"),
    ("pg_collation", "collnamespace"),
    ("pg_operator", "oprnamespace"),
    ("pg_opclass", "opcnamespace"),
    ("pg_opfamily", "opfnamespace"),
    ("pg_conversion", "connamespace"),
    ("pg_ts_config", "cfgnamespace"),
    ("pg_ts_dict", "dictnamespace"),
    ("pg_ts_parser", "prsnamespace"),
    ("pg_ts_template", "tmplnamespace"),
    ("pg_statistic_ext", "stxnamespace"),
];

/// One SQL piece per kind of object a schema holds (`each(catalog,
/// namespace column)`, [`SCHEMA_OBJECTS`]), but the kinds in `except`,
/// joined with `sep`: the list of kinds is written once.
pub fn per_schema_kind(except: &[&str], sep: &str, each: impl Fn(&str, &str) -> String) -> String {
    SCHEMA_OBJECTS
        .iter()
        .filter(|(catalog, _)| !except.contains(catalog))
        .map(|(catalog, column)| each(catalog, column))
        .join(sep)
}

/// For [`per_schema_kind`]: how many objects of `catalog` the schemas `ns`
/// (a CTE of their oids) hold.
pub fn count_of_kind(catalog: &str, column: &str) -> String {
    format!("(SELECT count(*) FROM pg_catalog.{catalog} WHERE {column} IN (SELECT oid FROM ns))")
}

/// pgshift's own objects in its records' schema that a removal drops along
/// with the schemas it drops (see [`external_dependents`]): the named tables
/// (the sync changelogs, with what they own: sequences, indexes, row types)
/// and functions (the sync functions). The triggers that call those
/// functions are pgshift's sync triggers, dropped before: not dependents.
/// Anything else in that schema is not pgshift's to drop: outside.
pub struct Helpers<'a> {
    pub schema: &'a str,
    pub tables: &'a [String],
    pub functions: &'a [String],
}

/// Objects outside `schemas` (and outside `helpers`' schema) that depend on
/// objects in them or on `helpers` (a `DROP … CASCADE` would take them along,
/// partitions included), and tables outside whose partitions or inheritance
/// children are in them (they would lose those rows). Used before dropping a
/// backup (cleanup) and a prepared migration (abort, prepare starting over):
/// an application's view, foreign key, default or column that points in is
/// never dropped behind the operator's back.
pub async fn external_dependents(
    client: &Client,
    schemas: &[String],
    helpers: Option<&Helpers<'_>>,
) -> Result<Vec<String>> {
    let found = dependents_outside(client, schemas, helpers).await?;
    Ok(found.into_iter().map(|d| d.what).collect())
}

/// One of [`dependents_outside`]: what it is, as PostgreSQL describes it,
/// and the schema it is in (None for an object of no schema: an event
/// trigger, a publication, …).
#[derive(Debug, Clone)]
pub struct Dependent {
    pub what: String,
    pub schema: Option<String>,
}

/// [`external_dependents`] with the schema of each: cleanup drops backups
/// that hold each other's dependents together.
pub async fn dependents_outside(
    client: &Client,
    schemas: &[String],
    helpers: Option<&Helpers<'_>>,
) -> Result<Vec<Dependent>> {
    let shown = schemas.join(", ");
    let (own, own_tables, own_functions): (Option<&str>, &[String], &[String]) = match helpers {
        Some(h) => (Some(h.schema), h.tables, h.functions),
        None => (None, &[], &[]),
    };
    // Every kind of object a schema holds: its catalog and namespace column.
    let in_schemas = per_schema_kind(
        &[],
        "\n                    UNION ALL ",
        |catalog, column| {
            format!(
                "SELECT 'pg_catalog.{catalog}'::regclass, x.oid FROM pg_catalog.{catalog} x WHERE x.{column} IN (SELECT oid FROM ns)"
            )
        },
    );
    let sql = format!(
            "WITH ns AS (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = ANY($1)),
                  own AS (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $2),
                  own_rels AS (SELECT c.oid FROM pg_catalog.pg_class c
                                WHERE c.relnamespace IN (SELECT oid FROM own) AND c.relname = ANY($3)),
                  own_procs AS (SELECT p.oid FROM pg_catalog.pg_proc p
                                 WHERE p.pronamespace IN (SELECT oid FROM own) AND p.proname = ANY($4) AND p.pronargs = 0),
                  -- What the helpers own (a changelog's sequence, index,
                  -- TOAST table), and what that owns (the TOAST index).
                  owned AS (SELECT dd.objid FROM pg_catalog.pg_depend dd
                             WHERE dd.classid = 'pg_catalog.pg_class'::regclass AND dd.refclassid = 'pg_catalog.pg_class'::regclass
                               AND dd.refobjid IN (SELECT oid FROM own_rels) AND dd.deptype IN ('a', 'i')),
                  own_objs(classid, objid) AS (
                    SELECT 'pg_catalog.pg_class'::regclass, oid FROM own_rels
                    UNION ALL SELECT 'pg_catalog.pg_class'::regclass, objid FROM owned
                    UNION ALL SELECT 'pg_catalog.pg_class'::regclass, dd.objid FROM pg_catalog.pg_depend dd
                               WHERE dd.classid = 'pg_catalog.pg_class'::regclass AND dd.refclassid = 'pg_catalog.pg_class'::regclass
                                 AND dd.refobjid IN (SELECT objid FROM owned) AND dd.deptype IN ('a', 'i')
                    UNION ALL SELECT 'pg_catalog.pg_type'::regclass, c.reltype FROM pg_catalog.pg_class c
                               WHERE c.oid IN (SELECT oid FROM own_rels)
                    UNION ALL SELECT 'pg_catalog.pg_attrdef'::regclass, x.oid FROM pg_catalog.pg_attrdef x
                               WHERE x.adrelid IN (SELECT oid FROM own_rels)
                    UNION ALL SELECT 'pg_catalog.pg_constraint'::regclass, x.oid FROM pg_catalog.pg_constraint x
                               WHERE x.conrelid IN (SELECT oid FROM own_rels)
                    UNION ALL SELECT 'pg_catalog.pg_proc'::regclass, oid FROM own_procs),
                  -- Every kind of object a schema holds, and the schema
                  -- itself (a publication of all its tables).
                  objs(classid, objid) AS (
                    {in_schemas}
                    UNION ALL SELECT 'pg_catalog.pg_namespace'::regclass, oid FROM ns
                    UNION ALL SELECT classid, objid FROM own_objs)
             -- A view is named as such, not as its _RETURN rule.
             SELECT DISTINCT COALESCE((SELECT pg_catalog.pg_describe_object('pg_catalog.pg_class'::regclass, rw.ev_class, 0)
                                         FROM pg_catalog.pg_rewrite rw
                                        WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND rw.oid = d.objid
                                          AND rw.rulename = '_RETURN'),
                                      pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid)),
                    (SELECT n.nspname::text FROM pg_catalog.pg_namespace n WHERE n.oid = dn.ns)
               FROM pg_catalog.pg_depend d JOIN objs o ON d.refclassid = o.classid AND d.refobjid = o.objid
                    -- The dependent's schema (0 when it has none).
                    CROSS JOIN LATERAL (SELECT COALESCE((CASE d.classid
                       WHEN 'pg_catalog.pg_class'::regclass THEN (SELECT x.relnamespace FROM pg_catalog.pg_class x WHERE x.oid = d.objid)
                       WHEN 'pg_catalog.pg_type'::regclass THEN (SELECT x.typnamespace FROM pg_catalog.pg_type x WHERE x.oid = d.objid)
                       WHEN 'pg_catalog.pg_proc'::regclass THEN (SELECT x.pronamespace FROM pg_catalog.pg_proc x WHERE x.oid = d.objid)
                       WHEN 'pg_catalog.pg_constraint'::regclass THEN (SELECT x.connamespace FROM pg_catalog.pg_constraint x WHERE x.oid = d.objid)
                       WHEN 'pg_catalog.pg_attrdef'::regclass THEN (SELECT r.relnamespace FROM pg_catalog.pg_attrdef x
                                                                     JOIN pg_catalog.pg_class r ON r.oid = x.adrelid WHERE x.oid = d.objid)
                       WHEN 'pg_catalog.pg_rewrite'::regclass THEN (SELECT r.relnamespace FROM pg_catalog.pg_rewrite x
                                                                     JOIN pg_catalog.pg_class r ON r.oid = x.ev_class WHERE x.oid = d.objid)
                       WHEN 'pg_catalog.pg_trigger'::regclass THEN (SELECT r.relnamespace FROM pg_catalog.pg_trigger x
                                                                     JOIN pg_catalog.pg_class r ON r.oid = x.tgrelid WHERE x.oid = d.objid)
                       -- An extension created in the schema goes with it.
                       WHEN 'pg_catalog.pg_extension'::regclass THEN (SELECT x.extnamespace FROM pg_catalog.pg_extension x WHERE x.oid = d.objid)
                       WHEN 'pg_catalog.pg_policy'::regclass THEN (SELECT r.relnamespace FROM pg_catalog.pg_policy x
                                                                    JOIN pg_catalog.pg_class r ON r.oid = x.polrelid WHERE x.oid = d.objid)
                       -- An operator family's members have no schema of
                       -- their own: the family's.
                       WHEN 'pg_catalog.pg_amop'::regclass THEN (SELECT f.opfnamespace FROM pg_catalog.pg_amop x
                                                                  JOIN pg_catalog.pg_opfamily f ON f.oid = x.amopfamily WHERE x.oid = d.objid)
                       WHEN 'pg_catalog.pg_amproc'::regclass THEN (SELECT f.opfnamespace FROM pg_catalog.pg_amproc x
                                                                    JOIN pg_catalog.pg_opfamily f ON f.oid = x.amprocfamily WHERE x.oid = d.objid)
                       -- Nor do casts and transforms: one from or to a type of
                       -- the backup goes with it (it is of no use without the
                       -- type); one between types outside that only calls a
                       -- function of the backup is outside.
                       WHEN 'pg_catalog.pg_cast'::regclass THEN (SELECT t.typnamespace FROM pg_catalog.pg_cast x
                                                                  JOIN pg_catalog.pg_type t ON t.oid IN (x.castsource, x.casttarget)
                                                                 WHERE x.oid = d.objid AND t.typnamespace IN (SELECT oid FROM ns) LIMIT 1)
                       WHEN 'pg_catalog.pg_transform'::regclass THEN (SELECT t.typnamespace FROM pg_catalog.pg_transform x
                                                                       JOIN pg_catalog.pg_type t ON t.oid = x.trftype WHERE x.oid = d.objid)
                       ELSE (SELECT n.oid FROM pg_catalog.pg_namespace n
                              -- (pg_identify_object quotes the schema's name)
                              WHERE pg_catalog.quote_ident(n.nspname) = (pg_catalog.pg_identify_object(d.classid, d.objid, 0)).schema)
                     END), 0) AS ns) dn
              WHERE (d.deptype = 'n'
                     -- A generated column's expression (or a sequence owned by
                     -- a column), a statistics object, a publication's table
                     -- or schema depend automatically: CASCADE drops them too.
                     OR (d.deptype = 'a'
                         AND (d.classid IN ('pg_catalog.pg_class'::regclass, 'pg_catalog.pg_statistic_ext'::regclass,
                                            'pg_catalog.pg_publication_rel'::regclass)
                              OR d.classid = pg_catalog.to_regclass('pg_catalog.pg_publication_namespace'))))
                -- Of the schema itself, only a publication (every object in
                -- it depends on it).
                AND (d.refclassid <> 'pg_catalog.pg_namespace'::regclass
                     OR d.classid = pg_catalog.to_regclass('pg_catalog.pg_publication_namespace'))
                AND (d.classid, d.objid) NOT IN (SELECT classid, objid FROM own_objs)
                -- A partition or child across the edge is named below.
                AND NOT (d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
                         AND EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i
                                      WHERE i.inhrelid = d.objid AND i.inhparent = d.refobjid))
                -- pgshift's sync triggers (its `pgshift_` triggers calling a
                -- sync function, dropped first); another trigger calling one
                -- is the operator's.
                AND NOT (d.classid = 'pg_catalog.pg_trigger'::regclass AND d.refclassid = 'pg_catalog.pg_proc'::regclass
                         AND d.refobjid IN (SELECT oid FROM own_procs)
                         AND d.objid IN (SELECT g.oid FROM pg_catalog.pg_trigger g WHERE g.tgname LIKE 'pgshift\\_%'))
                AND dn.ns NOT IN (SELECT oid FROM ns)
             UNION
             -- Partitioning (or inheritance) across the backup's edge: a table
             -- outside would lose the rows of its partitions in the backup, and
             -- a partition outside would go with its parent in the backup.
             SELECT CASE WHEN c.relnamespace IN (SELECT oid FROM ns)
                         THEN 'the rows of ' || pg_catalog.pg_describe_object('pg_catalog.pg_class'::regclass, p.oid, 0)
                              || ' in its partition (or child) ' || pg_catalog.quote_ident(cn.nspname) || '.'
                              || pg_catalog.quote_ident(c.relname)
                         ELSE pg_catalog.pg_describe_object('pg_catalog.pg_class'::regclass, c.oid, 0)
                              || ' (a partition or child of ' || pg_catalog.quote_ident(pn.nspname) || '.'
                              || pg_catalog.quote_ident(p.relname) || ')'
                    END,
                    CASE WHEN c.relnamespace IN (SELECT oid FROM ns) THEN pn.nspname ELSE cn.nspname END::text
               FROM pg_catalog.pg_inherits i
               JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
               JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
               JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
               JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
              WHERE (c.relnamespace IN (SELECT oid FROM ns)) <> (p.relnamespace IN (SELECT oid FROM ns))
                AND c.relkind IN ('r', 'p', 'f')
              ORDER BY 1"
    );
    let rows = client
        .query(sql.as_str(), &[&schemas, &own, &own_tables, &own_functions])
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "looking for objects that depend on {shown}: {}",
                crate::pg::conn::connect::describe_pg_error(&e)
            )
        })?;
    Ok(rows
        .into_iter()
        .map(|r| Dependent {
            what: r.get(0),
            schema: r.get(1),
        })
        .collect())
}

/// A digest of what the relations of `schemas` are: their names and kinds,
/// columns (type, NOT NULL, order), constraints, indexes and triggers, as
/// PostgreSQL prints them with an empty `search_path` (so every name is
/// qualified the same way whatever the session). Not their data, owners,
/// grants or statistics. Prepare records it for its shadow; the swap refuses
/// a shadow whose digest changed since (a key dropped, a column added).
///
/// With `lock_wait`, a lock held on a relation it describes (a session in the
/// middle of changing it) makes it give up after that long: `Ok(None)`.
pub async fn structure_fingerprint(
    client: &Client,
    schemas: &[String],
    lock_wait: Option<std::time::Duration>,
) -> Result<Option<String>> {
    let bound = lock_wait
        .map(|d| format!("; SET LOCAL lock_timeout = '{}ms'", d.as_millis().max(1)))
        .unwrap_or_default();
    client
        // Printed the same whatever the session's settings (prepare and swap
        // may run as roles with their own TimeZone, say).
        .batch_execute(&format!(
            "BEGIN; SET LOCAL search_path = ''; {}{bound}",
            crate::pg::settings::set_local(crate::pg::settings::OUTPUT)
        ))
        .await
        .context("reading the shadow's structure")?;
    let row = client
        .query_one(
            "SELECT pg_catalog.md5(COALESCE(pg_catalog.string_agg(x, E'\\n' ORDER BY x), ''))
               FROM (SELECT pg_catalog.concat_ws(' ', 'rel', n.nspname, c.relname, c.relkind)
                       FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
                     UNION ALL
                     SELECT pg_catalog.concat_ws(' ', 'col', n.nspname, c.relname, a.attnum, a.attname,
                                                 pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull)
                       FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
                       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                        AND a.attnum > 0 AND NOT a.attisdropped
                     UNION ALL
                     SELECT pg_catalog.concat_ws(' ', 'con', n.nspname, r.relname, o.conname,
                                                 pg_catalog.pg_get_constraintdef(o.oid))
                       FROM pg_catalog.pg_constraint o JOIN pg_catalog.pg_class r ON r.oid = o.conrelid
                       JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
                      WHERE n.nspname = ANY($1)
                     UNION ALL
                     SELECT pg_catalog.concat_ws(' ', 'idx', pg_catalog.pg_get_indexdef(i.indexrelid))
                       FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class r ON r.oid = i.indrelid
                       JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
                      WHERE n.nspname = ANY($1)
                     UNION ALL
                     SELECT pg_catalog.concat_ws(' ', 'trg', pg_catalog.pg_get_triggerdef(t.oid))
                       FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class r ON r.oid = t.tgrelid
                       JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
                      WHERE n.nspname = ANY($1) AND NOT t.tgisinternal) s(x)",
            &[&schemas],
        )
        .await;
    let _ = client.batch_execute("COMMIT").await;
    match row {
        Ok(r) => Ok(Some(r.get(0))),
        Err(e)
            if lock_wait.is_some()
                && e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
        {
            Ok(None)
        }
        Err(e) => Err(crate::pg::exec::pg_error_as(
            e,
            "reading the shadow's structure",
        )),
    }
}

/// Does `schema` hold no object (every object of a schema depends on it in
/// `pg_depend`), so that `DROP SCHEMA … RESTRICT` succeeds? Asking first keeps
/// a refused DROP, and its ERROR line, out of the server log.
pub async fn schema_is_empty(client: &impl GenericClient, schema: &str) -> Result<bool> {
    Ok(client
        .query_one(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                  JOIN pg_catalog.pg_namespace n ON n.oid = d.refobjid
                                 WHERE d.refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass
                                   AND n.nspname = $1)",
            &[&schema],
        )
        .await
        .with_context(|| format!("looking into schema {schema}"))?
        .get(0))
}

/// SQL: whether this role may end the session of `pg_stat_activity` row `a`
/// (PostgreSQL's rules for `pg_terminate_backend`): a superuser; a member
/// of the session's role; `pg_signal_backend`, not for a superuser's.
pub(crate) const MAY_END_SESSION: &str =
    "COALESCE((SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)
          OR pg_catalog.pg_has_role(current_user, a.usesysid, 'MEMBER')
          OR (pg_catalog.pg_has_role(current_user, 'pg_signal_backend', 'MEMBER')
              AND NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid = a.usesysid)),
         false)";

/// How `session` (`it`, `that session`) of `pid` can be ended: by this role
/// (`may_end`, [`MAY_END_SESSION`]), or only by its role, a member of it or
/// a superuser, so that an operator is not handed a command that fails.
pub(crate) fn end_advice(pid: i32, may_end: bool, session: &str) -> String {
    if may_end {
        format!("pg_terminate_backend({pid}) would end {session}")
    } else {
        format!(
            "its role, a member of it or a superuser can end {session} with pg_terminate_backend({pid})"
        )
    }
}

/// Their sizes need each relation's ACCESS SHARE lock, so the listing below
/// waits, without a word, behind a session that holds an ACCESS EXCLUSIVE one
/// (a long ALTER TABLE, a LOCK TABLE in an open transaction): say who, so an
/// operator knows what pgshift waits for. Only a hint: the question takes no
/// lock, and its failure (or a lock taken right after it) changes nothing.
async fn say_who_locks(client: &impl GenericClient, schema: &str) {
    let Ok(rows) = client
        .query(
            &format!("SELECT c.relname::text, l.pid, COALESCE(a.usename::text, '?'), pg_catalog.current_database()::text,
                    EXTRACT(epoch FROM pg_catalog.now() - a.xact_start)::int8,
                    pg_catalog.left(COALESCE(NULLIF(a.query, '<insufficient privilege>'), ''), 120),
                    {MAY_END_SESSION}
               FROM pg_catalog.pg_locks l
               JOIN pg_catalog.pg_class c ON c.oid = l.relation
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'relation' AND l.granted AND l.mode = 'AccessExclusiveLock'
                AND l.database = (SELECT oid FROM pg_catalog.pg_database
                                   WHERE datname = pg_catalog.current_database())
                AND n.nspname = $1 AND l.pid <> pg_catalog.pg_backend_pid()
              ORDER BY 2, 1"),
            &[&schema],
        )
        .await
    else {
        return;
    };
    for r in rows {
        let (table, pid, user, db): (String, i32, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let (secs, query, may_end): (Option<i64>, String, bool) = (r.get(4), r.get(5), r.get(6));
        // Another role's session, to a role without pg_read_all_stats, shows
        // neither its transaction's start nor its query: said so, not "0 s".
        let what = match (secs, query.split_whitespace().join(" ")) {
            (Some(secs), q) if !q.is_empty() => {
                format!("{user}, its transaction open for {secs} s: {q}")
            }
            (Some(secs), _) => format!("{user}, its transaction open for {secs} s"),
            (None, _) => format!(
                "{user}; its transaction and query are hidden from this role (pg_read_all_stats shows them)"
            ),
        };
        tracing::warn!(
            "table {} of database {} is locked (ACCESS EXCLUSIVE) by pid {pid} ({what}): waiting until it is released ({})",
            crate::pg::ident::qualified_display(schema, &table),
            crate::pg::ident::display_ident(&db),
            end_advice(pid, may_end, "it"),
        );
    }
}

/// Tables, partitioned tables, materialized views and foreign tables of `schema`
/// that are not extension members, largest first.
pub async fn tables(client: &impl GenericClient, schema: &str) -> Result<Vec<TableInfo>> {
    say_who_locks(client, schema).await;
    let rows = client
        .query(
            concat!(
                "SELECT c.oid, c.relname, c.relkind::text, c.relispartition,
                        pg_catalog.pg_relation_size(c.oid) + COALESCE(pg_catalog.pg_total_relation_size(NULLIF(c.reltoastrelid, 0)), 0),
                        pg_catalog.pg_total_relation_size(c.oid),
                        c.reltuples::float8,
                        pg_catalog.pg_get_userbyid(c.relowner)
                   FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'm', 'f')
                    AND ",
                not_ext_member!("pg_class", "c.oid"),
                " ORDER BY 5 DESC, c.relname"
            ),
            &[&schema],
        )
        .await
        .context("listing tables")?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let relkind: String = r.get(2);
        out.push(TableInfo {
            oid: r.get(0),
            schema: schema.to_string(),
            name: r.get(1),
            relkind: relkind.chars().next().unwrap_or('r'),
            is_partition: r.get(3),
            bytes: r.get(4),
            total_bytes: r.get(5),
            est_rows: r.get(6),
            owner: r.get(7),
            columns: Vec::new(),
        });
    }
    let cols = client
        .query(
            "SELECT a.attrelid, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.atttypid,
                    a.attnotnull, a.atthasdef, a.attgenerated <> '',
                    (WITH RECURSIVE base(oid, depth) AS (
                         SELECT a.atttypid, 0
                         UNION ALL
                         SELECT t.typbasetype, b.depth + 1 FROM base b JOIN pg_catalog.pg_type t ON t.oid = b.oid
                          WHERE t.typtype = 'd' AND b.depth < 10)
                     SELECT (bt.oid < 16384
                             OR (bt.typtype IN ('b', 'e') AND bt.typreceive <> 0 AND bt.typsend <> 0
                                 AND bt.typreceive NOT IN ('pg_catalog.array_recv'::pg_catalog.regproc,
                                                         'pg_catalog.record_recv'::pg_catalog.regproc)))
                            -- reg* types (and arrays of them) send the OID itself, which names
                            -- another object, or none, on another server: text sends the name
                            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type rt
                                             WHERE rt.oid IN (bt.oid, bt.typelem)
                                               AND rt.typnamespace = 'pg_catalog'::regnamespace
                                               AND rt.typname::text LIKE 'reg%')
                            -- built-in types without binary I/O (aclitem), or arrays of them
                            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type st
                                             WHERE st.oid IN (bt.oid, bt.typelem)
                                               AND (st.typsend = 0 OR st.typreceive = 0))
                       FROM base JOIN pg_catalog.pg_type bt ON bt.oid = base.oid
                      ORDER BY base.depth DESC LIMIT 1)
               FROM pg_catalog.pg_attribute a
               JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attrelid, a.attnum",
            &[&schema],
        )
        .await
        .context("listing columns")?;
    let by_oid: std::collections::HashMap<u32, usize> =
        out.iter().enumerate().map(|(i, t)| (t.oid, i)).collect();
    for r in cols {
        let relid: u32 = r.get(0);
        if let Some(&i) = by_oid.get(&relid) {
            out[i].columns.push(ColumnInfo {
                name: r.get(1),
                type_name: r.get(2),
                type_oid: r.get(3),
                not_null: r.get(4),
                has_default: r.get(5),
                generated: r.get(6),
                binary_safe: r.get::<_, Option<bool>>(7).unwrap_or(false),
            });
        }
    }
    Ok(out)
}

/// Objects that belong to extensions: the members themselves (`deptype 'e'`)
/// and, transitively, what depends on them internally or automatically — a
/// member table's row type, array type, indexes, TOAST table, owned sequences.
pub const EXT_CLOSURE: &str = "ext(classid, objid) AS (
        SELECT d.classid, d.objid FROM pg_catalog.pg_depend d WHERE d.deptype = 'e'
        UNION
        SELECT d.classid, d.objid FROM pg_catalog.pg_depend d
          JOIN ext ON d.refclassid = ext.classid AND d.refobjid = ext.objid
         WHERE d.deptype IN ('i', 'a'))";

/// Names of every object the schema defines (not extension members, nor parts
/// of them): the set whose qualified references the restore remaps.
pub async fn defined_names(client: &impl GenericClient, schema: &str) -> Result<Vec<String>> {
    let mut parts = vec![
        "SELECT c.relname::text FROM pg_catalog.pg_class c, ns WHERE c.relnamespace = ns.oid
            AND (c.tableoid, c.oid) NOT IN (SELECT classid, objid FROM ext)"
            .to_string(),
        "SELECT t.typname::text FROM pg_catalog.pg_type t, ns WHERE t.typnamespace = ns.oid
            AND (t.tableoid, t.oid) NOT IN (SELECT classid, objid FROM ext)
            AND NOT (t.typrelid <> 0 AND ('pg_catalog.pg_class'::regclass, t.typrelid) IN (SELECT classid, objid FROM ext))"
            .to_string(),
    ];
    for (cat, namecol, nscol) in [
        ("pg_proc", "proname", "pronamespace"),
        ("pg_operator", "oprname", "oprnamespace"),
    ]
    .into_iter()
    .chain(crate::pg::objects::named_catalogs())
    {
        parts.push(format!(
            "SELECT o.{namecol}::text FROM pg_catalog.{cat} o, ns WHERE o.{nscol} = ns.oid
                AND (o.tableoid, o.oid) NOT IN (SELECT classid, objid FROM ext)"
        ));
    }
    let sql = format!(
        "WITH RECURSIVE {EXT_CLOSURE},
              ns AS (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1)
         {}",
        parts.join("\n UNION ")
    );
    let rows = client
        .query(sql.as_str(), &[&schema])
        .await
        .context("listing the schema's objects")?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// A sequence of the schema and the column that owns it, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceInfo {
    pub schema: String,
    pub name: String,
    /// (table, column) for serial/identity sequences and OWNED BY.
    pub owned_by: Option<(String, String)>,
}

pub async fn sequences(client: &impl GenericClient, schema: &str) -> Result<Vec<SequenceInfo>> {
    let rows = client
        .query(
            concat!(
                "SELECT s.relname, t.relname, a.attname
                   FROM pg_catalog.pg_class s
                   JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace
                   LEFT JOIN pg_catalog.pg_depend d
                          ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
                         AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
                   LEFT JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
                   LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                  WHERE n.nspname = $1 AND s.relkind = 'S' AND ",
                not_ext_member!("pg_class", "s.oid"),
                " ORDER BY s.relname"
            ),
            &[&schema],
        )
        .await
        .context("listing sequences")?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let t: Option<String> = r.get(1);
            let c: Option<String> = r.get(2);
            SequenceInfo {
                schema: schema.to_string(),
                name: r.get(0),
                owned_by: t.zip(c),
            }
        })
        .collect())
}

/// `last_value, is_called` of a sequence (sequences are not transactional: this
/// is the value now, as pg_dump reads it too).
pub async fn sequence_value(
    client: &impl GenericClient,
    schema: &str,
    name: &str,
) -> Result<(i64, bool)> {
    let sql = format!(
        "SELECT {} last_value, is_called FROM {}",
        crate::pg::meta::OWN_STATEMENT,
        crate::pg::ident::qualified(schema, name)
    );
    let r = client
        .query_one(sql.as_str(), &[])
        .await
        .with_context(|| format!("reading sequence {schema}.{name}"))?;
    Ok((r.get(0), r.get(1)))
}

/// `last_value, is_called` of many sequences of one schema, in few queries.
pub async fn sequence_values(
    client: &impl GenericClient,
    schema: &str,
    names: &[String],
) -> Result<std::collections::HashMap<String, (i64, bool)>> {
    let mut out = std::collections::HashMap::with_capacity(names.len());
    // 50 per query: a UNION ALL of hundreds nests deeper than the SQL parser the
    // impact report reads pg_stat_statements with can follow.
    for chunk in names.chunks(50) {
        let sql = chunk
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "SELECT {} {i}, last_value, is_called FROM {}",
                    crate::pg::meta::OWN_STATEMENT,
                    crate::pg::ident::qualified(schema, n)
                )
            })
            .join(" UNION ALL ");
        let rows = client
            .query(sql.as_str(), &[])
            .await
            .with_context(|| format!("reading the sequences of {schema}"))?;
        for r in rows {
            let i: i32 = r.get(0);
            out.insert(chunk[i as usize].clone(), (r.get(1), r.get(2)));
        }
    }
    Ok(out)
}

/// An installed extension.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExtensionInfo {
    pub name: String,
    pub schema: String,
    pub version: String,
}

pub async fn extensions(client: &impl GenericClient) -> Result<Vec<ExtensionInfo>> {
    let rows = client
        .query(
            "SELECT e.extname, n.nspname, e.extversion FROM pg_catalog.pg_extension e
               JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
              WHERE e.extname <> 'plpgsql' ORDER BY e.extname",
            &[],
        )
        .await
        .context("listing extensions")?;
    Ok(rows
        .into_iter()
        .map(|r| ExtensionInfo {
            name: r.get(0),
            schema: r.get(1),
            version: r.get(2),
        })
        .collect())
}

/// Materialized views of the schema in an order where each comes after the
/// materialized views it reads, with whether each is populated.
pub async fn matviews_in_order(
    client: &impl GenericClient,
    schema: &str,
) -> Result<Vec<(String, bool)>> {
    let rows = client
        .query(
            "SELECT c.oid, c.relname, c.relispopulated,
                    COALESCE((SELECT array_agg(DISTINCT d.refobjid)
                                FROM pg_catalog.pg_rewrite rw
                                JOIN pg_catalog.pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
                                JOIN pg_catalog.pg_class rc ON rc.oid = d.refobjid AND rc.relkind IN ('m', 'v')
                               WHERE rw.ev_class = c.oid AND d.refobjid <> c.oid), '{}')
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind IN ('m', 'v')",
            &[&schema],
        )
        .await
        .context("listing materialized views")?;
    // Views are included only to follow matview -> view -> matview chains.
    struct Node {
        name: String,
        populated: bool,
        is_matview: bool,
        deps: Vec<u32>,
    }
    let kinds = client
        .query(
            "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind = 'm'",
            &[&schema],
        )
        .await?;
    let matview_oids: std::collections::HashSet<u32> =
        kinds.into_iter().map(|r| r.get(0)).collect();
    let mut nodes: std::collections::BTreeMap<u32, Node> = std::collections::BTreeMap::new();
    for r in rows {
        let oid: u32 = r.get(0);
        nodes.insert(
            oid,
            Node {
                name: r.get(1),
                populated: r.get(2),
                is_matview: matview_oids.contains(&oid),
                deps: r.get(3),
            },
        );
    }
    let mut order = Vec::new();
    let mut state: std::collections::HashMap<u32, u8> = std::collections::HashMap::new();
    fn visit(
        oid: u32,
        nodes: &std::collections::BTreeMap<u32, Node>,
        state: &mut std::collections::HashMap<u32, u8>,
        order: &mut Vec<(String, bool)>,
    ) {
        if state.get(&oid).copied().unwrap_or(0) != 0 {
            return;
        }
        state.insert(oid, 1);
        if let Some(n) = nodes.get(&oid) {
            for d in &n.deps {
                visit(*d, nodes, state, order);
            }
            if n.is_matview {
                order.push((n.name.clone(), n.populated));
            }
        }
        state.insert(oid, 2);
    }
    let keys: Vec<u32> = nodes.keys().copied().collect();
    for oid in keys {
        visit(oid, &nodes, &mut state, &mut order);
    }
    Ok(order)
}

/// Server major version (`server_version_num / 10000`).
pub async fn server_major(client: &impl GenericClient) -> Result<u32> {
    let v: String = client
        .query_one("SELECT current_setting('server_version_num')", &[])
        .await
        .context("reading server_version_num")?
        .get(0);
    let n: u32 = v.parse().context("parsing server_version_num")?;
    Ok(n / 10000)
}

/// Something that identifies one database of one running server.
pub async fn server_identity(client: &impl GenericClient) -> Result<String> {
    let r = client
        .query_one(
            "SELECT pg_catalog.pg_postmaster_start_time()::text || '/' || current_setting('port') || '/' ||
                    (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())::text || '/' ||
                    current_database()",
            &[],
        )
        .await
        .context("identifying the server")?;
    Ok(r.get(0))
}

/// A type a cast converts from or to.
#[derive(Debug, Clone, PartialEq)]
pub struct CastType {
    pub schema: String,
    /// An extension's (a member, or part of one: PostGIS's `geometry`).
    pub extension: bool,
    /// The table whose row type it is (or whose row type it is an array of).
    pub table: Option<String>,
    /// The name of the dump entry that defines it: the table of a row type,
    /// the element of an array, the range of a multirange, else the type
    /// itself (newlines as spaces, as pg_restore writes entry headers).
    pub defined_as: String,
    /// As `CREATE CAST` takes it: a built-in one as `format_type` writes it,
    /// any other schema-qualified (`public.mood`, `public.mood[]`), so that
    /// the remap to a shadow sees it.
    pub sql: String,
}

/// A cast of the database's own (not built in, not an extension's, not one
/// made with a type such as a range's to its multirange) from or to a type,
/// or with a function, of `schemas` (`pg_dump -n` leaves every cast out).
#[derive(Debug, Clone, PartialEq)]
pub struct CastInfo {
    pub source: CastType,
    pub target: CastType,
    /// `castmethod`: `f` a function, `i` I/O conversion, `b` binary coercible.
    pub method: char,
    /// The function's schema and its dump entry's name
    /// (`conv(public.mood)`), for `castmethod` `f`.
    pub function: Option<(String, String)>,
    /// `cast from mood to text`, for messages.
    pub display: String,
    /// `CREATE CAST …;` with every name schema-qualified (remap it to a
    /// shadow), and its `COMMENT ON CAST …;` if it has one.
    pub sql: String,
}

/// Whether the migration creates a type: of `schemas`, not an
/// extension's, not the row type of a table left out (`leaves(schema,
/// table)`).
fn creates(t: &CastType, schemas: &[String], leaves: &impl Fn(&str, &str) -> bool) -> bool {
    schemas.contains(&t.schema)
        && !t.extension
        && !t.table.as_ref().is_some_and(|rel| leaves(&t.schema, rel))
}

impl CastInfo {
    /// Whether the migration can bring it: it converts from or to a type the
    /// migration creates ([`creates`]), so it is made on the shadow's type
    /// without touching the destination's casts and goes wherever that type
    /// goes (the swap, a rollback, the backup's cleanup). Its other type is
    /// created too, built in, an extension's (prepare creates a missing
    /// extension first), or of another schema and on the destination
    /// (`on_destination`); never the live row type of a table left out. Its
    /// function comes with it (or is built in): one of another schema takes
    /// the live type, not the shadow's. A binary-coercible one needs a
    /// superuser (`superuser`).
    pub fn migrates(
        &self,
        schemas: &[String],
        leaves: impl Fn(&str, &str) -> bool,
        superuser: bool,
        on_destination: impl Fn(&CastType) -> bool,
    ) -> bool {
        let created = |t: &CastType| creates(t, schemas, &leaves);
        let stays = |t: &CastType| {
            if schemas.contains(&t.schema) && !t.extension {
                // Of a migrated schema but not created: a table left out.
                return false;
            }
            // An extension's: prepare creates the extensions the
            // destination lacks, before the schema.
            t.schema == "pg_catalog" || t.extension || on_destination(t)
        };
        let function_comes = self
            .function
            .as_ref()
            .is_none_or(|(schema, _)| schemas.contains(schema) || schema == "pg_catalog");
        (created(&self.source) || created(&self.target))
            && (created(&self.source) || stays(&self.source))
            && (created(&self.target) || stays(&self.target))
            && function_comes
            && (self.method != 'b' || superuser)
    }

    /// Its types the migration does not create and that are not built in:
    /// those [`CastInfo::migrates`] asks the destination about.
    pub fn outside_types(
        &self,
        schemas: &[String],
        leaves: impl Fn(&str, &str) -> bool,
    ) -> Vec<&CastType> {
        [&self.source, &self.target]
            .into_iter()
            .filter(|t| !creates(t, schemas, &leaves) && t.schema != "pg_catalog" && !t.extension)
            .collect()
    }
}

/// The casts of [`CastInfo`] in the database `client` reaches.
pub async fn casts(client: &impl GenericClient, schemas: &[String]) -> Result<Vec<CastInfo>> {
    // `sql` as pg_dump (search_path '') writes a type in an entry's name,
    // and `defined_as` the entry that creates it: arrays (their element) and
    // multiranges (their range) depend internally on that type.
    let sql = format!(
        "WITH RECURSIVE {EXT_CLOSURE},
              typ AS (
                SELECT t.oid, n.nspname::text AS nsp,
                       CASE WHEN n.nspname = 'pg_catalog' THEN pg_catalog.format_type(t.oid, NULL)
                            WHEN e.oid IS NOT NULL
                              THEN pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(e.typname) || '[]'
                            ELSE pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(t.typname) END AS sql,
                       EXISTS (SELECT 1 FROM ext WHERE (ext.classid = 'pg_catalog.pg_type'::regclass AND ext.objid = t.oid)
                                                    OR (ext.classid = 'pg_catalog.pg_class'::regclass AND ext.objid = r.oid)) AS ext,
                       r.relname::text AS rel,
                       pg_catalog.translate(COALESCE(r.relname, e.typname,
                                                     (SELECT o.typname FROM pg_catalog.pg_depend i
                                                        JOIN pg_catalog.pg_type o ON o.oid = i.refobjid
                                                       WHERE i.classid = 'pg_catalog.pg_type'::regclass AND i.objid = t.oid
                                                         AND i.refclassid = 'pg_catalog.pg_type'::regclass AND i.deptype = 'i'
                                                       LIMIT 1),
                                                     t.typname), E'\\n\\r', '  ') AS defined_as
                  FROM pg_catalog.pg_type t
                  JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
                  LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem AND e.typarray = t.oid
                  LEFT JOIN pg_catalog.pg_class r ON r.oid = COALESCE(NULLIF(t.typrelid, 0), NULLIF(e.typrelid, 0))),
              cast_fn AS (
                SELECT f.oid, fn.nspname::text AS nsp,
                       pg_catalog.quote_ident(fn.nspname) || '.' || pg_catalog.quote_ident(f.proname) || '(' || args.list || ')' AS sql,
                       pg_catalog.translate(f.proname || '(' || args.list || ')', E'\\n\\r', '  ') AS tag
                  FROM pg_catalog.pg_proc f
                  JOIN pg_catalog.pg_namespace fn ON fn.oid = f.pronamespace
                  CROSS JOIN LATERAL (SELECT COALESCE(pg_catalog.string_agg(a.sql, ', ' ORDER BY x.ord), '') AS list
                                        FROM pg_catalog.unnest(f.proargtypes::oid[]) WITH ORDINALITY x(oid, ord)
                                        JOIN typ a ON a.oid = x.oid) args
                 WHERE f.oid IN (SELECT castfunc FROM pg_catalog.pg_cast))
         SELECT s.nsp, s.ext, s.rel, s.defined_as, s.sql,
                d.nsp, d.ext, d.rel, d.defined_as, d.sql,
                c.castmethod::text, cf.nsp, cf.tag,
                pg_catalog.format('cast from %s to %s', pg_catalog.format_type(c.castsource, NULL),
                                  pg_catalog.format_type(c.casttarget, NULL)),
                pg_catalog.format('CREATE CAST (%s AS %s) %s%s;', s.sql, d.sql,
                  CASE c.castmethod
                    WHEN 'f' THEN 'WITH FUNCTION ' || cf.sql
                    WHEN 'i' THEN 'WITH INOUT'
                    ELSE 'WITHOUT FUNCTION' END,
                  CASE c.castcontext WHEN 'a' THEN ' AS ASSIGNMENT' WHEN 'i' THEN ' AS IMPLICIT' ELSE '' END)
                || COALESCE(pg_catalog.format(E'\\nCOMMENT ON CAST (%s AS %s) IS %L;', s.sql, d.sql,
                                              pg_catalog.obj_description(c.oid, 'pg_cast')), '')
           FROM pg_catalog.pg_cast c
           JOIN typ s ON s.oid = c.castsource
           JOIN typ d ON d.oid = c.casttarget
           LEFT JOIN cast_fn cf ON cf.oid = c.castfunc
          WHERE c.oid >= 16384
            AND NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_catalog.pg_cast'::regclass AND ext.objid = c.oid)
            -- nor casts made with a type (a range's to its multirange): they
            -- come with it
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend i
                             WHERE i.classid = 'pg_catalog.pg_cast'::regclass AND i.objid = c.oid AND i.deptype = 'i')
            AND (s.nsp = ANY($1) OR d.nsp = ANY($1) OR cf.nsp = ANY($1))
          ORDER BY 14"
    );
    let rows = client
        .query(sql.as_str(), &[&schemas])
        .await
        .context("listing the casts")?;
    let cast_type = |r: &tokio_postgres::Row, at: usize| CastType {
        schema: r.get(at),
        extension: r.get(at + 1),
        table: r.get(at + 2),
        defined_as: r.get(at + 3),
        sql: r.get(at + 4),
    };
    Ok(rows
        .iter()
        .map(|r| CastInfo {
            source: cast_type(r, 0),
            target: cast_type(r, 5),
            method: r.get::<_, String>(10).chars().next().unwrap_or('f'),
            function: r
                .get::<_, Option<String>>(11)
                .zip(r.get::<_, Option<String>>(12)),
            display: r.get(13),
            sql: r.get(14),
        })
        .collect())
}

/// Which of `types` (as [`CastType::sql`] spells them) the database
/// `client` reaches has.
pub async fn types_present(client: &impl GenericClient, types: &[String]) -> Result<Vec<String>> {
    if types.is_empty() {
        return Ok(Vec::new());
    }
    crate::pg::exec::column(
        client,
        "SELECT t FROM pg_catalog.unnest($1::text[]) t WHERE pg_catalog.to_regtype(t) IS NOT NULL",
        &[&types],
    )
    .await
    .context("looking the casts' types up")
}

/// Whether the role `client` is connected as is a superuser.
pub async fn is_superuser(client: &impl GenericClient) -> Result<bool> {
    Ok(client
        .query_one(
            "SELECT COALESCE((SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user), false)",
            &[],
        )
        .await
        .context("checking whether this role is a superuser")?
        .get(0))
}
