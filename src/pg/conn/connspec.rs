//! Connection specs: what users pass to `--source` / `--dest`.
//!
//! [`ConnSpec::parse`] accepts the two libpq formats:
//!
//! * URLs: `postgresql://[user[:password]@][host][:port][,host2[:port2]...][/dbname][?param=value&...]`
//!   (also `postgres://`), percent-decoded everywhere, IPv6 hosts in brackets, a
//!   percent-encoded socket directory as host, query parameters overriding the rest;
//! * `key=value` conninfo strings, values optionally single-quoted with `\'` and `\\` escapes.
//!
//! Parameters that are not given come from a service file (`service=NAME` or
//! `PGSERVICE`, see [`service`](super::service)), then from the environment, the way
//! libpq does it (`PGHOST`, `PGPORT`, `PGUSER`, ..., the password file). The result is
//! fully resolved: every host has a port, there is always a user and a database name,
//! so children need neither the service file nor pgshift's environment.
//!
//! A `ConnSpec` never shows its password: [`Display`](std::fmt::Display) and
//! [`Debug`](std::fmt::Debug) both render the redacted URL
//! (`postgresql://user:***@host:5432/db`), and errors never quote the input.
//! Child processes (pg_dump, pg_restore, psql) get the connection through
//! [`ConnSpec::child_env`], never through their argv.

use itertools::Itertools;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use super::service::{self, ServiceError};
use crate::words::words;

/// The port libpq uses when none is given.
pub const DEFAULT_PORT: u16 = 5432;

/// Socket directories libpq builds use by default: Debian's, then upstream's.
/// The first one that exists is the default host; both count as `localhost`
/// when matching password file lines.
const DEFAULT_SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];

/// Keepalive defaults when the user gives none, so a dead server is noticed within
/// about a minute instead of the kernel's two hours.
const DEFAULT_KEEPALIVES_IDLE: u32 = 30;
const DEFAULT_KEEPALIVES_INTERVAL: u32 = 10;
const DEFAULT_KEEPALIVES_COUNT: u32 = 3;
// Data sent that the server never acknowledges (a route gone dead while
// pgshift waits for an answer) is no idle connection, which keepalives
// probe: `tcp_user_timeout` bounds that wait, by default as long as the
// keepalives take to give up (idle + interval × count).

words! {
    /// `sslmode`, in libpq's spelling. `allow` is accepted and treated like `prefer`.
    pub enum SslMode {
        Disable = "disable",
        Prefer = "prefer" | "allow",
        Require = "require",
        VerifyCa = "verify-ca",
        VerifyFull = "verify-full",
    }
}

impl SslMode {
    /// Whether the server certificate chain must be verified whatever the root files say.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl FromStr for SslMode {
    type Err = Problem;

    fn from_str(s: &str) -> Result<Self, Problem> {
        SslMode::from_word(s).ok_or_else(|| Problem::InvalidSslMode(shown(s)))
    }
}

/// Where the trusted root certificates come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file with one or more certificates.
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's trust store.
    System,
}

words! {
    /// `target_session_attrs`.
    pub enum TargetSessionAttrs {
        Any = "any",
        ReadWrite = "read-write",
        ReadOnly = "read-only",
        Primary = "primary",
        Standby = "standby",
        PreferStandby = "prefer-standby",
    }
}

words! {
    /// `channel_binding`.
    pub enum ChannelBinding {
        Disable = "disable",
        Prefer = "prefer",
        Require = "require",
    }
}

/// One host to try: a TCP host name / IP address or a Unix socket directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A host name or an IP address (IPv6 without brackets).
    Tcp(String),
    /// The directory holding the server's socket (`/var/run/postgresql`).
    Unix(PathBuf),
}

impl Host {
    fn from_libpq(s: &str) -> Host {
        if s.starts_with('/') {
            Host::Unix(PathBuf::from(s))
        } else {
            let s = s
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .unwrap_or(s);
            Host::Tcp(s.to_string())
        }
    }

    /// The libpq spelling (`db.example.com`, `::1`, `/tmp`).
    pub fn as_libpq(&self) -> String {
        match self {
            Host::Tcp(h) => h.clone(),
            Host::Unix(p) => p.display().to_string(),
        }
    }

    pub fn is_unix(&self) -> bool {
        matches!(self, Host::Unix(_))
    }
}

/// A host with its port and, optionally, the numeric address to use instead of a
/// name look-up (`hostaddr`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: Host,
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
}

impl Endpoint {
    /// For messages: `db.example.com:5432`, `[::1]:5432`, or the socket file
    /// `/tmp/.s.PGSQL.5432`.
    pub fn describe(&self) -> String {
        match (&self.host, self.hostaddr) {
            (Host::Unix(dir), _) => {
                format!("{}", dir.join(format!(".s.PGSQL.{}", self.port)).display())
            }
            (Host::Tcp(h), Some(addr)) if h != &addr.to_string() => {
                format!("{} ({}), port {}", h, addr, self.port)
            }
            (Host::Tcp(h), _) if h.contains(':') => format!("[{}]:{}", h, self.port),
            (Host::Tcp(h), _) => format!("{}:{}", h, self.port),
        }
    }
}

/// Where the password came from; decides whether a database change looks it up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PasswordSource {
    /// In the URL / conninfo string.
    Input,
    /// `PGPASSWORD`.
    Env,
    /// The password file.
    Passfile,
}

#[derive(Clone)]
struct Password {
    value: String,
    source: PasswordSource,
}

/// A parsed, fully resolved connection specification. See the module docs.
#[derive(Clone)]
pub struct ConnSpec {
    endpoints: Vec<Endpoint>,
    user: String,
    dbname: String,
    password: Option<Password>,
    sslmode: SslMode,
    sslrootcert: Option<RootCert>,
    sslcert: Option<PathBuf>,
    sslkey: Option<PathBuf>,
    /// `sslcertmode` is not `disable`: a client certificate is sent when one
    /// applies.
    client_cert: bool,
    application_name: Option<String>,
    options: Option<String>,
    /// Seconds; `None` waits forever (libpq: 0 or negative), at least 2 (libpq).
    connect_timeout: Option<u64>,
    target_session_attrs: TargetSessionAttrs,
    keepalives: bool,
    keepalives_idle: Option<u32>,
    keepalives_interval: Option<u32>,
    keepalives_count: Option<u32>,
    /// `tcp_user_timeout` in ms as given (0: the system's default).
    tcp_user_timeout: Option<u32>,
    channel_binding: Option<ChannelBinding>,
    /// The password file that was (or would be) read, and whether the user named it.
    passfile: Option<PathBuf>,
    passfile_explicit: bool,
    /// The home directory (for `~/.postgresql/root.crt` and friends).
    home: Option<PathBuf>,
}

/// Which syntax an error is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnSpecError {
    #[error("invalid connection URL: {0}")]
    Url(Problem),
    #[error("invalid connection string: {0}")]
    Conninfo(Problem),
    #[error("invalid {var} environment variable: {problem}")]
    Env { var: &'static str, problem: Problem },
    #[error("service file \"{}\", line {line}: {problem}", .file.display())]
    ServiceValue {
        file: PathBuf,
        line: usize,
        problem: Problem,
    },
    #[error("{0}")]
    Service(#[from] ServiceError),
    #[error("{0}")]
    Other(Problem),
}

impl ConnSpecError {
    /// What went wrong, without the context (`None` when the service file could not
    /// be used at all).
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ConnSpecError::Url(p) | ConnSpecError::Conninfo(p) | ConnSpecError::Other(p) => Some(p),
            ConnSpecError::Env { problem, .. } | ConnSpecError::ServiceValue { problem, .. } => {
                Some(problem)
            }
            ConnSpecError::Service(_) => None,
        }
    }
}

/// What is wrong with a connection string. Never carries a password or the raw input;
/// values quoted here are those of non-secret parameters, cut to a sane length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("empty connection string")]
    Empty,
    #[error(
        "the environment variable {0} is not valid UTF-8 (pgshift reads connection settings as UTF-8; give the value in the connection string instead)"
    )]
    EnvNotUnicode(String),
    #[error("expected a postgresql:// URL or key=value pairs")]
    NotAConnectionString,
    #[error("unknown parameter \"{0}\"")]
    UnknownParameter(String),
    #[error("unknown parameter (name not shown)")]
    UnknownParameterHidden,
    /// After an unquoted password: the "parameter" may be the rest of a
    /// password with a space in it, so its name is not shown either.
    #[error(
        "unknown parameter after the password (name not shown, as it may be the rest of the password: a password with spaces is written in single quotes, password='…')"
    )]
    UnknownParameterAfterPassword,
    #[error(
        "parameter \"{0}\" is libpq's, but pgshift does not support it (README, \"Connections, TLS and secrets\", lists the values of such parameters it passes over); leave it out only if the server does not need what it asks for"
    )]
    UnsupportedParameter(String),
    #[error(
        "pgshift does not check certificate revocation lists; unset it rather than connect without the check"
    )]
    RevocationListUnsupported,
    #[error("pgshift cannot {0}; unset it rather than connect without it")]
    CheckUnsupported(&'static str),
    #[error(
        "missing \"=\" after a parameter name (quote values containing spaces: password='a b')"
    )]
    MissingEquals,
    #[error("missing parameter name before \"=\"")]
    MissingKey,
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    #[error("invalid percent-encoding in the {0}")]
    BadPercentEncoding(&'static str),
    #[error("the {0} is not valid UTF-8 after percent-decoding")]
    NotUtf8(&'static str),
    #[error("the {0} contains %00")]
    NulByte(&'static str),
    #[error("missing \"]\" after an IPv6 host address")]
    UnclosedBracket,
    #[error(
        "unexpected character after \"]\" of an IPv6 host address (expected \":\", \",\" or \"/\")"
    )]
    AfterBracket,
    #[error(
        "\"@\" after the host part; percent-encode \"/\", \"?\", \"#\" and \"@\" in the user name and password (%2F, %3F, %23, %40)"
    )]
    StrayAt,
    /// A raw `/` or `?` in the user name or password (the authority ended
    /// there and an `@` follows), or a raw `#` in either.
    #[error(
        "a raw \"{0}\" in the user name or password; percent-encode \"/\", \"?\", \"#\" and \"@\" there (%2F, %3F, %23, %40)"
    )]
    RawInUserinfo(char),
    #[error(
        "more than one \"@\" before the host; percent-encode \"@\" in the user name and password (%40)"
    )]
    SeveralAts,
    #[error("invalid port \"{0}\"")]
    InvalidPort(String),
    #[error(
        "invalid port: not a number (not quoted: if the URL reads user:password/…, the \"@\" before the host is missing)"
    )]
    PortNotANumber,
    #[error("could not match {ports} port numbers to {hosts} hosts")]
    PortCount { ports: usize, hosts: usize },
    #[error("invalid hostaddr \"{0}\" (expected an IP address)")]
    InvalidHostaddr(String),
    #[error("could not match {hostaddrs} hostaddr values to {hosts} hosts")]
    HostaddrCount { hostaddrs: usize, hosts: usize },
    #[error(
        "invalid sslmode \"{0}\" (expected disable, allow, prefer, require, verify-ca or verify-full)"
    )]
    InvalidSslMode(String),
    #[error("weak sslmode \"{0}\" may not be used with sslrootcert=system (use \"verify-full\")")]
    WeakSslModeWithSystemRoots(SslMode),
    #[error(
        "invalid target_session_attrs \"{0}\" (expected any, read-write, read-only, primary, standby or prefer-standby)"
    )]
    InvalidTargetSessionAttrs(String),
    #[error("invalid channel_binding \"{0}\" (expected disable, prefer or require)")]
    InvalidChannelBinding(String),
    #[error("invalid sslcertmode \"{0}\" (expected disable or allow)")]
    InvalidSslCertMode(String),
    #[error(
        "pgshift cannot insist on sending a client certificate (sslcertmode=require); use allow or disable, or leave it out"
    )]
    SslCertModeRequire,
    #[error("invalid {param} \"{value}\" (expected a whole number)")]
    InvalidInteger { param: &'static str, value: String },
    #[error("cannot determine the user name: set user=... or PGUSER")]
    NoUser,
}

/// Every parameter pgshift accepts (libpq names).
const PARAMS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslcertmode",
    "application_name",
    "options",
    "connect_timeout",
    "target_session_attrs",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "channel_binding",
    "passfile",
    "service",
];

/// The environment variable libpq reads for a parameter's default.
fn env_var_for(param: &str) -> Option<&'static str> {
    Some(match param {
        "host" => "PGHOST",
        "hostaddr" => "PGHOSTADDR",
        "port" => "PGPORT",
        "dbname" => "PGDATABASE",
        "user" => "PGUSER",
        "password" => "PGPASSWORD",
        "sslmode" => "PGSSLMODE",
        "sslrootcert" => "PGSSLROOTCERT",
        "sslcert" => "PGSSLCERT",
        "sslkey" => "PGSSLKEY",
        "sslcertmode" => "PGSSLCERTMODE",
        "application_name" => "PGAPPNAME",
        "options" => "PGOPTIONS",
        "connect_timeout" => "PGCONNECT_TIMEOUT",
        "target_session_attrs" => "PGTARGETSESSIONATTRS",
        "channel_binding" => "PGCHANNELBINDING",
        "passfile" => "PGPASSFILE",
        _ => return None,
    })
}

/// Every libpq environment variable. Children get exactly [`ConnSpec::child_env`],
/// nothing inherited from pgshift's own environment.
const LIBPQ_ENV_VARS: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGCHANNELBINDING",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGAPPNAME",
    "PGSSLMODE",
    "PGREQUIRESSL",
    "PGSSLCOMPRESSION",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLCERTMODE",
    "PGSSLROOTCERT",
    "PGSSLCRL",
    "PGSSLCRLDIR",
    "PGSSLSNI",
    "PGSSLNEGOTIATION",
    "PGREQUIREPEER",
    "PGSSLMINPROTOCOLVERSION",
    "PGSSLMAXPROTOCOLVERSION",
    "PGMINPROTOCOLVERSION",
    "PGMAXPROTOCOLVERSION",
    "PGGSSENCMODE",
    "PGKRBSRVNAME",
    "PGGSSLIB",
    "PGGSSDELEGATION",
    "PGCONNECT_TIMEOUT",
    "PGCLIENTENCODING",
    "PGTARGETSESSIONATTRS",
    "PGLOADBALANCEHOSTS",
    "PGREQUIREAUTH",
    "PGOAUTHDEBUG",
    "PGDATESTYLE",
    "PGTZ",
    "PGGEQO",
    "PGSYSCONFDIR",
    "PGLOCALEDIR",
];

