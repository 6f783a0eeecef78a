//! Where a table's server is and how to reach it: the connection URL as
//! tokio-postgres reads it, and TLS.
//!
//! TLS follows the URL's `sslmode`: `require` and `verify-full` connect
//! over TLS and always verify the server's certificate chain and host name,
//! against the PEM file named by `sslrootcert` or else the Mozilla roots
//! built into the host. (libpq's `require` does not verify; Sluice never
//! sends rows to a server it has not authenticated.) `disable` and
//! `prefer`, the default, connect without TLS. `verify-ca`, which checks
//! the chain but not the name, is refused.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::str::FromStr;
use std::sync::Arc;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};

/// A server's connection settings, checked.
#[derive(Clone)]
pub struct Endpoint {
    config: tokio_postgres::Config,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("hosts", &self.config.get_hosts()).field("tls", &self.tls.is_some()).finish()
    }
}

impl Endpoint {
    /// Reads a connection URL (`postgres://...` or `key=value ...`),
    /// including `sslmode` and, in the URL form, `sslrootcert`. The
    /// error names what is wrong, never the password.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (url, mode, root) = tls_options(url)?;
        let mut config = tokio_postgres::Config::from_str(&url).map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
        if config.get_application_name().is_none() {
            config.application_name("sluice");
        }
        let verify = match mode.as_deref() {
            Some("verify-full") => true,
            Some("verify-ca") => {
                return Err("sslmode=verify-ca is not supported: use verify-full (or require), which also \
                            checks the server's host name"
                    .into());
            }
            _ => config.get_ssl_mode() == SslMode::Require,
        };
        if root.is_some() && !verify {
            return Err("sslrootcert is set but sslmode is not require or verify-full: the connection would \
                        not use TLS"
                .into());
        }
        let tls = verify.then(|| client_config(root.as_deref())).transpose()?;
        if verify {
            config.ssl_mode(SslMode::Require);
        }
        Ok(Self { config, tls })
    }

    /// Whether connections use TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Opens a connection; its I/O runs on its own task, which logs how
    /// it ended under `server`.
    pub async fn connect(&self, server: String) -> Result<Client, tokio_postgres::Error> {
        match &self.tls {
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                spawn(connection, server);
                Ok(client)
            }
            Some(tls) => {
                let connector = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
                let (client, connection) = self.config.connect(connector).await?;
                spawn(connection, server);
                Ok(client)
            }
        }
    }
}

fn spawn<F>(connection: F, server: String)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(server = %server, error = %e, "PostgreSQL connection ended");
        }
    });
}

/// Takes `sslmode` and `sslrootcert` out of a URL's query (tokio-postgres
/// reads neither `verify-full` nor `sslrootcert`); returns the URL left,
/// the mode and the root file.
fn tls_options(url: &str) -> Result<(String, Option<String>, Option<String>), String> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if !is_url {
        let mode = url.split_whitespace().find_map(|kv| kv.strip_prefix("sslmode=")).map(str::to_string);
        if mode.as_deref() == Some("verify-full") {
            return Err("sslmode=verify-full needs the URL form (postgres://...?sslmode=verify-full)".into());
        }
        return Ok((url.to_string(), mode, None));
    }
    let mut parsed = url::Url::parse(url).map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
    let (mut mode, mut root) = (None, None);
    let mut kept = Vec::new();
    for (key, value) in parsed.query_pairs() {
        match &*key {
            "sslmode" => mode = Some(value.into_owned()),
            "sslrootcert" => root = Some(value.into_owned()),
            _ => kept.push((key.into_owned(), value.into_owned())),
        }
    }
    if let Some(m) = &mode
        && m != "verify-full"
        && m != "verify-ca"
    {
        kept.push(("sslmode".into(), m.clone()));
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((parsed.to_string(), mode, root))
}

/// A TLS client that trusts the certificates of the PEM file `root`, or
/// else the Mozilla roots.
fn client_config(root: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match root {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            if certs.is_empty() {
                return Err(format!("sslrootcert {path}: no PEM certificate in the file"));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| format!("sslrootcert {path}: {e}"))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_follows_sslmode_and_the_root_file_leaves_the_url() {
        let plain = Endpoint::parse("postgres://postgres@127.0.0.1:5432/test").unwrap();
        assert!(!plain.uses_tls());
        assert_eq!(plain.config.get_application_name(), Some("sluice"));
        assert!(Endpoint::parse("postgres://h/db?sslmode=require").unwrap().uses_tls());
        assert!(Endpoint::parse("postgres://h/db?sslmode=verify-full&application_name=x").unwrap().uses_tls());
        assert!(!Endpoint::parse("host=h dbname=db sslmode=disable").unwrap().uses_tls());

        let (url, mode, root) = tls_options("postgres://u:p@h/db?sslrootcert=%2Fca.pem&sslmode=verify-full").unwrap();
        assert_eq!(
            (url.as_str(), mode.as_deref(), root.as_deref()),
            ("postgres://u:p@h/db", Some("verify-full"), Some("/ca.pem"))
        );
    }

    #[test]
    fn bad_tls_settings_are_named() {
        let err = |url: &str| Endpoint::parse(url).unwrap_err();
        assert!(err("postgres://h/db?sslmode=verify-ca").contains("verify-ca is not supported"));
        assert!(err("postgres://h/db?sslrootcert=/x.pem").contains("sslmode is not require"));
        let missing = err("postgres://h/db?sslmode=require&sslrootcert=/nonexistent/ca.pem");
        assert!(missing.starts_with("sslrootcert /nonexistent/ca.pem:"), "{missing}");
        let not_pem = std::env::temp_dir().join(format!("sluice-not-pem-{}", std::process::id()));
        std::fs::write(&not_pem, "hello").unwrap();
        let empty = err(&format!("postgres://h/db?sslmode=require&sslrootcert={}", not_pem.display()));
        std::fs::remove_file(&not_pem).unwrap();
        assert!(empty.contains("no PEM certificate"), "{empty}");
        assert!(err("postgres://h/db?sslmode=sometimes").contains("not a PostgreSQL URL"));
    }
}
