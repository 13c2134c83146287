//! tagcast: a self-hostable server for the Volcengine IM "broadcast user" OpenAPI
//! (BatchUpdateUserTags, RegisterUsers, UnRegisterUsers, BatchGetUser, BatchUpdateUser), and
//! the audiences tag filters select (CountAudience, ListAudience).
//!
//! A request flows one way: bytes -> [`gateway`] (routing, signature V4, tenancy, rate
//! limit) -> [`actions`] (one module per Action) -> [`store`] (trait + backends) -> the
//! envelope. [`signing`] is pure and shared by the server, `tagcast call` and the tests.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod actions;
pub mod api;
pub mod audience;
#[cfg(feature = "bench")]
pub mod bench;
pub mod broadcast;
pub mod call;
pub mod config;
pub mod console;
#[cfg(feature = "devservers")]
pub mod devservers;
pub mod events;
pub mod gateway;
pub mod import;
pub mod limiter;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod server;
pub mod signing;
pub mod store;
pub mod throttle;
pub mod tls;
