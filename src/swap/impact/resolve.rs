//! Name resolution for the workload check: which objects a recorded statement
//! names, where PostgreSQL finds them today, and where it will find them after
//! the swap.
//!
//! The statement is parsed with PostgreSQL's own parser ([`pg_query::parse`]);
//! its tree (serialised to JSON, walked generically so no node kind is missed)
//! gives the relations (`RangeVar`, except CTE names and `FOR UPDATE OF`
//! aliases), functions (`FuncCall`), types (`TypeName`, except `%TYPE`) and
//! operators (`A_Expr`) it names, with their qualifiers.
//!
//! Resolution follows PostgreSQL: an unqualified name is looked up through the
//! search path (`pg_catalog` first unless the path lists it), the first schema
//! that has it wins (for functions and operators: the first schema that has any
//! object of that name, good enough to tell which schemas matter). The *future*
//! namespace is the same path with each live schema replaced by its incoming
//! schema, followed by the live schema's extension members, which the swap
//! leaves where they are. While the check runs the live schema still holds its
//! own objects, so a name found today only among the live schema's
//! non-extension objects would still be found by the server; such names are
//! decided here (`relation "x" does not exist`, as PostgreSQL words it) instead.
//!
//! For the server's own check the statement is rewritten: `public.x` becomes
//! `shadow.x` for every object the swap moves (PostgreSQL's scanner, through
//! [`crate::dump::sql::remap`]), and the future search path lists the incoming
//! schema instead of the live one, plus the live one after it only when the
//! statement needs one of its extension members. In that case an unqualified
//! call of a function that also exists among the live schema's own functions
//! is qualified with the incoming schema, when no other schema on the path has
//! a function of that name; what remains inexact is an operator, or a function
//! name that also exists elsewhere on the path, defined by the live schema
//! itself in a statement that also uses an extension (rare; the server may then
//! pick the live schema's overload).

use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::{Context, Result};
use serde_json::Value;
use tokio_postgres::GenericClient;

use super::{SchemaPair, qualified_display};
use crate::dump::sql::{DefinedNames, remap};
use crate::pg::catalog::defined_names;
use crate::pg::ident::display_ident;
use crate::pg::meta::{BACKUP_PREFIX, META_SCHEMA, SHADOW_PREFIX, SHADOW_SCHEMA};

/// A name as written in a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRef {
    pub schema: Option<String>,
    pub name: String,
    /// Byte offset in the statement text.
    pub location: Option<usize>,
}

/// The names a statement uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refs {
    pub relations: Vec<NameRef>,
    pub functions: Vec<NameRef>,
    pub types: Vec<NameRef>,
    pub operators: Vec<NameRef>,
    /// It calls `nextval` or `currval` with the sequence a parameter: what
    /// pg_stat_statements makes of `nextval('hib_seq')`, so which sequence
    /// is not known (h48a: a sequence the swap dropped failed every call,
    /// unsaid). `setval` is not counted: pg_restore runs one per sequence.
    pub sequence_by_parameter: bool,
}

/// What kind of statement the text is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// SELECT, INSERT, UPDATE, DELETE, MERGE, VALUES, WITH …
    Dml(Refs),
    /// Anything else (utility statements), or several statements.
    Other,
}

/// The table an INSERT writes and the columns it sets (see
/// [`insert_target`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertTarget {
    /// As written, quoted for `to_regclass` (`"shadow"."dag"`, `"dag"`).
    pub relation: String,
    pub sets: InsertColumns,
}

/// The columns an INSERT sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertColumns {
    /// Named: `INSERT INTO t (a, b)` (none: `DEFAULT VALUES`).
    Named(Vec<String>),
    /// By position: `INSERT INTO t VALUES ($1, $2)` sets the first two.
    First(usize),
}

/// What one INSERT statement sets, when the text tells: named columns, or
/// the first n by position for `VALUES` rows of n items (the shortest row).
/// None for any other statement, and for an INSERT of a `SELECT` without a
/// column list.
pub fn insert_target(query: &str) -> Option<InsertTarget> {
    use pg_query::NodeEnum as N;
    let parsed = pg_query::parse(query, 0).ok()?;
    let [stmt] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    let Some(N::InsertStmt(ins)) = stmt.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
        return None;
    };
    let rel = ins.relation.as_ref()?;
    let relation = if rel.schemaname.is_empty() {
        crate::pg::ident::quote_ident(&rel.relname)
    } else {
        crate::pg::ident::qualified(&rel.schemaname, &rel.relname)
    };
    let sets = if !ins.cols.is_empty() {
        InsertColumns::Named(
            ins.cols
                .iter()
                .filter_map(|c| match c.node.as_ref()? {
                    N::ResTarget(r) => Some(r.name.clone()),
                    _ => None,
                })
                .collect(),
        )
    } else {
        match ins.select_stmt.as_ref().and_then(|n| n.node.as_ref()) {
            None => InsertColumns::Named(Vec::new()),
            Some(N::SelectStmt(sel)) if !sel.values_lists.is_empty() => InsertColumns::First(
                sel.values_lists
                    .iter()
                    .filter_map(|l| match l.node.as_ref()? {
                        N::List(l) => Some(l.items.len()),
                        _ => None,
                    })
                    .min()?,
            ),
            _ => return None,
        }
    };
    Some(InsertTarget { relation, sets })
}

/// Is the parse one SELECT, INSERT, UPDATE, DELETE or MERGE (what
/// `PREPARE … AS` takes whole)?
fn one_dml(parsed: &pg_query::ParseResult) -> bool {
    use pg_query::NodeEnum as N;
    let [stmt] = parsed.protobuf.stmts.as_slice() else {
        return false;
    };
    matches!(
        stmt.stmt.as_ref().and_then(|n| n.node.as_ref()),
        Some(
            N::SelectStmt(_)
                | N::InsertStmt(_)
                | N::UpdateStmt(_)
                | N::DeleteStmt(_)
                | N::MergeStmt(_)
        )
    )
}