/// A value quoted in an error: cut so a pasted secret cannot fill the screen.
fn shown(value: &str) -> String {
    const MAX: usize = 40;
    if value.chars().count() <= MAX {
        value.to_string()
    } else {
        let cut: String = value.chars().take(MAX).collect();
        format!("{cut}...")
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Syntax {
    Url,
    Conninfo,
}

/// A parameter value and where it came from (for error context).
#[derive(Clone)]
struct Value {
    text: String,
    origin: Origin,
    /// Byte range of the raw (still encoded or quoted) value in the connection string,
    /// for values written there (see [`password_spans`]).
    span: Option<Range<usize>>,
}

/// Where a parameter's value came from.
#[derive(Clone)]
enum Origin {
    /// Written in the URL / conninfo string.
    Given,
    /// A `PG*` environment variable.
    Env(&'static str),
    /// A line of a service file.
    Service { file: PathBuf, line: usize },
}

/// Byte range of `part`, a sub-slice of `whole`, within `whole`.
fn span_in(whole: &str, part: &str) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// Where the passwords written in a URL or conninfo string are, as byte ranges of
/// `input` (the raw text: still percent-encoded, inside the quotes), for hiding them
/// from the process list (`crate::argv_scrub`). Empty when the string does not parse.
pub fn password_spans(input: &str) -> Vec<Range<usize>> {
    let trimmed = input.trim();
    let offset = span_in(input, trimmed).start;
    let lower_prefix: String = trimmed.chars().take(13).collect::<String>().to_lowercase();
    let url = lower_prefix.starts_with("postgresql://") || lower_prefix.starts_with("postgres://");
    let parsed = if url {
        parse_url(trimmed)
    } else {
        parse_conninfo(trimmed)
    };
    let spans: Vec<Range<usize>> = match parsed {
        Ok(values) => values
            .into_iter()
            .filter(|(k, v)| *k == "password" && !v.text.is_empty())
            .filter_map(|(_, v)| v.span)
            .collect(),
        // A string pgshift cannot parse (a parameter it does not know, a
        // typo) may still hold a password a message would quote.
        Err(_) => lexical_password_spans(trimmed, url),
    };
    spans
        .into_iter()
        .map(|r| r.start + offset..r.end + offset)
        .collect()
}

/// The passwords of a connection string that does not parse, found by its
/// shape alone: a URL's `user:PW@` and `password=PW` query values, a
/// conninfo's `password = PW` or `password='P W'`.
fn lexical_password_spans(s: &str, url: bool) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    if url {
        let Some(scheme_end) = s.find("://").map(|i| i + 3) else {
            return out;
        };
        // The authority ends at the first '/' or '?', as libpq reads it; one
        // without an '@' was cut short by a raw '/' or '?' in the password (why
        // the URL was refused): then it runs to the last '@' before the path,
        // so that the password is hidden whole.
        let first_end = s[scheme_end..]
            .find(['/', '?'])
            .map_or(s.len(), |i| scheme_end + i);
        let auth_end = if s[scheme_end..first_end].contains('@') {
            first_end
        } else {
            s[scheme_end..]
                .rfind('@')
                .and_then(|at| s[scheme_end + at..].find('/').map(|i| scheme_end + at + i))
                .unwrap_or(s.len())
        };
        if let Some(at) = s[scheme_end..auth_end].rfind('@').map(|i| scheme_end + i)
            && let Some(colon) = s[scheme_end..at].find(':').map(|i| scheme_end + i)
            && colon + 1 < at
        {
            out.push(colon + 1..at);
        }
        if let Some(q) = s.find('?') {
            let mut start = q + 1;
            for part in s[q + 1..].split(['&', '#']) {
                if let Some(v) = part.strip_prefix("password=").filter(|v| !v.is_empty()) {
                    let at = start + (part.len() - v.len());
                    out.push(at..at + v.len());
                }
                start += part.len() + 1;
            }
        }
        return out;
    }
    let mut i = 0;
    while let Some(found) = s[i..].find("password") {
        let key = i + found;
        i = key + "password".len();
        let before_ok = key == 0 || b[key - 1].is_ascii_whitespace();
        let mut j = i;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if !before_ok || j >= b.len() || b[j] != b'=' {
            continue;
        }
        j += 1;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        let quoted = j < b.len() && b[j] == b'\'';
        let start = if quoted { j + 1 } else { j };
        let mut end = start;
        if quoted {
            while end < b.len() && b[end] != b'\'' {
                end = (end + if b[end] == b'\\' { 2 } else { 1 }).min(b.len());
            }
        } else {
            while end < b.len() && !b[end].is_ascii_whitespace() {
                end += 1;
            }
        }
        if end > start {
            out.push(start..end);
        }
        i = end.max(i);
    }
    out
}

struct Params {
    syntax: Syntax,
    values: Vec<(&'static str, Value)>,
}

impl Params {
    fn get(&self, key: &str) -> Option<&Value> {
        self.values
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    fn error(&self, value: Option<&Value>, problem: Problem) -> ConnSpecError {
        match value.map(|v| &v.origin) {
            Some(Origin::Env(var)) => ConnSpecError::Env { var, problem },
            Some(Origin::Service { file, line }) => ConnSpecError::ServiceValue {
                file: file.clone(),
                line: *line,
                problem,
            },
            Some(Origin::Given) | None => match self.syntax {
                Syntax::Url => ConnSpecError::Url(problem),
                Syntax::Conninfo => ConnSpecError::Conninfo(problem),
            },
        }
    }
}

/// libpq's environment variables for checks pgshift's own sessions do not
/// make: the value that asks for one, and what it asks for.
type EnvCheck = (&'static str, fn(&str) -> bool, &'static str);
const ENV_CHECKS: &[EnvCheck] = &[
    (
        "PGGSSENCMODE",
        |v| v == "require",
        "encrypt with GSSAPI (gssencmode=require)",
    ),
    (
        "PGSSLMINPROTOCOLVERSION",
        |v| v.eq_ignore_ascii_case("TLSv1.3"),
        "hold TLS to version 1.3 at the least (it takes 1.2 and 1.3)",
    ),
    (
        "PGSSLMAXPROTOCOLVERSION",
        |v| !v.is_empty() && !v.eq_ignore_ascii_case("TLSv1.3"),
        "hold TLS below version 1.3",
    ),
    (
        "PGREQUIREPEER",
        |v| !v.is_empty(),
        "check the server process's operating-system user (requirepeer)",
    ),
    (
        "PGREQUIREAUTH",
        |v| !v.is_empty(),
        "restrict how the server may authenticate it (require_auth)",
    ),
];

/// libpq's parameters that pgshift does not take (its own connections do
/// not implement them): refused by name, as not supported rather than
/// unknown.
const LIBPQ_ONLY: &[&str] = &[
    "client_encoding",
    "fallback_application_name",
    "gssencmode",
    "gssdelegation",
    "gsslib",
    "krbsrvname",
    "load_balance_hosts",
    "replication",
    "require_auth",
    "requirepeer",
    "ssl_max_protocol_version",
    "ssl_min_protocol_version",
    "sslcompression",
    "sslcrl",
    "sslcrldir",
    "sslkeylogfile",
    "sslnegotiation",
    "sslpassword",
    "sslsni",
    "tcp_user_timeout",
    "max_protocol_version",
    "min_protocol_version",
    "oauth_issuer",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_scope",
    "scram_client_key",
    "scram_server_key",
];

/// A parameter of libpq's that pgshift does not take, given a value that
/// asks no more than pgshift does (libpq's default, mostly): passed over as
/// its environment variable is (a string copied from another tool works),
/// where another value is refused by name.
fn harmless(key: &str, value: &str) -> bool {
    if !LIBPQ_ONLY.contains(&key) {
        return false;
    }
    let v = value.trim().to_ascii_lowercase();
    match key {
        "gssencmode" => matches!(v.as_str(), "disable" | "prefer"),
        "sslsni" => v == "1",
        "sslcompression" => v == "0",
        "sslnegotiation" => v == "postgres",
        // pgshift's sessions speak TLS 1.2 and 1.3.
        "ssl_min_protocol_version" => matches!(v.as_str(), "tlsv1" | "tlsv1.1" | "tlsv1.2"),
        "ssl_max_protocol_version" => v == "tlsv1.3",
        "load_balance_hosts" => v == "disable",
        "client_encoding" => matches!(v.as_str(), "utf8" | "utf-8" | "unicode"),
        // pgshift always names its sessions (application_name).
        "fallback_application_name" => true,
        _ => false,
    }
}

fn known_param(key: &str) -> Result<&'static str, Problem> {
    PARAMS.iter().copied().find(|p| *p == key).ok_or_else(|| {
        let plausible = !key.is_empty()
            && key.len() <= 40
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if LIBPQ_ONLY.contains(&key) {
            Problem::UnsupportedParameter(key.to_string())
        } else if plausible {
            Problem::UnknownParameter(key.to_string())
        } else {
            Problem::UnknownParameterHidden
        }
    })
}

impl ConnSpec {
    /// Parse a URL or conninfo string, filling in defaults from the process
    /// environment the way libpq does.
    pub fn parse(input: &str) -> Result<ConnSpec, ConnSpecError> {
        // A variable that is not UTF-8 is an error, not a variable unset: a
        // PGPASSWORD skipped so made ~/.pgpass answer in its place.
        let not_unicode = std::cell::RefCell::new(None);
        let spec = Self::parse_with_env(input, &|name| match std::env::var(name) {
            Ok(v) => Some(v),
            Err(std::env::VarError::NotUnicode(_)) => {
                not_unicode
                    .borrow_mut()
                    .get_or_insert_with(|| name.to_string());
                None
            }
            Err(std::env::VarError::NotPresent) => None,
        });
        match not_unicode.into_inner() {
            Some(name) => Err(ConnSpecError::Other(Problem::EnvNotUnicode(name))),
            None => spec,
        }
    }

    /// Like [`parse`](Self::parse) with an explicit environment (for tests): `env` is
    /// asked for the `PG*` variables and `HOME`. The operating-system user name (the
    /// last-resort default user) and the default socket directory still come from the
    /// machine.
    pub fn parse_with_env(
        input: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ConnSpec, ConnSpecError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(ConnSpecError::Other(Problem::Empty));
        }
        let lower_prefix: String = trimmed.chars().take(13).collect::<String>().to_lowercase();
        let mut params = if lower_prefix.starts_with("postgresql://")
            || lower_prefix.starts_with("postgres://")
        {
            Params {
                syntax: Syntax::Url,
                values: parse_url(trimmed).map_err(ConnSpecError::Url)?,
            }
        } else if trimmed.contains('=') {
            Params {
                syntax: Syntax::Conninfo,
                values: parse_conninfo(trimmed).map_err(ConnSpecError::Conninfo)?,
            }
        } else {
            return Err(ConnSpecError::Other(Problem::NotAConnectionString));
        };
        // An empty value means "not given", as for libpq's password and host.
        params.values.retain(|(_, v)| !v.text.is_empty());
        // A revocation list the operator relies on must not be skipped
        // silently (pg_dump would check it, pgshift's own sessions not).
        for var in ["PGSSLCRL", "PGSSLCRLDIR"] {
            if env(var).is_some_and(|v| !v.is_empty()) {
                return Err(ConnSpecError::Env {
                    var,
                    problem: Problem::RevocationListUnsupported,
                });
            }
        }
        // Nor any other check libpq would make that pgshift's sessions do
        // not (their keywords are refused by name in the string itself). A
        // value that asks for no more than pgshift does passes.
        for (var, asks_more, what) in ENV_CHECKS {
            if env(var).is_some_and(|v| asks_more(v.trim())) {
                return Err(ConnSpecError::Env {
                    var,
                    problem: Problem::CheckUnsupported(what),
                });
            }
        }
        build(params, env)
    }

    /// This spec with only its `index`th host: the server a session was
    /// opened on, so that later sessions and children (a snapshot's
    /// importers, pg_dump) reach that same server.
    pub fn pinned(&self, index: usize) -> ConnSpec {
        let mut s = self.clone();
        s.endpoints = vec![self.endpoints[index].clone()];
        s.password = self.password_for(index);
        s
    }

    /// The password for the `index`th host: the one given, else that host's
    /// own password-file entry, if any (libpq looks the file up per host, and
    /// never sends one host's password to another).
    fn password_for(&self, index: usize) -> Option<Password> {
        match &self.password {
            Some(p) if p.source != PasswordSource::Passfile => Some(p.clone()),
            _ => {
                let e = &self.endpoints[index];
                let path = self.passfile.as_ref()?;
                pgpass_lookup(path, e, &self.dbname, &self.user).map(|value| Password {
                    value,
                    source: PasswordSource::Passfile,
                })
            }
        }
    }

    /// The hosts to try, in order, each with its port.
    pub fn hosts(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The port of the first host.
    pub fn port(&self) -> u16 {
        self.endpoints[0].port
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn dbname(&self) -> &str {
        &self.dbname
    }

    pub fn sslmode(&self) -> SslMode {
        self.sslmode
    }

    pub fn sslrootcert(&self) -> Option<&RootCert> {
        self.sslrootcert.as_ref()
    }

    pub fn sslcert(&self) -> Option<&Path> {
        self.sslcert.as_deref()
    }

    pub fn sslkey(&self) -> Option<&Path> {
        self.sslkey.as_deref()
    }

    pub fn application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }

    pub fn target_session_attrs(&self) -> TargetSessionAttrs {
        self.target_session_attrs
    }

    /// `connect_timeout`, if any (at least 2 seconds, like libpq).
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout.map(Duration::from_secs)
    }

    /// Whether a password is known (given, from `PGPASSWORD` or from the password file).
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// `~/.postgresql`, where libpq looks for `root.crt`, `postgresql.crt` and `postgresql.key`.
    pub fn postgresql_dir(&self) -> Option<PathBuf> {
        self.home.as_ref().map(|h| h.join(".postgresql"))
    }

    /// True when every host is a Unix socket (TLS is never used then, as with libpq).
    pub fn all_unix_sockets(&self) -> bool {
        self.endpoints.iter().all(|e| e.host.is_unix())
    }

    /// The same connection to another database on the same server(s). A password
    /// that came from the password file is looked up again for the new database.
    pub fn with_dbname(&self, dbname: &str) -> ConnSpec {
        let mut spec = self.clone();
        spec.dbname = dbname.to_string();
        if spec
            .password
            .as_ref()
            .is_none_or(|p| p.source == PasswordSource::Passfile)
        {
            spec.password = spec.passfile_password();
        }
        spec
    }

    /// The same connection with another `application_name`.
    pub fn with_application_name(&self, name: &str) -> ConnSpec {
        let mut spec = self.clone();
        spec.application_name = Some(name.to_string());
        spec
    }

    /// The password-free URL shown to people:
    /// `postgresql://user:***@host:5432/db?sslmode=require`.
    pub fn redacted(&self) -> String {
        const USERINFO: &AsciiSet = &CONTROLS
            .add(b' ')
            .add(b':')
            .add(b'@')
            .add(b'/')
            .add(b'?')
            .add(b'#')
            .add(b'[')
            .add(b']')
            .add(b'%')
            .add(b'&')
            .add(b'=')
            .add(b'+')
            .add(b',');
        const HOST: &AsciiSet = &USERINFO.remove(b'+');
        const PATH: &AsciiSet = &CONTROLS
            .add(b' ')
            .add(b'/')
            .add(b'?')
            .add(b'#')
            .add(b'%')
            .add(b'@');
        const QUERY: &AsciiSet = &CONTROLS
            .add(b' ')
            .add(b'&')
            .add(b'=')
            .add(b'#')
            .add(b'%')
            .add(b'+');

        let mut out = String::from("postgresql://");
        out.push_str(&utf8_percent_encode(&self.user, USERINFO).to_string());
        if self.password.is_some() {
            out.push_str(":***");
        }
        out.push('@');
        let mut query: Vec<(&str, String)> = Vec::new();
        if self.all_unix_sockets() {
            let hosts: Vec<String> = self.endpoints.iter().map(|e| e.host.as_libpq()).collect();
            query.push(("host", hosts.join(",")));
            let ports: Vec<u16> = self.endpoints.iter().map(|e| e.port).collect();
            if ports.iter().any(|p| *p != ports[0]) {
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                query.push(("port", ports.join(",")));
            } else if ports[0] != DEFAULT_PORT {
                query.push(("port", ports[0].to_string()));
            }
        } else {
            let parts: Vec<String> = self
                .endpoints
                .iter()
                .map(|e| {
                    let host = match &e.host {
                        Host::Tcp(h) if h.contains(':') => format!("[{h}]"),
                        Host::Tcp(h) => utf8_percent_encode(h, HOST).to_string(),
                        Host::Unix(p) => {
                            utf8_percent_encode(&p.display().to_string(), HOST).to_string()
                        }
                    };
                    format!("{host}:{}", e.port)
                })
                .collect();
            out.push_str(&parts.join(","));
        }
        out.push('/');
        // A connection string given as the database's name (libpq takes it
        // as a name, `PGDATABASE=postgresql://app:pw@…`) keeps its password.
        let secrets = crate::argv_scrub::secret_arguments(&[
            std::ffi::OsString::new(),
            (&self.dbname).into(),
        ]);
        let dbname = crate::argv_scrub::scrub_message(&self.dbname, &secrets);
        out.push_str(&utf8_percent_encode(&dbname, PATH).to_string());
        if let Some(addrs) = self.hostaddrs() {
            query.push(("hostaddr", addrs));
        }
        if self.sslmode != SslMode::Prefer {
            query.push(("sslmode", self.sslmode.as_str().to_string()));
        }
        if self.target_session_attrs != TargetSessionAttrs::Any {
            query.push((
                "target_session_attrs",
                self.target_session_attrs.as_str().to_string(),
            ));
        }
        for (i, (k, v)) in query.iter().enumerate() {
            out.push(if i == 0 { '?' } else { '&' });
            out.push_str(k);
            out.push('=');
            out.push_str(&utf8_percent_encode(v, QUERY).to_string());
        }
        out
    }

    /// `hostaddr` as libpq reads it, one entry per host (empty where a host has
    /// none); None when no host has one.
    fn hostaddrs(&self) -> Option<String> {
        self.endpoints
            .iter()
            .any(|e| e.hostaddr.is_some())
            .then(|| {
                self.endpoints
                    .iter()
                    .map(|e| e.hostaddr.map(|a| a.to_string()).unwrap_or_default())
                    .join(",")
            })
    }

    /// The environment for a libpq child process (pg_dump, pg_restore, psql). Together
    /// with removing [`child_env_remove`](Self::child_env_remove) it is all the child
    /// knows about the connection: nothing goes into its argv.
    pub fn child_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        let mut put = |k: &str, v: String| env.push((k.to_string(), v));
        let hosts: Vec<String> = self.endpoints.iter().map(|e| e.host.as_libpq()).collect();
        put("PGHOST", hosts.join(","));
        if let Some(addrs) = self.hostaddrs() {
            put("PGHOSTADDR", addrs);
        }
        let ports: Vec<u16> = self.endpoints.iter().map(|e| e.port).collect();
        if ports.iter().all(|p| *p == ports[0]) {
            put("PGPORT", ports[0].to_string());
        } else {
            let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
            put("PGPORT", ports.join(","));
        }
        put("PGUSER", self.user.clone());
        put("PGDATABASE", self.dbname.clone());
        if let Some(p) = &self.password {
            put("PGPASSWORD", p.value.clone());
        }
        if self.passfile_explicit
            && let Some(f) = &self.passfile
        {
            put("PGPASSFILE", f.display().to_string());
        }
        put("PGSSLMODE", self.sslmode.as_str().to_string());
        match self.effective_root_cert() {
            Some(RootCert::System) => put("PGSSLROOTCERT", "system".to_string()),
            Some(RootCert::File(f)) => put("PGSSLROOTCERT", f.display().to_string()),
            None => {}
        }
        if let Some((cert, key)) = self.effective_client_cert() {
            put("PGSSLCERT", cert.display().to_string());
            put("PGSSLKEY", key.display().to_string());
        } else if !self.client_cert {
            // libpq 16 on knows sslcertmode; an older one sends
            // `~/.postgresql/postgresql.crt` unless sslcert names a file that
            // is not there (ENOTDIR: no certificate, as with ENOENT).
            put("PGSSLCERTMODE", "disable".to_string());
            put("PGSSLCERT", "/dev/null/no-client-certificate".to_string());
        }
        if let Some(a) = &self.application_name {
            put("PGAPPNAME", a.clone());
        }
        if let Some(o) = &self.options {
            put("PGOPTIONS", o.clone());
        }
        if let Some(t) = self.connect_timeout {
            put("PGCONNECT_TIMEOUT", t.to_string());
        }
        if self.target_session_attrs != TargetSessionAttrs::Any {
            put(
                "PGTARGETSESSIONATTRS",
                self.target_session_attrs.as_str().to_string(),
            );
        }
        if let Some(cb) = self.channel_binding {
            put("PGCHANNELBINDING", cb.as_str().to_string());
        }
        env
    }

    /// Every libpq environment variable a child must not inherit from pgshift's own
    /// environment (remove these, then set [`child_env`](Self::child_env)).
    pub fn child_env_remove() -> &'static [&'static str] {
        LIBPQ_ENV_VARS
    }

    /// The root certificates that apply: `sslrootcert`, else libpq's default
    /// `~/.postgresql/root.crt` when that file exists.
    pub fn effective_root_cert(&self) -> Option<RootCert> {
        match &self.sslrootcert {
            Some(r) => Some(r.clone()),
            None => self
                .postgresql_dir()
                .map(|d| d.join("root.crt"))
                .filter(|p| p.is_file())
                .map(RootCert::File),
        }
    }

    /// The client certificate and key that apply: `sslcert`/`sslkey`, else libpq's
    /// defaults `~/.postgresql/postgresql.crt` / `.key` when the certificate exists.
    /// None with `sslcertmode=disable`.
    pub fn effective_client_cert(&self) -> Option<(PathBuf, PathBuf)> {
        if !self.client_cert {
            return None;
        }
        let dir = self.postgresql_dir();
        let cert = match &self.sslcert {
            Some(c) => c.clone(),
            None => dir
                .as_ref()
                .map(|d| d.join("postgresql.crt"))
                .filter(|p| p.is_file())?,
        };
        let key = match &self.sslkey {
            Some(k) => k.clone(),
            None => dir
                .map(|d| d.join("postgresql.key"))
                .unwrap_or_else(|| PathBuf::from("postgresql.key")),
        };
        Some((cert, key))
    }

    /// Configuration for tokio-postgres. `verify-ca`/`verify-full` become `Require`: the
    /// TLS connector from [`make_tls`](crate::pg::conn::tls::make_tls) does the verifying.
    /// The TCP user timeout for pgshift's sessions: `tcp_user_timeout` as
    /// given (0: none of pgshift's, the system's), else with keepalives on
    /// as long as they take to give up.
    fn tcp_user_timeout(&self) -> Option<Duration> {
        match self.tcp_user_timeout {
            Some(0) => None,
            Some(ms) => Some(Duration::from_millis(u64::from(ms))),
            None if self.keepalives => {
                let idle = self
                    .keepalives_idle
                    .unwrap_or(DEFAULT_KEEPALIVES_IDLE)
                    .max(1);
                let interval = self
                    .keepalives_interval
                    .unwrap_or(DEFAULT_KEEPALIVES_INTERVAL)
                    .max(1);
                let count = self
                    .keepalives_count
                    .unwrap_or(DEFAULT_KEEPALIVES_COUNT)
                    .max(1);
                Some(Duration::from_secs(
                    u64::from(idle) + u64::from(interval) * u64::from(count),
                ))
            }
            None => None,
        }
    }

    pub fn pg_config(&self) -> tokio_postgres::Config {
        self.pg_config_for(&self.endpoints)
    }

    /// Like [`pg_config`](Self::pg_config) for the `index`th host alone (connect tries
    /// hosts one by one to report each failure).
    pub fn pg_config_for_host(&self, index: usize) -> tokio_postgres::Config {
        let mut me = self.clone();
        me.password = self.password_for(index);
        me.pg_config_for(std::slice::from_ref(&self.endpoints[index]))
    }

    fn pg_config_for(&self, endpoints: &[Endpoint]) -> tokio_postgres::Config {
        use tokio_postgres::config::{
            ChannelBinding as PgCb, SslMode as PgSsl, TargetSessionAttrs as PgTsa,
        };
        let mut c = tokio_postgres::Config::new();
        c.user(&self.user);
        c.dbname(&self.dbname);
        if let Some(p) = &self.password {
            c.password(p.value.as_bytes());
        }
        for e in endpoints {
            match &e.host {
                Host::Tcp(h) => c.host(h),
                Host::Unix(p) => c.host_path(p),
            };
            c.port(e.port);
        }
        if endpoints.iter().all(|e| e.hostaddr.is_some()) {
            for e in endpoints {
                c.hostaddr(e.hostaddr.expect("checked"));
            }
        }
        // libpq never uses TLS over Unix sockets (and the server refuses it there).
        let all_unix = endpoints.iter().all(|e| e.host.is_unix());
        c.ssl_mode(match self.sslmode {
            _ if all_unix => PgSsl::Disable,
            SslMode::Disable => PgSsl::Disable,
            SslMode::Prefer => PgSsl::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSsl::Require,
        });
        if let Some(a) = &self.application_name {
            c.application_name(a);
        }
        if let Some(o) = &self.options {
            c.options(o);
        }
        if let Some(t) = self.connect_timeout {
            c.connect_timeout(Duration::from_secs(t));
        }
        c.keepalives(self.keepalives);
        c.keepalives_idle(Duration::from_secs(u64::from(
            self.keepalives_idle
                .unwrap_or(DEFAULT_KEEPALIVES_IDLE)
                .max(1),
        )));
        c.keepalives_interval(Duration::from_secs(u64::from(
            self.keepalives_interval
                .unwrap_or(DEFAULT_KEEPALIVES_INTERVAL)
                .max(1),
        )));
        c.keepalives_retries(
            self.keepalives_count
                .unwrap_or(DEFAULT_KEEPALIVES_COUNT)
                .max(1),
        );
        if let Some(t) = self.tcp_user_timeout() {
            c.tcp_user_timeout(t);
        }
        // tokio-postgres knows any / read-write / read-only. `connect` and
        // `pool` check primary, standby and prefer-standby themselves, as
        // libpq does (from pg_is_in_recovery()), and ask tokio-postgres for
        // any; the mapping below is for callers of this config alone.
        c.target_session_attrs(match self.target_session_attrs {
            TargetSessionAttrs::Any | TargetSessionAttrs::PreferStandby => PgTsa::Any,
            TargetSessionAttrs::ReadWrite | TargetSessionAttrs::Primary => PgTsa::ReadWrite,
            TargetSessionAttrs::ReadOnly | TargetSessionAttrs::Standby => PgTsa::ReadOnly,
        });
        c.channel_binding(match self.channel_binding {
            Some(ChannelBinding::Disable) => PgCb::Disable,
            None | Some(ChannelBinding::Prefer) => PgCb::Prefer,
            Some(ChannelBinding::Require) => PgCb::Require,
        });
        c
    }

    /// A first, cheap check that two specs name the same database on the same server:
    /// some host of one equals some host of the other (`localhost`, `127.0.0.1` and `::1`
    /// count as equal; socket directories compare by canonical path), with the same port,
    /// and the database names are equal. pgshift compares server identities in SQL too.
    pub fn same_server_and_db(&self, other: &ConnSpec) -> bool {
        if self.dbname != other.dbname {
            return false;
        }
        let keys: Vec<(String, u16)> = self.endpoints.iter().map(endpoint_key).collect();
        other
            .endpoints
            .iter()
            .map(endpoint_key)
            .any(|k| keys.contains(&k))
    }

    fn passfile_password(&self) -> Option<Password> {
        let path = self.passfile.as_ref()?;
        self.endpoints.iter().find_map(|e| {
            pgpass_lookup(path, e, &self.dbname, &self.user).map(|value| Password {
                value,
                source: PasswordSource::Passfile,
            })
        })
    }
}

