//! HTTPS: `server.tls.cert_file` and `key_file` (PEM), served with rustls (the `ring` provider,
//! TLS 1.2 and 1.3). Loaded once, before the server binds, so a wrong file stops the start with
//! a message naming it instead of failing every connection later.

use std::{path::Path, sync::Arc};

use anyhow::{anyhow, Context};
use tokio_rustls::rustls::{
    self,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
};

/// What the transport needs to accept TLS connections.
#[derive(Clone)]
pub struct Tls(pub(crate) tokio_rustls::TlsAcceptor);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(..)")
    }
}

impl Tls {
    /// Reads the certificate chain and the private key and checks that they belong together.
    pub fn load(cert_file: &Path, key_file: &Path) -> anyhow::Result<Tls> {
        let certs = CertificateDer::pem_file_iter(cert_file)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow!("server.tls.cert_file {}: {e}", cert_file.display()))?;
        if certs.is_empty() {
            anyhow::bail!("server.tls.cert_file {}: no PEM certificate in it", cert_file.display());
        }
        let key = PrivateKeyDer::from_pem_file(key_file)
            .map_err(|e| anyhow!("server.tls.key_file {}: {e}", key_file.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .with_context(|| {
                format!(
                    "server.tls: the key in {} does not fit the certificate in {}",
                    key_file.display(),
                    cert_file.display()
                )
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_do_not_make_a_server_identity_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = |f: &str| dir.path().join(f);
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(p("cert.pem"), made.cert.pem()).unwrap();
        std::fs::write(p("key.pem"), made.key_pair.serialize_pem()).unwrap();
        std::fs::write(p("other.key"), other.key_pair.serialize_pem()).unwrap();
        std::fs::write(p("empty.pem"), "").unwrap();
        assert!(Tls::load(&p("cert.pem"), &p("key.pem")).is_ok());
        let err = |c: &str, k: &str| format!("{:#}", Tls::load(&p(c), &p(k)).unwrap_err());
        let e = err("missing.pem", "key.pem");
        assert!(e.contains("server.tls.cert_file") && e.contains("missing.pem"), "{e}");
        let e = err("empty.pem", "key.pem");
        assert!(e.contains("no PEM certificate") && e.contains("empty.pem"), "{e}");
        let e = err("cert.pem", "cert.pem");
        assert!(e.contains("server.tls.key_file") && e.contains("cert.pem"), "{e}");
        let e = err("cert.pem", "other.key");
        assert!(e.contains("does not fit") && e.contains("other.key"), "{e}");
    }
}
