//! Identifier quoting and user-supplied table names.
//!
//! Every identifier pgshift puts into SQL text goes through [`quote_ident`] (or
//! [`qualified`]); names typed by users are parsed by [`TableName::parse`], which
//! accepts identifiers only, never SQL.

use std::fmt;

/// Quote an identifier the way PostgreSQL's `quote_ident` does, but always:
/// `users` -> `"users"`, `a"b` -> `"a""b"`.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `"schema"."name"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// Quote a string literal: `it's` -> `'it''s'`. Used only where a bind parameter
/// is impossible (utility statements such as `COMMENT ON ... IS`).
pub fn quote_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    if value.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A table named by a user (`--preserved-tables`, `--keep-tables`): an optional
/// schema and a name, each an unquoted identifier (folded to lower case) or a
/// double-quoted one (kept as written).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

/// Why a user-supplied table name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty table name")]
    Empty,
    #[error("table name {} is not an identifier: it contains {}", as_typed(.0), .1)]
    BadChar(String, String),
    /// An unquoted name with a character a quoted name may hold (a space, a
    /// hyphen): with the name as it would be written in double quotes.
    #[error(
        "table name {} is not an identifier: it contains {}; in double quotes it is one: {}",
        as_typed(.0), .1, as_typed(.2)
    )]
    NeedsQuotes(String, String, String),
    #[error("table name {} has an unterminated quote", as_typed(.0))]
    Unterminated(String),
    #[error("table name {} has more than two parts (only schema.table is allowed)", as_typed(.0))]
    TooManyParts(String),
    #[error("table name {} is longer than 63 bytes", as_typed(.0))]
    TooLong(String),
}

impl TableName {
    /// The table a key of the migration record names (`users` in public,
    /// `billing.invoices` in another migrated schema, as
    /// [`table_display`](crate::pg::meta::table_display) writes them):
    /// `migrated` says which schemas the migration covers.
    pub fn of_key(key: &str, migrated: impl Fn(&str) -> bool) -> TableName {
        match TableName::parse(key) {
            Ok(t)
                if t.schema
                    .as_deref()
                    .is_some_and(|s| s != crate::pg::meta::PUBLIC && migrated(s)) =>
            {
                t
            }
            _ => TableName {
                schema: None,
                name: key.to_string(),
            },
        }
    }

