//! rustls for tokio-postgres, honouring `sslmode` the way libpq does.
//!
//! | sslmode                | root certificates available | verification          |
//! |------------------------|-----------------------------|-----------------------|
//! | disable                | -                           | (TLS never used)      |
//! | prefer / allow/require | no                          | none (encrypt only)   |
//! | prefer / allow/require | yes                         | chain, not host name  |
//! | verify-ca              | required                    | chain, not host name  |
//! | verify-full            | required                    | chain and host name   |
//!
//! Root certificates are `sslrootcert` (a PEM file, or `system` for the operating
//! system's store) or else libpq's default `~/.postgresql/root.crt` when it exists.
//! A client certificate is `sslcert` + `sslkey`, or libpq's defaults
//! `~/.postgresql/postgresql.crt` + `postgresql.key` when the certificate exists.
//! Over Unix sockets TLS is never used (libpq and the server agree on that).
//!
//! Certificates are judged by libpq's rules, not the web's: webpki decides first,
//! and what it refuses but libpq accepts (a host name only in the subject's CN, a
//! server certificate marked as a CA or of version 1) is decided again by
//! [`libpq_x509`]. `sslmode=prefer`'s fallback to a connection without TLS after
//! a failed handshake lives in `connect`.
//!
//! Everything uses the ring provider explicitly; no process-wide default is installed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use itertools::Itertools;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::connspec::{ConnSpec, RootCert, SslMode};
use super::libpq_x509;

/// Why no TLS connector could be built. Messages are one line and name the file or
/// parameter to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "sslmode={mode} needs the server's CA certificate: set sslrootcert=/path/to/root.crt (or sslrootcert=system); ~/.postgresql/root.crt does not exist"
    )]
    NoRootCert { mode: SslMode },
    #[error("cannot read {what} file \"{path}\": {message}")]
    Read {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{what} file \"{path}\" contains no PEM certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("{what} file \"{path}\": {message}")]
    BadCertificate {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("sslrootcert=system: no usable certificate in the system's trust store{detail}")]
    NoSystemRoots { detail: String },
    #[error(
        "certificate \"{cert}\" is present but its private key \"{key}\" does not exist (set sslkey=/path/to/key)"
    )]
    MissingKey { cert: PathBuf, key: PathBuf },
    #[error(
        "private key file \"{0}\" has group or world access; permissions should be u=rw (0600) or less (u=rw,g=r (0640) if owned by root)"
    )]
    KeyPermissions(PathBuf),
    #[error("invalid client certificate or key (sslcert/sslkey): {0}")]
    ClientAuth(String),
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

/// Why the client certificate `cert` was not taken, in words: a version 1
/// certificate (what `openssl x509 -req` writes without `-extfile`), which
/// libpq sends but rustls refuses, says how to issue one it takes.
fn client_cert_problem(cert: &std::path::Path, e: &rustls::Error) -> String {
    if format!("{e:?}").contains("UnsupportedCertVersion") {
        return format!(
            "{} is an X.509 version 1 certificate, which libpq sends but pgshift's TLS library (rustls) does not: issue it as version 3 (`openssl x509 -req … -extfile client.ext`, with for instance `extendedKeyUsage = clientAuth` in client.ext)",
            cert.display()
        );
    }
    e.to_string()
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// TLS is never attempted (sslmode=disable, or only Unix sockets).
    Unused,
    /// Encrypt, accept any certificate (handshake signatures are still checked).
    None,
    /// The chain must lead to a trusted root; the host name is not checked.
    Chain,
    /// Chain and host name (or IP address).
    Full,
}

/// What [`make_tls`] will build for a spec; separate so it can be tested and logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPlan {
    pub verification: Verification,
    /// The trusted roots (for `Chain` and `Full`).
    pub roots: Option<RootCert>,
    /// Client certificate and key files.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Decide the verification for a spec, libpq style (see the module docs).
