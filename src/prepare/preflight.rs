//! Checks before prepare changes anything: tools and versions, privileges,
//! extensions, tablespaces, leftovers of earlier runs, and warnings an
//! operator should see. Everything here only reads.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use itertools::Itertools;
use tokio_postgres::Client;

use crate::backups::manifest;
use crate::error::UserError;
use crate::migration::derive::{Destination, State};
use crate::migration::lifecycle::Status;
use crate::pg::catalog::{self, ExtensionInfo, not_ext_member};
use crate::pg::ident::{display_ident, quote_ident};
use crate::pg::meta::{self, ShadowState};
use crate::process;
use crate::swap::impact::qualified_display;

/// The client programs pgshift runs, checked against the source server.
#[derive(Debug, Clone)]
pub struct Tools {
    pub pg_dump: PathBuf,
    pub pg_restore: PathBuf,
    pub major: u32,
}

/// Find pg_dump and pg_restore and check they can dump a server of `source_major`.
pub fn tools(source_major: u32) -> Result<Tools> {
    let pg_dump = process::find_pg_program("pg_dump")?;
    let pg_restore = process::find_pg_program("pg_restore")?;
    let dump_major = process::program_major_version(&pg_dump)?;
    let restore_major = process::program_major_version(&pg_restore)?;
    if dump_major < source_major {
        bail!(
            "{} is version {dump_major}, older than the source server ({source_major}); install PostgreSQL {source_major} client tools or set PGSHIFT_PG_BINDIR",
            pg_dump.display()
        );
    }
    if restore_major < dump_major {
        bail!(
            "{} is version {restore_major}, older than pg_dump ({dump_major}); use client tools of one version",
            pg_restore.display()
        );
    }
    Ok(Tools {
        pg_dump,
        pg_restore,
        major: dump_major,
    })
}

/// An extension the shadow needs, and what prepare does about it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExtensionPlan {
    pub name: String,
    pub schema: String,
    pub source_version: String,
    /// `present`, `create`
    pub action: String,
}

/// Checks on the source (read only): the role may use each of the chosen
/// `schemas` the source has, and read every relation in them.
pub async fn check_source(src: &Client, schemas: &[String]) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let r = src
        .query_one(
            "SELECT current_user::text,
                    ARRAY(SELECT n.nspname::text FROM pg_catalog.pg_namespace n
                           WHERE n.nspname = ANY($1) AND NOT pg_catalog.has_schema_privilege(n.oid, 'USAGE')
                           ORDER BY pg_catalog.array_position($1, n.nspname))",
            &[&schemas],
        )
        .await
        .context("checking privileges on the source")?;
    let user: String = r.get(0);
    if let Some(s) = r.get::<_, Vec<String>>(1).first() {
        bail!(
            "insufficient privileges on the source: role {user} has no USAGE on schema {}",
            display_ident(s)
        );
    }
    let unreadable = relations(
        src,
        schemas,
        "NOT pg_catalog.has_table_privilege(c.oid, 'SELECT')",
    )
    .await?;
    if !unreadable.is_empty() {
        bail!(
            "insufficient privileges on the source: role {user} cannot SELECT from {} (grant SELECT on them)",
            list_some(&unreadable)
        );
    }
    // A standby cancels a long read that conflicts with replay (a vacuum
    // the primary ran), unless told to wait or to keep the rows it reads.
    let r = src
        .query_one(
            "SELECT pg_catalog.pg_is_in_recovery(),
                    pg_catalog.current_setting('hot_standby_feedback')::bool,
                    pg_catalog.current_setting('max_standby_streaming_delay')",
            &[],
        )
        .await
        .context("checking whether the source is a standby")?;
    let (standby, feedback, delay): (bool, bool, String) = (r.get(0), r.get(1), r.get(2));
    if standby && !feedback && delay != "-1" {
        warnings.push(format!(
            "the source is a standby with hot_standby_feedback off and max_standby_streaming_delay = {delay}: a conflict with recovery may cancel the copy (the error then reads like a lost connection or an invalid snapshot); turn hot_standby_feedback on, or set max_standby_streaming_delay = -1 for the migration"
        ));
    }
    let lobs: i64 = src
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_largeobject_metadata",
            &[],
        )
        .await?
        .get(0);
    if lobs > 0 {
        // Columns that may hold their OIDs (oid, or a domain over it such as
        // the lo extension's): copied as numbers that name nothing on the
        // destination.
        let columns: Vec<String> = src
            .query_one(
                "SELECT ARRAY(SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) || '.' || pg_catalog.quote_ident(a.attname)
                                FROM pg_catalog.pg_attribute a
                                JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
                                JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                                JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
                               WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p') AND a.attnum > 0
                                 AND NOT a.attisdropped
                                 AND 'pg_catalog.oid'::pg_catalog.regtype IN (t.oid, t.typbasetype)
                                 AND NOT c.relispartition
                               ORDER BY 1)",
                &[&schemas],
            )
            .await
            .map_err(|e| crate::pg::exec::pg_error_as(e, "listing the source's oid columns"))?
            .get(0);
        warnings.push(format!(
            "the source has {lobs} large object{}; pgshift migrates {} only and does not copy them{}",
            if lobs == 1 { "" } else { "s" },
            if meta::is_default_schemas(schemas) {
                "the public schema".to_string()
            } else {
                format!(
                    "schemas {}",
                    schemas.iter().map(|s| display_ident(s)).join(", ")
                )
            },
            if columns.is_empty() {
                String::new()
            } else {
                format!(
                    " (columns that may hold their OIDs, which then name no large object on the destination, or one of its own that has the same OID: {})",
                    list_some(&columns)
                )
            }
        ));
    }
    warnings.extend(outside_any_schema(src).await?);
    Ok(warnings)
}

/// Room for [`crate::pg::conn::MIN_CONNECTIONS`] sessions on the destination. A `CONNECTION LIMIT` of
/// the role or the database below it can never be met: refused before
/// anything changes (a prepare failed after the dump with "too many
/// connections for role"). Too few slots free now (the limit's, or the
/// server's `max_connections` less its reserved ones, taken by other
/// sessions) is a warning: they may free up, and prepare waits for a slot
/// where it can. pgshift's own sessions (its application_name) are not
/// counted as taken.
pub async fn connection_room(dst: &Client) -> Result<Vec<String>> {
    let r = dst
        .query_one(
            "WITH others AS (
                 -- Another role's session shows no backend_type (nor
                 -- application_name) to a role without pg_read_all_stats:
                 -- a session of a role counts; background processes have none.
                 SELECT a.usename, a.datname FROM pg_catalog.pg_stat_activity a
                  WHERE (a.backend_type = 'client backend' OR (a.backend_type IS NULL AND a.usesysid IS NOT NULL))
                    AND a.pid <> pg_catalog.pg_backend_pid()
                    AND coalesce(a.application_name, '') NOT LIKE 'pgshift %')
             -- The limits hold the role that logged in (session_user), not
             -- one it becomes (SET ROLE in the role's settings).
             SELECT session_user::text, r.rolsuper, r.rolconnlimit::int8,
                    (SELECT count(*) FROM others o WHERE o.usename = session_user),
                    current_database()::text, d.datconnlimit::int8,
                    (SELECT count(*) FROM others o WHERE o.datname = current_database()),
                    current_setting('max_connections')::int8
                      - CASE WHEN r.rolsuper THEN 0 ELSE current_setting('superuser_reserved_connections')::int8 END
                      - CASE WHEN r.rolsuper THEN 0
                             -- PostgreSQL 16+: reserved_connections, for pg_use_reserved_connections
                             WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles u WHERE u.rolname = 'pg_use_reserved_connections') THEN 0
                             WHEN pg_catalog.pg_has_role(session_user, 'pg_use_reserved_connections', 'USAGE') THEN 0
                             ELSE coalesce((SELECT s.setting::int8 FROM pg_catalog.pg_settings s WHERE s.name = 'reserved_connections'), 0) END,
                    (SELECT count(*) FROM others)
               FROM pg_catalog.pg_roles r, pg_catalog.pg_database d
              WHERE r.rolname = session_user AND d.datname = current_database()",
            &[],
        )
        .await
        .context("reading the destination's connection limits")?;
    let (role, superuser, role_limit, role_taken): (String, bool, i64, i64) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    let (db, db_limit, db_taken, server_room, server_taken): (String, i64, i64, i64, i64) =
        (r.get(4), r.get(5), r.get(6), r.get(7), r.get(8));
    let need = crate::pg::conn::MIN_CONNECTIONS as i64;
    let mut warnings = Vec::new();
    // Superusers are held to neither limit.
    let limits = [
        ("role", &role, role_limit, role_taken, "ROLE"),
        ("database", &db, db_limit, db_taken, "DATABASE"),
    ];
    for (what, name, limit, taken, sql) in limits {
        if superuser || limit < 0 {
            continue;
        }
        let shown = display_ident(name);
        if limit < need {
            crate::refuse!(
                "the destination's {what} {shown} may open {limit} connection{} at once (CONNECTION LIMIT), and pgshift needs {need} (a lock session, a control session and one worker): raise it with ALTER {sql} {} CONNECTION LIMIT {need} (or more); nothing was changed",
                if limit == 1 { "" } else { "s" },
                shown
            );
        }
        if limit - taken < need {
            warnings.push(format!(
                "the destination's {what} {shown} may open {limit} connections at once (CONNECTION LIMIT) and {taken} are open now; pgshift needs {need}: prepare and swap may fail with too many connections unless some close"
            ));
        }
    }
    if server_room - server_taken < need {
        warnings.push(format!(
            "the destination server has {} connection slots free for this role now (max_connections less those reserved, less {server_taken} open); pgshift needs {need}: prepare and swap may fail with too many clients unless some close",
            (server_room - server_taken).max(0)
        ));
    }
    Ok(warnings)
}

/// A database's encoding and default locale, as [`locale_differences`]
/// compares them.
struct DbLocale {
    encoding: String,
    /// `c` (libc), `i` (ICU), `b` (builtin, 17 and later).
    provider: String,
    collate: String,
    ctype: String,
    /// The ICU or builtin locale (empty for libc).
    locale: String,
}

