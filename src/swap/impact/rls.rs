//! Row-level security: which rows the application's roles may read and write,
//! before and after the swap, as hazards of the effect `row_access`.
//!
//! A table's row-level security and its policies belong to the table, so the
//! swap replaces them with the incoming table's (the source's): a destination
//! whose policies the source lacks hands every row to every role with
//! privileges on the table the moment the swap commits, and a source that adds
//! a policy hides rows the application read before. Neither fails a statement,
//! so neither the recorded-statements check nor the other hazards see it.
//!
//! | code | when |
//! |---|---|
//! | `RLS_DISABLED` | row-level security on -> off (every role allowed to use the table reads and writes every row), or `FORCE` -> `NO FORCE` (the owner does) |
//! | `RLS_ENABLED` | off -> on (roles other than the owner and `BYPASSRLS` roles read and write only the rows the policies admit: none without a policy), or `NO FORCE` -> `FORCE` (the owner too) |
//! | `POLICY_DROPPED` | a policy of the live table has no namesake: a permissive one's rows are hidden from its roles, a restrictive one's limit is gone |
//! | `POLICY_ADDED` | the incoming table has a policy the live one lacks |
//! | `POLICY_CHANGED` | same name, another definition (`PERMISSIVE` / `RESTRICTIVE`, command, roles, `USING`, `WITH CHECK`) |
//! | `ROWS_NO_LONGER_ADMITTED` | a role a permissive policy admitted for a command (directly, as a member of its role, or as `PUBLIC`) that none admits after, and that security applies to: it reads no row, changes none, inserts none |
//!
//! Policies are compared only where row-level security is on on both sides
//! (where it is off they apply to nobody; turning it on or off names them in
//! its detail). Tables are matched by name, partitions included (a partition's
//! own setting applies when it is used directly); kept tables (`stays`) are
//! left out. A policy's expressions are read as `pg_get_expr` prints them with
//! `search_path = ''` and the incoming schema's name mapped back to the live
//! one ([`Mapper`]), as constraints are in [`super::hazards`]; its roles by
//! name (`PUBLIC` for all), which the swap does not change.
//!
//! Each policy's finding says what it does by itself; whom the table leaves
//! with no row at all is a matter of all of them together. A row needs a
//! permissive policy for the command and role, so `ROWS_NO_LONGER_ADMITTED`
//! goes over each command and each role a permissive policy named before,
//! with the memberships among those roles (a policy `TO r` applies to every
//! role with r's privileges), and names who loses which commands: a policy
//! moved from `TO reporting` to `TO app_rw`, or from `FOR ALL` to `FOR
//! SELECT`, changes the text of one policy and takes every row from a role.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Context, Result};
use itertools::Itertools;
use tokio_postgres::Client;

use super::hazards::{Effect, Hazard, NS};
use super::resolve::Mapper;
use super::{SchemaPair, qualified_display};
use crate::pg::catalog::not_ext_member;
use crate::pg::ident::display_ident;

/// A table's row-level security on one side.
#[derive(Default)]
struct Table {
    enabled: bool,
    forced: bool,
    /// Its owner, quoted as needed.
    owner: String,
    /// Policy name -> the policy ([`policy`]).
    policies: BTreeMap<String, Policy>,
}

#[derive(PartialEq, Eq)]
struct Policy {
    permissive: bool,
    /// `SELECT`, `INSERT`, `UPDATE`, `DELETE` or `ALL`.
    cmd: &'static str,
    /// Its roles, quoted as needed, `PUBLIC` for all.
    roles: Vec<String>,
    /// `PERMISSIVE FOR SELECT TO app_rw`.
    head: String,
    definition: String,
}

/// A policy as read: its head `PERMISSIVE FOR SELECT TO app`, then its
/// definition `… USING (…) WITH CHECK (…)`.
fn policy(
    permissive: bool,
    cmd: &str,
    roles: &[String],
    using: Option<&str>,
    check: Option<&str>,
) -> Policy {
    let cmd = match cmd {
        "r" => "SELECT",
        "a" => "INSERT",
        "w" => "UPDATE",
        "d" => "DELETE",
        _ => "ALL",
    };
    let head = format!(
        "{} FOR {cmd} TO {}",
        if permissive {
            "PERMISSIVE"
        } else {
            "RESTRICTIVE"
        },
        roles.join(", ")
    );
    let mut definition = head.clone();
    if let Some(u) = using {
        definition.push_str(&format!(" USING ({u})"));
    }
    if let Some(c) = check {
        definition.push_str(&format!(" WITH CHECK ({c})"));
    }
    Policy {
        permissive,
        cmd,
        roles: roles.to_vec(),
        head,
        definition,
    }
}

