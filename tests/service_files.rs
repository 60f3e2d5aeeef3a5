//! libpq service files through the binary: `service=NAME` / `?service=NAME` for
//! `--source` and `--dest`, `PGSERVICEFILE`, `~/.pg_service.conf`, `PGSERVICE`, and
//! the precedence given > service file > environment. pg_dump and pg_restore get
//! the service's connection through their environment.

mod common;

use common::{TestDb, TestDbs, Workdir, assert_success, stderr_of};

/// A `[name]` section for `db` with everything needed to connect, password included.
fn section(name: &str, db: &TestDb) -> String {
    format!(
        "[{name}]\nhost={}\nport={}\nuser={}\npassword={}\ndbname={}\n",
        db.host(),
        db.port(),
        db.user(),
        db.password(),
        db.name()
    )
}

#[test]
fn start_with_service_names_only() {
    let dbs = TestDbs::new("service_start");
    dbs.src.psql(
        "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 250) g;",
    );
    dbs.dst.psql("CREATE TABLE old_stuff (id int);");
    let wd = Workdir::new();
    let file = wd.join("services.conf");
    std::fs::write(
        &file,
        format!(
            "# services for this test\n{}\n{}",
            section("old", &dbs.src),
            section("new", &dbs.dst)
        ),
    )
    .unwrap();
    let out = wd.run_env(
        &[
            "start",
            "--source",
            "service=old",
            "--dest",
            "postgresql://?service=new",
            "--json",
        ],
        &[("PGSERVICEFILE", file.to_str().unwrap())],
    );
    assert_success(&out);
    // pg_dump read the source (the schema is there), the data was copied, the swap ran.
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM public.items"), "250");
    assert_eq!(
        dbs.dst.psql(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'old_stuff'"
        ),
        "0"
    );
    let log = stderr_of(&out);
    assert!(!log.contains(dbs.src.password()), "{log}");
    assert!(!log.contains(dbs.dst.password()), "{log}");
}

#[test]
fn precedence_and_errors() {
    let dbs = TestDbs::new("service_precedence");
    let wd = Workdir::new();
    // ~/.pg_service.conf (HOME is the work dir): right server, wrong database.
    std::fs::write(
        wd.join(".pg_service.conf"),
        format!(
            "[dst]\nhost={}\nport={}\nuser={}\npassword={}\ndbname=not_this_one\n",
            dbs.dst.host(),
            dbs.dst.port(),
            dbs.dst.user(),
            dbs.dst.password()
        ),
    )
    .unwrap();
    let wrong_env = [
        ("PGPORT", "1"),
        ("PGDATABASE", "from_env"),
        ("PGUSER", "nobody"),
    ];
    // The string's dbname beats the service's, the service's port and user beat PGPORT
    // and PGUSER.
    let dest = format!("service=dst dbname={}", dbs.dst.name());
    let out = wd.run_env(&["list", "--json", "--dest", &dest], &wrong_env);
    assert_eq!(assert_success(&out).trim(), "[]");
    // PGSERVICE names the service when the string does not.
    let dest = format!("dbname={}", dbs.dst.name());
    let mut env = wrong_env.to_vec();
    env.push(("PGSERVICE", "dst"));
    let out = wd.run_env(&["list", "--json", "--dest", &dest], &env);
    assert_eq!(assert_success(&out).trim(), "[]");
    // The service's database is used when the string names none.
    let out = wd.run_env(&["list", "--dest", "service=dst"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("database \"not_this_one\" does not exist"),
        "{}",
        stderr_of(&out)
    );

    // An unknown service: one line, exit 2, the files that were searched.
    let out = wd.run_env(&["list", "--dest", "service=nope"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("definition of service \"nope\" not found"),
        "{err}"
    );
    assert!(err.contains(".pg_service.conf"), "{err}");
    // A PGSERVICEFILE that does not exist.
    let out = wd.run_env(
        &["status", "--dest", "service=dst"],
        &[("PGSERVICEFILE", "/nonexistent/services.conf")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("service file \"/nonexistent/services.conf\" not found"),
        "{}",
        stderr_of(&out)
    );
    // A keyword libpq does not know, in the service's section: file and line, no value.
    std::fs::write(wd.join("bad.conf"), "[dst]\nhost=h\ncolour=1\n").unwrap();
    let bad = wd.join("bad.conf");
    let out = wd.run_env(
        &["list", "--dest", "service=dst"],
        &[("PGSERVICEFILE", bad.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("bad.conf\", line 3: unknown parameter \"colour\""),
        "{}",
        stderr_of(&out)
    );
    // One of libpq's that pgshift does not take, with a value that asks for
    // more than pgshift does: named as libpq's, as in a string.
    std::fs::write(&bad, "[dst]\nhost=h\nsslcompression=1\n").unwrap();
    let out = wd.run_env(
        &["list", "--dest", "service=dst"],
        &[("PGSERVICEFILE", bad.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains(
            "bad.conf\", line 3: parameter \"sslcompression\" is libpq's, but pgshift does not support it"
        ),
        "{}",
        stderr_of(&out)
    );
}
