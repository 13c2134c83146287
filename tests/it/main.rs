//! Integration tests: real HTTP against a real server on port 0, signed by the real signer.

mod abuse;
mod actions;
mod backup;
mod check;
mod cli;
mod common;
mod disk_full;
mod durability;
mod errors;
mod hostile;
mod infra;
mod lifecycle;
mod logging;
mod packaging;
mod pg_errors;
mod rate_limit;
mod readme;
mod scale_out;
mod sdk_node;
mod sdk_python;
mod signing_vectors;
mod startup;
mod store_conformance;
mod tls;
mod upgrade;
mod wal;
