//! Test certificates for `corum local --tls` (rcgen): a CA, one certificate per node and one
//! client certificate, written as PEM into one directory:
//! ```text
//! ca.pem, ca-key.pem                  the cluster CA (its key too, to issue more)
//! node-<id>.pem, node-<id>-key.pem    node <id>: DNS node-<id>, DNS localhost, IP 127.0.0.1
//! client.pem, client-key.pem          a client: DNS client (accepted, grants nothing yet)
//! ```
//! Node certificates serve both ends of peer mutual TLS (server and client auth); the
//! identity a node is checked against is the DNS name `node-<id>` (`server::tls` docs).
//! For tests and local clusters only: the keys are written unencrypted (mode 0600).

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A CA that can sign more certificates.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl TestCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Result<TestCa, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(TestCa { cert, key })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate signed by this CA with subject alternative names `sans` (IP addresses
    /// or DNS names), usable as a server and a client; returns (certificate PEM, key PEM).
    pub fn issue(&self, common_name: &str, sans: &[&str]) -> Result<(String, String), CertError> {
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(sans)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues node `id`'s certificate (module docs).
    pub fn issue_node(&self, id: u64) -> Result<(String, String), CertError> {
        let name = crate::server::tls::node_name(id);
        self.issue(&name, &[&name, "localhost", "127.0.0.1"])
    }
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), CertError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if secret {
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|source| CertError::Write {
        path: path.to_owned(),
        source,
    })?;
    std::io::Write::write_all(&mut f, text.as_bytes()).map_err(|source| CertError::Write {
        path: path.to_owned(),
        source,
    })
}

/// The node certificate and key files of node `id` under `dir`.
pub fn node_files(dir: &Path, id: u64) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("node-{id}.pem")),
        dir.join(format!("node-{id}-key.pem")),
    )
}

/// Writes a new CA, node certificates for `nodes` and a client certificate into `dir`
/// (module docs), creating it.
pub fn generate(dir: &Path, nodes: &[u64]) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let ca = TestCa::new("corum local test CA")?;
    write(&dir.join("ca.pem"), &ca.cert_pem(), false)?;
    write(&dir.join("ca-key.pem"), &ca.key.serialize_pem(), true)?;
    for &id in nodes {
        let (cert, key) = ca.issue_node(id)?;
        let (cert_path, key_path) = node_files(dir, id);
        write(&cert_path, &cert, false)?;
        write(&key_path, &key, true)?;
    }
    let (cert, key) = ca.issue("corum client", &["client"])?;
    write(&dir.join("client.pem"), &cert, false)?;
    write(&dir.join("client-key.pem"), &key, true)
}
