//! The state file: `.migration-state-{database}.json` in the state directory,
//! holding a [`MigrationState`] (see `migration::record`).
//!
//! It records exactly where a run is: which phases finished, with timings and
//! sizes, the failed phase and its error, the dump directory and the snapshot
//! time. It is written atomically (temporary file, fsync, rename, fsync of the
//! directory), created 0600, and a run holds an exclusive `flock` on a sibling
//! `.lock` file for its whole duration so two runs from one directory cannot
//! interleave. The destination keeps its own copy of the same record (see
//! `migration::record`), so `status` also works without this file.
//!
//! The file is named after the database only: a directory used for two
//! destinations of one name holds one file. A run whose destination finds the
//! file to be another destination's (`migration::derive`) calls
//! [`StateFile::leave_alone`]: it then neither writes nor removes it, and goes
//! by the destination's own record. A prepare replaces it, saying so.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};

use crate::migration::record::{MigrationState, STATE_VERSION};

/// The state file path for a destination database.
pub fn state_path(dir: &Path, database: &str) -> PathBuf {
    dir.join(format!(".migration-state-{}.json", file_safe(database)))
}

/// A database name made safe for a file name: path separators, control
/// characters and leading dots are replaced.
pub fn file_safe(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c == '\0' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// Read the state file without taking the lock (for `status`). `None` if absent.
pub fn read(dir: &Path, database: &str) -> Result<Option<MigrationState>> {
    read_path(&state_path(dir, database))
}

fn read_path(path: &Path) -> Result<Option<MigrationState>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading state file {}", path.display())),
    };
    let state: MigrationState = serde_json::from_str(&text)
        .with_context(|| format!("state file {} is not valid", path.display()))?;
    if state.version > STATE_VERSION {
        bail!(
            "state file {} was written by a newer pgshift (layout {}; this one reads {})",
            path.display(),
            state.version,
            STATE_VERSION
        );
    }
    Ok(Some(state))
}

/// A state directory the user cannot write to (a read-only working
/// directory, a cron job's `/`, a full disk) is bad input, with the way out:
/// exit 2.
fn unwritable(dir: &Path, e: std::io::Error, doing: &str, what: &Path) -> anyhow::Error {
    let denied =
        e.kind() == std::io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(libc::EROFS);
    let full = matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
    // A path through a regular file, or where no directory can be made.
    let unmakeable = doing == "creating state directory"
        && matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ENOENT));
    if unmakeable {
        crate::error::UserError::new(format!(
            "the state directory {} cannot be made ({e}); give --state-dir a directory that can be",
            dir.display()
        ))
        .into()
    } else if denied {
        crate::error::UserError::new(format!(
            "the state directory {} is not writable ({e}); run from a writable directory or give --state-dir",
            dir.display()
        ))
        .into()
    } else if full {
        crate::error::UserError::new(format!(
            "the state directory {} cannot be written ({e}); free some space there, or give --state-dir",
            dir.display()
        ))
        .into()
    } else {
        anyhow::Error::new(e).context(format!("{doing} {}", what.display()))
    }
}

/// The state file of one destination database, locked for this run.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    _lock: File,
    /// The file records another destination's migration: not ours to write.
    left_alone: AtomicBool,
}

