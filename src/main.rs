//! The pgshift binary: parse, configure, log, run, report. All work is in the library.

use std::process::exit;
use std::sync::atomic::{AtomicI32, Ordering};

use clap::Parser;
use itertools::Itertools;
use tokio_util::sync::CancellationToken;

use pgshift::argv_scrub::{self, Outcome};
use pgshift::cli::Cli;
use pgshift::commands::{self, Ctx};
use pgshift::error::{ExitCode, exit_code_for};
use pgshift::{config, logging, process};

/// The static (musl) build allocates with mimalloc: musl's malloc serialises pgshift's
/// threads (measured with `make bench BENCH_BIN_STATIC=…`).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // First of all: passwords in --source/--dest out of `ps` (see argv_scrub).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Messages never quote a password pgshift was given on its command line.
    let mut secrets = argv_scrub::secret_arguments(&args);
    secrets.extend(argv_scrub::secret_environment());
    secrets.sort_by_key(|(plain, _)| std::cmp::Reverse(plain.len()));
    let scrubbed = argv_scrub::hide_passwords(&args, &["--source", "--dest"]);
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => exit(report_clap_error(e, &secrets)),
    };
    secrets.extend(config::file_secrets(cli.global.config.as_deref()));
    secrets.sort_by_key(|(plain, _)| std::cmp::Reverse(plain.len()));
    let settings = match config::load_file(cli.global.config.as_deref())
        .and_then(|file| config::resolve(&cli.global, &cli.command, file))
    {
        Ok(s) => s,
        Err(e) => {
            pgshift::errln!(
                "{}",
                argv_scrub::scrub_message(&format!("error: {e:#}"), &secrets)
            );
            exit(exit_code_for(&e).code());
        }
    };
    logging::init(settings.log_format, settings.verbosity);
    for w in &settings.warnings {
        tracing::warn!("{w}");
    }
    match scrubbed {
        Outcome::Failed(why) => tracing::warn!(
            "the password on the command line stays visible in the process list ({why}); \
             pass it through PGSHIFT_DEST_URL/PGSHIFT_SOURCE_URL, the config file or ~/.pgpass"
        ),
        Outcome::Hidden(n) => tracing::debug!("{n} password(s) hidden from the process list"),
        Outcome::NothingToHide => {}
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            pgshift::errln!("error: starting the async runtime: {e}");
            exit(ExitCode::Failure.code());
        }
    };
    let cancel = CancellationToken::new();
    let ctx = Ctx {
        settings,
        cancel: cancel.clone(),
        command: cli.command.name(),
    };
    let code = runtime.block_on(async move {
        tokio::spawn(watch_signals(cancel));
        let code = match commands::run(cli.command, ctx).await {
            Ok(code) => code.code(),
            Err(e) => {
                pgshift::errln!(
                    "{}",
                    argv_scrub::scrub_message(&format!("error: {e:#}"), &secrets)
                );
                exit_code_for(&e).code()
            }
        };
        FINISHED.store(code, Ordering::SeqCst);
        // Tests pause here to interrupt a command that has finished.
        let _ = pgshift::migration::session::failpoint("exit").await;
        // The command's clients are gone: let their connections say goodbye.
        pgshift::pg::conn::connect::close_connections(std::time::Duration::from_secs(2)).await;
        code
    });
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    exit(code);
}

/// The command's exit code once it has finished and reported (-1 before).
static FINISHED: AtomicI32 = AtomicI32::new(-1);

/// First SIGINT/SIGTERM/SIGHUP: cancel the run (children get TERM, then KILL; work is
/// rolled back or left resumable). Second: kill the children and exit now.
async fn watch_signals(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    // A hang-up (the SSH session closed) stops the run cleanly too, unless
    // it is ignored (`nohup`), which stays so.
    let mut hup = (!ignored(libc::SIGHUP))
        .then(|| signal(SignalKind::hangup()).ok())
        .flatten();
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            Some(()) = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        // The command has finished and said how (its sessions are only
        // saying goodbye): stop now, with its code, without another word.
        let finished = FINISHED.load(Ordering::SeqCst);
        if finished >= 0 {
            process::kill_all_now();
            exit(finished);
        }
        seen += 1;
        if seen == 1 {
            tracing::warn!("interrupted: stopping cleanly (interrupt again to stop at once)");
            cancel.cancel();
        } else {
            process::kill_all_now();
            pgshift::errln!(
                "error: interrupted again: stopped at once; run `pgshift status` to see what is left"
            );
            exit(ExitCode::Interrupted.code());
        }
    }
}

/// Whether `sig` is ignored (inherited from the parent, as `nohup` does).
fn ignored(sig: libc::c_int) -> bool {
    // SAFETY: a query only (no new action); `old` is a plain C struct.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// The environment variable a bad value of clap's error came from: its
/// flag is not on the command line, and the variable is set.
fn from_env(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.strip_prefix("--")?.split([' ', '=']).next()?;
    pgshift::cli::env_source(&format!("--{long}"))
}

/// Print clap's error as one line (help and version go to stdout as usual).
fn report_clap_error(e: clap::Error, secrets: &[(String, String)]) -> i32 {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            0
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::Usage.code()
        }
        _ => {
            let text = argv_scrub::scrub_message(&e.render().to_string(), secrets);
            let main = text.split("\n\nUsage:").next().unwrap_or(&text);
            let main = main
                .split("\n\nFor more information")
                .next()
                .unwrap_or(main);
            let one_line = main.split_whitespace().join(" ");
            let one_line = one_line.strip_prefix("error: ").unwrap_or(&one_line);
            // Point at the subcommand's help when there is one on the line.
            use clap::CommandFactory;
            let names: Vec<String> = Cli::command()
                .get_subcommands()
                .map(|c| c.get_name().to_string())
                .collect();
            let sub = std::env::args()
                .skip(1)
                .find(|a| names.iter().any(|n| n == a));
            // A bad value that came from the environment, not the line:
            // name the variable (`PGSHIFT_JSON=bogus` read as `--json`).
            let one_line = match from_env(&e) {
                Some(var) => format!("{one_line} (the value of {var})"),
                None => one_line.to_string(),
            };
            match sub {
                Some(sub) => pgshift::errln!("error: {one_line} (see pgshift {sub} --help)"),
                None => pgshift::errln!("error: {one_line} (see pgshift --help)"),
            }
            ExitCode::Usage.code()
        }
    }
}
