//! pg_restore SQL: strip psql meta-commands, split into TOC entries, remap `public` -> `shadow`.
//!
//! pgshift renders the schema dump with `pg_restore --section=… --no-owner --no-privileges
//! -f -` and runs the resulting SQL on the destination, after moving every object the dump
//! defines from the source schema (`public`) into the shadow schema. Everything here works on
//! PostgreSQL's own lexer ([`pg_query::scan`]), never on regular expressions, so text inside
//! string constants, dollar-quoted bodies, quoted identifiers and comments is never mistaken
//! for SQL structure.
//!
//! # Meta-commands ([`strip_meta_commands`])
//!
//! pg_dump 15.14+/16.10+/17.6+ writes `\restrict KEY` near the top (after the
//! "PostgreSQL database dump" comment block, not on the first line) and `\unrestrict KEY` at
//! the very end. These are psql meta-commands: a line whose first non-blank character is a
//! backslash *outside* any string, quoted identifier or comment. `\restrict` and
//! `\unrestrict` lines are removed (the whole line, including its newline); any other
//! meta-command (`\connect`, `\.`, `\set`, …) is an error, since it cannot be executed over a
//! database connection.
//!
//! # Entries ([`split_entries`])
//!
//! pg_restore precedes every TOC entry with a comment block
//!
//! ```text
//! --
//! -- Name: users; Type: TABLE; Schema: public; Owner: -
//! --
//! ```
//!
//! (`-- Data for Name: …` for data entries, `; Tablespace: ts` appended when the entry has
//! one, `-- TOC entry …` / `-- Dependencies: …` lines inside the block with `--verbose`).
//! Headers are recognised only as real comment tokens at the start of a line, so look-alikes
//! inside strings or function bodies are ignored. A header is parsed from the right, since
//! names may contain `; ` (newlines in names are printed as spaces by pg_restore). An
//! entry's text runs from the `--` line opening its header block to the opening of the next
//! one, so the entries concatenate back to the input exactly. Note that pg_restore emits
//! `SET default_tablespace = …;` / `SET default_table_access_method = …;` *before* the
//! header of the entry they are meant for, so such lines end up at the tail of the previous
//! entry ([`object_settings`] finds them: an entry left out keeps them, and an entry run
//! out of order starts with the ones in force at its place).
//!
//! # Remapping ([`remap`])
//!
//! The remap rewrites, token by token:
//!
//! * every qualified reference `from.X` — `from` written plainly, double-quoted or as
//!   `U&"…"` (with an optional `UESCAPE`), not itself preceded by a `.` — whose next
//!   component `X` is a name in [`DefinedNames`]: an identifier (unquoted words fold ASCII
//!   letters to lower case, quoted ones compare exactly after `""` unescaping, both truncated
//!   to 63 bytes like PostgreSQL does), a keyword used as a name (`public.action`), or an
//!   operator (`OPERATOR(public.===)`, `CREATE OPERATOR public.=== (…)`,
//!   `OPERATOR 1 public.<<<(integer,integer)`). Only the qualifier is replaced, by `to`
//!   (quoted only if needed); `X` and everything after it stay exactly as written, so
//!   `public.t.col`, `public.mood[]`, `public."Mixed"` all work.
//! * string constants cast to an OID alias type — `'public.users_id_seq'::regclass`,
//!   `::regtype`, `::regproc`, `::regprocedure`, `::regoper`, `::regoperator`,
//!   `::regconfig`, `::regdictionary`, `::regcollation`, `::regnamespace` (also
//!   `::pg_catalog.regclass` …): these are resolved to OIDs when the DDL runs, so the
//!   content is remapped with the rule above (`'public."Mixed"'`,
//!   `'public.h(public.mood)'::regprocedure`) and re-quoted as a standard literal. A bare
//!   schema name (`'public'::regnamespace`) names the schema itself, which survives the
//!   swap, and is left alone. Arrays of them (`'{public.a,public.b}'::regclass[]`) get each
//!   element remapped; a changed element is written back double-quoted.
//!
//! Left alone: references to names not in [`DefinedNames`] (extension members such as
//! `public.geometry`, `public.uuid_generate_v4()`, `OPERATOR(public.&&)`), ordinary string
//! literals (`COMMENT … IS 'see public.users'`, `to_regclass('public.t'::text)`), dollar-quoted
//! bodies, comments, and every byte not named above. Strings and function bodies are resolved
//! when they run, and after the swap they must name `public` again. SQL-standard bodies
//! (`BEGIN ATOMIC … END`, `RETURN …`) are ordinary tokens and are rewritten like any other
//! DDL, as PostgreSQL resolves them at creation time.
//!
//! # Function bodies ([`prepare_time_function`], [`restore_function`])
//!
//! Some functions run before the swap, in the shadow: in index expressions, CHECK
//! constraints and generated columns while prepare loads the tables, in materialized views,
//! while preserved tables sync. A SQL or PL/pgSQL body that names its own schema
//! (`public.norm_impl(t)`) or a `SET search_path = public` would then reach the
//! destination's live objects. So such a function is created in its *prepare-time* form,
//! its body remapped by the rules above (and a string constant that is only a qualified
//! name the dump defines where its context makes it a name: a whole argument of a function
//! that takes names, `to_tsvector('public.cfg', t)`, `nextval('public.s')`, whose
//! signature makes it a `regconfig` or a `regclass` ([`NAME_FUNCTIONS`], or one the dump
//! defines with a name type at that position, [`NameSignatures`]); the value of a variable or parameter of a `reg*` type, `cfg regconfig :=
//! 'public.cfg'`; a `CASE` or an array cast to one. The same constant compared with text,
//! listed or returned as text, `THEN 'public.t'`, `IN ('public.t')`, or an argument of
//! another function, `concat_ws(':', 'public.t')`, is data and stays; the scanner sees
//! no types, so [`Tokens::name_context`] reads the context) and each chosen
//! schema of its `search_path` preceded by
//! its shadow; the swap puts back the definition as written (`CREATE OR
//! REPLACE`, one deferred statement each) before the shadow's objects move.
//!
//! A table (or alias, or parameter) that is itself called `public` makes `public.X`
//! ambiguous: pg_dump writes `SELECT public.users FROM public.public` for a column `users` of
//! table `public.public`. Whenever an entry uses the word `from` other than as a qualifier,
//! the entry is parsed with [`pg_query::parse`] and two-part column references
//! (`public.users`, `public.*`) are excluded from the rewrite; three-part column references
//! are always `schema.table.column` in PostgreSQL and are rewritten. If such an entry does
//! not parse, a warning is logged and every `public.X` in it is treated as qualified (a
//! wrong guess then fails loudly on the destination: there is no relation `shadow` in scope).
//!
//! # Errors and size
//!
//! A scanner failure (unterminated string, dollar quote, comment or quoted identifier, a NUL
//! byte) is an error naming the entry and line; SQL is never passed through unremapped.
//! Large inputs are scanned in pieces of about 1 MiB, cut at entry header blocks; a cut is
//! only used once the scanner has accepted the text before it (which proves the cut is not
//! inside a string or comment), so memory stays bounded and the work stays linear.
//!
//! # Limitations
//!
//! * [`DefinedNames`] is one flat set, while PostgreSQL has separate namespaces: if the dump
//!   defines a function `public.st_area(my_type)` and a view calls PostGIS'
//!   `public.st_area(geometry)`, that call is remapped too and fails on the destination
//!   (`shadow.st_area(geometry)` does not exist). The same holds for any name the dump
//!   shares with an extension member (overloads, a table named like an extension type).
//! * Catalog-qualified four-part names (`db.public.t.c`) and string constants that are not
//!   `'…'::reg*` casts (`setval('public.s', …)`, `to_regclass('public.t')`) are not remapped.

use std::collections::HashSet;

use anyhow::{Result, anyhow, bail};
use pg_query::protobuf::{KeywordKind, Token};

/// PostgreSQL truncates identifiers to `NAMEDATALEN - 1` bytes.
const MAX_IDENT_BYTES: usize = 63;

/// The OID alias types whose string constants are resolved when the DDL runs.
const REG_TYPES: &[&str] = &[
    "regclass",
    "regtype",
    "regproc",
    "regprocedure",
    "regoper",
    "regoperator",
    "regconfig",
    "regdictionary",
    "regcollation",
    "regnamespace",
];

// ---------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------

/// The parsed `-- Name: X; Type: Y; Schema: Z; Owner: W` comment of one pg_restore entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHeader {
    /// The TOC tag: `users`, `f(integer)`, `users users_pkey`, `TABLE users`, `===`.
    pub name: String,
    /// The TOC description: `TABLE`, `INDEX`, `FK CONSTRAINT`, `SEQUENCE OWNED BY`, …
    pub kind: String,
    /// `None` for `Schema: -`.
    pub schema: Option<String>,
    /// `None` for `Owner: -` (always the case with `--no-owner`).
    pub owner: Option<String>,
}

/// One piece of pg_restore output: a TOC entry, or the preamble before the first one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `None` for the preamble (`SET …`, `SELECT pg_catalog.set_config(…)`).
    pub header: Option<EntryHeader>,
    /// The exact text from the `--` line opening this entry's header up to the next one.
    pub sql: String,
}

impl Entry {
    /// A short description for messages: `TABLE public.users` or `preamble`.
    pub fn label(&self) -> String {
        match &self.header {
            Some(h) => h.label(),
            None => "preamble".to_string(),
        }
    }
}

impl EntryHeader {
    /// A short description for messages: `TABLE public.users`.
    pub fn label(&self) -> String {
        match &self.schema {
            Some(s) => format!("{} {}.{}", self.kind, s, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// Names of the objects a dump defines in the source schema, exactly as stored in the
/// catalog (case-sensitive, unquoted): relations (tables, views, sequences, indexes, …),
/// types, domains, functions, procedures, aggregates, operators (`===`), operator classes
/// and families, collations, conversions, text search objects, statistics.
///
/// One flat set: PostgreSQL keeps relations, functions, operators, … in separate namespaces,
/// but a qualified reference `public.X` is rewritten when `X` is any of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DefinedNames {
    names: HashSet<String>,
}

impl DefinedNames {
    /// An empty set.
    pub fn new() -> DefinedNames {
        DefinedNames::default()
    }

    /// Add one name; true if it was not there yet.
    pub fn insert(&mut self, name: impl Into<String>) -> bool {
        self.names.insert(name.into())
    }

    /// Take one name out; true if it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        self.names.remove(name)
    }

    /// Whether `name` (exact catalog spelling) is defined.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The names, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Best-effort: the names the entries of a dump define in `schema`, read from the entry
    /// headers. Function-like tags (`f(integer)`) lose their argument list; constraint tags
    /// (`users users_pkey`, whose index may be named in `ALTER INDEX … ATTACH PARTITION`)
    /// contribute the constraint name when the tag starts with a table of the dump.
    ///
    /// The catalog of the source (non-extension objects of the schema, in the dump's
    /// snapshot) is the authoritative alternative.
    pub fn from_entries(entries: &[Entry], schema: &str) -> DefinedNames {
        let in_schema: Vec<(&EntryHeader, &Entry)> = entries
            .iter()
            .filter_map(|e| e.header.as_ref().map(|h| (h, e)))
            .filter(|(h, _)| h.schema.as_deref() == Some(schema))
            .collect();
        let headers: Vec<&EntryHeader> = in_schema.iter().map(|(h, _)| *h).collect();
        let mut names = DefinedNames::new();
        let mut tables: Vec<&str> = Vec::new();
        for (h, entry) in &in_schema {
            if h.kind == "TYPE" {
                // A range type's multirange type has no entry of its own.
                names.extend(multirange_type_name(&entry.sql, schema));
            }
            match h.kind.as_str() {
                "FUNCTION" | "PROCEDURE" | "AGGREGATE" => {
                    names.insert(strip_arguments(&h.name));
                }
                "TABLE" | "FOREIGN TABLE" | "PARTITIONED TABLE" => {
                    tables.push(&h.name);
                    names.insert(h.name.clone());
                }
                "VIEW"
                | "MATERIALIZED VIEW"
                | "SEQUENCE"
                | "INDEX"
                | "TYPE"
                | "SHELL TYPE"
                | "DOMAIN"
                | "OPERATOR"
                | "OPERATOR CLASS"
                | "OPERATOR FAMILY"
                | "COLLATION"
                | "CONVERSION"
                | "STATISTICS"
                | "TEXT SEARCH CONFIGURATION"
                | "TEXT SEARCH DICTIONARY"
                | "TEXT SEARCH PARSER"
                | "TEXT SEARCH TEMPLATE" => {
                    names.insert(h.name.clone());
                }
                _ => {}
            }
        }
        for h in &headers {
            if h.kind == "CONSTRAINT" {
                // "table constraint": take the longest table name that prefixes the tag.
                let best = tables
                    .iter()
                    .filter(|t| {
                        h.name.len() > t.len() + 1
                            && h.name.starts_with(**t)
                            && h.name.as_bytes()[t.len()] == b' '
                    })
                    .max_by_key(|t| t.len());
                if let Some(t) = best {
                    names.insert(h.name[t.len() + 1..].to_string());
                }
            }
        }
        names
    }
}

/// `CREATE TYPE public.r AS RANGE (…, multirange_type_name = public.r_multi, …)` -> `r_multi`.
fn multirange_type_name(sql: &str, schema: &str) -> Option<String> {
    let all = scan_raw(sql, 0).ok()?;
    let t = Tokens::new(sql, &all);
    (0..t.toks.len()).find_map(|i| {
        let (word, last) = t.ident(i)?;
        if word != "multirange_type_name" || !t.is(last + 1, Token::Ascii61) {
            return None;
        }
        let (first, last) = t.ident(last + 2)?;
        if !t.is(last + 1, Token::Ascii46) {
            return Some(first);
        }
        let (name, _) = t.ident(last + 2)?;
        (first == schema).then_some(name)
    })
}

impl<S: Into<String>> FromIterator<S> for DefinedNames {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        DefinedNames {
            names: iter.into_iter().map(Into::into).collect(),
        }
    }
}

impl<S: Into<String>> Extend<S> for DefinedNames {
    fn extend<I: IntoIterator<Item = S>>(&mut self, iter: I) {
        self.names.extend(iter.into_iter().map(Into::into));
    }
}

/// Remove psql meta-command lines: `\restrict KEY` and `\unrestrict KEY` are dropped (whole
/// line), any other meta-command is an error. A meta-command line is one whose first
/// non-blank character is a backslash outside any string, quoted identifier or comment, as
/// decided by PostgreSQL's scanner.
pub fn strip_meta_commands(sql: &str) -> Result<String> {
    strip_meta_commands_chunked(sql, CHUNK_BYTES)
}

/// Split pg_restore output into its preamble (if not empty) and its TOC entries.
/// Concatenating the `sql` of all entries gives back `sql` exactly.
pub fn split_entries(sql: &str) -> Result<Vec<Entry>> {
    split_entries_chunked(sql, CHUNK_BYTES)
}

/// The preamble without the `SET name …` statements of settings the destination
/// does not have (`known` says which it has), and the names of those it removed.
/// pg_dump 17+ writes `SET transaction_timeout = 0;`, which PostgreSQL 16 and
/// older reject with "unrecognized configuration parameter"; a setting the
/// server lacks has nothing to turn off. Statements are found by PostgreSQL's
/// scanner and parser; anything but a plain `SET` of an unknown built-in name
/// (one without a `.`) stays exactly as written.
pub fn drop_unknown_settings(
    preamble: &str,
    known: impl Fn(&str) -> bool,
) -> Result<(String, Vec<String>)> {
    let stmts = pg_query::split_with_scanner(preamble).map_err(|e| anyhow!("{e}"))?;
    let mut dropped = Vec::new();
    let mut out = String::with_capacity(preamble.len());
    let mut rest = preamble;
    for stmt in stmts {
        let unknown = set_name(stmt).filter(|name| !name.contains('.') && !known(name));
        // Statements are slices of `preamble`, in order: everything between
        // them (comments, blank lines) stays.
        let at = stmt.as_ptr() as usize - rest.as_ptr() as usize;
        let Some(name) = unknown else {
            out.push_str(&rest[..at + stmt.len()]);
            rest = &rest[at + stmt.len()..];
            continue;
        };
        out.push_str(&rest[..at]);
        rest = &rest[at + stmt.len()..];
        // The statement's own `;` goes with it.
        rest = rest.strip_prefix(';').unwrap_or(rest);
        dropped.push(name);
    }
    out.push_str(rest);
    Ok((out, dropped))
}

/// The settings pg_restore sets for the entry after the one they end
/// (see the module documentation).
pub const OBJECT_SETTINGS: [&str; 2] = ["default_tablespace", "default_table_access_method"];

/// The `SET` statements of [`OBJECT_SETTINGS`] in `sql`, in order, each as
/// `(setting, statement as written without its `;`)`, found by PostgreSQL's
/// scanner and parser.
pub fn object_settings(sql: &str) -> Result<Vec<(String, String)>> {
    if !OBJECT_SETTINGS.iter().any(|n| sql.contains(n)) {
        return Ok(Vec::new());
    }
    let stmts = pg_query::split_with_scanner(sql).map_err(|e| anyhow!("{e}"))?;
    Ok(stmts
        .into_iter()
        .filter(|stmt| OBJECT_SETTINGS.iter().any(|n| stmt.contains(n)))
        .filter_map(|stmt| {
            let name = set_name(stmt).filter(|n| OBJECT_SETTINGS.contains(&n.as_str()))?;
            Some((name, stmt.trim().trim_end_matches(';').to_string()))
        })
        .collect())
}

/// The setting a `SET` statement sets, by PostgreSQL's parser; `None` for
/// any other statement.
fn set_name(stmt: &str) -> Option<String> {
    let parsed = pg_query::parse(stmt, 0).ok()?;
    match parsed
        .protobuf
        .stmts
        .first()?
        .stmt
        .as_ref()?
        .node
        .as_ref()?
    {
        pg_query::NodeEnum::VariableSetStmt(v) => Some(v.name.clone()),
        _ => None,
    }
}

/// Rewrite references to objects of schema `from` that are in `defined` so they point at
/// schema `to` (see the module documentation for the exact rules).
pub fn remap(sql: &str, from: &str, to: &str, defined: &DefinedNames) -> Result<String> {
    remap_many(sql, &[Mapping { from, to, defined }])
}

/// One schema's remapping: references to `from.X` with `X` in `defined` become `to.X`.
#[derive(Debug, Clone, Copy)]
pub struct Mapping<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub defined: &'a DefinedNames,
}

