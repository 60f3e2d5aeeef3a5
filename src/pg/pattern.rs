//! Table patterns as psql and pg_dump take them (`-t`, `-T`, `\dt`): the
//! user's selection of tables for `--exclude-table-data`, `--exclude-table`
//! and `--keep-tables`.
//!
//! A pattern is an optional schema part and a name part separated by `.`.
//! Outside double quotes, letters are folded to lower case (as PostgreSQL
//! folds unquoted identifiers), `*` matches any sequence of characters and
//! `?` any single character; inside double quotes every character stands for
//! itself (`""` is one `"`), so `"Order*"` matches only a table called
//! `Order*`. Every other character matches itself: unlike psql, regular
//! expression syntax is not interpreted (no `[a-z]`, `+`, `|`), which keeps a
//! pattern's meaning obvious. A pattern without a schema part applies in
//! every migrated schema.
//!
//! Patterns are matched here, in Rust, against names read from the catalogs:
//! a pattern never becomes SQL text or a child's argument (pg_dump is given
//! the matched tables' exact, quoted names).

use std::fmt;

/// One element of a pattern part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Char(char),
    /// `*`
    Any,
    /// `?`
    One,
}

/// A parsed pattern; [`fmt::Display`] gives it back as typed (trimmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePattern {
    text: String,
    schema: Option<Vec<Tok>>,
    name: Vec<Tok>,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty table pattern")]
    Empty,
    #[error("table pattern {} has an unterminated quote", crate::pg::ident::as_typed(.0))]
    Unterminated(String),
    #[error("table pattern {} has more than two parts (only schema.table is allowed)", crate::pg::ident::as_typed(.0))]
    TooManyParts(String),
    #[error("table pattern {} has an empty part", crate::pg::ident::as_typed(.0))]
    EmptyPart(String),
    #[error("table pattern {0:?} contains a control character")]
    Control(String),
}

