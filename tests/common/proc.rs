//! Small process and environment helpers shared by the harness modules.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The unprivileged OS account the server runs as when the tests run as root.
#[derive(Clone, Debug)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// `Some(user)` when the test process is root (the server refuses to run as root):
/// `PGSHIFT_TEST_OS_USER`, default `postgres`. `None` otherwise.
pub fn server_os_user() -> Option<RunAs> {
    static USER: OnceLock<Option<RunAs>> = OnceLock::new();
    USER.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let name = std::env::var("PGSHIFT_TEST_OS_USER")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "postgres".to_string());
        let (uid, gid) = lookup_user(&name).unwrap_or_else(|| {
            panic!(
                "the tests run as root, so the PostgreSQL server must run as an unprivileged \
                 OS user, but user {name:?} does not exist (set PGSHIFT_TEST_OS_USER)"
            )
        });
        Some(RunAs { name, uid, gid })
    })
    .clone()
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain old data; getpwnam_r fills it, pointing into buf.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the duration of the call.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    Some((pwd.pw_uid, pwd.pw_gid))
}

/// chown `path` to the server user (no-op when not running as root).
pub fn chown_to(path: &Path, run_as: Option<&RunAs>) {
    if let Some(u) = run_as {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
            .unwrap_or_else(|e| panic!("chown {} to {}: {e}", path.display(), u.name));
    }
}

/// The PostgreSQL binaries: `PGSHIFT_PG_BINDIR`, else `pg_config --bindir`.
pub fn pg_bindir() -> PathBuf {
    static BINDIR: OnceLock<PathBuf> = OnceLock::new();
    BINDIR
        .get_or_init(|| {
            if let Some(dir) = std::env::var_os("PGSHIFT_PG_BINDIR").filter(|s| !s.is_empty()) {
                return PathBuf::from(dir);
            }
            let out = Command::new("pg_config")
                .arg("--bindir")
                .output()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run pg_config ({e}); install PostgreSQL or set PGSHIFT_PG_BINDIR"
                    )
                });
            assert!(
                out.status.success(),
                "pg_config --bindir failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        })
        .clone()
}

/// Major version of the client programs in [`pg_bindir`] (`psql --version`): the
/// libpq that psql, pg_dump and pg_restore use, and the harness clusters' server.
pub fn bin_major() -> u32 {
    static MAJOR: OnceLock<u32> = OnceLock::new();
    *MAJOR.get_or_init(|| {
        let out = Command::new(pg_bindir().join("psql"))
            .arg("--version")
            .output()
            .expect("psql --version");
        let text = String::from_utf8_lossy(&out.stdout);
        // "psql (PostgreSQL) 13.16 (Debian …)"
        text.split_whitespace()
            .nth(2)
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("cannot read a version in {text:?}"))
    })
}

/// Every `PG*` variable of this process (that includes `PGSHIFT_*`).
pub fn inherited_pg_vars() -> Vec<OsString> {
    std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| k.to_string_lossy().starts_with("PG"))
        .collect()
}

/// Remove every inherited `PG*`/`PGSHIFT_*` variable from `cmd`'s environment.
pub fn remove_pg_env(cmd: &mut Command) {
    for k in inherited_pg_vars() {
        cmd.env_remove(k);
    }
}

/// Make sure a child does not inherit any file descriptor beyond stdin/stdout/stderr
/// (a long-lived child holding e.g. the test runner's output pipe would make
/// `cargo test` wait for it), and optionally start a new session.
pub fn fd_hygiene(cmd: &mut Command, new_session: bool) {
    // SAFETY: the closure only makes async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            if new_session {
                libc::setsid();
            }
            let r = libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if r != 0 {
                for fd in 3..4096 {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            Ok(())
        });
    }
}

/// Is `pid` a live process? Zombies count as gone (some container inits reap late).
pub fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}

/// Poll `cond` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Output of a finished child.
pub struct Finished {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Run `cmd` with `input` on stdin (written from a thread, so large outputs cannot deadlock).
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> std::io::Result<Finished> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    // Read stderr on a thread, stdout here.
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_end(&mut stdout)?;
    stderr.extend(err_reader.join().unwrap_or_default());
    let _ = writer.join();
    let status = child.wait()?;
    Ok(Finished {
        success: status.success(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// A random 64-bit number (std's per-process random hash keys; no extra crate needed).
pub fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::collections::hash_map::RandomState::new().hash_one((
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed),
    ))
}
