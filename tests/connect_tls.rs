//! `pg::conn::connect` against a real server with `ssl=on` and a test CA (the harness's
//! destination cluster: scram-sha-256 over TCP, trust over its Unix socket, a
//! certificate for `localhost` and `127.0.0.1`): TLS modes, channel binding, failure
//! texts, pools, and children that connect with `ConnSpec::child_env` alone.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use pgshift::pg::conn::connect::{connect, connect_pinned};
use pgshift::pg::conn::connspec::ConnSpec;

use common::{Cluster, TestDb, can_start_clusters, clusters};

const ROLE: &str = "pgshift_conn_app";
const PASSWORD: &str = "app pw";

/// The destination cluster with a role `ROLE` (password `PASSWORD`) owning a fresh
/// database; `None` (the test skips) against an external server, which has no CA.
struct Server {
    cluster: &'static Cluster,
    db: TestDb,
    home: tempfile::TempDir,
}

fn server() -> Option<&'static Server> {
    if !can_start_clusters() {
        eprintln!("skipped: needs the harness's own clusters (with their CA)");
        return None;
    }
    static SERVER: OnceLock<Server> = OnceLock::new();
    Some(SERVER.get_or_init(|| {
        let (_, dst) = clusters();
        let db = dst.create_db("dst", "connect");
        dst.psql(
            "postgres",
            &format!(
                "CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}';
                 ALTER DATABASE \"{}\" OWNER TO {ROLE};",
                db.name()
            ),
        );
        Server {
            cluster: dst,
            db,
            home: tempfile::tempdir().unwrap(),
        }
    }))
}

impl Server {
    /// `input` with `{port}`, `{db}`, `{ca}`, `{sock}` and `{app}` (the URL prefix
    /// `postgresql://ROLE:PASSWORD@`) filled in, parsed with an empty HOME and no PG*
    /// environment.
    fn spec(&self, input: &str) -> ConnSpec {
        let input = input
            .replace("{app}", &format!("postgresql://{ROLE}:app%20pw@"))
            .replace("{port}", &self.cluster.port().to_string())
            .replace("{db}", self.db.name())
            .replace("{ca}", &self.cluster.ca_cert_path().display().to_string())
            .replace(
                "{sock}",
                &self.cluster.socket_dir().unwrap().display().to_string(),
            );
        let home = self.home.path().display().to_string();
        ConnSpec::parse_with_env(&input, &move |k| (k == "HOME").then(|| home.clone()))
            .unwrap_or_else(|e| panic!("{input}: {e}"))
    }

    /// Whether psql connects with `input` (PGPASSWORD set, the empty HOME),
    /// and `input` parsed as pgshift reads it in that same environment.
    fn psql_and_spec(&self, input: &str) -> (std::process::Output, ConnSpec) {
        let psql = common::hermetic_command(self.cluster.bindir().join("psql"), self.home.path())
            .args(["-XAtc", "SELECT 1", input])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap();
        let home = self.home.path().display().to_string();
        let spec = ConnSpec::parse_with_env(input, &move |k| match k {
            "HOME" => Some(home.clone()),
            "PGPASSWORD" => Some(PASSWORD.into()),
            _ => None,
        })
        .unwrap();
        (psql, spec)
    }

    async fn ok(&self, input: &str) -> tokio_postgres::Client {
        connect(
            &self.spec(input),
            "destination",
            "pgshift-e2e",
            Duration::ZERO,
        )
        .await
        .unwrap_or_else(|e| panic!("{input}: {e}"))
    }

