//! TLS, process level: a `corum local --tls` cluster of real `corum serve` processes, real
//! certificates (rcgen, `engine::cli::certs`), real sockets. Plaintext and foreign
//! certificates are refused on the client port; on the peer port a dialler needs a certificate
//! from the cluster CA that names the node its hello claims to be. After every refusal the
//! cluster keeps serving.

mod cli_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cli_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::client::tls::{load_certs, load_key, load_roots, provider};
use wire::{BodyEncoder, Limits, PeerBatch, RaftMessage};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `corum ctl` with TLS flags: `ca`, and `cert_key` when given.
fn ctl_tls(
    endpoints: &str,
    ca: &Path,
    cert_key: Option<(&Path, &Path)>,
    args: &[&str],
) -> std::process::Output {
    let mut all: Vec<String> = vec!["--cacert".into(), ca.display().to_string()];
    if let Some((c, k)) = cert_key {
        all.extend([
            "--cert".into(),
            c.display().to_string(),
            "--key".into(),
            k.display().to_string(),
        ]);
    }
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    ctl(endpoints, &refs)
}

/// Waits until node `id`'s log has a line containing every one of `parts`.
fn wait_log(cluster: &Cluster, id: u64, parts: &[&str], what: &str) -> String {
    wait_for(
        what,
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let text = std::fs::read_to_string(cluster.log_path(id)).ok()?;
            text.lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .map(str::to_owned)
        },
    )
}

/// The hello frame a dialler sends (`engine::server::net` module docs): node `from`'s shard 0
/// to node `to`.
fn hello(from: u64, to: u64) -> BytesMut {
    let mut m = RaftMessage::new(wire::MessageKind::Heartbeat);
    m.from = from;
    m.to = to;
    m.term = 1; // shards
    m.index = 0; // shard
    m.context = u64::from_le_bytes(*b"CORUMHI1");
    m.entries.push(wire::Entry {
        index: 0,
        term: 0,
        kind: 0,
        data: Bytes::from("127.0.0.1:1"),
    });
    let batch = PeerBatch {
        from_node: from,
        to_node: to,
        messages: vec![(u64::MAX, m)],
    };
    let mut out = BytesMut::new();
    BodyEncoder::new()
        .peer_frame(&mut out, 0, &batch, &Limits::default())
        .unwrap();
    out
}

