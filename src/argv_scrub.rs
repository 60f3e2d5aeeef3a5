//! Hiding passwords given on pgshift's own command line from the process list.
//!
//! `pgshift status --dest postgresql://app:secret@db/shop` would otherwise show
//! `secret` in `ps` and `/proc/<pid>/cmdline` to every user of the machine for as
//! long as pgshift runs. Like the mysql client, pgshift overwrites the password in
//! its own argument strings as the very first thing it does, before parsing them.
//!
//! **Mechanism.** The kernel's view of the command line (`/proc/<pid>/cmdline`,
//! which `ps` reads) is the memory area `arg_start..arg_end` of the process: the
//! argument strings, NUL-separated, that `execve` copied onto the initial stack. Its
//! address is in `/proc/self/stat` (fields 48 and 49, Linux 3.5+). This works the
//! same with glibc and musl: it needs neither libc's `argv` (with musl, init_array
//! functions do not receive argc/argv, and Rust's std does not hand out the original
//! argv memory) nor anything but `/proc`. Before writing, the area is compared with
//! the arguments std reports; if they differ (another program rewrote its title, an
//! unusual kernel), nothing is written.
//!
//! Each password (found with [`password_spans`], so every form the connection
//! parser accepts: `postgresql://u:PW@h/db`, `?password=PW`, `password=PW` in a
//! conninfo string) in the value of a connection flag (`--dest URL` or
//! `--dest=URL`) becomes `***`; the rest of that argument moves left and the bytes
//! it frees at its end become NULs. Nothing outside the argument moves, so the other
//! arguments stay where the argv pointers point, and `std::env::args()` reads the
//! redacted argument from then on. (The number of NULs, i.e. the password's length,
//! remains visible in `/proc/<pid>/cmdline` as empty arguments.)
//!
//! **Residual window.** Between `execve` and the scrub (the dynamic loader and std's
//! start-up: about a millisecond or two, up to ten measured on a loaded 2-core
//! machine) the password is readable in `/proc`. It also
//! stays in the shell's history and in any process accounting or audit log that
//! records `execve`. So this is a safety net for pasted URLs: passwords belong in
//! `PGSHIFT_DEST_URL`/`PGSHIFT_SOURCE_URL`, the config file, `PGPASSWORD`,
//! `~/.pgpass` or a service file.
//!
//! Call [`hide_passwords`] before any other thread exists: the write is not
//! synchronised with readers of the argument memory.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use crate::pg::conn::connspec::password_spans;

/// What [`hide_passwords`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No connection flag value held a password.
    NothingToHide,
    /// This many passwords were overwritten.
    Hidden(usize),
    /// Passwords were found but could not be overwritten (the reason, for a warning).
    Failed(String),
}

/// Overwrite every password in the values of `flags` (e.g. `["--source", "--dest"]`)
/// in this process's argument memory. `args` are the arguments as std reports them
/// (`std::env::args_os()`), program name first. See the module docs.
pub fn hide_passwords(args: &[OsString], flags: &[&str]) -> Outcome {
    let edits = plan(args, flags);
    if edits.is_empty() {
        return Outcome::NothingToHide;
    }
    match overwrite(args, &edits) {
        Ok(()) => Outcome::Hidden(edits.iter().map(|e| e.passwords).sum()),
        Err(reason) => Outcome::Failed(reason),
    }
}

/// One argument to rewrite: its index and its new bytes (same length).
#[derive(Debug, PartialEq, Eq)]
struct Edit {
    index: usize,
    bytes: Vec<u8>,
    passwords: usize,
}

/// The arguments holding passwords and what they become.
fn plan(args: &[OsString], flags: &[&str]) -> Vec<Edit> {
    let mut edits = Vec::new();
    let mut i = 1;
    while i < args.len() {
        let arg = args[i].as_bytes();
        if arg == b"--" {
            break;
        }
        let mut value = None;
        for flag in flags {
            let flag = flag.as_bytes();
            if arg == flag {
                // `--dest VALUE`: the next argument.
                if i + 1 < args.len() {
                    value = Some((i + 1, 0));
                }
            } else if arg.len() > flag.len() && arg.starts_with(flag) && arg[flag.len()] == b'=' {
                value = Some((i, flag.len() + 1));
            }
        }
        if let Some((index, skip)) = value {
            if let Some(edit) = redact(index, args[index].as_bytes(), skip) {
                edits.push(edit);
            }
            i = index + 1;
        } else {
            i += 1;
        }
    }
    edits
}

