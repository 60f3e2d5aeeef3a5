//! Which swap: renaming schemas, or moving objects one by one.
//!
//! **Rename mode** (`public` → `backup_<ts>`, the incoming schema → `public`, a
//! new empty shadow) costs three catalog updates whatever the number of
//! tables. It is possible when:
//!
//! - public holds no member of a non-relocatable extension (PostGIS is not
//!   relocatable: renaming public would take it into the backup). Relocatable
//!   extensions in public are moved into the new public in the same
//!   transaction (`ALTER EXTENSION … SET SCHEMA public`), which needs this
//!   role to have the privileges of the extension's owner and of the owner of
//!   each of its objects (a trusted extension created by a database owner
//!   without superuser is the owner's, its functions and types are not);
//! - this role may rename both schemas (owns them) and give the new public
//!   public's owner, grants, comment and default privileges (is a member of
//!   public's owner and of every role with default privileges in public);
//! - no publication names schema public (`FOR TABLES IN SCHEMA public`
//!   follows the schema's oid, which stays with the backup);
//! - nothing must stay behind (rollback `--keep-tables`).
//!
//! Otherwise the swap is **object-level**: every object moves with
//! `ALTER … SET SCHEMA` and public itself stays, with its extensions,
//! properties and publications. Both modes take the same guarantees (see
//! `swap::engine`); `swap --dry-run` and the reports say which mode was used
//! and why.
//!
//! A pg_namespace change (the renames) makes every backend drop all its
//! cached plans (plancache.c registers `PlanCacheSysCallback` on
//! `NAMESPACEOID`), so prepared statements and PL/pgSQL plans re-plan by name
//! against the new public on their next execution (tests/swap_modes.rs
//! proves it).

use anyhow::{Context, Result};
use itertools::Itertools;
use serde::Serialize;
use tokio_postgres::Client;

use crate::pg::ident::{quote_ident, quote_literal};
use crate::pg::meta::{MARKER, PUBLIC};
use crate::words::words;

words! {
    /// How the swap moves public and the incoming schema.
    pub enum Mode {
        /// Three schema renames (lock time independent of the number of objects).
        Rename = "rename",
        /// `ALTER … SET SCHEMA` for every object.
        Object = "object",
    }
}

/// What the operator asked for (`--swap-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModeRequest {
    /// Rename when possible, else object-level.
    #[default]
    Auto,
    /// Always object-level.
    Object,
    /// Rename, or refuse saying why not.
    Rename,
}

/// The mode chosen, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub mode: Mode,
    pub reason: String,
    /// What rename mode must carry over, one per swapped schema (in the
    /// exchange's order); None in object mode.
    pub rename: Option<Vec<RenameSteps>>,
}

impl Choice {
    /// The mode and its reason as reports show them.
    pub fn chosen(&self) -> Chosen {
        Chosen {
            mode: self.mode,
            reason: self.reason.clone(),
        }
    }
}

/// The mode a swap (or rollback) ran in, or would run in, and why: the
/// `swap_mode` and `swap_mode_reason` of the JSON reports, which flatten it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chosen {
    /// `rename` (schema renames) or `object` (object by object).
    #[serde(rename = "swap_mode")]
    pub mode: Mode,
    /// Why that mode.
    #[serde(rename = "swap_mode_reason")]
    pub reason: String,
}

/// Public's properties the new public takes over, and the relocatable
/// extensions that move with them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RenameSteps {
    /// The live schema renamed (`public`, `billing`, …).
    pub live: String,
    /// False for a schema only the source has: the shadow is just renamed to
    /// it (and an empty backup schema records that it did not exist).
    pub live_exists: bool,
    /// Relocatable extensions in the live schema.
    pub extensions: Vec<String>,
    /// Public's owner.
    pub owner: String,
    /// Public's grants: (grantee, or empty for PUBLIC; privilege; grantable).
    pub grants: Vec<(String, String, bool)>,
    /// Grantees of the incoming schema's own grants (revoked from the new public).
    pub incoming_grantees: Vec<String>,
    pub comment: Option<String>,
    /// Public's default privileges (`pg_default_acl` in public): granted in
    /// the new public, revoked from the backup (they stay with the renamed
    /// schema's oid).
    pub default_privileges: Vec<DefaultPrivilege>,
    /// This role (`current_user`), the backup's owner.
    pub me: String,
}

