//! loadgen: benchmark runs against corum and etcd, with HdrHistogram reports.
//!
//! The pieces, in the order a run uses them:
//! - [`target`]: the [`target::Target`] / [`target::Connection`] traits every system under test
//!   implements (put, get with a consistency level, compare-and-set, range, delete), plus the
//!   in-process [`target::mem::MemTarget`] that measures loadgen's own overhead;
//! - [`corum`]: the corum target (the wire crate's Rust client) and [`localcorum`], a 3-node
//!   corum cluster on loopback started through `corum local`;
//! - [`etcd`]: the etcd v3 target (gRPC through the `etcd-client` crate) and [`localetcd`], a
//!   3-member etcd cluster on loopback that loadgen starts and stops itself;
//! - [`keys`] and [`workload`]: key distributions (uniform, zipfian, sequential) and operation
//!   mixes (put-only, get-only, YCSB A/B/C/F, range scans);
//! - [`runner`]: closed-loop and open-loop drivers (open loop measures from each request's
//!   intended send time, so there is no coordinated omission), the live progress line, warm-up;
//! - [`cpu`]: CPU time of local server processes from `/proc`;
//! - [`report`]: summaries, JSON, markdown, HdrHistogram interval logs and SVG plots;
//! - [`suite`]: the standard suite of issue 6 and `compare`.
#![deny(missing_docs)]

pub mod corum;
pub mod cpu;
pub mod etcd;
pub mod keys;
pub mod localcorum;
pub mod localetcd;
pub mod report;
pub mod runner;
pub mod suite;
pub mod target;
pub mod workload;

pub use runner::{run, RunConfig, RunResult};
pub use target::{Connection, Consistency, OpError, Target, Versioned};