fn endpoint_key(e: &Endpoint) -> (String, u16) {
    let host = match (&e.host, e.hostaddr) {
        (_, Some(addr)) => normal_ip(addr),
        (Host::Tcp(h), None) => {
            let h = h.trim_end_matches('.').to_ascii_lowercase();
            match h.parse::<IpAddr>() {
                Ok(addr) => normal_ip(addr),
                Err(_) if h == "localhost" => "loopback".to_string(),
                Err(_) => h,
            }
        }
        (Host::Unix(p), None) => {
            let canonical = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
            format!("unix:{}", canonical.display())
        }
    };
    (host, e.port)
}

fn normal_ip(addr: IpAddr) -> String {
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    };
    if addr.is_loopback() {
        "loopback".to_string()
    } else {
        addr.to_string()
    }
}

impl fmt::Display for ConnSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for ConnSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ConnSpec")
            .field(&format_args!("{}", self.redacted()))
            .finish()
    }
}

impl FromStr for ConnSpec {
    type Err = ConnSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConnSpec::parse(s)
    }
}

// ---------------------------------------------------------------------------------
// Syntax

fn decode(raw: &str, what: &'static str) -> Result<String, Problem> {
    // Validate the escapes first: percent_decode_str passes bad ones through silently.
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or(Problem::BadPercentEncoding(what))?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(Problem::BadPercentEncoding(what));
            }
            if hex == b"00" {
                return Err(Problem::NulByte(what));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| Problem::NotUtf8(what))
}

