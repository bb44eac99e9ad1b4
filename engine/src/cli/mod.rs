//! The `corum` command: `serve`, `local` and `ctl` (see `engine/CLI.md` for the user guide).
//!
//! The binary (`src/bin/corum.rs`) only calls [`main`]; everything else lives here so it can be
//! unit-tested and documented.
//!
//! # Exit codes
//! - `0`: success.
//! - `1`: the operation failed (server error, timeout, CAS / transaction compare did not hold,
//!   key not found for `get`, unhealthy `status`, a node or the cluster stopped with an error).
//! - `2`: usage error (bad flags, bad config file, bad transaction syntax).
//! - `3`: `corum doctor` only: a check warned and none failed (see [`doctor`]).

pub mod certs;
pub mod ctl;
pub mod doctor;
pub mod local;
pub mod restore;
pub mod serve;
pub mod txn_syntax;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the operation failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: usage error.
pub const EXIT_USAGE: u8 = 2;

/// corum: a strongly consistent, replicated key-value store.
#[derive(Debug, Parser)]
#[command(name = "corum", version, about, propagate_version = true)]
pub struct Cli {
    /// Log line format (the level filter comes from RUST_LOG, e.g. `RUST_LOG=info,engine=debug`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines with key=value fields.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node (blocks until SIGTERM or SIGINT).
    Serve(serve::ServeArgs),
    /// Run a whole cluster on loopback as child processes (development and tests).
    Local(local::LocalArgs),
    /// Talk to a cluster: data commands and status.
    Ctl(ctl::CtlArgs),
    /// Check this host before a node runs here (kernel, io_uring, limits, clock, the data
    /// directory's filesystem, O_DIRECT, fdatasync latency, free disk) and say what to fix.
    /// Exit 0 all ok, 3 warnings, 1 a check failed.
    Doctor(doctor::DoctorArgs),
    /// Build a new node's data directory from a backup (`corum ctl backup --out DIR`), for the
    /// node configured by the same flags or --config file as `corum serve`.
    Restore(restore::RestoreArgs),
}

/// Installs the tracing subscriber: logs go to stderr, filtered by `RUST_LOG` (default
/// `default_filter`).
pub fn init_logging(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // Only fails when a subscriber is already installed (e.g. twice in one test process).
    let _ = result;
}

/// Entry point of the `corum` binary: parses the arguments and runs the subcommand.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version with exit 0 and usage errors with exit 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    let code = match cli.command {
        Command::Serve(args) => {
            init_logging(cli.log_format, "info");
            serve::run(args)
        }
        Command::Local(args) => {
            init_logging(cli.log_format, "info");
            local::run(args)
        }
        Command::Ctl(args) => {
            init_logging(cli.log_format, "warn");
            ctl::run(args)
        }
        Command::Doctor(args) => {
            init_logging(cli.log_format, "warn");
            doctor::run(args)
        }
        Command::Restore(args) => {
            init_logging(cli.log_format, "warn");
            restore::run(args)
        }
    };
    ExitCode::from(code)
}

/// Bytes for people: the UTF-8 text when it is valid UTF-8 without control characters,
/// otherwise `0x` followed by lowercase hex.
pub fn display_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(char::is_control) && !s.starts_with("0x") => s.to_owned(),
        _ => {
            let mut out = String::with_capacity(2 + 2 * bytes.len());
            out.push_str("0x");
            for b in bytes {
                out.push_str(&format!("{b:02x}"));
            }
            out
        }
    }
}

/// Parses a command-line key or value: `0x`-prefixed even-length hex is decoded, anything else
/// is taken as its UTF-8 bytes. (The inverse of [`display_bytes`].)
pub fn parse_bytes(text: &str) -> Vec<u8> {
    if let Some(hex) = text.strip_prefix("0x") {
        if hex.len() % 2 == 0 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return (0..hex.len())
                .step_by(2)
                .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
                .collect();
        }
    }
    text.as_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_through_text() {
        for b in [
            &b"hello"[..],
            b"",
            b"\x00\xff",
            b"0xab",
            b"line\nbreak",
            "d\u{e9}j\u{e0}".as_bytes(),
        ] {
            assert_eq!(parse_bytes(&display_bytes(b)), b, "{b:?}");
        }
        assert_eq!(display_bytes(b"\x01"), "0x01");
        assert_eq!(parse_bytes("0xzz"), b"0xzz");
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
