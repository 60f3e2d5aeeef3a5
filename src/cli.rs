//! Command-line interface: clap types only. The doc comments are the help text.
//!
//! Every option that can also come from the environment names its variable here
//! (`PGSHIFT_<FLAG>`); values from `pgshift.toml` are merged in `config.rs`, so
//! options are `Option<_>` here and defaults live in `config.rs`.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

/// `pgshift --version`: the release, the commit and the target it was built for
/// (see build.rs), e.g. `0.1.0 (commit 1a2b3c4d5e6f, x86_64-unknown-linux-musl)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PGSHIFT_COMMIT"),
    ", ",
    env!("PGSHIFT_TARGET"),
    ")"
);

/// How to name a flag's value in an error: the environment variable it was
/// read from (`PGSHIFT_LOCK_TIMEOUT`) when the flag is not on the command
/// line and that variable is set, else the flag itself (`--lock-timeout`).
/// `flag` is the long form, `--` included.
pub fn given_as(flag: &str) -> String {
    env_source(flag).unwrap_or_else(|| flag.to_string())
}

/// The environment variable a flag's value came from, if it did (see
/// [`given_as`]): the flag is not on the command line, and its variable
/// (any subcommand's, or a global one) is set.
pub fn env_source(flag: &str) -> Option<String> {
    use clap::CommandFactory;
    let long = flag.strip_prefix("--")?;
    let mut cli = Cli::command();
    cli.build();
    let var = cli
        .get_subcommands()
        .flat_map(|c| c.get_arguments())
        .chain(cli.get_arguments())
        .filter(|a| a.get_long() == Some(long))
        .find_map(|a| a.get_env())?
        .to_string_lossy()
        .into_owned();
    let on_line = std::env::args()
        .skip(1)
        .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    (!on_line && std::env::var_os(&var).is_some()).then_some(var)
}

/// Move a whole PostgreSQL database into a running destination without downtime.
///
/// pgshift restores the source's `public` schema into a `shadow` schema on the
/// destination, keeps chosen destination tables in sync, then swaps shadow and
/// public in one short transaction. The replaced public is kept as a backup
/// schema (`backup_<unix ms>`) that can be listed, verified, rolled back to and
/// cleaned up.
///
/// Exit codes: 0 ok, 1 failure, 2 usage error, 3 verification mismatch,
/// 130 interrupted.
#[derive(Debug, Parser)]
#[command(
    name = "pgshift",
    version = VERSION,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted by every command.
#[derive(Debug, Args, Clone, Default)]
pub struct GlobalArgs {
    /// Print one machine-readable JSON document on stdout instead of text.
    #[arg(long, global = true, env = "PGSHIFT_JSON", value_parser = clap::builder::BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub json: bool,

    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub quiet: u8,

    /// Log line format on stderr: `text` for people, `json` for CI log collectors.
    #[arg(long, global = true, env = "PGSHIFT_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Configuration file (TOML). Default: ./pgshift.toml when it exists.
    #[arg(long, global = true, env = "PGSHIFT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Parallel jobs for dump, data load and index builds. Default: min(CPUs, 8);
    /// never more than the machine's CPUs.
    #[arg(long, global = true, env = "PGSHIFT_JOBS", value_name = "N")]
    pub jobs: Option<usize>,

