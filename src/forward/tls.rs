//! The TLS client configuration shared by the MQTT and HTTPS destinations: rustls with the ring
//! provider, the destination's own CA (or the system's roots), and an optional client
//! certificate for mutual TLS. There is no switch to skip verification.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where a destination's TLS material lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM CA certificates to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and its key, for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// The ring crypto provider. rustls 0.23.48 deprecates it for lacking post-quantum key
/// exchange, which needs aws-lc-rs; ring is chosen on purpose (field-lessons.md §B5: a third of
/// the build time and binary size, no C toolchain beyond gcc).
#[allow(deprecated)]
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Installs the ring provider as the process default, for libraries that build their own
/// configurations. Idempotent.
pub fn install_provider() {
    // An error means a provider is installed already, which is all this asks for.
    let _ = provider().install_default();
}

/// Builds the client configuration, reading every file now so a bad one fails at start-up with
/// its path.
pub fn client_config(files: &TlsFiles) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match &files.ca_file {
        Some(path) => {
            for cert in certificates(path)? {
                roots
                    .add(cert)
                    .with_context(|| format!("{}: not a CA certificate", path.display()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                anyhow::bail!("no ca_file configured and no system CA certificates found");
            }
        }
    }
    let provider = Arc::new(provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots);
    let config = match (&files.client_cert, &files.client_key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("{}: no PEM private key", key.display()))?;
            builder.with_client_auth_cert(chain, key).context("client certificate and key")?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => anyhow::bail!("client_cert and client_key go together"),
    };
    Ok(Arc::new(config))
}

fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not PEM certificates", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: holds no certificate", path.display());
    }
    Ok(certs)
}
