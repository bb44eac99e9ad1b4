//! TLS on the client and peer ports (rustls with the *ring* provider, over glommio sockets
//! through `futures-rustls`).
//!
//! # Files
//! `--cert FILE --key FILE --ca FILE` (or `[tls] cert/key/ca` in the config file): the node's
//! certificate chain and key, and the cluster CA. All three or none; without them every port
//! is plaintext.
//!
//! The operations HTTP port (`/metrics`, `/health`, `/ready`) serves HTTPS with the client
//! port's settings when TLS is on.
//!
//! # Identities
//! A node's certificate must carry the DNS subject alternative name **`node-<id>`** (its own
//! id), checked when the node starts. Clients check the host they dial (an IP address or DNS
//! name SAN), so a node certificate also names the addresses clients use.
//! - Client port: TLS required (a plaintext client gets a TLS alert and is logged). A client
//!   certificate is optional; one presented must be signed by the CA (client authentication
//!   and roles are not built yet: a certificate grants nothing).
//! - Peer port (mutual TLS): the dialler must present a certificate signed by the CA, and the
//!   hello's `from` node must be named by it (`node-<from>`): a node cannot speak for another.
//!   The dialler checks the listener's certificate against `node-<to>`, so it reaches the
//!   node it meant to. Certificates are used for both ends (server and client auth EKU).

use std::sync::Arc;
use std::time::Duration;

use futures_rustls::{TlsAcceptor, TlsConnector};
use glommio::net::TcpStream;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use wire::client::tls::{load_certs, load_key, load_roots, provider};
pub use wire::client::TlsError;

use crate::config::TlsFiles;

/// How long a client's TLS handshake may take before the connection is dropped (a client
/// that connects and sends nothing holds no connection slot for longer).
pub const CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The DNS name a node's certificate carries: `node-<id>`.
pub fn node_name(id: u64) -> String {
    format!("node-{id}")
}

/// A node's TLS contexts, built from its files.
pub struct NodeTls {
    /// The client port: optional client certificates, verified when presented.
    pub client: TlsAcceptor,
    /// The same settings for the operations HTTP port (a blocking rustls server there).
    pub http: Arc<rustls::ServerConfig>,
    /// The peer port: a client certificate from the CA is required.
    pub peer_accept: TlsAcceptor,
    /// Outgoing peer connections: checks `node-<to>`, presents this node's certificate.
    pub peer_connect: TlsConnector,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeTls")
    }
}

impl NodeTls {
    /// Loads the files of node `id`; refuses a certificate that does not name `node-<id>`.
    pub fn load(files: &TlsFiles, id: u64) -> Result<NodeTls, TlsError> {
        let roots = Arc::new(load_roots(&files.ca)?);
        let chain = load_certs(&files.cert)?;
        let key = load_key(&files.key)?;
        check_names(&chain, id).map_err(|why| TlsError::File {
            path: files.cert.clone(),
            reason: why,
        })?;
        let refused = |e: rustls::Error| {
            TlsError::Refused(format!(
                "{} / {}: {e}",
                files.cert.display(),
                files.key.display()
            ))
        };
        let verifier = |optional: bool| {
            let b = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
            let b = if optional {
                b.allow_unauthenticated()
            } else {
                b
            };
            b.build().map_err(|e| TlsError::Refused(e.to_string()))
        };
        let server = |optional: bool| -> Result<Arc<rustls::ServerConfig>, TlsError> {
            let config = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(refused)?
                .with_client_cert_verifier(verifier(optional)?)
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(refused)?;
            Ok(Arc::new(config))
        };
        let client = server(true)?;
        let connect = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(refused)?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(refused)?;
        Ok(NodeTls {
            client: TlsAcceptor::from(client.clone()),
            http: client,
            peer_accept: TlsAcceptor::from(server(false)?),
            peer_connect: TlsConnector::from(Arc::new(connect)),
        })
    }
}

