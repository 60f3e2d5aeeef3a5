//! TLS against a real server with a self-signed CA, and configuration
//! precedence (flag > environment > config file) through the binary.

mod common;

use common::{Cluster, TestDbs, Workdir, assert_success, can_start_clusters, stderr_of};

/// `url` with query parameters appended.
fn with_params(url: &str, params: &str) -> String {
    format!("{url}?{params}")
}

#[test]
fn sslmode_require_connects_and_verify_full_needs_the_ca() {
    let dbs = TestDbs::new("tls");
    if !can_start_clusters() {
        eprintln!("skipped: needs the harness's own clusters (with their CA)");
        return;
    }
    let (_, dst_cluster) = common::clusters();
    let ca = dst_cluster.ca_cert_path().to_string_lossy().into_owned();
    let wd = Workdir::new();

    // sslmode=require: encrypted, certificate not checked.
    let out = wd.run_env(
        &[
            "list",
            "--json",
            "--dest",
            &with_params(&dbs.dst.url(), "sslmode=require"),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");

    // verify-full without the CA: a clear error, exit 1.
    let out = wd.run_env(
        &[
            "list",
            "--dest",
            &with_params(&dbs.dst.url(), "sslmode=verify-full"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("sslmode=verify-full needs the server's CA certificate"),
        "{err}"
    );

    // verify-full with a CA that did not sign the server's certificate.
    let other_ca = wd.join("other-ca.pem");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&other_ca, params.self_signed(&key).unwrap().pem()).unwrap();
    let url = with_params(
        &dbs.dst.url(),
        &format!("sslmode=verify-full&sslrootcert={}", other_ca.display()),
    );
    let out = wd.run_env(&["list", "--dest", &url], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("not trusted"),
        "{}",
        stderr_of(&out)
    );

    // verify-full with the right CA: connects.
    let url = with_params(
        &dbs.dst.url(),
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let out = wd.run_env(&["list", "--dest", &url], &[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
}

#[test]
fn every_connection_of_a_prepare_honours_sslmode() {
    if !can_start_clusters() {
        eprintln!("skipped: needs private clusters");
        return;
    }
    // Two private clusters that refuse anything but TLS over TCP.
    let src_cluster = Cluster::start_new();
    let dst_cluster = Cluster::start_new();
    for c in [&src_cluster, &dst_cluster] {
        let hba = c.data_dir().join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(&hba, format!("hostnossl all all 0.0.0.0/0 reject\n{old}")).unwrap();
        c.restart();
    }
    let dbs = TestDbs::on(&src_cluster, &dst_cluster, "tls_only");
    dbs.src
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100);");
    let wd = Workdir::new();
    // Without TLS the server refuses.
    let out = wd.run_env(
        &[
            "prepare",
            "--source",
            &with_params(&dbs.src.url(), "sslmode=disable"),
            "--dest",
            &dbs.dst.url(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("no pg_hba.conf entry") || stderr_of(&out).contains("rejects"),
        "{}",
        stderr_of(&out)
    );
    // With verify-full and the CA, pgshift's sessions and pg_dump/pg_restore all connect.
    // libpq matches an IP address against a certificate's IP addresses from 14 on:
    // with an older pg_dump the source is named `localhost` (also in the certificate).
    let src_url = if common::bin_major() >= 14 {
        dbs.src.url()
    } else {
        println!(
            "skipped on libpq {}: verify-full to 127.0.0.1 (pg_dump matches IP addresses in certificates from 14 on); the source is localhost",
            common::bin_major()
        );
        dbs.src.url().replacen("@127.0.0.1:", "@localhost:", 1)
    };
    let src = with_params(
        &src_url,
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            src_cluster.ca_cert_path().display()
        ),
    );
    let dst = with_params(&dbs.dst.url(), "sslmode=require");
    let out = wd.run_env(&["prepare", "--source", &src, "--dest", &dst], &[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(dbs.dst.psql("SELECT count(*) FROM shadow.t"), "100");
}

#[test]
fn flags_beat_environment_beat_config_file() {
    let dbs = TestDbs::new("precedence");
    let good = dbs.dst.url();
    let missing_db = |name: &str| {
        let (base, _) = good.rsplit_once('/').unwrap();
        format!("{base}/{name}")
    };
    let wd = Workdir::new();
    std::fs::write(
        wd.join("pgshift.toml"),
        format!(
            "dest_url = '{}'\nlog_format = 'json'\n",
            missing_db("from_file")
        ),
    )
    .unwrap();
    // File only: the file's destination is used.
    let out = wd.run_env(&["list"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("\"from_file\" does not exist"),
        "{}",
        stderr_of(&out)
    );
    // Environment beats the file.
    let env_db = missing_db("from_env");
    let out = wd.run_env(&["list"], &[("PGSHIFT_DEST_URL", &env_db)]);
    assert!(
        stderr_of(&out).contains("\"from_env\" does not exist"),
        "{}",
        stderr_of(&out)
    );
    // The flag beats both.
    let out = wd.run_env(&["list", "--dest", &good], &[("PGSHIFT_DEST_URL", &env_db)]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    // --config points elsewhere; a missing explicit config file is an error.
    let out = wd.run_env(&["--config", "nope.toml", "list"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("config file nope.toml does not exist"),
        "{}",
        stderr_of(&out)
    );
    // Numbers from the environment are checked like flags.
    let out = wd.run_env(&["list", "--dest", &good], &[("PGSHIFT_JOBS", "lots")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("lots"), "{}", stderr_of(&out));
    // The file's log_format applies: JSON log lines on stderr.
    let out = wd.run_env(&["-v", "list", "--dest", &good], &[]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines at -v");
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string(), "{l}");
    }
    assert!(!err.contains(dbs.dst.password()), "password in the logs");

    // On/off settings: the environment's false beats the file's true; a value
    // that is neither is refused, not taken for true.
    std::fs::write(
        wd.join("pgshift.toml"),
        format!(
            "dest_url = '{good}'
json = true
"
        ),
    )
    .unwrap();
    let out = wd.run_env(&["list"], &[]);
    assert_eq!(assert_success(&out).trim(), "[]");
    let out = wd.run_env(&["list"], &[("PGSHIFT_JSON", "0")]);
    assert!(
        assert_success(&out).starts_with("No backups"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = wd.run_env(&["list"], &[("PGSHIFT_JSON", "nope")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    // One line, naming the variable the value came from.
    let err = stderr_of(&out);
    assert!(
        err.contains("invalid value 'nope' for '--json'")
            && err.contains("(the value of PGSHIFT_JSON)")
            && !err.contains("For more information")
            && err.trim_end().lines().count() == 1,
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // So does a value pgshift checks itself (a duration), and one given on
    // the line is the flag's.
    let out = wd.run_env(&["list"], &[("PGSHIFT_CONNECT_TIMEOUT", "nope")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("invalid PGSHIFT_CONNECT_TIMEOUT \"nope\""),
        "{}",
        stderr_of(&out)
    );
    let out = wd.run_env(
        &["list", "--connect-timeout", "nope"],
        &[("PGSHIFT_CONNECT_TIMEOUT", "nope")],
    );
    assert!(
        stderr_of(&out).contains("invalid --connect-timeout \"nope\""),
        "{}",
        stderr_of(&out)
    );
    // And a list's item checks (schemas, preserved tables).
    let out = wd.run_env(
        &["prepare", "--dry-run"],
        &[("PGSHIFT_SCHEMAS", "public,public")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("error: PGSHIFT_SCHEMAS: public is listed twice"),
        "{}",
        stderr_of(&out)
    );
    for (var, value) in [
        ("PGSHIFT_EXCLUDE_TABLE", "a.b.c"),
        ("PGSHIFT_WORKLOAD_ROLES", "a.b"),
    ] {
        let out = wd.run_env(&["prepare", "--dry-run"], &[(var, value)]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
        assert!(
            stderr_of(&out).contains(&format!("error: {var}: ")),
            "{}",
            stderr_of(&out)
        );
    }

    // A password file others may read is ignored, as libpq ignores it, and
    // said so (it is read while the configuration is resolved, before
    // logging starts).
    let passfile = wd.join("world.pgpass");
    std::fs::write(&passfile, "*:*:*:*:unused\n").unwrap();
    std::fs::set_permissions(
        &passfile,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let (_, at) = good.rsplit_once('@').unwrap();
    let no_password = format!("postgresql://{}@{at}", dbs.dst.user());
    let out = wd.run_env(
        &["list", "--dest", &no_password],
        &[("PGPASSFILE", passfile.to_str().unwrap())],
    );
    // Once, although every connection looks the file up (it said it twice).
    assert_eq!(
        stderr_of(&out)
            .matches(
                "has group or world access; permissions should be u=rw (0600) or less; ignoring it"
            )
            .count(),
        1,
        "{}",
        stderr_of(&out)
    );
}

/// `sslrootcert=system` (the operating system's trust store, here pointed
/// at the harness's CA with SSL_CERT_FILE) reaches pg_dump too: before
/// libpq 16 pg_dump reads it as a file name, so prepare refuses up front.
#[test]
fn sslrootcert_system_needs_pg_dump_16() {
    let dbs = TestDbs::new("tls_system");
    if !can_start_clusters() {
        eprintln!("skipped: needs the harness's own clusters (with their CA)");
        return;
    }
    let (src_cluster, _) = common::clusters();
    let ca = src_cluster.ca_cert_path().to_string_lossy().into_owned();
    dbs.src
        .psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);");
    let wd = Workdir::new();
    let src = with_params(
        &dbs.src.url().replacen("@127.0.0.1:", "@localhost:", 1),
        "sslmode=verify-full&sslrootcert=system",
    );
    let before = common::catalog_fingerprint(&dbs.dst);
    let out = wd.run_env(
        &["prepare", "--source", &src, "--dest", &dbs.dst.url()],
        &[("SSL_CERT_FILE", ca.as_str())],
    );
    if common::bin_major() < 16 {
        common::assert_usage_error(
            &out,
            "the source's sslrootcert=system needs pg_dump 16 or later",
        );
        assert_eq!(common::catalog_fingerprint(&dbs.dst), before);
    } else {
        assert_success(&out);
        assert_eq!(dbs.dst.psql("SELECT count(*) FROM shadow.t"), "1");
    }
}

/// Run the openssl command in `wd` (it must succeed); its stdout.
fn openssl(wd: &Workdir, args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(wd.path())
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        stderr_of(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The certificates PostgreSQL's documentation tells how to make with the openssl
/// command ("Creating Certificates"), on a real server: a self-signed one (marked
/// as a CA, its host only in the CN) and one signed by a root CA (version 1, its
/// host only in the CN). pgshift accepts and refuses each connection as psql
/// (libpq) does; with the default `sslmode=prefer` and a stale
/// `~/.postgresql/root.crt` both connect without TLS.
#[test]
fn documented_openssl_certificates_are_judged_as_libpq_judges_them() {
    if !can_start_clusters() {
        eprintln!("skipped: needs a private cluster");
        return;
    }
    let cluster = Cluster::start_new();
    let wd = Workdir::new();
    let openssl = |args: &[&str]| openssl(&wd, args);
    let subj = ["-subj", "/CN=localhost"];
    openssl(
        &[
            &["req", "-new", "-x509", "-days", "365", "-nodes"][..],
            &subj,
            &["-out", "self.crt", "-keyout", "self.key"],
        ]
        .concat(),
    );
    std::fs::write(
        wd.join("v3_ca.cnf"),
        "[v3_ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = keyCertSign, cRLSign\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-new",
        "-nodes",
        "-out",
        "root.csr",
        "-keyout",
        "root.key",
        "-subj",
        "/CN=root.example",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "root.csr",
        "-days",
        "3650",
        "-extfile",
        "v3_ca.cnf",
        "-extensions",
        "v3_ca",
        "-signkey",
        "root.key",
        "-out",
        "root.crt",
    ]);
    openssl(
        &[
            &[
                "req",
                "-new",
                "-nodes",
                "-out",
                "server.csr",
                "-keyout",
                "server.key",
            ][..],
            &subj,
        ]
        .concat(),
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-days",
        "365",
        "-CA",
        "root.crt",
        "-CAkey",
        "root.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
    ]);
    // What the test is about: webpki alone refuses both.
    let text = openssl(&["x509", "-in", "self.crt", "-noout", "-text"]);
    assert!(
        text.contains("CA:TRUE") && !text.contains("Alternative Name"),
        "{text}"
    );
    let text = openssl(&["x509", "-in", "server.crt", "-noout", "-text"]);
    assert!(text.contains("Version: 1 (0x0)"), "{text}");

    // Serve `name`.crt/.key instead of the harness's certificate.
    let serve = |name: &str| {
        for (ext, mode) in [("crt", 0o644), ("key", 0o600)] {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let to = cluster.base_dir().join(format!("server.{ext}"));
            let owner = std::fs::metadata(&to).unwrap();
            std::fs::copy(wd.join(format!("{name}.{ext}")), &to).unwrap();
            std::os::unix::fs::chown(&to, Some(owner.uid()), Some(owner.gid())).unwrap();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        cluster.restart();
    };
    let conninfo = |host: &str, params: &str| {
        format!(
            "host={host} hostaddr=127.0.0.1 port={} user={} dbname=postgres {params}",
            cluster.port(),
            cluster.superuser()
        )
    };
    // (pgshift's verdict, psql's, pgshift's stderr) for one connection string.
    let both = |conninfo: &str| {
        let env = [("PGPASSWORD", cluster.password())];
        let out = wd.run_env(&["list", "--dest", conninfo], &env);
        let psql = common::hermetic_command(cluster.bindir().join("psql"), wd.path())
            .args(["-X", "-At", "-c", "SELECT 1", conninfo])
            .env("PGPASSWORD", cluster.password())
            .output()
            .unwrap();
        (out.status.success(), psql.status.success(), stderr_of(&out))
    };
    let root = |file: &str| wd.join(file).display().to_string();

    serve("self");
    let own = format!("sslrootcert={}", root("self.crt"));
    for (host, mode, ok) in [
        ("localhost", "verify-full", true),
        ("localhost", "verify-ca", true),
        ("localhost", "require", true),
        ("127.0.0.1", "verify-ca", true),
        ("127.0.0.1", "verify-full", false),
        ("elsewhere", "verify-full", false),
    ] {
        let (pgshift, psql, err) = both(&conninfo(host, &format!("sslmode={mode} {own}")));
        assert_eq!(
            (pgshift, psql),
            (ok, ok),
            "self-signed, {host} {mode}: {err}"
        );
    }
    let (_, _, err) = both(&conninfo(
        "127.0.0.1",
        &format!("sslmode=verify-full {own}"),
    ));
    assert!(
        err.contains(r#"server certificate is not valid for "127.0.0.1" (it is for localhost)"#),
        "{err}"
    );

    serve("server");
    let ca = format!("sslrootcert={}", root("root.crt"));
    for (host, mode, ok) in [
        ("localhost", "verify-full", true),
        ("127.0.0.1", "verify-ca", true),
        ("127.0.0.1", "verify-full", false),
        ("localhost", &*format!("verify-full {own}"), false),
    ] {
        let params = if mode.contains("sslrootcert") {
            format!("sslmode={mode}")
        } else {
            format!("sslmode={mode} {ca}")
        };
        let (pgshift, psql, err) = both(&conninfo(host, &params));
        assert_eq!(
            (pgshift, psql),
            (ok, ok),
            "CA-signed, {host} {params}: {err}"
        );
    }

    // sslrootcert=system: the system's roots (here SSL_CERT_FILE, which
    // OpenSSL reads for libpq too) vouch for the version 1 certificate as
    // the file does. libpq learnt `system` in 16: psql is asked from 16 on.
    for (file, ok) in [("root.crt", true), ("self.crt", false)] {
        let conninfo = conninfo("localhost", "sslmode=verify-full sslrootcert=system");
        let env = [
            ("PGPASSWORD", cluster.password()),
            ("SSL_CERT_FILE", &root(file)),
        ];
        let out = wd.run_env(&["list", "--dest", &conninfo], &env);
        assert_eq!(
            out.status.success(),
            ok,
            "system roots from {file}: {}",
            stderr_of(&out)
        );
        if common::bin_major() >= 16 {
            let psql = common::hermetic_command(cluster.bindir().join("psql"), wd.path())
                .args(["-X", "-At", "-c", "SELECT 1", &conninfo])
                .envs(env)
                .output()
                .unwrap();
            assert_eq!(psql.status.success(), ok, "psql, system roots from {file}");
        }
    }

    // Without root certificates (no check of the certificate): TLS still works.
    let (pgshift, psql, err) = both(&conninfo("127.0.0.1", "sslmode=require"));
    assert_eq!((pgshift, psql), (true, true), "CA-signed, require: {err}");

    // A stale ~/.postgresql/root.crt: prefer (the default) falls back to a
    // connection without TLS, with a warning; require does not.
    std::fs::create_dir_all(wd.join(".postgresql")).unwrap();
    std::fs::copy(wd.join("self.crt"), wd.join(".postgresql/root.crt")).unwrap();
    let (pgshift, psql, err) = both(&conninfo("localhost", ""));
    assert_eq!((pgshift, psql), (true, true), "{err}");
    assert!(
        err.contains("connected without TLS, as libpq does"),
        "{err}"
    );
    let (pgshift, psql, err) = both(&conninfo("localhost", "sslmode=require"));
    assert_eq!((pgshift, psql), (false, false), "{err}");
    assert!(err.contains("not trusted (unknown issuer)"), "{err}");
}

/// A client certificate of X.509 version 1 (what `openssl x509 -req`
/// writes without `-extfile`): libpq sends it, rustls refuses it. The error
/// was `invalid peer certificate: Other(OtherError(UnsupportedCertVersion))`;
/// it now says what the certificate is and how to issue one that works,
/// before anything connects (exit 1, one line).
#[test]
fn a_version_1_client_certificate_is_named_with_the_way_out() {
    let wd = Workdir::new();
    let openssl = |args: &[&str]| openssl(&wd, args);
    openssl(&[
        "req", "-new", "-nodes", "-out", "c.csr", "-keyout", "c.key", "-subj", "/CN=app",
    ]);
    openssl(&[
        "x509", "-req", "-in", "c.csr", "-days", "30", "-signkey", "c.key", "-out", "c.crt",
    ]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(wd.join("c.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let dest = format!(
        "host=127.0.0.1 port={} user=app dbname=app sslmode=require sslcert={} sslkey={}",
        common::closed_port(),
        wd.join("c.crt").display(),
        wd.join("c.key").display()
    );
    let out = wd.run(&["status", "--dest", &dest]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("c.crt is an X.509 version 1 certificate")
            && err.contains("issue it as version 3"),
        "{err}"
    );
}
