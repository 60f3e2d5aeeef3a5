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

/// A TCP server that accepts connections and never answers; counts them.
fn silent_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for sock in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(sock); // never read, never answered, never closed
        }
    });
    (port, accepted)
}

#[test]
fn passwords_on_the_command_line_are_not_in_proc_cmdline() {
    use std::sync::atomic::Ordering;
    let (port, accepted) = silent_server();
    let wd = Workdir::new();
    let runs: [&[String]; 2] = [
        // URL with the password in the user info, `--dest VALUE`.
        &[
            "status".into(),
            "--dest".into(),
            format!("postgresql://app:Secr3tUserinfo@127.0.0.1:{port}/shop"),
        ],
        // conninfo `password=` as `--source VALUE`, URL `?password=` as `--dest=VALUE`.
        &[
            "prepare".into(),
            "--source".into(),
            format!("host=127.0.0.1 port={port} user=app password='Secr3t Conninfo' dbname=shop"),
            format!(
                "--dest=postgresql://app@127.0.0.1:{port}/shop?password=Secr3tQuery&sslmode=prefer"
            ),
        ],
    ];
    for args in runs {
        let before = accepted.load(Ordering::SeqCst);
        let mut child = wd
            .cmd()
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // pgshift is connecting, so far past its start-up, and waits on the server.
        let waiting = common::wait_until(std::time::Duration::from_secs(30), || {
            accepted.load(Ordering::SeqCst) > before
        });
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
        let still_running = child.try_wait().unwrap().is_none();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            waiting && still_running,
            "pgshift did not wait on the server"
        );
        let shown = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(!shown.contains("Secr3t"), "{shown}");
        assert!(
            shown.contains(&format!("app:***@127.0.0.1:{port}/shop"))
                || shown.contains("password='***'"),
            "{shown}"
        );
        if shown.contains("--source") {
            assert!(shown.contains("password='***' dbname=shop"), "{shown}");
            assert!(
                shown.contains("/shop?password=***&sslmode=prefer"),
                "{shown}"
            );
        }
    }
}
