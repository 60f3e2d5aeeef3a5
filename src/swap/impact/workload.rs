//! The recorded workload, checked against what replaces the live schemas.
//!
//! Source: `pg_stat_statements` (found in whatever schema it was created in),
//! the statements of this database (`dbid`) that ran at least once, top-level
//! only where the view says so (14+), narrowed to `roles` when given. An
//! SQL-level `PREPARE … AS statement` is checked as its statement
//! ([`resolve::prepared_body`]: a session that prepared it fails as a
//! protocol-level prepared statement does). Other utility
//! statements and multi-statement texts are left out ([`resolve::parse`]), so
//! are pgshift's own statements (those naming the incoming schemas, the
//! shadows, `pgshift` or backup schemas, and those marked
//! [`OWN_STATEMENT`]: a count of a preserved table in public) and statements that name nothing a swap changes (only
//! catalogs, other schemas, extension members), and PostgreSQL's own
//! statements of a foreign key ([`resolve::referential_action`]: the check a
//! deferred key runs at COMMIT is recorded as a top-level statement).
//!
//! pg_stat_statements replaces constants by `$n`, so `nextval('hib_seq')`
//! reads `nextval($1)` and names no sequence: when the swap drops one, such
//! a statement is unchecked, naming what it may use, which counts as used
//! ([`check_workload`]'s `dropped_sequences`). A typed constant reads
//! `interval $1`, which PostgreSQL does not parse: it is checked as
//! `$1::interval`; one written against a keyword (`ELSE'FALSE'`) reads
//! `ELSE$3`, one identifier, and is split again
//! ([`resolve::repair_typed_constants`]).
//!
//! Each statement is checked as the application will run it after the swap:
//!
//! 1. its names are resolved against today's and the future namespace
//!    ([`resolve::resolve`]) through the search path the application's role
//!    gets (`ALTER ROLE … IN DATABASE … SET`, `ALTER ROLE … SET`,
//!    `ALTER DATABASE … SET`, else the server's default; `$user` expanded; a
//!    `SET search_path` the application runs itself cannot be known);
//! 2. the server parses and describes it (protocol Parse/Describe, which is what
//!    `Client::prepare` does: parameter and result types; this works the same on
//!    PostgreSQL 13 to 18) twice: as recorded with today's search path, and as
//!    rewritten with the future search path. A statement that does not parse
//!    today (a temporary table, a parameter whose type cannot be inferred from the
//!    normalised text: pg_stat_statements replaces constants by `$n`) is
//!    *unchecked* with the reason; one that parses today but not in the future
//!    is *failing* with PostgreSQL's error; one whose result columns differ (by
//!    name and type name, `format_type` with the incoming schema mapped back), or
//!    whose result type keeps its name but becomes the incoming schema's copy
//!    (new OID: prepared statements fail just the same), *changes result type*.
//!    Describe reports a domain as its base type, so a result column that comes
//!    from a table or view column (RowDescription names it) takes that column's
//!    own type from `pg_attribute`; an expression cast to a domain is seen as
//!    the base type;
//! 3. when today's parameter types include a type of a live schema (which the
//!    swap moves to the backup), or differ from those the future statement
//!    infers (a column retyped from text to integer), it is parsed once more
//!    in the future namespace with today's parameter types, as a statement
//!    prepared before the swap will be re-analysed: `operator does not exist:
//!    mood = backup.mood` or `integer = text` makes it failing (new
//!    connections are not affected, prepared statements are until they are
//!    prepared again). pg_stat_statements writes constants as parameters too,
//!    and a constant is analysed afresh: a literal compared with such a
//!    column is reported as failing although it would not fail.
//!
//! The check is read-only and never waits behind the application: each parse
//! runs in its own `BEGIN READ ONLY … ROLLBACK` with `SET LOCAL lock_timeout`
//! (parse analysis takes ACCESS SHARE or ROW EXCLUSIVE on the tables it opens,
//! which conflict only with DDL, and holds them only for that short
//! transaction) and `statement_timeout`; it takes no other lock. A lock it
//! cannot get in time makes the statement unchecked; so does the overall time
//! bound (`timeout`), after which the remaining statements are listed as
//! unchecked. Statements are checked most-called first.
//!
//! The check writes nothing to the server log. A Parse that fails logs an
//! ERROR line with the statement, and operators alert on those; so each
//! statement is first prepared inside a PL/pgSQL block that catches the error
//! (an error caught there is never logged) and hands its fields back ([`PROBE`]);
//! only a statement that parses goes on to the protocol's Parse/Describe for
//! its types. Without USAGE on PL/pgSQL, or for a text that is not exactly one
//! DML statement (`PREPARE … AS` must take all of it), Parse runs alone, as a
//! cancellation (statement_timeout) does, which PL/pgSQL cannot catch.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use itertools::Itertools;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use super::resolve::{self, Catalog, Mapper, Parsed};
use super::{SchemaPair, report};
use crate::dump::sql::DefinedNames;
use crate::pg::catalog::defined_names;
use crate::pg::ident::{quote_ident, quote_literal};
use crate::pg::meta::OWN_STATEMENT;

/// What the workload check needs.
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    /// Only statements of these roles (`--workload-roles`); empty: all.
    pub roles: Vec<String>,
    /// The overall time bound (`--impact-timeout`).
    pub timeout: Duration,
    /// How long one parse may wait for a lock before the statement is reported
    /// unchecked.
    pub lock_timeout: Duration,
    /// What replaces the live schemas (a swap, or a rollback): the failing
    /// statements' reasons name it.
    pub operation: super::Operation,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        WorkloadOptions {
            roles: Vec::new(),
            timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_millis(100),
            operation: super::Operation::Swap,
        }
    }
}

/// A statement that will fail after the swap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailingStatement {
    pub query: String,
    pub calls: i64,
    pub error: String,
}

/// A statement whose result row type changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeChangedStatement {
    pub query: String,
    pub calls: i64,
    /// `email: text -> email`, `created_at: (none) -> timestamp with time zone`.
    pub columns: Vec<String>,
}

/// A statement that could not be checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UncheckedStatement {
    pub query: String,
    pub reason: String,
    #[serde(default)]
    pub calls: i64,
}

/// The workload part of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementsReport {
    /// `pg_stat_statements`, or `none` when the workload was not checked.
    pub source: String,
    /// Statements checked completely (failing and changed ones included).
    pub checked: usize,
    pub failing: Vec<FailingStatement>,
    pub result_type_changed: Vec<TypeChangedStatement>,
    pub unchecked: Vec<UncheckedStatement>,
    /// Why the workload was not checked, and how to enable it (null when it was).
    #[serde(default)]
    pub not_checked: Option<String>,
    /// Objects of the live schemas the recorded statements use
    /// (`public.accounts`, `public.f`), for matching `breaks` hazards.
    #[serde(default)]
    pub used_objects: Vec<String>,
}

impl Default for StatementsReport {
    fn default() -> Self {
        StatementsReport::not_checked("the workload was not checked")
    }
}