/// `postgresql://...` into (parameter, value) pairs, later pairs winning.
fn parse_url(input: &str) -> Result<Vec<(&'static str, Value)>, Problem> {
    let scheme_end = input.find("://").expect("checked by caller") + 3;
    let rest = &input[scheme_end..];
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let mut out: Vec<(&'static str, Value)> = Vec::new();
    let mut push = |k: &'static str, text: String, raw: Option<&str>| {
        let span = raw.map(|r| span_in(input, r));
        out.push((
            k,
            Value {
                text,
                origin: Origin::Given,
                span,
            },
        ))
    };

    // A raw '@' after the host part almost always means a password with an unencoded
    // '/', '?' or '#'; refuse before any of it can end up in a host or database name,
    // naming the character that ended the user part early when there was no '@' before.
    let stray_at = || match tail.chars().next() {
        // The first of them: a '#' before it did not end the user part.
        Some(c @ ('/' | '?')) if !authority.contains('@') => {
            Problem::RawInUserinfo(if authority.contains('#') { '#' } else { c })
        }
        _ => Problem::StrayAt,
    };
    let path_part = tail.split('?').next().unwrap_or("");
    if path_part.contains('@') {
        return Err(stray_at());
    }

    // libpq ends the user part at the first '@', and would take the rest for
    // the host: a second one is refused rather than read either way.
    if authority.matches('@').count() > 1 {
        return Err(Problem::SeveralAts);
    }
    let hostlist = match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            // libpq takes a raw '#' there; RFC 3986 starts a fragment at it.
            if userinfo.contains('#') {
                return Err(Problem::RawInUserinfo('#'));
            }
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            push("user", decode(user, "user name")?, Some(user));
            if let Some(p) = password {
                push("password", decode(p, "password")?, Some(p));
            }
            &authority[at + 1..]
        }
        None => authority,
    };

    if !hostlist.is_empty() {
        let (hosts, ports) = split_url_hosts(hostlist)?;
        for p in &ports {
            if !p.bytes().all(|b| b.is_ascii_digit()) && tail.contains('@') {
                return Err(stray_at());
            }
        }
        if hosts.len() > 1 || hosts.iter().any(|h| !h.is_empty()) {
            push("host", hosts.join(","), None);
        }
        if ports.iter().any(|p| !p.is_empty()) {
            push("port", ports.join(","), None);
        }
    }

    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    if let Some(db) = path.strip_prefix('/')
        && !db.is_empty()
    {
        push("dbname", decode(db, "database name")?, Some(db));
    }
    if let Some(query) = query {
        for piece in query.split('&').filter(|p| !p.is_empty()) {
            let Some((k, v)) = piece.split_once('=') else {
                return Err(if piece.contains('@') {
                    stray_at()
                } else {
                    Problem::MissingEquals
                });
            };
            let key = decode(k, "query parameter name")?;
            let value = decode(v, "query parameter value")?;
            if key == "ssl" && value == "true" {
                // JDBC compatibility, as libpq.
                push("sslmode", "require".to_string(), Some(v));
                continue;
            }
            if harmless(&key, &value) {
                continue;
            }
            let key = known_param(&key)?;
            push(key, value, Some(v));
        }
    }
    Ok(out)
}

/// `h1:5432,[::1]:5433,%2Ftmp` into decoded hosts and ports (empty when absent).
fn split_url_hosts(list: &str) -> Result<(Vec<String>, Vec<String>), Problem> {
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for entry in list.split(',') {
        let (host, port) = if let Some(inner) = entry.strip_prefix('[') {
            let close = inner.find(']').ok_or(Problem::UnclosedBracket)?;
            let host = &inner[..close];
            let after = &inner[close + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => p,
                None if after.is_empty() => "",
                None => return Err(Problem::AfterBracket),
            };
            (host, port)
        } else {
            match entry.split_once(':') {
                Some((h, p)) => (h, p),
                None => (entry, ""),
            }
        };
        hosts.push(decode(host, "host")?);
        ports.push(decode(port, "port")?);
    }
    Ok((hosts, ports))
}