/// `arg` with every password after byte `skip` replaced by `***` (fewer stars for
/// a shorter password), padded with NULs to the same length.
fn redact(index: usize, arg: &[u8], skip: usize) -> Option<Edit> {
    let value = std::str::from_utf8(&arg[skip..]).ok()?;
    let (starred, passwords) = starred(value, |len| len.min(3))?;
    let mut out = arg[..skip].to_vec();
    out.extend_from_slice(starred.as_bytes());
    out.resize(arg.len(), 0);
    Some(Edit {
        index,
        bytes: out,
        passwords,
    })
}

/// `value` with each of its passwords ([`password_spans`]) replaced by
/// `stars(its length)` stars, and how many there were; None without one.
fn starred(value: &str, stars: impl Fn(usize) -> usize) -> Option<(String, usize)> {
    starred_spans(value, &password_spans(value), stars)
}

/// `value` with each of `spans` replaced by `stars(its length)` stars, and
/// how many there were; None without one.
fn starred_spans(
    value: &str,
    spans: &[std::ops::Range<usize>],
    stars: impl Fn(usize) -> usize,
) -> Option<(String, usize)> {
    if spans.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(value.len());
    let mut last = 0;
    for span in spans {
        if span.start < last {
            continue;
        }
        out.push_str(&value[last..span.start]);
        out.push_str(&"*".repeat(stars(span.len())));
        last = span.end;
    }
    out.push_str(&value[last..]);
    Some((out, spans.len()))
}

/// The passwords of pgshift's own arguments as a message could quote them:
/// each argument (and the value of a `--flag=value` one) that holds a
/// password, with its redacted form, longest first. A URL typed where clap
/// expects something else (a forgotten `--dest`, a URL given to `--jobs`)
/// comes back verbatim in clap's error, and a config path in a config error:
/// [`scrub_message`] hides them there.
pub fn secret_arguments(args: &[OsString]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for a in args.iter().skip(1) {
        let Some(a) = a.to_str() else { continue };
        let mut candidates = vec![a];
        if let Some((flag, value)) = a.split_once('=')
            && flag.starts_with("--")
        {
            candidates.push(value);
        }
        for c in candidates {
            let spans = embedded_password_spans(c);
            if let Some((red, _)) = starred_spans(c, &spans, |_| 3) {
                out.push((c.to_string(), red));
            }
            // A list's parser cuts a password with a comma in it: each item
            // that holds part of one, with that part hidden (not the short
            // ones, which would hide the same letters anywhere).
            let mut at = 0;
            for item in c.split(',') {
                let range = at..at + item.len();
                at = range.end + 1;
                if item.len() < 4 || item.len() == c.len() {
                    continue;
                }
                let inner: Vec<std::ops::Range<usize>> = spans
                    .iter()
                    .filter(|p| p.start < range.end && range.start < p.end)
                    .map(|p| {
                        p.start.max(range.start) - range.start..p.end.min(range.end) - range.start
                    })
                    .collect();
                if let Some((red, _)) = starred_spans(item, &inner, |_| 3) {
                    out.push((item.to_string(), red));
                }
            }
            // A message may quote a part of it (one item of a list) or
            // rewrite it (quotes put around a part): each password with the
            // characters either side, `:PW@` or `=PW ` say.
            for span in &spans {
                let before = c[..span.start].chars().next_back();
                let after = c[span.end..].chars().next();
                let (b, a) = (
                    before.map(String::from).unwrap_or_default(),
                    after.map(String::from).unwrap_or_default(),
                );
                if before.is_some() || after.is_some() {
                    out.push((format!("{b}{}{a}", &c[span.clone()]), format!("{b}***{a}")));
                }
            }
        }
    }
    out.sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
    out.dedup();
    out
}

