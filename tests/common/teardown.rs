//! Making sure no cluster outlives the test process.
//!
//! Three layers, each enough on its own for the case it covers:
//!
//! * `Drop` of a [`super::Cluster`] (private clusters from `start_new()`, also during a
//!   panic's unwinding) stops the server and removes its directory.
//! * An `atexit` handler stops every cluster still registered (the shared clusters live
//!   in statics, which are never dropped) when the process exits normally; libtest
//!   calls `exit(101)` when a test failed, so failures are covered too.
//! * A watchdog per cluster: a detached `sh` (own session, stdio on /dev/null, no other
//!   inherited descriptors) polling the test process; once it is gone (SIGKILL,
//!   SIGINT from Ctrl-C, abort) it sends SIGQUIT (immediate shutdown) to the postmaster,
//!   SIGKILL if that did not work within 10 s, and `rm -rf`s the cluster directory.
//!   It exits on its own as soon as the directory is gone, so a normal teardown leaves
//!   nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, Once};
use std::time::Duration;

use super::proc::{RunAs, fd_hygiene, process_alive, remove_pg_env, wait_until};

/// Everything needed to tear a cluster down without the `Cluster` value.
#[derive(Clone, Debug)]
pub struct Registration {
    pub id: u64,
    pub base: PathBuf,
    pub data: PathBuf,
    pub bindir: PathBuf,
    pub run_as: Option<RunAs>,
    pub watchdog_pid: Option<i32>,
}

static REGISTRY: Mutex<Vec<Registration>> = Mutex::new(Vec::new());
static ATEXIT: Once = Once::new();

/// Set to `1` to start clusters without a watchdog (used by the harness's own
/// teardown test to prove the `atexit` path on its own).
pub const NO_WATCHDOG_ENV: &str = "PGSHIFT_HARNESS_NO_WATCHDOG";

fn registry() -> std::sync::MutexGuard<'static, Vec<Registration>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn register(reg: Registration) {
    ATEXIT.call_once(|| {
        // SAFETY: registering a plain extern "C" fn.
        let rc = unsafe { libc::atexit(cleanup_at_exit) };
        assert_eq!(rc, 0, "atexit registration failed");
    });
    registry().push(reg);
}

pub fn set_watchdog(id: u64, pid: i32) {
    if let Some(r) = registry().iter_mut().find(|r| r.id == id) {
        r.watchdog_pid = Some(pid);
    }
}

pub fn unregister(id: u64) {
    registry().retain(|r| r.id != id);
}

extern "C" fn cleanup_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        // Never block at exit: if a thread died holding the lock, take the data anyway.
        let entries: Vec<Registration> = match REGISTRY.try_lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(std::sync::TryLockError::Poisoned(p)) => std::mem::take(&mut *p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        for e in &entries {
            stop_and_remove(e);
        }
        for e in &entries {
            reap_watchdog(e);
        }
    });
}

/// Immediate shutdown (`pg_ctl stop -m immediate`, SIGKILL as a fallback), then remove
/// the cluster's directory. Never panics.
pub fn stop_and_remove(reg: &Registration) {
    let pid_file = reg.data.join("postmaster.pid");
    let pid = postmaster_pid_from(&pid_file);
    if pid_file.exists() {
        let mut cmd = server_command(&reg.bindir.join("pg_ctl"), &reg.base, reg.run_as.as_ref());
        cmd.arg("stop")
            .arg("-D")
            .arg(&reg.data)
            .args(["-m", "immediate", "-w", "-t", "20"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = cmd.status();
    }
    if let Some(pid) = pid
        && !wait_until(Duration::from_secs(10), || !process_alive(pid))
        && std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "postgres")
    {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = wait_until(Duration::from_secs(5), || !process_alive(pid));
    }
    let _ = std::fs::remove_dir_all(&reg.base);
}

/// Wait (bounded) for the watchdog, which exits by itself once the directory is gone.
pub fn reap_watchdog(reg: &Registration) {
    let Some(pid) = reg.watchdog_pid else { return };
    if reg.base.exists() {
        return; // it would wait for the test process to end: leave it alone
    }
    let _ = wait_until(Duration::from_secs(3), || {
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        r != 0 // reaped, or error (not our child / already reaped)
    });
}

pub fn postmaster_pid_from(pid_file: &Path) -> Option<i32> {
    std::fs::read_to_string(pid_file)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// A command for a server-side program (initdb, pg_ctl): runs as the server OS user
/// when we are root, with a clean `PG*` environment and no inherited descriptors.
pub fn server_command(program: &Path, base: &Path, run_as: Option<&RunAs>) -> Command {
    let mut cmd = Command::new(program);
    remove_pg_env(&mut cmd);
    cmd.current_dir(base).stdin(Stdio::null());
    if let Some(u) = run_as {
        use std::os::unix::process::CommandExt;
        // std drops the supplementary groups when it switches uid as root.
        cmd.uid(u.uid)
            .gid(u.gid)
            .env("HOME", base)
            .env("USER", &u.name);
    }
    fd_hygiene(&mut cmd, false);
    cmd
}

const WATCHDOG_SCRIPT: &str = r#"
testpid=$1; base=$2; data=$3
alive() {
  [ -r "/proc/$1/stat" ] || return 1
  read -r st < "/proc/$1/stat" || return 1
  st=${st##*") "}
  case $st in Z*|X*) return 1 ;; esac
  return 0
}
while kill -0 "$testpid" 2>/dev/null && alive "$testpid"; do
  [ -d "$base" ] || exit 0
  sleep 0.3
done
[ -d "$base" ] || exit 0
for attempt in 1 2; do
  pm=
  [ -r "$data/postmaster.pid" ] && read -r pm < "$data/postmaster.pid"
  if [ -n "$pm" ] && alive "$pm" && [ "$(cat "/proc/$pm/comm" 2>/dev/null)" = postgres ]; then
    kill -QUIT "$pm" 2>/dev/null
    i=0
    while alive "$pm" && [ "$i" -lt 50 ]; do sleep 0.2; i=$((i+1)); done
    alive "$pm" && kill -KILL "$pm" 2>/dev/null
  fi
done
rm -rf "$base"
"#;

/// Start the watchdog for a cluster living in `base`; returns its pid (None when disabled).
pub fn spawn_watchdog(base: &Path, data: &Path) -> Option<i32> {
    if std::env::var(NO_WATCHDOG_ENV).is_ok_and(|v| v == "1") {
        return None;
    }
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg("pgshift-test-watchdog")
        .arg(std::process::id().to_string())
        .arg(base)
        .arg(data)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    fd_hygiene(&mut cmd, true);
    // Reaped by `reap_watchdog` (Drop / atexit) with waitpid, not through this handle.
    #[allow(clippy::zombie_processes)]
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the cluster watchdog (/bin/sh): {e}"));
    Some(child.id() as i32)
}
