//! Owners and privileges of the shadow, so application roles keep access after
//! the swap.
//!
//! The restore runs with `--no-owner --no-privileges`, so shadow objects belong
//! to the connecting user and carry no grants. Then, for each shadow object
//! with a same-named object in the destination's public (relations, functions,
//! types, and the objects that have an owner but no privileges: collations,
//! conversions, text search configurations and dictionaries, statistics,
//! operators, operator classes and families): the owner becomes that object's
//! owner and its grants (table and column privileges, function EXECUTE, type
//! USAGE) are replayed. With
//! `--keep-source-owners`, relations take the source's owner where that role
//! exists on the destination. Each new owner first gets CREATE on the shadow:
//! without superuser, `ALTER … OWNER TO r` needs r to be able to create in the
//! object's schema (and this role to be a member of r).
//!
//! Objects the destination does not have yet (no same-named object) follow
//! the source instead: its owner, where that role exists on the destination
//! and this role is a member of it, and its grants to the roles the
//! destination has. So a new function whose EXECUTE the source revoked from
//! PUBLIC does not arrive executable by everyone, and a new table keeps the
//! application roles' access. So do the columns a same-named table gains in
//! the new version: the destination has no grants on them to follow, they
//! take the source's.
//!
//! Either way the shadow object's ACL is *levelled* to its model's (GRANT
//! what is missing, REVOKE what is extra), never only added to: the restore
//! creates the objects as this role, so the destination's default privileges
//! for this role are already on them, and would otherwise expose a new table
//! to a role the source never granted or take EXECUTE from PUBLIC.
//!
//! The dry run runs the same plan with the source's objects standing for the
//! shadow's, as the restore will create them ([`foresee`]), and keeps only
//! its warnings: an owner it may not give, a grantee the destination lacks.
//!
//! Owners and grants go on changing while a migration waits to be swapped:
//! just before the swap, [`catch_up`] compares each live object's owner and
//! grants with its shadow namesake's and levels the difference (owners not
//! when prepare kept the source's), so what changed since prepare holds after
//! the swap too.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use anyhow::{Context, Result};
use tokio_postgres::{Client, Row};

use crate::pg::batch;
use crate::pg::catalog::not_ext_member;
use crate::pg::ident::{display_ident, qualified, quote_ident};

/// What the phase did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Applied {
    pub owners_changed: usize,
    pub grants: usize,
    pub warnings: Vec<String>,
}

#[derive(Clone)]
struct Obj {
    /// `TABLE`, `VIEW`, `MATERIALIZED VIEW`, `SEQUENCE`, `FOREIGN TABLE`, `FUNCTION`, `PROCEDURE`, `TYPE`, `DOMAIN`
    kind: &'static str,
    /// Name to match across schemas (functions: name + normalised arguments).
    key: String,
    /// SQL to name the object (quoted, qualified).
    sql_name: String,
    owner: String,
    /// aclexplode rows: (grantee or "" for PUBLIC, privilege, grantable)
    acl: Option<Vec<(String, String, bool)>>,
    /// Column grants: (column, grantee, privilege, grantable)
    column_acl: Vec<(String, String, String, bool)>,
    /// A relation's columns (column grants go to those the other side has).
    columns: Vec<String>,
    /// Sequences owned by a column follow their table's owner.
    owned_sequence: bool,
    /// A function PostgreSQL makes with a type (a range type's
    /// constructors), owned by the bootstrap superuser whoever creates it.
    made_with_type: bool,
}

impl Obj {
    /// The object as people know it: by its name in the live schema `live`
    /// (functions with their arguments), not the shadow's quoted one.
    fn shown(&self, live: &str) -> String {
        let (kind, name) = self.key.split_once(':').unwrap_or(("", &self.key));
        let name = match kind {
            // Its arguments are already as PostgreSQL prints them.
            "fn" => name.to_string(),
            _ => crate::pg::ident::display_ident(name),
        };
        if live == crate::pg::meta::PUBLIC {
            name
        } else {
            format!("{}.{name}", crate::pg::ident::display_ident(live))
        }
    }
}

/// An ACL column as text rows `grantee|privilege|grantable` (`aclexplode`;
/// an empty grantee is PUBLIC).
fn acl_rows(column: &str) -> String {
    format!(
        "COALESCE((SELECT array_agg(COALESCE(r.rolname, '') || '|' || a.privilege_type || '|' || a.is_grantable::text)
                     FROM aclexplode({column}) a LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee), '{{}}')"
    )
}

