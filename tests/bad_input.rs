//! Bad input: one clear `error:` line on stderr, a documented exit code, and
//! no change to either database.

mod common;

use std::process::Output;

use common::{TestDbs, Workdir, assert_success, catalog_fingerprint, create_role, pg_bindir};

struct Case<'a> {
    name: &'a str,
    args: Vec<String>,
    env: Vec<(String, String)>,
    code: i32,
    /// Every fragment must appear in the error line.
    message: Vec<&'a str>,
}

fn run(wd: &Workdir, args: &[String], env: &[(String, String)]) -> Output {
    let mut cmd = wd.cmd();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn check(dbs: &TestDbs, case: Case) {
    let src_before = catalog_fingerprint(&dbs.src);
    let dst_before = catalog_fingerprint(&dbs.dst);
    let wd = Workdir::new();
    let out = run(&wd, &case.args, &case.env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(case.code),
        "{}: {stderr}",
        case.name
    );
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{}: expected one line on stderr, got:\n{stderr}",
        case.name
    );
    assert!(lines[0].starts_with("error: "), "{}: {stderr}", case.name);
    assert!(
        !stderr.contains("Sekret-0815"),
        "{}: a password in the error: {stderr}",
        case.name
    );
    for m in &case.message {
        assert!(
            lines[0].contains(m),
            "{}: {:?} not in {:?}",
            case.name,
            m,
            lines[0]
        );
    }
    assert!(
        out.stdout.is_empty(),
        "{}: stdout: {}",
        case.name,
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        catalog_fingerprint(&dbs.src),
        src_before,
        "{}: source changed",
        case.name
    );
    assert_eq!(
        catalog_fingerprint(&dbs.dst),
        dst_before,
        "{}: destination changed",
        case.name
    );
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn with_url(url: &str, f: impl Fn(&mut url_parts::Parts)) -> String {
    let mut p = url_parts::split(url);
    f(&mut p);
    p.join()
}

/// Minimal editing of the harness's `postgresql://user:pass@host:port/db` URLs.
mod url_parts {
    pub struct Parts {
        pub user: String,
        pub password: String,
        pub host: String,
        pub port: String,
        pub db: String,
    }

    pub fn split(url: &str) -> Parts {
        let rest = url.strip_prefix("postgresql://").unwrap();
        let (auth, rest) = rest.rsplit_once('@').unwrap();
        let (user, password) = auth.split_once(':').unwrap();
        let (hostport, db) = rest.split_once('/').unwrap();
        let (host, port) = hostport.rsplit_once(':').unwrap();
        Parts {
            user: user.into(),
            password: password.into(),
            host: host.into(),
            port: port.into(),
            db: db.into(),
        }
    }

    impl Parts {
        pub fn join(&self) -> String {
            format!(
                "postgresql://{}:{}@{}:{}/{}",
                self.user, self.password, self.host, self.port, self.db
            )
        }
    }
}

#[test]
fn bad_input_is_one_line_a_documented_code_and_no_change() {
    let dbs = TestDbs::new("bad_input");
    dbs.src.psql("CREATE TABLE users (id int PRIMARY KEY, name text); CREATE TABLE nokey (x int); INSERT INTO users VALUES (1, 'a');");
    dbs.dst
        .psql("CREATE TABLE users (id int PRIMARY KEY, name text); CREATE TABLE nokey (x int);");
    let src = dbs.src.url();
    let dst = dbs.dst.url();
    let prepare = |extra: &[&str]| {
        let mut a = s(&["prepare", "--source", &src, "--dest", &dst]);
        a.extend(s(extra));
        a
    };

    // A fake bindir whose pg_dump is too old for the source.
    let wd = Workdir::new();
    let old_bin = wd.join("oldbin");
    std::fs::create_dir_all(&old_bin).unwrap();
    for e in std::fs::read_dir(pg_bindir()).unwrap().flatten() {
        if e.file_name() != "pg_dump" {
            std::os::unix::fs::symlink(e.path(), old_bin.join(e.file_name())).unwrap();
        }
    }
    std::fs::write(
        old_bin.join("pg_dump"),
        "#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n",
    )
    .unwrap();
    std::fs::set_permissions(
        old_bin.join("pg_dump"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    // A role with no CREATE on the destination database, and one that cannot
    // read the source's table.
    let weak = format!("weak_{}", std::process::id());
    for db in [&dbs.src, &dbs.dst] {
        db.psql(&create_role(&weak, "LOGIN PASSWORD 'weakpw'"));
        db.psql(&format!(
            "REVOKE CREATE ON DATABASE {} FROM PUBLIC;",
            db.name()
        ));
    }
    let weak_dst = with_url(&dst, |p| {
        p.user = weak.clone();
        p.password = "weakpw".into();
    });
    let weak_src = with_url(&src, |p| {
        p.user = weak.clone();
        p.password = "weakpw".into();
    });

    let config = wd.join("bad.toml");
    std::fs::write(&config, "jobs = 2\ndestination_url = 'x'\n").unwrap();

    let binary_config = wd.join("binary.toml");
    std::fs::write(&binary_config, [0xff, 0xfe, 0x00, b'\n']).unwrap();
    let a_file = wd.join("a-file");
    std::fs::write(&a_file, "not a directory").unwrap();
    // A pg_dump -Fd backup of the user's own: never pgshift's to empty.
    let a_backup = wd.join("my-backup");
    std::fs::create_dir(&a_backup).unwrap();
    std::fs::write(a_backup.join("toc.dat"), "PGDMP").unwrap();
    std::fs::write(a_backup.join("3362.dat.gz"), "rows").unwrap();

    let excluding = wd.join("excluding.toml");
    std::fs::write(&excluding, "exclude_table = 'nokey'\n").unwrap();
    let mistyped = wd.join("mistyped.toml");
    std::fs::write(&mistyped, "jobs = 2\nexclude_table = 5\n").unwrap();
    let mistyped_duration = wd.join("mistyped_duration.toml");
    std::fs::write(&mistyped_duration, "lock_timeout = true\n").unwrap();

    let secret_url = "postgresql://u:Sekret-0815@127.0.0.1:1/db";
    let under_a_file = format!("{}/Cargo.toml/sub", env!("CARGO_MANIFEST_DIR"));
    // Connection strings under the wrong keys of a config file.
    let (jobs_config, verify_config) = (wd.join("jobs.toml"), wd.join("verify.toml"));
    std::fs::write(&jobs_config, format!("jobs = \"{secret_url}\"\n")).unwrap();
    std::fs::write(
        &verify_config,
        "verify = \"host=h password='Sekret-0815\\\\' dbname=d\"\n",
    )
    .unwrap();
    let cases = vec![
        Case {
            name: "a URL given to jobs in the config file",
            args: s(&[
                "--config",
                jobs_config.to_str().unwrap(),
                "list",
                "--dest",
                &dst,
            ]),
            env: vec![],
            code: 2,
            message: vec!["jobs must be", "postgresql://u:***@127.0.0.1:1/db"],
        },
        Case {
            name: "a connection string given to verify in the config file",
            args: s(&[
                "--config",
                verify_config.to_str().unwrap(),
                "list",
                "--dest",
                &dst,
            ]),
            env: vec![],
            code: 2,
            message: vec!["verify: unknown variant", "password="],
        },
        Case {
            name: "a config file that is not UTF-8",
            args: s(&[
                "--config",
                binary_config.to_str().unwrap(),
                "list",
                "--dest",
                &dst,
            ]),
            env: vec![],
            code: 2,
            message: vec!["cannot read config file", "binary.toml"],
        },
        Case {
            name: "a --dump-dir that is a file",
            args: prepare(&["--dump-dir", a_file.to_str().unwrap()]),
            env: vec![],
            code: 2,
            message: vec!["--dump-dir", "a-file exists and is not a directory"],
        },
        Case {
            name: "a --timestamp that is no migration id",
            args: s(&["swap", "--timestamp", "abc", "--dest", &dst]),
            env: vec![],
            code: 2,
            message: vec!["--timestamp \"abc\" is not a migration id"],
        },
        Case {
            name: "a --config that is a directory",
            args: s(&[
                "list",
                "--config",
                wd.path().to_str().unwrap(),
                "--dest",
                &dst,
            ]),
            env: vec![],
            code: 2,
            message: vec!["is a directory"],
        },
        Case {
            name: "a schema name of three parts",
            args: prepare(&["--schemas", "public,a.b.c"]),
            env: vec![],
            code: 2,
            message: vec!["--schemas: \"a.b.c\" is not a schema name"],
        },
        // A name with quotes comes back as typed, not escaped Rust-style
        // (`"\"Sales\".orders"` is not what to paste back).
        Case {
            name: "a quoted table name with an unterminated quote",
            args: prepare(&["--preserved-tables", "\"Sales\".\"orders"]),
            env: vec![],
            code: 2,
            message: vec![
                "--preserved-tables: table name '\"Sales\".\"orders' has an unterminated quote",
            ],
        },
        Case {
            name: "a schema name with a space, unquoted",
            args: prepare(&["--schemas", "public,Billing Dept"]),
            env: vec![],
            code: 2,
            message: vec![
                "--schemas: schema name \"Billing Dept\" is not an identifier: it contains whitespace; in double quotes it is one: '\"Billing Dept\"'",
            ],
        },
        Case {
            name: "a quoted schema name with text after its quote",
            args: prepare(&["--schemas", "public,\"Billing\"x"]),
            env: vec![],
            code: 2,
            message: vec!["--schemas: schema name '\"Billing\"x' is not an identifier"],
        },
        Case {
            name: "a --dump-dir holding files pgshift did not write",
            args: prepare(&["--dump-dir", a_backup.to_str().unwrap()]),
            env: vec![],
            code: 2,
            message: vec!["--dump-dir", "my-backup holds files pgshift did not write"],
        },
        // A URL typed where pgshift expects something else comes back in the
        // error without its password.
        Case {
            name: "a URL where the command takes none (a forgotten --dest)",
            args: s(&["list", secret_url]),
            env: vec![],
            code: 2,
            message: vec!["unexpected argument", "postgresql://u:***@127.0.0.1:1/db"],
        },
        Case {
            name: "a URL given to --jobs",
            args: s(&["list", "--dest", &dst, &format!("--jobs={secret_url}")]),
            env: vec![],
            code: 2,
            message: vec!["--jobs", "postgresql://u:***@127.0.0.1:1/db"],
        },
        Case {
            name: "a URL given to PGSHIFT_JOBS",
            args: s(&["list", "--dest", &dst]),
            env: vec![("PGSHIFT_JOBS".into(), secret_url.into())],
            code: 2,
            message: vec!["--jobs", "postgresql://u:***@127.0.0.1:1/db"],
        },
        // A later item of a list flag, and the hint that puts a dotted
        // host's URL in double quotes, quoted the password (h40a).
        Case {
            name: "a URL as a later item of --preserved-tables",
            args: prepare(&[
                "--preserved-tables",
                "users,postgresql://u:Sekret-0815@db.example.com/db",
            ]),
            env: vec![],
            code: 2,
            message: vec!["--preserved-tables", "postgresql://u:***@db"],
        },
        Case {
            name: "a URL with a dotted host given to PGSHIFT_SCHEMAS",
            args: prepare(&[]),
            env: vec![(
                "PGSHIFT_SCHEMAS".into(),
                "public,postgresql://u:Sekret-0815@db.example.com/db".into(),
            )],
            code: 2,
            message: vec!["in double quotes", ":***@db"],
        },
        // The list's parser cut it at the comma: "postgresql://u:Sekret".
        Case {
            name: "a URL whose password has a comma, in --schemas",
            args: prepare(&["--schemas", "public,postgresql://u:Sekret-0815,x@h/db"]),
            env: vec![],
            code: 2,
            message: vec!["--schemas", "postgresql://u:***"],
        },
        Case {
            name: "a conninfo string as a later item of --schemas",
            args: prepare(&["--schemas", "public,host=h password=Sekret-0815"]),
            env: vec![],
            code: 2,
            message: vec!["--schemas"],
        },
        // It was made a directory and written in the state file and the
        // migration record.
        Case {
            name: "a URL given to --dump-dir",
            args: prepare(&["--dump-dir", secret_url]),
            env: vec![],
            code: 2,
            message: vec![
                "--dump-dir holds a password: it is a connection string, not a directory",
            ],
        },
        Case {
            name: "a conninfo string given to PGSHIFT_STATE_DIR",
            args: s(&["status", "--dest", &dst]),
            env: vec![(
                "PGSHIFT_STATE_DIR".into(),
                "host=h password=Sekret-0815".into(),
            )],
            code: 2,
            message: vec!["PGSHIFT_STATE_DIR holds a password"],
        },
        // Only prepare said so (of its dump directory); swap, abort,
        // rollback and cleanup failed with exit 1 on the lock file.
        Case {
            name: "a state directory that cannot be written",
            args: s(&["swap", "--dest", &dst, "--state-dir", "/sys"]),
            env: vec![],
            code: 2,
            message: vec!["the state directory /sys is not writable", "--state-dir"],
        },
        // A path through a regular file: exit 1, "creating state directory".
        Case {
            name: "a state directory that cannot be made",
            args: s(&["abort", "--dest", &dst, "--state-dir", &under_a_file]),
            env: vec![],
            code: 2,
            message: vec!["the state directory", "cannot be made", "--state-dir"],
        },
        // Prepare's dump directory (in the state directory) is checked first:
        // it said the file "is not writable".
        Case {
            name: "a state directory through a file, to prepare",
            args: s(&[
                "prepare",
                "--source",
                &src,
                "--dest",
                &dst,
                "--state-dir",
                &under_a_file,
            ]),
            env: vec![],
            code: 2,
            message: vec!["cannot be made", "Cargo.toml is not a directory"],
        },
        // It passed, and the swap failed on the server (exit 1) after the
        // impact report: PostgreSQL's timeouts are ints of milliseconds.
        Case {
            name: "a lock timeout longer than PostgreSQL takes",
            args: s(&["swap", "--dest", &dst, "--lock-timeout", "30days"]),
            env: vec![],
            code: 2,
            message: vec!["--lock-timeout 30days is too long", "2147483647ms"],
        },
        Case {
            name: "a URL given to --config",
            args: s(&["list", "--dest", &dst, "--config", secret_url]),
            env: vec![],
            code: 2,
            message: vec!["postgresql://u:***@127.0.0.1:1/db"],
        },
        Case {
            name: "unreachable host",
            args: s(&[
                "prepare",
                "--connect-timeout",
                "1s",
                "--source",
                &src,
                "--dest",
                "postgresql://u:pw@127.0.0.1:1/db",
            ]),
            env: vec![],
            code: 1,
            message: vec!["cannot connect to destination", "127.0.0.1:1", "refused"],
        },
        Case {
            name: "wrong password",
            args: prepare(&[])
                .into_iter()
                .map(|a| {
                    if a == dst {
                        with_url(&dst, |p| p.password = "nope".into())
                    } else {
                        a
                    }
                })
                .collect(),
            env: vec![],
            code: 1,
            message: vec![
                "cannot connect to destination",
                "password authentication failed",
            ],
        },
        Case {
            name: "missing database",
            args: prepare(&[])
                .into_iter()
                .map(|a| {
                    if a == dst {
                        with_url(&dst, |p| p.db = "no_such_db".into())
                    } else {
                        a
                    }
                })
                .collect(),
            env: vec![],
            code: 1,
            message: vec!["database \"no_such_db\" does not exist"],
        },
        Case {
            name: "malformed URL",
            args: s(&[
                "prepare",
                "--source",
                &src,
                "--dest",
                "postgresql://u@h:notaport/db",
            ]),
            env: vec![],
            code: 2,
            message: vec!["--dest", "invalid port"],
        },
        Case {
            name: "source equals destination",
            args: s(&["prepare", "--source", &dst, "--dest", &dst]),
            env: vec![],
            code: 2,
            message: vec!["source and destination are the same database"],
        },
        Case {
            name: "pg_dump missing",
            args: prepare(&[]),
            env: vec![("PGSHIFT_PG_BINDIR".into(), "/nonexistent/bin".into())],
            code: 1,
            message: vec!["pg_dump not found"],
        },
        Case {
            name: "pg_dump older than the source",
            args: prepare(&[]),
            env: vec![(
                "PGSHIFT_PG_BINDIR".into(),
                old_bin.to_string_lossy().into_owned(),
            )],
            code: 1,
            message: vec!["version 9", "older than the source server"],
        },
        Case {
            name: "no CREATE on the destination",
            args: s(&["prepare", "--source", &src, "--dest", &weak_dst]),
            env: vec![],
            code: 1,
            message: vec![
                "insufficient privileges on the destination",
                &weak,
                "CREATE",
            ],
        },
        Case {
            name: "cannot read the source",
            args: s(&["prepare", "--source", &weak_src, "--dest", &dst]),
            env: vec![],
            code: 1,
            message: vec![
                "insufficient privileges on the source",
                "cannot SELECT from",
                "users",
            ],
        },
        Case {
            name: "preserved table name with a semicolon",
            args: prepare(&["--preserved-tables", "users;drop table users"]),
            env: vec![],
            code: 2,
            message: vec!["--preserved-tables", "semicolon"],
        },
        Case {
            name: "preserved table name with a quote",
            args: prepare(&["--preserved-tables", "\"us\"\"ers\""]),
            env: vec![],
            code: 2,
            message: vec!["--preserved-tables", "quote"],
        },
        Case {
            name: "--allow-discard with a semicolon",
            args: s(&[
                "swap",
                "--dest",
                &dst,
                "--allow-discard",
                "users;drop table users",
            ]),
            env: vec![],
            code: 2,
            message: vec!["--allow-discard", "semicolon"],
        },
        Case {
            name: "--impact-timeout that is not a duration",
            args: s(&["swap", "--dest", &dst, "--impact-timeout", "soon"]),
            env: vec![],
            code: 2,
            message: vec!["--impact-timeout", "soon"],
        },
        Case {
            name: "PGSHIFT_IMPACT_TIMEOUT of zero",
            args: prepare(&[]),
            env: vec![("PGSHIFT_IMPACT_TIMEOUT".into(), "0".into())],
            code: 2,
            message: vec!["PGSHIFT_IMPACT_TIMEOUT must be greater than zero"],
        },
        Case {
            name: "--workload-roles with a qualified name",
            args: s(&[
                "status",
                "--dest",
                &dst,
                "--workload-roles",
                "app,public.app",
            ]),
            env: vec![],
            code: 2,
            message: vec!["--workload-roles", "public.app"],
        },
        Case {
            name: "--workload-roles naming no role, before prepare's phases",
            args: prepare(&["--workload-roles", "nosuch_role"]),
            env: vec![],
            code: 2,
            message: vec!["--workload-roles: no role named \"nosuch_role\" on the destination"],
        },
        Case {
            name: "--workload-roles naming no role, before start's phases",
            args: s(&[
                "start",
                "--source",
                &src,
                "--dest",
                &dst,
                "--workload-roles",
                "nosuch_role",
            ]),
            env: vec![],
            code: 2,
            message: vec!["--workload-roles: no role named \"nosuch_role\" on the destination"],
        },
        Case {
            name: "--latest with --timestamp",
            args: s(&["rollback", "--dest", &dst, "--latest", "--timestamp", "123"]),
            env: vec![],
            code: 2,
            message: vec!["--latest", "--timestamp"],
        },
        Case {
            name: "swap with nothing prepared",
            args: s(&["swap", "--dest", &dst]),
            env: vec![],
            code: 2,
            message: vec!["nothing is prepared"],
        },
        Case {
            name: "config file with an unknown key",
            args: s(&[
                "--config",
                &config.to_string_lossy(),
                "list",
                "--dest",
                &dst,
            ]),
            env: vec![],
            code: 2,
            message: vec!["bad.toml", "unknown field", "destination_url", "line 2"],
        },
        // An empty value (`--exclude-table "$UNSET"`) or list item is no
        // filter at all: refused, not read as "nothing to filter".
        Case {
            name: "an empty --exclude-table",
            args: prepare(&["--exclude-table="]),
            env: vec![],
            code: 2,
            message: vec!["--exclude-table is empty: give a pattern, or leave the flag out"],
        },
        Case {
            name: "an empty --exclude-table-data",
            args: prepare(&["--exclude-table-data", ""]),
            env: vec![],
            code: 2,
            message: vec!["--exclude-table-data is empty"],
        },
        Case {
            name: "an empty --keep-tables",
            args: prepare(&["--keep-tables="]),
            env: vec![],
            code: 2,
            message: vec!["--keep-tables is empty"],
        },
        Case {
            name: "an --exclude-table of commas",
            args: prepare(&["--exclude-table=,"]),
            env: vec![],
            code: 2,
            message: vec!["--exclude-table: \",\" has an empty item"],
        },
        Case {
            name: "an empty item in --exclude-table",
            args: prepare(&["--exclude-table", "users,"]),
            env: vec![],
            code: 2,
            message: vec!["--exclude-table: \"users,\" has an empty item"],
        },
        Case {
            name: "an empty --preserved-tables",
            args: prepare(&["--preserved-tables="]),
            env: vec![],
            code: 2,
            message: vec!["--preserved-tables is empty"],
        },
        Case {
            name: "an empty --schemas",
            args: prepare(&["--schemas="]),
            env: vec![],
            code: 2,
            message: vec!["--schemas is empty"],
        },
        Case {
            name: "an empty PGSHIFT_EXCLUDE_TABLE over the file's exclude_table",
            args: [s(&["--config", excluding.to_str().unwrap()]), prepare(&[])].concat(),
            env: vec![("PGSHIFT_EXCLUDE_TABLE".into(), "".into())],
            code: 2,
            message: vec!["PGSHIFT_EXCLUDE_TABLE is empty: give a pattern, or unset it"],
        },
        Case {
            name: "an empty swap --keep-tables",
            args: s(&["swap", "--dest", &dst, "--keep-tables="]),
            env: vec![],
            code: 2,
            message: vec!["--keep-tables is empty"],
        },
        Case {
            name: "an empty rollback --keep-tables",
            args: s(&["rollback", "--dest", &dst, "--latest", "--keep-tables="]),
            env: vec![],
            code: 2,
            message: vec!["--keep-tables is empty"],
        },
        Case {
            name: "a config list key of the wrong type",
            args: s(&[
                "--config",
                mistyped.to_str().unwrap(),
                "list",
                "--dest",
                &dst,
            ]),
            env: vec![],
            code: 2,
            message: vec![
                "mistyped.toml",
                "exclude_table must be a list of strings or a comma-separated string",
                "line 2",
            ],
        },
        Case {
            name: "a config duration of the wrong type",
            args: s(&[
                "--config",
                mistyped_duration.to_str().unwrap(),
                "list",
                "--dest",
                &dst,
            ]),
            env: vec![],
            code: 2,
            message: vec!["lock_timeout must be a duration", "line 1"],
        },
        Case {
            name: "unknown option value",
            args: s(&[
                "prepare",
                "--source",
                &src,
                "--dest",
                &dst,
                "--verify",
                "everything",
            ]),
            env: vec![],
            code: 2,
            message: vec!["everything"],
        },
    ];
    for case in cases {
        check(&dbs, case);
    }
    let mut kept: Vec<_> = std::fs::read_dir(&a_backup)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    kept.sort();
    assert_eq!(kept, ["3362.dat.gz", "toc.dat"]);

    // Once the destination has pgshift's schema (here: after an aborted
    // prepare), a role that may not use it is told whose it is.
    let wd = Workdir::new();
    // The dump directory pgshift makes carries its marker, and only such a
    // directory is removed by abort (and by the swap).
    let dump_dir = wd.join("dump");
    assert_success(&run(
        &wd,
        &prepare(&["--dump-dir", dump_dir.to_str().unwrap()]),
        &[],
    ));
    assert!(dump_dir.join(".pgshift-dump").is_file());
    assert!(dump_dir.join("schema").join("toc.dat").is_file());
    assert_success(&run(&wd, &s(&["abort", "--dest", &dst]), &[]));
    assert!(!dump_dir.exists());
    for command in ["status", "list"] {
        check(
            &dbs,
            Case {
                name: "no access to pgshift's schema",
                args: s(&[command, "--dest", &weak_dst]),
                env: vec![],
                code: 1,
                message: vec![
                    &format!("role {weak} may not use the destination's pgshift schema"),
                    "run pgshift as",
                ],
            },
        );
    }
}

/// With several schemas the preflight checks each chosen schema, not public
/// alone: a schema or table of the source the role may not read, a schema of
/// the destination it may not create in, a table there it does not own. Each
/// is refused in one line before anything is created; once granted, the same
/// prepare runs.
#[test]
fn privileges_are_checked_in_every_chosen_schema() {
    let dbs = TestDbs::new("bad_input_schemas");
    let role = format!("mover_{}", std::process::id());
    for db in [&dbs.src, &dbs.dst] {
        db.psql(&create_role(&role, "LOGIN PASSWORD 'moverpw'"));
    }
    dbs.src.psql(&format!(
        "CREATE TABLE users (id int PRIMARY KEY); GRANT SELECT ON users TO {role};
         CREATE SCHEMA billing; CREATE TABLE billing.invoices (id int PRIMARY KEY);"
    ));
    dbs.dst.psql(&format!(
        "GRANT CREATE ON DATABASE {db} TO {role}; GRANT CREATE ON SCHEMA public TO {role};
         CREATE TABLE users (id int PRIMARY KEY); ALTER TABLE users OWNER TO {role};
         CREATE SCHEMA billing; CREATE TABLE billing.invoices (id int PRIMARY KEY);
         CREATE DOMAIN billing.amount AS numeric;",
        db = dbs.dst.name()
    ));
    let as_role = |url: &str| {
        with_url(url, |p| {
            p.user = role.clone();
            p.password = "moverpw".into();
        })
    };
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    let (role_src, role_dst) = (as_role(&src), as_role(&dst));
    let prepare = |src: &str, dst: &str| {
        s(&[
            "prepare",
            "--source",
            src,
            "--dest",
            dst,
            "--schemas",
            "public,billing",
        ])
    };
    // The harness's user is a superuser: membership would make the role one.
    let grant_owner = format!(
        "(owners or superuser only: give those of the superuser {} another owner {role} is a member of (ALTER … OWNER TO))",
        dbs.dst.user()
    );
    let refused = |name: &'static str, args: Vec<String>, message: Vec<&str>| {
        check(
            &dbs,
            Case {
                name,
                args,
                env: vec![],
                code: 1,
                message,
            },
        )
    };

    refused(
        "no USAGE on a chosen schema of the source",
        prepare(&role_src, &dst),
        vec![
            "insufficient privileges on the source",
            "has no USAGE on schema billing",
        ],
    );
    dbs.src
        .psql(&format!("GRANT USAGE ON SCHEMA billing TO {role}"));
    refused(
        "an unreadable table in a chosen schema of the source",
        prepare(&role_src, &dst),
        vec![
            "insufficient privileges on the source",
            "cannot SELECT from billing.invoices",
        ],
    );
    refused(
        "no CREATE on a chosen schema of the destination",
        prepare(&src, &role_dst),
        vec![
            "insufficient privileges on the destination",
            "has no CREATE on schema billing",
            &format!("(grant CREATE ON SCHEMA billing TO {role})"),
        ],
    );
    dbs.dst
        .psql(&format!("GRANT CREATE ON SCHEMA billing TO {role}"));
    refused(
        "a table of a chosen schema of the destination the role does not own",
        prepare(&src, &role_dst),
        vec![
            "insufficient privileges on the destination",
            "does not own billing.invoices, type billing.amount, which the swap must move",
            &grant_owner,
        ],
    );

    // An extension the destination lacks that only a superuser may create
    // (dblink is not trusted) is refused before anything, dry run included.
    dbs.src.psql(&format!(
        "GRANT SELECT ON billing.invoices TO {role}; CREATE EXTENSION dblink;"
    ));
    dbs.dst.psql(&format!(
        "ALTER TABLE billing.invoices OWNER TO {role}; ALTER DOMAIN billing.amount OWNER TO {role}"
    ));
    let superuser_only = vec![
        "extension dblink is missing on the destination, and creating it takes a superuser",
        "CREATE EXTENSION dblink WITH SCHEMA public",
    ];
    refused(
        "an extension only a superuser may create",
        prepare(&role_src, &role_dst),
        superuser_only.clone(),
    );
    let mut dry = prepare(&role_src, &role_dst);
    dry.push("--dry-run".into());
    refused("the same, in a dry run", dry, superuser_only);
    dbs.src.psql("DROP EXTENSION dblink;");

    // Granted: the role prepares both schemas.
    dbs.src
        .psql(&format!("GRANT SELECT ON billing.invoices TO {role}"));
    dbs.dst.psql(&format!(
        "ALTER TABLE billing.invoices OWNER TO {role}; ALTER DOMAIN billing.amount OWNER TO {role}"
    ));
    // A function the destination does not have yet, owned on the source by
    // a superuser this role may not give it to: it stays this role's, and
    // prepare says so.
    dbs.src.psql(&format!(
        "CREATE FUNCTION billing.total() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';
         GRANT EXECUTE ON FUNCTION billing.total() TO {role};"
    ));
    let wd = Workdir::new();
    let mut args = prepare(&role_src, &role_dst);
    args.push("--json".into());
    let mut dry = args.clone();
    dry.push("--dry-run".into());
    let plan: serde_json::Value =
        serde_json::from_str(&assert_success(&run(&wd, &dry, &[]))).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&assert_success(&run(&wd, &args, &[]))).unwrap();
    let owners = |warnings: &serde_json::Value| -> Vec<String> {
        warnings
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|w| w.as_str())
            .filter(|w| w.contains("which may not give them to their owner"))
            .map(str::to_string)
            .collect()
    };
    assert!(
        report["warnings"].to_string().contains(&format!(
            "new objects in billing belong to {role}, which may not give them to their owner on the source"
        )),
        "{report}"
    );
    // Named as in the live schema, not the shadow.
    let w = report["warnings"].to_string();
    assert!(
        w.contains(": billing.total() (") && !w.contains("shadow"),
        "{report}"
    );
    // The dry run foresaw it, word for word.
    assert_eq!(
        owners(&plan["plan"]["warnings"]),
        owners(&report["warnings"]),
        "{plan}"
    );
    assert_success(&run(&wd, &s(&["abort", "--dest", &role_dst]), &[]));
}

