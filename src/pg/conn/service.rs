//! libpq connection service files (`pg_service.conf`): `service=prod` in a conninfo
//! string, `?service=prod` in a URL, or `PGSERVICE=prod`.
//!
//! Looked up the way libpq's `parseServiceInfo` does it:
//!
//! 1. the per-user file: `PGSERVICEFILE` when set (then it must exist), else
//!    `~/.pg_service.conf` when it exists (`HOME`, else the passwd entry, as for
//!    `~/.pgpass`);
//! 2. only if that file does not define the service: the system file
//!    `pg_service.conf` in `PGSYSCONFDIR`. libpq has a compiled-in default
//!    directory; pgshift links no libpq, so without `PGSYSCONFDIR` it uses the first
//!    of [`SYSTEM_DIRS`] (where the common packages' libpq looks) that has the file.
//!
//! The first file that defines the service wins; the two are never merged. A
//! service defined nowhere is an error, as is a `PGSERVICEFILE` that does not exist.
//!
//! Format (libpq's): `[name]` starts a section; inside it each line is
//! `keyword=value` with no spaces around `=` (the value is the rest of the line,
//! taken literally: no quotes, no escapes); leading and trailing white space and
//! lines starting with `#` are ignored. A `service` keyword inside a section is an
//! error (no nesting). Only the requested section is read, so a problem elsewhere in
//! the file does not matter.
//!
//! Precedence (applied by [`ConnSpec`](super::connspec::ConnSpec)): parameters
//! written in the connection string beat the service file, which beats the `PG*`
//! environment variables. Errors name the file and line, never a value (a service
//! file may hold a password).

use std::path::{Path, PathBuf};

use itertools::Itertools;

/// System-wide directories searched for `pg_service.conf` when `PGSYSCONFDIR` is not
/// set: Debian/Ubuntu's libpq, the Red Hat family's packages, a source build.
pub const SYSTEM_DIRS: [&str; 3] = [
    "/etc/postgresql-common",
    "/etc/sysconfig/pgsql",
    "/usr/local/pgsql/etc",
];

/// One `keyword=value` line of a service's section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub keyword: String,
    pub value: String,
    pub line: usize,
}

/// A service found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub file: PathBuf,
    pub settings: Vec<Setting>,
}

/// Why a service could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("definition of service \"{name}\" not found ({})", describe(.searched))]
    NotFound {
        name: String,
        searched: Vec<PathBuf>,
    },
    #[error("service file \"{}\" not found (PGSERVICEFILE)", .0.display())]
    FileMissing(PathBuf),
    #[error("cannot read service file \"{}\": {error}", .file.display())]
    Unreadable { file: PathBuf, error: String },
    #[error("syntax error in service file \"{}\", line {line}: {what}", .file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        what: &'static str,
    },
    #[error(
        "syntax error in service file \"{}\", line {line}: unknown parameter \"{keyword}\"",
        .file.display()
    )]
    UnknownKeyword {
        file: PathBuf,
        line: usize,
        keyword: String,
    },
    #[error(
        "nested service specifications not supported in service file \"{}\", line {line}",
        .file.display()
    )]
    Nested { file: PathBuf, line: usize },
}

fn describe(searched: &[PathBuf]) -> String {
    if searched.is_empty() {
        return "no service file exists".to_string();
    }
    format!(
        "looked in {}",
        searched.iter().map(|p| p.display().to_string()).join(", ")
    )
}

/// Find service `name`. `env` answers `PGSERVICEFILE` and `PGSYSCONFDIR`; `home` is
/// the home directory (for `~/.pg_service.conf`).
pub fn lookup(
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    home: Option<&Path>,
) -> Result<Service, ServiceError> {
    let nonempty = |var: &str| env(var).filter(|v| !v.is_empty());
    let mut searched = Vec::new();

    let user_file = match nonempty("PGSERVICEFILE") {
        Some(f) => {
            let f = PathBuf::from(f);
            if !f.exists() {
                return Err(ServiceError::FileMissing(f));
            }
            Some(f)
        }
        None => home
            .map(|h| h.join(".pg_service.conf"))
            .filter(|f| f.exists()),
    };
    let system_file = match nonempty("PGSYSCONFDIR") {
        Some(dir) => Some(Path::new(&dir).join("pg_service.conf")),
        None => SYSTEM_DIRS
            .iter()
            .map(|d| Path::new(d).join("pg_service.conf"))
            .find(|f| f.exists()),
    };
    // The first file that defines the service wins.
    for file in [user_file, system_file.filter(|f| f.exists())]
        .into_iter()
        .flatten()
    {
        if let Some(settings) = read_section(&file, name)? {
            return Ok(Service {
                name: name.to_string(),
                file,
                settings,
            });
        }
        searched.push(file);
    }
    Err(ServiceError::NotFound {
        name: name.to_string(),
        searched,
    })
}

/// The settings of section `[name]` of `file`, or `None` when it has no such section.
fn read_section(file: &Path, name: &str) -> Result<Option<Vec<Setting>>, ServiceError> {
    let bytes = std::fs::read(file).map_err(|e| ServiceError::Unreadable {
        file: file.to_path_buf(),
        error: e.to_string(),
    })?;
    let text = String::from_utf8_lossy(&bytes);
    parse_section(&text, name).map_err(|(line, problem)| match problem {
        LineProblem::Nested => ServiceError::Nested {
            file: file.to_path_buf(),
            line,
        },
        LineProblem::Syntax(what) => ServiceError::Syntax {
            file: file.to_path_buf(),
            line,
            what,
        },
    })
}