/// The rows of `sql` about the objects of `schema` (`$1`) that belong to no
/// extension: `sql` ends in its WHERE clause, `not_ext` is the
/// [`not_ext_member!`] condition of its objects.
async fn rows_of(
    client: &Client,
    schema: &str,
    what: &str,
    sql: &str,
    not_ext: &str,
) -> Result<Vec<Row>> {
    client
        .query(&format!("{sql}\n AND {not_ext}"), &[&schema])
        .await
        .with_context(|| format!("reading {what} owners and privileges"))
}

/// The grants of an object from its row: `None` when the ACL is null (the
/// owner's defaults), else the `acl_rows` at `at`.
fn grants(r: &Row, has_acl: usize, at: usize) -> Option<Vec<(String, String, bool)>> {
    let acl: Vec<String> = r.get(at);
    r.get::<_, bool>(has_acl)
        .then(|| acl.iter().filter_map(|a| split3(a)).collect())
}

async fn objects(client: &Client, schema: &str) -> Result<Vec<Obj>> {
    let mut out = Vec::new();
    let rels = rows_of(
        client,
        schema,
        "relation",
        &format!(
            "SELECT c.relname, c.relkind::text, pg_catalog.pg_get_userbyid(c.relowner)::text,
                    c.relacl IS NOT NULL,
                    {acl},
                    COALESCE((SELECT array_agg(att.attname || '|' || COALESCE(r.rolname, '') || '|' || a.privilege_type || '|' || a.is_grantable::text)
                                FROM pg_catalog.pg_attribute att, aclexplode(att.attacl) a
                                LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
                               WHERE att.attrelid = c.oid AND att.attacl IS NOT NULL AND NOT att.attisdropped), '{{}}'),
                    EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                             AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')),
                    ARRAY(SELECT att.attname::text FROM pg_catalog.pg_attribute att
                           WHERE att.attrelid = c.oid AND att.attnum > 0 AND NOT att.attisdropped)
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')",
            acl = acl_rows("c.relacl"),
        ),
        not_ext_member!("pg_class", "c.oid"),
    )
    .await?;
    for r in rels {
        let name: String = r.get(0);
        let kind = match r.get::<_, String>(1).as_str() {
            "v" => "VIEW",
            "m" => "MATERIALIZED VIEW",
            "S" => "SEQUENCE",
            "f" => "FOREIGN TABLE",
            _ => "TABLE",
        };
        let cols: Vec<String> = r.get(5);
        out.push(Obj {
            kind,
            key: format!("rel:{name}"),
            sql_name: qualified(schema, &name),
            owner: r.get(2),
            acl: grants(&r, 3, 4),
            column_acl: cols
                .iter()
                .filter_map(|a| {
                    let mut it = a.rsplitn(4, '|');
                    let grantable = it.next()? == "true";
                    let privilege = it.next()?.to_string();
                    let grantee = it.next()?.to_string();
                    let column = it.next()?.to_string();
                    Some((column, grantee, privilege, grantable))
                })
                .collect(),
            owned_sequence: kind == "SEQUENCE" && r.get::<_, bool>(6),
            columns: r.get(7),
            made_with_type: false,
        });
    }
    let funcs = rows_of(
        client,
        schema,
        "function",
        &format!(
            "SELECT p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid), p.oid::regprocedure::text,
                    p.prokind::text, pg_catalog.pg_get_userbyid(p.proowner)::text, p.proacl IS NOT NULL,
                    {acl},
                    EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                             AND d.objid = p.oid AND d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass AND d.deptype = 'i')
               FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = $1",
            acl = acl_rows("p.proacl"),
        ),
        not_ext_member!("pg_proc", "p.oid"),
    )
    .await?;
    for r in funcs {
        let name: String = r.get(0);
        let args: String = r.get(1);
        let kind = match r.get::<_, String>(3).as_str() {
            "p" => "PROCEDURE",
            "a" => "AGGREGATE",
            _ => "FUNCTION",
        };
        out.push(Obj {
            kind,
            // Argument types of the schema itself print qualified (search_path is empty).
            key: format!("fn:{name}({})", args.replace(&format!("{schema}."), "")),
            sql_name: r.get(2),
            owner: r.get(4),
            acl: grants(&r, 5, 6),
            column_acl: Vec::new(),
            columns: Vec::new(),
            owned_sequence: false,
            made_with_type: r.get(7),
        });
    }
    let types = rows_of(
        client,
        schema,
        "type",
        &format!(
            "SELECT t.typname, t.typtype::text, pg_catalog.pg_get_userbyid(t.typowner)::text, t.typacl IS NOT NULL,
                    {acl}
               FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
              WHERE n.nspname = $1 AND t.typtype IN ('b', 'c', 'd', 'e', 'r')
                AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid) = 'c')
                AND NOT (t.typelem <> 0 AND t.typlen = -1)",
            acl = acl_rows("t.typacl"),
        ),
        not_ext_member!("pg_type", "t.oid"),
    )
    .await?;
    for r in types {
        let name: String = r.get(0);
        out.push(Obj {
            kind: if r.get::<_, String>(1) == "d" {
                "DOMAIN"
            } else {
                "TYPE"
            },
            key: format!("type:{name}"),
            sql_name: qualified(schema, &name),
            owner: r.get(2),
            acl: grants(&r, 3, 4),
            column_acl: Vec::new(),
            columns: Vec::new(),
            owned_sequence: false,
            made_with_type: false,
        });
    }
    // Objects with an owner and no privileges (collations, text search
    // configurations, operators, …): their owner only.
    for (kind, name, sql_name, owner) in crate::pg::objects::owned_only(client, schema).await? {
        out.push(Obj {
            kind,
            key: format!("{}:{name}", kind.to_ascii_lowercase()),
            sql_name,
            owner,
            acl: None,
            column_acl: Vec::new(),
            columns: Vec::new(),
            owned_sequence: false,
            made_with_type: false,
        });
    }
    Ok(out)
}

