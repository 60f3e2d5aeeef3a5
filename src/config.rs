//! Validated settings, merged from flags > environment (`PGSHIFT_*`, applied by
//! clap) > config file (`pgshift.toml` in the current directory, or `--config`)
//! > defaults. Everything is checked here, before any connection is opened.
//!
//! Connection strings become [`ConnSpec`]s, whose `Debug` and `Display` are
//! redacted, so `Settings` can be logged safely.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;

use crate::cli::{
    Command, GlobalArgs, ImpactOpts, LogFormat, PrepareOpts, SwapModeArg, SwapOpts, VerifyMode,
};
use crate::error::UserError;
use crate::pg::conn::MIN_CONNECTIONS;
use crate::pg::conn::connspec::ConnSpec;
use crate::pg::ident::{TableName, as_typed};
use crate::pg::pattern::{TablePattern, split_list};
use crate::prepare::filters::TableFilters;
use crate::swap::engine::Policy;
use crate::swap::impact::gate::ImpactOptions;
use crate::swap::impact::{AllowDiscard, WorkloadOptions};
use crate::swap::mode::ModeRequest;

/// Name of the config file looked up in the current directory.
pub const DEFAULT_CONFIG_FILE: &str = "pgshift.toml";

/// The config file's keys. Unknown keys are an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub source_url: Option<String>,
    pub dest_url: Option<String>,
    pub preserved_tables: Option<StringList>,
    pub schemas: Option<StringList>,
    pub exclude_table_data: Option<StringList>,
    pub exclude_table: Option<StringList>,
    pub keep_tables: Option<StringList>,
    pub jobs: Option<usize>,
    pub max_connections: Option<usize>,
    pub connect_timeout: Option<DurationValue>,
    pub lock_timeout: Option<DurationValue>,
    pub statement_timeout: Option<DurationValue>,
    pub state_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub json: Option<bool>,
    pub dump_dir: Option<PathBuf>,
    pub keep_dump: Option<bool>,
    pub verify: Option<VerifyMode>,
    pub keep_source_owners: Option<bool>,
    pub no_tablespaces: Option<bool>,
    pub swap_retries: Option<u32>,
    pub swap_mode: Option<SwapModeArg>,
    pub allow_fk_violations: Option<bool>,
    pub keep_latest: Option<usize>,
    pub allow_discard: Option<StringList>,
    pub fail_on_breaking: Option<bool>,
    pub workload_roles: Option<StringList>,
    pub impact_timeout: Option<DurationValue>,
}

/// `--schemas`: identifiers (as psql reads them: unquoted names fold to
/// lower case), no duplicates, public among them (listed first), none of
/// pgshift's own or the system's. Empty: `["public"]`.
fn parse_schemas(raw: Vec<String>, shown: &str) -> Result<Vec<String>> {
    if raw.is_empty() {
        return Ok(crate::pg::meta::default_schemas());
    }
    let mut out: Vec<String> = Vec::new();
    for r in &raw {
        let t = TableName::parse(r).map_err(|e| {
            let e = e.to_string();
            // A name of three parts is no schema name, not a table name of
            // too many parts.
            UserError::new(if e.contains("more than two parts") {
                format!("{shown}: {} is not a schema name", as_typed(r))
            } else {
                format!("{shown}: {}", e.replace("table name", "schema name"))
            })
        })?;
        if t.schema.is_some() {
            crate::refuse!("{shown}: {} is not a schema name", as_typed(r));
        }
        let name = t.name;
        let reserved = name == crate::pg::meta::META_SCHEMA
            || name == crate::pg::meta::SHADOW_SCHEMA
            || name == "information_schema"
            || name.starts_with("pg_")
            || name.starts_with(crate::pg::meta::BACKUP_PREFIX)
            || name.starts_with("pgshift_");
        if reserved {
            crate::refuse!(
                "{shown}: {} is not an application schema (system or pgshift's own)",
                crate::pg::ident::display_ident(&name)
            );
        }
        if out.contains(&name) {
            crate::refuse!(
                "{shown}: {} is listed twice",
                crate::pg::ident::display_ident(&name)
            );
        }
        out.push(name);
    }
    if !out.iter().any(|s| s == crate::pg::meta::PUBLIC) {
        crate::refuse!(
            "{shown}: public must be one of the schemas (a migration always moves public; add the others to it)"
        );
    }
    out.sort_by_key(|s| s != crate::pg::meta::PUBLIC);
    Ok(out)
}

/// `"a,b"` or `["a", "b"]`.
#[derive(Debug, Clone)]
pub enum StringList {
    One(String),
    Many(Vec<String>),
}

/// What a [`StringList`] key takes, as a refusal says it.
const STRING_LIST: &str = "a list of strings or a comma-separated string";

/// What a [`DurationValue`] key takes, as a refusal says it.
const DURATION: &str = "a duration (\"500ms\", \"10s\", \"2m\") or a whole number of seconds";

