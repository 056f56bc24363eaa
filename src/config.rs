//! Configuration: environment variables and flags turned into one typed [`Config`].
//!
//! Every mistake becomes a [`ConfigError`] naming the setting and what is wrong with it, which
//! `main` prints as one line before exiting non-zero. Parsing takes a lookup function instead of
//! reading the process environment directly, so the rules are unit-tested without touching it.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::Algorithm;

use crate::auth::policy::TrustPolicy;
use crate::auth::{Secret, TokenRules, parse_algorithm};
use crate::limits::Pace;
use crate::storage::azure::connection_string::ConnectionString;
use crate::storage::local::retention::RetentionConfig;

/// Default port when neither the Functions host nor the user names one.
pub const DEFAULT_PORT: u16 = 3000;
/// Default data directory of the embedded store, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "nx-cache-data";
/// Default cap on one artifact: 1 GiB.
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 1 << 30;
pub const DEFAULT_ISSUER: &str = "nx-azure-cache";
pub const DEFAULT_AUDIENCE: &str = "nx-remote-cache";
/// File inside the data directory that holds the development secret.
pub const DEV_SECRET_FILE: &str = ".dev-jwt-secret";
/// Default cap on a token's lifetime (`exp - iat`), at issue and at verification.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Default cap on the lifetime of an exchanged token (a trust rule's `ttl`).
pub const DEFAULT_MAX_EXCHANGE_TTL: Duration = Duration::from_secs(12 * 3600);
/// Default grace period of a recently expired token (no access, but no 401).
pub const DEFAULT_EXPIRED_GRACE: Duration = Duration::from_secs(12 * 3600);
/// Default clock skew tolerated on this cache's own tokens.
pub const DEFAULT_TOKEN_LEEWAY: Duration = Duration::from_secs(30);

/// A setting that is wrong, and why. Displayed as `NAME: problem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub fn new(setting: &'static str, problem: impl Into<String>) -> Self {
        Self {
            setting,
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configuration error: {}: {}", self.setting, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// What the server lets clients do, whatever their tokens allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Reads and writes (writes still need a read-write token).
    ReadWrite,
    /// Reads only: every PUT gets the not-stored answer.
    ReadOnly,
    /// Neither: every GET is a miss and every PUT is not stored.
    NoCache,
}

impl Mode {
    fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "read-write" => Ok(Mode::ReadWrite),
            "read-only" => Ok(Mode::ReadOnly),
            "no-cache" => Ok(Mode::NoCache),
            other => Err(format!(
                "expected read-write, read-only or no-cache, got '{other}'"
            )),
        }
    }
}

/// Log output shape: JSON lines for Azure (Application Insights), readable text locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// A secret given as text (the metrics token). Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(String);

impl SecretText {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the token secret comes from.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// `NX_CACHE_JWT_SECRET`.
    Env(Secret),
    /// A development secret kept in the data directory, created on first run. Never used under
    /// Azure Functions.
    DevFile(PathBuf),
}

/// Token settings: the secrets, and the rules every token is issued and verified under.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub secret: SecretSource,
    /// Earlier secrets that still verify (`NX_CACHE_JWT_PREVIOUS_SECRETS`); never used to sign.
    pub previous: Vec<Secret>,
    pub rules: TokenRules,
}

/// Keyless access: the trust policy for `POST /token` (`NX_CACHE_TRUST_POLICY`). `None` turns
/// the exchange off.
#[derive(Debug, Clone)]
pub struct TrustConfig {
    pub policy: Option<TrustPolicy>,
}

/// What one client can make the server hold: connections, time, bytes in flight.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait in the accept backlog (`NX_CACHE_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Time allowed for a request's headers to arrive (`NX_CACHE_HEADER_TIMEOUT`).
    pub header_timeout: Duration,
    /// The pace every request body is held to (`NX_CACHE_MIN_BODY_RATE`,
    /// `NX_CACHE_BODY_RATE_WINDOW`, `NX_CACHE_BODY_TIMEOUT`).
    pub body: Pace,
    /// Refused uploads drained at once (`NX_CACHE_MAX_DRAINS`).
    pub max_drains: usize,
    /// Downloads streamed through the handler at once (`NX_CACHE_MAX_DOWNLOADS`).
    pub max_downloads: usize,
    /// A connection whose client reads nothing of its answer for this long is closed
    /// (`NX_CACHE_SEND_TIMEOUT`).
    pub send_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_timeout: Duration::from_secs(30),
            body: Pace {
                min_rate: 64 * 1024,
                window: Duration::from_secs(20),
                idle: Duration::from_secs(30),
            },
            max_drains: 64,
            max_downloads: 128,
            send_timeout: Duration::from_secs(30),
        }
    }
}

/// How GET hits reach the client from Azure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Download {
    /// `307` to a short-lived read-only SAS URL: bytes go straight from storage to the client.
    Redirect,
    /// The handler streams the blob itself, for clients that cannot reach the storage account.
    Proxy,
}

/// Whether a GET in redirect mode first checks that the entry exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitCheck {
    /// A miss is the handler's own 404, a hit a 307; what is known to exist is remembered, so a
    /// repeated hit costs no storage call. Hits and misses are counted exactly.
    Exact,
    /// Zero storage calls per GET: every GET is a 307, and a missing entry is the storage's 404
    /// on the client's second request. Hits and misses cannot be told apart.
    None,
}

/// How the handler authenticates to Azure Storage.
#[derive(Debug, Clone)]
pub enum AzureAuth {
    /// An account key from a connection string (Azurite, custom endpoints): service SAS.
    Key(ConnectionString),
    /// Microsoft Entra tokens (managed identity, workload identity, Azure CLI): no keys.
    Token {
        /// A user-assigned managed identity's client id (`AZURE_CLIENT_ID`).
        client_id: Option<String>,
    },
}

