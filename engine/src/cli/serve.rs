//! `corum serve`: one node.
//!
//! # Flags and the config file
//! `--config FILE` reads a TOML file with the same names as the flags (`id`, `data_dir`,
//! `client_addr`, `peer_addr`, `peers`, `shards`, `partitions`, `replicas`, `pin`,
//! `metrics_addr`), a `[tls]` table (`cert`, `key`, `ca`: the `--cert`, `--key`, `--ca` flags)
//! and a `[tuning]` table (see [`crate::config`]). **A flag given on the command line overrides the
//! same setting in the file**; the file may therefore leave out settings that are always given
//! as flags. Without `--config`, `--id`, `--data-dir`, `--client-addr`, `--peer-addr` and
//! `--peers` are required. `--shards` defaults to the number of cores.
//!
//! The merged configuration is validated ([`NodeConfig::validate`]) before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;

use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::config::{parse_peers, ConfigError, NodeConfig};

/// Flags of `corum serve`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML config file (same names as the flags, plus a [tuning] table); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's id (1, 2, ...; unique in the cluster).
    #[arg(long)]
    pub id: Option<u64>,
    /// Directory for this node's WAL and snapshots.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Base client address; shard i listens on port + i.
    #[arg(long, value_name = "HOST:PORT")]
    pub client_addr: Option<SocketAddr>,
    /// Base peer address; shard i listens on port + i. Must equal this node's --peers entry.
    #[arg(long, value_name = "HOST:PORT")]
    pub peer_addr: Option<SocketAddr>,
    /// The initial cluster, this node included: 1=HOST:PORT,2=HOST:PORT,... (base peer
    /// addresses).
    #[arg(long, value_name = "ID=HOST:PORT,...")]
    pub peers: Option<String>,
    /// Shards (executors) per node; every node must use the same number [default: number of
    /// cores].
    #[arg(long)]
    pub shards: Option<usize>,
    /// Partitions (Raft groups) of a new cluster [default: 64].
    #[arg(long)]
    pub partitions: Option<u32>,
    /// Replicas per partition [default: 3].
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Pin shard i to core i (`--pin` or `--pin=false`) [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub pin: Option<bool>,
    /// Serve Prometheus /metrics, /health and /ready on this address (HTTP, a thread of its
    /// own) [default: not served].
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,
    /// TLS on the client, peer and operations ports: this node's certificate chain (PEM). It must name
    /// the DNS name node-<id>. With --key and --ca [default: plaintext].
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The cluster CA (PEM): signs every node's certificate (peers use mutual TLS) and any
    /// client certificate accepted.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

/// Why a configuration could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ServeConfigError {
    /// The file or a flag is invalid, or the merged config breaks a rule.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A required setting is missing from both the flags and the file.
    #[error("{0} (give it as a flag or in --config)")]
    Missing(String),
}