/// A destination whose sessions start read-only (here the database's
/// `default_transaction_read_only`; a standby reads the same) is refused by
/// every command that writes to it, in one line naming why, before anything;
/// the read-only commands still answer. Once it is turned off, prepare runs.
#[test]
fn a_read_only_destination_is_refused_before_anything() {
    let dbs = TestDbs::new("bad_read_only");
    dbs.src
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);");
    let server = dbs.dst.server().clone();
    let set = |value: &str| {
        server.psql(
            &server.maintenance_db,
            &format!(
                "ALTER DATABASE \"{}\" SET default_transaction_read_only = {value}",
                dbs.dst.name()
            ),
        )
    };
    set("on");
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    for args in [
        s(&["prepare", "--source", &src, "--dest", &dst]),
        s(&["start", "--source", &src, "--dest", &dst]),
        s(&["swap", "--dest", &dst]),
        s(&["abort", "--dest", &dst]),
        s(&["rollback", "--latest", "--dest", &dst]),
    ] {
        check(
            &dbs,
            Case {
                name: &args[0].clone(),
                args,
                env: vec![],
                code: 2,
                message: vec![
                    "starts its sessions read-only (default_transaction_read_only is on",
                    "nothing was changed",
                ],
            },
        );
    }
    let wd = Workdir::new();
    assert_success(&run(&wd, &s(&["status", "--dest", &dst]), &[]));
    // A dry run only reads: it runs, and warns.
    let out = run(
        &wd,
        &s(&["prepare", "--dry-run", "--source", &src, "--dest", &dst]),
        &[],
    );
    let text = assert_success(&out) + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("the destination starts its sessions read-only (default_transaction_read_only): the run itself will be refused"),
        "{text}"
    );
    set("off");
    assert_success(&run(
        &wd,
        &s(&["prepare", "--source", &src, "--dest", &dst]),
        &[],
    ));
    // verify answers on a read-only destination too: the outcome is
    // printed, and said not to be recorded (it failed on the record).
    assert_success(&run(&wd, &s(&["swap", "--dest", &dst]), &[]));
    set("on");
    let out = run(
        &wd,
        &s(&["verify", "--latest", "--json", "--dest", &dst]),
        &[],
    );
    let v: serde_json::Value = serde_json::from_str(&assert_success(&out)).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        v["warnings"][0],
        "the destination starts its sessions read-only (default_transaction_read_only): this verification is not recorded",
        "{v}"
    );
    assert_success(&run(&wd, &s(&["list", "--dest", &dst]), &[]));
}