/// One entry of a schema's default privileges:
/// `ALTER DEFAULT PRIVILEGES FOR ROLE role IN SCHEMA … GRANT privilege ON kind TO grantee`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultPrivilege {
    pub role: String,
    /// `TABLES`, `SEQUENCES`, … (see [`default_acl_kind`]).
    pub kind: &'static str,
    /// Empty for PUBLIC.
    pub grantee: String,
    pub privilege: String,
    pub grantable: bool,
}

fn role(name: &str) -> String {
    if name.is_empty() {
        "PUBLIC".into()
    } else {
        quote_ident(name)
    }
}

impl RenameSteps {
    /// The transaction's statements after the locks and the hook's work:
    /// rename, carry public's properties over, move relocatable extensions,
    /// leave the backup owner-only like an object-level backup, and (for a
    /// swap) a new empty incoming schema.
    pub fn sql(&self, incoming: &str, backup: &str, recreate_incoming: bool) -> Vec<String> {
        // As PostgreSQL's quote_ident: `public` stays `public`.
        let live = crate::pg::ident::display_ident(&self.live);
        let backup_comment = quote_literal(&format!(
            "{MARKER} backup of {} (managed by pgshift)",
            self.live
        ));
        if !self.live_exists {
            return vec![
                format!("CREATE SCHEMA {}", quote_ident(backup)),
                format!(
                    "COMMENT ON SCHEMA {} IS {backup_comment}",
                    quote_ident(backup)
                ),
                format!("ALTER SCHEMA {} RENAME TO {live}", quote_ident(incoming)),
                // It was pgshift's shadow: no longer.
                format!("COMMENT ON SCHEMA {live} IS NULL"),
            ];
        }
        let mut sql = vec![
            format!("ALTER SCHEMA {live} RENAME TO {}", quote_ident(backup)),
            format!("ALTER SCHEMA {} RENAME TO {live}", quote_ident(incoming)),
            format!(
                "COMMENT ON SCHEMA {} IS {backup_comment}",
                quote_ident(backup)
            ),
        ];
        // The backup: owned by this role (or handed to the shadow's owner by
        // the engine), no grants (as an object-level backup).
        sql.push(format!(
            "ALTER SCHEMA {} OWNER TO CURRENT_USER",
            quote_ident(backup)
        ));
        let mut old_grantees: Vec<&str> = self.grants.iter().map(|g| g.0.as_str()).collect();
        old_grantees.sort_unstable();
        old_grantees.dedup();
        for g in &old_grantees {
            sql.push(format!(
                "REVOKE ALL ON SCHEMA {} FROM {}",
                quote_ident(backup),
                role(g)
            ));
        }
        if old_grantees.contains(&self.me.as_str()) {
            // This role's own entries (it owned the live schema, or was granted
            // on it) were among the grants just revoked: without them not even
            // the backup's owner could reach its tables (to count, verify or
            // restore them).
            sql.push(format!(
                "GRANT ALL ON SCHEMA {} TO CURRENT_USER",
                quote_ident(backup)
            ));
        }
        // Default privileges stay with the renamed schema's oid: the backup
        // keeps none (nor does a later rollback's backup), and an emptied
        // backup is empty for `catalog::schema_is_empty`.
        let revokes: Vec<(&str, &str, &str)> = self
            .default_privileges
            .iter()
            .map(|d| (d.role.as_str(), d.kind, d.grantee.as_str()))
            .dedup()
            .collect();
        for (owner, kind, grantee) in revokes {
            sql.push(format!(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} REVOKE ALL ON {kind} FROM {}",
                quote_ident(owner),
                quote_ident(backup),
                role(grantee)
            ));
        }
        // The new live schema: the old one's owner, grants, comment, default
        // privileges.
        sql.push(format!(
            "ALTER SCHEMA {live} OWNER TO {}",
            quote_ident(&self.owner)
        ));
        for g in &self.incoming_grantees {
            sql.push(format!("REVOKE ALL ON SCHEMA {live} FROM {}", role(g)));
        }
        for (grantee, privilege, grantable) in &self.grants {
            sql.push(format!(
                "GRANT {privilege} ON SCHEMA {live} TO {}{}",
                role(grantee),
                if *grantable { " WITH GRANT OPTION" } else { "" }
            ));
        }
        sql.push(format!(
            "COMMENT ON SCHEMA {live} IS {}",
            self.comment
                .as_deref()
                .map(quote_literal)
                .unwrap_or_else(|| "NULL".into())
        ));
        for d in &self.default_privileges {
            sql.push(format!(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {live} GRANT {} ON {} TO {}{}",
                quote_ident(&d.role),
                d.privilege,
                d.kind,
                role(&d.grantee),
                if d.grantable {
                    " WITH GRANT OPTION"
                } else {
                    ""
                }
            ));
        }
        for e in &self.extensions {
            sql.push(format!(
                "ALTER EXTENSION {} SET SCHEMA {live}",
                quote_ident(e)
            ));
        }
        if recreate_incoming && self.live == PUBLIC {
            sql.push(format!("CREATE SCHEMA {}", quote_ident(incoming)));
            sql.push(format!(
                "COMMENT ON SCHEMA {} IS {}",
                quote_ident(incoming),
                quote_literal(&format!("{MARKER} shadow (empty; managed by pgshift)"))
            ));
        }
        sql
    }
}