    async fn fails(&self, input: &str) -> String {
        let e = connect(
            &self.spec(input),
            "destination",
            "pgshift-e2e",
            Duration::ZERO,
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{input}: connected"));
        let text = e.to_string();
        assert!(!text.contains(PASSWORD), "{text}");
        assert!(!text.contains("app%20pw"), "{text}");
        text
    }
}

async fn ssl_in_use(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn tls_modes() {
    let Some(s) = server() else { return };
    for (mode, tls) in [("require", true), ("prefer", true), ("disable", false)] {
        let c = s
            .ok(&format!("{{app}}127.0.0.1:{{port}}/{{db}}?sslmode={mode}"))
            .await;
        assert_eq!(ssl_in_use(&c).await, tls, "sslmode={mode}");
    }
    for host in ["localhost", "127.0.0.1"] {
        let c = s
            .ok(&format!(
                "{{app}}{host}:{{port}}/{{db}}?sslmode=verify-full&sslrootcert={{ca}}"
            ))
            .await;
        assert!(ssl_in_use(&c).await, "{host}");
    }
    // A name the certificate does not cover: verify-ca accepts, verify-full refuses.
    let wrong_name = format!(
        "host=wrong.example hostaddr=127.0.0.1 port={{port}} user={ROLE} password='{PASSWORD}' dbname={{db}} sslrootcert={{ca}}"
    );
    let c = s.ok(&format!("{wrong_name} sslmode=verify-ca")).await;
    assert!(ssl_in_use(&c).await);
    let t = s.fails(&format!("{wrong_name} sslmode=verify-full")).await;
    assert!(
        t.ends_with(r#": TLS: server certificate is not valid for "wrong.example" (it is for localhost, 127.0.0.1)"#),
        "{t}"
    );
    // A CA that did not sign the server's certificate, with verify-full and with
    // require (a root certificate given makes require verify the chain, as libpq).
    let other_ca = s.home.path().join("other-ca.pem");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&other_ca, params.self_signed(&key).unwrap().pem()).unwrap();
    for mode in ["verify-full", "require"] {
        let t = s
            .fails(&format!(
                "{{app}}localhost:{{port}}/{{db}}?sslmode={mode}&sslrootcert={}",
                other_ca.display()
            ))
            .await;
        assert!(
            t.ends_with(": TLS: server certificate is not trusted (unknown issuer)"),
            "{mode}: {t}"
        );
    }
    // No CA at all.
    let t = s
        .fails("{app}localhost:{port}/{db}?sslmode=verify-full")
        .await;
    assert!(
        t.contains("sslmode=verify-full needs the server's CA certificate"),
        "{t}"
    );
    // Unix socket: no TLS even with require (as libpq).
    let c = s
        .ok(&format!(
            "host={{sock}} port={{port}} user={ROLE} dbname={{db}} sslmode=require"
        ))
        .await;
    assert!(!ssl_in_use(&c).await);
}

#[tokio::test]
async fn channel_binding() {
    let Some(s) = server() else { return };
    s.ok("{app}localhost:{port}/{db}?sslmode=require&channel_binding=require")
        .await;
    let t = s
        .fails("{app}localhost:{port}/{db}?sslmode=disable&channel_binding=require")
        .await;
    assert!(t.contains("channel binding"), "{t}");
}

#[tokio::test]
async fn failures_are_one_clear_line() {
    let Some(s) = server() else { return };
    let t = s
        .fails(&format!(
            "postgresql://{ROLE}:wrong@127.0.0.1:{{port}}/{{db}}"
        ))
        .await;
    assert!(
        t.starts_with(&format!(
            "cannot connect to destination postgresql://{ROLE}:***@127.0.0.1:"
        )),
        "{t}"
    );
    assert!(
        t.ends_with(&format!(
            r#": password authentication failed for user "{ROLE}""#
        )),
        "{t}"
    );
    let t = s.fails("{app}127.0.0.1:{port}/nope").await;
    assert!(t.ends_with(r#": database "nope" does not exist"#), "{t}");
    let t = s.fails("{app}127.0.0.1:1/{db}").await;
    assert!(
        t.ends_with(": connection refused (is the server running on 127.0.0.1:1?)"),
        "{t}"
    );
    let t = s
        .fails(&format!("postgresql://{ROLE}@127.0.0.1:{{port}}/{{db}}"))
        .await;
    assert!(t.contains("none was given"), "{t}");
    // A primary asked to be read-only.
    let t = s
        .fails("{app}127.0.0.1:{port}/{db}?target_session_attrs=read-only")
        .await;
    assert!(t.ends_with(": database is not read only"), "{t}");
    assert_eq!(t.lines().count(), 1, "{t}");
}

#[tokio::test]
async fn a_workers_connection_and_application_name() {
    let Some(s) = server() else { return };
    let spec = s.spec("{app}localhost:{port}/{db}?sslmode=verify-full&sslrootcert={ca}");
    let client = connect(&spec, "destination", "pgshift-worker", Duration::ZERO)
        .await
        .unwrap();
    let row = client
        .query_one(
            "SELECT current_setting('application_name'), current_user",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pgshift-worker");
    assert_eq!(row.get::<_, String>(1), ROLE);
    assert!(ssl_in_use(&client).await);
    let bad = s.spec("{app}localhost:{port}/nope");
    let err = connect(&bad, "destination", "x", Duration::ZERO)
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .ends_with(r#"database "nope" does not exist"#),
        "{err}"
    );
}

#[test]
fn children_connect_with_child_env_only() {
    let Some(s) = server() else { return };
    let spec = s.spec(
        "{app}localhost:{port}/{db}?sslmode=verify-full&sslrootcert={ca}&application_name=child",
    );
    let mut cmd = std::process::Command::new(s.cluster.bindir().join("psql"));
    cmd.args([
        "-XAtc",
        "SELECT current_user || ' ' || current_setting('application_name') || ' ' || \
         (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
    ]);
    // Whatever the test process has in its environment, the child sees only child_env.
    for var in ConnSpec::child_env_remove() {
        cmd.env_remove(var);
    }
    cmd.env("HOME", s.home.path()).envs(spec.child_env());
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{ROLE} child true")
    );
}

/// `target_session_attrs` as libpq means it, checked against psql on the
/// same string: a primary whose default is read-only is a primary, not a
/// standby. Hosts are tried in order (the first refuses connections), and the
/// spec comes back pinned to the host the session is on.
#[tokio::test]
async fn target_session_attrs_as_libpq_and_the_host_pinned() {
    let Some(s) = server() else { return };
    let db = s.cluster.create_db("dst", "tsa");
    s.cluster.psql(
        "postgres",
        &format!(
            "ALTER DATABASE \"{0}\" OWNER TO {ROLE};
             ALTER DATABASE \"{0}\" SET default_transaction_read_only = on;",
            db.name()
        ),
    );
    let dead = common::closed_port();
    let port = s.cluster.port();
    for (tsa, ok) in [
        ("any", true),
        ("primary", true),
        ("prefer-standby", true),
        ("read-only", true),
        ("standby", false),
        ("read-write", false),
    ] {
        let input = format!(
            "host=127.0.0.1,127.0.0.1 port={dead},{port} user={ROLE} dbname={} sslmode=disable target_session_attrs={tsa}",
            db.name()
        );
        let (psql, spec) = s.psql_and_spec(&input);
        assert_eq!(psql.status.success(), ok, "psql, {tsa}: {psql:?}");
        let got = connect_pinned(&spec, "source", "pgshift-e2e", Duration::ZERO).await;
        match (ok, got) {
            (true, Ok((_, pinned))) => {
                let ports: Vec<u16> = pinned.hosts().iter().map(|e| e.port).collect();
                assert_eq!(ports, [port], "{tsa}");
                // The pinned spec (prepare's workers) judges the server as
                // the session did.
                if let Err(e) = connect(&pinned, "source", "pgshift-e2e", Duration::ZERO).await {
                    panic!("pinned, {tsa}: {e:#}");
                }
            }
            (false, Err(e)) if tsa == "standby" => {
                assert!(
                    e.to_string().contains(
                        "server is not in hot standby mode (target_session_attrs=standby)"
                    ),
                    "{e}"
                );
                let Err(e) =
                    connect(&spec.pinned(1), "source", "pgshift-e2e", Duration::ZERO).await
                else {
                    panic!("the primary pinned, for standby")
                };
                let e = e.to_string();
                assert!(e.contains("server is not in hot standby mode"), "{e}");
            }
            (false, Err(_)) => {}
            (_, other) => panic!("{tsa}: {:?}", other.map(|(_, p)| p.to_string())),
        }
    }
}

/// A server that answers and refuses the login (here: the role is not
/// there, so authentication fails) ends the search, as in libpq ("if a
/// connection is established successfully, but authentication fails, the
/// remaining hosts in the list are not tried"): pgshift went on to the next
/// host, handing it the credentials the first one refused, and connected
/// where psql does not.
#[tokio::test]
async fn a_host_that_refuses_the_login_ends_the_search_as_in_libpq() {
    let Some(s) = server() else { return };
    let (other, _) = clusters();
    let input = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user={ROLE} dbname={} sslmode=disable",
        other.port(),
        s.cluster.port(),
        s.db.name()
    );
    let (psql, spec) = s.psql_and_spec(&input);
    assert!(!psql.status.success(), "psql: {psql:?}");
    let got = connect_pinned(&spec, "destination", "pgshift-e2e", Duration::ZERO).await;
    let Err(e) = got else {
        panic!("connected past a host that refused the login")
    };
    // One attempt, the first host's: the second was never asked.
    let e = e.to_string();
    assert!(
        e.ends_with(&format!(
            "?sslmode=disable: password authentication failed for user \"{ROLE}\""
        )),
        "{e}"
    );
}

/// A host that asks for a password pgshift has none for (the passfile holds
/// a line for the next host only) ends the search too, as libpq's
/// `pg_fe_sendauth` failing does ("fe_sendauth: no password supplied"):
/// pgshift went on to the next host and connected where psql does not.
#[tokio::test]
async fn a_host_that_asks_for_a_password_none_was_given_for_ends_the_search() {
    let Some(s) = server() else { return };
    let (other, _) = clusters();
    let passfile = s.home.path().join("second-only.pgpass");
    std::fs::write(
        &passfile,
        format!("127.0.0.1:{}:*:{ROLE}:{PASSWORD}\n", s.cluster.port()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let input = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user={ROLE} dbname={} sslmode=disable passfile={}",
        other.port(),
        s.cluster.port(),
        s.db.name(),
        passfile.display()
    );
    let psql = common::hermetic_command(s.cluster.bindir().join("psql"), s.home.path())
        .args(["-XAtc", "SELECT 1", &input])
        .output()
        .unwrap();
    assert!(!psql.status.success(), "psql: {psql:?}");
    let got = connect_pinned(
        &s.spec(&input),
        "destination",
        "pgshift-e2e",
        Duration::ZERO,
    )
    .await;
    let Err(e) = got else {
        panic!("connected past a host that asked for a password")
    };
    let e = e.to_string();
    assert!(
        e.contains(&format!("127.0.0.1:{}", other.port()))
            && e.ends_with("the server asks for a password and none was given (set it in the URL, PGPASSWORD or ~/.pgpass)"),
        "{e}"
    );
}

/// With `sslmode=prefer` (the default), a server that rejects the client's
/// certificate (one of a CA it does not trust, in `~/.postgresql`) says so in
/// TLS 1.3 after the client has finished its handshake: libpq, and so
/// pg_dump, fails ("tlsv1 alert unknown ca") without trying again in plain
/// text. pgshift's own session fell back to plain text and connected, so a
/// dry run passed and prepare then failed in pg_dump; now both fail alike.
#[tokio::test]
async fn prefer_does_not_fall_back_when_the_server_rejects_the_client_certificate() {
    if !can_start_clusters() {
        return;
    }
    let cluster = Cluster::start_with("client_ca", "");
    cluster.psql(
        "postgres",
        &format!(
            "ALTER SYSTEM SET ssl_ca_file = '{}'; SELECT pg_reload_conf();",
            cluster.ca_cert_path().display()
        ),
    );
    // A certificate of the user's own, from a CA the server does not know.
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join(".postgresql");
    std::fs::create_dir(&dir).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cluster.superuser());
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("postgresql.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("postgresql.key"), key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("postgresql.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let input = format!(
        "host=127.0.0.1 port={} user={} dbname=postgres",
        cluster.port(),
        cluster.superuser()
    );
    let h = home.path().display().to_string();
    let password = cluster.password().to_string();
    let spec = ConnSpec::parse_with_env(&input, &move |k| match k {
        "HOME" => Some(h.clone()),
        "PGPASSWORD" => Some(password.clone()),
        _ => None,
    })
    .unwrap();
    let psql = common::hermetic_command(cluster.bindir().join("psql"), home.path())
        .args(["-XAtc", "SELECT 1"])
        .envs(spec.child_env())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&psql.stderr).to_string();
    assert!(
        !psql.status.success() && said.contains("unknown ca"),
        "psql: {said}"
    );
    let Err(e) = connect(&spec, "destination", "pgshift-e2e", Duration::ZERO).await else {
        panic!("connected in plain text after the server rejected the certificate")
    };
    let e = e.to_string();
    assert!(e.contains("UnknownCA") || e.contains("unknown"), "{e}");
    // The same certificate left out (sslcertmode=disable): TLS, as psql.
    let c = connect(
        &ConnSpec::parse_with_env(&format!("{input} sslcertmode=disable"), &{
            let h = home.path().display().to_string();
            let password = cluster.password().to_string();
            move |k| match k {
                "HOME" => Some(h.clone()),
                "PGPASSWORD" => Some(password.clone()),
                _ => None,
            }
        })
        .unwrap(),
        "destination",
        "pgshift-e2e",
        Duration::ZERO,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(ssl_in_use(&c).await);
}

/// A host that fails the TLS checks (its certificate is not for the name
/// asked, with verify-full) ends the search, as libpq's failed handshake
/// does: pgshift went on to the next host and connected where psql does not.
#[tokio::test]
async fn a_host_that_fails_the_tls_checks_ends_the_search() {
    let Some(s) = server() else { return };
    let input = format!(
        "host=wrong.example,localhost hostaddr=127.0.0.1,127.0.0.1 port={{port}},{{port}} user={ROLE} password='{PASSWORD}' dbname={{db}} sslmode=verify-full sslrootcert={{ca}}"
    );
    let e = s.fails(&input).await;
    assert!(
        e.ends_with(r#": TLS: server certificate is not valid for "wrong.example" (it is for localhost, 127.0.0.1)"#),
        "{e}"
    );
}

/// With `sslmode=prefer`, a certificate the client cannot verify and a
/// wrong password: the plain attempt's refusal is the one reported (psql
/// reports both). pgshift said only "server certificate is not trusted",
/// sending the operator after the certificate.
#[tokio::test]
async fn prefer_reports_the_plain_attempts_refusal_after_a_failed_handshake() {
    let Some(s) = server() else { return };
    let other_ca = s.home.path().join("prefer-other-ca.pem");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&other_ca, params.self_signed(&key).unwrap().pem()).unwrap();
    let e = s
        .fails(&format!(
            "postgresql://{ROLE}:wrong@localhost:{{port}}/{{db}}?sslmode=prefer&sslrootcert={}",
            other_ca.display()
        ))
        .await;
    assert!(
        e.ends_with(&format!(
            ": password authentication failed for user \"{ROLE}\""
        )),
        "{e}"
    );
}

/// With `sslmode=prefer`, a server that refuses the session over TLS (a
/// `hostssl … reject` line before one that lets the client in) is asked again
/// without TLS, as libpq does when the server answers its TLS session with an
/// error: pgshift failed where psql connects.
#[tokio::test]
async fn prefer_asks_again_without_tls_when_the_server_refuses_tls_sessions() {
    if !can_start_clusters() {
        return;
    }
    let cluster = Cluster::start_with("hostnossl", "");
    let hba = cluster.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("hostssl all all 127.0.0.1/32 reject\n{rules}"),
    )
    .unwrap();
    cluster.psql("postgres", "SELECT pg_reload_conf()");
    let input = format!(
        "host=127.0.0.1 port={} user={} password='{}' dbname=postgres sslmode=prefer",
        cluster.port(),
        cluster.superuser(),
        cluster.password()
    );
    let home = tempfile::tempdir().unwrap();
    let psql = common::hermetic_command(cluster.bindir().join("psql"), home.path())
        .args(["-XAtc", "SELECT 1", &input])
        .output()
        .unwrap();
    assert!(psql.status.success(), "psql: {psql:?}");
    let h = home.path().display().to_string();
    let spec =
        ConnSpec::parse_with_env(&input, &move |k| (k == "HOME").then(|| h.clone())).unwrap();
    let c = connect(&spec, "destination", "pgshift-e2e", Duration::ZERO)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!ssl_in_use(&c).await);
    // require has no such fallback.
    let required = input.replace("sslmode=prefer", "sslmode=require");
    let h = home.path().display().to_string();
    let spec =
        ConnSpec::parse_with_env(&required, &move |k| (k == "HOME").then(|| h.clone())).unwrap();
    let Err(e) = connect(&spec, "destination", "pgshift-e2e", Duration::ZERO).await else {
        panic!("require connected without TLS")
    };
    assert!(
        e.to_string().contains("pg_hba.conf rejects connection"),
        "{e}"
    );
}

/// A server (or proxy) that accepts the connection and never answers: the
/// attempt ends after the string's connect_timeout, or else after the retry
/// budget, with one clear line, instead of hanging.
#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    for (url, within) in [
        (
            format!("postgresql://u:pw@127.0.0.1:{port}/db?sslmode=disable&connect_timeout=2"),
            Duration::from_secs(60),
        ),
        (
            format!("postgresql://u:pw@127.0.0.1:{port}/db?sslmode=disable"),
            Duration::from_secs(3),
        ),
    ] {
        let spec = ConnSpec::parse(&url).unwrap();
        let started = std::time::Instant::now();
        let e = tokio::time::timeout(
            Duration::from_secs(20),
            connect(&spec, "destination", "", within),
        )
        .await
        .expect("the attempt ends by itself")
        .unwrap_err();
        let t = format!("{e:#}");
        assert!(started.elapsed() < Duration::from_secs(10), "{t}");
        assert!(
            t.ends_with(&format!(
                ": timeout expired: no answer within {}s (is 127.0.0.1:{port} a PostgreSQL server, and is it responding?)",
                if url.contains("connect_timeout") { 2 } else { 3 }
            )),
            "{t}"
        );
        assert!(!t.contains("pw"), "{t}");
    }
}