/// A statement PostgreSQL's referential-integrity triggers run themselves
/// (`ri_triggers.c`), which pg_stat_statements records as a top-level
/// statement when a deferred key is checked at COMMIT: a key's check
/// (`SELECT 1 FROM ONLY "public"."orders" x WHERE "id" OPERATOR(pg_catalog.=)
/// $1 FOR KEY SHARE OF x`) and its cascades (`DELETE FROM ONLY … WHERE $1
/// OPERATOR(pg_catalog.=) "user_id"`, `UPDATE ONLY … SET … WHERE $2
/// OPERATOR(pg_catalog.=) …`). They belong to a foreign key, not to the
/// application: after the swap the new tables' keys run their own, so none of
/// them fails.
pub fn referential_action(text: &str) -> bool {
    let t = text.trim();
    let operator = t.contains(" OPERATOR(pg_catalog.");
    // The key's parameter on the left of its column, as only those
    // cascades write it.
    let cascade = || {
        t.match_indices(" WHERE $").any(|(i, m)| {
            let rest = &t[i + m.len()..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            digits > 0 && rest[digits..].starts_with(" OPERATOR(pg_catalog.")
        })
    };
    operator
        && ((t.starts_with("SELECT ")
            && t.contains(" x WHERE ")
            && t.ends_with(" FOR KEY SHARE OF x"))
            || ((t.starts_with("DELETE FROM ") || t.starts_with("UPDATE ")) && cascade()))
}

/// The statement an SQL-level `PREPARE name [(types)] AS statement` prepares
/// (pg_stat_statements records it so, and `EXECUTE name` runs it): the text
/// after the `AS` outside parentheses, found with PostgreSQL's own scanner.
/// A session that prepared it before the swap fails the same way a
/// protocol-level prepared statement does, so it is checked as one. None
/// for any other text.
pub fn prepared_body(query: &str) -> Option<&str> {
    use pg_query::NodeEnum as N;
    use pg_query::protobuf::Token;
    let parsed = pg_query::parse(query, 0).ok()?;
    let [stmt] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    if !matches!(
        stmt.stmt.as_ref().and_then(|n| n.node.as_ref()),
        Some(N::PrepareStmt(_))
    ) {
        return None;
    }
    let scanned = pg_query::scan(query).ok()?;
    let mut depth = 0i32;
    for t in &scanned.tokens {
        match t.token() {
            Token::Ascii40 => depth += 1,
            Token::Ascii41 => depth -= 1,
            Token::As if depth == 0 => {
                let body = query.get(usize::try_from(t.end).ok()?..)?.trim();
                return (!body.is_empty()).then_some(body);
            }
            _ => {}
        }
    }
    None
}

/// Is `query` exactly one SELECT, INSERT, UPDATE, DELETE or MERGE?
pub fn is_one_dml(query: &str) -> bool {
    pg_query::parse(query, 0).is_ok_and(|p| one_dml(&p))
}

/// Parse `query` and collect the names it uses.
pub fn parse(query: &str) -> Result<Parsed, String> {
    let parsed = match pg_query::parse(query, 0) {
        Ok(p) => p,
        // The parser is PostgreSQL 18's: text an older server recorded may
        // not parse (`CREATE FUNCTION f(json json)`: JSON is a keyword now).
        // Utility statements are left out whether or not they parse.
        Err(_) if starts_as_utility(query) => return Ok(Parsed::Other),
        Err(e) => return Err(e.to_string()),
    };
    if !one_dml(&parsed) {
        return Ok(Parsed::Other);
    }
    let tree = serde_json::to_value(&parsed.protobuf).map_err(|e| e.to_string())?;
    let mut refs = Refs::default();
    let mut ctes: HashSet<String> = HashSet::new();
    walk(&tree, &mut refs, &mut ctes);
    refs.relations
        .retain(|r| r.schema.is_some() || !ctes.contains(&r.name));
    for list in [
        &mut refs.relations,
        &mut refs.functions,
        &mut refs.types,
        &mut refs.operators,
    ] {
        list.sort_by_key(|r| r.location.unwrap_or(usize::MAX));
    }
    Ok(Parsed::Dml(refs))
}

/// Does `query`'s first word (after comments and opening parentheses) start
/// a utility statement, which the check leaves out?
fn starts_as_utility(query: &str) -> bool {
    let mut rest = query;
    loop {
        let t = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        if let Some(after) = t.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(after) = t.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r);
        } else {
            rest = t;
            break;
        }
    }
    let word: String = rest
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect::<String>()
        .to_ascii_lowercase();
    matches!(
        word.as_str(),
        "create"
            | "alter"
            | "drop"
            | "comment"
            | "grant"
            | "revoke"
            | "security"
            | "set"
            | "reset"
            | "show"
            | "begin"
            | "start"
            | "commit"
            | "end"
            | "rollback"
            | "abort"
            | "savepoint"
            | "release"
            | "vacuum"
            | "analyze"
            | "refresh"
            | "reindex"
            | "cluster"
            | "truncate"
            | "lock"
            | "copy"
            | "do"
            | "call"
            | "explain"
            | "listen"
            | "unlisten"
            | "notify"
            | "discard"
            | "deallocate"
            | "declare"
            | "fetch"
            | "move"
            | "close"
            | "checkpoint"
            | "load"
            | "import"
    )
}

/// Type names that may precede a string constant (`interval '1 day'`,
/// `date '2024-01-01'`): pg_stat_statements keeps the type and replaces the
/// constant, giving `interval $1`, which does not parse.
const TYPE_WORDS: &[&str] = &[
    "interval",
    "date",
    "time",
    "timestamp",
    "timestamptz",
    "timetz",
    "int",
    "integer",
    "bigint",
    "smallint",
    "numeric",
    "decimal",
    "real",
    "float",
    "boolean",
    "varchar",
    "char",
    "character",
    "bit",
    "text",
    "json",
    "jsonb",
    "uuid",
    "inet",
    "cidr",
    "bytea",
    "money",
    "xml",
];