    /// Upper bound on pgshift's connections to each server (default 20).
    #[arg(long, global = true, env = "PGSHIFT_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// How long to keep retrying a refused or reset connection, e.g. `10s` (default 10s).
    /// A bare number is seconds.
    #[arg(
        long,
        global = true,
        env = "PGSHIFT_CONNECT_TIMEOUT",
        value_name = "DURATION"
    )]
    pub connect_timeout: Option<String>,

    /// lock_timeout for DDL on the destination, e.g. `1s`, `500ms` (default 1s).
    /// A bare number is seconds. The swap's lock waits also end before the
    /// server's deadlock_timeout, so an application is never its deadlock victim.
    #[arg(
        long,
        global = true,
        env = "PGSHIFT_LOCK_TIMEOUT",
        value_name = "DURATION"
    )]
    pub lock_timeout: Option<String>,

    /// Directory holding the state file `.migration-state-<database>.json`
    /// (default: the current directory).
    #[arg(long, global = true, env = "PGSHIFT_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Prepare and swap in one run: restore the source into `shadow`, then make it `public`.
    ///
    /// Example: pgshift start --source postgresql://app@old/db --dest postgresql://app@new/db --preserved-tables users,sessions
    Start(StartArgs),

    /// Restore the source's `public` schema into the destination's `shadow` schema.
    ///
    /// The source is only read (one consistent snapshot); the destination keeps
    /// serving from its own `public`. Preserved tables are kept in sync with
    /// triggers until `swap`.
    ///
    /// Example: pgshift prepare --source postgresql://app@old/db --dest postgresql://app@new/db
    Prepare(PrepareArgs),

    /// Make the prepared `shadow` the destination's `public` in one short transaction.
    ///
    /// The replaced public is kept as `backup_<unix ms>` with a manifest.
    ///
    /// Example: pgshift swap --dest postgresql://app@new/db
    Swap(SwapArgs),

    /// Show the migration state of a destination (exit 0 whatever the state).
    ///
    /// With a prepared migration it also shows the impact report's summary:
    /// what the swap would break or discard for the running application.
    Status(StatusArgs),

    /// List backup schemas, newest first.
    List(DestOnly),

    /// Make a backup the destination's `public` again; the replaced public becomes a new backup.
    ///
    /// Example: pgshift rollback --latest --keep-tables users
    Rollback(RollbackArgs),

    /// Drop backup schemas (and their manifests) older than a date. Built for cron.
    ///
    /// Example: pgshift cleanup --before 2025-07-15 --keep-latest 2
    Cleanup(CleanupArgs),

    /// Check a backup against its manifest: tables, row counts, indexes, sequences.
    ///
    /// Exits 0 when intact and 3 when anything differs.
    Verify(VerifyArgs),

    /// Drop a prepared (not yet swapped) migration: shadow, sync triggers, helper objects.
    Abort(DestOnly),
}

impl Command {
    /// The command's name as typed on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Start(_) => "start",
            Command::Prepare(_) => "prepare",
            Command::Swap(_) => "swap",
            Command::Status(_) => "status",
            Command::List(_) => "list",
            Command::Rollback(_) => "rollback",
            Command::Cleanup(_) => "cleanup",
            Command::Verify(_) => "verify",
            Command::Abort(_) => "abort",
        }
    }
}

/// The source database.
#[derive(Debug, Args, Clone, Default)]
pub struct SourceArg {
    /// Source database: a libpq URL (postgresql://user:pass@host:5432/db?sslmode=require)
    /// or a `key=value` conninfo string. Only read, never modified.
    #[arg(
        long = "source",
        env = "PGSHIFT_SOURCE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub source: Option<String>,
}

/// The destination database.
#[derive(Debug, Args, Clone, Default)]
pub struct DestArg {
    /// Destination database: a libpq URL or a `key=value` conninfo string.
    #[arg(
        long = "dest",
        env = "PGSHIFT_DEST_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub dest: Option<String>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct DestOnly {
    #[command(flatten)]
    pub dest: DestArg,
}

/// Options of `prepare` (and of `start`).
#[derive(Debug, Args, Clone, Default)]
pub struct PrepareOpts {
    #[command(flatten)]
    pub source: SourceArg,

    #[command(flatten)]
    pub dest: DestArg,

    /// Destination tables whose rows survive the migration, comma separated
    /// (`users,sessions`, `"Mixed",public.t`). Their structure comes from the
    /// source, their rows from the destination, kept in sync until the swap.
    #[arg(long, env = "PGSHIFT_PRESERVED_TABLES", value_name = "TABLES")]
    pub preserved_tables: Option<Vec<String>>,

    /// The schemas to migrate, comma separated (`public,billing`; default
    /// `public`, which must be among them). Each is restored into its own
    /// shadow and all are swapped in one transaction.
    #[arg(long, env = "PGSHIFT_SCHEMAS", value_name = "SCHEMAS")]
    pub schemas: Option<Vec<String>>,

    /// Tables migrated without their rows: structure, indexes and sequences
    /// come from the source, the table is empty (psql patterns: `*`, `?`,
    /// double quotes for exact case; comma separated, repeatable).
    #[arg(long, env = "PGSHIFT_EXCLUDE_TABLE_DATA", value_name = "PATTERN")]
    pub exclude_table_data: Option<Vec<String>>,

    /// Source tables not migrated at all (psql patterns, comma separated,
    /// repeatable). Objects of the source that depend on them are refused.
    #[arg(long, env = "PGSHIFT_EXCLUDE_TABLE", value_name = "PATTERN")]
    pub exclude_table: Option<Vec<String>>,

    /// Destination tables that stay in public as they are, rows and all, with
    /// no copy and no triggers; the source's namesakes are not migrated (psql
    /// patterns, comma separated, repeatable).
    #[arg(long, env = "PGSHIFT_KEEP_TABLES", value_name = "PATTERN")]
    pub keep_tables: Option<Vec<String>>,

