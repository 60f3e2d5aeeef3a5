//! The server certificates libpq accepts and webpki refuses, checked the way libpq
//! (with OpenSSL) checks them.
//!
//! pg_dump, pg_restore and psql connect with libpq; pgshift's own sessions use
//! rustls, whose verifier (webpki) follows the web's rules. Where the two differ,
//! a run would connect its children and fail its own session, or the reverse. Three
//! differences matter for PostgreSQL servers, all three in the certificate that
//! PostgreSQL's documentation tells how to make (`openssl req -new -x509 ... -subj
//! "/CN=dbhost.yourdomain.com"`: self-signed, `CA:TRUE`, no subjectAltName):
//!
//! 1. **The host name in the subject's CN.** libpq
//!    (`pgtls_verify_peer_name_matches_certificate_guts`, PostgreSQL 14+) compares
//!    the host with every subjectAltName of type dNSName or iPAddress, and falls back
//!    to the first CN when the certificate has no subjectAltName of the host's own
//!    kind (DNS for a name, iPAddress for an address). webpki never reads the CN.
//!    Names compare ASCII case-insensitively; a `*.` wildcard stands for one or more
//!    characters without a dot at the start (`wildcard_certificate_match`).
//! 2. **A server certificate marked as a CA** (`basicConstraints CA:TRUE`): OpenSSL
//!    takes it as a leaf; webpki refuses it (`CaUsedAsEndEntity`).
//! 3. **A version 1 certificate** (`openssl x509 -req` before OpenSSL 3 wrote them):
//!    OpenSSL takes it; webpki refuses it (`UnsupportedCertVersion`).
//!
//! The verifier in `tls` lets webpki decide first. Only when it refuses for one of
//! these reasons does [`chain`] verify the chain itself (the leaf, then the
//! certificates the server sent, up to a certificate of `sslrootcert`: issuer
//! names, signatures, validity dates, issuers that may sign, the leaf's extended
//! key usage), and [`name_matches`] checks the name. The server's handshake
//! signature over a version 1 certificate is checked with its public key
//! ([`verify_signature`]), whatever the sslmode. Nothing is accepted that
//! libpq would refuse: SHA-1 signatures are refused (OpenSSL 3's default security
//! level), and a certificate `sslrootcert` holds itself is trusted as it is, as
//! OpenSSL trusts it.

use std::net::IpAddr;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct};
use x509_parser::oid_registry::{OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate, X509Version};

/// Whether webpki refused a certificate for its form only, which OpenSSL accepts
/// (module docs, items 2 and 3): then [`chain`] decides instead.
pub fn refused_for_form(e: &rustls::Error) -> bool {
    let rustls::Error::InvalidCertificate(CertificateError::Other(other)) = e else {
        return false;
    };
    matches!(
        other.0.downcast_ref::<webpki::Error>(),
        Some(webpki::Error::CaUsedAsEndEntity | webpki::Error::UnsupportedCertVersion)
    )
}

/// The host as libpq compares it: its text, and its address when it is one.
pub struct Host {
    text: String,
    ip: Option<IpAddr>,
}