/// Turn pg_stat_statements' normalised typed constants (`interval $1`,
/// `timestamp with time zone $2`, `public.mood $3`) back into something the
/// server parses (`$1::interval`, …). (pg_query's parser accepts `interval $1`,
/// PostgreSQL's does not; no valid statement has a type name or identifier right
/// before a parameter.) `None` when there is nothing to repair or the result
/// does not parse.
pub fn repair_typed_constants(query: &str) -> Option<String> {
    use pg_query::protobuf::{KeywordKind, Token};
    let scanned = pg_query::scan(query).ok()?;
    let toks: Vec<&pg_query::protobuf::ScanToken> = scanned
        .tokens
        .iter()
        .filter(|t| !matches!(t.token(), Token::SqlComment | Token::CComment))
        .collect();
    let text = |k: usize| &query[toks[k].start as usize..toks[k].end as usize];
    let word = |k: usize| -> Option<String> {
        let t = toks[k];
        let is_word = t.token() == Token::Ident || t.keyword_kind() != KeywordKind::NoKeyword;
        is_word.then(|| {
            let w = text(k);
            if w.starts_with('"') {
                w.to_string()
            } else {
                w.to_ascii_lowercase()
            }
        })
    };
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    // A constant written against a keyword (`ELSE'FALSE'`) becomes `ELSE$3`,
    // which scans as one identifier (`$` may continue one): split it again.
    for (i, t) in toks.iter().enumerate() {
        if t.token() == Token::Ident
            && let Some((keyword, param)) = fused_keyword_param(text(i))
        {
            edits.push((
                t.start as usize,
                t.end as usize,
                format!("{keyword} {param}"),
            ));
        }
    }
    for i in 1..toks.len() {
        if toks[i].token() != Token::Param {
            continue;
        }
        let Some(w1) = word(i - 1) else { continue };
        let at = |k: usize, words: &[&str]| {
            k < i && word(k).is_some_and(|w| words.contains(&w.as_str()))
        };
        let mut first = if w1 == "zone"
            && i >= 4
            && at(i - 2, &["time"])
            && at(i - 3, &["with", "without"])
            && at(i - 4, &["timestamp", "time"])
        {
            i - 4
        } else if w1 == "precision" && i >= 2 && at(i - 2, &["double"]) {
            i - 2
        } else if TYPE_WORDS.contains(&w1.as_str())
            || (toks[i - 1].token() == Token::Ident
                && toks[i - 1].keyword_kind() == KeywordKind::NoKeyword)
        {
            i - 1
        } else {
            continue;
        };
        // A qualified type name: `public.mood $1`.
        while first >= 2 && toks[first - 1].token() == Token::Ascii46 && word(first - 2).is_some() {
            first -= 2;
        }
        let type_text = &query[toks[first].start as usize..toks[i - 1].end as usize];
        edits.push((
            toks[first].start as usize,
            toks[i].end as usize,
            format!("{}::{type_text}", text(i)),
        ));
    }
    if edits.is_empty() {
        return None;
    }
    edits.sort_by_key(|e| e.0);
    let mut out = query.to_string();
    for (start, end, replacement) in edits.into_iter().rev() {
        out.replace_range(start..end, &replacement);
    }
    pg_query::parse(&out, 0).ok().map(|_| out)
}

/// `ELSE$3` as (`ELSE`, `$3`): an unquoted identifier that is a keyword
/// followed by a parameter, as pg_stat_statements leaves a constant that was
/// written without a space after the keyword.
fn fused_keyword_param(ident: &str) -> Option<(&str, &str)> {
    let at = ident.find('$').filter(|&at| at > 0)?;
    let (keyword, param) = ident.split_at(at);
    let digits = &param[1..];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let scanned = pg_query::scan(keyword).ok()?;
    let [only] = scanned.tokens.as_slice() else {
        return None;
    };
    (only.keyword_kind() != pg_query::protobuf::KeywordKind::NoKeyword).then_some((keyword, param))
}

/// The `sval`s of a list of `String` nodes.
fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.pointer("/node/String/sval").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn location(m: &serde_json::Map<String, Value>) -> Option<usize> {
    m.get("location")
        .and_then(Value::as_i64)
        .filter(|l| *l >= 0)
        .map(|l| l as usize)
}

fn name_ref(parts: Vec<String>, loc: Option<usize>) -> Option<NameRef> {
    match parts.len() {
        1 => Some(NameRef {
            schema: None,
            name: parts.into_iter().next().unwrap_or_default(),
            location: loc,
        }),
        n if n >= 2 => {
            let mut parts = parts;
            let name = parts.pop().unwrap_or_default();
            let schema = parts.pop();
            Some(NameRef {
                schema,
                name,
                location: loc,
            })
        }
        _ => None,
    }
}

/// A call of `nextval` or `currval` (unqualified or `pg_catalog.`) whose
/// first argument is not a name written in the text: a parameter, cast or
/// not (`nextval($1)`, `nextval($1::text::regclass)`), or any expression of
/// parameters or columns (`nextval(quote_ident($1))`,
/// `nextval(($1 || $2)::regclass)`, `nextval(t.seq)`: h49a).
fn sequence_by_parameter(f: &NameRef, call: &serde_json::Map<String, Value>) -> bool {
    let sequence_fn = matches!(f.name.as_str(), "nextval" | "currval")
        && f.schema.as_deref().is_none_or(|s| s == "pg_catalog");
    let first = call
        .get("args")
        .and_then(Value::as_array)
        .and_then(|a| a.first());
    sequence_fn && first.is_some_and(names_nothing_fixed)
}

/// Whether an expression's value depends on a parameter or a column.
fn names_nothing_fixed(v: &Value) -> bool {
    match v {
        Value::Object(m) => {
            m.contains_key("ParamRef")
                || m.contains_key("ColumnRef")
                || m.values().any(names_nothing_fixed)
        }
        Value::Array(a) => a.iter().any(names_nothing_fixed),
        _ => false,
    }
}

fn walk(v: &Value, refs: &mut Refs, ctes: &mut HashSet<String>) {
    match v {
        Value::Object(m) => {
            if m.contains_key("relname") && m.contains_key("schemaname") {
                // RangeVar (also where it is not wrapped in a Node: INSERT INTO …).
                let schema = m.get("schemaname").and_then(Value::as_str).unwrap_or("");
                let name = m.get("relname").and_then(Value::as_str).unwrap_or("");
                refs.relations.push(NameRef {
                    schema: (!schema.is_empty()).then(|| schema.to_string()),
                    name: name.to_string(),
                    location: location(m),
                });
            } else if m.contains_key("funcname") && m.contains_key("func_variadic") {
                if let Some(r) = name_ref(strings(m.get("funcname")), location(m)) {
                    refs.sequence_by_parameter |= sequence_by_parameter(&r, m);
                    refs.functions.push(r);
                }
            } else if m.contains_key("names") && m.contains_key("typemod") {
                let pct = m.get("pct_type").and_then(Value::as_bool).unwrap_or(false);
                if !pct && let Some(r) = name_ref(strings(m.get("names")), location(m)) {
                    refs.types.push(r);
                }
            } else if m.contains_key("lexpr") && m.contains_key("rexpr") && m.contains_key("name") {
                if let Some(r) = name_ref(strings(m.get("name")), location(m)) {
                    refs.operators.push(r);
                }
            } else if let Some(c) = m.get("ctename").and_then(Value::as_str) {
                ctes.insert(c.to_string());
            }
            for (k, child) in m {
                // `FOR UPDATE OF a` names aliases, not relations.
                if k != "locked_rels" {
                    walk(child, refs, ctes);
                }
            }
        }
        Value::Array(items) => {
            for i in items {
                walk(i, refs, ctes);
            }
        }
        _ => {}
    }
}

/// Object kinds with their own namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Relation,
    Type,
    Function,
    Operator,
}

