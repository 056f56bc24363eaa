//! A self-hosted remote cache for Nx and Turborepo, built to run as an Azure Functions custom
//! handler.
//!
//! # Layout
//!
//! A request travels down this list: the server accepts it, the API routes it, the token is
//! checked, the store answers. **A module uses only the modules listed below it** (never one
//! above, so no two modules lean on each other; `tests/layout.rs` checks it). A type that several
//! modules need lives in the lowest of them: a setting's type beside its section of
//! configuration, an outcome beside the counters that count it.
//!
//! - [`server`]: binds the listener, serves the router, shuts down gracefully on SIGTERM;
//!   `handler doctor`, `handler usage`, `handler entries` and `handler purge`. May use every
//!   module below.
//! - [`api`]: the axum router and the front doors, one per client API (`api/nx.rs`,
//!   `api/turbo.rs`; neither uses the other), over what they share (`api/cache.rs`: admission,
//!   the read, the upload's checks and drains); the only module that knows the status codes a
//!   client understands (see `docs/` and the shared client contracts). Uses storage, limits,
//!   telemetry, metrics, config, auth, key.
//! - [`storage`]: the one [`storage::Store`] interface and the backends behind it (embedded,
//!   Azure), with what each entry records (its writer, turbo's fields), what acts on them
//!   (health watch, retention, usage, entries and purge) and what makes reads safe to repeat
//!   (inline reads of small entries: retries, single flight, the memory copy). Uses limits (body pace, the stream
//!   type), metrics (store figures), config (its settings), auth (the `*` patterns of
//!   `--claim`), key.
//! - [`limits`]: what one client can make the server hold: the pace of request bodies, drains
//!   of refused uploads, the send timeout of a client that stops reading, the gate of storage
//!   calls one request fans out into. Uses config (the numbers).
//! - [`telemetry`]: log setup and the per-request log line. Uses metrics (outcomes are counted
//!   as they are logged), config (the log format), auth (the caller of a grant).
//! - [`metrics`]: request outcomes and their counters, at `/metrics` and in the logs. Uses
//!   auth (exchange refusal reasons).
//! - [`config`]: environment and flags turned into one typed [`config::Config`], one file per
//!   section; every error names the setting that is wrong. Uses auth (the token and trust-policy
//!   types it parses into).
//! - [`auth`]: this cache's bearer tokens (issue, verify, rotation, grace period) and keyless
//!   access: the trust policy and the exchange of verified identity tokens (`POST /token`). The
//!   API layer sees only a [`auth::Grant`]. Uses key.
//! - [`key`]: the cache key (client API + namespace + hash), its object name, and the rules that
//!   validate it before anything touches storage. Uses nothing of the crate.

pub mod api;
pub mod auth;
pub mod config;
pub mod key;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod storage;
pub mod telemetry;
