//! How a node reaches Redis: the URL (with a password or an ACL user, never
//! shown), and for `rediss://` the certificates Redis' must chain to.

use std::path::Path;

/// How this node reaches Redis: address, password or ACL user, and for
/// `rediss://` the certificates its certificate must chain to. Made once at
/// start, so a bad URL or CA file is an error then, not at every reconnection.
#[derive(Clone)]
pub struct RedisAccess {
    pub(super) client: redis::Client,
    /// The URL with its password hidden: all that messages may show.
    shown: String,
}

impl RedisAccess {
    /// `url` as `--redis` gives it. `ca` (`--redis-ca`), a PEM file: for
    /// `rediss://`, trust only the certificates in it (a self-signed Redis or a
    /// private CA) instead of the system's roots.
    pub fn new(url: &str, ca: Option<&Path>) -> Result<RedisAccess, String> {
        let shown = redacted(url);
        let client = match ca {
            None => redis::Client::open(url),
            Some(path) => {
                let root_cert = read_ca(path)?;
                let roots = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                redis::Client::build_with_tls(url, roots)
            }
        }
        .map_err(|e| format!("--redis {shown}: {e}"))?;
        Ok(RedisAccess { client, shown })
    }

    /// The URL fit for a log line or an error: its password is `***`.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

/// The certificates of `--redis-ca`: PEM, at least one.
pub(super) fn read_ca(path: &Path) -> Result<Vec<u8>, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let fail = |why: String| format!("--redis-ca {}: {why}", path.display());
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let mut certificates = CertificateDer::pem_slice_iter(&pem);
    match certificates.next() {
        None => Err(fail("no PEM certificate in it".into())),
        Some(Err(e)) => Err(fail(format!("not a PEM certificate: {e}"))),
        Some(Ok(_)) => Ok(pem),
    }
}

/// `url` with its secrets replaced by `***`: the password of
/// `scheme://user:password@host` (the last `@` ends it, so a password with an
/// unescaped `@`, `/` or `?` is hidden whole; without a `:` all before the `@`,
/// which may be a password given in the wrong place), and a `pass=` in the query
/// (`redis+unix:///path?pass=…`).
pub(super) fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_at(url.find("://").map_or(0, |i| i + 3));
    let rest = match rest.rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{user}:***{}", &rest[at..]),
            None => format!("***{}", &rest[at..]),
        },
        None => rest.to_string(),
    };
    let Some((before, query)) = rest.split_once('?') else {
        return format!("{scheme}{rest}");
    };
    let query: Vec<&str> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("pass") => "pass=***",
            _ => pair,
        })
        .collect();
    format!("{scheme}{before}?{}", query.join("&"))
}