/// Whether a schema has objects of a name, extension members or its own.
#[derive(Debug, Clone, Copy, Default)]
struct Has {
    ext: bool,
    own: bool,
    /// A kept table (or its row type) of a live schema: it stays where it
    /// is, even where the incoming schema has a namesake.
    kept: bool,
}

/// Object names of the schemas that matter (the search paths, live, incoming,
/// `pg_catalog`).
#[derive(Debug, Default)]
pub struct Catalog {
    names: HashMap<(Kind, String, String), Has>,
    /// OIDs of the live schemas' own types (array and row types included):
    /// statements prepared before the swap keep such parameter types.
    pub live_type_oids: HashSet<u32>,
    /// Those types' `(schema, name)`, to name them where they will be.
    live_types: Vec<(String, String)>,
}

impl Catalog {
    /// Load the names of `schemas`; `live` are the live schemas, `stays` the
    /// `(schema, table)` of live tables the swap leaves where they are (kept
    /// tables): they, their row and array types and the sequences they own
    /// (which move with them) count as staying, like extension members.
    pub async fn load(
        client: &impl GenericClient,
        schemas: &[String],
        live: &[String],
        stays: &HashSet<(String, String)>,
    ) -> Result<Catalog> {
        let sql = "WITH RECURSIVE ext(classid, objid) AS (
                SELECT d.classid, d.objid FROM pg_catalog.pg_depend d WHERE d.deptype = 'e'
                UNION
                SELECT d.classid, d.objid FROM pg_catalog.pg_depend d
                  JOIN ext ON d.refclassid = ext.classid AND d.refobjid = ext.objid
                 WHERE d.deptype IN ('i', 'a')),
              ns AS (SELECT oid, nspname FROM pg_catalog.pg_namespace WHERE nspname = ANY($1::text[]))
            SELECT 'r', ns.nspname::text, c.relname::text, (c.tableoid, c.oid) IN (SELECT * FROM ext), 0::oid,
                   (SELECT o.relname::text FROM pg_catalog.pg_depend d
                      JOIN pg_catalog.pg_class o ON o.oid = d.refobjid
                     WHERE c.relkind = 'S' AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                       AND d.objid = c.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                       AND d.deptype IN ('a', 'i') AND o.relnamespace = c.relnamespace LIMIT 1)
              FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
            UNION ALL
            SELECT 't', ns.nspname::text, t.typname::text,
                   (t.tableoid, t.oid) IN (SELECT * FROM ext)
                   OR (t.typrelid <> 0 AND ('pg_catalog.pg_class'::pg_catalog.regclass, t.typrelid) IN (SELECT * FROM ext))
                   OR (t.typelem <> 0 AND ('pg_catalog.pg_type'::pg_catalog.regclass, t.typelem) IN (SELECT * FROM ext)),
                   t.oid,
                   (SELECT e.typname::text FROM pg_catalog.pg_type e
                     WHERE t.typelem <> 0 AND e.oid = t.typelem AND e.typarray = t.oid
                       AND e.typnamespace = t.typnamespace)
              FROM pg_catalog.pg_type t JOIN ns ON ns.oid = t.typnamespace
            UNION ALL
            SELECT 'f', ns.nspname::text, p.proname::text, (p.tableoid, p.oid) IN (SELECT * FROM ext), 0::oid, NULL
              FROM pg_catalog.pg_proc p JOIN ns ON ns.oid = p.pronamespace
            UNION ALL
            SELECT 'o', ns.nspname::text, o.oprname::text, (o.tableoid, o.oid) IN (SELECT * FROM ext), 0::oid, NULL
              FROM pg_catalog.pg_operator o JOIN ns ON ns.oid = o.oprnamespace";
        let rows = client
            .query(sql, &[&schemas])
            .await
            .context("reading the names of the schemas on the search paths")?;
        let mut cat = Catalog::default();
        for r in rows {
            let kind = match r.get::<_, &str>(0) {
                "r" => Kind::Relation,
                "t" => Kind::Type,
                "f" => Kind::Function,
                _ => Kind::Operator,
            };
            let schema: String = r.get(1);
            let name: String = r.get(2);
            // Its owning table (a sequence) or element type (an array type).
            let owner: Option<String> = r.get(5);
            let kept = matches!(kind, Kind::Relation | Kind::Type)
                && (stays.contains(&(schema.clone(), name.clone()))
                    || owner.is_some_and(|o| stays.contains(&(schema.clone(), o))));
            let ext: bool = r.get::<_, bool>(3) || kept;
            if kind == Kind::Type && !ext && live.contains(&schema) {
                cat.live_type_oids.insert(r.get(4));
                cat.live_types.push((schema.clone(), name.clone()));
            }
            let has = cat.names.entry((kind, schema, name)).or_default();
            has.kept |= kept;
            if ext {
                has.ext = true;
            } else {
                has.own = true;
            }
        }
        Ok(cat)
    }

    /// `msg`, an error of a statement checked before the swap, with the live
    /// schemas' own types named where the swap puts them: `public.mood`, the
    /// type of today's public that a prepared statement or a kept table
    /// still uses, is `backup_<unix ms>.mood` after the swap, and the server
    /// names it so then (read before the swap, `public.mood` against the
    /// incoming `mood` read as the same type twice). Before [`map_error`],
    /// which names the incoming schemas' objects as the live schemas'.
    pub fn name_moved_types(&self, msg: &str) -> String {
        let mut out = msg.to_string();
        let mut types: Vec<&(String, String)> = self.live_types.iter().collect();
        // The longer first: `public.mood_x` is no `public.mood` followed by `_x`.
        types.sort_by_key(|(s, n)| std::cmp::Reverse(s.len() + n.len()));
        for (schema, name) in types {
            let from = format!("{}.{}", display_ident(schema), display_ident(name));
            if !out.contains(&from) {
                continue;
            }
            // The backup's name as the dry run writes it (`backup_<unix ms>`).
            let to = format!(
                "{}.{}",
                crate::pg::meta::backup_schema_stamped("<unix ms>", schema),
                display_ident(name)
            );
            out = replace_names(&out, &from, &to);
        }
        out
    }

    fn has(&self, kind: Kind, schema: &str, name: &str) -> Has {
        self.names
            .get(&(kind, schema.to_string(), name.to_string()))
            .copied()
            .unwrap_or_default()
    }

    /// Insert a name (tests).
    #[cfg(test)]
    fn add(&mut self, kind: Kind, schema: &str, name: &str, ext: bool) {
        let has = self
            .names
            .entry((kind, schema.to_string(), name.to_string()))
            .or_default();
        if ext {
            has.ext = true;
        } else {
            has.own = true;
        }
    }
}