pub fn plan(spec: &ConnSpec) -> Result<TlsPlan, TlsError> {
    if spec.sslmode() == SslMode::Disable || spec.all_unix_sockets() {
        return Ok(TlsPlan {
            verification: Verification::Unused,
            roots: None,
            client_cert: None,
        });
    }
    let roots = spec.effective_root_cert();
    let verification = match (spec.sslmode(), &roots) {
        (SslMode::VerifyFull, Some(_)) => Verification::Full,
        (SslMode::VerifyCa, Some(_)) => Verification::Chain,
        (mode @ (SslMode::VerifyFull | SslMode::VerifyCa), None) => {
            return Err(TlsError::NoRootCert { mode });
        }
        (_, Some(_)) => Verification::Chain,
        (_, None) => Verification::None,
    };
    Ok(TlsPlan {
        verification,
        roots: if verification == Verification::None {
            None
        } else {
            roots
        },
        // A certificate file that does not exist is no certificate, as libpq
        // has it (it stats the file and goes on without one on ENOENT or
        // ENOTDIR; pg_dump gets the same path and does the same).
        client_cert: spec.effective_client_cert().filter(|(cert, _)| {
            !matches!(
                std::fs::metadata(cert).map_err(|e| e.kind()),
                Err(std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory)
            )
        }),
    })
}

/// The rustls client configuration for a spec.
pub fn client_config(spec: &ConnSpec) -> Result<ClientConfig, TlsError> {
    config_for_plan(&plan(spec)?)
}

/// The TLS connector for tokio-postgres.
pub fn make_tls(spec: &ConnSpec) -> Result<MakeRustlsConnect, TlsError> {
    Ok(MakeRustlsConnect::new(client_config(spec)?))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Build the configuration for a plan.
pub fn config_for_plan(plan: &TlsPlan) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let chain = match plan.verification {
        Verification::Unused | Verification::None => None,
        Verification::Chain | Verification::Full => {
            // The file is read once: its certificates are both the store and
            // the anchors libpq_x509 compares a server certificate with.
            let (store, anchors) = match plan.roots.as_ref().expect("plan has roots") {
                RootCert::File(path) => {
                    let anchors = load_pem_certs("sslrootcert", path)?;
                    (store_of(path, &anchors)?, anchors)
                }
                RootCert::System => system_roots()?,
            };
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                    .build()
                    .map_err(|e| TlsError::Setup(e.to_string()))?;
            Some(Chain {
                webpki,
                anchors,
                check_name: plan.verification == Verification::Full,
            })
        }
    };
    let verifier: Arc<dyn ServerCertVerifier> = Arc::new(Libpq { provider, chain });
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&plan.client_cert, plan.verification) {
        (Some((cert, key)), v) if v != Verification::Unused => {
            let (certs, key) = load_client_cert(cert, key)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| TlsError::ClientAuth(client_cert_problem(cert, &e)))?
        }
        _ => builder.with_no_client_auth(),
    };
    // What libpq 17 sends; required by servers doing direct TLS, ignored by older ones.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