/// [`remap`] for several schemas at once (a migration of `public` and `billing`
/// remaps each one's references to its own shadow, in one pass).
pub fn remap_many(sql: &str, maps: &[Mapping<'_>]) -> Result<String> {
    remap_chunked(sql, maps, CHUNK_BYTES)
}

fn strip_meta_commands_chunked(sql: &str, chunk: usize) -> Result<String> {
    let candidates = backslash_lines(sql);
    if candidates.is_empty() {
        return Ok(sql.to_string());
    }
    let meta = match meta_lines_fast(sql, &candidates, chunk) {
        Some(meta) => meta,
        None => meta_lines_incremental(sql, &candidates)?,
    };
    let mut out = String::with_capacity(sql.len());
    let mut pos = 0;
    for line in &meta {
        let text = sql[line.backslash..line.end].trim_end_matches(['\n', '\r']);
        let command = text[1..]
            .split(|c: char| c.is_whitespace())
            .next()
            .unwrap_or("");
        match command {
            "restrict" | "unrestrict" => {}
            _ => bail!(
                "the SQL from pg_restore contains the psql meta-command \\{command} (line {}), \
                 which cannot be run over a database connection",
                line_number(sql, line.start)
            ),
        }
        out.push_str(&sql[pos..line.start]);
        pos = line.end;
    }
    out.push_str(&sql[pos..]);
    Ok(out)
}

fn split_entries_chunked(sql: &str, chunk: usize) -> Result<Vec<Entry>> {
    let mut entries: Vec<Entry> = Vec::new();
    for_each_chunk(sql, chunk, |start, end, toks| {
        let headers = find_headers(sql, toks)?;
        for (s, e, h) in entry_ranges(start, end, &headers) {
            let text = &sql[s..e];
            match (h, entries.last_mut()) {
                // Text before the first header of a later chunk continues the previous entry
                // (chunks are cut at header blocks, so this does not happen in practice).
                (None, Some(last)) if s > 0 => last.sql.push_str(text),
                _ => entries.push(Entry {
                    header: h.map(|k| headers[k].header.clone()),
                    sql: text.to_string(),
                }),
            }
        }
        Ok(())
    })?;
    Ok(entries)
}

fn remap_chunked(sql: &str, maps: &[Mapping<'_>], chunk: usize) -> Result<String> {
    let remapper = Remapper::new(maps)?;
    let mut out = String::with_capacity(sql.len() + sql.len() / 64);
    for_each_chunk(sql, chunk, |start, end, toks| {
        let headers = find_headers(sql, toks)?;
        let mut edits: Vec<Edit> = Vec::new();
        let mut first_tok = 0;
        for (s, e, h) in entry_ranges(start, end, &headers) {
            let last_tok = first_tok + toks[first_tok..].partition_point(|t| t.start < e);
            let label = || h.map_or_else(|| "preamble".to_string(), |k| headers[k].header.label());
            remapper.remap_entry(
                sql,
                s,
                e,
                &toks[first_tok..last_tok],
                Some(&label),
                &mut edits,
            );
            first_tok = last_tok;
        }
        apply_edits_into(&mut out, sql, start, end, &edits);
        Ok(())
    })?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Scanning
// ---------------------------------------------------------------------------------------

/// Scan at most about this much text at once (the scanner's token list is ~20 times the
/// size of its input).
const CHUNK_BYTES: usize = 1 << 20;

/// One scanner token, with byte offsets into the text.
#[derive(Debug, Clone, Copy)]
struct Tok {
    start: usize,
    end: usize,
    token: Token,
    keyword: bool,
}

impl Tok {
    fn text<'a>(&self, sql: &'a str) -> &'a str {
        &sql[self.start..self.end]
    }

    fn is_comment(&self) -> bool {
        matches!(self.token, Token::SqlComment | Token::CComment)
    }
}

/// Scan `sql`; token offsets are shifted by `base`.
fn scan_raw(sql: &str, base: usize) -> std::result::Result<Vec<Tok>, String> {
    if let Some(pos) = sql.find('\0') {
        return Err(format!("NUL byte at offset {}", base + pos));
    }
    let result = pg_query::scan(sql).map_err(|e| match e {
        pg_query::Error::Scan(msg) => msg,
        other => other.to_string(),
    })?;
    let mut toks = Vec::with_capacity(result.tokens.len());
    for t in &result.tokens {
        let (start, end) = (t.start as usize, t.end as usize);
        if start > end
            || end > sql.len()
            || !sql.is_char_boundary(start)
            || !sql.is_char_boundary(end)
        {
            return Err(format!("scanner returned a bad token span {start}..{end}"));
        }
        toks.push(Tok {
            start: base + start,
            end: base + end,
            token: t.token(),
            keyword: t.keyword_kind() != KeywordKind::NoKeyword,
        });
    }
    Ok(toks)
}

/// Offsets where an entry's header block may start: a `--` line followed by optional
/// `-- TOC entry …` / `-- Dependencies: …` lines and a `-- Name: …` or `-- Data for Name: …`
/// line. These are only candidates; a cut is used only once the scanner has accepted the
/// text before it, which proves the cut lies outside any string or comment.
fn cut_points(sql: &str) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut block: Option<usize> = None;
    let mut offset = 0;
    for line in sql.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let text = line.trim_end_matches(['\n', '\r']);
        if text == "--" {
            block = Some(start);
        } else if text.starts_with("-- Name: ") || text.starts_with("-- Data for Name: ") {
            if let Some(b) = block.take().filter(|&b| b > 0) {
                cuts.push(b);
            }
        } else if !(block.is_some()
            && (text.starts_with("-- TOC entry ") || text.starts_with("-- Dependencies:")))
        {
            block = None;
        }
    }
    cuts
}

/// Scan `sql` in pieces of about `chunk` bytes, each ending at an entry's header block, and
/// call `f(start, end, tokens)` for each piece in order (token offsets are absolute). A
/// piece whose scan fails is retried larger, as its cut may have been inside a string; a
/// failure at the end of the text is reported with the entry it happened in.
fn for_each_chunk(
    sql: &str,
    chunk: usize,
    mut f: impl FnMut(usize, usize, &[Tok]) -> Result<()>,
) -> Result<()> {
    let cuts = cut_points(sql);
    let mut start = 0;
    while start < sql.len() {
        let mut want = chunk.max(1);
        loop {
            let target = start.saturating_add(want);
            let end = cuts
                .get(cuts.partition_point(|&c| c < target))
                .copied()
                .unwrap_or(sql.len());
            match scan_raw(&sql[start..end], start) {
                Ok(toks) => {
                    f(start, end, &toks)?;
                    start = end;
                    break;
                }
                Err(_) if end < sql.len() => want = want.saturating_mul(2),
                Err(msg) => return Err(scan_error(sql, start, &msg)),
            }
        }
    }
    Ok(())
}

/// Locate a scanner failure in `sql[from..]`: the last entry header up to which the text
/// scans cleanly. (Header-looking lines are mere checkpoints here, used to word the error.)
fn scan_error(sql: &str, from: usize, msg: &str) -> anyhow::Error {
    let mut safe = from;
    let mut offset = from;
    for line in sql[from..].split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        if start == safe
            || !(line.starts_with("-- Name: ") || line.starts_with("-- Data for Name: "))
        {
            continue;
        }
        if scan_raw(&sql[safe..start], safe).is_ok() {
            safe = start;
        } else {
            break;
        }
    }
    let header = sql[safe..].lines().next().unwrap_or("");
    match header.strip_prefix("-- ") {
        Some(header) if header.contains("Name: ") => anyhow!(
            "cannot scan the SQL from pg_restore in the entry at line {} ({header}): {msg}",
            line_number(sql, safe)
        ),
        _ => anyhow!(
            "cannot scan the SQL from pg_restore after line {}: {msg}",
            line_number(sql, safe)
        ),
    }
}

/// 1-based line number of byte `offset`.
fn line_number(sql: &str, offset: usize) -> usize {
    sql.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn at_line_start(sql: &str, offset: usize) -> bool {
    offset == 0 || sql.as_bytes()[offset - 1] == b'\n'
}

// ---------------------------------------------------------------------------------------
// Meta-commands
// ---------------------------------------------------------------------------------------

/// A line whose first non-blank character is a backslash.
#[derive(Debug, Clone, Copy)]
struct BackslashLine {
    /// Start of the line.
    start: usize,
    /// The backslash.
    backslash: usize,
    /// Just past the line's newline (or the end of the text).
    end: usize,
}

fn backslash_lines(sql: &str) -> Vec<BackslashLine> {
    let mut out = Vec::new();
    let mut offset = 0;
    for line in sql.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let blank = line.len() - line.trim_start_matches([' ', '\t', '\r', '\x0c']).len();
        if line.as_bytes().get(blank) == Some(&b'\\') {
            out.push(BackslashLine {
                start,
                backslash: start + blank,
                end: offset,
            });
        }
    }
    out
}

/// One pass of the scanner: a candidate whose backslash is a token of its own is outside
/// any string or comment, and so a meta-command. The pass is only trusted if every
/// meta-command line is self-contained (none of its tokens runs past the end of the line),
/// so that the line cannot have changed how the text after it was scanned; otherwise
/// (say `\echo it's`) `None`, and the caller decides line by line.
fn meta_lines_fast(
    sql: &str,
    candidates: &[BackslashLine],
    chunk: usize,
) -> Option<Vec<BackslashLine>> {
    let mut meta = Vec::new();
    let mut next = 0;
    let scanned = for_each_chunk(sql, chunk, |_start, end, toks| {
        while let Some(c) = candidates.get(next).filter(|c| c.backslash < end) {
            next += 1;
            let i = toks.partition_point(|t| t.start < c.backslash);
            if !toks
                .get(i)
                .is_some_and(|t| t.start == c.backslash && t.token == Token::Ascii92)
            {
                continue; // inside a string, quoted identifier or comment
            }
            let line_end = c.start + sql[c.start..c.end].trim_end_matches(['\n', '\r']).len();
            if toks[i..]
                .iter()
                .take_while(|t| t.start < line_end)
                .any(|t| t.end > line_end)
            {
                bail!("meta-command line is not self-contained");
            }
            meta.push(*c);
        }
        Ok(())
    });
    scanned.ok().map(|()| meta)
}

/// Slow but sure: decide the candidates in order, scanning from the last point known to be
/// outside any token up to each candidate's line. The prefix scans cleanly exactly when the
/// line starts outside any string, quoted identifier or comment.
fn meta_lines_incremental(sql: &str, candidates: &[BackslashLine]) -> Result<Vec<BackslashLine>> {
    let mut meta = Vec::new();
    let mut safe = 0;
    for c in candidates {
        if scan_raw(&sql[safe..c.start], safe).is_ok() {
            meta.push(*c);
            safe = c.end;
        }
    }
    // The rest must scan too, or the input is broken.
    if let Err(msg) = scan_raw(&sql[safe..], safe) {
        return Err(scan_error(sql, safe, &msg));
    }
    Ok(meta)
}

// ---------------------------------------------------------------------------------------
// Entry headers
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct HeaderAt {
    /// Start of the `--` line opening the header block.
    block_start: usize,
    header: EntryHeader,
}

fn find_headers(sql: &str, toks: &[Tok]) -> Result<Vec<HeaderAt>> {
    let mut out: Vec<HeaderAt> = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        if t.token != Token::SqlComment || !at_line_start(sql, t.start) {
            continue;
        }
        let text = t.text(sql);
        let Some(rest) = text
            .strip_prefix("-- Name: ")
            .or_else(|| text.strip_prefix("-- Data for Name: "))
        else {
            continue;
        };
        let header = parse_header(rest).ok_or_else(|| {
            anyhow!(
                "malformed pg_restore entry header at line {}: {text:?}",
                line_number(sql, t.start)
            )
        })?;
        // Walk back over the rest of the block: `-- TOC entry …`, `-- Dependencies: …`, `--`.
        let mut j = i;
        while j > 0 {
            let prev = &toks[j - 1];
            let gap = &sql[prev.end..toks[j].start];
            if prev.token != Token::SqlComment
                || !at_line_start(sql, prev.start)
                || !(gap == "\n" || gap == "\r\n")
            {
                break;
            }
            let p = prev.text(sql).trim_end();
            if p == "--" {
                j -= 1;
                break;
            }
            if p.starts_with("-- TOC entry ") || p.starts_with("-- Dependencies:") {
                j -= 1;
            } else {
                break;
            }
        }
        let block_start = toks[j].start;
        out.push(HeaderAt {
            block_start,
            header,
        });
    }
    Ok(out)
}

/// `X; Type: Y; Schema: Z; Owner: W[; Tablespace: T]`, parsed from the right. Names,
/// schemas and owners may contain anything (`; ` included); the type never contains `;`.
fn parse_header(rest: &str) -> Option<EntryHeader> {
    let rest = rest.trim_end_matches(['\r', ' ']);
    let (left, owner_part) = rest.rsplit_once("; Owner: ")?;
    let owner = match owner_part.rsplit_once("; Tablespace: ") {
        Some((owner, _tablespace)) => owner,
        None => owner_part,
    };
    let dash = |s: &str| if s == "-" { None } else { Some(s.to_string()) };
    for (at, sep) in left.rmatch_indices("; Type: ") {
        let after = &left[at + sep.len()..];
        let Some(semi) = after.find(';') else {
            continue;
        };
        if let Some(schema) = after[semi..].strip_prefix("; Schema: ") {
            return Some(EntryHeader {
                name: left[..at].to_string(),
                kind: after[..semi].to_string(),
                schema: dash(schema),
                owner: dash(owner),
            });
        }
    }
    None
}

/// Byte ranges of `sql[start..end]` and their header indexes: the text before the first
/// header (only if not empty), then one range per header.
fn entry_ranges(
    start: usize,
    end: usize,
    headers: &[HeaderAt],
) -> Vec<(usize, usize, Option<usize>)> {
    let mut bounds: Vec<(usize, Option<usize>)> = Vec::with_capacity(headers.len() + 1);
    if headers
        .first()
        .map_or(end > start, |h| h.block_start > start)
    {
        bounds.push((start, None));
    }
    bounds.extend(
        headers
            .iter()
            .enumerate()
            .map(|(k, h)| (h.block_start, Some(k))),
    );
    let mut out = Vec::with_capacity(bounds.len());
    for (k, &(s, header)) in bounds.iter().enumerate() {
        let e = bounds.get(k + 1).map_or(end, |b| b.0);
        out.push((s, e, header));
    }
    out
}

