//! TLS for the client, and the PEM loading the server shares.
//!
//! A [`TlsClientConfig`] holds the CA that signs the servers' certificates and, optionally, a
//! client certificate and key (presented when the server asks; servers accept connections
//! without one until client authentication exists). The server's name is checked against its
//! certificate: by default the host of the endpoint (`127.0.0.1:7000` -> IP address 127.0.0.1,
//! `db1:7000` -> DNS name db1), or the name given to [`TlsClientConfig::with_server_name`].
//!
//! rustls with the *ring* provider: it builds with a C compiler alone (no cmake, no Go).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;

/// Why TLS settings could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing of the expected kind.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the certificates or key (e.g. a key that does not match its certificate).
    #[error("TLS settings refused: {0}")]
    Refused(String),
    /// A server name that is neither a DNS name nor an IP address.
    #[error("bad TLS server name {0:?}")]
    ServerName(String),
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Every certificate in a PEM file (a chain: the end-entity certificate first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

/// The CA certificates in a PEM file, as a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The process-wide crypto provider: ring.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS settings of a client (module docs).
#[derive(Debug, Clone)]
pub struct TlsClientConfig {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl TlsClientConfig {
    /// Trusts the CAs in `ca` (PEM); presents `cert` and `key` (PEM) when both are given.
    pub fn from_pem_files(ca: &Path, cert_key: Option<(&Path, &Path)>) -> Result<Self, TlsError> {
        let roots = load_roots(ca)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Refused(e.to_string()))?
            .with_root_certificates(roots);
        let config = match cert_key {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| {
                    TlsError::Refused(format!("{} / {}: {e}", cert.display(), key.display()))
                })?,
        };
        Ok(Self::from_rustls(Arc::new(config)))
    }

    /// Uses a rustls configuration as it is.
    pub fn from_rustls(config: Arc<rustls::ClientConfig>) -> Self {
        Self {
            config,
            server_name: None,
        }
    }

    /// Checks every server's certificate against `name` instead of the endpoint's host.
    pub fn with_server_name(mut self, name: &str) -> Result<Self, TlsError> {
        let name = ServerName::try_from(name.to_owned())
            .map_err(|_| TlsError::ServerName(name.to_owned()))?;
        self.server_name = Some(name);
        Ok(self)
    }

    /// The rustls configuration.
    pub fn rustls(&self) -> &Arc<rustls::ClientConfig> {
        &self.config
    }

    /// The name checked against the certificate of the server at `endpoint` (`host:port`).
    pub fn server_name_for(&self, endpoint: &str) -> std::io::Result<ServerName<'static>> {
        if let Some(n) = &self.server_name {
            return Ok(n.clone());
        }
        let host = endpoint
            .rsplit_once(':')
            .map_or(endpoint, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        ServerName::try_from(host.to_owned()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("endpoint {endpoint:?}: {host:?} is not a TLS server name"),
            )
        })
    }

    /// Runs the TLS handshake over a connected socket.
    pub(crate) async fn connect(
        &self,
        endpoint: &str,
        tcp: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let name = self.server_name_for(endpoint)?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("TLS handshake: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_endpoint_host_unless_given() {
        let dir = std::env::temp_dir().join(format!("wire-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let e = TlsClientConfig::from_pem_files(&missing, None).unwrap_err();
        assert!(matches!(e, TlsError::File { .. }), "{e}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let e = TlsClientConfig::from_pem_files(&empty, None).unwrap_err();
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();

        let roots = RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let t = TlsClientConfig::from_rustls(Arc::new(config));
        assert_eq!(
            t.server_name_for("127.0.0.1:7000").unwrap(),
            ServerName::try_from("127.0.0.1").unwrap()
        );
        assert_eq!(
            t.server_name_for("[::1]:7000").unwrap(),
            ServerName::try_from("::1").unwrap()
        );
        assert_eq!(
            t.server_name_for("db1.example:7000").unwrap(),
            ServerName::try_from("db1.example").unwrap()
        );
        let t = t.with_server_name("node-1").unwrap();
        assert_eq!(
            t.server_name_for("127.0.0.1:7000").unwrap(),
            ServerName::try_from("node-1").unwrap()
        );
    }
}