/// How a hand-made peer connection ended.
#[derive(Debug)]
enum Dial {
    /// The TLS handshake failed on our side (or the server's alert reached it).
    Handshake(#[allow(dead_code)] String),
    /// The node closed the connection (EOF or an error after the hello) — refused.
    Closed(#[allow(dead_code)] String),
}

/// Dials node `to`'s peer port at `addr` with mutual TLS (trusting `ca`, presenting
/// `cert_key`), sends a hello claiming to be node `from`, and waits up to `wait` for the node
/// to close the connection. Returns the local address used and how it ended (None: still open
/// after `wait`, i.e. accepted).
async fn dial_peer(
    addr: &str,
    to: u64,
    ca: &Path,
    cert_key: Option<(&Path, &Path)>,
    from: u64,
    wait: Duration,
) -> (String, Option<Dial>) {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(load_roots(ca).unwrap());
    let config = match cert_key {
        Some((c, k)) => builder
            .with_client_auth_cert(load_certs(c).unwrap(), load_key(k).unwrap())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the peer port");
    let local = tcp.local_addr().unwrap().to_string();
    let name = rustls::pki_types::ServerName::try_from(format!("node-{to}")).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut s = match connector.connect(name, tcp).await {
        Ok(s) => s,
        Err(e) => return (local, Some(Dial::Handshake(e.to_string()))),
    };
    let ended = async {
        // The server checks a client certificate after our side finished the handshake: a
        // refusal shows up on the first write or read.
        if let Err(e) = s.write_all(&hello(from, to)).await {
            return Dial::Closed(format!("write: {e}"));
        }
        if let Err(e) = s.flush().await {
            return Dial::Closed(format!("flush: {e}"));
        }
        let mut b = [0u8; 256];
        loop {
            match s.read(&mut b).await {
                Ok(0) => return Dial::Closed("eof".into()),
                Ok(_) => continue,
                Err(e) => return Dial::Closed(e.to_string()),
            }
        }
    };
    (local, tokio::time::timeout(wait, ended).await.ok())
}

/// [`dial_peer`] for a dialler the node must refuse: closed within 10 s.
async fn refused(
    addr: &str,
    to: u64,
    ca: &Path,
    cert_key: Option<(&Path, &Path)>,
    from: u64,
) -> (String, Dial) {
    let (local, how) = dial_peer(addr, to, ca, cert_key, from, Duration::from_secs(10)).await;
    let how = how.unwrap_or_else(|| {
        panic!("node {to} kept a peer connection from {local} (claiming node {from}) open")
    });
    (local, how)
}

/// GET `path` over HTTPS from `addr`, trusting `ca`: the whole answer.
fn https_get(addr: &str, ca: &Path, path: &str) -> String {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(load_roots(ca).unwrap())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let session = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut s = rustls::StreamOwned::new(session, tcp);
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    fn client(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("client.pem"), self.dir.join("client-key.pem"))
    }
    fn node(&self, id: u64) -> (PathBuf, PathBuf) {
        engine::cli::certs::node_files(&self.dir, id)
    }
}

fn pair(p: &(PathBuf, PathBuf)) -> Option<(&Path, &Path)> {
    Some((p.0.as_path(), p.1.as_path()))
}

#[test]
fn a_tls_cluster_serves_ctl_and_refuses_plaintext_foreign_certificates_and_impostors() {
    let _serial = serial();
    let dir = test_dir("tls-cluster");
    let mut cluster = Cluster::start_with(&dir, 3, 1, 8, base_port(8), "", &["--tls"]);
    let e = cluster.endpoints();

    // cluster.json names the client's files, and they exist.
    let tls = &cluster.info["tls"];
    let ours = Pki {
        dir: PathBuf::from(tls["ca"].as_str().expect("tls.ca"))
            .parent()
            .unwrap()
            .to_owned(),
    };
    assert_eq!(
        tls["cert"].as_str().map(PathBuf::from),
        Some(ours.client().0)
    );
    assert_eq!(
        tls["key"].as_str().map(PathBuf::from),
        Some(ours.client().1)
    );
    for f in [ours.ca(), ours.client().0, ours.client().1, ours.node(3).0] {
        assert!(f.exists(), "{} missing", f.display());
    }

    // ctl through TLS: with a client certificate, and with the CA alone.
    let o = ctl_tls(&e, &ours.ca(), pair(&ours.client()), &["put", "k1", "v1"]);
    assert!(
        o.status.success(),
        "put over TLS: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = ctl_tls(&e, &ours.ca(), None, &["get", "k1"]);
    assert!(
        o.status.success(),
        "get over TLS: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(stdout(&o), "v1");

    let rt = runtime();
    // Plaintext bytes on a client port: answered with a TLS alert, closed, logged.
    let (local, answer) = rt.block_on(async {
        let mut s = TcpStream::connect(cluster.client_addr(1)).await.unwrap();
        let local = s.local_addr().unwrap().to_string();
        s.write_all(&[0x43u8; 64]).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
            .await
            .expect("the node closes a plaintext connection")
            .ok();
        (local, answer)
    });
    assert!(
        answer.starts_with(&[0x15, 0x03]),
        "not a TLS alert: {answer:?}"
    );
    wait_log(
        &cluster,
        1,
        &["client TLS handshake failed", &local],
        "the plaintext client's log line",
    );

    // The plaintext client: a clear error.
    let o = ctl(&e, &["--timeout-ms", "1000", "get", "k1"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("accepts TLS only"), "{err}");

    // Another CA's certificates: our client does not trust the nodes, the nodes do not
    // trust its client certificate.
    let other = Pki {
        dir: dir.join("other-pki"),
    };
    engine::cli::certs::generate(&other.dir, &[1, 2, 3]).unwrap();
    let o = ctl_tls(
        &e,
        &other.ca(),
        None,
        &["--timeout-ms", "1000", "get", "k1"],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    // (UnknownIssuer, or BadSignature when the other CA has the same name)
    assert!(err.contains("invalid peer certificate"), "{err}");
    let o = ctl_tls(
        &e,
        &ours.ca(),
        pair(&other.client()),
        &["--timeout-ms", "1000", "get", "k1"],
    );
    assert!(
        !o.status.success(),
        "a client certificate from another CA was accepted"
    );

    // The peer port.
    let peer1 = cluster.peer_addr(1);
    // A control: node 2's own certificate and hello are accepted ("peer connected"; node 2's
    // own dialler then replaces this connection, so it may close soon).
    let (local, _) = rt.block_on(dial_peer(
        &peer1,
        1,
        &ours.ca(),
        pair(&ours.node(2)),
        2,
        Duration::from_millis(500),
    ));
    wait_log(
        &cluster,
        1,
        &["peer connected", &local],
        "the control peer connection accepted",
    );
    // No client certificate.
    let (local, how) = rt.block_on(refused(&peer1, 1, &ours.ca(), None, 2));
    eprintln!("no certificate: {how:?}");
    wait_log(
        &cluster,
        1,
        &["peer TLS handshake failed", &local],
        "the refusal of a peer without a certificate",
    );
    // A certificate from another CA (named node-2 all the same).
    let (local, how) = rt.block_on(refused(&peer1, 1, &ours.ca(), pair(&other.node(2)), 2));
    eprintln!("foreign CA: {how:?}");
    wait_log(
        &cluster,
        1,
        &["peer TLS handshake failed", &local],
        "the refusal of another CA's peer certificate",
    );
    // Node 2's certificate, claiming to be node 3.
    let (local, how) = rt.block_on(refused(&peer1, 1, &ours.ca(), pair(&ours.node(2)), 3));
    eprintln!("impostor: {how:?}");
    assert!(matches!(how, Dial::Closed(_)), "{how:?}");
    let line = wait_log(
        &cluster,
        1,
        &["peer connection closed", &local],
        "the refusal of an impostor",
    );
    assert!(line.contains("does not name node-3"), "{line}");
    // A client certificate on the peer port is from the CA but names no node.
    let (local, _) = rt.block_on(refused(&peer1, 1, &ours.ca(), pair(&ours.client()), 2));
    let line = wait_log(
        &cluster,
        1,
        &["peer connection closed", &local],
        "the refusal of a client certificate on the peer port",
    );
    assert!(line.contains("does not name node-2"), "{line}");

    // The operations port serves HTTPS with the client port's certificate; plain HTTP is
    // refused and logged.
    let metrics = cluster.info["nodes"][0]["metrics_addr"]
        .as_str()
        .expect("metrics_addr")
        .to_owned();
    let answer = https_get(&metrics, &ours.ca(), "/health");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut plain = std::net::TcpStream::connect(&metrics).unwrap();
    let local = plain.local_addr().unwrap().to_string();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::io::Write::write_all(&mut plain, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain, &mut got);
    assert!(
        !got.starts_with(b"HTTP/"),
        "plain HTTP answered on a TLS port"
    );
    wait_log(
        &cluster,
        1,
        &["TLS handshake failed on the metrics port", &local],
        "the metrics port's refusal",
    );

    // TLS review, finding 1 and 2: a client that starts a handshake and then trickles one
    // byte a second (never a gap long enough for a read timeout) is cut off at the
    // handshake deadline on the client port (10 s) and at the connection deadline on the
    // operations port (5 s), not kept for as long as it trickles. Both ports at once.
    let (client_port, metrics_port) = rt.block_on(async {
        let c = tokio::spawn(trickle(cluster.client_addr(1)));
        let m = tokio::spawn(trickle(metrics.clone()));
        (c.await.unwrap(), m.await.unwrap())
    });
    assert!(
        client_port < Duration::from_secs(14),
        "a trickling handshake held a client-port connection for {client_port:?}"
    );
    assert!(
        metrics_port < Duration::from_secs(9),
        "a trickling handshake held an operations-port worker for {metrics_port:?}"
    );

    // The cluster goes on: writes through every node's leader, reads back.
    for i in 0..20 {
        let o = ctl_tls(&e, &ours.ca(), None, &["put", &format!("after-{i}"), "x"]);
        assert!(
            o.status.success(),
            "put after the attacks: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = ctl_tls(&e, &ours.ca(), None, &["status"]);
    assert!(
        o.status.success(),
        "status: {}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    cluster.stop();
}

/// Starts a TLS handshake on `addr` (a record header announcing 16 KiB) and sends one more
/// byte a second; returns how long until the server closed the connection. Gives up (and
/// returns the time spent) after 30 s.
async fn trickle(addr: String) -> Duration {
    let start = std::time::Instant::now();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00]).await.unwrap();
    let mut buf = [0u8; 256];
    while start.elapsed() < Duration::from_secs(30) {
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => continue, // an alert: the close follows
            Err(_) => {
                if s.write_all(&[0x01]).await.is_err() {
                    return start.elapsed();
                }
            }
        }
    }
    start.elapsed()
}

/// A node whose certificate does not name `node-<id>` does not start, and says why.
#[test]
fn a_node_certificate_must_name_its_node() {
    let _serial = serial();
    let dir = test_dir("tls-wrong-node-cert");
    let pki = Pki {
        dir: dir.join("pki"),
    };
    engine::cli::certs::generate(&pki.dir, &[1, 2]).unwrap();
    let (cert, key) = pki.node(2);
    let port = base_port(9) + 10;
    let mut cmd = std::process::Command::new(CORUM);
    cmd.arg("serve")
        .args(["--id", "1", "--shards", "1"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--client-addr", &format!("127.0.0.1:{port}")])
        .args(["--peer-addr", &format!("127.0.0.1:{}", port + 1)])
        .args([
            "--peers",
            &format!("1=127.0.0.1:{}", port + 1),
            "--replicas",
            "1",
        ])
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg("--ca")
        .arg(pki.ca());
    let o = run_bounded(&mut cmd, Duration::from_secs(30));
    assert!(!o.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("does not name node-1"), "{text}");
}

/// SIGHUP reloads the TLS files: new connections get the new certificate, the node keeps
/// running; files that do not load are refused with a log line and the previous certificates
/// stay.
#[test]
fn sighup_reloads_the_certificates_without_dropping_the_node() {
    let _serial = serial();
    let dir = test_dir("tls-sighup");
    let mut cluster = Cluster::start_with(&dir, 1, 1, 2, base_port(9), "", &["--tls"]);
    let e = cluster.endpoints();
    let ours = Pki {
        dir: cluster.dir.join("tls"),
    };
    let other = Pki {
        dir: dir.join("other-pki"),
    };
    engine::cli::certs::generate(&other.dir, &[1]).unwrap();
    let o = ctl_tls(&e, &ours.ca(), None, &["put", "k", "v"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // New files in place: nothing changes until SIGHUP.
    let (cert, key) = ours.node(1);
    std::fs::copy(other.node(1).0, &cert).unwrap();
    std::fs::copy(other.node(1).1, &key).unwrap();
    let o = ctl_tls(&e, &ours.ca(), None, &["get", "k"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let pid = cluster.pid(1);
    signal(pid, libc::SIGHUP);
    wait_log(
        &cluster,
        1,
        &["TLS certificates reloaded"],
        "the reload's log line",
    );
    let o = ctl_tls(&e, &ours.ca(), None, &["--timeout-ms", "1000", "get", "k"]);
    assert!(!o.status.success(), "the old certificate is still served");
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid peer certificate"));
    let o = ctl_tls(&e, &other.ca(), None, &["get", "k"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout(&o), "v");

    // A broken file: refused, the node keeps the certificate it has.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    signal(pid, libc::SIGHUP);
    wait_log(
        &cluster,
        1,
        &["TLS reload refused"],
        "the refused reload's log line",
    );
    let o = ctl_tls(&e, &other.ca(), None, &["get", "k"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(pid_alive(pid), "the node died");
    assert_eq!(cluster.pid(1), pid);
    cluster.stop();
}