    /// Keys of the migration record as reports name the tables
    /// (`"WebhookCall"`, `billing.invoices`), for the schemas of `maps`.
    pub fn keys_shown(keys: &[String], maps: &[crate::backups::manifest::SchemaMap]) -> String {
        keys.iter()
            .map(|k| TableName::of_key(k, |s| maps.iter().any(|m| m.live == s)).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Parse `name`, `schema.name`, `"Name"`, `"schema"."Name"`.
    ///
    /// Refuses anything that is not plainly an identifier: semicolons, quotes
    /// inside names, whitespace, control characters, operators. These are
    /// identifiers, never SQL.
    pub fn parse(input: &str) -> Result<TableName, NameError> {
        let raw = input.trim();
        if raw.is_empty() {
            return Err(NameError::Empty);
        }
        let mut parts = Vec::new();
        let mut rest = raw;
        loop {
            let (part, after) = if let Some(stripped) = rest.strip_prefix('"') {
                let end = stripped
                    .find('"')
                    .ok_or_else(|| NameError::Unterminated(input.to_string()))?;
                let inner = &stripped[..end];
                if inner.is_empty() {
                    return Err(NameError::Empty);
                }
                if let Some(c) = inner.chars().find(|c| forbidden_in_quoted(*c)) {
                    return Err(NameError::BadChar(input.to_string(), describe_char(c)));
                }
                (inner.to_string(), &stripped[end + 1..])
            } else {
                let end = rest.find('.').unwrap_or(rest.len());
                let word = &rest[..end];
                if word.is_empty() {
                    return Err(NameError::Empty);
                }
                let mut chars = word.chars();
                let first = chars.next().expect("non-empty");
                let bad = if first.is_alphabetic() || first == '_' {
                    chars.find(|c| !(c.is_alphanumeric() || *c == '_' || *c == '$'))
                } else {
                    Some(first)
                };
                if let Some(c) = bad {
                    // A name such as `Billing Dept` is one in double quotes
                    // (which also keep its capitals): say how to write it.
                    if word.chars().any(forbidden_in_quoted) || word.trim() != word {
                        return Err(NameError::BadChar(input.to_string(), describe_char(c)));
                    }
                    let at = raw.len() - rest.len();
                    let quoted = format!("{}\"{word}\"{}", &raw[..at], &rest[end..]);
                    return Err(NameError::NeedsQuotes(
                        input.to_string(),
                        describe_char(c),
                        quoted,
                    ));
                }
                // Only ASCII letters fold, as in PostgreSQL's
                // downcase_identifier: unquoted ÄPFEL is "Äpfel", not äpfel.
                (word.to_ascii_lowercase(), &rest[end..])
            };
            if part.len() > 63 {
                return Err(NameError::TooLong(input.to_string()));
            }
            parts.push(part);
            if after.is_empty() {
                break;
            }
            match after.strip_prefix('.') {
                Some(next) if !next.is_empty() => rest = next,
                Some(_) => return Err(NameError::Empty),
                None => {
                    let c = after.chars().next().expect("non-empty");
                    return Err(NameError::BadChar(input.to_string(), describe_char(c)));
                }
            }
        }
        match parts.len() {
            1 => Ok(TableName {
                schema: None,
                name: parts.pop().expect("one part"),
            }),
            2 => {
                let name = parts.pop().expect("two parts");
                Ok(TableName {
                    schema: parts.pop(),
                    name,
                })
            }
            _ => Err(NameError::TooManyParts(input.to_string())),
        }
    }

    /// Parse a comma-separated list as it arrives from flags, env or config.
    pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<Vec<TableName>, NameError> {
        let mut out: Vec<TableName> = Vec::new();
        for item in items {
            let t = TableName::parse(item.as_ref())?;
            if !out.contains(&t) {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// The schema, `public` when none was given.
    pub fn schema_or_public(&self) -> &str {
        self.schema.as_deref().unwrap_or("public")
    }

    /// Table `name` of `schema` (unqualified in public, as users write it).
    pub fn in_schema(schema: &str, name: &str) -> TableName {
        TableName {
            schema: (schema != "public").then(|| schema.to_string()),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for TableName {
    /// Shown the way a user would type it back: quoted only where needed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(schema) = &self.schema {
            write!(f, "{}.", display_ident(schema))?;
        }
        write!(f, "{}", display_ident(&self.name))
    }
}

/// Quote only when the identifier would not survive unquoted (upper case,
/// special characters, or a keyword, as PostgreSQL's own scanner says).
/// The end of an error about a name that names nothing, when `near` (the
/// names it would be but for case, as one writes them: `"AppSettings"`) is
/// not empty: unquoted, `AppSettings` is `appsettings`, as in psql.
/// [`fold_hint`] for `name` (as typed, so folded) among `names`: those that
/// are `name` but for case.
pub fn fold_hint_among<'a>(name: &str, names: impl IntoIterator<Item = &'a String>) -> String {
    let near: Vec<String> = names
        .into_iter()
        .filter(|n| n.to_ascii_lowercase() == name)
        .map(|n| display_ident(n))
        .collect();
    fold_hint(&near)
}

pub fn fold_hint(near: &[String]) -> String {
    match near {
        [] => String::new(),
        _ => format!(
            " (letters outside double quotes are folded to lower case, as in psql: write {} with its quotes)",
            near[..near.len().min(3)].join(" or ")
        ),
    }
}

/// A user's input as typed, quoted for an error message: `"users"`, or
/// `'"Sales".orders'` when it holds double quotes or backslashes, which a
/// Rust-style string would escape (`"\"Sales\".orders"`, not what to paste
/// back). Input with control characters, or with both kinds of quote, keeps
/// the escaped form: it shows what no terminal would.
pub fn as_typed(input: &str) -> String {
    let plain = !input.contains(['"', '\\']);
    if plain || input.contains('\'') || input.chars().any(char::is_control) {
        format!("{input:?}")
    } else {
        format!("'{input}'")
    }
}

pub fn display_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    // Like PostgreSQL's quote_ident: unreserved keywords may stay unquoted.
    let keyword = || match pg_query::scan(name) {
        Ok(r) => {
            use pg_query::protobuf::KeywordKind;
            r.tokens.len() != 1
                || !matches!(
                    r.tokens[0].keyword_kind(),
                    KeywordKind::NoKeyword | KeywordKind::UnreservedKeyword
                )
        }
        Err(_) => true,
    };
    if plain && !keyword() {
        name.to_string()
    } else {
        quote_ident(name)
    }
}

/// An object always qualified: `public.accounts`, `billing."Order"`.
pub fn qualified_display(schema: &str, name: &str) -> String {
    format!("{}.{}", display_ident(schema), display_ident(name))
}

fn forbidden_in_quoted(c: char) -> bool {
    c == '"' || c == ';' || c == '\'' || c == '\\' || c.is_control()
}

fn describe_char(c: char) -> String {
    match c {
        ';' => "a semicolon".to_string(),
        '\'' | '"' | '`' => "a quote".to_string(),
        c if c.is_whitespace() => "whitespace".to_string(),
        c if c.is_control() => "a control character".to_string(),
        c => format!("{c:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("users"), "\"users\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(qualified("public", "T"), "\"public\".\"T\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
    }

    #[test]
    fn parses_identifiers() {
        let t = TableName::parse("Users").unwrap();
        assert_eq!(
            t,
            TableName {
                schema: None,
                name: "users".into()
            }
        );
        let t = TableName::parse("public.\"Mixed Case\"").unwrap();
        assert_eq!(t.schema.as_deref(), Some("public"));
        assert_eq!(t.name, "Mixed Case");
        assert_eq!(t.to_string(), "public.\"Mixed Case\"");
        assert_eq!(display_ident("select"), "\"select\"");
        assert_eq!(display_ident("users"), "users");
        assert_eq!(display_ident("data"), "data");
        let t = TableName::parse("\"Ünïcode\"").unwrap();
        assert_eq!(t.name, "Ünïcode");
        assert_eq!(TableName::parse(" sessions ").unwrap().name, "sessions");
        // Only ASCII letters fold, as in PostgreSQL's downcase_identifier.
        assert_eq!(TableName::parse("ÄPFEL").unwrap().name, "Äpfel");
        assert_eq!(TableName::parse("äpfel").unwrap().name, "äpfel");
        assert_eq!(display_ident("Äpfel"), "\"Äpfel\"");
    }

    #[test]
    fn refuses_sql() {
        for bad in [
            "users;drop table x",
            "users; --",
            "\"a\"\"b\"",
            "\"a;b\"",
            "users'",
            "a b",
            "a.b.c",
            "\"open",
            "",
            "a.",
            ".a",
            "1abc",
            "a-b",
            "users)",
        ] {
            assert!(TableName::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let err = TableName::parse("users;drop").unwrap_err().to_string();
        assert!(err.contains("semicolon"), "{err}");
        let err = TableName::parse("\"a\"\"b\"").unwrap_err().to_string();
        assert!(err.contains("quote"), "{err}");
        // A name that is one in double quotes: say how to write it.
        for (bad, hint) in [
            (
                "Billing Dept.x",
                "in double quotes it is one: '\"Billing Dept\".x'",
            ),
            (
                "public.my-table",
                "in double quotes it is one: 'public.\"my-table\"'",
            ),
            ("1abc", "in double quotes it is one: '\"1abc\"'"),
        ] {
            let err = TableName::parse(bad).unwrap_err().to_string();
            assert!(err.ends_with(hint), "{err}");
        }
        let err = TableName::parse("users;drop").unwrap_err().to_string();
        assert!(!err.contains("double quotes"), "{err}");
    }

    #[test]
    fn list_dedups() {
        let l = TableName::parse_list(&["users", "USERS", "sessions"]).unwrap();
        assert_eq!(l.len(), 2);
    }
}
