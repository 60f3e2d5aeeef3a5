//! Child processes (pg_dump, pg_restore, psql).
//!
//! - Connection details, the password above all, reach the child through its
//!   environment (`PG*` variables); the argv carries only options and paths.
//!   Every libpq variable inherited from pgshift's own environment is removed
//!   first, so the child sees exactly what pgshift sets.
//! - Each child runs in its own process group and gets `PR_SET_PDEATHSIG`, so
//!   it dies with pgshift even after `kill -9`.
//! - On cancellation the group gets SIGTERM, then SIGKILL after a grace period.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::error::Interrupted;

/// How long a child gets between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);

/// What to run.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Variables to set (connection settings, PGPASSWORD).
    pub env: Vec<(String, String)>,
    /// Variables to remove from the inherited environment.
    pub env_remove: Vec<String>,
}

impl ChildSpec {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        ChildSpec {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn envs(mut self, env: Vec<(String, String)>) -> Self {
        self.env.extend(env);
        self
    }

    pub fn env_remove(mut self, names: &[&str]) -> Self {
        self.env_remove.extend(names.iter().map(|n| n.to_string()));
        self
    }

    /// The program's file name, for messages.
    pub fn name(&self) -> String {
        self.program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.program.display().to_string())
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        without_own_env(cmd.as_std_mut());
        for name in &self.env_remove {
            cmd.env_remove(name);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.process_group(0);
        cmd.kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd
    }
}

/// What a finished child produced.
#[derive(Debug)]
pub struct Finished {
    pub stdout: Vec<u8>,
    pub stderr: String,
}

fn live_groups() -> &'static Mutex<HashSet<i32>> {
    static GROUPS: OnceLock<Mutex<HashSet<i32>>> = OnceLock::new();
    GROUPS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// SIGKILL every child process group still running. Used when pgshift must
/// exit at once (a second Ctrl-C).
pub fn kill_all_now() {
    let groups: Vec<i32> = live_groups()
        .lock()
        .map(|g| g.iter().copied().collect())
        .unwrap_or_default();
    for pgid in groups {
        // SAFETY: plain syscall on a process group we created.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
}

/// The child's process group while [`run`] owns it. Dropped before the child
/// is reaped (it is declared after it), so while it is armed the group id
/// cannot have been reused: a `run` future dropped half-way (a failure
/// elsewhere in a `select!`, the command's end) kills the whole group, not
/// only the leader that `kill_on_drop` reaches.
struct GroupGuard {
    pgid: i32,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            signal_group(self.pgid, libc::SIGKILL);
        }
        if let Ok(mut g) = live_groups().lock() {
            g.remove(&self.pgid);
        }
    }
}

fn signal_group(pgid: i32, sig: i32) {
    // SAFETY: plain syscall on a process group we created.
    unsafe {
        libc::killpg(pgid, sig);
    }
}

/// Run a child to completion, capturing stdout and stderr. A non-zero exit is
/// an error carrying the last lines of stderr. On cancellation the child's
/// process group gets SIGTERM, then SIGKILL after [`GRACE`], and the result is
/// [`Interrupted`].
pub async fn run(spec: &ChildSpec, cancel: &CancellationToken) -> Result<Finished> {
    let mut cmd = spec.command();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", spec.program.display()))?;
    let pid = child.id().context("child has no pid")? as i32;
    live_groups().lock().map(|mut g| g.insert(pid)).ok();
    let mut guard = GroupGuard {
        pgid: pid,
        armed: true,
    };
    tracing::debug!(program = %spec.name(), pid, "started child process");

    let mut stdout = child.stdout.take().context("child stdout")?;
    let mut stderr = child.stderr.take().context("child stderr")?;
    let out_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).await.map(|_| buf)
    });
    let err_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        stderr.read_to_end(&mut buf).await.map(|_| buf)
    });

    let status = tokio::select! {
        status = child.wait() => status.with_context(|| format!("waiting for {}", spec.name()))?,
        _ = cancel.cancelled() => {
            stop_group(&mut child, pid).await;
            guard.armed = false;
            return Err(anyhow::Error::new(Interrupted)
                .context(format!("{} stopped", spec.name())));
        }
    };
    // The leader is reaped: its id may be reused, never signal it again.
    guard.armed = false;
    let stdout = out_task.await.context("joining stdout reader")??;
    let stderr =
        String::from_utf8_lossy(&err_task.await.context("joining stderr reader")??).into_owned();
    if !status.success() {
        let tail = tail_lines(&stderr, 5);
        let how = match status.code() {
            Some(c) => format!("exited with status {c}"),
            None => "was killed by a signal".to_string(),
        };
        if tail.is_empty() {
            bail!("{} {how}", spec.name());
        }
        bail!("{} {how}: {tail}", spec.name());
    }
    Ok(Finished { stdout, stderr })
}

async fn stop_group(child: &mut tokio::process::Child, pgid: i32) {
    signal_group(pgid, libc::SIGTERM);
    if tokio::time::timeout(GRACE, child.wait()).await.is_err() {
        signal_group(pgid, libc::SIGKILL);
        let _ = child.wait().await;
    } else {
        // The leader is gone; make sure nothing else of its group survives.
        signal_group(pgid, libc::SIGKILL);
    }
}

/// The last `n` non-empty lines of a child's stderr, joined into one line.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join(" | ")
}

/// pgshift's own variables are none of a child's business, and
/// PGSHIFT_SOURCE_URL / PGSHIFT_DEST_URL may hold passwords.
fn without_own_env(cmd: &mut std::process::Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PGSHIFT_") {
            cmd.env_remove(&name);
        }
    }
}