/// Checks that the end-entity certificate of `chain` names `node-<id>`.
fn check_names(chain: &[CertificateDer<'_>], id: u64) -> Result<(), String> {
    check_peer_identity(chain, id).map_err(|why| {
        format!("{why}; a node's certificate must name its id as the DNS name node-{id}")
    })
}

/// Checks that a peer's certificate (end-entity first, as rustls gives it) names node `id`
/// (`node-<id>`). The chain itself was verified against the CA during the handshake.
pub fn check_peer_identity(chain: &[CertificateDer<'_>], id: u64) -> Result<(), String> {
    let Some(cert) = chain.first() else {
        return Err("no certificate".into());
    };
    let cert = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    let name = ServerName::try_from(node_name(id)).map_err(|e| e.to_string())?;
    cert.verify_is_valid_for_subject_name(&name)
        .map_err(|_| format!("the certificate does not name {}", node_name(id)))
}

/// Runs the server side of a client's handshake with a deadline
/// ([`CLIENT_HANDSHAKE_TIMEOUT`]) on the whole handshake: a socket read timeout alone bounds
/// only the gap between reads (glommio restarts it after every read), so a client sending a
/// byte every few seconds could hold a connection slot for ever (TLS review, finding 2).
pub async fn accept_client(
    tls: &NodeTls,
    stream: TcpStream,
) -> std::io::Result<futures_rustls::server::TlsStream<TcpStream>> {
    stream.set_read_timeout(Some(CLIENT_HANDSHAKE_TIMEOUT))?;
    let s = within(CLIENT_HANDSHAKE_TIMEOUT, tls.client.accept(stream)).await?;
    s.get_ref().0.set_read_timeout(None)?;
    Ok(s)
}

/// `f`, or `TimedOut` once `limit` has passed, whichever comes first.
pub async fn within<T>(
    limit: Duration,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    futures_lite::future::or(f, async {
        glommio::timer::sleep(limit).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("TLS handshake not done within {} ms", limit.as_millis()),
        ))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::certs::{node_files, TestCa};
    use rustls::pki_types::pem::PemObject;

    fn der(pem: &str) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()]
    }

    #[test]
    fn a_peer_certificate_must_name_the_node() {
        let ca = TestCa::new("test CA").unwrap();
        let (node2, _) = ca.issue_node(2).unwrap();
        let (client, _) = ca.issue("client", &["client"]).unwrap();
        check_peer_identity(&der(&node2), 2).unwrap();
        let e = check_peer_identity(&der(&node2), 3).unwrap_err();
        assert!(e.contains("does not name node-3"), "{e}");
        // node-2 is not node-20 or node-2x: the name is matched whole.
        assert!(check_peer_identity(&der(&node2), 20).is_err());
        assert!(check_peer_identity(&der(&client), 2).is_err());
        assert!(check_peer_identity(&[], 2).is_err());
    }

    #[test]
    fn load_refuses_a_certificate_of_another_node_and_a_foreign_key() {
        let dir = std::env::temp_dir().join(format!("corum-tls-load-{}", std::process::id()));
        crate::cli::certs::generate(&dir, &[1, 2]).unwrap();
        let (cert1, key1) = node_files(&dir, 1);
        let (cert2, key2) = node_files(&dir, 2);
        let files = |cert: &std::path::Path, key: &std::path::Path| TlsFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            ca: dir.join("ca.pem"),
        };
        NodeTls::load(&files(&cert1, &key1), 1).unwrap();
        let e = NodeTls::load(&files(&cert2, &key2), 1).unwrap_err();
        assert!(e.to_string().contains("does not name node-1"), "{e}");
        let e = NodeTls::load(&files(&cert1, &key2), 1).unwrap_err();
        assert!(matches!(e, TlsError::Refused(_)), "{e}");
        let e = NodeTls::load(&files(&cert1, &dir.join("missing.pem")), 1).unwrap_err();
        assert!(matches!(e, TlsError::File { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