/// The passwords written anywhere in `value` ([`password_spans`]): in the
/// whole of it (a URL or conninfo string), in each of its comma-separated
/// items (a list flag given `users,postgresql://u:pw@h/db`) and in each URL
/// that starts inside it. Byte ranges of `value`, in order, without overlaps.
pub fn embedded_password_spans(value: &str) -> Vec<std::ops::Range<usize>> {
    let lower = value.to_ascii_lowercase();
    let mut starts = vec![0];
    starts.extend(value.match_indices(',').map(|(i, _)| i + 1));
    starts.extend(lower.match_indices("postgres").map(|(i, _)| i));
    starts.sort_unstable();
    starts.dedup();
    let mut spans = Vec::new();
    for start in starts {
        let rest = &value[start..];
        // An item runs to the next comma; a URL or the whole value to the end.
        let whole = password_spans(rest);
        let item = match rest.split_once(',') {
            Some((item, _)) => password_spans(item),
            None => Vec::new(), // the item is `rest`: parsed above
        };
        spans.extend(
            whole
                .into_iter()
                .chain(item)
                .map(|r| r.start + start..r.end + start),
        );
    }
    spans.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for r in spans {
        if out.last().is_none_or(|l| r.start >= l.end) {
            out.push(r);
        }
    }
    out
}

/// [`secret_arguments`] of pgshift's own environment variables
/// (`PGSHIFT_*`): a URL given to the wrong one (`PGSHIFT_JOBS`) is quoted by
/// the error about its value.
pub fn secret_environment() -> Vec<(String, String)> {
    let values: Vec<OsString> = std::iter::once(OsString::new())
        .chain(
            std::env::vars_os()
                .filter(|(k, _)| k.to_str().is_some_and(|k| k.starts_with("PGSHIFT_")))
                .map(|(_, v)| v),
        )
        .collect();
    secret_arguments(&values)
}

/// `text` with every argument of [`secret_arguments`] replaced by its
/// redacted form.
pub fn scrub_message(text: &str, secrets: &[(String, String)]) -> String {
    let mut out = text.to_string();
    for (plain, red) in secrets {
        if out.contains(plain.as_str()) {
            out = out.replace(plain.as_str(), red);
        }
    }
    out
}

/// `arg_start` and `arg_end` from `/proc/self/stat`.
fn arg_area() -> Result<(usize, usize), String> {
    let stat = std::fs::read_to_string("/proc/self/stat")
        .map_err(|e| format!("cannot read /proc/self/stat: {e}"))?;
    // Fields after the command name, which is in parentheses and may contain anything.
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or("unexpected /proc/self/stat format")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state); arg_start is field 48, arg_end field 49.
    let field = |n: usize| -> Result<usize, String> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("/proc/self/stat has no field {n} (Linux 3.5 or later needed)"))
    };
    Ok((field(48)?, field(49)?))
}

