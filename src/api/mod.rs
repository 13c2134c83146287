//! The bottom layer every other one points to: the table of errors (code, HTTP status,
//! CodeN) and the table of Actions (name, Version, default QPS, read or write), and the
//! "did you mean" of a misspelt name. It depends on nothing of tagcast but the types its
//! conversions name.

mod action;
pub mod error;
pub mod names;

pub use action::{Action, VERSION};
pub use error::{ApiError, ErrorCode};