/// How to turn `pg_stat_statements` on.
pub const ENABLE_HINT: &str = "add pg_stat_statements to shared_preload_libraries (a restart), run CREATE EXTENSION pg_stat_statements in this database (in a schema of its own, say CREATE SCHEMA pgss; CREATE EXTENSION pg_stat_statements SCHEMA pgss: in public, owned by another role, it keeps the swap from renaming schemas), and let the application run for a while";

impl StatementsReport {
    /// A report saying the workload was not checked, and why.
    pub fn not_checked(why: impl Into<String>) -> StatementsReport {
        StatementsReport {
            source: "none".into(),
            checked: 0,
            failing: Vec::new(),
            result_type_changed: Vec::new(),
            unchecked: Vec::new(),
            not_checked: Some(why.into()),
            used_objects: Vec::new(),
        }
    }

    /// Whether a recorded statement uses `object` (a hazard's object: the
    /// table, a column of it, the function with its arguments).
    pub fn uses(&self, object: &str) -> bool {
        self.used_objects.iter().any(|u| {
            object == u
                || object
                    .strip_prefix(u.as_str())
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('('))
        })
    }
}

/// One statement as recorded (grouped by text and search path).
struct Recorded {
    query: String,
    /// What is checked: the recorded text, with pg_stat_statements'
    /// normalised typed constants repaired (`interval $1` -> `$1::interval`).
    text: String,
    calls: i64,
    path: Vec<String>,
}

/// One statement ready for the server check.
struct Pending {
    rec: Recorded,
    res: resolve::Resolution,
}

/// One result column as Describe reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Column {
    name: String,
    /// RowDescription's type: a domain is reported as its base type.
    type_oid: u32,
    typmod: i32,
    /// The table column it comes from, if it is one.
    origin: Option<(u32, i16)>,
}

/// A described statement: parameter types, result columns.
struct Described {
    params: Vec<Type>,
    columns: Vec<Column>,
}

enum Outcome {
    Described(Vec<Column>, Vec<Column>),
    Failing(String),
    Unchecked(String),
}

/// Statements pg_stat_statements dropped to make room since its statistics
/// were reset (`pg_stat_statements_info`, PostgreSQL 14+): the application's
/// statements may be among them (prepare itself records about four per
/// table). None when nothing was evicted or it cannot be told.
async fn evictions(client: &Client, schema: &str) -> Option<String> {
    let info = format!(
        "{}.pg_stat_statements_info",
        crate::pg::ident::quote_ident(schema)
    );
    let exists: bool = client
        .query_one("SELECT pg_catalog.to_regclass($1) IS NOT NULL", &[&info])
        .await
        .ok()?
        .get(0);
    if !exists {
        return None;
    }
    let row = client
        .query_one(
            &format!(
                "SELECT dealloc, stats_reset::text, pg_catalog.current_setting('pg_stat_statements.max', true) FROM {info}"
            ),
            &[],
        )
        .await
        .ok()?;
    let dealloc: i64 = row.get(0);
    let reset: Option<String> = row.get(1);
    let max: Option<String> = row.get(2);
    (dealloc > 0).then(|| {
        format!(
            "pg_stat_statements evicted the least-used statements {dealloc} times since {} to stay within pg_stat_statements.max ({}): the application's statements may be missing from the check; raise pg_stat_statements.max (a restart; prepare records about four statements per table)",
            reset.as_deref().unwrap_or("its statistics were last reset"),
            max.as_deref().unwrap_or("?")
        )
    })
}