    /// Where pg_dump writes the schema dump (default: <state dir>/pgshift-dump-<database>).
    #[arg(long, env = "PGSHIFT_DUMP_DIR", value_name = "DIR")]
    pub dump_dir: Option<PathBuf>,

    /// Keep the dump directory after a successful swap.
    #[arg(long, env = "PGSHIFT_KEEP_DUMP", value_parser = clap::builder::BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub keep_dump: bool,

    /// Validation after the load: `counts` (exact row counts, default) or
    /// `checksums` (counts plus a content checksum per table; reads every row twice).
    #[arg(long, env = "PGSHIFT_VERIFY", value_name = "MODE")]
    pub verify: Option<VerifyMode>,

    /// Give shadow objects the source's owners where those roles exist on the
    /// destination (default: the destination's owner of the same-named object;
    /// an object the destination lacks keeps its source owner where that role
    /// exists here and pgshift's role may act as it, else pgshift's role).
    #[arg(long, env = "PGSHIFT_KEEP_SOURCE_OWNERS", value_parser = clap::builder::BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub keep_source_owners: bool,

    /// Restore every table, index and materialized view into the
    /// destination's default tablespace, whatever tablespace it is in on the
    /// source (as `pg_restore --no-tablespaces`). Without it, prepare refuses
    /// a source whose objects are in a tablespace the destination lacks or
    /// this role may not create in.
    #[arg(long, env = "PGSHIFT_NO_TABLESPACES", value_parser = clap::builder::BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub no_tablespaces: bool,

    /// Print the plan and change nothing on either database.
    #[arg(long, env = "PGSHIFT_DRY_RUN", value_parser = clap::builder::BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub dry_run: bool,

    #[command(flatten)]
    pub impact: ImpactOpts,
}

/// Options of the impact report's workload check (prepare, swap, start, rollback, status).
#[derive(Debug, Args, Clone, Default)]
pub struct ImpactOpts {
    /// Check only the recorded statements of these roles (the application's),
    /// comma separated. Default: every role's.
    #[arg(long, env = "PGSHIFT_WORKLOAD_ROLES", value_name = "ROLES")]
    pub workload_roles: Option<Vec<String>>,

    /// Time bound of the recorded-statements check, e.g. `30s` (default 30s);
    /// statements left when it runs out are reported as unchecked. A bare
    /// number is seconds.
    #[arg(long, env = "PGSHIFT_IMPACT_TIMEOUT", value_name = "DURATION")]
    pub impact_timeout: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    Counts,
    Checksums,
}

/// `--swap-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwapModeArg {
    /// Rename the schemas when public holds no non-relocatable extension
    /// (lock time independent of the table count), else move object by object.
    Auto,
    /// Always move object by object (`ALTER … SET SCHEMA`).
    Object,
    /// Rename the schemas, or refuse saying why not.
    Rename,
}

/// Options of `swap` (and of `start` and `rollback`).
#[derive(Debug, Args, Clone, Default)]
pub struct SwapOpts {
    /// How the swap moves the schemas: `auto` (default: schema renames when
    /// public holds no non-relocatable extension such as PostGIS, else object
    /// by object), `object` or `rename`.
    #[arg(long, env = "PGSHIFT_SWAP_MODE", value_name = "MODE")]
    pub swap_mode: Option<SwapModeArg>,

    /// How many times to retry the swap after a lock timeout (default 10).
    #[arg(long, env = "PGSHIFT_SWAP_RETRIES", value_name = "N")]
    pub swap_retries: Option<u32>,

    /// Swap (or roll back) even when rows violate foreign keys that involve
    /// preserved or kept tables; those constraints are created NOT VALID.
    #[arg(long, env = "PGSHIFT_ALLOW_FK_VIOLATIONS", value_parser = clap::builder::BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub allow_fk_violations: bool,

    /// Swap (or roll back) even though the application wrote these tables
    /// since prepare started (since the current public went live, for a
    /// rollback) and they are not preserved (kept): those rows stay in the
    /// backup. Comma separated, or `all`. Tables whose writes cannot be
    /// known (statistics reset, no counters recorded) need it too.
    #[arg(long, env = "PGSHIFT_ALLOW_DISCARD", value_name = "TABLES|all")]
    pub allow_discard: Option<String>,
}