impl TablePattern {
    /// Parse one pattern (`log_*`, `public.audit`, `"Big?Table"`).
    pub fn parse(input: &str) -> Result<TablePattern, PatternError> {
        let text = input.trim();
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text.chars().any(char::is_control) {
            return Err(PatternError::Control(text.to_string()));
        }
        let mut parts: Vec<Vec<Tok>> = vec![Vec::new()];
        let mut chars = text.chars().peekable();
        let mut quoted = false;
        // A part that was written as `""` (quotes, nothing inside) is not empty
        // in psql either, but it matches no table: refuse it as empty.
        while let Some(c) = chars.next() {
            let cur = parts.last_mut().expect("one part at least");
            if quoted {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        cur.push(Tok::Char('"'));
                    } else {
                        quoted = false;
                    }
                } else {
                    cur.push(Tok::Char(c));
                }
                continue;
            }
            match c {
                '"' => quoted = true,
                '*' => cur.push(Tok::Any),
                '?' => cur.push(Tok::One),
                '.' => parts.push(Vec::new()),
                // Only ASCII letters fold, as in PostgreSQL (downcase_identifier)
                // and psql's patterns: unquoted ÄPFEL is "Äpfel", not äpfel.
                c => cur.push(Tok::Char(c.to_ascii_lowercase())),
            }
        }
        if quoted {
            return Err(PatternError::Unterminated(text.to_string()));
        }
        if parts.iter().any(Vec::is_empty) {
            return Err(PatternError::EmptyPart(text.to_string()));
        }
        let name = parts.pop().expect("one part at least");
        let schema = match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => return Err(PatternError::TooManyParts(text.to_string())),
        };
        Ok(TablePattern {
            text: text.to_string(),
            schema,
            name,
        })
    }

    /// Parse every item of a list (flags, environment, config), dropping
    /// blank items and repeats.
    pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<Vec<TablePattern>, PatternError> {
        let mut out: Vec<TablePattern> = Vec::new();
        for item in items.iter().filter(|s| !s.as_ref().trim().is_empty()) {
            let p = TablePattern::parse(item.as_ref())?;
            if !out.iter().any(|o| o.text == p.text) {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Can the pattern select tables of schema `schema`?
    pub fn matches_schema(&self, schema: &str) -> bool {
        self.schema
            .as_ref()
            .is_none_or(|s| glob(s, &schema.chars().collect::<Vec<_>>()))
    }

    /// For a pattern that matched none of `tables`: [`crate::pg::ident::fold_hint`]
    /// naming those it would match but for case (`AppSettings` typed without
    /// quotes for the table `"AppSettings"`).
    pub fn fold_hint<'a>(&self, tables: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
        use crate::pg::ident::display_ident;
        let near: Vec<String> = tables
            .into_iter()
            .filter(|(s, n)| {
                !self.matches(s, n)
                    && self.matches(&s.to_ascii_lowercase(), &n.to_ascii_lowercase())
            })
            .map(|(s, n)| match self.schema {
                Some(_) => format!("{}.{}", display_ident(s), display_ident(n)),
                None => display_ident(n),
            })
            .collect();
        crate::pg::ident::fold_hint(&near)
    }

    /// Does the pattern select table `name` of schema `schema`?
    pub fn matches(&self, schema: &str, name: &str) -> bool {
        self.schema
            .as_ref()
            .is_none_or(|s| glob(s, &schema.chars().collect::<Vec<_>>()))
            && glob(&self.name, &name.chars().collect::<Vec<_>>())
    }
}

impl fmt::Display for TablePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Split a list on commas outside double quotes (`a,"b,c"` is two items).
/// Every item comes back, blank ones too (`a,,b` is three): whether an empty
/// item is an error is the caller's to say (`config::list_items`). The one
/// splitter of every list setting: table filters, preserved tables, schemas,
/// roles, `--allow-discard`, `rollback --keep-tables`.
pub fn split_list(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Glob matching with `*` and `?`, iterative with one backtrack point (linear
/// in practice, never exponential).
fn glob(pat: &[Tok], s: &[char]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        match pat.get(p) {
            Some(Tok::Any) => {
                star = Some((p, i));
                p += 1;
            }
            Some(Tok::One) => {
                p += 1;
                i += 1;
            }
            Some(Tok::Char(c)) if *c == s[i] => {
                p += 1;
                i += 1;
            }
            _ => match star {
                Some((sp, si)) => {
                    p = sp + 1;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(|t| *t == Tok::Any)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, schema: &str, name: &str) -> bool {
        TablePattern::parse(p).unwrap().matches(schema, name)
    }

    #[test]
    fn wildcards_case_and_quotes() {
        assert!(m("log_*", "public", "log_2024"));
        assert!(m("log_*", "public", "log_"));
        assert!(!m("log_*", "public", "logs"));
        assert!(m("LOG?", "public", "logs"));
        assert!(!m("LOG?", "public", "log"));
        assert!(!m("log?", "public", "Logs"));
        assert!(m("\"Logs\"", "public", "Logs"));
        assert!(!m("\"Logs\"", "public", "logs"));
        assert!(m("\"A*\"", "public", "A*"));
        assert!(!m("\"A*\"", "public", "Ab"));
        assert!(m("\"a\"\"b\"", "public", "a\"b"));
        assert!(m("\"My\"*", "public", "My_table"));
        assert!(m("*", "public", "anything"));
        assert!(m("*a*b*", "public", "xxaxxbxx"));
        assert!(!m("*a*b*", "public", "xxbxxaxx"));
        assert!(!m("a.b", "public", "a.b"));
        assert!(m("\"a.b\"", "public", "a.b"));
        assert!(m("[x]", "public", "[x]"), "regex syntax is literal");
        // Only ASCII letters fold, as in PostgreSQL and psql.
        assert!(m("ÄPFEL", "public", "Äpfel"));
        assert!(!m("ÄPFEL", "public", "äpfel"));
        assert!(m("äpfel*", "public", "äpfel_2"));
        assert!(m("ÉTÉ.X", "ÉtÉ", "x"));
        assert!(!m("ÉTÉ.X", "été", "x"));
    }

    #[test]
    fn schema_part() {
        assert!(m("public.t", "public", "t"));
        assert!(!m("billing.t", "public", "t"));
        assert!(m("*.t", "billing", "t"));
        assert!(m("t", "billing", "t"));
        assert!(m("PUBLIC.T*", "public", "tx"));
    }

    /// A pattern that matches nothing only because of case says how to
    /// write what it missed.
    #[test]
    fn a_miss_by_case_is_hinted() {
        let tables = [
            ("public", "AppSettings"),
            ("Sales", "Orders"),
            ("public", "plain"),
        ];
        let hint = |p: &str| TablePattern::parse(p).unwrap().fold_hint(tables);
        assert!(
            hint("AppSettings").ends_with("write \"AppSettings\" with its quotes)"),
            "{}",
            hint("AppSettings")
        );
        assert!(hint("sales.ord*").contains("write \"Sales\".\"Orders\" with"));
        assert_eq!(hint("\"AppSettings\""), "");
        assert_eq!(hint("nothing"), "");
    }

    #[test]
    fn refusals() {
        use std::mem::discriminant;
        assert_eq!(TablePattern::parse("  "), Err(PatternError::Empty));
        let any = String::new;
        for (input, want) in [
            ("\"abc", PatternError::Unterminated(any())),
            ("a.b.c", PatternError::TooManyParts(any())),
            ("a.", PatternError::EmptyPart(any())),
            ("a\nb", PatternError::Control(any())),
        ] {
            let e = TablePattern::parse(input).unwrap_err();
            assert_eq!(discriminant(&e), discriminant(&want), "{input:?}: {e:?}");
        }
    }

    #[test]
    fn lists_split_outside_quotes() {
        assert_eq!(
            split_list("a, \"b,c\" ,,d"),
            vec!["a", " \"b,c\" ", "", "d"]
        );
        assert_eq!(split_list(""), vec![""]);
        assert_eq!(split_list("\"x\"\"y,z\""), vec!["\"x\"\"y,z\""]);
        let l = TablePattern::parse_list(&split_list("a,b,a")).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].to_string(), "b");
    }
}