/// Check the recorded workload against the future namespace of `pairs`.
/// `dropped_sequences`: the sequences the swap drops (`SEQUENCE_DROPPED`),
/// which a statement naming its sequence by a parameter may use
/// (`nextval($1)`: [`resolve::Refs::sequence_by_parameter`]): such a
/// statement is unchecked, saying so, and those sequences count as used.
/// `Err` only for a failed connection or an unknown role in `opts.roles`
/// (a [`UserError`]); everything else ends up in the report.
pub async fn check_workload(
    client: &Client,
    pairs: &[SchemaPair],
    opts: &WorkloadOptions,
    dropped_sequences: &[String],
) -> Result<StatementsReport> {
    let deadline = Instant::now() + opts.timeout;
    // Checked first: a role misspelt is refused whether or not there is a
    // workload to filter.
    let role_oids = role_oids(client, &opts.roles).await?;
    let schema: Option<String> = client
        .query_opt(
            "SELECT n.nspname::text FROM pg_catalog.pg_extension e
               JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
              WHERE e.extname = 'pg_stat_statements'",
            &[],
        )
        .await
        .context("looking for pg_stat_statements")?
        .map(|r| r.get(0));
    let Some(schema) = schema else {
        return Ok(StatementsReport::not_checked(format!(
            "pg_stat_statements is not installed in this database, so the application's statements were not checked: {ENABLE_HINT}"
        )));
    };
    let recorded = match read_statements(client, &schema, &role_oids).await {
        Ok(r) => r,
        Err(why) => return Ok(StatementsReport::not_checked(why)),
    };
    let (recorded, hidden) = recorded;

    let live: Vec<String> = pairs.iter().map(|p| p.live.clone()).collect();
    let mut schemas: BTreeSet<String> = recorded
        .iter()
        .flat_map(|r| r.path.iter().cloned())
        .collect();
    schemas.insert("pg_catalog".into());
    for p in pairs {
        schemas.insert(p.live.clone());
        schemas.insert(p.incoming.clone());
    }
    let schemas: Vec<String> = schemas.into_iter().collect();
    let stays: HashSet<(String, String)> = pairs
        .iter()
        .flat_map(|p| p.stays.iter().map(|t| (p.live.clone(), t.clone())))
        .collect();
    let cat = Catalog::load(client, &schemas, &live, &stays).await?;
    let mut defined: Vec<DefinedNames> = Vec::with_capacity(pairs.len());
    let mut incoming_defined: Vec<(SchemaPair, DefinedNames)> = Vec::with_capacity(pairs.len());
    for p in pairs {
        // Everything the swap moves away or brings in; a live extension
        // member's qualifier is never rewritten (it stays).
        // A kept table's namesake in the incoming schema (a rollback's
        // backup has one) does not come in: statements keep the live table,
        // and with it the sequences it owns and its array type.
        let stays = staying_names(client, p).await?;
        let incoming: DefinedNames = defined_names(client, &p.incoming)
            .await?
            .into_iter()
            .filter(|n| !stays.contains(n))
            .collect();
        let mut d: DefinedNames = defined_names(client, &p.live).await?.into_iter().collect();
        // A kept table stays in the live schema: its qualifier is not rewritten.
        for t in &stays {
            d.remove(t);
        }
        d.extend(incoming.iter().map(str::to_string));
        defined.push(d);
        incoming_defined.push((p.clone(), incoming));
    }
    let mapper = Mapper::new(incoming_defined);

    let mut report = StatementsReport {
        source: "pg_stat_statements".into(),
        checked: 0,
        failing: Vec::new(),
        result_type_changed: Vec::new(),
        unchecked: Vec::new(),
        not_checked: None,
        used_objects: Vec::new(),
    };
    if hidden > 0 {
        report.unchecked.push(UncheckedStatement {
            query: HIDDEN_QUERY.into(),
            reason: format!(
                "{} of other roles {} hidden from this role: grant it pg_read_all_stats to check them",
                super::report::plural(hidden, "statement"),
                if hidden == 1 { "is" } else { "are" }
            ),
            calls: 0,
        });
    }

    if let Some(why) = evictions(client, &schema).await {
        report.unchecked.push(UncheckedStatement {
            query: "<evicted>".into(),
            reason: why,
            calls: 0,
        });
    }

    // Resolve every statement first (local work): the objects they use are
    // known even for statements the time bound leaves unchecked.
    let mut used: BTreeSet<String> = BTreeSet::new();
    // The statements naming their sequence by a parameter, when the swap
    // drops one: unchecked as to that, but checked for the rest (h49a: one
    // that fails anyway is said failing).
    let mut caveats: Vec<UncheckedStatement> = Vec::new();
    let mut pending: Vec<Pending> = Vec::new();
    for mut rec in recorded {
        if resolve::referential_action(&rec.text) {
            continue;
        }
        if let Some(body) = resolve::prepared_body(&rec.text) {
            rec.text = body.to_string();
        }
        if let Some(fixed) = resolve::repair_typed_constants(&rec.text) {
            rec.text = fixed;
        }
        let parsed = resolve::parse(&rec.text);
        let by_parameter = matches!(&parsed, Ok(Parsed::Dml(r)) if r.sequence_by_parameter);
        let resolved = match parsed {
            Ok(Parsed::Dml(refs)) => {
                resolve::resolve(&rec.text, &refs, &rec.path, pairs, &cat, &defined)
                    .map_err(|e| format!("{e:#}"))
            }
            Ok(Parsed::Other) => continue,
            Err(e) => Err(format!("the recorded text does not parse: {e}")),
        };
        let res = match resolved {
            Ok(r) => r,
            Err(reason) => {
                report.unchecked.push(UncheckedStatement {
                    query: rec.query,
                    reason,
                    calls: rec.calls,
                });
                continue;
            }
        };
        if res.pgshift_own || rec.text.contains(OWN_STATEMENT) {
            continue;
        }
        if by_parameter && !dropped_sequences.is_empty() {
            caveats.push(UncheckedStatement {
                query: rec.query.clone(),
                reason: format!(
                    "it names its sequence by a constant that pg_stat_statements keeps as a parameter, so which one is not known: it fails if that is {}{}, which {} drops",
                    if dropped_sequences.len() == 1 { "" } else { "one of " },
                    crate::prepare::preflight::list_some(dropped_sequences),
                    opts.operation.subject()
                ),
                calls: rec.calls,
            });
            used.extend(dropped_sequences.iter().cloned());
        }
        if !res.in_scope {
            continue;
        }
        used.extend(res.uses.iter().cloned());
        pending.push(Pending { rec, res });
    }
    report.used_objects = used.into_iter().collect();

    let checker = Checker {
        client,
        lock_timeout: opts.lock_timeout,
        deadline,
        quiet: can_probe(client).await?,
        operation: opts.operation,
    };
    let mut described: Vec<(Pending, Vec<Column>, Vec<Column>)> = Vec::new();
    let mut iter = pending.into_iter();
    for p in iter.by_ref() {
        if Instant::now() >= deadline {
            report.unchecked.push(bound_reached(&p, opts.timeout));
            break;
        }
        let outcome = check_one(&checker, &p, pairs, &cat).await?;
        match outcome {
            Outcome::Failing(error) => {
                report.checked += 1;
                report.failing.push(FailingStatement {
                    query: p.rec.query,
                    calls: p.rec.calls,
                    error,
                });
            }
            Outcome::Described(a, b) => {
                report.checked += 1;
                described.push((p, a, b));
            }
            Outcome::Unchecked(reason) => report.unchecked.push(UncheckedStatement {
                query: p.rec.query,
                reason,
                calls: p.rec.calls,
            }),
        }
    }
    for p in iter {
        report.unchecked.push(bound_reached(&p, opts.timeout));
    }

    let said: HashSet<String> = report
        .failing
        .iter()
        .map(|f| f.query.clone())
        .chain(report.unchecked.iter().map(|u| u.query.clone()))
        .collect();
    report
        .unchecked
        .extend(caveats.into_iter().filter(|c| !said.contains(&c.query)));
    // Result columns: compare by name and type name (the incoming schema
    // mapped back), and flag replaced types (same name, new OID).
    if !described.is_empty() {
        let types = column_types(client, &mapper, &described).await?;
        for (p, today, future) in described {
            let columns = column_changes(&today, &future, &types);
            if !columns.is_empty() {
                report.result_type_changed.push(TypeChangedStatement {
                    query: p.rec.query,
                    calls: p.rec.calls,
                    columns,
                });
            }
        }
    }
    Ok(report)
}

fn bound_reached(p: &Pending, timeout: Duration) -> UncheckedStatement {
    UncheckedStatement {
        query: p.rec.query.clone(),
        reason: format!(
            "not checked: the time bound of {} was reached (--impact-timeout)",
            humantime::format_duration(timeout)
        ),
        calls: p.rec.calls,
    }
}

/// `--workload-roles` checked before a run that ends with the impact report
/// (prepare, start): an unknown role is a usage error, said before the
/// phases rather than after them.
pub async fn check_workload_roles(client: &Client, roles: &[String]) -> Result<()> {
    role_oids(client, roles).await.map(|_| ())
}

/// OIDs of the named roles; an unknown role is a usage error.
async fn role_oids(client: &Client, roles: &[String]) -> Result<Vec<u32>> {
    if roles.is_empty() {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT rolname::text, oid FROM pg_catalog.pg_roles WHERE rolname = ANY($1::text[])",
            &[&roles],
        )
        .await
        .context("looking up --workload-roles")?;
    let found: HashMap<String, u32> = rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
    let missing: Vec<&str> = roles
        .iter()
        .filter(|r| !found.contains_key(*r))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        crate::refuse!(
            "--workload-roles: no role named {} on the destination",
            missing.iter().map(|m| format!("{m:?}")).join(", ")
        );
    }
    Ok(roles.iter().filter_map(|r| found.get(r).copied()).collect())
}

