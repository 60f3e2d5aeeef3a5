//! Build script: record which commit and target a binary was built from, for
//! `pgshift --version` (`pgshift 0.1.0 (commit 1a2b3c4d5e6f, x86_64-unknown-linux-musl)`).
//!
//! The commit comes from git when the source is a git checkout (with `-dirty` when
//! tracked files that go into the binary differ from it), else from the `PGSHIFT_COMMIT`
//! environment variable (CI, builds from a source archive), else it is `unknown`.
//! A missing git, or a tree that is not a checkout, never fails the build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env_path("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn env_path(var: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(var).unwrap_or_default())
}

/// Ask cargo to run this script again when HEAD moves (a commit, a checkout).
fn watch_git(manifest_dir: &Path) {
    let abs = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            manifest_dir.join(p)
        }
    };
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]).map(abs) {
        println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
    }
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]).map(abs) {
        println!(
            "cargo:rerun-if-changed={}",
            common.join("packed-refs").display()
        );
        if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={}", common.join(head_ref).display());
        }
    }
}

/// `PGSHIFT_COMMIT` as shown: a full SHA shortened like git's, anything else kept if it is
/// a plain word (no spaces or quotes end up in the version line).
fn commit_from_env(value: &str) -> Option<String> {
    let v = value.trim();
    if v.is_empty()
        || v.len() > 64
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return None;
    }
    if v.len() > 12 && v.chars().all(|c| c.is_ascii_hexdigit()) {
        return Some(v[..12].to_string());
    }
    Some(v.to_string())
}

fn main() {
    let manifest_dir = env_path("CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-env-changed=PGSHIFT_COMMIT");
    for p in ["build.rs", "Cargo.toml", "Cargo.lock", "src"] {
        println!("cargo:rerun-if-changed={p}");
    }
    watch_git(&manifest_dir);

    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(hash) => {
            let dirty = git(&[
                "--no-optional-locks",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "src",
                "build.rs",
                "Cargo.toml",
                "Cargo.lock",
            ])
            .is_some();
            if dirty { format!("{hash}-dirty") } else { hash }
        }
        None => std::env::var("PGSHIFT_COMMIT")
            .ok()
            .and_then(|c| commit_from_env(&c))
            .unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=PGSHIFT_COMMIT={commit}");
    println!(
        "cargo:rustc-env=PGSHIFT_TARGET={}",
        std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_string())
    );
}