/// `sslcertmode=disable` sends no client certificate, not even libpq's
/// default `~/.postgresql/postgresql.crt`: with a default certificate that
/// cannot be used, pgshift's session and a child on `child_env` both connect
/// (and both fail without the setting, as psql does).
#[tokio::test]
async fn sslcertmode_disable_sends_no_default_certificate() {
    let Some(s) = server() else { return };
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join(".postgresql");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("postgresql.crt"), "not a certificate\n").unwrap();
    std::fs::write(dir.join("postgresql.key"), "not a key\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("postgresql.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let input = |extra: &str| {
        format!(
            "postgresql://{ROLE}:app%20pw@localhost:{}/{}?sslmode=verify-full&sslrootcert={}{extra}",
            s.cluster.port(),
            s.db.name(),
            s.cluster.ca_cert_path().display()
        )
    };
    let h = home.path().display().to_string();
    let spec = |input: &str| {
        let h = h.clone();
        ConnSpec::parse_with_env(input, &move |k| (k == "HOME").then(|| h.clone())).unwrap()
    };
    let psql = |spec: &ConnSpec| {
        let mut cmd = std::process::Command::new(s.cluster.bindir().join("psql"));
        cmd.args(["-XAtc", "SELECT 1"]);
        for var in ConnSpec::child_env_remove() {
            cmd.env_remove(var);
        }
        cmd.env("HOME", home.path()).envs(spec.child_env());
        cmd.output().unwrap()
    };

    let with_default = spec(&input(""));
    let Err(e) = connect(&with_default, "destination", "pgshift-e2e", Duration::ZERO).await else {
        panic!("connected: the unusable default certificate was not sent");
    };
    assert!(e.to_string().contains("postgresql.crt"), "{e}");
    assert!(!psql(&with_default).status.success());

    let disabled = spec(&input("&sslcertmode=disable"));
    let client = connect(&disabled, "destination", "pgshift-e2e", Duration::ZERO)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ssl_in_use(&client).await);
    let out = psql(&disabled);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