/// The recorded statements (grouped by text and search path, most called
/// first) and how many are hidden; `Err` is why they cannot be read.
async fn read_statements(
    client: &Client,
    schema: &str,
    roles: &[u32],
) -> std::result::Result<(Vec<Recorded>, usize), String> {
    let view = format!("{}.pg_stat_statements", quote_ident(schema));
    let toplevel: bool = match client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                             WHERE attrelid = pg_catalog.to_regclass($1) AND attname = 'toplevel')",
            &[&view],
        )
        .await
    {
        Ok(r) => r.get(0),
        Err(e) => return Err(unreadable(client, schema, &view, &e).await),
    };
    let sql = format!(
        "SELECT s.userid, s.query, sum(s.calls)::int8, count(*)::int8
           FROM {view} s
          WHERE s.dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
            AND s.calls > 0 {} {}
          GROUP BY s.userid, s.query
          ORDER BY 3 DESC, 2",
        if toplevel { "AND s.toplevel" } else { "" },
        if roles.is_empty() {
            ""
        } else {
            "AND s.userid = ANY($1::oid[])"
        }
    );
    let rows = match if roles.is_empty() {
        client.query(sql.as_str(), &[]).await
    } else {
        client.query(sql.as_str(), &[&roles]).await
    } {
        Ok(rows) => rows,
        Err(e) => return Err(unreadable(client, schema, &view, &e).await),
    };
    let userids: Vec<u32> = rows.iter().map(|r| r.get::<_, u32>(0)).collect();
    let paths = search_paths(client, &userids)
        .await
        .map_err(|e| format!("{e:#}"))?;
    // Every hidden statement of a role reads `<insufficient privilege>`:
    // one group per role, counted by its entries.
    let mut hidden = 0;
    let mut grouped: Vec<Recorded> = Vec::new();
    let mut index: HashMap<(String, Vec<String>), usize> = HashMap::new();
    for r in rows {
        let entries = usize::try_from(r.get::<_, i64>(3)).unwrap_or(1);
        let Some(query) = r.get::<_, Option<String>>(1) else {
            hidden += entries;
            continue;
        };
        if query == "<insufficient privilege>" {
            hidden += entries;
            continue;
        }
        let userid: u32 = r.get(0);
        let calls: i64 = r.get(2);
        let path = paths.get(&userid).cloned().unwrap_or_default();
        match index.get(&(query.clone(), path.clone())) {
            Some(&i) => grouped[i].calls += calls,
            None => {
                index.insert((query.clone(), path.clone()), grouped.len());
                grouped.push(Recorded {
                    text: query.clone(),
                    query,
                    calls,
                    path,
                });
            }
        }
    }
    grouped.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.query.cmp(&b.query)));
    Ok((grouped, hidden))
}

/// Why `view` (pg_stat_statements in `schema`) cannot be read, and what to
/// do: a privilege this role lacks (the extension may be in any schema, and
/// is installed) is granted; anything else is the extension to set up.
async fn unreadable(
    client: &Client,
    schema: &str,
    view: &str,
    e: &tokio_postgres::Error,
) -> String {
    let msg = crate::pg::conn::connect::describe_pg_error(e);
    let advice = if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        privilege_advice(client, schema, view).await
    } else {
        ENABLE_HINT.to_string()
    };
    format!(
        "pg_stat_statements cannot be read, so the application's statements were not checked: {msg} ({advice})"
    )
}

/// What to grant this role so it reads `view` in `schema`: USAGE on the
/// schema, SELECT on the view, else the privilege the error names.
async fn privilege_advice(client: &Client, schema: &str, view: &str) -> String {
    use crate::pg::ident::display_ident;
    // The schema first: naming the view in a schema without USAGE is itself
    // "permission denied for schema".
    let row = client
        .query_one(
            "SELECT current_user::text, pg_catalog.has_schema_privilege($1::text, 'USAGE')",
            &[&schema],
        )
        .await;
    let Ok(row) = row else {
        return "the extension is installed but this role lacks a privilege to read it: grant it the privilege named".into();
    };
    let role = display_ident(&row.get::<_, String>(0));
    let shown = format!("{}.pg_stat_statements", display_ident(schema));
    if !row.get::<_, bool>(1) {
        return format!(
            "the extension is installed in schema {}, which this role may not use: GRANT USAGE ON SCHEMA {} TO {role}",
            display_ident(schema),
            display_ident(schema)
        );
    }
    let select = client
        .query_one(
            "SELECT pg_catalog.has_table_privilege($1::text, 'SELECT')",
            &[&view],
        )
        .await
        .map(|r| r.get::<_, bool>(0));
    if select.is_ok_and(|ok| !ok) {
        return format!(
            "the extension is installed, but this role may not read its view: GRANT SELECT ON {shown} TO {role}"
        );
    }
    format!(
        "the extension is installed, but this role lacks a privilege {shown} needs: grant {role} the privilege named"
    )
}

/// The search path each role gets in this database: existing schemas only,
/// `$user` expanded.
async fn search_paths(client: &Client, userids: &[u32]) -> Result<HashMap<u32, Vec<String>>> {
    let default: String = client
        .query_one(
            "SELECT CASE WHEN source IN ('default', 'configuration file', 'command line', 'environment variable')
                         THEN reset_val ELSE boot_val END
               FROM pg_catalog.pg_settings WHERE name = 'search_path'",
            &[],
        )
        .await
        .context("reading the default search_path")?
        .get(0);
    let rows = client
        .query(
            "SELECT r.oid, r.rolname::text,
                    (SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s WHERE s.setrole = r.oid AND s.setdatabase = d.oid),
                    (SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s WHERE s.setrole = r.oid AND s.setdatabase = 0),
                    (SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s WHERE s.setrole = 0 AND s.setdatabase = d.oid)
               FROM pg_catalog.pg_roles r, pg_catalog.pg_database d
              WHERE d.datname = pg_catalog.current_database() AND r.oid = ANY($1::oid[])",
            &[&userids],
        )
        .await
        .context("reading the roles' search_path settings")?;
    let existing: std::collections::HashSet<String> = client
        .query("SELECT nspname::text FROM pg_catalog.pg_namespace", &[])
        .await
        .context("listing schemas")?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let setting = |cfg: Option<Vec<String>>| -> Option<String> {
        cfg?.into_iter()
            .find_map(|kv| kv.strip_prefix("search_path=").map(str::to_string))
    };
    let mut out = HashMap::new();
    for r in rows {
        let oid: u32 = r.get(0);
        let role: String = r.get(1);
        let value = setting(r.get(2))
            .or_else(|| setting(r.get(3)))
            .or_else(|| setting(r.get(4)))
            .unwrap_or_else(|| default.clone());
        let path: Vec<String> = resolve::parse_search_path(&value)
            .into_iter()
            .map(|s| if s == "$user" { role.clone() } else { s })
            .filter(|s| existing.contains(s))
            .fold(Vec::new(), |mut acc, s| {
                if !acc.contains(&s) {
                    acc.push(s);
                }
                acc
            });
        out.insert(oid, path);
    }
    Ok(out)
}

fn path_sql(path: &[String]) -> String {
    if path.is_empty() {
        "''".to_string()
    } else {
        path.iter().map(|s| quote_ident(s)).join(", ")
    }
}

/// Why a statement did not parse: PostgreSQL's error fields, from the quiet
/// probe or from the protocol's Parse.
#[derive(Debug, Clone)]
struct ParseError {
    code: SqlState,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

impl ParseError {
    /// The server's error; anything else (the connection) is not the
    /// statement's fault and ends the check.
    fn from_pg(e: tokio_postgres::Error) -> Result<ParseError> {
        match e.as_db_error() {
            Some(db) => Ok(ParseError {
                code: db.code().clone(),
                message: db.message().to_string(),
                detail: db.detail().map(str::to_string),
                hint: db.hint().map(str::to_string),
            }),
            None => Err(anyhow::Error::new(e).context("checking a recorded statement")),
        }
    }