/// The same for a standby (a read replica the destination URL points at by
/// mistake): every mutating command is refused before it takes the lock,
/// naming the standby and the way out; `status` answers, and a dry run runs
/// and warns.
#[test]
fn a_standby_destination_is_refused_before_anything() {
    if !common::can_start_clusters() {
        return;
    }
    let replica = common::Cluster::start_with("bad_standby", "hot_standby = on");
    let dbs = TestDbs {
        src: common::clusters().0.create_db("src", "bad_standby"),
        dst: replica.create_db("dst", "bad_standby"),
    };
    dbs.src
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);");
    replica.become_standby();
    assert_eq!(dbs.dst.query_one_string("SELECT pg_is_in_recovery()"), "t");
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    for args in [
        s(&["prepare", "--source", &src, "--dest", &dst]),
        s(&["start", "--source", &src, "--dest", &dst]),
        s(&["swap", "--dest", &dst]),
        s(&["abort", "--dest", &dst]),
        s(&["rollback", "--latest", "--dest", &dst]),
        s(&["cleanup", "--before", "2030-01-01", "--dest", &dst]),
    ] {
        check(
            &dbs,
            Case {
                name: &args[0].clone(),
                args,
                env: vec![],
                code: 2,
                message: vec![
                    "is a standby (in recovery) and takes no writes",
                    "target_session_attrs=primary",
                    "nothing was changed",
                ],
            },
        );
    }
    let wd = Workdir::new();
    let status: serde_json::Value = serde_json::from_str(&assert_success(&run(
        &wd,
        &s(&["status", "--json", "--dest", &dst]),
        &[],
    )))
    .unwrap();
    assert_eq!(status["state"], "idle", "{status}");
    let out = run(
        &wd,
        &s(&["prepare", "--dry-run", "--source", &src, "--dest", &dst]),
        &[],
    );
    let text = assert_success(&out) + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("the destination is a standby (in recovery) and takes no writes: the run itself will be refused"),
        "{text}"
    );
}