fn overwrite(args: &[OsString], edits: &[Edit]) -> Result<(), String> {
    let (start, end) = arg_area()?;
    let mut expected: Vec<u8> = Vec::new();
    let mut offsets = Vec::with_capacity(args.len());
    for a in args {
        offsets.push(expected.len());
        expected.extend_from_slice(a.as_bytes());
        expected.push(0);
    }
    if start == 0 || end < start || end - start != expected.len() {
        return Err(format!(
            "the argument area ({} bytes) does not match the {} bytes of arguments",
            end.saturating_sub(start),
            expected.len()
        ));
    }
    let base = std::ptr::with_exposed_provenance_mut::<u8>(start);
    // SAFETY: arg_start..arg_end is this process's own argument area, mapped
    // read-write on the initial stack for the whole life of the process (the kernel
    // reads it for /proc/<pid>/cmdline). Nothing else writes it, and the caller runs
    // before other threads exist.
    let current = unsafe { std::slice::from_raw_parts(base.cast_const(), expected.len()) };
    if current != expected.as_slice() {
        return Err("the argument area does not hold the arguments std reports".to_string());
    }
    for edit in edits {
        let at = offsets[edit.index];
        debug_assert_eq!(edit.bytes.len(), args[edit.index].len());
        // SAFETY: as above; at + len stays inside the argument's own bytes (checked
        // equal to `args`), before its terminating NUL.
        unsafe {
            std::ptr::copy_nonoverlapping(edit.bytes.as_ptr(), base.add(at), edit.bytes.len());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn shown(edit: &Edit) -> String {
        String::from_utf8_lossy(&edit.bytes).replace('\0', "␀")
    }

    const FLAGS: [&str; 2] = ["--source", "--dest"];

    #[test]
    fn plans_every_form() {
        let a = args(&[
            "pgshift",
            "start",
            "--source",
            "postgresql://u:secret@h/db?sslmode=require",
            "--dest=host=h password='two words' dbname=d",
            "--preserved-tables",
            "password=notaflag",
        ]);
        let edits = plan(&a, &FLAGS);
        assert_eq!(edits.len(), 2, "{edits:?}");
        assert_eq!(edits[0].index, 3);
        assert_eq!(
            shown(&edits[0]),
            "postgresql://u:***@h/db?sslmode=require␀␀␀"
        );
        assert_eq!(edits[1].index, 4);
        assert_eq!(
            shown(&edits[1]),
            "--dest=host=h password='***' dbname=d␀␀␀␀␀␀"
        );
        for e in &edits {
            assert_eq!(e.bytes.len(), a[e.index].len());
        }
    }

    #[test]
    fn query_password_short_password_and_two_passwords() {
        let a = args(&[
            "pgshift",
            "list",
            "--dest",
            "postgresql://u@h/d?password=p&application_name=x",
        ]);
        let a = [
            a,
            args(&["--source", "postgresql://u:ab@h/d?password=xyzw"]),
        ]
        .concat();
        let edits = plan(&a, &FLAGS);
        assert_eq!(
            shown(&edits[0]),
            "postgresql://u@h/d?password=*&application_name=x"
        );
        assert_eq!(shown(&edits[1]), "postgresql://u:**@h/d?password=***␀");
        assert_eq!(edits[1].passwords, 2);
    }

    #[test]
    fn passwords_inside_a_list_or_a_longer_value_are_found() {
        for (value, want) in [
            ("users,postgresql://u:pw1@h/db", &["pw1"][..]),
            ("users,host=h password=pw2", &["pw2"]),
            ("see postgres://u:pw3@h/db, then", &["pw3"]),
            ("postgresql://u:a,b@h/db", &["a,b"]),
            ("users,orders,audit.log", &[]),
        ] {
            let found: Vec<&str> = embedded_password_spans(value)
                .into_iter()
                .map(|r| &value[r])
                .collect();
            assert_eq!(found, want, "{value}");
        }
        // A message that quotes only part of the value, or rewrites it.
        let secrets =
            secret_arguments(&args(&["pgshift", "users,postgresql://u:pw1@h.example/db"]));
        assert_eq!(
            scrub_message(r#"name '"postgresql://u:pw1@h".example/db'"#, &secrets),
            r#"name '"postgresql://u:***@h".example/db'"#
        );
        // A list's parser cuts a password with a comma: each part is hidden.
        let secrets = secret_arguments(&args(&["pgshift", "public,postgresql://u:x,SEK@h/db"]));
        assert_eq!(
            scrub_message(r#"name "postgresql://u:x"; no table SEK@h/db"#, &secrets),
            r#"name "postgresql://u:***"; no table ***@h/db"#
        );
    }

    #[test]
    fn leaves_the_rest_alone() {
        for list in [
            &["pgshift", "list", "--dest", "postgresql://u@h/db"][..],
            &["pgshift", "list", "--dest"],
            &["pgshift", "list", "--", "--dest", "postgresql://u:pw@h/db"],
            &["pgshift", "list", "--destination=postgresql://u:pw@h/db"],
        ] {
            assert!(plan(&args(list), &FLAGS).is_empty(), "{list:?}");
        }
        // Refused by the parser (pgshift stops at once), hidden all the same:
        // found by its shape.
        let edits = plan(
            &args(&["pgshift", "list", "--dest", "postgresql://u:pw@h/db/x@y"]),
            &FLAGS,
        );
        assert_eq!(shown(&edits[0]), "postgresql://u:**@h/db/x@y");
        assert_eq!(
            hide_passwords(&args(&["pgshift", "list"]), &FLAGS),
            Outcome::NothingToHide
        );
    }

    #[test]
    fn refuses_an_area_that_does_not_match() {
        // The test binary's real arguments are not these.
        let a = args(&["pgshift", "--dest", "postgresql://u:pw@h/db"]);
        match hide_passwords(&a, &FLAGS) {
            Outcome::Failed(reason) => assert!(reason.contains("argument area"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