impl<'de> Deserialize<'de> for StringList {
    /// By hand rather than `untagged`, whose error ("data did not match any
    /// variant") says neither what was found nor what the key takes.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        /// One string of the list (anything else: the list's own message).
        struct Item(String);
        impl<'de> Deserialize<'de> for Item {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = Item;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(STRING_LIST)
                    }
                    fn visit_str<E: serde::de::Error>(
                        self,
                        v: &str,
                    ) -> std::result::Result<Item, E> {
                        Ok(Item(v.to_string()))
                    }
                }
                d.deserialize_any(V)
            }
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StringList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(STRING_LIST)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<StringList, E> {
                Ok(StringList::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<StringList, A::Error> {
                let mut out = Vec::new();
                while let Some(Item(s)) = seq.next_element()? {
                    out.push(s);
                }
                Ok(StringList::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl StringList {
    /// The items; an empty string or item is refused, naming the file's `key`
    /// (an empty list, `[]`, is an explicit "none").
    fn items(&self, key: &str, what: &str) -> Result<Vec<String>> {
        match self {
            StringList::One(s) if s.trim().is_empty() => {
                crate::refuse!(
                    "{key} in the config file is empty: give {what}, or leave the key out"
                )
            }
            StringList::One(s) => {
                let items = split_list(s);
                if items.iter().any(|i| i.trim().is_empty()) {
                    crate::refuse!(
                        "{key} in the config file: {} has an empty item (a comma too many?)",
                        as_typed(s)
                    );
                }
                Ok(items)
            }
            StringList::Many(v) => {
                if v.iter().any(|i| i.trim().is_empty()) {
                    crate::refuse!("{key} in the config file has an empty item: give {what}");
                }
                Ok(v.clone())
            }
        }
    }
}

/// The items of a list setting given on the command line or in its
/// environment variable `env` (clap reads both into `values`, one per
/// flag), each value split on commas outside double quotes ([`split_list`],
/// the one splitter of every list). A value with nothing in it
/// (`--exclude-table "$UNSET"`, `PGSHIFT_EXCLUDE_TABLE=`) or an empty item
/// (`a,,b`, `a,`) is refused, naming the flag or the variable: it must not
/// silently mean "none". `what` is what the list takes ("a pattern").
pub fn list_items(
    flag: &str,
    env: Option<&str>,
    values: &[String],
    what: &str,
) -> Result<Vec<String>> {
    // The variable's value is what clap used when the flag was not given.
    let from_env = env.filter(|_| crate::cli::env_source(flag).is_some());
    let mut out = Vec::new();
    for v in values {
        if v.trim().is_empty() {
            match from_env {
                Some(e) => crate::refuse!("{e} is empty: give {what}, or unset it"),
                None => crate::refuse!("{flag} is empty: give {what}, or leave the flag out"),
            }
        }
        let items = split_list(v);
        if items.iter().any(|i| i.trim().is_empty()) {
            crate::refuse!(
                "{}: {} has an empty item (a comma too many?)",
                from_env.unwrap_or(flag),
                as_typed(v)
            );
        }
        out.extend(items);
    }
    Ok(out)
}

/// A list setting, flags (or environment) > config file: its items, or none.
fn list_setting(
    given: &Option<Vec<String>>,
    (flag, env): (&str, &str),
    file: &Option<StringList>,
    key: &str,
    what: &str,
) -> Result<Vec<String>> {
    match (given, file) {
        (Some(v), _) => list_items(flag, Some(env), v, what),
        (None, Some(l)) => l.items(key, what),
        (None, None) => Ok(Vec::new()),
    }
}

/// How an error names a setting: the flag, or the variable it was read from
/// ([`crate::cli::given_as`]), when given; else the config file's key.
fn setting_shown<T>(given: &Option<T>, flag: &str, key: &str, file_has: bool) -> String {
    match (given, file_has) {
        (Some(_), _) | (None, false) => crate::cli::given_as(flag),
        (None, true) => format!("{key} in the config file"),
    }
}

/// `"500ms"`, `"10s"` or a number of seconds.
#[derive(Debug, Clone)]
pub enum DurationValue {
    Seconds(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for DurationValue {
    /// By hand rather than `untagged`, for an error that says what the key takes.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DurationValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DURATION)
            }
            fn visit_u64<E: serde::de::Error>(
                self,
                v: u64,
            ) -> std::result::Result<DurationValue, E> {
                Ok(DurationValue::Seconds(v))
            }
            fn visit_i64<E: serde::de::Error>(
                self,
                v: i64,
            ) -> std::result::Result<DurationValue, E> {
                u64::try_from(v)
                    .map(DurationValue::Seconds)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<DurationValue, E> {
                Ok(DurationValue::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Everything a command needs to know, validated.
#[derive(Clone)]
pub struct Settings {
    pub json: bool,
    pub verbosity: i8,
    pub log_format: LogFormat,
    pub jobs: usize,
    pub max_connections: usize,
    pub connect_timeout: Duration,
    /// How the swap transaction (swap, rollback) waits and retries, and in
    /// which mode; prepare's and abort's DDL waits and retries alike.
    pub swap: Policy,
    pub state_dir: PathBuf,
    pub source: Option<ConnSpec>,
    pub dest: Option<ConnSpec>,
    pub preserved_tables: Vec<TableName>,
    /// `--schemas` (prepare, start): the schemas to migrate, public first.
    pub schemas: Vec<String>,
    /// `--exclude-table-data`, `--exclude-table`, `--keep-tables` (prepare,
    /// start; swap: keep only).
    pub filters: TableFilters,
    pub dump_dir: Option<PathBuf>,
    pub keep_dump: bool,
    pub verify: VerifyMode,
    pub keep_source_owners: bool,
    /// `--no-tablespaces` (prepare, start): everything into the
    /// destination's default tablespace.
    pub no_tablespaces: bool,
    pub dry_run: bool,
    pub allow_fk_violations: bool,
    pub keep_latest: Option<usize>,
    /// The swap's (and rollback's) impact checks: the writes it may discard,
    /// whether breaking changes refuse it, the workload check's roles and
    /// time bound.
    pub impact: ImpactOptions,
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// Adjustments made while validating, to log once logging is up.
    pub warnings: Vec<String>,
}

impl fmt::Debug for Settings {
    /// Connection specs redact their passwords in Debug, so this is safe to log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("source", &self.source)
            .field("dest", &self.dest)
            .field("jobs", &self.jobs)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("swap", &self.swap)
            .field("state_dir", &self.state_dir)
            .field("preserved_tables", &self.preserved_tables)
            .field("filters", &self.filters)
            .field("dump_dir", &self.dump_dir)
            .field("keep_dump", &self.keep_dump)
            .field("verify", &self.verify)
            .field("dry_run", &self.dry_run)
            .field("allow_fk_violations", &self.allow_fk_violations)
            .field("impact", &self.impact)
            .field("config_file", &self.config_file)
            .finish_non_exhaustive()
    }
}

/// Command-specific inputs that share the precedence rules.
#[derive(Debug, Default, Clone)]
struct CommandInputs {
    source: Option<String>,
    dest: Option<String>,
    preserved_tables: Option<Vec<String>>,
    schemas: Option<Vec<String>>,
    exclude_table_data: Option<Vec<String>>,
    exclude_table: Option<Vec<String>>,
    keep_tables: Option<Vec<String>>,
    dump_dir: Option<PathBuf>,
    keep_dump: bool,
    verify: Option<VerifyMode>,
    keep_source_owners: bool,
    no_tablespaces: bool,
    dry_run: bool,
    swap_retries: Option<u32>,
    swap_mode: Option<SwapModeArg>,
    allow_fk_violations: bool,
    keep_latest: Option<usize>,
    allow_discard: Option<String>,
    fail_on_breaking: bool,
    workload_roles: Option<Vec<String>>,
    impact_timeout: Option<String>,
}

impl CommandInputs {
    fn from_command(cmd: &Command) -> CommandInputs {
        fn prep(p: &PrepareOpts, c: &mut CommandInputs) {
            c.source = p.source.source.clone();
            c.dest = p.dest.dest.clone();
            c.preserved_tables = p.preserved_tables.clone();
            c.schemas = p.schemas.clone();
            c.exclude_table_data = p.exclude_table_data.clone();
            c.exclude_table = p.exclude_table.clone();
            c.keep_tables = p.keep_tables.clone();
            c.dump_dir = p.dump_dir.clone();
            c.keep_dump = p.keep_dump;
            c.verify = p.verify;
            c.keep_source_owners = p.keep_source_owners;
            c.no_tablespaces = p.no_tablespaces;
            c.dry_run = p.dry_run;
            impact(&p.impact, c);
        }
        fn swap(s: &SwapOpts, c: &mut CommandInputs) {
            c.swap_retries = s.swap_retries;
            c.swap_mode = s.swap_mode;
            c.allow_fk_violations = s.allow_fk_violations;
            c.allow_discard = s.allow_discard.clone();
        }
        fn impact(i: &ImpactOpts, c: &mut CommandInputs) {
            c.workload_roles = i.workload_roles.clone();
            c.impact_timeout = i.impact_timeout.clone();
        }
        let mut c = CommandInputs::default();
        match cmd {
            Command::Start(a) => {
                prep(&a.prepare, &mut c);
                swap(&a.swap, &mut c);
                c.fail_on_breaking = a.breaking.fail_on_breaking;
            }
            Command::Prepare(a) => prep(&a.prepare, &mut c),
            Command::Swap(a) => {
                c.dest = a.dest.dest.clone();
                c.keep_dump = a.keep_dump;
                c.dry_run = a.dry_run;
                c.keep_tables = a.keep_tables.clone();
                swap(&a.swap, &mut c);
                c.fail_on_breaking = a.breaking.fail_on_breaking;
                impact(&a.impact, &mut c);
            }
            Command::Rollback(a) => {
                c.dest = a.dest.dest.clone();
                c.dry_run = a.dry_run;
                swap(&a.swap, &mut c);
                c.fail_on_breaking = a.breaking.fail_on_breaking;
                impact(&a.impact, &mut c);
            }
            Command::Cleanup(a) => {
                c.dest = a.dest.dest.clone();
                c.dry_run = a.dry_run;
                c.keep_latest = a.keep_latest;
            }
            Command::Verify(a) => c.dest = a.dest.dest.clone(),
            Command::Status(a) => {
                c.dest = a.dest.dest.clone();
                impact(&a.impact, &mut c);
            }
            Command::List(a) | Command::Abort(a) => c.dest = a.dest.dest.clone(),
        }
        c
    }
}

/// The passwords in the config file's string values (a connection string
/// given to the wrong key, `jobs = "postgresql://app:pw@h/db"`), as
/// [`crate::argv_scrub::secret_arguments`] gives them for the command line:
/// an error about such a value quotes it, plain or escaped, and
/// [`crate::argv_scrub::scrub_message`] hides them there. Nothing when the
/// file cannot be read or parsed (its error quotes no value).
pub fn file_secrets(explicit: Option<&Path>) -> Vec<(String, String)> {
    let path = explicit.map_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE), Path::to_path_buf);
    let Some(table) = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
    else {
        return Vec::new();
    };
    fn strings(v: &toml::Value, out: &mut Vec<std::ffi::OsString>) {
        match v {
            toml::Value::String(s) => {
                out.push(s.into());
                // serde quotes a wrong value escaped (`string "a\"b"`).
                let escaped = format!("{s:?}");
                out.push(escaped[1..escaped.len() - 1].into());
            }
            toml::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            toml::Value::Table(t) => t.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    // secret_arguments skips the first, a program's name.
    let mut values = vec![std::ffi::OsString::new()];
    table.values().for_each(|v| strings(v, &mut values));
    crate::argv_scrub::secret_arguments(&values)
}

/// Read the config file: `explicit` if given (must exist), else
/// `./pgshift.toml` if it exists. Returns the file's path and contents.
pub fn load_file(explicit: Option<&Path>) -> Result<Option<(PathBuf, FileConfig)>> {
    let path = match explicit {
        Some(p) => {
            if p.is_dir() {
                return Err(
                    UserError::new(format!("config file {} is a directory", p.display())).into(),
                );
            }
            if !p.is_file() {
                return Err(
                    UserError::new(format!("config file {} does not exist", p.display())).into(),
                );
            }
            p.to_path_buf()
        }
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG_FILE);
            if !p.is_file() {
                return Ok(None);
            }
            p
        }
    };
    // Unreadable or not UTF-8: bad input (exit 2), like a file that does not parse.
    let text = std::fs::read_to_string(&path)
        .map_err(|e| UserError::new(format!("cannot read config file {}: {e}", path.display())))?;
    let cfg = parse_file(&text)
        .map_err(|msg| UserError::new(format!("config file {}: {msg}", path.display())))?;
    Ok(Some((path, cfg)))
}

/// Parse config text; the error is one line (`unknown field "x" ... at line 3`).
/// A value of the wrong type is named by its key and what the key takes
/// (`exclude_table must be a list of strings or a comma-separated string,
/// not integer `5` (line 1)`), not in serde's words.
pub fn parse_file(text: &str) -> std::result::Result<FileConfig, String> {
    toml::from_str::<FileConfig>(text).map_err(|e| {
        let msg = e.message().trim().replace('\n', " ");
        match e.span() {
            Some(span) => {
                let msg = match key_at(text, span.start) {
                    Some(key) => wrong_value(&key, &msg),
                    None => msg,
                };
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("{msg} (line {line})")
            }
            None => msg,
        }
    })
}

/// The top-level key whose value holds byte `at` of the config text.
fn key_at(text: &str, at: usize) -> Option<String> {
    let table = toml::de::DeTable::parse(text).ok()?;
    table
        .get_ref()
        .iter()
        .find(|(_, v)| v.span().contains(&at))
        .map(|(k, _)| k.get_ref().to_string())
}

/// serde's `invalid type: X, expected Y` (or `invalid value`) about `key`'s
/// value as `key must be Y, not X`; any other message prefixed with the key.
fn wrong_value(key: &str, msg: &str) -> String {
    let parsed = ["invalid type: ", "invalid value: "]
        .iter()
        .find_map(|p| msg.strip_prefix(p))
        .and_then(|rest| rest.rsplit_once(", expected "));
    match parsed {
        Some((found, expected)) => {
            let expected = match expected {
                "usize" | "u32" | "u64" => "a whole number (0 or more)",
                e => e,
            };
            format!("{key} must be {expected}, not {found}")
        }
        None => format!("{key}: {msg}"),
    }
}

/// Parse a duration flag: `500ms`, `1s`, `2m`, or a bare number of seconds.
pub fn parse_duration(what: &str, text: &str) -> Result<Duration> {
    let t = text.trim();
    let d = if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        t.parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| e.to_string())
    } else {
        humantime::parse_duration(t).map_err(|e| e.to_string())
    };
    match d {
        Ok(d) if d.is_zero() => Err(crate::user_error!("{what} must be greater than zero")),
        Ok(d) => Ok(d),
        Err(e) => Err(crate::user_error!(
            "invalid {what} {t:?}: {e} (examples: 500ms, 10s, 2m)"
        )),
    }
}

/// A timeout pgshift sets on the server (`lock_timeout`, `statement_timeout`)
/// is an int of milliseconds there: a longer one is refused here, before
/// anything runs, rather than by the server in the middle of a run.
const SERVER_TIMEOUT_MAX_MS: u64 = i32::MAX as u64;

fn server_timeout(what: &str, d: Duration) -> Result<Duration> {
    if d.as_millis() > u128::from(SERVER_TIMEOUT_MAX_MS) {
        return Err(crate::user_error!(
            "{what} {} is too long: PostgreSQL takes at most {SERVER_TIMEOUT_MAX_MS}ms (about 24 days)",
            humantime::format_duration(d)
        ));
    }
    Ok(d)
}

/// A duration setting, flag (or environment) > config file > `default`;
/// `on_server`: a timeout pgshift sets on the server ([`server_timeout`]).
fn duration_setting(
    given: &Option<String>,
    (flag, key): (&str, &str),
    file: &Option<DurationValue>,
    default: Duration,
    on_server: bool,
) -> Result<Duration> {
    let (name, d) = match (given, file) {
        (Some(t), _) => {
            let flag = crate::cli::given_as(flag);
            let d = parse_duration(&flag, t)?;
            (flag, d)
        }
        (None, Some(v)) => (key.to_string(), duration_value(key, v)?),
        (None, None) => return Ok(default),
    };
    if on_server {
        server_timeout(&name, d)
    } else {
        Ok(d)
    }
}

fn duration_value(what: &str, v: &DurationValue) -> Result<Duration> {
    match v {
        DurationValue::Seconds(0) => Err(crate::user_error!("{what} must be greater than zero")),
        DurationValue::Seconds(s) => Ok(Duration::from_secs(*s)),
        DurationValue::Text(t) => parse_duration(what, t),
    }
}

fn parse_conn(what: &str, text: &str) -> Result<ConnSpec> {
    ConnSpec::parse(text).map_err(|e| UserError::new(format!("{what}: {e}")).into())
}

/// Merge flags/env (already combined by clap), the config file and defaults.
/// `PGSHIFT_SWAP_MODE` for commands that have no `--swap-mode` flag.
fn env_swap_mode() -> Result<Option<SwapModeArg>> {
    use clap::ValueEnum;
    match std::env::var("PGSHIFT_SWAP_MODE") {
        Ok(v) if !v.trim().is_empty() => {
            SwapModeArg::from_str(v.trim(), true)
                .map(Some)
                .map_err(|_| {
                    UserError::new(format!(
                        "PGSHIFT_SWAP_MODE {v:?} is not a swap mode; use auto, object or rename"
                    ))
                    .into()
                })
        }
        _ => Ok(None),
    }
}

pub fn resolve(
    global: &GlobalArgs,
    cmd: &Command,
    file: Option<(PathBuf, FileConfig)>,
) -> Result<Settings> {
    let inputs = CommandInputs::from_command(cmd);
    let (config_file, f) = match file {
        Some((p, f)) => (Some(p), f),
        None => (None, FileConfig::default()),
    };
    let base_dir = config_file
        .as_ref()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let from_file_path = |p: &PathBuf| {
        if p.is_absolute() {
            p.clone()
        } else {
            base_dir.join(p)
        }
    };
    let mut warnings = Vec::new();

    let cpus = num_cpus::get().max(1);
    // Messages name the setting as it was given: the flag (or its variable),
    // else the config file's key.
    let (mut jobs, jobs_name) = match (global.jobs, f.jobs) {
        (Some(n), _) => (n, crate::cli::given_as("--jobs")),
        (None, Some(n)) => (n, "jobs".to_string()),
        (None, None) => (cpus.min(8), "--jobs".to_string()),
    };
    if jobs == 0 {
        crate::refuse!("{jobs_name} must be at least 1");
    }
    if jobs > cpus {
        warnings.push(format!(
            "{jobs_name} {jobs} is more than this machine's {cpus} CPUs; using {cpus}"
        ));
        jobs = cpus;
    }
    let (max_connections, max_name) = match (global.max_connections, f.max_connections) {
        (Some(n), _) => (n, crate::cli::given_as("--max-connections")),
        (None, Some(n)) => (n, "max_connections".to_string()),
        (None, None) => (20, "--max-connections".to_string()),
    };
    if max_connections < MIN_CONNECTIONS {
        crate::refuse!(
            "{max_name} must be at least {MIN_CONNECTIONS} (a lock session, a control session and one worker)"
        );
    }
    if jobs + 2 > max_connections {
        let capped = max_connections - 2;
        warnings.push(format!(
            "{jobs_name} {jobs} does not fit in {max_name} {max_connections}; using {capped} jobs"
        ));
        jobs = capped;
    }

    let connect_timeout = duration_setting(
        &global.connect_timeout,
        ("--connect-timeout", "connect_timeout"),
        &f.connect_timeout,
        Duration::from_secs(10),
        false,
    )?;
    let lock_timeout = duration_setting(
        &global.lock_timeout,
        ("--lock-timeout", "lock_timeout"),
        &f.lock_timeout,
        Duration::from_secs(1),
        true,
    )?;
    let statement_timeout = duration_setting(
        &None,
        ("", "statement_timeout"),
        &f.statement_timeout,
        Duration::from_secs(60),
        true,
    )?;

    let state_dir = match (&global.state_dir, &f.state_dir) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => from_file_path(d),
        (None, None) => PathBuf::from("."),
    };
    let dump_dir = inputs
        .dump_dir
        .clone()
        .or_else(|| f.dump_dir.as_ref().map(from_file_path));
    // A connection string given as a directory would be made a directory,
    // and written in the state file and the migration record.
    for (flag, key, given, dir) in [
        (
            "--state-dir",
            "state_dir",
            global.state_dir.is_some(),
            Some(&state_dir),
        ),
        (
            "--dump-dir",
            "dump_dir",
            inputs.dump_dir.is_some(),
            dump_dir.as_ref(),
        ),
    ] {
        if let Some(d) = dir
            && !crate::argv_scrub::embedded_password_spans(&d.to_string_lossy()).is_empty()
        {
            crate::refuse!(
                "{} holds a password: it is a connection string, not a directory; nothing was changed",
                if given {
                    crate::cli::given_as(flag)
                } else {
                    format!("{key} in the config file")
                }
            );
        }
    }
    if let Some(d) = &dump_dir
        && d.exists()
        && !d.is_dir()
    {
        crate::refuse!("--dump-dir: {} exists and is not a directory", d.display());
    }

    // An error names where the string came from: the flag (or its
    // environment variable), else the config file's key.
    let conn = |flag: &str, given: &Option<String>, key: &str, file: &Option<String>| match (
        given, file,
    ) {
        (Some(s), _) => parse_conn(&crate::cli::given_as(flag), s).map(Some),
        (None, Some(s)) => parse_conn(&format!("{key} in the config file"), s).map(Some),
        (None, None) => Ok(None),
    };
    let source = conn("--source", &inputs.source, "source_url", &f.source_url)?;
    let dest = conn("--dest", &inputs.dest, "dest_url", &f.dest_url)?;
    let preserved_raw = list_setting(
        &inputs.preserved_tables,
        ("--preserved-tables", "PGSHIFT_PRESERVED_TABLES"),
        &f.preserved_tables,
        "preserved_tables",
        "table names",
    )?;
    let preserved_shown = setting_shown(
        &inputs.preserved_tables,
        "--preserved-tables",
        "preserved_tables",
        f.preserved_tables.is_some(),
    );
    let mut preserved_tables = TableName::parse_list(&preserved_raw)
        .map_err(|e| UserError::new(format!("{preserved_shown}: {e}")))?;
    // One table named twice (`users,public.users`) is preserved once.
    let mut seen = std::collections::HashSet::new();
    preserved_tables.retain(|t| seen.insert((t.schema_or_public().to_string(), t.name.clone())));
    let schemas = parse_schemas(
        list_setting(
            &inputs.schemas,
            ("--schemas", "PGSHIFT_SCHEMAS"),
            &f.schemas,
            "schemas",
            "schema names",
        )?,
        &setting_shown(&inputs.schemas, "--schemas", "schemas", f.schemas.is_some()),
    )?;
    for t in &preserved_tables {
        if !schemas.iter().any(|s| s == t.schema_or_public()) {
            crate::refuse!(
                "{preserved_shown}: {t} is not in a schema the migration moves ({}){}",
                schemas
                    .iter()
                    .map(|s| crate::pg::ident::display_ident(s))
                    .collect::<Vec<_>>()
                    .join(", "),
                crate::pg::ident::fold_hint_among(t.schema_or_public(), &schemas)
            );
        }
    }

    let what = "table names, or all";
    // `status` has neither flag, but says whether `pgshift swap` would be
    // allowed in the same environment: it reads their variables itself.
    let judges_the_swap = matches!(cmd, Command::Status(_));
    let env_allow_discard = std::env::var("PGSHIFT_ALLOW_DISCARD")
        .ok()
        .filter(|_| judges_the_swap);
    let allow_discard_input = inputs.allow_discard.clone().or(env_allow_discard);
    let allow_discard_shown = setting_shown(
        &allow_discard_input,
        "--allow-discard",
        "allow_discard",
        f.allow_discard.is_some(),
    );
    let allow_discard = match (&allow_discard_input, &f.allow_discard) {
        (Some(v), _) => Some(
            list_items(
                "--allow-discard",
                Some("PGSHIFT_ALLOW_DISCARD"),
                std::slice::from_ref(v),
                what,
            )?
            .join(","),
        ),
        // An empty list is an explicit "none", as for the other lists.
        (None, Some(l)) => {
            Some(l.items("allow_discard", what)?.join(",")).filter(|v| !v.is_empty())
        }
        (None, None) => None,
    };
    let allow_discard = match allow_discard {
        None => AllowDiscard::Nothing,
        Some(v) => AllowDiscard::parse(&v).map_err(|e| {
            UserError::new(format!(
                "{allow_discard_shown}: {e} (give table names, comma separated, or all)"
            ))
        })?,
    };
    let roles_raw = list_setting(
        &inputs.workload_roles,
        ("--workload-roles", "PGSHIFT_WORKLOAD_ROLES"),
        &f.workload_roles,
        "workload_roles",
        "role names",
    )?;
    let workload_roles = parse_roles(
        &roles_raw,
        &setting_shown(
            &inputs.workload_roles,
            "--workload-roles",
            "workload_roles",
            f.workload_roles.is_some(),
        ),
    )?;
    let impact_timeout = duration_setting(
        &inputs.impact_timeout,
        ("--impact-timeout", "impact_timeout"),
        &f.impact_timeout,
        Duration::from_secs(30),
        true,
    )?;
    // Filters apply to the commands that take them; `rollback --keep-tables`
    // is its own flag (a config file's keep_tables never applies to it).
    let takes = |all: bool| match cmd {
        Command::Start(_) | Command::Prepare(_) => true,
        Command::Swap(_) => !all,
        _ => false,
    };
    let patterns = |(flag, env): (&str, &str),
                    given: &Option<Vec<String>>,
                    file: &Option<StringList>,
                    key: &str|
     -> Result<Vec<TablePattern>> {
        let raw = list_setting(given, (flag, env), file, key, "a pattern")?;
        let shown = setting_shown(given, flag, key, file.is_some());
        Ok(TablePattern::parse_list(&raw).map_err(|e| UserError::new(format!("{shown}: {e}")))?)
    };
    let mut filters = TableFilters::default();
    if takes(true) {
        filters.exclude_table_data = patterns(
            ("--exclude-table-data", "PGSHIFT_EXCLUDE_TABLE_DATA"),
            &inputs.exclude_table_data,
            &f.exclude_table_data,
            "exclude_table_data",
        )?;
        filters.exclude_table = patterns(
            ("--exclude-table", "PGSHIFT_EXCLUDE_TABLE"),
            &inputs.exclude_table,
            &f.exclude_table,
            "exclude_table",
        )?;
    }
    if takes(false) {
        filters.keep_tables = patterns(
            ("--keep-tables", "PGSHIFT_KEEP_TABLES"),
            &inputs.keep_tables,
            &f.keep_tables,
            "keep_tables",
        )?;
    }

    let verbosity = (global.verbose as i8).saturating_sub(global.quiet as i8);
    // What reading the connections' password files had to say (logging has
    // not started yet).
    warnings.extend(crate::pg::conn::connspec::take_early_warnings());
    Ok(Settings {
        json: switch(global.json, "PGSHIFT_JSON", f.json),
        verbosity,
        log_format: global
            .log_format
            .or(f.log_format)
            .unwrap_or(LogFormat::Text),
        jobs,
        max_connections,
        connect_timeout,
        swap: Policy {
            lock_timeout,
            statement_timeout,
            retries: inputs.swap_retries.or(f.swap_retries).unwrap_or(10),
            mode: match inputs.swap_mode {
                Some(m) => m,
                // Commands without the flag (prepare, status) weigh the swap's lock
                // budget for the mode the swap will use: PGSHIFT_SWAP_MODE, the file.
                None => env_swap_mode()?
                    .or(f.swap_mode)
                    .unwrap_or(SwapModeArg::Auto),
            }
            .into(),
        },
        state_dir,
        source,
        dest,
        preserved_tables,
        schemas,
        filters,
        dump_dir,
        keep_dump: switch(inputs.keep_dump, "PGSHIFT_KEEP_DUMP", f.keep_dump),
        verify: inputs.verify.or(f.verify).unwrap_or(VerifyMode::Counts),
        keep_source_owners: switch(
            inputs.keep_source_owners,
            "PGSHIFT_KEEP_SOURCE_OWNERS",
            f.keep_source_owners,
        ),
        no_tablespaces: switch(
            inputs.no_tablespaces,
            "PGSHIFT_NO_TABLESPACES",
            f.no_tablespaces,
        ),
        dry_run: inputs.dry_run,
        allow_fk_violations: switch(
            inputs.allow_fk_violations,
            "PGSHIFT_ALLOW_FK_VIOLATIONS",
            f.allow_fk_violations,
        ),
        keep_latest: inputs.keep_latest.or(f.keep_latest),
        impact: ImpactOptions {
            allow_discard,
            allow_discard_given_as: allow_discard_shown,
            fail_on_breaking: if judges_the_swap {
                env_switch("PGSHIFT_FAIL_ON_BREAKING")?
                    .or(f.fail_on_breaking)
                    .unwrap_or(false)
            } else {
                switch(
                    inputs.fail_on_breaking,
                    "PGSHIFT_FAIL_ON_BREAKING",
                    f.fail_on_breaking,
                )
            },
            workload: WorkloadOptions {
                roles: workload_roles,
                timeout: impact_timeout,
                ..WorkloadOptions::default()
            },
        },
        config_file,
        warnings,
    })
}

/// An on/off setting, flags > env > file: `cli` is what clap made of the flag
/// and its environment variable `env` (true from either); when it is false
/// and `env` is set (clap read a false value there), the environment's false
/// wins over the file.
fn switch(cli: bool, env: &str, file: Option<bool>) -> bool {
    if cli {
        return true;
    }
    if std::env::var_os(env).is_some_and(|v| !v.is_empty()) {
        return false;
    }
    file.unwrap_or(false)
}

/// An on/off variable read where its command has no flag (clap reads it
/// for the commands that have one), as clap would: None when unset; an
/// empty or padded value is refused, as the commands with the flag refuse it.
fn env_switch(name: &str) -> Result<Option<bool>> {
    let Ok(v) = std::env::var(name) else {
        return Ok(None);
    };
    match v.to_lowercase().as_str() {
        "y" | "yes" | "t" | "true" | "on" | "1" => Ok(Some(true)),
        "n" | "no" | "f" | "false" | "off" | "0" => Ok(Some(false)),
        _ => Err(UserError::new(format!(
            "{name} {v:?} is not on or off; use true or false (or unset it)"
        ))
        .into()),
    }
}

impl From<SwapModeArg> for ModeRequest {
    fn from(m: SwapModeArg) -> ModeRequest {
        match m {
            SwapModeArg::Auto => ModeRequest::Auto,
            SwapModeArg::Object => ModeRequest::Object,
            SwapModeArg::Rename => ModeRequest::Rename,
        }
    }
}

/// `--workload-roles`: role names as typed (`app`, `"App"`), never SQL.
/// Errors name the setting as `shown`.
fn parse_roles(items: &[String], shown: &str) -> Result<Vec<String>> {
    let mut roles: Vec<String> = Vec::new();
    for item in items {
        let bad = |why: String| UserError::new(format!("{shown}: {why}"));
        let name = TableName::parse(item).map_err(|e| {
            let e = e.to_string();
            bad(if e.contains("more than two parts") {
                format!("{} is not a role name (it has dots)", as_typed(item.trim()))
            } else {
                e.replacen("table name", "role name", 1)
            })
        })?;
        if name.schema.is_some() {
            return Err(bad(format!(
                "{} is not a role name (it has a dot)",
                as_typed(item.trim())
            ))
            .into());
        }
        if !roles.contains(&name.name) {
            roles.push(name.name);
        }
    }
    Ok(roles)
}

impl Settings {
    /// The destination, or a usage error saying every way to give one.
    pub fn require_dest(&self) -> Result<&ConnSpec> {
        self.dest.as_ref().ok_or_else(|| {
            UserError::new("no destination database: pass --dest URL, set PGSHIFT_DEST_URL, or set dest_url in pgshift.toml (`--dest postgresql://` takes it all from PGSERVICE and the PG* variables, as psql does)")
                .into()
        })
    }

    /// The source, or a usage error saying every way to give one.
    pub fn require_source(&self) -> Result<&ConnSpec> {
        self.source.as_ref().ok_or_else(|| {
            UserError::new("no source database: pass --source URL, set PGSHIFT_SOURCE_URL, or set source_url in pgshift.toml (`--source postgresql://` takes it all from PGSERVICE and the PG* variables, as psql does)")
                .into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn settings(args: &[&str], file: &str) -> Result<Settings> {
        let cli = Cli::try_parse_from(args).unwrap();
        let f = parse_file(file).map_err(|e| anyhow::anyhow!(e))?;
        resolve(
            &cli.global,
            &cli.command,
            Some((PathBuf::from("/etc/pgshift/pgshift.toml"), f)),
        )
    }

    /// The error of `settings`, which must refuse.
    fn settings_error(args: &[&str], file: &str) -> String {
        settings(args, file).unwrap_err().to_string()
    }

    #[test]
    fn flag_beats_file_and_defaults_apply() {
        let s = settings(
            &["pgshift", "--jobs", "1", "list", "--dest", "postgresql://a@flag/db"],
            "dest_url = 'postgresql://a@file/db'\njobs = 2\nlock_timeout = '250ms'\nstate_dir = 'st'\n",
        )
        .unwrap();
        assert!(s.dest.as_ref().unwrap().redacted().contains("@flag"));
        assert_eq!(s.jobs, 1);
        assert_eq!(s.swap.lock_timeout, Duration::from_millis(250));
        assert_eq!(s.connect_timeout, Duration::from_secs(10));
        assert_eq!(s.state_dir, PathBuf::from("/etc/pgshift/st"));
        assert_eq!(s.max_connections, 20);
        assert_eq!(s.swap.retries, 10);
    }

    #[test]
    fn file_supplies_what_flags_do_not() {
        let s = settings(
            &["pgshift", "list"],
            "dest_url = 'postgresql://a@file/db'\n",
        )
        .unwrap();
        assert!(s.dest.as_ref().unwrap().redacted().contains("@file"));
        let s = settings(&["pgshift", "list"], "").unwrap();
        let err = s.require_dest().unwrap_err().to_string();
        assert!(err.contains("PGSHIFT_DEST_URL"), "{err}");
        // A bad string from the file is named as the file's, not as a flag.
        let err = settings_error(&["pgshift", "list"], "dest_url = 'postgresql://a@h:x/db'\n");
        assert!(err.starts_with("dest_url in the config file: "), "{err}");
        let err = settings_error(&["pgshift", "list", "--dest", "postgresql://a@h:x/db"], "");
        assert!(err.starts_with("--dest: "), "{err}");
    }

    #[test]
    fn unknown_key_is_one_line_with_position() {
        let err = parse_file("jobs = 2\nbogus_key = 1\n").unwrap_err();
        assert!(err.contains("bogus_key"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn jobs_never_above_cpus() {
        let s = settings(&["pgshift", "--jobs", "4096", "list"], "").unwrap();
        assert_eq!(s.jobs, num_cpus::get().min(18));
        assert!(!s.warnings.is_empty());
        assert!(settings(&["pgshift", "--jobs", "0", "list"], "").is_err());
        // A file's value is named by its key, as the file spells it.
        let err = settings(&["pgshift", "list"], "jobs = 0\n").unwrap_err();
        assert_eq!(err.to_string(), "jobs must be at least 1");
        let err = settings(&["pgshift", "list"], "max_connections = 2\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("max_connections must be at least 3"),
            "{err}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("x", "500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_duration("x", "3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("x", "0").is_err());
        let err = parse_duration("--lock-timeout", "soon")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid --lock-timeout \"soon\""), "{err}");
    }

    #[test]
    fn preserved_tables_from_file_list_or_string() {
        let s = settings(
            &["pgshift", "list"],
            "preserved_tables = ['users', '\"Sessions\"']",
        )
        .unwrap();
        assert_eq!(s.preserved_tables.len(), 2);
        assert_eq!(s.preserved_tables[1].name, "Sessions");
        let s = settings(&["pgshift", "list"], "preserved_tables = 'a,b'").unwrap();
        assert_eq!(s.preserved_tables.len(), 2);
        // One table named several ways is preserved once.
        let s = settings(
            &["pgshift", "list"],
            "preserved_tables = 'users,public.users,\"users\",b'",
        )
        .unwrap();
        let names: Vec<String> = s.preserved_tables.iter().map(|t| t.to_string()).collect();
        assert_eq!(names, ["users", "b"]);
        let err = settings_error(&["pgshift", "list"], "preserved_tables = 'a;drop table b'");
        assert!(err.contains("semicolon"), "{err}");
        let err = settings_error(&["pgshift", "list"], "preserved_tables = 'other.users'");
        assert!(
            err.contains("not in a schema the migration moves (public)"),
            "{err}"
        );
    }

    #[test]
    fn impact_settings_from_flags_file_and_defaults() {
        let s = settings(&["pgshift", "status"], "").unwrap();
        assert_eq!(s.impact.allow_discard, AllowDiscard::Nothing);
        assert!(!s.impact.fail_on_breaking);
        assert!(s.impact.workload.roles.is_empty());
        assert_eq!(s.impact.workload.timeout, Duration::from_secs(30));

        let file = "allow_discard = ['orders', 'billing.invoices']\nfail_on_breaking = true\nworkload_roles = 'app,\"Reporting\"'\nimpact_timeout = '5s'\n";
        let s = settings(&["pgshift", "swap"], file).unwrap();
        assert_eq!(
            s.impact.allow_discard,
            AllowDiscard::parse("orders,billing.invoices").unwrap()
        );
        assert!(s.impact.fail_on_breaking);
        assert_eq!(s.impact.workload.roles, vec!["app", "Reporting"]);
        assert_eq!(s.impact.workload.timeout, Duration::from_secs(5));
        // Flags win.
        let s = settings(
            &[
                "pgshift",
                "swap",
                "--allow-discard",
                "all",
                "--impact-timeout",
                "250ms",
                "--workload-roles",
                "web",
            ],
            file,
        )
        .unwrap();
        assert_eq!(s.impact.allow_discard, AllowDiscard::All);
        assert_eq!(s.impact.workload.timeout, Duration::from_millis(250));
        assert_eq!(s.impact.workload.roles, vec!["web"]);

        for (args, fragment) in [
            (
                vec!["pgshift", "swap", "--allow-discard", "a;b"],
                "--allow-discard",
            ),
            (
                vec!["pgshift", "swap", "--impact-timeout", "0"],
                "--impact-timeout",
            ),
            (
                vec!["pgshift", "status", "--workload-roles", "a.b"],
                "--workload-roles",
            ),
            (
                vec!["pgshift", "status", "--workload-roles", "x y"],
                "role name",
            ),
        ] {
            let err = settings(&args, "").unwrap_err();
            assert!(err.to_string().contains(fragment), "{args:?}: {err}");
            assert_eq!(
                crate::error::exit_code_for(&err),
                crate::error::ExitCode::Usage
            );
        }
    }

    #[test]
    fn filters_from_flags_file_and_per_command() {
        let s = settings(
            &[
                "pgshift",
                "prepare",
                "--exclude-table",
                "log_*,\"A,B\"",
                "--exclude-table",
                "tmp?",
                "--keep-tables",
                "audit",
            ],
            "exclude_table_data = ['big', 'huge_*']\nkeep_tables = 'ignored_by_flag'\n",
        )
        .unwrap();
        let show = |v: &[TablePattern]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        assert_eq!(show(&s.filters.exclude_table), ["log_*", "\"A,B\"", "tmp?"]);
        assert_eq!(show(&s.filters.exclude_table_data), ["big", "huge_*"]);
        assert_eq!(show(&s.filters.keep_tables), ["audit"]);
        // swap takes --keep-tables only; rollback none of them (it has its own flag).
        let file = "exclude_table = 'x'\nkeep_tables = 'k1,k2'\n";
        let s = settings(&["pgshift", "swap"], file).unwrap();
        assert!(s.filters.exclude_table.is_empty());
        assert_eq!(show(&s.filters.keep_tables), ["k1", "k2"]);
        let s = settings(&["pgshift", "rollback", "--latest"], file).unwrap();
        assert_eq!(s.filters, TableFilters::default());
        let err = settings_error(&["pgshift", "prepare", "--keep-tables", "a.b.c"], "");
        assert!(err.starts_with("--keep-tables: "), "{err}");
        let err = settings_error(&["pgshift", "start"], "exclude_table = '\"open'");
        assert!(err.contains("unterminated quote"), "{err}");
    }

    #[test]
    fn preserved_tables_split_outside_quotes() {
        // As the filters' lists: a quoted name keeps its comma, from the flag
        // (and its variable) and from the file.
        let s = settings(
            &["pgshift", "prepare", "--preserved-tables", "\"a,b\",users"],
            "",
        )
        .unwrap();
        let names: Vec<&str> = s.preserved_tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a,b", "users"]);
        let s = settings(&["pgshift", "prepare"], "preserved_tables = '\"a,b\"'").unwrap();
        assert_eq!(s.preserved_tables[0].name, "a,b");
        let s = settings(
            &["pgshift", "status", "--workload-roles", "app,\"Web,2\""],
            "",
        )
        .unwrap();
        assert_eq!(s.impact.workload.roles, vec!["app", "Web,2"]);
    }

    #[test]
    fn empty_lists_and_items_are_refused() {
        // An empty value (an unset shell variable: `--exclude-table "$X"`)
        // must not silently mean "no filter", nor an empty item.
        for (args, want) in [
            (
                vec!["pgshift", "prepare", "--exclude-table="],
                "--exclude-table is empty: give a pattern, or leave the flag out",
            ),
            (
                vec!["pgshift", "prepare", "--exclude-table-data", " "],
                "--exclude-table-data is empty",
            ),
            (
                vec!["pgshift", "prepare", "--keep-tables="],
                "--keep-tables is empty",
            ),
            (
                vec!["pgshift", "swap", "--keep-tables="],
                "--keep-tables is empty",
            ),
            (
                vec!["pgshift", "prepare", "--exclude-table=,"],
                "--exclude-table: \",\" has an empty item",
            ),
            (
                vec!["pgshift", "prepare", "--exclude-table", "a,,b"],
                "--exclude-table: \"a,,b\" has an empty item",
            ),
            (
                vec!["pgshift", "prepare", "--preserved-tables="],
                "--preserved-tables is empty: give table names, or leave the flag out",
            ),
            (
                vec!["pgshift", "prepare", "--preserved-tables", "users,"],
                "--preserved-tables: \"users,\" has an empty item",
            ),
            (
                vec!["pgshift", "prepare", "--schemas="],
                "--schemas is empty",
            ),
            (
                vec!["pgshift", "status", "--workload-roles="],
                "--workload-roles is empty",
            ),
            (
                vec!["pgshift", "swap", "--allow-discard="],
                "--allow-discard is empty",
            ),
        ] {
            let err = settings(&args, "").unwrap_err();
            assert!(err.to_string().starts_with(want), "{args:?}: {err}");
            assert_eq!(
                crate::error::exit_code_for(&err),
                crate::error::ExitCode::Usage
            );
        }
        // The file's keys alike; an empty list is an explicit "none".
        let err = settings_error(&["pgshift", "prepare"], "exclude_table = ''");
        assert!(
            err.starts_with("exclude_table in the config file is empty"),
            "{err}"
        );
        let err = settings_error(&["pgshift", "prepare"], "keep_tables = ['a', '']");
        assert!(
            err.starts_with("keep_tables in the config file has an empty item"),
            "{err}"
        );
        let s = settings(&["pgshift", "prepare"], "exclude_table = []").unwrap();
        assert!(s.filters.is_empty());
        let s = settings(&["pgshift", "swap"], "allow_discard = []").unwrap();
        assert!(matches!(s.impact.allow_discard, AllowDiscard::Nothing));
        // An item the file gives is named by its key, not by a flag nobody typed.
        for (file, want) in [
            (
                "exclude_table = ['a.b.c']",
                "exclude_table in the config file: ",
            ),
            (
                "exclude_table_data = ['a.b.c']",
                "exclude_table_data in the config file: ",
            ),
            (
                "keep_tables = ['a.b.c']",
                "keep_tables in the config file: ",
            ),
            (
                "workload_roles = ['a.b']",
                "workload_roles in the config file: ",
            ),
            (
                "allow_discard = ['a.b.c']",
                "allow_discard in the config file: ",
            ),
        ] {
            let err = settings_error(&["pgshift", "prepare"], file);
            assert!(err.starts_with(want), "{file}: {err}");
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key() {
        for key in [
            "preserved_tables",
            "schemas",
            "exclude_table_data",
            "exclude_table",
            "keep_tables",
            "allow_discard",
            "workload_roles",
        ] {
            for value in ["5", "true", "[1, 2]", "{ a = 'b' }"] {
                let err = parse_file(&format!("jobs = 2\n{key} = {value}\n")).unwrap_err();
                assert!(
                    err.starts_with(&format!(
                        "{key} must be a list of strings or a comma-separated string"
                    )),
                    "{key} = {value}: {err}"
                );
                assert!(err.ends_with("(line 2)"), "{err}");
                assert!(!err.contains("untagged"), "{err}");
            }
        }
        for key in [
            "connect_timeout",
            "lock_timeout",
            "statement_timeout",
            "impact_timeout",
        ] {
            for value in ["true", "-5", "1.5", "['1s']"] {
                let err = parse_file(&format!("{key} = {value}\n")).unwrap_err();
                assert!(
                    err.starts_with(&format!(
                        "{key} must be a duration (\"500ms\", \"10s\", \"2m\") or a whole number of seconds"
                    )),
                    "{key} = {value}: {err}"
                );
                assert!(!err.contains("untagged"), "{err}");
            }
        }
        // Other keys are named too.
        let err = parse_file("jobs = 'four'\n").unwrap_err();
        assert_eq!(
            err,
            "jobs must be a whole number (0 or more), not string \"four\" (line 1)"
        );
        // What still parses, still parses.
        let f = parse_file("lock_timeout = 3\nconnect_timeout = '2s'\nschemas = ['public']\nexclude_table = 'a,b'\n").unwrap();
        assert!(matches!(f.lock_timeout, Some(DurationValue::Seconds(3))));
        assert!(matches!(f.exclude_table, Some(StringList::One(_))));
    }

    #[test]
    fn settings_debug_redacts() {
        let s = settings(
            &["pgshift", "list", "--dest", "postgresql://u:hunter2@h/db"],
            "",
        )
        .unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }
}