/// A foreign table whose server only the source has (servers and user
/// mappings belong to no schema and are not migrated) is refused before
/// anything changes, naming the table and the server; left out with
/// `--exclude-table`, or once the destination has the server, it runs.
#[test]
fn a_foreign_table_without_its_server_on_the_destination_is_refused() {
    let dbs = TestDbs::new("bad_fdw");
    dbs.src.psql(
        "CREATE EXTENSION postgres_fdw;
         CREATE SERVER remote FOREIGN DATA WRAPPER postgres_fdw OPTIONS (dbname 'elsewhere');
         CREATE FOREIGN TABLE ft (id int) SERVER remote;
         CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);",
    );
    dbs.dst.psql("CREATE EXTENSION postgres_fdw;");
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    for args in [
        s(&["prepare", "--source", &src, "--dest", &dst]),
        s(&["prepare", "--dry-run", "--source", &src, "--dest", &dst]),
    ] {
        check(
            &dbs,
            Case {
                name: "foreign table",
                args,
                env: vec![],
                code: 2,
                message: vec![
                    "foreign tables use servers the destination does not have",
                    "ft (server remote)",
                    "nothing was changed",
                ],
            },
        );
    }
    let wd = Workdir::new();
    assert_success(&run(
        &wd,
        &s(&[
            "prepare",
            "--dry-run",
            "--exclude-table",
            "ft",
            "--source",
            &src,
            "--dest",
            &dst,
        ]),
        &[],
    ));
    dbs.dst.psql(
        "CREATE SERVER remote FOREIGN DATA WRAPPER postgres_fdw OPTIONS (dbname 'elsewhere');",
    );
    assert_success(&run(
        &wd,
        &s(&["prepare", "--source", &src, "--dest", &dst]),
        &[],
    ));
}

