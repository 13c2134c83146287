//! The audience engine: which registered users of an app a tag filter selects.
//!
//! [`filter`] parses and evaluates filters (API.md §6) over roaring bitmaps of per-app user
//! ordinals.

pub mod filter;
pub mod index;
pub mod snapshot;
pub mod strings;

pub use index::{AudienceIndex, Page};
