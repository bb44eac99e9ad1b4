//! `corum-chaos`: Jepsen-style testing of a real corum cluster.
//!
//! Real `corum serve` processes, one per network namespace (veth + bridge), real sockets,
//! real faults: `kill -9` and restart, SIGSTOP/SIGCONT, partitions and random packet loss as
//! nftables rules inside the namespaces, all on a schedule replayed from one seed. Concurrent
//! clients (the `wire` crate's Rust client) run a register and a set workload; the history is
//! checked with `raftcore::linearizability`, acknowledged set adds are read back after healing,
//! and every partition must have a leader and identical data on all its replicas.
//!
//! Modules, in the order a run uses them: [`net`] (namespaces and rules), [`nodes`] (the
//! processes), [`nemesis`] (faults and their schedule), [`workload`] (clients and the
//! history), [`observe`] (health, convergence, per-replica reads), [`check`] (the verdicts),
//! [`report`] (the run directory), [`run`] (all of it in order).

#![deny(missing_docs)]

pub mod check;
pub mod nemesis;
pub mod net;
pub mod nodes;
pub mod observe;
pub mod proxy;
pub mod report;
pub mod rng;
pub mod run;
pub mod workload;
