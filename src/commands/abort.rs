//! `pgshift abort`: drop a prepared (not yet swapped) migration
//! (`prepare::discard::abort`) and say what was removed. With nothing to abort
//! it says so and exits 0. The destination's public and the backups are never
//! touched.

use anyhow::Result;

use crate::commands::Ctx;
use crate::error::ExitCode;
use crate::output;
use crate::prepare::discard::{self, AbortOptions, AbortReport};

pub async fn run(ctx: Ctx) -> Result<ExitCode> {
    // abort has no dry run: one asked for in the environment (meant for
    // the commands that have one) must not drop the prepared migration.
    if let Ok(v) = std::env::var("PGSHIFT_DRY_RUN")
        && !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "f" | "no" | "n" | "off"
        )
    {
        crate::refuse!(
            "PGSHIFT_DRY_RUN is set, but abort has no dry run: it would drop the prepared migration; `pgshift status` shows what abort would remove, unset PGSHIFT_DRY_RUN to abort"
        );
    }
    let sess = ctx.open_session().await?;
    let settings = &ctx.settings;
    let opts = AbortOptions {
        lock_timeout: settings.swap.lock_timeout,
        retries: settings.swap.retries,
        keep_dump: settings.keep_dump,
    };
    let report = discard::abort(&sess, &opts).await?;
    print(&ctx, &report)?;
    Ok(ExitCode::Ok)
}

fn print(ctx: &Ctx, r: &AbortReport) -> Result<()> {
    if ctx.settings.json {
        return output::print_json(r);
    }
    crate::outln!("{}", capitalised(&r.message));
    if r.removed.shadow {
        crate::outln!("  dropped the shadow schema");
    }
    for s in &r.removed.other_shadows {
        crate::outln!(
            "  dropped the shadow schema {}",
            crate::pg::ident::display_ident(s)
        );
    }
    for t in &r.removed.triggers {
        crate::outln!("  dropped trigger {t}");
    }
    for t in &r.removed.helper_tables {
        crate::outln!("  dropped helper table pgshift.{t}");
    }
    if r.removed.helper_functions > 0 {
        crate::outln!(
            "  dropped {} helper function{}",
            r.removed.helper_functions,
            if r.removed.helper_functions == 1 {
                ""
            } else {
                "s"
            }
        );
    }
    if let Some(d) = &r.dump_dir_removed {
        crate::outln!("  removed the dump directory {d}");
    }
    // The live schemas: public, and the others' whose shadows it dropped.
    let live = if r.removed.other_shadows.is_empty() {
        "public was"
    } else {
        "live schemas were"
    };
    if r.aborted {
        if r.extensions_kept.is_empty() {
            crate::outln!("The destination's {live} not touched.");
        } else {
            crate::outln!(
                "  kept the extensions prepare created: {} (DROP EXTENSION them if nothing uses them)",
                r.extensions_kept.join(", ")
            );
            crate::outln!("The destination's {live} otherwise not touched.");
        }
    }
    Ok(())
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}