fn read_error(what: &'static str, path: &Path, e: impl fmt::Display) -> TlsError {
    TlsError::Read {
        what,
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn load_pem_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    // Read first so a missing file gives the OS message, not a PEM one.
    let data = std::fs::read(path).map_err(|e| read_error(what, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            what,
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The trusted roots.
pub fn load_roots(roots: &RootCert) -> Result<RootCertStore, TlsError> {
    match roots {
        RootCert::File(path) => store_of(path, &load_pem_certs("sslrootcert", path)?),
        RootCert::System => Ok(system_roots()?.0),
    }
}

/// `sslrootcert=system`: the operating system's trust store (or
/// `SSL_CERT_FILE`/`SSL_CERT_DIR`, which OpenSSL, and so libpq, reads too),
/// read once, as the store and as the anchors libpq_x509 compares a server
/// certificate with.
fn system_roots() -> Result<(RootCertStore, Vec<CertificateDer<'static>>), TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(found.certs.iter().cloned());
    if added == 0 {
        let detail = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(TlsError::NoSystemRoots { detail });
    }
    Ok((store, found.certs))
}

/// The store of the certificates read from the sslrootcert file `path`.
fn store_of(path: &Path, certs: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs {
        store
            .add(cert.clone())
            .map_err(|e| TlsError::BadCertificate {
                what: "sslrootcert",
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
    }
    Ok(store)
}

fn load_client_cert(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs = load_pem_certs("sslcert", cert)?;
    let meta = match std::fs::metadata(key) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TlsError::MissingKey {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            });
        }
        Err(e) => return Err(read_error("sslkey", key, e)),
    };
    check_key_permissions(key, &meta)?;
    let data = std::fs::read(key).map_err(|e| read_error("sslkey", key, e))?;
    let key_der = PrivateKeyDer::from_pem_slice(&data).map_err(|e| TlsError::BadCertificate {
        what: "sslkey",
        path: key.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok((certs, key_der))
}

/// libpq refuses private keys others can read: 0600 or less when owned by the user,
/// 0640 or less when owned by root.
fn check_key_permissions(path: &Path, meta: &std::fs::Metadata) -> Result<(), TlsError> {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode();
    let bad = if meta.uid() == 0 {
        mode & 0o037 != 0
    } else {
        mode & 0o077 != 0
    };
    if bad && meta.is_file() {
        return Err(TlsError::KeyPermissions(path.to_path_buf()));
    }
    Ok(())
}

/// One verifier for every mode, with libpq's rules:
/// - without a `chain` (sslmode prefer/require without root certificates) any
///   certificate is accepted;
/// - with one (verify-ca, and prefer/require with root certificates) the chain
///   must lead to a root certificate, and with `check_name` (verify-full) the
///   certificate must name the host.
///
/// webpki decides first. What it refuses and libpq accepts, a host name only in
/// the subject's CN, a server certificate marked as a CA or of version 1, is
/// decided again the way libpq decides it ([`libpq_x509`]). webpki checks the
/// name after the chain, so a name error from it means the chain was good.
/// Whatever the mode, the server must prove it holds the certificate's key.
#[derive(Debug)]
struct Libpq {
    provider: Arc<CryptoProvider>,
    chain: Option<Chain>,
}

#[derive(Debug)]
struct Chain {
    webpki: Arc<WebPkiServerVerifier>,
    /// sslrootcert's certificates (the system's for `system`).
    anchors: Vec<CertificateDer<'static>>,
    check_name: bool,
}

type Cert<'a> = CertificateDer<'a>;
type Dss = DigitallySignedStruct;
type SignatureCheck = Result<HandshakeSignatureValid, rustls::Error>;

impl Libpq {
    fn algorithms(&self) -> &rustls::crypto::WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

impl ServerCertVerifier for Libpq {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) if libpq_x509::refused_for_form(&e) => {
                libpq_x509::chain(end_entity, intermediates, &chain.anchors, now)
                    .map_err(rustls::Error::InvalidCertificate)?;
            }
            verdict => return verdict,
        }
        if !chain.check_name {
            return Ok(ServerCertVerified::assertion());
        }
        let Some(host) = libpq_x509::Host::of(server_name) else {
            return Err(CertificateError::NotValidForName.into());
        };
        match libpq_x509::name_matches(end_entity, &host) {
            (true, _) => Ok(ServerCertVerified::assertion()),
            (false, presented) => Err(CertificateError::NotValidForNameContext {
                expected: server_name.to_owned(),
                presented,
            }
            .into()),
        }
    }

    fn verify_tls12_signature(&self, msg: &[u8], cert: &Cert, dss: &Dss) -> SignatureCheck {
        match rustls::crypto::verify_tls12_signature(msg, cert, dss, self.algorithms()) {
            Err(e) if libpq_x509::refused_for_form(&e) => {
                libpq_x509::verify_signature(cert, msg, dss, self.algorithms(), false)
            }
            verdict => verdict,
        }
    }

    fn verify_tls13_signature(&self, msg: &[u8], cert: &Cert, dss: &Dss) -> SignatureCheck {
        match rustls::crypto::verify_tls13_signature(msg, cert, dss, self.algorithms()) {
            Err(e) if libpq_x509::refused_for_form(&e) => {
                libpq_x509::verify_signature(cert, msg, dss, self.algorithms(), true)
            }
            verdict => verdict,
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

/// A one-line, human explanation of a rustls error seen during a handshake.
pub fn describe_rustls_error(e: &rustls::Error) -> String {
    use CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "server certificate is not trusted (unknown issuer)".to_string(),
            C::NotValidForName => "server certificate is not valid for this host name".to_string(),
            C::NotValidForNameContext {
                expected,
                presented,
            } => {
                let expected = match expected {
                    ServerName::DnsName(d) => d.as_ref().to_string(),
                    ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
                    other => format!("{other:?}"),
                };
                if presented.is_empty() {
                    format!("server certificate is not valid for \"{expected}\" (it names no host)")
                } else {
                    format!(
                        "server certificate is not valid for \"{expected}\" (it is for {})",
                        presented.iter().map(|p| tidy_presented_name(p)).join(", ")
                    )
                }
            }
            C::Expired | C::ExpiredContext { .. } => "server certificate has expired".to_string(),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "server certificate is not valid yet".to_string()
            }
            C::Revoked => "server certificate is revoked".to_string(),
            C::BadSignature => "server certificate has a bad signature".to_string(),
            C::BadEncoding => "server certificate is malformed".to_string(),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "server certificate is not meant for TLS servers (extended key usage)".to_string()
            }
            // webpki's own reasons (UnsupportedCriticalExtension, …) by name.
            C::Other(reason) => format!("server certificate rejected ({reason})"),
            other => format!("server certificate rejected ({other:?})"),
        },
        rustls::Error::AlertReceived(alert) => {
            format!(
                "the server rejected the TLS handshake ({alert:?}; a client certificate problem?)"
            )
        }
        other => other.to_string(),
    }
}

/// rustls renders presented names as `DnsName("db")` / `IpAddress(10.0.0.1)`.
fn tidy_presented_name(p: &str) -> String {
    if let Some(inner) = p.strip_prefix("DnsName(").and_then(|s| s.strip_suffix(')')) {
        return inner.trim_matches('"').to_string();
    }
    if let Some(inner) = p
        .strip_prefix("IpAddress(")
        .and_then(|s| s.strip_suffix(')'))
    {
        // rustls writes IPv6 as 0::1; normalise through IpAddr.
        return inner
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.to_string())
            .unwrap_or_else(|_| inner.to_string());
    }
    p.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    use rustls::server::WebPkiClientVerifier;
    use rustls::{ClientConnection, ServerConfig, ServerConnection};
    use std::os::unix::fs::PermissionsExt;

    struct Ca {
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    impl Ca {
        fn new(name: &str) -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            Ca {
                issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
            }
        }

        fn pem(&self) -> String {
            self.issuer.pem()
        }

        /// An issuer `name` this CA signs: a CA when `ca`, else a certificate
        /// that signs without being allowed to.
        fn intermediate(&self, name: &str, ca: bool) -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            if ca {
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            }
            params.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            Ca {
                issuer: CertifiedIssuer::signed_by(params, key, &self.issuer).unwrap(),
            }
        }

        /// A leaf certificate for `sans`: (chain, key).
        fn leaf(&self, sans: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
            let key = KeyPair::generate().unwrap();
            let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, "leaf");
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
        }

        fn leaf_pem(&self, sans: &[&str]) -> (String, String) {
            let key = KeyPair::generate().unwrap();
            let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
            let params = CertificateParams::new(sans).unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        }
    }

    fn write(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// A home directory holding `ca`'s certificate as `ca.pem`, and its path.
    fn home_with(ca: &Ca) -> (tempfile::TempDir, PathBuf) {
        let home = tempfile::tempdir().unwrap();
        let path = write(home.path(), "ca.pem", &ca.pem(), 0o644);
        (home, path)
    }

    /// Parse with a HOME that has no ~/.postgresql.
    fn spec(input: &str, home: &Path) -> ConnSpec {
        let home = home.to_str().unwrap().to_string();
        ConnSpec::parse_with_env(input, &move |k| match k {
            "HOME" => Some(home.clone()),
            "PGUSER" => Some("tester".into()),
            _ => None,
        })
        .unwrap()
    }

    /// Run a TLS handshake in memory; the client's verdict (or the server's).
    fn handshake(
        client: ClientConfig,
        name: &str,
        server_chain: Vec<CertificateDer<'static>>,
        server_key: PrivateKeyDer<'static>,
        client_ca: Option<&Ca>,
    ) -> Result<(), rustls::Error> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let server = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(ca.issuer.der().clone()).unwrap();
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        }
        .with_single_cert(server_chain, server_key)
        .unwrap();
        let mut c = ClientConnection::new(
            Arc::new(client),
            ServerName::try_from(name.to_string()).unwrap(),
        )?;
        let mut s = ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..20 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut &buf[..]).unwrap();
            let server_result = s.process_new_packets();
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets()?;
            server_result?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn plan_per_sslmode() {
        let (home, ca) = home_with(&Ca::new("ca"));
        let h = home.path();
        let ca = ca.to_str().unwrap();
        let v = |input: &str| plan(&spec(input, h)).map(|p| p.verification);
        assert_eq!(v("host=db sslmode=disable").unwrap(), Verification::Unused);
        assert_eq!(v("host=db sslmode=allow").unwrap(), Verification::None);
        assert_eq!(v("host=db sslmode=prefer").unwrap(), Verification::None);
        assert_eq!(v("host=db sslmode=require").unwrap(), Verification::None);
        // With a root certificate file.
        for (mode, want) in [
            ("require", Verification::Chain),
            ("prefer", Verification::Chain),
            ("verify-ca", Verification::Chain),
            ("verify-full", Verification::Full),
        ] {
            let input = format!("host=db sslmode={mode} sslrootcert={ca}");
            assert_eq!(v(&input).unwrap(), want, "{input}");
        }
        assert_eq!(v("host=db sslrootcert=system").unwrap(), Verification::Full);
        // Unix sockets never use TLS, so no CA is needed there.
        assert_eq!(
            v("host=/tmp sslmode=verify-full").unwrap(),
            Verification::Unused
        );
        let p = plan(&spec(
            &format!("host=db sslmode=verify-ca sslrootcert={ca}"),
            h,
        ))
        .unwrap();
        assert_eq!(p.roots, Some(RootCert::File(ca.into())));
        assert_eq!(p.client_cert, None);
        // A client certificate that does not exist is none (libpq goes on
        // without one), one that does is sent.
        let cert = h.join("client.crt");
        let with = |c: &std::path::Path| {
            let input = format!("host=db sslmode=require sslcert={}", c.display());
            plan(&spec(&input, h)).unwrap().client_cert
        };
        assert_eq!(with(&h.join("missing.crt")), None);
        std::fs::write(&cert, "x").unwrap();
        assert_eq!(with(&cert.join("below-a-file.crt")), None);
        assert_eq!(with(&cert).map(|(c, _)| c), Some(cert.clone()));
    }

    #[test]
    fn verify_without_root_is_a_clear_error() {
        let home = tempfile::tempdir().unwrap();
        for mode in ["verify-full", "verify-ca"] {
            let e = make_tls(&spec(&format!("host=db sslmode={mode}"), home.path()))
                .err()
                .unwrap();
            assert_eq!(
                e.to_string(),
                format!(
                    "sslmode={mode} needs the server's CA certificate: set sslrootcert=/path/to/root.crt (or sslrootcert=system); ~/.postgresql/root.crt does not exist"
                )
            );
        }
    }

    #[test]
    fn default_root_crt_is_used() {
        let home = tempfile::tempdir().unwrap();
        let ca = Ca::new("ca");
        std::fs::create_dir(home.path().join(".postgresql")).unwrap();
        write(
            &home.path().join(".postgresql"),
            "root.crt",
            &ca.pem(),
            0o644,
        );
        let s = spec("host=db sslmode=verify-full", home.path());
        let p = plan(&s).unwrap();
        assert_eq!(p.verification, Verification::Full);
        let (chain, key) = ca.leaf(&["db"]);
        handshake(client_config(&s).unwrap(), "db", chain, key, None).unwrap();
        // With a root.crt around, require verifies the chain like libpq.
        let p = plan(&spec("host=db sslmode=require", home.path())).unwrap();
        assert_eq!(p.verification, Verification::Chain);
    }

    #[test]
    fn handshakes_per_mode() {
        let ca = Ca::new("trusted");
        let other = Ca::new("other");
        let (home, ca_path) = home_with(&ca);
        let h = home.path();
        let ca_path = ca_path.to_str().unwrap();
        let cfg = |input: &str| client_config(&spec(input, h)).unwrap();

        // require, no root: anything goes, even a certificate from nobody we know.
        let (chain, key) = other.leaf(&["elsewhere"]);
        handshake(cfg("host=db sslmode=require"), "db", chain, key, None).unwrap();

        // verify-ca: chain checked, name not.
        let (chain, key) = ca.leaf(&["elsewhere"]);
        handshake(
            cfg(&format!("host=db sslmode=verify-ca sslrootcert={ca_path}")),
            "db",
            chain,
            key,
            None,
        )
        .unwrap();
        let (chain, key) = other.leaf(&["db"]);
        let e = handshake(
            cfg(&format!("host=db sslmode=verify-ca sslrootcert={ca_path}")),
            "db",
            chain,
            key,
            None,
        )
        .unwrap_err();
        assert_eq!(
            describe_rustls_error(&e),
            "server certificate is not trusted (unknown issuer)"
        );
        // require + sslrootcert behaves like verify-ca.
        let (chain, key) = other.leaf(&["db"]);
        assert!(
            handshake(
                cfg(&format!("host=db sslmode=require sslrootcert={ca_path}")),
                "db",
                chain,
                key,
                None
            )
            .is_err()
        );

        // verify-full: chain and name, DNS names and IP addresses.
        let full = format!("sslmode=verify-full sslrootcert={ca_path}");
        let (chain, key) = ca.leaf(&["db", "127.0.0.1", "::1"]);
        handshake(cfg(&format!("host=db {full}")), "db", chain, key, None).unwrap();
        let (chain, key) = ca.leaf(&["db", "127.0.0.1", "::1"]);
        handshake(
            cfg(&format!("host=127.0.0.1 {full}")),
            "127.0.0.1",
            chain,
            key,
            None,
        )
        .unwrap();
        let (chain, key) = ca.leaf(&["db", "127.0.0.1", "::1"]);
        handshake(cfg(&format!("host=::1 {full}")), "::1", chain, key, None).unwrap();
        let (chain, key) = ca.leaf(&["elsewhere", "::1"]);
        let e = handshake(cfg(&format!("host=db {full}")), "db", chain, key, None).unwrap_err();
        assert_eq!(
            describe_rustls_error(&e),
            r#"server certificate is not valid for "db" (it is for elsewhere, ::1)"#
        );
        let (chain, key) = other.leaf(&["db"]);
        assert!(handshake(cfg(&format!("host=db {full}")), "db", chain, key, None).is_err());
    }

    /// A certificate for `cn` (the subject's CN) and `sans`, marked as a CA when
    /// `ca`, expired in 2002 when `expired`, signed by `by` or else by itself:
    /// (its PEM, the chain the server sends, its key).
    fn custom(
        cn: &str,
        sans: &[&str],
        ca: bool,
        expired: bool,
        by: Option<&Ca>,
    ) -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        if expired {
            params.not_before = rcgen::date_time_ymd(2001, 1, 1);
            params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        }
        let cert = match by {
            Some(ca) => params.signed_by(&key, &ca.issuer).unwrap(),
            None => params.self_signed(&key).unwrap(),
        };
        (
            cert.pem(),
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    }

    /// What libpq accepts and webpki alone would refuse (`libpq_x509`), and what
    /// both refuse. Version 1 certificates, which rcgen cannot write, are in
    /// tests/tls_config.rs, made by the openssl command.
    #[test]
    fn certificates_as_libpq_judges_them() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        let ca = Ca::new("ca");
        let ca_path = write(h, "ca.pem", &ca.pem(), 0o644);
        let cfg = |host: &str, mode: &str, root: &Path| {
            let input = format!("host={host} sslmode={mode} sslrootcert={}", root.display());
            client_config(&spec(&input, h)).unwrap()
        };
        let full = |host: &str, root: &Path| cfg(host, "verify-full", root);
        let refusal = |host: &str, root: &Path, (chain, key): (Vec<_>, PrivateKeyDer<'static>)| {
            describe_rustls_error(&handshake(full(host, root), host, chain, key, None).unwrap_err())
        };

        // PostgreSQL's documented self-signed certificate (`openssl req -x509
        // -subj /CN=db`): marked as a CA, its host only in the CN, and trusted as
        // sslrootcert itself.
        let (pem, chain, key) = custom("db", &[], true, false, None);
        let own = write(h, "own.pem", &pem, 0o644);
        for mode in ["verify-full", "verify-ca", "require", "prefer"] {
            handshake(
                cfg("db", mode, &own),
                "db",
                chain.clone(),
                key.clone_key(),
                None,
            )
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        }
        assert_eq!(
            refusal("other", &own, (chain, key)),
            r#"server certificate is not valid for "other" (it is for db)"#
        );
        let (pem, chain, key) = custom("db", &[], true, true, None);
        let old = write(h, "old.pem", &pem, 0o644);
        assert_eq!(
            refusal("db", &old, (chain, key)),
            "server certificate has expired"
        );

        // Signed by the CA, the host only in the CN.
        let (_, chain, key) = custom("db", &[], false, false, Some(&ca));
        handshake(full("db", &ca_path), "db", chain, key, None).unwrap();
        // A subjectAltName of the host's kind hides the CN (RFC 6125, libpq)...
        let (_, chain, key) = custom("db", &["elsewhere"], false, false, Some(&ca));
        assert_eq!(
            refusal("db", &ca_path, (chain, key)),
            r#"server certificate is not valid for "db" (it is for elsewhere)"#
        );
        // ... but a DNS name does not hide it from an address.
        let (_, chain, key) = custom("127.0.0.1", &["elsewhere"], false, false, Some(&ca));
        handshake(full("127.0.0.1", &ca_path), "127.0.0.1", chain, key, None).unwrap();
        let (_, chain, key) = custom("127.0.0.1", &["10.0.0.1"], false, false, Some(&ca));
        assert_eq!(
            refusal("127.0.0.1", &ca_path, (chain, key)),
            r#"server certificate is not valid for "127.0.0.1" (it is for 10.0.0.1)"#
        );
        // A wildcard stands for one label.
        let (_, chain, key) = custom("*.example.com", &[], false, false, Some(&ca));
        let host = "db.example.com";
        handshake(
            full(host, &ca_path),
            host,
            chain.clone(),
            key.clone_key(),
            None,
        )
        .unwrap();
        assert_eq!(
            refusal("a.db.example.com", &ca_path, (chain, key)),
            r#"server certificate is not valid for "a.db.example.com" (it is for *.example.com)"#
        );

        // A server certificate marked as a CA: accepted from the CA, with its
        // name checked; refused from another CA, or expired.
        let (_, chain, key) = custom("leaf", &["db"], true, false, Some(&ca));
        handshake(
            full("db", &ca_path),
            "db",
            chain.clone(),
            key.clone_key(),
            None,
        )
        .unwrap();
        assert_eq!(
            refusal("other", &ca_path, (chain, key)),
            r#"server certificate is not valid for "other" (it is for db)"#
        );
        let (_, chain, key) = custom("leaf", &["db"], true, false, Some(&Ca::new("other")));
        assert_eq!(
            refusal("db", &ca_path, (chain, key)),
            "server certificate is not trusted (unknown issuer)"
        );
        let (_, chain, key) = custom("leaf", &["db"], true, true, Some(&ca));
        assert_eq!(
            refusal("db", &ca_path, (chain, key)),
            "server certificate has expired"
        );
        // ... through an intermediate the server sends: one that is a CA, not
        // one that is not, and not without it.
        for (inter_is_ca, send, ok) in [
            (true, true, true),
            (false, true, false),
            (true, false, false),
        ] {
            let inter = ca.intermediate("inter", inter_is_ca);
            let (_, mut chain, key) = custom("leaf", &["db"], true, false, Some(&inter));
            if send {
                chain.push(inter.issuer.der().clone());
            }
            let verdict = handshake(full("db", &ca_path), "db", chain, key, None);
            match (ok, verdict) {
                (true, Ok(())) => {}
                (false, Err(e)) => assert_eq!(
                    describe_rustls_error(&e),
                    "server certificate is not trusted (unknown issuer)"
                ),
                (_, v) => panic!("intermediate CA {inter_is_ca}, sent {send}: {v:?}"),
            }
        }
    }

    #[test]
    fn several_roots_in_one_file() {
        let home = tempfile::tempdir().unwrap();
        let a = Ca::new("a");
        let b = Ca::new("b");
        let path = write(
            home.path(),
            "roots.pem",
            &format!("{}\n{}", a.pem(), b.pem()),
            0o644,
        );
        let store = load_roots(&RootCert::File(path.clone())).unwrap();
        assert_eq!(store.len(), 2);
        let s = spec(
            &format!("host=db sslmode=verify-full sslrootcert={}", path.display()),
            home.path(),
        );
        let (chain, key) = b.leaf(&["db"]);
        handshake(client_config(&s).unwrap(), "db", chain, key, None).unwrap();
    }

    #[test]
    fn root_file_errors() {
        let home = tempfile::tempdir().unwrap();
        let missing = home.path().join("nope.pem");
        let e = load_roots(&RootCert::File(missing.clone())).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "cannot read sslrootcert file \"{}\": ",
                missing.display()
            )),
            "{e}"
        );
        let empty = write(home.path(), "empty.pem", "not a certificate\n", 0o644);
        let e = load_roots(&RootCert::File(empty.clone())).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "sslrootcert file \"{}\" contains no PEM certificate",
                empty.display()
            )
        );
        // An explicit root file that is missing is an error even for require.
        let s = spec(
            &format!("host=db sslmode=require sslrootcert={}", missing.display()),
            home.path(),
        );
        assert!(make_tls(&s).is_err());
    }

    #[test]
    fn client_certificates() {
        let ca = Ca::new("ca");
        let client_ca = Ca::new("client-ca");
        let (home, ca_path) = home_with(&ca);
        let h = home.path();
        let (cert_pem, key_pem) = client_ca.leaf_pem(&["tester"]);
        let cert = write(h, "client.crt", &cert_pem, 0o644);
        let key = write(h, "client.key", &key_pem, 0o600);
        let input = format!(
            "host=db sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
            ca_path.display(),
            cert.display(),
            key.display()
        );
        let s = spec(&input, h);
        assert_eq!(
            plan(&s).unwrap().client_cert,
            Some((cert.clone(), key.clone()))
        );
        // The server "db" with a certificate from `ca` asks for a client
        // certificate signed by `client_ca`.
        let with_client_ca = |s: &ConnSpec| {
            let (chain, server_key) = ca.leaf(&["db"]);
            handshake(
                client_config(s).unwrap(),
                "db",
                chain,
                server_key,
                Some(&client_ca),
            )
        };
        with_client_ca(&s).unwrap();
        // Without a client certificate the server refuses.
        let s = spec(
            &format!(
                "host=db sslmode=verify-full sslrootcert={}",
                ca_path.display()
            ),
            h,
        );
        assert!(with_client_ca(&s).is_err());

        // Key readable by others: refused like libpq.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = make_tls(&spec(&input, h)).err().unwrap();
        assert!(e.to_string().contains("has group or world access"), "{e}");

        // Certificate without its key.
        let input = format!(
            "host=db sslcert={} sslkey={}",
            cert.display(),
            h.join("missing.key").display()
        );
        let e = make_tls(&spec(&input, h)).err().unwrap();
        assert!(e.to_string().contains("does not exist (set sslkey"), "{e}");

        // Default ~/.postgresql/postgresql.crt + .key.
        let dir = h.join(".postgresql");
        std::fs::create_dir(&dir).unwrap();
        write(&dir, "postgresql.crt", &cert_pem, 0o644);
        write(&dir, "postgresql.key", &key_pem, 0o600);
        let s = spec("host=db sslmode=require", h);
        assert_eq!(
            plan(&s).unwrap().client_cert,
            Some((dir.join("postgresql.crt"), dir.join("postgresql.key")))
        );
        with_client_ca(&s).unwrap();
        // sslcertmode=disable (or PGSSLCERTMODE) sends none, not even a named
        // one, and tells pg_dump the same; allow is the default.
        for input in [
            "host=db sslmode=require sslcertmode=disable".to_string(),
            format!(
                "host=db sslmode=require sslcertmode=disable sslcert={} sslkey={}",
                cert.display(),
                key.display()
            ),
        ] {
            let s = spec(&input, h);
            assert_eq!(plan(&s).unwrap().client_cert, None, "{input}");
            let env = s.child_env();
            let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            assert_eq!(get("PGSSLCERTMODE"), Some("disable"));
            assert!(
                std::fs::metadata(get("PGSSLCERT").unwrap()).is_err(),
                "pg_dump's sslcert must name no file"
            );
        }
        let s = ConnSpec::parse_with_env("host=db sslmode=require", &|name| match name {
            "HOME" => Some(h.display().to_string()),
            "PGSSLCERTMODE" => Some("disable".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(plan(&s).unwrap().client_cert, None);
        let s = spec("host=db sslmode=require sslcertmode=allow", h);
        assert!(plan(&s).unwrap().client_cert.is_some());
    }

    #[test]
    fn alpn_is_postgresql() {
        let home = tempfile::tempdir().unwrap();
        let c = client_config(&spec("host=db sslmode=require", home.path())).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"postgresql".to_vec()]);
    }

    #[test]
    fn rustls_error_descriptions() {
        use rustls::Error as E;
        assert_eq!(
            describe_rustls_error(&E::InvalidCertificate(CertificateError::Expired)),
            "server certificate has expired"
        );
        assert_eq!(
            describe_rustls_error(&E::InvalidCertificate(CertificateError::NotValidForName)),
            "server certificate is not valid for this host name"
        );
        let reason = rustls::OtherError(Arc::new(webpki::Error::UnsupportedCriticalExtension));
        assert_eq!(
            describe_rustls_error(&E::InvalidCertificate(CertificateError::Other(reason))),
            "server certificate rejected (UnsupportedCriticalExtension)"
        );
    }
}
