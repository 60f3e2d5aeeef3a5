//! The `pgshift` schema on the destination: pgshift's own records.
//!
//! - `pgshift.migration`: one row per migration (prepare..swap), holding the same
//!   record as the state file, so `status` works from any machine.
//! - `pgshift.backups`: one manifest per backup schema, read by `list`,
//!   `verify`, `rollback` and `cleanup`.
//!
//! Sync changelogs and trigger functions for preserved tables also live in this
//! schema while a migration is prepared. Nothing of pgshift's ever goes into
//! `public` or `shadow`.

use anyhow::{Context, Result, bail};
use tokio_postgres::{Client, GenericClient};

pub const META_SCHEMA: &str = "pgshift";
pub const SHADOW_SCHEMA: &str = "shadow";
pub const BACKUP_PREFIX: &str = "backup_";
/// Marker in the comments of schemas pgshift creates.
pub const MARKER: &str = "pgshift:";
/// Marker in the text of pgshift's own statements that name nothing but live
/// objects (a count of a preserved table's rows in public, a sequence's
/// value): `pg_stat_statements` records them beside the application's, and
/// the impact report leaves out what carries it, as it leaves out statements
/// naming pgshift's schemas. Inside the statement, after its first word: a
/// statement's recorded text starts at its first token.
pub const OWN_STATEMENT: &str = "/* pgshift */";
const META_VERSION: i32 = 1;
/// pgshift's own namespace for the shadows of schemas other than public.
pub const SHADOW_PREFIX: &str = "pgshift_shadow_";

/// The shadow a chosen schema is restored into: `shadow` for public (as
/// always), `pgshift_shadow_<schema>` for the others (`pgshift_` is pgshift's
/// namespace, like the `pgshift` schema, so it cannot collide with an
/// application's schema that prepare did not refuse).
pub fn shadow_schema_for(live: &str) -> String {
    if live == "public" {
        SHADOW_SCHEMA.to_string()
    } else {
        fit_name(SHADOW_PREFIX, live)
    }
}

/// The backup of a chosen schema made by the swap at `ts`: `backup_<ts>` for
/// public (as always), `backup_<ts>_<schema>` for the others.
pub fn backup_schema_for(ts: i64, live: &str) -> String {
    backup_schema_stamped(&ts.to_string(), live)
}

/// [`backup_schema_for`] with any stamp (`<unix ms>` in a dry run's preview).
pub fn backup_schema_stamped(stamp: &str, live: &str) -> String {
    let base = format!("{BACKUP_PREFIX}{stamp}");
    if live == PUBLIC {
        base
    } else {
        fit_name(&format!("{base}_"), live)
    }
}

/// The default (and, before `--schemas`, only) schema a migration moves.
pub const PUBLIC: &str = "public";

/// A live schema of the destination and the shadow it is restored into.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SchemaPair {
    pub live: String,
    pub shadow: String,
}

/// The pairs of the chosen schemas, in the given order.
pub fn schema_pairs(schemas: &[String]) -> Vec<SchemaPair> {
    schemas
        .iter()
        .map(|s| SchemaPair {
            live: s.clone(),
            shadow: shadow_schema_for(s),
        })
        .collect()
}

/// `["public"]`, what a migration moves when no `--schemas` was given.
pub fn default_schemas() -> Vec<String> {
    vec![PUBLIC.to_string()]
}

/// True for `["public"]` (records and JSON leave the default out).
pub fn is_default_schemas(s: &[String]) -> bool {
    s.len() == 1 && s[0] == PUBLIC
}

/// The comment on a shadow prepare creates (the marker says it is pgshift's).
pub fn shadow_comment(live: &str, migration_id: i64) -> String {
    if live == PUBLIC {
        format!("{MARKER} shadow of migration {migration_id} (managed by pgshift)")
    } else {
        format!(
            "{MARKER} shadow of schema {live} for migration {migration_id} (managed by pgshift)"
        )
    }
}

/// `"public"`, for serde defaults.
pub fn public_string() -> String {
    PUBLIC.to_string()
}

/// For serde's `skip_serializing_if` on a schema name.
pub fn is_public_str(s: &str) -> bool {
    s == PUBLIC
}

/// `name` for a table of public, `schema.name` (each part quoted when
/// needed) otherwise: how tables are named in output.
pub fn table_display(schema: &str, name: &str) -> String {
    if schema == PUBLIC {
        name.to_string()
    } else {
        format!(
            "{}.{}",
            crate::pg::ident::display_ident(schema),
            crate::pg::ident::display_ident(name)
        )
    }
}