/// Where a name resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    /// In this schema (an object that stays where it is).
    Stays(String),
    /// Among a live schema's own objects (moved away by the swap).
    Live(usize),
    /// Among a live schema's extension members (they stay).
    LiveExt(usize),
    /// In an incoming schema (becomes the live schema's).
    Incoming(usize),
    Nowhere,
}

/// The effective path: `pg_catalog` first unless listed.
fn effective(path: &[String]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::with_capacity(path.len() + 1);
    if !path.iter().any(|s| s == "pg_catalog") {
        out.push("pg_catalog");
    }
    out.extend(path.iter().map(String::as_str));
    out
}

/// What a statement needs for its check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// It names an object of a live or incoming schema (or a name found nowhere):
    /// the swap can change it.
    pub in_scope: bool,
    /// It names pgshift's own schemas (the incoming ones, `pgshift`, backups).
    pub pgshift_own: bool,
    /// Objects of the live schemas it uses (`public.accounts`, `public.f`).
    pub uses: BTreeSet<String>,
    /// A name that will not resolve after the swap, with PostgreSQL's wording.
    pub failing: Option<String>,
    /// The text to check in the future namespace.
    pub rewritten: String,
    /// The search path of the future check.
    pub future_path: Vec<String>,
    /// Function calls qualified with an incoming schema by the rewrite:
    /// `(incoming, name)`, to word errors as the application will see them.
    pub qualified_calls: Vec<(String, String)>,
}

/// The schema names pgshift owns: the incoming schemas, `pgshift`, the
/// shadows (`shadow`, `pgshift_shadow_…`: in a rollback they are not the
/// incoming ones, and prepare's replay of a preserved table names them),
/// `backup_<digits>` and another schema's `backup_<unix ms>_…`.
fn is_pgshift_schema(schema: &str, pairs: &[SchemaPair]) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    schema == META_SCHEMA
        || schema == SHADOW_SCHEMA
        || schema.starts_with(SHADOW_PREFIX)
        || pairs.iter().any(|p| p.incoming == schema)
        || schema.strip_prefix(BACKUP_PREFIX).is_some_and(|rest| {
            digits(rest)
                || rest
                    .split_once('_')
                    .is_some_and(|(ts, _)| ts.len() >= 13 && digits(ts))
        })
}

/// Resolve the names of one statement for the application whose search path is
/// `path` (existing schemas, `$user` expanded).
pub fn resolve(
    query: &str,
    refs: &Refs,
    path: &[String],
    pairs: &[SchemaPair],
    cat: &Catalog,
    defined: &[DefinedNames],
) -> Result<Resolution> {
    let mut res = Resolution::default();
    let eff = effective(path);
    let live_idx = |s: &str| pairs.iter().position(|p| p.live == s);

    let today = |kind: Kind, name: &str| -> Found {
        for s in &eff {
            let has = cat.has(kind, s, name);
            if has.own || has.ext {
                return match live_idx(s) {
                    Some(i) if has.own => Found::Live(i),
                    Some(i) => Found::LiveExt(i),
                    None => Found::Stays(s.to_string()),
                };
            }
        }
        Found::Nowhere
    };
    let future = |kind: Kind, name: &str| -> Found {
        for s in &eff {
            match live_idx(s) {
                Some(i) => {
                    if cat.has(kind, s, name).kept {
                        return Found::LiveExt(i);
                    }
                    let inc = cat.has(kind, &pairs[i].incoming, name);
                    if inc.own || inc.ext {
                        return Found::Incoming(i);
                    }
                    if cat.has(kind, s, name).ext {
                        return Found::LiveExt(i);
                    }
                }
                None => {
                    let has = cat.has(kind, s, name);
                    if has.own || has.ext {
                        return Found::Stays(s.to_string());
                    }
                }
            }
        }
        Found::Nowhere
    };

    let mut needs_live_ext = false;
    // Unqualified references to kept tables: (offset, live schema).
    let mut kept_refs: Vec<(usize, String)> = Vec::new();
    // Unqualified function calls whose name the live schemas define themselves.
    let mut conflicts: Vec<(&NameRef, usize)> = Vec::new();
    let kinds: [(Kind, &Vec<NameRef>); 4] = [
        (Kind::Relation, &refs.relations),
        (Kind::Type, &refs.types),
        (Kind::Function, &refs.functions),
        (Kind::Operator, &refs.operators),
    ];
    for (kind, list) in kinds {
        for r in list {
            if let Some(schema) = &r.schema {
                if is_pgshift_schema(schema, pairs) {
                    res.pgshift_own = true;
                }
                if let Some(i) = live_idx(schema) {
                    let has = cat.has(kind, schema, &r.name);
                    if has.own || !has.ext {
                        // Moved away (or found nowhere today): the server
                        // decides on the rewritten text.
                        res.in_scope = true;
                    }
                    if has.own && kind != Kind::Operator {
                        res.uses.insert(qualified_display(&pairs[i].live, &r.name));
                    }
                }
                continue;
            }
            let now = today(kind, &r.name);
            let then = future(kind, &r.name);
            match &now {
                Found::Live(i) => {
                    res.in_scope = true;
                    if kind != Kind::Operator {
                        res.uses.insert(qualified_display(&pairs[*i].live, &r.name));
                    }
                }
                Found::Stays(s) if is_pgshift_schema(s, pairs) => res.pgshift_own = true,
                Found::Nowhere if kind == Kind::Relation => res.in_scope = true,
                _ => {}
            }
            match &then {
                Found::Incoming(_) => res.in_scope = true,
                Found::LiveExt(i) => {
                    needs_live_ext = true;
                    // A kept table whose namesake the incoming schema has (a
                    // rollback's backup): the check names the live one.
                    if cat.has(kind, &pairs[*i].live, &r.name).kept
                        && let Some(loc) = r.location
                    {
                        kept_refs.push((loc, pairs[*i].live.clone()));
                    }
                }
                _ => {}
            }
            // Functions and operators: any extension member of that name in a
            // live schema on the path takes part in overload resolution.
            if matches!(kind, Kind::Function | Kind::Operator) {
                for s in &eff {
                    if let Some(i) = live_idx(s) {
                        let has = cat.has(kind, s, &r.name);
                        if has.ext {
                            needs_live_ext = true;
                        }
                        if has.own {
                            res.in_scope = true;
                            if kind == Kind::Function {
                                conflicts.push((r, i));
                            }
                        }
                    }
                }
            }
            if res.failing.is_none()
                && matches!(now, Found::Live(_))
                && then == Found::Nowhere
                && matches!(kind, Kind::Relation | Kind::Type)
            {
                let what = if kind == Kind::Relation {
                    "relation"
                } else {
                    "type"
                };
                res.failing = Some(format!("{what} \"{}\" does not exist", r.name));
            }
        }
    }

    // The future search path.
    let mut fpath: Vec<String> = Vec::new();
    for s in path {
        match live_idx(s) {
            Some(i) => {
                fpath.push(pairs[i].incoming.clone());
                if needs_live_ext {
                    fpath.push(s.clone());
                }
            }
            None => fpath.push(s.clone()),
        }
    }
    res.future_path = fpath;

    // Qualify unqualified calls of functions the live schema defines itself,
    // when the live schema stays on the path for its extension members and no
    // other schema there has a function of that name.
    let mut text = query.to_string();
    // (offset, schema, the function's name when it is a call): applied from
    // the end, so each offset still holds.
    let mut inserts: Vec<(usize, String, Option<String>)> = kept_refs
        .into_iter()
        .map(|(loc, live)| (loc, live, None))
        .collect();
    if needs_live_ext {
        for (r, i) in conflicts {
            let Some(loc) = r.location else { continue };
            let elsewhere = eff.iter().any(|s| {
                let has = cat.has(Kind::Function, s, &r.name);
                if live_idx(s) == Some(i) {
                    has.ext
                } else {
                    has.own || has.ext
                }
            });
            if !elsewhere {
                inserts.push((loc, pairs[i].incoming.clone(), Some(r.name.clone())));
            }
        }
    }
    inserts.sort_by_key(|x| std::cmp::Reverse(x.0));
    inserts.dedup_by_key(|x| x.0);
    for (loc, schema, call) in inserts {
        if !text.is_char_boundary(loc) {
            continue;
        }
        text.insert_str(loc, &format!("{}.", display_ident(&schema)));
        if let Some(name) = call {
            res.qualified_calls.push((schema, name));
        }
    }
    for (p, d) in pairs.iter().zip(defined) {
        text = remap(&text, &p.live, &p.incoming, d)
            .with_context(|| format!("rewriting a statement for schema {}", p.incoming))?;
    }
    res.rewritten = text;
    Ok(res)
}