impl DbLocale {
    async fn of(client: &Client, side: &str) -> Result<DbLocale> {
        // Through to_jsonb: datlocprovider and daticulocale are 15's,
        // datlocale 17's.
        let r = client
            .query_one(
                "SELECT pg_catalog.pg_encoding_to_char(d.encoding)::text, d.datcollate::text, d.datctype::text,
                        coalesce(pg_catalog.to_jsonb(d) ->> 'datlocprovider', 'c'),
                        coalesce(pg_catalog.to_jsonb(d) ->> 'datlocale', pg_catalog.to_jsonb(d) ->> 'daticulocale', '')
                   FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()",
                &[],
            )
            .await
            .map_err(|e| crate::pg::exec::pg_error_as(e, &format!("reading the {side}'s encoding and locale")))?;
        Ok(DbLocale {
            encoding: r.get(0),
            collate: r.get(1),
            ctype: r.get(2),
            provider: r.get(3),
            locale: r.get(4),
        })
    }

    /// What orders and compares text: the provider's locale (`en-US, ICU`),
    /// or libc's LC_COLLATE, spelled so that `en_US.UTF-8` and `en_US.utf8`
    /// are one.
    fn collation(&self) -> (String, String) {
        self.described(&self.collate, true)
    }

    /// What classes characters (upper(), lower(), ILIKE, regular
    /// expressions): the provider's locale, or libc's LC_CTYPE.
    fn ctype(&self) -> (String, String) {
        self.described(&self.ctype, false)
    }

    /// (a key to compare, the text to show).
    fn described(&self, libc: &str, ordering: bool) -> (String, String) {
        let (name, provider) = match self.provider.as_str() {
            "i" => (self.locale.as_str(), "ICU"),
            "b" => (self.locale.as_str(), "builtin"),
            _ => (libc, "libc"),
        };
        let key = match name.to_lowercase().replace(['-', '_'], "").as_str() {
            // C.UTF-8 orders by code point, as C orders UTF-8's bytes.
            "posix" => "c".to_string(),
            "c.utf8" if ordering => "c".to_string(),
            n => n.to_string(),
        };
        (format!("{provider} {key}"), format!("{name} ({provider})"))
    }
}

/// Where the source's and the destination's databases differ in encoding
/// or default locale, one warning each: the copy carries the characters (a
/// character the destination's encoding lacks fails it, naming the table),
/// not how the server orders, compares or classes them. After the swap the
/// destination's default collation orders text and backs its indexes and
/// unique keys, and its LC_CTYPE decides upper(), lower() and regular
/// expressions, which stored generated columns and expression indexes are
/// computed with again; columns with a COLLATE of their own keep it.
/// `pg_dump | pg_restore` does the same; the dry run says so before the swap
/// changes what the application's queries return. An SQL_ASCII source's text
/// travels as UTF-8: bytes that are not fail the copy.
pub async fn locale_differences(src: &Client, dst: &Client) -> Result<Vec<String>> {
    let (s, d) = (
        DbLocale::of(src, "source").await?,
        DbLocale::of(dst, "destination").await?,
    );
    let mut warnings = Vec::new();
    if s.encoding == "SQL_ASCII" {
        warnings.push(
            "the source's database encoding is SQL_ASCII: its text travels as UTF-8, so bytes that are not valid UTF-8 (LATIN1 text stored in it, say) fail prepare, naming the table; convert them on the source first".to_string(),
        );
    } else if s.encoding != d.encoding {
        warnings.push(format!(
            "the destination's database encoding is {}, the source's {}: the characters travel, and one the destination's encoding lacks fails prepare, naming the table{}",
            d.encoding,
            s.encoding,
            if d.encoding == "SQL_ASCII" {
                " (SQL_ASCII holds them as UTF-8 bytes: char(n) and varchar(n) count bytes there, not characters)"
            } else {
                ""
            }
        ));
    }
    let (sc, dc) = (s.collation(), d.collation());
    if sc.0 != dc.0 {
        warnings.push(format!(
            "the destination's default collation is {}, the source's {}: after the swap, text sorts and compares as the destination's does (ORDER BY, indexes, unique keys, comparisons), not as on the source (columns with a COLLATE of their own keep it)",
            dc.1, sc.1
        ));
    }
    let (st, dt) = (s.ctype(), d.ctype());
    if st.0 != dt.0 {
        warnings.push(format!(
            "the destination's character classification (LC_CTYPE) is {}, the source's {}: upper(), lower(), ILIKE and regular expressions follow the destination's, and stored generated columns and expression indexes using them are computed again with it (--verify checksums then differs)",
            dt.1, st.1
        ));
    }
    Ok(warnings)
}

/// What the source has that belongs to no schema, and that a migration of
/// schemas (`pg_dump -n`) therefore leaves behind: publications and
/// subscriptions, event triggers (casts: [`casts_left_behind`]). Extension
/// members come with their extension.
async fn outside_any_schema(src: &Client) -> Result<Vec<String>> {
    let r = src
        .query_one(
            "WITH own(classid, objid) AS (SELECT classid, objid FROM pg_catalog.pg_depend WHERE deptype = 'e')
             SELECT ARRAY(SELECT pg_catalog.quote_ident(p.pubname) FROM pg_catalog.pg_publication p ORDER BY 1),
                    ARRAY(SELECT pg_catalog.quote_ident(s.subname) FROM pg_catalog.pg_subscription s
                           WHERE s.subdbid = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())
                           ORDER BY 1),
                    ARRAY(SELECT pg_catalog.quote_ident(e.evtname) FROM pg_catalog.pg_event_trigger e
                           WHERE NOT EXISTS (SELECT 1 FROM own WHERE own.classid = 'pg_catalog.pg_event_trigger'::regclass AND own.objid = e.oid)
                           ORDER BY 1)",
            &[],
        )
        .await
        .map_err(|e| crate::pg::exec::pg_error_as(e, "listing the source's publications and event triggers"))?;
    let mut warnings = Vec::new();
    let kinds = [
        (0, "publications"),
        (1, "subscriptions"),
        (2, "event triggers"),
    ];
    for (i, what) in kinds {
        let names: Vec<String> = r.get(i);
        if !names.is_empty() {
            warnings.push(format!(
                "the source's {what} are not migrated: {}",
                list_some(&names)
            ));
        }
    }
    Ok(warnings)
}

/// The source's casts of the migrated schemas' types or functions
/// ([`catalog::casts`], read with `src`: the snapshot's session at prepare),
/// split into those the migration brings and those it leaves behind, as
/// [`catalog::CastInfo::migrates`] decides; `dst` says which of their other
/// types it has and whether this role is a superuser. `leaves(schema,
/// table)`: a table not migrated.
pub async fn plan_casts(
    src: &Client,
    dst: &Client,
    schemas: &[String],
    leaves: impl Fn(&str, &str) -> bool + Copy,
) -> Result<(Vec<catalog::CastInfo>, Vec<catalog::CastInfo>)> {
    let casts = catalog::casts(src, schemas).await?;
    if casts.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let superuser = catalog::is_superuser(dst).await?;
    let outside: Vec<String> = casts
        .iter()
        .flat_map(|c| c.outside_types(schemas, leaves))
        .map(|t| t.sql.clone())
        .collect();
    let present: std::collections::HashSet<String> = catalog::types_present(dst, &outside)
        .await?
        .into_iter()
        .collect();
    Ok(casts
        .into_iter()
        .partition(|c| c.migrates(schemas, leaves, superuser, |t| present.contains(&t.sql))))
}

/// The source's casts that the migration does not bring ([`plan_casts`]):
/// one warning, or none.
pub async fn casts_left_behind(
    src: &Client,
    dst: &Client,
    schemas: &[String],
    not_migrated: &std::collections::BTreeSet<String>,
) -> Result<Vec<String>> {
    let leaves =
        |schema: &str, name: &str| not_migrated.contains(&meta::table_display(schema, name));
    let (_, left) = plan_casts(src, dst, schemas, leaves).await?;
    Ok(if left.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "casts belong to no schema; these do not come with the migration: {} (a cast comes along when it converts from or to a type the migration creates, its other type is created too or exists on the destination, its function is migrated or built in, and a binary-coercible one only for a superuser); create them on the destination after the swap",
            list_some(&left.iter().map(|c| c.display.clone()).collect::<Vec<_>>())
        )]
    })
}

