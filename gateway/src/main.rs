//! `corum-gateway`: serves etcd's v3 gRPC API in front of a corum cluster.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use gateway::Gateway;
use wire::client::{Client, ClientConfig};

/// etcd's v3 gRPC API (etcdctl, etcd client libraries) in front of a corum cluster.
#[derive(Debug, Parser)]
#[command(name = "corum-gateway", version)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:2379")]
    listen: SocketAddr,
    /// corum client endpoints (host:port, comma-separated) to fetch the cluster map from.
    #[arg(long, env = "CORUM_ENDPOINTS", value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Client URLs reported for every member by Cluster.MemberList (comma-separated; default
    /// http://<listen>). Give the address clients reach this gateway (or its load balancer) at.
    #[arg(long, value_delimiter = ',')]
    advertise_client_urls: Vec<String>,
    /// Deadline of one corum call, retries included, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    request_timeout_ms: u64,
    /// Connect to corum with TLS, trusting the CA in FILE (PEM).
    #[arg(long, value_name = "FILE")]
    cacert: Option<std::path::PathBuf>,
    /// Client certificate to present to corum (PEM; with --key and --cacert).
    #[arg(long, value_name = "FILE", requires_all = ["key", "cacert"])]
    cert: Option<std::path::PathBuf>,
    /// Key of --cert (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let advertise = if args.advertise_client_urls.is_empty() {
        vec![format!("http://{}", args.listen)]
    } else {
        args.advertise_client_urls
    };
    let mut config = ClientConfig::new(args.endpoints.clone());
    config.request_timeout = Duration::from_millis(args.request_timeout_ms);
    if let Some(ca) = &args.cacert {
        let cert_key = args.cert.as_deref().zip(args.key.as_deref());
        config.tls = Some(
            wire::client::TlsClientConfig::from_pem_files(ca, cert_key)
                .map_err(|e| format!("TLS: {e}"))?,
        );
    }
    let client = Client::connect(config).await.map_err(|e| {
        format!(
            "cannot fetch the cluster map from {}: {e}",
            args.endpoints.join(",")
        )
    })?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    tracing::info!(
        listen = %args.listen,
        endpoints = %args.endpoints.join(","),
        advertise = %advertise.join(","),
        version = gateway::VERSION,
        "corum-gateway serving"
    );
    let gateway = Arc::new(Gateway::new(client, advertise));
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler can be installed at start");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    gateway::serve(listener, gateway, shutdown)
        .await
        .map_err(|e| format!("gRPC server failed: {e}"))
}