impl Host {
    pub fn of(name: &ServerName<'_>) -> Option<Host> {
        match name {
            ServerName::DnsName(d) => Some(Host {
                text: d.as_ref().to_string(),
                ip: None,
            }),
            ServerName::IpAddress(ip) => {
                let ip = IpAddr::from(*ip);
                Some(Host {
                    text: ip.to_string(),
                    ip: Some(ip),
                })
            }
            _ => None,
        }
    }
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, CertificateError> {
    X509Certificate::from_der(der.as_ref())
        .map(|(_, cert)| cert)
        .map_err(|_| CertificateError::BadEncoding)
}

/// libpq's verdict on `host` for the certificate `der` (module docs, item 1),
/// and the names it compared, for the error.
pub fn name_matches(der: &CertificateDer<'_>, host: &Host) -> (bool, Vec<String>) {
    let Ok(cert) = parse(der) else {
        return (false, Vec::new());
    };
    let mut compared = Vec::new();
    let mut check_cn = true;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            let (own_kind, hit) = match name {
                GeneralName::DNSName(n) => {
                    compared.push(n.to_string());
                    (host.ip.is_none(), text_matches(n, &host.text))
                }
                GeneralName::IPAddress(bytes) => {
                    compared.push(ip_text(bytes));
                    (host.ip.is_some(), Some(ip_matches(bytes, host.ip)))
                }
                _ => continue,
            };
            if own_kind {
                check_cn = false;
            }
            if hit == Some(true) {
                return (true, compared);
            }
            if hit.is_none() {
                // A name libpq cannot compare (an embedded NUL): an error, no CN.
                return (false, compared);
            }
        }
    }
    if check_cn {
        let cn = cert.subject().iter_common_name().next();
        if let Some(cn) = cn.and_then(|a| a.as_str().ok()) {
            compared.push(cn.to_string());
            return (text_matches(cn, &host.text) == Some(true), compared);
        }
    }
    (false, compared)
}

/// `pq_verify_peer_name_matches_certificate_name`: equal ignoring ASCII case, or a
/// wildcard match; `None` for a name with an embedded NUL.
fn text_matches(name: &str, host: &str) -> Option<bool> {
    if name.contains('\0') {
        return None;
    }
    Some(name.eq_ignore_ascii_case(host) || wildcard_matches(name.as_bytes(), host.as_bytes()))
}

/// libpq's `wildcard_certificate_match`: `*.rest` matches a host that ends in
/// `.rest` with no dot before the part the star stands for.
fn wildcard_matches(pattern: &[u8], host: &[u8]) -> bool {
    if pattern.len() < 3 || !pattern.starts_with(b"*.") || pattern.len() > host.len() {
        return false;
    }
    let suffix = &pattern[1..];
    let start = host.len() - suffix.len();
    host[start..].eq_ignore_ascii_case(suffix) && !host[..start - 1].contains(&b'.')
}

/// An iPAddress entry against the host's address; false for a host name.
fn ip_matches(bytes: &[u8], ip: Option<IpAddr>) -> bool {
    match ip {
        Some(IpAddr::V4(a)) => bytes == a.octets(),
        Some(IpAddr::V6(a)) => bytes == a.octets(),
        None => false,
    }
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes")).to_string(),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes")).to_string(),
        _ => format!("{bytes:02x?}"),
    }
}

fn check_dates(cert: &X509Certificate<'_>, now: UnixTime) -> Result<(), CertificateError> {
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    if now < cert.validity().not_before.timestamp() {
        return Err(CertificateError::NotValidYet);
    }
    if now > cert.validity().not_after.timestamp() {
        return Err(CertificateError::Expired);
    }
    Ok(())
}

/// Whether `issuer` signed `cert`, with an algorithm OpenSSL 3 accepts by default.
fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    let alg = &cert.signature_algorithm.algorithm;
    if *alg == OID_PKCS1_SHA1WITHRSA || *alg == OID_SHA1_WITH_RSA {
        return false;
    }
    cert.issuer().as_raw() == issuer.subject().as_raw()
        && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// Whether OpenSSL lets `cert` sign other certificates (`check_ca`): `CA:TRUE`
/// without a key usage that leaves out keyCertSign, or a self-signed version 1
/// certificate (which has no extensions to say so).
fn may_sign(cert: &X509Certificate<'_>) -> bool {
    if cert.version() == X509Version::V1 {
        return cert.issuer().as_raw() == cert.subject().as_raw();
    }
    let signs = match cert.key_usage() {
        Ok(Some(ku)) => ku.value.key_cert_sign(),
        Ok(None) => true,
        Err(_) => false,
    };
    cert.is_ca() && signs
}

/// The longest chain OpenSSL builds by default is 100; PostgreSQL servers' are short.
const MAX_DEPTH: usize = 8;