impl StateFile {
    /// Take the exclusive lock (without waiting) and return the handle.
    /// Fails if another pgshift run in the same directory holds it, naming
    /// it as it named itself: the lock file holds its `holder` line
    /// (`pgshift swap pid=4242 host=ops1`) and since when. Writing that line
    /// is also this run's first write there: a full disk is said now.
    pub fn lock(dir: &Path, database: &str, holder: &str) -> Result<StateFile> {
        fs::create_dir_all(dir).map_err(|e| unwritable(dir, e, "creating state directory", dir))?;
        let path = state_path(dir, database);
        let lock_path = path.with_extension("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| unwritable(dir, e, "opening lock file", &lock_path))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let by = fs::read_to_string(&lock_path)
                    .ok()
                    .and_then(|t| t.lines().next().map(str::trim).map(str::to_string))
                    .filter(|l| !l.is_empty())
                    .map(|l| format!("{l}; "))
                    .unwrap_or_default();
                bail!(
                    "another pgshift run in this state directory holds {} ({by}one run at a time)",
                    lock_path.display()
                );
            }
            return Err(err).with_context(|| format!("locking {}", lock_path.display()));
        }
        let line = format!(
            "{holder} since {}\n",
            chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
        );
        let mut f = &lock;
        f.set_len(0)
            .and_then(|()| f.write_all(line.as_bytes()))
            .map_err(|e| unwritable(dir, e, "writing lock file", &lock_path))?;
        Ok(StateFile {
            path,
            _lock: lock,
            left_alone: AtomicBool::new(false),
        })
    }

    /// From now on this run neither writes nor removes the file (it records
    /// another destination's migration).
    pub fn leave_alone(&self) {
        self.left_alone.store(true, Ordering::Relaxed);
    }

    fn left_alone(&self) -> bool {
        self.left_alone.load(Ordering::Relaxed)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load(&self) -> Result<Option<MigrationState>> {
        read_path(&self.path)
    }

    /// Write atomically: 0600 temporary file, fsync, rename over, fsync the directory.
    pub fn save(&self, state: &MigrationState) -> Result<()> {
        if self.left_alone() {
            return Ok(());
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = self
            .path
            .with_extension(format!("json.tmp.{}", std::process::id()));
        let body = serde_json::to_vec_pretty(state).context("serialising state")?;
        let written = (|| {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&body)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = written {
            // A full disk leaves an empty temporary file behind otherwise.
            let _ = fs::remove_file(&tmp);
            return Err(e)
                .with_context(|| format!("writing the state file {}", self.path.display()));
        }
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Remove the state file (after a successful swap or an abort).
    pub fn clear(&self) -> Result<()> {
        if self.left_alone() {
            return Ok(());
        }
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> MigrationState {
        let dest = crate::pg::conn::connspec::ConnSpec::parse("postgresql://u:pw@h/shop").unwrap();
        let mut st = MigrationState::new(1_700_000_000_000, "prepare", None, &dest);
        st.phase = Some(crate::migration::lifecycle::Phase::Data);
        st
    }

    #[test]
    fn save_load_clear_roundtrip_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let sf = StateFile::lock(dir.path(), "shop", "pgshift prepare").unwrap();
        assert!(sf.load().unwrap().is_none());
        let st = sample();
        sf.save(&st).unwrap();
        assert_eq!(sf.load().unwrap().unwrap(), st);
        assert_eq!(read(dir.path(), "shop").unwrap().unwrap(), st);
        let mode = fs::metadata(sf.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(sf.path().ends_with(".migration-state-shop.json"));
        sf.clear().unwrap();
        assert!(sf.load().unwrap().is_none());
    }

    /// A state directory whose disk is full said "could not record the
    /// failure on the destination: No space left on device", naming no file,
    /// and left an empty temporary file behind.
    #[test]
    fn a_failed_write_names_the_state_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let sf = StateFile::lock(dir.path(), "shop", "pgshift prepare").unwrap();
        // The file's place is taken by a directory: the rename over it fails.
        fs::create_dir(sf.path()).unwrap();
        fs::write(sf.path().join("x"), "").unwrap();
        let err = format!("{:#}", sf.save(&sample()).unwrap_err());
        assert!(
            err.starts_with(&format!("writing the state file {}", sf.path().display())),
            "{err}"
        );
        let left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp."))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn second_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _a = StateFile::lock(dir.path(), "db", "pgshift swap pid=4242 host=ops1").unwrap();
        let err = StateFile::lock(dir.path(), "db", "pgshift status pid=1 host=h")
            .unwrap_err()
            .to_string();
        assert!(err.contains("another pgshift run"), "{err}");
        // Named as it named itself.
        assert!(
            err.contains(".lock (pgshift swap pid=4242 host=ops1 since 20"),
            "{err}"
        );
        assert!(err.ends_with(" UTC; one run at a time)"), "{err}");
        // A different database in the same directory is independent.
        let _c = StateFile::lock(dir.path(), "other", "pgshift swap pid=4242 host=ops1").unwrap();
    }

    /// A full disk (or quota) at the state directory is bad input as an
    /// unwritable one is (exit 2, with the way out); another error is not.
    #[test]
    fn a_full_state_directory_is_bad_input() {
        let dir = Path::new("/srv/pgshift");
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let e = unwritable(
                dir,
                std::io::Error::from_raw_os_error(errno),
                "writing",
                dir,
            );
            assert!(e.is::<crate::error::UserError>(), "{e:#}");
            assert!(
                e.to_string()
                    .starts_with("the state directory /srv/pgshift cannot be written ("),
                "{e:#}"
            );
            assert!(
                e.to_string()
                    .ends_with("); free some space there, or give --state-dir")
            );
        }
        let e = unwritable(
            dir,
            std::io::Error::from_raw_os_error(libc::EIO),
            "writing",
            dir,
        );
        assert!(!e.is::<crate::error::UserError>(), "{e:#}");
    }

    #[test]
    fn file_names_are_safe() {
        assert_eq!(file_safe("../x/y"), "_._x_y");
        assert_eq!(file_safe("näme"), "näme");
        assert_eq!(file_safe(""), "_");
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(state_path(dir.path(), "db"), "{nope").unwrap();
        let err = format!("{:#}", read(dir.path(), "db").unwrap_err());
        assert!(err.contains("is not valid"), "{err}");
    }
}
