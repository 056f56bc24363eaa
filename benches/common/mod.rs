//! What the benchmarks share: a token authority with the server's defaults, and the router's
//! state around a given store, so each benchmark says only what it measures.

use std::sync::Arc;
use std::time::Duration;

use nx_azure_cache::api::AppState;
use nx_azure_cache::auth::exchange::Exchange;
use nx_azure_cache::auth::{Secret, TokenAuthority, TokenRules};
use nx_azure_cache::config::{Limits, Mode};
use nx_azure_cache::limits::Bodies;
use nx_azure_cache::metrics::Metrics;
use nx_azure_cache::storage::Store;

/// HS256 with a fixed secret and the default issuer, audience and lifetimes.
pub fn authority() -> TokenAuthority {
    TokenAuthority::new(
        &Secret::new(
            b"benchmark-secret-benchmark-secret-0123456789".to_vec(),
            jsonwebtoken::Algorithm::HS256,
        )
        .unwrap(),
        &[],
        TokenRules {
            algorithm: jsonwebtoken::Algorithm::HS256,
            issuer: "nx-azure-cache".into(),
            audience: "nx-remote-cache".into(),
            revoked: Default::default(),
            max_lifetime: Duration::from_secs(90 * 24 * 3600),
            expired_grace: Duration::from_secs(12 * 3600),
            leeway: Duration::from_secs(30),
        },
    )
}

/// A read-write server over `store` with the default limits and no `/metrics` token.
pub fn state(
    store: Arc<dyn Store>,
    tokens: Arc<TokenAuthority>,
    exchange: Option<Arc<Exchange>>,
) -> AppState {
    AppState {
        store,
        tokens,
        exchange,
        mode: Mode::ReadWrite,
        max_artifact_bytes: 1 << 30,
        strict_storage: false,
        bodies: Arc::new(Bodies::new(Limits::default().body, 64, 2 << 30)),
        downloads: Arc::new(tokio::sync::Semaphore::new(128)),
        checks: nx_azure_cache::api::turbo::checks_gate(),
        metrics: Arc::new(Metrics::default()),
        metrics_token: None,
    }
}