/// The Azure Blob backend's settings.
#[derive(Debug, Clone)]
pub struct AzureConfig {
    pub account: String,
    /// Blob service endpoint without a trailing slash, e.g. `https://acct.blob.core.windows.net`.
    pub endpoint: String,
    pub container: String,
    pub auth: AzureAuth,
    /// Prepended to every blob name (`{prefix}org/{hash}`, `{prefix}teams/{team}/{hash}`).
    pub prefix: String,
    pub download: Download,
    /// Redirect mode: check existence first (`NX_CACHE_HIT_CHECK`).
    pub hit_check: HitCheck,
    /// Lifetime of a download URL.
    pub sas_ttl: Duration,
    /// Bound on every single storage call.
    pub timeout: Duration,
    /// When true, storage failures answer 5xx instead of a miss / not stored.
    pub strict: bool,
}

/// Which store serves the cache.
#[derive(Debug, Clone)]
pub enum Backend {
    Local,
    Azure(Box<AzureConfig>),
}

/// The whole server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: IpAddr,
    pub port: u16,
    /// True when started by the Azure Functions host (`FUNCTIONS_CUSTOMHANDLER_PORT` set).
    pub under_functions: bool,
    pub mode: Mode,
    pub max_artifact_bytes: u64,
    pub limits: Limits,
    /// Bearer token that `/metrics` requires; `None` turns the endpoint off.
    pub metrics_token: Option<SecretText>,
    pub data_dir: PathBuf,
    /// The embedded store's retention (`NX_CACHE_MAX_SIZE`, `NX_CACHE_MAX_AGE`): off by default.
    pub retention: RetentionConfig,
    pub backend: Backend,
    /// How often the health watch probes the store (`NX_CACHE_HEALTH_INTERVAL`).
    pub health_interval: Duration,
    pub tokens: TokenConfig,
    pub trust: TrustConfig,
    pub log_format: LogFormat,
}

/// Values given on the command line; they lose to the Functions host's port.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub port: Option<u16>,
    pub bind: Option<IpAddr>,
}

impl Config {
    /// Builds the configuration from flags and an environment lookup. Empty values count as unset.
    pub fn load(flags: &Flags, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());

        let functions_port = get("FUNCTIONS_CUSTOMHANDLER_PORT")
            .map(|v| parse_port("FUNCTIONS_CUSTOMHANDLER_PORT", &v))
            .transpose()?;
        let under_functions = functions_port.is_some();
        // A malformed PORT is reported even when a flag or the host's port would win.
        let env_port = get("PORT").map(|v| parse_port("PORT", &v)).transpose()?;
        let port = functions_port
            .or(flags.port)
            .or(env_port)
            .unwrap_or(DEFAULT_PORT);
        let bind = flags.bind.unwrap_or(IpAddr::from([127, 0, 0, 1]));

        let mode = get("NX_CACHE_MODE")
            .map(|v| Mode::parse(v.trim()).map_err(|e| ConfigError::new("NX_CACHE_MODE", e)))
            .transpose()?
            .unwrap_or(Mode::ReadWrite);

        let max_artifact_bytes = get("NX_CACHE_MAX_ARTIFACT_SIZE")
            .map(|v| {
                parse_size(v.trim()).map_err(|e| ConfigError::new("NX_CACHE_MAX_ARTIFACT_SIZE", e))
            })
            .transpose()?
            .unwrap_or(DEFAULT_MAX_ARTIFACT_BYTES);

        let limits = load_limits(&get)?;

        let metrics_token = get("NX_CACHE_METRICS_TOKEN").map(|t| t.trim().to_owned());
        if metrics_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(ConfigError::new(
                "NX_CACHE_METRICS_TOKEN",
                "too short; use at least 16 random characters",
            ));
        }
        let metrics_token = metrics_token.map(SecretText);

        let health_interval =
            duration_setting(&get, "NX_CACHE_HEALTH_INTERVAL", Duration::from_secs(5))?;
        if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&health_interval) {
            return Err(ConfigError::new(
                "NX_CACHE_HEALTH_INTERVAL",
                "must be between 1s and 5m",
            ));
        }

        let data_dir = get("NX_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));

        let tokens = load_tokens(&get, under_functions, bind, &data_dir)?;
        let trust = load_trust(&get, &tokens)?;

        let log_format = match get("NX_CACHE_LOG_FORMAT").as_deref().map(str::trim) {
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                return Err(ConfigError::new(
                    "NX_CACHE_LOG_FORMAT",
                    format!("expected json or text, got '{other}'"),
                ));
            }
            None if under_functions => LogFormat::Json,
            None => LogFormat::Text,
        };

        let backend = load_backend(&get)?;
        let retention = load_retention(&get, &backend)?;

        Ok(Self {
            bind,
            port,
            under_functions,
            mode,
            max_artifact_bytes,
            limits,
            metrics_token,
            data_dir,
            retention,
            backend,
            health_interval,
            tokens,
            trust,
            log_format,
        })
    }
}