    /// The message with its detail and hint, on one line.
    fn describe(&self) -> String {
        crate::pg::conn::connect::describe_fields(
            &self.message,
            self.detail.as_deref(),
            self.hint.as_deref(),
        )
    }
}

/// Why a parse did not finish, if it was the lock or the clock.
fn interrupted(e: &ParseError, lock_timeout: Duration) -> Option<String> {
    if e.code == SqlState::LOCK_NOT_AVAILABLE {
        Some(format!(
            "another session holds a lock it needs (waited {} ms, lock_timeout): {}",
            lock_timeout.as_millis(),
            e.describe()
        ))
    } else if e.code == SqlState::QUERY_CANCELED {
        Some(format!(
            "the check was cancelled (statement_timeout or the time bound): {}",
            e.describe()
        ))
    } else {
        None
    }
}

/// Can this session run the quiet probe (`DO` needs USAGE on plpgsql)?
async fn can_probe(client: &Client) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT COALESCE((SELECT pg_catalog.has_language_privilege(l.oid, 'USAGE')
                                FROM pg_catalog.pg_language l WHERE l.lanname = 'plpgsql'), false)",
            &[],
        )
        .await
        .context("looking for PL/pgSQL")?;
    Ok(row.get(0))
}

/// The `query` of the unchecked entry that counts the statements of other
/// roles this role may not see (`pg_stat_statements` shows
/// `<insufficient privilege>` for them).
pub const HIDDEN_QUERY: &str = "<insufficient privilege>";

/// The quiet probe: `PREPARE` (with the statement from `pgshift.probe`)
/// inside a PL/pgSQL block that catches the error and keeps its fields in
/// `pgshift.probe_error`. An error caught this way never reaches the server
/// log, where a Parse that fails writes an ERROR line per statement for the
/// operator to wonder about. Every name in the block is qualified: it runs
/// under the application's search path.
const PROBE: &str = "DO $pgshift_probe$
DECLARE
  e_state pg_catalog.text;
  e_message pg_catalog.text;
  e_detail pg_catalog.text;
  e_hint pg_catalog.text;
BEGIN
  EXECUTE pg_catalog.current_setting('pgshift.probe');
  DEALLOCATE pgshift_probe;
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS e_state = RETURNED_SQLSTATE, e_message = MESSAGE_TEXT,
    e_detail = PG_EXCEPTION_DETAIL, e_hint = PG_EXCEPTION_HINT;
  PERFORM pg_catalog.set_config('pgshift.probe_error',
    pg_catalog.json_build_array(e_state, e_message, e_detail, e_hint)::pg_catalog.text, true);
END
$pgshift_probe$";

/// Open the check's transaction with `begin` (which sets its search path) and
/// run the quiet probe on `sql` in it. `sql` must be one DML statement, so
/// that `PREPARE … AS` takes all of it ([`resolve::is_one_dml`]). The
/// transaction stays open (aborted after an error the block could not catch).
async fn probe(
    client: &Client,
    sql: &str,
    types: Option<&[Type]>,
    begin: &str,
) -> Result<Option<ParseError>> {
    let params = match types {
        Some(t) if !t.is_empty() => {
            let oids: Vec<u32> = t.iter().map(Type::oid).collect();
            let names: String = client
                .query_one(
                    "SELECT pg_catalog.string_agg(pg_catalog.format('%I.%I', n.nspname, t.typname), ', ' ORDER BY u.i)
                       FROM pg_catalog.unnest($1::pg_catalog.oid[]) WITH ORDINALITY AS u(o, i)
                       JOIN pg_catalog.pg_type t ON t.oid = u.o
                       JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace",
                    &[&oids],
                )
                .await
                .context("naming parameter types")?
                .get(0);
            format!("({names})")
        }
        _ => String::new(),
    };
    let statement = format!("PREPARE pgshift_probe{params} AS {sql}");
    // One round trip: the statement goes into a session setting (a bind
    // parameter, never spliced), then `begin` opens the check's transaction,
    // the block runs and the error's fields are read back. Pipelined: the
    // setting is sent first.
    let param: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 1] = [(&statement, Type::TEXT)];
    let set = client.query_typed(
        "SELECT pg_catalog.set_config('pgshift.probe', $1, false)",
        &param,
    );
    let batch = format!(
        "{begin};\n{PROBE};\nSELECT pg_catalog.current_setting('pgshift.probe_error', true)"
    );
    let run = client.simple_query(&batch);
    let (set, run) = tokio::join!(set, run);
    set.context("checking a recorded statement")?;
    let messages = match run {
        Ok(m) => m,
        // Not caught by the block: a cancellation (statement_timeout).
        Err(e) => return ParseError::from_pg(e).map(Some),
    };
    let fields: Option<String> = messages
        .iter()
        .rev()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
            _ => None,
        })
        .flatten();
    let Some(fields) = fields.filter(|f| !f.is_empty()) else {
        return Ok(None);
    };
    let (code, message, detail, hint): (String, String, Option<String>, Option<String>) =
        serde_json::from_str(&fields).context("reading a recorded statement's error")?;
    // GET STACKED DIAGNOSTICS gives '' for a missing detail or hint.
    let some = |s: Option<String>| s.filter(|s| !s.is_empty());
    Ok(Some(ParseError {
        code: SqlState::from_code(&code),
        message,
        detail: some(detail),
        hint: some(hint),
    }))
}

/// How statements are parsed and described: each in its own read-only
/// transaction, within the lock timeout and the overall deadline.
struct Checker<'a> {
    client: &'a Client,
    lock_timeout: Duration,
    deadline: Instant,
    /// Use the quiet probe before Parse (see [`PROBE`]).
    quiet: bool,
    operation: super::Operation,
}