/// `key=value key2='quoted \' value'` into (parameter, value) pairs.
fn parse_conninfo(input: &str) -> Result<Vec<(&'static str, Value)>, Problem> {
    let chars: Vec<char> = input.chars().collect();
    // Byte offset of each char (and of the end), for the values' spans.
    let offsets: Vec<usize> = input
        .char_indices()
        .map(|(b, _)| b)
        .chain([input.len()])
        .collect();
    let mut i = 0;
    let mut out = Vec::new();
    // After an unquoted password, an unknown "parameter" is most likely the rest of a
    // password containing a space: never show its name.
    let mut after_unquoted_password = false;
    loop {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i == chars.len() {
            break;
        }
        let key_start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[key_start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i == chars.len() || chars[i] != '=' {
            return Err(Problem::MissingEquals);
        }
        if key.is_empty() {
            return Err(Problem::MissingKey);
        }
        i += 1;
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        let quoted = i < chars.len() && chars[i] == '\'';
        let raw_start = i + usize::from(quoted);
        let raw_end;
        if quoted {
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(Problem::UnterminatedQuote),
                    Some('\\') => {
                        let c = chars.get(i + 1).ok_or(Problem::UnterminatedQuote)?;
                        value.push(*c);
                        i += 2;
                    }
                    Some('\'') => {
                        raw_end = i;
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
            raw_end = i;
        }
        if harmless(&key, &value) {
            after_unquoted_password = false;
            continue;
        }
        let key = match known_param(&key) {
            Err(Problem::UnknownParameter(_) | Problem::UnknownParameterHidden)
                if after_unquoted_password =>
            {
                return Err(Problem::UnknownParameterAfterPassword);
            }
            other => other?,
        };
        after_unquoted_password = key == "password" && !quoted;
        out.push((
            key,
            Value {
                text: value,
                origin: Origin::Given,
                span: Some(offsets[raw_start]..offsets[raw_end]),
            },
        ));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// Resolution

fn env_nonempty(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.is_empty())
}

fn parse_uint(params: &Params, key: &'static str) -> Result<Option<i64>, ConnSpecError> {
    let Some(v) = params.get(key) else {
        return Ok(None);
    };
    v.text.trim().parse::<i64>().map(Some).map_err(|_| {
        params.error(
            Some(v),
            Problem::InvalidInteger {
                param: key,
                value: shown(&v.text),
            },
        )
    })
}

fn parse_nonneg_u32(params: &Params, key: &'static str) -> Result<Option<u32>, ConnSpecError> {
    match parse_uint(params, key)? {
        None => Ok(None),
        Some(n) => u32::try_from(n).map(Some).map_err(|_| {
            let v = params.get(key);
            params.error(
                v,
                Problem::InvalidInteger {
                    param: key,
                    value: shown(&v.map(|v| v.text.clone()).unwrap_or_default()),
                },
            )
        }),
    }
}

fn build(
    mut params: Params,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ConnSpec, ConnSpecError> {
    let home = env_nonempty(env, "HOME")
        .map(PathBuf::from)
        .or_else(os_home_dir);

    // The service file fills in what the string leaves out, before the environment
    // (libpq: given > service file > PG* variables > defaults).
    let service = match params.get("service") {
        Some(v) => Some(v.text.clone()),
        None => env_nonempty(env, "PGSERVICE"),
    };
    if let Some(name) = service {
        let found = service::lookup(&name, env, home.as_deref())?;
        for setting in found.settings {
            if harmless(&setting.keyword, &setting.value) {
                continue;
            }
            // A parameter of libpq's that pgshift does not take is said so,
            // as in a string; a word libpq does not know is its syntax error.
            if let Err(problem @ Problem::UnsupportedParameter(_)) = known_param(&setting.keyword) {
                return Err(ConnSpecError::ServiceValue {
                    file: found.file.clone(),
                    line: setting.line,
                    problem,
                });
            }
            let key = known_param(&setting.keyword)
                .ok()
                .filter(|k| *k != "service")
                .ok_or_else(|| ServiceError::UnknownKeyword {
                    file: found.file.clone(),
                    line: setting.line,
                    keyword: shown(&setting.keyword),
                })?;
            if params.get(key).is_none() && !setting.value.is_empty() {
                params.values.push((
                    key,
                    Value {
                        text: setting.value,
                        origin: Origin::Service {
                            file: found.file.clone(),
                            line: setting.line,
                        },
                        span: None,
                    },
                ));
            }
        }
    }

    // Environment defaults for everything not given.
    for key in PARAMS {
        if params.get(key).is_none()
            && let Some(var) = env_var_for(key)
            && let Some(text) = env_nonempty(env, var)
        {
            params.values.push((
                key,
                Value {
                    text,
                    origin: Origin::Env(var),
                    span: None,
                },
            ));
        }
    }

    // Hosts, addresses, ports.
    let hostaddrs: Option<Vec<IpAddr>> = match params.get("hostaddr") {
        None => None,
        Some(v) => Some(
            v.text
                .split(',')
                .map(|a| {
                    a.trim()
                        .parse::<IpAddr>()
                        .map_err(|_| params.error(Some(v), Problem::InvalidHostaddr(shown(a))))
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let default_host = default_socket_dir();
    let hosts: Vec<Host> = match (params.get("host"), &hostaddrs) {
        (Some(v), _) => v
            .text
            .split(',')
            .enumerate()
            .map(|(i, h)| {
                if h.is_empty() {
                    match hostaddrs.as_ref().and_then(|a| a.get(i)) {
                        Some(addr) => Host::Tcp(addr.to_string()),
                        None => Host::Unix(PathBuf::from(&default_host)),
                    }
                } else {
                    Host::from_libpq(h)
                }
            })
            .collect(),
        (None, Some(addrs)) => addrs.iter().map(|a| Host::Tcp(a.to_string())).collect(),
        (None, None) => vec![Host::Unix(PathBuf::from(&default_host))],
    };
    if let Some(addrs) = &hostaddrs
        && addrs.len() != hosts.len()
    {
        return Err(params.error(
            params.get("hostaddr"),
            Problem::HostaddrCount {
                hostaddrs: addrs.len(),
                hosts: hosts.len(),
            },
        ));
    }
    let ports: Vec<u16> = match params.get("port") {
        None => vec![DEFAULT_PORT],
        Some(v) => v
            .text
            .split(',')
            .map(|p| {
                let p = p.trim();
                if p.is_empty() {
                    return Ok(DEFAULT_PORT);
                }
                // In a URL, `user:password/db` without its "@" reads as
                // host:port: a port that is no number is not quoted there.
                let hidden = matches!(params.syntax, Syntax::Url)
                    && matches!(v.origin, Origin::Given)
                    && !p.bytes().all(|b| b.is_ascii_digit());
                p.parse::<u16>().ok().filter(|n| *n != 0).ok_or_else(|| {
                    let problem = if hidden {
                        Problem::PortNotANumber
                    } else {
                        Problem::InvalidPort(shown(p))
                    };
                    params.error(Some(v), problem)
                })
            })
            .collect::<Result<_, _>>()?,
    };
    if ports.len() != 1 && ports.len() != hosts.len() {
        return Err(params.error(
            params.get("port"),
            Problem::PortCount {
                ports: ports.len(),
                hosts: hosts.len(),
            },
        ));
    }
    let endpoints: Vec<Endpoint> = hosts
        .into_iter()
        .enumerate()
        .map(|(i, host)| Endpoint {
            host,
            hostaddr: hostaddrs.as_ref().map(|a| a[i]),
            port: if ports.len() == 1 { ports[0] } else { ports[i] },
        })
        .collect();

    let user = match params.get("user") {
        Some(v) => v.text.clone(),
        None => os_user_name().ok_or(ConnSpecError::Other(Problem::NoUser))?,
    };
    let dbname = params
        .get("dbname")
        .map(|v| v.text.clone())
        .unwrap_or_else(|| user.clone());

    let sslmode_value = params.get("sslmode");
    let mut sslmode = match sslmode_value {
        None => SslMode::Prefer,
        Some(v) => v
            .text
            .parse::<SslMode>()
            .map_err(|p| params.error(Some(v), p))?,
    };
    let sslrootcert = params.get("sslrootcert").map(|v| {
        if v.text == "system" {
            RootCert::System
        } else {
            RootCert::File(PathBuf::from(&v.text))
        }
    });
    if sslrootcert == Some(RootCert::System) {
        // libpq 16: system roots make verify-full the default and weaker modes an error.
        match sslmode_value {
            None => sslmode = SslMode::VerifyFull,
            Some(v) if sslmode != SslMode::VerifyFull => {
                return Err(params.error(Some(v), Problem::WeakSslModeWithSystemRoots(sslmode)));
            }
            Some(_) => {}
        }
    }

    let connect_timeout = parse_uint(&params, "connect_timeout")?
        .filter(|t| *t > 0)
        .map(|t| t.max(2) as u64);
    let keepalives = parse_uint(&params, "keepalives")?.is_none_or(|k| k != 0);
    let keepalives_idle = parse_nonneg_u32(&params, "keepalives_idle")?.filter(|n| *n > 0);
    let keepalives_interval = parse_nonneg_u32(&params, "keepalives_interval")?.filter(|n| *n > 0);
    let keepalives_count = parse_nonneg_u32(&params, "keepalives_count")?.filter(|n| *n > 0);
    let tcp_user_timeout = parse_nonneg_u32(&params, "tcp_user_timeout")?;

    let target_session_attrs = match params.get("target_session_attrs") {
        None => TargetSessionAttrs::Any,
        Some(v) => TargetSessionAttrs::from_word(&v.text).ok_or_else(|| {
            params.error(Some(v), Problem::InvalidTargetSessionAttrs(shown(&v.text)))
        })?,
    };
    let channel_binding = match params.get("channel_binding") {
        None => None,
        Some(v) => Some(ChannelBinding::from_word(&v.text).ok_or_else(|| {
            params.error(Some(v), Problem::InvalidChannelBinding(shown(&v.text)))
        })?),
    };

    // `sslcertmode`: `allow` (the default) sends a certificate when one
    // applies, `disable` never does; `require` is a check pgshift's sessions
    // do not make.
    let client_cert = match params.get("sslcertmode") {
        None => true,
        Some(v) => match v.text.as_str() {
            "allow" => true,
            "disable" => false,
            "require" => return Err(params.error(Some(v), Problem::SslCertModeRequire)),
            other => return Err(params.error(Some(v), Problem::InvalidSslCertMode(shown(other)))),
        },
    };

    let passfile_explicit = params.get("passfile").is_some();
    let passfile = match params.get("passfile") {
        Some(v) => Some(PathBuf::from(&v.text)),
        None => home.as_ref().map(|h| h.join(".pgpass")),
    };

    let password = params.get("password").map(|v| Password {
        value: v.text.clone(),
        source: match v.origin {
            Origin::Env(_) => PasswordSource::Env,
            Origin::Given | Origin::Service { .. } => PasswordSource::Input,
        },
    });

    let mut spec = ConnSpec {
        endpoints,
        user,
        dbname,
        password,
        sslmode,
        sslrootcert,
        sslcert: params.get("sslcert").map(|v| PathBuf::from(&v.text)),
        sslkey: params.get("sslkey").map(|v| PathBuf::from(&v.text)),
        client_cert,
        application_name: params.get("application_name").map(|v| v.text.clone()),
        options: params.get("options").map(|v| v.text.clone()),
        connect_timeout,
        target_session_attrs,
        keepalives,
        keepalives_idle,
        keepalives_interval,
        keepalives_count,
        tcp_user_timeout,
        channel_binding,
        passfile,
        passfile_explicit,
        home,
    };
    if spec.password.is_none() {
        spec.password = spec.passfile_password();
    }
    Ok(spec)
}

fn default_socket_dir() -> String {
    DEFAULT_SOCKET_DIRS
        .iter()
        .find(|d| Path::new(d).is_dir())
        .unwrap_or(&DEFAULT_SOCKET_DIRS[1])
        .to_string()
}

/// The effective user's passwd entry: (name, home directory).
fn passwd_entry() -> Option<(String, PathBuf)> {
    use std::ffi::CStr;
    use std::os::unix::ffi::OsStrExt;
    let mut buf = vec![0u8; 16 * 1024];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: buf outlives the call and the borrowed strings are copied out before it is
    // dropped; getpwuid_r writes only within buf and pwd.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_name and pw_dir point to NUL-terminated strings inside buf.
    let (name, dir) = unsafe { (CStr::from_ptr(pwd.pw_name), CStr::from_ptr(pwd.pw_dir)) };
    let name = name.to_str().ok()?.to_string();
    let dir = PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes()));
    Some((name, dir))
}

fn os_user_name() -> Option<String> {
    passwd_entry().map(|(name, _)| name)
}

fn os_home_dir() -> Option<PathBuf> {
    passwd_entry().map(|(_, dir)| dir)
}

// ---------------------------------------------------------------------------------
// Password file

/// The host names a password-file line is matched against, in order: the
/// host (the address when only `hostaddr` was given); for a default socket
/// directory `localhost` first, then the directory itself. libpq matches
/// `localhost` for the socket directory it was built with and the path for
/// any other (Debian's is `/var/run/postgresql`, PostgreSQL's own `/tmp`):
/// either habit finds its line.
fn pgpass_hosts(e: &Endpoint) -> Vec<String> {
    match &e.host {
        Host::Unix(p) if DEFAULT_SOCKET_DIRS.iter().any(|d| Path::new(d) == p) => {
            vec!["localhost".to_string(), e.host.as_libpq()]
        }
        h => vec![h.as_libpq()],
    }
}

/// The password-file entry of endpoint `e`, if any (see [`pgpass_hosts`]).
fn pgpass_lookup(path: &Path, e: &Endpoint, dbname: &str, user: &str) -> Option<String> {
    pgpass_hosts(e)
        .iter()
        .find_map(|host| lookup_pgpass(path, host, e.port, dbname, user))
}

/// Warnings of password-file lookups made before logging starts (the
/// configuration, with its connection strings, is resolved first): the
/// configuration hands them on with its own warnings
/// ([`take_early_warnings`]).
static EARLY_WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The warnings already given, so each is given once per run (every
/// connection looks the password file up again).
static WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Log `msg` now, or keep it for when logging has started; once per run.
fn warn_now_or_later(msg: String) {
    match WARNED.lock() {
        Ok(seen) if seen.contains(&msg) => return,
        Ok(mut seen) => seen.push(msg.clone()),
        Err(_) => {}
    }
    if tracing::dispatcher::has_been_set() {
        tracing::warn!("{msg}");
    } else if let Ok(mut w) = EARLY_WARNINGS.lock() {
        w.push(msg);
    }
}

/// The warnings kept by [`warn_now_or_later`] so far (each once).
pub fn take_early_warnings() -> Vec<String> {
    EARLY_WARNINGS
        .lock()
        .map(|mut w| std::mem::take(&mut *w))
        .unwrap_or_default()
}

/// Look a password up in a libpq password file. The file is ignored (with a warning)
/// when it is not a plain file or is readable by group or others, like libpq does.
pub fn lookup_pgpass(
    path: &Path,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        warn_now_or_later(format!(
            "password file \"{}\" is not a plain file; ignoring it",
            path.display()
        ));
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        warn_now_or_later(format!(
            "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less; ignoring it",
            path.display()
        ));
        return None;
    }
    let contents = std::fs::read_to_string(path).ok()?;
    pgpass_match(&contents, host, &port.to_string(), dbname, user)
}

/// The password of the first line matching (host, port, dbname, user): fields separated
/// by `:`, `*` matching anything, `\` escaping `:` and `\`, `#` lines being comments.
pub fn pgpass_match(
    contents: &str,
    host: &str,
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<String> {
    for line in contents.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut rest = line;
        let mut ok = true;
        for token in [host, port, dbname, user] {
            match pgpass_field(rest, token) {
                Some(r) => rest = r,
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            continue;
        }
        let mut password = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                ':' => break,
                '\\' => match chars.next() {
                    Some(n) => password.push(n),
                    None => password.push('\\'),
                },
                c => password.push(c),
            }
        }
        return Some(password);
    }
    None
}

/// libpq's `pwdfMatchesString`: the rest of the line after a field that matches `token`.
/// An unescaped `:` ends the field only once the token is used up (so `::1` matches an
/// unescaped `::1`, as in libpq).
fn pgpass_field<'a>(field_start: &'a str, token: &str) -> Option<&'a str> {
    if let Some(rest) = field_start.strip_prefix("*:") {
        return Some(rest);
    }
    let mut tok = token.chars().peekable();
    let mut it = field_start.char_indices();
    while let Some((i, c)) = it.next() {
        let (c, escaped) = if c == '\\' {
            match it.next() {
                Some((_, n)) => (n, true),
                None => return None,
            }
        } else {
            (c, false)
        };
        if c == ':' && !escaped && tok.peek().is_none() {
            return Some(&field_start[i + 1..]);
        }
        if tok.next() != Some(c) {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const SECRET: &str = "Sup3rS3cretPw";

    /// A hermetic environment: PGUSER=tester, HOME without a .pgpass, plus `pairs`.
    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let mut map: Vec<(String, String)> = vec![
            ("PGUSER".into(), "tester".into()),
            ("HOME".into(), "/nonexistent/pgshift-test-home".into()),
        ];
        for (k, v) in pairs {
            map.retain(|(mk, _)| mk != k);
            map.push(((*k).into(), (*v).into()));
        }
        move |k: &str| map.iter().find(|(mk, _)| mk == k).map(|(_, v)| v.clone())
    }

    fn parse(input: &str) -> ConnSpec {
        ConnSpec::parse_with_env(input, &env_of(&[])).expect("parses")
    }

    fn parse_env(input: &str, pairs: &[(&str, &str)]) -> ConnSpec {
        ConnSpec::parse_with_env(input, &env_of(pairs)).expect("parses")
    }

    fn err(input: &str) -> String {
        ConnSpec::parse_with_env(input, &env_of(&[]))
            .expect_err("must fail")
            .to_string()
    }

    fn err_env(input: &str, pairs: &[(&str, &str)]) -> String {
        ConnSpec::parse_with_env(input, &env_of(pairs))
            .expect_err("must fail")
            .to_string()
    }

    /// Each input is refused, and no form of the error (`Display`, `Debug`,
    /// pretty `Debug`) shows SECRET or any of `also_hidden`.
    fn refused_without_echo<S: AsRef<str>>(inputs: &[S], also_hidden: &[&str]) {
        for input in inputs {
            let e = ConnSpec::parse_with_env(input.as_ref(), &env_of(&[])).expect_err("must fail");
            let shown = format!("{e} {e:?} {e:#?}");
            assert!(!shown.contains(SECRET), "{shown}");
            for h in also_hidden {
                assert!(!shown.contains(h), "{shown}");
            }
        }
    }

    fn tcp(h: &str, port: u16) -> Endpoint {
        Endpoint {
            host: Host::Tcp(h.into()),
            hostaddr: None,
            port,
        }
    }

    fn unix(dir: &str, port: u16) -> Endpoint {
        Endpoint {
            host: Host::Unix(dir.into()),
            hostaddr: None,
            port,
        }
    }

    fn password(spec: &ConnSpec) -> Option<String> {
        spec.password.as_ref().map(|p| p.value.clone())
    }

    fn child(spec: &ConnSpec, key: &str) -> Option<String> {
        spec.child_env()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    // ---- URLs ----------------------------------------------------------------

    #[test]
    fn url_full() {
        let s = parse(
            "postgresql://app:s3cret@db.example.com:6432/shop?sslmode=require&application_name=x",
        );
        assert_eq!(s.hosts(), &[tcp("db.example.com", 6432)]);
        assert_eq!(s.user(), "app");
        assert_eq!(password(&s).as_deref(), Some("s3cret"));
        assert_eq!(s.dbname(), "shop");
        assert_eq!(s.sslmode(), SslMode::Require);
        assert_eq!(s.application_name(), Some("x"));
        assert_eq!(s.port(), 6432);
    }

    #[test]
    fn url_postgres_scheme_and_case() {
        let s = parse("postgres://u@h/d");
        assert_eq!((s.user(), s.dbname()), ("u", "d"));
        let s = parse("PostgreSQL://u@h/d");
        assert_eq!(s.hosts(), &[tcp("h", 5432)]);
    }

    #[test]
    fn url_defaults_from_env() {
        let s = parse("postgresql://h");
        assert_eq!(s.user(), "tester");
        assert_eq!(s.dbname(), "tester");
        assert_eq!(s.port(), 5432);
        assert_eq!(s.sslmode(), SslMode::Prefer);
        assert!(!s.has_password());
    }

    #[test]
    fn url_empty_everything() {
        let s = parse("postgresql://");
        assert_eq!(s.hosts(), &[unix(&default_socket_dir(), 5432)]);
        assert_eq!(s.user(), "tester");
        let s = parse("postgresql:///");
        assert_eq!(s.dbname(), "tester");
    }

    #[test]
    fn url_percent_decoding_everywhere() {
        let s = parse(
            "postgresql://us%40er:p%40ss%2Fw%3Ard%25@h%2Dx:5432/my%20db?application_name=a%26b%3Dc",
        );
        assert_eq!(s.user(), "us@er");
        assert_eq!(password(&s).as_deref(), Some("p@ss/w:rd%"));
        assert_eq!(s.hosts(), &[tcp("h-x", 5432)]);
        assert_eq!(s.dbname(), "my db");
        assert_eq!(s.application_name(), Some("a&b=c"));
        // '+' is not a space in libpq URLs.
        assert_eq!(parse("postgresql://h/a+b").dbname(), "a+b");
        // Unicode.
        assert_eq!(parse("postgresql://h/caf%C3%A9").dbname(), "café");
    }

    #[test]
    fn url_raw_at_in_password_is_refused() {
        // libpq reads user "u", password "p" and host "ss@h" here; pgshift
        // reads it neither way.
        assert_eq!(
            err("postgresql://u:p@ss@h/d"),
            "invalid connection URL: more than one \"@\" before the host; percent-encode \"@\" in the user name and password (%40)"
        );
        let s = parse("postgresql://u:p%40ss@h/d");
        assert_eq!(password(&s).as_deref(), Some("p@ss"));
        assert_eq!(s.hosts(), &[tcp("h", 5432)]);
    }

    #[test]
    fn url_user_without_password_and_empty_password() {
        let s = parse("postgresql://u@h/d");
        assert!(!s.has_password());
        let s = parse("postgresql://u:@h/d");
        assert!(!s.has_password());
        assert_eq!(s.user(), "u");
        // A colon inside the password stays in the password.
        let s = parse("postgresql://u:a:b@h/d");
        assert_eq!(password(&s).as_deref(), Some("a:b"));
    }

    #[test]
    fn url_ipv6() {
        assert_eq!(
            parse("postgresql://[::1]:5433/d").hosts(),
            &[tcp("::1", 5433)]
        );
        assert_eq!(
            parse("postgresql://[2001:db8::1]/d").hosts(),
            &[tcp("2001:db8::1", 5432)]
        );
        assert_eq!(
            parse("postgresql://u@[fe80::1%25eth0]:1/d").hosts(),
            &[tcp("fe80::1%eth0", 1)]
        );
        assert_eq!(
            parse("postgresql://[::1],[::2]:6000/d").hosts(),
            &[tcp("::1", 5432), tcp("::2", 6000)]
        );
        assert!(err("postgresql://[::1/d").contains(r#"missing "]""#));
        assert!(err("postgresql://[::1]x/d").contains("unexpected character"));
    }

    #[test]
    fn url_multi_host() {
        let s = parse("postgresql://u@h1:5432,h2:5433,h3/d?target_session_attrs=read-write");
        assert_eq!(
            s.hosts(),
            &[tcp("h1", 5432), tcp("h2", 5433), tcp("h3", 5432)]
        );
        assert_eq!(s.target_session_attrs(), TargetSessionAttrs::ReadWrite);
        assert_eq!(s.port(), 5432);
        // One port for all hosts.
        let s = parse("postgresql://h1,h2:6000/d");
        assert_eq!(s.hosts(), &[tcp("h1", 5432), tcp("h2", 6000)]);
    }

    #[test]
    fn url_socket_path_as_host() {
        let s = parse("postgresql://%2Fvar%2Frun%2Fpostgresql/db");
        assert_eq!(s.hosts(), &[unix("/var/run/postgresql", 5432)]);
        assert_eq!(s.dbname(), "db");
        let s = parse("postgresql://u@%2Ftmp%2Fsock:5499/db");
        assert_eq!(s.hosts(), &[unix("/tmp/sock", 5499)]);
        assert!(s.all_unix_sockets());
    }

    #[test]
    fn url_query_overrides() {
        let s = parse("postgresql:///db?host=/tmp&port=5499");
        assert_eq!(s.hosts(), &[unix("/tmp", 5499)]);
        let s = parse("postgresql://ignored:1/db?host=/tmp");
        assert_eq!(s.hosts(), &[unix("/tmp", 1)]);
        let s = parse("postgresql://u@h/db?user=other&dbname=x&password=pw");
        assert_eq!((s.user(), s.dbname()), ("other", "x"));
        assert_eq!(password(&s).as_deref(), Some("pw"));
        // Last one wins, empty pieces ignored.
        let s = parse("postgresql://h/db?sslmode=disable&&sslmode=require&");
        assert_eq!(s.sslmode(), SslMode::Require);
    }

    #[test]
    fn url_ssl_true_is_require() {
        assert_eq!(
            parse("postgresql://h/d?ssl=true").sslmode(),
            SslMode::Require
        );
        assert_eq!(
            err("postgresql://h/d?ssl=false"),
            r#"invalid connection URL: unknown parameter "ssl""#
        );
    }

    #[test]
    fn url_errors() {
        assert_eq!(
            err("postgresql://h:abc/d"),
            r#"invalid connection URL: invalid port: not a number (not quoted: if the URL reads user:password/…, the "@" before the host is missing)"#
        );
        assert_eq!(
            err("postgresql://h:0/d"),
            r#"invalid connection URL: invalid port "0""#
        );
        assert_eq!(
            err("postgresql://h:65536/d"),
            r#"invalid connection URL: invalid port "65536""#
        );
        assert_eq!(
            err("postgresql://h/d?foo=1"),
            r#"invalid connection URL: unknown parameter "foo""#
        );
        assert_eq!(
            err("postgresql://h/d?sslmode=bogus"),
            "invalid connection URL: invalid sslmode \"bogus\" (expected disable, allow, prefer, require, verify-ca or verify-full)"
        );
        assert!(err("postgresql://h/d?sslmode").contains(r#"missing "=""#));
        assert!(
            err("postgresql://h/d%zz").contains("invalid percent-encoding in the database name")
        );
        assert!(err("postgresql://h/d%2").contains("invalid percent-encoding"));
        assert!(err("postgresql://h/d%00").contains("%00"));
        assert!(err("postgresql://h/d%FF").contains("not valid UTF-8"));
        // Empty ports in a list are the default.
        assert_eq!(
            parse("postgresql://h1,h2:1,h3/d").hosts()[2],
            tcp("h3", 5432)
        );
    }

    #[test]
    fn url_unknown_parameter_with_odd_name_is_not_echoed() {
        let e = err("postgresql://h/d?we%20ird%21=1");
        assert_eq!(
            e,
            "invalid connection URL: unknown parameter (name not shown)"
        );
    }

    #[test]
    fn url_raw_specials_in_the_password_are_named() {
        for (url, c) in [
            ("postgresql://u:ab#c@h/d", '#'),
            ("postgresql://u:ab?c@h/d", '?'),
            ("postgresql://u:ab/c@h/d", '/'),
            ("postgresql://u:ab#?/4@h/d", '#'),
        ] {
            assert_eq!(
                err(url),
                format!(
                    "invalid connection URL: a raw \"{c}\" in the user name or password; percent-encode \"/\", \"?\", \"#\" and \"@\" there (%2F, %3F, %23, %40)"
                ),
                "{url}"
            );
        }
        let s = parse("postgresql://u:ab%23c@h/d");
        assert_eq!(password(&s).as_deref(), Some("ab#c"));
    }

    #[test]
    fn url_password_with_unencoded_specials_is_refused_without_echo() {
        refused_without_echo(
            &[
                format!("postgresql://u:ab/{SECRET}@h/d"),
                format!("postgresql://u:{SECRET}/x@h/d"),
                format!("postgresql://u:ab?{SECRET}@h/d"),
                format!("postgresql://u:{SECRET}?@h/d"),
                format!("postgresql://u:{SECRET}#x/y@h/d"),
            ],
            &["ab"],
        );
    }

    // ---- key=value -------------------------------------------------------------

    #[test]
    fn conninfo_basic() {
        let s = parse("host=db port=6432 dbname=shop user=app password=pw sslmode=verify-full");
        assert_eq!(s.hosts(), &[tcp("db", 6432)]);
        assert_eq!((s.user(), s.dbname()), ("app", "shop"));
        assert_eq!(password(&s).as_deref(), Some("pw"));
        assert_eq!(s.sslmode(), SslMode::VerifyFull);
    }

    #[test]
    fn conninfo_whitespace_around_equals() {
        let s = parse("  host =  db\tport= 1  dbname  =x\n user=u ");
        assert_eq!(s.hosts(), &[tcp("db", 1)]);
        assert_eq!((s.user(), s.dbname()), ("u", "x"));
    }

    #[test]
    fn conninfo_quoting_and_escapes() {
        let s = parse(r"host=h password='a b\'c\\d' dbname='' application_name=x\ y");
        assert_eq!(password(&s).as_deref(), Some(r"a b'c\d"));
        assert_eq!(s.dbname(), "tester", "empty value means not given");
        assert_eq!(s.application_name(), Some("x y"));
        let s = parse("host=h options='-c search_path=shadow,public'");
        assert_eq!(s.options.as_deref(), Some("-c search_path=shadow,public"));
        let s = parse("password='' host=h");
        assert!(!s.has_password());
    }

    #[test]
    fn conninfo_errors() {
        assert_eq!(
            err("host=h foo=1"),
            r#"invalid connection string: unknown parameter "foo""#
        );
        assert_eq!(
            err("sslmode=bogus"),
            "invalid connection string: invalid sslmode \"bogus\" (expected disable, allow, prefer, require, verify-ca or verify-full)"
        );
        assert_eq!(
            err("port=abc"),
            r#"invalid connection string: invalid port "abc""#
        );
        assert!(err("host=h =x").contains("missing parameter name"));
        assert_eq!(
            err("mydb"),
            "expected a postgresql:// URL or key=value pairs"
        );
        assert_eq!(err("   "), "empty connection string");
        assert!(err("host=h port=1,2,3 ").contains("could not match 3 port numbers to 1 hosts"));
        assert!(err("connect_timeout=x").contains(r#"invalid connect_timeout "x""#));
        assert!(err("keepalives_idle=-1").contains("keepalives_idle"));
        assert!(err("target_session_attrs=master").contains("invalid target_session_attrs"));
        assert!(err("channel_binding=maybe").contains("invalid channel_binding"));
        assert!(err("sslcertmode=maybe").contains(r#"invalid sslcertmode "maybe""#));
        assert!(
            err("sslcertmode=require").contains("cannot insist on sending a client certificate")
        );
    }

    #[test]
    fn conninfo_errors_never_echo_passwords() {
        refused_without_echo(
            &[
                format!("host=h password={SECRET} dbname"),
                format!("host=h password='{SECRET}"),
                format!("host=h password='{SECRET}\\"),
                format!("host=h password=ab {SECRET}"),
                format!("host=h password=ab {SECRET}=x port=abc"),
                format!("password={SECRET} port=abc"),
                format!("password={SECRET} sslmode=bogus"),
                format!("password={SECRET} hostaddr=nope"),
            ],
            &[],
        );
        // What follows an unquoted password is not named, and the message
        // says why, and how a password with a space is written.
        let e = err(&format!("host=h password=ab {SECRET}=x"));
        assert!(e.contains("after the password (name not shown"), "{e}");
        assert!(e.contains("password='…'"), "{e}");
        assert!(!e.contains(SECRET), "{e}");
    }

    #[test]
    fn conninfo_multi_host_and_hostaddr() {
        let s = parse("host=h1,h2,/tmp port=1,2,3");
        assert_eq!(s.hosts(), &[tcp("h1", 1), tcp("h2", 2), unix("/tmp", 3)]);
        let s = parse("host=db hostaddr=10.0.0.1");
        assert_eq!(s.hosts()[0].hostaddr, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(s.hosts()[0].host, Host::Tcp("db".into()));
        let s = parse("hostaddr=10.0.0.1,::1 port=7");
        assert_eq!(
            s.hosts().iter().map(|e| e.host.clone()).collect::<Vec<_>>(),
            vec![Host::Tcp("10.0.0.1".into()), Host::Tcp("::1".into())]
        );
        assert!(err("hostaddr=db.example.com").contains(r#"invalid hostaddr "db.example.com""#));
        assert!(
            err("host=a,b hostaddr=10.0.0.1")
                .contains("could not match 1 hostaddr values to 2 hosts")
        );
        // An empty host in a list is the default socket directory.
        let s = parse("host=h1, port=1");
        assert_eq!(s.hosts()[1], unix(&default_socket_dir(), 1));
        // Brackets around a conninfo IPv6 host are tolerated.
        assert_eq!(parse("host=[::1]").hosts(), &[tcp("::1", 5432)]);
    }

    #[test]
    fn conninfo_numbers() {
        assert_eq!(
            parse("connect_timeout=10").connect_timeout(),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse("connect_timeout=1").connect_timeout(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(parse("connect_timeout=0").connect_timeout(), None);
        assert_eq!(parse("connect_timeout=-5").connect_timeout(), None);
        let s = parse("keepalives=0 keepalives_idle=5 keepalives_interval=2 keepalives_count=4");
        assert!(!s.keepalives);
        assert_eq!(
            (s.keepalives_idle, s.keepalives_interval, s.keepalives_count),
            (Some(5), Some(2), Some(4))
        );
    }

    #[test]
    fn sslmodes() {
        for (text, mode) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Prefer),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            assert_eq!(parse(&format!("sslmode={text}")).sslmode(), mode);
        }
    }

    #[test]
    fn sslrootcert_system_rules() {
        let s = parse("host=h sslrootcert=system");
        assert_eq!(s.sslmode(), SslMode::VerifyFull);
        assert_eq!(s.sslrootcert(), Some(&RootCert::System));
        assert_eq!(
            parse("host=h sslrootcert=system sslmode=verify-full").sslmode(),
            SslMode::VerifyFull
        );
        assert_eq!(
            err("host=h sslrootcert=system sslmode=require"),
            r#"invalid connection string: weak sslmode "require" may not be used with sslrootcert=system (use "verify-full")"#
        );
        assert_eq!(
            err_env("host=h sslrootcert=system", &[("PGSSLMODE", "verify-ca")]),
            r#"invalid PGSSLMODE environment variable: weak sslmode "verify-ca" may not be used with sslrootcert=system (use "verify-full")"#
        );
        let s = parse("host=h sslrootcert=/etc/ca.pem sslcert=/c sslkey=/k");
        assert_eq!(s.sslrootcert(), Some(&RootCert::File("/etc/ca.pem".into())));
        assert_eq!(s.sslcert(), Some(Path::new("/c")));
        assert_eq!(s.sslkey(), Some(Path::new("/k")));
    }

    // ---- environment -------------------------------------------------------------

    #[test]
    fn env_defaults() {
        let s = parse_env(
            "dbname=shop",
            &[
                ("PGHOST", "envhost"),
                ("PGPORT", "6000"),
                ("PGUSER", "envuser"),
                ("PGDATABASE", "envdb"),
                ("PGSSLMODE", "require"),
                ("PGSSLROOTCERT", "/ca.pem"),
                ("PGPASSWORD", "envpw"),
                ("PGAPPNAME", "envapp"),
                ("PGOPTIONS", "-c x=y"),
                ("PGCONNECT_TIMEOUT", "7"),
                ("PGTARGETSESSIONATTRS", "read-only"),
                ("PGCHANNELBINDING", "require"),
            ],
        );
        assert_eq!(s.hosts(), &[tcp("envhost", 6000)]);
        assert_eq!(s.user(), "envuser");
        assert_eq!(s.dbname(), "shop", "input beats PGDATABASE");
        assert_eq!(s.sslmode(), SslMode::Require);
        assert_eq!(s.sslrootcert(), Some(&RootCert::File("/ca.pem".into())));
        assert_eq!(password(&s).as_deref(), Some("envpw"));
        assert_eq!(s.application_name(), Some("envapp"));
        assert_eq!(s.options.as_deref(), Some("-c x=y"));
        assert_eq!(s.connect_timeout(), Some(Duration::from_secs(7)));
        assert_eq!(s.target_session_attrs(), TargetSessionAttrs::ReadOnly);
        assert_eq!(s.channel_binding, Some(ChannelBinding::Require));
        let s = parse_env("host=h", &[("PGDATABASE", "envdb")]);
        assert_eq!(s.dbname(), "envdb");
    }

    #[test]
    fn input_beats_env() {
        let s = parse_env(
            "postgresql://u:pw@h:1/d?sslmode=disable",
            &[
                ("PGHOST", "x"),
                ("PGPORT", "2"),
                ("PGPASSWORD", "envpw"),
                ("PGSSLMODE", "require"),
            ],
        );
        assert_eq!(s.hosts(), &[tcp("h", 1)]);
        assert_eq!(password(&s).as_deref(), Some("pw"));
        assert_eq!(s.sslmode(), SslMode::Disable);
    }

    #[test]
    fn env_multi_host() {
        let s = parse_env("dbname=d", &[("PGHOST", "a,b"), ("PGPORT", "1,2")]);
        assert_eq!(s.hosts(), &[tcp("a", 1), tcp("b", 2)]);
        // PGPORT applies to hosts from the URL too.
        let s = parse_env("postgresql://a,b/d", &[("PGPORT", "9")]);
        assert_eq!(s.hosts(), &[tcp("a", 9), tcp("b", 9)]);
    }

    #[test]
    fn env_errors_name_the_variable() {
        for (var, value, want) in [
            (
                "PGPORT",
                "abc",
                r#"invalid PGPORT environment variable: invalid port "abc""#,
            ),
            (
                "PGSSLCRL",
                "/etc/revoked.crl",
                "invalid PGSSLCRL environment variable: pgshift does not check certificate revocation lists; unset it rather than connect without the check",
            ),
            (
                "PGGSSENCMODE",
                "require",
                "invalid PGGSSENCMODE environment variable: pgshift cannot encrypt with GSSAPI (gssencmode=require); unset it rather than connect without it",
            ),
            (
                "PGSSLMINPROTOCOLVERSION",
                "TLSv1.3",
                "invalid PGSSLMINPROTOCOLVERSION environment variable: pgshift cannot hold TLS to version 1.3 at the least (it takes 1.2 and 1.3); unset it rather than connect without it",
            ),
            (
                "PGSSLCERTMODE",
                "never",
                "invalid PGSSLCERTMODE environment variable: invalid sslcertmode \"never\" (expected disable or allow)",
            ),
            (
                "PGSSLMODE",
                "bogus",
                "invalid PGSSLMODE environment variable: invalid sslmode \"bogus\" (expected disable, allow, prefer, require, verify-ca or verify-full)",
            ),
        ] {
            assert_eq!(err_env("host=h", &[(var, value)]), want);
        }
        for (var, value) in [
            ("PGSSLMAXPROTOCOLVERSION", "TLSv1.2"),
            ("PGREQUIREPEER", "postgres"),
            ("PGREQUIREAUTH", "scram-sha-256"),
            ("PGSSLCERTMODE", "require"),
        ] {
            assert!(
                err_env("host=h", &[(var, value)]).starts_with(&format!(
                    "invalid {var} environment variable: pgshift cannot "
                )),
                "{var}"
            );
        }
        // Values that ask for no more than pgshift does.
        for (var, value) in [
            ("PGGSSENCMODE", "disable"),
            ("PGGSSENCMODE", "prefer"),
            ("PGSSLMINPROTOCOLVERSION", "TLSv1.2"),
            ("PGSSLMAXPROTOCOLVERSION", "TLSv1.3"),
            ("PGSSLCERTMODE", "allow"),
            ("PGSSLCERTMODE", "disable"),
        ] {
            parse_env("host=h", &[(var, value)]);
        }
    }

    #[test]
    fn empty_env_values_are_unset() {
        let s = parse_env(
            "host=h",
            &[("PGPORT", ""), ("PGSSLMODE", ""), ("PGPASSWORD", "")],
        );
        assert_eq!(s.port(), 5432);
        assert_eq!(s.sslmode(), SslMode::Prefer);
        assert!(!s.has_password());
    }

    #[test]
    fn default_host_and_os_user() {
        let s = ConnSpec::parse_with_env("dbname=d", &|_| None).unwrap();
        assert_eq!(s.hosts(), &[unix(&default_socket_dir(), 5432)]);
        assert_eq!(Some(s.user().to_string()), os_user_name());
        let s = ConnSpec::parse_with_env("host=h", &|_| None).unwrap();
        assert_eq!(s.dbname(), s.user());
    }

    // ---- password file -------------------------------------------------------------

    /// Each case: a password file, the (host, port, dbname, user) looked up in
    /// it, and the password it gives.
    fn pgpass_cases(cases: &[(&str, [&str; 4], Option<&str>)]) {
        for (file, [h, p, d, u], want) in cases {
            assert_eq!(
                pgpass_match(file, h, p, d, u).as_deref(),
                *want,
                "{file:?} for {h}:{p}:{d}:{u}"
            );
        }
    }

    #[test]
    fn pgpass_matching_rules() {
        let file = "\
# comment line:with:colons:and:stuff
otherhost:5432:db:u:wrong
h:5432:db:u:first
h:5432:db:u:second
";
        let wild = "*:*:*:u:any\n";
        pgpass_cases(&[
            (file, ["h", "5432", "db", "u"], Some("first")),
            (file, ["h", "5433", "db", "u"], None),
            // Case-sensitive.
            (file, ["H", "5432", "db", "u"], None),
            ("", ["h", "5432", "db", "u"], None),
            (wild, ["x", "1", "y", "u"], Some("any")),
            (wild, ["x", "1", "y", "v"], None),
            // '*' is a wildcard only as the whole field.
            ("h*:*:*:*:p\n", ["hx", "1", "d", "u"], None),
            ("h*:*:*:*:p\n", ["h*", "1", "d", "u"], Some("p")),
            (r"\*:*:*:*:p", ["*", "1", "d", "u"], Some("p")),
            (r"\*:*:*:*:p", ["x", "1", "d", "u"], None),
        ]);
    }

    #[test]
    fn pgpass_escapes() {
        pgpass_cases(&[
            // Escaped ':' and '\' in fields and the password.
            (
                r"h:5432:my\:db:us\\er:pa\:ss\\w\ord",
                ["h", "5432", "my:db", r"us\er"],
                Some(r"pa:ss\word"),
            ),
            // An unescaped ':' ends the password; extra fields are ignored.
            ("h:1:d:u:pw:extra", ["h", "1", "d", "u"], Some("pw")),
            // IPv6 hosts: escaped, or unescaped as libpq tolerates.
            (r"\:\:1:1:d:u:pw", ["::1", "1", "d", "u"], Some("pw")),
            ("::1:1:d:u:pw", ["::1", "1", "d", "u"], Some("pw")),
            // CRLF files.
            ("h:1:d:u:pw\r\n", ["h", "1", "d", "u"], Some("pw")),
            // A line with too few fields never matches.
            ("h:1:d", ["h", "1", "d", "u"], None),
            // Empty password.
            ("h:1:d:u:", ["h", "1", "d", "u"], Some("")),
        ]);
    }

    fn write_pgpass(dir: &Path, contents: &str, mode: u32) -> PathBuf {
        let path = dir.join("pgpass");
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn pgpass_from_pgpassfile() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_pgpass(dir.path(), "h:5432:d1:u:pw1\nh:5432:d2:u:pw2\n", 0o600);
        let file = path.to_str().unwrap();
        let s = parse_env("host=h dbname=d1 user=u", &[("PGPASSFILE", file)]);
        assert_eq!(password(&s).as_deref(), Some("pw1"));
        assert_eq!(
            s.password.as_ref().unwrap().source,
            PasswordSource::Passfile
        );
        assert!(s.has_password());
        // PGPASSFILE is passed on because it was given.
        assert_eq!(child(&s, "PGPASSFILE").as_deref(), Some(file));
        // A database change looks the password up again.
        let s2 = s.with_dbname("d2");
        assert_eq!(password(&s2).as_deref(), Some("pw2"));
        assert!(!s.with_dbname("d3").has_password());
        // No password yet: the new database may have one.
        assert_eq!(
            password(&s.with_dbname("d3").with_dbname("d1")).as_deref(),
            Some("pw1")
        );
        // passfile= parameter.
        let s = parse(&format!("host=h dbname=d2 user=u passfile={file}"));
        assert_eq!(password(&s).as_deref(), Some("pw2"));
    }

    #[test]
    fn pgpass_default_location_and_precedence() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join(".pgpass"), "*:*:*:u:frompass\n").unwrap();
        std::fs::set_permissions(
            home.path().join(".pgpass"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let h = home.path().to_str().unwrap();
        let s = parse_env("host=h user=u", &[("HOME", h)]);
        assert_eq!(password(&s).as_deref(), Some("frompass"));
        assert_eq!(child(&s, "PGPASSWORD").as_deref(), Some("frompass"));
        assert_eq!(child(&s, "PGPASSFILE"), None, "not named by the user");
        // PGPASSWORD and an explicit password win over the file.
        let s = parse_env("host=h user=u", &[("HOME", h), ("PGPASSWORD", "env")]);
        assert_eq!(password(&s).as_deref(), Some("env"));
        let s = parse_env("host=h user=u password=given", &[("HOME", h)]);
        assert_eq!(password(&s).as_deref(), Some("given"));
        // A given password is kept by with_dbname.
        assert_eq!(password(&s.with_dbname("other")).as_deref(), Some("given"));
    }

    #[test]
    fn pgpass_ignored_when_group_or_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604] {
            let path = write_pgpass(dir.path(), "*:*:*:*:pw\n", mode);
            let s = parse_env("host=h", &[("PGPASSFILE", path.to_str().unwrap())]);
            assert!(!s.has_password(), "mode {mode:o}");
        }
        let path = write_pgpass(dir.path(), "*:*:*:*:pw\n", 0o400);
        let s = parse_env("host=h", &[("PGPASSFILE", path.to_str().unwrap())]);
        assert!(s.has_password());
        // A directory is not a password file.
        let s = parse_env("host=h", &[("PGPASSFILE", dir.path().to_str().unwrap())]);
        assert!(!s.has_password());
    }

    #[test]
    fn pgpass_host_matching() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_pgpass(
            dir.path(),
            "localhost:5432:*:*:local\n/tmp/x:5432:*:*:sock\n10.0.0.1:5432:*:*:addr\n",
            0o600,
        );
        let pf = path.to_str().unwrap();
        // The default socket directories match "localhost".
        let s = parse_env("host=/var/run/postgresql", &[("PGPASSFILE", pf)]);
        assert_eq!(password(&s).as_deref(), Some("local"));
        let s = parse_env("host=/tmp", &[("PGPASSFILE", pf)]);
        assert_eq!(password(&s).as_deref(), Some("local"));
        let s = parse_env("host=/tmp/x", &[("PGPASSFILE", pf)]);
        assert_eq!(password(&s).as_deref(), Some("sock"));
        // A default socket directory written as such (Debian's libpq reads
        // /tmp so): found after localhost.
        let other = tempfile::tempdir().unwrap();
        let only_path = write_pgpass(other.path(), "/tmp:5432:*:*:tmp\n", 0o600);
        let s = parse_env("host=/tmp", &[("PGPASSFILE", only_path.to_str().unwrap())]);
        assert_eq!(password(&s).as_deref(), Some("tmp"));
        // hostaddr alone: the address is the host name.
        let s = parse_env("hostaddr=10.0.0.1", &[("PGPASSFILE", pf)]);
        assert_eq!(password(&s).as_deref(), Some("addr"));
        // Multi-host: the first host with a line wins for the spec as a whole...
        let s = parse_env("host=nomatch,localhost", &[("PGPASSFILE", pf)]);
        assert_eq!(password(&s).as_deref(), Some("local"));
        // ... and each host gets its own line, as in libpq: its session, and
        // the spec pinned to it (what children get).
        let s = parse_env("host=localhost,10.0.0.1", &[("PGPASSFILE", pf)]);
        let of = |c: tokio_postgres::Config| c.get_password().map(|p| p.to_vec());
        assert_eq!(of(s.pg_config_for_host(0)), Some(b"local".to_vec()));
        assert_eq!(of(s.pg_config_for_host(1)), Some(b"addr".to_vec()));
        let env = s.pinned(1).child_env();
        assert!(
            env.contains(&("PGPASSWORD".into(), "addr".into())),
            "{env:?}"
        );
        // A host without a line gets no password: not another host's.
        let s = parse_env("host=localhost,nomatch", &[("PGPASSFILE", pf)]);
        assert_eq!(of(s.pg_config_for_host(1)), None);
        assert!(
            !s.pinned(1)
                .child_env()
                .iter()
                .any(|(k, _)| k == "PGPASSWORD")
        );
        // A password given applies to every host.
        let s = parse_env(
            "host=localhost,nomatch password=given",
            &[("PGPASSFILE", pf)],
        );
        assert_eq!(of(s.pg_config_for_host(1)), Some(b"given".to_vec()));
    }

    // ---- service files ---------------------------------------------------------------

    #[test]
    fn service_file_between_the_string_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("services.conf");
        std::fs::write(
            &file,
            "[prod]\nhost=db.example.com\nport=6432\nuser=svc\npassword=from service\n\
             dbname=shop\nsslmode=verify-full\nsslrootcert=/ca.pem\ngssencmode=disable\n\
             [bad]\nhost=h\nport=x\n\
             [gss]\nhost=h\ngssencmode=require\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let env = [
            ("PGSERVICEFILE", f),
            // No pg_service.conf there: the machine's system file stays out of the test.
            ("PGSYSCONFDIR", dir.path().to_str().unwrap()),
            ("PGPORT", "1"),
            ("PGHOST", "env-host"),
            ("PGAPPNAME", "from-env"),
        ];
        // A libpq parameter pgshift does not take: passed over with a value
        // that asks no more than pgshift does, refused by name otherwise.
        let err = ConnSpec::parse_with_env("service=gss", &|k| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("line 15: parameter \"gssencmode\" is libpq's"),
            "{err}"
        );
        // Service values beat PG* variables; the environment still fills the rest.
        let s = parse_env("service=prod", &env);
        assert_eq!(s.hosts(), &[tcp("db.example.com", 6432)]);
        assert_eq!((s.user(), s.dbname()), ("svc", "shop"));
        assert_eq!(s.sslmode(), SslMode::VerifyFull);
        assert_eq!(s.application_name(), Some("from-env"));
        assert_eq!(password(&s).as_deref(), Some("from service"));
        // Values written in the string beat the service, in both syntaxes.
        let s = parse_env("service=prod port=7000 user=me", &env);
        assert_eq!((s.port(), s.user()), (7000, "me"));
        let s = parse_env("postgresql://me@:7000/other?service=prod", &env);
        assert_eq!((s.port(), s.user(), s.dbname()), (7000, "me", "other"));
        assert_eq!(s.hosts(), &[tcp("db.example.com", 7000)]);
        // PGSERVICE when the string names no service.
        let mut with_pgservice = env.to_vec();
        with_pgservice.push(("PGSERVICE", "prod"));
        let s = parse_env("dbname=mine", &with_pgservice);
        assert_eq!((s.port(), s.dbname()), (6432, "mine"));
        // Children get the resolved connection, never the service name.
        assert_eq!(child(&s, "PGHOST").as_deref(), Some("db.example.com"));
        assert_eq!(child(&s, "PGPASSWORD").as_deref(), Some("from service"));
        assert_eq!(child(&s, "PGSSLROOTCERT").as_deref(), Some("/ca.pem"));
        assert_eq!(child(&s, "PGSERVICE"), None);
        assert!(ConnSpec::child_env_remove().contains(&"PGSERVICE"));
        assert!(ConnSpec::child_env_remove().contains(&"PGSERVICEFILE"));
        assert!(ConnSpec::child_env_remove().contains(&"PGSYSCONFDIR"));
        // Errors name the file and line, never the value of a password.
        assert_eq!(
            err_env("service=bad", &env),
            format!("service file \"{f}\", line 12: invalid port \"x\"")
        );
        assert_eq!(
            err_env("service=nope", &env),
            format!("definition of service \"nope\" not found (looked in {f})")
        );
        let e = err_env(
            "service=prod password=",
            &[("PGSERVICEFILE", "/nonexistent")],
        );
        assert!(e.contains("service file \"/nonexistent\" not found"), "{e}");
    }

    // ---- where the passwords are written ---------------------------------------------

    #[test]
    fn password_spans_cover_every_written_password() {
        let cut = |input: &str| -> Vec<String> {
            password_spans(input)
                .into_iter()
                .map(|r| input[r].to_string())
                .collect()
        };
        assert_eq!(cut("postgresql://u:s%40cr%3At@h/db"), ["s%40cr%3At"]);
        assert_eq!(cut("  postgres://u:pw@h,h2:1/db?sslmode=require "), ["pw"]);
        assert_eq!(
            cut("postgresql://u@h/db?sslmode=require&password=q%26p&application_name=x"),
            ["q%26p"]
        );
        // A password in the authority and one in the query: both (the later one wins).
        assert_eq!(cut("postgresql://u:one@h/db?password=two"), ["one", "two"]);
        assert_eq!(cut("host=h password=s3cret dbname=d"), ["s3cret"]);
        assert_eq!(
            cut(r"host=h password = 'a \\ \' b' dbname=d"),
            [r"a \\ \' b"]
        );
        assert_eq!(cut("password=é€x host=h"), ["é€x"]);
        assert_eq!(cut("password=pw"), ["pw"]);
        // Nothing to hide.
        assert!(cut("postgresql://u@h/db").is_empty());
        assert!(cut("postgresql://u:@h/db").is_empty());
        assert!(cut("host=h password=''").is_empty());
        assert!(cut("service=prod").is_empty());
        assert!(cut("not a connection string").is_empty());
        // Strings pgshift does not parse (a parameter it does not know): by
        // their shape.
        assert_eq!(
            cut("postgresql://app:Qz7@127.0.0.1:5432/shop?gssencmode=require&password=two"),
            ["Qz7", "two"]
        );
        assert_eq!(cut("host=db password=Qz7 gssencmode=require"), ["Qz7"]);
        assert_eq!(
            cut(r"gssencmode=require password = 'a \' b' host=h"),
            [r"a \' b"]
        );
        assert_eq!(cut("gssencmode=require mypassword=x"), Vec::<String>::new());
        // Refused for a raw '#', '?' or '/' in the password: hidden whole.
        assert_eq!(cut("postgresql://u:ab#Qz7@h/d"), ["ab#Qz7"]);
        assert_eq!(cut("postgresql://u:ab?Qz7@h/d"), ["ab?Qz7"]);
        assert_eq!(cut("postgresql://u:ab/Qz7@h/d"), ["ab/Qz7"]);
        assert_eq!(cut("postgresql://u:p@Qz7@h/d"), ["p@Qz7"]);
        // Passed over with a value that asks no more than pgshift does, as
        // its environment variable is.
        for s in [
            "host=h gssencmode=disable sslsni=1 sslcompression=0 fallback_application_name=psql",
            "postgresql://h/d?ssl_min_protocol_version=TLSv1.2&sslnegotiation=postgres&client_encoding=UTF8",
        ] {
            assert!(ConnSpec::parse(s).is_ok(), "{s}");
        }
        // Refused by name: libpq's, not pgshift's.
        assert_eq!(
            ConnSpec::parse("host=h gssencmode=require")
                .unwrap_err()
                .to_string(),
            r#"invalid connection string: parameter "gssencmode" is libpq's, but pgshift does not support it (README, "Connections, TLS and secrets", lists the values of such parameters it passes over); leave it out only if the server does not need what it asks for"#
        );
    }

    // ---- redaction ----------------------------------------------------------------

    #[test]
    fn redaction_hides_a_connection_string_given_as_the_database() {
        for dbname in [
            "postgresql://app:Pl4inSecretXYZ@h/shop",
            "host=h password=Pl4inSecretXYZ",
        ] {
            let mut spec = parse("postgresql://u@h/d");
            spec.dbname = dbname.to_string();
            let shown = spec.redacted();
            assert!(!shown.contains("Pl4inSecretXYZ"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
    }

    #[test]
    fn redaction_never_shows_the_password() {
        for input in [
            format!("postgresql://app:{SECRET}@db:5432/shop?sslmode=require"),
            format!("host=db user=app password='{SECRET}' dbname=shop"),
            format!("postgresql://app@%2Ftmp%2Fx/shop?password={SECRET}"),
        ] {
            let spec = parse(&input);
            for shown in [
                format!("{spec}"),
                format!("{spec:?}"),
                format!("{spec:#?}"),
                spec.redacted(),
                format!("{:?}", spec.hosts()),
            ] {
                assert!(!shown.contains(SECRET), "{shown}");
                assert!(!shown.contains(&SECRET[..6]), "{shown}");
            }
            assert!(format!("{spec}").contains(":***@"));
        }
        let spec = parse_env("host=h", &[("PGPASSWORD", SECRET)]);
        assert!(!format!("{spec:#?}").contains(SECRET));
    }

    #[test]
    fn redacted_forms() {
        for (input, redacted) in [
            (
                "postgresql://app:pw@db:5432/shop?sslmode=require",
                "postgresql://app:***@db:5432/shop?sslmode=require",
            ),
            ("postgresql://app@db/shop", "postgresql://app@db:5432/shop"),
            (
                "host=/tmp/x user=user dbname=db",
                "postgresql://user@/db?host=/tmp/x",
            ),
            (
                "host=/tmp/x port=5499 user=user dbname=db",
                "postgresql://user@/db?host=/tmp/x&port=5499",
            ),
            (
                "postgresql://u@h1,h2:5433/d?target_session_attrs=read-write",
                "postgresql://u@h1:5432,h2:5433/d?target_session_attrs=read-write",
            ),
            ("postgresql://u@[::1]/d", "postgresql://u@[::1]:5432/d"),
            (
                "user='a@b:c' dbname='x/y z' host=h",
                "postgresql://a%40b%3Ac@h:5432/x%2Fy%20z",
            ),
            (
                "host=h,/tmp user=u dbname=d",
                "postgresql://u@h:5432,%2Ftmp:5432/d",
            ),
            (
                "host=db hostaddr=10.0.0.1 user=u dbname=d",
                "postgresql://u@db:5432/d?hostaddr=10.0.0.1",
            ),
        ] {
            assert_eq!(parse(input).redacted(), redacted, "{input}");
        }
        assert_eq!(
            format!("{:?}", parse("postgresql://u:pw@h/d")),
            "ConnSpec(postgresql://u:***@h:5432/d)"
        );
    }

    #[test]
    fn redacted_url_parses_back() {
        for input in [
            "postgresql://app:pw@db:6432/shop?sslmode=verify-ca",
            "host=/tmp/x port=5499 user=us dbname=db",
            "host=h1,h2,/tmp port=1,2,3 user='a b@c' dbname='x/y%z'",
            "postgresql://u@[::1]:7/d?target_session_attrs=primary",
            "host=db hostaddr=10.0.0.1 user=u dbname=d sslmode=disable",
        ] {
            let a = parse(input);
            let b = parse(&a.redacted().replace(":***@", "@"));
            assert_eq!(a.hosts(), b.hosts(), "{input}");
            assert_eq!((a.user(), a.dbname()), (b.user(), b.dbname()), "{input}");
            assert_eq!(a.sslmode(), b.sslmode(), "{input}");
            assert_eq!(
                a.target_session_attrs(),
                b.target_session_attrs(),
                "{input}"
            );
        }
    }

    // ---- child environment -----------------------------------------------------------

    #[test]
    fn child_env_contents() {
        let s = parse(
            "host=h1,h2 port=1,2 user=u dbname=d password=pw sslmode=verify-full \
             sslrootcert=/ca.pem sslcert=/c.crt sslkey=/c.key application_name=app \
             options='-c a=b' connect_timeout=5 target_session_attrs=read-write \
             channel_binding=require",
        );
        let env = s.child_env();
        let get = |k: &str| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PGHOST"), Some("h1,h2"));
        assert_eq!(get("PGPORT"), Some("1,2"));
        assert_eq!(get("PGUSER"), Some("u"));
        assert_eq!(get("PGDATABASE"), Some("d"));
        assert_eq!(get("PGPASSWORD"), Some("pw"));
        assert_eq!(get("PGSSLMODE"), Some("verify-full"));
        assert_eq!(get("PGSSLROOTCERT"), Some("/ca.pem"));
        assert_eq!(get("PGSSLCERT"), Some("/c.crt"));
        assert_eq!(get("PGSSLKEY"), Some("/c.key"));
        assert_eq!(get("PGAPPNAME"), Some("app"));
        assert_eq!(get("PGOPTIONS"), Some("-c a=b"));
        assert_eq!(get("PGCONNECT_TIMEOUT"), Some("5"));
        assert_eq!(get("PGTARGETSESSIONATTRS"), Some("read-write"));
        assert_eq!(get("PGCHANNELBINDING"), Some("require"));
        assert_eq!(get("PGHOSTADDR"), None);
        assert_eq!(get("PGPASSFILE"), None);
        // Every variable we set is one we also remove from the inherited environment.
        for (k, _) in &env {
            assert!(ConnSpec::child_env_remove().contains(&k.as_str()), "{k}");
        }
        let mut keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), env.len(), "no duplicates");
    }

    #[test]
    fn child_env_minimal() {
        let s = parse("postgresql://u@h/d");
        assert_eq!(
            s.child_env(),
            vec![
                ("PGHOST".to_string(), "h".to_string()),
                ("PGPORT".to_string(), "5432".to_string()),
                ("PGUSER".to_string(), "u".to_string()),
                ("PGDATABASE".to_string(), "d".to_string()),
                ("PGSSLMODE".to_string(), "prefer".to_string()),
            ]
        );
        let s = parse("host=/tmp,h");
        assert_eq!(child(&s, "PGHOST").as_deref(), Some("/tmp,h"));
        // tokio-postgres needs an address for every host or none.
        assert!(err("host=/tmp,h hostaddr=,10.0.0.1").contains(r#"invalid hostaddr """#));
        let s = parse("host=a,b hostaddr=10.0.0.1,10.0.0.2 sslrootcert=system");
        assert_eq!(
            child(&s, "PGHOSTADDR").as_deref(),
            Some("10.0.0.1,10.0.0.2")
        );
        assert_eq!(child(&s, "PGSSLROOTCERT").as_deref(), Some("system"));
        assert_eq!(child(&s, "PGSSLMODE").as_deref(), Some("verify-full"));
    }

    #[test]
    fn child_env_remove_covers_libpq() {
        let remove = ConnSpec::child_env_remove();
        for var in [
            "PGSERVICE",
            "PGSERVICEFILE",
            "PGHOSTADDR",
            "PGPASSWORD",
            "PGPASSFILE",
            "PGSSLMODE",
            "PGREQUIRESSL",
            "PGSSLCRL",
            "PGGSSENCMODE",
            "PGREQUIREAUTH",
            "PGLOADBALANCEHOSTS",
            "PGSSLNEGOTIATION",
        ] {
            assert!(remove.contains(&var), "{var}");
        }
        for key in PARAMS {
            if let Some(var) = env_var_for(key) {
                assert!(remove.contains(&var), "{var}");
            }
        }
    }

    #[test]
    fn default_root_and_client_certs_from_home() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path().to_str().unwrap();
        let s = parse_env("host=h", &[("HOME", h)]);
        assert_eq!(s.effective_root_cert(), None);
        assert_eq!(s.effective_client_cert(), None);
        let pgdir = home.path().join(".postgresql");
        std::fs::create_dir(&pgdir).unwrap();
        std::fs::write(pgdir.join("root.crt"), "x").unwrap();
        std::fs::write(pgdir.join("postgresql.crt"), "x").unwrap();
        assert_eq!(
            s.effective_root_cert(),
            Some(RootCert::File(pgdir.join("root.crt")))
        );
        assert_eq!(
            s.effective_client_cert(),
            Some((pgdir.join("postgresql.crt"), pgdir.join("postgresql.key")))
        );
        assert_eq!(
            child(&s, "PGSSLROOTCERT"),
            Some(pgdir.join("root.crt").display().to_string())
        );
    }

    // ---- tokio-postgres config -------------------------------------------------------

    #[test]
    fn pg_config_mapping() {
        use tokio_postgres::config::{
            Host as PgHost, SslMode as PgSsl, TargetSessionAttrs as PgTsa,
        };
        let s = parse(
            "host=h1,/tmp port=1,2 user=u dbname=d password=pw sslmode=verify-full \
             application_name=app connect_timeout=3 target_session_attrs=primary options=-cx=y",
        );
        let c = s.pg_config();
        assert_eq!(
            c.get_hosts(),
            &[PgHost::Tcp("h1".into()), PgHost::Unix("/tmp".into())]
        );
        assert_eq!(c.get_ports(), &[1, 2]);
        assert_eq!(c.get_user(), Some("u"));
        assert_eq!(c.get_dbname(), Some("d"));
        assert_eq!(c.get_password(), Some(&b"pw"[..]));
        assert_eq!(c.get_ssl_mode(), PgSsl::Require);
        assert_eq!(c.get_application_name(), Some("app"));
        assert_eq!(c.get_options(), Some("-cx=y"));
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(c.get_target_session_attrs(), PgTsa::ReadWrite);
        assert!(c.get_keepalives());
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(10)));
        assert_eq!(c.get_keepalives_retries(), Some(3));
        // Per host.
        let one = s.pg_config_for_host(1);
        assert_eq!(one.get_hosts(), &[PgHost::Unix("/tmp".into())]);
        assert_eq!(one.get_ports(), &[2]);
        assert_eq!(
            one.get_ssl_mode(),
            PgSsl::Disable,
            "no TLS over Unix sockets"
        );
        // Modes.
        for (mode, expected) in [
            ("disable", PgSsl::Disable),
            ("prefer", PgSsl::Prefer),
            ("require", PgSsl::Require),
            ("verify-ca", PgSsl::Require),
        ] {
            assert_eq!(
                parse(&format!("host=h sslmode={mode}"))
                    .pg_config()
                    .get_ssl_mode(),
                expected
            );
        }
        // Unacknowledged data gives up as the keepalives do, unless told.
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(60)));
        let c = parse("host=h keepalives=0 keepalives_idle=100").pg_config();
        assert!(!c.get_keepalives());
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(100));
        assert_eq!(c.get_tcp_user_timeout(), None);
        let c =
            parse("host=h keepalives_idle=5 keepalives_interval=2 keepalives_count=4").pg_config();
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(13)));
        let c = parse("host=h tcp_user_timeout=2500").pg_config();
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_millis(2500)));
        let c = parse("host=h tcp_user_timeout=0").pg_config();
        assert_eq!(c.get_tcp_user_timeout(), None);
        assert!(
            ConnSpec::parse_with_env("host=h tcp_user_timeout=-1", &|_| None)
                .unwrap_err()
                .to_string()
                .contains("tcp_user_timeout")
        );
        let c = parse("host=db hostaddr=10.0.0.1").pg_config();
        assert_eq!(c.get_hostaddrs(), &["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.get_hosts(), &[PgHost::Tcp("db".into())]);
    }

    // ---- comparisons and variants ----------------------------------------------------

    #[test]
    fn same_server_and_db() {
        let a = parse("postgresql://u@localhost:5432/shop");
        assert!(a.same_server_and_db(&parse("postgresql://other@127.0.0.1/shop")));
        assert!(a.same_server_and_db(&parse("postgresql://x@[::1]:5432/shop")));
        assert!(a.same_server_and_db(&parse("postgresql://x@LocalHost./shop")));
        assert!(!a.same_server_and_db(&parse("postgresql://x@localhost:5433/shop")));
        assert!(!a.same_server_and_db(&parse("postgresql://x@localhost/other")));
        assert!(!a.same_server_and_db(&parse("postgresql://x@db/shop")));
        assert!(a.same_server_and_db(&parse("postgresql://x@db,localhost/shop")));
        let b = parse("host=db hostaddr=127.0.0.1 dbname=shop");
        assert!(a.same_server_and_db(&b));
        let c = parse("host=/tmp dbname=shop");
        assert!(c.same_server_and_db(&parse("host=/tmp/ dbname=shop")));
        assert!(
            !c.same_server_and_db(&a),
            "socket vs TCP is left to the SQL check"
        );
        assert!(
            parse("host=DB.example.com dbname=x")
                .same_server_and_db(&parse("host=db.EXAMPLE.com dbname=x"))
        );
    }

    #[test]
    fn with_variants() {
        let s = parse("postgresql://u:pw@h/d?application_name=orig");
        let t = s.with_dbname("postgres").with_application_name("pgshift");
        assert_eq!(t.dbname(), "postgres");
        assert_eq!(t.application_name(), Some("pgshift"));
        assert_eq!(password(&t).as_deref(), Some("pw"));
        assert_eq!(s.dbname(), "d");
        assert_eq!(child(&t, "PGAPPNAME").as_deref(), Some("pgshift"));
    }

    #[test]
    fn from_str_works() {
        let s: ConnSpec = "postgresql://u@h/d".parse().unwrap();
        assert_eq!(s.dbname(), "d");
    }
}