/// The tokens section: secrets (current, previous), algorithm, issuer and audience, lifetimes.
fn load_tokens(
    get: &impl Fn(&str) -> Option<String>,
    under_functions: bool,
    bind: IpAddr,
    data_dir: &Path,
) -> Result<TokenConfig, ConfigError> {
    let algorithm = get("NX_CACHE_JWT_ALGORITHM")
        .map(|v| {
            parse_algorithm(v.trim()).map_err(|e| ConfigError::new("NX_CACHE_JWT_ALGORITHM", e))
        })
        .transpose()?
        .unwrap_or(Algorithm::HS256);
    let secret = match get("NX_CACHE_JWT_SECRET") {
        Some(value) => SecretSource::Env(secret_value("NX_CACHE_JWT_SECRET", &value, algorithm)?),
        None if under_functions => {
            return Err(ConfigError::new(
                "NX_CACHE_JWT_SECRET",
                "not set; it is required under Azure Functions (set it as an app setting or a Key Vault reference)",
            ));
        }
        // The development secret, and the token printed with it, exist only for loopback.
        None if !bind.is_loopback() => {
            return Err(ConfigError::new(
                "NX_CACHE_JWT_SECRET",
                format!(
                    "not set; it is required when listening on {bind}, a non-loopback address (the development secret is for 127.0.0.1 only)"
                ),
            ));
        }
        None => SecretSource::DevFile(data_dir.join(DEV_SECRET_FILE)),
    };
    // Comma-separated: base64 and hex secrets never contain a comma.
    let previous = get("NX_CACHE_JWT_PREVIOUS_SECRETS")
        .map(|list| {
            list.split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| secret_value("NX_CACHE_JWT_PREVIOUS_SECRETS", s, algorithm))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    let revoked: HashSet<String> = get("NX_CACHE_REVOKED_TOKENS")
        .map(|v| {
            v.split([',', ' ', '\n'])
                .map(str::trim)
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let leeway = duration_setting(get, "NX_CACHE_TOKEN_LEEWAY", DEFAULT_TOKEN_LEEWAY)?;
    if leeway > Duration::from_secs(300) {
        return Err(ConfigError::new(
            "NX_CACHE_TOKEN_LEEWAY",
            "must be at most 5m",
        ));
    }
    let expired_grace = duration_setting(get, "NX_CACHE_EXPIRED_GRACE", DEFAULT_EXPIRED_GRACE)?;
    if expired_grace > Duration::from_secs(7 * 24 * 3600) {
        return Err(ConfigError::new(
            "NX_CACHE_EXPIRED_GRACE",
            "must be at most 7d: past it a forgotten token must be noticed (401)",
        ));
    }
    Ok(TokenConfig {
        secret,
        previous,
        rules: TokenRules {
            algorithm,
            issuer: get("NX_CACHE_JWT_ISSUER").unwrap_or_else(|| DEFAULT_ISSUER.into()),
            audience: get("NX_CACHE_JWT_AUDIENCE").unwrap_or_else(|| DEFAULT_AUDIENCE.into()),
            revoked,
            max_lifetime: duration_setting(
                get,
                "NX_CACHE_MAX_TOKEN_LIFETIME",
                DEFAULT_MAX_TOKEN_LIFETIME,
            )?,
            expired_grace,
            leeway,
        },
    })
}

/// A signing secret from an app setting: refused when it is an unresolved Key Vault reference or
/// too short for the algorithm. Surrounding whitespace is trimmed: a trailing newline from a
/// paste or a vault is never key material, and the server and `handler token issue` trim alike.
fn secret_value(
    setting: &'static str,
    value: &str,
    algorithm: Algorithm,
) -> Result<Secret, ConfigError> {
    // An unresolved Key Vault reference reaches the app as its literal text, which is long
    // enough to pass as a secret; every token would then fail verification.
    if value.trim_start().starts_with("@Microsoft.KeyVault(") {
        return Err(ConfigError::new(
            setting,
            "is an unresolved Key Vault reference; grant the app's identity 'Key Vault Secrets User' on the secret and check the reference's SecretUri",
        ));
    }
    Secret::new(value.trim().as_bytes().to_vec(), algorithm)
        .map_err(|e| ConfigError::new(setting, e))
}

/// The trust section: the policy of `POST /token`, as JSON text or `@/path/to/file.json`.
fn load_trust(
    get: &impl Fn(&str) -> Option<String>,
    tokens: &TokenConfig,
) -> Result<TrustConfig, ConfigError> {
    let default_max_ttl = DEFAULT_MAX_EXCHANGE_TTL.min(tokens.rules.max_lifetime);
    let max_ttl = duration_setting(get, "NX_CACHE_MAX_EXCHANGE_TTL", default_max_ttl)?;
    if max_ttl > tokens.rules.max_lifetime {
        return Err(ConfigError::new(
            "NX_CACHE_MAX_EXCHANGE_TTL",
            "must not be longer than NX_CACHE_MAX_TOKEN_LIFETIME",
        ));
    }
    let Some(raw) = get("NX_CACHE_TRUST_POLICY") else {
        return Ok(TrustConfig { policy: None });
    };
    let text = match raw.trim().strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path.trim()).map_err(|e| {
            ConfigError::new(
                "NX_CACHE_TRUST_POLICY",
                format!("cannot read the policy file {}: {e}", path.trim()),
            )
        })?,
        None => raw,
    };
    let policy = TrustPolicy::parse(&text, max_ttl)
        .map_err(|e| ConfigError::new("NX_CACHE_TRUST_POLICY", e))?;
    Ok(TrustConfig {
        policy: Some(policy),
    })
}

/// The retention section: limits of the embedded store (Azure has lifecycle management).
fn load_retention(
    get: &impl Fn(&str) -> Option<String>,
    backend: &Backend,
) -> Result<RetentionConfig, ConfigError> {
    let max_size = get("NX_CACHE_MAX_SIZE")
        .map(|v| parse_size(v.trim()).map_err(|e| ConfigError::new("NX_CACHE_MAX_SIZE", e)))
        .transpose()?;
    let max_age = match get("NX_CACHE_MAX_AGE") {
        None => None,
        Some(_) => Some(duration_setting(get, "NX_CACHE_MAX_AGE", Duration::ZERO)?),
    };
    if max_age.is_some_and(|age| age < Duration::from_secs(60)) {
        return Err(ConfigError::new("NX_CACHE_MAX_AGE", "must be at least 1m"));
    }
    let retention = RetentionConfig { max_size, max_age };
    if retention.is_on() && matches!(backend, Backend::Azure(_)) {
        let setting = if max_size.is_some() {
            "NX_CACHE_MAX_SIZE"
        } else {
            "NX_CACHE_MAX_AGE"
        };
        return Err(ConfigError::new(
            setting,
            "applies to the embedded store only; on Azure, retention is the storage account's lifecycle management (retentionDays in infra/main.bicep)",
        ));
    }
    Ok(retention)
}

/// The limits section: every bound on what one client can make the server hold.
fn load_limits(get: &impl Fn(&str) -> Option<String>) -> Result<Limits, ConfigError> {
    let defaults = Limits::default();
    let min_rate = match get("NX_CACHE_MIN_BODY_RATE") {
        None => defaults.body.min_rate,
        Some(raw) => parse_size(raw.trim().trim_end_matches("/s"))
            .map_err(|e| ConfigError::new("NX_CACHE_MIN_BODY_RATE", e))?,
    };
    let window = duration_setting(get, "NX_CACHE_BODY_RATE_WINDOW", defaults.body.window)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(30)).contains(&window) {
        return Err(ConfigError::new(
            "NX_CACHE_BODY_RATE_WINDOW",
            "must be between 1s and 30s",
        ));
    }
    Ok(Limits {
        max_connections: count_setting(
            get,
            "NX_CACHE_MAX_CONNECTIONS",
            defaults.max_connections,
            100_000,
        )?,
        header_timeout: duration_setting(get, "NX_CACHE_HEADER_TIMEOUT", defaults.header_timeout)?,
        body: Pace {
            min_rate,
            window,
            idle: duration_setting(get, "NX_CACHE_BODY_TIMEOUT", defaults.body.idle)?,
        },
        max_drains: count_setting(get, "NX_CACHE_MAX_DRAINS", defaults.max_drains, 100_000)?,
        max_downloads: count_setting(
            get,
            "NX_CACHE_MAX_DOWNLOADS",
            defaults.max_downloads,
            100_000,
        )?,
        send_timeout: duration_setting(get, "NX_CACHE_SEND_TIMEOUT", defaults.send_timeout)?,
    })
}

