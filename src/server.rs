//! Startup and shutdown: from a [`Config`] to a serving listener.
//!
//! `main` calls [`prepare`] (everything that can fail because of configuration, each failure one
//! line) and then [`serve`]. The integration tests call the same two functions.

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::api::{self, AppState};
use crate::auth::exchange::Exchange;
use crate::auth::policy::GENERIC_AUDIENCE;
use crate::auth::{Access, Secret, TokenAuthority, TokenRequest};
use crate::config::{AzureAuth, Backend, Config, Limits, SecretSource, load_or_create_dev_secret};
use crate::limits::{Bodies, SendTimeout};
use crate::metrics::Metrics;
use crate::storage::azure::AzureStore;
use crate::storage::azure::credential::Attempt;
use crate::storage::local::LocalStore;
use crate::storage::{Entry, Store, entries, health};

/// A server ready to run: its state and, on a developer machine, what to tell the user.
pub struct Prepared {
    pub state: AppState,
    /// True when the token secret is the development secret from the data directory.
    pub dev_secret: bool,
}

/// Resolves the token secret named by the configuration, creating the development secret on a
/// developer machine's first run.
pub fn resolve_secret(config: &Config) -> Result<(Secret, bool), String> {
    match &config.tokens.secret {
        SecretSource::Env(secret) => Ok((secret.clone(), false)),
        SecretSource::DevFile(path) => {
            let (secret, created) = load_or_create_dev_secret(path, config.tokens.rules.algorithm).map_err(|e| {
                format!("configuration error: NX_CACHE_DIR: cannot keep the development secret at {}: {e}", path.display())
            })?;
            if created {
                tracing::info!(path = %path.display(), "created a development token secret");
            }
            Ok((secret, true))
        }
    }
}

/// Builds the token authority from the configuration: signs with `secret`, verifies with it and
/// the previous secrets.
pub fn token_authority(config: &Config, secret: &Secret) -> TokenAuthority {
    TokenAuthority::new(secret, &config.tokens.previous, config.tokens.rules.clone())
}

/// Why [`prepare`] could not get the server ready.
#[derive(Debug)]
pub enum NotPrepared {
    /// A setting was refused (the secret, the store's settings, the trust policy): under the
    /// Functions host the handler then serves degraded instead of exiting.
    Configuration(String),
    /// Storage is not ready and `NX_CACHE_STRICT_STORAGE` asks to stop rather than serve misses.
    Storage(String),
}

impl std::fmt::Display for NotPrepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotPrepared::Configuration(problem) => f.write_str(problem),
            NotPrepared::Storage(problem) => write!(f, "storage not ready: {problem}"),
        }
    }
}

/// Opens the store and the token authority.
pub async fn prepare(config: &Config) -> Result<Prepared, NotPrepared> {
    let (secret, dev_secret) = resolve_secret(config).map_err(NotPrepared::Configuration)?;
    let store = open_store(config, Serving::Requests).map_err(NotPrepared::Configuration)?;
    let strict = matches!(&config.backend, Backend::Azure(azure) if azure.strict);
    let ready = store.ready().await;
    match &ready {
        Ok(()) => tracing::info!(store = %store.describe(), mode = ?config.mode,
            max_artifact_bytes = config.max_artifact_bytes, "storage ready"),
        Err(e) if strict => return Err(NotPrepared::Storage(e.to_string())),
        // Serve anyway: GETs answer misses and PUTs "not stored" until storage is fixed, and
        // /health reports 503; a build never fails because of the cache.
        Err(e) => tracing::error!(store = %store.describe(), "storage not ready: {e}"),
    }
    store.health().set(&ready);
    health::watch(&store, config.health_interval);
    let limits = &config.limits;
    let tokens = Arc::new(token_authority(config, &secret));
    let exchange = match &config.trust.policy {
        Some(policy) => {
            let exchange = Exchange::new(policy.clone(), tokens.clone()).map_err(|e| {
                NotPrepared::Configuration(format!(
                    "configuration error: NX_CACHE_TRUST_POLICY: {e}"
                ))
            })?;
            tracing::info!(rules = policy.rules().len(), issuers = ?policy.issuers(),
                "token exchange on: POST /token");
            for warning in policy.warnings() {
                tracing::warn!(%warning, "NX_CACHE_TRUST_POLICY: worth a look (`handler check` lists these)");
            }
            Some(Arc::new(exchange))
        }
        None => None,
    };
    let state = AppState {
        store,
        tokens,
        exchange,
        mode: config.mode,
        max_artifact_bytes: config.max_artifact_bytes,
        strict_storage: strict,
        // A refused upload is read to its end, up to twice the artifact limit: the most the
        // Functions host lets through (FUNCTIONS_REQUEST_BODY_SIZE_LIMIT in infra/).
        bodies: Arc::new(Bodies::new(
            limits.body,
            limits.max_drains,
            config.max_artifact_bytes.saturating_mul(2),
        )),
        downloads: Arc::new(tokio::sync::Semaphore::new(limits.max_downloads)),
        checks: api::turbo::checks_gate(),
        metrics: Arc::new(Metrics::default()),
        metrics_token: config.metrics_token.as_ref().map(|t| Arc::from(t.expose())),
    };
    state.metrics.clone().spawn_logger();
    Ok(Prepared { state, dev_secret })
}