fn split3(a: &str) -> Option<(String, String, bool)> {
    let mut it = a.rsplitn(3, '|');
    let grantable = it.next()? == "true";
    let privilege = it.next()?.to_string();
    let grantee = it.next()?.to_string();
    Some((grantee, privilege, grantable))
}

fn grantee_sql(g: &str) -> String {
    if g.is_empty() {
        "PUBLIC".to_string()
    } else {
        quote_ident(g)
    }
}

/// The ALTER keyword for an object kind: aggregates are named by their
/// `regprocedure` text, which writes an aggregate over `(*)` as `cnt()`;
/// ALTER AGGREGATE refuses that, ALTER FUNCTION takes every aggregate.
fn alter_kind(kind: &str) -> &str {
    match kind {
        "AGGREGATE" => "FUNCTION",
        k => k,
    }
}

/// The GRANT object class for an object kind.
fn grant_kind(kind: &str) -> &str {
    match kind {
        "VIEW" | "MATERIALIZED VIEW" | "FOREIGN TABLE" => "TABLE",
        "AGGREGATE" => "FUNCTION",
        k => k,
    }
}

/// The destination's roles as [`roles`] reads them.
struct Roles {
    all: HashSet<String>,
    /// Those this role may give objects to (a member of them, or superuser).
    assignable: HashSet<String>,
    /// Those whose privileges this role has (an inheriting member): it may
    /// GRANT and REVOKE on their objects. A member only through a NOINHERIT
    /// role may give an object to one of them and then not grant on it.
    actable: HashSet<String>,
}

async fn roles(client: &Client) -> Result<Roles> {
    let mut roles = Roles {
        all: HashSet::new(),
        assignable: HashSet::new(),
        actable: HashSet::new(),
    };
    for r in client
        .query(
            "SELECT rolname::text, pg_catalog.pg_has_role(oid, CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 160000 THEN 'SET' ELSE 'MEMBER' END),
                    pg_catalog.pg_has_role(oid, 'USAGE')
               FROM pg_catalog.pg_roles",
            &[],
        )
        .await?
    {
        let name: String = r.get(0);
        if r.get::<_, bool>(1) {
            roles.assignable.insert(name.clone());
        }
        if r.get::<_, bool>(2) {
            roles.actable.insert(name.clone());
        }
        roles.all.insert(name);
    }
    Ok(roles)
}

