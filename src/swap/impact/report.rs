//! The report for people (`swap --dry-run`) and `status`'s one-line summary.

use super::{Effect, Impact, Operation, TableWrites};
use crate::output::{Table, human_ms};
use itertools::Itertools;

/// `1 table`, `3 tables`.
pub(crate) fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// A statement on one line, at most `max` characters (`…` when cut).
pub fn short_query(query: &str, max: usize) -> String {
    let one_line = query.split_whitespace().join(" ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// `impact: 2 statements will fail, 1 will change result type, writes to 1
/// non-preserved table`.
pub fn summary(i: &Impact) -> String {
    summary_of(i, Operation::Swap)
}

/// [`summary`] in the words of `op` (a rollback discards writes to tables
/// that are not kept).
pub fn summary_of(i: &Impact, op: Operation) -> String {
    let s = &i.statements;
    let mut parts: Vec<String> = Vec::new();
    if !s.failing.is_empty() {
        parts.push(format!(
            "{} will fail",
            plural(s.failing.len(), "statement")
        ));
    }
    if !s.result_type_changed.is_empty() {
        let n = s.result_type_changed.len();
        parts.push(if parts.is_empty() {
            format!("{} will change result type", plural(n, "statement"))
        } else {
            format!("{n} will change result type")
        });
    }
    if !i.discarded_writes.is_empty() {
        let n = i.discarded_writes.len();
        parts.push(match op {
            Operation::Swap => format!("writes to {}", plural(n, "non-preserved table")),
            Operation::Rollback => format!("writes to {} not kept", plural(n, "table")),
        });
    }
    if !i.unknown_writes.is_empty() {
        parts.push(format!(
            "unknown writes to {}",
            plural(i.unknown_writes.len(), "table")
        ));
    }
    let with_effect = |e: Effect| i.hazards.iter().filter(|h| h.effect == e).count();
    let breaking = with_effect(Effect::Breaks);
    if breaking > 0 {
        parts.push(plural(breaking, "breaking schema change"));
    }
    // Neither the server's parse of the statements nor their result types
    // show a write a new constraint will reject: the summary must not say
    // "nothing found" over them.
    let rejecting = with_effect(Effect::RejectsWrites);
    if rejecting > 0 {
        parts.push(format!(
            "{} that may reject writes",
            plural(rejecting, "schema change")
        ));
    }
    // Nor rows that appear or disappear for the application's roles.
    let access = with_effect(Effect::RowAccess);
    if access > 0 {
        parts.push(format!(
            "{} to row-level security",
            plural(access, "change")
        ));
    }
    if !i.blockers.is_empty() {
        parts.push(plural(i.blockers.len(), "blocking session"));
    }
    if !s.unchecked.is_empty() {
        parts.push(format!(
            "{} unchecked",
            plural(s.unchecked.len(), "statement")
        ));
    }
    if s.not_checked.is_some() {
        parts.push("workload not checked".to_string());
    }
    if parts.is_empty() {
        format!(
            "impact: nothing found ({} checked)",
            plural(s.checked, "recorded statement")
        )
    } else {
        format!("impact: {}", parts.join(", "))
    }
}

fn indent(text: &str, by: &str) -> String {
    text.lines()
        .map(|l| format!("{by}{l}\n"))
        .collect::<String>()
}

/// Writes per table (table, inserts, updates, deletes), with `note` as a
/// fifth, unnamed column when given.
pub fn writes_table(
    writes: &[TableWrites],
    note: Option<&dyn Fn(&TableWrites) -> String>,
) -> Table {
    let mut header = vec!["table", "inserts", "updates", "deletes"];
    if note.is_some() {
        header.push("");
    }
    let mut t = Table::new(header).right(1).right(2).right(3);
    for w in writes {
        let mut row = vec![
            w.table.clone(),
            w.inserts.to_string(),
            w.updates.to_string(),
            w.deletes.to_string(),
        ];
        row.extend(note.map(|f| f(w)));
        t.row(row);
    }
    t
}

/// The whole report as text, in the words of `op` (a rollback's writes are
/// those since the current public went live, kept rather than preserved).
pub fn render(i: &Impact, op: Operation) -> String {
    let mut out = String::from("Impact on the running application\n");
    out.push_str(&format!("  {}\n", summary_of(i, op)));

    if !i.discarded_writes.is_empty() {
        out.push_str(&format!(
            "\nDiscarded writes: written {} to {}; {}:\n",
            op.since(i.discarded_writes.iter().map(|d| &d.at)),
            op.not_covered(2),
            op.fate(i.discarded_writes.iter().map(|d| &d.at))
        ));
        let t = writes_table(&i.discarded_writes, None);
        out.push_str(&indent(&t.render(), "  "));
    }
    if !i.unknown_writes.is_empty() {
        out.push_str("\nWrites that cannot be checked:\n");
        for u in &i.unknown_writes {
            out.push_str(&format!("  {}: {}\n", u.table, u.reason));
        }
    }
    if !i.discarded_writes.is_empty() || !i.unknown_writes.is_empty() {
        out.push_str(&format!(
            "  Unless --allow-discard covers them, {} refuses these: {}, or pass --allow-discard TABLES (or all).\n",
            op.subject(),
            match op {
                Operation::Swap => "prepare again with the tables in --preserved-tables (or keep those the source does not have with --keep-tables)",
                Operation::Rollback => "keep the tables with --keep-tables",
            }
        ));
    }

    if !i.hazards.is_empty() {
        out.push_str("\nSchema changes:\n");
        let mut t = Table::new(["effect", "code", "object", "detail"]);
        for h in &i.hazards {
            t.row([
                h.effect.as_str().to_string(),
                h.code.clone(),
                h.object.clone(),
                h.detail.clone(),
            ]);
        }
        out.push_str(&indent(&t.render(), "  "));
    }
    for n in &i.notes {
        out.push_str(&format!("  Note: {n}.\n"));
    }

    let s = &i.statements;
    out.push('\n');
    match &s.not_checked {
        Some(why) => out.push_str(&format!("Recorded statements: not checked: {why}.\n")),
        None => {
            out.push_str(&format!(
                "Recorded statements ({}): {} checked\n",
                s.source, s.checked
            ));
            statement_section(
                &mut out,
                &format!("Will fail after {}", op.subject()),
                s.failing
                    .iter()
                    .map(|f| (&f.query, Some(f.calls), f.error.clone())),
            );
            statement_section(
                &mut out,
                "Will change result type (prepared statements fail until prepared again with \"cached plan must not change result type\")",
                s.result_type_changed
                    .iter()
                    .map(|c| (&c.query, Some(c.calls), c.columns.join("; "))),
            );
            statement_section(
                &mut out,
                "Not checked",
                s.unchecked
                    .iter()
                    .map(|u| (&u.query, None, u.reason.clone())),
            );
        }
    }

    if !i.blockers.is_empty() {
        out.push_str(&format!(
            "\nSessions that would hold {} up:\n",
            op.subject()
        ));
        let mut t = Table::new([
            "pid",
            "role",
            "application",
            "client",
            "transaction",
            "state",
            "tables",
            "query",
        ])
        .right(0)
        .right(4);
        for b in &i.blockers {
            t.row([
                b.pid.to_string(),
                b.role.clone(),
                b.application_name.clone(),
                b.client_addr.clone().unwrap_or_else(|| "local".into()),
                human_ms(b.xact_age_ms.max(0) as u64),
                format!("{}{}", b.state, if b.waiting { " (waiting)" } else { "" }),
                b.tables.join(", "),
                short_query(&b.query, 60),
            ]);
        }
        out.push_str(&indent(&t.render(), "  "));
    }
    out
}

/// One group of recorded statements: its title, then each statement (with
/// its calls, when counted) and, below it, what is wrong with it. Nothing
/// when the group is empty.
fn statement_section<'a>(
    out: &mut String,
    title: &str,
    items: impl ExactSizeIterator<Item = (&'a String, Option<i64>, String)>,
) {
    if items.len() == 0 {
        return;
    }
    out.push_str(&format!("  {title}:\n"));
    for (query, calls, detail) in items {
        let calls = calls
            .map(|c| format!(" ({})", plural(c as usize, "call")))
            .unwrap_or_default();
        out.push_str(&format!(
            "    {}{calls}\n      {detail}\n",
            short_query(query, 100)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    /// An impact report whose recorded statements were checked (`n` of them,
    /// from `source`), with nothing found yet.
    fn checked(n: usize, source: &str) -> Impact {
        let mut i = Impact {
            statements: StatementsReport::not_checked("x"),
            ..Default::default()
        };
        i.statements.not_checked = None;
        i.statements.source = source.into();
        i.statements.checked = n;
        i
    }

    #[test]
    fn summary_line() {
        let mut i = checked(12, "none");
        assert_eq!(
            summary(&i),
            "impact: nothing found (12 recorded statements checked)"
        );
        // A new constraint that the old application's writes may break is
        // no "nothing found" (Airflow's new NOT NULL column of dag).
        let mut with_hazard = checked(1, "pg_stat_statements");
        with_hazard.hazards.push(Hazard {
            code: "NOT_NULL_ADDED".into(),
            effect: Effect::RejectsWrites,
            object: "public.dag.max_runs".into(),
            detail: "new NOT NULL column without a default".into(),
        });
        assert_eq!(
            summary(&with_hazard),
            "impact: 1 schema change that may reject writes"
        );
        let f = FailingStatement {
            query: "SELECT 1".into(),
            calls: 1,
            error: "e".into(),
        };
        i.statements.failing = vec![f.clone(), f];
        i.statements.result_type_changed = vec![TypeChangedStatement {
            query: "SELECT 2".into(),
            calls: 2,
            columns: vec!["a: text -> email".into()],
        }];
        i.discarded_writes = vec![DiscardedWrite {
            table: "accounts".into(),
            inserts: 3,
            updates: 0,
            deletes: 0,
            partition_of: None,
            at: super::super::writes::TableKey {
                schema: "public".into(),
                name: "accounts".into(),
                ancestors: Vec::new(),
            },
        }];
        assert_eq!(
            summary(&i),
            "impact: 2 statements will fail, 1 will change result type, writes to 1 non-preserved table"
        );
        let text = render(&i, Operation::Swap);
        assert!(
            text.contains("accounts        3        0        0"),
            "{text}"
        );
        assert!(text.contains("a: text -> email"), "{text}");
        assert!(
            text.contains("written since prepare started to tables that are not preserved")
                && text.contains(
                    "the swap refuses these: prepare again with the tables in --preserved-tables"
                ),
            "{text}"
        );
        // A rollback's dry run says it in its own words.
        let text = render(&i, Operation::Rollback);
        assert!(
            text.contains("written since the current public went live to tables that are not kept; the rows would stay in the new backup")
                && text.contains("the rollback refuses these: keep the tables with --keep-tables")
                && text.contains("Will fail after the rollback")
                && text.contains("writes to 1 table not kept")
                && !text.contains("swap"),
            "{text}"
        );
        assert_eq!(short_query("SELECT  a,\n b FROM t", 12), "SELECT a, b…");
    }

    #[test]
    fn statements_text() {
        let mut i = checked(3, "pg_stat_statements");
        i.statements.failing = vec![FailingStatement {
            query: "SELECT a FROM t".into(),
            calls: 1,
            error: "column \"a\" does not exist".into(),
        }];
        i.statements.result_type_changed = vec![TypeChangedStatement {
            query: "SELECT * FROM u".into(),
            calls: 7,
            columns: vec!["b: text -> email".into(), "c: (none) -> integer".into()],
        }];
        i.statements.unchecked = vec![UncheckedStatement {
            query: "SELECT f(".into(),
            reason: "the recorded text does not parse: syntax error".into(),
            calls: 2,
        }];
        let text = render(&i, Operation::Swap);
        let at = text.find("Recorded statements").expect(&text);
        assert_eq!(
            &text[at..],
            "Recorded statements (pg_stat_statements): 3 checked
  Will fail after the swap:
    SELECT a FROM t (1 call)
      column \"a\" does not exist
  Will change result type (prepared statements fail until prepared again with \"cached plan must not change result type\"):
    SELECT * FROM u (7 calls)
      b: text -> email; c: (none) -> integer
  Not checked:
    SELECT f(
      the recorded text does not parse: syntax error
"
        );
    }
}