/// Verify the chain from `end_entity` through `intermediates` (as the server sent
/// them) to one of `anchors` (sslrootcert's certificates), as OpenSSL does.
pub fn chain(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchors: &[CertificateDer<'static>],
    now: UnixTime,
) -> Result<(), CertificateError> {
    let leaf = parse(end_entity)?;
    check_dates(&leaf, now)?;
    if let Ok(Some(eku)) = leaf.extended_key_usage()
        && !(eku.value.server_auth || eku.value.any)
    {
        return Err(CertificateError::InvalidPurpose);
    }
    // A certificate sslrootcert holds is trusted as it is.
    if anchors.iter().any(|a| a.as_ref() == end_entity.as_ref()) {
        return Ok(());
    }
    let anchors: Vec<X509Certificate<'_>> = anchors.iter().filter_map(|a| parse(a).ok()).collect();
    let intermediates: Vec<X509Certificate<'_>> =
        intermediates.iter().filter_map(|c| parse(c).ok()).collect();
    let mut current = &leaf;
    for _ in 0..MAX_DEPTH {
        if let Some(anchor) = anchors.iter().find(|a| signed_by(current, a)) {
            return check_dates(anchor, now);
        }
        let Some(next) = intermediates
            .iter()
            .find(|i| may_sign(i) && signed_by(current, i))
        else {
            return Err(CertificateError::UnknownIssuer);
        };
        check_dates(next, now)?;
        current = next;
    }
    Err(CertificateError::UnknownIssuer)
}

/// The server's handshake signature, checked with the public key of a
/// certificate webpki cannot read (version 1) as rustls checks it with a
/// certificate it can: rustls's own check parses the certificate first, so
/// without this a version 1 certificate fails every sslmode, even `require`.
pub fn verify_signature(
    cert: &CertificateDer<'_>,
    msg: &[u8],
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
    tls13: bool,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let parsed = parse(cert)?;
    let spki = SubjectPublicKeyInfoDer::from(parsed.public_key().raw);
    if tls13 {
        return rustls::crypto::verify_tls13_signature_with_raw_key(msg, &spki, dss, algorithms);
    }
    let key = webpki::RawPublicKeyEntity::try_from(&spki)
        .map_err(|_| rustls::Error::from(CertificateError::BadEncoding))?;
    let candidates = algorithms
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == dss.scheme)
        .map(|(_, algs)| *algs)
        .unwrap_or_default();
    if candidates
        .iter()
        .any(|alg| key.verify_signature(*alg, msg, dss.signature()).is_ok())
    {
        Ok(HandshakeSignatureValid::assertion())
    } else {
        Err(CertificateError::BadSignature.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_as_libpq() {
        let m = |p: &str, h: &str| wildcard_matches(p.as_bytes(), h.as_bytes());
        assert!(m("*.example.com", "db.example.com"));
        assert!(m("*.example.com", "DB.EXAMPLE.COM"));
        assert!(!m("*.example.com", "a.db.example.com"));
        assert!(!m("*.example.com", "example.com"));
        assert!(!m("*.example.com", ".example.com"));
        assert!(!m("db.*.com", "db.example.com"));
        assert!(!m("*", "db"));
        assert!(!m("*.", "db."));
        assert_eq!(text_matches("Db.Example.Com", "db.example.com"), Some(true));
        assert_eq!(text_matches("db\0.evil", "db"), None);
    }

    #[test]
    fn addresses_compare_as_bytes() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        assert!(ip_matches(&[10, 0, 0, 1], Some(v4)));
        assert!(!ip_matches(&[10, 0, 0, 2], Some(v4)));
        assert!(!ip_matches(&[10, 0, 0, 1], None));
        let mut one = [0u8; 16];
        one[15] = 1;
        assert!(ip_matches(&one, Some(v6)));
        assert!(!ip_matches(&[0, 0, 0, 1], Some(v6)));
        assert_eq!(ip_text(&[10, 0, 0, 1]), "10.0.0.1");
        assert_eq!(ip_text(&one), "::1");
    }
}