/// Maps the incoming schemas' qualifiers in catalog text (`format_type`,
/// `pg_get_constraintdef`, … read with `search_path = ''`) to the live ones,
/// with PostgreSQL's scanner: `shadow.email[]` -> `public.email[]`; string
/// constants and extension members' qualifiers are left alone.
pub(crate) struct Mapper {
    pairs: Vec<(SchemaPair, DefinedNames)>,
}

impl Mapper {
    /// The names each incoming schema defines (what a qualifier may precede).
    pub(crate) async fn load(client: &impl GenericClient, pairs: &[SchemaPair]) -> Result<Mapper> {
        let mut out = Vec::with_capacity(pairs.len());
        for p in pairs {
            let names: DefinedNames = defined_names(client, &p.incoming)
                .await?
                .into_iter()
                .collect();
            out.push((p.clone(), names));
        }
        Ok(Mapper { pairs: out })
    }

    /// From the names each incoming schema defines, already loaded.
    pub(crate) fn new(pairs: Vec<(SchemaPair, DefinedNames)>) -> Mapper {
        Mapper { pairs }
    }

    pub(crate) fn map(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (p, defined) in &self.pairs {
            // Cheap test first: most text (built-in types) never names the schema.
            if out.contains(p.incoming.as_str()) {
                match remap(&out, &p.incoming, &p.live, defined) {
                    Ok(m) => out = m,
                    Err(e) => tracing::debug!("cannot map {out:?}: {e:#}"),
                }
            }
        }
        out
    }
}

/// Word an error of the future check as the application will see it: the
/// incoming schema's name replaced by the live one's, qualifiers the rewrite
/// added removed.
/// `text` with each `from` that is a whole name (neither preceded nor
/// followed by more of an identifier: `billing.t` is not the end of
/// `pgshift_shadow_billing.t`) replaced by `to`.
fn replace_names(text: &str, from: &str, to: &str) -> String {
    let part = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(from) {
        let after = &rest[i + from.len()..];
        let whole = !after.chars().next().is_some_and(part)
            && !rest[..i]
                .chars()
                .next_back()
                .or_else(|| out.chars().next_back())
                .is_some_and(part);
        out.push_str(&rest[..i]);
        out.push_str(if whole { to } else { from });
        rest = after;
    }
    out.push_str(rest);
    out
}

pub fn map_error(msg: &str, pairs: &[SchemaPair], qualified_calls: &[(String, String)]) -> String {
    let mut out = msg.to_string();
    for (incoming, name) in qualified_calls {
        out = out.replace(
            &format!("{}.{}(", display_ident(incoming), display_ident(name)),
            &format!("{}(", display_ident(name)),
        );
    }
    for p in pairs {
        for (from, to) in [
            (
                format!("{}.", display_ident(&p.incoming)),
                format!("{}.", display_ident(&p.live)),
            ),
            (format!("\"{}\".", p.incoming), format!("\"{}\".", p.live)),
            // `relation "schema.name" does not exist`: raw names in one pair
            // of quotes.
            (format!("\"{}.", p.incoming), format!("\"{}.", p.live)),
        ] {
            out = out.replace(&from, &to);
        }
    }
    out
}

