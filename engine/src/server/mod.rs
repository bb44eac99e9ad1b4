//! TEMPORARY placeholder for the server core (branch `server` owns this module and replaces
//! this file at merge). Only the entry point's signature is relied on by `crate::cli`.

use crate::config::NodeConfig;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The server core is not in this build.
    #[error("the server core is not in this build (placeholder)")]
    NotBuilt,
}

/// Runs a node until SIGTERM or SIGINT.
pub fn run(config: NodeConfig) -> Result<(), ServerError> {
    let _ = config;
    Err(ServerError::NotBuilt)
}