/// How a report names a table to a reader: as [`table_display`], but a
/// table of public is quoted where it must be too (`users`, `"WebhookCall"`;
/// unquoted, `WebhookCall` names `webhookcall`). `table_display` stays the
/// key form (public's names as stored) that records and comparisons use.
pub fn table_shown(schema: &str, name: &str) -> String {
    crate::pg::ident::TableName::in_schema(schema, name).to_string()
}

/// `table.constraint` for a foreign key (or any constraint) in reports: the
/// table as [`table_shown`] names it, the constraint quoted where it must be
/// (`users.users_org_fkey`, `"WebhookCall"."WebhookCall_webhookId_fkey"`).
pub fn constraint_shown(schema: &str, table: &str, constraint: &str) -> String {
    format!(
        "{}.{}",
        table_shown(schema, table),
        crate::pg::ident::display_ident(constraint)
    )
}

/// `prefix` followed by `name` when that fits PostgreSQL's 63 bytes;
/// otherwise `prefix`, the longest beginning of `name` that fits (cut on a
/// UTF-8 boundary), `_` and 8 hex digits of the FNV-1a hash of the whole
/// `name`, so two long names that share a beginning still get different
/// schemas.
pub fn fit_name(prefix: &str, name: &str) -> String {
    const MAX: usize = 63;
    let full = format!("{prefix}{name}");
    if full.len() <= MAX {
        return full;
    }
    let hash = name.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let mut cut = MAX.saturating_sub(prefix.len() + 9).min(name.len());
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{prefix}{}_{hash:08x}", &name[..cut])
}

const META_DDL: &str = r#"
CREATE SCHEMA pgshift;
COMMENT ON SCHEMA pgshift IS 'pgshift: migration records, backup manifests and sync helpers (managed by pgshift)';
CREATE TABLE pgshift.meta (version integer NOT NULL);
INSERT INTO pgshift.meta VALUES (1);
CREATE TABLE pgshift.migration (
    id          bigint PRIMARY KEY,
    status      text NOT NULL,
    command     text NOT NULL,
    phase       text,
    error       text,
    started_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    pid         integer,
    host        text,
    shadow_oid  oid,
    state       jsonb NOT NULL
);
CREATE TABLE pgshift.backups (
    ts               bigint PRIMARY KEY,
    schema_name      text NOT NULL UNIQUE,
    created_at       timestamptz NOT NULL,
    kind             text NOT NULL,
    migration_id     bigint,
    source           text,
    snapshot_at      timestamptz,
    manifest         jsonb NOT NULL,
    last_verified_at timestamptz,
    last_verify_ok   boolean
);
"#;

/// Is there a `pgshift` schema, and is it ours?
pub async fn meta_exists(client: &impl GenericClient) -> Result<bool> {
    let row = client
        .query_opt(
            "SELECT obj_description(n.oid, 'pg_namespace'),
                    CASE WHEN has_schema_privilege(n.oid, 'USAGE') THEN
                      to_regclass('pgshift.migration') IS NOT NULL AND to_regclass('pgshift.backups') IS NOT NULL
                    END,
                    pg_get_userbyid(n.nspowner)::text, current_user::text
               FROM pg_catalog.pg_namespace n WHERE n.nspname = $1",
            &[&META_SCHEMA],
        )
        .await
        .context("looking for the pgshift schema")?;
    match row {
        None => Ok(false),
        Some(r) => {
            let comment: Option<String> = r.get(0);
            let Some(tables) = r.get::<_, Option<bool>>(1) else {
                let (owner, me): (String, String) = (r.get(2), r.get(3));
                bail!(
                    "role {me} may not use the destination's pgshift schema, which records its migrations and backups (it belongs to {owner}); run pgshift as {owner} or a member of it that inherits its privileges"
                );
            };
            if !comment.as_deref().unwrap_or("").starts_with(MARKER) || !tables {
                bail!(
                    "the destination has a schema named \"pgshift\" that pgshift did not create; rename or drop it first"
                );
            }
            Ok(true)
        }
    }
}