impl Checker<'_> {
    /// The error every call of the INSERT `target` will get after the swap
    /// (with `path`): a column of its table that is NOT NULL without a
    /// default (its own, its domain's, identity or generated) that it does
    /// not set. None when it sets them all, or when a BEFORE INSERT row
    /// trigger or an INSERT rule of the table may set them.
    async fn unset_required(
        &self,
        target: &resolve::InsertTarget,
        path: &[String],
    ) -> Result<Option<String>> {
        let (named, first): (Vec<String>, i64) = match &target.sets {
            resolve::InsertColumns::Named(n) => (n.clone(), -1),
            resolve::InsertColumns::First(n) => (Vec::new(), *n as i64),
        };
        let client = self.client;
        client
            .batch_execute(&format!(
                "BEGIN READ ONLY; SET LOCAL search_path = {}",
                path_sql(path)
            ))
            .await
            .context("starting a read-only check")?;
        let row = client
            .query_opt(
                "WITH t AS (SELECT pg_catalog.to_regclass($1) AS oid),
                      cols AS (SELECT a.attname, a.attnotnull, a.atthasdef, a.attidentity, a.attgenerated,
                                      a.atttypid, pg_catalog.row_number() OVER (ORDER BY a.attnum) AS pos
                                 FROM pg_catalog.pg_attribute a, t
                                WHERE a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped)
                 SELECT c.attname::text, r.relname::text
                   FROM cols c, t JOIN pg_catalog.pg_class r ON r.oid = t.oid
                  WHERE c.attnotnull AND NOT c.atthasdef AND c.attidentity = '' AND c.attgenerated = ''
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type d
                                     WHERE d.oid = c.atttypid AND d.typdefaultbin IS NOT NULL)
                    AND CASE WHEN $3::int8 < 0 THEN NOT (c.attname::text = ANY ($2)) ELSE c.pos > $3::int8 END
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g
                                     WHERE g.tgrelid = t.oid AND NOT g.tgisinternal AND g.tgenabled <> 'D'
                                       AND (g.tgtype & 7) = 7)
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite w
                                     WHERE w.ev_class = t.oid AND w.ev_type = '3')
                  ORDER BY c.pos LIMIT 1",
                &[&target.relation, &named, &first],
            )
            .await;
        client
            .batch_execute("ROLLBACK")
            .await
            .context("ending a read-only check")?;
        // A catalog read that fails leaves the statement as described.
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                tracing::debug!(
                    "reading the columns an INSERT must set: {}",
                    crate::pg::conn::connect::describe_pg_error(&e)
                );
                None
            }
        };
        Ok(row.map(|r| {
                format!(
                    "null value in column {} of relation {} violates not-null constraint (the statement does not set it, and it has no default)",
                    crate::pg::ident::quote_ident(r.get(0)),
                    crate::pg::ident::quote_ident(r.get(1))
                )
            }))
    }

    /// Parse and describe `sql` in a read-only transaction with `path`; the
    /// transaction is always rolled back. A statement that does not parse is
    /// found by the quiet probe first where it can run, so the server logs
    /// nothing.
    async fn describe(
        &self,
        sql: &str,
        path: &[String],
        types: Option<&[Type]>,
    ) -> Result<std::result::Result<Described, ParseError>> {
        let client = self.client;
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let begin = format!(
            "BEGIN READ ONLY; SET LOCAL row_security = on; SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}; SET LOCAL search_path = {}",
            quote_literal(&format!("{}ms", self.lock_timeout.as_millis().max(1))),
            quote_literal(&format!("{}ms", remaining.as_millis().clamp(1, 10_000))),
            path_sql(path)
        );
        let probed = if self.quiet && resolve::is_one_dml(sql) {
            Some(probe(client, sql, types, &begin).await)
        } else {
            client
                .batch_execute(&begin)
                .await
                .context("starting a read-only check")?;
            None
        };
        let result = async {
            if let Some(e) = probed.transpose()?.flatten() {
                return Ok(Err(e));
            }
            let r = match types {
                Some(t) => client.prepare_typed(sql, t).await,
                None => client.prepare(sql).await,
            };
            match r {
                Ok(st) => Ok(Ok(Described {
                    params: st.params().to_vec(),
                    columns: st
                        .columns()
                        .iter()
                        .map(|c| Column {
                            name: c.name().to_string(),
                            type_oid: c.type_().oid(),
                            typmod: c.type_modifier(),
                            origin: c.table_oid().zip(c.column_id()).filter(|(t, _)| *t != 0),
                        })
                        .collect(),
                })),
                Err(e) => ParseError::from_pg(e).map(Err),
            }
        }
        .await;
        client
            .batch_execute("ROLLBACK")
            .await
            .context("ending a read-only check")?;
        result
    }
}

async fn check_one(
    checker: &Checker<'_>,
    p: &Pending,
    pairs: &[SchemaPair],
    cat: &Catalog,
) -> Result<Outcome> {
    let lt = checker.lock_timeout;
    let today = match checker.describe(&p.rec.text, &p.rec.path, None).await? {
        Ok(d) => d,
        Err(e) => {
            if let Some(why) = interrupted(&e, lt) {
                return Ok(Outcome::Unchecked(why));
            }
            let msg = e.describe();
            // `generate_series($1, $2)` with the constants gone: the
            // parameters are `unknown`, and the call is ambiguous.
            let unknown_args = matches!(
                e.code,
                SqlState::AMBIGUOUS_FUNCTION | SqlState::UNDEFINED_FUNCTION
            ) && e.message.contains("unknown");
            // pg_stat_statements records only statements that completed, so
            // a syntax error is its own doing (`ELSE'FALSE'` became `ELSE$3`).
            let reason = if e.code == SqlState::INDETERMINATE_DATATYPE || unknown_args {
                format!(
                    "a parameter's type cannot be inferred from the recorded text (pg_stat_statements replaces constants by parameters): {msg}"
                )
            } else if e.code == SqlState::SYNTAX_ERROR {
                format!(
                    "the recorded text does not parse: pg_stat_statements replaced a constant by a parameter where the syntax takes none: {msg}"
                )
            } else {
                fails_today(&msg)
            };
            return Ok(Outcome::Unchecked(reason));
        }
    };
    // A name only the live schema's own objects have (the server would still
    // find it while the check runs).
    if let Some(err) = &p.res.failing {
        return Ok(Outcome::Failing(err.clone()));
    }
    let future = match checker
        .describe(&p.res.rewritten, &p.res.future_path, None)
        .await?
    {
        Ok(d) => d,
        Err(e) => {
            if let Some(why) = interrupted(&e, lt) {
                return Ok(Outcome::Unchecked(why));
            }
            if e.code == SqlState::INDETERMINATE_DATATYPE {
                return Ok(Outcome::Unchecked(format!(
                    "a parameter's type cannot be inferred after the swap: {}",
                    e.describe()
                )));
            }
            return Ok(Outcome::Failing(resolve::map_error(
                &cat.name_moved_types(&e.message),
                pairs,
                &p.res.qualified_calls,
            )));
        }
    };
    // Statements prepared before the swap keep today's parameter types: a
    // type the swap moves to the backup, or a type the future statement
    // would infer otherwise (a column retyped from text to integer).
    let moved = today
        .params
        .iter()
        .any(|t| cat.live_type_oids.contains(&t.oid()));
    let retyped = today.params.len() == future.params.len()
        && today
            .params
            .iter()
            .zip(&future.params)
            .any(|(a, b)| a.oid() != b.oid());
    if moved || retyped {
        let typed = checker
            .describe(&p.res.rewritten, &p.res.future_path, Some(&today.params))
            .await?;
        if let Err(e) = typed {
            if let Some(why) = interrupted(&e, lt) {
                return Ok(Outcome::Unchecked(why));
            }
            let why = if moved {
                let types: Vec<String> = today
                    .params
                    .iter()
                    .filter(|t| cat.live_type_oids.contains(&t.oid()))
                    .map(|t| t.name().to_string())
                    .collect();
                format!(
                    "its parameter types {} then belong to the backup schema",
                    types.join(", ")
                )
            } else {
                let changes: Vec<String> = today
                    .params
                    .iter()
                    .zip(&future.params)
                    .enumerate()
                    .filter(|(_, (a, b))| a.oid() != b.oid())
                    .map(|(i, (a, b))| format!("${} {} (now {})", i + 1, a.name(), b.name()))
                    .collect();
                format!("it keeps its parameter types: {}", changes.join(", "))
            };
            let before = match checker.operation {
                super::Operation::Swap => "the swap",
                super::Operation::Rollback => "the rollback",
            };
            return Ok(Outcome::Failing(format!(
                "when prepared before {before} ({why}): {}",
                resolve::map_error(
                    &cat.name_moved_types(&e.message),
                    pairs,
                    &p.res.qualified_calls
                )
            )));
        }
    }
    // An INSERT that does not set a column the incoming table requires (a new
    // NOT NULL column without a default) describes fine and fails on every
    // call.
    if let Some(target) = resolve::insert_target(&p.res.rewritten)
        && let Some(err) = checker.unset_required(&target, &p.res.future_path).await?
    {
        // One that fails so on today's table too (an older version of the
        // application's INSERT, recorded before its migration) is no doing
        // of the swap's, as any statement that fails today.
        if let Some(now) = resolve::insert_target(&p.rec.text)
            && let Some(now) = checker.unset_required(&now, &p.rec.path).await?
        {
            return Ok(Outcome::Unchecked(fails_today(&now)));
        }
        return Ok(Outcome::Failing(err));
    }
    Ok(Outcome::Described(today.columns, future.columns))
}