/// A count from 1 to `max`.
fn count_setting(
    get: &impl Fn(&str) -> Option<String>,
    setting: &'static str,
    default: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    match get(setting) {
        None => Ok(default),
        Some(raw) => match raw.trim().parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ConfigError::new(
                setting,
                format!("expected a number from 1 to {max}, got '{raw}'"),
            )),
        },
    }
}

/// Azure when a connection string, or an account (or endpoint) plus a container, is set;
/// otherwise the embedded local store.
fn load_backend(get: &impl Fn(&str) -> Option<String>) -> Result<Backend, ConfigError> {
    let connection_string = get("AZURE_STORAGE_CONNECTION_STRING");
    let account = get("AZURE_STORAGE_ACCOUNT");
    let endpoint = get("AZURE_STORAGE_BLOB_ENDPOINT");
    if connection_string.is_none() && account.is_none() && endpoint.is_none() {
        return Ok(Backend::Local);
    }
    let container = get("AZURE_STORAGE_CONTAINER").ok_or_else(|| {
        ConfigError::new(
            "AZURE_STORAGE_CONTAINER",
            "not set; name the existing blob container that holds the cache",
        )
    })?;
    validate_container(&container)?;
    let (account, endpoint, auth) = match connection_string {
        Some(raw) => {
            let parsed = ConnectionString::parse(&raw)
                .map_err(|e| ConfigError::new("AZURE_STORAGE_CONNECTION_STRING", e))?;
            // Plain http would send download URLs (and their signatures) in clear; only an
            // emulator on this machine is reached that way.
            if !parsed.blob_endpoint.starts_with("https://")
                && !is_loopback_url(&parsed.blob_endpoint)
            {
                return Err(ConfigError::new(
                    "AZURE_STORAGE_CONNECTION_STRING",
                    format!(
                        "the blob endpoint {} is plain http; use DefaultEndpointsProtocol=https (plain http is allowed only for an emulator on 127.0.0.1 or localhost)",
                        parsed.blob_endpoint
                    ),
                ));
            }
            (
                parsed.account.clone(),
                parsed.blob_endpoint.clone(),
                AzureAuth::Key(parsed),
            )
        }
        None => {
            let endpoint = match (endpoint, &account) {
                (Some(endpoint), _) => {
                    let endpoint = endpoint.trim().trim_end_matches('/').to_owned();
                    if !endpoint.starts_with("https://") {
                        return Err(ConfigError::new(
                            "AZURE_STORAGE_BLOB_ENDPOINT",
                            format!(
                                "'{endpoint}' must be an https:// URL (tokens are never sent over plain http)"
                            ),
                        ));
                    }
                    endpoint
                }
                (None, Some(account)) => {
                    format!("https://{}.blob.core.windows.net", account.trim())
                }
                (None, None) => unreachable!("checked above"),
            };
            let account = match account {
                Some(account) => account.trim().to_owned(),
                None => account_from_endpoint(&endpoint).ok_or_else(|| {
                    ConfigError::new(
                        "AZURE_STORAGE_ACCOUNT",
                        "not set and not derivable from AZURE_STORAGE_BLOB_ENDPOINT",
                    )
                })?,
            };
            let client_id = get("AZURE_CLIENT_ID");
            (account, endpoint, AzureAuth::Token { client_id })
        }
    };
    let download = match get("NX_CACHE_DOWNLOAD").as_deref().map(str::trim) {
        None | Some("redirect") => Download::Redirect,
        Some("proxy") => Download::Proxy,
        Some(other) => {
            return Err(ConfigError::new(
                "NX_CACHE_DOWNLOAD",
                format!("expected redirect or proxy, got '{other}'"),
            ));
        }
    };
    let hit_check = match get("NX_CACHE_HIT_CHECK").as_deref().map(str::trim) {
        None | Some("exact") => HitCheck::Exact,
        Some("none") => HitCheck::None,
        Some(other) => {
            return Err(ConfigError::new(
                "NX_CACHE_HIT_CHECK",
                format!("expected exact or none, got '{other}'"),
            ));
        }
    };
    let sas_ttl = duration_setting(get, "NX_CACHE_SAS_TTL", Duration::from_secs(300))?;
    if sas_ttl < Duration::from_secs(30) || sas_ttl > Duration::from_secs(3600) {
        return Err(ConfigError::new(
            "NX_CACHE_SAS_TTL",
            "must be between 30s and 1h: download URLs are meant to be short-lived",
        ));
    }
    let timeout = duration_setting(get, "NX_CACHE_STORAGE_TIMEOUT", Duration::from_secs(10))?;
    let strict = match get("NX_CACHE_STRICT_STORAGE").as_deref().map(str::trim) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(ConfigError::new(
                "NX_CACHE_STRICT_STORAGE",
                format!("expected true or false, got '{other}'"),
            ));
        }
    };
    let prefix = get("NX_CACHE_BLOB_PREFIX").unwrap_or_default();
    if !prefix.is_empty()
        && (!prefix.ends_with('/') || prefix.starts_with('/') || prefix.contains(".."))
    {
        return Err(ConfigError::new(
            "NX_CACHE_BLOB_PREFIX",
            format!("'{prefix}' must end with '/' and must not start with '/' or contain '..'"),
        ));
    }
    Ok(Backend::Azure(Box::new(AzureConfig {
        account,
        endpoint,
        container,
        auth,
        prefix,
        download,
        hit_check,
        sas_ttl,
        timeout,
        strict,
    })))
}