/// Role pairs (member, role) among the roles policies name and the tables'
/// owners, where the member has the role's privileges: a policy `TO r`
/// applies to every role that does (`check_role_for_policy`,
/// `has_privs_of_role`), and row-level security does not apply to a role
/// with its table owner's privileges unless the table forces it. Roles
/// with `BYPASSRLS` (superusers among them) are paired with `""`: it
/// applies to them nowhere. `pg_database_owner` has the privileges of the
/// database's owner.
type Members = HashSet<(String, String)>;

async fn members(client: &Client, roles: &[&String], owners: &[&String]) -> Result<Members> {
    if roles.is_empty() {
        return Ok(Members::new());
    }
    let rows = client
        .query(
            "WITH r AS (
               SELECT a.oid, pg_catalog.quote_ident(a.rolname) AS name,
                      CASE WHEN a.rolname = 'pg_database_owner'
                           THEN (SELECT d.datdba FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())
                           ELSE a.oid END AS acts_as,
                      a.rolsuper OR a.rolbypassrls AS bypass
                 FROM pg_catalog.pg_roles a WHERE pg_catalog.quote_ident(a.rolname) = ANY($1))
             SELECT r.name, pg_catalog.quote_ident(b.rolname)
               FROM r JOIN pg_catalog.pg_roles b
                 ON r.oid <> b.oid AND pg_catalog.pg_has_role(r.acts_as, b.oid, 'USAGE')
              WHERE pg_catalog.quote_ident(b.rolname) = ANY($1) OR pg_catalog.quote_ident(b.rolname) = ANY($2)
             UNION ALL
             SELECT r.name, '' FROM r WHERE r.bypass",
            &[&roles, &owners],
        )
        .await
        .context("reading which roles policies name are members of which")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The row-level security hazards of `pairs`, for the tables `in_both(pair,
/// name)` says both sides have (a table on one side only is `TABLE_DROPPED`
/// or `TABLE_ADDED`; kept tables are neither). Runs inside the caller's
/// read-only transaction with `search_path = ''` ([`super::hazards`]).
pub(super) async fn hazards(
    client: &Client,
    pairs: &[SchemaPair],
    mapper: &Mapper,
    in_both: impl Fn(i64, &str) -> bool,
) -> Result<Vec<Hazard>> {
    let live: Vec<&str> = pairs.iter().map(|p| p.live.as_str()).collect();
    let incoming: Vec<&str> = pairs.iter().map(|p| p.incoming.as_str()).collect();
    let sql = format!(
        "WITH {NS}
         SELECT ns.pair, ns.side, c.relname::text, c.relrowsecurity, c.relforcerowsecurity,
                po.polname::text, po.polpermissive, po.polcmd::text,
                ARRAY(SELECT CASE WHEN u.oid = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(r.rolname) END
                        FROM pg_catalog.unnest(po.polroles) AS u(oid)
                        LEFT JOIN pg_catalog.pg_roles r ON r.oid = u.oid
                       ORDER BY 1),
                pg_catalog.pg_get_expr(po.polqual, po.polrelid),
                pg_catalog.pg_get_expr(po.polwithcheck, po.polrelid),
                pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(c.relowner))
           FROM pg_catalog.pg_class c
           JOIN ns ON ns.oid = c.relnamespace
           LEFT JOIN pg_catalog.pg_policy po ON po.polrelid = c.oid
          WHERE c.relkind IN ('r', 'p') AND {}
            AND (c.relrowsecurity OR c.relforcerowsecurity OR po.oid IS NOT NULL)",
        not_ext_member!("pg_class", "c.oid")
    );
    let rows = client
        .query(&sql, &[&live, &incoming])
        .await
        .context("listing row-level security policies")?;
    let mut sides: HashMap<(i64, bool), BTreeMap<String, Table>> = HashMap::new();
    for r in rows {
        let live_side = r.get::<_, String>(1) == "L";
        let table = sides
            .entry((r.get(0), live_side))
            .or_default()
            .entry(r.get(2))
            .or_default();
        table.enabled = r.get(3);
        table.forced = r.get(4);
        table.owner = r.get(11);
        let Some(name) = r.get::<_, Option<String>>(5) else {
            continue;
        };
        let map = |s: Option<String>| s.map(|s| if live_side { s } else { mapper.map(&s) });
        let p = policy(
            r.get(6),
            &r.get::<_, String>(7),
            &r.get::<_, Vec<String>>(8),
            map(r.get(9)).as_deref(),
            map(r.get(10)).as_deref(),
        );
        table.policies.insert(name, p);
    }
    let roles: Vec<&String> = sides
        .values()
        .flat_map(|tables| tables.values())
        .flat_map(|t| t.policies.values())
        .flat_map(|p| &p.roles)
        .filter(|r| *r != "PUBLIC")
        .unique()
        .collect();
    let owners: Vec<&String> = sides
        .values()
        .flat_map(|tables| tables.values())
        .map(|t| &t.owner)
        .unique()
        .collect();
    let members = members(client, &roles, &owners).await?;
    let empty = BTreeMap::new();
    let mut out = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        let idx = i as i64 + 1;
        let l = sides.get(&(idx, true)).unwrap_or(&empty);
        let inc = sides.get(&(idx, false)).unwrap_or(&empty);
        let names = l
            .keys()
            .chain(inc.keys())
            .unique()
            .filter(|name| in_both(idx, name));
        let off = Table::default();
        for name in names {
            compare(
                &qualified_display(&p.live, name),
                l.get(name).unwrap_or(&off),
                inc.get(name).unwrap_or(&off),
                &members,
                &mut out,
            );
        }
    }
    Ok(out)
}

