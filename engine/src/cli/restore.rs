//! `corum restore`: builds a new node's data directory from a backup
//! (`corum ctl backup --out DIR`; [`crate::backup`] module docs).
//!
//! Takes the node's configuration as `corum serve` does (the same flags or `--config` file),
//! since the new cluster's placement decides which partitions this node holds and with which
//! voters. Run it on every node of the new cluster, then start them with `corum serve`.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::serve::{build_config, ServeArgs};
use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};

/// Flags of `corum restore`.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The backup directory (written by `corum ctl backup --out DIR`).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
    /// The node's configuration, as for `corum serve`; its data directory must be empty.
    #[command(flatten)]
    pub node: ServeArgs,
}

/// Runs `corum restore`; returns the exit code.
pub fn run(args: RestoreArgs) -> u8 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let config = match build_config(&args.node, cores) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corum restore: invalid configuration: {e}");
            return EXIT_USAGE;
        }
    };
    match crate::backup::restore(&args.from, &config) {
        Ok(report) => {
            if args.json {
                let files: Vec<_> = report
                    .written
                    .iter()
                    .map(|(p, shard, path)| {
                        json!({"partition": p, "shard": shard, "file": path.display().to_string()})
                    })
                    .collect();
                println!(
                    "{}",
                    json!({
                        "node": config.id,
                        "data_dir": config.data_dir.display().to_string(),
                        "keys": report.keys,
                        "backup_id": report.backup_id,
                        "partitions": files,
                    })
                );
            } else {
                println!(
                    "node {}: restored {} partitions ({} keys) from {} (backup {}) into {}; \
                     start it with corum serve and the same configuration",
                    config.id,
                    report.written.len(),
                    report.keys,
                    args.from.display(),
                    report.backup_id,
                    config.data_dir.display()
                );
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("corum restore: {e}");
            EXIT_FAILED
        }
    }
}