/// Rows the source's application added to its extensions' configuration
/// tables (`pg_extension.extconfig`, the rows `extcondition` selects:
/// PostGIS's own `spatial_ref_sys` entries) that the destination's same
/// table lacks or has otherwise. Extension tables are not copied: the
/// destination's extension keeps its own, so such rows would be missing
/// (or keep the destination's values) after the swap (a geometry with a
/// custom SRID no longer transforms).
///
/// Each side's table is read `ONLY`: an inheritance child of a
/// configuration table holds rows of its own, not configuration (pgq's
/// queues are children of `pgq.event_template`, holding events), and
/// reading through would count every one of them on both servers. pg_dump
/// too copies a configuration table without its children (`COPY t`; only
/// its `COPY (SELECT … FROM t cond)` for a table with a condition reads
/// through, a quirk not followed here).
///
/// A row is told missing from differing by the table's primary key when
/// both sides have the same one (a row of the same key with other values,
/// pg_partman's `part_config` of one table with another `premake`, is not
/// one to add: its insert would fail on the key); without one, a row not
/// found whole on the destination may be either.
pub async fn extension_config_rows(src: &Client, dst: &Client) -> Result<Vec<String>> {
    let configs = src
        .query(
            "SELECT e.extname::text, n.nspname::text, c.relname::text, COALESCE(u.cond, '')
               FROM pg_catalog.pg_extension e
               CROSS JOIN LATERAL ROWS FROM (pg_catalog.unnest(e.extconfig), pg_catalog.unnest(e.extcondition)) AS u(cfg, cond)
               JOIN pg_catalog.pg_class c ON c.oid = u.cfg
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND pg_catalog.has_table_privilege(c.oid, 'SELECT')
              ORDER BY 1, 2, 3",
            &[],
        )
        .await
        .map_err(|e| crate::pg::exec::pg_error_as(e, "listing the source's extension configuration tables"))?;
    let mut warnings = Vec::new();
    for r in configs {
        let (ext, schema, table, cond): (String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let rel = crate::pg::ident::qualified(&schema, &table);
        let key = primary_key(src, &rel).await?;
        // The condition is the extension's own SQL from the catalog, as
        // pg_dump splices it too.
        let theirs = row_hashes(src, &rel, &key, &cond).await?;
        if theirs.is_empty() {
            continue;
        }
        let readable: bool = dst
            .query_one(
                "SELECT COALESCE(pg_catalog.has_table_privilege(pg_catalog.to_regclass($1), 'SELECT'), false)",
                &[&rel],
            )
            .await?
            .get(0);
        // The destination's rows by the same key, if it has the same one.
        let (key, ours) = if !readable {
            (key, Vec::new())
        } else if primary_key(dst, &rel).await? == key {
            let ours = row_hashes(dst, &rel, &key, "").await?;
            (key, ours)
        } else {
            (Vec::new(), row_hashes(dst, &rel, &[], "").await?)
        };
        let (missing, differ) = compare_rows(&theirs, &ours, !key.is_empty());
        if let Some(w) = config_rows_warning(&ext, &named(&schema, &table), &key, missing, differ) {
            warnings.push(w);
        }
    }
    Ok(warnings)
}

/// Of the source's rows `theirs` (each its key's and its whole row's hash,
/// [`row_hashes`]), how many the destination's `ours` lacks and how many it
/// has by key with other values (`keyed`: the hashes' keys are a primary
/// key's; else every row not found whole counts as missing).
fn compare_rows(
    theirs: &[(String, String)],
    ours: &[(String, String)],
    keyed: bool,
) -> (usize, usize) {
    use std::collections::{HashMap, HashSet};
    if keyed {
        let ours: HashMap<&str, &str> =
            ours.iter().map(|(k, r)| (k.as_str(), r.as_str())).collect();
        let mut missing = 0;
        let mut differ = 0;
        for (k, r) in theirs {
            match ours.get(k.as_str()) {
                None => missing += 1,
                Some(o) if o != r => differ += 1,
                Some(_) => {}
            }
        }
        (missing, differ)
    } else {
        let ours: HashSet<&str> = ours.iter().map(|(_, r)| r.as_str()).collect();
        let theirs: HashSet<&str> = theirs.iter().map(|(_, r)| r.as_str()).collect();
        (theirs.difference(&ours).count(), 0)
    }
}

/// The warning about a configuration table's `missing` and `differ`ing
/// rows ([`compare_rows`]; `key`: its primary key's columns, empty when
/// rows were compared whole), or none.
fn config_rows_warning(
    ext: &str,
    table: &str,
    key: &[String],
    missing: usize,
    differ: usize,
) -> Option<String> {
    let rows = |n: usize| format!("{n} row{}", if n == 1 { "" } else { "s" });
    let is = |n: usize| if n == 1 { "is" } else { "are" };
    let of = format!("the source added to its configuration table {table}");
    let key = key.iter().map(|c| display_ident(c)).join(", ");
    let not_copied = "and extension tables are not copied";
    Some(match (missing, differ) {
        (0, 0) => return None,
        (m, 0) if key.is_empty() => format!(
            "extension {ext}: {} {of} {} not on the destination, or {} there with other values (the table has no primary key to tell which), {not_copied}; add or update {} there before the swap",
            rows(m),
            is(m),
            is(m),
            if m == 1 { "it" } else { "them" },
        ),
        (m, 0) => format!(
            "extension {ext}: {} {of} {} not on the destination, {not_copied}; add {} there before the swap",
            rows(m),
            is(m),
            if m == 1 { "it" } else { "them" },
        ),
        (0, d) => format!(
            "extension {ext}: {} {of} {} other values on the destination (the same {key}), {not_copied}; update {} there before the swap if the application needs the source's",
            rows(d),
            if d == 1 { "has" } else { "have" },
            if d == 1 { "it" } else { "them" },
        ),
        (m, d) => format!(
            "extension {ext}: of the rows {of}, {} {} not on the destination and {} {} other values there (the same {key}), {not_copied}; add the missing and update the others there before the swap if the application needs the source's",
            rows(m),
            is(m),
            rows(d),
            if d == 1 { "has" } else { "have" },
        ),
    })
}

/// The columns of relation `rel`'s (quoted, qualified) primary key, in its
/// order; none when it has none (or does not exist).
async fn primary_key(client: &Client, rel: &str) -> Result<Vec<String>> {
    crate::pg::exec::column(
        client,
        "SELECT a.attname::text
           FROM pg_catalog.pg_index i
           CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, at)
           JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
          WHERE i.indrelid = pg_catalog.to_regclass($1) AND i.indisprimary
          ORDER BY k.at",
        &[&rel],
    )
    .await
}

/// Each row of configuration table `rel` (its own: `ONLY`) that `cond`
/// selects, as the hash of its `key` columns' values (of the whole row
/// without a key) and of the whole row, read in a transaction whose
/// settings (output ones, an empty search_path) make a row's text mean one
/// thing and end with it.
async fn row_hashes(
    client: &Client,
    rel: &str,
    key: &[String],
    cond: &str,
) -> Result<Vec<(String, String)>> {
    let whole = "pg_catalog.md5(ROW(t.*)::text)";
    let key = if key.is_empty() {
        whole.to_string()
    } else {
        format!(
            "pg_catalog.md5(ROW({})::text)",
            key.iter()
                .map(|c| format!("t.{}", quote_ident(c)))
                .join(", ")
        )
    };
    client
        .batch_execute(&format!(
            "BEGIN; {}; SET LOCAL search_path = ''",
            crate::pg::settings::set_local(crate::pg::settings::OUTPUT)
        ))
        .await?;
    let rows = client
        .query(
            &format!("SELECT {key}, {whole} FROM ONLY {rel} t {cond}"),
            &[],
        )
        .await;
    client.batch_execute("ROLLBACK").await?;
    let rows = rows.map_err(|e| {
        crate::pg::exec::pg_error_as(e, "reading an extension's configuration table")
    })?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Refuse foreign tables whose server the destination lacks (servers and
/// user mappings belong to no schema and are not migrated): their restore
/// would fail in the schema phase, after the dump.
pub async fn refuse_missing_servers(
    src: &Client,
    dst: &Client,
    schemas: &[String],
    not_migrated: &std::collections::BTreeSet<String>,
) -> Result<()> {
    let rows = src
        .query(
            "SELECT n.nspname::text, c.relname::text, s.srvname::text
               FROM pg_catalog.pg_foreign_table f
               JOIN pg_catalog.pg_class c ON c.oid = f.ftrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_catalog.pg_foreign_server s ON s.oid = f.ftserver
              WHERE n.nspname = ANY($1)
              ORDER BY 1, 2",
            &[&schemas],
        )
        .await
        .map_err(|e| crate::pg::exec::pg_error_as(e, "listing the source's foreign tables"))?;
    let mut servers: Vec<String> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    let theirs: Vec<String> = crate::pg::exec::column(
        dst,
        "SELECT srvname::text FROM pg_catalog.pg_foreign_server",
        &[],
    )
    .await?;
    for r in rows {
        let (schema, table, server): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        if not_migrated.contains(&meta::table_display(&schema, &table)) {
            continue;
        }
        if !theirs.contains(&server) {
            missing.push(format!(
                "{} (server {})",
                named(&schema, &table),
                display_ident(&server)
            ));
            if !servers.contains(&server) {
                servers.push(server);
            }
        }
    }
    if !missing.is_empty() {
        crate::refuse!(
            "foreign tables use servers the destination does not have (servers and user mappings are not migrated): {}; create {} on the destination first, or leave the tables out with --exclude-table; nothing was changed",
            list_some(&missing),
            servers.iter().map(|s| display_ident(s)).join(", ")
        );
    }
    Ok(())
}

/// The tablespaces the migrated tables, partitioned tables, materialized
/// views and indexes are in on the source (`reltablespace <> 0`: one in the
/// source database's default tablespace names none, and pg_dump names none
/// for it). pg_restore sets `default_tablespace` to each before creating its
/// objects, which fails halfway through the schema phase when the
/// destination lacks it, and so would a CREATE in one this role may not
/// create in (the destination database's own default tablespace needs no
/// privilege). Such a tablespace is refused here, before anything changes:
/// exit 2 when the destination lacks one, 1 when it only lacks the
/// privilege (as other privileges). With `--no-tablespaces` the SQL names
/// no tablespace and everything lands in the destination's default one:
/// a warning then names what moves there.
pub async fn check_tablespaces(
    src: &Client,
    dst: &Client,
    schemas: &[String],
    not_migrated: &std::collections::BTreeSet<String>,
    no_tablespaces: bool,
) -> Result<Vec<String>> {
    // Indexes go with their table: its extension, its filter.
    let rows = src
        .query(
            concat!(
                "SELECT s.spcname::text, n.nspname::text, c.relname::text, COALESCE(t.relname, c.relname)::text
                   FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                   JOIN pg_catalog.pg_tablespace s ON s.oid = c.reltablespace
                   LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid
                   LEFT JOIN pg_catalog.pg_class t ON t.oid = i.indrelid
                  WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p', 'm', 'i', 'I')
                    AND ",
                not_ext_member!("pg_class", "COALESCE(i.indrelid, c.oid)"),
                " ORDER BY 1, pg_catalog.array_position($1, n.nspname), 3"
            ),
            &[&schemas],
        )
        .await
        .map_err(|e| crate::pg::exec::pg_error_as(e, "listing the source's tablespaces"))?;
    // Tablespace -> the objects in it, in the order above.
    let mut used: Vec<(String, Vec<String>)> = Vec::new();
    for r in rows {
        let (space, schema, name, table): (String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        if not_migrated.contains(&meta::table_display(&schema, &table)) {
            continue;
        }
        match used.last_mut() {
            Some((s, objects)) if *s == space => objects.push(named(&schema, &name)),
            _ => used.push((space, vec![named(&schema, &name)])),
        }
    }
    if used.is_empty() {
        return Ok(Vec::new());
    }
    let in_spaces = |spaces: &[&(String, Vec<String>)]| {
        spaces
            .iter()
            .map(|(s, objects)| format!("{} ({})", display_ident(s), list_some(objects)))
            .join(", ")
    };
    if no_tablespaces {
        return Ok(vec![format!(
            "--no-tablespaces: what the source keeps in tablespaces goes into the destination's default tablespace: {}",
            in_spaces(&used.iter().collect::<Vec<_>>())
        )]);
    }
    let names: Vec<&str> = used.iter().map(|(s, _)| s.as_str()).collect();
    let r = dst
        .query_one(
            "SELECT current_user::text,
                    ARRAY(SELECT u.name FROM pg_catalog.unnest($1::text[]) WITH ORDINALITY AS u(name, at)
                           WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_tablespace s WHERE s.spcname = u.name)
                           ORDER BY u.at),
                    ARRAY(SELECT u.name FROM pg_catalog.unnest($1::text[]) WITH ORDINALITY AS u(name, at)
                           JOIN pg_catalog.pg_tablespace s ON s.spcname = u.name
                          WHERE s.oid <> (SELECT d.dattablespace FROM pg_catalog.pg_database d
                                           WHERE d.datname = pg_catalog.current_database())
                            AND NOT pg_catalog.has_tablespace_privilege(s.oid, 'CREATE')
                          ORDER BY u.at)",
            &[&names],
        )
        .await
        .map_err(|e| {
            crate::pg::exec::pg_error_as(e, "looking for the tablespaces on the destination")
        })?;
    let (user, missing, denied): (String, Vec<String>, Vec<String>) =
        (r.get(0), r.get(1), r.get(2));
    if missing.is_empty() && denied.is_empty() {
        return Ok(Vec::new());
    }
    let of = |wanted: &[String]| -> Vec<&(String, Vec<String>)> {
        used.iter().filter(|(s, _)| wanted.contains(s)).collect()
    };
    let spaces = |wanted: &[String]| wanted.iter().map(|s| display_ident(s)).join(", ");
    let mut problems = Vec::new();
    let mut remedies = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "the source keeps objects in {} {}, which the destination does not have",
            if missing.len() == 1 {
                "tablespace"
            } else {
                "tablespaces"
            },
            in_spaces(&of(&missing))
        ));
        remedies.push(format!("create {} on the destination", spaces(&missing)));
    }
    if !denied.is_empty() {
        problems.push(format!(
            "role {} may not create in the destination's {} {}",
            display_ident(&user),
            if denied.len() == 1 {
                "tablespace"
            } else {
                "tablespaces"
            },
            in_spaces(&of(&denied))
        ));
        remedies.push(format!(
            "GRANT CREATE ON TABLESPACE {} TO {} there",
            denied.iter().map(|s| quote_ident(s)).join(", "),
            quote_ident(&user)
        ));
    }
    let message = format!(
        "{}; {}, or pass --no-tablespaces to put everything in the destination's default tablespace; nothing was changed",
        problems.join("; "),
        remedies.join(" and ")
    );
    if missing.is_empty() {
        bail!("{message}");
    }
    crate::refuse!("{message}");
}

