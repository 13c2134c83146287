//! Integration tests: real HTTP against a real server on port 0, signed by the real signer.

mod common;
mod signing_vectors;
mod errors;
mod actions;
mod durability;
mod rate_limit;
mod startup;