fn file_error(path: &Path, reason: impl ToString) -> ConfigError {
    ConfigError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Merges the file (if any) and the flags (flags win) into a validated [`NodeConfig`].
/// `cores` is the `--shards` default.
pub fn build_config(args: &ServeArgs, cores: usize) -> Result<NodeConfig, ServeConfigError> {
    let mut table = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
            text.parse::<toml::Table>()
                .map_err(|e| file_error(path, e))?
        }
        None => toml::Table::new(),
    };
    let mut set = |name: &str, value: toml::Value| {
        table.insert(name.to_owned(), value);
    };
    if let Some(id) = args.id {
        set("id", toml::Value::Integer(id as i64));
    }
    if let Some(dir) = &args.data_dir {
        set("data_dir", toml::Value::String(dir.display().to_string()));
    }
    if let Some(addr) = args.client_addr {
        set("client_addr", toml::Value::String(addr.to_string()));
    }
    if let Some(addr) = args.peer_addr {
        set("peer_addr", toml::Value::String(addr.to_string()));
    }
    if let Some(peers) = &args.peers {
        set("peers", peers_table(&parse_peers(peers)?));
    }
    if let Some(shards) = args.shards {
        set("shards", toml::Value::Integer(shards as i64));
    }
    if let Some(p) = args.partitions {
        set("partitions", toml::Value::Integer(i64::from(p)));
    }
    if let Some(r) = args.replicas {
        set("replicas", toml::Value::Integer(r as i64));
    }
    if let Some(pin) = args.pin {
        set("pin", toml::Value::Boolean(pin));
    }
    if let Some(addr) = args.metrics_addr {
        set("metrics_addr", toml::Value::String(addr.to_string()));
    }
    for (name, file) in [("cert", &args.cert), ("key", &args.key), ("ca", &args.ca)] {
        if let Some(path) = file {
            let tls = table
                .entry("tls")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(t) = tls {
                t.insert(name.into(), toml::Value::String(path.display().to_string()));
            }
        }
    }
    table
        .entry("shards")
        .or_insert(toml::Value::Integer(cores.max(1) as i64));
    let origin = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("<flags>"));
    // Through text, so that the file's rules apply (e.g. `peers` keys are strings in TOML).
    let text = toml::to_string(&table).map_err(|e| file_error(&origin, e))?;
    let config: NodeConfig = toml::from_str(&text).map_err(|e: toml::de::Error| {
        let text = e.message().to_owned();
        if text.contains("missing field") {
            ServeConfigError::Missing(text.trim().to_owned())
        } else {
            ServeConfigError::Config(file_error(&origin, text.trim()))
        }
    })?;
    config.validate()?;
    Ok(config)
}

/// `peers` as the TOML table the config file uses (`{ 1 = "HOST:PORT", ... }`).
pub fn peers_table(peers: &BTreeMap<u64, SocketAddr>) -> toml::Value {
    toml::Value::Table(
        peers
            .iter()
            .map(|(id, addr)| (id.to_string(), toml::Value::String(addr.to_string())))
            .collect(),
    )
}

