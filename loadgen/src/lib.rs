//! loadgen: benchmark runs against corum and etcd, with histogram reports.
#![deny(missing_docs)]
