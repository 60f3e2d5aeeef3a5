//! `pgshift status`: where the destination's migration stands. Read only, no
//! lock; exit 0 whatever the state (a `failed` state is data, not an error).
//! The report is built by `migration::status`; this prints it.

use anyhow::Result;
use chrono::{DateTime, Utc};

use crate::commands::Ctx;
use crate::error::ExitCode;
use crate::migration::derive::State;
use crate::migration::status::{self, StatusOptions, StatusReport};
use crate::output::{self, Table, human_bytes, human_ms};

pub async fn run(ctx: Ctx) -> Result<ExitCode> {
    let dest = ctx.settings.require_dest()?;
    let client = ctx.connect_dest().await?;
    let opts = StatusOptions {
        impact: ctx.settings.impact.clone(),
        lock_timeout: ctx.settings.swap.lock_timeout,
        swap_mode: ctx.settings.swap.mode,
    };
    let r = status::report(&client, dest, &ctx.settings.state_dir, &opts).await?;
    print(&ctx, &r)?;
    Ok(ExitCode::Ok)
}

fn short(rfc: &str) -> String {
    DateTime::parse_from_rfc3339(rfc)
        .map(|t| {
            t.with_timezone(&Utc)
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string()
        })
        .unwrap_or_else(|_| rfc.to_string())
}

fn print(ctx: &Ctx, r: &StatusReport) -> Result<()> {
    if ctx.settings.json {
        return output::print_json(r);
    }
    let mut lines: Vec<(&str, String)> = vec![("destination", r.destination.clone())];
    lines.push(("state", r.state.to_string()));
    if let Some(m) = &r.migration {
        lines.push((
            "migration",
            format!(
                "{} ({}; last run: {}, pid {} on {})",
                m.id, m.status, m.command, m.pid, m.host
            ),
        ));
        lines.push(("started", short(&m.started_at)));
        lines.push(("updated", short(&m.updated_at)));
        if let Some(p) = &m.phase {
            let label = if r.state == State::Failed {
                "failed in"
            } else {
                "phase"
            };
            lines.push((label, p.clone()));
        }
        if let Some(e) = &m.error {
            // Failed: why. Still prepared: why the last swap did not go through.
            let label = if r.state == State::Failed {
                "error"
            } else {
                "last error"
            };
            lines.push((label, e.clone()));
        }
        if !m.source.is_empty() {
            lines.push(("source", m.source.clone()));
        }
    }
    lines.push((
        "shadow",
        if !r.shadow.exists {
            "none".into()
        } else if r.shadow.empty {
            "empty".into()
        } else {
            format!(
                "{} tables, {}{}",
                r.shadow.tables,
                human_bytes(r.shadow.size_bytes),
                if r.shadow.ours {
                    ""
                } else {
                    " (not pgshift's)"
                }
            )
        },
    ));
    if !r.preserved_tables.is_empty() {
        let names: Vec<String> = r
            .preserved_tables
            .iter()
            .map(|p| match &p.health {
                // A count not taken (row-level security, no SELECT) is null
                // in JSON, "?" here.
                Some(h) => format!(
                    "{}: triggers {}, {} pending, {} rows in {}, {} in {}",
                    p.shown,
                    if h["triggers_ok"] == true {
                        "ok"
                    } else {
                        "BROKEN"
                    },
                    counted(&h["pending"]),
                    counted(&h["rows_public"]),
                    crate::pg::ident::display_ident(&p.schema),
                    counted(&h["rows_shadow"]),
                    if p.schema == crate::pg::meta::PUBLIC {
                        "shadow"
                    } else {
                        "its shadow"
                    }
                ),
                None => format!("{} (sync health not available)", p.shown),
            })
            .collect();
        lines.push(("preserved", names.join("; ")));
    }
    if !r.not_valid_foreign_keys.is_empty() {
        lines.push((
            "NOT VALID",
            format!("foreign keys {}", r.not_valid_foreign_keys.join(", ")),
        ));
    }
    if let Some(b) = &r.swap_lock_budget {
        lines.push((
            "lock table",
            format!(
                "the swap ({}) needs about {} of {} slots ({} in use){}",
                b.swap_mode.as_deref().unwrap_or("?"),
                b.needed,
                b.capacity,
                b.in_use,
                if b.fits { "" } else { ": does not fit" }
            ),
        ));
    }
    if let Some(i) = &r.impact {
        let summary = i.summary();
        lines.push((
            "impact",
            summary
                .strip_prefix("impact: ")
                .unwrap_or(&summary)
                .to_string()
                + "   (the whole report: pgshift swap --dry-run)",
        ));
    }
    lines.push((
        "swap now",
        match r.swap_blocked_reasons.as_slice() {
            [] => "allowed".into(),
            [why] => format!("not allowed: {why}"),
            many => format!(
                "not allowed, for {} reasons:\n  - {}",
                many.len(),
                many.join("\n  - ")
            ),
        },
    ));
    if let Some(run) = &r.running {
        lines.push(("running", run.holder.to_string()));
    }
    let mut left = Vec::new();
    if r.leftovers.objects.shadow {
        left.push("a shadow schema with objects".to_string());
    }
    if !r.leftovers.objects.triggers.is_empty() {
        left.push(format!(
            "pgshift triggers ({})",
            r.leftovers.objects.triggers.join(", ")
        ));
    }
    if !r.leftovers.objects.helper_tables.is_empty() {
        left.push(format!(
            "helper tables ({})",
            r.leftovers.objects.helper_tables.join(", ")
        ));
    }
    if r.leftovers.objects.helper_functions > 0 {
        left.push(format!(
            "{} helper functions",
            r.leftovers.objects.helper_functions
        ));
    }
    if let Some(d) = &r.leftovers.dead_lock_holder {
        left.push(d.clone());
    }
    lines.push((
        "leftovers",
        if left.is_empty() {
            "none".into()
        } else {
            format!(
                "{}; {}",
                left.join("; "),
                r.leftovers.hint.as_deref().unwrap_or("")
            )
        },
    ));
    lines.push((
        "backups",
        match (&r.latest_backup, &r.latest_rollback_restored) {
            (Some(b), Some(restored)) => format!(
                "{} (newest {b}, made by the rollback that restored {restored})",
                r.backups
            ),
            (Some(b), None) => format!("{} (newest {b})", r.backups),
            (None, _) => "none".into(),
        },
    ));
    lines.push(("record", r.record_from.replace('_', " ")));
    if !r.schemas.is_empty() {
        lines.push(("schemas", r.schemas.join(", ")));
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &lines {
        crate::outln!("{:width$}  {v}", format!("{k}:"), width = width + 1);
    }
    if let Some(m) = &r.migration
        && !m.phases.is_empty()
        && r.state != State::Idle
    {
        crate::outln!();
        let mut t = Table::new(["phase", "status", "duration", "detail"]).right(2);
        for p in &m.phases {
            t.row([
                p.name.to_string(),
                p.status.to_string(),
                p.duration_ms.map(human_ms).unwrap_or_else(|| "-".into()),
                p.detail.clone().unwrap_or_default(),
            ]);
        }
        t.print();
    }
    for w in &r.warnings {
        crate::outln!("warning: {w}");
    }
    Ok(())
}

/// A count from the status JSON, "?" when it was not taken.
fn counted(v: &serde_json::Value) -> String {
    if v.is_null() {
        "?".to_string()
    } else {
        v.to_string()
    }
}