/// Build the statements; `source`: a session on the source, whose `public`
/// (the live schema's namesake) models the objects the destination lacks and,
/// with `keep_source_owners` (`--keep-source-owners`), gives every object
/// (relations, functions, types) its owner there where the destination has
/// that role and this role may give objects to it.
pub async fn plan(
    client: &Client,
    shadow: &str,
    public: &str,
    keep_source_owners: bool,
    source: Option<&Client>,
) -> Result<(Vec<String>, Applied)> {
    plan_for(
        client,
        Shadow::Restored(shadow),
        public,
        keep_source_owners,
        source,
    )
    .await
}

/// What the shadow of `public` holds when its owners and grants are planned.
enum Shadow<'a> {
    /// Restored, in the schema of this name.
    Restored(&'a str),
    /// Not yet (a dry run): the source's objects stand for it, but those not
    /// migrated (the filters' table keys), each as the restore will create
    /// it: owned by this role, a range type's constructors by the bootstrap
    /// superuser.
    Foreseen(&'a BTreeSet<String>),
}

/// The warnings [`apply`] will give for `public`, before anything is
/// restored, for the dry run: `not_migrated` as the filters resolved it.
pub async fn foresee(
    dest: &Client,
    src: &Client,
    public: &str,
    keep_source_owners: bool,
    not_migrated: &BTreeSet<String>,
) -> Result<Vec<String>> {
    let (_, applied) = plan_for(
        dest,
        Shadow::Foreseen(not_migrated),
        public,
        keep_source_owners,
        Some(src),
    )
    .await?;
    Ok(applied.warnings)
}

async fn plan_for(
    client: &Client,
    shadow: Shadow<'_>,
    public: &str,
    keep_source_owners: bool,
    source: Option<&Client>,
) -> Result<(Vec<String>, Applied)> {
    let from_source: HashMap<String, Obj> = match source {
        Some(src) => objects(src, public)
            .await?
            .into_iter()
            .map(|o| (o.key.clone(), o))
            .collect(),
        None => HashMap::new(),
    };
    client.batch_execute("SET search_path = ''").await?;
    // This role, and the bootstrap superuser (who owns a range type's
    // constructors).
    let who = client
        .query_one(
            "SELECT current_user::text, (SELECT rolname::text FROM pg_catalog.pg_roles WHERE oid = 10)",
            &[],
        )
        .await?;
    let (current, bootstrap): (String, String) = (who.get(0), who.get(1));
    let (ours, shadow) = match shadow {
        Shadow::Restored(name) => (objects(client, name).await?, name),
        Shadow::Foreseen(not_migrated) => {
            let ours = from_source
                .values()
                .filter(|o| {
                    o.key.strip_prefix("rel:").is_none_or(|name| {
                        !not_migrated.contains(&crate::pg::meta::table_display(public, name))
                    })
                })
                .map(|o| Obj {
                    owner: if o.made_with_type {
                        bootstrap.clone()
                    } else {
                        current.clone()
                    },
                    ..o.clone()
                })
                .collect();
            (ours, public)
        }
    };
    let Roles {
        all: roles,
        assignable,
        ..
    } = roles(client).await?;
    let dest_major = crate::pg::catalog::server_major(client).await?;
    let mut missing_grantees: Vec<String> = Vec::new();
    // Grants of a newer source's privileges the destination lacks.
    let mut unknown: Vec<String> = Vec::new();
    // Column grants on columns the source's tables do not have.
    let mut gone_columns: Vec<String> = Vec::new();
    // New objects whose source owner this role may not give them to.
    let mut kept_by_us: Vec<String> = Vec::new();
    // The same, of objects PostgreSQL gave another owner here (a range
    // type's constructors are the bootstrap superuser's, whoever creates the
    // type).
    let mut kept_by_others: Vec<String> = Vec::new();
    // Objects whose source owner (`--keep-source-owners`) this role may not
    // give them to.
    let mut not_given: Vec<String> = Vec::new();
    let theirs: HashMap<String, Obj> = objects(client, public)
        .await?
        .into_iter()
        .map(|o| (o.key.clone(), o))
        .collect();
    let mut sql = Vec::new();
    let mut applied = Applied::default();
    // Whoever may use the destination's public may use the shadow, so the
    // same-named objects are reachable before the swap too.
    let usage: Vec<String> = client
        .query(
            "SELECT DISTINCT COALESCE(r.rolname::text, '')
               FROM pg_catalog.pg_namespace n, aclexplode(n.nspacl) a
               LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
              WHERE n.nspname = $1 AND a.privilege_type = 'USAGE'",
            &[&public],
        )
        .await
        .context("reading the schema privileges of public")?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    for grantee in usage.iter().filter(|g| **g != current) {
        sql.push(format!(
            "GRANT USAGE ON SCHEMA {} TO {}",
            quote_ident(shadow),
            grantee_sql(grantee)
        ));
        applied.grants += 1;
    }
    // A role can only be given an object in a schema it may create in: the
    // new owners get CREATE on the shadow (a swap by renaming drops the
    // shadow's own grants from the schema it becomes; an object-level swap
    // leaves them with the emptied shadow).
    let mut new_owners: Vec<String> = Vec::new();
    // Grants go after every owner change: a table's new owner is given its
    // owned sequences too, and PostgreSQL then rewrites the old owner's
    // entries (this role's) in their ACL as the new owner's, so a grant to
    // this role made on such a sequence before would be lost.
    let mut grants = Vec::new();
    for o in &ours {
        let counterpart = theirs.get(&o.key);
        let source_owner = from_source
            .get(&o.key)
            .filter(|_| keep_source_owners && !o.owned_sequence)
            .map(|m| &m.owner)
            .filter(|r| roles.contains(*r))
            .filter(|r| {
                let ok = *r == &o.owner || assignable.contains(*r);
                if !ok {
                    not_given.push(format!("{} ({r})", o.shown(public)));
                }
                ok
            })
            .cloned();
        // A new object (no namesake on the destination) follows the source.
        let model = counterpart.or_else(|| from_source.get(&o.key));
        let want_owner = source_owner.or_else(|| match counterpart {
            Some(c) => Some(c.owner.clone()),
            None => {
                let m = model?;
                // Already its owner there (a range type's constructors: the
                // bootstrap superuser's on both sides).
                if m.owner == o.owner {
                    return Some(m.owner.clone());
                }
                if !assignable.contains(&m.owner) {
                    if o.owned_sequence {
                        // It follows its table.
                    } else if o.owner == current {
                        kept_by_us.push(format!("{} ({})", o.shown(public), m.owner));
                    } else {
                        kept_by_others.push(format!(
                            "{} ({}; {} here)",
                            o.shown(public),
                            m.owner,
                            o.owner
                        ));
                    }
                    return None;
                }
                Some(m.owner.clone())
            }
        });
        if let Some(owner) = &want_owner
            && owner != &o.owner
            && !o.owned_sequence
        {
            if owner != &current && !new_owners.contains(owner) {
                new_owners.push(owner.clone());
                sql.push(format!(
                    "GRANT CREATE ON SCHEMA {} TO {}",
                    quote_ident(shadow),
                    quote_ident(owner)
                ));
            }
            sql.push(format!(
                "ALTER {} {} OWNER TO {}",
                alter_kind(o.kind),
                o.sql_name,
                quote_ident(owner)
            ));
            applied.owners_changed += 1;
        }
        let owner = want_owner.unwrap_or_else(|| o.owner.clone());
        let Some(c) = model else { continue };
        // The shadow object's own ACL is not empty when the destination has
        // default privileges for this role (ALTER DEFAULT PRIVILEGES FOR ROLE
        // …, applied as the restore created it): levelled to the model's, not
        // added to, so a default grant never exposes a new table and a
        // default REVOKE never takes a function's EXECUTE from PUBLIC. The
        // owner change takes this role's own entries along to the new owner.
        let mut want = effective(c);
        want.retain(|(g, p), _| {
            if g == &owner || g == &c.owner {
                return false;
            }
            if unknown_privilege(dest_major, p) {
                unknown.push(format!("{p} on {} to {}", o.key, grantee_sql(g)));
                return false;
            }
            if !g.is_empty() && !roles.contains(g) {
                let g = display_ident(g);
                if !missing_grantees.contains(&g) {
                    missing_grantees.push(g);
                }
                return false;
            }
            true
        });
        let mut have = effective(o);
        have.retain(|(g, _), _| g != &owner);
        let before = grants.len();
        let on = |p: &str| format!("{p} ON {} {}", grant_kind(o.kind), o.sql_name);
        level(on, &want, &have, &mut grants);
        applied.grants += grants.len() - before;
        // Column grants follow the model; a column the destination's table
        // does not have (new in this version) has no grants there to
        // follow: it takes the source's, as a new table does.
        let new_columns = counterpart
            .and_then(|_| from_source.get(&o.key))
            .into_iter()
            .flat_map(|src| &src.column_acl)
            .filter(|(column, ..)| o.columns.contains(column) && !c.columns.contains(column));
        for (column, grantee, privilege, grantable) in c.column_acl.iter().chain(new_columns) {
            if grantee == &owner {
                continue;
            }
            if !o.columns.contains(column) {
                let col = format!(
                    "{}.{}",
                    o.shown(public),
                    crate::pg::ident::display_ident(column)
                );
                if !gone_columns.contains(&col) {
                    gone_columns.push(col);
                }
                continue;
            }
            if !grantee.is_empty() && !roles.contains(grantee) {
                let g = display_ident(grantee);
                if !missing_grantees.contains(&g) {
                    missing_grantees.push(g);
                }
                continue;
            }
            grants.push(format!(
                "GRANT {privilege} ({}) ON TABLE {} TO {}{}",
                quote_ident(column),
                o.sql_name,
                grantee_sql(grantee),
                if *grantable { " WITH GRANT OPTION" } else { "" }
            ));
            applied.grants += 1;
        }
    }
    sql.append(&mut grants);
    missing_grantees.sort();
    // What was left out or kept back, one warning per kind.
    for (items, lead) in [
        (
            &kept_by_us,
            format!(
                "new objects in {public} belong to {current}, which may not give them to their owner on the source (the owner there in parentheses; a SECURITY DEFINER function runs as its owner)"
            ),
        ),
        (
            &kept_by_others,
            format!(
                "new objects in {public} keep the owner PostgreSQL gave them here, and {current} may not give them to their owner on the source (in parentheses, with their owner here)"
            ),
        ),
        (
            &not_given,
            format!(
                "--keep-source-owners: {current} may not give these objects in {public} to their owner on the source (in parentheses), so they take the owner they would have without it"
            ),
        ),
        (
            &missing_grantees,
            format!(
                "grants of new objects in {public} to roles the destination does not have were left out"
            ),
        ),
        (
            &unknown,
            format!(
                "grants of new objects in {public} that PostgreSQL {dest_major} does not have were left out"
            ),
        ),
        (
            &gone_columns,
            "column privileges of the destination's columns that the source's tables do not have were left out".to_string(),
        ),
    ] {
        if !items.is_empty() {
            applied
                .warnings
                .push(format!("{lead}: {}", items.join(", ")));
        }
    }
    client.batch_execute("RESET search_path").await?;
    Ok((sql, applied))
}

/// A privilege of a newer source's ACL that a destination of `major` does
/// not know, so that granting it would fail the phase: MAINTAIN came with
/// PostgreSQL 17.
fn unknown_privilege(major: u32, privilege: &str) -> bool {
    privilege == "MAINTAIN" && major < 17
}

/// Apply owners and grants, in transactions that stay within the lock table
/// (changing a table's owner locks it with its indexes, TOAST and sequences).
pub async fn apply(
    client: &Client,
    shadow: &str,
    public: &str,
    keep_source_owners: bool,
    source: Option<&Client>,
) -> Result<Applied> {
    let (stmts, applied) = plan(client, shadow, public, keep_source_owners, source).await?;
    if stmts.is_empty() {
        return Ok(applied);
    }
    let opts = batch::Options::for_server(client, "privileges").await?;
    let footprints = batch::Footprints::load(client, shadow).await?;
    let stmts = batch::estimated(stmts, &footprints);
    batch::run(client, &stmts, &opts)
        .await
        .context("applying the destination's owners and privileges to the shadow")?;
    Ok(applied)
}

/// An ACL as (grantee, privilege) -> grantable, without the owner's own
/// entries; a null ACL is the kind's default (PUBLIC may execute functions
/// and use types; nobody but the owner has anything else).
fn effective(o: &Obj) -> BTreeMap<(String, String), bool> {
    match &o.acl {
        Some(acl) => acl
            .iter()
            .filter(|(g, _, _)| g != &o.owner)
            .map(|(g, p, w)| ((g.clone(), p.clone()), *w))
            .collect(),
        None => match o.kind {
            "FUNCTION" | "PROCEDURE" | "AGGREGATE" => {
                BTreeMap::from([((String::new(), "EXECUTE".to_string()), false)])
            }
            "TYPE" | "DOMAIN" => BTreeMap::from([((String::new(), "USAGE".to_string()), false)]),
            _ => BTreeMap::new(),
        },
    }
}

/// The GRANT and REVOKE statements that make `have` equal `want`; `what`
/// names a privilege on the object (`SELECT ON TABLE "shadow"."t"`, `SELECT
/// ("c") ON TABLE …`).
fn level(
    what: impl Fn(&str) -> String,
    want: &BTreeMap<(String, String), bool>,
    have: &BTreeMap<(String, String), bool>,
    sql: &mut Vec<String>,
) {
    for ((g, p), w) in want {
        match have.get(&(g.clone(), p.clone())) {
            Some(h) if h == w => {}
            Some(true) => sql.push(format!(
                "REVOKE GRANT OPTION FOR {} FROM {}",
                what(p),
                grantee_sql(g)
            )),
            _ => sql.push(format!(
                "GRANT {} TO {}{}",
                what(p),
                grantee_sql(g),
                if *w { " WITH GRANT OPTION" } else { "" }
            )),
        }
    }
    for (g, p) in have.keys().filter(|k| !want.contains_key(*k)) {
        sql.push(format!("REVOKE {} FROM {}", what(p), grantee_sql(g)));
    }
}

/// What [`catch_up`] found.
#[derive(Debug, Default)]
pub struct CaughtUp {
    /// The statements that level the shadow's owners and grants.
    pub sql: Vec<String>,
    /// Owners this role may not give objects to.
    pub warnings: Vec<String>,
    /// The objects whose owner or grants differ (`table orders`,
    /// `function f(integer)`), an owner this role may not give included.
    pub differing: Vec<String>,
}

/// What changed on `live`'s objects since prepare copied their owners and
/// grants to their namesakes in `shadow`: the statements that level the
/// shadow's (owners too unless `keep_owners`, as `--keep-source-owners` asked;
/// table, column, function and type privileges), and warnings for owners this
/// role may not give objects to. Reads only: a rollback asks it which of
/// the backup's objects it restores differ from their live namesakes.
pub async fn catch_up(
    client: &Client,
    shadow: &str,
    live: &str,
    keep_owners: bool,
) -> Result<CaughtUp> {
    client.batch_execute("SET search_path = ''").await?;
    let listed = async {
        let theirs: HashMap<String, Obj> = objects(client, live)
            .await?
            .into_iter()
            .map(|o| (o.key.clone(), o))
            .collect();
        let current: String = client
            .query_one("SELECT current_user::text", &[])
            .await?
            .get(0);
        Ok::<_, anyhow::Error>((theirs, objects(client, shadow).await?, current))
    }
    .await;
    client.batch_execute("RESET search_path").await?;
    let (theirs, ours, current) = listed?;
    let roles = roles(client).await?;
    let mut sql = Vec::new();
    let mut warnings = Vec::new();
    let mut create_granted: Vec<String> = Vec::new();
    let mut differing = Vec::new();
    for o in &ours {
        let Some(c) = theirs.get(&o.key) else {
            continue;
        };
        let (statements, warned) = (sql.len(), warnings.len());
        // The owner first: it takes the old owner's entries along.
        let mut have_acl = effective(o);
        // Its grants are levelled after the owner change: that takes the new
        // owner's privileges too (h46a: "permission denied").
        let carried = roles.assignable.contains(&c.owner) && roles.actable.contains(&c.owner);
        // An owner not carried gets the owner's privileges by a grant, so it
        // keeps using what it owned (h47a: "permission denied" after the
        // swap). So does the live owner of a sequence that is a column's in
        // the incoming version: PostgreSQL gives that its table's owner,
        // never carried (h46a: the role that owned it lost it).
        let stand_in = !keep_owners
            && c.owner != o.owner
            && (!carried || o.owned_sequence)
            && matches!(
                o.kind,
                "TABLE"
                    | "VIEW"
                    | "MATERIALIZED VIEW"
                    | "FOREIGN TABLE"
                    | "SEQUENCE"
                    | "FUNCTION"
                    | "PROCEDURE"
                    | "AGGREGATE"
                    | "TYPE"
                    | "DOMAIN"
            );
        if !keep_owners && !o.owned_sequence && c.owner != o.owner {
            if carried {
                if c.owner != current && !create_granted.contains(&c.owner) {
                    create_granted.push(c.owner.clone());
                    sql.push(format!(
                        "GRANT CREATE ON SCHEMA {} TO {}",
                        quote_ident(shadow),
                        quote_ident(&c.owner)
                    ));
                }
                sql.push(format!(
                    "ALTER {} {} OWNER TO {}",
                    alter_kind(o.kind),
                    o.sql_name,
                    quote_ident(&c.owner)
                ));
                have_acl.retain(|(g, _), _| g != &c.owner);
            } else {
                let why = if roles.assignable.contains(&c.owner) {
                    format!(
                        "which this role may give objects to but not act as (it is a member only through a NOINHERIT role; GRANT {} TO {} lets it)",
                        display_ident(&c.owner),
                        display_ident(&current)
                    )
                } else {
                    "which this role may not give objects to".to_string()
                };
                let given = if stand_in {
                    format!(
                        ", and {} gets every privilege on it by a grant instead (it may not alter or drop it)",
                        c.owner
                    )
                } else {
                    String::new()
                };
                warnings.push(format!(
                    "{} {} changed owner to {} since prepare, {why}: the new one keeps {}{given}",
                    o.kind.to_lowercase(),
                    o.sql_name,
                    c.owner,
                    o.owner
                ));
            }
        }
        let on = |p: &str| format!("{p} ON {} {}", grant_kind(o.kind), o.sql_name);
        let want_acl = effective(c);
        level(on, &want_acl, &have_acl, &mut sql);
        if stand_in {
            sql.push(format!("GRANT {} TO {}", on("ALL"), quote_ident(&c.owner)));
        }
        // A table's REVOKE takes its columns' grants of that privilege to
        // that role along: those are not had any more.
        let revoked: BTreeSet<&(String, String)> = have_acl
            .keys()
            .filter(|k| !want_acl.contains_key(*k))
            .collect();
        let columns = |x: &Obj| -> BTreeMap<String, BTreeMap<(String, String), bool>> {
            let mut m: BTreeMap<String, BTreeMap<(String, String), bool>> = BTreeMap::new();
            for (col, g, p, w) in x
                .column_acl
                .iter()
                .filter(|e| e.1 != x.owner && e.1 != c.owner)
            {
                m.entry(col.clone())
                    .or_default()
                    .insert((g.clone(), p.clone()), *w);
            }
            m
        };
        let (mut want, mut have) = (columns(c), columns(o));
        // A column the source's table does not have takes no grant. One the
        // live table does not have keeps the source's, as prepare gave it
        // (granted again where a REVOKE above took it along).
        want.retain(|col, _| o.columns.contains(col));
        for grants in have.values_mut() {
            grants.retain(|k, _| !revoked.contains(k));
        }
        let empty = BTreeMap::new();
        for col in want
            .keys()
            .chain(have.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            let on = |p: &str| format!("{p} ({}) ON TABLE {}", quote_ident(col), o.sql_name);
            let h = have.get(col).unwrap_or(&empty);
            if c.columns.contains(col) {
                level(on, want.get(col).unwrap_or(&empty), h, &mut sql);
            } else {
                let given = columns(o).remove(col).unwrap_or_default();
                level(on, &given, h, &mut sql);
            }
        }
        if sql.len() > statements || warnings.len() > warned {
            let name = o.key.split_once(':').map_or(o.key.as_str(), |(_, n)| n);
            differing.push(format!("{} {name}", o.kind.to_lowercase()));
        }
    }
    Ok(CaughtUp {
        sql,
        warnings,
        differing,
    })
}

#[cfg(test)]
mod tests {
    use super::unknown_privilege;

    #[test]
    fn maintain_is_left_out_below_17_only() {
        assert!(unknown_privilege(16, "MAINTAIN"));
        assert!(unknown_privilege(13, "MAINTAIN"));
        assert!(!unknown_privilege(17, "MAINTAIN"));
        assert!(!unknown_privilege(18, "MAINTAIN"));
        for p in [
            "SELECT",
            "INSERT",
            "UPDATE",
            "DELETE",
            "TRUNCATE",
            "REFERENCES",
            "TRIGGER",
            "EXECUTE",
            "USAGE",
        ] {
            assert!(!unknown_privilege(13, p), "{p}");
        }
    }
}