/// Tables and indexes in a tablespace only the source has (common when
/// moving to a managed server): prepare and its dry run refuse before
/// anything changes, naming the tablespace and the remedy, instead of
/// failing halfway through the schema phase. With `--no-tablespaces`
/// everything lands in the destination's default tablespace and goes live;
/// a tablespace the destination has too still gets its objects.
#[test]
fn a_tablespace_only_the_source_has_is_refused_unless_no_tablespaces() {
    if !common::can_start_clusters() {
        println!("skipping: tablespaces need directories on clusters the harness started");
        return;
    }
    let (src_cluster, dst_cluster) = common::clusters();
    src_cluster.create_tablespace("fastsrc");
    src_cluster.create_tablespace("fastboth");
    dst_cluster.create_tablespace("fastboth");
    let dbs = TestDbs::new("bad_tablespace");
    dbs.src.psql(
        "CREATE TABLE t (id int PRIMARY KEY USING INDEX TABLESPACE fastsrc, v text) TABLESPACE fastsrc;
         CREATE INDEX t_v ON t (v) TABLESPACE fastsrc;
         INSERT INTO t VALUES (1, 'a'), (2, 'b');
         CREATE MATERIALIZED VIEW mv TABLESPACE fastsrc AS SELECT id FROM t;
         CREATE TABLE p (id int) PARTITION BY RANGE (id) TABLESPACE fastsrc;
         CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (10);
         CREATE TABLE both_t (id int) TABLESPACE fastboth;
         CREATE TABLE plain (id int);",
    );
    dbs.dst.psql("CREATE TABLE old (x int);");
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    for args in [
        s(&["prepare", "--source", &src, "--dest", &dst]),
        s(&["prepare", "--dry-run", "--source", &src, "--dest", &dst]),
    ] {
        check(
            &dbs,
            Case {
                name: "source-only tablespace",
                args,
                env: vec![],
                code: 2,
                message: vec![
                    "tablespace fastsrc",
                    "--no-tablespaces",
                    "nothing was changed",
                ],
            },
        );
    }
    assert_eq!(
        dbs.dst
            .query_one_string("SELECT count(*) FROM pg_namespace WHERE nspname = 'shadow'"),
        "0"
    );
    let wd = Workdir::new();
    assert_success(&run(
        &wd,
        &s(&[
            "prepare",
            "--no-tablespaces",
            "--source",
            &src,
            "--dest",
            &dst,
        ]),
        &[],
    ));
    assert_success(&run(&wd, &s(&["swap", "--dest", &dst]), &[]));
    assert_eq!(dbs.dst.psql("SELECT id, v FROM t ORDER BY id"), "1|a\n2|b");
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM mv"), "2");
    // Every migrated relation in the destination's default tablespace.
    assert_eq!(
        dbs.dst.psql(
            "SELECT c.relname FROM pg_class c
              WHERE c.relnamespace = 'public'::regnamespace AND c.reltablespace <> 0
              ORDER BY 1"
        ),
        ""
    );
    assert_eq!(
        dbs.dst.psql(
            "SELECT c.relname FROM pg_class c
              WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'm', 'i')
              ORDER BY 1"
        ),
        "both_t\nmv\np\np1\nplain\nt\nt_pkey\nt_v"
    );

    // A tablespace the destination has too: no refusal, and what the source
    // keeps in it lands in it: the first table too (pg_restore sets its
    // tablespace at the end of the schema's comment, which the shadow
    // leaves out), and each index, whichever index session builds it.
    let dbs = TestDbs::new("tablespace_both");
    dbs.src.psql(
        "CREATE TABLE t (id int PRIMARY KEY USING INDEX TABLESPACE fastboth, v text) TABLESPACE fastboth;
         CREATE INDEX t_v ON t (v) TABLESPACE fastboth;
         CREATE INDEX t_plain ON t (v, id);
         INSERT INTO t VALUES (1, 'a');
         CREATE MATERIALIZED VIEW mv TABLESPACE fastboth AS SELECT id FROM t;
         CREATE TABLE z_plain (id int PRIMARY KEY);",
    );
    let wd = Workdir::new();
    let (src, dst) = (dbs.src.url(), dbs.dst.url());
    assert_success(&run(
        &wd,
        &s(&["prepare", "--source", &src, "--dest", &dst]),
        &[],
    ));
    assert_success(&run(&wd, &s(&["swap", "--dest", &dst]), &[]));
    assert_eq!(
        dbs.dst.psql(
            "SELECT c.relname || ':' || COALESCE(s.spcname, '-') FROM pg_class c
               LEFT JOIN pg_tablespace s ON s.oid = c.reltablespace
              WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'm', 'i')
              ORDER BY 1"
        ),
        "mv:fastboth\nt:fastboth\nt_pkey:fastboth\nt_plain:-\nt_v:fastboth\nz_plain:-\nz_plain_pkey:-"
    );
}