/// Refuse to copy tables of the source whose row-level security applies to
/// this role: its reads would see only the rows the policies show it, and
/// the copy would be short without an error. (Every source session also runs
/// with `row_security = off`, as pg_dump's do, so a read that RLS would
/// filter fails instead: see `pg::conn::connect::session_defaults`.)
pub async fn refuse_row_security(src: &Client, tables: &[u32]) -> Result<()> {
    let rows = src
        .query(
            "SELECT n.nspname::text, c.relname::text, c.relforcerowsecurity
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.oid = ANY($1) AND c.relrowsecurity
                AND (c.relforcerowsecurity OR NOT pg_catalog.pg_has_role(c.relowner, 'USAGE'))
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = current_user
                                   AND (r.rolsuper OR r.rolbypassrls))
              ORDER BY 1, 2",
            &[&tables],
        )
        .await
        .context("looking for row-level security on the source")?;
    if rows.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = rows.iter().map(|r| named(r.get(0), r.get(1))).collect();
    let forced = rows.iter().any(|r| r.get::<_, bool>(2));
    bail!(
        "row-level security of the source applies to this role on {}: the copy would miss the rows its policies hide; nothing was changed (connect to the source as a superuser or a role with BYPASSRLS{}, or pass --exclude-table-data for them)",
        list_some(&names),
        if forced {
            ", or as the tables' owner after ALTER TABLE … NO FORCE ROW LEVEL SECURITY"
        } else {
            ", or as the tables' owner"
        }
    );
}

/// The relations (tables, views, sequences, foreign tables) of `schemas`
/// for which `condition` holds (on `c`, their `pg_class` row), named for
/// people (`name` in public, `schema.name` elsewhere), by schema then name.
async fn relations(client: &Client, schemas: &[String], condition: &str) -> Result<Vec<String>> {
    let rows = client
        .query(
            &format!(
                "SELECT n.nspname::text, c.relname::text
                   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {condition}
                  ORDER BY pg_catalog.array_position($1, n.nspname), c.relname"
            ),
            &[&schemas],
        )
        .await
        .map_err(crate::pg::exec::pg_error)?;
    Ok(rows.iter().map(|r| named(r.get(0), r.get(1))).collect())
}

/// An object of `schema` named for people: `name` in public (quoted where
/// needed), `schema.name` elsewhere.
fn named(schema: &str, name: &str) -> String {
    if schema == meta::PUBLIC {
        display_ident(name)
    } else {
        meta::table_display(schema, name)
    }
}

/// SQL (a literal, for `concat!`): this role may act as owner `$role` (it
/// has its privileges: the swap moves its objects) and may give objects to it
/// (PostgreSQL 16+ asks for the SET option of the membership: prepare makes it
/// the owner of the shadow's namesakes).
macro_rules! can_own {
    ($role:literal) => {
        concat!(
            "(pg_catalog.pg_has_role(", $role, ", 'USAGE') AND pg_catalog.pg_has_role(", $role,
            ", CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 160000 THEN 'SET' ELSE 'MEMBER' END))"
        )
    };
}

/// An owner of destination objects this role cannot act for.
struct Owner {
    name: String,
    superuser: bool,
    /// A member already (without the privileges or, on 16+, the SET option
    /// that acting as the owner needs).
    member: bool,
}

/// One object [`not_owned`] finds.
struct NotOwned {
    schema: String,
    /// `""` for a relation, else `type `, `function `, `procedure `,
    /// `aggregate `.
    kind: String,
    /// A routine's carries its identity arguments.
    name: String,
    owner: String,
    /// Part of another object (a range type's constructor).
    internal: bool,
}

/// The relations, types and routines of `schemas` whose owner this role is
/// not a member of (extensions' members aside), named for people (types and
/// routines say so: `type mood`, `function f(integer)`), and those owners
/// (whether each is a superuser). With `namesakes_on` (the source, and the
/// tables not migrated by their keys), only those that are migrated and
/// that the source's same-named schema has a namesake of.
async fn not_owned(
    client: &Client,
    schemas: &[String],
    namesakes_on: Option<(&Client, &BTreeSet<String>)>,
) -> Result<(Vec<String>, Vec<Owner>)> {
    let rows = client
        .query(
            concat!(
                "SELECT n.nspname::text, '', c.relname::text, pg_catalog.pg_get_userbyid(c.relowner)::text, false
                   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
                    AND NOT ",
                can_own!("c.relowner"),
                " AND ",
                not_ext_member!("pg_class", "c.oid"),
                "
                 UNION ALL
                 SELECT n.nspname::text, 'type ', t.typname::text, pg_catalog.pg_get_userbyid(t.typowner)::text, false
                   FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
                  WHERE n.nspname = ANY($1) AND t.typtype IN ('b', 'c', 'd', 'e', 'r')
                    AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid) = 'c')
                    AND NOT (t.typelem <> 0 AND t.typlen = -1)
                    AND NOT ",
                can_own!("t.typowner"),
                " AND ",
                not_ext_member!("pg_type", "t.oid"),
                "
                 UNION ALL
                 SELECT n.nspname::text, CASE p.prokind WHEN 'p' THEN 'procedure ' WHEN 'a' THEN 'aggregate ' ELSE 'function ' END,
                        p.proname::text || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')',
                        pg_catalog.pg_get_userbyid(p.proowner)::text,
                        EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                 WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'i')
                   FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                  WHERE n.nspname = ANY($1) AND NOT ",
                can_own!("p.proowner"),
                " AND ",
                not_ext_member!("pg_proc", "p.oid"),
                "
                  ORDER BY 2, 1, 3"
            ),
            &[&schemas],
        )
        .await
        .map_err(|e| crate::pg::exec::pg_error_as(e, "checking the owners on the destination"))?;
    let mut found: Vec<NotOwned> = rows
        .iter()
        .map(|r| NotOwned {
            schema: r.get(0),
            kind: r.get(1),
            name: r.get(2),
            owner: r.get(3),
            internal: r.get(4),
        })
        .collect();
    if let Some((src, not_migrated)) = namesakes_on {
        // A range type's constructors: PostgreSQL makes them the bootstrap
        // superuser's, on both sides; prepare leaves them be. Tables not
        // migrated have no shadow namesake.
        let not_migrated = |o: &NotOwned| {
            o.kind.is_empty() && not_migrated.contains(&meta::table_display(&o.schema, &o.name))
        };
        found.retain(|o| !o.internal && !not_migrated(o));
        let has = namesakes(src, &found).await?;
        found = found
            .into_iter()
            .zip(has)
            .filter_map(|(o, has)| has.then_some(o))
            .collect();
    }
    let mut names = Vec::new();
    let mut owners: Vec<String> = Vec::new();
    for NotOwned {
        schema,
        kind,
        name,
        owner,
        ..
    } in found
    {
        // A routine's name carries its arguments: name the name part only.
        let shown = match name.split_once('(') {
            Some((n, args)) if !kind.is_empty() && kind != "type " => {
                format!("{}({args}", named(&schema, n))
            }
            _ => named(&schema, &name),
        };
        names.push(format!("{kind}{shown}"));
        if !owners.contains(&owner) {
            owners.push(owner);
        }
    }
    owners.sort();
    let flags = client
        .query(
            "SELECT rolname::text, rolsuper, pg_catalog.pg_has_role(oid, 'MEMBER')
               FROM pg_catalog.pg_roles WHERE rolname = ANY($1)",
            &[&owners],
        )
        .await
        .map_err(|e| crate::pg::exec::pg_error_as(e, "checking the owners on the destination"))?;
    let owners = owners
        .into_iter()
        .map(|o| {
            let row = flags.iter().find(|r| r.get::<_, String>(0) == o);
            Owner {
                superuser: row.is_some_and(|r| r.get(1)),
                member: row.is_some_and(|r| r.get(2)),
                name: o,
            }
        })
        .collect();
    Ok((names, owners))
}