/// Container names: 3 to 63 lowercase letters, digits and single hyphens, starting and ending
/// with a letter or digit (Azure's rule).
fn validate_container(name: &str) -> Result<(), ConfigError> {
    let ok = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            "AZURE_STORAGE_CONTAINER",
            format!(
                "'{name}' is not a valid container name (3-63 lowercase letters, digits, single hyphens)"
            ),
        ))
    }
}

/// Whether a URL's host is this machine (`127.0.0.1`, `localhost`, `[::1]`).
fn is_loopback_url(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `https://ACCOUNT.blob.core.windows.net` -> `ACCOUNT`.
fn account_from_endpoint(endpoint: &str) -> Option<String> {
    let host = endpoint
        .strip_prefix("https://")?
        .split(['/', ':'])
        .next()?;
    let (account, rest) = host.split_once('.')?;
    rest.starts_with("blob.").then(|| account.to_owned())
}

fn duration_setting(
    get: &impl Fn(&str) -> Option<String>,
    setting: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match get(setting) {
        None => Ok(default),
        Some(raw) => humantime::parse_duration(raw.trim()).map_err(|_| {
            ConfigError::new(
                setting,
                format!("expected a duration such as 5m or 30s, got '{raw}'"),
            )
        }),
    }
}

fn parse_port(setting: &'static str, raw: &str) -> Result<u16, ConfigError> {
    raw.trim()
        .parse::<u16>()
        .map_err(|_| ConfigError::new(setting, format!("expected a port number, got '{raw}'")))
}

/// Parses a byte size: a plain number of bytes, or a number with `K`, `M`, `G` (or `KiB`, `MiB`,
/// `GiB`; all binary multiples).
pub fn parse_size(raw: &str) -> Result<u64, String> {
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("expected a size such as 104857600, 100M or 1GiB, got '{raw}'"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "KB" => 1 << 10,
        "M" | "MiB" | "MB" => 1 << 20,
        "G" | "GiB" | "GB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit '{other}' in '{raw}'; use K, M or G"
            ));
        }
    };
    let bytes = number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("size '{raw}' is too large"))?;
    if bytes == 0 {
        return Err("size must be greater than zero".into());
    }
    Ok(bytes)
}

/// Reads the development secret from `path`, creating it (48 random bytes, base64, mode 0600)
/// when it does not exist. Returns the secret and whether it was just created.
pub fn load_or_create_dev_secret(
    path: &Path,
    algorithm: Algorithm,
) -> std::io::Result<(Secret, bool)> {
    use base64::Engine;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let secret = Secret::new(text.trim().as_bytes().to_vec(), algorithm)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
            Ok((secret, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                // The data folder is private to this user (the embedded store keeps it 0700).
                let mut folder = std::fs::DirBuilder::new();
                folder.recursive(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::DirBuilderExt;
                    folder.mode(0o700);
                }
                folder.create(parent)?;
            }
            let mut raw = [0u8; 48];
            getrandom::fill(&mut raw).map_err(|e| std::io::Error::other(e.to_string()))?;
            let text = base64::engine::general_purpose::STANDARD.encode(raw);
            write_private(path, &text)?;
            let secret =
                Secret::new(text.into_bytes(), algorithm).map_err(std::io::Error::other)?;
            Ok((secret, true))
        }
        Err(e) => Err(e),
    }
}