/// A short-lived probe (`pg_config --bindir`, `pg_dump --version`): it
/// connects nowhere, so it gets neither pgshift's variables nor libpq's
/// (`PGPASSWORD`, `PGSERVICEFILE`, …), as a real run's child does not.
fn probe(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    without_own_env(&mut cmd);
    for name in crate::pg::conn::connspec::ConnSpec::child_env_remove() {
        cmd.env_remove(name);
    }
    cmd
}

/// Find a PostgreSQL client program: `$PGSHIFT_PG_BINDIR`, then
/// `pg_config --bindir`, then `PATH`.
pub fn find_pg_program(name: &str) -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("PGSHIFT_PG_BINDIR") {
        let p = Path::new(&dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
        bail!("{name} not found in PGSHIFT_PG_BINDIR={dir}");
    }
    if let Ok(out) = probe("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let p = Path::new(&dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("{name} not found (install the PostgreSQL client, or set PGSHIFT_PG_BINDIR)")
}

/// The major version of a PostgreSQL client program (`pg_dump --version`).
pub fn program_major_version(program: &Path) -> Result<u32> {
    let out = probe(program)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", program.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_major_version(&text).with_context(|| {
        format!(
            "cannot read the version of {} from {:?}",
            program.display(),
            text.trim()
        )
    })
}

/// `pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` -> 15; `9.6.3` -> 9.
pub fn parse_major_version(text: &str) -> Option<u32> {
    let after = text.split(')').nth(1).unwrap_or(text);
    let word = after.split_whitespace().next()?;
    let major = word.split(['.', 'b', 'r', 'd']).next()?;
    major.parse().ok()
}

/// This machine's name (empty when it cannot be read), for records and the run lock.
pub fn this_host() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether the process `pid` that a record says ran on `host` still runs:
/// None when that cannot be told (another host, no host), else whether it
/// exists (signal 0; a process of another user counts).
pub fn runs_here(pid: u32, host: &str) -> Option<bool> {
    let me = this_host();
    // application_name is cut at 63 bytes, so the host may be a prefix.
    if host.is_empty() || !(host == me || me.starts_with(host)) {
        return None;
    }
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    Some(rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Whether `pid`, recorded on `host`, is a pgshift process of one of
/// `commands` that still runs here: [`runs_here`], and its command line
/// (`/proc`) is a program named pgshift given one of them (a pid the system
/// has handed to another program since is not). Never this process.
pub fn pgshift_runs_here(pid: u32, host: &str, commands: &[&str]) -> bool {
    if pid == std::process::id() || runs_here(pid, host) != Some(true) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy);
    let named = args.next().is_some_and(|a| {
        Path::new(a.as_ref())
            .file_name()
            .is_some_and(|f| f.to_string_lossy().contains("pgshift"))
    });
    named && args.any(|a| commands.contains(&a.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_major_version("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(
            parse_major_version("pg_restore (PostgreSQL) 17devel"),
            Some(17)
        );
        assert_eq!(
            parse_major_version("pg_dump (PostgreSQL) 18beta1"),
            Some(18)
        );
        assert_eq!(parse_major_version("garbage"), None);
    }

    #[test]
    fn tail() {
        assert_eq!(tail_lines("a\n\nb\nc\n", 2), "b | c");
    }

    #[tokio::test]
    async fn env_not_argv_and_failure_text() {
        // SAFETY: no other test of this binary reads or writes this variable.
        unsafe { std::env::set_var("PGSHIFT_DEST_URL", "postgresql://u:hush@h/db") };
        let spec = ChildSpec::new("/bin/sh")
            .args([
                "-c",
                "echo \"$PGPASSWORD\"; test -z \"$PGSERVICE\" || echo leaked; env | grep -q hush && echo leaked; true",
            ])
            .envs(vec![("PGPASSWORD".into(), "s3cret".into())])
            .env_remove(&["PGSERVICE"]);
        let out = run(&spec, &CancellationToken::new()).await.unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "s3cret\n");
        let spec = ChildSpec::new("/bin/sh").args(["-c", "echo boom >&2; exit 3"]);
        let err = run(&spec, &CancellationToken::new())
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(err, "sh exited with status 3: boom");
    }

    #[tokio::test]
    async fn cancel_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let spec = ChildSpec::new("/bin/sh").args(["-c", &script]);
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            c2.cancel();
        });
        let err = run(&spec, &cancel).await.unwrap_err();
        assert!(err.chain().any(|c| c.is::<Interrupted>()));
        // The grandchild (sleep) was in the child's group and must be gone.
        let pid = grandchild(&pidfile);
        assert!(gone(pid), "grandchild {pid} survived cancellation");
    }

    /// The pid a test's shell wrote to `pidfile`.
    fn grandchild(pidfile: &Path) -> i32 {
        std::fs::read_to_string(pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Whether process `pid` is gone within 5 s.
    fn gone(pid: i32) -> bool {
        for _ in 0..50 {
            // SAFETY: signal 0 only checks for existence.
            if unsafe { libc::kill(pid, 0) } != 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    #[tokio::test]
    async fn dropping_a_run_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let spec = ChildSpec::new("/bin/sh").args(["-c", &script]);
        let cancel = CancellationToken::new();
        // The future is dropped (as a select! elsewhere drops it), not cancelled.
        let r = tokio::time::timeout(Duration::from_millis(300), run(&spec, &cancel)).await;
        assert!(r.is_err(), "the child should still have been running");
        let pid = grandchild(&pidfile);
        assert!(gone(pid), "grandchild {pid} survived the dropped run");
    }
}