/// Why a statement that fails on today's schema (`msg`) is left unchecked.
fn fails_today(msg: &str) -> String {
    format!(
        "it does not run as recorded on today's schema with the role's search path (a statement of an older version of the application, its migrations say; a temporary table; a search_path the application sets itself; or a constant pg_stat_statements replaced by a parameter of another type): {msg}"
    )
}

/// A result column's real type (`(type OID, typmod)`, a table column's own
/// type where the column comes from one, since Describe reports domains as
/// their base type), the table column's collation OID (0 when the column
/// comes from no table: Describe does not say), and its name as people read
/// it (`format_type` with the incoming schemas mapped back to the live ones).
type ColumnTypes = HashMap<(u32, i32, Option<(u32, i16)>), ((u32, i32), u32, String)>;

/// The real types of every result column of `described`, in two queries.
async fn column_types(
    client: &Client,
    mapper: &Mapper,
    described: &[(Pending, Vec<Column>, Vec<Column>)],
) -> Result<ColumnTypes> {
    let cols: Vec<&Column> = described
        .iter()
        .flat_map(|(_, a, b)| a.iter().chain(b))
        .collect();
    let (rels, atts): (Vec<u32>, Vec<i16>) = cols.iter().filter_map(|c| c.origin).unzip();
    client
        .batch_execute("BEGIN READ ONLY; SET LOCAL search_path = ''")
        .await
        .context("naming result types")?;
    let result = async {
        // A table column's own collation ([`super::hazards::COLUMN_COLLATION`]).
        let mut collations: HashMap<(u32, i16), String> = HashMap::new();
        let mut collation_oids: HashMap<(u32, i16), u32> = HashMap::new();
        let origins: HashMap<(u32, i16), (u32, i32)> = client
            .query(
                format!(
                    "SELECT t.r, t.a, a.atttypid, a.atttypmod, {}, a.attcollation
                       FROM ROWS FROM (pg_catalog.unnest($1::oid[]), pg_catalog.unnest($2::int2[])) AS t(r, a)
                       JOIN pg_catalog.pg_attribute a ON a.attrelid = t.r AND a.attnum = t.a
                       JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid",
                    super::hazards::COLUMN_COLLATION
                )
                .as_str(),
                &[&rels, &atts],
            )
            .await?
            .into_iter()
            .map(|r| {
                let key = (r.get(0), r.get(1));
                if let Some(coll) = r.get::<_, Option<String>>(4) {
                    collations.insert(key, coll);
                }
                collation_oids.insert(key, r.get(5));
                (key, (r.get(2), r.get(3)))
            })
            .collect();
        let real = |c: &Column| -> (u32, i32) {
            c.origin
                .and_then(|o| origins.get(&o).copied())
                .unwrap_or((c.type_oid, c.typmod))
        };
        let (oids, mods): (Vec<u32>, Vec<i32>) = cols.iter().map(|c| real(c)).unzip();
        let names: HashMap<(u32, i32), String> = client
            .query(
                "SELECT t.o, t.m, pg_catalog.format_type(t.o, t.m)
                   FROM ROWS FROM (pg_catalog.unnest($1::oid[]), pg_catalog.unnest($2::int4[])) AS t(o, m)",
                &[&oids, &mods],
            )
            .await?
            .into_iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
        let mut out: ColumnTypes = HashMap::new();
        for c in &cols {
            let t = real(c);
            let name = super::hazards::with_collation(
                names
                    .get(&t)
                    .map(|n| mapper.map(n))
                    .unwrap_or_else(|| format!("type {}", t.0)),
                c.origin
                    .and_then(|o| collations.get(&o))
                    .map(|coll| mapper.map(coll))
                    .as_deref(),
            );
            let collation = c
                .origin
                .and_then(|o| collation_oids.get(&o).copied())
                .unwrap_or(0);
            out.insert((c.type_oid, c.typmod, c.origin), (t, collation, name));
        }
        anyhow::Ok(out)
    }
    .await;
    client
        .batch_execute("ROLLBACK")
        .await
        .context("naming result types")?;
    result.context("naming result types")
}