/// For each of `objects`, whether `src` has a same-named one in the
/// same-named schema (a relation, a type, a routine with the same identity
/// arguments).
async fn namesakes(src: &Client, objects: &[NotOwned]) -> Result<Vec<bool>> {
    let schemas: Vec<&str> = objects.iter().map(|o| o.schema.as_str()).collect();
    let kinds: Vec<&str> = objects.iter().map(|o| o.kind.as_str()).collect();
    let names: Vec<&str> = objects.iter().map(|o| o.name.as_str()).collect();
    let rows = src
        .query(
            "SELECT CASE i.k
                      WHEN '' THEN EXISTS (
                        SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = i.s AND c.relname = i.n)
                      WHEN 'type ' THEN EXISTS (
                        SELECT 1 FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
                         WHERE n.nspname = i.s AND t.typname = i.n)
                      ELSE EXISTS (
                        SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                         WHERE n.nspname = i.s
                           AND p.proname::text || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')' = i.n)
                    END
               FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]))
                    WITH ORDINALITY AS i(s, k, n, ord)
              ORDER BY i.ord",
            &[&schemas, &kinds, &names],
        )
        .await
        .map_err(|e| crate::pg::exec::pg_error_as(e, "looking up the source's namesakes"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Refuse, in one line naming them and what would fix it, the objects of
/// `schemas` whose owner this role `user` may not act for ([`not_owned`],
/// with `namesakes_on`); `why` says what needs it.
async fn refuse_not_owned(
    dst: &Client,
    user: &str,
    schemas: &[String],
    namesakes_on: Option<(&Client, &BTreeSet<String>)>,
    why: &str,
) -> Result<()> {
    let (not_owned, owners) = not_owned(dst, schemas, namesakes_on).await?;
    if not_owned.is_empty() {
        return Ok(());
    }
    // Names outside public are qualified.
    let place = if meta::is_default_schemas(schemas) {
        " in public"
    } else {
        ""
    };
    // Membership in a superuser would make this role one: those
    // objects need another owner instead.
    let (supers, others): (Vec<_>, Vec<_>) = owners.iter().partition(|o| o.superuser);
    let names = |v: &[&Owner]| v.iter().map(|o| display_ident(&o.name)).join(", ");
    let mut fix = Vec::new();
    if !others.is_empty() {
        // PostgreSQL 16+ grants a membership with options, and a
        // plain GRANT of an existing one changes nothing.
        if catalog::server_major(dst).await? >= 16 {
            fix.push(format!(
                "grant {} to {user} with inherit true, set true",
                names(&others)
            ));
        } else {
            let (members, strangers): (Vec<&Owner>, Vec<&Owner>) =
                others.iter().partition(|o| o.member);
            if !strangers.is_empty() {
                fix.push(format!("grant {} to {user}", names(&strangers)));
            }
            if !members.is_empty() {
                // This role inherits: the membership goes through a role that
                // does not (h46a: `alter role … inherit` changed nothing).
                let inherits: bool = dst
                    .query_one(
                        "SELECT rolinherit FROM pg_catalog.pg_roles WHERE rolname = current_user",
                        &[],
                    )
                    .await
                    .map_err(|e| crate::pg::exec::pg_error_as(e, "reading this role"))?
                    .get(0);
                fix.push(if inherits {
                    format!(
                        "grant {} to {user} ({user} is a member of {} only through a role that does not inherit its privileges)",
                        names(&members),
                        names(&members)
                    )
                } else {
                    format!(
                        "alter role {user} inherit ({user} is a member of {} but does not inherit its privileges)",
                        names(&members)
                    )
                });
            }
        }
    }
    if !supers.is_empty() {
        fix.push(format!(
            "give those of the superuser {} another owner {user} is a member of (ALTER … OWNER TO)",
            names(&supers)
        ));
    }
    bail!(
        "insufficient privileges on the destination: role {user} does not own {}{place}, {why} (owners or superuser only: {})",
        list_some(&not_owned),
        fix.join("; ")
    );
}

/// When the swap can rename the schemas (so [`check_dest`] did not ask this
/// role to own their objects): prepare still makes each shadow object its
/// destination namesake's owner's, which takes membership in that owner.
/// Refuse the destination's objects that the source has namesakes of and
/// that are migrated (not in `not_migrated`), whose owner this role may not
/// act for. A superuser may.
pub async fn refuse_unowned_namesakes(
    dst: &Client,
    src: &Client,
    schemas: &[String],
    not_migrated: &BTreeSet<String>,
) -> Result<()> {
    let r = dst
        .query_one(
            "SELECT current_user::text, (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)",
            &[],
        )
        .await
        .context("checking privileges on the destination")?;
    if r.get::<_, bool>(1) {
        return Ok(());
    }
    let user: String = r.get(0);
    refuse_not_owned(
        dst,
        &user,
        schemas,
        Some((src, not_migrated)),
        "whose shadow namesakes prepare must give the same owner",
    )
    .await
}

/// Checks on the destination (read only). `may_rename`: the swap can rename
/// the schemas, so a role without superuser need not own each of their
/// objects (an object-level swap moves them one by one, and does).
pub async fn check_dest(dst: &Client, schemas: &[String], may_rename: bool) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let r = dst
        .query_one(
            "SELECT current_user::text, current_database()::text,
                    has_database_privilege(current_database(), 'CREATE'),
                    ARRAY(SELECT n.nspname::text FROM pg_catalog.pg_namespace n
                           WHERE n.nspname = ANY($1) AND NOT pg_catalog.has_schema_privilege(n.oid, 'CREATE')
                           ORDER BY pg_catalog.array_position($1, n.nspname)),
                    (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)",
            &[&schemas],
        )
        .await
        .context("checking privileges on the destination")?;
    let user: String = r.get(0);
    let db: String = r.get(1);
    if !r.get::<_, bool>(2) {
        bail!(
            "insufficient privileges on the destination: role {user} cannot create schemas in database {db} (grant CREATE ON DATABASE)"
        );
    }
    let no_create: Vec<String> = r.get(3);
    if !no_create.is_empty() {
        let s = no_create.iter().map(|s| display_ident(s)).join(", ");
        let plural = if no_create.len() > 1 { "s" } else { "" };
        bail!(
            "insufficient privileges on the destination: role {user} has no CREATE on schema{plural} {s}, which the swap needs (grant CREATE ON SCHEMA {s} TO {user})"
        );
    }
    // A shadow left by another role (an empty one a superuser's swap
    // recreated, say) is dropped and recreated by prepare, which needs its
    // owner: say so now rather than after the snapshot and the dump.
    let shadows: Vec<String> = schemas.iter().map(|s| meta::shadow_schema_for(s)).collect();
    crate::pg::catalog::refuse_unowned_schemas(dst, &shadows, "replace").await?;
    let superuser: bool = r.get(4);
    // Only an object-level swap moves each object (and needs to own it); a
    // rename needs the schemas alone (a range type's constructors, which
    // PostgreSQL gives the bootstrap superuser, stay out of the way), and
    // prepare's namesakes ([`refuse_unowned_namesakes`]).
    if !superuser && !may_rename {
        refuse_not_owned(dst, &user, schemas, None, "which the swap must move").await?;
    }
    warnings.extend(outside_dependents(dst, schemas, "swap").await?);
    Ok(warnings)
}

/// SQL: schema name `col` is none of pgshift's own (its shadows, its
/// backups, its records' schema). A backup is one a manifest lists (`$2`,
/// [`manifest::backup_schemas`]): an application's `backup_2023`, or a
/// `backup_<13 digits>` of its own, is not one.
fn not_pgshift(col: &str) -> String {
    format!(
        "{col} NOT IN ('shadow', 'pgshift') AND {col} <> ALL($2::text[]) AND {col} NOT LIKE 'pgshift\\_shadow\\_%'"
    )
}

/// Objects outside the migrated schemas that point at their objects: after
/// the swap (or the rollback: `op`) they keep pointing at the backup.
pub async fn outside_dependents(dst: &Client, schemas: &[String], op: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let backups = manifest::backup_schemas(dst).await?;
    let too = if op == "swap" {
        ", or migrate its schema too"
    } else {
        ""
    };
    let rows = dst
        .query(
            &format!(
                "SELECT DISTINCT vn.nspname, v.relname, c.relname, cn.nspname
               FROM pg_catalog.pg_rewrite rw
               JOIN pg_catalog.pg_class v ON v.oid = rw.ev_class
               JOIN pg_catalog.pg_namespace vn ON vn.oid = v.relnamespace
               JOIN pg_catalog.pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
               JOIN pg_catalog.pg_class c ON c.oid = d.refobjid AND c.oid <> v.oid
               JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
              WHERE cn.nspname = ANY($1) AND NOT (vn.nspname = ANY($1))
                AND vn.nspname NOT IN ('pg_catalog', 'information_schema') AND {}
              ORDER BY 1, 2, 3",
                not_pgshift("vn.nspname")
            ),
            &[&schemas, &backups],
        )
        .await
        .context("looking for views outside the migrated schemas")?;
    for r in rows {
        let (s, v, t, ts): (String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        out.push(format!(
            "view {} reads {}; after the {op} it will read the backup's copy (recreate it after the {op})",
            qualified_display(&s, &v),
            qualified_display(&ts, &t)
        ));
    }
    let rows = dst
        .query(
            &format!(
                "SELECT n.nspname, c.relname, con.conname, pc.relname, pn.nspname
               FROM pg_catalog.pg_constraint con
               JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_catalog.pg_class pc ON pc.oid = con.confrelid
               JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
              WHERE con.contype = 'f' AND pn.nspname = ANY($1) AND NOT (n.nspname = ANY($1))
                AND {}
              ORDER BY 1, 2, 3",
                not_pgshift("n.nspname")
            ),
            &[&schemas, &backups],
        )
        .await
        .context("looking for foreign keys from outside the migrated schemas")?;
    for r in rows {
        let (s, t, c, p, ps): (String, String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        out.push(format!(
            "foreign key {} on {} references {}; after the {op} it will reference the backup's copy",
            display_ident(&c),
            qualified_display(&s, &t),
            qualified_display(&ps, &p)
        ));
    }
    // Triggers, policies, defaults, constraints, columns, functions… outside
    // that use a function or type of a migrated schema: they are bound to it
    // by OID, so the swap leaves them with the backup's copy (a trigger on
    // auth.users would go on running the old public.handle_new_user()).
    let rows = dst
        .query(
            &format!(
                "SELECT DISTINCT
                        CASE WHEN d.classid = 'pg_catalog.pg_rewrite'::regclass THEN {describe}
                             ELSE pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) END,
                        r.type || ' ' || r.identity
                   FROM pg_catalog.pg_depend d
                   JOIN LATERAL pg_catalog.pg_identify_object(d.refclassid, d.refobjid, 0) r ON true
                  WHERE (d.deptype = 'n'
                         -- a generated column's expression depends automatically
                         OR (d.deptype = 'a' AND d.classid = 'pg_catalog.pg_class'::regclass AND d.objsubid <> 0))
                    AND (d.refclassid IN ('pg_catalog.pg_proc'::regclass, 'pg_catalog.pg_type'::regclass)
                         -- sequences (a default's nextval('public.s'))
                         -- (views are the query above)
                         OR (d.refclassid = 'pg_catalog.pg_class'::regclass
                             AND EXISTS (SELECT 1 FROM pg_catalog.pg_class s WHERE s.oid = d.refobjid AND s.relkind = 'S')
                             AND d.classid NOT IN ('pg_catalog.pg_class'::regclass, 'pg_catalog.pg_rewrite'::regclass))
                         -- any relation a function's SQL-standard body or a
                         -- policy's expression reads
                         OR (d.refclassid = 'pg_catalog.pg_class'::regclass
                             AND d.classid IN ('pg_catalog.pg_proc'::regclass, 'pg_catalog.pg_policy'::regclass)))
                    -- (pg_identify_object quotes the schema's name)
                    AND r.schema IN (SELECT pg_catalog.quote_ident(x) FROM pg_catalog.unnest($1::text[]) x)
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
                                     WHERE e.classid = d.refclassid AND e.objid = d.refobjid AND e.deptype = 'e')
                    -- nor the array type of an extension's type (it goes
                    -- where the extension goes: ltree[] with ltree)
                    AND {not_ext_array}
                    -- nor an extension's own objects: its members and their
                    -- parts (the support functions of its operator family)
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend o
                                     WHERE o.classid = d.classid AND o.objid = d.objid
                                       AND (o.deptype = 'e'
                                            OR (o.deptype IN ('a', 'i')
                                                AND EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
                                                             WHERE e.classid = o.refclassid AND e.objid = o.refobjid
                                                               AND e.deptype = 'e'))))
                    -- objects of no schema (an event trigger) are outside too
                    AND NOT (COALESCE({dep}, '') = ANY($1))
                    -- but a cast from or to a type of the migrated schemas
                    -- goes with the type (the source's own comes with the
                    -- source's type)
                    AND NOT (d.classid = 'pg_catalog.pg_cast'::regclass
                             AND EXISTS (SELECT 1 FROM pg_catalog.pg_cast x
                                           JOIN pg_catalog.pg_type t ON t.oid IN (x.castsource, x.casttarget)
                                           JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
                                          WHERE x.oid = d.objid AND n.nspname = ANY($1)))
                    AND COALESCE({dep}, '') NOT IN ('pg_catalog', 'information_schema')
                    AND {ours}
                    AND COALESCE({dep}, '') NOT LIKE 'pg\\_toast%'
                  ORDER BY 1, 2",
                describe = crate::swap::rollback::DESCRIBE_DEPENDENT,
                dep = crate::swap::rollback::DEPENDENT_SCHEMA,
                ours = not_pgshift(&format!("COALESCE({}, '')", crate::swap::rollback::DEPENDENT_SCHEMA)),
                not_ext_array = catalog::NOT_EXT_ARRAY_REF,
            ),
            &[&schemas, &backups],
        )
        .await
        .context("looking for objects outside the migrated schemas that use their functions or types")?;
    for r in rows {
        let (what, uses): (Option<String>, Option<String>) = (r.get(0), r.get(1));
        if let (Some(what), Some(uses)) = (what, uses) {
            out.push(format!(
                "{what} uses {uses}; after the {op} it will use the backup's copy (recreate it after the {op}{too})"
            ));
        }
    }
    // Partitions and inheritance children outside whose parent is migrated:
    // they stay attached to the backup's copy.
    let rows = dst
        .query(
            &format!(
                "SELECT cn.nspname, c.relname, pn.nspname, p.relname, c.relispartition
               FROM pg_catalog.pg_inherits i
               JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
               JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
               JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
               JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
              WHERE pn.nspname = ANY($1) AND NOT (cn.nspname = ANY($1))
                AND c.relkind IN ('r', 'p', 'f') AND {}
              ORDER BY 1, 2",
                not_pgshift("cn.nspname")
            ),
            &[&schemas, &backups],
        )
        .await
        .context("looking for partitions outside the migrated schemas")?;
    for r in rows {
        let (cs, c, ps, p, partition): (String, String, String, String, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let parent = qualified_display(&ps, &p);
        out.push(format!(
            "table {} is {} of {parent}; after the {op} it stays with the backup's copy, and its rows are no longer in {parent} (recreate it after the {op}{too})",
            qualified_display(&cs, &c),
            if partition { "a partition" } else { "an inheritance child" },
        ));
    }
    let rows = dst
        .query(
            "SELECT p.pubname, n.nspname, c.relname FROM pg_catalog.pg_publication_rel pr
               JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
               JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = ANY($1)
              ORDER BY 1, pg_catalog.array_position($1, n.nspname), 3",
            &[&schemas],
        )
        .await
        .context("looking for publications")?;
    for r in rows {
        let (p, s, t): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        out.push(format!(
            "publication {} names {}.{}; after the {op} it will publish the backup's copy (ALTER PUBLICATION ... SET TABLE after the {op})",
            display_ident(&p),
            display_ident(&s),
            display_ident(&t)
        ));
    }
    out.extend(extension_config_refs(dst, schemas, op, &BTreeSet::new()).await?);
    // Objects of no schema that pgshift's own work reaches: a publication of
    // every table publishes the shadow's, pgshift's and the backups'; an
    // event trigger fires on pgshift's DDL as on the application's.
    let rows = dst
        .query(
            "SELECT 'p', p.pubname::text, NULL::text FROM pg_catalog.pg_publication p WHERE p.puballtables
             UNION ALL
             SELECT 'e', e.evtname::text, e.evtevent::text FROM pg_catalog.pg_event_trigger e
              WHERE e.evtenabled <> 'D' AND e.evtevent IN ('ddl_command_start', 'ddl_command_end', 'sql_drop', 'table_rewrite')
             ORDER BY 1, 2",
            &[],
        )
        .await
        .context("looking for publications of all tables and event triggers")?;
    let (ours, ddl) = if op == "swap" {
        (
            "the shadow's and pgshift's own as they are made, and the backup's after the swap",
            "prepare's restore, the swap's moves",
        )
    } else {
        ("pgshift's own and the backups'", "the rollback's moves")
    };
    for r in rows {
        let (kind, name, event): (String, String, Option<String>) = (r.get(0), r.get(1), r.get(2));
        out.push(if kind == "p" {
            format!(
                "publication {} publishes all tables: also {ours}; a subscriber without them stops replicating (logical replication target relation … does not exist): publish the application's tables by name or schema for the migration",
                display_ident(&name)
            )
        } else {
            format!(
                "event trigger {} runs on {}, also for pgshift's own DDL ({ddl}): one that fails, or writes to a table the {op} replaces, makes the {op} fail (rolled back, nothing changed) or counts as the application's writes; disable it for the migration (ALTER EVENT TRIGGER {} DISABLE, as its owner)",
                display_ident(&name),
                event.unwrap_or_default(),
                display_ident(&name)
            )
        });
    }
    Ok(out)
}

/// The `reg*` types an extension's configuration table may name objects of
/// schemas by (their OIDs), and the catalog of each. `regrole` names no
/// object of a schema.
const REG_CATALOGS: &[(&str, &str)] = &[
    ("regclass", "pg_catalog.pg_class"),
    ("regproc", "pg_catalog.pg_proc"),
    ("regprocedure", "pg_catalog.pg_proc"),
    ("regoper", "pg_catalog.pg_operator"),
    ("regoperator", "pg_catalog.pg_operator"),
    ("regtype", "pg_catalog.pg_type"),
    ("regconfig", "pg_catalog.pg_ts_config"),
    ("regdictionary", "pg_catalog.pg_ts_dict"),
    ("regcollation", "pg_catalog.pg_collation"),
    ("regnamespace", "pg_catalog.pg_namespace"),
];

/// A column of an extension's configuration table holding OIDs
/// ([`REG_CATALOGS`]): one value, or an array of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegColumn {
    pub extension: String,
    pub schema: String,
    pub table: String,
    pub column: String,
    /// The `reg*` type (the element type of an array).
    pub reg_type: String,
    pub array: bool,
}

/// The columns of `reg*` types (or arrays of them) of the extensions'
/// configuration tables (`pg_extension.extconfig`) this role may read:
/// where an extension keeps the objects it acts on (`periods.periods`'
/// `table_name regclass`).
pub async fn extension_reg_columns(client: &Client) -> Result<Vec<RegColumn>> {
    let types: Vec<&str> = REG_CATALOGS.iter().map(|(t, _)| *t).collect();
    crate::pg::exec::query_map(
        client,
        "SELECT e.extname::text, n.nspname::text, c.relname::text, a.attname::text, et.typname::text,
                a.atttypid <> et.oid
           FROM pg_catalog.pg_extension e
          CROSS JOIN LATERAL pg_catalog.unnest(e.extconfig) AS u(cfg)
           JOIN pg_catalog.pg_class c ON c.oid = u.cfg
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
           JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
           JOIN pg_catalog.pg_type et
             ON et.oid = CASE WHEN t.typelem <> 0 AND t.typlen = -1 THEN t.typelem ELSE t.oid END
          WHERE c.relkind = 'r' AND pg_catalog.has_table_privilege(c.oid, 'SELECT')
            AND et.typnamespace = 'pg_catalog'::regnamespace AND et.typname::text = ANY($1)
          ORDER BY 1, 2, 3, a.attnum",
        &[&types],
        "listing the extensions' configuration tables that name objects",
        |r| RegColumn {
            extension: r.get(0),
            schema: r.get(1),
            table: r.get(2),
            column: r.get(3),
            reg_type: r.get(4),
            array: r.get(5),
        },
    )
    .await
}

/// One object a [`RegColumn`] names: its type and identity
/// (`pg_identify_object`: `table`, `public.ledger`), and its schema and
/// name (a table's, a kept one's key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub kind: String,
    pub identity: String,
    pub schema: Option<String>,
    pub name: Option<String>,
}