/// Parse a `search_path` setting into schema names (`$user` kept as is).
pub fn parse_search_path(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut was_quoted = false;
    let mut chars = value.chars().peekable();
    let push = |cur: &mut String, was_quoted: &mut bool, out: &mut Vec<String>| {
        let item = if *was_quoted {
            std::mem::take(cur)
        } else {
            let t = cur.trim().to_ascii_lowercase();
            cur.clear();
            t
        };
        if !item.is_empty() {
            out.push(item);
        }
        *was_quoted = false;
    };
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' => {
                if !quoted {
                    cur.clear();
                    was_quoted = true;
                }
                quoted = !quoted;
            }
            ',' if !quoted => push(&mut cur, &mut was_quoted, &mut out),
            c if quoted => cur.push(c),
            c if was_quoted && c.is_whitespace() => {}
            c => cur.push(c),
        }
    }
    push(&mut cur, &mut was_quoted, &mut out);
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn only_whole_names_are_replaced() {
        use super::replace_names;
        assert_eq!(
            replace_names(
                r#"relation "pgshift_shadow_billing.old_inv" does not exist; billing.old_inv, billing.old_inv_x"#,
                "billing.old_inv",
                "backup_1_billing.old_inv"
            ),
            r#"relation "pgshift_shadow_billing.old_inv" does not exist; backup_1_billing.old_inv, billing.old_inv_x"#
        );
    }

    #[test]
    fn referential_actions_are_postgres_own() {
        for own in [
            r#"SELECT $2 FROM ONLY "public"."shop_customer" x WHERE "id" OPERATOR(pg_catalog.=) $1 FOR KEY SHARE OF x"#,
            r#"SELECT $3 FROM "public"."events" x WHERE "tenant" OPERATOR(pg_catalog.=) $1 AND "id" OPERATOR(pg_catalog.=) $2 FOR KEY SHARE OF x"#,
            r#"DELETE FROM ONLY "public"."orders" WHERE $1 OPERATOR(pg_catalog.=) "user_id""#,
            r#"UPDATE ONLY "public"."orders" SET "user_id" = NULL WHERE $1 OPERATOR(pg_catalog.=) "user_id""#,
            r#"UPDATE ONLY "public"."orders" SET "user_id" = $1 WHERE $2 OPERATOR(pg_catalog.=) "user_id""#,
        ] {
            assert!(referential_action(own), "{own}");
        }
        for app in [
            "SELECT id FROM users WHERE id = $1 FOR KEY SHARE",
            "SELECT 1 FROM users x WHERE id = $1 FOR KEY SHARE OF x",
            "DELETE FROM orders WHERE user_id = $1",
            r#"DELETE FROM orders WHERE "user_id" OPERATOR(pg_catalog.=) $1"#,
            "UPDATE orders SET state = $1 WHERE id = $2",
        ] {
            assert!(!referential_action(app), "{app}");
        }
    }

    use super::*;

    fn refs(q: &str) -> Refs {
        match parse(q).unwrap() {
            Parsed::Dml(r) => r,
            Parsed::Other => panic!("{q} is not DML"),
        }
    }

    fn names(list: &[NameRef]) -> Vec<String> {
        list.iter()
            .map(|r| match &r.schema {
                Some(s) => format!("{s}.{}", r.name),
                None => r.name.clone(),
            })
            .collect()
    }

    /// `nextval('hib_seq')` as pg_stat_statements keeps it: the sequence is
    /// a parameter, so which one is not known.
    #[test]
    fn sequence_calls_by_parameter() {
        for q in [
            "SELECT nextval($1)",
            "SELECT pg_catalog.nextval($1::regclass)",
            "INSERT INTO t (id) VALUES (nextval($1))",
            "SELECT currval($1)",
            "SELECT nextval($1::text::regclass)",
            "SELECT nextval(quote_ident($1))",
            "SELECT nextval(($1 || $2)::regclass)",
            "SELECT nextval(format($1, $2))",
            "SELECT nextval(t.seq) FROM t",
        ] {
            assert!(refs(q).sequence_by_parameter, "{q}");
        }
        for q in [
            "SELECT nextval('public.s'::regclass)",
            "SELECT pg_catalog.setval($1, $2, $3)",
            "SELECT app.nextval($1)",
            "SELECT lower($1)",
        ] {
            assert!(!refs(q).sequence_by_parameter, "{q}");
        }
    }

    /// A rollback's incoming schema is the backup: the shadows stay
    /// pgshift's (prepare's replay of a preserved table names `shadow`), and
    /// so do another schema's backups; an application's `backup_archive`
    /// does not.
    #[test]
    fn pgshift_schemas_in_a_rollback() {
        let pairs = vec![SchemaPair::new("public", "backup_1796419422535")];
        for own in [
            "pgshift",
            "shadow",
            "pgshift_shadow_billing",
            "backup_1796419422535",
            "backup_1796419422535_billing",
            "backup_17",
        ] {
            assert!(is_pgshift_schema(own, &pairs), "{own}");
        }
        for theirs in [
            "public",
            "billing",
            "backup_archive",
            "backup_2024_old",
            "shadows",
        ] {
            assert!(!is_pgshift_schema(theirs, &pairs), "{theirs}");
        }
    }

    #[test]
    fn the_statement_a_prepare_prepares() {
        assert_eq!(
            prepared_body("PREPARE p(int, numeric(10, 2)) AS SELECT * FROM users WHERE id = $1"),
            Some("SELECT * FROM users WHERE id = $1")
        );
        assert_eq!(
            prepared_body("prepare \"As\" as\n  update t set a = $1 returning *"),
            Some("update t set a = $1 returning *")
        );
        assert_eq!(prepared_body("SELECT 1 AS x"), None);
        assert_eq!(prepared_body("EXECUTE p(1)"), None);
    }

    #[test]
    fn collects_names() {
        let r = refs(
            "WITH c AS (SELECT 1) SELECT f(x)::email, public.g() FROM c, accounts a, lateral h() \
             WHERE a.id OPERATOR(public.===) $1 FOR UPDATE OF a",
        );
        assert_eq!(names(&r.relations), vec!["accounts"]);
        assert_eq!(names(&r.functions), vec!["f", "public.g", "h"]);
        assert_eq!(names(&r.types), vec!["email"]);
        assert_eq!(names(&r.operators), vec!["public.==="]);
        let r = refs("INSERT INTO public.x (a) VALUES ($1) RETURNING *");
        assert_eq!(names(&r.relations), vec!["public.x"]);
        let r = refs("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE");
        assert_eq!(names(&r.relations), vec!["t", "s"]);
        assert_eq!(parse("CREATE TABLE x (a int)").unwrap(), Parsed::Other);
        assert_eq!(parse("SET search_path = x").unwrap(), Parsed::Other);
        assert!(parse("SELEC 1").is_err());
    }

    #[test]
    fn maps_incoming_qualifiers() {
        let defined: DefinedNames = ["email", "accounts"].into_iter().collect();
        let m = Mapper::new(vec![(SchemaPair::new("public", "shadow"), defined)]);
        assert_eq!(m.map("shadow.email"), "public.email");
        assert_eq!(m.map("shadow.email[]"), "public.email[]");
        assert_eq!(m.map("public.geometry"), "public.geometry");
        assert_eq!(
            m.map("FOREIGN KEY (a) REFERENCES shadow.accounts(id)"),
            "FOREIGN KEY (a) REFERENCES public.accounts(id)"
        );
        // A string constant that looks like a name is left alone.
        assert_eq!(
            m.map("CHECK ((note <> 'shadow.email'::text))"),
            "CHECK ((note <> 'shadow.email'::text))"
        );
    }

    #[test]
    fn what_an_insert_sets() {
        let t = |q: &str| insert_target(q);
        assert_eq!(
            t("INSERT INTO dag (dag_id, is_paused) VALUES ($1, $2) ON CONFLICT DO NOTHING"),
            Some(InsertTarget {
                relation: "\"dag\"".into(),
                sets: InsertColumns::Named(vec!["dag_id".into(), "is_paused".into()]),
            })
        );
        assert_eq!(
            t("INSERT INTO \"Shadow\".\"Dag\" VALUES ($1, $2), ($3, $4, $5)"),
            Some(InsertTarget {
                relation: "\"Shadow\".\"Dag\"".into(),
                sets: InsertColumns::First(2),
            })
        );
        assert_eq!(
            t("INSERT INTO t DEFAULT VALUES").map(|t| t.sets),
            Some(InsertColumns::Named(Vec::new()))
        );
        assert_eq!(t("INSERT INTO t SELECT * FROM u"), None);
        assert_eq!(t("UPDATE t SET a = $1"), None);
    }

    #[test]
    fn repairs_normalised_typed_constants() {
        assert_eq!(
            repair_typed_constants("SELECT now() - interval $1, date $2 FROM t WHERE a = $3")
                .as_deref(),
            Some("SELECT now() - $1::interval, $2::date FROM t WHERE a = $3")
        );
        assert_eq!(
            repair_typed_constants("SELECT timestamp with time zone $1, public.mood $2").as_deref(),
            Some("SELECT $1::timestamp with time zone, $2::public.mood")
        );
        // TypeORM writes `ELSE'FALSE'`; normalised, `ELSE$3` is one identifier.
        assert_eq!(
            repair_typed_constants("SELECT CASE WHEN a THEN$1 ELSE$2 END FROM t WHERE b = $3")
                .as_deref(),
            Some("SELECT CASE WHEN a THEN $1 ELSE $2 END FROM t WHERE b = $3")
        );
        // An identifier that merely contains a `$` stays.
        assert_eq!(repair_typed_constants("SELECT status$1 FROM t"), None);
        assert_eq!(repair_typed_constants("SELECT a FROM t LIMIT $1"), None);
        assert_eq!(repair_typed_constants("SELEC $1"), None);
    }

    #[test]
    fn search_paths() {
        assert_eq!(
            parse_search_path("\"$user\", public"),
            vec!["$user", "public"]
        );
        assert_eq!(
            parse_search_path(" App ,\"My \"\"S\"\"\",pg_catalog"),
            vec!["app", "My \"S\"", "pg_catalog"]
        );
        assert!(parse_search_path("").is_empty());
    }

    fn setup() -> (Catalog, Vec<SchemaPair>, Vec<DefinedNames>) {
        let mut cat = Catalog::default();
        cat.add(Kind::Relation, "public", "accounts", false);
        cat.add(Kind::Relation, "shadow", "accounts", false);
        cat.add(Kind::Relation, "public", "legacy", false);
        cat.add(Kind::Relation, "public", "spatial_ref_sys", true);
        cat.add(Kind::Function, "public", "st_distance", true);
        cat.add(Kind::Function, "public", "score", false);
        cat.add(Kind::Function, "shadow", "score", false);
        cat.add(Kind::Function, "pg_catalog", "now", false);
        cat.add(Kind::Type, "pg_catalog", "text", false);
        cat.add(Kind::Type, "shadow", "email", false);
        let pairs = vec![SchemaPair::new("public", "shadow")];
        let defined: DefinedNames = ["accounts", "legacy", "score", "email"]
            .into_iter()
            .collect();
        (cat, pairs, vec![defined])
    }

    #[test]
    fn resolves_against_the_future_namespace() {
        let (cat, pairs, defined) = setup();
        let path = vec!["public".to_string()];
        let go = |q: &str| resolve(q, &refs(q), &path, &pairs, &cat, &defined).unwrap();

        let r = go("SELECT * FROM legacy");
        assert_eq!(
            r.failing.as_deref(),
            Some("relation \"legacy\" does not exist")
        );
        assert!(r.in_scope);
        assert_eq!(r.uses.iter().collect::<Vec<_>>(), vec!["public.legacy"]);

        let r = go("SELECT email FROM accounts WHERE id = $1");
        assert_eq!(r.failing, None);
        assert_eq!(r.future_path, vec!["shadow"]);
        assert_eq!(r.rewritten, "SELECT email FROM accounts WHERE id = $1");

        let r = go("SELECT * FROM public.accounts a WHERE a.x = $1::email");
        assert_eq!(
            r.rewritten,
            "SELECT * FROM shadow.accounts a WHERE a.x = $1::email"
        );
        assert!(r.in_scope);

        // An extension member keeps the live schema on the path; the live
        // schema's own function is then qualified with the incoming schema.
        let r = go("SELECT score(a), st_distance(a, b) FROM accounts");
        assert_eq!(r.future_path, vec!["shadow", "public"]);
        assert_eq!(
            r.rewritten,
            "SELECT shadow.score(a), st_distance(a, b) FROM accounts"
        );
        assert_eq!(
            map_error(
                "function shadow.score(integer) does not exist",
                &pairs,
                &r.qualified_calls
            ),
            "function score(integer) does not exist"
        );
        let sales = [SchemaPair::new("Sales", "pgshift_shadow_Sales")];
        assert_eq!(
            map_error(
                "relation \"pgshift_shadow_Sales.SaleReason\" does not exist",
                &sales,
                &[]
            ),
            "relation \"Sales.SaleReason\" does not exist"
        );

        // Catalog-only statements are out of scope; pgshift's own are flagged.
        assert!(!go("SELECT now()").in_scope);
        assert!(go("SELECT * FROM shadow.accounts").pgshift_own);
        // Utility statements are left out even when PostgreSQL 18's parser
        // refuses what an older server recorded; DML that does not parse is not.
        assert!(matches!(
            parse("CREATE FUNCTION shadow.f(json json) RETURNS int LANGUAGE sql AS $1"),
            Ok(Parsed::Other)
        ));
        assert!(matches!(
            parse("/* c */ COMMENT ON FUNCTION pgshift_shadow_test.f(json json) IS $1"),
            Ok(Parsed::Other)
        ));
        assert!(
            pg_query::parse(
                "CREATE FUNCTION shadow.f(json json) RETURNS int LANGUAGE sql AS $1",
                0
            )
            .is_err()
        );
        assert!(parse("SELECT f(json json) FROM t").is_err());
        assert!(parse(" ( SELECT 1 FROM").is_err());
        assert!(go("SELECT * FROM pgshift.migration").pgshift_own);
        assert!(go("SELECT count(*) FROM backup_1752567000000.accounts").pgshift_own);
        assert!(!go("SELECT * FROM spatial_ref_sys").in_scope);
    }
}
