//! A self-hosted remote cache for Nx, built to run as an Azure Functions custom handler.
//!
//! # Layout
//!
//! A request travels through the modules in this order, and the file list follows it:
//!
//! - [`server`]: binds the listener, serves the router, shuts down gracefully on SIGTERM.
//! - [`api`]: the axum router and handlers; the only module that knows the status codes the Nx
//!   client understands (see `docs/` and the shared client contract).
//! - [`key`]: the cache key (namespace + hash) and the rules that validate it before anything
//!   touches storage.
//! - [`auth`]: this cache's bearer tokens (issue, verify, rotation, grace period) and keyless
//!   access: the trust policy and the exchange of verified identity tokens (`POST /token`). The
//!   API layer sees only a [`auth::Grant`].
//! - [`storage`]: the one [`storage::Store`] interface and the backends behind it.
//! - [`limits`]: what one client can make the server hold: the pace of request bodies, drains
//!   of refused uploads, the send timeout of a client that stops reading.
//! - [`config`]: environment and flags turned into one typed [`config::Config`]; every error
//!   names the setting that is wrong.
//! - [`telemetry`]: log setup and the per-request log line.
//! - [`metrics`]: request counters, at `/metrics` and in the logs.

pub mod api;
pub mod auth;
pub mod config;
pub mod key;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod storage;
pub mod telemetry;