/// `email: text -> email` for each column that differs. Columns are paired by
/// name when both lists name their columns once each (a column added in the
/// middle is `b: (none) -> boolean`, and a new order is said once); a list
/// that names one twice (`t.*, t.id`, as knex writes) is paired by position
/// when both have as many columns, else along the longest common
/// subsequence of the names, so that a column added to `t` is said once
/// and not as every later column shifted.
fn column_changes(today: &[Column], future: &[Column], types: &ColumnTypes) -> Vec<String> {
    let real = |c: &Column| -> ((u32, i32), u32, String) {
        types
            .get(&(c.type_oid, c.typmod, c.origin))
            .map(|(t, coll, n)| (*t, *coll, super::hazards::show_type(n)))
            .unwrap_or_else(|| ((c.type_oid, c.typmod), 0, format!("type {}", c.type_oid)))
    };
    let changed = |a: &Column, b: &Column| -> Option<String> {
        let ((oa, _), ca, ta) = real(a);
        let ((ob, _), cb, tb) = real(b);
        if a.name != b.name {
            Some(format!("{}: {ta} -> {}: {tb}", a.name, b.name))
        } else if ta != tb {
            Some(format!("{}: {ta} -> {tb}", a.name))
        } else if oa != ob {
            Some(format!(
                "{}: {ta} -> {tb} (replaced by the incoming schema's type of the same name)",
                a.name
            ))
        } else if ca != cb && ca != 0 && cb != 0 {
            Some(format!(
                "{}: {ta} -> {tb} (its collation replaced by the incoming schema's of the same name)",
                a.name
            ))
        } else {
            None
        }
    };
    let removed = |a: &Column| format!("{}: {} -> (none)", a.name, real(a).2);
    let added = |b: &Column| format!("{}: (none) -> {}", b.name, real(b).2);
    fn names(cs: &[Column]) -> Vec<&str> {
        cs.iter().map(|c| c.name.as_str()).collect()
    }
    let once = |n: &[&str]| n.iter().collect::<HashSet<_>>().len() == n.len();
    let (tn, fnames) = (names(today), names(future));
    let mut out = Vec::new();
    let repeated = !once(&tn) || !once(&fnames);
    if repeated && tn.len() != fnames.len() {
        let (n, m) = (tn.len(), fnames.len());
        // common[i][j]: the longest common subsequence of tn[i..], fnames[j..].
        let mut common = vec![vec![0usize; m + 1]; n + 1];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                common[i][j] = if tn[i] == fnames[j] {
                    common[i + 1][j + 1] + 1
                } else {
                    common[i + 1][j].max(common[i][j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && tn[i] == fnames[j] {
                out.extend(changed(&today[i], &future[j]));
                (i, j) = (i + 1, j + 1);
            } else if j < m && (i == n || common[i][j + 1] >= common[i + 1][j]) {
                out.push(added(&future[j]));
                j += 1;
            } else {
                out.push(removed(&today[i]));
                i += 1;
            }
        }
        return out;
    }
    if tn == fnames || repeated {
        for i in 0..today.len().max(future.len()) {
            match (today.get(i), future.get(i)) {
                (Some(a), Some(b)) => out.extend(changed(a, b)),
                (Some(a), None) => out.push(removed(a)),
                (None, Some(b)) => out.push(added(b)),
                (None, None) => {}
            }
        }
        return out;
    }
    for a in today {
        match future.iter().find(|b| b.name == a.name) {
            Some(b) => out.extend(changed(a, b)),
            None => out.push(removed(a)),
        }
    }
    out.extend(
        future
            .iter()
            .filter(|b| !tn.contains(&b.name.as_str()))
            .map(added),
    );
    let kept = |from: &[&str], other: &[&str]| -> Vec<String> {
        from.iter()
            .filter(|n| other.contains(n))
            .map(|n| n.to_string())
            .collect()
    };
    let (before, after) = (kept(&tn, &fnames), kept(&fnames, &tn));
    if before != after {
        out.push(format!(
            "column order: {} -> {}",
            before.join(", "),
            after.join(", ")
        ));
    }
    out
}

/// The start of a statement on one line (for messages).
pub fn short(query: &str) -> String {
    report::short_query(query, 80)
}

/// The names that stay where they are with `p`'s kept tables, in the live
/// schema and (their namesakes) in the incoming one: the tables, the
/// sequences they own and their array types (`_audit`; the row type has the
/// table's name).
async fn staying_names(client: &Client, p: &SchemaPair) -> Result<HashSet<String>> {
    let mut out: HashSet<String> = p.stays.iter().cloned().collect();
    if p.stays.is_empty() {
        return Ok(out);
    }
    let rows = client
        .query(
            "SELECT s.relname::text
               FROM pg_catalog.pg_class t
               JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
               JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                    AND d.refobjid = t.oid AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                    AND d.deptype IN ('a', 'i')
               JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
              WHERE n.nspname = ANY($1) AND t.relname = ANY($2)
             UNION
             SELECT a.typname::text
               FROM pg_catalog.pg_class t
               JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
               JOIN pg_catalog.pg_type r ON r.oid = t.reltype
               JOIN pg_catalog.pg_type a ON a.oid = r.typarray
              WHERE n.nspname = ANY($1) AND t.relname = ANY($2)",
            &[&[p.live.as_str(), p.incoming.as_str()].as_slice(), &p.stays],
        )
        .await
        .context("reading what stays with the kept tables")?;
    out.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_column_changes() {
        let col = |name: &str, oid: u32, origin: Option<(u32, i16)>| Column {
            name: name.into(),
            type_oid: oid,
            typmod: -1,
            origin,
        };
        let mut types: ColumnTypes = HashMap::new();
        // email: text today, a domain over text in the future (Describe says text).
        types.insert((25, -1, Some((1, 1))), ((25, -1), 0, "text".into()));
        types.insert(
            (25, -1, Some((2, 1))),
            ((90001, -1), 0, "public.email".into()),
        );
        types.insert((90002, -1, None), ((90002, -1), 0, "public.mood".into()));
        types.insert((90003, -1, None), ((90003, -1), 0, "public.mood".into()));
        types.insert((25, -1, None), ((25, -1), 0, "text".into()));
        types.insert(
            (1184, -1, None),
            ((1184, -1), 0, "timestamp with time zone".into()),
        );
        let today = vec![
            col("email", 25, Some((1, 1))),
            col("m", 90002, None),
            col("id", 25, None),
        ];
        let future = vec![
            col("email", 25, Some((2, 1))),
            col("m", 90003, None),
            col("id", 25, None),
            col("created_at", 1184, None),
        ];
        assert_eq!(
            column_changes(&today, &future, &types),
            vec![
                "email: text -> email",
                "m: mood -> mood (replaced by the incoming schema's type of the same name)",
                "created_at: (none) -> timestamp with time zone",
            ]
        );
        // A column added in the middle, one dropped, two swapped: by name.
        let today = vec![
            col("a", 25, None),
            col("c", 25, None),
            col("d", 25, None),
            col("e", 1184, None),
        ];
        let future = vec![
            col("a", 25, None),
            col("b", 1184, None),
            col("e", 1184, None),
            col("c", 25, None),
        ];
        assert_eq!(
            column_changes(&today, &future, &types),
            vec![
                "d: text -> (none)",
                "b: (none) -> timestamp with time zone",
                "column order: a, c, e -> a, e, c",
            ]
        );
        // A name used twice: by position.
        let today = vec![col("a", 25, None), col("a", 25, None)];
        let future = vec![col("a", 25, None), col("b", 25, None)];
        assert_eq!(
            column_changes(&today, &future, &types),
            vec!["a: text -> b: text"]
        );
        // `t.*, t.id` where t gained a column in the middle: that column
        // alone (it read `a: text -> d: …; id: … -> a: text; id: (none) -> …`).
        let today = vec![col("id", 25, None), col("a", 25, None), col("id", 25, None)];
        let future = vec![
            col("id", 25, None),
            col("d", 1184, None),
            col("a", 25, None),
            col("id", 25, None),
        ];
        assert_eq!(
            column_changes(&today, &future, &types),
            vec!["d: (none) -> timestamp with time zone"]
        );
        // And one dropped from it.
        assert_eq!(
            column_changes(&future, &today, &types),
            vec!["d: timestamp with time zone -> (none)"]
        );
    }

    #[test]
    fn matches_used_objects() {
        let mut r = StatementsReport::not_checked("x");
        r.used_objects = vec!["public.accounts".into(), "public.f".into()];
        assert!(r.uses("public.accounts"));
        assert!(r.uses("public.accounts.email"));
        assert!(r.uses("public.f(integer)"));
        assert!(!r.uses("public.accounts_archive"));
        assert!(!r.uses("public.fx(integer)"));
    }
}