enum LineProblem {
    Syntax(&'static str),
    Nested,
}

fn parse_section(text: &str, name: &str) -> Result<Option<Vec<Setting>>, (usize, LineProblem)> {
    let mut in_section = false;
    let mut settings: Option<Vec<Setting>> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            if in_section {
                break; // the next section: done
            }
            // libpq: the name, then `]`; anything after the `]` is ignored.
            in_section = rest.strip_prefix(name).is_some_and(|r| r.starts_with(']'));
            if in_section {
                settings = Some(Vec::new());
            }
            continue;
        }
        if !in_section {
            continue;
        }
        let Some((keyword, value)) = line.split_once('=') else {
            return Err((i + 1, LineProblem::Syntax("expected keyword=value")));
        };
        if keyword == "service" {
            return Err((i + 1, LineProblem::Nested));
        }
        if keyword.is_empty() {
            return Err((i + 1, LineProblem::Syntax("missing keyword before \"=\"")));
        }
        settings.get_or_insert_with(Vec::new).push(Setting {
            keyword: keyword.to_string(),
            value: value.to_string(),
            line: i + 1,
        });
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        move |k| pairs.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.clone())
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn kv(s: &Service) -> Vec<(String, String)> {
        s.settings
            .iter()
            .map(|x| (x.keyword.clone(), x.value.clone()))
            .collect()
    }

    #[test]
    fn format_as_libpq_reads_it() {
        let text = "# comment\n[other]\nhost=x\nthis line is not checked\n\n  [prod]   # trailing text\n  host=db.example.com  \nport=6432\n#port=1\noptions=-c search_path=app\npassword=a b'c\n[prod]\nhost=second-section-ignored\n";
        let settings = parse_section(text, "prod").ok().unwrap().unwrap();
        let got: Vec<(&str, &str, usize)> = settings
            .iter()
            .map(|s| (s.keyword.as_str(), s.value.as_str(), s.line))
            .collect();
        assert_eq!(
            got,
            [
                ("host", "db.example.com", 7),
                ("port", "6432", 8),
                ("options", "-c search_path=app", 10),
                ("password", "a b'c", 11),
            ]
        );
        // A prefix of a section name is not the section; an empty section is defined.
        assert!(
            parse_section("[production]\nhost=x\n", "prod")
                .ok()
                .unwrap()
                .is_none()
        );
        assert_eq!(
            parse_section("[prod]\n[x]\n", "prod").ok().unwrap(),
            Some(vec![])
        );
        // Problems inside the section, with their line.
        assert!(matches!(
            parse_section("[prod]\nhost x\n", "prod"),
            Err((2, LineProblem::Syntax(_)))
        ));
        assert!(matches!(
            parse_section("\n[prod]\n\nservice=other\n", "prod"),
            Err((4, LineProblem::Nested))
        ));
    }

    #[test]
    fn user_file_first_then_system_file_first_definition_wins() {
        let home = tempfile::tempdir().unwrap();
        let sys = tempfile::tempdir().unwrap();
        write(
            sys.path(),
            "pg_service.conf",
            "[both]\nhost=system\n[sys_only]\nhost=system\nport=1\n",
        );
        let sysdir = ("PGSYSCONFDIR", sys.path().display().to_string());
        // Looked up with the system directory set.
        let sys_lookup = |name: &str| {
            lookup(
                name,
                &env_of(std::slice::from_ref(&sysdir)),
                Some(home.path()),
            )
        };
        // No user file: the system file.
        let s = sys_lookup("both").unwrap();
        assert_eq!(kv(&s), [("host".into(), "system".into())]);
        // ~/.pg_service.conf defines it: that one, nothing merged from the system file.
        let user = write(home.path(), ".pg_service.conf", "[both]\nport=2\n");
        let s = sys_lookup("both").unwrap();
        assert_eq!(s.file, user);
        assert_eq!(kv(&s), [("port".into(), "2".into())]);
        // Not in the user file: the system file.
        let s = sys_lookup("sys_only").unwrap();
        assert_eq!(s.file, sys.path().join("pg_service.conf"));
        // PGSERVICEFILE replaces ~/.pg_service.conf.
        let other = write(sys.path(), "elsewhere.conf", "[both]\nhost=elsewhere\n");
        let env = env_of(&[
            sysdir.clone(),
            ("PGSERVICEFILE", other.display().to_string()),
        ]);
        let s = lookup("both", &env, Some(home.path())).unwrap();
        assert_eq!(kv(&s), [("host".into(), "elsewhere".into())]);
        // ... and must exist.
        let env = env_of(&[("PGSERVICEFILE", "/nonexistent/pg_service.conf".into())]);
        let e = lookup("both", &env, Some(home.path())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "service file \"/nonexistent/pg_service.conf\" not found (PGSERVICEFILE)"
        );
        // Defined nowhere: the files searched are named.
        let e = sys_lookup("nope").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "definition of service \"nope\" not found (looked in {}, {})",
                user.display(),
                sys.path().join("pg_service.conf").display()
            )
        );
        // No service file anywhere: said so, in words.
        let e = ServiceError::NotFound {
            name: "nope".into(),
            searched: Vec::new(),
        };
        assert_eq!(
            e.to_string(),
            "definition of service \"nope\" not found (no service file exists)"
        );
        // A broken line in the service's section is reported with file and line.
        write(home.path(), ".pg_service.conf", "[both]\nhost\n");
        let e = sys_lookup("both").unwrap_err();
        assert!(
            e.to_string()
                .ends_with(".pg_service.conf\", line 2: expected keyword=value"),
            "{e}"
        );
    }
}