/// Creates a file readable by its owner only; fails if it already exists.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)], flags: Flags) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(&flags, |name| map.get(name).cloned())
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn defaults_serve_locally_with_a_dev_secret() {
        let config = load(&[], Flags::default()).unwrap();
        assert_eq!(config.port, DEFAULT_PORT);
        assert_eq!(config.bind.to_string(), "127.0.0.1");
        assert_eq!(config.mode, Mode::ReadWrite);
        assert_eq!(config.max_artifact_bytes, DEFAULT_MAX_ARTIFACT_BYTES);
        assert!(!config.under_functions);
        assert_eq!(config.log_format, LogFormat::Text);
        assert!(matches!(config.tokens.secret, SecretSource::DevFile(_)));
    }

    #[test]
    fn port_precedence_functions_then_flag_then_env() {
        let flag = Flags {
            port: Some(4000),
            bind: None,
        };
        let with_fn = load(
            &[
                ("FUNCTIONS_CUSTOMHANDLER_PORT", "5000"),
                ("PORT", "6000"),
                ("NX_CACHE_JWT_SECRET", SECRET),
            ],
            flag.clone(),
        )
        .unwrap();
        assert_eq!(with_fn.port, 5000);
        assert!(with_fn.under_functions);
        assert_eq!(with_fn.log_format, LogFormat::Json);
        assert_eq!(load(&[("PORT", "6000")], flag).unwrap().port, 4000);
        assert_eq!(
            load(&[("PORT", "6000")], Flags::default()).unwrap().port,
            6000
        );
    }

    #[test]
    fn functions_without_secret_is_an_error() {
        let err = load(
            &[("FUNCTIONS_CUSTOMHANDLER_PORT", "5000")],
            Flags::default(),
        )
        .unwrap_err();
        assert_eq!(err.setting, "NX_CACHE_JWT_SECRET");
    }

    #[test]
    fn each_bad_setting_is_named() {
        let cases = [
            ("PORT", "http"),
            ("FUNCTIONS_CUSTOMHANDLER_PORT", "70000"),
            ("NX_CACHE_MODE", "sometimes"),
            ("NX_CACHE_MAX_ARTIFACT_SIZE", "lots"),
            ("NX_CACHE_JWT_SECRET", "short"),
            ("NX_CACHE_JWT_ALGORITHM", "none"),
            ("NX_CACHE_LOG_FORMAT", "xml"),
            ("NX_CACHE_MAX_CONNECTIONS", "0"),
            ("NX_CACHE_HEADER_TIMEOUT", "soon"),
            ("NX_CACHE_BODY_TIMEOUT", "-1s"),
            ("NX_CACHE_METRICS_TOKEN", "short"),
            ("NX_CACHE_MIN_BODY_RATE", "fast"),
            ("NX_CACHE_BODY_RATE_WINDOW", "5m"),
            ("NX_CACHE_MAX_DRAINS", "0"),
            ("NX_CACHE_MAX_DOWNLOADS", "many"),
            ("NX_CACHE_SEND_TIMEOUT", "never"),
            ("NX_CACHE_HEALTH_INTERVAL", "1h"),
            ("NX_CACHE_MAX_TOKEN_LIFETIME", "forever"),
            (
                "NX_CACHE_JWT_SECRET",
                "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/nx/)",
            ),
        ];
        for (name, value) in cases {
            let err = load(&[(name, value)], Flags::default()).unwrap_err();
            assert_eq!(err.setting, name, "{name}={value}");
            assert!(
                err.to_string()
                    .starts_with(&format!("configuration error: {name}: "))
            );
        }
    }

    #[test]
    fn secrets_are_trimmed_and_sized_for_their_algorithm() {
        // A trailing newline from a vault or a paste is not key material.
        let padded = format!("  {SECRET}\n");
        let trimmed = load(&[("NX_CACHE_JWT_SECRET", &padded)], Flags::default()).unwrap();
        let plain = load(&[("NX_CACHE_JWT_SECRET", SECRET)], Flags::default()).unwrap();
        let sign = |config: &Config| {
            let SecretSource::Env(secret) = &config.tokens.secret else {
                panic!("an env secret")
            };
            crate::auth::TokenAuthority::new(secret, &[], config.tokens.rules.clone())
        };
        let token = sign(&trimmed)
            .issue(&crate::auth::TokenRequest {
                org: true,
                teams: vec![],
                access: crate::auth::Access::ReadOnly,
                expires_in: Duration::from_secs(60),
                subject: "t".into(),
                rule: None,
            })
            .unwrap()
            .token;
        assert!(sign(&plain).verify(&token).is_ok());

        // 32 bytes is enough for HS256, not for HS512.
        let err = load(
            &[
                ("NX_CACHE_JWT_SECRET", SECRET),
                ("NX_CACHE_JWT_ALGORITHM", "HS512"),
            ],
            Flags::default(),
        )
        .unwrap_err();
        assert_eq!(err.setting, "NX_CACHE_JWT_SECRET");
        assert!(err.problem.contains("at least 64"), "{err}");
    }

    #[test]
    fn previous_secrets_grace_and_leeway() {
        let config = load(
            &[
                ("NX_CACHE_JWT_SECRET", SECRET),
                (
                    "NX_CACHE_JWT_PREVIOUS_SECRETS",
                    " old-secret-0123456789abcdef0123456789 ,\nolder-secret-0123456789abcdef012345678\n",
                ),
                ("NX_CACHE_EXPIRED_GRACE", "1h"),
                ("NX_CACHE_TOKEN_LEEWAY", "0s"),
            ],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(config.tokens.previous.len(), 2, "two secrets, trimmed");
        assert_eq!(config.tokens.rules.expired_grace, Duration::from_secs(3600));
        assert_eq!(config.tokens.rules.leeway, Duration::ZERO);
        let defaults = load(&[], Flags::default()).unwrap();
        assert_eq!(defaults.tokens.rules.expired_grace, DEFAULT_EXPIRED_GRACE);
        assert_eq!(defaults.tokens.rules.leeway, DEFAULT_TOKEN_LEEWAY);
        assert!(defaults.tokens.previous.is_empty());
        assert!(!defaults.retention.is_on(), "retention is off by default");
        for (name, value) in [
            ("NX_CACHE_JWT_PREVIOUS_SECRETS", "short"),
            (
                "NX_CACHE_JWT_PREVIOUS_SECRETS",
                "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/old/)",
            ),
            ("NX_CACHE_EXPIRED_GRACE", "8d"),
            ("NX_CACHE_TOKEN_LEEWAY", "1h"),
            ("NX_CACHE_MAX_EXCHANGE_TTL", "100d"),
            ("NX_CACHE_TRUST_POLICY", "{\"rules\": []}"),
            ("NX_CACHE_TRUST_POLICY", "@/nonexistent/policy.json"),
            ("NX_CACHE_MAX_SIZE", "lots"),
            ("NX_CACHE_MAX_AGE", "10s"),
        ] {
            let err = load(&[(name, value)], Flags::default()).unwrap_err();
            assert_eq!(err.setting, name, "{name}={value}: {err}");
        }
    }

    #[test]
    fn retention_is_for_the_embedded_store() {
        let config = load(
            &[("NX_CACHE_MAX_SIZE", "50G"), ("NX_CACHE_MAX_AGE", "30d")],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(config.retention.max_size, Some(50 << 30));
        assert_eq!(
            config.retention.max_age,
            Some(Duration::from_secs(30 * 24 * 3600))
        );
        let err = load(
            &[
                ("NX_CACHE_MAX_SIZE", "50G"),
                ("AZURE_STORAGE_ACCOUNT", "acme"),
                ("AZURE_STORAGE_CONTAINER", "nx-cache"),
            ],
            Flags::default(),
        )
        .unwrap_err();
        assert_eq!(err.setting, "NX_CACHE_MAX_SIZE");
        assert!(err.problem.contains("lifecycle"), "{err}");
    }

    #[test]
    fn the_development_secret_is_for_loopback_only() {
        let public = Flags {
            port: None,
            bind: Some(IpAddr::from([0, 0, 0, 0])),
        };
        let err = load(&[], public.clone()).unwrap_err();
        assert_eq!(err.setting, "NX_CACHE_JWT_SECRET");
        assert!(err.problem.contains("0.0.0.0"), "{err}");
        assert!(load(&[("NX_CACHE_JWT_SECRET", SECRET)], public).is_ok());
        let v6_loopback = Flags {
            port: None,
            bind: Some("::1".parse().unwrap()),
        };
        assert!(matches!(
            load(&[], v6_loopback).unwrap().tokens.secret,
            SecretSource::DevFile(_)
        ));
    }

    #[test]
    fn limits_and_token_lifetime() {
        let config = load(&[], Flags::default()).unwrap();
        assert_eq!(config.limits.body.min_rate, 64 * 1024);
        assert_eq!(config.tokens.rules.max_lifetime, DEFAULT_MAX_TOKEN_LIFETIME);
        let config = load(
            &[
                ("NX_CACHE_MIN_BODY_RATE", "16K/s"),
                ("NX_CACHE_BODY_RATE_WINDOW", "5s"),
                ("NX_CACHE_MAX_DRAINS", "3"),
                ("NX_CACHE_MAX_DOWNLOADS", "7"),
                ("NX_CACHE_SEND_TIMEOUT", "9s"),
                ("NX_CACHE_MAX_TOKEN_LIFETIME", "2h"),
            ],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(config.limits.body.min_rate, 16 * 1024);
        assert_eq!(config.limits.body.window, Duration::from_secs(5));
        assert_eq!(config.limits.max_drains, 3);
        assert_eq!(config.limits.max_downloads, 7);
        assert_eq!(config.limits.send_timeout, Duration::from_secs(9));
        assert_eq!(config.tokens.rules.max_lifetime, Duration::from_secs(7200));
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let config = load(
            &[
                ("NX_CACHE_JWT_SECRET", SECRET),
                ("NX_CACHE_METRICS_TOKEN", "metrics-token-0123456789"),
                (
                    "AZURE_STORAGE_CONNECTION_STRING",
                    "UseDevelopmentStorage=true",
                ),
                ("AZURE_STORAGE_CONTAINER", "nx1"),
            ],
            Flags::default(),
        )
        .unwrap();
        let debug = format!("{config:?}");
        for secret in [SECRET, "metrics-token-0123456789", "Eby8vdM02xNO"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
    }

    #[test]
    fn modes_and_revocations() {
        let config = load(
            &[
                ("NX_CACHE_MODE", "read-only"),
                ("NX_CACHE_REVOKED_TOKENS", "a, b,,c"),
            ],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(config.mode, Mode::ReadOnly);
        assert_eq!(config.tokens.rules.revoked.len(), 3);
        assert!(config.tokens.rules.revoked.contains("b"));
    }

    #[test]
    fn azure_backend_selection() {
        assert!(matches!(
            load(&[], Flags::default()).unwrap().backend,
            Backend::Local
        ));
        let mi = load(
            &[
                ("AZURE_STORAGE_ACCOUNT", "acme"),
                ("AZURE_STORAGE_CONTAINER", "nx-cache"),
                ("AZURE_CLIENT_ID", "abc"),
            ],
            Flags::default(),
        )
        .unwrap();
        let Backend::Azure(azure) = mi.backend else {
            panic!("azure expected")
        };
        assert_eq!(azure.endpoint, "https://acme.blob.core.windows.net");
        assert!(matches!(azure.auth, AzureAuth::Token { client_id: Some(ref id) } if id == "abc"));
        assert_eq!(azure.download, Download::Redirect);
        assert_eq!(azure.sas_ttl, Duration::from_secs(300));

        let by_endpoint = load(
            &[
                (
                    "AZURE_STORAGE_BLOB_ENDPOINT",
                    "https://acme.blob.core.chinacloudapi.cn/",
                ),
                ("AZURE_STORAGE_CONTAINER", "c-1"),
            ],
            Flags::default(),
        )
        .unwrap();
        let Backend::Azure(azure) = by_endpoint.backend else {
            panic!("azure expected")
        };
        assert_eq!(azure.account, "acme");
        assert_eq!(azure.endpoint, "https://acme.blob.core.chinacloudapi.cn");

        let cs = load(
            &[
                (
                    "AZURE_STORAGE_CONNECTION_STRING",
                    "UseDevelopmentStorage=true",
                ),
                ("AZURE_STORAGE_CONTAINER", "nx1"),
                ("NX_CACHE_DOWNLOAD", "proxy"),
            ],
            Flags::default(),
        )
        .unwrap();
        let Backend::Azure(azure) = cs.backend else {
            panic!("azure expected")
        };
        assert!(matches!(azure.auth, AzureAuth::Key(_)));
        assert_eq!(azure.endpoint, "http://127.0.0.1:10000/devstoreaccount1");
        assert_eq!(azure.download, Download::Proxy);
    }

    #[test]
    fn azure_mistakes_name_the_setting() {
        let base = [
            ("AZURE_STORAGE_ACCOUNT", "acme"),
            ("AZURE_STORAGE_CONTAINER", "nx-cache"),
        ];
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (
                vec![("AZURE_STORAGE_ACCOUNT", "acme")],
                "AZURE_STORAGE_CONTAINER",
            ),
            (
                vec![
                    ("AZURE_STORAGE_ACCOUNT", "acme"),
                    ("AZURE_STORAGE_CONTAINER", "Bad_Name"),
                ],
                "AZURE_STORAGE_CONTAINER",
            ),
            (
                vec![
                    (
                        "AZURE_STORAGE_BLOB_ENDPOINT",
                        "http://x.blob.core.windows.net",
                    ),
                    ("AZURE_STORAGE_CONTAINER", "abc"),
                ],
                "AZURE_STORAGE_BLOB_ENDPOINT",
            ),
            (
                vec![
                    ("AZURE_STORAGE_CONNECTION_STRING", "AccountName=a"),
                    ("AZURE_STORAGE_CONTAINER", "abc"),
                ],
                "AZURE_STORAGE_CONNECTION_STRING",
            ),
            (
                [&base[..], &[("NX_CACHE_DOWNLOAD", "teleport")]].concat(),
                "NX_CACHE_DOWNLOAD",
            ),
            (
                [&base[..], &[("NX_CACHE_SAS_TTL", "1d")]].concat(),
                "NX_CACHE_SAS_TTL",
            ),
            (
                [&base[..], &[("NX_CACHE_SAS_TTL", "soon")]].concat(),
                "NX_CACHE_SAS_TTL",
            ),
            (
                [&base[..], &[("NX_CACHE_STORAGE_TIMEOUT", "x")]].concat(),
                "NX_CACHE_STORAGE_TIMEOUT",
            ),
            (
                [&base[..], &[("NX_CACHE_STRICT_STORAGE", "maybe")]].concat(),
                "NX_CACHE_STRICT_STORAGE",
            ),
            (
                [&base[..], &[("NX_CACHE_BLOB_PREFIX", "no-slash")]].concat(),
                "NX_CACHE_BLOB_PREFIX",
            ),
            // An account key over plain http to a real account: the download URLs' signatures
            // would travel in clear.
            (
                vec![
                    (
                        "AZURE_STORAGE_CONNECTION_STRING",
                        "DefaultEndpointsProtocol=http;AccountName=acme;AccountKey=a2V5;EndpointSuffix=core.windows.net",
                    ),
                    ("AZURE_STORAGE_CONTAINER", "abc"),
                ],
                "AZURE_STORAGE_CONNECTION_STRING",
            ),
            (
                vec![
                    (
                        "AZURE_STORAGE_CONNECTION_STRING",
                        "AccountName=acme;AccountKey=a2V5;BlobEndpoint=http://storage.example.com/acme",
                    ),
                    ("AZURE_STORAGE_CONTAINER", "abc"),
                ],
                "AZURE_STORAGE_CONNECTION_STRING",
            ),
        ];
        // Plain http stays allowed for an emulator on this machine.
        for endpoint in [
            "http://127.0.0.1:10000/devstoreaccount1",
            "http://localhost:10000/devstoreaccount1",
            "http://[::1]:10000/devstoreaccount1",
        ] {
            let cs =
                format!("AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint={endpoint}");
            let config = load(
                &[
                    ("AZURE_STORAGE_CONNECTION_STRING", &cs),
                    ("AZURE_STORAGE_CONTAINER", "abc"),
                ],
                Flags::default(),
            );
            assert!(config.is_ok(), "{endpoint}: {config:?}");
        }
        for (vars, setting) in cases {
            let err = load(&vars, Flags::default()).unwrap_err();
            assert_eq!(err.setting, setting, "{vars:?}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("100M").unwrap(), 100 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        for bad in ["", "M", "1T", "-1", "0", "99999999999999999999G", "1.5G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dev_secret_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(DEV_SECRET_FILE);
        let (_, created) = load_or_create_dev_secret(&path, Algorithm::HS256).unwrap();
        assert!(created);
        let first = std::fs::read(&path).unwrap();
        let (_, created_again) = load_or_create_dev_secret(&path, Algorithm::HS256).unwrap();
        assert!(!created_again);
        assert_eq!(std::fs::read(&path).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