/// The objects of `schemas` (extensions' members aside: they stay where
/// the extension is) that column `col` of its table names, any table's
/// column of a `reg*` type or array (its own rows: `ONLY`), by type and
/// identity. A schema of `schemas` named by a `regnamespace` is one too.
pub async fn reg_values_in(
    client: &Client,
    col: &RegColumn,
    schemas: &[String],
) -> Result<Vec<Named>> {
    let Some((_, catalog)) = REG_CATALOGS.iter().find(|(t, _)| *t == col.reg_type) else {
        return Ok(Vec::new());
    };
    let value = format!("t.{}", quote_ident(&col.column));
    let values = if col.array {
        value
    } else {
        format!("ARRAY[{value}]")
    };
    // The catalog is one of REG_CATALOGS, the column and table quoted.
    crate::pg::exec::query_map(
        client,
        &format!(
            "SELECT DISTINCT o.type, o.identity, a.object_names[1], a.object_names[2]
               FROM ONLY {rel} t
              CROSS JOIN LATERAL pg_catalog.unnest({values}) AS v(x)
               JOIN {catalog} k ON k.oid = v.x::oid
              CROSS JOIN LATERAL pg_catalog.pg_identify_object('{catalog}'::regclass, k.oid, 0) o
              CROSS JOIN LATERAL pg_catalog.pg_identify_object_as_address('{catalog}'::regclass, k.oid, 0) a
              -- (pg_identify_object quotes the schema's name; a schema has none)
              WHERE COALESCE(o.schema, o.identity) IN (SELECT pg_catalog.quote_ident(s) FROM pg_catalog.unnest($1::text[]) s)
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
                                 WHERE e.classid = '{catalog}'::regclass AND e.objid = k.oid AND e.deptype = 'e')
              ORDER BY 1, 2",
            rel = crate::pg::ident::qualified(&col.schema, &col.table),
        ),
        &[&schemas],
        "reading an extension's configuration table",
        |r| Named {
            kind: r.get(0),
            identity: r.get(1),
            schema: r.get(2),
            name: r.get(3),
        },
    )
    .await
}