/// Runs `corum serve`; returns the exit code.
pub fn run(args: ServeArgs) -> u8 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let config = match build_config(&args, cores) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            return EXIT_USAGE;
        }
    };
    tracing::info!(
        id = config.id,
        data_dir = %config.data_dir.display(),
        client_addr = %config.client_addr,
        peer_addr = %config.peer_addr,
        shards = config.shards,
        partitions = config.partitions,
        replicas = config.replicas,
        pin = config.pin,
        metrics_addr = ?config.metrics_addr,
        tls = config.tls.is_some(),
        "starting node"
    );
    // Every line of this thread names the node (shard threads have a span of their own).
    let _span = tracing::info_span!("node", node = config.id).entered();
    match crate::server::run(config) {
        Ok(()) => {
            tracing::info!("node stopped");
            EXIT_OK
        }
        Err(e) => {
            tracing::error!(error = %e, "node stopped with an error");
            EXIT_FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> ServeArgs {
        ServeArgs {
            id: Some(1),
            data_dir: Some("/tmp/n1".into()),
            client_addr: Some("127.0.0.1:7000".parse().unwrap()),
            peer_addr: Some("127.0.0.1:7100".parse().unwrap()),
            peers: Some("1=127.0.0.1:7100,2=127.0.0.1:7200,3=127.0.0.1:7300".into()),
            ..ServeArgs::default()
        }
    }

    #[test]
    fn flags_alone_with_defaults() {
        let c = build_config(&flags(), 4).unwrap();
        assert_eq!(c.shards, 4);
        assert_eq!(c.partitions, crate::config::PARTITIONS_DEFAULT);
        assert_eq!(c.peers.len(), 3);
        assert!(!c.pin);
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("corum-serve-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("n.toml");
        std::fs::write(
            &path,
            "id = 2\ndata_dir = \"/x\"\nshards = 3\npartitions = 5\npin = true\n\
             client_addr = \"127.0.0.1:7000\"\npeer_addr = \"127.0.0.1:7100\"\n\
             peers = { 1 = \"127.0.0.1:7100\", 2 = \"127.0.0.1:7200\" }\nreplicas = 2\n\
             [tuning]\nsnapshot_log_bytes = 4096\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            pin: Some(false),
            metrics_addr: Some("127.0.0.1:9100".parse().unwrap()),
            ..flags()
        };
        let c = build_config(&args, 8).unwrap();
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(c.id, 1, "flag wins");
        assert_eq!(c.peers.len(), 3, "flag wins");
        assert_eq!(c.shards, 3, "file wins over the default");
        assert_eq!(c.partitions, 5);
        assert!(!c.pin);
        assert_eq!(c.tuning.snapshot_log_bytes, 4096);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls_flags_fill_the_tls_table() {
        let args = ServeArgs {
            cert: Some("/etc/corum/n1.pem".into()),
            key: Some("/etc/corum/n1-key.pem".into()),
            ca: Some("/etc/corum/ca.pem".into()),
            ..flags()
        };
        let c = build_config(&args, 1).unwrap();
        let tls = c.tls.clone().expect("tls");
        assert_eq!(tls.cert, PathBuf::from("/etc/corum/n1.pem"));
        assert_eq!(tls.key, PathBuf::from("/etc/corum/n1-key.pem"));
        assert_eq!(tls.ca, PathBuf::from("/etc/corum/ca.pem"));
        // The config file corum local writes carries it.
        let back: NodeConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(build_config(&flags(), 1).unwrap().tls.is_none());
        // All three or none.
        let args = ServeArgs {
            cert: Some("/etc/corum/n1.pem".into()),
            ..flags()
        };
        let e = build_config(&args, 1).unwrap_err();
        assert!(e.to_string().contains("key"), "{e}");
    }

    #[test]
    fn missing_and_invalid_settings_are_reported() {
        let args = ServeArgs {
            id: None,
            ..flags()
        };
        let e = build_config(&args, 1).unwrap_err();
        assert!(matches!(e, ServeConfigError::Missing(_)), "{e}");
        assert!(e.to_string().contains("id"), "{e}");
        let args = ServeArgs {
            peers: Some("2=127.0.0.1:7200".into()),
            ..flags()
        };
        assert!(matches!(
            build_config(&args, 1),
            Err(ServeConfigError::Config(ConfigError::SelfNotInPeers(1)))
        ));
        let args = ServeArgs {
            peers: Some("1=nonsense".into()),
            ..flags()
        };
        assert!(matches!(
            build_config(&args, 1),
            Err(ServeConfigError::Config(ConfigError::BadPeer { .. }))
        ));
    }

    #[test]
    fn the_deploy_example_config_is_valid_and_spells_out_the_defaults() {
        let dir = std::env::temp_dir().join(format!("corum-deploy-toml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("corum.toml");
        std::fs::write(&file, include_str!("../../../deploy/corum.toml")).unwrap();
        let args = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        };
        let c = build_config(&args, 8).expect("deploy/corum.toml is a valid config");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.id, 1);
        assert_eq!(
            c.data_dir,
            PathBuf::from("/var/lib/corum"),
            "the unit's StateDirectory"
        );
        assert_eq!(c.peers.len(), 3);
        assert_eq!(c.shards, 2, "the file's, not the cores default");
        // The [tuning] it writes out are the defaults, as its comment says.
        let d = crate::config::Tuning::default();
        assert_eq!(c.tuning.tick_ms, d.tick_ms);
        assert_eq!(c.tuning.heartbeat_ticks, d.heartbeat_ticks);
        assert_eq!(c.tuning.election_ticks_min, d.election_ticks_min);
        assert_eq!(c.tuning.lease_reads, d.lease_reads);
    }
}