/// `f(integer, public."a(b")` -> `f`: drop the argument list matching the final `)`.
fn strip_arguments(tag: &str) -> String {
    let bytes = tag.as_bytes();
    if bytes.last() != Some(&b')') {
        return tag.to_string();
    }
    let mut depth = 0usize;
    let mut i = bytes.len();
    while i > 0 {
        i -= 1;
        match bytes[i] {
            b')' => depth += 1,
            b'(' => {
                depth -= 1;
                if depth == 0 {
                    return tag[..i].to_string();
                }
            }
            b'"' => {
                // Skip back to the opening quote of this quoted identifier ("" is an escape).
                loop {
                    if i == 0 {
                        return tag.to_string();
                    }
                    i -= 1;
                    if bytes[i] == b'"' {
                        if i > 0 && bytes[i - 1] == b'"' {
                            i -= 1;
                        } else {
                            break;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    tag.to_string()
}

// ---------------------------------------------------------------------------------------
// Identifiers
// ---------------------------------------------------------------------------------------

/// PostgreSQL's identifier truncation (NAMEDATALEN - 1 bytes, on a character boundary).
fn truncate_ident(mut s: String) -> String {
    if s.len() > MAX_IDENT_BYTES {
        let mut cut = MAX_IDENT_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Unquote a `"…"` identifier body (`""` -> `"`).
fn unquote_double(text: &str) -> Option<String> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    Some(inner.replace("\"\"", "\""))
}

/// Decode the body of `U&"…"` with escape character `esc`.
fn decode_unicode_ident(text: &str, esc: char) -> Option<String> {
    let body = unquote_double(text.get(2..)?)?;
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    let mut pending_high: Option<u32> = None;
    while let Some(c) = chars.next() {
        if c != esc {
            if pending_high.is_some() {
                return None;
            }
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&esc) {
            chars.next();
            if pending_high.is_some() {
                return None;
            }
            out.push(esc);
            continue;
        }
        let digits = if chars.peek() == Some(&'+') {
            chars.next();
            6
        } else {
            4
        };
        let mut code = 0u32;
        for _ in 0..digits {
            code = code * 16 + chars.next()?.to_digit(16)?;
        }
        match (pending_high.take(), code) {
            (None, 0xD800..=0xDBFF) => pending_high = Some(code),
            (Some(high), 0xDC00..=0xDFFF) => {
                out.push(char::from_u32(
                    0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00),
                )?);
            }
            (Some(_), _) | (None, 0xDC00..=0xDFFF) => return None,
            (None, code) => out.push(char::from_u32(code).filter(|&c| c != '\0')?),
        }
    }
    if pending_high.is_some() {
        return None;
    }
    Some(out)
}

/// The escape character of `UESCAPE 'c'`.
fn uescape_char(literal: &str) -> Option<char> {
    let inner = literal.strip_prefix('\'')?.strip_suffix('\'')?;
    let mut chars = inner.chars();
    let c = chars.next()?;
    let bad = c.is_ascii_hexdigit() || c.is_whitespace() || matches!(c, '+' | '\'' | '"');
    if chars.next().is_some() || bad {
        None
    } else {
        Some(c)
    }
}

fn check_schema_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        bail!("the {what} schema name is empty");
    }
    if name.len() > MAX_IDENT_BYTES {
        bail!("the {what} schema name {name:?} is longer than {MAX_IDENT_BYTES} bytes");
    }
    if name.contains('\0') {
        bail!("the {what} schema name {name:?} contains a NUL character");
    }
    Ok(())
}

/// Single-character operator tokens (the rest come back as `Op`).
fn is_operator(t: &Tok) -> bool {
    matches!(
        t.token,
        Token::Op
            | Token::Ascii37
            | Token::Ascii42
            | Token::Ascii43
            | Token::Ascii45
            | Token::Ascii47
            | Token::Ascii60
            | Token::Ascii61
            | Token::Ascii62
            | Token::Ascii63
            | Token::Ascii94
            | Token::LessEquals
            | Token::GreaterEquals
            | Token::NotEquals
            | Token::EqualsGreater
    )
}

/// The significant (non-comment) tokens of one piece of text, with their source text.
struct Tokens<'a> {
    sql: &'a str,
    toks: Vec<Tok>,
    /// Domains over a name type the dump defines ([`NameSignatures`]).
    domains: Option<&'a HashSet<String>>,
}

impl<'a> Tokens<'a> {
    fn new(sql: &'a str, all: &[Tok]) -> Tokens<'a> {
        Tokens {
            sql,
            toks: all.iter().filter(|t| !t.is_comment()).copied().collect(),
            domains: None,
        }
    }

    fn is(&self, i: usize, token: Token) -> bool {
        self.toks.get(i).is_some_and(|t| t.token == token)
    }

    /// The identifier starting at token `i`, as the catalog spells it, and the index of its
    /// last token (a `U&"…" UESCAPE 'c'` identifier spans three).
    fn ident(&self, i: usize) -> Option<(String, usize)> {
        let t = self.toks.get(i)?;
        let text = t.text(self.sql);
        let (value, last) = match t.token {
            Token::Ident if text.starts_with('"') => (unquote_double(text)?, i),
            Token::Ident => (text.to_ascii_lowercase(), i),
            Token::Uident => {
                if self.is(i + 1, Token::Uescape) && self.is(i + 2, Token::Sconst) {
                    let esc = uescape_char(self.toks[i + 2].text(self.sql))?;
                    (decode_unicode_ident(text, esc)?, i + 2)
                } else {
                    (decode_unicode_ident(text, '\\')?, i)
                }
            }
            _ if t.keyword => (text.to_ascii_lowercase(), i),
            _ => return None,
        };
        Some((truncate_ident(value), last))
    }

    /// The opening parenthesis of the list token `i` is directly in; `None`
    /// inside an array (`ARRAY['public.t']`, whose elements are values) or
    /// outside any parentheses.
    fn enclosing_paren(&self, i: usize) -> Option<usize> {
        let mut depth = 0usize;
        let mut j = i;
        while j > 0 {
            j -= 1;
            match self.toks[j].token {
                Token::Ascii41 | Token::Ascii93 => depth += 1,
                Token::Ascii40 | Token::Ascii91 if depth > 0 => depth -= 1,
                Token::Ascii40 => return Some(j),
                Token::Ascii91 => return None,
                _ => {}
            }
        }
        None
    }

    /// Whether token `i` is a whole element of a parenthesised list:
    /// `(` or `,` before it, `)` or `,` after.
    fn list_element(&self, i: usize) -> bool {
        i > 0
            && (self.is(i - 1, Token::Ascii40) || self.is(i - 1, Token::Ascii44))
            && (self.is(i + 1, Token::Ascii41) || self.is(i + 1, Token::Ascii44))
    }

    /// The function-name token of the call token `i` is a whole argument, and its position,
    /// of (`nextval('public.s')`, `to_tsvector('public.cfg', t)`); `None`
    /// for a value compared, listed or returned (`THEN 'public.t'`,
    /// `IN ('public.t')`, `x = 'public.t'`) or an argument of SQL's own
    /// syntax (`VALUES (`, `coalesce(`, `greatest(`), which are keywords.
    fn call_argument(&self, i: usize) -> Option<(usize, usize)> {
        if !self.list_element(i) {
            return None;
        }
        let j = self.enclosing_paren(i).filter(|&j| j > 0)?;
        if !matches!(self.toks[j - 1].token, Token::Ident | Token::Uident) {
            return None;
        }
        // Its position: the commas before it at the call's own depth.
        let mut depth = 0usize;
        let mut position = 0;
        for k in j + 1..i {
            match self.toks[k].token {
                Token::Ascii40 | Token::Ascii91 => depth += 1,
                Token::Ascii41 | Token::Ascii93 => depth = depth.saturating_sub(1),
                Token::Ascii44 if depth == 0 => position += 1,
                _ => {}
            }
        }
        Some((j - 1, position))
    }

    /// The function called at name token `f`: its schema as written (if
    /// qualified) and its name.
    fn called(&self, f: usize) -> Option<(Option<String>, String)> {
        let (name, _) = self.ident(f)?;
        let schema = (f >= 2 && self.is(f - 1, Token::Ascii46))
            .then(|| self.ident(f - 2).map(|(s, _)| s))
            .flatten();
        Some((schema, name))
    }

    /// The index of the last token of a name type (`regclass`,
    /// `pg_catalog.regconfig`) starting at token `i`.
    fn name_type(&self, i: usize) -> Option<usize> {
        let domain = |n: &str| self.domains.is_some_and(|d| d.contains(n));
        let (first, last) = self.ident(i)?;
        if NAME_TYPES.contains(&first.as_str()) || domain(&first) {
            return Some(last);
        }
        let (second, last) = self
            .is(last + 1, Token::Ascii46)
            .then(|| self.ident(last + 2))??;
        (first == "pg_catalog" && NAME_TYPES.contains(&second.as_str()) || domain(&second))
            .then_some(last)
    }

    /// The index of the first token of a name type ending at token `i`.
    fn name_type_ending(&self, i: usize) -> Option<usize> {
        [i, i.saturating_sub(2)]
            .into_iter()
            .find(|&s| self.name_type(s) == Some(i))
    }

    /// The variables a PL/pgSQL body declares with a name type
    /// (`cfg regconfig := …`, `t CONSTANT regclass = …`).
    fn name_variables(&self) -> Vec<String> {
        let mut vars = Vec::new();
        for i in 1..self.toks.len() {
            if self.name_type(i).is_none() {
                continue;
            }
            let var = if self.is(i - 1, Token::Ident)
                && self.ident(i - 1).is_some_and(|(c, _)| c == "constant")
                && i >= 2
            {
                i - 2
            } else {
                i - 1
            };
            if self.is(var, Token::Ident)
                && let Some((name, _)) = self.ident(var)
            {
                vars.push(name);
            }
        }
        vars
    }

    /// Whether the operand ending at token `i` is a value of a name type:
    /// a variable or parameter of one (`vars`), or a name type itself (a
    /// declaration, `cfg regconfig := …`, or a cast, `x::regclass = …`).
    fn name_operand(&self, i: usize, vars: &[String]) -> bool {
        // An array of a name type: `regclass[]`.
        if i >= 2 && self.is(i, Token::Ascii93) && self.is(i - 1, Token::Ascii91) {
            return self.name_type_ending(i - 2).is_some();
        }
        // `cfg regconfig NOT NULL := …`
        if i >= 2 && self.is(i, Token::NullP) && self.is(i - 1, Token::Not) {
            return self.name_type_ending(i - 2).is_some();
        }
        // `$1`, by its position in the signature.
        if self.is(i, Token::Param) {
            return vars.contains(&self.toks[i].text(self.sql).to_string());
        }
        self.name_type_ending(i).is_some()
            || (self.is(i, Token::Ident) && self.ident(i).is_some_and(|(n, _)| vars.contains(&n)))
    }

    /// Whether the expression ending at token `e` is cast to a name type:
    /// `… END::regconfig`, `(… END)::regconfig`, `CAST(… END AS regconfig)`,
    /// `ARRAY[…]::regclass[]`.
    fn cast_to_name(&self, e: usize) -> bool {
        if self.is(e + 1, Token::As) {
            return self.name_type(e + 2).is_some();
        }
        let mut k = e + 1;
        while self.is(k, Token::Ascii41) {
            k += 1;
        }
        self.is(k, Token::Typecast) && self.name_type(k + 1).is_some()
    }

    /// The `CASE` whose branch token `i` is in, scanning back over nested
    /// `CASE … END`s.
    fn case_start(&self, i: usize) -> Option<usize> {
        let mut depth = 0usize;
        for j in (0..i).rev() {
            match self.toks[j].token {
                Token::EndP => depth += 1,
                Token::Case if depth > 0 => depth -= 1,
                Token::Case => return Some(j),
                _ => {}
            }
        }
        None
    }

    /// Whether the string constant at token `i` is a name by its context:
    /// a whole argument of a function call; the value of a variable or
    /// parameter of a name type (`vars`), assigned, defaulted, compared or
    /// listed (`cfg regconfig := 'public.c'`, `t IN ('public.a', 'public.b')`);
    /// a branch of a `CASE` cast to one (`CASE … THEN 'public.c' END::regconfig`);
    /// or returned by a function of one (`returns_name`).
    fn name_context(
        &self,
        i: usize,
        vars: &[String],
        returns_name: bool,
        takes_names: &dyn Fn(Option<String>, String, usize) -> bool,
    ) -> bool {
        if let Some((f, position)) = self.call_argument(i)
            && let Some((schema, name)) = self.called(f)
        {
            return takes_names(schema, name, position);
        }
        let compare = |t: usize| {
            [
                Token::ColonEquals,
                Token::Ascii61,
                Token::NotEquals,
                Token::Default,
            ]
            .into_iter()
            .any(|k| self.is(t, k))
        };
        if i >= 2 && compare(i - 1) && self.name_operand(i - 2, vars) {
            return true;
        }
        if compare(i + 1) && !self.is(i + 1, Token::ColonEquals) && self.name_operand(i + 2, vars) {
            return true;
        }
        if self.list_element(i)
            && let Some(j) = self.enclosing_paren(i)
            && j >= 2
            && self.is(j - 1, Token::InP)
        {
            let operand = if self.is(j - 2, Token::Not) {
                j.checked_sub(3)
            } else {
                Some(j - 2)
            };
            if operand.is_some_and(|o| self.name_operand(o, vars)) {
                return true;
            }
        }
        if i > 0 && (self.is(i - 1, Token::Then) || self.is(i - 1, Token::Else)) {
            // The `END` of the `CASE` this branch is in, and its cast; or
            // the `CASE` assigned to a name (`cfg := CASE …`).
            let mut depth = 0usize;
            for j in i + 1..self.toks.len() {
                match self.toks[j].token {
                    Token::Case => depth += 1,
                    Token::EndP if depth > 0 => depth -= 1,
                    Token::EndP => {
                        if self.cast_to_name(j) {
                            return true;
                        }
                        break;
                    }
                    _ => {}
                }
            }
            if let Some(c) = self.case_start(i)
                && c >= 2
                && compare(c - 1)
                && self.name_operand(c - 2, vars)
            {
                return true;
            }
        }
        // A typed literal: `regconfig 'public.cfg'`.
        if i > 0 && self.name_type_ending(i - 1).is_some() {
            return true;
        }
        // An element of an array cast to a name type, or assigned to an
        // array of one (`ok regclass[] := ARRAY['public.t']`).
        if i > 0 && (self.is(i - 1, Token::Ascii91) || self.is(i - 1, Token::Ascii44)) {
            let mut depth = 0usize;
            for j in i + 1..self.toks.len() {
                match self.toks[j].token {
                    Token::Ascii40 | Token::Ascii91 => depth += 1,
                    Token::Ascii41 if depth == 0 => break,
                    Token::Ascii41 | Token::Ascii93 if depth > 0 => depth -= 1,
                    Token::Ascii93 => {
                        if self.cast_to_name(j) {
                            return true;
                        }
                        break;
                    }
                    _ => {}
                }
            }
            let mut depth = 0usize;
            for j in (0..i).rev() {
                match self.toks[j].token {
                    Token::Ascii41 | Token::Ascii93 => depth += 1,
                    Token::Ascii40 if depth == 0 => break,
                    Token::Ascii40 | Token::Ascii91 if depth > 0 => depth -= 1,
                    Token::Ascii91 => {
                        let a = if j > 0 && self.is(j - 1, Token::Array) {
                            j - 1
                        } else {
                            j
                        };
                        return a >= 2 && compare(a - 1) && self.name_operand(a - 2, vars);
                    }
                    _ => {}
                }
            }
        }
        // `RETURN 'public.t';`, or a SQL body's `SELECT 'public.t'`.
        returns_name
            && i > 0
            && (self.is(i - 1, Token::Return) || self.is(i - 1, Token::Select))
            && (self.is(i + 1, Token::Ascii59) || i + 1 == self.toks.len())
    }

    /// The name of an object at token `i`: an identifier or an operator.
    fn object_name(&self, i: usize) -> Option<String> {
        if let Some((name, _)) = self.ident(i) {
            return Some(name);
        }
        let t = self.toks.get(i)?;
        if !is_operator(t) {
            return None;
        }
        let text = t.text(self.sql);
        Some(if text == "!=" {
            "<>".to_string()
        } else {
            text.to_string()
        })
    }
}

// ---------------------------------------------------------------------------------------
// Remapping
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Edit {
    start: usize,
    end: usize,
    text: String,
}

fn apply_edits(sql: &str, edits: &[Edit]) -> String {
    let mut out =
        String::with_capacity(sql.len() + edits.iter().map(|e| e.text.len()).sum::<usize>());
    apply_edits_into(&mut out, sql, 0, sql.len(), edits);
    out
}

/// Append `sql[start..end]` to `out` with `edits` (ordered, absolute offsets) applied.
fn apply_edits_into(out: &mut String, sql: &str, start: usize, end: usize, edits: &[Edit]) {
    let mut pos = start;
    for e in edits {
        debug_assert!(
            e.start >= pos && e.end <= end,
            "edits overlap or are out of order"
        );
        out.push_str(&sql[pos..e.start]);
        out.push_str(&e.text);
        pos = e.end;
    }
    out.push_str(&sql[pos..end]);
}

struct Remapper<'a> {
    /// (from, the target schema as SQL, the names `from` defines).
    maps: Vec<(&'a str, String, &'a DefinedNames)>,
}

/// What a pass over some tokens found.
#[derive(Default)]
struct Found {
    /// Qualifier rewrites (may still be dropped as column references).
    qualifiers: Vec<Edit>,
    /// Rewritten reg* literals.
    literals: Vec<Edit>,
    /// `from` was used other than as a qualifier, so a relation, alias or parameter of
    /// that name may be in scope.
    bare_use: bool,
    /// The first such name.
    bare_name: String,
}

impl<'a> Remapper<'a> {
    fn new(maps: &[Mapping<'a>]) -> Result<Remapper<'a>> {
        let mut remapper = Remapper { maps: Vec::new() };
        for m in maps {
            check_schema_name("source", m.from)?;
            check_schema_name("target", m.to)?;
            remapper
                .maps
                .push((m.from, crate::pg::ident::display_ident(m.to), m.defined));
        }
        Ok(remapper)
    }

    /// Rewrite one entry (`sql[start..end]`, tokens `toks`), pushing edits in order.
    /// `label` names the entry in the warning about an entry that does not
    /// parse; `None`: no warning (a function body, which need not be SQL).
    fn remap_entry(
        &self,
        sql: &str,
        start: usize,
        end: usize,
        toks: &[Tok],
        label: Option<&dyn Fn() -> String>,
        edits: &mut Vec<Edit>,
    ) {
        let tokens = Tokens::new(sql, toks);
        let found = self.pass(&tokens, true);
        let mut qualifiers = found.qualifiers;
        if found.bare_use && !qualifiers.is_empty() {
            match two_part_column_refs(&sql[start..end]) {
                Ok(locations) => qualifiers.retain(|e| !locations.contains(&(e.start - start))),
                Err(e) => {
                    if let Some(label) = label {
                        tracing::warn!(
                            entry = %label(),
                            "cannot parse an entry that uses {:?} as a name; \
                             every {:?}.X reference in it is treated as schema-qualified: {e}",
                            found.bare_name,
                            found.bare_name
                        )
                    }
                }
            }
        }
        // Merge the two ordered lists.
        let mut lits = found.literals.into_iter().peekable();
        for q in qualifiers {
            while lits.peek().is_some_and(|l| l.start < q.start) {
                edits.push(lits.next().expect("peeked"));
            }
            edits.push(q);
        }
        edits.extend(lits);
    }

    /// One pass over significant tokens. `literals`: also rewrite reg* casts.
    fn pass(&self, t: &Tokens<'_>, literals: bool) -> Found {
        let mut found = Found::default();
        let n = t.toks.len();
        let mut i = 0;
        while i < n {
            if literals && t.toks[i].token == Token::Sconst {
                if let Some(edit) = self.reg_literal(t, i) {
                    found.literals.push(edit);
                }
                i += 1;
                continue;
            }
            let Some((name, last)) = t.ident(i) else {
                i += 1;
                continue;
            };
            if let Some((_, to_sql, defined)) = self.maps.iter().find(|m| m.0 == name) {
                let after_dot = i > 0 && t.is(i - 1, Token::Ascii46);
                let before_dot = t.is(last + 1, Token::Ascii46);
                if !before_dot {
                    if !found.bare_use {
                        found.bare_name = name.clone();
                    }
                    found.bare_use = true;
                } else if !after_dot
                    && t.object_name(last + 2)
                        .is_some_and(|x| defined.contains(&x))
                {
                    found.qualifiers.push(Edit {
                        start: t.toks[i].start,
                        end: t.toks[last].end,
                        text: to_sql.clone(),
                    });
                }
            }
            i = last + 1;
        }
        found
    }

    /// `'from.X…'::regclass` (and the other reg* types): the rewritten literal, if any.
    fn reg_literal(&self, t: &Tokens<'_>, i: usize) -> Option<Edit> {
        if !t.is(i + 1, Token::Typecast) {
            return None;
        }
        let mut k = i + 2;
        let (mut ty, mut last) = t.ident(k)?;
        if ty == "pg_catalog" && t.is(last + 1, Token::Ascii46) {
            k = last + 2;
            (ty, last) = t.ident(k)?;
        }
        if !REG_TYPES.contains(&ty.as_str()) {
            return None;
        }
        let array = t.is(last + 1, Token::Ascii91);
        let tok = t.toks[i];
        let content = decode_literal(tok.text(t.sql))?;
        let rewritten = if array {
            remap_array_literal(&content, |element| self.reg_value(element))?
        } else {
            self.reg_value(&content)?
        };
        let mut text = String::with_capacity(rewritten.len() + 2);
        text.push('\'');
        text.push_str(&rewritten.replace('\'', "''"));
        text.push('\'');
        Some(Edit {
            start: tok.start,
            end: tok.end,
            text,
        })
    }

    /// The remapped text of one reg* value (`public.users`, `public.f(public.mood)`), if it
    /// changes.
    fn reg_value(&self, value: &str) -> Option<String> {
        let scanned = scan_raw(value, 0).ok()?;
        let inner = Tokens::new(value, &scanned);
        let found = self.pass(&inner, false);
        if found.qualifiers.is_empty() {
            return None;
        }
        Some(apply_edits(value, &found.qualifiers))
    }
}

/// Rewrite the elements of an array literal (`{public.a,"public.\\"B\\""}`) with `f`; a
/// changed element is written back double-quoted, everything else is kept as written.
/// `None` if nothing changes or the literal is not a plain array literal.
fn remap_array_literal(literal: &str, f: impl Fn(&str) -> Option<String>) -> Option<String> {
    let is_blank = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c');
    let mut out = String::with_capacity(literal.len() + 16);
    let mut changed = false;
    let mut depth = 0usize;
    let mut expect_element = false;
    let mut i = literal.len() - literal.trim_start_matches(is_blank).len();
    out.push_str(&literal[..i]);
    if !literal[i..].starts_with('{') {
        return None; // also refuses a dimension decoration like [1:2]={...}
    }
    while let Some(c) = literal[i..].chars().next() {
        match c {
            '{' => {
                depth += 1;
                expect_element = true;
            }
            '}' => {
                depth = depth.checked_sub(1)?;
                expect_element = false;
            }
            ',' if depth > 0 => expect_element = true,
            c if is_blank(c) => {}
            _ if expect_element && depth > 0 => {
                let (value, end, quoted) = read_array_element(literal, i)?;
                let is_null = !quoted && value.eq_ignore_ascii_case("null");
                match if is_null { None } else { f(&value) } {
                    Some(new) => {
                        changed = true;
                        push_array_element(&mut out, &new);
                    }
                    None => out.push_str(&literal[i..end]),
                }
                i = end;
                expect_element = false;
                continue;
            }
            _ => return None,
        }
        out.push(c);
        i += c.len_utf8();
        if depth == 0 {
            let rest = &literal[i..];
            if !rest.trim_matches(is_blank).is_empty() {
                return None;
            }
            out.push_str(rest);
            return changed.then_some(out);
        }
    }
    None
}

/// One array element starting at `start`: its value, the offset just past it (trailing
/// blanks of an unquoted element excluded) and whether it was double-quoted.
fn read_array_element(literal: &str, start: usize) -> Option<(String, usize, bool)> {
    let mut chars = literal[start..]
        .char_indices()
        .map(|(k, c)| (start + k, c))
        .peekable();
    let mut value = String::new();
    if literal[start..].starts_with('"') {
        chars.next();
        while let Some((k, c)) = chars.next() {
            match c {
                '"' => return Some((value, k + 1, true)),
                '\\' => value.push(chars.next()?.1),
                c => value.push(c),
            }
        }
        return None;
    }
    // Unquoted: up to a delimiter; trailing blanks are not part of the value.
    let (mut end, mut kept) = (start, 0);
    while let Some(&(k, c)) = chars.peek() {
        if matches!(c, ',' | '{' | '}' | '"') {
            break;
        }
        chars.next();
        let c = if c == '\\' { chars.next()?.1 } else { c };
        value.push(c);
        if !matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
            || literal.as_bytes()[k] == b'\\'
        {
            kept = value.len();
            end = chars.peek().map_or(literal.len(), |&(k, _)| k);
        }
    }
    value.truncate(kept);
    (end > start).then_some((value, end, false))
}

fn push_array_element(out: &mut String, value: &str) {
    out.push('"');
    for ch in value.chars() {
        if ch == '"' || ch == '\\' {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('"');
}

/// The value of a standard string literal (`'…'`, with `''` and newline continuations;
/// `E'…'` only without backslashes). `None` for anything else (dollar quotes, escapes).
fn decode_literal(text: &str) -> Option<String> {
    let body = if let Some(rest) = text.strip_prefix(['E', 'e']) {
        if rest.contains('\\') {
            return None;
        }
        rest
    } else {
        text
    };
    let mut rest = body.strip_prefix('\'')?;
    let mut out = String::with_capacity(rest.len());
    loop {
        let q = rest.find('\'')?;
        out.push_str(&rest[..q]);
        rest = &rest[q + 1..];
        if let Some(r) = rest.strip_prefix('\'') {
            out.push('\'');
            rest = r;
            continue;
        }
        if rest.is_empty() {
            return Some(out);
        }
        // A continuation: whitespace with at least one newline, then another quote.
        let ws = rest.len()
            - rest
                .trim_start_matches([' ', '\t', '\n', '\r', '\x0c'])
                .len();
        if !rest[..ws].contains('\n') {
            return None;
        }
        rest = rest[ws..].strip_prefix('\'')?;
    }
}

/// Byte offsets (within `sql`) of column references with exactly two parts (`a.b`, `a.*`):
/// their first part is a relation, alias or parameter, never a schema.
fn two_part_column_refs(sql: &str) -> Result<HashSet<usize>> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| anyhow!("{e}"))?;
    let tree = serde_json::to_value(&parsed.protobuf)?;
    let mut out = HashSet::new();
    let mut stack = vec![&tree];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(cref) = map.get("ColumnRef") {
                    let fields = cref
                        .get("fields")
                        .and_then(|f| f.as_array())
                        .map_or(0, Vec::len);
                    let location = cref.get("location").and_then(|l| l.as_u64());
                    if let (2, Some(location)) = (fields, location) {
                        out.insert(location as usize);
                    }
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items.iter()),
            _ => {}
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Function bodies
// ---------------------------------------------------------------------------------------

/// The languages whose bodies are SQL text, which [`prepare_time_function`] remaps.
const SQL_BODY_LANGUAGES: &[&str] = &["sql", "plpgsql"];

/// The types whose values are objects' names written as strings: a string
/// constant of one in a prepare-time body names a shadow's object.
const NAME_TYPES: &[&str] = &[
    "regclass",
    "regcollation",
    "regconfig",
    "regdictionary",
    "regoper",
    "regoperator",
    "regproc",
    "regprocedure",
    "regtype",
];

/// PostgreSQL's functions (and unaccent's) that take an object's name as a
/// `reg*` or text argument: a string that is only a migrated object's
/// qualified name passed to one of these is a name. Passed to any other
/// function the dump does not define (`concat_ws(':', 'public.t', id)`,
/// `substr`, an extension's), it is data.
const NAME_FUNCTIONS: &[&str] = &[
    "brin_desummarize_range",
    "brin_summarize_new_values",
    "brin_summarize_range",
    "currval",
    "gin_clean_pending_list",
    "has_column_privilege",
    "has_sequence_privilege",
    "has_table_privilege",
    "json_to_tsvector",
    "jsonb_to_tsvector",
    "nextval",
    "pg_column_is_updatable",
    "pg_get_replica_identity_index",
    "pg_get_serial_sequence",
    "pg_index_column_has_property",
    "pg_index_has_property",
    "pg_indexes_size",
    "pg_partition_ancestors",
    "pg_partition_root",
    "pg_partition_tree",
    "pg_relation_filenode",
    "pg_relation_filepath",
    "pg_relation_is_updatable",
    "pg_relation_size",
    "pg_sequence_last_value",
    "pg_table_size",
    "pg_total_relation_size",
    "phraseto_tsquery",
    "plainto_tsquery",
    "setval",
    "table_to_xml",
    "table_to_xml_and_xmlschema",
    "table_to_xmlschema",
    "to_regclass",
    "to_regcollation",
    "to_regoper",
    "to_regoperator",
    "to_regproc",
    "to_regprocedure",
    "to_regtype",
    "to_tsquery",
    "to_tsvector",
    "ts_debug",
    "ts_headline",
    "ts_lexize",
    "unaccent",
    "websearch_to_tsquery",
];

/// A function's definition for the time before the swap; `None` when it is
/// `stmt` itself.
///
/// [`remap`] leaves a function's body as written: it names the schemas the
/// function lives in after the swap. But prepare already runs functions in the
/// shadow: in index expressions, CHECK constraints and generated columns while
/// the tables load, in materialized views, and while preserved tables sync. A
/// body that names its own schema (`SELECT app.norm_impl($1)`, as functions
/// used by indexes must, since pg_dump restores with an empty `search_path`), or
/// a `SET search_path = app`, then reaches the destination's *live* schema:
/// into an empty destination prepare fails, and where the live version differs
/// an index is built with the wrong function, silently. So the shadow first gets
/// the function with its SQL or PL/pgSQL body remapped by the rules above and
/// each chosen schema of its `search_path` preceded by its shadow (the live
/// schema stays, for the extension members in it); the swap puts back the
/// definition as written ([`restore_function`]), before its objects move.
///
/// `stmt`: one remapped entry. Anything but a `CREATE FUNCTION` (a procedure,
/// a body in another language, a SQL-standard body, which is remapped as DDL
/// already), or text that does not parse, gives `None`.
pub fn prepare_time_function(
    stmt: &str,
    maps: &[Mapping<'_>],
    sigs: &NameSignatures,
) -> Result<Option<String>> {
    use pg_query::NodeEnum;
    let remapper = Remapper::new(maps)?;
    let Ok(mut parsed) = pg_query::parse(stmt, 0) else {
        return Ok(None);
    };
    let mut changed = false;
    for raw in &mut parsed.protobuf.stmts {
        let Some(NodeEnum::CreateFunctionStmt(f)) = raw.stmt.as_mut().and_then(|s| s.node.as_mut())
        else {
            continue;
        };
        if f.is_procedure || f.sql_body.is_some() {
            continue;
        }
        let names = name_typed(f, &sigs.domains);
        let sql_body = f.options.iter().any(|o| match &o.node {
            Some(NodeEnum::DefElem(d)) if d.defname == "language" => {
                matches!(d.arg.as_ref().and_then(|a| a.node.as_ref()),
                    Some(NodeEnum::String(l)) if SQL_BODY_LANGUAGES.contains(&l.sval.as_str()))
            }
            _ => false,
        });
        for o in &mut f.options {
            let Some(NodeEnum::DefElem(d)) = o.node.as_mut() else {
                continue;
            };
            match (
                d.defname.as_str(),
                d.arg.as_mut().and_then(|a| a.node.as_mut()),
            ) {
                ("as", Some(NodeEnum::List(l))) if sql_body && l.items.len() == 1 => {
                    if let Some(NodeEnum::String(s)) = l.items[0].node.as_mut()
                        && let Some(body) = remapper.remap_body(&s.sval, &names, sigs)
                    {
                        s.sval = body;
                        changed = true;
                    }
                }
                ("set", Some(NodeEnum::VariableSetStmt(v))) if v.name == "search_path" => {
                    let mut args = Vec::with_capacity(v.args.len() + 1);
                    for a in std::mem::take(&mut v.args) {
                        if let Some(m) =
                            string_const(&a).and_then(|s| maps.iter().find(|m| m.from == s))
                        {
                            args.push(string_const_node(m.to));
                            changed = true;
                        }
                        args.push(a);
                    }
                    v.args = args;
                }
                _ => {}
            }
        }
    }
    if !changed {
        return Ok(None);
    }
    let out = pg_query::deparse(&parsed.protobuf, Default::default())
        .map_err(|e| anyhow!("rewriting a function for prepare: {e}"))?;
    Ok(Some(format!("{out};\n")))
}

/// The statement that puts back the definition of a function that
/// [`prepare_time_function`] changed: `stmt` (its entry as [`remap`] wrote
/// it, the function in the shadow and its body as written) as `CREATE OR
/// REPLACE`, alone, after `SET LOCAL check_function_bodies = off` (the body may
/// name objects that exist only once the swap has moved them). The swap runs it
/// before the shadow's objects move.
pub fn restore_function(stmt: &str) -> Result<String> {
    use pg_query::NodeEnum;
    let parsed = pg_query::parse(stmt, 0).map_err(|e| anyhow!("parsing a function: {e}"))?;
    let raw = parsed
        .protobuf
        .stmts
        .iter()
        .find(|r| {
            matches!(
                r.stmt.as_ref().and_then(|s| s.node.as_ref()),
                Some(NodeEnum::CreateFunctionStmt(_))
            )
        })
        .ok_or_else(|| anyhow!("not a CREATE FUNCTION: {}", first_line(stmt)))?;
    let start = usize::try_from(raw.stmt_location).unwrap_or(0);
    let end = match usize::try_from(raw.stmt_len) {
        Ok(0) | Err(_) => stmt.len(),
        Ok(len) => start + len,
    };
    let text = stmt
        .get(start..end)
        .ok_or_else(|| anyhow!("a bad statement span in {}", first_line(stmt)))?;
    let toks = scan_raw(text, 0).map_err(|e| anyhow!("scanning a function: {e}"))?;
    let t = Tokens::new(text, &toks);
    if !(t.is(0, Token::Create) && t.is(1, Token::Function)) {
        bail!("not a plain CREATE FUNCTION: {}", first_line(text));
    }
    let create = t.toks[0];
    Ok(format!(
        "SET LOCAL check_function_bodies = off; {} OR REPLACE{};",
        create.text(text),
        text[create.end..].trim_end().trim_end_matches(';')
    ))
}

/// The relations a function's body (an SQL function's string body, or
/// plpgsql's) may name, as written: `(Some(schema), name)` for every
/// qualified name that is not a call (`audit.changes`, `INSERT INTO
/// audit.changes (op)`, also the first two
/// parts of `audit.changes.id` and of `audit.changes%ROWTYPE`), `(None, name)`
/// for an unqualified one right after a word that introduces a relation
/// (`FROM`, `JOIN`, `INTO`, `UPDATE`, `TABLE`, `ONLY`, `USING`). PostgreSQL
/// records no dependency on what such a body names, so this reads the text
/// with PostgreSQL's scanner; it can name more than the body uses (an alias
/// spelled like a schema, a plpgsql variable after `INTO`) and misses
/// dynamic SQL. A body that does not scan names nothing.
pub fn relations_named_in_body(body: &str) -> Vec<(Option<String>, String)> {
    let Ok(all) = scan_raw(body, 0) else {
        return Vec::new();
    };
    let t = Tokens::new(body, &all);
    let introduces = |i: usize| {
        t.toks[i].keyword
            && matches!(
                t.toks[i].text(body).to_ascii_lowercase().as_str(),
                "from"
                    | "join"
                    | "into"
                    | "update"
                    | "table"
                    | "only"
                    | "using"
                    | "truncate"
                    | "analyze"
                    | "vacuum"
                    | "lock"
            )
    };
    // The comma after `FROM a x` goes on with the list: `, b` is a relation too.
    let list_comma = |end: usize| {
        let mut j = end + 1;
        if t.is(j, Token::As) {
            j += 1;
        }
        if t.is(j, Token::Ident) {
            j += 1;
        }
        t.is(j, Token::Ascii44).then_some(j)
    };
    let mut out = Vec::new();
    let mut comma = None;
    let mut i = 0;
    while i < t.toks.len() {
        let Some((first, last)) = t.ident(i) else {
            i += 1;
            continue;
        };
        let after_dot = i > 0 && t.is(i - 1, Token::Ascii46);
        let introduced = i > 0 && (introduces(i - 1) || comma == Some(i - 1));
        let second = t
            .is(last + 1, Token::Ascii46)
            .then(|| t.ident(last + 2))
            .flatten();
        // A row type: `ledger%ROWTYPE`, `ledger.amount%TYPE`, `x::ledger`.
        let cast = i > 0 && t.is(i - 1, Token::Typecast);
        let (named, end) = match second {
            Some((name, end)) if !after_dot => {
                if t.is(end + 1, Token::Ascii37) {
                    out.push((None, first.clone()));
                }
                (Some((Some(first), name)), end)
            }
            _ => {
                let typed = cast || t.is(last + 1, Token::Ascii37);
                let plain = !after_dot && (introduced || typed) && !t.is(last + 1, Token::Ascii46);
                (plain.then_some((None, first)), last)
            }
        };
        // A call, but `INSERT INTO t (a, b)` names a table and its columns.
        let into = i > 0 && t.is(i - 1, Token::Into);
        if let Some(named) = named
            && (into || !t.is(end + 1, Token::Ascii40))
        {
            out.push(named);
            if introduced {
                comma = list_comma(end);
            }
        }
        i = end + 1;
    }
    out
}

/// The first line of SQL that is not blank or a comment, at most 120
/// characters: how a statement is named in an error.
pub(crate) fn first_line(sql: &str) -> String {
    sql.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("--"))
        .unwrap_or("")
        .chars()
        .take(120)
        .collect()
}

/// The value of a string constant node (`'app'` in `SET search_path TO 'app'`).
fn string_const(node: &pg_query::protobuf::Node) -> Option<&str> {
    match &node.node {
        Some(pg_query::NodeEnum::AConst(c)) => match &c.val {
            Some(pg_query::protobuf::a_const::Val::Sval(s)) => Some(s.sval.as_str()),
            _ => None,
        },
        _ => None,
    }
}

fn string_const_node(value: &str) -> pg_query::protobuf::Node {
    pg_query::protobuf::Node {
        node: Some(pg_query::NodeEnum::AConst(pg_query::protobuf::AConst {
            isnull: false,
            location: -1,
            val: Some(pg_query::protobuf::a_const::Val::Sval(
                pg_query::protobuf::String {
                    sval: value.to_string(),
                },
            )),
        })),
    }
}

/// A function's parameters of a name type (`t regclass`) and whether it
/// returns one, for [`Tokens::name_context`].
struct NameTyped {
    params: Vec<String>,
    returns: bool,
}

/// Whether a type as written is a name type (or an array of one), or a
/// domain over one of `domains`.
fn is_name_type(t: Option<&pg_query::protobuf::TypeName>, domains: &HashSet<String>) -> bool {
    use pg_query::NodeEnum;
    t.and_then(|t| t.names.last())
        .and_then(|n| n.node.as_ref())
        .is_some_and(|n| {
            matches!(n, NodeEnum::String(s)
                if NAME_TYPES.contains(&s.sval.as_str()) || domains.contains(&s.sval))
        })
}

/// What the dump's own definitions tell about names in function bodies:
/// its domains over a name type (`CREATE DOMAIN cfg AS regconfig`), and for
/// each function it defines (by name, overloads together) the positions of
/// its input arguments of a name type, so that `audit('public.t')` is a
/// name when `audit` takes a `regclass` and data when it takes `text`.
#[derive(Debug, Default)]
pub struct NameSignatures {
    domains: HashSet<String>,
    functions: std::collections::HashMap<String, HashSet<usize>>,
}

impl NameSignatures {
    /// From the remapped entries' SQL (domains first, then functions).
    pub fn from_sql<'s>(stmts: impl Iterator<Item = &'s str> + Clone) -> NameSignatures {
        use pg_query::NodeEnum;
        let mut sigs = NameSignatures::default();
        let parsed = |sql: &str| {
            pg_query::parse(sql, 0)
                .map(|p| p.protobuf.stmts)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|r| r.stmt.and_then(|s| s.node))
        };
        for sql in stmts.clone().filter(|s| s.contains("DOMAIN")) {
            for node in parsed(sql) {
                if let NodeEnum::CreateDomainStmt(d) = node
                    && is_name_type(d.type_name.as_ref(), &HashSet::new())
                    && let Some(NodeEnum::String(n)) =
                        d.domainname.last().and_then(|n| n.node.as_ref())
                {
                    sigs.domains.insert(n.sval.clone());
                }
            }
        }
        for sql in stmts.filter(|s| s.contains("FUNCTION")) {
            for node in parsed(sql) {
                let NodeEnum::CreateFunctionStmt(f) = node else {
                    continue;
                };
                let Some(NodeEnum::String(name)) = f.funcname.last().and_then(|n| n.node.as_ref())
                else {
                    continue;
                };
                let positions = sigs.functions.entry(name.sval.clone()).or_default();
                for (p, at) in parameters(&f) {
                    if let Some(at) = at
                        && is_name_type(p.arg_type.as_ref(), &sigs.domains)
                    {
                        positions.insert(at);
                    }
                }
            }
        }
        sigs
    }
}

/// A function's parameters, each with its position among the input ones
/// (`$1` is 0); `None` for OUT and TABLE ones, which take no position.
fn parameters(
    f: &pg_query::protobuf::CreateFunctionStmt,
) -> impl Iterator<Item = (&pg_query::protobuf::FunctionParameter, Option<usize>)> {
    use pg_query::NodeEnum;
    use pg_query::protobuf::FunctionParameterMode::{FuncParamOut, FuncParamTable};
    let mut inputs = 0;
    f.parameters.iter().filter_map(move |p| {
        let Some(NodeEnum::FunctionParameter(p)) = p.node.as_ref() else {
            return None;
        };
        let at = (!matches!(p.mode(), FuncParamOut | FuncParamTable)).then(|| {
            inputs += 1;
            inputs - 1
        });
        Some((p.as_ref(), at))
    })
}

fn name_typed(f: &pg_query::protobuf::CreateFunctionStmt, domains: &HashSet<String>) -> NameTyped {
    // Parameters of a name type by name and by position (`$1`).
    let mut params = Vec::new();
    for (p, at) in parameters(f).filter(|(p, _)| is_name_type(p.arg_type.as_ref(), domains)) {
        if !p.name.is_empty() {
            params.push(p.name.clone());
        }
        if let Some(at) = at {
            params.push(format!("${}", at + 1));
        }
    }
    NameTyped {
        params,
        returns: is_name_type(f.return_type.as_ref(), domains),
    }
}

impl Remapper<'_> {
    /// A function body remapped as an entry is, plus every string constant
    /// that is nothing but a qualified name the dump defines and a name by
    /// its context ([`Tokens::name_context`]: `to_tsvector('app.cfg', t)`,
    /// where the function's signature makes the constant a `regconfig`,
    /// unseen in the text; `cfg regconfig := 'app.cfg'`); `None` if nothing
    /// changes or it does not scan (a body need not be SQL). Only for the
    /// prepare-time form: the swap puts the body back as written.
    fn remap_body(&self, body: &str, typed: &NameTyped, sigs: &NameSignatures) -> Option<String> {
        let toks = scan_raw(body, 0).ok()?;
        let mut edits = Vec::new();
        self.remap_entry(body, 0, body.len(), &toks, None, &mut edits);
        let mut tokens = Tokens::new(body, &toks);
        tokens.domains = Some(&sigs.domains);
        let mut vars = tokens.name_variables();
        vars.extend(typed.params.iter().cloned());
        for (i, tok) in tokens.toks.iter().enumerate() {
            if tok.token != Token::Sconst
                || tokens.is(i + 1, Token::Typecast)
                || edits.iter().any(|e| e.start == tok.start)
                || !tokens.name_context(i, &vars, typed.returns, &|schema, name, position| {
                    self.takes_names(sigs, schema.as_deref(), &name, position)
                })
            {
                continue;
            }
            if let Some(text) = self.name_literal(tok.text(body)) {
                edits.push(Edit {
                    start: tok.start,
                    end: tok.end,
                    text,
                });
            }
        }
        edits.sort_by_key(|e| e.start);
        (!edits.is_empty()).then(|| apply_edits(body, &edits))
    }

    /// Whether a call of `schema.name` takes a string at `position` as an
    /// object's name: one of PostgreSQL's that do ([`NAME_FUNCTIONS`]), or a
    /// function the dump defines with a name type there ([`NameSignatures`]).
    fn takes_names(
        &self,
        sigs: &NameSignatures,
        schema: Option<&str>,
        name: &str,
        position: usize,
    ) -> bool {
        let defined = match schema {
            None | Some("pg_catalog") if NAME_FUNCTIONS.contains(&name) => return true,
            None => self.maps.iter().any(|(_, _, d)| d.contains(name)),
            Some(s) => self
                .maps
                .iter()
                .any(|(from, _, d)| *from == s && d.contains(name)),
        };
        defined
            && sigs
                .functions
                .get(name)
                .is_some_and(|p| p.contains(&position))
    }

    /// `'app.cfg'` as `'shadow_app.cfg'` when the constant is exactly a
    /// qualified name of an object the dump defines.
    fn name_literal(&self, literal: &str) -> Option<String> {
        let content = decode_literal(literal)?;
        let scanned = scan_raw(&content, 0).ok()?;
        let inner = Tokens::new(&content, &scanned);
        let (_, last) = inner.ident(0)?;
        if !(inner.is(last + 1, Token::Ascii46) && inner.toks.len() == last + 3) {
            return None;
        }
        let rewritten = self.reg_value(&content)?;
        Some(format!("'{}'", rewritten.replace('\'', "''")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Abridged real `pg_restore --section=pre-data --no-owner --no-privileges -f -` output
    /// of pg_dump 15.18 (which writes `\restrict` after the first comment block).
    const SAMPLE: &str = r#"--
-- PostgreSQL database dump
--

\restrict WjZJ4ZkmdmyhmQ0sbuS4TUdOJiSnPDPvGCvKx6IFiPs1Kz1vZGacTb3NfJTIcnI

-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)
-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)

SET statement_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;

--
-- Name: public; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA public;


--
-- Name: mood; Type: TYPE; Schema: public; Owner: -
--

CREATE TYPE public.mood AS ENUM (
    'sad',
    'ok'
);


--
-- Name: f(integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.f(x integer) RETURNS integer
    LANGUAGE plpgsql
    AS $$ BEGIN RETURN (SELECT count(*) FROM public.users); END $$;


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: users; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.users (
    id integer NOT NULL,
    m public.mood,
    ms public.mood[],
    g public.geometry(Point,4326),
    u uuid DEFAULT public.uuid_generate_v4()
);


--
-- Name: TABLE users; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.users IS 'see public.users docs';


--
-- Name: g(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.g() RETURNS bigint
    LANGUAGE sql
    BEGIN ATOMIC
 SELECT count(*) AS count
    FROM public.users;
END;


--
-- Name: users_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.users_id_seq OWNED BY public.users.id;


--
-- Name: users id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.users ALTER COLUMN id SET DEFAULT nextval('public.users_id_seq'::regclass);


--
-- PostgreSQL database dump complete
--

\unrestrict WjZJ4ZkmdmyhmQ0sbuS4TUdOJiSnPDPvGCvKx6IFiPs1Kz1vZGacTb3NfJTIcnI

"#;

    fn names(list: &[&str]) -> DefinedNames {
        list.iter().copied().collect()
    }

    /// Remap public -> shadow, checking that scanning in the smallest possible pieces
    /// gives the same answer.
    fn rm(sql: &str, defined: &[&str]) -> String {
        let defined = names(defined);
        let out = remap(sql, "public", "shadow", &defined).unwrap();
        let tiny = remap_chunked(
            sql,
            &[Mapping {
                from: "public",
                to: "shadow",
                defined: &defined,
            }],
            1,
        )
        .unwrap();
        assert_eq!(out, tiny, "chunked remap differs");
        out
    }

    fn split(sql: &str) -> Vec<Entry> {
        let entries = split_entries(sql).unwrap();
        assert_eq!(
            entries.iter().map(|e| e.sql.as_str()).collect::<String>(),
            sql,
            "round trip"
        );
        assert_eq!(
            split_entries_chunked(sql, 1).unwrap(),
            entries,
            "chunked split differs"
        );
        entries
    }

    fn strip(sql: &str) -> Result<String> {
        let out = strip_meta_commands(sql);
        let tiny = strip_meta_commands_chunked(sql, 1);
        match (&out, &tiny) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "chunked strip differs"),
            (Err(_), Err(_)) => {}
            _ => panic!("chunked strip disagrees: {out:?} vs {tiny:?}"),
        }
        out
    }

    // --- meta-commands -------------------------------------------------------------------

    #[test]
    fn strips_restrict_and_unrestrict() {
        let out = strip(SAMPLE).unwrap();
        assert!(!out.contains("restrict"), "{out}");
        // Only those two lines went away.
        let expected: String = SAMPLE
            .split_inclusive('\n')
            .filter(|l| !l.contains("restrict W"))
            .collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn strips_restrict_on_the_first_line_and_without_final_newline() {
        assert_eq!(
            strip("\\restrict K7x\nSELECT 1;\n\\unrestrict K7x").unwrap(),
            "SELECT 1;\n"
        );
        assert_eq!(
            strip("  \t\\restrict K\r\nSELECT 1;\r\n").unwrap(),
            "SELECT 1;\r\n"
        );
    }

    #[test]
    fn no_meta_commands_is_identity() {
        let sql = "SELECT 1;\n-- \\restrict in a comment\nSELECT 'a\\b';\n";
        assert_eq!(strip(sql).unwrap(), sql);
        assert_eq!(strip("").unwrap(), "");
    }

    #[test]
    fn backslash_lines_inside_strings_and_comments_stay() {
        let sql = "\\restrict K\n\
                   SELECT 'first\n\\restrict not really\n';\n\
                   CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $fn$\n\\connect x\nSELECT 1 $fn$;\n\
                   /* a comment\n\\connect y\n*/\n\
                   SELECT \"an\n\\ident\" FROM t;\n\
                   SELECT E'\\\\x'\n\
                   \\unrestrict K\n";
        let out = strip(sql).unwrap();
        assert!(!out.starts_with("\\restrict"));
        assert!(!out.contains("\\unrestrict"));
        assert!(out.contains("\n\\restrict not really\n"));
        assert!(out.contains("\n\\connect x\n"));
        assert!(out.contains("\n\\connect y\n"));
        assert!(out.contains("\n\\ident\""));
    }

    #[test]
    fn other_meta_commands_are_errors() {
        let err = strip("SELECT 1;\n\\connect otherdb\nSELECT 2;\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\\connect") && err.contains("line 2"), "{err}");
        let err = strip("COPY t FROM stdin;\n1\n\\.\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\\."), "{err}");
    }

    #[test]
    fn meta_command_with_a_quote_is_found_line_by_line() {
        // `\echo it's` derails a single scan of the whole text; the slow path copes.
        let err = strip("SELECT 1;\n\\echo it's\nSELECT 'x';\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\\echo") && err.contains("line 2"), "{err}");
        let out = strip("\\restrict a'b\nSELECT 'x';\n\\unrestrict a'b\n").unwrap();
        assert_eq!(out, "SELECT 'x';\n");
    }

    #[test]
    fn broken_sql_is_an_error_when_stripping() {
        assert!(strip("\\restrict K\nSELECT 'unterminated;\n").is_err());
    }

    // --- entries -------------------------------------------------------------------------

    #[test]
    fn splits_real_output() {
        let sql = strip(SAMPLE).unwrap();
        let entries = split(&sql);
        assert!(entries[0].header.is_none());
        assert!(entries[0].sql.contains("SET statement_timeout = 0;"));
        let kinds: Vec<(&str, &str)> = entries[1..]
            .iter()
            .map(|e| {
                let h = e.header.as_ref().unwrap();
                (h.kind.as_str(), h.name.as_str())
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("SCHEMA", "public"),
                ("TYPE", "mood"),
                ("FUNCTION", "f(integer)"),
                ("TABLE", "users"),
                ("COMMENT", "TABLE users"),
                ("FUNCTION", "g()"),
                ("SEQUENCE OWNED BY", "users_id_seq"),
                ("DEFAULT", "users id"),
            ]
        );
        let schema = entries[1].header.as_ref().unwrap();
        assert_eq!(schema.schema, None);
        assert_eq!(schema.owner, None);
        let users = &entries[4];
        assert_eq!(
            users.header.as_ref().unwrap().schema.as_deref(),
            Some("public")
        );
        assert!(
            users.sql.starts_with("--\n-- Name: users; Type: TABLE;"),
            "{}",
            users.sql
        );
        // pg_restore writes these SETs before the header of the entry they are meant for.
        assert!(
            entries[3]
                .sql
                .contains("SET default_table_access_method = heap;")
        );
        assert_eq!(users.label(), "TABLE public.users");
        assert!(entries.last().unwrap().sql.contains("dump complete"));
    }

    #[test]
    fn object_settings_are_found_as_written() {
        let sql = "COMMENT ON SCHEMA public IS 'default_tablespace';\n\n\nSET default_tablespace = \"Odd Space\";\n\nSET default_table_access_method = heap;\n\n";
        assert_eq!(
            object_settings(sql).unwrap(),
            vec![
                (
                    "default_tablespace".to_string(),
                    "SET default_tablespace = \"Odd Space\"".to_string()
                ),
                (
                    "default_table_access_method".to_string(),
                    "SET default_table_access_method = heap".to_string()
                ),
            ]
        );
        assert!(
            object_settings("CREATE INDEX i ON t (x);")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn settings_the_destination_lacks_are_dropped_from_the_preamble() {
        let preamble = "-- Dumped by pg_dump version 18.6\n\nSET statement_timeout = 0;\nSET transaction_timeout = 0;\nSET client_encoding = 'UTF8';\nSELECT pg_catalog.set_config('search_path', '', false);\nSET my.thing TO 'x';\n\n";
        let known = |n: &str| n != "transaction_timeout" && n != "my.thing";
        let (out, dropped) = drop_unknown_settings(preamble, known).unwrap();
        assert_eq!(dropped, vec!["transaction_timeout".to_string()]);
        assert_eq!(
            out,
            "-- Dumped by pg_dump version 18.6\n\nSET statement_timeout = 0;\nSET client_encoding = 'UTF8';\nSELECT pg_catalog.set_config('search_path', '', false);\nSET my.thing TO 'x';\n\n"
        );
        // A destination that has them all: the text comes back unchanged.
        let (same, none) = drop_unknown_settings(preamble, |_| true).unwrap();
        assert_eq!(same, preamble);
        assert!(none.is_empty());
    }

    #[test]
    fn header_parsed_from_the_right() {
        let h = parse_header("semi; Type: x; Type: TABLE; Schema: public; Owner: bob").unwrap();
        assert_eq!(h.name, "semi; Type: x");
        assert_eq!(h.kind, "TABLE");
        assert_eq!(h.schema.as_deref(), Some("public"));
        assert_eq!(h.owner.as_deref(), Some("bob"));
        let h =
            parse_header("tst; Type: TABLE; Schema: public; Owner: -; Tablespace: ts1").unwrap();
        assert_eq!((h.name.as_str(), h.owner), ("tst", None));
        let h = parse_header("a; b; Type: FK CONSTRAINT; Schema: my; Schema: x; Owner: -").unwrap();
        assert_eq!(h.name, "a; b");
        assert_eq!(h.kind, "FK CONSTRAINT");
        assert_eq!(h.schema.as_deref(), Some("my; Schema: x"));
        assert!(parse_header("users; Type: TABLE").is_none());
    }

    #[test]
    fn splits_data_verbose_and_tablespace_headers() {
        let sql = "SET x = 1;\n\
                   \n--\n-- TOC entry 215 (class 1259 OID 16390)\n-- Dependencies: 4 5\n\
                   -- Name: t; Type: TABLE; Schema: public; Owner: alice; Tablespace: ts1\n--\n\n\
                   CREATE TABLE public.t (id int);\n\
                   \n--\n-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: -\n--\n\n\
                   SELECT 1;\n";
        let entries = split(sql);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].sql, "SET x = 1;\n\n");
        assert!(entries[1].sql.starts_with("--\n-- TOC entry 215"));
        let h = entries[1].header.as_ref().unwrap();
        assert_eq!((h.name.as_str(), h.owner.as_deref()), ("t", Some("alice")));
        assert_eq!(entries[2].header.as_ref().unwrap().kind, "TABLE DATA");
    }

    #[test]
    fn header_lookalikes_are_not_headers() {
        let sql = "--\n-- Name: f(); Type: FUNCTION; Schema: public; Owner: -\n--\n\n\
                   CREATE FUNCTION public.f() RETURNS text LANGUAGE sql AS $$\n\
                   --\n-- Name: fake; Type: TABLE; Schema: public; Owner: -\n--\nSELECT 'x' $$;\n\
                   SELECT '\n--\n-- Name: fake2; Type: TABLE; Schema: public; Owner: -\n--\n';\n\
                   SELECT 1; -- Name: fake3; Type: TABLE; Schema: public; Owner: -\n\
                   /*\n--\n-- Name: fake4; Type: TABLE; Schema: public; Owner: -\n*/\n";
        let entries = split(sql);
        assert_eq!(entries.len(), 1, "{entries:#?}");
        assert_eq!(entries[0].sql, sql);
    }

    #[test]
    fn split_edge_cases() {
        assert!(split("").is_empty());
        let only = split("SELECT 1;\n");
        assert_eq!(only.len(), 1);
        assert!(only[0].header.is_none());
        let first = split(
            "--\n-- Name: t; Type: TABLE; Schema: public; Owner: -\n--\nCREATE TABLE public.t ();\n",
        );
        assert_eq!(first.len(), 1);
        assert!(first[0].header.is_some());
        let crlf = "SET a = 1;\r\n--\r\n-- Name: t; Type: TABLE; Schema: public; Owner: -\r\n--\r\nSELECT 1;\r\n";
        let entries = split(crlf);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].header.as_ref().unwrap().owner, None);
        assert!(entries[1].sql.starts_with("--\r\n-- Name: t;"));
    }

    #[test]
    fn malformed_header_is_an_error() {
        let err = split_entries("SELECT 1;\n-- Name: what is this\nSELECT 2;\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("malformed") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn scanner_failure_names_the_entry() {
        let sql = "SET a = 1;\n\
                   --\n-- Name: t; Type: TABLE; Schema: public; Owner: -\n--\n\nCREATE TABLE public.t ();\n\
                   --\n-- Name: f(); Type: FUNCTION; Schema: public; Owner: -\n--\n\n\
                   CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS $$ SELECT 1;\n\
                   --\n-- Name: u; Type: TABLE; Schema: public; Owner: -\n--\n\nCREATE TABLE public.u ();\n";
        for err in [
            split_entries(sql).unwrap_err(),
            split_entries_chunked(sql, 1).unwrap_err(),
            remap(sql, "public", "shadow", &names(&["t"])).unwrap_err(),
        ] {
            let err = err.to_string();
            assert!(
                err.contains("Name: f(); Type: FUNCTION") && err.contains("line 8"),
                "{err}"
            );
            assert!(err.contains("dollar"), "{err}");
        }
    }

    // --- remap: qualified references ----------------------------------------------------

    #[test]
    fn remaps_real_output() {
        let sql = strip(SAMPLE).unwrap();
        let out = rm(&sql, &["mood", "f", "users", "g", "users_id_seq"]);
        for expected in [
            "CREATE SCHEMA public;",
            "CREATE TYPE shadow.mood AS ENUM",
            "CREATE FUNCTION shadow.f(x integer)",
            "AS $$ BEGIN RETURN (SELECT count(*) FROM public.users); END $$;",
            "CREATE TABLE shadow.users (",
            "    m shadow.mood,\n    ms shadow.mood[],\n    g public.geometry(Point,4326),",
            "u uuid DEFAULT public.uuid_generate_v4()",
            "COMMENT ON TABLE shadow.users IS 'see public.users docs';",
            "CREATE FUNCTION shadow.g() RETURNS bigint",
            "    FROM shadow.users;\nEND;",
            "ALTER SEQUENCE shadow.users_id_seq OWNED BY shadow.users.id;",
            "ALTER TABLE ONLY shadow.users ALTER COLUMN id SET DEFAULT nextval('shadow.users_id_seq'::regclass);",
            "SELECT pg_catalog.set_config('search_path', '', false);",
            "-- Name: users; Type: TABLE; Schema: public; Owner: -",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in\n{out}");
        }
        // Nothing else changed: undo the rewrites and compare.
        let back = out.replace("shadow.", "public.");
        assert_eq!(back, sql);
    }

    #[test]
    fn only_defined_names_are_remapped() {
        let sql = "CREATE TABLE public.t (g public.geometry, u uuid DEFAULT public.uuid_generate_v4(), \
                   b public.box2d, x public.t2);";
        assert_eq!(
            rm(sql, &["t", "t2"]),
            "CREATE TABLE shadow.t (g public.geometry, u uuid DEFAULT public.uuid_generate_v4(), \
             b public.box2d, x shadow.t2);"
        );
    }

    #[test]
    fn qualifier_spellings() {
        let d = &["users"];
        assert_eq!(
            rm("SELECT * FROM \"public\".users", d),
            "SELECT * FROM shadow.users"
        );
        assert_eq!(
            rm("SELECT * FROM PUBLIC.users", d),
            "SELECT * FROM shadow.users"
        );
        assert_eq!(
            rm("SELECT * FROM Public.\"users\"", d),
            "SELECT * FROM shadow.\"users\""
        );
        assert_eq!(
            rm("SELECT * FROM U&\"p\\0075blic\".users", d),
            "SELECT * FROM shadow.users"
        );
        assert_eq!(
            rm("SELECT * FROM U&\"p!0075blic\" UESCAPE '!' .users", d),
            "SELECT * FROM shadow .users"
        );
        // Not the schema: a different quoted name, or a name that is itself qualified.
        assert_eq!(
            rm("SELECT * FROM \"PUBLIC\".users", d),
            "SELECT * FROM \"PUBLIC\".users"
        );
        assert_eq!(
            rm("SELECT * FROM \"public \".users", d),
            "SELECT * FROM \"public \".users"
        );
        assert_eq!(
            rm("SELECT * FROM mydb.public.users", d),
            "SELECT * FROM mydb.public.users"
        );
        assert_eq!(
            rm("SELECT * FROM publicx.users", d),
            "SELECT * FROM publicx.users"
        );
    }

    #[test]
    fn object_spellings_are_kept() {
        let d = &["users", "Mixed", "it's \"q\""];
        assert_eq!(
            rm("SELECT * FROM public.USERS", d),
            "SELECT * FROM shadow.USERS"
        );
        assert_eq!(
            rm("SELECT * FROM public.\"Mixed\"", d),
            "SELECT * FROM shadow.\"Mixed\""
        );
        assert_eq!(
            rm("SELECT * FROM public.Mixed", d),
            "SELECT * FROM public.Mixed"
        );
        assert_eq!(
            rm("SELECT * FROM public.\"users\"", d),
            "SELECT * FROM shadow.\"users\""
        );
        assert_eq!(
            rm("SELECT * FROM public.\"Users\"", d),
            "SELECT * FROM public.\"Users\""
        );
        assert_eq!(
            rm("SELECT * FROM public.U&\"M\\0069xed\"", d),
            "SELECT * FROM shadow.U&\"M\\0069xed\""
        );
        assert_eq!(
            rm("SELECT * FROM public.\"it's \"\"q\"\"\"", d),
            "SELECT * FROM shadow.\"it's \"\"q\"\"\""
        );
    }

    #[test]
    fn unicode_names() {
        let d = &["ünïcödé", "Ärger", "日本"];
        assert_eq!(
            rm("CREATE TABLE public.\"ünïcödé\" ();", d),
            "CREATE TABLE shadow.\"ünïcödé\" ();"
        );
        assert_eq!(
            rm("CREATE TABLE public.ünïcödé ();", d),
            "CREATE TABLE shadow.ünïcödé ();"
        );
        // Only ASCII letters fold in UTF-8 databases: ÄRGER is Ärger, äRGER is not.
        assert_eq!(rm("SELECT public.Ärger()", d), "SELECT shadow.Ärger()");
        assert_eq!(rm("SELECT public.ÄRGER()", d), "SELECT shadow.ÄRGER()");
        assert_eq!(rm("SELECT public.äRGER()", d), "SELECT public.äRGER()");
        assert_eq!(rm("SELECT public.\"日本\"", d), "SELECT shadow.\"日本\"");
        assert_eq!(
            rm("SELECT public.U&\"\\65E5\\+00672C\"", d),
            "SELECT shadow.U&\"\\65E5\\+00672C\""
        );
        assert_eq!(
            rm("SELECT public.U&\"\\D83D\\DE00\"", &["😀"]),
            "SELECT shadow.U&\"\\D83D\\DE00\""
        );
    }

    #[test]
    fn keyword_names() {
        let d = &["action", "user", "select", "order"];
        assert_eq!(
            rm("CREATE TABLE public.action ();", d),
            "CREATE TABLE shadow.action ();"
        );
        assert_eq!(
            rm("CREATE TABLE public.\"user\" ();", d),
            "CREATE TABLE shadow.\"user\" ();"
        );
        assert_eq!(
            rm("SELECT * FROM public.select", d),
            "SELECT * FROM shadow.select"
        );
        assert_eq!(
            rm("SELECT * FROM public.\"order\" o", d),
            "SELECT * FROM shadow.\"order\" o"
        );
        // A keyword that is not defined stays.
        assert_eq!(
            rm("SELECT * FROM public.table", d),
            "SELECT * FROM public.table"
        );
    }

    #[test]
    fn long_names_are_truncated_like_postgres() {
        let long = "a".repeat(70);
        let stored = "a".repeat(63);
        let sql = format!("SELECT * FROM public.{long}");
        assert_eq!(rm(&sql, &[&stored]), format!("SELECT * FROM shadow.{long}"));
    }

    #[test]
    fn ddl_forms() {
        let d = &[
            "mood",
            "parent",
            "child",
            "p1",
            "t",
            "trg",
            "users",
            "users_id_seq",
            "idx",
            "idx_p1",
            "s",
            "coll",
            "cfg",
            "dict",
        ];
        let cases = [
            (
                "CREATE TABLE public.t (a public.mood[], b public.mood[][] NOT NULL)",
                "CREATE TABLE shadow.t (a shadow.mood[], b shadow.mood[][] NOT NULL)",
            ),
            (
                "CREATE TABLE public.child (x integer)\nINHERITS (public.parent);",
                "CREATE TABLE shadow.child (x integer)\nINHERITS (shadow.parent);",
            ),
            (
                "ALTER TABLE ONLY public.parent ATTACH PARTITION public.p1 FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');",
                "ALTER TABLE ONLY shadow.parent ATTACH PARTITION shadow.p1 FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');",
            ),
            (
                "CREATE TABLE public.p1 PARTITION OF public.parent FOR VALUES IN (1);",
                "CREATE TABLE shadow.p1 PARTITION OF shadow.parent FOR VALUES IN (1);",
            ),
            (
                "CREATE TRIGGER t BEFORE INSERT ON public.users FOR EACH ROW EXECUTE FUNCTION public.trg();",
                "CREATE TRIGGER t BEFORE INSERT ON shadow.users FOR EACH ROW EXECUTE FUNCTION shadow.trg();",
            ),
            (
                "CREATE POLICY pol ON public.users USING ((m = 'ok'::public.mood));",
                "CREATE POLICY pol ON shadow.users USING ((m = 'ok'::shadow.mood));",
            ),
            (
                "ALTER SEQUENCE public.users_id_seq OWNED BY public.users.id;",
                "ALTER SEQUENCE shadow.users_id_seq OWNED BY shadow.users.id;",
            ),
            (
                "COMMENT ON COLUMN public.users.id IS 'public.users.id';",
                "COMMENT ON COLUMN shadow.users.id IS 'public.users.id';",
            ),
            (
                "ALTER INDEX public.idx ATTACH PARTITION public.idx_p1;",
                "ALTER INDEX shadow.idx ATTACH PARTITION shadow.idx_p1;",
            ),
            (
                "CREATE INDEX idx ON public.users USING btree (m) WHERE (m <> 'sad'::public.mood);",
                "CREATE INDEX idx ON shadow.users USING btree (m) WHERE (m <> 'sad'::shadow.mood);",
            ),
            (
                "CREATE STATISTICS public.s ON id, m FROM public.users;",
                "CREATE STATISTICS shadow.s ON id, m FROM shadow.users;",
            ),
            (
                "CREATE TABLE public.t (x text COLLATE public.coll);",
                "CREATE TABLE shadow.t (x text COLLATE shadow.coll);",
            ),
            (
                "ALTER TEXT SEARCH CONFIGURATION public.cfg\n    ADD MAPPING FOR asciiword WITH public.dict;",
                "ALTER TEXT SEARCH CONFIGURATION shadow.cfg\n    ADD MAPPING FOR asciiword WITH shadow.dict;",
            ),
            (
                "CREATE VIEW public.v AS\n SELECT users.id\n   FROM public.users;",
                "CREATE VIEW public.v AS\n SELECT users.id\n   FROM shadow.users;",
            ),
            (
                "SELECT x::public.mood, CAST(y AS public.mood), public.mood 'ok'",
                "SELECT x::shadow.mood, CAST(y AS shadow.mood), shadow.mood 'ok'",
            ),
        ];
        for (sql, expected) in cases {
            assert_eq!(rm(sql, d), expected, "for {sql}");
        }
    }

    #[test]
    fn sql_standard_bodies_are_rewritten_dollar_bodies_are_not() {
        let d = &["users", "f", "g", "h", "mood"];
        let sql = "CREATE FUNCTION public.g() RETURNS bigint LANGUAGE sql BEGIN ATOMIC SELECT count(*) FROM public.users; END;\n\
                   CREATE FUNCTION public.h(a public.mood) RETURNS integer LANGUAGE sql RETURN (SELECT max(u.id) FROM public.users u WHERE (u.m = h.a));\n\
                   CREATE FUNCTION public.f(x integer) RETURNS integer LANGUAGE plpgsql AS $$ BEGIN RETURN (SELECT count(*) FROM public.users); END $$;\n\
                   CREATE FUNCTION public.f2() RETURNS trigger LANGUAGE plpgsql AS $fn$ BEGIN NEW.id := nextval('public.users_id_seq'::regclass); RETURN NEW; END $fn$;\n";
        let out = rm(sql, d);
        assert!(
            out.contains("BEGIN ATOMIC SELECT count(*) FROM shadow.users; END;"),
            "{out}"
        );
        assert!(out.contains("shadow.h(a shadow.mood) RETURNS integer LANGUAGE sql RETURN (SELECT max(u.id) FROM shadow.users u"), "{out}");
        assert!(
            out.contains("AS $$ BEGIN RETURN (SELECT count(*) FROM public.users); END $$;"),
            "{out}"
        );
        assert!(out.contains("$fn$ BEGIN NEW.id := nextval('public.users_id_seq'::regclass); RETURN NEW; END $fn$"), "{out}");
        assert!(
            out.contains("CREATE FUNCTION public.f2()"),
            "f2 is not defined: {out}"
        );
    }

    #[test]
    fn comments_and_strings_are_left_alone_and_layout_is_kept() {
        let d = &["users"];
        let sql = "-- public.users\nSELECT /* public.users */ 'public.users', E'public.users', $$public.users$$\n  FROM   PUBLIC  .  users  -- x\n WHERE public /* between */ . users.id = 1;";
        assert_eq!(
            rm(sql, d),
            "-- public.users\nSELECT /* public.users */ 'public.users', E'public.users', $$public.users$$\n  FROM   shadow  .  users  -- x\n WHERE shadow /* between */ . users.id = 1;"
        );
    }

    #[test]
    fn operators() {
        let d = &["===", "<<<", "<", "myops", "eq3"];
        let cases = [
            (
                "CREATE OPERATOR public.=== (\n    FUNCTION = public.eq3,\n    COMMUTATOR = OPERATOR(public.===)\n);",
                "CREATE OPERATOR shadow.=== (\n    FUNCTION = shadow.eq3,\n    COMMUTATOR = OPERATOR(shadow.===)\n);",
            ),
            (
                "SELECT (1 OPERATOR(public.===) 2), (g OPERATOR(public.&&) g)",
                "SELECT (1 OPERATOR(shadow.===) 2), (g OPERATOR(public.&&) g)",
            ),
            (
                "    OPERATOR 1 public.<<<(integer,integer) ,\n    OPERATOR 2 public.<(integer,integer) ,",
                "    OPERATOR 1 shadow.<<<(integer,integer) ,\n    OPERATOR 2 shadow.<(integer,integer) ,",
            ),
            (
                "EXCLUDE USING btree (r public.myops WITH OPERATOR(public.===))",
                "EXCLUDE USING btree (r shadow.myops WITH OPERATOR(shadow.===))",
            ),
            (
                "COMMENT ON OPERATOR public.=== (integer, integer) IS 'x';",
                "COMMENT ON OPERATOR shadow.=== (integer, integer) IS 'x';",
            ),
            (
                "SELECT 1 OPERATOR(public.<=) 2, 1 OPERATOR(public.+) 2",
                "SELECT 1 OPERATOR(public.<=) 2, 1 OPERATOR(public.+) 2",
            ),
        ];
        for (sql, expected) in cases {
            assert_eq!(rm(sql, d), expected, "for {sql}");
        }
        assert_eq!(
            rm(
                "SELECT 1 OPERATOR(public.<>) 2, 3 OPERATOR(public.!=) 4",
                &["<>"]
            ),
            "SELECT 1 OPERATOR(shadow.<>) 2, 3 OPERATOR(shadow.!=) 4"
        );
    }

    #[test]
    fn a_table_called_public() {
        let d = &["public", "users", "v2"];
        let sql = "CREATE TABLE public.public (id integer, users integer);\n\
                   COMMENT ON COLUMN public.public.users IS 'x';\n";
        assert_eq!(
            rm(sql, d),
            "CREATE TABLE shadow.public (id integer, users integer);\n\
             COMMENT ON COLUMN shadow.public.users IS 'x';\n"
        );
        // pg_dump writes columns of a table called public as public.<column>: not a schema.
        let view = "CREATE VIEW public.v2 AS\n SELECT public.users, public.*, u.id\n   FROM public.public, public.users u\n  WHERE (public.id = 1);";
        assert_eq!(
            rm(view, d),
            "CREATE VIEW shadow.v2 AS\n SELECT public.users, public.*, u.id\n   FROM shadow.public, shadow.users u\n  WHERE (public.id = 1);"
        );
        // An alias called public.
        let alias = "CREATE VIEW public.v2 AS SELECT public.users FROM public.users public;";
        assert_eq!(
            rm(alias, d),
            "CREATE VIEW shadow.v2 AS SELECT public.users FROM shadow.users public;"
        );
        // Three parts are schema.table.column.
        let three = "CREATE VIEW public.v2 AS SELECT public.users.id FROM public.users;";
        assert_eq!(
            rm(three, d),
            "CREATE VIEW shadow.v2 AS SELECT shadow.users.id FROM shadow.users;"
        );
        // Other entries are not affected by one that uses public as a name.
        let two = "--\n-- Name: v2; Type: VIEW; Schema: public; Owner: -\n--\nCREATE VIEW public.v2 AS SELECT public.users FROM public.public;\n\
                   --\n-- Name: g(); Type: FUNCTION; Schema: public; Owner: -\n--\nCREATE FUNCTION public.g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT public.users(); END;\n";
        assert_eq!(
            rm(two, d),
            "--\n-- Name: v2; Type: VIEW; Schema: public; Owner: -\n--\nCREATE VIEW shadow.v2 AS SELECT public.users FROM shadow.public;\n\
             --\n-- Name: g(); Type: FUNCTION; Schema: public; Owner: -\n--\nCREATE FUNCTION public.g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT shadow.users(); END;\n"
        );
    }

    #[test]
    fn unparsable_entry_using_public_as_a_name_is_still_remapped() {
        // The parser (used to find column references) rejects this; the scanner does not.
        let sql = "CREATE TABLE public.public (id integer) WITH SOMETHING public.users ODD;";
        assert_eq!(
            rm(sql, &["public", "users"]),
            "CREATE TABLE shadow.public (id integer) WITH SOMETHING shadow.users ODD;"
        );
    }

    #[test]
    fn shadow_already_present_and_idempotence() {
        let d = &["users", "mood"];
        let sql = "CREATE TABLE public.users (m public.mood, s shadow.mood);\nCOMMENT ON TABLE public.users IS 'moved to shadow';\nSELECT shadow.users.id FROM shadow.users;";
        let once = rm(sql, d);
        assert_eq!(
            once,
            "CREATE TABLE shadow.users (m shadow.mood, s shadow.mood);\nCOMMENT ON TABLE shadow.users IS 'moved to shadow';\nSELECT shadow.users.id FROM shadow.users;"
        );
        assert_eq!(rm(&once, d), once, "remapping twice changes nothing more");
        // from == to is a no-op.
        assert_eq!(remap(sql, "public", "public", &names(d)).unwrap(), sql);
        // And back again.
        let back = remap(&once, "shadow", "public", &names(d)).unwrap();
        assert_eq!(
            back,
            sql.replace("s shadow.mood", "s public.mood").replace(
                "SELECT shadow.users.id FROM shadow.users",
                "SELECT public.users.id FROM public.users"
            )
        );
    }

    #[test]
    fn target_schema_is_quoted_only_when_needed() {
        let d = names(&["users"]);
        let sql = "SELECT * FROM public.users";
        for (target, rendered) in [
            ("shadow", "shadow"),
            ("shadow_2", "shadow_2"),
            ("Shadow", "\"Shadow\""),
            ("my schema", "\"my schema\""),
            ("user", "\"user\""),
            ("a\"b", "\"a\"\"b\""),
            ("ünï", "\"ünï\""),
        ] {
            assert_eq!(
                remap(sql, "public", target, &d).unwrap(),
                format!("SELECT * FROM {rendered}.users"),
                "{target}"
            );
        }
        let sql = "SELECT * FROM \"My Schema\".users";
        assert_eq!(
            remap(sql, "My Schema", "shadow", &d).unwrap(),
            "SELECT * FROM shadow.users"
        );
        assert!(remap(sql, "public", "", &d).is_err());
        assert!(remap(sql, "", "shadow", &d).is_err());
        assert!(remap(sql, "public", &"x".repeat(64), &d).is_err());
    }

    // --- remap: reg* literals -------------------------------------------------------------

    #[test]
    fn reg_literals() {
        let d = &[
            "users_id_seq",
            "Mixed",
            "Odd Seq",
            "it's",
            "mood",
            "h",
            "===",
            "cfg",
            "users",
        ];
        let cases = [
            (
                "nextval('public.users_id_seq'::regclass)",
                "nextval('shadow.users_id_seq'::regclass)",
            ),
            (
                "nextval('public.\"Odd Seq\"'::regclass)",
                "nextval('shadow.\"Odd Seq\"'::regclass)",
            ),
            (
                "'public.\"Mixed\"'::regclass",
                "'shadow.\"Mixed\"'::regclass",
            ),
            (
                "'public.\"it''s\"'::regclass",
                "'shadow.\"it''s\"'::regclass",
            ),
            (
                "'\"public\".users'::pg_catalog.regclass",
                "'shadow.users'::pg_catalog.regclass",
            ),
            (
                "'public.mood'::regtype, 'public.mood[]'::regtype",
                "'shadow.mood'::regtype, 'shadow.mood[]'::regtype",
            ),
            (
                "'public.h(public.mood)'::regprocedure",
                "'shadow.h(shadow.mood)'::regprocedure",
            ),
            ("'public.h'::regproc", "'shadow.h'::regproc"),
            (
                "'public.===(integer,integer)'::regoperator, 'public.==='::regoper",
                "'shadow.===(integer,integer)'::regoperator, 'shadow.==='::regoper",
            ),
            (
                "to_tsvector('public.cfg'::regconfig, 'x'::text)",
                "to_tsvector('shadow.cfg'::regconfig, 'x'::text)",
            ),
            ("'public.users' :: REGCLASS", "'shadow.users' :: REGCLASS"),
            ("E'public.users'::regclass", "'shadow.users'::regclass"),
            ("'public.'\n  'users'::regclass", "'shadow.users'::regclass"),
            // Left alone.
            ("'public'::regnamespace", "'public'::regnamespace"),
            (
                "'public.uuid_generate_v4'::regproc",
                "'public.uuid_generate_v4'::regproc",
            ),
            (
                "'public.users'::text, to_regclass('public.users'), 'public.users'",
                "'public.users'::text, to_regclass('public.users'), 'public.users'",
            ),
            ("$$public.users$$::regclass", "$$public.users$$::regclass"),
            (
                "E'public.\\x75sers'::regclass",
                "E'public.\\x75sers'::regclass",
            ),
            ("'public.users'::regrole", "'public.users'::regrole"),
            ("'users'::regclass", "'users'::regclass"),
        ];
        for (sql, expected) in cases {
            assert_eq!(rm(sql, d), expected, "for {sql}");
        }
    }

    #[test]
    fn reg_array_literals() {
        let d = &["users", "Mixed"];
        let cases = [
            (
                "'{public.users}'::regclass[]",
                "'{\"shadow.users\"}'::regclass[]",
            ),
            (
                "'{public.users, pg_class ,NULL}'::regclass[]",
                "'{\"shadow.users\", pg_class ,NULL}'::regclass[]",
            ),
            (
                "'{\"public.\\\"Mixed\\\"\",public.other}'::regclass[]",
                "'{\"shadow.\\\"Mixed\\\"\",public.other}'::regclass[]",
            ),
            (
                "'{{public.users},{public.Mixed}}'::pg_catalog.regclass[]",
                "'{{\"shadow.users\"},{public.Mixed}}'::pg_catalog.regclass[]",
            ),
            ("'{}'::regclass[]", "'{}'::regclass[]"),
            (
                "'[1:1]={public.users}'::regclass[]",
                "'[1:1]={public.users}'::regclass[]",
            ),
        ];
        for (sql, expected) in cases {
            assert_eq!(rm(sql, d), expected, "for {sql}");
        }
    }

    // --- defined names ---------------------------------------------------------------------

    #[test]
    fn defined_names_from_entries() {
        let sql = "--\n-- Name: users; Type: TABLE; Schema: public; Owner: -\n--\nx;\n\
                   --\n-- Name: my table; Type: TABLE; Schema: public; Owner: -\n--\nx;\n\
                   --\n-- Name: f(integer, public.\"a(b\"); Type: FUNCTION; Schema: public; Owner: -\n--\nx;\n\
                   --\n-- Name: agg(integer); Type: AGGREGATE; Schema: public; Owner: -\n--\nx;\n\
                   --\n-- Name: ===; Type: OPERATOR; Schema: public; Owner: -\n--\nx;\n\
                   --\n-- Name: myops; Type: OPERATOR CLASS; Schema: public; Owner: -\n--\nx;\n\
                   --\n-- Name: users users_pkey; Type: CONSTRAINT; Schema: public; Owner: -\n--\nx;\n\
                   --\n-- Name: my table my table_pkey; Type: CONSTRAINT; Schema: public; Owner: -\n--\nx;\n\
                   --\n-- Name: users users_fk; Type: FK CONSTRAINT; Schema: public; Owner: -\n--\nx;\n\
                   --\n-- Name: TABLE users; Type: COMMENT; Schema: public; Owner: -\n--\nx;\n\
                   --\n-- Name: other; Type: TABLE; Schema: other; Owner: -\n--\nx;\n\
                   --\n-- Name: public; Type: SCHEMA; Schema: -; Owner: -\n--\nx;\n\
                   --\n-- Name: r; Type: TYPE; Schema: public; Owner: -\n--\n\
                   CREATE TYPE public.r AS RANGE (\n    subtype = integer,\n    multirange_type_name = public.\"R multi\"\n);\n\
                   --\n-- Name: r2; Type: TYPE; Schema: public; Owner: -\n--\n\
                   CREATE TYPE public.r2 AS RANGE (subtype = integer, MULTIRANGE_TYPE_NAME = r2_m);\n";
        let d = DefinedNames::from_entries(&split(sql), "public");
        let mut got: Vec<&str> = d.iter().collect();
        got.sort_unstable();
        assert_eq!(
            got,
            [
                "===",
                "R multi",
                "agg",
                "f",
                "my table",
                "my table_pkey",
                "myops",
                "r",
                "r2",
                "r2_m",
                "users",
                "users_pkey"
            ]
        );
        assert_eq!(strip_arguments("f()"), "f");
        assert_eq!(strip_arguments("g(x) (\"a\"\"(\" integer)"), "g(x) ");
        assert_eq!(strip_arguments("plain"), "plain");
    }

    #[test]
    fn defined_names_api() {
        let mut d: DefinedNames = ["a", "B"].into_iter().collect();
        assert!(d.contains("a") && d.contains("B") && !d.contains("b"));
        assert!(d.insert("c"));
        assert!(!d.insert(String::from("c")));
        d.extend(["d"]);
        assert_eq!(d.len(), 4);
        assert!(!d.is_empty() && DefinedNames::new().is_empty());
    }

    // --- scanning in pieces ---------------------------------------------------------------

    #[test]
    fn cut_points_follow_header_blocks() {
        let sql = "A\n--\n-- Name: a; Type: T; Schema: -; Owner: -\n--\n\n--\n-- TOC entry 1\n-- Name: b; Type: T; Schema: -; Owner: -\n--\n--\nx\n-- Name: c; Type: T; Schema: -; Owner: -\n";
        assert_eq!(cut_points(sql), [2, 50]);
    }

    #[test]
    fn large_input_in_pieces() {
        // ~2 MB with a dollar body containing fake header blocks straddling piece borders.
        let mut sql = String::from("SET a = 1;\n");
        let mut expected = String::from("SET a = 1;\n");
        for i in 0..12_000 {
            let entry = format!(
                "\n--\n-- Name: t{i}; Type: TABLE; Schema: public; Owner: -\n--\n\n\
                 CREATE TABLE public.t{i} (id integer DEFAULT nextval('public.t{i}_seq'::regclass), m public.mood);\n"
            );
            expected.push_str(
                &entry
                    .replace("TABLE public.", "TABLE shadow.")
                    .replace("'public.", "'shadow.")
                    .replace(" public.mood", " shadow.mood"),
            );
            sql.push_str(&entry);
            if i % 3000 == 0 {
                let body = format!(
                    "\nCREATE FUNCTION public.f{i}() RETURNS text LANGUAGE sql AS $$\n{}SELECT 'public.t1'\n$$;\n",
                    "--\n-- Name: fake; Type: TABLE; Schema: public; Owner: -\n--\n".repeat(20_000)
                );
                sql.push_str(&body);
                expected.push_str(&body);
            }
        }
        let defined: DefinedNames = (0..12_000)
            .flat_map(|i| [format!("t{i}"), format!("t{i}_seq")])
            .chain(["mood".to_string()])
            .collect();
        assert!(sql.len() > 2_000_000, "{}", sql.len());
        let out = remap(&sql, "public", "shadow", &defined).unwrap();
        assert_eq!(out, expected);
        let entries = split_entries(&sql).unwrap();
        assert_eq!(entries.len(), 12_001);
        assert_eq!(
            entries.iter().map(|e| e.sql.as_str()).collect::<String>(),
            sql
        );
        assert_eq!(strip_meta_commands(&sql).unwrap(), sql);
    }

    fn prepare_time(sql: &str) -> Option<String> {
        let (public, app) = (
            names(&["f", "norm_impl", "t"]),
            names(&["norm_impl", "norm"]),
        );
        let maps = [
            Mapping {
                from: "public",
                to: "shadow",
                defined: &public,
            },
            Mapping {
                from: "app",
                to: "shadow_app",
                defined: &app,
            },
        ];
        // `f` takes a name first; `norm_impl` takes text; `cfgdom` is a
        // domain over regconfig.
        let sigs = NameSignatures::from_sql(
            [
                "CREATE DOMAIN shadow.cfgdom AS regconfig;",
                "CREATE FUNCTION shadow.f(r regclass, n text) RETURNS int LANGUAGE sql AS 'SELECT 1';",
                "CREATE FUNCTION shadow.norm_impl(t text, c shadow.cfgdom) RETURNS text LANGUAGE sql AS 'SELECT t';",
            ]
            .into_iter(),
        );
        prepare_time_function(sql, &maps, &sigs).unwrap()
    }

    #[test]
    fn a_bodys_relations_are_read_with_the_scanner() {
        let body = r#"
DECLARE n int; r record; row audit.changes%ROWTYPE;
BEGIN
  -- FROM commented_out
  n := (SELECT count(*) FROM Audit."Seen" s WHERE s.id = audit.next_id(1));
  INSERT INTO audit.changes(tbl, op) VALUES (TG_TABLE_NAME, 'FROM quoted');
  INSERT INTO log (op) VALUES ('x');
  UPDATE changes SET op = 'x' FROM ONLY other o, third WHERE o.x = n;
  FOR r IN SELECT * FROM generate_series(1, 2) LOOP PERFORM 1 FROM loopt; END LOOP;
  EXECUTE 'DELETE FROM dyn';
  TRUNCATE trunc; ANALYZE anal;
  PERFORM ROW(1)::casted, pg_typeof(v.amount);
  DECLARE t2 rowt%ROWTYPE; a coltab.amount%TYPE;
  RETURN NEW;
END"#;
        let named = relations_named_in_body(body);
        let has = |s: Option<&str>, n: &str| named.iter().any(|(a, b)| a.as_deref() == s && b == n);
        for (s, n) in [
            (Some("audit"), "changes"),
            (Some("audit"), "Seen"),
            (None, "changes"),
            (None, "other"),
            (None, "third"),
            (None, "log"),
            (None, "trunc"),
            (None, "anal"),
            (None, "casted"),
            (None, "rowt"),
            (None, "coltab"),
            (None, "loopt"),
        ] {
            assert!(has(s, n), "{s:?}.{n} in {named:?}");
        }
        // Calls, comments, strings and dynamic SQL are not relations (an
        // alias's column, `s.id`, is named: only names of tables count).
        for n in [
            "next_id",
            "commented_out",
            "quoted",
            "dyn",
            "generate_series",
        ] {
            assert!(!named.iter().any(|(_, b)| b == n), "{n} in {named:?}");
        }
        assert!(relations_named_in_body("not $$ scannable").is_empty());
    }

    #[test]
    fn a_functions_body_names_the_shadow_until_the_swap() {
        let sql = "--\n-- Name: norm(text); Type: FUNCTION; Schema: app; Owner: -\n--\n\n\
                   CREATE FUNCTION shadow_app.norm(t text) RETURNS text\n    LANGUAGE sql IMMUTABLE\n    \
                   AS $_$ SELECT app.norm_impl(t) || 'see app.norm_impl' || public.f() || public.g() $_$;\n\n\n";
        let out = prepare_time(sql).expect("changed");
        assert!(
            out.starts_with("CREATE FUNCTION shadow_app.norm(t text)"),
            "{out}"
        );
        // Defined names are remapped, strings and other names are not.
        assert!(
            out.contains(
                "SELECT shadow_app.norm_impl(t) || 'see app.norm_impl' || shadow.f() || public.g()"
            ),
            "{out}"
        );
        // The swap puts the definition back as written, in place.
        let back = restore_function(sql).unwrap();
        assert_eq!(
            back,
            "SET LOCAL check_function_bodies = off; CREATE OR REPLACE FUNCTION shadow_app.norm(t text) RETURNS text\n    \
             LANGUAGE sql IMMUTABLE\n    AS $_$ SELECT app.norm_impl(t) || 'see app.norm_impl' || public.f() || public.g() $_$;"
        );
        // Both parse; the restore is a replacement.
        assert!(pg_query::parse(&out, 0).is_ok() && pg_query::parse(&back, 0).is_ok());
    }

    #[test]
    fn a_functions_search_path_puts_each_shadow_first() {
        let sql = "CREATE FUNCTION shadow_app.ok(t text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE \
                   SET search_path TO 'app', 'public', 'pg_temp' AS $$ BEGIN RETURN norm_impl(t) IS NOT NULL; END $$;";
        // A constant that is only a name the dump defines (a regconfig by the
        // called function's signature) names the shadow's object too; one
        // that says more, or names something else, stays.
        let tsv = "CREATE FUNCTION shadow_app.tsv(t text) RETURNS tsvector LANGUAGE sql IMMUTABLE \
                   AS $$ SELECT to_tsvector('app.norm', t) || to_tsvector('app.other', t) \
                   || to_tsvector('see app.norm', t) || to_tsvector('\"app\".norm'::regconfig, t) $$;";
        let out = prepare_time(tsv).expect("changed");
        assert!(
            out.contains("to_tsvector('shadow_app.norm', t) || to_tsvector('app.other', t) || to_tsvector('see app.norm', t) || to_tsvector('shadow_app.norm'::regconfig, t)"),
            "{out}"
        );
        // A constant compared, listed or returned is data (an audit trail's
        // table names): it stays as written, also inside a call's other
        // parentheses or an array.
        let data = "CREATE FUNCTION shadow.table_for(kind text) RETURNS text LANGUAGE plpgsql IMMUTABLE \
                    AS $$ BEGIN IF kind IN ('public.t', 'x') OR kind = 'public.t' \
                    OR kind = ANY (ARRAY['public.t']) OR kind = coalesce(kind, ('public.t')) THEN \
                    RETURN CASE kind WHEN 'k' THEN 'public.t' END; END IF; \
                    RETURN ('public.t'); END $$;";
        assert_eq!(prepare_time(data), None);
        // A name by its context: a variable or parameter of a name type,
        // assigned, defaulted, compared or listed; a CASE cast to one; the
        // return value of a function returning one. A text function's
        // argument stays data.
        let typed = "CREATE FUNCTION shadow.pick(kind text, r regclass) RETURNS regclass LANGUAGE plpgsql IMMUTABLE \
                     AS $$ DECLARE cfg regconfig := 'public.t'; k CONSTANT pg_catalog.regclass DEFAULT 'public.f'; \
                     BEGIN cfg := 'public.t'; IF r IN ('public.t', 'x') OR 'public.f' = r OR r::regclass <> 'public.t' \
                     THEN PERFORM concat_ws(':', 'public.t', kind); END IF; \
                     PERFORM to_tsvector(CASE WHEN kind = 'a' THEN 'public.t' ELSE 'public.f' END::regconfig, kind); \
                     RETURN 'public.t'; END $$;";
        let out = prepare_time(typed).expect("changed");
        assert_eq!(out.matches("'shadow.t'").count(), 6, "{out}");
        assert_eq!(out.matches("'shadow.f'").count(), 3, "{out}");
        assert!(out.contains("concat_ws(':', 'public.t', kind)"), "{out}");
        // Casts around a CASE, a CASE assigned, NOT NULL, positional
        // parameters, arrays cast to a name type; a built-in function on text
        // takes data, a function the dump defines may take a name.
        let more = "CREATE FUNCTION shadow.more(kind text, regclass) RETURNS bool LANGUAGE plpgsql IMMUTABLE \
                    AS $$ DECLARE cfg regconfig NOT NULL := 'public.t'; BEGIN \
                    cfg := CASE WHEN kind = 'a' THEN 'public.t' END; \
                    PERFORM CAST(CASE WHEN kind = 'a' THEN 'public.t' END AS regconfig), \
                    (CASE WHEN kind = 'a' THEN 'public.t' END)::regconfig, \
                    substr('public.f', 1), public.f('public.t', 'public.f'), regconfig 'public.f', \
                    public.norm_impl('public.t', 'public.f'); \
                    PERFORM 1 FROM (SELECT ARRAY['public.f']::text[] AS a) x; \
                    RETURN $2 IN ('public.t') OR $2 = ANY (ARRAY['public.f', 'public.t']::regclass[]) \
                    OR kind = ANY (ARRAY['public.f']); END $$;";
        let sql_returns = "CREATE FUNCTION shadow.which() RETURNS regclass LANGUAGE sql IMMUTABLE \
                           AS $$ SELECT 'public.t' $$;";
        let out = prepare_time(sql_returns).expect("changed");
        assert!(out.contains("SELECT 'shadow.t'"), "{out}");
        let out = prepare_time(more).expect("changed");
        assert_eq!(out.matches("'shadow.t'").count(), 7, "{out}");
        assert_eq!(out.matches("'shadow.f'").count(), 3, "{out}");
        assert!(
            out.contains("shadow.f('shadow.t', 'public.f')")
                && out.contains("shadow.norm_impl('public.t', 'shadow.f')"),
            "{out}"
        );
        assert!(out.contains("ARRAY['public.f']::text[]"), "{out}");
        assert!(
            out.contains("substr('public.f', 1)") && out.contains("ARRAY['public.f']);"),
            "{out}"
        );
        let arrays = "CREATE FUNCTION shadow.arr() RETURNS bool LANGUAGE plpgsql IMMUTABLE \
                      AS $$ DECLARE ok regclass[] := ARRAY['public.t', 'public.f']; \
                      names text[] := ARRAY['public.t']; c public.cfgdom := 'public.t'; \
                      BEGIN RETURN true; END $$;";
        let out = prepare_time(arrays).expect("changed");
        assert!(
            out.contains("ARRAY['shadow.t', 'shadow.f']; names text[] := ARRAY['public.t']; c public.cfgdom := 'shadow.t'"),
            "{out}"
        );
        let seq = "CREATE FUNCTION shadow.next_t() RETURNS bigint LANGUAGE sql \
                   AS $$ SELECT nextval('public.t') + pg_catalog.length(coalesce(NULL, 'public.t')) $$;";
        let out = prepare_time(seq).expect("changed");
        assert!(
            out.contains("nextval('shadow.t') + pg_catalog.length(coalesce(NULL, 'public.t'))"),
            "{out}"
        );
        let out = prepare_time(sql).expect("changed");
        assert!(
            out.contains("search_path TO shadow_app, app, shadow, public, pg_temp"),
            "{out}"
        );
        assert!(out.contains("RETURN norm_impl(t) IS NOT NULL"), "{out}");
    }

    #[test]
    fn other_functions_keep_their_definition() {
        for sql in [
            // Nothing to remap.
            "CREATE FUNCTION shadow.f() RETURNS integer LANGUAGE sql AS $$ SELECT 1 $$;",
            // Not SQL: the body is left alone.
            "CREATE FUNCTION shadow.f() RETURNS integer LANGUAGE plpython3u AS $$ return public.f $$;",
            // A procedure never runs in prepare.
            "CREATE PROCEDURE shadow.p() LANGUAGE sql AS $$ SELECT public.f() $$;",
            // A SQL-standard body is DDL: remap rewrote it already.
            "CREATE FUNCTION shadow.f2() RETURNS integer LANGUAGE sql RETURN shadow.f();",
            "CREATE TABLE shadow.t (a integer);",
        ] {
            assert_eq!(prepare_time(sql), None, "{sql}");
        }
        assert!(restore_function("CREATE TABLE shadow.t (a integer);").is_err());
    }
}