/// The destination's extensions' configuration tables that name objects
/// of the migrated `schemas` by OID (`periods.periods` naming
/// `public.ledger`): after the swap (or the rollback: `op`) those OIDs are
/// the backup's objects, which the extension goes on acting on instead of
/// the new ones (periods' `UPDATE ledger` failed: no period on the new
/// table), and a cleanup of that backup drops them from under it. Nothing
/// pgshift does can re-point them: the extension's own functions register
/// the new objects. `kept`: tables that stay live (their keys, `name` in
/// public, `schema.name` elsewhere).
pub async fn extension_config_refs(
    client: &Client,
    schemas: &[String],
    op: &str,
    kept: &BTreeSet<String>,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for col in extension_reg_columns(client).await? {
        let named: Vec<String> = reg_values_in(client, &col, schemas)
            .await?
            .into_iter()
            .filter(|n| match (&n.schema, &n.name) {
                (Some(s), Some(t)) if n.kind.ends_with("table") => {
                    !kept.contains(&meta::table_display(s, t))
                }
                _ => true,
            })
            .map(|n| {
                if n.kind == "schema" {
                    format!("schema {} (if the {op} renames the schemas)", n.identity)
                } else {
                    format!("{} {}", n.kind, n.identity)
                }
            })
            .collect();
        if named.is_empty() {
            continue;
        }
        let one = named.len() == 1;
        out.push(format!(
            "extension {}: column {} of its configuration table {} names {} by OID; after the {op} {} the backup's {}, which the extension then acts on instead of the new {}, and a cleanup of that backup drops {} from under the extension: register the new {} with it again after the {op}",
            display_ident(&col.extension),
            display_ident(&col.column),
            qualified_display(&col.schema, &col.table),
            list_some(&named),
            if one { "it names" } else { "they name" },
            if one { "copy" } else { "copies" },
            if one { "one" } else { "ones" },
            if one { "it" } else { "them" },
            if one { "one" } else { "ones" },
        ));
    }
    Ok(out)
}

/// The warning for an extension whose version differs: the shadow uses the
/// destination's copy, so what only the source's version has (a type, an
/// operator) fails the restore, naming it; the way forward when the
/// destination's server can update to the source's version.
async fn version_warning(dst: &Client, name: &str, source: &str, dest: &str) -> Result<String> {
    let row = dst
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension_update_paths($1) WHERE source = $3 AND target = $2 AND path IS NOT NULL),
                    EXISTS (SELECT 1 FROM pg_catalog.pg_extension_update_paths($1) WHERE source = $2 AND target = $3 AND path IS NOT NULL)",
            &[&name, &source, &dest],
        )
        .await
        .with_context(|| format!("reading the update paths of extension {name}"))?;
    let (to_source, from_source): (bool, bool) = (row.get(0), row.get(1));
    let update = format!(
        "ALTER EXTENSION {} UPDATE TO {}",
        display_ident(name),
        crate::pg::ident::quote_literal(source)
    );
    let advice = if to_source {
        format!(
            "the shadow uses the destination's, so what only the source's has fails the restore: {update} on the destination first"
        )
    } else if from_source {
        "the shadow uses the destination's (newer)".to_string()
    } else {
        format!(
            "the shadow uses the destination's, so what only the source's has fails the restore; the destination's server offers no update between the two: if the source's is the newer, install it there, then {update}"
        )
    };
    Ok(format!(
        "extension {name} is version {source} on the source and {dest} on the destination: {advice}"
    ))
}

/// Decide what to do for each source extension; fails if one is missing on the
/// destination and not available, or lives in another schema there.
pub async fn plan_extensions(
    src_exts: &[ExtensionInfo],
    dst: &Client,
) -> Result<(Vec<ExtensionPlan>, Vec<String>)> {
    let dst_exts = catalog::extensions(dst).await?;
    let mut plans = Vec::new();
    let mut warnings = Vec::new();
    let mut problems = Vec::new();
    for e in src_exts {
        match dst_exts.iter().find(|d| d.name == e.name) {
            Some(d) if d.schema != e.schema => problems.push(format!(
                "extension {} is in schema {} on the source but in {} on the destination; the source's objects name its types and functions by schema: put it in the same schema on both sides (ALTER EXTENSION … SET SCHEMA where the extension allows it, as PostGIS 3 does not: there, drop it and create it in that schema, with what depends on it)",
                e.name, e.schema, d.schema
            )),
            Some(d) => {
                if d.version != e.version {
                    warnings.push(version_warning(dst, &e.name, &e.version, &d.version).await?);
                }
                plans.push(ExtensionPlan {
                    name: e.name.clone(),
                    schema: e.schema.clone(),
                    source_version: e.version.clone(),
                    action: "present".into(),
                });
            }
            None => {
                let available: bool = dst
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = $1)",
                        &[&e.name],
                    )
                    .await?
                    .get(0);
                let schema_exists = catalog::schema_exists(dst, &e.schema).await?;
                if !available {
                    problems.push(format!(
                        "extension {} is installed on the source but not available on the destination server (install its package there)",
                        e.name
                    ));
                } else if !schema_exists {
                    problems.push(format!(
                        "extension {} lives in schema {} on the source, which does not exist on the destination",
                        e.name, e.schema
                    ));
                } else if !may_create_extension(dst, &e.name).await? {
                    problems.push(format!(
                        "extension {} is missing on the destination, and creating it takes a superuser (it is not a trusted extension): have one run CREATE EXTENSION {} WITH SCHEMA {} there, then prepare again",
                        e.name,
                        display_ident(&e.name),
                        display_ident(&e.schema)
                    ));
                } else {
                    plans.push(ExtensionPlan {
                        name: e.name.clone(),
                        schema: e.schema.clone(),
                        source_version: e.version.clone(),
                        action: "create".into(),
                    });
                }
            }
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok((plans, warnings))
}

/// Whether this role may create extension `name` (its default version): a
/// superuser may, and so may a role that may create in the database when
/// the version is trusted or needs no superuser.
async fn may_create_extension(dst: &Client, name: &str) -> Result<bool> {
    Ok(dst
        .query_one(
            "SELECT COALESCE((SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user), false)
                 OR COALESCE((SELECT v.trusted OR NOT v.superuser
                                FROM pg_catalog.pg_available_extension_versions v
                                JOIN pg_catalog.pg_available_extensions a ON a.name = v.name AND a.default_version = v.version
                               WHERE v.name = $1), true)",
            &[&name],
        )
        .await
        .context("checking who may create an extension")?
        .get(0))
}

/// Create the missing extensions (the first change prepare makes). Each one in
/// its own statement so a permission error names it.
pub async fn create_extensions(dst: &Client, plans: &[ExtensionPlan]) -> Result<Vec<String>> {
    let mut created = Vec::new();
    for p in plans.iter().filter(|p| p.action == "create") {
        let sql = format!(
            "CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {}",
            quote_ident(&p.name),
            quote_ident(&p.schema)
        );
        dst.batch_execute(&sql).await.map_err(|e| {
            anyhow::anyhow!(
                "extension {} is missing on the destination and could not be created: {}",
                p.name,
                crate::pg::conn::connect::describe_pg_error(&e)
            )
        })?;
        tracing::info!(extension = %p.name, schema = %p.schema, "created extension on the destination");
        created.push(p.name.clone());
    }
    Ok(created)
}

/// What an earlier run left on the destination, and what prepare will do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    /// Nothing there.
    None,
    /// An earlier run died or failed; its objects are dropped and prepare starts over.
    StartOver(String),
}

/// Decide about leftovers: refuse a foreign shadow and a complete prepared
/// migration; start over after a dead or failed run.
pub async fn leftovers(dst: &Client) -> Result<Leftover> {
    meta::meta_exists(dst).await?; // refuses a foreign pgshift schema
    let d = Destination::observe(dst).await?;
    if matches!(d.shadow.state, ShadowState::Foreign(_)) {
        return Err(UserError::new(
            "the destination already has a schema named \"shadow\" that pgshift did not create; rename or drop it first",
        )
        .into());
    }
    let row = d.row.as_ref();
    let prepared = matches!(d.state, State::Prepared | State::Swapping) && d.shadow.ours();
    match row {
        Some(m) if prepared => Err(crate::user_error!(
            "a migration is already prepared on the destination (id {}, prepared {}); run `pgshift swap` to finish it or `pgshift abort` to drop it",
            m.id,
            m.state.updated_at.format("%Y-%m-%d %H:%M:%S UTC")
        )),
        // It lost the run lock (its session was terminated) but runs on.
        Some(m)
            if m.state.status == Status::Preparing
                && crate::process::pgshift_runs_here(
                    m.state.pid,
                    &m.state.host,
                    &["prepare", "start"],
                ) =>
        {
            Err(anyhow::anyhow!(
                "the previous prepare (id {}, pid {} on this host) still runs, though it no longer holds the run lock (its destination session ended); it stops within seconds: wait for it (or stop it), then prepare again; nothing was changed",
                m.id,
                m.state.pid
            ))
        }
        Some(m) if m.state.status == Status::Preparing => Ok(Leftover::StartOver(format!(
            "the previous prepare (id {}, pid {} on {}) stopped during phase {} without finishing; dropping what it left and starting over with a new snapshot",
            m.id,
            m.state.pid,
            m.state.host,
            m.state.phase.map(|p| p.as_str()).unwrap_or("?")
        ))),
        _ if !d.objects.is_empty() => Ok(Leftover::StartOver(
            "found objects of an earlier migration (shadow schema, sync triggers, changelogs or trigger functions); dropping them and starting over".into(),
        )),
        _ => Ok(Leftover::None),
    }
}

/// The first five of `items` (named for people already) and how many more:
/// "a, b, c, d, e and 4 more".
pub fn list_some(items: &[String]) -> String {
    list_first(items, 5)
}