/// Who row-level security leaves out: the owner without `FORCE`, and
/// roles with `BYPASSRLS`.
const OTHERS: &str = "roles other than the owner and BYPASSRLS roles";

/// The table admits no row at all to the roles policies apply to: a row
/// needs a permissive policy for the command and the role (and every
/// restrictive one), and none is left.
fn admits_none(t: &Table) -> bool {
    !t.policies.values().any(|p| p.permissive)
}

/// `p (PERMISSIVE FOR SELECT TO app_rw), r (RESTRICTIVE FOR ALL TO PUBLIC)`.
fn listed(t: &Table) -> String {
    t.policies
        .iter()
        .map(|(n, p)| format!("{} ({})", display_ident(n), p.head))
        .join(", ")
}

/// What the roles policies apply to read and write under `t`'s policies:
/// `who` is [`OTHERS`] (plural) or `the table's owner too`.
fn under_policies(t: &Table, who: &str) -> String {
    let plural = who == OTHERS;
    let (read, reads_and_writes) = if plural {
        ("read", "read and write")
    } else {
        ("reads", "reads and writes")
    };
    if t.policies.is_empty() {
        format!("with no policy, {who} {read} no row and may write none")
    } else if admits_none(t) {
        format!(
            "with no permissive policy, {who} {read} no row and may write none (restrictive policies alone admit nothing: {})",
            listed(t)
        )
    } else {
        format!(
            "{who} {reads_and_writes} only the rows a permissive policy for the command and role admits, and every restrictive one: {}",
            listed(t)
        )
    }
}

/// The roles of `t`'s permissive policies for `cmd` (theirs or `ALL`).
fn admitting<'a>(t: &'a Table, cmd: &str) -> Vec<&'a str> {
    t.policies
        .values()
        .filter(|p| p.permissive && (p.cmd == cmd || p.cmd == "ALL"))
        .flat_map(|p| p.roles.iter().map(String::as_str))
        .unique()
        .collect()
}