/// Object types of `pg_default_acl.defaclobjtype`, as ALTER DEFAULT PRIVILEGES names them.
fn default_acl_kind(objtype: &str) -> Option<&'static str> {
    Some(match objtype {
        "r" => "TABLES",
        "S" => "SEQUENCES",
        "f" => "FUNCTIONS",
        "T" => "TYPES",
        "n" => "SCHEMAS",
        _ => return None,
    })
}

/// Choose the mode for swapping each live schema with its incoming schema
/// (`pairs`: (live, incoming), public's first; read only). `keeps_tables`:
/// some tables must stay where they are.
pub async fn choose(
    client: &Client,
    pairs: &[(String, String)],
    keeps_tables: bool,
    request: ModeRequest,
) -> Result<Choice> {
    let object = |reason: String| Choice {
        mode: Mode::Object,
        reason,
        rename: None,
    };
    if request == ModeRequest::Object {
        return Ok(object("--swap-mode object".into()));
    }
    // The whole swap's, not one schema's (it read `public: kept tables …`
    // with a table kept in billing only).
    if keeps_tables {
        let reason = "kept tables stay live where they are (--keep-tables, or kept when the backup was made), which only the object-level swap can do".to_string();
        if request == ModeRequest::Rename {
            return Err(crate::error::UserError::new(format!(
                "--swap-mode rename is not possible here: {reason}"
            ))
            .into());
        }
        return Ok(object(reason));
    }
    let several = !(pairs.len() == 1 && pairs[0].0 == PUBLIC);
    let mut all = Vec::with_capacity(pairs.len());
    for (live, incoming) in pairs {
        match rename_obstacles(client, live, incoming).await? {
            Ok(steps) => all.push(steps),
            Err(reason) => {
                let reason = if several && !reason.contains(live.as_str()) {
                    format!("{live}: {reason}")
                } else {
                    reason
                };
                if request == ModeRequest::Rename {
                    return Err(crate::error::UserError::new(format!(
                        "--swap-mode rename is not possible here: {reason}"
                    ))
                    .into());
                }
                return Ok(object(reason));
            }
        }
    }
    let extensions: Vec<String> = all.iter().flat_map(|s| s.extensions.clone()).collect();
    let reason = match (several, extensions.is_empty()) {
        (false, true) => "public holds no extension".to_string(),
        (false, false) => format!(
            "public holds only relocatable extensions ({}), which move along",
            extensions.join(", ")
        ),
        (true, true) => "the swapped schemas hold no extension".to_string(),
        (true, false) => format!(
            "the swapped schemas hold only relocatable extensions ({}), which move along",
            extensions.join(", ")
        ),
    };
    Ok(Choice {
        mode: Mode::Rename,
        reason,
        rename: Some(all),
    })
}

/// Before prepare (`--swap-mode rename`): what already stands in the way of
/// renaming each live schema (its owner, non-relocatable extensions,
/// publications, default privileges of other roles), read only. The swap
/// checks again, with the shadow, when it runs.
pub async fn rename_refusal(client: &Client, lives: &[String]) -> Result<Option<String>> {
    for live in lives {
        if let Err(reason) = rename_obstacles(client, live, live).await? {
            let reason = if lives.len() > 1 && !reason.contains(live.as_str()) {
                format!("{live}: {reason}")
            } else {
                reason
            };
            return Ok(Some(format!(
                "--swap-mode rename is not possible here: {reason}; nothing was changed"
            )));
        }
    }
    Ok(None)
}