/// The first `n` of `items` and how many more: "a, b, c and 4 more".
pub fn list_first(items: &[String], n: usize) -> String {
    let shown: Vec<&str> = items.iter().take(n).map(String::as_str).collect();
    if items.len() > n {
        format!("{} and {} more", shown.join(", "), items.len() - n)
    } else {
        shown.join(", ")
    }
}

use crate::pg::catalog::schema_exists as exists;

/// The chosen schemas (`--schemas`), checked against both databases: each
/// exists on one side at least, none is pgshift's own, and a schema named like
/// one of their shadows exists only if pgshift made it. Returns warnings for
/// schemas the chosen ones reference that the destination lacks (they are
/// not migrated: references to them stay as they are).
pub async fn check_schemas(schemas: &[String], src: &Client, dst: &Client) -> Result<Vec<String>> {
    for s in schemas {
        if !exists(src, s).await? && !exists(dst, s).await? {
            crate::refuse!(
                "--schemas: schema {} exists neither on the source nor on the destination",
                display_ident(s)
            );
        }
    }
    let ours: std::collections::HashMap<String, bool> =
        meta::other_shadows(dst).await?.into_iter().collect();
    for p in meta::schema_pairs(schemas) {
        if p.live != meta::PUBLIC && ours.get(&p.shadow) == Some(&false) {
            crate::refuse!(
                "the destination already has a schema named {} that pgshift did not create (it would be the shadow of {}); rename or drop it first",
                display_ident(&p.shadow),
                display_ident(&p.live)
            );
        }
    }
    // A partition (or inheritance child) and its parent are migrated together
    // or not at all: a child restored without its parent would attach to the
    // destination's live parent; a parent swapped without its children would
    // take them into its backup.
    let split: Vec<String> = crate::pg::exec::column(
        src,
        "SELECT pg_catalog.format('%I.%I is a partition (or child) of %I.%I, and %I is not migrated',
                                  cn.nspname, c.relname, pn.nspname, p.relname,
                                  CASE WHEN cn.nspname = ANY($1) THEN pn.nspname ELSE cn.nspname END)
           FROM pg_catalog.pg_inherits i
           JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
           JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
           JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
           JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
          WHERE (cn.nspname = ANY($1)) <> (pn.nspname = ANY($1)) AND c.relkind IN ('r', 'p', 'f')
          ORDER BY 1",
        &[&schemas],
    )
    .await?;
    if let Some(first) = split.first() {
        let more = match split.len() {
            1 => String::new(),
            n => format!(" ({} more like it)", n - 1),
        };
        crate::refuse!(
            "--schemas: {first}{more}; add that schema to --schemas; nothing was changed"
        );
    }
    // Schemas the chosen ones depend on (types, functions, tables, sequences
    // of other schemas) that the destination lacks.
    let rows = src
        .query(
            &format!(
                "SELECT DISTINCT rn.nspname::text
                   FROM pg_catalog.pg_depend d
                   JOIN LATERAL pg_catalog.pg_identify_object(d.refclassid, d.refobjid, 0) r ON true
                   -- (pg_identify_object quotes the schema's name)
                   JOIN pg_catalog.pg_namespace rn ON pg_catalog.quote_ident(rn.nspname) = r.schema
                  WHERE d.deptype = 'n' AND NOT (rn.nspname = ANY($1))
                    AND rn.nspname NOT IN ('pg_catalog', 'information_schema') AND rn.nspname NOT LIKE 'pg\\_toast%'
                    AND {} = ANY($1)
                    -- An extension's members come with the extension.
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
                                     WHERE e.classid = d.classid AND e.objid = d.objid AND e.deptype = 'e')
                  ORDER BY 1",
                crate::swap::rollback::DEPENDENT_SCHEMA
            ),
            &[&schemas],
        )
        .await
        .map_err(|e| crate::pg::exec::pg_error_as(e, "listing the schemas the chosen ones reference"))?;
    let mut warnings = Vec::new();
    let mut present = Vec::new();
    for r in rows {
        let s: String = r.get(0);
        if exists(dst, &s).await? {
            present.push(s);
        } else {
            warnings.push(format!(
                "the chosen schemas reference schema {} of the source, which is not migrated and does not exist on the destination; those references will fail",
                display_ident(&s)
            ));
        }
    }
    warnings.extend(missing_outside(src, dst, schemas, &present).await?);
    Ok(warnings)
}

/// The functions, types and relations of `outside` (schemas not migrated that
/// both sides have) that the chosen schemas use on the source and the
/// destination lacks (an older version of the application's schema `r`
/// without a trigger function the new one calls): prepare fails where it
/// creates what uses them, after the data copy; said up front, in the dry run
/// too. A warning, not a refusal: a filter may leave the user out.
async fn missing_outside(
    src: &Client,
    dst: &Client,
    schemas: &[String],
    outside: &[String],
) -> Result<Vec<String>> {
    if outside.is_empty() {
        return Ok(Vec::new());
    }
    let used: Vec<(String, String, String, String)> = crate::pg::exec::query_map(
        src,
        &format!(
            "SELECT DISTINCT rn.nspname::text, r.type, r.identity,
                    CASE d.refclassid WHEN 'pg_catalog.pg_proc'::regclass THEN 'p'
                                      WHEN 'pg_catalog.pg_type'::regclass THEN 't' ELSE 'c' END
               FROM pg_catalog.pg_depend d
               JOIN LATERAL pg_catalog.pg_identify_object(d.refclassid, d.refobjid, 0) r ON true
               JOIN pg_catalog.pg_namespace rn ON pg_catalog.quote_ident(rn.nspname) = r.schema
              WHERE d.deptype = 'n' AND rn.nspname = ANY($2)
                AND d.refclassid IN ('pg_catalog.pg_proc'::regclass, 'pg_catalog.pg_type'::regclass,
                                     'pg_catalog.pg_class'::regclass)
                AND {} = ANY($1)
                -- An extension's members come with the extension.
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
                                 WHERE e.classid = d.classid AND e.objid = d.objid AND e.deptype = 'e')
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
                                 WHERE e.classid = d.refclassid AND e.objid = d.refobjid AND e.deptype = 'e')
                -- (nor the array type of an extension's type: prepare creates
                -- an extension the destination lacks, and its types' arrays)
                AND {}
              ORDER BY 1, 2, 3",
            crate::swap::rollback::DEPENDENT_SCHEMA,
            catalog::NOT_EXT_ARRAY_REF
        ),
        &[&schemas, &outside],
        "listing what the chosen schemas use of schemas not migrated",
        |r| (r.get(0), r.get(1), r.get(2), r.get(3)),
    )
    .await?;
    if used.is_empty() {
        return Ok(Vec::new());
    }
    let (kinds, names): (Vec<String>, Vec<String>) =
        used.iter().map(|u| (u.3.clone(), u.2.clone())).unzip();
    let found: Vec<bool> = crate::pg::exec::column(
        dst,
        "SELECT CASE u.k WHEN 'p' THEN pg_catalog.to_regprocedure(u.n) IS NOT NULL
                         WHEN 't' THEN pg_catalog.to_regtype(u.n) IS NOT NULL
                         ELSE pg_catalog.to_regclass(u.n) IS NOT NULL END
           FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) WITH ORDINALITY AS u(k, n, i)
          ORDER BY u.i",
        &[&kinds, &names],
    )
    .await?;
    let mut by_schema: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for (u, found) in used.iter().zip(found) {
        if !found {
            by_schema
                .entry(u.0.as_str())
                .or_default()
                .push(format!("{} {}", u.1, u.2));
        }
    }
    Ok(by_schema
        .into_iter()
        .map(|(s, missing)| {
            format!(
                "the chosen schemas use {} of schema {}, which is not migrated and the destination lacks: prepare will fail where it creates what uses them (create them on the destination first, or add schema {} to --schemas)",
                list_some(&missing),
                display_ident(s),
                display_ident(s)
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(r: &[(&str, &str)]) -> Vec<(String, String)> {
        r.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn config_rows_tell_missing_from_differing_by_key_only() {
        let theirs = rows(&[("1", "a"), ("2", "b"), ("3", "c")]);
        let ours = rows(&[("1", "a"), ("2", "x")]);
        assert_eq!(compare_rows(&theirs, &ours, true), (1, 1));
        // Without a key a changed row cannot be told from a missing one
        // (each row's key hash is its whole row's).
        let theirs = rows(&[("a", "a"), ("b", "b")]);
        let ours = rows(&[("a", "a"), ("x", "x")]);
        assert_eq!(compare_rows(&theirs, &ours, false), (1, 0));
        assert_eq!(config_rows_warning("e", "t", &[], 0, 0), None);
        let w = config_rows_warning("e", "t", &[], 2, 0).unwrap();
        assert!(w.contains("2 rows the source added to its configuration table t are not on the destination, or are there with other values (the table has no primary key to tell which)"), "{w}");
        let key = ["id".to_string(), "Kind".to_string()];
        let w = config_rows_warning("e", "t", &key, 2, 1).unwrap();
        assert!(w.starts_with("extension e: of the rows the source added to its configuration table t, 2 rows are not on the destination and 1 row has other values there (the same id, \"Kind\")"), "{w}");
    }

    #[test]
    fn locales_compare_by_what_orders_and_classes_text() {
        let db = |provider: &str, collate: &str, ctype: &str, locale: &str| DbLocale {
            encoding: "UTF8".into(),
            provider: provider.into(),
            collate: collate.into(),
            ctype: ctype.into(),
            locale: locale.into(),
        };
        let a = db("c", "en_US.UTF-8", "en_US.UTF-8", "");
        let b = db("c", "en_US.utf8", "en_US.utf8", "");
        assert_eq!(
            (a.collation().0, a.ctype().0),
            (b.collation().0, b.ctype().0)
        );
        assert_eq!(a.collation().1, "en_US.UTF-8 (libc)");
        // C.UTF-8 orders as C does, and classes characters otherwise.
        let (c, cu) = (db("c", "C", "C", ""), db("c", "C.UTF-8", "C.UTF-8", ""));
        assert_eq!(c.collation().0, cu.collation().0);
        assert_ne!(c.ctype().0, cu.ctype().0);
        assert_eq!(db("c", "POSIX", "POSIX", "").collation().0, c.collation().0);
        // An ICU database orders by its ICU locale, whatever LC_COLLATE says.
        let icu = db("i", "C", "C", "en-US");
        assert_ne!(icu.collation().0, c.collation().0);
        assert_eq!(icu.collation().1, "en-US (ICU)");
        assert_eq!(
            icu.collation().0,
            db("i", "en_US.utf8", "en_US.utf8", "en-US").collation().0
        );
    }
}