/// `--fail-on-breaking` (swap, start, rollback).
#[derive(Debug, Args, Clone, Default)]
pub struct BreakingOpt {
    /// Refuse the swap (or rollback; exit 1, nothing changed) when a recorded
    /// statement would fail or change result type, or a dropped object is used
    /// by one. Without it these are warnings printed before the swap.
    #[arg(long, env = "PGSHIFT_FAIL_ON_BREAKING", value_parser = clap::builder::BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub fail_on_breaking: bool,
}

#[derive(Debug, Args, Clone, Default)]
pub struct StartArgs {
    #[command(flatten)]
    pub prepare: PrepareOpts,

    #[command(flatten)]
    pub swap: SwapOpts,

    #[command(flatten)]
    pub breaking: BreakingOpt,
}

#[derive(Debug, Args, Clone, Default)]
pub struct PrepareArgs {
    #[command(flatten)]
    pub prepare: PrepareOpts,
}

#[derive(Debug, Args, Clone, Default)]
pub struct SwapArgs {
    #[command(flatten)]
    pub dest: DestArg,

    /// Complete this prepared migration (its id, unix ms, as `status` shows);
    /// refuses if a different one is prepared.
    #[arg(long, value_name = "TS")]
    pub timestamp: Option<String>,

    /// Keep the dump directory after the swap.
    #[arg(long, env = "PGSHIFT_KEEP_DUMP", value_parser = clap::builder::BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub keep_dump: bool,

    /// Destination tables that stay in public as they are, in addition to
    /// those kept at prepare (psql patterns, comma separated, repeatable).
    /// Only tables the prepared shadow has no namesake of.
    #[arg(long, env = "PGSHIFT_KEEP_TABLES", value_name = "PATTERN")]
    pub keep_tables: Option<Vec<String>>,

    #[command(flatten)]
    pub swap: SwapOpts,

    #[command(flatten)]
    pub breaking: BreakingOpt,

    #[command(flatten)]
    pub impact: ImpactOpts,

    /// Print the impact report (what the swap would break or discard for the
    /// running application), the objects that would move and the swap's SQL;
    /// change nothing.
    #[arg(long, env = "PGSHIFT_DRY_RUN", value_parser = clap::builder::BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub dry_run: bool,
}

#[derive(Debug, Args, Clone, Default)]
pub struct StatusArgs {
    #[command(flatten)]
    pub dest: DestArg,

    #[command(flatten)]
    pub impact: ImpactOpts,
}

#[derive(Debug, Args, Clone, Default)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["latest", "timestamp"])))]
pub struct RollbackArgs {
    #[command(flatten)]
    pub dest: DestArg,

    /// Roll back to the newest backup.
    #[arg(long, conflicts_with = "timestamp")]
    pub latest: bool,

    /// Roll back to this backup: its unix-ms timestamp or its schema name (backup_<ts>).
    #[arg(long, value_name = "TS")]
    pub timestamp: Option<String>,

    /// Keep these tables (rows and sequence values) from the current public
    /// instead of the backup's, comma separated.
    #[arg(long, value_name = "TABLES")]
    pub keep_tables: Option<Vec<String>>,

    /// Roll back even if the backup no longer matches its manifest.
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub swap: SwapOpts,

    #[command(flatten)]
    pub breaking: BreakingOpt,

    #[command(flatten)]
    pub impact: ImpactOpts,

    /// Print what would move and change nothing.
    #[arg(long, env = "PGSHIFT_DRY_RUN", value_parser = clap::builder::BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub dry_run: bool,
}

#[derive(Debug, Args, Clone, Default)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub dest: DestArg,

    /// Drop backups created before this moment: an ISO date (2025-07-15, midnight UTC),
    /// an ISO datetime with or without offset (2025-07-15T08:30:00+02:00; UTC when
    /// none), or unix milliseconds.
    #[arg(long, value_name = "DATE")]
    pub before: String,

    /// Always keep the N newest backups, whatever their age (backups whose
    /// schemas are gone do not count).
    #[arg(long, env = "PGSHIFT_KEEP_LATEST", value_name = "N")]
    pub keep_latest: Option<usize>,

    /// Print what would be dropped and drop nothing.
    #[arg(long, env = "PGSHIFT_DRY_RUN", value_parser = clap::builder::BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub dry_run: bool,
}

#[derive(Debug, Args, Clone, Default)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["latest", "timestamp"])))]
pub struct VerifyArgs {
    #[command(flatten)]
    pub dest: DestArg,

    /// Verify the newest backup.
    #[arg(long, conflicts_with = "timestamp")]
    pub latest: bool,

    /// The backup to verify: its unix-ms timestamp or its schema name.
    #[arg(long, value_name = "TS")]
    pub timestamp: Option<String>,
}