/// A swap that renames the schemas needs no ownership of their objects, but
/// prepare gives each shadow object the owner of its destination namesake,
/// which takes membership in that owner: a destination object the source
/// has too, owned by a role this one may not act for, is refused in one line
/// before anything is created (it failed prepare in phase privileges, after
/// the copy). One only the destination has goes to the backup as it is and
/// is no obstacle, nor is an excluded table, nor are a range type's
/// constructors (PostgreSQL makes them the bootstrap superuser's on both
/// sides): once the role may act for the owner, prepare runs.
#[test]
fn a_namesake_this_role_cannot_give_its_owner_is_refused_before_a_renaming_prepare() {
    let dbs = TestDbs::new("bad_input_rename_owner");
    let role = format!("renamer_{}", std::process::id());
    let owner = format!("stranger_{}", std::process::id());
    for db in [&dbs.src, &dbs.dst] {
        db.psql(&create_role(&role, "LOGIN PASSWORD 'moverpw'"));
        db.psql(&create_role(&owner, ""));
        db.psql(&format!(
            "ALTER DATABASE \"{name}\" OWNER TO {role};
             CREATE SEQUENCE ticket_seq; ALTER SEQUENCE ticket_seq OWNER TO {owner};
             GRANT SELECT ON ticket_seq TO {role};
             CREATE TABLE audit_log (id int); ALTER TABLE audit_log OWNER TO {owner};
             ALTER SCHEMA public OWNER TO {role};
             SET ROLE {role};
             CREATE TABLE users (id bigserial PRIMARY KEY, name text);
             CREATE TYPE floatrange AS RANGE (subtype = float8);",
            name = db.name()
        ));
    }
    dbs.dst.psql(&format!(
        "CREATE SEQUENCE legacy_seq; ALTER SEQUENCE legacy_seq OWNER TO {owner};"
    ));
    let dst = with_url(&dbs.dst.url(), |p| {
        p.user = role.clone();
        p.password = "moverpw".into();
    });
    let prepare = s(&[
        "prepare",
        "--source",
        &dbs.src.url(),
        "--dest",
        &dst,
        "--exclude-table",
        "audit_log",
    ]);
    let grant = if dbs.dst.server_major() >= 16 {
        format!("grant {owner} to {role} with inherit true, set true")
    } else {
        format!("grant {owner} to {role}")
    };
    check(
        &dbs,
        Case {
            name: "a namesake of a role this one may not act for, renaming",
            args: prepare.clone(),
            env: vec![],
            code: 1,
            message: vec![
                "insufficient privileges on the destination",
                &format!(
                    "role {role} does not own ticket_seq in public, whose shadow namesakes prepare must give the same owner"
                ),
                &grant,
            ],
        },
    );
    if dbs.dst.server_major() >= 16 {
        dbs.dst.psql(&format!(
            "GRANT {owner} TO {role} WITH INHERIT TRUE, SET TRUE"
        ));
    } else {
        dbs.dst.psql(&format!("GRANT {owner} TO {role}"));
    }
    let wd = Workdir::new();
    let args: Vec<&str> = prepare.iter().map(String::as_str).collect();
    assert_success(&wd.run(&args));
    assert_eq!(
        dbs.dst
            .psql("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'shadow.ticket_seq'::regclass"),
        owner
    );
}