/// What rename mode needs, or the reason it is not possible.
async fn rename_obstacles(
    client: &Client,
    live: &str,
    incoming: &str,
) -> Result<std::result::Result<RenameSteps, String>> {
    if !crate::pg::catalog::schema_exists(client, live).await? {
        return Ok(Ok(RenameSteps {
            live: live.to_string(),
            live_exists: false,
            ..RenameSteps::default()
        }));
    }
    let r = client
        .query_one(
            "SELECT (SELECT array_agg(e.extname::text ORDER BY e.extname) FROM pg_catalog.pg_extension e
                      WHERE e.extnamespace = pub.oid AND NOT e.extrelocatable),
                    (SELECT array_agg(e.extname::text ORDER BY e.extname) FROM pg_catalog.pg_extension e
                      WHERE e.extnamespace = pub.oid AND e.extrelocatable),
                    pg_catalog.pg_has_role(pub.nspowner, 'USAGE'),
                    pg_catalog.pg_has_role(pub.nspowner, 'MEMBER'),
                    pg_catalog.pg_get_userbyid(pub.nspowner)::text,
                    COALESCE((SELECT array_agg(COALESCE(r.rolname, '') || '|' || a.privilege_type || '|' || a.is_grantable::text
                                               ORDER BY 1)
                                FROM aclexplode(pub.nspacl) a LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee), '{}'),
                    COALESCE((SELECT array_agg(DISTINCT COALESCE(r.rolname, ''))
                                FROM aclexplode(inc.nspacl) a LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee), '{}'),
                    pg_catalog.obj_description(pub.oid, 'pg_namespace'),
                    (SELECT array_agg(DISTINCT pg_catalog.pg_get_userbyid(d.defaclrole)::text)
                       FROM pg_catalog.pg_default_acl d
                      WHERE d.defaclnamespace = pub.oid AND NOT pg_catalog.pg_has_role(d.defaclrole, 'MEMBER')),
                    COALESCE((SELECT array_agg(pg_catalog.pg_get_userbyid(d.defaclrole)::text || '|' || d.defaclobjtype::text || '|'
                                               || COALESCE(r.rolname, '') || '|' || a.privilege_type || '|' || a.is_grantable::text
                                               ORDER BY 1)
                                FROM pg_catalog.pg_default_acl d, aclexplode(d.defaclacl) a
                                LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
                               WHERE d.defaclnamespace = pub.oid), '{}'),
                    pg_catalog.current_setting('server_version_num')::int,
                    current_user::text,
                    pg_catalog.pg_has_role(inc.nspowner, 'USAGE'),
                    (SELECT array_agg(e.extname::text ORDER BY e.extname) FROM pg_catalog.pg_extension e
                      WHERE e.extnamespace = pub.oid AND e.extrelocatable
                        AND NOT pg_catalog.pg_has_role(e.extowner, 'USAGE')),
                    (SELECT array_agg(DISTINCT e.extname::text ORDER BY e.extname::text)
                       FROM pg_catalog.pg_extension e
                       JOIN pg_catalog.pg_depend d
                         ON d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = e.oid
                        AND d.deptype = 'e'
                      WHERE e.extnamespace = pub.oid AND e.extrelocatable
                        AND NOT CASE d.classid
                              WHEN 'pg_catalog.pg_class'::regclass THEN pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = d.objid), 'USAGE')
                              WHEN 'pg_catalog.pg_proc'::regclass THEN pg_catalog.pg_has_role((SELECT proowner FROM pg_catalog.pg_proc WHERE oid = d.objid), 'USAGE')
                              WHEN 'pg_catalog.pg_type'::regclass THEN pg_catalog.pg_has_role((SELECT typowner FROM pg_catalog.pg_type WHERE oid = d.objid), 'USAGE')
                              WHEN 'pg_catalog.pg_operator'::regclass THEN pg_catalog.pg_has_role((SELECT oprowner FROM pg_catalog.pg_operator WHERE oid = d.objid), 'USAGE')
                              WHEN 'pg_catalog.pg_opclass'::regclass THEN pg_catalog.pg_has_role((SELECT opcowner FROM pg_catalog.pg_opclass WHERE oid = d.objid), 'USAGE')
                              WHEN 'pg_catalog.pg_opfamily'::regclass THEN pg_catalog.pg_has_role((SELECT opfowner FROM pg_catalog.pg_opfamily WHERE oid = d.objid), 'USAGE')
                              WHEN 'pg_catalog.pg_collation'::regclass THEN pg_catalog.pg_has_role((SELECT collowner FROM pg_catalog.pg_collation WHERE oid = d.objid), 'USAGE')
                              WHEN 'pg_catalog.pg_conversion'::regclass THEN pg_catalog.pg_has_role((SELECT conowner FROM pg_catalog.pg_conversion WHERE oid = d.objid), 'USAGE')
                              WHEN 'pg_catalog.pg_statistic_ext'::regclass THEN pg_catalog.pg_has_role((SELECT stxowner FROM pg_catalog.pg_statistic_ext WHERE oid = d.objid), 'USAGE')
                              WHEN 'pg_catalog.pg_ts_config'::regclass THEN pg_catalog.pg_has_role((SELECT cfgowner FROM pg_catalog.pg_ts_config WHERE oid = d.objid), 'USAGE')
                              WHEN 'pg_catalog.pg_ts_dict'::regclass THEN pg_catalog.pg_has_role((SELECT dictowner FROM pg_catalog.pg_ts_dict WHERE oid = d.objid), 'USAGE')
                              -- text search parsers and templates have no owner: only a superuser moves them
                              WHEN 'pg_catalog.pg_ts_parser'::regclass THEN (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)
                              WHEN 'pg_catalog.pg_ts_template'::regclass THEN (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)
                              -- the rest (casts, languages and so on) live in no schema and do not move
                              ELSE true
                            END)
               FROM pg_catalog.pg_namespace pub, pg_catalog.pg_namespace inc
              WHERE pub.nspname = $2 AND inc.nspname = $1",
            &[&incoming, &live],
        )
        .await
        .context("choosing the swap mode")?;
    let fixed: Option<Vec<String>> = r.get(0);
    if let Some(f) = fixed {
        return Ok(Err(format!(
            "{live} holds a non-relocatable extension ({}), which must stay in {live}",
            f.join(", ")
        )));
    }
    let mut not_owned: Vec<&str> = [(live, r.get::<_, bool>(2)), (incoming, r.get(12))]
        .into_iter()
        .filter(|(_, owns)| !owns)
        .map(|(schema, _)| schema)
        .collect();
    // Before prepare the live schema is asked about twice.
    not_owned.dedup();
    if !not_owned.is_empty() {
        return Ok(Err(format!(
            "this role does not own schema {}, and renaming a schema needs its owner",
            not_owned.join(" or ")
        )));
    }
    if let Some(exts) = r.get::<_, Option<Vec<String>>>(13) {
        return Ok(Err(format!(
            "{live} holds extensions this role does not own ({}), which could not move along (moving an extension needs its owner)",
            exts.join(", ")
        )));
    }
    if let Some(exts) = r.get::<_, Option<Vec<String>>>(14) {
        return Ok(Err(format!(
            "{live} holds extensions whose objects this role does not own ({}), which could not move along (moving an extension needs the owner of each of its objects; a trusted extension's belong to the superuser who ran its script)",
            exts.join(", ")
        )));
    }
    let owner: String = r.get(4);
    if !r.get::<_, bool>(3) {
        return Ok(Err(format!(
            "this role cannot make {owner} the owner of the new {live} (not a member of {owner})"
        )));
    }
    if let Some(roles) = r.get::<_, Option<Vec<String>>>(8) {
        return Ok(Err(format!(
            "{live} has default privileges of roles this role is not a member of ({})",
            roles.join(", ")
        )));
    }
    let version: i32 = r.get(10);
    if version >= 150000 {
        let pubs: Vec<String> = crate::pg::exec::column(
            client,
            "SELECT p.pubname::text FROM pg_catalog.pg_publication_namespace pn
               JOIN pg_catalog.pg_publication p ON p.oid = pn.pnpubid
               JOIN pg_catalog.pg_namespace n ON n.oid = pn.pnnspid
              WHERE n.nspname = $1 ORDER BY 1",
            &[&live],
        )
        .await?;
        if !pubs.is_empty() {
            return Ok(Err(format!(
                "publication {} publishes the tables in schema {live}, and would follow the renamed schema",
                pubs.join(", ")
            )));
        }
    }
    let split = |s: &String| s.split('|').map(str::to_string).collect::<Vec<_>>();
    let grants = r
        .get::<_, Vec<String>>(5)
        .iter()
        .map(split)
        .filter(|p| p.len() == 3)
        .map(|p| (p[0].clone(), p[1].clone(), p[2] == "true"))
        .collect();
    let default_privileges = r
        .get::<_, Vec<String>>(9)
        .iter()
        .map(split)
        .filter(|p| p.len() == 5)
        .filter_map(|p| {
            Some(DefaultPrivilege {
                kind: default_acl_kind(&p[1])?,
                role: p[0].clone(),
                grantee: p[2].clone(),
                privilege: p[3].clone(),
                grantable: p[4] == "true",
            })
        })
        .collect();
    Ok(Ok(RenameSteps {
        live: live.to_string(),
        live_exists: true,
        extensions: r.get::<_, Option<Vec<String>>>(1).unwrap_or_default(),
        owner,
        grants,
        incoming_grantees: r.get(6),
        comment: r.get(7),
        default_privileges,
        me: r.get(11),
    }))
}
