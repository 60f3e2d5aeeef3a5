//! The binary as a process: `--version`, and what `ps` shows of its command line.

mod common;

use common::Workdir;

#[test]
fn version_names_the_release_commit_and_target() {
    let wd = Workdir::new();
    let out = wd.run(&["--version"]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    let prefix = format!("pgshift {} (commit ", env!("CARGO_PKG_VERSION"));
    let rest = line
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix(")\n"))
        .unwrap_or_else(|| panic!("unexpected --version output: {line:?}"));
    let (commit, target) = rest.split_once(", ").expect("commit, target");
    assert!(
        target.ends_with("-linux-gnu") || target.ends_with("-linux-musl"),
        "{target}"
    );
    // Built from a git checkout: the commit is HEAD's (the tree may have local changes).
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(head) => assert!(
            commit == head || commit == format!("{head}-dirty"),
            "{commit} vs HEAD {head}"
        ),
        None => assert!(!commit.is_empty(), "{line}"),
    }
    // Subcommands answer the same.
    let out = wd.run(&["status", "--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("(commit {commit}, ")));
}