/// A destination (or source) reached through a pooler in transaction mode:
/// pgshift's sessions keep a lock and settings across statements, which such
/// a pooler hands to other clients. Before, prepare failed half-way with
/// `prepared statement "s103" does not exist` and left its advisory lock on a
/// pooled server session, and a swap could succeed and leave the lock and
/// `row_security = off` on sessions the application then got. It is refused
/// by the first session, before it sets anything: one line, exit 2, nothing
/// changed, no lock left. Through session pooling everything works.
#[test]
fn a_pooler_in_transaction_mode_is_refused_before_anything() {
    let dbs = TestDbs::new("pooler_txn");
    dbs.src
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);");
    dbs.dst.psql("CREATE TABLE t (id int PRIMARY KEY);");
    let txn = common::pooler::Bouncer::start(&dbs.dst, "transaction");
    let pooled = txn.url(&dbs.dst);
    let message = vec![
        "is reached through a connection pooler in transaction mode",
        "connect pgshift directly to the server, or through session pooling",
        "nothing was changed",
    ];
    for args in [
        vec!["status", "--dest", &pooled],
        vec!["prepare", "--source", &dbs.src.url(), "--dest", &pooled],
        vec!["list", "--dest", &pooled],
    ] {
        check(
            &dbs,
            Case {
                name: args[0],
                args: s(&args),
                env: vec![],
                code: 2,
                message: message.clone(),
            },
        );
    }
    let src_txn = common::pooler::Bouncer::start(&dbs.src, "transaction");
    let args = [
        "prepare",
        "--source",
        &src_txn.url(&dbs.src),
        "--dest",
        &dbs.dst.url(),
    ];
    check(
        &dbs,
        Case {
            name: "source through the pooler",
            args: s(&args),
            env: vec![],
            code: 2,
            message: vec!["the source", "in transaction mode"],
        },
    );
    assert_eq!(
        dbs.dst
            .psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"),
        "0"
    );
    // A pooler in statement mode refuses the check's transaction.
    let stmt = common::pooler::Bouncer::start(&dbs.dst, "statement");
    let args = ["status", "--dest", &stmt.url(&dbs.dst)];
    check(
        &dbs,
        Case {
            name: "statement mode",
            args: s(&args),
            env: vec![],
            code: 2,
            message: vec!["is reached through a connection pooler in statement mode"],
        },
    );
    // A session pool with no server session to spare: the check's second
    // session gets none, and concludes nothing (it waited for one forever).
    let full = common::pooler::Bouncer::start_with(&dbs.dst, "session", "default_pool_size = 1");
    let started = std::time::Instant::now();
    assert_success(&Workdir::new().run(&["status", "--dest", &full.url(&dbs.dst)]));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "status took {:?}",
        started.elapsed()
    );
    // Session pooling is fine: prepare and swap through it.
    let session = common::pooler::Bouncer::start(&dbs.dst, "session");
    let wd = Workdir::new();
    let url = session.url(&dbs.dst);
    assert_success(&wd.run(&["prepare", "--source", &dbs.src.url(), "--dest", &url]));
    assert_success(&wd.run(&["swap", "--dest", &url]));
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM public.t"), "1");
}

/// A `PG*` variable that is not UTF-8 is an error naming it (exit 2), not a
/// variable unset: a `PGPASSWORD` skipped so let `~/.pgpass` answer in its
/// place, and the error said no password was given.
#[test]
fn a_pg_variable_that_is_not_utf8_is_named() {
    use std::os::unix::ffi::OsStringExt;
    let dbs = TestDbs::new("bad_env_utf8");
    let wd = Workdir::new();
    let p = url_parts::split(&dbs.dst.url());
    let no_password = format!("postgresql://{}@{}:{}/{}", p.user, p.host, p.port, p.db);
    let out = wd
        .cmd()
        .args(["status", "--dest", &no_password])
        .env(
            "PGPASSWORD",
            std::ffi::OsString::from_vec(b"Sekret-0815\xff".to_vec()),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.trim_end()
            == "error: --dest: the environment variable PGPASSWORD is not valid UTF-8 (pgshift reads connection settings as UTF-8; give the value in the connection string instead)",
        "{err}"
    );
}