/// Who loses every row of a command, with both sides' security on: each
/// role a permissive policy for the command admitted before (directly or
/// as a member) that none admits after, and for a policy `TO PUBLIC`
/// before, every role but the ones admitted after. Not a role security
/// does not apply to after: `BYPASSRLS`, or with the owner's privileges
/// where the table does not force it (h47a). Grouped as (who, commands),
/// in the order found. Empty when no permissive policy is left at all,
/// which the policies' own findings say.
fn left_out(l: &Table, i: &Table, members: &Members) -> Vec<(String, Vec<&'static str>)> {
    let mut found: Vec<(String, Vec<&'static str>)> = Vec::new();
    if admits_none(i) {
        return found;
    }
    for cmd in ["SELECT", "INSERT", "UPDATE", "DELETE"] {
        let after = admitting(i, cmd);
        if after.contains(&"PUBLIC") {
            continue;
        }
        for role in admitting(l, cmd) {
            let who = if role == "PUBLIC" {
                match after.as_slice() {
                    [] => "every role".to_string(),
                    a => format!("every role but {} and their members", a.join(", ")),
                }
            } else if after
                .iter()
                .chain([&""])
                .chain((!i.forced).then_some(&i.owner.as_str()))
                .any(|a| *a == role || members.contains(&(role.to_string(), a.to_string())))
            {
                continue;
            } else {
                role.to_string()
            };
            match found.iter_mut().find(|(w, _)| *w == who) {
                Some((_, cmds)) => cmds.push(cmd),
                None => found.push((who, vec![cmd])),
            }
        }
    }
    found
}

fn compare(object: &str, l: &Table, i: &Table, members: &Members, out: &mut Vec<Hazard>) {
    let hazard = |code: &str, object: String, detail: String| Hazard {
        code: code.to_string(),
        effect: Effect::RowAccess,
        object,
        detail,
    };
    let owner = |forced: bool| if forced { ", for its owner too" } else { "" };
    match (l.enabled, i.enabled) {
        (true, false) => out.push(hazard(
            "RLS_DISABLED",
            object.to_string(),
            format!(
                "row-level security on{} -> off: every role allowed to use the table reads and writes every row{}",
                owner(l.forced),
                match l.policies.len() {
                    0 => String::new(),
                    1 => format!(" (policy {} no longer applies)", listed(l)),
                    _ => format!(" (policies {} no longer apply)", listed(l)),
                }
            ),
        )),
        (false, true) => out.push(hazard(
            "RLS_ENABLED",
            object.to_string(),
            format!(
                "row-level security off -> on{}: {}",
                owner(i.forced),
                under_policies(i, OTHERS)
            ),
        )),
        (false, false) => {}
        (true, true) => {
            if l.forced && !i.forced {
                out.push(hazard(
                    "RLS_DISABLED",
                    object.to_string(),
                    "FORCE -> NO FORCE: the table's owner reads and writes every row, where its policies applied to it too".to_string(),
                ));
            } else if !l.forced && i.forced {
                out.push(hazard(
                    "RLS_ENABLED",
                    object.to_string(),
                    format!(
                        "NO FORCE -> FORCE: {}",
                        under_policies(i, "the table's owner too")
                    ),
                ));
            }
            // The last permissive policy gone: nothing is admitted any more,
            // whatever each change says by itself.
            let none_left = if admits_none(i) && !admits_none(l) {
                format!("; no permissive policy is left: {OTHERS} read no row and may write none")
            } else {
                String::new()
            };
            let of = |name: &str| format!("{object}.{}", display_ident(name));
            for (name, lp) in &l.policies {
                match i.policies.get(name) {
                    None => out.push(hazard(
                        "POLICY_DROPPED",
                        of(name),
                        format!(
                            "{}: {}{none_left}",
                            lp.definition,
                            if lp.permissive {
                                "its roles no longer read or write the rows only it admitted"
                            } else {
                                "its roles read and write the rows it kept from them"
                            }
                        ),
                    )),
                    Some(ip) if ip != lp => out.push(hazard(
                        "POLICY_CHANGED",
                        of(name),
                        format!("{} -> {}{none_left}", lp.definition, ip.definition),
                    )),
                    Some(_) => {}
                }
            }
            let lost = left_out(l, i, members);
            if !lost.is_empty() {
                // What that does, for the commands lost (h47a: a SELECT
                // still admitted was said to read nothing).
                let cmds: Vec<&str> = lost.iter().flat_map(|(_, c)| c.iter().copied()).collect();
                let has = |c: &str| cmds.contains(&c);
                let changes = match (has("UPDATE"), has("DELETE")) {
                    (true, true) => Some("an UPDATE or DELETE changes none"),
                    (true, false) => Some("an UPDATE changes none"),
                    (false, true) => Some("a DELETE changes none"),
                    (false, false) => None,
                };
                let effects = [
                    has("SELECT").then_some("a SELECT reads no row"),
                    changes,
                    has("INSERT").then_some("an INSERT fails"),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>();
                let effects = match effects.split_last() {
                    Some((last, [])) => last.to_string(),
                    Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
                    None => String::new(),
                };
                out.push(hazard(
                    "ROWS_NO_LONGER_ADMITTED",
                    object.to_string(),
                    format!(
                        "no permissive policy admits {} any more: for them {effects} (policies now: {})",
                        lost.iter()
                            .map(|(who, cmds)| format!("{who} for {}", cmds.join(", ")))
                            .join("; "),
                        listed(i)
                    ),
                ));
            }
            for (name, ip) in &i.policies {
                if !l.policies.contains_key(name) {
                    out.push(hazard(
                        "POLICY_ADDED",
                        of(name),
                        format!(
                            "{}: {}{none_left}",
                            ip.definition,
                            if ip.permissive && admits_none(l) {
                                "its roles read and write the rows it admits, where no permissive policy admitted any before"
                            } else if ip.permissive {
                                "its roles read and write the rows it admits too"
                            } else {
                                "its roles no longer read or write the rows it does not admit"
                            }
                        ),
                    ));
                }
            }
        }
    }
}