/// Create the `pgshift` schema and its tables if missing (idempotent; safe
/// against a concurrent creator because mutating runs hold the run lock).
pub async fn ensure_meta(client: &Client) -> Result<()> {
    if meta_exists(client).await? {
        let v: i32 = client
            .query_one("SELECT max(version) FROM pgshift.meta", &[])
            .await
            .context("reading pgshift.meta")?
            .get::<_, Option<i32>>(0)
            .unwrap_or(0);
        if v > META_VERSION {
            bail!(
                "the destination's pgshift schema (version {v}) was created by a newer pgshift; upgrade pgshift"
            );
        }
        return Ok(());
    }
    client
        .batch_execute(&format!("BEGIN;\n{META_DDL}\nCOMMIT;"))
        .await
        .context("creating the pgshift schema on the destination")?;
    // The destination's default privileges for this role (ALTER DEFAULT
    // PRIVILEGES … ON SCHEMAS) gave the new schema's USAGE to other roles:
    // without it nobody else reaches the manifests, the changelogs (the keys
    // of every changed row) or the sync functions, whatever default grants
    // their tables got. Only at creation: a grant an operator makes later
    // stays.
    let grantees: Vec<String> = client
        .query(
            "SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                  ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END
               FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
              WHERE n.nspname = $1 AND a.grantee <> n.nspowner",
            &[&META_SCHEMA],
        )
        .await
        .context("reading the pgshift schema's privileges")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for g in grantees {
        client
            .batch_execute(&format!(
                "REVOKE ALL ON SCHEMA {} FROM {g}",
                crate::pg::ident::quote_ident(META_SCHEMA)
            ))
            .await
            .context("keeping the pgshift schema to its owner")?;
    }
    Ok(())
}

/// What the destination's shadow schema is, if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShadowState {
    Absent,
    /// Created by pgshift (comment marker), with its oid.
    Ours(u32),
    /// Someone else's schema named shadow, with its oid.
    Foreign(u32),
}

pub async fn shadow_state(client: &impl GenericClient) -> Result<ShadowState> {
    let row = client
        .query_opt(
            "SELECT n.oid, obj_description(n.oid, 'pg_namespace') FROM pg_catalog.pg_namespace n WHERE n.nspname = $1",
            &[&SHADOW_SCHEMA],
        )
        .await
        .context("looking for the shadow schema")?;
    Ok(match row {
        None => ShadowState::Absent,
        Some(r) => {
            let oid: u32 = r.get(0);
            let comment: Option<String> = r.get(1);
            if comment.as_deref().unwrap_or("").starts_with(MARKER) {
                ShadowState::Ours(oid)
            } else {
                ShadowState::Foreign(oid)
            }
        }
    })
}

/// The schemas named like the shadows of schemas other than public
/// (`pgshift_shadow_…`): (name, made by pgshift?).
pub async fn other_shadows(client: &impl GenericClient) -> Result<Vec<(String, bool)>> {
    let rows = client
        .query(
            "SELECT n.nspname::text, COALESCE(pg_catalog.obj_description(n.oid, 'pg_namespace'), '') LIKE 'pgshift:%'
               FROM pg_catalog.pg_namespace n
              WHERE starts_with(n.nspname, $1)
              ORDER BY 1",
            &[&SHADOW_PREFIX],
        )
        .await
        .context("looking for the shadows of other schemas")?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[cfg(test)]
mod names_tests {
    use super::*;

    #[test]
    fn shadow_and_backup_names_fit_63_bytes() {
        assert_eq!(shadow_schema_for("public"), "shadow");
        assert_eq!(shadow_schema_for("billing"), "pgshift_shadow_billing");
        assert_eq!(
            backup_schema_for(1752567000000, "public"),
            "backup_1752567000000"
        );
        assert_eq!(
            backup_schema_for(1752567000000, "billing"),
            "backup_1752567000000_billing"
        );
        let long = "é".repeat(31) + "x"; // 63 bytes
        let a = shadow_schema_for(&long);
        let b = shadow_schema_for(&("é".repeat(31) + "y"));
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_ne!(a, b, "same beginning, different hash");
        assert!(a.starts_with("pgshift_shadow_é"), "{a}");
        let bk = backup_schema_for(1752567000000, &"a".repeat(63));
        assert_eq!(bk.len(), 63, "{bk}");
        assert!(bk.starts_with("backup_1752567000000_aaaa"), "{bk}");
        // Stable across versions: the hash is part of recorded names.
        assert_eq!(
            fit_name("p_", &"a".repeat(70)),
            format!("p_{}_{}", "a".repeat(52), "5904740b")
        );
    }
}

#[cfg(test)]
mod shown_tests {
    use super::*;

    #[test]
    fn tables_and_keys_are_shown_quoted_where_they_must_be() {
        assert_eq!(
            constraint_shown("public", "users", "users_org_fkey"),
            "users.users_org_fkey"
        );
        assert_eq!(
            constraint_shown("public", "WebhookCall", "WebhookCall_webhookId_fkey"),
            "\"WebhookCall\".\"WebhookCall_webhookId_fkey\""
        );
        assert_eq!(
            constraint_shown("billing", "invoices", "invoices_user_fk"),
            "billing.invoices.invoices_user_fk"
        );
        assert_eq!(table_shown("Sales", "Ticket"), "\"Sales\".\"Ticket\"");
        assert_eq!(table_shown("public", "user"), "\"user\"");
        // The key form is unchanged: public's names as stored.
        assert_eq!(table_display("public", "WebhookCall"), "WebhookCall");
    }
}