/// Whether a store is opened to serve requests (its background work starts: key renewal,
/// retention) or for an operator's command (`doctor`, `usage`), which must not evict anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Serving {
    Requests,
    Operator,
}

/// Opens the configured backend (no network call yet).
fn open_store(config: &Config, serving: Serving) -> Result<Arc<dyn Store>, String> {
    match &config.backend {
        Backend::Local => {
            let opened = match serving {
                Serving::Requests => {
                    LocalStore::open_with_retention(&config.data_dir, config.retention)
                }
                // A server may run on the same directory: no retention, no cleanup of its
                // uploads in progress.
                Serving::Operator => LocalStore::open_shared(&config.data_dir),
            };
            let store = opened.map_err(|e| {
                format!(
                    "configuration error: NX_CACHE_DIR: cannot use {} as the cache directory: {e}",
                    config.data_dir.display()
                )
            })?;
            Ok(Arc::new(store))
        }
        Backend::Azure(azure) => {
            let store = Arc::new(
                AzureStore::new((**azure).clone()).map_err(|e| format!("Azure storage: {e}"))?,
            );
            if serving == Serving::Requests {
                store.start_background_tasks();
            }
            Ok(store)
        }
    }
}

/// What the configured store holds per namespace (`handler usage`). Uses the server's own
/// configuration; on Azure, the credential chain (the Azure CLI's login on a laptop) or the
/// connection string.
pub async fn usage(
    config: &Config,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<crate::storage::usage::Usage, String> {
    let store = open_store(config, Serving::Operator)?;
    store.usage(progress).await.map_err(|e| e.to_string())
}

/// The entries `filter` selects, with their writers (`handler entries`), from the store the
/// server's configuration names. On Azure a reader role is enough.
pub async fn entries(
    config: &Config,
    filter: &entries::Filter,
    each: &mut (dyn FnMut(Entry) + Send),
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), String> {
    let store = open_store(config, Serving::Operator)?;
    entries::list(store.as_ref(), filter, each, progress)
        .await
        .map_err(|e| e.to_string())
}

/// Deletes what `filter` selects (`handler purge`); a dry run only lists it. The embedded store
/// may be purged while a server runs on the same directory.
pub async fn purge(
    config: &Config,
    filter: &entries::Filter,
    dry_run: bool,
    selected: &mut (dyn FnMut(&Entry) + Send),
    deleted: &mut (dyn FnMut(&Entry) + Send),
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<entries::PurgeSummary, String> {
    let store = open_store(config, Serving::Operator)?;
    entries::purge(store.as_ref(), filter, dry_run, selected, deleted, progress)
        .await
        .map_err(|e| e.to_string())
}

/// One line of `handler doctor`: what was checked, and what was found.
pub struct Check {
    pub what: &'static str,
    pub result: Result<String, String>,
    /// Something to act on that is not a problem of this cache (it still serves).
    pub warning: bool,
}

impl Check {
    /// A check whose result is all there is to it (not a warning).
    fn new(what: &'static str, result: Result<String, String>) -> Check {
        Check {
            what,
            result,
            warning: false,
        }
    }
}

/// Checks the configuration, the secret, the store, and for Azure the credential, the user
/// delegation key and the container, in words an operator can act on.
pub async fn doctor(config: &Config) -> Vec<Check> {
    let mut checks = vec![Check::new(
        "configuration",
        Ok(format!(
            "mode {:?}, artifacts up to {} bytes, port {}",
            config.mode, config.max_artifact_bytes, config.port
        )),
    )];
    checks.push(Check::new(
        "token secret",
        resolve_secret(config).map(|(_, dev)| match dev {
            true => {
                "development secret from NX_CACHE_DIR (set NX_CACHE_JWT_SECRET for a deployment)"
                    .into()
            }
            false => "NX_CACHE_JWT_SECRET".into(),
        }),
    ));
    if let Some(policy) = &config.trust.policy {
        checks.extend(trust_checks(config, policy).await);
    }
    match &config.backend {
        Backend::Local => {
            let result = match open_store(config, Serving::Operator) {
                Ok(store) => match store.ready().await {
                    Ok(()) => Ok(store.describe()),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e),
            };
            checks.push(Check::new("storage", result));
        }
        Backend::Azure(azure) => match AzureStore::new((**azure).clone()) {
            Err(e) => checks.push(Check::new("Azure credential", Err(e))),
            Ok(store) => {
                if let Some(attempts) = store.try_credentials().await {
                    let (credential_checks, got_token) =
                        credential_checks(attempts, &store.credential_chain());
                    checks.extend(credential_checks);
                    if !got_token {
                        // Storage would refuse no role yet: it never saw a token.
                        checks.push(Check::new(
                            "storage",
                            Err("not checked: no Azure credential got a token (above)".into()),
                        ));
                        return checks;
                    }
                }
                let ready = store.ready().await;
                let ready_ok = ready.is_ok();
                checks.push(Check::new(
                    "storage",
                    ready.map(|()| store.describe()).map_err(|e| e.to_string()),
                ));
                if ready_ok {
                    checks.push(legacy_check(&store).await);
                    checks.push(Check::new(
                        "write permission",
                        store
                            .check_write()
                            .await
                            .map(|()| "a probe blob was written and deleted".into())
                            .map_err(|e| e.to_string()),
                    ));
                }
            }
        },
    }
    checks
}

/// What `handler check` found in a configuration the server starts with.
pub struct Checked {
    /// The settings in words, each trust rule explained.
    pub lines: Vec<String>,
    /// What is worth a look though not refused (a trust rule's value that looks like a
    /// placeholder), one line each.
    pub warnings: Vec<String>,
}

/// What each credential source answered, in words: the one that got a token (and any asked
/// before it that got none, as warnings: a source that answers first but fails is a
/// misconfiguration), or, when none did, every source with its own error and what it is built
/// from. A role is never the advice here: roles matter only once storage sees a token. Returns
/// the checks and whether a source got a token.
fn credential_checks(
    attempts: Result<Vec<Attempt>, String>,
    order: &[&'static str],
) -> (Vec<Check>, bool) {
    const WHAT: &str = "Azure credential";
    let attempts = match attempts {
        Ok(attempts) => attempts,
        Err(e) => return (vec![Check::new(WHAT, Err(e))], false),
    };
    let Some(chosen) = attempts.iter().find(|a| a.result.is_ok()) else {
        let mut problem = String::from(
            "no credential got a token; each source was asked in this order (the first to get one is used):",
        );
        for (number, attempt) in attempts.iter().enumerate() {
            let error = attempt.result.as_ref().err().map_or("", String::as_str);
            problem.push_str(&format!(
                "\n           {}. {}: {error}\n              (built from {})",
                number + 1,
                attempt.source,
                attempt.needs
            ));
        }
        problem.push_str("\n         Fix the source the handler should use; no role is missing until a credential gets a token.");
        return (vec![Check::new(WHAT, Err(problem))], false);
    };
    let mut checks = vec![Check::new(
        WHAT,
        Ok(format!(
            "{} got a token (tried in order: {})",
            chosen.source,
            order.join(", ")
        )),
    )];
    for skipped in attempts.iter().filter(|a| a.result.is_err()) {
        checks.push(Check {
            what: WHAT,
            result: Ok(format!(
                "{}, asked first, got no token ({}); {} is used instead. Fix or remove what it is built from: {}",
                skipped.source,
                skipped.result.as_ref().err().map_or("", String::as_str),
                chosen.source,
                skipped.needs
            )),
            warning: true,
        });
    }
    (checks, true)
}

/// The configuration checks of startup that need neither storage nor an identity issuer
/// (`handler check`): everything [`Config::load`] refused already, plus what [`prepare`] builds
/// from it. Returns what an operator should read: the settings in words, each trust rule
/// explained, and the warnings startup logs; the error is one line, as at startup.
pub fn check(config: &Config) -> Result<Checked, String> {
    let mut lines = vec![format!(
        "mode {}, artifacts up to {} bytes, {}, {}",
        config.mode.as_str(),
        config.max_artifact_bytes,
        match &config.backend {
            Backend::Local => format!("embedded store in {}", config.data_dir.display()),
            Backend::Azure(azure) => format!(
                "Azure container '{}' in storage account '{}' ({})",
                azure.container,
                azure.account,
                match azure.auth {
                    AzureAuth::Key(_) => "account key from the connection string",
                    AzureAuth::Token { .. } => "Microsoft Entra tokens",
                }
            ),
        },
        if config.under_functions {
            "as the Azure Functions host starts it"
        } else {
            "outside Azure Functions"
        }
    )];
    if let Some(policy) = &config.trust.policy {
        // The checks Exchange::new adds to the policy's own (ttl against the token lifetime).
        let secret = Secret::new(vec![0; 64], config.tokens.rules.algorithm)?;
        Exchange::new(policy.clone(), Arc::new(token_authority(config, &secret)))
            .map_err(|e| format!("configuration error: NX_CACHE_TRUST_POLICY: {e}"))?;
        lines.push(format!(
            "trust policy: POST /token on, {} rule(s), tried in this order:",
            policy.rules().len()
        ));
        lines.extend(
            policy
                .rules()
                .iter()
                .map(|rule| format!("  {}", rule.explain())),
        );
    } else {
        lines.push("trust policy: none, POST /token is off".into());
    }
    let warnings = config
        .trust
        .policy
        .as_ref()
        .map(|policy| policy.warnings().to_vec())
        .unwrap_or_default();
    Ok(Checked { lines, warnings })
}

/// Whether entries of the deprecated `@nx/azure-cache` plugin are still in the container: a
/// warning naming the migration guide (this cache never reads them; they are the plugin's
/// unpatchable cache-poisoning surface until deleted).
async fn legacy_check(store: &AzureStore) -> Check {
    let (result, warning) = match store.legacy_entries().await {
        Ok(0) => (
            Ok("no @nx/azure-cache entries at the container root".into()),
            false,
        ),
        Ok(found) => (
            Ok(format!(
                "at least {found} @nx/azure-cache entries at the container root (bare Nx hashes): this cache never reads them; lock the container down and delete them (docs/migrate-from-nx-azure-cache.md; `handler usage` counts them all)",
            )),
            true,
        ),
        Err(e) => (
            Err(format!("cannot look for @nx/azure-cache entries: {e}")),
            false,
        ),
    };
    Check {
        what: "legacy entries",
        result,
        warning,
    }
}

/// The trust policy's rules, and whether each trusted issuer's keys can be fetched now.
async fn trust_checks(config: &Config, policy: &crate::auth::policy::TrustPolicy) -> Vec<Check> {
    let mut checks = vec![Check::new(
        "trust policy",
        Ok(format!(
            "POST /token on, {} rule(s), tried in this order:",
            policy.rules().len()
        )),
    )];
    // Each rule in words, so an operator reviews what it really grants.
    checks.extend(
        policy
            .rules()
            .iter()
            .map(|rule| Check::new("trust rule", Ok(rule.explain()))),
    );
    let warning = |found: String| Check {
        what: "trust rule",
        result: Ok(found),
        warning: true,
    };
    checks.extend(policy.warnings().iter().cloned().map(warning));
    checks.extend(
        policy
            .rules()
            .iter()
            .filter(|rule| rule.audience == GENERIC_AUDIENCE)
            .map(|rule| {
                warning(format!(
                    "rule '{}': the audience \"{GENERIC_AUDIENCE}\" is generic: any other cache whose rules expect it accepts the same identity tokens, so a token a job asked for one could be replayed at the other; give this deployment's own audience (its URL, e.g. \"https://acme-nx-cache.azurewebsites.net\") to the rule and to the jobs that ask for tokens",
                    rule.name
                ))
            }),
    );
    let exchange = resolve_secret(config).and_then(|(secret, _)| {
        Exchange::new(policy.clone(), Arc::new(token_authority(config, &secret)))
    });
    match exchange {
        Err(e) => checks.push(Check::new("identity issuer", Err(e))),
        Ok(exchange) => {
            for (issuer, result) in exchange.check_issuers().await {
                checks.push(Check::new("identity issuer", result
                        .map(|keys| format!("{issuer}: {keys} signing key(s)"))
                        .map_err(|e| format!("{issuer}: cannot fetch its keys ({e}); POST /token answers 503 for its tokens until it can"))));
            }
        }
    }
    checks
}

/// How often a refused configuration is logged again while the handler serves without it.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(60);

/// The handler without a configuration, under the Functions host: the degraded router
/// ([`api::degraded`]) and the limits it is served with. `problem` is the one line startup
/// refused the configuration with; it is logged at error level now and every minute. The
/// limits and the metrics token are read from `env` when their own settings parse (defaults
/// and no `/metrics` otherwise): they bound what clients hold, whatever else is wrong.
pub fn degraded(problem: String, env: &dyn Fn(&str) -> Option<String>) -> (axum::Router, Limits) {
    let env = crate::config::Env::new(env);
    let limits = crate::config::limits::load_limits(&env).unwrap_or_default();
    let max_artifact = crate::config::limits::load_max_artifact_bytes(&env)
        .unwrap_or(crate::config::DEFAULT_MAX_ARTIFACT_BYTES);
    let metrics_token = crate::config::telemetry::load_metrics_token(&env)
        .ok()
        .flatten()
        .map(|t| Arc::from(t.expose()));
    let state = api::degraded::DegradedState {
        bodies: Arc::new(Bodies::new(
            limits.body,
            limits.max_drains,
            max_artifact.saturating_mul(2),
        )),
        metrics: Arc::new(Metrics::default()),
        metrics_token,
    };
    tokio::spawn(async move {
        let mut every = tokio::time::interval(REFUSED_LOG_EVERY);
        loop {
            every.tick().await;
            tracing::error!(%problem,
                "the configuration was refused: every cache GET is a miss, every upload is refused and POST /token answers 503 until it is fixed (`handler check` checks the settings)");
        }
    });
    (api::degraded::router(state), limits)
}

/// Binds the configured address.
pub async fn bind(config: &Config) -> Result<TcpListener, String> {
    let addr = SocketAddr::new(config.bind, config.port);
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e} (set --port or PORT to another port)"))
}

/// What a developer exports to point Nx, and Turborepo, at this server, with a fresh read-write
/// token of the org-wide cache (Turborepo reaches it as team `_org`).
pub fn client_exports(state: &AppState, listener_addr: SocketAddr) -> Result<String, String> {
    let host = if listener_addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        listener_addr.ip().to_string()
    };
    let url = match listener_addr {
        SocketAddr::V6(_) if !listener_addr.ip().is_unspecified() => {
            format!("http://[{host}]:{}", listener_addr.port())
        }
        _ => format!("http://{host}:{}", listener_addr.port()),
    };
    let token = state
        .tokens
        .issue(&TokenRequest {
            org: true,
            teams: vec![],
            access: Access::ReadWrite,
            expires_in: Duration::from_secs(30 * 24 * 3600).min(state.tokens.max_lifetime()),
            subject: "local-development".into(),
            rule: None,
            rule_digest: None,
            origin: None,
        })?
        .token;
    Ok(format!(
        "Point Nx at it with:\n\
         export NX_SELF_HOSTED_REMOTE_CACHE_SERVER={url}\n\
         export NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN={token}\n\
         Point Turborepo at it with:\n\
         export TURBO_API={url}\n\
         export TURBO_TOKEN={token}\n\
         export TURBO_TEAM={}",
        crate::api::turbo::ORG_SLUG
    ))
}

/// Largest request head (request line and headers) read.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Largest amount hyper buffers per connection, in each direction. Small, so a client that
/// stops reading its download leaves little behind (hyper's default is about 400 KiB); it must
/// hold a whole request head.
const CONNECTION_BUFFER: usize = MAX_HEADER_BYTES + 16 * 1024;
/// How long in-flight requests may run after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves until SIGTERM or Ctrl-C, then stops accepting and lets in-flight requests finish
/// (the Functions host recycles workers with SIGTERM).
///
/// Bounded in every direction: a client that trickles its headers is cut off by the header
/// timeout, one that reads nothing of its answer by the send timeout, and at most
/// `max_connections` are served at once; more wait in the kernel's accept backlog
/// (backpressure) instead of an unbounded queue in the process.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // HTTP/1.1 only: the Nx client and the Functions host's proxy both speak it.
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_header_size(MAX_HEADER_BYTES)
            .max_buf_size(CONNECTION_BUFFER);
        let service = TowerToHyperService::new(app.clone());
        let io = TokioIo::new(SendTimeout::new(stream, limits.send_timeout));
        let connection = builder.serve_connection(io, service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing in-flight requests");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?DRAIN_TIMEOUT, "in-flight requests still running at the drain deadline");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
